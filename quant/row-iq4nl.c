/* SPDX-License-Identifier: MIT */
/*
 * Reference quantizer for IQ4_NL: blocks of 32 with one binary16 scale and 4-bit indices into a fixed table
 * of 16 non-uniform levels, denser near zero where weights are.
 *
 * DESIGN
 * The scale is searched as for the k-quants: start from max/127 (the extreme value lands on the table's
 * end), then try the 15 scales (k - 127)/max for k in -7..7 (negative ones flip which end of the asymmetric
 * table the extreme value uses), each time mapping every element to its nearest table entry and fitting the
 * scale by weighted least squares (weights x^2); the best fit wins, and the indices are chosen once more
 * against it.
 */

#include "quant-internal.h"

static const int8_t iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                        1,    13,   25,  38,  53,  69,  89,  113};

/* Index of the table entry nearest to v (the upper one on a tie). */
static int nearest_level(float v) {
        int lo = 0, hi = 15;

        if (v <= iq4nl_values[0])
                return 0;
        if (v >= iq4nl_values[15])
                return 15;
        while (hi - lo > 1) {
                int mid = (lo + hi) / 2;
                if (v < iq4nl_values[mid])
                        hi = mid;
                else
                        lo = mid;
        }
        return v - iq4nl_values[lo] < iq4nl_values[hi] - v ? lo : hi;
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

void quant_row_iq4_nl_ref(const float *x, void *y, size_t n) {
        BlockIQ4_NL *b = y;
        const int ntry = 7;

        for (size_t i = 0; i < n / QK4_NL; i++, x += QK4_NL) {
                float w[QK4_NL], amax = 0.0f, max = 0.0f;

                for (int j = 0; j < QK4_NL; j++) {
                        w[j] = x[j] * x[j];
                        if (fabsf(x[j]) > amax) {
                                amax = fabsf(x[j]);
                                max = x[j];
                        }
                }
                if (amax < QUANT_GROUP_MAX_EPS) {
                        memset(&b[i], 0, sizeof(b[i]));
                        continue;
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

                b[i].d = quant_fp32_to_fp16(d);
                const float id = d != 0.0f ? 1.0f / d : 0.0f;
                for (int j = 0; j < QK4_NL / 2; j++)
                        b[i].qs[j] =
                                (uint8_t)(nearest_level(id * x[j]) | (nearest_level(id * x[j + 16]) << 4));
        }
}
