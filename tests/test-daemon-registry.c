/* SPDX-License-Identifier: MIT */
/*
 * A real quantd and a real registry (Debian's docker-registry on loopback): a model created from
 * stories260K.gguf is pushed as a job with progress events, deleted, pulled back as a job, and the pulled
 * model generates the golden greedy ids. Pull and Push errors come back as job errors. A quantd killed with
 * SIGKILL in the middle of a large pull resumes it after a restart: the fault proxy in front of the registry
 * counts fewer blob bytes than the blob holds, and the store verifies.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <msgpack.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "registry-world.h"
#include "registry.h"

static int setup(void **state) {
        World *w = world_new();

        world_start_daemon(w, "[Scheduler]\nThreads=1\n");
        *state = w;
        return 0;
}

static int teardown(void **state) {
        world_free(*state);
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

/* The big model's size: QUANTD_TEST_BIG_MB megabytes, 300 unless set (the figure). */
static uint64_t big_size(void) {
        const char *big = getenv("QUANTD_TEST_BIG_MB");
        uint64_t mb = 300;

        if (big && safe_atou64(big, &mb) < 0)
                mb = 300;
        return mb << 20;
}

/* Stores a model of size pseudo-random bytes in a store under w->dir and pushes it straight to the registry.
 */
static void push_big(World *w, const char *repository, uint64_t size) {
        _cleanup_free_ char *root = strdup_printf("%s/source", w->dir);
        _cleanup_free_ char *name = strdup_printf("%s/%s", w->registry.host, repository);
        RegistryConfig config;
        RegistryStore *store = NULL;
        RegistryName n;
        QdError e = {};

        registry_config_init(&config);
        config.insecure_hosts = calloc(2, sizeof(char *));
        config.insecure_hosts[0] = strdup(w->registry.host);
        assert_int_equal(registry_store_open(&store, root, &config, &e), 0);
        assert_int_equal(registry_name_parse(name, &config, &n, &e), 0);
        int fd = harness_random_fd(size, 0x9E3779B97F4A7C15ULL);
        RegistryCreateLayer layer = {.media_type = REGISTRY_MEDIA_MODEL, .fd = fd};
        if (registry_store_create(store, &n, &layer, 1, NULL, NULL, NULL, NULL, &e) < 0)
                fail_msg("create: %s", e.msg);
        close(fd);
        if (registry_push(store, &n, NULL, NULL, NULL, NULL, &e) < 0)
                fail_msg("push: %s", e.msg);
        registry_store_free(store);
        registry_config_done(&config);
        harness_rm_rf(root);
}

/* Whether the store at root holds the model; when it does, it must verify against its digests. */
static bool store_holds(World *w, const char *root, const char *name) {
        RegistryConfig config;
        RegistryStore *store = NULL;
        RegistryName n;
        QdError e = {};

        registry_config_init(&config);
        config.insecure_hosts = calloc(2, sizeof(char *));
        config.insecure_hosts[0] = strdup(w->proxy.host);
        assert_int_equal(registry_store_open(&store, root, &config, &e), 0);
        assert_int_equal(registry_name_parse(name, &config, &n, &e), 0);
        bool has = registry_store_has_model(store, &n);
        if (has && registry_store_verify(store, &n, &e) < 0)
                fail_msg("verify: %s", e.msg);
        registry_store_free(store);
        registry_config_done(&config);
        return has;
}

/* No daemon of the world's: the test starts its own, twice, behind the proxy. */
static int setup_kill(void **state) {
        World *w = world_new();

        harness_start_proxy(&w->proxy, w->registry.port);
        free(w->name);
        w->name = strdup_printf("%s/library/big:v1", w->proxy.host);
        *state = w;
        return 0;
}

static void test_resume_after_kill(void **state) {
        static const char *const args[] = {"--backend=engine", NULL};
        World *w = *state;
        uint64_t size = big_size();
        QdError e = {};

        push_big(w, "library/big:v1", size);

        /* Capped, so that the kill lands in the middle of the blob; 8 MiB parts keep their state on disk. */
        _cleanup_free_ char *slow = strdup_printf(
                "[Registry]\nInsecure=%s\nPartSize=8M\nMaxBandwidth=%juM\n[Scheduler]\nThreads=1\n",
                w->proxy.host, (uintmax_t)MAX(size >> 23, 8));
        Harness first;
        assert_int_equal(dh_start(&first, slow, args), 0);
        _cleanup_free_ char *reset = strdup_printf("http://%s/__reset", w->proxy.host);
        assert_int_equal(harness_http("POST", reset, NULL), 200);
        pid_t puller = fork();
        assert_true(puller >= 0);
        if (puller == 0) {
                ProtoClient *c = dh_connect(&first);
                (void)call_model(c, "Pull", w->name, NULL, &e);
                _exit(0);
        }
        uint64_t sent = 0;
        for (int i = 0; i < 6000 && sent < size / 4 * 3; i++) {
                nanosleep(&(struct timespec){0, 10 * 1000000L}, NULL);
                sent = harness_proxy_stat(&w->proxy, "blob_bytes");
        }
        kill(first.pid, SIGKILL);
        assert_int_equal(waitpid(first.pid, NULL, 0), first.pid);
        first.pid = 0;
        assert_int_equal(waitpid(puller, NULL, 0), puller);
        assert_true(sent >= size / 4 * 3 && sent < size);
        assert_false(store_holds(w, first.models, w->name));

        /* A new quantd on the same models directory, without the cap. */
        _cleanup_free_ char *fast = strdup_printf(
                "[Registry]\nInsecure=%s\nPartSize=8M\n[Scheduler]\nThreads=1\n", w->proxy.host);
        _cleanup_free_ char *same_models = strdup_printf("--models=%s", first.models);
        const char *const args2[] = {"--backend=engine", same_models, NULL};
        Harness second;
        assert_int_equal(dh_start(&second, fast, args2), 0);
        assert_int_equal(harness_http("POST", reset, NULL), 200);
        ProtoClient *c = dh_connect(&second);
        unsigned events = 0;
        if (call_model(c, "Pull", w->name, &events, &e) < 0)
                fail_msg("Pull after the restart failed: %s", e.msg);
        assert_true(events > 0);
        uint64_t again = harness_proxy_stat(&w->proxy, "blob_bytes");
        print_message("# quantd killed after %ju of %ju blob bytes; the restarted pull fetched %ju\n",
                      (uintmax_t)sent, (uintmax_t)size, (uintmax_t)again);
        assert_true(again > 0);
        assert_true(again < size - size / 8);
        proto_client_free(c);
        assert_int_equal(dh_stop(&second), 0);

        assert_true(store_holds(w, first.models, w->name));
        assert_int_equal(dh_stop(&first), 0);
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_push_pull_generate, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_resume_after_kill, setup_kill, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
