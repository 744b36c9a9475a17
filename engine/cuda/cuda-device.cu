// SPDX-License-Identifier: MIT
/*
 * CUDA device discovery for the engine: how many devices there are and their free memory, the facts the
 * scheduler's VRAM budget starts from. The CUDA backend's kernels live beside this file.
 */

#include <cuda_runtime.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

extern "C" {
#include "engine-cuda.h"
}

extern "C" int cuda_device_count(void) {
        int n = 0;

        if (cudaGetDeviceCount(&n) != cudaSuccess) {
                (void)cudaGetLastError();
                return 0;
        }
        return n;
}

extern "C" int engine_cuda_mem_info(int device, uint64_t *ret_free, uint64_t *ret_total) {
        size_t f = 0, t = 0;

        if (cudaSetDevice(device) != cudaSuccess)
                return -ENODEV;
        if (cudaMemGetInfo(&f, &t) != cudaSuccess)
                return -EIO;
        *ret_free = f;
        *ret_total = t;
        return 0;
}

extern "C" int cuda_device_describe(int device, char *name, size_t name_size, int *ret_driver) {
        cudaDeviceProp p;
        int drv = 0;

        if (cudaGetDeviceProperties(&p, device) != cudaSuccess || cudaDriverGetVersion(&drv) != cudaSuccess)
                return -ENODEV;
        snprintf(name, name_size, "%s", p.name);
        *ret_driver = drv;
        return 0;
}

extern "C" int cuda_copy_bandwidth(int device, size_t size, unsigned reps, double *ret_bytes_per_s) {
        void *a = NULL, *b = NULL;
        cudaEvent_t e0 = NULL, e1 = NULL;
        float best[64];
        int r = -EIO;

        if (reps == 0 || reps > 64)
                return -EINVAL;
        if (cudaSetDevice(device) != cudaSuccess)
                return -ENODEV;
        if (cudaMalloc(&a, size) != cudaSuccess || cudaMalloc(&b, size) != cudaSuccess) {
                r = -ENOSPC;
                goto out;
        }
        if (cudaMemset(a, 1, size) != cudaSuccess || cudaEventCreate(&e0) != cudaSuccess ||
            cudaEventCreate(&e1) != cudaSuccess)
                goto out;
        (void)cudaMemcpy(b, a, size, cudaMemcpyDeviceToDevice); /* warm-up */
        for (unsigned i = 0; i < reps; i++) {
                if (cudaEventRecord(e0) != cudaSuccess ||
                    cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, size, cudaMemcpyDeviceToDevice) != cudaSuccess ||
                    cudaEventRecord(e1) != cudaSuccess || cudaEventSynchronize(e1) != cudaSuccess ||
                    cudaEventElapsedTime(&best[i], e0, e1) != cudaSuccess)
                        goto out;
        }
        /* Median of reps. */
        for (unsigned i = 1; i < reps; i++)
                for (unsigned j = i; j > 0 && best[j - 1] > best[j]; j--) {
                        float t = best[j];
                        best[j] = best[j - 1];
                        best[j - 1] = t;
                }
        *ret_bytes_per_s = 2.0 * (double)size / (best[reps / 2] * 1e-3);
        r = 0;
out:
        if (e0)
                (void)cudaEventDestroy(e0);
        if (e1)
                (void)cudaEventDestroy(e1);
        (void)cudaFree(a);
        (void)cudaFree(b);
        return r;
}
