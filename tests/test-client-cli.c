/* SPDX-License-Identifier: MIT */
/* client/cli.c and client/chat.c: verbs, options, usage errors, exit codes, prompts and chat input. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include "client.h"

/* Parses a command line given as one string split at blanks (no quoting needed by these tests). */
static int parse(Command *c, const char *line, QdError *e) {
        _cleanup_free_ char *copy = strdup(line);
        char *argv[32];
        int argc = 0;

        for (char *t = strtok(copy, " "); t && argc < 31; t = strtok(NULL, " "))
                argv[argc++] = t;
        argv[argc] = NULL;
        return command_parse(c, argc, argv, e);
}

static void parse_fails(const char *line, int error, const char *message) {
        Command c;
        QdError e = {};

        int r = parse(&c, line, &e);
        if (r != error)
                fail_msg("'%s': expected %d, got %d (%s)", line, error, r, e.msg);
        assert_string_equal(e.msg, message);
        command_done(&c);
}

static void test_verbs(void **state) {
        for (int i = 0; i < _VERB_MAX; i++)
                assert_int_equal(verb_from_string(verb_to_string(i)), i);
        assert_int_equal(verb_from_string("ls"), VERB_LIST);
        assert_int_equal(verb_from_string("list"), VERB_LIST);
        assert_int_equal(verb_from_string("serve"), _VERB_INVALID);
        assert_int_equal(verb_from_string(NULL), _VERB_INVALID);
        assert_null(verb_to_string(_VERB_MAX));
        assert_null(verb_to_string(_VERB_INVALID));
}

static void test_run(void **state) {
        Command c;
        QdError e = {};

        assert_int_equal(parse(&c, "run llama3.2", &e), 0);
        assert_int_equal(c.verb, VERB_RUN);
        assert_int_equal(c.n_args, 1);
        assert_string_equal(c.args[0], "llama3.2");
        assert_false(c.verbose);
        assert_false(c.has_keepalive);
        assert_null(c.format);
        command_done(&c);

        /* Options before, between and after the arguments. */
        assert_int_equal(parse(&c,
                               "run -o temperature=0 m why is the sky blue --verbose -o seed=1 -o num_predict=80 "
                               "--format json --keepalive 10m --nowordwrap -o stop=a -o stop=b --insecure",
                               &e),
                         0);
        assert_int_equal(c.n_args, 6);
        assert_string_equal(c.args[0], "m");
        assert_string_equal(c.args[5], "blue");
        assert_null(c.args[6]);
        assert_true(c.verbose);
        assert_true(c.nowordwrap);
        assert_true(c.insecure);
        assert_string_equal(c.format, "json");
        assert_true(c.has_keepalive);
        assert_true(c.keepalive_ns == 600LL * 1000000000LL);
        assert_true(param_set_get(&c.params, "temperature")->f == 0.0);
        assert_int_equal(param_set_get(&c.params, "seed")->i, 1);
        assert_int_equal(param_set_get(&c.params, "num_predict")->i, 80);
        assert_int_equal(c.params.n, 5);
        command_done(&c);

        /* Grouped short options, --option=, "--" ends the options, "-" is an argument. */
        assert_int_equal(parse(&c, "run -vo seed=3 m --option=top_k=5 -- -5 plus -", &e), 0);
        assert_true(c.verbose);
        assert_int_equal(param_set_get(&c.params, "seed")->i, 3);
        assert_int_equal(param_set_get(&c.params, "top_k")->i, 5);
        assert_int_equal(c.n_args, 4);
        assert_string_equal(c.args[1], "-5");
        assert_string_equal(c.args[3], "-");
        command_done(&c);

        /* Forever and never. */
        assert_int_equal(parse(&c, "run m --keepalive -1", &e), 0);
        assert_true(c.keepalive_ns < 0);
        command_done(&c);
        assert_int_equal(parse(&c, "run m --keepalive=0", &e), 0);
        assert_true(c.has_keepalive && c.keepalive_ns == 0);
        command_done(&c);
}

static void test_other_verbs(void **state) {
        Command c;
        QdError e = {};

        assert_int_equal(parse(&c, "create mine", &e), 0);
        assert_string_equal(c.file, "Modelfile");
        assert_null(c.quantize);
        command_done(&c);
        assert_int_equal(parse(&c, "create mine -f /tmp/M -q q4_K_M", &e), 0);
        assert_string_equal(c.file, "/tmp/M");
        assert_string_equal(c.quantize, "q4_K_M");
        command_done(&c);
        assert_int_equal(parse(&c, "create --file=a --file=b --quantize q8_0 --quantize=q4_0 x", &e), 0);
        assert_string_equal(c.file, "b");
        assert_string_equal(c.quantize, "q4_0");
        command_done(&c);

        assert_int_equal(parse(&c, "ls --json", &e), 0);
        assert_int_equal(c.verb, VERB_LIST);
        assert_true(c.json);
        command_done(&c);
        assert_int_equal(parse(&c, "ps", &e), 0);
        assert_false(c.json);
        command_done(&c);

        static const struct {
                const char *line;
                ShowWhat what;
        } shows[] = {
                { "show m", SHOW_INFO },
                { "show m --modelfile", SHOW_MODELFILE },
                { "show --parameters m", SHOW_PARAMETERS },
                { "show m --template", SHOW_TEMPLATE },
                { "show m --system", SHOW_SYSTEM },
                { "show m --license --license", SHOW_LICENSE },
        };
        for (size_t i = 0; i < ELEMENTSOF(shows); i++) {
                assert_int_equal(parse(&c, shows[i].line, &e), 0);
                assert_int_equal(c.show, shows[i].what);
                command_done(&c);
        }
        assert_int_equal(parse(&c, "show -v --json m", &e), 0);
        assert_true(c.verbose && c.json);
        command_done(&c);

        assert_int_equal(parse(&c, "cp a b", &e), 0);
        assert_string_equal(c.args[1], "b");
        command_done(&c);
        assert_int_equal(parse(&c, "rm a b c", &e), 0);
        assert_int_equal(c.n_args, 3);
        command_done(&c);
        assert_int_equal(parse(&c, "pull --insecure m", &e), 0);
        assert_true(c.insecure);
        command_done(&c);
        assert_int_equal(parse(&c, "push m", &e), 0);
        command_done(&c);
        assert_int_equal(parse(&c, "stop m", &e), 0);
        command_done(&c);
        assert_int_equal(parse(&c, "version", &e), 0);
        assert_int_equal(c.n_args, 0);
        assert_non_null(c.args);
        command_done(&c);

        /* --help wins over missing arguments. */
        assert_int_equal(parse(&c, "cp --help", &e), 0);
        assert_true(c.help);
        command_done(&c);
        assert_int_equal(parse(&c, "run -h", &e), 0);
        assert_true(c.help);
        command_done(&c);
        assert_int_equal(e.code, 0);
}

static void test_usage_errors(void **state) {
        Command c;

        assert_int_equal(command_parse(&c, 0, (char *[]){ NULL }, NULL), -EINVAL);
        command_done(&c);
        parse_fails("serve", -ENOENT, "Unknown command 'serve': see 'qctl --help'.");
        parse_fails("run", -EINVAL, "qctl run: missing MODEL: see 'qctl run --help'.");
        parse_fails("run -v", -EINVAL, "qctl run: missing MODEL: see 'qctl run --help'.");
        parse_fails("pull", -EINVAL, "qctl pull: missing MODEL: see 'qctl pull --help'.");
        parse_fails("pull a b", -EINVAL, "qctl pull: unexpected argument 'b': see 'qctl pull --help'.");
        parse_fails("cp", -EINVAL, "qctl cp: missing SOURCE and DESTINATION: see 'qctl cp --help'.");
        parse_fails("cp a", -EINVAL, "qctl cp: missing DESTINATION: see 'qctl cp --help'.");
        parse_fails("cp a b c", -EINVAL, "qctl cp: unexpected argument 'c': see 'qctl cp --help'.");
        parse_fails("ls x", -EINVAL, "qctl list: unexpected argument 'x': see 'qctl list --help'.");
        parse_fails("version now", -EINVAL, "qctl version: unexpected argument 'now': see 'qctl version --help'.");
        parse_fails("rm", -EINVAL, "qctl rm: missing MODEL: see 'qctl rm --help'.");
        parse_fails("run m --frobnicate", -EINVAL, "qctl run: unknown option '--frobnicate': see 'qctl run --help'.");
        parse_fails("run m -x", -EINVAL, "qctl run: unknown option '-x': see 'qctl run --help'.");
        parse_fails("ps --modelfile", -EINVAL, "qctl ps: unknown option '--modelfile': see 'qctl ps --help'.");
        parse_fails("pull m --json", -EINVAL, "qctl pull: unknown option '--json': see 'qctl pull --help'.");
        parse_fails("run m -o", -EINVAL, "qctl run: option '-o' needs a value: see 'qctl run --help'.");
        parse_fails("run m --keepalive", -EINVAL,
                    "qctl run: option '--keepalive' needs a value: see 'qctl run --help'.");
        parse_fails("create x -f", -EINVAL, "qctl create: option '-f' needs a value: see 'qctl create --help'.");
        parse_fails("run m -o temprature=1", -EINVAL,
                    "qctl run -o: unknown parameter 'temprature' (modelfile(5) lists them).");
        parse_fails("run m -o seed=abc", -EINVAL, "qctl run -o: expected an integer for seed, found 'abc'.");
        parse_fails("run m -o seed", -EINVAL, "qctl run -o: expected NAME=VALUE, found 'seed'.");
        parse_fails("run m --format yaml", -EINVAL, "qctl run --format: expected 'json', found 'yaml'.");
        parse_fails("run m --keepalive 5minutes", -EINVAL,
                    "qctl run --keepalive: expected a duration such as 5m, 1h30m, 0 or -1, found '5minutes'.");
        parse_fails("show m --modelfile --template", -EINVAL,
                    "qctl show: choose one of --modelfile, --parameters, --template, --system and --license.");
        static const char *const what[] = { "modelfile", "parameters", "template", "system", "license" };
        for (size_t i = 0; i < ELEMENTSOF(what); i++) {
                _cleanup_free_ char *line = strdup_printf("show m --json --%s", what[i]);
                _cleanup_free_ char *msg = strdup_printf("qctl show: --json prints everything, so it takes no --%s.",
                                                         what[i]);
                parse_fails(line, -EINVAL, msg);
        }
}

static void test_help(void **state) {
        Buf b = {};

        assert_int_equal(verb_help(VERB_RUN, &b), 0);
        assert_non_null(strstr((char *)b.data, "Usage: qctl run MODEL [PROMPT...]\n\nGenerate a response"));
        assert_non_null(strstr((char *)b.data, "-o --option NAME=VALUE"));
        assert_non_null(strstr((char *)b.data, "--keepalive DURATION"));
        buf_free(&b);
        assert_int_equal(verb_help(VERB_LIST, &b), 0);
        assert_non_null(strstr((char *)b.data, "Usage: qctl list\n\nList the models in the store.\nAlso: qctl ls.\n"));
        buf_free(&b);
        /* Every verb has help with its usage line and the --help option. */
        for (int i = 0; i < _VERB_MAX; i++) {
                assert_int_equal(verb_help(i, &b), 0);
                _cleanup_free_ char *usage = strdup_printf("Usage: qctl %s", verb_to_string(i));
                assert_non_null(startswith((char *)b.data, usage));
                assert_non_null(strstr((char *)b.data, "-h --help"));
                buf_free(&b);
        }
        assert_int_equal(verbs_summary(&b), 0);
        assert_non_null(strstr((char *)b.data, "  list, ls "));
        assert_non_null(strstr((char *)b.data, "  pull MODEL "));
        assert_non_null(strstr((char *)b.data, "  cp SOURCE DESTINATION "));
        buf_free(&b);
}

static void test_exit_codes(void **state) {
        assert_int_equal(exit_code_from_errno(0), QCTL_EXIT_OK);
        assert_int_equal(exit_code_from_errno(-EINVAL), QCTL_EXIT_USAGE);
        assert_int_equal(exit_code_from_errno(-ERANGE), QCTL_EXIT_USAGE);
        assert_int_equal(exit_code_from_errno(-ENAMETOOLONG), QCTL_EXIT_USAGE);
        assert_int_equal(exit_code_from_errno(-ECONNREFUSED), QCTL_EXIT_NO_DAEMON);
        assert_int_equal(exit_code_from_errno(-ECONNRESET), QCTL_EXIT_NO_DAEMON);
        assert_int_equal(exit_code_from_errno(-EPIPE), QCTL_EXIT_NO_DAEMON);
        assert_int_equal(exit_code_from_errno(-ENOTCONN), QCTL_EXIT_NO_DAEMON);
        assert_int_equal(exit_code_from_errno(-EPROTONOSUPPORT), QCTL_EXIT_NO_DAEMON);
        assert_int_equal(exit_code_from_errno(-ENOENT), QCTL_EXIT_NOT_FOUND);
        assert_int_equal(exit_code_from_errno(ENOENT), QCTL_EXIT_NOT_FOUND);
        assert_int_equal(exit_code_from_errno(-EOPNOTSUPP), QCTL_EXIT_UNSUPPORTED);
        assert_int_equal(exit_code_from_errno(-EBADMSG), QCTL_EXIT_BAD_INPUT);
        assert_int_equal(exit_code_from_errno(-ECANCELED), QCTL_EXIT_INTERRUPTED);
        assert_int_equal(exit_code_from_errno(-EINTR), QCTL_EXIT_INTERRUPTED);
        assert_int_equal(exit_code_from_errno(-ENOSPC), QCTL_EXIT_FAILURE);
        assert_int_equal(exit_code_from_errno(-EEXIST), QCTL_EXIT_FAILURE);
}

static void check_prompt(char *const *words, const char *in, const char *expected) {
        _cleanup_free_ char *p = NULL;

        assert_int_equal(build_prompt(words, in, &p), 0);
        if (!expected)
                assert_null(p);
        else
                assert_string_equal(p, expected);
}

static void test_prompt(void **state) {
        check_prompt((char *[]){ "why", "is", "the", "sky", "blue", NULL }, NULL, "why is the sky blue");
        check_prompt((char *[]){ "Summarize:", NULL }, "line one\nline two\n\n", "Summarize:\n\nline one\nline two");
        check_prompt((char *[]){ NULL }, "only piped\r\n", "only piped");
        check_prompt(NULL, "x", "x");
        check_prompt((char *[]){ NULL }, NULL, NULL);
        check_prompt((char *[]){ NULL }, "\n\n", NULL);
        check_prompt((char *[]){ "a", NULL }, "\n", "a");
}

static void check_chat(const char *line, ChatCommandType type, const char *arg, const char *arg2) {
        ChatCommand c;
        QdError e = {};

        int r = chat_command_parse(line, &c, &e);
        if (r < 0)
                fail_msg("'%s': %s", line, e.msg);
        assert_int_equal(c.type, type);
        if (arg)
                assert_string_equal(c.arg, arg);
        else
                assert_null(c.arg);
        if (arg2)
                assert_string_equal(c.arg2, arg2);
        else
                assert_null(c.arg2);
        chat_command_done(&c);
}

static void check_chat_fails(const char *line, const char *message) {
        ChatCommand c = {};
        QdError e = {};

        assert_int_equal(chat_command_parse(line, &c, &e), -EINVAL);
        assert_string_equal(e.msg, message);
        assert_null(c.arg);
}

static void test_chat_commands(void **state) {
        check_chat("hello there", CHAT_MESSAGE, "hello there", NULL);
        check_chat("  indented /not a command", CHAT_MESSAGE, "  indented /not a command", NULL);
        check_chat("/set parameter temperature 0.2", CHAT_SET_PARAMETER, "temperature", "0.2");
        check_chat("/set parameter stop \"User: \"", CHAT_SET_PARAMETER, "stop", "User: ");
        check_chat("/set parameter stop two words", CHAT_SET_PARAMETER, "stop", "two words");
        check_chat("/set parameter", CHAT_SET_PARAMETER, NULL, NULL);
        check_chat("/set system You are a pirate.", CHAT_SET_SYSTEM, "You are a pirate.", NULL);
        check_chat("/set system \"\"\"Be\nbrief\"\"\"", CHAT_SET_SYSTEM, "Be\nbrief", NULL);
        check_chat("/set system \"quoted\"  ", CHAT_SET_SYSTEM, "quoted", NULL);
        check_chat("/set verbose", CHAT_SET_VERBOSE, NULL, NULL);
        check_chat("/set quiet", CHAT_SET_QUIET, NULL, NULL);
        check_chat("/set format json", CHAT_SET_FORMAT_JSON, NULL, NULL);
        check_chat("/set noformat", CHAT_SET_NOFORMAT, NULL, NULL);
        check_chat("/set wordwrap", CHAT_SET_WORDWRAP, NULL, NULL);
        check_chat("/set nowordwrap", CHAT_SET_NOWORDWRAP, NULL, NULL);
        check_chat("/set", CHAT_HELP, "set", NULL);
        check_chat("/show", CHAT_HELP, "show", NULL);
        check_chat("/load other:latest", CHAT_LOAD, "other:latest", NULL);
        check_chat("/save mine", CHAT_SAVE, "mine", NULL);
        check_chat("/clear", CHAT_CLEAR, NULL, NULL);
        check_chat("/bye", CHAT_BYE, NULL, NULL);
        check_chat("  /bye  \n", CHAT_BYE, NULL, NULL);
        check_chat("/exit", CHAT_BYE, NULL, NULL);
        check_chat("/?", CHAT_HELP, NULL, NULL);
        check_chat("/help", CHAT_HELP, NULL, NULL);
        check_chat("/? shortcuts", CHAT_HELP, "shortcuts", NULL);
        check_chat("/help set", CHAT_HELP, "set", NULL);
        check_chat("/? show", CHAT_HELP, "show", NULL);

        static const char *const shows[] = { "info", "modelfile", "parameters", "template", "system", "license" };
        for (size_t i = 0; i < ELEMENTSOF(shows); i++) {
                _cleanup_free_ char *line = strdup_printf("/show %s", shows[i]);
                ChatCommand c;
                assert_int_equal(chat_command_parse(line, &c, NULL), 0);
                assert_int_equal(c.type, CHAT_SHOW);
                assert_int_equal(c.show, (ShowWhat)i);
                chat_command_done(&c);
        }

        check_chat_fails("/frobnicate", "Unknown command '/frobnicate': type /? for help.");
        check_chat_fails("/", "Unknown command '/': type /? for help.");
        check_chat_fails("/set colour", "Unknown /set option 'colour': type /? set for the list.");
        check_chat_fails("/set verbose please", "/set verbose takes no value.");
        check_chat_fails("/set format", "Usage: /set format json (or /set noformat).");
        check_chat_fails("/set format yaml", "Usage: /set format json (or /set noformat).");
        check_chat_fails("/set format json now", "Usage: /set format json (or /set noformat).");
        check_chat_fails("/set system", "Usage: /set system MESSAGE.");
        check_chat_fails("/set parameter seed", "Usage: /set parameter NAME VALUE.");
        check_chat_fails("/show everything", "Unknown /show option 'everything': type /? show for the list.");
        check_chat_fails("/show info now", "/show info takes no value.");
        check_chat_fails("/load", "Usage: /load MODEL.");
        check_chat_fails("/save a b", "Usage: /save MODEL.");
        check_chat_fails("/clear all", "/clear takes no argument.");
        check_chat_fails("/bye now", "/bye takes no argument.");
        check_chat_fails("/? everything", "No help on 'everything': try /?, /? set, /? show or /? shortcuts.");
}

/* Feeds lines; every line but the last must ask for more, the last completes the input. */
static void check_input(const char *const *lines, const char *expected) {
        ChatInput in = {};
        char *out = NULL;
        size_t i;

        for (i = 0; lines[i + 1]; i++) {
                assert_int_equal(chat_input_feed(&in, lines[i], &out), 0);
                assert_true(chat_input_pending(&in));
        }
        assert_int_equal(chat_input_feed(&in, lines[i], &out), 1);
        assert_false(chat_input_pending(&in));
        assert_string_equal(out, expected);
        free(out);
        chat_input_done(&in);
}

static void test_chat_input(void **state) {
        check_input((const char *const[]){ "hello\n", NULL }, "hello");
        check_input((const char *const[]){ "", NULL }, "");
        check_input((const char *const[]){ "\"\"\"one line\"\"\"", NULL }, "one line");
        check_input((const char *const[]){ "\"\"\"\"\"\"", NULL }, "");
        check_input((const char *const[]){ "\"\"\"", "Hello", "World", "\"\"\"", NULL }, "Hello\nWorld");
        check_input((const char *const[]){ "\"\"\"Start", "", "middle", "end\"\"\"\n", NULL },
                    "Start\n\nmiddle\nend");
        check_input((const char *const[]){ "\"\"\"\n", "\n", "x\n", "\"\"\"\n", NULL }, "\nx");
        check_input((const char *const[]){ "\"\"\"", "a \"quote\"", "\"\"\"", NULL }, "a \"quote\"");

        /* The collector is reusable after an input completes. */
        ChatInput in = {};
        char *out = NULL;
        assert_int_equal(chat_input_feed(&in, "\"\"\"a", &out), 0);
        assert_int_equal(chat_input_feed(&in, "b\"\"\"", &out), 1);
        assert_string_equal(out, "a\nb");
        free(out);
        assert_int_equal(chat_input_feed(&in, "next", &out), 1);
        assert_string_equal(out, "next");
        free(out);
        /* Dropping a half-typed block (Ctrl+C) leaves a clean state. */
        assert_int_equal(chat_input_feed(&in, "\"\"\"x", &out), 0);
        chat_input_done(&in);
        assert_false(chat_input_pending(&in));
        assert_int_equal(chat_input_feed(&in, "y", &out), 1);
        assert_string_equal(out, "y");
        free(out);
        chat_input_done(&in);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_verbs),         cmocka_unit_test(test_run),
                cmocka_unit_test(test_other_verbs),   cmocka_unit_test(test_usage_errors),
                cmocka_unit_test(test_help),          cmocka_unit_test(test_exit_codes),
                cmocka_unit_test(test_prompt),        cmocka_unit_test(test_chat_commands),
                cmocka_unit_test(test_chat_input),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
