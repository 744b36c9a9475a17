/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * What vocab.c, tokenizer-spm.c and tokenizer-bpe.c share inside engine/: the vocabulary's layout, its hash
 * tables and the merge loop that both tokenizers run. Not part of the engine's public API.
 */

#include "engine.h"

/* An open-addressing hash table from a key to a token id or merge index; slots hold index + 1, 0 is empty.
 */
typedef struct VocabTable {
        uint32_t *slots; /* (mask + 1) */
        uint32_t mask;
} VocabTable;

typedef struct VocabMerge {
        int32_t left, right; /* token ids */
        int32_t merged;      /* the id of left's text followed by right's */
} VocabMerge;

/* Pre-tokenizer families, from tokenizer.ggml.pre. */
typedef enum VocabPre {
        VOCAB_PRE_DEFAULT, /* GPT-2 */
        VOCAB_PRE_LLAMA3,
        VOCAB_PRE_QWEN2,
        VOCAB_PRE_SMOLLM,
        _VOCAB_PRE_MAX,
        _VOCAB_PRE_INVALID = -EINVAL,
} VocabPre;

#define VOCAB_MAX_REGEX 2

struct EngineVocab {
        EngineVocabKind kind;
        VocabPre pre;
        char *pre_name;

        uint32_t n_tokens;
        char *text_pool;    /* every token's text, each NUL-terminated */
        uint32_t *text_off; /* (n_tokens) offsets into text_pool */
        uint32_t *text_len; /* (n_tokens) lengths without the NUL */
        float *scores;      /* (n_tokens) */
        uint8_t *types;     /* (n_tokens) EngineTokenType */
        bool *eog;          /* (n_tokens) ends generation */
        VocabTable by_text; /* token text → id */

        VocabMerge *merges; /* (n_merges), in rank order */
        uint32_t n_merges;
        VocabTable by_pair; /* (left, right) → merge rank */

        int32_t *specials; /* (n_specials) control and user-defined tokens, longest text first */
        uint32_t n_specials;

        int32_t bos, eos, eot, eom, pad, unk;
        bool add_bos, add_eos, add_space_prefix;
        int32_t byte_tokens[256]; /* SPM: the id of <0xXX>, or -1 */
        int32_t byte_chars[256];  /* BPE: the id of the token that is a byte's mapped character, or -1 */

        void *regex[VOCAB_MAX_REGEX]; /* BPE pre-tokenizer: pcre2_code *, applied in turn; NULL-terminated */
        uint32_t n_regex;
};

static inline const char *vocab_text(const EngineVocab *v, int32_t id) {
        return v->text_pool + v->text_off[id];
}

/* The merge rank of the pair (left, right), or -1. */
int32_t vocab_merge_rank(const EngineVocab *v, int32_t left, int32_t right);

/* GPT-2's byte-to-character map: the UTF-8 of the character that stands for byte b (NUL-terminated). */
const char *vocab_byte_char(uint8_t b);
/* The inverse: the byte that code point cp stands for, or -1 when cp is no byte's character. */
int vocab_char_byte(uint32_t cp);

/* Decodes one UTF-8 character at s[0..len); returns its length (1..4) and the code point, or -1 if invalid.
 */
int utf8_decode(const char *s, size_t len, uint32_t *ret_cp);
/* The length a UTF-8 sequence starting with byte c claims: 1..4, or 0 for a byte that cannot start one. */
int utf8_lead_len(uint8_t c);

/*
 * The merge loop: symbols are adjacent spans of a text; the pair with the best priority (highest, leftmost
 * on ties) merges until none can. pair() says whether a and b may merge, with its priority and the merged
 * token.
 */
typedef struct MergeSym {
        int32_t prev, next;  /* neighbours, -1 at the ends */
        uint32_t start, len; /* bytes of the text */
        int32_t id;          /* the token the span is, or -1 */
} MergeSym;

typedef bool (*MergePairFn)(const EngineVocab *v, const char *text, const MergeSym *a, const MergeSym *b,
                            double *ret_priority, int32_t *ret_id);

/* Runs the merges over syms[0..n) (linked in order); symbols merged away get len 0. Returns 0 or -ENOMEM. */
int merge_run(const EngineVocab *v, const char *text, MergeSym *syms, size_t n, MergePairFn pair);

/* A growable array of token ids. */
typedef struct TokenBuf {
        int32_t *ids;
        size_t n, cap;
} TokenBuf;

int token_buf_push(TokenBuf *b, int32_t id);

/* Tokenizes one fragment of plain text (no special tokens in it). */
int spm_tokenize_fragment(const EngineVocab *v, const char *text, size_t len, TokenBuf *out);
int bpe_tokenize_fragment(const EngineVocab *v, const char *text, size_t len, TokenBuf *out);

/* Compiles the pre-tokenizer's regexes into v. -EOPNOTSUPP with a message for an unknown family. */
int bpe_setup(EngineVocab *v, QdError *err);
void bpe_cleanup(EngineVocab *v);
