// SPDX-License-Identifier: MIT
/*
 * The CUDA backend's kernels other than the decode matrix-vector products: RMSNorm (fused with the 8-bit
 * quantization of its output), embedding rows, RoPE fused with the KV-cache store, attention for one token
 * (split along the sequence, the splits merged by the last block to finish) and for prompt batches (tiles of
 * queries against tiles of keys with an online softmax), SwiGLU, argmax, dequantization to F16 tiles and the
 * cuBLAS GEMM that prompt batches go through, plus device memory helpers and random weights for benchmarks.
 *
 * Every kernel here may be launched with programmatic dependent launch (see launch_pdl()): each one calls
 * grid_dep_wait() before it reads anything another kernel wrote, and writes nothing before it.
 */

#include <cublas_v2.h>
#include <stdlib.h>

#include "cuda-quant.cuh"

/* ---- memory ---- */

extern "C" int cuda_malloc(size_t size, void **ret) {
        void *p = NULL;

        CU_TRY(cudaMalloc(&p, size ? size : 1));
        *ret = p;
        return 0;
}

extern "C" void cuda_free(void *p) {
        if (p)
                (void)cudaFree(p);
}

extern "C" int cuda_upload(void *dst, const void *src, size_t size) {
        CU_TRY(cudaMemcpy(dst, src, size, cudaMemcpyHostToDevice));
        return 0;
}

extern "C" int cuda_download(void *dst, const void *src, size_t size) {
        CU_TRY(cudaMemcpy(dst, src, size, cudaMemcpyDeviceToHost));
        return 0;
}

extern "C" int cuda_sync(CudaStream s) {
        CU_TRY(cudaStreamSynchronize(s));
        return 0;
}

/* ---- block-wide reductions (blockDim.x a multiple of 32, at most 1024) ---- */

__device__ float block_sum(float v, float *red) {
        int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;

        v = warp_sum(v);
        __syncthreads();
        if (lane == 0)
                red[wid] = v;
        __syncthreads();
        v = lane < nw ? red[lane] : 0.0f;
        return warp_sum(v);
}

__device__ float block_max(float v, float *red) {
        int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;

        v = warp_max(v);
        __syncthreads();
        if (lane == 0)
                red[wid] = v;
        __syncthreads();
        v = lane < nw ? red[lane] : -INFINITY;
        return warp_max(v);
}

/* ---- RMSNorm: one block per row ----
 * Thread t holds elements [t E, t E + E) in registers, all loaded before any is used (the row sits in L2;
 * a loop that waited for each load in turn cost several microseconds). A group of 32 / E neighbouring lanes
 * then quantizes each 32 elements with shuffles. */

#define NORM_THREADS 1024

/* E floats from p + i0 (16-byte aligned, n % 4 == 0) in 16-byte loads, zeros past n. */
template <int E> __device__ __forceinline__ void load_vec(const float *p, uint32_t i0, uint32_t n, float *out) {
#pragma unroll
        for (int k = 0; k < E; k += 4) {
                const float4 t = i0 + k < n ? *(const float4 *)(p + i0 + k) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                out[k] = t.x, out[k + 1] = t.y, out[k + 2] = t.z, out[k + 3] = t.w;
        }
}

template <int E>
__global__ void __launch_bounds__(NORM_THREADS)
        rmsnorm_kernel(const float *x, const float *w, uint32_t n, float eps, float *y, __half *y16, const CudaQ8 q) {
        __shared__ float red[32];
        const uint32_t i0 = threadIdx.x * E;
        const size_t row = (size_t)blockIdx.x * n;
        float v[E], wv[E], ss = 0.0f;

        /* Four elements a load and a store where the row allows (n % 4 == 0: whole 16-byte vectors, aligned):
         * a warp's scalar loads 4 E bytes apart touched E times the sectors, which cost about 2 us a norm at
         * E = 8. */
        const bool vec = E % 4 == 0 && n % 4 == 0;
        TRACE_KERNEL(CUDA_TRACE_NORM);

        grid_dep_launch();
        /* The norm weights do not depend on the kernel before: load them first, so that their round trip
         * overlaps the wait and the one for x rather than following the reduction. */
        if (vec)
                load_vec<E>(w, i0, n, wv);
        else
#pragma unroll
                for (int k = 0; k < E; k++)
                        wv[k] = i0 + k < n ? w[i0 + k] : 0.0f;
        grid_dep_wait();
        if (vec)
                load_vec<E>(x + row, i0, n, v);
        else
#pragma unroll
                for (int k = 0; k < E; k++)
                        v[k] = i0 + k < n ? x[row + i0 + k] : 0.0f;
#pragma unroll
        for (int k = 0; k < E; k++)
                ss += v[k] * v[k];
        ss = warp_sum(ss);
        if ((threadIdx.x & 31) == 0)
                red[threadIdx.x >> 5] = ss;
        __syncthreads();
        ss = (threadIdx.x & 31) < blockDim.x / 32 ? red[threadIdx.x & 31] : 0.0f;
        ss = warp_sum(ss);
        const float scale = rsqrtf(ss / (float)n + eps);
        float amax = 0.0f;
#pragma unroll
        for (int k = 0; k < E; k++) {
                v[k] = i0 + k < n ? v[k] * scale * wv[k] : 0.0f;
                amax = fmaxf(amax, fabsf(v[k]));
                if (i0 + k < n && y16)
                        y16[row + i0 + k] = __float2half(v[k]);
        }
        if (y && vec) {
#pragma unroll
                for (int k = 0; k < E; k += 4)
                        if (i0 + k < n)
                                *(float4 *)(y + row + i0 + k) = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
        } else if (y) {
#pragma unroll
                for (int k = 0; k < E; k++)
                        if (i0 + k < n)
                                y[row + i0 + k] = v[k];
        }
        if (q.qs) /* lanes of one group of 32 elements: 32 / E of them, aligned within the warp */
                quantize_group<E>(v, amax, q, row, i0, n, 0xffffffffu, vec);
}

/* Threads per row at most: NORM_THREADS, or QUANTD_CUDA_NORM_THREADS for timing studies. */
static uint32_t norm_threads(void) {
        static const long n = cuda_knob("QUANTD_CUDA_NORM_THREADS", 32, NORM_THREADS, NORM_THREADS);
        return n % 32 == 0 ? (uint32_t)n : NORM_THREADS;
}

/* Launches rmsnorm_kernel<e> for the e (a power of two, 1 .. 32) of the row: each step doubles E. */
template <int E>
static int rmsnorm_launch(uint32_t e, CudaStream s, const float *x, const float *w, uint32_t n, uint32_t n_rows,
                          float eps, float *y, uint16_t *y16, const CudaQ8 &q) {
        if (E < 32 && e > (uint32_t)E)
                return rmsnorm_launch<(E < 32 ? 2 * E : 32)>(e, s, x, w, n, n_rows, eps, y, y16, q);
        /* Whole warps only: threads past n hold zeros. */
        const dim3 block((n + E * 32 - 1) / (E * 32) * 32);
        CU_TRY(launch_pdl(rmsnorm_kernel<E>, dim3(n_rows), block, 0, s, x, w, n, eps, y, (__half *)y16, q));
        return 0;
}

extern "C" int cuda_rmsnorm(CudaStream s, const float *x, const float *w, uint32_t n, uint32_t n_rows, float eps,
                            float *y, uint16_t *y16, const CudaQ8 *yq) {
        const uint32_t most = norm_threads(), per = (n + most - 1) / most;
        uint32_t e = 1;

        if ((yq && (n % 32 != 0 || !q8_layouts_ok(yq, n, n_rows))) || per > 32 || n == 0)
                return -EINVAL;
        while (e < per)
                e *= 2;
        return rmsnorm_launch<1>(e, s, x, w, n, n_rows, eps, y, y16, yq ? *yq : CudaQ8{});
}

/* ---- rows of a matrix to floats, and whole matrices to halves ---- */

template <int T>
__global__ void get_rows_kernel(const uint8_t *w, size_t stride, uint32_t n_cols, const int32_t *rows, float *y) {
        uint32_t c = blockIdx.y * blockDim.x + threadIdx.x;
        TRACE_KERNEL(CUDA_TRACE_GET_ROWS);

        grid_dep_launch();
        grid_dep_wait();
        if (c >= n_cols)
                return;
        y[(size_t)blockIdx.x * n_cols + c] = dq_elem<T>(w + (size_t)rows[blockIdx.x] * stride, c);
}

/* Eight consecutive elements per thread (n_cols a multiple of 8), one 16-byte store. */
template <int T> __global__ void dequant_f16_kernel(const uint8_t *w, size_t stride, uint32_t n_cols, uint32_t n_rows,
                                                    __half *y) {
        size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x, per_row = n_cols / 8;

        grid_dep_launch();
        grid_dep_wait();
        if (g >= per_row * n_rows)
                return;
        size_t r = g / per_row;
        uint32_t c = (uint32_t)(g % per_row) * 8;
        const uint8_t *row = w + r * stride;
        __align__(16) __half h[8];
        float f[8];
        dq8<T>(row, c, f);
#pragma unroll
        for (int k = 0; k < 8; k++)
                h[k] = __float2half(f[k]);
        *(uint4 *)(y + r * n_cols + c) = *(const uint4 *)h;
}

/* One element per thread, for rows whose length is not a multiple of 8. */
template <int T> __global__ void dequant_f16_kernel1(const uint8_t *w, size_t stride, uint32_t n_cols, uint32_t n_rows,
                                                     __half *y) {
        size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

        grid_dep_launch();
        grid_dep_wait();
        if (g >= (size_t)n_cols * n_rows)
                return;
        y[g] = __float2half(dq_elem<T>(w + (g / n_cols) * stride, (uint32_t)(g % n_cols)));
}

template <int T> static int dequant_launch(CudaStream s, const CudaMatrix *w, const int32_t *rows, uint32_t n_rows,
                                           float *yf, __half *yh) {
        if (yf) {
                dim3 grid(n_rows, (w->n_cols + 255) / 256);
                CU_TRY(launch_pdl(get_rows_kernel<T>, grid, dim3(256), 0, s, (const uint8_t *)w->data,
                                  w->row_stride, w->n_cols, rows, yf));
        } else if (w->n_cols % 8 == 0) {
                size_t n = (size_t)w->n_rows * w->n_cols / 8;
                CU_TRY(launch_pdl(dequant_f16_kernel<T>, dim3((unsigned)((n + 255) / 256)), dim3(256), 0, s,
                                  (const uint8_t *)w->data, w->row_stride, w->n_cols, w->n_rows, yh));
        } else {
                size_t n = (size_t)w->n_rows * w->n_cols;
                CU_TRY(launch_pdl(dequant_f16_kernel1<T>, dim3((unsigned)((n + 255) / 256)), dim3(256), 0, s,
                                  (const uint8_t *)w->data, w->row_stride, w->n_cols, w->n_rows, yh));
        }
        return 0;
}

static int dequant_dispatch(CudaStream s, const CudaMatrix *w, const int32_t *rows, uint32_t n_rows, float *yf,
                            __half *yh) {
        switch (w->type) {
        case GGML_TYPE_Q4_0:
                return dequant_launch<GGML_TYPE_Q4_0>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_Q4_1:
                return dequant_launch<GGML_TYPE_Q4_1>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_Q5_0:
                return dequant_launch<GGML_TYPE_Q5_0>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_Q5_1:
                return dequant_launch<GGML_TYPE_Q5_1>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_Q8_0:
                return dequant_launch<GGML_TYPE_Q8_0>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_Q2_K:
                return dequant_launch<GGML_TYPE_Q2_K>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_Q3_K:
                return dequant_launch<GGML_TYPE_Q3_K>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_Q4_K:
                return dequant_launch<GGML_TYPE_Q4_K>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_Q5_K:
                return dequant_launch<GGML_TYPE_Q5_K>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_Q6_K:
                return dequant_launch<GGML_TYPE_Q6_K>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_F32:
                return dequant_launch<GGML_TYPE_F32>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_F16:
                return dequant_launch<GGML_TYPE_F16>(s, w, rows, n_rows, yf, yh);
        case GGML_TYPE_BF16:
                return dequant_launch<GGML_TYPE_BF16>(s, w, rows, n_rows, yf, yh);
        default:
                return -EOPNOTSUPP;
        }
}

/* One warp per row, each lane a strided share of the elements. */
template <int T> __global__ void matvec_f32_kernel(const uint8_t *w, size_t stride, uint32_t n_cols, uint32_t n_rows,
                                                   const float *x, float *y) {
        uint32_t r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
        int lane = threadIdx.x & 31;

        grid_dep_launch();
        grid_dep_wait();
        if (r >= n_rows)
                return;
        const uint8_t *row = w + (size_t)r * stride;
        float acc = 0.0f;
        for (uint32_t c = lane; c < n_cols; c += 32)
                acc += dq_elem<T>(row, c) * x[c];
        acc = warp_sum(acc);
        if (lane == 0)
                y[r] = acc;
}

#define MATVEC_F32_CASE(T)                                                                                      \
        case T:                                                                                                 \
                CU_TRY(launch_pdl(matvec_f32_kernel<T>, dim3((w->n_rows + 7) / 8), dim3(256), 0, s,             \
                                  (const uint8_t *)w->data, w->row_stride, w->n_cols, w->n_rows, x, y));        \
                return 0;

extern "C" int cuda_matvec_f32(CudaStream s, const CudaMatrix *w, const float *x, float *y) {
        switch (w->type) {
                MATVEC_F32_CASE(GGML_TYPE_Q4_0)
                MATVEC_F32_CASE(GGML_TYPE_Q4_1)
                MATVEC_F32_CASE(GGML_TYPE_Q5_0)
                MATVEC_F32_CASE(GGML_TYPE_Q5_1)
                MATVEC_F32_CASE(GGML_TYPE_Q8_0)
                MATVEC_F32_CASE(GGML_TYPE_Q2_K)
                MATVEC_F32_CASE(GGML_TYPE_Q3_K)
                MATVEC_F32_CASE(GGML_TYPE_Q4_K)
                MATVEC_F32_CASE(GGML_TYPE_Q5_K)
                MATVEC_F32_CASE(GGML_TYPE_Q6_K)
                MATVEC_F32_CASE(GGML_TYPE_F32)
                MATVEC_F32_CASE(GGML_TYPE_F16)
                MATVEC_F32_CASE(GGML_TYPE_BF16)
        default:
                return -EOPNOTSUPP;
        }
}

extern "C" int cuda_get_rows(CudaStream s, const CudaMatrix *w, const int32_t *rows, uint32_t n_rows, float *y) {
        return dequant_dispatch(s, w, rows, n_rows, y, NULL);
}

extern "C" int cuda_dequant_f16(CudaStream s, const CudaMatrix *w, uint16_t *y) {
        return dequant_dispatch(s, w, NULL, 0, NULL, (__half *)y);
}

__global__ void f32_to_f16_kernel(const float *x, __half *y, size_t n) {
        size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

        grid_dep_launch();
        grid_dep_wait();
        if (i < n)
                y[i] = __float2half(x[i]);
}

extern "C" int cuda_f32_to_f16(CudaStream s, const float *x, uint16_t *y, size_t n) {
        CU_TRY(launch_pdl(f32_to_f16_kernel, dim3((unsigned)((n + 255) / 256)), dim3(256), 0, s, x, (__half *)y,
                          n));
        return 0;
}

__global__ void swiglu_f16_kernel(const float *gu, uint32_t n_ff, size_t n, __half *h) {
        size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

        grid_dep_launch();
        grid_dep_wait();
        if (i >= n)
                return;
        size_t t = i / n_ff, j = i % n_ff;
        float g = gu[t * 2 * n_ff + j], u = gu[t * 2 * n_ff + n_ff + j];
        h[i] = __float2half(g / (1.0f + __expf(-g)) * u);
}

extern "C" int cuda_swiglu_f16(CudaStream s, const float *gu, uint32_t n_ff, uint32_t n_tok, uint16_t *h) {
        size_t n = (size_t)n_ff * n_tok;

        CU_TRY(launch_pdl(swiglu_f16_kernel, dim3((unsigned)((n + 255) / 256)), dim3(256), 0, s, gu, n_ff, n,
                          (__half *)h));
        return 0;
}

/* ---- RoPE and the KV-cache store ---- */

/* The elements i0, i1 of a head that pair j (0 .. head_dim / 2 - 1) covers, and whether RoPE rotates them:
 * adjacent pairs (GGUF's llama layout), or with neox (qwen2) element j and j + n_rot / 2 for j < n_rot / 2,
 * the dimensions past n_rot left alone. */
__device__ __forceinline__ bool rope_idx(const CudaAttnShape &a, uint32_t j, uint32_t *i0, uint32_t *i1) {
        const uint32_t half = a.n_rot / 2;

        if (!a.neox) {
                *i0 = 2 * j, *i1 = 2 * j + 1;
                return j < half;
        }
        if (j < half) {
                *i0 = j, *i1 = j + half;
                return true;
        }
        *i0 = a.n_rot + 2 * (j - half), *i1 = *i0 + 1;
        return false;
}

/* Element i of the token's q, k, v (laid out as in qkv)'s bias, 0 without biases. */
__device__ __forceinline__ float bias_at(const CudaAttnShape &a, uint32_t i) {
        return a.bias ? a.bias[i] : 0.0f;
}

/* Bytes of one position's row of a KV cache: n_head_kv * head_dim halves, or with kv_q8 Q8_0 blocks of 32. */
__host__ __device__ __forceinline__ size_t kv_row_bytes(const CudaAttnShape &a) {
        const size_t nk = (size_t)a.n_head_kv * a.head_dim;
        return a.kv_q8 ? nk / 32 * Q8_0_BYTES : nk * 2;
}

/* Element i of a cache row (row: its first byte) as a float. */
__device__ __forceinline__ float kv_elem(const CudaAttnShape &a, const uint8_t *row, uint32_t i) {
        if (!a.kv_q8)
                return __half2float(((const __half *)row)[i]);
        const uint8_t *b = row + (i / 32) * Q8_0_BYTES;
        return ld_half(b) * (float)(int8_t)b[2 + i % 32];
}

/* A warp's 32 values (one a lane) into the Q8_0 block at b; returns the lane's value as stored. */
__device__ __forceinline__ float kv_store_q8(float x, uint8_t *b, bool store) {
        const int lane = threadIdx.x & 31;
        const float amax = warp_max(fabsf(x));
        const __half dh = __float2half(amax / 127.0f);
        const float d = __half2float(dh);
        const int q = d > 0.0f ? max(-127, min(127, __float2int_rn(x / d))) : 0;

        if (store) {
                if (lane == 0)
                        *(__half *)b = dh;
                b[2 + lane] = (uint8_t)(int8_t)q;
        }
        return (float)q * d;
}

/* The frequency of RoPE pair j: the angle at position p is p times it. */
__device__ __forceinline__ float rope_inv_freq(const CudaAttnShape &a, uint32_t j) {
        return a.inv_freq ? a.inv_freq[j] : powf(a.rope_base, -(float)(2 * j) / (float)a.n_rot);
}

__global__ void rope_store_kernel(const CudaAttnShape a, float *qkv, uint32_t stride, const int32_t *pos,
                                  uint8_t *kc, uint8_t *vc) {
        const uint32_t t = blockIdx.x, hd = a.head_dim, half_hd = hd / 2;
        const uint32_t nq = a.n_head * hd, nk = a.n_head_kv * hd;

        grid_dep_launch();
        grid_dep_wait();
        const int32_t p = *pos + (int32_t)t;
        float *q = qkv + (size_t)t * stride, *k = q + nq, *v = k + nk;
        const size_t row = kv_row_bytes(a);
        __half *kr = (__half *)(kc + (size_t)p * row), *vr = (__half *)(vc + (size_t)p * row);

        for (uint32_t i = threadIdx.x; i < (nq + nk) / 2; i += blockDim.x) {
                bool is_q = i < nq / 2;
                uint32_t pi = is_q ? i : i - nq / 2, j = pi % half_hd, base = pi / half_hd * hd, i0, i1;
                bool rot = rope_idx(a, j, &i0, &i1);
                float *x = (is_q ? q : k) + base;
                uint32_t bo = (is_q ? 0 : nq) + base;
                float x0 = x[i0] + bias_at(a, bo + i0), x1 = x[i1] + bias_at(a, bo + i1);
                if (rot) {
                        double th = (double)p * (double)rope_inv_freq(a, j);
                        float sn, cs;
                        sincosf((float)(th - 6.283185307179586 * floor(th * 0.15915494309189535)), &sn, &cs);
                        float y0 = x0 * cs - x1 * sn, y1 = x0 * sn + x1 * cs;
                        x0 = y0, x1 = y1;
                }
                if (is_q || a.kv_q8) {
                        x[i0] = x0, x[i1] = x1; /* Q8_0: k goes to the cache below, a block at a time */
                } else {
                        kr[base + i0] = __float2half(x0);
                        kr[base + i1] = __float2half(x1);
                }
        }
        if (!a.kv_q8) {
                for (uint32_t i = threadIdx.x; i < nk; i += blockDim.x)
                        vr[i] = __float2half(v[i] + bias_at(a, nq + nk + i));
                return;
        }
        /* Q8_0: a warp per block of 32, k (rotated in place above) then v. blockDim.x is a multiple of 32. */
        __syncthreads();
        for (uint32_t i = threadIdx.x; i < 2 * nk; i += blockDim.x) {
                const bool is_k = i < nk;
                const uint32_t e = is_k ? i : i - nk;
                const float x = is_k ? k[e] : v[e] + bias_at(a, nq + nk + e);
                uint8_t *dst = (is_k ? kc : vc) + (size_t)p * row + (e / 32) * Q8_0_BYTES;
                kv_store_q8(x, dst, true);
        }
}

extern "C" int cuda_rope_store(CudaStream s, const CudaAttnShape *a, float *qkv, uint32_t stride, uint32_t n_tok,
                               const int32_t *pos, void *k_cache, void *v_cache) {
        if (a->head_dim % 2 != 0 || a->n_rot > a->head_dim || a->n_head % a->n_head_kv != 0)
                return -EINVAL;
        CU_TRY(launch_pdl(rope_store_kernel, dim3(n_tok), dim3(256), 0, s, *a, qkv, stride, pos,
                          (uint8_t *)k_cache, (uint8_t *)v_cache));
        return 0;
}

/* ---- attention for one token, with RoPE and the KV store fused ----
 * Block (head, split) covers ATT_SPLIT positions, a warp 32 of them: lane t scores position t (its key row
 * read with 16-byte loads), then the warp sums values over its 32 positions with each lane holding pairs of
 * output dimensions. The block's warps merge their (max, sum, output) in shared memory; a head's splits merge
 * in the last block of the head to finish. The block holding the current position rotates that token's k
 * itself and uses it from shared memory, so no block waits for another's store; the first head of each KV
 * group writes k and v to the caches. */

#define ATT_SPLIT 128
#define ATT_WARPS (ATT_SPLIT / 32)
#define ATT_MAXP 4 /* pairs of dimensions per lane: head_dim up to 256 */

static uint32_t attn_splits(const CudaAttnShape *a) {
        return (a->n_ctx + ATT_SPLIT - 1) / ATT_SPLIT;
}

/* Dynamic shared memory of a decode attention block: the token's q, k, v and the warps' outputs (floats),
 * and each warp's 32 key rows (padded) and 32 value rows where they are staged (attn_decode_block()). */
static size_t attn_smem(const CudaAttnShape *a) {
        const size_t f = (3 + ATT_WARPS) * a->head_dim * sizeof(float), hb = (size_t)a->head_dim / 32 * Q8_0_BYTES;

        if (!a->kv_q8)
                return f + ATT_WARPS * 32 * ((size_t)a->head_dim * 4 + 16);
        return (a->head_dim / 32) % 2 == 0 ? f + ATT_WARPS * 32 * (2 * hb + 4) : f;
}

extern "C" size_t cuda_attn_scratch_size(const CudaAttnShape *a) {
        size_t ns = attn_splits(a);
        return a->n_head * ns * (a->head_dim + 2) * sizeof(float) + a->n_head * sizeof(uint32_t);
}

/* Rotates (x0, x1) by p * freq (rope_inv_freq()), the angle reduced modulo 2 pi in double precision, so that
 * the fast float sine and cosine stay accurate at large positions (sincosf's slow path cost more). */
__device__ __forceinline__ void rope_pair(float *x0, float *x1, int32_t p, float freq) {
        double th = (double)p * (double)freq;
        th -= 6.283185307179586 * floor(th * 0.15915494309189535);
        float sn, cs;
        __sincosf((float)th, &sn, &cs);
        float y0 = *x0 * cs - *x1 * sn, y1 = *x0 * sn + *x1 * cs;
        *x0 = y0, *x1 = y1;
}

/* Block (blockIdx.x = head, blockIdx.y = split) of one token's attention at position p; qkv, the caches, the
 * scratch (part, counters) and the outputs are the token's own. */
/* Two adjacent elements e, e + 1 (e even) of a value row as the decode attention holds them in flight. */
template <bool KVQ8> struct KvVal;
template <> struct KvVal<false> {
        typedef __half2 T;
        static __device__ __forceinline__ T load(const uint8_t *row, uint32_t e, bool ok) {
                return ok ? ((const __half2 *)row)[e / 2] : __floats2half2_rn(0.0f, 0.0f);
        }
        static __device__ __forceinline__ float2 f2(T v) {
                return __half22float2(v);
        }
};
template <> struct KvVal<true> {
        typedef float2 T;
        static __device__ __forceinline__ T load(const uint8_t *row, uint32_t e, bool ok) {
                if (!ok)
                        return make_float2(0.0f, 0.0f);
                const uint8_t *b = row + (e / 32) * Q8_0_BYTES;
                const float d = ld_half(b);
                const uint16_t two = *(const uint16_t *)(b + 2 + e % 32);
                return make_float2(d * (float)(int8_t)(two & 0xff), d * (float)(int8_t)(two >> 8));
        }
        static __device__ __forceinline__ float2 f2(T v) {
                return v;
        }
};

/* A warp's weighted sum of its nw staged F16 value rows (hb bytes apart) with weights pe (lane j: row j's),
 * into out (hd floats, shared memory): lane holds dimensions 4 lane .. 4 lane + 3 (and, G = 2, the same 128
 * on), read 8 bytes at a time. */
template <int G>
__device__ __forceinline__ void attn_values_f16(const uint8_t *vst, uint32_t hb, uint32_t hd, uint32_t nw, float pe,
                                                float *out) {
        const int lane = threadIdx.x & 31;
        float4 o[G];
        bool in[G];
#pragma unroll
        for (int g = 0; g < G; g++)
                o[g] = make_float4(0.0f, 0.0f, 0.0f, 0.0f), in[g] = 4 * lane + 128 * g < hd;
#pragma unroll 4
        for (uint32_t jj = 0; jj < nw; jj++) {
                const float pj = __shfl_sync(0xffffffffu, pe, jj);
                const uint2 *vr = (const uint2 *)(vst + (size_t)jj * hb);
#pragma unroll
                for (int g = 0; g < G; g++) {
                        const uint2 u = in[g] ? vr[lane + 32 * g] : make_uint2(0, 0);
                        const float2 f0 = __half22float2(*(const __half2 *)&u.x);
                        const float2 f1 = __half22float2(*(const __half2 *)&u.y);
                        o[g].x += pj * f0.x, o[g].y += pj * f0.y;
                        o[g].z += pj * f1.x, o[g].w += pj * f1.y;
                }
        }
#pragma unroll
        for (int g = 0; g < G; g++)
                if (in[g])
                        *(float4 *)(out + 4 * lane + 128 * g) = o[g];
}

/* EARLY: the caller has not waited for the kernel before (griddepcontrol.wait) and p and the cache rows
 * below it were complete before that kernel began, so the block stages those rows first and waits only
 * before it reads the token's q, k and v; otherwise the caller has waited and q, k and v are loaded first,
 * so that their loads do not queue behind the position's. */
template <bool KVQ8, bool EARLY>
__device__ __forceinline__ void attn_decode_block(const CudaAttnShape &a, const float *qkv, int32_t p, uint8_t *kc,
                                                  uint8_t *vc, float *part, uint32_t *counters, float *out,
                                                  const CudaQ8 &oq, size_t oq_row) {
        /* q, k, v of the token (hd each), each warp's output (hd), then (F16 cache) each warp's key rows
         * (padded) and value rows (attn_smem()) */
        extern __shared__ float sm[];
        __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
        __shared__ uint32_t ticket;
        const uint32_t h = blockIdx.x, c = blockIdx.y, hd = a.head_dim, tid = threadIdx.x;
        const uint32_t group = a.n_head / a.n_head_kv, kvh = h / group, kv_dim = a.n_head_kv * hd;
        const uint32_t nq = a.n_head * hd, max_splits = gridDim.y;
        const int lane = tid & 31, wid = tid >> 5;
        const size_t row = KVQ8 ? (size_t)a.n_head_kv * a.head_dim / 32 * Q8_0_BYTES
                                : (size_t)a.n_head_kv * a.head_dim * 2;
        float *qs = sm, *ks = sm + hd, *vs = ks + hd, *wo = vs + hd;

        /* The token's q, k and v: one pair of elements per thread (head_dim <= 2 * blockDim.x). */
        const uint32_t j = tid;
        const bool have = j < hd / 2;
        const uint32_t ko = nq + kvh * hd, vo = nq + kv_dim + kvh * hd;
        uint32_t i0 = 0, i1 = 0;
        bool rot = false;
        float x0 = 0.0f, x1 = 0.0f, k0 = 0.0f, k1 = 0.0f, v0 = 0.0f, v1 = 0.0f, freq = 0.0f;
        if (have) {
                rot = rope_idx(a, j, &i0, &i1);
                if (rot)
                        freq = rope_inv_freq(a, j);
        }
        auto load_token = [&]() {
                if (have) {
                        x0 = qkv[h * hd + i0] + bias_at(a, h * hd + i0), x1 = qkv[h * hd + i1] + bias_at(a, h * hd + i1);
                        k0 = qkv[ko + i0] + bias_at(a, ko + i0), k1 = qkv[ko + i1] + bias_at(a, ko + i1);
                        v0 = qkv[vo + i0] + bias_at(a, vo + i0), v1 = qkv[vo + i1] + bias_at(a, vo + i1);
                }
        };
        if (!EARLY)
                load_token();

        const uint32_t n_pos = (uint32_t)p + 1, n_split = (n_pos + ATT_SPLIT - 1) / ATT_SPLIT;
        if (c >= n_split)
                return;
        const uint32_t t0 = c * ATT_SPLIT, cnt = min(ATT_SPLIT, n_pos - t0);
        const bool last = c == n_split - 1;
        const float scale = rsqrtf((float)hd);
        /* Warp wid takes positions tw .. tw + nw - 1, a lane each for the scores: the block's positions spread
         * evenly (per, at most 32, a warp), so that the value loop of a short split is short in every warp. */
        const uint32_t per = (cnt + ATT_WARPS - 1) / ATT_WARPS;
        const uint32_t tw = t0 + per * wid, nw = tw < t0 + cnt ? min(per, t0 + cnt - tw) : 0;

        /* The warp's key and value rows go to shared memory now, in flight while the token's q, k and v are
         * rotated, so that the scores and the weighted sum wait for one round trip rather than one per row
         * (the current position's row is the token's own, below). A head's row: hb bytes, F16 or Q8_0 blocks;
         * key rows padded so that lanes reading 16 (F16) or 4 (Q8_0) bytes of 32 rows hit distinct banks.
         * Q8_0 rows are copied 4 bytes at a time, so they are staged when a head's blocks make whole words
         * (head_dim / 32 even); otherwise they are read from global memory as they are used. */
        const uint32_t hb = KVQ8 ? hd / 32 * Q8_0_BYTES : hd * 2, kstride = hb + (KVQ8 ? 4 : 16);
        const bool staged = !KVQ8 || (hd / 32) % 2 == 0;
        uint8_t *kst = (uint8_t *)(wo + ATT_WARPS * hd) + (size_t)wid * 32 * (kstride + hb);
        uint8_t *vst = kst + 32 * kstride;
        if (staged) {
                /* lane's copies: unit u of row jj, then 32 units on; counters and pointers step along
                 * (divisions and 64-bit products per copy were most of the loop) */
                const uint32_t ub = KVQ8 ? 4 : 16, units = hb / ub, djj = 32 / units, du = 32 % units;
                const ptrdiff_t vk = vc - kc;
                uint32_t jj = lane / units, u = lane % units;
                const uint8_t *src = kc + (size_t)(tw + jj) * row + (size_t)kvh * hb + ub * u;
                uint8_t *kd = kst + jj * kstride + ub * u, *vd = vst + jj * hb + ub * u;
                for (; jj < nw; jj += djj, u += du) {
                        if (u >= units) {
                                u -= units, jj++;
                                src += row - hb, kd += kstride - hb;
                        }
                        if (jj >= nw)
                                break;
                        if (tw + jj != (uint32_t)p) {
                                if (KVQ8) {
                                        cp_async4(kd, src);
                                        cp_async4(vd, src + vk);
                                } else {
                                        cp_async16(kd, src);
                                        cp_async16(vd, src + vk);
                                }
                        }
                        src += djj * row + du * ub, kd += djj * kstride + du * ub, vd += djj * hb + du * ub;
                }
                cp_async_commit();
        }
        if (EARLY) {
                grid_dep_wait();
                load_token();
        }

        if (have) {
                if (rot)
                        rope_pair(&x0, &x1, p, freq);
                qs[i0] = x0 * scale, qs[i1] = x1 * scale;
                if (last) {
                        if (rot)
                                rope_pair(&k0, &k1, p, freq);
                        __half hk0 = __float2half(k0), hk1 = __float2half(k1);
                        __half hv0 = __float2half(v0), hv1 = __float2half(v1);
                        if (KVQ8)
                                ks[i0] = k0, ks[i1] = k1, vs[i0] = v0, vs[i1] = v1; /* quantized below */
                        if (h % group == 0 && !KVQ8) {
                                __half *kr = (__half *)(kc + (size_t)p * row) + kvh * hd;
                                __half *vr = (__half *)(vc + (size_t)p * row) + kvh * hd;
                                kr[i0] = hk0, kr[i1] = hk1, vr[i0] = hv0, vr[i1] = hv1;
                        }
                        if (!KVQ8) {
                                /* F16: the token's row where the staging left its slot, so that every position
                                 * takes the same path below */
                                const uint32_t slot = (uint32_t)p - t0;
                                uint8_t *kw = (uint8_t *)(wo + ATT_WARPS * hd) + (size_t)(slot / per) * 32 * (kstride + hb);
                                __half *kr = (__half *)(kw + (slot % per) * kstride);
                                __half *vr = (__half *)(kw + 32 * kstride + (slot % per) * hb);
                                kr[i0] = hk0, kr[i1] = hk1, vr[i0] = hv0, vr[i1] = hv1;
                        }
                }
        }
        __syncthreads();
        if (last && KVQ8) {
                /* The token's k and v as the cache will hold them: warp w quantizes elements 32w .. 32w + 31
                 * (head_dim <= 32 * ATT_WARPS), the first head of the group stores them. */
                if ((uint32_t)wid < hd / 32) {
                        const size_t blk = (size_t)(kvh * hd) / 32 + wid;
                        const bool st = h % group == 0;
                        ks[32 * wid + lane] = kv_store_q8(ks[32 * wid + lane], kc + (size_t)p * row + blk * Q8_0_BYTES, st);
                        vs[32 * wid + lane] = kv_store_q8(vs[32 * wid + lane], vc + (size_t)p * row + blk * Q8_0_BYTES, st);
                }
                __syncthreads();
        }

        if (staged) {
                cp_async_wait<0>();
                __syncwarp();
        }

        /* Scores: lane per position. */
        const uint32_t t = tw + lane;
        float sc = -INFINITY;
        if ((uint32_t)lane < nw) {
                sc = 0.0f;
                if (KVQ8 && t == (uint32_t)p) {
                        for (uint32_t d = 0; d < hd; d++)
                                sc += qs[d] * ks[d];
                } else if (KVQ8) {
                        const uint8_t *kb = staged ? kst + (size_t)lane * kstride
                                                   : kc + (size_t)t * row + (size_t)(kvh * hd / 32) * Q8_0_BYTES;
                        for (uint32_t b = 0; b < hd / 32; b++, kb += Q8_0_BYTES) {
                                uint32_t w[8];
#pragma unroll
                                for (int k = 0; k < 8; k++)
                                        w[k] = ld_u32_a2(kb + 2 + 4 * k);
                                float sb = 0.0f;
#pragma unroll
                                for (int k = 0; k < 8; k++)
#pragma unroll
                                        for (int e = 0; e < 4; e++)
                                                sb += (float)(int8_t)(w[k] >> (8 * e)) * qs[32 * b + 4 * k + e];
                                sc += ld_half(kb) * sb;
                        }
                } else {
                        const uint4 *kr = (const uint4 *)(kst + (size_t)lane * kstride);
#pragma unroll 8
                        for (uint32_t v = 0; v < hd / 8; v++) {
                                uint4 u = kr[v];
                                const __half2 *h2 = (const __half2 *)&u;
#pragma unroll
                                for (int i = 0; i < 4; i++) {
                                        float2 f = __half22float2(h2[i]);
                                        sc += f.x * qs[8 * v + 2 * i] + f.y * qs[8 * v + 2 * i + 1];
                                }
                        }
                }
        }
        float m = warp_max(sc);
        float pe = sc == -INFINITY ? 0.0f : __expf(sc - m);
        float l = warp_sum(pe);

        /* Values. F16: lane holds dimensions 4 lane .. 4 lane + 3 and the same 128 on, read 8 bytes at a
         * time; Q8_0: dimension pairs lane, lane + 32, ... */
        if (!KVQ8) {
                if (hd <= 128)
                        attn_values_f16<1>(vst, hb, hd, nw, pe, wo + wid * hd);
                else
                        attn_values_f16<2>(vst, hb, hd, nw, pe, wo + wid * hd);
        }
        float2 o[ATT_MAXP];
#pragma unroll
        for (int k = 0; k < ATT_MAXP; k++)
                o[k] = make_float2(0.0f, 0.0f);
        if (KVQ8 && staged) {
                for (uint32_t jj = 0; jj < nw; jj++) {
                        const float pj = __shfl_sync(0xffffffffu, pe, jj);
                        const bool cur = tw + jj == (uint32_t)p;
                        const uint8_t *vr = vst + (size_t)jj * hb;
#pragma unroll
                        for (int k = 0; k < ATT_MAXP; k++) {
                                uint32_t pi = lane + 32 * k;
                                if (2 * pi < hd) {
                                        float2 v = cur ? make_float2(vs[2 * pi], vs[2 * pi + 1])
                                                       : KvVal<KVQ8>::f2(KvVal<KVQ8>::load(vr, 2 * pi, true));
                                        o[k].x += pj * v.x, o[k].y += pj * v.y;
                                }
                        }
                }
        }
        /* A Q8_0 cache read in place: eight positions at a time, their loads issued before any is used. */
        for (uint32_t j0 = 0; !staged && j0 < nw; j0 += 8) {
                /* F16: the halves as loaded (half the registers), converted at use; Q8_0: floats. */
                typename KvVal<KVQ8>::T vv[8][ATT_MAXP];
#pragma unroll
                for (int jj = 0; jj < 8; jj++) {
                        uint32_t tj = tw + j0 + jj;
                        const uint8_t *vrow = vc + (size_t)tj * row;
#pragma unroll
                        for (int k = 0; k < ATT_MAXP; k++) {
                                uint32_t pi = lane + 32 * k;
                                bool ok = j0 + jj < nw && 2 * pi < hd && tj != (uint32_t)p;
                                vv[jj][k] = KvVal<KVQ8>::load(vrow, kvh * hd + 2 * pi, ok);
                        }
                }
#pragma unroll
                for (int jj = 0; jj < 8; jj++) {
                        float pj = __shfl_sync(0xffffffffu, pe, (j0 + jj) & 31);
                        uint32_t tj = tw + j0 + jj;
                        if (j0 + jj >= nw)
                                break;
#pragma unroll
                        for (int k = 0; k < ATT_MAXP; k++) {
                                uint32_t pi = lane + 32 * k;
                                if (2 * pi < hd) {
                                        float2 v = tj == (uint32_t)p ? make_float2(vs[2 * pi], vs[2 * pi + 1])
                                                                     : KvVal<KVQ8>::f2(vv[jj][k]);
                                        o[k].x += pj * v.x, o[k].y += pj * v.y;
                                }
                        }
                }
        }
#pragma unroll
        for (int k = 0; k < ATT_MAXP; k++) {
                uint32_t pi = lane + 32 * k;
                if (KVQ8 && 2 * pi < hd)
                        wo[wid * hd + 2 * pi] = o[k].x, wo[wid * hd + 2 * pi + 1] = o[k].y;
        }
        if (lane == 0)
                wm[wid] = m, wl[wid] = l;
        __syncthreads();

        /* The block's result: merge its warps. */
        float mb = -INFINITY;
        for (int w = 0; w < ATT_WARPS; w++)
                mb = fmaxf(mb, wm[w]);
        float lb = 0.0f, ob = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) {
                float f = wm[w] == -INFINITY ? 0.0f : __expf(wm[w] - mb);
                lb += wl[w] * f;
                if (tid < hd)
                        ob += wo[w * hd + tid] * f;
        }

        if (n_split > 1) {
                float *po = part + ((size_t)h * max_splits + c) * (hd + 2);
                if (tid < hd)
                        po[2 + tid] = ob;
                if (tid == 0)
                        po[0] = mb, po[1] = lb;
                __threadfence();
                __syncthreads();
                if (tid == 0)
                        ticket = atomicAdd(&counters[h], 1);
                __syncthreads();
                if (ticket != n_split - 1)
                        return;
                /* The last split of this head to finish: merge all of them. */
                __threadfence();
                float m_all = -INFINITY;
                for (uint32_t k = 0; k < n_split; k++)
                        m_all = fmaxf(m_all, __ldcg(part + ((size_t)h * max_splits + k) * (hd + 2)));
                lb = 0.0f;
                ob = 0.0f;
                for (uint32_t k = 0; k < n_split; k++) {
                        const float *pk = part + ((size_t)h * max_splits + k) * (hd + 2);
                        float f = __expf(__ldcg(pk) - m_all);
                        lb += __ldcg(pk + 1) * f;
                        if (tid < hd)
                                ob += __ldcg(pk + 2 + tid) * f;
                }
                if (tid == 0)
                        counters[h] = 0;
        }
        if (tid < hd) {
                ob /= lb;
                out[h * hd + tid] = ob;
                if (oq.qs) /* hd % 32 == 0: the threads below hd are whole warps */
                        quantize_group<1>(&ob, fabsf(ob), oq, oq_row, h * hd + tid, nq, 0xffffffffu, false);
        }
}

template <bool KVQ8, bool EARLY>
__global__ void __launch_bounds__(ATT_WARPS * 32)
        attn_decode_kernel(const CudaAttnShape a, const float *qkv, const int32_t *pos, uint8_t *kc, uint8_t *vc,
                           float *part, uint32_t *counters, float *out, const CudaQ8 oq) {
        TRACE_KERNEL(CUDA_TRACE_ATTN);
        grid_dep_launch();
        if (!EARLY)
                grid_dep_wait();
        attn_decode_block<KVQ8, EARLY>(a, qkv, *pos, kc, vc, part, counters, out, oq, 0);
}

/* blockIdx.z: the sequence of a batched step. */
template <bool KVQ8, bool EARLY>
__global__ void __launch_bounds__(ATT_WARPS * 32)
        attn_decode_batch_kernel(const CudaAttnShape a, const float *qkv, const CudaSeqSlot *seqs, uint32_t layer,
                                 uint8_t *scratch, size_t scratch_stride, float *out, const CudaQ8 oq) {
        const uint32_t b = blockIdx.z, hd = a.head_dim, nq = a.n_head * hd, kv_dim = a.n_head_kv * hd;

        grid_dep_launch();
        if (!EARLY)
                grid_dep_wait();
        const CudaSeqSlot sq = seqs[b];
        const size_t off = (size_t)layer * sq.n_ctx * kv_row_bytes(a);
        float *part = (float *)(scratch + b * scratch_stride);
        uint32_t *counters = (uint32_t *)(part + (size_t)a.n_head * gridDim.y * (hd + 2));
        attn_decode_block<KVQ8, EARLY>(a, qkv + (size_t)b * (nq + 2 * kv_dim), sq.pos, (uint8_t *)sq.k + off,
                          (uint8_t *)sq.v + off, part, counters, out + (size_t)b * nq, oq, (size_t)b * nq);
}

extern "C" int cuda_attn_decode(CudaStream s, const CudaAttnShape *a, const float *qkv, const int32_t *pos,
                                void *k_cache, void *v_cache, void *scratch, float *out, const CudaQ8 *outq,
                                bool early) {
        void (*const kern[2][2])(const CudaAttnShape, const float *, const int32_t *, uint8_t *, uint8_t *, float *,
                                 uint32_t *, float *, const CudaQ8) = {
                {attn_decode_kernel<false, false>, attn_decode_kernel<false, true>},
                {attn_decode_kernel<true, false>, attn_decode_kernel<true, true>},
        };
        const auto k = kern[a->kv_q8][early];
        uint32_t ns = attn_splits(a);
        float *part = (float *)scratch;
        uint32_t *counters = (uint32_t *)(part + (size_t)a->n_head * ns * (a->head_dim + 2));
        size_t smem = attn_smem(a);

        if (a->head_dim % 8 != 0 || a->head_dim > 64 * ATT_MAXP || a->head_dim > ATT_WARPS * 32 ||
            a->n_rot > a->head_dim || a->n_head % a->n_head_kv != 0 ||
            (outq && (a->head_dim % 32 != 0 || !q8_layouts_ok(outq, a->n_head * a->head_dim, 1))))
                return -EINVAL;
        CU_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        CU_TRY(launch_pdl(k, dim3(a->n_head, ns),
                          dim3(ATT_WARPS * 32), smem, s, *a, qkv, pos,
                          (uint8_t *)k_cache, (uint8_t *)v_cache, part, counters, out,
                          outq ? *outq : CudaQ8{}));
        return 0;
}

extern "C" int cuda_attn_decode_batch(CudaStream s, const CudaAttnShape *a, const float *qkv, uint32_t n_seq,
                                      const CudaSeqSlot *seqs, uint32_t layer, void *scratch, float *out,
                                      const CudaQ8 *outq, bool early) {
        void (*const kern[2][2])(const CudaAttnShape, const float *, const CudaSeqSlot *, uint32_t, uint8_t *, size_t,
                                 float *, const CudaQ8) = {
                {attn_decode_batch_kernel<false, false>, attn_decode_batch_kernel<false, true>},
                {attn_decode_batch_kernel<true, false>, attn_decode_batch_kernel<true, true>},
        };
        const auto k = kern[a->kv_q8][early];
        uint32_t ns = attn_splits(a);
        size_t smem = attn_smem(a);
        size_t stride = (cuda_attn_scratch_size(a) + 15) / 16 * 16;

        if (a->head_dim % 8 != 0 || a->head_dim > 64 * ATT_MAXP || a->head_dim > ATT_WARPS * 32 ||
            a->n_rot > a->head_dim || a->n_head % a->n_head_kv != 0 ||
            (outq && (a->head_dim % 32 != 0 || outq->layout != CUDA_Q8_PLAIN || outq->qs2)) ||
            n_seq == 0 || n_seq > 65535)
                return -EINVAL;
        CU_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        CU_TRY(launch_pdl(k, dim3(a->n_head, ns, n_seq), dim3(ATT_WARPS * 32), smem, s, *a,
                          qkv, seqs, layer, (uint8_t *)scratch, stride, out, outq ? *outq : CudaQ8{}));
        return 0;
}

/* ---- attention for prompt batches ----
 * Block (head, 32 queries), 8 warps of 4 queries each. Tiles of 32 keys and values go through shared memory
 * as floats, key rows padded by 4 floats so that a lane per key reads 16 bytes at a time without bank
 * conflicts. Each lane scores one key against the warp's 4 queries (each key load serves all four), the warp
 * keeps a running max and sum per query (online softmax), and lane d accumulates output dimensions d, d + 32,
 * ... of the 4 queries, each value load serving all four. head_dim: a multiple of 4. */

#define PF_Q 32
#define PF_K 32
#define PF_MAXD 4 /* head_dim up to 128 */

__global__ void __launch_bounds__(256)
        attn_prefill_kernel(const CudaAttnShape a, const float *q, uint32_t q_stride, uint32_t n_tok,
                            const int32_t *pos, const uint8_t *kc, const uint8_t *vc, float *out) {
        extern __shared__ float sm[];
        const uint32_t hd = a.head_dim, ldk = hd + 4, ldv = hd, h = blockIdx.x, q0 = blockIdx.y * PF_Q;
        const uint32_t kvh = h / (a.n_head / a.n_head_kv);
        const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
        float *qs = sm, *ks = qs + PF_Q * hd, *vs = ks + PF_K * ldk;
        const float scale = rsqrtf((float)hd);

        grid_dep_launch();
        grid_dep_wait();
        const int32_t p0 = *pos;
        const uint32_t nq = min(PF_Q, n_tok - q0);
        for (uint32_t i = threadIdx.x; i < PF_Q * hd; i += blockDim.x) {
                uint32_t qi = i / hd, d = i % hd;
                qs[i] = qi < nq ? q[(size_t)(q0 + qi) * q_stride + h * hd + d] * scale : 0.0f;
        }
        float m[4], l[4], o[4][PF_MAXD];
#pragma unroll
        for (int i = 0; i < 4; i++) {
                m[i] = -INFINITY, l[i] = 0.0f;
#pragma unroll
                for (int k = 0; k < PF_MAXD; k++)
                        o[i][k] = 0.0f;
        }
        const uint32_t qw = 4 * wid;                  /* the warp's first query in the tile */
        const uint32_t n_keys = (uint32_t)p0 + q0 + nq; /* keys the last query of the tile sees */
        for (uint32_t k0 = 0; k0 < n_keys; k0 += PF_K) {
                __syncthreads();
                for (uint32_t i = threadIdx.x; i < PF_K * hd; i += blockDim.x) {
                        uint32_t j = i / hd, d = i % hd;
                        bool ok = k0 + j < n_keys;
                        size_t off = (size_t)(k0 + j) * kv_row_bytes(a);
                        ks[j * ldk + d] = ok ? kv_elem(a, kc + off, kvh * hd + d) : 0.0f;
                        vs[j * ldv + d] = ok ? kv_elem(a, vc + off, kvh * hd + d) : 0.0f;
                }
                __syncthreads();
                if (qw >= nq || k0 > (uint32_t)p0 + q0 + qw + 3)
                        continue; /* no query of this warp sees any key of the tile */
                float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                const float4 *kr = (const float4 *)(ks + lane * ldk);
                for (uint32_t d4 = 0; d4 < hd / 4; d4++) {
                        float4 kv = kr[d4];
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                                float4 qv = ((const float4 *)(qs + (qw + i) * hd))[d4];
                                sc[i] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
                        }
                }
                float pr[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                        uint32_t qpos = (uint32_t)p0 + q0 + qw + i;
                        float s = qw + i < nq && k0 + lane <= qpos ? sc[i] : -INFINITY;
                        float mn = fmaxf(m[i], warp_max(s));
                        float alpha = mn == -INFINITY ? 1.0f : __expf(m[i] - mn);
                        pr[i] = s == -INFINITY ? 0.0f : __expf(s - mn);
                        l[i] = l[i] * alpha + warp_sum(pr[i]);
                        m[i] = mn;
#pragma unroll
                        for (int k = 0; k < PF_MAXD; k++)
                                o[i][k] *= alpha;
                }
                for (int j = 0; j < PF_K; j++) {
                        float pj[4];
#pragma unroll
                        for (int i = 0; i < 4; i++)
                                pj[i] = __shfl_sync(0xffffffffu, pr[i], j);
#pragma unroll
                        for (int k = 0; k < PF_MAXD; k++)
                                if (lane + 32 * k < hd) {
                                        float v = vs[j * ldv + lane + 32 * k];
#pragma unroll
                                        for (int i = 0; i < 4; i++)
                                                o[i][k] += pj[i] * v;
                                }
                }
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
                uint32_t qi = qw + i;
                if (qi >= nq)
                        break;
#pragma unroll
                for (int k = 0; k < PF_MAXD; k++)
                        if (lane + 32 * k < hd)
                                out[(size_t)(q0 + qi) * a.n_head * hd + h * hd + lane + 32 * k] = o[i][k] / l[i];
        }
}

extern "C" int cuda_attn_prefill(CudaStream s, const CudaAttnShape *a, const float *q, uint32_t q_stride,
                                 uint32_t n_tok, const int32_t *pos, const void *k_cache,
                                 const void *v_cache, float *out) {
        size_t smem = (PF_Q * a->head_dim + PF_K * (a->head_dim + 4) + PF_K * a->head_dim) * sizeof(float);

        if (a->head_dim > 32 * PF_MAXD || a->head_dim % 4 != 0 || n_tok == 0)
                return -EINVAL;
        CU_TRY(cudaFuncSetAttribute(attn_prefill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        CU_TRY(launch_pdl(attn_prefill_kernel, dim3(a->n_head, (n_tok + PF_Q - 1) / PF_Q), dim3(256), smem, s, *a,
                          q, q_stride, n_tok, pos, (const uint8_t *)k_cache, (const uint8_t *)v_cache, out));
        return 0;
}

/* ---- argmax ---- */

/* The block's argmax of x[0 .. n - 1], returned to thread 0 (the other threads get meaningless values). */
__device__ __forceinline__ uint32_t block_argmax(const float *x, uint32_t n) {
        __shared__ float bv[32];
        __shared__ uint32_t bi[32];
        float v = -INFINITY;
        uint32_t idx = 0;

        /* Eight loads in flight per thread rather than one round trip per element. */
        uint32_t i = threadIdx.x;
        for (; i + 7 * blockDim.x < n; i += 8 * blockDim.x) {
                float t[8];
#pragma unroll
                for (int k = 0; k < 8; k++)
                        t[k] = x[i + k * blockDim.x];
#pragma unroll
                for (int k = 0; k < 8; k++)
                        if (t[k] > v)
                                v = t[k], idx = i + k * blockDim.x;
        }
        for (; i < n; i += blockDim.x)
                if (x[i] > v)
                        v = x[i], idx = i;
        /* Ties go to the lowest index, as a sequential scan would. */
        for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, v, o);
                uint32_t oi = __shfl_xor_sync(0xffffffffu, idx, o);
                if (ov > v || (ov == v && oi < idx))
                        v = ov, idx = oi;
        }
        if ((threadIdx.x & 31) == 0)
                bv[threadIdx.x >> 5] = v, bi[threadIdx.x >> 5] = idx;
        __syncthreads();
        if (threadIdx.x == 0)
                for (uint32_t w = 1; w < blockDim.x / 32; w++)
                        if (bv[w] > v || (bv[w] == v && bi[w] < idx))
                                v = bv[w], idx = bi[w];
        return idx;
}

__global__ void __launch_bounds__(1024)
        argmax_kernel(const float *x, uint32_t n, int32_t *ret, int32_t *pos, int32_t *hist, uint32_t hist_n) {
        TRACE_KERNEL(CUDA_TRACE_ARGMAX);
        grid_dep_launch();
        grid_dep_wait();
        uint32_t idx = block_argmax(x, n);
        if (threadIdx.x == 0) {
                *ret = (int32_t)idx;
                if (pos) {
                        int32_t p = *pos + 1;
                        *pos = p;
                        if (hist && (uint32_t)p < hist_n)
                                hist[p] = (int32_t)idx;
                }
        }
}

extern "C" int cuda_argmax(CudaStream s, const float *x, uint32_t n, int32_t *ret, int32_t *pos, int32_t *hist,
                           uint32_t hist_n) {
        CU_TRY(launch_pdl(argmax_kernel, dim3(1), dim3(1024), 0, s, x, n, ret, pos, hist, hist_n));
        return 0;
}

__global__ void __launch_bounds__(1024)
        argmax_batch_kernel(const float *x, uint32_t n, int32_t *ret, CudaSeqSlot *seqs) {
        const uint32_t b = blockIdx.x;

        grid_dep_launch();
        grid_dep_wait();
        uint32_t idx = block_argmax(x + (size_t)b * n, n);
        if (threadIdx.x == 0) {
                ret[b] = (int32_t)idx;
                int32_t p = seqs[b].pos + 1;
                seqs[b].pos = p;
                if ((uint32_t)p < seqs[b].n_ctx + 1)
                        seqs[b].hist[p] = (int32_t)idx;
        }
}

extern "C" int cuda_argmax_batch(CudaStream s, const float *x, uint32_t n, uint32_t n_seq, int32_t *ret,
                                 CudaSeqSlot *seqs) {
        if (n_seq == 0)
                return -EINVAL;
        CU_TRY(launch_pdl(argmax_batch_kernel, dim3(n_seq), dim3(1024), 0, s, x, n, ret, seqs));
        return 0;
}

/* ---- cuBLAS ---- */

struct CudaBlas {
        cublasHandle_t handle;
};

extern "C" int cuda_blas_new(CudaStream s, CudaBlas **ret) {
        CudaBlas *b = (CudaBlas *)calloc(1, sizeof(CudaBlas));

        if (!b)
                return -ENOMEM;
        if (cublasCreate(&b->handle) != CUBLAS_STATUS_SUCCESS) {
                free(b);
                return -EIO;
        }
        if (cublasSetStream(b->handle, s) != CUBLAS_STATUS_SUCCESS) {
                cublasDestroy(b->handle);
                free(b);
                return -EIO;
        }
        *ret = b;
        return 0;
}

extern "C" CudaBlas *cuda_blas_free(CudaBlas *b) {
        if (!b)
                return NULL;
        cublasDestroy(b->handle);
        free(b);
        return NULL;
}

extern "C" int cuda_gemm_f16(CudaBlas *b, const uint16_t *w16, uint32_t n_rows, uint32_t n_cols,
                             const uint16_t *x16, uint32_t n_tok, float *y, bool accumulate) {
        /* Column-major view: y^T (n_rows x n_tok) = w16^T^T ... i.e. C = op(A) B with A = w16 stored as an
         * n_cols x n_rows column-major matrix, transposed. */
        const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
        cublasStatus_t st = cublasGemmEx(b->handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)n_rows, (int)n_tok, (int)n_cols,
                                         &alpha, w16, CUDA_R_16F, (int)n_cols, x16, CUDA_R_16F, (int)n_cols,
                                         &beta, y, CUDA_R_32F, (int)n_rows, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT);

        return st == CUBLAS_STATUS_SUCCESS ? 0 : -EIO;
}

/* ---- random weights ---- */

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* The block scale d (and minimum where the type has one) that makes dequantized weights about scale big. */
__device__ void fill_scales(int type, uint8_t *b, float scale) {
        auto put = [](uint8_t *p, float v) { *(__half *)p = __float2half(v); };

        switch (type) {
        case GGML_TYPE_Q4_0:
                put(b, scale / 4.0f);
                break;
        case GGML_TYPE_Q4_1:
                put(b, scale / 8.0f), put(b + 2, -scale);
                break;
        case GGML_TYPE_Q5_0:
                put(b, scale / 8.0f);
                break;
        case GGML_TYPE_Q5_1:
                put(b, scale / 16.0f), put(b + 2, -scale);
                break;
        case GGML_TYPE_Q8_0:
                put(b, scale / 64.0f);
                break;
        case GGML_TYPE_Q2_K:
                put(b + 80, scale / 12.0f), put(b + 82, scale / 16.0f);
                break;
        case GGML_TYPE_Q3_K:
                put(b + 108, scale / 32.0f);
                break;
        case GGML_TYPE_Q4_K:
                put(b, scale / 256.0f), put(b + 2, scale / 64.0f);
                break;
        case GGML_TYPE_Q5_K:
                put(b, scale / 512.0f), put(b + 2, scale / 64.0f);
                break;
        case GGML_TYPE_Q6_K:
                put(b + 208, scale / 1024.0f);
                break;
        default:
                break;
        }
}

__global__ void fill_random_kernel(int type, uint8_t *w, size_t stride, uint32_t n_rows, uint32_t per_row,
                                   uint32_t bytes, uint64_t seed, float scale) {
        size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

        if (g >= (size_t)per_row * n_rows)
                return;
        uint8_t *b = w + (g / per_row) * stride + (g % per_row) * bytes;
        uint64_t h = mix64(seed ^ (g * 0x9e3779b97f4a7c15ull));
        if (type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16) {
                float v = scale * ((float)(h >> 40) / 8388608.0f - 1.0f);
                if (type == GGML_TYPE_F32)
                        *(float *)b = v;
                else if (type == GGML_TYPE_F16)
                        *(__half *)b = __float2half(v);
                else
                        *(__nv_bfloat16 *)b = __float2bfloat16(v);
                return;
        }
        for (uint32_t i = 0; i < bytes; i += 8) {
                h = mix64(h + i);
                for (uint32_t k = 0; k < 8 && i + k < bytes; k++)
                        b[i + k] = (uint8_t)(h >> (8 * k));
        }
        fill_scales(type, b, scale);
}

extern "C" int cuda_fill_random(CudaStream s, const CudaMatrix *w, uint64_t seed, float scale) {
        const GgmlTypeInfo *ti = ggml_type_info(w->type);

        if (!ti || !cuda_type_supported(w->type) || w->n_cols % ti->block_size != 0)
                return -EINVAL;
        uint32_t per_row = w->n_cols / ti->block_size;
        size_t n = (size_t)per_row * w->n_rows;
        fill_random_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s>>>((int)w->type, (uint8_t *)w->data,
                                                                     w->row_stride, w->n_rows, per_row,
                                                                     ti->type_size, seed, scale);
        CU_CHECK_LAUNCH();
        return 0;
}

#ifdef QUANTD_CUDA_TRACE
extern "C" int cuda_trace_take_matvec(CudaTraceRec *out, size_t max, size_t *n);

extern "C" int cuda_trace_take(CudaTraceRec *out, size_t max, size_t *ret_n) {
        size_t n1 = 0, n2 = 0;
        int r;

        if ((r = cuda_trace_take_here(out, max, &n1)) < 0 ||
            (r = cuda_trace_take_matvec(out + n1, max - n1, &n2)) < 0)
                return r;
        *ret_n = n1 + n2;
        return 0;
}
#else
extern "C" int cuda_trace_take(CudaTraceRec *out, size_t max, size_t *ret_n) {
        (void)out, (void)max;
        *ret_n = 0;
        return -EOPNOTSUPP;
}
#endif
