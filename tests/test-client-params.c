/* SPDX-License-Identifier: MIT */
/* client/params.c: the parameter table, value parsing, parameter sets and their Modelfile form. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <ctype.h>

#include "client.h"

static void test_table(void **state) {
        /* Every name Ollama documents for PARAMETER and the API's options, with its type. */
        static const struct {
                const char *name;
                ParamType type;
        } expected[] = {
                { "mirostat", PARAM_INT },          { "mirostat_eta", PARAM_FLOAT },
                { "mirostat_tau", PARAM_FLOAT },    { "num_ctx", PARAM_INT },
                { "repeat_last_n", PARAM_INT },     { "repeat_penalty", PARAM_FLOAT },
                { "temperature", PARAM_FLOAT },     { "seed", PARAM_INT },
                { "stop", PARAM_STRING },           { "tfs_z", PARAM_FLOAT },
                { "num_predict", PARAM_INT },       { "top_k", PARAM_INT },
                { "top_p", PARAM_FLOAT },           { "min_p", PARAM_FLOAT },
                { "typical_p", PARAM_FLOAT },       { "presence_penalty", PARAM_FLOAT },
                { "frequency_penalty", PARAM_FLOAT }, { "penalize_newline", PARAM_BOOL },
                { "num_keep", PARAM_INT },          { "num_batch", PARAM_INT },
                { "num_gpu", PARAM_INT },           { "main_gpu", PARAM_INT },
                { "num_thread", PARAM_INT },        { "use_mmap", PARAM_BOOL },
                { "numa", PARAM_BOOL },             { "use_mlock", PARAM_BOOL },
                { "low_vram", PARAM_BOOL },         { "f16_kv", PARAM_BOOL },
                { "vocab_only", PARAM_BOOL },       { "logits_all", PARAM_BOOL },
                { "embedding_only", PARAM_BOOL },   { "num_gqa", PARAM_INT },
                { "rope_frequency_base", PARAM_FLOAT }, { "rope_frequency_scale", PARAM_FLOAT },
        };
        size_t n;
        const ParamInfo *t = param_table(&n);

        assert_int_equal(n, ELEMENTSOF(expected));
        for (size_t i = 0; i < ELEMENTSOF(expected); i++) {
                const ParamInfo *p = param_lookup(expected[i].name);
                assert_non_null(p);
                assert_string_equal(p->name, expected[i].name);
                assert_int_equal(p->type, expected[i].type);
                assert_true(p->repeatable == streq(p->name, "stop"));
                assert_non_null(p->description);
        }
        /* Names are unique and in lower case. */
        for (size_t i = 0; i < n; i++) {
                for (const char *c = t[i].name; *c; c++)
                        assert_true(islower((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '_');
                for (size_t j = i + 1; j < n; j++)
                        assert_string_not_equal(t[i].name, t[j].name);
        }
        assert_ptr_equal(param_lookup("NUM_CTX"), param_lookup("num_ctx"));
        assert_null(param_lookup("num_ctxx"));
        assert_null(param_lookup(""));
        assert_null(param_lookup(NULL));
        assert_true(param_lookup("f16_kv")->deprecated);
        assert_false(param_lookup("temperature")->deprecated);
}

static void test_type_names(void **state) {
        assert_string_equal(param_type_to_string(PARAM_INT), "integer");
        assert_string_equal(param_type_to_string(PARAM_FLOAT), "number");
        assert_string_equal(param_type_to_string(PARAM_BOOL), "boolean");
        assert_string_equal(param_type_to_string(PARAM_STRING), "string");
        assert_null(param_type_to_string(_PARAM_TYPE_MAX));
        assert_null(param_type_to_string(_PARAM_TYPE_INVALID));
}

static void test_parse_values(void **state) {
        ParamValue v;
        QdError e = {};

        assert_int_equal(param_parse_value(param_lookup("num_ctx"), "4096", &v, &e), 0);
        assert_int_equal(v.i, 4096);
        assert_int_equal(param_parse_value(param_lookup("num_predict"), "-2", &v, &e), 0);
        assert_int_equal(v.i, -2);
        assert_int_equal(param_parse_value(param_lookup("temperature"), "0.7", &v, &e), 0);
        assert_true(v.f == 0.7);
        assert_int_equal(param_parse_value(param_lookup("temperature"), "1", &v, &e), 0);
        assert_true(v.f == 1.0);
        static const char *const truths[] = { "1", "t", "T", "true", "TRUE", "True" };
        static const char *const lies[] = { "0", "f", "F", "false", "FALSE", "False" };
        for (size_t i = 0; i < ELEMENTSOF(truths); i++) {
                assert_int_equal(param_parse_value(param_lookup("use_mmap"), truths[i], &v, &e), 0);
                assert_true(v.b);
                assert_int_equal(param_parse_value(param_lookup("use_mmap"), lies[i], &v, &e), 0);
                assert_false(v.b);
        }
        assert_int_equal(param_parse_value(param_lookup("stop"), "<|im_end|>", &v, &e), 0);
        assert_string_equal(v.s, "<|im_end|>");
        free(v.s);
        assert_int_equal(e.code, 0);

        assert_int_equal(param_parse_value(param_lookup("num_ctx"), "4k", &v, &e), -EINVAL);
        assert_string_equal(e.msg, "expected an integer for num_ctx, found '4k'");
        qd_error_clear(&e);
        assert_int_equal(param_parse_value(param_lookup("num_ctx"), "1.5", &v, &e), -EINVAL);
        assert_string_equal(e.msg, "expected an integer for num_ctx, found '1.5'");
        qd_error_clear(&e);
        assert_int_equal(param_parse_value(param_lookup("seed"), "99999999999999999999", &v, &e), -EINVAL);
        assert_string_equal(e.msg, "expected an integer that fits in 64 bits for seed, found '99999999999999999999'");
        qd_error_clear(&e);
        assert_int_equal(param_parse_value(param_lookup("top_p"), "high", &v, &e), -EINVAL);
        assert_string_equal(e.msg, "expected a number for top_p, found 'high'");
        qd_error_clear(&e);
        assert_int_equal(param_parse_value(param_lookup("top_p"), "inf", &v, &e), -EINVAL);
        qd_error_clear(&e);
        assert_int_equal(param_parse_value(param_lookup("top_p"), "", &v, &e), -EINVAL);
        qd_error_clear(&e);
        assert_int_equal(param_parse_value(param_lookup("numa"), "yes", &v, &e), -EINVAL);
        assert_string_equal(e.msg, "expected a boolean for numa, found 'yes'");
        qd_error_clear(&e);

        /* A table entry of no valid type is refused rather than read as garbage. */
        ParamInfo bogus = { .name = "bogus", .type = _PARAM_TYPE_MAX };
        assert_int_equal(param_parse_value(&bogus, "1", &v, &e), -EINVAL);
}

static void test_set(void **state) {
        ParamSet s = {};
        QdError e = {};

        assert_int_equal(param_set_add(&s, "temperature", "0.5", &e), 0);
        assert_int_equal(param_set_add(&s, "stop", "a", &e), 0);
        assert_int_equal(param_set_add(&s, "Temperature", "0", &e), 0); /* replaces */
        assert_int_equal(param_set_add(&s, "STOP", "b", &e), 0);        /* adds */
        assert_int_equal(s.n, 3);
        assert_true(param_set_get(&s, "temperature")->f == 0.0);
        assert_string_equal(s.items[1].s, "a");
        assert_string_equal(s.items[2].s, "b");
        assert_null(param_set_get(&s, "seed"));
        assert_null(param_set_get(&s, "nonsense"));

        assert_int_equal(param_set_add(&s, "temprature", "1", &e), -ENOENT);
        assert_string_equal(e.msg, "unknown parameter 'temprature' (modelfile(5) lists them)");
        qd_error_clear(&e);
        assert_int_equal(param_set_add(&s, "seed", "x", &e), -EINVAL);
        assert_string_equal(e.msg, "expected an integer for seed, found 'x'");
        qd_error_clear(&e);
        assert_int_equal(s.n, 3);

        assert_int_equal(param_set_add_assignment(&s, "seed=42", &e), 0);
        assert_int_equal(param_set_get(&s, "seed")->i, 42);
        assert_int_equal(param_set_add_assignment(&s, "stop=x=y", &e), 0);
        assert_string_equal(s.items[s.n - 1].s, "x=y");
        assert_int_equal(param_set_add_assignment(&s, "stop=", &e), 0);
        assert_string_equal(s.items[s.n - 1].s, "");
        assert_int_equal(param_set_add_assignment(&s, "seed", &e), -EINVAL);
        assert_string_equal(e.msg, "expected NAME=VALUE, found 'seed'");
        qd_error_clear(&e);
        assert_int_equal(param_set_add_assignment(&s, "=1", &e), -EINVAL);
        assert_string_equal(e.msg, "expected NAME=VALUE, found '=1'");
        qd_error_clear(&e);
        assert_int_equal(param_set_add_assignment(&s, "top_k=", &e), -EINVAL);
        assert_string_equal(e.msg, "expected an integer for top_k, found ''");
        qd_error_clear(&e);

        assert_int_equal(param_set_remove(&s, "stop"), 4);
        assert_int_equal(param_set_remove(&s, "stop"), 0);
        assert_int_equal(param_set_remove(&s, "nonsense"), 0);
        assert_int_equal(s.n, 2);
        assert_non_null(param_set_get(&s, "temperature"));
        assert_non_null(param_set_get(&s, "seed"));

        param_set_done(&s);
        assert_int_equal(s.n, 0);
        assert_null(s.items);
        param_set_done(&s); /* twice is harmless */
}

static void check_format(const char *name, const char *text, const char *expected) {
        ParamValue v;
        Buf b = {};

        assert_int_equal(param_parse_value(param_lookup(name), text, &v, NULL), 0);
        assert_int_equal(param_value_format(&v, &b), 0);
        assert_string_equal((char *)b.data, expected);
        if (v.info->type == PARAM_STRING)
                free(v.s);
        buf_free(&b);
}

static void test_format(void **state) {
        check_format("temperature", "0.8", "0.8");
        check_format("temperature", "0.1", "0.1");
        check_format("temperature", "1", "1");
        check_format("top_p", "0.123456789", "0.123456789");
        check_format("mirostat_eta", "1e-7", "1e-07");
        check_format("num_ctx", "4096", "4096");
        check_format("seed", "-1", "-1");
        check_format("use_mmap", "T", "true");
        check_format("use_mmap", "0", "false");
        check_format("stop", "<|im_end|>", "<|im_end|>");
        check_format("stop", "User:", "User:");
        check_format("stop", "\n\n", "\"\"\"\n\n\"\"\"");
        check_format("stop", " x", "\" x\"");
        check_format("stop", "", "\"\"");

        ParamInfo bogus = { .name = "bogus", .type = _PARAM_TYPE_MAX };
        ParamValue v = { .info = &bogus };
        Buf b = {};
        assert_int_equal(param_value_format(&v, &b), -EINVAL);
        buf_free(&b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_table),      cmocka_unit_test(test_type_names),
                cmocka_unit_test(test_parse_values), cmocka_unit_test(test_set),
                cmocka_unit_test(test_format),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
