/* SPDX-License-Identifier: MIT */
/*
 * Model parameters: the one table of names and types that Modelfile PARAMETER lines, `qctl run -o NAME=VALUE`
 * and chat's `/set parameter` all use, the parsing of values, and an ordered set of parsed values.
 *
 * The names and types are Ollama's, as its Modelfile and API documentation list them, so that existing
 * Modelfiles keep working. Names that Ollama has since retired are still accepted and marked deprecated: the
 * caller drops them with a warning instead of rejecting a Modelfile that used to be valid.
 */

#include <inttypes.h>
#include <strings.h>

#include "client.h"

static const ParamInfo params[] = {
        /* sampling */
        { "temperature", PARAM_FLOAT, false, false, "randomness of sampling; 0 is greedy (default 0.8)" },
        { "seed", PARAM_INT, false, false, "random seed, for repeatable output (default random)" },
        { "top_k", PARAM_INT, false, false, "sample among the K most likely tokens (default 40)" },
        { "top_p", PARAM_FLOAT, false, false, "sample among the most likely tokens whose mass is P (default 0.9)" },
        { "min_p", PARAM_FLOAT, false, false, "drop tokens below P times the likeliest one (default 0.0)" },
        { "typical_p", PARAM_FLOAT, false, false, "locally typical sampling with mass P (default 1.0, off)" },
        { "repeat_last_n", PARAM_INT, false, false, "how far back penalties look; 0 off, -1 num_ctx (default 64)" },
        { "repeat_penalty", PARAM_FLOAT, false, false, "penalty for repeated tokens (default 1.1)" },
        { "presence_penalty", PARAM_FLOAT, false, false, "penalty for tokens already present (default 0.0)" },
        { "frequency_penalty", PARAM_FLOAT, false, false, "penalty growing with a token's count (default 0.0)" },
        { "penalize_newline", PARAM_BOOL, false, false, "whether penalties apply to the newline token" },
        { "mirostat", PARAM_INT, false, false, "Mirostat sampling: 0 off, 1 Mirostat, 2 Mirostat 2.0 (default 0)" },
        { "mirostat_eta", PARAM_FLOAT, false, false, "Mirostat learning rate (default 0.1)" },
        { "mirostat_tau", PARAM_FLOAT, false, false, "Mirostat target surprise (default 5.0)" },
        { "tfs_z", PARAM_FLOAT, false, false, "tail-free sampling; 1.0 is off (default 1.0)" },
        /* generation */
        { "num_predict", PARAM_INT, false, false, "most tokens to generate; -1 unlimited, -2 fill the context" },
        { "stop", PARAM_STRING, true, false, "stop generating at this text; repeat for several" },
        { "num_keep", PARAM_INT, false, false, "prompt tokens kept when the context overflows" },
        /* runner */
        { "num_ctx", PARAM_INT, false, false, "context window in tokens (default 2048)" },
        { "num_batch", PARAM_INT, false, false, "prompt tokens processed per batch (default 512)" },
        { "num_gpu", PARAM_INT, false, false, "layers to place on the GPU; -1 as many as fit" },
        { "main_gpu", PARAM_INT, false, false, "the GPU that holds small tensors when several are used" },
        { "num_thread", PARAM_INT, false, false, "CPU threads (default: the number of physical cores)" },
        { "use_mmap", PARAM_BOOL, false, false, "map the model file instead of reading it" },
        { "numa", PARAM_BOOL, false, false, "NUMA-aware thread placement" },
        /* retired by Ollama: accepted and dropped */
        { "use_mlock", PARAM_BOOL, false, true, "no longer used" },
        { "low_vram", PARAM_BOOL, false, true, "no longer used" },
        { "f16_kv", PARAM_BOOL, false, true, "no longer used" },
        { "logits_all", PARAM_BOOL, false, true, "no longer used" },
        { "vocab_only", PARAM_BOOL, false, true, "no longer used" },
        { "embedding_only", PARAM_BOOL, false, true, "no longer used" },
        { "num_gqa", PARAM_INT, false, true, "no longer used: read from the model" },
        { "rope_frequency_base", PARAM_FLOAT, false, true, "no longer used: read from the model" },
        { "rope_frequency_scale", PARAM_FLOAT, false, true, "no longer used: read from the model" },
};

const ParamInfo *param_table(size_t *ret_n) {
        *ret_n = ELEMENTSOF(params);
        return params;
}

const ParamInfo *param_lookup(const char *name) {
        if (!name)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(params); i++)
                if (strcasecmp(params[i].name, name) == 0)
                        return &params[i];
        return NULL;
}

const char *param_type_to_string(ParamType t) {
        switch (t) {
        case PARAM_INT:
                return "integer";
        case PARAM_FLOAT:
                return "number";
        case PARAM_BOOL:
                return "boolean";
        case PARAM_STRING:
                return "string";
        case _PARAM_TYPE_MAX:
        case _PARAM_TYPE_INVALID:
                break;
        }
        return NULL;
}

static int parse_bool(const char *s, bool *ret) {
        static const char *const yes[] = { "1", "t", "true" }, *const no[] = { "0", "f", "false" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

int param_parse_value(const ParamInfo *p, const char *text, ParamValue *ret, QdError *e) {
        ParamValue v = { .info = p };
        int r = 0;

        switch (p->type) {
        case PARAM_INT:
                r = safe_atoi64(text, &v.i);
                if (r == -ERANGE)
                        return qd_error_set(e, EINVAL, "expected an integer that fits in 64 bits for %s, found '%s'",
                                            p->name, text);
                break;
        case PARAM_FLOAT:
                r = safe_atod(text, &v.f);
                break;
        case PARAM_BOOL:
                r = parse_bool(text, &v.b);
                break;
        case PARAM_STRING:
                v.s = strdup(text);
                if (!v.s)
                        return -ENOMEM;
                break;
        case _PARAM_TYPE_MAX:
        case _PARAM_TYPE_INVALID:
                return -EINVAL;
        }
        if (r < 0)
                return qd_error_set(e, EINVAL, "expected %s %s for %s, found '%s'",
                                    p->type == PARAM_INT ? "an" : "a", param_type_to_string(p->type), p->name,
                                    text);
        *ret = v;
        return 0;
}

static void param_value_done(ParamValue *v) {
        if (v->info && v->info->type == PARAM_STRING)
                free(v->s);
        *v = (ParamValue){};
}

static ParamValue *param_set_find(const ParamSet *s, const ParamInfo *p) {
        for (size_t i = 0; i < s->n; i++)
                if (s->items[i].info == p)
                        return &s->items[i];
        return NULL;
}

static int param_set_put(ParamSet *s, ParamValue *v) {
        ParamValue *old = v->info->repeatable ? NULL : param_set_find(s, v->info);

        if (old) {
                param_value_done(old);
                *old = *v;
                *v = (ParamValue){};
                return 0;
        }
        ParamValue *items = reallocarray(s->items, s->n + 1, sizeof(ParamValue));
        if (!items)
                return -ENOMEM;
        s->items = items;
        s->items[s->n++] = *v;
        *v = (ParamValue){};
        return 0;
}

int param_set_add(ParamSet *s, const char *name, const char *text, QdError *e) {
        const ParamInfo *p = param_lookup(name);
        ParamValue v;
        int r;

        if (!p)
                return qd_error_set(e, ENOENT, "unknown parameter '%s' (modelfile(5) lists them)", name);
        r = param_parse_value(p, text, &v, e);
        if (r < 0)
                return r;
        r = param_set_put(s, &v);
        if (r < 0)
                param_value_done(&v);
        return r;
}

int param_set_add_assignment(ParamSet *s, const char *assignment, QdError *e) {
        const char *eq = strchr(assignment, '=');

        if (!eq || eq == assignment)
                return qd_error_set(e, EINVAL, "expected NAME=VALUE, found '%s'", assignment);
        _cleanup_free_ char *name = strndup(assignment, (size_t)(eq - assignment));
        if (!name)
                return -ENOMEM;
        return param_set_add(s, name, eq + 1, e);
}

size_t param_set_remove(ParamSet *s, const char *name) {
        const ParamInfo *p = param_lookup(name);
        size_t j = 0, removed = 0;

        for (size_t i = 0; i < s->n; i++) {
                if (p && s->items[i].info == p) {
                        param_value_done(&s->items[i]);
                        removed++;
                } else
                        s->items[j++] = s->items[i];
        }
        s->n = j;
        return removed;
}

const ParamValue *param_set_get(const ParamSet *s, const char *name) {
        const ParamInfo *p = param_lookup(name);

        return p ? param_set_find(s, p) : NULL;
}

int param_value_format(const ParamValue *v, Buf *out) {
        switch (v->info->type) {
        case PARAM_INT:
                return buf_printf(out, "%" PRId64, v->i);
        case PARAM_FLOAT: {
                /* The shortest form that reads back as the same double, as Go's %v prints it. */
                char tmp[64];
                for (int prec = 1; prec <= 17; prec++) {
                        snprintf(tmp, sizeof(tmp), "%.*g", prec, v->f);
                        if (strtod(tmp, NULL) == v->f)
                                break;
                }
                return buf_append_str(out, tmp);
        }
        case PARAM_BOOL:
                return buf_append_str(out, v->b ? "true" : "false");
        case PARAM_STRING:
                return modelfile_quote(v->s, out);
        case _PARAM_TYPE_MAX:
        case _PARAM_TYPE_INVALID:
                break;
        }
        return -EINVAL;
}

void param_set_done(ParamSet *s) {
        for (size_t i = 0; i < s->n; i++)
                param_value_done(&s->items[i]);
        free(s->items);
        *s = (ParamSet){};
}
