/* SPDX-License-Identifier: MIT */
/*
 * Modelfile TEMPLATEs: the part of Go's text/template language that Ollama's templates use, parsed once into
 * a tree and rendered natively for each chat.
 *
 * DESIGN
 * Parsing follows text/template's structure: text and {{ actions }}; an action is a keyword (if, else,
 * range, with, end) or a pipeline of commands joined by '|', each command a function with arguments or a
 * single operand; the value of one command is the last argument of the next. Blocks nest, with "else if" as
 * a nested if sharing the outer {{ end }}. As in Go, undefined variables and functions are parse errors, and
 * {{- / -}} trim the whitespace next to the action. Nodes are numbered in document order, which is what the
 * legacy chat rendering needs: Ollama renders the last turn of an old-style template
 * (.System/.Prompt/.Response, no .Messages) only up to its first {{ .Response }} action, dropping every text
 * or action after it, so that the output ends where the model's reply starts.
 *
 * Values are nil, bool, int, string, a message list, a message, or the root data. Everything a parse or a
 * render allocates comes from an arena freed at once, so error paths have nothing to unwind.
 */

#include <inttypes.h>

#include "engine.h"

/* ---- arena ---- */

typedef struct ArenaBlock {
        struct ArenaBlock *next;
        size_t used, size;
        max_align_t data[];
} ArenaBlock;

typedef struct Arena {
        ArenaBlock *head;
} Arena;

static void *arena_alloc(Arena *a, size_t n) {
        n = ALIGN_TO(n ? n : 1, sizeof(max_align_t));
        if (!a->head || a->head->size - a->head->used < n) {
                size_t size = MAX(n, (size_t)8192);
                ArenaBlock *b = malloc(sizeof(ArenaBlock) + size);
                if (!b)
                        return NULL;
                b->next = a->head;
                b->used = 0;
                b->size = size;
                a->head = b;
        }
        void *p = (uint8_t *)a->head->data + a->head->used;
        a->head->used += n;
        memset(p, 0, n);
        return p;
}

static char *arena_strndup(Arena *a, const char *s, size_t n) {
        char *p = arena_alloc(a, n + 1);
        if (!p)
                return NULL;
        memcpy(p, s, n);
        p[n] = 0;
        return p;
}

static void arena_free(Arena *a) {
        while (a->head) {
                ArenaBlock *next = a->head->next;
                free(a->head);
                a->head = next;
        }
}

/* ---- the tree ---- */

typedef enum Func {
        FUNC_AND,
        FUNC_OR,
        FUNC_NOT,
        FUNC_EQ,
        FUNC_NE,
        FUNC_LT,
        FUNC_LE,
        FUNC_GT,
        FUNC_GE,
        FUNC_LEN,
        FUNC_INDEX,
        FUNC_SLICE,
        FUNC_PRINT,
        FUNC_PRINTF,
        FUNC_JSON,
        _FUNC_MAX,
        _FUNC_INVALID = -EINVAL,
} Func;

static const char *const func_names[_FUNC_MAX] = {
        [FUNC_AND] = "and",     [FUNC_OR] = "or",         [FUNC_NOT] = "not",     [FUNC_EQ] = "eq",
        [FUNC_NE] = "ne",       [FUNC_LT] = "lt",         [FUNC_LE] = "le",       [FUNC_GT] = "gt",
        [FUNC_GE] = "ge",       [FUNC_LEN] = "len",       [FUNC_INDEX] = "index", [FUNC_SLICE] = "slice",
        [FUNC_PRINT] = "print", [FUNC_PRINTF] = "printf", [FUNC_JSON] = "json",
};

typedef enum ArgKind {
        ARG_DOT, /* "." with an optional field chain: .Messages, .Role */
        ARG_VAR, /* $ or $name, with an optional field chain */
        ARG_STRING,
        ARG_NUMBER,
        ARG_BOOL,
        ARG_NIL,
        ARG_FUNC,
        ARG_PIPE, /* ( pipeline ), with an optional field chain */
} ArgKind;

typedef struct Pipe Pipe;

typedef struct Arg {
        ArgKind kind;
        struct Arg *next;
        const char *name;   /* ARG_VAR */
        Func func;          /* ARG_FUNC */
        const char **chain; /* (n_chain) field names */
        size_t n_chain;
        const char *str; /* ARG_STRING, decoded */
        size_t len;
        int64_t num;
        bool b;
        Pipe *pipe;
} Arg;

typedef struct Cmd {
        Arg *args;
        struct Cmd *next;
} Cmd;

struct Pipe {
        const char *vars[2]; /* declared or assigned variables, "$x" */
        size_t n_vars;
        bool assign; /* '=' rather than ':=' */
        Cmd *cmds;
        unsigned line;
};

typedef enum NodeKind {
        NODE_TEXT,
        NODE_ACTION,
        NODE_IF,
        NODE_RANGE,
        NODE_WITH,
} NodeKind;

typedef struct Node {
        NodeKind kind;
        struct Node *next;
        unsigned seq; /* document order */
        unsigned line;
        const char *text; /* NODE_TEXT */
        size_t len;
        Pipe *pipe;
        struct Node *list, *else_list;
} Node;

struct EngineTemplate {
        Arena arena;
        Node *root;
        unsigned cut_seq;   /* the first {{ .Response }} action, 0 when there is none */
        bool uses_messages; /* .Messages appears: Ollama then renders the whole chat at once */
};

/* ---- lexing an action ---- */

typedef enum TokType {
        TOK_EOF,
        TOK_IDENT,
        TOK_FIELD, /* "." or ".A.B" */
        TOK_VAR,   /* "$", "$x", "$x.A" */
        TOK_STRING,
        TOK_NUMBER,
        TOK_LPAREN,
        TOK_RPAREN,
        TOK_PIPE,
        TOK_DECLARE,
        TOK_ASSIGN,
        TOK_COMMA,
        TOK_ERROR,
} TokType;

typedef struct Tok {
        TokType type;
        const char *start;
        size_t len;
        bool spaced; /* whitespace came before it */
} Tok;

typedef struct Parser {
        Arena *arena;
        QdError *err;
        unsigned line; /* of the action being parsed */
        unsigned seq;
        const char *p, *end;   /* the action's content being lexed */
        Tok tok;               /* the current token */
        const char *vars[128]; /* variables in scope, innermost last */
        size_t n_vars;
        bool uses_messages;
} Parser;

static int parse_error(Parser *ps, const char *fmt, ...) _printf_(2, 3);
static int parse_error(Parser *ps, const char *fmt, ...) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        return qd_error_set(ps->err, EINVAL, "Template line %u: %s.", ps->line, msg);
}

static bool is_ident_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static bool is_space(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void next_tok(Parser *ps) {
        const char *p = ps->p;
        Tok t = {};

        while (p < ps->end && is_space(*p))
                p++;
        t.spaced = p != ps->p;
        t.start = p;
        if (p >= ps->end)
                t.type = TOK_EOF;
        else if (*p == '(' || *p == ')' || *p == '|' || *p == ',') {
                t.type = *p == '(' ? TOK_LPAREN : *p == ')' ? TOK_RPAREN : *p == '|' ? TOK_PIPE : TOK_COMMA;
                p++;
        } else if (*p == ':' && p + 1 < ps->end && p[1] == '=') {
                t.type = TOK_DECLARE;
                p += 2;
        } else if (*p == '=') {
                t.type = TOK_ASSIGN;
                p++;
        } else if (*p == '"') {
                t.type = TOK_ERROR;
                for (p++; p < ps->end; p++)
                        if (*p == '\\' && p + 1 < ps->end)
                                p++;
                        else if (*p == '"') {
                                t.type = TOK_STRING;
                                p++;
                                break;
                        }
        } else if (*p == '`') {
                const char *q = memchr(p + 1, '`', (size_t)(ps->end - p - 1));
                t.type = q ? TOK_STRING : TOK_ERROR;
                p = q ? q + 1 : ps->end;
        } else if (*p == '.' || *p == '$') {
                t.type = *p == '.' ? TOK_FIELD : TOK_VAR;
                /* $name or ., then any number of .Name */
                p++;
                while (p < ps->end && is_ident_char(*p))
                        p++;
                while (p + 1 < ps->end && *p == '.' && is_ident_char(p[1]))
                        for (p++; p < ps->end && is_ident_char(*p); p++)
                                ;
        } else if ((*p >= '0' && *p <= '9') ||
                   (*p == '-' && p + 1 < ps->end && p[1] >= '0' && p[1] <= '9')) {
                t.type = TOK_NUMBER;
                for (p++; p < ps->end && is_ident_char(*p); p++)
                        ;
        } else if (is_ident_char(*p)) {
                t.type = TOK_IDENT;
                while (p < ps->end && is_ident_char(*p))
                        p++;
        } else {
                t.type = TOK_ERROR;
                p++;
        }
        t.len = (size_t)(p - t.start);
        ps->p = p;
        ps->tok = t;
}

static bool tok_is(const Tok *t, const char *word) {
        return t->type == TOK_IDENT && t->len == strlen(word) && memcmp(t->start, word, t->len) == 0;
}

/* Splits ".A.B" (after skipping skip bytes of the head) into a chain of names. */
static int make_chain(Parser *ps, const char *s, size_t len, Arg *a) {
        size_t n = 0;
        for (size_t i = 0; i < len; i++)
                n += s[i] == '.';
        if (n == 0)
                return 0;
        a->chain = arena_alloc(ps->arena, n * sizeof(char *));
        if (!a->chain)
                return -ENOMEM;
        for (size_t i = 0; i < len;) {
                size_t k = i + 1;
                while (k < len && s[k] != '.')
                        k++;
                if (k == i + 1) {
                        i = k;
                        continue; /* the bare "." */
                }
                const char *name = arena_strndup(ps->arena, s + i + 1, k - i - 1);
                if (!name)
                        return -ENOMEM;
                if (streq(name, "Messages"))
                        ps->uses_messages = true;
                a->chain[a->n_chain++] = name;
                i = k;
        }
        return 0;
}

static int decode_string(Parser *ps, const Tok *t, Arg *a) {
        char *out = arena_alloc(ps->arena, t->len);
        size_t n = 0;

        if (!out)
                return -ENOMEM;
        if (t->start[0] == '`') {
                memcpy(out, t->start + 1, t->len - 2);
                n = t->len - 2;
        } else
                for (size_t i = 1; i + 1 < t->len; i++) {
                        char c = t->start[i];
                        if (c == '\\') {
                                c = t->start[++i];
                                switch (c) {
                                case 'n':
                                        c = '\n';
                                        break;
                                case 't':
                                        c = '\t';
                                        break;
                                case 'r':
                                        c = '\r';
                                        break;
                                case '\\':
                                case '"':
                                case '\'':
                                        break;
                                default:
                                        return parse_error(
                                                ps, "the escape \\%c in a string is not supported", c);
                                }
                        }
                        out[n++] = c;
                }
        a->str = out;
        a->len = n;
        return 0;
}

static bool var_defined(const Parser *ps, const char *name, size_t len) {
        if (len == 1)
                return true; /* $ */
        for (size_t i = ps->n_vars; i > 0; i--)
                if (strlen(ps->vars[i - 1]) == len && memcmp(ps->vars[i - 1], name, len) == 0)
                        return true;
        return false;
}

static int parse_pipe(Parser *ps, bool in_parens, Pipe **ret);

static int parse_operand(Parser *ps, Arg **ret) {
        Arg *a = arena_alloc(ps->arena, sizeof(Arg));
        Tok t = ps->tok;
        int r = 0;

        if (!a)
                return -ENOMEM;
        switch (t.type) {
        case TOK_FIELD:
                a->kind = ARG_DOT;
                r = make_chain(ps, t.start, t.len, a);
                break;
        case TOK_VAR: {
                size_t n = 1;
                while (n < t.len && t.start[n] != '.')
                        n++;
                if (!var_defined(ps, t.start, n))
                        return parse_error(ps, "undefined variable \"%.*s\"", (int)n, t.start);
                a->kind = ARG_VAR;
                a->name = arena_strndup(ps->arena, t.start, n);
                if (!a->name)
                        return -ENOMEM;
                r = make_chain(ps, t.start + n, t.len - n, a);
                break;
        }
        case TOK_STRING:
                a->kind = ARG_STRING;
                r = decode_string(ps, &t, a);
                break;
        case TOK_NUMBER: {
                _cleanup_free_ char *s = strndup(t.start, t.len);
                int64_t v;
                if (!s)
                        return -ENOMEM;
                if (safe_atoi64(s, &v) < 0)
                        return parse_error(ps, "\"%s\" is not a number this template dialect understands",
                                           s);
                a->kind = ARG_NUMBER;
                a->num = v;
                break;
        }
        case TOK_IDENT:
                if (tok_is(&t, "true") || tok_is(&t, "false")) {
                        a->kind = ARG_BOOL;
                        a->b = tok_is(&t, "true");
                } else if (tok_is(&t, "nil"))
                        a->kind = ARG_NIL;
                else {
                        size_t f;
                        for (f = 0; f < _FUNC_MAX; f++)
                                if (tok_is(&t, func_names[f]))
                                        break;
                        if (f == _FUNC_MAX)
                                return parse_error(ps, "function \"%.*s\" not defined", (int)t.len, t.start);
                        a->kind = ARG_FUNC;
                        a->func = (Func)f;
                }
                break;
        case TOK_LPAREN:
                next_tok(ps);
                a->kind = ARG_PIPE;
                r = parse_pipe(ps, true, &a->pipe);
                if (r < 0)
                        return r;
                /* A field chain right after the parenthesis applies to its value: (index .Messages 0).Role
                 */
                if (ps->p < ps->end && *ps->p == '.') {
                        next_tok(ps);
                        r = make_chain(ps, ps->tok.start, ps->tok.len, a);
                }
                break;
        case TOK_ERROR:
                return parse_error(ps, "unexpected \"%.*s\" (an unterminated string?)", (int)MIN(t.len, 20u),
                                   t.start);
        case TOK_EOF:
        case TOK_RPAREN:
        case TOK_PIPE:
        case TOK_DECLARE:
        case TOK_ASSIGN:
        case TOK_COMMA:
                return parse_error(ps, "unexpected \"%.*s\" in an action", (int)t.len, t.start);
        }
        if (r < 0)
                return r;
        next_tok(ps);
        *ret = a;
        return 0;
}

static int parse_cmd(Parser *ps, Cmd **ret) {
        Cmd *c = arena_alloc(ps->arena, sizeof(Cmd));
        Arg **tail;
        int r;

        if (!c)
                return -ENOMEM;
        tail = &c->args;
        while (ps->tok.type != TOK_EOF && ps->tok.type != TOK_PIPE && ps->tok.type != TOK_RPAREN) {
                r = parse_operand(ps, tail);
                if (r < 0)
                        return r;
                tail = &(*tail)->next;
        }
        if (!c->args)
                return parse_error(ps, "missing value for command");
        if (c->args->kind == ARG_NIL && !c->args->next)
                return parse_error(ps, "nil is not a command");
        if (c->args->kind != ARG_FUNC && c->args->next)
                return parse_error(ps, "can't give argument to non-function");
        *ret = c;
        return 0;
}

static int declare(Parser *ps, const char *name) {
        if (ps->n_vars == ELEMENTSOF(ps->vars))
                return parse_error(ps, "too many variables");
        ps->vars[ps->n_vars++] = name;
        return 0;
}

/* pipeline := [ $a [, $b] (:= | =) ] cmd ( | cmd )*. The current token is its first. */
static int parse_pipe(Parser *ps, bool in_parens, Pipe **ret) {
        Pipe *pipe = arena_alloc(ps->arena, sizeof(Pipe));
        Cmd **tail;
        int r;

        if (!pipe)
                return -ENOMEM;
        pipe->line = ps->line;

        /* A declaration: look ahead without consuming, since "$x" alone is an operand. */
        if (ps->tok.type == TOK_VAR) {
                const char *save_p = ps->p;
                Tok save = ps->tok, first = ps->tok, second = {};
                size_t n = 1;

                next_tok(ps);
                if (ps->tok.type == TOK_COMMA) {
                        next_tok(ps);
                        second = ps->tok;
                        n = 2;
                        next_tok(ps);
                }
                if ((ps->tok.type == TOK_DECLARE || ps->tok.type == TOK_ASSIGN) && first.len > 1 &&
                    !memchr(first.start, '.', first.len) && (n == 1 || second.type == TOK_VAR)) {
                        pipe->assign = ps->tok.type == TOK_ASSIGN;
                        pipe->n_vars = n;
                        pipe->vars[0] = arena_strndup(ps->arena, first.start, first.len);
                        if (n == 2)
                                pipe->vars[1] = arena_strndup(ps->arena, second.start, second.len);
                        if (!pipe->vars[0] || (n == 2 && !pipe->vars[1]))
                                return -ENOMEM;
                        for (size_t i = 0; i < n && pipe->assign; i++)
                                if (!var_defined(ps, pipe->vars[i], strlen(pipe->vars[i])))
                                        return parse_error(ps, "undefined variable \"%s\"", pipe->vars[i]);
                        next_tok(ps);
                } else {
                        ps->p = save_p;
                        ps->tok = save;
                }
        }

        tail = &pipe->cmds;
        for (;;) {
                r = parse_cmd(ps, tail);
                if (r < 0)
                        return r;
                if ((*tail)->args->kind != ARG_FUNC && tail != &pipe->cmds)
                        return parse_error(ps,
                                           "a non-function cannot take the value of the pipeline before it");
                tail = &(*tail)->next;
                if (ps->tok.type != TOK_PIPE)
                        break;
                next_tok(ps);
        }
        if (in_parens) {
                if (ps->tok.type != TOK_RPAREN)
                        return parse_error(ps, "unclosed left parenthesis");
        } else if (ps->tok.type != TOK_EOF)
                return parse_error(ps, "unexpected \"%.*s\" in an action", (int)ps->tok.len, ps->tok.start);

        /* Declared variables are visible after the declaration, to the end of the enclosing block. */
        for (size_t i = 0; i < pipe->n_vars && !pipe->assign; i++) {
                r = declare(ps, pipe->vars[i]);
                if (r < 0)
                        return r;
        }
        *ret = pipe;
        return 0;
}

/* ---- parsing text and blocks ---- */

typedef enum Term {
        TERM_EOF,
        TERM_END,
        TERM_ELSE,
        TERM_ELSE_IF, /* the rest of the action, after "else if", is left in the parser for the if's pipeline
                       */
        TERM_ELSE_WITH,
} Term;

typedef struct Source {
        const char *p, *end;
        unsigned line;
        bool trim_next; /* the last action ended with -}} */
} Source;

static unsigned count_lines(const char *p, const char *end) {
        unsigned n = 0;
        for (; p < end; p++)
                n += *p == '\n';
        return n;
}

/* Finds the "}}" that ends the action starting at p, skipping strings and comments. */
static const char *action_end(const char *p, const char *end) {
        while (p + 1 < end) {
                if (*p == '"') {
                        /* A string that does not close on its line is left for the lexer to report. */
                        const char *q = p + 1;
                        while (q < end && *q != '"' && *q != '\n')
                                q += *q == '\\' ? 2 : 1;
                        if (q < end && *q == '"')
                                p = q;
                } else if (*p == '`') {
                        const char *q = memchr(p + 1, '`', (size_t)(end - p - 1));
                        if (!q)
                                return NULL;
                        p = q;
                } else if (p[0] == '/' && p[1] == '*') {
                        const char *q = memmem(p + 2, (size_t)(end - p - 2), "*/", 2);
                        if (!q)
                                return NULL;
                        p = q + 1;
                } else if (p[0] == '}' && p[1] == '}')
                        return p;
                p++;
        }
        return NULL;
}

static Node *new_node(Parser *ps, NodeKind kind) {
        Node *n = arena_alloc(ps->arena, sizeof(Node));
        if (n) {
                n->kind = kind;
                n->seq = ++ps->seq;
                n->line = ps->line;
        }
        return n;
}

static int parse_list(Parser *ps, Source *src, Node **ret, Term *ret_term);

static const char *term_name(Term t) {
        switch (t) {
        case TERM_EOF:
                return "the end of the template";
        case TERM_END:
                return "{{ end }}";
        case TERM_ELSE:
        case TERM_ELSE_IF:
        case TERM_ELSE_WITH:
                return "{{ else }}";
        }
        return "?";
}

/* After if/range/with and its pipeline: the body, an optional else part, and the {{ end }}. */
static int parse_block(Parser *ps, Source *src, Node *n, const char *what) {
        unsigned line = n->line;
        size_t mark = ps->n_vars;
        Term term;
        int r;

        r = parse_list(ps, src, &n->list, &term);
        if (r < 0)
                return r;
        if (term == TERM_ELSE_IF || term == TERM_ELSE_WITH) {
                if (n->kind != (term == TERM_ELSE_IF ? NODE_IF : NODE_WITH)) {
                        ps->line = line;
                        return parse_error(ps, "{{ else %s }} inside {{ %s }}",
                                           term == TERM_ELSE_IF ? "if" : "with", what);
                }
                /* "else if" is an if nested in the else part, closed by the same {{ end }}. */
                Node *inner = new_node(ps, n->kind);
                if (!inner)
                        return -ENOMEM;
                r = parse_pipe(ps, false, &inner->pipe);
                if (r < 0)
                        return r;
                r = parse_block(ps, src, inner, what);
                if (r < 0)
                        return r;
                n->else_list = inner;
                term = TERM_END;
        } else if (term == TERM_ELSE) {
                ps->n_vars = mark;
                r = parse_list(ps, src, &n->else_list, &term);
                if (r < 0)
                        return r;
                if (term != TERM_END && term != TERM_EOF)
                        return parse_error(ps, "a second {{ else }} in one {{ %s }}", what);
        }
        if (term != TERM_END) {
                ps->line = line;
                return parse_error(ps, "{{ %s }} has no {{ end }}", what);
        }
        ps->n_vars = mark;
        return 0;
}

/* Whether the pipeline prints the .Response field (Ollama's cut point for the last legacy turn). */
static bool pipe_has_response(const Pipe *p) {
        for (const Cmd *c = p->cmds; c; c = c->next)
                for (const Arg *a = c->args; a; a = a->next) {
                        if (a->kind == ARG_DOT)
                                for (size_t i = 0; i < a->n_chain; i++)
                                        if (streq(a->chain[i], "Response"))
                                                return true;
                        if (a->kind == ARG_PIPE && pipe_has_response(a->pipe))
                                return true;
                }
        return false;
}

static int parse_list(Parser *ps, Source *src, Node **ret, Term *ret_term) {
        Node **tail = ret;
        int r;

        *ret = NULL;
        for (;;) {
                const char *open = memmem(src->p, (size_t)(src->end - src->p), "{{", 2);
                const char *text_end = open ? open : src->end, *text = src->p;
                bool trim_left = open && open + 3 < src->end && open[2] == '-' && is_space(open[3]);

                /* Text up to the action, trimmed as the markers on either side ask. */
                if (src->trim_next)
                        while (text < text_end && is_space(*text))
                                text++;
                const char *t_end = text_end;
                if (trim_left)
                        while (t_end > text && is_space(t_end[-1]))
                                t_end--;
                if (t_end > text) {
                        ps->line = src->line + count_lines(src->p, text);
                        Node *n = new_node(ps, NODE_TEXT);
                        if (!n)
                                return -ENOMEM;
                        n->text = text;
                        n->len = (size_t)(t_end - text);
                        *tail = n;
                        tail = &n->next;
                }
                src->line += count_lines(src->p, text_end);
                src->p = text_end;
                src->trim_next = false;
                if (!open) {
                        *ret_term = TERM_EOF;
                        return 0;
                }

                ps->line = src->line;
                const char *body = open + (trim_left ? 3 : 2);
                const char *close = action_end(body, src->end);
                if (!close)
                        return parse_error(ps, "unclosed action");
                const char *body_end = close;
                if (body_end - body >= 2 && body_end[-1] == '-' && is_space(body_end[-2])) {
                        body_end--;
                        src->trim_next = true;
                }
                src->line += count_lines(open, close);
                src->p = close + 2;

                ps->p = body;
                ps->end = body_end;
                next_tok(ps);

                /* A comment, which fills its action: {{ /-star … star-/ }}. */
                if (ps->tok.type == TOK_ERROR && ps->tok.start[0] == '/' && ps->tok.start + 1 < body_end &&
                    ps->tok.start[1] == '*') {
                        const char *c =
                                memmem(ps->tok.start + 2, (size_t)(body_end - ps->tok.start - 2), "*/", 2);
                        const char *after = c ? c + 2 : body_end;
                        while (after < body_end && is_space(*after))
                                after++;
                        if (!c || after != body_end)
                                return parse_error(ps, "a comment must fill its action");
                        continue;
                }

                if (tok_is(&ps->tok, "end") || tok_is(&ps->tok, "else")) {
                        bool is_else = tok_is(&ps->tok, "else");
                        next_tok(ps);
                        if (is_else && (tok_is(&ps->tok, "if") || tok_is(&ps->tok, "with"))) {
                                *ret_term = tok_is(&ps->tok, "if") ? TERM_ELSE_IF : TERM_ELSE_WITH;
                                next_tok(ps);
                                return 0;
                        }
                        if (ps->tok.type != TOK_EOF)
                                return parse_error(ps, "unexpected \"%.*s\" after {{ %s", (int)ps->tok.len,
                                                   ps->tok.start, is_else ? "else" : "end");
                        *ret_term = is_else ? TERM_ELSE : TERM_END;
                        return 0;
                }

                Node *n;
                const char *what = NULL;
                if (tok_is(&ps->tok, "if"))
                        what = "if";
                else if (tok_is(&ps->tok, "range"))
                        what = "range";
                else if (tok_is(&ps->tok, "with"))
                        what = "with";
                else if (tok_is(&ps->tok, "define") || tok_is(&ps->tok, "template") ||
                         tok_is(&ps->tok, "block") || tok_is(&ps->tok, "break") ||
                         tok_is(&ps->tok, "continue"))
                        return parse_error(ps, "{{ %.*s }} is not supported", (int)ps->tok.len,
                                           ps->tok.start);

                if (what) {
                        size_t mark = ps->n_vars;
                        n = new_node(ps, streq(what, "if")      ? NODE_IF
                                         : streq(what, "range") ? NODE_RANGE
                                                                : NODE_WITH);
                        if (!n)
                                return -ENOMEM;
                        next_tok(ps);
                        r = parse_pipe(ps, false, &n->pipe);
                        if (r < 0)
                                return r;
                        if (n->pipe->n_vars == 2 && n->kind != NODE_RANGE)
                                return parse_error(ps, "only {{ range }} can declare two variables");
                        r = parse_block(ps, src, n, what);
                        if (r < 0)
                                return r;
                        ps->n_vars = mark;
                } else {
                        n = new_node(ps, NODE_ACTION);
                        if (!n)
                                return -ENOMEM;
                        r = parse_pipe(ps, false, &n->pipe);
                        if (r < 0)
                                return r;
                        if (n->pipe->n_vars == 2)
                                return parse_error(ps, "only {{ range }} can declare two variables");
                }
                *tail = n;
                tail = &n->next;
        }
}

static void find_cut(EngineTemplate *t, const Node *n) {
        for (; n && t->cut_seq == 0; n = n->next) {
                if (n->kind == NODE_ACTION && pipe_has_response(n->pipe)) {
                        t->cut_seq = n->seq;
                        return;
                }
                find_cut(t, n->list);
                find_cut(t, n->else_list);
        }
}

int engine_template_parse(const char *text, EngineTemplate **ret, QdError *err) {
        _cleanup_(engine_template_freep) EngineTemplate *t = NULL;
        Parser ps = {.err = err, .line = 1};
        Source src = {.p = text, .end = text + strlen(text), .line = 1};
        Term term;
        int r;

        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        ps.arena = &t->arena;
        /* The tree points into the text, so it gets a copy of its own. */
        src.p = arena_strndup(&t->arena, text, strlen(text));
        if (!src.p)
                return -ENOMEM;
        src.end = src.p + strlen(text);

        r = parse_list(&ps, &src, &t->root, &term);
        if (r < 0)
                return r;
        if (term != TERM_EOF)
                return parse_error(&ps, "%s without {{ if }}, {{ range }} or {{ with }}", term_name(term));
        t->uses_messages = ps.uses_messages;
        find_cut(t, t->root);
        *ret = TAKE_PTR(t);
        return 0;
}

EngineTemplate *engine_template_free(EngineTemplate *t) {
        if (!t)
                return NULL;
        arena_free(&t->arena);
        free(t);
        return NULL;
}

/* ---- values ---- */

typedef struct Root {
        const char *system, *prompt, *response;
        const EngineChatMessage *messages;
        size_t n_messages;
        bool legacy; /* the per-turn form: no keys beyond System, Prompt, Response */
} Root;

typedef enum ValueKind {
        VAL_NIL,
        VAL_BOOL,
        VAL_INT,
        VAL_STRING,
        VAL_MESSAGES,
        VAL_MESSAGE,
        VAL_ROOT,
} ValueKind;

typedef struct Value {
        ValueKind kind;
        bool b;
        int64_t i;
        const char *s; /* VAL_STRING: s[0..len) */
        size_t len;
        const EngineChatMessage *msgs; /* VAL_MESSAGES: (len); VAL_MESSAGE: one */
        const Root *root;
} Value;

typedef struct Var {
        const char *name;
        Value value;
} Var;

typedef struct Render {
        const EngineTemplate *t;
        Arena arena; /* temporaries: strings made by functions */
        Buf *out;
        QdError *err;
        unsigned line;
        unsigned cut_seq; /* skip nodes after it; 0 = render everything */
        Var vars[128];
        size_t n_vars;
} Render;

static int render_error(Render *rd, const char *fmt, ...) _printf_(2, 3);
static int render_error(Render *rd, const char *fmt, ...) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        return qd_error_set(rd->err, EINVAL, "Template line %u: %s.", rd->line, msg);
}

static Value str_value(const char *s) {
        return (Value){.kind = VAL_STRING, .s = s ? s : "", .len = s ? strlen(s) : 0};
}

static const char *kind_name(ValueKind k) {
        switch (k) {
        case VAL_NIL:
                return "nil";
        case VAL_BOOL:
                return "bool";
        case VAL_INT:
                return "int";
        case VAL_STRING:
                return "string";
        case VAL_MESSAGES:
                return "list of messages";
        case VAL_MESSAGE:
                return "message";
        case VAL_ROOT:
                return "template data";
        }
        return "?";
}

static bool truth(const Value *v) {
        switch (v->kind) {
        case VAL_NIL:
                return false;
        case VAL_BOOL:
                return v->b;
        case VAL_INT:
                return v->i != 0;
        case VAL_STRING:
        case VAL_MESSAGES:
                return v->len > 0;
        case VAL_MESSAGE:
        case VAL_ROOT:
                return true;
        }
        return false;
}

static int field(Render *rd, const Value *v, const char *name, Value *ret) {
        const Root *root;

        switch (v->kind) {
        case VAL_ROOT:
                /* The data is a map in Ollama, so a key it does not have is nil rather than an error. The
                 * older per-turn form only ever had System, Prompt and Response. */
                root = v->root; /* ret may be v */
                *ret = (Value){.kind = VAL_NIL};
                if (streq(name, "System"))
                        *ret = str_value(root->system);
                else if (streq(name, "Prompt"))
                        *ret = str_value(root->prompt);
                else if (streq(name, "Response"))
                        *ret = str_value(root->response);
                else if (root->legacy)
                        return 0;
                else if (streq(name, "Messages"))
                        *ret = (Value){
                                .kind = VAL_MESSAGES, .msgs = root->messages, .len = root->n_messages};
                else if (streq(name, "Suffix") || streq(name, "ThinkLevel"))
                        *ret = str_value("");
                else if (streq(name, "Think") || streq(name, "IsThinkSet"))
                        *ret = (Value){.kind = VAL_BOOL};
                return 0;
        case VAL_MESSAGE:
                if (streq(name, "Role"))
                        *ret = str_value(v->msgs->role);
                else if (streq(name, "Content"))
                        *ret = str_value(v->msgs->content);
                else if (streq(name, "Thinking") || streq(name, "ToolName"))
                        *ret = str_value("");
                else if (streq(name, "ToolCalls") || streq(name, "Images"))
                        *ret = (Value){.kind = VAL_NIL};
                else
                        return render_error(rd, "can't evaluate field %s of a message", name);
                return 0;
        case VAL_NIL:
                /* Ollama's data is a map, where a missing key is nil and so are its fields. */
                *ret = *v;
                return 0;
        case VAL_BOOL:
        case VAL_INT:
        case VAL_STRING:
        case VAL_MESSAGES:
                break;
        }
        return render_error(rd, "can't evaluate field %s in type %s", name, kind_name(v->kind));
}

static int chain(Render *rd, Value v, const char *const *names, size_t n, Value *ret) {
        for (size_t i = 0; i < n; i++) {
                int r = field(rd, &v, names[i], &v);
                if (r < 0)
                        return r;
        }
        *ret = v;
        return 0;
}

/* Appends v as text, as Go's fmt prints it. */
static int print_value(Render *rd, const Value *v, Buf *out) {
        switch (v->kind) {
        case VAL_NIL:
                return buf_append_str(out, "<no value>");
        case VAL_BOOL:
                return buf_append_str(out, v->b ? "true" : "false");
        case VAL_INT:
                return buf_printf(out, "%" PRIi64, v->i);
        case VAL_STRING:
                return buf_append(out, v->s, v->len);
        case VAL_MESSAGES:
        case VAL_MESSAGE:
        case VAL_ROOT:
                break;
        }
        return render_error(rd, "can't print a %s", kind_name(v->kind));
}

static int json_string(Buf *out, const char *s, size_t len) {
        int r = buf_append(out, "\"", 1);
        for (size_t i = 0; i < len && r >= 0; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c == '"' || c == '\\')
                        r = buf_printf(out, "\\%c", c);
                else if (c == '\n')
                        r = buf_append_str(out, "\\n");
                else if (c == '\t')
                        r = buf_append_str(out, "\\t");
                else if (c == '\r')
                        r = buf_append_str(out, "\\r");
                else if (c < 0x20 || c == '<' || c == '>' || c == '&')
                        r = buf_printf(out, "\\u%04x", c); /* as Go's encoding/json escapes HTML */
                else
                        r = buf_append(out, &s[i], 1);
        }
        return r < 0 ? r : buf_append(out, "\"", 1);
}

static int json_value(Render *rd, const Value *v, Buf *out) {
        int r = 0;
        switch (v->kind) {
        case VAL_NIL:
                return buf_append_str(out, "null");
        case VAL_BOOL:
        case VAL_INT:
                return print_value(rd, v, out);
        case VAL_STRING:
                return json_string(out, v->s, v->len);
        case VAL_MESSAGE:
                r = buf_append_str(out, "{\"role\":");
                if (r >= 0)
                        r = json_string(out, v->msgs->role, strlen(v->msgs->role));
                if (r >= 0)
                        r = buf_append_str(out, ",\"content\":");
                if (r >= 0)
                        r = json_string(out, v->msgs->content, strlen(v->msgs->content));
                return r < 0 ? r : buf_append_str(out, "}");
        case VAL_MESSAGES:
                r = buf_append_str(out, "[");
                for (size_t i = 0; i < v->len && r >= 0; i++) {
                        Value m = {.kind = VAL_MESSAGE, .msgs = &v->msgs[i]};
                        if (i > 0)
                                r = buf_append_str(out, ",");
                        if (r >= 0)
                                r = json_value(rd, &m, out);
                }
                return r < 0 ? r : buf_append_str(out, "]");
        case VAL_ROOT:
                break;
        }
        return render_error(rd, "can't encode a %s as JSON", kind_name(v->kind));
}

/* Moves b's text into the render arena as a string value. */
static int buf_to_value(Render *rd, Buf *b, Value *ret) {
        char *s = arena_strndup(&rd->arena, b->len ? (const char *)b->data : "", b->len);
        size_t len = b->len;
        buf_free(b);
        if (!s)
                return -ENOMEM;
        *ret = (Value){.kind = VAL_STRING, .s = s, .len = len};
        return 0;
}

static int compare(Render *rd, const char *fn, const Value *a, const Value *b, int *ret) {
        if (a->kind != b->kind)
                return render_error(rd, "%s: incompatible types for comparison (%s and %s)", fn,
                                    kind_name(a->kind), kind_name(b->kind));
        switch (a->kind) {
        case VAL_NIL:
                *ret = 0;
                return 0;
        case VAL_BOOL:
                *ret = a->b - b->b;
                return 0;
        case VAL_INT:
                *ret = a->i < b->i ? -1 : a->i > b->i;
                return 0;
        case VAL_STRING: {
                int c = memcmp(a->s, b->s, MIN(a->len, b->len));
                *ret = c != 0 ? c : a->len < b->len ? -1 : a->len > b->len;
                return 0;
        }
        case VAL_MESSAGES:
        case VAL_MESSAGE:
        case VAL_ROOT:
                break;
        }
        return render_error(rd, "%s: a %s cannot be compared", fn, kind_name(a->kind));
}

static int eval_pipe(Render *rd, const Pipe *p, const Value *dot, Value *ret);

static int eval_arg(Render *rd, const Arg *a, const Value *dot, Value *ret) {
        Value v = {};
        int r;

        switch (a->kind) {
        case ARG_DOT:
                v = *dot;
                break;
        case ARG_VAR:
                for (size_t i = rd->n_vars; i > 0; i--)
                        if (streq(rd->vars[i - 1].name, a->name)) {
                                v = rd->vars[i - 1].value;
                                break;
                        }
                break;
        case ARG_STRING:
                v = (Value){.kind = VAL_STRING, .s = a->str, .len = a->len};
                break;
        case ARG_NUMBER:
                v = (Value){.kind = VAL_INT, .i = a->num};
                break;
        case ARG_BOOL:
                v = (Value){.kind = VAL_BOOL, .b = a->b};
                break;
        case ARG_NIL:
                break;
        case ARG_PIPE:
                r = eval_pipe(rd, a->pipe, dot, &v);
                if (r < 0)
                        return r;
                break;
        case ARG_FUNC:
                return render_error(rd, "%s is a function and needs to be called", func_names[a->func]);
        }
        return chain(rd, v, a->chain, a->n_chain, ret);
}

static int to_index(Render *rd, const char *fn, const Value *v, int64_t *ret) {
        if (v->kind != VAL_INT)
                return render_error(rd, "%s: an index must be an int, not a %s", fn, kind_name(v->kind));
        *ret = v->i;
        return 0;
}

/* Calls f with the arguments after the function name, plus the previous command's value when there is one.
 */
static int call(Render *rd, Func f, const Arg *args, const Value *dot, const Value *piped, Value *ret) {
        Value v[16];
        size_t n = 0;
        const char *fn = func_names[f];
        int r, c;

        /* and/or evaluate their arguments one by one and stop at the first that decides. */
        if (f == FUNC_AND || f == FUNC_OR) {
                Value last = {};
                size_t count = 0;
                for (const Arg *a = args; a || piped; a = a ? a->next : NULL) {
                        if (a) {
                                r = eval_arg(rd, a, dot, &last);
                                if (r < 0)
                                        return r;
                        } else {
                                last = *piped;
                                piped = NULL;
                        }
                        count++;
                        if (truth(&last) == (f == FUNC_OR))
                                break;
                }
                if (count < 1)
                        return render_error(rd, "%s needs at least one argument", fn);
                *ret = last;
                return 0;
        }

        for (const Arg *a = args; a; a = a->next) {
                if (n == ELEMENTSOF(v) - 1)
                        return render_error(rd, "%s: too many arguments", fn);
                r = eval_arg(rd, a, dot, &v[n++]);
                if (r < 0)
                        return r;
        }
        if (piped)
                v[n++] = *piped;

        switch (f) {
        case FUNC_NOT:
                if (n != 1)
                        return render_error(rd, "not takes 1 argument, not %zu", n);
                *ret = (Value){.kind = VAL_BOOL, .b = !truth(&v[0])};
                return 0;
        case FUNC_EQ:
                if (n < 2)
                        return render_error(rd, "eq needs at least 2 arguments");
                *ret = (Value){.kind = VAL_BOOL};
                for (size_t i = 1; i < n && !ret->b; i++) {
                        r = compare(rd, fn, &v[0], &v[i], &c);
                        if (r < 0)
                                return r;
                        ret->b = c == 0;
                }
                return 0;
        case FUNC_NE:
        case FUNC_LT:
        case FUNC_LE:
        case FUNC_GT:
        case FUNC_GE:
                if (n != 2)
                        return render_error(rd, "%s takes 2 arguments, not %zu", fn, n);
                if (f != FUNC_NE && (v[0].kind == VAL_NIL || v[0].kind == VAL_BOOL))
                        return render_error(rd, "%s: a %s cannot be ordered", fn, kind_name(v[0].kind));
                r = compare(rd, fn, &v[0], &v[1], &c);
                if (r < 0)
                        return r;
                *ret = (Value){.kind = VAL_BOOL,
                               .b = f == FUNC_NE   ? c != 0
                                    : f == FUNC_LT ? c < 0
                                    : f == FUNC_LE ? c <= 0
                                    : f == FUNC_GT ? c > 0
                                                   : c >= 0};
                return 0;
        case FUNC_LEN:
                if (n != 1)
                        return render_error(rd, "len takes 1 argument, not %zu", n);
                if (v[0].kind != VAL_STRING && v[0].kind != VAL_MESSAGES)
                        return render_error(rd, "len of a %s", kind_name(v[0].kind));
                *ret = (Value){.kind = VAL_INT, .i = (int64_t)v[0].len};
                return 0;
        case FUNC_INDEX: {
                Value x = n > 0 ? v[0] : (Value){};
                if (n < 1)
                        return render_error(rd, "index needs an argument");
                for (size_t i = 1; i < n; i++) {
                        int64_t k = 0;
                        r = to_index(rd, fn, &v[i], &k);
                        if (r < 0)
                                return r;
                        if (x.kind != VAL_STRING && x.kind != VAL_MESSAGES)
                                return render_error(rd, "can't index a %s", kind_name(x.kind));
                        if (k < 0 || (uint64_t)k >= x.len)
                                return render_error(rd, "index out of range: %" PRIi64, k);
                        if (x.kind == VAL_STRING)
                                x = (Value){.kind = VAL_INT, .i = (uint8_t)x.s[k]};
                        else
                                x = (Value){.kind = VAL_MESSAGE, .msgs = &x.msgs[k]};
                }
                *ret = x;
                return 0;
        }
        case FUNC_SLICE: {
                int64_t from = 0, to;
                if (n < 1 || n > 3)
                        return render_error(rd, "slice takes 1 to 3 arguments, not %zu", n);
                if (v[0].kind != VAL_STRING && v[0].kind != VAL_MESSAGES)
                        return render_error(rd, "can't slice a %s", kind_name(v[0].kind));
                to = (int64_t)v[0].len;
                if (n > 1 && (r = to_index(rd, fn, &v[1], &from)) < 0)
                        return r;
                if (n > 2 && (r = to_index(rd, fn, &v[2], &to)) < 0)
                        return r;
                if (from < 0 || to < from || (uint64_t)to > v[0].len)
                        return render_error(rd, "slice: indices out of range: %" PRIi64 ", %" PRIi64, from,
                                            to);
                *ret = v[0];
                ret->len = (size_t)(to - from);
                if (v[0].kind == VAL_STRING)
                        ret->s += from;
                else
                        ret->msgs += from;
                return 0;
        }
        case FUNC_PRINT: {
                Buf b = {};
                r = 0;
                for (size_t i = 0; i < n && r >= 0; i++) {
                        /* fmt.Sprint puts a space between operands when neither is a string. */
                        if (i > 0 && v[i - 1].kind != VAL_STRING && v[i].kind != VAL_STRING)
                                r = buf_append(&b, " ", 1);
                        if (r >= 0)
                                r = print_value(rd, &v[i], &b);
                }
                if (r < 0) {
                        buf_free(&b);
                        return r;
                }
                return buf_to_value(rd, &b, ret);
        }
        case FUNC_PRINTF: {
                Buf b = {};
                size_t k = 1;
                if (n < 1 || v[0].kind != VAL_STRING)
                        return render_error(rd, "printf needs a format string");
                r = 0;
                for (size_t i = 0; i < v[0].len && r >= 0; i++) {
                        char ch = v[0].s[i];
                        if (ch != '%' || i + 1 == v[0].len) {
                                r = buf_append(&b, &ch, 1);
                                continue;
                        }
                        ch = v[0].s[++i];
                        if (ch == '%')
                                r = buf_append(&b, "%", 1);
                        else if (ch != 's' && ch != 'd' && ch != 'v' && ch != 'q')
                                r = render_error(rd, "printf: the verb %%%c is not supported", ch);
                        else if (k >= n)
                                r = buf_printf(&b, "%%!%c(MISSING)", ch);
                        else if (ch == 'q')
                                r = json_value(rd, &v[k++], &b);
                        else
                                r = print_value(rd, &v[k++], &b);
                }
                if (r < 0) {
                        buf_free(&b);
                        return r;
                }
                return buf_to_value(rd, &b, ret);
        }
        case FUNC_JSON: {
                Buf b = {};
                if (n != 1)
                        return render_error(rd, "json takes 1 argument, not %zu", n);
                r = json_value(rd, &v[0], &b);
                if (r < 0) {
                        buf_free(&b);
                        return r;
                }
                return buf_to_value(rd, &b, ret);
        }
        case FUNC_AND:
        case FUNC_OR:
        case _FUNC_MAX:
        case _FUNC_INVALID:
                break;
        }
        return -EINVAL;
}

static int set_var(Render *rd, const char *name, const Value *v, bool assign) {
        if (assign) {
                for (size_t i = rd->n_vars; i > 0; i--)
                        if (streq(rd->vars[i - 1].name, name)) {
                                rd->vars[i - 1].value = *v;
                                return 0;
                        }
        }
        if (rd->n_vars == ELEMENTSOF(rd->vars))
                return render_error(rd, "too many variables");
        rd->vars[rd->n_vars++] = (Var){.name = name, .value = *v};
        return 0;
}

static int eval_pipe(Render *rd, const Pipe *p, const Value *dot, Value *ret) {
        Value v = {};
        bool first = true;
        int r;

        rd->line = p->line;
        for (const Cmd *c = p->cmds; c; c = c->next) {
                Value prev = v;
                if (c->args->kind == ARG_FUNC)
                        r = call(rd, c->args->func, c->args->next, dot, first ? NULL : &prev, &v);
                else
                        r = eval_arg(rd, c->args, dot, &v);
                if (r < 0)
                        return r;
                first = false;
        }
        /* A single-variable declaration in the pipeline of a range is done per element, not here. */
        if (p->n_vars == 1) {
                r = set_var(rd, p->vars[0], &v, p->assign);
                if (r < 0)
                        return r;
        }
        *ret = v;
        return 0;
}

static int render_list(Render *rd, const Node *n, const Value *dot);

static int render_range(Render *rd, const Node *n, const Value *dot) {
        const Pipe *p = n->pipe;
        Pipe plain = *p;
        Value v;
        size_t mark = rd->n_vars;
        int r;

        /* The range's variables take each index and element, so the pipeline itself declares nothing. */
        plain.n_vars = 0;
        r = eval_pipe(rd, &plain, dot, &v);
        if (r < 0)
                return r;
        if (v.kind == VAL_NIL || (v.kind == VAL_MESSAGES && v.len == 0))
                return render_list(rd, n->else_list, dot);
        if (v.kind != VAL_MESSAGES)
                return render_error(rd, "range can't iterate over a %s", kind_name(v.kind));
        for (size_t i = 0; i < v.len; i++) {
                Value elem = {.kind = VAL_MESSAGE, .msgs = &v.msgs[i]},
                      index = {.kind = VAL_INT, .i = (int64_t)i};
                rd->n_vars = mark;
                if (p->n_vars == 1)
                        r = set_var(rd, p->vars[0], &elem, p->assign);
                else if (p->n_vars == 2) {
                        r = set_var(rd, p->vars[0], &index, p->assign);
                        if (r >= 0)
                                r = set_var(rd, p->vars[1], &elem, p->assign);
                } else
                        r = 0;
                if (r >= 0)
                        r = render_list(rd, n->list, &elem);
                if (r < 0)
                        return r;
        }
        rd->n_vars = mark;
        return 0;
}

static int render_list(Render *rd, const Node *n, const Value *dot) {
        int r = 0;

        for (; n && r >= 0; n = n->next) {
                size_t mark = rd->n_vars;
                Value v;

                if (rd->cut_seq && n->seq > rd->cut_seq)
                        return 0;
                switch (n->kind) {
                case NODE_TEXT:
                        r = buf_append(rd->out, n->text, n->len);
                        break;
                case NODE_ACTION:
                        r = eval_pipe(rd, n->pipe, dot, &v);
                        if (r >= 0 && n->pipe->n_vars == 0)
                                r = print_value(rd, &v, rd->out);
                        break;
                case NODE_IF:
                case NODE_WITH:
                        r = eval_pipe(rd, n->pipe, dot, &v);
                        if (r < 0)
                                break;
                        if (truth(&v))
                                r = render_list(rd, n->list, n->kind == NODE_WITH ? &v : dot);
                        else
                                r = render_list(rd, n->else_list, dot);
                        rd->n_vars = mark;
                        break;
                case NODE_RANGE:
                        r = render_range(rd, n, dot);
                        rd->n_vars = mark;
                        break;
                }
        }
        return r;
}

static int execute(const EngineTemplate *t, const Root *root, bool cut, Buf *out, QdError *err) {
        Render rd = {.t = t, .out = out, .err = err, .cut_seq = cut ? t->cut_seq : 0};
        Value dot = {.kind = VAL_ROOT, .root = root};
        int r;

        rd.vars[rd.n_vars++] = (Var){.name = "$", .value = dot};
        r = render_list(&rd, t->root, &dot);
        arena_free(&rd.arena);
        return r;
}

/* ---- chats ---- */

int engine_template_render(const EngineTemplate *t, const char *system, const EngineChatMessage *messages,
                           size_t n_messages, Buf *out, QdError *err) {
        _cleanup_free_ EngineChatMessage *msgs = NULL;
        Arena arena = {};
        Buf all_system = {};
        size_t n = 0;
        bool has_system = false;
        int r = 0;

        for (size_t i = 0; i < n_messages; i++) {
                if (!messages[i].role || !messages[i].content)
                        return qd_error_set(err, EINVAL, "Message %zu has no role or no content.", i);
                has_system = has_system || streq(messages[i].role, "system");
        }
        msgs = calloc(n_messages + 1, sizeof(EngineChatMessage));
        if (!msgs)
                return -ENOMEM;
        if (system && !has_system)
                msgs[n++] = (EngineChatMessage){.role = "system", .content = system};

        /* Consecutive messages of one role become one, their contents joined by a blank line; every system
         * message also goes into .System. */
        for (size_t i = 0; i < n_messages && r >= 0; i++) {
                if (n > 0 && streq(msgs[n - 1].role, messages[i].role)) {
                        char *joined = arena_alloc(&arena, strlen(msgs[n - 1].content) +
                                                                   strlen(messages[i].content) + 3);
                        if (!joined) {
                                r = -ENOMEM;
                                break;
                        }
                        sprintf(joined, "%s\n\n%s", msgs[n - 1].content, messages[i].content);
                        msgs[n - 1].content = joined;
                } else
                        msgs[n++] = messages[i];
        }
        for (size_t i = 0; i < n && r >= 0; i++)
                if (streq(msgs[i].role, "system"))
                        r = buf_printf(&all_system, "%s%s", all_system.len ? "\n\n" : "", msgs[i].content);
        if (r < 0)
                goto finish;

        if (t->uses_messages) {
                Root root = {.system = all_system.len ? (const char *)all_system.data : "",
                             .prompt = "",
                             .response = "",
                             .messages = msgs,
                             .n_messages = n};
                r = execute(t, &root, false, out, err);
                goto finish;
        }

        /* The older form: one rendering per turn of system, prompt and response, as Ollama collates them. */
        Root root = {.system = "", .prompt = "", .response = "", .legacy = true};
        for (size_t i = 0; i < n && r >= 0; i++) {
                const char *role = msgs[i].role;
                bool flush = (streq(role, "system") && (*root.prompt || *root.response)) ||
                             (streq(role, "user") && *root.response);
                if (flush) {
                        r = execute(t, &root, false, out, err);
                        root = (Root){.system = "", .prompt = "", .response = "", .legacy = true};
                }
                if (streq(role, "system"))
                        root.system = msgs[i].content;
                else if (streq(role, "user"))
                        root.prompt = msgs[i].content;
                else if (streq(role, "assistant"))
                        root.response = msgs[i].content;
        }
        if (r >= 0)
                r = execute(t, &root, true, out, err);
finish:
        buf_free(&all_system);
        arena_free(&arena);
        return r;
}
