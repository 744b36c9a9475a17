/* SPDX-License-Identifier: MIT */
/*
 * The wire protocol's framing: splitting a byte stream into msgpack-rpc messages, packing their heads, typed
 * access to params, and descriptor passing. Shared by the daemon and every client.
 *
 * DESIGN
 * msgpack is self-delimiting, so there is no length prefix. Before msgpack-c sees a frame, proto_scan()
 * walks its structure without allocating: it finds where the message ends, refuses a frame that would pass
 * the size limit as soon as that is certain, and checks that every array or map can fit in the bytes left,
 * because msgpack-c allocates an array's elements when it reads the header. A scan resumes where it stopped,
 * so a large frame that arrives in pieces costs linear time.
 *
 * Descriptors arrive with the bytes of the sendmsg() that carried them. The kernel never returns bytes from
 * after a descriptor-carrying segment together with that segment's descriptors, so the last byte of the
 * recvmsg() that delivered a batch lies inside the message that owns it: a message takes every queued batch
 * whose stream offset is at most its own end.
 */

#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "common.h"

typedef struct ProtoFd {
        int fd;
        uint64_t offset; /* stream offset just past the recvmsg() that delivered it */
} ProtoFd;

/* Where a resumable structure scan stands. */
typedef struct ProtoScan {
        size_t pos;                              /* offset of the next item, from the frame's start */
        unsigned depth;                          /* open containers */
        uint64_t remaining[PROTO_DEPTH_MAX + 1]; /* items left per level; level 0 is the frame itself */
} ProtoScan;

struct ProtoReader {
        size_t frame_max;
        uint8_t *buf; /* (cap) bytes; [start, end) not yet consumed */
        size_t cap, start, end;
        uint64_t stream_offset; /* stream offset of buf[start] */
        ProtoScan scan;
        bool scanning;

        ProtoFd fds[2 * PROTO_FDS_MAX]; /* (n_fds) received, not yet given to a message */
        size_t n_fds;

        msgpack_unpacked unpacked;  /* the current message's objects */
        int msg_fds[PROTO_FDS_MAX]; /* (n_msg_fds) the current message's descriptors */
        size_t n_msg_fds;
};

/* ---- messages ---- */

int proto_message_take_fd(ProtoMessage *m, uint64_t index, QdError *err) {
        if (index >= m->n_fds)
                return qd_error_set(err, EBADF,
                                    "Descriptor %" PRIu64
                                    " was named, but the request came with %zu descriptor%s.",
                                    index, m->n_fds, m->n_fds == 1 ? "" : "s");
        if (m->fds[index] < 0)
                return qd_error_set(err, EBADF, "Descriptor %" PRIu64 " was named twice.", index);
        return TAKE_FD(m->fds[index]);
}

/* ---- reader ---- */

int proto_reader_new(ProtoReader **ret, size_t frame_max) {
        ProtoReader *r;

        if (frame_max == 0)
                frame_max = PROTO_FRAME_MAX_DEFAULT;
        if (frame_max < PROTO_FRAME_MIN || frame_max > UINT32_MAX)
                return -EINVAL;
        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->frame_max = frame_max;
        msgpack_unpacked_init(&r->unpacked);
        *ret = r;
        return 0;
}

static void reader_release_message(ProtoReader *r) {
        for (size_t i = 0; i < r->n_msg_fds; i++)
                safe_close(r->msg_fds[i]);
        r->n_msg_fds = 0;
        /* msgpack_unpacked_destroy() frees the zone and leaves the struct ready for reuse. */
        msgpack_unpacked_destroy(&r->unpacked);
        msgpack_unpacked_init(&r->unpacked);
}

ProtoReader *proto_reader_free(ProtoReader *r) {
        if (!r)
                return NULL;
        reader_release_message(r);
        for (size_t i = 0; i < r->n_fds; i++)
                safe_close(r->fds[i].fd);
        free(r->buf);
        free(r);
        return NULL;
}

size_t proto_reader_pending(const ProtoReader *r) {
        return r->end - r->start;
}

/* Makes room for at least want more bytes after end, compacting first. */
static int reader_reserve(ProtoReader *r, size_t want) {
        if (r->start > 0 && (r->start == r->end || r->cap - r->end < want)) {
                memmove(r->buf, r->buf + r->start, r->end - r->start);
                r->end -= r->start;
                r->start = 0;
        }
        if (r->cap - r->end >= want)
                return 0;
        size_t cap = MAX(r->cap * 2, (size_t)4096);
        while (cap - r->end < want)
                cap *= 2;
        uint8_t *b = realloc(r->buf, cap);
        if (!b)
                return -ENOMEM;
        r->buf = b;
        r->cap = cap;
        return 0;
}

int proto_reader_feed(ProtoReader *r, const void *data, size_t size) {
        int k = reader_reserve(r, size);
        if (k < 0)
                return k;
        memcpy(r->buf + r->end, data, size);
        r->end += size;
        return 0;
}

ssize_t proto_reader_fill(ProtoReader *r, int fd) {
        union {
                struct cmsghdr h;
                uint8_t space[CMSG_SPACE(sizeof(int) * PROTO_FDS_MAX)];
        } control;
        /* Never hold much more than a frame: a peer that sends faster than we parse waits in the kernel. */
        size_t chunk = MIN((size_t)65536, r->frame_max + 1);
        int k = reader_reserve(r, chunk);
        if (k < 0)
                return k;

        struct iovec iov = {.iov_base = r->buf + r->end, .iov_len = r->cap - r->end};
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof(control),
        };
        ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0)
                return errno == EWOULDBLOCK ? -EAGAIN : negative_errno();

        int result = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                const uint8_t *p = CMSG_DATA(c);
                for (size_t i = 0; i < count; i++) {
                        int passed;
                        memcpy(&passed, p + i * sizeof(int), sizeof(int));
                        if (r->n_fds >= ELEMENTSOF(r->fds)) {
                                safe_close(passed);
                                result = -EMSGSIZE;
                                continue;
                        }
                        r->fds[r->n_fds++] = (ProtoFd){
                                .fd = passed, .offset = r->stream_offset + (r->end - r->start) + (size_t)n};
                }
        }
        r->end += (size_t)n;
        if (mh.msg_flags & MSG_CTRUNC)
                result = -EMSGSIZE;
        if (result < 0)
                return result;
        return n;
}

/*
 * Reads the head of the item at p (n bytes available): its header length, payload length and, for an array
 * or map, the number of items it contains. Returns 1 when complete, 0 when more bytes are needed, -EBADMSG.
 */
static int scan_item(const uint8_t *p, size_t n, size_t *ret_head, uint64_t *ret_payload,
                     uint64_t *ret_items, bool *ret_container) {
        static const uint8_t fixed[] = {
                /* 0xc0 … 0xdf: bytes after the type byte for fixed-size types; 0xff marks others. */
                [0x00] = 0,    [0x01] = 0xff, [0x02] = 0,    [0x03] = 0, /* nil, (never used), false, true */
                [0x04] = 0xff, [0x05] = 0xff, [0x06] = 0xff,             /* bin 8/16/32 */
                [0x07] = 0xff, [0x08] = 0xff, [0x09] = 0xff,             /* ext 8/16/32 */
                [0x0a] = 4,    [0x0b] = 8,                               /* float 32/64 */
                [0x0c] = 1,    [0x0d] = 2,    [0x0e] = 4,    [0x0f] = 8, /* uint */
                [0x10] = 1,    [0x11] = 2,    [0x12] = 4,    [0x13] = 8, /* int */
                [0x14] = 2,    [0x15] = 3,    [0x16] = 5,    [0x17] = 9, [0x18] = 17, /* fixext */
                [0x19] = 0xff, [0x1a] = 0xff, [0x1b] = 0xff,                          /* str 8/16/32 */
                [0x1c] = 0xff, [0x1d] = 0xff,                                         /* array 16/32 */
                [0x1e] = 0xff, [0x1f] = 0xff,                                         /* map 16/32 */
        };
        uint8_t b = p[0];

        *ret_items = 0;
        *ret_container = false;
        *ret_payload = 0;
        if (b <= 0x7f || b >= 0xe0) { /* fixint */
                *ret_head = 1;
                return 1;
        }
        if (b <= 0x8f || (b >= 0x90 && b <= 0x9f)) { /* fixmap, fixarray */
                *ret_head = 1;
                *ret_container = true;
                *ret_items = b <= 0x8f ? 2 * (uint64_t)(b & 0x0f) : (b & 0x0f);
                return 1;
        }
        if (b <= 0xbf) { /* fixstr */
                *ret_head = 1;
                *ret_payload = b & 0x1f;
                return 1;
        }
        uint8_t f = fixed[b - 0xc0];
        if (b == 0xc1)
                return -EBADMSG;
        if (f != 0xff) {
                *ret_head = 1 + f;
                return n >= *ret_head ? 1 : 0;
        }

        /* Length-prefixed: the width of the length, then for ext one type byte. */
        unsigned width;
        switch (b) {
        case 0xc4:
        case 0xc7:
        case 0xd9:
                width = 1;
                break;
        case 0xc5:
        case 0xc8:
        case 0xda:
        case 0xdc:
        case 0xde:
                width = 2;
                break;
        default:
                width = 4;
                break;
        }
        size_t head = 1 + width + (b >= 0xc7 && b <= 0xc9 ? 1 : 0);
        if (n < 1 + width)
                return 0;
        uint64_t len = 0;
        for (unsigned i = 0; i < width; i++)
                len = (len << 8) | p[1 + i];
        *ret_head = head;
        if (b == 0xdc || b == 0xdd) {
                *ret_container = true;
                *ret_items = len;
        } else if (b == 0xde || b == 0xdf) {
                *ret_container = true;
                *ret_items = 2 * len;
        } else
                *ret_payload = len;
        return n >= head ? 1 : 0;
}

/*
 * Continues scanning the frame at p (n bytes so far). Returns 1 with *ret_size when the frame is complete, 0
 * when more bytes are needed, -EBADMSG or -EMSGSIZE with err set.
 */
static int proto_scan(ProtoScan *s, const uint8_t *p, size_t n, size_t max, size_t *ret_size, QdError *err) {
        for (;;) {
                while (s->depth > 0 && s->remaining[s->depth] == 0)
                        s->depth--;
                if (s->depth == 0 && s->remaining[0] == 0) {
                        *ret_size = s->pos;
                        return 1;
                }
                if (s->pos >= n)
                        break;

                size_t head;
                uint64_t payload, items;
                bool container;
                int k = scan_item(p + s->pos, n - s->pos, &head, &payload, &items, &container);
                if (k < 0)
                        return qd_error_set(err, EBADMSG,
                                            "Malformed frame: byte 0x%02x at offset %zu is not msgpack.",
                                            p[s->pos], s->pos);
                if (k == 0)
                        break;
                if (s->pos == 0 && !((p[0] >= 0x90 && p[0] <= 0x9f) || p[0] == 0xdc || p[0] == 0xdd))
                        return qd_error_set(
                                err, EBADMSG,
                                "Malformed frame: a message must be a msgpack array, got byte 0x%02x.",
                                p[0]);

                /* Every item takes at least one byte, so a count past the limit can never be satisfied. */
                uint64_t end = (uint64_t)s->pos + head + payload;
                if (end > max || items > max - MIN(end, (uint64_t)max))
                        return qd_error_set(err, EMSGSIZE, "Frame too large: the limit is %zu bytes.", max);
                if (end > n)
                        break;

                s->remaining[s->depth]--;
                if (container && items > 0) {
                        if (s->depth >= PROTO_DEPTH_MAX)
                                return qd_error_set(err, EBADMSG,
                                                    "Malformed frame: nested deeper than %u levels.",
                                                    PROTO_DEPTH_MAX);
                        s->remaining[++s->depth] = items;
                }
                s->pos = (size_t)end;
        }
        if (n > max)
                return qd_error_set(err, EMSGSIZE, "Frame too large: the limit is %zu bytes.", max);
        return 0;
}

static char *zone_strndup(msgpack_zone *z, const char *p, size_t n) {
        char *s = msgpack_zone_malloc(z, n + 1);
        if (!s)
                return NULL;
        memcpy(s, p, n);
        s[n] = 0;
        return s;
}

static int decode_name(const msgpack_object *o, msgpack_zone *z, const char *what, const char **ret,
                       QdError *err) {
        if (o->type != MSGPACK_OBJECT_STR)
                return qd_error_set(err, EBADMSG, "Malformed frame: the %s must be a string, got %s.", what,
                                    proto_object_type_name(o));
        if (o->via.str.size == 0 || o->via.str.size > PROTO_NAME_MAX ||
            memchr(o->via.str.ptr, 0, o->via.str.size))
                return qd_error_set(err, EBADMSG,
                                    "Malformed frame: the %s must be 1 to %u bytes without NUL.", what,
                                    PROTO_NAME_MAX);
        *ret = zone_strndup(z, o->via.str.ptr, o->via.str.size);
        return *ret ? 0 : -ENOMEM;
}

static int decode_msgid(const msgpack_object *o, bool allow_zero, uint64_t *ret, QdError *err) {
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > PROTO_MSGID_MAX ||
            (!allow_zero && o->via.u64 == 0))
                return qd_error_set(err, EBADMSG,
                                    "Malformed frame: the msgid must be an integer from 1 to %u.",
                                    PROTO_MSGID_MAX);
        *ret = o->via.u64;
        return 0;
}

static int decode_error(const msgpack_object *e, msgpack_zone *z, ProtoMessage *m, QdError *err) {
        const msgpack_object *code = proto_map_get(e, "code"), *msg = proto_map_get(e, "message");
        char name[32];

        if (!code || code->type != MSGPACK_OBJECT_STR)
                return qd_error_set(err, EBADMSG,
                                    "Malformed frame: an error must be a map with a string 'code'.");
        size_t n = MIN((size_t)code->via.str.size, sizeof(name) - 1);
        memcpy(name, code->via.str.ptr, n);
        name[n] = 0;
        int k = errno_from_name(name);
        /* A code this build does not know is still an error; EPROTO keeps it one. */
        m->error = k > 0 ? k : EPROTO;
        if (msg && msg->type == MSGPACK_OBJECT_STR)
                m->error_message = zone_strndup(z, msg->via.str.ptr, msg->via.str.size);
        else
                m->error_message = zone_strndup(z, name, n);
        return m->error_message ? 0 : -ENOMEM;
}

static int decode_message(const msgpack_object *root, msgpack_zone *z, ProtoMessage *m, QdError *err) {
        const msgpack_object *a;
        int k;

        /* proto_scan() let only arrays through. */
        a = root->via.array.ptr;
        if (root->via.array.size < 1 || a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            a[0].via.u64 >= _PROTO_TYPE_MAX)
                return qd_error_set(
                        err, EBADMSG,
                        "Malformed frame: a message starts with its type 0 (request), 1 (response) or 2 "
                        "(notification).");
        m->type = (ProtoType)a[0].via.u64;
        m->zone = z;
        switch (m->type) {
        case PROTO_REQUEST:
                if (root->via.array.size != 4)
                        return qd_error_set(
                                err, EBADMSG,
                                "Malformed frame: a request is [0, msgid, method, params], got %u elements.",
                                root->via.array.size);
                k = decode_msgid(&a[1], false, &m->msgid, err);
                if (k < 0)
                        return k;
                k = decode_name(&a[2], z, "method", &m->name, err);
                if (k < 0)
                        return k;
                if (a[3].type != MSGPACK_OBJECT_MAP && a[3].type != MSGPACK_OBJECT_NIL)
                        return qd_error_set(err, EBADMSG,
                                            "Malformed frame: the params of '%s' must be a map, got %s.",
                                            m->name, proto_object_type_name(&a[3]));
                m->params = &a[3];
                return 0;

        case PROTO_RESPONSE:
                if (root->via.array.size != 4)
                        return qd_error_set(
                                err, EBADMSG,
                                "Malformed frame: a response is [1, msgid, error, result], got %u elements.",
                                root->via.array.size);
                k = decode_msgid(&a[1], true, &m->msgid, err);
                if (k < 0)
                        return k;
                m->result = &a[3];
                if (a[2].type == MSGPACK_OBJECT_NIL)
                        return 0;
                return decode_error(&a[2], z, m, err);

        case PROTO_NOTIFICATION:
                if (root->via.array.size != 3)
                        return qd_error_set(
                                err, EBADMSG,
                                "Malformed frame: a notification is [2, event, params], got %u elements.",
                                root->via.array.size);
                k = decode_name(&a[1], z, "event", &m->name, err);
                if (k < 0)
                        return k;
                if (a[2].type != MSGPACK_OBJECT_MAP)
                        return qd_error_set(err, EBADMSG,
                                            "Malformed frame: the params of event '%s' must be a map.",
                                            m->name);
                m->params = &a[2];
                const msgpack_object *id = proto_map_get(&a[2], "id");
                if (id)
                        (void)decode_msgid(id, true, &m->msgid, NULL);
                return 0;

        case _PROTO_TYPE_MAX:
        case _PROTO_TYPE_INVALID:
                break;
        }
        return -EBADMSG;
}

int proto_reader_next(ProtoReader *r, ProtoMessage *ret, QdError *err) {
        size_t size = 0;
        int k;

        reader_release_message(r);
        if (!r->scanning) {
                if (r->start == r->end)
                        return 0;
                r->scan = (ProtoScan){.remaining = {1}};
                r->scanning = true;
        }
        k = proto_scan(&r->scan, r->buf + r->start, r->end - r->start, r->frame_max, &size, err);
        if (k <= 0)
                return k;
        r->scanning = false;

        size_t off = 0;
        msgpack_unpack_return u =
                msgpack_unpack_next(&r->unpacked, (const char *)r->buf + r->start, size, &off);
        if (u == MSGPACK_UNPACK_NOMEM_ERROR)
                return -ENOMEM;
        if (u != MSGPACK_UNPACK_SUCCESS || off != size)
                return qd_error_set(err, EBADMSG, "Malformed frame: msgpack could not decode it.");

        /* The frame's bytes are consumed; its descriptors come along. */
        uint64_t frame_end = r->stream_offset + size;
        r->start += size;
        r->stream_offset += size;
        size_t taken = 0;
        while (taken < r->n_fds && r->fds[taken].offset <= frame_end)
                taken++;
        size_t dropped = 0;
        for (size_t i = 0; i < taken; i++) {
                if (r->n_msg_fds < PROTO_FDS_MAX)
                        r->msg_fds[r->n_msg_fds++] = r->fds[i].fd;
                else {
                        safe_close(r->fds[i].fd);
                        dropped++;
                }
        }
        memmove(r->fds, r->fds + taken, (r->n_fds - taken) * sizeof(ProtoFd));
        r->n_fds -= taken;
        if (dropped > 0)
                return qd_error_set(err, EMSGSIZE, "Too many descriptors with one message: the limit is %u.",
                                    PROTO_FDS_MAX);

        ProtoMessage m = {.fds = r->msg_fds, .n_fds = r->n_msg_fds};
        k = decode_message(&r->unpacked.data, r->unpacked.zone, &m, err);
        if (k < 0)
                return k;
        *ret = m;
        return 1;
}

/* ---- packing ---- */

static int pk(int k) {
        return k < 0 ? -ENOMEM : 0;
}

void proto_packer_init(msgpack_packer *p, msgpack_sbuffer *sb) {
        msgpack_packer_init(p, sb, msgpack_sbuffer_write);
}

int proto_pack_str(msgpack_packer *p, const char *s) {
        if (!s)
                return pk(msgpack_pack_nil(p));
        size_t n = strlen(s);
        if (msgpack_pack_str(p, n) < 0 || msgpack_pack_str_body(p, s, n) < 0)
                return -ENOMEM;
        return 0;
}

int proto_pack_key(msgpack_packer *p, const char *key) {
        return proto_pack_str(p, key);
}

int proto_pack_kv_str(msgpack_packer *p, const char *key, const char *value) {
        if (proto_pack_str(p, key) < 0 || proto_pack_str(p, value) < 0)
                return -ENOMEM;
        return 0;
}

int proto_pack_kv_u64(msgpack_packer *p, const char *key, uint64_t value) {
        if (proto_pack_str(p, key) < 0 || msgpack_pack_uint64(p, value) < 0)
                return -ENOMEM;
        return 0;
}

int proto_pack_kv_i64(msgpack_packer *p, const char *key, int64_t value) {
        if (proto_pack_str(p, key) < 0 || msgpack_pack_int64(p, value) < 0)
                return -ENOMEM;
        return 0;
}

int proto_pack_kv_double(msgpack_packer *p, const char *key, double value) {
        if (proto_pack_str(p, key) < 0 || msgpack_pack_double(p, value) < 0)
                return -ENOMEM;
        return 0;
}

int proto_pack_kv_bool(msgpack_packer *p, const char *key, bool value) {
        if (proto_pack_str(p, key) < 0 || (value ? msgpack_pack_true(p) : msgpack_pack_false(p)) < 0)
                return -ENOMEM;
        return 0;
}

int proto_pack_request_begin(msgpack_packer *p, uint64_t msgid, const char *method) {
        if (msgpack_pack_array(p, 4) < 0 || msgpack_pack_uint8(p, PROTO_REQUEST) < 0 ||
            msgpack_pack_uint64(p, msgid) < 0 || proto_pack_str(p, method) < 0)
                return -ENOMEM;
        return 0;
}

int proto_pack_response_begin(msgpack_packer *p, uint64_t msgid) {
        if (msgpack_pack_array(p, 4) < 0 || msgpack_pack_uint8(p, PROTO_RESPONSE) < 0 ||
            msgpack_pack_uint64(p, msgid) < 0 || msgpack_pack_nil(p) < 0)
                return -ENOMEM;
        return 0;
}

int proto_pack_notification_begin(msgpack_packer *p, const char *event, uint64_t id, uint32_t n_more) {
        if (msgpack_pack_array(p, 3) < 0 || msgpack_pack_uint8(p, PROTO_NOTIFICATION) < 0 ||
            proto_pack_str(p, event) < 0 || msgpack_pack_map(p, 1 + n_more) < 0 ||
            proto_pack_kv_u64(p, "id", id) < 0)
                return -ENOMEM;
        return 0;
}

int proto_pack_error(msgpack_packer *p, uint64_t msgid, int error, const char *message) {
        /* An errno outside the table still goes out as a code the peer can parse. */
        const char *name = errno_to_name(error) ?: "EIO";

        if (!message)
                message = strerror(abs(error));
        if (msgpack_pack_array(p, 4) < 0 || msgpack_pack_uint8(p, PROTO_RESPONSE) < 0 ||
            msgpack_pack_uint64(p, msgid) < 0 || msgpack_pack_map(p, 2) < 0 ||
            proto_pack_kv_str(p, "code", name) < 0 || proto_pack_kv_str(p, "message", message) < 0 ||
            msgpack_pack_nil(p) < 0)
                return -ENOMEM;
        return 0;
}

/* ---- typed params ---- */

const char *proto_object_type_name(const msgpack_object *o) {
        if (!o)
                return "nothing";
        switch (o->type) {
        case MSGPACK_OBJECT_NIL:
                return "nil";
        case MSGPACK_OBJECT_BOOLEAN:
                return "a boolean";
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                return "an integer";
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                return "a float";
        case MSGPACK_OBJECT_STR:
                return "a string";
        case MSGPACK_OBJECT_ARRAY:
                return "an array";
        case MSGPACK_OBJECT_MAP:
                return "a map";
        case MSGPACK_OBJECT_BIN:
                return "binary data";
        case MSGPACK_OBJECT_EXT:
                return "an extension object";
        }
        return "an unknown type";
}

bool proto_str_eq(const msgpack_object *o, const char *s) {
        size_t n = strlen(s);
        return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
               memcmp(o->via.str.ptr, s, n) == 0;
}

const msgpack_object *proto_map_get(const msgpack_object *o, const char *key) {
        if (!o || o->type != MSGPACK_OBJECT_MAP)
                return NULL;
        for (uint32_t i = 0; i < o->via.map.size; i++)
                if (proto_str_eq(&o->via.map.ptr[i].key, key))
                        return &o->via.map.ptr[i].val;
        return NULL;
}

static const char *const field_type_names[_PROTO_FIELD_TYPE_MAX] = {
        [PROTO_FIELD_STRING] = "a string",
        [PROTO_FIELD_BOOL] = "a boolean",
        [PROTO_FIELD_U32] = "an integer from 0 to 4294967295",
        [PROTO_FIELD_U64] = "a non-negative integer",
        [PROTO_FIELD_I32] = "a 32-bit integer",
        [PROTO_FIELD_I64] = "an integer",
        [PROTO_FIELD_DOUBLE] = "a number",
        [PROTO_FIELD_FLOAT] = "a number",
        [PROTO_FIELD_DURATION] = "a duration (seconds or a string like \"5m\")",
        [PROTO_FIELD_FD] = "a descriptor index (a non-negative integer)",
        [PROTO_FIELD_MAP] = "a map",
        [PROTO_FIELD_ARRAY] = "an array",
        [PROTO_FIELD_ANY] = "a value",
};

static bool object_as_double(const msgpack_object *o, double *ret) {
        switch (o->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                *ret = (double)o->via.u64;
                return true;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                *ret = (double)o->via.i64;
                return true;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                *ret = o->via.f64;
                return isfinite(o->via.f64);
        case MSGPACK_OBJECT_NIL:
        case MSGPACK_OBJECT_BOOLEAN:
        case MSGPACK_OBJECT_STR:
        case MSGPACK_OBJECT_ARRAY:
        case MSGPACK_OBJECT_MAP:
        case MSGPACK_OBJECT_BIN:
        case MSGPACK_OBJECT_EXT:
                break;
        }
        return false;
}

static bool object_as_i64(const msgpack_object *o, int64_t *ret) {
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
                *ret = o->via.i64;
                return true;
        }
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
                *ret = (int64_t)o->via.u64;
                return true;
        }
        return false;
}

/* Stores one value; -EINVAL when its type or range is wrong. */
static int dispatch_one(const ProtoField *f, const msgpack_object *v, void *dst, msgpack_zone *zone) {
        int64_t i;
        double d;

        switch (f->type) {
        case PROTO_FIELD_STRING: {
                if (v->type != MSGPACK_OBJECT_STR || memchr(v->via.str.ptr, 0, v->via.str.size))
                        return -EINVAL;
                if (!zone)
                        return -EINVAL;
                char *s = zone_strndup(zone, v->via.str.ptr, v->via.str.size);
                if (!s)
                        return -ENOMEM;
                *(const char **)dst = s;
                return 0;
        }
        case PROTO_FIELD_BOOL:
                if (v->type != MSGPACK_OBJECT_BOOLEAN)
                        return -EINVAL;
                *(bool *)dst = v->via.boolean;
                return 0;
        case PROTO_FIELD_U32:
                if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > UINT32_MAX)
                        return -EINVAL;
                *(uint32_t *)dst = (uint32_t)v->via.u64;
                return 0;
        case PROTO_FIELD_U64:
        case PROTO_FIELD_FD:
                if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                        return -EINVAL;
                *(uint64_t *)dst = v->via.u64;
                return 0;
        case PROTO_FIELD_I32:
                if (!object_as_i64(v, &i) || i < INT32_MIN || i > INT32_MAX)
                        return -EINVAL;
                *(int32_t *)dst = (int32_t)i;
                return 0;
        case PROTO_FIELD_I64:
                if (!object_as_i64(v, &i))
                        return -EINVAL;
                *(int64_t *)dst = i;
                return 0;
        case PROTO_FIELD_DOUBLE:
                if (!object_as_double(v, &d))
                        return -EINVAL;
                *(double *)dst = d;
                return 0;
        case PROTO_FIELD_FLOAT:
                if (!object_as_double(v, &d) || fabs(d) > 3.4e38)
                        return -EINVAL;
                *(float *)dst = (float)d;
                return 0;
        case PROTO_FIELD_DURATION:
                if (v->type == MSGPACK_OBJECT_STR) {
                        char buf[64];
                        if (v->via.str.size >= sizeof(buf))
                                return -EINVAL;
                        memcpy(buf, v->via.str.ptr, v->via.str.size);
                        buf[v->via.str.size] = 0;
                        return parse_duration_ns(buf, (int64_t *)dst) < 0 ? -EINVAL : 0;
                }
                if (!object_as_double(v, &d) || fabs(d) > 9.2e9)
                        return -EINVAL;
                *(int64_t *)dst = (int64_t)llround(d * 1e9);
                return 0;
        case PROTO_FIELD_MAP:
                if (v->type != MSGPACK_OBJECT_MAP)
                        return -EINVAL;
                *(const msgpack_object **)dst = v;
                return 0;
        case PROTO_FIELD_ARRAY:
                if (v->type != MSGPACK_OBJECT_ARRAY)
                        return -EINVAL;
                *(const msgpack_object **)dst = v;
                return 0;
        case PROTO_FIELD_ANY:
                *(const msgpack_object **)dst = v;
                return 0;
        case _PROTO_FIELD_TYPE_MAX:
        case _PROTO_FIELD_TYPE_INVALID:
                break;
        }
        return -EINVAL;
}

int proto_dispatch(const msgpack_object *params, const ProtoField *fields, void *userdata,
                   msgpack_zone *zone, QdError *err) {
        if (params && params->type != MSGPACK_OBJECT_MAP && params->type != MSGPACK_OBJECT_NIL)
                return qd_error_set(err, EINVAL, "Parameters must be a map, got %s.",
                                    proto_object_type_name(params));

        for (const ProtoField *f = fields; f->name; f++) {
                const msgpack_object *v = proto_map_get(params, f->name);
                if (!v || v->type == MSGPACK_OBJECT_NIL) {
                        if (f->required)
                                return qd_error_set(err, EINVAL, "Parameter '%s' is required.", f->name);
                        continue;
                }
                int k = dispatch_one(f, v, (uint8_t *)userdata + f->offset, zone);
                if (k == -ENOMEM)
                        return k;
                if (k < 0) {
                        const char *want = f->type >= 0 && f->type < _PROTO_FIELD_TYPE_MAX
                                                   ? field_type_names[f->type]
                                                   : "a value";
                        bool range = (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                                      v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) &&
                                     f->type >= PROTO_FIELD_U32 && f->type <= PROTO_FIELD_I64;
                        if (range)
                                return qd_error_set(err, EINVAL,
                                                    "Parameter '%s' must be %s, got one out of range.",
                                                    f->name, want);
                        if (f->type == PROTO_FIELD_DURATION && v->type == MSGPACK_OBJECT_STR)
                                return qd_error_set(err, EINVAL, "Parameter '%s' must be %s, got \"%.*s\".",
                                                    f->name, want, (int)MIN(v->via.str.size, 40U),
                                                    v->via.str.ptr);
                        if (f->type == PROTO_FIELD_STRING && v->type == MSGPACK_OBJECT_STR)
                                return qd_error_set(err, EINVAL,
                                                    "Parameter '%s' must be a string without NUL bytes.",
                                                    f->name);
                        return qd_error_set(err, EINVAL, "Parameter '%s' must be %s, got %s.", f->name, want,
                                            proto_object_type_name(v));
                }
        }
        return 0;
}

/* ---- sending ---- */

ssize_t proto_send(int fd, const void *data, size_t size, const int *fds, size_t n_fds) {
        union {
                struct cmsghdr h;
                uint8_t space[CMSG_SPACE(sizeof(int) * PROTO_FDS_MAX)];
        } control = {};
        struct iovec iov = {.iov_base = (void *)data, .iov_len = size};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

        if (n_fds > PROTO_FDS_MAX)
                return -EMSGSIZE;
        if (n_fds > 0) {
                if (size == 0)
                        return -EINVAL;
                mh.msg_control = &control;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
        }
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (n < 0)
                return errno == EWOULDBLOCK ? -EAGAIN : negative_errno();
        return n;
}
