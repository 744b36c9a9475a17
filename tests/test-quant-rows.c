/* SPDX-License-Identifier: MIT */
/*
 * Row quantizers: bytes identical to the PyPI gguf package's quantizers where it has them, dequantization
 * identical to its dequantizers, RMSE under per-type bounds on random and real weight rows, and the argument
 * errors.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>

#include "quant.h"

#define ROW 256
#define N_ROWS 16

static void *read_data(const char *name, size_t *ret_size) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path = strdup_printf("%s/quant/%s", dir ? dir : "tests/data", name);
        _cleanup_fclose_ FILE *f = NULL;
        void *p;
        long size;

        assert_non_null(path);
        f = fopen(path, "rb");
        if (!f)
                fail_msg("Cannot open %s: %m", path);
        assert_int_equal(fseek(f, 0, SEEK_END), 0);
        size = ftell(f);
        assert_true(size > 0);
        rewind(f);
        p = malloc((size_t)size);
        assert_non_null(p);
        assert_int_equal(fread(p, 1, (size_t)size, f), (size_t)size);
        *ret_size = (size_t)size;
        return p;
}

static size_t row_bytes(uint32_t type, size_t n) {
        uint64_t size;

        assert_int_equal(ggml_row_size(type, n, &size), 0);
        return (size_t)size;
}

/* Quantizes rows with both quant_row_ref() and quant_row() and compares them with the file's bytes. */
static void check_against_file(uint32_t type, const float *x, size_t n_rows, const char *file) {
        size_t size, rb = row_bytes(type, ROW);
        _cleanup_free_ uint8_t *want = read_data(file, &size);
        _cleanup_free_ uint8_t *got = malloc(rb);

        assert_int_equal(size, n_rows * rb);
        for (size_t r = 0; r < n_rows; r++) {
                for (int fast = 0; fast < 2; fast++) {
                        memset(got, 0xa5, rb);
                        int k = fast ? quant_row(type, x + r * ROW, got, ROW)
                                     : quant_row_ref(type, x + r * ROW, got, ROW);
                        assert_int_equal(k, 0);
                        for (size_t i = 0; i < rb; i++)
                                if (got[i] != want[r * rb + i])
                                        fail_msg("%s%s: row %zu byte %zu is 0x%02x, gguf wrote 0x%02x",
                                                 ggml_type_name(type), fast ? "" : " (ref)", r, i, got[i],
                                                 want[r * rb + i]);
                }
        }
}

static void test_same_bytes_as_gguf(void **state) {
        size_t size, ssize;
        _cleanup_free_ float *x = read_data("input.bin", &size);
        _cleanup_free_ float *specials = read_data("specials.bin", &ssize);

        assert_int_equal(size, N_ROWS * ROW * sizeof(float));
        assert_int_equal(ssize, ROW * sizeof(float));
        check_against_file(GGML_TYPE_Q8_0, x, N_ROWS, "q8_0.bin");
        check_against_file(GGML_TYPE_Q4_0, x, N_ROWS, "q4_0.bin");
        check_against_file(GGML_TYPE_Q4_1, x, N_ROWS, "q4_1.bin");
        check_against_file(GGML_TYPE_Q5_0, x, N_ROWS, "q5_0.bin");
        check_against_file(GGML_TYPE_Q5_1, x, N_ROWS, "q5_1.bin");

        /* binary16 and bfloat16 also get the edge values: overflow, subnormals, ties, infinities. */
        _cleanup_free_ float *all = malloc(size + ssize);
        assert_non_null(all);
        memcpy(all, x, size);
        memcpy(all + N_ROWS * ROW, specials, ssize);
        check_against_file(GGML_TYPE_F16, all, N_ROWS + 1, "f16.bin");
        check_against_file(GGML_TYPE_BF16, all, N_ROWS + 1, "bf16.bin");
}

/* Decodes gguf's random blocks and compares with gguf.dequantize() bit for bit. */
static void test_dequantize_as_gguf(void **state) {
        static const uint32_t types[] = {
                GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q8_0,   GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
                GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q2_K,   GGML_TYPE_Q3_K, GGML_TYPE_Q4_K,
                GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_IQ4_NL,
        };

        for (size_t t = 0; t < ELEMENTSOF(types); t++) {
                uint32_t type = types[t];
                const char *blocks_name = type == GGML_TYPE_BF16 ? "f16" : ggml_type_name(type);
                _cleanup_free_ char *bn = strdup_printf("deq-blocks-%s.bin", blocks_name);
                _cleanup_free_ char *vn = strdup_printf("deq-%s.bin", ggml_type_name(type));
                size_t bsize, vsize;
                _cleanup_free_ uint8_t *blocks = read_data(bn, &bsize);
                _cleanup_free_ float *want = read_data(vn, &vsize);
                size_t n = vsize / sizeof(float);
                _cleanup_free_ float *got = malloc(vsize);

                assert_int_equal(row_bytes(type, n), bsize);
                assert_int_equal(engine_dequantize_row(type, blocks, got, n), 0);
                for (size_t i = 0; i < n; i++)
                        if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
                                fail_msg("%s: element %zu decodes to %a, gguf to %a", ggml_type_name(type),
                                         i, (double)got[i], (double)want[i]);
        }
}

/* ---- error bounds ---- */

/* splitmix64, so that the rows are the same everywhere. */
static uint64_t rng_next(uint64_t *s) {
        uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s) {
        return ((double)(rng_next(s) >> 11) + 0.5) * 0x1p-53;
}

static float rng_normal(uint64_t *s) {
        double u = rng_uniform(s), v = rng_uniform(s);
        return (float)(sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v));
}

/* RMSE of dequant(quant(x)) divided by the RMS of x. */
static double relative_rmse(uint32_t type, const float *x, size_t n) {
        _cleanup_free_ uint8_t *q = malloc(row_bytes(type, n));
        _cleanup_free_ float *y = malloc(n * sizeof(float));
        double err = 0, ref = 0;

        assert_int_equal(quant_row(type, x, q, n), 0);
        assert_int_equal(engine_dequantize_row(type, q, y, n), 0);
        for (size_t i = 0; i < n; i++) {
                assert_true(isfinite(y[i]));
                err += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
                ref += (double)x[i] * x[i];
        }
        return sqrt(err / ref);
}

typedef struct Bound {
        uint32_t type;
        double gaussian; /* relative RMSE bound on N(0, 1) rows */
        double real;     /* on real weight rows */
} Bound;

/* Each bound is about 10 % above what the reference quantizers measure (max over the rows tried), so that a
 * regression in a search fails; they agree with the step sizes: Q8_0 on N(0,1) blocks of 32 has a step of
 * E[max|x|]/127 ≈ 2.36/127 and an RMSE of step/sqrt(12) ≈ 0.0054. */
static const Bound bounds[] = {
        {GGML_TYPE_F16, 2.3e-4, 2.3e-4},      {GGML_TYPE_BF16, 1.85e-3, 1.6e-3},
        {GGML_TYPE_Q8_0, 5.9e-3, 6.1e-3},     {GGML_TYPE_Q6_K, 1.95e-2, 2.4e-2},
        {GGML_TYPE_Q5_1, 4.15e-2, 5.1e-2},    {GGML_TYPE_Q5_0, 4.7e-2, 6.0e-2},
        {GGML_TYPE_Q5_K, 3.95e-2, 4.5e-2},    {GGML_TYPE_Q4_1, 8.55e-2, 9.7e-2},
        {GGML_TYPE_Q4_0, 9.45e-2, 1.19e-1},   {GGML_TYPE_Q4_K, 7.8e-2, 8.9e-2},
        {GGML_TYPE_IQ4_NL, 8.35e-2, 9.75e-2}, {GGML_TYPE_Q3_K, 1.66e-1, 1.9e-1},
        {GGML_TYPE_Q2_K, 3.23e-1, 3.38e-1},
};

static void test_rmse_gaussian(void **state) {
        const size_t n = 64 * ROW;
        _cleanup_free_ float *x = malloc(n * sizeof(float));
        uint64_t seed = 1;

        for (size_t i = 0; i < n; i++)
                x[i] = rng_normal(&seed) * 0.05f;
        for (size_t b = 0; b < ELEMENTSOF(bounds); b++) {
                double e = relative_rmse(bounds[b].type, x, n);
                print_message("# gaussian %-7s relative RMSE %.5f (bound %.5f)\n",
                              ggml_type_name(bounds[b].type), e, bounds[b].gaussian);
                assert_true(e < bounds[b].gaussian);
        }
        /* The scale searches must beat the plain types of the same size. */
        assert_true(relative_rmse(GGML_TYPE_Q4_K, x, n) < 0.95 * relative_rmse(GGML_TYPE_Q4_1, x, n));
        assert_true(relative_rmse(GGML_TYPE_Q5_K, x, n) < 0.97 * relative_rmse(GGML_TYPE_Q5_1, x, n));
        assert_true(relative_rmse(GGML_TYPE_IQ4_NL, x, n) < 0.9 * relative_rmse(GGML_TYPE_Q4_0, x, n));
}

static void test_rmse_real_rows(void **state) {
        const char *path = getenv("QUANTD_TEST_SMOLLM");
        _cleanup_(gguf_freep) Gguf *g = NULL;
        const char *names[] = {"token_embd.weight", "blk.0.ffn_down.weight", "blk.10.attn_q.weight"};
        const size_t n = 256 * ROW;

        if (!path)
                fail_msg("QUANTD_TEST_SMOLLM is not set: it names SmolLM2-135M-Instruct.Q4_1.gguf.");
        assert_int_equal(gguf_open(path, &g, NULL), 0);
        for (size_t t = 0; t < ELEMENTSOF(names); t++) {
                const GgufTensor *tensor = gguf_find_tensor(g, names[t]);
                _cleanup_free_ float *x = malloc(n * sizeof(float));

                assert_non_null(tensor);
                assert_true(tensor->n_elements >= n);
                /* Whole 256-element super-blocks out of the tensor's first rows; the stored row length does
                 * not matter for the statistics. */
                assert_int_equal(engine_dequantize_row(tensor->type, tensor->data, x, n), 0);
                for (size_t b = 0; b < ELEMENTSOF(bounds); b++) {
                        double e = relative_rmse(bounds[b].type, x, n);
                        print_message("# %-22s %-7s relative RMSE %.5f (bound %.5f)\n", names[t],
                                      ggml_type_name(bounds[b].type), e, bounds[b].real);
                        assert_true(e < bounds[b].real);
                }
        }
}

/* stories260K's weights are F32 as trained, so these rows were never on any quantization grid (SmolLM2's
 * above are Q4_1 values): every 2-D weight, cut to whole 256-element super-blocks, one run per tensor. The
 * bounds are about 10 % above the worst tensor. */
static const struct {
        uint32_t type;
        double bound;
} f32_bounds[] = {
        {GGML_TYPE_F16, 2.3e-4},   {GGML_TYPE_BF16, 2.17e-3},  {GGML_TYPE_Q8_0, 6.8e-3},
        {GGML_TYPE_Q6_K, 2.2e-2},  {GGML_TYPE_Q5_1, 4.6e-2},   {GGML_TYPE_Q5_0, 5.5e-2},
        {GGML_TYPE_Q5_K, 4.5e-2},  {GGML_TYPE_Q4_1, 9.7e-2},   {GGML_TYPE_Q4_0, 1.06e-1},
        {GGML_TYPE_Q4_K, 8.7e-2},  {GGML_TYPE_IQ4_NL, 9.2e-2}, {GGML_TYPE_Q3_K, 1.82e-1},
        {GGML_TYPE_Q2_K, 3.75e-1},
};

static void test_rmse_real_f32_rows(void **state) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
        _cleanup_(gguf_freep) Gguf *g = NULL;
        double worst[ELEMENTSOF(f32_bounds)] = {};
        unsigned n_tensors = 0;

        assert_int_equal(gguf_open(path, &g, NULL), 0);
        for (uint64_t t = 0; t < g->n_tensors; t++) {
                const GgufTensor *tensor = &g->tensors[t];
                size_t n = (size_t)tensor->n_elements / ROW * ROW;

                if (tensor->n_dims != 2 || n == 0)
                        continue;
                assert_int_equal(tensor->type, GGML_TYPE_F32);
                for (size_t b = 0; b < ELEMENTSOF(f32_bounds); b++)
                        worst[b] = fmax(worst[b], relative_rmse(f32_bounds[b].type, tensor->data, n));
                n_tensors++;
        }
        assert_true(n_tensors >= 10);
        for (size_t b = 0; b < ELEMENTSOF(f32_bounds); b++) {
                print_message(
                        "# stories260K F32 %-7s worst relative RMSE %.5f over %u tensors (bound %.5f)\n",
                        ggml_type_name(f32_bounds[b].type), worst[b], n_tensors, f32_bounds[b].bound);
                assert_true(worst[b] < f32_bounds[b].bound);
        }
        /* As on Gaussian rows, the searched types beat the plain ones of the same size (indices above). */
        assert_true(worst[9] < worst[7]);  /* Q4_K < Q4_1 */
        assert_true(worst[6] < worst[4]);  /* Q5_K < Q5_1 */
        assert_true(worst[10] < worst[8]); /* IQ4_NL < Q4_0 */
}

/* The fast row functions write the reference's bytes, on rows of every kind: scales from tiny to huge,
 * offsets, sparse rows, flat and zero groups. */
static void test_fast_equals_ref(void **state) {
        static const uint32_t types[] = {GGML_TYPE_Q2_K, GGML_TYPE_Q3_K,   GGML_TYPE_Q4_K, GGML_TYPE_Q5_K,
                                         GGML_TYPE_Q6_K, GGML_TYPE_IQ4_NL, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0};
        const size_t n = 4 * ROW, n_rows = 400;
        _cleanup_free_ float *x = malloc(n * sizeof(float));
        _cleanup_free_ uint8_t *a = malloc(n * 4), *b = malloc(n * 4);
        uint64_t seed = 99;

        for (size_t r = 0; r < n_rows; r++) {
                const float scale = (float)pow(10.0, -6.0 + 9.0 * rng_uniform(&seed));
                const unsigned kind = (unsigned)(r % 6);

                for (size_t i = 0; i < n; i++) {
                        float v = rng_normal(&seed) * scale;
                        if (kind == 1)
                                v = fabsf(v) + scale; /* all positive: the minimum is clamped to 0 */
                        else if (kind == 2 && rng_uniform(&seed) < 0.9)
                                v = 0.0f; /* sparse, with all-zero groups */
                        else if (kind == 3 && (i / 16) % 3 == 0)
                                v = scale; /* flat groups */
                        else if (kind == 4)
                                v = (float)(int)(v / scale * 4.0f); /* few distinct values, ties */
                        x[i] = v;
                }
                for (size_t t = 0; t < ELEMENTSOF(types); t++) {
                        size_t rb = row_bytes(types[t], n);
                        assert_int_equal(quant_row(types[t], x, a, n), 0);
                        assert_int_equal(quant_row_ref(types[t], x, b, n), 0);
                        if (memcmp(a, b, rb) != 0)
                                fail_msg("%s: row %zu (kind %u) differs between fast and reference",
                                         ggml_type_name(types[t]), r, kind);
                }
        }
}

/* Zero rows stay zero; constant and tiny or huge rows decode to finite values close to the input. */
static void test_awkward_rows(void **state) {
        float x[ROW], y[ROW];
        uint8_t q[ROW * 4];

        for (size_t b = 0; b < ELEMENTSOF(bounds); b++) {
                uint32_t type = bounds[b].type;

                memset(x, 0, sizeof(x));
                assert_int_equal(quant_row(type, x, q, ROW), 0);
                assert_int_equal(engine_dequantize_row(type, q, y, ROW), 0);
                for (int i = 0; i < ROW; i++)
                        assert_true(y[i] == 0.0f);

                /* Below binary16's range the block scales flush to zero: tiny values may decode to zero,
                 * never to anything larger. */
                static const float levels[] = {0.75f, -3.0f, 3e3f, 1e-7f};
                for (size_t k = 0; k < ELEMENTSOF(levels); k++) {
                        float tol = fabsf(levels[k]) < 1e-3f ? 1e-6f : 0.15f * fabsf(levels[k]);
                        for (int i = 0; i < ROW; i++)
                                x[i] = levels[k];
                        assert_int_equal(quant_row(type, x, q, ROW), 0);
                        assert_int_equal(engine_dequantize_row(type, q, y, ROW), 0);
                        for (int i = 0; i < ROW; i++)
                                if (!(fabsf(y[i] - x[i]) <= tol))
                                        fail_msg("%s: constant %g decodes to %g at %d", ggml_type_name(type),
                                                 (double)x[i], (double)y[i], i);
                }
        }
}

static void test_errors(void **state) {
        float x[ROW] = {};
        uint8_t q[ROW * 4];

        assert_int_equal(quant_row(GGML_TYPE_Q8_1, x, q, ROW), -EOPNOTSUPP);
        assert_int_equal(quant_row(GGML_TYPE_IQ2_XXS, x, q, ROW), -EOPNOTSUPP);
        assert_int_equal(quant_row(999, x, q, ROW), -EOPNOTSUPP);
        assert_int_equal(quant_row_ref(GGML_TYPE_I8, x, q, ROW), -EOPNOTSUPP);
        assert_int_equal(quant_row(GGML_TYPE_Q4_0, x, q, 31), -EINVAL);
        assert_int_equal(quant_row(GGML_TYPE_Q4_K, x, q, 128), -EINVAL);
        assert_int_equal(quant_row_ref(GGML_TYPE_Q6_K, x, q, 100), -EINVAL);
        assert_int_equal(quant_row(GGML_TYPE_Q8_0, NULL, q, 32), -EINVAL);
        assert_int_equal(quant_row(GGML_TYPE_Q8_0, x, NULL, 32), -EINVAL);
        assert_true(quant_type_supported(GGML_TYPE_Q5_K));
        assert_false(quant_type_supported(GGML_TYPE_Q8_K));
        assert_int_equal(quant_row(GGML_TYPE_F32, x, q, 0), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_same_bytes_as_gguf),
                cmocka_unit_test(test_dequantize_as_gguf),
                cmocka_unit_test(test_rmse_gaussian),
                cmocka_unit_test(test_rmse_real_rows),
                cmocka_unit_test(test_rmse_real_f32_rows),
                cmocka_unit_test(test_awkward_rows),
                cmocka_unit_test(test_fast_equals_ref),
                cmocka_unit_test(test_errors),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
