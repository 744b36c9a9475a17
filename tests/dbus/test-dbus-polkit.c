/* SPDX-License-Identifier: MIT */
/*
 * dbus/polkit.c against a stand-in authority on the private bus of dbus-run-session: one process, three
 * connections on one event loop. A "service" exports Check(), which asks polkit about its caller through
 * dbus_polkit_check(); a "client" calls it; an "authority" owns org.freedesktop.PolicyKit1 and answers as the
 * test says. Allowed, denied, authentication required, an authority that is not there, one that fails or
 * answers nonsense, the question's contents (subject, action, interactive flag), and a cancelled question.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <systemd/sd-event.h>

#include "dbus.h"

typedef enum AuthorityMode {
        AUTHORITY_ALLOW,
        AUTHORITY_DENY,
        AUTHORITY_CHALLENGE,
        AUTHORITY_FAIL,     /* replies with a D-Bus error */
        AUTHORITY_NONSENSE, /* replies with the wrong signature */
        AUTHORITY_SILENT,   /* never replies */
} AuthorityMode;

typedef struct Fixture {
        sd_event *event;
        sd_bus *service, *client, *authority;
        AuthorityMode mode;
        /* What the authority was asked. */
        unsigned n_questions;
        char subject_kind[64], subject_name[64], action[128];
        uint32_t flags;
        sd_bus_message *silent_question; /* held, unanswered, in AUTHORITY_SILENT */
        /* The service's view. */
        bool cancel; /* drop the question at once instead of waiting */
        unsigned n_answers;
        sd_bus_slot *polkit_slot;
        sd_bus_message *pending; /* the Check call being decided */
        /* The client's view. */
        bool replied;
        int result;
        char message[512];
} Fixture;

static int check_authorization(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Fixture *f = userdata;
        const char *kind, *action, *key, *name, *cancellation;
        int k;

        f->n_questions++;
        assert_true(sd_bus_message_enter_container(m, 'r', "sa{sv}") >= 0);
        assert_true(sd_bus_message_read(m, "s", &kind) > 0);
        snprintf(f->subject_kind, sizeof(f->subject_kind), "%s", kind);
        assert_true(sd_bus_message_enter_container(m, 'a', "{sv}") >= 0);
        while ((k = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                assert_true(sd_bus_message_read(m, "s", &key) > 0);
                assert_string_equal(key, "name");
                assert_true(sd_bus_message_read(m, "v", "s", &name) > 0);
                snprintf(f->subject_name, sizeof(f->subject_name), "%s", name);
                assert_true(sd_bus_message_exit_container(m) >= 0);
        }
        assert_true(sd_bus_message_exit_container(m) >= 0);
        assert_true(sd_bus_message_exit_container(m) >= 0);
        assert_true(sd_bus_message_read(m, "s", &action) > 0);
        snprintf(f->action, sizeof(f->action), "%s", action);
        assert_true(sd_bus_message_skip(m, "a{ss}") >= 0);
        assert_true(sd_bus_message_read(m, "us", &f->flags, &cancellation) > 0);

        switch (f->mode) {
        case AUTHORITY_ALLOW:
                return sd_bus_reply_method_return(m, "(bba{ss})", 1, 0, 0);
        case AUTHORITY_DENY:
                return sd_bus_reply_method_return(m, "(bba{ss})", 0, 0, 0);
        case AUTHORITY_CHALLENGE:
                return sd_bus_reply_method_return(m, "(bba{ss})", 0, 1, 0);
        case AUTHORITY_FAIL:
                return sd_bus_reply_method_errorf(m, "org.freedesktop.PolicyKit1.Error.Failed",
                                                  "The authority is broken.");
        case AUTHORITY_NONSENSE:
                return sd_bus_reply_method_return(m, "s", "yes");
        case AUTHORITY_SILENT:
                f->silent_question = sd_bus_message_ref(m);
                return 1;
        }
        return -EINVAL;
}

/* A plain object callback rather than a vtable, so that the authority can also answer with a wrong signature. */
static int authority_object(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        if (!sd_bus_message_is_method_call(m, "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization"))
                return 0;
        return check_authorization(m, userdata, error);
}

static void on_decision(int result, const char *message, void *userdata) {
        Fixture *f = userdata;

        f->n_answers++;
        f->polkit_slot = sd_bus_slot_unref(f->polkit_slot);
        if (result > 0)
                assert_true(sd_bus_reply_method_return(f->pending, "is", result, "") >= 0);
        else
                assert_true(sd_bus_reply_method_return(f->pending, "is", result, message) >= 0);
        f->pending = sd_bus_message_unref(f->pending);
}

static int service_check(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Fixture *f = userdata;

        assert_int_equal(dbus_polkit_check(f->service, m, QUANTD_POLKIT_ACTION_MANAGE, on_decision, f,
                                           &f->polkit_slot),
                         0);
        if (f->cancel) {
                f->polkit_slot = sd_bus_slot_unref(f->polkit_slot);
                return sd_bus_reply_method_return(m, "is", 0, "cancelled");
        }
        f->pending = sd_bus_message_ref(m);
        return 1;
}

static const sd_bus_vtable service_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Check", "", "is", service_check, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        assert_int_equal(sd_event_new(&f->event), 0);
        assert_int_equal(sd_bus_open_user(&f->service), 0);
        assert_int_equal(sd_bus_open_user(&f->client), 0);
        assert_true(sd_bus_add_object_vtable(f->service, NULL, "/test", "org.quantd.Test", service_vtable, f) >= 0);
        assert_true(sd_bus_request_name(f->service, "org.quantd.Test", 0) >= 0);
        assert_true(sd_bus_attach_event(f->service, f->event, 0) >= 0);
        assert_true(sd_bus_attach_event(f->client, f->event, 0) >= 0);
        *state = f;
        return 0;
}

/* Puts the stand-in authority on the bus. */
static void authority_start(Fixture *f, AuthorityMode mode) {
        f->mode = mode;
        assert_int_equal(sd_bus_open_user(&f->authority), 0);
        assert_true(sd_bus_add_object(f->authority, NULL, "/org/freedesktop/PolicyKit1/Authority", authority_object,
                                      f) >= 0);
        assert_true(sd_bus_request_name(f->authority, "org.freedesktop.PolicyKit1", 0) >= 0);
        assert_true(sd_bus_attach_event(f->authority, f->event, 0) >= 0);
}

static int teardown(void **state) {
        Fixture *f = *state;

        sd_bus_slot_unref(f->polkit_slot);
        sd_bus_message_unref(f->pending);
        sd_bus_message_unref(f->silent_question);
        sd_bus_flush_close_unref(f->client);
        sd_bus_flush_close_unref(f->service);
        sd_bus_flush_close_unref(f->authority);
        sd_event_unref(f->event);
        free(f);
        return 0;
}

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Fixture *f = userdata;
        const char *message;

        assert_null(sd_bus_message_get_error(m));
        assert_true(sd_bus_message_read(m, "is", &f->result, &message) > 0);
        snprintf(f->message, sizeof(f->message), "%s", message);
        f->replied = true;
        return 0;
}

/* The client calls Check (allowing interactive authorization or not) and waits for the answer. */
static void ask(Fixture *f, bool interactive) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        uint64_t deadline = now_ns() + 30ULL * 1000000000ULL;

        assert_int_equal(sd_bus_message_new_method_call(f->client, &m, "org.quantd.Test", "/test", "org.quantd.Test",
                                                        "Check"),
                         0);
        assert_int_equal(sd_bus_message_set_allow_interactive_authorization(m, interactive), 0);
        assert_true(sd_bus_call_async(f->client, &slot, m, on_reply, f, 0) >= 0);
        while (!f->replied) {
                assert_true(now_ns() < deadline);
                assert_true(sd_event_run(f->event, 100000) >= 0);
        }
}

static void expect_question(Fixture *f, uint32_t flags) {
        const char *client_name;

        assert_int_equal(f->n_questions, 1);
        assert_string_equal(f->subject_kind, "system-bus-name");
        assert_int_equal(sd_bus_get_unique_name(f->client, &client_name), 0);
        assert_string_equal(f->subject_name, client_name);
        assert_string_equal(f->action, "org.quantd.Quantd1.manage");
        assert_int_equal(f->flags, flags);
}

static void test_allowed(void **state) {
        Fixture *f = *state;

        authority_start(f, AUTHORITY_ALLOW);
        ask(f, false);
        assert_int_equal(f->result, 1);
        assert_int_equal(f->n_answers, 1);
        expect_question(f, 0);
}

static void test_allowed_interactive(void **state) {
        Fixture *f = *state;

        authority_start(f, AUTHORITY_ALLOW);
        ask(f, true);
        assert_int_equal(f->result, 1);
        /* The caller allowed interaction, so polkit may ask for a password (AllowUserInteraction = 1). */
        expect_question(f, 1);
}

static void test_denied(void **state) {
        Fixture *f = *state;

        authority_start(f, AUTHORITY_DENY);
        ask(f, true);
        assert_int_equal(f->result, -EPERM);
        assert_string_equal(f->message, "Not authorized: polkit denies 'org.quantd.Quantd1.manage' to this caller.");
        expect_question(f, 1);
}

static void test_challenge(void **state) {
        Fixture *f = *state;

        authority_start(f, AUTHORITY_CHALLENGE);
        ask(f, false);
        assert_int_equal(f->result, -EPERM);
        assert_non_null(strstr(f->message, "without authentication: allow interactive authorization"));
}

static void test_unavailable(void **state) {
        Fixture *f = *state;

        /* Nobody owns org.freedesktop.PolicyKit1 on this bus: denied, saying so. */
        ask(f, true);
        assert_int_equal(f->result, -EACCES);
        assert_non_null(strstr(f->message, "Authorization could not be checked, so the request is denied: polkit "
                                           "(org.freedesktop.PolicyKit1) did not answer ("));
        assert_non_null(strstr(f->message, "). Is polkitd installed and running?"));
        assert_int_equal(f->n_questions, 0);
}

static void test_authority_fails(void **state) {
        Fixture *f = *state;

        authority_start(f, AUTHORITY_FAIL);
        ask(f, false);
        assert_int_equal(f->result, -EACCES);
        assert_non_null(strstr(f->message, "did not answer (The authority is broken.). Is polkitd installed"));
}

static void test_authority_nonsense(void **state) {
        Fixture *f = *state;

        authority_start(f, AUTHORITY_NONSENSE);
        ask(f, false);
        assert_int_equal(f->result, -EACCES);
        assert_non_null(strstr(f->message, "polkit's answer could not be read"));
}

static void test_cancelled(void **state) {
        Fixture *f = *state;

        /* The question is dropped before the authority answers: the handler is never called. */
        f->cancel = true;
        authority_start(f, AUTHORITY_SILENT);
        ask(f, false);
        assert_string_equal(f->message, "cancelled");
        uint64_t deadline = now_ns() + 5ULL * 1000000000ULL;
        while (f->n_questions == 0) {
                assert_true(now_ns() < deadline);
                assert_true(sd_event_run(f->event, 100000) >= 0);
        }
        assert_true(sd_bus_reply_method_return(f->silent_question, "(bba{ss})", 1, 0, 0) >= 0);
        for (int i = 0; i < 20; i++)
                assert_true(sd_event_run(f->event, 10000) >= 0);
        assert_int_equal(f->n_answers, 0);
}

static void test_no_sender(void **state) {
        Fixture *f = *state;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_slot *slot = NULL;

        /* A message that never crossed a bus has no sender for polkit to check. */
        assert_int_equal(sd_bus_message_new_method_call(f->service, &m, "org.quantd.Test", "/test", "org.quantd.Test",
                                                        "Check"),
                         0);
        assert_int_equal(dbus_polkit_check(f->service, m, QUANTD_POLKIT_ACTION_MANAGE, on_decision, f, &slot),
                         -EINVAL);
        assert_null(slot);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_allowed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_allowed_interactive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_denied, setup, teardown),
                cmocka_unit_test_setup_teardown(test_challenge, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unavailable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_authority_fails, setup, teardown),
                cmocka_unit_test_setup_teardown(test_authority_nonsense, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancelled, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_sender, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
