/* SPDX-License-Identifier: MIT */
/* The registry tests' world: a registry and a quantd that trusts it, in one temporary folder. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "registry-world.h"

World *world_new(void) {
        World *w = calloc(1, sizeof(World));

        assert_non_null(w);
        snprintf(w->dir, sizeof(w->dir), "/tmp/quantd-reg-XXXXXX");
        assert_non_null(mkdtemp(w->dir));
        harness_start_registry(&w->registry, w->dir, "registry", NULL);
        w->name = strdup_printf("%s/library/stories:v1", w->registry.host);
        return w;
}

void world_start_daemon(World *w, const char *config) {
        static const char *const args[] = {"--backend=engine", NULL};
        _cleanup_free_ char *ini = strdup_printf("[Registry]\nInsecure=%s\n%s", w->registry.host, config);

        assert_int_equal(dh_start(&w->daemon, ini, args), 0);
}

void world_free(World *w) {
        assert_int_equal(dh_stop(&w->daemon), 0);
        harness_stop(&w->proxy);
        harness_stop(&w->registry);
        harness_rm_rf(w->dir);
        free(w->name);
        free(w);
}
