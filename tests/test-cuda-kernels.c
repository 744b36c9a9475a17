/* SPDX-License-Identifier: MIT */
/*
 * The CUDA backend's kernels against scalar references on the host, on random data (suite gpu: needs a CUDA
 * device). The references decode GGUF blocks with sequential loops written from the format, independently of
 * the device code's per-element index arithmetic; activations quantized to 8 bits are emulated exactly, so
 * that matrix-vector products must agree to float rounding, not merely to quantization error.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "cuda/engine-cuda.h"

/* ---- host helpers ---- */

static uint64_t rng_state;

static uint64_t rnd(void) {
        uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float frnd(void) {
        return (float)((double)(rnd() >> 11) / 4503599627370496.0 - 1.0);
}

static float h2f(uint16_t h) {
        uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
        float f;

        if (e == 0) {
                f = ldexpf((float)m, -24);
                return sign ? -f : f;
        }
        if (e == 31)
                bits = sign | 0x7f800000u | (m << 13);
        else
                bits = sign | ((e + 112) << 23) | (m << 13);
        memcpy(&f, &bits, 4);
        return f;
}

/* Round to nearest even; the test only feeds it values in the normal range of halves. */
static uint16_t f2h(float f) {
        uint32_t x, sign, mant;
        int e;

        memcpy(&x, &f, 4);
        sign = (x >> 16) & 0x8000;
        e = (int)((x >> 23) & 0xff) - 127 + 15;
        mant = x & 0x7fffff;
        if (e <= 0)
                return (uint16_t)sign;
        uint32_t h = ((uint32_t)e << 10) | (mant >> 13), rest = mant & 0x1fff;
        if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
                h++;
        return (uint16_t)(sign | h);
}

static float bf2f(uint16_t b) {
        uint32_t bits = (uint32_t)b << 16;
        float f;

        memcpy(&f, &bits, 4);
        return f;
}

static float rd_h(const uint8_t *p) {
        uint16_t h;

        memcpy(&h, p, 2);
        return h2f(h);
}

static void wr_h(uint8_t *p, float f) {
        uint16_t h = f2h(f);

        memcpy(p, &h, 2);
}

/* ---- reference dequantization: one row of n elements, block by block ---- */

static void k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
        if (j < 4) {
                *sc = s[j] & 63;
                *m = s[j + 4] & 63;
        } else {
                *sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
                *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
}

static void ref_dequant_row(uint32_t type, const uint8_t *row, uint32_t n, float *y) {
        const GgmlTypeInfo *ti = ggml_type_info(type);
        uint32_t nb = n / ti->block_size;

        for (uint32_t ib = 0; ib < nb; ib++) {
                const uint8_t *b = row + (size_t)ib * ti->type_size;
                float *o = y + (size_t)ib * ti->block_size;
                switch (type) {
                case GGML_TYPE_F32:
                        memcpy(o, b, 4);
                        break;
                case GGML_TYPE_F16:
                        *o = rd_h(b);
                        break;
                case GGML_TYPE_BF16: {
                        uint16_t v;
                        memcpy(&v, b, 2);
                        *o = bf2f(v);
                        break;
                }
                case GGML_TYPE_Q4_0:
                        for (int j = 0; j < 16; j++) {
                                o[j] = rd_h(b) * (float)((b[2 + j] & 0xf) - 8);
                                o[j + 16] = rd_h(b) * (float)((b[2 + j] >> 4) - 8);
                        }
                        break;
                case GGML_TYPE_Q4_1:
                        for (int j = 0; j < 16; j++) {
                                o[j] = rd_h(b) * (float)(b[4 + j] & 0xf) + rd_h(b + 2);
                                o[j + 16] = rd_h(b) * (float)(b[4 + j] >> 4) + rd_h(b + 2);
                        }
                        break;
                case GGML_TYPE_Q5_0:
                case GGML_TYPE_Q5_1: {
                        bool one = type == GGML_TYPE_Q5_1;
                        uint32_t qh;
                        memcpy(&qh, b + (one ? 4 : 2), 4);
                        const uint8_t *qs = b + (one ? 8 : 6);
                        for (int j = 0; j < 16; j++) {
                                int x0 = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
                                int x1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
                                if (one) {
                                        o[j] = rd_h(b) * (float)x0 + rd_h(b + 2);
                                        o[j + 16] = rd_h(b) * (float)x1 + rd_h(b + 2);
                                } else {
                                        o[j] = rd_h(b) * (float)(x0 - 16);
                                        o[j + 16] = rd_h(b) * (float)(x1 - 16);
                                }
                        }
                        break;
                }
                case GGML_TYPE_Q8_0:
                        for (int j = 0; j < 32; j++)
                                o[j] = rd_h(b) * (float)(int8_t)b[2 + j];
                        break;
                case GGML_TYPE_Q2_K: {
                        const uint8_t *sc = b, *q = b + 16;
                        float d = rd_h(b + 80), dmin = rd_h(b + 82);
                        int is = 0;
                        for (int h = 0; h < 2; h++, q += 32)
                                for (int shift = 0; shift < 8; shift += 2)
                                        for (int half = 0; half < 2; half++) {
                                                int s = sc[is++];
                                                for (int l = 0; l < 16; l++)
                                                        *o++ = d * (float)(s & 0xf) *
                                                                       (float)((q[16 * half + l] >> shift) & 3) -
                                                               dmin * (float)(s >> 4);
                                        }
                        break;
                }
                case GGML_TYPE_Q3_K: {
                        const uint8_t *hm = b, *q = b + 32, *s = b + 96;
                        float d = rd_h(b + 108);
                        int scales[16];
                        for (int i = 0; i < 16; i++) {
                                int lo = i < 8 ? s[i] & 0xf : s[i - 8] >> 4;
                                int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
                                scales[i] = (lo | (hi << 4)) - 32;
                        }
                        int is = 0;
                        uint8_t m = 1;
                        for (int h = 0; h < 2; h++, q += 32)
                                for (int shift = 0; shift < 8; shift += 2, m <<= 1)
                                        for (int half = 0; half < 2; half++) {
                                                float dl = d * (float)scales[is++];
                                                for (int l = 16 * half; l < 16 * half + 16; l++)
                                                        *o++ = dl * (float)(((q[l] >> shift) & 3) -
                                                                            ((hm[l] & m) ? 0 : 4));
                                        }
                        break;
                }
                case GGML_TYPE_Q4_K:
                case GGML_TYPE_Q5_K: {
                        bool five = type == GGML_TYPE_Q5_K;
                        const uint8_t *ql = b + (five ? 48 : 16), *qh = b + 16;
                        float d = rd_h(b), dmin = rd_h(b + 2);
                        for (int j = 0; j < 4; j++, ql += 32) {
                                int sc0, m0, sc1, m1;
                                k4_scale_min(b + 4, 2 * j, &sc0, &m0);
                                k4_scale_min(b + 4, 2 * j + 1, &sc1, &m1);
                                for (int l = 0; l < 32; l++)
                                        *o++ = d * (float)sc0 *
                                                       (float)((ql[l] & 0xf) +
                                                               (five && (qh[l] >> (2 * j)) & 1 ? 16 : 0)) -
                                               dmin * (float)m0;
                                for (int l = 0; l < 32; l++)
                                        *o++ = d * (float)sc1 *
                                                       (float)((ql[l] >> 4) +
                                                               (five && (qh[l] >> (2 * j + 1)) & 1 ? 16 : 0)) -
                                               dmin * (float)m1;
                        }
                        break;
                }
                case GGML_TYPE_Q6_K: {
                        const uint8_t *ql = b, *qh = b + 128;
                        const int8_t *sc = (const int8_t *)(b + 192);
                        float d = rd_h(b + 208);
                        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, o += 128)
                                for (int l = 0; l < 32; l++) {
                                        int is = l / 16;
                                        int q1 = ((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32;
                                        int q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
                                        int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                                        int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                                        o[l] = d * (float)sc[is] * (float)q1;
                                        o[l + 32] = d * (float)sc[is + 2] * (float)q2;
                                        o[l + 64] = d * (float)sc[is + 4] * (float)q3;
                                        o[l + 96] = d * (float)sc[is + 6] * (float)q4;
                                }
                        break;
                }
                default:
                        fail_msg("no reference for type %u", type);
                }
        }
}

/* Random but valid blocks: random bytes, block scales of sensible size and sign. */
static void random_row(uint32_t type, uint8_t *row, uint32_t n) {
        const GgmlTypeInfo *ti = ggml_type_info(type);
        uint32_t nb = n / ti->block_size;

        for (uint32_t ib = 0; ib < nb; ib++) {
                uint8_t *b = row + (size_t)ib * ti->type_size;
                float d = 0.01f + 0.02f * (frnd() + 1.0f);
                for (uint32_t i = 0; i < ti->type_size; i++)
                        b[i] = (uint8_t)rnd();
                switch (type) {
                case GGML_TYPE_F32: {
                        float v = frnd();
                        memcpy(b, &v, 4);
                        break;
                }
                case GGML_TYPE_F16:
                        wr_h(b, frnd());
                        break;
                case GGML_TYPE_BF16: {
                        float v = frnd();
                        uint32_t bits;
                        memcpy(&bits, &v, 4);
                        uint16_t h = (uint16_t)(bits >> 16);
                        memcpy(b, &h, 2);
                        break;
                }
                case GGML_TYPE_Q4_0:
                case GGML_TYPE_Q5_0:
                case GGML_TYPE_Q8_0:
                        wr_h(b, frnd() < 0 ? -d : d);
                        break;
                case GGML_TYPE_Q4_1:
                case GGML_TYPE_Q5_1:
                        wr_h(b, d);
                        wr_h(b + 2, -8.0f * d * (1.0f + 0.5f * frnd()));
                        break;
                case GGML_TYPE_Q2_K:
                        wr_h(b + 80, d), wr_h(b + 82, d * 0.5f);
                        break;
                case GGML_TYPE_Q3_K:
                        wr_h(b + 108, d);
                        break;
                case GGML_TYPE_Q4_K:
                case GGML_TYPE_Q5_K:
                        wr_h(b, d * 0.1f), wr_h(b + 2, d * 0.2f);
                        break;
                case GGML_TYPE_Q6_K:
                        wr_h(b + 208, d * 0.05f);
                        break;
                default:
                        fail_msg("no generator for type %u", type);
                }
        }
}

/* A random matrix on the host (rows contiguous, GGUF layout) and on the device (rows padded). */
typedef struct Mat {
        CudaMatrix m;
        uint8_t *host;
        size_t row_bytes;
} Mat;

static void mat_new(Mat *t, uint32_t type, uint32_t n_cols, uint32_t n_rows) {
        uint64_t rb;
        void *dev;

        assert_int_equal(ggml_row_size(type, n_cols, &rb), 0);
        t->row_bytes = rb;
        t->host = malloc(rb * n_rows);
        assert_non_null(t->host);
        for (uint32_t r = 0; r < n_rows; r++)
                random_row(type, t->host + r * rb, n_cols);
        t->m.type = type;
        t->m.n_cols = n_cols;
        t->m.n_rows = n_rows;
        assert_int_equal(cuda_row_stride(type, n_cols, &t->m.row_stride), 0);
        assert_true(t->m.row_stride % 16 == 0 && t->m.row_stride >= rb);
        uint8_t *padded = calloc(n_rows, t->m.row_stride);
        assert_non_null(padded);
        for (uint32_t r = 0; r < n_rows; r++)
                memcpy(padded + r * t->m.row_stride, t->host + r * rb, rb);
        assert_int_equal(cuda_malloc(t->m.row_stride * n_rows, &dev), 0);
        assert_int_equal(cuda_upload(dev, padded, t->m.row_stride * n_rows), 0);
        free(padded);
        t->m.data = dev;
}

static void mat_free(Mat *t) {
        cuda_free((void *)t->m.data);
        free(t->host);
}

static void *dev_upload(const void *p, size_t n) {
        void *d;

        assert_int_equal(cuda_malloc(n, &d), 0);
        assert_int_equal(cuda_upload(d, p, n), 0);
        return d;
}

/* Device buffer filled with a NaN pattern, so that unwritten outputs show. */
static void *dev_poison(size_t n) {
        void *d;
        uint8_t *h = malloc(n);

        assert_non_null(h);
        memset(h, 0xff, n);
        d = dev_upload(h, n);
        free(h);
        return d;
}

static float *download_f32(const void *d, size_t n) {
        float *h = malloc(n * sizeof(float));

        assert_non_null(h);
        assert_int_equal(cuda_download(h, d, n * sizeof(float)), 0);
        return h;
}

/* ||a - b|| / ||b||, failing on NaN. */
static double rel_err(const float *a, const double *b, size_t n) {
        double num = 0, den = 0;

        for (size_t i = 0; i < n; i++) {
                assert_false(isnan(a[i]));
                num += (a[i] - b[i]) * (a[i] - b[i]);
                den += b[i] * b[i];
        }
        return sqrt(num / (den > 0 ? den : 1));
}

/* x quantized to 8 bits per 32 and back, as the device does it. */
static void emulate_q8(const float *x, uint32_t n, float *xq) {
        for (uint32_t b = 0; b < n / 32; b++) {
                float amax = 0;
                for (int i = 0; i < 32; i++)
                        amax = fmaxf(amax, fabsf(x[32 * b + i]));
                float d = amax / 127.0f;
                for (int i = 0; i < 32; i++)
                        xq[32 * b + i] = amax > 0 ? rintf(x[32 * b + i] / d) * d : 0.0f;
        }
}

static bool is_float_type(uint32_t t) {
        return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16;
}

static int setup(void **state) {
        rng_state = 0x1234;
        return engine_cuda_device_count() > 0 ? 0 : -1;
}

/* ---- matrix-vector products ---- */

static void check_matvec(uint32_t type, uint32_t n_cols, uint32_t n_rows) {
        Mat w[2];
        float *x = malloc(n_cols * 4), *xe = malloc(n_cols * 4), *wf = malloc(n_cols * 4);
        double *ref = calloc(n_rows, sizeof(double)), *ref_add = calloc(n_rows, sizeof(double)),
               *ref_glu = calloc(n_rows, sizeof(double));
        float *base = malloc(n_rows * 4);
        CudaQ8 xq = {0};

        assert_non_null(x), assert_non_null(xe), assert_non_null(wf), assert_non_null(ref), assert_non_null(base);
        for (uint32_t i = 0; i < n_cols; i++)
                x[i] = frnd() * (i % 7 == 0 ? 4.0f : 1.0f);
        for (uint32_t i = 0; i < n_rows; i++)
                base[i] = frnd();
        mat_new(&w[0], type, n_cols, n_rows);
        mat_new(&w[1], type, n_cols, n_rows);
        if (is_float_type(type))
                memcpy(xe, x, n_cols * 4);
        else
                emulate_q8(x, n_cols, xe);
        for (uint32_t r = 0; r < n_rows; r++) {
                double d[2] = {0, 0};
                for (int k = 0; k < 2; k++) {
                        ref_dequant_row(type, w[k].host + r * w[k].row_bytes, n_cols, wf);
                        for (uint32_t i = 0; i < n_cols; i++)
                                d[k] += (double)wf[i] * xe[i];
                }
                ref[r] = d[0];
                ref_add[r] = base[r] + d[0];
                ref_glu[r] = d[0] / (1.0 + exp(-d[0])) * d[1];
        }

        float *dx = dev_upload(x, n_cols * 4), *dy = dev_poison(n_rows * 4), *dy2 = dev_poison(n_rows * 4);
        float *dbase = dev_upload(base, n_rows * 4);
        assert_int_equal(cuda_malloc(n_cols, (void **)&xq.qs), 0);
        assert_int_equal(cuda_malloc(n_cols / 32 * 8 + 8, (void **)&xq.ds), 0);
        const CudaMvInput in_f32 = {dx, &xq};
        const CudaMvInput *in_pre = &in_f32;
        if (!is_float_type(type))
                assert_int_equal(cuda_quantize_q8(NULL, dx, n_cols, 1, &xq), 0);

        /* Plain product, and two matrices in one launch. */
        float *ys[2] = {dy, dy2};
        assert_int_equal(cuda_matvec(NULL, &w[0].m, 1, &in_f32, ys, CUDA_MV_STORE), 0);
        assert_int_equal(cuda_sync(NULL), 0);
        float *y = download_f32(dy, n_rows);
        double e = rel_err(y, ref, n_rows);
        print_message("# %s %ux%u store: rel err %.2e\n", ggml_type_name(type), n_rows, n_cols, e);
        assert_true(e < 1e-4);
        free(y);

        CudaMatrix two[2] = {w[1].m, w[0].m};
        assert_int_equal(cuda_matvec(NULL, two, 2, in_pre, (float *[]){dy2, dy}, CUDA_MV_STORE), 0);
        assert_int_equal(cuda_sync(NULL), 0);
        y = download_f32(dy, n_rows);
        assert_true(rel_err(y, ref, n_rows) < 1e-4);
        free(y);

        /* Residual add. */
        ys[0] = dbase;
        assert_int_equal(cuda_matvec(NULL, &w[0].m, 1, in_pre, ys, CUDA_MV_ADD), 0);
        assert_int_equal(cuda_sync(NULL), 0);
        y = download_f32(dbase, n_rows);
        assert_true(rel_err(y, ref_add, n_rows) < 1e-4);
        free(y);

        /* SwiGLU of two. */
        ys[0] = dy;
        CudaMatrix gu[2] = {w[0].m, w[1].m};
        assert_int_equal(cuda_matvec(NULL, gu, 2, &in_f32, ys, CUDA_MV_SWIGLU), 0);
        assert_int_equal(cuda_sync(NULL), 0);
        y = download_f32(dy, n_rows);
        e = rel_err(y, ref_glu, n_rows);
        assert_true(e < 1e-4);

        /* The input in the type's own layout (first, then second of two): the same sums to the bit. */
        const CudaQ8Layout lay = cuda_q8_layout_for(type);
        if (!is_float_type(type) && lay != CUDA_Q8_PLAIN) {
                const CudaQ8Layout other = lay == CUDA_Q8_K4 ? CUDA_Q8_K6 : CUDA_Q8_K4;
                CudaQ8 lq = xq, lq2 = xq;
                assert_int_equal(cuda_malloc(cuda_q8_bytes(n_cols, lay), (void **)&lq.qs), 0);
                assert_int_equal(cuda_malloc(cuda_q8_bytes(n_cols, lay), (void **)&lq2.qs2), 0);
                lq.layout = lay;
                lq2.qs = lq.qs, lq2.layout = other, lq2.layout2 = lay;
                for (int v = 0; v < 2; v++) {
                        const CudaQ8 *q = v ? &lq2 : &lq;
                        const CudaMvInput in_l = {NULL, q};
                        assert_int_equal(cuda_quantize_q8(NULL, dx, n_cols, 1, q), 0);
                        assert_int_equal(cuda_matvec(NULL, gu, 2, &in_l, ys, CUDA_MV_SWIGLU), 0);
                        assert_int_equal(cuda_sync(NULL), 0);
                        float *yl = download_f32(dy, n_rows);
                        assert_memory_equal(yl, y, n_rows * 4);
                        free(yl);
                }
                /* Only the other family's layout: refused, nothing written. */
                lq.layout = other;
                const CudaMvInput in_o = {NULL, &lq};
                assert_int_equal(cuda_matvec(NULL, gu, 2, &in_o, ys, CUDA_MV_SWIGLU), -EINVAL);
                cuda_free(lq.qs), cuda_free(lq2.qs2);
        }
        free(y);

        cuda_free(dx), cuda_free(dy), cuda_free(dy2), cuda_free(dbase), cuda_free(xq.qs), cuda_free(xq.ds);
        mat_free(&w[0]), mat_free(&w[1]);
        free(x), free(xe), free(wf), free(ref), free(ref_add), free(ref_glu), free(base);
}

static const uint32_t all_types[] = {
        GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_Q2_K,
        GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_F32,  GGML_TYPE_F16,
        GGML_TYPE_BF16,
};

static void test_matvec(void **state) {
        for (size_t i = 0; i < ELEMENTSOF(all_types); i++) {
                uint32_t t = all_types[i];
                bool k = ggml_type_info(t)->block_size == 256;
                /* A whole number of chunks, and a row that ends inside a chunk; even row counts of K-quants
                 * go through the kernels in pairs of rows, odd ones one row at a time; three chunks a row,
                 * and one. */
                check_matvec(t, 4096, 68);
                check_matvec(t, 4096, 67);
                check_matvec(t, k ? 11 * 256 : 33 * 32, 45);
                check_matvec(t, k ? 11 * 256 : 33 * 32, 46);
                check_matvec(t, k ? 24 * 256 : 65 * 32, 30);
                check_matvec(t, k ? 3 * 256 : 9 * 32, 40);
                if (is_float_type(t))
                        check_matvec(t, 172, 31);
        }
        /* More rows than an H100's grid has warps (4224): warps take several rows, pairs or not. */
        check_matvec(GGML_TYPE_Q4_K, 4096, 4600);
        check_matvec(GGML_TYPE_Q8_0, 4096, 4601);
        /* Four rounds of rows a warp and more: a grid balanced to fewer warps. */
        check_matvec(GGML_TYPE_Q8_0, 512, 17001);
        check_matvec(GGML_TYPE_Q4_K, 512, 34002);
}

/*
 * Three matrices of mixed types in one call (Q/K/V of Q4_K_M and the like): one launch for Q4_K or Q5_K with
 * Q6_K, else one per type; each output equal to the bit to the same product launched alone, with the input
 * in both K layouts, plain, and (batched) two sequences.
 */
static void check_matvec_mixed(const uint32_t *types, uint32_t n_cols, const uint32_t *n_rows) {
        Mat w[3];
        float *x = malloc(2 * n_cols * 4), *dys[3], *dyr[3];
        CudaQ8 q = {0}, qp = {0};
        uint32_t ldy = 0;
        bool plain_type = false;

        for (uint32_t i = 0; i < 2 * n_cols; i++)
                x[i] = frnd();
        float *dx = dev_upload(x, 2 * n_cols * 4);
        for (int i = 0; i < 3; i++)
                ldy = n_rows[i] > ldy ? n_rows[i] : ldy;
        for (int i = 0; i < 3; i++) {
                mat_new(&w[i], types[i], n_cols, n_rows[i]);
                dys[i] = dev_poison((ldy + n_rows[i]) * 4);
                dyr[i] = dev_poison((ldy + n_rows[i]) * 4);
                plain_type = plain_type || cuda_q8_layout_for(types[i]) == CUDA_Q8_PLAIN;
        }
        assert_int_equal(cuda_malloc(cuda_q8_bytes(n_cols, CUDA_Q8_K4), (void **)&q.qs), 0);
        assert_int_equal(cuda_malloc(cuda_q8_bytes(n_cols, CUDA_Q8_K6), (void **)&q.qs2), 0);
        assert_int_equal(cuda_malloc(n_cols / 32 * 8, (void **)&q.ds), 0);
        assert_int_equal(cuda_malloc(2 * n_cols, (void **)&qp.qs), 0);
        assert_int_equal(cuda_malloc(2 * n_cols / 32 * 8, (void **)&qp.ds), 0);
        q.layout = CUDA_Q8_K4, q.layout2 = CUDA_Q8_K6;
        assert_int_equal(cuda_quantize_q8(NULL, dx, n_cols, 1, &q), 0);
        assert_int_equal(cuda_quantize_q8(NULL, dx, n_cols, 2, &qp), 0);
        const CudaMatrix ms[3] = {w[0].m, w[1].m, w[2].m};
        for (int v = 0; v < 3; v++) {
                const CudaMvInput in = {NULL, v == 0 ? &q : &qp};
                const uint32_t nb = v == 2 ? 2 : 1;
                if (v == 0 && plain_type) {
                        /* a 32-element type cannot read the K layouts: refused */
                        assert_int_equal(cuda_matvec(NULL, ms, 3, &in, dys, CUDA_MV_STORE), -EINVAL);
                        continue;
                }
                assert_int_equal(cuda_matvec_batch(NULL, ms, 3, &in, dys, CUDA_MV_STORE, nb, ldy), 0);
                for (int i = 0; i < 3; i++) {
                        float *one[1] = {dyr[i]};
                        assert_int_equal(cuda_matvec_batch(NULL, &ms[i], 1, &in, one, CUDA_MV_STORE, nb, ldy), 0);
                }
                assert_int_equal(cuda_sync(NULL), 0);
                for (int i = 0; i < 3; i++)
                        for (uint32_t j = 0; j < nb; j++) {
                                float *a = download_f32(dys[i] + j * ldy, n_rows[i]);
                                float *b = download_f32(dyr[i] + j * ldy, n_rows[i]);
                                assert_memory_equal(a, b, n_rows[i] * 4);
                                free(a), free(b);
                        }
        }
        print_message("# mixed %s/%s/%s x %u: equal to the launches alone\n", ggml_type_name(types[0]),
                      ggml_type_name(types[1]), ggml_type_name(types[2]), n_cols);
        /* SwiGLU takes two matrices of one type and one size. */
        const CudaMvInput in = {NULL, &qp};
        const bool glu = types[0] == types[1] && n_rows[0] == n_rows[1];
        assert_int_equal(cuda_matvec(NULL, ms, 2, &in, dys, CUDA_MV_SWIGLU), glu ? 0 : -EINVAL);
        assert_int_equal(cuda_sync(NULL), 0);
        for (int i = 0; i < 3; i++)
                mat_free(&w[i]), cuda_free(dys[i]), cuda_free(dyr[i]);
        cuda_free(q.qs), cuda_free(q.qs2), cuda_free(q.ds), cuda_free(qp.qs), cuda_free(qp.ds), cuda_free(dx);
        free(x);
}

static void test_matvec_mixed(void **state) {
        const uint32_t qkv[3] = {GGML_TYPE_Q4_K, GGML_TYPE_Q4_K, GGML_TYPE_Q6_K};
        const uint32_t q5[3] = {GGML_TYPE_Q6_K, GGML_TYPE_Q5_K, GGML_TYPE_Q5_K};
        const uint32_t three[3] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_K, GGML_TYPE_Q6_K};
        const uint32_t odd[3] = {GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, GGML_TYPE_Q6_K};
        check_matvec_mixed(qkv, 4096, (const uint32_t[]){4096, 1024, 1024});
        check_matvec_mixed(qkv, 2816, (const uint32_t[]){64, 64, 67}); /* a last chunk of 3 blocks; SwiGLU */
        check_matvec_mixed(q5, 4096, (const uint32_t[]){96, 200, 130});
        check_matvec_mixed(three, 4096, (const uint32_t[]){64, 64, 64});
        check_matvec_mixed(odd, 4096, (const uint32_t[]){63, 64, 64}); /* odd Q4_K rows: one launch a type */
}

/* The batched products (several sequences' inputs at once) against the host reference: nb inputs, two
 * matrices stored into one strided output, a residual add, and SwiGLU. */
static void check_matvec_batch(uint32_t type, uint32_t n_cols, uint32_t n_rows, uint32_t nb) {
        const uint32_t ldy = 2 * n_rows + 3;
        Mat w[2];
        float *x = malloc((size_t)nb * n_cols * 4), *xe = malloc((size_t)nb * n_cols * 4), *wf = malloc(n_cols * 4);
        double *ref = calloc((size_t)nb * ldy, sizeof(double)), *ref_add = calloc((size_t)nb * ldy, sizeof(double)),
               *ref_glu = calloc((size_t)nb * ldy, sizeof(double));
        float *base = malloc((size_t)nb * ldy * 4);
        CudaQ8 xq = {0};

        assert_non_null(x), assert_non_null(xe), assert_non_null(wf), assert_non_null(ref), assert_non_null(base);
        assert_non_null(ref_add), assert_non_null(ref_glu);
        for (size_t i = 0; i < (size_t)nb * n_cols; i++)
                x[i] = frnd() * (i % 5 == 0 ? 3.0f : 1.0f);
        for (size_t i = 0; i < (size_t)nb * ldy; i++)
                base[i] = frnd();
        mat_new(&w[0], type, n_cols, n_rows);
        mat_new(&w[1], type, n_cols, n_rows);
        for (uint32_t j = 0; j < nb; j++) {
                if (is_float_type(type))
                        memcpy(xe + (size_t)j * n_cols, x + (size_t)j * n_cols, n_cols * 4);
                else
                        emulate_q8(x + (size_t)j * n_cols, n_cols, xe + (size_t)j * n_cols);
        }
        for (uint32_t r = 0; r < n_rows; r++) {
                for (int k = 0; k < 2; k++) {
                        ref_dequant_row(type, w[k].host + r * w[k].row_bytes, n_cols, wf);
                        for (uint32_t j = 0; j < nb; j++) {
                                double d = 0;
                                for (uint32_t i = 0; i < n_cols; i++)
                                        d += (double)wf[i] * xe[(size_t)j * n_cols + i];
                                ref[(size_t)j * ldy + k * n_rows + r] = d;
                        }
                }
                for (uint32_t j = 0; j < nb; j++) {
                        double g = ref[(size_t)j * ldy + r], u = ref[(size_t)j * ldy + n_rows + r];
                        ref_add[(size_t)j * ldy + r] = base[(size_t)j * ldy + r] + g;
                        ref_glu[(size_t)j * ldy + r] = g / (1.0 + exp(-g)) * u;
                }
        }
        /* Elements between the outputs are not written: they keep the poison, the reference copies it. */
        float *dx = dev_upload(x, (size_t)nb * n_cols * 4), *dy = dev_poison((size_t)nb * ldy * 4);
        float *dbase = dev_upload(base, (size_t)nb * ldy * 4);
        assert_int_equal(cuda_malloc((size_t)nb * n_cols, (void **)&xq.qs), 0);
        assert_int_equal(cuda_malloc((size_t)nb * (n_cols / 32) * 8 + 8, (void **)&xq.ds), 0);
        const CudaMvInput in = {dx, &xq};
        if (!is_float_type(type))
                assert_int_equal(cuda_quantize_q8(NULL, dx, n_cols, nb, &xq), 0);

        float *ys[2] = {dy, dy + n_rows};
        CudaMatrix two[2] = {w[0].m, w[1].m};
        assert_int_equal(cuda_matvec_batch(NULL, two, 2, &in, ys, CUDA_MV_STORE, nb, ldy), 0);
        assert_int_equal(cuda_sync(NULL), 0);
        float *y = download_f32(dy, (size_t)nb * ldy);
        for (uint32_t j = 0; j < nb; j++) {
                assert_true(rel_err(y + (size_t)j * ldy, ref + (size_t)j * ldy, 2 * n_rows) < 1e-4);
                for (uint32_t i = 2 * n_rows; i < ldy; i++)
                        assert_true(isnan(y[(size_t)j * ldy + i]));
        }
        free(y);

        ys[0] = dbase;
        assert_int_equal(cuda_matvec_batch(NULL, &w[0].m, 1, &in, ys, CUDA_MV_ADD, nb, ldy), 0);
        assert_int_equal(cuda_sync(NULL), 0);
        y = download_f32(dbase, (size_t)nb * ldy);
        for (uint32_t j = 0; j < nb; j++)
                assert_true(rel_err(y + (size_t)j * ldy, ref_add + (size_t)j * ldy, n_rows) < 1e-4);
        free(y);

        ys[0] = dy;
        assert_int_equal(cuda_matvec_batch(NULL, two, 2, &in, ys, CUDA_MV_SWIGLU, nb, ldy), 0);
        assert_int_equal(cuda_sync(NULL), 0);
        y = download_f32(dy, (size_t)nb * ldy);
        /* Over all columns at once: a column of few rows can have every gate far below zero, its outputs
         * ~1e-110, where a column's own relative error means nothing (seen: q5_K, 16 rows). */
        double num = 0, den = 0;
        for (uint32_t j = 0; j < nb; j++)
                for (uint32_t i = 0; i < n_rows; i++) {
                        const double a = y[(size_t)j * ldy + i], b = ref_glu[(size_t)j * ldy + i];
                        assert_false(isnan(a));
                        num += (a - b) * (a - b), den += b * b;
                }
        const double e = sqrt(num / (den > 0 ? den : 1));
        print_message("# %s %ux%u, %u sequences: swiglu rel err %.2e\n", ggml_type_name(type), n_rows, n_cols, nb,
                      e);
        assert_true(e < 1e-4);
        free(y);

        /* Errors: no sequences, SwiGLU of one matrix. */
        assert_int_equal(cuda_matvec_batch(NULL, two, 2, &in, ys, CUDA_MV_STORE, 0, ldy), -EINVAL);
        assert_int_equal(cuda_matvec_batch(NULL, two, 1, &in, ys, CUDA_MV_SWIGLU, nb, ldy), -EINVAL);

        cuda_free(dx), cuda_free(dy), cuda_free(dbase), cuda_free(xq.qs), cuda_free(xq.ds);
        mat_free(&w[0]), mat_free(&w[1]);
        free(x), free(xe), free(wf), free(ref), free(ref_add), free(ref_glu), free(base);
}

static void test_matvec_batch(void **state) {
        static const uint32_t nbs[] = {2, 3, 5, 8, 11};
        for (size_t i = 0; i < ELEMENTSOF(all_types); i++) {
                uint32_t t = all_types[i];
                bool k = ggml_type_info(t)->block_size == 256;
                for (size_t j = 0; j < ELEMENTSOF(nbs); j++)
                        check_matvec_batch(t, k ? 11 * 256 : 33 * 32, 37 + (uint32_t)j, nbs[j]);
                check_matvec_batch(t, 4096, 64, 4);
                check_matvec_batch(t, 4096, 40, 16);
                /* Rows in tiles of 16: Q4_K and Q6_K from 3 sequences, Q4_0 from 4 and Q8_0 from 6 through the
                 * tensor cores: blocks of 8, 16 or 32 columns (SwiGLU 16), several blocks a tile for more,
                 * up to 64 columns a launch, columns past nb unused. 20: one block of 32 (SwiGLU two, of 16
                 * and 4); 35: three of 16; 67: a launch of two blocks of 32 (SwiGLU four of 16) and one of
                 * 3. The other types: launches of 16. */
                check_matvec_batch(t, 4096, 64, 8);
                check_matvec_batch(t, k ? 11 * 256 : 33 * 32, 48, 11);
                check_matvec_batch(t, 4096, 32, 16);
                check_matvec_batch(t, 4096, 16, 20);
                check_matvec_batch(t, 4096, 32, 32);
                check_matvec_batch(t, k ? 11 * 256 : 33 * 32, 16, 35);
                check_matvec_batch(t, k ? 11 * 256 : 33 * 32, 32, 67);
                if (is_float_type(t))
                        check_matvec_batch(t, 172, 31, 3); /* rows that end inside a vector */
        }
}

static void test_matvec_errors(void **state) {
        Mat w;
        float *y = NULL;

        mat_new(&w, GGML_TYPE_Q4_0, 64, 4);
        CudaQ8 q = {(int8_t *)1, (float *)1};
        const CudaMvInput none = {NULL, NULL}, in = {NULL, &q};
        assert_int_equal(cuda_matvec(NULL, &w.m, 0, &in, &y, CUDA_MV_STORE), -EINVAL);
        assert_int_equal(cuda_matvec(NULL, &w.m, 1, &none, &y, CUDA_MV_STORE), -EINVAL);
        assert_int_equal(cuda_matvec(NULL, &w.m, 1, NULL, &y, CUDA_MV_STORE), -EINVAL);
        assert_int_equal(cuda_matvec(NULL, &w.m, 1, &in, &y, CUDA_MV_SWIGLU), -EINVAL);
        CudaMatrix bad = w.m;
        bad.type = GGML_TYPE_IQ2_XS;
        assert_int_equal(cuda_matvec(NULL, &bad, 1, &in, &y, CUDA_MV_STORE), -EOPNOTSUPP);
        bad = w.m;
        bad.row_stride = 18 * 2;
        assert_int_equal(cuda_matvec(NULL, &bad, 1, &in, &y, CUDA_MV_STORE), -EINVAL);
        bad = w.m;
        bad.type = GGML_TYPE_F16;
        assert_int_equal(cuda_matvec(NULL, &bad, 1, &in, &y, CUDA_MV_STORE), -EINVAL); /* 8-bit input */
        /* 8-bit layouts: unknown ones, and K layouts of rows that are not whole blocks of 256 */
        CudaQ8 lq = q;
        lq.layout = _CUDA_Q8_LAYOUT_MAX;
        const CudaMvInput in_l = {NULL, &lq};
        assert_int_equal(cuda_matvec(NULL, &w.m, 1, &in_l, &y, CUDA_MV_STORE), -EINVAL);
        assert_int_equal(cuda_quantize_q8(NULL, (float *)1, 64, 1, &lq), -EINVAL);
        lq.layout = CUDA_Q8_K4;
        assert_int_equal(cuda_quantize_q8(NULL, (float *)1, 288, 1, &lq), -EINVAL);
        assert_int_equal(cuda_quantize_q8(NULL, (float *)1, 256, 2, &lq), -EINVAL); /* one row only */
        assert_int_equal(cuda_rmsnorm(NULL, (float *)1, (float *)1, 288, 1, 1e-5f, NULL, NULL, &lq), -EINVAL);
        lq.layout = CUDA_Q8_PLAIN;
        assert_int_equal(cuda_quantize_q8(NULL, (float *)4, 64, 1, &lq), -EINVAL); /* x not 16-byte aligned */
        lq.layout = CUDA_Q8_PLAIN, lq.qs2 = (int8_t *)1, lq.layout2 = CUDA_Q8_K6;
        assert_int_equal(cuda_quantize_q8(NULL, (float *)1, 288, 1, &lq), -EINVAL);
        /* Q4_0 reads plain rows only; the batched products too. */
        lq.qs2 = NULL, lq.layout = CUDA_Q8_K4;
        assert_int_equal(cuda_matvec(NULL, &w.m, 1, &in_l, &y, CUDA_MV_STORE), -EINVAL);
        assert_int_equal(cuda_matvec_batch(NULL, &w.m, 1, &in_l, &y, CUDA_MV_STORE, 2, 4), -EINVAL);
        /* The tensor-core path (Q4_K, tiles of 16 rows, 8 sequences): no 8-bit input, no such epilogue. */
        Mat k4;
        mat_new(&k4, GGML_TYPE_Q4_K, 256, 16);
        const CudaMvInput x_only = {(const float *)1, NULL};
        assert_int_equal(cuda_matvec_batch(NULL, &k4.m, 1, &x_only, &y, CUDA_MV_STORE, 8, 16), -EINVAL);
        assert_int_equal(cuda_matvec_batch(NULL, &k4.m, 1, &in, &y, _CUDA_MV_EPILOGUE_MAX, 8, 16), -EINVAL);
        mat_free(&k4);
        assert_false(cuda_type_supported(GGML_TYPE_IQ4_XS));
        size_t st;
        assert_int_equal(cuda_row_stride(GGML_TYPE_Q4_K, 100, &st), -EINVAL);
        assert_int_equal(cuda_row_stride(GGML_TYPE_Q6_K, 11008, &st), 0);
        assert_int_equal(st, 9040);
        mat_free(&w);
}

/* ---- dequantization ---- */

static void test_dequant(void **state) {
        for (size_t i = 0; i < ELEMENTSOF(all_types); i++) {
                uint32_t t = all_types[i], n_cols = ggml_type_info(t)->block_size == 256 ? 768 : 96, n_rows = 37;
                Mat w;
                mat_new(&w, t, n_cols, n_rows);
                float *ref = malloc((size_t)n_cols * n_rows * 4);
                for (uint32_t r = 0; r < n_rows; r++)
                        ref_dequant_row(t, w.host + r * w.row_bytes, n_cols, ref + (size_t)r * n_cols);

                uint16_t *dh = dev_poison((size_t)n_cols * n_rows * 2);
                assert_int_equal(cuda_dequant_f16(NULL, &w.m, dh), 0);
                uint16_t *h = malloc((size_t)n_cols * n_rows * 2);
                assert_int_equal(cuda_download(h, dh, (size_t)n_cols * n_rows * 2), 0);
                for (size_t k = 0; k < (size_t)n_cols * n_rows; k++)
                        assert_true(fabsf(h2f(h[k]) - ref[k]) <= 1e-3f * fabsf(ref[k]) + 1e-6f);

                int32_t rows[3] = {5, 0, 36};
                int32_t *drows = dev_upload(rows, sizeof(rows));
                float *dy = dev_poison((size_t)3 * n_cols * 4);
                assert_int_equal(cuda_get_rows(NULL, &w.m, drows, 3, dy), 0);
                float *y = download_f32(dy, (size_t)3 * n_cols);
                for (int r = 0; r < 3; r++)
                        for (uint32_t c = 0; c < n_cols; c++) {
                                float want = ref[(size_t)rows[r] * n_cols + c];
                                assert_true(fabsf(y[r * n_cols + c] - want) <= 1e-6f * fabsf(want) + 1e-7f);
                        }
                free(y), free(h), free(ref);
                cuda_free(dh), cuda_free(drows), cuda_free(dy);
                mat_free(&w);
        }
}

/* ---- RMSNorm, quantization, SwiGLU, GEMM, argmax ---- */

/* n of 576 goes one element a thread, 4096 four (16-byte loads), 2080 four with threads past the end. */
static void check_rmsnorm(uint32_t n, uint32_t rows) {
        float *x = malloc(n * rows * 4), *w = malloc(n * 4);
        double *ref = malloc(n * rows * sizeof(double));
        CudaQ8 q = {0};

        for (uint32_t i = 0; i < n * rows; i++)
                x[i] = frnd() * 3.0f;
        for (uint32_t i = 0; i < n; i++)
                w[i] = frnd();
        for (uint32_t r = 0; r < rows; r++) {
                double ss = 0;
                for (uint32_t i = 0; i < n; i++)
                        ss += (double)x[r * n + i] * x[r * n + i];
                double sc = 1.0 / sqrt(ss / n + 1e-5);
                for (uint32_t i = 0; i < n; i++)
                        ref[r * n + i] = x[r * n + i] * sc * w[i];
        }
        float *dx = dev_upload(x, n * rows * 4), *dw = dev_upload(w, n * 4), *dy = dev_poison(n * rows * 4);
        uint16_t *dh = dev_poison(n * rows * 2);
        assert_int_equal(cuda_malloc(n * rows, (void **)&q.qs), 0);
        assert_int_equal(cuda_malloc(n * rows / 32 * 8, (void **)&q.ds), 0);
        assert_int_equal(cuda_rmsnorm(NULL, dx, dw, n, rows, 1e-5f, dy, dh, &q), 0);
        assert_int_equal(cuda_sync(NULL), 0);
        float *y = download_f32(dy, n * rows);
        assert_true(rel_err(y, ref, n * rows) < 1e-5);

        uint16_t *h = malloc(n * rows * 2);
        int8_t *qs = malloc(n * rows);
        float *ds = malloc(n * rows / 32 * 8);
        assert_int_equal(cuda_download(h, dh, n * rows * 2), 0);
        assert_int_equal(cuda_download(qs, q.qs, n * rows), 0);
        assert_int_equal(cuda_download(ds, q.ds, n * rows / 32 * 8), 0);
        for (uint32_t i = 0; i < n * rows; i++) {
                assert_true(fabs(h2f(h[i]) - ref[i]) <= 1e-3 * fabs(ref[i]) + 1e-6);
                float d = ds[2 * (i / 32)];
                assert_true(fabs(qs[i] * d - ref[i]) <= 0.5 * d * 1.001 + 1e-6);
        }
        for (uint32_t b = 0; b < n * rows / 32; b++) {
                int s = 0;
                for (int i = 0; i < 32; i++)
                        s += qs[32 * b + i];
                assert_true(fabsf(ds[2 * b + 1] - ds[2 * b] * (float)s) <= 1e-5f * fabsf(ds[2 * b + 1]) + 1e-9f);
        }
        assert_int_equal(cuda_rmsnorm(NULL, dx, dw, 100, 1, 1e-5f, NULL, NULL, &q), -EINVAL);

        /* Both K layouts at once (one row of whole 256-blocks; more rows refused): each value where
         * cuda_q8_pos() puts it. */
        if (n % 256 == 0) {
                CudaQ8 lq = q;
                const size_t nb = cuda_q8_bytes(n, CUDA_Q8_K4);
                int8_t *l1 = malloc(nb), *l2 = malloc(nb);
                assert_int_equal(cuda_malloc(nb, (void **)&lq.qs), 0);
                assert_int_equal(cuda_malloc(nb, (void **)&lq.qs2), 0);
                lq.layout = CUDA_Q8_K4, lq.layout2 = CUDA_Q8_K6;
                if (rows > 1)
                        assert_int_equal(cuda_rmsnorm(NULL, dx, dw, n, rows, 1e-5f, NULL, NULL, &lq), -EINVAL);
                assert_int_equal(cuda_rmsnorm(NULL, dx, dw, n, 1, 1e-5f, NULL, NULL, &lq), 0);
                assert_int_equal(cuda_download(l1, lq.qs, nb), 0);
                assert_int_equal(cuda_download(l2, lq.qs2, nb), 0);
                for (uint32_t i = 0; i < n; i++) {
                        assert_int_equal(l1[cuda_q8_pos(i, CUDA_Q8_K4)], qs[i]);
                        assert_int_equal(l2[cuda_q8_pos(i, CUDA_Q8_K6)], qs[i]);
                }
                free(l1), free(l2);
                cuda_free(lq.qs), cuda_free(lq.qs2);
        }
        free(x), free(w), free(ref), free(y), free(h), free(qs), free(ds);
        cuda_free(dx), cuda_free(dw), cuda_free(dy), cuda_free(dh), cuda_free(q.qs), cuda_free(q.ds);
}

static void test_rmsnorm(void **state) {
        check_rmsnorm(576, 3);
        check_rmsnorm(4096, 2);
        check_rmsnorm(2080, 3);
        check_rmsnorm(2816, 1); /* 11 blocks of 256: a last chunk of three */
        check_rmsnorm(4096, 1);
}

/* The decode kernels' timeline (bench-cuda --trace): builds without it say so and give nothing; builds with it
 * (nvcc -DQUANTD_CUDA_TRACE) log, for each block of an RMSNorm of three rows, its start, the return of its
 * wait and its end, in that order, all with the one launch's grid. */
static void test_trace(void **state) {
        CudaTraceRec rec[64];
        size_t n = 99;
        int r = cuda_trace_take(rec, ELEMENTSOF(rec), &n);

        if (r == -EOPNOTSUPP) {
                assert_int_equal(n, 0);
                return;
        }
        assert_int_equal(r, 0); /* emptied the log */
        float x[3 * 256], w[256];
        for (size_t i = 0; i < ELEMENTSOF(x); i++)
                x[i] = frnd();
        for (size_t i = 0; i < ELEMENTSOF(w); i++)
                w[i] = frnd();
        float *dx = dev_upload(x, sizeof(x)), *dw = dev_upload(w, sizeof(w)), *dy = dev_poison(sizeof(x));
        assert_int_equal(cuda_rmsnorm(NULL, dx, dw, 256, 3, 1e-5f, dy, NULL, NULL), 0);
        assert_int_equal(cuda_sync(NULL), 0);
        assert_int_equal(cuda_trace_take(rec, ELEMENTSOF(rec), &n), 0);
        assert_int_equal(n, 9);
        for (uint32_t b = 0; b < 3; b++) {
                unsigned long long t[3] = {0};
                unsigned seen = 0;
                for (size_t i = 0; i < n; i++) {
                        if (rec[i].block != b)
                                continue;
                        assert_true(rec[i].grid == rec[0].grid);
                        unsigned k = rec[i].tag & CUDA_TRACE_START ? 0 : rec[i].tag & CUDA_TRACE_WAITED ? 1 : 2;
                        assert_int_equal(rec[i].tag & 0xff, k == 1 ? 0 : CUDA_TRACE_NORM);
                        t[k] = rec[i].t;
                        seen |= 1u << k;
                }
                assert_int_equal(seen, 7);
                assert_true(t[0] <= t[1] && t[1] <= t[2]);
        }
        cuda_free(dx), cuda_free(dw), cuda_free(dy);
}

/* cuda_q8_pos(): each K layout takes every row length into its buffer (cuda_q8_bytes()) one to one, moves
 * pieces of 16, and keeps each chunk of 2048 in its place. */
static void test_q8_layouts(void **state) {
        const uint32_t ns[] = {256, 2048, 2816, 4096, 11008};
        for (size_t t = 0; t < ELEMENTSOF(ns); t++) {
                const uint32_t n = ns[t];
                for (int l = CUDA_Q8_K4; l <= CUDA_Q8_K6; l++) {
                        const size_t nb = cuda_q8_bytes(n, (CudaQ8Layout)l);
                        uint8_t *seen = calloc(nb, 1);
                        assert_int_equal(nb % 2048, 0);
                        assert_true(nb >= n && nb < n + 2048);
                        for (uint32_t e = 0; e < n; e++) {
                                const uint32_t p = cuda_q8_pos(e, (CudaQ8Layout)l);
                                assert_true(p < nb && !seen[p]);
                                assert_int_equal(p % 16, e % 16);
                                assert_int_equal(p / 2048, e / 2048);
                                seen[p] = 1;
                        }
                        free(seen);
                }
                assert_int_equal(cuda_q8_pos(77, CUDA_Q8_PLAIN), 77);
                assert_int_equal(cuda_q8_bytes(n, CUDA_Q8_PLAIN), n);
        }
        /* A Q4_K lane p of block 0 holds elements 64 p ..; its piece k lies 512 k on. */
        assert_int_equal(cuda_q8_pos(64 + 16, CUDA_Q8_K4), 512 + 16);
        assert_int_equal(cuda_q8_pos(256 + 2 * 64, CUDA_Q8_K4), 16 * 6);
        /* Q6_K lane 1 of block 0: elements 16 .. 31 of each group of 32 in the first half. */
        assert_int_equal(cuda_q8_pos(32 + 16, CUDA_Q8_K6), 512 + 16);
        assert_int_equal(cuda_q8_layout_for(GGML_TYPE_Q5_K), CUDA_Q8_K4);
        assert_int_equal(cuda_q8_layout_for(GGML_TYPE_Q3_K), CUDA_Q8_K6);
        assert_int_equal(cuda_q8_layout_for(GGML_TYPE_Q8_0), CUDA_Q8_PLAIN);
}

static void test_swiglu_gemm(void **state) {
        const uint32_t n_ff = 200, n_tok = 7, rows = 96, cols = 256, nt = 40;
        float *gu = malloc(n_tok * 2 * n_ff * 4);

        for (uint32_t i = 0; i < n_tok * 2 * n_ff; i++)
                gu[i] = frnd() * 4;
        float *dgu = dev_upload(gu, n_tok * 2 * n_ff * 4);
        uint16_t *dh = dev_poison(n_tok * n_ff * 2), *h = malloc(n_tok * n_ff * 2);
        assert_int_equal(cuda_swiglu_f16(NULL, dgu, n_ff, n_tok, dh), 0);
        assert_int_equal(cuda_download(h, dh, n_tok * n_ff * 2), 0);
        for (uint32_t t = 0; t < n_tok; t++)
                for (uint32_t j = 0; j < n_ff; j++) {
                        double g = gu[t * 2 * n_ff + j], u = gu[t * 2 * n_ff + n_ff + j];
                        double want = g / (1 + exp(-g)) * u;
                        assert_true(fabs(h2f(h[t * n_ff + j]) - want) <= 2e-3 * fabs(want) + 1e-4);
                }

        /* GEMM: y = x w^T (+ y). */
        uint16_t *w16 = malloc(rows * cols * 2), *x16 = malloc(nt * cols * 2);
        float *y0 = malloc(nt * rows * 4);
        double *ref = malloc(nt * rows * sizeof(double));
        for (uint32_t i = 0; i < rows * cols; i++)
                w16[i] = f2h(frnd());
        for (uint32_t i = 0; i < nt * cols; i++)
                x16[i] = f2h(frnd());
        for (uint32_t i = 0; i < nt * rows; i++)
                y0[i] = frnd();
        for (uint32_t t = 0; t < nt; t++)
                for (uint32_t r = 0; r < rows; r++) {
                        double s = y0[t * rows + r];
                        for (uint32_t c = 0; c < cols; c++)
                                s += (double)h2f(w16[r * cols + c]) * h2f(x16[t * cols + c]);
                        ref[t * rows + r] = s;
                }
        CudaBlas *b;
        assert_int_equal(cuda_blas_new(NULL, &b), 0);
        uint16_t *dw = dev_upload(w16, rows * cols * 2), *dx = dev_upload(x16, nt * cols * 2);
        float *dy = dev_upload(y0, nt * rows * 4);
        assert_int_equal(cuda_gemm_f16(b, dw, rows, cols, dx, nt, dy, true), 0);
        float *y = download_f32(dy, nt * rows);
        assert_true(rel_err(y, ref, nt * rows) < 1e-5);
        cuda_blas_free(b);

        /* argmax: ties go to the first. */
        float v[3000];
        for (int i = 0; i < 3000; i++)
                v[i] = frnd();
        v[1234] = 5.0f, v[2345] = 5.0f;
        float *dv = dev_upload(v, sizeof(v));
        int32_t *dr = dev_poison(8), res[2], pos0 = 10;
        int32_t *dpos = dev_upload(&pos0, 4), *dhist = dev_poison(64);
        assert_int_equal(cuda_argmax(NULL, dv, 3000, dr, dpos, dhist, 16), 0);
        assert_int_equal(cuda_download(res, dr, 4), 0);
        assert_int_equal(cuda_download(&res[1], dpos, 4), 0);
        assert_int_equal(res[0], 1234);
        assert_int_equal(res[1], 11);
        int32_t hist[16];
        assert_int_equal(cuda_download(hist, dhist, 64), 0);
        assert_int_equal(hist[11], 1234);

        free(gu), free(h), free(w16), free(x16), free(y0), free(ref), free(y);
        cuda_free(dgu), cuda_free(dh), cuda_free(dw), cuda_free(dx), cuda_free(dy), cuda_free(dv), cuda_free(dr);
        cuda_free(dpos), cuda_free(dhist);
}

/* ---- RoPE, KV store and attention ---- */

static void rope_ref(double *x, uint32_t hd, uint32_t n_rot, float base, int p) {
        for (uint32_t j = 0; 2 * j < n_rot; j++) {
                double th = p * pow(base, -(double)(2 * j) / n_rot), c = cos(th), s = sin(th);
                double x0 = x[2 * j], x1 = x[2 * j + 1];
                x[2 * j] = x0 * c - x1 * s;
                x[2 * j + 1] = x0 * s + x1 * c;
        }
}

/* Causal attention of every token in double: rotated queries qref (n_pos, n_head * hd), keys and values
 * (n_pos, n_kv * hd) as the cache holds them; returns (n_pos, n_head * hd). */
static double *attention_ref(const double *qref, const double *kd, const double *vd, uint32_t n_pos,
                             uint32_t n_head, uint32_t n_kv, uint32_t hd) {
        const uint32_t nq = n_head * hd, nk = n_kv * hd;
        double *ref = malloc((size_t)n_pos * nq * sizeof(double)), *sc = malloc(n_pos * sizeof(double));

        assert_non_null(ref), assert_non_null(sc);
        for (uint32_t t = 0; t < n_pos; t++)
                for (uint32_t h = 0; h < n_head; h++) {
                        uint32_t kvh = h / (n_head / n_kv);
                        double mx = -1e300, l = 0;
                        for (uint32_t j = 0; j <= t; j++) {
                                double s = 0;
                                for (uint32_t d = 0; d < hd; d++)
                                        s += qref[(size_t)t * nq + h * hd + d] * kd[(size_t)j * nk + kvh * hd + d];
                                sc[j] = s / sqrt((double)hd);
                                mx = fmax(mx, sc[j]);
                        }
                        for (uint32_t j = 0; j <= t; j++)
                                l += (sc[j] = exp(sc[j] - mx));
                        for (uint32_t d = 0; d < hd; d++) {
                                double o = 0;
                                for (uint32_t j = 0; j <= t; j++)
                                        o += sc[j] * vd[(size_t)j * nk + kvh * hd + d];
                                ref[(size_t)t * nq + h * hd + d] = o / l;
                        }
                }
        free(sc);
        return ref;
}

/* A decode attention check's device state: random q, k, v for n_pos tokens, caches of row bytes a position,
 * zeroed split scratch, and the prompt (every token but the last) stored into the caches already. */
typedef struct AttnRun {
        float *qkv, *dqkv, *dlast_qkv, *dout;
        uint8_t *kc, *vc;
        int32_t *dpos, *dlast;
        void *scratch;
        CudaQ8 oq;
} AttnRun;

static void attn_run_new(AttnRun *r, const CudaAttnShape *a, uint32_t n_pos, size_t row) {
        const uint32_t nq = a->n_head * a->head_dim, stride = nq + 2 * a->n_head_kv * a->head_dim;
        const int32_t zero = 0, last = (int32_t)n_pos - 1;
        const size_t ss = cuda_attn_scratch_size(a);

        memset(r, 0, sizeof(*r));
        r->qkv = malloc((size_t)n_pos * stride * 4);
        assert_non_null(r->qkv);
        for (size_t i = 0; i < (size_t)n_pos * stride; i++)
                r->qkv[i] = frnd() * 2;
        r->dqkv = dev_upload(r->qkv, (size_t)n_pos * stride * 4);
        r->dlast_qkv = dev_upload(r->qkv + (size_t)last * stride, stride * 4);
        r->kc = dev_poison(a->n_ctx * row), r->vc = dev_poison(a->n_ctx * row);
        r->dpos = dev_upload(&zero, 4), r->dlast = dev_upload(&last, 4);
        assert_int_equal(cuda_malloc(ss, &r->scratch), 0);
        uint8_t *zeros = calloc(1, ss);
        assert_int_equal(cuda_upload(r->scratch, zeros, ss), 0);
        free(zeros);
        r->dout = dev_poison(nq * 4);
        assert_int_equal(cuda_malloc(cuda_q8_bytes(nq, CUDA_Q8_K4), (void **)&r->oq.qs), 0);
        assert_int_equal(cuda_malloc(nq / 32 * 8 + 8, (void **)&r->oq.ds), 0);
        assert_int_equal(cuda_rope_store(NULL, a, r->dqkv, stride, n_pos - 1, r->dpos, r->kc, r->vc), 0);
}

static void attn_run_free(AttnRun *r) {
        free(r->qkv);
        cuda_free(r->dqkv), cuda_free(r->dlast_qkv), cuda_free(r->dout), cuda_free(r->kc), cuda_free(r->vc);
        cuda_free(r->dpos), cuda_free(r->dlast), cuda_free(r->scratch), cuda_free(r->oq.qs), cuda_free(r->oq.ds);
}

static void check_attention(uint32_t hd, uint32_t n_head, uint32_t n_kv, uint32_t n_pos) {
        const CudaAttnShape a = {n_head, n_kv, hd, hd, 10000.0f, 1024};
        const uint32_t nq = n_head * hd, nk = n_kv * hd, stride = nq + 2 * nk, npre = n_pos - 1;
        AttnRun r;

        /* All positions but the last as a prompt batch; the last as one decode token, twice (the split
         * counters must come back to zero), which rotates and stores its own k and v: first right behind
         * the prompt's kernel (waiting for it before reading anything), then, once the downloads have
         * synchronized, staging the cache before waiting (early, as the decode graph runs it). */
        attn_run_new(&r, &a, n_pos, (size_t)nk * 2);
        float *qkv = r.qkv, *dqkv = r.dqkv, *dlast_qkv = r.dlast_qkv, *dout = r.dout;
        uint8_t *kc = r.kc, *vc = r.vc;
        int32_t *dlast = r.dlast;
        void *scratch = r.scratch;
        const size_t ss = cuda_attn_scratch_size(&a);
        CudaQ8 oq = r.oq;
        float *outs[2];
        /* The second time, where the output makes whole 256-blocks, in both K layouts at once. */
        const bool lay = nq % 256 == 0;
        if (lay)
                assert_int_equal(cuda_malloc(cuda_q8_bytes(nq, CUDA_Q8_K6), (void **)&oq.qs2), 0);
        for (int rep = 0; rep < 2; rep++) {
                oq.layout = rep == 1 && lay ? CUDA_Q8_K4 : CUDA_Q8_PLAIN;
                oq.layout2 = CUDA_Q8_K6;
                assert_int_equal(cuda_attn_decode(NULL, &a, dlast_qkv, dlast, kc, vc, scratch, dout,
                                                  hd % 32 == 0 ? &oq : NULL, rep == 1),
                                 0);
                outs[rep] = download_f32(dout, nq);
                if (hd % 32 == 0) {
                        const size_t nb = cuda_q8_bytes(nq, (CudaQ8Layout)oq.layout);
                        int8_t *qs = malloc(nb), *qs2 = malloc(cuda_q8_bytes(nq, CUDA_Q8_K6));
                        float *ds = malloc(nq / 32 * 8);
                        assert_int_equal(cuda_download(qs, oq.qs, nb), 0);
                        assert_int_equal(cuda_download(ds, oq.ds, nq / 32 * 8), 0);
                        if (lay)
                                assert_int_equal(cuda_download(qs2, oq.qs2, cuda_q8_bytes(nq, CUDA_Q8_K6)), 0);
                        for (uint32_t i = 0; i < nq; i++) {
                                const int8_t v = qs[cuda_q8_pos(i, (CudaQ8Layout)oq.layout)];
                                assert_true(fabsf(v * ds[2 * (i / 32)] - outs[rep][i]) <= 0.5001f * ds[2 * (i / 32)] + 1e-7f);
                                if (lay)
                                        assert_int_equal(qs2[cuda_q8_pos(i, CUDA_Q8_K6)], v);
                        }
                        free(qs), free(qs2), free(ds);
                }
        }
        cuda_free(oq.qs2);
        oq.qs2 = NULL;
        uint16_t *kh = malloc((size_t)n_pos * nk * 2), *vh = malloc((size_t)n_pos * nk * 2);
        assert_int_equal(cuda_download(kh, kc, (size_t)n_pos * nk * 2), 0);
        assert_int_equal(cuda_download(vh, vc, (size_t)n_pos * nk * 2), 0);

        /* Rotated q (and k, checked against the cache) in double on the host. */
        double *qref = malloc((size_t)n_pos * nq * sizeof(double)), x[512];
        for (uint32_t t = 0; t < n_pos; t++) {
                for (uint32_t h = 0; h < n_head + n_kv; h++) {
                        const float *src = qkv + (size_t)t * stride + h * hd;
                        for (uint32_t d = 0; d < hd; d++)
                                x[d] = src[d];
                        rope_ref(x, hd, hd, 10000.0f, (int)t);
                        for (uint32_t d = 0; d < hd; d++) {
                                if (h < n_head) {
                                        qref[(size_t)t * nq + h * hd + d] = x[d];
                                        continue;
                                }
                                float got = h2f(kh[(size_t)t * nk + (h - n_head) * hd + d]);
                                assert_true(fabs(got - x[d]) <= 2e-3 * fabs(x[d]) + 2e-3);
                        }
                }
                for (uint32_t i = 0; i < nk; i++) {
                        float want = qkv[(size_t)t * stride + nq + nk + i];
                        assert_true(fabsf(h2f(vh[(size_t)t * nk + i]) - want) <= 5e-4f * fabsf(want) + 1e-7f);
                }
        }

        /* Reference attention for every token from the cached k and v. */
        double *kd = malloc((size_t)n_pos * nk * sizeof(double)), *vd = malloc((size_t)n_pos * nk * sizeof(double));
        for (size_t i = 0; i < (size_t)n_pos * nk; i++)
                kd[i] = h2f(kh[i]), vd[i] = h2f(vh[i]);
        double *ref = attention_ref(qref, kd, vd, n_pos, n_head, n_kv, hd);
        free(kd), free(vd);
        for (int rep = 0; rep < 2; rep++) {
                double e = rel_err(outs[rep], ref + (size_t)npre * nq, nq);
                print_message("# attention decode hd %u, %u positions: rel err %.2e\n", hd, n_pos, e);
                assert_true(e < 1e-4);
                free(outs[rep]);
        }

        /* Batched decode: two sequences with caches of their own sizes (layer 1 of two), at positions npre and
         * t1, each taking the token of its position (its k and v stored again, unchanged); twice. */
        {
                const uint32_t t1 = npre / 2, n_ctx[2] = {a.n_ctx, n_pos + 5};
                CudaSeqSlot slots[2];
                uint16_t *caches[4];
                for (int b = 0; b < 2; b++) {
                        size_t layer = (size_t)n_ctx[b] * nk;
                        caches[2 * b] = dev_poison(2 * layer * 2);
                        caches[2 * b + 1] = dev_poison(2 * layer * 2);
                        assert_int_equal(cuda_upload(caches[2 * b] + layer, kh, (size_t)n_pos * nk * 2), 0);
                        assert_int_equal(cuda_upload(caches[2 * b + 1] + layer, vh, (size_t)n_pos * nk * 2), 0);
                        slots[b] = (CudaSeqSlot){caches[2 * b], caches[2 * b + 1], NULL, n_ctx[b],
                                                 (int32_t)(b == 0 ? npre : t1)};
                }
                float *bqkv = malloc(2 * stride * 4);
                memcpy(bqkv, qkv + (size_t)npre * stride, stride * 4);
                memcpy(bqkv + stride, qkv + (size_t)t1 * stride, stride * 4);
                float *dbqkv = dev_upload(bqkv, 2 * stride * 4), *dbout = dev_poison(2 * nq * 4);
                CudaSeqSlot *dslots = dev_upload(slots, sizeof(slots));
                size_t bss = (ss + 15) / 16 * 16 * 2;
                void *bscratch;
                assert_int_equal(cuda_malloc(bss, &bscratch), 0);
                uint8_t *z = calloc(1, bss);
                assert_int_equal(cuda_upload(bscratch, z, bss), 0);
                free(z);
                for (int rep = 0; rep < 2; rep++) {
                        assert_int_equal(cuda_attn_decode_batch(NULL, &a, dbqkv, 2, dslots, 1, bscratch, dbout,
                                                                NULL, rep == 1),
                                         0);
                        float *bo = download_f32(dbout, 2 * nq);
                        double e0 = rel_err(bo, ref + (size_t)npre * nq, nq), e1 = rel_err(bo + nq, ref + (size_t)t1 * nq, nq);
                        print_message("# batched attention decode hd %u: rel err %.2e (%u positions), %.2e (%u)\n", hd,
                                      e0, npre + 1, e1, t1 + 1);
                        assert_true(e0 < 1e-4 && e1 < 1e-4);
                        free(bo);
                }
                assert_int_equal(cuda_attn_decode_batch(NULL, &a, dbqkv, 0, dslots, 1, bscratch, dbout, NULL, false),
                                 -EINVAL);
                for (int i = 0; i < 4; i++)
                        cuda_free(caches[i]);
                cuda_free(dbqkv), cuda_free(dbout), cuda_free(dslots), cuda_free(bscratch);
                free(bqkv);
        }

        /* Prompt attention of positions 3 .. npre - 1 (earlier ones are in the cache; q rotated in place). */
        int32_t three = 3;
        int32_t *d3 = dev_upload(&three, 4);
        float *dpo = dev_poison((size_t)(npre - 3) * nq * 4);
        assert_int_equal(cuda_attn_prefill(NULL, &a, dqkv + 3 * stride, stride, npre - 3, d3, kc, vc, dpo), 0);
        float *po = download_f32(dpo, (size_t)(npre - 3) * nq);
        double e = rel_err(po, ref + 3 * nq, (size_t)(npre - 3) * nq);
        print_message("# attention prefill hd %u, %u positions: rel err %.2e\n", hd, npre, e);
        assert_true(e < 1e-4);

        free(kh), free(vh), free(qref), free(ref), free(po);
        cuda_free(d3), cuda_free(dpo);
        attn_run_free(&r);
}

/* One element of a Q8_0 cache row (blocks of 32: a half scale, 32 int8). */
static double q8_elem(const uint8_t *row, uint32_t i) {
        const uint8_t *b = row + (size_t)(i / 32) * 34;
        uint16_t h;
        memcpy(&h, b, 2);
        return (double)h2f(h) * (int8_t)b[2 + i % 32];
}

/*
 * The same with a Q8_0 cache: the prompt's k (rotated) and v and the decode token's stored within the 8-bit
 * rounding of the host's values, then the decode and prompt attention against a host reference over the
 * cache as stored.
 */
static void check_attention_q8(uint32_t hd, uint32_t n_head, uint32_t n_kv, uint32_t n_pos) {
        CudaAttnShape a = {n_head, n_kv, hd, hd, 10000.0f, 512};
        const uint32_t nq = n_head * hd, nk = n_kv * hd, stride = nq + 2 * nk, npre = n_pos - 1;
        const size_t row = (size_t)nk / 32 * 34;
        AttnRun r;

        a.kv_q8 = true;
        attn_run_new(&r, &a, n_pos, row);
        float *qkv = r.qkv, *dqkv = r.dqkv, *dlast_qkv = r.dlast_qkv, *dout = r.dout;
        uint8_t *kc = r.kc, *vc = r.vc;
        int32_t *dlast = r.dlast;
        void *scratch = r.scratch;
        CudaQ8 oq = r.oq;

        assert_int_equal(cuda_sync(NULL), 0); /* the prompt's stores are done: the early path may stage */
        assert_int_equal(cuda_attn_decode(NULL, &a, dlast_qkv, dlast, kc, vc, scratch, dout, &oq, true), 0);
        float *out = download_f32(dout, nq);
        uint8_t *kh = malloc(n_pos * row), *vh = malloc(n_pos * row);
        assert_int_equal(cuda_download(kh, kc, n_pos * row), 0);
        assert_int_equal(cuda_download(vh, vc, n_pos * row), 0);

        /* The cache against the host's rotated k and v: within half a step of each block's scale (the scale
         * itself a half float). */
        double *qref = malloc((size_t)n_pos * nq * sizeof(double)), x[512];
        for (uint32_t t = 0; t < n_pos; t++)
                for (uint32_t h = 0; h < n_head + 2 * n_kv; h++) {
                        const float *src = qkv + (size_t)t * stride + h * hd;
                        for (uint32_t d = 0; d < hd; d++)
                                x[d] = src[d];
                        if (h < n_head + n_kv)
                                rope_ref(x, hd, hd, 10000.0f, (int)t);
                        for (uint32_t b = 0; h >= n_head && b < hd / 32; b++) {
                                double amax = 0;
                                for (int i = 0; i < 32; i++)
                                        amax = fmax(amax, fabs(x[32 * b + i]));
                                for (int i = 0; i < 32; i++) {
                                        uint32_t e = (h - n_head) % n_kv * hd + 32 * b + i;
                                        const uint8_t *cached = (h < n_head + n_kv ? kh : vh) + (size_t)t * row;
                                        assert_true(fabs(q8_elem(cached, e) - x[32 * b + i]) <= amax / 254 * 1.01 + 1e-6);
                                }
                        }
                        for (uint32_t d = 0; h < n_head && d < hd; d++)
                                qref[(size_t)t * nq + h * hd + d] = x[d];
                }

        /* Reference attention over the cache as stored. */
        double *kd = malloc((size_t)n_pos * nk * sizeof(double)), *vd = malloc((size_t)n_pos * nk * sizeof(double));
        for (uint32_t t = 0; t < n_pos; t++)
                for (uint32_t i = 0; i < nk; i++)
                        kd[(size_t)t * nk + i] = q8_elem(kh + (size_t)t * row, i), vd[(size_t)t * nk + i] = q8_elem(vh + (size_t)t * row, i);
        double *ref = attention_ref(qref, kd, vd, n_pos, n_head, n_kv, hd);
        free(kd), free(vd);
        double e = rel_err(out, ref + (size_t)npre * nq, nq);
        print_message("# attention decode, q8_0 cache, hd %u, %u positions: rel err %.2e\n", hd, n_pos, e);
        assert_true(e < 1e-4);

        /* Prompt attention of positions 3 .. npre - 1 from the same cache. */
        int32_t three = 3;
        int32_t *d3 = dev_upload(&three, 4);
        float *dpo = dev_poison((size_t)(npre - 3) * nq * 4);
        assert_int_equal(cuda_attn_prefill(NULL, &a, dqkv + 3 * stride, stride, npre - 3, d3, kc, vc, dpo), 0);
        float *po = download_f32(dpo, (size_t)(npre - 3) * nq);
        e = rel_err(po, ref + 3 * nq, (size_t)(npre - 3) * nq);
        print_message("# attention prefill, q8_0 cache, hd %u, %u positions: rel err %.2e\n", hd, npre, e);
        assert_true(e < 1e-4);

        free(out), free(kh), free(vh), free(qref), free(ref), free(po);
        cuda_free(d3), cuda_free(dpo);
        attn_run_free(&r);
}

static void test_attention(void **state) {
        check_attention(128, 4, 2, 100);  /* one split */
        check_attention(128, 4, 1, 700);  /* six splits, merged */
        check_attention(64, 3, 1, 300);
        check_attention(8, 8, 4, 40);     /* stories260K's heads */
        check_attention_q8(128, 4, 2, 100);
        check_attention_q8(64, 4, 1, 300); /* three splits */
        check_attention_q8(96, 2, 1, 150); /* blocks of a head not whole words: read in place */
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_matvec),
                cmocka_unit_test(test_matvec_batch),
                cmocka_unit_test(test_matvec_mixed),
                cmocka_unit_test(test_matvec_errors),
                cmocka_unit_test(test_dequant),
                cmocka_unit_test(test_rmsnorm),
                cmocka_unit_test(test_q8_layouts),
                cmocka_unit_test(test_swiglu_gemm),
                cmocka_unit_test(test_attention),
                cmocka_unit_test(test_trace),
        };

        return cmocka_run_group_tests(tests, setup, NULL);
}
