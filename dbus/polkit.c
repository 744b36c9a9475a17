/* SPDX-License-Identifier: MIT */
/*
 * Authorisation through polkit's D-Bus API: one asynchronous CheckAuthorization per question, so that the main
 * thread never waits for polkit (or for the password a user types into an agent).
 *
 * DESIGN: the subject is the caller's unique bus name ("system-bus-name"), which polkit resolves to a process
 * and a user itself; we pass no pid or uid of our own that could be stale. An authority that cannot be asked
 * (not installed, not running, crashed, timed out) means "denied", with a sentence that says so, never
 * "allowed".
 */

#include "dbus.h"

#define POLKIT_NAME "org.freedesktop.PolicyKit1"
#define POLKIT_PATH "/org/freedesktop/PolicyKit1/Authority"
#define POLKIT_INTERFACE "org.freedesktop.PolicyKit1.Authority"
#define POLKIT_ALLOW_USER_INTERACTION 1U

/* How long an interactive question may take: long enough to type a password. */
#define POLKIT_INTERACTIVE_TIMEOUT_USEC (300ULL * 1000000ULL)

typedef struct PolkitQuery {
        DbusPolkitHandler handler;
        void *userdata;
        char *action;
} PolkitQuery;

static void query_free(void *userdata) {
        PolkitQuery *q = userdata;
        free(q->action);
        free(q);
}

static int decide(sd_bus_message *reply, const char *action, char *msg, size_t size) {
        const sd_bus_error *e = sd_bus_message_get_error(reply);
        int authorized, challenge, k;

        if (e) {
                snprintf(msg, size,
                         "Authorization could not be checked, so the request is denied: polkit (%s) did not "
                         "answer (%s). Is polkitd installed and running?",
                         POLKIT_NAME, e->message ?: e->name);
                return -EACCES;
        }
        k = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (k >= 0)
                k = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (k == 0)
                k = -EBADMSG;
        if (k < 0) {
                snprintf(msg, size,
                         "Authorization could not be checked, so the request is denied: polkit's answer could "
                         "not be read (%s).",
                         strerror(-k));
                return -EACCES;
        }
        if (authorized)
                return 1;
        if (challenge)
                snprintf(msg, size,
                         "Not authorized to perform '%s' without authentication: allow interactive "
                         "authorization in the call and run a polkit agent, or ask an administrator.",
                         action);
        else
                snprintf(msg, size, "Not authorized: polkit denies '%s' to this caller.", action);
        return -EPERM;
}

static int reply_handler(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        PolkitQuery *q = userdata;
        char msg[sizeof(((QdError *)NULL)->msg)] = "";
        int k = decide(reply, q->action, msg, sizeof(msg));

        log_debug("polkit: '%s' %s%s%s", q->action, k > 0 ? "allowed" : "denied", k > 0 ? "" : ": ", msg);
        /* The handler may drop the slot, which frees q: nothing may touch q after this call. */
        q->handler(k, k > 0 ? NULL : msg, q->userdata);
        return 0;
}

int dbus_polkit_check(sd_bus *bus, sd_bus_message *call, const char *action, DbusPolkitHandler handler,
                      void *userdata, sd_bus_slot **ret_slot) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        const char *sender = sd_bus_message_get_sender(call);
        bool interactive = sd_bus_message_get_allow_interactive_authorization(call) > 0;
        int k;

        if (!sender)
                return -EINVAL; /* a direct connection has no bus name that polkit could check */

        k = sd_bus_message_new_method_call(bus, &m, POLKIT_NAME, POLKIT_PATH, POLKIT_INTERFACE,
                                           "CheckAuthorization");
        if (k < 0)
                return k;
        k = sd_bus_message_append(m, "(sa{sv})sa{ss}us", "system-bus-name", 1, "name", "s", sender, action, 0,
                                  interactive ? POLKIT_ALLOW_USER_INTERACTION : 0U, "");
        if (k < 0)
                return k;

        PolkitQuery *q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->handler = handler;
        q->userdata = userdata;
        q->action = strdup(action);
        if (!q->action) {
                query_free(q);
                return -ENOMEM;
        }
        k = sd_bus_call_async(bus, &slot, m, reply_handler, q,
                              interactive ? POLKIT_INTERACTIVE_TIMEOUT_USEC : 0);
        if (k < 0) {
                query_free(q);
                return k;
        }
        k = sd_bus_slot_set_destroy_callback(slot, query_free);
        if (k < 0) {
                query_free(q);
                return k;
        }
        *ret_slot = TAKE_PTR(slot);
        return 0;
}
