/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The integration tests' harness: starts a real quantd (--backend=fake unless the extra arguments name
 * another) on a socket and models directory in a fresh temporary directory, connects clients, and stops it
 * with SIGTERM. Set QUANTD_TEST_VALGRIND=1 to run the daemon under valgrind, which then must report no leaks
 * or errors, and QUANTD_TEST_KEEP=1 to keep the temporary directories (with the daemon's log) afterwards.
 */

#include "common.h"

typedef struct Harness {
        char dir[64];
        char *socket;
        char *models;
        char *log;
        pid_t pid;
} Harness;

/* Starts quantd with config (INI text, may be NULL) and extra arguments (NULL-terminated, may be NULL). */
int dh_start(Harness *h, const char *config, const char *const *extra_args);
/* Sends SIGTERM and waits; returns the exit status (or 128 + signal), and removes the directory. */
int dh_stop(Harness *h);
/* A cmocka setup: a new Harness at *state with quantd started as dh_start() starts it; fails the test when
 * it does not start. Returns 0. */
int dh_setup(void **state, const char *config, const char *const *extra_args);
/* A cmocka teardown: stops the Harness at *state (a running quantd must exit with 0) and frees it. */
int dh_teardown(void **state);
/* The path of SmolLM2-135M-Instruct.Q4_1.gguf from QUANTD_TEST_SMOLLM; fails the test when it is not set or
 * names no readable file (a missing model fails a test, it does not skip it). */
const char *dh_smollm_path(void);
/* A new client connection. */
ProtoClient *dh_connect(Harness *h);
/* Writes a fake model file with contents and stores it as name through Create. Returns 0 or -errno. */
int dh_create_model(Harness *h, ProtoClient *c, const char *name, const char *contents);
/* Stores the file at path as model name through Create (the file travels as a descriptor). */
int dh_create_from_file(Harness *h, ProtoClient *c, const char *name, const char *path);
/* Sends Chat to model with one message (role, content), not streamed, with the options temperature 0,
 * num_predict and, when repeat_penalty > 0, repeat_penalty. The response goes to *ret. Returns 0 or -errno
 * with the daemon's message in e. */
int dh_chat(ProtoClient *c, const char *model, const char *role, const char *content, int64_t num_predict,
            double repeat_penalty, ProtoMessage *ret, QdError *e);
/* Sends Cancel {id} for the request id on c without waiting for the answer; *ret_msgid (may be NULL) gets
 * the Cancel's own id. Returns 0 or -errno. */
int dh_cancel(ProtoClient *c, uint64_t id, uint64_t *ret_msgid);
/* Whether the daemon's log contains s. */
bool dh_log_contains(Harness *h, const char *s);
/* Packs a params map from alternating key/value strings; values that parse as integers are packed as such.
 */
void dh_params(msgpack_sbuffer *sb, ...);
