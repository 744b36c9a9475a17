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

int engine_gpu_info(uint32_t device, EngineGpuInfo *ret) {
        if (!ret)
                return -EINVAL;
#if HAVE_CUDA
        EngineGpuInfo g = {};
        int driver, r;

        if (device >= (uint32_t)MAX(engine_cuda_device_count(), 0))
                return -ENODEV;
        r = cuda_device_describe((int)device, g.name, sizeof(g.name), &driver);
        if (r < 0)
                return r;
        r = engine_cuda_mem_info((int)device, &g.free_bytes, &g.total_bytes);
        if (r < 0)
                return r;
        *ret = g;
        return 0;
#else
        return -ENODEV;
#endif
}
