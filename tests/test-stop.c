/* SPDX-License-Identifier: MIT */
/* Stop strings across pieces of text, held-back text, errors, and the num_predict limit. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine.h"

/* Pushes each piece in turn, checking what comes out after each and the return values. */
static void feed(EngineStop *s, const char *const *pieces, const char *const *want, const int *ret,
                 size_t n) {
        for (size_t i = 0; i < n; i++) {
                Buf out = {};
                int r = engine_stop_push(s, pieces[i], strlen(pieces[i]), &out);
                if (r != ret[i] || out.len != strlen(want[i]) ||
                    (out.len && memcmp(out.data, want[i], out.len) != 0))
                        fail_msg("piece %zu '%s': returned %d with '%.*s', want %d with '%s'", i, pieces[i],
                                 r, (int)out.len, out.len ? (char *)out.data : "", ret[i], want[i]);
                buf_free(&out);
        }
}

#define FEED(s, pieces, want, ret)                                                 \
        do {                                                                       \
                _Static_assert(ELEMENTSOF(pieces) == ELEMENTSOF(want), "lengths"); \
                feed(s, pieces, want, ret, ELEMENTSOF(pieces));                    \
        } while (0)

static void test_span(void **state) {
        _cleanup_(engine_stop_freep) EngineStop *s = NULL;
        const char *stops[] = {"</end>"};
        const char *pieces[] = {"Hello <", "/en", "d> more", "ignored"};
        const char *want[] = {"Hello ", "", "", ""};
        const int ret[] = {0, 0, 1, 1};

        assert_int_equal(engine_stop_new(stops, 1, &s), 0);
        assert_false(engine_stop_hit(s));
        FEED(s, pieces, want, ret);
        assert_true(engine_stop_hit(s));
        Buf out = {};
        assert_int_equal(engine_stop_flush(s, &out), 0);
        assert_int_equal(out.len, 0);
}

static void test_release(void **state) {
        _cleanup_(engine_stop_freep) EngineStop *s = NULL;
        const char *stops[] = {"</end>", "STOP"};
        /* "<" is held until "b" shows it is no stop string; "</e" is held, then "ST" as well, and the flush
         * at the end lets them go. */
        const char *pieces[] = {"a <", "b", " </e", "x ST"};
        const char *want[] = {"a ", "<b", " ", "</ex "};
        const int ret[] = {0, 0, 0, 0};
        Buf out = {};

        assert_int_equal(engine_stop_new(stops, 2, &s), 0);
        FEED(s, pieces, want, ret);
        assert_int_equal(engine_stop_flush(s, &out), 0);
        assert_string_equal((char *)out.data, "ST");
        assert_false(engine_stop_hit(s));
        buf_free(&out);
}

static void test_earliest(void **state) {
        _cleanup_(engine_stop_freep) EngineStop *s = NULL, *s2 = NULL, *s3 = NULL;
        const char *stops[] = {"world", "lo w", "\n\nUser:"};
        /* "l" could begin "lo w" and waits; then "lo w" comes before "world" does. */
        const char *pieces[] = {"hel", "lo world"};
        const char *want[] = {"he", "l"};
        const int ret[] = {0, 1};
        const char *pieces2[] = {"Sure.\n", "\nUs", "er: hi"};
        const char *want2[] = {"Sure.", "", ""};
        const int ret2[] = {0, 0, 1};
        const char *pieces3[] = {"worldly"};
        const char *want3[] = {""};
        const int ret3[] = {1};

        assert_int_equal(engine_stop_new(stops, 3, &s), 0);
        FEED(s, pieces, want, ret);
        assert_int_equal(engine_stop_new(stops, 3, &s2), 0);
        FEED(s2, pieces2, want2, ret2);
        assert_int_equal(engine_stop_new(stops, 3, &s3), 0);
        FEED(s3, pieces3, want3, ret3);
}

static void test_none(void **state) {
        _cleanup_(engine_stop_freep) EngineStop *s = NULL;
        const char *pieces[] = {"anything ", "at all"};
        const char *want[] = {"anything ", "at all"};
        const int ret[] = {0, 0};

        assert_int_equal(engine_stop_new(NULL, 0, &s), 0);
        FEED(s, pieces, want, ret);
}

static void test_utf8(void **state) {
        _cleanup_(engine_stop_freep) EngineStop *s = NULL;
        const char *stops[] = {"。再"};
        const char *pieces[] = {"你好", "。", "再见"};
        const char *want[] = {"你好", "", ""};
        const int ret[] = {0, 0, 1};

        assert_int_equal(engine_stop_new(stops, 1, &s), 0);
        FEED(s, pieces, want, ret);
}

static void test_errors(void **state) {
        EngineStop *s = NULL;
        const char *empty[] = {"ok", ""};
        const char *null[] = {NULL};
        const char *many[65];
        _cleanup_free_ char *long_one = malloc(4098);

        assert_int_equal(engine_stop_new(empty, 2, &s), -EINVAL);
        assert_int_equal(engine_stop_new(null, 1, &s), -EINVAL);
        for (size_t i = 0; i < 65; i++)
                many[i] = "x";
        assert_int_equal(engine_stop_new(many, 65, &s), -EMSGSIZE);
        assert_int_equal(engine_stop_new(many, 64, &s), 0);
        s = engine_stop_free(s);
        memset(long_one, 'a', 4097);
        long_one[4097] = 0;
        assert_int_equal(engine_stop_new((const char *const *)&long_one, 1, &s), -EMSGSIZE);
        assert_null(s);
}

static void test_with_detok(void **state) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_(engine_vocab_freep) EngineVocab *v = NULL;
        _cleanup_(engine_detok_freep) EngineDetok *d = NULL;
        _cleanup_(engine_stop_freep) EngineStop *s = NULL;
        _cleanup_free_ int32_t *ids = NULL;
        const char *stops[] = {"time, th"};
        static const char text[] = "Once upon a time, there was a girl.";
        Buf piece = {}, out = {};
        size_t n, i;

        assert_int_equal(gguf_open(path, &g, NULL), 0);
        assert_int_equal(engine_vocab_new(g, &v, NULL), 0);
        assert_int_equal(engine_tokenize(v, text, strlen(text), false, false, &ids, &n), 0);
        assert_int_equal(engine_detok_new(&d), 0);
        assert_int_equal(engine_stop_new(stops, 1, &s), 0);
        for (i = 0; i < n; i++) {
                piece.len = 0;
                assert_int_equal(engine_detok_push(d, v, ids[i], false, &piece), 0);
                if (engine_stop_push(s, (const char *)piece.data, piece.len, &out) == 1)
                        break;
        }
        assert_true(i < n - 2); /* stopped before the end */
        assert_string_equal((char *)out.data, " Once upon a ");
        buf_free(&piece);
        buf_free(&out);
}

static void test_predict(void **state) {
        assert_false(engine_predict_done(-1, 100000, 10, 2048));
        assert_true(engine_predict_done(-1, 5, 2048, 2048));
        assert_false(engine_predict_done(-2, 5, 2047, 2048));
        assert_true(engine_predict_done(-2, 5, 2048, 2048));
        assert_false(engine_predict_done(3, 2, 10, 2048));
        assert_true(engine_predict_done(3, 3, 10, 2048));
        assert_true(engine_predict_done(0, 0, 10, 2048));
        assert_true(engine_predict_done(100, 3, 16, 16));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_span),     cmocka_unit_test(test_release),
                cmocka_unit_test(test_earliest), cmocka_unit_test(test_none),
                cmocka_unit_test(test_utf8),     cmocka_unit_test(test_errors),
                cmocka_unit_test(test_predict),  cmocka_unit_test(test_with_detok),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
