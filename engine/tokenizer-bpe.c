/* SPDX-License-Identifier: MIT */
/*
 * Byte-level BPE tokenizer (tokenizer.ggml.model = "gpt2") with the pre-tokenizers of the model families we
 * load.
 *
 * DESIGN
 * A pre-tokenizer cuts text into words with one or more regular expressions (PCRE2 with Unicode properties),
 * each applied to the pieces the previous one left: what a pattern matches is a piece, and so is any text
 * between matches. Each word's bytes become GPT-2's stand-in characters, one symbol each; then the adjacent
 * pair with the lowest merge rank merges (leftmost first) until no pair has a merge. Llama 3's tokenizer
 * takes a word that is a token as it is, without merging ("ignore_merges").
 *
 * The patterns are the published ones of each family (GPT-2's, Llama 3's, Qwen2's; SmolLM splits every digit
 * off before GPT-2's pattern). PCRE2_MATCH_INVALID_UTF lets invalid UTF-8 through as text no pattern
 * matches, so those bytes still become byte tokens.
 */

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "vocab-internal.h"

static const char pattern_gpt2[] =
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char pattern_llama3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
                                     "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                                     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char pattern_qwen2[] =
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
        "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char pattern_digit[] = "\\p{N}";

static const struct {
        const char *name;
        VocabPre pre;
} pre_names[] = {
        {"default", VOCAB_PRE_DEFAULT}, {"gpt2", VOCAB_PRE_DEFAULT},    {"gpt-2", VOCAB_PRE_DEFAULT},
        {"llama3", VOCAB_PRE_LLAMA3},   {"llama-v3", VOCAB_PRE_LLAMA3}, {"llama-bpe", VOCAB_PRE_LLAMA3},
        {"qwen2", VOCAB_PRE_QWEN2},     {"smollm", VOCAB_PRE_SMOLLM},
};

static int compile(EngineVocab *v, const char *pattern, QdError *err) {
        int code;
        PCRE2_SIZE offset;
        pcre2_code *re =
                pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &offset, NULL);
        if (!re)
                return qd_error_set(err, EINVAL,
                                    "The pre-tokenizer pattern does not compile (PCRE2 error %d).", code);
        /* The JIT is only faster; without it (no executable memory) the interpreter does the same work. */
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        v->regex[v->n_regex++] = re;
        return 0;
}

int bpe_setup(EngineVocab *v, QdError *err) {
        size_t i;
        int r = 0;

        v->pre = VOCAB_PRE_DEFAULT;
        if (v->pre_name) {
                for (i = 0; i < ELEMENTSOF(pre_names); i++)
                        if (streq(v->pre_name, pre_names[i].name))
                                break;
                if (i == ELEMENTSOF(pre_names))
                        return qd_error_set(err, EOPNOTSUPP,
                                            "The pre-tokenizer '%s' (tokenizer.ggml.pre) is not supported.",
                                            v->pre_name);
                v->pre = pre_names[i].pre;
        }
        switch (v->pre) {
        case VOCAB_PRE_DEFAULT:
                r = compile(v, pattern_gpt2, err);
                break;
        case VOCAB_PRE_LLAMA3:
                r = compile(v, pattern_llama3, err);
                break;
        case VOCAB_PRE_QWEN2:
                r = compile(v, pattern_qwen2, err);
                break;
        case VOCAB_PRE_SMOLLM:
                r = compile(v, pattern_digit, err);
                if (r >= 0)
                        r = compile(v, pattern_gpt2, err);
                break;
        case _VOCAB_PRE_MAX:
        case _VOCAB_PRE_INVALID:
                return -EINVAL;
        }
        return r;
}

void bpe_cleanup(EngineVocab *v) {
        for (uint32_t i = 0; i < v->n_regex; i++)
                pcre2_code_free(v->regex[i]);
        v->n_regex = 0;
}

static bool bpe_pair(const EngineVocab *v, const char *text, const MergeSym *a, const MergeSym *b,
                     double *ret_priority, int32_t *ret_id) {
        int32_t rank;

        if (a->id < 0 || b->id < 0)
                return false;
        rank = vocab_merge_rank(v, a->id, b->id);
        if (rank < 0)
                return false;
        *ret_priority = -(double)rank;
        *ret_id = v->merges[rank].merged;
        return true;
}

/* Merges one word into tokens. */
static int bpe_word(const EngineVocab *v, const char *word, size_t len, TokenBuf *out) {
        Buf mapped = {};
        _cleanup_free_ MergeSym *syms = NULL;
        int r = 0;

        syms = calloc(len, sizeof(MergeSym));
        if (!syms)
                return -ENOMEM;
        for (size_t i = 0; i < len && r >= 0; i++) {
                const char *c = vocab_byte_char((uint8_t)word[i]);
                syms[i] = (MergeSym){
                        .prev = (int32_t)i - 1,
                        .next = i + 1 < len ? (int32_t)i + 1 : -1,
                        .start = (uint32_t)mapped.len,
                        .len = (uint32_t)strlen(c),
                        .id = v->byte_chars[(uint8_t)word[i]],
                };
                r = buf_append_str(&mapped, c);
        }
        if (r < 0)
                goto finish;

        if (v->pre == VOCAB_PRE_LLAMA3) {
                int32_t id = engine_vocab_find(v, (const char *)mapped.data, mapped.len);
                if (id >= 0) {
                        r = token_buf_push(out, id);
                        goto finish;
                }
        }

        r = merge_run(v, (const char *)mapped.data, syms, len, bpe_pair);
        for (size_t i = 0; i < len && r >= 0; i++) {
                if (syms[i].len == 0)
                        continue;
                if (syms[i].id >= 0)
                        r = token_buf_push(out, syms[i].id);
                else if (v->unk >= 0)
                        r = token_buf_push(out, v->unk);
        }
finish:
        buf_free(&mapped);
        return r;
}

/* Cuts text with regex k and the ones after it, tokenizing each final piece. */
static int split(const EngineVocab *v, uint32_t k, const char *text, size_t len, pcre2_match_data *md,
                 TokenBuf *out) {
        size_t pos = 0, gap = 0;
        int r;

        if (len == 0)
                return 0;
        if (k == v->n_regex)
                return bpe_word(v, text, len, out);

        while (pos < len) {
                int rc = pcre2_match(v->regex[k], (PCRE2_SPTR)text, len, pos, 0, md, NULL);
                if (rc == PCRE2_ERROR_NOMATCH)
                        break;
                if (rc < 0)
                        return -EINVAL;
                /* Copied out: the recursion below reuses md. */
                const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                size_t start = ov[0], end = ov[1];
                if (end == start) {
                        /* None of our patterns match empty text; step on rather than loop if one did. */
                        pos = start + 1;
                        continue;
                }
                r = split(v, k + 1, text + gap, start - gap, md, out);
                if (r < 0)
                        return r;
                r = split(v, k + 1, text + start, end - start, md, out);
                if (r < 0)
                        return r;
                pos = gap = end;
        }
        return split(v, k + 1, text + gap, len - gap, md, out);
}

int bpe_tokenize_fragment(const EngineVocab *v, const char *text, size_t len, TokenBuf *out) {
        pcre2_match_data *md;
        int r;

        md = pcre2_match_data_create(8, NULL);
        if (!md)
                return -ENOMEM;
        r = split(v, 0, text, len, md, out);
        pcre2_match_data_free(md);
        return r;
}
