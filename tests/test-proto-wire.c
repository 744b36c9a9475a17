/* SPDX-License-Identifier: MIT */
/* common/proto.c: framing round trips, malformed and over-limit frames, typed params, descriptor passing. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <msgpack.h>
#include <signal.h>
#include <sys/socket.h>

#include "common.h"

typedef struct Packed {
        msgpack_sbuffer sb;
        msgpack_packer pk;
} Packed;

static void packed_init(Packed *p) {
        msgpack_sbuffer_init(&p->sb);
        proto_packer_init(&p->pk, &p->sb);
}

static void packed_done(Packed *p) {
        msgpack_sbuffer_destroy(&p->sb);
}

static ProtoReader *reader_with(const void *data, size_t size, size_t frame_max) {
        ProtoReader *r;
        assert_int_equal(proto_reader_new(&r, frame_max), 0);
        assert_int_equal(proto_reader_feed(r, data, size), 0);
        return r;
}

/* Decodes data as one frame and expects error with a message containing needle. */
static void expect_bad(const void *data, size_t size, size_t frame_max, int error, const char *needle) {
        _cleanup_(proto_reader_freep) ProtoReader *r = reader_with(data, size, frame_max);
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(proto_reader_next(r, &m, &e), -error);
        assert_int_equal(e.code, error);
        if (!strstr(e.msg, needle))
                fail_msg("error message '%s' lacks '%s'", e.msg, needle);
}

static void test_round_trip(void **state) {
        Packed p;
        packed_init(&p);

        assert_int_equal(proto_pack_request_begin(&p.pk, 7, "Generate"), 0);
        assert_int_equal(msgpack_pack_map(&p.pk, 3), 0);
        assert_int_equal(proto_pack_kv_str(&p.pk, "model", "stories"), 0);
        assert_int_equal(proto_pack_kv_bool(&p.pk, "stream", true), 0);
        assert_int_equal(proto_pack_kv_double(&p.pk, "temperature", 0.5), 0);
        assert_int_equal(proto_pack_notification_begin(&p.pk, "token", 7, 1), 0);
        assert_int_equal(proto_pack_kv_str(&p.pk, "text", "Once"), 0);
        assert_int_equal(proto_pack_response_begin(&p.pk, 7), 0);
        assert_int_equal(msgpack_pack_map(&p.pk, 1), 0);
        assert_int_equal(proto_pack_kv_u64(&p.pk, "eval_count", 64), 0);
        assert_int_equal(proto_pack_error(&p.pk, 8, -ENOENT, "model 'x' not found"), 0);
        assert_int_equal(proto_pack_error(&p.pk, 9, EBUSY, NULL), 0);

        /* Byte by byte, so every resumption point of the scanner is taken, and all at once. */
        for (int mode = 0; mode < 2; mode++) {
                _cleanup_(proto_reader_freep) ProtoReader *r = NULL;
                ProtoMessage m;
                QdError e = {};
                size_t fed = 0;

                assert_int_equal(proto_reader_new(&r, 0), 0);
                int got = 0;
                while (got < 5) {
                        int k = proto_reader_next(r, &m, &e);
                        assert_true(k >= 0);
                        if (k == 0) {
                                assert_true(fed < p.sb.size);
                                size_t n = mode == 0 ? 1 : p.sb.size;
                                assert_int_equal(proto_reader_feed(r, p.sb.data + fed, n), 0);
                                fed += n;
                                continue;
                        }
                        switch (got++) {
                        case 0: {
                                assert_int_equal(m.type, PROTO_REQUEST);
                                assert_int_equal(m.msgid, 7);
                                assert_string_equal(m.name, "Generate");
                                struct {
                                        const char *model;
                                        bool stream;
                                        double temperature;
                                } a = {};
                                const ProtoField f[] = {
                                        {"model", PROTO_FIELD_STRING, offsetof(typeof(a), model), true},
                                        {"stream", PROTO_FIELD_BOOL, offsetof(typeof(a), stream)},
                                        {"temperature", PROTO_FIELD_DOUBLE,
                                         offsetof(typeof(a), temperature)},
                                        {},
                                };
                                assert_int_equal(proto_dispatch(m.params, f, &a, m.zone, &e), 0);
                                assert_string_equal(a.model, "stories");
                                assert_true(a.stream);
                                assert_true(a.temperature == 0.5);
                                break;
                        }
                        case 1:
                                assert_int_equal(m.type, PROTO_NOTIFICATION);
                                assert_string_equal(m.name, "token");
                                assert_int_equal(m.msgid, 7);
                                assert_true(proto_str_eq(proto_map_get(m.params, "text"), "Once"));
                                break;
                        case 2:
                                assert_int_equal(m.type, PROTO_RESPONSE);
                                assert_int_equal(m.error, 0);
                                assert_null(m.error_message);
                                assert_int_equal(proto_map_get(m.result, "eval_count")->via.u64, 64);
                                break;
                        case 3:
                                assert_int_equal(m.msgid, 8);
                                assert_int_equal(m.error, ENOENT);
                                assert_string_equal(m.error_message, "model 'x' not found");
                                assert_int_equal(m.result->type, MSGPACK_OBJECT_NIL);
                                break;
                        case 4:
                                assert_int_equal(m.error, EBUSY);
                                assert_string_equal(m.error_message, strerror(EBUSY));
                                break;
                        }
                }
                assert_int_equal(proto_reader_next(r, &m, &e), 0);
                assert_int_equal(proto_reader_pending(r), 0);
        }
        packed_done(&p);
}

static void test_malformed(void **state) {
        /* Not an array: HTTP, a map, an integer; a byte msgpack never uses. */
        expect_bad("GET / HTTP/1.1\r\n", 16, 0, EBADMSG, "must be a msgpack array");
        expect_bad("\x81\xa1"
                   "a\x01",
                   4, 0, EBADMSG, "must be a msgpack array");
        expect_bad("\x93\xc1\x01\x02", 4, 0, EBADMSG, "is not msgpack");
        /* Shapes. */
        expect_bad("\x90", 1, 0, EBADMSG, "starts with its type");
        expect_bad("\x94\x05\x01\xa1"
                   "a\x80",
                   6, 0, EBADMSG, "starts with its type");
        expect_bad("\x93\x00\x01\xa1"
                   "a",
                   5, 0, EBADMSG, "a request is [0, msgid, method, params]");
        expect_bad("\x94\x00\x00\xa1"
                   "a\x80",
                   6, 0, EBADMSG, "msgid must be an integer");
        expect_bad("\x94\x00\xa1"
                   "1\xa1"
                   "a\x80",
                   7, 0, EBADMSG, "msgid must be an integer");
        expect_bad("\x94\x00\xcf\x00\x00\x00\x01\x00\x00\x00\x00\xa1"
                   "a\x80",
                   14, 0, EBADMSG, "msgid");
        expect_bad("\x94\x00\x01\x05\x80", 5, 0, EBADMSG, "method must be a string, got an integer");
        expect_bad("\x94\x00\x01\xa0\x80", 5, 0, EBADMSG, "method must be 1 to");
        expect_bad("\x94\x00\x01\xa2"
                   "a\0\x80",
                   7, 0, EBADMSG, "without NUL");
        expect_bad("\x94\x00\x01\xa1"
                   "a\x91\x01",
                   7, 0, EBADMSG, "params of 'a' must be a map, got an array");
        expect_bad("\x94\x01\x01\x80\xc0", 5, 0, EBADMSG, "string 'code'");
        expect_bad("\x93\x02\xa1"
                   "e\x01",
                   5, 0, EBADMSG, "event 'e' must be a map");
        expect_bad("\x92\x02\xa1"
                   "e",
                   4, 0, EBADMSG, "a notification is");

        char name[PROTO_NAME_MAX + 8];
        name[0] = '\x94';
        name[1] = 0;
        name[2] = 1;
        name[3] = (char)0xd9;
        name[4] = PROTO_NAME_MAX + 1;
        memset(name + 5, 'x', PROTO_NAME_MAX + 1);
        name[PROTO_NAME_MAX + 6] = (char)0x80;
        expect_bad(name, PROTO_NAME_MAX + 7, 0, EBADMSG, "method must be 1 to");

        /* Nesting deeper than the limit fails without recursion trouble. */
        uint8_t deep[PROTO_DEPTH_MAX + 4];
        memset(deep, 0x91, sizeof(deep));
        deep[sizeof(deep) - 1] = 0;
        expect_bad(deep, sizeof(deep), 0, EBADMSG, "nested deeper");

        /* An unknown error code still decodes as an error. */
        _cleanup_(proto_reader_freep) ProtoReader *r = reader_with("\x94\x01\x03\x81\xa4"
                                                                   "code\xa4"
                                                                   "EWHY\xc0",
                                                                   16, 0);
        ProtoMessage m;
        assert_int_equal(proto_reader_next(r, &m, NULL), 1);
        assert_int_equal(m.error, EPROTO);
        assert_string_equal(m.error_message, "EWHY");
}

static void test_limits(void **state) {
        /* A header that claims more than the limit is refused at once, before its bytes arrive. */
        expect_bad("\xdd\xff\xff\xff\xff", 5, 0, EMSGSIZE, "Frame too large");
        expect_bad("\x94\x00\x01\xdb\x7f\xff\xff\xff", 8, 4096, EMSGSIZE, "limit is 4096 bytes");
        expect_bad("\x94\x00\x01\xa1"
                   "a\xdf\x00\x00\x10\x00",
                   10, 4096, EMSGSIZE, "Frame too large");

        /* A frame that grows past the limit piece by piece. */
        _cleanup_(proto_reader_freep) ProtoReader *r = NULL;
        ProtoMessage m;
        QdError e = {};
        assert_int_equal(proto_reader_new(&r, 100), 0);
        /* 90 items could fit in 100 bytes, but not as int8s of 2 bytes each. */
        assert_int_equal(proto_reader_feed(r, "\xdc\x00\x5a", 3), 0);
        size_t fed = 3;
        int k;
        while ((k = proto_reader_next(r, &m, &e)) == 0) {
                assert_true(fed < 100);
                assert_int_equal(proto_reader_feed(r, "\xd0\x01", 2), 0);
                fed += 2;
        }
        assert_int_equal(k, -EMSGSIZE);
        assert_int_equal(fed, 101);

        /* Exactly at the limit is fine. */
        uint8_t frame[64] = {0x94, 0x00, 0x01, 0xa1, 'a', 0x81, 0xa1, 'k', 0xd9, 64 - 10};
        memset(frame + 10, 'v', sizeof(frame) - 10);
        _cleanup_(proto_reader_freep) ProtoReader *ok = reader_with(frame, sizeof(frame), 64);
        assert_int_equal(proto_reader_next(ok, &m, &e), 1);
        _cleanup_(proto_reader_freep) ProtoReader *over = NULL;
        assert_int_equal(proto_reader_new(&over, 63), -EINVAL);
        assert_int_equal(proto_reader_new(&over, PROTO_FRAME_MIN - 1), -EINVAL);
        /* One byte more is not. */
        uint8_t big[65] = {0x94, 0x00, 0x01, 0xa1, 'a', 0x81, 0xa1, 'k', 0xd9, 65 - 10};
        memset(big + 10, 'v', sizeof(big) - 10);
        expect_bad(big, sizeof(big), 64, EMSGSIZE, "limit is 64 bytes");
}

static void test_dispatch(void **state) {
        Packed p;
        packed_init(&p);
        assert_int_equal(proto_pack_request_begin(&p.pk, 1, "X"), 0);
        assert_int_equal(msgpack_pack_map(&p.pk, 13), 0);
        assert_int_equal(proto_pack_kv_str(&p.pk, "s", "text"), 0);
        assert_int_equal(proto_pack_kv_u64(&p.pk, "u32", 4000000000U), 0);
        assert_int_equal(proto_pack_kv_u64(&p.pk, "u64", UINT64_MAX), 0);
        assert_int_equal(proto_pack_kv_i64(&p.pk, "i32", -5), 0);
        assert_int_equal(proto_pack_kv_i64(&p.pk, "i64", INT64_MIN), 0);
        assert_int_equal(proto_pack_kv_u64(&p.pk, "d", 3), 0);
        assert_int_equal(proto_pack_kv_double(&p.pk, "f", 0.25), 0);
        assert_int_equal(proto_pack_kv_str(&p.pk, "dur", "1m30s"), 0);
        assert_int_equal(proto_pack_kv_double(&p.pk, "dur2", 1.5), 0);
        assert_int_equal(proto_pack_kv_i64(&p.pk, "dur3", -1), 0);
        assert_int_equal(proto_pack_kv_u64(&p.pk, "fd", 0), 0);
        assert_int_equal(proto_pack_key(&p.pk, "m"), 0);
        assert_int_equal(msgpack_pack_map(&p.pk, 0), 0);
        assert_int_equal(proto_pack_key(&p.pk, "nil"), 0);
        assert_int_equal(msgpack_pack_nil(&p.pk), 0);

        _cleanup_(proto_reader_freep) ProtoReader *r = reader_with(p.sb.data, p.sb.size, 0);
        ProtoMessage m;
        QdError e = {};
        assert_int_equal(proto_reader_next(r, &m, &e), 1);

        struct {
                const char *s, *absent;
                uint32_t u32;
                uint64_t u64, fd;
                int32_t i32;
                int64_t i64, dur, dur2, dur3;
                double d;
                float f;
                const msgpack_object *m, *any;
                bool b;
        } a = {.absent = "default", .b = true};
#define F(n, t, fld) \
        { n, t, offsetof(typeof(a), fld) }
        const ProtoField good[] = {
                F("s", PROTO_FIELD_STRING, s),         F("u32", PROTO_FIELD_U32, u32),
                F("u64", PROTO_FIELD_U64, u64),        F("i32", PROTO_FIELD_I32, i32),
                F("i64", PROTO_FIELD_I64, i64),        F("d", PROTO_FIELD_DOUBLE, d),
                F("f", PROTO_FIELD_FLOAT, f),          F("dur", PROTO_FIELD_DURATION, dur),
                F("dur2", PROTO_FIELD_DURATION, dur2), F("dur3", PROTO_FIELD_DURATION, dur3),
                F("fd", PROTO_FIELD_FD, fd),           F("m", PROTO_FIELD_MAP, m),
                F("nil", PROTO_FIELD_BOOL, b),         F("absent", PROTO_FIELD_STRING, absent),
                F("s", PROTO_FIELD_ANY, any),          {},
        };
        assert_int_equal(proto_dispatch(m.params, good, &a, m.zone, &e), 0);
        assert_string_equal(a.s, "text");
        assert_string_equal(a.absent, "default");
        assert_int_equal(a.u32, 4000000000U);
        assert_true(a.u64 == UINT64_MAX);
        assert_int_equal(a.i32, -5);
        assert_true(a.i64 == INT64_MIN);
        assert_true(a.d == 3.0);
        assert_true(a.f == 0.25f);
        assert_true(a.dur == 90000000000LL);
        assert_true(a.dur2 == 1500000000LL);
        assert_true(a.dur3 == -1000000000LL);
        assert_int_equal(a.fd, 0);
        assert_int_equal(a.m->type, MSGPACK_OBJECT_MAP);
        assert_int_equal(a.any->type, MSGPACK_OBJECT_STR);
        assert_true(a.b);

        static const struct {
                ProtoField field;
                const char *message;
        } bad[] = {
                {F("s", PROTO_FIELD_U32, u32),
                 "Parameter 's' must be an integer from 0 to 4294967295, got a string."},
                {F("u64", PROTO_FIELD_U32, u32),
                 "Parameter 'u64' must be an integer from 0 to 4294967295, got one out of range."},
                {F("i64", PROTO_FIELD_U64, u64),
                 "Parameter 'i64' must be a non-negative integer, got one out of range."},
                {F("u32", PROTO_FIELD_I32, i32),
                 "Parameter 'u32' must be a 32-bit integer, got one out of range."},
                {F("u64", PROTO_FIELD_I64, i64),
                 "Parameter 'u64' must be an integer, got one out of range."},
                {F("f", PROTO_FIELD_I64, i64), "Parameter 'f' must be an integer, got a float."},
                {F("s", PROTO_FIELD_DURATION, dur),
                 "Parameter 's' must be a duration (seconds or a string like \"5m\"), got \"text\"."},
                {F("m", PROTO_FIELD_DURATION, dur),
                 "Parameter 'm' must be a duration (seconds or a string like \"5m\"), got a map."},
                {F("s", PROTO_FIELD_BOOL, b), "Parameter 's' must be a boolean, got a string."},
                {F("m", PROTO_FIELD_ARRAY, any), "Parameter 'm' must be an array, got a map."},
                {F("s", PROTO_FIELD_MAP, m), "Parameter 's' must be a map, got a string."},
                {F("d", PROTO_FIELD_STRING, s), "Parameter 'd' must be a string, got an integer."},
                {F("s", PROTO_FIELD_DOUBLE, d), "Parameter 's' must be a number, got a string."},
                {F("f", PROTO_FIELD_FD, fd),
                 "Parameter 'f' must be a descriptor index (a non-negative integer), got a float."},
                {{"nil", PROTO_FIELD_STRING, offsetof(typeof(a), s), true}, "Parameter 'nil' is required."},
                {{"missing", PROTO_FIELD_U32, offsetof(typeof(a), u32), true},
                 "Parameter 'missing' is required."},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                const ProtoField t[] = {bad[i].field, {}};
                qd_error_clear(&e);
                assert_int_equal(proto_dispatch(m.params, t, &a, m.zone, &e), -EINVAL);
                assert_string_equal(e.msg, bad[i].message);
        }
#undef F
        /* params that are not a map; nil params are an empty map. */
        msgpack_object arr = {.type = MSGPACK_OBJECT_ARRAY}, nil = {.type = MSGPACK_OBJECT_NIL};
        const ProtoField none[] = {{}};
        qd_error_clear(&e);
        assert_int_equal(proto_dispatch(&arr, none, &a, m.zone, &e), -EINVAL);
        assert_string_equal(e.msg, "Parameters must be a map, got an array.");
        assert_int_equal(proto_dispatch(&nil, none, &a, m.zone, &e), 0);
        assert_int_equal(proto_dispatch(NULL, none, &a, m.zone, &e), 0);

        /* A string with a NUL byte inside. */
        packed_done(&p);
        packed_init(&p);
        assert_int_equal(proto_pack_request_begin(&p.pk, 1, "X"), 0);
        assert_int_equal(msgpack_pack_map(&p.pk, 1), 0);
        assert_int_equal(proto_pack_key(&p.pk, "s"), 0);
        assert_int_equal(msgpack_pack_str_with_body(&p.pk, "a\0b", 3), 0);
        _cleanup_(proto_reader_freep) ProtoReader *r2 = reader_with(p.sb.data, p.sb.size, 0);
        assert_int_equal(proto_reader_next(r2, &m, &e), 1);
        const ProtoField sf[] = {{"s", PROTO_FIELD_STRING, 0}, {}};
        const char *s = NULL;
        qd_error_clear(&e);
        assert_int_equal(proto_dispatch(m.params, sf, &s, m.zone, &e), -EINVAL);
        assert_string_equal(e.msg, "Parameter 's' must be a string without NUL bytes.");
        packed_done(&p);
}

/* Reads from a socket until a message is complete. */
static int read_message(ProtoReader *r, int fd, ProtoMessage *m, QdError *e) {
        for (;;) {
                int k = proto_reader_next(r, m, e);
                if (k != 0)
                        return k;
                ssize_t n = proto_reader_fill(r, fd);
                if (n <= 0)
                        return n == 0 ? -ECONNRESET : (int)n;
        }
}

static void pack_request(Packed *p, uint64_t msgid, uint64_t fd_index) {
        assert_int_equal(proto_pack_request_begin(&p->pk, msgid, "Create"), 0);
        assert_int_equal(msgpack_pack_map(&p->pk, 1), 0);
        assert_int_equal(proto_pack_kv_u64(&p->pk, "fd", fd_index), 0);
}

static void test_fd_passing(void **state) {
        int sv[2], pa[2], pb[2];
        Packed a, b;
        QdError e = {};
        ProtoMessage m;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(pipe2(pa, O_CLOEXEC), 0);
        assert_int_equal(pipe2(pb, O_CLOEXEC), 0);

        /* Message 1 without descriptors, message 2 with two: they must land on message 2. */
        packed_init(&a);
        packed_init(&b);
        pack_request(&a, 1, 0);
        pack_request(&b, 2, 1);
        assert_int_equal(proto_send(sv[0], a.sb.data, a.sb.size, NULL, 0), (ssize_t)a.sb.size);
        int fds[2] = {pa[0], pb[0]};
        assert_int_equal(proto_send(sv[0], b.sb.data, b.sb.size, fds, 2), (ssize_t)b.sb.size);
        safe_close(pa[0]);
        safe_close(pb[0]);
        assert_int_equal(write(pb[1], "hi", 2), 2);

        _cleanup_(proto_reader_freep) ProtoReader *r = NULL;
        assert_int_equal(proto_reader_new(&r, 0), 0);
        assert_int_equal(read_message(r, sv[1], &m, &e), 1);
        assert_int_equal(m.msgid, 1);
        assert_int_equal(m.n_fds, 0);
        assert_int_equal(proto_message_take_fd(&m, 0, &e), -EBADF);
        assert_string_equal(e.msg, "Descriptor 0 was named, but the request came with 0 descriptors.");
        assert_int_equal(read_message(r, sv[1], &m, &e), 1);
        assert_int_equal(m.msgid, 2);
        assert_int_equal(m.n_fds, 2);
        _cleanup_close_ int got = proto_message_take_fd(&m, 1, &e);
        assert_true(got >= 0);
        qd_error_clear(&e);
        assert_int_equal(proto_message_take_fd(&m, 1, &e), -EBADF);
        assert_string_equal(e.msg, "Descriptor 1 was named twice.");
        char buf[2];
        assert_int_equal(read(got, buf, 2), 2);
        assert_memory_equal(buf, "hi", 2);
        /* Descriptor 0 was not taken: the reader closes it with the message, so its pipe sees EOF. */
        assert_int_equal(proto_reader_next(r, &m, &e), 0);
        assert_int_equal(write(pa[1], "x", 1), -1);
        assert_int_equal(errno, EPIPE);

        /* More descriptors than a message may carry. */
        int many[PROTO_FDS_MAX + 1];
        for (size_t i = 0; i < ELEMENTSOF(many); i++)
                many[i] = pb[1];
        assert_int_equal(proto_send(sv[0], a.sb.data, a.sb.size, many, ELEMENTSOF(many)), -EMSGSIZE);
        union {
                struct cmsghdr h;
                uint8_t space[CMSG_SPACE(sizeof(many))];
        } control = {};
        struct iovec iov = {.iov_base = a.sb.data, .iov_len = a.sb.size};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = &control,
                            .msg_controllen = sizeof(control)};
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(many));
        memcpy(CMSG_DATA(c), many, sizeof(many));
        assert_int_equal(sendmsg(sv[0], &mh, MSG_NOSIGNAL), (ssize_t)a.sb.size);
        assert_int_equal(proto_reader_fill(r, sv[1]), -EMSGSIZE);

        /* Descriptors without bytes are refused by the sender. */
        assert_int_equal(proto_send(sv[0], "", 0, fds, 1), -EINVAL);

        safe_close(pa[1]);
        safe_close(pb[1]);
        safe_close(sv[0]);
        safe_close(sv[1]);
        packed_done(&a);
        packed_done(&b);
}

int main(void) {
        /* A write to a pipe whose reader was closed must fail with EPIPE, not kill the test. */
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_trip), cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_limits),     cmocka_unit_test(test_dispatch),
                cmocka_unit_test(test_fd_passing),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
