/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Internal to engine/: SIMD code shared by the AVX2 and AVX-512 kernel files: decoding the 32-element block
 * types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and a vectorised exp. Each of them includes this file once, after
 * defining SIMD_TARGET to its target attribute string and SIMD_AVX512 to 0 or 1, so the same code is compiled
 * twice, once per instruction set (kernels.c checks the CPU before either is called).
 *
 * DESIGN
 * A block decodes to 32 bytes in element order: the unsigned quants (nibbles, plus the fifth bit for Q5_*) for
 * the types with an offset or a minimum, Q8_0's signed bytes as they are; its scale d; and the coefficient m of
 * the activation block sum, so that the block's dot product with an ACT_Q8 block (qs, da, s = da × Σ qs) is
 * d × da × Σ q_i x_i + m × s: m is the minimum for Q4_1/Q5_1 and -offset × d for Q4_0 (8) and Q5_0 (16).
 */

#include <immintrin.h>

#include "kernels.h"

#if !defined(SIMD_TARGET) || !defined(SIMD_AVX512)
#error "define SIMD_TARGET and SIMD_AVX512 before including kernels-simd.h"
#endif

#define SIMD_INLINE static inline __attribute__((always_inline, target(SIMD_TARGET)))

/* 16 bytes of nibbles to 32 bytes: elements 0-15 from the low nibbles, 16-31 from the high ones. */
SIMD_INLINE __m256i q32_unpack_nibbles(const uint8_t *qs) {
        __m128i b = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0xf);
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

/* 0x10 in byte j where bit j of the 32 bits at qh is set. */
SIMD_INLINE __m256i q32_fifth_bits(const uint8_t *qh) {
        uint32_t x;
        memcpy(&x, qh, 4);
#if SIMD_AVX512
        return _mm256_maskz_set1_epi8((__mmask32)x, 0x10);
#else
        __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x),
                                        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                          0x0101010101010101, 0x0000000000000000));
        __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
        return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(0x10));
#endif
}

/* Block b of a row of type: the 32 weights, the scale and the block-sum coefficient (see DESIGN). */
SIMD_INLINE __m256i q32_decode(uint32_t type, const uint8_t *row, uint64_t b, float *ret_d, float *ret_m) {
        switch (type) {
        case GGML_TYPE_Q4_0: {
                const BlockQ4_0 *x = (const BlockQ4_0 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = -8.0f * *ret_d;
                return q32_unpack_nibbles(x->qs);
        }
        case GGML_TYPE_Q4_1: {
                const BlockQ4_1 *x = (const BlockQ4_1 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = _cvtsh_ss(x->m);
                return q32_unpack_nibbles(x->qs);
        }
        case GGML_TYPE_Q5_0: {
                const BlockQ5_0 *x = (const BlockQ5_0 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = -16.0f * *ret_d;
                return _mm256_or_si256(q32_unpack_nibbles(x->qs), q32_fifth_bits(x->qh));
        }
        case GGML_TYPE_Q5_1: {
                const BlockQ5_1 *x = (const BlockQ5_1 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = _cvtsh_ss(x->m);
                return _mm256_or_si256(q32_unpack_nibbles(x->qs), q32_fifth_bits(x->qh));
        }
        default: {
                const BlockQ8_0 *x = (const BlockQ8_0 *)row + b;
                *ret_d = _cvtsh_ss(x->d);
                *ret_m = 0;
                return _mm256_loadu_si256((const __m256i *)x->qs);
        }
        }
}

/*
 * e^x for 8 floats, within about 2 ulp for x in [-87, 88] (clamped there: below, the result is ~1e-38 instead
 * of smaller, which softmax and SiLU do not notice). x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor
 * series to r^6 (the next term is < 2e-7 relative), 2^n put straight into the exponent bits.
 */
SIMD_INLINE __m256 exp256(__m256 x) {
        x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
        __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        /* ln 2 in two parts, so that n × ln2_hi is exact. */
        __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
        __m256 p = _mm256_set1_ps(1.0f / 720);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
