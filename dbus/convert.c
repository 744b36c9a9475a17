/* SPDX-License-Identifier: MIT */
/*
 * Value conversion between D-Bus messages and msgpack, so that a D-Bus call becomes the params map of the same
 * socket method and a msgpack result or event becomes an a{sv}.
 *
 * DESIGN: the mapping is generic and documented in org.quantd.Quantd1(5), not written per method: the daemon's
 * results are maps with string keys, which are exactly what a{sv} carries. Going out, integers are always x
 * (t only above INT64_MAX) and arrays always av, so that a field's D-Bus type does not change with its value
 * (a count that is 0 today, a list that is empty today). Coming in, every D-Bus type has a msgpack form, and
 * each 'h' becomes a descriptor index, as the socket protocol passes files.
 */

#include <fcntl.h>

#include "dbus.h"

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

/* Appends what sub packed to pk, behind a header that the caller packed once it knew the count. */
static int append_packed(msgpack_packer *pk, const Packed *sub) {
        if (sub->sb.size == 0)
                return 0;
        return pk->callback(pk->data, sub->sb.data, sub->sb.size) < 0 ? -ENOMEM : 0;
}

void dbus_fds_done(DbusFds *f) {
        for (size_t i = 0; i < f->n; i++)
                f->fds[i] = safe_close(f->fds[i]);
        f->n = 0;
}

bool dbus_utf8_valid(const char *s, size_t size) {
        const uint8_t *p = (const uint8_t *)s, *end = p + size;

        while (p < end) {
                uint8_t c = *p;
                uint32_t cp;
                size_t n;

                if (c == 0)
                        return false;
                if (c < 0x80) {
                        p++;
                        continue;
                }
                if (c >= 0xc2 && c <= 0xdf)
                        n = 1, cp = c & 0x1f;
                else if (c >= 0xe0 && c <= 0xef)
                        n = 2, cp = c & 0x0f;
                else if (c >= 0xf0 && c <= 0xf4)
                        n = 3, cp = c & 0x07;
                else
                        return false; /* a continuation byte, an overlong lead (c0 c1) or beyond U+10FFFF */
                if ((size_t)(end - p) <= n)
                        return false;
                for (size_t i = 1; i <= n; i++) {
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                        cp = cp << 6 | (p[i] & 0x3f);
                }
                /* Overlong forms, UTF-16 surrogates and code points past U+10FFFF. */
                if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || (cp >= 0xd800 && cp <= 0xdfff) ||
                    cp > 0x10ffff)
                        return false;
                p += n + 1;
        }
        return true;
}

/* ---- D-Bus → msgpack ---- */

static int read_value_at(sd_bus_message *m, msgpack_packer *pk, DbusFds *fds, unsigned depth, QdError *err);

static int check_depth(unsigned depth, QdError *err) {
        if (depth > PROTO_DEPTH_MAX)
                return qd_error_set(err, EMSGSIZE, "A value is nested deeper than %u containers.",
                                    PROTO_DEPTH_MAX);
        return 0;
}

static int pack_fd(msgpack_packer *pk, int fd, DbusFds *fds, QdError *err) {
        if (fds->n >= PROTO_FDS_MAX)
                return qd_error_set(err, EMSGSIZE, "A call may pass at most %u file descriptors.",
                                    PROTO_FDS_MAX);
        int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0)
                return qd_error_set(err, errno, "Failed to take the passed file descriptor: %s.",
                                    strerror(errno));
        if (msgpack_pack_uint64(pk, fds->n) < 0) {
                safe_close(copy);
                return -ENOMEM;
        }
        fds->fds[fds->n++] = copy;
        return 0;
}

static int read_basic(sd_bus_message *m, char type, msgpack_packer *pk, DbusFds *fds, QdError *err) {
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
        int k = sd_bus_message_read_basic(m, type, &v);
        if (k < 0)
                return qd_error_set(err, k, "Failed to read a '%c' argument: %s.", type, strerror(-k));

        switch (type) {
        case 'y':
                k = msgpack_pack_uint8(pk, v.y);
                break;
        case 'b':
                k = v.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
                break;
        case 'n':
                k = msgpack_pack_int16(pk, v.n);
                break;
        case 'q':
                k = msgpack_pack_uint16(pk, v.q);
                break;
        case 'i':
                k = msgpack_pack_int32(pk, v.i);
                break;
        case 'u':
                k = msgpack_pack_uint32(pk, v.u);
                break;
        case 'x':
                k = msgpack_pack_int64(pk, v.x);
                break;
        case 't':
                k = msgpack_pack_uint64(pk, v.t);
                break;
        case 'd':
                k = msgpack_pack_double(pk, v.d);
                break;
        case 's':
        case 'o':
        case 'g':
                return proto_pack_str(pk, v.s);
        case 'h':
                return pack_fd(pk, v.h, fds, err);
        default:
                return qd_error_set(err, EINVAL, "Arguments of D-Bus type '%c' are not understood.", type);
        }
        return k < 0 ? -ENOMEM : 0;
}

/* Reads the container m is in front of: a dictionary into a map, an array or a struct into an array. */
static int read_container(sd_bus_message *m, char type, const char *contents, msgpack_packer *pk, DbusFds *fds,
                          unsigned depth, QdError *err) {
        bool dict = type == 'a' && contents[0] == '{';
        uint32_t n = 0;
        Packed sub;
        int k;

        k = check_depth(depth + 1, err);
        if (k < 0)
                return k;
        k = sd_bus_message_enter_container(m, type, contents);
        if (k < 0)
                return qd_error_set(err, k, "Failed to read a '%s' argument: %s.", contents, strerror(-k));

        packed_init(&sub);
        for (;;) {
                k = sd_bus_message_at_end(m, false);
                if (k != 0)
                        break;
                if (dict) {
                        char t;
                        const char *c;
                        k = sd_bus_message_peek_type(m, &t, &c);
                        if (k >= 0)
                                k = sd_bus_message_enter_container(m, t, c);
                        if (k < 0)
                                break;
                        k = read_value_at(m, &sub.pk, fds, depth + 1, err);
                        if (k >= 0)
                                k = read_value_at(m, &sub.pk, fds, depth + 1, err);
                        if (k >= 0)
                                k = sd_bus_message_exit_container(m);
                } else
                        k = read_value_at(m, &sub.pk, fds, depth + 1, err);
                if (k < 0)
                        break;
                n++;
        }
        if (k >= 0)
                k = sd_bus_message_exit_container(m);
        if (k >= 0)
                k = (dict ? msgpack_pack_map(pk, n) : msgpack_pack_array(pk, n)) < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = append_packed(pk, &sub);
        packed_done(&sub);
        if (k < 0)
                return qd_error_set(err, k, "Failed to read a '%s' argument: %s.", contents, strerror(-k));
        return 0;
}

static int read_value_at(sd_bus_message *m, msgpack_packer *pk, DbusFds *fds, unsigned depth, QdError *err) {
        const char *contents;
        char type;
        int k;

        k = sd_bus_message_peek_type(m, &type, &contents);
        if (k < 0)
                return qd_error_set(err, k, "Failed to read the arguments: %s.", strerror(-k));
        if (k == 0)
                return qd_error_set(err, EINVAL, "An argument is missing.");

        switch (type) {
        case 'v':
                k = sd_bus_message_enter_container(m, 'v', contents);
                if (k >= 0)
                        k = read_value_at(m, pk, fds, depth, err);
                if (k >= 0)
                        k = sd_bus_message_exit_container(m);
                return k < 0 ? qd_error_set(err, k, "Failed to read a variant: %s.", strerror(-k)) : 0;
        case 'a':
                if (streq(contents, "y")) {
                        const void *p;
                        size_t size;
                        k = sd_bus_message_read_array(m, 'y', &p, &size);
                        if (k < 0)
                                return qd_error_set(err, k, "Failed to read a byte array: %s.", strerror(-k));
                        if (msgpack_pack_bin(pk, size) < 0 || msgpack_pack_bin_body(pk, p, size) < 0)
                                return -ENOMEM;
                        return 0;
                }
                return read_container(m, type, contents, pk, fds, depth, err);
        case 'r':
                return read_container(m, type, contents, pk, fds, depth, err);
        default:
                return read_basic(m, type, pk, fds, err);
        }
}

int dbus_read_value(sd_bus_message *m, msgpack_packer *pk, DbusFds *fds, QdError *err) {
        return read_value_at(m, pk, fds, 0, err);
}

int dbus_read_params(sd_bus_message *m, const char *names, size_t n_typed, msgpack_packer *pk, DbusFds *fds,
                     QdError *err) {
        const char *name = names;
        const char **seen = NULL;
        size_t n_seen = 0;
        uint32_t n = 0;
        Packed sub;
        int k = 0;

        packed_init(&sub);
        for (size_t i = 0; k >= 0 && i < n_typed; i++) {
                if (!name || !*name) {
                        k = qd_error_set(err, EINVAL, "The method's argument %zu has no name.", i);
                        break;
                }
                k = proto_pack_key(&sub.pk, name);
                if (k >= 0)
                        k = read_value_at(m, &sub.pk, fds, 1, err);
                n++;
                name += strlen(name) + 1;
        }
        if (k >= 0) {
                k = sd_bus_message_enter_container(m, 'a', "{sv}");
                if (k < 0)
                        k = qd_error_set(err, k, "The last argument must be an a{sv} of parameters: %s.",
                                         strerror(-k));
        }
        while (k >= 0) {
                const char *key;

                k = sd_bus_message_enter_container(m, 'e', "sv");
                if (k <= 0) {
                        if (k < 0)
                                k = qd_error_set(err, k, "Failed to read the parameters: %s.", strerror(-k));
                        break;
                }
                k = sd_bus_message_read_basic(m, 's', &key);
                if (k < 0) {
                        k = qd_error_set(err, k, "Failed to read the parameters: %s.", strerror(-k));
                        break;
                }
                name = names;
                for (size_t i = 0; i < n_typed; i++, name += strlen(name) + 1)
                        if (streq(name, key)) {
                                k = qd_error_set(err, EINVAL,
                                                 "Parameter '%s' is an argument of its own; leave it out of "
                                                 "the a{sv}.", key);
                                break;
                        }
                for (size_t i = 0; k >= 0 && i < n_seen; i++)
                        if (streq(seen[i], key))
                                k = qd_error_set(err, EINVAL, "Parameter '%s' appears twice.", key);
                if (k < 0)
                        break;
                const char **l = reallocarray(seen, n_seen + 1, sizeof(*seen));
                if (!l) {
                        k = -ENOMEM;
                        break;
                }
                seen = l;
                seen[n_seen++] = key; /* borrowed from m, which outlives this call */

                k = proto_pack_key(&sub.pk, key);
                if (k >= 0)
                        k = read_value_at(m, &sub.pk, fds, 1, err);
                if (k >= 0)
                        k = sd_bus_message_exit_container(m);
                n++;
        }
        if (k >= 0)
                k = sd_bus_message_exit_container(m);
        if (k >= 0 && sd_bus_message_at_end(m, false) == 0)
                k = qd_error_set(err, EINVAL, "Unexpected arguments follow the a{sv} of parameters.");
        if (k >= 0)
                k = msgpack_pack_map(pk, n) < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = append_packed(pk, &sub);
        free(seen);
        packed_done(&sub);
        return k < 0 ? k : 0;
}

/* ---- msgpack → D-Bus ---- */

static int append_map(sd_bus_message *m, const msgpack_object *o, unsigned depth, QdError *err);
static int append_variant_at(sd_bus_message *m, const msgpack_object *o, unsigned depth, QdError *err);

static int bus_failed(int k, QdError *err) {
        return qd_error_set(err, k, "Failed to build the D-Bus message: %s.", strerror(-k));
}

static int append_string(sd_bus_message *m, const char *p, size_t size) {
        _cleanup_free_ char *s = strndup(p, size);
        if (!s)
                return -ENOMEM;
        return sd_bus_message_append_basic(m, 's', s);
}

static int append_array(sd_bus_message *m, const msgpack_object *o, unsigned depth, QdError *err) {
        int k = sd_bus_message_open_container(m, 'a', "v");
        if (k < 0)
                return bus_failed(k, err);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
                k = append_variant_at(m, &o->via.array.ptr[i], depth, err);
                if (k < 0)
                        return k;
        }
        k = sd_bus_message_close_container(m);
        return k < 0 ? bus_failed(k, err) : 0;
}

static int append_variant_at(sd_bus_message *m, const msgpack_object *o, unsigned depth, QdError *err) {
        int k;

        switch (o->type) {
        case MSGPACK_OBJECT_NIL:
                return qd_error_set(err, EBADMSG, "A nil value has no D-Bus form outside a dictionary.");
        case MSGPACK_OBJECT_BOOLEAN:
                k = sd_bus_message_append(m, "v", "b", (int)o->via.boolean);
                break;
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                if (o->via.u64 > INT64_MAX)
                        k = sd_bus_message_append(m, "v", "t", o->via.u64);
                else
                        k = sd_bus_message_append(m, "v", "x", (int64_t)o->via.u64);
                break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                k = sd_bus_message_append(m, "v", "x", o->via.i64);
                break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                k = sd_bus_message_append(m, "v", "d", o->via.f64);
                break;
        case MSGPACK_OBJECT_STR:
                if (dbus_utf8_valid(o->via.str.ptr, o->via.str.size)) {
                        k = sd_bus_message_open_container(m, 'v', "s");
                        if (k >= 0)
                                k = append_string(m, o->via.str.ptr, o->via.str.size);
                } else {
                        /* Bytes that are not text (a token cut inside a character) travel as bytes. */
                        k = sd_bus_message_open_container(m, 'v', "ay");
                        if (k >= 0)
                                k = sd_bus_message_append_array(m, 'y', o->via.str.ptr, o->via.str.size);
                }
                if (k >= 0)
                        k = sd_bus_message_close_container(m);
                break;
        case MSGPACK_OBJECT_BIN:
                k = sd_bus_message_open_container(m, 'v', "ay");
                if (k >= 0)
                        k = sd_bus_message_append_array(m, 'y', o->via.bin.ptr, o->via.bin.size);
                if (k >= 0)
                        k = sd_bus_message_close_container(m);
                break;
        case MSGPACK_OBJECT_ARRAY:
                k = check_depth(depth + 1, err);
                if (k < 0)
                        return k;
                k = sd_bus_message_open_container(m, 'v', "av");
                if (k < 0)
                        break;
                k = append_array(m, o, depth + 1, err);
                if (k < 0)
                        return k;
                k = sd_bus_message_close_container(m);
                break;
        case MSGPACK_OBJECT_MAP:
                k = check_depth(depth + 1, err);
                if (k < 0)
                        return k;
                k = sd_bus_message_open_container(m, 'v', "a{sv}");
                if (k < 0)
                        break;
                k = append_map(m, o, depth + 1, err);
                if (k < 0)
                        return k;
                k = sd_bus_message_close_container(m);
                break;
        case MSGPACK_OBJECT_EXT:
                return qd_error_set(err, EBADMSG, "A msgpack extension value has no D-Bus form.");
        default:
                return qd_error_set(err, EBADMSG, "A msgpack value of unknown type %d has no D-Bus form.",
                                    (int)o->type);
        }
        return k < 0 ? bus_failed(k, err) : 0;
}

static int append_map(sd_bus_message *m, const msgpack_object *o, unsigned depth, QdError *err) {
        int k = sd_bus_message_open_container(m, 'a', "{sv}");
        if (k < 0)
                return bus_failed(k, err);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
                const msgpack_object_kv *kv = &o->via.map.ptr[i];

                const msgpack_object *key = &kv->key;

                if (key->type != MSGPACK_OBJECT_STR || !dbus_utf8_valid(key->via.str.ptr, key->via.str.size))
                        return qd_error_set(err, EBADMSG, "A map key is %s, not a text string; a{sv} needs one.",
                                            key->type == MSGPACK_OBJECT_STR ? "a string that is not UTF-8"
                                                                            : proto_object_type_name(key));
                if (kv->val.type == MSGPACK_OBJECT_NIL)
                        continue;
                k = sd_bus_message_open_container(m, 'e', "sv");
                if (k >= 0)
                        k = append_string(m, kv->key.via.str.ptr, kv->key.via.str.size);
                if (k < 0)
                        return bus_failed(k, err);
                k = append_variant_at(m, &kv->val, depth, err);
                if (k < 0)
                        return k;
                k = sd_bus_message_close_container(m);
                if (k < 0)
                        return bus_failed(k, err);
        }
        k = sd_bus_message_close_container(m);
        return k < 0 ? bus_failed(k, err) : 0;
}

int dbus_append_variant(sd_bus_message *m, const msgpack_object *o, QdError *err) {
        return append_variant_at(m, o, 0, err);
}

int dbus_append_dict(sd_bus_message *m, const msgpack_object *o, QdError *err) {
        int k;

        if (o && o->type == MSGPACK_OBJECT_MAP)
                return append_map(m, o, 1, err);
        k = sd_bus_message_open_container(m, 'a', "{sv}");
        if (k >= 0 && o && o->type != MSGPACK_OBJECT_NIL) {
                k = sd_bus_message_open_container(m, 'e', "sv");
                if (k >= 0)
                        k = sd_bus_message_append_basic(m, 's', "value");
                if (k >= 0) {
                        k = append_variant_at(m, o, 1, err);
                        if (k < 0)
                                return k;
                        k = sd_bus_message_close_container(m);
                }
        }
        if (k >= 0)
                k = sd_bus_message_close_container(m);
        return k < 0 ? bus_failed(k, err) : 0;
}
