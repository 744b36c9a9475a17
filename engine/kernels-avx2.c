/* SPDX-License-Identifier: MIT */
/*
 * AVX2 + FMA + F16C kernels. Every function carries its target attribute, so the file builds into a binary
 * that runs anywhere and is only called after kernels.c checked the CPU.
 */

#include <immintrin.h>

#include "kernels.h"

const CpuKernels cpu_kernels_avx2 = {
        .isa = ENGINE_CPU_AVX2,
};
