/* SPDX-License-Identifier: MIT */
/*
 * The D-Bus front end: org.quantd.Quantd1.Manager served from the daemon's one method table.
 *
 * DESIGN
 * - One generic handler serves every method. The vtable names each method's typed arguments (SD_BUS_PARAM());
 *   the handler reads them and the trailing a{sv} into the params map of the protocol method of the same name,
 *   wraps the call in a Request whose RequestFrontend delivers replies as method returns and events as
 *   signals, and calls manager_dispatch(). Methods are implemented only in daemon/.
 * - A request's id is the serial of the caller's method call: the caller knows it before any event arrives,
 *   it is unique per caller, and it plays the role of the socket's msgid (Cancel {id}). Events are unicast to
 *   the caller on /org/quantd/Quantd1/request/ID, so that another user of the system bus never sees them.
 * - Every call belongs to a Peer (its sender). A peer with a call still running is tracked (sd_bus_track):
 *   when it leaves the bus, its requests are detached, which cancels generations and keeps jobs, as a closed
 *   socket does. Calls answered at once never cost a match on the bus.
 * - A store-changing method from a caller the socket's rules do not trust (root, the daemon's uid, its
 *   group) waits for polkit before dispatch; on the session bus every caller is the daemon's user.
 * - LoadedModels: the daemon has no change notification, so after activity, once the loop is idle, the front
 *   end asks Ps and compares with what it announced last. expires_at within a second counts as unchanged: it
 *   is computed from two clocks and its rounding jitters.
 */

#include <systemd/sd-event.h>

#include "daemon.h"
#include "dbus.h"

typedef struct Peer Peer;
typedef struct DbusCall DbusCall;

struct DbusCall {
        DbusFront *front;
        Peer *peer;
        sd_bus_message *message; /* the method call, until answered */
        uint64_t id;             /* its serial */
        Caller caller;
        msgpack_sbuffer packed;  /* the protocol request, until dispatched */
        DbusFds fds;             /* its descriptors, until dispatched */
        Request *request;        /* from dispatch until answered */
        sd_bus_slot *polkit_slot;
};

struct Peer {
        DbusFront *front;
        char *name;          /* unique bus name; "" on a direct connection */
        sd_bus_track *track; /* once a call outlives its dispatch */
        DbusCall **calls;    /* (n_calls) */
        size_t n_calls;
};

struct DbusFront {
        Manager *manager;
        sd_bus *bus;
        bool user;
        bool polkit;

        sd_bus_slot *manager_slot, *request_slot, *name_slot;
        sd_event_source *post_source, *check_source;
        bool checked; /* the idle check ran, so the next post event is its own */

        /* Properties; the vtable points into these. */
        char *version;
        char **backends;
        Buf loaded_models; /* the Ps result last announced; empty until the first check */
        bool loaded_models_known;

        Peer **peers; /* (n_peers) */
        size_t n_peers;
};

/* ---- replies ---- */

static int reply_error(sd_bus_message *m, int error, const char *message) {
        return sd_bus_reply_method_errorf(m, dbus_error_name_from_errno(error), "%s",
                                          message && *message ? message : strerror(abs(error)));
}

/* ---- peers ---- */

static Peer *peer_free(Peer *p) {
        if (!p)
                return NULL;
        DbusFront *f = p->front;
        for (size_t i = 0; i < f->n_peers; i++)
                if (f->peers[i] == p) {
                        f->peers[i] = f->peers[--f->n_peers];
                        break;
                }
        sd_bus_track_unref(p->track);
        free(p->calls);
        free(p->name);
        free(p);
        return NULL;
}

static Peer *peer_find(DbusFront *f, const char *name) {
        for (size_t i = 0; i < f->n_peers; i++)
                if (streq(f->peers[i]->name, name))
                        return f->peers[i];
        return NULL;
}

static int peer_get(DbusFront *f, const char *name, Peer **ret) {
        Peer *p = peer_find(f, name);
        if (p) {
                *ret = p;
                return 0;
        }
        Peer **l = reallocarray(f->peers, f->n_peers + 1, sizeof(Peer *));
        if (!l)
                return -ENOMEM;
        f->peers = l;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->front = f;
        p->name = strdup(name);
        if (!p->name) {
                free(p);
                return -ENOMEM;
        }
        f->peers[f->n_peers++] = p;
        *ret = p;
        return 0;
}

static void call_free(DbusCall *c);

static int on_peer_gone(sd_bus_track *t, void *userdata) {
        Peer *p = userdata;
        DbusCall **calls = TAKE_PTR(p->calls);
        size_t n = p->n_calls;

        log_debug("%s left the bus: cancelling its %zu call%s in flight.", p->name, n, n == 1 ? "" : "s");
        p->n_calls = 0;
        for (size_t i = 0; i < n; i++) {
                calls[i]->peer = NULL;
                call_free(calls[i]);
        }
        free(calls);
        peer_free(p);
        return 0;
}

/* Watches the peer's name once one of its calls outlives its dispatch. Failing that is survivable. */
static void peer_track(Peer *p) {
        int k;

        if (p->track || !*p->name)
                return;
        k = sd_bus_track_new(p->front->bus, &p->track, on_peer_gone, p);
        if (k >= 0)
                k = sd_bus_track_add_name(p->track, p->name);
        if (k < 0) {
                p->track = sd_bus_track_unref(p->track);
                log_warning_errno(k, "Failed to watch %s on the bus (its calls run to the end if it leaves), "
                                     "ignoring: %m",
                                  p->name);
        }
}

/* ---- calls ---- */

static void call_free(DbusCall *c) {
        if (!c)
                return;
        Peer *p = c->peer;
        if (p) {
                for (size_t i = 0; i < p->n_calls; i++)
                        if (p->calls[i] == c) {
                                p->calls[i] = p->calls[--p->n_calls];
                                break;
                        }
                if (p->n_calls == 0)
                        peer_free(p);
        }
        c->polkit_slot = sd_bus_slot_unref(c->polkit_slot);
        if (c->request) {
                /* Answered: nothing to stop. Not answered (the caller left): generations stop, jobs go on. */
                request_detach(c->request);
                c->request = request_unref(c->request);
        }
        dbus_fds_done(&c->fds);
        msgpack_sbuffer_destroy(&c->packed);
        sd_bus_message_unref(c->message);
        free(c);
}

static void call_fail(DbusCall *c, int error, const char *message) {
        int k = reply_error(c->message, error, message);
        if (k < 0)
                log_debug_errno(k, "Failed to send an error reply, ignoring: %m");
        call_free(c);
}

static int call_new(DbusFront *f, sd_bus_message *m, DbusCall **ret) {
        const char *sender = sd_bus_message_get_sender(m) ?: "";
        uint64_t cookie;
        Peer *p;
        int k;

        k = sd_bus_message_get_cookie(m, &cookie);
        if (k < 0)
                return k;
        k = peer_get(f, sender, &p);
        if (k < 0)
                return k;
        DbusCall **l = reallocarray(p->calls, p->n_calls + 1, sizeof(DbusCall *));
        DbusCall *c = l ? calloc(1, sizeof(*c)) : NULL;
        if (l)
                p->calls = l;
        if (!c) {
                if (p->n_calls == 0)
                        peer_free(p);
                return -ENOMEM;
        }
        c->front = f;
        c->peer = p;
        c->message = sd_bus_message_ref(m);
        c->id = cookie;
        msgpack_sbuffer_init(&c->packed);
        p->calls[p->n_calls++] = c;
        *ret = c;
        return 0;
}

/* Who is calling, and whether the socket's rules let them change the store (see server.c). */
static int caller_from_message(DbusFront *f, sd_bus_message *m, Caller *ret, QdError *err) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t uid;
        gid_t gid = (gid_t)-1;
        pid_t pid = 0;
        int k;

        k = sd_bus_query_sender_creds(m,
                                      SD_BUS_CREDS_EUID | SD_BUS_CREDS_EGID | SD_BUS_CREDS_PID |
                                              SD_BUS_CREDS_SUPPLEMENTARY_GIDS | SD_BUS_CREDS_AUGMENT,
                                      &creds);
        if (k >= 0)
                k = sd_bus_creds_get_euid(creds, &uid);
        if (k < 0)
                return qd_error_set(err, EACCES, "Failed to learn who is calling (%s); the call is refused.",
                                    strerror(-k));
        (void)sd_bus_creds_get_egid(creds, &gid);
        (void)sd_bus_creds_get_pid(creds, &pid);

        const gid_t *gids = NULL;
        int n = sd_bus_creds_get_supplementary_gids(creds, &gids);
        bool may = manager_may_change_store(f->manager, uid, gid, gids, n > 0 ? (size_t)n : 0);
        *ret = (Caller){ .uid = uid, .gid = gid, .pid = pid, .may_change_store = may };
        return 0;
}

/* ---- the Request front end ---- */

/* Unpacks size bytes of one msgpack object into zone; size 0 is nil. */
static int unpack(const void *data, size_t size, msgpack_zone *zone, msgpack_object *ret) {
        size_t off = 0;

        if (size == 0) {
                *ret = (msgpack_object){ .type = MSGPACK_OBJECT_NIL };
                return 0;
        }
        if (msgpack_unpack(data, size, &off, zone, ret) != MSGPACK_UNPACK_SUCCESS || off != size)
                return -EBADMSG;
        return 0;
}

static void front_reply(Request *r, int error, const char *message, const void *result, size_t size) {
        DbusCall *c = request_frontend_data(r);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        msgpack_zone zone;
        msgpack_object o;
        QdError err = {};
        int k;

        if (error != 0) {
                call_fail(c, error, message);
                return;
        }
        if (!msgpack_zone_init(&zone, 1024)) {
                call_fail(c, ENOMEM, NULL);
                return;
        }
        k = unpack(result, size, &zone, &o);
        if (k < 0)
                qd_error_set(&err, k, "The daemon's result could not be read.");
        if (k >= 0)
                k = sd_bus_message_new_method_return(c->message, &reply);
        if (k >= 0)
                k = dbus_append_dict(reply, &o, &err);
        msgpack_zone_destroy(&zone);
        if (k < 0) {
                log_warning("Failed to send the result of %s as D-Bus values: %s",
                            sd_bus_message_get_member(c->message), err.code ? err.msg : strerror(-k));
                call_fail(c, k, err.code ? err.msg : NULL);
                return;
        }
        k = sd_bus_send(NULL, reply, NULL);
        if (k < 0)
                log_debug_errno(k, "Failed to send a reply, ignoring: %m");
        call_free(c);
}

static const char *event_member(const char *event) {
        if (streq(event, "token"))
                return "Token";
        if (streq(event, "progress"))
                return "Progress";
        return "Event";
}

static int front_notify(Request *r, const char *event, const void *fields, size_t size, uint32_t n_fields) {
        DbusCall *c = request_frontend_data(r);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *s = NULL;
        const char *member = event_member(event);
        char path[sizeof(QUANTD_DBUS_REQUEST_PATH_PREFIX) + 24];
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_zone zone;
        msgpack_object o;
        QdError err = {};
        int k;

        /* The fields are map entries without their map's head. */
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        k = msgpack_pack_map(&pk, n_fields) < 0 || (size > 0 && msgpack_sbuffer_write(&sb, fields, size) < 0)
                    ? -ENOMEM
                    : 0;
        if (k >= 0 && !msgpack_zone_init(&zone, 1024))
                k = -ENOMEM;
        else if (k >= 0) {
                k = unpack(sb.data, sb.size, &zone, &o);
                snprintf(path, sizeof(path), QUANTD_DBUS_REQUEST_PATH_PREFIX "/%" PRIu64, c->id);
                if (k >= 0)
                        k = sd_bus_message_new_signal(c->front->bus, &s, path, QUANTD_DBUS_REQUEST_INTERFACE,
                                                      member);
                if (k >= 0 && *c->peer->name)
                        k = sd_bus_message_set_destination(s, c->peer->name);
                if (k >= 0)
                        k = sd_bus_message_append(s, "t", c->id);
                if (k >= 0 && streq(member, "Event"))
                        k = sd_bus_message_append(s, "s", event);
                if (k >= 0)
                        k = dbus_append_dict(s, &o, &err);
                msgpack_zone_destroy(&zone);
        }
        msgpack_sbuffer_destroy(&sb);
        if (k >= 0)
                k = sd_bus_send(NULL, s, NULL);
        if (k < 0)
                return log_debug_errno(k, "Failed to send a %s signal to %s: %s", member, c->peer->name,
                                       err.code ? err.msg : strerror(-k));
        return 0;
}

static Request *front_find_sibling(Request *r, uint64_t id) {
        DbusCall *c = request_frontend_data(r);

        for (size_t i = 0; i < c->peer->n_calls; i++) {
                DbusCall *s = c->peer->calls[i];
                if (s != c && s->id == id && s->request && !request_replied(s->request))
                        return s->request;
        }
        return NULL;
}

static const RequestFrontend dbus_frontend = {
        .reply = front_reply,
        .notify = front_notify,
        .find_sibling = front_find_sibling,
};

/* ---- dispatch ---- */

/* Decodes the packed request as the socket server would and hands it to the method table. */
static void call_dispatch(DbusCall *c) {
        DbusFront *f = c->front;
        _cleanup_(proto_reader_freep) ProtoReader *reader = NULL;
        _cleanup_(dbus_fds_done) DbusFds fds = c->fds;
        ProtoMessage msg;
        QdError err = {};
        int k;

        c->fds.n = 0;
        k = proto_reader_new(&reader, manager_config(f->manager)->max_frame);
        if (k >= 0)
                k = proto_reader_feed(reader, c->packed.data, c->packed.size);
        if (k >= 0)
                k = proto_reader_next(reader, &msg, &err);
        if (k == 0)
                k = qd_error_set(&err, EBADMSG, "The call could not be turned into a request.");
        msgpack_sbuffer_destroy(&c->packed);
        msgpack_sbuffer_init(&c->packed);
        if (k >= 0)
                k = request_new(f->manager, &dbus_frontend, c, c->id, &c->caller, &c->request);
        if (k < 0) {
                call_fail(c, k, err.code ? err.msg : NULL);
                return;
        }
        msg.fds = fds.fds;
        msg.n_fds = fds.n;

        Request *r = request_ref(c->request);
        manager_dispatch(f->manager, r, &msg);
        /* A reply freed c; a call still running needs to know when its caller leaves. */
        if (!request_replied(r))
                peer_track(c->peer);
        request_unref(r);
}

static void on_polkit(int result, const char *message, void *userdata) {
        DbusCall *c = userdata;

        c->polkit_slot = sd_bus_slot_unref(c->polkit_slot);
        if (result < 0) {
                log_notice("Refused %s from uid %u (pid %d): %s", sd_bus_message_get_member(c->message),
                           (unsigned)c->caller.uid, (int)c->caller.pid, message);
                call_fail(c, result, message);
                return;
        }
        c->caller.may_change_store = true;
        call_dispatch(c);
}

/* The number of NUL-separated names in an SD_BUS_PARAM() list. */
static size_t count_names(const char *names) {
        size_t n = 0;
        for (const char *p = names; p && *p; p += strlen(p) + 1)
                n++;
        return n;
}

static const sd_bus_vtable *vtable_method(const char *member) {
        for (const sd_bus_vtable *v = dbus_manager_vtable; v->type != _SD_BUS_VTABLE_END; v++)
                if (v->type == _SD_BUS_VTABLE_METHOD && streq(v->x.method.member, member))
                        return v;
        return NULL;
}

static int method_call(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        DbusFront *f = userdata;
        const char *member = sd_bus_message_get_member(m);
        const sd_bus_vtable *v = vtable_method(member);
        const Method *method = method_find(member);
        msgpack_packer pk;
        DbusCall *c;
        QdError err = {};
        int k;

        if (!v)
                return reply_error(m, EOPNOTSUPP, "This method is not served here.");
        k = call_new(f, m, &c);
        if (k < 0)
                return reply_error(m, k, NULL);
        k = caller_from_message(f, m, &c->caller, &err);
        if (k < 0) {
                call_fail(c, k, err.msg);
                return 1;
        }

        /* Every method's names are its typed arguments, then "parameters" (the a{sv}) and "result". */
        size_t n_typed = count_names(v->x.method.names) - 2;
        proto_packer_init(&pk, &c->packed);
        k = proto_pack_request_begin(&pk, c->id, member);
        if (k >= 0)
                k = dbus_read_params(m, v->x.method.names, n_typed, &pk, &c->fds, &err);
        if (k < 0) {
                call_fail(c, k, err.code ? err.msg : NULL);
                return 1;
        }

        if (f->polkit && method && (method->flags & METHOD_CHANGES_STORE) && !c->caller.may_change_store) {
                k = dbus_polkit_check(f->bus, m, QUANTD_POLKIT_ACTION_MANAGE, on_polkit, c, &c->polkit_slot);
                if (k < 0) {
                        snprintf(err.msg, sizeof(err.msg),
                                 "Authorization could not be checked, so the request is denied: asking polkit "
                                 "failed (%s).", strerror(-k));
                        call_fail(c, EACCES, err.msg);
                        return 1;
                }
                peer_track(c->peer);
                return 1;
        }
        call_dispatch(c);
        return 1;
}

/* ---- calls of our own: Version at start, Ps for LoadedModels ---- */

typedef struct Internal {
        bool replied;
        int error;
        char message[sizeof(((QdError *)NULL)->msg)];
        Buf result;
} Internal;

static void internal_reply(Request *r, int error, const char *message, const void *result, size_t size) {
        Internal *in = request_frontend_data(r);

        in->replied = true;
        in->error = error;
        snprintf(in->message, sizeof(in->message), "%s", strempty(message));
        if (size > 0 && buf_append(&in->result, result, size) < 0)
                in->error = ENOMEM;
}

static int internal_notify(Request *r, const char *event, const void *fields, size_t size, uint32_t n_fields) {
        return 0;
}

static const RequestFrontend internal_frontend = {
        .reply = internal_reply,
        .notify = internal_notify,
};

/* Calls method with no parameters as the daemon's own user; only for methods that answer at once. */
static int front_call(DbusFront *f, const char *method, Internal *in, QdError *err) {
        _cleanup_(proto_reader_freep) ProtoReader *reader = NULL;
        Caller caller = { .uid = getuid(), .gid = getgid(), .pid = getpid() };
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage msg;
        Request *r;
        int k;

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        k = proto_pack_request_begin(&pk, 1, method) < 0 || msgpack_pack_map(&pk, 0) < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = proto_reader_new(&reader, 0);
        if (k >= 0)
                k = proto_reader_feed(reader, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
        if (k >= 0)
                k = proto_reader_next(reader, &msg, err);
        if (k >= 0)
                k = request_new(f->manager, &internal_frontend, in, 1, &caller, &r);
        if (k < 0)
                return k;
        manager_dispatch(f->manager, r, &msg);
        if (!in->replied)
                request_detach(r);
        request_unref(r);
        if (!in->replied)
                return qd_error_set(err, EINPROGRESS, "%s did not answer at once.", method);
        if (in->error != 0)
                return qd_error_set(err, in->error, "%s", in->message);
        return 0;
}

/* The models array of a Ps result, or NULL. */
static const msgpack_object *ps_models(const msgpack_object *o) {
        const msgpack_object *l = proto_map_get(o, "models");
        return l && l->type == MSGPACK_OBJECT_ARRAY ? l : NULL;
}

static bool model_equal(const msgpack_object *a, const msgpack_object *b) {
        if (a->type != MSGPACK_OBJECT_MAP || b->type != MSGPACK_OBJECT_MAP ||
            a->via.map.size != b->via.map.size)
                return msgpack_object_equal(*a, *b);
        for (uint32_t i = 0; i < a->via.map.size; i++) {
                const msgpack_object_kv *x = &a->via.map.ptr[i], *y = &b->via.map.ptr[i];
                if (!msgpack_object_equal(x->key, y->key))
                        return false;
                if (proto_str_eq(&x->key, "expires_at") && x->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                    y->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                        uint64_t p = x->val.via.u64, q = y->val.via.u64;
                        if ((p > q ? p - q : q - p) > 1)
                                return false;
                } else if (!msgpack_object_equal(x->val, y->val))
                        return false;
        }
        return true;
}

static bool ps_equal(const msgpack_object *a, const msgpack_object *b) {
        const msgpack_object *x = ps_models(a), *y = ps_models(b);
        if (!x || !y || x->via.array.size != y->via.array.size)
                return x == y;
        for (uint32_t i = 0; i < x->via.array.size; i++)
                if (!model_equal(&x->via.array.ptr[i], &y->via.array.ptr[i]))
                        return false;
        return true;
}

static void loaded_models_check(DbusFront *f) {
        Internal in = {};
        QdError err = {};
        msgpack_zone zone;
        msgpack_object now, before;
        bool changed = true;
        int k;

        k = front_call(f, "Ps", &in, &err);
        if (k < 0) {
                log_debug("Failed to ask Ps for LoadedModels, ignoring: %s", err.msg);
                buf_free(&in.result);
                return;
        }
        if (!msgpack_zone_init(&zone, 2048)) {
                buf_free(&in.result);
                return;
        }
        if (f->loaded_models_known && unpack(in.result.data, in.result.len, &zone, &now) >= 0 &&
            unpack(f->loaded_models.data, f->loaded_models.len, &zone, &before) >= 0)
                changed = !ps_equal(&now, &before);
        msgpack_zone_destroy(&zone);
        if (changed) {
                bool announce = f->loaded_models_known;
                buf_free(&f->loaded_models);
                f->loaded_models = in.result;
                f->loaded_models_known = true;
                if (announce) {
                        k = sd_bus_emit_properties_changed(f->bus, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE,
                                                           "LoadedModels", NULL);
                        if (k < 0)
                                log_debug_errno(k, "Failed to announce LoadedModels, ignoring: %m");
                }
        } else
                buf_free(&in.result);
}

/*
 * After any event source ran, check once the loop is idle. The check's own dispatch triggers the post source
 * once more, which it skips. The post source has the highest priority, so nothing else runs in between.
 */
static int on_post(sd_event_source *s, void *userdata) {
        DbusFront *f = userdata;

        if (f->checked) {
                f->checked = false;
                return 0;
        }
        return sd_event_source_set_enabled(f->check_source, SD_EVENT_ONESHOT);
}

static int on_check(sd_event_source *s, void *userdata) {
        DbusFront *f = userdata;

        f->checked = true;
        loaded_models_check(f);
        return 0;
}

/* ---- properties ---- */

static int property_get_strv(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        char ***l = userdata;
        return sd_bus_message_append_strv(reply, *l);
}

static int property_get_loaded_models(sd_bus *bus, const char *path, const char *interface,
                                      const char *property, sd_bus_message *reply, void *userdata,
                                      sd_bus_error *error) {
        DbusFront *f = userdata;
        Internal in = {};
        QdError err = {};
        msgpack_zone zone;
        msgpack_object o;
        int k;

        k = front_call(f, "Ps", &in, &err);
        if (k < 0) {
                buf_free(&in.result);
                return sd_bus_error_set(error, dbus_error_name_from_errno(k), err.msg);
        }
        if (!msgpack_zone_init(&zone, 2048)) {
                buf_free(&in.result);
                return -ENOMEM;
        }
        k = unpack(in.result.data, in.result.len, &zone, &o);
        const msgpack_object *models = k >= 0 ? ps_models(&o) : NULL;
        k = sd_bus_message_open_container(reply, 'a', "a{sv}");
        for (uint32_t i = 0; k >= 0 && models && i < models->via.array.size; i++)
                k = dbus_append_dict(reply, &models->via.array.ptr[i], &err);
        if (k >= 0)
                k = sd_bus_message_close_container(reply);
        msgpack_zone_destroy(&zone);
        buf_free(&in.result);
        if (k < 0 && err.code)
                return sd_bus_error_set(error, dbus_error_name_from_errno(k), err.msg);
        return k;
}

/* ---- the vtables ---- */

/* A method: its typed arguments with their names, then the a{sv} of other parameters; it returns an a{sv}. */
#define METHOD(name, signature, names)                                                                      \
        SD_BUS_METHOD_WITH_NAMES(name, signature "a{sv}", names SD_BUS_PARAM(parameters), "a{sv}",         \
                                 SD_BUS_PARAM(result), method_call, SD_BUS_VTABLE_UNPRIVILEGED)

const sd_bus_vtable dbus_manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", NULL, offsetof(DbusFront, version), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Backends", "as", property_get_strv, offsetof(DbusFront, backends),
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("LoadedModels", "aa{sv}", property_get_loaded_models, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        METHOD("Hello", "", ""),
        METHOD("Version", "", ""),
        METHOD("List", "", ""),
        METHOD("Show", "s", SD_BUS_PARAM(model)),
        METHOD("Ps", "", ""),
        METHOD("Generate", "ss", SD_BUS_PARAM(model) SD_BUS_PARAM(prompt)),
        METHOD("Chat", "saa{sv}", SD_BUS_PARAM(model) SD_BUS_PARAM(messages)),
        METHOD("Embed", "s", SD_BUS_PARAM(model)),
        METHOD("Tokenize", "ss", SD_BUS_PARAM(model) SD_BUS_PARAM(text)),
        METHOD("Detokenize", "sai", SD_BUS_PARAM(model) SD_BUS_PARAM(tokens)),
        METHOD("Pull", "s", SD_BUS_PARAM(model)),
        METHOD("Push", "s", SD_BUS_PARAM(model)),
        METHOD("Create", "sh", SD_BUS_PARAM(model) SD_BUS_PARAM(gguf)),
        METHOD("Quantize", "hhs", SD_BUS_PARAM(src) SD_BUS_PARAM(dst) SD_BUS_PARAM(type)),
        METHOD("Eval", "sh", SD_BUS_PARAM(model) SD_BUS_PARAM(text)),
        METHOD("Export", "sh", SD_BUS_PARAM(model) SD_BUS_PARAM(fd)),
        METHOD("Import", "h", SD_BUS_PARAM(archive)),
        METHOD("Copy", "ss", SD_BUS_PARAM(source) SD_BUS_PARAM(destination)),
        METHOD("Delete", "s", SD_BUS_PARAM(model)),
        METHOD("Load", "s", SD_BUS_PARAM(model)),
        METHOD("Unload", "s", SD_BUS_PARAM(model)),
        METHOD("Cancel", "t", SD_BUS_PARAM(id)),
        METHOD("Jobs", "", ""),
        SD_BUS_VTABLE_END,
};

static const sd_bus_vtable request_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_SIGNAL_WITH_NAMES("Token", "ta{sv}", SD_BUS_PARAM(id) SD_BUS_PARAM(event), 0),
        SD_BUS_SIGNAL_WITH_NAMES("Progress", "ta{sv}", SD_BUS_PARAM(id) SD_BUS_PARAM(event), 0),
        SD_BUS_SIGNAL_WITH_NAMES("Event", "tsa{sv}", SD_BUS_PARAM(id) SD_BUS_PARAM(name) SD_BUS_PARAM(event),
                                 0),
        SD_BUS_VTABLE_END,
};

/* ---- setup ---- */

static int on_name(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        DbusFront *f = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        uint32_t result = 0;

        f->name_slot = sd_bus_slot_unref(f->name_slot);
        if (e) {
                log_error("Failed to take the bus name %s, serving the socket only: %s", QUANTD_DBUS_NAME,
                          e->message ?: e->name);
                return 0;
        }
        if (sd_bus_message_read(m, "u", &result) < 0 || (result != 1 && result != 4)) {
                log_error("Failed to take the bus name %s: another process owns it; serving the socket only.",
                          QUANTD_DBUS_NAME);
                return 0;
        }
        log_info("Serving D-Bus as %s on the %s bus.", QUANTD_DBUS_NAME, f->user ? "session" : "system");
        return 0;
}

static int front_load_version(DbusFront *f) {
        Internal in = {};
        QdError err = {};
        msgpack_zone zone;
        msgpack_object o;
        int k;

        k = front_call(f, "Version", &in, &err);
        if (k < 0) {
                buf_free(&in.result);
                return log_error_errno(k, "Failed to ask the daemon's version: %s", err.msg);
        }
        if (!msgpack_zone_init(&zone, 1024)) {
                buf_free(&in.result);
                return -ENOMEM;
        }
        k = unpack(in.result.data, in.result.len, &zone, &o);
        const msgpack_object *v = k >= 0 ? proto_map_get(&o, "version") : NULL;
        const msgpack_object *b = k >= 0 ? proto_map_get(&o, "backends") : NULL;
        if (v && v->type == MSGPACK_OBJECT_STR)
                f->version = strndup(v->via.str.ptr, v->via.str.size);
        if (b && b->type != MSGPACK_OBJECT_ARRAY)
                b = NULL;
        f->backends = calloc(b ? b->via.array.size + 1 : 1, sizeof(char *));
        k = f->version && f->backends ? 0 : -ENOMEM;
        for (uint32_t i = 0, j = 0; k >= 0 && b && i < b->via.array.size; i++) {
                const msgpack_object *s = &b->via.array.ptr[i];
                if (s->type != MSGPACK_OBJECT_STR)
                        continue;
                f->backends[j] = strndup(s->via.str.ptr, s->via.str.size);
                k = f->backends[j++] ? 0 : -ENOMEM;
        }
        msgpack_zone_destroy(&zone);
        buf_free(&in.result);
        return k;
}

int dbus_front_new(DbusFront **ret, Manager *m, const DbusFrontOptions *o) {
        _cleanup_(dbus_front_freep) DbusFront *f = NULL;
        sd_event *e = manager_event(m);
        int k;

        f = calloc(1, sizeof(*f));
        if (!f)
                return log_oom();
        f->manager = m;
        f->user = o->user;
        f->polkit = o->polkit;
        (void)dbus_errors_register();

        k = front_load_version(f);
        if (k < 0)
                return k;

        if (o->bus)
                f->bus = sd_bus_ref(o->bus);
        else {
                k = o->user ? sd_bus_open_user_with_description(&f->bus, "quantd")
                            : sd_bus_open_system_with_description(&f->bus, "quantd");
                if (k < 0)
                        return log_warning_errno(k, "Failed to connect to the %s bus: %m",
                                                 o->user ? "session" : "system");
        }
        k = sd_bus_attach_event(f->bus, e, SD_EVENT_PRIORITY_NORMAL);
        /* Not closed when the loop exits: dbus_front_free() still answers the calls in flight then. */
        if (k >= 0)
                k = sd_bus_set_close_on_exit(f->bus, false);
        if (k < 0)
                return log_error_errno(k, "Failed to attach the bus to the event loop: %m");
        k = sd_bus_add_object_vtable(f->bus, &f->manager_slot, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE,
                                     dbus_manager_vtable, f);
        if (k >= 0)
                k = sd_bus_add_fallback_vtable(f->bus, &f->request_slot, QUANTD_DBUS_REQUEST_PATH_PREFIX,
                                               QUANTD_DBUS_REQUEST_INTERFACE, request_vtable, NULL, f);
        if (k < 0)
                return log_error_errno(k, "Failed to register the D-Bus objects: %m");

        k = sd_event_add_post(e, &f->post_source, on_post, f);
        if (k >= 0)
                k = sd_event_source_set_priority(f->post_source, SD_EVENT_PRIORITY_IMPORTANT);
        if (k >= 0)
                k = sd_event_add_defer(e, &f->check_source, on_check, f);
        if (k >= 0)
                k = sd_event_source_set_priority(f->check_source, SD_EVENT_PRIORITY_IDLE);
        if (k >= 0)
                k = sd_event_source_set_enabled(f->check_source, SD_EVENT_OFF);
        if (k < 0)
                return log_error_errno(k, "Failed to watch the loaded models: %m");

        k = sd_bus_request_name_async(f->bus, &f->name_slot, QUANTD_DBUS_NAME, 0, on_name, f);
        if (k < 0)
                return log_error_errno(k, "Failed to ask for the bus name %s: %m", QUANTD_DBUS_NAME);

        *ret = TAKE_PTR(f);
        return 0;
}

DbusFront *dbus_front_free(DbusFront *f) {
        if (!f)
                return NULL;
        /* Answer whoever still waits, then let their requests go: generations stop, jobs stay. */
        while (f->n_peers > 0) {
                Peer *p = f->peers[f->n_peers - 1];
                DbusCall *c = p->calls[p->n_calls - 1];
                call_fail(c, ESHUTDOWN, "The daemon is shutting down.");
        }
        free(f->peers);
        f->post_source = sd_event_source_disable_unref(f->post_source);
        f->check_source = sd_event_source_disable_unref(f->check_source);
        f->name_slot = sd_bus_slot_unref(f->name_slot);
        f->manager_slot = sd_bus_slot_unref(f->manager_slot);
        f->request_slot = sd_bus_slot_unref(f->request_slot);
        if (f->bus) {
                (void)sd_bus_detach_event(f->bus);
                sd_bus_flush_close_unref(f->bus);
        }
        free(f->version);
        strv_free(f->backends);
        buf_free(&f->loaded_models);
        free(f);
        return NULL;
}
