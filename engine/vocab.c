/* SPDX-License-Identifier: MIT */
/*
 * The vocabulary: reading tokenizer.ggml.* from a GGUF, validating it, and the parts both tokenizers share
 * (hash tables, special-token splitting, the merge loop, UTF-8 helpers).
 *
 * DESIGN
 * Token strings are copied into one pool so that the vocabulary does not depend on the GGUF map staying
 * alive. Lookups by string and by merge pair go through open-addressing tables of indices (slot = index +
 * 1), which keeps them to one uint32_t array each. engine_tokenize() first cuts the text at special tokens
 * (control tokens only when parse_special, user-defined tokens always, longest first as they are sorted),
 * then hands each plain fragment to the model's tokenizer. The merge loop serves both SentencePiece
 * (priority = score) and BPE (priority = -rank): a binary heap of candidate pairs, entries checked against
 * the symbols when popped, since merges invalidate their neighbours' entries; this is O(n log n) where the
 * naive rescan is O(n²) for long runs.
 */

#include <inttypes.h>
#include <pthread.h>

#include "vocab-internal.h"

#define TOKENIZE_MAX_BYTES (1u << 30)

/* ---- UTF-8 ---- */

int utf8_lead_len(uint8_t c) {
        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                return 2;
        if (c >= 0xe0 && c <= 0xef)
                return 3;
        if (c >= 0xf0 && c <= 0xf4)
                return 4;
        return 0;
}

int utf8_decode(const char *s, size_t len, uint32_t *ret_cp) {
        const uint8_t *u = (const uint8_t *)s;
        int n;
        uint32_t cp;

        if (len == 0)
                return -1;
        n = utf8_lead_len(u[0]);
        if (n == 0 || (size_t)n > len)
                return -1;
        if (n == 1) {
                *ret_cp = u[0];
                return 1;
        }
        cp = u[0] & (0x7f >> n);
        for (int i = 1; i < n; i++) {
                if ((u[i] & 0xc0) != 0x80)
                        return -1;
                cp = (cp << 6) | (u[i] & 0x3f);
        }
        /* Overlong forms, surrogates and values past U+10FFFF are not characters. */
        if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
                return -1;
        *ret_cp = cp;
        return n;
}

/* ---- GPT-2 byte map ---- */

/*
 * GPT-2 gives every byte a printable character: the printable Latin-1 bytes (! to ~, ¡ to ¬, ® to ÿ) stand
 * for themselves, the other 68 bytes take U+0100 onwards in byte order. So a space is Ġ (U+0120), a newline
 * Ċ.
 */
static bool byte_is_printable(unsigned b) {
        return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

static uint32_t byte_to_cp(unsigned b) {
        unsigned k = 0;

        if (byte_is_printable(b))
                return b;
        for (unsigned i = 0; i < b; i++)
                if (!byte_is_printable(i))
                        k++;
        return 0x100 + k;
}

static char byte_char_utf8[256][3];

static void byte_map_init(void) {
        for (unsigned b = 0; b < 256; b++) {
                uint32_t cp = byte_to_cp(b);
                if (cp < 0x80) {
                        byte_char_utf8[b][0] = (char)cp;
                        byte_char_utf8[b][1] = 0;
                } else {
                        byte_char_utf8[b][0] = (char)(0xc0 | (cp >> 6));
                        byte_char_utf8[b][1] = (char)(0x80 | (cp & 0x3f));
                        byte_char_utf8[b][2] = 0;
                }
        }
}

const char *vocab_byte_char(uint8_t b) {
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        pthread_once(&once, byte_map_init);
        return byte_char_utf8[b];
}

int vocab_char_byte(uint32_t cp) {
        if (cp < 0x100)
                return byte_is_printable(cp) ? (int)cp : -1;
        if (cp >= 0x100 + 68)
                return -1;
        for (unsigned b = 0, k = 0; b < 256; b++)
                if (!byte_is_printable(b) && k++ == cp - 0x100)
                        return (int)b;
        return -1;
}

/* ---- hash tables ---- */

static uint32_t hash_bytes(const void *p, size_t n) {
        const uint8_t *u = p;
        uint32_t h = 2166136261u;
        for (size_t i = 0; i < n; i++)
                h = (h ^ u[i]) * 16777619u;
        return h;
}

static uint32_t hash_pair(int32_t a, int32_t b) {
        uint64_t x = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33;
        return (uint32_t)x;
}

static int table_init(VocabTable *t, uint32_t n) {
        uint32_t size = 16;
        while (size < n * 2u)
                size *= 2;
        t->slots = calloc(size, sizeof(uint32_t));
        if (!t->slots)
                return -ENOMEM;
        t->mask = size - 1;
        return 0;
}

int32_t engine_vocab_find(const EngineVocab *v, const char *text, size_t len) {
        for (uint32_t i = hash_bytes(text, len) & v->by_text.mask;; i = (i + 1) & v->by_text.mask) {
                uint32_t s = v->by_text.slots[i];
                if (s == 0)
                        return -ENOENT;
                if (v->text_len[s - 1] == len && memcmp(vocab_text(v, (int32_t)s - 1), text, len) == 0)
                        return (int32_t)s - 1;
        }
}

/* Adds token id unless an earlier token has the same text (duplicates happen; the first one wins). */
static void table_add_text(EngineVocab *v, int32_t id) {
        const char *text = vocab_text(v, id);
        uint32_t len = v->text_len[id];

        for (uint32_t i = hash_bytes(text, len) & v->by_text.mask;; i = (i + 1) & v->by_text.mask) {
                uint32_t s = v->by_text.slots[i];
                if (s == 0) {
                        v->by_text.slots[i] = (uint32_t)id + 1;
                        return;
                }
                if (v->text_len[s - 1] == len && memcmp(vocab_text(v, (int32_t)s - 1), text, len) == 0)
                        return;
        }
}

int32_t vocab_merge_rank(const EngineVocab *v, int32_t left, int32_t right) {
        if (v->n_merges == 0)
                return -1;
        for (uint32_t i = hash_pair(left, right) & v->by_pair.mask;; i = (i + 1) & v->by_pair.mask) {
                uint32_t s = v->by_pair.slots[i];
                if (s == 0)
                        return -1;
                if (v->merges[s - 1].left == left && v->merges[s - 1].right == right)
                        return (int32_t)s - 1;
        }
}

static void table_add_merge(EngineVocab *v, uint32_t rank) {
        const VocabMerge *m = &v->merges[rank];

        for (uint32_t i = hash_pair(m->left, m->right) & v->by_pair.mask;; i = (i + 1) & v->by_pair.mask) {
                uint32_t s = v->by_pair.slots[i];
                if (s == 0) {
                        v->by_pair.slots[i] = rank + 1;
                        return;
                }
                /* A repeated merge keeps its first (best) rank. */
                if (v->merges[s - 1].left == m->left && v->merges[s - 1].right == m->right)
                        return;
        }
}

/* ---- loading ---- */

EngineVocab *engine_vocab_free(EngineVocab *v) {
        if (!v)
                return NULL;
        bpe_cleanup(v);
        free(v->specials);
        free(v->by_pair.slots);
        free(v->merges);
        free(v->by_text.slots);
        free(v->eog);
        free(v->types);
        free(v->scores);
        free(v->text_len);
        free(v->text_off);
        free(v->text_pool);
        free(v->pre_name);
        free(v);
        return NULL;
}

/* Reads an optional boolean key into *ret, leaving the default when it is absent. */
static int get_flag(const Gguf *g, const char *key, bool *ret, QdError *err) {
        int r = gguf_get_bool(g, key, ret);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return qd_error_set(err, EBADMSG, "The vocabulary's %s is not a boolean.", key);
        return 0;
}

/* Reads an optional token id; absent or 0xffffffff (how converters write "none") leaves *ret alone or -1. */
static int get_token_id(const EngineVocab *v, const Gguf *g, const char *key, int32_t *ret, QdError *err) {
        const GgufKV *kv = gguf_find_kv(g, key);
        int64_t id;
        int r;

        if (!kv)
                return 0;
        r = gguf_get_i64(g, key, &id);
        if (r < 0)
                return qd_error_set(err, EBADMSG, "The vocabulary's %s is not an integer.", key);
        if (id == -1 || id == UINT32_MAX) {
                *ret = -1;
                return 0;
        }
        if (id < 0 || id >= v->n_tokens)
                return qd_error_set(err, EBADMSG,
                                    "The vocabulary's %s is %" PRIi64 ", outside the %" PRIu32 " tokens.",
                                    key, id, v->n_tokens);
        *ret = (int32_t)id;
        return 0;
}

static int load_tokens(EngineVocab *v, const Gguf *g, QdError *err) {
        const GgufArray *a;
        uint64_t pool = 0;
        int r;

        r = gguf_get_array(g, "tokenizer.ggml.tokens", &a);
        if (r == -ENOENT)
                return qd_error_set(err, EBADMSG,
                                    "The model has no vocabulary (tokenizer.ggml.tokens is missing).");
        if (r < 0 || a->type != GGUF_TYPE_STRING)
                return qd_error_set(err, EBADMSG,
                                    "The vocabulary's tokenizer.ggml.tokens is not a string array.");
        if (a->n == 0 || a->n > INT32_MAX / 2)
                return qd_error_set(err, EBADMSG,
                                    "The vocabulary has %" PRIu64 " tokens, which is not usable.", a->n);
        v->n_tokens = (uint32_t)a->n;

        for (uint64_t i = 0; i < a->n; i++) {
                if (memchr(a->items[i].str.data, 0, a->items[i].str.len))
                        return qd_error_set(err, EBADMSG,
                                            "Token %" PRIu64 " of the vocabulary contains a NUL byte.", i);
                pool += a->items[i].str.len + 1;
        }
        if (pool > UINT32_MAX)
                return qd_error_set(err, EBADMSG, "The vocabulary's token strings are too large.");

        v->text_pool = malloc(pool);
        v->text_off = calloc(v->n_tokens, sizeof(uint32_t));
        v->text_len = calloc(v->n_tokens, sizeof(uint32_t));
        v->scores = calloc(v->n_tokens, sizeof(float));
        v->types = calloc(v->n_tokens, sizeof(uint8_t));
        v->eog = calloc(v->n_tokens, sizeof(bool));
        if (!v->text_pool || !v->text_off || !v->text_len || !v->scores || !v->types || !v->eog)
                return -ENOMEM;
        r = table_init(&v->by_text, v->n_tokens);
        if (r < 0)
                return r;

        pool = 0;
        for (uint32_t i = 0; i < v->n_tokens; i++) {
                const GgufString *s = &a->items[i].str;
                memcpy(v->text_pool + pool, s->data, s->len);
                v->text_pool[pool + s->len] = 0;
                v->text_off[i] = (uint32_t)pool;
                v->text_len[i] = (uint32_t)s->len;
                v->types[i] = ENGINE_TOKEN_NORMAL;
                pool += s->len + 1;
                table_add_text(v, (int32_t)i);
        }
        return 0;
}

static int load_scores_and_types(EngineVocab *v, const Gguf *g, QdError *err) {
        const GgufArray *a;
        int r;

        r = gguf_get_array(g, "tokenizer.ggml.scores", &a);
        if (r == -ENOENT) {
                /* SentencePiece merges by score, so it cannot do without them; BPE does not use them. */
                if (v->kind == ENGINE_VOCAB_SPM)
                        return qd_error_set(
                                err, EBADMSG,
                                "The vocabulary has no token scores (tokenizer.ggml.scores is missing).");
        } else if (r < 0 || a->type != GGUF_TYPE_FLOAT32)
                return qd_error_set(err, EBADMSG,
                                    "The vocabulary's tokenizer.ggml.scores is not a float32 array.");
        else if (a->n != v->n_tokens)
                return qd_error_set(err, EBADMSG,
                                    "The vocabulary has %" PRIu32 " tokens but %" PRIu64 " scores.",
                                    v->n_tokens, a->n);
        else
                memcpy(v->scores, a->data, sizeof(float) * v->n_tokens);

        r = gguf_get_array(g, "tokenizer.ggml.token_type", &a);
        if (r == -ENOENT)
                return 0;
        if (r < 0 || (a->type != GGUF_TYPE_INT32 && a->type != GGUF_TYPE_UINT32))
                return qd_error_set(err, EBADMSG,
                                    "The vocabulary's tokenizer.ggml.token_type is not an int32 array.");
        if (a->n != v->n_tokens)
                return qd_error_set(err, EBADMSG,
                                    "The vocabulary has %" PRIu32 " tokens but %" PRIu64 " token types.",
                                    v->n_tokens, a->n);
        for (uint32_t i = 0; i < v->n_tokens; i++) {
                int32_t t;
                memcpy(&t, (const uint8_t *)a->data + 4 * (size_t)i, 4);
                if (t < 0 || t >= _ENGINE_TOKEN_TYPE_MAX)
                        return qd_error_set(err, EBADMSG,
                                            "Token %" PRIu32 " has the unknown token type %" PRIi32 ".", i,
                                            t);
                v->types[i] = (uint8_t)(t == ENGINE_TOKEN_UNDEFINED ? ENGINE_TOKEN_NORMAL : t);
        }
        return 0;
}

static int load_merges(EngineVocab *v, const Gguf *g, QdError *err) {
        const GgufArray *a;
        int r;

        r = gguf_get_array(g, "tokenizer.ggml.merges", &a);
        if (r == -ENOENT)
                return qd_error_set(err, EBADMSG,
                                    "The BPE vocabulary has no merges (tokenizer.ggml.merges is missing).");
        if (r < 0 || a->type != GGUF_TYPE_STRING)
                return qd_error_set(err, EBADMSG,
                                    "The vocabulary's tokenizer.ggml.merges is not a string array.");
        if (a->n > INT32_MAX / 2)
                return qd_error_set(err, EBADMSG, "The vocabulary has too many merges.");

        v->merges = calloc(a->n ? a->n : 1, sizeof(VocabMerge));
        if (!v->merges)
                return -ENOMEM;
        r = table_init(&v->by_pair, (uint32_t)a->n);
        if (r < 0)
                return r;

        for (uint64_t i = 0; i < a->n; i++) {
                const GgufString *s = &a->items[i].str;
                const char *sp = memchr(s->data, ' ', s->len);
                _cleanup_free_ char *both = NULL;
                size_t ll, rl;
                int32_t left, right, merged;

                if (!sp || sp == s->data || sp == s->data + s->len - 1)
                        return qd_error_set(err, EBADMSG,
                                            "Merge %" PRIu64
                                            " of the vocabulary is not two tokens separated by a space.",
                                            i);
                ll = (size_t)(sp - s->data);
                rl = s->len - ll - 1;
                left = engine_vocab_find(v, s->data, ll);
                right = engine_vocab_find(v, sp + 1, rl);
                both = malloc(ll + rl);
                if (!both)
                        return -ENOMEM;
                memcpy(both, s->data, ll);
                memcpy(both + ll, sp + 1, rl);
                merged = engine_vocab_find(v, both, ll + rl);
                /* A merge that names or makes a string outside the vocabulary can never fire: merging only
                 * ever sees tokens. Converters do emit such merges, so they are dropped rather than refused.
                 */
                if (left < 0 || right < 0 || merged < 0)
                        continue;
                v->merges[v->n_merges] = (VocabMerge){.left = left, .right = right, .merged = merged};
                table_add_merge(v, v->n_merges);
                v->n_merges++;
        }
        return 0;
}

static int cmp_special(const void *a, const void *b, void *userdata) {
        const EngineVocab *v = userdata;
        int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
        if (v->text_len[x] != v->text_len[y])
                return v->text_len[x] > v->text_len[y] ? -1 : 1;
        return x < y ? -1 : x > y;
}

static int setup_specials(EngineVocab *v) {
        uint32_t n = 0;

        for (uint32_t i = 0; i < v->n_tokens; i++)
                if ((v->types[i] == ENGINE_TOKEN_CONTROL || v->types[i] == ENGINE_TOKEN_USER_DEFINED) &&
                    v->text_len[i] > 0)
                        n++;
        v->specials = calloc(n ? n : 1, sizeof(int32_t));
        if (!v->specials)
                return -ENOMEM;
        for (uint32_t i = 0; i < v->n_tokens; i++)
                if ((v->types[i] == ENGINE_TOKEN_CONTROL || v->types[i] == ENGINE_TOKEN_USER_DEFINED) &&
                    v->text_len[i] > 0)
                        v->specials[v->n_specials++] = (int32_t)i;
        qsort_r(v->specials, v->n_specials, sizeof(int32_t), cmp_special, v);
        return 0;
}

/* Control tokens that end a turn in the chat formats we know, beside eos and eot. */
static const char *const eog_texts[] = {
        "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>",
};

static void setup_eog(EngineVocab *v) {
        if (v->eos >= 0)
                v->eog[v->eos] = true;
        if (v->eot >= 0)
                v->eog[v->eot] = true;
        if (v->eom >= 0)
                v->eog[v->eom] = true;
        for (size_t i = 0; i < ELEMENTSOF(eog_texts); i++) {
                int32_t id = engine_vocab_find(v, eog_texts[i], strlen(eog_texts[i]));
                if (id >= 0 && v->types[id] == ENGINE_TOKEN_CONTROL)
                        v->eog[id] = true;
        }
}

static void setup_bytes(EngineVocab *v) {
        for (unsigned b = 0; b < 256; b++) {
                char hex[8];
                snprintf(hex, sizeof(hex), "<0x%02X>", b);
                v->byte_tokens[b] = engine_vocab_find(v, hex, 6);
                v->byte_chars[b] = engine_vocab_find(v, vocab_byte_char((uint8_t)b),
                                                     strlen(vocab_byte_char((uint8_t)b)));
        }
}

int engine_vocab_new(const Gguf *g, EngineVocab **ret, QdError *err) {
        _cleanup_(engine_vocab_freep) EngineVocab *v = NULL;
        _cleanup_free_ char *model = NULL;
        int r;

        v = calloc(1, sizeof(*v));
        if (!v)
                return -ENOMEM;
        v->bos = v->eos = v->eot = v->eom = v->pad = v->unk = -1;

        r = gguf_get_string(g, "tokenizer.ggml.model", &model);
        if (r == -ENOENT)
                return qd_error_set(err, EBADMSG,
                                    "The model has no tokenizer (tokenizer.ggml.model is missing).");
        if (r == -EBADMSG)
                return qd_error_set(err, EBADMSG, "The model's tokenizer.ggml.model is not a string.");
        if (r < 0)
                return r;
        if (streq(model, "llama"))
                v->kind = ENGINE_VOCAB_SPM;
        else if (streq(model, "gpt2"))
                v->kind = ENGINE_VOCAB_BPE;
        else
                return qd_error_set(err, EOPNOTSUPP,
                                    "The tokenizer type '%s' is not supported (only llama and gpt2).",
                                    model);

        r = load_tokens(v, g, err);
        if (r < 0)
                return r;
        r = load_scores_and_types(v, g, err);
        if (r < 0)
                return r;

        /* Defaults as SentencePiece llama models and GPT-2-style models behave when the keys are absent. */
        if (v->kind == ENGINE_VOCAB_SPM) {
                v->bos = v->n_tokens > 1 ? 1 : -1;
                v->eos = v->n_tokens > 2 ? 2 : -1;
                v->unk = 0;
                v->add_bos = true;
                v->add_space_prefix = true;
        }
        static const struct {
                const char *key;
                size_t offset;
        } ids[] = {
                {"tokenizer.ggml.bos_token_id", offsetof(EngineVocab, bos)},
                {"tokenizer.ggml.eos_token_id", offsetof(EngineVocab, eos)},
                {"tokenizer.ggml.eot_token_id", offsetof(EngineVocab, eot)},
                {"tokenizer.ggml.eom_token_id", offsetof(EngineVocab, eom)},
                {"tokenizer.ggml.padding_token_id", offsetof(EngineVocab, pad)},
                {"tokenizer.ggml.unknown_token_id", offsetof(EngineVocab, unk)},
        };
        for (size_t i = 0; i < ELEMENTSOF(ids); i++) {
                r = get_token_id(v, g, ids[i].key, (int32_t *)((uint8_t *)v + ids[i].offset), err);
                if (r < 0)
                        return r;
        }
        r = get_flag(g, "tokenizer.ggml.add_bos_token", &v->add_bos, err);
        if (r < 0)
                return r;
        r = get_flag(g, "tokenizer.ggml.add_eos_token", &v->add_eos, err);
        if (r < 0)
                return r;
        r = get_flag(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, err);
        if (r < 0)
                return r;
        if (v->add_bos && v->bos < 0)
                return qd_error_set(err, EBADMSG, "The vocabulary asks for a BOS token but has none.");
        if (v->add_eos && v->eos < 0)
                return qd_error_set(err, EBADMSG, "The vocabulary asks for an EOS token but has none.");

        r = setup_specials(v);
        if (r < 0)
                return r;
        setup_eog(v);
        setup_bytes(v);

        if (v->kind == ENGINE_VOCAB_BPE) {
                r = load_merges(v, g, err);
                if (r < 0)
                        return r;
                r = gguf_get_string(g, "tokenizer.ggml.pre", &v->pre_name);
                if (r == -EBADMSG)
                        return qd_error_set(err, EBADMSG,
                                            "The vocabulary's tokenizer.ggml.pre is not a string.");
                if (r < 0 && r != -ENOENT)
                        return r;
                r = bpe_setup(v, err);
                if (r < 0)
                        return r;
        }
        if (!v->pre_name) {
                v->pre_name = strdup("default");
                if (!v->pre_name)
                        return -ENOMEM;
        }

        *ret = TAKE_PTR(v);
        return 0;
}

EngineVocabKind engine_vocab_kind(const EngineVocab *v) {
        return v->kind;
}

const char *engine_vocab_pre(const EngineVocab *v) {
        return v->pre_name;
}

uint32_t engine_vocab_n_tokens(const EngineVocab *v) {
        return v->n_tokens;
}

int32_t engine_vocab_bos(const EngineVocab *v) {
        return v->bos;
}

int32_t engine_vocab_eos(const EngineVocab *v) {
        return v->eos;
}

int32_t engine_vocab_eot(const EngineVocab *v) {
        return v->eot;
}

int32_t engine_vocab_pad(const EngineVocab *v) {
        return v->pad;
}

int32_t engine_vocab_unk(const EngineVocab *v) {
        return v->unk;
}

bool engine_vocab_add_bos(const EngineVocab *v) {
        return v->add_bos;
}

bool engine_vocab_add_eos(const EngineVocab *v) {
        return v->add_eos;
}

bool engine_vocab_is_eog(const EngineVocab *v, int32_t token) {
        return token >= 0 && (uint32_t)token < v->n_tokens && v->eog[token];
}

EngineTokenType engine_vocab_token_type(const EngineVocab *v, int32_t token) {
        if (token < 0 || (uint32_t)token >= v->n_tokens)
                return _ENGINE_TOKEN_TYPE_INVALID;
        return (EngineTokenType)v->types[token];
}

const char *engine_vocab_token_text(const EngineVocab *v, int32_t token) {
        if (token < 0 || (uint32_t)token >= v->n_tokens)
                return NULL;
        return vocab_text(v, token);
}

/* ---- the merge loop ---- */

typedef struct MergeCand {
        double priority;
        uint32_t pos; /* the left symbol's start, for leftmost-first on ties */
        int32_t left, right;
        uint32_t len; /* both symbols' lengths together when queued, to spot stale entries */
        int32_t id;
} MergeCand;

typedef struct MergeHeap {
        MergeCand *c;
        size_t n, cap;
} MergeHeap;

static bool cand_before(const MergeCand *a, const MergeCand *b) {
        if (a->priority != b->priority)
                return a->priority > b->priority;
        return a->pos < b->pos;
}

static int heap_push(MergeHeap *h, MergeCand c) {
        if (h->n == h->cap) {
                size_t cap = h->cap ? h->cap * 2 : 64;
                MergeCand *p = realloc(h->c, cap * sizeof(MergeCand));
                if (!p)
                        return -ENOMEM;
                h->c = p;
                h->cap = cap;
        }
        size_t i = h->n++;
        while (i > 0 && cand_before(&c, &h->c[(i - 1) / 2])) {
                h->c[i] = h->c[(i - 1) / 2];
                i = (i - 1) / 2;
        }
        h->c[i] = c;
        return 0;
}

static MergeCand heap_pop(MergeHeap *h) {
        MergeCand top = h->c[0], last = h->c[--h->n];
        size_t i = 0;

        for (;;) {
                size_t k = 2 * i + 1;
                if (k >= h->n)
                        break;
                if (k + 1 < h->n && cand_before(&h->c[k + 1], &h->c[k]))
                        k++;
                if (!cand_before(&h->c[k], &last))
                        break;
                h->c[i] = h->c[k];
                i = k;
        }
        if (h->n > 0)
                h->c[i] = last;
        return top;
}

static int try_queue(const EngineVocab *v, const char *text, MergeSym *syms, int32_t a, MergeHeap *h,
                     MergePairFn pair) {
        MergeCand c;
        int32_t b;

        if (a < 0 || syms[a].next < 0)
                return 0;
        b = syms[a].next;
        if (!pair(v, text, &syms[a], &syms[b], &c.priority, &c.id))
                return 0;
        c.pos = syms[a].start;
        c.left = a;
        c.right = b;
        c.len = syms[a].len + syms[b].len;
        return heap_push(h, c);
}

int merge_run(const EngineVocab *v, const char *text, MergeSym *syms, size_t n, MergePairFn pair) {
        MergeHeap h = {};
        int r = 0;

        for (size_t i = 0; i + 1 < n && r >= 0; i++)
                r = try_queue(v, text, syms, (int32_t)i, &h, pair);

        while (r >= 0 && h.n > 0) {
                MergeCand c = heap_pop(&h);
                MergeSym *a = &syms[c.left], *b = &syms[c.right];

                if (a->len == 0 || b->len == 0 || a->next != c.right || a->len + b->len != c.len)
                        continue;
                a->len += b->len;
                a->id = c.id;
                a->next = b->next;
                if (b->next >= 0)
                        syms[b->next].prev = c.left;
                b->len = 0;
                r = try_queue(v, text, syms, a->prev, &h, pair);
                if (r >= 0)
                        r = try_queue(v, text, syms, c.left, &h, pair);
        }
        free(h.c);
        return r;
}

/* ---- tokenizing ---- */

int token_buf_push(TokenBuf *b, int32_t id) {
        if (b->n == b->cap) {
                size_t cap = b->cap ? b->cap * 2 : 64;
                int32_t *p = realloc(b->ids, cap * sizeof(int32_t));
                if (!p)
                        return -ENOMEM;
                b->ids = p;
                b->cap = cap;
        }
        b->ids[b->n++] = id;
        return 0;
}

/* Every fragment starts the text or follows a special token, which is where SentencePiece models take the
 * space prefix (as after <s> at the start of a prompt). */
static int tokenize_fragment(const EngineVocab *v, const char *text, size_t len, TokenBuf *out) {
        if (len == 0)
                return 0;
        switch (v->kind) {
        case ENGINE_VOCAB_SPM:
                return spm_tokenize_fragment(v, text, len, out);
        case ENGINE_VOCAB_BPE:
                return bpe_tokenize_fragment(v, text, len, out);
        case _ENGINE_VOCAB_KIND_MAX:
        case _ENGINE_VOCAB_KIND_INVALID:
                break;
        }
        return -EINVAL;
}

/* The special token that text[0..len) starts with, longest first, or -1. */
static int32_t match_special(const EngineVocab *v, const char *text, size_t len, bool parse_special) {
        for (uint32_t i = 0; i < v->n_specials; i++) {
                int32_t id = v->specials[i];
                if (!parse_special && v->types[id] != ENGINE_TOKEN_USER_DEFINED)
                        continue;
                if (v->text_len[id] <= len && memcmp(text, vocab_text(v, id), v->text_len[id]) == 0)
                        return id;
        }
        return -1;
}

int engine_tokenize(const EngineVocab *v, const char *text, size_t len, bool add_special, bool parse_special,
                    int32_t **ret, size_t *ret_n) {
        TokenBuf out = {};
        size_t frag = 0;
        int r = 0;

        if (len > TOKENIZE_MAX_BYTES)
                return -EMSGSIZE;
        if (add_special && v->add_bos)
                r = token_buf_push(&out, v->bos);

        /* Special tokens start with a byte that is rarely in text ('<', '['), so most positions are passed
         * over by one table lookup. */
        bool starts[256] = {};
        for (uint32_t i = 0; i < v->n_specials; i++)
                starts[(uint8_t)vocab_text(v, v->specials[i])[0]] = true;

        for (size_t i = 0; i < len && r >= 0;) {
                int32_t id =
                        starts[(uint8_t)text[i]] ? match_special(v, text + i, len - i, parse_special) : -1;
                if (id < 0) {
                        i++;
                        continue;
                }
                r = tokenize_fragment(v, text + frag, i - frag, &out);
                if (r >= 0)
                        r = token_buf_push(&out, id);
                i += v->text_len[id];
                frag = i;
        }
        if (r >= 0)
                r = tokenize_fragment(v, text + frag, len - frag, &out);
        if (r >= 0 && add_special && v->add_eos)
                r = token_buf_push(&out, v->eos);
        if (r < 0) {
                free(out.ids);
                return r;
        }
        if (out.n == 0) {
                free(out.ids);
                out.ids = NULL;
        }
        *ret = out.ids;
        *ret_n = out.n;
        return 0;
}
