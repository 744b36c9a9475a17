/* SPDX-License-Identifier: MIT */
/*
 * Loaded models, sequences and the decode entry points: the part of the engine that is the same for every
 * backend. It maps the file, places layer ranges on backends (segments), keeps each sequence's position, splits
 * batches to the backends' size and passes the hidden state from one segment to the next.
 */

#include <inttypes.h>
#include <math.h>

#include "backend.h"
#include "threadpool.h"

#define DEFAULT_N_BATCH 512

/* Defined by the CUDA backend when it is built in; weak so that a build without it still links. */
extern const BackendOps backend_cuda_ops __attribute__((weak));

struct EngineSeq {
        EngineModel *model;
        uint32_t n_ctx;
        uint32_t pos;                      /* positions [0, pos) are in the caches */
        void *kv[MODEL_MAX_SEGMENTS];      /* each segment's cache */
};

EngineModelParams engine_model_params_default(void) {
        return (EngineModelParams){
                .backend = NULL,
                .n_gpu_layers = -1,
                .n_threads = 0,
                .kv_type = GGML_TYPE_F16,
                .n_batch = DEFAULT_N_BATCH,
                .cpu_isa = -1,
                .f32_activations = false,
        };
}

/* The file type as llama.cpp names it in general.file_type, else the commonest matrix type by bytes. */
static const char *file_type_name(const Gguf *g) {
        static const char *const names[] = {
                [0] = "F32",     [1] = "F16",     [2] = "Q4_0",    [3] = "Q4_1",    [7] = "Q8_0",
                [8] = "Q5_0",    [9] = "Q5_1",    [10] = "Q2_K",   [11] = "Q3_K_S", [12] = "Q3_K_M",
                [13] = "Q3_K_L", [14] = "Q4_K_S", [15] = "Q4_K_M", [16] = "Q5_K_S", [17] = "Q5_K_M",
                [18] = "Q6_K",   [25] = "IQ4_NL", [32] = "BF16",
        };
        static const char *const type_names[_GGML_TYPE_MAX] = {
                [GGML_TYPE_F32] = "F32",   [GGML_TYPE_F16] = "F16",   [GGML_TYPE_BF16] = "BF16",
                [GGML_TYPE_Q4_0] = "Q4_0", [GGML_TYPE_Q4_1] = "Q4_1", [GGML_TYPE_Q5_0] = "Q5_0",
                [GGML_TYPE_Q5_1] = "Q5_1", [GGML_TYPE_Q8_0] = "Q8_0", [GGML_TYPE_Q2_K] = "Q2_K",
                [GGML_TYPE_Q3_K] = "Q3_K", [GGML_TYPE_Q4_K] = "Q4_K", [GGML_TYPE_Q5_K] = "Q5_K",
                [GGML_TYPE_Q6_K] = "Q6_K",
        };
        uint64_t bytes[_GGML_TYPE_MAX] = {};
        uint32_t ft;

        if (gguf_get_u32(g, "general.file_type", &ft) >= 0 && ft < ELEMENTSOF(names) && names[ft])
                return names[ft];
        for (uint64_t i = 0; i < g->n_tensors; i++)
                if (g->tensors[i].ne[1] > 1 && g->tensors[i].type < _GGML_TYPE_MAX)
                        bytes[g->tensors[i].type] += g->tensors[i].size;
        size_t best = 0;
        for (size_t i = 0; i < ELEMENTSOF(bytes); i++)
                if (bytes[i] > bytes[best])
                        best = i;
        return type_names[best] ? type_names[best] : "unknown";
}

static void model_free(EngineModel *m) {
        for (size_t i = m->n_segments; i > 0; i--)
                m->segments[i - 1].ops->free(m->segments[i - 1].state);
        free(m->w.layers);
        engine_vocab_free(m->vocab);
        free(m->arch_name);
        gguf_free(m->gguf);
        free(m);
}

static const BackendOps *find_backend(const char *name) {
        if (streq(name, "cpu"))
                return &backend_cpu_ops;
        if (streq(name, "cuda") && &backend_cuda_ops && engine_cuda_devices() > 0)
                return &backend_cuda_ops;
        return NULL;
}

/* The GPU backend p asks for (NULL: the best available), or NULL for the CPU only. */
static int choose_gpu(const EngineModelParams *p, const BackendOps **ret, QdError *err) {
        const BackendOps *gpu = NULL;

        if (p->backend) {
                const BackendOps *ops = find_backend(p->backend);
                if (!ops)
                        return qd_error_set(err, EOPNOTSUPP, "Backend '%s' is not available; this build offers "
                                            "%s.", p->backend, &backend_cuda_ops && engine_cuda_devices() > 0 ?
                                            "cpu and cuda" : "cpu");
                if (ops != &backend_cpu_ops)
                        gpu = ops;
        } else if (&backend_cuda_ops && engine_cuda_devices() > 0)
                gpu = &backend_cuda_ops;
        *ret = gpu;
        return 0;
}

/* Context the default placement leaves room for on the GPU, for one sequence. */
#define FIT_N_CTX 2048

/*
 * n_gpu_layers -1: as many layers as fit in the device's free memory with a KV cache of FIT_N_CTX positions,
 * all of them when the backend cannot tell (no device_bytes, a device that does not answer). The daemon
 * chooses for itself (engine_model_estimate_splits()); this is for everyone else.
 */
static uint32_t fitting_layers(const EngineModel *m, const BackendOps *gpu) {
        EngineGpuInfo g;
        uint32_t n = m->cfg.n_layer;

        if (!gpu->device_bytes || engine_gpu_info(0, &g) < 0)
                return n;
        for (; n > 0; n--) {
                BackendRange range = {
                        .l0 = 0,
                        .l1 = n,
                        .n_batch = m->n_batch,
                        .kv_type = m->params.kv_type,
                        .n_threads = m->params.n_threads,
                };
                if (gpu->estimate(m, &range, FIT_N_CTX, 1) <= g.free_bytes)
                        break;
        }
        return n;
}

/* Splits the layers between the GPU backend (the first n_gpu_layers) and the CPU, and starts them. */
static int place_segments(EngineModel *m, QdError *err) {
        const EngineModelParams *p = &m->params;
        const BackendOps *gpu = NULL;
        uint32_t n_layer = m->cfg.n_layer, n_gpu = 0;
        int r;

        r = choose_gpu(p, &gpu, err);
        if (r < 0)
                return r;
        /* The best available backend for a model the GPU's cannot run is the CPU; one asked for by name
         * says why it cannot. */
        BackendRange all = {
                .l0 = 0,
                .l1 = n_layer,
                .n_batch = m->n_batch,
                .kv_type = p->kv_type,
                .n_threads = p->n_threads,
        };
        if (gpu && !p->backend && gpu->check && gpu->check(m, &all, NULL) < 0)
                gpu = NULL;
        if (gpu)
                n_gpu = p->n_gpu_layers < 0 ? fitting_layers(m, gpu)
                                            : MIN((uint32_t)p->n_gpu_layers, n_layer);

        struct {
                const BackendOps *ops;
                uint32_t l0, l1;
        } plan[MODEL_MAX_SEGMENTS];
        size_t n_plan = 0;
        if (n_gpu > 0)
                plan[n_plan++] = (typeof(plan[0])){ gpu, 0, n_gpu };
        if (n_gpu < n_layer || n_plan == 0)
                plan[n_plan++] = (typeof(plan[0])){ &backend_cpu_ops, n_gpu, n_layer };

        for (size_t i = 0; i < n_plan; i++) {
                BackendRange range = {
                        .l0 = plan[i].l0,
                        .l1 = plan[i].l1,
                        .n_batch = m->n_batch,
                        .kv_type = p->kv_type,
                        .n_threads = p->n_threads,
                };
                void *state;
                r = plan[i].ops->init(m, &range, &state, err);
                if (r < 0)
                        return r;
                m->segments[m->n_segments++] = (ModelSegment){ plan[i].ops, state, plan[i].l0, plan[i].l1 };
                if (plan[i].ops != &backend_cpu_ops) {
                        const BackendOps *ops = plan[i].ops;
                        m->info.n_gpu_layers += plan[i].l1 - plan[i].l0;
                        m->info.vram_bytes += ops->device_bytes ? ops->device_bytes(state)
                                                                : ops->estimate(m, &range, 0, 0);
                }
        }
        return 0;
}

static int model_load(Gguf *g, const EngineModelParams *p, EngineModel **ret, QdError *err) {
        EngineModel *m;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m) {
                gguf_free(g);
                return -ENOMEM;
        }
        atomic_init(&m->n_ref, 1);
        m->gguf = g;
        m->params = p ? *p : engine_model_params_default();
        if (m->params.kv_type != GGML_TYPE_F16 && m->params.kv_type != GGML_TYPE_F32 &&
            m->params.kv_type != GGML_TYPE_Q8_0) {
                r = qd_error_set(err, EINVAL, "The KV cache type must be f16, f32 or q8_0, not %s.",
                                 ggml_type_name(m->params.kv_type));
                model_free(m);
                return r;
        }
        if (m->params.cpu_isa >= _ENGINE_CPU_ISA_MAX || m->params.cpu_isa < -1 || m->params.n_threads > 1024) {
                r = qd_error_set(err, EINVAL, "Bad CPU parameters (instruction set %" PRIi32 ", %" PRIu32
                                 " threads).", m->params.cpu_isa, m->params.n_threads);
                model_free(m);
                return r;
        }
        m->n_batch = m->params.n_batch ? m->params.n_batch : DEFAULT_N_BATCH;
        m->params.backend = NULL; /* not kept: the caller's string */

        r = model_config_load(g, &m->cfg, &m->w, err);
        if (r < 0) {
                model_free(m);
                return r;
        }
        m->arch_name = strdup(model_arch_name(m->cfg.arch));
        if (!m->arch_name) {
                model_free(m);
                return -ENOMEM;
        }
        /* A file without tokenizer metadata (a test model, a bare weight file) still loads, for callers that
         * bring token ids; one whose tokenizer we cannot read does not, since nothing could be generated. */
        if (gguf_find_kv(g, "tokenizer.ggml.model")) {
                r = engine_vocab_new(g, &m->vocab, err);
                if (r < 0) {
                        model_free(m);
                        return r;
                }
                /* Fewer tokens than embedding rows is fine (padded matrices); more would make ids the model
                 * cannot take. */
                if (engine_vocab_n_tokens(m->vocab) > m->cfg.n_vocab) {
                        r = qd_error_set(err, EBADMSG, "The tokenizer has %" PRIu32 " tokens but the embedding "
                                         "only %" PRIu32 " rows.", engine_vocab_n_tokens(m->vocab), m->cfg.n_vocab);
                        model_free(m);
                        return r;
                }
        }

        uint64_t n_params = 0;
        for (uint64_t i = 0; i < g->n_tensors; i++)
                n_params += g->tensors[i].n_elements;
        m->info = (EngineModelInfo){
                .arch = m->arch_name,
                .n_vocab = m->cfg.n_vocab,
                .n_ctx_train = m->cfg.n_ctx_train,
                .n_embd = m->cfg.n_embd,
                .n_layer = m->cfg.n_layer,
                .n_head = m->cfg.n_head,
                .n_head_kv = m->cfg.n_head_kv,
                .n_ff = m->cfg.n_ff,
                .n_params = n_params,
                .file_size = g->size,
                .file_type = file_type_name(g),
        };

        EngineModelParams saved = m->params;
        m->params.backend = p ? p->backend : NULL;
        r = place_segments(m, err);
        m->params = saved;
        if (r < 0) {
                model_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

int engine_model_load(const char *path, const EngineModelParams *p, EngineModel **ret, QdError *err) {
        Gguf *g;
        int r;

        if (!path || !ret)
                return -EINVAL;
        r = gguf_open(path, &g, err);
        if (r < 0)
                return qd_error_set(err, r, "Failed to open model '%s': %s", path, strerror(-r));
        return model_load(g, p, ret, err);
}

int engine_model_load_fd(int fd, const EngineModelParams *p, EngineModel **ret, QdError *err) {
        Gguf *g;
        int r;

        if (fd < 0 || !ret)
                return -EINVAL;
        r = gguf_open_fd(fd, &g, err);
        if (r < 0)
                return qd_error_set(err, r, "Failed to open the model file: %s", strerror(-r));
        return model_load(g, p, ret, err);
}

EngineModel *engine_model_ref(EngineModel *m) {
        if (m)
                atomic_fetch_add(&m->n_ref, 1);
        return m;
}

EngineModel *engine_model_unref(EngineModel *m) {
        if (m && atomic_fetch_sub(&m->n_ref, 1) == 1)
                model_free(m);
        return NULL;
}

const EngineModelInfo *engine_model_info(const EngineModel *m) {
        return &m->info;
}

const EngineVocab *engine_model_vocab(const EngineModel *m) {
        return m->vocab;
}

const Gguf *engine_model_gguf(const EngineModel *m) {
        return m->gguf;
}

uint64_t engine_model_estimate(const EngineModelInfo *info, uint32_t kv_type, uint32_t n_ctx, uint32_t n_seq) {
        const GgmlTypeInfo *t = ggml_type_info(kv_type);
        uint64_t head_dim = info->n_head ? info->n_embd / info->n_head : 0;
        uint64_t kv_elems = 2ull * info->n_layer * n_ctx * info->n_head_kv * head_dim;
        uint64_t kv = t ? kv_elems / t->block_size * t->type_size : kv_elems * 2;
        uint64_t scratch = (uint64_t)DEFAULT_N_BATCH * (8ull * info->n_embd + 2ull * info->n_ff) * sizeof(float) +
                           (uint64_t)info->n_vocab * sizeof(float) * n_seq;

        return info->file_size + kv * n_seq + scratch;
}

/* Bytes of a tensor in the mapped file; 0 for an absent one. */
static uint64_t host_tensor_bytes(const Tensor *t) {
        return t->data ? t->row_size * t->ne1 : 0;
}

/* Host memory of layers [l0, n_layer) on the CPU backend: their weights as mapped, the embedding table
 * when l0 is 0 and the head, the CPU backend's KV caches and scratch; and the decoder's buffers, which
 * every split has. */
static uint64_t host_bytes(const EngineModel *m, uint32_t l0, uint32_t n_ctx, uint32_t n_seq) {
        const ModelConfig *c = &m->cfg;
        const ModelWeights *w = &m->w;
        uint64_t b = (uint64_t)m->n_batch * c->n_embd * sizeof(float) +
                     (uint64_t)MAX(n_seq, 1u) * c->n_vocab * sizeof(float);

        if (l0 >= c->n_layer)
                return b;
        BackendRange range = {
                .l0 = l0,
                .l1 = c->n_layer,
                .n_batch = m->n_batch,
                .kv_type = m->params.kv_type,
                .n_threads = m->params.n_threads,
        };
        b += backend_cpu_ops.estimate(m, &range, n_ctx, n_seq);
        if (l0 == 0)
                b += host_tensor_bytes(&w->token_embd);
        b += host_tensor_bytes(&w->output_norm);
        if (w->output.data != w->token_embd.data || l0 > 0)
                b += host_tensor_bytes(&w->output);
        for (uint32_t l = l0; l < c->n_layer; l++) {
                const LayerWeights *lw = &w->layers[l];
                const Tensor *ts[] = { &lw->attn_norm, &lw->wq, &lw->wk, &lw->wv, &lw->bq, &lw->bk, &lw->bv,
                                       &lw->wo, &lw->ffn_norm, &lw->w_gate, &lw->w_up, &lw->w_down };
                for (size_t i = 0; i < ELEMENTSOF(ts); i++)
                        b += host_tensor_bytes(ts[i]);
        }
        return b;
}

int engine_model_estimate_splits(const Gguf *g, const EngineModelParams *p, uint32_t n_ctx, uint32_t n_seq,
                                 EngineEstimate **ret, size_t *ret_n, QdError *err) {
        _cleanup_free_ EngineEstimate *e = NULL;
        const BackendOps *gpu = NULL;
        EngineModel m = {};
        size_t n;
        int r;

        if (!g || !ret || !ret_n || n_ctx == 0 || n_seq == 0)
                return qd_error_set(err, EINVAL, "Bad arguments to the estimate.");
        m.gguf = (Gguf *)g;
        m.params = p ? *p : engine_model_params_default();
        m.n_batch = m.params.n_batch ? m.params.n_batch : DEFAULT_N_BATCH;
        r = choose_gpu(&m.params, &gpu, err);
        if (r < 0)
                return r;
        m.params.backend = NULL;
        r = model_config_load(g, &m.cfg, &m.w, err);
        if (r < 0)
                return r;
        /* A model the GPU backend cannot run at all goes on the CPU, as loading would have to. */
        BackendRange all = {
                .l0 = 0,
                .l1 = m.cfg.n_layer,
                .n_batch = m.n_batch,
                .kv_type = m.params.kv_type,
                .n_threads = m.params.n_threads,
        };
        if (gpu && gpu->check && gpu->check(&m, &all, NULL) < 0)
                gpu = NULL;

        n = gpu ? (size_t)m.cfg.n_layer + 1 : 1;
        e = calloc(n, sizeof(EngineEstimate));
        if (!e) {
                free(m.w.layers);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                e[i].n_gpu_layers = (uint32_t)i;
                e[i].ram_bytes = host_bytes(&m, (uint32_t)i, n_ctx, n_seq);
                if (i == 0)
                        continue;
                BackendRange range = {
                        .l0 = 0,
                        .l1 = (uint32_t)i,
                        .n_batch = m.n_batch,
                        .kv_type = m.params.kv_type,
                        .n_threads = m.params.n_threads,
                };
                uint64_t fixed = gpu->estimate(&m, &range, 0, 0);
                e[i].vram_bytes = gpu->estimate(&m, &range, n_ctx, n_seq);
                e[i].vram_kv_bytes = e[i].vram_bytes - MIN(fixed, e[i].vram_bytes);
        }
        free(m.w.layers);
        *ret = TAKE_PTR(e);
        *ret_n = n;
        return 0;
}

/* ---- sequences ---- */

int engine_seq_new(EngineModel *m, uint32_t n_ctx, EngineSeq **ret) {
        EngineSeq *s;
        int r;

        if (!m || !ret || n_ctx == 0)
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->model = engine_model_ref(m);
        s->n_ctx = n_ctx;
        for (size_t i = 0; i < m->n_segments; i++) {
                r = m->segments[i].ops->kv_new(m->segments[i].state, n_ctx, &s->kv[i]);
                if (r < 0) {
                        engine_seq_free(s);
                        return r;
                }
        }
        *ret = s;
        return 0;
}

EngineSeq *engine_seq_free(EngineSeq *s) {
        if (!s)
                return NULL;
        for (size_t i = s->model->n_segments; i > 0; i--)
                if (s->kv[i - 1])
                        s->model->segments[i - 1].ops->kv_free(s->model->segments[i - 1].state, s->kv[i - 1]);
        engine_model_unref(s->model);
        free(s);
        return NULL;
}

uint32_t engine_seq_pos(const EngineSeq *s) {
        return s->pos;
}

uint32_t engine_seq_n_ctx(const EngineSeq *s) {
        return s->n_ctx;
}

int engine_seq_truncate(EngineSeq *s, uint32_t pos) {
        if (!s || pos > s->pos)
                return -EINVAL;
        s->pos = pos;
        return 0;
}

/* ---- decoding ---- */

/*
 * Runs one backend batch of rows through every segment. spans[i].kv is filled per segment from seqs. out gets
 * n_out rows of the requested output.
 */
static int run_batch(EngineModel *m, EngineSeq *const *seqs, BackendSpan *spans, uint32_t n_spans,
                     BackendBatch *batch, float *x, float *out, const bool *cancel) {
        for (size_t i = 0; i < m->n_segments; i++) {
                for (uint32_t j = 0; j < n_spans; j++)
                        spans[j].kv = seqs[j]->kv[i];
                int r = m->segments[i].ops->forward(m->segments[i].state, batch, x, out, cancel);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int check_tokens(const EngineModel *m, const int32_t *tokens, uint32_t n, QdError *err) {
        for (uint32_t i = 0; i < n; i++)
                if (tokens[i] < 0 || (uint32_t)tokens[i] >= m->cfg.n_vocab)
                        return qd_error_set(err, EINVAL, "Token id %" PRIi32 " is outside the model's vocabulary "
                                            "of %" PRIu32 ".", tokens[i], m->cfg.n_vocab);
        return 0;
}

/*
 * The general driver: appends n_tokens[i] tokens to seqs[i] in chunks of at most n_batch rows (a sequence's
 * tokens may straddle chunks), writing for each sequence either its last row's output or, with all_logits,
 * every row's. out[i] is the output of sequence i.
 */
static int decode_general(EngineModel *m, EngineSeq **seqs, const int32_t *const *tokens, const uint32_t *n_tokens,
                          size_t n_seqs, float **out, bool all_rows, BackendOutput output, const bool *cancel,
                          QdError *err) {
        uint32_t n_out_width = output == BACKEND_OUTPUT_LOGITS ? m->cfg.n_vocab : m->cfg.n_embd;
        uint32_t nb = m->n_batch;
        _cleanup_free_ float *x = NULL, *tmp_out = NULL;
        _cleanup_free_ int32_t *btok = NULL;
        _cleanup_free_ BackendSpan *spans = NULL;
        _cleanup_free_ EngineSeq **span_seqs = NULL;
        _cleanup_free_ uint32_t *out_rows = NULL, *out_seq = NULL, *out_idx = NULL, *done = NULL;
        int r;

        if (!m || (!seqs && n_seqs) || (!tokens && n_seqs) || (!n_tokens && n_seqs) || !out)
                return qd_error_set(err, EINVAL, "Bad arguments to the decoder.");
        for (size_t i = 0; i < n_seqs; i++) {
                if (!seqs[i] || seqs[i]->model != m || (n_tokens[i] && (!tokens[i] || !out[i])))
                        return qd_error_set(err, EINVAL, "Bad arguments to the decoder.");
                for (size_t j = 0; j < i; j++)
                        if (seqs[j] == seqs[i])
                                return qd_error_set(err, EINVAL, "A sequence appears twice in one batch.");
                if ((uint64_t)seqs[i]->pos + n_tokens[i] > seqs[i]->n_ctx)
                        return qd_error_set(err, ENOSPC, "The sequence would grow to %" PRIu64 " tokens, past its "
                                            "context of %" PRIu32 ".", (uint64_t)seqs[i]->pos + n_tokens[i],
                                            seqs[i]->n_ctx);
                r = check_tokens(m, tokens[i], n_tokens[i], err);
                if (r < 0)
                        return r;
        }

        /* A chunk outputs at most one row per sequence, or per token with all_rows: sized to that, not to
         * n_batch × n_vocab, which for one generated token would be a needless 100 MB allocation. */
        uint64_t total = 0;
        for (size_t i = 0; i < n_seqs; i++)
                total += n_tokens[i];
        size_t max_out = (size_t)MIN((uint64_t)nb, all_rows ? total : (uint64_t)n_seqs);
        size_t max_rows = (size_t)MIN((uint64_t)nb, total);
        x = malloc(MAX(max_rows, 1u) * m->cfg.n_embd * sizeof(float));
        tmp_out = malloc(MAX(max_out, 1u) * n_out_width * sizeof(float));
        btok = malloc(nb * sizeof(int32_t));
        spans = calloc(n_seqs ? n_seqs : 1, sizeof(BackendSpan));
        span_seqs = calloc(n_seqs ? n_seqs : 1, sizeof(EngineSeq *));
        out_rows = malloc(nb * sizeof(uint32_t));
        out_seq = malloc(nb * sizeof(uint32_t));
        out_idx = malloc(nb * sizeof(uint32_t));
        done = calloc(n_seqs ? n_seqs : 1, sizeof(uint32_t)); /* tokens of each sequence already run */
        if (!x || !tmp_out || !btok || !spans || !span_seqs || !out_rows || !out_seq || !out_idx || !done)
                return -ENOMEM;

        /* Positions move only when everything succeeded, so that an error leaves the sequences as they were. */
        size_t cur = 0;
        for (;;) {
                uint32_t n_rows = 0, n_spans = 0, n_out = 0;
                while (cur < n_seqs && done[cur] == n_tokens[cur])
                        cur++;
                if (cur == n_seqs)
                        break;
                for (size_t i = cur; i < n_seqs && n_rows < nb; i++) {
                        uint32_t take = MIN(n_tokens[i] - done[i], nb - n_rows);
                        if (take == 0)
                                continue;
                        spans[n_spans] = (BackendSpan){ .row0 = n_rows, .n = take, .pos0 = seqs[i]->pos + done[i] };
                        span_seqs[n_spans++] = seqs[i];
                        memcpy(btok + n_rows, tokens[i] + done[i], take * sizeof(int32_t));
                        for (uint32_t t = 0; t < take; t++) {
                                bool last = done[i] + t + 1 == n_tokens[i];
                                if (all_rows || last) {
                                        out_rows[n_out] = n_rows + t;
                                        out_seq[n_out] = (uint32_t)i;
                                        out_idx[n_out++] = done[i] + t;
                                }
                        }
                        n_rows += take;
                        done[i] += take;
                }
                BackendBatch batch = {
                        .n_tokens = n_rows,
                        .tokens = btok,
                        .n_spans = n_spans,
                        .spans = spans,
                        .n_out = n_out,
                        .out_rows = out_rows,
                        .output = output,
                };
                r = run_batch(m, span_seqs, spans, n_spans, &batch, x, tmp_out, cancel);
                if (r == -ECANCELED)
                        return qd_error_set(err, ECANCELED, "Decoding was cancelled.");
                if (r < 0)
                        return qd_error_set(err, r, "The %s backend failed: %s",
                                            m->segments[m->n_segments - 1].ops->name, strerror(-r));
                for (uint32_t j = 0; j < n_out; j++) {
                        float *dst = out[out_seq[j]] + (all_rows ? (size_t)out_idx[j] * n_out_width : 0);
                        memcpy(dst, tmp_out + (size_t)j * n_out_width, n_out_width * sizeof(float));
                }
        }
        for (size_t i = 0; i < n_seqs; i++)
                seqs[i]->pos += n_tokens[i];
        return 0;
}

int engine_decode(EngineModel *m, EngineSeq **seqs, const int32_t *const *tokens, const uint32_t *n_tokens,
                  size_t n_seqs, float **logits, const bool *cancel, QdError *err) {
        return decode_general(m, seqs, tokens, n_tokens, n_seqs, logits, false, BACKEND_OUTPUT_LOGITS, cancel, err);
}

int engine_decode_all(EngineModel *m, EngineSeq *seq, const int32_t *tokens, uint32_t n_tokens, float *logits,
                      QdError *err) {
        if (!seq || !logits)
                return qd_error_set(err, EINVAL, "Bad arguments to the decoder.");
        return decode_general(m, &seq, &tokens, &n_tokens, 1, &logits, true, BACKEND_OUTPUT_LOGITS, NULL, err);
}

int engine_embed(EngineModel *m, const int32_t *tokens, uint32_t n_tokens, float *ret, QdError *err) {
        _cleanup_(engine_seq_freep) EngineSeq *seq = NULL;
        _cleanup_free_ float *hidden = NULL;
        uint32_t d;
        int r;

        if (!m || !tokens || n_tokens == 0 || !ret)
                return qd_error_set(err, EINVAL, "Nothing to embed.");
        d = m->cfg.n_embd;
        r = engine_seq_new(m, n_tokens, &seq);
        if (r < 0)
                return qd_error_set(err, r, "Failed to allocate a sequence of %" PRIu32 " tokens.", n_tokens);
        hidden = malloc((size_t)n_tokens * d * sizeof(float));
        if (!hidden)
                return -ENOMEM;
        r = decode_general(m, &seq, &tokens, &n_tokens, 1, &hidden, true, BACKEND_OUTPUT_HIDDEN, NULL, err);
        if (r < 0)
                return r;

        double norm = 0;
        for (uint32_t i = 0; i < d; i++) {
                double sum = 0;
                for (uint32_t t = 0; t < n_tokens; t++)
                        sum += hidden[(size_t)t * d + i];
                ret[i] = (float)(sum / n_tokens);
                norm += (double)ret[i] * ret[i];
        }
        norm = sqrt(norm);
        for (uint32_t i = 0; i < d; i++)
                ret[i] = norm > 0 ? (float)(ret[i] / norm) : 0.0f;
        return 0;
}
