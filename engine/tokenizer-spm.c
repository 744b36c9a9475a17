/* SPDX-License-Identifier: MIT */
/*
 * SentencePiece-style tokenizer (tokenizer.ggml.model = "llama"), as SentencePiece's BPE models encode.
 *
 * DESIGN
 * Spaces become "▁" (U+2581) and, when add_space_prefix is set, one "▁" goes in front. The text starts as
 * one symbol per UTF-8 character; the adjacent pair whose joined text is a token with the highest score
 * merges, leftmost first on equal scores, until no pair is a token. A symbol left that is no token is
 * spelled out with the byte tokens <0x00>..<0xFF> (byte fallback), or becomes the unknown token when the
 * vocabulary has none. Only normal and user-defined tokens take part in merging: control and byte tokens are
 * never made from text.
 */

#include "vocab-internal.h"

static const char space_mark[] = "\xe2\x96\x81"; /* ▁ */

static int32_t spm_lookup(const EngineVocab *v, const char *s, size_t len) {
        int32_t id = engine_vocab_find(v, s, len);
        if (id < 0)
                return -1;
        if (v->types[id] != ENGINE_TOKEN_NORMAL && v->types[id] != ENGINE_TOKEN_USER_DEFINED)
                return -1;
        return id;
}

static bool spm_pair(const EngineVocab *v, const char *text, const MergeSym *a, const MergeSym *b,
                     double *ret_priority, int32_t *ret_id) {
        int32_t id = spm_lookup(v, text + a->start, a->len + b->len);
        if (id < 0)
                return false;
        *ret_priority = v->scores[id];
        *ret_id = id;
        return true;
}

int spm_tokenize_fragment(const EngineVocab *v, const char *text, size_t len, TokenBuf *out) {
        Buf norm = {};
        _cleanup_free_ MergeSym *syms = NULL;
        size_t n = 0;
        int r = 0;

        if (v->add_space_prefix)
                r = buf_append(&norm, space_mark, 3);
        for (size_t i = 0; i < len && r >= 0; i++)
                r = text[i] == ' ' ? buf_append(&norm, space_mark, 3) : buf_append(&norm, &text[i], 1);
        if (r < 0)
                goto finish;

        syms = calloc(norm.len, sizeof(MergeSym));
        if (!syms) {
                r = -ENOMEM;
                goto finish;
        }
        for (size_t i = 0; i < norm.len;) {
                uint32_t cp;
                int l = utf8_decode((const char *)norm.data + i, norm.len - i, &cp);
                if (l < 0)
                        l = 1; /* an invalid byte is a symbol of its own and ends up as a byte token */
                syms[n] = (MergeSym){
                        .prev = (int32_t)n - 1,
                        .next = i + l < norm.len ? (int32_t)n + 1 : -1,
                        .start = (uint32_t)i,
                        .len = (uint32_t)l,
                        .id = spm_lookup(v, (const char *)norm.data + i, (size_t)l),
                };
                n++;
                i += (size_t)l;
        }

        r = merge_run(v, (const char *)norm.data, syms, n, spm_pair);
        for (size_t i = 0; i < n && r >= 0; i++) {
                if (syms[i].len == 0)
                        continue;
                if (syms[i].id >= 0) {
                        r = token_buf_push(out, syms[i].id);
                        continue;
                }
                for (uint32_t k = 0; k < syms[i].len && r >= 0; k++) {
                        int32_t b = v->byte_tokens[norm.data[syms[i].start + k]];
                        if (b < 0) {
                                /* Without byte tokens the whole symbol is one unknown token. */
                                r = v->unk >= 0 ? token_buf_push(out, v->unk) : 0;
                                break;
                        }
                        r = token_buf_push(out, b);
                }
        }
finish:
        buf_free(&norm);
        return r;
}
