/* SPDX-License-Identifier: MIT */
/*
 * Running the built qctl from a test: see qctl-harness.h.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include "qctl-harness.h"

void result_done(Result *r) {
        free(r->out);
        free(r->err);
        *r = (Result){};
}

const char *qctl_path(void) {
        static char path[4096];
        const char *root = getenv("QUANTD_BUILD_ROOT");

        assert_non_null(root);
        snprintf(path, sizeof(path), "%s/client/qctl", root);
        return path;
}

/* Reads fds[0] and fds[1] to their ends. */
static void drain(int out, int err, Buf *bo, Buf *be) {
        struct pollfd p[2] = {{.fd = out, .events = POLLIN}, {.fd = err, .events = POLLIN}};
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

static Result run_qctl_v(const char *socket, const char *input, const char *sigint_after, bool on_stderr,
                         va_list ap) {
        const char *argv[32] = {qctl_path()};
        int n = 1, in[2], out[2], err[2];

        for (const char *a; (a = va_arg(ap, const char *)) && n < 31;)
                argv[n++] = a;
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
                /* Read the stream until the text shows, then interrupt, then collect the rest. */
                Buf *b = on_stderr ? &be : &bo;
                char chunk[4096];
                while (!b->data || !strstr((char *)b->data, sigint_after)) {
                        ssize_t k = read(on_stderr ? err[0] : out[0], chunk, sizeof(chunk));
                        if (k <= 0)
                                fail_msg("qctl ended before printing '%s': %s", sigint_after,
                                         b->data ? (char *)b->data : "");
                        assert_int_equal(buf_append(b, chunk, (size_t)k), 0);
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

Result run_qctl_full(const char *socket, const char *input, const char *sigint_after, ...) {
        va_list ap;
        va_start(ap, sigint_after);
        Result r = run_qctl_v(socket, input, sigint_after, false, ap);
        va_end(ap);
        return r;
}

Result run_qctl_sigint_on_stderr(const char *socket, const char *text, ...) {
        va_list ap;
        va_start(ap, text);
        Result r = run_qctl_v(socket, NULL, text, true, ap);
        va_end(ap);
        return r;
}

char *write_file_in(const char *dir, const char *name, const char *contents) {
        char *path = strdup_printf("%s/%s", dir, name);
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs(contents, f);
        fclose(f);
        return path;
}

void check_ok(const Result *r, const char *what) {
        if (r->status != 0)
                fail_msg("qctl %s failed (%d): %s", what, r->status, r->err);
}

void check_error(Result *r, int status, const char *message) {
        if (r->status != status)
                fail_msg("expected exit %d, got %d: %s", status, r->status, r->err);
        /* One sentence on one line. */
        assert_non_null(startswith(r->err, "Error: "));
        assert_non_null(strstr(r->err, message));
        assert_ptr_equal(strchr(r->err, '\n'), r->err + strlen(r->err) - 1);
        result_done(r);
}
