/* SPDX-License-Identifier: MIT */
/*
 * Chat formats of the common model families, recognised from a GGUF's tokenizer.chat_template and written by
 * hand-made formatters, for models that come without a Modelfile TEMPLATE.
 *
 * DESIGN
 * tokenizer.chat_template is Jinja, and running Jinja would mean a second template language in the engine.
 * The families we support each mark their turns with tokens no other family uses, so the marker tokens in
 * the template say which family it is; the formatter then writes what that family's template writes for a
 * chat with the generation prompt added. Differences that matter for output are kept: Llama 3 trims the
 * content; Llama 2 puts the system prompt inside the first [INST] and starts every later turn with <s>;
 * Mistral and Gemma have no system role and put it before the first user message; Gemma calls the assistant
 * "model". The BOS token at the very start is left to the tokenizer (add_special), as with Ollama's
 * templates. Some templates (SmolLM's, Qwen's) write a fixed system prompt when the chat has none; it is
 * read out of the template's ChatML text so that we write it too.
 */

#include "engine.h"

static const char *const format_names[_ENGINE_CHAT_FORMAT_MAX] = {
        [ENGINE_CHAT_CHATML] = "chatml",   [ENGINE_CHAT_LLAMA2] = "llama2", [ENGINE_CHAT_LLAMA3] = "llama3",
        [ENGINE_CHAT_MISTRAL] = "mistral", [ENGINE_CHAT_GEMMA] = "gemma",   [ENGINE_CHAT_PHI3] = "phi3",
};

const char *engine_chat_format_name(EngineChatFormat f) {
        if ((int)f < 0 || f >= _ENGINE_CHAT_FORMAT_MAX)
                return NULL;
        return format_names[f];
}

/* The fixed text after "<|im_start|>system" and a newline (real or written \n) up to "<|im_end|>", if the
 * template has one that is plain text rather than an expression. */
static int default_system(const char *jinja, char **ret) {
        static const char mark[] = "<|im_start|>system";
        const char *p = strstr(jinja, mark), *end;

        *ret = NULL;
        if (!p)
                return 0;
        p += strlen(mark);
        if (*p == '\n')
                p++;
        else if (p[0] == '\\' && p[1] == 'n')
                p += 2;
        else
                return 0;
        end = strstr(p, "<|im_end|>");
        if (!end)
                return 0;
        /* Quotes, braces or '+' mean Jinja code (message['content'] …), not a fixed prompt. */
        for (const char *q = p; q < end; q++)
                if (*q == '\'' || *q == '"' || *q == '{' || *q == '}' || *q == '+')
                        return 0;
        if (end == p)
                return 0;
        *ret = strndup(p, (size_t)(end - p));
        return *ret ? 0 : -ENOMEM;
}

int engine_chat_format_detect(const char *jinja, EngineChatFormat *ret, char **ret_default_system) {
        EngineChatFormat f;
        _cleanup_free_ char *sys = NULL;
        int r;

        if (strstr(jinja, "<|start_header_id|>"))
                f = ENGINE_CHAT_LLAMA3;
        else if (strstr(jinja, "<|im_start|>"))
                f = ENGINE_CHAT_CHATML;
        else if (strstr(jinja, "<start_of_turn>"))
                f = ENGINE_CHAT_GEMMA;
        else if (strstr(jinja, "<|user|>") && strstr(jinja, "<|end|>"))
                f = ENGINE_CHAT_PHI3;
        else if (strstr(jinja, "[INST]") && strstr(jinja, "<<SYS>>"))
                f = ENGINE_CHAT_LLAMA2;
        else if (strstr(jinja, "[INST]"))
                f = ENGINE_CHAT_MISTRAL;
        else
                return -EOPNOTSUPP;

        if (f == ENGINE_CHAT_CHATML && ret_default_system) {
                r = default_system(jinja, &sys);
                if (r < 0)
                        return r;
        }
        *ret = f;
        if (ret_default_system)
                *ret_default_system = TAKE_PTR(sys);
        return 0;
}

/* Appends s without the whitespace at either end, as Jinja's trim filter does. */
static int append_trimmed(Buf *out, const char *s) {
        size_t len = strlen(s);
        while (len > 0 && strchr(" \t\r\n", s[0])) {
                s++;
                len--;
        }
        while (len > 0 && strchr(" \t\r\n", s[len - 1]))
                len--;
        return buf_append(out, s, len);
}

static int render_chatml(const EngineChatMessage *m, size_t n, Buf *out) {
        int r = 0;
        for (size_t i = 0; i < n && r >= 0; i++)
                r = buf_printf(out, "<|im_start|>%s\n%s<|im_end|>\n", m[i].role, m[i].content);
        return r < 0 ? r : buf_append_str(out, "<|im_start|>assistant\n");
}

static int render_llama3(const EngineChatMessage *m, size_t n, Buf *out) {
        int r = 0;
        for (size_t i = 0; i < n && r >= 0; i++) {
                r = buf_printf(out, "<|start_header_id|>%s<|end_header_id|>\n\n", m[i].role);
                if (r >= 0)
                        r = append_trimmed(out, m[i].content);
                if (r >= 0)
                        r = buf_append_str(out, "<|eot_id|>");
        }
        return r < 0 ? r : buf_append_str(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static int render_phi3(const EngineChatMessage *m, size_t n, Buf *out) {
        int r = 0;
        for (size_t i = 0; i < n && r >= 0; i++)
                r = buf_printf(out, "<|%s|>\n%s<|end|>\n", m[i].role, m[i].content);
        return r < 0 ? r : buf_append_str(out, "<|assistant|>\n");
}

/* Families without a system role: only user and assistant turns, the system text goes to the first user
 * turn. */
static int check_roles(EngineChatFormat f, const EngineChatMessage *m, size_t n, QdError *err) {
        for (size_t i = 0; i < n; i++)
                if (!streq(m[i].role, "user") && !streq(m[i].role, "assistant") &&
                    !(streq(m[i].role, "system") && i == 0))
                        return qd_error_set(
                                err, EINVAL,
                                "The %s chat format has no place for a '%s' message (message %zu).",
                                format_names[f], m[i].role, i);
        return 0;
}

static int render_llama2(const EngineChatMessage *m, size_t n, Buf *out) {
        const char *sys = n > 0 && streq(m[0].role, "system") ? m[0].content : NULL;
        bool first = true;
        int r = 0;

        for (size_t i = sys ? 1 : 0; i < n && r >= 0; i++) {
                if (streq(m[i].role, "user")) {
                        /* The system block is part of the first user content, which is trimmed as a whole.
                         */
                        _cleanup_free_ char *content =
                                first && sys
                                        ? strdup_printf("<<SYS>>\n%s\n<</SYS>>\n\n%s", sys, m[i].content)
                                        : strdup(m[i].content);
                        if (!content)
                                return -ENOMEM;
                        r = buf_append_str(out, first ? "[INST] " : "<s>[INST] ");
                        if (r >= 0)
                                r = append_trimmed(out, content);
                        if (r >= 0)
                                r = buf_append_str(out, " [/INST]");
                        first = false;
                } else {
                        r = buf_append_str(out, " ");
                        if (r >= 0)
                                r = append_trimmed(out, m[i].content);
                        if (r >= 0)
                                r = buf_append_str(out, " </s>");
                }
        }
        return r;
}

static int render_mistral(const EngineChatMessage *m, size_t n, Buf *out) {
        const char *sys = n > 0 && streq(m[0].role, "system") ? m[0].content : NULL;
        bool first = true;
        int r = 0;

        for (size_t i = sys ? 1 : 0; i < n && r >= 0; i++) {
                if (streq(m[i].role, "user")) {
                        r = buf_append_str(out, "[INST] ");
                        if (r >= 0 && first && sys)
                                r = buf_printf(out, "%s\n\n", sys);
                        if (r >= 0)
                                r = buf_printf(out, "%s [/INST]", m[i].content);
                        first = false;
                } else
                        r = buf_printf(out, "%s</s>", m[i].content);
        }
        return r;
}

static int render_gemma(const EngineChatMessage *m, size_t n, Buf *out) {
        const char *sys = n > 0 && streq(m[0].role, "system") ? m[0].content : NULL;
        bool first = true;
        int r = 0;

        for (size_t i = sys ? 1 : 0; i < n && r >= 0; i++) {
                bool user = streq(m[i].role, "user");
                r = buf_printf(out, "<start_of_turn>%s\n", user ? "user" : "model");
                if (r >= 0 && user && first && sys)
                        r = buf_printf(out, "%s\n\n", sys);
                if (r >= 0)
                        r = append_trimmed(out, m[i].content);
                if (r >= 0)
                        r = buf_append_str(out, "<end_of_turn>\n");
                first = first && !user;
        }
        return r < 0 ? r : buf_append_str(out, "<start_of_turn>model\n");
}

int engine_chat_format_render(EngineChatFormat f, const char *default_system,
                              const EngineChatMessage *messages, size_t n_messages, Buf *out, QdError *err) {
        _cleanup_free_ EngineChatMessage *m = NULL;
        bool has_system = false;
        size_t n = 0;
        int r;

        if ((int)f < 0 || f >= _ENGINE_CHAT_FORMAT_MAX)
                return qd_error_set(err, EINVAL, "Unknown chat format %d.", (int)f);
        for (size_t i = 0; i < n_messages; i++) {
                if (!messages[i].role || !messages[i].content)
                        return qd_error_set(err, EINVAL, "Message %zu has no role or no content.", i);
                has_system = has_system || streq(messages[i].role, "system");
        }
        m = calloc(n_messages + 1, sizeof(EngineChatMessage));
        if (!m)
                return -ENOMEM;
        if (default_system && !has_system)
                m[n++] = (EngineChatMessage){.role = "system", .content = default_system};
        memcpy(m + n, messages, n_messages * sizeof(EngineChatMessage));
        n += n_messages;

        switch (f) {
        case ENGINE_CHAT_CHATML:
                return render_chatml(m, n, out);
        case ENGINE_CHAT_LLAMA3:
                return render_llama3(m, n, out);
        case ENGINE_CHAT_PHI3:
                return render_phi3(m, n, out);
        case ENGINE_CHAT_LLAMA2:
        case ENGINE_CHAT_MISTRAL:
        case ENGINE_CHAT_GEMMA:
                r = check_roles(f, m, n, err);
                if (r < 0)
                        return r;
                return f == ENGINE_CHAT_LLAMA2    ? render_llama2(m, n, out)
                       : f == ENGINE_CHAT_MISTRAL ? render_mistral(m, n, out)
                                                  : render_gemma(m, n, out);
        case _ENGINE_CHAT_FORMAT_MAX:
        case _ENGINE_CHAT_FORMAT_INVALID:
                break;
        }
        return -EINVAL;
}
