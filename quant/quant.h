/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * quant: turns float weights into GGUF's quantized types, picks a type per tensor the way llama-quantize's
 * mixtures do (Q4_K_M, …), rewrites whole GGUF files, and converts Hugging Face model folders (safetensors,
 * config.json, tokenizer.model or tokenizer.json) to GGUF.
 *
 * Thread safety: the row functions and the type choice are pure and may be called from any thread at once.
 * quant_file() runs on the calling thread plus the worker threads it starts and joins itself (with every
 * signal blocked); its progress callback is called on the calling thread. quant_eval() runs the models on the
 * calling thread, which must be the only one using them meanwhile. A Safetensors object may be read from any
 * thread once opened; quant_convert_hf() runs on the calling thread.
 */

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "engine.h"

/* ---- rows ---- */

/*
 * Quantizes n floats from x into y in type's GGUF block layout (n a multiple of the type's block size; y
 * holds ggml_row_size(type, n) bytes). Types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K,
 * Q4_K, Q5_K, Q6_K, IQ4_NL. The output is the same as quant_row_ref()'s, only faster where a faster version
 * exists. Returns 0, -EOPNOTSUPP for a type without a quantizer, -EINVAL for a bad n or NULL pointers.
 */
int quant_row(uint32_t type, const float *x, void *y, size_t n);

/* The scalar reference quantizer of type, with quant_row()'s arguments and errors. */
int quant_row_ref(uint32_t type, const float *x, void *y, size_t n);

/* Whether quant_row() can produce type. */
bool quant_type_supported(uint32_t type);

/* ---- mixtures ---- */

/* llama-quantize's file types ("ftypes"): the value each stores as general.file_type. */
typedef enum QuantMixture {
        QUANT_MIXTURE_F32 = 0,
        QUANT_MIXTURE_F16 = 1,
        QUANT_MIXTURE_Q4_0 = 2,
        QUANT_MIXTURE_Q4_1 = 3,
        QUANT_MIXTURE_Q8_0 = 7,
        QUANT_MIXTURE_Q5_0 = 8,
        QUANT_MIXTURE_Q5_1 = 9,
        QUANT_MIXTURE_Q2_K = 10,
        QUANT_MIXTURE_Q3_K_S = 11,
        QUANT_MIXTURE_Q3_K_M = 12,
        QUANT_MIXTURE_Q3_K_L = 13,
        QUANT_MIXTURE_Q4_K_S = 14,
        QUANT_MIXTURE_Q4_K_M = 15,
        QUANT_MIXTURE_Q5_K_S = 16,
        QUANT_MIXTURE_Q5_K_M = 17,
        QUANT_MIXTURE_Q6_K = 18,
        QUANT_MIXTURE_IQ4_NL = 25,
        QUANT_MIXTURE_BF16 = 32,
        _QUANT_MIXTURE_MAX,
        _QUANT_MIXTURE_INVALID = -EINVAL,
} QuantMixture;

/* Looks a mixture up by llama-quantize's name ("Q4_K_M", case-insensitive). Returns it or -EINVAL. */
QuantMixture quant_mixture_from_name(const char *name);

/* The mixture's name ("Q4_K_M"), or NULL for a value that is not one. */
const char *quant_mixture_name(QuantMixture m);

/* The tensor type that most tensors of the mixture get, or -EINVAL. */
int quant_mixture_default_type(QuantMixture m);

/* A per-tensor override: tensors whose name the (PCRE2) pattern matches anywhere get type. */
typedef struct QuantOverride {
        const char *pattern;
        uint32_t type;
} QuantOverride;

typedef struct QuantParams {
        QuantMixture mixture;
        bool pure;                      /* every quantizable tensor gets the default type: no promotions */
        bool leave_output;              /* copy output.weight as it is */
        bool allow_requantize;          /* convert tensors that are already quantized (dequantized first) */
        const QuantOverride *overrides; /* (n_overrides); the last matching one wins */
        size_t n_overrides;
        unsigned n_threads;        /* 0: one per CPU */
        const atomic_bool *cancel; /* when it becomes true, quant_file() stops with -ECANCELED */
        /* Called after each tensor is written (i counts from 0), on the calling thread; may be NULL. */
        void (*progress)(void *userdata, size_t i, size_t n, const char *name, uint32_t type);
        void *userdata;
} QuantParams;

/* Q8_0 with llama-quantize's rules, one thread per CPU, nothing overridden, no requantizing. */
QuantParams quant_params_default(void);

/* What the type choice needs to know about the model besides its tensor table. */
typedef struct QuantModelShape {
        uint32_t n_head;    /* attention heads (0 when unknown) */
        uint32_t n_head_kv; /* key/value heads; n_head / n_head_kv is the grouped-query factor */
        uint32_t n_expert;  /* 0 or 1 for dense models */
        uint32_t n_layer;
        bool is_70b;    /* llama with 80 layers and grouped-query attention: attn_v gets more bits */
        bool is_falcon; /* falcon has its own output and ffn_down rules */
} QuantModelShape;

/* Reads the shape from a GGUF's general.architecture and <arch>.* keys; absent keys read as 0. */
int quant_model_shape_from_gguf(const Gguf *g, QuantModelShape *ret);

/*
 * Chooses the type of each of n tensors (in file order, as llama-quantize counts layers) for params'
 * mixture: which tensors are quantized at all (2-D weights other than norms), the promotions of output,
 * embeddings, attn_v, ffn_down, attn_output by layer, the fallbacks for rows that the chosen type's blocks
 * do not divide (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → Q4_0, and F16 when those do not divide
 * it either), then --pure, --leave-output-tensor and the overrides. Tensors that stay as they are get their
 * own type. ret_types has n entries. Errors: -EINVAL with a message for a bad pattern or an override type
 * that the tensor's rows cannot hold, -EOPNOTSUPP for an override type we cannot write; -ENOMEM.
 */
int quant_choose_types(const QuantParams *params, const QuantModelShape *shape, const GgufTensor *tensors,
                       size_t n, uint32_t *ret_types, QdError *err);

/* ---- files ---- */

/*
 * Writes src quantized by params to fd (from its current position, streaming through a GgufWriter): metadata
 * copied, general.file_type and general.quantization_version set, each tensor converted by params->n_threads
 * threads while memory holds about one tensor. Source tensors may be F32, F16 or BF16; quantized ones too
 * with allow_requantize (through the engine's dequantizer); any type when they are only copied. On failure
 * fd holds a partial file: write to a temporary file and rename it on success. Errors: -ECANCELED,
 * -EOPNOTSUPP (a source type it cannot convert), -EINVAL (bad parameters), write errors, -ENOMEM; with a
 * message in err.
 */
int quant_file(const Gguf *src, int fd, const QuantParams *params, QdError *err);

/* ---- Hugging Face safetensors ---- */

#define SAFETENSORS_MAX_DIMS 8u
#define SAFETENSORS_INDEX "model.safetensors.index.json"

/* One tensor of a safetensors file, borrowed from its Safetensors. */
typedef struct SafetensorsTensor {
        char *name;
        uint32_t type;                       /* GGML_TYPE_F32, GGML_TYPE_F16 or GGML_TYPE_BF16 */
        uint32_t n_dims;                     /* 0..SAFETENSORS_MAX_DIMS */
        uint64_t shape[SAFETENSORS_MAX_DIMS]; /* as the file lists it: outermost first, shape[n_dims-1] a row */
        uint64_t n_elements;
        size_t size;      /* bytes */
        const void *data; /* in the read-only map, little-endian */
} SafetensorsTensor;

/* The tensors of one safetensors file or of a sharded model, each file mapped read-only. */
typedef struct Safetensors Safetensors;

/*
 * Maps the safetensors file fd (label names it in messages; NULL for a generic name) and validates its header:
 * the header length within the file, a JSON object whose entries (besides "__metadata__") each have a dtype
 * of F32, F16 or BF16, a shape and data_offsets [begin, end] with begin <= end inside the data, end - begin
 * equal to the shape's elements times the dtype's size, and no two tensors sharing bytes. fd may be closed
 * afterwards. Errors: -EBADMSG with a message naming the tensor, -ENOMEM, the system's errors.
 */
int safetensors_open_fd(int fd, const char *label, Safetensors **ret, QdError *err);

/*
 * Opens the model in the folder dirfd: the shards that model.safetensors.index.json's weight_map names
 * (plain file names in the folder; every listed tensor must be in its shard and every shard's tensor listed),
 * otherwise model.safetensors. safetensors_open_fd()'s errors, plus -ENOENT when neither file exists.
 */
int safetensors_open_dir(int dirfd, Safetensors **ret, QdError *err);

Safetensors *safetensors_free(Safetensors *s);

/* The tensors, sorted by name. */
size_t safetensors_n_tensors(const Safetensors *s);
const SafetensorsTensor *safetensors_tensor(const Safetensors *s, size_t i);

/* The tensor called name, or NULL. */
const SafetensorsTensor *safetensors_find(const Safetensors *s, const char *name);

DEFINE_TRIVIAL_CLEANUP_FUNC(Safetensors *, safetensors_free);

/* ---- Hugging Face conversion ---- */

typedef struct QuantConvertParams {
        int32_t out_type; /* GGML_TYPE_F32/F16/BF16 for matrices; -1 keeps each tensor's source type */
        const char *pre;  /* tokenizer.ggml.pre to write; NULL: guessed from tokenizer.json, else "default" */
} QuantConvertParams;

/* Every tensor keeps its type; the pre-tokenizer is guessed. */
QuantConvertParams quant_convert_params_default(void);

/*
 * Converts the Hugging Face model in the folder dirfd (config.json with model_type llama or qwen2, its
 * safetensors, a SentencePiece tokenizer.model and/or tokenizer.json with a BPE or Unigram model, optionally
 * tokenizer_config.json, added_tokens.json and chat_template.jinja) into a GGUF file written to fd from its
 * current position: hyperparameters, tensors renamed to GGUF's names (llama's q/k rows reordered for GGUF's
 * pairwise RoPE), 1-D tensors as F32, the vocabulary (GGUF's "llama" tokenizer with scores for SentencePiece
 * ones, "gpt2" with merges for byte-level BPE), token types, special ids, add_bos/add_eos and the chat
 * template. On failure fd holds a partial file. Errors, with a message:
 * -EBADMSG (a malformed or inconsistent file), -EOPNOTSUPP (an architecture, tokenizer or tensor we cannot
 * convert), -EINVAL (bad parameters), -ENOENT (a file missing), write errors, -ENOMEM.
 */
int quant_convert_hf(int dirfd, int fd, const QuantConvertParams *params, QdError *err);

/* ---- evaluation ---- */

typedef struct QuantEvalParams {
        uint32_t n_ctx;      /* tokens per chunk, as llama-perplexity's -c; 0: 512 */
        uint32_t max_chunks; /* 0: every whole chunk the text holds */
        const atomic_bool *cancel;
        /* Called after each chunk on the calling thread; may be NULL. */
        void (*progress)(void *userdata, size_t chunk, size_t n_chunks);
        void *userdata;
} QuantEvalParams;

typedef struct QuantEvalResult {
        uint32_t n_chunks;
        uint64_t n_scored; /* tokens whose probability was scored */
        double ppl;        /* perplexity of the model */
        double ppl_base;   /* of the base model; 0 without one */
        double kld_mean;   /* mean KL divergence KL(base || model) per scored token, in nats */
        double kld_p99;    /* its 99th percentile (nearest rank) */
        double top1;       /* share of scored positions where both models' most likely token agree */
        uint64_t file_size;
        double bpw; /* bits per weight: tensor bytes * 8 / elements */
} QuantEvalResult;

/*
 * Perplexity of m on text by llama-perplexity's method: the text is tokenized (with BOS when the vocabulary
 * adds one), cut into chunks of n_ctx tokens whose first token is replaced by BOS, each chunk evaluated from
 * an empty cache, and only the second half of each chunk scored (every token there has at least n_ctx/2
 * tokens of context). With a base model (same vocabulary) also the KL divergence from the base's
 * distribution, its 99th percentile and the top-1 agreement, on the same positions. The models must not be
 * used by another thread meanwhile. Errors: -EINVAL (a text shorter than one chunk, different vocabularies,
 * bad n_ctx), -ECANCELED, the engine's errors; with a message in err.
 */
int quant_eval(EngineModel *m, EngineModel *base, const char *text, size_t len, const QuantEvalParams *p,
               QuantEvalResult *ret, QdError *err);
