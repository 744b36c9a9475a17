/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Internal to engine/: the CPU compute kernels, one table per instruction set (scalar reference, AVX2+FMA+F16C,
 * AVX-512), chosen at run time. Every SIMD kernel computes what the scalar one does (up to float summation
 * order) and is tested against it.
 *
 * DESIGN
 * A weight matrix stays in its GGUF blocks. Activations are converted once per matrix multiplication into the
 * form the weight type's dot product wants (ActFormat): float32 for float weights; for 32-element block types
 * int8 with one float scale per 32 (and the scaled sum, for the types with a minimum), so that the inner loop
 * is an integer dot product; for K-quants ggml's Q8_K blocks (256 int8, a float scale and sums of 16).
 * The activation row layouts are ours, not ggml's: only the weights are in the file format. The SIMD sets
 * decode all five K-quant types into one shape (kernels-kquant.h), so one dot-product loop serves them.
 *
 * Kernels are pure functions of their arguments and may run on any thread.
 */

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

typedef enum ActFormat {
        ACT_F32,  /* n floats */
        ACT_Q8,   /* int8 qs[n]; float d[n / 32]; float s[n / 32] (s = d × sum of the block's qs) */
        ACT_Q8_K, /* BlockQ8_K[n / 256] */
        _ACT_FORMAT_MAX,
        _ACT_FORMAT_INVALID = -EINVAL,
} ActFormat;

/* The activation format a weight type multiplies with, or -EOPNOTSUPP. */
int act_format_for(uint32_t weight_type);

/* Bytes of one activation row of n elements, padded to 64 bytes. n must suit the format's block size. */
size_t act_row_size(ActFormat f, uint64_t n);

/*
 * y[t * y_stride + r] = dot(weight row r, activation row t) for r < n_rows, t < n_act: weight rows of n
 * elements at w + r * w_stride, activation rows at a + t * a_stride in the weight type's ActFormat.
 */
typedef void (*GemmFn)(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a,
                       size_t a_stride, uint32_t n_act, float *y, size_t y_stride);

/* Converts one row of n floats into the format (ACT_Q8 or ACT_Q8_K). */
typedef void (*QuantizeActFn)(const float *x, uint8_t *dst, uint64_t n);

/*
 * Attention of n_q query heads that share their keys and values (the heads of one KV group, adjacent: query i at
 * q + i × head_dim, its output at out + i × head_dim) over n_pos cached positions: scores = (q · k_p) × scale,
 * softmax, out = Σ p_t v_t. k and v rows of head_dim elements of kv_type (F16 or F32) every kv_stride bytes;
 * scores is scratch of n_q × n_pos. Each query's result does not depend on n_q.
 */
typedef void (*AttendFn)(const float *q, uint32_t n_q, const uint8_t *k, const uint8_t *v, size_t kv_stride,
                         uint32_t kv_type, uint32_t n_pos, uint32_t head_dim, float scale, float *scores,
                         float *out);

/* g[i] = silu(g[i]) × u[i] = g[i] / (1 + exp(-g[i])) × u[i], for i < n: SwiGLU's gate. */
typedef void (*SwigluFn)(float *g, const float *u, uint32_t n);

typedef struct CpuKernels {
        EngineCpuIsa isa;
        GemmFn gemm[_GGML_TYPE_MAX]; /* NULL where this set has no kernel: the scalar one is used */
        QuantizeActFn quantize[_ACT_FORMAT_MAX];
        AttendFn attend;
        SwigluFn swiglu;
} CpuKernels;

/* The table for isa, with gaps filled from the scalar table; NULL when this CPU cannot run isa. */
const CpuKernels *cpu_kernels(EngineCpuIsa isa);

/* The best set this CPU runs. */
EngineCpuIsa cpu_isa_best(void);

/* The per-set tables (gaps left NULL). */
extern const CpuKernels cpu_kernels_scalar;
extern const CpuKernels cpu_kernels_avx2;
extern const CpuKernels cpu_kernels_avx512;

/* Scalar helpers shared by the tables. */
void quantize_act_q8_scalar(const float *x, uint8_t *dst, uint64_t n);
void quantize_act_q8_k_scalar(const float *x, uint8_t *dst, uint64_t n);

/* Pointers into an ACT_Q8 row of n elements. */
static inline const float *act_q8_d(const uint8_t *row, uint64_t n) {
        return (const float *)(row + n);
}
static inline const float *act_q8_s(const uint8_t *row, uint64_t n) {
        return (const float *)(row + n) + n / 32;
}
