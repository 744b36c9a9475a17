/* SPDX-License-Identifier: MIT */
/*
 * qctl: the command-line client of quantd. Parses the global options and the verb's command line, then hands
 * over to the verb (verbs.c, run.c). Errors end as one sentence on stderr and an exit code from qctl(1).
 */

#include <getopt.h>
#include <locale.h>
#include <signal.h>
#include <sys/ioctl.h>

#include "client.h"
#include "config.h"

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
        interrupted++;
}

static void help(void) {
        Buf b = {};

        (void)verbs_summary(&b);
        printf("Usage: qctl [OPTIONS] COMMAND [ARGS...]\n\n"
               "Talks to quantd, the local model daemon.\n\n"
               "Commands:\n"
               "%s\n"
               "Options:\n"
               "  -h --help              show this help\n"
               "     --version           show the version\n"
               "     --socket PATH       talk to the daemon at PATH (default: $QUANTD_SOCKET, the user\n"
               "                         daemon's socket, then the system daemon's)\n\n"
               "Run 'qctl COMMAND --help' for a command's options. See qctl(1).\n",
               b.data ? (char *)b.data : "");
        buf_free(&b);
}

static unsigned terminal_width(int fd) {
        struct winsize ws;

        if (ioctl(fd, TIOCGWINSZ, &ws) < 0 || ws.ws_col == 0)
                return 0;
        return ws.ws_col;
}

int main(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100, ARG_SOCKET };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "socket", required_argument, NULL, ARG_SOCKET },
                {},
        };
        const char *socket = NULL;
        int c;

        setlocale(LC_ALL, "");

        /* Options end at the verb: the verb parses its own. */
        while ((c = getopt_long(argc, argv, "+h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("qctl %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_SOCKET:
                        socket = optarg;
                        break;
                default:
                        return QCTL_EXIT_USAGE;
                }
        if (optind >= argc) {
                help();
                return QCTL_EXIT_USAGE;
        }

        Command cmd;
        QdError e = {};
        int r = command_parse(&cmd, argc - optind, argv + optind, &e);
        if (r < 0) {
                fprintf(stderr, "Error: %s\n", e.code ? e.msg : strerror(-r));
                command_done(&cmd);
                return r == -ENOMEM ? QCTL_EXIT_FAILURE : QCTL_EXIT_USAGE;
        }
        if (cmd.help) {
                Buf b = {};
                if (verb_help(cmd.verb, &b) >= 0)
                        fputs((char *)b.data, stdout);
                buf_free(&b);
                command_done(&cmd);
                return 0;
        }

        /* Ctrl+C cancels the request in flight instead of killing qctl, so the daemon hears of it. */
        struct sigaction sa = { .sa_handler = on_sigint };
        sigemptyset(&sa.sa_mask);
        (void)sigaction(SIGINT, &sa, NULL);

        Qctl q = {
                .socket = socket,
                .out = stdout,
                .err = stderr,
                .in_fd = STDIN_FILENO,
                .in_tty = isatty(STDIN_FILENO),
                .out_tty = isatty(STDOUT_FILENO),
                .err_tty = isatty(STDERR_FILENO),
                .width = terminal_width(STDOUT_FILENO),
                .interrupted = &interrupted,
        };
        r = qctl_run_command(&q, &cmd, &e);
        qctl_done(&q);
        command_done(&cmd);
        fflush(stdout);
        if (r < 0) {
                if (r == -ECANCELED || interrupted) {
                        fputc('\n', stderr);
                        return QCTL_EXIT_INTERRUPTED;
                }
                fprintf(stderr, "Error: %s\n", e.code ? e.msg : strerror(-r));
                return exit_code_from_errno(r);
        }
        return 0;
}
