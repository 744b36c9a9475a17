/* SPDX-License-Identifier: MIT */
/*
 * Detokenization on stories260K's SentencePiece vocabulary: token pieces (▁ as a space, byte tokens, control
 * and unknown tokens), and the streaming detokenizer holding back characters that byte tokens split.
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

static bool valid_utf8(const Buf *b) {
        uint8_t *p = b->data;
        for (size_t i = 0; i < b->len;) {
                size_t n = p[i] < 0x80 ? 1 : p[i] >= 0xf0 ? 4 : p[i] >= 0xe0 ? 3 : p[i] >= 0xc2 ? 2 : 0;
                if (n == 0 || i + n > b->len)
                        return false;
                for (size_t k = 1; k < n; k++)
                        if ((p[i + k] & 0xc0) != 0x80)
                                return false;
                i += n;
        }
        return true;
}

static void test_pieces(void **state) {
        Buf b = {};
        int32_t id;

        /* <s> is a control token: silent unless special; <unk> shows as U+FFFD. */
        assert_int_equal(engine_token_piece(vocab, 1, false, &b), 0);
        assert_int_equal(b.len, 0);
        assert_int_equal(engine_token_piece(vocab, 1, true, &b), 0);
        assert_string_equal((char *)b.data, "<s>");
        b.len = 0;
        assert_int_equal(engine_token_piece(vocab, 0, false, &b), 0);
        assert_string_equal((char *)b.data, "\xef\xbf\xbd");
        b.len = 0;
        assert_int_equal(engine_token_piece(vocab, 0, true, &b), 0);
        assert_string_equal((char *)b.data, "<unk>");
        b.len = 0;
        /* <0x41> is "A"; a token with ▁ starts with a space. */
        id = engine_vocab_find(vocab, "<0x41>", 6);
        assert_true(id >= 0);
        assert_int_equal(engine_token_piece(vocab, id, false, &b), 0);
        assert_string_equal((char *)b.data, "A");
        b.len = 0;
        id = engine_vocab_find(vocab, "\xe2\x96\x81the", 6);
        assert_true(id >= 0);
        assert_int_equal(engine_token_piece(vocab, id, false, &b), 0);
        assert_string_equal((char *)b.data, " the");
        /* Ids out of range. */
        assert_int_equal(engine_token_piece(vocab, 512, false, &b), -EINVAL);
        assert_int_equal(engine_token_piece(vocab, INT32_MIN, false, &b), -EINVAL);
        assert_int_equal(engine_detokenize(vocab, (const int32_t[]){400, 512}, 2, false, &b), -EINVAL);
        buf_free(&b);
}

static void test_stream(void **state) {
        static const char text[] = "Hi 😀 and 日本, café!";
        _cleanup_free_ int32_t *ids = NULL;
        _cleanup_(engine_detok_freep) EngineDetok *d = NULL;
        Buf out = {};
        size_t n, held_back = 0;

        assert_int_equal(engine_tokenize(vocab, text, strlen(text), false, false, &ids, &n), 0);
        assert_int_equal(engine_detok_new(&d), 0);
        for (size_t i = 0; i < n; i++) {
                size_t before = out.len;
                assert_int_equal(engine_detok_push(d, vocab, ids[i], false, &out), 0);
                /* Every prefix that comes out is whole characters. */
                assert_true(valid_utf8(&out));
                if (out.len == before)
                        held_back++;
        }
        /* The emoji is four byte tokens, 日 and 本 three each: at least 3 + 2 + 2 pushes give nothing. */
        assert_true(held_back >= 7);
        assert_int_equal(engine_detok_flush(d, &out), 0);
        assert_int_equal(out.len, strlen(text) + 1);
        assert_memory_equal(out.data, " ", 1);
        assert_memory_equal(out.data + 1, text, strlen(text));

        /* An invalid id is refused and leaves the stream as it was. */
        assert_int_equal(engine_detok_push(d, vocab, -5, false, &out), -EINVAL);
        assert_int_equal(out.len, strlen(text) + 1);
        buf_free(&out);
}

static void test_stream_cut(void **state) {
        _cleanup_(engine_detok_freep) EngineDetok *d = NULL;
        int32_t f0 = engine_vocab_find(vocab, "<0xF0>", 6), x9f = engine_vocab_find(vocab, "<0x9F>", 6);
        int32_t a = engine_vocab_find(vocab, "<0x41>", 6);
        Buf out = {};

        assert_true(f0 >= 0 && x9f >= 0 && a >= 0);
        assert_int_equal(engine_detok_new(&d), 0);
        /* F0 9F then "A": the emoji never finished, so each of its two bytes becomes U+FFFD before the A. */
        assert_int_equal(engine_detok_push(d, vocab, f0, false, &out), 0);
        assert_int_equal(engine_detok_push(d, vocab, x9f, false, &out), 0);
        assert_int_equal(out.len, 0);
        assert_int_equal(engine_detok_push(d, vocab, a, false, &out), 0);
        assert_string_equal((char *)out.data, "\xef\xbf\xbd\xef\xbf\xbd"
                                              "A");
        /* A flush with an unfinished character gives U+FFFD once and resets the stream. */
        out.len = 0;
        assert_int_equal(engine_detok_push(d, vocab, f0, false, &out), 0);
        assert_int_equal(engine_detok_flush(d, &out), 0);
        assert_string_equal((char *)out.data, "\xef\xbf\xbd");
        out.len = 0;
        assert_int_equal(engine_detok_flush(d, &out), 0);
        assert_int_equal(out.len, 0);
        buf_free(&out);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_pieces),
                cmocka_unit_test(test_stream),
                cmocka_unit_test(test_stream_cut),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
