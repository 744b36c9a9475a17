/* SPDX-License-Identifier: MIT */
/* What the engine was built with and what it finds at run time. */

#include "config.h"
#include "engine.h"

#if HAVE_CUDA
#include "engine-cuda.h"
#endif

int engine_cuda_devices(void) {
#if HAVE_CUDA
        return engine_cuda_device_count();
#else
        return 0;
#endif
}
