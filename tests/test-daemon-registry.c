/* SPDX-License-Identifier: MIT */
/*
 * A real quantd and a real registry (Debian's docker-registry on loopback): a model created from
 * stories260K.gguf is pushed as a job with progress events, deleted, pulled back as a job, and the pulled
 * model generates the golden greedy ids. Pull and Push errors come back as job errors.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <msgpack.h>
#include <signal.h>

#include "daemon-harness.h"
#include "registry-harness.h"

typedef struct World {
        char dir[64];
        RegistryServer registry;
        Harness daemon;
        char *name; /* host/library/stories:v1 */
} World;

static int setup(void **state) {
        static const char *const args[] = {"--backend=engine", NULL};
        World *w = calloc(1, sizeof(World));
        assert_non_null(w);
        snprintf(w->dir, sizeof(w->dir), "/tmp/quantd-dreg-XXXXXX");
        assert_non_null(mkdtemp(w->dir));
        harness_start_registry(&w->registry, w->dir, "registry", NULL);
        _cleanup_free_ char *config =
                strdup_printf("[Registry]\nInsecure=%s\n[Scheduler]\nThreads=1\n", w->registry.host);
        assert_int_equal(dh_start(&w->daemon, config, args), 0);
        w->name = strdup_printf("%s/library/stories:v1", w->registry.host);
        *state = w;
        return 0;
}

static int teardown(void **state) {
        World *w = *state;
        assert_int_equal(dh_stop(&w->daemon), 0);
        harness_stop(&w->registry);
        harness_rm_rf(w->dir);
        free(w->name);
        free(w);
        return 0;
}

static int count_progress(const ProtoMessage *ev, void *userdata) {
        assert_string_equal(ev->name, "progress");
        assert_non_null(proto_map_get(ev->params, "status"));
        (*(unsigned *)userdata)++;
        return 0;
}

typedef struct Tokens {
        int32_t ids[64];
        size_t n;
} Tokens;

static int collect_tokens(const ProtoMessage *ev, void *userdata) {
        Tokens *t = userdata;
        const msgpack_object *tok = proto_map_get(ev->params, "token");
        if (tok && t->n < ELEMENTSOF(t->ids))
                t->ids[t->n++] = (int32_t)tok->via.i64;
        return 0;
}

static int call_model(ProtoClient *c, const char *method, const char *model, unsigned *events, QdError *e) {
        msgpack_sbuffer sb;
        ProtoMessage m;
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", model, NULL);
        qd_error_clear(e);
        int k = proto_client_call(c, method, sb.data, sb.size, NULL, 0, events ? count_progress : NULL,
                                  events, &m, e);
        msgpack_sbuffer_destroy(&sb);
        return k;
}

static void test_push_pull_generate(void **state) {
        World *w = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(&w->daemon);
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", getenv("QUANTD_TEST_MODELS"));
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        QdError e = {};
        unsigned events = 0;

        assert_int_equal(dh_create_from_file(&w->daemon, c, w->name, path), 0);
        if (call_model(c, "Push", w->name, &events, &e) < 0)
                fail_msg("Push failed: %s", e.msg);
        assert_true(events > 0);
        assert_int_equal(call_model(c, "Delete", w->name, NULL, &e), 0);
        assert_int_equal(call_model(c, "Show", w->name, NULL, &e), -ENOENT);

        events = 0;
        if (call_model(c, "Pull", w->name, &events, &e) < 0)
                fail_msg("Pull failed: %s", e.msg);
        assert_true(events > 0);

        /* The pulled model generates the reference's greedy tokens. */
        static const int32_t golden[] = {403, 407, 261, 378, 432, 383, 286,
                                         261, 376, 298, 315, 421, 395, 317};
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 5);
        proto_pack_kv_str(&pk, "model", w->name);
        proto_pack_kv_str(&pk, "prompt", "");
        proto_pack_kv_bool(&pk, "stream", true);
        proto_pack_kv_bool(&pk, "return_tokens", true);
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_i64(&pk, "num_predict", (int64_t)ELEMENTSOF(golden));
        proto_pack_kv_double(&pk, "temperature", 0);
        proto_pack_kv_double(&pk, "repeat_penalty", 1.0);
        Tokens t = {};
        assert_int_equal(
                proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, collect_tokens, &t, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        assert_int_equal(t.n, ELEMENTSOF(golden));
        assert_memory_equal(t.ids, golden, sizeof(golden));
}

static void test_errors(void **state) {
        World *w = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(&w->daemon);
        QdError e = {};

        /* Nothing of that name in the registry. */
        _cleanup_free_ char *missing = strdup_printf("%s/library/nothing:here", w->registry.host);
        int k = call_model(c, "Pull", missing, NULL, &e);
        assert_true(k < 0);
        assert_true(strlen(e.msg) > 10);
        /* Nothing of that name here. */
        assert_int_equal(call_model(c, "Push", missing, NULL, &e), -ENOENT);
        assert_int_equal(call_model(c, "Pull", "../../etc", NULL, &e), -EINVAL);
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_push_pull_generate, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
