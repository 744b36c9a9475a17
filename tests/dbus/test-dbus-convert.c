/* SPDX-License-Identifier: MIT */
/*
 * dbus/convert.c and dbus/errors.c: D-Bus arguments to msgpack params and back, every D-Bus type, descriptors,
 * limits and malformed values; the errno <-> error name table. No bus is needed: messages are built on an
 * unconnected sd-bus object and sealed, which is all reading them takes.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "dbus.h"

typedef struct Fixture {
        sd_bus *bus;
        int peer_fd;
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_zone zone;
        DbusFds fds;
        QdError err;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        int sv[2];

        assert_non_null(f);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        /* A bus object that never finishes connecting can still build messages, descriptors included. */
        assert_int_equal(sd_bus_new(&f->bus), 0);
        assert_int_equal(sd_bus_set_fd(f->bus, sv[0], sv[0]), 0);
        assert_int_equal(sd_bus_negotiate_fds(f->bus, 1), 0);
        assert_int_equal(sd_bus_start(f->bus), 0);
        f->peer_fd = sv[1];
        msgpack_sbuffer_init(&f->sb);
        proto_packer_init(&f->pk, &f->sb);
        assert_true(msgpack_zone_init(&f->zone, 4096));
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        dbus_fds_done(&f->fds);
        msgpack_zone_destroy(&f->zone);
        msgpack_sbuffer_destroy(&f->sb);
        sd_bus_close_unref(f->bus);
        safe_close(f->peer_fd);
        free(f);
        return 0;
}

static sd_bus_message *new_call(Fixture *f) {
        sd_bus_message *m;
        assert_int_equal(sd_bus_message_new_method_call(f->bus, &m, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH,
                                                        QUANTD_DBUS_INTERFACE, "Test"),
                         0);
        return m;
}

static void seal(sd_bus_message *m) {
        static uint64_t cookie = 1;
        assert_int_equal(sd_bus_message_seal(m, cookie++, 0), 0);
        assert_true(sd_bus_message_rewind(m, true) >= 0);
}

/* ---- a printer for msgpack values that keeps their types apart: i:-3 u:3 f:0.5 s:"x" b:<0102> ---- */

static void print_msgpack(Buf *out, const msgpack_object *o) {
        switch (o->type) {
        case MSGPACK_OBJECT_NIL:
                buf_append_str(out, "nil");
                break;
        case MSGPACK_OBJECT_BOOLEAN:
                buf_append_str(out, o->via.boolean ? "true" : "false");
                break;
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                buf_printf(out, "u:%" PRIu64, o->via.u64);
                break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                buf_printf(out, "i:%" PRIi64, o->via.i64);
                break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                buf_printf(out, "f:%g", o->via.f64);
                break;
        case MSGPACK_OBJECT_STR:
                buf_printf(out, "s:\"%.*s\"", (int)o->via.str.size, o->via.str.ptr);
                break;
        case MSGPACK_OBJECT_BIN:
                buf_append_str(out, "b:<");
                for (uint32_t i = 0; i < o->via.bin.size; i++)
                        buf_printf(out, "%02x", (uint8_t)o->via.bin.ptr[i]);
                buf_append_str(out, ">");
                break;
        case MSGPACK_OBJECT_ARRAY:
                buf_append_str(out, "[");
                for (uint32_t i = 0; i < o->via.array.size; i++) {
                        if (i)
                                buf_append_str(out, " ");
                        print_msgpack(out, &o->via.array.ptr[i]);
                }
                buf_append_str(out, "]");
                break;
        case MSGPACK_OBJECT_MAP:
                buf_append_str(out, "{");
                for (uint32_t i = 0; i < o->via.map.size; i++) {
                        if (i)
                                buf_append_str(out, " ");
                        print_msgpack(out, &o->via.map.ptr[i].key);
                        buf_append_str(out, "=");
                        print_msgpack(out, &o->via.map.ptr[i].val);
                }
                buf_append_str(out, "}");
                break;
        case MSGPACK_OBJECT_EXT:
                buf_append_str(out, "ext");
                break;
        }
}

/* Unpacks what f->pk packed (exactly one object) and prints it. */
static char *packed_text(Fixture *f) {
        msgpack_object o;
        size_t off = 0;
        Buf out = {};

        assert_int_equal(msgpack_unpack(f->sb.data, f->sb.size, &off, &f->zone, &o), MSGPACK_UNPACK_SUCCESS);
        assert_int_equal(off, f->sb.size);
        print_msgpack(&out, &o);
        return buf_steal_str(&out);
}

/* ---- a printer for D-Bus values: x:-3 t:3 d:0.5 s:"x" ay:<0102> v(...) [..] {k=v} ---- */

static void print_dbus(Buf *out, sd_bus_message *m) {
        const char *contents;
        char type;
        bool first = true;

        while (sd_bus_message_peek_type(m, &type, &contents) > 0) {
                if (!first)
                        buf_append_str(out, " ");
                first = false;
                if (type == 'a' && streq(contents, "y")) {
                        const uint8_t *p;
                        size_t n;
                        assert_true(sd_bus_message_read_array(m, 'y', (const void **)&p, &n) >= 0);
                        buf_append_str(out, "ay:<");
                        for (size_t i = 0; i < n; i++)
                                buf_printf(out, "%02x", p[i]);
                        buf_append_str(out, ">");
                        continue;
                }
                if (strchr("avre", type)) {
                        static const char *const open[] = { "[", "v(", "(", "" }, *const close[] = { "]", ")", ")", "" };
                        size_t i = strchr("avre", type) - "avre";
                        if (type == 'a')
                                buf_printf(out, "a%s", contents);
                        assert_true(sd_bus_message_enter_container(m, type, contents) >= 0);
                        buf_append_str(out, type == 'a' && contents[0] == '{' ? "{" : open[i]);
                        print_dbus(out, m);
                        buf_append_str(out, type == 'a' && contents[0] == '{' ? "}" : close[i]);
                        assert_true(sd_bus_message_exit_container(m) >= 0);
                        continue;
                }
                union {
                        uint8_t y;
                        int b;
                        int16_t n;
                        uint16_t q;
                        int32_t i;
                        uint32_t u;
                        int64_t x;
                        uint64_t t;
                        double d;
                        const char *s;
                        int h;
                } v;
                assert_true(sd_bus_message_read_basic(m, type, &v) > 0);
                switch (type) {
                case 'b':
                        buf_append_str(out, v.b ? "b:true" : "b:false");
                        break;
                case 'x':
                        buf_printf(out, "x:%" PRIi64, v.x);
                        break;
                case 't':
                        buf_printf(out, "t:%" PRIu64, v.t);
                        break;
                case 'd':
                        buf_printf(out, "d:%g", v.d);
                        break;
                case 's':
                        buf_printf(out, "s:\"%s\"", v.s);
                        break;
                default:
                        fail_msg("unexpected D-Bus type '%c' in a result", type);
                }
        }
}

static char *message_text(sd_bus_message *m) {
        Buf out = {};
        seal(m);
        print_dbus(&out, m);
        return buf_steal_str(&out);
}

/* ---- D-Bus → msgpack ---- */

static void test_read_every_type(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);
        _cleanup_close_ int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        static const uint8_t bytes[] = { 0, 1, 0xff };
        struct stat a, b;

        assert_true(fd >= 0);
        assert_true(sd_bus_message_append(m, "s", "stories") >= 0);
        assert_true(sd_bus_message_append(m, "h", fd) >= 0);
        assert_true(sd_bus_message_open_container(m, 'a', "{sv}") >= 0);
        assert_true(sd_bus_message_append(m, "{sv}{sv}{sv}{sv}{sv}{sv}{sv}", "y", "y", 200, "b", "b", 1, "n", "n",
                                          -300, "q", "q", 60000, "i", "i", -70000, "u", "u", 4000000000U, "x", "x",
                                          INT64_MIN) >= 0);
        assert_true(sd_bus_message_append(m, "{sv}{sv}{sv}{sv}{sv}{sv}{sv}", "t", "t", UINT64_MAX, "d", "d", 0.25,
                                          "o", "o", "/a/b", "g", "g", "a{sv}", "as", "as", 2, "x", "y", "dict",
                                          "a{si}", 1, "k", -7, "st", "(sb)", "s", 0) >= 0);
        assert_true(sd_bus_message_append(m, "{sv}", "ay", "ay", 0, NULL) >= 0);
        assert_true(sd_bus_message_open_container(m, 'e', "sv") >= 0);
        assert_true(sd_bus_message_append_basic(m, 's', "bytes") >= 0);
        assert_true(sd_bus_message_open_container(m, 'v', "ay") >= 0);
        assert_true(sd_bus_message_append_array(m, 'y', bytes, sizeof(bytes)) >= 0);
        assert_true(sd_bus_message_close_container(m) >= 0);
        assert_true(sd_bus_message_close_container(m) >= 0);
        assert_true(sd_bus_message_append(m, "{sv}", "nested", "v", "a{sv}", 1, "h", "h", fd) >= 0);
        assert_true(sd_bus_message_close_container(m) >= 0);
        seal(m);

        assert_int_equal(dbus_read_params(m, "model\0gguf\0parameters\0", 2, &f->pk, &f->fds, &f->err), 0);
        _cleanup_free_ char *text = packed_text(f);
        assert_string_equal(text, "{s:\"model\"=s:\"stories\" s:\"gguf\"=u:0 s:\"y\"=u:200 s:\"b\"=true "
                                  "s:\"n\"=i:-300 s:\"q\"=u:60000 s:\"i\"=i:-70000 s:\"u\"=u:4000000000 "
                                  "s:\"x\"=i:-9223372036854775808 s:\"t\"=u:18446744073709551615 s:\"d\"=f:0.25 "
                                  "s:\"o\"=s:\"/a/b\" s:\"g\"=s:\"a{sv}\" s:\"as\"=[s:\"x\" s:\"y\"] "
                                  "s:\"dict\"={s:\"k\"=i:-7} s:\"st\"=[s:\"s\" false] s:\"ay\"=b:<> "
                                  "s:\"bytes\"=b:<0001ff> s:\"nested\"={s:\"h\"=u:1}}");

        /* Both descriptors are copies of /dev/null that the caller owns. */
        assert_int_equal(f->fds.n, 2);
        assert_int_equal(fstat(fd, &a), 0);
        for (size_t i = 0; i < 2; i++) {
                assert_true(f->fds.fds[i] != fd);
                assert_int_equal(fstat(f->fds.fds[i], &b), 0);
                assert_true(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
                assert_true(fcntl(f->fds.fds[i], F_GETFD) & FD_CLOEXEC);
        }
        dbus_fds_done(&f->fds);
        assert_int_equal(f->fds.n, 0);
}

static void test_read_value_alone(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);

        assert_true(sd_bus_message_append(m, "v", "ai", 3, 1, -2, 3) >= 0);
        seal(m);
        assert_int_equal(dbus_read_value(m, &f->pk, &f->fds, &f->err), 0);
        _cleanup_free_ char *text = packed_text(f);
        assert_string_equal(text, "[u:1 i:-2 u:3]");

        /* Nothing left to read. */
        assert_int_equal(dbus_read_value(m, &f->pk, &f->fds, &f->err), -EINVAL);
        assert_string_equal(f->err.msg, "An argument is missing.");
}

static void expect_params_error(Fixture *f, sd_bus_message *m, const char *names, size_t n_typed, int error,
                                const char *needle) {
        seal(m);
        assert_int_equal(dbus_read_params(m, names, n_typed, &f->pk, &f->fds, &f->err), -error);
        assert_int_equal(f->err.code, error);
        if (!strstr(f->err.msg, needle))
                fail_msg("error message '%s' lacks '%s'", f->err.msg, needle);
}

static void test_read_typed_repeated(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);

        assert_true(sd_bus_message_append(m, "sa{sv}", "stories", 1, "model", "s", "other") >= 0);
        expect_params_error(f, m, "model\0parameters\0", 1, EINVAL,
                            "Parameter 'model' is an argument of its own; leave it out of the a{sv}.");
}

static void test_read_key_twice(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);

        assert_true(sd_bus_message_append(m, "a{sv}", 3, "raw", "b", 1, "stream", "b", 0, "raw", "b", 0) >= 0);
        expect_params_error(f, m, "parameters\0", 0, EINVAL, "Parameter 'raw' appears twice.");
}

static void test_read_no_dict(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);

        assert_true(sd_bus_message_append(m, "ss", "stories", "Once") >= 0);
        expect_params_error(f, m, "model\0parameters\0", 1, ENXIO, "The last argument must be an a{sv}");
}

static void test_read_trailing(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);

        assert_true(sd_bus_message_append(m, "sa{sv}s", "stories", 0, "extra") >= 0);
        expect_params_error(f, m, "model\0parameters\0", 1, EINVAL,
                            "Unexpected arguments follow the a{sv} of parameters.");
}

static void test_read_missing_typed(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);

        seal(m);
        assert_int_equal(dbus_read_params(m, "model\0parameters\0", 1, &f->pk, &f->fds, &f->err), -EINVAL);
        assert_string_equal(f->err.msg, "An argument is missing.");
}

static void test_read_unnamed(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);

        assert_true(sd_bus_message_append(m, "sa{sv}", "x", 0) >= 0);
        expect_params_error(f, m, "", 1, EINVAL, "The method's argument 0 has no name.");
}

static void test_read_too_many_fds(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);
        _cleanup_close_ int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

        assert_true(sd_bus_message_open_container(m, 'a', "{sv}") >= 0);
        for (unsigned i = 0; i <= PROTO_FDS_MAX; i++) {
                char key[16];
                snprintf(key, sizeof(key), "f%u", i);
                assert_true(sd_bus_message_append(m, "{sv}", key, "h", fd) >= 0);
        }
        assert_true(sd_bus_message_close_container(m) >= 0);
        expect_params_error(f, m, "parameters\0", 0, EMSGSIZE, "at most 16 file descriptors");
        /* The ones taken before the limit are the caller's, to close. */
        assert_int_equal(f->fds.n, PROTO_FDS_MAX);
}

/* Appends a{sv} { "deep": n levels of variant-wrapped arrays }: the params map is level 1. */
static void append_nested(sd_bus_message *m, unsigned n) {
        assert_true(sd_bus_message_open_container(m, 'a', "{sv}") >= 0);
        assert_true(sd_bus_message_open_container(m, 'e', "sv") >= 0);
        assert_true(sd_bus_message_append_basic(m, 's', "deep") >= 0);
        for (unsigned i = 0; i < n; i++) {
                assert_true(sd_bus_message_open_container(m, 'v', "av") >= 0);
                assert_true(sd_bus_message_open_container(m, 'a', "v") >= 0);
        }
        for (unsigned i = 0; i < n; i++) {
                assert_true(sd_bus_message_close_container(m) >= 0);
                assert_true(sd_bus_message_close_container(m) >= 0);
        }
        assert_true(sd_bus_message_close_container(m) >= 0);
        assert_true(sd_bus_message_close_container(m) >= 0);
}

static void test_read_too_deep(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);
        unsigned n = PROTO_DEPTH_MAX + 2;

        append_nested(m, n);
        expect_params_error(f, m, "parameters\0", 0, EMSGSIZE, "nested deeper than 32 containers");
}

static void test_read_depth_limit_exact(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);
        /* The params map is level 1; 31 arrays inside it reach the limit of 32 and are accepted. */
        unsigned n = PROTO_DEPTH_MAX - 1;

        append_nested(m, n);
        seal(m);
        assert_int_equal(dbus_read_params(m, "parameters\0", 0, &f->pk, &f->fds, &f->err), 0);
}

/* ---- msgpack → D-Bus ---- */

/* Appends the object that f->pk packed as an a{sv} and returns the message's text. */
static int append_packed(Fixture *f, char **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);
        msgpack_object o;
        size_t off = 0;

        assert_int_equal(msgpack_unpack(f->sb.data, f->sb.size, &off, &f->zone, &o), MSGPACK_UNPACK_SUCCESS);
        int k = dbus_append_dict(m, &o, &f->err);
        if (k < 0)
                return k;
        *ret = message_text(m);
        return 0;
}

static void test_append_every_type(void **state) {
        Fixture *f = *state;
        msgpack_packer *pk = &f->pk;
        _cleanup_free_ char *text = NULL;

        msgpack_pack_map(pk, 14);
        proto_pack_kv_str(pk, "name", "stories:latest");
        proto_pack_kv_u64(pk, "size", 1048576);
        proto_pack_kv_u64(pk, "zero", 0);
        proto_pack_kv_u64(pk, "huge", UINT64_MAX);
        proto_pack_kv_i64(pk, "neg", -5);
        proto_pack_kv_double(pk, "rate", 0.5);
        proto_pack_key(pk, "f32");
        msgpack_pack_float(pk, 1.5f);
        proto_pack_kv_bool(pk, "done", true);
        proto_pack_key(pk, "gone");
        msgpack_pack_nil(pk);
        proto_pack_key(pk, "bin");
        msgpack_pack_bin(pk, 2);
        msgpack_pack_bin_body(pk, "\x00\x7f", 2);
        proto_pack_key(pk, "cut");
        msgpack_pack_str(pk, 2);
        msgpack_pack_str_body(pk, "\xe2\x96", 2); /* the first two bytes of a three-byte character */
        proto_pack_key(pk, "nul");
        msgpack_pack_str(pk, 3);
        msgpack_pack_str_body(pk, "a\0b", 3);
        proto_pack_key(pk, "list");
        msgpack_pack_array(pk, 3);
        msgpack_pack_int(pk, 1);
        proto_pack_str(pk, "two");
        msgpack_pack_map(pk, 1);
        proto_pack_kv_str(pk, "k", "v");
        proto_pack_key(pk, "empty");
        msgpack_pack_array(pk, 0);

        assert_int_equal(append_packed(f, &text), 0);
        assert_string_equal(text, "a{sv}{s:\"name\" v(s:\"stories:latest\") s:\"size\" v(x:1048576) s:\"zero\" v(x:0) "
                                  "s:\"huge\" v(t:18446744073709551615) s:\"neg\" v(x:-5) s:\"rate\" v(d:0.5) "
                                  "s:\"f32\" v(d:1.5) s:\"done\" v(b:true) s:\"bin\" v(ay:<007f>) "
                                  "s:\"cut\" v(ay:<e296>) s:\"nul\" v(ay:<610062>) "
                                  "s:\"list\" v(av[v(x:1) v(s:\"two\") v(a{sv}{s:\"k\" v(s:\"v\")})]) "
                                  "s:\"empty\" v(av[])}");
}

static void test_append_nil_and_scalar(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f), *m2 = new_call(f);
        msgpack_object nil = { .type = MSGPACK_OBJECT_NIL };
        msgpack_object num = { .type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = 7 };

        assert_int_equal(dbus_append_dict(m, &nil, &f->err), 0);
        assert_int_equal(dbus_append_dict(m, NULL, &f->err), 0);
        assert_int_equal(dbus_append_dict(m, &num, &f->err), 0);
        _cleanup_free_ char *text = message_text(m);
        assert_string_equal(text, "a{sv}{} a{sv}{} a{sv}{s:\"value\" v(x:7)}");

        assert_int_equal(dbus_append_variant(m2, &num, &f->err), 0);
        assert_int_equal(dbus_append_variant(m2, &nil, &f->err), -EBADMSG);
        assert_string_equal(f->err.msg, "A nil value has no D-Bus form outside a dictionary.");
}

static void expect_append_error(Fixture *f, int error, const char *needle) {
        char *text = NULL;
        assert_int_equal(append_packed(f, &text), -error);
        assert_null(text);
        assert_int_equal(f->err.code, error);
        if (!strstr(f->err.msg, needle))
                fail_msg("error message '%s' lacks '%s'", f->err.msg, needle);
}

static void test_append_key_not_string(void **state) {
        Fixture *f = *state;
        msgpack_pack_map(&f->pk, 1);
        msgpack_pack_int(&f->pk, 1);
        msgpack_pack_int(&f->pk, 2);
        expect_append_error(f, EBADMSG, "A map key is an integer, not a text string");
}

static void test_append_key_not_utf8(void **state) {
        Fixture *f = *state;
        msgpack_pack_map(&f->pk, 1);
        msgpack_pack_str(&f->pk, 1);
        msgpack_pack_str_body(&f->pk, "\xff", 1);
        msgpack_pack_int(&f->pk, 2);
        expect_append_error(f, EBADMSG, "A map key is a string that is not UTF-8");
}

static void test_append_nil_in_array(void **state) {
        Fixture *f = *state;
        msgpack_pack_map(&f->pk, 1);
        proto_pack_key(&f->pk, "l");
        msgpack_pack_array(&f->pk, 2);
        msgpack_pack_int(&f->pk, 1);
        msgpack_pack_nil(&f->pk);
        expect_append_error(f, EBADMSG, "A nil value has no D-Bus form outside a dictionary.");
}

static void test_append_ext(void **state) {
        Fixture *f = *state;
        msgpack_pack_map(&f->pk, 1);
        proto_pack_key(&f->pk, "e");
        msgpack_pack_ext(&f->pk, 1, 5);
        msgpack_pack_ext_body(&f->pk, "x", 1);
        expect_append_error(f, EBADMSG, "extension value has no D-Bus form");
}

static void test_append_too_deep(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);
        /* msgpack-c's unpacker stops at 32 levels itself, so the object is built by hand: 40 nested arrays. */
        msgpack_object levels[40];

        for (size_t i = 0; i < ELEMENTSOF(levels); i++)
                levels[i] = i + 1 < ELEMENTSOF(levels)
                                    ? (msgpack_object){ .type = MSGPACK_OBJECT_ARRAY,
                                                        .via.array = { .size = 1, .ptr = &levels[i + 1] } }
                                    : (msgpack_object){ .type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = 1 };
        assert_int_equal(dbus_append_dict(m, &levels[0], &f->err), -EMSGSIZE);
        assert_string_equal(f->err.msg, "A value is nested deeper than 32 containers.");
}

/* D-Bus → msgpack → D-Bus keeps every value, with the outgoing types of the documented mapping. */
static void test_round_trip(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_call(f);
        _cleanup_free_ char *text = NULL;

        assert_true(sd_bus_message_append(m, "a{sv}", 5, "prompt", "s", "Once upon a time", "options", "a{sv}", 2,
                                          "temperature", "d", 0.0, "stop", "as", 1, "\n", "keep_alive", "s", "5m",
                                          "seed", "u", 42U, "raw", "b", 0) >= 0);
        seal(m);
        assert_int_equal(dbus_read_params(m, "parameters\0", 0, &f->pk, &f->fds, &f->err), 0);
        assert_int_equal(append_packed(f, &text), 0);
        assert_string_equal(text, "a{sv}{s:\"prompt\" v(s:\"Once upon a time\") s:\"options\" "
                                  "v(a{sv}{s:\"temperature\" v(d:0) s:\"stop\" v(av[v(s:\"\n\")])}) "
                                  "s:\"keep_alive\" v(s:\"5m\") s:\"seed\" v(x:42) s:\"raw\" v(b:false)}");
}

/* ---- UTF-8 ---- */

static void test_utf8(void **state) {
        static const struct {
                const char *s;
                bool valid;
        } cases[] = {
                { "", true },
                { "plain ascii", true },
                { "\xc3\xa9t\xc3\xa9", true },          /* été */
                { "\xe2\x96\x81", true },              /* U+2581, SentencePiece's space */
                { "\xf0\x9f\x98\x80", true },          /* U+1F600 */
                { "\xf4\x8f\xbf\xbf", true },          /* U+10FFFF */
                { "\xc0\x80", false },                 /* overlong NUL */
                { "\xc1\xbf", false },                 /* overlong */
                { "\xe0\x80\x80", false },             /* overlong */
                { "\xf0\x80\x80\x80", false },         /* overlong */
                { "\xed\xa0\x80", false },             /* a UTF-16 surrogate */
                { "\xf4\x90\x80\x80", false },         /* past U+10FFFF */
                { "\xf5\x80\x80\x80", false },
                { "\x80", false },                     /* a continuation byte alone */
                { "\xe2\x96", false },                 /* cut short */
                { "\xe2\x28\xa1", false },             /* bad continuation */
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                if (dbus_utf8_valid(cases[i].s, strlen(cases[i].s)) != cases[i].valid)
                        fail_msg("case %zu: expected %s", i, cases[i].valid ? "valid" : "invalid");
        assert_false(dbus_utf8_valid("a\0b", 3));
}

/* ---- the error table ---- */

static void test_error_names(void **state) {
        assert_string_equal(dbus_error_name_from_errno(ENOENT), "org.quantd.Quantd1.Error.NotFound");
        assert_string_equal(dbus_error_name_from_errno(-ENOENT), "org.quantd.Quantd1.Error.NotFound");
        assert_string_equal(dbus_error_name_from_errno(EACCES), "org.quantd.Quantd1.Error.PermissionDenied");
        assert_string_equal(dbus_error_name_from_errno(EIO), "org.quantd.Quantd1.Error.IOError");
        assert_string_equal(dbus_error_name_from_errno(EXDEV), "org.quantd.Quantd1.Error.Failed");
        assert_string_equal(dbus_error_name_from_errno(0), "org.quantd.Quantd1.Error.Failed");

        assert_int_equal(dbus_error_name_to_errno("org.quantd.Quantd1.Error.NotFound"), ENOENT);
        assert_int_equal(dbus_error_name_to_errno("org.quantd.Quantd1.Error.PermissionDenied"), EPERM);
        assert_int_equal(dbus_error_name_to_errno("org.quantd.Quantd1.Error.Failed"), EIO);
        assert_int_equal(dbus_error_name_to_errno("org.quantd.Quantd1.Error.Nonsense"), -EINVAL);
        assert_int_equal(dbus_error_name_to_errno(NULL), -EINVAL);

        /* Every name is ours, well-formed, and reads back as an errno whose name it is. */
        for (const sd_bus_error_map *e = dbus_error_map; e->name; e++) {
                assert_non_null(startswith(e->name, QUANTD_DBUS_ERROR_PREFIX));
                assert_true(e->code > 0);
                int back = dbus_error_name_to_errno(e->name);
                assert_true(back > 0);
                assert_string_equal(dbus_error_name_from_errno(back), streq(e->name, QUANTD_DBUS_ERROR_PREFIX "Failed")
                                                                              ? QUANTD_DBUS_ERROR_PREFIX "IOError"
                                                                              : e->name);
        }
        /* The house style's fixed errno meanings all have a name of their own. */
        static const int fixed[] = { ENOENT, EEXIST, EBUSY, ENOSPC, EINVAL, EBADMSG, EMSGSIZE,
                                     ECANCELED, EOPNOTSUPP, ENOMEM, EPERM };
        for (size_t i = 0; i < ELEMENTSOF(fixed); i++)
                assert_string_not_equal(dbus_error_name_from_errno(fixed[i]), "org.quantd.Quantd1.Error.Failed");
}

static void test_error_map_registered(void **state) {
        sd_bus_error e = SD_BUS_ERROR_NULL;

        assert_int_equal(dbus_errors_register(), 0);
        assert_int_equal(dbus_errors_register(), 0);
        assert_int_equal(sd_bus_error_set(&e, "org.quantd.Quantd1.Error.NoSpace", "Out of room."), -ENOSPC);
        assert_int_equal(sd_bus_error_get_errno(&e), ENOSPC);
        sd_bus_error_free(&e);
        assert_int_equal(sd_bus_error_set(&e, "org.quantd.Quantd1.Error.Cancelled", NULL), -ECANCELED);
        sd_bus_error_free(&e);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_read_every_type, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_value_alone, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_typed_repeated, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_key_twice, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_no_dict, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_trailing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_missing_typed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_unnamed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_too_many_fds, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_too_deep, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_depth_limit_exact, setup, teardown),
                cmocka_unit_test_setup_teardown(test_append_every_type, setup, teardown),
                cmocka_unit_test_setup_teardown(test_append_nil_and_scalar, setup, teardown),
                cmocka_unit_test_setup_teardown(test_append_key_not_string, setup, teardown),
                cmocka_unit_test_setup_teardown(test_append_key_not_utf8, setup, teardown),
                cmocka_unit_test_setup_teardown(test_append_nil_in_array, setup, teardown),
                cmocka_unit_test_setup_teardown(test_append_ext, setup, teardown),
                cmocka_unit_test_setup_teardown(test_append_too_deep, setup, teardown),
                cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
                cmocka_unit_test(test_utf8),
                cmocka_unit_test(test_error_names),
                cmocka_unit_test(test_error_map_registered),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
