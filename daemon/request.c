/* SPDX-License-Identifier: MIT */
/*
 * Requests: one call in flight, independent of the front end that received it. A handler replies or sends
 * events through the Request; the front end's ops deliver them (socket frames, D-Bus replies and signals).
 * When the client goes away the request is detached: deliveries stop, and what it runs is cancelled unless
 * the method survives its client (store-changing jobs).
 */

#include <stdarg.h>

#include "daemon-internal.h"

void reply_init(Reply *r) {
        msgpack_sbuffer_init(&r->sb);
        proto_packer_init(&r->pk, &r->sb);
}

void reply_done(Reply *r) {
        msgpack_sbuffer_destroy(&r->sb);
        msgpack_sbuffer_init(&r->sb);
}

int request_new(Manager *m, const RequestFrontend *fe, void *frontend_data, uint64_t id,
                const Caller *caller, Request **ret) {
        Request *r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->n_ref = 1;
        r->manager = m;
        r->frontend = fe;
        r->frontend_data = frontend_data;
        r->id = id;
        r->caller = *caller;
        atomic_init(&r->cancelled, false);
        *ret = r;
        return 0;
}

Request *request_ref(Request *r) {
        if (r)
                r->n_ref++;
        return r;
}

Request *request_unref(Request *r) {
        if (!r || --r->n_ref > 0)
                return NULL;
        free(r);
        return NULL;
}

uint64_t request_id(const Request *r) {
        return r->id;
}

void *request_frontend_data(const Request *r) {
        return r->frontend_data;
}

const Caller *request_caller(const Request *r) {
        return &r->caller;
}

bool request_replied(const Request *r) {
        return r->replied;
}

bool request_is_cancelled(const Request *r) {
        return atomic_load(&r->cancelled);
}

void request_set_cancel(Request *r, void (*cancel)(Request *r, void *userdata), void *userdata) {
        r->cancel_fn = cancel;
        r->cancel_data = userdata;
}

void request_cancel(Request *r) {
        if (atomic_exchange(&r->cancelled, true))
                return;
        if (r->cancel_fn)
                r->cancel_fn(r, r->cancel_data);
}

void request_detach(Request *r) {
        r->frontend = NULL;
        r->frontend_data = NULL;
        if (!r->replied && !(r->method && (r->method->flags & METHOD_SURVIVES_CLIENT)))
                request_cancel(r);
}

void request_reply(Request *r, Reply *result) {
        if (r->replied)
                return;
        r->replied = true;
        if (r->frontend)
                r->frontend->reply(r, 0, NULL, result ? result->sb.data : NULL,
                                   result ? result->sb.size : 0);
}

void request_reply_error(Request *r, int error, const char *fmt, ...) {
        char msg[sizeof(((QdError *)NULL)->msg)];

        if (r->replied)
                return;
        r->replied = true;
        if (!r->frontend)
                return;
        if (fmt) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(msg, sizeof(msg), fmt, ap);
                va_end(ap);
        } else
                snprintf(msg, sizeof(msg), "%s.", strerror(abs(error)));
        r->frontend->reply(r, abs(error), msg, NULL, 0);
}

int request_notify(Request *r, const char *event, Reply *fields, uint32_t n_fields) {
        if (r->replied || !r->frontend)
                return 0;
        return r->frontend->notify(r, event, fields ? fields->sb.data : NULL, fields ? fields->sb.size : 0,
                                   n_fields);
}

const Method *method_find(const char *name) {
        for (const Method *m = daemon_methods; m->name; m++)
                if (streq(m->name, name))
                        return m;
        return NULL;
}

void manager_dispatch(Manager *m, Request *r, ProtoMessage *call) {
        QdError err = {};
        const Method *method = method_find(call->name);
        int k;

        if (!method) {
                request_reply_error(r, EOPNOTSUPP,
                                    "Unknown method '%s'; Hello lists the methods this daemon has.",
                                    call->name);
                return;
        }
        r->method = method;
        if ((method->flags & METHOD_CHANGES_STORE) && !r->caller.may_change_store) {
                log_notice("Refused %s from uid %u (pid %d): it changes the model store.", method->name,
                           (unsigned)r->caller.uid, (int)r->caller.pid);
                request_reply_error(
                        r, EPERM,
                        "%s changes the model store, which needs root, the daemon's user or the group "
                        "'%s'.",
                        method->name, manager_group(m));
                return;
        }
        if (m->stopping) {
                request_reply_error(r, ESHUTDOWN, "The daemon is shutting down.");
                return;
        }
        k = method->handler(m, r, call, &err);
        if (k < 0) {
                log_debug("%s from pid %d failed: %s", method->name, (int)r->caller.pid, err.msg);
                if (err.code != 0)
                        request_reply_error(r, k, "%s", err.msg);
                else
                        request_reply_error(r, k, NULL);
        }
}
