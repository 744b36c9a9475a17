/* SPDX-License-Identifier: MIT */
/*
 * qd-eval: perplexity of a model on a text and, against a base model, KL divergence and top-1 agreement;
 * standalone until qctl's eval verb lands.
 */

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>

#include "config.h"
#include "quant.h"

static atomic_bool arg_cancel;

static void help(void) {
        printf("Usage: qd-eval [OPTIONS] MODEL.gguf --file TEXT\n\n"
               "Prints the perplexity of MODEL on TEXT (llama-perplexity's method) and, with --base, the "
               "KL\n"
               "divergence from the base model's distributions and how often both pick the same top "
               "token.\n\n"
               "Options:\n"
               "  -f --file TEXT        the text to score\n"
               "  -b --base MODEL.gguf  the model to compare with (same vocabulary)\n"
               "  -c --ctx N            tokens per chunk (default 512)\n"
               "     --chunks N         score at most N chunks\n"
               "  -t --threads N        CPU threads (default: one per CPU)\n"
               "  -h --help             show this help\n"
               "     --version          show the version\n");
}

static void on_signal(int sig) {
        atomic_store(&arg_cancel, true);
}

static int read_file(const char *path, char **ret, size_t *ret_len) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        _cleanup_(buf_free) Buf b = {};
        char tmp[65536];
        size_t k;
        int r;

        if (!f)
                return -errno;
        while ((k = fread(tmp, 1, sizeof(tmp), f)) > 0)
                if ((r = buf_append(&b, tmp, k)) < 0)
                        return r;
        if (ferror(f))
                return -EIO;
        *ret_len = b.len;
        *ret = b.len ? buf_steal_str(&b) : strdup("");
        return *ret ? 0 : -ENOMEM;
}

static int parse_u32(const char *s, const char *what, uint32_t *ret) {
        uint64_t u;

        if (safe_atou64(s, &u) < 0 || u == 0 || u > UINT32_MAX) {
                log_error("Invalid %s '%s': give a positive number.", what, s);
                return -EINVAL;
        }
        *ret = (uint32_t)u;
        return 0;
}

int main(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100, ARG_CHUNKS };
        static const struct option options[] = {
                {"help", no_argument, NULL, 'h'},          {"version", no_argument, NULL, ARG_VERSION},
                {"file", required_argument, NULL, 'f'},    {"base", required_argument, NULL, 'b'},
                {"ctx", required_argument, NULL, 'c'},     {"chunks", required_argument, NULL, ARG_CHUNKS},
                {"threads", required_argument, NULL, 't'}, {},
        };
        _cleanup_(engine_model_unrefp) EngineModel *model = NULL, *base = NULL;
        _cleanup_free_ char *text = NULL;
        EngineModelParams mp = engine_model_params_default();
        QuantEvalParams ep = {.cancel = &arg_cancel};
        const char *file = NULL, *base_path = NULL;
        QuantEvalResult res;
        QdError err = {};
        size_t len;
        int c, r;

        while ((c = getopt_long(argc, argv, "hf:b:c:t:", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("qd-eval %s\n", PACKAGE_VERSION);
                        return 0;
                case 'f':
                        file = optarg;
                        break;
                case 'b':
                        base_path = optarg;
                        break;
                case 'c':
                        if (parse_u32(optarg, "context size", &ep.n_ctx) < 0)
                                return 2;
                        break;
                case ARG_CHUNKS:
                        if (parse_u32(optarg, "chunk count", &ep.max_chunks) < 0)
                                return 2;
                        break;
                case 't':
                        if (parse_u32(optarg, "thread count", &mp.n_threads) < 0)
                                return 2;
                        break;
                default:
                        return 2;
                }
        if (argc - optind != 1 || !file) {
                log_error("Expected MODEL and --file TEXT; see --help.");
                return 2;
        }

        r = read_file(file, &text, &len);
        if (r < 0)
                return log_error_errno(r, "Failed to read '%s': %m", file), 1;
        r = engine_model_load(argv[optind], &mp, &model, &err);
        if (r < 0)
                return log_error_errno(r, "Failed to load '%s': %s", argv[optind], err.msg), 1;
        if (base_path) {
                qd_error_clear(&err);
                r = engine_model_load(base_path, &mp, &base, &err);
                if (r < 0)
                        return log_error_errno(r, "Failed to load '%s': %s", base_path, err.msg), 1;
        }

        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        (void)sigaction(SIGINT, &sa, NULL);
        (void)sigaction(SIGTERM, &sa, NULL);

        qd_error_clear(&err);
        uint64_t start = now_ns();
        r = quant_eval(model, base, text, len, &ep, &res, &err);
        if (r < 0)
                return log_error_errno(r, "Failed to evaluate '%s': %s", argv[optind], err.msg), 1;

        printf("model          %s\n", argv[optind]);
        printf("file size      %" PRIu64 " bytes, %.2f bits per weight\n", res.file_size, res.bpw);
        printf("scored         %" PRIu64 " tokens in %u chunks of %u (%.1f s)\n", res.n_scored, res.n_chunks,
               ep.n_ctx ? ep.n_ctx : 512, (double)(now_ns() - start) / 1e9);
        printf("perplexity     %.4f\n", res.ppl);
        if (base) {
                printf("base           %s, perplexity %.4f\n", base_path, res.ppl_base);
                printf("KLD mean       %.6f\n", res.kld_mean);
                printf("KLD 99%%        %.6f\n", res.kld_p99);
                printf("top-1 agree    %.2f %%\n", 100.0 * res.top1);
        }
        return 0;
}
