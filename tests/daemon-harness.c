/* SPDX-License-Identifier: MIT */
/* The integration tests' harness: a real quantd on a temporary socket and models directory. */

#include <fcntl.h>
#include <msgpack.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "daemon-harness.h"

int dh_start(Harness *h, const char *config, const char *const *extra_args) {
        const char *root = getenv("QUANTD_BUILD_ROOT");
        _cleanup_free_ char *quantd = NULL, *conf = NULL;
        const char *argv[32];
        size_t n = 0;

        *h = (Harness){};
        snprintf(h->dir, sizeof(h->dir), "/tmp/quantd-it-XXXXXX");
        if (!root || !mkdtemp(h->dir))
                return -EINVAL;
        quantd = strdup_printf("%s/daemon/quantd", root);
        conf = strdup_printf("%s/quantd.conf", h->dir);
        h->socket = strdup_printf("%s/quantd.sock", h->dir);
        h->models = strdup_printf("%s/models", h->dir);
        h->log = strdup_printf("%s/log", h->dir);
        if (!quantd || !conf || !h->socket || !h->models || !h->log)
                return -ENOMEM;
        FILE *f = fopen(conf, "we");
        if (!f)
                return -errno;
        fputs(config ? config : "", f);
        fclose(f);

        _cleanup_free_ char *a_socket = strdup_printf("--socket=%s", h->socket);
        _cleanup_free_ char *a_models = strdup_printf("--models=%s", h->models);
        _cleanup_free_ char *a_config = strdup_printf("--config=%s", conf);
        const char *vg = getenv("QUANTD_TEST_VALGRIND");
        if (vg && streq(vg, "1")) {
                argv[n++] = "valgrind";
                argv[n++] = "--leak-check=full";
                argv[n++] = "--errors-for-leak-kinds=definite";
                argv[n++] = "--error-exitcode=99";
                argv[n++] = "-q";
        }
        argv[n++] = quantd;
        argv[n++] = a_socket;
        argv[n++] = a_models;
        argv[n++] = a_config;
        bool backend = false;
        for (size_t i = 0; extra_args && extra_args[i]; i++)
                backend = backend || startswith(extra_args[i], "--backend=");
        if (!backend)
                argv[n++] = "--backend=fake";
        argv[n++] = "--log-level=debug";
        for (size_t i = 0; extra_args && extra_args[i] && n < ELEMENTSOF(argv) - 1; i++)
                argv[n++] = extra_args[i];
        argv[n] = NULL;

        h->pid = fork();
        if (h->pid < 0)
                return -errno;
        if (h->pid == 0) {
                int fd = open(h->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (fd >= 0)
                        dup2(fd, STDERR_FILENO);
                /* Not socket-activated, whatever the test runner's environment says. */
                unsetenv("LISTEN_FDS");
                unsetenv("LISTEN_PID");
                unsetenv("NOTIFY_SOCKET");
                execvp(argv[0], (char **)argv);
                _exit(127);
        }
        /* Ready when the socket answers. */
        for (int i = 0; i < 1000; i++) {
                ProtoClient *c = NULL;
                if (proto_client_connect(h->socket, &c) >= 0) {
                        proto_client_free(c);
                        return 0;
                }
                int status;
                if (waitpid(h->pid, &status, WNOHANG) == h->pid) {
                        h->pid = 0;
                        return -ECHILD;
                }
                usleep(10000);
        }
        return -ETIMEDOUT;
}

int dh_stop(Harness *h) {
        int status = 0, result = h->pid > 0 ? -1 : 0;

        if (h->pid > 0) {
                kill(h->pid, SIGTERM);
                if (waitpid(h->pid, &status, 0) == h->pid)
                        result = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (result != 0 && h->log) {
                /* Show the daemon's side of a failure. */
                _cleanup_free_ char *cmd = strdup_printf("sed 's/^/# quantd: /' %s >&2", h->log);
                if (cmd)
                        (void)!system(cmd);
        }
        const char *keep = getenv("QUANTD_TEST_KEEP");
        if (h->dir[0] && !(keep && streq(keep, "1"))) {
                _cleanup_free_ char *cmd = strdup_printf("rm -rf '%s'", h->dir);
                if (cmd)
                        (void)!system(cmd);
        }
        free(h->socket);
        free(h->models);
        free(h->log);
        *h = (Harness){};
        return result;
}

int dh_setup(void **state, const char *config, const char *const *extra_args) {
        Harness *h = calloc(1, sizeof(Harness));

        assert_non_null(h);
        *state = h;
        assert_int_equal(dh_start(h, config, extra_args), 0);
        return 0;
}

int dh_teardown(void **state) {
        Harness *h = *state;

        /* A quantd that the test stopped itself leaves nothing to stop: dh_stop() gives 0 then. */
        assert_int_equal(dh_stop(h), 0);
        free(h);
        return 0;
}

const char *dh_smollm_path(void) {
        const char *path = getenv("QUANTD_TEST_SMOLLM");

        if (!path || access(path, R_OK) < 0)
                fail_msg("QUANTD_TEST_SMOLLM must name SmolLM2-135M-Instruct.Q4_1.gguf (see .ci/lib.sh).");
        return path;
}

ProtoClient *dh_connect(Harness *h) {
        ProtoClient *c = NULL;
        if (proto_client_connect(h->socket, &c) < 0)
                return NULL;
        return c;
}

int dh_chat(ProtoClient *c, const char *model, const char *role, const char *content, int64_t num_predict,
            double repeat_penalty, ProtoMessage *ret, QdError *e) {
        msgpack_sbuffer sb;
        msgpack_packer pk;

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 4);
        proto_pack_kv_str(&pk, "model", model);
        proto_pack_kv_bool(&pk, "stream", false);
        proto_pack_key(&pk, "messages");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "role", role);
        proto_pack_kv_str(&pk, "content", content);
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, repeat_penalty > 0 ? 3 : 2);
        proto_pack_kv_i64(&pk, "num_predict", num_predict);
        proto_pack_kv_double(&pk, "temperature", 0);
        if (repeat_penalty > 0)
                proto_pack_kv_double(&pk, "repeat_penalty", repeat_penalty);
        qd_error_clear(e);
        int k = proto_client_call(c, "Chat", sb.data, sb.size, NULL, 0, NULL, NULL, ret, e);
        msgpack_sbuffer_destroy(&sb);
        return k;
}

int dh_cancel(ProtoClient *c, uint64_t id, uint64_t *ret_msgid) {
        msgpack_sbuffer sb;
        msgpack_packer pk;

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 1);
        proto_pack_kv_u64(&pk, "id", id);
        int k = proto_client_send(c, "Cancel", sb.data, sb.size, NULL, 0, ret_msgid);
        msgpack_sbuffer_destroy(&sb);
        return k;
}

bool dh_log_contains(Harness *h, const char *s) {
        _cleanup_fclose_ FILE *f = fopen(h->log, "re");
        char line[4096];
        while (f && fgets(line, sizeof(line), f))
                if (strstr(line, s))
                        return true;
        return false;
}

void dh_params(msgpack_sbuffer *sb, ...) {
        msgpack_packer pk;
        va_list ap;
        size_t n = 0;

        va_start(ap, sb);
        while (va_arg(ap, const char *))
                n++;
        va_end(ap);
        proto_packer_init(&pk, sb);
        msgpack_pack_map(&pk, n / 2);
        va_start(ap, sb);
        for (size_t i = 0; i < n / 2; i++) {
                const char *k = va_arg(ap, const char *), *v = va_arg(ap, const char *);
                int64_t iv;
                proto_pack_key(&pk, k);
                if (safe_atoi64(v, &iv) >= 0)
                        msgpack_pack_int64(&pk, iv);
                else if (streq(v, "true") || streq(v, "false"))
                        streq(v, "true") ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
                else
                        proto_pack_str(&pk, v);
        }
        va_end(ap);
}

int dh_create_model(Harness *h, ProtoClient *c, const char *name, const char *contents) {
        _cleanup_free_ char *path = strdup_printf("%s/%s.model", h->dir, name);

        FILE *f = fopen(path, "we");
        if (!f)
                return -errno;
        fputs(contents, f);
        fclose(f);
        return dh_create_from_file(h, c, name, path);
}

int dh_create_from_file(Harness *h, ProtoClient *c, const char *name, const char *path) {
        msgpack_sbuffer sb;
        QdError e = {};

        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", name, "gguf", "0", NULL);
        int k = proto_client_call(c, "Create", sb.data, sb.size, &fd, 1, NULL, NULL, NULL, &e);
        msgpack_sbuffer_destroy(&sb);
        if (k < 0)
                fprintf(stderr, "# Create %s failed: %s\n", name, e.msg);
        return k;
}
