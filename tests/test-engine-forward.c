/* SPDX-License-Identifier: MIT */
/*
 * The forward pass on the real stories260K model: greedy decoding from BOS must equal the golden ids that an
 * independent numpy implementation produced, with every kernel set, KV cache type and thread count; batched
 * prompts must give the logits of token-by-token decoding; and every error path of loading and decoding.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <fcntl.h>
#include <math.h>

#include "engine.h"

#define N_GOLDEN 80

static int32_t golden[N_GOLDEN];

static char *model_path(void) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        return strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
}

static int setup(void **state) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.golden", dir ? dir : "../shared/models");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[4096];
        int n = 0;

        if (!f) {
                fprintf(stderr, "# cannot open %s\n", path);
                return -1;
        }
        while (fgets(line, sizeof(line), f) && n == 0) {
                if (line[0] == '#')
                        continue;
                char *p = line, *end;
                while (n < N_GOLDEN) {
                        long v = strtol(p, &end, 10);
                        if (end == p)
                                break;
                        golden[n++] = (int32_t)v;
                        p = end;
                }
        }
        return n == N_GOLDEN ? 0 : -1;
}

static EngineModel *load(EngineCpuIsa isa, uint32_t kv_type, uint32_t n_threads, uint32_t n_batch) {
        _cleanup_free_ char *path = model_path();
        EngineModelParams p = engine_model_params_default();
        EngineModel *m = NULL;
        QdError err = {};

        p.backend = "cpu";
        p.cpu_isa = isa;
        p.kv_type = kv_type;
        p.n_threads = n_threads;
        p.n_batch = n_batch;
        if (engine_model_load(path, &p, &m, &err) < 0)
                fail_msg("loading %s: %s", path, err.msg);
        return m;
}

static int32_t argmax(const float *v, uint32_t n) {
        uint32_t best = 0;

        for (uint32_t i = 1; i < n; i++)
                if (v[i] > v[best])
                        best = i;
        return (int32_t)best;
}

static void greedy(EngineModel *m, int32_t *out, int n) {
        _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
        uint32_t n_vocab = engine_model_info(m)->n_vocab;
        _cleanup_free_ float *logits = malloc(n_vocab * sizeof(float));
        int32_t tok = 1; /* BOS */
        QdError err = {};

        assert_non_null(logits);
        assert_int_equal(engine_seq_new(m, 256, &s), 0);
        for (int i = 0; i < n; i++) {
                const int32_t *tp = &tok;
                uint32_t one = 1;
                if (engine_decode(m, &s, &tp, &one, 1, &logits, NULL, &err) < 0)
                        fail_msg("decode: %s", err.msg);
                out[i] = tok = argmax(logits, n_vocab);
        }
        assert_int_equal(engine_seq_pos(s), n);
}

static void test_golden_all_kernel_sets(void **state) {
        for (int isa = 0; isa <= (int)engine_cpu_isa_best(); isa++)
                for (int kv = 0; kv < 2; kv++)
                        for (uint32_t threads = 1; threads <= 2; threads++) {
                                _cleanup_(engine_model_unrefp) EngineModel *m =
                                        load((EngineCpuIsa)isa, kv ? GGML_TYPE_F32 : GGML_TYPE_F16, threads, 512);
                                int32_t ids[N_GOLDEN];
                                greedy(m, ids, N_GOLDEN);
                                for (int i = 0; i < N_GOLDEN; i++)
                                        if (ids[i] != golden[i])
                                                fail_msg("%s, kv %s, %u threads: token %d is %d, golden %d",
                                                         engine_cpu_isa_name((EngineCpuIsa)isa), kv ? "f32" : "f16",
                                                         threads, i, ids[i], golden[i]);
                        }
}

static void test_model_info(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(engine_cpu_isa_best(), GGML_TYPE_F16, 1, 512);
        const EngineModelInfo *info = engine_model_info(m);

        assert_string_equal(info->arch, "llama");
        assert_int_equal(info->n_vocab, 512);
        assert_int_equal(info->n_embd, 64);
        assert_int_equal(info->n_layer, 5);
        assert_int_equal(info->n_head, 8);
        assert_int_equal(info->n_head_kv, 4);
        assert_int_equal(info->n_ff, 172);
        assert_string_equal(info->file_type, "F32");
        assert_true(info->n_params > 250000 && info->n_params < 300000);
        assert_int_equal(info->file_size, engine_model_gguf(m)->size);
        assert_true(engine_model_estimate(info, GGML_TYPE_F16, 256, 1) > info->file_size);
        assert_true(engine_model_estimate(info, GGML_TYPE_F32, 256, 1) >
                    engine_model_estimate(info, GGML_TYPE_F16, 256, 1));
        /* The references keep the model alive. */
        EngineModel *extra = engine_model_ref(m);
        assert_ptr_equal(extra, m);
        assert_null(engine_model_unref(extra));
        assert_null(engine_model_unref(NULL));
}

static float max_rel_diff(const float *a, const float *b, size_t n) {
        float amax = 0, dmax = 0;

        for (size_t i = 0; i < n; i++) {
                amax = fmaxf(amax, fabsf(b[i]));
                dmax = fmaxf(dmax, fabsf(a[i] - b[i]));
        }
        return dmax / amax;
}

/* A prompt in one batch, in chunks smaller than the prompt, and token by token give the same logits. */
static void test_batch_matches_sequential(void **state) {
        const uint32_t n = 40, nv = 512;
        _cleanup_free_ float *seq_logits = malloc(n * nv * sizeof(float));
        _cleanup_free_ float *all = malloc(n * nv * sizeof(float));
        QdError err = {};

        assert_non_null(seq_logits);
        assert_non_null(all);
        {
                _cleanup_(engine_model_unrefp) EngineModel *m = load(engine_cpu_isa_best(), GGML_TYPE_F32, 2, 512);
                _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
                assert_int_equal(engine_seq_new(m, 64, &s), 0);
                for (uint32_t i = 0; i < n; i++) {
                        const int32_t *tp = &golden[i];
                        uint32_t one = 1;
                        float *l = seq_logits + i * nv;
                        assert_int_equal(engine_decode(m, &s, &tp, &one, 1, &l, NULL, &err), 0);
                }
        }
        for (uint32_t n_batch = 7; n_batch <= 512; n_batch += 505) {
                _cleanup_(engine_model_unrefp) EngineModel *m =
                        load(engine_cpu_isa_best(), GGML_TYPE_F32, 2, n_batch);
                _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
                assert_int_equal(engine_seq_new(m, 64, &s), 0);
                assert_int_equal(engine_decode_all(m, s, golden, n, all, &err), 0);
                assert_int_equal(engine_seq_pos(s), n);
                assert_true(max_rel_diff(all, seq_logits, (size_t)n * nv) < 1e-4);
        }
}

/* Two sequences in one call give what each gives alone, including one whose prompt straddles batches. */
static void test_two_sequences(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(engine_cpu_isa_best(), GGML_TYPE_F16, 2, 16);
        _cleanup_(engine_seq_freep) EngineSeq *a = NULL, *b = NULL, *solo = NULL;
        float la[512], lb[512], lsolo[512];
        QdError err = {};

        assert_int_equal(engine_seq_new(m, 64, &a), 0);
        assert_int_equal(engine_seq_new(m, 64, &b), 0);
        assert_int_equal(engine_seq_new(m, 64, &solo), 0);

        EngineSeq *seqs[] = { a, b };
        const int32_t *toks[] = { golden, golden + 10 };
        uint32_t ns[] = { 12, 25 };
        float *outs[] = { la, lb };
        assert_int_equal(engine_decode(m, seqs, toks, ns, 2, outs, NULL, &err), 0);
        assert_int_equal(engine_seq_pos(a), 12);
        assert_int_equal(engine_seq_pos(b), 25);

        float *o = lsolo;
        assert_int_equal(engine_decode(m, &solo, &toks[1], &ns[1], 1, &o, NULL, &err), 0);
        assert_true(max_rel_diff(lb, lsolo, 512) < 1e-4);
        assert_int_equal(argmax(la, 512), golden[12]);
        assert_int_equal(argmax(lb, 512), golden[35]);

        /* A sequence with nothing to add is skipped and keeps its position. */
        uint32_t ns2[] = { 0, 1 };
        const int32_t *toks2[] = { NULL, golden + 35 };
        assert_int_equal(engine_decode(m, seqs, toks2, ns2, 2, outs, NULL, &err), 0);
        assert_int_equal(engine_seq_pos(a), 12);
        assert_int_equal(engine_seq_pos(b), 26);
        assert_int_equal(argmax(lb, 512), golden[36]);
}

/* Truncating and decoding the same tokens again gives the same logits (the prompt-cache path). */
static void test_truncate(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(engine_cpu_isa_best(), GGML_TYPE_F16, 1, 512);
        _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
        float first[512], again[512], *l;
        uint32_t n = 10;
        QdError err = {};

        assert_int_equal(engine_seq_new(m, 32, &s), 0);
        assert_int_equal(engine_seq_n_ctx(s), 32);
        const int32_t *tp = golden;
        l = first;
        assert_int_equal(engine_decode(m, &s, &tp, &n, 1, &l, NULL, &err), 0);
        assert_int_equal(engine_seq_truncate(s, 11), -EINVAL);
        assert_int_equal(engine_seq_truncate(s, 4), 0);
        assert_int_equal(engine_seq_pos(s), 4);
        tp = golden + 4;
        n = 6;
        l = again;
        assert_int_equal(engine_decode(m, &s, &tp, &n, 1, &l, NULL, &err), 0);
        assert_memory_equal(first, again, sizeof(first));
}

static void test_embed(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(engine_cpu_isa_best(), GGML_TYPE_F16, 2, 8);
        float e1[64], e2[64], e3[64];
        double norm = 0;
        QdError err = {};

        assert_int_equal(engine_embed(m, golden, 20, e1, &err), 0);
        assert_int_equal(engine_embed(m, golden, 20, e2, &err), 0);
        assert_int_equal(engine_embed(m, golden + 20, 20, e3, &err), 0);
        for (int i = 0; i < 64; i++)
                norm += (double)e1[i] * e1[i];
        assert_true(fabs(norm - 1) < 1e-5);
        assert_memory_equal(e1, e2, sizeof(e1));
        assert_memory_not_equal(e1, e3, sizeof(e1));
        assert_int_equal(engine_embed(m, golden, 0, e1, &err), -EINVAL);
}

static void test_decode_errors(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(engine_cpu_isa_best(), GGML_TYPE_F16, 1, 512);
        _cleanup_(engine_seq_freep) EngineSeq *s = NULL, *s2 = NULL;
        float logits[512], *l = logits;
        int32_t bad[] = { 1, 512 }, neg[] = { -1 };
        const int32_t *tp = golden;
        uint32_t n = 5;
        bool cancel = true;
        QdError err = {};

        assert_int_equal(engine_seq_new(m, 0, &s), -EINVAL);
        assert_int_equal(engine_seq_new(m, 4, &s), 0);
        assert_int_equal(engine_decode(m, &s, &tp, &n, 1, &l, NULL, &err), -ENOSPC);
        assert_non_null(strstr(err.msg, "context of 4"));
        assert_int_equal(engine_seq_pos(s), 0);

        qd_error_clear(&err);
        tp = bad;
        n = 2;
        assert_int_equal(engine_decode(m, &s, &tp, &n, 1, &l, NULL, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "512"));
        tp = neg;
        n = 1;
        assert_int_equal(engine_decode(m, &s, &tp, &n, 1, &l, NULL, NULL), -EINVAL);

        qd_error_clear(&err);
        tp = golden;
        n = 2;
        assert_int_equal(engine_decode(m, &s, &tp, &n, 1, &l, &cancel, &err), -ECANCELED);
        assert_int_equal(engine_seq_pos(s), 0);

        EngineSeq *twice[] = { s, s };
        const int32_t *tps[] = { golden, golden };
        uint32_t ns[] = { 1, 1 };
        float *ls[] = { logits, logits };
        assert_int_equal(engine_decode(m, twice, tps, ns, 2, ls, NULL, NULL), -EINVAL);
        assert_int_equal(engine_decode(m, &s, &tp, &n, 1, NULL, NULL, NULL), -EINVAL);
        assert_int_equal(engine_decode_all(m, s, golden, 2, NULL, NULL), -EINVAL);

        /* A sequence of another model is refused. */
        _cleanup_(engine_model_unrefp) EngineModel *other = load(ENGINE_CPU_SCALAR, GGML_TYPE_F16, 1, 512);
        assert_int_equal(engine_seq_new(other, 8, &s2), 0);
        assert_int_equal(engine_decode(m, &s2, &tp, &n, 1, &l, NULL, NULL), -EINVAL);
        assert_int_equal(engine_seq_truncate(NULL, 0), -EINVAL);
}

/* Writes a copy of stories260K with general.architecture set to arch and its "llama." keys renamed (arch NULL:
 * unchanged), without the tensor named drop (NULL: none), and with tokenizer.ggml.model set to tok (NULL:
 * unchanged, "": every tokenizer key dropped). Returns an open descriptor of the copy. */
static int rewrite_model_tok(const char *arch, const char *drop, const char *tok) {
        _cleanup_free_ char *path = model_path();
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        char tmp[] = "/tmp/test-engine-forward-XXXXXX";
        int fd;

        assert_int_equal(gguf_open(path, &g, NULL), 0);
        fd = mkstemp(tmp);
        assert_true(fd >= 0);
        unlink(tmp);
        assert_int_equal(gguf_writer_new(&w, fd, GGUF_DEFAULT_ALIGNMENT), 0);
        for (uint64_t i = 0; i < g->n_kv; i++) {
                const char *rest = startswith(g->kv[i].key, "llama.");
                if (tok && !tok[0] && startswith(g->kv[i].key, "tokenizer."))
                        continue;
                if (tok && tok[0] && streq(g->kv[i].key, "tokenizer.ggml.model"))
                        assert_int_equal(gguf_writer_add_string(w, g->kv[i].key, tok), 0);
                else if (arch && streq(g->kv[i].key, "general.architecture"))
                        assert_int_equal(gguf_writer_add_string(w, g->kv[i].key, arch), 0);
                else if (arch && rest) {
                        _cleanup_free_ char *key = strdup_printf("%s.%s", arch, rest);
                        assert_int_equal(gguf_writer_add_value(w, key, &g->kv[i].value), 0);
                } else
                        assert_int_equal(gguf_writer_add_value(w, g->kv[i].key, &g->kv[i].value), 0);
        }
        for (uint64_t i = 0; i < g->n_tensors; i++)
                if (!drop || !streq(g->tensors[i].name, drop))
                        assert_int_equal(gguf_writer_add_tensor(w, g->tensors[i].name, g->tensors[i].type,
                                                                g->tensors[i].n_dims, g->tensors[i].ne), 0);
        assert_int_equal(gguf_writer_write_header(w), 0);
        for (uint64_t i = 0; i < g->n_tensors; i++)
                if (!drop || !streq(g->tensors[i].name, drop))
                        assert_int_equal(gguf_writer_write_tensor_data(w, g->tensors[i].data, g->tensors[i].size),
                                         0);
        assert_int_equal(gguf_writer_finish(w), 0);
        return fd;
}

static int rewrite_model(const char *arch, const char *drop) {
        return rewrite_model_tok(arch, drop, NULL);
}

/* The model carries its vocabulary: stories260K's SentencePiece vocabulary of 512, which tokenizes; a file
 * without tokenizer keys loads without one; a tokenizer we cannot read fails the load. */
static void test_vocab(void **state) {
        _cleanup_(engine_model_unrefp) EngineModel *m = load(engine_cpu_isa_best(), GGML_TYPE_F16, 1, 512);
        const EngineVocab *v = engine_model_vocab(m);
        _cleanup_free_ int32_t *ids = NULL;
        size_t n;
        Buf text = {};

        assert_non_null(v);
        assert_int_equal(engine_vocab_kind(v), ENGINE_VOCAB_SPM);
        assert_int_equal(engine_vocab_n_tokens(v), engine_model_info(m)->n_vocab);
        assert_int_equal(engine_vocab_bos(v), 1);
        assert_int_equal(engine_tokenize(v, "Once upon a time", 16, true, false, &ids, &n), 0);
        assert_true(n >= 2);
        assert_int_equal(ids[0], 1);
        assert_int_equal(engine_detokenize(v, ids + 1, n - 1, false, &text), 0);
        assert_int_equal(text.len, 17);
        assert_memory_equal(text.data, " Once upon a time", 17);
        buf_free(&text);

        EngineModelParams p = engine_model_params_default();
        EngineModel *m2 = NULL;
        QdError err = {};
        int fd;

        p.backend = "cpu";
        fd = rewrite_model_tok(NULL, NULL, "");
        assert_int_equal(engine_model_load_fd(fd, &p, &m2, &err), 0);
        close(fd);
        assert_null(engine_model_vocab(m2));
        m2 = engine_model_unref(m2);

        fd = rewrite_model_tok(NULL, NULL, "wordpiece9");
        assert_int_equal(engine_model_load_fd(fd, &p, &m2, &err), -EOPNOTSUPP);
        assert_non_null(strstr(err.msg, "'wordpiece9'"));
        assert_null(m2);
        close(fd);
}

static void test_load_errors(void **state) {
        EngineModelParams p = engine_model_params_default();
        EngineModel *m = NULL;
        QdError err = {};
        int fd;

        p.backend = "cpu";
        fd = rewrite_model("gpt9", NULL);
        assert_int_equal(engine_model_load_fd(fd, &p, &m, &err), -EOPNOTSUPP);
        assert_non_null(strstr(err.msg, "'gpt9'"));
        close(fd);

        qd_error_clear(&err);
        fd = rewrite_model("qwen2", NULL); /* qwen2 needs Q/K/V biases, which this file lacks */
        assert_int_equal(engine_model_load_fd(fd, &p, &m, &err), -EBADMSG);
        assert_non_null(strstr(err.msg, "'blk.0.attn_q.bias'"));
        close(fd);

        qd_error_clear(&err);
        fd = rewrite_model(NULL, "blk.3.ffn_up.weight");
        assert_int_equal(engine_model_load_fd(fd, &p, &m, &err), -EBADMSG);
        assert_non_null(strstr(err.msg, "'blk.3.ffn_up.weight'"));
        close(fd);

        /* The unchanged copy loads from a descriptor. */
        fd = rewrite_model(NULL, NULL);
        assert_int_equal(engine_model_load_fd(fd, &p, &m, &err), 0);
        close(fd);
        m = engine_model_unref(m);

        _cleanup_free_ char *path = model_path();
        qd_error_clear(&err);
        p.backend = "tpu";
        assert_int_equal(engine_model_load(path, &p, &m, &err), -EOPNOTSUPP);
        assert_non_null(strstr(err.msg, "'tpu'"));
        p.backend = "cpu";
        p.kv_type = GGML_TYPE_Q4_0;
        assert_int_equal(engine_model_load(path, &p, &m, NULL), -EINVAL);
        p.kv_type = GGML_TYPE_Q8_0; /* the CUDA backend's option, not the CPU's */
        assert_int_equal(engine_model_load(path, &p, &m, NULL), -EOPNOTSUPP);
        p = engine_model_params_default();
        p.cpu_isa = 7;
        assert_int_equal(engine_model_load(path, &p, &m, NULL), -EINVAL);
        assert_int_equal(engine_model_load("/nonexistent/model.gguf", NULL, &m, &err), -ENOENT);
        assert_int_equal(engine_model_load_fd(-1, NULL, &m, NULL), -EINVAL);
        assert_null(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_golden_all_kernel_sets),
                cmocka_unit_test(test_model_info),
                cmocka_unit_test(test_batch_matches_sequential),
                cmocka_unit_test(test_two_sequences),
                cmocka_unit_test(test_truncate),
                cmocka_unit_test(test_embed),
                cmocka_unit_test(test_decode_errors),
                cmocka_unit_test(test_vocab),
                cmocka_unit_test(test_load_errors),
        };

        return cmocka_run_group_tests(tests, setup, NULL);
}
