/* SPDX-License-Identifier: MIT */
/*
 * Scalar reference conversions: float16 and bfloat16 to and from float32, and dequantization of one row of
 * every block type the engine reads, element for element as GGUF defines it.
 *
 * These are the references that the SIMD kernels, the CUDA kernels and the quantizer are tested against, so
 * they are written for clarity and exactness, not speed. Products are rounded as ggml rounds them (d * q, then
 * + m or - m as a separate step), so floating-point contraction into fused multiply-adds is switched off here:
 * a build with -march=native must give the same bits as the reference data in tests/data.
 */

#include <math.h>

#include "engine.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

static uint32_t f32_bits(float f) {
        uint32_t u;

        memcpy(&u, &f, sizeof(u));
        return u;
}

static float bits_f32(uint32_t u) {
        float f;

        memcpy(&f, &u, sizeof(f));
        return f;
}

float engine_fp16_to_f32(GgmlHalf h) {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
        uint32_t exp = (h >> 10) & 0x1fu;
        uint32_t mant = h & 0x3ffu;

        if (exp == 0) {
                /* Zero or subnormal: mant × 2^-24 is exact in float32. */
                float f = (float)mant * 0x1p-24f;
                return bits_f32(f32_bits(f) | sign);
        }
        if (exp == 31) /* infinity, or NaN with its payload kept */
                return bits_f32(sign | 0x7f800000u | (mant << 13));
        return bits_f32(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

GgmlHalf engine_f32_to_fp16(float f) {
        uint32_t x = f32_bits(f);
        uint32_t sign = (x >> 16) & 0x8000u;

        x &= 0x7fffffffu;
        if (x > 0x7f800000u) /* NaN: quieted, the top of the payload kept */
                return (GgmlHalf)(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
        if (x >= 0x477ff000u) /* 65520 and above round to infinity */
                return (GgmlHalf)(sign | 0x7c00u);
        if (x < 0x38800000u) {
                /* Below 2^-14: a binary16 subnormal, units of 2^-24, rounded to nearest, ties to even. */
                uint32_t e = x >> 23;
                if (e < 102) /* below 2^-25: rounds to zero */
                        return (GgmlHalf)sign;
                uint32_t m = (x & 0x7fffffu) | 0x800000u;
                uint32_t shift = 126 - e; /* 14 … 24 */
                uint32_t q = m >> shift;
                uint32_t rem = m & ((1u << shift) - 1);
                uint32_t half = 1u << (shift - 1);
                if (rem > half || (rem == half && (q & 1)))
                        q++;
                return (GgmlHalf)(sign | q);
        }
        /* Normal: rebias the exponent, drop 13 mantissa bits rounding to nearest even; a carry out of the
         * mantissa correctly bumps the exponent. */
        x -= (uint32_t)(127 - 15) << 23;
        x += 0xfffu + ((x >> 13) & 1);
        return (GgmlHalf)(sign | (x >> 13));
}

float engine_bf16_to_f32(uint16_t h) {
        return bits_f32((uint32_t)h << 16);
}

uint16_t engine_f32_to_bf16(float f) {
        uint32_t x = f32_bits(f);

        if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
                return (uint16_t)((x >> 16) | 0x40u);
        return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* ---- 32-element blocks ---- */

static void dequant_q4_0(const BlockQ4_0 *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++, y += QK4_0) {
                float d = engine_fp16_to_f32(b[i].d);
                for (int j = 0; j < QK4_0 / 2; j++) {
                        y[j] = d * (float)((b[i].qs[j] & 0xf) - 8);
                        y[j + QK4_0 / 2] = d * (float)((b[i].qs[j] >> 4) - 8);
                }
        }
}

static void dequant_q4_1(const BlockQ4_1 *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++, y += QK4_1) {
                float d = engine_fp16_to_f32(b[i].d), m = engine_fp16_to_f32(b[i].m);
                for (int j = 0; j < QK4_1 / 2; j++) {
                        y[j] = d * (float)(b[i].qs[j] & 0xf) + m;
                        y[j + QK4_1 / 2] = d * (float)(b[i].qs[j] >> 4) + m;
                }
        }
}

static uint32_t load_u32le(const uint8_t *p) {
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The 5-bit values of a Q5_0/Q5_1 block: low nibbles as in Q4_0, bit j of qh the fifth bit of element j. */
static void unpack_q5(const uint8_t *qs, const uint8_t *qh_bytes, int *q) {
        uint32_t qh = load_u32le(qh_bytes);

        for (int j = 0; j < 16; j++) {
                q[j] = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
                q[j + 16] = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        }
}

static void dequant_q5_0(const BlockQ5_0 *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++, y += QK5_0) {
                float d = engine_fp16_to_f32(b[i].d);
                int q[QK5_0];
                unpack_q5(b[i].qs, b[i].qh, q);
                for (int j = 0; j < QK5_0; j++)
                        y[j] = d * (float)(q[j] - 16);
        }
}

static void dequant_q5_1(const BlockQ5_1 *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++, y += QK5_1) {
                float d = engine_fp16_to_f32(b[i].d), m = engine_fp16_to_f32(b[i].m);
                int q[QK5_1];
                unpack_q5(b[i].qs, b[i].qh, q);
                for (int j = 0; j < QK5_1; j++)
                        y[j] = d * (float)q[j] + m;
        }
}

static void dequant_q8_0(const BlockQ8_0 *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++, y += QK8_0) {
                float d = engine_fp16_to_f32(b[i].d);
                for (int j = 0; j < QK8_0; j++)
                        y[j] = d * (float)b[i].qs[j];
        }
}

static void dequant_q8_1(const BlockQ8_1 *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++, y += QK8_1) {
                float d = engine_fp16_to_f32(b[i].d);
                for (int j = 0; j < QK8_1; j++)
                        y[j] = d * (float)b[i].qs[j];
        }
}

static const int8_t iq4nl_values[16] = { -127, -104, -83, -65, -49, -35, -22, -10,
                                         1,    13,   25,  38,  53,  69,  89,  113 };

static void dequant_iq4_nl(const BlockIQ4_NL *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++, y += QK4_NL) {
                float d = engine_fp16_to_f32(b[i].d);
                for (int j = 0; j < QK4_NL / 2; j++) {
                        y[j] = d * (float)iq4nl_values[b[i].qs[j] & 0xf];
                        y[j + QK4_NL / 2] = d * (float)iq4nl_values[b[i].qs[j] >> 4];
                }
        }
}

/* ---- 256-element super-blocks ---- */

/*
 * Q2_K: 16 groups of 16 elements, each with a 4-bit scale and 4-bit min. The 2-bit values are stored as two
 * halves of 128 elements; in a half, byte l of its 32 holds element l of each of four 32-element runs, at
 * bit shifts 0, 2, 4, 6.
 */
static void dequant_q2_k(const BlockQ2_K *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++) {
                float d = engine_fp16_to_f32(b[i].d), dmin = engine_fp16_to_f32(b[i].dmin);
                for (int e = 0; e < QK_K; e++) {
                        int half = e / 128, run = (e % 128) / 32, l = e % 32;
                        uint8_t sc = b[i].scales[e / 16];
                        int q = (b[i].qs[half * 32 + l] >> (2 * run)) & 3;
                        y[e] = d * (float)(sc & 0xf) * (float)q - dmin * (float)(sc >> 4);
                }
                y += QK_K;
        }
}

/*
 * The 16 signed 6-bit scales of a Q3_K block: scale s has its low nibble in byte s (s < 8, low half) or
 * byte s - 8 (high half), and its top two bits in byte 8 + s % 4 at bit 2 * (s / 4); stored with a +32 bias.
 */
static int q3_k_scale(const uint8_t *scales, int s) {
        int lo = s < 8 ? scales[s] & 0xf : scales[s - 8] >> 4;
        int hi = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
        return (lo | hi << 4) - 32;
}

/* Q3_K: the 2-bit values laid out as Q2_K's; the third bit of element e in hmask[e % 32] at bit e / 32,
 * and a clear high bit means "subtract 4". */
static void dequant_q3_k(const BlockQ3_K *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++) {
                float d = engine_fp16_to_f32(b[i].d);
                for (int e = 0; e < QK_K; e++) {
                        int half = e / 128, run = (e % 128) / 32, l = e % 32;
                        int q = (b[i].qs[half * 32 + l] >> (2 * run)) & 3;
                        if (!(b[i].hmask[l] & (1u << (e / 32))))
                                q -= 4;
                        y[e] = d * (float)q3_k_scale(b[i].scales, e / 16) * (float)q;
                }
                y += QK_K;
        }
}

/* The 6-bit scale and min of group j (0…7) of a Q4_K/Q5_K block: groups 0–3 in the low 6 bits of bytes j and
 * j + 4; groups 4–7 from the nibbles of byte j + 4 with their top two bits in the spare bits of bytes j - 4 and j. */
static void k_scale_min(const uint8_t *q, int j, uint8_t *ret_sc, uint8_t *ret_m) {
        if (j < 4) {
                *ret_sc = q[j] & 63;
                *ret_m = q[j + 4] & 63;
        } else {
                *ret_sc = (uint8_t)((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4));
                *ret_m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
}

/* Q4_K: 8 groups of 32; group pairs (2k, 2k+1) share 32 bytes of qs, low nibbles then high nibbles. */
static void dequant_q4_k(const BlockQ4_K *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++) {
                float d = engine_fp16_to_f32(b[i].d), dmin = engine_fp16_to_f32(b[i].dmin);
                for (int g = 0; g < 8; g++) {
                        uint8_t sc, m;
                        k_scale_min(b[i].scales, g, &sc, &m);
                        float dl = d * (float)sc, ml = dmin * (float)m;
                        const uint8_t *q = b[i].qs + (g / 2) * 32;
                        for (int l = 0; l < 32; l++) {
                                int v = g % 2 ? q[l] >> 4 : q[l] & 0xf;
                                y[g * 32 + l] = dl * (float)v - ml;
                        }
                }
                y += QK_K;
        }
}

/* Q5_K: Q4_K plus a fifth bit for element l of group g in qh[l] at bit g. */
static void dequant_q5_k(const BlockQ5_K *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++) {
                float d = engine_fp16_to_f32(b[i].d), dmin = engine_fp16_to_f32(b[i].dmin);
                for (int g = 0; g < 8; g++) {
                        uint8_t sc, m;
                        k_scale_min(b[i].scales, g, &sc, &m);
                        float dl = d * (float)sc, ml = dmin * (float)m;
                        const uint8_t *q = b[i].qs + (g / 2) * 32;
                        for (int l = 0; l < 32; l++) {
                                int v = g % 2 ? q[l] >> 4 : q[l] & 0xf;
                                v |= ((b[i].qh[l] >> g) & 1) << 4;
                                y[g * 32 + l] = dl * (float)v - ml;
                        }
                }
                y += QK_K;
        }
}

/*
 * Q6_K: two halves of 128; in a half, element l + 32 r (r = 0…3) has its low nibble in ql[l + 32 (r % 2)]
 * (low nibble for r < 2, high for r >= 2) and its top two bits in qh[l] at bit 2 r; 16 int8 scales, one per 16.
 */
static void dequant_q6_k(const BlockQ6_K *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++) {
                float d = engine_fp16_to_f32(b[i].d);
                for (int e = 0; e < QK_K; e++) {
                        int half = e / 128, r = (e % 128) / 32, l = e % 32;
                        const uint8_t *ql = b[i].ql + half * 64, *qh = b[i].qh + half * 32;
                        uint8_t lo = ql[l + 32 * (r % 2)];
                        int q = (r < 2 ? lo & 0xf : lo >> 4) | ((qh[l] >> (2 * r)) & 3) << 4;
                        y[e] = d * (float)b[i].scales[e / 16] * (float)(q - 32);
                }
                y += QK_K;
        }
}

static void dequant_q8_k(const BlockQ8_K *b, float *y, uint64_t nb) {
        for (uint64_t i = 0; i < nb; i++, y += QK_K)
                for (int j = 0; j < QK_K; j++)
                        y[j] = b[i].d * (float)b[i].qs[j];
}

int engine_dequantize_row(uint32_t type, const void *src, float *dst, uint64_t n) {
        const GgmlTypeInfo *t = ggml_type_info(type);

        if (!t || !src || !dst || n % t->block_size != 0)
                return -EINVAL;

        uint64_t nb = n / t->block_size;
        switch ((GgmlType)type) {
        case GGML_TYPE_F32:
                memmove(dst, src, n * sizeof(float));
                return 0;
        case GGML_TYPE_F16:
                for (uint64_t i = 0; i < n; i++)
                        dst[i] = engine_fp16_to_f32(((const GgmlHalf *)src)[i]);
                return 0;
        case GGML_TYPE_BF16:
                for (uint64_t i = 0; i < n; i++)
                        dst[i] = engine_bf16_to_f32(((const uint16_t *)src)[i]);
                return 0;
        case GGML_TYPE_Q4_0:
                dequant_q4_0(src, dst, nb);
                return 0;
        case GGML_TYPE_Q4_1:
                dequant_q4_1(src, dst, nb);
                return 0;
        case GGML_TYPE_Q5_0:
                dequant_q5_0(src, dst, nb);
                return 0;
        case GGML_TYPE_Q5_1:
                dequant_q5_1(src, dst, nb);
                return 0;
        case GGML_TYPE_Q8_0:
                dequant_q8_0(src, dst, nb);
                return 0;
        case GGML_TYPE_Q8_1:
                dequant_q8_1(src, dst, nb);
                return 0;
        case GGML_TYPE_Q2_K:
                dequant_q2_k(src, dst, nb);
                return 0;
        case GGML_TYPE_Q3_K:
                dequant_q3_k(src, dst, nb);
                return 0;
        case GGML_TYPE_Q4_K:
                dequant_q4_k(src, dst, nb);
                return 0;
        case GGML_TYPE_Q5_K:
                dequant_q5_k(src, dst, nb);
                return 0;
        case GGML_TYPE_Q6_K:
                dequant_q6_k(src, dst, nb);
                return 0;
        case GGML_TYPE_Q8_K:
                dequant_q8_k(src, dst, nb);
                return 0;
        case GGML_TYPE_IQ4_NL:
                dequant_iq4_nl(src, dst, nb);
                return 0;
        case GGML_TYPE_IQ2_XXS:
        case GGML_TYPE_IQ2_XS:
        case GGML_TYPE_IQ3_XXS:
        case GGML_TYPE_IQ1_S:
        case GGML_TYPE_IQ3_S:
        case GGML_TYPE_IQ2_S:
        case GGML_TYPE_IQ4_XS:
        case GGML_TYPE_I8:
        case GGML_TYPE_I16:
        case GGML_TYPE_I32:
        case GGML_TYPE_I64:
        case GGML_TYPE_F64:
        case GGML_TYPE_IQ1_M:
        case GGML_TYPE_TQ1_0:
        case GGML_TYPE_TQ2_0:
        case GGML_TYPE_MXFP4:
        case _GGML_TYPE_MAX:
        case _GGML_TYPE_INVALID:
                break;
        }
        return -EOPNOTSUPP;
}
