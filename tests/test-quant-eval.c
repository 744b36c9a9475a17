/* SPDX-License-Identifier: MIT */
/*
 * Quantized models still work, and quant_eval() measures what they lost: stories260K quantized to Q8_0 still
 * decodes mostly the golden greedy tokens; perplexity follows llama-perplexity's chunking; KL divergence and
 * top-1 agreement against the F32 original order the mixtures as their bits do.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <math.h>
#include <sys/mman.h>

#include "quant.h"

#define N_GOLDEN 80

typedef struct Fixture {
        Gguf *src;
        EngineModel *f32;
        char *text;
        size_t text_len;
        int32_t golden[N_GOLDEN];
} Fixture;

static EngineModelParams model_params(void) {
        EngineModelParams p = engine_model_params_default();
        p.backend = "cpu";
        p.n_threads = 2;
        return p;
}

static char *read_text(const char *path, size_t *ret_len) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        Buf b = {};
        char tmp[4096];
        size_t k;

        if (!f)
                return NULL;
        while ((k = fread(tmp, 1, sizeof(tmp), f)) > 0)
                if (buf_append(&b, tmp, k) < 0)
                        return NULL;
        *ret_len = b.len;
        return buf_steal_str(&b);
}

static int setup(void **state) {
        const char *dir = getenv("QUANTD_TEST_MODELS"), *data = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
        _cleanup_free_ char *golden = strdup_printf("%s/stories260K.golden", dir ? dir : "../shared/models");
        _cleanup_free_ char *story = strdup_printf("%s/quant/story.txt", data ? data : "tests/data");
        _cleanup_fclose_ FILE *g = NULL;
        EngineModelParams mp = model_params();
        Fixture *f = calloc(1, sizeof(Fixture));
        char line[4096];
        size_t n = 0;

        if (!f || gguf_open(path, &f->src, NULL) < 0 || engine_model_load(path, &mp, &f->f32, NULL) < 0)
                return -1;
        f->text = read_text(story, &f->text_len);
        g = fopen(golden, "re");
        if (!f->text || !g)
                return -1;
        while (fgets(line, sizeof(line), g))
                if (line[0] != '#')
                        for (char *s = strtok(line, " \n"); s && n < N_GOLDEN; s = strtok(NULL, " \n"))
                                f->golden[n++] = atoi(s);
        if (n != N_GOLDEN)
                return -1;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        engine_model_unref(f->f32);
        gguf_free(f->src);
        free(f->text);
        free(f);
        return 0;
}

/* stories260K quantized by mixture m, loaded. */
static EngineModel *quantized(const Fixture *f, QuantMixture m) {
        QuantParams p = quant_params_default();
        EngineModelParams mp = model_params();
        EngineModel *model = NULL;
        QdError err = {};
        int fd = memfd_create("quantized", MFD_CLOEXEC);

        assert_true(fd >= 0);
        p.mixture = m;
        if (quant_file(f->src, fd, &p, &err) < 0)
                fail_msg("quant_file: %s", err.msg);
        if (engine_model_load_fd(fd, &mp, &model, &err) < 0)
                fail_msg("loading the %s model: %s", quant_mixture_name(m), err.msg);
        safe_close(fd);
        return model;
}

static int32_t argmax(const float *v, uint32_t n) {
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++)
                if (v[i] > v[best])
                        best = i;
        return (int32_t)best;
}

/* How many of the first 80 greedy tokens from BOS equal the golden ones, and how long the equal prefix is.
 */
static void greedy_agreement(EngineModel *m, const int32_t *golden, unsigned *ret_same,
                             unsigned *ret_prefix) {
        _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
        float logits[512];
        float *lp = logits;
        int32_t tok = 1;
        const uint32_t one = 1;
        unsigned same = 0, prefix = 0;
        bool diverged = false;

        assert_int_equal(engine_model_info(m)->n_vocab, 512);
        assert_int_equal(engine_seq_new(m, 128, &s), 0);
        for (int i = 0; i < N_GOLDEN; i++) {
                const int32_t *tp = &tok;
                assert_int_equal(engine_decode(m, &s, &tp, &one, 1, &lp, NULL, NULL), 0);
                tok = argmax(logits, 512);
                same += tok == golden[i];
                if (tok != golden[i])
                        diverged = true;
                if (!diverged)
                        prefix++;
        }
        *ret_same = same;
        *ret_prefix = prefix;
}

static void test_golden_tokens(void **state) {
        Fixture *f = *state;
        unsigned same, prefix;

        /* The original reproduces them all; Q8_0 keeps the first 40 at least and most of the rest. */
        greedy_agreement(f->f32, f->golden, &same, &prefix);
        assert_int_equal(same, N_GOLDEN);

        _cleanup_(engine_model_unrefp) EngineModel *q8 = quantized(f, QUANT_MIXTURE_Q8_0);
        greedy_agreement(q8, f->golden, &same, &prefix);
        print_message("# Q8_0: %u of %u golden tokens, the first %u in a row\n", same, N_GOLDEN, prefix);
        assert_true(prefix >= 40);
        assert_true(same >= 60);
}

/* ppl by hand for one chunk: BOS first, the second half scored. */
static void test_perplexity_method(void **state) {
        Fixture *f = *state;
        _cleanup_(engine_vocab_freep) EngineVocab *vocab = NULL;
        _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
        _cleanup_free_ int32_t *tokens = NULL;
        _cleanup_free_ float *logits = malloc(32 * 512 * sizeof(float));
        QuantEvalParams p = {.n_ctx = 32, .max_chunks = 1};
        QuantEvalResult r;
        QdError err = {};
        size_t n;

        assert_int_equal(engine_vocab_new(f->src, &vocab, NULL), 0);
        assert_int_equal(engine_tokenize(vocab, f->text, f->text_len, true, false, &tokens, &n), 0);
        assert_true(n > 400);
        tokens[0] = engine_vocab_bos(vocab);
        assert_int_equal(engine_seq_new(f->f32, 32, &s), 0);
        assert_int_equal(engine_decode_all(f->f32, s, tokens, 32, logits, NULL), 0);
        double nll = 0;
        for (int j = 16; j < 31; j++) {
                double max = -INFINITY, sum = 0;
                for (int v = 0; v < 512; v++)
                        max = fmax(max, logits[j * 512 + v]);
                for (int v = 0; v < 512; v++)
                        sum += exp(logits[j * 512 + v] - max);
                nll -= logits[j * 512 + tokens[j + 1]] - max - log(sum);
        }

        if (quant_eval(f->f32, NULL, f->text, f->text_len, &p, &r, &err) < 0)
                fail_msg("quant_eval: %s", err.msg);
        assert_int_equal(r.n_chunks, 1);
        assert_int_equal(r.n_scored, 15);
        assert_true(fabs(r.ppl - exp(nll / 15)) < 1e-9 * r.ppl);
        assert_true(r.ppl_base == 0 && r.kld_mean == 0 && r.top1 == 0);
        assert_true(fabs(r.bpw - 32.0) < 1e-9); /* all F32 */

        /* Every whole chunk by default: tokens / n_ctx of them. */
        p.max_chunks = 0;
        assert_int_equal(quant_eval(f->f32, NULL, f->text, f->text_len, &p, &r, &err), 0);
        assert_int_equal(r.n_chunks, n / 32);
        assert_int_equal(r.n_scored, (n / 32) * 15);
        print_message("# stories260K F32 on the story: perplexity %.3f over %" PRIu64 " tokens\n", r.ppl,
                      r.n_scored);
        assert_true(r.ppl > 1.0 && r.ppl < 50.0);
}

static void test_kld_orders_mixtures(void **state) {
        Fixture *f = *state;
        QuantEvalParams p = {.n_ctx = 64};
        QuantEvalResult self, q8, q5, q4;
        QdError err = {};

        /* Against itself: no divergence at all. */
        assert_int_equal(quant_eval(f->f32, f->f32, f->text, f->text_len, &p, &self, &err), 0);
        assert_true(self.kld_mean == 0.0 && self.kld_p99 == 0.0);
        assert_true(self.top1 == 1.0);
        assert_true(self.ppl == self.ppl_base);

        _cleanup_(engine_model_unrefp) EngineModel *m8 = quantized(f, QUANT_MIXTURE_Q8_0);
        _cleanup_(engine_model_unrefp) EngineModel *m5 = quantized(f, QUANT_MIXTURE_Q5_0);
        _cleanup_(engine_model_unrefp) EngineModel *m4 = quantized(f, QUANT_MIXTURE_Q4_0);
        assert_int_equal(quant_eval(m8, f->f32, f->text, f->text_len, &p, &q8, &err), 0);
        assert_int_equal(quant_eval(m5, f->f32, f->text, f->text_len, &p, &q5, &err), 0);
        assert_int_equal(quant_eval(m4, f->f32, f->text, f->text_len, &p, &q4, &err), 0);
        const QuantEvalResult *rs[] = {&q8, &q5, &q4};
        const char *names[] = {"Q8_0", "Q5_0", "Q4_0"};
        for (int i = 0; i < 3; i++)
                print_message("# %s: %.2f bpw, ppl %.4f (base %.4f), KLD mean %.6f, p99 %.6f, top-1 %.4f\n",
                              names[i], rs[i]->bpw, rs[i]->ppl, rs[i]->ppl_base, rs[i]->kld_mean,
                              rs[i]->kld_p99, rs[i]->top1);
        assert_true(q8.ppl_base == self.ppl);
        assert_true(q8.kld_mean > 0.0 && q8.kld_mean < 0.01);
        assert_true(q8.top1 > 0.95);
        assert_true(q8.kld_mean < q5.kld_mean && q5.kld_mean < q4.kld_mean);
        assert_true(q8.kld_p99 < q4.kld_p99);
        assert_true(q8.top1 >= q5.top1 && q5.top1 >= q4.top1);
        assert_true(q8.bpw > q5.bpw && q5.bpw > q4.bpw);
        assert_true(q4.kld_p99 >= q4.kld_mean);
}

/* stories260K without its tokenizer.* keys: it loads, but there is nothing to tokenize the text with. */
static void test_no_tokenizer(void **state) {
        Fixture *f = *state;
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        _cleanup_(engine_model_unrefp) EngineModel *m = NULL;
        EngineModelParams mp = model_params();
        QuantEvalParams p = {.n_ctx = 64};
        QuantEvalResult r;
        QdError err = {};
        int fd = memfd_create("no-tokenizer", MFD_CLOEXEC);

        assert_true(fd >= 0);
        assert_int_equal(gguf_writer_new(&w, fd, f->src->alignment), 0);
        for (uint64_t i = 0; i < f->src->n_kv; i++)
                if (!startswith(f->src->kv[i].key, "tokenizer."))
                        assert_int_equal(gguf_writer_add_value(w, f->src->kv[i].key, &f->src->kv[i].value),
                                         0);
        for (uint64_t i = 0; i < f->src->n_tensors; i++) {
                const GgufTensor *t = &f->src->tensors[i];
                assert_int_equal(gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne), 0);
        }
        assert_int_equal(gguf_writer_write_header(w), 0);
        for (uint64_t i = 0; i < f->src->n_tensors; i++)
                assert_int_equal(
                        gguf_writer_write_tensor_data(w, f->src->tensors[i].data, f->src->tensors[i].size),
                        0);
        assert_int_equal(gguf_writer_finish(w), 0);
        if (engine_model_load_fd(fd, &mp, &m, &err) < 0)
                fail_msg("loading: %s", err.msg);
        safe_close(fd);

        assert_true(quant_eval(m, NULL, f->text, f->text_len, &p, &r, &err) < 0);
        assert_non_null(strstr(err.msg, "tokenizer"));
}

static void on_chunk(void *userdata, size_t chunk, size_t n_chunks) {
        QuantEvalParams *p = userdata;
        if (chunk == 1)
                atomic_store((atomic_bool *)p->cancel, true);
}

static void test_errors(void **state) {
        Fixture *f = *state;
        atomic_bool cancel = false;
        QuantEvalParams p = {.n_ctx = 64};
        QuantEvalResult r;
        QdError err = {};

        assert_int_equal(quant_eval(NULL, NULL, f->text, f->text_len, &p, &r, NULL), -EINVAL);
        assert_int_equal(quant_eval(f->f32, NULL, NULL, 0, &p, &r, NULL), -EINVAL);
        assert_int_equal(quant_eval(f->f32, NULL, f->text, f->text_len, NULL, &r, NULL), -EINVAL);

        assert_int_equal(quant_eval(f->f32, NULL, "Once upon a time", 16, &p, &r, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "fewer than one chunk of 64"));

        qd_error_clear(&err);
        p.n_ctx = 2;
        assert_int_equal(quant_eval(f->f32, NULL, f->text, f->text_len, &p, &r, &err), -EINVAL);
        p.n_ctx = 64;

        /* A base with another vocabulary. */
        const char *smol = getenv("QUANTD_TEST_SMOLLM");
        if (!smol)
                fail_msg("QUANTD_TEST_SMOLLM is not set: it names SmolLM2-135M-Instruct.Q4_1.gguf.");
        EngineModelParams mp = model_params();
        _cleanup_(engine_model_unrefp) EngineModel *other = NULL;
        assert_int_equal(engine_model_load(smol, &mp, &other, NULL), 0);
        qd_error_clear(&err);
        assert_int_equal(quant_eval(f->f32, other, f->text, f->text_len, &p, &r, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "same vocabulary"));

        /* Cancelled after the second chunk. */
        p.cancel = &cancel;
        p.progress = on_chunk;
        p.userdata = &p;
        qd_error_clear(&err);
        assert_int_equal(quant_eval(f->f32, NULL, f->text, f->text_len, &p, &r, &err), -ECANCELED);
        assert_true(atomic_load(&cancel));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_golden_tokens),       cmocka_unit_test(test_perplexity_method),
                cmocka_unit_test(test_kld_orders_mixtures), cmocka_unit_test(test_errors),
                cmocka_unit_test(test_no_tokenizer),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
