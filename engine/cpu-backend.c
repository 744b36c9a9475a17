/* SPDX-License-Identifier: MIT */
/*
 * The CPU backend: the llama-family forward pass over a batch of rows, with a thread pool and the kernel set
 * chosen at run time.
 *
 * DESIGN
 * cpu_forward() is the whole forward pass, one readable function in the manner of llama2.c's forward(): for
 * each layer RMSNorm, Q/K/V projections (+ biases), RoPE, the KV cache write, attention, the output projection
 * and the residual, then RMSNorm, the SwiGLU feed-forward and the residual. Each step is a job of the thread
 * pool cut into chunks that whichever thread is free claims: one row (norms, RoPE, SwiGLU), one (row, head)
 * (attention), or weight rows × a block of tokens (matrix multiplications, which take all rows of the batch at
 * once and share one conversion of the input between the matrices that read it: Q, K and V; gate and up). A
 * core slowed down by a neighbour thus does less, and a step of one row (generation) runs on the calling
 * thread alone, without any synchronisation.
 *
 * The KV cache of a sequence holds, for each layer of the range, n_ctx rows of K and of V (F16 or F32), each
 * n_head_kv * head_dim wide, K already rotated.
 */

#include <math.h>
#include <stdatomic.h>

#include "backend.h"
#include "kernels.h"
#include "threadpool.h"

#define TOKEN_BLOCK 64 /* tokens per gemm chunk: one block of activations stays in L2 */
#define ROW_CHUNK 16   /* weight rows per gemm chunk */
#define MAX_MATS 3     /* matrices sharing one input in one region (Q, K, V) */

typedef struct CpuKv {
        uint32_t n_ctx;
        uint8_t *k, *v; /* (n_layers, n_ctx, n_head_kv * head_dim) of kv_type */
} CpuKv;

typedef struct CpuBackend {
        const EngineModel *m;
        const ModelConfig *c;
        BackendRange range;
        const CpuKernels *k;
        bool f32_act;
        ThreadPool *pool;
        uint32_t n_threads;
        size_t kv_row; /* bytes of one position's K (or V) in one layer */

        /* scratch for up to n_batch rows */
        float *xb;            /* (n_batch, n_embd) the normed input of a block */
        float *q;             /* (n_batch, n_head * head_dim) */
        float *kc, *vc;       /* (n_batch, n_head_kv * head_dim) the new keys and values */
        float *att;           /* (n_batch, n_head * head_dim) attention output */
        float *hb, *hb2;      /* (n_batch, n_ff) */
        float *proj;          /* (n_batch, n_embd) output of the attention and FFN projections */
        uint8_t *act[_ACT_FORMAT_MAX]; /* (n_batch, act_stride) an input converted for the integer kernels */
        size_t act_stride;
        float *rope_cos, *rope_sin; /* (n_batch, n_rot / 2) */
        float *inv_freq;            /* (n_rot / 2) */
        float *scores;              /* (n_threads, group, scores_cap) attention scratch */
        uint32_t scores_cap;        /* positions */
        float *wrow; /* (n_threads, max row length) a dequantized weight row, f32_activations mode */
        uint32_t wrow_len;
} CpuBackend;

static void *alloc_floats(uint64_t n) {
        return aligned_alloc(64, ALIGN_TO(n * sizeof(float), 64));
}

/* ---- matrix multiplication over the pool ---- */

typedef struct MatJob {
        CpuBackend *b;
        size_t n_mats;
        const Tensor *w[MAX_MATS];
        float *y[MAX_MATS]; /* (n_tok, w->ne1) each */
        size_t y_stride[MAX_MATS];
        const float *x;     /* (n_tok, n_in) the input in float */
        size_t x_stride;
        uint32_t n_tok;
        uint32_t n_row_chunks[MAX_MATS];
        uint32_t n_chunks_per_block; /* row chunks of all matrices */
} MatJob;

static const uint8_t *mat_input(const MatJob *j, const Tensor *w, size_t *ret_stride) {
        int f = act_format_for(w->type);

        if (j->b->f32_act || f == ACT_F32) {
                *ret_stride = j->x_stride * sizeof(float);
                return (const uint8_t *)j->x;
        }
        *ret_stride = j->b->act_stride;
        return j->b->act[f];
}

static void mat_chunk(void *ctx, uint32_t ith, uint32_t chunk) {
        MatJob *j = ctx;
        CpuBackend *b = j->b;
        uint32_t block = chunk / j->n_chunks_per_block, rc = chunk % j->n_chunks_per_block;
        size_t mi = 0;

        while (rc >= j->n_row_chunks[mi])
                rc -= j->n_row_chunks[mi++];

        const Tensor *w = j->w[mi];
        uint32_t r0 = rc * ROW_CHUNK, r1 = (uint32_t)MIN((uint64_t)r0 + ROW_CHUNK, w->ne1);
        uint32_t t0 = block * TOKEN_BLOCK, t1 = MIN(t0 + TOKEN_BLOCK, j->n_tok);
        size_t a_stride;
        const uint8_t *a = mat_input(j, w, &a_stride);
        float *y = j->y[mi] + (size_t)t0 * j->y_stride[mi] + r0;

        if (b->f32_act && w->type != GGML_TYPE_F32) {
                float *row = b->wrow + (size_t)ith * b->wrow_len;
                for (uint32_t r = r0; r < r1; r++) {
                        (void)engine_dequantize_row(w->type, (const uint8_t *)w->data + r * w->row_size, row, w->ne0);
                        b->k->gemm[GGML_TYPE_F32](w->ne0, (const uint8_t *)row, 0, 1, a + t0 * a_stride, a_stride,
                                                  t1 - t0, y + (r - r0), j->y_stride[mi]);
                }
                return;
        }
        b->k->gemm[w->type](w->ne0, (const uint8_t *)w->data + r0 * w->row_size, w->row_size, r1 - r0,
                            a + t0 * a_stride, a_stride, t1 - t0, y, j->y_stride[mi]);
}

/* Converts rows [t0, t1) of x into every activation format that the matrices of j need. */
static void mat_prepare_rows(const MatJob *j, uint32_t t0, uint32_t t1) {
        CpuBackend *b = j->b;
        bool done[_ACT_FORMAT_MAX] = {};

        if (b->f32_act)
                return;
        for (size_t i = 0; i < j->n_mats; i++) {
                int f = act_format_for(j->w[i]->type);
                if (f == ACT_F32 || done[f])
                        continue;
                done[f] = true;
                for (uint32_t t = t0; t < t1; t++)
                        b->k->quantize[f](j->x + (size_t)t * j->x_stride, b->act[f] + t * b->act_stride,
                                          j->w[0]->ne0);
        }
}

static void mat_job_init(MatJob *j, CpuBackend *b, const float *x, size_t x_stride, uint32_t n_tok) {
        *j = (MatJob){ .b = b, .x = x, .x_stride = x_stride, .n_tok = n_tok };
}

static void mat_job_add(MatJob *j, const Tensor *w, float *y, size_t y_stride) {
        j->w[j->n_mats] = w;
        j->y[j->n_mats] = y;
        j->y_stride[j->n_mats] = y_stride;
        j->n_row_chunks[j->n_mats] = (uint32_t)((w->ne1 + ROW_CHUNK - 1) / ROW_CHUNK);
        j->n_chunks_per_block += j->n_row_chunks[j->n_mats];
        j->n_mats++;
}

/* Runs the matrices of j; their input rows must already be prepared (mat_prepare_rows()). */
static void mat_job_run(MatJob *j) {
        threadpool_run(j->b->pool, j->n_chunks_per_block * ((j->n_tok + TOKEN_BLOCK - 1) / TOKEN_BLOCK), mat_chunk,
                       j);
}

/* ---- row-wise steps ---- */

static void rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps) {
        float ss = 0;

        for (uint32_t i = 0; i < n; i++)
                ss += x[i] * x[i];
        float scale = 1.0f / sqrtf(ss / (float)n + eps);
        for (uint32_t i = 0; i < n; i++)
                out[i] = x[i] * scale * w[i];
}

typedef struct StepCtx {
        CpuBackend *b;
        const BackendBatch *batch;
        float *x;               /* (n_tok, n_embd) the residual stream */
        const float *add;       /* (n_tok, n_embd) added to x first, or NULL */
        const float *norm;      /* (n_embd) RMSNorm weight */
        const LayerWeights *lw; /* current layer */
        uint32_t il;            /* current layer index */
        const uint32_t *row_pos; /* (n_tok) position of each row */
        MatJob *mat;            /* the next matrix job, whose inputs this step prepares */
} StepCtx;

/* Row t: x += add (if any); xb = rmsnorm(x); then the conversion of xb for the next matrices. */
static void step_residual_norm(void *ctx, uint32_t ith, uint32_t t) {
        StepCtx *s = ctx;
        const ModelConfig *c = s->b->c;
        float *x = s->x + (size_t)t * c->n_embd;

        if (s->add)
                for (uint32_t i = 0; i < c->n_embd; i++)
                        x[i] += s->add[(size_t)t * c->n_embd + i];
        rmsnorm(s->b->xb + (size_t)t * c->n_embd, x, s->norm, c->n_embd, c->norm_eps);
        mat_prepare_rows(s->mat, t, t + 1);
}

/* Row t: only the conversion of the next matrices' input. */
static void step_prepare(void *ctx, uint32_t ith, uint32_t t) {
        StepCtx *s = ctx;

        mat_prepare_rows(s->mat, t, t + 1);
}

static void add_bias(float *x, const Tensor *bias, uint64_t n) {
        if (!bias->data)
                return;
        for (uint64_t i = 0; i < n; i++)
                x[i] += ((const float *)bias->data)[i];
}

static void rope_row(const CpuBackend *b, float *x, uint32_t n_heads, uint32_t t) {
        const ModelConfig *c = b->c;
        const float *cs = b->rope_cos + (size_t)t * (c->n_rot / 2), *sn = b->rope_sin + (size_t)t * (c->n_rot / 2);

        for (uint32_t h = 0; h < n_heads; h++) {
                float *v = x + (size_t)h * c->head_dim;
                for (uint32_t i = 0; i < c->n_rot / 2; i++) {
                        /* NORM rotates adjacent pairs; NEOX pairs element i with i + n_rot / 2. */
                        uint32_t i0 = c->rope_type == ROPE_NORM ? 2 * i : i;
                        uint32_t i1 = c->rope_type == ROPE_NORM ? 2 * i + 1 : i + c->n_rot / 2;
                        float a = v[i0], bb = v[i1];
                        v[i0] = a * cs[i] - bb * sn[i];
                        v[i1] = a * sn[i] + bb * cs[i];
                }
        }
}

static CpuKv *span_kv(const BackendBatch *batch, uint32_t t, uint32_t *ret_pos) {
        for (uint32_t i = 0; i < batch->n_spans; i++) {
                const BackendSpan *sp = &batch->spans[i];
                if (t >= sp->row0 && t < sp->row0 + sp->n) {
                        *ret_pos = sp->pos0 + (t - sp->row0);
                        return sp->kv;
                }
        }
        return NULL;
}

static void store_kv_row(uint8_t *dst, const float *src, uint32_t n, uint32_t kv_type) {
        if (kv_type == GGML_TYPE_F16)
                for (uint32_t i = 0; i < n; i++)
                        ((GgmlHalf *)dst)[i] = engine_f32_to_fp16(src[i]);
        else
                memcpy(dst, src, n * sizeof(float));
}

/* Row t: biases, RoPE of Q and K, and the new K and V rows into its sequence's cache. */
static void step_rope_store(void *ctx, uint32_t ith, uint32_t t) {
        StepCtx *s = ctx;
        CpuBackend *b = s->b;
        const ModelConfig *c = b->c;
        uint32_t nq = c->n_head * c->head_dim, nkv = c->n_head_kv * c->head_dim;
        float *q = b->q + (size_t)t * nq, *k = b->kc + (size_t)t * nkv, *v = b->vc + (size_t)t * nkv;
        add_bias(q, &s->lw->bq, nq);
        add_bias(k, &s->lw->bk, nkv);
        add_bias(v, &s->lw->bv, nkv);
        rope_row(b, q, c->n_head, t);
        rope_row(b, k, c->n_head_kv, t);

        uint32_t pos;
        CpuKv *kv = span_kv(s->batch, t, &pos);
        size_t off = ((size_t)(s->il - b->range.l0) * kv->n_ctx + pos) * b->kv_row;
        store_kv_row(kv->k + off, k, nkv, b->range.kv_type);
        store_kv_row(kv->v + off, v, nkv, b->range.kv_type);
}

/* Attention of one (row, KV head) with the query heads that share it (adjacent in q): chunk i is KV head
 * i % n_head_kv of row n_tokens - 1 - i / n_head_kv, the last rows first, since in a prompt they attend to the
 * most positions and the short ones then fill in at the end. The kernel converts each cached key and value once
 * for the whole group. */
static void step_attention(void *ctx, uint32_t ith, uint32_t i) {
        StepCtx *s = ctx;
        CpuBackend *b = s->b;
        const ModelConfig *c = b->c;
        uint32_t nq = c->n_head * c->head_dim, group = c->n_head / c->n_head_kv;
        float scale = 1.0f / sqrtf((float)c->head_dim);
        float *scores = b->scores + (size_t)ith * group * b->scores_cap;
        uint32_t t = s->batch->n_tokens - 1 - i / c->n_head_kv, g = i % c->n_head_kv, pos;
        CpuKv *kv = span_kv(s->batch, t, &pos);
        size_t layer_off = (size_t)(s->il - b->range.l0) * kv->n_ctx * b->kv_row;
        size_t head_off = (size_t)g * c->head_dim * ggml_type_info(b->range.kv_type)->type_size;
        size_t q_off = (size_t)t * nq + (size_t)g * group * c->head_dim;
        b->k->attend(b->q + q_off, group, kv->k + layer_off + head_off, kv->v + layer_off + head_off, b->kv_row,
                     b->range.kv_type, pos + 1, c->head_dim, scale, scores, b->att + q_off);
}

/* Row t: hb = silu(gate) * up, then the conversion of hb for the down projection. */
static void step_swiglu(void *ctx, uint32_t ith, uint32_t t) {
        StepCtx *s = ctx;
        CpuBackend *b = s->b;
        uint32_t n_ff = b->c->n_ff;

        b->k->swiglu(b->hb + (size_t)t * n_ff, b->hb2 + (size_t)t * n_ff, n_ff);
        mat_prepare_rows(s->mat, t, t + 1);
}

/* ---- the forward pass ---- */

static int cpu_forward(void *state, const BackendBatch *batch, float *x, float *out, const bool *cancel) {
        CpuBackend *b = state;
        const ModelConfig *c = b->c;
        const ModelWeights *w = &b->m->w;
        uint32_t n = batch->n_tokens, nq = c->n_head * c->head_dim, nkv = c->n_head_kv * c->head_dim;
        uint32_t n_pos_max = 0;
        MatJob mat;
        StepCtx s = { .b = b, .batch = batch, .x = x, .mat = &mat };

        if (n == 0 || n > b->range.n_batch)
                return -EINVAL;

        /* Attention scratch for the longest context in the batch, and the RoPE angles of every row. */
        for (uint32_t i = 0; i < batch->n_spans; i++)
                n_pos_max = MAX(n_pos_max, batch->spans[i].pos0 + batch->spans[i].n);
        if (n_pos_max > b->scores_cap) {
                uint32_t cap = ALIGN_TO(n_pos_max, 256);
                float *p = alloc_floats((uint64_t)cap * (c->n_head / c->n_head_kv) * b->n_threads);
                if (!p)
                        return -ENOMEM;
                free(b->scores);
                b->scores = p;
                b->scores_cap = cap;
        }
        for (uint32_t t = 0; t < n; t++) {
                uint32_t pos;
                if (!span_kv(batch, t, &pos))
                        return -EINVAL;
                for (uint32_t i = 0; i < c->n_rot / 2; i++) {
                        double theta = (double)pos * c->rope_freq_scale * b->inv_freq[i];
                        b->rope_cos[(size_t)t * (c->n_rot / 2) + i] = (float)cos(theta);
                        b->rope_sin[(size_t)t * (c->n_rot / 2) + i] = (float)sin(theta);
                }
        }

        /* Token embedding. */
        if (b->range.l0 == 0)
                for (uint32_t t = 0; t < n; t++) {
                        const uint8_t *row = (const uint8_t *)w->token_embd.data +
                                             (size_t)batch->tokens[t] * w->token_embd.row_size;
                        (void)engine_dequantize_row(w->token_embd.type, row, x + (size_t)t * c->n_embd, c->n_embd);
                }

        for (uint32_t il = b->range.l0; il < b->range.l1; il++) {
                const LayerWeights *l = &w->layers[il];

                if (cancel && __atomic_load_n(cancel, __ATOMIC_RELAXED))
                        return -ECANCELED;
                s.lw = l;
                s.il = il;

                /* Attention: x (+ the previous layer's FFN output) → norm → Q, K, V. */
                mat_job_init(&mat, b, b->xb, c->n_embd, n);
                mat_job_add(&mat, &l->wq, b->q, nq);
                mat_job_add(&mat, &l->wk, b->kc, nkv);
                mat_job_add(&mat, &l->wv, b->vc, nkv);
                s.add = il == b->range.l0 ? NULL : b->proj;
                s.norm = l->attn_norm.data;
                threadpool_run(b->pool, n, step_residual_norm, &s);
                mat_job_run(&mat);

                threadpool_run(b->pool, n, step_rope_store, &s);
                threadpool_run(b->pool, n * c->n_head_kv, step_attention, &s);

                mat_job_init(&mat, b, b->att, nq, n);
                mat_job_add(&mat, &l->wo, b->proj, c->n_embd);
                threadpool_run(b->pool, n, step_prepare, &s);
                mat_job_run(&mat);

                /* Feed-forward: x += attention output → norm → SwiGLU → down. */
                mat_job_init(&mat, b, b->xb, c->n_embd, n);
                mat_job_add(&mat, &l->w_gate, b->hb, c->n_ff);
                mat_job_add(&mat, &l->w_up, b->hb2, c->n_ff);
                s.add = b->proj;
                s.norm = l->ffn_norm.data;
                threadpool_run(b->pool, n, step_residual_norm, &s);
                mat_job_run(&mat);

                mat_job_init(&mat, b, b->hb, c->n_ff, n);
                mat_job_add(&mat, &l->w_down, b->proj, c->n_embd);
                threadpool_run(b->pool, n, step_swiglu, &s);
                mat_job_run(&mat);
        }
        /* The last FFN output joins the residual stream. */
        for (size_t i = 0; i < (size_t)n * c->n_embd; i++)
                x[i] += b->proj[i];

        if (b->range.l1 < c->n_layer)
                return 0;

        /* Output head over the rows asked for: norm into xb (compacted), then logits or the hidden states. */
        for (uint32_t j = 0; j < batch->n_out; j++)
                rmsnorm(b->xb + (size_t)j * c->n_embd, x + (size_t)batch->out_rows[j] * c->n_embd,
                        w->output_norm.data, c->n_embd, c->norm_eps);
        if (batch->output == BACKEND_OUTPUT_HIDDEN) {
                memcpy(out, b->xb, (size_t)batch->n_out * c->n_embd * sizeof(float));
                return 0;
        }
        mat_job_init(&mat, b, b->xb, c->n_embd, batch->n_out);
        mat_job_add(&mat, &w->output, out, c->n_vocab);
        mat_prepare_rows(&mat, 0, batch->n_out);
        mat_job_run(&mat);
        return 0;
}

/* ---- lifecycle ---- */

static void cpu_free(void *state) {
        CpuBackend *b = state;

        if (!b)
                return;
        threadpool_free(b->pool);
        free(b->xb);
        free(b->q);
        free(b->kc);
        free(b->vc);
        free(b->att);
        free(b->hb);
        free(b->hb2);
        free(b->proj);
        for (size_t i = 0; i < ELEMENTSOF(b->act); i++)
                free(b->act[i]);
        free(b->rope_cos);
        free(b->rope_sin);
        free(b->inv_freq);
        free(b->scores);
        free(b->wrow);
        free(b);
}

static int cpu_init(const EngineModel *m, const BackendRange *range, void **ret, QdError *err) {
        const ModelConfig *c = &m->cfg;
        const GgmlTypeInfo *kvt = ggml_type_info(range->kv_type);
        CpuBackend *b;
        int r;

        if (range->kv_type != GGML_TYPE_F16 && range->kv_type != GGML_TYPE_F32)
                return qd_error_set(err, EOPNOTSUPP, "The CPU backend keeps its KV cache in f16 or f32, not %s.",
                                    ggml_type_name(range->kv_type));
        if (range->l0 > range->l1 || range->l1 > c->n_layer || range->n_batch == 0)
                return -EINVAL;

        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->m = m;
        b->c = c;
        b->range = *range;
        b->f32_act = m->params.f32_activations;
        b->k = cpu_kernels(m->params.cpu_isa < 0 ? cpu_isa_best() : (EngineCpuIsa)m->params.cpu_isa);
        if (!b->k) {
                cpu_free(b);
                return qd_error_set(err, EOPNOTSUPP, "This CPU cannot run the %s kernels.",
                                    engine_cpu_isa_name((EngineCpuIsa)m->params.cpu_isa));
        }
        r = threadpool_new(range->n_threads, &b->pool);
        if (r < 0) {
                cpu_free(b);
                return qd_error_set(err, r, "Failed to start the CPU worker threads.");
        }
        b->n_threads = threadpool_size(b->pool);
        b->kv_row = (size_t)c->n_head_kv * c->head_dim * kvt->type_size;

        uint64_t nb = range->n_batch, nq = (uint64_t)c->n_head * c->head_dim, nkv = (uint64_t)c->n_head_kv * c->head_dim;
        uint64_t widest = MAX(MAX((uint64_t)c->n_embd, (uint64_t)c->n_ff), nq);
        b->act_stride = MAX(act_row_size(ACT_Q8, widest), act_row_size(ACT_Q8_K, widest / QK_K * QK_K));
        b->wrow_len = (uint32_t)ALIGN_TO(widest, 16);
        b->xb = alloc_floats(nb * c->n_embd);
        b->q = alloc_floats(nb * nq);
        b->kc = alloc_floats(nb * nkv);
        b->vc = alloc_floats(nb * nkv);
        b->att = alloc_floats(nb * nq);
        b->hb = alloc_floats(nb * c->n_ff);
        b->hb2 = alloc_floats(nb * c->n_ff);
        b->proj = alloc_floats(nb * c->n_embd);
        b->act[ACT_Q8] = aligned_alloc(64, nb * b->act_stride);
        b->act[ACT_Q8_K] = aligned_alloc(64, nb * b->act_stride);
        b->rope_cos = alloc_floats(nb * (c->n_rot / 2));
        b->rope_sin = alloc_floats(nb * (c->n_rot / 2));
        b->inv_freq = alloc_floats(c->n_rot / 2);
        b->wrow = b->f32_act ? alloc_floats((uint64_t)b->wrow_len * b->n_threads) : NULL;
        if (!b->xb || !b->q || !b->kc || !b->vc || !b->att || !b->hb || !b->hb2 || !b->proj || !b->act[ACT_Q8] ||
            !b->act[ACT_Q8_K] || !b->rope_cos || !b->rope_sin || !b->inv_freq || (b->f32_act && !b->wrow)) {
                cpu_free(b);
                return -ENOMEM;
        }
        /* proj must read as zeros if the range is empty and the final residual add runs. */
        memset(b->proj, 0, nb * c->n_embd * sizeof(float));
        for (uint32_t i = 0; i < c->n_rot / 2; i++) {
                double f = pow(c->rope_base, -2.0 * i / c->n_rot);
                if (m->w.rope_freqs.data)
                        f /= ((const float *)m->w.rope_freqs.data)[i];
                b->inv_freq[i] = (float)f;
        }
        *ret = b;
        return 0;
}

static int cpu_kv_new(void *state, uint32_t n_ctx, void **ret) {
        CpuBackend *b = state;
        uint64_t size;
        CpuKv *kv;

        if (n_ctx == 0)
                return -EINVAL;
        if (MUL_OVERFLOW((uint64_t)(b->range.l1 - b->range.l0) * n_ctx, (uint64_t)b->kv_row, &size))
                return -ENOMEM;
        kv = calloc(1, sizeof(*kv));
        if (!kv)
                return -ENOMEM;
        kv->n_ctx = n_ctx;
        size = MAX(size, 64);
        kv->k = aligned_alloc(64, ALIGN_TO(size, 64));
        kv->v = aligned_alloc(64, ALIGN_TO(size, 64));
        if (!kv->k || !kv->v) {
                free(kv->k);
                free(kv->v);
                free(kv);
                return -ENOMEM;
        }
        *ret = kv;
        return 0;
}

static void cpu_kv_free(void *state, void *p) {
        CpuKv *kv = p;

        if (!kv)
                return;
        free(kv->k);
        free(kv->v);
        free(kv);
}

static uint64_t cpu_estimate(const EngineModel *m, const BackendRange *range, uint32_t n_ctx, uint32_t n_seq) {
        const ModelConfig *c = &m->cfg;
        const GgmlTypeInfo *kvt = ggml_type_info(range->kv_type);
        uint64_t kv = 2ull * (range->l1 - range->l0) * n_ctx * c->n_head_kv * c->head_dim * (kvt ? kvt->type_size : 2);
        uint64_t scratch = (uint64_t)range->n_batch * (4ull * c->n_embd + 4ull * c->n_head * c->head_dim +
                                                       2ull * c->n_ff) * sizeof(float);

        return kv * n_seq + scratch;
}

const BackendOps backend_cpu_ops = {
        .name = "cpu",
        .init = cpu_init,
        .free = cpu_free,
        .kv_new = cpu_kv_new,
        .kv_free = cpu_kv_free,
        .forward = cpu_forward,
        .estimate = cpu_estimate,
};
