/* SPDX-License-Identifier: MIT */
/*
 * A real quantd on a temporary socket: Hello and Version, error replies for unknown methods, wrong parameter
 * types, malformed and over-limit frames (while other clients keep being served), connection limits, peer
 * credentials, many clients at once, and a clean exit on SIGTERM.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <msgpack.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "config.h"
#include "daemon-harness.h"

static int setup(void **state) {
        return dh_setup(state, "[Daemon]\nMaxFrameSize=4096\nMaxConnections=8\n", NULL);
}

static int setup_default(void **state) {
        return dh_setup(state, NULL, NULL);
}

static void call_ok(ProtoClient *c, const char *method, ProtoMessage *ret) {
        QdError e = {};
        int k = proto_client_call(c, method, NULL, 0, NULL, 0, NULL, NULL, ret, &e);
        if (k < 0)
                fail_msg("%s failed: %s", method, e.msg);
}

static void test_hello_version(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        ProtoMessage m;
        QdError e = {};

        assert_non_null(c);
        assert_int_equal(proto_client_hello(c, &m, &e), 0);
        assert_int_equal(proto_map_get(m.result, "protocol")->via.u64, PROTO_VERSION_MAJOR);
        const msgpack_object *methods = proto_map_get(m.result, "methods");
        assert_non_null(methods);
        bool generate = false, jobs = false;
        for (uint32_t i = 0; i < methods->via.array.size; i++) {
                generate = generate || proto_str_eq(&methods->via.array.ptr[i], "Generate");
                jobs = jobs || proto_str_eq(&methods->via.array.ptr[i], "Jobs");
        }
        assert_true(generate && jobs);
        const msgpack_object *caps = proto_map_get(m.result, "capabilities");
        assert_true(proto_str_eq(&proto_map_get(caps, "backends")->via.array.ptr[0], "cpu"));
        assert_true(proto_map_get(caps, "types")->via.array.size > 10);
        /* The test runs as the daemon's user or root. */
        assert_true(proto_map_get(caps, "may_change_store")->via.boolean);

        call_ok(c, "Version", &m);
        assert_true(proto_str_eq(proto_map_get(m.result, "version"), PACKAGE_VERSION));

        /* A newer major version is refused with a sentence. */
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "protocol", "2", NULL);
        assert_int_equal(proto_client_call(c, "Hello", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EPROTONOSUPPORT);
        assert_non_null(strstr(e.msg, "install matching versions"));
        msgpack_sbuffer_destroy(&sb);
}

static void test_errors_keep_connection(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(proto_client_call(c, "Frobnicate", NULL, 0, NULL, 0, NULL, NULL, &m, &e),
                         -EOPNOTSUPP);
        assert_string_equal(e.msg, "Unknown method 'Frobnicate'; Hello lists the methods this daemon has.");

        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "5", NULL);
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Show", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        assert_string_equal(e.msg, "Parameter 'model' must be a string, got an integer.");
        msgpack_sbuffer_destroy(&sb);

        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "m", NULL);
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        assert_string_equal(e.msg, "Parameter 'prompt' is required.");
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Show", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -ENOENT);
        assert_non_null(strstr(e.msg, "m:latest' not found"));
        msgpack_sbuffer_destroy(&sb);

        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Pull", NULL, 0, NULL, 0, NULL, NULL, &m, &e), -EINVAL);
        assert_string_equal(e.msg, "Parameter 'model' is required.");
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Chat", NULL, 0, NULL, 0, NULL, NULL, &m, &e), -EINVAL);
        assert_string_equal(e.msg, "Parameter 'model' is required.");
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Cancel", NULL, 0, NULL, 0, NULL, NULL, &m, &e), -EINVAL);
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "id", "77", NULL);
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Cancel", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -ENOENT);
        msgpack_sbuffer_destroy(&sb);

        /* After all that the connection still works. */
        call_ok(c, "Version", &m);
}

/* Sends raw bytes and expects an error reply with msgid 0, then the close. */
static void expect_frame_error(Harness *h, const void *data, size_t size, int error) {
        _cleanup_(proto_client_freep) ProtoClient *bad = dh_connect(h);
        ProtoMessage m;
        QdError e = {};

        assert_non_null(bad);
        assert_int_equal(proto_send(proto_client_fd(bad), data, size, NULL, 0), (ssize_t)size);
        assert_int_equal(proto_client_read(bad, 5000, &m, &e), 1);
        assert_int_equal(m.type, PROTO_RESPONSE);
        assert_int_equal(m.msgid, 0);
        assert_int_equal(m.error, error);
        assert_int_equal(proto_client_read(bad, 5000, &m, &e), -ECONNRESET);
}

static void test_malformed_frames(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *good = dh_connect(h);
        ProtoMessage m;

        call_ok(good, "Version", &m);
        expect_frame_error(h, "GET / HTTP/1.1\r\n\r\n", 18, EBADMSG);
        expect_frame_error(h,
                           "\x94\x00\x00\xa1"
                           "a\x80",
                           6, EBADMSG);                            /* msgid 0 */
        expect_frame_error(h, "\x94\x01\x01\xc0\xc0", 5, EBADMSG); /* a response from a client */
        expect_frame_error(h,
                           "\x94\x00\x01\xa1"
                           "a\x91\x01",
                           7, EBADMSG); /* params not a map */
        /* Over MaxFrameSize=4096, refused from the header alone. */
        expect_frame_error(h,
                           "\x94\x00\x01\xa1"
                           "a\x81\xa1"
                           "k\xdb\x00\x01\x00\x00",
                           13, EMSGSIZE);
        /* Over the limit byte by byte: a 5000-byte string arrives whole. */
        size_t n = 5000 + 16;
        _cleanup_free_ uint8_t *big = malloc(n);
        memcpy(big,
               "\x94\x00\x01\xa1"
               "a\x81\xa1"
               "k\xda\x13\x88",
               11);
        memset(big + 11, 'x', n - 11);
        expect_frame_error(h, big, n, EMSGSIZE);

        /* The daemon still serves the first client, and new ones. */
        call_ok(good, "Version", &m);
        _cleanup_(proto_client_freep) ProtoClient *later = dh_connect(h);
        call_ok(later, "Version", &m);
}

static void test_pipelined(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        ProtoMessage m;
        QdError e = {};
        uint64_t ids[20];

        /* Sent before reading anything: replies come in order, none lost. */
        for (size_t i = 0; i < ELEMENTSOF(ids); i++)
                assert_int_equal(proto_client_send(c, "Version", NULL, 0, NULL, 0, &ids[i]), 0);
        for (size_t i = 0; i < ELEMENTSOF(ids); i++) {
                assert_int_equal(proto_client_read(c, 5000, &m, &e), 1);
                assert_int_equal(m.type, PROTO_RESPONSE);
                assert_int_equal(m.msgid, ids[i]);
                assert_int_equal(m.error, 0);
        }
}

static void test_connection_limit(void **state) {
        Harness *h = *state;
        ProtoClient *c[8] = {};
        ProtoMessage m;
        QdError e = {};

        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                c[i] = dh_connect(h);
                assert_non_null(c[i]);
                call_ok(c[i], "Version", &m);
        }
        _cleanup_(proto_client_freep) ProtoClient *extra = dh_connect(h);
        assert_non_null(extra);
        assert_int_equal(proto_client_read(extra, 5000, &m, &e), 1);
        assert_int_equal(m.error, EBUSY);
        assert_non_null(strstr(m.error_message, "maximum number of connections"));
        proto_client_free(c[0]);
        c[0] = NULL;
        /* A freed slot is usable again once the daemon has seen the close. */
        for (int tries = 0; tries < 100; tries++) {
                _cleanup_(proto_client_freep) ProtoClient *again = dh_connect(h);
                if (proto_client_call(again, "Version", NULL, 0, NULL, 0, NULL, NULL, &m, &e) == 0)
                        break;
                assert_true(tries < 99);
                usleep(20000);
        }
        for (size_t i = 0; i < ELEMENTSOF(c); i++)
                proto_client_free(c[i]);
        assert_true(dh_log_contains(h, "MaxConnections=8 reached"));
}

static void test_unprivileged(void **state) {
        Harness *h = *state;

        if (getuid() != 0)
                skip(); /* only root can become another user to test the refusal */

        /* The socket directory is the test's 0700 temporary directory: let the other user in for this test,
         * before the child tries to connect. */
        assert_int_equal(chmod(h->dir, 0755), 0);
        assert_int_equal(chmod(h->socket, 0666), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                ProtoMessage m;
                QdError e = {};
                msgpack_sbuffer sb;
                if (setgid(65534) < 0 || setuid(65534) < 0)
                        _exit(10);
                ProtoClient *c = dh_connect(h);
                if (!c)
                        _exit(11);
                msgpack_sbuffer_init(&sb);
                dh_params(&sb, "model", "x", NULL);
                int k = proto_client_call(c, "Delete", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e);
                if (k != -EPERM || !strstr(e.msg, "changes the model store"))
                        _exit(12);
                /* Reading methods are open to everyone who can reach the socket. */
                if (proto_client_call(c, "List", NULL, 0, NULL, 0, NULL, NULL, &m, &e) < 0)
                        _exit(13);
                proto_client_free(c);
                _exit(0);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_true(dh_log_contains(h, "Refused Delete from uid 65534"));
}

#define N_CLIENTS 32

static void test_many_clients(void **state) {
        Harness *h = *state;
        pid_t pids[N_CLIENTS];

        /* Separate processes, so the daemon really sees them at once. */
        for (int i = 0; i < N_CLIENTS; i++) {
                pids[i] = fork();
                assert_true(pids[i] >= 0);
                if (pids[i] == 0) {
                        ProtoClient *c = dh_connect(h);
                        ProtoMessage m;
                        QdError e = {};
                        if (!c)
                                _exit(1);
                        for (int j = 0; j < 50; j++)
                                if (proto_client_call(c, j % 2 ? "Version" : "List", NULL, 0, NULL, 0, NULL,
                                                      NULL, &m, &e) < 0)
                                        _exit(2);
                        proto_client_free(c);
                        _exit(0);
                }
        }
        for (int i = 0; i < N_CLIENTS; i++) {
                int status;
                assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
                assert_true(WIFEXITED(status));
                assert_int_equal(WEXITSTATUS(status), 0);
        }
}

static void test_socket_mode(void **state) {
        Harness *h = *state;
        struct stat st;

        /* Not --user, so the system daemon's mode; the group is absent in the test environment. */
        assert_int_equal(stat(h->socket, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0660);

        /* A second daemon on the same socket refuses to start. */
        const char *root = getenv("QUANTD_BUILD_ROOT");
        _cleanup_free_ char *cmd =
                strdup_printf("%s/daemon/quantd --backend=fake --socket=%s --models=%s "
                              "--config=/dev/null 2>&1 | grep -q 'Another daemon is listening'",
                              root, h->socket, h->models);
        assert_int_equal(system(cmd), 0);
}

/* Reads one sd_notify() datagram into buf. */
static void read_notify(int fd, char *buf, size_t size) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        assert_int_equal(poll(&p, 1, 10000), 1);
        ssize_t n = recv(fd, buf, size - 1, 0);
        assert_true(n > 0);
        buf[n] = 0;
}

static void test_socket_activation_and_notify(void **state) {
        char dir[] = "/tmp/quantd-act-XXXXXX";
        assert_non_null(mkdtemp(dir));
        _cleanup_free_ char *sock = strdup_printf("%s/quantd.sock", dir);
        _cleanup_free_ char *notify = strdup_printf("%s/notify", dir);
        _cleanup_free_ char *models = strdup_printf("--models=%s/models", dir);
        _cleanup_free_ char *quantd = strdup_printf("%s/daemon/quantd", getenv("QUANTD_BUILD_ROOT"));
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        char buf[512];

        /* What systemd does: a listening socket as fd 3, a notification socket. */
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        strcpy(sa.sun_path, sock);
        assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(lfd, 16), 0);
        int nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        strcpy(sa.sun_path, notify);
        assert_int_equal(bind(nfd, (struct sockaddr *)&sa, sizeof(sa)), 0);

        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                char pidbuf[32];
                /* dup2() onto itself keeps close-on-exec: clear it explicitly. */
                if (dup2(lfd, 3) < 0 || fcntl(3, F_SETFD, 0) < 0)
                        _exit(126);
                snprintf(pidbuf, sizeof(pidbuf), "%d", (int)getpid());
                setenv("LISTEN_FDS", "1", 1);
                setenv("LISTEN_PID", pidbuf, 1);
                setenv("NOTIFY_SOCKET", notify, 1);
                execl(quantd, quantd, "--backend=fake", "--config=/dev/null",
                      "--socket=/nonexistent/ignored", models, (char *)NULL);
                _exit(127);
        }
        close(lfd);
        read_notify(nfd, buf, sizeof(buf));
        assert_non_null(strstr(buf, "READY=1"));
        assert_non_null(strstr(buf, "STATUS=Serving"));

        ProtoClient *c = NULL;
        ProtoMessage m;
        assert_int_equal(proto_client_connect(sock, &c), 0);
        call_ok(c, "Version", &m);
        proto_client_free(c);

        kill(pid, SIGTERM);
        read_notify(nfd, buf, sizeof(buf));
        assert_non_null(strstr(buf, "STOPPING=1"));
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        /* The socket belongs to systemd: the daemon leaves it in place. */
        struct stat st;
        assert_int_equal(stat(sock, &st), 0);
        close(nfd);
        _cleanup_free_ char *rm = strdup_printf("rm -rf '%s'", dir);
        assert_int_equal(system(rm), 0);
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_hello_version, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_errors_keep_connection, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_malformed_frames, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_pipelined, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_connection_limit, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_unprivileged, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_many_clients, setup_default, dh_teardown),
                cmocka_unit_test_setup_teardown(test_socket_mode, setup, dh_teardown),
                cmocka_unit_test(test_socket_activation_and_notify),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
