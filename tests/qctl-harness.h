/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Running the built qctl from a test: with QUANTD_SOCKET set, stdin from a string, stdout and stderr
 * collected, and Ctrl+C (SIGINT) sent once a text appears. Shared by the test programs that drive qctl
 * against a real quantd (test-client-integration, test-client-registry). Failures end the test through
 * cmocka.
 */

#include "common.h"

typedef struct Result {
        int status; /* exit code, or 128 + signal */
        char *out, *err;
} Result;

void result_done(Result *r);

/* build/client/qctl, from QUANTD_BUILD_ROOT. */
const char *qctl_path(void);

/*
 * Runs qctl with the arguments (NULL-terminated) against socket, stdin from input (NULL: /dev/null). When
 * sigint_after is set, sends SIGINT once that text has appeared on stdout.
 */
Result run_qctl_full(const char *socket, const char *input, const char *sigint_after, ...);

/* As run_qctl_full(), with SIGINT once text has appeared on stderr (progress lines go there). */
Result run_qctl_sigint_on_stderr(const char *socket, const char *text, ...);

#define run_qctl(h, ...) run_qctl_full((h)->socket, NULL, NULL, __VA_ARGS__, NULL)

/* Fails the test unless qctl exited with 0, with what it ran (such as "create -q") and its stderr. */
void check_ok(const Result *r, const char *what);

/* Checks the exit status and that stderr is one line "Error: …" containing message; frees r. */
void check_error(Result *r, int status, const char *message);

/* Writes contents to dir/name; returns the path. */
char *write_file_in(const char *dir, const char *name, const char *contents);
#define write_file(h, name, contents) write_file_in((h)->dir, name, contents)
