/* SPDX-License-Identifier: MIT */
/*
 * Choosing a kernel set at run time, and the public entry points that run one kernel on its own (for the
 * kernel tests and the benchmark).
 */

#include <cpuid.h>
#include <pthread.h>

#include "kernels.h"

/* F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports() does not know "f16c". */
static bool cpu_has_f16c(void) {
        unsigned a, b, c, d;

        if (!__get_cpuid(1, &a, &b, &c, &d))
                return false;
        return (c & bit_F16C) != 0;
}

static CpuKernels merged[_ENGINE_CPU_ISA_MAX];
static pthread_once_t merged_once = PTHREAD_ONCE_INIT;

static bool isa_supported(EngineCpuIsa isa) {
        switch (isa) {
        case ENGINE_CPU_SCALAR:
                return true;
        case ENGINE_CPU_AVX2:
                return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
        case ENGINE_CPU_AVX512:
                return isa_supported(ENGINE_CPU_AVX2) && __builtin_cpu_supports("avx512f") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                       __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
        case _ENGINE_CPU_ISA_MAX:
        case _ENGINE_CPU_ISA_INVALID:
                break;
        }
        return false;
}

/* Each set falls back to the next simpler one for what it lacks: AVX-512 to AVX2 to scalar. */
static void merge(CpuKernels *dst, const CpuKernels *src, const CpuKernels *fallback) {
        *dst = *src;
        for (size_t i = 0; i < ELEMENTSOF(dst->gemm); i++)
                if (!dst->gemm[i])
                        dst->gemm[i] = fallback->gemm[i];
        for (size_t i = 0; i < ELEMENTSOF(dst->quantize); i++)
                if (!dst->quantize[i])
                        dst->quantize[i] = fallback->quantize[i];
        if (!dst->attend)
                dst->attend = fallback->attend;
        if (!dst->swiglu)
                dst->swiglu = fallback->swiglu;
}

static void merge_all(void) {
        merged[ENGINE_CPU_SCALAR] = cpu_kernels_scalar;
        merge(&merged[ENGINE_CPU_AVX2], &cpu_kernels_avx2, &merged[ENGINE_CPU_SCALAR]);
        merge(&merged[ENGINE_CPU_AVX512], &cpu_kernels_avx512, &merged[ENGINE_CPU_AVX2]);
}

const CpuKernels *cpu_kernels(EngineCpuIsa isa) {
        if ((int)isa < 0 || isa >= _ENGINE_CPU_ISA_MAX || !isa_supported(isa))
                return NULL;
        pthread_once(&merged_once, merge_all);
        return &merged[isa];
}

EngineCpuIsa cpu_isa_best(void) {
        for (int i = _ENGINE_CPU_ISA_MAX - 1; i > 0; i--)
                if (isa_supported((EngineCpuIsa)i))
                        return (EngineCpuIsa)i;
        return ENGINE_CPU_SCALAR;
}

EngineCpuIsa engine_cpu_isa_best(void) {
        return cpu_isa_best();
}

const char *engine_cpu_isa_name(EngineCpuIsa isa) {
        static const char *const names[_ENGINE_CPU_ISA_MAX] = {
                [ENGINE_CPU_SCALAR] = "scalar",
                [ENGINE_CPU_AVX2] = "avx2",
                [ENGINE_CPU_AVX512] = "avx512",
        };

        if ((int)isa < 0 || isa >= _ENGINE_CPU_ISA_MAX)
                return "unknown";
        return names[isa];
}

EngineCpuIsa engine_cpu_isa_from_name(const char *name) {
        for (int i = 0; i < _ENGINE_CPU_ISA_MAX; i++)
                if (name && streq(name, engine_cpu_isa_name((EngineCpuIsa)i)))
                        return (EngineCpuIsa)i;
        return _ENGINE_CPU_ISA_INVALID;
}

int engine_cpu_matmul(EngineCpuIsa isa, uint32_t type, const void *w, uint64_t n, uint64_t n_rows, const float *x,
                      uint64_t n_tok, float *y) {
        const CpuKernels *k;
        const GgmlTypeInfo *ti = ggml_type_info(type);
        uint64_t row_size;
        int f;

        if ((int)isa < 0 || isa >= _ENGINE_CPU_ISA_MAX || !ti || !w || !x || !y || n == 0 ||
            n_rows > UINT32_MAX || n_tok > UINT32_MAX)
                return -EINVAL;
        k = cpu_kernels(isa);
        if (!k)
                return -EOPNOTSUPP;
        f = act_format_for(type);
        if (f < 0)
                return f;
        if (ggml_row_size(type, n, &row_size) < 0 || (f == ACT_Q8 && n % 32) || (f == ACT_Q8_K && n % QK_K))
                return -EINVAL;

        size_t a_stride = act_row_size((ActFormat)f, n);
        _cleanup_free_ uint8_t *a = NULL;
        if (f == ACT_F32) {
                /* Float activations are used in place. */
                k->gemm[type](n, w, row_size, (uint32_t)n_rows, (const uint8_t *)x, n * sizeof(float),
                              (uint32_t)n_tok, y, n_rows);
                return 0;
        }
        a = aligned_alloc(64, a_stride * n_tok);
        if (!a)
                return -ENOMEM;
        for (uint64_t t = 0; t < n_tok; t++)
                k->quantize[f](x + t * n, a + t * a_stride, n);
        k->gemm[type](n, w, row_size, (uint32_t)n_rows, a, a_stride, (uint32_t)n_tok, y, n_rows);
        return 0;
}

int engine_cpu_swiglu(EngineCpuIsa isa, float *g, const float *u, uint64_t n) {
        const CpuKernels *k;

        if ((int)isa < 0 || isa >= _ENGINE_CPU_ISA_MAX || !g || !u || n > UINT32_MAX)
                return -EINVAL;
        k = cpu_kernels(isa);
        if (!k)
                return -EOPNOTSUPP;
        k->swiglu(g, u, (uint32_t)n);
        return 0;
}

int engine_cpu_attend(EngineCpuIsa isa, const float *q, uint32_t n_q, const void *k, const void *v,
                      size_t kv_stride, uint32_t kv_type, uint32_t n_pos, uint32_t head_dim, float scale,
                      float *out) {
        const CpuKernels *kern;
        _cleanup_free_ float *scores = NULL;

        if ((int)isa < 0 || isa >= _ENGINE_CPU_ISA_MAX || !q || !k || !v || !out || n_q == 0 || n_pos == 0 ||
            head_dim == 0 || (kv_type != GGML_TYPE_F16 && kv_type != GGML_TYPE_F32))
                return -EINVAL;
        kern = cpu_kernels(isa);
        if (!kern)
                return -EOPNOTSUPP;
        scores = malloc((size_t)n_q * n_pos * sizeof(float));
        if (!scores)
                return -ENOMEM;
        kern->attend(q, n_q, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores, out);
        return 0;
}
