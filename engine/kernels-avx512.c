/* SPDX-License-Identifier: MIT */
/*
 * AVX-512 (F, BW, VL, DQ, VNNI) kernels, built with per-function target attributes like kernels-avx2.c.
 */

#include <immintrin.h>

#include "kernels.h"

const CpuKernels cpu_kernels_avx512 = {
        .isa = ENGINE_CPU_AVX512,
};
