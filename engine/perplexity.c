/* SPDX-License-Identifier: MIT */
/*
 * Perplexity over a token stream by llama-perplexity's method, so that our numbers can be set beside published
 * ones: the text is cut into consecutive chunks of n_ctx tokens (a remainder shorter than n_ctx is dropped),
 * each chunk runs through an empty sequence, its first token replaced by BOS when the vocabulary adds BOS, and
 * only the second half of each chunk is scored, so that every scored token has at least n_ctx / 2 tokens of
 * context: positions n_ctx / 2 … n_ctx - 2 predict tokens n_ctx / 2 + 1 … n_ctx - 1. PPL = exp(mean NLL), and
 * its uncertainty is PPL × the standard error of the mean NLL, as llama-perplexity prints it.
 */

#include <math.h>

#include "engine.h"

/* -log softmax(logits)[target], in double. */
static double token_nll(const float *logits, uint32_t n_vocab, int32_t target) {
        float max = logits[0];
        double sum = 0;

        for (uint32_t i = 1; i < n_vocab; i++)
                max = fmaxf(max, logits[i]);
        for (uint32_t i = 0; i < n_vocab; i++)
                sum += exp((double)logits[i] - max);
        return log(sum) - ((double)logits[target] - max);
}

int engine_perplexity(EngineModel *m, const int32_t *tokens, size_t n_tokens, uint32_t n_ctx,
                      uint32_t max_chunks, EnginePerplexityFn progress, void *userdata, EnginePerplexity *ret,
                      QdError *err) {
        const EngineModelInfo *info;
        const EngineVocab *v;
        _cleanup_(engine_seq_freep) EngineSeq *seq = NULL;
        _cleanup_free_ float *logits = NULL;
        _cleanup_free_ int32_t *chunk = NULL;
        double nll = 0, nll2 = 0;
        uint64_t count = 0;
        int r;

        if (!m || (!tokens && n_tokens) || !ret)
                return qd_error_set(err, EINVAL, "Bad arguments to the perplexity computation.");
        if (n_ctx < 4)
                return qd_error_set(err, EINVAL, "The perplexity context must be at least 4 tokens, not %u.", n_ctx);
        info = engine_model_info(m);
        v = engine_model_vocab(m);

        uint64_t n_chunks = n_tokens / n_ctx;
        if (max_chunks > 0 && n_chunks > max_chunks)
                n_chunks = max_chunks;
        if (n_chunks == 0)
                return qd_error_set(err, EINVAL, "The text has %zu tokens, fewer than one chunk of %u.", n_tokens,
                                    n_ctx);

        r = engine_seq_new(m, n_ctx, &seq);
        if (r < 0)
                return qd_error_set(err, r, "Failed to allocate a sequence of %u tokens: %s", n_ctx, strerror(-r));
        logits = malloc((size_t)n_ctx * info->n_vocab * sizeof(float));
        chunk = malloc((size_t)n_ctx * sizeof(int32_t));
        if (!logits || !chunk)
                return -ENOMEM;

        uint32_t first = n_ctx / 2;
        for (uint64_t c = 0; c < n_chunks; c++) {
                memcpy(chunk, tokens + c * n_ctx, (size_t)n_ctx * sizeof(int32_t));
                if (v && engine_vocab_add_bos(v))
                        chunk[0] = engine_vocab_bos(v);
                r = engine_seq_truncate(seq, 0);
                if (r < 0)
                        return r;
                r = engine_decode_all(m, seq, chunk, n_ctx, logits, err);
                if (r < 0)
                        return r;
                for (uint32_t j = first; j + 1 < n_ctx; j++) {
                        double x = token_nll(logits + (size_t)j * info->n_vocab, info->n_vocab, chunk[j + 1]);
                        nll += x;
                        nll2 += x * x;
                        count++;
                }
                if (progress)
                        progress(userdata, (uint32_t)c, (uint32_t)n_chunks, exp(nll / (double)count));
        }

        double mean = nll / (double)count, var = nll2 / (double)count - mean * mean;
        *ret = (EnginePerplexity){
                .ppl = exp(mean),
                .ppl_err = var > 0 && count > 1 ? exp(mean) * sqrt(var / (double)(count - 1)) : 0,
                .mean_nll = mean,
                .n_scored = count,
                .n_chunks = (uint32_t)n_chunks,
        };
        return 0;
}
