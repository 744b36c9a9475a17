/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Dequantizers for the quant tests, written straight from the block layouts, until the engine's land on
 * main; then the tests use engine_dequantize_row() and this file goes.
 */

#include <math.h>
#include <string.h>

#include "engine.h"

static inline float test_fp16(GgmlHalf h) {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
        float f;

        if (e == 0) {
                f = (float)m * 0x1p-24f;
                return sign ? -f : f;
        }
        x = sign | (e == 0x1f ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
        memcpy(&f, &x, 4);
        return f;
}

static inline void test_scale_min_k4(int j, const uint8_t *q, int *s, int *m) {
        if (j < 4) {
                *s = q[j] & 63;
                *m = q[j + 4] & 63;
        } else {
                *s = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
                *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
}

/* Decodes n elements of type from src into y. Returns 0 or -EOPNOTSUPP. */
static inline int test_dequantize_row(uint32_t type, const void *src, float *y, size_t n) {
        static const int8_t iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                         1,    13,   25,  38,  53,  69,  89,  113};

        switch (type) {
        case GGML_TYPE_F32:
                memcpy(y, src, n * 4);
                return 0;
        case GGML_TYPE_F16:
                for (size_t i = 0; i < n; i++)
                        y[i] = test_fp16(((const GgmlHalf *)src)[i]);
                return 0;
        case GGML_TYPE_BF16:
                for (size_t i = 0; i < n; i++) {
                        uint32_t u = (uint32_t)((const uint16_t *)src)[i] << 16;
                        memcpy(&y[i], &u, 4);
                }
                return 0;
        case GGML_TYPE_Q8_0:
                for (size_t i = 0; i < n / 32; i++) {
                        const BlockQ8_0 *b = (const BlockQ8_0 *)src + i;
                        for (int j = 0; j < 32; j++)
                                y[32 * i + j] = (float)b->qs[j] * test_fp16(b->d);
                }
                return 0;
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_IQ4_NL:
                for (size_t i = 0; i < n / 32; i++) {
                        float d, m = 0;
                        const uint8_t *qs;
                        uint32_t qh = 0;
                        int off = 0;
                        if (type == GGML_TYPE_Q4_0 || type == GGML_TYPE_IQ4_NL) {
                                const BlockQ4_0 *b = (const BlockQ4_0 *)src + i;
                                d = test_fp16(b->d), qs = b->qs, off = type == GGML_TYPE_Q4_0 ? 8 : 0;
                        } else if (type == GGML_TYPE_Q4_1) {
                                const BlockQ4_1 *b = (const BlockQ4_1 *)src + i;
                                d = test_fp16(b->d), m = test_fp16(b->m), qs = b->qs;
                        } else if (type == GGML_TYPE_Q5_0) {
                                const BlockQ5_0 *b = (const BlockQ5_0 *)src + i;
                                d = test_fp16(b->d), qs = b->qs, off = 16;
                                memcpy(&qh, b->qh, 4);
                        } else {
                                const BlockQ5_1 *b = (const BlockQ5_1 *)src + i;
                                d = test_fp16(b->d), m = test_fp16(b->m), qs = b->qs;
                                memcpy(&qh, b->qh, 4);
                        }
                        for (int j = 0; j < 32; j++) {
                                int q = (j < 16 ? qs[j] & 0xf : qs[j - 16] >> 4) |
                                        (int)(((qh >> j) & 1) << 4);
                                if (type == GGML_TYPE_IQ4_NL)
                                        y[32 * i + j] = d * (float)iq4nl[q];
                                else if (type == GGML_TYPE_Q4_1 || type == GGML_TYPE_Q5_1)
                                        y[32 * i + j] = d * (float)q + m;
                                else
                                        y[32 * i + j] = d * (float)(q - off);
                        }
                }
                return 0;
        case GGML_TYPE_Q2_K:
                for (size_t i = 0; i < n / 256; i++) {
                        const BlockQ2_K *b = (const BlockQ2_K *)src + i;
                        float d = test_fp16(b->d), dmin = test_fp16(b->dmin);
                        for (int e = 0; e < 256; e++) {
                                int g = e / 16, h = e / 128, k = (e % 128) / 32, l = e % 32;
                                int q = (b->qs[32 * h + l] >> (2 * k)) & 3;
                                y[256 * i + e] = d * (float)(b->scales[g] & 0xf) * (float)q -
                                                 dmin * (float)(b->scales[g] >> 4);
                        }
                }
                return 0;
        case GGML_TYPE_Q3_K:
                for (size_t i = 0; i < n / 256; i++) {
                        const BlockQ3_K *b = (const BlockQ3_K *)src + i;
                        float d = test_fp16(b->d);
                        for (int e = 0; e < 256; e++) {
                                int g = e / 16, h = e / 128, k = (e % 128) / 32, l = e % 32;
                                int sc = g < 8 ? b->scales[g] & 0xf : b->scales[g - 8] >> 4;
                                sc = (sc | (((b->scales[8 + g % 4] >> (2 * (g / 4))) & 3) << 4)) - 32;
                                int q = (b->qs[32 * h + l] >> (2 * k)) & 3;
                                if (!((b->hmask[e % 32] >> (e / 32)) & 1))
                                        q -= 4;
                                y[256 * i + e] = d * (float)sc * (float)q;
                        }
                }
                return 0;
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
                for (size_t i = 0; i < n / 256; i++) {
                        const BlockQ4_K *b4 = (const BlockQ4_K *)src + i;
                        const BlockQ5_K *b5 = (const BlockQ5_K *)src + i;
                        bool five = type == GGML_TYPE_Q5_K;
                        float d = test_fp16(five ? b5->d : b4->d),
                              dmin = test_fp16(five ? b5->dmin : b4->dmin);
                        const uint8_t *sc = five ? b5->scales : b4->scales, *qs = five ? b5->qs : b4->qs;
                        for (int e = 0; e < 256; e++) {
                                int g = e / 32, s, m;
                                test_scale_min_k4(g, sc, &s, &m);
                                int q = (qs[32 * (g / 2) + e % 32] >> (4 * (g % 2))) & 0xf;
                                if (five)
                                        q |= ((b5->qh[e % 32] >> g) & 1) << 4;
                                y[256 * i + e] = d * (float)s * (float)q - dmin * (float)m;
                        }
                }
                return 0;
        case GGML_TYPE_Q6_K:
                for (size_t i = 0; i < n / 256; i++) {
                        const BlockQ6_K *b = (const BlockQ6_K *)src + i;
                        float d = test_fp16(b->d);
                        for (int e = 0; e < 256; e++) {
                                int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
                                int lo = (b->ql[64 * h + l + 32 * (k % 2)] >> (4 * (k / 2))) & 0xf;
                                int hi = (b->qh[32 * h + l] >> (2 * k)) & 3;
                                y[256 * i + e] =
                                        d * (float)b->scales[e / 16] * (float)((lo | (hi << 4)) - 32);
                        }
                }
                return 0;
        default:
                return -EOPNOTSUPP;
        }
}
