/* SPDX-License-Identifier: MIT */
/*
 * A C sd-bus client against a real quantd --user (fake backend) on the private session bus of
 * dbus-run-session: models created from passed descriptors, every Token signal of a generation in order and
 * then the statistics, the same tokens as over the socket, two clients at once, Cancel, a client that leaves,
 * error names, LoadedModels and its PropertiesChanged.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "dbus.h"

#define CALL_TIMEOUT_USEC (60ULL * 1000000ULL)

typedef struct Daemon {
        char dir[64];
        char socket[128];
        pid_t pid;
} Daemon;

static Daemon daemon_;

static void write_file(const char *path, const char *text) {
        _cleanup_fclose_ FILE *f = fopen(path, "we");
        assert_non_null(f);
        assert_true(fputs(text, f) >= 0);
}

static sd_bus *bus_open(void) {
        sd_bus *bus;
        assert_int_equal(sd_bus_open_user(&bus), 0);
        return bus;
}

static bool name_has_owner(sd_bus *bus) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int has = 0;
        if (sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "NameHasOwner", NULL, &reply, "s", QUANTD_DBUS_NAME) < 0)
                return false;
        return sd_bus_message_read(reply, "b", &has) > 0 && has;
}

/* Calls Create with the file at path passed as a descriptor; returns the D-Bus error's errno or 0. */
static int create_model(sd_bus *bus, const char *model, const char *path) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        sd_bus_error e = SD_BUS_ERROR_NULL;

        assert_true(fd >= 0);
        assert_int_equal(sd_bus_message_new_method_call(bus, &m, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH,
                                                        QUANTD_DBUS_INTERFACE, "Create"),
                         0);
        assert_true(sd_bus_message_append(m, "sha{sv}", model, fd, 0) >= 0);
        int k = sd_bus_call(bus, m, CALL_TIMEOUT_USEC, &e, &reply);
        sd_bus_error_free(&e);
        return k < 0 ? k : 0;
}

static int group_setup(void **state) {
        const char *root = getenv("QUANTD_BUILD_ROOT");
        char path[256];

        assert_non_null(root);
        assert_int_equal(dbus_errors_register(), 0);
        snprintf(daemon_.dir, sizeof(daemon_.dir), "/tmp/quantd-dbus-XXXXXX");
        assert_non_null(mkdtemp(daemon_.dir));
        snprintf(daemon_.socket, sizeof(daemon_.socket), "%s/sock", daemon_.dir);
        snprintf(path, sizeof(path), "%s/fast.model", daemon_.dir);
        write_file(path, "size=1000\n");
        snprintf(path, sizeof(path), "%s/slow.model", daemon_.dir);
        write_file(path, "size=1000\ndelay_us=20000\n");
        snprintf(path, sizeof(path), "%s/broken.model", daemon_.dir);
        write_file(path, "fail_load=1\n");

        daemon_.pid = fork();
        assert_true(daemon_.pid >= 0);
        if (daemon_.pid == 0) {
                char exe[512], sock[160], models[160];
                snprintf(exe, sizeof(exe), "%s/daemon/quantd", root);
                snprintf(sock, sizeof(sock), "--socket=%s", daemon_.socket);
                snprintf(models, sizeof(models), "--models=%s/models", daemon_.dir);
                setenv("XDG_RUNTIME_DIR", daemon_.dir, 1);
                setenv("XDG_CONFIG_HOME", daemon_.dir, 1);
                execl(exe, exe, "--user", "--backend=fake", sock, models, (char *)NULL);
                _exit(127);
        }

        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();
        for (int i = 0; i < 200 && !name_has_owner(bus); i++)
                usleep(50000);
        assert_true(name_has_owner(bus));

        static const char *const models[] = { "fast", "slow", "broken" };
        for (size_t i = 0; i < ELEMENTSOF(models); i++) {
                snprintf(path, sizeof(path), "%s/%s.model", daemon_.dir, models[i]);
                assert_int_equal(create_model(bus, models[i], path), 0);
        }
        return 0;
}

/* ---- a generation followed through its signals ---- */

typedef struct Stream {
        sd_bus *bus;
        sd_bus_slot *call_slot;
        sd_bus_slot *match_slot;
        uint64_t id;           /* the call's serial */
        Buf text;              /* the Token texts, in order */
        int32_t tokens[2048];  /* (n_tokens) */
        size_t n_tokens;
        size_t n_foreign;      /* signals for another id, or on the wrong path */
        size_t n_after_reply;  /* signals after the reply */
        size_t cancel_after;   /* send Cancel(id) after this many tokens (0: never) */
        sd_bus_slot *cancel_slot;
        bool cancel_replied;
        char cancel_error[128];
        bool replied;
        char error[128];       /* the error name, "" on success */
        int64_t eval_count;
        int64_t prompt_eval_count;
        char done_reason[32];
} Stream;

static void stream_done(Stream *s) {
        sd_bus_slot_unref(s->call_slot);
        sd_bus_slot_unref(s->match_slot);
        sd_bus_slot_unref(s->cancel_slot);
        buf_free(&s->text);
}

/* Reads an a{sv}, picking out the fields the tests look at. */
static void read_fields(sd_bus_message *m, Stream *s, bool event) {
        const char *key, *contents;
        char type;

        assert_true(sd_bus_message_enter_container(m, 'a', "{sv}") >= 0);
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                assert_true(sd_bus_message_read(m, "s", &key) > 0);
                assert_true(sd_bus_message_peek_type(m, &type, &contents) > 0);
                if (event && streq(key, "text")) {
                        const char *t;
                        assert_string_equal(contents, "s");
                        assert_true(sd_bus_message_read(m, "v", "s", &t) > 0);
                        buf_append_str(&s->text, t);
                } else if (event && streq(key, "token")) {
                        int64_t t;
                        assert_string_equal(contents, "x");
                        assert_true(sd_bus_message_read(m, "v", "x", &t) > 0);
                        assert_true(s->n_tokens < ELEMENTSOF(s->tokens));
                        s->tokens[s->n_tokens++] = (int32_t)t;
                } else if (!event && streq(key, "eval_count"))
                        assert_true(sd_bus_message_read(m, "v", "x", &s->eval_count) > 0);
                else if (!event && streq(key, "prompt_eval_count"))
                        assert_true(sd_bus_message_read(m, "v", "x", &s->prompt_eval_count) > 0);
                else if (!event && streq(key, "done_reason")) {
                        const char *r;
                        assert_true(sd_bus_message_read(m, "v", "s", &r) > 0);
                        snprintf(s->done_reason, sizeof(s->done_reason), "%s", r);
                } else
                        assert_true(sd_bus_message_skip(m, "v") >= 0);
                assert_true(sd_bus_message_exit_container(m) >= 0);
        }
        assert_true(sd_bus_message_exit_container(m) >= 0);
}

static int on_cancel_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Stream *s = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        s->cancel_replied = true;
        snprintf(s->cancel_error, sizeof(s->cancel_error), "%s", e ? e->name : "");
        return 0;
}

static int on_token(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Stream *s = userdata;
        char path[128];
        uint64_t id;

        if (!streq(sd_bus_message_get_member(m), "Token"))
                return 0;
        assert_true(sd_bus_message_read(m, "t", &id) > 0);
        snprintf(path, sizeof(path), QUANTD_DBUS_REQUEST_PATH_PREFIX "/%" PRIu64, id);
        if (id != s->id || !streq(sd_bus_message_get_path(m), path)) {
                s->n_foreign++;
                return 0;
        }
        if (s->replied)
                s->n_after_reply++;
        read_fields(m, s, true);
        if (s->cancel_after > 0 && s->n_tokens == s->cancel_after && !s->cancel_slot)
                assert_true(sd_bus_call_method_async(s->bus, &s->cancel_slot, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH,
                                                     QUANTD_DBUS_INTERFACE, "Cancel", on_cancel_reply, s, "ta{sv}",
                                                     s->id, 0) >= 0);
        return 0;
}

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Stream *s = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);

        s->replied = true;
        if (e) {
                snprintf(s->error, sizeof(s->error), "%s", e->name);
                return 0;
        }
        read_fields(m, s, false);
        return 0;
}

/* Starts Generate on s->bus: greedy, num_predict tokens, token ids in the events. */
static void stream_start(Stream *s, sd_bus *bus, const char *model, const char *prompt, int64_t num_predict) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

        s->bus = bus;
        assert_true(sd_bus_add_match(bus, &s->match_slot,
                                     "type='signal',interface='" QUANTD_DBUS_REQUEST_INTERFACE "',"
                                     "path_namespace='" QUANTD_DBUS_REQUEST_PATH_PREFIX "'",
                                     on_token, s) >= 0);
        assert_int_equal(sd_bus_message_new_method_call(bus, &m, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH,
                                                        QUANTD_DBUS_INTERFACE, "Generate"),
                         0);
        assert_true(sd_bus_message_append(m, "ssa{sv}", model, prompt, 2, "options", "a{sv}", 2, "num_predict", "x",
                                          num_predict, "temperature", "d", 0.0, "return_tokens", "b", 1) >= 0);
        assert_true(sd_bus_call_async(bus, &s->call_slot, m, on_reply, s, CALL_TIMEOUT_USEC) >= 0);
        assert_int_equal(sd_bus_message_get_cookie(m, &s->id), 0);
}

static void run_until(sd_bus *const *buses, size_t n, bool (*done)(void *), void *userdata) {
        uint64_t deadline = now_ns() + 60ULL * 1000000000ULL;

        while (!done(userdata)) {
                assert_true(now_ns() < deadline);
                bool busy = false;
                for (size_t i = 0; i < n; i++) {
                        int k = sd_bus_process(buses[i], NULL);
                        assert_true(k >= 0);
                        busy |= k > 0;
                }
                if (!busy)
                        (void)sd_bus_wait(buses[0], n == 1 ? 100000 : 2000);
        }
}

static bool stream_replied(void *userdata) {
        Stream *s = userdata;
        return s->replied && (!s->cancel_slot || s->cancel_replied);
}

static bool got_tokens(void *userdata);

static int group_teardown(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();
        Stream s = {};
        int status;

        /* A caller still waiting when the daemon stops gets an answer that says so. */
        stream_start(&s, bus, "slow", "Still running", 1000);
        run_until(&bus, 1, got_tokens, &s);
        assert_int_equal(kill(daemon_.pid, SIGTERM), 0);
        run_until(&bus, 1, stream_replied, &s);
        assert_string_equal(s.error, "org.quantd.Quantd1.Error.ShuttingDown");
        stream_done(&s);

        assert_int_equal(waitpid(daemon_.pid, &status, 0), daemon_.pid);
        /* A clean stop, with calls of departed clients and the bus connection freed. */
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", daemon_.dir);
        assert_int_equal(system(cmd), 0);
        return 0;
}

/* ---- the tests ---- */

static void test_generate_streams_every_token(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();
        Stream s = {};

        stream_start(&s, bus, "fast", "Once upon a time", 40);
        run_until(&bus, 1, stream_replied, &s);
        assert_string_equal(s.error, "");
        /* Every token came as a signal, in order, before the reply that carries the statistics. */
        assert_int_equal(s.eval_count, 40);
        assert_int_equal(s.n_tokens, 40);
        assert_int_equal(s.n_after_reply, 0);
        assert_int_equal(s.n_foreign, 0);
        assert_int_equal(s.prompt_eval_count, (int64_t)strlen("Once upon a time") + 1);
        assert_string_equal(s.done_reason, "length");
        /* Token ids and text agree: the fake's tokens are bytes. */
        Buf bytes = {};
        for (size_t i = 0; i < s.n_tokens; i++) {
                uint8_t b = (uint8_t)s.tokens[i];
                assert_true(s.tokens[i] >= 0 && s.tokens[i] < 256);
                buf_append(&bytes, &b, 1);
        }
        assert_int_equal(bytes.len, s.text.len);
        assert_memory_equal(bytes.data, s.text.data, bytes.len);
        assert_non_null(strstr((const char *)s.text.data, "\xc3\xa9")); /* é arrived whole */
        buf_free(&bytes);
        stream_done(&s);
}

typedef struct SocketRun {
        int32_t tokens[2048];
        size_t n;
} SocketRun;

static int on_socket_event(const ProtoMessage *event, void *userdata) {
        SocketRun *run = userdata;
        const msgpack_object *t = proto_map_get(event->params, "token");
        if (streq(event->name, "token") && t && t->type == MSGPACK_OBJECT_POSITIVE_INTEGER && run->n < 2048)
                run->tokens[run->n++] = (int32_t)t->via.u64;
        return 0;
}

/* One method table: the same request over the socket gives the same tokens. */
static void test_same_tokens_as_socket(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();
        _cleanup_(proto_client_freep) ProtoClient *client = NULL;
        SocketRun run = {};
        msgpack_sbuffer sb;
        msgpack_packer pk;
        QdError err = {};
        Stream s = {};

        stream_start(&s, bus, "fast", "The same", 25);
        run_until(&bus, 1, stream_replied, &s);
        assert_string_equal(s.error, "");

        assert_int_equal(proto_client_connect(daemon_.socket, &client), 0);
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 4);
        proto_pack_kv_str(&pk, "model", "fast");
        proto_pack_kv_str(&pk, "prompt", "The same");
        proto_pack_kv_bool(&pk, "return_tokens", true);
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_i64(&pk, "num_predict", 25);
        proto_pack_kv_double(&pk, "temperature", 0);
        assert_int_equal(proto_client_call(client, "Generate", sb.data, sb.size, NULL, 0, on_socket_event, &run, NULL,
                                           &err),
                         0);
        msgpack_sbuffer_destroy(&sb);

        assert_int_equal(run.n, 25);
        assert_int_equal(s.n_tokens, run.n);
        assert_memory_equal(s.tokens, run.tokens, run.n * sizeof(int32_t));
        stream_done(&s);
}

static bool both_replied(void *userdata) {
        Stream *s = userdata;
        return s[0].replied && s[1].replied;
}

/* Two clients at once, each with its own generation: each gets its own tokens only, complete. */
static void test_two_clients_at_once(void **state) {
        sd_bus *buses[2] = { bus_open(), bus_open() };
        Stream s[2] = {}, solo[2] = {};
        static const char *const prompts[2] = { "First client", "Second client, longer" };

        for (size_t i = 0; i < 2; i++)
                stream_start(&s[i], buses[i], "slow", prompts[i], 30);
        run_until(buses, 2, both_replied, s);

        for (size_t i = 0; i < 2; i++) {
                assert_string_equal(s[i].error, "");
                assert_int_equal(s[i].n_tokens, 30);
                assert_int_equal(s[i].eval_count, 30);
                assert_int_equal(s[i].n_foreign, 0);
                assert_int_equal(s[i].n_after_reply, 0);
                /* The same as the prompt alone gives, on the fast model (the delay changes nothing else). */
                stream_start(&solo[i], buses[i], "fast", prompts[i], 30);
                run_until(&buses[i], 1, stream_replied, &solo[i]);
                assert_int_equal(solo[i].n_tokens, 30);
                assert_memory_equal(s[i].tokens, solo[i].tokens, 30 * sizeof(int32_t));
        }
        /* Different prompts, different streams: neither client saw the other's. */
        assert_memory_not_equal(s[0].tokens, s[1].tokens, 30 * sizeof(int32_t));
        for (size_t i = 0; i < 2; i++) {
                stream_done(&s[i]);
                stream_done(&solo[i]);
                sd_bus_flush_close_unref(buses[i]);
        }
}

static void test_cancel(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();
        Stream s = { .cancel_after = 3 };

        stream_start(&s, bus, "slow", "Cancel me", 1000);
        run_until(&bus, 1, stream_replied, &s);
        assert_string_equal(s.cancel_error, "");
        assert_string_equal(s.error, "org.quantd.Quantd1.Error.Cancelled");
        assert_true(s.n_tokens >= 3 && s.n_tokens < 1000);
        stream_done(&s);
}

/* Request ids are per caller: another client cannot cancel this one's generation by its id. */
static void test_cancel_is_per_caller(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open(), *other = bus_open();
        sd_bus_error e = SD_BUS_ERROR_NULL;
        Stream s = {};

        stream_start(&s, bus, "slow", "Mine", 12);
        run_until(&bus, 1, got_tokens, &s);
        assert_int_equal(sd_bus_call_method(other, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE,
                                            "Cancel", &e, NULL, "ta{sv}", s.id, 0),
                         -ENOENT);
        assert_string_equal(e.name, "org.quantd.Quantd1.Error.NotFound");
        sd_bus_error_free(&e);
        run_until(&bus, 1, stream_replied, &s);
        assert_string_equal(s.error, "");
        assert_int_equal(s.n_tokens, 12);
        stream_done(&s);
}

static int64_t in_use(sd_bus *bus, const char *model) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int64_t n = 0;
        const char *key;

        assert_true(sd_bus_get_property(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE,
                                        "LoadedModels", &e, &reply, "aa{sv}") >= 0);
        assert_true(sd_bus_message_enter_container(reply, 'a', "a{sv}") >= 0);
        while (sd_bus_message_enter_container(reply, 'a', "{sv}") > 0) {
                const char *name = NULL;
                int64_t users = 0;
                while (sd_bus_message_enter_container(reply, 'e', "sv") > 0) {
                        assert_true(sd_bus_message_read(reply, "s", &key) > 0);
                        if (streq(key, "name"))
                                assert_true(sd_bus_message_read(reply, "v", "s", &name) > 0);
                        else if (streq(key, "in_use"))
                                assert_true(sd_bus_message_read(reply, "v", "x", &users) > 0);
                        else
                                assert_true(sd_bus_message_skip(reply, "v") >= 0);
                        assert_true(sd_bus_message_exit_container(reply) >= 0);
                }
                assert_true(sd_bus_message_exit_container(reply) >= 0);
                /* The scheduler names a model as the store does, with its tag. */
                const char *tag = name ? startswith(name, model) : NULL;
                if (tag && (streq(tag, "") || streq(tag, ":latest")))
                        n += users;
        }
        return n;
}

static bool got_tokens(void *userdata) {
        Stream *s = userdata;
        return s->n_tokens >= 2;
}

/* A client that leaves the bus mid-stream: its generation is cancelled, the daemon serves on. */
static void test_client_leaves(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *watcher = bus_open();
        sd_bus *bus = bus_open();
        Stream s = {};

        stream_start(&s, bus, "slow", "I will leave", 1000);
        run_until(&bus, 1, got_tokens, &s);
        assert_int_equal(in_use(watcher, "slow"), 1);
        stream_done(&s);
        sd_bus_flush_close_unref(bus);

        /* 1000 tokens of 20 ms would take 20 s; cancelled, the model is free at once. */
        uint64_t deadline = now_ns() + 5ULL * 1000000000ULL;
        while (in_use(watcher, "slow") != 0) {
                assert_true(now_ns() < deadline);
                usleep(20000);
        }
}

/* Calls method with an empty a{sv} after the typed arguments and returns the error name ("" on success). */
static void expect_error(sd_bus *bus, const char *method, const char *error_name, int error, const char *types,
                         ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        va_list ap;

        assert_int_equal(sd_bus_message_new_method_call(bus, &m, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH,
                                                        QUANTD_DBUS_INTERFACE, method),
                         0);
        va_start(ap, types);
        assert_true(sd_bus_message_appendv(m, types, ap) >= 0);
        va_end(ap);
        assert_int_equal(sd_bus_call(bus, m, CALL_TIMEOUT_USEC, &e, &reply), -error);
        assert_string_equal(e.name, error_name);
        /* With the map registered, the errno comes back, and the sentence is the daemon's. */
        assert_int_equal(sd_bus_error_get_errno(&e), error);
        assert_true(strlen(e.message) > 10);
        print_message("# %s: %s: %s\n", method, e.name, e.message);
        sd_bus_error_free(&e);
}

static void test_error_names(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();

        expect_error(bus, "Show", "org.quantd.Quantd1.Error.NotFound", ENOENT, "sa{sv}", "nonexistent", 0);
        expect_error(bus, "Generate", "org.quantd.Quantd1.Error.NotFound", ENOENT, "ssa{sv}", "nonexistent", "x",
                     0);
        expect_error(bus, "Generate", "org.quantd.Quantd1.Error.InvalidArgument", EINVAL, "ssa{sv}", "fast", "x",
                     1, "model", "s", "other");
        expect_error(bus, "Generate", "org.quantd.Quantd1.Error.InvalidArgument", EINVAL, "ssa{sv}", "fast", "x",
                     1, "options", "a{sv}", 1, "temperature", "s", "hot");
        expect_error(bus, "Generate", "org.quantd.Quantd1.Error.Malformed", EBADMSG, "ssa{sv}", "broken", "x", 0);
        expect_error(bus, "Copy", "org.quantd.Quantd1.Error.NotFound", ENOENT, "ssa{sv}", "nonexistent", "other",
                     0);
        expect_error(bus, "Pull", "org.quantd.Quantd1.Error.InvalidArgument", EINVAL, "sa{sv}", "bad:name:x", 0);
        expect_error(bus, "Cancel", "org.quantd.Quantd1.Error.NotFound", ENOENT, "ta{sv}", (uint64_t)424242, 0);
        expect_error(bus, "Hello", "org.quantd.Quantd1.Error.VersionMismatch", EPROTONOSUPPORT, "a{sv}", 1,
                     "protocol", "u", 99);
        expect_error(bus, "Cancel", "org.quantd.Quantd1.Error.InvalidArgument", EINVAL, "ta{sv}", (uint64_t)0, 0);
}

static void test_list_and_copy_delete(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        const char *key, *name;
        size_t n = 0;

        assert_true(sd_bus_call_method(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE, "Copy", &e,
                                       NULL, "ssa{sv}", "fast", "copied", 0) >= 0);
        assert_true(sd_bus_call_method(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE, "List", &e,
                                       &reply, "a{sv}", 0) >= 0);
        assert_true(sd_bus_message_enter_container(reply, 'a', "{sv}") > 0);
        assert_true(sd_bus_message_enter_container(reply, 'e', "sv") > 0);
        assert_true(sd_bus_message_read(reply, "s", &key) > 0);
        assert_string_equal(key, "models");
        assert_true(sd_bus_message_enter_container(reply, 'v', "av") > 0);
        assert_true(sd_bus_message_enter_container(reply, 'a', "v") > 0);
        bool found = false;
        while (sd_bus_message_enter_container(reply, 'v', "a{sv}") > 0) {
                assert_true(sd_bus_message_enter_container(reply, 'a', "{sv}") > 0);
                while (sd_bus_message_enter_container(reply, 'e', "sv") > 0) {
                        assert_true(sd_bus_message_read(reply, "s", &key) > 0);
                        if (streq(key, "name")) {
                                assert_true(sd_bus_message_read(reply, "v", "s", &name) > 0);
                                found |= streq(name, "copied:latest");
                        } else
                                assert_true(sd_bus_message_skip(reply, "v") >= 0);
                        assert_true(sd_bus_message_exit_container(reply) >= 0);
                }
                assert_true(sd_bus_message_exit_container(reply) >= 0);
                assert_true(sd_bus_message_exit_container(reply) >= 0);
                n++;
        }
        assert_true(found);
        assert_int_equal(n, 4); /* fast, slow, broken, copied */
        assert_true(sd_bus_call_method(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE, "Delete", &e,
                                       NULL, "sa{sv}", "copied", 0) >= 0);
        expect_error(bus, "Show", "org.quantd.Quantd1.Error.NotFound", ENOENT, "sa{sv}", "copied", 0);
}

typedef struct Changes {
        unsigned n;
} Changes;

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Changes *c = userdata;
        const char *iface, *name;

        assert_true(sd_bus_message_read(m, "s", &iface) > 0);
        assert_string_equal(iface, QUANTD_DBUS_INTERFACE);
        assert_true(sd_bus_message_enter_container(m, 'a', "{sv}") >= 0);
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                assert_true(sd_bus_message_read(m, "s", &name) > 0);
                c->n += streq(name, "LoadedModels");
                assert_true(sd_bus_message_skip(m, "v") >= 0);
                assert_true(sd_bus_message_exit_container(m) >= 0);
        }
        return 0;
}

static bool changed_once_more(void *userdata) {
        Changes *c = userdata;
        return c->n > 0;
}

static void test_loaded_models_changes(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open(), *other = bus_open();
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        Changes c = {};

        assert_true(sd_bus_match_signal(bus, &slot, NULL, QUANTD_DBUS_PATH, "org.freedesktop.DBus.Properties",
                                        "PropertiesChanged", on_properties_changed, &c) >= 0);
        /* Loaded or not before, kept forever now: a change either way. */
        assert_true(sd_bus_call_method(other, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE, "Load", &e,
                                       NULL, "sa{sv}", "fast", 1, "keep_alive", "x", (int64_t)-1) >= 0);
        run_until(&bus, 1, changed_once_more, &c);

        c.n = 0;
        assert_true(sd_bus_call_method(other, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE, "Unload", &e,
                                       NULL, "sa{sv}", "fast", 0) >= 0);
        run_until(&bus, 1, changed_once_more, &c);
        assert_int_equal(in_use(bus, "fast"), 0);

        c.n = 0;
        assert_true(sd_bus_call_method(other, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE, "Load", &e,
                                       NULL, "sa{sv}", "fast", 0) >= 0);
        run_until(&bus, 1, changed_once_more, &c);
        sd_bus_error_free(&e);
}

typedef struct Job {
        uint64_t id;       /* the Create call's serial */
        size_t n_progress; /* Progress signals of this call */
        int64_t job;       /* the job id they named */
        bool progress_after_reply;
        bool replied;
        char error[128];
        int64_t reply_job;
} Job;

static int64_t read_job_fields(sd_bus_message *m, char *status, size_t size) {
        const char *key, *v;
        int64_t job = -1;

        assert_true(sd_bus_message_enter_container(m, 'a', "{sv}") >= 0);
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                assert_true(sd_bus_message_read(m, "s", &key) > 0);
                if (streq(key, "job"))
                        assert_true(sd_bus_message_read(m, "v", "x", &job) > 0);
                else if (streq(key, "status") && status) {
                        assert_true(sd_bus_message_read(m, "v", "s", &v) > 0);
                        snprintf(status, size, "%s", v);
                } else
                        assert_true(sd_bus_message_skip(m, "v") >= 0);
                assert_true(sd_bus_message_exit_container(m) >= 0);
        }
        assert_true(sd_bus_message_exit_container(m) >= 0);
        return job;
}

static int on_progress(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Job *j = userdata;
        char status[64] = "";
        uint64_t id;

        if (!streq(sd_bus_message_get_member(m), "Progress"))
                return 0;
        assert_true(sd_bus_message_read(m, "t", &id) > 0);
        if (id != j->id)
                return 0;
        j->progress_after_reply |= j->replied;
        j->job = read_job_fields(m, status, sizeof(status));
        /* The store words it ("receiving model data", "writing manifest", ...). */
        assert_true(status[0] != 0);
        j->n_progress++;
        return 0;
}

static int on_create_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Job *j = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);

        j->replied = true;
        if (e)
                snprintf(j->error, sizeof(j->error), "%s", e->name);
        else
                j->reply_job = read_job_fields(m, NULL, 0);
        return 0;
}

static bool job_replied(void *userdata) {
        return ((Job *)userdata)->replied;
}

/* Create is a job: its Progress signals, naming the job, come before the reply that names it too. */
static void test_create_progress(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *match = NULL, *call = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        char path[256];
        Job j = {};

        snprintf(path, sizeof(path), "%s/fast.model", daemon_.dir);
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_true(sd_bus_add_match(bus, &match,
                                     "type='signal',interface='" QUANTD_DBUS_REQUEST_INTERFACE "',"
                                     "path_namespace='" QUANTD_DBUS_REQUEST_PATH_PREFIX "'",
                                     on_progress, &j) >= 0);
        assert_int_equal(sd_bus_message_new_method_call(bus, &m, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH,
                                                        QUANTD_DBUS_INTERFACE, "Create"),
                         0);
        assert_true(sd_bus_message_append(m, "sha{sv}", "progress", fd, 0) >= 0);
        assert_true(sd_bus_call_async(bus, &call, m, on_create_reply, &j, CALL_TIMEOUT_USEC) >= 0);
        assert_int_equal(sd_bus_message_get_cookie(m, &j.id), 0);
        run_until(&bus, 1, job_replied, &j);

        assert_string_equal(j.error, "");
        assert_true(j.n_progress >= 1);
        assert_false(j.progress_after_reply);
        assert_true(j.job > 0);
        assert_int_equal(j.reply_job, j.job);
        assert_true(sd_bus_call_method(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE, "Delete", NULL,
                                       NULL, "sa{sv}", "progress", 0) >= 0);
}

/* The integer under key in a result a{sv}, or -1. */
static int64_t result_int_of(sd_bus_message *m, const char *want) {
        const char *key;
        int64_t v = -1;

        assert_true(sd_bus_message_enter_container(m, 'a', "{sv}") >= 0);
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                assert_true(sd_bus_message_read(m, "s", &key) > 0);
                if (streq(key, want))
                        assert_true(sd_bus_message_read(m, "v", "x", &v) > 0);
                else
                        assert_true(sd_bus_message_skip(m, "v") >= 0);
                assert_true(sd_bus_message_exit_container(m) >= 0);
        }
        assert_true(sd_bus_message_exit_container(m) >= 0);
        return v;
}

/* Quantize and Export with descriptors, over the bus as over the socket. */
static void test_quantize_and_export(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL, *reply2 = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        char path[512];
        struct stat st;

        snprintf(path, sizeof(path), "%s/stories260K.gguf", getenv("QUANTD_TEST_MODELS"));
        _cleanup_close_ int src = open(path, O_RDONLY | O_CLOEXEC);
        _cleanup_close_ int dst = memfd_create("dst", MFD_CLOEXEC);
        _cleanup_close_ int archive = memfd_create("archive", MFD_CLOEXEC);
        assert_true(src >= 0 && dst >= 0 && archive >= 0);

        if (sd_bus_call_method(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE, "Quantize",
                               &e, &reply, "hhsa{sv}", src, dst, "Q8_0", 0) < 0)
                fail_msg("Quantize failed: %s", e.message);
        assert_int_equal(fstat(dst, &st), 0);
        assert_true(st.st_size > 0);
        assert_int_equal(result_int_of(reply, "size"), st.st_size);

        if (sd_bus_call_method(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE, "Export", &e,
                               &reply2, "sha{sv}", "fast", archive, 1, "format", "s", "tar") < 0)
                fail_msg("Export failed: %s", e.message);
        assert_int_equal(fstat(archive, &st), 0);
        /* A tar file: whole 512-byte records, the manifest's header first. */
        assert_true(st.st_size > 1024 && st.st_size % 512 == 0);
        char head[512];
        assert_int_equal(pread(archive, head, sizeof(head), 0), (ssize_t)sizeof(head));
        assert_non_null(startswith(head, "manifests/"));
        assert_memory_equal(head + 257, "ustar", 5);

        /* An unknown mixture: EINVAL's D-Bus error, the daemon's sentence. */
        assert_true(sd_bus_call_method(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE,
                                       "Quantize", &e, NULL, "hhsa{sv}", src, dst, "q9", 0) < 0);
        assert_non_null(strstr(e.message, "Unknown quantization type 'q9'"));
        sd_bus_error_free(&e);
}

static void test_properties(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_open();
        _cleanup_strv_free_ char **backends = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *version = NULL;

        assert_true(sd_bus_get_property_string(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE,
                                               "Version", &e, &version) >= 0);
        assert_string_equal(version, PACKAGE_VERSION);
        assert_true(sd_bus_get_property_strv(bus, QUANTD_DBUS_NAME, QUANTD_DBUS_PATH, QUANTD_DBUS_INTERFACE,
                                             "Backends", &e, &backends) >= 0);
        assert_non_null(backends);
        assert_string_equal(backends[0], "cpu");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_properties),
                cmocka_unit_test(test_generate_streams_every_token),
                cmocka_unit_test(test_same_tokens_as_socket),
                cmocka_unit_test(test_two_clients_at_once),
                cmocka_unit_test(test_cancel),
                cmocka_unit_test(test_cancel_is_per_caller),
                cmocka_unit_test(test_client_leaves),
                cmocka_unit_test(test_error_names),
                cmocka_unit_test(test_list_and_copy_delete),
                cmocka_unit_test(test_create_progress),
                cmocka_unit_test(test_quantize_and_export),
                cmocka_unit_test(test_loaded_models_changes),
        };
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
