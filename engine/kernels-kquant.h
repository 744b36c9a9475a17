/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Internal to engine/: SIMD decoding of the K-quant super-blocks (Q2_K … Q6_K), shared by the AVX2 and AVX-512
 * kernel files. Included only from files built with per-function target attributes; the functions here carry
 * the AVX2 target and inline into AVX-512 callers (a superset).
 *
 * DESIGN
 * Every K-quant type decodes into one shape, so that one dot-product loop serves all five: 256 unsigned weights
 * in element order (eight 32-byte registers), a signed 16-bit scale per 16 elements, and a coefficient per 16
 * elements for the activation's group sums (BlockQ8_K.bsums). A super-block against Q8_K activations is then
 *
 *     x.d × (d × Σ_g scale_g × Σ_{e in g} q_e x_e  -  dm × Σ_g coef_g × bsum_g)
 *
 * where for the types with a minimum (Q2_K, Q4_K, Q5_K) coef is the minimum and dm = dmin, and for the types
 * with signed weights (Q3_K: q - 4, Q6_K: q - 32) the weights are kept unsigned (so that maddubs, which wants
 * one unsigned operand, takes them) and the offset goes through the group sums: coef = scale, dm = d × offset.
 * Groups of 32 (Q4_K, Q5_K) are two groups of 16 with the same scale.
 */

#include <immintrin.h>

#include "kernels.h"

#define KQ_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

typedef struct KSuper {
        __m256i q[8];   /* 256 weights, unsigned, element order */
        __m256i scv[8]; /* for q[r]: the scales of its two groups of 16, eight 16-bit lanes each */
        __m256i coef;   /* 16 × int16, one per group of 16 */
        float d, dm;
} KSuper;

KQ_INLINE __m256i kq_bytes(uint8_t v) {
        return _mm256_set1_epi8((char)v);
}

/* Bits (v >> shift) & mask of every byte. */
KQ_INLINE __m256i kq_bits(__m256i v, int shift, uint8_t mask) {
        return _mm256_and_si256(_mm256_srli_epi16(v, shift), kq_bytes(mask));
}

KQ_INLINE void kq_scales16(KSuper *k, const int16_t *sc) {
        for (int r = 0; r < 8; r++)
                k->scv[r] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * r + 1]), _mm_set1_epi16(sc[2 * r]));
}

/* The 6-bit scales and minimums of Q4_K and Q5_K, each repeated for the two groups of 16 of its group of 32. */
KQ_INLINE void kq_scale_min_k4(const uint8_t *s, int16_t *sc, int16_t *mn) {
        for (int j = 0; j < 8; j++) {
                int a, m;
                if (j < 4) {
                        a = s[j] & 63;
                        m = s[j + 4] & 63;
                } else {
                        a = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
                        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
                }
                sc[2 * j] = sc[2 * j + 1] = (int16_t)a;
                mn[2 * j] = mn[2 * j + 1] = (int16_t)m;
        }
}

KQ_INLINE void kq_decode(uint32_t type, const uint8_t *block, KSuper *k) {
        _Alignas(32) int16_t sc[16], mn[16];

        switch (type) {
        case GGML_TYPE_Q2_K: {
                const BlockQ2_K *x = (const BlockQ2_K *)block;
                __m128i s = _mm_loadu_si128((const __m128i *)x->scales);
                _mm256_store_si256((__m256i *)sc, _mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(0xf))));
                k->coef = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(0xf)));
                for (int h = 0; h < 2; h++) {
                        __m256i q = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
                        for (int r = 0; r < 4; r++)
                                k->q[4 * h + r] = kq_bits(q, 2 * r, 3);
                }
                k->d = _cvtsh_ss(x->d);
                k->dm = _cvtsh_ss(x->dmin);
                break;
        }
        case GGML_TYPE_Q3_K: {
                const BlockQ3_K *x = (const BlockQ3_K *)block;
                for (int g = 0; g < 16; g++) {
                        int lo = g < 8 ? x->scales[g] & 0xf : x->scales[g - 8] >> 4;
                        int hi = (x->scales[8 + g % 4] >> (2 * (g / 4))) & 3;
                        sc[g] = (int16_t)((lo | hi << 4) - 32);
                }
                k->coef = _mm256_load_si256((const __m256i *)sc);
                __m256i hm = _mm256_loadu_si256((const __m256i *)x->hmask);
                for (int h = 0; h < 2; h++) {
                        __m256i q = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
                        for (int r = 0; r < 4; r++) {
                                int R = 4 * h + r;
                                k->q[R] = _mm256_or_si256(kq_bits(q, 2 * r, 3),
                                                          _mm256_slli_epi16(kq_bits(hm, R, 1), 2));
                        }
                }
                k->d = _cvtsh_ss(x->d);
                k->dm = 4.0f * k->d;
                break;
        }
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K: {
                const BlockQ4_K *x4 = (const BlockQ4_K *)block;
                const BlockQ5_K *x5 = (const BlockQ5_K *)block;
                bool five = type == GGML_TYPE_Q5_K;
                kq_scale_min_k4(five ? x5->scales : x4->scales, sc, mn);
                k->coef = _mm256_load_si256((const __m256i *)mn);
                const uint8_t *qs = five ? x5->qs : x4->qs;
                for (int j = 0; j < 4; j++) {
                        __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
                        k->q[2 * j] = _mm256_and_si256(q, kq_bytes(0xf));
                        k->q[2 * j + 1] = kq_bits(q, 4, 0xf);
                }
                if (five) {
                        __m256i qh = _mm256_loadu_si256((const __m256i *)x5->qh);
                        for (int g = 0; g < 8; g++)
                                k->q[g] = _mm256_or_si256(k->q[g], _mm256_slli_epi16(kq_bits(qh, g, 1), 4));
                }
                k->d = _cvtsh_ss(five ? x5->d : x4->d);
                k->dm = _cvtsh_ss(five ? x5->dmin : x4->dmin);
                break;
        }
        default: { /* GGML_TYPE_Q6_K */
                const BlockQ6_K *x = (const BlockQ6_K *)block;
                _mm256_store_si256((__m256i *)sc,
                                   _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales)));
                k->coef = _mm256_load_si256((const __m256i *)sc);
                for (int h = 0; h < 2; h++) {
                        __m256i a = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
                        __m256i b = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
                        __m256i hb = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
                        __m256i m4 = kq_bytes(0xf);
                        k->q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_slli_epi16(kq_bits(hb, 0, 3), 4));
                        k->q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(b, m4), _mm256_slli_epi16(kq_bits(hb, 2, 3), 4));
                        k->q[4 * h + 2] = _mm256_or_si256(kq_bits(a, 4, 0xf), _mm256_slli_epi16(kq_bits(hb, 4, 3), 4));
                        k->q[4 * h + 3] = _mm256_or_si256(kq_bits(b, 4, 0xf), _mm256_slli_epi16(kq_bits(hb, 6, 3), 4));
                }
                k->d = _cvtsh_ss(x->d);
                k->dm = 32.0f * k->d;
                break;
        }
        }
        kq_scales16(k, sc);
}

/* The bsums term of one super-block: Σ_g coef_g × bsum_g, as eight 32-bit partial sums. */
KQ_INLINE __m256i kq_coef_dot(const KSuper *k, const BlockQ8_K *a) {
        return _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), k->coef);
}
