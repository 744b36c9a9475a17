/* SPDX-License-Identifier: MIT */
/*
 * qctl, the built binary, against a real quantd (the harness's, with the fake backend) on a temporary socket:
 * every verb the daemon serves, its output and exit code; the errors a user meets (no daemon, no such model,
 * a bad Modelfile, not supported yet); a model FROM a Hugging Face folder; Ctrl+C in the middle of a stream; and the interactive chat driven
 * through a pseudo-terminal.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <fcntl.h>
#include <msgpack.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>

#include "config.h"
#include "daemon-harness.h"

typedef struct Result {
        int status; /* exit code, or 128 + signal */
        char *out, *err;
} Result;

static void result_done(Result *r) {
        free(r->out);
        free(r->err);
        *r = (Result){};
}

static const char *qctl_path(void) {
        static char path[4096];
        const char *root = getenv("QUANTD_BUILD_ROOT");

        assert_non_null(root);
        snprintf(path, sizeof(path), "%s/client/qctl", root);
        return path;
}

/* Reads fds[0] and fds[1] to their ends. */
static void drain(int out, int err, Buf *bo, Buf *be) {
        struct pollfd p[2] = { { .fd = out, .events = POLLIN }, { .fd = err, .events = POLLIN } };
        int open_ = 2;
        char chunk[4096];

        while (open_ > 0) {
                assert_true(poll(p, 2, 30000) > 0);
                for (int i = 0; i < 2; i++) {
                        if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP)))
                                continue;
                        ssize_t n = read(p[i].fd, chunk, sizeof(chunk));
                        if (n <= 0) {
                                p[i].fd = -1;
                                open_--;
                                continue;
                        }
                        assert_int_equal(buf_append(i == 0 ? bo : be, chunk, (size_t)n), 0);
                }
        }
}

/*
 * Runs qctl with the arguments (NULL-terminated) against socket, stdin from input (NULL: /dev/null). When
 * sigint_after is set, sends SIGINT once that text has appeared on stdout.
 */
static Result run_qctl_full(const char *socket, const char *input, const char *sigint_after, ...) {
        const char *argv[32] = { qctl_path() };
        int n = 1, in[2], out[2], err[2];
        va_list ap;

        va_start(ap, sigint_after);
        for (const char *a; (a = va_arg(ap, const char *)) && n < 31;)
                argv[n++] = a;
        va_end(ap);
        argv[n] = NULL;

        assert_int_equal(pipe2(in, O_CLOEXEC), 0);
        assert_int_equal(pipe2(out, O_CLOEXEC), 0);
        assert_int_equal(pipe2(err, O_CLOEXEC), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                dup2(in[0], STDIN_FILENO);
                dup2(out[1], STDOUT_FILENO);
                dup2(err[1], STDERR_FILENO);
                setenv("QUANTD_SOCKET", socket, 1);
                setenv("LC_ALL", "C.UTF-8", 1);
                execv(argv[0], (char **)argv);
                _exit(127);
        }
        close(in[0]);
        close(out[1]);
        close(err[1]);
        if (input)
                assert_int_equal(write(in[1], input, strlen(input)), (ssize_t)strlen(input));
        close(in[1]);

        Buf bo = {}, be = {};
        if (sigint_after) {
                /* Read stdout until the text shows, then interrupt, then collect the rest. */
                char chunk[4096];
                while (!bo.data || !strstr((char *)bo.data, sigint_after)) {
                        ssize_t k = read(out[0], chunk, sizeof(chunk));
                        assert_true(k > 0);
                        assert_int_equal(buf_append(&bo, chunk, (size_t)k), 0);
                }
                kill(pid, SIGINT);
        }
        drain(out[0], err[0], &bo, &be);
        close(out[0]);
        close(err[0]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        return (Result){
                .status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                .out = bo.data ? buf_steal_str(&bo) : strdup(""),
                .err = be.data ? buf_steal_str(&be) : strdup(""),
        };
}

#define run_qctl(h, ...) run_qctl_full((h)->socket, NULL, NULL, __VA_ARGS__, NULL)

static int setup(void **state) {
        Harness *h = calloc(1, sizeof(Harness));
        assert_non_null(h);
        /* Pull goes to a registry that refuses at once: no network, no retries. */
        assert_int_equal(dh_start(h, "[Scheduler]\nNumParallel=4\nContextLength=512\n"
                                     "[Registry]\nDefaultHost=127.0.0.1:9\nInsecure=127.0.0.1:9\nRetries=0\n", NULL),
                         0);
        *state = h;
        return 0;
}

static int teardown(void **state) {
        Harness *h = *state;
        if (h->pid > 0)
                assert_int_equal(dh_stop(h), 0);
        free(h);
        return 0;
}

static char *write_file(Harness *h, const char *name, const char *contents) {
        char *path = strdup_printf("%s/%s", h->dir, name);
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs(contents, f);
        fclose(f);
        return path;
}

/* A chat template in the Go dialect, so that Chat works with the fake backend's models. */
#define CHAT_TEMPLATE "TEMPLATE \"\"\"{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant: \"\"\"\n"

/* Creates model name from a fake model file through `qctl create`. */
static void create_fake(Harness *h, const char *name, const char *model_text) {
        _cleanup_free_ char *model_file = strdup_printf("%s.fake", name);
        _cleanup_free_ char *weights = write_file(h, model_file, model_text);
        _cleanup_free_ char *mf_text = strdup_printf("# a fake model\nFROM ./%s\n" CHAT_TEMPLATE, model_file);
        _cleanup_free_ char *mf = write_file(h, "Modelfile", mf_text);
        Result r = run_qctl(h, "create", name, "-f", mf);
        if (r.status != 0)
                fail_msg("qctl create failed (%d): %s", r.status, r.err);
        assert_non_null(endswith(r.err, "success\n"));
        /* Once: the daemon's last job event is not printed as a second "success". */
        const char *first = strstr(r.err, "success\n");
        assert_null(strstr(first + 1, "success\n"));
        result_done(&r);
}

static int collect_text(const ProtoMessage *ev, void *userdata) {
        const msgpack_object *t = proto_map_get(ev->params, "text");
        assert_non_null(t);
        return buf_append(userdata, t->via.str.ptr, t->via.str.size);
}

/* What Generate streams for a prompt, asked over the protocol directly: the reference for qctl's output. */
static char *generate_directly(Harness *h, const char *model, const char *prompt, const char *num_predict) {
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        QdError e = {};
        Buf text = {};

        assert_non_null(c);
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_str(&pk, "model", model);
        proto_pack_kv_str(&pk, "prompt", prompt);
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 1);
        proto_pack_kv_i64(&pk, "num_predict", atoi(num_predict));
        assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, collect_text, &text, NULL, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        assert_true(text.len > 0);
        return buf_steal_str(&text);
}

static void test_version(void **state) {
        Harness *h = *state;
        Result r = run_qctl(h, "version");

        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "quantd version is " PACKAGE_VERSION "\nqctl version is " PACKAGE_VERSION "\n");
        result_done(&r);
}

static void test_create_list_run(void **state) {
        Harness *h = *state;
        Result r;

        create_fake(h, "fake", "size=4096\n");

        r = run_qctl(h, "list");
        assert_int_equal(r.status, 0);
        assert_non_null(startswith(r.out, "NAME           ID"));
        assert_non_null(strstr(r.out, "\nfake:latest    "));
        assert_non_null(strstr(r.out, " B    "));
        assert_non_null(strstr(r.out, "Less than a second ago\n") ?: strstr(r.out, "1 second ago\n"));
        result_done(&r);
        r = run_qctl(h, "ls", "--json");
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "\"name\": \"fake:latest\""));
        result_done(&r);

        /* The streamed answer equals what Generate returns, plus a final newline. */
        _cleanup_free_ char *want = generate_directly(h, "fake", "hello there", "12");
        r = run_qctl(h, "run", "fake", "hello", "there", "-o", "num_predict=12");
        assert_int_equal(r.status, 0);
        _cleanup_free_ char *want_nl = strdup_printf("%s\n", want);
        assert_string_equal(r.out, want_nl);
        assert_string_equal(r.err, "");
        result_done(&r);

        /* --verbose adds the statistics block on stderr. */
        r = run_qctl(h, "run", "fake", "hello", "-o", "num_predict=5", "--verbose");
        assert_int_equal(r.status, 0);
        assert_non_null(startswith(r.err, "total duration:       "));
        assert_non_null(strstr(r.err, "\neval count:           5 token(s)\n"));
        assert_non_null(strstr(r.err, "\nprompt eval count:    "));
        assert_non_null(strstr(r.err, "\neval rate:            "));
        result_done(&r);

        /* Piped input joins the prompt. */
        _cleanup_free_ char *want2 = generate_directly(h, "fake", "Summarize:\n\npiped text", "6");
        r = run_qctl_full(h->socket, "piped text\n", NULL, "run", "fake", "Summarize:", "-o", "num_predict=6", NULL);
        assert_int_equal(r.status, 0);
        _cleanup_free_ char *want2_nl = strdup_printf("%s\n", want2);
        assert_string_equal(r.out, want2_nl);
        result_done(&r);

        /* The model is now loaded. */
        r = run_qctl(h, "ps");
        assert_int_equal(r.status, 0);
        assert_non_null(startswith(r.out, "NAME           ID"));
        assert_non_null(strstr(r.out, "fake:latest"));
        assert_non_null(strstr(r.out, "100% CPU"));
        assert_non_null(strstr(r.out, "512"));
        result_done(&r);
        r = run_qctl(h, "ps", "--json");
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "\"context_length\": 512"));
        result_done(&r);

        /* stop unloads it. */
        r = run_qctl(h, "stop", "fake");
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "");
        result_done(&r);
        r = run_qctl(h, "ps");
        assert_string_equal(r.out, "NAME    ID    SIZE    PROCESSOR    CONTEXT    UNTIL\n");
        result_done(&r);
}

static void test_copy_remove(void **state) {
        Harness *h = *state;
        Result r;

        create_fake(h, "orig", "size=1000\n");
        r = run_qctl(h, "cp", "orig", "copy");
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "copied 'orig' to 'copy'\n");
        result_done(&r);
        r = run_qctl(h, "list");
        assert_non_null(strstr(r.out, "\ncopy:latest "));
        assert_non_null(strstr(r.out, "\norig:latest "));
        result_done(&r);
        r = run_qctl(h, "rm", "copy", "orig");
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "deleted 'copy'\ndeleted 'orig'\n");
        result_done(&r);
        r = run_qctl(h, "list");
        assert_string_equal(r.out, "NAME    ID    SIZE    MODIFIED\n");
        result_done(&r);
}

static void test_show_real_gguf(void **state) {
        Harness *h = *state;
        const char *models = getenv("QUANTD_TEST_MODELS");

        assert_non_null(models);
        _cleanup_free_ char *mf_text = strdup_printf("FROM %s/stories260K.gguf\nPARAMETER temperature 0\n", models);
        _cleanup_free_ char *mf = write_file(h, "Modelfile.stories", mf_text);
        Result r = run_qctl(h, "create", "stories", "-f", mf);
        assert_int_equal(r.status, 0);
        result_done(&r);
        r = run_qctl(h, "show", "stories");
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "  Model\n    architecture        llama\n"));
        assert_non_null(strstr(r.out, "    context length      "));
        assert_non_null(strstr(r.out, "    embedding length    64\n"));
        result_done(&r);
        r = run_qctl(h, "show", "stories", "--json");
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "\"architecture\": \"llama\""));
        result_done(&r);
}

static void test_example_modelfile(void **state) {
        Harness *h = *state;
        const char *data = getenv("QUANTD_TEST_DATA");

        /* examples/Modelfile with a fake model in place of SmolLM2: its template must render in the daemon. */
        assert_non_null(data);
        _cleanup_free_ char *example = strdup_printf("%s/../../examples/Modelfile", data);
        _cleanup_free_ char *text = NULL;
        size_t size = 0;
        FILE *f = fopen(example, "re");
        assert_non_null(f);
        assert_int_equal(getdelim(&text, &size, 0, f) > 0, 1);
        fclose(f);
        char *from = strstr(text, "FROM ./SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_non_null(from);
        /* Same length, blanks after the name (a bare value's trailing blanks do not count). */
        size_t n = strlen("FROM ./SmolLM2-135M-Instruct.Q4_1.gguf");
        char line[64];
        snprintf(line, sizeof(line), "%-*s", (int)n, "FROM ./smol.fake");
        memcpy(from, line, n);
        _cleanup_free_ char *weights = write_file(h, "smol.fake", "size=1000\n");
        _cleanup_free_ char *mf = write_file(h, "Modelfile.example", text);
        Result r = run_qctl(h, "create", "smol", "-f", mf);
        if (r.status != 0)
                fail_msg("qctl create failed (%d): %s", r.status, r.err);
        result_done(&r);

        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        QdError e = {};
        Buf answer = {};
        assert_non_null(c);
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_str(&pk, "model", "smol");
        proto_pack_key(&pk, "messages");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "role", "user");
        proto_pack_kv_str(&pk, "content", "Hello!");
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 1);
        proto_pack_kv_i64(&pk, "num_predict", 4);
        int k = proto_client_call(c, "Chat", sb.data, sb.size, NULL, 0, collect_text, &answer, NULL, &e);
        msgpack_sbuffer_destroy(&sb);
        if (k < 0)
                fail_msg("Chat with the example's template failed: %s", e.msg);
        assert_true(answer.len > 0);
        buf_free(&answer);
}

static void check_error(Result *r, int status, const char *message) {
        if (r->status != status)
                fail_msg("expected exit %d, got %d: %s", status, r->status, r->err);
        /* One sentence on one line. */
        assert_non_null(startswith(r->err, "Error: "));
        assert_non_null(strstr(r->err, message));
        assert_ptr_equal(strchr(r->err, '\n'), r->err + strlen(r->err) - 1);
        result_done(r);
}

/* FROM a Hugging Face folder: qctl passes the folder as a descriptor, the daemon converts and stores it. */
static void test_create_hf_folder(void **state) {
        Harness *h = *state;
        const char *data = getenv("QUANTD_TEST_DATA");

        assert_non_null(data);
        _cleanup_free_ char *mf_text = strdup_printf("FROM %s/hf-tiny-llama\n", data);
        _cleanup_free_ char *mf = write_file(h, "Modelfile.hf", mf_text);
        Result r = run_qctl(h, "create", "tiny", "-f", mf);
        if (r.status != 0)
                fail_msg("qctl create FROM a folder failed (%d): %s", r.status, r.err);
        assert_non_null(strstr(r.err, "success\n"));
        result_done(&r);
        r = run_qctl(h, "show", "tiny");
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "  Model\n    architecture        llama\n"));
        assert_non_null(strstr(r.out, "    embedding length    64\n"));
        result_done(&r);

        /* A folder without config.json: the converter's sentence, and nothing stored. */
        _cleanup_free_ char *empty = strdup_printf("%s/empty-hf", h->dir);
        assert_int_equal(mkdir(empty, 0700), 0);
        _cleanup_free_ char *mf2 = write_file(h, "Modelfile.empty", "FROM ./empty-hf\n");
        r = run_qctl(h, "create", "empty", "-f", mf2);
        assert_int_equal(r.status, 4);
        assert_non_null(strstr(r.err, "Error: Failed to open 'config.json': No such file or directory\n"));
        result_done(&r);
        assert_int_equal(rmdir(empty), 0);
        r = run_qctl(h, "show", "empty");
        check_error(&r, 4, "empty");
}

static void test_errors(void **state) {
        Harness *h = *state;
        Result r;

        r = run_qctl(h, "show", "nope");
        check_error(&r, 4, "nope");
        r = run_qctl(h, "run", "nope", "hi");
        /* Not in the store: qctl tries to pull it, and the registry cannot be reached (a plain failure). */
        assert_int_equal(r.status, 1);
        result_done(&r);
        r = run_qctl(h, "rm", "nope");
        check_error(&r, 4, "nope");
        r = run_qctl(h, "cp", "nope", "other");
        check_error(&r, 4, "nope");
        r = run_qctl(h, "pull", "llama3.2");
        /* Progress lines come first on stderr, then the error. */
        assert_int_equal(r.status, 1);
        assert_non_null(strstr(r.err, "Error: Failed to reach registry"));
        result_done(&r);

        /* A bad Modelfile never reaches the daemon. */
        _cleanup_free_ char *mf = write_file(h, "Modelfile.bad", "FROM x\nPARAMETER num_ctx big\n");
        r = run_qctl(h, "create", "bad", "-f", mf);
        _cleanup_free_ char *msg = strdup_printf("%s:2:19: expected an integer for num_ctx, found 'big'", mf);
        check_error(&r, 6, msg);

        /* Usage errors. */
        r = run_qctl(h, "run");
        check_error(&r, 2, "qctl run: missing MODEL");
        r = run_qctl(h, "run", "fake", "-o", "warmth=1");
        check_error(&r, 2, "unknown parameter 'warmth'");
        r = run_qctl(h, "frobnicate");
        check_error(&r, 2, "Unknown command 'frobnicate'");

        /* No daemon. */
        _cleanup_free_ char *absent = strdup_printf("%s/absent.sock", h->dir);
        r = run_qctl_full(absent, NULL, NULL, "list", NULL);
        _cleanup_free_ char *msg2 = strdup_printf("quantd is not running (no socket at %s): start it with", absent);
        check_error(&r, 3, msg2);
}

static void test_interrupt(void **state) {
        Harness *h = *state;

        /* A slow model: 20 ms a token. Ctrl+C after the first tokens cancels the stream. */
        create_fake(h, "slow", "delay_us=20000\n");
        Result r = run_qctl_full(h->socket, NULL, "", "run", "slow", "hi", "-o", "num_predict=1000", NULL);
        assert_int_equal(r.status, 130);
        assert_true(strlen(r.out) < 1000);
        result_done(&r);

        /* The daemon is fine and the model idle again. */
        r = run_qctl(h, "ps", "--json");
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "\"in_use\": 0"));
        result_done(&r);
}

/* ---- the chat, through a pseudo-terminal ---- */

typedef struct Pty {
        int master;
        pid_t pid;
        Buf seen;
        size_t pos; /* where the next pty_expect() starts looking */
} Pty;

static void pty_start(Pty *p, Harness *h, const char *model) {
        struct winsize ws = { .ws_row = 24, .ws_col = 40 };
        *p = (Pty){};
        p->pid = forkpty(&p->master, NULL, NULL, &ws);
        assert_true(p->pid >= 0);
        if (p->pid == 0) {
                setenv("QUANTD_SOCKET", h->socket, 1);
                setenv("LC_ALL", "C.UTF-8", 1);
                setenv("TERM", "dumb", 1);
                /* The history goes to the test's directory, not the user's. */
                setenv("XDG_DATA_HOME", h->dir, 1);
                execl(qctl_path(), qctl_path(), "run", model, "-o", "num_predict=8", (char *)NULL);
                _exit(127);
        }
}

/* Reads from the terminal until text appears after what earlier calls matched, or fails after 20 s. */
static void pty_expect(Pty *p, const char *text) {
        uint64_t deadline = now_ns() + 20000000000ULL;
        char chunk[4096];
        const char *found;

        while (!p->seen.data || !(found = strstr((char *)p->seen.data + p->pos, text))) {
                struct pollfd pf = { .fd = p->master, .events = POLLIN };
                if (now_ns() > deadline || poll(&pf, 1, 1000) < 0)
                        fail_msg("never saw '%s' in:\n%s", text, p->seen.data ? (char *)p->seen.data : "");
                if (!(pf.revents & (POLLIN | POLLHUP)))
                        continue;
                ssize_t n = read(p->master, chunk, sizeof(chunk));
                if (n <= 0)
                        fail_msg("terminal closed before '%s' in:\n%s", text,
                                 p->seen.data ? (char *)p->seen.data : "");
                assert_int_equal(buf_append(&p->seen, chunk, (size_t)n), 0);
        }
        p->pos = (size_t)(found - (char *)p->seen.data) + strlen(text);
}

/*
 * Waits until libedit has taken the terminal out of canonical mode. A ^D typed before that is the line
 * discipline's end-of-file, which libedit never sees; a person cannot type that fast, a test can.
 */
static void pty_wait_raw(Pty *p) {
        struct termios t;

        for (int i = 0; i < 2000; i++) {
                assert_int_equal(tcgetattr(p->master, &t), 0);
                if (!(t.c_lflag & ICANON))
                        return;
                usleep(10000);
        }
        fail_msg("the terminal never left canonical mode");
}

/* Like pty_expect(), but gives up after timeout_ms and says whether text appeared. */
static bool pty_expect_within(Pty *p, const char *text, unsigned timeout_ms) {
        uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ULL;
        char chunk[4096];
        const char *found;

        while (!p->seen.data || !(found = strstr((char *)p->seen.data + p->pos, text))) {
                struct pollfd pf = { .fd = p->master, .events = POLLIN };
                if (now_ns() > deadline || poll(&pf, 1, 100) < 0)
                        return false;
                if (!(pf.revents & (POLLIN | POLLHUP)))
                        continue;
                ssize_t n = read(p->master, chunk, sizeof(chunk));
                if (n <= 0)
                        return false;
                assert_int_equal(buf_append(&p->seen, chunk, (size_t)n), 0);
        }
        p->pos = (size_t)(found - (char *)p->seen.data) + strlen(text);
        return true;
}

static void pty_send(Pty *p, const char *text) {
        assert_int_equal(write(p->master, text, strlen(text)), (ssize_t)strlen(text));
}

static int pty_wait(Pty *p) {
        uint64_t deadline = now_ns() + 20000000000ULL;
        char chunk[4096];
        int status;

        /* Keep reading so that the child never blocks on a full terminal; give up after 20 s. */
        for (;;) {
                struct pollfd pf = { .fd = p->master, .events = POLLIN };
                if (now_ns() > deadline) {
                        kill(p->pid, SIGKILL);
                        waitpid(p->pid, NULL, 0);
                        close(p->master);
                        fail_msg("qctl did not exit; the terminal showed:\n%s", p->seen.data ? (char *)p->seen.data : "");
                }
                if (poll(&pf, 1, 1000) <= 0)
                        continue;
                ssize_t n = read(p->master, chunk, sizeof(chunk));
                if (n <= 0)
                        break;
                assert_int_equal(buf_append(&p->seen, chunk, (size_t)n), 0);
        }
        assert_int_equal(waitpid(p->pid, &status, 0), p->pid);
        close(p->master);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void test_chat(void **state) {
        Harness *h = *state;
        Pty p;

        create_fake(h, "chatty", "size=1000\n");
        create_fake(h, "other", "size=1000\n");
        create_fake(h, "slowchat", "delay_us=20000\n");
        pty_start(&p, h, "chatty");
        pty_expect(&p, ">>> ");
        pty_send(&p, "/?\n");
        pty_expect(&p, "Use \"\"\" to begin a multi-line message.");
        pty_send(&p, "/set parameter temperature 0.5\n");
        pty_expect(&p, "Set parameter 'temperature' to '0.5'");
        pty_send(&p, "/set parameter temperature hot\n");
        pty_expect(&p, "Error: expected a number for temperature, found 'hot'");
        pty_send(&p, "/set verbose\n");
        pty_expect(&p, "Set 'verbose' mode.");
        pty_send(&p, "/set system Be brief.\n");
        pty_expect(&p, "Set system message.");
        pty_send(&p, "/show system\n");
        pty_expect(&p, "Be brief.\r\n");
        pty_send(&p, "/frobnicate\n");
        pty_expect(&p, "Unknown command '/frobnicate': type /? for help.");
        /* A multi-line message: continuation prompts, then the answer and the statistics of /set verbose. */
        pty_send(&p, "\"\"\"\n");
        pty_expect(&p, "... ");
        pty_send(&p, "line one\n");
        pty_send(&p, "line two\"\"\"\n");
        pty_expect(&p, "line two\"\"\"\r\n");
        pty_expect(&p, "\r\ntotal duration:       ");
        pty_expect(&p, "\r\neval count:           8 token(s)\r\n");
        pty_expect(&p, "\r\n>>> ");
        /* Ctrl+C during an answer stops it, and the chat goes on. */
        pty_send(&p, "/load slowchat\n");
        pty_expect(&p, ">>> ");
        pty_send(&p, "/set parameter num_predict 100000\n");
        pty_expect(&p, ">>> ");
        pty_send(&p, "tell me everything\n");
        pty_expect(&p, "tell me everything\r\n");
        usleep(300000);
        pty_send(&p, "\003");
        pty_expect(&p, ">>> ");
        pty_send(&p, "/load chatty\n");
        pty_expect(&p, ">>> ");
        /* Ctrl+C at the prompt drops the line and keeps the chat. */
        pty_send(&p, "half typed");
        pty_wait_raw(&p);
        /* On a loaded machine the first ^C can reach the terminal while the line editor is still switching
         * modes (about one run in ten); a person would press it again, and so does the test. */
        bool dropped = false;
        for (int i = 0; i < 5 && !dropped; i++) {
                pty_send(&p, "\003");
                dropped = pty_expect_within(&p, "Use Ctrl + d or /bye to exit.", 3000);
        }
        if (!dropped)
                fail_msg("Ctrl+C at the prompt never dropped the line:\n%s", (char *)p.seen.data);
        pty_send(&p, "/clear\n");
        pty_expect(&p, "Cleared session context");
        /* A fake model is no GGUF, so /show fails, and the chat goes on. */
        pty_send(&p, "/show info\n");
        pty_expect(&p, "Error: ");
        pty_send(&p, "/load other\n");
        pty_expect(&p, "Loading model 'other'");
        pty_expect(&p, ">>> ");
        pty_send(&p, "/? shortcuts\n");
        pty_expect(&p, "Ctrl + d            Exit (/bye)");
        pty_send(&p, "/bye\n");
        assert_int_equal(pty_wait(&p), 0);
        buf_free(&p.seen);

        /* History was kept. */
        _cleanup_free_ char *hist = strdup_printf("%s/quantd/qctl_history", h->dir);
        _cleanup_fclose_ FILE *f = fopen(hist, "re");
        assert_non_null(f);

        /* Ctrl+D ends the chat too. */
        pty_start(&p, h, "chatty");
        pty_expect(&p, ">>> ");
        pty_wait_raw(&p);
        pty_send(&p, "\004");
        int status = pty_wait(&p);
        assert_int_equal(status, 0);
        buf_free(&p.seen);
}

static void test_chat_missing_model(void **state) {
        Harness *h = *state;
        Pty p;

        /* The model is loaded before the first prompt: a missing one is said at once (pulling it fails). */
        pty_start(&p, h, "absent");
        pty_expect(&p, "Pulling it.");
        int status = pty_wait(&p);
        assert_int_equal(status, 1);
        buf_free(&p.seen);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_version, setup, teardown),
                cmocka_unit_test_setup_teardown(test_create_list_run, setup, teardown),
                cmocka_unit_test_setup_teardown(test_copy_remove, setup, teardown),
                cmocka_unit_test_setup_teardown(test_show_real_gguf, setup, teardown),
                cmocka_unit_test_setup_teardown(test_create_hf_folder, setup, teardown),
                cmocka_unit_test_setup_teardown(test_example_modelfile, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_interrupt, setup, teardown),
                cmocka_unit_test_setup_teardown(test_chat, setup, teardown),
                cmocka_unit_test_setup_teardown(test_chat_missing_model, setup, teardown),
        };

        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
