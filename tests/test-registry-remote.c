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

#include "registry.h"

typedef struct World {
        char dir[64];
        pid_t registry_pid, auth_registry_pid, proxy_pid;
        unsigned registry_port, auth_port, proxy_port;
        char proxy_host[32], auth_host[32], direct_host[32];
        uint64_t big_size;
} World;

static World W;

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
        return remove(p);
}

static unsigned free_port(void) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(a);

        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
        close(fd);
        return ntohs(a.sin_port);
}

static const char *registry_dir(void) {
        const char *d = getenv("QUANTD_TEST_REGISTRY_DIR");
        if (!d)
                fail_msg("QUANTD_TEST_REGISTRY_DIR is not set");
        return d;
}

static size_t discard_cb(char *p, size_t s, size_t n, void *u) {
        Buf *b = u;
        if (b)
                buf_append(b, p, s * n);
        return s * n;
}

/* One HTTP request to a test server; returns the status, 0 when nothing answered. */
static long http_simple(const char *method, const char *url, Buf *body) {
        CURL *c = curl_easy_init();
        long status = 0;

        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_cb);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
        if (streq(method, "POST"))
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        if (curl_easy_perform(c) == CURLE_OK)
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        return status;
}

static void wait_for_http(const char *url) {
        for (int i = 0; i < 200; i++) {
                if (http_simple("GET", url, NULL) != 0)
                        return;
                struct timespec ts = {0, 50 * 1000000L};
                nanosleep(&ts, NULL);
        }
        fail_msg("%s did not come up", url);
}

static pid_t start_registry(const char *name, unsigned port, bool auth) {
        char *root = strdup_printf("%s/%s", W.dir, name);
        char *addr = strdup_printf("127.0.0.1:%u", port);
        char *config = strdup_printf("%s/config.yml", registry_dir());
        char *htpasswd = strdup_printf("%s/htpasswd", registry_dir());
        char *log = strdup_printf("%s/%s.log", W.dir, name);
        assert_int_equal(mkdir(root, 0755), 0);

        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                dup2(fd, 1);
                dup2(fd, 2);
                setenv("REGISTRY_HTTP_ADDR", addr, 1);
                setenv("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", root, 1);
                setenv("REGISTRY_HTTP_SECRET", "quantd-test", 1);
                if (auth) {
                        setenv("REGISTRY_AUTH_HTPASSWD_PATH", htpasswd, 1);
                        setenv("REGISTRY_AUTH_HTPASSWD_REALM", "quantd-test", 1);
                }
                execlp("docker-registry", "docker-registry", "serve", config, (char *)NULL);
                fprintf(stderr, "docker-registry: %m\n");
                _exit(127);
        }
        char *url = strdup_printf("http://%s/v2/", addr);
        wait_for_http(url);
        free(url);
        free(root);
        free(addr);
        free(config);
        free(htpasswd);
        free(log);
        return pid;
}

static pid_t start_proxy(unsigned upstream, unsigned *ret_port) {
        char *script = strdup_printf("%s/fault-proxy.py", registry_dir());
        char *up = strdup_printf("127.0.0.1:%u", upstream);
        int pipefd[2];

        assert_int_equal(pipe(pipefd), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                dup2(pipefd[1], 1);
                close(pipefd[0]);
                execlp("python3", "python3", script, "--upstream", up, (char *)NULL);
                _exit(127);
        }
        close(pipefd[1]);
        char line[64] = {};
        size_t n = 0;
        while (n + 1 < sizeof(line)) {
                ssize_t k = read(pipefd[0], line + n, 1);
                if (k <= 0 || line[n] == '\n')
                        break;
                n++;
        }
        close(pipefd[0]);
        if (sscanf(line, "PORT %u", ret_port) != 1)
                fail_msg("fault-proxy.py did not start");
        free(script);
        free(up);
        return pid;
}

static void stop(pid_t pid) {
        if (pid > 0) {
                kill(pid, SIGTERM);
                waitpid(pid, NULL, 0);
        }
}

static int group_setup(void **state) {
        const char *big = getenv("QUANTD_TEST_BIG_MB");
        uint64_t mb = 300;

        if (big && safe_atou64(big, &mb) < 0)
                mb = 300;
        W.big_size = mb << 20;
        curl_global_init(CURL_GLOBAL_DEFAULT);
        snprintf(W.dir, sizeof(W.dir), "/tmp/test-registry-remote-XXXXXX");
        assert_non_null(mkdtemp(W.dir));
        W.registry_port = free_port();
        W.registry_pid = start_registry("registry", W.registry_port, false);
        W.auth_port = free_port();
        W.auth_registry_pid = start_registry("auth-registry", W.auth_port, true);
        W.proxy_pid = start_proxy(W.registry_port, &W.proxy_port);
        snprintf(W.proxy_host, sizeof(W.proxy_host), "127.0.0.1:%u", W.proxy_port);
        snprintf(W.auth_host, sizeof(W.auth_host), "127.0.0.1:%u", W.auth_port);
        snprintf(W.direct_host, sizeof(W.direct_host), "127.0.0.1:%u", W.registry_port);
        return 0;
}

static int group_teardown(void **state) {
        stop(W.proxy_pid);
        stop(W.auth_registry_pid);
        stop(W.registry_pid);
        nftw(W.dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
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
        char *url = strdup_printf("http://%s%s", W.proxy_host, path);
        assert_int_equal(http_simple("POST", url, NULL), 200);
        free(url);
}

static uint64_t proxy_stat(const char *key) {
        char *url = strdup_printf("http://%s/__stats", W.proxy_host);
        Buf b = {};
        json_object *o, *v;

        assert_int_equal(http_simple("GET", url, &b), 200);
        o = json_tokener_parse((const char *)b.data);
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, key, &v));
        uint64_t n = (uint64_t)json_object_get_int64(v);
        json_object_put(o);
        buf_free(&b);
        free(url);
        return n;
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
        l->config.default_host = strdup(W.proxy_host);
        l->config.insecure_hosts = calloc(4, sizeof(char *));
        l->config.insecure_hosts[0] = strdup(W.proxy_host);
        l->config.insecure_hosts[1] = strdup(W.auth_host);
        l->config.insecure_hosts[2] = strdup(W.direct_host);
        l->config.part_size = 256 * 1024;
        l->config.parallel_parts = 4;
        l->config.backoff_ms = 20;
        l->config.max_retries = 4;
        l->config.stall_timeout_s = 2;
        assert_int_equal(registry_store_open(&l->store, l->root, &l->config, &e), 0);
        return l;
}

static void local_free(Local *l) {
        registry_store_free(l->store);
        registry_config_done(&l->config);
        nftw(l->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
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
        if (registry_store_create(l->store, &n, layers, ELEMENTSOF(layers), NULL, NULL, &e) < 0)
                fail_msg("create: %s", e.msg);
        close(fd);
}

/* A model whose weights are size pseudo-random bytes (xorshift), for the large-blob tests. */
static void create_big(Local *l, const char *name, uint64_t size) {
        int fd = memfd_create("big", MFD_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t)size), 0);
        uint64_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        assert_true(p != MAP_FAILED);
        uint64_t x = 0x9E3779B97F4A7C15ULL;
        for (uint64_t i = 0; i < size / 8; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = x;
        }
        munmap(p, size);
        RegistryCreateLayer layer = {.media_type = REGISTRY_MEDIA_MODEL, .fd = fd};
        RegistryName n = name_of(l, name);
        QdError e = {};
        if (registry_store_create(l->store, &n, &layer, 1, NULL, NULL, &e) < 0)
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
        char *name = strdup_printf("localhost:%u/test/stories:v1", W.registry_port);
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
        assert_int_equal(pull(b, "test/faults:v1", &st, &e), 0);
        assert_true(st.retries >= 7);
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
        char *name = strdup_printf("%s/test/private:v1", W.auth_host);

        add_credential(a, W.auth_host, "quantd", "s3cret-pass");
        add_credential(b, W.auth_host, "quantd", "s3cret-pass");
        add_credential(d, W.auth_host, "quantd", "wrong");
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
        Local *a = local_new("be-a"), *b = local_new("be-b");
        QdError e = {};

        create_stories(a, "test/token:v1");
        push(a, "test/token:v1", NULL);
        proxy("/__bearer?on=1");
        assert_int_equal(pull(b, "test/token:v1", NULL, &e), 0);
        assert_true(proxy_stat("token_requests") >= 1);
        RegistryName n = name_of(b, "test/token:v1");
        assert_int_equal(registry_store_verify(b->store, &n, &e), 0);
        proxy("/__reset");
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
        };
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
