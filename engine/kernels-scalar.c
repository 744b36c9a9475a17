/* SPDX-License-Identifier: MIT */
/*
 * The scalar reference kernels: matrix multiplication for every weight type, activation quantization and
 * attention, in plain C. The SIMD sets are tested against these; they also serve any CPU without AVX2.
 *
 * A quantized dot product is computed the way the SIMD kernels compute it: integer sums of products inside a
 * block, scaled by the weight's and the activation's scales, with the weight minimum (types that have one)
 * applied through the activation block sums.
 */

#include <math.h>

#include "kernels.h"

/* ---- activation formats ---- */

int act_format_for(uint32_t weight_type) {
        switch ((GgmlType)weight_type) {
        case GGML_TYPE_F32:
        case GGML_TYPE_F16:
        case GGML_TYPE_BF16:
                return ACT_F32;
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0:
                return ACT_Q8;
        case GGML_TYPE_Q2_K:
        case GGML_TYPE_Q3_K:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
        case GGML_TYPE_Q6_K:
                return ACT_Q8_K;
        case GGML_TYPE_Q8_1:
        case GGML_TYPE_Q8_K:
        case GGML_TYPE_IQ2_XXS:
        case GGML_TYPE_IQ2_XS:
        case GGML_TYPE_IQ3_XXS:
        case GGML_TYPE_IQ1_S:
        case GGML_TYPE_IQ4_NL:
        case GGML_TYPE_IQ3_S:
        case GGML_TYPE_IQ2_S:
        case GGML_TYPE_IQ4_XS:
        case GGML_TYPE_I8:
        case GGML_TYPE_I16:
        case GGML_TYPE_I32:
        case GGML_TYPE_I64:
        case GGML_TYPE_F64:
        case GGML_TYPE_IQ1_M:
        case GGML_TYPE_TQ1_0:
        case GGML_TYPE_TQ2_0:
        case GGML_TYPE_MXFP4:
        case _GGML_TYPE_MAX:
        case _GGML_TYPE_INVALID:
                break;
        }
        return -EOPNOTSUPP;
}

size_t act_row_size(ActFormat f, uint64_t n) {
        size_t size = 0;

        switch (f) {
        case ACT_F32:
                size = n * sizeof(float);
                break;
        case ACT_Q8:
                size = n + 2 * (n / 32) * sizeof(float);
                break;
        case ACT_Q8_K:
                size = n / QK_K * sizeof(BlockQ8_K);
                break;
        case _ACT_FORMAT_MAX:
        case _ACT_FORMAT_INVALID:
                break;
        }
        return ALIGN_TO(size, 64);
}

void quantize_act_q8_scalar(const float *x, uint8_t *dst, uint64_t n) {
        int8_t *qs = (int8_t *)dst;
        float *d = (float *)(dst + n), *s = d + n / 32;

        for (uint64_t b = 0; b < n / 32; b++) {
                float amax = 0;
                for (int j = 0; j < 32; j++)
                        amax = fmaxf(amax, fabsf(x[b * 32 + j]));
                float db = amax / 127.0f, id = db != 0 ? 1.0f / db : 0;
                int sum = 0;
                for (int j = 0; j < 32; j++) {
                        int q = (int)lrintf(x[b * 32 + j] * id);
                        qs[b * 32 + j] = (int8_t)q;
                        sum += q;
                }
                d[b] = db;
                s[b] = db * (float)sum;
        }
}

void quantize_act_q8_k_scalar(const float *x, uint8_t *dst, uint64_t n) {
        BlockQ8_K *y = (BlockQ8_K *)dst;

        for (uint64_t b = 0; b < n / QK_K; b++, x += QK_K) {
                float amax = 0;
                for (int j = 0; j < QK_K; j++)
                        amax = fmaxf(amax, fabsf(x[j]));
                float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0;
                y[b].d = d;
                for (int g = 0; g < QK_K / 16; g++) {
                        int sum = 0;
                        for (int j = 0; j < 16; j++) {
                                int q = (int)lrintf(x[g * 16 + j] * id);
                                y[b].qs[g * 16 + j] = (int8_t)q;
                                sum += q;
                        }
                        y[b].bsums[g] = (int16_t)sum;
                }
        }
}

/* ---- float weights ---- */

static float dot_f32(uint64_t n, const float *w, const float *x) {
        float sum = 0;

        for (uint64_t i = 0; i < n; i++)
                sum += w[i] * x[i];
        return sum;
}

static float dot_f16(uint64_t n, const GgmlHalf *w, const float *x) {
        float sum = 0;

        for (uint64_t i = 0; i < n; i++)
                sum += engine_fp16_to_f32(w[i]) * x[i];
        return sum;
}

static float dot_bf16(uint64_t n, const uint16_t *w, const float *x) {
        float sum = 0;

        for (uint64_t i = 0; i < n; i++)
                sum += engine_bf16_to_f32(w[i]) * x[i];
        return sum;
}

/* ---- 32-element block weights with ACT_Q8 activations ---- */

static int isum32(const int8_t *q, const int8_t *x) {
        int sum = 0;

        for (int j = 0; j < 32; j++)
                sum += q[j] * x[j];
        return sum;
}

/* Unpacks 32 nibbles: element j from the low nibble of qs[j], element j + 16 from the high one. */
static void unpack_nibbles(const uint8_t *qs, int8_t *q) {
        for (int j = 0; j < 16; j++) {
                q[j] = (int8_t)(qs[j] & 0xf);
                q[j + 16] = (int8_t)(qs[j] >> 4);
        }
}

static void unpack_q5(const uint8_t *qs, const uint8_t *qh, int8_t *q) {
        uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;

        unpack_nibbles(qs, q);
        for (int j = 0; j < 32; j++)
                q[j] = (int8_t)(q[j] | ((h >> j) & 1) << 4);
}

static float dot_q4_0(uint64_t n, const BlockQ4_0 *w, const uint8_t *a) {
        const int8_t *x = (const int8_t *)a;
        const float *d = act_q8_d(a, n), *s = act_q8_s(a, n);
        float sum = 0;

        for (uint64_t b = 0; b < n / 32; b++) {
                int8_t q[32];
                unpack_nibbles(w[b].qs, q);
                /* Σ (q - 8) x = Σ q x - 8 Σ x, with Σ x from the activation's block sum. */
                float dw = engine_fp16_to_f32(w[b].d);
                sum += dw * (d[b] * (float)isum32(q, x + b * 32) - 8.0f * s[b]);
        }
        return sum;
}

static float dot_q4_1(uint64_t n, const BlockQ4_1 *w, const uint8_t *a) {
        const int8_t *x = (const int8_t *)a;
        const float *d = act_q8_d(a, n), *s = act_q8_s(a, n);
        float sum = 0;

        for (uint64_t b = 0; b < n / 32; b++) {
                int8_t q[32];
                unpack_nibbles(w[b].qs, q);
                sum += engine_fp16_to_f32(w[b].d) * d[b] * (float)isum32(q, x + b * 32) +
                       engine_fp16_to_f32(w[b].m) * s[b];
        }
        return sum;
}

static float dot_q5_0(uint64_t n, const BlockQ5_0 *w, const uint8_t *a) {
        const int8_t *x = (const int8_t *)a;
        const float *d = act_q8_d(a, n), *s = act_q8_s(a, n);
        float sum = 0;

        for (uint64_t b = 0; b < n / 32; b++) {
                int8_t q[32];
                unpack_q5(w[b].qs, w[b].qh, q);
                float dw = engine_fp16_to_f32(w[b].d);
                sum += dw * (d[b] * (float)isum32(q, x + b * 32) - 16.0f * s[b]);
        }
        return sum;
}

static float dot_q5_1(uint64_t n, const BlockQ5_1 *w, const uint8_t *a) {
        const int8_t *x = (const int8_t *)a;
        const float *d = act_q8_d(a, n), *s = act_q8_s(a, n);
        float sum = 0;

        for (uint64_t b = 0; b < n / 32; b++) {
                int8_t q[32];
                unpack_q5(w[b].qs, w[b].qh, q);
                sum += engine_fp16_to_f32(w[b].d) * d[b] * (float)isum32(q, x + b * 32) +
                       engine_fp16_to_f32(w[b].m) * s[b];
        }
        return sum;
}

static float dot_q8_0(uint64_t n, const BlockQ8_0 *w, const uint8_t *a) {
        const int8_t *x = (const int8_t *)a;
        const float *d = act_q8_d(a, n);
        float sum = 0;

        for (uint64_t b = 0; b < n / 32; b++)
                sum += engine_fp16_to_f32(w[b].d) * d[b] * (float)isum32(w[b].qs, x + b * 32);
        return sum;
}

/* ---- K-quant weights with Q8_K activations ---- */

/*
 * A K-quant super-block unpacked to integers: value e = d × scale[e / group] × q[e] - dmin × min[e / group],
 * with groups of 16 or 32 elements.
 */
typedef struct KBlock {
        int8_t q[QK_K];
        int scale[16], min[16];
        int group; /* 16 or 32 */
        float d, dmin;
} KBlock;

static int q3_k_scale(const uint8_t *scales, int s) {
        int lo = s < 8 ? scales[s] & 0xf : scales[s - 8] >> 4;
        int hi = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
        return (lo | hi << 4) - 32;
}

static void k_scale_min(const uint8_t *q, int j, int *ret_sc, int *ret_m) {
        if (j < 4) {
                *ret_sc = q[j] & 63;
                *ret_m = q[j + 4] & 63;
        } else {
                *ret_sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
                *ret_m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
}

static void unpack_k(uint32_t type, const void *block, KBlock *k) {
        *k = (KBlock){};
        switch (type) {
        case GGML_TYPE_Q2_K: {
                const BlockQ2_K *b = block;
                k->group = 16;
                k->d = engine_fp16_to_f32(b->d);
                k->dmin = engine_fp16_to_f32(b->dmin);
                for (int g = 0; g < 16; g++) {
                        k->scale[g] = b->scales[g] & 0xf;
                        k->min[g] = b->scales[g] >> 4;
                }
                for (int e = 0; e < QK_K; e++)
                        k->q[e] = (int8_t)((b->qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3);
                break;
        }
        case GGML_TYPE_Q3_K: {
                const BlockQ3_K *b = block;
                k->group = 16;
                k->d = engine_fp16_to_f32(b->d);
                for (int g = 0; g < 16; g++)
                        k->scale[g] = q3_k_scale(b->scales, g);
                for (int e = 0; e < QK_K; e++) {
                        int q = (b->qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                        if (!(b->hmask[e % 32] & (1u << (e / 32))))
                                q -= 4;
                        k->q[e] = (int8_t)q;
                }
                break;
        }
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K: {
                const BlockQ4_K *b4 = block;
                const BlockQ5_K *b5 = block;
                bool five = type == GGML_TYPE_Q5_K;
                const uint8_t *scales = five ? b5->scales : b4->scales, *qs = five ? b5->qs : b4->qs;
                k->group = 32;
                k->d = engine_fp16_to_f32(five ? b5->d : b4->d);
                k->dmin = engine_fp16_to_f32(five ? b5->dmin : b4->dmin);
                for (int g = 0; g < 8; g++)
                        k_scale_min(scales, g, &k->scale[g], &k->min[g]);
                for (int e = 0; e < QK_K; e++) {
                        int g = e / 32, l = e % 32;
                        uint8_t byte = qs[(g / 2) * 32 + l];
                        int q = g % 2 ? byte >> 4 : byte & 0xf;
                        if (five)
                                q |= ((b5->qh[l] >> g) & 1) << 4;
                        k->q[e] = (int8_t)q;
                }
                break;
        }
        case GGML_TYPE_Q6_K: {
                const BlockQ6_K *b = block;
                k->group = 16;
                k->d = engine_fp16_to_f32(b->d);
                for (int g = 0; g < 16; g++)
                        k->scale[g] = b->scales[g];
                for (int e = 0; e < QK_K; e++) {
                        int half = e / 128, r = (e % 128) / 32, l = e % 32;
                        uint8_t lo = b->ql[half * 64 + l + 32 * (r % 2)];
                        int q = (r < 2 ? lo & 0xf : lo >> 4) | ((b->qh[half * 32 + l] >> (2 * r)) & 3) << 4;
                        k->q[e] = (int8_t)(q - 32);
                }
                break;
        }
        default:
                break;
        }
}

static float dot_k(uint32_t type, size_t block_size, uint64_t n, const uint8_t *w, const BlockQ8_K *x) {
        float sum = 0;

        for (uint64_t b = 0; b < n / QK_K; b++) {
                KBlock k;
                unpack_k(type, w + b * block_size, &k);
                int isum = 0, msum = 0;
                for (int g = 0; g < QK_K / k.group; g++) {
                        int gs = 0;
                        for (int j = 0; j < k.group; j++)
                                gs += k.q[g * k.group + j] * x[b].qs[g * k.group + j];
                        isum += k.scale[g] * gs;
                        int bs = 0;
                        for (int j = 0; j < k.group / 16; j++)
                                bs += x[b].bsums[g * k.group / 16 + j];
                        msum += k.min[g] * bs;
                }
                sum += x[b].d * (k.d * (float)isum - k.dmin * (float)msum);
        }
        return sum;
}

/* ---- the table ---- */

#define DEFINE_GEMM(name, dot_expr)                                                                             \
        static void name(uint64_t n, const uint8_t *w, size_t w_stride, uint32_t n_rows, const uint8_t *a,     \
                         size_t a_stride, uint32_t n_act, float *y, size_t y_stride) {                         \
                for (uint32_t t = 0; t < n_act; t++)                                                            \
                        for (uint32_t r = 0; r < n_rows; r++) {                                                 \
                                const uint8_t *wr = w + r * w_stride, *at = a + t * a_stride;                   \
                                y[t * y_stride + r] = (dot_expr);                                               \
                        }                                                                                       \
        }

DEFINE_GEMM(gemm_f32, dot_f32(n, (const float *)wr, (const float *)at))
DEFINE_GEMM(gemm_f16, dot_f16(n, (const GgmlHalf *)wr, (const float *)at))
DEFINE_GEMM(gemm_bf16, dot_bf16(n, (const uint16_t *)wr, (const float *)at))
DEFINE_GEMM(gemm_q4_0, dot_q4_0(n, (const BlockQ4_0 *)wr, at))
DEFINE_GEMM(gemm_q4_1, dot_q4_1(n, (const BlockQ4_1 *)wr, at))
DEFINE_GEMM(gemm_q5_0, dot_q5_0(n, (const BlockQ5_0 *)wr, at))
DEFINE_GEMM(gemm_q5_1, dot_q5_1(n, (const BlockQ5_1 *)wr, at))
DEFINE_GEMM(gemm_q8_0, dot_q8_0(n, (const BlockQ8_0 *)wr, at))
DEFINE_GEMM(gemm_q2_k, dot_k(GGML_TYPE_Q2_K, sizeof(BlockQ2_K), n, wr, (const BlockQ8_K *)at))
DEFINE_GEMM(gemm_q3_k, dot_k(GGML_TYPE_Q3_K, sizeof(BlockQ3_K), n, wr, (const BlockQ8_K *)at))
DEFINE_GEMM(gemm_q4_k, dot_k(GGML_TYPE_Q4_K, sizeof(BlockQ4_K), n, wr, (const BlockQ8_K *)at))
DEFINE_GEMM(gemm_q5_k, dot_k(GGML_TYPE_Q5_K, sizeof(BlockQ5_K), n, wr, (const BlockQ8_K *)at))
DEFINE_GEMM(gemm_q6_k, dot_k(GGML_TYPE_Q6_K, sizeof(BlockQ6_K), n, wr, (const BlockQ8_K *)at))

static void attend1_scalar(const float *q, const uint8_t *k, const uint8_t *v, size_t kv_stride,
                           uint32_t kv_type, uint32_t n_pos, uint32_t head_dim, float scale, float *scores,
                           float *out) {
        float max = -INFINITY, sum = 0;

        for (uint32_t p = 0; p < n_pos; p++) {
                const uint8_t *kp = k + p * kv_stride;
                float s = kv_type == GGML_TYPE_F16 ? dot_f16(head_dim, (const GgmlHalf *)kp, q)
                                                   : dot_f32(head_dim, (const float *)kp, q);
                scores[p] = s * scale;
                max = fmaxf(max, scores[p]);
        }
        for (uint32_t p = 0; p < n_pos; p++) {
                scores[p] = expf(scores[p] - max);
                sum += scores[p];
        }
        for (uint32_t i = 0; i < head_dim; i++)
                out[i] = 0;
        for (uint32_t p = 0; p < n_pos; p++) {
                const uint8_t *vp = v + p * kv_stride;
                float a = scores[p] / sum;
                for (uint32_t i = 0; i < head_dim; i++)
                        out[i] += a * (kv_type == GGML_TYPE_F16 ? engine_fp16_to_f32(((const GgmlHalf *)vp)[i])
                                                                : ((const float *)vp)[i]);
        }
}

static void attend_scalar(const float *q, uint32_t n_q, const uint8_t *k, const uint8_t *v, size_t kv_stride,
                          uint32_t kv_type, uint32_t n_pos, uint32_t head_dim, float scale, float *scores,
                          float *out) {
        for (uint32_t i = 0; i < n_q; i++)
                attend1_scalar(q + (size_t)i * head_dim, k, v, kv_stride, kv_type, n_pos, head_dim, scale, scores,
                               out + (size_t)i * head_dim);
}

static void swiglu_scalar(float *g, const float *u, uint32_t n) {
        for (uint32_t i = 0; i < n; i++)
                g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

const CpuKernels cpu_kernels_scalar = {
        .isa = ENGINE_CPU_SCALAR,
        .gemm = {
                [GGML_TYPE_F32] = gemm_f32,
                [GGML_TYPE_F16] = gemm_f16,
                [GGML_TYPE_BF16] = gemm_bf16,
                [GGML_TYPE_Q4_0] = gemm_q4_0,
                [GGML_TYPE_Q4_1] = gemm_q4_1,
                [GGML_TYPE_Q5_0] = gemm_q5_0,
                [GGML_TYPE_Q5_1] = gemm_q5_1,
                [GGML_TYPE_Q8_0] = gemm_q8_0,
                [GGML_TYPE_Q2_K] = gemm_q2_k,
                [GGML_TYPE_Q3_K] = gemm_q3_k,
                [GGML_TYPE_Q4_K] = gemm_q4_k,
                [GGML_TYPE_Q5_K] = gemm_q5_k,
                [GGML_TYPE_Q6_K] = gemm_q6_k,
        },
        .quantize = {
                [ACT_Q8] = quantize_act_q8_scalar,
                [ACT_Q8_K] = quantize_act_q8_k_scalar,
        },
        .attend = attend_scalar,
        .swiglu = swiglu_scalar,
};
