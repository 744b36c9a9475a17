/* SPDX-License-Identifier: MIT */
/*
 * A real quantd with the real engine: a model created from stories260K.gguf (passed as a descriptor)
 * generates over the socket, and its greedy tokens equal the independent reference in stories260K.golden;
 * 16 clients at once, each streaming 64 greedy tokens, get streams identical to a solo run; Show, Tokenize
 * and Detokenize on a real vocabulary; Create from a Hugging Face folder passed as a descriptor (hf_dir), as it
 * is and quantized.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <msgpack.h>
#include <signal.h>
#include <sys/stat.h>

#include "daemon-harness.h"

static int setup(void **state) {
        static const char *const args[] = {"--backend=engine", NULL};
        dh_setup(state, "[Scheduler]\nNumParallel=16\nContextLength=256\nThreads=2\n", args);
        Harness *h = *state;

        const char *dir = getenv("QUANTD_TEST_MODELS");
        assert_non_null(dir);
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", dir);
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        /* A missing model file fails the test, it does not skip it. */
        assert_int_equal(access(path, R_OK), 0);
        assert_int_equal(dh_create_from_file(h, c, "stories", path), 0);
        return 0;
}

/* The golden ids: the first line of stories260K.golden that is not a comment. */
static size_t read_golden(int32_t *ids, size_t max) {
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.golden", getenv("QUANTD_TEST_MODELS"));
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[4096];
        size_t n = 0;

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                if (line[0] == '#')
                        continue;
                for (char *p = strtok(line, " \n"); p && n < max; p = strtok(NULL, " \n"))
                        ids[n++] = atoi(p);
                break;
        }
        return n;
}

typedef struct Stream {
        int32_t tokens[256];
        size_t n_tokens;
        Buf text;
} Stream;

static int collect(const ProtoMessage *ev, void *userdata) {
        Stream *s = userdata;
        const msgpack_object *t = proto_map_get(ev->params, "text"),
                             *tok = proto_map_get(ev->params, "token");
        assert_non_null(t);
        assert_int_equal(buf_append(&s->text, t->via.str.ptr, t->via.str.size), 0);
        if (tok && s->n_tokens < ELEMENTSOF(s->tokens))
                s->tokens[s->n_tokens++] = (int32_t)tok->via.i64;
        return 0;
}

static void pack_greedy(msgpack_sbuffer *sb, const char *prompt, int num_predict) {
        msgpack_packer pk;
        proto_packer_init(&pk, sb);
        msgpack_pack_map(&pk, 4);
        proto_pack_kv_str(&pk, "model", "stories");
        proto_pack_kv_str(&pk, "prompt", prompt);
        proto_pack_kv_bool(&pk, "return_tokens", true);
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_i64(&pk, "num_predict", num_predict);
        proto_pack_kv_double(&pk, "temperature", 0);
        /* The reference is plain argmax: no repeat penalty. */
        proto_pack_kv_double(&pk, "repeat_penalty", 1.0);
}

static void test_golden(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        int32_t golden[128];
        size_t n_golden = read_golden(golden, ELEMENTSOF(golden));
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};
        Stream s = {};

        assert_int_equal(n_golden, 80);
        msgpack_sbuffer_init(&sb);
        /* From BOS alone: an empty prompt with the vocabulary's start token. */
        pack_greedy(&sb, "", (int)n_golden);
        int k = proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, collect, &s, &m, &e);
        msgpack_sbuffer_destroy(&sb);
        if (k < 0)
                fail_msg("Generate failed: %s", e.msg);
        assert_int_equal(s.n_tokens, n_golden);
        for (size_t i = 0; i < n_golden; i++)
                if (s.tokens[i] != golden[i])
                        fail_msg("token %zu is %d, the reference says %d", i, s.tokens[i], golden[i]);
        assert_int_equal(proto_map_get(m.result, "eval_count")->via.u64, n_golden);
        assert_int_equal(proto_map_get(m.result, "prompt_eval_count")->via.u64, 1);
        assert_true(s.text.len > 0);
        assert_true(strncmp((const char *)s.text.data, " Once upon a time", 17) == 0 ||
                    strncmp((const char *)s.text.data, "Once upon a time", 16) == 0);
        buf_free(&s.text);
}

#define N_CLIENTS 16

static void test_concurrent_equal_solo(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        static const char *const prompts[] = {"Once upon a time", "The cat", "Lily and Tom went"};
        Stream solo[ELEMENTSOF(prompts)] = {};
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};

        for (size_t p = 0; p < ELEMENTSOF(prompts); p++) {
                msgpack_sbuffer_init(&sb);
                pack_greedy(&sb, prompts[p], 64);
                assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, collect,
                                                   &solo[p], &m, &e),
                                 0);
                msgpack_sbuffer_destroy(&sb);
        }

        ProtoClient *cs[N_CLIENTS];
        Stream *streams = calloc(N_CLIENTS, sizeof(Stream));
        bool finished[N_CLIENTS] = {};
        for (int i = 0; i < N_CLIENTS; i++) {
                cs[i] = dh_connect(h);
                assert_non_null(cs[i]);
                msgpack_sbuffer_init(&sb);
                pack_greedy(&sb, prompts[i % ELEMENTSOF(prompts)], 64);
                assert_int_equal(proto_client_send(cs[i], "Generate", sb.data, sb.size, NULL, 0, NULL), 0);
                msgpack_sbuffer_destroy(&sb);
        }
        for (int done = 0; done < N_CLIENTS;)
                for (int i = 0; i < N_CLIENTS; i++) {
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
                        if (m.error != 0)
                                fail_msg("client %d: %s", i, m.error_message);
                        finished[i] = true;
                        done++;
                }
        for (int i = 0; i < N_CLIENTS; i++) {
                Stream *want = &solo[i % ELEMENTSOF(prompts)];
                assert_int_equal(streams[i].n_tokens, want->n_tokens);
                assert_memory_equal(streams[i].tokens, want->tokens, want->n_tokens * sizeof(int32_t));
                assert_int_equal(streams[i].text.len, want->text.len);
                assert_memory_equal(streams[i].text.data, want->text.data, want->text.len);
                buf_free(&streams[i].text);
                proto_client_free(cs[i]);
        }
        for (size_t p = 0; p < ELEMENTSOF(prompts); p++)
                buf_free(&solo[p].text);
        free(streams);
}

static void test_show_tokenize(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        QdError e = {};

        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "stories", NULL);
        assert_int_equal(proto_client_call(c, "Show", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        assert_true(proto_str_eq(proto_map_get(m.result, "architecture"), "llama"));
        assert_int_equal(proto_map_get(m.result, "block_count")->via.u64, 5);
        msgpack_sbuffer_destroy(&sb);

        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "stories", "text", "Once upon a time", NULL);
        assert_int_equal(proto_client_call(c, "Tokenize", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        const msgpack_object *t = proto_map_get(m.result, "tokens");
        assert_true(t->via.array.size >= 4 && t->via.array.size <= 16);
        int32_t ids[16];
        uint32_t n = t->via.array.size;
        for (uint32_t i = 0; i < n; i++)
                ids[i] = (int32_t)t->via.array.ptr[i].via.i64;

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "model", "stories");
        proto_pack_key(&pk, "tokens");
        msgpack_pack_array(&pk, n);
        for (uint32_t i = 0; i < n; i++)
                msgpack_pack_int32(&pk, ids[i]);
        assert_int_equal(proto_client_call(c, "Detokenize", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e),
                         0);
        msgpack_sbuffer_destroy(&sb);
        const msgpack_object *text = proto_map_get(m.result, "text");
        /* SentencePiece adds the leading space of its "▁". */
        assert_true(proto_str_eq(text, " Once upon a time") || proto_str_eq(text, "Once upon a time"));
}

static void test_embed(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;
        QdError e = {};

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "model", "stories");
        proto_pack_key(&pk, "input");
        msgpack_pack_array(&pk, 2);
        proto_pack_str(&pk, "Once upon a time");
        proto_pack_str(&pk, "The cat sat down");
        assert_int_equal(proto_client_call(c, "Embed", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        const msgpack_object *v = proto_map_get(m.result, "embeddings");
        assert_int_equal(v->via.array.size, 2);
        double dot = 0;
        for (int k = 0; k < 2; k++) {
                const msgpack_object *x = &v->via.array.ptr[k];
                assert_int_equal(x->via.array.size, 64); /* stories260K's n_embd */
                double norm = 0;
                for (uint32_t i = 0; i < x->via.array.size; i++)
                        norm += x->via.array.ptr[i].via.f64 * x->via.array.ptr[i].via.f64;
                assert_true(norm > 0.999 && norm < 1.001);
        }
        for (uint32_t i = 0; i < 64; i++)
                dot += v->via.array.ptr[0].via.array.ptr[i].via.f64 *
                       v->via.array.ptr[1].via.array.ptr[i].via.f64;
        assert_true(dot < 0.9999);
}

static int count_quantizing(const ProtoMessage *ev, void *userdata) {
        const msgpack_object *status = proto_map_get(ev->params, "status");
        if (status && status->type == MSGPACK_OBJECT_STR && status->via.str.size > 10 &&
            memcmp(status->via.str.ptr, "quantizing", 10) == 0)
                (*(unsigned *)userdata)++;
        return 0;
}

static void test_create_quantized(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};
        unsigned quantizing = 0;

        /* Create FROM the F32 model with quantize Q8_0: a job that reports each tensor. */
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "stories-q8", "from", "stories", "quantize", "Q8_0", NULL);
        if (proto_client_call(c, "Create", sb.data, sb.size, NULL, 0, count_quantizing, &quantizing, &m,
                              &e) < 0)
                fail_msg("Create with quantize failed: %s", e.msg);
        assert_true(quantizing > 0);
        msgpack_sbuffer_destroy(&sb);

        /* It is smaller, and it generates. */
        assert_int_equal(proto_client_call(c, "List", NULL, 0, NULL, 0, NULL, NULL, &m, &e), 0);
        const msgpack_object *models = proto_map_get(m.result, "models");
        uint64_t f32 = 0, q8 = 0;
        for (uint32_t i = 0; i < models->via.array.size; i++) {
                const msgpack_object *x = &models->via.array.ptr[i];
                if (proto_str_eq(proto_map_get(x, "name"), "stories:latest"))
                        f32 = proto_map_get(x, "size")->via.u64;
                if (proto_str_eq(proto_map_get(x, "name"), "stories-q8:latest"))
                        q8 = proto_map_get(x, "size")->via.u64;
        }
        assert_true(q8 > 0 && q8 < f32);
        Stream s = {};
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_str(&pk, "model", "stories-q8");
        proto_pack_kv_str(&pk, "prompt", "Once upon a time");
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_i64(&pk, "num_predict", 16);
        proto_pack_kv_double(&pk, "temperature", 0);
        assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, collect, &s, &m, &e),
                         0);
        msgpack_sbuffer_destroy(&sb);
        assert_int_equal(proto_map_get(m.result, "eval_count")->via.u64, 16);
        assert_true(s.text.len > 0);
        buf_free(&s.text);
}

/* Create with hf_dir: the tiny llama folder, converted by the daemon, stored, and it generates. */
static void test_create_hf(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        _cleanup_free_ char *path = strdup_printf("%s/hf-tiny-llama", getenv("QUANTD_TEST_DATA"));
        _cleanup_close_ int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};

        assert_true(dfd >= 0);
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "tiny-hf", "hf_dir", "0", NULL);
        if (proto_client_call(c, "Create", sb.data, sb.size, &dfd, 1, NULL, NULL, &m, &e) < 0)
                fail_msg("Create from the Hugging Face folder failed: %s", e.msg);
        msgpack_sbuffer_destroy(&sb);

        /* Stored as the folder's llama. */
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "tiny-hf", NULL);
        assert_int_equal(proto_client_call(c, "Show", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        assert_true(proto_str_eq(proto_map_get(m.result, "architecture"), "llama"));
        assert_int_equal(proto_map_get(m.result, "block_count")->via.u64, 2);
        assert_int_equal(proto_map_get(m.result, "embedding_length")->via.u64, 64);

        /* A few greedy tokens, twice the same. */
        Stream s[2] = {};
        for (int i = 0; i < 2; i++) {
                msgpack_packer pk;
                msgpack_sbuffer_init(&sb);
                proto_packer_init(&pk, &sb);
                msgpack_pack_map(&pk, 4);
                proto_pack_kv_str(&pk, "model", "tiny-hf");
                proto_pack_kv_str(&pk, "prompt", "hello world");
                proto_pack_kv_bool(&pk, "return_tokens", true);
                proto_pack_key(&pk, "options");
                msgpack_pack_map(&pk, 4);
                proto_pack_kv_i64(&pk, "num_predict", 8);
                proto_pack_kv_i64(&pk, "num_ctx", 64);
                proto_pack_kv_double(&pk, "temperature", 0);
                proto_pack_kv_double(&pk, "repeat_penalty", 1.0);
                if (proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, collect, &s[i], &m, &e) < 0)
                        fail_msg("Generate on the converted model failed: %s", e.msg);
                msgpack_sbuffer_destroy(&sb);
                assert_true(proto_map_get(m.result, "eval_count")->via.u64 > 0);
                assert_int_equal(proto_map_get(m.result, "eval_count")->via.u64, s[i].n_tokens);
                for (size_t k = 0; k < s[i].n_tokens; k++)
                        assert_true(s[i].tokens[k] >= 0 && s[i].tokens[k] < 320);
        }
        assert_int_equal(s[0].n_tokens, s[1].n_tokens);
        assert_memory_equal(s[0].tokens, s[1].tokens, s[0].n_tokens * sizeof(int32_t));
        buf_free(&s[0].text);
        buf_free(&s[1].text);

        /* Converted, then quantized in the same job. */
        unsigned quantizing = 0;
        _cleanup_close_ int dfd2 = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(dfd2 >= 0);
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "tiny-hf-q8", "hf_dir", "0", "quantize", "Q8_0", NULL);
        if (proto_client_call(c, "Create", sb.data, sb.size, &dfd2, 1, count_quantizing, &quantizing, &m, &e) < 0)
                fail_msg("Create from the Hugging Face folder with quantize failed: %s", e.msg);
        msgpack_sbuffer_destroy(&sb);
        assert_true(quantizing > 0);
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "tiny-hf-q8", "prompt", "hello", NULL);
        assert_int_equal(proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        assert_true(proto_map_get(m.result, "eval_count")->via.u64 > 0);
}

/* A folder without config.json: the converter's sentence comes back, and nothing is stored. */
static void test_create_hf_errors(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        char dir[] = "/tmp/quantd-hf-XXXXXX";
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};

        assert_non_null(mkdtemp(dir));
        _cleanup_free_ char *tok = strdup_printf("%s/tokenizer.json", dir);
        FILE *w = fopen(tok, "we");
        assert_non_null(w);
        fputs("{}\n", w);
        assert_int_equal(fclose(w), 0);
        _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(dfd >= 0);
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "broken", "hf_dir", "0", NULL);
        assert_int_equal(proto_client_call(c, "Create", sb.data, sb.size, &dfd, 1, NULL, NULL, &m, &e), -ENOENT);
        msgpack_sbuffer_destroy(&sb);
        assert_string_equal(e.msg, "Failed to open 'config.json': No such file or directory");
        qd_error_clear(&e);
        unlink(tok);
        rmdir(dir);

        /* hf_dir must be a folder. */
        _cleanup_free_ char *gguf = strdup_printf("%s/stories260K.gguf", getenv("QUANTD_TEST_MODELS"));
        _cleanup_close_ int ffd = open(gguf, O_RDONLY | O_CLOEXEC);
        assert_true(ffd >= 0);
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "broken", "hf_dir", "0", NULL);
        assert_int_equal(proto_client_call(c, "Create", sb.data, sb.size, &ffd, 1, NULL, NULL, &m, &e), -ENOTDIR);
        msgpack_sbuffer_destroy(&sb);
        assert_string_equal(e.msg, "Parameter 'hf_dir' must be a descriptor of a folder.");
        qd_error_clear(&e);

        /* Not both a file and a folder. */
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "broken", "hf_dir", "0", "from", "stories", NULL);
        assert_int_equal(proto_client_call(c, "Create", sb.data, sb.size, &ffd, 1, NULL, NULL, &m, &e), -EINVAL);
        msgpack_sbuffer_destroy(&sb);
        qd_error_clear(&e);

        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "broken", NULL);
        assert_int_equal(proto_client_call(c, "Show", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), -ENOENT);
        msgpack_sbuffer_destroy(&sb);
}

static void test_chat(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        ProtoMessage m;
        QdError e = {};

        /* stories260K has no chat template of any kind. */
        assert_int_equal(dh_chat(c, "stories", "user", "hi", 24, 1.0, &m, &e), -EOPNOTSUPP);
        assert_non_null(strstr(e.msg, "has no chat template"));

        /* SmolLM2's GGUF carries a ChatML jinja template, recognised and rendered natively. */
        assert_int_equal(dh_create_from_file(h, c, "smollm", dh_smollm_path()), 0);
        if (dh_chat(c, "smollm", "user", "What is the capital of France?", 24, 1.0, &m, &e) < 0)
                fail_msg("Chat failed: %s", e.msg);
        const msgpack_object *content = proto_map_get(proto_map_get(m.result, "message"), "content");
        assert_non_null(content);
        assert_true(content->via.str.size > 0);
        uint64_t prompt_tokens = proto_map_get(m.result, "prompt_eval_count")->via.u64;

        /* The prompt was ChatML with the template's default system prompt, as Hugging Face renders it. */
        static const char *chatml =
                "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
                "<|im_end|>\n<|im_start|>assistant\n";
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "smollm", "text", chatml, NULL);
        assert_int_equal(proto_client_call(c, "Tokenize", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        const msgpack_object *t = proto_map_get(m.result, "tokens");
        assert_int_equal(t->via.array.size, prompt_tokens);
        assert_int_equal(t->via.array.ptr[0].via.u64, 1); /* <|im_start|> is one token */
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_golden, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_equal_solo, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_show_tokenize, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_embed, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_chat, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_create_quantized, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_create_hf, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_create_hf_errors, setup, dh_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
