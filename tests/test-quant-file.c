/* SPDX-License-Identifier: MIT */
/*
 * quant_file() on the real stories260K model: every mixture read back with the GGUF reader (types, shapes,
 * metadata, bytes equal to the reference row quantizer whatever the thread count), progress, cancellation
 * and the error paths.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <sys/mman.h>

#include "quant.h"

typedef struct Fixture {
        Gguf *src;
} Fixture;

static int setup(void **state) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
        Fixture *f = calloc(1, sizeof(Fixture));

        if (!f || !path || gguf_open(path, &f->src, NULL) < 0) {
                free(f);
                return -1;
        }
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        gguf_free(f->src);
        free(f);
        return 0;
}

static int new_memfd(void) {
        int fd = memfd_create("quantized", MFD_CLOEXEC);
        assert_true(fd >= 0);
        return fd;
}

/* Quantizes the fixture's model into a memfd and opens the result. */
static Gguf *quantize(const Gguf *src, const QuantParams *p, int *ret_fd) {
        QdError err = {};
        Gguf *out = NULL;
        int fd = new_memfd(), r;

        r = quant_file(src, fd, p, &err);
        if (r < 0)
                fail_msg("quant_file: %s", err.msg);
        r = gguf_open_fd(fd, &out, &err);
        if (r < 0)
                fail_msg("reading back: %s", err.msg);
        *ret_fd = fd;
        return out;
}

static bool same_value(const GgufValue *a, const GgufValue *b) {
        if (a->type != b->type)
                return false;
        switch (a->type) {
        case GGUF_TYPE_STRING:
                return a->str.len == b->str.len && memcmp(a->str.data, b->str.data, a->str.len) == 0;
        case GGUF_TYPE_ARRAY:
                if (a->arr.type != b->arr.type || a->arr.n != b->arr.n)
                        return false;
                if (a->arr.data)
                        return memcmp(a->arr.data, b->arr.data, a->arr.n * gguf_type_size(a->arr.type)) == 0;
                for (uint64_t i = 0; i < a->arr.n; i++)
                        if (!same_value(&a->arr.items[i], &b->arr.items[i]))
                                return false;
                return true;
        case GGUF_TYPE_BOOL:
                return a->b == b->b;
        case GGUF_TYPE_UINT8:
        case GGUF_TYPE_INT8:
        case GGUF_TYPE_UINT16:
        case GGUF_TYPE_INT16:
        case GGUF_TYPE_UINT32:
        case GGUF_TYPE_INT32:
        case GGUF_TYPE_FLOAT32:
        case GGUF_TYPE_UINT64:
        case GGUF_TYPE_INT64:
        case GGUF_TYPE_FLOAT64:
                return memcmp(&a->u64, &b->u64, gguf_type_size(a->type)) == 0;
        case _GGUF_TYPE_MAX:
        case _GGUF_TYPE_INVALID:
                break;
        }
        return false;
}

/* The output of mixture m: types as chosen, metadata copied, each converted row as quant_row_ref() writes
 * the engine's dequantization of the source row, each other tensor copied. */
static void check_mixture(const Gguf *src, QuantMixture m, unsigned n_threads) {
        QuantParams p = quant_params_default();
        QuantModelShape shape;
        uint32_t types[64];
        uint32_t u;
        int fd;

        p.mixture = m;
        p.n_threads = n_threads;
        p.allow_requantize = true;
        _cleanup_(gguf_freep) Gguf *out = quantize(src, &p, &fd);
        safe_close(fd);

        assert_int_equal(quant_model_shape_from_gguf(src, &shape), 0);
        assert_true(src->n_tensors <= ELEMENTSOF(types));
        assert_int_equal(quant_choose_types(&p, &shape, src->tensors, src->n_tensors, types, NULL), 0);

        assert_int_equal(gguf_get_u32(out, "general.file_type", &u), 0);
        assert_int_equal(u, (uint32_t)m);
        assert_int_equal(gguf_get_u32(out, "general.quantization_version", &u), 0);
        assert_int_equal(u, 2);
        for (uint64_t i = 0; i < src->n_kv; i++) {
                const GgufKV *kv = gguf_find_kv(out, src->kv[i].key);
                assert_non_null(kv);
                if (!streq(kv->key, "general.file_type"))
                        assert_true(same_value(&kv->value, &src->kv[i].value));
        }

        assert_int_equal(out->n_tensors, src->n_tensors);
        for (uint64_t i = 0; i < src->n_tensors; i++) {
                const GgufTensor *s = &src->tensors[i], *t = &out->tensors[i];
                uint64_t row;

                assert_string_equal(t->name, s->name);
                assert_int_equal(t->n_dims, s->n_dims);
                assert_memory_equal(t->ne, s->ne, sizeof(s->ne));
                assert_int_equal(t->type, types[i]);
                assert_int_equal(ggml_row_size(t->type, t->ne[0], &row), 0);
                assert_int_equal(t->size, row * (t->n_elements / t->ne[0]));
                assert_int_equal(t->offset % out->alignment, 0);

                _cleanup_free_ uint8_t *want = malloc(t->size);
                _cleanup_free_ float *x = malloc(s->ne[0] * sizeof(float));
                uint64_t src_row;
                assert_non_null(want);
                assert_non_null(x);
                assert_int_equal(ggml_row_size(s->type, s->ne[0], &src_row), 0);
                if (s->type == t->type)
                        memcpy(want, s->data, s->size);
                else
                        for (uint64_t r = 0; r < t->n_elements / t->ne[0]; r++) {
                                const uint8_t *sp = (const uint8_t *)s->data + r * src_row;
                                assert_int_equal(engine_dequantize_row(s->type, sp, x, s->ne[0]), 0);
                                assert_int_equal(quant_row_ref(t->type, x, want + r * row, s->ne[0]), 0);
                        }
                if (memcmp(want, t->data, t->size) != 0)
                        fail_msg("%s: tensor %s (%s) differs from the reference rows", quant_mixture_name(m),
                                 t->name, ggml_type_name(t->type));
        }
}

static void test_every_mixture(void **state) {
        Fixture *f = *state;

        for (int m = 0; m < _QUANT_MIXTURE_MAX; m++)
                if (quant_mixture_name((QuantMixture)m))
                        check_mixture(f->src, (QuantMixture)m, 2);
}

/* F16 and BF16 sources (made by the F16 and BF16 mixtures), and quantized ones when requantizing is allowed.
 */
static void test_other_sources(void **state) {
        Fixture *f = *state;
        static const QuantMixture sources[] = {QUANT_MIXTURE_F16, QUANT_MIXTURE_BF16, QUANT_MIXTURE_Q8_0,
                                               QUANT_MIXTURE_Q4_K_M};
        static const QuantMixture targets[] = {QUANT_MIXTURE_Q8_0, QUANT_MIXTURE_Q4_0, QUANT_MIXTURE_Q5_K_M,
                                               QUANT_MIXTURE_F32};

        for (size_t i = 0; i < ELEMENTSOF(sources); i++) {
                QuantParams p = quant_params_default();
                int fd;

                p.mixture = sources[i];
                _cleanup_(gguf_freep) Gguf *src = quantize(f->src, &p, &fd);
                safe_close(fd);
                for (size_t k = 0; k < ELEMENTSOF(targets); k++)
                        check_mixture(src, targets[k], 3);
        }
}

/* Q8_0 and Q4_0 of stories260K, spelled out: the 172-wide ffn_down falls back to F16, output gets Q8_0,
 * and the weights decode close to the originals. */
static void test_q8_0_and_q4_0(void **state) {
        Fixture *f = *state;
        static const QuantMixture mixtures[] = {QUANT_MIXTURE_Q8_0, QUANT_MIXTURE_Q4_0};

        for (size_t k = 0; k < ELEMENTSOF(mixtures); k++) {
                QuantParams p = quant_params_default();
                uint32_t base = (uint32_t)quant_mixture_default_type(mixtures[k]);
                double err = 0, ref = 0;
                int fd;

                p.mixture = mixtures[k];
                _cleanup_(gguf_freep) Gguf *out = quantize(f->src, &p, &fd);
                safe_close(fd);
                for (uint64_t i = 0; i < out->n_tensors; i++) {
                        const GgufTensor *t = &out->tensors[i], *s = &f->src->tensors[i];
                        uint32_t want = t->n_dims == 1                    ? GGML_TYPE_F32
                                        : streq(t->name, "output.weight") ? GGML_TYPE_Q8_0
                                        : t->ne[0] == 172                 ? GGML_TYPE_F16
                                                                          : base;
                        assert_int_equal(t->type, want);

                        _cleanup_free_ float *y = malloc(t->n_elements * sizeof(float));
                        assert_int_equal(engine_dequantize_row(t->type, t->data, y, t->n_elements), 0);
                        for (uint64_t e = 0; e < t->n_elements; e++) {
                                double x = ((const float *)s->data)[e];
                                err += (y[e] - x) * (y[e] - x);
                                ref += x * x;
                        }
                }
                double rel = sqrt(err / ref);
                print_message("# stories260K %s: relative RMSE %.5f, %" PRIu64 " bytes\n",
                              quant_mixture_name(mixtures[k]), rel, (uint64_t)out->size);
                assert_true(rel < (mixtures[k] == QUANT_MIXTURE_Q8_0 ? 0.006 : 0.1));
                /* F32 to 8.5 and 4.5 bits, less the F32 norms and the F16 and Q8_0 fallbacks */
                assert_true(out->size < f->src->size / (mixtures[k] == QUANT_MIXTURE_Q8_0 ? 3 : 4));
        }
}

/* The bytes do not depend on the number of threads. */
static void test_threads_agree(void **state) {
        Fixture *f = *state;
        QuantParams p = quant_params_default();
        int fd1, fd4;

        p.mixture = QUANT_MIXTURE_Q4_K_M;
        p.n_threads = 1;
        _cleanup_(gguf_freep) Gguf *one = quantize(f->src, &p, &fd1);
        p.n_threads = 4;
        _cleanup_(gguf_freep) Gguf *four = quantize(f->src, &p, &fd4);
        p.n_threads = 0; /* one per CPU */
        int fd0;
        _cleanup_(gguf_freep) Gguf *any = quantize(f->src, &p, &fd0);
        safe_close(fd1);
        safe_close(fd4);
        safe_close(fd0);
        assert_int_equal(one->size, four->size);
        assert_memory_equal(one->base, four->base, one->size);
        assert_memory_equal(one->base, any->base, one->size);
}

static void test_leave_output_and_overrides(void **state) {
        Fixture *f = *state;
        QuantParams p = quant_params_default();
        const QuantOverride o[] = {{"attn_(q|k)", GGML_TYPE_Q5_1}};
        int fd;

        p.mixture = QUANT_MIXTURE_Q4_0;
        p.leave_output = true;
        p.overrides = o;
        p.n_overrides = 1;
        _cleanup_(gguf_freep) Gguf *out = quantize(f->src, &p, &fd);
        safe_close(fd);
        assert_int_equal(gguf_find_tensor(out, "output.weight")->type, GGML_TYPE_F32);
        assert_int_equal(gguf_find_tensor(out, "blk.3.attn_q.weight")->type, GGML_TYPE_Q5_1);
        assert_int_equal(gguf_find_tensor(out, "blk.3.attn_k.weight")->type, GGML_TYPE_Q5_1);
        assert_int_equal(gguf_find_tensor(out, "blk.3.attn_v.weight")->type, GGML_TYPE_Q4_0);
}

typedef struct ProgressLog {
        size_t calls;
        size_t cancel_at; /* sets cancel when i reaches it */
        atomic_bool cancel;
        const Gguf *src;
} ProgressLog;

static void on_progress(void *userdata, size_t i, size_t n, const char *name, uint32_t type) {
        ProgressLog *l = userdata;

        assert_int_equal(i, l->calls);
        assert_int_equal(n, l->src->n_tensors);
        assert_string_equal(name, l->src->tensors[i].name);
        assert_non_null(ggml_type_info(type));
        l->calls++;
        if (i == l->cancel_at)
                atomic_store(&l->cancel, true);
}

static void test_progress_and_cancel(void **state) {
        Fixture *f = *state;
        QuantParams p = quant_params_default();
        ProgressLog log = {.cancel_at = SIZE_MAX, .src = f->src};
        QdError err = {};
        int fd;

        p.progress = on_progress;
        p.userdata = &log;
        p.cancel = &log.cancel;
        _cleanup_(gguf_freep) Gguf *out = quantize(f->src, &p, &fd);
        safe_close(fd);
        assert_int_equal(log.calls, f->src->n_tensors);
        assert_int_equal(out->n_tensors, f->src->n_tensors);

        /* Cancelled after the fourth tensor: no more progress, -ECANCELED. */
        log = (ProgressLog){.cancel_at = 3, .src = f->src};
        fd = new_memfd();
        assert_int_equal(quant_file(f->src, fd, &p, &err), -ECANCELED);
        assert_int_equal(log.calls, 4);
        assert_non_null(strstr(err.msg, "cancelled"));
        safe_close(fd);

        /* Cancelled before it starts: nothing written. */
        qd_error_clear(&err);
        fd = new_memfd();
        assert_int_equal(quant_file(f->src, fd, &p, &err), -ECANCELED);
        assert_int_equal(lseek(fd, 0, SEEK_END), 0);
        safe_close(fd);
}

static void test_errors(void **state) {
        Fixture *f = *state;
        QuantParams p = quant_params_default();
        QdError err = {};
        int fd;

        assert_int_equal(quant_file(NULL, 1, &p, &err), -EINVAL);
        assert_int_equal(quant_file(f->src, -1, &p, NULL), -EINVAL);
        assert_int_equal(quant_file(f->src, 1, NULL, NULL), -EINVAL);

        /* A full disk. */
        qd_error_clear(&err);
        fd = open("/dev/full", O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(quant_file(f->src, fd, &p, &err), -ENOSPC);
        assert_non_null(strstr(err.msg, "Failed to write"));
        safe_close(fd);

        /* A descriptor open for reading only. */
        qd_error_clear(&err);
        fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_int_equal(quant_file(f->src, fd, &p, &err), -EBADF);
        safe_close(fd);

        /* A bad override is reported before anything is written. */
        const QuantOverride o[] = {{"(", GGML_TYPE_Q8_0}};
        p.overrides = o;
        p.n_overrides = 1;
        qd_error_clear(&err);
        fd = new_memfd();
        assert_int_equal(quant_file(f->src, fd, &p, &err), -EINVAL);
        assert_int_equal(lseek(fd, 0, SEEK_END), 0);
        safe_close(fd);
        p.n_overrides = 0;

        /* An unknown mixture. */
        p.mixture = (QuantMixture)6;
        fd = new_memfd();
        assert_int_equal(quant_file(f->src, fd, &p, NULL), -EINVAL);
        safe_close(fd);

        /* A quantized source is converted only when allowed; copying it is always fine. */
        p.mixture = QUANT_MIXTURE_Q8_0;
        _cleanup_(gguf_freep) Gguf *q8 = quantize(f->src, &p, &fd);
        safe_close(fd);
        p.mixture = QUANT_MIXTURE_Q4_0;
        qd_error_clear(&err);
        fd = new_memfd();
        assert_int_equal(quant_file(q8, fd, &p, &err), -EOPNOTSUPP);
        assert_non_null(strstr(err.msg, "already quantized (q8_0)"));
        safe_close(fd);
        p.allow_requantize = true;
        _cleanup_(gguf_freep) Gguf *q4 = quantize(q8, &p, &fd);
        safe_close(fd);
        assert_int_equal(gguf_find_tensor(q4, "blk.0.attn_q.weight")->type, GGML_TYPE_Q4_0);
        p.allow_requantize = false;
        p.mixture = QUANT_MIXTURE_Q8_0;
        _cleanup_(gguf_freep) Gguf *again = quantize(q8, &p, &fd);
        safe_close(fd);
        assert_int_equal(again->size, q8->size);
        assert_memory_equal(again->base, q8->base, q8->size);
}

/* A 2-D weight of a type nothing can dequantize (I8) cannot be converted, even when requantizing. */
static void test_unconvertible_source(void **state) {
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        const uint64_t ne[2] = {32, 2};
        int8_t data[64] = {1, 2, 3};
        QuantParams p = quant_params_default();
        QdError err = {};
        int fd = new_memfd(), out = new_memfd();

        assert_int_equal(gguf_writer_new(&w, fd, 32), 0);
        assert_int_equal(gguf_writer_add_string(w, "general.architecture", "llama"), 0);
        assert_int_equal(gguf_writer_add_tensor(w, "blk.0.attn_q.weight", GGML_TYPE_I8, 2, ne), 0);
        assert_int_equal(gguf_writer_write_header(w), 0);
        assert_int_equal(gguf_writer_write_tensor_data(w, data, sizeof(data)), 0);
        assert_int_equal(gguf_writer_finish(w), 0);
        assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);

        p.allow_requantize = true;
        assert_int_equal(quant_file(g, out, &p, &err), -EOPNOTSUPP);
        assert_non_null(strstr(err.msg, "stored as i8"));
        safe_close(fd);
        safe_close(out);
}

/* A model whose llama.block_count is a string: the type choice cannot read the shape. */
static void test_malformed_shape_keys(void **state) {
        static const char *const keys[] = {"llama.block_count", "general.architecture"};

        for (size_t k = 0; k < ELEMENTSOF(keys); k++) {
                _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
                _cleanup_(gguf_freep) Gguf *g = NULL;
                const uint64_t ne[2] = {32, 2};
                float data[64] = {0.5f};
                QuantParams p = quant_params_default();
                QuantModelShape shape;
                QdError err = {};
                int fd = new_memfd(), out = new_memfd();

                assert_int_equal(gguf_writer_new(&w, fd, 32), 0);
                if (k == 0) {
                        assert_int_equal(gguf_writer_add_string(w, "general.architecture", "llama"), 0);
                        assert_int_equal(gguf_writer_add_string(w, "llama.block_count", "eight"), 0);
                } else
                        assert_int_equal(gguf_writer_add_u32(w, "general.architecture", 7), 0);
                assert_int_equal(gguf_writer_add_tensor(w, "blk.0.attn_q.weight", GGML_TYPE_F32, 2, ne), 0);
                assert_int_equal(gguf_writer_write_header(w), 0);
                assert_int_equal(gguf_writer_write_tensor_data(w, data, sizeof(data)), 0);
                assert_int_equal(gguf_writer_finish(w), 0);
                assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);

                assert_int_equal(quant_model_shape_from_gguf(g, &shape), -EBADMSG);
                assert_int_equal(quant_file(g, out, &p, &err), -EBADMSG);
                assert_non_null(strstr(err.msg, "malformed"));
                assert_int_equal(lseek(out, 0, SEEK_END), 0);
                safe_close(fd);
                safe_close(out);
        }
}

static void *read_data(const char *name, size_t *ret_size) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path = strdup_printf("%s/quant/%s", dir ? dir : "tests/data", name);
        _cleanup_fclose_ FILE *f = fopen(path, "rb");
        void *p;
        long size;

        if (!f)
                fail_msg("Cannot open %s: %m", path);
        assert_int_equal(fseek(f, 0, SEEK_END), 0);
        size = ftell(f);
        rewind(f);
        p = malloc((size_t)size);
        assert_non_null(p);
        assert_int_equal(fread(p, 1, (size_t)size, f), (size_t)size);
        *ret_size = (size_t)size;
        return p;
}

/* The gguf package wrote interop-src.gguf; quantized by us (tests/data/make-quant-interop.py ran qd-quantize
 * with these parameters) it gives interop.gguf, and the gguf package's reading of that file, values
 * included, is ours. */
static void test_gguf_package_interop(void **state) {
        static const char *const types[] = {"f32",  "f16",  "bf16", "q8_0", "q4_0", "q4_1", "q5_0",
                                            "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl"};
        QuantOverride o[ELEMENTSOF(types)];
        char patterns[ELEMENTSOF(types)][64];
        QuantParams p = quant_params_default();
        size_t src_size, want_size, values_size, at = 0;
        _cleanup_free_ uint8_t *src_bytes = read_data("interop-src.gguf", &src_size);
        _cleanup_free_ uint8_t *want = read_data("interop.gguf", &want_size);
        _cleanup_free_ float *values = read_data("interop-values.bin", &values_size);
        _cleanup_(gguf_freep) Gguf *src = NULL, *ours = NULL;
        QdError err = {};
        int fd;

        if (gguf_open_memory(src_bytes, src_size, &src, &err) < 0)
                fail_msg("reading the gguf package's file: %s", err.msg);
        for (size_t i = 0; i < ELEMENTSOF(types); i++) {
                snprintf(patterns[i], sizeof(patterns[i]), "blk\\.0\\.%s\\.weight", types[i]);
                o[i] = (QuantOverride){.pattern = patterns[i],
                                       .type = (uint32_t)ggml_type_from_name(types[i])};
        }
        p.pure = true;
        p.overrides = o;
        p.n_overrides = ELEMENTSOF(o);
        p.n_threads = 2;
        ours = quantize(src, &p, &fd);
        safe_close(fd);
        assert_int_equal(ours->size, want_size);
        assert_memory_equal(ours->base, want, want_size);

        for (uint64_t i = 0; i < ours->n_tensors; i++) {
                const GgufTensor *t = &ours->tensors[i];
                _cleanup_free_ float *y = malloc(t->n_elements * sizeof(float));

                if (i < ELEMENTSOF(types))
                        assert_int_equal(t->type, ggml_type_from_name(types[i]));
                assert_true((at + t->n_elements) * sizeof(float) <= values_size);
                assert_int_equal(engine_dequantize_row(t->type, t->data, y, t->n_elements), 0);
                if (memcmp(y, values + at, t->n_elements * sizeof(float)) != 0)
                        fail_msg("%s: our values differ from the gguf package's", t->name);
                at += t->n_elements;
        }
        assert_int_equal(at * sizeof(float), values_size);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_every_mixture),
                cmocka_unit_test(test_other_sources),
                cmocka_unit_test(test_q8_0_and_q4_0),
                cmocka_unit_test(test_threads_agree),
                cmocka_unit_test(test_leave_output_and_overrides),
                cmocka_unit_test(test_progress_and_cancel),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_unconvertible_source),
                cmocka_unit_test(test_gguf_package_interop),
                cmocka_unit_test(test_malformed_shape_keys),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
