/* SPDX-License-Identifier: MIT */
/*
 * What the scheduler asks the engine before and after loading, on any machine (suite unit): the GPU query
 * (-ENODEV without a device), the placement table of engine_model_estimate_splits() on stories260K (one
 * CPU-only row without a GPU backend; with one, a row per layer count, GPU bytes growing and RAM shrinking),
 * its KV arithmetic against the model's shape, its errors, and a CPU load's n_gpu_layers and vram_bytes.
 * The device side (vram_bytes against cudaMemGetInfo()) is test-cuda-placement, suite gpu.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <unistd.h>

#include "engine.h"

static char *stories_path(void) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        return strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
}

static Gguf *open_stories(void) {
        _cleanup_free_ char *path = stories_path();
        Gguf *g = NULL;
        QdError e = {};

        if (gguf_open(path, &g, &e) < 0)
                fail_msg("Failed to open %s: %s", path, e.msg);
        return g;
}

static void test_gpu_info(void **state) {
        EngineGpuInfo g;

        assert_int_equal(engine_gpu_info(0, NULL), -EINVAL);
        assert_int_equal(engine_gpu_info(100000, &g), -ENODEV);
        if (engine_cuda_devices() == 0)
                assert_int_equal(engine_gpu_info(0, &g), -ENODEV);
        else {
                assert_int_equal(engine_gpu_info(0, &g), 0);
                assert_true(g.total_bytes > 0 && g.free_bytes <= g.total_bytes);
                assert_true(g.name[0] != 0);
        }
}

static void test_cpu_splits(void **state) {
        _cleanup_(gguf_freep) Gguf *g = open_stories();
        _cleanup_free_ EngineEstimate *a = NULL, *b = NULL;
        EngineModelParams p = engine_model_params_default();
        uint32_t n_embd, n_head, n_head_kv, n_layer;
        size_t na = 0, nb = 0;

        p.backend = "cpu";
        assert_int_equal(engine_model_estimate_splits(g, &p, 128, 2, &a, &na, NULL), 0);
        assert_int_equal(na, 1);
        assert_int_equal(a[0].n_gpu_layers, 0);
        assert_true(a[0].vram_bytes == 0 && a[0].vram_kv_bytes == 0);
        /* At least the weights, which the CPU reads from the mapped file. */
        uint64_t weights = 0;
        for (uint64_t i = 0; i < g->n_tensors; i++)
                weights += g->tensors[i].size;
        assert_true(a[0].ram_bytes > weights);

        /* Twice the context: two sequences' KV caches (K and V, f16) of 128 more positions per layer. */
        assert_int_equal(engine_model_estimate_splits(g, &p, 256, 2, &b, &nb, NULL), 0);
        assert_int_equal(gguf_get_u32(g, "llama.embedding_length", &n_embd), 0);
        assert_int_equal(gguf_get_u32(g, "llama.attention.head_count", &n_head), 0);
        assert_int_equal(gguf_get_u32(g, "llama.attention.head_count_kv", &n_head_kv), 0);
        assert_int_equal(gguf_get_u32(g, "llama.block_count", &n_layer), 0);
        uint64_t kv = 2ull * 2 * n_layer * 128 * n_head_kv * (n_embd / n_head) * 2;
        assert_true(b[0].ram_bytes - a[0].ram_bytes == kv);
}

static void test_default_splits(void **state) {
        _cleanup_(gguf_freep) Gguf *g = open_stories();
        _cleanup_free_ EngineEstimate *e = NULL;
        uint32_t n_layer;
        size_t n = 0;

        assert_int_equal(gguf_get_u32(g, "llama.block_count", &n_layer), 0);
        assert_int_equal(engine_model_estimate_splits(g, NULL, 64, 1, &e, &n, NULL), 0);
        if (engine_cuda_devices() == 0) {
                assert_int_equal(n, 1);
                return;
        }
        assert_int_equal(n, n_layer + 1);
        assert_true(e[0].vram_bytes == 0);
        for (size_t i = 1; i < n; i++) {
                assert_int_equal(e[i].n_gpu_layers, i);
                assert_true(e[i].vram_bytes > e[i - 1].vram_bytes);
                assert_true(e[i].ram_bytes < e[i - 1].ram_bytes);
                assert_true(e[i].vram_kv_bytes > e[i - 1].vram_kv_bytes);
        }
}

static void test_errors(void **state) {
        _cleanup_(gguf_freep) Gguf *g = open_stories();
        EngineModelParams p = engine_model_params_default();
        EngineEstimate *e = NULL;
        size_t n = 0;
        QdError err = {};

        assert_int_equal(engine_model_estimate_splits(NULL, NULL, 64, 1, &e, &n, &err), -EINVAL);
        assert_int_equal(engine_model_estimate_splits(g, NULL, 0, 1, &e, &n, &err), -EINVAL);
        assert_int_equal(engine_model_estimate_splits(g, NULL, 64, 0, &e, &n, &err), -EINVAL);
        assert_string_equal(err.msg, "Bad arguments to the estimate.");
        qd_error_clear(&err);
        p.backend = "metal";
        assert_int_equal(engine_model_estimate_splits(g, &p, 64, 1, &e, &n, &err), -EOPNOTSUPP);
        assert_non_null(strstr(err.msg, "Backend 'metal' is not available"));
        assert_null(e);
}

/* A file that is not a model the engine knows: the estimate says so as loading would. */
static void test_unknown_arch(void **state) {
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        _cleanup_free_ char *path = strdup("/tmp/quantd-placement-XXXXXX");
        _cleanup_(gguf_freep) Gguf *g = NULL;
        EngineEstimate *e = NULL;
        size_t n = 0;
        QdError err = {};

        _cleanup_close_ int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(gguf_writer_new(&w, fd, 32), 0);
        assert_int_equal(gguf_writer_add_string(w, "general.architecture", "mamba"), 0);
        assert_int_equal(gguf_writer_write_header(w), 0);
        assert_int_equal(gguf_writer_finish(w), 0);
        assert_int_equal(gguf_open(path, &g, NULL), 0);
        unlink(path);
        assert_int_equal(engine_model_estimate_splits(g, NULL, 64, 1, &e, &n, &err), -EOPNOTSUPP);
        assert_non_null(strstr(err.msg, "mamba"));
        assert_null(e);
}

static void test_cpu_load_info(void **state) {
        _cleanup_free_ char *path = stories_path();
        _cleanup_(engine_model_unrefp) EngineModel *m = NULL;
        EngineModelParams p = engine_model_params_default();
        QdError e = {};

        p.backend = "cpu";
        assert_int_equal(engine_model_load(path, &p, &m, &e), 0);
        assert_int_equal(engine_model_info(m)->n_gpu_layers, 0);
        assert_true(engine_model_info(m)->vram_bytes == 0);
        assert_true(engine_model_info(m)->n_layer > 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_gpu_info),       cmocka_unit_test(test_cpu_splits),
                cmocka_unit_test(test_default_splits), cmocka_unit_test(test_errors),
                cmocka_unit_test(test_unknown_arch),   cmocka_unit_test(test_cpu_load_info),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
