/* SPDX-License-Identifier: MIT */
/*
 * Mixtures: the type each tensor gets, checked on a Llama-2-7B-shaped tensor table against llama-quantize's
 * rules and the measured file sizes in /work/shared/anchors.md, and on stories260K's odd row lengths.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "quant.h"

#define MAX_TENSORS 512

typedef struct Table {
        GgufTensor t[MAX_TENSORS];
        char names[MAX_TENSORS][64];
        size_t n;
        QuantModelShape shape;
} Table;

static void add(Table *tb, const char *name, uint32_t n_dims, uint64_t ne0, uint64_t ne1) {
        GgufTensor *t = &tb->t[tb->n];

        assert_true(tb->n < MAX_TENSORS);
        snprintf(tb->names[tb->n], sizeof(tb->names[0]), "%s", name);
        *t = (GgufTensor){.name = tb->names[tb->n],
                          .n_dims = n_dims,
                          .ne = {ne0, ne1, 1, 1},
                          .type = n_dims == 1 ? GGML_TYPE_F32 : GGML_TYPE_F16,
                          .n_elements = ne0 * ne1};
        tb->n++;
}

/* A llama model's tensor table in the order convert_hf_to_gguf.py writes it. */
static void llama_table(Table *tb, uint32_t n_layer, uint64_t n_embd, uint64_t n_ff, uint64_t n_vocab,
                        uint64_t n_embd_kv, bool tied) {
        char name[64];

        tb->n = 0;
        add(tb, "token_embd.weight", 2, n_embd, n_vocab);
        add(tb, "output_norm.weight", 1, n_embd, 1);
        if (!tied)
                add(tb, "output.weight", 2, n_embd, n_vocab);
        for (uint32_t i = 0; i < n_layer; i++) {
                static const char *const parts[] = {"attn_q",      "attn_k",    "attn_v",
                                                    "attn_output", "ffn_gate",  "ffn_up",
                                                    "ffn_down",    "attn_norm", "ffn_norm"};
                for (size_t p = 0; p < ELEMENTSOF(parts); p++) {
                        snprintf(name, sizeof(name), "blk.%u.%s.weight", i, parts[p]);
                        if (p == 7 || p == 8)
                                add(tb, name, 1, n_embd, 1);
                        else if (p == 1 || p == 2)
                                add(tb, name, 2, n_embd, n_embd_kv);
                        else if (p == 4 || p == 5)
                                add(tb, name, 2, n_embd, n_ff);
                        else if (p == 6)
                                add(tb, name, 2, n_ff, n_embd);
                        else
                                add(tb, name, 2, n_embd, n_embd);
                }
        }
        tb->shape = (QuantModelShape){.n_head = 32, .n_head_kv = 32, .n_layer = n_layer};
}

static void llama7b(Table *tb) {
        llama_table(tb, 32, 4096, 11008, 32000, 4096, false);
}

static void choose(const Table *tb, const QuantParams *p, uint32_t *types) {
        QdError err = {};
        int r = quant_choose_types(p, &tb->shape, tb->t, tb->n, types, &err);
        if (r < 0)
                fail_msg("quant_choose_types: %s", err.msg);
}

static uint64_t total_bytes(const Table *tb, const uint32_t *types) {
        uint64_t total = 0;

        for (size_t i = 0; i < tb->n; i++) {
                uint64_t row;
                assert_int_equal(ggml_row_size(types[i], tb->t[i].ne[0], &row), 0);
                total += row * tb->t[i].ne[1];
        }
        return total;
}

static uint32_t type_of(const Table *tb, const uint32_t *types, const char *name) {
        for (size_t i = 0; i < tb->n; i++)
                if (streq(tb->t[i].name, name))
                        return types[i];
        fail_msg("no tensor %s", name);
        return _GGML_TYPE_MAX;
}

static uint32_t layer_type(const Table *tb, const uint32_t *types, unsigned layer, const char *part) {
        char name[64];

        snprintf(name, sizeof(name), "blk.%u.%s.weight", layer, part);
        return type_of(tb, types, name);
}

static QuantParams params(QuantMixture m) {
        QuantParams p = quant_params_default();
        p.mixture = m;
        return p;
}

/* The anchors measured the whole files: tensor bytes plus 869,920 bytes of header and vocabulary, the same
 * for both files (same model, same metadata) and checked here by their difference agreeing. */
#define ANCHOR_Q4_0_FILE 3825935904ull
#define ANCHOR_Q4_K_M_FILE 4081133088ull
#define ANCHOR_Q8_0_TENSORS 7160348672ull

static void test_llama7b_q4_k_m(void **state) {
        Table tb;
        uint32_t types[MAX_TENSORS];
        QuantParams p = params(QUANT_MIXTURE_Q4_K_M);

        llama7b(&tb);
        choose(&tb, &p, types);
        assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_Q6_K);
        assert_int_equal(type_of(&tb, types, "token_embd.weight"), GGML_TYPE_Q4_K);
        assert_int_equal(type_of(&tb, types, "output_norm.weight"), GGML_TYPE_F32);
        for (unsigned i = 0; i < 32; i++) {
                /* Layers 0-3, 6, 9, ..., 27 and 28-31 get Q6_K for attn_v and ffn_down. */
                bool more = i < 4 || i >= 28 || (i >= 6 && i % 3 == 0);
                uint32_t want = more ? GGML_TYPE_Q6_K : GGML_TYPE_Q4_K;

                assert_int_equal(layer_type(&tb, types, i, "attn_v"), want);
                assert_int_equal(layer_type(&tb, types, i, "ffn_down"), want);
                assert_int_equal(layer_type(&tb, types, i, "attn_q"), GGML_TYPE_Q4_K);
                assert_int_equal(layer_type(&tb, types, i, "attn_k"), GGML_TYPE_Q4_K);
                assert_int_equal(layer_type(&tb, types, i, "attn_output"), GGML_TYPE_Q4_K);
                assert_int_equal(layer_type(&tb, types, i, "ffn_gate"), GGML_TYPE_Q4_K);
                assert_int_equal(layer_type(&tb, types, i, "ffn_up"), GGML_TYPE_Q4_K);
                assert_int_equal(layer_type(&tb, types, i, "attn_norm"), GGML_TYPE_F32);
        }
        uint64_t q4_k_m = total_bytes(&tb, types);
        assert_int_equal(q4_k_m, 4080263168ull);

        p = params(QUANT_MIXTURE_Q4_0);
        choose(&tb, &p, types);
        assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_Q6_K);
        assert_int_equal(type_of(&tb, types, "token_embd.weight"), GGML_TYPE_Q4_0);
        assert_int_equal(layer_type(&tb, types, 0, "ffn_down"), GGML_TYPE_Q4_0);
        uint64_t q4_0 = total_bytes(&tb, types);
        assert_int_equal(q4_0, 3825065984ull);
        assert_int_equal(ANCHOR_Q4_0_FILE - q4_0, ANCHOR_Q4_K_M_FILE - q4_k_m);
        assert_int_equal(ANCHOR_Q4_0_FILE - q4_0, 869920);

        p = params(QUANT_MIXTURE_Q8_0);
        choose(&tb, &p, types);
        assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_Q8_0);
        assert_int_equal(total_bytes(&tb, types), ANCHOR_Q8_0_TENSORS);
}

static void test_llama7b_other_mixtures(void **state) {
        Table tb;
        uint32_t types[MAX_TENSORS];
        QuantParams p;

        llama7b(&tb);

        p = params(QUANT_MIXTURE_Q2_K);
        choose(&tb, &p, types);
        assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_Q6_K);
        assert_int_equal(type_of(&tb, types, "token_embd.weight"), GGML_TYPE_Q2_K);
        assert_int_equal(layer_type(&tb, types, 5, "attn_v"), GGML_TYPE_Q3_K); /* no GQA: Q3_K */
        assert_int_equal(layer_type(&tb, types, 5, "ffn_down"), GGML_TYPE_Q3_K);
        assert_int_equal(layer_type(&tb, types, 5, "attn_output"), GGML_TYPE_Q3_K);
        assert_int_equal(layer_type(&tb, types, 5, "attn_q"), GGML_TYPE_Q2_K);
        tb.shape.n_head_kv = 8; /* grouped-query attention, 4 heads per kv head: attn_v Q4_K */
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 5, "attn_v"), GGML_TYPE_Q4_K);
        tb.shape.n_head_kv = 32;

        p = params(QUANT_MIXTURE_Q3_K_S);
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 0, "attn_v"), GGML_TYPE_Q3_K);
        assert_int_equal(layer_type(&tb, types, 0, "ffn_down"), GGML_TYPE_Q3_K);
        assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_Q6_K);

        p = params(QUANT_MIXTURE_Q3_K_M);
        choose(&tb, &p, types);
        for (unsigned i = 0; i < 32; i++) {
                assert_int_equal(layer_type(&tb, types, i, "attn_v"),
                                 i < 2 ? GGML_TYPE_Q5_K : GGML_TYPE_Q4_K);
                assert_int_equal(layer_type(&tb, types, i, "ffn_down"),
                                 i < 2 ? GGML_TYPE_Q5_K : GGML_TYPE_Q4_K);
                assert_int_equal(layer_type(&tb, types, i, "attn_output"), GGML_TYPE_Q4_K);
                assert_int_equal(layer_type(&tb, types, i, "ffn_up"), GGML_TYPE_Q3_K);
        }

        p = params(QUANT_MIXTURE_Q3_K_L);
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 9, "attn_v"), GGML_TYPE_Q5_K);
        assert_int_equal(layer_type(&tb, types, 9, "ffn_down"), GGML_TYPE_Q5_K);
        assert_int_equal(layer_type(&tb, types, 9, "attn_output"), GGML_TYPE_Q5_K);
        assert_int_equal(layer_type(&tb, types, 9, "attn_k"), GGML_TYPE_Q3_K);

        p = params(QUANT_MIXTURE_Q4_K_S);
        choose(&tb, &p, types);
        for (unsigned i = 0; i < 32; i++) {
                assert_int_equal(layer_type(&tb, types, i, "attn_v"),
                                 i < 4 ? GGML_TYPE_Q5_K : GGML_TYPE_Q4_K);
                assert_int_equal(layer_type(&tb, types, i, "ffn_down"),
                                 i < 4 ? GGML_TYPE_Q5_K : GGML_TYPE_Q4_K);
        }

        p = params(QUANT_MIXTURE_Q5_K_M);
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 6, "attn_v"), GGML_TYPE_Q6_K);
        assert_int_equal(layer_type(&tb, types, 7, "ffn_down"), GGML_TYPE_Q5_K);
        assert_int_equal(layer_type(&tb, types, 31, "ffn_down"), GGML_TYPE_Q6_K);

        p = params(QUANT_MIXTURE_Q5_K_S);
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 0, "ffn_down"), GGML_TYPE_Q5_K);
        assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_Q6_K);

        p = params(QUANT_MIXTURE_Q6_K);
        choose(&tb, &p, types);
        assert_int_equal(type_of(&tb, types, "token_embd.weight"), GGML_TYPE_Q6_K);
        assert_int_equal(layer_type(&tb, types, 0, "attn_v"), GGML_TYPE_Q6_K);

        static const QuantMixture plain[] = {QUANT_MIXTURE_Q4_1, QUANT_MIXTURE_Q5_0, QUANT_MIXTURE_Q5_1};
        for (size_t k = 0; k < ELEMENTSOF(plain); k++) {
                p = params(plain[k]);
                choose(&tb, &p, types);
                assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_Q6_K);
                assert_int_equal(layer_type(&tb, types, 3, "ffn_down"),
                                 (uint32_t)quant_mixture_default_type(plain[k]));
        }

        /* Unquantized mixtures convert every 2-D weight, output and embeddings included; norms stay F32. */
        static const QuantMixture floats[] = {QUANT_MIXTURE_F16, QUANT_MIXTURE_BF16, QUANT_MIXTURE_F32};
        for (size_t k = 0; k < ELEMENTSOF(floats); k++) {
                uint32_t want = (uint32_t)quant_mixture_default_type(floats[k]);
                p = params(floats[k]);
                choose(&tb, &p, types);
                assert_int_equal(type_of(&tb, types, "output.weight"), want);
                assert_int_equal(type_of(&tb, types, "token_embd.weight"), want);
                assert_int_equal(layer_type(&tb, types, 0, "attn_v"), want);
                assert_int_equal(layer_type(&tb, types, 0, "ffn_norm"), GGML_TYPE_F32);
        }

        /* IQ4_NL: ffn_down in the first eighth of the layers gets Q5_K. */
        p = params(QUANT_MIXTURE_IQ4_NL);
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 3, "ffn_down"), GGML_TYPE_Q5_K);
        assert_int_equal(layer_type(&tb, types, 4, "ffn_down"), GGML_TYPE_IQ4_NL);
}

static void test_70b_and_moe(void **state) {
        Table tb;
        uint32_t types[MAX_TENSORS];
        QuantParams p = params(QUANT_MIXTURE_Q3_K_S);

        /* A few layers of 70B's shape suffice: the flag is what matters. */
        llama_table(&tb, 8, 8192, 28672, 32000, 1024, false);
        tb.shape.is_70b = true;
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 0, "attn_v"), GGML_TYPE_Q5_K);
        assert_int_equal(layer_type(&tb, types, 0, "attn_k"), GGML_TYPE_Q3_K);

        tb.shape.is_70b = false;
        tb.shape.n_expert = 8;
        p = params(QUANT_MIXTURE_Q4_K_M);
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 2, "attn_v"), GGML_TYPE_Q8_0);
        assert_int_equal(layer_type(&tb, types, 2, "attn_k"), GGML_TYPE_Q8_0);
        assert_int_equal(layer_type(&tb, types, 2, "attn_output"), GGML_TYPE_Q5_K);
}

static void test_tied_embeddings(void **state) {
        Table tb;
        uint32_t types[MAX_TENSORS];
        QuantParams p = params(QUANT_MIXTURE_Q4_K_M);

        /* SmolLM2-135M's shape: no output.weight, so token_embd takes the output's rule. 576 % 256 != 0:
         * Q8_0; the attention rows of 576 fall back from Q4_K to Q5_0 and from Q6_K to Q8_0. */
        llama_table(&tb, 30, 576, 1536, 49152, 192, true);
        tb.shape.n_head = 9;
        tb.shape.n_head_kv = 3;
        choose(&tb, &p, types);
        assert_int_equal(type_of(&tb, types, "token_embd.weight"), GGML_TYPE_Q8_0);
        assert_int_equal(layer_type(&tb, types, 0, "attn_q"), GGML_TYPE_Q5_0);
        assert_int_equal(layer_type(&tb, types, 0, "attn_v"), GGML_TYPE_Q8_0);
        assert_int_equal(layer_type(&tb, types, 4, "attn_v"), GGML_TYPE_Q5_0);
        assert_int_equal(layer_type(&tb, types, 0, "ffn_down"), GGML_TYPE_Q6_K); /* 1536 = 6 x 256 */
        assert_int_equal(layer_type(&tb, types, 4, "ffn_down"), GGML_TYPE_Q4_K);
}

static void test_stories_fallbacks(void **state) {
        Table tb;
        uint32_t types[MAX_TENSORS];
        QuantParams p = params(QUANT_MIXTURE_Q4_0);

        /* stories260K: width 64, FFN 172, vocabulary 512, 5 layers, 4 kv heads of 8. */
        llama_table(&tb, 5, 64, 172, 512, 32, false);
        tb.shape = (QuantModelShape){.n_head = 8, .n_head_kv = 4, .n_layer = 5};
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 0, "ffn_down"), GGML_TYPE_F16); /* 172 % 32 != 0 */
        assert_int_equal(layer_type(&tb, types, 0, "ffn_up"), GGML_TYPE_Q4_0);
        assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_Q8_0); /* 64 % 256 != 0 */
        assert_int_equal(type_of(&tb, types, "token_embd.weight"), GGML_TYPE_Q4_0);

        p = params(QUANT_MIXTURE_Q4_K_M);
        choose(&tb, &p, types);
        /* With 5 layers use_more_bits picks layers 2 and 4. */
        assert_int_equal(layer_type(&tb, types, 2, "ffn_down"), GGML_TYPE_F16); /* Q6_K -> Q8_0 -> F16 */
        assert_int_equal(layer_type(&tb, types, 0, "ffn_down"), GGML_TYPE_F16); /* Q4_K -> Q5_0 -> F16 */
        assert_int_equal(layer_type(&tb, types, 2, "ffn_gate"), GGML_TYPE_Q5_0);
        assert_int_equal(layer_type(&tb, types, 0, "attn_v"), GGML_TYPE_Q5_0);
        assert_int_equal(layer_type(&tb, types, 2, "attn_v"), GGML_TYPE_Q8_0);
        assert_int_equal(layer_type(&tb, types, 3, "attn_v"), GGML_TYPE_Q5_0);
        assert_int_equal(layer_type(&tb, types, 4, "attn_v"), GGML_TYPE_Q8_0);

        p = params(QUANT_MIXTURE_Q2_K);
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 1, "attn_q"), GGML_TYPE_Q4_0);
        assert_int_equal(layer_type(&tb, types, 1, "attn_output"), GGML_TYPE_Q4_0);

        p = params(QUANT_MIXTURE_Q5_K_S);
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 1, "attn_q"), GGML_TYPE_Q5_1);

        /* --pure still falls back rather than writing a file nobody can read. */
        p = params(QUANT_MIXTURE_Q4_K_M);
        p.pure = true;
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 1, "attn_q"), GGML_TYPE_Q5_0);
        assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_Q5_0);
}

static void test_pure_leave_output_overrides(void **state) {
        Table tb;
        uint32_t types[MAX_TENSORS];
        QuantParams p = params(QUANT_MIXTURE_Q4_K_M);

        llama7b(&tb);
        p.pure = true;
        choose(&tb, &p, types);
        for (size_t i = 0; i < tb.n; i++)
                assert_int_equal(types[i], tb.t[i].n_dims == 1 ? GGML_TYPE_F32 : GGML_TYPE_Q4_K);

        p.pure = false;
        p.leave_output = true;
        choose(&tb, &p, types);
        assert_int_equal(type_of(&tb, types, "output.weight"), GGML_TYPE_F16);
        assert_int_equal(layer_type(&tb, types, 0, "attn_v"), GGML_TYPE_Q6_K);

        /* The last matching override wins; patterns match anywhere in the name. */
        const QuantOverride o[] = {
                {"attn_q", GGML_TYPE_Q8_0},
                {"^blk\\.(0|1)\\.ffn_up", GGML_TYPE_Q6_K},
                {"blk\\.1\\.ffn_up", GGML_TYPE_Q5_0},
                {"token_embd", GGML_TYPE_F16},
        };
        p.leave_output = false;
        p.overrides = o;
        p.n_overrides = ELEMENTSOF(o);
        choose(&tb, &p, types);
        assert_int_equal(layer_type(&tb, types, 17, "attn_q"), GGML_TYPE_Q8_0);
        assert_int_equal(layer_type(&tb, types, 0, "ffn_up"), GGML_TYPE_Q6_K);
        assert_int_equal(layer_type(&tb, types, 1, "ffn_up"), GGML_TYPE_Q5_0);
        assert_int_equal(layer_type(&tb, types, 2, "ffn_up"), GGML_TYPE_Q4_K);
        assert_int_equal(type_of(&tb, types, "token_embd.weight"), GGML_TYPE_F16);
        assert_int_equal(layer_type(&tb, types, 0, "attn_norm"), GGML_TYPE_F32); /* never quantized */
}

static void test_names(void **state) {
        assert_int_equal(quant_mixture_from_name("Q4_K_M"), QUANT_MIXTURE_Q4_K_M);
        assert_int_equal(quant_mixture_from_name("q4_k_m"), QUANT_MIXTURE_Q4_K_M);
        assert_int_equal(quant_mixture_from_name("Q4_K"), QUANT_MIXTURE_Q4_K_M);
        assert_int_equal(quant_mixture_from_name("bf16"), QUANT_MIXTURE_BF16);
        assert_int_equal(quant_mixture_from_name("Q3_K_L"), QUANT_MIXTURE_Q3_K_L);
        assert_int_equal(quant_mixture_from_name("Q4_K_X"), -EINVAL);
        assert_int_equal(quant_mixture_from_name(""), -EINVAL);
        assert_int_equal(quant_mixture_from_name(NULL), -EINVAL);
        assert_string_equal(quant_mixture_name(QUANT_MIXTURE_Q5_K_S), "Q5_K_S");
        assert_null(quant_mixture_name((QuantMixture)4)); /* a retired llama ftype */
        assert_null(quant_mixture_name(_QUANT_MIXTURE_INVALID));
        assert_int_equal(quant_mixture_default_type(QUANT_MIXTURE_Q3_K_M), GGML_TYPE_Q3_K);
        assert_int_equal(quant_mixture_default_type((QuantMixture)99), -EINVAL);

        /* Every named mixture round-trips through its name. */
        for (int m = 0; m < _QUANT_MIXTURE_MAX; m++) {
                const char *name = quant_mixture_name((QuantMixture)m);
                if (name)
                        assert_int_equal(quant_mixture_from_name(name), m);
        }
}

static void test_errors(void **state) {
        Table tb;
        uint32_t types[MAX_TENSORS];
        QuantParams p = params(QUANT_MIXTURE_Q4_0);
        QdError err = {};

        llama_table(&tb, 2, 64, 172, 512, 32, false);

        const QuantOverride bad_re[] = {{"blk\\.(0", GGML_TYPE_Q8_0}};
        p.overrides = bad_re;
        p.n_overrides = 1;
        assert_int_equal(quant_choose_types(&p, &tb.shape, tb.t, tb.n, types, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "not a valid regular expression"));

        const QuantOverride too_wide[] = {{"attn_q", GGML_TYPE_Q4_K}};
        qd_error_clear(&err);
        p.overrides = too_wide;
        assert_int_equal(quant_choose_types(&p, &tb.shape, tb.t, tb.n, types, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "blk.0.attn_q.weight"));

        const QuantOverride unsupported[] = {{"attn_q", GGML_TYPE_IQ2_XXS}};
        qd_error_clear(&err);
        p.overrides = unsupported;
        assert_int_equal(quant_choose_types(&p, &tb.shape, tb.t, tb.n, types, &err), -EOPNOTSUPP);
        if (!strstr(err.msg, "iq2_xxs"))
                fail_msg("message: %s", err.msg);

        const QuantOverride no_pattern[] = {{NULL, GGML_TYPE_Q8_0}};
        qd_error_clear(&err);
        p.overrides = no_pattern;
        assert_int_equal(quant_choose_types(&p, &tb.shape, tb.t, tb.n, types, &err), -EINVAL);

        qd_error_clear(&err);
        p.overrides = NULL;
        assert_int_equal(quant_choose_types(&p, &tb.shape, tb.t, tb.n, types, &err), -EINVAL);

        p.n_overrides = 0;
        p.mixture = (QuantMixture)5;
        assert_int_equal(quant_choose_types(&p, &tb.shape, tb.t, tb.n, types, NULL), -EINVAL);
        p.mixture = QUANT_MIXTURE_Q8_0;
        assert_int_equal(quant_choose_types(NULL, &tb.shape, tb.t, tb.n, types, NULL), -EINVAL);
        assert_int_equal(quant_choose_types(&p, NULL, tb.t, tb.n, types, NULL), -EINVAL);
        assert_int_equal(quant_choose_types(&p, &tb.shape, NULL, tb.n, types, NULL), -EINVAL);
        assert_int_equal(quant_choose_types(&p, &tb.shape, tb.t, 0, NULL, NULL), 0);
}

static void test_shape_from_gguf(void **state) {
        const char *dir = getenv("QUANTD_TEST_MODELS");
        _cleanup_free_ char *path = strdup_printf("%s/stories260K.gguf", dir ? dir : "../shared/models");
        _cleanup_(gguf_freep) Gguf *g = NULL;
        QuantModelShape s;

        assert_int_equal(gguf_open(path, &g, NULL), 0);
        assert_int_equal(quant_model_shape_from_gguf(g, &s), 0);
        assert_int_equal(s.n_head, 8);
        assert_int_equal(s.n_head_kv, 4);
        assert_int_equal(s.n_layer, 5);
        assert_int_equal(s.n_expert, 0);
        assert_false(s.is_70b);
        assert_false(s.is_falcon);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_llama7b_q4_k_m),
                cmocka_unit_test(test_llama7b_other_mixtures),
                cmocka_unit_test(test_70b_and_moe),
                cmocka_unit_test(test_tied_embeddings),
                cmocka_unit_test(test_stories_fallbacks),
                cmocka_unit_test(test_pure_leave_output_overrides),
                cmocka_unit_test(test_names),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_shape_from_gguf),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
