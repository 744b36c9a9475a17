/* SPDX-License-Identifier: MIT */
/*
 * bench-cuda: decode (tg) and prompt (pp) speed of the CUDA backend on the exact tensor shapes of known models,
 * with random but valid weights made on the device, next to the bandwidth bound of decoding (bytes one step
 * reads over the card's measured copy bandwidth).
 *
 *   bench-cuda --synthetic llama2-7b:q4_K_M [--tg 128] [--pp 512] [--reps 5] [--device 0] [--batch 1,2,4,8,16]
 *   bench-cuda --kernels      (achieved bandwidth of the decode matrix-vector kernel per type)
 *
 * Mixes follow llama-quantize's choices per tensor: q4_0 (output Q6_K), q4_K_M (output Q6_K; attn_v and
 * ffn_down Q6_K in the first and last eighth of the layers and every third between), q8_0, f16, and any
 * single type name (q6_K, q5_0, ...) for every matrix with a Q6_K output.
 *
 * --kv q8_0: KV caches in Q8_0 rather than F16.
 * --batch B,...: also the aggregate decode speed of B sequences decoded together (cuda_llama_generate_greedy_batch:
 * tg tokens each, every weight read once per step for all of them), for each B listed.
 */

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "engine.h"
#include "cuda/engine-cuda.h"

typedef struct Shape {
        const char *name;
        CudaLlamaConfig c;
} Shape;

static const Shape shapes[] = {
        {"llama2-7b", {32000, 4096, 32, 32, 32, 128, 128, 11008, 10000.0f, 1e-5f}},
        {"llama3-8b", {128256, 4096, 32, 32, 8, 128, 128, 14336, 500000.0f, 1e-5f}},
};

static uint32_t arg_tg = 128, arg_pp = 512, arg_reps = 5;
static bool arg_breakdown = false;
static const char *arg_batch = NULL;
static bool arg_kv_q8 = false;
static const char *arg_trace = NULL;
static int arg_device = 0;

/* llama-quantize's use_more_bits(): the layers whose attn_v and ffn_down get more bits in *_M mixes. */
static bool more_bits(uint32_t i, uint32_t n) {
        return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static int mix_type(const char *mix, CudaWeight w, uint32_t layer, uint32_t n_layer, uint32_t *ret) {
        int base;

        if (w == CUDA_W_OUTPUT_NORM || w == CUDA_W_ATTN_NORM || w == CUDA_W_FFN_NORM) {
                *ret = GGML_TYPE_F32;
                return 0;
        }
        if (strcasecmp(mix, "q4_K_M") == 0) {
                if (w == CUDA_W_OUTPUT || ((w == CUDA_W_V || w == CUDA_W_DOWN) && more_bits(layer, n_layer)))
                        *ret = GGML_TYPE_Q6_K;
                else
                        *ret = GGML_TYPE_Q4_K;
                return 0;
        }
        base = ggml_type_from_name(mix);
        if (base < 0 || !cuda_type_supported((uint32_t)base))
                return -EINVAL;
        *ret = (uint32_t)base;
        /* Every quantized mix but q8_0 keeps the output matrix at Q6_K. */
        if (w == CUDA_W_OUTPUT && ggml_type_info((uint32_t)base)->quantized && base != GGML_TYPE_Q8_0)
                *ret = GGML_TYPE_Q6_K;
        return 0;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n) {
        qsort(v, n, sizeof(double), cmp_double);
        return v[n / 2];
}

/* Aggregate decode speed of B sequences at once for each B in arg_batch, next to single-sequence decoding's
 * bound (the weights are read once per step whatever B is). */
static int run_batched(CudaLlama *m, double bound) {
        _cleanup_free_ char *list = strdup(arg_batch);
        char *save = NULL;
        int r = 0;

        if (!list)
                return log_oom();
        for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                uint64_t b;
                if (safe_atou64(tok, &b) < 0 || b == 0 || b > 256) {
                        fprintf(stderr, "Invalid batch size '%s'.\n", tok);
                        return -EINVAL;
                }
                CudaKv **kvs = calloc(b, sizeof(CudaKv *));
                int32_t *starts = calloc(b, sizeof(int32_t));
                double rate[64];
                unsigned reps = arg_reps > 64 ? 64 : arg_reps;
                if (!kvs || !starts) {
                        free(kvs), free(starts);
                        return log_oom();
                }
                for (uint64_t i = 0; i < b && r >= 0; i++) {
                        starts[i] = (int32_t)(1 + 7 * i);
                        r = cuda_kv_new(m, arg_tg + 16, &kvs[i]);
                }
                for (unsigned k = 0; k <= reps && r >= 0; k++) {
                        for (uint64_t i = 0; i < b && r >= 0; i++)
                                r = cuda_kv_truncate(kvs[i], 0);
                        uint64_t t0 = now_ns();
                        if (r >= 0)
                                r = cuda_llama_generate_greedy_batch(m, kvs, starts, (uint32_t)b, arg_tg, NULL);
                        uint64_t t1 = now_ns();
                        if (k > 0)
                                rate[k - 1] = (double)b * arg_tg / ((t1 - t0) * 1e-9);
                }
                if (r >= 0) {
                        double med = median(rate, reps);
                        printf("batch %3u: tg%u %.1f tok/s in all, %.1f per sequence, %.1f us per step "
                               "(%.2fx the single-sequence bound)\n", (unsigned)b, arg_tg, med, med / b, 1e6 * b / med,
                               med / bound);
                }
                for (uint64_t i = 0; i < b; i++)
                        cuda_kv_free(kvs[i]);
                free(kvs), free(starts);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The timeline of TRACE_STEPS decode steps from position 64 (or --tg; builds with -DQUANTD_CUDA_TRACE): one line a
 * record, "gridid ns block tag" (CudaTraceRec), for bench/cuda-trace.py. */
#define TRACE_STEPS 1
static int write_trace(CudaLlama *m, CudaKv *kv) {
        size_t max = (size_t)1 << 22, n = 0;
        CudaTraceRec *rec = calloc(max, sizeof(*rec));
        FILE *f = NULL;
        int r;

        if (!rec)
                return log_oom();
        if ((r = cuda_kv_truncate(kv, 0)) < 0 || (r = cuda_llama_generate_greedy(m, kv, 1, arg_tg < 64 ? arg_tg : 64, NULL)) < 0 ||
            (r = cuda_trace_take(rec, max, &n)) < 0 ||
            (r = cuda_llama_generate_greedy(m, kv, 1, TRACE_STEPS, NULL)) < 0 || (r = cuda_trace_take(rec, max, &n)) < 0) {
                if (r == -EOPNOTSUPP)
                        fprintf(stderr, "This build keeps no timeline: build with nvcc -DQUANTD_CUDA_TRACE "
                                        "(CUDA_EXTRA_FLAGS=-DQUANTD_CUDA_TRACE bench/build-cuda.sh).\n");
                else
                        fprintf(stderr, "Failed to trace decode steps: %s\n", strerror(-r));
                goto out;
        }
        if (!(f = fopen(arg_trace, "we"))) {
                r = -errno;
                fprintf(stderr, "Failed to create %s: %m\n", arg_trace);
                goto out;
        }
        for (size_t i = 0; i < n; i++)
                fprintf(f, "%llu %llu %u %u\n", rec[i].grid, rec[i].t, rec[i].block, rec[i].tag);
        if (fclose(f) != 0) {
                r = -errno;
                fprintf(stderr, "Failed to write %s: %m\n", arg_trace);
                goto out;
        }
        printf("trace: %zu records of %u decode steps in %s\n", n, TRACE_STEPS, arg_trace);
        r = 0;
out:
        free(rec);
        return r;
}

static int run_synthetic(const char *spec) {
        _cleanup_free_ char *name = strdup(spec);
        const Shape *sh = NULL;
        CudaLlama *m = NULL;
        CudaKv *kv = NULL;
        char dev_name[256];
        int driver, r;
        double bw;

        if (!name)
                return log_oom();
        char *mix = strchr(name, ':');
        if (!mix) {
                fprintf(stderr, "Expected MODEL:MIX, e.g. llama2-7b:q4_K_M, got '%s'.\n", spec);
                return -EINVAL;
        }
        *mix++ = 0;
        for (size_t i = 0; i < ELEMENTSOF(shapes); i++)
                if (streq(shapes[i].name, name))
                        sh = &shapes[i];
        if (!sh) {
                fprintf(stderr, "Unknown model shape '%s': known are llama2-7b and llama3-8b.\n", name);
                return -EINVAL;
        }
        CudaLlamaConfig cfg = sh->c;
        const CudaLlamaConfig *c = &cfg;

        cfg.kv_q8 = arg_kv_q8;

        if ((r = cuda_device_describe(arg_device, dev_name, sizeof(dev_name), &driver)) < 0) {
                fprintf(stderr, "No CUDA device %d: %s\n", arg_device, strerror(-r));
                return r;
        }
        if ((r = cuda_copy_bandwidth(arg_device, (size_t)1 << 30, 9, &bw)) < 0) {
                fprintf(stderr, "Failed to measure the copy bandwidth: %s\n", strerror(-r));
                return r;
        }
        if ((r = cuda_llama_new(arg_device, c, 0, c->n_layer, &m)) < 0) {
                fprintf(stderr, "Failed to set up the model: %s\n", strerror(-r));
                return r;
        }
        for (uint32_t l = 0; l < c->n_layer; l++)
                for (int w = 0; w < _CUDA_W_MAX; w++) {
                        uint32_t type, cols, rows;
                        if (w < CUDA_W_ATTN_NORM && l > 0)
                                continue;
                        if ((r = mix_type(mix, (CudaWeight)w, l, c->n_layer, &type)) < 0) {
                                fprintf(stderr, "Unknown or unsupported mix '%s'.\n", mix);
                                goto out;
                        }
                        cuda_llama_weight_shape(c, (CudaWeight)w, &cols, &rows);
                        if ((r = cuda_llama_set_weight(m, (CudaWeight)w, l, type, cols, rows, NULL)) < 0) {
                                fprintf(stderr, "Failed to make weight %d of layer %u: %s\n", w, l, strerror(-r));
                                goto out;
                        }
                }
        if ((r = cuda_kv_new(m, arg_pp + arg_tg + 16, &kv)) < 0) {
                fprintf(stderr, "Failed to make the KV cache: %s\n", strerror(-r));
                goto out;
        }
        uint64_t step = cuda_llama_step_bytes(m);
        double bound = bw / (double)step;
        printf("device: %s, driver %d.%d, copy bandwidth %.0f GB/s (read + write)\n", dev_name, driver / 1000,
               driver % 1000 / 10, bw / 1e9);
        printf("model: %s, weights %.3f GB on device, %llu bytes read per token, bound %.1f tok/s, %s KV cache\n",
               spec, cuda_llama_weight_bytes(m) / 1e9, (unsigned long long)step, bound, arg_kv_q8 ? "q8_0" : "f16");

        double tg[64], pp[64];
        unsigned reps = arg_reps > 64 ? 64 : arg_reps;
        int32_t *toks = calloc(arg_pp ? arg_pp : 1, sizeof(int32_t)), *out_toks = calloc(arg_tg + 1, 4);
        if (!toks || !out_toks) {
                free(toks), free(out_toks);
                r = log_oom();
                goto out;
        }
        for (uint32_t i = 0; i < arg_pp; i++)
                toks[i] = (int32_t)((i * 7919u + 1) % c->n_vocab);
        /* Warm-up (graph capture, cuBLAS handles), then timed repetitions. */
        for (unsigned i = 0; i <= reps && arg_tg; i++) {
                if ((r = cuda_kv_truncate(kv, 0)) < 0)
                        goto fail;
                uint64_t t0 = now_ns();
                if ((r = cuda_llama_generate_greedy(m, kv, 1, arg_tg, out_toks)) < 0)
                        goto fail;
                uint64_t t1 = now_ns();
                if (i > 0)
                        tg[i - 1] = arg_tg / ((t1 - t0) * 1e-9);
        }
        for (unsigned i = 0; i <= reps && arg_pp > 1; i++) {
                if ((r = cuda_kv_truncate(kv, 0)) < 0)
                        goto fail;
                uint64_t t0 = now_ns();
                if ((r = cuda_llama_forward(m, kv, toks, arg_pp, NULL)) < 0)
                        goto fail;
                uint64_t t1 = now_ns();
                if (i > 0)
                        pp[i - 1] = arg_pp / ((t1 - t0) * 1e-9);
        }
        if (arg_tg) {
                double med = median(tg, reps);
                /* A step at position p also reads the cache's p rows of every layer: (tg - 1) / 2 on average
                 * from an empty cache. The first bound leaves them out; at long contexts only the second
                 * means much. */
                double kv_read = (double)cuda_kv_bytes(c, c->n_layer, 1) * (arg_tg - 1) / 2.0;
                double bound_kv = bw / ((double)step + kv_read);
                printf("tg%u: %.1f tok/s, %.1f us/token (%.1f %% of the bound; min %.1f, max %.1f over %u)\n",
                       arg_tg, med, 1e6 / med, 100.0 * med / bound, tg[0], tg[reps - 1], reps);
                printf("  with the KV cache's reads (%.1f MB a token on average): bound %.1f tok/s, %.1f %% of it\n",
                       kv_read / 1e6, bound_kv, 100.0 * med / bound_kv);
        }
        if (arg_pp > 1) {
                double med = median(pp, reps);
                printf("pp%u: %.0f tok/s (min %.0f, max %.0f over %u)\n", arg_pp, med, pp[0], pp[reps - 1], reps);
        }
        /* Where a decode step's time goes: the same graph without the layers' small kernels, then without
         * their matrix-vector products (outputs meaningless, times indicative). */
        for (unsigned mask = 1; arg_breakdown && arg_tg && mask <= 2; mask++) {
                CudaKv *kv2 = NULL;
                cuda_llama_set_skip(m, mask);
                if ((r = cuda_kv_new(m, arg_tg + 16, &kv2)) < 0 ||
                    (r = cuda_llama_generate_greedy(m, kv2, 1, arg_tg, NULL)) < 0 || (r = cuda_kv_truncate(kv2, 0)) < 0) {
                        cuda_kv_free(kv2);
                        goto fail;
                }
                uint64_t t0 = now_ns();
                r = cuda_llama_generate_greedy(m, kv2, 1, arg_tg, NULL);
                uint64_t t1 = now_ns();
                cuda_kv_free(kv2);
                if (r < 0)
                        goto fail;
                printf("  without %s: %.1f us per token\n", mask == 1 ? "norms/attention/quantization" : "matvecs",
                       (t1 - t0) / 1e3 / arg_tg);
        }
        cuda_llama_set_skip(m, 0);
        if (arg_trace && (r = write_trace(m, kv)) < 0)
                goto fail;
        if (arg_batch && arg_tg && (r = run_batched(m, bound)) < 0)
                goto fail;
        free(toks), free(out_toks);
        r = 0;
        goto out;
fail:
        fprintf(stderr, "Failed to run the model: %s\n", strerror(-r));
        free(toks), free(out_toks);
out:
        cuda_kv_free(kv);
        cuda_llama_free(m);
        return r;
}

/* Achieved bandwidth of the decode matrix-vector kernel alone, per type, on the shapes of a 7B layer. Enough
 * copies of each matrix rotate that they do not fit in the L2 cache. */
static int run_kernels(void) {
        static const uint32_t types[] = {GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                                         GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K,
                                         GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_F16,  GGML_TYPE_BF16};
        static const uint32_t dims[][2] = {{4096, 4096}, {4096, 11008}, {11008, 4096}, {4096, 32000}};
        float *x = NULL, *y = NULL;
        CudaQ8 xq = {};
        int r;

        if ((r = cuda_malloc(11008 * 4, (void **)&x)) < 0 || (r = cuda_malloc(32000 * 4, (void **)&y)) < 0 ||
            (r = cuda_malloc(11008, (void **)&xq.qs)) < 0 || (r = cuda_malloc(11008 / 32 * 8, (void **)&xq.ds)) < 0)
                goto out;
        CudaMatrix xm = {GGML_TYPE_F32, 11008, 1, 11008 * 4, x};
        if ((r = cuda_fill_random(NULL, &xm, 7, 1.0f)) < 0 ||
            (r = cuda_quantize_q8(NULL, x, 11008, 1, &xq)) < 0)
                goto out;
        const CudaMvInput in = {x, &xq};
        printf("%-6s %-12s %10s %10s\n", "type", "cols x rows", "us/call", "GB/s");
        for (size_t t = 0; t < ELEMENTSOF(types); t++)
                for (size_t d = 0; d < ELEMENTSOF(dims); d++) {
                        CudaMatrix w[16];
                        uint64_t rb;
                        unsigned n = 0;
                        size_t stride;
                        (void)ggml_row_size(types[t], dims[d][0], &rb);
                        (void)cuda_row_stride(types[t], dims[d][0], &stride);
                        uint64_t bytes = rb * dims[d][1];
                        for (; n < 16 && n * bytes < 400000000ull; n++) {
                                void *p;
                                if ((r = cuda_malloc(stride * dims[d][1], &p)) < 0)
                                        goto out;
                                w[n] = (CudaMatrix){types[t], dims[d][0], dims[d][1], stride, p};
                                if ((r = cuda_fill_random(NULL, &w[n], n + 1, 0.01f)) < 0)
                                        goto out;
                        }
                        const unsigned calls = 400;
                        uint64_t t0 = 0;
                        for (unsigned i = 0; i < calls + 20; i++) {
                                if (i == 20) {
                                        if ((r = cuda_sync(NULL)) < 0)
                                                goto out;
                                        t0 = now_ns();
                                }
                                if ((r = cuda_matvec(NULL, &w[i % n], 1, &in, &y, CUDA_MV_STORE)) < 0)
                                        goto out;
                        }
                        if ((r = cuda_sync(NULL)) < 0)
                                goto out;
                        double us = (now_ns() - t0) / 1e3 / calls;
                        printf("%-6s %5ux%-6u %10.2f %10.0f\n", ggml_type_name(types[t]), dims[d][0], dims[d][1],
                               us, bytes / us / 1e3);
                        for (unsigned i = 0; i < n; i++)
                                cuda_free((void *)w[i].data);
                }
        r = 0;
out:
        if (r < 0)
                fprintf(stderr, "Kernel benchmark failed: %s\n", strerror(-r));
        cuda_free(x), cuda_free(y), cuda_free(xq.qs), cuda_free(xq.ds);
        return r;
}

static void help(void) {
        printf("bench-cuda --synthetic MODEL:MIX [--tg N] [--pp N] [--reps N] [--device N] [--breakdown]\n"
               "           [--batch B,...] [--kv f16|q8_0] [--trace FILE]\n"
               "bench-cuda --kernels\n\n"
               "Decode and prompt speed of the CUDA backend on the tensor shapes of MODEL (llama2-7b, llama3-8b)\n"
               "with random weights of MIX (q4_0, q4_K_M, q8_0, f16 or any single type name).\n");
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                {"synthetic", required_argument, NULL, 's'}, {"tg", required_argument, NULL, 't'},
                {"pp", required_argument, NULL, 'p'},        {"reps", required_argument, NULL, 'r'},
                {"device", required_argument, NULL, 'd'},    {"help", no_argument, NULL, 'h'},
                {"kernels", no_argument, NULL, 'k'},         {"breakdown", no_argument, NULL, 'b'},
                {"batch", required_argument, NULL, 'B'},     {"kv", required_argument, NULL, 'K'},
                {"trace", required_argument, NULL, 'T'},
                {},
        };
        const char *synthetic = NULL;
        uint64_t v;
        int c;

        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case 's':
                        synthetic = optarg;
                        break;
                case 't':
                case 'p':
                case 'r':
                case 'd':
                        if (safe_atou64(optarg, &v) < 0 || v > 65536) {
                                fprintf(stderr, "Invalid number '%s'.\n", optarg);
                                return EXIT_FAILURE;
                        }
                        if (c == 't')
                                arg_tg = (uint32_t)v;
                        else if (c == 'p')
                                arg_pp = (uint32_t)v;
                        else if (c == 'r')
                                arg_reps = v ? (uint32_t)v : 1;
                        else
                                arg_device = (int)v;
                        break;
                case 'k':
                        return run_kernels() < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
                case 'b':
                        arg_breakdown = true;
                        break;
                case 'B':
                        arg_batch = optarg;
                        break;
                case 'T':
                        arg_trace = optarg;
                        break;
                case 'K':
                        if (strcasecmp(optarg, "q8_0") != 0 && strcasecmp(optarg, "f16") != 0) {
                                fprintf(stderr, "Unknown KV cache type '%s': f16 or q8_0.\n", optarg);
                                return EXIT_FAILURE;
                        }
                        arg_kv_q8 = strcasecmp(optarg, "q8_0") == 0;
                        break;
                case 'h':
                        help();
                        return EXIT_SUCCESS;
                default:
                        return EXIT_FAILURE;
                }
        }
        if (!synthetic) {
                help();
                return EXIT_FAILURE;
        }
        return run_synthetic(synthetic) < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
