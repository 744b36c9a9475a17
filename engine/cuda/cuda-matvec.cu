// SPDX-License-Identifier: MIT
/*
 * Decode-time matrix-vector products: y = W x for one token, W in a GGUF block layout, read once.
 *
 * DESIGN
 * Decoding one token reads every weight once and does two operations per weight, so the kernels are
 * limited by memory bandwidth and by the instructions spent per weight byte. One warp owns one output row
 * (two for SwiGLU: the gate row and the up row, sharing the activations). It streams the row through its own
 * slice of shared memory with 16-byte cp.async copies, several chunks ahead, which needs neither the block
 * size nor the block alignment to suit wide loads (Q4_0 blocks are 18 bytes, Q6_K 210). A chunk holds 32
 * blocks of 32 elements (one block per lane) or 8 blocks of 256 (four lanes per block), and is a multiple of
 * 16 bytes for every type. The lanes then decode their blocks from shared memory and take integer dot
 * products (dp4a) with the activations, which were quantized to 8 bits per 32 once for all rows.
 *
 * The kernels are launched with programmatic dependent launch: the first chunks of weights are requested
 * before griddepcontrol.wait, so that the stream of weights starts while the kernel that produces the
 * activations is still finishing.
 *
 * F32, F16 and BF16 rows are read straight into registers 16 bytes per lane and multiplied with float
 * activations.
 */

#include "cuda-quant.cuh"

#define MV_WARPS 4 /* warps per block; each has its own shared-memory stages */

/* Chunk geometry of a quantized type. */
template <int T> struct Chunk {
        enum {
                LANES_PER_BLOCK = Tr<T>::QK == 256 ? 4 : 1,
                BLOCKS = 32 / LANES_PER_BLOCK,
                BYTES = BLOCKS * Tr<T>::BYTES,
                UNITS = BYTES / 16,
                STAGES = BYTES <= 800 ? 6 : BYTES <= 1200 ? 4 : 3,
        };
        static_assert(BYTES % 16 == 0, "chunk must be whole 16-byte units");
};

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
        uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit(void) {
        asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int N> __device__ __forceinline__ void cp_async_wait(void) {
        asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

struct MvArgs {
        const uint8_t *w[3];
        size_t stride[3];
        float *y[3];
        uint32_t rows[3];  /* rows of each matrix; for SwiGLU rows[0] == rows[1] */
        uint32_t n_cols;
        uint32_t n_rows;   /* rows (warps) in all */
        const int8_t *aq;
        const float2 *ads;
        const float *x;
};

__device__ __forceinline__ float silu(float g) {
        return g / (1.0f + __expf(-g));
}

/* Finds which matrix warp row r belongs to: its rows (NR of them) and output. Selected with constant
 * indices, so that the kernel parameters stay in the constant bank rather than being copied to the stack. */
template <int NR>
__device__ __forceinline__ void mv_job(const MvArgs &a, uint32_t *r, const uint8_t **row, float **y) {
        int job = 0;

        if (NR == 1 && *r >= a.rows[0]) {
                *r -= a.rows[0];
                job = 1;
                if (*r >= a.rows[1]) {
                        *r -= a.rows[1];
                        job = 2;
                }
        }
        const uint8_t *w = job == 0 ? a.w[0] : job == 1 ? a.w[1] : a.w[2];
        size_t st = job == 0 ? a.stride[0] : job == 1 ? a.stride[1] : a.stride[2];
        *y = job == 0 ? a.y[0] : job == 1 ? a.y[1] : a.y[2];
        row[0] = w + (size_t)*r * st;
        if (NR == 2)
                row[NR - 1] = a.w[1] + (size_t)*r * a.stride[1];
}

/* NR rows per warp: 1, or 2 for SwiGLU (w[0] gate and w[1] up, same row index). */
template <int T, int NR, int EPI> __global__ void __launch_bounds__(MV_WARPS * 32) mv_quant(const MvArgs a) {
        typedef Chunk<T> C;
        extern __shared__ __align__(16) uint8_t smem[];
        const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
        uint32_t r = blockIdx.x * MV_WARPS + wid;
        uint8_t *stage = smem + (size_t)wid * C::STAGES * NR * C::BYTES;

        grid_dep_launch();
        if (r >= a.n_rows) {
                grid_dep_wait();
                return;
        }
        const uint8_t *row[NR];
        float *y;
        mv_job<NR>(a, &r, row, &y);
        const uint32_t n_blocks = a.n_cols / Tr<T>::QK;
        const uint32_t n_chunks = (n_blocks + C::BLOCKS - 1) / C::BLOCKS;
        const uint32_t row_units = (n_blocks * Tr<T>::BYTES + 15) / 16;

        auto issue = [&](uint32_t c) {
                if (c < n_chunks) {
                        uint8_t *dst = stage + (c % C::STAGES) * NR * C::BYTES;
#pragma unroll
                        for (int i = 0; i < NR; i++)
                                for (uint32_t u = lane; u < C::UNITS; u += 32)
                                        if (c * C::UNITS + u < row_units)
                                                cp_async16(dst + i * C::BYTES + 16 * u,
                                                           row[i] + (size_t)c * C::BYTES + 16 * u);
                }
                cp_async_commit();
        };

#pragma unroll
        for (int c = 0; c < C::STAGES - 1; c++)
                issue(c);
        grid_dep_wait(); /* the activations are written by the kernel before */

        float acc[NR];
#pragma unroll
        for (int i = 0; i < NR; i++)
                acc[i] = 0.0f;
        const int bl = lane / C::LANES_PER_BLOCK, part = lane % C::LANES_PER_BLOCK;
        for (uint32_t c = 0; c < n_chunks; c++) {
                issue(c + C::STAGES - 1);
                cp_async_wait<C::STAGES - 1>();
                __syncwarp();
                uint32_t b = c * C::BLOCKS + bl;
                if (b < n_blocks) {
                        const uint8_t *src = stage + (c % C::STAGES) * NR * C::BYTES + bl * Tr<T>::BYTES;
                        const int8_t *aq = a.aq + (size_t)b * Tr<T>::QK;
                        const float2 *ads = a.ads + (size_t)b * (Tr<T>::QK / 32);
#pragma unroll
                        for (int i = 0; i < NR; i++)
                                acc[i] += lane_dot<T>(src + i * C::BYTES, part, aq, ads);
                }
                __syncwarp();
        }
#pragma unroll
        for (int i = 0; i < NR; i++)
                acc[i] = warp_sum(acc[i]);
        if (lane == 0) {
                if (EPI == CUDA_MV_STORE)
                        y[r] = acc[0];
                else if (EPI == CUDA_MV_ADD)
                        y[r] += acc[0];
                else
                        y[r] = silu(acc[0]) * acc[NR - 1];
        }
}

/* Float weights: 16 bytes per lane per step, straight from global memory. */
template <int T> struct FloatVec;
template <> struct FloatVec<GGML_TYPE_F32> {
        enum { N = 4 };
        static __device__ __forceinline__ void cvt(const uint4 &v, float *f) {
                f[0] = __uint_as_float(v.x), f[1] = __uint_as_float(v.y);
                f[2] = __uint_as_float(v.z), f[3] = __uint_as_float(v.w);
        }
};
template <> struct FloatVec<GGML_TYPE_F16> {
        enum { N = 8 };
        static __device__ __forceinline__ void cvt(const uint4 &v, float *f) {
                const __half2 *h = (const __half2 *)&v;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                        float2 t = __half22float2(h[i]);
                        f[2 * i] = t.x, f[2 * i + 1] = t.y;
                }
        }
};
template <> struct FloatVec<GGML_TYPE_BF16> {
        enum { N = 8 };
        static __device__ __forceinline__ void cvt(const uint4 &v, float *f) {
                const uint32_t *u = (const uint32_t *)&v;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                        f[2 * i] = __uint_as_float(u[i] << 16);
                        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
                }
        }
};

#define MVF_UNROLL 4

template <int T, int NR, int EPI> __global__ void __launch_bounds__(MV_WARPS * 32) mv_float(const MvArgs a) {
        typedef FloatVec<T> V;
        const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
        uint32_t r = blockIdx.x * MV_WARPS + wid;

        grid_dep_launch();
        if (r >= a.n_rows) {
                grid_dep_wait();
                return;
        }
        const uint8_t *rowb[NR];
        const uint4 *row[NR];
        float *y;
        mv_job<NR>(a, &r, rowb, &y);
#pragma unroll
        for (int i = 0; i < NR; i++)
                row[i] = (const uint4 *)rowb[i];
        const uint32_t n_vec = a.n_cols / V::N;
        float acc[NR];
        uint4 wv[MVF_UNROLL][NR];

#pragma unroll
        for (int i = 0; i < NR; i++)
                acc[i] = 0.0f;
        /* The first vectors load before the wait: weights do not depend on the kernel before. */
#pragma unroll
        for (int u = 0; u < MVF_UNROLL; u++)
#pragma unroll
                for (int i = 0; i < NR; i++)
                        if (lane + 32 * u < n_vec)
                                wv[u][i] = row[i][lane + 32 * u];
        grid_dep_wait();
        for (uint32_t v0 = 0; v0 < n_vec; v0 += 32 * MVF_UNROLL) {
#pragma unroll
                for (int u = 0; u < MVF_UNROLL; u++) {
                        uint32_t v = v0 + lane + 32 * u;
                        if (v < n_vec) {
                                const float4 *xv = (const float4 *)(a.x + (size_t)v * V::N);
                                float xf[V::N], wf[V::N];
#pragma unroll
                                for (int k = 0; k < V::N / 4; k++) {
                                        float4 t = xv[k];
                                        xf[4 * k] = t.x, xf[4 * k + 1] = t.y, xf[4 * k + 2] = t.z,
                                                   xf[4 * k + 3] = t.w;
                                }
#pragma unroll
                                for (int i = 0; i < NR; i++) {
                                        V::cvt(wv[u][i], wf);
#pragma unroll
                                        for (int k = 0; k < V::N; k++)
                                                acc[i] = fmaf(wf[k], xf[k], acc[i]);
                                }
                        }
                        uint32_t vn = v + 32 * MVF_UNROLL;
                        if (vn < n_vec)
#pragma unroll
                                for (int i = 0; i < NR; i++)
                                        wv[u][i] = row[i][vn];
                }
        }
        /* Columns past the last whole vector (n_cols not a multiple of V::N). */
        for (uint32_t c = n_vec * V::N + lane; c < a.n_cols; c += 32)
#pragma unroll
                for (int i = 0; i < NR; i++)
                        acc[i] += dq_elem<T>((const uint8_t *)row[i], c) * a.x[c];
#pragma unroll
        for (int i = 0; i < NR; i++)
                acc[i] = warp_sum(acc[i]);
        if (lane == 0) {
                if (EPI == CUDA_MV_STORE)
                        y[r] = acc[0];
                else if (EPI == CUDA_MV_ADD)
                        y[r] += acc[0];
                else
                        y[r] = silu(acc[0]) * acc[NR - 1];
        }
}

/* ---- host side ---- */

template <int T, int NR, int EPI> static int mv_launch_quant(CudaStream s, const MvArgs &a) {
        typedef Chunk<T> C;
        size_t smem = (size_t)MV_WARPS * C::STAGES * NR * C::BYTES;
        dim3 grid((a.n_rows + MV_WARPS - 1) / MV_WARPS);

        CU_TRY(launch_pdl(mv_quant<T, NR, EPI>, grid, dim3(MV_WARPS * 32), smem, s, a));
        return 0;
}

template <int T, int NR, int EPI> static int mv_launch_float(CudaStream s, const MvArgs &a) {
        dim3 grid((a.n_rows + MV_WARPS - 1) / MV_WARPS);

        CU_TRY(launch_pdl(mv_float<T, NR, EPI>, grid, dim3(MV_WARPS * 32), 0, s, a));
        return 0;
}

template <int NR, int EPI> static int mv_dispatch(CudaStream s, uint32_t type, const MvArgs &a) {
        switch (type) {
        case GGML_TYPE_Q4_0:
                return mv_launch_quant<GGML_TYPE_Q4_0, NR, EPI>(s, a);
        case GGML_TYPE_Q4_1:
                return mv_launch_quant<GGML_TYPE_Q4_1, NR, EPI>(s, a);
        case GGML_TYPE_Q5_0:
                return mv_launch_quant<GGML_TYPE_Q5_0, NR, EPI>(s, a);
        case GGML_TYPE_Q5_1:
                return mv_launch_quant<GGML_TYPE_Q5_1, NR, EPI>(s, a);
        case GGML_TYPE_Q8_0:
                return mv_launch_quant<GGML_TYPE_Q8_0, NR, EPI>(s, a);
        case GGML_TYPE_Q2_K:
                return mv_launch_quant<GGML_TYPE_Q2_K, NR, EPI>(s, a);
        case GGML_TYPE_Q3_K:
                return mv_launch_quant<GGML_TYPE_Q3_K, NR, EPI>(s, a);
        case GGML_TYPE_Q4_K:
                return mv_launch_quant<GGML_TYPE_Q4_K, NR, EPI>(s, a);
        case GGML_TYPE_Q5_K:
                return mv_launch_quant<GGML_TYPE_Q5_K, NR, EPI>(s, a);
        case GGML_TYPE_Q6_K:
                return mv_launch_quant<GGML_TYPE_Q6_K, NR, EPI>(s, a);
        case GGML_TYPE_F32:
                return mv_launch_float<GGML_TYPE_F32, NR, EPI>(s, a);
        case GGML_TYPE_F16:
                return mv_launch_float<GGML_TYPE_F16, NR, EPI>(s, a);
        case GGML_TYPE_BF16:
                return mv_launch_float<GGML_TYPE_BF16, NR, EPI>(s, a);
        default:
                return -EOPNOTSUPP;
        }
}

static bool type_is_float(uint32_t type) {
        return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}

extern "C" bool cuda_type_supported(uint32_t type) {
        switch (type) {
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q2_K:
        case GGML_TYPE_Q3_K:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
        case GGML_TYPE_Q6_K:
        case GGML_TYPE_F32:
        case GGML_TYPE_F16:
        case GGML_TYPE_BF16:
                return true;
        default:
                return false;
        }
}

extern "C" int cuda_row_stride(uint32_t type, uint32_t n_cols, size_t *ret) {
        uint64_t size;

        if (!cuda_type_supported(type) || ggml_row_size(type, n_cols, &size) < 0)
                return -EINVAL;
        *ret = (size_t)((size + CUDA_ROW_ALIGN - 1) / CUDA_ROW_ALIGN * CUDA_ROW_ALIGN);
        return 0;
}

extern "C" int cuda_matvec(CudaStream s, const CudaMatrix *w, unsigned n_w, const float *x, const CudaQ8 *xq,
                           float *const *y, CudaMvEpilogue epi) {
        MvArgs a = {};

        if (n_w < 1 || n_w > 3 || (epi == CUDA_MV_SWIGLU && n_w != 2))
                return -EINVAL;
        for (unsigned i = 0; i < n_w; i++) {
                if (w[i].type != w[0].type || w[i].n_cols != w[0].n_cols ||
                    w[i].row_stride % CUDA_ROW_ALIGN != 0 || (uintptr_t)w[i].data % CUDA_ROW_ALIGN != 0)
                        return -EINVAL;
                a.w[i] = (const uint8_t *)w[i].data;
                a.stride[i] = w[i].row_stride;
                a.rows[i] = w[i].n_rows;
                a.y[i] = y[epi == CUDA_MV_SWIGLU ? 0 : i];
                a.n_rows += w[i].n_rows;
        }
        a.n_cols = w[0].n_cols;
        if (epi == CUDA_MV_SWIGLU) {
                if (w[1].n_rows != w[0].n_rows)
                        return -EINVAL;
                a.n_rows = w[0].n_rows;
        }
        if (type_is_float(w[0].type)) {
                if (!x)
                        return -EINVAL;
                a.x = x;
        } else {
                if (!xq || a.n_cols % 32 != 0)
                        return -EINVAL;
                a.aq = xq->qs;
                a.ads = (const float2 *)xq->ds;
        }
        switch (epi) {
        case CUDA_MV_STORE:
                return mv_dispatch<1, CUDA_MV_STORE>(s, w[0].type, a);
        case CUDA_MV_ADD:
                return mv_dispatch<1, CUDA_MV_ADD>(s, w[0].type, a);
        case CUDA_MV_SWIGLU:
                return mv_dispatch<2, CUDA_MV_SWIGLU>(s, w[0].type, a);
        case _CUDA_MV_EPILOGUE_MAX:
                break;
        }
        return -EINVAL;
}

/* ---- activations to 8 bits: one warp per 32 elements ---- */

__global__ void quantize_q8_kernel(const float *x, uint32_t n_total, int8_t *qs, float2 *ds) {
        uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;

        grid_dep_launch();
        grid_dep_wait();
        if (i - (i & 31) >= n_total)
                return;
        float v = i < n_total ? x[i] : 0.0f;
        float amax = warp_max(fabsf(v));
        float d = amax / 127.0f;
        int q = amax > 0.0f ? __float2int_rn(v / d) : 0;
        float sum = warp_sum((float)q);
        if (i < n_total)
                qs[i] = (int8_t)q;
        if ((i & 31) == 0)
                ds[i / 32] = make_float2(d, d * sum);
}

extern "C" int cuda_quantize_q8(CudaStream s, const float *x, uint32_t n, uint32_t n_rows, const CudaQ8 *ret) {
        uint32_t total = n * n_rows;

        if (n % 32 != 0)
                return -EINVAL;
        CU_TRY(launch_pdl(quantize_q8_kernel, dim3((total + 255) / 256), dim3(256), 0, s, x, total, ret->qs,
                          (float2 *)ret->ds));
        return 0;
}
