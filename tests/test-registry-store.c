/* SPDX-License-Identifier: MIT */
/* registry/: the model store on disk: create, list, show, copy, delete, reference counts, prune, verify. */

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "registry.h"

typedef struct Fixture {
        char dir[64];
        char *root;
        RegistryStore *store;
} Fixture;

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
        return remove(p);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        QdError e = {};

        snprintf(f->dir, sizeof(f->dir), "/tmp/test-registry-store-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        f->root = strdup_printf("%s/models", f->dir);
        assert_int_equal(registry_store_open(&f->store, f->root, NULL, &e), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        registry_store_free(f->store);
        nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(f->root);
        free(f);
        return 0;
}

static int open_model_file(void) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        assert_non_null(dir);
        char *p = strdup_printf("%s/stories260K.gguf", dir);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                fail_msg("Test model %s is missing", p);
        free(p);
        return fd;
}

static RegistryName name_of(const char *s) {
        RegistryName n;
        assert_int_equal(registry_name_parse(s, NULL, &n, NULL), 0);
        return n;
}

typedef struct Seen {
        unsigned layer_events, done_events;
        uint64_t last_completed, last_total;
} Seen;

static void seen_progress(const RegistryProgress *p, void *userdata) {
        Seen *s = userdata;
        if (p->kind == REGISTRY_PROGRESS_LAYER) {
                s->layer_events++;
                s->last_completed = p->completed;
                s->last_total = p->total;
        } else if (p->kind == REGISTRY_PROGRESS_DONE)
                s->done_events++;
}

static void create_model_progress(Fixture *f, const char *name, const char *template, Seen *seen) {
        int fd = open_model_file();
        RegistryCreateLayer layers[] = {
                {.media_type = REGISTRY_MEDIA_MODEL, .fd = fd},
                {.media_type = REGISTRY_MEDIA_TEMPLATE,
                 .fd = -1,
                 .data = template,
                 .size = strlen(template)},
        };
        RegistryName n = name_of(name);
        QdError e = {};
        int r = registry_store_create(f->store, &n, layers, 2, "{\"model_family\":\"llama\"}",
                                      seen ? seen_progress : NULL, seen, NULL, &e);
        if (r < 0)
                fail_msg("create failed: %s", e.msg);
        close(fd);
}

static void create_model(Fixture *f, const char *name, const char *template) {
        create_model_progress(f, name, template, NULL);
}

static char *blob_file(Fixture *f, const char *digest) {
        return strdup_printf("%s/blobs/sha256-%s", f->root, digest + 7);
}

static bool exists(const char *p) {
        struct stat st;
        return stat(p, &st) == 0;
}

static unsigned count_blobs(Fixture *f) {
        char *p = strdup_printf("%s/blobs", f->root);
        DIR *d = opendir(p);
        unsigned n = 0;
        struct dirent *de;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        free(p);
        return n;
}

static void test_create_show_list(void **state) {
        Fixture *f = *state;
        RegistryManifest *m = NULL;
        RegistryModelInfo *items = NULL;
        char *raw = NULL;
        size_t n = 0;
        QdError e = {};

        Seen seen = {};
        create_model_progress(f, "tiny:1", "{{ .Prompt }}", &seen);
        assert_true(seen.layer_events >= 2);
        assert_int_equal(seen.done_events, 1);
        assert_true(seen.last_completed == seen.last_total);
        RegistryName name = name_of("tiny:1");
        assert_true(registry_store_has_model(f->store, &name));
        assert_int_equal(registry_store_show(f->store, &name, &m, &raw, &e), 0);
        assert_int_equal(m->n_layers, 2);
        const RegistryLayer *model = registry_manifest_find_layer(m, REGISTRY_MEDIA_MODEL);
        assert_non_null(model);

        /* The model layer is the GGUF, byte for byte: same size and a digest we compute independently. */
        int fd = open_model_file();
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        assert_true(model->size == (uint64_t)st.st_size);
        close(fd);
        assert_int_equal(registry_store_verify(f->store, &name, &e), 0);
        assert_string_equal(m->config.media_type, REGISTRY_MEDIA_DOCKER_CONFIG);

        /* The config blob carries the extra members and the diff ids. */
        int cfd;
        assert_int_equal(registry_store_open_blob(f->store, m->config.digest, &cfd, &e), 0);
        char cfg[4096] = {};
        assert_true(read(cfd, cfg, sizeof(cfg) - 1) > 0);
        close(cfd);
        assert_non_null(strstr(cfg, "\"model_family\":\"llama\""));
        assert_non_null(strstr(cfg, "\"model_format\":\"gguf\""));
        assert_non_null(strstr(cfg, model->digest));

        /* On disk where Ollama keeps it. */
        char *mp = strdup_printf("%s/manifests/registry.ollama.ai/library/tiny/1", f->root);
        assert_true(exists(mp));
        free(mp);
        char *bp = blob_file(f, model->digest);
        assert_true(exists(bp));
        free(bp);

        create_model(f, "me/other", "x");
        assert_int_equal(registry_store_list(f->store, &items, &n, &e), 0);
        assert_int_equal(n, 2);
        assert_string_equal(items[0].name.model, "tiny");
        assert_string_equal(items[1].name.namespace, "me");
        assert_true(items[0].size == registry_manifest_total_size(m));
        assert_true(registry_digest_is_valid(items[0].digest));
        assert_true(items[0].modified_s > 0);
        /* One model's ID, as Ps shows it, is List's. */
        char digest[REGISTRY_DIGEST_MAX];
        assert_int_equal(registry_store_model_digest(f->store, &name, digest, &e), 0);
        assert_string_equal(digest, items[0].digest);
        free(items);
        registry_manifest_free(m);
        free(raw);
}

static void test_copy_delete_refs(void **state) {
        Fixture *f = *state;
        RegistryManifest *m = NULL;
        QdError e = {};
        unsigned refs;

        create_model(f, "a", "T");
        RegistryName a = name_of("a"), b = name_of("ns/b:x"), c = name_of("c");
        assert_int_equal(registry_store_show(f->store, &a, &m, NULL, &e), 0);
        const char *model_digest = registry_manifest_find_layer(m, REGISTRY_MEDIA_MODEL)->digest;

        assert_int_equal(registry_store_copy(f->store, &a, &b, false, &e), 0);
        assert_int_equal(registry_store_blob_refs(f->store, model_digest, &refs, &e), 0);
        assert_int_equal(refs, 2);
        /* Copy onto an existing name needs replace. */
        e = (QdError){};
        assert_int_equal(registry_store_copy(f->store, &a, &b, false, &e), -EEXIST);
        assert_int_equal(e.code, EEXIST);
        assert_int_equal(registry_store_copy(f->store, &a, &b, true, &e), 0);
        /* Copy of a missing model. */
        e = (QdError){};
        assert_int_equal(registry_store_copy(f->store, &c, &b, true, &e), -ENOENT);
        assert_non_null(strstr(e.msg, "not found"));

        /* Deleting one name keeps the shared blobs; deleting the last removes them. */
        assert_int_equal(registry_store_delete(f->store, &a, &e), 0);
        assert_false(registry_store_has_model(f->store, &a));
        char *bp = blob_file(f, model_digest);
        assert_true(exists(bp));
        assert_int_equal(registry_store_blob_refs(f->store, model_digest, &refs, &e), 0);
        assert_int_equal(refs, 1);
        assert_int_equal(registry_store_delete(f->store, &b, &e), 0);
        assert_false(exists(bp));
        assert_int_equal(count_blobs(f), 0);
        /* The emptied manifest directories are gone too. */
        char *dp = strdup_printf("%s/manifests/registry.ollama.ai/ns", f->root);
        assert_false(exists(dp));
        free(dp);
        free(bp);

        e = (QdError){};
        assert_int_equal(registry_store_delete(f->store, &a, &e), -ENOENT);
        assert_int_equal(registry_store_blob_refs(f->store, "sha256:nope", &refs, &e), -EINVAL);
        registry_manifest_free(m);
}

static void write_text(const char *path, const char *text) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
}

static void test_corrupt_and_missing(void **state) {
        Fixture *f = *state;
        RegistryManifest *m = NULL;
        QdError e = {};

        create_model(f, "a", "T");
        create_model(f, "b", "U");
        RegistryName a = name_of("a"), b = name_of("b"), c = name_of("c");
        assert_int_equal(registry_store_show(f->store, &a, &m, NULL, &e), 0);

        /* A missing model. */
        assert_int_equal(registry_store_show(f->store, &c, &m, NULL, &e), 0 - ENOENT);
        char digest[REGISTRY_DIGEST_MAX];
        e = (QdError){};
        assert_int_equal(registry_store_model_digest(f->store, &c, digest, &e), -ENOENT);
        assert_non_null(strstr(e.msg, "not found"));

        /* A corrupt manifest: clear error, skipped by list, still deletable. */
        char *mp = strdup_printf("%s/manifests/registry.ollama.ai/library/b/latest", f->root);
        write_text(mp, "{\"schemaVersion\":2,\"config\":");
        RegistryManifest *mb = NULL;
        e = (QdError){};
        assert_int_equal(registry_store_show(f->store, &b, &mb, NULL, &e), -EBADMSG);
        assert_non_null(strstr(e.msg, "corrupt"));
        assert_int_equal(registry_store_verify(f->store, &b, NULL), -EBADMSG);
        assert_int_equal(registry_store_model_digest(f->store, &b, digest, NULL), -EBADMSG);
        RegistryModelInfo *items;
        size_t n;
        assert_int_equal(registry_store_list(f->store, &items, &n, &e), 0);
        assert_int_equal(n, 1);
        free(items);
        assert_int_equal(registry_store_delete(f->store, &b, &e), 0);
        free(mp);

        /* A blob of the wrong size, then with the right size but wrong bytes, then missing. */
        const RegistryLayer *t = registry_manifest_find_layer(m, REGISTRY_MEDIA_TEMPLATE);
        char *bp = blob_file(f, t->digest);
        write_text(bp, "TT");
        e = (QdError){};
        assert_int_equal(registry_store_show(f->store, &a, &mb, NULL, &e), -EBADMSG);
        assert_non_null(strstr(e.msg, "damaged"));
        write_text(bp, "X");
        assert_int_equal(registry_store_show(f->store, &a, &mb, NULL, &e), 0);
        registry_manifest_free(mb);
        e = (QdError){};
        assert_int_equal(registry_store_verify(f->store, &a, &e), -EBADMSG);
        assert_non_null(strstr(e.msg, t->digest));
        unlink(bp);
        e = (QdError){};
        assert_int_equal(registry_store_show(f->store, &a, &mb, NULL, &e), -ENOENT);
        assert_non_null(strstr(e.msg, "missing"));
        int fd;
        assert_int_equal(registry_store_open_blob(f->store, t->digest, &fd, NULL), -ENOENT);
        assert_int_equal(registry_store_open_blob(f->store, "sha256:../../x", &fd, NULL), -EINVAL);

        /* A manifest whose blobs are missing is refused. */
        char *raw = NULL;
        assert_int_equal(registry_manifest_format(m, &raw), 0);
        e = (QdError){};
        assert_int_equal(registry_store_write_manifest(f->store, &c, raw, strlen(raw), &e), -ENOENT);
        assert_false(registry_store_has_model(f->store, &c));
        assert_int_equal(registry_store_write_manifest(f->store, &c, "{}", 2, NULL), -EBADMSG);
        free(raw);
        free(bp);
        registry_manifest_free(m);
}

static void age(const char *path, time_t seconds) {
        struct timespec ts[2];
        clock_gettime(CLOCK_REALTIME, &ts[0]);
        ts[0].tv_sec -= seconds;
        ts[1] = ts[0];
        assert_int_equal(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static void test_prune(void **state) {
        Fixture *f = *state;
        RegistryPruneStats st;
        QdError e = {};
        char digest[REGISTRY_DIGEST_MAX];

        create_model(f, "a", "T");
        unsigned before = count_blobs(f);

        /* An unreferenced blob, an old partial download with its state, a temp file, a foreign file. */
        assert_int_equal(registry_store_add_blob(f->store, -1, "orphan", 6, NULL, digest, NULL, &e), 0);
        char *orphan = blob_file(f, digest);
        char *partial = strdup_printf("%s-partial", orphan);
        char *state_file = strdup_printf("%s-partial.state", orphan);
        char *tmp = strdup_printf("%s/blobs/.tmp-abc", f->root);
        char *foreign = strdup_printf("%s/blobs/README", f->root);
        write_text(partial, "p");
        write_text(state_file, "s");
        write_text(tmp, "t");
        write_text(foreign, "f");

        /* Young files survive the grace period. */
        assert_int_equal(registry_store_prune(f->store, 3600, &st, &e), 0);
        assert_int_equal(st.blobs_removed + st.partials_removed, 0);
        assert_true(exists(orphan));

        age(orphan, 7200);
        age(partial, 7200);
        age(state_file, 7200);
        age(tmp, 7200);
        age(foreign, 7200);

        /* While a pull holds the store (a shared lock), nothing is pruned. */
        char *lockp = strdup_printf("%s/.lock", f->root);
        int lfd = open(lockp, O_RDWR | O_CREAT, 0644);
        assert_true(lfd >= 0);
        assert_int_equal(flock(lfd, LOCK_SH), 0);
        assert_int_equal(registry_store_prune(f->store, 3600, &st, &e), 0);
        assert_int_equal(st.blobs_removed + st.partials_removed, 0);
        assert_true(exists(partial));
        close(lfd);

        assert_int_equal(registry_store_prune(f->store, 3600, &st, &e), 0);
        assert_int_equal(st.blobs_removed, 1);
        assert_int_equal(st.partials_removed, 3);
        assert_true(st.bytes_freed == 6 + 3);
        assert_false(exists(orphan));
        assert_false(exists(partial));
        assert_false(exists(tmp));
        assert_true(exists(foreign));
        unlink(foreign);
        /* Referenced blobs stay however old they are. */
        assert_int_equal(count_blobs(f), before);
        RegistryName a = name_of("a");
        assert_int_equal(registry_store_verify(f->store, &a, &e), 0);
        free(orphan);
        free(partial);
        free(state_file);
        free(tmp);
        free(foreign);
        free(lockp);
}

static void test_add_blob_errors(void **state) {
        Fixture *f = *state;
        char digest[REGISTRY_DIGEST_MAX];
        uint64_t size;
        QdError e = {};
        atomic_bool cancel = true;

        /* Known digest of "abc" (FIPS 180-2 test vector). */
        assert_int_equal(registry_store_add_blob(f->store, -1, "abc", 3, NULL, digest, &size, &e), 0);
        assert_string_equal(digest,
                            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_true(size == 3);
        /* Adding it again is harmless. */
        assert_int_equal(registry_store_add_blob(f->store, -1, "abc", 3, NULL, digest, &size, &e), 0);

        /* Cancelled: nothing stays behind. */
        unsigned before = count_blobs(f);
        int fd = open_model_file();
        assert_int_equal(registry_store_add_blob(f->store, fd, NULL, 0, &cancel, digest, &size, &e),
                         -ECANCELED);
        close(fd);
        assert_int_equal(count_blobs(f), before);
        /* A directory fd cannot be read. */
        e = (QdError){};
        fd = open("/", O_RDONLY | O_DIRECTORY);
        assert_int_equal(registry_store_add_blob(f->store, fd, NULL, 0, NULL, digest, &size, &e), -EISDIR);
        close(fd);
        assert_int_equal(count_blobs(f), before);

        /* create rejects layers without a media type and configs that are not objects. */
        RegistryCreateLayer bad = {.media_type = "text/plain", .fd = -1, .data = "x", .size = 1};
        RegistryName n = name_of("bad");
        assert_int_equal(registry_store_create(f->store, &n, &bad, 1, NULL, NULL, NULL, NULL, NULL),
                         -EINVAL);
        bad.media_type = REGISTRY_MEDIA_SYSTEM;
        assert_int_equal(registry_store_create(f->store, &n, &bad, 1, "[1]", NULL, NULL, NULL, NULL),
                         -EINVAL);
        assert_false(registry_store_has_model(f->store, &n));
        assert_int_equal(registry_store_create(f->store, &n, &bad, 1, NULL, NULL, NULL, NULL, NULL), 0);
        /* A model without a model layer has nothing for the engine. */
        e = (QdError){};
        assert_int_equal(registry_store_resolve(f->store, "bad", NULL, &(char *){NULL}, &e), -EBADMSG);
        assert_non_null(strstr(e.msg, "no model layer"));
}

static void test_resolve(void **state) {
        Fixture *f = *state;
        RegistryName n;
        char *path = NULL;
        QdError e = {};

        create_model(f, "tiny:1", "T");
        assert_int_equal(registry_store_resolve(f->store, "tiny:1", &n, &path, &e), 0);
        assert_string_equal(n.host, REGISTRY_DEFAULT_HOST);
        assert_true(startswith(path, f->root));
        int a = open(path, O_RDONLY), b = open_model_file();
        struct stat sa, sb;
        assert_int_equal(fstat(a, &sa), 0);
        assert_int_equal(fstat(b, &sb), 0);
        assert_true(sa.st_size == sb.st_size);
        close(a);
        close(b);
        free(path);
        e = (QdError){};
        assert_int_equal(registry_store_resolve(f->store, "tiny:2", &n, NULL, &e), -ENOENT);
        e = (QdError){};
        assert_int_equal(registry_store_resolve(f->store, "../x", &n, NULL, &e), -EINVAL);
}

static void test_open_errors(void **state) {
        RegistryStore *s = NULL;
        QdError e = {};

        assert_int_equal(registry_store_open(&s, "/proc/version/models", NULL, &e), -ENOTDIR);
        assert_non_null(strstr(e.msg, "/proc/version/models"));
        assert_null(s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_create_show_list, setup, teardown),
                cmocka_unit_test_setup_teardown(test_copy_delete_refs, setup, teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_and_missing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_prune, setup, teardown),
                cmocka_unit_test_setup_teardown(test_add_blob_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_resolve, setup, teardown),
                cmocka_unit_test(test_open_errors),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
