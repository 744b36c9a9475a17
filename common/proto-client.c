/* SPDX-License-Identifier: MIT */
/*
 * The protocol's client side: one blocking connection that sends requests and reads notifications and
 * responses. qctl and the integration tests use it; it needs nothing but common/ and msgpack-c.
 */

#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "common.h"

struct ProtoClient {
        int fd;
        uint64_t next_msgid;
        ProtoReader *reader;
        msgpack_sbuffer out;
};

int proto_client_new_take_fd(int fd, ProtoClient **ret) {
        _cleanup_close_ int owned = fd;
        ProtoClient *c;
        int k;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        k = proto_reader_new(&c->reader, 0);
        if (k < 0) {
                free(c);
                return k;
        }
        msgpack_sbuffer_init(&c->out);
        c->fd = TAKE_FD(owned);
        c->next_msgid = 1;
        *ret = c;
        return 0;
}

int proto_client_connect(const char *path, ProtoClient **ret) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        _cleanup_close_ int fd = -EBADF;

        if (!path || strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return negative_errno();
        if (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0)
                return negative_errno();
        return proto_client_new_take_fd(TAKE_FD(fd), ret);
}

ProtoClient *proto_client_free(ProtoClient *c) {
        if (!c)
                return NULL;
        safe_close(c->fd);
        proto_reader_free(c->reader);
        msgpack_sbuffer_destroy(&c->out);
        free(c);
        return NULL;
}

int proto_client_fd(const ProtoClient *c) {
        return c->fd;
}

/* Writes all of data, the descriptors with the first bytes. */
static int send_all(int fd, const uint8_t *data, size_t size, const int *fds, size_t n_fds) {
        while (size > 0) {
                ssize_t n = proto_send(fd, data, size, fds, n_fds);
                if (n == -EINTR)
                        continue;
                if (n < 0)
                        return (int)n;
                data += n;
                size -= (size_t)n;
                fds = NULL;
                n_fds = 0;
        }
        return 0;
}

int proto_client_send(ProtoClient *c, const char *method, const void *params, size_t params_size,
                      const int *fds, size_t n_fds, uint64_t *ret_msgid) {
        msgpack_packer pk;
        int k;

        if (c->next_msgid > PROTO_MSGID_MAX)
                c->next_msgid = 1;
        uint64_t msgid = c->next_msgid++;
        msgpack_sbuffer_clear(&c->out);
        proto_packer_init(&pk, &c->out);
        k = proto_pack_request_begin(&pk, msgid, method);
        if (k < 0)
                return k;
        if (params && params_size > 0)
                k = msgpack_sbuffer_write(&c->out, params, params_size) < 0 ? -ENOMEM : 0;
        else
                k = msgpack_pack_map(&pk, 0) < 0 ? -ENOMEM : 0;
        if (k < 0)
                return k;
        k = send_all(c->fd, (const uint8_t *)c->out.data, c->out.size, fds, n_fds);
        if (k < 0)
                return k;
        if (ret_msgid)
                *ret_msgid = msgid;
        return 0;
}

int proto_client_read(ProtoClient *c, int timeout_ms, ProtoMessage *ret, QdError *err) {
        uint64_t deadline = timeout_ms >= 0 ? now_ns() + (uint64_t)timeout_ms * 1000000ULL : 0;

        for (;;) {
                int k = proto_reader_next(c->reader, ret, err);
                if (k != 0)
                        return k;

                /* Poll at least once, so that a timeout of 0 still picks up what has arrived. */
                int wait = -1;
                if (timeout_ms >= 0) {
                        uint64_t now = now_ns();
                        wait = now >= deadline
                                       ? 0
                                       : (int)MIN((deadline - now + 999999) / 1000000, (uint64_t)INT32_MAX);
                }
                struct pollfd p = {.fd = c->fd, .events = POLLIN};
                k = poll(&p, 1, wait);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return negative_errno();
                if (k == 0)
                        return -ETIMEDOUT;

                ssize_t n = proto_reader_fill(c->reader, c->fd);
                if (n == -EINTR || n == -EAGAIN)
                        continue;
                if (n < 0)
                        return qd_error_set(err, (int)n, "Failed to read from the daemon: %s",
                                            strerror((int)-n));
                if (n == 0) {
                        if (proto_reader_pending(c->reader) > 0)
                                return qd_error_set(err, EBADMSG,
                                                    "The daemon closed the connection mid-message.");
                        return qd_error_set(err, ECONNRESET, "The daemon closed the connection.");
                }
        }
}

int proto_client_call(ProtoClient *c, const char *method, const void *params, size_t params_size,
                      const int *fds, size_t n_fds, ProtoEventHandler on_event, void *userdata,
                      ProtoMessage *ret, QdError *err) {
        uint64_t msgid;
        int k;

        k = proto_client_send(c, method, params, params_size, fds, n_fds, &msgid);
        if (k < 0)
                return qd_error_set(err, k, "Failed to send '%s' to the daemon: %s", method, strerror(-k));

        for (;;) {
                ProtoMessage m;
                k = proto_client_read(c, -1, &m, err);
                if (k < 0)
                        return k;
                if (m.type == PROTO_NOTIFICATION) {
                        if (m.msgid != msgid || !on_event)
                                continue;
                        k = on_event(&m, userdata);
                        if (k < 0)
                                return k;
                        continue;
                }
                /* A request from the daemon is not part of the protocol; a response to another id is stale.
                 */
                if (m.type != PROTO_RESPONSE || (m.msgid != msgid && m.msgid != 0))
                        continue;
                if (m.error != 0)
                        return qd_error_set(err, m.error, "%s", m.error_message);
                if (m.msgid == 0)
                        return qd_error_set(err, EPROTO,
                                            "The daemon sent a success response without a request.");
                if (ret)
                        *ret = m;
                return 0;
        }
}

int proto_client_hello(ProtoClient *c, ProtoMessage *ret, QdError *err) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        int k;

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        k = msgpack_pack_map(&pk, 2) < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = proto_pack_kv_u64(&pk, "protocol", PROTO_VERSION_MAJOR);
        if (k >= 0)
                k = proto_pack_kv_u64(&pk, "minor", PROTO_VERSION_MINOR);
        if (k >= 0)
                k = proto_client_call(c, "Hello", sb.data, sb.size, NULL, 0, NULL, NULL, &m, err);
        msgpack_sbuffer_destroy(&sb);
        if (k < 0)
                return k;

        const msgpack_object *v = proto_map_get(m.result, "protocol");
        if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return qd_error_set(err, EPROTO, "The daemon's Hello did not say its protocol version.");
        if (v->via.u64 != PROTO_VERSION_MAJOR)
                return qd_error_set(err, EPROTONOSUPPORT,
                                    "The daemon speaks protocol version %" PRIu64
                                    ", this client version %u; "
                                    "install matching versions of quantd and its client.",
                                    v->via.u64, PROTO_VERSION_MAJOR);
        if (ret)
                *ret = m;
        return 0;
}
