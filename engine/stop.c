/* SPDX-License-Identifier: MIT */
/*
 * Stop strings that may span tokens, and the num_predict limit.
 *
 * DESIGN
 * The text not yet passed on is kept in a buffer. After each piece arrives we look for a whole stop string
 * in it; if one is there, what comes before it goes out and the stream ends. Otherwise the longest tail of
 * the buffer that is the beginning of some stop string stays behind and the rest goes out. A stop string can
 * then only start inside the tail we kept, so the buffer never holds more than the longest stop string, and
 * the search stays small however long the generation runs. The tail starts where a stop string starts, so
 * held text is cut at a UTF-8 character boundary whenever the stop strings are valid UTF-8.
 */

#include "engine.h"

#define STOP_MAX_STRINGS 64
#define STOP_MAX_LEN 4096

struct EngineStop {
        char **stops; /* (n) */
        size_t *lens; /* (n) */
        size_t n;
        Buf pending; /* text that may still begin a stop string */
        bool hit;
};

int engine_stop_new(const char *const *stops, size_t n, EngineStop **ret) {
        _cleanup_(engine_stop_freep) EngineStop *s = NULL;

        if (n > STOP_MAX_STRINGS)
                return -EMSGSIZE;
        for (size_t i = 0; i < n; i++) {
                if (!stops[i] || !stops[i][0])
                        return -EINVAL;
                if (strlen(stops[i]) > STOP_MAX_LEN)
                        return -EMSGSIZE;
        }
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->stops = calloc(n ? n : 1, sizeof(char *));
        s->lens = calloc(n ? n : 1, sizeof(size_t));
        if (!s->stops || !s->lens)
                return -ENOMEM;
        for (; s->n < n; s->n++) {
                s->stops[s->n] = strdup(stops[s->n]);
                if (!s->stops[s->n])
                        return -ENOMEM;
                s->lens[s->n] = strlen(stops[s->n]);
        }
        *ret = TAKE_PTR(s);
        return 0;
}

EngineStop *engine_stop_free(EngineStop *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < s->n; i++)
                free(s->stops[i]);
        free(s->lens);
        free(s->stops);
        buf_free(&s->pending);
        free(s);
        return NULL;
}

bool engine_stop_hit(const EngineStop *s) {
        return s->hit;
}

/* The length of the longest tail of p[0..n) that some stop string begins with (shorter than the string). */
static size_t held_tail(const EngineStop *s, const char *p, size_t n) {
        size_t best = 0;

        for (size_t i = 0; i < s->n; i++)
                for (size_t k = MIN(n, s->lens[i] - 1); k > best; k--)
                        if (memcmp(p + n - k, s->stops[i], k) == 0) {
                                best = k;
                                break;
                        }
        return best;
}

int engine_stop_push(EngineStop *s, const char *text, size_t len, Buf *out) {
        const char *p;
        size_t n, first = SIZE_MAX, keep;
        int r;

        if (s->hit)
                return 1;
        r = buf_append(&s->pending, text, len);
        if (r < 0)
                return r;
        p = (const char *)s->pending.data;
        n = s->pending.len;
        if (n == 0)
                return 0;

        for (size_t i = 0; i < s->n; i++) {
                const char *at = memmem(p, n, s->stops[i], s->lens[i]);
                if (at && (size_t)(at - p) < first)
                        first = (size_t)(at - p);
        }
        if (first != SIZE_MAX) {
                r = buf_append(out, p, first);
                if (r < 0)
                        return r;
                s->hit = true;
                s->pending.len = 0;
                return 1;
        }

        keep = held_tail(s, p, n);
        r = buf_append(out, p, n - keep);
        if (r < 0)
                return r;
        if (keep > 0)
                memmove(s->pending.data, p + n - keep, keep);
        s->pending.len = keep;
        return 0;
}

int engine_stop_flush(EngineStop *s, Buf *out) {
        int r = 0;
        if (!s->hit && s->pending.len > 0)
                r = buf_append(out, s->pending.data, s->pending.len);
        s->pending.len = 0;
        return r;
}

bool engine_predict_done(int32_t num_predict, uint32_t n_generated, uint32_t pos, uint32_t n_ctx) {
        if (pos >= n_ctx)
                return true;
        if (num_predict < 0)
                return false;
        return n_generated >= (uint32_t)num_predict;
}
