/* SPDX-License-Identifier: MIT */
/*
 * Quantizer for IQ4_NL: blocks of 32 with one binary16 scale and 4-bit indices into a fixed table
 * of 16 non-uniform levels, denser near zero where weights are.
 *
 * DESIGN
 * The scale is searched as for the k-quants: start from max/127 (the extreme value lands on the table's
 * end), then try the 15 scales (k - 127)/max for k in -7..7 (negative ones flip which end of the asymmetric
 * table the extreme value uses), each time mapping every element to its nearest table entry and fitting the
 * scale by weighted least squares (weights x^2); the best fit wins, and the indices are chosen once more
 * against it.
 * The fast version runs four blocks at a time in SSE lanes with exactly the reference's operations.
 */

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "quant-internal.h"

static const int8_t iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                        1,    13,   25,  38,  53,  69,  89,  113};

/* For each integer f in -127..112, the last table entry not above f. The entries are integers, so that is
 * also the last entry not above any v with floor(v) = f. */
static const uint8_t level_below[240] = {
        0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  1,
        1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  2,  2,  2,  2,
        2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,
        3,  3,  3,  3,  3,  3,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  5,  5,  5,  5,
        5,  5,  5,  5,  5,  5,  5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  7,  7,  7,
        7,  7,  7,  7,  7,  7,  7,  7,  8,  8,  8,  8,  8,  8,  8,  8,  8,  8,  8,  8,  9,  9,  9,  9,
        9,  9,  9,  9,  9,  9,  9,  9,  10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11,
        11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
        12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
        14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
};

/* Index of the table entry nearest to v (the upper one on a tie): the entry not above v and the next one, as
 * a binary search would find them, then the closer of the two. */
static int nearest_level(float v) {
        int f, lo;

        if (v <= iq4nl_values[0])
                return 0;
        if (v >= iq4nl_values[15])
                return 15;
        f = (int)v; /* truncates towards zero; floor for negative non-integers is one less */
        if ((float)f > v)
                f--;
        lo = level_below[f + 127];
        return v - iq4nl_values[lo] < iq4nl_values[lo + 1] - v ? lo : lo + 1;
}

/* Weighted least-squares fit of x to the levels chosen at inverse scale id: returns sum w q x and sum w q^2.
 */
static void fit(const float *x, const float *w, float id, float *ret_qx, float *ret_q2) {
        float qx = 0.0f, q2 = 0.0f;

        for (int j = 0; j < QK4_NL; j++) {
                float q = iq4nl_values[nearest_level(id * x[j])];
                qx += w[j] * q * x[j];
                q2 += w[j] * q * q;
        }
        *ret_qx = qx;
        *ret_q2 = q2;
}

/* Stores scale d and the indices of x's levels against it. */
static void store(const float *x, float d, BlockIQ4_NL *b) {
        const float id = d != 0.0f ? 1.0f / d : 0.0f;

        b->d = engine_f32_to_fp16(d);
        for (int j = 0; j < QK4_NL / 2; j++)
                b->qs[j] = (uint8_t)(nearest_level(id * x[j]) | (nearest_level(id * x[j + 16]) << 4));
}

/* Quantizes one block of 32 by the search above. */
static void quant_block(const float *x, BlockIQ4_NL *b) {
        const int ntry = 7;
        float w[QK4_NL], amax = 0.0f, max = 0.0f;

        for (int j = 0; j < QK4_NL; j++) {
                w[j] = x[j] * x[j];
                if (fabsf(x[j]) > amax) {
                        amax = fabsf(x[j]);
                        max = x[j];
                }
        }
        if (amax < QUANT_GROUP_MAX_EPS) {
                memset(b, 0, sizeof(*b));
                return;
        }

        float qx, q2, d;
        fit(x, w, -(float)iq4nl_values[0] / max, &qx, &q2);
        d = qx / q2;
        float best = d * qx;
        for (int k = -ntry; k <= ntry; k++) {
                fit(x, w, ((float)k + (float)iq4nl_values[0]) / max, &qx, &q2);
                if (q2 > 0.0f && qx * qx > best * q2) {
                        d = qx / q2;
                        best = d * qx;
                }
        }
        store(x, d, b);
}

void quant_row_iq4_nl_ref(const float *x, void *y, size_t n) {
        BlockIQ4_NL *b = y;

        for (size_t i = 0; i < n / QK4_NL; i++)
                quant_block(x + i * QK4_NL, &b[i]);
}

#if defined(__SSE2__)
/*
 * Four blocks at once, one per SSE lane, each lane doing exactly the scalar search's operations in the same
 * order, its branches turned into selects: the same bytes as quant_block().
 */

static inline __m128 select_ps(__m128 mask, __m128 a, __m128 b) {
        return _mm_or_ps(_mm_and_ps(mask, a), _mm_andnot_ps(mask, b));
}

/* The table value nearest_level() picks for each lane of v. */
static inline __m128 nearest_value_x4(__m128 v) {
        const __m128 first = _mm_set1_ps(iq4nl_values[0]), last = _mm_set1_ps(iq4nl_values[15]);
        const __m128 c = _mm_min_ps(_mm_max_ps(v, first), _mm_set1_ps(112.0f));
        __m128i f = _mm_cvttps_epi32(c);
        int32_t idx[4];
        float lo[4], hi[4];

        f = _mm_add_epi32(f, _mm_castps_si128(_mm_cmpgt_ps(_mm_cvtepi32_ps(f), c))); /* floor */
        _mm_storeu_si128((__m128i *)idx, f);
        for (int g = 0; g < 4; g++) {
                int l = level_below[idx[g] + 127];
                lo[g] = iq4nl_values[l];
                hi[g] = iq4nl_values[l + 1];
        }
        const __m128 vlo = _mm_loadu_ps(lo), vhi = _mm_loadu_ps(hi);
        __m128 r = select_ps(_mm_cmplt_ps(_mm_sub_ps(v, vlo), _mm_sub_ps(vhi, v)), vlo, vhi);
        r = select_ps(_mm_cmple_ps(v, first), first, r);
        return select_ps(_mm_cmpge_ps(v, last), last, r);
}

static void fit_x4(const __m128 *xv, const __m128 *wv, __m128 id, __m128 *ret_qx, __m128 *ret_q2) {
        __m128 qx = _mm_setzero_ps(), q2 = _mm_setzero_ps();

        for (int j = 0; j < QK4_NL; j++) {
                const __m128 q = nearest_value_x4(_mm_mul_ps(id, xv[j]));
                const __m128 wq = _mm_mul_ps(wv[j], q);
                qx = _mm_add_ps(qx, _mm_mul_ps(wq, xv[j]));
                q2 = _mm_add_ps(q2, _mm_mul_ps(wq, q));
        }
        *ret_qx = qx;
        *ret_q2 = q2;
}

static void quant_blocks_x4(const float *x, BlockIQ4_NL *b) {
        const int ntry = 7;
        __m128 xv[QK4_NL], wv[QK4_NL], amax = _mm_setzero_ps(), max = _mm_setzero_ps();
        const __m128 sign = _mm_set1_ps(-0.0f);

        for (int j = 0; j < QK4_NL; j++) {
                xv[j] = _mm_setr_ps(x[j], x[QK4_NL + j], x[2 * QK4_NL + j], x[3 * QK4_NL + j]);
                wv[j] = _mm_mul_ps(xv[j], xv[j]);
                const __m128 ax = _mm_andnot_ps(sign, xv[j]), bigger = _mm_cmpgt_ps(ax, amax);
                amax = select_ps(bigger, ax, amax);
                max = select_ps(bigger, xv[j], max);
        }
        const __m128 tiny = _mm_cmplt_ps(amax, _mm_set1_ps(QUANT_GROUP_MAX_EPS));
        /* Tiny lanes divide by a zero max; their results are dropped, but keep the arithmetic finite. */
        const __m128 safe_max = select_ps(tiny, _mm_set1_ps(1.0f), max);

        __m128 qx, q2, d, best;
        fit_x4(xv, wv, _mm_div_ps(_mm_set1_ps(-(float)iq4nl_values[0]), safe_max), &qx, &q2);
        d = _mm_div_ps(qx, q2);
        best = _mm_mul_ps(d, qx);
        for (int k = -ntry; k <= ntry; k++) {
                fit_x4(xv, wv, _mm_div_ps(_mm_set1_ps((float)k + (float)iq4nl_values[0]), safe_max), &qx,
                       &q2);
                const __m128 take = _mm_and_ps(_mm_cmpgt_ps(q2, _mm_setzero_ps()),
                                               _mm_cmpgt_ps(_mm_mul_ps(qx, qx), _mm_mul_ps(best, q2)));
                if (_mm_movemask_ps(take) == 0)
                        continue;
                d = select_ps(take, _mm_div_ps(qx, q2), d);
                best = select_ps(take, _mm_mul_ps(d, qx), best);
        }

        float dv[4];
        int t = _mm_movemask_ps(tiny);
        _mm_storeu_ps(dv, d);
        for (int g = 0; g < 4; g++)
                if (t & (1 << g))
                        memset(&b[g], 0, sizeof(b[g]));
                else
                        store(x + g * QK4_NL, dv[g], &b[g]);
}
#endif

void quant_row_iq4_nl_fast(const float *x, void *y, size_t n) {
        BlockIQ4_NL *b = y;
        size_t i = 0;

#if defined(__SSE2__)
        for (; i + 4 <= n / QK4_NL; i += 4)
                quant_blocks_x4(x + i * QK4_NL, &b[i]);
#endif
        for (; i < n / QK4_NL; i++)
                quant_block(x + i * QK4_NL, &b[i]);
}
