/* SPDX-License-Identifier: MIT */
/*
 * BackendOps over engine/: models loaded by mmap, their vocabulary, sequences and the batched decode step,
 * and the engine's sampler. The executor thread calls everything here except estimate and check_sampler.
 */

#include <inttypes.h>

#include "daemon.h"
#include "engine.h"

typedef struct EngModel {
        EngineModel *model;
        EngineVocab *vocab;
} EngModel;

typedef struct EngSampler {
        EngineSampler *sampler;
} EngSampler;

static EngineSamplerParams sampler_params(const SamplerParams *p) {
        return (EngineSamplerParams){
                .temperature = p->temperature,
                .top_k = p->top_k,
                .top_p = p->top_p,
                .min_p = p->min_p,
                .typical_p = p->typical_p,
                .repeat_penalty = p->repeat_penalty,
                .repeat_last_n = p->repeat_last_n,
                .presence_penalty = p->presence_penalty,
                .frequency_penalty = p->frequency_penalty,
                .seed = p->seed,
        };
}

/* The engine's placement table, from the GGUF header and tensor list without loading the weights. */
static int engine_estimate(const char *path, uint32_t n_ctx, uint32_t n_seq, BackendSplit **ret,
                           size_t *ret_n, QdError *err) {
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_free_ EngineEstimate *e = NULL;
        BackendSplit *l;
        size_t n = 0;
        int k;

        k = gguf_open(path, &g, err);
        if (k < 0)
                return k;
        k = engine_model_estimate_splits(g, NULL, n_ctx, n_seq, &e, &n, err);
        if (k < 0)
                return k;
        l = calloc(n, sizeof(BackendSplit));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                l[i] = (BackendSplit){
                        .n_gpu_layers = e[i].n_gpu_layers,
                        .ram = e[i].ram_bytes,
                        .vram = e[i].vram_bytes,
                        .vram_kv = e[i].vram_kv_bytes,
                };
        *ret = l;
        *ret_n = n;
        return 0;
}

static int engine_gpu_info_op(BackendGpu *ret) {
        EngineGpuInfo g;
        int k = engine_gpu_info(0, &g);
        if (k < 0)
                return k;
        *ret = (BackendGpu){.free = g.free_bytes, .total = g.total_bytes};
        snprintf(ret->name, sizeof(ret->name), "%s", g.name);
        return 0;
}

static void engine_unload(void *model) {
        EngModel *m = model;
        if (!m)
                return;
        engine_vocab_free(m->vocab);
        engine_model_unref(m->model);
        free(m);
}

static int engine_load(const char *path, const BackendLoadParams *lp, void **ret_model, QdError *err) {
        EngineModelParams p = engine_model_params_default();
        EngModel *m;
        int k;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        p.n_threads = lp->threads;
        /* The scheduler chose the split; the engine is not to second-guess it. */
        p.n_gpu_layers = (int32_t)MIN(lp->n_gpu_layers, (uint32_t)INT32_MAX);
        if (lp->n_gpu_layers == 0)
                p.backend = "cpu";
        k = engine_model_load(path, &p, &m->model, err);
        if (k >= 0)
                k = engine_vocab_new(engine_model_gguf(m->model), &m->vocab, err);
        if (k < 0) {
                engine_unload(m);
                return k;
        }
        *ret_model = m;
        return 0;
}

static void engine_info(void *model, BackendModelInfo *ret) {
        EngModel *m = model;
        const EngineModelInfo *i = engine_model_info(m->model);
        *ret = (BackendModelInfo){
                .n_vocab = i->n_vocab,
                .n_ctx_train = i->n_ctx_train,
                .n_embd = i->n_embd,
                .size = i->file_size,
                .arch = i->arch,
                .file_type = i->file_type,
                .n_layer = i->n_layer,
                .n_gpu_layers = i->n_gpu_layers,
                .vram = i->vram_bytes,
        };
}

static int engine_tokenize_op(void *model, const char *text, size_t len, bool add_special, int32_t **ret,
                              size_t *ret_n) {
        EngModel *m = model;
        /* Prompts come out of chat templates with control tokens written as text: parse them. */
        return engine_tokenize(m->vocab, text, len, add_special, true, ret, ret_n);
}

static int engine_token_piece_op(void *model, int32_t token, Buf *out) {
        EngModel *m = model;
        return engine_token_piece(m->vocab, token, false, out);
}

static bool engine_is_eog(void *model, int32_t token) {
        EngModel *m = model;
        return engine_vocab_is_eog(m->vocab, token);
}

static int engine_seq_new_op(void *model, uint32_t n_ctx, void **ret) {
        EngModel *m = model;
        EngineSeq *s = NULL;
        int k = engine_seq_new(m->model, n_ctx, &s);
        if (k < 0)
                return k;
        *ret = s;
        return 0;
}

static void engine_seq_free_op(void *seq) {
        engine_seq_free(seq);
}

static int engine_decode_op(void *model, void **seqs, const int32_t *const *tokens, const uint32_t *n_tokens,
                            size_t n, float **logits, const bool *cancel, QdError *err) {
        EngModel *m = model;
        return engine_decode(m->model, (EngineSeq **)seqs, tokens, n_tokens, n, logits, cancel, err);
}

static int engine_check_sampler(const SamplerParams *p, QdError *err) {
        EngineSamplerParams e = sampler_params(p);
        return engine_sampler_params_check(&e, err);
}

static int engine_sampler_new_op(void *model, const SamplerParams *p, void **ret) {
        EngModel *m = model;
        EngineSamplerParams e = sampler_params(p);
        EngineSampler *s = NULL;
        int k = engine_sampler_new(&e, engine_model_info(m->model)->n_vocab, &s);
        if (k < 0)
                return k;
        *ret = s;
        return 0;
}

static void engine_sampler_free_op(void *sampler) {
        engine_sampler_free(sampler);
}

static int32_t engine_sample_op(void *sampler, const float *logits) {
        int32_t t = engine_sampler_sample(sampler, logits);
        /* The penalties look at what was generated. */
        if (t >= 0)
                engine_sampler_accept(sampler, t);
        return t;
}

static int engine_embed_op(void *model, const int32_t *tokens, uint32_t n, float *ret, QdError *err) {
        EngModel *m = model;
        return engine_embed(m->model, tokens, n, ret, err);
}

const BackendOps backend_engine_ops = {
        .name = "engine",
        .estimate = engine_estimate,
        .gpu_info = engine_gpu_info_op,
        .load = engine_load,
        .unload = engine_unload,
        .info = engine_info,
        .tokenize = engine_tokenize_op,
        .token_piece = engine_token_piece_op,
        .is_eog = engine_is_eog,
        .seq_new = engine_seq_new_op,
        .seq_free = engine_seq_free_op,
        .decode = engine_decode_op,
        .check_sampler = engine_check_sampler,
        .sampler_new = engine_sampler_new_op,
        .sampler_free = engine_sampler_free_op,
        .sample = engine_sample_op,
        .embed = engine_embed_op,
};
