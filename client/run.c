/* SPDX-License-Identifier: MIT */
/*
 * `qctl run`: one prompt answered as a stream of tokens, or, on a terminal without a prompt, the interactive
 * chat with Ollama's slash commands. Tokens are word-wrapped to the terminal unless --nowordwrap or --format
 * json; a spinner turns on stderr until the first token; Ctrl+C cancels the generation (Cancel {id}) and, in
 * the chat, returns to the prompt.
 */

#include <editline/readline.h>
#include <sys/stat.h>

#include "client-internal.h"

typedef struct ChatMessage {
        char *role, *content;
} ChatMessage;

typedef struct RunState {
        Qctl *q;
        char *model;
        ParamSet params;
        char *system;
        bool json;
        bool has_keepalive;
        int64_t keepalive_ns;
        bool verbose;
        bool wordwrap;

        ChatMessage *messages; /* (n_messages) the conversation so far */
        size_t n_messages;

        /* one generation */
        WordWrap ww;
        Buf answer;
        bool got_token;
        bool spinning;
        unsigned spin;
} RunState;

static void run_state_done(RunState *s) {
        free(s->model);
        param_set_done(&s->params);
        free(s->system);
        for (size_t i = 0; i < s->n_messages; i++) {
                free(s->messages[i].role);
                free(s->messages[i].content);
        }
        free(s->messages);
        word_wrap_done(&s->ww);
        buf_free(&s->answer);
}

static int add_message(RunState *s, const char *role, const char *content) {
        ChatMessage *m = reallocarray(s->messages, s->n_messages + 1, sizeof(ChatMessage));
        if (!m)
                return -ENOMEM;
        s->messages = m;
        m[s->n_messages] = (ChatMessage){ strdup(role), strdup(content) };
        if (!m[s->n_messages].role || !m[s->n_messages].content) {
                free(m[s->n_messages].role);
                free(m[s->n_messages].content);
                return -ENOMEM;
        }
        s->n_messages++;
        return 0;
}

static void drop_last_message(RunState *s) {
        if (s->n_messages == 0)
                return;
        s->n_messages--;
        free(s->messages[s->n_messages].role);
        free(s->messages[s->n_messages].content);
}

static void clear_messages(RunState *s) {
        while (s->n_messages > 0)
                drop_last_message(s);
}

static void spinner_stop(RunState *s) {
        if (!s->spinning)
                return;
        fputs("\r\033[K", s->q->err);
        fflush(s->q->err);
        s->spinning = false;
}

static int on_tick(void *userdata) {
        RunState *s = userdata;

        if (s->got_token || !s->q->err_tty)
                return 0;
        fprintf(s->q->err, "\r%s ", spinner_frame(s->spin++));
        fflush(s->q->err);
        s->spinning = true;
        return 0;
}

static int emit(RunState *s, const char *text, size_t n) {
        Buf out = {};
        int r;

        if (n == 0)
                return 0;
        spinner_stop(s);
        s->got_token = true;
        r = buf_append(&s->answer, text, n);
        if (r < 0)
                return r;
        if (!s->wordwrap) {
                fwrite(text, 1, n, s->q->out);
                fflush(s->q->out);
                return 0;
        }
        r = word_wrap_feed(&s->ww, text, n, &out);
        if (r >= 0 && out.len > 0) {
                fwrite(out.data, 1, out.len, s->q->out);
                fflush(s->q->out);
        }
        buf_free(&out);
        return r;
}

/* The text of a token event ("text") or of a final result: Generate's "response", Chat's "message":
 * {"content"}. */
static const msgpack_object *token_text(const msgpack_object *o) {
        const msgpack_object *v = proto_map_get(o, "text");

        if (!v || v->type != MSGPACK_OBJECT_STR)
                v = proto_map_get(o, "response");
        if (!v || v->type != MSGPACK_OBJECT_STR)
                v = proto_map_get(result_map(o, "message"), "content");
        if (!v || v->type != MSGPACK_OBJECT_STR)
                v = proto_map_get(o, "content");
        return v && v->type == MSGPACK_OBJECT_STR ? v : NULL;
}

static int on_token(const ProtoMessage *m, void *userdata) {
        const msgpack_object *t = token_text(m->params);

        return t ? emit(userdata, t->via.str.ptr, t->via.str.size) : 0;
}

static int pack_keepalive(msgpack_packer *pk, const RunState *s) {
        char d[64];

        return proto_pack_kv_str(pk, "keep_alive", format_go_duration(d, sizeof(d), s->keepalive_ns));
}

/* Packs Generate's params for one prompt, or Chat's for the conversation. */
static int pack_generation(msgpack_packer *pk, const RunState *s, const char *prompt) {
        uint32_t n = 2 + (prompt && s->system) + s->json + (s->params.n > 0) + s->has_keepalive;
        int r;

        if (msgpack_pack_map(pk, n) < 0 || proto_pack_kv_str(pk, "model", s->model) < 0)
                return -ENOMEM;
        if (prompt)
                r = proto_pack_kv_str(pk, "prompt", prompt);
        else {
                /* The chat's system message (/set system) leads the conversation. */
                r = proto_pack_key(pk, "messages");
                if (r >= 0 && msgpack_pack_array(pk, s->n_messages + !!s->system) < 0)
                        r = -ENOMEM;
                if (r >= 0 && s->system) {
                        if (msgpack_pack_map(pk, 2) < 0)
                                return -ENOMEM;
                        r = proto_pack_kv_str(pk, "role", "system");
                        if (r >= 0)
                                r = proto_pack_kv_str(pk, "content", s->system);
                }
                for (size_t i = 0; r >= 0 && i < s->n_messages; i++) {
                        if (msgpack_pack_map(pk, 2) < 0)
                                return -ENOMEM;
                        r = proto_pack_kv_str(pk, "role", s->messages[i].role);
                        if (r >= 0)
                                r = proto_pack_kv_str(pk, "content", s->messages[i].content);
                }
        }
        if (r >= 0 && prompt && s->system)
                r = proto_pack_kv_str(pk, "system", s->system);
        if (r >= 0 && s->json)
                r = proto_pack_kv_str(pk, "format", "json");
        if (r >= 0 && s->params.n > 0) {
                r = proto_pack_key(pk, "options");
                if (r >= 0)
                        r = pack_options(pk, &s->params);
        }
        if (r >= 0 && s->has_keepalive)
                r = pack_keepalive(pk, s);
        return r;
}

/* Pulls a model that a request did not find, as `ollama run` does, then says whether to retry. */
static int pull_missing(RunState *s, int r, QdError *e) {
        if (r != -ENOENT)
                return r;
        QdError pe = {};
        fprintf(s->q->err, "%s Pulling it.\n", e->msg);
        int k = qctl_transfer(s->q, "Pull", s->model, false, &pe);
        if (k < 0) {
                qd_error_clear(e);
                return qd_error_set(e, k, "%s", pe.msg);
        }
        qd_error_clear(e);
        return 1;
}

static int print_stats(RunState *s, const msgpack_object *res) {
        /* Durations in nanoseconds, named with "_ns" (Ollama's names without it are read too). */
        GenerateStats st = {
                .total_ns = result_int(res, "total_duration_ns", result_int(res, "total_duration", 0)),
                .load_ns = result_int(res, "load_duration_ns", result_int(res, "load_duration", 0)),
                .prompt_eval_count = result_int(res, "prompt_eval_count", 0),
                .prompt_eval_ns = result_int(res, "prompt_eval_duration_ns",
                                             result_int(res, "prompt_eval_duration", 0)),
                .eval_count = result_int(res, "eval_count", 0),
                .eval_ns = result_int(res, "eval_duration_ns", result_int(res, "eval_duration", 0)),
        };
        st.has_load = proto_map_get(res, "load_duration_ns") || proto_map_get(res, "load_duration");
        Buf b = {};
        int r = format_stats(&st, &b);

        if (r >= 0)
                fputs((char *)b.data, s->q->err);
        buf_free(&b);
        return r;
}

/* Runs one Generate (prompt) or Chat (prompt NULL) and streams its answer. */
static int generate(RunState *s, const char *prompt, QdError *e) {
        _cleanup_(packer_close) Packer p = {};
        ProtoMessage m;
        int r;

        packer_open(&p);
        r = pack_generation(&p.pk, s, prompt);
        if (r < 0)
                return r;
        r = qctl_connect(s->q, e);
        if (r < 0)
                return r;

        for (int attempt = 0;; attempt++) {
                s->got_token = false;
                s->answer.len = 0;
                s->ww = (WordWrap){ .width = s->wordwrap ? s->q->width : 0 };
                CallHooks h = { .on_event = on_token, .on_tick = on_tick, .interrupted = s->q->interrupted,
                                .userdata = s };
                r = conn_call(s->q->conn, prompt ? "Generate" : "Chat", p.sb.data, p.sb.size, NULL, 0, &h, &m, e);
                spinner_stop(s);
                if (r == -ENOENT && attempt == 0) {
                        r = pull_missing(s, r, e);
                        if (r > 0)
                                continue;
                }
                break;
        }
        Buf out = {};
        if (s->wordwrap)
                (void)word_wrap_flush(&s->ww, &out);
        if (out.len > 0)
                fwrite(out.data, 1, out.len, s->q->out);
        buf_free(&out);
        word_wrap_done(&s->ww);
        if (r < 0) {
                if (s->got_token)
                        fputc('\n', s->q->out);
                fflush(s->q->out);
                return r;
        }
        /* A daemon that sends the answer only in the final result is printed the same way. */
        const msgpack_object *t = token_text(m.result);
        if (!s->got_token && t)
                (void)emit(s, t->via.str.ptr, t->via.str.size);
        if (s->answer.len > 0 && s->answer.data[s->answer.len - 1] != '\n')
                fputc('\n', s->q->out);
        fflush(s->q->out);
        if (s->verbose)
                return print_stats(s, m.result);
        return 0;
}

/* Loads the model ahead of the first question, with the spinner, so that the chat starts ready. */
static int preload(RunState *s, QdError *e) {
        _cleanup_(packer_close) Packer p = {};
        int r;

        packer_open(&p);
        /* With the -o options, so that num_ctx, num_gpu and num_thread load the model as the questions want it
         * (the daemon ignores the others here) and the first question does not reload it. */
        if (msgpack_pack_map(&p.pk, 1 + s->has_keepalive + (s->params.n > 0)) < 0 ||
            proto_pack_kv_str(&p.pk, "model", s->model) < 0)
                return -ENOMEM;
        if (s->has_keepalive && pack_keepalive(&p.pk, s) < 0)
                return -ENOMEM;
        if (s->params.n > 0 && (proto_pack_key(&p.pk, "options") < 0 || pack_options(&p.pk, &s->params) < 0))
                return -ENOMEM;
        r = qctl_connect(s->q, e);
        if (r < 0)
                return r;
        for (int attempt = 0;; attempt++) {
                s->got_token = false;
                CallHooks h = { .on_tick = on_tick, .interrupted = s->q->interrupted, .userdata = s };
                r = conn_call(s->q->conn, "Load", p.sb.data, p.sb.size, NULL, 0, &h, NULL, e);
                spinner_stop(s);
                if (r == -ENOENT && attempt == 0) {
                        r = pull_missing(s, r, e);
                        if (r > 0)
                                continue;
                }
                return r;
        }
}

static char *read_all(int fd) {
        Buf b = {};
        char chunk[65536];

        for (;;) {
                ssize_t n = read(fd, chunk, sizeof(chunk));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        buf_free(&b);
                        return NULL;
                }
                if (n == 0)
                        break;
                if (buf_append(&b, chunk, (size_t)n) < 0) {
                        buf_free(&b);
                        return NULL;
                }
        }
        return b.data ? buf_steal_str(&b) : strdup("");
}

/* ---- the interactive chat ---- */

static const char chat_help[] = "Available Commands:\n"
                                "  /set            Set session variables\n"
                                "  /show           Show model information\n"
                                "  /load <model>   Load a session or model\n"
                                "  /save <model>   Save your current session\n"
                                "  /clear          Clear session context\n"
                                "  /bye            Exit\n"
                                "  /?, /help       Help for a command\n"
                                "  /? shortcuts    Help for keyboard shortcuts\n"
                                "\n"
                                "Use \"\"\" to begin a multi-line message.\n";

static const char chat_help_set[] = "Available Commands:\n"
                                    "  /set parameter ...     Set a parameter\n"
                                    "  /set system <string>   Set system message\n"
                                    "  /set wordwrap          Enable wordwrap\n"
                                    "  /set nowordwrap        Disable wordwrap\n"
                                    "  /set format json       Enable JSON mode\n"
                                    "  /set noformat          Disable formatting\n"
                                    "  /set verbose           Show LLM stats\n"
                                    "  /set quiet             Disable LLM stats\n";

static const char chat_help_show[] = "Available Commands:\n"
                                     "  /show info         Show details for this model\n"
                                     "  /show license      Show model license\n"
                                     "  /show modelfile    Show Modelfile for this model\n"
                                     "  /show parameters   Show parameters for this model\n"
                                     "  /show system       Show system message\n"
                                     "  /show template     Show prompt template\n";

static const char chat_help_shortcuts[] = "Available keyboard shortcuts:\n"
                                          "  Ctrl + a            Move to the beginning of the line (Home)\n"
                                          "  Ctrl + e            Move to the end of the line (End)\n"
                                          "  Ctrl + k            Delete the sentence after the cursor\n"
                                          "  Ctrl + u            Delete the sentence before the cursor\n"
                                          "  Ctrl + w            Delete the word before the cursor\n"
                                          "  Ctrl + l            Clear the screen\n"
                                          "  Ctrl + c            Stop the model from responding\n"
                                          "  Ctrl + d            Exit (/bye)\n";

static volatile sig_atomic_t *chat_interrupted;

/* libedit's character source: a read() that gives up when Ctrl+C interrupts it, so that readline() returns. */
static int chat_getc(FILE *f) {
        unsigned char c;

        for (;;) {
                ssize_t n = read(fileno(f), &c, 1);
                if (n == 1)
                        return c;
                if (n < 0 && errno == EINTR && !(chat_interrupted && *chat_interrupted))
                        continue;
                return EOF;
        }
}

static char *history_path(void) {
        const char *x = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
        char *dir;

        if (x && x[0] == '/')
                dir = strdup_printf("%s/quantd", x);
        else if (home && home[0] == '/')
                dir = strdup_printf("%s/.local/share/quantd", home);
        else
                return NULL;
        if (!dir)
                return NULL;
        /* The history is private: it holds what was typed. */
        (void)mkdir(dir, 0700);
        char *p = strdup_printf("%s/qctl_history", dir);
        free(dir);
        return p;
}

/* Makes the model's state (system, parameters) a new model through Create, as Ollama's /save does. */
static int chat_save(RunState *s, const char *name, QdError *e) {
        _cleanup_(modelfile_freep) Modelfile *mf = calloc(1, sizeof(Modelfile));
        int r;

        if (!mf)
                return -ENOMEM;
        mf->from = strdup(s->model);
        mf->system = s->system ? strdup(s->system) : NULL;
        if (!mf->from || (s->system && !mf->system))
                return -ENOMEM;
        for (size_t i = 0; i < s->params.n; i++) {
                Buf v = {};
                const ParamValue *pv = &s->params.items[i];
                r = pv->info->type == PARAM_STRING ? buf_append_str(&v, pv->s) : param_value_format(pv, &v);
                if (r >= 0)
                        r = param_set_add(&mf->params, pv->info->name, v.data ? (char *)v.data : "", e);
                buf_free(&v);
                if (r < 0)
                        return r;
        }
        if (s->n_messages > 0) {
                mf->messages = calloc(s->n_messages, sizeof(ModelfileMessage));
                if (!mf->messages)
                        return -ENOMEM;
                for (size_t i = 0; i < s->n_messages; i++) {
                        mf->messages[i].role = message_role_from_string(s->messages[i].role);
                        mf->messages[i].content = strdup(s->messages[i].content);
                        mf->n_messages++;
                        if (!mf->messages[i].content)
                                return -ENOMEM;
                }
        }
        r = qctl_create(s->q, name, mf, "/save", NULL, e);
        if (r >= 0)
                fprintf(s->q->out, "Created new model '%s'\n", name);
        return r;
}

static void chat_list_parameters(RunState *s) {
        size_t n;
        const ParamInfo *t = param_table(&n);

        fprintf(s->q->out, "Available Parameters:\n");
        for (size_t i = 0; i < n; i++)
                if (!t[i].deprecated)
                        fprintf(s->q->out, "  /set parameter %-18s %-8s %s\n", t[i].name,
                                t[i].type == PARAM_STRING ? "<string>" : t[i].type == PARAM_BOOL ? "<bool>"
                                                                       : t[i].type == PARAM_INT  ? "<int>"
                                                                                                 : "<float>",
                                t[i].description);
        fputc('\n', s->q->out);
}

/* Runs one chat command. Returns 1 to end the chat, 0 to go on, -errno for a failure to report and go on. */
static int chat_execute(RunState *s, ChatCommand *cmd, QdError *e) {
        int r;

        switch (cmd->type) {
        case CHAT_MESSAGE:
                if (!*cmd->arg)
                        return 0;
                r = add_message(s, "user", cmd->arg);
                if (r < 0)
                        return r;
                r = generate(s, NULL, e);
                if (r < 0) {
                        drop_last_message(s);
                        return r;
                }
                fputc('\n', s->q->out);
                return add_message(s, "assistant", s->answer.data ? (char *)s->answer.data : "");
        case CHAT_SET_PARAMETER:
                if (!cmd->arg) {
                        chat_list_parameters(s);
                        return 0;
                }
                /* stop adds up within one /set but replaces what was set before, as in Ollama. */
                if (param_lookup(cmd->arg) && param_lookup(cmd->arg)->repeatable)
                        (void)param_set_remove(&s->params, cmd->arg);
                r = param_set_add(&s->params, cmd->arg, cmd->arg2, e);
                if (r < 0)
                        return r == -ENOMEM ? r : -EINVAL;
                fprintf(s->q->out, "Set parameter '%s' to '%s'\n", param_lookup(cmd->arg)->name, cmd->arg2);
                return 0;
        case CHAT_SET_SYSTEM:
                free(s->system);
                s->system = TAKE_PTR(cmd->arg);
                fprintf(s->q->out, "Set system message.\n");
                return 0;
        case CHAT_SET_VERBOSE:
        case CHAT_SET_QUIET:
                s->verbose = cmd->type == CHAT_SET_VERBOSE;
                fprintf(s->q->out, "Set '%s' mode.\n", s->verbose ? "verbose" : "quiet");
                return 0;
        case CHAT_SET_FORMAT_JSON:
        case CHAT_SET_NOFORMAT:
                s->json = cmd->type == CHAT_SET_FORMAT_JSON;
                fprintf(s->q->out, s->json ? "Set format to 'json' mode.\n" : "Disabled format.\n");
                return 0;
        case CHAT_SET_WORDWRAP:
        case CHAT_SET_NOWORDWRAP:
                s->wordwrap = cmd->type == CHAT_SET_WORDWRAP && s->q->width > 0;
                fprintf(s->q->out, "Set '%s' mode.\n", cmd->type == CHAT_SET_WORDWRAP ? "wordwrap" : "nowordwrap");
                return 0;
        case CHAT_SHOW:
                if (cmd->show == SHOW_SYSTEM && s->system) {
                        fprintf(s->q->out, "%s\n", s->system);
                        return 0;
                }
                if (cmd->show == SHOW_PARAMETERS && s->params.n > 0) {
                        fprintf(s->q->out, "User defined parameters:\n");
                        for (size_t i = 0; i < s->params.n; i++) {
                                Buf v = {};
                                r = param_value_format(&s->params.items[i], &v);
                                if (r >= 0)
                                        fprintf(s->q->out, "%-30s %s\n", s->params.items[i].info->name,
                                                (char *)v.data);
                                buf_free(&v);
                        }
                        fputc('\n', s->q->out);
                }
                return qctl_show_model(s->q, s->model, cmd->show, false, false, e);
        case CHAT_LOAD: {
                char *m = TAKE_PTR(cmd->arg);
                free(s->model);
                s->model = m;
                clear_messages(s);
                fprintf(s->q->out, "Loading model '%s'\n", s->model);
                return preload(s, e);
        }
        case CHAT_SAVE:
                return chat_save(s, cmd->arg, e);
        case CHAT_CLEAR:
                clear_messages(s);
                fprintf(s->q->out, "Cleared session context\n");
                return 0;
        case CHAT_BYE:
                return 1;
        case CHAT_HELP:
                fputs(!cmd->arg                       ? chat_help
                      : streq(cmd->arg, "set")        ? chat_help_set
                      : streq(cmd->arg, "show")       ? chat_help_show
                                                      : chat_help_shortcuts,
                      s->q->out);
                fputc('\n', s->q->out);
                return 0;
        case _CHAT_COMMAND_TYPE_MAX:
        case _CHAT_COMMAND_TYPE_INVALID:
                break;
        }
        return -EINVAL;
}

static int chat(RunState *s, QdError *e) {
        _cleanup_free_ char *hist = history_path();
        ChatInput in = {};
        int r;

        r = preload(s, e);
        if (r < 0)
                return r;

        chat_interrupted = s->q->interrupted;
        rl_readline_name = "qctl";
        rl_catch_signals = 0;
        rl_getc_function = chat_getc;
        using_history();
        stifle_history(1000);
        if (hist)
                (void)read_history(hist);

        for (;;) {
                *s->q->interrupted = 0;
                char *line = readline(chat_input_pending(&in) ? "... " : ">>> ");
                if (!line) {
                        if (*s->q->interrupted) {
                                /* Ctrl+C drops what was typed, as in a shell. */
                                chat_input_done(&in);
                                fprintf(s->q->out, "\nUse Ctrl + d or /bye to exit.\n");
                                continue;
                        }
                        fputc('\n', s->q->out);
                        break;
                }
                _cleanup_free_ char *text = NULL;
                r = chat_input_feed(&in, line, &text);
                free(line);
                if (r < 0)
                        break;
                if (r == 0)
                        continue;
                if (*text)
                        add_history(text);

                ChatCommand cmd;
                QdError ce = {};
                r = chat_command_parse(text, &cmd, &ce);
                if (r >= 0) {
                        r = chat_execute(s, &cmd, &ce);
                        chat_command_done(&cmd);
                }
                if (r == 1)
                        break;
                if (r == -ECANCELED) {
                        fputc('\n', s->q->out);
                        continue;
                }
                if (r == -ENOMEM)
                        break;
                if (r < 0) {
                        /* Losing the daemon ends the chat; anything else is said and the chat goes on. */
                        if (exit_code_from_errno(r) == QCTL_EXIT_NO_DAEMON) {
                                qd_error_set(e, r, "%s", ce.msg);
                                break;
                        }
                        fprintf(s->q->err, "Error: %s\n", ce.code ? ce.msg : strerror(-r));
                }
                r = 0;
        }
        chat_input_done(&in);
        if (hist)
                (void)write_history(hist);
        return r < 0 ? r : 0;
}

int verb_run(Qctl *q, Command *c, QdError *e) {
        _cleanup_(run_state_done) RunState s = {
                .q = q,
                .json = c->format != NULL,
                .has_keepalive = c->has_keepalive,
                .keepalive_ns = c->keepalive_ns,
                .verbose = c->verbose,
                .params = c->params,
        };
        _cleanup_free_ char *piped = NULL, *prompt = NULL;
        int r;

        c->params = (ParamSet){};
        s.model = strdup(c->args[0]);
        if (!s.model)
                return -ENOMEM;
        /* JSON must come out intact, and a pipe wants the tokens as they are. */
        s.wordwrap = !c->nowordwrap && !s.json && q->out_tty && q->width > 0;

        if (!q->in_tty) {
                piped = read_all(q->in_fd);
                if (!piped)
                        return qd_error_set(e, errno > 0 ? errno : EIO, "Cannot read the prompt from standard input: %s.",
                                            strerror(errno > 0 ? errno : EIO));
        }
        r = build_prompt(c->args + 1, piped, &prompt);
        if (r < 0)
                return r;
        if (prompt)
                return generate(&s, prompt, e);
        if (!q->in_tty)
                return qd_error_set(e, EINVAL,
                                    "No prompt: give one after the model's name, or pipe text into qctl run.");
        return chat(&s, e);
}
