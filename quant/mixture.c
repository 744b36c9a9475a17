/* SPDX-License-Identifier: MIT */
/*
 * Mixtures: llama-quantize's file types and the rules by which each tensor of a model gets its type.
 *
 * DESIGN
 * The rules are llama-quantize's (its llama_tensor_get_type()), for the mixtures we offer:
 * - only 2-D (or larger) tensors named *weight that are not norms (nor MoE routers, position or token-type
 *   embeddings, convolution or relative-position tensors) are quantized; everything else is copied;
 * - output.weight (or token_embd.weight when the model ties them) gets Q6_K unless the mixture is Q8_0, and
 *   Q8_0 when its rows are not a multiple of 256 (always on falcon);
 * - attn_v and ffn_down get more bits in some layers: "use_more_bits" picks the first and last eighth of the
 *   layers and every third layer in between (i < n/8, i >= 7n/8, (i - n/8) % 3 == 2); the layer index is
 *   the count of such tensors seen so far in file order, as llama-quantize counts;
 * - a type whose block does not divide the rows falls back: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, Q2_K and
 *   Q3_K → Q4_0 (older llama.cpp releases used IQ4_NL), and F16 when the fallback's block of 32 does not
 *   divide them either.
 * tests/data/make-quant-llama-cpp-reference.py checks all of this against llama.cpp itself, bytes included.
 * Where llama-quantize gives up we go on, and say so in docs/quantization.md: a 32-block type (Q4_0 …) on
 * rows that 32 does not divide (stories260K's 172-wide ffn_down) falls back to F16 instead of failing, and
 * the fallback and the overrides also apply with --pure.
 */

#include <inttypes.h>
#include <strings.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "quant-internal.h"

typedef struct MixtureInfo {
        const char *name;
        uint32_t type;
} MixtureInfo;

static const MixtureInfo mixture_table[_QUANT_MIXTURE_MAX] = {
        [QUANT_MIXTURE_F32] = {"F32", GGML_TYPE_F32},
        [QUANT_MIXTURE_F16] = {"F16", GGML_TYPE_F16},
        [QUANT_MIXTURE_BF16] = {"BF16", GGML_TYPE_BF16},
        [QUANT_MIXTURE_Q4_0] = {"Q4_0", GGML_TYPE_Q4_0},
        [QUANT_MIXTURE_Q4_1] = {"Q4_1", GGML_TYPE_Q4_1},
        [QUANT_MIXTURE_Q5_0] = {"Q5_0", GGML_TYPE_Q5_0},
        [QUANT_MIXTURE_Q5_1] = {"Q5_1", GGML_TYPE_Q5_1},
        [QUANT_MIXTURE_Q8_0] = {"Q8_0", GGML_TYPE_Q8_0},
        [QUANT_MIXTURE_Q2_K] = {"Q2_K", GGML_TYPE_Q2_K},
        [QUANT_MIXTURE_Q3_K_S] = {"Q3_K_S", GGML_TYPE_Q3_K},
        [QUANT_MIXTURE_Q3_K_M] = {"Q3_K_M", GGML_TYPE_Q3_K},
        [QUANT_MIXTURE_Q3_K_L] = {"Q3_K_L", GGML_TYPE_Q3_K},
        [QUANT_MIXTURE_Q4_K_S] = {"Q4_K_S", GGML_TYPE_Q4_K},
        [QUANT_MIXTURE_Q4_K_M] = {"Q4_K_M", GGML_TYPE_Q4_K},
        [QUANT_MIXTURE_Q5_K_S] = {"Q5_K_S", GGML_TYPE_Q5_K},
        [QUANT_MIXTURE_Q5_K_M] = {"Q5_K_M", GGML_TYPE_Q5_K},
        [QUANT_MIXTURE_Q6_K] = {"Q6_K", GGML_TYPE_Q6_K},
        [QUANT_MIXTURE_IQ4_NL] = {"IQ4_NL", GGML_TYPE_IQ4_NL},
};

static const MixtureInfo *mixture_info(QuantMixture m) {
        if (m < 0 || m >= _QUANT_MIXTURE_MAX || !mixture_table[m].name)
                return NULL;
        return &mixture_table[m];
}

QuantMixture quant_mixture_from_name(const char *name) {
        /* llama-quantize's short names for the medium variants */
        static const struct {
                const char *alias;
                QuantMixture m;
        } aliases[] = {
                {"Q3_K", QUANT_MIXTURE_Q3_K_M},
                {"Q4_K", QUANT_MIXTURE_Q4_K_M},
                {"Q5_K", QUANT_MIXTURE_Q5_K_M},
        };

        if (!name)
                return _QUANT_MIXTURE_INVALID;
        for (int m = 0; m < _QUANT_MIXTURE_MAX; m++)
                if (mixture_table[m].name && strcasecmp(mixture_table[m].name, name) == 0)
                        return (QuantMixture)m;
        for (size_t i = 0; i < ELEMENTSOF(aliases); i++)
                if (strcasecmp(aliases[i].alias, name) == 0)
                        return aliases[i].m;
        return _QUANT_MIXTURE_INVALID;
}

const char *quant_mixture_name(QuantMixture m) {
        const MixtureInfo *i = mixture_info(m);
        return i ? i->name : NULL;
}

int quant_mixture_default_type(QuantMixture m) {
        const MixtureInfo *i = mixture_info(m);
        return i ? (int)i->type : -EINVAL;
}

QuantParams quant_params_default(void) {
        return (QuantParams){.mixture = QUANT_MIXTURE_Q8_0};
}

int quant_model_shape_from_gguf(const Gguf *g, QuantModelShape *ret) {
        _cleanup_free_ char *arch = NULL, *key = NULL;
        QuantModelShape s = {};
        int r;

        r = gguf_get_string(g, "general.architecture", &arch);
        if (r < 0 && r != -ENOENT)
                return r;
        if (arch) {
                static const struct {
                        const char *suffix;
                        size_t offset;
                } keys[] = {
                        {"attention.head_count", offsetof(QuantModelShape, n_head)},
                        {"attention.head_count_kv", offsetof(QuantModelShape, n_head_kv)},
                        {"expert_count", offsetof(QuantModelShape, n_expert)},
                        {"block_count", offsetof(QuantModelShape, n_layer)},
                };
                for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                        free(key);
                        key = strdup_printf("%s.%s", arch, keys[i].suffix);
                        if (!key)
                                return -ENOMEM;
                        r = gguf_get_u32(g, key, (uint32_t *)((uint8_t *)&s + keys[i].offset));
                        if (r < 0 && r != -ENOENT)
                                return r;
                }
                s.is_falcon = streq(arch, "falcon");
                s.is_70b = streq(arch, "llama") && s.n_layer == 80 && s.n_head_kv != 0 &&
                           s.n_head != s.n_head_kv;
        }
        *ret = s;
        return 0;
}

/* ---- the rules ---- */

typedef struct Counters {
        int i_attn_v, n_attn_v;
        int i_ffn_down, n_ffn_down;
        bool has_output;
} Counters;

static bool use_more_bits(int i, int n) {
        return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static bool contains(const char *s, const char *part) {
        return strstr(s, part) != NULL;
}

/* Whether llama-quantize would quantize this tensor at all. */
static bool is_quantizable(const GgufTensor *t, const QuantParams *p) {
        static const char *const never[] = {
                "_norm.weight",
                "ffn_gate_inp.weight",
                "ssm_conv1d.weight",
                "attn_rel_b.weight",
        };

        if (!endswith(t->name, "weight") || t->n_dims < 2)
                return false;
        for (size_t i = 0; i < ELEMENTSOF(never); i++)
                if (contains(t->name, never[i]))
                        return false;
        if (streq(t->name, "position_embd.weight") || streq(t->name, "token_types.weight"))
                return false;
        if (p->leave_output && streq(t->name, "output.weight"))
                return false;
        return true;
}

/* The layer a repeated tensor belongs to: its counter for dense models, its "blk.N." for mixtures of
 * experts, whose expert tensors do not come one per layer. */
static int layer_of(const char *name, int counter, const QuantModelShape *s) {
        unsigned layer;

        if (s->n_expert > 1 && sscanf(name, "blk.%u.", &layer) == 1)
                return (int)layer;
        return counter;
}

static uint32_t promote(const GgufTensor *t, QuantMixture m, uint32_t type, const QuantModelShape *s,
                        Counters *c) {
        const char *name = t->name;
        const uint32_t n_gqa = s->n_head_kv ? s->n_head / s->n_head_kv : 1;

        if (streq(name, "output.weight") || (!c->has_output && streq(name, "token_embd.weight"))) {
                if (s->is_falcon || t->ne[0] % QK_K != 0)
                        return GGML_TYPE_Q8_0;
                return type == GGML_TYPE_Q8_0 ? type : GGML_TYPE_Q6_K;
        }
        if (streq(name, "token_embd.weight"))
                return type;

        if (contains(name, "attn_v.weight")) {
                int i = c->i_attn_v++;

                if (m == QUANT_MIXTURE_Q2_K)
                        type = n_gqa >= 4 ? GGML_TYPE_Q4_K : GGML_TYPE_Q3_K;
                else if (m == QUANT_MIXTURE_Q3_K_M)
                        type = i < 2 ? GGML_TYPE_Q5_K : GGML_TYPE_Q4_K;
                else if (m == QUANT_MIXTURE_Q3_K_L)
                        type = GGML_TYPE_Q5_K;
                else if (m == QUANT_MIXTURE_IQ4_NL && n_gqa >= 4)
                        type = GGML_TYPE_Q5_K;
                else if ((m == QUANT_MIXTURE_Q4_K_M || m == QUANT_MIXTURE_Q5_K_M) &&
                         use_more_bits(i, c->n_attn_v))
                        type = GGML_TYPE_Q6_K;
                else if (m == QUANT_MIXTURE_Q4_K_S && i < 4)
                        type = GGML_TYPE_Q5_K;
                /* In 70B models 8 heads share each attn_v, so it is 8x smaller than attn_q: more bits are
                 * nearly free. */
                if (s->is_70b && (type == GGML_TYPE_Q3_K || type == GGML_TYPE_Q4_K))
                        type = GGML_TYPE_Q5_K;
                if (s->n_expert == 8)
                        type = GGML_TYPE_Q8_0;
                return type;
        }
        if (contains(name, "attn_k.weight"))
                return s->n_expert == 8 ? GGML_TYPE_Q8_0 : type;

        if (contains(name, "ffn_down")) {
                int i = layer_of(name, c->i_ffn_down++, s), n = c->n_ffn_down;

                if (m == QUANT_MIXTURE_Q2_K)
                        type = GGML_TYPE_Q3_K;
                else if (m == QUANT_MIXTURE_Q3_K_M)
                        type = i < n / 16                             ? GGML_TYPE_Q5_K
                               : !s->is_falcon || use_more_bits(i, n) ? GGML_TYPE_Q4_K
                                                                      : GGML_TYPE_Q3_K;
                else if (m == QUANT_MIXTURE_Q3_K_L)
                        type = s->is_falcon ? GGML_TYPE_Q4_K : GGML_TYPE_Q5_K;
                else if (m == QUANT_MIXTURE_Q4_K_M) {
                        if (s->is_falcon)
                                type = i < n / 16            ? GGML_TYPE_Q6_K
                                       : use_more_bits(i, n) ? GGML_TYPE_Q5_K
                                                             : GGML_TYPE_Q4_K;
                        else if (use_more_bits(i, n))
                                type = GGML_TYPE_Q6_K;
                } else if (m == QUANT_MIXTURE_IQ4_NL && i < n / 8)
                        type = GGML_TYPE_Q5_K;
                else if (m == QUANT_MIXTURE_Q5_K_M && use_more_bits(i, n))
                        type = GGML_TYPE_Q6_K;
                else if (m == QUANT_MIXTURE_Q4_K_S && !s->is_falcon && i < n / 8)
                        type = GGML_TYPE_Q5_K;
                return type;
        }
        if (contains(name, "attn_output.weight")) {
                if (s->is_falcon)
                        return m == QUANT_MIXTURE_Q3_K_L ? GGML_TYPE_Q4_K : type;
                if (s->n_expert == 8)
                        return m == QUANT_MIXTURE_Q2_K || m == QUANT_MIXTURE_IQ4_NL ||
                                               m == QUANT_MIXTURE_Q4_K_S || m == QUANT_MIXTURE_Q4_K_M
                                       ? GGML_TYPE_Q5_K
                                       : type;
                if (m == QUANT_MIXTURE_Q2_K)
                        return GGML_TYPE_Q3_K;
                if (m == QUANT_MIXTURE_Q3_K_M)
                        return GGML_TYPE_Q4_K;
                if (m == QUANT_MIXTURE_Q3_K_L)
                        return GGML_TYPE_Q5_K;
                return type;
        }
        if (contains(name, "attn_qkv.weight")) {
                if (m == QUANT_MIXTURE_Q3_K_M || m == QUANT_MIXTURE_Q3_K_L)
                        return GGML_TYPE_Q4_K;
                if (m == QUANT_MIXTURE_Q4_K_M)
                        return GGML_TYPE_Q5_K;
                if (m == QUANT_MIXTURE_Q5_K_M)
                        return GGML_TYPE_Q6_K;
        }
        return type;
}

/* A type for rows of ne0 elements when type's blocks do not divide them. */
static uint32_t fallback(uint32_t type, uint64_t ne0) {
        const GgmlTypeInfo *info = ggml_type_info(type);

        if (ne0 % info->block_size == 0)
                return type;
        switch (type) {
        case GGML_TYPE_Q2_K:
        case GGML_TYPE_Q3_K:
                type = GGML_TYPE_Q4_0;
                break;
        case GGML_TYPE_Q4_K:
                type = GGML_TYPE_Q5_0;
                break;
        case GGML_TYPE_Q5_K:
                type = GGML_TYPE_Q5_1;
                break;
        case GGML_TYPE_Q6_K:
                type = GGML_TYPE_Q8_0;
                break;
        default:
                type = GGML_TYPE_F16;
                break;
        }
        return ne0 % ggml_type_info(type)->block_size == 0 ? type : GGML_TYPE_F16;
}

typedef struct CompiledOverride {
        pcre2_code *re;
        uint32_t type;
} CompiledOverride;

static void overrides_free(CompiledOverride *o, size_t n) {
        for (size_t i = 0; i < n && o; i++)
                pcre2_code_free(o[i].re);
        free(o);
}

static int overrides_compile(const QuantParams *p, CompiledOverride **ret, QdError *err) {
        CompiledOverride *o;

        *ret = NULL;
        if (p->n_overrides == 0)
                return 0;
        if (!p->overrides)
                return qd_error_set(err, EINVAL, "Overrides were announced but not given.");
        o = calloc(p->n_overrides, sizeof(CompiledOverride));
        if (!o)
                return -ENOMEM;
        for (size_t i = 0; i < p->n_overrides; i++) {
                int code;
                PCRE2_SIZE offset;

                o[i].type = p->overrides[i].type;
                if (!quant_type_supported(p->overrides[i].type)) {
                        overrides_free(o, p->n_overrides);
                        return qd_error_set(
                                err, EOPNOTSUPP, "Override '%s' asks for type %s, which we cannot write.",
                                strempty(p->overrides[i].pattern), ggml_type_name(p->overrides[i].type));
                }
                if (!p->overrides[i].pattern) {
                        overrides_free(o, p->n_overrides);
                        return qd_error_set(err, EINVAL, "Override %zu has no pattern.", i + 1);
                }
                o[i].re = pcre2_compile((PCRE2_SPTR)p->overrides[i].pattern, PCRE2_ZERO_TERMINATED, 0, &code,
                                        &offset, NULL);
                if (!o[i].re) {
                        PCRE2_UCHAR msg[128];

                        pcre2_get_error_message(code, msg, sizeof(msg));
                        overrides_free(o, p->n_overrides);
                        return qd_error_set(
                                err, EINVAL,
                                "Override pattern '%s' is not a valid regular expression: %s at offset %zu.",
                                p->overrides[i].pattern, (const char *)msg, (size_t)offset);
                }
        }
        *ret = o;
        return 0;
}

/* The last override whose pattern matches name, or -ENOENT. */
static int override_for(const CompiledOverride *o, size_t n, const char *name, uint32_t *ret) {
        pcre2_match_data *md;
        int found = -ENOENT;

        if (n == 0)
                return -ENOENT;
        md = pcre2_match_data_create(1, NULL);
        if (!md)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                if (pcre2_match(o[i].re, (PCRE2_SPTR)name, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) >= 0) {
                        *ret = o[i].type;
                        found = 0;
                }
        pcre2_match_data_free(md);
        return found;
}

int quant_choose_types(const QuantParams *p, const QuantModelShape *shape, const GgufTensor *tensors,
                       size_t n, uint32_t *ret_types, QdError *err) {
        CompiledOverride *o = NULL;
        Counters c = {};
        int r, dt;

        if (!p || !shape || (n > 0 && (!tensors || !ret_types)))
                return qd_error_set(err, EINVAL, "Missing arguments to choose tensor types.");
        dt = quant_mixture_default_type(p->mixture);
        if (dt < 0)
                return qd_error_set(err, EINVAL, "Unknown mixture %d.", (int)p->mixture);
        const uint32_t default_type = (uint32_t)dt;
        const bool rules = !p->pure && ggml_type_info(default_type)->quantized;

        for (size_t i = 0; i < n; i++) {
                if (streq(tensors[i].name, "output.weight"))
                        c.has_output = true;
                if (contains(tensors[i].name, "attn_v.weight") && is_quantizable(&tensors[i], p))
                        c.n_attn_v++;
                if (contains(tensors[i].name, "ffn_down") && is_quantizable(&tensors[i], p))
                        c.n_ffn_down++;
        }
        if (shape->n_layer > 0)
                c.n_ffn_down = (int)shape->n_layer;

        r = overrides_compile(p, &o, err);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                const GgufTensor *t = &tensors[i];
                uint32_t type = default_type, wanted;

                if (!is_quantizable(t, p)) {
                        ret_types[i] = t->type;
                        continue;
                }
                if (rules)
                        type = promote(t, p->mixture, type, shape, &c);
                type = fallback(type, t->ne[0]);

                r = override_for(o, p->n_overrides, t->name, &wanted);
                if (r == -ENOMEM)
                        break;
                if (r >= 0) {
                        if (t->ne[0] % ggml_type_info(wanted)->block_size != 0) {
                                r = qd_error_set(err, EINVAL,
                                                 "Tensor '%s' has rows of %" PRIu64
                                                 " elements, which type %s (blocks of %u) cannot hold; "
                                                 "choose another type for it.",
                                                 t->name, t->ne[0], ggml_type_name(wanted),
                                                 ggml_type_info(wanted)->block_size);
                                break;
                        }
                        type = wanted;
                }
                ret_types[i] = type;
                r = 0;
        }
        overrides_free(o, p->n_overrides);
        return r < 0 ? r : 0;
}
