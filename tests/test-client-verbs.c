/* SPDX-License-Identifier: MIT */
/*
 * client/verbs.c and run.c against a scripted daemon: a child process that speaks the wire protocol on a
 * temporary socket and answers each method with a canned result, so that qctl's requests, output and errors
 * are checked byte for byte without a real quantd (the integration suite does that).
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <msgpack.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "client-internal.h"
#include "config.h"

/* ---- the scripted daemon ---- */

static void send_buf(int fd, msgpack_sbuffer *sb) {
        const char *p = sb->data;
        size_t n = sb->size;
        while (n > 0) {
                ssize_t k = proto_send(fd, p, n, NULL, 0);
                if (k < 0)
                        _exit(3);
                p += k;
                n -= (size_t)k;
        }
        msgpack_sbuffer_clear(sb);
}

static void reply_error(int fd, msgpack_sbuffer *sb, uint64_t id, int error, const char *msg) {
        msgpack_packer pk;
        proto_packer_init(&pk, sb);
        proto_pack_error(&pk, id, error, msg);
        send_buf(fd, sb);
}

static void progress_event(int fd, msgpack_sbuffer *sb, uint64_t id, const char *status, const char *digest,
                           uint64_t total, uint64_t completed) {
        msgpack_packer pk;
        proto_packer_init(&pk, sb);
        proto_pack_notification_begin(&pk, "progress", id, digest ? 4 : 1);
        proto_pack_kv_str(&pk, "status", status);
        if (digest) {
                proto_pack_kv_str(&pk, "digest", digest);
                proto_pack_kv_u64(&pk, "total", total);
                proto_pack_kv_u64(&pk, "completed", completed);
        }
        send_buf(fd, sb);
}

static void token_event(int fd, msgpack_sbuffer *sb, uint64_t id, const char *text) {
        msgpack_packer pk;
        proto_packer_init(&pk, sb);
        proto_pack_notification_begin(&pk, "token", id, 2);
        proto_pack_kv_str(&pk, "text", text);
        proto_pack_kv_i64(&pk, "token", 42);
        send_buf(fd, sb);
}

static char *obj_str(const msgpack_object *o, const char *key) {
        return result_strdup(o, key);
}

/* Answers one request. Returns false to close the connection. */
static bool serve(int fd, ProtoReader *rd, ProtoMessage *m, msgpack_sbuffer *sb) {
        msgpack_packer pk;
        uint64_t id = m->msgid;
        int64_t now = (int64_t)time(NULL);
        _cleanup_free_ char *model = obj_str(m->params, "model");

        proto_packer_init(&pk, sb);
        if (streq(m->name, "Hello")) {
                proto_pack_response_begin(&pk, id);
                msgpack_pack_map(&pk, 1);
                proto_pack_kv_u64(&pk, "protocol", PROTO_VERSION_MAJOR);
        } else if (streq(m->name, "Version")) {
                proto_pack_response_begin(&pk, id);
                msgpack_pack_map(&pk, 1);
                proto_pack_kv_str(&pk, "version", "9.9.9");
        } else if (streq(m->name, "List")) {
                proto_pack_response_begin(&pk, id);
                msgpack_pack_map(&pk, 1);
                proto_pack_key(&pk, "models");
                msgpack_pack_array(&pk, 2);
                msgpack_pack_map(&pk, 4);
                proto_pack_kv_str(&pk, "name", "llama3.2:latest");
                proto_pack_kv_str(&pk, "digest", "sha256:a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72");
                proto_pack_kv_u64(&pk, "size", 2019393189);
                proto_pack_kv_i64(&pk, "modified_at", now - 15 * 86400);
                msgpack_pack_map(&pk, 4);
                proto_pack_kv_str(&pk, "name", "smollm:latest");
                proto_pack_kv_str(&pk, "digest", "sha256:0123456789abcdef");
                proto_pack_kv_u64(&pk, "size", 98362432);
                proto_pack_kv_str(&pk, "modified_at", "2001-02-03T04:05:06.789+01:00");
        } else if (streq(m->name, "Ps")) {
                proto_pack_response_begin(&pk, id);
                msgpack_pack_map(&pk, 1);
                proto_pack_key(&pk, "models");
                msgpack_pack_array(&pk, 2);
                msgpack_pack_map(&pk, 6);
                proto_pack_kv_str(&pk, "name", "smollm:latest");
                proto_pack_kv_str(&pk, "digest", "sha256:0123456789abcdef");
                proto_pack_kv_u64(&pk, "size", 100000000);
                proto_pack_kv_u64(&pk, "size_vram", 48000000);
                proto_pack_kv_u64(&pk, "context_length", 4096);
                proto_pack_kv_i64(&pk, "expires_at", now + 241);
                msgpack_pack_map(&pk, 6);
                proto_pack_kv_str(&pk, "name", "forever:latest");
                proto_pack_kv_str(&pk, "digest", "sha256:fedcba9876543210");
                proto_pack_kv_u64(&pk, "size", 2000);
                proto_pack_kv_u64(&pk, "size_vram", 0);
                proto_pack_kv_str(&pk, "processor", "100% CPU");
                proto_pack_kv_i64(&pk, "expires_at", -1);
        } else if (streq(m->name, "Show")) {
                if (streq_ptr(model, "nope")) {
                        reply_error(fd, sb, id, ENOENT, "model 'nope' not found");
                        return true;
                }
                proto_pack_response_begin(&pk, id);
                msgpack_pack_map(&pk, 6);
                proto_pack_kv_str(&pk, "template", "{{ .Prompt }}");
                proto_pack_kv_str(&pk, "system", "You are terse.");
                proto_pack_key(&pk, "parameters");
                msgpack_pack_map(&pk, 2);
                proto_pack_key(&pk, "stop");
                msgpack_pack_array(&pk, 2);
                proto_pack_str(&pk, "<|im_end|>");
                proto_pack_str(&pk, "User:");
                proto_pack_kv_double(&pk, "temperature", 0.5);
                proto_pack_key(&pk, "license");
                msgpack_pack_array(&pk, 1);
                proto_pack_str(&pk, "Apache License\nVersion 2.0\nJanuary 2004");
                proto_pack_key(&pk, "model_info");
                msgpack_pack_map(&pk, 4);
                proto_pack_kv_str(&pk, "general.architecture", "llama");
                proto_pack_kv_u64(&pk, "general.parameter_count", 134515008);
                proto_pack_kv_u64(&pk, "llama.context_length", 8192);
                proto_pack_kv_u64(&pk, "llama.embedding_length", 576);
                proto_pack_key(&pk, "details");
                msgpack_pack_map(&pk, 1);
                proto_pack_kv_str(&pk, "quantization_level", "Q4_1");
        } else if (streq(m->name, "Pull") || streq(m->name, "Push")) {
                if (streq_ptr(model, "nope")) {
                        reply_error(fd, sb, id, ENOENT, "model 'nope' is not in the registry");
                        return true;
                }
                progress_event(fd, sb, id, "pulling manifest", NULL, 0, 0);
                progress_event(fd, sb, id, "pulling sha256:8eeb52dfb3bb9aef", "sha256:8eeb52dfb3bb9aef", 1000, 500);
                progress_event(fd, sb, id, "pulling sha256:8eeb52dfb3bb9aef", "sha256:8eeb52dfb3bb9aef", 1000, 1000);
                progress_event(fd, sb, id, "verifying sha256 digest", NULL, 0, 0);
                proto_packer_init(&pk, sb);
                proto_pack_response_begin(&pk, id);
                msgpack_pack_map(&pk, 1);
                proto_pack_kv_str(&pk, "status", "success");
        } else if (streq(m->name, "Create")) {
                /* Checks what qctl sends: the model file or a folder as descriptor 0, or a name. */
                char head[5] = "";
                uint64_t idx = (uint64_t)result_int(m->params, "gguf", -1);
                _cleanup_free_ char *from = obj_str(m->params, "from");
                _cleanup_free_ char *system = obj_str(m->params, "system");
                if (result_int(m->params, "hf_dir", -1) == 0) {
                        /* A folder, read only through its descriptor. */
                        QdError e = {};
                        struct stat st;
                        _cleanup_close_ int dfd = proto_message_take_fd(m, 0, &e);
                        if (dfd < 0 || fstat(dfd, &st) < 0 || !S_ISDIR(st.st_mode)) {
                                reply_error(fd, sb, id, EBADF, "no folder came with Create");
                                return true;
                        }
                        if (faccessat(dfd, "config.json", R_OK, 0) < 0) {
                                reply_error(fd, sb, id, ENOENT, "The folder has no config.json.");
                                return true;
                        }
                        strcpy(head, "dir");
                } else if (idx == 0) {
                        QdError e = {};
                        _cleanup_close_ int mfd = proto_message_take_fd(m, 0, &e);
                        if (mfd < 0 || pread(mfd, head, 4, 0) != 4) {
                                reply_error(fd, sb, id, EBADF, "no model file came with Create");
                                return true;
                        }
                } else if (!from) {
                        reply_error(fd, sb, id, EINVAL, "neither file nor from");
                        return true;
                }
                const msgpack_object *params = result_map(m->params, "parameters");
                const msgpack_object *stop = result_array(params, "stop");
                progress_event(fd, sb, id, "parsing GGUF", NULL, 0, 0);
                proto_packer_init(&pk, sb);
                proto_pack_response_begin(&pk, id);
                msgpack_pack_map(&pk, 5);
                proto_pack_kv_str(&pk, "head", head);
                proto_pack_kv_str(&pk, "from", from);
                proto_pack_kv_str(&pk, "system", system);
                proto_pack_kv_u64(&pk, "stops", stop ? stop->via.array.size : 0);
                proto_pack_kv_u64(&pk, "messages", result_array(m->params, "messages")
                                                           ? result_array(m->params, "messages")->via.array.size
                                                           : 0);
        } else if (streq(m->name, "Generate") || streq(m->name, "Chat") || streq(m->name, "Load")) {
                if (streq_ptr(model, "missing")) {
                        reply_error(fd, sb, id, ENOENT, "model 'missing' not found");
                        return true;
                }
                if (streq_ptr(model, "slow")) {
                        /* One token, then nothing until Cancel {id}. */
                        token_event(fd, sb, id, "Once");
                        for (;;) {
                                ProtoMessage c;
                                QdError e = {};
                                int k = proto_reader_next(rd, &c, &e);
                                if (k < 0)
                                        _exit(4);
                                if (k == 0) {
                                        ssize_t n = proto_reader_fill(rd, fd);
                                        if (n <= 0)
                                                return false;
                                        continue;
                                }
                                if (c.type == PROTO_REQUEST && streq(c.name, "Cancel") &&
                                    (uint64_t)result_int(c.params, "id", 0) == id) {
                                        msgpack_packer cp;
                                        proto_packer_init(&cp, sb);
                                        proto_pack_response_begin(&cp, c.msgid);
                                        msgpack_pack_nil(&cp);
                                        send_buf(fd, sb);
                                        reply_error(fd, sb, id, ECANCELED, "cancelled");
                                        return true;
                                }
                        }
                }
                if (streq_ptr(model, "sleepy"))
                        /* Loading takes a while: the spinner has time to turn. */
                        usleep(350000);
                if (streq(m->name, "Load")) {
                        proto_pack_response_begin(&pk, id);
                        msgpack_pack_nil(&pk);
                        send_buf(fd, sb);
                        return true;
                }
                /* Echo what matters of the request, so that tests see what was sent. */
                _cleanup_free_ char *prompt = obj_str(m->params, "prompt");
                _cleanup_free_ char *format = obj_str(m->params, "format");
                _cleanup_free_ char *keep = obj_str(m->params, "keep_alive");
                const msgpack_object *opts = result_map(m->params, "options");
                token_event(fd, sb, id, "The quick brown fox");
                token_event(fd, sb, id, " jumps over the lazy dog.");
                char echo[512];
                snprintf(echo, sizeof(echo), " [prompt=%s format=%s keep_alive=%s seed=%" PRId64 " stops=%u]",
                         strna(prompt), strna(format), strna(keep), result_int(opts, "seed", -1),
                         result_array(opts, "stop") ? result_array(opts, "stop")->via.array.size : 0);
                token_event(fd, sb, id, echo);
                proto_packer_init(&pk, sb);
                proto_pack_response_begin(&pk, id);
                msgpack_pack_map(&pk, 8);
                proto_pack_kv_bool(&pk, "done", true);
                proto_pack_kv_str(&pk, "response", "(the whole answer, which qctl does not print twice)");
                proto_pack_kv_i64(&pk, "total_duration_ns", 5047924316);
                proto_pack_kv_i64(&pk, "load_duration_ns", 12345678);
                proto_pack_kv_i64(&pk, "prompt_eval_count", 26);
                proto_pack_kv_i64(&pk, "prompt_eval_duration_ns", 130000000);
                proto_pack_kv_i64(&pk, "eval_count", 290);
                proto_pack_kv_i64(&pk, "eval_duration_ns", 4709313000);
        } else if (streq(m->name, "Copy") || streq(m->name, "Delete") || streq(m->name, "Unload")) {
                _cleanup_free_ char *source = obj_str(m->params, "source");
                if (streq_ptr(model, "nope") || streq_ptr(source, "nope")) {
                        reply_error(fd, sb, id, ENOENT, "model 'nope' not found");
                        return true;
                }
                if (streq_ptr(model, "busy")) {
                        reply_error(fd, sb, id, EBUSY, "model 'busy' is in use");
                        return true;
                }
                proto_pack_response_begin(&pk, id);
                msgpack_pack_nil(&pk);
        } else {
                reply_error(fd, sb, id, EOPNOTSUPP, "Unknown method.");
                return true;
        }
        send_buf(fd, sb);
        return true;
}

static void server_main(int listener) {
        for (;;) {
                int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0)
                        _exit(0);
                ProtoReader *rd = NULL;
                msgpack_sbuffer sb;
                msgpack_sbuffer_init(&sb);
                if (proto_reader_new(&rd, 0) < 0)
                        _exit(2);
                bool open_ = true;
                while (open_) {
                        ProtoMessage m;
                        QdError e = {};
                        int k = proto_reader_next(rd, &m, &e);
                        if (k < 0)
                                break;
                        if (k == 0) {
                                if (proto_reader_fill(rd, fd) <= 0)
                                        break;
                                continue;
                        }
                        if (m.type == PROTO_REQUEST)
                                open_ = serve(fd, rd, &m, &sb);
                }
                proto_reader_free(rd);
                msgpack_sbuffer_destroy(&sb);
                close(fd);
        }
}

typedef struct Fixture {
        char dir[64];
        char socket[128];
        pid_t server;
        char *out_text, *err_text;
        size_t out_size, err_size;
        FILE *out, *err;
        volatile sig_atomic_t interrupted;
        Qctl q;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        snprintf(f->dir, sizeof(f->dir), "/tmp/test-client-verbs-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->socket, sizeof(f->socket), "%s/sock", f->dir);
        int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(l >= 0);
        strcpy(sa.sun_path, f->socket);
        assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(l, 8), 0);
        f->server = fork();
        assert_true(f->server >= 0);
        if (f->server == 0)
                server_main(l);
        close(l);

        f->out = open_memstream(&f->out_text, &f->out_size);
        f->err = open_memstream(&f->err_text, &f->err_size);
        f->q = (Qctl){ .socket = f->socket, .out = f->out, .err = f->err, .in_fd = -1, .in_tty = true,
                       .interrupted = &f->interrupted };
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        qctl_done(&f->q);
        kill(f->server, SIGTERM);
        waitpid(f->server, NULL, 0);
        fclose(f->out);
        fclose(f->err);
        free(f->out_text);
        free(f->err_text);
        unlink(f->socket);
        rmdir(f->dir);
        free(f);
        return 0;
}

/* Runs a command line against the scripted daemon; returns the verb's result and leaves output in f. */
static int run(Fixture *f, QdError *e, const char *line) {
        _cleanup_free_ char *copy = strdup(line);
        char *argv[32];
        int argc = 0;
        Command c;

        for (char *t = strtok(copy, " "); t && argc < 31; t = strtok(NULL, " "))
                argv[argc++] = t;
        argv[argc] = NULL;
        fflush(f->out);
        fflush(f->err);
        rewind(f->out);
        rewind(f->err);
        assert_int_equal(command_parse(&c, argc, argv, e), 0);
        int r = qctl_run_command(&f->q, &c, e);
        command_done(&c);
        fflush(f->out);
        fflush(f->err);
        /* The streams were rewound: what this command wrote ends at the current position. */
        f->out_text[ftell(f->out)] = 0;
        f->err_text[ftell(f->err)] = 0;
        return r;
}

static void test_list(void **state) {
        Fixture *f = *state;
        QdError e = {};

        assert_int_equal(run(f, &e, "list"), 0);
        assert_string_equal(f->out_text, "NAME               ID              SIZE      MODIFIED\n"
                                         "llama3.2:latest    a80c4f17acd5    2.0 GB    2 weeks ago\n"
                                         "smollm:latest      0123456789ab    98 MB     25 years ago\n");
        assert_int_equal(run(f, &e, "ls --json"), 0);
        assert_non_null(strstr(f->out_text, "\"name\": \"llama3.2:latest\""));
        assert_non_null(strstr(f->out_text, "\"size\": 2019393189"));
}

static void test_ps(void **state) {
        Fixture *f = *state;
        QdError e = {};

        assert_int_equal(run(f, &e, "ps"), 0);
        assert_string_equal(f->out_text,
                            "NAME              ID              SIZE      PROCESSOR          CONTEXT    UNTIL\n"
                            "smollm:latest     0123456789ab    100 MB    52%/48% CPU/GPU    4096       4 minutes from now\n"
                            "forever:latest    fedcba987654    2.0 KB    100% CPU                      Forever\n");
        assert_int_equal(run(f, &e, "ps --json"), 0);
        assert_non_null(strstr(f->out_text, "\"context_length\": 4096"));
}

static void test_show(void **state) {
        Fixture *f = *state;
        QdError e = {};

        assert_int_equal(run(f, &e, "show smollm"), 0);
        assert_string_equal(f->out_text, "\n"
                                         "  Model\n"
                                         "    architecture        llama\n"
                                         "    parameters          134.52M\n"
                                         "    context length      8192\n"
                                         "    embedding length    576\n"
                                         "    quantization        Q4_1\n"
                                         "\n"
                                         "  Parameters\n"
                                         "    stop           \"<|im_end|>\"\n"
                                         "    stop           \"User:\"\n"
                                         "    temperature    0.5\n"
                                         "\n"
                                         "  System\n"
                                         "    You are terse.\n"
                                         "\n"
                                         "  License\n"
                                         "    Apache License\n"
                                         "    Version 2.0\n"
                                         "    ...\n"
                                         "\n");
        assert_int_equal(run(f, &e, "show smollm --template"), 0);
        assert_string_equal(f->out_text, "{{ .Prompt }}\n");
        assert_int_equal(run(f, &e, "show smollm --system"), 0);
        assert_string_equal(f->out_text, "You are terse.\n");
        assert_int_equal(run(f, &e, "show smollm --license"), 0);
        assert_string_equal(f->out_text, "Apache License\nVersion 2.0\nJanuary 2004\n");
        assert_int_equal(run(f, &e, "show smollm --parameters"), 0);
        assert_string_equal(f->out_text, "stop           \"<|im_end|>\"\n"
                                         "stop           \"User:\"\n"
                                         "temperature    0.5\n");
        assert_int_equal(run(f, &e, "show smollm --modelfile"), 0);
        assert_string_equal(f->out_text, "# Modelfile generated by \"qctl show\"\n"
                                         "# To build a new Modelfile based on this, replace FROM with:\n"
                                         "# FROM smollm\n"
                                         "\n"
                                         "FROM smollm\n"
                                         "TEMPLATE {{ .Prompt }}\n"
                                         "SYSTEM You are terse.\n"
                                         "PARAMETER stop <|im_end|>\n"
                                         "PARAMETER stop User:\n"
                                         "PARAMETER temperature 0.5\n"
                                         "LICENSE \"\"\"Apache License\nVersion 2.0\nJanuary 2004\"\"\"\n");
        /* The generated Modelfile parses. */
        Modelfile *mf = NULL;
        assert_int_equal(modelfile_parse(f->out_text, strlen(f->out_text), "shown", NULL, &mf, &e), 0);
        assert_string_equal(mf->system, "You are terse.");
        modelfile_free(mf);

        assert_int_equal(run(f, &e, "show smollm -v"), 0);
        assert_non_null(strstr(f->out_text, "  Metadata\n    general.architecture       llama\n"));
        assert_int_equal(run(f, &e, "show smollm --json"), 0);
        assert_non_null(strstr(f->out_text, "\"quantization_level\": \"Q4_1\""));

        assert_int_equal(run(f, &e, "show nope"), -ENOENT);
        assert_string_equal(e.msg, "model 'nope' not found");
        assert_int_equal(exit_code_from_errno(-ENOENT), QCTL_EXIT_NOT_FOUND);
}

static void test_pull(void **state) {
        Fixture *f = *state;
        QdError e = {};

        /* Not a terminal: plain lines. */
        assert_int_equal(run(f, &e, "pull smollm"), 0);
        assert_string_equal(f->err_text, "pulling manifest\n"
                                         "pulling 8eeb52dfb3bb: 1.0 KB\n"
                                         "pulling 8eeb52dfb3bb: done\n"
                                         "verifying sha256 digest\n"
                                         "success\n");
        assert_int_equal(run(f, &e, "push smollm"), 0);
        assert_non_null(strstr(f->err_text, "success\n"));

        /* A terminal: lines redrawn in place, ending on a new line. */
        f->q.err_tty = true;
        f->q.width = 60;
        assert_int_equal(run(f, &e, "pull smollm"), 0);
        assert_non_null(strstr(f->err_text, "pulling 8eeb52dfb3bb: 100% \u2595"));
        assert_non_null(strstr(f->err_text, "\033[K"));
        assert_non_null(strstr(f->err_text, "\033[2A"));
        assert_non_null(endswith(f->err_text, "\nsuccess\n"));
        f->q.err_tty = false;

        assert_int_equal(run(f, &e, "pull nope"), -ENOENT);
        assert_string_equal(e.msg, "model 'nope' is not in the registry");
}

static void test_create(void **state) {
        Fixture *f = *state;
        QdError e = {};
        _cleanup_free_ char *mfpath = strdup_printf("%s/Modelfile", f->dir);
        _cleanup_free_ char *gguf = strdup_printf("%s/tiny.gguf", f->dir);
        FILE *w;

        w = fopen(gguf, "we");
        fputs("GGUFrest", w);
        fclose(w);
        w = fopen(mfpath, "we");
        fputs("FROM ./tiny.gguf\nSYSTEM hi\nPARAMETER stop a\nPARAMETER stop b\nPARAMETER f16_kv true\n"
              "MESSAGE user q\nMESSAGE assistant a\n",
              w);
        fclose(w);
        _cleanup_free_ char *line = strdup_printf("create mine -f %s", mfpath);

        /* The scripted daemon echoes what it got in its result; qctl prints just "success". */
        assert_int_equal(run(f, &e, line), 0);
        _cleanup_free_ char *want = strdup_printf("Warning: %s:5:11: parameter f16_kv is no longer used, ignoring "
                                                  "it.\nparsing GGUF\nsuccess\n",
                                                  mfpath);
        assert_string_equal(f->err_text, want);
        unlink(mfpath);
        unlink(gguf);
}

static void test_create_checks(void **state) {
        Fixture *f = *state;
        QdError e = {};
        _cleanup_free_ char *mfpath = strdup_printf("%s/Modelfile", f->dir);
        _cleanup_free_ char *gguf = strdup_printf("%s/tiny.gguf", f->dir);
        FILE *w = fopen(gguf, "we");
        fputs("GGUFrest", w);
        fclose(w);

        /* What Create carries: checked with the packer directly, since qctl prints only the progress. */
        w = fopen(mfpath, "we");
        fputs("FROM ./tiny.gguf\nSYSTEM hi\nPARAMETER stop a\nPARAMETER stop b\nMESSAGE user q\n", w);
        fclose(w);
        Modelfile *mf = NULL;
        assert_int_equal(modelfile_load(mfpath, &mf, &e), 0);
        Packer p;
        packer_open(&p);
        assert_int_equal(qctl_pack_create(&p.pk, "mine", mf, "gguf", "q4_K_M"), 0);
        msgpack_zone z;
        msgpack_zone_init(&z, 1024);
        msgpack_object o;
        assert_int_equal(msgpack_unpack(p.sb.data, p.sb.size, NULL, &z, &o), MSGPACK_UNPACK_SUCCESS);
        _cleanup_free_ char *model = result_strdup(&o, "model"), *system = result_strdup(&o, "system"),
                            *quant = result_strdup(&o, "quantize");
        assert_string_equal(model, "mine");
        assert_string_equal(system, "hi");
        assert_string_equal(quant, "q4_K_M");
        assert_int_equal(result_int(&o, "gguf", -1), 0);
        assert_null(proto_map_get(&o, "from"));
        assert_int_equal(result_array(result_map(&o, "parameters"), "stop")->via.array.size, 2);
        assert_int_equal(result_array(&o, "messages")->via.array.size, 1);
        msgpack_zone_destroy(&z);
        packer_close(&p);
        modelfile_free(mf);

        /* A missing FROM file is found before anything is sent. */
        w = fopen(mfpath, "we");
        fputs("FROM ./absent.gguf\n", w);
        fclose(w);
        _cleanup_free_ char *line = strdup_printf("create mine -f %s", mfpath);
        assert_int_equal(run(f, &e, line), -ENOENT);
        _cleanup_free_ char *msg = strdup_printf("%s:1: FROM names '%s/./absent.gguf', which cannot be opened: "
                                                 "No such file or directory.", mfpath, f->dir);
        assert_string_equal(e.msg, msg);
        qd_error_clear(&e);

        /* A Hugging Face folder travels as a descriptor ("hf_dir"), and the daemon's error comes back. */
        w = fopen(mfpath, "we");
        fputs("FROM .\n", w);
        fclose(w);
        assert_int_equal(run(f, &e, line), -ENOENT);
        assert_string_equal(e.msg, "The folder has no config.json.");
        qd_error_clear(&e);
        _cleanup_free_ char *config = strdup_printf("%s/config.json", f->dir);
        w = fopen(config, "we");
        fputs("{}\n", w);
        fclose(w);
        assert_int_equal(run(f, &e, line), 0);
        unlink(config);

        /* Something that is neither file nor folder. */
        w = fopen(mfpath, "we");
        fputs("FROM /dev/null\n", w);
        fclose(w);
        assert_int_equal(run(f, &e, line), -EINVAL);
        assert_non_null(strstr(e.msg, "which is not a regular file"));
        qd_error_clear(&e);

        /* ADAPTER. */
        w = fopen(mfpath, "we");
        fputs("FROM base\nADAPTER ./lora.gguf\n", w);
        fclose(w);
        assert_int_equal(run(f, &e, line), -EOPNOTSUPP);
        _cleanup_free_ char *msg2 = strdup_printf("%s: ADAPTER is not supported yet: quantd cannot apply LoRA "
                                                  "adapters.", mfpath);
        assert_string_equal(e.msg, msg2);
        qd_error_clear(&e);

        /* A syntax error. */
        w = fopen(mfpath, "we");
        fputs("FROM base\nPARAMETER seed x\n", w);
        fclose(w);
        assert_int_equal(run(f, &e, line), -EBADMSG);
        _cleanup_free_ char *msg3 = strdup_printf("%s:2:16: expected an integer for seed, found 'x'", mfpath);
        assert_string_equal(e.msg, msg3);
        assert_int_equal(exit_code_from_errno(-EBADMSG), QCTL_EXIT_BAD_INPUT);
        qd_error_clear(&e);

        /* From a model name: no descriptor. */
        w = fopen(mfpath, "we");
        fputs("FROM llama3.2\n", w);
        fclose(w);
        assert_int_equal(run(f, &e, line), 0);

        /* The default Modelfile, missing. */
        char cwd[4096];
        assert_non_null(getcwd(cwd, sizeof(cwd)));
        _cleanup_free_ char *empty = strdup_printf("%s/empty", f->dir);
        assert_int_equal(mkdir(empty, 0700), 0);
        assert_int_equal(chdir(empty), 0);
        assert_int_equal(run(f, &e, "create mine"), -ENOENT);
        assert_string_equal(e.msg, "No Modelfile in the current folder: name one with -f FILE.");
        assert_int_equal(chdir(cwd), 0);
        rmdir(empty);
        unlink(mfpath);
        unlink(gguf);
}

static void test_run_prompt(void **state) {
        Fixture *f = *state;
        QdError e = {};

        assert_int_equal(run(f, &e, "run smollm hi there -o seed=7 -o stop=x -o stop=y --keepalive 10m"), 0);
        assert_string_equal(f->out_text, "The quick brown fox jumps over the lazy dog. [prompt=hi there format=n/a "
                                         "keep_alive=10m0s seed=7 stops=2]\n");
}

static void test_run_wrap_and_stats(void **state) {
        Fixture *f = *state;
        QdError e = {};

        f->q.out_tty = true;
        f->q.width = 20;
        assert_int_equal(run(f, &e, "run smollm hi --verbose --format json"), 0);
        /* JSON is never wrapped. */
        assert_non_null(startswith(f->out_text, "The quick brown fox jumps over the lazy dog. [prompt=hi format=json"));
        assert_string_equal(f->err_text, "total duration:       5.047924316s\n"
                                         "load duration:        12.345678ms\n"
                                         "prompt eval count:    26 token(s)\n"
                                         "prompt eval duration: 130ms\n"
                                         "prompt eval rate:     200.00 tokens/s\n"
                                         "eval count:           290 token(s)\n"
                                         "eval duration:        4.709313s\n"
                                         "eval rate:            61.58 tokens/s\n");
        assert_int_equal(run(f, &e, "run smollm hi"), 0);
        assert_non_null(startswith(f->out_text, "The quick brown fox\njumps over the lazy\ndog. [prompt=hi\n"));
        assert_int_equal(run(f, &e, "run smollm hi --nowordwrap"), 0);
        assert_non_null(startswith(f->out_text, "The quick brown fox jumps"));
        f->q.out_tty = false;
        f->q.width = 0;
}

static void test_run_piped(void **state) {
        Fixture *f = *state;
        QdError e = {};
        int p[2];

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        assert_int_equal(write(p[1], "piped text\n", 11), 11);
        close(p[1]);
        f->q.in_tty = false;
        f->q.in_fd = p[0];
        assert_int_equal(run(f, &e, "run smollm Summarize:"), 0);
        assert_non_null(strstr(f->out_text, "[prompt=Summarize:\n\npiped text format"));
        close(p[0]);

        /* Nothing piped and no prompt: nothing to ask. */
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        close(p[1]);
        f->q.in_fd = p[0];
        assert_int_equal(run(f, &e, "run smollm"), -EINVAL);
        assert_string_equal(e.msg, "No prompt: give one after the model's name, or pipe text into qctl run.");
        close(p[0]);
        f->q.in_tty = true;
        f->q.in_fd = -1;
}

static void test_run_missing_pulls(void **state) {
        Fixture *f = *state;
        QdError e = {};

        /* Generate says ENOENT, qctl pulls (the script pulls fine) and asks again, which fails again. */
        assert_int_equal(run(f, &e, "run missing hi"), -ENOENT);
        assert_non_null(strstr(f->err_text, "model 'missing' not found Pulling it.\n"));
        assert_non_null(strstr(f->err_text, "success\n"));
        assert_string_equal(e.msg, "model 'missing' not found");
}

static void test_run_spinner(void **state) {
        Fixture *f = *state;
        QdError e = {};

        /* On a terminal the spinner turns on stderr until the first token, then is wiped. */
        f->q.err_tty = true;
        assert_int_equal(run(f, &e, "run sleepy hi"), 0);
        assert_non_null(startswith(f->err_text, "\r⠋ \r⠙ "));
        assert_non_null(endswith(f->err_text, "\r\033[K"));
        assert_non_null(startswith(f->out_text, "The quick brown fox"));

        /* Not a terminal: no spinner. */
        f->q.err_tty = false;
        assert_int_equal(run(f, &e, "run sleepy hi"), 0);
        assert_string_equal(f->err_text, "");
}

static volatile sig_atomic_t *to_interrupt;

static void interrupt_soon(int sig) {
        (*to_interrupt)++;
}

static void test_run_cancel(void **state) {
        Fixture *f = *state;
        QdError e = {};

        /* The script sends one token and waits for Cancel; SIGALRM plays Ctrl+C. */
        to_interrupt = &f->interrupted;
        struct sigaction sa = { .sa_handler = interrupt_soon };
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = { .it_value = { .tv_usec = 300000 } };
        setitimer(ITIMER_REAL, &it, NULL);
        assert_int_equal(run(f, &e, "run slow hi"), -ECANCELED);
        assert_string_equal(f->out_text, "Once\n");
        assert_int_equal(exit_code_from_errno(-ECANCELED), QCTL_EXIT_INTERRUPTED);
        f->interrupted = 0;

        /* A second Ctrl+C gives up at once, without waiting for the daemon. */
        f->interrupted = 2;
        assert_int_equal(run(f, &e, "run slow hi"), -ECANCELED);
        f->interrupted = 0;
        qctl_done(&f->q); /* that connection has a stale request on it */
}

static void test_small_verbs(void **state) {
        Fixture *f = *state;
        QdError e = {};

        assert_int_equal(run(f, &e, "cp a b"), 0);
        assert_string_equal(f->out_text, "copied 'a' to 'b'\n");
        assert_int_equal(run(f, &e, "rm a b"), 0);
        assert_string_equal(f->out_text, "deleted 'a'\ndeleted 'b'\n");
        assert_int_equal(run(f, &e, "rm a nope b"), -ENOENT);
        assert_string_equal(f->out_text, "deleted 'a'\n");
        assert_string_equal(e.msg, "model 'nope' not found");
        qd_error_clear(&e);
        assert_int_equal(run(f, &e, "stop a"), 0);
        assert_string_equal(f->out_text, "");
        assert_int_equal(run(f, &e, "stop busy"), -EBUSY);
        assert_string_equal(e.msg, "model 'busy' is in use");
        assert_int_equal(exit_code_from_errno(-EBUSY), QCTL_EXIT_FAILURE);
        qd_error_clear(&e);
        assert_int_equal(run(f, &e, "version"), 0);
        assert_string_equal(f->out_text, "quantd version is 9.9.9\nqctl version is " PACKAGE_VERSION "\n");
}

static void test_no_daemon(void **state) {
        Fixture *f = *state;
        QdError e = {};
        _cleanup_free_ char *absent = strdup_printf("%s/absent.sock", f->dir);

        f->q.socket = absent;
        assert_int_equal(run(f, &e, "list"), -ECONNREFUSED);
        _cleanup_free_ char *msg = strdup_printf("quantd is not running (no socket at %s): start it with 'quantd "
                                                 "--user' (or 'systemctl start quantd' for the system daemon), or "
                                                 "set QUANTD_SOCKET.",
                                                 absent);
        assert_string_equal(e.msg, msg);
        assert_int_equal(exit_code_from_errno(-ECONNREFUSED), QCTL_EXIT_NO_DAEMON);
        qd_error_clear(&e);

        /* version still answers, with a warning. */
        assert_int_equal(run(f, &e, "version"), 0);
        assert_string_equal(f->out_text, "qctl version is " PACKAGE_VERSION "\n");
        assert_non_null(startswith(f->err_text, "Warning: could not get the daemon's version: quantd is not running"));

        /* A path that is not a socket. */
        _cleanup_free_ char *plain = strdup_printf("%s/plain", f->dir);
        FILE *w = fopen(plain, "we");
        fclose(w);
        f->q.socket = plain;
        assert_int_equal(run(f, &e, "ps"), -ECONNREFUSED);
        assert_non_null(strstr(e.msg, "quantd is not running (no socket at"));
        unlink(plain);
        f->q.socket = f->socket;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_list, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ps, setup, teardown),
                cmocka_unit_test_setup_teardown(test_show, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pull, setup, teardown),
                cmocka_unit_test_setup_teardown(test_create, setup, teardown),
                cmocka_unit_test_setup_teardown(test_create_checks, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_prompt, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_wrap_and_stats, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_piped, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_missing_pulls, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_spinner, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_cancel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_small_verbs, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_daemon, setup, teardown),
        };

        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
