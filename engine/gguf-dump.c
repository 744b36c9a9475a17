/* SPDX-License-Identifier: MIT */
/*
 * gguf-dump: prints a GGUF file's metadata and tensor table, after full validation. Arrays longer than a few
 * elements are abbreviated unless --full is given.
 */

#include <getopt.h>
#include <inttypes.h>

#include "config.h"
#include "engine.h"

static bool arg_full = false;

static void print_scalar(const GgufValue *v) {
        switch (v->type) {
        case GGUF_TYPE_UINT8:
                printf("%" PRIu8, v->u8);
                break;
        case GGUF_TYPE_INT8:
                printf("%" PRId8, v->i8);
                break;
        case GGUF_TYPE_UINT16:
                printf("%" PRIu16, v->u16);
                break;
        case GGUF_TYPE_INT16:
                printf("%" PRId16, v->i16);
                break;
        case GGUF_TYPE_UINT32:
                printf("%" PRIu32, v->u32);
                break;
        case GGUF_TYPE_INT32:
                printf("%" PRId32, v->i32);
                break;
        case GGUF_TYPE_UINT64:
                printf("%" PRIu64, v->u64);
                break;
        case GGUF_TYPE_INT64:
                printf("%" PRId64, v->i64);
                break;
        case GGUF_TYPE_FLOAT32:
                printf("%g", (double)v->f32);
                break;
        case GGUF_TYPE_FLOAT64:
                printf("%g", v->f64);
                break;
        case GGUF_TYPE_BOOL:
                printf("%s", v->b ? "true" : "false");
                break;
        case GGUF_TYPE_STRING: {
                uint64_t n = arg_full ? v->str.len : MIN(v->str.len, (uint64_t)120);
                putchar('"');
                for (uint64_t i = 0; i < n; i++) {
                        unsigned char c = (unsigned char)v->str.data[i];
                        if (c == '\n')
                                fputs("\\n", stdout);
                        else if (c == '"' || c == '\\')
                                printf("\\%c", c);
                        else if (c < 0x20)
                                printf("\\x%02x", c);
                        else
                                putchar(c);
                }
                putchar('"');
                if (n < v->str.len)
                        printf("… (%" PRIu64 " bytes)", v->str.len);
                break;
        }
        case GGUF_TYPE_ARRAY: {
                uint64_t n = arg_full ? v->arr.n : MIN(v->arr.n, (uint64_t)8);
                printf("[");
                for (uint64_t i = 0; i < n; i++) {
                        if (i > 0)
                                printf(", ");
                        GgufValue e;
                        if (v->arr.items)
                                e = v->arr.items[i];
                        else {
                                size_t es = gguf_type_size(v->arr.type);
                                e = (GgufValue){ .type = v->arr.type };
                                memcpy(&e.u64, (const uint8_t *)v->arr.data + i * es, es);
                        }
                        print_scalar(&e);
                }
                if (n < v->arr.n)
                        printf(", … %" PRIu64 " %s elements", v->arr.n, gguf_type_name(v->arr.type));
                printf("]");
                break;
        }
        case _GGUF_TYPE_MAX:
        case _GGUF_TYPE_INVALID:
                printf("?");
                break;
        }
}

static void help(void) {
        printf("Usage: gguf-dump [--full] FILE.gguf\n\n"
               "Validates a GGUF file and prints its metadata and tensor table.\n\n"
               "  -f --full      print arrays and strings whole\n"
               "  -h --help      show this help\n"
               "     --version   show the version\n");
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "full", no_argument, NULL, 'f' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        _cleanup_(gguf_freep) Gguf *g = NULL;
        QdError err = {};
        int c, r;

        while ((c = getopt_long(argc, argv, "fh", options, NULL)) >= 0)
                switch (c) {
                case 'f':
                        arg_full = true;
                        break;
                case 'h':
                        help();
                        return 0;
                case 'V':
                        printf("gguf-dump (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION);
                        return 0;
                default:
                        return 2;
                }
        if (optind != argc - 1) {
                fprintf(stderr, "gguf-dump: expected one GGUF file (see --help).\n");
                return 2;
        }

        r = gguf_open(argv[optind], &g, &err);
        if (r < 0) {
                fprintf(stderr, "gguf-dump: %s\n", err.msg[0] ? err.msg : strerror(-r));
                return 1;
        }

        printf("GGUF v%" PRIu32 ", %" PRIu64 " metadata entries, %" PRIu64 " tensors, alignment %" PRIu32
               ", data at byte %" PRIu64 "\n\n",
               g->version, g->n_kv, g->n_tensors, g->alignment, g->data_offset);
        for (uint64_t i = 0; i < g->n_kv; i++) {
                const GgufKV *kv = &g->kv[i];
                printf("%-40s %-8s ", kv->key, gguf_type_name(kv->value.type));
                print_scalar(&kv->value);
                putchar('\n');
        }
        printf("\n%-6s %-40s %-8s %-24s %14s %12s\n", "#", "name", "type", "shape", "offset", "bytes");
        for (uint64_t i = 0; i < g->n_tensors; i++) {
                const GgufTensor *t = &g->tensors[i];
                char shape[96] = "";
                size_t l = 0;
                for (uint32_t d = 0; d < t->n_dims; d++)
                        l += (size_t)snprintf(shape + l, sizeof(shape) - l, "%s%" PRIu64, d ? " x " : "", t->ne[d]);
                printf("%-6" PRIu64 " %-40s %-8s %-24s %14" PRIu64 " %12" PRIu64 "\n", i, t->name,
                       ggml_type_name(t->type), shape, t->offset, t->size);
        }
        return 0;
}
