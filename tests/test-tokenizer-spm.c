/* SPDX-License-Identifier: MIT */
/*
 * The SentencePiece-style tokenizer on stories260K's real vocabulary of 512, against ids from Google's
 * sentencepiece library (tests/data/make-spm-reference.py), and the detokenizer on the model's golden
 * output.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine.h"

static EngineVocab *vocab;

static int setup(void **state) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
        _cleanup_(gguf_freep) Gguf *g = NULL;
        QdError err = {};

        if (gguf_open(path, &g, &err) < 0 || engine_vocab_new(g, &vocab, &err) < 0) {
                fprintf(stderr, "# %s: %s\n", path, err.msg);
                return -1;
        }
        return 0;
}

static int teardown(void **state) {
        vocab = engine_vocab_free(vocab);
        return 0;
}

static size_t unhex(const char *hex, size_t n, char *out) {
        size_t k = 0;
        for (size_t i = 0; i + 1 < n; i += 2) {
                unsigned b;
                assert_int_equal(sscanf(hex + i, "%2x", &b), 1);
                out[k++] = (char)b;
        }
        out[k] = 0;
        return k;
}

static void test_reference(void **state) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path = strdup_printf("%s/spm-stories260K.tsv", dir ? dir : "tests/data");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[8192], text[4096];
        unsigned cases = 0;

        assert_non_null(f);
        assert_int_equal(engine_vocab_kind(vocab), ENGINE_VOCAB_SPM);
        assert_int_equal(engine_vocab_n_tokens(vocab), 512);
        while (fgets(line, sizeof(line), f)) {
                char *tab = strchr(line, '\t');
                _cleanup_free_ int32_t *ids = NULL;
                size_t n, len, k = 0;
                Buf back = {};

                assert_non_null(tab);
                len = unhex(line, (size_t)(tab - line), text);
                assert_int_equal(engine_tokenize(vocab, text, len, false, false, &ids, &n), 0);
                for (char *p = tab + 1, *end; *p && *p != '\n'; p = end, k++) {
                        long want = strtol(p, &end, 10);
                        if (k >= n || ids[k] != want)
                                fail_msg("'%s': token %zu is %d, want %ld", text, k, k < n ? ids[k] : -1,
                                         want);
                }
                if (k != n)
                        fail_msg("'%s': %zu tokens, want %zu", text, n, k);

                /* The text comes back, behind the space that add_space_prefix put in front. */
                assert_int_equal(engine_detokenize(vocab, ids, n, false, &back), 0);
                assert_int_equal(back.len, len + 1);
                assert_memory_equal(back.data, " ", 1);
                assert_memory_equal(back.data + 1, text, len);
                buf_free(&back);
                cases++;
        }
        assert_true(cases >= 20);
}

static void test_bos(void **state) {
        _cleanup_free_ int32_t *ids = NULL;
        size_t n;

        assert_true(engine_vocab_add_bos(vocab));
        assert_int_equal(engine_tokenize(vocab, "Hello", 5, true, false, &ids, &n), 0);
        assert_true(n >= 2);
        assert_int_equal(ids[0], 1);
        free(ids);
        ids = NULL;
        /* "<s>" in text is the control token only when parse_special is set. */
        assert_int_equal(engine_tokenize(vocab, "<s>", 3, false, true, &ids, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(ids[0], 1);
        free(ids);
        ids = NULL;
        assert_int_equal(engine_tokenize(vocab, "<s>", 3, false, false, &ids, &n), 0);
        assert_true(n > 1);
}

static void test_golden_text(void **state) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.golden", dir ? dir : "../shared/models");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[4096], want[4096] = "";
        int32_t ids[256];
        size_t n = 0;
        Buf text = {};

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                if (line[0] != '#') {
                        for (char *p = line, *end; n < ELEMENTSOF(ids); p = end) {
                                long id = strtol(p, &end, 10);
                                if (end == p)
                                        break;
                                ids[n++] = (int32_t)id;
                        }
                } else if (startswith(line, "#  ")) {
                        /* The text line, with its newlines written as \n. */
                        size_t k = 0;
                        for (const char *p = line + 2; *p && *p != '\n'; p++)
                                if (p[0] == '\\' && p[1] == 'n') {
                                        want[k++] = '\n';
                                        p++;
                                } else
                                        want[k++] = *p;
                        want[k] = 0;
                }
        }
        assert_int_equal(n, 80);
        assert_int_equal(engine_detokenize(vocab, ids, n, false, &text), 0);
        assert_string_equal((char *)text.data, want);
        buf_free(&text);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_reference),
                cmocka_unit_test(test_bos),
                cmocka_unit_test(test_golden_text),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
