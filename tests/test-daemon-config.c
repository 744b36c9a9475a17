/* SPDX-License-Identifier: MIT */
/* daemon/config.c: quantd.conf's keys, defaults, sizes, durations, and errors that name the file and line.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "daemon.h"

static char *write_conf(const char *text) {
        char *path = strdup("/tmp/quantd-conf-XXXXXX");
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        return path;
}

static int load(DaemonConfig *c, const char *text, QdError *e) {
        _cleanup_free_ char *path = write_conf(text);
        daemon_config_init(c);
        qd_error_clear(e);
        int k = daemon_config_load(c, path, e);
        unlink(path);
        return k;
}

static void test_defaults_and_keys(void **state) {
        DaemonConfig c;
        QdError e = {};

        daemon_config_init(&c);
        assert_int_equal(c.workers, 2);
        assert_int_equal(c.num_parallel, 4);
        assert_true(c.keep_alive_ns == 300000000000LL);
        assert_true(c.gpu_budget == 0);
        assert_true(c.gpu_overhead == 512ULL << 20);
        daemon_config_done(&c);

        assert_int_equal(
                load(&c,
                     "# comment\n; another\n\n[Daemon]\nSocket=/run/x.sock\n Models = /srv/models \n"
                     "Group=llm\nLogLevel=debug\nWorkers=8\nMaxConnections=10\nMaxRequestsPerConnection=3\n"
                     "MaxFrameSize=1M\nMaxQueuedOutput=64K\nKeepFinishedJobs=0\n"
                     "[Registry]\nDefaultHost=example.com\nWhatever=1\n"
                     "[Scheduler]\nKeepAlive=-1\nMaxLoadedModels=5\nMemoryBudget=1.5G\nLoadTimeout=30s\n"
                     "NumParallel=16\nContextLength=4096\nThreads=3\nNoSuchKey=1\nGpuMemoryBudget=20G\n"
                     "GpuOverhead=1G\n[Mystery]\nA=b\n",
                     &e),
                0);
        assert_string_equal(c.socket, "/run/x.sock");
        assert_string_equal(c.models, "/srv/models");
        assert_string_equal(c.group, "llm");
        assert_int_equal(c.log_level, LOG_LEVEL_DEBUG);
        assert_int_equal(c.workers, 8);
        assert_int_equal(c.max_connections, 10);
        assert_int_equal(c.max_requests, 3);
        assert_int_equal(c.max_frame, 1048576);
        assert_int_equal(c.max_output, 65536);
        assert_int_equal(c.finished_jobs, 0);
        assert_true(c.keep_alive_ns == -1000000000LL);
        assert_int_equal(c.max_loaded, 5);
        assert_true(c.memory_budget == 1610612736ULL);
        assert_true(c.load_timeout_ns == 30000000000LL);
        assert_int_equal(c.num_parallel, 16);
        assert_int_equal(c.num_ctx, 4096);
        assert_int_equal(c.threads, 3);
        assert_true(c.gpu_budget == 20ULL << 30);
        assert_true(c.gpu_overhead == 1ULL << 30);
        daemon_config_done(&c);

        /* An empty value resets a string to the default. */
        assert_int_equal(load(&c, "[Daemon]\nGroup=\n", &e), 0);
        assert_null(c.group);
        daemon_config_done(&c);
}

static void test_errors(void **state) {
        static const struct {
                const char *text;
                const char *message; /* after "PATH:" */
        } bad[] = {
                {"[Daemon]\nWorkers=0\n", ":2: Workers= must be a number from 1 to 256, got '0'."},
                {"[Daemon]\nWorkers=many\n", ":2: Workers= must be a number from 1 to 256, got 'many'."},
                {"[Daemon]\nMaxFrameSize=12Q\n",
                 ":2: MaxFrameSize= must be a size such as 512M or 8G within its "
                 "limits, got '12Q'."},
                {"[Daemon]\nMaxFrameSize=100\n",
                 ":2: MaxFrameSize= must be a size such as 512M or 8G within its "
                 "limits, got '100'."},
                {"\n[Scheduler]\nKeepAlive=soon\n",
                 ":3: KeepAlive= must be a duration such as 5m or 30s, got 'soon'."},
                {"[Scheduler]\nGpuOverhead=-1G\n",
                 ":2: GpuOverhead= must be a size such as 512M or 8G, got '-1G'."},
                {"[Scheduler]\nGpuMemoryBudget=lots\n",
                 ":2: GpuMemoryBudget= must be a size such as 512M or 8G, got 'lots'."},
                {"[Daemon]\nLogLevel=loud\n",
                 ":2: LogLevel= must be err, warning, notice, info or debug, got 'loud'."},
                {"Workers=2\n", ":1: 'Workers=2' comes before any [Section]."},
                {"[Daemon\n", ":1: a section header must look like [Daemon]."},
                {"[Daemon]\njust words\n", ":2: expected Key=value, got 'just words'."},
        };
        DaemonConfig c;
        QdError e = {};

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                assert_int_equal(load(&c, bad[i].text, &e), -EINVAL);
                const char *colon = strchr(e.msg, ':');
                assert_non_null(colon);
                assert_string_equal(colon, bad[i].message);
                daemon_config_done(&c);
        }
        daemon_config_init(&c);
        assert_int_equal(daemon_config_load(&c, "/nonexistent/quantd.conf", &e), -ENOENT);
        assert_int_equal(daemon_config_load(&c, "/", &e), -EISDIR);
        daemon_config_done(&c);
}

static void test_bytes(void **state) {
        uint64_t v;

        assert_int_equal(daemon_parse_bytes("512", &v), 0);
        assert_int_equal(v, 512);
        assert_int_equal(daemon_parse_bytes("64K", &v), 0);
        assert_int_equal(v, 65536);
        assert_int_equal(daemon_parse_bytes("2g", &v), 0);
        assert_true(v == 2147483648ULL);
        assert_int_equal(daemon_parse_bytes("1.5M", &v), 0);
        assert_int_equal(v, 1572864);
        assert_int_equal(daemon_parse_bytes("8GB", &v), 0);
        assert_true(v == 8589934592ULL);
        assert_int_equal(daemon_parse_bytes("-1K", &v), -EINVAL);
        assert_int_equal(daemon_parse_bytes("K", &v), -EINVAL);
        assert_int_equal(daemon_parse_bytes("", &v), -EINVAL);
        assert_int_equal(daemon_parse_bytes("99999999T", &v), -ERANGE);
}

static void test_paths(void **state) {
        DaemonPaths p;

        setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
        setenv("XDG_DATA_HOME", "/home/u/.local/share", 1);
        setenv("XDG_CONFIG_HOME", "/home/u/.config", 1);
        unsetenv("QUANTD_SOCKET");
        unsetenv("QUANTD_MODELS");
        assert_int_equal(daemon_paths_resolve(&p, true), 0);
        assert_string_equal(p.socket, "/run/user/1000/quantd/quantd.sock");
        assert_string_equal(p.models, "/home/u/.local/share/quantd/models");
        assert_string_equal(p.config, "/home/u/.config/quantd/quantd.conf");
        daemon_paths_done(&p);
        setenv("QUANTD_SOCKET", "/tmp/s", 1);
        assert_int_equal(daemon_paths_resolve(&p, false), 0);
        assert_string_equal(p.socket, "/tmp/s");
        assert_string_equal(p.models, "/var/lib/quantd/models");
        daemon_paths_done(&p);
        unsetenv("XDG_RUNTIME_DIR");
        assert_int_equal(daemon_paths_resolve(&p, true), -ENXIO);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults_and_keys),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_bytes),
                cmocka_unit_test(test_paths),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
