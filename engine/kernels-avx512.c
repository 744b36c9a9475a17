/* SPDX-License-Identifier: MIT */
/*
 * AVX-512 (F, BW, VL, DQ, VNNI) kernels, built with per-function target attributes like kernels-avx2.c.
 *
 * DESIGN
 * As the AVX2 gemm (one weight row against tiles of up to four tokens, the same operations for every token of
 * a tile), but two 32-element blocks go through one 512-bit register: the integer dot products are one VNNI
 * dpbusd (unsigned weights × signed activations, four products summed per lane), and the per-block scales
 * are a vector [d0 × 8 lanes, d1 × 8 lanes]. An odd last block takes the 256-bit path.
 */

#include <immintrin.h>
#include <math.h>

#include "kernels.h"

#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define TILE 4

static inline AVX512 __m256i unpack_nibbles(const uint8_t *qs) {
        __m128i b = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0xf);
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

static inline AVX512 __m256i fifth_bits(const uint8_t *qh) {
        uint32_t x;
        memcpy(&x, qh, 4);
        return _mm256_maskz_set1_epi8((__mmask32)x, 0x10);
}

static inline __attribute__((always_inline)) AVX512 __m256i decode32(uint32_t type, const uint8_t *row, uint64_t b,
                                                                    float *ret_d, float *ret_m) {
        switch (type) {
        case GGML_TYPE_Q4_0: {
                const BlockQ4_0 *x = (const BlockQ4_0 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = -8.0f * *ret_d;
                return unpack_nibbles(x->qs);
        }
        case GGML_TYPE_Q4_1: {
                const BlockQ4_1 *x = (const BlockQ4_1 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = _cvtsh_ss(x->m);
                return unpack_nibbles(x->qs);
        }
        case GGML_TYPE_Q5_0: {
                const BlockQ5_0 *x = (const BlockQ5_0 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = -16.0f * *ret_d;
                return _mm256_or_si256(unpack_nibbles(x->qs), fifth_bits(x->qh));
        }
        case GGML_TYPE_Q5_1: {
                const BlockQ5_1 *x = (const BlockQ5_1 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = _cvtsh_ss(x->m);
                return _mm256_or_si256(unpack_nibbles(x->qs), fifth_bits(x->qh));
        }
        default: {
                const BlockQ8_0 *x = (const BlockQ8_0 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = 0;
                return _mm256_loadu_si256((const __m256i *)x->qs);
        }
        }
}

/* Signed weights (Q8_0) go into dpbusd as |w| with the activation's sign flipped where w < 0. */
static inline __attribute__((always_inline)) AVX512 __m512i idot64(uint32_t type, __m512i w, __m512i a) {
        if (type == GGML_TYPE_Q8_0) {
                __mmask64 neg = _mm512_movepi8_mask(w);
                a = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
                w = _mm512_abs_epi8(w);
        }
        return _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a);
}

static inline __attribute__((always_inline)) AVX512 __m256i idot32(uint32_t type, __m256i w, __m256i a) {
        if (type == GGML_TYPE_Q8_0) {
                a = _mm256_sign_epi8(a, w);
                w = _mm256_abs_epi8(w);
        }
        return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a);
}

static inline __attribute__((always_inline)) AVX512 void gemm_q32(uint32_t type, uint64_t n, const uint8_t *w,
                                                                  size_t w_stride, uint32_t n_rows,
                                                                  const uint8_t *a, size_t a_stride,
                                                                  uint32_t n_act, float *y, size_t y_stride) {
        uint64_t nb = n / 32;
        const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);

        for (uint32_t r = 0; r < n_rows; r++) {
                const uint8_t *wr = w + r * w_stride;
                for (uint32_t t0 = 0; t0 < n_act; t0 += TILE) {
                        uint32_t nt = MIN(TILE, n_act - t0);
                        __m512 acc[TILE] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                                             _mm512_setzero_ps() };
                        float extra[TILE] = {};
                        uint64_t b = 0;
                        for (; b + 2 <= nb; b += 2) {
                                float d0, m0, d1, m1;
                                __m256i w0 = decode32(type, wr, b, &d0, &m0), w1 = decode32(type, wr, b + 1, &d1, &m1);
                                __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1);
                                __m512 dw = _mm512_insertf32x8(_mm512_set1_ps(d0), _mm256_set1_ps(d1), 1);
                                for (uint32_t t = 0; t < nt; t++) {
                                        const uint8_t *at = a + (t0 + t) * a_stride;
                                        const float *da = act_q8_d(at, n) + b;
                                        __m512i dot = idot64(type, wv, _mm512_loadu_si512(at + b * 32));
                                        __m512 sa = _mm512_permutexvar_ps(
                                                pick, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double *)da))));
                                        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, sa), acc[t]);
                                        if (type != GGML_TYPE_Q8_0) {
                                                const float *sa2 = act_q8_s(at, n) + b;
                                                extra[t] += m0 * sa2[0];
                                                extra[t] += m1 * sa2[1];
                                        }
                                }
                        }
                        for (; b < nb; b++) {
                                float d0, m0;
                                __m256i wv = decode32(type, wr, b, &d0, &m0);
                                for (uint32_t t = 0; t < nt; t++) {
                                        const uint8_t *at = a + (t0 + t) * a_stride;
                                        __m256i dot = idot32(type, wv, _mm256_loadu_si256((const __m256i *)(at + b * 32)));
                                        __m512 f = _mm512_castps256_ps512(_mm256_mul_ps(
                                                _mm256_cvtepi32_ps(dot), _mm256_set1_ps(d0 * act_q8_d(at, n)[b])));
                                        acc[t] = _mm512_add_ps(acc[t], _mm512_maskz_mov_ps(0xff, f));
                                        if (type != GGML_TYPE_Q8_0)
                                                extra[t] += m0 * act_q8_s(at, n)[b];
                                }
                        }
                        for (uint32_t t = 0; t < nt; t++)
                                y[(t0 + t) * y_stride + r] = _mm512_reduce_add_ps(acc[t]) + extra[t];
                }
        }
}

#define DEFINE_GEMM_Q32(name, type)                                                                             \
        static AVX512 void name(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows,                \
                                const uint8_t *a, size_t a_stride, uint32_t n_act, float *y, size_t y_stride) { \
                gemm_q32(type, n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);                        \
        }

DEFINE_GEMM_Q32(gemm_q4_0, GGML_TYPE_Q4_0)
DEFINE_GEMM_Q32(gemm_q4_1, GGML_TYPE_Q4_1)
DEFINE_GEMM_Q32(gemm_q5_0, GGML_TYPE_Q5_0)
DEFINE_GEMM_Q32(gemm_q5_1, GGML_TYPE_Q5_1)
DEFINE_GEMM_Q32(gemm_q8_0, GGML_TYPE_Q8_0)

/* ---- float weights: 16 at a time, the tail masked ---- */

static inline __attribute__((always_inline)) AVX512 __m512 load16(uint32_t type, const uint8_t *w, uint64_t i,
                                                                 __mmask16 m) {
        switch (type) {
        case GGML_TYPE_F16:
                return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + 2 * i));
        case GGML_TYPE_BF16:
                return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w + 2 * i)), 16));
        default:
                return _mm512_maskz_loadu_ps(m, (const float *)w + i);
        }
}

static inline __attribute__((always_inline)) AVX512 void gemm_float(uint32_t type, uint64_t n, const uint8_t *w,
                                                                    size_t w_stride, uint32_t n_rows,
                                                                    const uint8_t *a, size_t a_stride,
                                                                    uint32_t n_act, float *y, size_t y_stride) {
        for (uint32_t r = 0; r < n_rows; r++) {
                const uint8_t *wr = w + r * w_stride;
                for (uint32_t t0 = 0; t0 < n_act; t0 += TILE) {
                        uint32_t nt = MIN(TILE, n_act - t0);
                        __m512 acc[TILE] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                                             _mm512_setzero_ps() };
                        for (uint64_t i = 0; i < n; i += 16) {
                                __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
                                __m512 wv = load16(type, wr, i, m);
                                for (uint32_t t = 0; t < nt; t++) {
                                        const float *x = (const float *)(a + (t0 + t) * a_stride);
                                        acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + i), acc[t]);
                                }
                        }
                        for (uint32_t t = 0; t < nt; t++)
                                y[(t0 + t) * y_stride + r] = _mm512_reduce_add_ps(acc[t]);
                }
        }
}

static AVX512 void gemm_f32(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a,
                            size_t a_stride, uint32_t n_act, float *y, size_t y_stride) {
        gemm_float(GGML_TYPE_F32, n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);
}

static AVX512 void gemm_f16(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a,
                            size_t a_stride, uint32_t n_act, float *y, size_t y_stride) {
        gemm_float(GGML_TYPE_F16, n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);
}

static AVX512 void gemm_bf16(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a,
                             size_t a_stride, uint32_t n_act, float *y, size_t y_stride) {
        gemm_float(GGML_TYPE_BF16, n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);
}

const CpuKernels cpu_kernels_avx512 = {
        .isa = ENGINE_CPU_AVX512,
        .gemm = {
                [GGML_TYPE_F32] = gemm_f32,
                [GGML_TYPE_F16] = gemm_f16,
                [GGML_TYPE_BF16] = gemm_bf16,
                [GGML_TYPE_Q4_0] = gemm_q4_0,
                [GGML_TYPE_Q4_1] = gemm_q4_1,
                [GGML_TYPE_Q5_0] = gemm_q5_0,
                [GGML_TYPE_Q5_1] = gemm_q5_1,
                [GGML_TYPE_Q8_0] = gemm_q8_0,
        },
};
