/* SPDX-License-Identifier: MIT */
/*
 * The engine's device-memory API on a real GPU (suite gpu), what the scheduler's placement rests on:
 * engine_gpu_info() against the device, and for stories260K and SmolLM2-135M (Q4_1, $QUANTD_TEST_SMOLLM)
 * loaded with 0, 2 and all layers on the GPU: EngineModelInfo.n_gpu_layers, vram_bytes growing with the
 * layers, the estimate before loading against what the model then holds, and cudaMemGetInfo()'s drop over
 * the load and a first prompt (which makes the prompt scratch) against vram_bytes plus the KV cache: the
 * estimate may count more than the device gives (cuBLAS's workspace is a guess) but never much less, since
 * a load the scheduler thought would fit must fit. Unloading gives the memory back. A first load warms the
 * device up (CUDA loads kernel code lazily and keeps it), so that the measurements are of the model alone.
 * Then n_gpu_layers -1 on a device mostly taken (as many layers as fit), and a qwen2 model, which the cuda
 * backend does not run, on the CPU by default.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cuda/engine-cuda.h"
#include "engine.h"
#include "quant.h"

#define MiB (1024.0 * 1024.0)
#define N_CTX 256

/* Less than the estimate counts, by at most this: what CUDA's allocation granularity may add. */
#define UNDERCOUNT_SLACK (32ull << 20)
/* More than the estimate counts, by at most this: the 64 MiB it guesses for cuBLAS, and the batched decode
 * scratch for CUDA_BATCH_MAX sequences, which one sequence does not make (14 MiB for SmolLM2's 49152 logits a
 * sequence). */
#define OVERCOUNT_SLACK (96ull << 20)

static uint64_t gpu_free(void) {
        EngineGpuInfo g;
        assert_int_equal(engine_gpu_info(0, &g), 0);
        return g.free_bytes;
}

static void test_gpu_info(void **state) {
        EngineGpuInfo g;

        assert_true(engine_cuda_devices() > 0);
        assert_int_equal(engine_gpu_info(0, &g), 0);
        assert_true(g.name[0] != 0);
        assert_true(g.total_bytes > (1ull << 30));
        assert_true(g.free_bytes > 0 && g.free_bytes <= g.total_bytes);
        assert_int_equal(engine_gpu_info((uint32_t)engine_cuda_devices(), &g), -ENODEV);
        printf("# %s: %.0f of %.0f MiB free\n", g.name, g.free_bytes / MiB, g.total_bytes / MiB);
}

/* Loads path with all layers on the GPU and runs a prompt, once, so that the kernels' code (loaded lazily
 * by CUDA and kept) is on the device before anything is measured. */
static void warm_up(const char *path) {
        _cleanup_(engine_model_unrefp) EngineModel *m = NULL;
        _cleanup_(engine_seq_freep) EngineSeq *seq = NULL;
        EngineModelParams p = engine_model_params_default();
        const int32_t tokens[] = {1, 2, 3, 4};
        const int32_t *tp = tokens;
        uint32_t n_tok = ELEMENTSOF(tokens), one = 1;
        QdError e = {};

        p.backend = "cuda";
        if (engine_model_load(path, &p, &m, &e) < 0)
                fail_msg("Failed to load %s on the GPU: %s", path, e.msg);
        _cleanup_free_ float *logits = malloc(sizeof(float) * engine_model_info(m)->n_vocab);
        float *lp = logits;
        assert_non_null(logits);
        assert_int_equal(engine_seq_new(m, N_CTX, &seq), 0);
        assert_int_equal(engine_decode(m, &seq, &tp, &n_tok, 1, &lp, NULL, &e), 0);
        /* And one token through the decode path (graph capture). */
        assert_int_equal(engine_decode(m, &seq, &tp, &one, 1, &lp, NULL, &e), 0);
}

static void check_model(const char *path) {
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_free_ EngineEstimate *est = NULL;
        uint64_t last_vram = 0;
        size_t n_est = 0;
        uint32_t n_layer;
        QdError e = {};

        if (gguf_open(path, &g, &e) < 0)
                fail_msg("Failed to open %s: %s", path, e.msg);
        assert_int_equal(engine_model_estimate_splits(g, NULL, N_CTX, 1, &est, &n_est, &e), 0);
        n_layer = (uint32_t)n_est - 1;
        assert_true(n_layer >= 2);
        warm_up(path);

        const uint32_t counts[] = {0, 2, n_layer};
        for (size_t i = 0; i < ELEMENTSOF(counts); i++) {
                _cleanup_(engine_model_unrefp) EngineModel *m = NULL;
                _cleanup_(engine_seq_freep) EngineSeq *seq = NULL;
                EngineModelParams p = engine_model_params_default();
                uint32_t n = counts[i];

                p.backend = n == 0 ? "cpu" : "cuda";
                p.n_gpu_layers = (int32_t)n;
                uint64_t before = gpu_free();
                if (engine_model_load(path, &p, &m, &e) < 0)
                        fail_msg("Failed to load %s with %" PRIu32 " GPU layers: %s", path, n, e.msg);
                const EngineModelInfo *info = engine_model_info(m);
                assert_int_equal(info->n_gpu_layers, n);
                assert_true(n == 0 ? info->vram_bytes == 0 : info->vram_bytes > last_vram);
                last_vram = info->vram_bytes;
                /* The estimate before loading is what the model then says it holds, plus the KV cache. */
                uint64_t fixed = est[n].vram_bytes - est[n].vram_kv_bytes;
                assert_true(fixed <= info->vram_bytes + info->vram_bytes / 100 &&
                            info->vram_bytes <= fixed + fixed / 100);

                /* A sequence and a prompt of a few tokens, through the prompt path, so that everything the
                 * model allocates is allocated. */
                const int32_t tokens[] = {1, 2, 3, 4, 5, 6, 7, 8};
                const int32_t *tp = tokens;
                uint32_t n_tok = ELEMENTSOF(tokens);
                _cleanup_free_ float *logits = malloc(sizeof(float) * info->n_vocab);
                float *lp = logits;
                assert_non_null(logits);
                assert_int_equal(engine_seq_new(m, N_CTX, &seq), 0);
                if (engine_decode(m, &seq, &tp, &n_tok, 1, &lp, NULL, &e) < 0)
                        fail_msg("Decoding failed: %s", e.msg);
                uint64_t after = gpu_free();
                uint64_t drop = before - MIN(after, before);
                uint64_t counted = info->vram_bytes + est[n].vram_kv_bytes;
                printf("# %s, %" PRIu32 "/%" PRIu32 " layers: counted %.1f MiB (estimate %.1f), "
                       "cudaMemGetInfo() dropped %.1f MiB\n",
                       path, n, n_layer, counted / MiB, est[n].vram_bytes / MiB, drop / MiB);
                if (n == 0) {
                        assert_true(drop <= UNDERCOUNT_SLACK);
                        continue;
                }
                assert_true(drop <= counted + UNDERCOUNT_SLACK);
                assert_true(counted <= drop + OVERCOUNT_SLACK);

                seq = engine_seq_free(seq);
                m = engine_model_unref(m);
                uint64_t back = gpu_free();
                assert_true(back + UNDERCOUNT_SLACK >= before);
        }
}

static void test_stories(void **state) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
        check_model(path);
}

static void test_smollm(void **state) {
        const char *path = getenv("QUANTD_TEST_SMOLLM");
        if (!path)
                fail_msg("QUANTD_TEST_SMOLLM is not set; it names SmolLM2-135M-Instruct.Q4_1.gguf.");
        check_model(path);
}

/* n_gpu_layers -1 outside the daemon: as many layers as fit in what the device has free. Most of the device
 * is taken first, leaving room for about 10 of SmolLM2's 30 layers. */
static void test_fit(void **state) {
        const char *path = getenv("QUANTD_TEST_SMOLLM");
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_free_ EngineEstimate *est = NULL;
        _cleanup_(engine_model_unrefp) EngineModel *m = NULL;
        size_t n_est = 0;
        void *hog = NULL;
        QdError e = {};

        if (!path)
                fail_msg("QUANTD_TEST_SMOLLM is not set; it names SmolLM2-135M-Instruct.Q4_1.gguf.");
        assert_int_equal(gguf_open(path, &g, &e), 0);
        /* What the engine assumes for -1: one sequence of 2048 positions. */
        assert_int_equal(engine_model_estimate_splits(g, NULL, 2048, 1, &est, &n_est, &e), 0);
        assert_int_equal(n_est, 31);
        uint64_t want = est[10].vram_bytes + (est[11].vram_bytes - est[10].vram_bytes) / 2;
        uint64_t free_b = gpu_free();
        assert_true(free_b > want + (256ull << 20));
        assert_int_equal(cuda_malloc(free_b - want, &hog), 0);
        free_b = gpu_free();
        uint32_t expect = 0;
        for (uint32_t n = 1; n < n_est; n++)
                if (est[n].vram_bytes <= free_b)
                        expect = n;
        printf("# %.1f MiB free: %" PRIu32 " layers fit\n", free_b / MiB, expect);
        assert_true(expect > 0 && expect < 30);

        int r = engine_model_load(path, NULL, &m, &e);
        cuda_free(hog);
        if (r < 0)
                fail_msg("Failed to load %s: %s", path, e.msg);
        assert_int_equal(engine_model_info(m)->n_gpu_layers, expect);
}

/* A qwen2 model (the tiny one of tests/data, converted), which the cuda backend runs (biases, NeoX RoPE): the
 * default puts every layer on the GPU. An F32 KV cache, which only the CPU backend keeps, leaves no GPU rows in
 * the estimate and the model on the CPU by default; asking for cuda by name with it says why not. */
static void test_unsupported(void **state) {
        _cleanup_free_ char *dir = strdup_printf("%s/hf-tiny-qwen2", getenv("QUANTD_TEST_DATA"));
        _cleanup_close_ int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        _cleanup_close_ int fd = memfd_create("qwen2", MFD_CLOEXEC);
        _cleanup_(engine_model_unrefp) EngineModel *m = NULL;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_free_ EngineEstimate *est = NULL, *est_f32 = NULL;
        QuantConvertParams cp = quant_convert_params_default();
        EngineModelParams p = engine_model_params_default();
        size_t n_est = 0;
        QdError e = {};

        assert_true(dirfd >= 0 && fd >= 0);
        if (quant_convert_hf(dirfd, fd, &cp, &e) < 0)
                fail_msg("Conversion failed: %s", e.msg);
        assert_int_equal(gguf_open_fd(fd, &g, &e), 0);
        assert_int_equal(engine_model_estimate_splits(g, NULL, 64, 1, &est, &n_est, &e), 0);
        assert_true(n_est > 1);
        assert_int_equal(engine_model_load_fd(fd, NULL, &m, &e), 0);
        assert_int_equal(engine_model_info(m)->n_gpu_layers, engine_model_info(m)->n_layer);
        m = engine_model_unref(m);

        p.kv_type = GGML_TYPE_F32;
        assert_int_equal(engine_model_estimate_splits(g, &p, 64, 1, &est_f32, &n_est, &e), 0);
        assert_int_equal(n_est, 1);
        assert_int_equal(engine_model_load_fd(fd, &p, &m, &e), 0);
        assert_int_equal(engine_model_info(m)->n_gpu_layers, 0);
        m = engine_model_unref(m);
        p.backend = "cuda";
        assert_int_equal(engine_model_load_fd(fd, &p, &m, &e), -EOPNOTSUPP);
        assert_non_null(strstr(e.msg, "f16 or q8_0"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_gpu_info),    cmocka_unit_test(test_stories),
                cmocka_unit_test(test_smollm),      cmocka_unit_test(test_fit),
                cmocka_unit_test(test_unsupported),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
