/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * client: qctl, the command-line client, and what it parses before anything reaches the daemon: model
 * parameters (the table that Modelfile PARAMETER lines and `qctl run -o NAME=VALUE` share) and Modelfiles.
 * Needs only common/. Single-threaded: nothing here may be called from two threads at once.
 */

#include <signal.h>

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

/* "2 weeks ago" for a delta <= 0, "4 minutes from now" for a positive one. Returns buf. */
char *format_human_time(char *buf, size_t size, int64_t delta_ns);

/* The display width of UTF-8 text in terminal columns (wide characters count 2, combining ones 0). */
size_t utf8_width(const char *s, size_t n);

/* What a finished generation reports; a count or duration of 0 was not measured, but for the load. */
typedef struct GenerateStats {
        int64_t total_ns, load_ns, prompt_eval_ns, eval_ns;
        int64_t prompt_eval_count, eval_count;
        bool has_load; /* the daemon measured load_ns: 0 means the model was loaded already */
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

/* ---- qctl's command line: verbs, their options and exit codes (cli.c) ---- */

typedef enum VerbId {
        VERB_RUN,
        VERB_PULL,
        VERB_PUSH,
        VERB_CREATE,
        VERB_LIST,
        VERB_PS,
        VERB_SHOW,
        VERB_CP,
        VERB_RM,
        VERB_STOP,
        VERB_QUANTIZE,
        VERB_EVAL,
        VERB_EXPORT,
        VERB_IMPORT,
        VERB_VERSION,
        _VERB_MAX,
        _VERB_INVALID = -EINVAL,
} VerbId;

typedef enum ShowWhat {
        SHOW_INFO, /* the summary block, as `ollama show` prints it */
        SHOW_MODELFILE,
        SHOW_PARAMETERS,
        SHOW_TEMPLATE,
        SHOW_SYSTEM,
        SHOW_LICENSE,
        _SHOW_WHAT_MAX,
        _SHOW_WHAT_INVALID = -EINVAL,
} ShowWhat;

/* Exit codes, as qctl(1) documents them. */
enum {
        QCTL_EXIT_OK = 0,
        QCTL_EXIT_FAILURE = 1,     /* anything not listed below */
        QCTL_EXIT_USAGE = 2,       /* bad option, argument or value */
        QCTL_EXIT_NO_DAEMON = 3,   /* quantd is not running or cannot be reached */
        QCTL_EXIT_NOT_FOUND = 4,   /* no such model */
        QCTL_EXIT_UNSUPPORTED = 5, /* the daemon cannot do this (yet) */
        QCTL_EXIT_BAD_INPUT = 6,   /* a Modelfile or model file that does not parse */
        QCTL_EXIT_INTERRUPTED = 130, /* Ctrl+C, as shells count SIGINT */
};

typedef struct Command {
        VerbId verb;
        bool help;   /* --help: print the verb's help, do nothing else */
        char **args; /* positional arguments, NULL-terminated (never NULL after a successful parse) */
        size_t n_args;

        bool verbose;      /* run --verbose, show -v */
        bool json;         /* --json for list, ps, show */
        bool insecure;     /* pull, push: plain HTTP */
        bool nowordwrap;   /* run */
        char *format;      /* run --format: "json" */
        bool has_keepalive;
        int64_t keepalive_ns; /* run --keepalive, negative: forever */
        ParamSet params;   /* run -o NAME=VALUE */
        char *file;        /* create -f, default "Modelfile" */
        char *quantize;    /* create -q */
        ShowWhat show;

        bool force;            /* quantize, export: replace the output file */
        bool pure;             /* quantize --pure */
        bool leave_output;     /* quantize --leave-output-tensor */
        bool allow_requantize; /* quantize --allow-requantize */
        char **tensor_types;   /* quantize --tensor-type PATTERN=TYPE, NULL-terminated, or NULL */
        size_t n_tensor_types;
        char *base;      /* eval --base MODEL */
        uint32_t n_ctx;  /* eval -c, 0: the daemon's default (512) */
        uint32_t chunks; /* eval --chunks, 0: all */
} Command;

const char *verb_to_string(VerbId v);
/* Knows the aliases ("ls" for list). */
VerbId verb_from_string(const char *s);

/*
 * Parses argv after the global options: argv[0] is the verb. On a usage error returns -EINVAL with a sentence
 * in e that names the problem and the verb's --help; an unknown verb gives -ENOENT.
 */
int command_parse(Command *c, int argc, char **argv, QdError *e);
void command_done(Command *c);

/* Appends the help of one verb (synopsis, description, options), as `qctl VERB --help` prints it. */
int verb_help(VerbId v, Buf *out);

/* Appends the list of verbs with one line each, for `qctl --help`. */
int verbs_summary(Buf *out);

/* The exit code for a negative errno from the daemon or the system. */
int exit_code_from_errno(int r);

/*
 * The prompt of `qctl run MODEL [PROMPT...]`: the arguments joined by spaces, then piped input (stdin_text,
 * may be NULL) after a blank line. Trailing newlines of the piped text are dropped. Returns NULL in *ret
 * when there is neither.
 */
int build_prompt(char *const *words, const char *stdin_text, char **ret);

/* ---- interactive chat: commands and multi-line input (chat.c) ---- */

typedef enum ChatCommandType {
        CHAT_MESSAGE,        /* not a command: text to send */
        CHAT_SET_PARAMETER,  /* arg, arg2: name, value; arg2 NULL lists the parameters */
        CHAT_SET_SYSTEM,     /* arg: the system message */
        CHAT_SET_VERBOSE,
        CHAT_SET_QUIET,
        CHAT_SET_FORMAT_JSON,
        CHAT_SET_NOFORMAT,
        CHAT_SET_WORDWRAP,
        CHAT_SET_NOWORDWRAP,
        CHAT_SHOW,           /* show: what */
        CHAT_LOAD,           /* arg: model */
        CHAT_SAVE,           /* arg: model */
        CHAT_CLEAR,
        CHAT_BYE,
        CHAT_HELP,           /* arg: topic ("set", "show", "shortcuts") or NULL */
        _CHAT_COMMAND_TYPE_MAX,
        _CHAT_COMMAND_TYPE_INVALID = -EINVAL,
} ChatCommandType;

typedef struct ChatCommand {
        ChatCommandType type;
        ShowWhat show;
        char *arg, *arg2;
} ChatCommand;

/*
 * Parses one complete input of the chat. Text that does not start with '/' is a message. A bad command
 * gives -EINVAL and a sentence in e that says what /help shows.
 */
int chat_command_parse(const char *input, ChatCommand *ret, QdError *e);
void chat_command_done(ChatCommand *c);

/*
 * Collects lines into one input: a line starting with """ opens a block that ends at a line ending with """.
 * chat_input_feed() returns 1 with the text in *ret when the input is complete, 0 when more lines are needed.
 */
typedef struct ChatInput {
        Buf text;
        size_t n_lines; /* lines in text so far */
        bool in_block;
} ChatInput;

int chat_input_feed(ChatInput *in, const char *line, char **ret);
/* True while inside a """ block (the prompt shows "..." then). */
bool chat_input_pending(const ChatInput *in);
void chat_input_done(ChatInput *in);

/* ---- talking to the daemon (conn.c) ---- */

/*
 * Connects to the daemon's socket at path (NULL: client_socket_path()) and says Hello. When nothing listens
 * there returns -ECONNREFUSED with "quantd is not running (no socket at PATH): start it with …" in e; other
 * failures to reach it also return -ECONNREFUSED, each with its own sentence.
 */
int conn_open(const char *path, ProtoClient **ret, QdError *e);

typedef struct CallHooks {
        /* Each notification of the request; a negative return aborts the call with that error. */
        int (*on_event)(const ProtoMessage *m, void *userdata);
        /* Called every tick_ms while waiting (spinners, progress); a negative return aborts the call. */
        int (*on_tick)(void *userdata);
        unsigned tick_ms; /* 0: 100 */
        /* When this becomes non-zero (SIGINT), Cancel {id} is sent once and the call waits for the daemon's
         * answer; when it reaches 2 (a second Ctrl+C) the call returns -ECANCELED at once. */
        const volatile sig_atomic_t *interrupted;
        void *userdata;
} CallHooks;

/*
 * Sends method with params (one packed msgpack map, NULL for {}) and the descriptors, then waits for the
 * response, passing notifications and ticks to hooks (may be NULL). Returns 0 with the response in *ret (may
 * be NULL; valid until the next read on c), -ECANCELED when interrupted, or -errno with a sentence in e.
 */
int conn_call(ProtoClient *c, const char *method, const void *params, size_t params_size, const int *fds,
              size_t n_fds, const CallHooks *hooks, ProtoMessage *ret, QdError *e);

/* ---- msgpack results (result.c) ---- */

/* Readers for result maps; include <msgpack.h> to look inside msgpack_object yourself. */

/* The string under key of map o as a NUL-terminated copy, or NULL when absent or not a string. */
char *result_strdup(const msgpack_object *o, const char *key);
/* The number under key (integer or float), or def. */
int64_t result_int(const msgpack_object *o, const char *key, int64_t def);
double result_double(const msgpack_object *o, const char *key, double def);
bool result_bool(const msgpack_object *o, const char *key, bool def);
/* The array or map under key, or NULL. */
const msgpack_object *result_array(const msgpack_object *o, const char *key);
const msgpack_object *result_map(const msgpack_object *o, const char *key);

/* o as JSON, indented by two spaces as `--json` prints it; byte strings become strings when valid UTF-8. */
int result_to_json(const msgpack_object *o, char **ret);

/* ---- progress display (progress.c) ---- */

typedef struct Progress Progress;

/*
 * On a terminal (tty) the display keeps one line per layer and redraws them in place, at most ten times a
 * second; otherwise it prints a plain line when a step starts and when a layer finishes. width: the terminal's
 * columns.
 */
int progress_new(Progress **ret, FILE *f, bool tty, unsigned width);
/*
 * Reports a step: status says what happens ("pulling manifest", "pulling sha256:8eeb…"), key names a layer
 * (a digest; NULL for a step without bytes), total 0 when its size is unknown. now is now_ns().
 */
int progress_update(Progress *p, const char *status, const char *key, uint64_t completed, uint64_t total,
                    uint64_t now);
/* Draws the final state and leaves the cursor on a new line. */
int progress_finish(Progress *p);
Progress *progress_free(Progress *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(Progress *, progress_free);

/* A count as Ollama prints parameter counts: "135M", "134.52M", "3.2B", "8B", "512K". Returns buf. */
char *format_count(char *buf, size_t size, uint64_t n);

/* ---- the verbs (verbs.c): what qctl does once its command line is parsed ---- */

typedef struct Qctl {
        const char *socket;            /* NULL: client_socket_path() */
        ProtoClient *conn;             /* opened on first use */
        FILE *out, *err;               /* stdout and stderr, or memory streams in tests */
        int in_fd;                     /* stdin, for piped prompts and the chat */
        bool in_tty, out_tty, err_tty;
        unsigned width;                /* columns of the terminal on out (0: not a terminal) */
        volatile sig_atomic_t *interrupted; /* counts SIGINTs */
} Qctl;

/*
 * Runs a parsed command. Returns 0, or -errno with one sentence in e for the user (exit_code_from_errno()
 * gives the exit status).
 */
int qctl_run_command(Qctl *q, Command *c, QdError *e);
void qctl_done(Qctl *q);
