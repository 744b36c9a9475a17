/* SPDX-License-Identifier: MIT */
/*
 * Against llama.cpp's own quantizer: the model of tests/data/make-quant-llama-cpp-reference.py, rebuilt here
 * from the same counter-based generator, quantized by every mixture (and with --pure and
 * --leave-output-tensor) must give every tensor the type llama.cpp gave it, with the same bytes (SHA-256).
 * That covers the k-quants and IQ4_NL bit for bit, which the gguf package cannot quantize.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <strings.h>
#include <sys/mman.h>

#include "quant.h"

#define N_LAYER 8
#define N_EMBD 256
#define N_FF 320
#define N_HEAD 4
#define N_HEAD_KV 2
#define N_VOCAB 256
#define SEED 20261127ull

typedef struct Spec {
        char name[64];
        uint32_t n_dims;
        uint64_t ne[2];
        double scale, offset;
} Spec;

static size_t model_specs(Spec *s) {
        const uint64_t kv = N_EMBD / N_HEAD * N_HEAD_KV;
        size_t n = 0;

#define ADD(nm, dims, ne0, ne1, sc, off)                                                               \
        do {                                                                                           \
                s[n] = (Spec){.n_dims = (dims), .ne = {(ne0), (ne1)}, .scale = (sc), .offset = (off)}; \
                snprintf(s[n].name, sizeof(s[n].name), "%s", (nm));                                    \
                n++;                                                                                   \
        } while (0)

        ADD("token_embd.weight", 2, N_EMBD, N_VOCAB, 0.02, 0.0);
        ADD("output_norm.weight", 1, N_EMBD, 1, 0.1, 1.0);
        ADD("output.weight", 2, N_EMBD, N_VOCAB, 0.02, 0.0);
        for (int i = 0; i < N_LAYER; i++) {
                char nm[64];
#define LAYER(part, dims, ne0, ne1, sc, off)                           \
        do {                                                           \
                snprintf(nm, sizeof(nm), "blk.%d.%s.weight", i, part); \
                ADD(nm, dims, ne0, ne1, sc, off);                      \
        } while (0)
                LAYER("attn_q", 2, N_EMBD, N_EMBD, 0.02, 0.0);
                LAYER("attn_k", 2, N_EMBD, kv, 0.02, 0.0);
                LAYER("attn_v", 2, N_EMBD, kv, 0.02, 0.0);
                LAYER("attn_output", 2, N_EMBD, N_EMBD, 0.02, 0.0);
                LAYER("ffn_gate", 2, N_EMBD, N_FF, 0.02, 0.0);
                LAYER("ffn_up", 2, N_EMBD, N_FF, 0.02, 0.0);
                LAYER("ffn_down", 2, N_FF, N_EMBD, 0.02, 0.0);
                LAYER("attn_norm", 1, N_EMBD, 1, 0.1, 1.0);
                LAYER("ffn_norm", 1, N_EMBD, 1, 0.1, 1.0);
#undef LAYER
        }
#undef ADD
        return n;
}

/* Output number i (from 1) of splitmix64 seeded with SEED, mapped to a float as the script maps it. */
static float value(uint64_t i, double scale, double offset) {
        uint64_t z = SEED + i * 0x9E3779B97F4A7C15ull;
        double v;

        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        v = ((double)(z >> 40) / 16777216.0 - 0.5) * scale;
        if ((z & 0xff) == 0)
                v *= 8.0;
        return (float)(v + offset);
}

static int build_model(void) {
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        Spec specs[N_LAYER * 9 + 3];
        size_t n = model_specs(specs);
        uint64_t counter = 0;
        int fd = memfd_create("llama-cpp-model", MFD_CLOEXEC);

        assert_true(fd >= 0);
        assert_int_equal(gguf_writer_new(&w, fd, 32), 0);
        assert_int_equal(gguf_writer_add_string(w, "general.architecture", "llama"), 0);
        assert_int_equal(gguf_writer_add_u32(w, "llama.context_length", 256), 0);
        assert_int_equal(gguf_writer_add_u32(w, "llama.embedding_length", N_EMBD), 0);
        assert_int_equal(gguf_writer_add_u32(w, "llama.block_count", N_LAYER), 0);
        assert_int_equal(gguf_writer_add_u32(w, "llama.feed_forward_length", N_FF), 0);
        assert_int_equal(gguf_writer_add_u32(w, "llama.attention.head_count", N_HEAD), 0);
        assert_int_equal(gguf_writer_add_u32(w, "llama.attention.head_count_kv", N_HEAD_KV), 0);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(gguf_writer_add_tensor(w, specs[i].name, GGML_TYPE_F32, specs[i].n_dims,
                                                        specs[i].ne),
                                 0);
        assert_int_equal(gguf_writer_write_header(w), 0);
        for (size_t i = 0; i < n; i++) {
                uint64_t count = specs[i].ne[0] * (specs[i].n_dims > 1 ? specs[i].ne[1] : 1);
                _cleanup_free_ float *data = malloc(count * sizeof(float));

                assert_non_null(data);
                for (uint64_t e = 0; e < count; e++)
                        data[e] = value(++counter, specs[i].scale, specs[i].offset);
                assert_int_equal(gguf_writer_write_tensor_data(w, data, count * sizeof(float)), 0);
        }
        assert_int_equal(gguf_writer_finish(w), 0);
        return fd;
}

static void sha256_prefix(const void *data, size_t size, char hex[17]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int len;

        assert_int_equal(EVP_Digest(data, size, md, &len, EVP_sha256(), NULL), 1);
        for (int i = 0; i < 8; i++)
                snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

typedef struct Case {
        char mixture[16], options[16];
        Gguf *out;
        int fd;
} Case;

/* Quantizes src as the reference line's mixture and options say. */
static void run_case(const Gguf *src, Case *c) {
        QuantParams p = quant_params_default();
        QdError err = {};

        p.mixture = quant_mixture_from_name(c->mixture);
        assert_true(p.mixture >= 0);
        p.pure = strstr(c->options, "pure") != NULL;
        p.leave_output = strstr(c->options, "leave") != NULL;
        p.n_threads = 2;
        c->fd = memfd_create("quantized", MFD_CLOEXEC);
        assert_true(c->fd >= 0);
        if (quant_file(src, c->fd, &p, &err) < 0)
                fail_msg("%s %s: %s", c->mixture, c->options, err.msg);
        assert_int_equal(gguf_open_fd(c->fd, &c->out, NULL), 0);
}

static void test_same_as_llama_cpp(void **state) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        _cleanup_free_ char *path =
                strdup_printf("%s/quant/llama-cpp-mixtures.txt", dir ? dir : "tests/data");
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        _cleanup_(gguf_freep) Gguf *src = NULL;
        Case c = {.fd = -EBADF};
        char line[512];
        unsigned n_lines = 0, n_cases = 0, n_quantized = 0;
        int fd = build_model();

        assert_non_null(f);
        assert_int_equal(gguf_open_fd(fd, &src, NULL), 0);
        safe_close(fd);

        while (fgets(line, sizeof(line), f)) {
                char mixture[16], options[16], name[64], type[16], hash[32], got[17];

                if (line[0] == '#')
                        continue;
                assert_int_equal(
                        sscanf(line, "%15s %15s %63s %15s %31s", mixture, options, name, type, hash), 5);
                if (!streq(mixture, c.mixture) || !streq(options, c.options)) {
                        c.out = gguf_free(c.out);
                        c.fd = safe_close(c.fd);
                        snprintf(c.mixture, sizeof(c.mixture), "%s", mixture);
                        snprintf(c.options, sizeof(c.options), "%s", options);
                        run_case(src, &c);
                        n_cases++;
                }
                const GgufTensor *t = gguf_find_tensor(c.out, name);
                assert_non_null(t);
                if (strcasecmp(ggml_type_name(t->type), type) != 0)
                        fail_msg("%s %s: %s is %s, llama.cpp made it %s", mixture, options, name,
                                 ggml_type_name(t->type), type);
                sha256_prefix(t->data, t->size, got);
                if (!streq(got, hash))
                        fail_msg("%s %s: %s (%s) has other bytes than llama.cpp's", mixture, options, name,
                                 type);
                n_quantized += t->type != GGML_TYPE_F32;
                n_lines++;
        }
        c.out = gguf_free(c.out);
        safe_close(c.fd);
        print_message("# %u tensors in %u files equal llama.cpp's, %u of them converted\n", n_lines, n_cases,
                      n_quantized);
        assert_int_equal(n_cases, 21);
        assert_int_equal(n_lines, 21 * (N_LAYER * 9 + 3));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_same_as_llama_cpp),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
