/* SPDX-License-Identifier: MIT */
/*
 * The socket front end: the listening AF_UNIX socket (bound at the design's path or taken from systemd's
 * socket activation) and one Connection per client, all on the main thread's sd-event loop.
 *
 * DESIGN
 * Sockets are non-blocking and nothing waits on a client. Input is read, split into frames by ProtoReader
 * and dispatched; replies and events are appended to the connection's output buffer and written as the
 * socket accepts them. Limits: connections (an extra client is accepted, told EBUSY and closed), requests in
 * flight per connection (further frames wait unread, so a pipelining client is slowed, not failed), queued
 * output (a client that does not read its replies is dropped, which cancels its generations) and frame size.
 * A malformed frame gets an error reply with msgid 0, then the connection is closed: after a framing error
 * the stream cannot be trusted.
 */

#include <fcntl.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>

#include "daemon-internal.h"

struct Connection {
        Manager *manager;
        int fd;
        sd_event_source *source;
        sd_event_source *close_source; /* a deferred close is pending */
        sd_event_source *flush_source; /* defer: writes what was queued in this loop iteration, at once */
        ProtoReader *reader;
        Caller caller;

        Buf out; /* queued output; [out_off, out.len) not yet written */
        size_t out_off;

        Request **requests; /* (n_requests) in flight, one reference each */
        size_t n_requests;
        bool reading_paused; /* out of request slots: input waits in the kernel */

        LIST_FIELDS(Connection, connections);
};

static void connection_free(Connection *c);
static void connection_close_later(Connection *c, const char *why);
static int connection_process(Connection *c);

static void connection_update_events(Connection *c) {
        uint32_t ev = 0;

        if (c->close_source)
                return;
        if (!c->reading_paused)
                ev |= EPOLLIN;
        if (c->out_off < c->out.len)
                ev |= EPOLLOUT;
        (void)sd_event_source_set_io_events(c->source, ev);
}

/* Writes what the socket takes now. */
static int connection_flush(Connection *c) {
        while (c->out_off < c->out.len) {
                ssize_t n = proto_send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, NULL, 0);
                if (n == -EINTR)
                        continue;
                if (n == -EAGAIN)
                        break;
                if (n < 0)
                        return (int)n;
                c->out_off += (size_t)n;
        }
        if (c->out_off == c->out.len) {
                c->out.len = 0;
                c->out_off = 0;
        } else if (c->out_off > 65536 && c->out_off * 2 > c->out.len) {
                memmove(c->out.data, c->out.data + c->out_off, c->out.len - c->out_off);
                c->out.len -= c->out_off;
                c->out_off = 0;
        }
        return 0;
}

static int connection_flush_handler(sd_event_source *s, void *userdata) {
        Connection *c = userdata;
        if (connection_flush(c) < 0)
                connection_close_later(c, "writing failed");
        else
                connection_update_events(c);
        return 0;
}

/*
 * Appends a packed message to the output. The write happens once per loop iteration (a defer source), so
 * that a batch of tokens posted by the executor leaves in one sendmsg().
 */
static int connection_queue(Connection *c, const void *data, size_t size) {
        if (c->close_source)
                return 0;
        if (c->out.len - c->out_off + size > c->manager->config.max_output) {
                connection_close_later(c, "it does not read its replies (MaxQueuedOutput= reached)");
                return -ENOBUFS;
        }
        int k = buf_append(&c->out, data, size);
        if (k < 0) {
                connection_close_later(c, "out of memory");
                return k;
        }
        if (sd_event_source_set_enabled(c->flush_source, SD_EVENT_ONESHOT) < 0)
                return connection_flush_handler(c->flush_source, c);
        return 0;
}

static void connection_forget(Connection *c, Request *r) {
        for (size_t i = 0; i < c->n_requests; i++)
                if (c->requests[i] == r) {
                        c->requests[i] = c->requests[--c->n_requests];
                        request_unref(r);
                        break;
                }
        if (c->reading_paused && c->n_requests < c->manager->config.max_requests) {
                c->reading_paused = false;
                connection_update_events(c);
                /* Frames may already wait in the reader. */
                if (connection_process(c) < 0)
                        connection_close_later(c, "a malformed frame");
        }
}

static void fe_reply(Request *r, int error, const char *message, const void *result, size_t size) {
        Connection *c = request_frontend_data(r);
        Reply rep;

        reply_init(&rep);
        int k = error != 0 ? proto_pack_error(&rep.pk, request_id(r), error, message)
                           : proto_pack_response_begin(&rep.pk, request_id(r));
        if (k >= 0 && error == 0)
                k = result ? (msgpack_sbuffer_write(&rep.sb, result, size) < 0 ? -ENOMEM : 0)
                           : (msgpack_pack_nil(&rep.pk) < 0 ? -ENOMEM : 0);
        if (k >= 0)
                (void)connection_queue(c, rep.sb.data, rep.sb.size);
        else
                connection_close_later(c, "out of memory");
        reply_done(&rep);
        connection_forget(c, r);
}

static int fe_notify(Request *r, const char *event, const void *fields, size_t size, uint32_t n_fields) {
        Connection *c = request_frontend_data(r);
        Reply rep;

        reply_init(&rep);
        int k = proto_pack_notification_begin(&rep.pk, event, request_id(r), n_fields);
        if (k >= 0 && size > 0)
                k = msgpack_sbuffer_write(&rep.sb, fields, size) < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = connection_queue(c, rep.sb.data, rep.sb.size);
        reply_done(&rep);
        return k;
}

static Request *fe_find_sibling(Request *r, uint64_t id) {
        Connection *c = request_frontend_data(r);
        for (size_t i = 0; i < c->n_requests; i++)
                if (request_id(c->requests[i]) == id && c->requests[i] != r)
                        return c->requests[i];
        return NULL;
}

static const RequestFrontend socket_frontend = {
        .reply = fe_reply,
        .notify = fe_notify,
        .find_sibling = fe_find_sibling,
};

/* Sends an error that is not a reply to any request (msgid 0). */
static void connection_send_error(Connection *c, int error, const char *message) {
        Reply rep;
        reply_init(&rep);
        if (proto_pack_error(&rep.pk, 0, error, message) >= 0)
                (void)connection_queue(c, rep.sb.data, rep.sb.size);
        reply_done(&rep);
}

static int connection_handle(Connection *c, ProtoMessage *msg) {
        Manager *m = c->manager;
        _cleanup_(request_unrefp) Request *r = NULL;
        int k;

        if (msg->type != PROTO_REQUEST) {
                connection_send_error(c, EBADMSG, "Malformed frame: a client sends requests only.");
                return -EBADMSG;
        }
        for (size_t i = 0; i < c->n_requests; i++)
                if (request_id(c->requests[i]) == msg->msgid) {
                        Reply rep;
                        reply_init(&rep);
                        if (proto_pack_error(
                                    &rep.pk, msg->msgid, EEXIST,
                                    "A request with this msgid is still in flight on this connection.") >= 0)
                                (void)connection_queue(c, rep.sb.data, rep.sb.size);
                        reply_done(&rep);
                        return 0;
                }

        k = request_new(m, &socket_frontend, c, msg->msgid, &c->caller, &r);
        if (k < 0)
                return k;
        /* The connection's reference, dropped when the reply goes out or the connection closes. */
        c->requests[c->n_requests++] = request_ref(r);
        manager_dispatch(m, r, msg);
        return 0;
}

/* Dispatches the complete frames in the reader. Returns -EBADMSG when the connection must close. */
static int connection_process(Connection *c) {
        for (;;) {
                if (c->close_source)
                        return 0;
                if (c->n_requests >= c->manager->config.max_requests) {
                        /* Out of slots: further frames wait (in the reader, then in the kernel). */
                        c->reading_paused = true;
                        connection_update_events(c);
                        return 0;
                }
                ProtoMessage msg;
                QdError err = {};
                int k = proto_reader_next(c->reader, &msg, &err);
                if (k == 0)
                        return 0;
                if (k == -ENOMEM)
                        return k;
                if (k < 0) {
                        log_info("Closing connection of pid %d: %s", (int)c->caller.pid, err.msg);
                        connection_send_error(c, k, err.msg);
                        return -EBADMSG;
                }
                k = connection_handle(c, &msg);
                if (k < 0)
                        return k;
        }
}

static int connection_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Connection *c = userdata;
        int k;

        if (revents & EPOLLOUT) {
                k = connection_flush(c);
                if (k < 0) {
                        connection_close_later(c, "writing failed");
                        return 0;
                }
        }
        if ((revents & (EPOLLHUP | EPOLLERR)) && c->reading_paused) {
                /* Gone while its input waits unread: epoll would report the hang-up again and again. */
                connection_free(c);
                return 0;
        }
        if ((revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->reading_paused) {
                ssize_t n = proto_reader_fill(c->reader, c->fd);
                if (n == -EAGAIN || n == -EINTR)
                        n = 1;
                if (n == 0) {
                        connection_free(c);
                        return 0;
                }
                if (n < 0) {
                        if (n == -EMSGSIZE)
                                connection_send_error(c, EMSGSIZE, "Too many descriptors with one message.");
                        connection_close_later(c,
                                               n == -EMSGSIZE ? "too many descriptors" : "reading failed");
                        return 0;
                }
                k = connection_process(c);
                if (k < 0) {
                        connection_close_later(c, "a malformed frame");
                        return 0;
                }
        }
        connection_update_events(c);
        return 0;
}

static int connection_close_handler(sd_event_source *s, void *userdata) {
        connection_free(userdata);
        return 0;
}

/*
 * Closes c soon, from a clean stack: handlers up the call chain may still use it. The output queued so far
 * gets one last non-blocking write.
 */
static void connection_close_later(Connection *c, const char *why) {
        if (c->close_source)
                return;
        log_debug("Closing connection of pid %d: %s.", (int)c->caller.pid, why);
        (void)connection_flush(c);
        (void)sd_event_source_set_enabled(c->source, SD_EVENT_OFF);
        if (sd_event_add_defer(c->manager->event, &c->close_source, connection_close_handler, c) < 0)
                /* Without a defer source the connection lingers until shutdown; its requests are detached
                 * now. */
                c->close_source = NULL;
}

static void connection_free(Connection *c) {
        if (!c)
                return;
        /* Detaching may cancel generations, which may reply: keep the list consistent while it happens. */
        while (c->n_requests > 0) {
                Request *r = c->requests[--c->n_requests];
                request_detach(r);
                request_unref(r);
        }
        LIST_REMOVE(connections, c->manager->connections, c);
        c->manager->n_connections--;
        sd_event_source_disable_unref(c->source);
        sd_event_source_disable_unref(c->close_source);
        sd_event_source_disable_unref(c->flush_source);
        safe_close(c->fd);
        proto_reader_free(c->reader);
        buf_free(&c->out);
        free(c->requests);
        free(c);
}

/* Whether the peer may change the store: root, our own uid, or the configured group (primary or not). */
static bool peer_may_change_store(Manager *m, int fd, const struct ucred *cred) {
        if (cred->uid == 0 || cred->uid == getuid())
                return true;
        if (!m->have_group)
                return false;
        if (cred->gid == m->group_gid)
                return true;
        gid_t groups[256];
        socklen_t len = sizeof(groups);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
                return false;
        for (size_t i = 0; i < len / sizeof(gid_t); i++)
                if (groups[i] == m->group_gid)
                        return true;
        return false;
}

static int connection_new(Manager *m, int fd) {
        _cleanup_close_ int owned = fd;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        Connection *c;
        int k;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return log_warning_errno(errno, "Failed to get a client's credentials, closing it: %m");

        c = calloc(1, sizeof(*c));
        if (!c)
                return log_oom();
        c->manager = m;
        c->fd = TAKE_FD(owned);
        c->caller = (Caller){.uid = cred.uid, .gid = cred.gid, .pid = cred.pid};
        c->caller.may_change_store = peer_may_change_store(m, c->fd, &cred);
        LIST_PREPEND(connections, m->connections, c);
        m->n_connections++;

        c->requests = calloc(m->config.max_requests, sizeof(Request *));
        k = c->requests ? proto_reader_new(&c->reader, m->config.max_frame) : -ENOMEM;
        if (k >= 0)
                k = sd_event_add_io(m->event, &c->source, c->fd, EPOLLIN, connection_io, c);
        if (k >= 0)
                k = sd_event_add_defer(m->event, &c->flush_source, connection_flush_handler, c);
        if (k >= 0)
                k = sd_event_source_set_enabled(c->flush_source, SD_EVENT_OFF);
        if (k < 0) {
                connection_free(c);
                return log_error_errno(k, "Failed to set up a connection: %m");
        }
        log_debug("Client connected: pid %d, uid %u, gid %u%s.", (int)cred.pid, (unsigned)cred.uid,
                  (unsigned)cred.gid, c->caller.may_change_store ? ", may change the store" : "");
        return 0;
}

static int listen_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;

        for (int i = 0; i < 16; i++) {
                int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                                return 0;
                        log_warning_errno(errno, "Failed to accept a connection, ignoring: %m");
                        return 0;
                }
                if (m->n_connections >= m->config.max_connections) {
                        Reply rep;
                        reply_init(&rep);
                        if (proto_pack_error(&rep.pk, 0, EBUSY,
                                             "The daemon serves its maximum number of connections; try "
                                             "again later.") >= 0)
                                (void)proto_send(cfd, rep.sb.data, rep.sb.size, NULL, 0);
                        reply_done(&rep);
                        safe_close(cfd);
                        log_warning("Refused a connection: MaxConnections=%u reached.",
                                    m->config.max_connections);
                        continue;
                }
                (void)connection_new(m, cfd);
        }
        return 0;
}

static int mkdir_parents_for(const char *path, mode_t mode) {
        _cleanup_free_ char *dir = strdup(path);
        if (!dir)
                return -ENOMEM;
        for (char *p = dir + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = 0;
                if (mkdir(dir, mode) < 0 && errno != EEXIST)
                        return negative_errno();
                *p = '/';
        }
        return 0;
}

static int bind_socket(Manager *m) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        _cleanup_close_ int fd = -EBADF;
        int k;

        if (strlen(m->socket_path) >= sizeof(sa.sun_path))
                return log_error_errno(ENAMETOOLONG, "Socket path %s is too long.", m->socket_path);
        strcpy(sa.sun_path, m->socket_path);

        k = mkdir_parents_for(m->socket_path, m->user ? 0700 : 0755);
        if (k < 0)
                return log_error_errno(k, "Failed to create the directory of %s: %m", m->socket_path);

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return log_error_errno(errno, "Failed to create a socket: %m");

        /* A socket file nobody listens on is left from a crash; one that answers belongs to a running
         * daemon. */
        struct stat st;
        if (lstat(m->socket_path, &st) >= 0) {
                if (!S_ISSOCK(st.st_mode))
                        return log_error_errno(EEXIST,
                                               "%s exists and is not a socket; refusing to replace it.",
                                               m->socket_path);
                int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                bool alive = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) >= 0;
                safe_close(probe);
                if (alive)
                        return log_error_errno(EADDRINUSE, "Another daemon is listening on %s.",
                                               m->socket_path);
                (void)unlink(m->socket_path);
        }

        /* The mode is set before anyone can connect: bind under a umask that leaves only what we want. */
        mode_t mode = m->user ? 0600 : 0660;
        mode_t old = umask(0777 & ~mode);
        k = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        umask(old);
        if (k < 0)
                return log_error_errno(errno, "Failed to bind %s: %m", m->socket_path);
        m->socket_bound = true;
        if (!m->user && m->have_group && chown(m->socket_path, (uid_t)-1, m->group_gid) < 0)
                log_warning_errno(errno, "Failed to give %s to group '%s', ignoring: %m", m->socket_path,
                                  manager_group(m));
        if (listen(fd, SOMAXCONN) < 0)
                return log_error_errno(errno, "Failed to listen on %s: %m", m->socket_path);
        m->listen_fd = TAKE_FD(fd);
        return 0;
}

int server_listen(Manager *m) {
        int n, k;

        struct group *g = getgrnam(manager_group(m));
        if (g) {
                m->have_group = true;
                m->group_gid = g->gr_gid;
        } else if (!m->user)
                log_notice("Group '%s' does not exist; only root and uid %u may change the store.",
                           manager_group(m), (unsigned)getuid());

        n = sd_listen_fds(true);
        if (n < 0)
                return log_error_errno(n, "Failed to read the sockets passed by systemd: %m");
        if (n > 1)
                return log_error_errno(EINVAL, "systemd passed %d sockets, quantd takes one.", n);
        if (n == 1) {
                if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) <= 0)
                        return log_error_errno(EINVAL,
                                               "The socket systemd passed is not a listening AF_UNIX stream "
                                               "socket.");
                m->listen_fd = SD_LISTEN_FDS_START;
                int flags = fcntl(m->listen_fd, F_GETFL);
                if (flags < 0 || fcntl(m->listen_fd, F_SETFL, flags | O_NONBLOCK) < 0)
                        return log_error_errno(errno, "Failed to make the passed socket non-blocking: %m");
                log_info("Listening on the socket passed by systemd.");
        } else {
                k = bind_socket(m);
                if (k < 0)
                        return k;
                log_info("Listening on %s.", m->socket_path);
        }
        k = sd_event_add_io(m->event, &m->listen_source, m->listen_fd, EPOLLIN, listen_io, m);
        if (k < 0)
                return log_error_errno(k, "Failed to watch the listening socket: %m");
        return 0;
}

void server_done(Manager *m) {
        Connection *c, *n;

        LIST_FOREACH_SAFE(connections, c, n, m->connections)
        connection_free(c);
        m->listen_source = sd_event_source_disable_unref(m->listen_source);
        m->listen_fd = safe_close(m->listen_fd);
        if (m->socket_bound) {
                (void)unlink(m->socket_path);
                m->socket_bound = false;
        }
}
