/* SPDX-License-Identifier: MIT */
/*
 * The engine's "cuda" backend (backend.h's ops table) over CudaLlama: a layer range of a llama or qwen2 model
 * with its weights uploaded once at init and resident on the device, one KV cache per sequence on the device.
 * The single-token spans of a batch (one decode step of several sequences) go through
 * cuda_llama_decode_batch() together, reading every weight once for all of them; other spans (prompts) go
 * one by one through cuda_llama_run(). Partial offload is the engine's doing: it
 * gives this backend the first layers and the CPU backend the rest, the hidden state passing through host
 * memory between them.
 *
 * Placement uses real numbers: init() compares what the range needs (weights as stored on the device, rows
 * padded to 16 bytes, plus scratch) with cudaMemGetInfo()'s free memory and fails with -ENOSPC and a
 * sentence when it does not fit; estimate() gives the scheduler the same sum plus the KV caches.
 */

#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "../backend.h"
#include "engine-cuda.h"

typedef struct CudaBackend {
        const EngineModel *m;
        BackendRange range;
        CudaLlama *llama;
} CudaBackend;

static const struct {
        CudaWeight w;
        size_t offset; /* of the Tensor in LayerWeights */
} layer_tensors[] = {
        {CUDA_W_ATTN_NORM, offsetof(LayerWeights, attn_norm)}, {CUDA_W_Q, offsetof(LayerWeights, wq)},
        {CUDA_W_K, offsetof(LayerWeights, wk)},                {CUDA_W_V, offsetof(LayerWeights, wv)},
        {CUDA_W_O, offsetof(LayerWeights, wo)},                {CUDA_W_FFN_NORM, offsetof(LayerWeights, ffn_norm)},
        {CUDA_W_GATE, offsetof(LayerWeights, w_gate)},         {CUDA_W_UP, offsetof(LayerWeights, w_up)},
        {CUDA_W_DOWN, offsetof(LayerWeights, w_down)},
};

static CudaLlamaConfig llama_config(const ModelConfig *c, uint32_t kv_type) {
        return (CudaLlamaConfig){
                .n_vocab = c->n_vocab,
                .n_embd = c->n_embd,
                .n_layer = c->n_layer,
                .n_head = c->n_head,
                .n_head_kv = c->n_head_kv,
                .head_dim = c->head_dim,
                .n_rot = c->n_rot,
                .n_ff = c->n_ff,
                .rope_base = c->rope_base,
                .norm_eps = c->norm_eps,
                .rope_freq_scale = c->rope_freq_scale,
                .rope_neox = c->rope_type == ROPE_NEOX,
                .kv_q8 = kv_type == GGML_TYPE_Q8_0,
        };
}

/* Bytes a tensor takes on the device. */
static uint64_t tensor_bytes(const Tensor *t) {
        size_t stride;

        if (!t->data || cuda_row_stride(t->type, (uint32_t)t->ne0, &stride) < 0)
                return t->row_size * t->ne1;
        return (uint64_t)stride * t->ne1;
}

/* Weights of the range as stored on the device. */
static uint64_t range_weight_bytes(const EngineModel *m, const BackendRange *range) {
        const ModelConfig *c = &m->cfg;
        uint64_t b = 0;

        if (range->l0 == 0)
                b += tensor_bytes(&m->w.token_embd);
        if (range->l1 == c->n_layer)
                b += tensor_bytes(&m->w.output_norm) + tensor_bytes(&m->w.output);
        for (uint32_t l = range->l0; l < range->l1; l++)
                for (size_t i = 0; i < ELEMENTSOF(layer_tensors); i++)
                        b += tensor_bytes((const Tensor *)((const char *)&m->w.layers[l] + layer_tensors[i].offset));
        return b;
}

/* Scratch of a model on the device, whatever its range. */
static uint64_t scratch_bytes(const EngineModel *m) {
        const ModelConfig *c = &m->cfg;
        uint64_t b = 0;

        /* Prompt scratch: activations of 512 rows and the largest group of weights dequantized to F16. */
        uint64_t nq = (uint64_t)c->n_head * c->head_dim, nk = (uint64_t)c->n_head_kv * c->head_dim;
        uint64_t wmax = MAX((nq + 2 * nk) * c->n_embd, 2ull * c->n_ff * c->n_embd);
        b += 512ull * (4 * c->n_embd + 2 * MAX(c->n_embd, c->n_ff) + 4 * (nq + 2 * nk) + 4 * nq + 8 * c->n_ff);
        b += 2 * wmax + 4ull * c->n_vocab + (64ull << 20); /* and cuBLAS's workspace, roughly */
        /* Batched decode scratch, made on first use, for CUDA_BATCH_MAX sequences: activations, 8-bit copies
         * and logits per sequence (the attention scratch grows with the caches, a few MB). */
        uint64_t nmax = MAX(MAX((uint64_t)c->n_embd, c->n_ff), nq);
        b += (uint64_t)CUDA_BATCH_MAX *
             (8 * c->n_embd + 2 * nmax + 4 * (nq + 2 * nk) + 6 * nq + 4 * c->n_ff + 4ull * c->n_vocab);
        return b;
}

/* Weights and scratch of the range, without KV caches. */
static uint64_t range_bytes(const EngineModel *m, const BackendRange *range) {
        return range_weight_bytes(m, range) + scratch_bytes(m);
}

static int check_model(const EngineModel *m, const BackendRange *range, QdError *err) {
        const ModelConfig *c = &m->cfg;

        if (c->arch != MODEL_ARCH_LLAMA && c->arch != MODEL_ARCH_QWEN2)
                return qd_error_set(err, EOPNOTSUPP, "The cuda backend runs llama and qwen2 models only.");
        if (m->w.rope_freqs.data && (m->w.rope_freqs.type != GGML_TYPE_F32 || m->w.rope_freqs.ne0 != c->n_rot / 2))
                return qd_error_set(err, EOPNOTSUPP, "The cuda backend takes rope_freqs as %" PRIu32 " f32 values.",
                                    c->n_rot / 2);
        if (c->n_rot % 2 != 0 || c->n_rot > 512)
                return qd_error_set(err, EOPNOTSUPP, "The cuda backend rotates an even number of up to 512 "
                                    "dimensions, not %" PRIu32 ".", c->n_rot);
        if (c->head_dim % 8 != 0 || c->head_dim > 128)
                return qd_error_set(err, EOPNOTSUPP, "The cuda backend takes heads of up to 128 dimensions in "
                                    "multiples of 8, not %" PRIu32 ".", c->head_dim);
        if (range->kv_type != GGML_TYPE_F16 && range->kv_type != GGML_TYPE_Q8_0)
                return qd_error_set(err, EOPNOTSUPP, "The cuda backend keeps its KV cache in f16 or q8_0, not %s.",
                                    ggml_type_name(range->kv_type));
        if (range->kv_type == GGML_TYPE_Q8_0 && c->head_dim % 32 != 0)
                return qd_error_set(err, EOPNOTSUPP, "The cuda backend keeps a q8_0 KV cache only for heads of a "
                                    "multiple of 32 dimensions, not %" PRIu32 "; use f16.", c->head_dim);
        if (range->l0 >= range->l1 || range->l1 > c->n_layer)
                return -EINVAL;
        return 0;
}

/* A layer's q, k and v biases (qwen2), when it has any. */
static int upload_bias(CudaBackend *b, uint32_t layer, const LayerWeights *lw, QdError *err) {
        const Tensor *t[3] = {&lw->bq, &lw->bk, &lw->bv};
        const float *p[3];
        int r;

        for (int i = 0; i < 3; i++) {
                p[i] = t[i]->data;
                if (p[i] && t[i]->type != GGML_TYPE_F32)
                        return qd_error_set(err, EOPNOTSUPP, "The cuda backend takes biases in f32, not tensor "
                                            "'%s' of type %s.", t[i]->name, ggml_type_name(t[i]->type));
        }
        if (!p[0] && !p[1] && !p[2])
                return 0;
        r = cuda_llama_set_bias(b->llama, layer, p[0], p[1], p[2]);
        if (r < 0)
                return qd_error_set(err, r, "Failed to load the biases of layer %" PRIu32 " onto the GPU: %s",
                                    layer, strerror(-r));
        return 0;
}

static int upload(CudaBackend *b, CudaWeight w, uint32_t layer, const Tensor *t, QdError *err) {
        int r;

        if (!cuda_type_supported(t->type))
                return qd_error_set(err, EOPNOTSUPP, "The cuda backend has no kernels for tensor '%s' of type %s.",
                                    t->name, ggml_type_name(t->type));
        r = cuda_llama_set_weight(b->llama, w, layer, t->type, (uint32_t)t->ne0, (uint32_t)t->ne1, t->data);
        if (r == -ENOSPC)
                return qd_error_set(err, r, "The GPU ran out of memory while loading tensor '%s'.", t->name);
        if (r < 0)
                return qd_error_set(err, r, "Failed to load tensor '%s' onto the GPU: %s", t->name, strerror(-r));
        return 0;
}

static void cuda_backend_free(void *state) {
        CudaBackend *b = state;

        if (!b)
                return;
        cuda_llama_free(b->llama);
        free(b);
}

static int cuda_backend_init(const EngineModel *m, const BackendRange *range, void **ret, QdError *err) {
        const ModelConfig *c = &m->cfg;
        CudaLlamaConfig cfg = llama_config(c, range->kv_type);
        uint64_t free_b, total_b, need;
        CudaBackend *b;
        int r;

        r = check_model(m, range, err);
        if (r < 0)
                return r;
        r = engine_cuda_mem_info(0, &free_b, &total_b);
        if (r < 0)
                return qd_error_set(err, r, "No usable CUDA device.");
        need = range_bytes(m, range);
        if (need > free_b)
                return qd_error_set(err, ENOSPC, "Layers %" PRIu32 "-%" PRIu32 " need %.2f GB on the GPU but only "
                                    "%.2f GB are free; offload fewer layers.", range->l0, range->l1 - 1,
                                    need / 1e9, free_b / 1e9);

        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->m = m;
        b->range = *range;
        r = cuda_llama_new(0, &cfg, range->l0, range->l1, &b->llama);
        if (r < 0) {
                free(b);
                return qd_error_set(err, r, "Failed to set up the model on the GPU: %s", strerror(-r));
        }
        cuda_llama_set_precise(b->llama, m->params.f32_activations);
        if (range->l0 == 0)
                r = upload(b, CUDA_W_TOKEN_EMBD, 0, &m->w.token_embd, err);
        if (r >= 0 && range->l1 == c->n_layer) {
                r = upload(b, CUDA_W_OUTPUT_NORM, 0, &m->w.output_norm, err);
                if (r >= 0)
                        r = upload(b, CUDA_W_OUTPUT, 0, &m->w.output, err);
        }
        for (uint32_t l = range->l0; r >= 0 && l < range->l1; l++) {
                for (size_t i = 0; r >= 0 && i < ELEMENTSOF(layer_tensors); i++)
                        r = upload(b, layer_tensors[i].w, l,
                                   (const Tensor *)((const char *)&m->w.layers[l] + layer_tensors[i].offset), err);
                if (r >= 0)
                        r = upload_bias(b, l, &m->w.layers[l], err);
        }
        if (r >= 0 && m->w.rope_freqs.data) {
                r = cuda_llama_set_rope_freqs(b->llama, m->w.rope_freqs.data);
                if (r < 0)
                        qd_error_set(err, r, "The model's rope_freqs are not all positive.");
        }
        if (r < 0) {
                cuda_backend_free(b);
                return r;
        }
        *ret = b;
        return 0;
}

static int cuda_backend_kv_new(void *state, uint32_t n_ctx, void **ret) {
        CudaBackend *b = state;

        return cuda_kv_new(b->llama, n_ctx, (CudaKv **)ret);
}

static void cuda_backend_kv_free(void *state, void *kv) {
        cuda_kv_free(kv);
}

/* Batched decode: the spans of batch that are one token each go through cuda_llama_decode_batch() together,
 * every weight read once for all of them, when this segment is the whole model and gives logits. Sets
 * done[s] for the spans it ran. */
static int forward_single_tokens(CudaBackend *b, const BackendBatch *batch, float *out, bool *done) {
        const ModelConfig *c = &b->m->cfg;
        _cleanup_free_ CudaKv **kvs = NULL;
        _cleanup_free_ uint32_t *pos = NULL;
        _cleanup_free_ int32_t *toks = NULL;
        _cleanup_free_ float **outs = NULL;
        uint32_t n = 0, j = 0;

        if (b->range.l0 != 0 || b->range.l1 != c->n_layer || batch->output != BACKEND_OUTPUT_LOGITS ||
            b->m->params.f32_activations)
                return 0;
        for (uint32_t s = 0; s < batch->n_spans; s++)
                n += batch->spans[s].n == 1;
        if (n < 2)
                return 0;
        kvs = calloc(n, sizeof(*kvs));
        pos = calloc(n, sizeof(*pos));
        toks = calloc(n, sizeof(*toks));
        outs = calloc(n, sizeof(*outs));
        if (!kvs || !pos || !toks || !outs)
                return -ENOMEM;
        n = 0;
        for (uint32_t s = 0; s < batch->n_spans; s++) {
                const BackendSpan *sp = &batch->spans[s];
                for (; j < batch->n_out && batch->out_rows[j] < sp->row0; j++)
                        ;
                if (sp->n != 1)
                        continue;
                kvs[n] = sp->kv;
                pos[n] = sp->pos0;
                toks[n] = batch->tokens[sp->row0];
                outs[n] = out && j < batch->n_out && batch->out_rows[j] == sp->row0 ? out + (size_t)j * c->n_vocab
                                                                                   : NULL;
                done[s] = true;
                n++;
        }
        return cuda_llama_decode_batch(b->llama, kvs, pos, toks, n, outs);
}

static int cuda_backend_forward(void *state, const BackendBatch *batch, float *x, float *out, const bool *cancel) {
        CudaBackend *b = state;
        const ModelConfig *c = &b->m->cfg;
        const bool head = b->range.l1 == c->n_layer, hidden = batch->output == BACKEND_OUTPUT_HIDDEN;
        const size_t width = hidden ? c->n_embd : c->n_vocab;
        _cleanup_free_ bool *done = NULL;
        uint32_t j = 0;
        int r;

        if (cancel && *cancel)
                return -ECANCELED;
        done = calloc(batch->n_spans ? batch->n_spans : 1, sizeof(bool));
        if (!done)
                return -ENOMEM;
        r = forward_single_tokens(b, batch, out, done);
        if (r < 0)
                return r;
        for (uint32_t s = 0; s < batch->n_spans; s++) {
                const BackendSpan *sp = &batch->spans[s];
                uint32_t rows[512], *rp = rows, n_out = 0, j0;

                if (cancel && *cancel)
                        return -ECANCELED;
                /* This span's output rows, relative to its first row. */
                for (; j < batch->n_out && batch->out_rows[j] < sp->row0; j++)
                        ;
                j0 = j;
                for (; j < batch->n_out && batch->out_rows[j] < sp->row0 + sp->n; j++)
                        n_out++;
                if (done[s])
                        continue;
                if (n_out > ELEMENTSOF(rows)) {
                        rp = malloc(n_out * sizeof(uint32_t));
                        if (!rp)
                                return -ENOMEM;
                }
                for (uint32_t k = 0; k < n_out; k++)
                        rp[k] = batch->out_rows[j0 + k] - sp->row0;
                r = cuda_llama_run(b->llama, sp->kv, sp->pos0, sp->n, batch->tokens + sp->row0,
                                   x ? x + (size_t)sp->row0 * c->n_embd : NULL, head ? n_out : 0, rp, hidden,
                                   head && out ? out + (size_t)j0 * width : NULL);
                if (rp != rows)
                        free(rp);
                if (r < 0)
                        return r;
        }
        return 0;
}

static uint64_t cuda_backend_estimate(const EngineModel *m, const BackendRange *range, uint32_t n_ctx,
                                      uint32_t n_seq) {
        CudaLlamaConfig cfg = llama_config(&m->cfg, range->kv_type);

        return range_bytes(m, range) + cuda_kv_bytes(&cfg, range->l1 - range->l0, n_ctx) * n_seq;
}

/* check_model() and every tensor's type, as init() would find them. */
static int cuda_backend_check(const EngineModel *m, const BackendRange *range, QdError *err) {
        const Tensor *fixed[] = {&m->w.token_embd, &m->w.output_norm, &m->w.output};
        int r;

        r = check_model(m, range, err);
        if (r < 0)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(fixed); i++)
                if (fixed[i]->data && !cuda_type_supported(fixed[i]->type))
                        return qd_error_set(err, EOPNOTSUPP,
                                            "The cuda backend has no kernels for tensor '%s' of type %s.",
                                            fixed[i]->name, ggml_type_name(fixed[i]->type));
        for (uint32_t l = range->l0; l < range->l1; l++)
                for (size_t i = 0; i < ELEMENTSOF(layer_tensors); i++) {
                        const char *lw = (const char *)&m->w.layers[l];
                        const Tensor *t = (const Tensor *)(lw + layer_tensors[i].offset);
                        if (!cuda_type_supported(t->type))
                                return qd_error_set(err, EOPNOTSUPP,
                                                    "The cuda backend has no kernels for tensor '%s' of "
                                                    "type %s.",
                                                    t->name, ggml_type_name(t->type));
                }
        return 0;
}

/* The weights as uploaded (counted by CudaLlama as it allocates them) and the scratch reserved for them. */
static uint64_t cuda_backend_device_bytes(void *state) {
        CudaBackend *b = state;

        return cuda_llama_weight_bytes(b->llama) + scratch_bytes(b->m);
}

/* Here rather than beside the other device queries: model.c refers to backend_cuda_ops only weakly, which
 * does not pull this file out of the static library; info.c's engine_cuda_devices() calls this, which does. */
int engine_cuda_device_count(void) {
        return cuda_device_count();
}

const BackendOps backend_cuda_ops = {
        .name = "cuda",
        .init = cuda_backend_init,
        .free = cuda_backend_free,
        .kv_new = cuda_backend_kv_new,
        .kv_free = cuda_backend_kv_free,
        .forward = cuda_backend_forward,
        .estimate = cuda_backend_estimate,
        .check = cuda_backend_check,
        .device_bytes = cuda_backend_device_bytes,
};
