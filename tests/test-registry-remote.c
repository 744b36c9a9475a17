/* SPDX-License-Identifier: MIT */
/*
 * registry/ against a real registry: Debian's docker-registry (the CNCF distribution registry) on loopback,
 * behind tests/registry/fault-proxy.py, which counts blob bytes and injects network faults. A second
 * registry instance requires basic authentication (tests/registry/htpasswd); the proxy can require bearer
 * tokens.
 *
 * Suite `registry`. Needs docker-registry and python3; a missing one fails the test.
 */

#include <curl/curl.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine.h"
#include "registry-harness.h"
#include "registry.h"

typedef struct World {
        char dir[64];
        RegistryServer registry, auth_registry, tls_registry, proxy;
        char *ca_file;
        uint64_t big_size;
} World;

static World W;

static int group_setup(void **state) {
        const char *big = getenv("QUANTD_TEST_BIG_MB");
        uint64_t mb = 300;

        if (big && safe_atou64(big, &mb) < 0)
                mb = 300;
        W.big_size = mb << 20;
        curl_global_init(CURL_GLOBAL_DEFAULT);
        snprintf(W.dir, sizeof(W.dir), "/tmp/test-registry-remote-XXXXXX");
        assert_non_null(mkdtemp(W.dir));
        harness_start_registry(&W.registry, W.dir, "registry", NULL);
        harness_start_registry(&W.auth_registry, W.dir, "auth-registry",
                               &(RegistryServerOptions){.htpasswd = true});
        W.ca_file = strdup_printf("%s/cert.pem", W.dir);
        char *key = strdup_printf("%s/key.pem", W.dir);
        harness_make_certificate(W.ca_file, key);
        harness_start_registry(&W.tls_registry, W.dir, "tls-registry",
                               &(RegistryServerOptions){.tls_cert = W.ca_file, .tls_key = key});
        free(key);
        harness_start_proxy(&W.proxy, W.registry.port);
        return 0;
}

static int group_teardown(void **state) {
        harness_stop(&W.proxy);
        harness_stop(&W.tls_registry);
        harness_stop(&W.auth_registry);
        harness_stop(&W.registry);
        harness_rm_rf(W.dir);
        free(W.ca_file);
        curl_global_cleanup();
        return 0;
}

/* ---- the proxy's control interface ---- */

static void proxy(const char *fmt, ...) {
        char path[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(path, sizeof(path), fmt, ap);
        va_end(ap);
        char *url = strdup_printf("http://%s%s", W.proxy.host, path);
        assert_int_equal(harness_http("POST", url, NULL), 200);
        free(url);
}

static uint64_t proxy_stat(const char *key) {
        return harness_proxy_stat(&W.proxy, key);
}

/* ---- stores ---- */

typedef struct Local {
        char *root;
        RegistryConfig config;
        RegistryStore *store;
} Local;

static Local *local_new(const char *name) {
        Local *l = calloc(1, sizeof(Local));
        QdError e = {};

        l->root = strdup_printf("%s/%s", W.dir, name);
        registry_config_init(&l->config);
        l->config.default_host = strdup(W.proxy.host);
        l->config.insecure_hosts = calloc(4, sizeof(char *));
        l->config.insecure_hosts[0] = strdup(W.proxy.host);
        l->config.insecure_hosts[1] = strdup(W.auth_registry.host);
        l->config.insecure_hosts[2] = strdup(W.registry.host);
        l->config.part_size = 256 * 1024;
        /* The proxy is on loopback: four parts there too, so that the tests see parallel parts. */
        l->config.parallel_parts = 4;
        l->config.loopback_parallel_parts = 4;
        l->config.backoff_ms = 20;
        l->config.max_retries = 4;
        l->config.stall_timeout_s = 2;
        assert_int_equal(registry_store_open(&l->store, l->root, &l->config, &e), 0);
        return l;
}

static void local_free(Local *l) {
        registry_store_free(l->store);
        registry_config_done(&l->config);
        harness_rm_rf(l->root);
        free(l->root);
        free(l);
}

static RegistryName name_of(const Local *l, const char *s) {
        RegistryName n;
        QdError e = {};
        if (registry_name_parse(s, &l->config, &n, &e) < 0)
                fail_msg("%s", e.msg);
        return n;
}

static int open_model_file(void) {
        char *p = strdup_printf("%s/stories260K.gguf", getenv("QUANTD_TEST_MODELS"));
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                fail_msg("Test model %s is missing", p);
        free(p);
        return fd;
}

static void create_stories(Local *l, const char *name) {
        int fd = open_model_file();
        const char *tmpl = "{{ .System }} {{ .Prompt }}";
        RegistryCreateLayer layers[] = {
                {.media_type = REGISTRY_MEDIA_MODEL, .fd = fd},
                {.media_type = REGISTRY_MEDIA_TEMPLATE, .fd = -1, .data = tmpl, .size = strlen(tmpl)},
                {.media_type = REGISTRY_MEDIA_PARAMS, .fd = -1, .data = "{\"temperature\":0}", .size = 17},
        };
        RegistryName n = name_of(l, name);
        QdError e = {};
        if (registry_store_create(l->store, &n, layers, ELEMENTSOF(layers), NULL, NULL, NULL, NULL, &e) < 0)
                fail_msg("create: %s", e.msg);
        close(fd);
}

/* A model whose weights are size pseudo-random bytes (xorshift), for the large-blob tests. */
/* A model whose weights are size pseudo-random bytes, for the large-blob tests. */
static void create_big(Local *l, const char *name, uint64_t size) {
        int fd = harness_random_fd(size, 0x9E3779B97F4A7C15ULL);
        RegistryCreateLayer layer = {.media_type = REGISTRY_MEDIA_MODEL, .fd = fd};
        RegistryName n = name_of(l, name);
        QdError e = {};
        if (registry_store_create(l->store, &n, &layer, 1, NULL, NULL, NULL, NULL, &e) < 0)
                fail_msg("create: %s", e.msg);
        close(fd);
}

static void push(Local *l, const char *name, RegistryTransferStats *st) {
        RegistryName n = name_of(l, name);
        QdError e = {};
        if (registry_push(l->store, &n, NULL, NULL, NULL, st, &e) < 0)
                fail_msg("push %s: %s", name, e.msg);
}

static int pull(Local *l, const char *name, RegistryTransferStats *st, QdError *e) {
        RegistryName n = name_of(l, name);
        return registry_pull(l->store, &n, NULL, NULL, NULL, st, e);
}

static unsigned count_files(Local *l, const char *sub) {
        char *p = strdup_printf("%s/%s", l->root, sub);
        DIR *d = opendir(p);
        unsigned n = 0;
        struct dirent *de;
        assert_non_null(d);
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        free(p);
        return n;
}

static void assert_same_blob_bytes(Local *a, Local *b, const char *digest) {
        int fa, fb;
        assert_int_equal(registry_store_open_blob(a->store, digest, &fa, NULL), 0);
        assert_int_equal(registry_store_open_blob(b->store, digest, &fb, NULL), 0);
        char x[65536], y[65536];
        for (;;) {
                ssize_t na = read(fa, x, sizeof(x)), nb = read(fb, y, sizeof(y));
                assert_int_equal(na, nb);
                if (na <= 0)
                        break;
                assert_memory_equal(x, y, (size_t)na);
        }
        close(fa);
        close(fb);
}

/* Greedy ids from BOS with the engine, for "pull it back and run it". */
static void assert_runs_golden(Local *l, const char *name) {
        char *golden_path = strdup_printf("%s/stories260K.golden", getenv("QUANTD_TEST_MODELS"));
        FILE *f = fopen(golden_path, "re");
        int32_t golden[40];
        int n = 0;
        char line[4096];

        if (!f)
                fail_msg("%s is missing", golden_path);
        while (n == 0 && fgets(line, sizeof(line), f)) {
                char *p = line, *end;
                if (line[0] == '#')
                        continue;
                for (long v; n < 40 && (v = strtol(p, &end, 10), end != p); p = end)
                        golden[n++] = (int32_t)v;
        }
        fclose(f);
        free(golden_path);
        assert_int_equal(n, 40);

        char *path = NULL;
        QdError e = {};
        assert_int_equal(registry_store_resolve(l->store, name, NULL, &path, &e), 0);
        EngineModelParams p = engine_model_params_default();
        EngineModel *m = NULL;
        p.backend = "cpu";
        if (engine_model_load(path, &p, &m, &e) < 0)
                fail_msg("loading the pulled model: %s", e.msg);
        EngineSeq *s = NULL;
        uint32_t n_vocab = engine_model_info(m)->n_vocab;
        float *logits = malloc(n_vocab * sizeof(float));
        int32_t tok = 1;
        assert_int_equal(engine_seq_new(m, 64, &s), 0);
        for (int i = 0; i < n; i++) {
                const int32_t *tp = &tok;
                uint32_t one = 1;
                if (engine_decode(m, &s, &tp, &one, 1, &logits, NULL, &e) < 0)
                        fail_msg("decode: %s", e.msg);
                uint32_t best = 0;
                for (uint32_t k = 1; k < n_vocab; k++)
                        if (logits[k] > logits[best])
                                best = k;
                tok = (int32_t)best;
                assert_int_equal(tok, golden[i]);
        }
        free(logits);
        engine_seq_free(s);
        engine_model_unref(m);
        free(path);
}

static int reset_proxy(void **state) {
        proxy("/__reset");
        return 0;
}

/* ---- tests ---- */

static void test_push_pull_roundtrip(void **state) {
        Local *a = local_new("rt-a"), *b = local_new("rt-b");
        RegistryTransferStats st = {};
        RegistryManifest *ma = NULL, *mb = NULL;
        QdError e = {};

        create_stories(a, "test/stories:v1");
        push(a, "test/stories:v1", &st);
        assert_int_equal(st.blobs_skipped, 0);
        assert_true(st.bytes_uploaded >= 1185376);

        /* A second push finds every blob present; a push to another repository mounts them. */
        push(a, "test/stories:v1", &st);
        assert_int_equal(st.blobs_skipped, 4);
        RegistryName src = name_of(a, "test/stories:v1"), dst = name_of(a, "other/stories:v1");
        assert_int_equal(registry_store_copy(a->store, &src, &dst, false, &e), 0);
        push(a, "other/stories:v1", &st);
        assert_int_equal(st.blobs_mounted, 4);
        assert_true(st.bytes_uploaded == 0);

        /* Pull into an empty store: identical manifest and bytes. */
        assert_int_equal(pull(b, "test/stories:v1", &st, &e), 0);
        assert_true(st.bytes_downloaded >= 1185376);
        RegistryName n = name_of(b, "test/stories:v1");
        char *ra = NULL, *rb = NULL;
        assert_int_equal(registry_store_show(a->store, &src, &ma, &ra, &e), 0);
        assert_int_equal(registry_store_show(b->store, &n, &mb, &rb, &e), 0);
        assert_string_equal(ra, rb);
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);
        for (size_t i = 0; i < ma->n_layers; i++)
                assert_same_blob_bytes(a, b, ma->layers[i].digest);
        assert_int_equal(count_files(b, "blobs"), 4);
        /* And it runs: the engine's greedy tokens from the pulled blob are the golden ones. */
        assert_runs_golden(b, "test/stories:v1");

        /* Pulling again transfers nothing. */
        assert_int_equal(pull(b, "test/stories:v1", &st, &e), 0);
        assert_true(st.bytes_downloaded == 0);
        assert_int_equal(st.blobs_skipped, 4);

        /* Delete locally, pull back from the mounted copy. */
        assert_int_equal(registry_store_delete(b->store, &n, &e), 0);
        assert_int_equal(count_files(b, "blobs"), 0);
        assert_int_equal(pull(b, "other/stories:v1", &st, &e), 0);
        RegistryName o = name_of(b, "other/stories:v1");
        assert_int_equal(registry_store_verify(b->store, &o, &e), 0);

        registry_manifest_free(ma);
        registry_manifest_free(mb);
        free(ra);
        free(rb);
        local_free(a);
        local_free(b);
}

static void test_chunked_push_and_progress(void **state) {
        Local *a = local_new("ch-a"), *b = local_new("ch-b");
        RegistryTransferStats st = {};
        QdError e = {};

        a->config.push_chunk_size = 100 * 1000;
        create_stories(a, "test/chunked:v1");
        push(a, "test/chunked:v1", &st);
        assert_true(st.bytes_uploaded >= 1185376);
        assert_int_equal(pull(b, "test/chunked:v1", &st, &e), 0);
        RegistryName n = name_of(b, "test/chunked:v1");
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);
        local_free(a);
        local_free(b);
}

static void test_not_found_and_bad_host(void **state) {
        Local *b = local_new("nf");
        QdError e = {};

        assert_int_equal(pull(b, "test/nothing:here", NULL, &e), -ENOENT);
        assert_non_null(strstr(e.msg, "not found"));

        /* A host not listed as insecure is reached over https, which the plain registry cannot speak. */
        e = (QdError){};
        char *name = strdup_printf("localhost:%u/test/stories:v1", W.registry.port);
        RegistryName n = name_of(b, name);
        int r = registry_pull(b->store, &n, NULL, NULL, NULL, NULL, &e);
        assert_true(r == -EACCES || r == -EHOSTUNREACH);
        assert_non_null(strstr(e.msg, "localhost"));
        assert_int_equal(count_files(b, "manifests"), 0);
        free(name);
        local_free(b);
}

static void assert_store_empty(Local *l) {
        assert_int_equal(count_files(l, "manifests"), 0);
        assert_int_equal(count_files(l, "blobs"), 0);
}

static void test_corrupt_blob_rejected(void **state) {
        Local *a = local_new("co-a"), *b = local_new("co-b");
        QdError e = {};

        create_stories(a, "test/corrupt:v1");
        push(a, "test/corrupt:v1", NULL);
        b->config.part_size = 4 << 20; /* one part per blob: the first blob GET is the model's */
        proxy("/__fault?mode=corrupt&count=1&after=1000");
        assert_int_equal(pull(b, "test/corrupt:v1", NULL, &e), -EBADMSG);
        assert_non_null(strstr(e.msg, "corrupt"));
        assert_store_empty(b);

        /* Once the fault is gone, the same pull succeeds. */
        assert_int_equal(pull(b, "test/corrupt:v1", NULL, &e), 0);
        local_free(a);
        local_free(b);
}

static void test_network_faults_retried(void **state) {
        Local *a = local_new("nw-a"), *b = local_new("nw-b");
        RegistryTransferStats st = {};
        QdError e = {};

        create_stories(a, "test/faults:v1");
        push(a, "test/faults:v1", NULL);
        proxy("/__fault?mode=truncate&count=2&after=5000");
        proxy("/__fault?mode=reset&count=2&after=100000");
        proxy("/__fault?mode=error500&count=2");
        proxy("/__fault?mode=stall&count=1&after=20000&seconds=4");
        proxy("/__fault?mode=manifest500&count=2");
        assert_int_equal(pull(b, "test/faults:v1", &st, &e), 0);
        assert_true(st.retries >= 9);
        RegistryName n = name_of(b, "test/faults:v1");
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);
        local_free(a);
        local_free(b);
}

static void test_retries_exhausted(void **state) {
        Local *a = local_new("ex-a"), *b = local_new("ex-b");
        QdError e = {};

        create_stories(a, "test/exhaust:v1");
        push(a, "test/exhaust:v1", NULL);
        b->config.max_retries = 2;
        proxy("/__fault?mode=error500&count=1000");
        assert_int_equal(pull(b, "test/exhaust:v1", NULL, &e), -EPROTO);
        assert_non_null(strstr(e.msg, "HTTP 500"));
        assert_int_equal(count_files(b, "manifests"), 0);

        /* Stalls past the retries end with ETIMEDOUT. */
        proxy("/__reset");
        b->config.stall_timeout_s = 1;
        b->config.max_retries = 1;
        e = (QdError){};
        proxy("/__fault?mode=stall&count=1000&after=0&seconds=3");
        assert_int_equal(pull(b, "test/exhaust:v1", NULL, &e), -ETIMEDOUT);
        assert_int_equal(count_files(b, "manifests"), 0);
        proxy("/__reset");
        local_free(a);
        local_free(b);
}

static void test_server_without_ranges(void **state) {
        Local *a = local_new("nr-a"), *b = local_new("nr-b");
        QdError e = {};

        create_stories(a, "test/norange:v1");
        push(a, "test/norange:v1", NULL);
        proxy("/__fault?mode=norange&count=1000");
        assert_int_equal(pull(b, "test/norange:v1", NULL, &e), 0);
        RegistryName n = name_of(b, "test/norange:v1");
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);
        local_free(a);
        local_free(b);
}

typedef struct CancelAfter {
        atomic_bool cancel;
        uint64_t after;
} CancelAfter;

static void cancel_progress(const RegistryProgress *p, void *userdata) {
        CancelAfter *c = userdata;
        if (p->kind == REGISTRY_PROGRESS_LAYER && p->completed >= c->after)
                atomic_store(&c->cancel, true);
}

static void test_cancel_and_resume(void **state) {
        Local *a = local_new("ca-a"), *b = local_new("ca-b");
        RegistryTransferStats st = {};
        QdError e = {};
        uint64_t size = 64ULL << 20;

        create_big(a, "test/cancel:v1", size);
        push(a, "test/cancel:v1", NULL);
        b->config.part_size = 4 << 20;
        b->config.max_bandwidth = 32ULL << 20;
        CancelAfter c = {.after = size / 4};
        RegistryName n = name_of(b, "test/cancel:v1");
        assert_int_equal(registry_pull(b->store, &n, cancel_progress, &c, &c.cancel, &st, &e), -ECANCELED);
        assert_false(registry_store_has_model(b->store, &n));
        /* The partial data and its state stay for the resume. */
        assert_int_equal(count_files(b, "blobs"), 2);
        uint64_t first = st.bytes_downloaded;
        assert_true(first >= size / 4 && first < size);

        b->config.max_bandwidth = 0;
        proxy("/__reset");
        assert_int_equal(registry_pull(b->store, &n, NULL, NULL, NULL, &st, &e), 0);
        assert_true(st.bytes_downloaded < size - first / 2);
        assert_true(proxy_stat("blob_bytes") < size - first / 2);
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);

        /*
         * A damaged state file, a data file of the wrong size, or resumed data that does not hash right (a
         * checkpoint that outlived its data): the download starts over, and succeeds.
         */
        for (int damage = 0; damage < 3; damage++) {
                assert_int_equal(registry_store_delete(b->store, &n, &e), 0);
                b->config.max_bandwidth = 32ULL << 20;
                c = (CancelAfter){.after = size / 4};
                assert_int_equal(registry_pull(b->store, &n, cancel_progress, &c, &c.cancel, &st, &e),
                                 -ECANCELED);
                char *blobs = strdup_printf("%s/blobs", b->root);
                DIR *d = opendir(blobs);
                struct dirent *de;
                while ((de = readdir(d))) {
                        char *path = strdup_printf("%s/%s", blobs, de->d_name);
                        if (damage == 0 && endswith(de->d_name, "-partial.state")) {
                                FILE *f = fopen(path, "we");
                                fputs("quantd-partial 1\nnot a digest\n", f);
                                fclose(f);
                        } else if (damage == 1 && endswith(de->d_name, "-partial"))
                                assert_int_equal(truncate(path, 4096), 0);
                        else if (damage == 2 && endswith(de->d_name, "-partial")) {
                                int fd = open(path, O_WRONLY);
                                char junk[4096];
                                memset(junk, 0xff, sizeof(junk));
                                assert_int_equal(pwrite(fd, junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
                                close(fd);
                        }
                        free(path);
                }
                closedir(d);
                free(blobs);
                b->config.max_bandwidth = 0;
                proxy("/__reset");
                if (registry_pull(b->store, &n, NULL, NULL, NULL, &st, &e) < 0)
                        fail_msg("pull after damage %d: %s", damage, e.msg);
                assert_true(st.bytes_downloaded >= size);
                assert_int_equal(registry_store_verify(b->store, &n, &e), 0);
        }
        local_free(a);
        local_free(b);
}

static uint64_t partial_progress(Local *l) {
        char *p = strdup_printf("%s/blobs", l->root);
        DIR *d = opendir(p);
        struct dirent *de;
        uint64_t done = 0;

        while (d && (de = readdir(d))) {
                if (!endswith(de->d_name, "-partial.state"))
                        continue;
                char *sp = strdup_printf("%s/%s", p, de->d_name);
                FILE *f = fopen(sp, "re");
                char line[256];
                int i = 0;
                while (f && fgets(line, sizeof(line), f))
                        if (i++ >= 3)
                                done += strtoull(line, NULL, 10);
                if (f)
                        fclose(f);
                free(sp);
        }
        if (d)
                closedir(d);
        free(p);
        return done;
}

static void test_resume_after_kill(void **state) {
        Local *a = local_new("kill-a"), *b = local_new("kill-b");
        RegistryTransferStats st = {};
        QdError e = {};
        uint64_t size = W.big_size;

        create_big(a, "test/big:v1", size);
        push(a, "test/big:v1", NULL);
        RegistryName n = name_of(b, "test/big:v1");

        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                b->config.part_size = 8 << 20;
                b->config.max_bandwidth = MAX(size / 8, (uint64_t)(8 << 20));
                registry_pull(b->store, &n, NULL, NULL, NULL, NULL, NULL);
                _exit(0);
        }
        /* Kill the puller once its state on disk records a third of the blob. */
        uint64_t saved = 0;
        for (int i = 0; i < 3000 && saved < size / 3; i++) {
                struct timespec ts = {0, 10 * 1000000L};
                nanosleep(&ts, NULL);
                saved = partial_progress(b);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        assert_true(saved >= size / 3);
        assert_false(registry_store_has_model(b->store, &n));

        proxy("/__reset");
        assert_int_equal(registry_pull(b->store, &n, NULL, NULL, NULL, &st, &e), 0);
        uint64_t transferred = proxy_stat("blob_bytes");
        print_message("# resume: %ju of %ju bytes were on disk, the restarted pull fetched %ju\n",
                      (uintmax_t)saved, (uintmax_t)size, (uintmax_t)transferred);
        assert_true(transferred <= size - saved + 4096);
        assert_true(st.bytes_downloaded == transferred);
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);
        local_free(a);
        local_free(b);
}

typedef struct PullThread {
        Local *l;
        RegistryName name;
        int r;
        QdError e;
        RegistryTransferStats st;
        bool waited;
} PullThread;

static void note_wait(const RegistryProgress *p, void *userdata) {
        PullThread *t = userdata;
        if (p->kind == REGISTRY_PROGRESS_WAITING)
                t->waited = true;
}

static void *pull_thread(void *userdata) {
        PullThread *t = userdata;
        t->r = registry_pull(t->l->store, &t->name, note_wait, t, NULL, &t->st, &t->e);
        return NULL;
}

static void test_concurrent_pulls_share(void **state) {
        Local *a = local_new("sh-a"), *b = local_new("sh-b");
        uint64_t size = 48ULL << 20;

        create_big(a, "test/shared:v1", size);
        push(a, "test/shared:v1", NULL);
        b->config.max_bandwidth = 48ULL << 20;
        b->config.part_size = 4 << 20;
        PullThread t[2] = {{.l = b, .name = name_of(b, "test/shared:v1")},
                           {.l = b, .name = name_of(b, "test/shared:v1")}};
        pthread_t th[2];
        proxy("/__reset");
        for (int i = 0; i < 2; i++)
                assert_int_equal(pthread_create(&th[i], NULL, pull_thread, &t[i]), 0);
        for (int i = 0; i < 2; i++)
                pthread_join(th[i], NULL);
        for (int i = 0; i < 2; i++)
                if (t[i].r < 0)
                        fail_msg("pull %d: %s", i, t[i].e.msg);
        uint64_t bytes = proxy_stat("blob_bytes");
        print_message("# two pulls of %ju bytes transferred %ju\n", (uintmax_t)size, (uintmax_t)bytes);
        assert_true(bytes < size + size / 10);
        assert_true(t[0].waited || t[1].waited);
        assert_int_equal(registry_store_verify(b->store, &t[0].name, NULL), 0);

        /* The same between two processes: a child pulls while this process pulls too. */
        QdError e = {};
        assert_int_equal(registry_store_delete(b->store, &t[0].name, &e), 0);
        assert_int_equal(count_files(b, "blobs"), 0);
        proxy("/__reset");
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                _exit(registry_pull(b->store, &t[0].name, NULL, NULL, NULL, NULL, NULL) < 0 ? 1 : 0);
        PullThread self = {.l = b, .name = t[0].name};
        pull_thread(&self);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (self.r < 0)
                fail_msg("pull beside the child: %s", self.e.msg);
        bytes = proxy_stat("blob_bytes");
        print_message("# two processes pulling %ju bytes transferred %ju\n", (uintmax_t)size,
                      (uintmax_t)bytes);
        assert_true(bytes < size + size / 10);
        assert_int_equal(registry_store_verify(b->store, &t[0].name, NULL), 0);
        local_free(a);
        local_free(b);
}

static void add_credential(Local *l, const char *host, const char *user, const char *pass) {
        l->config.credentials = calloc(1, sizeof(RegistryCredential));
        l->config.credentials[0] = (RegistryCredential){strdup(host), strdup(user), strdup(pass)};
        l->config.n_credentials = 1;
}

static void test_basic_auth(void **state) {
        Local *a = local_new("ba-a"), *b = local_new("ba-b"), *c = local_new("ba-c"), *d = local_new("ba-d");
        QdError e = {};
        char *name = strdup_printf("%s/test/private:v1", W.auth_registry.host);

        add_credential(a, W.auth_registry.host, "quantd", "s3cret-pass");
        add_credential(b, W.auth_registry.host, "quantd", "s3cret-pass");
        add_credential(d, W.auth_registry.host, "quantd", "wrong");
        create_stories(a, name);
        push(a, name, NULL);
        assert_int_equal(pull(b, name, NULL, &e), 0);
        /* No credentials, wrong credentials: refused with a sentence that says what to do. */
        e = (QdError){};
        assert_int_equal(pull(c, name, NULL, &e), -EACCES);
        assert_non_null(strstr(e.msg, "[Credentials]"));
        e = (QdError){};
        assert_int_equal(pull(d, name, NULL, &e), -EACCES);
        assert_int_equal(count_files(c, "manifests"), 0);
        assert_int_equal(count_files(d, "manifests"), 0);
        free(name);
        local_free(a);
        local_free(b);
        local_free(c);
        local_free(d);
}

static void test_bearer_auth(void **state) {
        Local *a = local_new("be-a"), *b = local_new("be-b"), *c = local_new("be-c"), *d = local_new("be-d");
        QdError e = {};

        create_stories(a, "test/token:v1");
        push(a, "test/token:v1", NULL);

        /* Anonymous tokens. */
        proxy("/__bearer?on=1");
        assert_int_equal(pull(b, "test/token:v1", NULL, &e), 0);
        assert_true(proxy_stat("token_requests") >= 1);
        RegistryName n = name_of(b, "test/token:v1");
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);

        /* Tokens for credentials only: refused without them, granted with them. */
        proxy("/__reset");
        proxy("/__bearer?on=1&user=quantd&password=s3cret-pass");
        e = (QdError){};
        assert_int_equal(pull(c, "test/token:v1", NULL, &e), -EACCES);
        assert_non_null(strstr(e.msg, "refused"));
        assert_int_equal(count_files(c, "manifests"), 0);
        add_credential(d, W.proxy.host, "quantd", "s3cret-pass");
        assert_int_equal(pull(d, "test/token:v1", NULL, &e), 0);
        registry_store_delete(d->store, &n, NULL);

        /* Tokens that expire after three requests: renewed in the middle of the blob downloads. */
        proxy("/__reset");
        proxy("/__bearer?on=1&user=quantd&password=s3cret-pass&uses=3");
        e = (QdError){};
        if (pull(d, "test/token:v1", NULL, &e) < 0)
                fail_msg("pull with expiring tokens: %s", e.msg);
        print_message("# expiring tokens: %" PRIu64 " token requests, %" PRIu64 " blob requests\n", proxy_stat("token_requests"),
                      proxy_stat("blob_requests"));
        assert_true(proxy_stat("token_requests") >= 3);
        assert_int_equal(registry_store_verify(d->store, &n, &e), 0);
        registry_store_delete(d->store, &n, NULL);

        /* Tokens granted but never accepted (a scope the registry refuses): three renewals, then refused. */
        proxy("/__reset");
        proxy("/__bearer?on=1&user=quantd&password=s3cret-pass&deny=1");
        e = (QdError){};
        assert_int_equal(pull(d, "test/token:v1", NULL, &e), -EACCES);
        assert_non_null(strstr(e.msg, "denied access"));
        assert_int_equal(proxy_stat("token_requests"), 3);
        assert_int_equal(count_files(d, "manifests"), 0);
        proxy("/__reset");
        local_free(a);
        local_free(b);
        local_free(c);
        local_free(d);
}

static void test_tls_verified(void **state) {
        Local *a = local_new("tls-a"), *b = local_new("tls-b"), *c = local_new("tls-c");
        QdError e = {};
        char *name = strdup_printf("%s/test/tls:v1", W.tls_registry.host);

        /* Not listed as insecure: https, verified against the test's CA file. */
        a->config.ca_file = strdup(W.ca_file);
        b->config.ca_file = strdup(W.ca_file);
        create_stories(a, name);
        push(a, name, NULL);
        assert_int_equal(pull(b, name, NULL, &e), 0);
        RegistryName n = name_of(b, name);
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);

        /* Without the CA the self-signed certificate is refused. */
        e = (QdError){};
        assert_int_equal(pull(c, name, NULL, &e), -EACCES);
        assert_non_null(strstr(e.msg, W.tls_registry.host));
        assert_int_equal(count_files(c, "manifests"), 0);
        free(name);
        local_free(a);
        local_free(b);
        local_free(c);
}

static void test_bandwidth_cap(void **state) {
        Local *a = local_new("bw-a"), *b = local_new("bw-b");
        RegistryTransferStats st = {};
        QdError e = {};
        uint64_t size = 8ULL << 20;

        create_big(a, "test/capped:v1", size);
        push(a, "test/capped:v1", NULL);
        b->config.part_size = 1 << 20;
        b->config.max_bandwidth = 4ULL << 20;
        uint64_t t0 = now_ns();
        if (pull(b, "test/capped:v1", &st, &e) < 0)
                fail_msg("capped pull: %s", e.msg);
        double seconds = (double)(now_ns() - t0) / 1e9;
        print_message("# %ju bytes at a cap of 4 MiB/s took %.2f s\n", (uintmax_t)size, seconds);
        /* 2 s at the cap; libcurl's limiter is approximate over short transfers. */
        assert_true(seconds >= 1.4);
        local_free(a);
        local_free(b);
}

typedef struct Events {
        RegistryProgressKind kinds[4096];
        char digests[4096][REGISTRY_DIGEST_MAX];
        uint64_t completed[4096], total[4096];
        size_t n;
} Events;

static void test_loopback_one_connection(void **state) {
        Local *a = local_new("lo-a"), *b = local_new("lo-b"), *c = local_new("lo-c");
        RegistryName n = name_of(b, "test/loopback:v1");
        QdError e = {};

        create_big(a, "test/loopback:v1", (6U << 20) + 12345);
        push(a, "test/loopback:v1", NULL);

        /* The default for a registry on this machine: one ranged request at a time. */
        b->config.loopback_parallel_parts = 1;
        assert_int_equal(pull(b, "test/loopback:v1", NULL, &e), 0);
        assert_int_equal(proxy_stat("max_blob_streams"), 1);
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);

        /* More when configured: 25 parts of 256 KiB, four at a time. */
        proxy("/__reset");
        assert_int_equal(pull(c, "test/loopback:v1", NULL, &e), 0);
        /* Never more than four at once; how many overlap depends on the machine's load, so the low side is
         * shown by the count of ranged requests instead. */
        uint64_t streams = proxy_stat("max_blob_streams");
        assert_true(streams >= 1 && streams <= 4);
        assert_true(proxy_stat("blob_requests") >= 25);
        assert_int_equal(registry_store_verify(c->store, &n, &e), 0);
        RegistryManifest *m = NULL;
        assert_int_equal(registry_store_show(a->store, &n, &m, NULL, &e), 0);
        const char *digest = registry_manifest_find_layer(m, REGISTRY_MEDIA_MODEL)->digest;
        assert_same_blob_bytes(a, b, digest);
        assert_same_blob_bytes(a, c, digest);
        registry_manifest_free(m);
        local_free(a);
        local_free(b);
        local_free(c);
}

static void record(const RegistryProgress *p, void *userdata) {
        Events *ev = userdata;
        if (ev->n == ELEMENTSOF(ev->kinds))
                return;
        ev->kinds[ev->n] = p->kind;
        snprintf(ev->digests[ev->n], REGISTRY_DIGEST_MAX, "%s", strempty(p->digest));
        ev->completed[ev->n] = p->completed;
        ev->total[ev->n] = p->total;
        ev->n++;
}

static void test_progress_events(void **state) {
        Local *a = local_new("pe-a"), *b = local_new("pe-b");
        Events *ev = calloc(1, sizeof(Events));
        RegistryManifest *m = NULL;
        QdError e = {};

        create_stories(a, "test/progress:v1");
        push(a, "test/progress:v1", NULL);
        RegistryName n = name_of(b, "test/progress:v1");
        assert_int_equal(registry_pull(b->store, &n, record, ev, NULL, NULL, &e), 0);
        assert_true(ev->n >= 6);
        assert_int_equal(ev->kinds[0], REGISTRY_PROGRESS_MANIFEST);
        assert_int_equal(ev->kinds[ev->n - 1], REGISTRY_PROGRESS_DONE);
        assert_int_equal(registry_store_show(b->store, &n, &m, NULL, &e), 0);
        for (size_t i = 0; i <= m->n_layers; i++) {
                const RegistryLayer *l = i < m->n_layers ? &m->layers[i] : &m->config;
                uint64_t last = 0;
                bool verified = false, seen = false;
                for (size_t k = 0; k < ev->n; k++) {
                        if (!streq(ev->digests[k], l->digest))
                                continue;
                        seen = true;
                        assert_true(ev->total[k] == l->size);
                        assert_true(ev->completed[k] >= last);
                        last = ev->completed[k];
                        verified |= ev->kinds[k] == REGISTRY_PROGRESS_VERIFYING;
                }
                assert_true(seen && verified);
                assert_true(last == l->size);
        }
        registry_manifest_free(m);
        free(ev);
        local_free(a);
        local_free(b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup(test_push_pull_roundtrip, reset_proxy),
                cmocka_unit_test_setup(test_chunked_push_and_progress, reset_proxy),
                cmocka_unit_test_setup(test_not_found_and_bad_host, reset_proxy),
                cmocka_unit_test_setup(test_corrupt_blob_rejected, reset_proxy),
                cmocka_unit_test_setup(test_network_faults_retried, reset_proxy),
                cmocka_unit_test_setup(test_retries_exhausted, reset_proxy),
                cmocka_unit_test_setup(test_server_without_ranges, reset_proxy),
                cmocka_unit_test_setup(test_cancel_and_resume, reset_proxy),
                cmocka_unit_test_setup(test_resume_after_kill, reset_proxy),
                cmocka_unit_test_setup(test_concurrent_pulls_share, reset_proxy),
                cmocka_unit_test_setup(test_basic_auth, reset_proxy),
                cmocka_unit_test_setup(test_bearer_auth, reset_proxy),
                cmocka_unit_test_setup(test_tls_verified, reset_proxy),
                cmocka_unit_test_setup(test_bandwidth_cap, reset_proxy),
                cmocka_unit_test_setup(test_progress_events, reset_proxy),
                cmocka_unit_test_setup(test_loopback_one_connection, reset_proxy),
        };
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
