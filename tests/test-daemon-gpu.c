/* SPDX-License-Identifier: MIT */
/*
 * The scheduler's GPU placement, through a real quantd with the fake backend and its simulated GPU
 * (QUANTD_FAKE_GPU, see daemon/backend-fake.c): all layers on the GPU when they fit, several models resident
 * together, the idle model that expires first evicted to make room on the GPU, partial offload when an idle
 * model cannot make room, num_gpu 0 / N / more than the layers, reloads for other settings,
 * GpuMemoryBudget=, the CPU share of a partial model against MemoryBudget=, and Ps's size_vram, processor
 * and digest.
 *
 * The fake's numbers: a model of size S with L layers of layer_size B each puts n layers on the GPU as
 * n * B bytes (plus the rest of S, the embedding and head, with the last layer) and the KV cache of 64 bytes
 * per position spread over the layers; ContextLength=16 and NumParallel=1 make that 1024 bytes per model.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <msgpack.h>
#include <unistd.h>

#include "daemon-harness.h"
#include "qctl-harness.h"

#define CONFIG "[Scheduler]\nNumParallel=1\nContextLength=16\nGpuOverhead=0\nMaxLoadedModels=4\n"

/* 400000 bytes in 4 layers of 80000 and 80000 of embedding and head: 401024 on the GPU with its KV. */
#define MODEL_M "size=400000\nlayers=4\nlayer_size=80000\n"
#define M_FULL 401024

/* A quantd whose fake backend sees the simulated device gpu (NULL: none). */
static int start(void **state, const char *gpu, const char *config) {
        if (gpu)
                assert_int_equal(setenv("QUANTD_FAKE_GPU", gpu, 1), 0);
        else
                assert_int_equal(unsetenv("QUANTD_FAKE_GPU"), 0);
        return dh_setup(state, config, NULL);
}

static int setup(void **state) {
        /* 100000 bytes of the device belong to another process. */
        return start(state, "total=1000000,free=900000", CONFIG);
}

static int setup_gpu_budget(void **state) {
        return start(state, "total=1000000", CONFIG "GpuMemoryBudget=300000\n");
}

static int setup_memory_budget(void **state) {
        return start(state, "total=1000000,free=900000", CONFIG "MemoryBudget=1500000\n");
}

static int setup_no_gpu(void **state) {
        return start(state, NULL, CONFIG);
}

static int setup_bad_gpu(void **state) {
        return start(state, "total=lots", CONFIG);
}

typedef struct PsEntry {
        bool found;
        uint64_t size, size_vram, num_gpu;
        char processor[48];
        char digest[80];
} PsEntry;

static void copy_str(const msgpack_object *o, char *buf, size_t size) {
        assert_non_null(o);
        assert_int_equal(o->type, MSGPACK_OBJECT_STR);
        snprintf(buf, size, "%.*s", (int)o->via.str.size, o->via.str.ptr);
}

/* The Ps entry of name; *ret_n (may be NULL) gets the number of loaded models. */
static PsEntry ps(ProtoClient *c, const char *name, size_t *ret_n) {
        PsEntry p = {};
        ProtoMessage m;
        QdError e = {};

        assert_int_equal(proto_client_call(c, "Ps", NULL, 0, NULL, 0, NULL, NULL, &m, &e), 0);
        const msgpack_object *models = proto_map_get(m.result, "models");
        for (uint32_t i = 0; i < models->via.array.size; i++) {
                const msgpack_object *x = &models->via.array.ptr[i];
                if (!proto_str_eq(proto_map_get(x, "name"), name))
                        continue;
                p.found = true;
                p.size = proto_map_get(x, "size")->via.u64;
                p.size_vram = proto_map_get(x, "size_vram")->via.u64;
                p.num_gpu = proto_map_get(x, "num_gpu")->via.u64;
                copy_str(proto_map_get(x, "processor"), p.processor, sizeof(p.processor));
                copy_str(proto_map_get(x, "digest"), p.digest, sizeof(p.digest));
        }
        if (ret_n)
                *ret_n = models->via.array.size;
        return p;
}

/* The digest List gives name. */
static void list_digest(ProtoClient *c, const char *name, char *buf, size_t size) {
        ProtoMessage m;
        QdError e = {};

        buf[0] = 0;
        assert_int_equal(proto_client_call(c, "List", NULL, 0, NULL, 0, NULL, NULL, &m, &e), 0);
        const msgpack_object *models = proto_map_get(m.result, "models");
        for (uint32_t i = 0; i < models->via.array.size; i++)
                if (proto_str_eq(proto_map_get(&models->via.array.ptr[i], "name"), name))
                        copy_str(proto_map_get(&models->via.array.ptr[i], "digest"), buf, size);
}

typedef struct GenOpts {
        const char *keep_alive; /* NULL: the default */
        bool gpu;               /* num_gpu is given */
        int64_t num_gpu;
        int64_t num_ctx;    /* 0: not given */
        int64_t num_thread; /* 0: not given */
        int num_predict;    /* 0: 2 */
} GenOpts;

#define OPTS(...) ((GenOpts){__VA_ARGS__})
#define GPU(n) .gpu = true, .num_gpu = (n)

static void pack_gen(msgpack_sbuffer *sb, const char *model, const GenOpts *o) {
        msgpack_packer pk;
        uint32_t n_opts = 1 + o->gpu + (o->num_ctx != 0) + (o->num_thread != 0);

        proto_packer_init(&pk, sb);
        msgpack_pack_map(&pk, o->keep_alive ? 5 : 4);
        proto_pack_kv_str(&pk, "model", model);
        proto_pack_kv_str(&pk, "prompt", "x");
        proto_pack_kv_bool(&pk, "stream", false);
        if (o->keep_alive)
                proto_pack_kv_str(&pk, "keep_alive", o->keep_alive);
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, n_opts);
        proto_pack_kv_i64(&pk, "num_predict", o->num_predict ?: 2);
        if (o->gpu)
                proto_pack_kv_i64(&pk, "num_gpu", o->num_gpu);
        if (o->num_ctx)
                proto_pack_kv_i64(&pk, "num_ctx", o->num_ctx);
        if (o->num_thread)
                proto_pack_kv_i64(&pk, "num_thread", o->num_thread);
}

/* Generates a little; returns 0 with the result's load_duration_ns in *ret_load (may be NULL), or -errno
 * with the error in e. */
static int gen(ProtoClient *c, const char *model, const GenOpts *o, uint64_t *ret_load, QdError *e) {
        msgpack_sbuffer sb;
        ProtoMessage m;

        qd_error_clear(e);
        msgpack_sbuffer_init(&sb);
        pack_gen(&sb, model, o);
        int k = proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, NULL, NULL, &m, e);
        msgpack_sbuffer_destroy(&sb);
        if (k >= 0 && ret_load) {
                const msgpack_object *l = proto_map_get(m.result, "load_duration_ns");
                assert_non_null(l);
                *ret_load = l->via.u64;
        }
        return k;
}

/* Load with num_gpu (INT64_MIN: no options). */
static int load(ProtoClient *c, const char *model, int64_t num_gpu, QdError *e) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        ProtoMessage m;

        qd_error_clear(e);
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, num_gpu == INT64_MIN ? 1 : 2);
        proto_pack_kv_str(&pk, "model", model);
        if (num_gpu != INT64_MIN) {
                proto_pack_key(&pk, "options");
                msgpack_pack_map(&pk, 2);
                proto_pack_kv_i64(&pk, "num_gpu", num_gpu);
                proto_pack_kv_double(&pk, "temperature", 0.5); /* for generations: ignored */
        }
        int k = proto_client_call(c, "Load", sb.data, sb.size, NULL, 0, NULL, NULL, &m, e);
        msgpack_sbuffer_destroy(&sb);
        return k;
}

static void gen_ok(ProtoClient *c, const char *model, const GenOpts *o) {
        QdError e = {};
        if (gen(c, model, o, NULL, &e) < 0)
                fail_msg("Generate %s failed: %s", model, e.msg);
}

/* qctl ps's standard output against h; fails the test unless it exits with 0. */
static char *qctl_ps(Harness *h) {
        Result r = run_qctl(h, "ps");
        check_ok(&r, "ps");
        char *out = TAKE_PTR(r.out);
        result_done(&r);
        return out;
}

static void test_full_offload_and_ps(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};
        uint64_t load = 0;
        char digest[80];

        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);
        assert_int_equal(gen(c, "m1", &OPTS(), &load, &e), 0);
        assert_true(load > 0);
        PsEntry p = ps(c, "m1:latest", NULL);
        assert_true(p.found);
        assert_int_equal(p.num_gpu, 4);
        assert_int_equal(p.size_vram, M_FULL);
        assert_int_equal(p.size, M_FULL);
        assert_string_equal(p.processor, "100% GPU");
        /* The ID qctl shows: the same digest as List's. */
        list_digest(c, "m1:latest", digest, sizeof(digest));
        assert_int_equal(strlen(digest), 7 + 64);
        assert_string_equal(p.digest, digest);

        /* qctl ps: the ID (the digest's first 12 digits) and where the model runs. */
        _cleanup_free_ char *out = qctl_ps(h);
        _cleanup_free_ char *id = strndup(digest + 7, 12);
        fprintf(stderr, "# %s", out);
        assert_non_null(strstr(out, id));
        assert_non_null(strstr(out, "100% GPU"));

        /* Loaded already: no load time. */
        assert_int_equal(gen(c, "m1", &OPTS(), &load, &e), 0);
        assert_int_equal(load, 0);
        assert_true(dh_log_contains(h, "with 4 of 4 layers on the GPU"));
        /* The GPU as the daemon found it at start. */
        assert_true(dh_log_contains(h, "GPU: Fake GPU, 0.0 of 0.0 GiB free."));
}

static void test_two_resident_then_evict(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        size_t n = 0;

        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);
        assert_int_equal(dh_create_model(h, c, "m2", MODEL_M), 0);
        assert_int_equal(dh_create_model(h, c, "m3", MODEL_M), 0);
        /* Two of 401024 fit in 900000: both stay on the GPU. */
        gen_ok(c, "m1", &OPTS(.keep_alive = "5m"));
        gen_ok(c, "m2", &OPTS(.keep_alive = "10m"));
        assert_string_equal(ps(c, "m1:latest", &n).processor, "100% GPU");
        assert_int_equal(n, 2);
        assert_string_equal(ps(c, "m2:latest", NULL).processor, "100% GPU");

        /* A third does not: m1, idle and expiring first, makes room, and m3 goes wholly on the GPU. */
        gen_ok(c, "m3", &OPTS());
        assert_false(ps(c, "m1:latest", &n).found);
        assert_int_equal(n, 2);
        assert_true(ps(c, "m2:latest", NULL).found);
        PsEntry p = ps(c, "m3:latest", NULL);
        assert_string_equal(p.processor, "100% GPU");
        assert_int_equal(p.size_vram, M_FULL);
        assert_true(dh_log_contains(h, "Evicting idle model 'm1:latest' to make room on the GPU."));
}

/* Requests for two models at once: the second is placed once the first has its memory, and both fit. */
static void test_concurrent_loads(void **state) {
        Harness *h = *state;
        ProtoClient *c[2] = {dh_connect(h), dh_connect(h)};
        const char *names[2] = {"m1", "m2"};
        uint64_t ids[2];
        ProtoMessage m;
        QdError e = {};

        for (int i = 0; i < 2; i++)
                assert_int_equal(dh_create_model(h, c[0], names[i], MODEL_M), 0);
        for (int i = 0; i < 2; i++) {
                msgpack_sbuffer sb;
                msgpack_sbuffer_init(&sb);
                pack_gen(&sb, names[i], &OPTS());
                assert_int_equal(proto_client_send(c[i], "Generate", sb.data, sb.size, NULL, 0, &ids[i]), 0);
                msgpack_sbuffer_destroy(&sb);
        }
        for (int i = 0; i < 2; i++)
                for (;;) {
                        qd_error_clear(&e);
                        assert_int_equal(proto_client_read(c[i], 10000, &m, &e), 1);
                        if (m.type == PROTO_RESPONSE && m.msgid == ids[i])
                                break;
                }
        assert_string_equal(ps(c[0], "m1:latest", NULL).processor, "100% GPU");
        assert_string_equal(ps(c[0], "m2:latest", NULL).processor, "100% GPU");
        for (int i = 0; i < 2; i++)
                proto_client_free(c[i]);
}

static void test_partial_offload(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        size_t n = 0;

        /* 2000000 bytes in 10 layers of 150000 and 500000 of the rest: the 900000 free take 5 layers
         * (750000 + 512 of KV), the sixth would make 900614. */
        assert_int_equal(dh_create_model(h, c, "big", "size=2000000\nlayers=10\nlayer_size=150000\n"), 0);
        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);
        gen_ok(c, "m1", &OPTS());
        /* The idle m1 goes first; big still does not fit and settles for 5 layers. */
        gen_ok(c, "big", &OPTS());
        assert_false(ps(c, "m1:latest", &n).found);
        assert_int_equal(n, 1);
        assert_true(dh_log_contains(h, "Evicting idle model 'm1:latest' to make room on the GPU."));
        PsEntry p = ps(c, "big:latest", NULL);
        assert_int_equal(p.num_gpu, 5);
        assert_int_equal(p.size_vram, 750512);
        /* RAM: 2000000 - 750000 of weights + 512 of KV; 1250512 of 2001024 is 62 % on the CPU. */
        assert_int_equal(p.size, 2001024);
        assert_string_equal(p.processor, "62%/38% CPU/GPU");
        _cleanup_free_ char *out = qctl_ps(h);
        assert_non_null(strstr(out, "62%/38% CPU/GPU"));

        /* Asking for all layers again (a Modelfile's num_gpu 99, say) does not reload the model that got
         * fewer for want of room: a reload would get no more. */
        uint64_t load = 1;
        QdError e = {};
        assert_int_equal(gen(c, "big", &OPTS(GPU(99)), &load, &e), 0);
        assert_int_equal(load, 0);
        assert_int_equal(gen(c, "big", &OPTS(GPU(10)), &load, &e), 0);
        assert_int_equal(load, 0);
        assert_int_equal(ps(c, "big:latest", NULL).num_gpu, 5);
}

static void test_busy_model_partial(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        _cleanup_(proto_client_freep) ProtoClient *d = dh_connect(h);
        msgpack_sbuffer sb;
        ProtoMessage m;
        QdError e = {};
        uint64_t id;

        assert_int_equal(dh_create_model(h, c, "slow", MODEL_M "delay_us=5000\n"), 0);
        /* 800000 in 4 layers of 150000 and 200000 of the rest. */
        assert_int_equal(dh_create_model(h, c, "m4", "size=800000\nlayers=4\nlayer_size=150000\n"), 0);

        /* slow is busy on the GPU for about 2 s, holding 401024 of the 900000. */
        msgpack_sbuffer_init(&sb);
        pack_gen(&sb, "slow", &OPTS(.num_predict = 400));
        assert_int_equal(proto_client_send(c, "Generate", sb.data, sb.size, NULL, 0, &id), 0);
        msgpack_sbuffer_destroy(&sb);
        for (int i = 0; i < 500 && !ps(d, "slow:latest", NULL).found; i++)
                usleep(10000);
        assert_int_equal(ps(d, "slow:latest", NULL).num_gpu, 4);

        /* m4 whole would take 801024; nothing idle can make room, so 3 layers (450768) go to the GPU. */
        gen_ok(d, "m4", &OPTS());
        PsEntry p = ps(d, "m4:latest", NULL);
        assert_int_equal(p.num_gpu, 3);
        assert_int_equal(p.size_vram, 450768);
        /* 350256 of 801024 on the CPU: 44 %. */
        assert_string_equal(p.processor, "44%/56% CPU/GPU");
        assert_string_equal(ps(d, "slow:latest", NULL).processor, "100% GPU");

        assert_int_equal(dh_cancel(d, id, NULL), 0);
        for (;;) {
                qd_error_clear(&e);
                assert_int_equal(proto_client_read(c, 10000, &m, &e), 1);
                if (m.type == PROTO_RESPONSE && m.msgid == id)
                        break;
        }
}

static void test_num_gpu(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};

        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);

        /* 0: the CPU only. */
        gen_ok(c, "m1", &OPTS(GPU(0)));
        PsEntry p = ps(c, "m1:latest", NULL);
        assert_int_equal(p.num_gpu, 0);
        assert_int_equal(p.size_vram, 0);
        assert_int_equal(p.size, M_FULL);
        assert_string_equal(p.processor, "100% CPU");

        /* 2: other settings reload the idle model; two layers of 80000 and half the KV. */
        gen_ok(c, "m1", &OPTS(GPU(2)));
        assert_true(dh_log_contains(h, "Reloading model 'm1:latest' with other settings."));
        p = ps(c, "m1:latest", NULL);
        assert_int_equal(p.num_gpu, 2);
        assert_int_equal(p.size_vram, 160512);
        assert_string_equal(p.processor, "60%/40% CPU/GPU");

        /* More than the model has is all of them, as Ollama takes it. */
        gen_ok(c, "m1", &OPTS(GPU(999)));
        p = ps(c, "m1:latest", NULL);
        assert_int_equal(p.num_gpu, 4);
        assert_string_equal(p.processor, "100% GPU");

        /* -1 or no num_gpu takes the model as it is loaded: no reload. */
        gen_ok(c, "m1", &OPTS(GPU(2)));
        uint64_t load = 1;
        assert_int_equal(gen(c, "m1", &OPTS(GPU(-1)), &load, &e), 0);
        assert_int_equal(load, 0);
        assert_int_equal(gen(c, "m1", &OPTS(), &load, &e), 0);
        assert_int_equal(load, 0);
        assert_int_equal(ps(c, "m1:latest", NULL).num_gpu, 2);
        /* The same num_gpu as loaded: no reload either. */
        assert_int_equal(gen(c, "m1", &OPTS(GPU(2)), &load, &e), 0);
        assert_int_equal(load, 0);

        /* Tokenize takes the model as it is loaded, even with a context below ContextLength=. */
        assert_int_equal(gen(c, "m1", &OPTS(.num_ctx = 8), &load, &e), 0);
        assert_true(load > 0);
        msgpack_sbuffer sb;
        ProtoMessage m;
        msgpack_sbuffer_init(&sb);
        dh_params(&sb, "model", "m1", "text", "hi", NULL);
        assert_int_equal(proto_client_call(c, "Tokenize", sb.data, sb.size, NULL, 0, NULL, NULL, &m, &e), 0);
        msgpack_sbuffer_destroy(&sb);
        assert_int_equal(gen(c, "m1", &OPTS(.num_ctx = 8), &load, &e), 0);
        assert_int_equal(load, 0);

        /* A named context other than the loaded one reloads; num_thread too. */
        assert_int_equal(gen(c, "m1", &OPTS(.num_ctx = 32), &load, &e), 0);
        assert_true(load > 0);
        assert_int_equal(ps(c, "m1:latest", NULL).size_vram, M_FULL + 1024);
        assert_int_equal(gen(c, "m1", &OPTS(.num_thread = 3), &load, &e), 0);
        assert_true(load > 0);
        assert_int_equal(gen(c, "m1", &OPTS(.num_thread = 3), &load, &e), 0);
        assert_int_equal(load, 0);

        /* Bad values: a clear EINVAL. */
        assert_int_equal(gen(c, "m1", &OPTS(GPU(-2)), NULL, &e), -EINVAL);
        assert_non_null(strstr(e.msg, "Option 'num_gpu' must be -1 (as many layers as fit), 0 (CPU only)"));
        assert_int_equal(gen(c, "m1", &OPTS(.num_thread = 5000), NULL, &e), -EINVAL);
        assert_non_null(strstr(e.msg, "Option 'num_thread'"));
        assert_int_equal(gen(c, "m1", &OPTS(GPU((int64_t)1 << 40)), NULL, &e), -EINVAL);
        assert_non_null(strstr(e.msg, "num_gpu"));
}

static int embed(ProtoClient *c, const char *model, int64_t num_gpu, QdError *e) {
        msgpack_sbuffer sb;
        msgpack_packer pk;

        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_str(&pk, "model", model);
        proto_pack_kv_str(&pk, "input", "hi");
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 1);
        proto_pack_kv_i64(&pk, "num_gpu", num_gpu);
        qd_error_clear(e);
        int k = proto_client_call(c, "Embed", sb.data, sb.size, NULL, 0, NULL, NULL, NULL, e);
        msgpack_sbuffer_destroy(&sb);
        return k;
}

/* Embed takes the options that decide how its model is loaded, as Generate and Load do. */
static void test_embed_options(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};

        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);
        if (embed(c, "m1", 2, &e) < 0)
                fail_msg("Embed failed: %s", e.msg);
        PsEntry p = ps(c, "m1:latest", NULL);
        assert_int_equal(p.num_gpu, 2);
        assert_string_equal(p.processor, "60%/40% CPU/GPU");
        assert_int_equal(embed(c, "m1", -2, &e), -EINVAL);
        assert_non_null(strstr(e.msg, "Option 'num_gpu' must be -1"));
}

static void test_modelfile_num_gpu(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        _cleanup_free_ char *path = strdup_printf("%s/cpu.model", h->dir);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        QdError e = {};

        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs(MODEL_M, f);
        fclose(f);
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        /* PARAMETER num_gpu 1, as qctl create sends it. */
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_str(&pk, "model", "one");
        proto_pack_kv_i64(&pk, "gguf", 0);
        proto_pack_key(&pk, "parameters");
        msgpack_pack_map(&pk, 1);
        proto_pack_kv_i64(&pk, "num_gpu", 1);
        int k = proto_client_call(c, "Create", sb.data, sb.size, &fd, 1, NULL, NULL, NULL, &e);
        msgpack_sbuffer_destroy(&sb);
        if (k < 0)
                fail_msg("Create failed: %s", e.msg);
        gen_ok(c, "one", &OPTS());
        assert_int_equal(ps(c, "one:latest", NULL).num_gpu, 1);
        /* The request's option beats the Modelfile's. */
        gen_ok(c, "one", &OPTS(GPU(0)));
        assert_int_equal(ps(c, "one:latest", NULL).num_gpu, 0);

        /* Load applies the Modelfile's too, so that the generation after it (qctl run's) does not reload. */
        assert_int_equal(load(c, "one", INT64_MIN, &e), 0);
        assert_int_equal(ps(c, "one:latest", NULL).num_gpu, 1);
        uint64_t ns = 1;
        assert_int_equal(gen(c, "one", &OPTS(), &ns, &e), 0);
        assert_int_equal(ns, 0);
}

static void test_load_options(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};
        uint64_t ns = 1;

        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);
        assert_int_equal(load(c, "m1", 2, &e), 0);
        assert_int_equal(ps(c, "m1:latest", NULL).num_gpu, 2);
        assert_int_equal(gen(c, "m1", &OPTS(GPU(2)), &ns, &e), 0);
        assert_int_equal(ns, 0);
        assert_int_equal(load(c, "m1", -3, &e), -EINVAL);
        assert_non_null(strstr(e.msg, "Option 'num_gpu' must be -1"));
}

static void test_estimate_short(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);

        /* The load takes 600000 more than estimated: 4 layers (1000000) do not fit in the 900000 free, the
         * retry with 3 (840000) does. */
        assert_int_equal(dh_create_model(h, c, "liar", MODEL_M "hidden_vram=600000\n"), 0);
        gen_ok(c, "liar", &OPTS());
        assert_true(dh_log_contains(h, "Model 'liar:latest' did not fit on the GPU with 4 layers"));
        PsEntry p = ps(c, "liar:latest", NULL);
        assert_int_equal(p.num_gpu, 3);
        /* What the model holds (840000) and the KV of its 3 layers. */
        assert_int_equal(p.size_vram, 840768);
        /* The fourth layer's 80000 and the rest's 80000 are on the CPU, with a quarter of the KV. */
        assert_int_equal(p.size, 840768 + 160256);
}

static void test_gpu_cannot_run(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);

        /* The GPU backend refuses the model at load time: it runs on the CPU instead of failing. */
        assert_int_equal(dh_create_model(h, c, "odd", MODEL_M "gpu_fails=1\n"), 0);
        gen_ok(c, "odd", &OPTS());
        assert_true(dh_log_contains(h, "Model 'odd:latest' cannot run on the GPU"));
        PsEntry p = ps(c, "odd:latest", NULL);
        assert_int_equal(p.num_gpu, 0);
        assert_int_equal(p.size_vram, 0);
        assert_int_equal(p.size, M_FULL);
        assert_string_equal(p.processor, "100% CPU");
}

static void test_gpu_budget(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);

        /* GpuMemoryBudget=300000 of a free 1000000: 3 layers (240768). */
        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);
        gen_ok(c, "m1", &OPTS());
        PsEntry p = ps(c, "m1:latest", NULL);
        assert_int_equal(p.num_gpu, 3);
        assert_int_equal(p.size_vram, 240768);
}

static void test_memory_budget_cpu_share(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        QdError e = {};

        /* big needs 2001024 of RAM on the CPU alone, over MemoryBudget=1500000, but its CPU share with 5
         * layers on the GPU is 1250512. */
        assert_int_equal(dh_create_model(h, c, "big", "size=2000000\nlayers=10\nlayer_size=150000\n"), 0);
        assert_int_equal(gen(c, "big", &OPTS(GPU(0)), NULL, &e), -ENOSPC);
        assert_non_null(strstr(e.msg, "needs 2001024 bytes"));
        assert_non_null(strstr(e.msg, "MemoryBudget="));
        gen_ok(c, "big", &OPTS());
        assert_int_equal(ps(c, "big:latest", NULL).num_gpu, 5);
        /* m1 on the GPU would need room there: big is idle and goes, m1 takes the GPU whole. */
        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);
        gen_ok(c, "m1", &OPTS());
        assert_string_equal(ps(c, "m1:latest", NULL).processor, "100% GPU");
}

static void test_no_gpu(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);
        char digest[80];

        /* Without a GPU, num_gpu asks for what is not there: the CPU runs it all, without an error. */
        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);
        gen_ok(c, "m1", &OPTS(GPU(4)));
        PsEntry p = ps(c, "m1:latest", NULL);
        assert_int_equal(p.num_gpu, 0);
        assert_int_equal(p.size_vram, 0);
        assert_int_equal(p.size, M_FULL);
        assert_string_equal(p.processor, "100% CPU");
        list_digest(c, "m1:latest", digest, sizeof(digest));
        assert_string_equal(p.digest, digest);

        /* Which a second request with the same num_gpu does not reload. */
        uint64_t load = 1;
        QdError e = {};
        assert_int_equal(gen(c, "m1", &OPTS(GPU(4)), &load, &e), 0);
        assert_int_equal(load, 0);
        assert_false(dh_log_contains(h, "Reloading"));
}

static void test_bad_gpu(void **state) {
        Harness *h = *state;
        _cleanup_(proto_client_freep) ProtoClient *c = dh_connect(h);

        /* A GPU that cannot be queried: said once at start, and the models run on the CPU. */
        assert_true(dh_log_contains(h, "Failed to query the GPU, models run on the CPU: Invalid argument"));
        assert_int_equal(dh_create_model(h, c, "m1", MODEL_M), 0);
        gen_ok(c, "m1", &OPTS());
        assert_string_equal(ps(c, "m1:latest", NULL).processor, "100% CPU");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_full_offload_and_ps, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_embed_options, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_two_resident_then_evict, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_loads, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_partial_offload, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_busy_model_partial, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_num_gpu, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_modelfile_num_gpu, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_load_options, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_estimate_short, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_gpu_cannot_run, setup, dh_teardown),
                cmocka_unit_test_setup_teardown(test_gpu_budget, setup_gpu_budget, dh_teardown),
                cmocka_unit_test_setup_teardown(test_memory_budget_cpu_share, setup_memory_budget, dh_teardown),
                cmocka_unit_test_setup_teardown(test_no_gpu, setup_no_gpu, dh_teardown),
                cmocka_unit_test_setup_teardown(test_bad_gpu, setup_bad_gpu, dh_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
