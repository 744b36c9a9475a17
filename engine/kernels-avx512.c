/* SPDX-License-Identifier: MIT */
/*
 * AVX-512 (F, BW, VL, DQ, VNNI) kernels, built with per-function target attributes like kernels-avx2.c.
 *
 * DESIGN
 * Every quantized type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K … Q6_K) puts 16 weight rows in the 16 lanes of a
 * register and decodes them transposed (see the 32-element section), so that VNNI dpbusd with broadcast
 * activation bytes gives 16 rows' integer sums at once and every scale is applied once per block as a vector;
 * one driver, gemm16(), serves all of them, for one token and for prompt batches alike. Float weights take 16
 * elements per step; attention keeps the queries of a KV group and their outputs in registers.
 */

#include <immintrin.h>
#include <math.h>

#define SIMD_TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"
#define SIMD_AVX512 1

#include "kernels-simd.h"
#include "kernels.h"

#define AVX512 __attribute__((target(SIMD_TARGET)))
#define TILE 4

static inline __attribute__((always_inline)) AVX512 __m512i join(__m256i lo, __m256i hi) {
        return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* ---- 32-element block weights with ACT_Q8 activations ---- */

/*
 * Sixteen weight rows go through the 16 lanes of a register: lane i of q[k] holds bytes 4k … 4k+3 of row i's
 * decoded block, so eight dpbusd, each with four activation bytes broadcast to all lanes, give the 16 rows'
 * integer block sums in one register with no horizontal reduction, and the scales are applied once per block
 * as vectors over the rows. The raw blocks are transposed first (16 rows × 16 bytes of nibbles are four
 * registers) and decoded in that form, so one operation decodes a piece of 16 blocks; the blocks' first 16 bytes
 * (scales, fifth bits) are transposed the same way. For several tokens, a slice of blocks is decoded once into Q32Tile, which
 * stays in L1 while every token of the call takes it, four tokens per step sharing each weight vector.
 *
 * Every (row, token) result is the same sequence of float operations whatever the number of rows and tokens
 * in the call, the slice or the step, because lanes never mix: for each block in order,
 * acc = fma(float(isum), d × da, acc) and mx = fma(m, s, mx); the result is acc + mx. So a token's result does
 * not depend on its batch, and generation (one token) gives what a prompt batch gives.
 *
 * dpbusd multiplies unsigned by signed bytes: Q8_0's signed weights become unsigned by adding 128, which the
 * block sum term takes back (m = -128 × d), as it does the offsets of Q4_0 and Q5_0 (see kernels-simd.h).
 */

#define Q32_ROWS 16   /* weight rows per tile: one per 32-bit lane */
#define Q32_SLICE 24  /* blocks decoded at a time: 15 KB of tile, which stays in L1 */
#define Q32_STEP 4    /* tokens per step */
#define Q32_TOKENS 64 /* tokens whose accumulators a pass over the slices keeps */

typedef struct Q32Block16 {
        __m512i q[8]; /* see above */
        __m512 d, m;  /* the rows' scales and block-sum coefficients */
} Q32Block16;

typedef struct Q32Rows {
        const uint8_t *row[Q32_ROWS]; /* row i, or the last real row for the lanes past it */
} Q32Rows;

/* out[k] lane i = dword k of v[i]: a 16 × 8 transpose of 32-bit elements. */
static inline __attribute__((always_inline)) AVX512 void transpose16x8(const __m256i *v, __m512i *out) {
        __m512i z[8], t[8], u[8];

        /* z[j] holds rows j and j + 4 (j < 4), z[4 + j] rows 8 + j and 12 + j, so that the final 128-bit lane
         * shuffle puts the rows in lane order. */
#pragma GCC unroll 16
        for (int j = 0; j < 4; j++) {
                z[j] = join(v[j], v[j + 4]);
                z[4 + j] = join(v[8 + j], v[12 + j]);
        }
#pragma GCC unroll 16
        for (int h = 0; h < 8; h += 4) {
                t[h + 0] = _mm512_unpacklo_epi32(z[h + 0], z[h + 1]);
                t[h + 1] = _mm512_unpackhi_epi32(z[h + 0], z[h + 1]);
                t[h + 2] = _mm512_unpacklo_epi32(z[h + 2], z[h + 3]);
                t[h + 3] = _mm512_unpackhi_epi32(z[h + 2], z[h + 3]);
                u[h + 0] = _mm512_unpacklo_epi64(t[h + 0], t[h + 2]);
                u[h + 1] = _mm512_unpackhi_epi64(t[h + 0], t[h + 2]);
                u[h + 2] = _mm512_unpacklo_epi64(t[h + 1], t[h + 3]);
                u[h + 3] = _mm512_unpackhi_epi64(t[h + 1], t[h + 3]);
        }
        /* u[k] (k < 4), 128-bit lanes: rows 0-3 dword k, rows 0-3 dword k + 4, rows 4-7 dword k, rows 4-7
         * dword k + 4; u[4 + k] the same for rows 8-15. */
#pragma GCC unroll 16
        for (int k = 0; k < 4; k++) {
                out[k] = _mm512_shuffle_i32x4(u[k], u[4 + k], _MM_SHUFFLE(2, 0, 2, 0));
                out[k + 4] = _mm512_shuffle_i32x4(u[k], u[4 + k], _MM_SHUFFLE(3, 1, 3, 1));
        }
}

/* out[k] lane i = dword k of the 16 bytes at rows->row[i] + off: a 16 × 4 transpose. */
static inline __attribute__((always_inline)) AVX512 void transpose16x4(const Q32Rows *rows, size_t off,
                                                                       __m512i *out) {
        __m512i x[4];

        /* x[m], 128-bit lane L: row 4L + m, so that lane 4L + m of the result is row 4L + m. */
#pragma GCC unroll 16
        for (int m = 0; m < 4; m++) {
                __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rows->row[m] + off)));
                v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows->row[4 + m] + off)), 1);
                v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows->row[8 + m] + off)), 2);
                x[m] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows->row[12 + m] + off)), 3);
        }
        __m512i t0 = _mm512_unpacklo_epi32(x[0], x[1]), t1 = _mm512_unpackhi_epi32(x[0], x[1]);
        __m512i t2 = _mm512_unpacklo_epi32(x[2], x[3]), t3 = _mm512_unpackhi_epi32(x[2], x[3]);
        out[0] = _mm512_unpacklo_epi64(t0, t2);
        out[1] = _mm512_unpackhi_epi64(t0, t2);
        out[2] = _mm512_unpacklo_epi64(t1, t3);
        out[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* Block b of the 16 rows. */
static inline __attribute__((always_inline)) AVX512 void q32_decode16(uint32_t type, const Q32Rows *rows,
                                                                      uint64_t b, Q32Block16 *out) {
        size_t bs, qs_off;

        switch (type) {
        case GGML_TYPE_Q4_0:
                bs = sizeof(BlockQ4_0), qs_off = offsetof(BlockQ4_0, qs);
                break;
        case GGML_TYPE_Q4_1:
                bs = sizeof(BlockQ4_1), qs_off = offsetof(BlockQ4_1, qs);
                break;
        case GGML_TYPE_Q5_0:
                bs = sizeof(BlockQ5_0), qs_off = offsetof(BlockQ5_0, qs);
                break;
        case GGML_TYPE_Q5_1:
                bs = sizeof(BlockQ5_1), qs_off = offsetof(BlockQ5_1, qs);
                break;
        default:
                bs = sizeof(BlockQ8_0), qs_off = offsetof(BlockQ8_0, qs);
                break;
        }
        size_t at = b * bs;
        /* The first two words of every block: d is the first half; Q4_1 and Q5_1 have m in the second, Q5_1
         * qh in the second word, Q5_0 qh across the two. (Sixteen loads and unpacks: gathers are slow.) */
        __m512i hdr[4];
        transpose16x4(rows, at, hdr);
        __m512i dm = hdr[0];
        out->d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));

        if (type == GGML_TYPE_Q8_0) {
                __m256i v[Q32_ROWS];
#pragma GCC unroll 16
                for (int i = 0; i < Q32_ROWS; i++)
                        v[i] = _mm256_loadu_si256((const __m256i *)(rows->row[i] + at + qs_off));
                transpose16x8(v, out->q);
#pragma GCC unroll 16
                for (int k = 0; k < 8; k++)
                        out->q[k] = _mm512_xor_si512(out->q[k], _mm512_set1_epi8((char)0x80));
                out->m = _mm512_mul_ps(out->d, _mm512_set1_ps(-128.0f));
                return;
        }

        __m512i raw[4];
        transpose16x4(rows, at + qs_off, raw);
#pragma GCC unroll 16
        for (int k = 0; k < 4; k++) {
                out->q[k] = _mm512_and_si512(raw[k], _mm512_set1_epi8(0xf));
                out->q[k + 4] = _mm512_and_si512(_mm512_srli_epi16(raw[k], 4), _mm512_set1_epi8(0xf));
        }
        if (type == GGML_TYPE_Q5_0 || type == GGML_TYPE_Q5_1) {
                /* Bits 4k … 4k+3 of qh, for the four bytes of q[k], as 0x10 each: a table of 16 words. */
                const __m512i spread = _mm512_setr_epi32(
                        0x00000000, 0x00000010, 0x00001000, 0x00001010, 0x00100000, 0x00100010, 0x00101000,
                        0x00101010, 0x10000000, 0x10000010, 0x10001000, 0x10001010, 0x10100000, 0x10100010,
                        0x10101000, 0x10101010);
                __m512i qh = type == GGML_TYPE_Q5_1 ? hdr[1]
                                                    : _mm512_or_si512(_mm512_srli_epi32(hdr[0], 16),
                                                                      _mm512_slli_epi32(hdr[1], 16));
#pragma GCC unroll 16
                for (int k = 0; k < 8; k++) {
                        /* vpermd looks at the low four bits of each index only. */
                        __m512i idx = k ? _mm512_srli_epi32(qh, 4 * k) : qh;
                        out->q[k] = _mm512_or_si512(out->q[k], _mm512_permutexvar_epi32(idx, spread));
                }
        }
        switch (type) {
        case GGML_TYPE_Q4_0:
                out->m = _mm512_mul_ps(out->d, _mm512_set1_ps(-8.0f));
                break;
        case GGML_TYPE_Q5_0:
                out->m = _mm512_mul_ps(out->d, _mm512_set1_ps(-16.0f));
                break;
        default:
                out->m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
                break;
        }
}

/* T tokens from activation rows a, a + a_stride, … against block b of the rows, continuing acc and mx. */
static inline __attribute__((always_inline)) AVX512 void q32_dot(const Q32Block16 *w, uint64_t b, uint64_t n,
                                                                 const uint8_t *a, size_t a_stride, int T,
                                                                 __m512 *acc, __m512 *mx) {
        /* P integer partial sums per token, so that a single token is not one chain of eight dependent
         * dpbusd; integer sums are exact, so this changes no result. */
        const int P = T < Q32_STEP ? Q32_STEP / T : 1;
        __m512i isum[Q32_STEP][Q32_STEP];

#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
#pragma GCC unroll 4
                for (int p = 0; p < P; p++)
                        isum[t][p] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
                __m512i wv = w->q[k];
#pragma GCC unroll 4
                for (int t = 0; t < T; t++) {
                        int32_t x;
                        memcpy(&x, a + t * a_stride + b * 32 + 4 * k, 4);
                        isum[t][k % P] = _mm512_dpbusd_epi32(isum[t][k % P], wv, _mm512_set1_epi32(x));
                }
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
#pragma GCC unroll 4
                for (int p = 1; p < P; p++)
                        isum[t][0] = _mm512_add_epi32(isum[t][0], isum[t][p]);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
                const uint8_t *at = a + t * a_stride;
                __m512 sc = _mm512_mul_ps(w->d, _mm512_set1_ps(act_q8_d(at, n)[b]));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t][0]), sc, acc[t]);
                mx[t] = _mm512_fmadd_ps(w->m, _mm512_set1_ps(act_q8_s(at, n)[b]), mx[t]);
        }
}

/* ---- K-quant weights with Q8_K activations ---- */

/*
 * The K-quants as the 32-element types: 16 weight rows in the lanes, the raw super-blocks transposed 16 bytes
 * per row at a time and decoded in that form into 64 "units" (lane i of unit u: elements 4u … 4u+3 of row
 * i), then per token eight dpbusd per group of 32 (Q4_K, Q5_K) or four per group of 16 (Q2_K, Q3_K, Q6_K)
 * with broadcast activation bytes, the group sum times the group's integer scale (exact in 32 bits), and the
 * minimum (Q2_K, Q4_K, Q5_K) or the offset (Q3_K: 4, Q6_K: 32) through the activation's group sums with
 * dpwssd on pairs of 16-bit coefficients. Per super-block and (row, token): acc = fma(float(Σ scale_g isum_g), d × da, acc) and
 * mx = mx - float(Σ coef_g bsum_g) × dm × da (one fnmadd); the result is acc + mx, the same whatever the batch
 * (see the 32-element section).
 */

#define KT_SLICE 2 /* super-blocks decoded at a time: 11 KB of tile */

typedef struct KTile16 {
        __m512i q[64];  /* the units, element order */
        __m512i sc[16]; /* the group scales, 32-bit (Q4_K, Q5_K: 8 groups of 32; the others 16 groups of 16) */
        __m512i mc[8];  /* pairs of 16-bit coefficients of the group sums (4 or 8), see kt_pairs() */
        __m512 d, dm;
} KTile16;

static inline __attribute__((always_inline)) AVX512 __m512i kt_byte(__m512i v, int j) {
        return _mm512_and_si512(_mm512_srli_epi32(v, 8 * j), _mm512_set1_epi32(0xff));
}

/* Bit `bit` of every byte of v, moved to bit 4 (0x10). */
static inline __attribute__((always_inline)) AVX512 __m512i kt_bit4(__m512i v, int bit) {
        __m512i x = bit <= 4 ? _mm512_slli_epi32(v, 4 - bit) : _mm512_srli_epi32(v, bit - 4);
        return _mm512_and_si512(x, _mm512_set1_epi8(0x10));
}

/* Q2_K's and Q3_K's weights: element 128h + 32r + l is bits 2r, 2r + 1 of qs[32h + l] (the 64 bytes at qs_at),
 * with (Q3_K, H the transposed hmask) bit 4h + r of hmask[l] as 4. */
static inline __attribute__((always_inline)) AVX512 void kt_two_bits(const Q32Rows *rows, size_t qs_at,
                                                                     const __m512i (*H)[4], KTile16 *out) {
#pragma GCC unroll 2
        for (int hh = 0; hh < 2; hh++)
#pragma GCC unroll 2
                for (int c = 0; c < 2; c++) {
                        __m512i Q[4];
                        transpose16x4(rows, qs_at + 32 * hh + 16 * c, Q);
#pragma GCC unroll 4
                        for (int k = 0; k < 4; k++)
#pragma GCC unroll 4
                                for (int r = 0; r < 4; r++) {
                                        __m512i q = _mm512_and_si512(_mm512_srli_epi32(Q[k], 2 * r),
                                                                     _mm512_set1_epi8(3));
                                        if (H) {
                                                int bit = 4 * hh + r;
                                                __m512i hb = bit >= 2 ? _mm512_srli_epi32(H[c][k], bit - 2)
                                                                      : _mm512_slli_epi32(H[c][k], 2 - bit);
                                                q = _mm512_or_si512(q, _mm512_and_si512(hb, _mm512_set1_epi8(4)));
                                        }
                                        out->q[32 * hh + 8 * r + 4 * c + k] = q;
                                }
                }
}

/* Super-block sb of the 16 rows. */
static inline __attribute__((always_inline)) AVX512 void kt_decode16(uint32_t type, const Q32Rows *rows,
                                                                     uint64_t sb, KTile16 *out) {
        const __m512i m4 = _mm512_set1_epi8(0xf);

        if (type == GGML_TYPE_Q4_K || type == GGML_TYPE_Q5_K) {
                /* Q5_K is Q4_K with the fifth bits after the scales (offsets equal up to scales). */
                bool five = type == GGML_TYPE_Q5_K;
                size_t at = sb * (five ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K));
                size_t qs_off = five ? offsetof(BlockQ5_K, qs) : offsetof(BlockQ4_K, qs);
                __m512i qh[2][4];
                if (five)
                        for (int c = 0; c < 2; c++)
                                transpose16x4(rows, at + offsetof(BlockQ5_K, qh) + 16 * c, qh[c]);
                __m512i h[4];
                transpose16x4(rows, at, h); /* d and dmin, then the 12 bytes of scales */
                out->d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h[0]));
                out->dm = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h[0], 16)));
                /* Bytes j of: scales 0-3, mins 0-3, scales 4-7, mins 4-7 (kq_scale_min_k4()'s unpacking). */
                const __m512i m6 = _mm512_set1_epi8(0x3f), m30 = _mm512_set1_epi8(0x30);
                __m512i sc_lo = _mm512_and_si512(h[1], m6), mn_lo = _mm512_and_si512(h[2], m6);
                __m512i sc_hi = _mm512_or_si512(_mm512_and_si512(h[3], m4),
                                                _mm512_and_si512(_mm512_srli_epi32(h[1], 2), m30));
                __m512i mn_hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(h[3], 4), m4),
                                                _mm512_and_si512(_mm512_srli_epi32(h[2], 2), m30));
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                        out->sc[j] = kt_byte(sc_lo, j);
                        out->sc[4 + j] = kt_byte(sc_hi, j);
                }
                const __m512i w02 = _mm512_set1_epi32(0x00ff00ff);
                out->mc[0] = _mm512_and_si512(mn_lo, w02);
                out->mc[1] = _mm512_and_si512(_mm512_srli_epi32(mn_lo, 8), w02);
                out->mc[2] = _mm512_and_si512(mn_hi, w02);
                out->mc[3] = _mm512_and_si512(_mm512_srli_epi32(mn_hi, 8), w02);
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++)
#pragma GCC unroll 2
                        for (int c = 0; c < 2; c++) {
                                __m512i r[4];
                                transpose16x4(rows, at + qs_off + 32 * j + 16 * c, r);
#pragma GCC unroll 4
                                for (int k = 0; k < 4; k++) {
                                        __m512i lo = _mm512_and_si512(r[k], m4);
                                        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(r[k], 4), m4);
                                        if (five) {
                                                /* Bits 2j (low nibbles) and 2j + 1 (high) of qh as 0x10. */
                                                lo = _mm512_or_si512(lo, kt_bit4(qh[c][k], 2 * j));
                                                hi = _mm512_or_si512(hi, kt_bit4(qh[c][k], 2 * j + 1));
                                        }
                                        out->q[16 * j + 4 * c + k] = lo;
                                        out->q[16 * j + 8 + 4 * c + k] = hi;
                                }
                        }
                return;
        }
        if (type == GGML_TYPE_Q2_K) {
                size_t at = sb * sizeof(BlockQ2_K);
                __m512i h[4], S[4];
                transpose16x4(rows, at + offsetof(BlockQ2_K, d) - 12, h); /* word 3: d and dmin */
                out->d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h[3]));
                out->dm = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h[3], 16)));
                /* Scale in the low nibble, minimum in the high one, per group of 16. */
                transpose16x4(rows, at + offsetof(BlockQ2_K, scales), S);
                const __m512i w02 = _mm512_set1_epi32(0x00ff00ff);
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                        __m512i sc = _mm512_and_si512(S[j], m4), mn = _mm512_and_si512(_mm512_srli_epi32(S[j], 4), m4);
#pragma GCC unroll 4
                        for (int b = 0; b < 4; b++)
                                out->sc[4 * j + b] = kt_byte(sc, b);
                        out->mc[2 * j] = _mm512_and_si512(mn, w02);
                        out->mc[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi32(mn, 8), w02);
                }
                kt_two_bits(rows, at + offsetof(BlockQ2_K, qs), NULL, out);
                return;
        }
        if (type == GGML_TYPE_Q3_K) {
                size_t at = sb * sizeof(BlockQ3_K);
                __m512i h[4];
                /* Bytes 94-109: two bytes of qs, the 12 bytes of scales, d. */
                transpose16x4(rows, at + offsetof(BlockQ3_K, scales) - 2, h);
                out->d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h[3], 16)));
                out->dm = _mm512_mul_ps(out->d, _mm512_set1_ps(4.0f));
                __m512i s0 = _mm512_or_si512(_mm512_srli_epi32(h[0], 16), _mm512_slli_epi32(h[1], 16));
                __m512i s1 = _mm512_or_si512(_mm512_srli_epi32(h[1], 16), _mm512_slli_epi32(h[2], 16));
                __m512i s2 = _mm512_or_si512(_mm512_srli_epi32(h[2], 16), _mm512_slli_epi32(h[3], 16));
                /* Group 4j + b: low four bits from byte b of scales 0-3 (j 0), 4-7 (j 1), or their high
                 * nibbles (j 2, 3); two high bits from bits 2j, 2j + 1 of byte b of scales 8-11; minus 32. */
                const __m512i lo4[4] = { s0, s1, _mm512_srli_epi32(s0, 4), _mm512_srli_epi32(s1, 4) };
                const __m512i w02 = _mm512_set1_epi32(0x00ff00ff), off = _mm512_set1_epi16(32);
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                        __m512i v = _mm512_or_si512(
                                _mm512_and_si512(lo4[j], m4),
                                _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s2, 2 * j), _mm512_set1_epi8(3)),
                                                  4));
#pragma GCC unroll 4
                        for (int b = 0; b < 4; b++)
                                out->sc[4 * j + b] = _mm512_sub_epi32(kt_byte(v, b), _mm512_set1_epi32(32));
                        out->mc[2 * j] = _mm512_sub_epi16(_mm512_and_si512(v, w02), off);
                        out->mc[2 * j + 1] = _mm512_sub_epi16(_mm512_and_si512(_mm512_srli_epi32(v, 8), w02), off);
                }
                __m512i H[2][4];
#pragma GCC unroll 2
                for (int c = 0; c < 2; c++)
                        transpose16x4(rows, at + offsetof(BlockQ3_K, hmask) + 16 * c, H[c]);
                kt_two_bits(rows, at + offsetof(BlockQ3_K, qs), H, out);
                return;
        }
        /* GGML_TYPE_Q6_K */
        size_t at = sb * sizeof(BlockQ6_K);
        __m512i h[4], sc[4];
        transpose16x4(rows, at + offsetof(BlockQ6_K, d) - 14, h); /* word 3: two scales, then d */
        out->d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h[3], 16)));
        out->dm = _mm512_mul_ps(out->d, _mm512_set1_ps(32.0f));
        transpose16x4(rows, at + offsetof(BlockQ6_K, scales), sc);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
#pragma GCC unroll 4
                for (int b = 0; b < 4; b++)
                        out->sc[4 * j + b] = _mm512_srai_epi32(_mm512_slli_epi32(sc[j], 24 - 8 * b), 24);
                out->mc[2 * j] = _mm512_srai_epi16(_mm512_slli_epi16(sc[j], 8), 8);
                out->mc[2 * j + 1] = _mm512_srai_epi16(sc[j], 8);
        }
        const __m512i m30 = _mm512_set1_epi8(0x30);
#pragma GCC unroll 2
        for (int hh = 0; hh < 2; hh++)
#pragma GCC unroll 2
                for (int c = 0; c < 2; c++) {
                        __m512i A[4], B[4], H[4];
                        transpose16x4(rows, at + 64 * hh + 16 * c, A);
                        transpose16x4(rows, at + 64 * hh + 32 + 16 * c, B);
                        transpose16x4(rows, at + offsetof(BlockQ6_K, qh) + 32 * hh + 16 * c, H);
#pragma GCC unroll 4
                        for (int k = 0; k < 4; k++) {
                                __m512i *u = &out->q[32 * hh + 4 * c + k];
                                u[0] = _mm512_or_si512(_mm512_and_si512(A[k], m4),
                                                       _mm512_and_si512(_mm512_slli_epi32(H[k], 4), m30));
                                u[8] = _mm512_or_si512(_mm512_and_si512(B[k], m4),
                                                       _mm512_and_si512(_mm512_slli_epi32(H[k], 2), m30));
                                u[16] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(A[k], 4), m4),
                                                        _mm512_and_si512(H[k], m30));
                                u[24] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(B[k], 4), m4),
                                                        _mm512_and_si512(_mm512_srli_epi32(H[k], 2), m30));
                        }
                }
}

/* The activation side of the group-sum term, paired as kt_decode16() pairs the coefficients: from the sums of
 * the groups (Q4_K, Q5_K: groups of 32, two bsums each; the others: the 16 bsums), (g[4q], g[4q + 2]) and
 * (g[4q + 1], g[4q + 3]) as 16-bit pairs. */
static inline __attribute__((always_inline)) AVX512 void kt_pairs(uint32_t type, const BlockQ8_K *a,
                                                                  int32_t *ret) {
        int16_t g[16];
        int ng = type == GGML_TYPE_Q4_K || type == GGML_TYPE_Q5_K ? 8 : 16;

        for (int i = 0; i < ng; i++)
                g[i] = ng == 8 ? (int16_t)(a->bsums[2 * i] + a->bsums[2 * i + 1]) : a->bsums[i];
        for (int q = 0; q < ng / 4; q++) {
                ret[2 * q] = (int32_t)((uint32_t)(uint16_t)g[4 * q] | (uint32_t)(uint16_t)g[4 * q + 2] << 16);
                ret[2 * q + 1] = (int32_t)((uint32_t)(uint16_t)g[4 * q + 1] | (uint32_t)(uint16_t)g[4 * q + 3] << 16);
        }
}

/* T tokens (Q8_K rows a, a + a_stride, …, super-block sb) against one decoded super-block. */
static inline __attribute__((always_inline)) AVX512 void kt_dot(uint32_t type, const KTile16 *w, uint64_t sb,
                                                                const uint8_t *a, size_t a_stride, int T,
                                                                __m512 *acc, __m512 *mx) {
        const int ng = type == GGML_TYPE_Q4_K || type == GGML_TYPE_Q5_K ? 8 : 16, ug = 64 / ng, np = ng / 2;
        const BlockQ8_K *at[Q32_STEP];
        int32_t pairs[Q32_STEP][8];
        __m512i isum[Q32_STEP], msum[Q32_STEP];

#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
                at[t] = (const BlockQ8_K *)(a + t * a_stride) + sb;
                kt_pairs(type, at[t], pairs[t]);
                isum[t] = msum[t] = _mm512_setzero_si512();
        }
#pragma GCC unroll 16
        for (int g = 0; g < ng; g++) {
                __m512i gs[Q32_STEP];
#pragma GCC unroll 4
                for (int t = 0; t < T; t++)
                        gs[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int u = g * ug; u < (g + 1) * ug; u++) {
                        __m512i wv = w->q[u];
#pragma GCC unroll 4
                        for (int t = 0; t < T; t++) {
                                int32_t x;
                                memcpy(&x, at[t]->qs + 4 * u, 4);
                                gs[t] = _mm512_dpbusd_epi32(gs[t], wv, _mm512_set1_epi32(x));
                        }
                }
#pragma GCC unroll 4
                for (int t = 0; t < T; t++)
                        isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(gs[t], w->sc[g]));
        }
#pragma GCC unroll 8
        for (int p = 0; p < np; p++)
#pragma GCC unroll 4
                for (int t = 0; t < T; t++)
                        msum[t] = _mm512_dpwssd_epi32(msum[t], w->mc[p], _mm512_set1_epi32(pairs[t][p]));
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
                __m512 da = _mm512_set1_ps(at[t]->d);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(w->d, da), acc[t]);
                mx[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum[t]), _mm512_mul_ps(w->dm, da), mx[t]);
        }
}

/* ---- the driver of the 16-row kernels ---- */

static inline bool is_k16(uint32_t type) {
        return type == GGML_TYPE_Q2_K || type == GGML_TYPE_Q3_K || type == GGML_TYPE_Q4_K ||
               type == GGML_TYPE_Q5_K || type == GGML_TYPE_Q6_K;
}

/* Decoded blocks of 16 rows: a slice of 32-element blocks or of super-blocks. */
typedef union Tile16 {
        Q32Block16 q32[Q32_SLICE];
        KTile16 k[KT_SLICE];
} Tile16;

static inline __attribute__((always_inline)) AVX512 void tile16_decode(uint32_t type, const Q32Rows *rows,
                                                                       uint64_t b, Tile16 *tile, uint32_t j) {
        if (is_k16(type))
                kt_decode16(type, rows, b, &tile->k[j]);
        else
                q32_decode16(type, rows, b, &tile->q32[j]);
}

/* T tokens over blocks b0 … b0 + nbs - 1 of the rows, decoded in tile, continuing acc and mx. */
static inline __attribute__((always_inline)) AVX512 void tile16_dot(uint32_t type, const Tile16 *tile,
                                                                    uint64_t b0, uint32_t nbs, uint64_t n,
                                                                    const uint8_t *a, size_t a_stride, int T,
                                                                    __m512 *acc_p, __m512 *mx_p) {
        __m512 acc[Q32_STEP], mx[Q32_STEP];

#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
                acc[t] = acc_p[t];
                mx[t] = mx_p[t];
        }
        for (uint32_t j = 0; j < nbs; j++) {
                if (is_k16(type))
                        kt_dot(type, &tile->k[j], b0 + j, a, a_stride, T, acc, mx);
                else
                        q32_dot(&tile->q32[j], b0 + j, n, a, a_stride, T, acc, mx);
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
                acc_p[t] = acc[t];
                mx_p[t] = mx[t];
        }
}

/*
 * Groups of 16 rows. One token (generation) takes each block straight from the decode into the dot product;
 * the block columns jump between 16 rows, which the hardware prefetcher does not follow from memory, so the 16
 * rows after these are prefetched along the way, a share per block, also past the last row (a prefetch never
 * faults; the pool's next chunk of a matrix is usually its next rows). Several tokens decode a slice of blocks
 * into a tile that stays in L1 while all of them take it, Q32_STEP tokens per step.
 */
static inline __attribute__((always_inline)) AVX512 void gemm16(uint32_t type, uint64_t n, const uint8_t *w,
                                                                size_t w_stride, uint32_t n_rows,
                                                                const uint8_t *a, size_t a_stride,
                                                                uint32_t n_act, float *y, size_t y_stride) {
        uint64_t nb = n / (is_k16(type) ? QK_K : 32);
        uint32_t slice = is_k16(type) ? KT_SLICE : Q32_SLICE;
        Tile16 tile;
        __m512 acc[Q32_TOKENS], mx[Q32_TOKENS];

        for (uint32_t r0 = 0; r0 < n_rows; r0 += Q32_ROWS) {
                uint32_t nr = MIN(Q32_ROWS, n_rows - r0);
                __mmask16 rmask = (__mmask16)((1u << nr) - 1);
                Q32Rows rows;
                for (uint32_t i = 0; i < Q32_ROWS; i++)
                        rows.row[i] = w + (size_t)(r0 + MIN(i, nr - 1)) * w_stride;

                if (n_act == 1) {
                        const uint8_t *pf = w + (size_t)(r0 + nr) * w_stride;
                        size_t pf_len = Q32_ROWS * w_stride, pf_step = ALIGN_TO((pf_len + nb - 1) / nb, 64);
                        acc[0] = mx[0] = _mm512_setzero_ps();
                        for (uint64_t b = 0; b < nb; b++) {
                                for (size_t o = b * pf_step; o < MIN((b + 1) * pf_step, pf_len); o += 64)
                                        _mm_prefetch((const char *)pf + o, _MM_HINT_T0);
                                tile16_decode(type, &rows, b, &tile, 0);
                                tile16_dot(type, &tile, b, 1, n, a, a_stride, 1, acc, mx);
                        }
                        _mm512_mask_storeu_ps(y + r0, rmask, _mm512_add_ps(acc[0], mx[0]));
                        continue;
                }
                for (uint32_t t0 = 0; t0 < n_act; t0 += Q32_TOKENS) {
                        uint32_t nt = MIN(Q32_TOKENS, n_act - t0);
                        const uint8_t *a0 = a + t0 * a_stride;
                        for (uint32_t t = 0; t < nt; t++)
                                acc[t] = mx[t] = _mm512_setzero_ps();
                        for (uint64_t b0 = 0; b0 < nb; b0 += slice) {
                                uint32_t nbs = (uint32_t)MIN(slice, nb - b0);
                                /* With a single slice, the tile of the previous tokens is still this one. */
                                if (t0 == 0 || nb > slice)
                                        for (uint32_t j = 0; j < nbs; j++)
                                                tile16_decode(type, &rows, b0 + j, &tile, j);
                                uint32_t t = 0;
                                for (; t + Q32_STEP <= nt; t += Q32_STEP)
                                        tile16_dot(type, &tile, b0, nbs, n, a0 + t * a_stride, a_stride, Q32_STEP,
                                                   acc + t, mx + t);
                                for (; t < nt; t++)
                                        tile16_dot(type, &tile, b0, nbs, n, a0 + t * a_stride, a_stride, 1,
                                                   acc + t, mx + t);
                        }
                        for (uint32_t t = 0; t < nt; t++)
                                _mm512_mask_storeu_ps(y + (t0 + t) * y_stride + r0, rmask,
                                                      _mm512_add_ps(acc[t], mx[t]));
                }
        }
}

#define DEFINE_GEMM16(name, type)                                                                               \
        static AVX512 void name(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows,                \
                                const uint8_t *a, size_t a_stride, uint32_t n_act, float *y, size_t y_stride) { \
                gemm16(type, n, w, w_stride, n_rows, a, a_stride, n_act, y, y_stride);                          \
        }

DEFINE_GEMM16(gemm_q4_0, GGML_TYPE_Q4_0)
DEFINE_GEMM16(gemm_q4_1, GGML_TYPE_Q4_1)
DEFINE_GEMM16(gemm_q5_0, GGML_TYPE_Q5_0)
DEFINE_GEMM16(gemm_q5_1, GGML_TYPE_Q5_1)
DEFINE_GEMM16(gemm_q8_0, GGML_TYPE_Q8_0)
DEFINE_GEMM16(gemm_q2_k, GGML_TYPE_Q2_K)
DEFINE_GEMM16(gemm_q3_k, GGML_TYPE_Q3_K)
DEFINE_GEMM16(gemm_q4_k, GGML_TYPE_Q4_K)
DEFINE_GEMM16(gemm_q5_k, GGML_TYPE_Q5_K)
DEFINE_GEMM16(gemm_q6_k, GGML_TYPE_Q6_K)

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

/* ---- attention ---- */

/* e^x for 16 floats: exp256() on each half (the softmax takes little time beside the dot products). */
static inline __attribute__((always_inline)) AVX512 __m512 exp512(__m512 x) {
        __m512 lo = _mm512_castps256_ps512(exp256(_mm512_castps512_ps256(x)));
        return _mm512_insertf32x8(lo, exp256(_mm512_extractf32x8_ps(x, 1)), 1);
}

static inline __attribute__((always_inline)) AVX512 __m512 load_kv16(uint32_t kv_type, const uint8_t *p,
                                                                    uint32_t i) {
        if (kv_type == GGML_TYPE_F16)
                return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * i)));
        return _mm512_loadu_ps((const float *)p + i);
}

/* Lane j = the sum of the lanes of v[j]: 16 horizontal sums at once, in a tree of adds and shuffles. */
static inline __attribute__((always_inline)) AVX512 __m512 hsum16x16(const __m512 *v) {
        __m512 u[8], w[4];

        /* u[j], every 128-bit lane: partial sums of v[2j], v[2j + 1], v[2j], v[2j + 1]. */
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
                u[j] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * j], v[2 * j + 1]),
                                     _mm512_unpackhi_ps(v[2 * j], v[2 * j + 1]));
        /* w[j], every 128-bit lane: partial sums of v[4j] … v[4j + 3]. */
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
                __m512d a = _mm512_castps_pd(u[2 * j]), b = _mm512_castps_pd(u[2 * j + 1]);
                w[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                                     _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
        }
        /* The four 128-bit lanes of each w[j] summed into lane j. */
        __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
        __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(w[2], w[3], _MM_SHUFFLE(3, 1, 3, 1)));
        return _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
}

/*
 * NQ query heads (at most 4) of ND × 16 elements that share their keys and values. Scores 16 positions at a
 * time: the 16 key rows are converted to float once (kf), then each query takes one multiply-add chain per
 * position and one add/shuffle tree for the 16 sums; the softmax per query in 16-wide vectors; then each value
 * row is converted once and multiplied into every query's output, which stays in registers. A query's
 * operations are the same whatever NQ.
 */
static inline __attribute__((always_inline)) AVX512 void attend_group(int NQ, int ND, const float *q,
                                                                      const uint8_t *k, const uint8_t *v,
                                                                      size_t kv_stride, uint32_t kv_type,
                                                                      uint32_t n_pos, uint32_t head_dim,
                                                                      float scale, float *scores, float *out) {
        __m512 kf[16][8], vmax[4], o[4][8];
        float max[4], inv[4];
        uint32_t p = 0;

#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) {
                vmax[i] = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 8
                for (int d = 0; d < ND; d++)
                        o[i][d] = _mm512_setzero_ps();
        }
        for (; p + 16 <= n_pos; p += 16) {
#pragma GCC unroll 16
                for (int j = 0; j < 16; j++)
#pragma GCC unroll 8
                        for (int d = 0; d < ND; d++)
                                kf[j][d] = load_kv16(kv_type, k + (p + j) * kv_stride, 16 * d);
#pragma GCC unroll 4
                for (int i = 0; i < NQ; i++) {
                        const float *qi = q + i * head_dim;
                        __m512 part[16];
#pragma GCC unroll 16
                        for (int j = 0; j < 16; j++) {
                                part[j] = _mm512_mul_ps(_mm512_loadu_ps(qi), kf[j][0]);
#pragma GCC unroll 8
                                for (int d = 1; d < ND; d++)
                                        part[j] = _mm512_fmadd_ps(_mm512_loadu_ps(qi + 16 * d), kf[j][d], part[j]);
                        }
                        __m512 sc = _mm512_mul_ps(hsum16x16(part), _mm512_set1_ps(scale));
                        _mm512_storeu_ps(scores + i * n_pos + p, sc);
                        vmax[i] = _mm512_max_ps(vmax[i], sc);
                }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
                max[i] = _mm512_reduce_max_ps(vmax[i]);
        for (; p < n_pos; p++) {
#pragma GCC unroll 8
                for (int d = 0; d < ND; d++)
                        kf[0][d] = load_kv16(kv_type, k + p * kv_stride, 16 * d);
#pragma GCC unroll 4
                for (int i = 0; i < NQ; i++) {
                        const float *qi = q + i * head_dim;
                        __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qi), kf[0][0]);
#pragma GCC unroll 8
                        for (int d = 1; d < ND; d++)
                                acc = _mm512_fmadd_ps(_mm512_loadu_ps(qi + 16 * d), kf[0][d], acc);
                        float sc = _mm512_reduce_add_ps(acc) * scale;
                        scores[i * n_pos + p] = sc;
                        max[i] = sc > max[i] ? sc : max[i];
                }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) {
                float *si = scores + i * n_pos;
                __m512 bmax = _mm512_set1_ps(max[i]), vsum = _mm512_setzero_ps();
                for (p = 0; p < n_pos; p += 16) {
                        __mmask16 m = n_pos - p >= 16 ? 0xffff : (__mmask16)((1u << (n_pos - p)) - 1);
                        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, si + p), bmax));
                        _mm512_mask_storeu_ps(si + p, m, e);
                        vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
                }
                inv[i] = 1.0f / _mm512_reduce_add_ps(vsum);
        }
        for (p = 0; p < n_pos; p++) {
                const uint8_t *vp = v + p * kv_stride;
                __m512 a[4];
#pragma GCC unroll 4
                for (int i = 0; i < NQ; i++)
                        a[i] = _mm512_set1_ps(scores[i * n_pos + p] * inv[i]);
#pragma GCC unroll 8
                for (int d = 0; d < ND; d++) {
                        __m512 vv = load_kv16(kv_type, vp, 16 * d);
#pragma GCC unroll 4
                        for (int i = 0; i < NQ; i++)
                                o[i][d] = _mm512_fmadd_ps(a[i], vv, o[i][d]);
                }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
#pragma GCC unroll 8
                for (int d = 0; d < ND; d++)
                        _mm512_storeu_ps(out + i * head_dim + 16 * d, o[i][d]);
}

/* Queries in groups of up to four (two for heads of 128, whose outputs take twice the registers). */
static inline __attribute__((always_inline)) AVX512 void attend_groups(int ND, int max_nq, const float *q,
                                                                       uint32_t n_q, const uint8_t *k,
                                                                       const uint8_t *v, size_t kv_stride,
                                                                       uint32_t kv_type, uint32_t n_pos,
                                                                       uint32_t head_dim, float scale,
                                                                       float *scores, float *out) {
        for (uint32_t i = 0; i < n_q;) {
                uint32_t g = MIN((uint32_t)max_nq, n_q - i);
                const float *qi = q + (size_t)i * head_dim;
                float *oi = out + (size_t)i * head_dim;
                switch (g) {
                case 1:
                        attend_group(1, ND, qi, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores, oi);
                        break;
                case 2:
                        attend_group(2, ND, qi, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores, oi);
                        break;
                case 3:
                        attend_group(3, ND, qi, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores, oi);
                        break;
                default:
                        attend_group(4, ND, qi, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores, oi);
                        break;
                }
                i += g;
        }
}

static AVX512 void attend_avx512(const float *q, uint32_t n_q, const uint8_t *k, const uint8_t *v,
                                 size_t kv_stride, uint32_t kv_type, uint32_t n_pos, uint32_t head_dim,
                                 float scale, float *scores, float *out) {
        switch (head_dim) {
        case 64:
                attend_groups(4, 4, q, n_q, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores, out);
                break;
        case 128:
                attend_groups(8, 2, q, n_q, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores, out);
                break;
        default:
                cpu_kernels_avx2.attend(q, n_q, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores, out);
                break;
        }
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
        .attend = attend_avx512,
};
