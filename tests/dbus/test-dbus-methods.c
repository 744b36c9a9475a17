/* SPDX-License-Identifier: MIT */
/*
 * The D-Bus vtable against the daemon's method table: every socket method is on D-Bus under the same name and
 * every D-Bus method is a socket method; each takes named typed arguments, then "parameters" a{sv}, and returns
 * "result" a{sv}.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include "daemon.h"
#include "dbus.h"

/* The length of the complete type at the start of sig (0 when there is none or it is malformed). */
static size_t complete_type(const char *sig) {
        size_t n;

        switch (*sig) {
        case 'a':
                n = complete_type(sig + 1);
                return n ? n + 1 : 0;
        case '(':
        case '{': {
                char close = *sig == '(' ? ')' : '}';
                size_t i = 1;
                while (sig[i] && sig[i] != close) {
                        n = complete_type(sig + i);
                        if (!n)
                                return 0;
                        i += n;
                }
                return sig[i] == close ? i + 1 : 0;
        }
        case '\0':
        case ')':
        case '}':
                return 0;
        default:
                return strchr("ybnqiuxtdsoghv", *sig) ? 1 : 0;
        }
}

static size_t count_types(const char *sig) {
        size_t n = 0;
        for (size_t k; *sig; sig += k, n++) {
                k = complete_type(sig);
                assert_true(k > 0);
        }
        return n;
}

static const sd_bus_vtable *find(const char *member, int type) {
        for (const sd_bus_vtable *v = dbus_manager_vtable; v->type != _SD_BUS_VTABLE_END; v++)
                if (v->type == type && streq(type == _SD_BUS_VTABLE_METHOD ? v->x.method.member : v->x.property.member,
                                             member))
                        return v;
        return NULL;
}

static void test_every_socket_method_on_dbus(void **state) {
        size_t n = 0;

        for (const Method *m = daemon_methods; m->name; m++, n++) {
                const sd_bus_vtable *v = find(m->name, _SD_BUS_VTABLE_METHOD);
                if (!v)
                        fail_msg("socket method %s has no D-Bus method", m->name);
                const char *sig = v->x.method.signature, *names = v->x.method.names;
                size_t n_names = 0, n_types = count_types(sig);
                const char *last = NULL;
                for (const char *p = names; *p; p += strlen(p) + 1) {
                        n_names++;
                        if (n_names == n_types)
                                last = p;
                }
                assert_int_equal(n_names, n_types + 1); /* the in-arguments and "result" */
                assert_non_null(endswith(sig, "a{sv}"));
                assert_string_equal(last, "parameters");
                assert_string_equal(v->x.method.result, "a{sv}");
                assert_true(v->flags & SD_BUS_VTABLE_UNPRIVILEGED);
        }
        assert_true(n >= 19);
}

static void test_every_dbus_method_on_socket(void **state) {
        for (const sd_bus_vtable *v = dbus_manager_vtable; v->type != _SD_BUS_VTABLE_END; v++)
                if (v->type == _SD_BUS_VTABLE_METHOD && !method_find(v->x.method.member))
                        fail_msg("D-Bus method %s is no socket method", v->x.method.member);
}

static void test_properties(void **state) {
        static const char *const props[][2] = { { "Version", "s" }, { "Backends", "as" },
                                                { "LoadedModels", "aa{sv}" } };
        for (size_t i = 0; i < ELEMENTSOF(props); i++) {
                const sd_bus_vtable *v = find(props[i][0], _SD_BUS_VTABLE_PROPERTY);
                assert_non_null(v);
                assert_string_equal(v->x.property.signature, props[i][1]);
        }
        assert_true(find("LoadedModels", _SD_BUS_VTABLE_PROPERTY)->flags & SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_every_socket_method_on_dbus),
                cmocka_unit_test(test_every_dbus_method_on_socket),
                cmocka_unit_test(test_properties),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
