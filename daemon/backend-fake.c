/* SPDX-License-Identifier: MIT */
/*
 * A deterministic stand-in inference engine behind BackendOps, for the scheduler's and the socket's tests
 * (quantd --backend=fake). Its "model" is any file of Key=value lines:
 *
 *   size=BYTES       weights to budget for (default 1000000)
 *   layers=N         layers (default 4)
 *   layer_size=BYTES weights of one layer (default size / (layers + 1)); the rest of size is the embedding
 *                    and the head, which go to the GPU with the last layer
 *   gpu_scratch=BYTES GPU memory a model with any layer on the GPU takes besides weights and KV (default 0)
 *   hidden_vram=BYTES GPU memory such a model takes that the estimate does not know of (default 0)
 *   delay_us=N       time one forward step takes, whatever the batch size (default 0)
 *   eos_at=N         the end-of-generation token comes at position N (default: never)
 *   fail_load=1      loading fails with EBADMSG
 *   gpu_fails=1      loading with layers on the GPU fails with EOPNOTSUPP (a backend that cannot run it)
 *
 * The KV cache takes 64 bytes per position of each sequence, spread evenly over the layers.
 *
 * A simulated GPU, for the scheduler's placement tests on machines without one, comes from the environment:
 * QUANTD_FAKE_GPU="total=BYTES,free=BYTES" (free defaults to total; what is missing from it is another
 * process's). Loading a model with GPU layers takes its weights and scratch from the free memory, each
 * sequence its KV cache, and a load or sequence that does not fit fails with ENOSPC, as cudaMalloc() would.
 * Without the variable there is no GPU.
 *
 * Tokens are bytes (0–255) plus BOS (256) and EOS (257). The next token depends only on the sequence's last
 * token and position, so a sequence generates the same text alone or batched with others. Every tenth
 * position starts the two-byte character "é", to exercise UTF-8 assembly across tokens.
 */

#include <inttypes.h>
#include <math.h>
#include <pthread.h>

#include "daemon.h"

#define FAKE_BOS 256
#define FAKE_EOS 257
#define FAKE_VOCAB 258
#define FAKE_KV_PER_POS 64

typedef struct FakeModel {
        uint64_t size;
        uint64_t delay_us;
        uint64_t eos_at;
        uint32_t n_layer;
        uint64_t layer_size;
        uint64_t gpu_scratch;
        uint64_t hidden_vram;
        bool gpu_fails;
        uint32_t n_gpu_layers; /* loaded: the first layers on the simulated GPU */
        uint64_t vram;         /* loaded: weights and scratch on the simulated GPU */
} FakeModel;

typedef struct FakeSeq {
        FakeModel *model;
        uint32_t n_ctx;
        uint32_t pos;
        int32_t last;
        uint64_t vram; /* its KV cache's share on the simulated GPU */
} FakeSeq;

/* The simulated GPU: one per process, as a device is. Loads and sequences run on the executor, gpu_info on
 * the main thread. */
static pthread_mutex_t fake_gpu_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t fake_gpu_used; /* protected by fake_gpu_lock */

/* total and free (before our models) of QUANTD_FAKE_GPU; -ENODEV without it, -EINVAL when it is malformed.
 */
static int fake_gpu_config(uint64_t *ret_total, uint64_t *ret_free) {
        const char *e = getenv("QUANTD_FAKE_GPU");
        uint64_t total = 0, free_b = UINT64_MAX;

        if (!e || !*e)
                return -ENODEV;
        _cleanup_free_ char *copy = strdup(e);
        if (!copy)
                return -ENOMEM;
        char *save = NULL;
        for (char *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(kv, '=');
                uint64_t v;
                if (!eq || daemon_parse_bytes(eq + 1, &v) < 0)
                        return -EINVAL;
                *eq = 0;
                if (streq(kv, "total"))
                        total = v;
                else if (streq(kv, "free"))
                        free_b = v;
                else
                        return -EINVAL;
        }
        if (total == 0)
                return -EINVAL;
        *ret_total = total;
        *ret_free = MIN(free_b, total);
        return 0;
}

/* Takes bytes of the simulated GPU; -ENOSPC when they are not free. */
static int fake_gpu_alloc(uint64_t bytes) {
        uint64_t total, free_b;
        int k = fake_gpu_config(&total, &free_b);

        if (bytes == 0)
                return 0;
        if (k < 0)
                return -ENODEV;
        pthread_mutex_lock(&fake_gpu_lock);
        if (fake_gpu_used + bytes > free_b)
                k = -ENOSPC;
        else
                fake_gpu_used += bytes;
        pthread_mutex_unlock(&fake_gpu_lock);
        return k;
}

static void fake_gpu_release(uint64_t bytes) {
        pthread_mutex_lock(&fake_gpu_lock);
        fake_gpu_used -= MIN(bytes, fake_gpu_used);
        pthread_mutex_unlock(&fake_gpu_lock);
}

static int fake_gpu_info(BackendGpu *ret) {
        uint64_t total, free_b;
        int k = fake_gpu_config(&total, &free_b);

        if (k < 0)
                return k;
        pthread_mutex_lock(&fake_gpu_lock);
        *ret = (BackendGpu){.free = free_b - MIN(fake_gpu_used, free_b), .total = total};
        pthread_mutex_unlock(&fake_gpu_lock);
        snprintf(ret->name, sizeof(ret->name), "Fake GPU");
        return 0;
}

/* Weights of the embedding and head, which go to the GPU with the last layer. */
static uint64_t fake_rest_size(const FakeModel *m) {
        return m->size - MIN((uint64_t)m->n_layer * m->layer_size, m->size);
}

/* Weights on the GPU with the first n layers there. */
static uint64_t fake_gpu_weights(const FakeModel *m, uint32_t n) {
        uint64_t w = (uint64_t)n * m->layer_size + (n == m->n_layer ? fake_rest_size(m) : 0);
        return MIN(w, m->size);
}

/* Weights and scratch on the GPU with the first n layers there. */
static uint64_t fake_vram_fixed(const FakeModel *m, uint32_t n) {
        return n == 0 ? 0 : fake_gpu_weights(m, n) + m->gpu_scratch;
}

/* The KV cache of layers [l0, l1) for one sequence of n_ctx positions. */
static uint64_t fake_kv(const FakeModel *m, uint32_t l0, uint32_t l1, uint32_t n_ctx) {
        return (uint64_t)n_ctx * FAKE_KV_PER_POS * (l1 - l0) / m->n_layer;
}

static int fake_read(const char *path, FakeModel *ret, bool *ret_fail, QdError *err) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[256];

        if (!f)
                return qd_error_set(err, errno, "Failed to open %s: %s", path, strerror(errno));
        uint64_t layer_size = UINT64_MAX;
        *ret = (FakeModel){.size = 1000000, .n_layer = 4};
        *ret_fail = false;
        while (fgets(line, sizeof(line), f)) {
                uint64_t v;
                line[strcspn(line, "\n")] = 0;
                char *eq = strchr(line, '=');
                if (!eq || safe_atou64(eq + 1, &v) < 0)
                        continue;
                *eq = 0;
                if (streq(line, "size"))
                        ret->size = v;
                else if (streq(line, "delay_us"))
                        ret->delay_us = v;
                else if (streq(line, "eos_at"))
                        ret->eos_at = v;
                else if (streq(line, "fail_load"))
                        *ret_fail = v != 0;
                else if (streq(line, "layers") && v > 0 && v <= 1024)
                        ret->n_layer = (uint32_t)v;
                else if (streq(line, "layer_size"))
                        layer_size = v;
                else if (streq(line, "gpu_scratch"))
                        ret->gpu_scratch = v;
                else if (streq(line, "hidden_vram"))
                        ret->hidden_vram = v;
                else if (streq(line, "gpu_fails"))
                        ret->gpu_fails = v != 0;
        }
        ret->layer_size = layer_size != UINT64_MAX ? layer_size : ret->size / (ret->n_layer + 1);
        return 0;
}

static int fake_estimate(const char *path, uint32_t n_ctx, uint32_t n_seq, BackendSplit **ret, size_t *ret_n,
                         QdError *err) {
        uint64_t total, free_b;
        FakeModel m;
        bool fail;
        int k = fake_read(path, &m, &fail, err);
        if (k < 0)
                return k;
        size_t n = fake_gpu_config(&total, &free_b) >= 0 ? (size_t)m.n_layer + 1 : 1;
        BackendSplit *l = calloc(n, sizeof(BackendSplit));
        if (!l)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++) {
                uint64_t kv_gpu = fake_kv(&m, 0, i, n_ctx) * n_seq;
                l[i] = (BackendSplit){
                        .n_gpu_layers = i,
                        .ram = m.size - fake_gpu_weights(&m, i) + fake_kv(&m, i, m.n_layer, n_ctx) * n_seq,
                        .vram = fake_vram_fixed(&m, i) + kv_gpu,
                        .vram_kv = kv_gpu,
                };
        }
        *ret = l;
        *ret_n = n;
        return 0;
}

static int fake_load(const char *path, const BackendLoadParams *p, void **ret_model, QdError *err) {
        _cleanup_free_ FakeModel *m = calloc(1, sizeof(*m));
        bool fail;
        int k;

        if (!m)
                return -ENOMEM;
        k = fake_read(path, m, &fail, err);
        if (k < 0)
                return k;
        if (fail)
                return qd_error_set(err, EBADMSG, "%s is marked as a model that fails to load.", path);
        m->n_gpu_layers = MIN(p->n_gpu_layers, m->n_layer);
        if (m->n_gpu_layers > 0 && m->gpu_fails)
                return qd_error_set(err, EOPNOTSUPP, "%s is marked as a model the GPU cannot run.", path);
        m->vram = fake_vram_fixed(m, m->n_gpu_layers) + (m->n_gpu_layers > 0 ? m->hidden_vram : 0);
        k = fake_gpu_alloc(m->vram);
        if (k == -ENOSPC)
                return qd_error_set(err, ENOSPC, "The GPU ran out of memory loading %" PRIu32 " layers.",
                                    m->n_gpu_layers);
        if (k < 0)
                return qd_error_set(err, EOPNOTSUPP, "There is no GPU for %" PRIu32 " layers.",
                                    m->n_gpu_layers);
        *ret_model = TAKE_PTR(m);
        return 0;
}

static void fake_unload(void *model) {
        FakeModel *m = model;
        if (!m)
                return;
        fake_gpu_release(m->vram);
        free(m);
}

static void fake_info(void *model, BackendModelInfo *ret) {
        FakeModel *m = model;
        *ret = (BackendModelInfo){
                .n_vocab = FAKE_VOCAB,
                .n_ctx_train = 4096,
                .n_embd = 8,
                .size = m->size,
                .arch = "fake",
                .file_type = "F32",
                .n_layer = m->n_layer,
                .n_gpu_layers = m->n_gpu_layers,
                .vram = m->vram,
        };
}

static int fake_tokenize(void *model, const char *text, size_t len, bool add_special, int32_t **ret,
                         size_t *ret_n) {
        int32_t *t = malloc(sizeof(int32_t) * (len + 1));
        size_t n = 0;

        if (!t)
                return -ENOMEM;
        if (add_special)
                t[n++] = FAKE_BOS;
        for (size_t i = 0; i < len; i++)
                t[n++] = (uint8_t)text[i];
        *ret = t;
        *ret_n = n;
        return 0;
}

static int fake_token_piece(void *model, int32_t token, Buf *out) {
        if (token < 0 || token >= FAKE_VOCAB)
                return -EINVAL;
        if (token >= 256)
                return 0;
        uint8_t b = (uint8_t)token;
        return buf_append(out, &b, 1);
}

static bool fake_is_eog(void *model, int32_t token) {
        return token == FAKE_EOS;
}

static int fake_seq_new(void *model, uint32_t n_ctx, void **ret) {
        FakeModel *m = model;
        FakeSeq *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->model = m;
        s->n_ctx = n_ctx;
        s->last = FAKE_BOS;
        s->vram = fake_kv(m, 0, m->n_gpu_layers, n_ctx);
        if (fake_gpu_alloc(s->vram) < 0) {
                free(s);
                return -ENOSPC;
        }
        *ret = s;
        return 0;
}

static void fake_seq_free(void *seq) {
        FakeSeq *s = seq;
        if (!s)
                return;
        fake_gpu_release(s->vram);
        free(s);
}

static int32_t fake_next(const FakeModel *m, const FakeSeq *s) {
        if (m->eos_at > 0 && s->pos >= m->eos_at)
                return FAKE_EOS;
        if (s->last == 0xc3)
                return 0xa9;
        if (s->pos % 10 == 9)
                return 0xc3;
        return 'a' + (int32_t)(((uint32_t)s->last * 31U + s->pos * 17U) % 26U);
}

static int fake_decode(void *model, void **seqs, const int32_t *const *tokens, const uint32_t *n_tokens,
                       size_t n, float **logits, const bool *cancel, QdError *err) {
        FakeModel *m = model;

        for (size_t i = 0; i < n; i++) {
                FakeSeq *s = seqs[i];
                if (s->pos + n_tokens[i] > s->n_ctx)
                        return qd_error_set(err, ENOSPC, "The sequence's context of %" PRIu32 " is full.",
                                            s->n_ctx);
                for (uint32_t j = 0; j < n_tokens[i]; j++) {
                        if (tokens[i][j] < 0 || tokens[i][j] >= FAKE_VOCAB)
                                return qd_error_set(err, EINVAL, "Token %" PRId32 " is out of range.",
                                                    tokens[i][j]);
                        s->last = tokens[i][j];
                        s->pos++;
                }
                for (int32_t t = 0; t < FAKE_VOCAB; t++)
                        logits[i][t] = 0.0f;
                logits[i][fake_next(m, s)] = 10.0f;
        }
        if (m->delay_us > 0)
                usleep((useconds_t)m->delay_us);
        return 0;
}

static int fake_sampler_new(void *model, const SamplerParams *p, void **ret) {
        /* Greedy whatever the parameters: the fake's logits have one peak. */
        *ret = model;
        return 0;
}

static void fake_sampler_free(void *sampler) {
}

static int32_t fake_sample(void *sampler, const float *logits) {
        int32_t best = 0;
        for (int32_t t = 1; t < FAKE_VOCAB; t++)
                if (logits[t] > logits[best])
                        best = t;
        return best;
}

/* A unit vector from the tokens' bytes, so that equal inputs embed equally and different ones differ. */
static int fake_embed(void *model, const int32_t *tokens, uint32_t n, float *ret, QdError *err) {
        double norm = 0;

        for (int j = 0; j < 8; j++)
                ret[j] = 0.0f;
        for (uint32_t i = 0; i < n; i++)
                ret[(uint32_t)tokens[i] % 8] += 1.0f + (float)(i % 3);
        for (int j = 0; j < 8; j++)
                norm += (double)ret[j] * ret[j];
        for (int j = 0; j < 8; j++)
                ret[j] = (float)(ret[j] / sqrt(norm));
        return 0;
}

const BackendOps backend_fake_ops = {
        .name = "fake",
        .estimate = fake_estimate,
        .gpu_info = fake_gpu_info,
        .load = fake_load,
        .unload = fake_unload,
        .info = fake_info,
        .tokenize = fake_tokenize,
        .token_piece = fake_token_piece,
        .is_eog = fake_is_eog,
        .seq_new = fake_seq_new,
        .seq_free = fake_seq_free,
        .decode = fake_decode,
        .sampler_new = fake_sampler_new,
        .sampler_free = fake_sampler_free,
        .sample = fake_sample,
        .embed = fake_embed,
};
