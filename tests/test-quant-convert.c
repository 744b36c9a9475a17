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

#include "quant.h"

static char *data_path(const char *name) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        return strdup_printf("%s/%s", dir ? dir : "tests/data", name);
}

static int open_folder(const char *name) {
        _cleanup_free_ char *path = data_path(name);
        int dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (dirfd < 0)
                fail_msg("Cannot open %s: %m", path);
        return dirfd;
}

static int open_tiny(void) {
        return open_folder("hf-tiny-llama");
}

/* Converts the tiny model in folder with p into a memfd. */
static int convert_folder(const char *folder, const QuantConvertParams *p) {
        QdError err = {};
        int dirfd = open_folder(folder), fd = memfd_create("converted", MFD_CLOEXEC), r;

        assert_true(fd >= 0);
        r = quant_convert_hf(dirfd, fd, p, &err);
        close(dirfd);
        if (r < 0)
                fail_msg("conversion failed: %d %s", r, err.msg);
        return fd;
}

static int convert(const QuantConvertParams *p) {
        return convert_folder("hf-tiny-llama", p);
}

/* Reads the reference: the token ids and their (n_tokens, n_vocab) logits. */
static float *read_reference(const char *name, int32_t *tokens, uint32_t *ret_n, uint32_t n_vocab) {
        _cleanup_free_ char *path = data_path(name);
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        float *logits;
        uint32_t n;

        assert_non_null(f);
        assert_int_equal(fscanf(f, "tokens %u", &n), 1);
        assert_true(n > 0 && n <= 16);
        for (uint32_t i = 0; i < n; i++)
                assert_int_equal(fscanf(f, "%d", &tokens[i]), 1);
        logits = calloc((size_t)n * n_vocab, sizeof(float));
        assert_non_null(logits);
        for (size_t i = 0; i < (size_t)n * n_vocab; i++)
                assert_int_equal(fscanf(f, "%f", &logits[i]), 1);
        *ret_n = n;
        return logits;
}

static void check_logits(int fd, const char *reference, double tolerance) {
        EngineModelParams mp = engine_model_params_default();
        EngineModel *m = NULL;
        EngineSeq *seq = NULL;
        QdError err = {};
        int32_t tokens[16];
        uint32_t n, n_vocab;
        _cleanup_free_ float *want = NULL, *got = NULL;
        double worst = 0;

        mp.backend = "cpu";
        mp.n_threads = 1;
        mp.kv_type = GGML_TYPE_F32;
        mp.f32_activations = true;
        if (engine_model_load_fd(fd, &mp, &m, &err) < 0)
                fail_msg("load failed: %s", err.msg);
        n_vocab = engine_model_info(m)->n_vocab;
        assert_int_equal(n_vocab, 320);
        want = read_reference(reference, tokens, &n, n_vocab);
        got = calloc((size_t)n * n_vocab, sizeof(float));
        assert_non_null(got);
        assert_int_equal(engine_seq_new(m, 64, &seq), 0);
        if (engine_decode_all(m, seq, tokens, n, got, &err) < 0)
                fail_msg("decode failed: %s", err.msg);
        for (size_t i = 0; i < (size_t)n * n_vocab; i++) {
                /* Relative to the row's largest logit, so that logits near 0 do not dominate. */
                double scale = 0, d;
                size_t row = i / n_vocab;

                for (uint32_t j = 0; j < n_vocab; j++)
                        scale = fmax(scale, fabs(want[row * n_vocab + j]));
                d = fabs((double)got[i] - want[i]) / scale;
                worst = fmax(worst, d);
        }
        print_message("# worst relative logit error %.3g\n", worst);
        assert_true(worst < tolerance);
        engine_seq_free(seq);
        engine_model_unref(m);
}

static void test_logits(void **state) {
        int fd = convert(NULL);

        check_logits(fd, "hf-tiny-llama.logits", 1e-4);
        close(fd);
}

/* F32 output holds the same F16 values, so the logits agree as closely. */
static void test_logits_f32(void **state) {
        QuantConvertParams p = quant_convert_params_default();
        int fd;

        p.out_type = GGML_TYPE_F32;
        fd = convert(&p);
        check_logits(fd, "hf-tiny-llama.logits", 1e-4);
        close(fd);
}

/* qwen2 from BF16 in one file, with biases and an untied head; BF16 stays BF16. */
static void test_qwen2(void **state) {
        _cleanup_(gguf_freep) Gguf *g = NULL;
        const GgufTensor *t;
        float f;
        int fd = convert_folder("hf-tiny-qwen2", NULL);

        check_logits(fd, "hf-tiny-qwen2.logits", 1e-4);
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

typedef struct Folder {
        char dir[64];
        int dirfd;
} Folder;

static const char *const tiny_files[] = {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
};

static void copy_file(int from_dir, int to_dir, const char *name) {
        int in = openat(from_dir, name, O_RDONLY | O_CLOEXEC), out;
        char buf[65536];
        ssize_t k;

        assert_true(in >= 0);
        out = openat(to_dir, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(out >= 0);
        while ((k = read(in, buf, sizeof(buf))) > 0)
                assert_int_equal(write(out, buf, (size_t)k), k);
        close(in);
        close(out);
}

static int setup_folder(void **state) {
        Folder *f = calloc(1, sizeof(Folder));
        int src = open_tiny();

        strcpy(f->dir, "/tmp/test-convert-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        f->dirfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(f->dirfd >= 0);
        for (size_t i = 0; i < ELEMENTSOF(tiny_files); i++)
                copy_file(src, f->dirfd, tiny_files[i]);
        close(src);
        *state = f;
        return 0;
}

static int teardown_folder(void **state) {
        Folder *f = *state;

        for (size_t i = 0; i < ELEMENTSOF(tiny_files); i++)
                (void)unlinkat(f->dirfd, tiny_files[i], 0);
        close(f->dirfd);
        rmdir(f->dir);
        free(f);
        return 0;
}

/* Replaces the first occurrence of from with to in the folder's file name (which may be binary). */
static void edit(Folder *f, const char *name, const char *from, const char *to) {
        _cleanup_free_ char *path = strdup_printf("%s/%s", f->dir, name), *text = NULL;
        _cleanup_fclose_ FILE *in = fopen(path, "re");
        size_t len;
        char *at;
        FILE *o;

        assert_non_null(in);
        text = calloc(1, 1 << 20);
        len = fread(text, 1, 1 << 20, in);
        at = memmem(text, len, from, strlen(from));
        if (!at)
                fail_msg("'%s' not in %s", from, name);
        o = fopen(path, "we");
        assert_non_null(o);
        assert_int_equal(fwrite(text, 1, (size_t)(at - text), o), (size_t)(at - text));
        fputs(to, o);
        len -= (size_t)(at - text) + strlen(from);
        assert_int_equal(fwrite(at + strlen(from), 1, len, o), len);
        fclose(o);
}

static void expect_error(Folder *f, int error, const char *needle) {
        QdError err = {};
        int fd = memfd_create("converted", MFD_CLOEXEC), r;

        r = quant_convert_hf(f->dirfd, fd, NULL, &err);
        close(fd);
        if (r != -error || !strstr(err.msg, needle))
                fail_msg("got %d '%s', wanted %d with '%s'", r, err.msg, -error, needle);
}

static void test_bad_arch(void **state) {
        Folder *f = *state;

        edit(f, "config.json", "\"model_type\": \"llama\"", "\"model_type\": \"gpt2\"");
        expect_error(f, EOPNOTSUPP, "Cannot convert model_type 'gpt2'");
}

static void test_bad_hparams(void **state) {
        Folder *f = *state;

        edit(f, "config.json", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
        expect_error(f, EBADMSG, "do not divide");
}

static void test_missing_key(void **state) {
        Folder *f = *state;

        edit(f, "config.json", "\"hidden_size\"", "\"hidden_sizes\"");
        expect_error(f, EBADMSG, "config.json has no hidden_size.");
}

static void test_vocab_mismatch(void **state) {
        Folder *f = *state;

        edit(f, "config.json", "\"vocab_size\": 320", "\"vocab_size\": 321");
        expect_error(f, EBADMSG, "The embedding is 320");
}

static void test_missing_tensor(void **state) {
        Folder *f = *state;

        /* Renamed in the shard and the index alike (same length, so the header stays consistent). */
        edit(f, "model.safetensors.index.json", "\"model.layers.1.mlp.up_proj.weight\"",
             "\"model.layers.1.mlp.up_proj.weighs\"");
        edit(f, "model-00002-of-00002.safetensors", "\"model.layers.1.mlp.up_proj.weight\"",
             "\"model.layers.1.mlp.up_proj.weighs\"");
        expect_error(f, EBADMSG, "The model has no tensor 'model.layers.1.mlp.up_proj.weight'.");
}

static void test_extra_tensor(void **state) {
        Folder *f = *state;

        /* With one layer, layer 1's tensors are left over: refused rather than dropped. */
        edit(f, "config.json", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
        expect_error(f, EOPNOTSUPP, "Tensor 'model.layers.1.");
}

static void test_unknown_tokenizer(void **state) {
        Folder *f = *state;

        edit(f, "tokenizer.json", "\"type\": \"BPE\"", "\"type\": \"WordPiece\"");
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
        QdError err = {};
        char *s = NULL;
        int fd = memfd_create("converted", MFD_CLOEXEC);

        if (quant_convert_hf(f->dirfd, fd, p, &err) < 0)
                fail_msg("conversion failed: %s", err.msg);
        assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);
        assert_int_equal(gguf_get_string(g, key, &s), 0);
        close(fd);
        return s;
}

static void set_pre_tokenizer(Folder *f, const char *json) {
        _cleanup_free_ char *to = strdup_printf("\"pre_tokenizer\": %s, \"replaced\": {", json);

        /* The old section stays under another key that nobody reads. */
        edit(f, "tokenizer.json", "\"pre_tokenizer\": {", to);
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

        edit(f, "tokenizer_config.json", "{", "{\"chat_template\": \"{{ messages }}\",");
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

        edit(f, "config.json", "\"rope_type\": \"default\"", "\"rope_type\": \"yarn\"");
        expect_error(f, EOPNOTSUPP, "RoPE scaling 'yarn'");
}

static void test_rope_linear(void **state) {
        Folder *f = *state;
        _cleanup_free_ char *s = NULL;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        float factor;
        int fd = memfd_create("converted", MFD_CLOEXEC);

        edit(f, "config.json", "\"rope_type\": \"default\"", "\"rope_type\": \"linear\", \"factor\": 4.0");
        assert_int_equal(quant_convert_hf(f->dirfd, fd, NULL, NULL), 0);
        assert_int_equal(gguf_open_fd(fd, &g, NULL), 0);
        assert_int_equal(gguf_get_string(g, "llama.rope.scaling.type", &s), 0);
        assert_string_equal(s, "linear");
        assert_int_equal(gguf_get_f32(g, "llama.rope.scaling.factor", &factor), 0);
        assert_float_equal(factor, 4.0f, 0);
        close(fd);
}

static void test_bad_merges(void **state) {
        Folder *f = *state;

        edit(f, "tokenizer.json", "\"merges\": [", "\"merges\": [7,");
        expect_error(f, EBADMSG, "merge 0 is neither");
}

static void test_bad_token_id(void **state) {
        Folder *f = *state;

        edit(f, "tokenizer.json", "\"!\": 3", "\"!\": 320");
        expect_error(f, EBADMSG, "token '!' an id outside 0..319");
}

static void test_duplicate_token_id(void **state) {
        Folder *f = *state;

        edit(f, "tokenizer.json", "\"!\": 3", "\"!\": 4");
        expect_error(f, EBADMSG, "gives id 4 to two tokens");
}

static void test_bad_json(void **state) {
        Folder *f = *state;

        edit(f, "config.json", "{", "[");
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
