/* SPDX-License-Identifier: MIT */
/*
 * A real quantd: store-changing jobs (Create from a passed descriptor, with progress), List, Copy, Delete;
 * a job outlives its client and is watched again with Jobs; Cancel of a job; SIGTERM in the middle of a job
 * exits cleanly and leaves the store intact. Quantize and Eval with descriptors, and the parameters qctl
 * never sends wrong.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "daemon-harness.h"

static int setup(void **state) {
        return dh_setup(state, "[Daemon]\nWorkers=2\nKeepFinishedJobs=4\n", NULL);
}

static int call(ProtoClient *c, const char *method, ProtoMessage *m, QdError *e, ...) {
        msgpack_sbuffer sb;
        va_list ap;
        const char *kv[16];
        size_t n = 0;

        va_start(ap, e);
        while (n < ELEMENTSOF(kv) - 1 && (kv[n] = va_arg(ap, const char *)))
                n++;
        va_end(ap);
        msgpack_sbuffer_init(&sb);
        /* dh_params() takes varargs; spell the common sizes out. */
        switch (n) {
        case 0:
                dh_params(&sb, NULL);
                break;
        case 2:
                dh_params(&sb, kv[0], kv[1], NULL);
                break;
        case 4:
                dh_params(&sb, kv[0], kv[1], kv[2], kv[3], NULL);
                break;
        default:
                fail_msg("odd parameter count");
        }
        qd_error_clear(e);
        int k = proto_client_call(c, method, sb.data, sb.size, NULL, 0, NULL, NULL, m, e);
        msgpack_sbuffer_destroy(&sb);
        return k;
}

static size_t list_count(ProtoClient *c, const char *name) {
        ProtoMessage m;
        QdError e = {};
        size_t found = 0;

        assert_int_equal(call(c, "List", &m, &e, NULL), 0);
        const msgpack_object *models = proto_map_get(m.result, "models");
        for (uint32_t i = 0; i < models->via.array.size; i++)
                found += proto_str_eq(proto_map_get(&models->via.array.ptr[i], "name"), name);
        return models->via.array.size * 1000 + found;
}

static void test_create_list_copy_delete(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(dh_create_model(h, c, "tiny", "size=1000\n"), 0);
        assert_int_equal(list_count(c, "tiny:latest"), 1001);
        assert_int_equal(call(c, "Copy", &m, &e, "source", "tiny", "destination", "copy:v2", NULL), 0);
        assert_int_equal(list_count(c, "copy:v2"), 2001);
        assert_int_equal(call(c, "Delete", &m, &e, "model", "tiny", NULL), 0);
        assert_int_equal(list_count(c, "tiny:latest"), 1000);
        assert_int_equal(call(c, "Delete", &m, &e, "model", "tiny", NULL), -ENOENT);
        assert_non_null(strstr(e.msg, "tiny:latest' not found;"));
        assert_int_equal(call(c, "Copy", &m, &e, "source", "nope", "destination", "x", NULL), -ENOENT);
        assert_int_equal(call(c, "Delete", &m, &e, "model", "../etc/passwd", NULL), -EINVAL);
        assert_true(strlen(e.msg) > 10);

        /* Create names its descriptor; without one it fails with a sentence. */
        assert_int_equal(call(c, "Create", &m, &e, "model", "x", "gguf", "0", NULL), -EBADF);
        assert_string_equal(e.msg, "Descriptor 0 was named, but the request came with 0 descriptors.");
        assert_int_equal(call(c, "Create", &m, &e, "model", "x", NULL), -EINVAL);
        assert_string_equal(
                e.msg, "Create takes one of 'gguf' (a descriptor of a GGUF file), 'hf_dir' (a descriptor "
                       "of a Hugging Face folder), 'archive' (a descriptor of a model archive) or "
                       "'from' (a local model).");
        assert_int_equal(dh_create_model(h, c, "bad:name:x", "size=1\n"), -EINVAL);

        /* The finished jobs are listed. */
        assert_int_equal(call(c, "Jobs", &m, &e, NULL), 0);
        const msgpack_object *jobs = proto_map_get(m.result, "jobs");
        assert_true(jobs->via.array.size >= 2);
        const msgpack_object *last = &jobs->via.array.ptr[0];
        assert_true(proto_str_eq(proto_map_get(last, "kind"), "create"));
        assert_true(proto_str_eq(proto_map_get(last, "status"), "failed"));
        assert_true(proto_str_eq(proto_map_get(&jobs->via.array.ptr[1], "status"), "success"));
        assert_int_equal(call(c, "Jobs", &m, &e, "job", "999", NULL), -ENOENT);
}

typedef struct Writer {
        int fd;
        int chunks;
        useconds_t pause;
} Writer;

static void *writer_main(void *userdata) {
        Writer *w = userdata;
        char buf[4096];
        memset(buf, '#', sizeof(buf));
        for (int i = 0; i < w->chunks; i++) {
                if (write(w->fd, buf, sizeof(buf)) != sizeof(buf))
                        break;
                usleep(w->pause);
        }
        close(w->fd);
        return NULL;
}

static int count_progress(const ProtoMessage *ev, void *userdata) {
        (*(int *)userdata)++;
        assert_string_equal(ev->name, "progress");
        assert_non_null(proto_map_get(ev->params, "completed"));
        return 0;
}

/* Starts Create from a pipe that a thread fills slowly; returns the job id from the first progress event. */
static uint64_t start_slow_create(ProtoClient *c, const char *name, Writer *w, pthread_t *t) {
        int p[2];
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        w->fd = p[1];
        assert_int_equal(pthread_create(t, NULL, writer_main, w), 0);
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", name, "gguf", "0", NULL);
        assert_int_equal(proto_client_send(c, "Create", sb.data, sb.size, &p[0], 1, NULL), 0);
        msgpack_sbuffer_destroy(&sb);
        close(p[0]);
        for (;;) {
                assert_int_equal(proto_client_read(c, 10000, &m, &e), 1);
                if (m.type == PROTO_NOTIFICATION)
                        return proto_map_get(m.params, "job")->via.u64;
                fail_msg("Create replied before any progress: %s", strna(m.error_message));
        }
}

static void test_job_survives_client(void **state) {
        Harness *h = *state;
        ProtoClient *c = dh_connect(h);
        Writer w = {.chunks = 40, .pause = 20000};
        pthread_t t;
        ProtoMessage m;
        QdError e = {};
        int events = 0;

        uint64_t job = start_slow_create(c, "slow", &w, &t);
        /* The client goes away; the job does not. */
        proto_client_free(c);

        _cleanup_(proto_client_freep) ProtoClient *d = dh_connect(h);
        _cleanup_free_ char *id = strdup_printf("%" PRIu64, job);
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "job", id, "watch", "true", NULL);
        assert_int_equal(
                proto_client_call(d, "Jobs", sb.data, sb.size, NULL, 0, count_progress, &events, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        assert_true(proto_str_eq(proto_map_get(m.result, "status"), "success"));
        assert_true(events > 0);
        pthread_join(t, NULL);
        assert_int_equal(list_count(d, "slow:latest"), 1001);

        /* Watching a finished job answers at once. */
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "job", id, "watch", "true", NULL);
        assert_int_equal(proto_client_call(d, "Jobs", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
}

static void test_cancel_job(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        _cleanup_(proto_client_freep) ProtoClient *d = dh_connect(h);
        Writer w = {.chunks = 1000, .pause = 20000};
        pthread_t t;
        ProtoMessage m;
        QdError e = {};

        signal(SIGPIPE, SIG_IGN);
        uint64_t job = start_slow_create(c, "cancelled", &w, &t);
        _cleanup_free_ char *id = strdup_printf("%" PRIu64, job);
        assert_int_equal(call(d, "Cancel", &m, &e, "job", id, NULL), 0);
        for (;;) {
                assert_int_equal(proto_client_read(c, 10000, &m, &e), 1);
                if (m.type == PROTO_RESPONSE)
                        break;
        }
        assert_int_equal(m.error, ECANCELED);
        pthread_join(t, NULL);
        /* Nothing half-written is visible. */
        assert_int_equal(list_count(d, "cancelled:latest"), 0);
}

static void test_sigterm_mid_job(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        Writer w = {.chunks = 1000, .pause = 20000};
        pthread_t t;

        signal(SIGPIPE, SIG_IGN);
        assert_int_equal(dh_create_model(h, c, "kept", "size=1\n"), 0);
        (void)start_slow_create(c, "interrupted", &w, &t);
        _cleanup_free_ char *models = strdup(h->models);
        _cleanup_free_ char *kept =
                strdup_printf("%s/manifests/registry.ollama.ai/library/kept/latest", h->models);
        _cleanup_free_ char *lost =
                strdup_printf("%s/manifests/registry.ollama.ai/library/interrupted", h->models);
        /* Only verified blobs: kept's model and config; the interrupted upload left nothing behind. */
        _cleanup_free_ char *check = strdup_printf("test $(ls -A %s/blobs | wc -l) -eq 2", h->models);

        /* dh_stop() removes the directory, so look before: stop the daemon by hand. */
        kill(h->pid, SIGTERM);
        int status;
        assert_int_equal(waitpid(h->pid, &status, 0), h->pid);
        h->pid = 0;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        struct stat st;
        assert_int_equal(stat(kept, &st), 0);
        assert_int_equal(stat(lost, &st), -1);
        assert_int_equal(system(check), 0);
        assert_true(dh_log_contains(h, "cancelled"));
        pthread_join(t, NULL);
        assert_int_equal(dh_stop(h), 0);
}

/*
 * Calls method with params packed by the caller and fds; returns the call's result with *m the response. The
 * error paths of Quantize and Eval that qctl never takes (it checks first) are reached this way.
 */
static int call_fds(ProtoClient *c, const char *method, msgpack_sbuffer *sb, const int *fds, size_t n_fds,
                    ProtoMessage *m, QdError *e) {
        qd_error_clear(e);
        int k = proto_client_call(c, method, sb->data, sb->size, fds, n_fds, NULL, NULL, m, e);
        msgpack_sbuffer_destroy(sb);
        return k;
}

static void pack_quantize(msgpack_sbuffer *sb, bool with_dst, const char *bad_override) {
        msgpack_packer pk;
        msgpack_sbuffer_init(sb);
        proto_packer_init(&pk, sb);
        msgpack_pack_map(&pk, 2 + with_dst + !!bad_override);
        proto_pack_kv_u64(&pk, "src", 0);
        proto_pack_kv_str(&pk, "type", "q8_0");
        if (with_dst)
                proto_pack_kv_u64(&pk, "dst", 1);
        if (bad_override) {
                proto_pack_key(&pk, "overrides");
                msgpack_pack_array(&pk, 1);
                proto_pack_str(&pk, bad_override);
        }
}

static void check_call_error(int k, const QdError *e, int code, const char *message) {
        if (k != -code || !strstr(e->msg, message))
                fail_msg("expected %s ('%s'), got %d: %s", strerror(code), message, k, e->msg);
}

static void test_quantize_eval_params(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        _cleanup_free_ char *model = strdup_printf("%s/stories260K.gguf", getenv("QUANTD_TEST_MODELS"));
        _cleanup_close_ int src = open(model, O_RDONLY | O_CLOEXEC);
        _cleanup_close_ int out = memfd_create("out", MFD_CLOEXEC);
        _cleanup_close_ int text = memfd_create("text", MFD_CLOEXEC);
        _cleanup_close_ int dir = open(h->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int pipefd[2];
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};
        int k;

        assert_true(src >= 0 && out >= 0 && text >= 0 && dir >= 0);
        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);

        /* The success path: the reply names the mixture and the sizes. */
        pack_quantize(&sb, true, NULL);
        k = call_fds(c, "Quantize", &sb, (int[]){src, out}, 2, &m, &e);
        if (k < 0)
                fail_msg("Quantize failed: %s", e.msg);
        struct stat st;
        assert_int_equal(fstat(out, &st), 0);
        assert_true(st.st_size > 0);
        assert_int_equal(proto_map_get(m.result, "size")->via.u64, (uint64_t)st.st_size);
        assert_true(proto_str_eq(proto_map_get(m.result, "type"), "Q8_0"));

        pack_quantize(&sb, false, NULL);
        k = call_fds(c, "Quantize", &sb, (int[]){src}, 1, &m, &e);
        check_call_error(k, &e, EINVAL, "'dst'");
        pack_quantize(&sb, true, NULL);
        k = call_fds(c, "Quantize", &sb, (int[]){pipefd[0], out}, 2, &m, &e);
        check_call_error(k, &e, EINVAL, "Parameter 'src' must be a descriptor of a regular file.");
        pack_quantize(&sb, true, NULL);
        k = call_fds(c, "Quantize", &sb, (int[]){src, src}, 2, &m, &e);
        check_call_error(k, &e, EINVAL,
                         "Parameter 'dst' must be a descriptor of a regular file open for writing.");
        pack_quantize(&sb, true, "attn_v=q8_0");
        k = call_fds(c, "Quantize", &sb, (int[]){src, out}, 2, &m, &e);
        check_call_error(k, &e, EINVAL, "Parameter 'overrides' must be an array of maps {pattern, type}.");
        /* A source that is not GGUF fails in the job, with the reader's sentence. */
        assert_int_equal(write(text, "hello world\n", 12), 12);
        pack_quantize(&sb, true, NULL);
        k = call_fds(c, "Quantize", &sb, (int[]){text, out}, 2, &m, &e);
        assert_int_equal(k, -EBADMSG);

        /* Eval: one model argument, a text that is a file. */
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "text", "0", "model", "x", "model_fd", "1", NULL);
        k = call_fds(c, "Eval", &sb, (int[]){text, src}, 2, &m, &e);
        check_call_error(k, &e, EINVAL, "Eval takes one of 'model' (a model name) and 'model_fd'.");
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "text", "0", NULL);
        k = call_fds(c, "Eval", &sb, (int[]){text}, 1, &m, &e);
        check_call_error(k, &e, EINVAL, "Eval takes one of 'model'");
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "text", "0", "model_fd", "1", NULL);
        k = call_fds(c, "Eval", &sb, (int[]){dir, src}, 2, &m, &e);
        check_call_error(k, &e, EISDIR, "Parameter 'text' must be a descriptor of a file, not a folder.");
        /* A model descriptor that is no GGUF: the engine's error. */
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "text", "0", "model_fd", "1", NULL);
        k = call_fds(c, "Eval", &sb, (int[]){text, text}, 2, &m, &e);
        assert_int_equal(k, -EBADMSG);
        /* A text over the limit (a sparse file: no memory spent here). */
        assert_int_equal(ftruncate(text, 64 * 1024 * 1024 + 1), 0);
        assert_int_equal(lseek(text, 0, SEEK_SET), 0);
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "text", "0", "model_fd", "1", NULL);
        k = call_fds(c, "Eval", &sb, (int[]){text, src}, 2, &m, &e);
        check_call_error(k, &e, EMSGSIZE, "The text is larger than 64 MiB.");

        /* Export: a format qctl never sends; Create: an archive beside another source, or with quantize. */
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "x", "fd", "0", "format", "zip", NULL);
        k = call_fds(c, "Export", &sb, (int[]){out}, 1, &m, &e);
        check_call_error(k, &e, EINVAL, "Unknown archive format 'zip'; use tar, tar.gz or tar.zst.");
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "x", "archive", "0", "gguf", "1", NULL);
        k = call_fds(c, "Create", &sb, (int[]){text, src}, 2, &m, &e);
        check_call_error(k, &e, EINVAL, "Create takes one of 'gguf'");
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "x", "archive", "0", "quantize", "q8_0", NULL);
        k = call_fds(c, "Create", &sb, (int[]){text}, 1, &m, &e);
        check_call_error(k, &e, EOPNOTSUPP, "Quantizing while importing an archive is not supported");
        close(pipefd[0]);
        close(pipefd[1]);
}

/* Sends Eval of SmolLM2 on the perplexity text and waits until the job scores its first chunk. */
static uint64_t start_slow_eval(ProtoClient *c, int model, int text) {
        msgpack_sbuffer sb;
        uint64_t msgid;
        ProtoMessage m;
        QdError e = {};

        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "text", "0", "model_fd", "1", "n_ctx", "32", NULL);
        assert_int_equal(proto_client_send(c, "Eval", sb.data, sb.size, (int[]){text, model}, 2, &msgid), 0);
        msgpack_sbuffer_destroy(&sb);
        for (;;) {
                assert_int_equal(proto_client_read(c, 60000, &m, &e), 1);
                if (m.type == PROTO_RESPONSE)
                        fail_msg("Eval ended before its first chunk: %s", strna(m.error_message));
                const msgpack_object *status = proto_map_get(m.params, "status"),
                                     *done = proto_map_get(m.params, "completed");
                if (status && proto_str_eq(status, "evaluating") && done && done->via.u64 >= 1)
                        return msgid;
        }
}

/* Cancel {id} of an Eval, or its client going away, stops the job between chunks. */
static void test_eval_cancel(void **state) {
        Harness *h = *state;
        const char *smollm = dh_smollm_path();
        _cleanup_free_ char *text_path = strdup_printf("%s/perplexity-text.txt", getenv("QUANTD_TEST_DATA"));
        ProtoMessage m;
        QdError e = {};

        _cleanup_close_ int model = open(smollm, O_RDONLY | O_CLOEXEC);
        _cleanup_close_ int text = open(text_path, O_RDONLY | O_CLOEXEC);
        assert_true(model >= 0 && text >= 0);

        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        uint64_t msgid = start_slow_eval(c, model, text);
        assert_int_equal(dh_cancel(c, msgid, NULL), 0);
        for (;;) {
                assert_int_equal(proto_client_read(c, 60000, &m, &e), 1);
                if (m.type == PROTO_RESPONSE && m.msgid == msgid)
                        break;
        }
        assert_int_equal(m.error, ECANCELED);

        /* The client goes away: the job ends as cancelled. */
        ProtoClient *c2 = dh_connect(h);
        assert_non_null(c2);
        assert_int_equal(lseek(text, 0, SEEK_SET), 0);
        (void)start_slow_eval(c2, model, text);
        proto_client_free(c2);
        /* Jobs lists the newest first: the second Eval, done with the cancellation's error. */
        bool done = false;
        for (int i = 0; i < 200 && !done; i++) {
                usleep(50000);
                assert_int_equal(call(c, "Jobs", &m, &e, NULL), 0);
                const msgpack_object *jobs = proto_map_get(m.result, "jobs");
                assert_true(jobs && jobs->via.array.size >= 2);
                const msgpack_object *newest = &jobs->via.array.ptr[0];
                assert_true(proto_str_eq(proto_map_get(newest, "kind"), "eval"));
                done = proto_str_eq(proto_map_get(newest, "state"), "done");
                if (done)
                        assert_true(
                                proto_str_eq(proto_map_get(newest, "error"), "Evaluation was cancelled."));
        }
        assert_true(done);
        assert_false(dh_log_contains(h, "(eval ) finished."));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_create_list_copy_delete, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_job_survives_client, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_cancel_job, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_sigterm_mid_job, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_quantize_eval_params, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_eval_cancel, setup, dh_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
