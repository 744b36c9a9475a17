/* SPDX-License-Identifier: MIT */
/*
 * quantd-perplexity: the perplexity of a GGUF model over a text file by llama-perplexity's method (chunks of
 * n_ctx tokens, the second half of each scored; see engine_perplexity()), printing the running estimate after
 * each chunk as llama-perplexity does ("[1]12.3456,[2]…") and the final estimate with its uncertainty, so that
 * the numbers can be set beside llama.cpp's for the same file and text.
 */

#include <getopt.h>
#include <inttypes.h>

#include "engine.h"

static const char *arg_model, *arg_file;
static uint32_t arg_threads, arg_ctx = 512, arg_chunks;
static int32_t arg_isa = -1;
static uint32_t arg_kv_type = GGML_TYPE_F16;
static bool arg_f32;

/* The whole file into *ret (NUL-terminated, caller frees). */
static int read_file(const char *path, char **ret, size_t *ret_len) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        Buf b = {};
        char chunk[65536];
        size_t n;

        if (!f)
                return -errno;
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
                if (buf_append(&b, chunk, n) < 0) {
                        buf_free(&b);
                        return -ENOMEM;
                }
        if (ferror(f)) {
                buf_free(&b);
                return -EIO;
        }
        *ret_len = b.len;
        *ret = b.len ? buf_steal_str(&b) : strdup("");
        return *ret ? 0 : -ENOMEM;
}

static void progress(void *userdata, uint32_t chunk, uint32_t n_chunks, double ppl) {
        printf("[%" PRIu32 "]%.4f,", chunk + 1, ppl);
        if (chunk + 1 == n_chunks)
                printf("\n");
        fflush(stdout);
}

static void help(void) {
        printf("Usage: quantd-perplexity -m MODEL.gguf -f TEXT [-c N_CTX] [--chunks N] [-t THREADS]\n"
               "                         [--isa scalar|avx2|avx512] [--kv f16|f32] [--f32]\n\n"
               "Perplexity by llama-perplexity's method: the text is tokenized (BOS as the vocabulary asks), cut\n"
               "into chunks of N_CTX tokens (default 512), and the second half of each chunk is scored.\n"
               "--f32 runs the slow reference path (weights dequantized, activations in float).\n");
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },          { "model", required_argument, NULL, 'm' },
                { "file", required_argument, NULL, 'f' },    { "ctx-size", required_argument, NULL, 'c' },
                { "chunks", required_argument, NULL, 'C' },  { "threads", required_argument, NULL, 't' },
                { "isa", required_argument, NULL, 'I' },     { "kv", required_argument, NULL, 'K' },
                { "f32", no_argument, NULL, 'F' },
                {},
        };
        uint64_t u;
        int c, r;

        while ((c = getopt_long(argc, argv, "hm:f:c:t:", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case 'm':
                        arg_model = optarg;
                        break;
                case 'f':
                        arg_file = optarg;
                        break;
                case 'c':
                case 'C':
                case 't':
                        if (safe_atou64(optarg, &u) < 0 || u > 1000000) {
                                log_error("Invalid number '%s'.", optarg);
                                return 2;
                        }
                        if (c == 'c')
                                arg_ctx = (uint32_t)u;
                        else if (c == 'C')
                                arg_chunks = (uint32_t)u;
                        else
                                arg_threads = (uint32_t)u;
                        break;
                case 'I':
                        arg_isa = engine_cpu_isa_from_name(optarg);
                        if (arg_isa < 0) {
                                log_error("Unknown instruction set '%s'; use scalar, avx2 or avx512.", optarg);
                                return 2;
                        }
                        break;
                case 'F':
                        arg_f32 = true;
                        break;
                case 'K':
                        r = ggml_type_from_name(optarg);
                        if (r != GGML_TYPE_F16 && r != GGML_TYPE_F32) {
                                log_error("The KV cache type must be f16 or f32, not '%s'.", optarg);
                                return 2;
                        }
                        arg_kv_type = (uint32_t)r;
                        break;
                default:
                        return 2;
                }
        }
        if (!arg_model || !arg_file || optind < argc) {
                log_error("Usage: quantd-perplexity -m MODEL.gguf -f TEXT [options]; see --help.");
                return 2;
        }

        _cleanup_free_ char *text = NULL;
        size_t len;
        r = read_file(arg_file, &text, &len);
        if (r < 0) {
                log_error_errno(r, "Failed to read '%s': %m", arg_file);
                return 1;
        }

        EngineModelParams p = engine_model_params_default();
        _cleanup_(engine_model_unrefp) EngineModel *m = NULL;
        QdError err = {};
        p.backend = "cpu";
        p.n_threads = arg_threads;
        p.cpu_isa = arg_isa;
        p.kv_type = arg_kv_type;
        p.n_batch = arg_ctx;
        p.f32_activations = arg_f32;
        r = engine_model_load(arg_model, &p, &m, &err);
        if (r < 0) {
                log_error_errno(r, "Failed to load model '%s': %s", arg_model, err.msg);
                return 1;
        }
        const EngineVocab *v = engine_model_vocab(m);
        if (!v) {
                log_error("The model '%s' has no tokenizer.", arg_model);
                return 1;
        }

        _cleanup_free_ int32_t *tokens = NULL;
        size_t n_tokens;
        r = engine_tokenize(v, text, len, true, false, &tokens, &n_tokens);
        if (r < 0) {
                log_error_errno(r, "Failed to tokenize '%s': %m", arg_file);
                return 1;
        }
        printf("model: %s, text: %s, %zu tokens, n_ctx %u, %zu chunks\n", arg_model, arg_file, n_tokens, arg_ctx,
               arg_chunks ? MIN((size_t)arg_chunks, n_tokens / arg_ctx) : n_tokens / arg_ctx);

        EnginePerplexity res;
        uint64_t t0 = now_ns();
        r = engine_perplexity(m, tokens, n_tokens, arg_ctx, arg_chunks, progress, NULL, &res, &err);
        if (r < 0) {
                log_error_errno(r, "Failed to compute the perplexity: %s", err.msg);
                return 1;
        }
        double secs = (double)(now_ns() - t0) / 1e9;
        printf("Final estimate: PPL = %.4f +/- %.5f (%" PRIu64 " tokens scored in %u chunks, %.1f s, %.1f tokens/s)\n",
               res.ppl, res.ppl_err, res.n_scored, res.n_chunks, secs, res.n_chunks * (double)arg_ctx / secs);
        return 0;
}
