/* SPDX-License-Identifier: MIT */
/*
 * convert: turns a Hugging Face model folder (config.json, tokenizer.json, tokenizer_config.json and its
 * safetensors) into a GGUF file for the engine's llama and qwen2.
 *
 * DESIGN: everything is read through the folder's descriptor. Tensors keep their source type (F32, F16,
 * BF16) unless the caller asks for one; 1-D tensors (norms, biases) are always F32, as GGUF files of these
 * models store them. HF shapes list the outermost dimension first; GGUF's ne[0] is the row, so shapes are
 * reversed and the bytes stay as they are. llama's rotary embedding in GGUF rotates adjacent pairs
 * (ROPE_NORM) while HF's llama rotates the first half of each head against the second, so the rows of q_proj
 * and k_proj are reordered per head: GGUF row 2i+j of a head is HF row i + j*head_dim/2. qwen2 rotates
 * halves in GGUF too (ROPE_NEOX) and keeps its rows. The vocabulary (a SentencePiece one from
 * tokenizer.model, or tokenizer.json's) is convert-vocab.c's.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hf-internal.h"

QuantConvertParams quant_convert_params_default(void) {
        return (QuantConvertParams){.out_type = -1};
}

typedef struct HParams {
        const char *arch;
        bool permute; /* llama: q/k rows from halves to pairs */
        uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, n_vocab, head_dim;
        float norm_eps, rope_theta;
        bool tied;
        const char *rope_scaling_type; /* NULL or "linear" */
        float rope_scaling_factor;
} HParams;

static int cfg_u32(json_object *cfg, const char *key, bool optional, uint32_t def, uint32_t *ret,
                   QdError *err) {
        json_object *o;
        int64_t v;

        if (!json_object_object_get_ex(cfg, key, &o) || json_object_is_type(o, json_type_null)) {
                if (!optional)
                        return qd_error_set(err, EBADMSG, "config.json has no %s.", key);
                *ret = def;
                return 0;
        }
        v = json_object_get_int64(o);
        if (!json_object_is_type(o, json_type_int) || v <= 0 || v > UINT32_MAX)
                return qd_error_set(err, EBADMSG, "config.json's %s is not a positive integer.", key);
        *ret = (uint32_t)v;
        return 0;
}

static int cfg_f32(json_object *cfg, const char *key, float def, float *ret, QdError *err) {
        json_object *o;
        double v;

        if (!json_object_object_get_ex(cfg, key, &o) || json_object_is_type(o, json_type_null)) {
                *ret = def;
                return 0;
        }
        if (!json_object_is_type(o, json_type_double) && !json_object_is_type(o, json_type_int))
                return qd_error_set(err, EBADMSG, "config.json's %s is not a number.", key);
        v = json_object_get_double(o);
        if (!(v > 0))
                return qd_error_set(err, EBADMSG, "config.json's %s is not positive.", key);
        *ret = (float)v;
        return 0;
}

static int read_hparams(json_object *cfg, HParams *h, QdError *err) {
        const char *type = quant_json_str(cfg, "model_type");
        json_object *o, *rope;
        int r;

        if (!type)
                return qd_error_set(err, EBADMSG, "config.json has no model_type.");
        if (streq(type, "llama")) {
                h->arch = "llama";
                h->permute = true;
        } else if (streq(type, "qwen2")) {
                h->arch = "qwen2";
                h->permute = false;
        } else
                return qd_error_set(err, EOPNOTSUPP,
                                    "Cannot convert model_type '%s'; llama and qwen2 are known.", type);

        if ((r = cfg_u32(cfg, "hidden_size", false, 0, &h->n_embd, err)) < 0 ||
            (r = cfg_u32(cfg, "num_hidden_layers", false, 0, &h->n_layer, err)) < 0 ||
            (r = cfg_u32(cfg, "num_attention_heads", false, 0, &h->n_head, err)) < 0 ||
            (r = cfg_u32(cfg, "num_key_value_heads", true, h->n_head, &h->n_head_kv, err)) < 0 ||
            (r = cfg_u32(cfg, "intermediate_size", false, 0, &h->n_ff, err)) < 0 ||
            (r = cfg_u32(cfg, "max_position_embeddings", true, 2048, &h->n_ctx, err)) < 0 ||
            (r = cfg_u32(cfg, "vocab_size", false, 0, &h->n_vocab, err)) < 0 ||
            (r = cfg_f32(cfg, "rms_norm_eps", 1e-6f, &h->norm_eps, err)) < 0)
                return r;
        if (h->n_head % h->n_head_kv || h->n_embd % h->n_head)
                return qd_error_set(err, EBADMSG,
                                    "config.json's head counts (%" PRIu32 " heads, %" PRIu32
                                    " KV heads, width %" PRIu32 ") do not divide.",
                                    h->n_head, h->n_head_kv, h->n_embd);
        if ((r = cfg_u32(cfg, "head_dim", true, h->n_embd / h->n_head, &h->head_dim, err)) < 0)
                return r;
        if (h->head_dim % 2)
                return qd_error_set(err, EBADMSG, "config.json's head_dim %" PRIu32 " is odd.", h->head_dim);

        /* Newer transformers put rope_theta and the scaling into rope_parameters. */
        rope = NULL;
        if (json_object_object_get_ex(cfg, "rope_parameters", &o) &&
            json_object_is_type(o, json_type_object))
                rope = o;
        else if (json_object_object_get_ex(cfg, "rope_scaling", &o) &&
                 json_object_is_type(o, json_type_object))
                rope = o;
        if ((r = cfg_f32(cfg, "rope_theta", 10000.0f, &h->rope_theta, err)) < 0)
                return r;
        if (rope && json_object_object_get_ex(rope, "rope_theta", NULL) &&
            (r = cfg_f32(rope, "rope_theta", 10000.0f, &h->rope_theta, err)) < 0)
                return r;
        if (rope) {
                const char *rt = quant_json_str(rope, "rope_type") ?: quant_json_str(rope, "type");

                if (rt && streq(rt, "linear")) {
                        h->rope_scaling_type = "linear";
                        if ((r = cfg_f32(rope, "factor", 1.0f, &h->rope_scaling_factor, err)) < 0)
                                return r;
                } else if (rt && !streq(rt, "default"))
                        return qd_error_set(err, EOPNOTSUPP,
                                            "Cannot convert RoPE scaling '%s'; only linear is "
                                            "known.",
                                            rt);
        }
        h->tied = quant_json_true(cfg, "tie_word_embeddings");
        return 0;
}

/* ---- tensors ---- */

typedef struct Plan {
        char name[96];
        const SafetensorsTensor *src;
        uint32_t type;
        uint32_t n_dims;
        uint64_t ne[GGUF_MAX_DIMS];
        uint32_t permute_heads; /* 0: rows as they are */
} Plan;

static int plan_add(Plan *plans, size_t *n, const Safetensors *st, bool *used, const char *hf,
                    const char *gguf, bool optional, uint32_t permute_heads, int32_t out_type,
                    QdError *err) {
        const SafetensorsTensor *t = safetensors_find(st, hf);
        Plan *p = &plans[*n];

        if (!t) {
                if (optional)
                        return 0;
                return qd_error_set(err, EBADMSG, "The model has no tensor '%s'.", hf);
        }
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
                return qd_error_set(err, EBADMSG, "Tensor '%s' has %" PRIu32 " dimensions.", hf, t->n_dims);
        used[t - safetensors_tensor(st, 0)] = true;
        *p = (Plan){.src = t, .n_dims = t->n_dims, .permute_heads = permute_heads};
        snprintf(p->name, sizeof(p->name), "%s", gguf);
        for (uint32_t i = 0; i < GGUF_MAX_DIMS; i++)
                p->ne[i] = i < t->n_dims ? t->shape[t->n_dims - 1 - i] : 1;
        if (t->n_dims == 1)
                p->type = GGML_TYPE_F32;
        else
                p->type = out_type >= 0 ? (uint32_t)out_type : t->type;
        if (permute_heads && (t->n_dims != 2 || p->ne[1] % permute_heads || (p->ne[1] / permute_heads) % 2))
                return qd_error_set(err, EBADMSG,
                                    "Tensor '%s' has rows that do not split into %" PRIu32 " heads.", hf,
                                    permute_heads);
        (*n)++;
        return 0;
}

static int make_plan(const HParams *h, const Safetensors *st, int32_t out_type, Plan **ret, size_t *ret_n,
                     QdError *err) {
        static const struct {
                const char *hf, *gguf;
                int what; /* 0 plain, 1 q, 2 k, 3 optional bias */
        } layer[] = {
                {"input_layernorm.weight", "attn_norm.weight", 0},
                {"self_attn.q_proj.weight", "attn_q.weight", 1},
                {"self_attn.k_proj.weight", "attn_k.weight", 2},
                {"self_attn.v_proj.weight", "attn_v.weight", 0},
                {"self_attn.q_proj.bias", "attn_q.bias", 3},
                {"self_attn.k_proj.bias", "attn_k.bias", 3},
                {"self_attn.v_proj.bias", "attn_v.bias", 3},
                {"self_attn.o_proj.weight", "attn_output.weight", 0},
                {"post_attention_layernorm.weight", "ffn_norm.weight", 0},
                {"mlp.gate_proj.weight", "ffn_gate.weight", 0},
                {"mlp.up_proj.weight", "ffn_up.weight", 0},
                {"mlp.down_proj.weight", "ffn_down.weight", 0},
        };
        size_t n_st = safetensors_n_tensors(st), n = 0;
        _cleanup_free_ Plan *plans = calloc(n_st + 1, sizeof(Plan));
        _cleanup_free_ bool *used = calloc(n_st + 1, sizeof(bool));
        int r;

        if (!plans || !used)
                return -ENOMEM;
        r = plan_add(plans, &n, st, used, "model.embed_tokens.weight", "token_embd.weight", false, 0,
                     out_type, err);
        if (r < 0)
                return r;
        for (uint32_t il = 0; il < h->n_layer; il++)
                for (size_t k = 0; k < ELEMENTSOF(layer); k++) {
                        char hf[128], gg[96];
                        uint32_t heads = !h->permute          ? 0
                                         : layer[k].what == 1 ? h->n_head
                                         : layer[k].what == 2 ? h->n_head_kv
                                                              : 0;

                        snprintf(hf, sizeof(hf), "model.layers.%" PRIu32 ".%s", il, layer[k].hf);
                        snprintf(gg, sizeof(gg), "blk.%" PRIu32 ".%s", il, layer[k].gguf);
                        /* A bias of q or k would need the same row order; llama has none. */
                        r = plan_add(plans, &n, st, used, hf, gg, layer[k].what == 3, heads, out_type, err);
                        if (r < 0)
                                return r;
                        if (layer[k].what == 3 && h->permute && safetensors_find(st, hf))
                                return qd_error_set(err, EOPNOTSUPP, "Cannot convert the llama bias '%s'.",
                                                    hf);
                }
        if ((r = plan_add(plans, &n, st, used, "model.norm.weight", "output_norm.weight", false, 0, out_type,
                          err)) < 0)
                return r;
        if (!h->tied && (r = plan_add(plans, &n, st, used, "lm_head.weight", "output.weight", false, 0,
                                      out_type, err)) < 0)
                return r;
        /* A tied head saved anyway is the embedding again. */
        if (h->tied && safetensors_find(st, "lm_head.weight"))
                used[safetensors_find(st, "lm_head.weight") - safetensors_tensor(st, 0)] = true;

        for (size_t i = 0; i < n_st; i++) {
                const char *name = safetensors_tensor(st, i)->name;

                if (!used[i] && !endswith(name, ".rotary_emb.inv_freq"))
                        return qd_error_set(err, EOPNOTSUPP, "Tensor '%s' has no place in a GGUF %s model.",
                                            name, h->arch);
        }
        *ret = TAKE_PTR(plans);
        *ret_n = n;
        return 0;
}

static float load_elem(uint32_t type, const uint8_t *p, uint64_t i) {
        float f;
        uint16_t u;

        switch (type) {
        case GGML_TYPE_F32:
                memcpy(&f, p + 4 * i, 4);
                return f;
        case GGML_TYPE_F16:
                memcpy(&u, p + 2 * i, 2);
                return engine_fp16_to_f32(u);
        default:
                memcpy(&u, p + 2 * i, 2);
                return engine_bf16_to_f32(u);
        }
}

static void store_elem(uint32_t type, uint8_t *p, uint64_t i, float f) {
        uint16_t u;

        switch (type) {
        case GGML_TYPE_F32:
                memcpy(p + 4 * i, &f, 4);
                return;
        case GGML_TYPE_F16:
                u = engine_f32_to_fp16(f);
                memcpy(p + 2 * i, &u, 2);
                return;
        default:
                u = engine_f32_to_bf16(f);
                memcpy(p + 2 * i, &u, 2);
                return;
        }
}

static size_t type_size(uint32_t type) {
        return type == GGML_TYPE_F32 ? 4 : 2;
}

static int write_tensor(GgufWriter *w, const Plan *p) {
        const SafetensorsTensor *t = p->src;
        uint64_t row = p->ne[0], n_rows = t->n_elements / (row ? row : 1);
        size_t out_size = (size_t)t->n_elements * type_size(p->type);
        _cleanup_free_ uint8_t *out = NULL;

        if (p->type == t->type && !p->permute_heads)
                return gguf_writer_write_tensor_data(w, t->data, t->size);
        out = malloc(out_size ? out_size : 1);
        if (!out)
                return -ENOMEM;
        for (uint64_t r = 0; r < n_rows; r++) {
                uint64_t src = r;

                if (p->permute_heads) {
                        uint64_t hd = n_rows / p->permute_heads, head = r / hd, k = r % hd;
                        /* GGUF row 2i+j of a head is HF row i + j*hd/2. */
                        src = head * hd + (k % 2) * (hd / 2) + k / 2;
                }
                for (uint64_t c = 0; c < row; c++)
                        store_elem(p->type, out, r * row + c, load_elem(t->type, t->data, src * row + c));
        }
        return gguf_writer_write_tensor_data(w, out, out_size);
}

/* ---- the file ---- */

int quant_convert_hf(int dirfd, int fd, const QuantConvertParams *params, QdError *err) {
        QuantConvertParams p = params ? *params : quant_convert_params_default();
        _cleanup_(json_object_putp) json_object *cfg = NULL;
        _cleanup_(safetensors_freep) Safetensors *st = NULL;
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        _cleanup_free_ Plan *plans = NULL;
        size_t n_plans = 0;
        HParams h = {};
        char key[128];
        uint32_t ftype;
        int r;

        if (dirfd < 0 || fd < 0 ||
            (p.out_type >= 0 && p.out_type != GGML_TYPE_F32 && p.out_type != GGML_TYPE_F16 &&
             p.out_type != GGML_TYPE_BF16))
                return qd_error_set(err, EINVAL, "Conversion writes F32, F16 or BF16.");

        r = quant_read_json_at(dirfd, "config.json", &cfg, err);
        if (r < 0)
                return r;
        r = read_hparams(cfg, &h, err);
        if (r < 0)
                return r;
        r = safetensors_open_dir(dirfd, &st, err);
        if (r < 0)
                return r;
        r = make_plan(&h, st, p.out_type, &plans, &n_plans, err);
        if (r < 0)
                return r;
        if (plans[0].ne[1] != h.n_vocab || plans[0].ne[0] != h.n_embd)
                return qd_error_set(err, EBADMSG,
                                    "The embedding is %" PRIu64 "×%" PRIu64 " but config.json says %" PRIu32
                                    " tokens of width %" PRIu32 ".",
                                    plans[0].ne[1], plans[0].ne[0], h.n_vocab, h.n_embd);

        /* general.file_type: the type most weights got. */
        ftype = plans[0].type == GGML_TYPE_F32 ? 0 : plans[0].type == GGML_TYPE_F16 ? 1 : 32;

        r = gguf_writer_new(&w, fd, 32);
        if (r < 0)
                return r;
#define KEY(k) (snprintf(key, sizeof(key), "%s.%s", h.arch, k), key)
        if ((r = gguf_writer_add_string(w, "general.architecture", h.arch)) < 0 ||
            (r = gguf_writer_add_u32(w, "general.file_type", ftype)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("context_length"), h.n_ctx)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("embedding_length"), h.n_embd)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("block_count"), h.n_layer)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("feed_forward_length"), h.n_ff)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("attention.head_count"), h.n_head)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("attention.head_count_kv"), h.n_head_kv)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("attention.key_length"), h.head_dim)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("attention.value_length"), h.head_dim)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("rope.dimension_count"), h.head_dim)) < 0 ||
            (r = gguf_writer_add_f32(w, KEY("rope.freq_base"), h.rope_theta)) < 0 ||
            (r = gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), h.norm_eps)) < 0 ||
            (r = gguf_writer_add_u32(w, KEY("vocab_size"), h.n_vocab)) < 0)
                return qd_error_set(err, r, "Failed to write the GGUF metadata.");
        if (h.rope_scaling_type &&
            ((r = gguf_writer_add_string(w, KEY("rope.scaling.type"), h.rope_scaling_type)) < 0 ||
             (r = gguf_writer_add_f32(w, KEY("rope.scaling.factor"), h.rope_scaling_factor)) < 0))
                return qd_error_set(err, r, "Failed to write the GGUF metadata.");
#undef KEY
        r = quant_convert_vocab(w, dirfd, cfg, h.n_vocab, p.pre, err);
        if (r < 0)
                return qd_error_set(err, r, "Failed to convert the vocabulary.");

        for (size_t i = 0; i < n_plans; i++)
                if ((r = gguf_writer_add_tensor(w, plans[i].name, plans[i].type, plans[i].n_dims,
                                                plans[i].ne)) < 0)
                        return qd_error_set(err, r, "Failed to declare tensor '%s'.", plans[i].name);
        if ((r = gguf_writer_write_header(w)) < 0)
                return qd_error_set(err, r, "Failed to write the GGUF header: %s", strerror(-r));
        for (size_t i = 0; i < n_plans; i++)
                if ((r = write_tensor(w, &plans[i])) < 0)
                        return qd_error_set(err, r, "Failed to write tensor '%s': %s", plans[i].name,
                                            strerror(-r));
        if ((r = gguf_writer_finish(w)) < 0)
                return qd_error_set(err, r, "Failed to finish the GGUF file: %s", strerror(-r));
        return 0;
}
