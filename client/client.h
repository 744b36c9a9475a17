/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * client: qctl, the command-line client, and what it parses before anything reaches the daemon: model
 * parameters (the table that Modelfile PARAMETER lines and `qctl run -o NAME=VALUE` share) and Modelfiles.
 * Needs only common/. Single-threaded: nothing here may be called from two threads at once.
 */

#include "common.h"

/*
 * The socket qctl talks to: QUANTD_SOCKET, else the user daemon's socket if it exists, else the system
 * daemon's. Returns a string the caller frees.
 */
int client_socket_path(char **ret);

/* ---- model parameters ---- */

typedef enum ParamType {
        PARAM_INT,    /* a signed 64-bit decimal integer */
        PARAM_FLOAT,  /* a finite decimal number */
        PARAM_BOOL,   /* true/false, 1/0, t/f in any case, as Go's strconv.ParseBool reads them */
        PARAM_STRING, /* any text; the only repeatable type (stop) */
        _PARAM_TYPE_MAX,
        _PARAM_TYPE_INVALID = -EINVAL,
} ParamType;

typedef struct ParamInfo {
        const char *name;        /* lower case, as Ollama documents it */
        ParamType type;
        bool repeatable;         /* every occurrence adds a value (stop); otherwise the last one wins */
        bool deprecated;         /* accepted for old Modelfiles and dropped: Ollama no longer uses it */
        const char *description; /* one line for --help and modelfile(5) */
} ParamInfo;

typedef struct ParamValue {
        const ParamInfo *info; /* points into the static table */
        union {
                int64_t i;
                double f;
                bool b;
                char *s; /* owned */
        };
} ParamValue;

/* An ordered list of parameter values: one entry per name, except repeatable ones, which keep each value. */
typedef struct ParamSet {
        ParamValue *items; /* (n) */
        size_t n;
} ParamSet;

/* The table of every parameter, in documentation order. */
const ParamInfo *param_table(size_t *ret_n);

/* Finds a parameter by name, ignoring case. Returns NULL when there is none. */
const ParamInfo *param_lookup(const char *name);

/* "integer", "number", "boolean" or "string", for messages. */
const char *param_type_to_string(ParamType t);

/*
 * Parses text as a value of p's type into *ret (whose s the caller frees for strings). On failure returns
 * -EINVAL and a sentence in e such as "expected an integer for num_ctx, found 'abc'".
 */
int param_parse_value(const ParamInfo *p, const char *text, ParamValue *ret, QdError *e);

/*
 * Looks name up, parses text and adds the value to s: a repeatable parameter gains a value, any other
 * replaces an earlier one. -ENOENT for an unknown name, -EINVAL for a bad value, each with a sentence in e.
 */
int param_set_add(ParamSet *s, const char *name, const char *text, QdError *e);

/* Adds "NAME=VALUE" as `qctl run -o` takes it. -EINVAL when there is no '=' or no name. */
int param_set_add_assignment(ParamSet *s, const char *assignment, QdError *e);

/* Drops every value of a parameter (for /set parameter in chat). Returns the number removed. */
size_t param_set_remove(ParamSet *s, const char *name);

/* The value of a non-repeatable parameter, or NULL. */
const ParamValue *param_set_get(const ParamSet *s, const char *name);

/* Appends v's value as a Modelfile writes it: numbers in shortest round-trip form, strings quoted as needed. */
int param_value_format(const ParamValue *v, Buf *out);

/* Frees the values and empties s. */
void param_set_done(ParamSet *s);

/* ---- Modelfiles ---- */

typedef enum MessageRole {
        MESSAGE_SYSTEM,
        MESSAGE_USER,
        MESSAGE_ASSISTANT,
        _MESSAGE_ROLE_MAX,
        _MESSAGE_ROLE_INVALID = -EINVAL,
} MessageRole;

const char *message_role_to_string(MessageRole r);
/* Ignores case. */
MessageRole message_role_from_string(const char *s);

typedef struct ModelfileMessage {
        MessageRole role;
        char *content;
} ModelfileMessage;

typedef struct Modelfile {
        char *from;         /* FROM as written: a model name or a path */
        char *from_path;    /* FROM resolved against the Modelfile's folder when it names a file, else NULL */
        unsigned from_line; /* where FROM was, for later messages about it */
        char *adapter;      /* ADAPTER as written, or NULL */
        char *adapter_path; /* ADAPTER resolved like FROM */
        char *template_;    /* TEMPLATE, or NULL */
        char *system;       /* SYSTEM, or NULL */
        char *requires;     /* REQUIRES: the lowest daemon version the model needs, or NULL */
        char **licenses;    /* LICENSE texts in order, NULL-terminated, or NULL */
        ModelfileMessage *messages; /* (n_messages) MESSAGE lines in order */
        size_t n_messages;
        ParamSet params;
        char **warnings; /* NULL-terminated sentences about accepted oddities (deprecated parameters), or NULL */
} Modelfile;

/*
 * Parses a Modelfile held in memory. filename is used in messages only; dir is the folder that relative FROM
 * and ADAPTER paths are resolved against (NULL: the current directory). On a syntax error returns -EBADMSG
 * with "FILE:LINE:COLUMN: what was expected" in e; -ENOMEM when out of memory.
 */
int modelfile_parse(const char *text, size_t len, const char *filename, const char *dir, Modelfile **ret,
                    QdError *e);

/* Reads and parses the Modelfile at path, resolving relative paths against its folder. */
int modelfile_load(const char *path, Modelfile **ret, QdError *e);

/* Writes m back as Modelfile text that parses to the same values. */
int modelfile_format(const Modelfile *m, char **ret);

/* Appends s quoted for a Modelfile: bare when that reads back the same, "…" or """…""" otherwise. */
int modelfile_quote(const char *s, Buf *out);

Modelfile *modelfile_free(Modelfile *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Modelfile *, modelfile_free);

/* ---- output formatting: pure functions, so that tests can check every byte ---- */

/* A duration as Go's time.Duration prints it, which Ollama's --verbose block uses: "0s", "850ns", "1.5µs",
 * "12.345678ms", "4.709313s", "1m2.5s", "2h0m3s". Returns buf. */
char *format_go_duration(char *buf, size_t size, int64_t ns);

/* Time left, rounded to seconds: "45s", "1m31s", "2h3m" (hours drop the seconds). Returns buf. */
char *format_eta(char *buf, size_t size, double seconds);

/* A duration in words as Ollama's list and ps print them: "Less than a second", "About a minute",
 * "3 hours", "2 weeks". Returns buf. */
char *format_human_duration(char *buf, size_t size, int64_t ns);

/* "2 weeks ago" for a negative delta, "4 minutes from now" for a positive one. Returns buf. */
char *format_human_time(char *buf, size_t size, int64_t delta_ns);

/* The display width of UTF-8 text in terminal columns (wide characters count 2, combining ones 0). */
size_t utf8_width(const char *s, size_t n);

/* What a finished generation reports; a count or duration of 0 was not measured. */
typedef struct GenerateStats {
        int64_t total_ns, load_ns, prompt_eval_ns, eval_ns;
        int64_t prompt_eval_count, eval_count;
} GenerateStats;

/* Appends Ollama's --verbose statistics block ("total duration:       1.2s" …). */
int format_stats(const GenerateStats *s, Buf *out);

/* A table of left-aligned columns separated by four spaces, as `ollama list` prints them. */
typedef struct Table Table;

int table_new(Table **ret, size_t n_columns, const char *const *headers);
/* Adds a row of n_columns cells (NULL prints as empty). */
int table_add_row(Table *t, const char *const *cells);
int table_format(const Table *t, Buf *out);
Table *table_free(Table *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(Table *, table_free);

/*
 * Word wrap for streamed text: words that would cross the width move to the next line, blanks at such a
 * break are dropped, blanks after a real newline (indentation) are kept, and a word wider than a line is
 * broken. Text is held back until its word ends; flush at the end of a response. width 0 passes through.
 */
typedef struct WordWrap {
        unsigned width;
        unsigned col;        /* columns used on the current line */
        Buf word;            /* the word being collected */
        size_t word_width;
        Buf blanks;          /* blanks seen before it */
} WordWrap;

int word_wrap_feed(WordWrap *w, const char *text, size_t n, Buf *out);
int word_wrap_flush(WordWrap *w, Buf *out);
void word_wrap_done(WordWrap *w);

/*
 * One progress line fitted to width columns: "LABEL:  45% ▕████      ▏ 2.1 GB/4.7 GB  98 MB/s  26s". total 0
 * means unknown (no bar); rate < 0 or eta < 0 are left out; a finished one shows just the total.
 */
int format_progress(Buf *out, unsigned width, const char *label, uint64_t completed, uint64_t total,
                    double rate, double eta);

/* The spinner's i-th frame (a braille pattern), cycling. */
const char *spinner_frame(unsigned i);
