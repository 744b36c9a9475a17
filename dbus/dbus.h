/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * dbus: quantd's D-Bus front end, org.quantd.Quantd1 (see org.quantd.Quantd1(5)).
 *
 * A thin adapter over the daemon's method table: a method call's typed arguments and its trailing a{sv} become
 * the params map of the same socket method, the daemon's msgpack results and events become a{sv} replies and
 * signals, and errno values become org.quantd.Quantd1.Error.* names through one table. Store-changing methods
 * on the system bus are authorised through polkit.
 *
 * Everything here runs on the main thread (the one that owns sd-event and the bus), except the error table and
 * the value conversion, which any thread may use.
 */

#include <msgpack.h>
/* sd_bus_error_map is an anonymous struct's typedef, which cannot be declared forward. */
#include <systemd/sd-bus.h>

#include "common.h"

#define QUANTD_DBUS_NAME "org.quantd.Quantd1"
#define QUANTD_DBUS_PATH "/org/quantd/Quantd1"
#define QUANTD_DBUS_INTERFACE "org.quantd.Quantd1.Manager"
/* Streamed events of request ID (the serial of the caller's method call) travel on PREFIX/ID. */
#define QUANTD_DBUS_REQUEST_PATH_PREFIX "/org/quantd/Quantd1/request"
#define QUANTD_DBUS_REQUEST_INTERFACE "org.quantd.Quantd1.Request"
#define QUANTD_DBUS_ERROR_PREFIX "org.quantd.Quantd1.Error."
#define QUANTD_POLKIT_ACTION_MANAGE "org.quantd.Quantd1.manage"

/* ---- errors: errno <-> org.quantd.Quantd1.Error.* (errors.c) ---- */

/*
 * The one table between errno values and D-Bus error names, in sd-bus's format (so a C client that calls
 * dbus_errors_register() gets our errno back from sd_bus_error_get_errno()). Several errno values may share a
 * name; the first entry of a name is the errno a client sees.
 */
extern const sd_bus_error_map dbus_error_map[];

/* Registers the table with sd-bus (sd_bus_error_add_map) once per process. Returns 0 or -errno. */
int dbus_errors_register(void);

/* The D-Bus error name for error (either sign); org.quantd.Quantd1.Error.Failed for one not in the table. */
const char *dbus_error_name_from_errno(int error);

/* The positive errno for a name of the table, or -EINVAL for any other name (NULL included). */
int dbus_error_name_to_errno(const char *name);

/* ---- values: msgpack <-> D-Bus (convert.c) ---- */

/*
 * Descriptors collected while reading a message: each 'h' value is duplicated (close-on-exec) and replaced by
 * its index here, which is how the socket protocol's params name a passed descriptor.
 */
typedef struct DbusFds {
        int fds[PROTO_FDS_MAX]; /* (n) owned; -EBADF once taken */
        size_t n;
} DbusFds;

/* Closes what is left. */
void dbus_fds_done(DbusFds *f);

/*
 * Reads the next complete value of m (any type) and packs it:
 *   y n q i u x t → integer, b → boolean, d → float64, s o g → string, h → descriptor index (into fds),
 *   v → its content, ay → bin, a{..} → map, other arrays and structs → array.
 * Returns 0, or -EINVAL/-EMSGSIZE with a sentence in err (a value nested deeper than PROTO_DEPTH_MAX, more
 * than PROTO_FDS_MAX descriptors), -ENOMEM, or sd-bus's error for a message that cannot be read.
 */
int dbus_read_value(sd_bus_message *m, msgpack_packer *pk, DbusFds *fds, QdError *err);

/*
 * Reads the arguments of a method call whose signature is typed arguments followed by one a{sv}, and packs them
 * as one params map: the typed arguments under names (NUL-separated, as SD_BUS_PARAM() writes them, the first
 * n_typed used), then the a{sv}'s entries. An entry of the a{sv} that repeats a typed argument's name is an
 * error (-EINVAL with a sentence).
 */
int dbus_read_params(sd_bus_message *m, const char *names, size_t n_typed, msgpack_packer *pk, DbusFds *fds,
                     QdError *err);

/*
 * Appends o as an a{sv}: a map's string keys with their values as variants; nil values are left out (absence is
 * D-Bus's nil); nil itself is the empty a{sv}, and any other value becomes {"value": o}. Values map as:
 *   bool → b; integers → x, or t above INT64_MAX; floats → d; a string → s, or ay when it is not valid UTF-8
 *   or holds a NUL; bin → ay; arrays → av; maps → a{sv}.
 * Returns 0, or -EBADMSG with a sentence in err for a map key that is not a string, a nil inside an array or an
 * ext value, -EMSGSIZE for nesting deeper than PROTO_DEPTH_MAX, or sd-bus's error.
 */
int dbus_append_dict(sd_bus_message *m, const msgpack_object *o, QdError *err);

/* Appends o as one variant, mapped as dbus_append_dict() describes. nil is -EBADMSG. */
int dbus_append_variant(sd_bus_message *m, const msgpack_object *o, QdError *err);

/* Whether the size bytes at s are valid UTF-8 without NUL bytes, as D-Bus strings must be. */
bool dbus_utf8_valid(const char *s, size_t size);

/* ---- polkit (polkit.c) ---- */

/*
 * The outcome of an authorisation: 1 allowed; -EPERM denied, or -EACCES when the authority could not be asked
 * (both with a sentence in message that says why and what to do). Runs on the main thread.
 */
typedef void (*DbusPolkitHandler)(int result, const char *message, void *userdata);

/*
 * Asks polkit (org.freedesktop.PolicyKit1 on bus) whether the sender of call may perform action, through
 * CheckAuthorization with the sender as a "system-bus-name" subject, allowing interactive authentication when the
 * call allows it. handler is called once, later, from the event loop, unless *ret_slot (the pending call) is
 * unreferenced first. Returns 0, or -errno when the question could not be sent (then handler is not called).
 */
int dbus_polkit_check(sd_bus *bus, sd_bus_message *call, const char *action, DbusPolkitHandler handler,
                      void *userdata, sd_bus_slot **ret_slot);

/* ---- the front end (front.c): main thread only ---- */

typedef struct Manager Manager;
typedef struct DbusFront DbusFront;

typedef struct DbusFrontOptions {
        /* A connected bus to serve on; NULL: the session bus when user is set, else the system bus. */
        sd_bus *bus;
        /* The session bus of quantd --user, where every caller is the daemon's user. */
        bool user;
        /* Ask polkit before store-changing methods from callers the socket's rules do not trust (system bus). */
        bool polkit;
} DbusFrontOptions;

/*
 * The Manager interface's vtable, the one description of the methods, their D-Bus arguments and the
 * properties; every method of the daemon's table has an entry of the same name.
 */
extern const sd_bus_vtable dbus_manager_vtable[];

/*
 * Connects (or takes o->bus), attaches the bus to the manager's event loop, registers the objects and asks for
 * the name org.quantd.Quantd1 (a failure to get it is logged when it comes). Calls are served once the manager's
 * loop runs. Returns 0, or -errno (logged) when the bus cannot be reached: the daemon then serves its socket
 * only.
 */
int dbus_front_new(DbusFront **ret, Manager *m, const DbusFrontOptions *o);

/*
 * Ends the front end before the manager: calls in flight get a ShuttingDown error, their requests are detached
 * (generations cancelled, jobs kept), the name is released and the bus flushed and closed. NULL-safe; returns
 * NULL.
 */
DbusFront *dbus_front_free(DbusFront *f);

DEFINE_TRIVIAL_CLEANUP_FUNC(DbusFront *, dbus_front_free);
