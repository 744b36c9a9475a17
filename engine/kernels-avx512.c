/* SPDX-License-Identifier: MIT */
/*
 * AVX-512 (F, BW, VL, DQ, VNNI) kernels, built with per-function target attributes like kernels-avx2.c.
 *
 * DESIGN
 * As the AVX2 gemm (one weight row against tiles of up to four tokens, the same operations for every token of
 * a tile), but two 32-element blocks go through one 512-bit register: the integer dot products are one VNNI
 * dpbusd (unsigned weights × signed activations, four products summed per lane), and the per-block scales
 * are a vector [d0 × 8 lanes, d1 × 8 lanes]. An odd last block takes the 256-bit path.
 *
 * K-quants decode as in the AVX2 file (kernels-kquant.h), and the dot product takes two 32-byte registers of
 * weights at a time: maddubs to 16-bit pairs, then VNNI dpwssd multiplies by the group scales and accumulates.
 */

#include <immintrin.h>
#include <math.h>

#include "kernels-kquant.h"
#include "kernels.h"

#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define TILE 4

/* Two floats from an address of any alignment, the upper lanes zero. */
static inline AVX512 __m128 load2f(const float *p) {
        return _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)p));
}


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

/* Blocks b and b + 1 as one register: 64 weights in element order. */
static inline __attribute__((always_inline)) AVX512 __m512i decode64(uint32_t type, const uint8_t *row, uint64_t b) {
        if (type == GGML_TYPE_Q8_0) {
                const BlockQ8_0 *x = (const BlockQ8_0 *)row + b;
                return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)x[0].qs)),
                                          _mm256_loadu_si256((const __m256i *)x[1].qs), 1);
        }
        size_t bs = type == GGML_TYPE_Q4_0 ? sizeof(BlockQ4_0) : type == GGML_TYPE_Q4_1 ? sizeof(BlockQ4_1)
                  : type == GGML_TYPE_Q5_0 ? sizeof(BlockQ5_0) : sizeof(BlockQ5_1);
        size_t qs_off = type == GGML_TYPE_Q4_0 ? offsetof(BlockQ4_0, qs) : type == GGML_TYPE_Q4_1 ? offsetof(BlockQ4_1, qs)
                      : type == GGML_TYPE_Q5_0 ? offsetof(BlockQ5_0, qs) : offsetof(BlockQ5_1, qs);
        const uint8_t *b0 = row + b * bs, *b1 = b0 + bs;
        /* [qs0, qs1, qs0 >> 4, qs1 >> 4] masked to nibbles, then 128-bit lanes reordered to
         * [lo0, hi0, lo1, hi1]: block 0's elements 0-15 and 16-31, then block 1's. */
        __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + qs_off))),
                                            _mm_loadu_si128((const __m128i *)(b1 + qs_off)), 1);
        __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
        z = _mm512_and_si512(z, _mm512_set1_epi8(0xf));
        z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
        if (type == GGML_TYPE_Q5_0 || type == GGML_TYPE_Q5_1) {
                size_t qh_off = type == GGML_TYPE_Q5_0 ? offsetof(BlockQ5_0, qh) : offsetof(BlockQ5_1, qh);
                uint32_t h0, h1;
                memcpy(&h0, b0 + qh_off, 4);
                memcpy(&h1, b1 + qh_off, 4);
                z = _mm512_or_si512(z, _mm512_maskz_set1_epi8((__mmask64)h0 | (__mmask64)h1 << 32, 0x10));
        }
        return z;
}

/* The scales (dv) and sum coefficients (mv, see decode32) of blocks b … b + count - 1 (count 2 or 4; the
 * other lanes 0). */
static inline __attribute__((always_inline)) AVX512 void scales4(uint32_t type, const uint8_t *row, uint64_t b,
                                                                 int count, __m128 *ret_d, __m128 *ret_m) {
        if (type == GGML_TYPE_Q4_1 || type == GGML_TYPE_Q5_1) {
                /* d and m are adjacent: four 32-bit pairs, converted at once and split. */
                size_t bs = type == GGML_TYPE_Q4_1 ? sizeof(BlockQ4_1) : sizeof(BlockQ5_1);
                const uint8_t *x = row + b * bs;
                uint32_t dm[4] = {};
                for (int i = 0; i < count; i++)
                        memcpy(&dm[i], x + i * bs, 4);
                __m256 f = _mm256_cvtph_ps(_mm_setr_epi32((int)dm[0], (int)dm[1], (int)dm[2], (int)dm[3]));
                __m128 lo = _mm256_castps256_ps128(f), hi = _mm256_extractf128_ps(f, 1);
                *ret_d = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
                *ret_m = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
                return;
        }
        size_t bs = type == GGML_TYPE_Q4_0 ? sizeof(BlockQ4_0) : type == GGML_TYPE_Q5_0 ? sizeof(BlockQ5_0)
                                                                                         : sizeof(BlockQ8_0);
        const uint8_t *x = row + b * bs;
        uint16_t d[4] = {};
        for (int i = 0; i < count; i++)
                memcpy(&d[i], x + i * bs, 2);
        *ret_d = _mm_cvtph_ps(_mm_setr_epi16((short)d[0], (short)d[1], (short)d[2], (short)d[3], 0, 0, 0, 0));
        *ret_m = _mm_mul_ps(*ret_d, _mm_set1_ps(type == GGML_TYPE_Q4_0 ? -8.0f : type == GGML_TYPE_Q5_0 ? -16.0f : 0.0f));
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

static inline __attribute__((always_inline)) AVX512 __m512i join(__m256i lo, __m256i hi) {
        return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/*
 * Four blocks per step, in two 512-bit halves with their own accumulators, and the minimum term of the four in
 * one 128-bit multiply-add: with one token there is nothing else to overlap, so the step must not be one long
 * chain of dependent multiply-adds. A tail of two blocks and one of one block follow.
 */
static inline __attribute__((always_inline)) AVX512 void gemm_q32(uint32_t type, uint64_t n, const uint8_t *w,
                                                                  size_t w_stride, uint32_t n_rows,
                                                                  const uint8_t *a, size_t a_stride,
                                                                  uint32_t n_act, float *y, size_t y_stride) {
        uint64_t nb = n / 32;
        bool has_min = type != GGML_TYPE_Q8_0;
        const __m512i pick01 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        const __m512i pick23 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);

        for (uint32_t r = 0; r < n_rows; r++) {
                const uint8_t *wr = w + r * w_stride;
                for (uint32_t t0 = 0; t0 < n_act; t0 += TILE) {
                        uint32_t nt = MIN(TILE, n_act - t0);
                        __m512 acc0[TILE], acc1[TILE];
                        __m128 mx[TILE];
                        for (uint32_t t = 0; t < TILE; t++) {
                                acc0[t] = acc1[t] = _mm512_setzero_ps();
                                mx[t] = _mm_setzero_ps();
                        }
                        uint64_t b = 0;
                        for (; b + 4 <= nb; b += 4) {
                                __m512i wa = decode64(type, wr, b), wb = decode64(type, wr, b + 2);
                                __m128 dv, mv;
                                scales4(type, wr, b, 4, &dv, &mv);
                                for (uint32_t t = 0; t < nt; t++) {
                                        const uint8_t *at = a + (t0 + t) * a_stride;
                                        __m512 sc = _mm512_castps128_ps512(_mm_mul_ps(dv, _mm_loadu_ps(act_q8_d(at, n) + b)));
                                        __m512i da = idot64(type, wa, _mm512_loadu_si512(at + b * 32));
                                        __m512i db = idot64(type, wb, _mm512_loadu_si512(at + b * 32 + 64));
                                        acc0[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(da), _mm512_permutexvar_ps(pick01, sc), acc0[t]);
                                        acc1[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(db), _mm512_permutexvar_ps(pick23, sc), acc1[t]);
                                        if (has_min)
                                                mx[t] = _mm_fmadd_ps(mv, _mm_loadu_ps(act_q8_s(at, n) + b), mx[t]);
                                }
                        }
                        for (; b + 2 <= nb; b += 2) {
                                __m512i wa = decode64(type, wr, b);
                                __m128 dv, mv;
                                scales4(type, wr, b, 2, &dv, &mv);
                                for (uint32_t t = 0; t < nt; t++) {
                                        const uint8_t *at = a + (t0 + t) * a_stride;
                                        __m128 da2 = load2f(act_q8_d(at, n) + b);
                                        __m512 sc = _mm512_castps128_ps512(_mm_mul_ps(dv, da2));
                                        __m512i da = idot64(type, wa, _mm512_loadu_si512(at + b * 32));
                                        acc0[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(da), _mm512_permutexvar_ps(pick01, sc), acc0[t]);
                                        if (has_min)
                                                mx[t] = _mm_fmadd_ps(mv, load2f(act_q8_s(at, n) + b), mx[t]);
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
                                        acc0[t] = _mm512_add_ps(acc0[t], _mm512_maskz_mov_ps(0xff, f));
                                        if (has_min)
                                                mx[t] = _mm_fmadd_ps(_mm_set_ss(m0), _mm_load_ss(act_q8_s(at, n) + b), mx[t]);
                                }
                        }
                        for (uint32_t t = 0; t < nt; t++) {
                                __m128 s = mx[t];
                                s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                                s = _mm_add_ss(s, _mm_movehdup_ps(s));
                                y[(t0 + t) * y_stride + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t])) +
                                                             _mm_cvtss_f32(s);
                        }
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

/* ---- K-quant weights with Q8_K activations ---- */

static inline __attribute__((always_inline)) AVX512 __m256 kdot(const KSuper *k, const __m512i *w,
                                                               const __m512i *scv, const BlockQ8_K *a, __m256 acc) {
        __m512i isum = _mm512_setzero_si512();

        for (int i = 0; i < 4; i++)
                isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(w[i], _mm512_loadu_si512(a->qs + 64 * i)),
                                           scv[i]);
        __m256i s = _mm256_add_epi32(_mm512_castsi512_si256(isum), _mm512_extracti64x4_epi64(isum, 1));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(a->d * k->d), acc);
        return _mm256_fnmadd_ps(_mm256_cvtepi32_ps(kq_coef_dot(k, a)), _mm256_set1_ps(a->d * k->dm), acc);
}

static inline __attribute__((always_inline)) AVX512 void gemm_k(uint32_t type, size_t block_size, uint64_t n,
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
                                __m512i wv[4], scv[4];
                                kq_decode(type, wr + b * block_size, &k);
                                for (int i = 0; i < 4; i++) {
                                        wv[i] = join(k.q[2 * i], k.q[2 * i + 1]);
                                        scv[i] = join(k.scv[2 * i], k.scv[2 * i + 1]);
                                }
                                for (uint32_t t = 0; t < nt; t++)
                                        acc[t] = kdot(&k, wv, scv, (const BlockQ8_K *)(a + (t0 + t) * a_stride) + b,
                                                      acc[t]);
                        }
                        for (uint32_t t = 0; t < nt; t++) {
                                __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
                                s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                                s = _mm_add_ss(s, _mm_movehdup_ps(s));
                                y[(t0 + t) * y_stride + r] = _mm_cvtss_f32(s);
                        }
                }
        }
}

#define DEFINE_GEMM_K(name, type, block)                                                                        \
        static AVX512 void name(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows,                \
                                const uint8_t *a, size_t a_stride, uint32_t n_act, float *y, size_t y_stride) { \
                gemm_k(type, sizeof(block), n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);           \
        }

DEFINE_GEMM_K(gemm_q2_k, GGML_TYPE_Q2_K, BlockQ2_K)
DEFINE_GEMM_K(gemm_q3_k, GGML_TYPE_Q3_K, BlockQ3_K)
DEFINE_GEMM_K(gemm_q4_k, GGML_TYPE_Q4_K, BlockQ4_K)
DEFINE_GEMM_K(gemm_q5_k, GGML_TYPE_Q5_K, BlockQ5_K)
DEFINE_GEMM_K(gemm_q6_k, GGML_TYPE_Q6_K, BlockQ6_K)

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
                [GGML_TYPE_Q2_K] = gemm_q2_k,
                [GGML_TYPE_Q3_K] = gemm_q3_k,
                [GGML_TYPE_Q4_K] = gemm_q4_k,
                [GGML_TYPE_Q5_K] = gemm_q5_k,
                [GGML_TYPE_Q6_K] = gemm_q6_k,
        },
};
