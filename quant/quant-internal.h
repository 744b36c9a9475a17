/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * quant: what the files of the quantizer share and nobody outside needs: binary16 and bfloat16 conversions,
 * rounding, and the per-type row functions behind quant_row().
 *
 * Everything here is pure and may be called from any thread.
 */

#include <math.h>
#include <string.h>

#include "quant.h"

/* The binary16 conversions stay here until the engine exposes its own; then these go. */

/* float -> binary16, rounding to nearest even, with subnormals, overflow to infinity and quiet NaNs. */
static inline GgmlHalf quant_fp32_to_fp16(float f) {
        uint32_t x, ax, sign;

        memcpy(&x, &f, sizeof(x));
        sign = (x >> 16) & 0x8000u;
        ax = x & 0x7fffffffu;
        if (ax > 0x7f800000u) /* NaN: keep the top of the payload, make it quiet */
                return (GgmlHalf)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
        if (ax >= 0x477ff000u) /* 65520 and above round to infinity */
                return (GgmlHalf)(sign | 0x7c00u);
        if (ax >= 0x38800000u) { /* normal binary16: rebias the exponent, round the 13 dropped bits */
                ax -= 112u << 23;
                return (GgmlHalf)(sign | ((ax + 0x0fffu + ((ax >> 13) & 1u)) >> 13));
        }
        /* Subnormal (or zero): adding 0.5 leaves exactly the bits of x / 2^-24 rounded to nearest even in
         * the low mantissa, because the spacing of floats in [0.5, 1) is 2^-24. */
        float a, t;
        uint32_t tb;
        memcpy(&a, &ax, sizeof(a));
        t = a + 0.5f;
        memcpy(&tb, &t, sizeof(tb));
        return (GgmlHalf)(sign | (tb - 0x3f000000u));
}

/* binary16 -> float, exact. */
static inline float quant_fp16_to_fp32(GgmlHalf h) {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
        float f;

        if (e == 0x1f)
                x = sign | 0x7f800000u | (m << 13);
        else if (e != 0)
                x = sign | ((e + 112u) << 23) | (m << 13);
        else {
                /* zero or subnormal: m * 2^-24 is exact in float */
                f = (float)m * 0x1p-24f;
                return sign ? -f : f;
        }
        memcpy(&f, &x, sizeof(f));
        return f;
}

/* float -> bfloat16, rounding to nearest even; NaNs stay NaNs (quiet). */
static inline uint16_t quant_fp32_to_bf16(float f) {
        uint32_t x;

        memcpy(&x, &f, sizeof(x));
        if ((x & 0x7fffffffu) > 0x7f800000u)
                return (uint16_t)((x >> 16) | 64u);
        return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* Rounds to the nearest integer, ties to even (the default rounding mode), for |f| < 2^31. */
static inline int quant_nearest_int(float f) {
        return (int)lrintf(f);
}

/* v limited to lo..hi; a function so that v is evaluated once. */
static inline int clampi(int v, int lo, int hi) {
        return v < lo ? lo : v > hi ? hi : v;
}

/* Groups whose largest magnitude is below this are stored as zeros. */
#define QUANT_GROUP_MAX_EPS 1e-15f

/* One row function per type: n elements from x (a multiple of the block size) into y. */
typedef void (*QuantRowFunc)(const float *x, void *y, size_t n);

void quant_row_f16_ref(const float *x, void *y, size_t n);
void quant_row_bf16_ref(const float *x, void *y, size_t n);
void quant_row_q8_0_ref(const float *x, void *y, size_t n);
void quant_row_q4_0_ref(const float *x, void *y, size_t n);
void quant_row_q4_1_ref(const float *x, void *y, size_t n);
void quant_row_q5_0_ref(const float *x, void *y, size_t n);
void quant_row_q5_1_ref(const float *x, void *y, size_t n);
void quant_row_q2_k_ref(const float *x, void *y, size_t n);
void quant_row_q3_k_ref(const float *x, void *y, size_t n);
void quant_row_q4_k_ref(const float *x, void *y, size_t n);
void quant_row_q5_k_ref(const float *x, void *y, size_t n);
void quant_row_q6_k_ref(const float *x, void *y, size_t n);
void quant_row_iq4_nl_ref(const float *x, void *y, size_t n);
