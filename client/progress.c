/* SPDX-License-Identifier: MIT */
/*
 * Progress of pull, push and create, as the daemon's events report it. On a terminal: one line per layer
 * (bar, bytes, rate, time left) redrawn in place, like Ollama's; elsewhere (a log, a pipe): a line when a step
 * starts and one when a layer is done, so that logs stay short and readable.
 *
 * DESIGN
 * The rate is an exponential moving average of the bytes per second between redraws, with a time constant of
 * about three seconds: steady enough to read, quick enough to follow a stall. Redraws are limited to ten a
 * second; a new step is drawn at once.
 */

#include <math.h>

#include "client.h"

typedef struct Line {
        char *status;
        char *key; /* NULL for a step without bytes */
        uint64_t completed, total;
        uint64_t last_ns;       /* when completed was last sampled for the rate */
        uint64_t last_completed;
        double rate;            /* bytes per second, < 0 until measured */
        bool reported_done;     /* plain mode: the "done" line was printed */
} Line;

struct Progress {
        FILE *f;
        bool tty;
        unsigned width;
        Line *lines; /* (n_lines) in order of appearance */
        size_t n_lines;
        size_t drawn;      /* lines currently on the screen */
        uint64_t drawn_ns; /* when they were drawn */
};

int progress_new(Progress **ret, FILE *f, bool tty, unsigned width) {
        Progress *p = calloc(1, sizeof(Progress));

        if (!p)
                return -ENOMEM;
        p->f = f;
        p->tty = tty;
        p->width = width > 0 ? width : 80;
        *ret = p;
        return 0;
}

Progress *progress_free(Progress *p) {
        if (!p)
                return NULL;
        for (size_t i = 0; i < p->n_lines; i++) {
                free(p->lines[i].status);
                free(p->lines[i].key);
        }
        free(p->lines);
        free(p);
        return NULL;
}

/* "pulling sha256:8eeb52dfb3bb…" reads better as "pulling 8eeb52dfb3bb", as Ollama shows it. */
static char *line_label(const Line *l) {
        const char *digest = l->key ? (startswith(l->key, "sha256:") ?: startswith(l->key, "sha256-") ?: l->key)
                                    : NULL;
        const char *s = l->status;
        const char *in = digest ? strstr(s, l->key) : NULL;

        if (digest && in)
                return strdup_printf("%.*s%.12s", (int)(in - s), s, digest);
        if (digest)
                return strdup_printf("%s %.12s", s, digest);
        return strdup(s);
}

static Line *find_line(Progress *p, const char *status, const char *key) {
        for (size_t i = 0; i < p->n_lines; i++) {
                Line *l = &p->lines[i];
                if (key ? streq_ptr(l->key, key) : !l->key && streq(l->status, status))
                        return l;
        }
        return NULL;
}

static int draw_line(Progress *p, const Line *l, Buf *out) {
        _cleanup_free_ char *label = line_label(l);
        if (!label)
                return -ENOMEM;
        if (l->total == 0)
                return format_progress(out, p->width, label, l->completed, l->total, -1, -1);
        double eta = l->rate > 0 ? (double)(l->total - MIN(l->completed, l->total)) / l->rate : -1;
        return format_progress(out, p->width, label, l->completed, l->total, l->rate, eta);
}

static int redraw(Progress *p) {
        Buf out = {};
        int r = 0;

        /* Back to the first line drawn, then every line anew, each cleared to its end. */
        if (p->drawn > 1)
                r = buf_printf(&out, "\033[%zuA", p->drawn - 1);
        if (r >= 0 && p->drawn > 0)
                r = buf_append_str(&out, "\r");
        for (size_t i = 0; r >= 0 && i < p->n_lines; i++) {
                if (i > 0)
                        r = buf_append_str(&out, "\n");
                if (r >= 0)
                        r = draw_line(p, &p->lines[i], &out);
                if (r >= 0)
                        r = buf_append_str(&out, "\033[K");
        }
        if (r >= 0 && out.len > 0) {
                fwrite(out.data, 1, out.len, p->f);
                fflush(p->f);
        }
        buf_free(&out);
        p->drawn = p->n_lines;
        return r;
}

static int plain(Progress *p, const Line *l, bool done) {
        _cleanup_free_ char *label = line_label(l);
        char a[32];

        if (!label)
                return -ENOMEM;
        if (!done)
                fprintf(p->f, "%s%s%s\n", label, l->total > 0 ? ": " : "",
                        l->total > 0 ? format_bytes(a, sizeof(a), l->total) : "");
        else
                fprintf(p->f, "%s: done\n", label);
        fflush(p->f);
        return 0;
}

int progress_update(Progress *p, const char *status, const char *key, uint64_t completed, uint64_t total,
                    uint64_t now) {
        Line *l = find_line(p, status, key);
        bool fresh = !l;

        if (!l) {
                Line *nl = reallocarray(p->lines, p->n_lines + 1, sizeof(Line));
                if (!nl)
                        return -ENOMEM;
                p->lines = nl;
                l = &p->lines[p->n_lines];
                *l = (Line){ .status = strdup(status), .key = key ? strdup(key) : NULL, .rate = -1,
                             .last_ns = now, .last_completed = completed };
                if (!l->status || (key && !l->key)) {
                        free(l->status);
                        free(l->key);
                        return -ENOMEM;
                }
                p->n_lines++;
        } else if (!streq(l->status, status)) {
                char *s = strdup(status);
                if (!s)
                        return -ENOMEM;
                free(l->status);
                l->status = s;
        }
        l->total = total;
        l->completed = completed;
        if (now > l->last_ns + 200000000ULL && completed >= l->last_completed) {
                double dt = (double)(now - l->last_ns) / 1e9;
                double inst = (double)(completed - l->last_completed) / dt;
                double alpha = 1.0 - exp(-dt / 3.0);
                l->rate = l->rate < 0 ? inst : l->rate + alpha * (inst - l->rate);
                l->last_ns = now;
                l->last_completed = completed;
        }

        if (!p->tty) {
                /* The daemon sends only the latest figures, so a short step may arrive complete at once:
                 * its line and its "done" then come together. */
                if (fresh) {
                        int r = plain(p, l, false);
                        if (r < 0)
                                return r;
                }
                if (total > 0 && completed >= total && !l->reported_done) {
                        l->reported_done = true;
                        return plain(p, l, true);
                }
                return 0;
        }
        if (!fresh && now < p->drawn_ns + 100000000ULL && !(total > 0 && completed >= total))
                return 0;
        p->drawn_ns = now;
        return redraw(p);
}

int progress_finish(Progress *p) {
        int r = 0;

        if (p->tty && p->n_lines > 0) {
                r = redraw(p);
                fputc('\n', p->f);
                fflush(p->f);
                p->drawn = 0;
        }
        return r;
}
