/* SPDX-License-Identifier: MIT */
/*
 * A real quantd with the fake backend: streamed generation and its statistics, 16 concurrent clients whose
 * streams equal a solo run, continuous batching (concurrent streams share forward steps), Cancel, a client
 * killed mid-stream, keep_alive 0 / 1s / negative, eviction order under MaxLoadedModels=, the memory
 * budget's ENOSPC, Tokenize and Detokenize, and SIGTERM mid-generation.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <signal.h>
#include <sys/wait.h>

#include "daemon-harness.h"

static int setup(void **state) {
        return dh_setup(state, "[Scheduler]\nNumParallel=16\nMaxLoadedModels=2\nContextLength=512\n", NULL);
}

static int setup_small_budget(void **state) {
        /* Each fake model below budgets size + 512 * 16 * 64 bytes of "KV cache". */
        return dh_setup(
                state,
                "[Scheduler]\nNumParallel=16\nMemoryBudget=2000000\nLoadTimeout=1s\nContextLength=512\n",
                NULL);
}

static int setup_one_request(void **state) {
        return dh_setup(state, "[Daemon]\nMaxRequestsPerConnection=1\n", NULL);
}

static int setup_small_output(void **state) {
        return dh_setup(state, "[Daemon]\nMaxQueuedOutput=64K\n", NULL);
}

typedef struct Stream {
        Buf text;
        unsigned events;
} Stream;

static int collect(const ProtoMessage *ev, void *userdata) {
        Stream *s = userdata;
        const msgpack_object *t = proto_map_get(ev->params, "text");
        assert_string_equal(ev->name, "token");
        assert_non_null(t);
        assert_int_equal(buf_append(&s->text, t->via.str.ptr, t->via.str.size), 0);
        s->events++;
        return 0;
}

static void pack_generate(msgpack_sbuffer *sb, const char *model, const char *prompt, int num_predict,
                          const char *keep_alive, bool stream) {
        msgpack_packer pk;
        proto_packer_init(&pk, sb);
        msgpack_pack_map(&pk, keep_alive ? 5 : 4);
        proto_pack_kv_str(&pk, "model", model);
        proto_pack_kv_str(&pk, "prompt", prompt);
        proto_pack_kv_bool(&pk, "stream", stream);
        if (keep_alive)
                proto_pack_kv_str(&pk, "keep_alive", keep_alive);
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_i64(&pk, "num_predict", num_predict);
        proto_pack_kv_double(&pk, "temperature", 0);
}

/* Generates and returns the streamed text (caller frees); *ret_eval gets eval_count. */
static char *generate(ProtoClient *c, const char *model, const char *prompt, int num_predict,
                      const char *keep_alive, uint64_t *ret_eval, QdError *e) {
        msgpack_sbuffer sb;
        ProtoMessage m;
        Stream s = {};

        msgpack_sbuffer_init(&sb);
        pack_generate(&sb, model, prompt, num_predict, keep_alive, true);
        int k = proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, collect, &s, &m, e);
        msgpack_sbuffer_destroy(&sb);
        if (k < 0) {
                buf_free(&s.text);
                return NULL;
        }
        if (ret_eval)
                *ret_eval = proto_map_get(m.result, "eval_count")->via.u64;
        assert_true(proto_map_get(m.result, "done")->via.boolean);
        assert_true(proto_map_get(m.result, "prompt_eval_count")->via.u64 > 0);
        return s.text.len ? buf_steal_str(&s.text) : strdup("");
}

static size_t ps_count(ProtoClient *c, const char *name, int64_t *ret_expires) {
        ProtoMessage m;
        QdError e = {};
        assert_int_equal(proto_client_call(c, "Ps", NULL, 0, NULL, 0, NULL, NULL, &m, &e), 0);
        const msgpack_object *models = proto_map_get(m.result, "models");
        size_t found = 0;
        for (uint32_t i = 0; i < models->via.array.size; i++)
                if (proto_str_eq(proto_map_get(&models->via.array.ptr[i], "name"), name)) {
                        found++;
                        if (ret_expires)
                                *ret_expires =
                                        proto_map_get(&models->via.array.ptr[i], "expires_at")->via.i64;
                }
        return models->via.array.size * 100 + found;
}

static void test_generate_stream(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};
        uint64_t eval = 0;

        assert_int_equal(dh_create_model(h, c, "fake", "size=1000\n"), 0);
        _cleanup_free_ char *a = generate(c, "fake", "Once upon", 64, NULL, &eval, &e);
        assert_non_null(a);
        assert_int_equal(eval, 64);
        /* Every tenth position of the fake is "é" (two tokens): the stream holds only whole characters. */
        assert_non_null(strstr(a, "\xc3\xa9"));
        for (size_t i = 0; a[i]; i++)
                assert_true((a[i] >= 'a' && a[i] <= 'z') || (uint8_t)a[i] == 0xc3 || (uint8_t)a[i] == 0xa9);

        /* Deterministic, and the same whether streamed or not. */
        _cleanup_free_ char *b = generate(c, "fake", "Once upon", 64, NULL, NULL, &e);
        assert_string_equal(a, b);
        msgpack_sbuffer sb;
        ProtoMessage m;
        msgpack_sbuffer_init(&sb);
        pack_generate(&sb, "fake", "Once upon", 64, NULL, false);
        assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        assert_true(proto_str_eq(proto_map_get(m.result, "response"), a));
        assert_true(proto_str_eq(proto_map_get(m.result, "done_reason"), "length"));

        /* Errors: no such model, a prompt longer than the context. */
        assert_null(generate(c, "nope", "x", 4, NULL, NULL, &e));
        assert_int_equal(e.code, ENOENT);
        char *longp = malloc(600);
        memset(longp, 'x', 599);
        longp[599] = 0;
        qd_error_clear(&e);
        assert_null(generate(c, "fake", longp, 4, NULL, NULL, &e));
        assert_int_equal(e.code, EMSGSIZE);
        free(longp);
}

static void test_end_of_generation_and_stop(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};
        uint64_t eval = 0;

        /* The fake emits its end token at position 20; the prompt "ab" plus BOS takes 3. */
        assert_int_equal(dh_create_model(h, c, "short", "eos_at=20\n"), 0);
        _cleanup_free_ char *a = generate(c, "short", "ab", 100, NULL, &eval, &e);
        assert_non_null(a);
        assert_int_equal(eval, 17);
}

static void test_stop_strings(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        QdError e = {};
        Stream s = {};

        assert_int_equal(dh_create_model(h, c, "fake", "size=1000\n"), 0);
        _cleanup_free_ char *full = generate(c, "fake", "Once", 64, NULL, NULL, &e);
        assert_non_null(full);
        assert_true(strlen(full) > 40);
        /* Two stop strings: the one that comes first in the text wins, whatever their order; text arrives in
         * pieces, so a stop string spanning tokens is caught and none of it is sent. */
        char early[4], late[4];
        memcpy(early, full + 20, 3);
        early[3] = 0;
        memcpy(late, full + 30, 3);
        late[3] = 0;
        const char *cut = strstr(full, early);
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_str(&pk, "model", "fake");
        proto_pack_kv_str(&pk, "prompt", "Once");
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_i64(&pk, "num_predict", 64);
        proto_pack_kv_double(&pk, "temperature", 0);
        proto_pack_key(&pk, "stop");
        msgpack_pack_array(&pk, 2);
        proto_pack_str(&pk, late);
        proto_pack_str(&pk, early);
        assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, collect, &s, &m, &e),
                         0);
        assert_true(proto_str_eq(proto_map_get(m.result, "done_reason"), "stop"));
        assert_int_equal(s.text.len, (size_t)(cut - full));
        assert_memory_equal(s.text.data, full, s.text.len);
        buf_free(&s.text);

        /* Malformed stop lists. */
        msgpack_sbuffer_clear(&sb);
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_str(&pk, "model", "fake");
        proto_pack_kv_str(&pk, "prompt", "Once");
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 1);
        proto_pack_kv_str(&pk, "stop", "x");
        assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        assert_string_equal(e.msg, "Option 'stop' must be an array of strings, got a string.");
        msgpack_sbuffer_destroy(&sb);
}

/* Create with a template (and a system prompt), from a fake model file. */
static int create_with_template(Harness *h, ProtoClient *c, const char *name, const char *template,
                                const char *system, QdError *e) {
        _cleanup_free_ char *path = strdup_printf("%s/%s.model", h->dir, name);
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs("size=1000\n", f);
        fclose(f);
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, system ? 4 : 3);
        proto_pack_kv_str(&pk, "model", name);
        proto_pack_kv_u64(&pk, "gguf", 0);
        proto_pack_kv_str(&pk, "template", template);
        if (system)
                proto_pack_kv_str(&pk, "system", system);
        qd_error_clear(e);
        int k = proto_client_call(c, "Create", sb.data, sb.size, &fd, 1, NULL, NULL, NULL, e);
        msgpack_sbuffer_destroy(&sb);
        return k;
}

static void test_chat(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        ProtoMessage m;
        QdError e = {};

        static const char *tmpl = "{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}<assistant>";
        assert_int_equal(create_with_template(h, c, "chatty", tmpl, NULL, &e), 0);
        assert_int_equal(dh_chat(c, "chatty", "user", "hi", 8, 0, &m, &e), 0);
        /* The fake's tokens are bytes: BOS + "<user>hi<assistant>". */
        assert_int_equal(proto_map_get(m.result, "prompt_eval_count")->via.u64, 1 + 19);
        const msgpack_object *msg = proto_map_get(m.result, "message");
        assert_true(proto_str_eq(proto_map_get(msg, "role"), "assistant"));
        assert_int_equal(proto_map_get(msg, "content")->via.str.size, 8);
        assert_null(proto_map_get(m.result, "response"));

        /* Generate renders its prompt through the template too, as one user turn, unless it is raw (then
         * without BOS, the prompt being taken as it is). */
        for (int raw = 0; raw <= 1; raw++) {
                msgpack_sbuffer gb;
                msgpack_packer gpk;
                msgpack_sbuffer_init(&gb);
                proto_packer_init(&gpk, &gb);
                msgpack_pack_map(&gpk, 5);
                proto_pack_kv_str(&gpk, "model", "chatty");
                proto_pack_kv_str(&gpk, "prompt", "hi");
                proto_pack_kv_bool(&gpk, "stream", false);
                proto_pack_kv_bool(&gpk, "raw", raw);
                proto_pack_key(&gpk, "options");
                msgpack_pack_map(&gpk, 1);
                proto_pack_kv_i64(&gpk, "num_predict", 2);
                qd_error_clear(&e);
                assert_int_equal(proto_client_call(c, "Generate", gb.data, gb.size, NULL, 0, NULL, NULL, &m, &e), 0);
                assert_int_equal(proto_map_get(m.result, "prompt_eval_count")->via.u64, raw ? 2 : 1 + 19);
                msgpack_sbuffer_destroy(&gb);
        }

        /* The Modelfile's SYSTEM comes first when the chat has none. */
        assert_int_equal(create_with_template(h, c, "briefly", tmpl, "Be brief.", &e), 0);
        assert_int_equal(dh_chat(c, "briefly", "user", "hi", 8, 0, &m, &e), 0);
        assert_int_equal(proto_map_get(m.result, "prompt_eval_count")->via.u64, 1 + 19 + 8 + 9);

        /* Errors. */
        assert_int_equal(dh_chat(c, "chatty", "wizard", "hi", 8, 0, &m, &e), -EINVAL);
        assert_string_equal(e.msg,
                            "Message 0 has role 'wizard'; roles are system, user, assistant and tool.");
        assert_int_equal(create_with_template(h, c, "bad", "{{ if .System }}", NULL, &e), -EINVAL);
        assert_int_equal(dh_create_model(h, c, "plain", "size=1000\n"), 0);
        assert_true(dh_chat(c, "plain", "user", "hi", 8, 0, &m, &e) < 0);
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "chatty", "messages", "x", NULL);
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Chat", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        assert_string_equal(e.msg, "Parameter 'messages' must be an array, got a string.");
        msgpack_sbuffer_destroy(&sb);
}

static void test_create_from_and_parameters(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        QdError e = {};
        uint64_t eval = 0;

        static const char *tmpl = "{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}<assistant>";
        assert_int_equal(create_with_template(h, c, "base", tmpl, NULL, &e), 0);
        /* FROM a local model, with PARAMETERs, a SYSTEM, a LICENSE and MESSAGEs of its own. */
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 6);
        proto_pack_kv_str(&pk, "model", "derived");
        proto_pack_kv_str(&pk, "from", "base");
        proto_pack_kv_str(&pk, "system", "Be brief.");
        proto_pack_kv_str(&pk, "license", "MIT");
        proto_pack_key(&pk, "parameters");
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_i64(&pk, "num_predict", 3);
        proto_pack_kv_double(&pk, "temperature", 0);
        proto_pack_key(&pk, "messages");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "role", "user");
        proto_pack_kv_str(&pk, "content", "hello");
        assert_int_equal(proto_client_call(c, "Create", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);

        /* The model's num_predict applies unless the request says otherwise. */
        msgpack_sbuffer_clear(&sb);
        dh_params(&sb, "model", "derived", "prompt", "x", "stream", "false", NULL);
        assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        assert_int_equal(proto_map_get(m.result, "eval_count")->via.u64, 3);
        _cleanup_free_ char *t = generate(c, "derived", "x", 5, NULL, &eval, &e);
        assert_non_null(t);
        assert_int_equal(eval, 5);
        /* The template came from the base, the system prompt is the new one. */
        assert_int_equal(dh_chat(c, "derived", "user", "hi", 8, 0, &m, &e), 0);
        assert_int_equal(proto_map_get(m.result, "prompt_eval_count")->via.u64, 1 + 19 + 8 + 9);

        /* Errors: both sources, neither, an unknown base, an unknown quantization. */
        msgpack_sbuffer_clear(&sb);
        dh_params(&sb, "model", "x", "from", "base", "gguf", "0", NULL);
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Create", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        assert_non_null(strstr(e.msg, "one of 'gguf'"));
        msgpack_sbuffer_clear(&sb);
        dh_params(&sb, "model", "x", NULL);
        assert_int_equal(proto_client_call(c, "Create", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        msgpack_sbuffer_clear(&sb);
        dh_params(&sb, "model", "x", "from", "nothing", NULL);
        assert_int_equal(proto_client_call(c, "Create", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -ENOENT);
        msgpack_sbuffer_clear(&sb);
        dh_params(&sb, "model", "x", "from", "base", "quantize", "q9_z", NULL);
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Create", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        assert_string_equal(e.msg,
                            "Unknown quantization type 'q9_z': choose one of F32, F16, Q4_0, Q4_1, Q8_0, "
                            "Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, "
                            "Q6_K, IQ4_NL, BF16.");
        msgpack_sbuffer_destroy(&sb);
}

static void test_tokenize(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(dh_create_model(h, c, "fake", "size=1000\n"), 0);
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "fake", "text", "hé", NULL);
        assert_int_equal(proto_client_call(c, "Tokenize", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        const msgpack_object *t = proto_map_get(m.result, "tokens");
        assert_int_equal(t->via.array.size, 3);
        assert_int_equal(t->via.array.ptr[0].via.u64, 'h');

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "model", "fake");
        proto_pack_key(&pk, "tokens");
        msgpack_pack_array(&pk, 3);
        msgpack_pack_int(&pk, 'h');
        msgpack_pack_int(&pk, 0xc3);
        msgpack_pack_int(&pk, 0xa9);
        assert_int_equal(proto_client_call(c, "Detokenize", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         0);
        assert_true(proto_str_eq(proto_map_get(m.result, "text"), "hé"));
        msgpack_sbuffer_clear(&sb);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "model", "fake");
        proto_pack_key(&pk, "tokens");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_int(&pk, 999);
        assert_int_equal(proto_client_call(c, "Detokenize", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        assert_non_null(strstr(e.msg, "not in the vocabulary"));
        msgpack_sbuffer_clear(&sb);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "model", "fake");
        proto_pack_key(&pk, "tokens");
        msgpack_pack_array(&pk, 1);
        proto_pack_str(&pk, "h");
        assert_int_equal(proto_client_call(c, "Detokenize", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        msgpack_sbuffer_destroy(&sb);
}

#define N_CONCURRENT 16

static void test_concurrent_streams(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};

        /* 2 ms per forward step whatever the batch: batching shows in the wall time. */
        assert_int_equal(dh_create_model(h, c, "slow", "delay_us=2000\n"), 0);
        _cleanup_free_ char *solo = generate(c, "slow", "Once", 64, NULL, NULL, &e);
        assert_non_null(solo);

        ProtoClient *cs[N_CONCURRENT];
        Stream streams[N_CONCURRENT] = {};
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        pack_generate(&sb, "slow", "Once", 64, NULL, true);
        uint64_t t0 = now_ns();
        for (int i = 0; i < N_CONCURRENT; i++) {
                cs[i] = dh_connect(h);
                assert_non_null(cs[i]);
                assert_int_equal(proto_client_send(cs[i], "Generate", sb.data, sb.size, NULL, 0, NULL), 0);
        }
        msgpack_sbuffer_destroy(&sb);
        /* Read them round-robin until every one has its reply. */
        int done = 0;
        bool finished[N_CONCURRENT] = {};
        while (done < N_CONCURRENT)
                for (int i = 0; i < N_CONCURRENT; i++) {
                        ProtoMessage m;
                        if (finished[i])
                                continue;
                        int k = proto_client_read(cs[i], 0, &m, &e);
                        if (k == -ETIMEDOUT)
                                continue;
                        assert_int_equal(k, 1);
                        if (m.type == PROTO_NOTIFICATION) {
                                assert_int_equal(collect(&m, &streams[i]), 0);
                                continue;
                        }
                        assert_int_equal(m.error, 0);
                        finished[i] = true;
                        done++;
                }
        uint64_t wall = now_ns() - t0;
        for (int i = 0; i < N_CONCURRENT; i++) {
                assert_int_equal(streams[i].text.len, strlen(solo));
                assert_memory_equal(streams[i].text.data, solo, strlen(solo));
                buf_free(&streams[i].text);
                proto_client_free(cs[i]);
        }
        /* One after another they would take 16 * 65 steps * 2 ms = 2.1 s; batched, about 65 steps. */
        print_message("# 16 concurrent streams of 64 tokens took %.0f ms\n", wall / 1e6);
        assert_true(wall < 1500000000ULL);
}

static void test_cancel_and_disconnect(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};
        uint64_t id;

        assert_int_equal(dh_create_model(h, c, "slow", "delay_us=5000\n"), 0);
        msgpack_sbuffer_init(&sb);
        pack_generate(&sb, "slow", "x", 400, NULL, true);
        assert_int_equal(proto_client_send(c, "Generate", sb.data, sb.size, NULL, 0, &id), 0);
        /* Wait for the first token, then cancel it from the same connection. */
        assert_int_equal(proto_client_read(c, 10000, &m, &e), 1);
        assert_int_equal(m.type, PROTO_NOTIFICATION);
        uint64_t cid;
        assert_int_equal(dh_cancel(c, id, &cid), 0);
        bool cancel_ok = false, gen_cancelled = false;
        while (!cancel_ok || !gen_cancelled) {
                assert_int_equal(proto_client_read(c, 10000, &m, &e), 1);
                if (m.type != PROTO_RESPONSE)
                        continue;
                if (m.msgid == cid) {
                        assert_int_equal(m.error, 0);
                        cancel_ok = true;
                } else {
                        assert_int_equal(m.msgid, id);
                        assert_int_equal(m.error, ECANCELED);
                        gen_cancelled = true;
                }
        }

        /* A client that goes away mid-stream: its generation ends, the daemon carries on. */
        ProtoClient *d = dh_connect(h);
        assert_int_equal(proto_client_send(d, "Generate", sb.data, sb.size, NULL, 0, NULL), 0);
        assert_int_equal(proto_client_read(d, 10000, &m, &e), 1);
        proto_client_free(d);
        msgpack_sbuffer_destroy(&sb);
        int64_t expires = 0;
        for (int i = 0; i < 200; i++) {
                expires = 0;
                ps_count(c, "slow:latest", &expires);
                if (expires != -1)
                        break; /* idle again: it has an expiry instead of "in use" */
                usleep(10000);
        }
        assert_true(expires > 0);
        _cleanup_free_ char *text = generate(c, "slow", "x", 4, NULL, NULL, &e);
        assert_non_null(text);
}

static void test_keep_alive(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};
        int64_t expires = 0;

        assert_int_equal(dh_create_model(h, c, "a", "size=1000\n"), 0);
        _cleanup_free_ char *t0 = generate(c, "a", "x", 2, "0", NULL, &e);
        assert_non_null(t0);
        /* keep_alive 0: unloaded right after the request (the executor confirms asynchronously). */
        for (int i = 0; i < 100 && ps_count(c, "a:latest", NULL) != 0; i++)
                usleep(10000);
        assert_int_equal(ps_count(c, "a:latest", NULL), 0);

        _cleanup_free_ char *t1 = generate(c, "a", "x", 2, "1s", NULL, &e);
        assert_int_equal(ps_count(c, "a:latest", &expires), 101);
        assert_true(expires > 0);
        usleep(400000);
        assert_int_equal(ps_count(c, "a:latest", NULL), 101);
        usleep(1100000);
        assert_int_equal(ps_count(c, "a:latest", NULL), 0);

        _cleanup_free_ char *t2 = generate(c, "a", "x", 2, "-1", NULL, &e);
        usleep(1200000);
        assert_int_equal(ps_count(c, "a:latest", &expires), 101);
        assert_int_equal(expires, -1);

        /* Unload ends it whatever keep_alive said. */
        msgpack_sbuffer sb;
        ProtoMessage m;
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "a", NULL);
        assert_int_equal(proto_client_call(c, "Unload", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        for (int i = 0; i < 100 && ps_count(c, "a:latest", NULL) != 0; i++)
                usleep(10000);
        assert_int_equal(ps_count(c, "a:latest", NULL), 0);
        assert_int_equal(proto_client_call(c, "Unload", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -ENOENT);
        msgpack_sbuffer_destroy(&sb);
}

static void load(ProtoClient *c, const char *model, const char *keep_alive) {
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", model, "keep_alive", keep_alive, NULL);
        int k = proto_client_call(c, "Load", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e);
        msgpack_sbuffer_destroy(&sb);
        if (k < 0)
                fail_msg("Load %s failed: %s", model, e.msg);
}

static void test_eviction_order(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);

        assert_int_equal(dh_create_model(h, c, "a", "size=1000\n"), 0);
        assert_int_equal(dh_create_model(h, c, "b", "size=1000\n"), 0);
        assert_int_equal(dh_create_model(h, c, "c", "size=1000\n"), 0);
        load(c, "a", "10m");
        load(c, "b", "5m");
        assert_int_equal(ps_count(c, "a:latest", NULL), 201);
        /* MaxLoadedModels=2: c evicts b, which expires first. */
        load(c, "c", "10m");
        assert_int_equal(ps_count(c, "a:latest", NULL), 201);
        assert_int_equal(ps_count(c, "b:latest", NULL), 200);
        assert_int_equal(ps_count(c, "c:latest", NULL), 201);
        /* A model kept forever goes last: b evicts c (expires in 10m) rather than a (forever). */
        load(c, "a", "-1");
        load(c, "b", "5m");
        assert_int_equal(ps_count(c, "a:latest", NULL), 201);
        assert_int_equal(ps_count(c, "c:latest", NULL), 200);
        assert_true(dh_log_contains(h, "Evicting idle model 'b:latest'"));
}

static void test_memory_budget(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        _cleanup_(proto_client_freep) ProtoClient *d = dh_connect(h);
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};
        uint64_t id;

        /* 1000000 + 524288 fits the budget of 2000000 once; two do not. */
        assert_int_equal(dh_create_model(h, c, "big", "size=1000000\ndelay_us=5000\n"), 0);
        assert_int_equal(dh_create_model(h, c, "big2", "size=1000000\n"), 0);
        assert_int_equal(dh_create_model(h, c, "huge", "size=5000000\n"), 0);

        /* Too large for the budget at all: a clear ENOSPC at once. */
        _cleanup_free_ char *x = generate(c, "huge", "x", 1, NULL, NULL, &e);
        assert_null(x);
        assert_int_equal(e.code, ENOSPC);
        assert_non_null(strstr(e.msg, "MemoryBudget="));

        /* big is busy for about 2 s; big2 waits for room, then gives up after LoadTimeout=1s. */
        msgpack_sbuffer_init(&sb);
        pack_generate(&sb, "big", "x", 400, NULL, true);
        assert_int_equal(proto_client_send(c, "Generate", sb.data, sb.size, NULL, 0, &id), 0);
        msgpack_sbuffer_destroy(&sb);
        assert_int_equal(proto_client_read(c, 10000, &m, &e), 1);
        uint64_t t0 = now_ns();
        qd_error_clear(&e);
        _cleanup_free_ char *y = generate(d, "big2", "x", 1, NULL, NULL, &e);
        assert_null(y);
        assert_int_equal(e.code, ENOSPC);
        assert_non_null(strstr(e.msg, "busy"));
        assert_true(now_ns() - t0 >= 900000000ULL);

        /* Once big is idle it is evicted for big2. */
        assert_int_equal(dh_cancel(c, id, NULL), 0);
        /* Wait until big's generation has ended, so that the timing of a loaded machine cannot matter. */
        for (;;) {
                qd_error_clear(&e);
                assert_int_equal(proto_client_read(c, 10000, &m, &e), 1);
                if (m.type == PROTO_RESPONSE && m.msgid == id)
                        break;
        }
        qd_error_clear(&e);
        _cleanup_free_ char *z = generate(d, "big2", "x", 1, NULL, NULL, &e);
        assert_non_null(z);
        assert_int_equal(ps_count(d, "big2:latest", NULL), 101);
}

static double vector_norm(const msgpack_object *v) {
        double n = 0;
        for (uint32_t i = 0; i < v->via.array.size; i++)
                n += v->via.array.ptr[i].via.f64 * v->via.array.ptr[i].via.f64;
        return sqrt(n);
}

static void test_embed(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(dh_create_model(h, c, "fake", "size=1000\n"), 0);
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "model", "fake");
        proto_pack_key(&pk, "input");
        msgpack_pack_array(&pk, 3);
        proto_pack_str(&pk, "ab");
        proto_pack_str(&pk, "ab");
        proto_pack_str(&pk, "xyz");
        assert_int_equal(proto_client_call(c, "Embed", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        const msgpack_object *v = proto_map_get(m.result, "embeddings");
        assert_int_equal(v->via.array.size, 3);
        assert_int_equal(v->via.array.ptr[0].via.array.size, 8);
        assert_true(fabs(vector_norm(&v->via.array.ptr[0]) - 1.0) < 1e-5);
        assert_true(msgpack_object_equal(v->via.array.ptr[0], v->via.array.ptr[1]));
        assert_false(msgpack_object_equal(v->via.array.ptr[0], v->via.array.ptr[2]));
        assert_int_equal(proto_map_get(m.result, "prompt_eval_count")->via.u64, 3 + 3 + 4);

        /* Wrong inputs. */
        msgpack_sbuffer_clear(&sb);
        dh_params(&sb, "model", "fake", "input", "5", NULL);
        assert_int_equal(proto_client_call(c, "Embed", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        assert_string_equal(e.msg, "Parameter 'input' must be a string or an array of strings.");
        msgpack_sbuffer_clear(&sb);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "model", "fake");
        proto_pack_key(&pk, "input");
        msgpack_pack_array(&pk, 0);
        assert_int_equal(proto_client_call(c, "Embed", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        msgpack_sbuffer_clear(&sb);
        dh_params(&sb, "model", "nope", "input", "x", NULL);
        assert_int_equal(proto_client_call(c, "Embed", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -ENOENT);
        msgpack_sbuffer_destroy(&sb);
}

static void test_load_failure(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};

        assert_int_equal(dh_create_model(h, c, "broken", "fail_load=1\n"), 0);
        _cleanup_free_ char *x = generate(c, "broken", "x", 4, NULL, NULL, &e);
        assert_null(x);
        assert_int_equal(e.code, EBADMSG);
        assert_non_null(strstr(e.msg, "fails to load"));
        /* Nothing stays behind, and the next try loads again (and fails again). */
        assert_int_equal(ps_count(c, "broken:latest", NULL), 0);
        qd_error_clear(&e);
        assert_null(generate(c, "broken", "x", 4, NULL, NULL, &e));
        assert_int_equal(e.code, EBADMSG);
        /* A bad sampling option is refused before anything loads. */
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_str(&pk, "model", "broken");
        proto_pack_kv_str(&pk, "prompt", "x");
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 1);
        proto_pack_kv_double(&pk, "temperature", -1);
        qd_error_clear(&e);
        assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         -EINVAL);
        assert_string_equal(e.msg, "Option 'temperature' must not be negative.");
        msgpack_sbuffer_destroy(&sb);
}

static void test_slow_reader_dropped(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        ProtoClient *lazy = dh_connect(h);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(dh_create_model(h, c, "fast", "size=1000\n"), 0);
        /* A long stream nobody reads: past MaxQueuedOutput= the daemon drops the client. */
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_str(&pk, "model", "fast");
        proto_pack_kv_str(&pk, "prompt", "x");
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_i64(&pk, "num_predict", 200000);
        proto_pack_kv_i64(&pk, "num_ctx", 250000);
        assert_int_equal(proto_client_send(lazy, "Generate", sb.data, sb.size, NULL, 0, NULL), 0);
        msgpack_sbuffer_destroy(&sb);
        for (int i = 0; i < 500 && !dh_log_contains(h, "does not read its replies"); i++)
                usleep(20000);
        assert_true(dh_log_contains(h, "does not read its replies"));
        proto_client_free(lazy);
        /* Its generation ended: the model becomes idle; others are served meanwhile. */
        assert_int_equal(proto_client_call(c, "Version", NULL, 0, NULL, 0, NULL, NULL, &m, &e), 0);
        int64_t expires = -1;
        for (int i = 0; i < 200 && expires == -1; i++) {
                ps_count(c, "fast:latest", &expires);
                usleep(10000);
        }
        assert_true(expires > 0);
}

static void test_hangup_while_paused(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        ProtoClient *busy = dh_connect(h);
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};

        /* MaxRequestsPerConnection=1: the second and third requests wait unread while the first runs. */
        assert_int_equal(dh_create_model(h, c, "slow", "delay_us=5000\n"), 0);
        msgpack_sbuffer_init(&sb);
        /* Not streamed: nothing is written to the client that could notice it is gone. */
        pack_generate(&sb, "slow", "x", 400, NULL, false);
        for (int i = 0; i < 3; i++)
                assert_int_equal(proto_client_send(busy, "Generate", sb.data, sb.size, NULL, 0, NULL), 0);
        msgpack_sbuffer_destroy(&sb);
        int64_t in_use = 0;
        for (int i = 0; i < 200 && in_use != -1; i++) {
                ps_count(c, "slow:latest", &in_use);
                usleep(10000);
        }
        assert_int_equal(in_use, -1);
        proto_client_free(busy);
        /* The hang-up is noticed although reading is paused: the generation ends long before its 2 s. */
        uint64_t t0 = now_ns();
        int64_t expires = -1;
        while (expires == -1 && now_ns() - t0 < 1500000000ULL) {
                ps_count(c, "slow:latest", &expires);
                usleep(10000);
        }
        assert_true(expires > 0);
        assert_int_equal(proto_client_call(c, "Version", NULL, 0, NULL, 0, NULL, NULL, &m, &e), 0);
}

static void test_sigterm_mid_generation(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(dh_create_model(h, c, "slow", "delay_us=5000\n"), 0);
        msgpack_sbuffer_init(&sb);
        pack_generate(&sb, "slow", "x", 400, NULL, true);
        assert_int_equal(proto_client_send(c, "Generate", sb.data, sb.size, NULL, 0, NULL), 0);
        msgpack_sbuffer_destroy(&sb);
        assert_int_equal(proto_client_read(c, 10000, &m, &e), 1);
        assert_int_equal(dh_stop(h), 0);
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_generate_stream, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_end_of_generation_and_stop, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_stop_strings, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_chat, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_create_from_and_parameters, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_tokenize, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_streams, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_cancel_and_disconnect, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_keep_alive, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_eviction_order, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_memory_budget, setup_small_budget, dh_teardown),
                cmocka_unit_test_setup_teardown(test_embed, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_load_failure, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_slow_reader_dropped, setup_small_output, dh_teardown),
                cmocka_unit_test_setup_teardown(test_hangup_while_paused, setup_one_request, dh_teardown),
                cmocka_unit_test_setup_teardown(test_sigterm_mid_generation, setup, dh_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
