/* SPDX-License-Identifier: MIT */
/*
 * What qctl prints, as pure functions of their input: durations the way Go and Ollama print them, tables,
 * the --verbose statistics block, word wrap for streamed tokens and progress lines. Nothing here touches a
 * terminal, so the tests check every byte.
 */

#include <inttypes.h>
#include <math.h>
#include <wchar.h>

#include "client.h"

static void trim_fraction(char *digits) {
        size_t n = strlen(digits);

        while (n > 0 && digits[n - 1] == '0')
                digits[--n] = 0;
}

char *format_go_duration(char *buf, size_t size, int64_t ns) {
        /* |INT64_MIN| does not fit in int64_t, so the magnitude goes through uint64_t. */
        uint64_t u = ns < 0 ? (uint64_t)0 - (uint64_t)ns : (uint64_t)ns;
        const char *sign = ns < 0 ? "-" : "";
        char frac[16];

        if (u == 0) {
                snprintf(buf, size, "0s");
                return buf;
        }
        if (u < 1000000000ULL) {
                static const struct {
                        uint64_t scale;
                        int digits;
                        const char *unit;
                } units[] = { { 1, 0, "ns" }, { 1000, 3, "µs" }, { 1000000, 6, "ms" } };
                size_t k = u < 1000 ? 0 : u < 1000000 ? 1 : 2;
                snprintf(frac, sizeof(frac), "%0*" PRIu64, units[k].digits, k ? u % units[k].scale : 0);
                trim_fraction(frac);
                snprintf(buf, size, "%s%" PRIu64 "%s%s%s", sign, u / units[k].scale, *frac ? "." : "", frac,
                         units[k].unit);
                return buf;
        }
        uint64_t s = u / 1000000000ULL, h = s / 3600, m = s / 60 % 60;
        snprintf(frac, sizeof(frac), "%09" PRIu64, (uint64_t)(u % 1000000000ULL));
        trim_fraction(frac);
        char hm[48] = "";
        if (h > 0)
                snprintf(hm, sizeof(hm), "%" PRIu64 "h%" PRIu64 "m", h, m);
        else if (m > 0)
                snprintf(hm, sizeof(hm), "%" PRIu64 "m", m);
        snprintf(buf, size, "%s%s%" PRIu64 "%s%ss", sign, hm, s % 60, *frac ? "." : "", frac);
        return buf;
}

char *format_eta(char *buf, size_t size, double seconds) {
        if (!(seconds >= 0) || seconds > 1e9)
                seconds = 0;
        uint64_t s = (uint64_t)llround(seconds);

        if (s >= 3600)
                snprintf(buf, size, "%" PRIu64 "h%" PRIu64 "m", s / 3600, s / 60 % 60);
        else if (s >= 60)
                snprintf(buf, size, "%" PRIu64 "m%" PRIu64 "s", s / 60, s % 60);
        else
                snprintf(buf, size, "%" PRIu64 "s", s);
        return buf;
}

char *format_human_duration(char *buf, size_t size, int64_t ns) {
        double secs = fabs((double)ns) / 1e9;
        int64_t s = (int64_t)secs, m = (int64_t)(secs / 60), h = (int64_t)llround(secs / 3600);

        if (secs < 1)
                snprintf(buf, size, "Less than a second");
        else if (s == 1)
                snprintf(buf, size, "1 second");
        else if (s < 60)
                snprintf(buf, size, "%" PRId64 " seconds", s);
        else if (m == 1)
                snprintf(buf, size, "About a minute");
        else if (m < 60)
                snprintf(buf, size, "%" PRId64 " minutes", m);
        else if (h == 1)
                snprintf(buf, size, "About an hour");
        else if (h < 48)
                snprintf(buf, size, "%" PRId64 " hours", h);
        else if (h < 24 * 7 * 2)
                snprintf(buf, size, "%" PRId64 " days", h / 24);
        else if (h < 24 * 30 * 2)
                snprintf(buf, size, "%" PRId64 " weeks", h / 24 / 7);
        else if (h < 24 * 365 * 2)
                snprintf(buf, size, "%" PRId64 " months", h / 24 / 30);
        else
                snprintf(buf, size, "%" PRId64 " years", h / 24 / 365);
        return buf;
}

char *format_human_time(char *buf, size_t size, int64_t delta_ns) {
        char d[64];

        format_human_duration(d, sizeof(d), delta_ns);
        snprintf(buf, size, "%s %s", d, delta_ns <= 0 ? "ago" : "from now");
        return buf;
}

/* Decodes one UTF-8 sequence; invalid bytes come back as U+FFFD, one byte each. */
static size_t utf8_decode(const char *s, size_t n, uint32_t *ret) {
        const unsigned char *u = (const unsigned char *)s;
        size_t len;
        uint32_t c;

        if (u[0] < 0x80) {
                *ret = u[0];
                return 1;
        } else if ((u[0] & 0xE0) == 0xC0) {
                len = 2;
                c = u[0] & 0x1F;
        } else if ((u[0] & 0xF0) == 0xE0) {
                len = 3;
                c = u[0] & 0x0F;
        } else if ((u[0] & 0xF8) == 0xF0) {
                len = 4;
                c = u[0] & 0x07;
        } else {
                *ret = 0xFFFD;
                return 1;
        }
        if (len > n) {
                *ret = 0xFFFD;
                return 1;
        }
        for (size_t i = 1; i < len; i++) {
                if ((u[i] & 0xC0) != 0x80) {
                        *ret = 0xFFFD;
                        return 1;
                }
                c = c << 6 | (u[i] & 0x3F);
        }
        *ret = c;
        return len;
}

static unsigned codepoint_width(uint32_t c) {
        int w = wcwidth((wchar_t)c);

        /* Control characters and, without a UTF-8 locale, anything wcwidth() does not know take one column. */
        return w < 0 ? 1 : (unsigned)w;
}

size_t utf8_width(const char *s, size_t n) {
        size_t w = 0;

        for (size_t i = 0; i < n;) {
                uint32_t c;
                i += utf8_decode(s + i, n - i, &c);
                w += codepoint_width(c);
        }
        return w;
}

static int stats_line(Buf *out, const char *label, const char *fmt, ...) _printf_(3, 4);
static int stats_line(Buf *out, const char *label, const char *fmt, ...) {
        char value[128];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(value, sizeof(value), fmt, ap);
        va_end(ap);
        return buf_printf(out, "%-22s%s\n", label, value);
}

int format_stats(const GenerateStats *s, Buf *out) {
        char d[64];
        int r;

        r = stats_line(out, "total duration:", "%s", format_go_duration(d, sizeof(d), s->total_ns));
        if (r >= 0 && (s->load_ns > 0 || s->has_load))
                r = stats_line(out, "load duration:", "%s", format_go_duration(d, sizeof(d), s->load_ns));
        if (r >= 0 && s->prompt_eval_count > 0) {
                r = stats_line(out, "prompt eval count:", "%" PRId64 " token(s)", s->prompt_eval_count);
                if (r >= 0 && s->prompt_eval_ns > 0) {
                        r = stats_line(out, "prompt eval duration:", "%s",
                                       format_go_duration(d, sizeof(d), s->prompt_eval_ns));
                        if (r >= 0)
                                r = stats_line(out, "prompt eval rate:", "%.2f tokens/s",
                                               (double)s->prompt_eval_count / ((double)s->prompt_eval_ns / 1e9));
                }
        }
        if (r >= 0 && s->eval_count > 0) {
                r = stats_line(out, "eval count:", "%" PRId64 " token(s)", s->eval_count);
                if (r >= 0 && s->eval_ns > 0) {
                        r = stats_line(out, "eval duration:", "%s", format_go_duration(d, sizeof(d), s->eval_ns));
                        if (r >= 0)
                                r = stats_line(out, "eval rate:", "%.2f tokens/s",
                                               (double)s->eval_count / ((double)s->eval_ns / 1e9));
                }
        }
        return r;
}

struct Table {
        size_t n_columns;
        char **cells; /* (n_rows + 1, n_columns), the headers first */
        size_t n_rows;
};

static int table_push_row(Table *t, const char *const *cells) {
        char **nc = reallocarray(t->cells, (t->n_rows + 2) * t->n_columns, sizeof(char *));
        if (!nc)
                return -ENOMEM;
        t->cells = nc;
        char **row = nc + (t->n_rows + 1) * t->n_columns;
        for (size_t i = 0; i < t->n_columns; i++) {
                row[i] = strdup(strempty(cells[i]));
                if (!row[i]) {
                        for (size_t j = 0; j < i; j++)
                                free(row[j]);
                        return -ENOMEM;
                }
        }
        t->n_rows++;
        return 0;
}

int table_new(Table **ret, size_t n_columns, const char *const *headers) {
        _cleanup_(table_freep) Table *t = NULL;

        if (n_columns == 0)
                return -EINVAL;
        t = calloc(1, sizeof(Table));
        if (!t)
                return -ENOMEM;
        t->n_columns = n_columns;
        /* The headers are the first row of cells; n_rows counts the rows below them. */
        t->cells = calloc(n_columns, sizeof(char *));
        if (!t->cells)
                return -ENOMEM;
        for (size_t i = 0; i < n_columns; i++) {
                t->cells[i] = strdup(headers[i]);
                if (!t->cells[i])
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(t);
        return 0;
}

int table_add_row(Table *t, const char *const *cells) {
        return table_push_row(t, cells);
}

int table_format(const Table *t, Buf *out) {
        _cleanup_free_ size_t *widths = calloc(t->n_columns, sizeof(size_t));
        int r = 0;

        if (!widths)
                return -ENOMEM;
        for (size_t row = 0; row <= t->n_rows; row++)
                for (size_t c = 0; c < t->n_columns; c++) {
                        const char *s = t->cells[row * t->n_columns + c];
                        widths[c] = MAX(widths[c], utf8_width(s, strlen(s)));
                }
        for (size_t row = 0; r >= 0 && row <= t->n_rows; row++) {
                for (size_t c = 0; r >= 0 && c < t->n_columns; c++) {
                        const char *s = t->cells[row * t->n_columns + c];
                        r = buf_append_str(out, s);
                        if (r >= 0 && c + 1 < t->n_columns)
                                r = buf_printf(out, "%*s", (int)(widths[c] - utf8_width(s, strlen(s)) + 4), "");
                }
                if (r >= 0) {
                        /* Empty trailing cells leave blanks; a line does not end in them. */
                        while (out->len > 0 && out->data[out->len - 1] == ' ')
                                out->data[--out->len] = 0;
                        r = buf_append_str(out, "\n");
                }
        }
        return r;
}

Table *table_free(Table *t) {
        if (!t)
                return NULL;
        if (t->cells)
                for (size_t i = 0; i < (t->n_rows + 1) * t->n_columns; i++)
                        free(t->cells[i]);
        free(t->cells);
        free(t);
        return NULL;
}

/* Puts the collected word on the line, or on a new line when it would cross the width. */
static int word_wrap_place(WordWrap *w, Buf *out) {
        int r = 0;

        if (w->word.len == 0)
                return 0;
        size_t blanks = utf8_width((char *)w->blanks.data, w->blanks.len);
        if (w->col + blanks + w->word_width <= w->width) {
                r = buf_append(out, w->blanks.data, w->blanks.len);
                w->col += (unsigned)blanks;
        } else if (w->col > 0) {
                r = buf_append_str(out, "\n");
                w->col = 0;
        }
        w->blanks.len = 0;
        /* A word longer than a line is broken wherever the line is full. */
        const char *p = (const char *)w->word.data, *end = p + w->word.len;
        while (r >= 0 && p < end) {
                uint32_t c;
                size_t n = utf8_decode(p, (size_t)(end - p), &c);
                unsigned cw = codepoint_width(c);
                if (w->col + cw > w->width && w->col > 0) {
                        r = buf_append_str(out, "\n");
                        w->col = 0;
                }
                if (r >= 0)
                        r = buf_append(out, p, n);
                w->col += cw;
                p += n;
        }
        w->word.len = 0;
        w->word_width = 0;
        return r;
}

int word_wrap_feed(WordWrap *w, const char *text, size_t n, Buf *out) {
        int r = 0;

        if (w->width == 0)
                return buf_append(out, text, n);
        for (size_t i = 0; r >= 0 && i < n;) {
                uint32_t c;
                size_t len = utf8_decode(text + i, n - i, &c);
                if (c == '\n') {
                        r = word_wrap_place(w, out);
                        w->blanks.len = 0;
                        if (r >= 0)
                                r = buf_append_str(out, "\n");
                        w->col = 0;
                } else if (c == ' ' || c == '\t') {
                        if (w->word.len > 0)
                                r = word_wrap_place(w, out);
                        if (r >= 0)
                                r = buf_append(&w->blanks, text + i, len);
                } else {
                        r = buf_append(&w->word, text + i, len);
                        w->word_width += codepoint_width(c);
                }
                i += len;
        }
        return r;
}

int word_wrap_flush(WordWrap *w, Buf *out) {
        int r = word_wrap_place(w, out);

        /* Blanks at the very end stay, so that a prompt echoed back reads as typed. */
        if (r >= 0 && w->blanks.len > 0 && w->col + w->blanks.len <= w->width) {
                r = buf_append(out, w->blanks.data, w->blanks.len);
                w->col += (unsigned)w->blanks.len;
        }
        w->blanks.len = 0;
        return r;
}

void word_wrap_done(WordWrap *w) {
        buf_free(&w->word);
        buf_free(&w->blanks);
        w->col = 0;
        w->word_width = 0;
}

int format_progress(Buf *out, unsigned width, const char *label, uint64_t completed, uint64_t total,
                    double rate, double eta) {
        char a[32], b[32], stats[96];
        int r;

        if (total == 0) {
                if (completed == 0)
                        return buf_printf(out, "%s", label);
                return buf_printf(out, "%s: %s", label, format_bytes(a, sizeof(a), completed));
        }
        completed = MIN(completed, total);
        unsigned pct = (unsigned)(completed * 100 / total);
        if (completed == total)
                snprintf(stats, sizeof(stats), "%s", format_bytes(a, sizeof(a), total));
        else {
                int n = snprintf(stats, sizeof(stats), "%s/%s", format_bytes(a, sizeof(a), completed),
                                 format_bytes(b, sizeof(b), total));
                if (rate >= 0)
                        n += snprintf(stats + n, sizeof(stats) - (size_t)n, "  %s/s",
                                      format_bytes(a, sizeof(a), (uint64_t)llround(rate)));
                if (eta >= 0)
                        snprintf(stats + n, sizeof(stats) - (size_t)n, "  %s", format_eta(a, sizeof(a), eta));
        }
        /* The bar takes what the label and the numbers leave, between 10 and 50 columns; the numbers get a
         * fixed 32 columns so that the bar does not jump as they change. */
        size_t fixed = utf8_width(label, strlen(label)) + strlen(": 100% ") + 2 + 1 + 32;
        size_t bar = width > fixed ? width - fixed : 0;
        bar = CLAMP(bar, (size_t)10, (size_t)50);
        size_t filled = (size_t)(completed * bar / total);

        r = buf_printf(out, "%s: %3u%% \u2595", label, pct);
        for (size_t i = 0; r >= 0 && i < bar; i++)
                r = buf_append_str(out, i < filled ? "\u2588" : " ");
        if (r >= 0)
                r = buf_printf(out, "\u258f %s", stats);
        return r;
}

const char *spinner_frame(unsigned i) {
        static const char *const frames[] = { "⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏" };

        return frames[i % ELEMENTSOF(frames)];
}

char *format_count(char *buf, size_t size, uint64_t n) {
        static const struct {
                double scale;
                const char *suffix;
                int decimals;
        } units[] = { { 1e9, "B", 1 }, { 1e6, "M", 2 }, { 1e3, "K", 0 } };

        for (size_t i = 0; i < ELEMENTSOF(units); i++) {
                if ((double)n < units[i].scale)
                        continue;
                double v = (double)n / units[i].scale;
                if (v == floor(v))
                        snprintf(buf, size, "%.0f%s", v, units[i].suffix);
                else
                        snprintf(buf, size, "%.*f%s", units[i].decimals, v, units[i].suffix);
                return buf;
        }
        snprintf(buf, size, "%" PRIu64, n);
        return buf;
}
