// SPDX-License-Identifier: MIT
/*
 * Decode-time matrix-vector products: y = W x for one token, W in a GGUF block layout, read once.
 *
 * DESIGN
 * Decoding one token reads every weight once and does two operations per weight, so the kernels are
 * limited by memory bandwidth and by the instructions spent per weight byte. A persistent grid of 8 blocks of
 * 4 warps per multiprocessor (4 blocks ran 1.5x slower: too few warps to hide the latency of decoding; one
 * row per warp and no cap 4 % slower); warp gw owns rows gw, gw + all warps, ... (two matrices' rows at
 * once for SwiGLU: the gate row and the up row, sharing the activations). It streams its rows through its
 * own slice of shared memory with 16-byte cp.async copies, several chunks ahead and across rows, which needs
 * neither the block size nor the block alignment to suit wide loads (Q4_0 blocks are 18 bytes, Q6_K 210).
 * A chunk holds 32 blocks of 32 elements (one block per lane) or 8 blocks of 256 (four lanes per block),
 * and is a multiple of 16 bytes for every type. The lanes decode their blocks from shared memory and take
 * integer dot products (dp4a) with the activations, quantized to 8 bits per 32 once for all rows (by the
 * RMSNorm kernel, the attention or cuda_quantize_q8()) and read through L1; for the K-quants in the order the
 * lanes read them (CudaQ8 layouts, q8_pos()), so that each warp-wide 16-byte load takes 512 contiguous bytes.
 *
 * The kernels are launched with programmatic dependent launch: the first chunks of weights are requested
 * before griddepcontrol.wait, so that the stream of weights starts while the kernel that produces the
 * activations is still finishing.
 *
 * F32, F16 and BF16 rows are read straight into registers 16 bytes per lane and multiplied with float
 * activations.
 */

#include "cuda-quant.cuh"

#define MV_WARPS 4           /* warps per block */
#ifndef MV_STAGE_BYTES
#define MV_STAGE_BYTES 4608  /* shared memory per warp for streaming weights */
#endif
#define MV_GRID_PER_SM 8     /* blocks per multiprocessor at most: a persistent grid of 32 warps */

/* Chunk geometry of a quantized type, for NR rows streamed side by side. */
template <int T, int NR> struct Chunk {
        enum {
                LANES_PER_BLOCK = Tr<T>::QK == 256 ? 4 : 1,
                BLOCKS = 32 / LANES_PER_BLOCK,
                BYTES = BLOCKS * Tr<T>::BYTES,
                UNITS = BYTES / 16,
                STAGES = MV_STAGE_BYTES / NR / BYTES > 3 ? MV_STAGE_BYTES / NR / BYTES : 3,
        };
        static_assert(BYTES % 16 == 0, "chunk must be whole 16-byte units");
};

struct MvArgs {
        const uint8_t *w[3];
        size_t stride[3];
        float *y[3];
        uint32_t rows[3];  /* rows of each matrix; for SwiGLU rows[0] == rows[1] */
        uint32_t n_cols;
        uint32_t n_rows;   /* rows in all */
        const int8_t *aq;  /* 8-bit input, for quantized weights */
        const float2 *ads;
        uint32_t coal;     /* aq in the layout of the weights' type (q8_family()), not plain */
        const float *x;    /* float input, for float weights */
        uint32_t nb;       /* batched kernels: columns (sequences), each input row n_cols apart */
        uint32_t ldy;      /* batched kernels: elements between the outputs of consecutive columns */
};

__device__ __forceinline__ float silu(float g) {
        return g / (1.0f + __expf(-g));
}

/*
 * Resolves unit r of the concatenated matrices: its NR weight rows, its output and (stride, if wanted) the row
 * stride of its matrix. A unit is one row (NR 1), a gate row and the up row of the same index (SwiGLU), or two
 * adjacent rows of one matrix (NR 2 with another epilogue; rows[] then count pairs), which share the
 * activations the lanes load. Selected with constant indices, so that the kernel parameters stay in the
 * constant bank rather than being copied to the stack.
 */
template <int NR, int EPI>
__device__ __forceinline__ void mv_job(const MvArgs &a, uint32_t *r, const uint8_t **row, float **y,
                                       size_t *stride = nullptr) {
        const bool glu = EPI == CUDA_MV_SWIGLU;
        int job = 0;

        if (!glu && *r >= a.rows[0]) {
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
        row[0] = w + (size_t)*r * st * (NR == 2 && !glu ? 2 : 1);
        if (NR == 2)
                row[NR - 1] = glu ? a.w[1] + (size_t)*r * a.stride[1] : row[0] + st;
        if (stride)
                *stride = st;
}

/* Stores unit r's sums acc; CUDA_MV_ADD: res holds what its outputs held before (mv_residual()). */
template <int NR, int EPI>
__device__ __forceinline__ void mv_store(const MvArgs &a, uint32_t r, const float *acc, const float *res) {
        const uint8_t *row[2];
        float *y;

        mv_job<NR, EPI>(a, &r, row, &y);
        if (EPI == CUDA_MV_SWIGLU) {
                y[r] = silu(acc[0]) * acc[NR - 1];
        } else {
#pragma unroll
                for (int i = 0; i < NR; i++)
                        y[NR * r + i] = EPI == CUDA_MV_STORE ? acc[i] : res[i] + acc[i];
        }
}

/* The outputs of unit r as they are before CUDA_MV_ADD adds into them, read as the unit starts, so that the
 * store at its end does not wait for a load. */
template <int NR, int EPI> __device__ __forceinline__ void mv_residual(const MvArgs &a, uint32_t r, float *res) {
        const uint8_t *row[2];
        float *y;

        mv_job<NR, EPI>(a, &r, row, &y);
#pragma unroll
        for (int i = 0; i < NR; i++)
                res[i] = y[NR * r + i];
}

/* The same for NB columns (batched decode): lane j stores column j's sums. */
template <int NR, int EPI, int NB>
__device__ __forceinline__ void mv_store_b(const MvArgs &a, uint32_t r, const float (*acc)[NB], int lane) {
        const uint8_t *row[2];
        float *y;

        mv_job<NR, EPI>(a, &r, row, &y);
#pragma unroll
        for (int j = 0; j < NB; j++) {
                if (lane != j || (uint32_t)j >= a.nb)
                        continue;
                float *yj = y + (size_t)j * a.ldy;
                if (EPI == CUDA_MV_SWIGLU)
                        yj[r] = silu(acc[0][j]) * acc[NR - 1][j];
                else if (EPI == CUDA_MV_STORE)
#pragma unroll
                        for (int i = 0; i < NR; i++)
                                yj[NR * r + i] = acc[i][j];
                else
#pragma unroll
                        for (int i = 0; i < NR; i++)
                                yj[NR * r + i] += acc[i][j];
        }
}

/*
 * Quantized weights. A persistent grid: warp gw takes rows gw, gw + total warps, ...; its rows' chunks form
 * one stream through STAGES shared-memory buffers per warp, so the loads for the next row are in flight
 * while the current one finishes. The 8-bit input is read from global memory (it stays in L1). NB columns:
 * one decode step of NB sequences at once (batched decode, below), 1 for a single one; the batched kernels
 * are given more registers (4 blocks per multiprocessor) for their NB sums per row.
 */
/* The register budget of a quantized type's kernel, as blocks per multiprocessor for __launch_bounds__: 51
 * registers (10 blocks) for the 32-element types, which measured 3-5 % faster than 64 with the same grid of 8
 * blocks per multiprocessor; the K-quants' row pairs need 64 (8 blocks) or they spill. */
#ifndef MV_OCC_K
#define MV_OCC_K MV_GRID_PER_SM
#endif
template <int T> struct MvOcc {
        enum { BLOCKS = Tr<T>::QK == 32 ? 10 : MV_OCC_K };
};

/* The product as block blk of a grid of nblk (mv_quant(), mv_quant_two()); smem: the block's stages. */
template <int T, int NR, int EPI, int NB, bool COAL>
__device__ __forceinline__ void mv_quant_run(const MvArgs &a, uint32_t blk, uint32_t nblk, uint8_t *smem) {
        typedef Chunk<T, NR> C;
        const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
        const uint32_t gw = blk * MV_WARPS + wid, tw = nblk * MV_WARPS;
        const int8_t *xq = a.aq;
        const float2 *xd = a.ads;
        uint8_t *stage = smem + (size_t)wid * C::STAGES * NR * C::BYTES;
        const uint32_t n_blocks = a.n_cols / Tr<T>::QK;
        const uint32_t n_chunks = (n_blocks + C::BLOCKS - 1) / C::BLOCKS;
        const uint32_t row_units = (n_blocks * Tr<T>::BYTES + 15) / 16;
        const uint32_t my_rows = gw < a.n_rows ? (a.n_rows - gw + tw - 1) / tw : 0;
        const uint32_t n_items = my_rows * n_chunks;
        /* The issuing side runs STAGES - 1 items ahead of the computing side; both walk (row, chunk) with
         * counters rather than divisions, which cost more than the rest of the loop's bookkeeping. */
        uint32_t is_s = 0, is_c = 0, is_k = 0, is_st = 0;
        const uint8_t *is_row[NR];

        grid_dep_launch();
        auto set_issue_row = [&]() {
                uint32_t r = gw + is_k * tw;
                const uint8_t *rows[2];
                float *y;
                mv_job<NR, EPI>(a, &r, rows, &y);
#pragma unroll
                for (int i = 0; i < NR; i++)
                        is_row[i] = rows[i];
        };
        auto issue = [&]() {
                if (is_s < n_items) {
                        uint8_t *dst = stage + is_st * NR * C::BYTES;
#pragma unroll
                        for (int i = 0; i < NR; i++)
#pragma unroll
                                for (uint32_t u0 = 0; u0 < C::UNITS; u0 += 32) {
                                        uint32_t u = u0 + lane;
                                        if (u < C::UNITS && is_c * C::UNITS + u < row_units)
                                                cp_async16(dst + i * C::BYTES + 16 * u,
                                                           is_row[i] + (size_t)is_c * C::BYTES + 16 * u);
                                }
                        is_s++;
                        if (++is_st == C::STAGES)
                                is_st = 0;
                        if (++is_c == n_chunks) {
                                is_c = 0;
                                is_k++;
                                if (is_s < n_items)
                                        set_issue_row();
                        }
                }
                cp_async_commit();
        };

        /* Weights do not depend on the kernel before: start streaming them before waiting for it (one chunk
         * less a warp before the wait cost 8 %, none 19 %: bench/cuda-notes.md v62). */
        if (n_items)
                set_issue_row();
#pragma unroll
        for (int s = 0; s < C::STAGES - 1; s++)
                issue();
        grid_dep_wait();

        /* One column: each lane's share of a block dotted with the input as it is decoded (lane_dot());
         * several: decoded once into registers (LaneW), then dotted with each column's input. */
        float acc[NR][NB];
#pragma unroll
        for (int i = 0; i < NR; i++)
#pragma unroll
                for (int j = 0; j < NB; j++)
                        acc[i][j] = 0.0f;
        const int bl = lane / C::LANES_PER_BLOCK, part = lane % C::LANES_PER_BLOCK;
        float res[NR];
        uint32_t c = 0, k = 0, st = 0;
        for (uint32_t s = 0; s < n_items; s++) {
                if (EPI == CUDA_MV_ADD && NB == 1 && c == 0 && lane == 0)
                        mv_residual<NR, EPI>(a, gw + k * tw, res);
                issue();
                cp_async_wait<C::STAGES - 1>();
                __syncwarp();
                uint32_t b = c * C::BLOCKS + bl;
                if (b < n_blocks) {
                        const uint8_t *src = stage + st * NR * C::BYTES + bl * Tr<T>::BYTES;
                        if (NB == 1) {
                                /* The lane's activation pieces: in the chunk's own order (COAL: 512 bytes
                                 * apart) or in place; either way the stride is a constant. */
                                uint32_t as = 512;
                                const int8_t *ap = COAL ? xq + (size_t)c * (C::BLOCKS * Tr<T>::QK) + 16 * lane
                                                        : plain_piece<T>(xq + (size_t)b * Tr<T>::QK, part, &as);
#pragma unroll
                                for (int i = 0; i < NR; i++)
                                        acc[i][0] += lane_dot<T>(src + i * C::BYTES, part, ap, as,
                                                                 xd + (size_t)b * (Tr<T>::QK / 32));
                        } else {
                                LaneW<T> lw[NR];
#pragma unroll
                                for (int i = 0; i < NR; i++)
                                        lw[i].load(src + i * C::BYTES, part);
#pragma unroll
                                for (int j = 0; j < NB; j++) {
                                        if ((uint32_t)j >= a.nb)
                                                break;
                                        const int8_t *aq = xq + (size_t)j * a.n_cols + (size_t)b * Tr<T>::QK;
                                        const float2 *ad = xd + (size_t)j * (a.n_cols / 32) + (size_t)b * (Tr<T>::QK / 32);
#pragma unroll
                                        for (int i = 0; i < NR; i++)
                                                acc[i][j] += lw[i].dot(aq, ad);
                                }
                        }
                }
                __syncwarp();
                if (++st == C::STAGES)
                        st = 0;
                if (++c == n_chunks) {
#pragma unroll
                        for (int i = 0; i < NR; i++)
#pragma unroll
                                for (int j = 0; j < NB; j++)
                                        acc[i][j] = warp_sum(acc[i][j]);
                        if (NB == 1) {
                                if (lane == 0) {
                                        float one[NR];
#pragma unroll
                                        for (int i = 0; i < NR; i++)
                                                one[i] = acc[i][0];
                                        mv_store<NR, EPI>(a, gw + k * tw, one, res);
                                }
                        } else {
                                mv_store_b<NR, EPI, NB>(a, gw + k * tw, acc, lane);
                        }
#pragma unroll
                        for (int i = 0; i < NR; i++)
#pragma unroll
                                for (int j = 0; j < NB; j++)
                                        acc[i][j] = 0.0f;
                        c = 0;
                        k++;
                }
        }
}

template <int T, int NR, int EPI, int NB, bool COAL = false>
__global__ void __launch_bounds__(MV_WARPS * 32, NB == 1 ? MvOcc<T>::BLOCKS : 4) mv_quant(const MvArgs a) {
        extern __shared__ __align__(16) uint8_t smem[];
        TRACE_KERNEL(CUDA_TRACE_MATVEC);
        mv_quant_run<T, NR, EPI, NB, COAL>(a, blockIdx.x, gridDim.x, smem);
}

/* Two products of different K-quant types reading one input in their own layouts, in one launch (Q and K in
 * Q4_K with V in Q6_K, as Q4_K_M has it in about half the layers): blocks below split run the first, the
 * rest the second, so that the second does not wait behind a kernel boundary. */
template <int T1, int NR1, int T2, int NR2, int EPI>
__global__ void __launch_bounds__(MV_WARPS * 32, MvOcc<T1>::BLOCKS)
        mv_quant_two(const MvArgs a1, const MvArgs a2, uint32_t split) {
        static_assert(MvOcc<T1>::BLOCKS == MvOcc<T2>::BLOCKS, "one register budget");
        extern __shared__ __align__(16) uint8_t smem[];
        TRACE_KERNEL(CUDA_TRACE_MATVEC_TWO);
        if (blockIdx.x < split)
                mv_quant_run<T1, NR1, EPI, 1, true>(a1, blockIdx.x, split, smem);
        else
                mv_quant_run<T2, NR2, EPI, 1, true>(a2, blockIdx.x - split, gridDim.x - split, smem);
}

/* Float weights: 16 bytes per lane per step straight from global memory, MVF_UNROLL steps in flight, with
 * float inputs. */
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

template <int T, int NR, int EPI>
__global__ void __launch_bounds__(MV_WARPS * 32) mv_float(const MvArgs a) {
        typedef FloatVec<T> V;
        const float *xs = a.x;
        const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
        const uint32_t gw = blockIdx.x * MV_WARPS + wid, tw = gridDim.x * MV_WARPS;
        const uint32_t n_vec = a.n_cols / V::N;
        uint4 wv[MVF_UNROLL][NR];
        bool first = true;

        grid_dep_launch();
        for (uint32_t r0 = gw; r0 < a.n_rows || first; r0 += tw) {
                const uint8_t *rowb[2];
                const uint4 *row[NR];
                float *y;
                uint32_t r = r0;
                bool have = r0 < a.n_rows;
                if (have) {
                        mv_job<NR, EPI>(a, &r, rowb, &y);
#pragma unroll
                        for (int i = 0; i < NR; i++)
                                row[i] = (const uint4 *)rowb[i];
#pragma unroll
                        for (int u = 0; u < MVF_UNROLL; u++)
#pragma unroll
                                for (int i = 0; i < NR; i++)
                                        if (lane + 32 * u < n_vec)
                                                wv[u][i] = row[i][lane + 32 * u];
                }
                if (first) {
                        /* The first row's weights are on their way; now wait for the input. */
                        grid_dep_wait();
                        first = false;
                }
                if (!have)
                        break;
                float acc[NR], res[NR];
                if (EPI == CUDA_MV_ADD && lane == 0)
                        mv_residual<NR, EPI>(a, r0, res);
#pragma unroll
                for (int i = 0; i < NR; i++)
                        acc[i] = 0.0f;
                for (uint32_t v0 = 0; v0 < n_vec; v0 += 32 * MVF_UNROLL) {
#pragma unroll
                        for (int u = 0; u < MVF_UNROLL; u++) {
                                uint32_t v = v0 + lane + 32 * u;
                                if (v < n_vec) {
                                        float xf[V::N], wf[V::N];
#pragma unroll
                                        for (int k = 0; k < V::N / 4; k++) {
                                                float4 t = ((const float4 *)xs)[(size_t)v * (V::N / 4) + k];
                                                xf[4 * k] = t.x, xf[4 * k + 1] = t.y;
                                                xf[4 * k + 2] = t.z, xf[4 * k + 3] = t.w;
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
                                acc[i] += dq_elem<T>((const uint8_t *)row[i], c) * xs[c];
#pragma unroll
                for (int i = 0; i < NR; i++)
                        acc[i] = warp_sum(acc[i]);
                if (lane == 0)
                        mv_store<NR, EPI>(a, r0, acc, res);
        }
}


/* ---- several columns at once: one decode step of several sequences ----
 * mv_quant() with NB > 1 columns, and mv_float_b() below: the same stream of weights, each block decoded once
 * and multiplied with the nb <= NB activation rows (one per sequence), so that a step of nb sequences reads
 * every weight once. Adjacent rows go in pairs (SwiGLU: the gate and the up row) whatever the type: here the
 * activation loads, nb of them per weight block, are what limits the kernel (a warp's 16-byte loads of one
 * block's activations touch 64 bytes apart, four times the L1 wavefronts of contiguous loads), and a pair
 * halves them. Column j's input is at aq + j * n_cols (ads + j * n_cols / 32, x + j * n_cols) and its output
 * at y[i] + j * ldy. */

#define MVB_MAX 16 /* columns per launch; more sequences go through several launches */
#define MMA_NB_MAX 32  /* columns per block of the tensor-core kernels but SwiGLU's (16) */
#define MMA_SEQ_MAX 64 /* columns per launch of the tensor-core kernels, in groups of a block each */

/* Float weights, several columns: 16 bytes of each row per lane per step, two steps in flight. */
template <int T, int NR, int EPI, int NB>
__global__ void __launch_bounds__(MV_WARPS * 32, 4) mv_float_b(const MvArgs a) {
        typedef FloatVec<T> V;
        const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
        const uint32_t gw = blockIdx.x * MV_WARPS + wid, tw = gridDim.x * MV_WARPS;
        const uint32_t n_vec = a.n_cols / V::N;

        /* No early launch_dependents here (they launch as this grid's blocks finish): kernels launched early
         * beside these took the F16 batched step from 413 to 355 tok/s at 4 sequences (cuda-notes v49). */
        grid_dep_wait();
        for (uint32_t r0 = gw; r0 < a.n_rows; r0 += tw) {
                const uint8_t *rowb[2];
                float *y;
                uint32_t r = r0;
                mv_job<NR, EPI>(a, &r, rowb, &y);
                float acc[NR][NB];
#pragma unroll
                for (int i = 0; i < NR; i++)
#pragma unroll
                        for (int j = 0; j < NB; j++)
                                acc[i][j] = 0.0f;
                for (uint32_t v = lane; v < n_vec; v += 32) {
                        float wf[NR][V::N];
#pragma unroll
                        for (int i = 0; i < NR; i++)
                                V::cvt(((const uint4 *)rowb[i])[v], wf[i]);
#pragma unroll
                        for (int j = 0; j < NB; j++) {
                                if ((uint32_t)j >= a.nb)
                                        break;
                                const float *xj = a.x + (size_t)j * a.n_cols + (size_t)v * V::N;
#pragma unroll
                                for (int k = 0; k < V::N; k += 4) {
                                        float4 t = *(const float4 *)(xj + k);
#pragma unroll
                                        for (int i = 0; i < NR; i++)
                                                acc[i][j] += wf[i][k] * t.x + wf[i][k + 1] * t.y +
                                                             wf[i][k + 2] * t.z + wf[i][k + 3] * t.w;
                                }
                        }
                }
                for (uint32_t cc = n_vec * V::N + lane; cc < a.n_cols; cc += 32)
#pragma unroll
                        for (int j = 0; j < NB; j++)
                                if ((uint32_t)j < a.nb)
#pragma unroll
                                        for (int i = 0; i < NR; i++)
                                                acc[i][j] += dq_elem<T>(rowb[i], cc) * a.x[(size_t)j * a.n_cols + cc];
#pragma unroll
                for (int i = 0; i < NR; i++)
#pragma unroll
                        for (int j = 0; j < NB; j++)
                                acc[i][j] = warp_sum(acc[i][j]);
                mv_store_b<NR, EPI, NB>(a, r0, acc, lane);
        }
}

/* ---- several columns through int8 tensor cores ----
 * From 3 sequences up (4 and 6 for Q4_0 and Q8_0: mma_min()), Q4_K, Q6_K, Q4_0 and Q8_0 products multiply
 * with mma.sync instead of dp4a: a step of 16 sequences costs the dp4a kernels six times a single one (their
 * activation loads and sums grow with the columns), while a tensor core takes 16 rows by 8 columns by 32
 * elements in one instruction.
 *
 * A block of MMA_WARPS warps computes one tile: 16 rows (16 gate rows and the 16 up rows of the same indices
 * for SwiGLU) by up to NB columns. Its warps split the rows into steps of 256 elements (Q8_0: 128; warp w:
 * steps w, w + MMA_WARPS, ...), stream each step's weights through shared memory with cp.async, two or three
 * steps ahead (MmaStage; straight from global memory into registers, one step ahead, measured 4-31 % slower:
 * v56), read their A fragments from there, multiply them with the columns' 8-bit activations and scale the
 * integer sums by the weights' and the activations' scales into float accumulators; the warps' tiles are
 * added up in shared memory at the end, where the epilogue runs. A block takes up to 32 columns (NB 32: 250
 * registers, one block a multiprocessor; SwiGLU 16: its two tiles of 32 columns spill, and measured 2.6 %
 * slower), a launch up to 64 in blocks of NB side by side in the grid, which run at the same time so that
 * all but the first read the tile's weights from L2: Q4_K_M at 32 sequences 17 % and at 64 27 % more tokens
 * a second than launches of 16 columns (bench/cuda-notes.md v60, v61).
 *
 * Fragments of mma.m16n8k32 and m16n8k16 with .s8 operands (PTX ISA), lane = 4 g + t: A rows g and g + 8,
 * bytes k = 4t .. 4t + 3 (k32: and 16 + 4t ..); B column g, the same k; C rows g and g + 8, columns 2t and
 * 2t + 1. A dot product does not care in which order its elements come, so each type gives lane t the
 * elements it can load in one piece, and B the activations of the same elements: Q4_K lane t takes bytes
 * 8t .. 8t + 7 of each 32-byte group of nibbles (elements 8t .. 8t + 7 of two sub-blocks of 32), Q6_K four
 * consecutive elements of each group of 16 (one scale each, so one m16n8k16 a group), Q8_0 and Q4_0 the
 * natural order.
 */
#define MMA_WARPS 8
#define MMA_ROWS 16

__device__ __forceinline__ void mma_k32(int *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%10, %10, %10, %10};"
            : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
#endif
}

__device__ __forceinline__ void mma_k16(int *c, uint32_t a0, uint32_t a1, uint32_t b0) {
#if __CUDA_ARCH__ >= 800
        asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%7, %7, %7, %7};"
            : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
            : "r"(a0), "r"(a1), "r"(b0), "r"(0));
#endif
}

/* The activations of one step for a lane: column g's quants of each n-tile (B fragments) and the scales of
 * its columns 2t and 2t + 1 (C fragments). */
template <int NT> struct MmaX {
        const int8_t *q[NT];   /* column 8 n + g, the block's first element */
        const float2 *s[NT][2]; /* columns 8 n + 2 t + c, the block's first group of 32 */
};

/* acc += fr (row) * dx (column) * c - fm (row) * sx (column), for a C fragment c: four instructions an
 * element (the order of the terms as written here took five). */
__device__ __forceinline__ void mma_scale(float *acc, const int *c, const float *fr, const float *fm,
                                          float2 s0, float2 s1) {
        acc[0] = fmaf(fr[0] * s0.x, (float)c[0], fmaf(-fm[0], s0.y, acc[0]));
        acc[1] = fmaf(fr[0] * s1.x, (float)c[1], fmaf(-fm[0], s1.y, acc[1]));
        acc[2] = fmaf(fr[1] * s0.x, (float)c[2], fmaf(-fm[1], s0.y, acc[2]));
        acc[3] = fmaf(fr[1] * s1.x, (float)c[3], fmaf(-fm[1], s1.y, acc[3]));
}

/* Without the minimums (Q6_K, Q8_0, Q4_0): two. */
__device__ __forceinline__ void mma_scale(float *acc, const int *c, const float *fr, float dx0, float dx1) {
        acc[0] = fmaf(fr[0] * dx0, (float)c[0], acc[0]);
        acc[1] = fmaf(fr[0] * dx1, (float)c[1], acc[1]);
        acc[2] = fmaf(fr[1] * dx0, (float)c[2], acc[2]);
        acc[3] = fmaf(fr[1] * dx1, (float)c[3], acc[3]);
}

template <int T> struct MmaW;

/* Each byte of x minus K, as signed bytes, for bytes below 0x80 + K: no byte carries into the next when
 * 0x80 - K is added first, and flipping the top bit takes the 0x80 back (two instructions; __vsub4() took
 * about ten on sm_90). */
template <uint32_t K> __device__ __forceinline__ uint32_t sub_bytes(uint32_t x) {
        return (x + (0x80u - K) * 0x01010101u) ^ 0x80808080u;
}

/* Q4_K: per row the 16-byte head (d, dmin, 12 bytes of 6-bit scales and mins) and 8 bytes of each of the
 * four 32-byte groups of nibbles (low nibbles: sub-block 2 j, high: 2 j + 1). */
template <> struct MmaW<GGML_TYPE_Q4_K> {
        enum { ELEMS = 256 }; /* elements of a row a step */
        uint4 h[2];
        uint2 q[2][4];

        __device__ __forceinline__ void load(const uint8_t *row, uint32_t stride, int g, int t) {
#pragma unroll
                for (int i = 0; i < 2; i++) {
                        const uint8_t *p = row + (g + 8 * i) * stride;
                        h[i] = *(const uint4 *)p;
#pragma unroll
                        for (int j = 0; j < 4; j++)
                                q[i][j] = *(const uint2 *)(p + 16 + 32 * j + 8 * t);
                }
        }

        template <int NT>
        __device__ __forceinline__ void mma(const MmaX<NT> &x, int t, float (*acc)[4]) const {
                /* The 6-bit scales and minimums of the 8 sub-blocks, a byte each: sc[i][0] sub-blocks 0-3,
                 * sc[i][1] 4-7 (k4_scale_min(), four at a time); mn[i] the same for the minimums. */
                uint32_t sc[2][2], mn[2][2];
                float d[2], dm[2];
#pragma unroll
                for (int i = 0; i < 2; i++) {
                        const uint32_t y = h[i].y, z = h[i].z, w = h[i].w;
                        sc[i][0] = y & 0x3f3f3f3fu;
                        mn[i][0] = z & 0x3f3f3f3fu;
                        sc[i][1] = (w & 0x0f0f0f0fu) | ((y >> 2) & 0x30303030u);
                        mn[i][1] = ((w >> 4) & 0x0f0f0f0fu) | ((z >> 2) & 0x30303030u);
                        const float2 dd = __half22float2(*(const __half2 *)&h[i].x);
                        d[i] = dd.x, dm[i] = dd.y;
                }
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        uint2 xb[NT][2];
                        float4 xs[NT][2];
#pragma unroll
                        for (int n = 0; n < NT; n++) {
                                xb[n][0] = *(const uint2 *)(x.q[n] + 64 * j + 8 * t);
                                xb[n][1] = *(const uint2 *)(x.q[n] + 64 * j + 32 + 8 * t);
                                xs[n][0] = *(const float4 *)(x.s[n][0] + 2 * j);
                                xs[n][1] = *(const float4 *)(x.s[n][1] + 2 * j);
                        }
#pragma unroll
                        for (int hi = 0; hi < 2; hi++) {
                                const uint32_t a[4] = {(q[0][j].x >> (4 * hi)) & 0x0f0f0f0fu,
                                                       (q[1][j].x >> (4 * hi)) & 0x0f0f0f0fu,
                                                       (q[0][j].y >> (4 * hi)) & 0x0f0f0f0fu,
                                                       (q[1][j].y >> (4 * hi)) & 0x0f0f0f0fu};
                                const int sb = 2 * j + hi;
                                float fr[2], fm[2];
#pragma unroll
                                for (int i = 0; i < 2; i++) {
                                        fr[i] = d[i] * (float)((sc[i][sb / 4] >> (8 * (sb % 4))) & 0xff);
                                        fm[i] = dm[i] * (float)((mn[i][sb / 4] >> (8 * (sb % 4))) & 0xff);
                                }
#pragma unroll
                                for (int n = 0; n < NT; n++) {
                                        int c[4];
                                        mma_k32(c, a, xb[n][hi].x, xb[n][hi].y);
                                        const float4 s0 = xs[n][0], s1 = xs[n][1];
                                        mma_scale(acc[n], c, fr, fm, hi ? make_float2(s0.z, s0.w) : make_float2(s0.x, s0.y),
                                                  hi ? make_float2(s1.z, s1.w) : make_float2(s1.x, s1.y));
                                }
                        }
                }
        }
};

/* Q6_K: per row, for each half h and group i of 16 within 32, lane t's word of elements 4t .. 4t + 3 of the
 * low-nibble bytes ql[64 h + 16 i + 4 t] and ql[... + 32] and of the 2-bit bytes qh[32 h + 16 i + 4 t], which
 * hold elements 128 h + 32 k + 16 i + 4 t .. for k = 0..3; the 16 signed scales and d. Blocks are 210 bytes:
 * words at 2-byte aligned addresses. */
template <> struct MmaW<GGML_TYPE_Q6_K> {
        enum { ELEMS = 256 };
        uint32_t ql[2][2][2][2], qh[2][2][2], sc[2][4];
        float d[2];

        __device__ __forceinline__ void load(const uint8_t *row, uint32_t stride, int g, int t) {
#pragma unroll
                for (int r = 0; r < 2; r++) {
                        const uint8_t *p = row + (g + 8 * r) * stride;
#pragma unroll
                        for (int h = 0; h < 2; h++)
#pragma unroll
                                for (int i = 0; i < 2; i++) {
                                        ql[r][h][i][0] = ld_u32_a2(p + 64 * h + 16 * i + 4 * t);
                                        ql[r][h][i][1] = ld_u32_a2(p + 64 * h + 32 + 16 * i + 4 * t);
                                        qh[r][h][i] = ld_u32_a2(p + 128 + 32 * h + 16 * i + 4 * t);
                                }
#pragma unroll
                        for (int k = 0; k < 4; k++)
                                sc[r][k] = ld_u32_a2(p + 192 + 4 * k);
                        d[r] = ld_half(p + 208);
                }
        }

        /* The signed 6-bit values of row r's word for (h, i, k), as four int8. */
        __device__ __forceinline__ uint32_t values(int r, int h, int i, int k) const {
                const uint32_t lo = (k & 2 ? ql[r][h][i][k & 1] >> 4 : ql[r][h][i][k & 1]) & 0x0f0f0f0fu;
                const uint32_t hb = (qh[r][h][i] >> (2 * k)) << 4 & 0x30303030u;
                return sub_bytes<32>(lo | hb);
        }

        template <int NT>
        __device__ __forceinline__ void mma(const MmaX<NT> &x, int t, float (*acc)[4]) const {
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                        for (int k = 0; k < 4; k++) {
                                /* group of 32 4 h + k: the activations' scales */
                                float2 s[NT][2];
#pragma unroll
                                for (int n = 0; n < NT; n++)
                                        s[n][0] = x.s[n][0][4 * h + k], s[n][1] = x.s[n][1][4 * h + k];
#pragma unroll
                                for (int i = 0; i < 2; i++) {
                                        const int grp = 8 * h + 2 * k + i;
                                        float fr[2];
#pragma unroll
                                        for (int r = 0; r < 2; r++)
                                                fr[r] = d[r] * (float)(int8_t)(sc[r][grp / 4] >> (8 * (grp % 4)));
                                        const uint32_t a0 = values(0, h, i, k), a1 = values(1, h, i, k);
#pragma unroll
                                        for (int n = 0; n < NT; n++) {
                                                const uint32_t b0 =
                                                        *(const uint32_t *)(x.q[n] + 128 * h + 32 * k + 16 * i + 4 * t);
                                                int c[4];
                                                mma_k16(c, a0, a1, b0);
                                                mma_scale(acc[n], c, fr, s[n][0].x, s[n][1].x);
                                        }
                                }
                        }
        }
};

/*
 * Q8_0 and Q4_0: per row, for each block of 32 of the step, lane t's words of elements 4t .. 4t + 3 and
 * 16 + 4t .. (Q4_0: one word, low and high nibbles) and d: one m16n8k32 a block in the natural order. A
 * step's bytes keep their row offset modulo 16 in shared memory (rows start 16-byte aligned) and blocks are
 * 34 and 18 bytes, so the words of odd blocks are 4-byte aligned and the even ones' 2 (known once the block
 * loop is unrolled: a step starts at an even block).
 */
template <int T> struct MmaW32 {
        enum { ELEMS = T == GGML_TYPE_Q8_0 ? 128 : 256, NBLK = ELEMS / 32, WORDS = T == GGML_TYPE_Q8_0 ? 2 : 1 };
        uint32_t q[2][NBLK][WORDS];
        uint32_t d[2][NBLK / 2]; /* two halves a word */

        __device__ __forceinline__ void load(const uint8_t *row, uint32_t stride, int g, int t) {
#pragma unroll
                for (int r = 0; r < 2; r++) {
                        const uint8_t *p = row + (g + 8 * r) * stride;
#pragma unroll
                        for (int i = 0; i < NBLK; i++) {
                                const uint8_t *blk = p + i * Tr<T>::BYTES;
#pragma unroll
                                for (int k = 0; k < WORDS; k++)
                                        q[r][i][k] = i % 2 ? ld_u32_a4(blk + 2 + 16 * k + 4 * t)
                                                           : ld_u32_a2(blk + 2 + 16 * k + 4 * t);
                        }
#pragma unroll
                        for (int i = 0; i < NBLK; i += 2)
                                d[r][i / 2] = (uint32_t)*(const uint16_t *)(p + i * Tr<T>::BYTES) |
                                              (uint32_t)*(const uint16_t *)(p + (i + 1) * Tr<T>::BYTES) << 16;
                }
        }

        __device__ __forceinline__ void frag(int i, uint32_t *a) const {
                if (T == GGML_TYPE_Q8_0) {
                        a[0] = q[0][i][0], a[1] = q[1][i][0], a[2] = q[0][i][WORDS - 1], a[3] = q[1][i][WORDS - 1];
                } else {
#pragma unroll
                        for (int r = 0; r < 2; r++) {
                                a[r] = sub_bytes<8>(q[r][i][0] & 0x0f0f0f0fu);
                                a[2 + r] = sub_bytes<8>((q[r][i][0] >> 4) & 0x0f0f0f0fu);
                        }
                }
        }

        template <int NT>
        __device__ __forceinline__ void mma(const MmaX<NT> &x, int t, float (*acc)[4]) const {
#pragma unroll
                for (int i = 0; i < NBLK; i++) {
                        uint32_t a[4];
                        frag(i, a);
                        float fr[2];
#pragma unroll
                        for (int r = 0; r < 2; r++)
                                fr[r] = __half2float(__ushort_as_half((unsigned short)(d[r][i / 2] >> (16 * (i % 2)))));
#pragma unroll
                        for (int n = 0; n < NT; n++) {
                                const uint32_t b0 = *(const uint32_t *)(x.q[n] + 32 * i + 4 * t);
                                const uint32_t b1 = *(const uint32_t *)(x.q[n] + 32 * i + 16 + 4 * t);
                                int c[4];
                                mma_k32(c, a, b0, b1);
                                mma_scale(acc[n], c, fr, x.s[n][0][i].x, x.s[n][1][i].x);
                        }
                }
        }
};
template <> struct MmaW<GGML_TYPE_Q8_0> : MmaW32<GGML_TYPE_Q8_0> {};
template <> struct MmaW<GGML_TYPE_Q4_0> : MmaW32<GGML_TYPE_Q4_0> {};

/* A warp's shared-memory slots for its steps of MT * 16 rows: SU 16-byte units a row (a step's bytes from the
 * unit they start in), STAGES steps (three where four would not leave room for two blocks a multiprocessor). */
template <int T, int MT> struct MmaStage {
        enum : uint32_t {
                SB = MmaW<T>::ELEMS / Tr<T>::QK * Tr<T>::BYTES, /* a step's bytes of one row */
                SU = (SB % 16 == 0 ? SB / 16 : (SB + 15) / 16 + 1),
                SLOT = 16 * SU,
                SLOTS = MT * MMA_ROWS * SLOT,
                STAGES = MT == 2 || SLOT > 160 ? 3 : 4,
                WARP = STAGES * SLOTS,
                BYTES = MMA_WARPS * WARP,
        };
};

/* SwiGLU: each warp takes both the gate and the up rows, sharing the activations' loads between them (255
 * registers, one block a multiprocessor); gate rows in warps 0-3 and up rows in 4-7 at 128 registers (two
 * blocks) measured 3-6 % slower at 8 and 16 sequences (bench/cuda-notes.md v53). */
template <int T, int EPI, int NB>
__global__ void __launch_bounds__(MMA_WARPS * 32, EPI == CUDA_MV_SWIGLU || NB > 16 ? 1 : 2) mv_mma(const MvArgs a) {
        constexpr int MT = EPI == CUDA_MV_SWIGLU ? 2 : 1, NT = NB / 8;
        __shared__ float part[MMA_WARPS][MT * MMA_ROWS][NB + 1];
        const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, g = lane / 4, t = lane % 4;
        constexpr uint32_t UE = MmaW<T>::ELEMS;
        typedef MmaStage<T, MT> ST;
        extern __shared__ __align__(16) uint8_t smem[];
        const uint32_t n_blocks = a.n_cols / UE;
        const uint8_t *row[2];
        size_t stride;
        float *y;
        uint32_t r0;

        grid_dep_launch();
        /* The tile: MMA_ROWS rows from row tile * MMA_ROWS of the concatenated matrices (SwiGLU: of the gate
         * and the up matrix), as mv_job() resolves a unit of one row (a gate and an up row), by the block's
         * columns j0 .. j0 + nb - 1. The blocks of a tile are neighbours in the grid, so that they run at the
         * same time and all but the first find the tile's weights in L2. */
        const uint32_t n_groups = (a.nb + NB - 1) / NB, tile = blockIdx.x / n_groups;
        const uint32_t j0 = (blockIdx.x - tile * n_groups) * NB, nb = min((uint32_t)NB, a.nb - j0);
        r0 = tile * MMA_ROWS;
        mv_job<MT, EPI>(a, &r0, row, &y, &stride);
        y += (size_t)j0 * a.ldy;

        /* Columns past nb read column nb - 1 and are not stored. */
        MmaX<NT> x;
#pragma unroll
        for (int n = 0; n < NT; n++) {
                const uint32_t cq = j0 + min((uint32_t)(8 * n + g), nb - 1);
                x.q[n] = a.aq + (size_t)cq * a.n_cols;
#pragma unroll
                for (int c = 0; c < 2; c++)
                        x.s[n][c] = a.ads + (size_t)(j0 + min((uint32_t)(8 * n + 2 * t + c), nb - 1)) * (a.n_cols / 32);
        }
        float acc[MT][NT][4];
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
                for (int n = 0; n < NT; n++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                                acc[m][n][e] = 0.0f;

        /* The warp's steps (w, w + MMA_WARPS, ...) stream through its STAGES slots of shared memory with
         * 16-byte cp.async, STAGES - 1 ahead: each slot holds the step's bytes of the tile's rows, from the
         * 16-byte unit they start in (Q6_K and Q8_0 steps start inside one). Weights do not depend on the
         * kernel before, so the first ones are requested before waiting for it. */
        uint8_t *stage = smem + (size_t)wid * ST::WARP;
        const uint32_t n_my = wid < n_blocks ? (n_blocks - wid + MMA_WARPS - 1) / MMA_WARPS : 0;
        /* Lane l copies units l, l + 32, ... of a step: unit k is unit k % SU of row k / SU, the same offsets
         * in every step (32-bit: a tile's rows span well under 4 GB), so only the step's start moves. */
        constexpr uint32_t UNITS = MT * MMA_ROWS * ST::SU, PER_LANE = (UNITS + 31) / 32;
        const uint32_t s_stage = (uint32_t)__cvta_generic_to_shared(stage), st32 = (uint32_t)stride;
        uint32_t is_k = 0;
        auto issue = [&]() {
                if (is_k < n_my) {
                        const size_t o = (size_t)(wid + is_k * MMA_WARPS) * ST::SB;
                        const uint32_t nu = (uint32_t)((o % 16 + ST::SB + 15) / 16);
                        const uint8_t *src[2] = {row[0] + o / 16 * 16, row[MT - 1] + o / 16 * 16};
                        const uint32_t dst = s_stage + (is_k % ST::STAGES) * ST::SLOTS;
#pragma unroll
                        for (uint32_t j = 0; j < PER_LANE; j++) {
                                const uint32_t k = lane + 32 * j, r = k / ST::SU, u = k - r * ST::SU;
                                if ((UNITS % 32 == 0 || k < UNITS) && (ST::SB % 16 == 0 || u < nu))
                                        cp_async16_s(dst + r * ST::SLOT + 16 * u,
                                                     src[r / MMA_ROWS] + (r % MMA_ROWS) * st32 + 16 * u);
                        }
                }
                is_k++;
                cp_async_commit();
        };
#pragma unroll
        for (int k = 0; k < ST::STAGES - 1; k++)
                issue();
        grid_dep_wait();
        for (uint32_t k = 0; k < n_my; k++) {
                const uint32_t b = wid + k * MMA_WARPS;
                issue();
                cp_async_wait<ST::STAGES - 1>();
                __syncwarp();
                const uint8_t *src = stage + (k % ST::STAGES) * ST::SLOTS + ((size_t)b * ST::SB) % 16;
                MmaW<T> w[MT];
#pragma unroll
                for (int m = 0; m < MT; m++)
                        w[m].load(src + m * MMA_ROWS * ST::SLOT, ST::SLOT, g, t);
                __syncwarp();
                MmaX<NT> xb;
#pragma unroll
                for (int n = 0; n < NT; n++) {
                        xb.q[n] = x.q[n] + (size_t)b * UE;
                        xb.s[n][0] = x.s[n][0] + (size_t)b * (UE / 32);
                        xb.s[n][1] = x.s[n][1] + (size_t)b * (UE / 32);
                }
#pragma unroll
                for (int m = 0; m < MT; m++)
                        w[m].mma(xb, t, acc[m]);
        }

#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
                for (int n = 0; n < NT; n++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                                part[wid][MMA_ROWS * m + g + 8 * (e / 2)][8 * n + 2 * t + e % 2] = acc[m][n][e];
        __syncthreads();
        for (uint32_t k = threadIdx.x; k < MMA_ROWS * NB; k += MMA_WARPS * 32) {
                const uint32_t rr = k % MMA_ROWS, j = k / MMA_ROWS;
                if (j >= nb)
                        break;
                float v[MT];
#pragma unroll
                for (int m = 0; m < MT; m++) {
                        v[m] = 0.0f;
#pragma unroll
                        for (int ww = 0; ww < MMA_WARPS; ww++)
                                v[m] += part[ww][MMA_ROWS * m + rr][j];
                }
                float *yj = y + (size_t)j * a.ldy + r0 + rr;
                if (EPI == CUDA_MV_SWIGLU)
                        *yj = silu(v[0]) * v[MT - 1];
                else if (EPI == CUDA_MV_STORE)
                        *yj = v[0];
                else
                        *yj += v[0];
        }
}

/* ---- host side ---- */

/* The current device's multiprocessors and shared memory per multiprocessor, read once a device. */
struct MvDevice {
        int sms, smem;
};
static MvDevice mv_device(void) {
        static MvDevice d[64];
        int dev = 0;

        if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64)
                return {132, 0};
        if (!d[dev].sms) {
                if (cudaDeviceGetAttribute(&d[dev].smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess)
                        d[dev].smem = 0;
                if (cudaDeviceGetAttribute(&d[dev].sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
                        d[dev].sms = 132;
        }
        return d[dev];
}

static int sm_count(void) {
        return mv_device().sms;
}

/* Blocks per multiprocessor at most: MV_GRID_PER_SM, or QUANTD_CUDA_MV_GRID for timing studies. */
static uint32_t mv_grid_per_sm(void) {
        static const uint32_t v = (uint32_t)cuda_knob("QUANTD_CUDA_MV_GRID", 1, 1023, MV_GRID_PER_SM);
        return v;
}

/* From how many rounds a warp (units per warp) grids are balanced (mv_grid()): 4, or QUANTD_CUDA_BALANCE
 * (0: never), for timing studies. */
static uint32_t mv_balance_rounds(void) {
        static const uint32_t v = (uint32_t)cuda_knob("QUANTD_CUDA_BALANCE", 0, 1 << 20, 4);
        return v;
}

/* Blocks for n_rows units (rows or row pairs), a warp each, at most per_sm blocks a multiprocessor. With four
 * or more units a warp, as few warps as take the same number of rounds, so that none has one unit more than
 * the others: Llama-3-8B's gate/up, 14336 units on an H100's 4224 warps, 4 rounds on 3584 warps instead of
 * 3 or 4, measured 1 % faster; at 2 and 3 rounds (Llama-2-7B's Q/K/V, gate/up) fewer warps cost more than
 * the balance gains (bench/cuda-notes.md v42). */
static dim3 mv_grid(uint32_t n_rows, uint32_t per_sm) {
        const uint32_t most = (uint32_t)sm_count() * per_sm * MV_WARPS, min_rounds = mv_balance_rounds();
        uint32_t warps = n_rows < most ? n_rows : most;

        if (n_rows > most && min_rounds) {
                const uint32_t rounds = (n_rows + most - 1) / most;
                if (rounds >= min_rounds)
                        warps = (n_rows + rounds - 1) / rounds;
        }
        return dim3((warps + MV_WARPS - 1) / MV_WARPS);
}

/* Whether a quantized product asks for only the shared memory its blocks need: yes unless
 * QUANTD_CUDA_CARVEOUT=0 (timing studies). */
static bool mv_carveout_enabled(void) {
        static const bool on = cuda_knob("QUANTD_CUDA_CARVEOUT", 0, 1, 1);
        return on;
}

/* For a grid smaller than the persistent one (per_sm blocks a multiprocessor), the shared memory its blocks
 * need on each multiprocessor, in percent of what one has, plus 10 points: the driver rounds a preference to
 * the nearest size the hardware offers (on sm_90 0, 8, 16, 32, 64, 100, 132, 164, 196, 228 KB, never more
 * than 36 KB apart), which the margin keeps above the need. The rest is L1. Full grids keep the driver's
 * choice: asking the same of them measured 0.6 % slower for Q8_0 (bench/cuda-notes.md v34). */
static int mv_carveout(uint32_t grid, size_t smem, uint32_t per_sm_max) {
        const MvDevice d = mv_device();

        if (!mv_carveout_enabled() || d.smem <= 0)
                return -1;
        const uint64_t sms = (uint64_t)d.sms, max = (uint64_t)d.smem, per_sm = (grid + sms - 1) / sms;
        if (per_sm >= per_sm_max)
                return -1;
        const uint64_t need = per_sm * (smem + 1024); /* the driver reserves 1 KB a block */
        const uint64_t pct = (need * 100 + max - 1) / max + 10;
        return pct >= 100 ? 100 : (int)pct;
}

template <typename K>
static int mv_launch(K kernel, CudaStream s, const MvArgs &a, size_t smem, uint32_t per_sm) {
        const dim3 grid = mv_grid(a.n_rows, per_sm);

        if (smem > 48 * 1024)
                CU_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        /* A grid smaller than the device's leaves shared memory unused: give it to L1 (the output and down
         * projections of 7-8B models in K-quant row pairs: 512 blocks, about 4 a multiprocessor). Float
         * kernels (smem 0) keep their function attribute (prefer_l1()). */
        CU_TRY(launch_pdl_carveout(kernel, grid, dim3(MV_WARPS * 32), smem, s,
                                   smem ? mv_carveout(grid.x, smem, per_sm) : -1, a));
        return 0;
}

/* Shared memory of a quantized kernel: the warps' stages, plus 16 bytes that ld_words_a2() may read past the
 * last block. */
#define MV_SMEM(T, NR) ((size_t)MV_WARPS * Chunk<T, NR>::STAGES * NR * Chunk<T, NR>::BYTES + 16)

template <int T, int NR, int EPI> static int mv_launch_quant(CudaStream s, const MvArgs &a) {
        size_t smem = MV_SMEM(T, NR);

        if (!a.aq)
                return -EINVAL;
        if constexpr (q8_family(T) != CUDA_Q8_PLAIN) {
                if (a.coal)
                        return mv_launch(mv_quant<T, NR, EPI, 1, true>, s, a, smem, mv_grid_per_sm());
        }
        return mv_launch(mv_quant<T, NR, EPI, 1>, s, a, smem, mv_grid_per_sm());
}

/* The float kernels use no shared memory and read their activations through L1: they ask for the largest L1
 * (no shared-memory carveout). Left to the driver, with the decode attention's 71 KB a block between them,
 * F16 tg128 on the H100 ran at 165 tok/s; with this, 188 (bench/cuda-notes.md v27). */
template <typename K> static int prefer_l1(K kernel, bool *done) {
        if (!*done) {
                CU_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 0));
                *done = true;
        }
        return 0;
}

template <int T, int NR, int EPI> static int mv_launch_float(CudaStream s, const MvArgs &a) {
        static bool l1; /* per kernel: this function is instantiated once per kernel */

        if (!a.x)
                return -EINVAL;
        if (prefer_l1(mv_float<T, NR, EPI>, &l1) < 0)
                return -EIO;
        return mv_launch(mv_float<T, NR, EPI>, s, a, 0, mv_grid_per_sm());
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

/* Whether rows of a 256-element block type go in pairs: yes, unless QUANTD_CUDA_PAIRS says 0 (never), 2 (not
 * for Q6_K, whose pairs need 40 KB of shared memory a block) or 3 (Q8_0's too), for timing studies. */
static bool mv_pairs_for(uint32_t type) {
        static const int mode = (int)cuda_knob("QUANTD_CUDA_PAIRS", 0, 3, 1);
        const GgmlTypeInfo *ti = ggml_type_info(type);

        if (type == GGML_TYPE_Q8_0)
                return mode == 3;
        if (!ti || ti->block_size != 256)
                return false;
        return mode == 1 || mode == 3 || (mode == 2 && type != GGML_TYPE_Q6_K);
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

/* The matrices of one launch (cuda_matvec(), cuda_matvec_batch()) into a: one type and n_cols, rows
 * CUDA_ROW_ALIGN-aligned, SwiGLU's two of as many rows; the outputs y[i] (SwiGLU: y[0]). */
static int mv_args(const CudaMatrix *w, unsigned n_w, const CudaMvInput *in, float *const *y, CudaMvEpilogue epi,
                   MvArgs *a) {
        *a = MvArgs{};
        if (n_w < 1 || n_w > 3 || (epi == CUDA_MV_SWIGLU && n_w != 2) || !in)
                return -EINVAL;
        for (unsigned i = 0; i < n_w; i++) {
                if (w[i].type != w[0].type || w[i].n_cols != w[0].n_cols ||
                    w[i].row_stride % CUDA_ROW_ALIGN != 0 || (uintptr_t)w[i].data % CUDA_ROW_ALIGN != 0)
                        return -EINVAL;
                a->w[i] = (const uint8_t *)w[i].data;
                a->stride[i] = w[i].row_stride;
                a->rows[i] = w[i].n_rows;
                a->y[i] = y[epi == CUDA_MV_SWIGLU ? 0 : i];
                a->n_rows += w[i].n_rows;
        }
        a->n_cols = w[0].n_cols;
        if (epi == CUDA_MV_SWIGLU) {
                if (w[1].n_rows != w[0].n_rows)
                        return -EINVAL;
                a->n_rows = w[0].n_rows;
        }
        return 0;
}

/* The 8-bit input of a single-sequence product of type: in the type's layout if q has it (coal), else plain;
 * -EINVAL if q has neither. */
static int mv_input(const CudaQ8 *q, uint32_t type, MvArgs *a) {
        const int fam = q8_family((int)type);

        if (fam != CUDA_Q8_PLAIN && (q->layout == fam || (q->qs2 && q->layout2 == fam))) {
                a->aq = q->layout == fam ? q->qs : q->qs2;
                a->coal = 1;
        } else if (q->layout == CUDA_Q8_PLAIN || (q->qs2 && q->layout2 == CUDA_Q8_PLAIN)) {
                a->aq = q->layout == CUDA_Q8_PLAIN ? q->qs : q->qs2;
        } else {
                return -EINVAL;
        }
        a->ads = (const float2 *)q->ds;
        return 0;
}

static bool one_type(const CudaMatrix *w, unsigned n_w) {
        for (unsigned i = 1; i < n_w; i++)
                if (w[i].type != w[0].type)
                        return false;
        return true;
}

/* Q4_K or Q5_K matrices (in row pairs) with Q6_K ones (single rows: their pairs' stages would not leave the
 * first type its 8 blocks a multiprocessor) in one launch of mv_quant_two(), both inputs in their layouts;
 * -EOPNOTSUPP for anything else (the caller launches each type on its own). */
static int mv_two(CudaStream s, const CudaMatrix *w, unsigned n_w, const CudaMvInput *in, float *const *y) {
        CudaMatrix g[2][3];
        float *gy[2][3];
        unsigned k[2] = {0, 0};
        MvArgs a[2];
        int r;

        if (!in || !in->xq)
                return -EOPNOTSUPP;
        for (unsigned i = 0; i < n_w; i++) {
                const unsigned j = w[i].type == GGML_TYPE_Q6_K;
                if (!j && w[i].type != GGML_TYPE_Q4_K && w[i].type != GGML_TYPE_Q5_K)
                        return -EOPNOTSUPP;
                if ((!j && w[i].n_rows % 2 != 0) || (k[j] && w[i].type != g[j][0].type))
                        return -EOPNOTSUPP;
                g[j][k[j]] = w[i];
                gy[j][k[j]++] = y[i];
        }
        if (!k[0] || !k[1])
                return -EOPNOTSUPP;
        uint64_t bytes[2] = {0, 0};
        for (unsigned j = 0; j < 2; j++) {
                if ((r = mv_args(g[j], k[j], in, gy[j], CUDA_MV_STORE, &a[j])) < 0)
                        return r;
                if ((r = mv_input(in->xq, g[j][0].type, &a[j])) < 0)
                        return r;
                if (!a[j].coal)
                        return -EOPNOTSUPP;
                for (unsigned i = 0; i < k[j]; i++)
                        bytes[j] += (uint64_t)g[j][i].n_rows * g[j][i].row_stride;
        }
        for (unsigned i = 0; i < 3; i++)
                a[0].rows[i] /= 2;
        a[0].n_rows /= 2;
        /* The persistent grid, split in proportion to the bytes each part streams, Q6_K's single rows weighed
         * 1.4 times (QUANTD_CUDA_TWO_WEIGHT, percent): they take longer a byte. Llama-2-7B Q4_K_M tg128 on the
         * H100 at 100/120/140/160/180/200: 549.7/555.2/558.5/556.5/557.5/556.8 tok/s (cuda-notes v47). */
        const uint32_t per_sm = mv_grid_per_sm(), total = (uint32_t)sm_count() * per_sm;
        static const long weight = cuda_knob("QUANTD_CUDA_TWO_WEIGHT", 50, 400, 140);
        uint32_t split = (uint32_t)((double)total * bytes[0] / (bytes[0] + bytes[1] * (weight / 100.0)) + 0.5);
        split = split < 1 ? 1 : split > total - 1 ? total - 1 : split;
        void (*kern)(const MvArgs, const MvArgs, uint32_t) =
                g[0][0].type == GGML_TYPE_Q4_K ? mv_quant_two<GGML_TYPE_Q4_K, 2, GGML_TYPE_Q6_K, 1, CUDA_MV_STORE>
                                               : mv_quant_two<GGML_TYPE_Q5_K, 2, GGML_TYPE_Q6_K, 1, CUDA_MV_STORE>;
        const size_t s0 = g[0][0].type == GGML_TYPE_Q4_K ? MV_SMEM(GGML_TYPE_Q4_K, 2) : MV_SMEM(GGML_TYPE_Q5_K, 2);
        const size_t smem = s0 > MV_SMEM(GGML_TYPE_Q6_K, 1) ? s0 : MV_SMEM(GGML_TYPE_Q6_K, 1);
        if (smem > 48 * 1024)
                CU_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        CU_TRY(launch_pdl(kern, dim3(total), dim3(MV_WARPS * 32), smem, s, a[0], a[1], split));
        return 0;
}

/* Matrices of more than one type: one launch for the pairs mv_two() takes, else one per type. */
static int mv_mixed(CudaStream s, const CudaMatrix *w, unsigned n_w, const CudaMvInput *in, float *const *y,
                    CudaMvEpilogue epi, uint32_t n_seq, uint32_t ldy) {
        static const bool two = cuda_knob("QUANTD_CUDA_MV_TWO", 0, 1, 1);
        bool done[3] = {false, false, false};
        int r;

        if (epi == CUDA_MV_SWIGLU || n_w > 3)
                return -EINVAL;
        if (two && n_seq == 1 && epi == CUDA_MV_STORE && (r = mv_two(s, w, n_w, in, y)) != -EOPNOTSUPP)
                return r;
        for (unsigned i = 0; i < n_w; i++) {
                CudaMatrix g[3];
                float *gy[3];
                unsigned k = 0;
                if (done[i])
                        continue;
                for (unsigned j = i; j < n_w; j++)
                        if (!done[j] && w[j].type == w[i].type) {
                                g[k] = w[j];
                                gy[k++] = y[j];
                                done[j] = true;
                        }
                if ((r = cuda_matvec_batch(s, g, k, in, gy, epi, n_seq, ldy)) < 0)
                        return r;
        }
        return 0;
}

extern "C" int cuda_matvec(CudaStream s, const CudaMatrix *w, unsigned n_w, const CudaMvInput *in,
                           float *const *y, CudaMvEpilogue epi) {
        MvArgs a;
        int r;

        if (w && n_w > 1 && !one_type(w, n_w))
                return mv_mixed(s, w, n_w, in, y, epi, 1, 0);
        if ((r = mv_args(w, n_w, in, y, epi, &a)) < 0)
                return r;
        if (!type_is_float(w[0].type) && a.n_cols % 32 != 0)
                return -EINVAL;
        a.x = in->x;
        if (in->xq && !type_is_float(w[0].type) && (r = mv_input(in->xq, w[0].type, &a)) < 0)
                return r;
        /* Rows of 256-element block types go in adjacent pairs when every matrix has an even number of them
         * (up to 1.3x faster on Q4_K; it made Q4_0 and Q5_0 slower, with half the stages per warp). */
        const GgmlTypeInfo *ti = ggml_type_info(w[0].type);
        bool pair = ti && epi != CUDA_MV_SWIGLU && mv_pairs_for(w[0].type);
        for (unsigned i = 0; i < n_w; i++)
                pair = pair && w[i].n_rows % 2 == 0;
        if (pair) {
                for (unsigned i = 0; i < n_w; i++)
                        a.rows[i] /= 2;
                a.n_rows /= 2;
        }
        switch (epi) {
        case CUDA_MV_STORE:
                return pair ? mv_dispatch<2, CUDA_MV_STORE>(s, w[0].type, a)
                            : mv_dispatch<1, CUDA_MV_STORE>(s, w[0].type, a);
        case CUDA_MV_ADD:
                return pair ? mv_dispatch<2, CUDA_MV_ADD>(s, w[0].type, a)
                            : mv_dispatch<1, CUDA_MV_ADD>(s, w[0].type, a);
        case CUDA_MV_SWIGLU:
                return mv_dispatch<2, CUDA_MV_SWIGLU>(s, w[0].type, a);
        case _CUDA_MV_EPILOGUE_MAX:
                break;
        }
        return -EINVAL;
}


/* The batched kernels' grid: as many blocks as fit on the device at once (their register budget is larger),
 * at most what the rows need. */
template <typename K> static int mv_launch_b(K kernel, CudaStream s, const MvArgs &a, size_t smem, int *per_sm) {
        if (smem > 48 * 1024)
                CU_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        if (!*per_sm) {
                int n = 0;
                CU_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, MV_WARPS * 32, smem));
                *per_sm = n > 0 ? (n < MV_GRID_PER_SM ? n : MV_GRID_PER_SM) : 1;
        }
        CU_TRY(launch_pdl(kernel, mv_grid(a.n_rows, (uint32_t)*per_sm), dim3(MV_WARPS * 32), smem, s, a));
        return 0;
}

template <int NR, int EPI, int NB> static int mv_dispatch_b(CudaStream s, uint32_t type, const MvArgs &a) {
#define MVB_Q(T)                                                                                                \
        case T: {                                                                                               \
                static int occ; /* blocks per multiprocessor, found on first use */                            \
                if (!a.aq)                                                                                      \
                        return -EINVAL;                                                                         \
                return mv_launch_b(mv_quant<T, NR, EPI, NB>, s, a, MV_SMEM(T, NR), &occ);                \
        }
#define MVB_F(T)                                                                                                \
        case T: {                                                                                               \
                static int occ;                                                                                 \
                if (!a.x)                                                                                       \
                        return -EINVAL;                                                                         \
                static bool l1;                                                                                 \
                if (prefer_l1(mv_float_b<T, NR, EPI, NB>, &l1) < 0)                                             \
                        return -EIO;                                                                            \
                return mv_launch_b(mv_float_b<T, NR, EPI, NB>, s, a, 0, &occ);                                 \
        }
        switch (type) {
                MVB_Q(GGML_TYPE_Q4_0)
                MVB_Q(GGML_TYPE_Q4_1)
                MVB_Q(GGML_TYPE_Q5_0)
                MVB_Q(GGML_TYPE_Q5_1)
                MVB_Q(GGML_TYPE_Q8_0)
                MVB_Q(GGML_TYPE_Q2_K)
                MVB_Q(GGML_TYPE_Q3_K)
                MVB_Q(GGML_TYPE_Q4_K)
                MVB_Q(GGML_TYPE_Q5_K)
                MVB_Q(GGML_TYPE_Q6_K)
                MVB_F(GGML_TYPE_F32)
                MVB_F(GGML_TYPE_F16)
                MVB_F(GGML_TYPE_BF16)
        default:
                return -EOPNOTSUPP;
        }
#undef MVB_Q
#undef MVB_F
}

template <int NR, int EPI> static int mv_dispatch_nb(CudaStream s, uint32_t type, const MvArgs &a) {
        if (a.nb <= 2)
                return mv_dispatch_b<NR, EPI, 2>(s, type, a);
        if (a.nb <= 4)
                return mv_dispatch_b<NR, EPI, 4>(s, type, a);
        if (a.nb <= 8)
                return mv_dispatch_b<NR, EPI, 8>(s, type, a);
        return mv_dispatch_b<NR, EPI, MVB_MAX>(s, type, a);
}

/* ---- batched products through the tensor cores (mv_mma()) ---- */

/* From how many sequences a batched product of type takes mv_mma(), where the dp4a kernels measured slower
 * (H100, Llama-2-7B, bench/cuda-notes.md v53-v56, dp4a against mma tok/s): Q4_K and Q6_K from 3 (Q4_K_M at 2:
 * 815 against 743, at 3: 963 against 1,103), Q4_0 from 4 (at 2: 907 / 808, at 4: 1,297 / 1,500), Q8_0 from 6
 * (at 4: 1,021 / 1,001, at 6: 1,188 / 1,384: its 2-byte aligned blocks take many small loads); 0 (never) for
 * the other types. QUANTD_CUDA_MMA_MIN sets one bound for all four (0: never), for timing studies. */
static uint32_t mma_min(uint32_t type) {
        static const long v = cuda_knob("QUANTD_CUDA_MMA_MIN", 0, MVB_MAX, -1);
        const uint32_t def = type == GGML_TYPE_Q4_K || type == GGML_TYPE_Q6_K ? 3
                             : type == GGML_TYPE_Q4_0                         ? 4
                             : type == GGML_TYPE_Q8_0                         ? 6
                                                                              : 0;

        return def && v >= 0 ? (uint32_t)v : def;
}

/* Whether mv_mma() computes these matrices for nb columns: Q4_K, Q6_K, Q8_0 or Q4_0, rows in whole tiles, rows
 * of whole steps of 256. */
static bool mma_fits(const CudaMatrix *w, unsigned n_w, uint32_t nb) {
        const uint32_t min = mma_min(w[0].type);

        if (!min || nb < min || w[0].n_cols % 256)
                return false;
        for (unsigned i = 0; i < n_w; i++)
                if (w[i].n_rows % MMA_ROWS)
                        return false;
        return true;
}

template <int T, int EPI, int NB> static int mma_launch_t(CudaStream s, const MvArgs &a) {
        const dim3 grid((EPI == CUDA_MV_SWIGLU ? a.rows[0] : a.n_rows) / MMA_ROWS * ((a.nb + NB - 1) / NB)),
                block(MMA_WARPS * 32);
        const size_t smem = MmaStage<T, EPI == CUDA_MV_SWIGLU ? 2 : 1>::BYTES;
        static bool big; /* per kernel: this function is instantiated once per kernel */

        if (!big) {
                CU_TRY(cudaFuncSetAttribute(mv_mma<T, EPI, NB>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
                big = true;
        }
        CU_TRY(launch_pdl(mv_mma<T, EPI, NB>, grid, block, smem, s, a));
        return 0;
}

template <int EPI, int NB> static int mma_launch_nb(CudaStream s, uint32_t type, const MvArgs &a) {
        switch (type) {
        case GGML_TYPE_Q4_K:
                return mma_launch_t<GGML_TYPE_Q4_K, EPI, NB>(s, a);
        case GGML_TYPE_Q6_K:
                return mma_launch_t<GGML_TYPE_Q6_K, EPI, NB>(s, a);
        case GGML_TYPE_Q8_0:
                return mma_launch_t<GGML_TYPE_Q8_0, EPI, NB>(s, a);
        default:
                return mma_launch_t<GGML_TYPE_Q4_0, EPI, NB>(s, a);
        }
}

template <int EPI> static int mma_launch(CudaStream s, uint32_t type, const MvArgs &a) {
        constexpr int NB_MAX = EPI == CUDA_MV_SWIGLU ? 16 : MMA_NB_MAX;

        if (!a.aq || a.nb > MMA_SEQ_MAX)
                return -EINVAL;
        /* Blocks of 32 columns where the last is more than half used, else of 16 (48 sequences as three blocks
         * of 16 rather than 32 and 16 in a block of 32). */
        const bool wide = a.nb > 16 && (a.nb % 32 == 0 || a.nb % 32 > 16);
        return a.nb <= 8 ? mma_launch_nb<EPI, 8>(s, type, a)
               : !wide   ? mma_launch_nb<EPI, 16>(s, type, a)
                         : mma_launch_nb<EPI, NB_MAX>(s, type, a);
}

extern "C" int cuda_matvec_batch(CudaStream s, const CudaMatrix *w, unsigned n_w, const CudaMvInput *in,
                                 float *const *y, CudaMvEpilogue epi, uint32_t n_seq, uint32_t ldy) {
        MvArgs a;
        int r;

        if (n_seq == 1)
                return cuda_matvec(s, w, n_w, in, y, epi);
        if (n_seq == 0)
                return -EINVAL;
        if (w && n_w > 1 && !one_type(w, n_w))
                return mv_mixed(s, w, n_w, in, y, epi, n_seq, ldy);
        if ((r = mv_args(w, n_w, in, y, epi, &a)) < 0)
                return r;
        /* The activation rows must stay 16-byte aligned for the kernels' vector loads; they are read plain. */
        if (type_is_float(w[0].type) ? a.n_cols % 4 != 0 : a.n_cols % 32 != 0)
                return -EINVAL;
        if (!type_is_float(w[0].type) && in->xq && in->xq->layout != CUDA_Q8_PLAIN)
                return -EINVAL;
        a.ldy = ldy;
        /* Pairs of adjacent rows when every matrix has an even number of them. */
        bool pair = !type_is_float(w[0].type);
        for (unsigned i = 0; i < n_w; i++)
                pair = pair && w[i].n_rows % 2 == 0;
        /* Columns a launch: MMA_SEQ_MAX through the tensor cores, MVB_MAX through the other kernels. */
        const uint32_t per = mma_fits(w, n_w, n_seq < MMA_SEQ_MAX ? n_seq : MMA_SEQ_MAX) ? MMA_SEQ_MAX : MVB_MAX;
        for (uint32_t j0 = 0; j0 < n_seq; j0 += per) {
                a.nb = n_seq - j0 < per ? n_seq - j0 : per;
                for (unsigned i = 0; i < n_w; i++)
                        a.y[i] = y[epi == CUDA_MV_SWIGLU ? 0 : i] + (size_t)j0 * ldy;
                a.x = in->x ? in->x + (size_t)j0 * a.n_cols : NULL;
                a.aq = in->xq ? in->xq->qs + (size_t)j0 * a.n_cols : NULL;
                a.ads = in->xq ? (const float2 *)in->xq->ds + (size_t)j0 * (a.n_cols / 32) : NULL;
                if (epi < _CUDA_MV_EPILOGUE_MAX && mma_fits(w, n_w, a.nb)) {
                        r = epi == CUDA_MV_SWIGLU ? mma_launch<CUDA_MV_SWIGLU>(s, w[0].type, a)
                            : epi == CUDA_MV_ADD  ? mma_launch<CUDA_MV_ADD>(s, w[0].type, a)
                                                  : mma_launch<CUDA_MV_STORE>(s, w[0].type, a);
                        if (r < 0)
                                return r;
                        continue;
                }
                MvArgs ap = a;
                for (unsigned i = 0; i < 3; i++)
                        ap.rows[i] /= 2;
                ap.n_rows /= 2;
                r = -EINVAL;
                switch (epi) {
                case CUDA_MV_STORE:
                        r = pair ? mv_dispatch_nb<2, CUDA_MV_STORE>(s, w[0].type, ap)
                                 : mv_dispatch_nb<1, CUDA_MV_STORE>(s, w[0].type, a);
                        break;
                case CUDA_MV_ADD:
                        r = pair ? mv_dispatch_nb<2, CUDA_MV_ADD>(s, w[0].type, ap)
                                 : mv_dispatch_nb<1, CUDA_MV_ADD>(s, w[0].type, a);
                        break;
                case CUDA_MV_SWIGLU:
                        r = mv_dispatch_nb<2, CUDA_MV_SWIGLU>(s, w[0].type, a);
                        break;
                case _CUDA_MV_EPILOGUE_MAX:
                        break;
                }
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- activations to 8 bits: four elements a thread (one 16-byte load), eight threads a group of 32 ---- */

__global__ void quantize_q8_kernel(const float *x, uint32_t n, uint32_t n_total, const CudaQ8 q) {
        const uint32_t i = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
        TRACE_KERNEL(CUDA_TRACE_QUANTIZE);

        grid_dep_launch();
        grid_dep_wait();
        if (i >= n_total)
                return; /* whole groups of eight threads (n_total % 32 == 0), so the shuffles below stay within
                         * threads that are all here */
        const float4 x4 = *(const float4 *)(x + i);
        const float v[4] = {x4.x, x4.y, x4.z, x4.w};
        const float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
        const uint32_t row = i / n;
        quantize_group<4>(v, amax, q, (size_t)row * n, i - row * n, n, __activemask(), true);
}

extern "C" int cuda_quantize_q8(CudaStream s, const float *x, uint32_t n, uint32_t n_rows, const CudaQ8 *ret) {
        uint32_t total = n * n_rows;

        if (n % 32 != 0 || n == 0 || (uintptr_t)x % 16 != 0 || !q8_layouts_ok(ret, n, n_rows))
                return -EINVAL;
        CU_TRY(launch_pdl(quantize_q8_kernel, dim3((total / 4 + 255) / 256), dim3(256), 0, s, x, n, total, *ret));
        return 0;
}

extern "C" uint32_t cuda_q8_pos(uint32_t e, CudaQ8Layout l) {
        return q8_pos(e, l);
}

extern "C" size_t cuda_q8_bytes(uint32_t n, CudaQ8Layout l) {
        return q8_bytes(n, l);
}

extern "C" CudaQ8Layout cuda_q8_layout_for(uint32_t type) {
        return (CudaQ8Layout)q8_family((int)type);
}

#ifdef QUANTD_CUDA_TRACE
extern "C" int cuda_trace_take_matvec(CudaTraceRec *out, size_t max, size_t *n) {
        return cuda_trace_take_here(out, max, n);
}
#endif
