/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Internal to engine/: a loaded model, split as llama2.c splits it by lifetime: the configuration (from the
 * GGUF metadata), the read-only weights (views into the mapped file, never copied) and, in the backends, the
 * mutable run state.
 *
 * A model is immutable after engine_model_load() except for its reference count, so backends and any number of
 * threads may read it.
 */

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine.h"

typedef enum ModelArch {
        MODEL_ARCH_LLAMA,
        MODEL_ARCH_QWEN2,
        _MODEL_ARCH_MAX,
        _MODEL_ARCH_INVALID = -EINVAL,
} ModelArch;

typedef enum RopeType {
        ROPE_NORM, /* rotate adjacent pairs (x[2i], x[2i+1]): GGUF's llama layout */
        ROPE_NEOX, /* rotate (x[i], x[i + n_rot/2]): qwen2 and other NeoX-style models */
        _ROPE_TYPE_MAX,
        _ROPE_TYPE_INVALID = -EINVAL,
} RopeType;

typedef struct ModelConfig {
        ModelArch arch;
        uint32_t n_vocab;
        uint32_t n_ctx_train;
        uint32_t n_embd;
        uint32_t n_layer;
        uint32_t n_head;
        uint32_t n_head_kv;
        uint32_t head_dim; /* n_embd / n_head unless the file says otherwise */
        uint32_t n_ff;
        uint32_t n_rot;    /* dimensions of each head that RoPE rotates, <= head_dim */
        RopeType rope_type;
        float rope_base;       /* theta */
        float rope_freq_scale; /* positions are multiplied by this (1 / linear scaling factor) */
        float norm_eps;
} ModelConfig;

/* A weight tensor, in place in the mapped file. Vectors have ne1 == 1. */
typedef struct Tensor {
        const char *name; /* borrowed from the Gguf */
        uint32_t type;    /* GgmlType */
        uint64_t ne0;     /* row length (elements) */
        uint64_t ne1;     /* rows */
        uint64_t row_size; /* bytes per row */
        const void *data; /* NULL for an optional tensor that is absent */
} Tensor;

typedef struct LayerWeights {
        Tensor attn_norm;  /* (n_embd) */
        Tensor wq;         /* (n_head * head_dim rows, n_embd) */
        Tensor wk, wv;     /* (n_head_kv * head_dim rows, n_embd) */
        Tensor bq, bk, bv; /* biases (qwen2), optional */
        Tensor wo;         /* (n_embd rows, n_head * head_dim) */
        Tensor ffn_norm;   /* (n_embd) */
        Tensor w_gate, w_up; /* (n_ff rows, n_embd) */
        Tensor w_down;       /* (n_embd rows, n_ff) */
} LayerWeights;

typedef struct ModelWeights {
        Tensor token_embd;  /* (n_vocab rows, n_embd) */
        Tensor output_norm; /* (n_embd) */
        Tensor output;      /* (n_vocab rows, n_embd); token_embd when the model ties them */
        Tensor rope_freqs;  /* (n_rot / 2) frequency divisors (Llama 3.1 scaling), optional */
        LayerWeights *layers; /* (n_layer) */
} ModelWeights;

typedef struct BackendOps BackendOps;

/* A contiguous layer range that one backend runs. */
typedef struct ModelSegment {
        const BackendOps *ops;
        void *state;
        uint32_t l0, l1;
} ModelSegment;

#define MODEL_MAX_SEGMENTS 2

struct EngineModel {
        atomic_uint n_ref;
        Gguf *gguf;
        ModelConfig cfg;
        ModelWeights w;
        EngineModelInfo info;
        EngineModelParams params;
        char *arch_name; /* info.arch points here */
        EngineVocab *vocab; /* from the tokenizer.ggml.* keys; NULL when the file has none */
        uint32_t n_batch; /* most rows one backend call takes */
        ModelSegment segments[MODEL_MAX_SEGMENTS];
        size_t n_segments;
};

/* "llama", "qwen2"; "unknown" for anything else. */
const char *model_arch_name(ModelArch a);

/* Reads the configuration and binds the weight tensors of g (which must stay alive). Unknown architectures,
 * missing tensors and wrong shapes give -EBADMSG or -EOPNOTSUPP with a sentence naming the culprit. */
int model_config_load(const Gguf *g, ModelConfig *ret_cfg, ModelWeights *ret_w, QdError *err);
