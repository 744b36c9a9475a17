/* SPDX-License-Identifier: MIT */
#pragma once

/* Internal to engine/: the C face of the CUDA code, compiled only when meson's cuda option is on. */

#include <stdint.h>

/* Number of usable CUDA devices; 0 when there is no driver or device. */
int engine_cuda_device_count(void);

/* Free and total device memory in bytes, from cudaMemGetInfo(). */
int engine_cuda_mem_info(int device, uint64_t *ret_free, uint64_t *ret_total);
