// SPDX-License-Identifier: MIT
#pragma once

/*
 * Device-side decoding of GGUF blocks, two ways:
 *  - dq_elem<T>(): one element of a row, for dequantizing to F16 tiles (prompt GEMMs), embedding lookups and
 *    the tests; simple rather than fast, since each weight passes through it once per prompt batch;
 *  - lane_dot<T>(): one lane's share of a block's dot product with activations quantized to 8 bits, for the
 *    decode matrix-vector kernels, where every instruction per weight counts.
 *
 * Activations in 8 bits come as two arrays: qs (int8, one per element, 16-byte aligned) and ds (two floats
 * per 32 elements: the scale d and d * the sum of the 32 quants). A dot over a block is then integer dp4a
 * over the quants, scaled once; types with an offset or a minimum use the sums. A lane reads its quants as
 * 16-byte pieces, piece k at ap + k * as: consecutive in a plain row, 512 bytes apart (a whole warp's k-th
 * loads side by side) in the K4 and K6 layouts (q8_pos()).
 */

#include "cuda-common.cuh"

/* Elements per block and bytes per block of each type we have kernels for. */
template <int T> struct Tr;
template <> struct Tr<GGML_TYPE_Q4_0> { enum { QK = 32, BYTES = Q4_0_BYTES }; };
template <> struct Tr<GGML_TYPE_Q4_1> { enum { QK = 32, BYTES = Q4_1_BYTES }; };
template <> struct Tr<GGML_TYPE_Q5_0> { enum { QK = 32, BYTES = Q5_0_BYTES }; };
template <> struct Tr<GGML_TYPE_Q5_1> { enum { QK = 32, BYTES = Q5_1_BYTES }; };
template <> struct Tr<GGML_TYPE_Q8_0> { enum { QK = 32, BYTES = Q8_0_BYTES }; };
template <> struct Tr<GGML_TYPE_Q2_K> { enum { QK = 256, BYTES = Q2_K_BYTES }; };
template <> struct Tr<GGML_TYPE_Q3_K> { enum { QK = 256, BYTES = Q3_K_BYTES }; };
template <> struct Tr<GGML_TYPE_Q4_K> { enum { QK = 256, BYTES = Q4_K_BYTES }; };
template <> struct Tr<GGML_TYPE_Q5_K> { enum { QK = 256, BYTES = Q5_K_BYTES }; };
template <> struct Tr<GGML_TYPE_Q6_K> { enum { QK = 256, BYTES = Q6_K_BYTES }; };
template <> struct Tr<GGML_TYPE_F32> { enum { QK = 1, BYTES = 4 }; };
template <> struct Tr<GGML_TYPE_F16> { enum { QK = 1, BYTES = 2 }; };
template <> struct Tr<GGML_TYPE_BF16> { enum { QK = 1, BYTES = 2 }; };

/* The layout (CudaQ8Layout) whose pieces a type's lanes read: Q4_K and Q5_K lane p of a block covers its
 * elements 64 p .. 64 p + 63 (piece k: 64 p + 16 k); Q2_K, Q3_K and Q6_K lane p covers 16 elements of each
 * group of 32 in half p / 2 (piece k: 128 (p / 2) + 32 k + 16 (p % 2)); 32-element types read plain rows. */
__host__ __device__ constexpr int q8_family(int t) {
        return t == GGML_TYPE_Q4_K || t == GGML_TYPE_Q5_K                         ? CUDA_Q8_K4
               : t == GGML_TYPE_Q2_K || t == GGML_TYPE_Q3_K || t == GGML_TYPE_Q6_K ? CUDA_Q8_K6
                                                                                   : CUDA_Q8_PLAIN;
}

/* Where element e of a row goes in layout l: in chunks of 2048 elements (8 blocks of 256, 4 lanes a block:
 * one warp's step), piece k of lane 4 b + p at 16 (32 k + 4 b + p), so that the lanes' k-th loads are 512
 * contiguous bytes (a shorter last chunk keeps the gaps of its missing lanes). */
__host__ __device__ inline uint32_t q8_pos(uint32_t e, int l) {
        if (l == CUDA_Q8_PLAIN)
                return e;
        const uint32_t base = e & ~2047u, r = e - base, b = r / 256, o = r % 256;
        const uint32_t p = l == CUDA_Q8_K4 ? o / 64 : 2 * (o / 128) + (o % 32) / 16;
        const uint32_t k = l == CUDA_Q8_K4 ? (o % 64) / 16 : (o % 128) / 32;
        return base + 16 * (32 * k + 4 * b + p) + o % 16;
}

/* Bytes of a row of n in layout l. */
__host__ __device__ inline size_t q8_bytes(uint32_t n, int l) {
        return l == CUDA_Q8_PLAIN ? n : ((size_t)n + 2047) / 2048 * 2048;
}

/* Whether q's layouts are known and n_rows rows of n can have them. */
static inline bool q8_layouts_ok(const CudaQ8 *q, uint32_t n, uint32_t n_rows) {
        if (q->layout >= _CUDA_Q8_LAYOUT_MAX || (q->qs2 && q->layout2 >= _CUDA_Q8_LAYOUT_MAX))
                return false;
        return (q->layout == CUDA_Q8_PLAIN && (!q->qs2 || q->layout2 == CUDA_Q8_PLAIN)) ||
               (n % 256 == 0 && n_rows == 1);
}

/* Lane p's first piece and piece stride in a plain row, its block's quants at aq. */
template <int T> __device__ __forceinline__ const int8_t *plain_piece(const int8_t *aq, int p, uint32_t *as) {
        if (q8_family(T) == CUDA_Q8_K4) {
                *as = 16;
                return aq + 64 * p;
        }
        if (q8_family(T) == CUDA_Q8_K6) {
                *as = 32;
                return aq + 128 * (p >> 1) + 16 * (p & 1);
        }
        *as = 16;
        return aq;
}

/* Internal linkage for everything below: each .cu file that includes this gets its own copy. */
namespace {

/* ---- one element ---- */

template <int T> __device__ __forceinline__ float dq_elem(const uint8_t *row, uint32_t i);

template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_F32>(const uint8_t *row, uint32_t i) {
        return ((const float *)row)[i];
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_F16>(const uint8_t *row, uint32_t i) {
        return __half2float(((const __half *)row)[i]);
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_BF16>(const uint8_t *row, uint32_t i) {
        return __bfloat162float(((const __nv_bfloat16 *)row)[i]);
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q4_0>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 32) * Q4_0_BYTES;
        uint32_t e = i % 32;
        int q = e < 16 ? b[2 + e] & 0xf : b[2 + e - 16] >> 4;
        return ld_half(b) * (float)(q - 8);
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q4_1>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 32) * Q4_1_BYTES;
        uint32_t e = i % 32;
        int q = e < 16 ? b[4 + e] & 0xf : b[4 + e - 16] >> 4;
        return ld_half(b) * (float)q + ld_half(b + 2);
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q5_0>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 32) * Q5_0_BYTES;
        uint32_t e = i % 32, qh = ld_u32_a2(b + 2);
        int q = e < 16 ? b[6 + e] & 0xf : b[6 + e - 16] >> 4;
        q |= ((qh >> e) & 1) << 4;
        return ld_half(b) * (float)(q - 16);
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q5_1>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 32) * Q5_1_BYTES;
        uint32_t e = i % 32, qh = ld_u32_a4(b + 4);
        int q = e < 16 ? b[8 + e] & 0xf : b[8 + e - 16] >> 4;
        q |= ((qh >> e) & 1) << 4;
        return ld_half(b) * (float)q + ld_half(b + 2);
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q8_0>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 32) * Q8_0_BYTES;
        return ld_half(b) * (float)(int8_t)b[2 + i % 32];
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q2_K>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 256) * Q2_K_BYTES;
        uint32_t e = i % 256, n = e / 128, j = (e % 128) / 32, l = e % 32;
        int q = (b[16 + 32 * n + l] >> (2 * j)) & 3;
        int sc = b[8 * n + 2 * j + l / 16];
        return ld_half(b + 80) * (float)(sc & 0xf) * (float)q - ld_half(b + 82) * (float)(sc >> 4);
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q3_K>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 256) * Q3_K_BYTES;
        uint32_t e = i % 256, n = e / 128, j = (e % 128) / 32, l = e % 32;
        int q = (b[32 + 32 * n + l] >> (2 * j)) & 3;
        if (!((b[l] >> (4 * n + j)) & 1))
                q -= 4;
        return ld_half(b + 108) * (float)k3_scale(b + 96, 8 * n + 2 * j + l / 16) * (float)q;
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q4_K>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 256) * Q4_K_BYTES;
        uint32_t e = i % 256, j = e / 64, l = e % 64;
        int sc, m, q;
        if (l < 32) {
                q = b[16 + 32 * j + l] & 0xf;
                k4_scale_min(b + 4, 2 * j, &sc, &m);
        } else {
                q = b[16 + 32 * j + l - 32] >> 4;
                k4_scale_min(b + 4, 2 * j + 1, &sc, &m);
        }
        return ld_half(b) * (float)sc * (float)q - ld_half(b + 2) * (float)m;
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q5_K>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 256) * Q5_K_BYTES;
        uint32_t e = i % 256, j = e / 64, l = e % 64;
        int sc, m, q;
        if (l < 32) {
                q = (b[48 + 32 * j + l] & 0xf) | (((b[16 + l] >> (2 * j)) & 1) << 4);
                k4_scale_min(b + 4, 2 * j, &sc, &m);
        } else {
                q = (b[48 + 32 * j + l - 32] >> 4) | (((b[16 + l - 32] >> (2 * j + 1)) & 1) << 4);
                k4_scale_min(b + 4, 2 * j + 1, &sc, &m);
        }
        return ld_half(b) * (float)sc * (float)q - ld_half(b + 2) * (float)m;
}
template <> __device__ __forceinline__ float dq_elem<GGML_TYPE_Q6_K>(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (i / 256) * Q6_K_BYTES;
        uint32_t e = i % 256, n = e / 128, g = (e % 128) / 32, l = e % 32;
        uint8_t ql = b[64 * n + (g & 1) * 32 + l];
        int q = (g < 2 ? ql & 0xf : ql >> 4) | (((b[128 + 32 * n + l] >> (2 * g)) & 3) << 4);
        int sc = (int8_t)b[192 + 8 * n + l / 16 + 2 * g];
        return ld_half(b + 208) * (float)sc * (float)(q - 32);
}

/* ---- eight consecutive elements (i0 a multiple of 8), for the prompt path's F16 tiles ----
 * The eight share their block and scale, decoded once; the generic version decodes per element. */

template <int T> __device__ __forceinline__ void dq8(const uint8_t *row, uint32_t i0, float *out) {
#pragma unroll
        for (int k = 0; k < 8; k++)
                out[k] = dq_elem<T>(row, i0 + k);
}

template <> __device__ __forceinline__ void dq8<GGML_TYPE_Q4_0>(const uint8_t *row, uint32_t i0, float *out) {
        const uint8_t *b = row + (i0 / 32) * Q4_0_BYTES;
        uint32_t e = i0 % 32, sh = e < 16 ? 0 : 4;
        float d = ld_half(b);
        const uint8_t *q = b + 2 + (e % 16);
#pragma unroll
        for (int k = 0; k < 8; k++)
                out[k] = d * (float)(((q[k] >> sh) & 0xf) - 8);
}

template <> __device__ __forceinline__ void dq8<GGML_TYPE_Q8_0>(const uint8_t *row, uint32_t i0, float *out) {
        const uint8_t *b = row + (i0 / 32) * Q8_0_BYTES;
        float d = ld_half(b);
#pragma unroll
        for (int k = 0; k < 8; k++)
                out[k] = d * (float)(int8_t)b[2 + i0 % 32 + k];
}

template <> __device__ __forceinline__ void dq8<GGML_TYPE_Q4_K>(const uint8_t *row, uint32_t i0, float *out) {
        const uint8_t *b = row + (i0 / 256) * Q4_K_BYTES;
        uint32_t e = i0 % 256, j = e / 64, l = e % 64, hi = l / 32;
        int sc, m;
        k4_scale_min(b + 4, 2 * j + hi, &sc, &m);
        float d = ld_half(b) * (float)sc, mn = ld_half(b + 2) * (float)m;
        const uint8_t *q = b + 16 + 32 * j + l % 32;
#pragma unroll
        for (int k = 0; k < 8; k++)
                out[k] = d * (float)((q[k] >> (4 * hi)) & 0xf) - mn;
}

template <> __device__ __forceinline__ void dq8<GGML_TYPE_Q6_K>(const uint8_t *row, uint32_t i0, float *out) {
        const uint8_t *b = row + (i0 / 256) * Q6_K_BYTES;
        uint32_t e = i0 % 256, n = e / 128, g = (e % 128) / 32, l = e % 32;
        const uint8_t *ql = b + 64 * n + (g & 1) * 32 + l, *qh = b + 128 + 32 * n + l;
        float d = ld_half(b + 208) * (float)(int8_t)b[192 + 8 * n + l / 16 + 2 * g];
        uint32_t sh = g < 2 ? 0 : 4;
#pragma unroll
        for (int k = 0; k < 8; k++)
                out[k] = d * (float)((int)(((ql[k] >> sh) & 0xf) | (((qh[k] >> (2 * g)) & 3) << 4)) - 32);
}

/* ---- one lane's share of a block's dot product with 8-bit activations ----
 *
 * Blocks of 32 elements: one lane takes a whole block. Blocks of 256: four lanes share one, lane part p
 * (0..3) taking 64 elements. blk points into shared memory (the block's first byte, any alignment the
 * row gives); the lane's 8-bit activations are the 16-byte pieces ap + k * as (plain_piece() for a plain
 * row), ads the scales of the block's first element.
 */

#define M4 0x0f0f0f0fu

/* N consecutive little-endian 32-bit words from the 2-byte aligned p in shared memory, with N + 1 aligned
 * 32-bit loads and funnel shifts rather than 2N 16-bit loads: blocks of 18, 22, 34 or 210 bytes put half the
 * lanes' words on odd half-words, and the 16-bit loads took twice the shared-memory wavefronts. Reads up to 4
 * bytes past the last word (the kernels' shared memory has room for that). MV_ALIGNED_LOADS=0 restores the
 * 16-bit loads, for timing studies. */
#ifndef MV_ALIGNED_LOADS
#define MV_ALIGNED_LOADS 1
#endif
template <int N> __device__ __forceinline__ void ld_words_a2(const uint8_t *p, uint32_t *w) {
#if MV_ALIGNED_LOADS
        /* p minus its misalignment rather than an integer mask: a pointer derived from p keeps its state
         * space, so that weights staged in shared memory are read with shared (not generic) loads. */
        const uint32_t *a = (const uint32_t *)(p - ((uintptr_t)p & 3));
        const uint32_t sh = ((uint32_t)(uintptr_t)p & 2u) * 8u;
        uint32_t prev = a[0];
#pragma unroll
        for (int k = 0; k < N; k++) {
                uint32_t next = a[k + 1];
                w[k] = __funnelshift_r(prev, next, sh);
                prev = next;
        }
#else
#pragma unroll
        for (int k = 0; k < N; k++)
                w[k] = ld_u32_a2(p + 4 * k);
#endif
}

/* N words from p, 4-byte aligned (Q4_1 and Q5_1 blocks: 20 and 24 bytes). */
template <int N> __device__ __forceinline__ void ld_words_a4(const uint8_t *p, uint32_t *w) {
#pragma unroll
        for (int k = 0; k < N; k++)
                w[k] = ld_u32_a4(p + 4 * k);
}

template <int T>
__device__ __forceinline__ float lane_dot(const uint8_t *blk, int part, const int8_t *ap, uint32_t as, const float2 *ads);

/* The 32-element types: the lane's block as 32 8-bit values in eight words, words 0-3 holding elements 0-15
 * and words 4-7 elements 16-31 (Q4_0's and Q4_1's low and high nibbles, Q5's with their fifth bits, Q8_0's
 * bytes), dotted with the block's 32 8-bit activations. */
struct Act32 {
        int4 lo, hi;
};

/* Loaded first thing in a lane's dot product: these come from L1 or L2, the weights from shared memory. */
__device__ __forceinline__ Act32 ld_act32(const int8_t *ap, uint32_t as) {
        return {*(const int4 *)ap, *(const int4 *)(ap + as)};
}

__device__ __forceinline__ int dp4a_block32(const int *w, const Act32 &a) {
        const int *lo = (const int *)&a.lo, *hi = (const int *)&a.hi;
        int s = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
                s = __dp4a(w[k], lo[k], s);
                s = __dp4a(w[4 + k], hi[k], s);
        }
        return s;
}

/* Q4_0's and Q4_1's 32 nibbles (4 words) as eight words of values 0-15. */
__device__ __forceinline__ void q4_nibbles(const uint32_t *ws, int *w) {
#pragma unroll
        for (int k = 0; k < 4; k++)
                w[k] = (int)(ws[k] & M4), w[4 + k] = (int)((ws[k] >> 4) & M4);
}

/* Q5_0's and Q5_1's nibbles with their fifth bits qh: values 0-31. */
__device__ __forceinline__ void q5_values(const uint32_t *ws, uint32_t qh, int *w) {
#pragma unroll
        for (int k = 0; k < 4; k++) {
                w[k] = (int)((ws[k] & M4) | (spread4(qh >> (4 * k)) << 4));
                w[4 + k] = (int)(((ws[k] >> 4) & M4) | (spread4(qh >> (16 + 4 * k)) << 4));
        }
}

/* A 32-element block's values as eight words (see dp4a_block32()). */
template <int T> __device__ __forceinline__ void values32(const uint8_t *b, int *w);
template <> __device__ __forceinline__ void values32<GGML_TYPE_Q4_0>(const uint8_t *b, int *w) {
        uint32_t ws[4];
        ld_words_a2<4>(b + 2, ws);
        q4_nibbles(ws, w);
}
template <> __device__ __forceinline__ void values32<GGML_TYPE_Q4_1>(const uint8_t *b, int *w) {
        uint32_t ws[4];
        ld_words_a4<4>(b + 4, ws);
        q4_nibbles(ws, w);
}
template <> __device__ __forceinline__ void values32<GGML_TYPE_Q5_0>(const uint8_t *b, int *w) {
        uint32_t ws[5];
        ld_words_a2<5>(b + 2, ws);
        q5_values(ws + 1, ws[0], w);
}
template <> __device__ __forceinline__ void values32<GGML_TYPE_Q5_1>(const uint8_t *b, int *w) {
        uint32_t ws[5];
        ld_words_a4<5>(b + 4, ws);
        q5_values(ws + 1, ws[0], w);
}
template <> __device__ __forceinline__ void values32<GGML_TYPE_Q8_0>(const uint8_t *b, int *w) {
        ld_words_a2<8>(b + 2, (uint32_t *)w);
}

/* The 32-element types' lane_dot(): the block's scale d (the first half), with Q4_1 and Q5_1 their minimum
 * (the second), with Q4_0 and Q5_0 their values' offset of 8 and 16 (ads's y: d times the sum of the 8-bit
 * activations). */
template <int T>
__device__ __forceinline__ float lane_dot32(const uint8_t *b, const int8_t *ap, uint32_t as, const float2 *ads) {
        const Act32 a = ld_act32(ap, as);
        int w[8];
        values32<T>(b, w);
        if (T == GGML_TYPE_Q8_0)
                return ld_half(b) * ads[0].x * (float)dp4a_block32(w, a);
        const float2 ds = ads[0];
        if (T == GGML_TYPE_Q4_1 || T == GGML_TYPE_Q5_1)
                return ld_half(b) * ds.x * (float)dp4a_block32(w, a) + ld_half(b + 2) * ds.y;
        return ld_half(b) * (ds.x * (float)dp4a_block32(w, a) - (T == GGML_TYPE_Q4_0 ? 8.0f : 16.0f) * ds.y);
}

#define LANE_DOT32(T)                                                                                           \
        template <>                                                                                             \
        __device__ __forceinline__ float lane_dot<T>(const uint8_t *b, int, const int8_t *ap, uint32_t as,      \
                                                     const float2 *ads) {                                       \
                return lane_dot32<T>(b, ap, as, ads);                                                           \
        }
LANE_DOT32(GGML_TYPE_Q4_0)
LANE_DOT32(GGML_TYPE_Q4_1)
LANE_DOT32(GGML_TYPE_Q5_0)
LANE_DOT32(GGML_TYPE_Q5_1)
LANE_DOT32(GGML_TYPE_Q8_0)
#undef LANE_DOT32

/* Q2_K and Q3_K and Q6_K: part p covers half n = p / 2 (128 elements) and, in it, the 16 positions
 * l0 = 16 * (p % 2) .. l0 + 15 of each of the half's four groups of 32. */

template <>
__device__ __forceinline__ float lane_dot<GGML_TYPE_Q2_K>(const uint8_t *b, int p, const int8_t *ap, uint32_t as,
                                                     const float2 *ads) {
        int n = p >> 1, l0 = 16 * (p & 1);
        uint32_t w[4];
        float acc = 0.0f, accm = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++)
                w[k] = ld_u32_a4(b + 16 + 32 * n + l0 + 4 * k);
#pragma unroll
        for (int j = 0; j < 4; j++) {
                int4 a = *(const int4 *)(ap + j * as);
                const int *av = (const int *)&a;
                int s = 0, sa = 0;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                        s = __dp4a((int)((w[k] >> (2 * j)) & 0x03030303u), av[k], s);
                        sa = __dp4a(0x01010101, av[k], sa);
                }
                int sc = b[8 * n + 2 * j + (p & 1)];
                float da = ads[4 * n + j].x;
                acc += (float)(sc & 0xf) * da * (float)s;
                accm += (float)(sc >> 4) * da * (float)sa;
        }
        return ld_half(b + 80) * acc - ld_half(b + 82) * accm;
}

template <>
__device__ __forceinline__ float lane_dot<GGML_TYPE_Q3_K>(const uint8_t *b, int p, const int8_t *ap, uint32_t as,
                                                     const float2 *ads) {
        int n = p >> 1, l0 = 16 * (p & 1);
        uint32_t w[4], hm[4];
        float acc = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
                w[k] = ld_u32_a2(b + 32 + 32 * n + l0 + 4 * k);
                hm[k] = ld_u32_a2(b + l0 + 4 * k);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
                int4 a = *(const int4 *)(ap + j * as);
                const int *av = (const int *)&a;
                int s = 0;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                        uint32_t q = ((w[k] >> (2 * j)) & 0x03030303u) |
                                     (((hm[k] >> (4 * n + j)) & 0x01010101u) << 2);
                        s = __dp4a((int)__vsub4(q, 0x04040404u), av[k], s);
                }
                acc += (float)k3_scale(b + 96, 8 * n + 2 * j + (p & 1)) * ads[4 * n + j].x * (float)s;
        }
        return ld_half(b + 108) * acc;
}

/* Q4_K and Q5_K: part p covers the 64 elements 64p .. 64p + 63, sub-blocks 2p (low nibbles) and 2p + 1. */

/* The 6-bit scales and mins of sub-blocks 2p and 2p + 1 of a Q4_K/Q5_K block, from its 12 scale bytes read as
 * three words: four bytes at a time rather than byte by byte with branches. */
__device__ __forceinline__ void k4_scales_pair(uint4 hdr, int p, float *sc0, float *m0, float *sc1, float *m1) {
        uint32_t w0 = hdr.y, w1 = hdr.z, w2 = hdr.w;
        uint32_t scw = p < 2 ? w0 & 0x3f3f3f3fu : (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
        uint32_t mw = p < 2 ? w1 & 0x3f3f3f3fu : ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
        int sh = 16 * (p & 1);
        *sc0 = (float)((scw >> sh) & 0xff), *sc1 = (float)((scw >> (sh + 8)) & 0xff);
        *m0 = (float)((mw >> sh) & 0xff), *m1 = (float)((mw >> (sh + 8)) & 0xff);
}

template <>
__device__ __forceinline__ float lane_dot<GGML_TYPE_Q4_K>(const uint8_t *b, int p, const int8_t *ap, uint32_t as,
                                                     const float2 *ads) {
        uint4 hdr = *(const uint4 *)b;
        uint4 wv0 = *(const uint4 *)(b + 16 + 32 * p), wv1 = *(const uint4 *)(b + 16 + 32 * p + 16);
        int4 a0 = *(const int4 *)ap, a1 = *(const int4 *)(ap + as), a2 = *(const int4 *)(ap + 2 * as),
             a3 = *(const int4 *)(ap + 3 * as);
        uint32_t w[8] = {wv0.x, wv0.y, wv0.z, wv0.w, wv1.x, wv1.y, wv1.z, wv1.w};
        int lo[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        int hi[8] = {a2.x, a2.y, a2.z, a2.w, a3.x, a3.y, a3.z, a3.w};
        int slo = 0, shi = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
                slo = __dp4a((int)(w[k] & M4), lo[k], slo);
                shi = __dp4a((int)((w[k] >> 4) & M4), hi[k], shi);
        }
        float sc0, m0, sc1, m1;
        k4_scales_pair(hdr, p, &sc0, &m0, &sc1, &m1);
        float2 dm = __half22float2(*(const __half2 *)&hdr.x);
        float2 d0 = ads[2 * p], d1 = ads[2 * p + 1];
        return dm.x * (sc0 * d0.x * (float)slo + sc1 * d1.x * (float)shi) - dm.y * (m0 * d0.y + m1 * d1.y);
}

template <>
__device__ __forceinline__ float lane_dot<GGML_TYPE_Q5_K>(const uint8_t *b, int p, const int8_t *ap, uint32_t as,
                                                     const float2 *ads) {
        uint4 wv0 = *(const uint4 *)(b + 48 + 32 * p), wv1 = *(const uint4 *)(b + 48 + 32 * p + 16);
        uint4 hv0 = *(const uint4 *)(b + 16), hv1 = *(const uint4 *)(b + 32);
        int4 a0 = *(const int4 *)ap, a1 = *(const int4 *)(ap + as), a2 = *(const int4 *)(ap + 2 * as),
             a3 = *(const int4 *)(ap + 3 * as);
        uint32_t w[8] = {wv0.x, wv0.y, wv0.z, wv0.w, wv1.x, wv1.y, wv1.z, wv1.w};
        uint32_t h[8] = {hv0.x, hv0.y, hv0.z, hv0.w, hv1.x, hv1.y, hv1.z, hv1.w};
        int lo[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        int hi[8] = {a2.x, a2.y, a2.z, a2.w, a3.x, a3.y, a3.z, a3.w};
        int slo = 0, shi = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
                uint32_t qlo = (w[k] & M4) | (((h[k] >> (2 * p)) & 0x01010101u) << 4);
                uint32_t qhi = ((w[k] >> 4) & M4) | (((h[k] >> (2 * p + 1)) & 0x01010101u) << 4);
                slo = __dp4a((int)qlo, lo[k], slo);
                shi = __dp4a((int)qhi, hi[k], shi);
        }
        float sc0, m0, sc1, m1;
        uint4 hdr = *(const uint4 *)b;
        k4_scales_pair(hdr, p, &sc0, &m0, &sc1, &m1);
        float2 dm = __half22float2(*(const __half2 *)&hdr.x);
        float2 d0 = ads[2 * p], d1 = ads[2 * p + 1];
        return dm.x * (sc0 * d0.x * (float)slo + sc1 * d1.x * (float)shi) - dm.y * (m0 * d0.y + m1 * d1.y);
}

template <>
__device__ __forceinline__ float lane_dot<GGML_TYPE_Q6_K>(const uint8_t *b, int p, const int8_t *ap, uint32_t as,
                                                     const float2 *ads) {
        int n = p >> 1, l0 = 16 * (p & 1);
        uint32_t qa[4], qb[4], qh[4];
        float acc = 0.0f;
        ld_words_a2<4>(b + 64 * n + l0, qa);
        ld_words_a2<4>(b + 64 * n + 32 + l0, qb);
        ld_words_a2<4>(b + 128 + 32 * n + l0, qh);
#pragma unroll
        for (int g = 0; g < 4; g++) {
                int4 a = *(const int4 *)(ap + g * as);
                const int *av = (const int *)&a;
                int s = 0;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                        uint32_t ql = g & 1 ? qb[k] : qa[k];
                        uint32_t q = ((g < 2 ? ql : ql >> 4) & M4) | (((qh[k] >> (2 * g)) & 0x03030303u) << 4);
                        s = __dp4a((int)__vsub4(q, 0x20202020u), av[k], s);
                }
                acc += (float)(int8_t)b[192 + 8 * n + (p & 1) + 2 * g] * ads[4 * n + g].x * (float)s;
        }
        return ld_half(b + 208) * acc;
}

/* ---- a lane's share of a block, decoded once, dotted with several activation vectors ----
 * For the batched decode kernels: load() decodes the lane's weights from shared memory into registers, dot()
 * multiplies them with one sequence's activations (aq, ads as for lane_dot()). Types without their own
 * version keep the block's address and run lane_dot() per sequence. */

template <int T> struct LaneW {
        const uint8_t *b;
        int p;
        __device__ __forceinline__ void load(const uint8_t *blk, int part) {
                b = blk, p = part;
        }
        __device__ __forceinline__ float dot(const int8_t *aq, const float2 *ads) const {
                uint32_t as;
                const int8_t *ap = plain_piece<T>(aq, p, &as);
                return lane_dot<T>(b, p, ap, as, ads);
        }
};

template <> struct LaneW<GGML_TYPE_Q4_0> {
        int q[8];
        float d;
        __device__ __forceinline__ void load(const uint8_t *b, int) {
                values32<GGML_TYPE_Q4_0>(b, q);
                d = ld_half(b);
        }
        __device__ __forceinline__ float dot(const int8_t *aq, const float2 *ads) const {
                float2 ds = ads[0];
                return d * (ds.x * (float)dp4a_block32(q, ld_act32(aq, 16)) - 8.0f * ds.y);
        }
};

template <> struct LaneW<GGML_TYPE_Q8_0> {
        int q[8];
        float d;
        __device__ __forceinline__ void load(const uint8_t *b, int) {
                values32<GGML_TYPE_Q8_0>(b, q);
                d = ld_half(b);
        }
        __device__ __forceinline__ float dot(const int8_t *aq, const float2 *ads) const {
                return d * ads[0].x * (float)dp4a_block32(q, ld_act32(aq, 16));
        }
};

template <> struct LaneW<GGML_TYPE_Q4_K> {
        int lo[8], hi[8];
        float sc0, m0, sc1, m1, dmx, dmy;
        int p;
        __device__ __forceinline__ void load(const uint8_t *b, int part) {
                uint4 hdr = *(const uint4 *)b;
                uint4 wv0 = *(const uint4 *)(b + 16 + 32 * part), wv1 = *(const uint4 *)(b + 16 + 32 * part + 16);
                uint32_t w[8] = {wv0.x, wv0.y, wv0.z, wv0.w, wv1.x, wv1.y, wv1.z, wv1.w};
#pragma unroll
                for (int k = 0; k < 8; k++)
                        lo[k] = (int)(w[k] & M4), hi[k] = (int)((w[k] >> 4) & M4);
                k4_scales_pair(hdr, part, &sc0, &m0, &sc1, &m1);
                float2 dm = __half22float2(*(const __half2 *)&hdr.x);
                dmx = dm.x, dmy = dm.y, p = part;
        }
        __device__ __forceinline__ float dot(const int8_t *aq, const float2 *ads) const {
                uint32_t as;
                const int8_t *ap = plain_piece<GGML_TYPE_Q4_K>(aq, p, &as);
                int4 a0 = *(const int4 *)ap, a1 = *(const int4 *)(ap + as), a2 = *(const int4 *)(ap + 2 * as),
                     a3 = *(const int4 *)(ap + 3 * as);
                int al[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
                int ah[8] = {a2.x, a2.y, a2.z, a2.w, a3.x, a3.y, a3.z, a3.w};
                int slo = 0, shi = 0;
#pragma unroll
                for (int k = 0; k < 8; k++) {
                        slo = __dp4a(lo[k], al[k], slo);
                        shi = __dp4a(hi[k], ah[k], shi);
                }
                float2 d0 = ads[2 * p], d1 = ads[2 * p + 1];
                return dmx * (sc0 * d0.x * (float)slo + sc1 * d1.x * (float)shi) - dmy * (m0 * d0.y + m1 * d1.y);
        }
};

template <> struct LaneW<GGML_TYPE_Q6_K> {
        int q[4][4]; /* group g, word k: the 6-bit values minus 32 */
        float sc[4], d;
        int p;
        __device__ __forceinline__ void load(const uint8_t *b, int part) {
                int n = part >> 1, l0 = 16 * (part & 1);
                uint32_t qa[4], qb[4], qh[4];
                ld_words_a2<4>(b + 64 * n + l0, qa);
                ld_words_a2<4>(b + 64 * n + 32 + l0, qb);
                ld_words_a2<4>(b + 128 + 32 * n + l0, qh);
#pragma unroll
                for (int g = 0; g < 4; g++) {
#pragma unroll
                        for (int k = 0; k < 4; k++) {
                                uint32_t ql = g & 1 ? qb[k] : qa[k];
                                uint32_t v = ((g < 2 ? ql : ql >> 4) & M4) | (((qh[k] >> (2 * g)) & 0x03030303u) << 4);
                                q[g][k] = (int)__vsub4(v, 0x20202020u);
                        }
                        sc[g] = (float)(int8_t)b[192 + 8 * n + (part & 1) + 2 * g];
                }
                d = ld_half(b + 208);
                p = part;
        }
        __device__ __forceinline__ float dot(const int8_t *aq, const float2 *ads) const {
                const int n = p >> 1;
                uint32_t as;
                const int8_t *ap = plain_piece<GGML_TYPE_Q6_K>(aq, p, &as);
                float acc = 0.0f;
#pragma unroll
                for (int g = 0; g < 4; g++) {
                        int4 a = *(const int4 *)(ap + g * as);
                        int s = 0;
                        s = __dp4a(q[g][0], a.x, s);
                        s = __dp4a(q[g][1], a.y, s);
                        s = __dp4a(q[g][2], a.z, s);
                        s = __dp4a(q[g][3], a.w, s);
                        acc += sc[g] * ads[4 * n + g].x * (float)s;
                }
                return d * acc;
        }
};

/*
 * The 8-bit activations the products read (CudaQ8): a thread's E consecutive values v, elements i0 .. of a row
 * of n whose first element is at `row`, 32 / E threads to a group of 32 (aligned within the warp, all of them
 * in mask); amax: the largest magnitude among this thread's values. The group's scale d = amax / 127 and d
 * times the sum of its quantized values (for the offsets of Q4_0 and Q5_0) go to ds from the group's first
 * thread; the values go to q's layouts, four a word with words (n % 4 == 0), none at or past n.
 */
template <int E>
__device__ __forceinline__ void quantize_group(const float *v, float amax, const CudaQ8 &q, size_t row, uint32_t i0,
                                               uint32_t n, unsigned mask, bool words) {
        for (int o = 32 / E / 2; o > 0; o >>= 1)
                amax = fmaxf(amax, __shfl_xor_sync(mask, amax, o));
        const float d = amax / 127.0f;
        int sum = 0, iq[E];
#pragma unroll
        for (int k = 0; k < E; k++) {
                iq[k] = amax > 0.0f ? __float2int_rn(v[k] / d) : 0;
                sum += iq[k];
        }
        /* the layouts move whole pieces of 16, so four values stay a word */
        if (E % 4 == 0 && words) {
#pragma unroll
                for (int k = 0; k < E; k += 4)
                        if (i0 + k < n) {
                                const uint32_t word = (iq[k] & 0xff) | (iq[k + 1] & 0xff) << 8 | (iq[k + 2] & 0xff) << 16 |
                                                      (uint32_t)(iq[k + 3] & 0xff) << 24;
                                *(uint32_t *)(q.qs + row + q8_pos(i0 + k, q.layout)) = word;
                                if (q.qs2)
                                        *(uint32_t *)(q.qs2 + row + q8_pos(i0 + k, q.layout2)) = word;
                        }
        } else {
#pragma unroll
                for (int k = 0; k < E; k++)
                        if (i0 + k < n) {
                                q.qs[row + q8_pos(i0 + k, q.layout)] = (int8_t)iq[k];
                                if (q.qs2)
                                        q.qs2[row + q8_pos(i0 + k, q.layout2)] = (int8_t)iq[k];
                        }
        }
        for (int o = 32 / E / 2; o > 0; o >>= 1)
                sum += __shfl_xor_sync(mask, sum, o);
        if (i0 % 32 == 0 && i0 < n)
                ((float2 *)q.ds)[(row + i0) / 32] = make_float2(d, d * (float)sum);
}

} /* namespace */
