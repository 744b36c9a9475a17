/* SPDX-License-Identifier: MIT */
/*
 * The scheduler's GPU placement with the real engine on a real device (suite gpu): a real quantd
 * (--backend=engine) runs stories260K with all its layers on the GPU by default, with num_gpu 2 partly
 * (reloaded for the new setting) and with num_gpu 0 on the CPU, and Ps says so (num_gpu, size_vram,
 * processor, digest); SmolLM2-135M ($QUANTD_TEST_SMOLLM) under a GpuMemoryBudget= that holds only some of
 * its layers is offloaded partly and still generates.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <unistd.h>

#include "daemon-harness.h"

static int start(void **state, const char *config) {
        static const char *const args[] = {"--backend=engine", NULL};
        Harness *h = calloc(1, sizeof(Harness));
        assert_non_null(h);
        assert_int_equal(dh_start(h, config, args), 0);
        *state = h;
        return 0;
}

static int setup(void **state) {
        return start(state, "[Scheduler]\nNumParallel=2\nContextLength=256\n");
}

static int setup_budget(void **state) {
        /* Measured on an H200 (test-cuda-placement): 2 of 30 layers hold 116 MiB (scratch, cuBLAS, embedding
         * and head, and about 3.4 MiB a layer), all 30 hold 211 MiB; 150 MiB holds some layers, not all. */
        return start(state, "[Scheduler]\nNumParallel=1\nContextLength=256\nGpuMemoryBudget=150M\n");
}

static int teardown(void **state) {
        Harness *h = *state;
        assert_int_equal(dh_stop(h), 0);
        free(h);
        return 0;
}

typedef struct PsEntry {
        uint64_t size, size_vram, num_gpu;
        char processor[48];
        char digest[80];
} PsEntry;

static PsEntry ps(ProtoClient *c, const char *name) {
        PsEntry p = {};
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(proto_client_call(c, "Ps", NULL, 0, NULL, 0, NULL, NULL, &m, &e), 0);
        const msgpack_object *models = proto_map_get(m.result, "models");
        assert_int_equal(models->via.array.size, 1);
        const msgpack_object *x = &models->via.array.ptr[0];
        assert_true(proto_str_eq(proto_map_get(x, "name"), name));
        p.size = proto_map_get(x, "size")->via.u64;
        p.size_vram = proto_map_get(x, "size_vram")->via.u64;
        p.num_gpu = proto_map_get(x, "num_gpu")->via.u64;
        const msgpack_object *s = proto_map_get(x, "processor"), *d = proto_map_get(x, "digest");
        snprintf(p.processor, sizeof(p.processor), "%.*s", (int)s->via.str.size, s->via.str.ptr);
        snprintf(p.digest, sizeof(p.digest), "%.*s", (int)d->via.str.size, d->via.str.ptr);
        printf("# %s: %" PRIu64 "/%" PRIu64 " bytes on the GPU, %" PRIu64 " layers, %s\n", name, p.size_vram,
               p.size, p.num_gpu, p.processor);
        return p;
}

/* Generates 8 tokens with num_gpu (INT64_MIN: not given); fails the test on an error. */
static void gen(ProtoClient *c, const char *model, int64_t num_gpu) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        QdError e = {};

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 4);
        proto_pack_kv_str(&pk, "model", model);
        proto_pack_kv_str(&pk, "prompt", "Once upon a time");
        proto_pack_kv_bool(&pk, "stream", false);
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, num_gpu == INT64_MIN ? 2 : 3);
        proto_pack_kv_i64(&pk, "num_predict", 8);
        proto_pack_kv_double(&pk, "temperature", 0);
        if (num_gpu != INT64_MIN)
                proto_pack_kv_i64(&pk, "num_gpu", num_gpu);
        int k = proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e);
        msgpack_sbuffer_destroy(&sb);
        if (k < 0)
                fail_msg("Generate %s failed: %s", model, e.msg);
        assert_true(proto_map_get(m.result, "eval_count")->via.u64 > 0);
}

static void create(Harness *h, ProtoClient *c, const char *name, const char *path) {
        if (!path || access(path, R_OK) < 0)
                fail_msg("The model file %s is missing.", strna(path));
        assert_int_equal(dh_create_from_file(h, c, name, path), 0);
}

static void test_stories(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", getenv("QUANTD_TEST_MODELS"));

        create(h, c, "stories", path);
        gen(c, "stories", INT64_MIN);
        PsEntry all = ps(c, "stories:latest");
        assert_int_equal(all.num_gpu, 5);
        assert_string_equal(all.processor, "100% GPU");
        assert_true(all.size_vram > 0 && all.size_vram <= all.size);
        assert_int_equal(strlen(all.digest), 7 + 64);

        gen(c, "stories", 2);
        assert_true(dh_log_contains(h, "Reloading model 'stories:latest' with other settings."));
        PsEntry two = ps(c, "stories:latest");
        assert_int_equal(two.num_gpu, 2);
        assert_true(two.size_vram > 0 && two.size_vram < all.size_vram);
        assert_non_null(strstr(two.processor, "% CPU/GPU"));

        gen(c, "stories", 0);
        PsEntry none = ps(c, "stories:latest");
        assert_int_equal(none.num_gpu, 0);
        assert_int_equal(none.size_vram, 0);
        assert_string_equal(none.processor, "100% CPU");
}

static void test_smollm_budget(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);

        create(h, c, "smollm", getenv("QUANTD_TEST_SMOLLM"));
        gen(c, "smollm", INT64_MIN);
        PsEntry p = ps(c, "smollm:latest");
        assert_true(p.num_gpu > 0 && p.num_gpu < 30);
        assert_true(p.size_vram <= 150ull << 20);
        assert_non_null(strstr(p.processor, "% CPU/GPU"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_stories, setup, teardown),
                cmocka_unit_test_setup_teardown(test_smollm_budget, setup_budget, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
