/* SPDX-License-Identifier: MIT */
/*
 * The byte-level BPE tokenizer on SmolLM2-135M's real vocabulary (49152 tokens, 48900 merges) against ids
 * from Hugging Face's tokenizers library (tests/data/make-bpe-reference.py): 39 strings with the model's own
 * smollm pre-tokenizer, with and without special-token parsing, and the same strings through the gpt2,
 * llama3 and qwen2 pre-tokenizers on a copy of the vocabulary whose tokenizer.ggml.pre is changed. Every row
 * also round-trips through the detokenizer, and the streaming detokenizer must give the same text one token
 * at a time.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <sys/mman.h>

#include "engine.h"

#define N_PRE 4
static const char *const pre_names[N_PRE] = {"smollm", "gpt2", "llama3", "qwen2"};
static EngineVocab *vocabs[N_PRE];

static char *smollm_path(void) {
        const char *p = getenv("QUANTD_TEST_SMOLLM");
        if (p)
                return strdup(p);
        return strdup_printf("%s/.cache/quantd-test/SmolLM2-135M-Instruct.Q4_1.gguf",
                             strempty(getenv("HOME")));
}

/* A GGUF holding g's tokenizer keys, with tokenizer.ggml.pre set to pre. */
static int copy_with_pre(const Gguf *g, const char *pre) {
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        int fd = memfd_create("vocab", MFD_CLOEXEC);

        assert_true(fd >= 0);
        assert_int_equal(gguf_writer_new(&w, fd, GGUF_DEFAULT_ALIGNMENT), 0);
        for (uint64_t i = 0; i < g->n_kv; i++)
                if (startswith(g->kv[i].key, "tokenizer.ggml.") &&
                    !streq(g->kv[i].key, "tokenizer.ggml.pre"))
                        assert_int_equal(gguf_writer_add_value(w, g->kv[i].key, &g->kv[i].value), 0);
        assert_int_equal(gguf_writer_add_string(w, "tokenizer.ggml.pre", pre), 0);
        assert_int_equal(gguf_writer_write_header(w), 0);
        assert_int_equal(gguf_writer_finish(w), 0);
        return fd;
}

static int setup(void **state) {
        _cleanup_free_ char *path = smollm_path();
        _cleanup_(gguf_freep) Gguf *g = NULL;
        QdError err = {};

        if (gguf_open(path, &g, &err) < 0 || engine_vocab_new(g, &vocabs[0], &err) < 0) {
                fprintf(stderr, "# %s: %s (set QUANTD_TEST_SMOLLM)\n", path, err.msg);
                return -1;
        }
        for (size_t i = 1; i < N_PRE; i++) {
                _cleanup_close_ int fd = copy_with_pre(g, pre_names[i]);
                _cleanup_(gguf_freep) Gguf *copy = NULL;
                if (gguf_open_fd(fd, &copy, &err) < 0 || engine_vocab_new(copy, &vocabs[i], &err) < 0) {
                        fprintf(stderr, "# %s: %s\n", pre_names[i], err.msg);
                        return -1;
                }
        }
        return 0;
}

static int teardown(void **state) {
        for (size_t i = 0; i < N_PRE; i++)
                vocabs[i] = engine_vocab_free(vocabs[i]);
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

static void check_row(const EngineVocab *v, const char *text, size_t len, bool parse_special,
                      const char *want, const char *what) {
        _cleanup_free_ int32_t *ids = NULL;
        _cleanup_(engine_detok_freep) EngineDetok *d = NULL;
        Buf back = {}, stream = {};
        size_t n, k = 0;

        assert_int_equal(engine_tokenize(v, text, len, true, parse_special, &ids, &n), 0);
        for (char *p = (char *)want, *end; *p && *p != '\n'; p = end, k++) {
                long id = strtol(p, &end, 10);
                if (k >= n || ids[k] != id)
                        fail_msg("%s '%s': token %zu is %d, want %ld", what, text, k, k < n ? ids[k] : -1,
                                 id);
        }
        if (k != n)
                fail_msg("%s '%s': %zu tokens, want %zu", what, text, n, k);

        assert_int_equal(engine_detokenize(v, ids, n, true, &back), 0);
        if (back.len != len || (len && memcmp(back.data, text, len) != 0))
                fail_msg("%s '%s': detokenized as '%s'", what, text, back.len ? (char *)back.data : "");
        assert_int_equal(engine_detok_new(&d), 0);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(engine_detok_push(d, v, ids[i], true, &stream), 0);
        assert_int_equal(engine_detok_flush(d, &stream), 0);
        assert_int_equal(stream.len, len);
        if (len)
                assert_memory_equal(stream.data, text, len);
        buf_free(&back);
        buf_free(&stream);
}

static void test_reference(void **state) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path = strdup_printf("%s/bpe-smollm.tsv", dir ? dir : "tests/data");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[16384], text[8192];
        unsigned rows[N_PRE] = {}, unparsed = 0;

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                char *fields[4] = {line};
                size_t i, len;
                for (i = 1; i < 4; i++) {
                        fields[i] = strchr(fields[i - 1], '\t');
                        assert_non_null(fields[i]);
                        *fields[i]++ = 0;
                }
                for (i = 0; i < N_PRE; i++)
                        if (streq(fields[0], pre_names[i]))
                                break;
                assert_true(i < N_PRE);
                len = unhex(fields[2], strlen(fields[2]), text);
                check_row(vocabs[i], text, len, streq(fields[1], "1"), fields[3], fields[0]);
                rows[i]++;
                unparsed += streq(fields[1], "0");
        }
        for (size_t i = 0; i < N_PRE; i++)
                assert_true(rows[i] >= 30);
        assert_true(unparsed >= 30);
}

static void test_metadata(void **state) {
        const EngineVocab *v = vocabs[0];
        int32_t start = engine_vocab_find(v, "<|im_start|>", 12),
                end = engine_vocab_find(v, "<|im_end|>", 10);

        assert_int_equal(engine_vocab_kind(v), ENGINE_VOCAB_BPE);
        assert_string_equal(engine_vocab_pre(v), "smollm");
        assert_int_equal(engine_vocab_n_tokens(v), 49152);
        assert_false(engine_vocab_add_bos(v));
        assert_int_equal(engine_vocab_bos(v), 1);
        assert_int_equal(engine_vocab_eos(v), 2);
        assert_int_equal(start, 1);
        assert_int_equal(end, 2);
        assert_int_equal(engine_vocab_token_type(v, start), ENGINE_TOKEN_CONTROL);
        assert_true(engine_vocab_is_eog(v, end));
        assert_true(engine_vocab_is_eog(v, 0)); /* <|endoftext|> */
        assert_false(engine_vocab_is_eog(v, start));
        assert_false(engine_vocab_is_eog(v, 504));
}

static void test_pieces(void **state) {
        const EngineVocab *v = vocabs[0];
        Buf b = {};

        /* Control tokens are silent unless asked for; an id out of range is refused. */
        assert_int_equal(engine_token_piece(v, 1, false, &b), 0);
        assert_int_equal(b.len, 0);
        assert_int_equal(engine_token_piece(v, 1, true, &b), 0);
        assert_string_equal((char *)b.data, "<|im_start|>");
        assert_int_equal(engine_token_piece(v, 49152, true, &b), -EINVAL);
        assert_int_equal(engine_token_piece(v, -1, true, &b), -EINVAL);
        b.len = 0;
        /* "Ġworld" is " world". */
        assert_int_equal(engine_token_piece(v, 905, false, &b), 0);
        assert_string_equal((char *)b.data, " world");
        buf_free(&b);
}

static void test_invalid_utf8(void **state) {
        const EngineVocab *v = vocabs[0];
        static const char bad[] = "a\x80\xc3(b\xe2\x82";
        _cleanup_free_ int32_t *ids = NULL;
        _cleanup_(engine_detok_freep) EngineDetok *d = NULL;
        Buf whole = {}, stream = {};
        size_t n;

        /* Bytes that are no character still become byte tokens and come back as the same bytes. */
        assert_int_equal(engine_tokenize(v, bad, sizeof(bad) - 1, false, false, &ids, &n), 0);
        assert_int_equal(engine_detokenize(v, ids, n, false, &whole), 0);
        assert_int_equal(whole.len, sizeof(bad) - 1);
        assert_memory_equal(whole.data, bad, sizeof(bad) - 1);
        /* The stream replaces them with U+FFFD, and the unfinished tail at the end as well. */
        assert_int_equal(engine_detok_new(&d), 0);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(engine_detok_push(d, v, ids[i], false, &stream), 0);
        assert_int_equal(engine_detok_flush(d, &stream), 0);
        assert_string_equal((char *)stream.data, "a\xef\xbf\xbd\xef\xbf\xbd(b\xef\xbf\xbd");
        buf_free(&whole);
        buf_free(&stream);

        /* SmolLM's vocabulary has no token for byte 0xFF (it never occurs in UTF-8): the unknown token. */
        free(ids);
        ids = NULL;
        assert_int_equal(engine_tokenize(v, "\xff", 1, false, false, &ids, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(ids[0], engine_vocab_unk(v));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_reference),
                cmocka_unit_test(test_metadata),
                cmocka_unit_test(test_pieces),
                cmocka_unit_test(test_invalid_utf8),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
