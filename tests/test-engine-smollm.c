/* SPDX-License-Identifier: MIT */
/*
 * SmolLM2-135M-Instruct (Q4_1, the file in $QUANTD_TEST_SMOLLM) against tests/data/smollm-reference.txt, which
 * an independent float32 numpy forward pass made (tests/data/make-smollm-reference.py): for 3 prompts, 64
 * greedy tokens and the top-5 logits at 3 positions. The engine's float-activation path must give the same
 * tokens and logits within 1e-3 relative (all positions in one batch, teacher-forced); the default path (int8
 * activations, f16 KV cache, generated tokens one at a time) logits within a few percent. The model's own
 * vocabulary tokenizes the prompts as llama.cpp did, and the perplexity over a short text is near llama.cpp's.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <math.h>

#include "engine.h"

#define N_PROMPTS 3
#define N_GEN 64
#define N_TOP 3

typedef struct Ref {
        int32_t prompt[256];
        uint32_t n_prompt;
        int32_t greedy[N_GEN];
        uint32_t top_pos[N_TOP];
        int32_t top_id[N_TOP][5];
        float top_logit[N_TOP][5];
} Ref;

static Ref refs[N_PROMPTS];

static uint32_t parse_ids(char *p, int32_t *ids, uint32_t max) {
        uint32_t n = 0;
        char *end;

        while (n < max) {
                long v = strtol(p, &end, 10);
                if (end == p)
                        break;
                ids[n++] = (int32_t)v;
                p = end;
        }
        return n;
}

static int setup(void **state) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path = strdup_printf("%s/smollm-reference.txt", dir ? dir : "tests/data");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[8192];
        int ip = -1, it = 0;

        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f)) {
                const char *rest;
                if ((rest = startswith(line, "prompt "))) {
                        if (++ip >= N_PROMPTS)
                                return -1;
                        it = 0;
                        refs[ip].n_prompt = parse_ids((char *)rest, refs[ip].prompt, 256);
                } else if ((rest = startswith(line, "greedy "))) {
                        if (ip < 0 || parse_ids((char *)rest, refs[ip].greedy, N_GEN) != N_GEN)
                                return -1;
                } else if ((rest = startswith(line, "top5 "))) {
                        char *p;
                        if (ip < 0 || it >= N_TOP)
                                return -1;
                        refs[ip].top_pos[it] = (uint32_t)strtoul(rest, &p, 10);
                        for (int k = 0; k < 5; k++) {
                                refs[ip].top_id[it][k] = (int32_t)strtol(p, &p, 10);
                                if (*p++ != ':')
                                        return -1;
                                refs[ip].top_logit[it][k] = strtof(p, &p);
                        }
                        it++;
                }
        }
        return ip == N_PROMPTS - 1 ? 0 : -1;
}

static int32_t argmax(const float *v, uint32_t n) {
        uint32_t best = 0;

        for (uint32_t i = 1; i < n; i++)
                if (v[i] > v[best])
                        best = i;
        return (int32_t)best;
}

/* Checks the logits of prompt + greedy continuation (logits: one row per position of ref->prompt followed by
 * ref->greedy): the first n_exact greedy choices must match, and the top-5 logits within tol relative. */
static void check_logits(const Ref *ref, const float *logits, uint32_t nv, uint32_t n_exact, float tol) {
        for (uint32_t g = 0; g < n_exact; g++) {
                int32_t choice = argmax(logits + (size_t)(ref->n_prompt + g - 1) * nv, nv);
                if (choice != ref->greedy[g])
                        fail_msg("greedy token %u: %d, reference %d", g, choice, ref->greedy[g]);
        }
        for (int t = 0; t < N_TOP; t++) {
                const float *l = logits + (size_t)ref->top_pos[t] * nv;
                for (int k = 0; k < 5; k++) {
                        float got = l[ref->top_id[t][k]], want = ref->top_logit[t][k];
                        if (fabsf(got - want) > tol * fabsf(want))
                                fail_msg("position %u, token %d: logit %f, reference %f", ref->top_pos[t],
                                         ref->top_id[t][k], got, want);
                }
        }
}

/* The prompt and the reference's greedy tokens through one batch: teacher forcing gives every position's
 * logits at once, which the slow float-activation path can afford. */
static void check_prompt_batch(EngineModel *m, const Ref *ref, float tol) {
        uint32_t nv = engine_model_info(m)->n_vocab, total = ref->n_prompt + N_GEN - 1;
        _cleanup_free_ float *logits = malloc((size_t)total * nv * sizeof(float));
        _cleanup_free_ int32_t *ids = malloc(total * sizeof(int32_t));
        _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
        QdError err = {};

        assert_non_null(logits);
        assert_non_null(ids);
        memcpy(ids, ref->prompt, ref->n_prompt * sizeof(int32_t));
        memcpy(ids + ref->n_prompt, ref->greedy, (N_GEN - 1) * sizeof(int32_t));
        assert_int_equal(engine_seq_new(m, total, &s), 0);
        if (engine_decode_all(m, s, ids, total, logits, &err) < 0)
                fail_msg("%s", err.msg);
        check_logits(ref, logits, nv, N_GEN, tol);
}

/* The prompt in one batch, then the reference's greedy tokens one at a time (the generation path). */
static void check_prompt_steps(EngineModel *m, const Ref *ref, uint32_t n_exact, float tol) {
        uint32_t nv = engine_model_info(m)->n_vocab, total = ref->n_prompt + N_GEN - 1;
        _cleanup_free_ float *logits = malloc((size_t)total * nv * sizeof(float));
        _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
        QdError err = {};

        assert_non_null(logits);
        assert_int_equal(engine_seq_new(m, total, &s), 0);
        if (engine_decode_all(m, s, ref->prompt, ref->n_prompt, logits, &err) < 0)
                fail_msg("%s", err.msg);
        for (uint32_t g = 0; g + 1 < N_GEN; g++) {
                const int32_t *tp = &ref->greedy[g];
                uint32_t one = 1;
                float *out = logits + (size_t)(ref->n_prompt + g) * nv;
                if (engine_decode(m, &s, &tp, &one, 1, &out, NULL, &err) < 0)
                        fail_msg("%s", err.msg);
        }
        check_logits(ref, logits, nv, n_exact, tol);
}

static EngineModel *load(bool f32, uint32_t kv_type) {
        const char *path = getenv("QUANTD_TEST_SMOLLM");
        EngineModelParams p = engine_model_params_default();
        EngineModel *m = NULL;
        QdError err = {};

        if (!path)
                fail_msg("QUANTD_TEST_SMOLLM is not set; it names SmolLM2-135M-Instruct.Q4_1.gguf");
        p.backend = "cpu";
        p.f32_activations = f32;
        p.kv_type = kv_type;
        if (engine_model_load(path, &p, &m, &err) < 0)
                fail_msg("loading %s: %s", path, err.msg);
        return m;
}

static void test_f32_path(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(true, GGML_TYPE_F32);
        const EngineModelInfo *info = engine_model_info(m);

        assert_string_equal(info->arch, "llama");
        assert_int_equal(info->n_vocab, 49152);
        assert_string_equal(info->file_type, "Q4_1");
        for (int i = 0; i < N_PROMPTS; i++)
                check_prompt_batch(m, &refs[i], 1e-3f);
}

static void test_default_path(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(false, GGML_TYPE_F16);

        for (int i = 0; i < N_PROMPTS; i++)
                check_prompt_steps(m, &refs[i], 0, 5e-2f);
}

/* The prompts of make-smollm-reference.py, tokenized by llama.cpp there (special tokens parsed, no BOS added). */
static const char *const prompt_texts[N_PROMPTS] = {
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):\n    ",
};

/* The loaded model's own vocabulary tokenizes the prompts as llama.cpp did. */
static void test_model_vocab(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(false, GGML_TYPE_F16);
        const EngineVocab *v = engine_model_vocab(m);

        assert_non_null(v);
        assert_int_equal(engine_vocab_kind(v), ENGINE_VOCAB_BPE);
        assert_string_equal(engine_vocab_pre(v), "smollm");
        assert_true(engine_vocab_is_eog(v, engine_vocab_find(v, "<|im_end|>", 10)));
        for (int i = 0; i < N_PROMPTS; i++) {
                _cleanup_free_ int32_t *ids = NULL;
                size_t n;
                assert_int_equal(engine_tokenize(v, prompt_texts[i], strlen(prompt_texts[i]), false, true, &ids,
                                                 &n), 0);
                assert_int_equal(n, refs[i].n_prompt);
                assert_memory_equal(ids, refs[i].prompt, n * sizeof(int32_t));
        }
}

/* The perplexity over tests/data/perplexity-text.txt near llama.cpp's for the same file (both quantize the
 * activations to 8 bits, each its own way; the exact float path lands between them). */
static void test_perplexity(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(false, GGML_TYPE_F16);
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *rpath = strdup_printf("%s/perplexity-smollm-reference.txt", dir ? dir : "tests/data");
        _cleanup_free_ char *tpath = strdup_printf("%s/perplexity-text.txt", dir ? dir : "tests/data");
        _cleanup_fclose_ FILE *f = fopen(rpath, "re"), *t = fopen(tpath, "re");
        _cleanup_free_ char *text = malloc(65536);
        _cleanup_free_ int32_t *tokens = NULL;
        uint64_t n_tokens = 0, n_ctx = 0, scored = 0;
        double ppl = 0;
        char line[256];
        size_t n, len;
        EnginePerplexity res;
        QdError err = {};

        assert_non_null(f);
        assert_non_null(t);
        assert_non_null(text);
        while (fgets(line, sizeof(line), f)) {
                const char *rest;
                if ((rest = startswith(line, "n_tokens ")))
                        n_tokens = strtoull(rest, NULL, 10);
                else if ((rest = startswith(line, "n_ctx ")))
                        n_ctx = strtoull(rest, NULL, 10);
                else if ((rest = startswith(line, "scored ")))
                        scored = strtoull(rest, NULL, 10);
                else if ((rest = startswith(line, "ppl ")))
                        ppl = strtod(rest, NULL);
        }
        assert_true(n_tokens > 0 && n_ctx > 0 && ppl > 0);
        len = fread(text, 1, 65535, t);
        assert_int_equal(engine_tokenize(engine_model_vocab(m), text, len, true, false, &tokens, &n), 0);
        assert_int_equal(n, n_tokens);
        if (engine_perplexity(m, tokens, n, (uint32_t)n_ctx, 0, NULL, NULL, &res, &err) < 0)
                fail_msg("%s", err.msg);
        assert_int_equal(res.n_scored, scored);
        if (fabs(res.ppl - ppl) > 0.02 * ppl)
                fail_msg("perplexity %f, llama.cpp %f", res.ppl, ppl);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_f32_path),
                cmocka_unit_test(test_default_path),
                cmocka_unit_test(test_model_vocab),
                cmocka_unit_test(test_perplexity),
        };

        return cmocka_run_group_tests(tests, setup, NULL);
}
