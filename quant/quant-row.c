/* SPDX-License-Identifier: MIT */
/* quant_row(): the table from tensor type to row quantizer, and argument checks. */

#include "quant-internal.h"

static void quant_row_f32(const float *x, void *y, size_t n) {
        memcpy(y, x, n * sizeof(float));
}

typedef struct QuantRowOps {
        QuantRowFunc ref;
        QuantRowFunc fast; /* optional: same bytes as ref, faster; NULL when ref is the only one */
} QuantRowOps;

static const QuantRowOps row_ops[_GGML_TYPE_MAX] = {
        [GGML_TYPE_F32] = {quant_row_f32, NULL},
        [GGML_TYPE_F16] = {quant_row_f16_ref, NULL},
        [GGML_TYPE_BF16] = {quant_row_bf16_ref, NULL},
        [GGML_TYPE_Q8_0] = {quant_row_q8_0_ref, NULL},
        [GGML_TYPE_Q4_0] = {quant_row_q4_0_ref, NULL},
        [GGML_TYPE_Q4_1] = {quant_row_q4_1_ref, NULL},
        [GGML_TYPE_Q5_0] = {quant_row_q5_0_ref, NULL},
        [GGML_TYPE_Q5_1] = {quant_row_q5_1_ref, NULL},
        [GGML_TYPE_Q2_K] = {quant_row_q2_k_ref, quant_row_q2_k_fast},
        [GGML_TYPE_Q3_K] = {quant_row_q3_k_ref, NULL},
        [GGML_TYPE_Q4_K] = {quant_row_q4_k_ref, quant_row_q4_k_fast},
        [GGML_TYPE_Q5_K] = {quant_row_q5_k_ref, quant_row_q5_k_fast},
        [GGML_TYPE_Q6_K] = {quant_row_q6_k_ref, quant_row_q6_k_fast},
        [GGML_TYPE_IQ4_NL] = {quant_row_iq4_nl_ref, quant_row_iq4_nl_fast},
};

bool quant_type_supported(uint32_t type) {
        return type < ELEMENTSOF(row_ops) && row_ops[type].ref;
}

static int check(uint32_t type, const float *x, void *y, size_t n) {
        if (!quant_type_supported(type))
                return -EOPNOTSUPP;
        if (!x || !y || n % ggml_type_info(type)->block_size != 0)
                return -EINVAL;
        return 0;
}

int quant_row(uint32_t type, const float *x, void *y, size_t n) {
        int r = check(type, x, y, n);
        if (r < 0)
                return r;
        (row_ops[type].fast ? row_ops[type].fast : row_ops[type].ref)(x, y, n);
        return 0;
}

int quant_row_ref(uint32_t type, const float *x, void *y, size_t n) {
        int r = check(type, x, y, n);
        if (r < 0)
                return r;
        row_ops[type].ref(x, y, n);
        return 0;
}
