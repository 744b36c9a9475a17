/* SPDX-License-Identifier: MIT */
/* common/proto-client.c: calls, streamed events, error replies, Hello's version check, timeouts, EOF. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <msgpack.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "common.h"

typedef struct Pair {
        ProtoClient *client;
        int server; /* the other end, played by the test */
        ProtoReader *reader;
        msgpack_sbuffer sb;
        msgpack_packer pk;
} Pair;

static int setup(void **state) {
        Pair *p = calloc(1, sizeof(Pair));
        int sv[2];

        assert_non_null(p);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(proto_client_new_take_fd(sv[0], &p->client), 0);
        p->server = sv[1];
        assert_int_equal(proto_reader_new(&p->reader, 0), 0);
        msgpack_sbuffer_init(&p->sb);
        proto_packer_init(&p->pk, &p->sb);
        *state = p;
        return 0;
}

static int teardown(void **state) {
        Pair *p = *state;
        proto_client_free(p->client);
        safe_close(p->server);
        proto_reader_free(p->reader);
        msgpack_sbuffer_destroy(&p->sb);
        free(p);
        return 0;
}

/* Sends what the test packed into p->sb from the server's end. */
static void server_flush(Pair *p) {
        assert_int_equal(proto_send(p->server, p->sb.data, p->sb.size, NULL, 0), (ssize_t)p->sb.size);
        msgpack_sbuffer_clear(&p->sb);
}

static void server_expect(Pair *p, uint64_t msgid, const char *method, ProtoMessage *m) {
        for (;;) {
                int k = proto_reader_next(p->reader, m, NULL);
                assert_true(k >= 0);
                if (k == 1)
                        break;
                assert_true(proto_reader_fill(p->reader, p->server) > 0);
        }
        assert_int_equal(m->type, PROTO_REQUEST);
        assert_int_equal(m->msgid, msgid);
        assert_string_equal(m->name, method);
}

static int count_tokens(const ProtoMessage *ev, void *userdata) {
        int *n = userdata;
        assert_string_equal(ev->name, "token");
        (*n)++;
        return 0;
}

static int refuse_event(const ProtoMessage *ev, void *userdata) {
        return -ECANCELED;
}

static void test_call(void **state) {
        Pair *p = *state;
        ProtoMessage m;
        QdError e = {};
        int tokens = 0;

        /* The reply is queued before the call, so the single-threaded test needs no server thread. Another
         * request's notification and a stale response are skipped. */
        assert_int_equal(proto_pack_notification_begin(&p->pk, "token", 99, 0), 0);
        for (int i = 0; i < 3; i++) {
                assert_int_equal(proto_pack_notification_begin(&p->pk, "token", 1, 1), 0);
                assert_int_equal(proto_pack_kv_str(&p->pk, "text", "x"), 0);
        }
        assert_int_equal(proto_pack_response_begin(&p->pk, 99), 0);
        assert_int_equal(msgpack_pack_nil(&p->pk), 0);
        assert_int_equal(proto_pack_response_begin(&p->pk, 1), 0);
        assert_int_equal(msgpack_pack_map(&p->pk, 1), 0);
        assert_int_equal(proto_pack_kv_u64(&p->pk, "eval_count", 3), 0);
        server_flush(p);

        msgpack_sbuffer params;
        msgpack_packer pk;
        msgpack_sbuffer_init(&params);
        proto_packer_init(&pk, &params);
        assert_int_equal(msgpack_pack_map(&pk, 1), 0);
        assert_int_equal(proto_pack_kv_str(&pk, "model", "m"), 0);
        assert_int_equal(proto_client_call(p->client, "Generate", params.data, params.size, NULL, 0,
                                           count_tokens, &tokens, &m, &e),
                         0);
        msgpack_sbuffer_destroy(&params);
        assert_int_equal(tokens, 3);
        assert_int_equal(proto_map_get(m.result, "eval_count")->via.u64, 3);

        ProtoMessage req;
        server_expect(p, 1, "Generate", &req);
        assert_true(proto_str_eq(proto_map_get(req.params, "model"), "m"));

        /* An error reply becomes -errno and its sentence. */
        assert_int_equal(proto_pack_error(&p->pk, 2, ENOENT, "Model 'm' not found."), 0);
        server_flush(p);
        assert_int_equal(proto_client_call(p->client, "Show", NULL, 0, NULL, 0, NULL, NULL, &m, &e),
                         -ENOENT);
        assert_string_equal(e.msg, "Model 'm' not found.");
        server_expect(p, 2, "Show", &req);
        assert_int_equal(req.params->via.map.size, 0);

        /* A frame-level error (msgid 0) ends the wait too. */
        qd_error_clear(&e);
        assert_int_equal(proto_pack_error(&p->pk, 0, EBADMSG, "Malformed frame."), 0);
        server_flush(p);
        assert_int_equal(proto_client_call(p->client, "List", NULL, 0, NULL, 0, NULL, NULL, NULL, &e),
                         -EBADMSG);
        assert_string_equal(e.msg, "Malformed frame.");

        /* An event handler's error aborts the wait. */
        assert_int_equal(proto_pack_notification_begin(&p->pk, "token", 4, 0), 0);
        server_flush(p);
        assert_int_equal(
                proto_client_call(p->client, "Generate", NULL, 0, NULL, 0, refuse_event, NULL, NULL, &e),
                -ECANCELED);
}

static void test_descriptors(void **state) {
        Pair *p = *state;
        ProtoMessage req;
        int pipefd[2];

        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
        assert_int_equal(proto_client_send(p->client, "Create", NULL, 0, pipefd, 1, NULL), 0);
        server_expect(p, 1, "Create", &req);
        assert_int_equal(req.n_fds, 1);
        struct stat a, b;
        assert_int_equal(fstat(req.fds[0], &a), 0);
        assert_int_equal(fstat(pipefd[0], &b), 0);
        assert_true(a.st_ino == b.st_ino);
        safe_close(pipefd[0]);
        safe_close(pipefd[1]);
}

static void test_hello(void **state) {
        Pair *p = *state;
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(proto_pack_response_begin(&p->pk, 1), 0);
        assert_int_equal(msgpack_pack_map(&p->pk, 1), 0);
        assert_int_equal(proto_pack_kv_u64(&p->pk, "protocol", PROTO_VERSION_MAJOR), 0);
        server_flush(p);
        assert_int_equal(proto_client_hello(p->client, &m, &e), 0);
        ProtoMessage req;
        server_expect(p, 1, "Hello", &req);
        assert_int_equal(proto_map_get(req.params, "protocol")->via.u64, PROTO_VERSION_MAJOR);

        assert_int_equal(proto_pack_response_begin(&p->pk, 2), 0);
        assert_int_equal(msgpack_pack_map(&p->pk, 1), 0);
        assert_int_equal(proto_pack_kv_u64(&p->pk, "protocol", PROTO_VERSION_MAJOR + 1), 0);
        server_flush(p);
        assert_int_equal(proto_client_hello(p->client, &m, &e), -EPROTONOSUPPORT);
        assert_non_null(strstr(e.msg, "install matching versions"));

        qd_error_clear(&e);
        assert_int_equal(proto_pack_response_begin(&p->pk, 3), 0);
        assert_int_equal(msgpack_pack_map(&p->pk, 0), 0);
        server_flush(p);
        assert_int_equal(proto_client_hello(p->client, &m, &e), -EPROTO);
}

static void test_timeout_and_eof(void **state) {
        Pair *p = *state;
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(proto_client_read(p->client, 20, &m, &e), -ETIMEDOUT);
        /* Half a message, then the daemon goes away. */
        assert_int_equal(write(p->server, "\x94\x01", 2), 2);
        p->server = safe_close(p->server);
        assert_int_equal(proto_client_read(p->client, -1, &m, &e), -EBADMSG);
        assert_string_equal(e.msg, "The daemon closed the connection mid-message.");
}

static void test_eof(void **state) {
        Pair *p = *state;
        ProtoMessage m;
        QdError e = {};

        p->server = safe_close(p->server);
        assert_int_equal(proto_client_read(p->client, -1, &m, &e), -ECONNRESET);
        assert_int_equal(proto_client_call(p->client, "List", NULL, 0, NULL, 0, NULL, NULL, NULL, &e),
                         -EPIPE);
}

static void test_connect(void **state) {
        ProtoClient *c = NULL;
        char path[] = "/tmp/quantd-test-XXXXXX";
        assert_non_null(mkdtemp(path));
        _cleanup_free_ char *sock = strdup_printf("%s/s", path);

        assert_int_equal(proto_client_connect(sock, &c), -ENOENT);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strcpy(sa.sun_path, sock);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(fd, 1), 0);
        assert_int_equal(proto_client_connect(sock, &c), 0);
        assert_true(proto_client_fd(c) >= 0);
        proto_client_free(c);
        char longpath[200];
        memset(longpath, 'a', sizeof(longpath) - 1);
        longpath[sizeof(longpath) - 1] = 0;
        assert_int_equal(proto_client_connect(longpath, &c), -ENAMETOOLONG);
        safe_close(fd);
        unlink(sock);
        rmdir(path);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_call, setup, teardown),
                cmocka_unit_test_setup_teardown(test_descriptors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hello, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeout_and_eof, setup, teardown),
                cmocka_unit_test_setup_teardown(test_eof, setup, teardown),
                cmocka_unit_test(test_connect),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
