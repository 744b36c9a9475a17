/* SPDX-License-Identifier: MIT */
/*
 * Vocabulary metadata: small GGUF files are written with one thing wrong at a time, and each must be refused
 * with the right error and a sentence naming the problem. Then the lookups on a good synthetic vocabulary,
 * and the merge rules of both tokenizers on vocabularies small enough to check by hand.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <sys/mman.h>

#include "engine.h"

typedef enum Break {
        OK,
        NO_MODEL,
        MODEL_NOT_STRING,
        MODEL_UNKNOWN,
        NO_TOKENS,
        TOKENS_NOT_STRINGS,
        TOKENS_EMPTY,
        NUL_IN_TOKEN,
        NO_SCORES,
        SCORES_SHORT,
        SCORES_NOT_FLOAT,
        TYPES_SHORT,
        TYPES_NOT_INT,
        TYPE_UNKNOWN,
        BOS_OUT_OF_RANGE,
        EOS_NOT_INT,
        ADD_BOS_NOT_BOOL,
        ADD_EOS_WITHOUT_EOS,
        BPE_NO_MERGES,
        BPE_MERGES_NOT_STRINGS,
        BPE_MERGE_NO_SPACE,
        BPE_PRE_UNKNOWN,
        BPE_PRE_NOT_STRING,
        BPE_OK,
        BPE_SCORES_ABSENT_OK,
} Break;

/* SentencePiece: ▁ a b ▁a ab ▁ab plus <0x41> ("A") and <0xC3> <0xA9> ("é" as bytes); "<|x|>" is
 * user-defined. */
static const char *const spm_tokens[] = {
        "<unk>",
        "<s>",
        "</s>",
        "\xe2\x96\x81",
        "a",
        "b",
        "\xe2\x96\x81"
        "a",
        "ab",
        "\xe2\x96\x81"
        "ab",
        "<0x41>",
        "<0xC3>",
        "<0xA9>",
        "<|x|>",
        "ba",
};
static const float spm_scores[] = {0, 0, 0, -5, -1, -1, -3, -2, -4, 0, 0, 0, 0, -2};
static const int32_t spm_types[] = {2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6, 6, 4, 1};

/* BPE over the byte characters "a", "b", "Ġ" (space); merges "a b" first, then "Ġ ab", then "b a". */
static const char *const bpe_tokens[] = {
        "<|endoftext|>",
        "a",
        "b",
        "\xc4\xa0",
        "ab",
        "\xc4\xa0"
        "ab",
        "ba",
        "<|im_end|>",
        "1",
        "2",
};
static const int32_t bpe_types[] = {3, 1, 1, 1, 1, 1, 1, 3, 1, 1};
static const char *const bpe_merges[] = {"a b", "\xc4\xa0 ab", "b a", "q z"};

static int make_gguf(Break b) {
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        int fd = memfd_create("vocab", MFD_CLOEXEC);
        bool bpe = b >= BPE_NO_MERGES;
        const char *nul_tokens[] = {"<unk>", "a\0b"};

        assert_true(fd >= 0);
        assert_int_equal(gguf_writer_new(&w, fd, GGUF_DEFAULT_ALIGNMENT), 0);
        if (b == MODEL_NOT_STRING)
                assert_int_equal(gguf_writer_add_u32(w, "tokenizer.ggml.model", 1), 0);
        else if (b != NO_MODEL)
                assert_int_equal(gguf_writer_add_string(w, "tokenizer.ggml.model",
                                                        b == MODEL_UNKNOWN ? "bert"
                                                        : bpe              ? "gpt2"
                                                                           : "llama"),
                                 0);

        if (bpe) {
                size_t n = ELEMENTSOF(bpe_tokens);
                assert_int_equal(gguf_writer_add_string_array(w, "tokenizer.ggml.tokens", bpe_tokens, n), 0);
                assert_int_equal(
                        gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, bpe_types, n),
                        0);
                if (b == BPE_MERGES_NOT_STRINGS)
                        assert_int_equal(gguf_writer_add_array(w, "tokenizer.ggml.merges", GGUF_TYPE_INT32,
                                                               bpe_types, 2),
                                         0);
                else if (b == BPE_MERGE_NO_SPACE) {
                        const char *m[] = {"a b", "ab"};
                        assert_int_equal(gguf_writer_add_string_array(w, "tokenizer.ggml.merges", m, 2), 0);
                } else if (b != BPE_NO_MERGES)
                        assert_int_equal(gguf_writer_add_string_array(w, "tokenizer.ggml.merges", bpe_merges,
                                                                      ELEMENTSOF(bpe_merges)),
                                         0);
                if (b == BPE_PRE_UNKNOWN)
                        assert_int_equal(gguf_writer_add_string(w, "tokenizer.ggml.pre", "klingon"), 0);
                else if (b == BPE_PRE_NOT_STRING)
                        assert_int_equal(gguf_writer_add_u32(w, "tokenizer.ggml.pre", 7), 0);
                else
                        assert_int_equal(gguf_writer_add_string(w, "tokenizer.ggml.pre", "gpt2"), 0);
                assert_int_equal(gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 0), 0);
                assert_int_equal(gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 0), 0);
                assert_int_equal(gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false), 0);
                if (b == BPE_OK) {
                        float scores[ELEMENTSOF(bpe_tokens)] = {};
                        assert_int_equal(gguf_writer_add_array(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32,
                                                               scores, n),
                                         0);
                }
                goto done;
        }

        size_t n = ELEMENTSOF(spm_tokens);
        if (b == TOKENS_NOT_STRINGS)
                assert_int_equal(
                        gguf_writer_add_array(w, "tokenizer.ggml.tokens", GGUF_TYPE_FLOAT32, spm_scores, n),
                        0);
        else if (b == TOKENS_EMPTY)
                assert_int_equal(gguf_writer_add_string_array(w, "tokenizer.ggml.tokens", spm_tokens, 0), 0);
        else if (b == NUL_IN_TOKEN) {
                /* The writer takes C strings, so the NUL goes in as a value built by hand. */
                GgufValue items[2] = {
                        {.type = GGUF_TYPE_STRING, .str = {5, nul_tokens[0]}},
                        {.type = GGUF_TYPE_STRING, .str = {3, nul_tokens[1]}},
                };
                GgufValue arr = {.type = GGUF_TYPE_ARRAY,
                                 .arr = {.type = GGUF_TYPE_STRING, .n = 2, .items = items}};
                assert_int_equal(gguf_writer_add_value(w, "tokenizer.ggml.tokens", &arr), 0);
                n = 2;
        } else if (b != NO_TOKENS)
                assert_int_equal(gguf_writer_add_string_array(w, "tokenizer.ggml.tokens", spm_tokens, n), 0);

        if (b == SCORES_NOT_FLOAT)
                assert_int_equal(
                        gguf_writer_add_array(w, "tokenizer.ggml.scores", GGUF_TYPE_INT32, spm_types, n), 0);
        else if (b != NO_SCORES)
                assert_int_equal(gguf_writer_add_array(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32,
                                                       spm_scores, b == SCORES_SHORT ? n - 1 : n),
                                 0);
        if (b == TYPES_NOT_INT)
                assert_int_equal(gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_FLOAT32,
                                                       spm_scores, n),
                                 0);
        else if (b == TYPE_UNKNOWN) {
                int32_t types[ELEMENTSOF(spm_types)];
                memcpy(types, spm_types, sizeof(types));
                types[4] = 9;
                assert_int_equal(
                        gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, n), 0);
        } else
                assert_int_equal(gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32,
                                                       spm_types, b == TYPES_SHORT ? n - 1 : n),
                                 0);
        assert_int_equal(
                gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", b == BOS_OUT_OF_RANGE ? 14 : 1), 0);
        if (b == EOS_NOT_INT)
                assert_int_equal(gguf_writer_add_string(w, "tokenizer.ggml.eos_token_id", "2"), 0);
        else
                assert_int_equal(gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id",
                                                     b == ADD_EOS_WITHOUT_EOS ? UINT32_MAX : 2),
                                 0);
        assert_int_equal(gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", UINT32_MAX), 0);
        if (b == ADD_BOS_NOT_BOOL)
                assert_int_equal(gguf_writer_add_u32(w, "tokenizer.ggml.add_bos_token", 1), 0);
        if (b == ADD_EOS_WITHOUT_EOS)
                assert_int_equal(gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", true), 0);
done:
        assert_int_equal(gguf_writer_write_header(w), 0);
        assert_int_equal(gguf_writer_finish(w), 0);
        return fd;
}

static int open_vocab(Break b, EngineVocab **ret, QdError *err) {
        _cleanup_close_ int fd = make_gguf(b);
        _cleanup_(gguf_freep) Gguf *g = NULL;

        assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);
        return engine_vocab_new(g, ret, err);
}

static void test_bad_metadata(void **state) {
        static const struct {
                Break b;
                int error;
                const char *msg;
        } cases[] = {
                {NO_MODEL, -EBADMSG, "tokenizer.ggml.model is missing"},
                {MODEL_NOT_STRING, -EBADMSG, "tokenizer.ggml.model is not a string"},
                {MODEL_UNKNOWN, -EOPNOTSUPP, "'bert' is not supported"},
                {NO_TOKENS, -EBADMSG, "tokenizer.ggml.tokens is missing"},
                {TOKENS_NOT_STRINGS, -EBADMSG, "tokenizer.ggml.tokens is not a string array"},
                {TOKENS_EMPTY, -EBADMSG, "has 0 tokens"},
                {NUL_IN_TOKEN, -EBADMSG, "Token 1 of the vocabulary contains a NUL byte"},
                {NO_SCORES, -EBADMSG, "tokenizer.ggml.scores is missing"},
                {SCORES_SHORT, -EBADMSG, "14 tokens but 13 scores"},
                {SCORES_NOT_FLOAT, -EBADMSG, "scores is not a float32 array"},
                {TYPES_SHORT, -EBADMSG, "14 tokens but 13 token types"},
                {TYPES_NOT_INT, -EBADMSG, "token_type is not an int32 array"},
                {TYPE_UNKNOWN, -EBADMSG, "Token 4 has the unknown token type 9"},
                {BOS_OUT_OF_RANGE, -EBADMSG, "bos_token_id is 14, outside the 14 tokens"},
                {EOS_NOT_INT, -EBADMSG, "eos_token_id is not an integer"},
                {ADD_BOS_NOT_BOOL, -EBADMSG, "add_bos_token is not a boolean"},
                {ADD_EOS_WITHOUT_EOS, -EBADMSG, "asks for an EOS token but has none"},
                {BPE_NO_MERGES, -EBADMSG, "tokenizer.ggml.merges is missing"},
                {BPE_MERGES_NOT_STRINGS, -EBADMSG, "merges is not a string array"},
                {BPE_MERGE_NO_SPACE, -EBADMSG, "Merge 1 of the vocabulary is not two tokens"},
                {BPE_PRE_UNKNOWN, -EOPNOTSUPP, "pre-tokenizer 'klingon'"},
                {BPE_PRE_NOT_STRING, -EBADMSG, "tokenizer.ggml.pre is not a string"},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                EngineVocab *v = NULL;
                QdError err = {};
                int r = open_vocab(cases[i].b, &v, &err);
                if (r != cases[i].error || !strstr(err.msg, cases[i].msg))
                        fail_msg("case %zu: got %d '%s', want %d '%s'", i, r, err.msg, cases[i].error,
                                 cases[i].msg);
                assert_null(v);
        }
}

static void test_spm_lookups(void **state) {
        _cleanup_(engine_vocab_freep) EngineVocab *v = NULL;
        QdError err = {};

        assert_int_equal(open_vocab(OK, &v, &err), 0);
        assert_int_equal(engine_vocab_kind(v), ENGINE_VOCAB_SPM);
        assert_string_equal(engine_vocab_pre(v), "default");
        assert_int_equal(engine_vocab_n_tokens(v), 14);
        assert_int_equal(engine_vocab_bos(v), 1);
        assert_int_equal(engine_vocab_eos(v), 2);
        assert_int_equal(engine_vocab_eot(v), -1);
        assert_int_equal(engine_vocab_pad(v), -1); /* 0xffffffff means none */
        assert_int_equal(engine_vocab_unk(v), 0);
        assert_true(engine_vocab_add_bos(v)); /* SentencePiece's default */
        assert_false(engine_vocab_add_eos(v));
        assert_true(engine_vocab_is_eog(v, 2));
        assert_false(engine_vocab_is_eog(v, 1));
        assert_false(engine_vocab_is_eog(v, -1));
        assert_false(engine_vocab_is_eog(v, 14));
        assert_int_equal(engine_vocab_token_type(v, 9), ENGINE_TOKEN_BYTE);
        assert_int_equal(engine_vocab_token_type(v, 14), _ENGINE_TOKEN_TYPE_INVALID);
        assert_int_equal(engine_vocab_token_type(v, -3), _ENGINE_TOKEN_TYPE_INVALID);
        assert_string_equal(engine_vocab_token_text(v, 7), "ab");
        assert_null(engine_vocab_token_text(v, 99));
        assert_int_equal(engine_vocab_find(v, "ab", 2), 7);
        assert_int_equal(engine_vocab_find(v, "abc", 3), -ENOENT);
        assert_int_equal(engine_vocab_find(v, "abc", 1), 4);
}

static void expect_tokens(const EngineVocab *v, const char *text, bool add_special, bool parse_special,
                          const int32_t *want, size_t n_want) {
        _cleanup_free_ int32_t *ids = NULL;
        size_t n = 99;

        assert_int_equal(engine_tokenize(v, text, strlen(text), add_special, parse_special, &ids, &n), 0);
        if (n != n_want)
                fail_msg("'%s': %zu tokens, want %zu", text, n, n_want);
        for (size_t i = 0; i < n; i++)
                if (ids[i] != want[i])
                        fail_msg("'%s': token %zu is %d, want %d", text, i, ids[i], want[i]);
}

#define EXPECT(v, text, add, parse, ...)                                  \
        do {                                                              \
                const int32_t _w_[] = {__VA_ARGS__};                      \
                expect_tokens(v, text, add, parse, _w_, ELEMENTSOF(_w_)); \
        } while (0)

static void test_spm_merges(void **state) {
        _cleanup_(engine_vocab_freep) EngineVocab *v = NULL;
        _cleanup_free_ int32_t *ids = NULL;
        size_t n = 99;

        assert_int_equal(open_vocab(OK, &v, NULL), 0);
        /* "▁ab": ▁a (-3) beats ab (-2)? No: ab has the higher score and merges first, then ▁ + ab = ▁ab. */
        EXPECT(v, "ab", false, false, 8);
        /* "▁ba": ▁b is no token, b+a = ba (-2); ▁ stays alone. */
        EXPECT(v, "ba", false, false, 3, 13);
        /* BOS from add_special; the user-defined token is found even without parse_special. */
        EXPECT(v, "a<|x|>b", true, false, 1, 6, 12, 3, 5);
        /* Byte fallback: "A" is <0x41>; "é" (C3 A9) is two byte tokens; "C" has no byte token and is
         * unknown. */
        EXPECT(v, "A", false, false, 3, 9);
        EXPECT(v, "\xc3\xa9", false, false, 3, 10, 11);
        EXPECT(v, "C", false, false, 3, 0);
        /* An empty text has no tokens but BOS. */
        assert_int_equal(engine_tokenize(v, "", 0, false, false, &ids, &n), 0);
        assert_int_equal(n, 0);
        assert_null(ids);
        EXPECT(v, "", true, false, 1);
}

static void test_bpe_merges(void **state) {
        _cleanup_(engine_vocab_freep) EngineVocab *v = NULL;
        _cleanup_(engine_vocab_freep) EngineVocab *v2 = NULL;

        assert_int_equal(open_vocab(BPE_OK, &v, NULL), 0);
        assert_int_equal(open_vocab(BPE_SCORES_ABSENT_OK, &v2, NULL), 0);
        assert_int_equal(engine_vocab_kind(v), ENGINE_VOCAB_BPE);
        assert_string_equal(engine_vocab_pre(v), "gpt2");
        assert_false(engine_vocab_add_bos(v));
        assert_true(engine_vocab_is_eog(v, 7)); /* <|im_end|> by its text */
        /* "aba": a b merges first (rank 0), so ab + a, never a + ba. */
        EXPECT(v, "aba", false, false, 4, 1);
        /* " ab" is one word with its space: Ġ ab merges after a b. */
        EXPECT(v, " ab", false, false, 5);
        EXPECT(v, "ba ab", false, false, 6, 5);
        /* Control tokens only with parse_special; without it their text is tokenized, and characters that
         * are no token are dropped since this vocabulary has no unknown token. */
        EXPECT(v, "a<|im_end|>", false, true, 1, 7);
        EXPECT(v, "a<|im_end|>", false, false, 1);
        EXPECT(v, "12", false, false, 8, 9);
}

static void test_tokenize_limits(void **state) {
        _cleanup_(engine_vocab_freep) EngineVocab *v = NULL;
        int32_t *ids = NULL;
        size_t n = 0;

        assert_int_equal(open_vocab(OK, &v, NULL), 0);
        assert_int_equal(engine_tokenize(v, "a", (size_t)2 << 30, false, false, &ids, &n), -EMSGSIZE);
        assert_null(ids);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_bad_metadata),    cmocka_unit_test(test_spm_lookups),
                cmocka_unit_test(test_spm_merges),      cmocka_unit_test(test_bpe_merges),
                cmocka_unit_test(test_tokenize_limits),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
