// SPDX-License-Identifier: MIT
#pragma once

/*
 * Shared by the CUDA backend's .cu files only: error plumbing, the sizes of GGUF's blocks (the Block* structs
 * of engine.h; kernels address fields by byte offset, since rows of 2-byte aligned blocks such as Q6_K's are
 * not aligned for the structs' natural access), and small device helpers.
 */

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* engine.h is C; its _Static_assert lines are C11 spelling of C++'s static_assert. */
#define _Static_assert static_assert
extern "C" {
#include "engine.h"
#include "engine-cuda.h"
}
#undef _Static_assert

/* Maps a CUDA error to our errno set: out of device memory is ENOSPC, the rest EIO. */
static inline int cuda_errno(cudaError_t e) {
        switch (e) {
        case cudaSuccess:
                return 0;
        case cudaErrorMemoryAllocation:
                return -ENOSPC;
        case cudaErrorNoDevice:
        case cudaErrorInvalidDevice:
                return -ENODEV;
        default:
                return -EIO;
        }
}

/* Returns from the calling function with the errno of a failed CUDA call. */
#define CU_TRY(call)                                                                                            \
        do {                                                                                                    \
                cudaError_t e_ = (call);                                                                        \
                if (e_ != cudaSuccess)                                                                          \
                        return cuda_errno(e_);                                                                  \
        } while (0)

/* After a launch: a bad configuration shows up here, a fault at the next synchronisation. */
#define CU_CHECK_LAUNCH() CU_TRY(cudaGetLastError())

/* ---- block layouts: bytes per block, elements per block, and field offsets ---- */


enum {
        Q4_0_BYTES = 18, /* d, qs[16] */
        Q4_1_BYTES = 20, /* d, m, qs[16] */
        Q5_0_BYTES = 22, /* d, qh[4], qs[16] */
        Q5_1_BYTES = 24, /* d, m, qh[4], qs[16] */
        Q8_0_BYTES = 34, /* d, qs[32] */
        Q2_K_BYTES = 84, /* scales[16], qs[64], d, dmin */
        Q3_K_BYTES = 110, /* hmask[32], qs[64], scales[12], d */
        Q4_K_BYTES = 144, /* d, dmin, scales[12], qs[128] */
        Q5_K_BYTES = 176, /* d, dmin, scales[12], qh[32], qs[128] */
        Q6_K_BYTES = 210, /* ql[128], qh[64], scales[16], d */
};
static_assert(sizeof(BlockQ4_0) == Q4_0_BYTES && sizeof(BlockQ4_1) == Q4_1_BYTES, "q4 layout");
static_assert(sizeof(BlockQ5_0) == Q5_0_BYTES && sizeof(BlockQ5_1) == Q5_1_BYTES, "q5 layout");
static_assert(sizeof(BlockQ8_0) == Q8_0_BYTES && sizeof(BlockQ2_K) == Q2_K_BYTES, "q8/q2_K layout");
static_assert(sizeof(BlockQ3_K) == Q3_K_BYTES && sizeof(BlockQ4_K) == Q4_K_BYTES, "q3_K/q4_K layout");
static_assert(sizeof(BlockQ5_K) == Q5_K_BYTES && sizeof(BlockQ6_K) == Q6_K_BYTES, "q5_K/q6_K layout");
static_assert(offsetof(BlockQ6_K, d) == 208 && offsetof(BlockQ3_K, d) == 108, "K-quant d offsets");
static_assert(offsetof(BlockQ2_K, d) == 80 && offsetof(BlockQ5_K, qs) == 48, "K-quant field offsets");

/* ---- device helpers ---- */

__device__ __forceinline__ float ld_half(const uint8_t *p) {
        return __half2float(*(const __half *)p);
}

/* A 32-bit little-endian word at a 2-byte aligned address. */
__device__ __forceinline__ uint32_t ld_u32_a2(const uint8_t *p) {
        const uint16_t *h = (const uint16_t *)p;
        return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}

__device__ __forceinline__ uint32_t ld_u32_a4(const uint8_t *p) {
        return *(const uint32_t *)p;
}

__device__ __forceinline__ float warp_sum(float v) {
        for (int o = 16; o > 0; o >>= 1)
                v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
}

__device__ __forceinline__ float warp_max(float v) {
        for (int o = 16; o > 0; o >>= 1)
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
}

/* Spreads the low 4 bits of x to bit 0 of each of the 4 bytes. */
__device__ __forceinline__ uint32_t spread4(uint32_t x) {
        return ((x & 0xfu) * 0x00204081u) & 0x01010101u;
}

/* Unpacks the 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block's 12 scale bytes. */
__device__ __forceinline__ void k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
        if (j < 4) {
                *sc = s[j] & 63;
                *m = s[j + 4] & 63;
        } else {
                *sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
                *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
}

/* The signed 6-bit scale i (0..15) of a Q3_K block's 12 scale bytes. */
__device__ __forceinline__ int k3_scale(const uint8_t *s, int i) {
        int lo = i < 8 ? s[i] & 0xf : s[i - 8] >> 4;
        int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
        return (lo | (hi << 4)) - 32;
}

/* Rows of a weight matrix start at multiples of this many bytes, so that 16-byte loads can stream them. */
#define CUDA_ROW_ALIGN 16

/* A knob for timing studies: the integer in the environment variable name when it is one in [lo, hi], else
 * def. Callers keep what it returns in a static, so that each is read once. */
static inline long cuda_knob(const char *name, long lo, long hi, long def) {
        const char *e = getenv(name);
        char *end;
        long v;

        if (!e || !*e)
                return def;
        v = strtol(e, &end, 10);
        return *end == '\0' && v >= lo && v <= hi ? v : def;
}

/* Whether launches use programmatic dependent launch: yes unless QUANTD_CUDA_PDL=0. */
static inline bool cuda_pdl_enabled(void) {
        static const bool on = cuda_knob("QUANTD_CUDA_PDL", 0, 1, 1);
        return on;
}

/* Launches a kernel with programmatic dependent launch allowed, so that it may start (and stream its
 * weights) while the kernel before it finishes; the kernel waits with griddepcontrol before reading what
 * that one wrote. carveout: the shared memory to ask for, in percent of the multiprocessor's (0-100; L1
 * gets the rest), or -1 to leave it to the function's attributes. */
template <typename... KArgs, typename... Args>
static inline cudaError_t launch_pdl_carveout(void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                              cudaStream_t s, int carveout, Args... args) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute attr[2];
        unsigned n = 0;

        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = s;
        if (cuda_pdl_enabled()) {
                attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                attr[n++].val.programmaticStreamSerializationAllowed = 1;
        }
        if (carveout >= 0) {
                attr[n].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
                attr[n++].val.sharedMemCarveout = (unsigned)carveout;
        }
        cfg.attrs = attr;
        cfg.numAttrs = n;
        return cudaLaunchKernelEx(&cfg, k, args...);
}

template <typename... KArgs, typename... Args>
static inline cudaError_t launch_pdl(void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                                     Args... args) {
        return launch_pdl_carveout(k, grid, block, smem, s, -1, args...);
}

/*
 * Timing builds only (nvcc -DQUANTD_CUDA_TRACE, e.g. CUDA_EXTRA_FLAGS for bench/build-cuda.sh): the decode
 * kernels log, from thread 0 of each block, the global timer as the block starts (CUDA_TRACE_START), as its
 * grid_dep_wait() returns (CUDA_TRACE_WAITED; 0 where it did not wait) and as it ends (CUDA_TRACE_END), with
 * the launch's %gridid (the same in every replay of a graph) and a tag for the kernel's kind, so that a decode
 * graph's timeline can be read back without nsys (bench-cuda --trace). One atomic a block, whose result is
 * needed only as it ends; each .cu file has its own log (no relocatable device code), read by
 * cuda_trace_take(). Elsewhere TRACE_KERNEL() is nothing.
 */
#ifdef QUANTD_CUDA_TRACE
#define CUDA_TRACE_MAX (1u << 20)
static __device__ CudaTraceRec cuda_trace_log[CUDA_TRACE_MAX];
static __device__ unsigned cuda_trace_n;
static __shared__ unsigned long long cuda_trace_waited;

__device__ __forceinline__ unsigned long long cuda_trace_now(void) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        return t;
}

/* A block's three records go to slots taken as it starts and are stored as it ends, so that no thread waits
 * for an atomic between the two. */
struct CudaTraceScope {
        uint32_t tag, slot;
        unsigned long long t0;
        __device__ explicit CudaTraceScope(uint32_t k) : tag(k), slot(0), t0(0) {
                if (threadIdx.x | threadIdx.y | threadIdx.z)
                        return;
                t0 = cuda_trace_now();
                cuda_trace_waited = 0;
                slot = atomicAdd(&cuda_trace_n, 3u);
        }
        __device__ ~CudaTraceScope() {
                if (threadIdx.x | threadIdx.y | threadIdx.z)
                        return;
                const unsigned long long t1 = cuda_trace_now();
                unsigned long long g;
                asm volatile("mov.u64 %0, %%gridid;" : "=l"(g));
                const uint32_t b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
                if (slot + 3 > CUDA_TRACE_MAX)
                        return;
                cuda_trace_log[slot] = CudaTraceRec{g, t0, b, tag | CUDA_TRACE_START};
                cuda_trace_log[slot + 1] = CudaTraceRec{g, cuda_trace_waited, b, CUDA_TRACE_WAITED};
                cuda_trace_log[slot + 2] = CudaTraceRec{g, t1, b, tag | CUDA_TRACE_END};
        }
};
#define TRACE_KERNEL(kind) CudaTraceScope trace_scope_(kind)

/* This file's log into out (at most max records) and its count; emptied after. */
static inline int cuda_trace_take_here(CudaTraceRec *out, size_t max, size_t *n) {
        unsigned k = 0, zero = 0;

        if (cudaMemcpyFromSymbol(&k, cuda_trace_n, sizeof(k)) != cudaSuccess)
                return -EIO;
        k = k < CUDA_TRACE_MAX ? k : CUDA_TRACE_MAX;
        *n = k < max ? k : max;
        if (*n && cudaMemcpyFromSymbol(out, cuda_trace_log, *n * sizeof(*out)) != cudaSuccess)
                return -EIO;
        return cudaMemcpyToSymbol(cuda_trace_n, &zero, sizeof(zero)) == cudaSuccess ? 0 : -EIO;
}
#else
#define TRACE_KERNEL(kind) \
        do {               \
        } while (0)
#endif

/* Waits for the grid this one depends on (see launch_pdl()); a no-op when launched without the attribute. */
__device__ __forceinline__ void grid_dep_wait(void) {
#if __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#ifdef QUANTD_CUDA_TRACE
        if (!(threadIdx.x | threadIdx.y | threadIdx.z))
                cuda_trace_waited = cuda_trace_now();
#endif
}

/* 16 bytes from global to shared memory (at s, as __cvta_generic_to_shared() gives it) without passing through
 * registers; in flight until waited for. */
__device__ __forceinline__ void cp_async16_s(uint32_t s, const void *gmem) {
        /* L2::128B: L2 fetches whole 128-byte lines (the weight streams cover them anyway); 0.3-1.3 % faster
         * decode than no hint, 256B mixed (bench/cuda-notes.md v37). */
        asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
        cp_async16_s((uint32_t)__cvta_generic_to_shared(smem), gmem);
}

/* 4 bytes the same way (through L1: cp.async.cg takes 16 bytes only). */
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem) {
        uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit(void) {
        asm volatile("cp.async.commit_group;" ::: "memory");
}

/* Waits until at most N of this thread's committed groups are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait(void) {
        asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/* Lets the next grid start launching. */
__device__ __forceinline__ void grid_dep_launch(void) {
#if __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
