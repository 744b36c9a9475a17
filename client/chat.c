/* SPDX-License-Identifier: MIT */
/*
 * The interactive chat of `qctl run MODEL`: what a typed line means. Commands start with '/', as in Ollama's
 * chat (/set, /show, /load, /save, /clear, /bye, /?); a line starting with """ opens a multi-line message
 * that ends at a line ending with """. Pure text handling: qctl does the terminal and the daemon.
 */

#include "client.h"

static const char *skip_blanks(const char *s) {
        while (*s == ' ' || *s == '\t')
                s++;
        return s;
}

/* Splits off the first word of *p; *p then points at the rest with its leading blanks skipped. */
static char *next_word(const char **p) {
        const char *s = skip_blanks(*p), *e = s;

        while (*e && *e != ' ' && *e != '\t')
                e++;
        *p = skip_blanks(e);
        return e > s ? strndup(s, (size_t)(e - s)) : NULL;
}

static char *strip_trailing(const char *s) {
        size_t n = strlen(s);

        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
                n--;
        return strndup(s, n);
}

/* "/set system "be brief"" and the same in """ keep what is inside the quotes. */
static char *unquote(const char *s) {
        size_t n = strlen(s);

        if (n >= 6 && startswith(s, "\"\"\"") && endswith(s, "\"\"\""))
                return strndup(s + 3, n - 6);
        if (n >= 2 && s[0] == '"' && s[n - 1] == '"')
                return strndup(s + 1, n - 2);
        return strdup(s);
}

static int parse_set(const char *rest, ChatCommand *c, QdError *e) {
        static const struct {
                const char *word;
                ChatCommandType type;
        } flags[] = {
                { "verbose", CHAT_SET_VERBOSE },       { "quiet", CHAT_SET_QUIET },
                { "noformat", CHAT_SET_NOFORMAT },     { "wordwrap", CHAT_SET_WORDWRAP },
                { "nowordwrap", CHAT_SET_NOWORDWRAP },
        };
        _cleanup_free_ char *what = next_word(&rest);

        if (!what) {
                c->type = CHAT_HELP;
                c->arg = strdup("set");
                return c->arg ? 0 : -ENOMEM;
        }
        for (size_t i = 0; i < ELEMENTSOF(flags); i++)
                if (streq(what, flags[i].word)) {
                        if (*rest)
                                return qd_error_set(e, EINVAL, "/set %s takes no value.", what);
                        c->type = flags[i].type;
                        return 0;
                }
        if (streq(what, "format")) {
                _cleanup_free_ char *f = next_word(&rest);
                if (!f || !streq(f, "json") || *rest)
                        return qd_error_set(e, EINVAL, "Usage: /set format json (or /set noformat).");
                c->type = CHAT_SET_FORMAT_JSON;
                return 0;
        }
        if (streq(what, "system")) {
                if (!*rest)
                        return qd_error_set(e, EINVAL, "Usage: /set system MESSAGE.");
                c->type = CHAT_SET_SYSTEM;
                c->arg = unquote(rest);
                return c->arg ? 0 : -ENOMEM;
        }
        if (streq(what, "parameter")) {
                c->type = CHAT_SET_PARAMETER;
                c->arg = next_word(&rest);
                if (!c->arg)
                        return 0; /* lists the parameters */
                if (!*rest)
                        return qd_error_set(e, EINVAL, "Usage: /set parameter NAME VALUE.");
                c->arg2 = unquote(rest);
                return c->arg2 ? 0 : -ENOMEM;
        }
        return qd_error_set(e, EINVAL, "Unknown /set option '%s': type /? set for the list.", what);
}

static int parse_show(const char *rest, ChatCommand *c, QdError *e) {
        static const char *const names[_SHOW_WHAT_MAX] = {
                [SHOW_INFO] = "info",         [SHOW_MODELFILE] = "modelfile", [SHOW_PARAMETERS] = "parameters",
                [SHOW_TEMPLATE] = "template", [SHOW_SYSTEM] = "system",       [SHOW_LICENSE] = "license",
        };
        _cleanup_free_ char *what = next_word(&rest);

        if (!what) {
                c->type = CHAT_HELP;
                c->arg = strdup("show");
                return c->arg ? 0 : -ENOMEM;
        }
        for (int i = 0; i < _SHOW_WHAT_MAX; i++)
                if (streq(what, names[i])) {
                        if (*rest)
                                return qd_error_set(e, EINVAL, "/show %s takes no value.", what);
                        c->type = CHAT_SHOW;
                        c->show = (ShowWhat)i;
                        return 0;
                }
        return qd_error_set(e, EINVAL, "Unknown /show option '%s': type /? show for the list.", what);
}

int chat_command_parse(const char *input, ChatCommand *ret, QdError *e) {
        ChatCommand c = {};
        int r;

        const char *s = skip_blanks(input);
        if (*s != '/') {
                c.type = CHAT_MESSAGE;
                c.arg = strdup(input);
                if (!c.arg)
                        return -ENOMEM;
                *ret = c;
                return 0;
        }
        _cleanup_free_ char *line = strip_trailing(s);
        if (!line)
                return -ENOMEM;
        const char *rest = line;
        _cleanup_free_ char *cmd = next_word(&rest);

        if (streq(cmd, "/set"))
                r = parse_set(rest, &c, e);
        else if (streq(cmd, "/show"))
                r = parse_show(rest, &c, e);
        else if (streq(cmd, "/load") || streq(cmd, "/save")) {
                c.type = streq(cmd, "/load") ? CHAT_LOAD : CHAT_SAVE;
                c.arg = next_word(&rest);
                if (!c.arg || *rest)
                        r = qd_error_set(e, EINVAL, "Usage: %s MODEL.", cmd);
                else
                        r = 0;
        } else if (streq(cmd, "/clear") || streq(cmd, "/bye") || streq(cmd, "/exit")) {
                c.type = streq(cmd, "/clear") ? CHAT_CLEAR : CHAT_BYE;
                r = *rest ? qd_error_set(e, EINVAL, "%s takes no argument.", cmd) : 0;
        } else if (streq(cmd, "/?") || streq(cmd, "/help")) {
                c.type = CHAT_HELP;
                c.arg = next_word(&rest);
                if (c.arg && !streq(c.arg, "set") && !streq(c.arg, "show") && !streq(c.arg, "shortcuts"))
                        r = qd_error_set(e, EINVAL, "No help on '%s': try /?, /? set, /? show or /? shortcuts.",
                                         c.arg);
                else
                        r = 0;
        } else
                r = qd_error_set(e, EINVAL, "Unknown command '%s': type /? for help.", cmd);
        if (r < 0) {
                chat_command_done(&c);
                return r;
        }
        *ret = c;
        return 0;
}

void chat_command_done(ChatCommand *c) {
        free(c->arg);
        free(c->arg2);
        *c = (ChatCommand){};
}

static int chat_input_add_line(ChatInput *in, const char *s, size_t n) {
        int r = 0;

        if (in->n_lines > 0)
                r = buf_append_str(&in->text, "\n");
        if (r >= 0)
                r = buf_append(&in->text, s, n);
        if (r >= 0)
                in->n_lines++;
        return r;
}

static int chat_input_finish(ChatInput *in, char **ret) {
        char *s = in->text.len > 0 ? buf_steal_str(&in->text) : strdup("");

        chat_input_done(in);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 1;
}

int chat_input_feed(ChatInput *in, const char *line, char **ret) {
        size_t n = strlen(line);
        int r;

        if (n > 0 && line[n - 1] == '\n')
                n--;
        if (!in->in_block) {
                if (!startswith(line, "\"\"\"")) {
                        r = buf_append(&in->text, line, n);
                        return r < 0 ? r : chat_input_finish(in, ret);
                }
                line += 3;
                n -= 3;
                in->in_block = true;
                if (n >= 3 && memcmp(line + n - 3, "\"\"\"", 3) == 0) {
                        r = chat_input_add_line(in, line, n - 3);
                        return r < 0 ? r : chat_input_finish(in, ret);
                }
                /* An empty opening line adds nothing, so that the message starts with the next line. */
                if (n > 0) {
                        r = chat_input_add_line(in, line, n);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        if (n >= 3 && memcmp(line + n - 3, "\"\"\"", 3) == 0) {
                r = n > 3 ? chat_input_add_line(in, line, n - 3) : 0;
                return r < 0 ? r : chat_input_finish(in, ret);
        }
        /* Inside a block empty lines count: they separate paragraphs. */
        r = chat_input_add_line(in, line, n);
        return r < 0 ? r : 0;
}

bool chat_input_pending(const ChatInput *in) {
        return in->in_block;
}

void chat_input_done(ChatInput *in) {
        buf_free(&in->text);
        in->in_block = false;
        in->n_lines = 0;
}
