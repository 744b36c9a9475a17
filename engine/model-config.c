/* SPDX-License-Identifier: MIT */
/*
 * From a GGUF file to a ModelConfig and ModelWeights: the architecture's hyperparameters from the metadata and
 * every weight tensor bound in place, with its shape and type checked, so that the forward pass never meets a
 * surprise. Each problem is reported with one sentence naming the key or tensor.
 */

#include <inttypes.h>
#include <math.h>

#include "model.h"

static const char *const arch_names[_MODEL_ARCH_MAX] = {
        [MODEL_ARCH_LLAMA] = "llama",
        [MODEL_ARCH_QWEN2] = "qwen2",
};

/* Types the matrix kernels take for weights that multiply activations. */
static bool matmul_type_supported(uint32_t type) {
        switch ((GgmlType)type) {
        case GGML_TYPE_F32:
        case GGML_TYPE_F16:
        case GGML_TYPE_BF16:
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q2_K:
        case GGML_TYPE_Q3_K:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
        case GGML_TYPE_Q6_K:
                return true;
        case GGML_TYPE_Q8_1:
        case GGML_TYPE_Q8_K:
        case GGML_TYPE_IQ2_XXS:
        case GGML_TYPE_IQ2_XS:
        case GGML_TYPE_IQ3_XXS:
        case GGML_TYPE_IQ1_S:
        case GGML_TYPE_IQ4_NL:
        case GGML_TYPE_IQ3_S:
        case GGML_TYPE_IQ2_S:
        case GGML_TYPE_IQ4_XS:
        case GGML_TYPE_I8:
        case GGML_TYPE_I16:
        case GGML_TYPE_I32:
        case GGML_TYPE_I64:
        case GGML_TYPE_F64:
        case GGML_TYPE_IQ1_M:
        case GGML_TYPE_TQ1_0:
        case GGML_TYPE_TQ2_0:
        case GGML_TYPE_MXFP4:
        case _GGML_TYPE_MAX:
        case _GGML_TYPE_INVALID:
                break;
        }
        return false;
}

typedef enum TensorKind {
        TENSOR_MATRIX,    /* multiplies activations: a matmul type */
        TENSOR_EMBEDDING, /* rows are looked up: any type we can dequantize */
        TENSOR_VECTOR,    /* norms and biases: F32 */
} TensorKind;

/* Binds tensor name with the expected shape (ne0, ne1). A missing optional tensor leaves t->data NULL. */
static int bind_tensor(const Gguf *g, const char *name, uint64_t ne0, uint64_t ne1, TensorKind kind,
                       bool optional, Tensor *t, QdError *err) {
        const GgufTensor *gt = gguf_find_tensor(g, name);
        float probe;

        *t = (Tensor){};
        if (!gt) {
                if (optional)
                        return 0;
                return qd_error_set(err, EBADMSG, "The model has no tensor '%s', which its architecture needs.",
                                    name);
        }
        if (gt->ne[0] != ne0 || gt->ne[1] != ne1 || gt->ne[2] != 1 || gt->ne[3] != 1)
                return qd_error_set(err, EBADMSG,
                                    "Tensor '%s' has shape %" PRIu64 " x %" PRIu64 " x %" PRIu64 " x %" PRIu64
                                    ", expected %" PRIu64 " x %" PRIu64 ".",
                                    name, gt->ne[0], gt->ne[1], gt->ne[2], gt->ne[3], ne0, ne1);
        switch (kind) {
        case TENSOR_MATRIX:
                if (!matmul_type_supported(gt->type))
                        return qd_error_set(err, EOPNOTSUPP, "Tensor '%s' has type %s, which the engine cannot "
                                            "multiply yet.", name, ggml_type_name(gt->type));
                break;
        case TENSOR_EMBEDDING:
                if (engine_dequantize_row(gt->type, gt->data, &probe, 0) < 0)
                        return qd_error_set(err, EOPNOTSUPP, "Tensor '%s' has type %s, which the engine cannot "
                                            "read yet.", name, ggml_type_name(gt->type));
                break;
        case TENSOR_VECTOR:
                if (gt->type != GGML_TYPE_F32)
                        return qd_error_set(err, EOPNOTSUPP, "Tensor '%s' has type %s; norms and biases must be "
                                            "f32.", name, ggml_type_name(gt->type));
                break;
        }
        t->name = gt->name;
        t->type = gt->type;
        t->ne0 = ne0;
        t->ne1 = ne1;
        t->row_size = gt->size / ne1;
        t->data = gt->data;
        return 0;
}

static int get_u32(const Gguf *g, const char *arch, const char *key, bool optional, uint32_t def, uint32_t *ret,
                   QdError *err) {
        _cleanup_free_ char *k = strdup_printf("%s.%s", arch, key);
        int r;

        if (!k)
                return -ENOMEM;
        r = gguf_get_u32(g, k, ret);
        if (r == -ENOENT && optional) {
                *ret = def;
                return 0;
        }
        if (r == -ENOENT)
                return qd_error_set(err, EBADMSG, "The model's metadata lacks '%s'.", k);
        if (r < 0)
                return qd_error_set(err, EBADMSG, "The model's metadata key '%s' is not a valid count.", k);
        return 0;
}

static int get_f32(const Gguf *g, const char *arch, const char *key, float def, float *ret, QdError *err) {
        _cleanup_free_ char *k = strdup_printf("%s.%s", arch, key);
        int r;

        if (!k)
                return -ENOMEM;
        r = gguf_get_f32(g, k, ret);
        if (r == -ENOENT) {
                *ret = def;
                return 0;
        }
        if (r < 0 || !isfinite(*ret))
                return qd_error_set(err, EBADMSG, "The model's metadata key '%s' is not a valid number.", k);
        return 0;
}

static int read_rope_scaling(const Gguf *g, const char *arch, ModelConfig *c, QdError *err) {
        _cleanup_free_ char *k = strdup_printf("%s.rope.scaling.type", arch), *type = NULL;
        float factor;
        int r;

        if (!k)
                return -ENOMEM;
        c->rope_freq_scale = 1.0f;
        r = gguf_get_string(g, k, &type);
        if (r == -ENOENT) {
                /* Older files say only "rope.scale_linear". */
                r = get_f32(g, arch, "rope.scale_linear", 1.0f, &factor, err);
                if (r < 0)
                        return r;
                if (factor <= 0)
                        return qd_error_set(err, EBADMSG, "The model's RoPE scale factor %g is not positive.",
                                            (double)factor);
                c->rope_freq_scale = 1.0f / factor;
                return 0;
        }
        if (r < 0)
                return qd_error_set(err, EBADMSG, "The model's metadata key '%s' is not a string.", k);
        if (streq(type, "none"))
                return 0;
        if (!streq(type, "linear"))
                return qd_error_set(err, EOPNOTSUPP, "The model uses RoPE scaling '%s'; the engine supports "
                                    "'none' and 'linear'.", type);
        r = get_f32(g, arch, "rope.scaling.factor", 1.0f, &factor, err);
        if (r < 0)
                return r;
        if (factor <= 0)
                return qd_error_set(err, EBADMSG, "The model's RoPE scale factor %g is not positive.",
                                    (double)factor);
        c->rope_freq_scale = 1.0f / factor;
        return 0;
}

static int layer_tensor(const Gguf *g, uint32_t il, const char *what, uint64_t ne0, uint64_t ne1, TensorKind kind,
                        bool optional, Tensor *t, QdError *err) {
        char name[96];

        snprintf(name, sizeof(name), "blk.%" PRIu32 ".%s", il, what);
        return bind_tensor(g, name, ne0, ne1, kind, optional, t, err);
}

static int bind_layer(const Gguf *g, const ModelConfig *c, uint32_t il, LayerWeights *l, QdError *err) {
        uint64_t d = c->n_embd, q = (uint64_t)c->n_head * c->head_dim, kv = (uint64_t)c->n_head_kv * c->head_dim;
        bool bias = c->arch == MODEL_ARCH_QWEN2;
        int r;

        if ((r = layer_tensor(g, il, "attn_norm.weight", d, 1, TENSOR_VECTOR, false, &l->attn_norm, err)) < 0 ||
            (r = layer_tensor(g, il, "attn_q.weight", d, q, TENSOR_MATRIX, false, &l->wq, err)) < 0 ||
            (r = layer_tensor(g, il, "attn_k.weight", d, kv, TENSOR_MATRIX, false, &l->wk, err)) < 0 ||
            (r = layer_tensor(g, il, "attn_v.weight", d, kv, TENSOR_MATRIX, false, &l->wv, err)) < 0 ||
            (r = layer_tensor(g, il, "attn_q.bias", q, 1, TENSOR_VECTOR, !bias, &l->bq, err)) < 0 ||
            (r = layer_tensor(g, il, "attn_k.bias", kv, 1, TENSOR_VECTOR, !bias, &l->bk, err)) < 0 ||
            (r = layer_tensor(g, il, "attn_v.bias", kv, 1, TENSOR_VECTOR, !bias, &l->bv, err)) < 0 ||
            (r = layer_tensor(g, il, "attn_output.weight", q, d, TENSOR_MATRIX, false, &l->wo, err)) < 0 ||
            (r = layer_tensor(g, il, "ffn_norm.weight", d, 1, TENSOR_VECTOR, false, &l->ffn_norm, err)) < 0 ||
            (r = layer_tensor(g, il, "ffn_gate.weight", d, c->n_ff, TENSOR_MATRIX, false, &l->w_gate, err)) < 0 ||
            (r = layer_tensor(g, il, "ffn_up.weight", d, c->n_ff, TENSOR_MATRIX, false, &l->w_up, err)) < 0 ||
            (r = layer_tensor(g, il, "ffn_down.weight", c->n_ff, d, TENSOR_MATRIX, false, &l->w_down, err)) < 0)
                return r;
        return 0;
}

int model_config_load(const Gguf *g, ModelConfig *ret_cfg, ModelWeights *ret_w, QdError *err) {
        _cleanup_free_ char *arch = NULL;
        _cleanup_free_ LayerWeights *layers = NULL;
        ModelConfig c = {};
        ModelWeights w = {};
        uint32_t key_length, n_vocab_key;
        int r;

        r = gguf_get_string(g, "general.architecture", &arch);
        if (r == -ENOENT)
                return qd_error_set(err, EBADMSG, "The model does not say its architecture "
                                    "(general.architecture).");
        if (r < 0)
                return qd_error_set(err, EBADMSG, "The model's general.architecture is not a string.");
        c.arch = _MODEL_ARCH_INVALID;
        for (int i = 0; i < _MODEL_ARCH_MAX; i++)
                if (streq(arch, arch_names[i]))
                        c.arch = (ModelArch)i;
        if (c.arch < 0)
                return qd_error_set(err, EOPNOTSUPP, "Unknown model architecture '%s'; the engine runs llama and "
                                    "qwen2.", arch);

        if ((r = get_u32(g, arch, "block_count", false, 0, &c.n_layer, err)) < 0 ||
            (r = get_u32(g, arch, "embedding_length", false, 0, &c.n_embd, err)) < 0 ||
            (r = get_u32(g, arch, "feed_forward_length", false, 0, &c.n_ff, err)) < 0 ||
            (r = get_u32(g, arch, "attention.head_count", false, 0, &c.n_head, err)) < 0 ||
            (r = get_u32(g, arch, "attention.head_count_kv", true, c.n_head, &c.n_head_kv, err)) < 0 ||
            (r = get_u32(g, arch, "context_length", true, 2048, &c.n_ctx_train, err)) < 0 ||
            (r = get_f32(g, arch, "rope.freq_base", 10000.0f, &c.rope_base, err)) < 0 ||
            (r = get_f32(g, arch, "attention.layer_norm_rms_epsilon", 1e-5f, &c.norm_eps, err)) < 0 ||
            (r = read_rope_scaling(g, arch, &c, err)) < 0)
                return r;
        if (c.n_layer == 0 || c.n_layer > 4096 || c.n_embd == 0 || c.n_embd > 65536 || c.n_ff == 0 ||
            c.n_ff > 1u << 20 || c.n_head == 0 || c.n_head > 1024 || c.n_head_kv == 0 || c.n_head % c.n_head_kv)
                return qd_error_set(err, EBADMSG, "The model's hyperparameters are inconsistent (%" PRIu32
                                    " layers, width %" PRIu32 ", %" PRIu32 " heads, %" PRIu32 " KV heads, FFN %"
                                    PRIu32 ").", c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_ff);
        if ((r = get_u32(g, arch, "attention.key_length", true, c.n_embd / c.n_head, &key_length, err)) < 0)
                return r;
        c.head_dim = key_length;
        if (c.head_dim == 0 || c.head_dim % 2 || c.head_dim > 1024)
                return qd_error_set(err, EBADMSG, "The model's head size %" PRIu32 " is not supported.",
                                    c.head_dim);
        if ((r = get_u32(g, arch, "rope.dimension_count", true, c.head_dim, &c.n_rot, err)) < 0)
                return r;
        if (c.n_rot == 0 || c.n_rot % 2 || c.n_rot > c.head_dim)
                return qd_error_set(err, EBADMSG, "The model rotates %" PRIu32 " dimensions of heads of %" PRIu32
                                    ".", c.n_rot, c.head_dim);
        if (!(c.norm_eps > 0) || !(c.rope_base > 0))
                return qd_error_set(err, EBADMSG, "The model's norm epsilon or RoPE base is not positive.");
        c.rope_type = c.arch == MODEL_ARCH_QWEN2 ? ROPE_NEOX : ROPE_NORM;

        /* The vocabulary size is the embedding's row count; a vocab_size key, when present, must agree. */
        const GgufTensor *emb = gguf_find_tensor(g, "token_embd.weight");
        if (!emb)
                return qd_error_set(err, EBADMSG, "The model has no tensor 'token_embd.weight', which its "
                                    "architecture needs.");
        if (emb->ne[1] == 0 || emb->ne[1] > INT32_MAX)
                return qd_error_set(err, EBADMSG, "The model's vocabulary size %" PRIu64 " is not valid.",
                                    emb->ne[1]);
        c.n_vocab = (uint32_t)emb->ne[1];
        if ((r = get_u32(g, arch, "vocab_size", true, c.n_vocab, &n_vocab_key, err)) < 0)
                return r;
        if (n_vocab_key != c.n_vocab)
                return qd_error_set(err, EBADMSG, "The model says it has %" PRIu32 " tokens but its embedding "
                                    "has %" PRIu32 " rows.", n_vocab_key, c.n_vocab);

        if ((r = bind_tensor(g, "token_embd.weight", c.n_embd, c.n_vocab, TENSOR_EMBEDDING, false, &w.token_embd,
                             err)) < 0 ||
            (r = bind_tensor(g, "output_norm.weight", c.n_embd, 1, TENSOR_VECTOR, false, &w.output_norm, err)) < 0 ||
            (r = bind_tensor(g, "output.weight", c.n_embd, c.n_vocab, TENSOR_MATRIX, true, &w.output, err)) < 0 ||
            (r = bind_tensor(g, "rope_freqs.weight", c.n_rot / 2, 1, TENSOR_VECTOR, true, &w.rope_freqs, err)) < 0)
                return r;
        if (!w.output.data) {
                /* Tied embeddings: the head is the embedding, which must then be a matmul type. */
                if (!matmul_type_supported(w.token_embd.type))
                        return qd_error_set(err, EOPNOTSUPP, "The model's tied output 'token_embd.weight' has type "
                                            "%s, which the engine cannot multiply yet.",
                                            ggml_type_name(w.token_embd.type));
                w.output = w.token_embd;
        }

        layers = calloc(c.n_layer, sizeof(LayerWeights));
        if (!layers)
                return -ENOMEM;
        for (uint32_t il = 0; il < c.n_layer; il++)
                if ((r = bind_layer(g, &c, il, &layers[il], err)) < 0)
                        return r;
        w.layers = TAKE_PTR(layers);
        *ret_cfg = c;
        *ret_w = w;
        return 0;
}

const char *model_arch_name(ModelArch a) {
        if ((int)a < 0 || a >= _MODEL_ARCH_MAX)
                return "unknown";
        return arch_names[a];
}
