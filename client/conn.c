/* SPDX-License-Identifier: MIT */
/*
 * qctl's side of a call: connecting with errors a person can act on, and waiting for a response while
 * animating the terminal and honouring Ctrl+C. The framing is common/'s proto client; this adds the ticks and
 * the Cancel that the blocking proto_client_call() has no room for.
 */

#include <msgpack.h>

#include "client.h"

int conn_open(const char *path, ProtoClient **ret, QdError *e) {
        _cleanup_(proto_client_freep) ProtoClient *c = NULL;
        _cleanup_free_ char *p = NULL;
        int r;

        if (!path) {
                r = client_socket_path(&p);
                if (r < 0)
                        return r;
                path = p;
        }
        r = proto_client_connect(path, &c);
        if (r == -ENOENT || r == -ECONNREFUSED || r == -ENOTDIR)
                return qd_error_set(e, ECONNREFUSED,
                                    "quantd is not running (no socket at %s): start it with 'quantd --user' (or "
                                    "'systemctl start quantd' for the system daemon), or set QUANTD_SOCKET.",
                                    path);
        if (r == -EACCES || r == -EPERM)
                return qd_error_set(e, ECONNREFUSED,
                                    "Permission denied on %s: join the group 'quantd', or run a daemon of your own "
                                    "with 'quantd --user'.",
                                    path);
        if (r == -ENAMETOOLONG)
                return qd_error_set(e, ECONNREFUSED, "The socket path %s is too long for a Unix socket.", path);
        if (r < 0)
                return qd_error_set(e, ECONNREFUSED, "Cannot connect to quantd at %s: %s.", path, strerror(-r));

        QdError he = {};
        r = proto_client_hello(c, NULL, &he);
        if (r == -EPROTONOSUPPORT)
                return qd_error_set(e, EPROTONOSUPPORT, "%s", he.msg);
        if (r < 0)
                return qd_error_set(e, ECONNREFUSED, "quantd at %s did not answer Hello: %s", path,
                                    he.code ? he.msg : strerror(-r));
        *ret = TAKE_PTR(c);
        return 0;
}

static int send_cancel(ProtoClient *c, uint64_t msgid) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        int r;

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        r = msgpack_pack_map(&pk, 1) < 0 ? -ENOMEM : proto_pack_kv_u64(&pk, "id", msgid);
        if (r >= 0)
                r = proto_client_send(c, "Cancel", sb.data, sb.size, NULL, 0, NULL);
        msgpack_sbuffer_destroy(&sb);
        return r;
}

int conn_call(ProtoClient *c, const char *method, const void *params, size_t params_size, const int *fds,
              size_t n_fds, const CallHooks *hooks, ProtoMessage *ret, QdError *e) {
        static const CallHooks none = {};
        uint64_t msgid;
        bool cancel_sent = false;
        int r;

        hooks = hooks ?: &none;
        int tick = hooks->tick_ms > 0 ? (int)hooks->tick_ms : 100;
        r = proto_client_send(c, method, params, params_size, fds, n_fds, &msgid);
        if (r < 0)
                return qd_error_set(e, r == -EPIPE ? ECONNRESET : r, "Failed to send %s to quantd: %s.", method,
                                    strerror(-r));
        for (;;) {
                if (hooks->interrupted && *hooks->interrupted) {
                        if (*hooks->interrupted >= 2)
                                return qd_error_set(e, ECANCELED, "Interrupted.");
                        if (!cancel_sent) {
                                /* The answer to Cancel itself is read and skipped below: another msgid. */
                                r = send_cancel(c, msgid);
                                if (r < 0)
                                        return qd_error_set(e, ECANCELED, "Interrupted.");
                                cancel_sent = true;
                        }
                }

                ProtoMessage m;
                QdError re = {};
                r = proto_client_read(c, tick, &m, &re);
                if (r == -ETIMEDOUT) {
                        if (hooks->on_tick) {
                                r = hooks->on_tick(hooks->userdata);
                                if (r < 0)
                                        return r;
                        }
                        continue;
                }
                if (r < 0) {
                        if (r == -ECONNRESET)
                                return qd_error_set(e, ECONNRESET, "quantd closed the connection during %s.",
                                                    method);
                        return qd_error_set(e, r, "%s", re.code ? re.msg : strerror(-r));
                }
                if (m.type == PROTO_NOTIFICATION) {
                        if (m.msgid == msgid && hooks->on_event) {
                                r = hooks->on_event(&m, hooks->userdata);
                                if (r < 0)
                                        return r;
                        }
                        continue;
                }
                if (m.type != PROTO_RESPONSE || (m.msgid != msgid && m.msgid != 0))
                        continue;
                if (m.error != 0) {
                        if (cancel_sent && m.error == ECANCELED)
                                return qd_error_set(e, ECANCELED, "Interrupted.");
                        return qd_error_set(e, m.error, "%s", m.error_message ?: strerror(m.error));
                }
                if (m.msgid == 0)
                        return qd_error_set(e, EPROTO, "quantd sent a response to no request.");
                if (ret)
                        *ret = m;
                return 0;
        }
}
