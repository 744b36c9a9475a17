/* SPDX-License-Identifier: MIT */
/*
 * A helper for the shell tests of the dbus suite, for what busctl cannot do:
 *   dbus-test-tool create MODEL FILE      calls Create with FILE passed as a descriptor (busctl has no 'h')
 *   dbus-test-tool authority MODE [LOG]   a stand-in polkit authority: owns org.freedesktop.PolicyKit1 and
 *                                         answers CheckAuthorization with MODE (allow, deny, challenge),
 *                                         appending "ACTION FLAGS SUBJECT-KIND SUBJECT-NAME" lines to LOG;
 *                                         prints "ready" once it owns the name, runs until SIGTERM
 * Both talk on the session bus, or on the system bus when QUANTD_TEST_SYSTEM_BUS is set.
 */

#include <fcntl.h>
#include <signal.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "dbus.h"

static const char *arg_mode;
static const char *arg_log;

static int open_bus(sd_bus **ret) {
        return getenv("QUANTD_TEST_SYSTEM_BUS") ? sd_bus_open_system(ret) : sd_bus_open_user(ret);
}

static int do_create(const char *model, const char *path) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        int k;

        if (fd < 0)
                return log_error_errno(errno, "Failed to open %s: %m", path);
        k = open_bus(&bus);
        if (k < 0)
                return log_error_errno(k, "Failed to connect to the bus: %m");
        k = sd_bus_message_new_method_call(bus, &m, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE,
                                           "Create");
        if (k >= 0)
                k = sd_bus_message_append(m, "sha{sv}", model, fd, 0);
        if (k < 0)
                return log_error_errno(k, "Failed to build the call: %m");
        k = sd_bus_call(bus, m, 60 * 1000000ULL, &e, &reply);
        if (k < 0) {
                printf("%s: %s\n", e.name, e.message);
                sd_bus_error_free(&e);
                return k;
        }
        printf("created %s\n", model);
        return 0;
}

static int check_authorization(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *kind, *action, *cancellation, *key, *name = "";
        uint32_t flags;
        int k;

        k = sd_bus_message_enter_container(m, 'r', "sa{sv}");
        if (k >= 0)
                k = sd_bus_message_read(m, "s", &kind);
        if (k >= 0)
                k = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (k >= 0 && (k = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                k = sd_bus_message_read(m, "s", &key);
                if (k >= 0 && streq(key, "name"))
                        k = sd_bus_message_read(m, "v", "s", &name);
                else if (k >= 0)
                        k = sd_bus_message_skip(m, "v");
                if (k >= 0)
                        k = sd_bus_message_exit_container(m);
        }
        if (k >= 0)
                k = sd_bus_message_exit_container(m);
        if (k >= 0)
                k = sd_bus_message_exit_container(m);
        if (k >= 0)
                k = sd_bus_message_read(m, "s", &action);
        if (k >= 0)
                k = sd_bus_message_skip(m, "a{ss}");
        if (k >= 0)
                k = sd_bus_message_read(m, "us", &flags, &cancellation);
        if (k < 0)
                return k;
        if (arg_log) {
                _cleanup_fclose_ FILE *f = fopen(arg_log, "ae");
                if (f)
                        fprintf(f, "%s %u %s %s\n", action, flags, kind, name);
        }
        bool allow = streq(arg_mode, "allow"), challenge = streq(arg_mode, "challenge");
        return sd_bus_reply_method_return(m, "(bba{ss})", allow, challenge, 0);
}

static const sd_bus_vtable authority_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("CheckAuthorization", "(sa{sv})sa{ss}us", "(bba{ss})", check_authorization,
                      SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

static int do_authority(void) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        sd_event *e = NULL;
        sigset_t ss;
        int k;

        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigprocmask(SIG_BLOCK, &ss, NULL);
        k = sd_event_default(&e);
        if (k >= 0)
                k = sd_event_add_signal(e, NULL, SIGTERM, NULL, NULL);
        if (k >= 0)
                k = open_bus(&bus);
        if (k >= 0)
                k = sd_bus_add_object_vtable(bus, NULL, "/org/freedesktop/PolicyKit1/Authority",
                                             "org.freedesktop.PolicyKit1.Authority", authority_vtable, NULL);
        if (k >= 0)
                k = sd_bus_request_name(bus, "org.freedesktop.PolicyKit1", 0);
        if (k >= 0)
                k = sd_bus_attach_event(bus, e, 0);
        if (k < 0) {
                sd_event_unref(e);
                return log_error_errno(k, "Failed to set up the stand-in authority: %m");
        }
        printf("ready\n");
        fflush(stdout);
        k = sd_event_loop(e);
        sd_event_unref(e);
        return k;
}

int main(int argc, char *argv[]) {
        if (argc == 4 && streq(argv[1], "create"))
                return do_create(argv[2], argv[3]) < 0 ? 1 : 0;
        if ((argc == 3 || argc == 4) && streq(argv[1], "authority")) {
                arg_mode = argv[2];
                arg_log = argc == 4 ? argv[3] : NULL;
                return do_authority() < 0 ? 1 : 0;
        }
        fprintf(stderr, "Usage: dbus-test-tool create MODEL FILE | authority allow|deny|challenge [LOG]\n");
        return 2;
}
