/* SPDX-License-Identifier: MIT */
/*
 * Chat templates: Modelfile TEMPLATEs in Ollama's Go text/template dialect (the ChatML and Llama 3 templates
 * in both their .Messages and older .System/.Prompt/.Response forms, the language's actions and functions
 * one by one, parse and render errors with their messages), and the GGUF chat formats recognised from Jinja
 * templates, including SmolLM2's real one.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine.h"

static const EngineChatMessage chat[] = {
        {"system", "You are terse."},
        {"user", "Hi"},
        {"assistant", "Hello!"},
        {"user", "How are you?"},
};

/* Renders text with msgs and compares with want. */
static void expect(const char *text, const char *system, const EngineChatMessage *msgs, size_t n,
                   const char *want) {
        _cleanup_(engine_template_freep) EngineTemplate *t = NULL;
        QdError err = {};
        Buf out = {};

        if (engine_template_parse(text, &t, &err) < 0)
                fail_msg("parse of '%s' failed: %s", text, err.msg);
        if (engine_template_render(t, system, msgs, n, &out, &err) < 0)
                fail_msg("render of '%s' failed: %s", text, err.msg);
        if (!streq(out.len ? (char *)out.data : "", want))
                fail_msg("'%s' rendered as\n'%s'\nwant\n'%s'", text, out.len ? (char *)out.data : "", want);
        buf_free(&out);
}

static const char chatml_messages[] = "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
                                      "{{ .Content }}<|im_end|>\n"
                                      "{{ end }}<|im_start|>assistant\n";

static const char chatml_want[] = "<|im_start|>system\nYou are terse.<|im_end|>\n"
                                  "<|im_start|>user\nHi<|im_end|>\n"
                                  "<|im_start|>assistant\nHello!<|im_end|>\n"
                                  "<|im_start|>user\nHow are you?<|im_end|>\n"
                                  "<|im_start|>assistant\n";

static void test_chatml_messages(void **state) {
        expect(chatml_messages, NULL, chat, ELEMENTSOF(chat), chatml_want);
        /* The Modelfile's SYSTEM goes first when the chat has no system message, and only then. */
        expect(chatml_messages, "You are terse.", chat + 1, ELEMENTSOF(chat) - 1, chatml_want);
        expect(chatml_messages, "Ignored.", chat, ELEMENTSOF(chat), chatml_want);
        /* Consecutive messages of one role are joined by a blank line. */
        const EngineChatMessage two[] = {{"user", "a"}, {"user", "b"}};
        expect(chatml_messages, NULL, two, 2, "<|im_start|>user\na\n\nb<|im_end|>\n<|im_start|>assistant\n");
}

static const char llama3_legacy[] =
        "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n"
        "{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user"
        "<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>"
        "assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>";

static void test_legacy(void **state) {
        /* One rendering per turn; the last stops right after {{ .Response }}, dropping its <|eot_id|>. */
        expect(llama3_legacy, NULL, chat, ELEMENTSOF(chat),
               "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n");
        /* A generate-style prompt: just a user message. */
        expect("{{ .System }} USER: {{ .Prompt }} ASSISTANT:{{ .Response }} END", NULL, chat + 1, 1,
               " USER: Hi ASSISTANT:");
        /* The cut also drops actions and whole blocks after the response. */
        expect("[{{ .Prompt }}]{{ .Response }}{{ if .Prompt }}never{{ end }}{{ .Prompt }}", NULL, chat + 1,
               1, "[Hi]");
}

static const char llama31_messages[] =
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>\n"
        "{{- end }}\n"
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        "{{- if eq .Role \"user\" }}<|start_header_id|>user<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n"
        "{{- else if eq .Role \"assistant\" }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}\n"
        "{{- end }}\n"
        "{{- end }}";

static void test_llama31_messages(void **state) {
        expect(llama31_messages, NULL, chat, ELEMENTSOF(chat),
               "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n");
        /* Ending on an assistant message leaves it open for the model to continue. */
        expect(llama31_messages, NULL, chat + 1, 2,
               "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello!");
}

static void test_language(void **state) {
        const EngineChatMessage m[] = {{"user", "a\"<b>"}, {"assistant", "x"}, {"user", "yz"}};

        /* Trimming on either side, comments. */
        expect("a  {{- .Prompt -}}  \n b {{/* note */}}c{{- /* trimmed */ -}} d", NULL, m + 2, 1, "ayzb cd");
        /* Literals and printing. */
        expect("{{ \"q\\\"\\n\" }}{{ `raw\\n` }}{{ 42 }}{{ -3 }}{{ true }}{{ .Nothing }}", NULL, NULL, 0,
               "q\"\nraw\\n42-3true<no value>");
        /* Comparisons and logic. */
        expect("{{ eq 1 1 }} {{ eq \"a\" \"b\" \"a\" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt \"b\" "
               "\"a\" }} "
               "{{ ge 1 2 }} {{ not 0 }} {{ and 1 \"\" 3 }}|{{ or 0 \"\" 3 }} {{ or 0 \"\" }}|",
               NULL, NULL, 0, "true true true true true true false true |3 |");
        /* and/or stop at the first value that decides: the index would fail on no messages. */
        expect("{{ if and .Messages (index .Messages 0) }}yes{{ else }}no{{ end }}", NULL, NULL, 0, "no");
        /* len, index, slice, chains on parenthesised values, variables and assignment. */
        expect("{{ len .Messages }} {{ (index .Messages 2).Content }} {{ len (slice .Messages 1) }} "
               "{{ slice \"hello\" 1 3 }} {{ index \"A\" 0 }} {{ $n := len .Messages }}{{ $n = 7 }}{{ $n }}",
               NULL, m, 3, "3 yz 2 el 65 7");
        /* range with else, index variables, $ inside the range, with. */
        expect("{{ range $i, $m := .Messages }}{{ $i }}={{ $m.Role }}/{{ len $.Messages }};{{ else }}none{{ "
               "end }}",
               NULL, m, 3, "0=user/3;1=assistant/3;2=user/3;");
        expect("{{ range .Messages }}x{{ else }}none{{ end }}", NULL, NULL, 0, "none");
        expect("{{ with .System }}[{{ . }}]{{ else }}no system{{ end }}{{ with .Prompt }}[{{ . }}]{{ end }}",
               "S", NULL, 0, "[S]");
        /* Pipelines pass their value as the last argument. */
        expect("{{ .Messages | len }} {{ \"x\" | eq \"x\" }} {{ 2 | print 1 }}", NULL, m, 3, "3 true 1 2");
        /* print, printf, json (with Go's HTML escaping). */
        expect("{{ print \"a\" 1 2 \"b\" }} {{ printf \"%s-%d-%v%%-%q\" \"s\" 4 true \"q\" }} {{ json "
               ".Messages }}",
               NULL, m, 1,
               "a1 2b s-4-true%-\"q\" [{\"role\":\"user\",\"content\":\"a\\\"\\u003cb\\u003e\"}]");
        /* else if chains and fields Ollama templates test for. */
        expect("{{ range .Messages }}{{ if eq .Role \"system\" }}S{{ else if eq .Role \"user\" }}U{{ else "
               "}}A"
               "{{ end }}{{ if .ToolCalls }}T{{ end }}{{ end }}{{ if .Tools }}tools{{ end }}",
               NULL, m, 3, "UAU");
}

static void expect_parse_error(const char *text, const char *msg) {
        EngineTemplate *t = NULL;
        QdError err = {};

        assert_int_equal(engine_template_parse(text, &t, &err), -EINVAL);
        assert_null(t);
        if (!strstr(err.msg, msg))
                fail_msg("'%s': error '%s', want '%s'", text, err.msg, msg);
}

static void test_parse_errors(void **state) {
        expect_parse_error("abc {{ .System", "Template line 1: unclosed action");
        expect_parse_error("a\nb\n{{ end }}", "Template line 3: {{ end }} without {{ if }}");
        expect_parse_error("{{ else }}", "{{ else }} without {{ if }}");
        expect_parse_error("x\n{{ if .System }}\nyes", "Template line 2: {{ if }} has no {{ end }}");
        expect_parse_error("{{ range .Messages }}{{ else }}", "{{ range }} has no {{ end }}");
        expect_parse_error("{{ if 1 }}{{ else }}{{ else }}{{ end }}", "a second {{ else }} in one {{ if }}");
        expect_parse_error("{{ foo .System }}", "function \"foo\" not defined");
        expect_parse_error("{{ $x }}", "undefined variable \"$x\"");
        expect_parse_error("{{ $x = 1 }}", "undefined variable \"$x\"");
        expect_parse_error("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}", "undefined variable \"$y\"");
        expect_parse_error("{{ template \"x\" }}", "{{ template }} is not supported");
        expect_parse_error("{{ \"abc }}", "unterminated string");
        expect_parse_error("{{ (eq 1 1 }}", "unclosed left parenthesis");
        expect_parse_error("{{ .System 1 }}", "can't give argument to non-function");
        expect_parse_error("{{ 1 | .System }}", "non-function cannot take the value");
        expect_parse_error("{{ $a, $b := .Messages }}", "only {{ range }} can declare two variables");
        expect_parse_error("{{ }}", "missing value for command");
        expect_parse_error("{{ nil }}", "nil is not a command");
        expect_parse_error("{{ if }}{{ end }}", "missing value for command");
        expect_parse_error("{{ end extra }}", "unexpected \"extra\" after {{ end");
        expect_parse_error("{{ with .X }}{{ else if .Y }}{{ end }}", "{{ else if }} inside {{ with }}");
        expect_parse_error("{{ /* open }}", "unclosed action");
        expect_parse_error("{{ /* c */ .X }}", "a comment must fill its action");
        expect_parse_error("{{ 12abc }}", "\"12abc\" is not a number");
        expect_parse_error("{{ \"\\x\" }}", "the escape \\x in a string is not supported");
        expect_parse_error("{{ # }}", "unexpected \"#\"");
}

static void expect_render_error(const char *text, const char *msg) {
        _cleanup_(engine_template_freep) EngineTemplate *t = NULL;
        const EngineChatMessage m[] = {{"user", "hi"}};
        QdError err = {};
        Buf out = {};

        assert_int_equal(engine_template_parse(text, &t, &err), 0);
        assert_int_equal(engine_template_render(t, NULL, m, 1, &out, &err), -EINVAL);
        if (!strstr(err.msg, msg))
                fail_msg("'%s': error '%s', want '%s'", text, err.msg, msg);
        buf_free(&out);
}

static void test_render_errors(void **state) {
        expect_render_error("x\n{{ (index .Messages 0).Foo }}",
                            "Template line 2: can't evaluate field Foo of a message");
        expect_render_error("{{ range .Messages }}{{ .Name }}{{ end }}",
                            "can't evaluate field Name of a message");
        expect_render_error("{{ .Prompt.Length }}", "can't evaluate field Length in type string");
        expect_render_error("{{ index .Messages 5 }}", "index out of range: 5");
        expect_render_error("{{ index .Messages \"a\" }}", "an index must be an int");
        expect_render_error("{{ slice .Messages 2 }}", "indices out of range");
        expect_render_error("{{ eq .Prompt 1 }}", "incompatible types for comparison (string and int)");
        expect_render_error("{{ lt true false }}", "a bool cannot be ordered");
        expect_render_error("{{ range .Prompt }}{{ end }}", "range can't iterate over a string");
        expect_render_error("{{ len 3 }}", "len of a int");
        expect_render_error("{{ not 1 2 }}", "not takes 1 argument");
        expect_render_error("{{ .Messages }}", "can't print a list of messages");
        expect_render_error("{{ printf \"%x\" 1 }}", "the verb %x is not supported");
        expect_render_error("{{ eq (index .Messages 0) (index .Messages 0) }}",
                            "a message cannot be compared");

        _cleanup_(engine_template_freep) EngineTemplate *t = NULL;
        const EngineChatMessage bad[] = {{"user", NULL}};
        QdError err = {};
        Buf out = {};
        assert_int_equal(engine_template_parse("x", &t, NULL), 0);
        assert_int_equal(engine_template_render(t, NULL, bad, 1, &out, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "Message 0 has no role or no content"));
}

/* ---- GGUF chat formats ---- */

static void expect_format(EngineChatFormat f, const char *sys, const EngineChatMessage *m, size_t n,
                          const char *want) {
        QdError err = {};
        Buf out = {};

        if (engine_chat_format_render(f, sys, m, n, &out, &err) < 0)
                fail_msg("%s: %s", engine_chat_format_name(f), err.msg);
        if (!streq(out.len ? (char *)out.data : "", want))
                fail_msg("%s rendered as\n'%s'\nwant\n'%s'", engine_chat_format_name(f),
                         out.len ? (char *)out.data : "", want);
        buf_free(&out);
}

static void test_detect(void **state) {
        static const struct {
                const char *jinja;
                EngineChatFormat f;
                const char *sys;
        } cases[] = {
                {"{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                 "'<|im_end|>\\n'}}"
                 "{% endfor %}",
                 ENGINE_CHAT_CHATML, NULL},
                {"{% if messages[0]['role'] != 'system' %}<|im_start|>system\\nYou are a helpful assistant."
                 "<|im_end|>\\n{% endif %}",
                 ENGINE_CHAT_CHATML, "You are a helpful assistant."},
                {"{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
                 "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}",
                 ENGINE_CHAT_LLAMA3, NULL},
                {"{{ bos_token + '[INST] ' + '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}",
                 ENGINE_CHAT_LLAMA2, NULL},
                {"{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% "
                 "endfor %}",
                 ENGINE_CHAT_MISTRAL, NULL},
                {"{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}",
                 ENGINE_CHAT_GEMMA, NULL},
                {"{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + '\\n' + '<|assistant|>' + '\\n'}}",
                 ENGINE_CHAT_PHI3, NULL},
        };
        EngineChatFormat f;
        char *sys;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                assert_int_equal(engine_chat_format_detect(cases[i].jinja, &f, &sys), 0);
                assert_int_equal(f, cases[i].f);
                if (!streq_ptr(sys, cases[i].sys))
                        fail_msg("case %zu: default system '%s', want '%s'", i, strna(sys),
                                 strna(cases[i].sys));
                free(sys);
        }
        assert_int_equal(engine_chat_format_detect("{{ messages }}", &f, &sys), -EOPNOTSUPP);
        assert_int_equal(engine_chat_format_detect("<|im_start|>", &f, NULL), 0);
        assert_string_equal(engine_chat_format_name(ENGINE_CHAT_GEMMA), "gemma");
        assert_null(engine_chat_format_name(_ENGINE_CHAT_FORMAT_MAX));
}

static void test_formats(void **state) {
        const EngineChatMessage sp[] = {
                {"system", " Be brief. "}, {"user", " Hi "}, {"assistant", "Hello!"}, {"user", "Bye"}};
        const EngineChatMessage tool[] = {{"user", "a"}, {"tool", "b"}};
        QdError err = {};
        Buf out = {};

        expect_format(ENGINE_CHAT_CHATML, NULL, chat, ELEMENTSOF(chat), chatml_want);
        expect_format(ENGINE_CHAT_CHATML, "You are terse.", chat + 1, 3, chatml_want);
        expect_format(ENGINE_CHAT_LLAMA3, NULL, sp, 4,
                      "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n");
        expect_format(
                ENGINE_CHAT_LLAMA2, NULL, sp, 4,
                "[INST] <<SYS>>\n Be brief. \n<</SYS>>\n\n Hi [/INST] Hello! </s><s>[INST] Bye [/INST]");
        expect_format(ENGINE_CHAT_MISTRAL, NULL, sp, 4,
                      "[INST]  Be brief. \n\n Hi  [/INST]Hello!</s>[INST] Bye [/INST]");
        expect_format(ENGINE_CHAT_GEMMA, NULL, sp, 4,
                      "<start_of_turn>user\n Be brief. \n\nHi<end_of_turn>\n<start_of_turn>model\nHello!"
                      "<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
        expect_format(ENGINE_CHAT_PHI3, NULL, sp, 4,
                      "<|system|>\n Be brief. <|end|>\n<|user|>\n Hi <|end|>\n<|assistant|>\nHello!<|end|>\n"
                      "<|user|>\nBye<|end|>\n<|assistant|>\n");

        /* Families without a tool or mid-chat system role say so. */
        assert_int_equal(engine_chat_format_render(ENGINE_CHAT_GEMMA, NULL, tool, 2, &out, &err), -EINVAL);
        assert_non_null(
                strstr(err.msg, "The gemma chat format has no place for a 'tool' message (message 1)"));
        assert_int_equal(engine_chat_format_render(_ENGINE_CHAT_FORMAT_MAX, NULL, tool, 2, &out, NULL),
                         -EINVAL);
        buf_free(&out);
}

/* SmolLM2's own Jinja template, read from its GGUF; the rendered chat tokenizes into its control tokens. */
static void test_smollm(void **state) {
        const char *env = getenv("QUANTD_TEST_SMOLLM");
        _cleanup_free_ char *path =
                env ? strdup(env)
                    : strdup_printf("%s/.cache/quantd-test/SmolLM2-135M-Instruct.Q4_1.gguf",
                                    strempty(getenv("HOME")));
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_(engine_vocab_freep) EngineVocab *v = NULL;
        _cleanup_free_ char *jinja = NULL, *sys = NULL;
        _cleanup_free_ int32_t *ids = NULL;
        EngineChatFormat f;
        Buf out = {};
        size_t n, starts = 0;

        assert_int_equal(gguf_open(path, &g, NULL), 0);
        assert_int_equal(engine_vocab_new(g, &v, NULL), 0);
        assert_int_equal(gguf_get_string(g, "tokenizer.chat_template", &jinja), 0);
        assert_int_equal(engine_chat_format_detect(jinja, &f, &sys), 0);
        assert_int_equal(f, ENGINE_CHAT_CHATML);
        assert_string_equal(sys, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");

        assert_int_equal(engine_chat_format_render(f, sys, chat + 1, 1, &out, NULL), 0);
        assert_string_equal((char *)out.data,
                            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                            "trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                            "<|im_start|>assistant\n");
        assert_int_equal(engine_tokenize(v, (char *)out.data, out.len, true, true, &ids, &n), 0);
        for (size_t i = 0; i < n; i++)
                starts += ids[i] == 1;
        assert_int_equal(starts, 3);
        assert_int_equal(ids[0], 1);
        assert_int_equal(ids[n - 1], 198); /* "Ċ", the newline after assistant */
        buf_free(&out);
}

static size_t unhex(const char *hex, char **ret) {
        size_t n = strlen(hex) / 2;
        char *out = malloc(n + 1);
        assert_non_null(out);
        for (size_t i = 0; i < n; i++) {
                unsigned b;
                assert_int_equal(sscanf(hex + 2 * i, "%2x", &b), 1);
                out[i] = (char)b;
        }
        out[n] = 0;
        *ret = out;
        return n;
}

/* The formatters against jinja2's renderings of the families' own templates (make-chat-reference.py): each
 * template is recognised, then the chat rendered natively must match byte for byte. */
static void test_jinja_reference(void **state) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path = strdup_printf("%s/chat-reference.tsv", dir ? dir : "tests/data");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        static char line[65536];
        unsigned rows = 0, families = 0;
        char last[32] = "";

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                _cleanup_free_ char *jinja = NULL, *chat_text = NULL, *want = NULL, *sys = NULL;
                char *field[4] = {line};
                EngineChatMessage msgs[8];
                size_t n = 0;
                EngineChatFormat fmt;
                QdError err = {};
                Buf out = {};

                line[strcspn(line, "\n")] = 0;
                for (size_t i = 1; i < 4; i++) {
                        field[i] = strchr(field[i - 1], '\t');
                        assert_non_null(field[i]);
                        *field[i]++ = 0;
                }
                unhex(field[1], &jinja);
                unhex(field[2], &chat_text);
                unhex(field[3], &want);
                for (char *p = chat_text; *p && n < ELEMENTSOF(msgs); n++) {
                        char *us = strchr(p, '\x1f'), *rs = us ? strchr(us, '\x1e') : NULL;
                        assert_non_null(rs);
                        *us = *rs = 0;
                        msgs[n] = (EngineChatMessage){.role = p, .content = us + 1};
                        p = rs + 1;
                }

                assert_int_equal(engine_chat_format_detect(jinja, &fmt, &sys), 0);
                if (!startswith(field[0], engine_chat_format_name(fmt)) &&
                    !(streq(field[0], "smollm") && fmt == ENGINE_CHAT_CHATML))
                        fail_msg("template %s recognised as %s", field[0], engine_chat_format_name(fmt));
                if (engine_chat_format_render(fmt, sys, msgs, n, &out, &err) < 0)
                        fail_msg("%s: %s", field[0], err.msg);
                if (!streq(out.len ? (char *)out.data : "", want))
                        fail_msg("%s rendered as\n'%s'\nwant\n'%s'", field[0],
                                 out.len ? (char *)out.data : "", want);
                buf_free(&out);
                rows++;
                if (!streq(last, field[0])) {
                        families++;
                        snprintf(last, sizeof(last), "%.31s", field[0]);
                }
        }
        assert_true(rows >= 20);
        assert_int_equal(families, 6);
}

/* The template engine against Go's own text/template (make-template-reference.go): 20 templates, from
 * Ollama-style chat templates to one per language feature, over 6 chats each; where Go fails, we must fail
 * too. */
static void test_go_reference(void **state) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path = strdup_printf("%s/template-reference.tsv", dir ? dir : "tests/data");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        static char line[65536];
        unsigned rows = 0, failures = 0;

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                _cleanup_free_ char *text = NULL, *system = NULL, *chat_text = NULL, *want = NULL;
                _cleanup_(engine_template_freep) EngineTemplate *t = NULL;
                char *field[5] = {line};
                EngineChatMessage msgs[8];
                size_t n = 0;
                QdError err = {};
                Buf out = {};
                int r;

                line[strcspn(line, "\n")] = 0;
                for (size_t i = 1; i < 5; i++) {
                        field[i] = strchr(field[i - 1], '\t');
                        assert_non_null(field[i]);
                        *field[i]++ = 0;
                }
                unhex(field[1], &text);
                unhex(field[2], &system);
                unhex(field[3], &chat_text);
                for (char *p = chat_text; *p && n < ELEMENTSOF(msgs); n++) {
                        char *us = strchr(p, '\x1f'), *rs = us ? strchr(us, '\x1e') : NULL;
                        assert_non_null(rs);
                        *us = *rs = 0;
                        msgs[n] = (EngineChatMessage){.role = p, .content = us + 1};
                        p = rs + 1;
                }

                r = engine_template_parse(text, &t, &err);
                if (r >= 0)
                        r = engine_template_render(t, system[0] ? system : NULL, msgs, n, &out, &err);
                if (streq(field[4], "-")) {
                        if (r >= 0)
                                fail_msg("%s (row %u): Go fails, we rendered '%s'", field[0], rows,
                                         out.len ? (char *)out.data : "");
                        assert_int_equal(r, -EINVAL);
                        assert_true(err.msg[0] != 0);
                        failures++;
                } else {
                        unhex(field[4], &want);
                        if (r < 0)
                                fail_msg("%s (row %u): %s", field[0], rows, err.msg);
                        if (!streq(out.len ? (char *)out.data : "", want))
                                fail_msg("%s (row %u) rendered as\n'%s'\nwant\n'%s'", field[0], rows,
                                         out.len ? (char *)out.data : "", want);
                }
                buf_free(&out);
                rows++;
        }
        assert_true(rows >= 100);
        assert_true(failures >= 20);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_chatml_messages),  cmocka_unit_test(test_legacy),
                cmocka_unit_test(test_llama31_messages), cmocka_unit_test(test_language),
                cmocka_unit_test(test_parse_errors),     cmocka_unit_test(test_render_errors),
                cmocka_unit_test(test_detect),           cmocka_unit_test(test_formats),
                cmocka_unit_test(test_smollm),           cmocka_unit_test(test_jinja_reference),
                cmocka_unit_test(test_go_reference),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
