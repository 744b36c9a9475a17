/* SPDX-License-Identifier: MIT */
/*
 * Reference quantizers for the types with one scale per block of 32 (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and for
 * binary16 and bfloat16.
 *
 * DESIGN
 * These must give exactly the bytes that ggml's reference quantizers and the PyPI gguf package give, so the
 * arithmetic follows theirs step by step in float: the scale from the block's extreme value divided in
 * float, its reciprocal (0 for an all-zero block), the product with each element, then truncation after
 * adding the offset plus one half (or roundf() for Q8_0). The build forbids contracting a*b+c into an FMA,
 * which would round differently.
 */

#include <float.h>

#include "quant-internal.h"

void quant_row_f16_ref(const float *x, void *y, size_t n) {
        GgmlHalf *h = y;

        for (size_t i = 0; i < n; i++)
                h[i] = engine_f32_to_fp16(x[i]);
}

void quant_row_bf16_ref(const float *x, void *y, size_t n) {
        uint16_t *h = y;

        for (size_t i = 0; i < n; i++)
                h[i] = engine_f32_to_bf16(x[i]);
}

void quant_row_q8_0_ref(const float *x, void *y, size_t n) {
        BlockQ8_0 *b = y;

        for (size_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
                float amax = 0.0f;

                for (int j = 0; j < QK8_0; j++)
                        amax = MAX(amax, fabsf(x[j]));
                const float d = amax / 127;
                const float id = d != 0.0f ? 1.0f / d : 0.0f;
                b[i].d = engine_f32_to_fp16(d);
                for (int j = 0; j < QK8_0; j++)
                        b[i].qs[j] = (int8_t)roundf(x[j] * id);
        }
}

/* The element of largest magnitude, with its sign; the first one wins a tie. */
static float signed_absmax(const float *x, int n) {
        float amax = 0.0f, max = 0.0f;

        for (int j = 0; j < n; j++)
                if (fabsf(x[j]) > amax) {
                        amax = fabsf(x[j]);
                        max = x[j];
                }
        return max;
}

static void min_max(const float *x, int n, float *ret_min, float *ret_max) {
        float lo = FLT_MAX, hi = -FLT_MAX;

        for (int j = 0; j < n; j++) {
                lo = MIN(lo, x[j]);
                hi = MAX(hi, x[j]);
        }
        *ret_min = lo;
        *ret_max = hi;
}

void quant_row_q4_0_ref(const float *x, void *y, size_t n) {
        BlockQ4_0 *b = y;

        for (size_t i = 0; i < n / QK4_0; i++, x += QK4_0) {
                /* The extreme value maps to -8, so the other end keeps 7 levels. */
                const float d = signed_absmax(x, QK4_0) / -8;
                const float id = d != 0.0f ? 1.0f / d : 0.0f;

                b[i].d = engine_f32_to_fp16(d);
                for (int j = 0; j < QK4_0 / 2; j++) {
                        uint8_t lo = (uint8_t)MIN(15, (int8_t)(x[j] * id + 8.5f));
                        uint8_t hi = (uint8_t)MIN(15, (int8_t)(x[j + QK4_0 / 2] * id + 8.5f));
                        b[i].qs[j] = lo | (uint8_t)(hi << 4);
                }
        }
}

void quant_row_q4_1_ref(const float *x, void *y, size_t n) {
        BlockQ4_1 *b = y;

        for (size_t i = 0; i < n / QK4_1; i++, x += QK4_1) {
                float lo, hi;

                min_max(x, QK4_1, &lo, &hi);
                const float d = (hi - lo) / 15;
                const float id = d != 0.0f ? 1.0f / d : 0.0f;
                b[i].d = engine_f32_to_fp16(d);
                b[i].m = engine_f32_to_fp16(lo);
                for (int j = 0; j < QK4_1 / 2; j++) {
                        uint8_t q0 = (uint8_t)MIN(15, (int8_t)((x[j] - lo) * id + 0.5f));
                        uint8_t q1 = (uint8_t)MIN(15, (int8_t)((x[j + QK4_1 / 2] - lo) * id + 0.5f));
                        b[i].qs[j] = q0 | (uint8_t)(q1 << 4);
                }
        }
}

/* Packs 32 five-bit values: low nibbles as Q4_0 does, fifth bits into a little-endian 32-bit mask. */
static void pack_q5(const uint8_t q[32], uint8_t qh[4], uint8_t qs[16]) {
        uint32_t h = 0;

        for (int j = 0; j < 16; j++) {
                qs[j] = (q[j] & 0x0f) | (uint8_t)((q[j + 16] & 0x0f) << 4);
                h |= (uint32_t)(q[j] >> 4) << j;
                h |= (uint32_t)(q[j + 16] >> 4) << (j + 16);
        }
        for (int k = 0; k < 4; k++)
                qh[k] = (uint8_t)(h >> (8 * k));
}

void quant_row_q5_0_ref(const float *x, void *y, size_t n) {
        BlockQ5_0 *b = y;

        for (size_t i = 0; i < n / QK5_0; i++, x += QK5_0) {
                const float d = signed_absmax(x, QK5_0) / -16;
                const float id = d != 0.0f ? 1.0f / d : 0.0f;
                uint8_t q[QK5_0];

                b[i].d = engine_f32_to_fp16(d);
                for (int j = 0; j < QK5_0; j++)
                        q[j] = (uint8_t)MIN(31, (int8_t)(x[j] * id + 16.5f));
                pack_q5(q, b[i].qh, b[i].qs);
        }
}

void quant_row_q5_1_ref(const float *x, void *y, size_t n) {
        BlockQ5_1 *b = y;

        for (size_t i = 0; i < n / QK5_1; i++, x += QK5_1) {
                float lo, hi;
                uint8_t q[QK5_1];

                min_max(x, QK5_1, &lo, &hi);
                const float d = (hi - lo) / 31;
                const float id = d != 0.0f ? 1.0f / d : 0.0f;
                b[i].d = engine_f32_to_fp16(d);
                b[i].m = engine_f32_to_fp16(lo);
                for (int j = 0; j < QK5_1; j++)
                        q[j] = (uint8_t)MIN(31, (int8_t)((x[j] - lo) * id + 0.5f));
                pack_q5(q, b[i].qh, b[i].qs);
        }
}
