/* SPDX-License-Identifier: MIT */
/*
 * The Modelfile parser: Ollama's format, read by a hand-written scanner that knows its line and column so that
 * every error reads "FILE:LINE:COLUMN: what was expected".
 *
 * DESIGN
 * The grammar, as modelfile(5) documents it:
 *
 *   file        = { blank-line | comment | instruction }
 *   comment     = [blanks] "#" … end of line
 *   instruction = [blanks] WORD blanks arguments [blanks] end of line        WORD in any case
 *   arguments   = value                     FROM ADAPTER TEMPLATE SYSTEM LICENSE REQUIRES
 *               | NAME blanks value         PARAMETER
 *               | ROLE blanks value         MESSAGE  (ROLE: system, user or assistant)
 *   value       = '"""' any text up to the next '"""' '"""'      may span lines, taken verbatim
 *               | '"' text with \" and \\ escapes '"'            may span lines
 *               | the rest of the line, trailing blanks removed  '#' inside is text, not a comment
 *
 * FROM, ADAPTER, TEMPLATE, SYSTEM and REQUIRES may appear once (a second one is more likely a mistake than an
 * override, so it is an error); PARAMETER, LICENSE and MESSAGE repeat. Of a parameter the last value wins,
 * except stop, whose values add up. Columns count characters (UTF-8 code points), from 1.
 */

#include <strings.h>
#include <sys/stat.h>

#include "client.h"

typedef enum Instruction {
        INSTR_FROM,
        INSTR_PARAMETER,
        INSTR_TEMPLATE,
        INSTR_SYSTEM,
        INSTR_ADAPTER,
        INSTR_LICENSE,
        INSTR_MESSAGE,
        INSTR_REQUIRES,
        _INSTR_MAX,
        _INSTR_INVALID = -EINVAL,
} Instruction;

static const char *const instruction_names[_INSTR_MAX] = {
        [INSTR_FROM] = "FROM",       [INSTR_PARAMETER] = "PARAMETER", [INSTR_TEMPLATE] = "TEMPLATE",
        [INSTR_SYSTEM] = "SYSTEM",   [INSTR_ADAPTER] = "ADAPTER",     [INSTR_LICENSE] = "LICENSE",
        [INSTR_MESSAGE] = "MESSAGE", [INSTR_REQUIRES] = "REQUIRES",
};

static const char *const role_names[_MESSAGE_ROLE_MAX] = {
        [MESSAGE_SYSTEM] = "system",
        [MESSAGE_USER] = "user",
        [MESSAGE_ASSISTANT] = "assistant",
};

const char *message_role_to_string(MessageRole r) {
        return r >= 0 && r < _MESSAGE_ROLE_MAX ? role_names[r] : NULL;
}

MessageRole message_role_from_string(const char *s) {
        for (int i = 0; i < _MESSAGE_ROLE_MAX; i++)
                if (s && strcasecmp(role_names[i], s) == 0)
                        return (MessageRole)i;
        return _MESSAGE_ROLE_INVALID;
}

typedef struct Scanner {
        const char *p, *end;
        unsigned line, col;
        const char *filename;
        QdError *error;
} Scanner;

typedef struct Pos {
        unsigned line, col;
} Pos;

static Pos scanner_pos(const Scanner *s) {
        return (Pos){ s->line, s->col };
}

static bool scanner_eof(const Scanner *s) {
        return s->p >= s->end;
}

/* End of line: "\n", "\r\n" or the end of the text. */
static bool scanner_eol(const Scanner *s) {
        return scanner_eof(s) || *s->p == '\n' || (*s->p == '\r' && s->p + 1 < s->end && s->p[1] == '\n');
}

static bool is_blank(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static void scanner_next(Scanner *s) {
        if (scanner_eof(s))
                return;
        if (*s->p == '\n') {
                s->line++;
                s->col = 1;
        } else if (((unsigned char)*s->p & 0xC0) != 0x80)
                s->col++;
        s->p++;
        /* A continuation byte belongs to the character already counted. */
        while (!scanner_eof(s) && ((unsigned char)*s->p & 0xC0) == 0x80)
                s->p++;
}

static void scanner_skip(Scanner *s, size_t n) {
        const char *target = s->p + n;

        while (s->p < target && !scanner_eof(s))
                scanner_next(s);
}

static bool scanner_skip_blanks(Scanner *s) {
        bool any = false;

        while (!scanner_eof(s) && is_blank(*s->p) && !scanner_eol(s)) {
                scanner_next(s);
                any = true;
        }
        return any;
}

static void scanner_skip_line(Scanner *s) {
        while (!scanner_eof(s) && *s->p != '\n')
                scanner_next(s);
        scanner_next(s);
}

static bool scanner_looking_at(const Scanner *s, const char *what) {
        size_t n = strlen(what);

        return (size_t)(s->end - s->p) >= n && memcmp(s->p, what, n) == 0;
}

_printf_(3, 4) static int scanner_error(Scanner *s, Pos at, const char *fmt, ...) {
        char msg[400];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        return qd_error_set(s->error, EBADMSG, "%s:%u:%u: %s", s->filename, at.line, at.col, msg);
}

/* Reads a run of non-blank characters on this line. */
static int scanner_word(Scanner *s, char **ret) {
        const char *start = s->p;

        while (!scanner_eol(s) && !is_blank(*s->p))
                scanner_next(s);
        char *w = strndup(start, (size_t)(s->p - start));
        if (!w)
                return -ENOMEM;
        *ret = w;
        return 0;
}

/* Shows at most 40 bytes of a word in a message, so that a binary file gives a readable error. */
static const char *shorten(const char *w, char *buf, size_t size) {
        size_t n = strlen(w);

        if (n <= 40)
                return w;
        snprintf(buf, size, "%.37s...", w);
        return buf;
}

/* Moves one character of a quoted value into b; "\r\n" becomes "\n" so that files from Windows read alike. */
static int scanner_take_char(Scanner *s, Buf *b) {
        if (*s->p == '\r' && s->p + 1 < s->end && s->p[1] == '\n')
                scanner_next(s);
        const char *c = s->p;
        scanner_next(s);
        return buf_append(b, c, (size_t)(s->p - c));
}

static int scanner_value(Scanner *s, const char *what, char **ret) {
        Pos start = scanner_pos(s);
        Buf b = {};
        int r;

        if (scanner_eol(s))
                return scanner_error(s, start, "expected %s", what);

        if (scanner_looking_at(s, "\"\"\"")) {
                scanner_skip(s, 3);
                for (;;) {
                        if (scanner_eof(s)) {
                                buf_free(&b);
                                return scanner_error(s, start,
                                                     "expected a closing \"\"\" for the text opened here");
                        }
                        if (scanner_looking_at(s, "\"\"\"")) {
                                scanner_skip(s, 3);
                                break;
                        }
                        r = scanner_take_char(s, &b);
                        if (r < 0) {
                                buf_free(&b);
                                return r;
                        }
                }
        } else if (*s->p == '"') {
                scanner_next(s);
                for (;;) {
                        if (scanner_eof(s)) {
                                buf_free(&b);
                                return scanner_error(s, start, "expected a closing \" for the text opened here");
                        }
                        if (*s->p == '"') {
                                scanner_next(s);
                                break;
                        }
                        if (*s->p == '\\' && s->p + 1 < s->end && (s->p[1] == '"' || s->p[1] == '\\'))
                                scanner_next(s);
                        r = scanner_take_char(s, &b);
                        if (r < 0) {
                                buf_free(&b);
                                return r;
                        }
                }
        } else {
                const char *c = s->p, *last = s->p;
                while (!scanner_eol(s)) {
                        if (!is_blank(*s->p)) {
                                scanner_next(s);
                                last = s->p;
                        } else
                                scanner_next(s);
                }
                r = buf_append(&b, c, (size_t)(last - c));
                if (r < 0)
                        return r;
        }

        char *v = buf_steal_str(&b);
        if (!v)
                return -ENOMEM;
        *ret = v;
        return 0;
}

/* After the arguments only blanks may follow on the line. */
static int scanner_end_of_instruction(Scanner *s, const char *instr) {
        scanner_skip_blanks(s);
        if (!scanner_eol(s))
                return scanner_error(s, scanner_pos(s), "expected the end of the line after %s's closing quote",
                                     instr);
        scanner_skip_line(s);
        return 0;
}

static Instruction instruction_from_string(const char *w) {
        for (int i = 0; i < _INSTR_MAX; i++)
                if (strcasecmp(instruction_names[i], w) == 0)
                        return (Instruction)i;
        return _INSTR_INVALID;
}

/* ~/x is under $HOME, an absolute path stays, anything else is relative to dir. */
static int resolve_path(const char *dir, const char *value, char **ret) {
        const char *home = getenv("HOME");
        char *p;

        if ((streq(value, "~") || startswith(value, "~/")) && home && home[0] == '/')
                p = strdup_printf("%s%s", home, value + 1);
        else if (value[0] == '/' || !dir || streq(dir, "."))
                p = strdup(value);
        else
                p = strdup_printf("%s%s%s", dir, endswith(dir, "/") ? "" : "/", value);
        if (!p)
                return -ENOMEM;
        *ret = p;
        return 0;
}

/*
 * FROM names a file when it is written as a path (/, ./, ../, ~/), ends in .gguf, or names something that
 * exists next to the Modelfile; otherwise it is a model name ("llama3.2", "hf.co/org/repo:Q4_K_M").
 */
static int resolve_from(const char *dir, const char *value, char **ret) {
        _cleanup_free_ char *p = NULL;
        struct stat st;
        int r;

        r = resolve_path(dir, value, &p);
        if (r < 0)
                return r;
        size_t n = strlen(value);
        bool pathlike = value[0] == '/' || startswith(value, "./") || startswith(value, "../") ||
                        startswith(value, "~/") || streq(value, ".") || streq(value, "..") || streq(value, "~") ||
                        (n > 5 && strcasecmp(value + n - 5, ".gguf") == 0) || endswith(value, ".tar") ||
                        endswith(value, ".tar.gz") || endswith(value, ".tgz") || endswith(value, ".tar.zst");
        if (!pathlike && stat(p, &st) < 0) {
                *ret = NULL;
                return 0;
        }
        *ret = TAKE_PTR(p);
        return 0;
}

static int strv_push(char ***l, char *s) {
        size_t n = 0;

        while (*l && (*l)[n])
                n++;
        char **nl = reallocarray(*l, n + 2, sizeof(char *));
        if (!nl)
                return -ENOMEM;
        nl[n] = s;
        nl[n + 1] = NULL;
        *l = nl;
        return 0;
}

typedef struct ParseState {
        Scanner s;
        const char *dir;
        Modelfile *m;
        unsigned seen[_INSTR_MAX]; /* line of the first occurrence, 0 when not seen */
} ParseState;

static int parse_parameter(ParseState *st, Pos name_at) {
        Scanner *s = &st->s;
        _cleanup_free_ char *name = NULL, *value = NULL;
        char sbuf[48];
        QdError pe = {};
        int r;

        r = scanner_word(s, &name);
        if (r < 0)
                return r;
        const ParamInfo *p = param_lookup(name);
        if (!p)
                return scanner_error(s, name_at, "expected a parameter name, found '%s' (modelfile(5) lists them)",
                                     shorten(name, sbuf, sizeof(sbuf)));
        scanner_skip_blanks(s);
        if (scanner_eol(s))
                return scanner_error(s, scanner_pos(s), "expected a value (%s) for %s",
                                     param_type_to_string(p->type), p->name);
        Pos value_at = scanner_pos(s);
        r = scanner_value(s, "a value", &value);
        if (r < 0)
                return r;
        r = scanner_end_of_instruction(s, "PARAMETER");
        if (r < 0)
                return r;
        if (p->deprecated) {
                char *w = strdup_printf("%s:%u:%u: parameter %s is no longer used, ignoring it", s->filename,
                                        name_at.line, name_at.col, p->name);
                if (!w)
                        return -ENOMEM;
                r = strv_push(&st->m->warnings, w);
                if (r < 0)
                        free(w);
                return r;
        }
        r = param_set_add(&st->m->params, p->name, value, &pe);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return scanner_error(s, value_at, "%s", pe.msg);
        return 0;
}

static int parse_message(ParseState *st, Pos role_at) {
        Scanner *s = &st->s;
        _cleanup_free_ char *role = NULL, *value = NULL;
        char sbuf[48];
        int r;

        r = scanner_word(s, &role);
        if (r < 0)
                return r;
        MessageRole mr = message_role_from_string(role);
        if (mr < 0)
                return scanner_error(s, role_at, "expected a role (system, user or assistant), found '%s'",
                                     shorten(role, sbuf, sizeof(sbuf)));
        scanner_skip_blanks(s);
        _cleanup_free_ char *what = strdup_printf("the %s message's text", role_names[mr]);
        if (!what)
                return -ENOMEM;
        r = scanner_value(s, what, &value);
        if (r < 0)
                return r;
        r = scanner_end_of_instruction(s, "MESSAGE");
        if (r < 0)
                return r;
        ModelfileMessage *msgs = reallocarray(st->m->messages, st->m->n_messages + 1, sizeof(ModelfileMessage));
        if (!msgs)
                return -ENOMEM;
        st->m->messages = msgs;
        msgs[st->m->n_messages++] = (ModelfileMessage){ .role = mr, .content = TAKE_PTR(value) };
        return 0;
}

static int parse_instruction(ParseState *st) {
        Scanner *s = &st->s;
        _cleanup_free_ char *word = NULL, *value = NULL;
        Pos at = scanner_pos(s);
        char sbuf[48];
        int r;

        r = scanner_word(s, &word);
        if (r < 0)
                return r;
        Instruction in = instruction_from_string(word);
        if (in < 0)
                return scanner_error(s, at,
                                     "expected an instruction (FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, "
                                     "MESSAGE or REQUIRES), found '%s'",
                                     shorten(word, sbuf, sizeof(sbuf)));
        const char *name = instruction_names[in];

        switch (in) {
        case INSTR_FROM:
        case INSTR_TEMPLATE:
        case INSTR_SYSTEM:
        case INSTR_ADAPTER:
        case INSTR_REQUIRES:
                if (st->seen[in])
                        return scanner_error(s, at, "expected one %s, found a second (the first is on line %u)",
                                             name, st->seen[in]);
                break;
        case INSTR_PARAMETER:
        case INSTR_LICENSE:
        case INSTR_MESSAGE:
                break;
        case _INSTR_MAX:
        case _INSTR_INVALID:
                return -EINVAL;
        }
        if (!st->seen[in])
                st->seen[in] = at.line;

        scanner_skip_blanks(s);
        Pos arg_at = scanner_pos(s);
        if (in == INSTR_PARAMETER) {
                if (scanner_eol(s))
                        return scanner_error(s, arg_at, "expected a parameter name after PARAMETER");
                return parse_parameter(st, arg_at);
        }
        if (in == INSTR_MESSAGE) {
                if (scanner_eol(s))
                        return scanner_error(s, arg_at, "expected a role (system, user or assistant) after MESSAGE");
                return parse_message(st, arg_at);
        }

        static const char *const what[_INSTR_MAX] = {
                [INSTR_FROM] = "a model name or a path after FROM",
                [INSTR_TEMPLATE] = "a template after TEMPLATE",
                [INSTR_SYSTEM] = "a system message after SYSTEM",
                [INSTR_ADAPTER] = "a path after ADAPTER",
                [INSTR_LICENSE] = "the license's text after LICENSE",
                [INSTR_REQUIRES] = "a version after REQUIRES",
        };
        r = scanner_value(s, what[in], &value);
        if (r < 0)
                return r;
        r = scanner_end_of_instruction(s, name);
        if (r < 0)
                return r;

        Modelfile *m = st->m;
        switch (in) {
        case INSTR_FROM:
                if (!*value)
                        return scanner_error(s, arg_at, "expected a model name or a path after FROM, found \"\"");
                r = resolve_from(st->dir, value, &m->from_path);
                if (r < 0)
                        return r;
                m->from = TAKE_PTR(value);
                m->from_line = at.line;
                return 0;
        case INSTR_ADAPTER:
                if (!*value)
                        return scanner_error(s, arg_at, "expected a path after ADAPTER, found \"\"");
                r = resolve_path(st->dir, value, &m->adapter_path);
                if (r < 0)
                        return r;
                m->adapter = TAKE_PTR(value);
                return 0;
        case INSTR_TEMPLATE:
                m->template_ = TAKE_PTR(value);
                return 0;
        case INSTR_SYSTEM:
                m->system = TAKE_PTR(value);
                return 0;
        case INSTR_REQUIRES:
                m->requires = TAKE_PTR(value);
                return 0;
        case INSTR_LICENSE:
                r = strv_push(&m->licenses, value);
                if (r < 0)
                        return r;
                TAKE_PTR(value);
                return 0;
        case INSTR_PARAMETER:
        case INSTR_MESSAGE:
        case _INSTR_MAX:
        case _INSTR_INVALID:
                break;
        }
        return -EINVAL;
}

int modelfile_parse(const char *text, size_t len, const char *filename, const char *dir, Modelfile **ret,
                    QdError *e) {
        _cleanup_(modelfile_freep) Modelfile *m = NULL;
        int r;

        filename = filename ?: "Modelfile";
        if (memchr(text, 0, len))
                return qd_error_set(e, EBADMSG, "%s: expected text, found a NUL byte: is this a Modelfile?",
                                    filename);
        m = calloc(1, sizeof(Modelfile));
        if (!m)
                return -ENOMEM;

        ParseState st = {
                .s = { .p = text, .end = text + len, .line = 1, .col = 1, .filename = filename, .error = e },
                .dir = dir,
                .m = m,
        };
        /* A byte order mark is not part of the first instruction. */
        if (scanner_looking_at(&st.s, "\xEF\xBB\xBF"))
                st.s.p += 3;

        while (!scanner_eof(&st.s)) {
                scanner_skip_blanks(&st.s);
                if (scanner_eol(&st.s)) {
                        scanner_skip_line(&st.s);
                        continue;
                }
                if (*st.s.p == '#') {
                        scanner_skip_line(&st.s);
                        continue;
                }
                r = parse_instruction(&st);
                if (r < 0)
                        return r;
        }
        if (!m->from)
                return qd_error_set(e, EBADMSG, "%s: expected a FROM instruction naming the base model", filename);
        *ret = TAKE_PTR(m);
        return 0;
}

int modelfile_load(const char *path, Modelfile **ret, QdError *e) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *dir = NULL;
        Buf b = {};
        char chunk[16384];
        size_t n;
        int r;

        f = fopen(path, "re");
        if (!f)
                return qd_error_set(e, errno, "Cannot open Modelfile '%s': %s.", path, strerror(errno));
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
                /* A Modelfile is a few kilobytes; a huge file is a mistake, not a model. */
                if (b.len + n > 16 * 1024 * 1024) {
                        buf_free(&b);
                        return qd_error_set(e, EMSGSIZE, "%s: expected a Modelfile, found a file over 16 MiB",
                                            path);
                }
                r = buf_append(&b, chunk, n);
                if (r < 0) {
                        buf_free(&b);
                        return r;
                }
        }
        if (ferror(f)) {
                r = errno > 0 ? errno : EIO;
                buf_free(&b);
                return qd_error_set(e, r, "Cannot read Modelfile '%s': %s.", path, strerror(r));
        }
        const char *slash = strrchr(path, '/');
        dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
        if (!dir) {
                buf_free(&b);
                return -ENOMEM;
        }
        r = modelfile_parse(b.data ? (const char *)b.data : "", b.len, path, dir, ret, e);
        buf_free(&b);
        return r;
}

int modelfile_quote(const char *s, Buf *out) {
        size_t n = strlen(s);
        bool bare = n > 0 && !is_blank(s[0]) && !is_blank(s[n - 1]) && s[0] != '"' && !strpbrk(s, "\n\r");

        if (bare)
                return buf_append_str(out, s);
        /* """ keeps text verbatim, which templates with backslashes and quotes want; it cannot hold """ itself
         * or end in a quote, so such text gets "…" with escapes. */
        if (!strstr(s, "\"\"\"") && (n == 0 || s[n - 1] != '"') && strpbrk(s, "\n\"\\"))
                return buf_printf(out, "\"\"\"%s\"\"\"", s);
        int r = buf_append_str(out, "\"");
        for (const char *c = s; r >= 0 && *c; c++) {
                if (*c == '"' || *c == '\\')
                        r = buf_append_str(out, "\\");
                if (r >= 0)
                        r = buf_append(out, c, 1);
        }
        return r < 0 ? r : buf_append_str(out, "\"");
}

static int format_line(Buf *b, const char *instr, const char *arg, const char *value) {
        int r = buf_printf(b, "%s ", instr);
        if (r >= 0 && arg)
                r = buf_printf(b, "%s ", arg);
        if (r >= 0)
                r = modelfile_quote(value, b);
        if (r >= 0)
                r = buf_append_str(b, "\n");
        return r;
}

int modelfile_format(const Modelfile *m, char **ret) {
        Buf b = {};
        int r;

        r = format_line(&b, "FROM", NULL, m->from_path ?: m->from);
        if (r >= 0 && m->adapter)
                r = format_line(&b, "ADAPTER", NULL, m->adapter_path ?: m->adapter);
        if (r >= 0 && m->template_)
                r = format_line(&b, "TEMPLATE", NULL, m->template_);
        if (r >= 0 && m->system)
                r = format_line(&b, "SYSTEM", NULL, m->system);
        for (size_t i = 0; r >= 0 && i < m->params.n; i++) {
                const ParamValue *v = &m->params.items[i];
                r = buf_printf(&b, "PARAMETER %s ", v->info->name);
                if (r >= 0)
                        r = param_value_format(v, &b);
                if (r >= 0)
                        r = buf_append_str(&b, "\n");
        }
        for (size_t i = 0; r >= 0 && i < m->n_messages; i++)
                r = format_line(&b, "MESSAGE", role_names[m->messages[i].role], m->messages[i].content);
        for (char **l = m->licenses; r >= 0 && l && *l; l++)
                r = format_line(&b, "LICENSE", NULL, *l);
        if (r >= 0 && m->requires)
                r = format_line(&b, "REQUIRES", NULL, m->requires);
        if (r < 0) {
                buf_free(&b);
                return r;
        }
        char *s = buf_steal_str(&b);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

Modelfile *modelfile_free(Modelfile *m) {
        if (!m)
                return NULL;
        free(m->from);
        free(m->from_path);
        free(m->adapter);
        free(m->adapter_path);
        free(m->template_);
        free(m->system);
        free(m->requires);
        strv_free(m->licenses);
        for (size_t i = 0; i < m->n_messages; i++)
                free(m->messages[i].content);
        free(m->messages);
        param_set_done(&m->params);
        strv_free(m->warnings);
        free(m);
        return NULL;
}
