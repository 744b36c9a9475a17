/* SPDX-License-Identifier: MIT */
/*
 * A deterministic stand-in inference engine behind BackendOps, for the scheduler's and the socket's tests
 * (quantd --backend=fake). Its "model" is any file of Key=value lines:
 *
 *   size=BYTES      weights to budget for (default 1000000)
 *   delay_us=N      time one forward step takes, whatever the batch size (default 0)
 *   eos_at=N        the end-of-generation token comes at position N (default: never)
 *   fail_load=1     loading fails with EBADMSG
 *
 * Tokens are bytes (0–255) plus BOS (256) and EOS (257). The next token depends only on the sequence's last
 * token and position, so a sequence generates the same text alone or batched with others. Every tenth
 * position starts the two-byte character "é", to exercise UTF-8 assembly across tokens.
 */

#include <inttypes.h>
#include <math.h>

#include "daemon.h"

#define FAKE_BOS 256
#define FAKE_EOS 257
#define FAKE_VOCAB 258

typedef struct FakeModel {
        uint64_t size;
        uint64_t delay_us;
        uint64_t eos_at;
} FakeModel;

typedef struct FakeSeq {
        uint32_t n_ctx;
        uint32_t pos;
        int32_t last;
} FakeSeq;

static int fake_read(const char *path, FakeModel *ret, bool *ret_fail, QdError *err) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[256];

        if (!f)
                return qd_error_set(err, errno, "Failed to open %s: %s", path, strerror(errno));
        *ret = (FakeModel){.size = 1000000};
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
        }
        return 0;
}

static int fake_estimate(const char *path, uint32_t n_ctx, uint32_t n_seq, uint64_t *ret, QdError *err) {
        FakeModel m;
        bool fail;
        int k = fake_read(path, &m, &fail, err);
        if (k < 0)
                return k;
        *ret = m.size + (uint64_t)n_ctx * n_seq * 64;
        return 0;
}

static int fake_load(const char *path, unsigned threads, void **ret_model, QdError *err) {
        FakeModel *m = calloc(1, sizeof(*m));
        bool fail;
        int k;

        if (!m)
                return -ENOMEM;
        k = fake_read(path, m, &fail, err);
        if (k >= 0 && fail)
                k = qd_error_set(err, EBADMSG, "%s is marked as a model that fails to load.", path);
        if (k < 0) {
                free(m);
                return k;
        }
        *ret_model = m;
        return 0;
}

static void fake_unload(void *model) {
        free(model);
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
        FakeSeq *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->n_ctx = n_ctx;
        s->last = FAKE_BOS;
        *ret = s;
        return 0;
}

static void fake_seq_free(void *seq) {
        free(seq);
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
