/* SPDX-License-Identifier: MIT */
/* GGUF reading and writing on the real stories260K model: metadata, tensor table, byte-exact round trips. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <sys/mman.h>
#include <sys/stat.h>

#include "engine.h"

static char *model_path(void) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        return strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
}

static void test_stories_metadata(void **state) {
        _cleanup_free_ char *path = model_path();
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_free_ char *arch = NULL, *tok = NULL;
        QdError err = {};
        uint32_t u;
        float f;

        assert_int_equal(gguf_open(path, &g, &err), 0);
        assert_int_equal(g->version, 3);
        assert_int_equal(g->alignment, 32);
        assert_int_equal(g->n_tensors, 48);

        assert_int_equal(gguf_get_string(g, "general.architecture", &arch), 0);
        assert_string_equal(arch, "llama");
        assert_int_equal(gguf_get_u32(g, "llama.embedding_length", &u), 0);
        assert_int_equal(u, 64);
        assert_int_equal(gguf_get_u32(g, "llama.block_count", &u), 0);
        assert_int_equal(u, 5);
        assert_int_equal(gguf_get_u32(g, "llama.attention.head_count", &u), 0);
        assert_int_equal(u, 8);
        assert_int_equal(gguf_get_u32(g, "llama.attention.head_count_kv", &u), 0);
        assert_int_equal(u, 4);
        assert_int_equal(gguf_get_u32(g, "llama.feed_forward_length", &u), 0);
        assert_int_equal(u, 172);
        assert_int_equal(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), 0);
        assert_true(f > 0 && f < 1e-3);
        assert_int_equal(gguf_get_string(g, "tokenizer.ggml.model", &tok), 0);
        assert_string_equal(tok, "llama");
        assert_int_equal(gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u), 0);
        assert_int_equal(u, 1);
        assert_int_equal(gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u), 0);
        assert_int_equal(u, 2);

        const GgufArray *tokens;
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.tokens", &tokens), 0);
        assert_int_equal(tokens->type, GGUF_TYPE_STRING);
        assert_int_equal(tokens->n, 512);
        assert_non_null(tokens->items);
        const GgufArray *scores;
        assert_int_equal(gguf_get_array(g, "tokenizer.ggml.scores", &scores), 0);
        assert_int_equal(scores->type, GGUF_TYPE_FLOAT32);
        assert_int_equal(scores->n, 512);

        /* Typed getters refuse the wrong type and report absent keys. */
        assert_int_equal(gguf_get_u32(g, "general.architecture", &u), -EBADMSG);
        assert_int_equal(gguf_get_u32(g, "no.such.key", &u), -ENOENT);
        assert_int_equal(gguf_get_array(g, "llama.block_count", &tokens), -EBADMSG);
}

static void test_stories_tensors(void **state) {
        _cleanup_free_ char *path = model_path();
        _cleanup_(gguf_freep) Gguf *g = NULL;

        assert_int_equal(gguf_open(path, &g, NULL), 0);
        for (uint64_t i = 0; i < g->n_tensors; i++) {
                const GgufTensor *t = &g->tensors[i];
                assert_int_equal(t->type, GGML_TYPE_F32);
                assert_int_equal(t->size, t->n_elements * 4);
                assert_int_equal(t->offset % g->alignment, 0);
                assert_ptr_equal(t->data, g->base + g->data_offset + t->offset);
        }
        const GgufTensor *t = gguf_find_tensor(g, "token_embd.weight");
        assert_non_null(t);
        assert_int_equal(t->n_dims, 2);
        assert_int_equal(t->ne[0], 64);
        assert_int_equal(t->ne[1], 512);
        t = gguf_find_tensor(g, "blk.0.ffn_down.weight");
        assert_non_null(t);
        assert_int_equal(t->ne[0], 172);
        assert_int_equal(t->ne[1], 64);
        t = gguf_find_tensor(g, "blk.4.attn_k.weight");
        assert_non_null(t);
        assert_int_equal(t->ne[0], 64);
        assert_int_equal(t->ne[1], 32); /* 4 KV heads of 8 */
        t = gguf_find_tensor(g, "output_norm.weight");
        assert_non_null(t);
        assert_int_equal(t->n_dims, 1);
        assert_null(gguf_find_tensor(g, "blk.5.attn_q.weight"));

        /* Every layer has its nine tensors. */
        for (int l = 0; l < 5; l++) {
                static const char *const names[] = {
                        "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                        "ffn_norm",  "ffn_gate", "ffn_up", "ffn_down",
                };
                for (size_t k = 0; k < ELEMENTSOF(names); k++) {
                        char n[64];
                        snprintf(n, sizeof(n), "blk.%d.%s.weight", l, names[k]);
                        assert_non_null(gguf_find_tensor(g, n));
                }
        }
}

/* Rewrites g through the writer into a memfd and returns the descriptor. */
static int rewrite(const Gguf *g) {
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        int fd = memfd_create("gguf", MFD_CLOEXEC);

        assert_true(fd >= 0);
        assert_int_equal(gguf_writer_new(&w, fd, GGUF_DEFAULT_ALIGNMENT), 0);
        for (uint64_t i = 0; i < g->n_kv; i++)
                assert_int_equal(gguf_writer_add_value(w, g->kv[i].key, &g->kv[i].value), 0);
        for (uint64_t i = 0; i < g->n_tensors; i++) {
                const GgufTensor *t = &g->tensors[i];
                assert_int_equal(gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne), 0);
        }
        assert_int_equal(gguf_writer_write_header(w), 0);
        for (uint64_t i = 0; i < g->n_tensors; i++) {
                const GgufTensor *t = &g->tensors[i];
                /* In two pieces, to exercise partial writes. */
                size_t half = t->size / 2;
                assert_int_equal(gguf_writer_write_tensor_data(w, t->data, half), 0);
                assert_int_equal(gguf_writer_write_tensor_data(w, (const uint8_t *)t->data + half, t->size - half),
                                 0);
        }
        assert_int_equal(gguf_writer_finish(w), 0);
        return fd;
}

static void *map_fd(int fd, size_t *size) {
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        *size = (size_t)st.st_size;
        void *p = mmap(NULL, *size, PROT_READ, MAP_SHARED, fd, 0);
        assert_true(p != MAP_FAILED);
        return p;
}

static void test_round_trip(void **state) {
        _cleanup_free_ char *path = model_path();
        _cleanup_(gguf_freep) Gguf *g = NULL, *g2 = NULL;
        _cleanup_close_ int fd1 = -EBADF, fd2 = -EBADF;
        size_t s1, s2;

        assert_int_equal(gguf_open(path, &g, NULL), 0);
        fd1 = rewrite(g);
        assert_int_equal(gguf_open_fd(fd1, &g2, NULL), 0);
        fd2 = rewrite(g2);

        void *a = map_fd(fd1, &s1), *b = map_fd(fd2, &s2);
        assert_int_equal(s1, s2);
        assert_memory_equal(a, b, s1);
        /* The reference writer lays files out as we do: our copy is the original, byte for byte. */
        assert_int_equal(s1, g->size);
        assert_memory_equal(a, g->base, s1);
        munmap(a, s1);
        munmap(b, s2);

        assert_int_equal(g2->n_kv, g->n_kv);
        for (uint64_t i = 0; i < g->n_kv; i++)
                assert_string_equal(g2->kv[i].key, g->kv[i].key);
        for (uint64_t i = 0; i < g->n_tensors; i++) {
                assert_string_equal(g2->tensors[i].name, g->tensors[i].name);
                assert_memory_equal(g2->tensors[i].data, g->tensors[i].data, g->tensors[i].size);
        }
}

static void test_writer_values(void **state) {
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        _cleanup_close_ int fd = memfd_create("gguf", MFD_CLOEXEC);
        const char *strs[] = { "alpha", "", "γάμμα" };
        uint8_t bytes[] = { 1, 2, 3 };
        int32_t ints[] = { -1, 7 };
        uint64_t ne[2] = { 32, 3 };
        uint8_t q[3 * 18];

        assert_int_equal(gguf_writer_new(&w, fd, 64), 0);
        assert_int_equal(gguf_writer_add_string(w, "general.architecture", "llama"), 0);
        assert_int_equal(gguf_writer_add_string(w, "general.architecture", "again"), -EEXIST);
        assert_int_equal(gguf_writer_add_u32(w, "a.u32", 7), 0);
        assert_int_equal(gguf_writer_add_i32(w, "a.i32", -7), 0);
        assert_int_equal(gguf_writer_add_u64(w, "a.u64", UINT64_MAX), 0);
        assert_int_equal(gguf_writer_add_f32(w, "a.f32", 0.5f), 0);
        assert_int_equal(gguf_writer_add_bool(w, "a.bool", true), 0);
        assert_int_equal(gguf_writer_add_string_array(w, "a.strs", strs, 3), 0);
        assert_int_equal(gguf_writer_add_array(w, "a.bytes", GGUF_TYPE_UINT8, bytes, 3), 0);
        assert_int_equal(gguf_writer_add_array(w, "a.bad", GGUF_TYPE_STRING, bytes, 3), -EINVAL);

        /* A nested array: [[1, 2, 3], [-1, 7]] as arrays of different element types. */
        GgufValue inner[2] = {
                { .type = GGUF_TYPE_ARRAY, .arr = { .type = GGUF_TYPE_UINT8, .n = 3, .data = bytes } },
                { .type = GGUF_TYPE_ARRAY, .arr = { .type = GGUF_TYPE_INT32, .n = 2, .data = ints } },
        };
        GgufValue outer = { .type = GGUF_TYPE_ARRAY, .arr = { .type = GGUF_TYPE_ARRAY, .n = 2, .items = inner } };
        assert_int_equal(gguf_writer_add_value(w, "a.nested", &outer), 0);

        uint64_t bad_ne[1] = { 33 };
        assert_int_equal(gguf_writer_add_tensor(w, "q", GGML_TYPE_Q4_0, 1, bad_ne), -EINVAL);
        assert_int_equal(gguf_writer_add_tensor(w, "q", GGML_TYPE_Q4_0, 2, ne), 0);
        assert_int_equal(gguf_writer_add_tensor(w, "q", GGML_TYPE_F32, 2, ne), -EEXIST);
        assert_int_equal(gguf_writer_add_tensor(w, "r", 4 /* retired Q4_2 */, 2, ne), -EINVAL);
        assert_int_equal(gguf_writer_finish(w), -EINVAL);
        assert_int_equal(gguf_writer_write_tensor_data(w, q, sizeof(q)), -EINVAL); /* before the header */
        assert_int_equal(gguf_writer_write_header(w), 0);
        assert_int_equal(gguf_writer_write_header(w), -EALREADY);
        assert_int_equal(gguf_writer_add_u32(w, "late", 1), -EINVAL);
        assert_int_equal(gguf_writer_write_tensor_data(w, q, sizeof(q) + 1), -EINVAL); /* too much */
        assert_int_equal(gguf_writer_finish(w), -EINVAL);                             /* not yet written */
        memset(q, 0x11, sizeof(q));
        assert_int_equal(gguf_writer_write_tensor_data(w, q, sizeof(q)), 0);
        assert_int_equal(gguf_writer_finish(w), 0);

        QdError err = {};
        assert_int_equal(gguf_open_fd(fd, &g, &err), 0);
        assert_int_equal(g->alignment, 64); /* added as general.alignment because it is not 32 */
        assert_int_equal(g->data_offset % 64, 0);
        uint64_t u64;
        int64_t i64;
        float f;
        bool b;
        assert_int_equal(gguf_get_u64(g, "a.u64", &u64), 0);
        assert_true(u64 == UINT64_MAX);
        assert_int_equal(gguf_get_i64(g, "a.i32", &i64), 0);
        assert_int_equal(i64, -7);
        uint32_t u;
        assert_int_equal(gguf_get_u32(g, "a.i32", &u), -ERANGE);
        assert_int_equal(gguf_get_u32(g, "a.u64", &u), -ERANGE);
        assert_int_equal(gguf_get_f32(g, "a.f32", &f), 0);
        assert_true(f == 0.5f);
        assert_int_equal(gguf_get_bool(g, "a.bool", &b), 0);
        assert_true(b);

        const GgufArray *a;
        assert_int_equal(gguf_get_array(g, "a.strs", &a), 0);
        assert_int_equal(a->n, 3);
        assert_int_equal(a->items[1].str.len, 0);
        assert_int_equal(a->items[2].str.len, strlen("γάμμα"));
        assert_memory_equal(a->items[2].str.data, "γάμμα", a->items[2].str.len);
        assert_int_equal(gguf_get_array(g, "a.nested", &a), 0);
        assert_int_equal(a->type, GGUF_TYPE_ARRAY);
        assert_int_equal(a->n, 2);
        assert_int_equal(a->items[0].arr.type, GGUF_TYPE_UINT8);
        assert_memory_equal(a->items[0].arr.data, bytes, 3);
        assert_int_equal(a->items[1].arr.type, GGUF_TYPE_INT32);
        assert_memory_equal(a->items[1].arr.data, ints, sizeof(ints));

        const GgufTensor *t = gguf_find_tensor(g, "q");
        assert_non_null(t);
        assert_int_equal(t->size, sizeof(q));
        assert_memory_equal(t->data, q, sizeof(q));
}

static void test_type_table(void **state) {
        uint64_t size;

        assert_string_equal(ggml_type_name(GGML_TYPE_Q4_K), "q4_K");
        assert_int_equal(ggml_type_from_name("Q4_K"), GGML_TYPE_Q4_K);
        assert_int_equal(ggml_type_from_name("bf16"), GGML_TYPE_BF16);
        assert_int_equal(ggml_type_from_name("q4_2"), -EINVAL);
        assert_null(ggml_type_info(4));
        assert_null(ggml_type_info(5));
        assert_null(ggml_type_info(1000));
        assert_int_equal(ggml_row_size(GGML_TYPE_Q4_K, 4096, &size), 0);
        assert_int_equal(size, 16 * 144);
        assert_int_equal(ggml_row_size(GGML_TYPE_Q6_K, 256, &size), 0);
        assert_int_equal(size, 210);
        assert_int_equal(ggml_row_size(GGML_TYPE_Q8_0, 31, &size), -EINVAL);
        assert_int_equal(ggml_row_size(GGML_TYPE_F32, UINT64_MAX / 2, &size), -EOVERFLOW);
        /* The Llama-2-7B Q4_0 sizes of the anchors: a 4096x4096 matrix is 9,437,184 bytes. */
        assert_int_equal(ggml_row_size(GGML_TYPE_Q4_0, 4096, &size), 0);
        assert_int_equal(size * 4096, 9437184);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_stories_metadata), cmocka_unit_test(test_stories_tensors),
                cmocka_unit_test(test_round_trip),       cmocka_unit_test(test_writer_values),
                cmocka_unit_test(test_type_table),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
