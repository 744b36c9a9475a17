// SPDX-License-Identifier: MIT
/*
 * A llama-architecture model resident on one CUDA device: weights uploaded once (or made on the device for
 * benchmarks), a KV cache per sequence, one token through the decode kernels captured in a CUDA graph, and
 * prompt batches through dequantized F16 tiles and cuBLAS.
 *
 * DESIGN
 * The decode step reads the token and its position from device memory, so one captured graph serves every
 * step of a sequence: the step ends with an argmax that writes the next token and advances the position,
 * which lets greedy generation run with no host round trip at all. A host caller that samples on its own
 * overwrites the token before the next replay.
 * Per layer the decode step is: RMSNorm + 8-bit quantization, Q/K/V in one launch per weight type, RoPE +
 * KV store, split attention (its output quantized by the merging block), the output projection adding into
 * the residual, RMSNorm + quantization, gate and up in one launch with SwiGLU fused, quantization, and the
 * down projection adding into the residual.
 *
 * Batched decode (several sequences, one token each) runs the same kernels with one activation column per
 * sequence. Its graph must not bake in any sequence: the sequences' caches, sizes and positions sit in a
 * table in device memory (CudaSeqSlot) that the host fills before each replay and the attention and argmax
 * kernels read, so one graph per group size serves every set of sequences. Its attention scratch is sized for
 * the largest cache seen (b_ctx); a larger cache reallocates it and drops the graphs.
 */

#include <stdlib.h>
#include <string.h>

#include "cuda-common.cuh"

#define PF_MAX_TOK 512 /* prompt tokens per batch through the GEMM path */
#define B_MAX CUDA_BATCH_MAX /* sequences per batched decode step (one graph per group size) */

struct CudaLlama {
        int device;
        CudaLlamaConfig c;
        uint32_t l0, l1; /* layers on this device; the embedding when l0 == 0, the head when l1 == n_layer */
        cudaStream_t stream;
        CudaBlas *blas;
        CudaMatrix *w;  /* (3 + n_layer * 9): token_embd, output_norm, output, then per layer */
        uint64_t weight_bytes, step_bytes;
        unsigned skip; /* CUDA_SKIP_* kernels left out of the decode graph, for timing only */
        bool precise;  /* every token through the F16 path, the head with float activations */
        bool plain_q8; /* decode graphs keep 8-bit inputs in plain rows (cuda_llama_set_plain_q8()) */

        /* Decode scratch. */
        float *x;        /* (n_embd) residual stream */
        float *xn;       /* (n_embd) normalized, for float weights */
        CudaQ8 xq;       /* (max(n_embd, n_ff, nq)) 8-bit input of the next product (layouts: q8_for()) */
        int8_t *xq2;     /* (max(n_embd, n_ff, nq)) the same in a second layout, for Q/K/V of two families */
        float *qkv;      /* (nq + 2 nk) */
        float *att;      /* (nq) */
        CudaQ8 attq;     /* (nq) */
        float *h;        /* (n_ff) */
        float *logits;   /* (n_vocab) */
        int32_t *tok;    /* (1) the token of the next decode step */
        float *inv_freq; /* (n_rot / 2) RoPE frequencies, scaling folded in */
        float *bias;     /* (n_layer, nq + 2 nk) q, k, v biases, NULL without any */

        /* Prompt scratch for up to PF_MAX_TOK tokens, made on first use. */
        int32_t *pf_tok; /* (PF_MAX_TOK) */
        float *pf_x;     /* (PF_MAX_TOK, n_embd) */
        uint16_t *pf_xn; /* (PF_MAX_TOK, max(n_embd, n_ff)) half */
        float *pf_qkv;   /* (PF_MAX_TOK, nq + 2 nk) */
        float *pf_att;   /* (PF_MAX_TOK, nq) */
        float *pf_gu;    /* (PF_MAX_TOK, 2 n_ff) */
        uint16_t *pf_w;  /* dequantized weights of the largest group, half */

        /* Batched decode scratch for up to B_MAX sequences, made on first use. */
        float *bx;            /* (B_MAX, n_embd) */
        float *bxn;           /* (B_MAX, n_embd) */
        CudaQ8 bxq;           /* (B_MAX, max(n_embd, n_ff, nq)) */
        float *bqkv;          /* (B_MAX, nq + 2 nk) */
        float *batt;          /* (B_MAX, nq) */
        CudaQ8 battq;         /* (B_MAX, nq) */
        float *bh;            /* (B_MAX, n_ff) */
        float *blogits;       /* (B_MAX, n_vocab) */
        int32_t *btok;        /* (B_MAX) */
        CudaSeqSlot *bseqs;   /* (B_MAX) the step's sequences */
        void *b_scratch;      /* (B_MAX) attention scratch for caches of up to b_ctx positions */
        uint32_t b_ctx;
        cudaGraphExec_t bgraph[B_MAX + 1]; /* by group size, captured for b_ctx */
};

struct CudaKv {
        CudaLlama *m;
        uint32_t n_ctx;
        uint32_t pos;
        uint8_t *k, *v;      /* (l1 - l0, n_ctx, row) each: the model's layers only; a row is n_head_kv *
                              * head_dim halves, or Q8_0 blocks of them (kv_row()) */
        int32_t *d_pos;      /* (1) */
        int32_t *hist;       /* (n_ctx + 1) tokens chosen by the on-device argmax, by position */
        void *attn_scratch;
        cudaGraphExec_t graph;
};

static CudaMatrix *weight(CudaLlama *m, CudaWeight w, uint32_t layer) {
        if (w < CUDA_W_ATTN_NORM)
                return &m->w[w];
        return &m->w[3 + layer * 9 + (w - CUDA_W_ATTN_NORM)];
}

static CudaAttnShape attn_shape(const CudaLlama *m, uint32_t n_ctx) {
        CudaAttnShape a = {};

        a.n_head = m->c.n_head;
        a.n_head_kv = m->c.n_head_kv;
        a.head_dim = m->c.head_dim;
        a.n_rot = m->c.n_rot;
        a.rope_base = m->c.rope_base;
        a.n_ctx = n_ctx;
        a.inv_freq = m->inv_freq;
        a.neox = m->c.rope_neox;
        a.kv_q8 = m->c.kv_q8;
        return a;
}

/* Bytes of one position's row of a KV cache. */
static size_t kv_row(const CudaLlamaConfig *c) {
        const size_t nk = (size_t)c->n_head_kv * c->head_dim;

        return c->kv_q8 ? nk / 32 * Q8_0_BYTES : nk * 2;
}

/* The shape with layer l's biases. */
static CudaAttnShape attn_shape_layer(const CudaLlama *m, uint32_t n_ctx, uint32_t l) {
        CudaAttnShape a = attn_shape(m, n_ctx);
        const size_t nqkv = (size_t)(m->c.n_head + 2 * m->c.n_head_kv) * m->c.head_dim;

        a.bias = m->bias ? m->bias + l * nqkv : NULL;
        return a;
}

/* Uploads the RoPE frequencies: base^(-2j / n_rot), divided by freqs[j] when given, times the linear
 * scaling factor, computed in double as the cpu backend does. */
static int upload_inv_freq(CudaLlama *m, const float *freqs) {
        const uint32_t half = m->c.n_rot / 2;
        const double scale = m->c.rope_freq_scale > 0.0f ? m->c.rope_freq_scale : 1.0;
        float f[256];

        if (half > 256)
                return -EINVAL;
        for (uint32_t j = 0; j < half; j++) {
                double v = pow(m->c.rope_base, -2.0 * j / m->c.n_rot);
                if (freqs)
                        v /= freqs[j];
                f[j] = (float)(v * scale);
        }
        CU_TRY(cudaMemcpy(m->inv_freq, f, half * sizeof(float), cudaMemcpyHostToDevice));
        return 0;
}

extern "C" int cuda_llama_set_rope_freqs(CudaLlama *m, const float *freqs) {
        if (!freqs)
                return -EINVAL;
        for (uint32_t j = 0; j < m->c.n_rot / 2; j++)
                if (!(freqs[j] > 0.0f))
                        return -EINVAL;
        CU_TRY(cudaSetDevice(m->device));
        return upload_inv_freq(m, freqs);
}

extern "C" int cuda_llama_set_bias(CudaLlama *m, uint32_t layer, const float *bq, const float *bk,
                                   const float *bv) {
        const size_t nq = (size_t)m->c.n_head * m->c.head_dim, nk = (size_t)m->c.n_head_kv * m->c.head_dim;
        const size_t nqkv = nq + 2 * nk;

        if (layer < m->l0 || layer >= m->l1)
                return -EINVAL;
        CU_TRY(cudaSetDevice(m->device));
        if (!m->bias) {
                void *p;
                int r = cuda_malloc((size_t)m->c.n_layer * nqkv * sizeof(float), &p);
                if (r < 0)
                        return r;
                m->bias = (float *)p;
                CU_TRY(cudaMemset(m->bias, 0, (size_t)m->c.n_layer * nqkv * sizeof(float)));
                /* Graphs captured before read no biases: capture again. */
                for (size_t i = 0; i <= B_MAX; i++)
                        if (m->bgraph[i]) {
                                (void)cudaGraphExecDestroy(m->bgraph[i]);
                                m->bgraph[i] = NULL;
                        }
        }
        float *dst = m->bias + layer * nqkv;
        if (bq)
                CU_TRY(cudaMemcpy(dst, bq, nq * sizeof(float), cudaMemcpyHostToDevice));
        if (bk)
                CU_TRY(cudaMemcpy(dst + nq, bk, nk * sizeof(float), cudaMemcpyHostToDevice));
        if (bv)
                CU_TRY(cudaMemcpy(dst + nq + nk, bv, nk * sizeof(float), cudaMemcpyHostToDevice));
        return 0;
}

static int alloc(void **p, size_t size) {
        return cuda_malloc(size, p);
}

extern "C" int cuda_llama_new(int device, const CudaLlamaConfig *c, uint32_t l0, uint32_t l1, CudaLlama **ret) {
        const uint32_t nq = c->n_head * c->head_dim, nk = c->n_head_kv * c->head_dim;
        CudaLlama *m;
        int r;

        if (c->n_layer == 0 || c->n_head == 0 || c->n_head_kv == 0 || c->n_head % c->n_head_kv != 0 ||
            c->head_dim == 0 || c->n_rot > c->head_dim || c->n_rot % 2 != 0 || c->n_rot > 512 || c->n_vocab == 0 ||
            c->n_embd == 0 || c->n_ff == 0 || c->rope_freq_scale < 0.0f || (c->kv_q8 && c->head_dim % 32 != 0) ||
            l0 >= l1 || l1 > c->n_layer)
                return -EINVAL;
        CU_TRY(cudaSetDevice(device));
        m = (CudaLlama *)calloc(1, sizeof(CudaLlama));
        if (m)
                m->plain_q8 = !cuda_knob("QUANTD_CUDA_Q8_LAYOUT", 0, 1, 1);
        if (!m)
                return -ENOMEM;
        m->device = device;
        m->c = *c;
        m->l0 = l0;
        m->l1 = l1;
        m->w = (CudaMatrix *)calloc(3 + (size_t)c->n_layer * 9, sizeof(CudaMatrix));
        if (!m->w) {
                free(m);
                return -ENOMEM;
        }
        if (cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking) != cudaSuccess) {
                free(m->w);
                free(m);
                return -EIO;
        }
        size_t nmax = c->n_embd > c->n_ff ? c->n_embd : c->n_ff;
        if (nq > nmax)
                nmax = nq;
        if ((r = cuda_blas_new(m->stream, &m->blas)) < 0 || (r = alloc((void **)&m->x, c->n_embd * 4)) < 0 ||
            (r = alloc((void **)&m->xn, c->n_embd * 4)) < 0 ||
            (r = alloc((void **)&m->xq.qs, cuda_q8_bytes(nmax, CUDA_Q8_K4))) < 0 ||
            (r = alloc((void **)&m->xq2, cuda_q8_bytes(nmax, CUDA_Q8_K4))) < 0 ||
            (r = alloc((void **)&m->xq.ds, nmax / 32 * 8 + 8)) < 0 || (r = alloc((void **)&m->attq.qs, cuda_q8_bytes(nq, CUDA_Q8_K4))) < 0 ||
            (r = alloc((void **)&m->attq.ds, nq / 32 * 8 + 8)) < 0 ||
            (r = alloc((void **)&m->qkv, (nq + 2 * nk) * 4)) < 0 || (r = alloc((void **)&m->att, nq * 4)) < 0 ||
            (r = alloc((void **)&m->h, c->n_ff * 4)) < 0 || (r = alloc((void **)&m->logits, c->n_vocab * 4)) < 0 ||
            (r = alloc((void **)&m->tok, 4)) < 0 || (r = alloc((void **)&m->inv_freq, (c->n_rot / 2 + 1) * 4)) < 0 ||
            (r = upload_inv_freq(m, NULL)) < 0) {
                cuda_llama_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

extern "C" CudaLlama *cuda_llama_free(CudaLlama *m) {
        if (!m)
                return NULL;
        (void)cudaSetDevice(m->device);
        if (m->stream)
                (void)cudaStreamSynchronize(m->stream);
        for (size_t i = 0; i < 3 + (size_t)m->c.n_layer * 9; i++)
                cuda_free((void *)m->w[i].data);
        void *bufs[] = {m->x,      m->xn,     m->xq.qs,   m->xq2,     m->xq.ds,  m->qkv,   m->att,  m->attq.qs,
                        m->attq.ds, m->h,     m->logits,  m->tok,     m->pf_tok, m->pf_x, m->pf_xn,
                        m->pf_qkv,  m->pf_att, m->pf_gu,  m->pf_w,   m->inv_freq, m->bias};
        for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
                cuda_free(bufs[i]);
        void *bbufs[] = {m->bx,   m->bxn,     m->bxq.qs, m->bxq.ds, m->bqkv,  m->batt,
                         m->battq.qs, m->battq.ds, m->bh, m->blogits, m->btok, m->bseqs, m->b_scratch};
        for (size_t i = 0; i < sizeof(bbufs) / sizeof(bbufs[0]); i++)
                cuda_free(bbufs[i]);
        for (size_t i = 0; i <= B_MAX; i++)
                if (m->bgraph[i])
                        (void)cudaGraphExecDestroy(m->bgraph[i]);
        cuda_blas_free(m->blas);
        if (m->stream)
                (void)cudaStreamDestroy(m->stream);
        free(m->w);
        free(m);
        return NULL;
}

extern "C" void cuda_llama_weight_shape(const CudaLlamaConfig *c, CudaWeight w, uint32_t *cols,
                                        uint32_t *rows) {
        const uint32_t nq = c->n_head * c->head_dim, nk = c->n_head_kv * c->head_dim;

        *cols = c->n_embd;
        switch (w) {
        case CUDA_W_TOKEN_EMBD:
        case CUDA_W_OUTPUT:
                *rows = c->n_vocab;
                break;
        case CUDA_W_OUTPUT_NORM:
        case CUDA_W_ATTN_NORM:
        case CUDA_W_FFN_NORM:
                *rows = 1;
                break;
        case CUDA_W_Q:
                *rows = nq;
                break;
        case CUDA_W_K:
        case CUDA_W_V:
                *rows = nk;
                break;
        case CUDA_W_O:
                *cols = nq;
                *rows = c->n_embd;
                break;
        case CUDA_W_GATE:
        case CUDA_W_UP:
                *rows = c->n_ff;
                break;
        case CUDA_W_DOWN:
                *cols = c->n_ff;
                *rows = c->n_embd;
                break;
        case _CUDA_W_MAX:
        case _CUDA_W_INVALID:
                *rows = 0;
                break;
        }
}

__global__ void fill_ones_kernel(float *x, uint32_t n) {
        uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;

        if (i < n)
                x[i] = 1.0f;
}

extern "C" int cuda_llama_set_weight(CudaLlama *m, CudaWeight w, uint32_t layer, uint32_t type, uint32_t n_cols,
                                     uint32_t n_rows, const void *data) {
        uint32_t ec, er;
        size_t stride;
        uint64_t row_bytes;
        void *p;
        int r;

        if (w < 0 || w >= _CUDA_W_MAX || (w >= CUDA_W_ATTN_NORM && (layer < m->l0 || layer >= m->l1)) ||
            (w == CUDA_W_TOKEN_EMBD && m->l0 != 0) ||
            ((w == CUDA_W_OUTPUT || w == CUDA_W_OUTPUT_NORM) && m->l1 != m->c.n_layer))
                return -EINVAL;
        cuda_llama_weight_shape(&m->c, w, &ec, &er);
        if (n_cols != ec || n_rows != er)
                return -EINVAL;
        bool is_norm = w == CUDA_W_OUTPUT_NORM || w == CUDA_W_ATTN_NORM || w == CUDA_W_FFN_NORM;
        if (is_norm && type != GGML_TYPE_F32)
                return -EOPNOTSUPP;
        if (!cuda_type_supported(type))
                return -EOPNOTSUPP;
        if ((r = cuda_row_stride(type, n_cols, &stride)) < 0)
                return r;
        if (ggml_row_size(type, n_cols, &row_bytes) < 0)
                return -EINVAL;
        CU_TRY(cudaSetDevice(m->device));
        if ((r = cuda_malloc(stride * n_rows, &p)) < 0)
                return r;
        CudaMatrix *mat = weight(m, w, layer);
        CudaMatrix nm = {type, n_cols, n_rows, stride, p};
        if (data) {
                cudaError_t e = stride == row_bytes
                                        ? cudaMemcpy(p, data, row_bytes * n_rows, cudaMemcpyHostToDevice)
                                        : cudaMemcpy2D(p, stride, data, row_bytes, row_bytes, n_rows,
                                                       cudaMemcpyHostToDevice);
                if (e != cudaSuccess) {
                        cuda_free(p);
                        return cuda_errno(e);
                }
        } else if (is_norm) {
                fill_ones_kernel<<<(n_cols + 255) / 256, 256, 0, m->stream>>>((float *)p, n_cols);
        } else {
                float scale = w == CUDA_W_TOKEN_EMBD ? 1.0f : 1.0f / sqrtf((float)n_cols);
                uint64_t seed = ((uint64_t)w << 32) ^ ((uint64_t)layer << 8) ^ 0x5eedull;
                if ((r = cuda_fill_random(m->stream, &nm, seed, scale)) < 0) {
                        cuda_free(p);
                        return r;
                }
        }
        if ((r = cuda_sync(m->stream)) < 0) {
                cuda_free(p);
                return r;
        }
        if (mat->data) {
                m->weight_bytes -= mat->row_stride * mat->n_rows;
                uint64_t old;
                (void)ggml_row_size(mat->type, mat->n_cols, &old);
                m->step_bytes -= w == CUDA_W_TOKEN_EMBD ? old : old * mat->n_rows;
                cuda_free((void *)mat->data);
        }
        *mat = nm;
        m->weight_bytes += stride * n_rows;
        m->step_bytes += w == CUDA_W_TOKEN_EMBD ? row_bytes : row_bytes * n_rows;
        return 0;
}

extern "C" void cuda_llama_set_precise(CudaLlama *m, bool precise) {
        m->precise = precise;
}

extern "C" void cuda_llama_set_skip(CudaLlama *m, unsigned mask) {
        m->skip = mask;
}

extern "C" void cuda_llama_set_plain_q8(CudaLlama *m, bool plain) {
        m->plain_q8 = plain;
}

extern "C" uint64_t cuda_llama_weight_bytes(const CudaLlama *m) {
        return m->weight_bytes;
}

extern "C" uint64_t cuda_llama_step_bytes(const CudaLlama *m) {
        return m->step_bytes;
}

extern "C" uint64_t cuda_kv_bytes(const CudaLlamaConfig *c, uint32_t n_layer, uint32_t n_ctx) {
        return 2ull * n_layer * n_ctx * kv_row(c);
}

extern "C" int cuda_kv_new(CudaLlama *m, uint32_t n_ctx, CudaKv **ret) {
        CudaAttnShape a = attn_shape(m, n_ctx);
        uint64_t half = cuda_kv_bytes(&m->c, m->l1 - m->l0, n_ctx) / 2;
        size_t ss = cuda_attn_scratch_size(&a);
        CudaKv *kv;
        int r;

        if (n_ctx == 0)
                return -EINVAL;
        CU_TRY(cudaSetDevice(m->device));
        kv = (CudaKv *)calloc(1, sizeof(CudaKv));
        if (!kv)
                return -ENOMEM;
        kv->m = m;
        kv->n_ctx = n_ctx;
        if ((r = alloc((void **)&kv->k, half)) < 0 || (r = alloc((void **)&kv->v, half)) < 0 ||
            (r = alloc((void **)&kv->d_pos, 4)) < 0 || (r = alloc((void **)&kv->hist, (n_ctx + 1) * 4)) < 0 ||
            (r = alloc(&kv->attn_scratch, ss)) < 0) {
                cuda_kv_free(kv);
                return r;
        }
        if (cudaMemset(kv->attn_scratch, 0, ss) != cudaSuccess || cudaMemset(kv->d_pos, 0, 4) != cudaSuccess) {
                cuda_kv_free(kv);
                return -EIO;
        }
        *ret = kv;
        return 0;
}

extern "C" CudaKv *cuda_kv_free(CudaKv *kv) {
        if (!kv)
                return NULL;
        (void)cudaSetDevice(kv->m->device);
        (void)cudaStreamSynchronize(kv->m->stream);
        if (kv->graph)
                (void)cudaGraphExecDestroy(kv->graph);
        cuda_free(kv->k);
        cuda_free(kv->v);
        cuda_free(kv->d_pos);
        cuda_free(kv->hist);
        cuda_free(kv->attn_scratch);
        free(kv);
        return NULL;
}

extern "C" uint32_t cuda_kv_pos(const CudaKv *kv) {
        return kv->pos;
}

static bool is_float_type(uint32_t t) {
        return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16;
}

#define TRY(x)                                                                                                  \
        do {                                                                                                    \
                int r_ = (x);                                                                                   \
                if (r_ < 0)                                                                                     \
                        return r_;                                                                              \
        } while (0)

/*
 * m's 8-bit input q (second buffer qs2) laid out for products of the n weights w (NULL entries and float
 * weights read floats): the layout the first family's single-sequence kernels read fastest, a second family's
 * in qs2, plain for all where three families meet (or with m->plain_q8).
 */
static CudaQ8 q8_for(const CudaLlama *m, CudaQ8 q, int8_t *qs2, const CudaMatrix *const *w, unsigned n) {
        const bool on = !m->plain_q8;
        CudaQ8Layout fam[2];
        unsigned nf = 0;

        q.qs2 = NULL;
        q.layout = q.layout2 = CUDA_Q8_PLAIN;
        for (unsigned i = 0; on && i < n; i++) {
                if (!w[i] || is_float_type(w[i]->type))
                        continue;
                const CudaQ8Layout f = cuda_q8_layout_for(w[i]->type);
                if ((nf > 0 && fam[0] == f) || (nf > 1 && fam[1] == f))
                        continue;
                if (nf == 2 || (nf == 1 && !qs2))
                        return q; /* one buffer too few: all plain */
                fam[nf++] = f;
        }
        if (nf > 0)
                q.layout = fam[0];
        if (nf > 1)
                q.qs2 = qs2, q.layout2 = fam[1];
        return q;
}

/* Q, K and V of layer l for n sequences (outputs ld apart): all three share n_cols; the products launch them
 * together, in one launch even where Q4_K_M gives V Q6_K (cuda_matvec()). */
static int run_qkv(CudaLlama *m, uint32_t l, const CudaMvInput *in, float *qkv, uint32_t n, uint32_t ld) {
        const uint32_t nq = m->c.n_head * m->c.head_dim, nk = m->c.n_head_kv * m->c.head_dim;
        const CudaMatrix ws[3] = {*weight(m, CUDA_W_Q, l), *weight(m, CUDA_W_K, l), *weight(m, CUDA_W_V, l)};
        float *const ys[3] = {qkv, qkv + nq, qkv + nq + nk};

        return cuda_matvec_batch(m->stream, ws, 3, in, ys, CUDA_MV_STORE, n, ld);
}

/* One token through layers [l0, l1) on m->x; the token's position is *kv->d_pos. Eight launches a layer (nine
 * when V's type differs from Q's and the two are not Q4_K/Q5_K with Q6_K): RMSNorm + 8-bit quantization, Q/K/V,
 * attention with RoPE and the KV store fused (its output quantized by the merging block), the output
 * projection adding into the residual, RMSNorm + quantization, gate and up with SwiGLU, quantization, the
 * down projection adding in. Each 8-bit input is laid out for the products that read it (q8_for()). The
 * attention reads the position and the cache rows below it before waiting for Q/K/V (early): every path here
 * has them written before its launches began (earlier graphs, or set_pos(), which synchronizes). */
static int decode_layers(CudaLlama *m, CudaKv *kv, uint32_t l0, uint32_t l1) {
        const CudaLlamaConfig *c = &m->c;
        const CudaAttnShape a = attn_shape(m, kv->n_ctx);
        const size_t kv_layer = (size_t)kv->n_ctx * kv_row(c);
        const bool att_q = c->head_dim % 32 == 0;

        for (uint32_t l = l0; l < l1; l++) {
                const CudaMatrix *o = weight(m, CUDA_W_O, l), *down = weight(m, CUDA_W_DOWN, l);
                CudaMatrix gu[2] = {*weight(m, CUDA_W_GATE, l), *weight(m, CUDA_W_UP, l)};
                const CudaMatrix *qkv_w[3] = {weight(m, CUDA_W_Q, l), weight(m, CUDA_W_K, l), weight(m, CUDA_W_V, l)};
                const CudaQ8 qa = q8_for(m, m->xq, m->xq2, qkv_w, 3), qo = q8_for(m, m->attq, NULL, &o, 1);
                const CudaMatrix *gu_w[2] = {&gu[0], &gu[1]};
                const CudaQ8 qf = q8_for(m, m->xq, NULL, gu_w, 2), qh = q8_for(m, m->xq, NULL, &down, 1);
                const CudaMvInput in_a = {m->xn, &qa}, in_att = {m->att, &qo}, in_f = {m->xn, &qf}, in_h = {m->h, &qh};
                float *y;

                const bool small = !(m->skip & CUDA_SKIP_SMALL), mv = !(m->skip & CUDA_SKIP_MATVEC);

                if (small)
                        TRY(cuda_rmsnorm(m->stream, m->x, (const float *)weight(m, CUDA_W_ATTN_NORM, l)->data,
                                         c->n_embd, 1, c->norm_eps, m->xn, NULL, &qa));
                if (mv)
                        TRY(run_qkv(m, l, &in_a, m->qkv, 1, 0));
                const CudaAttnShape al = attn_shape_layer(m, a.n_ctx, l);
                if (small)
                        TRY(cuda_attn_decode(m->stream, &al, m->qkv, kv->d_pos, kv->k + (l - m->l0) * kv_layer,
                                             kv->v + (l - m->l0) * kv_layer, kv->attn_scratch, m->att, att_q ? &qo : NULL, true));
                if (small && !att_q && !is_float_type(o->type))
                        TRY(cuda_quantize_q8(m->stream, m->att, o->n_cols, 1, &qo));
                y = m->x;
                if (mv)
                        TRY(cuda_matvec(m->stream, o, 1, &in_att, &y, CUDA_MV_ADD));
                if (small)
                        TRY(cuda_rmsnorm(m->stream, m->x, (const float *)weight(m, CUDA_W_FFN_NORM, l)->data,
                                         c->n_embd, 1, c->norm_eps, m->xn, NULL, &qf));
                if (gu[0].type != gu[1].type)
                        return -EOPNOTSUPP; /* no quantization mix gives gate and up different types */
                y = m->h;
                if (mv)
                        TRY(cuda_matvec(m->stream, gu, 2, &in_f, &y, CUDA_MV_SWIGLU));
                if (small && !is_float_type(down->type))
                        TRY(cuda_quantize_q8(m->stream, m->h, c->n_ff, 1, &qh));
                y = m->x;
                if (mv)
                        TRY(cuda_matvec(m->stream, down, 1, &in_h, &y, CUDA_MV_ADD));
        }
        return 0;
}

/* The whole decode step: embedding of *m->tok, all layers, logits, and the argmax that feeds the next. */
static int decode_step(CudaLlama *m, CudaKv *kv) {
        const CudaLlamaConfig *c = &m->c;
        const CudaMatrix *out_w = weight(m, CUDA_W_OUTPUT, 0);
        const CudaQ8 q = q8_for(m, m->xq, NULL, &out_w, 1);
        const CudaMvInput in = {m->xn, &q};
        float *y = m->logits;

        TRY(cuda_get_rows(m->stream, weight(m, CUDA_W_TOKEN_EMBD, 0), m->tok, 1, m->x));
        TRY(decode_layers(m, kv, m->l0, m->l1));
        TRY(cuda_rmsnorm(m->stream, m->x, (const float *)weight(m, CUDA_W_OUTPUT_NORM, 0)->data, c->n_embd, 1,
                         c->norm_eps, m->xn, NULL, &q));
        TRY(cuda_matvec(m->stream, out_w, 1, &in, &y, CUDA_MV_STORE));
        TRY(cuda_argmax(m->stream, m->logits, c->n_vocab, m->tok, kv->d_pos, kv->hist, kv->n_ctx + 1));
        return 0;
}

/* Whether every weight the model's range needs is in place. */
static int check_weights(CudaLlama *m) {
        if (m->l0 == 0 && !weight(m, CUDA_W_TOKEN_EMBD, 0)->data)
                return -EINVAL;
        if (m->l1 == m->c.n_layer &&
            (!weight(m, CUDA_W_OUTPUT_NORM, 0)->data || !weight(m, CUDA_W_OUTPUT, 0)->data))
                return -EINVAL;
        for (uint32_t l = m->l0; l < m->l1; l++)
                for (int w = CUDA_W_ATTN_NORM; w < _CUDA_W_MAX; w++)
                        if (!weight(m, (CudaWeight)w, l)->data)
                                return -EINVAL;
        return 0;
}

/* Replays *exec, capturing it first from what step(m, arg) launches if it is not made yet. */
static int graph_replay(CudaLlama *m, cudaGraphExec_t *exec, int (*step)(CudaLlama *m, void *arg), void *arg) {
        if (!*exec) {
                cudaGraph_t g;
                int r;

                CU_TRY(cudaStreamBeginCapture(m->stream, cudaStreamCaptureModeThreadLocal));
                r = step(m, arg);
                cudaError_t e = cudaStreamEndCapture(m->stream, &g);
                if (r < 0) {
                        if (e == cudaSuccess)
                                (void)cudaGraphDestroy(g);
                        return r;
                }
                CU_TRY(e);
                e = cudaGraphInstantiate(exec, g, 0);
                (void)cudaGraphDestroy(g);
                CU_TRY(e);
        }
        CU_TRY(cudaGraphLaunch(*exec, m->stream));
        return 0;
}

static int decode_step_of(CudaLlama *m, void *kv) {
        return decode_step(m, (CudaKv *)kv);
}

/* Replays (capturing first if needed) the decode graph of kv. */
static int decode_graph(CudaLlama *m, CudaKv *kv) {
        return graph_replay(m, &kv->graph, decode_step_of, kv);
}

static int prefill_alloc(CudaLlama *m) {
        const CudaLlamaConfig *c = &m->c;
        const size_t nq = c->n_head * c->head_dim, nk = c->n_head_kv * c->head_dim;
        const size_t nmax = c->n_embd > c->n_ff ? c->n_embd : c->n_ff;
        size_t wmax = (nq + 2 * nk) * c->n_embd;

        if (m->pf_w)
                return 0;
        if (2 * (size_t)c->n_ff * c->n_embd > wmax)
                wmax = 2 * (size_t)c->n_ff * c->n_embd;
        if (nq * c->n_embd > wmax)
                wmax = nq * c->n_embd;
        TRY(alloc((void **)&m->pf_tok, PF_MAX_TOK * 4));
        TRY(alloc((void **)&m->pf_x, PF_MAX_TOK * c->n_embd * 4));
        TRY(alloc((void **)&m->pf_xn, PF_MAX_TOK * nmax * 2));
        TRY(alloc((void **)&m->pf_qkv, PF_MAX_TOK * (nq + 2 * nk) * 4));
        TRY(alloc((void **)&m->pf_att, PF_MAX_TOK * nq * 4));
        TRY(alloc((void **)&m->pf_gu, PF_MAX_TOK * 2 * c->n_ff * 4));
        TRY(alloc((void **)&m->pf_w, wmax * 2));
        return 0;
}

/* n_tok (<= PF_MAX_TOK) tokens whose embeddings are in m->pf_x, through layers [l0, l1). */
static int prefill_layers(CudaLlama *m, CudaKv *kv, uint32_t n_tok, uint32_t l0, uint32_t l1) {
        const CudaLlamaConfig *c = &m->c;
        const uint32_t nq = c->n_head * c->head_dim, nk = c->n_head_kv * c->head_dim, nqkv = nq + 2 * nk;
        const CudaAttnShape a = attn_shape(m, kv->n_ctx);
        const size_t kv_layer = (size_t)kv->n_ctx * kv_row(c);
        cudaStream_t s = m->stream;

        for (uint32_t l = l0; l < l1; l++) {
                TRY(cuda_rmsnorm(s, m->pf_x, (const float *)weight(m, CUDA_W_ATTN_NORM, l)->data, c->n_embd, n_tok,
                                 c->norm_eps, NULL, m->pf_xn, NULL));
                TRY(cuda_dequant_f16(s, weight(m, CUDA_W_Q, l), m->pf_w));
                TRY(cuda_dequant_f16(s, weight(m, CUDA_W_K, l), m->pf_w + (size_t)nq * c->n_embd));
                TRY(cuda_dequant_f16(s, weight(m, CUDA_W_V, l), m->pf_w + (size_t)(nq + nk) * c->n_embd));
                TRY(cuda_gemm_f16(m->blas, m->pf_w, nqkv, c->n_embd, m->pf_xn, n_tok, m->pf_qkv, false));
                const CudaAttnShape al = attn_shape_layer(m, a.n_ctx, l);
                TRY(cuda_rope_store(s, &al, m->pf_qkv, nqkv, n_tok, kv->d_pos, kv->k + (l - m->l0) * kv_layer,
                                    kv->v + (l - m->l0) * kv_layer));
                TRY(cuda_attn_prefill(s, &al, m->pf_qkv, nqkv, n_tok, kv->d_pos, kv->k + (l - m->l0) * kv_layer,
                                      kv->v + (l - m->l0) * kv_layer, m->pf_att));
                TRY(cuda_f32_to_f16(s, m->pf_att, m->pf_xn, (size_t)n_tok * nq));
                TRY(cuda_dequant_f16(s, weight(m, CUDA_W_O, l), m->pf_w));
                TRY(cuda_gemm_f16(m->blas, m->pf_w, c->n_embd, nq, m->pf_xn, n_tok, m->pf_x, true));
                TRY(cuda_rmsnorm(s, m->pf_x, (const float *)weight(m, CUDA_W_FFN_NORM, l)->data, c->n_embd, n_tok,
                                 c->norm_eps, NULL, m->pf_xn, NULL));
                TRY(cuda_dequant_f16(s, weight(m, CUDA_W_GATE, l), m->pf_w));
                TRY(cuda_dequant_f16(s, weight(m, CUDA_W_UP, l), m->pf_w + (size_t)c->n_ff * c->n_embd));
                TRY(cuda_gemm_f16(m->blas, m->pf_w, 2 * c->n_ff, c->n_embd, m->pf_xn, n_tok, m->pf_gu, false));
                TRY(cuda_swiglu_f16(s, m->pf_gu, c->n_ff, n_tok, m->pf_xn));
                TRY(cuda_dequant_f16(s, weight(m, CUDA_W_DOWN, l), m->pf_w));
                TRY(cuda_gemm_f16(m->blas, m->pf_w, c->n_embd, c->n_ff, m->pf_xn, n_tok, m->pf_x, true));
        }
        return 0;
}

static int set_pos(CudaKv *kv, uint32_t pos) {
        int32_t p = (int32_t)pos;

        CU_TRY(cudaMemcpyAsync(kv->d_pos, &p, 4, cudaMemcpyHostToDevice, kv->m->stream));
        CU_TRY(cudaStreamSynchronize(kv->m->stream));
        kv->pos = pos;
        return 0;
}

extern "C" int cuda_kv_truncate(CudaKv *kv, uint32_t pos) {
        if (pos > kv->pos)
                return -EINVAL;
        CU_TRY(cudaSetDevice(kv->m->device));
        return set_pos(kv, pos);
}

/* The head for row r of the chunk in xdev: the output norm, then the logits unless hidden; copied to out. */
static int head_row(CudaLlama *m, const float *xdev, bool hidden, float *out) {
        const CudaLlamaConfig *c = &m->c;
        const CudaMatrix *out_w = weight(m, CUDA_W_OUTPUT, 0);
        const CudaQ8 q = q8_for(m, m->xq, NULL, &out_w, 1);
        const CudaMvInput in = {m->xn, &q};
        float *y = m->logits;

        TRY(cuda_rmsnorm(m->stream, xdev, (const float *)weight(m, CUDA_W_OUTPUT_NORM, 0)->data, c->n_embd, 1,
                         c->norm_eps, m->xn, NULL, &q));
        if (hidden) {
                CU_TRY(cudaMemcpyAsync(out, m->xn, (size_t)c->n_embd * 4, cudaMemcpyDeviceToHost, m->stream));
                return 0;
        }
        if (m->precise)
                TRY(cuda_matvec_f32(m->stream, out_w, m->xn, m->logits));
        else
                TRY(cuda_matvec(m->stream, out_w, 1, &in, &y, CUDA_MV_STORE));
        CU_TRY(cudaMemcpyAsync(out, m->logits, (size_t)c->n_vocab * 4, cudaMemcpyDeviceToHost, m->stream));
        return 0;
}

extern "C" int cuda_llama_run(CudaLlama *m, CudaKv *kv, uint32_t pos0, uint32_t n_tok, const int32_t *tokens,
                              float *x, uint32_t n_out, const uint32_t *out_rows, bool hidden, float *out) {
        const CudaLlamaConfig *c = &m->c;
        const bool embed = m->l0 == 0, head = m->l1 == c->n_layer;
        const size_t out_width = hidden ? c->n_embd : c->n_vocab;
        uint32_t next_out = 0;

        if (n_tok == 0 || kv->m != m || (embed && !tokens) || (!embed && !x) || (!head && !x) ||
            (head && n_out && (!out_rows || !out)))
                return -EINVAL;
        if ((uint64_t)pos0 + n_tok > kv->n_ctx)
                return -ENOSPC;
        for (uint32_t i = 0; embed && i < n_tok; i++)
                if (tokens[i] < 0 || (uint32_t)tokens[i] >= c->n_vocab)
                        return -EINVAL;
        for (uint32_t i = 0; i < n_out; i++)
                if (out_rows[i] >= n_tok || (i > 0 && out_rows[i] <= out_rows[i - 1]))
                        return -EINVAL;
        TRY(check_weights(m));
        CU_TRY(cudaSetDevice(m->device));
        TRY(set_pos(kv, pos0));

        /* One token through the whole model: the captured graph. */
        if (n_tok == 1 && embed && head && !hidden && !m->precise) {
                CU_TRY(cudaMemcpyAsync(m->tok, tokens, 4, cudaMemcpyHostToDevice, m->stream));
                TRY(decode_graph(m, kv));
                if (n_out)
                        CU_TRY(cudaMemcpyAsync(out, m->logits, (size_t)c->n_vocab * 4, cudaMemcpyDeviceToHost,
                                               m->stream));
                CU_TRY(cudaStreamSynchronize(m->stream));
                kv->pos = pos0 + 1;
                return 0;
        }
        if (n_tok > 1 || m->precise)
                TRY(prefill_alloc(m));
        for (uint32_t t0 = 0; t0 < n_tok; t0 += PF_MAX_TOK) {
                uint32_t n = n_tok - t0 < PF_MAX_TOK ? n_tok - t0 : PF_MAX_TOK;
                float *xdev = n == 1 && !m->precise ? m->x : m->pf_x;
                if (embed) {
                        int32_t *dtok = n == 1 && !m->precise ? m->tok : m->pf_tok;
                        CU_TRY(cudaMemcpyAsync(dtok, tokens + t0, n * 4, cudaMemcpyHostToDevice, m->stream));
                        TRY(cuda_get_rows(m->stream, weight(m, CUDA_W_TOKEN_EMBD, 0), dtok, n, xdev));
                } else {
                        CU_TRY(cudaMemcpyAsync(xdev, x + (size_t)t0 * c->n_embd, (size_t)n * c->n_embd * 4,
                                               cudaMemcpyHostToDevice, m->stream));
                }
                if (n == 1 && !m->precise)
                        TRY(decode_layers(m, kv, m->l0, m->l1));
                else
                        TRY(prefill_layers(m, kv, n, m->l0, m->l1));
                if (head) {
                        for (; next_out < n_out && out_rows[next_out] < t0 + n; next_out++)
                                TRY(head_row(m, xdev + (size_t)(out_rows[next_out] - t0) * c->n_embd, hidden,
                                             out + next_out * out_width));
                } else {
                        CU_TRY(cudaMemcpyAsync(x + (size_t)t0 * c->n_embd, xdev, (size_t)n * c->n_embd * 4,
                                               cudaMemcpyDeviceToHost, m->stream));
                }
                TRY(set_pos(kv, pos0 + t0 + n)); /* synchronizes: the copies above are done */
        }
        return 0;
}

extern "C" int cuda_llama_forward(CudaLlama *m, CudaKv *kv, const int32_t *tokens, uint32_t n_tok,
                                  float *logits) {
        uint32_t last = n_tok - 1;

        if (n_tok == 0)
                return -EINVAL;
        return cuda_llama_run(m, kv, kv->pos, n_tok, tokens, NULL, logits ? 1 : 0, &last, false, logits);
}

extern "C" int cuda_llama_generate_greedy(CudaLlama *m, CudaKv *kv, int32_t token, uint32_t n_steps,
                                          int32_t *out) {
        uint32_t p0 = kv->pos;

        if (token < 0 || (uint32_t)token >= m->c.n_vocab || kv->m != m || m->l0 != 0 || m->l1 != m->c.n_layer)
                return -EINVAL;
        if ((uint64_t)kv->pos + n_steps > kv->n_ctx)
                return -ENOSPC;
        TRY(check_weights(m));
        CU_TRY(cudaSetDevice(m->device));
        TRY(set_pos(kv, p0)); /* a batched step may have moved the position without the device copy */
        CU_TRY(cudaMemcpyAsync(m->tok, &token, 4, cudaMemcpyHostToDevice, m->stream));
        for (uint32_t i = 0; i < n_steps; i++)
                TRY(decode_graph(m, kv));
        kv->pos += n_steps;
        if (out && n_steps)
                CU_TRY(cudaMemcpyAsync(out, kv->hist + p0 + 1, n_steps * 4, cudaMemcpyDeviceToHost, m->stream));
        CU_TRY(cudaStreamSynchronize(m->stream));
        return 0;
}

/* ---- batched decode: one step of several sequences ---- */

/* The batched scratch, with attention scratch for caches of up to n_ctx positions (grown on demand: the
 * graphs captured for a smaller size go). */
static int batch_alloc(CudaLlama *m, uint32_t n_ctx) {
        const CudaLlamaConfig *c = &m->c;
        const size_t nq = c->n_head * c->head_dim, nk = c->n_head_kv * c->head_dim;
        size_t nmax = c->n_embd > c->n_ff ? c->n_embd : c->n_ff;

        if (nq > nmax)
                nmax = nq;
        if (!m->bx) {
                TRY(alloc((void **)&m->bx, B_MAX * c->n_embd * 4));
                TRY(alloc((void **)&m->bxn, B_MAX * c->n_embd * 4));
                TRY(alloc((void **)&m->bxq.qs, B_MAX * nmax));
                TRY(alloc((void **)&m->bxq.ds, B_MAX * (nmax / 32 + 1) * 8));
                TRY(alloc((void **)&m->bqkv, B_MAX * (nq + 2 * nk) * 4));
                TRY(alloc((void **)&m->batt, B_MAX * nq * 4));
                TRY(alloc((void **)&m->battq.qs, B_MAX * nq));
                TRY(alloc((void **)&m->battq.ds, B_MAX * (nq / 32 + 1) * 8));
                TRY(alloc((void **)&m->bh, B_MAX * c->n_ff * 4));
                TRY(alloc((void **)&m->blogits, B_MAX * (size_t)c->n_vocab * 4));
                TRY(alloc((void **)&m->btok, B_MAX * 4));
                TRY(alloc((void **)&m->bseqs, B_MAX * sizeof(CudaSeqSlot)));
        }
        if (n_ctx > m->b_ctx) {
                CudaAttnShape a = attn_shape(m, n_ctx);
                size_t ss = (cuda_attn_scratch_size(&a) + 15) / 16 * 16 * B_MAX;
                CU_TRY(cudaStreamSynchronize(m->stream));
                for (size_t i = 0; i <= B_MAX; i++)
                        if (m->bgraph[i]) {
                                (void)cudaGraphExecDestroy(m->bgraph[i]);
                                m->bgraph[i] = NULL;
                        }
                cuda_free(m->b_scratch);
                m->b_scratch = NULL;
                m->b_ctx = 0;
                TRY(alloc(&m->b_scratch, ss));
                CU_TRY(cudaMemset(m->b_scratch, 0, ss));
                m->b_ctx = n_ctx;
        }
        return 0;
}

/* One step of n sequences (m->btok, m->bseqs) through the whole model: the same kernels as decode_step() with
 * n columns, logits into m->blogits and each sequence's argmax into m->btok. */
static int decode_step_batch(CudaLlama *m, uint32_t n) {
        const CudaLlamaConfig *c = &m->c;
        const uint32_t nq = c->n_head * c->head_dim, nk = c->n_head_kv * c->head_dim, nqkv = nq + 2 * nk;
        const CudaAttnShape a = attn_shape(m, m->b_ctx);
        const bool att_q = c->head_dim % 32 == 0;
        cudaStream_t s = m->stream;
        const CudaMvInput in_x = {m->bxn, &m->bxq}, in_att = {m->batt, &m->battq}, in_h = {m->bh, &m->bxq};
        float *y;

        TRY(cuda_get_rows(s, weight(m, CUDA_W_TOKEN_EMBD, 0), m->btok, n, m->bx));
        for (uint32_t l = m->l0; l < m->l1; l++) {
                const CudaMatrix *o = weight(m, CUDA_W_O, l), *down = weight(m, CUDA_W_DOWN, l);
                CudaMatrix gu[2] = {*weight(m, CUDA_W_GATE, l), *weight(m, CUDA_W_UP, l)};

                TRY(cuda_rmsnorm(s, m->bx, (const float *)weight(m, CUDA_W_ATTN_NORM, l)->data, c->n_embd, n,
                                 c->norm_eps, m->bxn, NULL, &m->bxq));
                TRY(run_qkv(m, l, &in_x, m->bqkv, n, nqkv));
                const CudaAttnShape al = attn_shape_layer(m, a.n_ctx, l);
                TRY(cuda_attn_decode_batch(s, &al, m->bqkv, n, m->bseqs, l - m->l0, m->b_scratch, m->batt,
                                           att_q ? &m->battq : NULL, true));
                if (!att_q && !is_float_type(o->type))
                        TRY(cuda_quantize_q8(s, m->batt, nq, n, &m->battq));
                y = m->bx;
                TRY(cuda_matvec_batch(s, o, 1, &in_att, &y, CUDA_MV_ADD, n, c->n_embd));
                TRY(cuda_rmsnorm(s, m->bx, (const float *)weight(m, CUDA_W_FFN_NORM, l)->data, c->n_embd, n,
                                 c->norm_eps, m->bxn, NULL, &m->bxq));
                if (gu[0].type != gu[1].type)
                        return -EOPNOTSUPP;
                y = m->bh;
                TRY(cuda_matvec_batch(s, gu, 2, &in_x, &y, CUDA_MV_SWIGLU, n, c->n_ff));
                if (!is_float_type(down->type))
                        TRY(cuda_quantize_q8(s, m->bh, c->n_ff, n, &m->bxq));
                y = m->bx;
                TRY(cuda_matvec_batch(s, down, 1, &in_h, &y, CUDA_MV_ADD, n, c->n_embd));
        }
        TRY(cuda_rmsnorm(s, m->bx, (const float *)weight(m, CUDA_W_OUTPUT_NORM, 0)->data, c->n_embd, n,
                         c->norm_eps, m->bxn, NULL, &m->bxq));
        y = m->blogits;
        TRY(cuda_matvec_batch(s, weight(m, CUDA_W_OUTPUT, 0), 1, &in_x, &y, CUDA_MV_STORE, n, c->n_vocab));
        TRY(cuda_argmax_batch(s, m->blogits, c->n_vocab, n, m->btok, m->bseqs));
        return 0;
}

static int decode_step_batch_of(CudaLlama *m, void *n) {
        return decode_step_batch(m, *(const uint32_t *)n);
}

/* Replays (capturing first if needed) the batched graph for n sequences. */
static int decode_graph_batch(CudaLlama *m, uint32_t n) {
        return graph_replay(m, &m->bgraph[n], decode_step_batch_of, &n);
}

/* Checks n sequences for a batched step at positions pos[i] (kv's own when pos is NULL) with n_new tokens
 * each, prepares the scratch, and uploads their slots and tokens. */
static int batch_begin(CudaLlama *m, CudaKv *const *kvs, const uint32_t *pos, const int32_t *tokens, uint32_t n,
                       uint32_t n_new) {
        CudaSeqSlot slots[B_MAX];
        uint32_t n_ctx = 0;

        if (n == 0 || n > B_MAX || !kvs || !tokens || m->l0 != 0 || m->l1 != m->c.n_layer)
                return -EINVAL;
        for (uint32_t i = 0; i < n; i++) {
                const CudaKv *kv = kvs[i];
                uint32_t p = pos ? pos[i] : kv->pos;
                if (!kv || kv->m != m || p > kv->pos || tokens[i] < 0 || (uint32_t)tokens[i] >= m->c.n_vocab)
                        return -EINVAL;
                for (uint32_t j = 0; j < i; j++)
                        if (kvs[j] == kv)
                                return -EINVAL;
                if ((uint64_t)p + n_new > kv->n_ctx)
                        return -ENOSPC;
                slots[i] = (CudaSeqSlot){kv->k, kv->v, kv->hist, kv->n_ctx, (int32_t)p};
                if (kv->n_ctx > n_ctx)
                        n_ctx = kv->n_ctx;
        }
        TRY(check_weights(m));
        CU_TRY(cudaSetDevice(m->device));
        TRY(batch_alloc(m, n_ctx));
        CU_TRY(cudaMemcpyAsync(m->bseqs, slots, n * sizeof(CudaSeqSlot), cudaMemcpyHostToDevice, m->stream));
        CU_TRY(cudaMemcpyAsync(m->btok, tokens, n * 4, cudaMemcpyHostToDevice, m->stream));
        return 0;
}

extern "C" int cuda_llama_decode_batch(CudaLlama *m, CudaKv *const *kvs, const uint32_t *pos,
                                       const int32_t *tokens, uint32_t n_seq, float *const *logits) {
        if (!kvs || !pos || !tokens)
                return -EINVAL;
        for (uint32_t i0 = 0; i0 < n_seq; i0 += B_MAX) {
                uint32_t n = n_seq - i0 < B_MAX ? n_seq - i0 : B_MAX;
                TRY(batch_begin(m, kvs + i0, pos + i0, tokens + i0, n, 1));
                TRY(decode_graph_batch(m, n));
                for (uint32_t i = 0; logits && i < n; i++)
                        if (logits[i0 + i])
                                CU_TRY(cudaMemcpyAsync(logits[i0 + i], m->blogits + (size_t)i * m->c.n_vocab,
                                                       (size_t)m->c.n_vocab * 4, cudaMemcpyDeviceToHost,
                                                       m->stream));
                CU_TRY(cudaStreamSynchronize(m->stream));
                for (uint32_t i = 0; i < n; i++)
                        kvs[i0 + i]->pos = pos[i0 + i] + 1;
        }
        return 0;
}

extern "C" int cuda_llama_generate_greedy_batch(CudaLlama *m, CudaKv *const *kvs, const int32_t *tokens,
                                                uint32_t n_seq, uint32_t n_steps, int32_t *out) {
        if (!kvs || !tokens)
                return -EINVAL;
        for (uint32_t i0 = 0; i0 < n_seq; i0 += B_MAX) {
                uint32_t n = n_seq - i0 < B_MAX ? n_seq - i0 : B_MAX;
                TRY(batch_begin(m, kvs + i0, NULL, tokens + i0, n, n_steps));
                for (uint32_t k = 0; k < n_steps; k++)
                        TRY(decode_graph_batch(m, n));
                for (uint32_t i = 0; out && i < n; i++)
                        CU_TRY(cudaMemcpyAsync(out + (size_t)(i0 + i) * n_steps, kvs[i0 + i]->hist + kvs[i0 + i]->pos + 1,
                                               n_steps * 4, cudaMemcpyDeviceToHost, m->stream));
                CU_TRY(cudaStreamSynchronize(m->stream));
                for (uint32_t i = 0; i < n; i++)
                        kvs[i0 + i]->pos += n_steps;
        }
        return 0;
}
