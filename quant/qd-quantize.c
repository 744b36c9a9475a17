/* SPDX-License-Identifier: MIT */
/*
 * qd-quantize: quantizes a GGUF file to one of llama-quantize's mixtures, standalone (the daemon's job and
 * the qctl verb use the same quant_file()).
 *
 * The output appears only when complete: it is written to a temporary file beside DST, synced and renamed;
 * on an error or Ctrl-C the temporary file is removed and DST is untouched.
 */

#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <sys/stat.h>

#include "config.h"
#include "quant.h"

static atomic_bool arg_cancel;
static bool arg_quiet;

static void help(void) {
        printf("Usage: qd-quantize [OPTIONS] SRC.gguf DST.gguf TYPE\n\n"
               "Writes SRC quantized to TYPE, one of llama-quantize's mixtures:\n"
               "  Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_0 Q4_1 Q4_K_S Q4_K_M Q5_0 Q5_1 Q5_K_S Q5_K_M Q6_K Q8_0\n"
               "  IQ4_NL F16 BF16 F32\n\n"
               "Options:\n"
               "  -t --threads N                 worker threads (default: one per CPU)\n"
               "     --pure                      the mixture's type for every tensor, no promotions\n"
               "     --leave-output-tensor       copy output.weight as it is\n"
               "     --allow-requantize          convert tensors that are already quantized\n"
               "     --tensor-type PATTERN=TYPE  give tensors whose name matches PATTERN (a regular\n"
               "                                 expression) TYPE, e.g. 'attn_v=q8_0'; repeatable\n"
               "  -q --quiet                     no progress lines\n"
               "  -h --help                      show this help\n"
               "     --version                   show the version\n");
}

static void on_signal(int sig) {
        atomic_store(&arg_cancel, true);
}

static void progress(void *userdata, size_t i, size_t n, const char *name, uint32_t type) {
        if (!arg_quiet)
                fprintf(stderr, "[%4zu/%4zu] %-40s %s\n", i + 1, n, name, ggml_type_name(type));
}

/* Splits "PATTERN=TYPE" at its last '='. */
static int parse_override(char *s, QuantOverride *ret) {
        char *eq = strrchr(s, '=');
        int type;

        if (!eq || eq == s)
                return -EINVAL;
        *eq = 0;
        type = ggml_type_from_name(eq + 1);
        if (type < 0)
                return -EINVAL;
        *ret = (QuantOverride){.pattern = s, .type = (uint32_t)type};
        return 0;
}

static int run(const char *src_path, const char *dst_path, const QuantParams *params) {
        _cleanup_(gguf_freep) Gguf *src = NULL;
        _cleanup_free_ char *tmp = NULL;
        _cleanup_close_ int fd = -EBADF;
        QdError err = {};
        int r;

        r = gguf_open(src_path, &src, &err);
        if (r < 0)
                return log_error_errno(r, "Failed to open '%s': %s", src_path,
                                       err.msg[0] ? err.msg : strerror(-r));

        fd = tmpfile_beside(dst_path, &tmp);
        if (fd < 0)
                return log_error_errno(fd, "Failed to create a temporary file beside '%s': %m", dst_path);

        r = quant_file(src, fd, params, &err);
        if (r >= 0)
                r = tmpfile_commit(fd, tmp, dst_path, true);
        else if (tmp)
                (void)unlink(tmp);
        if (r < 0) {
                return log_error_errno(r, "Failed to quantize '%s': %s", src_path,
                                       err.msg[0] ? err.msg : strerror(-r));
        }
        return 0;
}

int main(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100, ARG_PURE, ARG_LEAVE_OUTPUT, ARG_TENSOR_TYPE, ARG_ALLOW_REQUANTIZE };
        static const struct option options[] = {
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, ARG_VERSION},
                {"threads", required_argument, NULL, 't'},
                {"quiet", no_argument, NULL, 'q'},
                {"pure", no_argument, NULL, ARG_PURE},
                {"leave-output-tensor", no_argument, NULL, ARG_LEAVE_OUTPUT},
                {"allow-requantize", no_argument, NULL, ARG_ALLOW_REQUANTIZE},
                {"tensor-type", required_argument, NULL, ARG_TENSOR_TYPE},
                {},
        };
        _cleanup_free_ QuantOverride *overrides = NULL;
        QuantParams params = quant_params_default();
        size_t n_overrides = 0;
        uint64_t u;
        int c, r;

        while ((c = getopt_long(argc, argv, "ht:q", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("qd-quantize %s\n", PACKAGE_VERSION);
                        return 0;
                case 't':
                        if (safe_atou64(optarg, &u) < 0 || u == 0 || u > 1024) {
                                log_error("Invalid thread count '%s': give a number from 1 to 1024.",
                                          optarg);
                                return 2;
                        }
                        params.n_threads = (unsigned)u;
                        break;
                case 'q':
                        arg_quiet = true;
                        break;
                case ARG_PURE:
                        params.pure = true;
                        break;
                case ARG_LEAVE_OUTPUT:
                        params.leave_output = true;
                        break;
                case ARG_ALLOW_REQUANTIZE:
                        params.allow_requantize = true;
                        break;
                case ARG_TENSOR_TYPE: {
                        QuantOverride *o = reallocarray(overrides, n_overrides + 1, sizeof(QuantOverride));
                        if (!o)
                                return log_oom(), 1;
                        overrides = o;
                        if (parse_override(optarg, &overrides[n_overrides]) < 0) {
                                log_error("Invalid --tensor-type '%s': expected PATTERN=TYPE with a type "
                                          "such as "
                                          "q8_0.",
                                          optarg);
                                return 2;
                        }
                        n_overrides++;
                        break;
                }
                default:
                        return 2;
                }
        if (argc - optind != 3) {
                log_error("Expected SRC DST TYPE; see --help.");
                return 2;
        }
        params.mixture = quant_mixture_from_name(argv[optind + 2]);
        if (params.mixture < 0) {
                log_error("Unknown quantization type '%s'; see --help for the list.", argv[optind + 2]);
                return 2;
        }
        params.overrides = overrides;
        params.n_overrides = n_overrides;
        params.cancel = &arg_cancel;
        params.progress = progress;

        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        (void)sigaction(SIGINT, &sa, NULL);
        (void)sigaction(SIGTERM, &sa, NULL);

        r = run(argv[optind], argv[optind + 1], &params);
        return r < 0 ? 1 : 0;
}
