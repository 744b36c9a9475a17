/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * quant: what the files of the quantizer share and nobody outside needs: rounding and the per-type row
 * functions behind quant_row().
 *
 * Everything here is pure and may be called from any thread.
 */

#include <math.h>
#include <string.h>

#include "quant.h"

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

/* Faster versions with the same output: the k-quant and IQ4_NL searches run four groups at once (SSE2; the
 * reference code elsewhere). */
void quant_row_q2_k_fast(const float *x, void *y, size_t n);
void quant_row_q4_k_fast(const float *x, void *y, size_t n);
void quant_row_q5_k_fast(const float *x, void *y, size_t n);
void quant_row_q6_k_fast(const float *x, void *y, size_t n);
void quant_row_iq4_nl_fast(const float *x, void *y, size_t n);
