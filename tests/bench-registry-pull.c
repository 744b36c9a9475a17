/* SPDX-License-Identifier: MIT */
/*
 * Pull throughput from a loopback registry beside libcurl fetching the same blob in the same run.
 *
 * A QUANTD_BENCH_MB (default 2048) MiB blob is pushed to Debian's docker-registry on loopback; then, in
 * turn, a plain single-stream libcurl GET writes it to a file (once as is, once followed by fsync(), since a
 * pull makes its blob durable before it becomes visible), and registry_pull() fetches it into an empty store
 * (ranged parts, state on disk, SHA-256 verification, fsync). Each is run twice and the better run counts.
 * Prints MB/s for both, their ratio and the CPU seconds per GB of this process (the registry server runs in
 * its own process). Run with `meson test --benchmark`.
 */

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "registry-harness.h"
#include "registry.h"

typedef struct Sample {
        double seconds;
        double cpu;
} Sample;

static double cpu_seconds(void) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
               (double)ru.ru_stime.tv_usec / 1e6;
}

static size_t to_fd(char *p, size_t s, size_t n, void *u) {
        int fd = *(int *)u;
        size_t len = s * n;
        while (len > 0) {
                ssize_t k = write(fd, p, len);
                if (k <= 0)
                        return 0;
                p += k;
                len -= (size_t)k;
        }
        return s * n;
}

static Sample run_curl(const char *url, const char *path, bool sync) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        CURL *c = curl_easy_init();
        long status = 0;

        assert_true(fd >= 0);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, to_fd);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &fd);
        double c0 = cpu_seconds();
        uint64_t t0 = now_ns();
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        if (sync)
                assert_int_equal(fsync(fd), 0);
        Sample s = {(double)(now_ns() - t0) / 1e9, cpu_seconds() - c0};
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        assert_int_equal(status, 200);
        curl_easy_cleanup(c);
        close(fd);
        unlink(path);
        return s;
}

static Sample run_pull(const char *root, const char *host, const char *name) {
        RegistryConfig config;
        RegistryStore *store = NULL;
        RegistryName n;
        QdError e = {};

        registry_config_init(&config);
        config.insecure_hosts = calloc(2, sizeof(char *));
        config.insecure_hosts[0] = strdup(host);
        /* QUANTD_BENCH_PARTS and QUANTD_BENCH_PART_MB try other settings than the defaults. */
        const char *parts = getenv("QUANTD_BENCH_PARTS"), *part_mb = getenv("QUANTD_BENCH_PART_MB");
        uint64_t v;
        if (parts && safe_atou64(parts, &v) >= 0 && v > 0)
                config.parallel_parts = (unsigned)v;
        if (part_mb && safe_atou64(part_mb, &v) >= 0 && v > 0)
                config.part_size = v << 20;
        assert_int_equal(registry_store_open(&store, root, &config, &e), 0);
        assert_int_equal(registry_name_parse(name, &config, &n, &e), 0);
        double c0 = cpu_seconds();
        uint64_t t0 = now_ns();
        if (registry_pull(store, &n, NULL, NULL, NULL, NULL, &e) < 0)
                fail_msg("pull: %s", e.msg);
        Sample s = {(double)(now_ns() - t0) / 1e9, cpu_seconds() - c0};
        registry_store_free(store);
        registry_config_done(&config);
        harness_rm_rf(root);
        return s;
}

static void bench_pull(void **state) {
        const char *env = getenv("QUANTD_BENCH_MB");
        uint64_t mb = 2048;
        char dir[64];
        RegistryServer reg;
        RegistryConfig config;
        RegistryStore *src = NULL;
        RegistryManifest *m = NULL;
        QdError e = {};

        if (env && safe_atou64(env, &mb) < 0)
                mb = 2048;
        uint64_t size = mb << 20;
        snprintf(dir, sizeof(dir), "/tmp/bench-registry-pull-XXXXXX");
        assert_non_null(mkdtemp(dir));
        harness_start_registry(&reg, dir, "registry", NULL);

        registry_config_init(&config);
        config.insecure_hosts = calloc(2, sizeof(char *));
        config.insecure_hosts[0] = strdup(reg.host);
        char *src_root = strdup_printf("%s/src", dir);
        char *name = strdup_printf("%s/bench/blob:v1", reg.host);
        assert_int_equal(registry_store_open(&src, src_root, &config, &e), 0);
        int fd = harness_random_fd(size, 42);
        RegistryCreateLayer layer = {.media_type = REGISTRY_MEDIA_MODEL, .fd = fd};
        RegistryName n;
        assert_int_equal(registry_name_parse(name, &config, &n, &e), 0);
        assert_int_equal(registry_store_create(src, &n, &layer, 1, NULL, NULL, NULL, NULL, &e), 0);
        close(fd);
        if (registry_push(src, &n, NULL, NULL, NULL, NULL, &e) < 0)
                fail_msg("push: %s", e.msg);
        assert_int_equal(registry_store_show(src, &n, &m, NULL, &e), 0);
        const char *digest = registry_manifest_find_layer(m, REGISTRY_MEDIA_MODEL)->digest;
        /* The source store is not needed any more: give its disk space and page cache back. */
        char *url = strdup_printf("http://%s/v2/bench/blob/blobs/%s", reg.host, digest);
        registry_store_free(src);
        harness_rm_rf(src_root);

        char *curl_file = strdup_printf("%s/curl.out", dir);
        char *dst_root = strdup_printf("%s/dst", dir);
        Sample best_curl = {1e9, 0}, best_sync = {1e9, 0}, best_pull = {1e9, 0};
        for (int i = 0; i < 2; i++) {
                Sample c = run_curl(url, curl_file, false);
                Sample cs = run_curl(url, curl_file, true);
                Sample p = run_pull(dst_root, reg.host, name);
                if (c.seconds < best_curl.seconds)
                        best_curl = c;
                if (cs.seconds < best_sync.seconds)
                        best_sync = cs;
                if (p.seconds < best_pull.seconds)
                        best_pull = p;
        }
        double gb = (double)size / 1e9;
        print_message("# blob: %ju MiB from %s\n", (uintmax_t)mb, reg.host);
        print_message("# curl:          %7.1f MB/s, %.2f CPU s/GB\n", (double)size / 1e6 / best_curl.seconds,
                      best_curl.cpu / gb);
        print_message("# curl + fsync:  %7.1f MB/s, %.2f CPU s/GB\n", (double)size / 1e6 / best_sync.seconds,
                      best_sync.cpu / gb);
        print_message("# registry_pull: %7.1f MB/s, %.2f CPU s/GB\n", (double)size / 1e6 / best_pull.seconds,
                      best_pull.cpu / gb);
        print_message("# ratio to curl: %.2f; to curl + fsync: %.2f\n",
                      best_curl.seconds / best_pull.seconds, best_sync.seconds / best_pull.seconds);

        registry_manifest_free(m);
        harness_stop(&reg);
        harness_rm_rf(dir);
        registry_config_done(&config);
        free(src_root);
        free(dst_root);
        free(curl_file);
        free(name);
        free(url);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(bench_pull),
        };
        curl_global_init(CURL_GLOBAL_DEFAULT);
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        curl_global_cleanup();
        return r;
}
