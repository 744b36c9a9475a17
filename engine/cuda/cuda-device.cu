// SPDX-License-Identifier: MIT
/*
 * CUDA device discovery for the engine: how many devices there are and their free memory, the facts the
 * scheduler's VRAM budget starts from. The CUDA backend's kernels live beside this file.
 */

#include <cuda_runtime.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "engine-cuda.h"
}

extern "C" int engine_cuda_device_count(void) {
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
