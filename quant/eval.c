/* SPDX-License-Identifier: MIT */
/*
 * quant_eval(): what a quantization lost, measured as llama-perplexity measures it: perplexity over chunks
 * of a text, and against a base model the KL divergence of the token distributions and the top-1 agreement.
 *
 * DESIGN
 * Each chunk runs through the model (and the base) with engine_decode_all(), which returns the logits of
 * every position; the log-softmax is taken in double precision so that the KL divergence of two nearly equal
 * distributions does not drown in rounding. Memory: one chunk of logits per model, (n_ctx, n_vocab) floats,
 * plus one double per scored token for the percentile.
 */

#include <inttypes.h>
#include <math.h>

#include "quant-internal.h"

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;
        return (x > y) - (x < y);
}

/* log(sum(exp(z))) of n logits, and the index of the largest. */
static double log_sum_exp(const float *z, uint32_t n, uint32_t *ret_argmax) {
        uint32_t best = 0;
        double sum = 0.0;

        for (uint32_t i = 1; i < n; i++)
                if (z[i] > z[best])
                        best = i;
        for (uint32_t i = 0; i < n; i++)
                sum += exp((double)z[i] - z[best]);
        *ret_argmax = best;
        return z[best] + log(sum);
}

static double bits_per_weight(const Gguf *g) {
        uint64_t bytes = 0, elements = 0;

        for (uint64_t i = 0; i < g->n_tensors; i++) {
                bytes += g->tensors[i].size;
                elements += g->tensors[i].n_elements;
        }
        return elements ? (double)bytes * 8.0 / (double)elements : 0.0;
}

int quant_eval(EngineModel *m, EngineModel *base, const char *text, size_t len, const QuantEvalParams *p,
               QuantEvalResult *ret, QdError *err) {
        _cleanup_(engine_vocab_freep) EngineVocab *vocab = NULL;
        _cleanup_(engine_seq_freep) EngineSeq *seq = NULL, *seq_base = NULL;
        _cleanup_free_ int32_t *tokens = NULL, *chunk = NULL;
        _cleanup_free_ float *logits = NULL, *logits_base = NULL;
        _cleanup_free_ double *klds = NULL;
        QuantEvalResult res = {};
        size_t n_tokens;
        int r;

        if (!m || !text || !p || !ret)
                return qd_error_set(err, EINVAL, "Missing arguments to evaluate a model.");
        const EngineModelInfo *info = engine_model_info(m);
        const uint32_t n_vocab = info->n_vocab, n_ctx = p->n_ctx ? p->n_ctx : 512;
        if (n_ctx < 4)
                return qd_error_set(err, EINVAL,
                                    "A context of %u tokens is too short to score; use at least 4.", n_ctx);
        if (base && engine_model_info(base)->n_vocab != n_vocab)
                return qd_error_set(
                        err, EINVAL,
                        "The base model has %u tokens in its vocabulary and the model %u: compare "
                        "models of the same vocabulary.",
                        engine_model_info(base)->n_vocab, n_vocab);

        r = engine_vocab_new(engine_model_gguf(m), &vocab, err);
        if (r < 0)
                return r;
        r = engine_tokenize(vocab, text, len, true, false, &tokens, &n_tokens);
        if (r < 0)
                return qd_error_set(err, r, "Cannot tokenize the evaluation text.");
        uint64_t n_chunks = n_tokens / n_ctx;
        if (p->max_chunks > 0)
                n_chunks = MIN(n_chunks, (uint64_t)p->max_chunks);
        if (n_chunks == 0)
                return qd_error_set(
                        err, EINVAL,
                        "The text has %zu tokens, fewer than one chunk of %u: give a longer text or "
                        "a smaller context.",
                        n_tokens, n_ctx);

        const uint32_t first = n_ctx / 2, per_chunk = n_ctx - 1 - first;
        const int32_t bos = engine_vocab_add_bos(vocab) ? engine_vocab_bos(vocab) : -1;
        chunk = malloc(n_ctx * sizeof(int32_t));
        logits = malloc((size_t)n_ctx * n_vocab * sizeof(float));
        if (base) {
                logits_base = malloc((size_t)n_ctx * n_vocab * sizeof(float));
                klds = malloc(n_chunks * per_chunk * sizeof(double));
        }
        if (!chunk || !logits || (base && (!logits_base || !klds)))
                return qd_error_set(err, ENOMEM, "Out of memory for the logits of a chunk of %u tokens.",
                                    n_ctx);
        r = engine_seq_new(m, n_ctx, &seq);
        if (r >= 0 && base)
                r = engine_seq_new(base, n_ctx, &seq_base);
        if (r < 0)
                return qd_error_set(err, r, "Cannot make room for a context of %u tokens.", n_ctx);

        double nll = 0.0, nll_base = 0.0, kld_sum = 0.0;
        uint64_t agree = 0;
        for (uint64_t c = 0; c < n_chunks; c++) {
                if (p->cancel && atomic_load(p->cancel))
                        return qd_error_set(err, ECANCELED, "Evaluation was cancelled.");
                memcpy(chunk, tokens + c * n_ctx, n_ctx * sizeof(int32_t));
                if (bos >= 0)
                        chunk[0] = bos;

                if ((r = engine_seq_truncate(seq, 0)) < 0 ||
                    (r = engine_decode_all(m, seq, chunk, n_ctx, logits, err)) < 0)
                        return qd_error_set(err, r, "Failed to evaluate chunk %" PRIu64 ".", c + 1);
                if (base && ((r = engine_seq_truncate(seq_base, 0)) < 0 ||
                             (r = engine_decode_all(base, seq_base, chunk, n_ctx, logits_base, err)) < 0))
                        return qd_error_set(
                                err, r, "Failed to evaluate chunk %" PRIu64 " with the base model.", c + 1);

                for (uint32_t j = first; j < n_ctx - 1; j++) {
                        const float *z = logits + (size_t)j * n_vocab;
                        const int32_t target = chunk[j + 1];
                        uint32_t top, top_base;
                        const double lse = log_sum_exp(z, n_vocab, &top);

                        nll -= z[target] - lse;
                        if (!base)
                                continue;

                        const float *zb = logits_base + (size_t)j * n_vocab;
                        const double lse_b = log_sum_exp(zb, n_vocab, &top_base);
                        double kld = 0.0;
                        for (uint32_t v = 0; v < n_vocab; v++) {
                                const double lb = zb[v] - lse_b, lq = z[v] - lse;
                                kld += exp(lb) * (lb - lq);
                        }
                        nll_base -= zb[target] - lse_b;
                        klds[res.n_scored] = kld;
                        kld_sum += kld;
                        agree += top == top_base;
                        res.n_scored++;
                }
                if (!base)
                        res.n_scored += per_chunk;
                if (p->progress)
                        p->progress(p->userdata, c, n_chunks);
        }

        res.n_chunks = (uint32_t)n_chunks;
        res.ppl = exp(nll / (double)res.n_scored);
        if (base) {
                res.ppl_base = exp(nll_base / (double)res.n_scored);
                res.kld_mean = kld_sum / (double)res.n_scored;
                res.top1 = (double)agree / (double)res.n_scored;
                qsort(klds, res.n_scored, sizeof(double), cmp_double);
                res.kld_p99 = klds[(size_t)ceil(0.99 * (double)res.n_scored) - 1];
        }
        res.file_size = info->file_size;
        res.bpw = bits_per_weight(engine_model_gguf(m));
        *ret = res;
        return 0;
}
