/* SPDX-License-Identifier: MIT */
/*
 * qd-convert: converts a Hugging Face model folder (llama, qwen2; F32/F16/BF16 safetensors) to a GGUF file,
 * standalone (the daemon's Modelfile FROM a folder uses the same quant_convert_hf()).
 *
 * The output appears only when complete: it is written to a temporary file beside DST, synced and renamed;
 * on an error the temporary file is removed and DST is untouched.
 */

#include <fcntl.h>
#include <getopt.h>
#include <sys/stat.h>

#include "config.h"
#include "quant.h"

static void help(void) {
        printf("Usage: qd-convert [OPTIONS] HF_DIR DST.gguf\n\n"
               "Converts the Hugging Face model in HF_DIR (config.json, tokenizer.model or tokenizer.json, "
               "safetensors) to GGUF.\n\n"
               "Options:\n"
               "     --outtype TYPE   f32, f16 or bf16 for the matrices (default: as in the source)\n"
               "     --pre NAME       tokenizer.ggml.pre to write (gpt2 vocabularies; default: guessed from tokenizer.json)\n"
               "  -h --help           show this help\n"
               "     --version        show the version\n");
}

static int run(const char *src_path, const char *dst_path, const QuantConvertParams *params) {
        _cleanup_free_ char *tmp = NULL;
        _cleanup_close_ int dirfd = -EBADF, fd = -EBADF;
        QdError err = {};
        int r;

        dirfd = open(src_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dirfd < 0)
                return log_error_errno(errno, "Failed to open the folder '%s': %m", src_path);

        fd = tmpfile_beside(dst_path, &tmp);
        if (fd < 0)
                return log_error_errno(fd, "Failed to create a temporary file beside '%s': %m", dst_path);

        r = quant_convert_hf(dirfd, fd, params, &err);
        if (r >= 0)
                r = tmpfile_commit(fd, tmp, dst_path, true);
        else if (tmp)
                (void)unlink(tmp);
        if (r < 0) {
                return log_error_errno(r, "Failed to convert '%s': %s", src_path,
                                       err.msg[0] ? err.msg : strerror(-r));
        }
        return 0;
}

int main(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100, ARG_OUTTYPE, ARG_PRE };
        static const struct option options[] = {
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, ARG_VERSION},
                {"outtype", required_argument, NULL, ARG_OUTTYPE},
                {"pre", required_argument, NULL, ARG_PRE},
                {},
        };
        QuantConvertParams params = quant_convert_params_default();
        int c, r;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("qd-convert %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_OUTTYPE: {
                        int t = ggml_type_from_name(optarg);

                        if (t != GGML_TYPE_F32 && t != GGML_TYPE_F16 && t != GGML_TYPE_BF16) {
                                log_error("Invalid --outtype '%s': give f32, f16 or bf16.", optarg);
                                return 2;
                        }
                        params.out_type = t;
                        break;
                }
                case ARG_PRE:
                        params.pre = optarg;
                        break;
                default:
                        return 2;
                }
        if (argc - optind != 2) {
                log_error("Expected HF_DIR DST; see --help.");
                return 2;
        }
        r = run(argv[optind], argv[optind + 1], &params);
        return r < 0 ? 1 : 0;
}
