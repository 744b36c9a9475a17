/* SPDX-License-Identifier: MIT */
/*
 * quantd-bench: prompt processing and generation speed of a GGUF model on our engine, in the manner of
 * llama-bench. pp<N> runs N prompt tokens through an empty sequence in one batch; tg<N> generates N tokens one
 * at a time from an empty sequence. Each test is repeated and reported as the median tokens/s with the spread
 * (min-max) and the standard deviation, so numbers are comparable with llama-bench's avg ± stddev.
 */

#include <getopt.h>
#include <inttypes.h>
#include <math.h>

#include "engine.h"

static const char *arg_model;
static uint32_t arg_threads;
static uint32_t arg_pp = 512, arg_tg = 128, arg_reps = 5;
static int32_t arg_isa = -1;
static uint32_t arg_kv_type = GGML_TYPE_F16;
static const char *arg_backend = "cpu";
static int32_t arg_gpu_layers = -1;

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

/* One run of n tokens: as one prompt batch (pp) or one by one (tg). Returns tokens/s or a negative errno. */
static double run_once(EngineModel *m, uint32_t n, bool prompt, QdError *err) {
        const EngineModelInfo *info = engine_model_info(m);
        _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
        _cleanup_free_ int32_t *tokens = malloc(n * sizeof(int32_t));
        _cleanup_free_ float *logits = malloc(info->n_vocab * sizeof(float));
        int r;

        if (!tokens || !logits)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++)
                tokens[i] = (int32_t)((i * 2654435761u) % info->n_vocab);
        r = engine_seq_new(m, n, &s);
        if (r < 0)
                return r;

        uint64_t t0 = now_ns();
        if (prompt) {
                const int32_t *tp = tokens;
                r = engine_decode(m, &s, &tp, &n, 1, &logits, NULL, err);
                if (r < 0)
                        return r;
        } else
                for (uint32_t i = 0; i < n; i++) {
                        const int32_t *tp = tokens + i;
                        uint32_t one = 1;
                        r = engine_decode(m, &s, &tp, &one, 1, &logits, NULL, err);
                        if (r < 0)
                                return r;
                }
        return n / ((double)(now_ns() - t0) / 1e9);
}

static int bench(EngineModel *m, const char *name, uint32_t n, bool prompt) {
        _cleanup_free_ double *v = calloc(arg_reps, sizeof(double));
        QdError err = {};
        double sum = 0, sq = 0;

        if (!v)
                return log_oom();
        /* One warm-up run: page in the weights, start the threads. */
        double w = run_once(m, n, prompt, &err);
        if (w < 0)
                return log_error_errno((int)w, "Failed to run %s: %s", name, err.msg);
        for (uint32_t i = 0; i < arg_reps; i++) {
                v[i] = run_once(m, n, prompt, &err);
                if (v[i] < 0)
                        return log_error_errno((int)v[i], "Failed to run %s: %s", name, err.msg);
                sum += v[i];
                sq += v[i] * v[i];
        }
        qsort(v, arg_reps, sizeof(double), cmp_double);
        double mean = sum / arg_reps, sd = sqrt(fmax(0, sq / arg_reps - mean * mean));
        double median = arg_reps % 2 ? v[arg_reps / 2] : (v[arg_reps / 2 - 1] + v[arg_reps / 2]) / 2;
        printf("| %-6s | %7u | %10.2f | %8.2f | %8.2f-%-8.2f | %8.2f ± %-6.2f |\n", name, arg_threads, median,
               v[arg_reps - 1] - v[0], v[0], v[arg_reps - 1], mean, sd);
        return 0;
}

static void help(void) {
        printf("Usage: quantd-bench -m MODEL.gguf [-t THREADS] [-p N] [-n N] [-r REPS] [--isa scalar|avx2|avx512]\n"
               "                    [--kv f16|f32|q8_0] [--backend cpu|cuda] [-g|--gpu-layers N]\n\n"
               "Measures prompt processing (pp, one batch of N tokens) and generation (tg, N tokens one at a\n"
               "time) in tokens per second: median, spread and mean ± standard deviation of REPS runs.\n"
               "-p 0 or -n 0 skips that test. Defaults: -p 512 -n 128 -r 5, threads = CPU count, the cpu backend;\n"
               "with --backend cuda the first N layers (-g, default: all that fit) run on the GPU, the rest on\n"
               "the CPU. The KV cache is f16 by default; f32 only on the cpu backend, q8_0 only on cuda.\n");
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },       { "model", required_argument, NULL, 'm' },
                { "threads", required_argument, NULL, 't' }, { "n-prompt", required_argument, NULL, 'p' },
                { "n-gen", required_argument, NULL, 'n' }, { "repetitions", required_argument, NULL, 'r' },
                { "isa", required_argument, NULL, 'I' },  { "kv", required_argument, NULL, 'K' },
                { "backend", required_argument, NULL, 'B' }, { "gpu-layers", required_argument, NULL, 'g' },
                {},
        };
        uint64_t u;
        int c, r;

        while ((c = getopt_long(argc, argv, "hm:t:p:n:r:g:", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case 'm':
                        arg_model = optarg;
                        break;
                case 't':
                case 'p':
                case 'n':
                case 'r':
                        if (safe_atou64(optarg, &u) < 0 || u > 1000000) {
                                log_error("Invalid number '%s' for -%c.", optarg, c);
                                return 2;
                        }
                        if (c == 't')
                                arg_threads = (uint32_t)u;
                        else if (c == 'p')
                                arg_pp = (uint32_t)u;
                        else if (c == 'n')
                                arg_tg = (uint32_t)u;
                        else
                                arg_reps = (uint32_t)u;
                        break;
                case 'I':
                        arg_isa = engine_cpu_isa_from_name(optarg);
                        if (arg_isa < 0) {
                                log_error("Unknown instruction set '%s'; use scalar, avx2 or avx512.", optarg);
                                return 2;
                        }
                        break;
                case 'K':
                        r = ggml_type_from_name(optarg);
                        if (r != GGML_TYPE_F16 && r != GGML_TYPE_F32 && r != GGML_TYPE_Q8_0) {
                                log_error("The KV cache type must be f16, f32 or q8_0, not '%s'.", optarg);
                                return 2;
                        }
                        arg_kv_type = (uint32_t)r;
                        break;
                case 'B':
                        if (!streq(optarg, "cpu") && !streq(optarg, "cuda")) {
                                log_error("Unknown backend '%s'; use cpu or cuda.", optarg);
                                return 2;
                        }
                        arg_backend = optarg;
                        break;
                case 'g':
                        if (safe_atou64(optarg, &u) < 0 || u > INT32_MAX) {
                                log_error("Invalid number of GPU layers '%s'.", optarg);
                                return 2;
                        }
                        arg_gpu_layers = (int32_t)u;
                        break;
                default:
                        return 2;
                }
        }
        if (!arg_model || optind < argc || arg_reps == 0) {
                log_error("Usage: quantd-bench -m MODEL.gguf [options]; see --help.");
                return 2;
        }

        EngineModelParams p = engine_model_params_default();
        _cleanup_(engine_model_unrefp) EngineModel *m = NULL;
        QdError err = {};
        p.backend = arg_backend;
        p.n_gpu_layers = arg_gpu_layers;
        p.n_threads = arg_threads;
        p.cpu_isa = arg_isa;
        p.kv_type = arg_kv_type;
        p.n_batch = MAX(arg_pp, 1u);
        r = engine_model_load(arg_model, &p, &m, &err);
        if (r < 0) {
                log_error_errno(r, "Failed to load model '%s': %s", arg_model, err.msg);
                return 1;
        }
        if (arg_threads == 0)
                arg_threads = (uint32_t)sysconf(_SC_NPROCESSORS_ONLN);

        const EngineModelInfo *info = engine_model_info(m);
        printf("model: %s (%s, %s, %" PRIu64 " params), backend: %s, GPU layers: %" PRIu32 " of %" PRIu32
               ", CPU kernels: %s, KV cache: %s\n\n",
               arg_model, info->arch, info->file_type, info->n_params, arg_backend, info->n_gpu_layers,
               info->n_layer, engine_cpu_isa_name(arg_isa < 0 ? engine_cpu_isa_best() : (EngineCpuIsa)arg_isa),
               ggml_type_name(arg_kv_type));
        printf("| test   | threads | median t/s | spread   | min-max           | mean ± sd         |\n");
        printf("|--------|---------|------------|----------|-------------------|-------------------|\n");
        if (arg_pp > 0) {
                char name[32];
                snprintf(name, sizeof(name), "pp%u", arg_pp);
                if (bench(m, name, arg_pp, true) < 0)
                        return 1;
        }
        if (arg_tg > 0) {
                char name[32];
                snprintf(name, sizeof(name), "tg%u", arg_tg);
                if (bench(m, name, arg_tg, false) < 0)
                        return 1;
        }
        return 0;
}
