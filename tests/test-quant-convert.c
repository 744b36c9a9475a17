/* SPDX-License-Identifier: MIT */
/*
 * quant_convert_hf() on the tiny random Hugging Face llama that tests/data/make-hf-tiny.py wrote with
 * transformers: the converted file run by the engine gives transformers' logits; the metadata and vocabulary
 * are where GGUF expects them; and folders with a broken config or tensors are refused with a clear error.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "convert-harness.h"

/* Converts the tiny model in the data folder with p into a memfd. */
static int convert_folder(const char *folder, const QuantConvertParams *p) {
        int dirfd = open_data_dir(folder), fd = convert_dir(dirfd, p);

        close(dirfd);
        return fd;
}

static int convert(const QuantConvertParams *p) {
        return convert_folder("hf-tiny-llama", p);
}

static void test_logits(void **state) {
        int fd = convert(NULL);

        check_logits(fd, "hf-tiny-llama.logits", 320, 1e-4);
        close(fd);
}

/* F32 output holds the same F16 values, so the logits agree as closely. */
static void test_logits_f32(void **state) {
        QuantConvertParams p = quant_convert_params_default();
        int fd;

        p.out_type = GGML_TYPE_F32;
        fd = convert(&p);
        check_logits(fd, "hf-tiny-llama.logits", 320, 1e-4);
        close(fd);
}

/* qwen2 from BF16 in one file, with biases and an untied head; BF16 stays BF16. */
static void test_qwen2(void **state) {
        _cleanup_(gguf_freep) Gguf *g = NULL;
        const GgufTensor *t;
        float f;
        int fd = convert_folder("hf-tiny-qwen2", NULL);

        check_logits(fd, "hf-tiny-qwen2.logits", 320, 1e-4);
        assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);
        t = gguf_find_tensor(g, "output.weight");
        assert_non_null(t);
        assert_int_equal(t->type, GGML_TYPE_BF16);
        t = gguf_find_tensor(g, "blk.0.attn_k.bias");
        assert_non_null(t);
        assert_int_equal(t->type, GGML_TYPE_F32);
        assert_int_equal(t->ne[0], 16);
        assert_int_equal(gguf_get_f32(g, "qwen2.rope.freq_base", &f), 0);
        assert_float_equal(f, 50000.0f, 0);
        assert_int_equal(gguf_get_f32(g, "qwen2.attention.layer_norm_rms_epsilon", &f), 0);
        assert_float_equal(f, 1e-6f, 1e-12);
        close(fd);
}

/* Undoes the C escapes \n, \t and \\ of the tokens file in place. */
static void unescape(char *s) {
        char *o = s;

        for (; *s; s++) {
                if (*s == '\\' && s[1]) {
                        s++;
                        *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
                } else
                        *o++ = *s;
        }
        *o = 0;
}

/* The converted vocabulary splits text as the Hugging Face tokenizer did. */
static void test_tokens(void **state) {
        _cleanup_free_ char *path = data_path("hf-tiny.tokens");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        EngineModel *m = NULL;
        QdError err = {};
        char line[1024];
        int fd = convert(NULL), n_lines = 0;

        assert_non_null(f);
        if (engine_model_load_fd(fd, NULL, &m, &err) < 0)
                fail_msg("load failed: %s", err.msg);
        while (fgets(line, sizeof(line), f)) {
                char *tab = strchr(line, '\t'), *p;
                _cleanup_free_ int32_t *ids = NULL;
                size_t n = 0, k = 0;

                assert_non_null(tab);
                *tab = 0;
                unescape(line);
                assert_int_equal(
                        engine_tokenize(engine_model_vocab(m), line, strlen(line), false, true, &ids, &n),
                        0);
                for (p = tab + 1; *p && *p != '\n'; k++) {
                        long want = strtol(p, &p, 10);

                        if (k >= n || ids[k] != want)
                                fail_msg("'%s': token %zu is %d, transformers says %ld", line, k,
                                         k < n ? ids[k] : -1, want);
                }
                assert_int_equal(n, k);
                n_lines++;
        }
        assert_int_equal(n_lines, 4);
        engine_model_unref(m);
        close(fd);
}

static void test_metadata(void **state) {
        int fd = convert(NULL);
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_free_ char *s = NULL;
        const GgufArray *a;
        const GgufTensor *t;
        uint32_t u;
        float f;
        bool b;

        assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);
        assert_int_equal(gguf_get_string(g, "general.architecture", &s), 0);
        assert_string_equal(s, "llama");
        assert_int_equal(gguf_get_u32(g, "llama.block_count", &u), 0);
        assert_int_equal(u, 2);
        assert_int_equal(gguf_get_u32(g, "llama.attention.head_count_kv", &u), 0);
        assert_int_equal(u, 2);
        assert_int_equal(gguf_get_u32(g, "llama.feed_forward_length", &u), 0);
        assert_int_equal(u, 96);
        assert_int_equal(gguf_get_u32(g, "llama.context_length", &u), 0);
        assert_int_equal(u, 128);
        assert_int_equal(gguf_get_f32(g, "llama.rope.freq_base", &f), 0);
        assert_float_equal(f, 10000.0f, 0);
        assert_int_equal(gguf_get_u32(g, "general.file_type", &u), 0);
        assert_int_equal(u, 1);

        /* Tied: no output.weight; norms F32, matrices F16 as in the source; shapes reversed. */
        assert_null(gguf_find_tensor(g, "output.weight"));
        t = gguf_find_tensor(g, "blk.1.attn_k.weight");
        assert_non_null(t);
        assert_int_equal(t->type, GGML_TYPE_F16);
        assert_int_equal(t->ne[0], 64);
        assert_int_equal(t->ne[1], 32);
        t = gguf_find_tensor(g, "blk.0.ffn_norm.weight");
        assert_non_null(t);
        assert_int_equal(t->type, GGML_TYPE_F32);

        free(s);
        s = NULL;
        assert_int_equal(gguf_get_string(g, "tokenizer.ggml.model", &s), 0);
        assert_string_equal(s, "gpt2");
        free(s);
        s = NULL;
        assert_int_equal(gguf_get_string(g, "tokenizer.ggml.pre", &s), 0);
        assert_string_equal(s, "default");
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.tokens", &a), 0);
        assert_int_equal(a->n, 320);
        assert_memory_equal(a->items[1].str.data, "<|im_start|>", 12);
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.token_type", &a), 0);
        /* Array data sits unaligned in the map: copy the elements out. */
        int32_t tt[101];
        memcpy(tt, a->data, sizeof(tt));
        assert_int_equal(tt[2], 3);
        assert_int_equal(tt[100], 1);
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.merges", &a), 0);
        assert_true(a->n > 10);
        assert_memory_equal(a->items[0].str.data, "\xc4\xa0 a", 4);
        assert_int_equal(gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u), 0);
        assert_int_equal(u, 1);
        assert_int_equal(gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u), 0);
        assert_int_equal(u, 2);
        assert_int_equal(gguf_get_u32(g, "tokenizer.ggml.padding_token_id", &u), 0);
        assert_int_equal(u, 0);
        assert_int_equal(gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
        assert_false(b);
        free(s);
        s = NULL;
        assert_int_equal(gguf_get_string(g, "tokenizer.chat_template", &s), 0);
        assert_non_null(strstr(s, "<|im_start|>"));
        close(fd);
}

/* ---- broken folders: a temporary copy of the tiny model with one file replaced ---- */

static const char *const tiny_files[] = {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
};

static int setup_folder(void **state) {
        *state = folder_new("hf-tiny-llama", tiny_files, ELEMENTSOF(tiny_files));
        return 0;
}

static int teardown_folder(void **state) {
        folder_free(*state);
        return 0;
}

static void test_bad_arch(void **state) {
        Folder *f = *state;

        folder_edit(f, "config.json", "\"model_type\": \"llama\"", "\"model_type\": \"gpt2\"");
        expect_error(f, EOPNOTSUPP, "Cannot convert model_type 'gpt2'");
}

static void test_bad_hparams(void **state) {
        Folder *f = *state;

        folder_edit(f, "config.json", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
        expect_error(f, EBADMSG, "do not divide");
}

static void test_missing_key(void **state) {
        Folder *f = *state;

        folder_edit(f, "config.json", "\"hidden_size\"", "\"hidden_sizes\"");
        expect_error(f, EBADMSG, "config.json has no hidden_size.");
}

static void test_vocab_mismatch(void **state) {
        Folder *f = *state;

        folder_edit(f, "config.json", "\"vocab_size\": 320", "\"vocab_size\": 321");
        expect_error(f, EBADMSG, "The embedding is 320");
}

static void test_missing_tensor(void **state) {
        Folder *f = *state;

        /* Renamed in the shard and the index alike (same length, so the header stays consistent). */
        folder_edit(f, "model.safetensors.index.json", "\"model.layers.1.mlp.up_proj.weight\"",
                    "\"model.layers.1.mlp.up_proj.weighs\"");
        folder_edit(f, "model-00002-of-00002.safetensors", "\"model.layers.1.mlp.up_proj.weight\"",
                    "\"model.layers.1.mlp.up_proj.weighs\"");
        expect_error(f, EBADMSG, "The model has no tensor 'model.layers.1.mlp.up_proj.weight'.");
}

static void test_extra_tensor(void **state) {
        Folder *f = *state;

        /* With one layer, layer 1's tensors are left over: refused rather than dropped. */
        folder_edit(f, "config.json", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
        expect_error(f, EOPNOTSUPP, "Tensor 'model.layers.1.");
}

static void test_unknown_tokenizer(void **state) {
        Folder *f = *state;

        folder_edit(f, "tokenizer.json", "\"type\": \"BPE\"", "\"type\": \"WordPiece\"");
        expect_error(f, EOPNOTSUPP, "Cannot convert a WordPiece tokenizer");
}

static void test_missing_config(void **state) {
        Folder *f = *state;

        unlinkat(f->dirfd, "config.json", 0);
        expect_error(f, ENOENT, "config.json");
        assert_int_equal(quant_convert_hf(-1, 1, NULL, NULL), -EINVAL);
}

/* Converts the folder and returns the string value of key, which must be there. */
static char *converted_string(Folder *f, const QuantConvertParams *p, const char *key) {
        _cleanup_(gguf_freep) Gguf *g = NULL;
        char *s = NULL;
        int fd = convert_dir(f->dirfd, p);

        assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);
        assert_int_equal(gguf_get_string(g, key, &s), 0);
        close(fd);
        return s;
}

static void set_pre_tokenizer(Folder *f, const char *json) {
        _cleanup_free_ char *to = strdup_printf("\"pre_tokenizer\": %s, \"replaced\": {", json);

        /* The old section stays under another key that nobody reads. */
        folder_edit(f, "tokenizer.json", "\"pre_tokenizer\": {", to);
}

static void test_pre_smollm(void **state) {
        Folder *f = *state;
        _cleanup_free_ char *s = NULL;

        set_pre_tokenizer(f, "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\", "
                             "\"individual_digits\": true}, {\"type\": \"ByteLevel\"}]}");
        s = converted_string(f, NULL, "tokenizer.ggml.pre");
        assert_string_equal(s, "smollm");
}

static void test_pre_llama_bpe(void **state) {
        Folder *f = *state;
        _cleanup_free_ char *s = NULL;

        set_pre_tokenizer(
                f,
                "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
                "{\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|"
                "\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|"
                "\\\\s+\"}}, {\"type\": \"ByteLevel\", \"use_regex\": false}]}");
        s = converted_string(f, NULL, "tokenizer.ggml.pre");
        assert_string_equal(s, "llama-bpe");
}

static void test_pre_qwen2(void **state) {
        Folder *f = *state;
        _cleanup_free_ char *s = NULL;

        set_pre_tokenizer(
                f, "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
                   "{\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|"
                   "\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|"
                   "\\\\s+\"}}, {\"type\": \"ByteLevel\", \"use_regex\": false}]}");
        s = converted_string(f, NULL, "tokenizer.ggml.pre");
        assert_string_equal(s, "qwen2");
}

/* An unknown pre-tokenizer gives "default"; the caller's name wins over the guess. */
static void test_pre_unknown_and_given(void **state) {
        Folder *f = *state;
        QuantConvertParams p = quant_convert_params_default();
        _cleanup_free_ char *s = NULL, *t = NULL;

        set_pre_tokenizer(f,
                          "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
                          "{\"Regex\": \"x+\"}}]}");
        s = converted_string(f, NULL, "tokenizer.ggml.pre");
        assert_string_equal(s, "default");
        p.pre = "llama-bpe";
        t = converted_string(f, &p, "tokenizer.ggml.pre");
        assert_string_equal(t, "llama-bpe");
}

/* The chat template from tokenizer_config.json wins over chat_template.jinja. */
static void test_template_in_config(void **state) {
        Folder *f = *state;
        _cleanup_free_ char *s = NULL;

        folder_edit(f, "tokenizer_config.json", "{", "{\"chat_template\": \"{{ messages }}\",");
        s = converted_string(f, NULL, "tokenizer.chat_template");
        assert_string_equal(s, "{{ messages }}");
}

static void test_bad_params(void **state) {
        Folder *f = *state;
        QuantConvertParams p = quant_convert_params_default();
        QdError err = {};

        p.out_type = GGML_TYPE_Q4_0;
        assert_int_equal(quant_convert_hf(f->dirfd, 1, &p, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "F32, F16 or BF16"));
}

static void test_rope_scaling(void **state) {
        Folder *f = *state;

        folder_edit(f, "config.json", "\"rope_type\": \"default\"", "\"rope_type\": \"yarn\"");
        expect_error(f, EOPNOTSUPP, "RoPE scaling 'yarn'");
}

static void test_rope_linear(void **state) {
        Folder *f = *state;
        _cleanup_free_ char *s = NULL;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        float factor;
        int fd;

        folder_edit(f, "config.json", "\"rope_type\": \"default\"",
                    "\"rope_type\": \"linear\", \"factor\": 4.0");
        fd = convert_dir(f->dirfd, NULL);
        assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);
        assert_int_equal(gguf_get_string(g, "llama.rope.scaling.type", &s), 0);
        assert_string_equal(s, "linear");
        assert_int_equal(gguf_get_f32(g, "llama.rope.scaling.factor", &factor), 0);
        assert_float_equal(factor, 4.0f, 0);
        close(fd);
}

static void test_bad_merges(void **state) {
        Folder *f = *state;

        folder_edit(f, "tokenizer.json", "\"merges\": [", "\"merges\": [7,");
        expect_error(f, EBADMSG, "merge 0 is neither");
}

static void test_bad_token_id(void **state) {
        Folder *f = *state;

        folder_edit(f, "tokenizer.json", "\"!\": 3", "\"!\": 320");
        expect_error(f, EBADMSG, "token '!' an id outside 0..319");
}

static void test_duplicate_token_id(void **state) {
        Folder *f = *state;

        folder_edit(f, "tokenizer.json", "\"!\": 3", "\"!\": 4");
        expect_error(f, EBADMSG, "gives id 4 to two tokens");
}

static void test_bad_json(void **state) {
        Folder *f = *state;

        folder_edit(f, "config.json", "{", "[");
        expect_error(f, EBADMSG, "'config.json' is not a JSON object.");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_logits),
                cmocka_unit_test(test_logits_f32),
                cmocka_unit_test(test_qwen2),
                cmocka_unit_test(test_tokens),
                cmocka_unit_test(test_metadata),
                cmocka_unit_test_setup_teardown(test_bad_arch, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_bad_hparams, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_missing_key, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_vocab_mismatch, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_missing_tensor, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_extra_tensor, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_unknown_tokenizer, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_missing_config, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_pre_smollm, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_pre_llama_bpe, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_pre_qwen2, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_pre_unknown_and_given, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_template_in_config, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_bad_params, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_rope_scaling, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_rope_linear, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_bad_merges, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_bad_token_id, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_duplicate_token_id, setup_folder, teardown_folder),
                cmocka_unit_test_setup_teardown(test_bad_json, setup_folder, teardown_folder),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
