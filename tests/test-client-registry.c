/* SPDX-License-Identifier: MIT */
/*
 * qctl against a real quantd (engine backend) and a real registry (Debian's docker-registry on loopback): a
 * model created from stories260K.gguf is pushed, removed, pulled back and run; qctl ps shows it loaded (name,
 * size, processor, until) and qctl stop unloads it. The errors a user meets there (stop of a model not
 * loaded, pull of a name the registry lacks, push of a model not stored) are one sentence with the exit
 * status qctl(1) documents.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "qctl-harness.h"
#include "registry-world.h"

static int setup(void **state) {
        World *w = world_new();

        world_start_daemon(w, "Retries=0\n[Scheduler]\nThreads=1\nContextLength=256\n");
        *state = w;
        return 0;
}

static int teardown(void **state) {
        world_free(*state);
        return 0;
}

/* A failed transfer prints its progress lines first; the error is the one last line. */
static void check_last_error(Result *r, int status, const char *message) {
        if (r->status != status)
                fail_msg("expected exit %d, got %d: %s", status, r->status, r->err);
        const char *e = strstr(r->err, "Error: ");
        assert_non_null(e);
        print_message("# %s", e);
        assert_null(strstr(e + 1, "Error: "));
        if (!strstr(e, message))
                fail_msg("expected '%s' in: %s", message, e);
        assert_ptr_equal(strchr(e, '\n'), r->err + strlen(r->err) - 1);
        result_done(r);
}

static void test_push_pull_run_ps_stop(void **state) {
        World *w = *state;
        Harness *h = &w->daemon;
        Result r;

        _cleanup_free_ char *mf_text = strdup_printf("FROM %s/stories260K.gguf\nPARAMETER temperature 0\n",
                                                     getenv("QUANTD_TEST_MODELS"));
        _cleanup_free_ char *mf = write_file(h, "Modelfile", mf_text);
        r = run_qctl(h, "create", w->name, "-f", mf);
        check_ok(&r, "create");
        result_done(&r);

        /* push, rm, pull: the model comes back from the registry. */
        r = run_qctl(h, "push", w->name);
        check_ok(&r, "push");
        assert_non_null(endswith(r.err, "success\n"));
        result_done(&r);
        r = run_qctl(h, "rm", w->name);
        assert_int_equal(r.status, 0);
        result_done(&r);
        r = run_qctl(h, "list");
        assert_null(strstr(r.out, "stories"));
        result_done(&r);
        /* FROM a model that is not stored pulls it first. */
        _cleanup_free_ char *derived_text = strdup_printf("FROM %s\nSYSTEM \"Be brief.\"\n", w->name);
        _cleanup_free_ char *derived = write_file(h, "Modelfile.derived", derived_text);
        r = run_qctl(h, "create", "derived", "-f", derived);
        check_ok(&r, "create FROM a model to pull");
        assert_non_null(strstr(r.err, "not found; 'qctl list' shows the local models. Pulling it.\n"));
        assert_non_null(endswith(r.err, "success\n"));
        result_done(&r);
        r = run_qctl(h, "rm", w->name);
        assert_int_equal(r.status, 0);
        result_done(&r);

        r = run_qctl(h, "pull", w->name);
        check_ok(&r, "pull");
        /* Plain lines (stderr is no terminal): the blob's line when it starts and when it is done. */
        assert_non_null(strstr(r.err, ": done\n"));
        assert_non_null(endswith(r.err, "success\n"));
        result_done(&r);
        r = run_qctl(h, "list");
        _cleanup_free_ char *listed = strdup_printf("\n%s ", w->name);
        assert_non_null(strstr(r.out, listed));
        result_done(&r);

        /* run loads it; ps shows it with its size, processor and when it unloads. */
        r = run_qctl(h, "run", w->name, "Once upon a time", "-o", "num_predict=8", "--keepalive", "10m");
        check_ok(&r, "run");
        assert_true(strlen(r.out) > 1);
        result_done(&r);
        r = run_qctl(h, "ps");
        assert_int_equal(r.status, 0);
        assert_non_null(startswith(r.out, "NAME "));
        assert_non_null(strstr(r.out, " SIZE "));
        assert_non_null(strstr(r.out, " PROCESSOR "));
        assert_non_null(strstr(r.out, " UNTIL"));
        const char *row = strstr(r.out, listed);
        assert_non_null(row);
        assert_non_null(strstr(row, " KB ") ?: strstr(row, " MB "));
        assert_non_null(strstr(row, "100% CPU"));
        assert_non_null(strstr(row, "minutes from now\n"));
        result_done(&r);
        r = run_qctl(h, "ps", "--json");
        assert_int_equal(r.status, 0);
        _cleanup_free_ char *json_name = strdup_printf("\"name\": \"%s\"", w->name);
        assert_non_null(strstr(r.out, json_name));
        assert_non_null(strstr(r.out, "\"size\": "));
        result_done(&r);

        /* stop unloads it at once. */
        r = run_qctl(h, "stop", w->name);
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "");
        assert_string_equal(r.err, "");
        result_done(&r);
        r = run_qctl(h, "ps");
        assert_int_equal(r.status, 0);
        assert_null(strstr(r.out, "stories"));
        assert_null(strchr(r.out, '\n') + 1 < r.out + strlen(r.out) ? r.out : NULL);
        result_done(&r);

        /* Errors. */
        r = run_qctl(h, "stop", w->name);
        _cleanup_free_ char *not_loaded =
                strdup_printf("Model '%s' is not loaded; 'qctl ps' lists the loaded models.", w->name);
        check_error(&r, 4, not_loaded);
        _cleanup_free_ char *missing = strdup_printf("%s/library/missing:v1", w->registry.host);
        r = run_qctl(h, "pull", missing);
        check_last_error(&r, 4, "missing");
        r = run_qctl(h, "push", missing);
        check_last_error(&r, 4, "missing");
        r = run_qctl(h, "list");
        assert_null(strstr(r.out, "missing"));
        result_done(&r);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_push_pull_run_ps_stop, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
