/* SPDX-License-Identifier: MIT */
/* client/modelfile.c: every instruction, the string forms, path resolution, formatting and every error. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <fcntl.h>
#include <sys/stat.h>

#include "client.h"

static Modelfile *parse_ok(const char *text, const char *dir) {
        Modelfile *m = NULL;
        QdError e = {};

        int r = modelfile_parse(text, strlen(text), "Modelfile", dir, &m, &e);
        if (r < 0)
                fail_msg("unexpected error %d: %s", r, e.msg);
        assert_non_null(m);
        return m;
}

/* Parses text that must fail with -EBADMSG and exactly this message. */
static void parse_fails(const char *text, const char *message) {
        Modelfile *m = NULL;
        QdError e = {};

        int r = modelfile_parse(text, strlen(text), "Modelfile", NULL, &m, &e);
        if (r != -EBADMSG)
                fail_msg("expected -EBADMSG for \"%s\", got %d (%s)", text, r, e.msg);
        assert_null(m);
        assert_string_equal(e.msg, message);
}

static void test_minimal(void **state) {
        _cleanup_(modelfile_freep) Modelfile *m = parse_ok("FROM llama3.2\n", NULL);

        assert_string_equal(m->from, "llama3.2");
        assert_null(m->from_path);
        assert_int_equal(m->from_line, 1);
        assert_null(m->template_);
        assert_null(m->system);
        assert_null(m->adapter);
        assert_null(m->requires);
        assert_null(m->licenses);
        assert_int_equal(m->n_messages, 0);
        assert_int_equal(m->params.n, 0);
        assert_null(m->warnings);

        /* No final newline, and a name with host and tag. */
        _cleanup_(modelfile_freep) Modelfile *m2 = parse_ok("FROM hf.co/org/repo:Q4_K_M", NULL);
        assert_string_equal(m2->from, "hf.co/org/repo:Q4_K_M");
        assert_null(m2->from_path);
}

static void test_every_instruction(void **state) {
        const char *text = "# A full Modelfile\n"
                           "FROM llama3.2:1b\n"
                           "PARAMETER temperature 0.2\n"
                           "PARAMETER num_ctx 4096\n"
                           "PARAMETER stop \"<|im_end|>\"\n"
                           "PARAMETER stop <|im_start|>\n"
                           "PARAMETER penalize_newline false\n"
                           "TEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n"
                           "{{ .System }}<|im_end|>\n"
                           "{{ end }}\"\"\"\n"
                           "SYSTEM You are Mario from Super Mario Bros.\n"
                           "ADAPTER ./lora.gguf\n"
                           "LICENSE \"\"\"MIT\"\"\"\n"
                           "LICENSE Apache-2.0\n"
                           "MESSAGE user Is Toronto in Canada?\n"
                           "MESSAGE assistant \"yes\"\n"
                           "MESSAGE system \"\"\"be brief\"\"\"\n"
                           "REQUIRES 0.6.0\n";
        _cleanup_(modelfile_freep) Modelfile *m = parse_ok(text, "/models");

        assert_string_equal(m->from, "llama3.2:1b");
        assert_int_equal(m->from_line, 2);
        assert_int_equal(m->params.n, 5);
        assert_string_equal(m->params.items[0].info->name, "temperature");
        assert_true(m->params.items[0].f == 0.2);
        assert_int_equal(param_set_get(&m->params, "num_ctx")->i, 4096);
        assert_string_equal(m->params.items[2].s, "<|im_end|>");
        assert_string_equal(m->params.items[3].s, "<|im_start|>");
        assert_false(param_set_get(&m->params, "penalize_newline")->b);
        assert_string_equal(m->template_, "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}");
        assert_string_equal(m->system, "You are Mario from Super Mario Bros.");
        assert_string_equal(m->adapter, "./lora.gguf");
        assert_string_equal(m->adapter_path, "/models/./lora.gguf");
        assert_string_equal(m->licenses[0], "MIT");
        assert_string_equal(m->licenses[1], "Apache-2.0");
        assert_null(m->licenses[2]);
        assert_int_equal(m->n_messages, 3);
        assert_int_equal(m->messages[0].role, MESSAGE_USER);
        assert_string_equal(m->messages[0].content, "Is Toronto in Canada?");
        assert_int_equal(m->messages[1].role, MESSAGE_ASSISTANT);
        assert_string_equal(m->messages[1].content, "yes");
        assert_int_equal(m->messages[2].role, MESSAGE_SYSTEM);
        assert_string_equal(m->messages[2].content, "be brief");
        assert_string_equal(m->requires, "0.6.0");
}

static void test_case_insensitive(void **state) {
        _cleanup_(modelfile_freep) Modelfile *m = parse_ok("from base\n"
                                                           "Parameter Temperature 1\n"
                                                           "sYsTeM hi\n"
                                                           "template t\n"
                                                           "license l\n"
                                                           "message USER u\n"
                                                           "Message Assistant a\n"
                                                           "requires 1\n"
                                                           "adapter /a\n",
                                                           NULL);
        assert_string_equal(m->from, "base");
        assert_string_equal(m->params.items[0].info->name, "temperature");
        assert_string_equal(m->system, "hi");
        assert_string_equal(m->template_, "t");
        assert_string_equal(m->licenses[0], "l");
        assert_int_equal(m->messages[0].role, MESSAGE_USER);
        assert_int_equal(m->messages[1].role, MESSAGE_ASSISTANT);
        assert_string_equal(m->requires, "1");
        assert_string_equal(m->adapter_path, "/a");
}

static void test_comments_and_blanks(void **state) {
        _cleanup_(modelfile_freep) Modelfile *m = parse_ok("\n"
                                                           "   # indented comment\n"
                                                           "#FROM not-this\n"
                                                           "\t\n"
                                                           "  \tFROM   base   \n"
                                                           "SYSTEM you are #1 # not a comment\n"
                                                           "\n\n",
                                                           NULL);
        assert_string_equal(m->from, "base");
        assert_int_equal(m->from_line, 5);
        assert_string_equal(m->system, "you are #1 # not a comment");
}

static void test_strings(void **state) {
        _cleanup_(modelfile_freep) Modelfile *m = parse_ok("FROM base\n"
                                                           "SYSTEM \"  keep the blanks  \"   \n"
                                                           "TEMPLATE \"say \\\"hi\\\" \\\\ and \\n stays\"\n"
                                                           "LICENSE \"first\n"
                                                           "second\"\n"
                                                           "LICENSE \"\"\n"
                                                           "LICENSE \"\"\"\"\"\"\n"
                                                           "LICENSE \"\"\"a \"quoted\" \\word\\\"\"\"\n"
                                                           "MESSAGE user \"\"\"\n"
                                                           "  indented\n"
                                                           "\"\"\"\n",
                                                           NULL);
        assert_string_equal(m->system, "  keep the blanks  ");
        assert_string_equal(m->template_, "say \"hi\" \\ and \\n stays");
        assert_string_equal(m->licenses[0], "first\nsecond");
        assert_string_equal(m->licenses[1], "");
        assert_string_equal(m->licenses[2], "");
        assert_string_equal(m->licenses[3], "a \"quoted\" \\word\\");
        assert_string_equal(m->messages[0].content, "\n  indented\n");
}

static void test_crlf_and_bom(void **state) {
        _cleanup_(modelfile_freep) Modelfile *m = parse_ok("\xEF\xBB\xBF"
                                                           "FROM base\r\n"
                                                           "SYSTEM plain  \r\n"
                                                           "TEMPLATE \"\"\"a\r\nb\"\"\"\r\n"
                                                           "PARAMETER stop \"x\"\r\n",
                                                           NULL);
        assert_string_equal(m->from, "base");
        assert_string_equal(m->system, "plain");
        assert_string_equal(m->template_, "a\nb");
        assert_string_equal(m->params.items[0].s, "x");
}

static void test_parameters(void **state) {
        _cleanup_(modelfile_freep) Modelfile *m = parse_ok("FROM base\n"
                                                           "PARAMETER seed 1\n"
                                                           "PARAMETER stop a\n"
                                                           "PARAMETER seed 2\n"
                                                           "PARAMETER stop b\n"
                                                           "PARAMETER f16_kv true\n"
                                                           "PARAMETER num_gqa 8\n"
                                                           "PARAMETER\tnum_predict\t-1\n",
                                                           NULL);
        assert_int_equal(m->params.n, 4);
        assert_int_equal(param_set_get(&m->params, "seed")->i, 2);
        assert_string_equal(m->params.items[1].s, "a");
        assert_string_equal(m->params.items[2].s, "b");
        assert_int_equal(param_set_get(&m->params, "num_predict")->i, -1);
        assert_null(param_set_get(&m->params, "f16_kv"));
        assert_string_equal(m->warnings[0], "Modelfile:6:11: parameter f16_kv is no longer used, ignoring it");
        assert_string_equal(m->warnings[1], "Modelfile:7:11: parameter num_gqa is no longer used, ignoring it");
        assert_null(m->warnings[2]);
}

static void test_paths(void **state) {
        char dir[] = "/tmp/test-modelfile-XXXXXX";
        assert_non_null(mkdtemp(dir));
        _cleanup_free_ char *weights = strdup_printf("%s/weights", dir);
        int fd = open(weights, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        close(fd);

        static const struct {
                const char *from, *resolved; /* resolved: "@" stands for the folder, NULL for a model name */
        } cases[] = {
                { "llama3.2", NULL },
                { "weights", "@/weights" },           /* exists next to the Modelfile */
                { "./model.gguf", "@/./model.gguf" }, /* written as a path: a path even when missing */
                { "../x", "@/../x" },
                { "sub/model.GGUF", "@/sub/model.GGUF" },
                { "/abs/file", "/abs/file" },
                { "~/m.gguf", "/home/tester/m.gguf" },
                { "~", "/home/tester" },
                { ".", "@/." },
                { "library/qwen:0.5b", NULL },
        };
        setenv("HOME", "/home/tester", 1);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *text = strdup_printf("FROM %s\n", cases[i].from);
                _cleanup_(modelfile_freep) Modelfile *m = parse_ok(text, dir);
                assert_string_equal(m->from, cases[i].from);
                if (!cases[i].resolved) {
                        assert_null(m->from_path);
                        continue;
                }
                _cleanup_free_ char *want = cases[i].resolved[0] == '@'
                                                    ? strdup_printf("%s%s", dir, cases[i].resolved + 1)
                                                    : strdup(cases[i].resolved);
                assert_string_equal(m->from_path, want);
        }

        /* Without a folder, or with ".", relative paths stay relative; a folder ending in / adds none. */
        _cleanup_(modelfile_freep) Modelfile *m1 = parse_ok("FROM ./a.gguf\nADAPTER b\n", NULL);
        assert_string_equal(m1->from_path, "./a.gguf");
        assert_string_equal(m1->adapter_path, "b");
        _cleanup_(modelfile_freep) Modelfile *m2 = parse_ok("FROM ./a.gguf\n", ".");
        assert_string_equal(m2->from_path, "./a.gguf");
        _cleanup_(modelfile_freep) Modelfile *m3 = parse_ok("FROM a.gguf\n", "/");
        assert_string_equal(m3->from_path, "/a.gguf");

        /* Without a usable HOME, ~ is taken literally. */
        unsetenv("HOME");
        _cleanup_(modelfile_freep) Modelfile *m4 = parse_ok("FROM ~/x.gguf\n", NULL);
        assert_string_equal(m4->from_path, "~/x.gguf");

        assert_int_equal(unlink(weights), 0);
        assert_int_equal(rmdir(dir), 0);
}

static void test_errors(void **state) {
        static const struct {
                const char *text, *message;
        } cases[] = {
                /* instructions */
                { "FORM base\n", "Modelfile:1:1: expected an instruction (FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, "
                                 "LICENSE, MESSAGE or REQUIRES), found 'FORM'" },
                { "FROM a\n  123 x\n", "Modelfile:2:3: expected an instruction (FROM, PARAMETER, TEMPLATE, SYSTEM, "
                                       "ADAPTER, LICENSE, MESSAGE or REQUIRES), found '123'" },
                { "FROM\"x\"\n", "Modelfile:1:1: expected an instruction (FROM, PARAMETER, TEMPLATE, SYSTEM, "
                                 "ADAPTER, LICENSE, MESSAGE or REQUIRES), found 'FROM\"x\"'" },
                { "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOPQRSTUVWXYZ\n",
                  "Modelfile:1:1: expected an instruction (FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, "
                  "MESSAGE or REQUIRES), found 'ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJK...'" },
                /* missing values */
                { "FROM\n", "Modelfile:1:5: expected a model name or a path after FROM" },
                { "FROM    \n", "Modelfile:1:9: expected a model name or a path after FROM" },
                { "FROM", "Modelfile:1:5: expected a model name or a path after FROM" },
                { "FROM \"\"\n", "Modelfile:1:6: expected a model name or a path after FROM, found \"\"" },
                { "FROM a\nTEMPLATE\n", "Modelfile:2:9: expected a template after TEMPLATE" },
                { "FROM a\nSYSTEM \n", "Modelfile:2:8: expected a system message after SYSTEM" },
                { "FROM a\nADAPTER\n", "Modelfile:2:8: expected a path after ADAPTER" },
                { "FROM a\nADAPTER \"\"\n", "Modelfile:2:9: expected a path after ADAPTER, found \"\"" },
                { "FROM a\nLICENSE\r\n", "Modelfile:2:8: expected the license's text after LICENSE" },
                { "FROM a\nREQUIRES\n", "Modelfile:2:9: expected a version after REQUIRES" },
                /* once-only instructions */
                { "FROM a\nFROM b\n", "Modelfile:2:1: expected one FROM, found a second (the first is on line 1)" },
                { "FROM a\nTEMPLATE x\n\ntemplate y\n",
                  "Modelfile:4:1: expected one TEMPLATE, found a second (the first is on line 2)" },
                { "FROM a\nSYSTEM x\nSYSTEM y\n",
                  "Modelfile:3:1: expected one SYSTEM, found a second (the first is on line 2)" },
                { "FROM a\nADAPTER x\nADAPTER y\n",
                  "Modelfile:3:1: expected one ADAPTER, found a second (the first is on line 2)" },
                { "FROM a\nREQUIRES 1\nREQUIRES 2\n",
                  "Modelfile:3:1: expected one REQUIRES, found a second (the first is on line 2)" },
                /* PARAMETER */
                { "FROM a\nPARAMETER\n", "Modelfile:2:10: expected a parameter name after PARAMETER" },
                { "FROM a\nPARAMETER  temprature 1\n",
                  "Modelfile:2:12: expected a parameter name, found 'temprature' (modelfile(5) lists them)" },
                { "FROM a\nPARAMETER num_ctx\n", "Modelfile:2:18: expected a value (integer) for num_ctx" },
                { "FROM a\nPARAMETER top_p   \n", "Modelfile:2:19: expected a value (number) for top_p" },
                { "FROM a\nPARAMETER num_ctx 4k\n", "Modelfile:2:19: expected an integer for num_ctx, found '4k'" },
                { "FROM a\nPARAMETER seed 1e3\n", "Modelfile:2:16: expected an integer for seed, found '1e3'" },
                { "FROM a\nPARAMETER seed 9223372036854775808\n",
                  "Modelfile:2:16: expected an integer that fits in 64 bits for seed, found '9223372036854775808'" },
                { "FROM a\nPARAMETER temperature warm\n",
                  "Modelfile:2:23: expected a number for temperature, found 'warm'" },
                { "FROM a\nPARAMETER numa \"yes\"\n", "Modelfile:2:16: expected a boolean for numa, found 'yes'" },
                { "FROM a\nPARAMETER stop \"x\" y\n",
                  "Modelfile:2:20: expected the end of the line after PARAMETER's closing quote" },
                /* MESSAGE */
                { "FROM a\nMESSAGE\n", "Modelfile:2:8: expected a role (system, user or assistant) after MESSAGE" },
                { "FROM a\nMESSAGE bot hello\n",
                  "Modelfile:2:9: expected a role (system, user or assistant), found 'bot'" },
                { "FROM a\nMESSAGE user\n", "Modelfile:2:13: expected the user message's text" },
                { "FROM a\nMESSAGE assistant  \n", "Modelfile:2:20: expected the assistant message's text" },
                { "FROM a\nMESSAGE user \"é\" x\n",
                  "Modelfile:2:18: expected the end of the line after MESSAGE's closing quote" },
                /* strings */
                { "FROM a\nSYSTEM \"open\n\nstill open\n", "Modelfile:2:8: expected a closing \" for the text opened here" },
                { "FROM a\nSYSTEM \"escaped \\\"\n", "Modelfile:2:8: expected a closing \" for the text opened here" },
                { "FROM a\n\nTEMPLATE \"\"\"{{ .Prompt }}\n\"\"\n",
                  "Modelfile:3:10: expected a closing \"\"\" for the text opened here" },
                { "FROM a\nTEMPLATE \"\"\"x\"\"\" extra\n",
                  "Modelfile:2:18: expected the end of the line after TEMPLATE's closing quote" },
                { "FROM a\nSYSTEM \"\"\"x\"\"\"\"\n",
                  "Modelfile:2:15: expected the end of the line after SYSTEM's closing quote" },
                { "FROM \"a\"b\n", "Modelfile:1:9: expected the end of the line after FROM's closing quote" },
                /* no FROM */
                { "", "Modelfile: expected a FROM instruction naming the base model" },
                { "# only a comment\n\n", "Modelfile: expected a FROM instruction naming the base model" },
                { "SYSTEM x\n", "Modelfile: expected a FROM instruction naming the base model" },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                parse_fails(cases[i].text, cases[i].message);

        /* A NUL byte means this is not a text file. */
        Modelfile *m = NULL;
        QdError e = {};
        assert_int_equal(modelfile_parse("FROM a\0b", 8, "blob", NULL, &m, &e), -EBADMSG);
        assert_string_equal(e.msg, "blob: expected text, found a NUL byte: is this a Modelfile?");
        assert_null(m);
}

static void test_default_filename(void **state) {
        Modelfile *m = NULL;
        QdError e = {};

        assert_int_equal(modelfile_parse("SYSTEM x", 8, NULL, NULL, &m, &e), -EBADMSG);
        assert_string_equal(e.msg, "Modelfile: expected a FROM instruction naming the base model");
        /* No QdError: the code alone. */
        assert_int_equal(modelfile_parse("FORM x", 6, NULL, NULL, &m, NULL), -EBADMSG);
}

static void test_load(void **state) {
        char dir[] = "/tmp/test-modelfile-XXXXXX";
        assert_non_null(mkdtemp(dir));
        _cleanup_free_ char *path = strdup_printf("%s/Modelfile", dir);
        _cleanup_free_ char *big = strdup_printf("%s/big", dir);
        Modelfile *m = NULL;
        QdError e = {};

        /* A file that exists. */
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs("FROM ./model.gguf\nADAPTER lora.gguf\nSYSTEM s\n", f);
        fclose(f);
        assert_int_equal(modelfile_load(path, &m, &e), 0);
        _cleanup_free_ char *want = strdup_printf("%s/./model.gguf", dir);
        assert_string_equal(m->from_path, want);
        _cleanup_free_ char *want_adapter = strdup_printf("%s/lora.gguf", dir);
        assert_string_equal(m->adapter_path, want_adapter);
        m = modelfile_free(m);
        assert_null(m);

        /* A syntax error names the file as given. */
        f = fopen(path, "we");
        assert_non_null(f);
        fputs("FROM a\nFROM b\n", f);
        fclose(f);
        assert_int_equal(modelfile_load(path, &m, &e), -EBADMSG);
        _cleanup_free_ char *msg = strdup_printf("%s:2:1: expected one FROM, found a second (the first is on line 1)",
                                                 path);
        assert_string_equal(e.msg, msg);
        qd_error_clear(&e);

        /* An empty file. */
        f = fopen(path, "we");
        assert_non_null(f);
        fclose(f);
        assert_int_equal(modelfile_load(path, &m, &e), -EBADMSG);
        qd_error_clear(&e);

        /* A missing file. */
        _cleanup_free_ char *missing = strdup_printf("%s/nope", dir);
        assert_int_equal(modelfile_load(missing, &m, &e), -ENOENT);
        _cleanup_free_ char *msg2 = strdup_printf("Cannot open Modelfile '%s': No such file or directory.", missing);
        assert_string_equal(e.msg, msg2);
        qd_error_clear(&e);

        /* A folder opens but does not read. */
        assert_int_equal(modelfile_load(dir, &m, &e), -EISDIR);
        _cleanup_free_ char *msg3 = strdup_printf("Cannot read Modelfile '%s': Is a directory.", dir);
        assert_string_equal(e.msg, msg3);
        qd_error_clear(&e);

        /* A huge file is refused before it is parsed. */
        int fd = open(big, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 17 * 1024 * 1024), 0);
        close(fd);
        assert_int_equal(modelfile_load(big, &m, &e), -EMSGSIZE);
        _cleanup_free_ char *msg4 = strdup_printf("%s: expected a Modelfile, found a file over 16 MiB", big);
        assert_string_equal(e.msg, msg4);
        qd_error_clear(&e);

        /* A relative name without a folder resolves against the current directory. */
        assert_int_equal(chdir(dir), 0);
        f = fopen("Modelfile", "we");
        assert_non_null(f);
        fputs("FROM ./x.gguf\n", f);
        fclose(f);
        assert_int_equal(modelfile_load("Modelfile", &m, &e), 0);
        assert_string_equal(m->from_path, "./x.gguf");
        m = modelfile_free(m);
        assert_int_equal(chdir("/"), 0);

        assert_int_equal(unlink(path), 0);
        assert_int_equal(unlink(big), 0);
        assert_int_equal(rmdir(dir), 0);
}

static void check_quote(const char *s, const char *expected) {
        Buf b = {};

        assert_int_equal(modelfile_quote(s, &b), 0);
        assert_string_equal(b.data ? (char *)b.data : "", expected);
        buf_free(&b);

        /* And it reads back as s. */
        _cleanup_free_ char *text = strdup_printf("FROM a\nSYSTEM %s\n", expected);
        _cleanup_(modelfile_freep) Modelfile *m = parse_ok(text, NULL);
        assert_string_equal(m->system, s);
}

static void test_quote(void **state) {
        check_quote("plain text", "plain text");
        check_quote("", "\"\"");
        check_quote(" lead", "\" lead\"");
        check_quote("trail\t", "\"trail\t\"");
        check_quote("two\nlines", "\"\"\"two\nlines\"\"\"");
        check_quote("\"starts with a quote", "\"\"\"\"starts with a quote\"\"\"");
        check_quote("ends with a quote\"", "ends with a quote\"");
        check_quote("line\nends with a quote\"", "\"line\nends with a quote\\\"\"");
        check_quote("has \"\"\" inside\n", "\"has \\\"\\\"\\\" inside\n\"");
        check_quote("back\\slash\n", "\"\"\"back\\slash\n\"\"\"");
        check_quote(" a\\b", "\"\"\" a\\b\"\"\"");
        check_quote(" \"x", "\"\"\" \"x\"\"\"");
        check_quote("# not a comment", "# not a comment");
}

static void test_format_round_trip(void **state) {
        const char *text = "FROM /models/base.gguf\n"
                           "ADAPTER /models/lora.gguf\n"
                           "TEMPLATE \"\"\"{{ .System }}\n{{ .Prompt }}\"\"\"\n"
                           "SYSTEM \"  padded \"\n"
                           "PARAMETER temperature 0.7\n"
                           "PARAMETER stop \"<|im_end|>\"\n"
                           "PARAMETER stop \"\n\"\n"
                           "PARAMETER use_mmap 0\n"
                           "PARAMETER seed -3\n"
                           "MESSAGE user hi\n"
                           "MESSAGE assistant \"\"\"hello\nthere\"\"\"\n"
                           "LICENSE MIT\n"
                           "LICENSE \"\"\"long\nlicense\"\"\"\n"
                           "REQUIRES 0.5.0\n";
        _cleanup_(modelfile_freep) Modelfile *m = parse_ok(text, NULL);
        _cleanup_free_ char *out = NULL;

        assert_int_equal(modelfile_format(m, &out), 0);
        assert_string_equal(out, "FROM /models/base.gguf\n"
                                 "ADAPTER /models/lora.gguf\n"
                                 "TEMPLATE \"\"\"{{ .System }}\n{{ .Prompt }}\"\"\"\n"
                                 "SYSTEM \"  padded \"\n"
                                 "PARAMETER temperature 0.7\n"
                                 "PARAMETER stop <|im_end|>\n"
                                 "PARAMETER stop \"\"\"\n\"\"\"\n"
                                 "PARAMETER use_mmap false\n"
                                 "PARAMETER seed -3\n"
                                 "MESSAGE user hi\n"
                                 "MESSAGE assistant \"\"\"hello\nthere\"\"\"\n"
                                 "LICENSE MIT\n"
                                 "LICENSE \"\"\"long\nlicense\"\"\"\n"
                                 "REQUIRES 0.5.0\n");

        _cleanup_(modelfile_freep) Modelfile *again = parse_ok(out, NULL);
        _cleanup_free_ char *out2 = NULL;
        assert_int_equal(modelfile_format(again, &out2), 0);
        assert_string_equal(out, out2);

        /* A model name stays a name. */
        _cleanup_(modelfile_freep) Modelfile *named = parse_ok("FROM qwen2:0.5b\n", NULL);
        _cleanup_free_ char *out3 = NULL;
        assert_int_equal(modelfile_format(named, &out3), 0);
        assert_string_equal(out3, "FROM qwen2:0.5b\n");
}

static void test_example(void **state) {
        /* The Modelfile that examples/ ships parses, with its paths relative to examples/. */
        const char *data = getenv("QUANTD_TEST_DATA");
        assert_non_null(data);
        _cleanup_free_ char *path = strdup_printf("%s/../../examples/Modelfile", data);
        _cleanup_(modelfile_freep) Modelfile *m = NULL;
        QdError e = {};

        if (modelfile_load(path, &m, &e) < 0)
                fail_msg("%s", e.msg);
        assert_non_null(endswith(m->from_path, "/examples/./SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_non_null(strstr(m->template_, "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>"));
        assert_non_null(startswith(m->system, "You are a helpful AI assistant named SmolLM"));
        assert_int_equal(m->params.n, 4);
        assert_string_equal(m->params.items[1].s, "<|im_end|>");
        assert_string_equal(m->licenses[0], "Apache-2.0");
        assert_null(m->warnings);
}

static void test_roles(void **state) {
        assert_string_equal(message_role_to_string(MESSAGE_SYSTEM), "system");
        assert_string_equal(message_role_to_string(MESSAGE_USER), "user");
        assert_string_equal(message_role_to_string(MESSAGE_ASSISTANT), "assistant");
        assert_null(message_role_to_string(_MESSAGE_ROLE_MAX));
        assert_null(message_role_to_string(_MESSAGE_ROLE_INVALID));
        assert_int_equal(message_role_from_string("ASSISTANT"), MESSAGE_ASSISTANT);
        assert_int_equal(message_role_from_string("tool"), _MESSAGE_ROLE_INVALID);
        assert_int_equal(message_role_from_string(NULL), _MESSAGE_ROLE_INVALID);
        assert_null(modelfile_free(NULL));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_minimal),           cmocka_unit_test(test_every_instruction),
                cmocka_unit_test(test_case_insensitive),  cmocka_unit_test(test_comments_and_blanks),
                cmocka_unit_test(test_strings),           cmocka_unit_test(test_crlf_and_bom),
                cmocka_unit_test(test_parameters),        cmocka_unit_test(test_paths),
                cmocka_unit_test(test_errors),            cmocka_unit_test(test_default_filename),
                cmocka_unit_test(test_load),              cmocka_unit_test(test_quote),
                cmocka_unit_test(test_format_round_trip), cmocka_unit_test(test_roles),
                cmocka_unit_test(test_example),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
