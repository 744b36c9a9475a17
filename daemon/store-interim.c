/* SPDX-License-Identifier: MIT */
/*
 * The interim model store behind StoreOps: one file per model in MODELS/interim/NAME:TAG, written atomically
 * (temporary file, fsync, rename, fsync of the directory). It exists so that the daemon can be built and
 * tested before registry/ (the Ollama-compatible store of manifests and blobs) lands; then StoreOps backed by
 * the registry replace it and this file goes.
 */

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sys/stat.h>

#include "daemon.h"

#define NAME_MAX_LEN 128

typedef struct InterimStore {
        char *dir;
        int dir_fd;
} InterimStore;

/* "model[:tag]" with letters, digits, '.', '_', '-', and "latest" for a missing tag, into buf. */
static int normalize_name(const char *name, char *buf, size_t size, QdError *err) {
        size_t n = strlen(name);
        const char *colon = strchr(name, ':');

        if (n == 0 || n > NAME_MAX_LEN)
                return qd_error_set(err, EINVAL, "A model name has 1 to %d characters.", NAME_MAX_LEN);
        for (size_t i = 0; i < n; i++) {
                char c = name[i];
                bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                          c == '_' || c == '-' || (c == ':' && name + i == colon);
                if (!ok)
                        return qd_error_set(err, EINVAL,
                                            "Model name '%s' may contain only letters, digits, '.', '_', '-' and one "
                                            "':' before the tag.", name);
        }
        if (name[0] == '.' || name[0] == '-' || name[0] == ':' || (colon && colon[1] == 0))
                return qd_error_set(err, EINVAL, "Model name '%s' must start with a letter or digit and have a tag "
                                    "after ':'.", name);
        snprintf(buf, size, "%s%s", name, colon ? "" : ":latest");
        return 0;
}

static int interim_open(const char *root, void **ret, QdError *err) {
        InterimStore *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->dir_fd = -EBADF;
        s->dir = strdup_printf("%s/interim", root);
        if (!s->dir) {
                free(s);
                return -ENOMEM;
        }
        /* Create the path step by step: the models directory may not exist yet. */
        for (char *p = s->dir + 1; *p; p++)
                if (*p == '/') {
                        *p = 0;
                        (void)mkdir(s->dir, 0755);
                        *p = '/';
                }
        if (mkdir(s->dir, 0755) < 0 && errno != EEXIST) {
                int k = qd_error_set(err, errno, "Failed to create %s: %s", s->dir, strerror(errno));
                free(s->dir);
                free(s);
                return k;
        }
        s->dir_fd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s->dir_fd < 0) {
                int k = qd_error_set(err, errno, "Failed to open %s: %s", s->dir, strerror(errno));
                free(s->dir);
                free(s);
                return k;
        }
        *ret = s;
        return 0;
}

static void interim_close(void *store) {
        InterimStore *s = store;
        if (!s)
                return;
        safe_close(s->dir_fd);
        free(s->dir);
        free(s);
}

static int interim_resolve(void *store, const char *name, char **ret_path, char **ret_canonical, QdError *err) {
        InterimStore *s = store;
        char n[NAME_MAX_LEN + 16];
        struct stat st;
        int k = normalize_name(name, n, sizeof(n), err);
        if (k < 0)
                return k;
        if (fstatat(s->dir_fd, n, &st, 0) < 0 || !S_ISREG(st.st_mode))
                return qd_error_set(err, ENOENT, "Model '%s' not found; 'qctl list' shows the local models.", name);
        _cleanup_free_ char *path = strdup_printf("%s/%s", s->dir, n), *canonical = strdup(n);
        if (!path || !canonical)
                return -ENOMEM;
        *ret_path = TAKE_PTR(path);
        if (ret_canonical)
                *ret_canonical = TAKE_PTR(canonical);
        return 0;
}

void store_model_free_many(StoreModel *l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(l[i].name);
                free(l[i].digest);
        }
        free(l);
}

static int interim_list(void *store, StoreModel **ret, size_t *ret_n, QdError *err) {
        InterimStore *s = store;
        StoreModel *l = NULL;
        size_t n = 0;
        int fd = dup(s->dir_fd);
        if (fd < 0)
                return -errno;
        DIR *d = fdopendir(fd);
        if (!d) {
                safe_close(fd);
                return -errno;
        }
        rewinddir(d);
        struct dirent *de;
        while ((de = readdir(d))) {
                struct stat st;
                if (de->d_name[0] == '.' || !strchr(de->d_name, ':'))
                        continue;
                if (fstatat(dirfd(d), de->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
                        continue;
                StoreModel *nl = reallocarray(l, n + 1, sizeof(StoreModel));
                if (!nl)
                        goto oom;
                l = nl;
                l[n] = (StoreModel){ .name = strdup(de->d_name), .size = (uint64_t)st.st_size,
                                     .modified_s = st.st_mtim.tv_sec, .digest = strdup("") };
                n++;
                if (!l[n - 1].name || !l[n - 1].digest)
                        goto oom;
        }
        closedir(d);
        *ret = l;
        *ret_n = n;
        return 0;
oom:
        closedir(d);
        store_model_free_many(l, n);
        return -ENOMEM;
}

/* Copies from in to out (a temporary file), reporting progress; then syncs. */
static int copy_fd(int in, int out, uint64_t total, void (*progress)(uint64_t, uint64_t, void *), void *userdata,
                   const atomic_bool *cancel, QdError *err) {
        static const size_t chunk = 1U << 20;
        _cleanup_free_ uint8_t *buf = malloc(chunk);
        uint64_t done = 0;

        if (!buf)
                return -ENOMEM;
        for (;;) {
                if (cancel && atomic_load(cancel))
                        return qd_error_set(err, ECANCELED, "The copy was cancelled.");
                /* A pipe may stall forever: wait in slices so that cancellation (and shutdown) gets through. */
                struct pollfd p = { .fd = in, .events = POLLIN };
                int r = poll(&p, 1, 100);
                if (r < 0 && errno != EINTR)
                        return qd_error_set(err, errno, "Failed to wait for the model data: %s", strerror(errno));
                if (r <= 0)
                        continue;
                ssize_t n = read(in, buf, chunk);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return qd_error_set(err, errno, "Failed to read the model data: %s", strerror(errno));
                if (n == 0)
                        break;
                for (ssize_t off = 0; off < n;) {
                        ssize_t w = write(out, buf + off, (size_t)(n - off));
                        if (w < 0 && errno == EINTR)
                                continue;
                        if (w < 0)
                                return qd_error_set(err, errno, "Failed to write the model: %s", strerror(errno));
                        off += w;
                }
                done += (uint64_t)n;
                if (progress)
                        progress(done, MAX(total, done), userdata);
        }
        if (done == 0)
                return qd_error_set(err, EINVAL, "The model file is empty.");
        if (fsync(out) < 0)
                return qd_error_set(err, errno, "Failed to sync the model: %s", strerror(errno));
        return 0;
}

static int write_atomic(InterimStore *s, const char *name, int in, void (*progress)(uint64_t, uint64_t, void *),
                        void *userdata, const atomic_bool *cancel, QdError *err) {
        char tmp[64];
        struct stat st;
        uint64_t total = fstat(in, &st) >= 0 && S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;

        snprintf(tmp, sizeof(tmp), ".tmp-%d-%" PRIu64, (int)getpid(), now_ns());
        _cleanup_close_ int out = openat(s->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (out < 0)
                return qd_error_set(err, errno, "Failed to create a file in %s: %s", s->dir, strerror(errno));
        int k = copy_fd(in, out, total, progress, userdata, cancel, err);
        if (k >= 0 && renameat(s->dir_fd, tmp, s->dir_fd, name) < 0)
                k = qd_error_set(err, errno, "Failed to store the model: %s", strerror(errno));
        if (k < 0) {
                (void)unlinkat(s->dir_fd, tmp, 0);
                return k;
        }
        (void)fsync(s->dir_fd);
        return 0;
}

static int interim_create(void *store, const char *name, int fd, void (*progress)(uint64_t, uint64_t, void *),
                          void *userdata, const atomic_bool *cancel, QdError *err) {
        char n[NAME_MAX_LEN + 16];
        int k = normalize_name(name, n, sizeof(n), err);
        if (k < 0)
                return k;
        return write_atomic(store, n, fd, progress, userdata, cancel, err);
}

static int interim_copy(void *store, const char *src, const char *dst, QdError *err) {
        InterimStore *s = store;
        char a[NAME_MAX_LEN + 16], b[NAME_MAX_LEN + 16];
        int k = normalize_name(src, a, sizeof(a), err);
        if (k >= 0)
                k = normalize_name(dst, b, sizeof(b), err);
        if (k < 0)
                return k;
        _cleanup_close_ int in = openat(s->dir_fd, a, O_RDONLY | O_CLOEXEC);
        if (in < 0)
                return qd_error_set(err, ENOENT, "Model '%s' not found.", src);
        return write_atomic(s, b, in, NULL, NULL, NULL, err);
}

static int interim_remove(void *store, const char *name, QdError *err) {
        InterimStore *s = store;
        char n[NAME_MAX_LEN + 16];
        int k = normalize_name(name, n, sizeof(n), err);
        if (k < 0)
                return k;
        if (unlinkat(s->dir_fd, n, 0) < 0) {
                if (errno == ENOENT)
                        return qd_error_set(err, ENOENT, "Model '%s' not found.", name);
                return qd_error_set(err, errno, "Failed to remove model '%s': %s", name, strerror(errno));
        }
        (void)fsync(s->dir_fd);
        return 0;
}

const StoreOps store_interim_ops = {
        .open = interim_open,
        .close = interim_close,
        .resolve = interim_resolve,
        .list = interim_list,
        .create = interim_create,
        .copy = interim_copy,
        .remove = interim_remove,
};
