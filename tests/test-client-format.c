/* SPDX-License-Identifier: MIT */
/* client/format.c: durations, sizes, tables, the statistics block, word wrap and progress lines. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <locale.h>
#include <math.h>

#include "client.h"

#define SEC 1000000000LL

static void test_go_duration(void **state) {
        static const struct {
                int64_t ns;
                const char *s;
        } cases[] = {
                { 0, "0s" },
                { 1, "1ns" },
                { 850, "850ns" },
                { 1500, "1.5µs" },
                { 1000, "1µs" },
                { 12345678, "12.345678ms" },
                { 1000000, "1ms" },
                { 999999999, "999.999999ms" },
                { SEC, "1s" },
                { 4709313000, "4.709313s" },
                { 5047924316, "5.047924316s" },
                { 62 * SEC + SEC / 2, "1m2.5s" },
                { 60 * SEC, "1m0s" },
                { 3600 * SEC, "1h0m0s" },
                { 7203 * SEC, "2h0m3s" },
                { -1500 * 1000000LL, "-1.5s" },
                { -999, "-999ns" },
                { INT64_MIN, "-2562047h47m16.854775808s" },
                { INT64_MAX, "2562047h47m16.854775807s" },
        };
        char buf[64];

        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                assert_string_equal(format_go_duration(buf, sizeof(buf), cases[i].ns), cases[i].s);
}

static void test_eta(void **state) {
        char buf[32];

        assert_string_equal(format_eta(buf, sizeof(buf), 0), "0s");
        assert_string_equal(format_eta(buf, sizeof(buf), 44.6), "45s");
        assert_string_equal(format_eta(buf, sizeof(buf), 91), "1m31s");
        assert_string_equal(format_eta(buf, sizeof(buf), 3600 + 180 + 59), "1h3m");
        assert_string_equal(format_eta(buf, sizeof(buf), -5), "0s");
        assert_string_equal(format_eta(buf, sizeof(buf), NAN), "0s");
        assert_string_equal(format_eta(buf, sizeof(buf), INFINITY), "0s");
}

static void test_human(void **state) {
        static const struct {
                int64_t ns;
                const char *s;
        } cases[] = {
                { SEC / 2, "Less than a second" },
                { SEC, "1 second" },
                { 59 * SEC, "59 seconds" },
                { 60 * SEC, "About a minute" },
                { 119 * SEC, "About a minute" },
                { 120 * SEC, "2 minutes" },
                { 59 * 60 * SEC, "59 minutes" },
                { 90 * 60 * SEC - SEC, "About an hour" },
                { 90 * 60 * SEC, "2 hours" },
                { 47 * 3600 * SEC, "47 hours" },
                { 48 * 3600 * SEC, "2 days" },
                { 13 * 86400 * SEC, "13 days" },
                { 14 * 86400 * SEC, "2 weeks" },
                { 59 * 86400 * SEC, "8 weeks" },
                { 60 * 86400 * SEC, "2 months" },
                { 729 * 86400 * SEC, "24 months" },
                { 730 * 86400 * SEC, "2 years" },
        };
        char buf[64];

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                assert_string_equal(format_human_duration(buf, sizeof(buf), cases[i].ns), cases[i].s);
                assert_string_equal(format_human_duration(buf, sizeof(buf), -cases[i].ns), cases[i].s);
        }
        assert_string_equal(format_human_time(buf, sizeof(buf), -14 * 86400 * SEC), "2 weeks ago");
        assert_string_equal(format_human_time(buf, sizeof(buf), 4 * 60 * SEC + SEC), "4 minutes from now");
        assert_string_equal(format_human_time(buf, sizeof(buf), 0), "Less than a second ago");
}

static void test_width(void **state) {
        assert_int_equal(utf8_width("abc", 3), 3);
        assert_int_equal(utf8_width("", 0), 0);
        assert_int_equal(utf8_width("héllo", strlen("héllo")), 5);
        assert_int_equal(utf8_width("日本", strlen("日本")), 4);
        assert_int_equal(utf8_width("e\xcc\x81", 3), 1); /* e + combining acute */
        assert_int_equal(utf8_width("\xff", 1), 1);       /* invalid byte: one replacement character */
        assert_int_equal(utf8_width("\xe6\x97", 2), 2);   /* truncated sequence: each byte one column */
        assert_int_equal(utf8_width("\xc3(", 2), 2);      /* bad continuation */
        assert_int_equal(utf8_width("\xf0\x9f\x98\x80", 4), 2); /* emoji */
}

static void test_stats(void **state) {
        GenerateStats s = {
                .total_ns = 5047924316,
                .load_ns = 12345678,
                .prompt_eval_count = 26,
                .prompt_eval_ns = 130000000,
                .eval_count = 290,
                .eval_ns = 4709313000,
        };
        Buf b = {};

        assert_int_equal(format_stats(&s, &b), 0);
        assert_string_equal((char *)b.data, "total duration:       5.047924316s\n"
                                             "load duration:        12.345678ms\n"
                                             "prompt eval count:    26 token(s)\n"
                                             "prompt eval duration: 130ms\n"
                                             "prompt eval rate:     200.00 tokens/s\n"
                                             "eval count:           290 token(s)\n"
                                             "eval duration:        4.709313s\n"
                                             "eval rate:            61.58 tokens/s\n");
        buf_free(&b);

        /* What was not measured is left out. */
        GenerateStats t = { .total_ns = SEC, .eval_count = 3 };
        assert_int_equal(format_stats(&t, &b), 0);
        assert_string_equal((char *)b.data, "total duration:       1s\n"
                                             "eval count:           3 token(s)\n");
        buf_free(&b);
        GenerateStats u = { .total_ns = SEC, .prompt_eval_count = 4 };
        assert_int_equal(format_stats(&u, &b), 0);
        assert_string_equal((char *)b.data, "total duration:       1s\n"
                                             "prompt eval count:    4 token(s)\n");
        buf_free(&b);
        /* A load measured as nothing (the model was loaded already) is shown, as Ollama does. */
        GenerateStats v = { .total_ns = SEC, .has_load = true, .eval_count = 2 };
        assert_int_equal(format_stats(&v, &b), 0);
        assert_string_equal((char *)b.data, "total duration:       1s\n"
                                             "load duration:        0s\n"
                                             "eval count:           2 token(s)\n");
        buf_free(&b);
}

static void test_table(void **state) {
        _cleanup_(table_freep) Table *t = NULL;
        Buf b = {};

        assert_int_equal(table_new(&t, 4, (const char *const[]){ "NAME", "ID", "SIZE", "MODIFIED" }), 0);
        assert_int_equal(table_add_row(t, (const char *const[]){ "llama3.2:latest", "a80c4f17acd5", "2.0 GB",
                                                                 "2 weeks ago" }),
                         0);
        assert_int_equal(table_add_row(t, (const char *const[]){ "日本:latest", "0123456789ab", "91 MB", NULL }), 0);
        assert_int_equal(table_format(t, &b), 0);
        assert_string_equal((char *)b.data, "NAME               ID              SIZE      MODIFIED\n"
                                             "llama3.2:latest    a80c4f17acd5    2.0 GB    2 weeks ago\n"
                                             "日本:latest        0123456789ab    91 MB\n");
        buf_free(&b);

        /* Headers alone when there is nothing to list. */
        _cleanup_(table_freep) Table *e = NULL;
        assert_int_equal(table_new(&e, 2, (const char *const[]){ "A", "B" }), 0);
        assert_int_equal(table_format(e, &b), 0);
        assert_string_equal((char *)b.data, "A    B\n");
        buf_free(&b);

        Table *z = NULL;
        assert_int_equal(table_new(&z, 0, NULL), -EINVAL);
        assert_null(table_free(NULL));
}

static char *wrap(unsigned width, const char *const *chunks) {
        WordWrap w = { .width = width };
        Buf b = {};

        for (size_t i = 0; chunks[i]; i++)
                assert_int_equal(word_wrap_feed(&w, chunks[i], strlen(chunks[i]), &b), 0);
        assert_int_equal(word_wrap_flush(&w, &b), 0);
        word_wrap_done(&w);
        return buf_steal_str(&b);
}

static void check_wrap(unsigned width, const char *const *chunks, const char *expected) {
        _cleanup_free_ char *s = wrap(width, chunks);
        assert_string_equal(s, expected);
}

static void test_wrap(void **state) {
        /* Words move to the next line whole, the blank at the break is dropped. */
        check_wrap(10, (const char *const[]){ "The quick brown fox jumps", NULL }, "The quick\nbrown fox\njumps");
        /* Token by token, with words split across tokens, gives the same. */
        check_wrap(10, (const char *const[]){ "The", " qu", "ick", " bro", "wn f", "ox", " jumps", NULL },
                   "The quick\nbrown fox\njumps");
        /* Exactly full lines. */
        check_wrap(5, (const char *const[]){ "abcde fghij", NULL }, "abcde\nfghij");
        /* A word wider than a line is broken. */
        check_wrap(4, (const char *const[]){ "abcdefghij x", NULL }, "abcd\nefgh\nij x");
        check_wrap(4, (const char *const[]){ "ab cdefghij", NULL }, "ab\ncdef\nghij");
        /* Real newlines reset the column and keep indentation. */
        check_wrap(10, (const char *const[]){ "one\n    two three\nfour", NULL }, "one\n    two\nthree\nfour");
        /* Blanks before a newline are dropped; the final ones are kept. */
        check_wrap(10, (const char *const[]){ "a   \nb ", NULL }, "a\nb ");
        /* Wide characters count two columns. */
        check_wrap(5, (const char *const[]){ "日本 語", NULL }, "日本\n語");
        /* Width 0 passes everything through. */
        check_wrap(0, (const char *const[]){ "The quick brown fox", NULL }, "The quick brown fox");
        /* Nothing in, nothing out. */
        check_wrap(8, (const char *const[]){ "", NULL }, "");
}

static void check_progress(unsigned width, const char *label, uint64_t done, uint64_t total, double rate,
                           double eta, const char *expected) {
        Buf b = {};

        assert_int_equal(format_progress(&b, width, label, done, total, rate, eta), 0);
        assert_string_equal((char *)b.data, expected);
        buf_free(&b);
}

static void test_progress(void **state) {
        /* label 20 + ": 100% " 7 + bar ends 2 + " " 1 + 32 = 62 fixed; width 82 leaves a bar of 20. */
        check_progress(82, "pulling 8eeb52dfb3bb", 2100000000, 4700000000ULL, 98000000, 26.4,
                       "pulling 8eeb52dfb3bb:  44% ▕████████            ▏ 2.1 GB/4.7 GB  98 MB/s  26s");
        check_progress(82, "pulling 8eeb52dfb3bb", 4700000000ULL, 4700000000ULL, 98000000, 0,
                       "pulling 8eeb52dfb3bb: 100% ▕████████████████████▏ 4.7 GB");
        /* Narrow terminals keep a bar of 10; wide ones stop at 50. */
        check_progress(20, "x", 5, 10, -1, -1, "x:  50% ▕█████     ▏ 5 B/10 B");
        check_progress(500, "x", 10, 10, -1, -1,
                       "x: 100% ▕██████████████████████████████████████████████████▏ 10 B");
        /* Rate known, time left not. */
        check_progress(20, "x", 0, 10, 1500, -1, "x:   0% ▕          ▏ 0 B/10 B  1.5 KB/s");
        /* More than the total counts as done. */
        check_progress(20, "x", 12, 10, -1, -1, "x: 100% ▕██████████▏ 10 B");
        /* Unknown total: no bar. */
        check_progress(80, "verifying sha256 digest", 0, 0, -1, -1, "verifying sha256 digest");
        check_progress(80, "copying", 1500000, 0, -1, -1, "copying: 1.5 MB");
}

/* Without a terminal each step is one line when it starts and one when it is done, also when its first
 * report is already complete (the daemon sends only the latest figures). */
static void test_progress_plain(void **state) {
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);
        Progress *p = NULL;

        assert_non_null(f);
        assert_int_equal(progress_new(&p, f, false, 80), 0);
        assert_int_equal(progress_update(p, "pulling", "a", 0, 2000, 0), 0);
        assert_int_equal(progress_update(p, "pulling", "a", 1000, 2000, 300000000), 0);
        assert_int_equal(progress_update(p, "pulling", "a", 2000, 2000, 600000000), 0);
        assert_int_equal(progress_update(p, "pulling", "a", 2000, 2000, 700000000), 0);
        assert_int_equal(progress_update(p, "quantizing", NULL, 1200000, 1200000, 800000000), 0);
        assert_int_equal(progress_finish(p), 0);
        progress_free(p);
        assert_int_equal(fclose(f), 0);
        assert_string_equal(text, "pulling a: 2.0 KB\npulling a: done\nquantizing: 1.2 MB\nquantizing: done\n");
        free(text);
}

static void test_spinner(void **state) {
        assert_string_equal(spinner_frame(0), "⠋");
        assert_string_equal(spinner_frame(9), "⠏");
        assert_string_equal(spinner_frame(10), "⠋");
        for (unsigned i = 0; i < 10; i++)
                assert_int_equal(utf8_width(spinner_frame(i), strlen(spinner_frame(i))), 1);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_go_duration), cmocka_unit_test(test_eta),
                cmocka_unit_test(test_human),       cmocka_unit_test(test_width),
                cmocka_unit_test(test_stats),       cmocka_unit_test(test_table),
                cmocka_unit_test(test_wrap),        cmocka_unit_test(test_progress),
                cmocka_unit_test(test_progress_plain),
                cmocka_unit_test(test_spinner),
        };

        /* Widths of non-ASCII characters need a UTF-8 locale; C.UTF-8 is always there on glibc. */
        assert_non_null(setlocale(LC_CTYPE, "C.UTF-8"));
        return cmocka_run_group_tests(tests, NULL, NULL);
}
