/* SPDX-License-Identifier: MIT */
/*
 * Every CPU matrix kernel against the scalar reference, for every weight type, on random blocks: the SIMD sets
 * must agree with the scalar kernels up to float summation order, and the scalar kernels with the dequantized
 * weights times the float activations up to the activation quantization error. Also attention through a tiny
 * model is covered by test-engine-forward; here only the matrix kernels.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <math.h>

#include "engine.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return (uint32_t)(rng_state >> 16);
}

static float rndf(void) {
        return (float)rnd() / 4294967296.0f * 2.0f - 1.0f;
}

/* Byte offsets of the float16 scale fields in a block of each type, which get small finite values. */
static void half_fields(uint32_t type, int *off, int *n) {
        *n = 0;
        switch (type) {
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
                off[(*n)++] = 2;
                _fallthrough_;
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q8_0:
                off[(*n)++] = 0;
                break;
        case GGML_TYPE_Q2_K:
                off[(*n)++] = 80;
                off[(*n)++] = 82;
                break;
        case GGML_TYPE_Q3_K:
                off[(*n)++] = 108;
                break;
        case GGML_TYPE_Q6_K:
                off[(*n)++] = 208;
                break;
        default:
                break;
        }
}

/* n_rows random rows of n elements of type. */
static uint8_t *random_matrix(uint32_t type, uint64_t n, uint32_t n_rows) {
        const GgmlTypeInfo *ti = ggml_type_info(type);
        uint64_t row;
        assert_int_equal(ggml_row_size(type, n, &row), 0);
        uint8_t *w = malloc(row * n_rows);
        assert_non_null(w);

        if (type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16) {
                for (uint64_t i = 0; i < n * n_rows; i++) {
                        float f = rndf();
                        if (type == GGML_TYPE_F32)
                                memcpy(w + 4 * i, &f, 4);
                        else {
                                uint16_t h = type == GGML_TYPE_F16 ? engine_f32_to_fp16(f) : engine_f32_to_bf16(f);
                                memcpy(w + 2 * i, &h, 2);
                        }
                }
                return w;
        }
        for (uint64_t i = 0; i < row * n_rows; i++)
                w[i] = (uint8_t)rnd();
        int off[2], n_off;
        half_fields(type, off, &n_off);
        for (uint64_t b = 0; b < row * n_rows / ti->type_size; b++)
                for (int k = 0; k < n_off; k++) {
                        GgmlHalf h = engine_f32_to_fp16(rndf() * 0.05f);
                        memcpy(w + b * ti->type_size + off[k], &h, 2);
                }
        return w;
}

static double rel_error(const float *y, const float *ref, size_t n) {
        double num = 0, den = 0;

        for (size_t i = 0; i < n; i++) {
                num += ((double)y[i] - ref[i]) * ((double)y[i] - ref[i]);
                den += (double)ref[i] * ref[i];
        }
        return sqrt(num / den);
}

/* 1, 2, … 6, then max_tok, then past it. */
static uint32_t next_n_tok(uint32_t n_tok, uint32_t max_tok) {
        if (n_tok < 6)
                return n_tok + 1;
        return n_tok < max_tok ? max_tok : max_tok + 1;
}

/* Tokens 1 … 6 and max_tok at once (past the SIMD kernels' token tiles when it is larger). */
static void check_type_tokens(uint32_t type, uint64_t n, uint32_t max_tok) {
        const uint32_t n_rows = 37;
        _cleanup_free_ uint8_t *w = random_matrix(type, n, n_rows);
        _cleanup_free_ float *x = malloc(n * max_tok * sizeof(float));
        _cleanup_free_ float *wf = malloc(n * n_rows * sizeof(float));
        _cleanup_free_ float *ref = malloc(n_rows * max_tok * sizeof(float));
        _cleanup_free_ float *exact = malloc(n_rows * max_tok * sizeof(float));
        _cleanup_free_ float *y = malloc(n_rows * max_tok * sizeof(float));
        _cleanup_free_ float *y1 = malloc(n_rows * sizeof(float));
        uint64_t row;

        assert_non_null(x);
        assert_non_null(wf);
        assert_non_null(ref);
        assert_non_null(exact);
        assert_non_null(y);
        assert_non_null(y1);
        assert_int_equal(ggml_row_size(type, n, &row), 0);
        for (uint64_t i = 0; i < n * max_tok; i++)
                x[i] = rndf();
        for (uint32_t r = 0; r < n_rows; r++)
                assert_int_equal(engine_dequantize_row(type, w + r * row, wf + r * n, n), 0);
        for (uint32_t t = 0; t < max_tok; t++)
                for (uint32_t r = 0; r < n_rows; r++) {
                        double s = 0;
                        for (uint64_t i = 0; i < n; i++)
                                s += (double)wf[r * n + i] * x[t * n + i];
                        exact[t * n_rows + r] = (float)s;
                }

        /* The scalar reference against the dequantized weights: exact for float types, within the activation
         * quantization error otherwise. */
        assert_int_equal(engine_cpu_matmul(ENGINE_CPU_SCALAR, type, w, n, n_rows, x, max_tok, ref), 0);
        double e = rel_error(ref, exact, n_rows * max_tok);
        bool float_type = type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
        if (e > (float_type ? 1e-6 : 2e-2))
                fail_msg("scalar %s: relative error %g against the dequantized product", ggml_type_name(type), e);

        for (int isa = ENGINE_CPU_AVX2; isa <= (int)engine_cpu_isa_best(); isa++) {
                for (uint32_t n_tok = 1; n_tok <= max_tok; n_tok = next_n_tok(n_tok, max_tok)) {
                        assert_int_equal(engine_cpu_matmul((EngineCpuIsa)isa, type, w, n, n_rows, x, n_tok, y), 0);
                        e = rel_error(y, ref, n_rows * n_tok);
                        if (e > 1e-5)
                                fail_msg("%s %s, %u tokens: relative error %g against scalar",
                                         engine_cpu_isa_name((EngineCpuIsa)isa), ggml_type_name(type), n_tok, e);
                        /* A token's result does not depend on the others in its batch. */
                        assert_int_equal(engine_cpu_matmul((EngineCpuIsa)isa, type, w, n, n_rows,
                                                           x + (n_tok - 1) * n, 1, y1), 0);
                        assert_memory_equal(y1, y + (n_tok - 1) * n_rows, n_rows * sizeof(float));
                }
        }
}

static void check_type(uint32_t type, uint64_t n) {
        check_type_tokens(type, n, 6);
}

static void test_float_types(void **state) {
        check_type(GGML_TYPE_F32, 512);
        check_type(GGML_TYPE_F32, 172); /* a row that is no multiple of any vector width */
        check_type(GGML_TYPE_F16, 512);
        check_type(GGML_TYPE_F16, 172);
        check_type(GGML_TYPE_BF16, 512);
        check_type(GGML_TYPE_BF16, 172);
}

static void test_block32_types(void **state) {
        static const uint32_t types[] = { GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                                          GGML_TYPE_Q8_0 };
        for (size_t i = 0; i < ELEMENTSOF(types); i++) {
                check_type(types[i], 512);
                check_type(types[i], 96); /* an odd number of blocks */
                /* Rows longer than one slice of the AVX-512 tile (24 blocks), and more tokens than one pass
                 * of it keeps (64). */
                check_type_tokens(types[i], 1600, 70);
        }
}

static void test_k_types(void **state) {
        static const uint32_t types[] = { GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K,
                                          GGML_TYPE_Q6_K };
        for (size_t i = 0; i < ELEMENTSOF(types); i++) {
                check_type(types[i], 768);
                check_type(types[i], 256); /* one super-block */
                check_type_tokens(types[i], 768, 70); /* past the AVX-512 tiles' slice and token pass */
        }
}

/* The SIMD SwiGLU (a vectorised exp) against expf, element by element, over the range a gate takes and past
 * it. */
static void test_swiglu(void **state) {
        enum { N = 1029 };
        static float g0[N], u[N], ref[N], y[N];

        for (int i = 0; i < N; i++) {
                g0[i] = (float)(i - N / 2) * 0.05f; /* -25.7 … 25.7 */
                u[i] = rndf() * 3.0f;
        }
        g0[0] = -100.0f;
        g0[1] = 100.0f;
        g0[2] = 0.0f;
        g0[3] = 1e-20f;
        g0[4] = -88.5f;
        memcpy(ref, g0, sizeof(ref));
        assert_int_equal(engine_cpu_swiglu(ENGINE_CPU_SCALAR, ref, u, N), 0);
        for (int isa = ENGINE_CPU_AVX2; isa <= (int)engine_cpu_isa_best(); isa++) {
                memcpy(y, g0, sizeof(y));
                assert_int_equal(engine_cpu_swiglu((EngineCpuIsa)isa, y, u, N), 0);
                for (int i = 0; i < N; i++) {
                        /* A few ulp, or an absolute 1e-30 where the true value underflows. */
                        if (fabsf(y[i] - ref[i]) > 1e-6f * fabsf(ref[i]) + 1e-30f)
                                fail_msg("%s: swiglu(%g) × %g = %g, expf gives %g",
                                         engine_cpu_isa_name((EngineCpuIsa)isa), g0[i], u[i], y[i], ref[i]);
                }
        }
        assert_int_equal(engine_cpu_swiglu(ENGINE_CPU_SCALAR, NULL, u, 4), -EINVAL);
        assert_int_equal(engine_cpu_swiglu(_ENGINE_CPU_ISA_MAX, y, u, 4), -EINVAL);
}

/* Attention, every SIMD set against the scalar kernel: head sizes the AVX-512 set takes in registers (64, 128)
 * and one it hands on (40), F16 and F32 caches, position counts around its 16-wide blocks, and groups of 1-5
 * query heads sharing the keys (past its groups of 4 and 2), each of whose results must not depend on the
 * group. */
static void test_attend(void **state) {
        static const uint32_t dims[] = { 64, 128, 40 }, n_pos_list[] = { 1, 15, 16, 17, 33, 300 };
        static const uint32_t kv_types[] = { GGML_TYPE_F32, GGML_TYPE_F16 };
        enum { MAX_POS = 300, MAX_DIM = 128, MAX_Q = 5, STRIDE = 2 * MAX_DIM * sizeof(float) };
        static uint8_t k[MAX_POS * STRIDE], v[MAX_POS * STRIDE];
        float q[MAX_Q * MAX_DIM], ref[MAX_Q * MAX_DIM], out[MAX_Q * MAX_DIM], one[MAX_DIM];

        for (size_t ti = 0; ti < ELEMENTSOF(kv_types); ti++)
                for (size_t di = 0; di < ELEMENTSOF(dims); di++) {
                        uint32_t kv_type = kv_types[ti], dim = dims[di];
                        for (uint32_t i = 0; i < MAX_Q * dim; i++)
                                q[i] = rndf();
                        for (uint32_t p = 0; p < MAX_POS; p++)
                                for (uint32_t i = 0; i < dim; i++) {
                                        /* Keys large enough that the softmax is far from uniform. */
                                        float kf = rndf() * 4.0f, vf = rndf();
                                        if (kv_type == GGML_TYPE_F16) {
                                                GgmlHalf kh = engine_f32_to_fp16(kf), vh = engine_f32_to_fp16(vf);
                                                memcpy(k + p * STRIDE + 2 * i, &kh, 2);
                                                memcpy(v + p * STRIDE + 2 * i, &vh, 2);
                                        } else {
                                                memcpy(k + p * STRIDE + 4 * i, &kf, 4);
                                                memcpy(v + p * STRIDE + 4 * i, &vf, 4);
                                        }
                                }
                        for (size_t ni = 0; ni < ELEMENTSOF(n_pos_list); ni++) {
                                uint32_t n_pos = n_pos_list[ni];
                                float scale = 1.0f / sqrtf((float)dim);
                                assert_int_equal(engine_cpu_attend(ENGINE_CPU_SCALAR, q, MAX_Q, k, v, STRIDE,
                                                                   kv_type, n_pos, dim, scale, ref), 0);
                                for (int isa = ENGINE_CPU_AVX2; isa <= (int)engine_cpu_isa_best(); isa++)
                                        for (uint32_t n_q = 1; n_q <= MAX_Q; n_q++) {
                                                assert_int_equal(engine_cpu_attend((EngineCpuIsa)isa, q, n_q, k, v,
                                                                                   STRIDE, kv_type, n_pos, dim,
                                                                                   scale, out),
                                                                 0);
                                                double e = rel_error(out, ref, (size_t)n_q * dim);
                                                if (e > 1e-5)
                                                        fail_msg("%s attention, %s, head %u, %u positions, %u "
                                                                 "queries: relative error %g against scalar",
                                                                 engine_cpu_isa_name((EngineCpuIsa)isa),
                                                                 ggml_type_name(kv_type), dim, n_pos, n_q, e);
                                                /* The last query alone gives what it gave in the group. */
                                                const float *last = q + (size_t)(n_q - 1) * dim;
                                                assert_int_equal(engine_cpu_attend((EngineCpuIsa)isa, last, 1, k, v,
                                                                                   STRIDE, kv_type, n_pos, dim,
                                                                                   scale, one),
                                                                 0);
                                                assert_memory_equal(one, out + (size_t)(n_q - 1) * dim,
                                                                    dim * sizeof(float));
                                        }
                        }
                }
        assert_int_equal(engine_cpu_attend(ENGINE_CPU_SCALAR, q, 1, k, v, STRIDE, GGML_TYPE_Q8_0, 1, 64, 1, out),
                         -EINVAL);
        assert_int_equal(engine_cpu_attend(ENGINE_CPU_SCALAR, q, 1, k, v, STRIDE, GGML_TYPE_F32, 0, 64, 1, out),
                         -EINVAL);
        assert_int_equal(engine_cpu_attend(ENGINE_CPU_SCALAR, q, 0, k, v, STRIDE, GGML_TYPE_F32, 1, 64, 1, out),
                         -EINVAL);
        assert_int_equal(engine_cpu_attend(ENGINE_CPU_SCALAR, NULL, 1, k, v, STRIDE, GGML_TYPE_F32, 1, 64, 1, out),
                         -EINVAL);
        assert_int_equal(engine_cpu_attend(_ENGINE_CPU_ISA_MAX, q, 1, k, v, STRIDE, GGML_TYPE_F32, 1, 64, 1, out),
                         -EINVAL);
}

static void test_matmul_errors(void **state) {
        float x[64] = {}, y[4];
        uint8_t w[sizeof(BlockQ4_K) * 2] = {};

        assert_int_equal(engine_cpu_matmul(ENGINE_CPU_SCALAR, GGML_TYPE_Q4_0, w, 33, 1, x, 1, y), -EINVAL);
        assert_int_equal(engine_cpu_matmul(ENGINE_CPU_SCALAR, GGML_TYPE_Q4_K, w, 32, 1, x, 1, y), -EINVAL);
        assert_int_equal(engine_cpu_matmul(ENGINE_CPU_SCALAR, GGML_TYPE_IQ4_NL, w, 32, 1, x, 1, y), -EOPNOTSUPP);
        assert_int_equal(engine_cpu_matmul(ENGINE_CPU_SCALAR, 99, w, 32, 1, x, 1, y), -EINVAL);
        assert_int_equal(engine_cpu_matmul(ENGINE_CPU_SCALAR, GGML_TYPE_F32, NULL, 32, 1, x, 1, y), -EINVAL);
        assert_int_equal(engine_cpu_matmul(ENGINE_CPU_SCALAR, GGML_TYPE_F32, w, 0, 1, x, 1, y), -EINVAL);
        assert_int_equal(engine_cpu_matmul(_ENGINE_CPU_ISA_MAX, GGML_TYPE_F32, w, 32, 1, x, 1, y), -EINVAL);
        assert_string_equal(engine_cpu_isa_name(ENGINE_CPU_AVX512), "avx512");
        assert_string_equal(engine_cpu_isa_name(_ENGINE_CPU_ISA_MAX), "unknown");
        for (int i = 0; i < _ENGINE_CPU_ISA_MAX; i++)
                assert_int_equal(engine_cpu_isa_from_name(engine_cpu_isa_name((EngineCpuIsa)i)), i);
        assert_int_equal(engine_cpu_isa_from_name("avx"), -EINVAL);
        assert_int_equal(engine_cpu_isa_from_name(NULL), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_float_types),
                cmocka_unit_test(test_block32_types),
                cmocka_unit_test(test_k_types),
                cmocka_unit_test(test_swiglu),
                cmocka_unit_test(test_attend),
                cmocka_unit_test(test_matmul_errors),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
