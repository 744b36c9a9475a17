/* SPDX-License-Identifier: MIT */
/*
 * convert-vocab: the vocabulary of a Hugging Face model folder as GGUF tokenizer.ggml.* keys, for
 * quant_convert_hf().
 *
 * DESIGN: two GGUF tokenizers come out of three sources.
 *  - tokenizer.model, a SentencePiece model (Llama 1/2, Mistral, TinyLlama): GGUF's "llama" tokenizer. It is
 *    preferred whenever the folder has one, because its pieces, scores and types are the tokenizer's own;
 *    tokenizer.json may then be missing, as in older folders.
 *  - tokenizer.json whose model is BPE with byte fallback or Unigram (a SentencePiece vocabulary that
 *    transformers converted): also "llama". Unigram files carry the scores. A BPE file carries merges
 *    instead; the engine's SentencePiece tokenizer merges the adjacent pair whose joined text scores
 *    highest, so the token a merge of rank r makes scores -r, and the order of merges is kept. Tokens no
 *    merge makes (single characters) score below every merge; bytes and specials score 0 as in
 *    SentencePiece.
 *  - tokenizer.json with a byte-level BPE: GGUF's "gpt2" tokenizer with its merges, and the pre-tokenizer's
 *    name from a small table of the pre_tokenizer sections we know.
 * Added tokens (tokenizer.json's added_tokens, else tokenizer_config.json's added_tokens_decoder, else
 * added_tokens.json) become control tokens when special, user-defined otherwise. Over a SentencePiece piece
 * of the same text they keep the piece's own type when it is not a normal one: "<unk>" stays unknown, as
 * sentencepiece says, where llama.cpp's converter would call it control. Ids the model has embedding rows
 * for but no token are "[PAD<id>]", unused, score -1000. GGUF has no place for SentencePiece's normalizer
 * beyond the dummy prefix (tokenizer.ggml.add_space_prefix), so a model that normalizes text (NFKC,
 * collapsing spaces) is tokenized without it, as llama.cpp does.
 */

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf-internal.h"

#define TOKENIZER_MODEL_MAX (64U * 1024U * 1024U)

typedef struct Vocab {
        const char *model; /* tokenizer.ggml.model: "gpt2" or "llama" */
        char **tokens;     /* (n) */
        float *scores;     /* (n) */
        int32_t *types;    /* (n) SPM_TYPE_* */
        size_t n;
        char **merges;       /* (n_merges) "a b" */
        size_t *merge_split; /* (n_merges) where " " sits in merges[i] */
        size_t n_merges;
        bool add_space_prefix;
        int32_t spm_ids[4]; /* tokenizer.model's unk, bos, eos, pad ids; -1 none */
} Vocab;

static void vocab_done(Vocab *v) {
        for (size_t i = 0; v->tokens && i < v->n; i++)
                free(v->tokens[i]);
        free(v->tokens);
        free(v->scores);
        free(v->types);
        for (size_t i = 0; v->merges && i < v->n_merges; i++)
                free(v->merges[i]);
        free(v->merges);
        free(v->merge_split);
}

static int vocab_alloc(Vocab *v, size_t n) {
        v->n = n;
        v->tokens = calloc(n, sizeof(char *));
        v->scores = calloc(n, sizeof(float));
        v->types = calloc(n, sizeof(int32_t));
        for (size_t i = 0; i < ELEMENTSOF(v->spm_ids); i++)
                v->spm_ids[i] = -1;
        return v->tokens && v->scores && v->types ? 0 : -ENOMEM;
}

static int set_token(Vocab *v, size_t id, const char *text, float score, int32_t type) {
        char *s = strdup(text);

        if (!s)
                return -ENOMEM;
        free(v->tokens[id]);
        v->tokens[id] = s;
        v->scores[id] = score;
        v->types[id] = type;
        return 0;
}

static int token_id(const Vocab *v, const char *s) {
        for (size_t i = 0; i < v->n; i++)
                if (v->tokens[i] && streq(v->tokens[i], s))
                        return (int)i;
        return -1;
}

/* SentencePiece's byte tokens are "<0x0A>". */
static bool is_byte_token(const char *s) {
        return strlen(s) == 6 && startswith(s, "<0x") && isxdigit((unsigned char)s[3]) &&
               isxdigit((unsigned char)s[4]) && s[5] == '>';
}

/* ---- tokenizer.model ---- */

static int read_spm_model(const char *data, size_t len, uint32_t n_vocab, Vocab *v, QdError *err) {
        _cleanup_(spm_model_freep) SpmModel *m = NULL;
        int r;

        r = spm_model_parse(data, len, &m, err);
        if (r < 0)
                return r;
        if (m->n_pieces > n_vocab)
                return qd_error_set(err, EBADMSG,
                                    "tokenizer.model has %zu pieces but the model has rows for %" PRIu32
                                    " tokens.",
                                    m->n_pieces, n_vocab);
        v->model = "llama";
        r = vocab_alloc(v, n_vocab);
        if (r < 0)
                return r;
        for (size_t i = 0; i < m->n_pieces; i++)
                if ((r = set_token(v, i, m->pieces[i].text, m->pieces[i].score, m->pieces[i].type)) < 0)
                        return r;
        v->add_space_prefix = m->add_dummy_prefix;
        v->spm_ids[0] = m->unk_id;
        v->spm_ids[1] = m->bos_id;
        v->spm_ids[2] = m->eos_id;
        v->spm_ids[3] = m->pad_id;
        return 0;
}

/* ---- tokenizer.json ---- */

/* The pre-tokenizer's GGUF name from tokenizer.json's pre_tokenizer section. */
static const char *guess_pre(json_object *tok) {
        json_object *pre, *list, *first, *pattern;
        const char *type, *regex;

        if (!json_object_object_get_ex(tok, "pre_tokenizer", &pre) ||
            !json_object_is_type(pre, json_type_object))
                return "default";
        type = quant_json_str(pre, "type");
        if (!type || !streq(type, "Sequence") || !json_object_object_get_ex(pre, "pretokenizers", &list) ||
            json_object_array_length(list) < 1)
                return "default";
        first = json_object_array_get_idx(list, 0);
        type = quant_json_str(first, "type");
        if (type && streq(type, "Digits") && quant_json_true(first, "individual_digits"))
                return "smollm";
        if (!type || !streq(type, "Split") || !json_object_object_get_ex(first, "pattern", &pattern))
                return "default";
        regex = quant_json_str(pattern, "Regex");
        if (!regex)
                return "default";
        if (strstr(regex, "\\p{N}{1,3}"))
                return "llama-bpe";
        if (strstr(regex, "\\p{N}|"))
                return "qwen2";
        return "default";
}

/* Whether a normalizer or pre-tokenizer section (or a Sequence of them) puts "▁" in front of the text. */
static bool adds_space_prefix(json_object *o) {
        const char *type = quant_json_str(o, "type"), *s;
        json_object *list, *b;

        if (!type)
                return false;
        if (streq(type, "Sequence")) {
                if (!json_object_object_get_ex(o, "normalizers", &list) &&
                    !json_object_object_get_ex(o, "pretokenizers", &list))
                        return false;
                for (size_t i = 0;
                     json_object_is_type(list, json_type_array) && i < json_object_array_length(list); i++)
                        if (adds_space_prefix(json_object_array_get_idx(list, i)))
                                return true;
                return false;
        }
        if (streq(type, "Prepend"))
                return (s = quant_json_str(o, "prepend")) && streq(s, "\xe2\x96\x81");
        if (streq(type, "Metaspace")) {
                if ((s = quant_json_str(o, "prepend_scheme")))
                        return !streq(s, "never");
                /* Before tokenizers 0.14: add_prefix_space. */
                return !json_object_object_get_ex(o, "add_prefix_space", &b) || json_object_get_boolean(b);
        }
        return false;
}

static int read_json_vocab(json_object *tok, uint32_t n_vocab, Vocab *v, QdError *err) {
        json_object *model, *vocab, *o;
        const char *type, *unk = NULL;
        bool byte_fallback, unigram;
        int64_t unk_id = -1;
        int r;

        if (!json_object_object_get_ex(tok, "model", &model) || !(type = quant_json_str(model, "type")))
                return qd_error_set(err, EBADMSG, "tokenizer.json has no model type.");
        unigram = streq(type, "Unigram");
        if (!streq(type, "BPE") && !unigram)
                return qd_error_set(err, EOPNOTSUPP,
                                    "Cannot convert a %s tokenizer; BPE and Unigram are known.", type);
        byte_fallback = quant_json_true(model, "byte_fallback");
        /* Byte fallback or Unigram marks a SentencePiece vocabulary in tokenizers' clothes. */
        v->model = byte_fallback || unigram ? "llama" : "gpt2";
        if (!json_object_object_get_ex(model, "vocab", &vocab) ||
            !json_object_is_type(vocab, unigram ? json_type_array : json_type_object))
                return qd_error_set(err, EBADMSG, "tokenizer.json has no vocab %s.",
                                    unigram ? "array" : "object");
        r = vocab_alloc(v, n_vocab);
        if (r < 0)
                return r;

        if (unigram) {
                size_t n = json_object_array_length(vocab);

                if (n > n_vocab)
                        return qd_error_set(
                                err, EBADMSG,
                                "tokenizer.json has %zu tokens but the model has rows for %" PRIu32 ".", n,
                                n_vocab);
                for (size_t i = 0; i < n; i++) {
                        json_object *e = json_object_array_get_idx(vocab, i), *text, *score;

                        if (!json_object_is_type(e, json_type_array) || json_object_array_length(e) != 2 ||
                            !json_object_is_type(text = json_object_array_get_idx(e, 0), json_type_string) ||
                            !(json_object_is_type(score = json_object_array_get_idx(e, 1),
                                                  json_type_double) ||
                              json_object_is_type(score, json_type_int)))
                                return qd_error_set(
                                        err, EBADMSG,
                                        "tokenizer.json's Unigram entry %zu is not [piece, score].", i);
                        r = set_token(v, i, json_object_get_string(text),
                                      (float)json_object_get_double(score), SPM_TYPE_NORMAL);
                        if (r < 0)
                                return r;
                }
                if (json_object_object_get_ex(model, "unk_id", &o) && json_object_is_type(o, json_type_int))
                        unk_id = json_object_get_int64(o);
        } else {
                json_object_object_foreach(vocab, key, val) {
                        int64_t id = json_object_get_int64(val);

                        if (!json_object_is_type(val, json_type_int) || id < 0 || id >= n_vocab)
                                return qd_error_set(
                                        err, EBADMSG,
                                        "tokenizer.json gives token '%s' an id outside 0..%" PRIu32 ".", key,
                                        n_vocab - 1);
                        if (v->tokens[id])
                                return qd_error_set(err, EBADMSG,
                                                    "tokenizer.json gives id %" PRId64 " to two tokens.",
                                                    id);
                        if ((r = set_token(v, (size_t)id, key, 0, SPM_TYPE_NORMAL)) < 0)
                                return r;
                }
                unk = quant_json_str(model, "unk_token");
        }

        for (size_t i = 0; byte_fallback && i < v->n; i++)
                if (v->tokens[i] && is_byte_token(v->tokens[i]))
                        v->types[i] = SPM_TYPE_BYTE;
        if (unk)
                unk_id = token_id(v, unk);
        if (streq(v->model, "llama") && unk_id >= 0 && unk_id < n_vocab && v->tokens[unk_id])
                v->types[unk_id] = SPM_TYPE_UNKNOWN;
        if (streq(v->model, "llama")) {
                json_object *norm = NULL, *pre = NULL;

                v->add_space_prefix =
                        (json_object_object_get_ex(tok, "normalizer", &norm) && adds_space_prefix(norm)) ||
                        (json_object_object_get_ex(tok, "pre_tokenizer", &pre) && adds_space_prefix(pre));
        }
        return 0;
}

static int read_merges(json_object *tok, Vocab *v, QdError *err) {
        json_object *model, *merges;

        if (!json_object_object_get_ex(tok, "model", &model) ||
            !json_object_object_get_ex(model, "merges", &merges) ||
            !json_object_is_type(merges, json_type_array))
                return qd_error_set(err, EBADMSG, "tokenizer.json has no merges array.");
        v->n_merges = json_object_array_length(merges);
        v->merges = calloc(v->n_merges + 1, sizeof(char *));
        v->merge_split = calloc(v->n_merges + 1, sizeof(size_t));
        if (!v->merges || !v->merge_split)
                return -ENOMEM;
        for (size_t i = 0; i < v->n_merges; i++) {
                json_object *m = json_object_array_get_idx(merges, i);
                const char *s;

                /* Older files write "a b", newer ones ["a", "b"]. */
                if (json_object_is_type(m, json_type_string) && strchr(s = json_object_get_string(m), ' ')) {
                        v->merges[i] = strdup(s);
                        v->merge_split[i] = (size_t)(strchr(s, ' ') - s);
                } else if (json_object_is_type(m, json_type_array) && json_object_array_length(m) == 2 &&
                           json_object_is_type(json_object_array_get_idx(m, 0), json_type_string) &&
                           json_object_is_type(json_object_array_get_idx(m, 1), json_type_string)) {
                        s = json_object_get_string(json_object_array_get_idx(m, 0));
                        v->merges[i] = strdup_printf(
                                "%s %s", s, json_object_get_string(json_object_array_get_idx(m, 1)));
                        v->merge_split[i] = strlen(s);
                } else
                        return qd_error_set(err, EBADMSG,
                                            "tokenizer.json's merge %zu is neither \"a b\" nor a pair.", i);
                if (!v->merges[i])
                        return -ENOMEM;
        }
        return 0;
}

typedef struct ById {
        const char *text;
        uint32_t id;
} ById;

static int by_text_cmp(const void *a, const void *b) {
        return strcmp(((const ById *)a)->text, ((const ById *)b)->text);
}

/* Scores for a SentencePiece vocabulary that tokenizer.json gives as BPE merges (see DESIGN). */
static int scores_from_merges(Vocab *v) {
        _cleanup_free_ ById *index = calloc(v->n, sizeof(ById));
        _cleanup_free_ bool *made = calloc(v->n, sizeof(bool));
        _cleanup_free_ char *joined = NULL;
        size_t longest = 0;

        if (!index || !made)
                return -ENOMEM;
        for (size_t i = 0; i < v->n; i++) {
                index[i] = (ById){.text = v->tokens[i], .id = (uint32_t)i};
                if (v->types[i] == SPM_TYPE_NORMAL)
                        v->scores[i] = -(float)(v->n_merges + i);
        }
        qsort(index, v->n, sizeof(ById), by_text_cmp);
        for (size_t i = 0; i < v->n_merges; i++)
                longest = MAX(longest, strlen(v->merges[i]));
        joined = malloc(longest + 1);
        if (!joined)
                return -ENOMEM;
        for (size_t i = 0; i < v->n_merges; i++) {
                const char *m = v->merges[i];
                size_t at = v->merge_split[i];
                ById key = {.text = joined}, *hit;

                memcpy(joined, m, at);
                strcpy(joined + at, m + at + 1);
                hit = bsearch(&key, index, v->n, sizeof(ById), by_text_cmp);
                /* The first (lowest-ranked) merge that makes a token decides its score. */
                if (hit && !made[hit->id] && v->types[hit->id] == SPM_TYPE_NORMAL) {
                        made[hit->id] = true;
                        v->scores[hit->id] = -(float)i;
                }
        }
        return 0;
}

/* ---- added tokens, specials, flags ---- */

static int add_token(Vocab *v, int64_t id, const char *content, bool special, QdError *err) {
        bool llama = streq(v->model, "llama");

        if (id < 0 || (uint64_t)id >= v->n)
                return qd_error_set(err, EBADMSG, "The added token '%s' has an id outside the vocabulary.",
                                    content);
        /* A SentencePiece piece of the same text keeps its own type unless it is a normal one. */
        if (llama && v->tokens[id] && streq(v->tokens[id], content) && v->types[id] != SPM_TYPE_NORMAL &&
            v->types[id] != SPM_TYPE_UNUSED)
                return 0;
        return set_token(v, (size_t)id, content, llama && !v->tokens[id] ? -1000.0f : v->scores[id],
                         special ? SPM_TYPE_CONTROL : SPM_TYPE_USER_DEFINED);
}

static int read_added_tokens(int dirfd, json_object *tok, json_object *tc, Vocab *v, QdError *err) {
        _cleanup_(json_object_putp) json_object *file = NULL;
        json_object *added, *o;
        int r;

        if (tok && json_object_object_get_ex(tok, "added_tokens", &added) &&
            json_object_is_type(added, json_type_array)) {
                for (size_t i = 0; i < json_object_array_length(added); i++) {
                        json_object *a = json_object_array_get_idx(added, i);
                        const char *content = quant_json_str(a, "content");
                        int64_t id;

                        if (!content || !json_object_object_get_ex(a, "id", &o) ||
                            !json_object_is_type(o, json_type_int))
                                return qd_error_set(err, EBADMSG,
                                                    "tokenizer.json has an added token without a content or "
                                                    "an id.");
                        id = json_object_get_int64(o);
                        r = add_token(v, id, content, quant_json_true(a, "special"), err);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        /* Without tokenizer.json, tokenizer_config.json has them by id: {"32000": {"content": ...}}. */
        if (tc && json_object_object_get_ex(tc, "added_tokens_decoder", &added) &&
            json_object_is_type(added, json_type_object)) {
                json_object_object_foreach(added, key, a) {
                        const char *content = quant_json_str(a, "content");
                        char *end;
                        long long id = strtoll(key, &end, 10);

                        if (!content || *end || end == key)
                                return qd_error_set(
                                        err, EBADMSG,
                                        "tokenizer_config.json's added token '%s' has no content "
                                        "or is not an id.",
                                        key);
                        r = add_token(v, id, content, quant_json_true(a, "special"), err);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        /* Older folders list them in added_tokens.json: {"<pad>": 32000}, none special. */
        r = quant_read_json_at(dirfd, "added_tokens.json", &file, err);
        if (r == -ENOENT) {
                qd_error_clear(err);
                return 0;
        }
        if (r < 0)
                return r;
        json_object_object_foreach(file, key, val) {
                if (!json_object_is_type(val, json_type_int))
                        return qd_error_set(err, EBADMSG, "added_tokens.json gives '%s' no id.", key);
                if ((r = add_token(v, json_object_get_int64(val), key, false, err)) < 0)
                        return r;
        }
        return 0;
}

/* A special token of tokenizer_config.json ("bos_token": "<s>" or {"content": "<s>"}) as an id, or -1. */
static int special_id(json_object *tc, const char *key, const Vocab *v) {
        json_object *o;
        const char *s = NULL;

        if (!tc || !json_object_object_get_ex(tc, key, &o))
                return -1;
        if (json_object_is_type(o, json_type_string))
                s = json_object_get_string(o);
        else if (json_object_is_type(o, json_type_object))
                s = quant_json_str(o, "content");
        return s ? token_id(v, s) : -1;
}

/* Whether tokenizer.json's post-processor puts a special token first (BOS) or last (EOS) of one text. */
static bool post_processor_adds(json_object *tok, bool last) {
        json_object *pp, *single, *e;
        size_t n;

        if (!tok || !json_object_object_get_ex(tok, "post_processor", &pp) ||
            !json_object_is_type(pp, json_type_object) ||
            !json_object_object_get_ex(pp, "single", &single) ||
            !json_object_is_type(single, json_type_array) || (n = json_object_array_length(single)) < 1)
                return false;
        e = json_object_array_get_idx(single, last ? n - 1 : 0);
        return json_object_is_type(e, json_type_object) &&
               json_object_object_get_ex(e, "SpecialToken", NULL);
}

static bool flag(json_object *tc, const char *key, bool def) {
        json_object *o;

        if (tc && json_object_object_get_ex(tc, key, &o) && json_object_is_type(o, json_type_boolean))
                return json_object_get_boolean(o);
        return def;
}

static int write_specials(GgufWriter *w, json_object *cfg, json_object *tc, Vocab *v) {
        static const struct {
                const char *tc_key, *cfg_key, *gguf_key;
        } specials[] = {
                {"unk_token", NULL, "tokenizer.ggml.unknown_token_id"},
                {"bos_token", "bos_token_id", "tokenizer.ggml.bos_token_id"},
                {"eos_token", "eos_token_id", "tokenizer.ggml.eos_token_id"},
                {"pad_token", "pad_token_id", "tokenizer.ggml.padding_token_id"},
        };
        json_object *o;
        int r;

        for (size_t i = 0; i < ELEMENTSOF(specials); i++) {
                int64_t id = special_id(tc, specials[i].tc_key, v);

                if (id < 0 && specials[i].cfg_key &&
                    json_object_object_get_ex(cfg, specials[i].cfg_key, &o) &&
                    json_object_is_type(o, json_type_int))
                        id = json_object_get_int64(o);
                /* Last, what tokenizer.model's trainer says. */
                if ((id < 0 || (uint64_t)id >= v->n) && v->spm_ids[i] >= 0)
                        id = v->spm_ids[i];
                if (id < 0 || (uint64_t)id >= v->n)
                        continue;
                if (i == 0 && streq(v->model, "llama") && v->types[id] != SPM_TYPE_BYTE)
                        v->types[id] = SPM_TYPE_UNKNOWN;
                if ((r = gguf_writer_add_u32(w, specials[i].gguf_key, (uint32_t)id)) < 0)
                        return r;
        }
        return 0;
}

int quant_convert_vocab(GgufWriter *w, int dirfd, json_object *cfg, uint32_t n_vocab, const char *pre,
                        QdError *err) {
        _cleanup_(json_object_putp) json_object *tok = NULL, *tc = NULL;
        _cleanup_free_ char *spm = NULL, *template = NULL;
        size_t spm_len = 0;
        Vocab v = {};
        bool llama;
        int r;

        r = quant_read_file_at(dirfd, "tokenizer.model", TOKENIZER_MODEL_MAX, &spm, &spm_len, err);
        if (r == -ENOENT)
                qd_error_clear(err);
        else if (r < 0)
                return r;
        r = quant_read_json_at(dirfd, "tokenizer.json", &tok, err);
        if (r == -ENOENT && spm)
                qd_error_clear(err);
        else if (r < 0)
                return r;
        r = quant_read_json_at(dirfd, "tokenizer_config.json", &tc, err);
        if (r == -ENOENT)
                qd_error_clear(err);
        else if (r < 0)
                return r;

        r = spm ? read_spm_model(spm, spm_len, n_vocab, &v, err) : read_json_vocab(tok, n_vocab, &v, err);
        if (r < 0)
                goto finish;
        llama = streq(v.model, "llama");
        r = read_added_tokens(dirfd, tok, tc, &v, err);
        if (r < 0)
                goto finish;
        /* Ids the model has rows for but the tokenizer never produces. */
        for (uint32_t i = 0; i < n_vocab; i++)
                if (!v.tokens[i]) {
                        v.tokens[i] = strdup_printf("[PAD%" PRIu32 "]", i);
                        if (!v.tokens[i]) {
                                r = -ENOMEM;
                                goto finish;
                        }
                        v.scores[i] = -1000.0f;
                        v.types[i] = SPM_TYPE_UNUSED;
                }
        /* BPE: gpt2 writes the merges, llama turns them into scores; Unigram has its scores. */
        if (!spm && streq(quant_json_str(json_object_object_get(tok, "model"), "type"), "BPE")) {
                r = read_merges(tok, &v, err);
                if (r >= 0 && llama)
                        r = scores_from_merges(&v);
                if (r < 0)
                        goto finish;
        }

        if (!llama && !pre)
                pre = guess_pre(tok);
        if ((r = gguf_writer_add_string(w, "tokenizer.ggml.model", v.model)) < 0 ||
            (r = gguf_writer_add_string(w, "tokenizer.ggml.pre", llama ? "default" : pre)) < 0 ||
            (r = gguf_writer_add_string_array(w, "tokenizer.ggml.tokens", (const char *const *)v.tokens,
                                              v.n)) < 0)
                goto finish;
        if (llama &&
            (r = gguf_writer_add_array(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, v.scores, v.n)) < 0)
                goto finish;
        if (!llama && (r = gguf_writer_add_string_array(w, "tokenizer.ggml.merges",
                                                        (const char *const *)v.merges, v.n_merges)) < 0)
                goto finish;
        /* After the specials: the unknown token's type is settled there. */
        if ((r = write_specials(w, cfg, tc, &v)) < 0 ||
            (r = gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v.types, v.n)) < 0)
                goto finish;

        /* LlamaTokenizer adds BOS unless told otherwise; tokenizers' files say it in the post-processor. */
        if ((r = gguf_writer_add_bool(
                     w, "tokenizer.ggml.add_bos_token",
                     flag(tc, "add_bos_token", tok ? post_processor_adds(tok, false) : true))) < 0 ||
            (r = gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token",
                                      flag(tc, "add_eos_token", post_processor_adds(tok, true)))) < 0)
                goto finish;
        if (llama &&
            (r = gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", v.add_space_prefix)) < 0)
                goto finish;

        /* The template sits in tokenizer_config.json, or since transformers 4.43 may sit in its own file. */
        if (quant_json_str(tc, "chat_template"))
                r = gguf_writer_add_string(w, "tokenizer.chat_template",
                                           quant_json_str(tc, "chat_template"));
        else if (quant_read_file_at(dirfd, "chat_template.jinja", 1U << 20, &template, NULL, NULL) >= 0)
                r = gguf_writer_add_string(w, "tokenizer.chat_template", template);
        else
                r = 0;
finish:
        vocab_done(&v);
        return r;
}
