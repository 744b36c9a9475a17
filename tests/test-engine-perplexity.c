/* SPDX-License-Identifier: MIT */
/*
 * engine_perplexity() on stories260K over tests/data/perplexity-text.txt against llama.cpp's numbers for the
 * same file, text and method (tests/data/perplexity-reference.txt, made by make-perplexity-reference.py): the
 * same token count, chunks and scored tokens, and the perplexity within 1e-3 relative, also when the model's
 * batches are smaller than a chunk. Also the progress callback, the chunk limit and the error paths.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <math.h>

#include "engine.h"

typedef struct Ref {
        uint64_t n_tokens, n_ctx, chunks, scored;
        double ppl;
} Ref;

static Ref ref;
static char *text;
static size_t text_len;

static char *data_path(const char *name) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        return strdup_printf("%s/%s", dir ? dir : "tests/data", name);
}

static int setup(void **state) {
        _cleanup_free_ char *rpath = data_path("perplexity-reference.txt"), *tpath = data_path("perplexity-text.txt");
        _cleanup_fclose_ FILE *f = fopen(rpath, "re"), *t = fopen(tpath, "re");
        char line[256];

        if (!f || !t)
                return -1;
        while (fgets(line, sizeof(line), f)) {
                const char *rest;
                if ((rest = startswith(line, "n_tokens ")))
                        ref.n_tokens = strtoull(rest, NULL, 10);
                else if ((rest = startswith(line, "n_ctx ")))
                        ref.n_ctx = strtoull(rest, NULL, 10);
                else if ((rest = startswith(line, "chunks ")))
                        ref.chunks = strtoull(rest, NULL, 10);
                else if ((rest = startswith(line, "scored ")))
                        ref.scored = strtoull(rest, NULL, 10);
                else if ((rest = startswith(line, "ppl ")))
                        ref.ppl = strtod(rest, NULL);
        }
        text = malloc(65536);
        if (!text)
                return -1;
        text_len = fread(text, 1, 65535, t);
        return ref.n_tokens && ref.n_ctx && ref.chunks && ref.scored && ref.ppl > 0 && text_len > 0 ? 0 : -1;
}

static int teardown(void **state) {
        free(text);
        return 0;
}

static EngineModel *load(uint32_t n_batch) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
        EngineModelParams p = engine_model_params_default();
        EngineModel *m = NULL;
        QdError err = {};

        p.backend = "cpu";
        p.n_threads = 2;
        p.n_batch = n_batch;
        if (engine_model_load(path, &p, &m, &err) < 0)
                fail_msg("loading %s: %s", path, err.msg);
        return m;
}

typedef struct Progress {
        uint32_t calls, last_chunk, n_chunks;
        double last_ppl;
} Progress;

static void on_progress(void *userdata, uint32_t chunk, uint32_t n_chunks, double ppl) {
        Progress *p = userdata;

        assert_int_equal(chunk, p->calls);
        p->calls++;
        p->last_chunk = chunk;
        p->n_chunks = n_chunks;
        p->last_ppl = ppl;
}

static void check_against_llama_cpp(uint32_t n_batch) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(n_batch);
        _cleanup_free_ int32_t *tokens = NULL;
        size_t n;
        EnginePerplexity res;
        Progress prog = {};
        QdError err = {};

        assert_int_equal(engine_tokenize(engine_model_vocab(m), text, text_len, true, false, &tokens, &n), 0);
        assert_int_equal(n, ref.n_tokens);
        if (engine_perplexity(m, tokens, n, (uint32_t)ref.n_ctx, 0, on_progress, &prog, &res, &err) < 0)
                fail_msg("%s", err.msg);
        assert_int_equal(res.n_chunks, ref.chunks);
        assert_int_equal(res.n_scored, ref.scored);
        if (fabs(res.ppl - ref.ppl) > 1e-3 * ref.ppl)
                fail_msg("perplexity %f, llama.cpp %f (n_batch %u)", res.ppl, ref.ppl, n_batch);
        assert_true(res.ppl_err > 0 && res.ppl_err < res.ppl);
        assert_true(fabs(log(res.ppl) - res.mean_nll) < 1e-9);
        assert_int_equal(prog.calls, ref.chunks);
        assert_int_equal(prog.n_chunks, ref.chunks);
        assert_true(fabs(prog.last_ppl - res.ppl) < 1e-9 * res.ppl);
}

static void test_matches_llama_cpp(void **state) {
        check_against_llama_cpp((uint32_t)ref.n_ctx);
}

/* Chunks that take several batches give the same perplexity. */
static void test_small_batches(void **state) {
        check_against_llama_cpp(16);
}

static void test_chunk_limit(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(64);
        _cleanup_free_ int32_t *tokens = NULL;
        size_t n;
        EnginePerplexity all, two;

        assert_int_equal(engine_tokenize(engine_model_vocab(m), text, text_len, true, false, &tokens, &n), 0);
        assert_int_equal(engine_perplexity(m, tokens, n, 64, 2, NULL, NULL, &two, NULL), 0);
        assert_int_equal(two.n_chunks, 2);
        assert_int_equal(two.n_scored, 2 * (64 - 1 - 32));
        /* A context that is not a multiple of the text: the remainder is dropped. */
        assert_int_equal(engine_perplexity(m, tokens, n, 100, 0, NULL, NULL, &all, NULL), 0);
        assert_int_equal(all.n_chunks, n / 100);
        assert_int_equal(all.n_scored, (n / 100) * (100 - 1 - 50));
}

static void test_errors(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(64);
        int32_t tokens[64] = {};
        EnginePerplexity res;
        QdError err = {};

        assert_int_equal(engine_perplexity(m, tokens, 64, 3, 0, NULL, NULL, &res, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "at least 4"));
        qd_error_clear(&err);
        assert_int_equal(engine_perplexity(m, tokens, 63, 64, 0, NULL, NULL, &res, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "fewer than one chunk"));
        assert_int_equal(engine_perplexity(NULL, tokens, 64, 64, 0, NULL, NULL, &res, NULL), -EINVAL);
        assert_int_equal(engine_perplexity(m, NULL, 64, 64, 0, NULL, NULL, &res, NULL), -EINVAL);
        assert_int_equal(engine_perplexity(m, tokens, 64, 64, 0, NULL, NULL, NULL, NULL), -EINVAL);
        /* A token the model cannot take is the decoder's error. */
        tokens[10] = 100000;
        qd_error_clear(&err);
        assert_int_equal(engine_perplexity(m, tokens, 64, 64, 0, NULL, NULL, &res, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "100000"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_matches_llama_cpp),
                cmocka_unit_test(test_small_batches),
                cmocka_unit_test(test_chunk_limit),
                cmocka_unit_test(test_errors),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
