/* SPDX-License-Identifier: MIT */
/*
 * Quantizers for the k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): super-blocks of 256 elements split
 * into groups of 16 or 32, each group with its own small integer scale (and minimum) that is itself
 * quantized against one binary16 scale per super-block.
 *
 * DESIGN
 * The searches are the published k-quant ones, written from their description:
 * - symmetric types (Q3_K, Q6_K) pick each group's scale by trying scales around -nmax/max and keeping the
 *   one with the best weighted least-squares fit (search_symmetric), Q3_K with a few rounds of moving single
 *   levels instead (refine_symmetric);
 * - asymmetric types (Q2_K, Q4_K, Q5_K) fit scale and minimum together: for each candidate level count
 *   around nmax/(max - min) they round, solve the 2x2 weighted least squares for scale and minimum in closed
 *   form, and keep the fit with the smallest weighted error (search_scale_min).
 * Then the group scales are quantized, and every element is re-rounded against the scale it will really be
 * decoded with (the binary16 super-block scale times the group's integer scale), so the stored levels match
 * what a reader reconstructs.
 *
 * Each type has a scalar reference (quant_row_*_ref) and a fast version (quant_row_*_fast) that runs the
 * group searches four groups at a time in SSE lanes with exactly the reference's operations, so both write
 * the same bytes; test-quant-rows checks that, test-quant-llama-cpp checks both against llama.cpp.
 */

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "quant-internal.h"

/*
 * Symmetric fit of n values to levels -nmax..nmax-1 with weights x^2: tries scales (nmax + 0.1 k) / max for
 * k in -9..9 around the plain one and keeps the best least-squares one. Stores levels + nmax in L and
 * returns the scale (0 for an all-zero group).
 */
static float search_symmetric(int n, int nmax, const float *x, uint8_t *L) {
        float amax = 0.0f, max = 0.0f;

        for (int i = 0; i < n; i++)
                if (fabsf(x[i]) > amax) {
                        amax = fabsf(x[i]);
                        max = x[i];
                }
        if (amax < QUANT_GROUP_MAX_EPS) {
                memset(L, 0, (size_t)n);
                return 0.0f;
        }

        float best_scale = 0.0f, best = 0.0f;
        for (int k = 0; k <= 18; k++) {
                /* The plain scale first, then its neighbours, so that ties keep the plain one. */
                int step = k == 0 ? 0 : k <= 9 ? -10 + k : k - 9;
                const float iscale = -((float)nmax + 0.1f * (float)step) / max;
                float sumlx = 0.0f, suml2 = 0.0f;

                for (int i = 0; i < n; i++) {
                        int l = clampi(quant_nearest_int(iscale * x[i]), -nmax, nmax - 1);
                        float w = x[i] * x[i];
                        sumlx += w * x[i] * (float)l;
                        suml2 += w * (float)l * (float)l;
                }
                if (k == 0) {
                        best_scale = suml2 > 0.0f ? sumlx / suml2 : 0.0f;
                        best = best_scale * sumlx;
                } else if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
                        best_scale = sumlx / suml2;
                        best = best_scale * sumlx;
                } else
                        continue;
                for (int i = 0; i < n; i++)
                        L[i] = (uint8_t)(clampi(quant_nearest_int(iscale * x[i]), -nmax, nmax - 1) + nmax);
        }
        return best_scale;
}

/*
 * Symmetric fit for Q3_K: round at -nmax/max, then up to five passes that move single levels to where the
 * weighted least-squares scale of the others wants them, keeping each move that improves the fit. Stores
 * levels + nmax in L and returns the scale.
 */
static float refine_symmetric(int n, int nmax, const float *x, uint8_t *L) {
        float amax = 0.0f, max = 0.0f;
        int l[QK_K / 16];

        for (int i = 0; i < n; i++)
                if (fabsf(x[i]) > amax) {
                        amax = fabsf(x[i]);
                        max = x[i];
                }
        if (amax < QUANT_GROUP_MAX_EPS) {
                memset(L, 0, (size_t)n);
                return 0.0f;
        }

        const float iscale = -(float)nmax / max;
        float sumlx = 0.0f, suml2 = 0.0f;
        for (int i = 0; i < n; i++) {
                float w = x[i] * x[i];
                l[i] = clampi(quant_nearest_int(iscale * x[i]), -nmax, nmax - 1);
                sumlx += w * x[i] * (float)l[i];
                suml2 += w * (float)l[i] * (float)l[i];
        }
        for (int pass = 0; pass < 5; pass++) {
                int changed = 0;

                for (int i = 0; i < n; i++) {
                        float w = x[i] * x[i];
                        float slx = sumlx - w * x[i] * (float)l[i];

                        if (slx <= 0.0f)
                                continue;
                        float sl2 = suml2 - w * (float)l[i] * (float)l[i];
                        int nl = clampi(quant_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                        if (nl == l[i])
                                continue;
                        slx += w * x[i] * (float)nl;
                        sl2 += w * (float)nl * (float)nl;
                        /* Better when slx^2/sl2 > sumlx^2/suml2. */
                        if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                                l[i] = nl;
                                sumlx = slx;
                                suml2 = sl2;
                                changed++;
                        }
                }
                if (changed == 0)
                        break;
        }
        for (int i = 0; i < n; i++)
                L[i] = (uint8_t)(l[i] + nmax);
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/*
 * Asymmetric fit x ≈ scale * L - min_out with L in 0..nmax and a minimum that is never positive (so min_out
 * >= 0), minimising the weighted squared error (or the weighted absolute error with use_abs). Tries level
 * counts nmax + rmin + rdelta * k for k in 0..nstep. Laux is scratch of n bytes. Returns the scale.
 */
static float search_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *min_out,
                              uint8_t *Laux, float rmin, float rdelta, int nstep, bool use_abs) {
        float lo = x[0], hi = x[0], sum_w = w[0], sum_x = w[0] * x[0];

        for (int i = 1; i < n; i++) {
                lo = MIN(lo, x[i]);
                hi = MAX(hi, x[i]);
                sum_w += w[i];
                sum_x += w[i] * x[i];
        }
        if (lo > 0.0f)
                lo = 0.0f;
        if (hi == lo) {
                memset(L, 0, (size_t)n);
                *min_out = -lo;
                return 0.0f;
        }

        float iscale = (float)nmax / (hi - lo), scale = 1.0f / iscale, best_err = 0.0f;
        for (int i = 0; i < n; i++) {
                L[i] = (uint8_t)clampi(quant_nearest_int(iscale * (x[i] - lo)), 0, nmax);
                float diff = scale * (float)L[i] + lo - x[i];
                best_err += w[i] * (use_abs ? fabsf(diff) : diff * diff);
        }

        for (int k = 0; k <= nstep; k++) {
                float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;

                iscale = (rmin + rdelta * (float)k + (float)nmax) / (hi - lo);
                for (int i = 0; i < n; i++) {
                        int l = clampi(quant_nearest_int(iscale * (x[i] - lo)), 0, nmax);
                        Laux[i] = (uint8_t)l;
                        sum_l += w[i] * (float)l;
                        sum_l2 += w[i] * (float)l * (float)l;
                        sum_xl += w[i] * (float)l * x[i];
                }
                const float det = sum_w * sum_l2 - sum_l * sum_l;
                if (det <= 0.0f)
                        continue;
                float s = (sum_w * sum_xl - sum_x * sum_l) / det;
                float m = (sum_l2 * sum_x - sum_l * sum_xl) / det;
                if (m > 0.0f) {
                        m = 0.0f;
                        s = sum_xl / sum_l2;
                }
                float err = 0.0f;
                for (int i = 0; i < n; i++) {
                        float diff = s * (float)Laux[i] + m - x[i];
                        err += w[i] * (use_abs ? fabsf(diff) : diff * diff);
                }
                if (err < best_err) {
                        memcpy(L, Laux, (size_t)n);
                        best_err = err;
                        scale = s;
                        lo = m;
                }
        }
        *min_out = -lo;
        return scale;
}

#if defined(__SSE2__)
/*
 * The fast searches run four groups at once, one per SSE lane. Each lane performs exactly the scalar
 * search's operations on its own group, in the same order (no FMA, the same divisions, rounding by cvtps2dq
 * in the default round-to-nearest-even mode as lrintf() does), and every data-dependent branch of the scalar
 * code becomes a per-lane select, so the results are bit for bit the reference's. Rounding after clamping
 * equals clamping after rounding because the bounds are integers.
 */

static inline __m128 round_clamped(__m128 v, __m128 lo, __m128 hi) {
        return _mm_cvtepi32_ps(_mm_cvtps_epi32(_mm_min_ps(_mm_max_ps(v, lo), hi)));
}

static inline __m128 select_ps(__m128 mask, __m128 a, __m128 b) {
        return _mm_or_ps(_mm_and_ps(mask, a), _mm_andnot_ps(mask, b));
}

static inline __m128 abs_ps(__m128 v) {
        return _mm_andnot_ps(_mm_set1_ps(-0.0f), v);
}

/* search_scale_min() for groups g0..g0+3 of n elements (x and w hold the groups one after another). */
static void search_scale_min_x4(int n, int nmax, const float *x, const float *w, uint8_t *L,
                                float *scale_out, float *min_out, float rmin, float rdelta, int nstep,
                                bool use_abs) {
        __m128 xv[32], wv[32], Lv[32], Laux[32];
        const __m128 zero = _mm_setzero_ps(), top = _mm_set1_ps((float)nmax);

        for (int i = 0; i < n; i++) {
                xv[i] = _mm_setr_ps(x[i], x[n + i], x[2 * n + i], x[3 * n + i]);
                wv[i] = _mm_setr_ps(w[i], w[n + i], w[2 * n + i], w[3 * n + i]);
        }
        __m128 lo = xv[0], hi = xv[0], sum_w = wv[0], sum_x = _mm_mul_ps(wv[0], xv[0]);
        for (int i = 1; i < n; i++) {
                lo = _mm_min_ps(lo, xv[i]);
                hi = _mm_max_ps(hi, xv[i]);
                sum_w = _mm_add_ps(sum_w, wv[i]);
                sum_x = _mm_add_ps(sum_x, _mm_mul_ps(wv[i], xv[i]));
        }
        lo = _mm_andnot_ps(_mm_cmpgt_ps(lo, zero), lo);
        const __m128 flat = _mm_cmpeq_ps(hi, lo); /* lanes that the scalar code returns early for */

        __m128 iscale = _mm_div_ps(top, _mm_sub_ps(hi, lo));
        __m128 scale = _mm_div_ps(_mm_set1_ps(1.0f), iscale), best_err = zero;
        for (int i = 0; i < n; i++) {
                Lv[i] = round_clamped(_mm_mul_ps(iscale, _mm_sub_ps(xv[i], lo)), zero, top);
                __m128 diff = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(scale, Lv[i]), lo), xv[i]);
                diff = use_abs ? abs_ps(diff) : _mm_mul_ps(diff, diff);
                best_err = _mm_add_ps(best_err, _mm_mul_ps(wv[i], diff));
        }

        for (int k = 0; k <= nstep; k++) {
                __m128 sum_l = zero, sum_l2 = zero, sum_xl = zero;

                iscale = _mm_div_ps(_mm_set1_ps(rmin + rdelta * (float)k + (float)nmax), _mm_sub_ps(hi, lo));
                for (int i = 0; i < n; i++) {
                        Laux[i] = round_clamped(_mm_mul_ps(iscale, _mm_sub_ps(xv[i], lo)), zero, top);
                        __m128 wl = _mm_mul_ps(wv[i], Laux[i]);
                        sum_l = _mm_add_ps(sum_l, wl);
                        sum_l2 = _mm_add_ps(sum_l2, _mm_mul_ps(wl, Laux[i]));
                        sum_xl = _mm_add_ps(sum_xl, _mm_mul_ps(wl, xv[i]));
                }
                const __m128 det = _mm_sub_ps(_mm_mul_ps(sum_w, sum_l2), _mm_mul_ps(sum_l, sum_l));
                const __m128 valid = _mm_cmpgt_ps(det, zero);
                if (_mm_movemask_ps(valid) == 0)
                        continue;
                __m128 sv = _mm_div_ps(_mm_sub_ps(_mm_mul_ps(sum_w, sum_xl), _mm_mul_ps(sum_x, sum_l)), det);
                __m128 mv =
                        _mm_div_ps(_mm_sub_ps(_mm_mul_ps(sum_l2, sum_x), _mm_mul_ps(sum_l, sum_xl)), det);
                const __m128 mpos = _mm_cmpgt_ps(mv, zero);
                mv = _mm_andnot_ps(mpos, mv);
                sv = select_ps(mpos, _mm_div_ps(sum_xl, sum_l2), sv);
                __m128 err = zero;
                for (int i = 0; i < n; i++) {
                        __m128 diff = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(sv, Laux[i]), mv), xv[i]);
                        diff = use_abs ? abs_ps(diff) : _mm_mul_ps(diff, diff);
                        err = _mm_add_ps(err, _mm_mul_ps(wv[i], diff));
                }
                const __m128 better = _mm_andnot_ps(flat, _mm_and_ps(valid, _mm_cmplt_ps(err, best_err)));
                if (_mm_movemask_ps(better) == 0)
                        continue;
                for (int i = 0; i < n; i++)
                        Lv[i] = select_ps(better, Laux[i], Lv[i]);
                best_err = select_ps(better, err, best_err);
                scale = select_ps(better, sv, scale);
                lo = select_ps(better, mv, lo);
        }

        float sc[4], lov[4], l[4];
        _mm_storeu_ps(sc, _mm_andnot_ps(flat, scale));
        _mm_storeu_ps(lov, lo);
        for (int g = 0; g < 4; g++) {
                scale_out[g] = sc[g];
                min_out[g] = -lov[g];
        }
        for (int i = 0; i < n; i++) {
                _mm_storeu_ps(l, _mm_andnot_ps(flat, Lv[i]));
                for (int g = 0; g < 4; g++)
                        L[g * n + i] = (uint8_t)l[g];
        }
}

/* search_symmetric() for four groups of n elements (one after another in x). */
static void search_symmetric_x4(int n, int nmax, const float *x, uint8_t *L, float *scale_out) {
        __m128 xv[16], wv[16], Lv[16];
        const __m128 zero = _mm_setzero_ps(), bot = _mm_set1_ps(-(float)nmax),
                     top = _mm_set1_ps((float)(nmax - 1));
        __m128 amax = zero, max = zero;

        for (int i = 0; i < n; i++) {
                xv[i] = _mm_setr_ps(x[i], x[n + i], x[2 * n + i], x[3 * n + i]);
                wv[i] = _mm_mul_ps(xv[i], xv[i]);
                const __m128 bigger = _mm_cmpgt_ps(abs_ps(xv[i]), amax);
                amax = select_ps(bigger, abs_ps(xv[i]), amax);
                max = select_ps(bigger, xv[i], max);
        }
        const __m128 tiny = _mm_cmplt_ps(amax, _mm_set1_ps(QUANT_GROUP_MAX_EPS));

        __m128 best_scale = zero, best = zero;
        for (int k = 0; k <= 18; k++) {
                const int step = k == 0 ? 0 : k <= 9 ? -10 + k : k - 9;
                const __m128 iscale = _mm_div_ps(_mm_set1_ps(-((float)nmax + 0.1f * (float)step)), max);
                __m128 sumlx = zero, suml2 = zero, l[16];

                for (int i = 0; i < n; i++) {
                        l[i] = round_clamped(_mm_mul_ps(iscale, xv[i]), bot, top);
                        sumlx = _mm_add_ps(sumlx, _mm_mul_ps(_mm_mul_ps(wv[i], xv[i]), l[i]));
                        suml2 = _mm_add_ps(suml2, _mm_mul_ps(_mm_mul_ps(wv[i], l[i]), l[i]));
                }
                const __m128 pos = _mm_cmpgt_ps(suml2, zero);
                __m128 take;
                if (k == 0) {
                        best_scale = _mm_and_ps(pos, _mm_div_ps(sumlx, suml2));
                        best = _mm_mul_ps(best_scale, sumlx);
                        take = _mm_cmpeq_ps(zero, zero);
                } else {
                        take = _mm_and_ps(pos,
                                          _mm_cmpgt_ps(_mm_mul_ps(sumlx, sumlx), _mm_mul_ps(best, suml2)));
                        if (_mm_movemask_ps(take) == 0)
                                continue;
                        best_scale = select_ps(take, _mm_div_ps(sumlx, suml2), best_scale);
                        best = select_ps(take, _mm_mul_ps(best_scale, sumlx), best);
                }
                for (int i = 0; i < n; i++)
                        Lv[i] = select_ps(take, _mm_add_ps(l[i], _mm_set1_ps((float)nmax)), Lv[i]);
        }

        float sc[4], lv[4];
        _mm_storeu_ps(sc, _mm_andnot_ps(tiny, best_scale));
        for (int g = 0; g < 4; g++)
                scale_out[g] = sc[g];
        for (int i = 0; i < n; i++) {
                _mm_storeu_ps(lv, _mm_andnot_ps(tiny, Lv[i]));
                for (int g = 0; g < 4; g++)
                        L[g * n + i] = (uint8_t)lv[g];
        }
}
#endif

/* Fits n_groups groups of n elements with search_scale_min(), four at a time when fast. */
static void fit_scale_min_groups(const float *x, const float *w, int n_groups, int n, int nmax, float rmin,
                                 int nstep, bool use_abs, float *scales, float *mins, uint8_t *L,
                                 bool fast) {
        uint8_t Laux[32];
        int g = 0;

#if defined(__SSE2__)
        if (fast)
                for (; g + 4 <= n_groups; g += 4)
                        search_scale_min_x4(n, nmax, x + g * n, w + g * n, L + g * n, scales + g, mins + g,
                                            rmin, 0.1f, nstep, use_abs);
#endif
        for (; g < n_groups; g++)
                scales[g] = search_scale_min(n, nmax, x + g * n, w + g * n, L + g * n, &mins[g], Laux, rmin,
                                             0.1f, nstep, use_abs);
}

/* Fits n_groups groups of 16 with search_symmetric(), four at a time when fast. */
static void fit_symmetric_groups(const float *x, int n_groups, int nmax, float *scales, uint8_t *L,
                                 bool fast) {
        int g = 0;

#if defined(__SSE2__)
        if (fast)
                for (; g + 4 <= n_groups; g += 4)
                        search_symmetric_x4(16, nmax, x + g * 16, L + g * 16, scales + g);
#endif
        for (; g < n_groups; g++)
                scales[g] = search_symmetric(16, nmax, x + g * 16, L + g * 16);
}

/* ---- Q2_K: 16 groups of 16, 2-bit levels, 4-bit scales and minimums ---- */

static void q2_k_rows(const float *x, void *y, size_t n, bool fast) {
        BlockQ2_K *b = y;
        uint8_t L[QK_K];
        float w[QK_K], mins[QK_K / 16], scales[QK_K / 16];

        for (size_t i = 0; i < n / QK_K; i++, x += QK_K) {
                float max_scale = 0.0f, max_min = 0.0f;

                for (int l = 0; l < QK_K; l++)
                        w[l] = fabsf(x[l]);
                fit_scale_min_groups(x, w, QK_K / 16, 16, 3, -0.5f, 15, true, scales, mins, L, fast);
                for (int j = 0; j < QK_K / 16; j++) {
                        max_scale = MAX(max_scale, scales[j]);
                        max_min = MAX(max_min, mins[j]);
                }

                memset(b[i].scales, 0, sizeof(b[i].scales));
                b[i].d = b[i].dmin = 0;
                if (max_scale > 0.0f) {
                        const float is = 15.0f / max_scale;
                        for (int j = 0; j < QK_K / 16; j++)
                                b[i].scales[j] = (uint8_t)clampi(quant_nearest_int(is * scales[j]), 0, 15);
                        b[i].d = engine_f32_to_fp16(max_scale / 15.0f);
                }
                if (max_min > 0.0f) {
                        const float im = 15.0f / max_min;
                        for (int j = 0; j < QK_K / 16; j++)
                                b[i].scales[j] |=
                                        (uint8_t)(clampi(quant_nearest_int(im * mins[j]), 0, 15) << 4);
                        b[i].dmin = engine_f32_to_fp16(max_min / 15.0f);
                }

                const float d = engine_fp16_to_f32(b[i].d), dmin = engine_fp16_to_f32(b[i].dmin);
                for (int j = 0; j < QK_K / 16; j++) {
                        const float dl = d * (float)(b[i].scales[j] & 0x0f);
                        if (dl == 0.0f)
                                continue;
                        const float ml = dmin * (float)(b[i].scales[j] >> 4);
                        for (int l = 0; l < 16; l++)
                                L[16 * j + l] =
                                        (uint8_t)clampi(quant_nearest_int((x[16 * j + l] + ml) / dl), 0, 3);
                }

                /* Byte l of each 32-byte half holds elements l, l+32, l+64, l+96 of its 128, two bits each.
                 */
                for (int h = 0; h < 2; h++)
                        for (int l = 0; l < 32; l++) {
                                const uint8_t *q = L + 128 * h + l;
                                b[i].qs[32 * h + l] = q[0] | (uint8_t)(q[32] << 2) | (uint8_t)(q[64] << 4) |
                                                      (uint8_t)(q[96] << 6);
                        }
        }
}

void quant_row_q2_k_ref(const float *x, void *y, size_t n) {
        q2_k_rows(x, y, n, false);
}

void quant_row_q2_k_fast(const float *x, void *y, size_t n) {
        q2_k_rows(x, y, n, true);
}

/* ---- Q3_K: 16 groups of 16, 3-bit levels (2 low bits + a high-bit mask), 6-bit signed scales ---- */

void quant_row_q3_k_ref(const float *x, void *y, size_t n) {
        BlockQ3_K *b = y;
        uint8_t L[QK_K];
        float scales[QK_K / 16];

        for (size_t i = 0; i < n / QK_K; i++, x += QK_K) {
                float amax = 0.0f, max_scale = 0.0f;

                for (int j = 0; j < QK_K / 16; j++) {
                        scales[j] = refine_symmetric(16, 4, x + 16 * j, L + 16 * j);
                        if (fabsf(scales[j]) > amax) {
                                amax = fabsf(scales[j]);
                                max_scale = scales[j];
                        }
                }

                /* Scale j: low nibble in byte j (j < 8) or high nibble of byte j - 8; top two bits in byte
                 * 8 + j % 4 at bit 2 * (j / 4). */
                memset(b[i].scales, 0, sizeof(b[i].scales));
                b[i].d = 0;
                if (max_scale != 0.0f) {
                        const float is = -32.0f / max_scale;
                        for (int j = 0; j < QK_K / 16; j++) {
                                int l = clampi(quant_nearest_int(is * scales[j]), -32, 31) + 32;
                                if (j < 8)
                                        b[i].scales[j] = (uint8_t)(l & 0x0f);
                                else
                                        b[i].scales[j - 8] |= (uint8_t)((l & 0x0f) << 4);
                                b[i].scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
                        }
                        b[i].d = engine_f32_to_fp16(1.0f / is);
                }

                const float d = engine_fp16_to_f32(b[i].d);
                for (int j = 0; j < QK_K / 16; j++) {
                        int sc = j < 8 ? b[i].scales[j] & 0x0f : b[i].scales[j - 8] >> 4;
                        sc = (sc | (((b[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
                        const float dl = d * (float)sc;
                        if (dl == 0.0f)
                                continue;
                        for (int l = 0; l < 16; l++)
                                L[16 * j + l] =
                                        (uint8_t)(clampi(quant_nearest_int(x[16 * j + l] / dl), -4, 3) + 4);
                }

                /* Level l in 0..7 is stored as l & 3 plus a mask bit (bit j / 32 of byte j % 32) set when
                 * l >= 4; a reader subtracts 4 where the bit is clear. */
                memset(b[i].hmask, 0, sizeof(b[i].hmask));
                for (int j = 0; j < QK_K; j++)
                        if (L[j] > 3) {
                                b[i].hmask[j % 32] |= (uint8_t)(1u << (j / 32));
                                L[j] -= 4;
                        }
                for (int h = 0; h < 2; h++)
                        for (int l = 0; l < 32; l++) {
                                const uint8_t *q = L + 128 * h + l;
                                b[i].qs[32 * h + l] = q[0] | (uint8_t)(q[32] << 2) | (uint8_t)(q[64] << 4) |
                                                      (uint8_t)(q[96] << 6);
                        }
        }
}

/* ---- Q4_K and Q5_K: 8 groups of 32, 6-bit scales and minimums packed into 12 bytes ---- */

/* Scales and minimums 0..3 in the low 6 bits of bytes 0..3 and 4..7; 4..7 as nibbles of bytes 8..11 with
 * their top two bits in the spare high bits of bytes 0..3 (scales) and 4..7 (minimums). */
static void pack_scale_min_k4(const uint8_t ls[8], const uint8_t lm[8], uint8_t q[K_SCALE_SIZE]) {
        for (int j = 0; j < 8; j++) {
                if (j < 4) {
                        q[j] = ls[j];
                        q[j + 4] = lm[j];
                } else {
                        q[j + 4] = (ls[j] & 0x0f) | (uint8_t)((lm[j] & 0x0f) << 4);
                        q[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
                        q[j] |= (uint8_t)((lm[j] >> 4) << 6);
                }
        }
}

static void unpack_scale_min_k4(int j, const uint8_t q[K_SCALE_SIZE], uint8_t *ret_s, uint8_t *ret_m) {
        if (j < 4) {
                *ret_s = q[j] & 63;
                *ret_m = q[j + 4] & 63;
        } else {
                *ret_s = (q[j + 4] & 0x0f) | (uint8_t)((q[j - 4] >> 6) << 4);
                *ret_m = (q[j + 4] >> 4) | (uint8_t)((q[j] >> 6) << 4);
        }
}

/*
 * The part Q4_K and Q5_K share: fits each group of 32 (weights: the group's RMS plus |x|), quantizes scales
 * and minimums to 6 bits against the two binary16 super-block values, and re-rounds the levels (0..nmax)
 * into L.
 */
static void quant_block_k4(const float *x, int nmax, float rmin, int nstep, GgmlHalf *ret_d,
                           GgmlHalf *ret_dmin, uint8_t scales_out[K_SCALE_SIZE], uint8_t L[QK_K],
                           bool fast) {
        uint8_t ls[8], lm[8];
        float w[QK_K], mins[8], scales[8], max_scale = 0.0f, max_min = 0.0f;

        for (int j = 0; j < 8; j++) {
                float sum_x2 = 0.0f;

                for (int l = 0; l < 32; l++)
                        sum_x2 += x[32 * j + l] * x[32 * j + l];
                const float av_x = sqrtf(sum_x2 / 32);
                for (int l = 0; l < 32; l++)
                        w[32 * j + l] = av_x + fabsf(x[32 * j + l]);
        }
        fit_scale_min_groups(x, w, 8, 32, nmax, rmin, nstep, false, scales, mins, L, fast);
        for (int j = 0; j < 8; j++) {
                max_scale = MAX(max_scale, scales[j]);
                max_min = MAX(max_min, mins[j]);
        }

        const float is = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
        const float im = max_min > 0.0f ? 63.0f / max_min : 0.0f;
        for (int j = 0; j < 8; j++) {
                ls[j] = (uint8_t)clampi(quant_nearest_int(is * scales[j]), 0, 63);
                lm[j] = (uint8_t)clampi(quant_nearest_int(im * mins[j]), 0, 63);
        }
        memset(scales_out, 0, K_SCALE_SIZE);
        pack_scale_min_k4(ls, lm, scales_out);
        *ret_d = engine_f32_to_fp16(max_scale / 63.0f);
        *ret_dmin = engine_f32_to_fp16(max_min / 63.0f);

        const float d = engine_fp16_to_f32(*ret_d), dmin = engine_fp16_to_f32(*ret_dmin);
        for (int j = 0; j < 8; j++) {
                uint8_t sc, m;

                unpack_scale_min_k4(j, scales_out, &sc, &m);
                const float dl = d * (float)sc;
                if (dl == 0.0f)
                        continue;
                const float ml = dmin * (float)m;
                for (int l = 0; l < 32; l++)
                        L[32 * j + l] =
                                (uint8_t)clampi(quant_nearest_int((x[32 * j + l] + ml) / dl), 0, nmax);
        }
}

static void q4_k_rows(const float *x, void *y, size_t n, bool fast) {
        BlockQ4_K *b = y;
        uint8_t L[QK_K];

        for (size_t i = 0; i < n / QK_K; i++, x += QK_K) {
                quant_block_k4(x, 15, -1.0f, 20, &b[i].d, &b[i].dmin, b[i].scales, L, fast);
                /* Each 32 bytes hold two groups: the first in the low nibbles, the next in the high ones. */
                for (int h = 0; h < 4; h++)
                        for (int l = 0; l < 32; l++)
                                b[i].qs[32 * h + l] = L[64 * h + l] | (uint8_t)(L[64 * h + 32 + l] << 4);
        }
}

void quant_row_q4_k_ref(const float *x, void *y, size_t n) {
        q4_k_rows(x, y, n, false);
}

void quant_row_q4_k_fast(const float *x, void *y, size_t n) {
        q4_k_rows(x, y, n, true);
}

static void q5_k_rows(const float *x, void *y, size_t n, bool fast) {
        BlockQ5_K *b = y;
        uint8_t L[QK_K];

        for (size_t i = 0; i < n / QK_K; i++, x += QK_K) {
                quant_block_k4(x, 31, -0.5f, 15, &b[i].d, &b[i].dmin, b[i].scales, L, fast);
                /* Low nibbles as Q4_K; the fifth bit of element 32 g + l is bit g of qh[l]. */
                memset(b[i].qh, 0, sizeof(b[i].qh));
                for (int h = 0; h < 4; h++)
                        for (int l = 0; l < 32; l++) {
                                uint8_t q0 = L[64 * h + l], q1 = L[64 * h + 32 + l];
                                b[i].qs[32 * h + l] = (q0 & 0x0f) | (uint8_t)((q1 & 0x0f) << 4);
                                b[i].qh[l] |= (uint8_t)(((q0 >> 4) << (2 * h)) | ((q1 >> 4) << (2 * h + 1)));
                        }
        }
}

void quant_row_q5_k_ref(const float *x, void *y, size_t n) {
        q5_k_rows(x, y, n, false);
}

void quant_row_q5_k_fast(const float *x, void *y, size_t n) {
        q5_k_rows(x, y, n, true);
}

/* ---- Q6_K: 16 groups of 16, 6-bit levels (4 low bits + 2 high bits), 8-bit signed scales ---- */

static void q6_k_rows(const float *x, void *y, size_t n, bool fast) {
        BlockQ6_K *b = y;
        uint8_t L[QK_K];
        float scales[QK_K / 16];

        for (size_t i = 0; i < n / QK_K; i++, x += QK_K) {
                float amax = 0.0f, max_scale = 0.0f;

                fit_symmetric_groups(x, QK_K / 16, 32, scales, L, fast);
                for (int j = 0; j < QK_K / 16; j++) {
                        if (fabsf(scales[j]) > amax) {
                                amax = fabsf(scales[j]);
                                max_scale = scales[j];
                        }
                }
                if (amax < QUANT_GROUP_MAX_EPS) {
                        memset(&b[i], 0, sizeof(b[i]));
                        continue;
                }

                const float is = -128.0f / max_scale;
                b[i].d = engine_f32_to_fp16(1.0f / is);
                for (int j = 0; j < QK_K / 16; j++)
                        b[i].scales[j] = (int8_t)MIN(127, quant_nearest_int(is * scales[j]));

                const float d = engine_fp16_to_f32(b[i].d);
                for (int j = 0; j < QK_K / 16; j++) {
                        const float dl = d * (float)b[i].scales[j];
                        if (dl == 0.0f)
                                continue;
                        for (int l = 0; l < 16; l++)
                                L[16 * j + l] =
                                        (uint8_t)(clampi(quant_nearest_int(x[16 * j + l] / dl), -32, 31) +
                                                  32);
                }

                /* Per half of 128: ql byte l holds elements l (low) and l+64 (high), byte l+32 elements l+32
                 * and l+96; qh byte l holds the top two bits of l, l+32, l+64, l+96. */
                for (int h = 0; h < 2; h++)
                        for (int l = 0; l < 32; l++) {
                                const uint8_t *q = L + 128 * h + l;
                                b[i].ql[64 * h + l] = (q[0] & 0x0f) | (uint8_t)((q[64] & 0x0f) << 4);
                                b[i].ql[64 * h + l + 32] = (q[32] & 0x0f) | (uint8_t)((q[96] & 0x0f) << 4);
                                b[i].qh[32 * h + l] = (uint8_t)((q[0] >> 4) | ((q[32] >> 4) << 2) |
                                                                ((q[64] >> 4) << 4) | ((q[96] >> 4) << 6));
                        }
        }
}

void quant_row_q6_k_ref(const float *x, void *y, size_t n) {
        q6_k_rows(x, y, n, false);
}

void quant_row_q6_k_fast(const float *x, void *y, size_t n) {
        q6_k_rows(x, y, n, true);
}
