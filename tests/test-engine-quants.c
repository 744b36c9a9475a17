/* SPDX-License-Identifier: MIT */
/*
 * Scalar conversions and dequantization against tests/data/dequant-reference.gguf, which the PyPI gguf package
 * (an independent implementation) made with tests/data/make-dequant-reference.py.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <inttypes.h>
#include <math.h>

#include "engine.h"

static Gguf *ref;

static int setup(void **state) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path = strdup_printf("%s/dequant-reference.gguf", dir ? dir : "tests/data");
        QdError err = {};

        if (gguf_open(path, &ref, &err) < 0) {
                fprintf(stderr, "# %s: %s\n", path, err.msg);
                return -1;
        }
        return 0;
}

static int teardown(void **state) {
        ref = gguf_free(ref);
        return 0;
}

static const GgufTensor *tensor(const char *name) {
        const GgufTensor *t = gguf_find_tensor(ref, name);

        if (!t)
                fail_msg("reference tensor '%s' missing", name);
        return t;
}

static void check_type(const char *name, uint32_t type) {
        _cleanup_free_ char *ename = strdup_printf("%s.expected", name);
        const GgufTensor *q = tensor(name), *e = tensor(ename);
        _cleanup_free_ float *y = NULL;

        assert_int_equal(q->type, type);
        assert_int_equal(q->n_elements, e->n_elements);
        y = malloc(e->n_elements * sizeof(float));
        assert_non_null(y);
        assert_int_equal(engine_dequantize_row(type, q->data, y, e->n_elements), 0);

        const float *x = e->data;
        for (uint64_t i = 0; i < e->n_elements; i++)
                if (memcmp(&x[i], &y[i], sizeof(float)) != 0)
                        fail_msg("%s element %" PRIu64 ": got %.9g, reference %.9g", name, i, y[i], x[i]);
}

static void test_dequantize_all_types(void **state) {
        static const struct {
                const char *name;
                uint32_t type;
        } types[] = {
                { "f32", GGML_TYPE_F32 },     { "f16", GGML_TYPE_F16 },   { "bf16", GGML_TYPE_BF16 },
                { "q4_0", GGML_TYPE_Q4_0 },   { "q4_1", GGML_TYPE_Q4_1 }, { "q5_0", GGML_TYPE_Q5_0 },
                { "q5_1", GGML_TYPE_Q5_1 },   { "q8_0", GGML_TYPE_Q8_0 }, { "q8_1.blocks", GGML_TYPE_Q8_1 },
                { "q2_K", GGML_TYPE_Q2_K },   { "q3_K", GGML_TYPE_Q3_K }, { "q4_K", GGML_TYPE_Q4_K },
                { "q5_K", GGML_TYPE_Q5_K },   { "q6_K", GGML_TYPE_Q6_K }, { "q8_K", GGML_TYPE_Q8_K },
                { "iq4_nl", GGML_TYPE_IQ4_NL },
        };

        for (size_t i = 0; i < ELEMENTSOF(types); i++) {
                if (types[i].type == GGML_TYPE_Q8_1) {
                        /* The expected values are under the type's own name. */
                        const GgufTensor *q = tensor("q8_1.blocks"), *e = tensor("q8_1.expected");
                        _cleanup_free_ float *y = malloc(e->n_elements * sizeof(float));
                        assert_non_null(y);
                        assert_int_equal(q->n_elements, e->n_elements / QK8_1 * sizeof(BlockQ8_1));
                        assert_int_equal(engine_dequantize_row(GGML_TYPE_Q8_1, q->data, y, e->n_elements), 0);
                        assert_memory_equal(y, e->data, e->n_elements * sizeof(float));
                        continue;
                }
                check_type(types[i].name, types[i].type);
        }
}

static void test_dequantize_errors(void **state) {
        uint8_t blocks[sizeof(BlockQ4_K) * 2] = {};
        float y[QK_K * 2];

        assert_int_equal(engine_dequantize_row(99, blocks, y, 32), -EINVAL);
        assert_int_equal(engine_dequantize_row(GGML_TYPE_Q4_0 + 2, blocks, y, 32), -EINVAL); /* retired id 4 */
        assert_int_equal(engine_dequantize_row(GGML_TYPE_Q4_0, blocks, y, 33), -EINVAL);
        assert_int_equal(engine_dequantize_row(GGML_TYPE_Q4_K, blocks, y, 128), -EINVAL);
        assert_int_equal(engine_dequantize_row(GGML_TYPE_Q4_0, NULL, y, 32), -EINVAL);
        assert_int_equal(engine_dequantize_row(GGML_TYPE_Q4_0, blocks, NULL, 32), -EINVAL);
        assert_int_equal(engine_dequantize_row(GGML_TYPE_IQ2_XXS, blocks, y, 256), -EOPNOTSUPP);
        assert_int_equal(engine_dequantize_row(GGML_TYPE_I32, blocks, y, 4), -EOPNOTSUPP);
        /* Zero elements is a valid, empty row. */
        assert_int_equal(engine_dequantize_row(GGML_TYPE_Q6_K, blocks, y, 0), 0);
}

static void test_fp16_from_f32(void **state) {
        const GgufTensor *in = tensor("fp16.in"), *out = tensor("fp16.out");
        const float *x = in->data;
        const uint16_t *h = out->data;

        assert_int_equal(in->n_elements, out->n_elements);
        for (uint64_t i = 0; i < in->n_elements; i++) {
                GgmlHalf got = engine_f32_to_fp16(x[i]);
                if (isnan(x[i]))
                        assert_true((got & 0x7c00) == 0x7c00 && (got & 0x3ff) != 0);
                else if (got != h[i])
                        fail_msg("fp16(%a): got 0x%04x, numpy 0x%04x", x[i], got, h[i]);
        }
}

static void test_fp16_round_trip(void **state) {
        /* Every binary16 value survives the trip through float32, and the float32 has the same value. */
        for (uint32_t i = 0; i < 0x10000; i++) {
                float f = engine_fp16_to_f32((GgmlHalf)i);
                bool nan = (i & 0x7c00) == 0x7c00 && (i & 0x3ff) != 0;
                assert_int_equal(isnan(f) != 0, nan);
                if (nan) {
                        /* Quiet NaNs keep their payload. */
                        if (i & 0x200)
                                assert_int_equal(engine_f32_to_fp16(f), i);
                        continue;
                }
                assert_int_equal(engine_f32_to_fp16(f), i);
        }
        assert_true(engine_fp16_to_f32(0x3c00) == 1.0f);
        assert_true(engine_fp16_to_f32(0xc000) == -2.0f);
        assert_true(engine_fp16_to_f32(0x0001) == 0x1p-24f);
        assert_true(engine_fp16_to_f32(0x7bff) == 65504.0f);
        assert_true(isinf(engine_fp16_to_f32(0xfc00)) && engine_fp16_to_f32(0xfc00) < 0);
}

static void test_bf16(void **state) {
        const GgufTensor *in = tensor("bf16.in"), *out = tensor("bf16.out");
        const float *x = in->data;
        const uint16_t *h = out->data;

        assert_int_equal(in->n_elements, out->n_elements);
        for (uint64_t i = 0; i < in->n_elements; i++) {
                uint16_t got = engine_f32_to_bf16(x[i]);
                if (got != h[i])
                        fail_msg("bf16(%a): got 0x%04x, gguf 0x%04x", x[i], got, h[i]);
                if (!isnan(x[i]))
                        assert_int_equal(engine_f32_to_bf16(engine_bf16_to_f32(got)), got);
        }
        assert_true(engine_bf16_to_f32(0x3f80) == 1.0f);
        assert_true(isnan(engine_bf16_to_f32(engine_f32_to_bf16(NAN))));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dequantize_all_types),
                cmocka_unit_test(test_dequantize_errors),
                cmocka_unit_test(test_fp16_from_f32),
                cmocka_unit_test(test_fp16_round_trip),
                cmocka_unit_test(test_bf16),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
