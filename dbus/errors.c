/* SPDX-License-Identifier: MIT */
/*
 * The D-Bus error names of quantd: one table that turns the daemon's errno values into
 * org.quantd.Quantd1.Error.* names on the way out, and (registered with sd-bus) names back into errno values
 * in C clients. The errno meanings are the fixed set of the house style; org.quantd.Quantd1(5) documents the
 * table.
 *
 * DESIGN: errors are translated once, here, at the edge. The daemon's handlers know only errno values and
 * sentences; the socket server sends the errno's name ("ENOENT"), the D-Bus front end sends this table's name,
 * and both carry the same sentence.
 */

#include <pthread.h>

#include "dbus.h"

#define E(n) QUANTD_DBUS_ERROR_PREFIX n

const sd_bus_error_map dbus_error_map[] = {
        SD_BUS_ERROR_MAP(E("NotFound"), ENOENT),             /* no such model, job or request */
        SD_BUS_ERROR_MAP(E("AlreadyExists"), EEXIST),        /* the name is taken */
        SD_BUS_ERROR_MAP(E("Busy"), EBUSY),                  /* in use */
        SD_BUS_ERROR_MAP(E("NoSpace"), ENOSPC),              /* out of memory on the device, or of disk */
        SD_BUS_ERROR_MAP(E("InvalidArgument"), EINVAL),      /* a bad argument */
        SD_BUS_ERROR_MAP(E("InvalidArgument"), ERANGE),
        SD_BUS_ERROR_MAP(E("Malformed"), EBADMSG),           /* a malformed file or message */
        SD_BUS_ERROR_MAP(E("LimitExceeded"), EMSGSIZE),      /* over a limit */
        SD_BUS_ERROR_MAP(E("LimitExceeded"), E2BIG),
        SD_BUS_ERROR_MAP(E("Cancelled"), ECANCELED),
        SD_BUS_ERROR_MAP(E("NotSupported"), EOPNOTSUPP),     /* not by this build, backend or type */
        SD_BUS_ERROR_MAP(E("NotSupported"), ENOSYS),
        SD_BUS_ERROR_MAP(E("NoMemory"), ENOMEM),
        SD_BUS_ERROR_MAP(E("PermissionDenied"), EPERM),      /* refused, by the rules or by polkit */
        SD_BUS_ERROR_MAP(E("PermissionDenied"), EACCES),     /* authorisation could not be checked */
        SD_BUS_ERROR_MAP(E("VersionMismatch"), EPROTONOSUPPORT),
        SD_BUS_ERROR_MAP(E("ShuttingDown"), ESHUTDOWN),
        SD_BUS_ERROR_MAP(E("TimedOut"), ETIMEDOUT),
        SD_BUS_ERROR_MAP(E("NetworkError"), ECONNREFUSED),   /* the registry could not be reached */
        SD_BUS_ERROR_MAP(E("NetworkError"), ECONNRESET),
        SD_BUS_ERROR_MAP(E("NetworkError"), EHOSTUNREACH),
        SD_BUS_ERROR_MAP(E("NetworkError"), ENETUNREACH),
        SD_BUS_ERROR_MAP(E("IOError"), EIO),
        /* The catch-all, last so that EIO's name stays IOError; it reads back as EIO. */
        SD_BUS_ERROR_MAP(E("Failed"), EIO),
        SD_BUS_ERROR_MAP_END,
};

static pthread_once_t register_once = PTHREAD_ONCE_INIT;
static int register_result;

static void register_map(void) {
        register_result = sd_bus_error_add_map(dbus_error_map);
}

int dbus_errors_register(void) {
        (void)pthread_once(&register_once, register_map);
        return register_result < 0 ? register_result : 0;
}

const char *dbus_error_name_from_errno(int error) {
        error = abs(error);
        for (const sd_bus_error_map *e = dbus_error_map; e->name; e++)
                if (e->code == error)
                        return e->name;
        return E("Failed");
}

int dbus_error_name_to_errno(const char *name) {
        if (!name)
                return -EINVAL;
        for (const sd_bus_error_map *e = dbus_error_map; e->name; e++)
                if (streq(e->name, name))
                        return e->code;
        return -EINVAL;
}
