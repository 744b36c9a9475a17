/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Internal to engine/: the ops table every compute backend (cpu, cuda) implements.
 *
 * DESIGN
 * The granularity is coarse on purpose: one call runs a whole range of layers over a whole batch, so that a
 * GPU backend can keep the hidden state on the device from the embedding to the logits and capture a decode
 * step in one CUDA graph. A model is split into at most a few *segments*, each a backend owning a contiguous
 * layer range [l0, l1): the segment with l0 == 0 also does the token embedding, the one with l1 == n_layer
 * also the output norm and head. Partial offload is "the first N layers on cuda, the rest on cpu"; between
 * segments the hidden state travels through host memory (n_tokens × n_embd floats).
 *
 * Each segment keeps its own KV cache per sequence (its layers only), created by kv_new(). Positions are
 * tracked by the engine, not the backend: a batch says where each sequence's new tokens start, and a backend
 * simply overwrites cache entries from there, which is what makes engine_seq_truncate() free.
 *
 * Threads: one thread at a time calls into a backend state (the model's executor thread). A backend may use
 * its own worker threads inside a call.
 */

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "engine.h"
#include "model.h"

/* One sequence's slice of a batch: rows [row0, row0 + n) of the batch are its tokens at positions
 * [pos0, pos0 + n). Each row attends to positions 0 … its own, of its own sequence only. */
typedef struct BackendSpan {
        void *kv;      /* this backend's KV cache of the sequence, from kv_new() */
        uint32_t row0; /* first row of the batch */
        uint32_t n;    /* rows (tokens) */
        uint32_t pos0; /* position of the first row in the sequence; the cache holds positions < pos0 */
} BackendSpan;

typedef enum BackendOutput {
        BACKEND_OUTPUT_LOGITS, /* out: (n_out, n_vocab) logits */
        BACKEND_OUTPUT_HIDDEN, /* out: (n_out, n_embd) hidden states after the output norm (embeddings) */
        _BACKEND_OUTPUT_MAX,
        _BACKEND_OUTPUT_INVALID = -EINVAL,
} BackendOutput;

typedef struct BackendBatch {
        uint32_t n_tokens;     /* rows, at most the n_batch given to init() */
        const int32_t *tokens; /* (n_tokens) ids, read by the segment with the embedding */
        uint32_t n_spans;
        const BackendSpan *spans; /* (n_spans), in row order, covering all rows */
        uint32_t n_out;           /* rows whose output the head computes (head segment only) */
        const uint32_t *out_rows; /* (n_out) row indices, increasing */
        BackendOutput output;
} BackendBatch;

/* What one backend instance is asked to run. */
typedef struct BackendRange {
        uint32_t l0, l1;  /* layers [l0, l1) */
        uint32_t n_batch; /* most rows a batch passed to forward() will have */
        uint32_t kv_type; /* GGML_TYPE_F16 or GGML_TYPE_F32 (a backend may offer others, e.g. Q8_0) */
        uint32_t n_threads; /* CPU worker threads, 0 for the CPU count */
} BackendRange;

typedef struct BackendOps {
        const char *name; /* "cpu", "cuda" */

        /*
         * Prepares layers range->[l0, l1) of m (and the embedding if l0 == 0, the output head if l1 == n_layer):
         * uploads or repacks weights, allocates scratch for range->n_batch rows. The model outlives the state.
         * Errors: -ENOSPC when device memory runs out, -EOPNOTSUPP for a tensor type or feature the backend
         * lacks (with a sentence in err naming it), -ENOMEM.
         */
        int (*init)(const EngineModel *m, const BackendRange *range, void **ret, QdError *err);
        void (*free)(void *state);

        /* A KV cache of n_ctx positions for range's layers, and its release. -ENOSPC/-ENOMEM when it does not
         * fit. */
        int (*kv_new)(void *state, uint32_t n_ctx, void **ret);
        void (*kv_free)(void *state, void *kv);

        /*
         * Runs the range's layers over batch. x is host memory, (n_tokens, n_embd) floats: the input hidden
         * states unless this segment does the embedding (then it is ignored on input), and on return the output
         * hidden states unless this segment has the head. The head segment writes batch->n_out rows of
         * batch->output to out. Writes the KV cache of every span at positions [pos0, pos0 + n).
         * Returns 0, -ECANCELED when *cancel became true (checked between layers), or a backend error.
         */
        int (*forward)(void *state, const BackendBatch *batch, float *x, float *out, const bool *cancel);

        /* Optional (NULL when absent): bytes of backend memory that range would take with n_ctx positions
         * for each of n_seq sequences, for placement decisions before init(). */
        uint64_t (*estimate)(const EngineModel *m, const BackendRange *range, uint32_t n_ctx, uint32_t n_seq);

        /* Optional: whether init() could take range of m as far as the model goes (architecture, features,
         * tensor types), without touching a device: 0, or -EOPNOTSUPP with a sentence in err. */
        int (*check)(const EngineModel *m, const BackendRange *range, QdError *err);

        /* Optional, for backends with memory of their own (a GPU): bytes of it that the state holds now,
         * weights and scratch, KV caches excluded. */
        uint64_t (*device_bytes)(void *state);
} BackendOps;

extern const BackendOps backend_cpu_ops;
#if HAVE_CUDA
extern const BackendOps backend_cuda_ops;
#endif
