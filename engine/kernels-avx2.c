/* SPDX-License-Identifier: MIT */
/*
 * AVX2 + FMA + F16C kernels. Every function carries its target attribute, so the file builds into a binary
 * that runs anywhere and is only called after kernels.c checked the CPU.
 *
 * DESIGN
 * A gemm walks the weight rows and, for each, up to four activation rows at once, so that a weight block is
 * decoded once for four tokens. Each (row, token) dot product is computed with the same sequence of operations
 * whatever the tile, so a token's result does not depend on how many others share its batch (decoding is
 * bit-for-bit repeatable). 32-element blocks are decoded to 32 bytes (unsigned nibbles, or signed int8 for
 * Q8_0), multiplied with the int8 activations by maddubs/madd, and scaled in float; the weight minimum or
 * offset is applied through the activation block sums, one scalar multiply-add per block.
 */

#include <immintrin.h>
#include <math.h>

#define SIMD_TARGET "avx2,fma,f16c"
#define SIMD_AVX512 0

#include "kernels-kquant.h"
#include "kernels-simd.h"
#include "kernels.h"

#define AVX2 __attribute__((target(SIMD_TARGET)))
#define TILE 4

/* Two floats from an address of any alignment, the upper lanes zero. */
static inline AVX2 __m128 load2f(const float *p) {
        return _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)p));
}


static inline AVX2 float hsum256(__m256 v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
}

/* ---- float weights ---- */

static inline AVX2 __m256 load8(uint32_t type, const uint8_t *w, uint64_t i) {
        switch (type) {
        case GGML_TYPE_F16:
                return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * i)));
        case GGML_TYPE_BF16:
                return _mm256_castsi256_ps(
                        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * i))), 16));
        default:
                return _mm256_loadu_ps((const float *)w + i);
        }
}

static inline AVX2 float load1(uint32_t type, const uint8_t *w, uint64_t i) {
        switch (type) {
        case GGML_TYPE_F16:
                return _cvtsh_ss(((const uint16_t *)w)[i]);
        case GGML_TYPE_BF16:
                return engine_bf16_to_f32(((const uint16_t *)w)[i]);
        default:
                return ((const float *)w)[i];
        }
}

static inline __attribute__((always_inline)) AVX2 void gemm_float(uint32_t type, uint64_t n, const uint8_t *w,
                                                                  size_t w_stride, uint32_t n_rows, const uint8_t *a,
                                                                  size_t a_stride, uint32_t n_act, float *y,
                                                                  size_t y_stride) {
        for (uint32_t r = 0; r < n_rows; r++) {
                const uint8_t *wr = w + r * w_stride;
                for (uint32_t t0 = 0; t0 < n_act; t0 += TILE) {
                        uint32_t nt = MIN(TILE, n_act - t0);
                        __m256 acc[TILE] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                                             _mm256_setzero_ps() };
                        uint64_t i = 0;
                        for (; i + 8 <= n; i += 8) {
                                __m256 wv = load8(type, wr, i);
                                for (uint32_t t = 0; t < nt; t++) {
                                        const float *x = (const float *)(a + (t0 + t) * a_stride);
                                        acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), acc[t]);
                                }
                        }
                        for (uint32_t t = 0; t < nt; t++) {
                                const float *x = (const float *)(a + (t0 + t) * a_stride);
                                float sum = hsum256(acc[t]);
                                for (uint64_t j = i; j < n; j++)
                                        sum += load1(type, wr, j) * x[j];
                                y[(t0 + t) * y_stride + r] = sum;
                        }
                }
        }
}

static AVX2 void gemm_f32(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a,
                          size_t a_stride, uint32_t n_act, float *y, size_t y_stride) {
        gemm_float(GGML_TYPE_F32, n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);
}

static AVX2 void gemm_f16(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a,
                          size_t a_stride, uint32_t n_act, float *y, size_t y_stride) {
        gemm_float(GGML_TYPE_F16, n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);
}

static AVX2 void gemm_bf16(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a,
                           size_t a_stride, uint32_t n_act, float *y, size_t y_stride) {
        gemm_float(GGML_TYPE_BF16, n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);
}

/* ---- 32-element block weights ---- */

static inline __attribute__((always_inline)) AVX2 __m256 idot32(uint32_t type, __m256i w, const int8_t *x) {
        __m256i a = _mm256_loadu_si256((const __m256i *)x), p;

        if (type == GGML_TYPE_Q8_0)
                p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
        else
                p = _mm256_maddubs_epi16(w, a);
        return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* Two blocks per step with their own accumulators, and the minimum term in a vector: with one token there is
 * nothing else to overlap, so a step must not be one long chain of dependent multiply-adds. */
static inline __attribute__((always_inline)) AVX2 void gemm_q32(uint32_t type, size_t block_size, uint64_t n,
                                                                const uint8_t *w, size_t w_stride, uint32_t n_rows,
                                                                const uint8_t *a, size_t a_stride, uint32_t n_act,
                                                                float *y, size_t y_stride) {
        uint64_t nb = n / 32;
        bool has_min = type != GGML_TYPE_Q8_0;

        for (uint32_t r = 0; r < n_rows; r++) {
                const uint8_t *wr = w + r * w_stride;
                for (uint32_t t0 = 0; t0 < n_act; t0 += TILE) {
                        uint32_t nt = MIN(TILE, n_act - t0);
                        __m256 acc0[TILE], acc1[TILE];
                        __m128 mx[TILE];
                        for (uint32_t t = 0; t < TILE; t++) {
                                acc0[t] = acc1[t] = _mm256_setzero_ps();
                                mx[t] = _mm_setzero_ps();
                        }
                        uint64_t b = 0;
                        for (; b + 2 <= nb; b += 2) {
                                float d0, m0, d1, m1;
                                __m256i w0 = q32_decode(type, wr, b, &d0, &m0), w1 = q32_decode(type, wr, b + 1, &d1, &m1);
                                __m128 mv = _mm_setr_ps(m0, m1, 0, 0);
                                for (uint32_t t = 0; t < nt; t++) {
                                        const uint8_t *at = a + (t0 + t) * a_stride;
                                        const float *da = act_q8_d(at, n) + b;
                                        acc0[t] = _mm256_fmadd_ps(idot32(type, w0, (const int8_t *)at + b * 32),
                                                                  _mm256_set1_ps(d0 * da[0]), acc0[t]);
                                        acc1[t] = _mm256_fmadd_ps(idot32(type, w1, (const int8_t *)at + b * 32 + 32),
                                                                  _mm256_set1_ps(d1 * da[1]), acc1[t]);
                                        if (has_min)
                                                mx[t] = _mm_fmadd_ps(mv, load2f(act_q8_s(at, n) + b), mx[t]);
                                }
                        }
                        for (; b < nb; b++) {
                                float d0, m0;
                                __m256i w0 = q32_decode(type, wr, b, &d0, &m0);
                                for (uint32_t t = 0; t < nt; t++) {
                                        const uint8_t *at = a + (t0 + t) * a_stride;
                                        acc0[t] = _mm256_fmadd_ps(idot32(type, w0, (const int8_t *)at + b * 32),
                                                                  _mm256_set1_ps(d0 * act_q8_d(at, n)[b]), acc0[t]);
                                        if (has_min)
                                                mx[t] = _mm_fmadd_ps(_mm_set_ss(m0), _mm_load_ss(act_q8_s(at, n) + b), mx[t]);
                                }
                        }
                        for (uint32_t t = 0; t < nt; t++) {
                                __m128 s = mx[t];
                                s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                                s = _mm_add_ss(s, _mm_movehdup_ps(s));
                                y[(t0 + t) * y_stride + r] = hsum256(_mm256_add_ps(acc0[t], acc1[t])) + _mm_cvtss_f32(s);
                        }
                }
        }
        (void)block_size;
}

#define DEFINE_GEMM_Q32(name, type, block)                                                                      \
        static AVX2 void name(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a, \
                              size_t a_stride, uint32_t n_act, float *y, size_t y_stride) {                     \
                gemm_q32(type, sizeof(block), n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);         \
        }

DEFINE_GEMM_Q32(gemm_q4_0, GGML_TYPE_Q4_0, BlockQ4_0)
DEFINE_GEMM_Q32(gemm_q4_1, GGML_TYPE_Q4_1, BlockQ4_1)
DEFINE_GEMM_Q32(gemm_q5_0, GGML_TYPE_Q5_0, BlockQ5_0)
DEFINE_GEMM_Q32(gemm_q5_1, GGML_TYPE_Q5_1, BlockQ5_1)
DEFINE_GEMM_Q32(gemm_q8_0, GGML_TYPE_Q8_0, BlockQ8_0)

/* ---- K-quant weights (Q2_K … Q6_K) with Q8_K activations ---- */

/* One decoded super-block against one token's Q8_K block, accumulated into acc (see kernels-kquant.h). */
static inline __attribute__((always_inline)) AVX2 __m256 kdot(const KSuper *k, const BlockQ8_K *a, __m256 acc) {
        __m256i isum = _mm256_setzero_si256();

        for (int r = 0; r < 8; r++) {
                __m256i p = _mm256_maddubs_epi16(k->q[r], _mm256_loadu_si256((const __m256i *)(a->qs + 32 * r)));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, k->scv[r]));
        }
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(a->d * k->d), acc);
        return _mm256_fnmadd_ps(_mm256_cvtepi32_ps(kq_coef_dot(k, a)), _mm256_set1_ps(a->d * k->dm), acc);
}

static inline __attribute__((always_inline)) AVX2 void gemm_k(uint32_t type, size_t block_size, uint64_t n,
                                                              const uint8_t *w, size_t w_stride, uint32_t n_rows,
                                                              const uint8_t *a, size_t a_stride, uint32_t n_act,
                                                              float *y, size_t y_stride) {
        uint64_t nb = n / QK_K;

        for (uint32_t r = 0; r < n_rows; r++) {
                const uint8_t *wr = w + r * w_stride;
                for (uint32_t t0 = 0; t0 < n_act; t0 += TILE) {
                        uint32_t nt = MIN(TILE, n_act - t0);
                        __m256 acc[TILE] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                                             _mm256_setzero_ps() };
                        for (uint64_t b = 0; b < nb; b++) {
                                KSuper k;
                                kq_decode(type, wr + b * block_size, &k);
                                for (uint32_t t = 0; t < nt; t++)
                                        acc[t] = kdot(&k, (const BlockQ8_K *)(a + (t0 + t) * a_stride) + b, acc[t]);
                        }
                        for (uint32_t t = 0; t < nt; t++)
                                y[(t0 + t) * y_stride + r] = hsum256(acc[t]);
                }
        }
}

#define DEFINE_GEMM_K(name, type, block)                                                                        \
        static AVX2 void name(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a, \
                              size_t a_stride, uint32_t n_act, float *y, size_t y_stride) {                     \
                gemm_k(type, sizeof(block), n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);           \
        }

DEFINE_GEMM_K(gemm_q2_k, GGML_TYPE_Q2_K, BlockQ2_K)
DEFINE_GEMM_K(gemm_q3_k, GGML_TYPE_Q3_K, BlockQ3_K)
DEFINE_GEMM_K(gemm_q4_k, GGML_TYPE_Q4_K, BlockQ4_K)
DEFINE_GEMM_K(gemm_q5_k, GGML_TYPE_Q5_K, BlockQ5_K)
DEFINE_GEMM_K(gemm_q6_k, GGML_TYPE_Q6_K, BlockQ6_K)

/* ---- activation quantization ---- */

static AVX2 void quantize_act_q8(const float *x, uint8_t *dst, uint64_t n) {
        int8_t *qs = (int8_t *)dst;
        float *d = (float *)(dst + n), *s = d + n / 32;
        const __m256 sign = _mm256_set1_ps(-0.0f);

        for (uint64_t b = 0; b < n / 32; b++) {
                __m256 v[4], amax = _mm256_setzero_ps();
                for (int k = 0; k < 4; k++) {
                        v[k] = _mm256_loadu_ps(x + b * 32 + k * 8);
                        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
                }
                __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
                m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                m = _mm_max_ss(m, _mm_movehdup_ps(m));
                float db = _mm_cvtss_f32(m) / 127.0f, id = db != 0 ? 1.0f / db : 0;
                __m256i qi[4];
                for (int k = 0; k < 4; k++)
                        qi[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], _mm256_set1_ps(id)));
                /* Sum of the 32 integers, for the block sum. */
                __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
                __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
                s4 = _mm_hadd_epi32(s4, s4);
                s4 = _mm_hadd_epi32(s4, s4);
                /* Pack to int8 keeping element order (packs interleave 128-bit lanes; permute undoes it). */
                __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]), p23 = _mm256_packs_epi32(qi[2], qi[3]);
                __m256i p = _mm256_packs_epi16(p01, p23);
                p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256((__m256i *)(qs + b * 32), p);
                d[b] = db;
                s[b] = db * (float)_mm_cvtsi128_si32(s4);
        }
}

/* As quantize_act_q8_k_scalar(), bit for bit: the same scale, and cvtps rounds to nearest even as lrintf()
 * does in the default rounding mode. */
static AVX2 void quantize_act_q8_k(const float *x, uint8_t *dst, uint64_t n) {
        BlockQ8_K *y = (BlockQ8_K *)dst;
        const __m256 sign = _mm256_set1_ps(-0.0f);

        for (uint64_t b = 0; b < n / QK_K; b++, x += QK_K) {
                __m256 amax = _mm256_setzero_ps();
                for (int i = 0; i < QK_K; i += 8)
                        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
                __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
                m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                m = _mm_max_ss(m, _mm_movehdup_ps(m));
                float d = _mm_cvtss_f32(m) / 127.0f, id = d != 0 ? 1.0f / d : 0;
                __m256 vid = _mm256_set1_ps(id);
                y[b].d = d;
                for (int i = 0; i < QK_K; i += 32) {
                        __m256i qi[4];
                        for (int k = 0; k < 4; k++)
                                qi[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * k), vid));
                        /* Group sums of 16: elements i..i+15 are qi[0], qi[1]; i+16..i+31 are qi[2], qi[3]. */
                        for (int g = 0; g < 2; g++) {
                                __m256i s8 = _mm256_add_epi32(qi[2 * g], qi[2 * g + 1]);
                                __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
                                s4 = _mm_hadd_epi32(s4, s4);
                                s4 = _mm_hadd_epi32(s4, s4);
                                y[b].bsums[i / 16 + g] = (int16_t)_mm_cvtsi128_si32(s4);
                        }
                        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
                        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                        _mm256_storeu_si256((__m256i *)(y[b].qs + i), p);
                }
        }
}

/* ---- SwiGLU ---- */

static AVX2 void swiglu_avx2(float *g, const float *u, uint32_t n) {
        uint32_t i = 0;

        for (; i + 8 <= n; i += 8) {
                __m256 x = _mm256_loadu_ps(g + i);
                __m256 sig = _mm256_div_ps(_mm256_set1_ps(1.0f),
                                           _mm256_add_ps(_mm256_set1_ps(1.0f), exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
                _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_mul_ps(x, sig), _mm256_loadu_ps(u + i)));
        }
        for (; i < n; i++)
                g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* ---- attention ---- */

static inline AVX2 __m256 load_kv8(uint32_t kv_type, const uint8_t *p, uint32_t i) {
        if (kv_type == GGML_TYPE_F16)
                return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
        return _mm256_loadu_ps((const float *)p + i);
}

static AVX2 void attend1_avx2(const float *q, const uint8_t *k, const uint8_t *v, size_t kv_stride,
                              uint32_t kv_type, uint32_t n_pos, uint32_t head_dim, float scale, float *scores,
                              float *out) {
        float max = -INFINITY, sum = 0;

        for (uint32_t p = 0; p < n_pos; p++) {
                const uint8_t *kp = k + p * kv_stride;
                __m256 acc = _mm256_setzero_ps();
                for (uint32_t i = 0; i < head_dim; i += 8)
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load_kv8(kv_type, kp, i), acc);
                scores[p] = hsum256(acc) * scale;
                max = fmaxf(max, scores[p]);
        }
        uint32_t p = 0;
        __m256 vsum = _mm256_setzero_ps(), vmax = _mm256_set1_ps(max);
        for (; p + 8 <= n_pos; p += 8) {
                __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(scores + p), vmax));
                _mm256_storeu_ps(scores + p, e);
                vsum = _mm256_add_ps(vsum, e);
        }
        sum = hsum256(vsum);
        for (; p < n_pos; p++) {
                scores[p] = expf(scores[p] - max);
                sum += scores[p];
        }
        for (uint32_t i = 0; i < head_dim; i++)
                out[i] = 0;
        float inv = 1.0f / sum;
        for (p = 0; p < n_pos; p++) {
                const uint8_t *vp = v + p * kv_stride;
                __m256 a = _mm256_set1_ps(scores[p] * inv);
                for (uint32_t i = 0; i < head_dim; i += 8)
                        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(a, load_kv8(kv_type, vp, i),
                                                                  _mm256_loadu_ps(out + i)));
        }
}

static AVX2 void attend_avx2(const float *q, uint32_t n_q, const uint8_t *k, const uint8_t *v, size_t kv_stride,
                             uint32_t kv_type, uint32_t n_pos, uint32_t head_dim, float scale, float *scores,
                             float *out) {
        if (head_dim % 8) {
                cpu_kernels_scalar.attend(q, n_q, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores, out);
                return;
        }
        for (uint32_t i = 0; i < n_q; i++)
                attend1_avx2(q + (size_t)i * head_dim, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores,
                             out + (size_t)i * head_dim);
}

const CpuKernels cpu_kernels_avx2 = {
        .isa = ENGINE_CPU_AVX2,
        .gemm = {
                [GGML_TYPE_F32] = gemm_f32,
                [GGML_TYPE_F16] = gemm_f16,
                [GGML_TYPE_BF16] = gemm_bf16,
                [GGML_TYPE_Q4_0] = gemm_q4_0,
                [GGML_TYPE_Q4_1] = gemm_q4_1,
                [GGML_TYPE_Q5_0] = gemm_q5_0,
                [GGML_TYPE_Q5_1] = gemm_q5_1,
                [GGML_TYPE_Q8_0] = gemm_q8_0,
                [GGML_TYPE_Q2_K] = gemm_q2_k,
                [GGML_TYPE_Q3_K] = gemm_q3_k,
                [GGML_TYPE_Q4_K] = gemm_q4_k,
                [GGML_TYPE_Q5_K] = gemm_q5_k,
                [GGML_TYPE_Q6_K] = gemm_q6_k,
        },
        .quantize = {
                [ACT_Q8] = quantize_act_q8,
                [ACT_Q8_K] = quantize_act_q8_k,
        },
        .attend = attend_avx2,
        .swiglu = swiglu_avx2,
};
