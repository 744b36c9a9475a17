/* SPDX-License-Identifier: MIT */
/*
 * StoreOps over registry/: the Ollama-compatible store of manifests and content-addressed blobs. Names are
 * parsed and validated by the registry before they reach a path; a model's GGUF is the blob of its
 * application/vnd.ollama.image.model layer, which the engine maps in place.
 *
 * Create reads the descriptor a client passed. A regular file cannot stall, so it goes to the registry
 * directly; a pipe or socket may stall forever, so the job first drains it into an unnamed temporary file
 * while polling for cancellation, and a cancelled or stopping daemon is never stuck in read().
 */

#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "daemon.h"
#include "registry.h"

typedef struct RegStore {
        RegistryConfig config;
        RegistryStore *store;
        char *root;
} RegStore;

static int reg_open(const char *root, const char *config_path, void **ret, QdError *err) {
        RegStore *s = calloc(1, sizeof(*s));
        int k;

        if (!s)
                return -ENOMEM;
        registry_config_init(&s->config);
        s->root = strdup(root);
        k = s->root ? 0 : -ENOMEM;
        if (k >= 0 && config_path) {
                k = registry_config_load(&s->config, config_path, err);
                if (k == -ENOENT)
                        k = 0;
        }
        if (k >= 0)
                k = registry_store_open(&s->store, root, &s->config, err);
        if (k < 0) {
                registry_config_done(&s->config);
                free(s->root);
                free(s);
                return k;
        }
        *ret = s;
        return 0;
}

static void reg_close(void *store) {
        RegStore *s = store;
        if (!s)
                return;
        registry_store_free(s->store);
        registry_config_done(&s->config);
        free(s->root);
        free(s);
}

static int reg_resolve(void *store, const char *name, char **ret_path, char **ret_canonical, QdError *err) {
        RegStore *s = store;
        _cleanup_(registry_manifest_freep) RegistryManifest *manifest = NULL;
        _cleanup_free_ char *path = NULL, *canonical = NULL;
        RegistryName n;
        int k;

        k = registry_name_parse(name, &s->config, &n, err);
        if (k < 0)
                return k;
        k = registry_store_show(s->store, &n, &manifest, NULL, err);
        if (k < 0)
                return k;
        const RegistryLayer *layer = registry_manifest_find_layer(manifest, REGISTRY_MEDIA_MODEL);
        if (!layer)
                return qd_error_set(err, ENOENT, "Model '%s' has no model layer (%s).", name,
                                    REGISTRY_MEDIA_MODEL);
        k = registry_store_blob_path(s->store, layer->digest, &path);
        if (k < 0)
                return k;
        if (ret_canonical) {
                k = registry_name_format_short(&n, &s->config, &canonical);
                if (k < 0)
                        return k;
                *ret_canonical = TAKE_PTR(canonical);
        }
        *ret_path = TAKE_PTR(path);
        return 0;
}

static int reg_digest(void *store, const char *name, char **ret, QdError *err) {
        RegStore *s = store;
        char digest[REGISTRY_DIGEST_MAX];
        RegistryName n;
        int k;

        k = registry_name_parse(name, &s->config, &n, err);
        if (k < 0)
                return k;
        k = registry_store_model_digest(s->store, &n, digest, err);
        if (k < 0)
                return k;
        *ret = strdup(digest);
        return *ret ? 0 : -ENOMEM;
}

void store_model_free_many(StoreModel *l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(l[i].name);
                free(l[i].digest);
        }
        free(l);
}

static int reg_list(void *store, StoreModel **ret, size_t *ret_n, QdError *err) {
        RegStore *s = store;
        RegistryModelInfo *infos = NULL;
        size_t n = 0;
        int k;

        k = registry_store_list(s->store, &infos, &n, err);
        if (k < 0)
                return k;
        StoreModel *l = calloc(MAX(n, (size_t)1), sizeof(StoreModel));
        if (!l) {
                free(infos);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                l[i].size = infos[i].size;
                l[i].modified_s = infos[i].modified_s;
                l[i].digest = strdup(infos[i].digest);
                if (registry_name_format_short(&infos[i].name, &s->config, &l[i].name) < 0 || !l[i].digest) {
                        store_model_free_many(l, n);
                        free(infos);
                        return -ENOMEM;
                }
        }
        free(infos);
        *ret = l;
        *ret_n = n;
        return 0;
}

/* Drains a pipe or socket into an unnamed file in dir, polling for cancellation. Returns the new fd. */
static int drain_to_tmpfile(const char *dir, int in, StoreProgressFn progress, void *userdata,
                            const atomic_bool *cancel, QdError *err) {
        static const size_t chunk = 1U << 20;
        _cleanup_close_ int out = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        _cleanup_free_ uint8_t *buf = malloc(chunk);
        uint64_t done = 0;

        if (out < 0)
                return qd_error_set(err, errno, "Failed to create a temporary file in %s: %s", dir,
                                    strerror(errno));
        if (!buf)
                return -ENOMEM;
        for (;;) {
                if (cancel && atomic_load(cancel))
                        return qd_error_set(err, ECANCELED, "The job was cancelled.");
                struct pollfd p = {.fd = in, .events = POLLIN};
                int r = poll(&p, 1, 100);
                if (r < 0 && errno != EINTR)
                        return qd_error_set(err, errno, "Failed to wait for the model data: %s",
                                            strerror(errno));
                if (r <= 0)
                        continue;
                ssize_t n = read(in, buf, chunk);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n < 0)
                        return qd_error_set(err, errno, "Failed to read the model data: %s",
                                            strerror(errno));
                if (n == 0)
                        break;
                for (ssize_t off = 0; off < n;) {
                        ssize_t w = write(out, buf + off, (size_t)(n - off));
                        if (w < 0 && errno == EINTR)
                                continue;
                        if (w < 0)
                                return qd_error_set(err, errno, "Failed to buffer the model data: %s",
                                                    strerror(errno));
                        off += w;
                }
                done += (uint64_t)n;
                if (progress)
                        progress("receiving model data", NULL, done, 0, userdata);
        }
        if (lseek(out, 0, SEEK_SET) < 0)
                return -errno;
        return TAKE_FD(out);
}

typedef struct ProgressRelay {
        StoreProgressFn fn;
        void *userdata;
} ProgressRelay;

static void relay_progress(const RegistryProgress *p, void *userdata) {
        ProgressRelay *r = userdata;
        if (r->fn)
                r->fn(p->status, p->digest, p->completed, p->total, r->userdata);
}

enum { N_SPEC_TEXTS = 4 }; /* template, system, parameters, messages; then the licenses */

static size_t spec_n_licenses(const StoreCreateSpec *spec) {
        size_t n = 0;

        while (spec && spec->licenses && spec->licenses[n])
                n++;
        return n;
}

/* Appends the text layers that spec (may be NULL) gives, in the order a model lists them: template, system,
 * parameters, messages, then each license. layers has room for N_SPEC_TEXTS + spec_n_licenses(spec); the
 * texts stay spec's. Returns how many it appended. */
static size_t spec_text_layers(const StoreCreateSpec *spec, RegistryCreateLayer *layers) {
        size_t n = 0;

        if (!spec)
                return 0;
        const struct {
                const char *media_type, *text;
        } texts[N_SPEC_TEXTS] = {
                {REGISTRY_MEDIA_TEMPLATE, spec->template},
                {REGISTRY_MEDIA_SYSTEM, spec->system},
                {REGISTRY_MEDIA_PARAMS, spec->parameters},
                {REGISTRY_MEDIA_MESSAGES, spec->messages},
        };
        for (size_t i = 0; i < ELEMENTSOF(texts) + spec_n_licenses(spec); i++) {
                const char *media = i < ELEMENTSOF(texts) ? texts[i].media_type : REGISTRY_MEDIA_LICENSE;
                const char *text =
                        i < ELEMENTSOF(texts) ? texts[i].text : spec->licenses[i - ELEMENTSOF(texts)];
                if (text)
                        layers[n++] = (RegistryCreateLayer){
                                .media_type = media, .fd = -EBADF, .data = text, .size = strlen(text)};
        }
        return n;
}

static int reg_create(void *store, const char *name, const StoreCreateSpec *spec, StoreProgressFn progress,
                      void *userdata, const atomic_bool *cancel, QdError *err) {
        RegStore *s = store;
        _cleanup_close_ int buffered = -EBADF;
        int fd = spec->fd;
        RegistryName n;
        struct stat st;
        int k;

        k = registry_name_parse(name, &s->config, &n, err);
        if (k < 0)
                return k;
        if (fstat(fd, &st) < 0)
                return qd_error_set(err, errno, "Failed to look at the model's descriptor: %s",
                                    strerror(errno));
        if (S_ISDIR(st.st_mode))
                return qd_error_set(err, EISDIR, "The model's descriptor is a directory, not a file.");
        if (!S_ISREG(st.st_mode)) {
                buffered = drain_to_tmpfile(s->root, fd, progress, userdata, cancel, err);
                if (buffered < 0)
                        return buffered;
                fd = buffered;
                if (fstat(fd, &st) < 0)
                        return -errno;
        }
        if (st.st_size == 0)
                return qd_error_set(err, EINVAL, "The model file is empty.");

        _cleanup_free_ RegistryCreateLayer *layers =
                calloc(1 + N_SPEC_TEXTS + spec_n_licenses(spec), sizeof(RegistryCreateLayer));
        if (!layers)
                return -ENOMEM;
        layers[0] = (RegistryCreateLayer){.media_type = REGISTRY_MEDIA_MODEL, .fd = fd};
        size_t n_layers = 1 + spec_text_layers(spec, layers + 1);
        ProgressRelay relay = {progress, userdata};
        return registry_store_create(s->store, &n, layers, n_layers, NULL, relay_progress, &relay, cancel,
                                     err);
}

/*
 * An archive becomes name in two steps: registry_import() under a temporary name (it refuses to replace a
 * model, and a failed import must leave name as it was), then that model copied to name, or, when spec
 * replaces layers, created anew from its blobs and spec's texts. The temporary name goes in every case.
 */
static int reg_import(void *store, int fd, const char *name, const StoreCreateSpec *spec,
                      StoreProgressFn progress, void *userdata, const atomic_bool *cancel, char **ret_name,
                      QdError *err) {
        RegStore *s = store;
        _cleanup_(registry_manifest_freep) RegistryManifest *manifest = NULL;
        ProgressRelay relay = {progress, userdata};
        RegistryName n, tmp;
        uint64_t rnd;
        int k;

        if (!name) {
                /* The archive's own name: registry_import() refuses to replace a model there. */
                k = registry_import(s->store, fd, NULL, relay_progress, &relay, cancel, &n, err);
                if (k >= 0 && ret_name)
                        k = registry_name_format_short(&n, &s->config, ret_name);
                return k;
        }
        k = registry_name_parse(name, &s->config, &n, err);
        if (k < 0)
                return k;
        if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
                return qd_error_set(err, errno, "Failed to name a temporary model: %s", strerror(errno));
        tmp = n;
        snprintf(tmp.model, sizeof(tmp.model), "quantd-import-%016" PRIx64, rnd);
        snprintf(tmp.tag, sizeof(tmp.tag), "latest");
        k = registry_import(s->store, fd, &tmp, relay_progress, &relay, cancel, NULL, err);
        if (k < 0)
                return k;

        _cleanup_free_ RegistryCreateLayer *texts =
                calloc(N_SPEC_TEXTS + spec_n_licenses(spec), sizeof(RegistryCreateLayer));
        if (!texts) {
                k = -ENOMEM;
                goto finish;
        }
        size_t n_texts = spec_text_layers(spec, texts);

        if (n_texts == 0) {
                k = registry_store_copy(s->store, &tmp, &n, true, err);
                goto finish;
        }
        k = registry_store_show(s->store, &tmp, &manifest, NULL, err);
        if (k < 0)
                goto finish;
        RegistryCreateLayer *layers = calloc(manifest->n_layers + n_texts, sizeof(RegistryCreateLayer));
        size_t n_layers = 0;
        if (!layers) {
                k = -ENOMEM;
                goto finish;
        }
        /* The archive's layers in order, but those that spec replaces; then spec's. */
        for (size_t i = 0; k >= 0 && i < manifest->n_layers; i++) {
                const RegistryLayer *l = &manifest->layers[i];
                bool replaced = false;
                for (size_t j = 0; j < n_texts; j++)
                        replaced = replaced || streq(l->media_type, texts[j].media_type);
                if (replaced)
                        continue;
                layers[n_layers] = (RegistryCreateLayer){.media_type = l->media_type, .fd = -EBADF};
                k = registry_store_open_blob(s->store, l->digest, &layers[n_layers].fd, err);
                if (k >= 0)
                        n_layers++;
        }
        memcpy(layers + n_layers, texts, n_texts * sizeof(RegistryCreateLayer));
        n_layers += n_texts;
        if (k >= 0)
                k = registry_store_create(s->store, &n, layers, n_layers, NULL, relay_progress, &relay,
                                          cancel, err);
        for (size_t i = 0; i < n_layers; i++)
                safe_close(layers[i].fd);
        free(layers);
finish:;
        QdError ignored = {};
        (void)registry_store_delete(s->store, &tmp, &ignored);
        if (k >= 0 && ret_name)
                k = registry_name_format_short(&n, &s->config, ret_name);
        return k;
}

static int reg_export(void *store, const char *name, int fd, const char *format, StoreProgressFn progress,
                      void *userdata, const atomic_bool *cancel, QdError *err) {
        RegStore *s = store;
        ProgressRelay relay = {progress, userdata};
        _cleanup_free_ char *file = strdup_printf("model.%s", format);
        RegistryName n;
        int k;

        if (!file)
                return -ENOMEM;
        RegistryArchiveFormat f = registry_archive_format_from_filename(file);
        if (f < 0)
                return qd_error_set(err, EINVAL, "Unknown archive format '%s'; use tar, tar.gz or tar.zst.",
                                    format);
        k = registry_name_parse(name, &s->config, &n, err);
        if (k < 0)
                return k;
        return registry_export(s->store, &n, fd, f, relay_progress, &relay, cancel, err);
}

static int reg_read_layer(void *store, const char *name, const char *media_type, char **ret, QdError *err) {
        RegStore *s = store;
        _cleanup_(registry_manifest_freep) RegistryManifest *manifest = NULL;
        _cleanup_close_ int fd = -EBADF;
        RegistryName n;
        int k;

        k = registry_name_parse(name, &s->config, &n, err);
        if (k >= 0)
                k = registry_store_show(s->store, &n, &manifest, NULL, err);
        if (k < 0)
                return k;
        const RegistryLayer *layer = registry_manifest_find_layer(manifest, media_type);
        if (!layer) {
                *ret = NULL;
                return 0;
        }
        if (layer->size > 1024 * 1024)
                return qd_error_set(err, EMSGSIZE, "The %s layer of '%s' is larger than 1 MiB.", media_type,
                                    name);
        k = registry_store_open_blob(s->store, layer->digest, &fd, err);
        if (k < 0)
                return k;
        _cleanup_free_ char *buf = malloc(layer->size + 1);
        if (!buf)
                return -ENOMEM;
        size_t got = 0;
        while (got < layer->size) {
                ssize_t r = read(fd, buf + got, layer->size - got);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        return qd_error_set(err, r < 0 ? errno : EBADMSG,
                                            "Failed to read the %s layer of '%s'.", media_type, name);
                got += (size_t)r;
        }
        buf[got] = 0;
        *ret = TAKE_PTR(buf);
        return 0;
}

static int reg_pull(void *store, const char *name, StoreProgressFn progress, void *userdata,
                    const atomic_bool *cancel, QdError *err) {
        RegStore *s = store;
        ProgressRelay relay = {progress, userdata};
        RegistryName n;
        /* A name the user typed for pull may be a short alias of the catalogue. */
        int k = registry_name_resolve(name, &s->config, &n, err);
        if (k < 0)
                return k;
        return registry_pull(s->store, &n, relay_progress, &relay, cancel, NULL, err);
}

static int reg_push(void *store, const char *name, StoreProgressFn progress, void *userdata,
                    const atomic_bool *cancel, QdError *err) {
        RegStore *s = store;
        ProgressRelay relay = {progress, userdata};
        RegistryName n;
        int k = registry_name_parse(name, &s->config, &n, err);
        if (k < 0)
                return k;
        return registry_push(s->store, &n, relay_progress, &relay, cancel, NULL, err);
}

static int reg_copy(void *store, const char *src, const char *dst, QdError *err) {
        RegStore *s = store;
        RegistryName a, b;
        int k = registry_name_parse(src, &s->config, &a, err);
        if (k >= 0)
                k = registry_name_parse(dst, &s->config, &b, err);
        if (k < 0)
                return k;
        /* As `ollama cp`: the destination is replaced. */
        return registry_store_copy(s->store, &a, &b, true, err);
}

static int reg_remove(void *store, const char *name, QdError *err) {
        RegStore *s = store;
        RegistryName n;
        int k = registry_name_parse(name, &s->config, &n, err);
        if (k < 0)
                return k;
        return registry_store_delete(s->store, &n, err);
}

const StoreOps store_registry_ops = {
        .open = reg_open,
        .close = reg_close,
        .resolve = reg_resolve,
        .list = reg_list,
        .digest = reg_digest,
        .create = reg_create,
        .import = reg_import,
        .export = reg_export,
        .read_layer = reg_read_layer,
        .pull = reg_pull,
        .push = reg_push,
        .copy = reg_copy,
        .remove = reg_remove,
};
