/* SPDX-License-Identifier: MIT */
/*
 * quant_convert_hf() on Hugging Face folders with a SentencePiece vocabulary, as Llama 1/2, Mistral and
 * TinyLlama ship them (tests/data/make-hf-tiny-spm.py trained the vocabulary with Google's sentencepiece and
 * made the tiny random model with transformers): from tokenizer.model, from tokenizer.json alone (BPE with
 * byte fallback, or Unigram) and from tokenizer.model alone, the converted file has sentencepiece's pieces,
 * scores and types, the engine's tokenizer gives sentencepiece's ids, and the logits are transformers'.
 * Broken tokenizer.model files (truncated, bad wire types, bad pieces) are refused with a clear error.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "convert-harness.h"

#define N_VOCAB 400

/* ---- a temporary copy of hf-tiny-spm/, which tests change ---- */

static const char *const spm_files[] = {
        "config.json",       "tokenizer.model",     "tokenizer.json",         "tokenizer_config.json",
        "model.safetensors", "chat_template.jinja", "generation_config.json",
};

static int setup_folder(void **state) {
        *state = folder_new("hf-tiny-spm", spm_files, ELEMENTSOF(spm_files));
        return 0;
}

static int teardown_folder(void **state) {
        folder_free(*state);
        return 0;
}

/* Converts the folder into a memfd and opens it as GGUF in *ret. */
static int convert_open(Folder *f, Gguf **ret) {
        int fd = convert_dir(f->dirfd, NULL);

        assert_int_equal(gguf_open_fd(fd, ret, NULL), 0);
        return fd;
}

/* Replaces tokenizer.json with the Unigram one that make-hf-tiny-spm.py wrote. */
static void use_unigram_json(Folder *f) {
        int data = open_data_dir(".");

        copy_file(data, "hf-tiny-spm-unigram.json", f->dirfd, "tokenizer.json");
        close(data);
}

/* ---- references ---- */

static size_t unhex(const char *hex, char *out) {
        size_t k = 0;

        for (; isxdigit((unsigned char)hex[0]) && isxdigit((unsigned char)hex[1]); hex += 2) {
                unsigned b;

                assert_int_equal(sscanf(hex, "%2x", &b), 1);
                out[k++] = (char)b;
        }
        out[k] = 0;
        return k;
}

typedef struct RefPiece {
        char text[64];
        float score;
        int32_t type;
} RefPiece;

/* Reads the N_VOCAB lines "id<TAB>hex<TAB>score<TAB>type" that sentencepiece wrote. */
static RefPiece *read_vocab_reference(const char *name) {
        _cleanup_free_ char *path = data_path(name);
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        RefPiece *ref = calloc(N_VOCAB, sizeof(RefPiece));
        char line[512], hex[256];
        unsigned id, n = 0;

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                assert_int_equal(sscanf(line, "%u\t%255s\t%f\t%d", &id, hex, &ref[n].score, &ref[n].type),
                                 4);
                assert_int_equal(id, n);
                assert_true(strlen(hex) / 2 < sizeof(ref[n].text));
                unhex(hex, ref[n].text);
                n++;
        }
        assert_int_equal(n, N_VOCAB);
        return ref;
}

typedef enum {
        CHECK_SCORES,
        CHECK_NO_SCORES, /* tokenizer.json's BPE carries merges, not scores */
} CheckScores;

/* The converted vocabulary's tokens, types and (when checked) scores are the reference's. */
static void check_vocab(const Gguf *g, const char *reference, CheckScores check) {
        _cleanup_free_ RefPiece *ref = read_vocab_reference(reference);
        _cleanup_free_ char *s = NULL;
        const GgufArray *tokens, *scores, *types;
        unsigned n_scores_equal = 0;

        assert_int_equal(gguf_get_string(g, "tokenizer.ggml.model", &s), 0);
        assert_string_equal(s, "llama");
        assert_null(gguf_find_kv(g, "tokenizer.ggml.merges"));
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.tokens", &tokens), 0);
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.scores", &scores), 0);
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.token_type", &types), 0);
        assert_int_equal(tokens->n, N_VOCAB);
        assert_int_equal(scores->n, N_VOCAB);
        assert_int_equal(types->n, N_VOCAB);
        for (size_t i = 0; i < N_VOCAB; i++) {
                float score;
                int32_t type;

                /* Array data sits unaligned in the map: copy the elements out. */
                memcpy(&score, (const uint8_t *)scores->data + 4 * i, 4);
                memcpy(&type, (const uint8_t *)types->data + 4 * i, 4);
                if (tokens->items[i].str.len != strlen(ref[i].text) ||
                    memcmp(tokens->items[i].str.data, ref[i].text, tokens->items[i].str.len))
                        fail_msg("token %zu is '%.*s', sentencepiece says '%s'", i,
                                 (int)tokens->items[i].str.len, tokens->items[i].str.data, ref[i].text);
                if (type != ref[i].type)
                        fail_msg("token %zu '%s' has type %d, sentencepiece says %d", i, ref[i].text, type,
                                 ref[i].type);
                if (check == CHECK_SCORES && score != ref[i].score)
                        fail_msg("token %zu '%s' has score %.9g, sentencepiece says %.9g", i, ref[i].text,
                                 (double)score, (double)ref[i].score);
                n_scores_equal += score == ref[i].score;
        }
        print_message("# %u of %u scores as sentencepiece's\n", n_scores_equal, N_VOCAB);
}

static void check_u32(const Gguf *g, const char *key, uint32_t want) {
        uint32_t u;

        if (gguf_get_u32(g, key, &u) < 0)
                fail_msg("%s is missing", key);
        if (u != want)
                fail_msg("%s is %u, wanted %u", key, u, want);
}

static void check_bool(const Gguf *g, const char *key, bool want) {
        bool b;

        if (gguf_get_bool(g, key, &b) < 0)
                fail_msg("%s is missing", key);
        if (b != want)
                fail_msg("%s is %d, wanted %d", key, b, want);
}

/* The engine tokenizes each string of hf-tiny-spm.tokens into sentencepiece's ids. */
static void check_tokens(int fd) {
        _cleanup_free_ char *path = data_path("hf-tiny-spm.tokens");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        EngineModel *m = NULL;
        QdError err = {};
        char line[4096], text[2048];
        int n_lines = 0;

        assert_non_null(f);
        if (engine_model_load_fd(fd, NULL, &m, &err) < 0)
                fail_msg("load failed: %s", err.msg);
        assert_int_equal(engine_vocab_kind(engine_model_vocab(m)), ENGINE_VOCAB_SPM);
        while (fgets(line, sizeof(line), f)) {
                char *tab = strchr(line, '\t'), *p;
                _cleanup_free_ int32_t *ids = NULL, *with_bos = NULL;
                size_t len, n = 0, n_bos = 0, k = 0;

                assert_non_null(tab);
                len = unhex(line, text);
                assert_int_equal(engine_tokenize(engine_model_vocab(m), text, len, false, false, &ids, &n),
                                 0);
                for (p = tab + 1; *p && *p != '\n'; k++) {
                        long want = strtol(p, &p, 10);

                        if (k >= n || ids[k] != want)
                                fail_msg("'%s': token %zu is %d, sentencepiece says %ld", text, k,
                                         k < n ? ids[k] : -1, want);
                }
                assert_int_equal(n, k);
                /* add_bos_token: the same ids after BOS. */
                assert_int_equal(
                        engine_tokenize(engine_model_vocab(m), text, len, true, false, &with_bos, &n_bos),
                        0);
                assert_int_equal(n_bos, n + 1);
                assert_int_equal(with_bos[0], 1);
                assert_memory_equal(with_bos + 1, ids, n * sizeof(int32_t));
                n_lines++;
        }
        assert_int_equal(n_lines, 21);
        engine_model_unref(m);
}

/* ---- tests ---- */

static void test_from_model(void **state) {
        Folder *f = *state;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_free_ char *s = NULL;
        int fd = convert_open(f, &g);

        check_vocab(g, "hf-tiny-spm.vocab", CHECK_SCORES);
        assert_int_equal(gguf_get_string(g, "tokenizer.ggml.pre", &s), 0);
        assert_string_equal(s, "default");
        check_u32(g, "tokenizer.ggml.unknown_token_id", 0);
        check_u32(g, "tokenizer.ggml.bos_token_id", 1);
        check_u32(g, "tokenizer.ggml.eos_token_id", 2);
        assert_null(gguf_find_kv(g, "tokenizer.ggml.padding_token_id"));
        check_bool(g, "tokenizer.ggml.add_bos_token", true);
        check_bool(g, "tokenizer.ggml.add_eos_token", false);
        check_bool(g, "tokenizer.ggml.add_space_prefix", true);
        free(s);
        s = NULL;
        assert_int_equal(gguf_get_string(g, "tokenizer.chat_template", &s), 0);
        assert_non_null(strstr(s, "[INST]"));
        check_tokens(fd);
        close(fd);
}

static void test_logits(void **state) {
        Folder *f = *state;
        int fd = convert_dir(f->dirfd, NULL);

        check_logits(fd, "hf-tiny-spm.logits", N_VOCAB, 1e-4);
        close(fd);
}

/* Without tokenizer.model: tokenizer.json's BPE with byte fallback. Scores come from the merges, so they
 * differ, but the engine splits text as sentencepiece does. */
static void test_from_json_bpe(void **state) {
        Folder *f = *state;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        int fd;

        assert_int_equal(unlinkat(f->dirfd, "tokenizer.model", 0), 0);
        fd = convert_open(f, &g);
        check_vocab(g, "hf-tiny-spm.vocab", CHECK_NO_SCORES);
        check_u32(g, "tokenizer.ggml.unknown_token_id", 0);
        check_u32(g, "tokenizer.ggml.bos_token_id", 1);
        check_bool(g, "tokenizer.ggml.add_bos_token", true);
        check_bool(g, "tokenizer.ggml.add_space_prefix", true);
        check_tokens(fd);
        close(fd);
}

/* The dummy prefix from tokenizer.json: a Metaspace pre-tokenizer that prepends, or (Llama 2's older files)
 * a Prepend("▁") normalizer; neither means none. */
static void test_json_space_prefix(void **state) {
        Folder *f = *state;
        int fd;

        assert_int_equal(unlinkat(f->dirfd, "tokenizer.model", 0), 0);
        folder_edit(f, "tokenizer.json", "\"prepend_scheme\": \"always\"", "\"prepend_scheme\": \"never\"");
        fd = convert_dir(f->dirfd, NULL);
        {
                _cleanup_(gguf_freep) Gguf *g = NULL;

                assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);
                check_bool(g, "tokenizer.ggml.add_space_prefix", false);
        }
        close(fd);
        folder_edit(
                f, "tokenizer.json", "\"normalizer\": null",
                "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", "
                "\"prepend\": \"\xe2\x96\x81\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, "
                "\"content\": \"\xe2\x96\x81\"}]}");
        fd = convert_dir(f->dirfd, NULL);
        {
                _cleanup_(gguf_freep) Gguf *g = NULL;

                assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);
                check_bool(g, "tokenizer.ggml.add_space_prefix", true);
        }
        /* And the engine tokenizes as sentencepiece again. */
        check_tokens(fd);
        close(fd);
}

/* tokenizer.json's Unigram model carries sentencepiece's scores. */
static void test_from_json_unigram(void **state) {
        Folder *f = *state;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        int fd;

        use_unigram_json(f);
        assert_int_equal(unlinkat(f->dirfd, "tokenizer.model", 0), 0);
        fd = convert_open(f, &g);
        check_vocab(g, "hf-tiny-spm-unigram.vocab", CHECK_SCORES);
        /* prepend_scheme "first" */
        check_bool(g, "tokenizer.ggml.add_space_prefix", true);
        close(fd);
}

/* Old folders have tokenizer.model and no tokenizer.json. */
static void test_model_only(void **state) {
        Folder *f = *state;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        int fd;

        assert_int_equal(unlinkat(f->dirfd, "tokenizer.json", 0), 0);
        fd = convert_open(f, &g);
        check_vocab(g, "hf-tiny-spm.vocab", CHECK_SCORES);
        /* LlamaTokenizer's default. */
        check_bool(g, "tokenizer.ggml.add_bos_token", true);
        check_tokens(fd);
        close(fd);
}

static void test_flags_from_config(void **state) {
        Folder *f = *state;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        int fd;

        folder_edit(f, "tokenizer_config.json", "{", "{\"add_bos_token\": false, \"add_eos_token\": true, ");
        folder_edit(f, "tokenizer_config.json", "\"unk_token\": \"<unk>\"", "\"pad_token\": \"</s>\"");
        fd = convert_open(f, &g);
        check_bool(g, "tokenizer.ggml.add_bos_token", false);
        check_bool(g, "tokenizer.ggml.add_eos_token", true);
        check_u32(g, "tokenizer.ggml.padding_token_id", 2);
        /* No unk_token in tokenizer_config.json: the trainer's unk_id. */
        check_u32(g, "tokenizer.ggml.unknown_token_id", 0);
        close(fd);
}

/* ---- tokenizer.model built by hand: the reference pieces and a trainer and normalizer spec ---- */

typedef struct Proto {
        uint8_t *data;
        size_t len;
} Proto;

static void put_byte(Proto *p, uint8_t b) {
        p->data = realloc(p->data, p->len + 1);
        assert_non_null(p->data);
        p->data[p->len++] = b;
}

static void put_varint(Proto *p, uint64_t v) {
        for (; v >= 0x80; v >>= 7)
                put_byte(p, (uint8_t)(v | 0x80));
        put_byte(p, (uint8_t)v);
}

static void put_bytes(Proto *p, uint32_t field, const void *data, size_t len) {
        put_varint(p, (uint64_t)field << 3 | 2);
        put_varint(p, len);
        for (size_t i = 0; i < len; i++)
                put_byte(p, ((const uint8_t *)data)[i]);
}

static void put_int(Proto *p, uint32_t field, int64_t v) {
        put_varint(p, (uint64_t)field << 3);
        put_varint(p, (uint64_t)v);
}

static void put_float(Proto *p, uint32_t field, float f) {
        uint32_t u;

        memcpy(&u, &f, 4);
        put_varint(p, (uint64_t)field << 3 | 5);
        for (int i = 0; i < 4; i++)
                put_byte(p, (uint8_t)(u >> (8 * i)));
}

typedef struct ModelSpec {
        size_t n_pieces;
        int64_t model_type, pad_id;
        bool add_dummy_prefix;
} ModelSpec;

static Proto build_model(const ModelSpec *spec) {
        _cleanup_free_ RefPiece *ref = read_vocab_reference("hf-tiny-spm.vocab");
        Proto m = {}, trainer = {}, normalizer = {};

        for (size_t i = 0; i < spec->n_pieces; i++) {
                Proto piece = {};

                put_bytes(&piece, 1, ref[i].text, strlen(ref[i].text));
                put_float(&piece, 2, ref[i].score);
                if (ref[i].type != 1)
                        put_int(&piece, 3, ref[i].type);
                put_bytes(&m, 1, piece.data, piece.len);
                free(piece.data);
        }
        put_int(&trainer, 3, spec->model_type);
        put_int(&trainer, 35, 1);
        put_int(&trainer, 43, spec->pad_id);
        put_bytes(&m, 2, trainer.data, trainer.len);
        put_int(&normalizer, 3, spec->add_dummy_prefix);
        put_bytes(&m, 3, normalizer.data, normalizer.len);
        free(trainer.data);
        free(normalizer.data);
        return m;
}

static void write_model(Folder *f, const ModelSpec *spec) {
        Proto m = build_model(spec);

        folder_write(f, "tokenizer.model", m.data, m.len);
        free(m.data);
}

/* The hand-built model with all pieces converts as the trained one: the builder writes what sentencepiece
 * writes, so the tests below change one thing at a time. */
static void test_built_model(void **state) {
        Folder *f = *state;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        int fd;

        write_model(
                f,
                &(ModelSpec){.n_pieces = N_VOCAB, .model_type = 2, .pad_id = 3, .add_dummy_prefix = false});
        assert_int_equal(unlinkat(f->dirfd, "tokenizer.json", 0), 0);
        fd = convert_open(f, &g);
        check_vocab(g, "hf-tiny-spm.vocab", CHECK_SCORES);
        check_bool(g, "tokenizer.ggml.add_space_prefix", false);
        /* No pad_token in tokenizer_config.json or config.json: the trainer's pad_id. */
        check_u32(g, "tokenizer.ggml.padding_token_id", 3);
        close(fd);
}

/* Rows without pieces are padding, or the added tokens tokenizer_config.json names. */
static void test_fewer_pieces(void **state) {
        Folder *f = *state;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        const GgufArray *tokens, *types, *scores;
        int32_t type;
        float score;
        int fd;

        write_model(f, &(ModelSpec){.n_pieces = N_VOCAB - 2,
                                    .model_type = 2,
                                    .pad_id = -1,
                                    .add_dummy_prefix = true});
        assert_int_equal(unlinkat(f->dirfd, "tokenizer.json", 0), 0);
        folder_edit(
                f, "tokenizer_config.json", "{",
                "{\"added_tokens_decoder\": {\"398\": {\"content\": \"<|extra|>\", \"special\": true}}, ");
        fd = convert_open(f, &g);
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.tokens", &tokens), 0);
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.token_type", &types), 0);
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.scores", &scores), 0);
        assert_int_equal(tokens->n, N_VOCAB);
        assert_int_equal(tokens->items[398].str.len, 9);
        assert_memory_equal(tokens->items[398].str.data, "<|extra|>", 9);
        memcpy(&type, (const uint8_t *)types->data + 4 * 398, 4);
        assert_int_equal(type, 3);
        assert_int_equal(tokens->items[399].str.len, 8);
        assert_memory_equal(tokens->items[399].str.data, "[PAD399]", 8);
        memcpy(&type, (const uint8_t *)types->data + 4 * 399, 4);
        assert_int_equal(type, 5);
        memcpy(&score, (const uint8_t *)scores->data + 4 * 399, 4);
        assert_float_equal(score, -1000.0f, 0);
        close(fd);
}

/* Older folders: added_tokens.json, user-defined. */
static void test_added_tokens_json(void **state) {
        Folder *f = *state;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        const GgufArray *tokens, *types;
        static const char added[] = "{\"<pad>\": 399}";
        int32_t type;
        int fd;

        write_model(f, &(ModelSpec){.n_pieces = N_VOCAB - 1, .model_type = 2, .pad_id = -1});
        assert_int_equal(unlinkat(f->dirfd, "tokenizer.json", 0), 0);
        folder_write(f, "added_tokens.json", added, strlen(added));
        fd = convert_open(f, &g);
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.tokens", &tokens), 0);
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.token_type", &types), 0);
        assert_int_equal(tokens->items[399].str.len, 5);
        assert_memory_equal(tokens->items[399].str.data, "<pad>", 5);
        memcpy(&type, (const uint8_t *)types->data + 4 * 399, 4);
        assert_int_equal(type, 4);
        close(fd);

        folder_write(f, "added_tokens.json", "{\"<pad>\": \"x\"}", 14);
        expect_error(f, EBADMSG, "added_tokens.json gives '<pad>' no id.");
        folder_write(f, "added_tokens.json", "{\"<pad>\": 400}", 14);
        expect_error(f, EBADMSG, "The added token '<pad>' has an id outside the vocabulary.");
        assert_int_equal(unlinkat(f->dirfd, "added_tokens.json", 0), 0);
}

static void test_more_pieces_than_rows(void **state) {
        Folder *f = *state;

        Proto m = build_model(&(ModelSpec){.n_pieces = N_VOCAB, .model_type = 2, .pad_id = -1});
        Proto extra = {};

        /* A piece after the specs: repeated fields may come in any order. */
        put_bytes(&extra, 1, "zz", 2);
        put_bytes(&m, 1, extra.data, extra.len);
        folder_write(f, "tokenizer.model", m.data, m.len);
        free(m.data);
        free(extra.data);
        expect_error(f, EBADMSG, "tokenizer.model has 401 pieces but the model has rows for 400 tokens.");
}

static void test_word_model(void **state) {
        Folder *f = *state;

        write_model(f, &(ModelSpec){.n_pieces = N_VOCAB, .model_type = 3, .pad_id = -1});
        expect_error(f, EOPNOTSUPP, "Cannot convert a SentencePiece model of type 3; only unigram and BPE");
}

/* ---- malformed tokenizer.model ---- */

static void write_raw(Folder *f, const void *data, size_t len) {
        folder_write(f, "tokenizer.model", data, len);
}

static void test_malformed(void **state) {
        Folder *f = *state;
        static const struct {
                const char *what;
                const char *bytes;
                size_t len;
                const char *error;
        } cases[] = {
                {"empty", "", 0, "it has no pieces"},
                {"text", "<unk>\n<s>\n", 10, "tokenizer.model is not a SentencePiece model"},
                {"a group", "\x0b", 1, "a field has an unknown wire type at byte 1"},
                {"field 0", "\x02\x00", 2, "a field number is out of range"},
                {"long varint", "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12,
                 "a number is longer than ten bytes"},
                {"cut varint", "\x08\xff", 2, "a number runs past the end"},
                {"cut length", "\x0a\x05\x0a\x01", 4, "a field's length runs past the end at byte 2"},
                {"cut fixed", "\x15\x01\x02", 3, "a fixed-size field runs past the end"},
                {"pieces as varint", "\x08\x01", 2, "field 1 has the wrong wire type"},
                {"piece without text", "\x0a\x05\x15\x00\x00\x00\x00", 7, "piece 0 has no text"},
                {"empty piece", "\x0a\x02\x0a\x00", 4, "piece 0 is empty or contains a NUL byte"},
                {"NUL in piece", "\x0a\x04\x0a\x02\x61\x00", 6, "piece 0 is empty or contains a NUL byte"},
                {"score as varint", "\x0a\x05\x0a\x01\x61\x10\x01", 7, "field 2 has the wrong wire type"},
                {"unknown type", "\x0a\x05\x0a\x01\x61\x18\x09", 7, "piece 0 has the unknown type 9"},
                {"type as bytes", "\x0a\x05\x0a\x01\x61\x1a\x00", 7, "field 3 has the wrong wire type"},
                {"trainer spec as varint", "\x0a\x03\x0a\x01\x61\x10\x01", 7,
                 "field 2 has the wrong wire type"},
                {"model type as bytes", "\x0a\x03\x0a\x01\x61\x12\x02\x1a\x00", 9,
                 "field 3 has the wrong wire"},
                {"cut trainer spec", "\x0a\x03\x0a\x01\x61\x12\x02\x18", 8,
                 "a field's length runs past the end"},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                QdError err = {};
                int r;

                write_raw(f, cases[i].bytes, cases[i].len);
                r = try_convert(f->dirfd, NULL, &err);
                if (r != -EBADMSG || !strstr(err.msg, cases[i].error))
                        fail_msg("%s: got %d '%s', wanted '%s'", cases[i].what, r, err.msg, cases[i].error);
        }
}

/* The real file cut at every length is read without going past its end (ASan watches) and either refused
 * with a sentence or, cut between two pieces, a smaller vocabulary that is padded. */
static void test_truncated(void **state) {
        Folder *f = *state;
        size_t len;
        _cleanup_free_ char *model = folder_read(f, "tokenizer.model", &len);
        unsigned refused = 0, converted = 0;

        assert_true(len > 1000);
        for (size_t cut = 0; cut < len; cut += cut < 200 ? 1 : 37) {
                QdError err = {};
                int r;

                write_raw(f, model, cut);
                r = try_convert(f->dirfd, NULL, &err);
                if (r == 0)
                        converted++;
                else if (r == -EBADMSG && startswith(err.msg, "tokenizer.model"))
                        refused++;
                else
                        fail_msg("cut at %zu: got %d '%s'", cut, r, err.msg);
        }
        print_message("# %u cuts refused, %u converted\n", refused, converted);
        assert_true(refused > 100);
}

static void test_bad_added_token(void **state) {
        Folder *f = *state;

        assert_int_equal(unlinkat(f->dirfd, "tokenizer.json", 0), 0);
        folder_edit(f, "tokenizer_config.json", "{",
                    "{\"added_tokens_decoder\": {\"400\": {\"content\": \"<x>\"}}, ");
        expect_error(f, EBADMSG, "The added token '<x>' has an id outside the vocabulary.");
        folder_edit(f, "tokenizer_config.json", "\"400\"", "\"four\"");
        expect_error(f, EBADMSG,
                     "tokenizer_config.json's added token 'four' has no content or is not an id.");
}

static void test_bad_unigram(void **state) {
        Folder *f = *state;

        use_unigram_json(f);
        assert_int_equal(unlinkat(f->dirfd, "tokenizer.model", 0), 0);
        folder_edit(f, "tokenizer.json", "\"<s>\",\n        0.0", "\"<s>\",\n        \"x\"");
        expect_error(f, EBADMSG, "tokenizer.json's Unigram entry");
}

static void test_bad_merge_bpe(void **state) {
        Folder *f = *state;

        assert_int_equal(unlinkat(f->dirfd, "tokenizer.model", 0), 0);
        folder_edit(f, "tokenizer.json", "\"merges\": [", "\"merges\": [7, ");
        expect_error(f, EBADMSG, "tokenizer.json's merge 0 is neither");
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup_folder, teardown_folder)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_from_model),
                T(test_logits),
                T(test_from_json_bpe),
                T(test_json_space_prefix),
                T(test_from_json_unigram),
                T(test_model_only),
                T(test_flags_from_config),
                T(test_built_model),
                T(test_fewer_pieces),
                T(test_added_tokens_json),
                T(test_more_pieces_than_rows),
                T(test_word_model),
                T(test_malformed),
                T(test_truncated),
                T(test_bad_added_token),
                T(test_bad_unigram),
                T(test_bad_merge_bpe),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
