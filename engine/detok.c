/* SPDX-License-Identifier: MIT */
/*
 * Detokenization: a token's bytes, a whole sequence's text, and the streaming detokenizer that only lets
 * complete UTF-8 characters out.
 *
 * DESIGN
 * SentencePiece tokens write a space as "▁" and bytes as <0xXX>; byte-level BPE tokens write every byte as
 * one of GPT-2's 256 stand-in characters. Either way a token may end in the middle of a character (an emoji
 * is often three or four byte tokens), so a stream of pieces must be cut at character boundaries before
 * anyone shows it. The streaming detokenizer holds at most three bytes back: the start of a character whose
 * remaining bytes have not come yet. Bytes that can never be part of a character are replaced by U+FFFD at
 * once rather than held, so one bad token cannot stall the stream.
 */

#include "vocab-internal.h"

static const char replacement[] = "\xef\xbf\xbd"; /* U+FFFD */

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

static int piece_spm(const char *s, size_t len, Buf *out) {
        int r = 0;

        for (size_t i = 0; i < len && r >= 0;) {
                if (i + 3 <= len && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                        r = buf_append(out, " ", 1);
                        i += 3;
                } else {
                        size_t k = i + 1;
                        while (k < len && !(k + 3 <= len && memcmp(s + k, "\xe2\x96\x81", 3) == 0))
                                k++;
                        r = buf_append(out, s + i, k - i);
                        i = k;
                }
        }
        return r;
}

static int piece_bpe(const char *s, size_t len, Buf *out) {
        int r = 0;

        for (size_t i = 0; i < len && r >= 0;) {
                uint32_t cp;
                int l = utf8_decode(s + i, len - i, &cp);
                int b = l > 0 ? vocab_char_byte(cp) : -1;
                if (b >= 0) {
                        uint8_t c = (uint8_t)b;
                        r = buf_append(out, &c, 1);
                } else
                        /* Not one of the byte characters: the vocabulary wrote the text itself. */
                        r = buf_append(out, s + i, l > 0 ? (size_t)l : 1);
                i += l > 0 ? (size_t)l : 1;
        }
        return r;
}

int engine_token_piece(const EngineVocab *v, int32_t token, bool special, Buf *out) {
        const char *s;
        size_t len;

        if (token < 0 || (uint32_t)token >= v->n_tokens)
                return -EINVAL;
        s = vocab_text(v, token);
        len = v->text_len[token];

        switch ((EngineTokenType)v->types[token]) {
        case ENGINE_TOKEN_CONTROL:
                return special ? buf_append(out, s, len) : 0;
        case ENGINE_TOKEN_UNKNOWN:
                return special ? buf_append(out, s, len) : buf_append(out, replacement, 3);
        case ENGINE_TOKEN_UNUSED:
                return 0;
        case ENGINE_TOKEN_USER_DEFINED:
                return buf_append(out, s, len);
        case ENGINE_TOKEN_BYTE:
                if (v->kind == ENGINE_VOCAB_SPM && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
                    hexval(s[3]) >= 0 && hexval(s[4]) >= 0) {
                        uint8_t b = (uint8_t)(hexval(s[3]) * 16 + hexval(s[4]));
                        return buf_append(out, &b, 1);
                }
                break;
        case ENGINE_TOKEN_UNDEFINED:
        case ENGINE_TOKEN_NORMAL:
        case _ENGINE_TOKEN_TYPE_MAX:
        case _ENGINE_TOKEN_TYPE_INVALID:
                break;
        }
        switch (v->kind) {
        case ENGINE_VOCAB_SPM:
                return piece_spm(s, len, out);
        case ENGINE_VOCAB_BPE:
                return piece_bpe(s, len, out);
        case _ENGINE_VOCAB_KIND_MAX:
        case _ENGINE_VOCAB_KIND_INVALID:
                break;
        }
        return -EINVAL;
}

int engine_detokenize(const EngineVocab *v, const int32_t *tokens, size_t n, bool special, Buf *out) {
        for (size_t i = 0; i < n; i++) {
                int r = engine_token_piece(v, tokens[i], special, out);
                if (r < 0)
                        return r;
        }
        return 0;
}

struct EngineDetok {
        Buf pending; /* piece bytes not yet passed on: at most an unfinished character after each push */
};

int engine_detok_new(EngineDetok **ret) {
        EngineDetok *d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        *ret = d;
        return 0;
}

EngineDetok *engine_detok_free(EngineDetok *d) {
        if (!d)
                return NULL;
        buf_free(&d->pending);
        free(d);
        return NULL;
}

/* Whether p[0..n) may still become a character: a lead byte and continuation bytes, fewer than it needs. */
static bool is_unfinished(const uint8_t *p, size_t n) {
        int need = utf8_lead_len(p[0]);
        if (need <= 1 || (size_t)need <= n)
                return false;
        for (size_t i = 1; i < n; i++)
                if ((p[i] & 0xc0) != 0x80)
                        return false;
        return true;
}

/* Moves every complete character of d->pending to out, bad bytes as U+FFFD, keeping an unfinished tail. */
static int drain(EngineDetok *d, Buf *out) {
        const uint8_t *p = d->pending.data;
        size_t n = d->pending.len, i = 0, done = 0;
        int r = 0;

        while (i < n && r >= 0) {
                uint32_t cp;
                int l = utf8_decode((const char *)p + i, n - i, &cp);
                if (l > 0) {
                        i += (size_t)l;
                        continue;
                }
                if (is_unfinished(p + i, n - i))
                        break;
                r = buf_append(out, p + done, i - done);
                if (r >= 0)
                        r = buf_append(out, replacement, 3);
                i++;
                done = i;
        }
        if (r >= 0)
                r = buf_append(out, p + done, i - done);
        if (r < 0)
                return r;
        if (n > i)
                memmove(d->pending.data, p + i, n - i);
        d->pending.len = n - i;
        return 0;
}

int engine_detok_push(EngineDetok *d, const EngineVocab *v, int32_t token, bool special, Buf *out) {
        int r = engine_token_piece(v, token, special, &d->pending);
        if (r < 0)
                return r;
        return drain(d, out);
}

int engine_detok_flush(EngineDetok *d, Buf *out) {
        int r = 0;
        if (d->pending.len > 0)
                r = buf_append(out, replacement, 3);
        d->pending.len = 0;
        return r;
}
