/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Internal to engine/ (and its gpu tests and benchmark): the C face of the CUDA backend, compiled only when
 * meson's cuda option is on.
 *
 * Two levels:
 *  - kernels: each enqueues work on a stream over device pointers and returns at once; the gpu tests check
 *    each one against a scalar reference on the host, and the forward pass is built from them;
 *  - CudaLlama: a llama-architecture model with its weights resident on one device, a KV cache per sequence,
 *    the decode step captured in a CUDA graph, and prompt batches through cuBLAS.
 *
 * Weight matrices keep GGUF's block layouts byte for byte; only the start of each row is aligned to
 * CUDA_ROW_ALIGN bytes (rows of most shapes already are), so that kernels stream rows with 16-byte loads.
 *
 * Threads: one thread at a time per CudaCtx / CudaLlama (the device's executor thread).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct CUstream_st;
typedef struct CUstream_st *CudaStream; /* cudaStream_t; NULL is the legacy default stream */

/* Number of usable CUDA devices; 0 when there is no driver or device. engine_cuda_device_count() is the same,
 * defined in cuda-backend.c so that whatever asks for devices also links the backend's ops table. */
int cuda_device_count(void);
int engine_cuda_device_count(void);

/* Free and total device memory in bytes, from cudaMemGetInfo(). */
int engine_cuda_mem_info(int device, uint64_t *ret_free, uint64_t *ret_total);

/* The device's name, its driver version (e.g. 13000) and its copy bandwidth: bytes read plus bytes written
 * per second by device-to-device copies of size bytes (median of reps), the ceiling a decode step is held to. */
int cuda_device_describe(int device, char *name, size_t name_size, int *ret_driver);
int cuda_copy_bandwidth(int device, size_t size, unsigned reps, double *ret_bytes_per_s);

/* ---- timeline of the decode kernels (builds with -DQUANTD_CUDA_TRACE only; see cuda-common.cuh) ---- */

typedef enum CudaTraceKind {
        CUDA_TRACE_OTHER,
        CUDA_TRACE_NORM,
        CUDA_TRACE_GET_ROWS,
        CUDA_TRACE_ATTN,
        CUDA_TRACE_QUANTIZE,
        CUDA_TRACE_MATVEC,
        CUDA_TRACE_MATVEC_TWO,
        CUDA_TRACE_ARGMAX,
        CUDA_TRACE_START = 0x100,  /* or-ed into the kind: a block starts, waited, ends */
        CUDA_TRACE_WAITED = 0x200,
        CUDA_TRACE_END = 0x400,
} CudaTraceKind;

typedef struct CudaTraceRec {
        unsigned long long grid;  /* %gridid: one launch */
        unsigned long long t;     /* %globaltimer, ns */
        uint32_t block;
        uint32_t tag;             /* CudaTraceKind | START/WAITED/END; WAITED records carry no kind */
} CudaTraceRec;

/* Takes the records logged since the last call (at most max, in no particular order) and empties the logs;
 * -EOPNOTSUPP in builds without the timeline. */
int cuda_trace_take(CudaTraceRec *out, size_t max, size_t *ret_n);

/* ---- memory ---- */

int cuda_malloc(size_t size, void **ret);   /* -ENOSPC when the device is full */
void cuda_free(void *p);                     /* NULL-safe */
int cuda_upload(void *dst, const void *src, size_t size);
int cuda_download(void *dst, const void *src, size_t size);
int cuda_sync(CudaStream s);                 /* waits for s; -EIO when a kernel failed */

/* Bytes between rows of n_cols elements of type on the device (the row size rounded up to 16). -EINVAL
 * when the type has no kernels or n_cols is not a whole number of blocks. */
int cuda_row_stride(uint32_t type, uint32_t n_cols, size_t *ret);

/* Whether the matrix-vector and dequantization kernels exist for type. */
bool cuda_type_supported(uint32_t type);

/* ---- kernels ---- */

/* A weight matrix on the device: n_rows rows of n_cols elements, row r at data + r * row_stride. */
typedef struct CudaMatrix {
        uint32_t type;
        uint32_t n_cols, n_rows;
        size_t row_stride;
        const void *data;
} CudaMatrix;

/*
 * How the 8-bit values of an activation row are ordered. PLAIN: element by element. K4 and K6: in chunks of
 * 2048 elements, the order in which one warp of the single-sequence products reads them for Q4_K/Q5_K (K4) or
 * Q2_K/Q3_K/Q6_K (K6) weights, so that each of its 16-byte loads takes 512 contiguous bytes instead of
 * sixteen pieces 64 bytes apart. cuda_q8_pos() says where element e goes. K layouts are for one row a
 * multiple of 256 long, in a buffer of cuda_q8_bytes() (a last chunk shorter than 2048 keeps its gaps).
 */
typedef enum CudaQ8Layout {
        CUDA_Q8_PLAIN,
        CUDA_Q8_K4,
        CUDA_Q8_K6,
        _CUDA_Q8_LAYOUT_MAX,
} CudaQ8Layout;

/* Activations quantized to 8 bits per 32 elements: qs (n int8, in layout), ds (n / 32 pairs: scale,
 * scale * sum, always in element order); optionally the same values in a second layout in qs2 (for products
 * of two type families reading one input). Zero-initialized: one plain row. */
typedef struct CudaQ8 {
        int8_t *qs;
        float *ds;
        int8_t *qs2;
        uint8_t layout, layout2; /* CudaQ8Layout */
} CudaQ8;

/* Where element e of a row goes in layout l (e itself for CUDA_Q8_PLAIN), and the bytes a row of n takes. */
uint32_t cuda_q8_pos(uint32_t e, CudaQ8Layout l);
size_t cuda_q8_bytes(uint32_t n, CudaQ8Layout l);

/* The layout in which the single-sequence products of weight type t read their 8-bit input fastest. */
CudaQ8Layout cuda_q8_layout_for(uint32_t type);

typedef enum CudaMvEpilogue {
        CUDA_MV_STORE,  /* y[r] = w[r] . x */
        CUDA_MV_ADD,    /* y[r] += w[r] . x (a residual) */
        CUDA_MV_SWIGLU, /* two matrices (gate, up): y[r] = silu(gate[r] . x) * (up[r] . x) */
        _CUDA_MV_EPILOGUE_MAX,
} CudaMvEpilogue;

/* The input vector of a matrix-vector product: quantized weights read it quantized to 8 bits (xq, from
 * cuda_quantize_q8() or cuda_rmsnorm()), F32/F16/BF16 weights as floats (x). */
typedef struct CudaMvInput {
        const float *x;
        const CudaQ8 *xq;
} CudaMvInput;

/*
 * Matrix-vector products for one token: n_w (1..3) matrices of one n_cols, each into its own y[i], in one
 * launch when they have one type; of several types (not SWIGLU) in one launch for Q4_K or Q5_K with Q6_K
 * (each type's input in its layout), else one launch per type. For SWIGLU n_w is 2 and y[0] gets the
 * result. The 8-bit input must be in the layout of cuda_q8_layout_for(type) (in qs or qs2) or plain:
 * -EINVAL otherwise.
 */
int cuda_matvec(CudaStream s, const CudaMatrix *w, unsigned n_w, const CudaMvInput *in, float *const *y,
                CudaMvEpilogue epi);

/*
 * The same for n_seq input vectors at once (one decode step of n_seq sequences), each weight read once for all
 * of them (per 64 sequences through the tensor cores, else per 16): input j is row j of in->x / in->xq (n_cols
 * apart; ds n_cols / 32 pairs apart; plain layout), its outputs go to y[i] + j * ldy. n_seq 1 is cuda_matvec(). Q4_K, Q6_K, Q4_0 and Q8_0
 * matrices whose rows come in tiles of 16 and n_cols in steps of 256 go through int8 tensor cores from 3
 * sequences (Q4_0 4, Q8_0 6; QUANTD_CUDA_MMA_MIN overrides, 0: never), in another order of summation than
 * the dp4a kernels: results agree to float rounding, not to the bit.
 */
int cuda_matvec_batch(CudaStream s, const CudaMatrix *w, unsigned n_w, const CudaMvInput *in, float *const *y,
                      CudaMvEpilogue epi, uint32_t n_seq, uint32_t ldy);

/* y = W x with x in floats and each weight dequantized on the fly: the reference-mode product, any type. */
int cuda_matvec_f32(CudaStream s, const CudaMatrix *w, const float *x, float *y);

/* Quantizes n_rows rows of n floats (n a multiple of 32, rows contiguous, x 16-byte aligned) to 8 bits per
 * 32, in ret's layout(s) (K4 and K6: one row, n a multiple of 256). */
int cuda_quantize_q8(CudaStream s, const float *x, uint32_t n, uint32_t n_rows, const CudaQ8 *ret);

/* y = x / rms(x) * w per row of n, rows contiguous; writes whichever of y (float), y16 (half) and yq
 * (8-bit, n a multiple of 32, in yq's layouts as for cuda_quantize_q8()) is non-NULL. */
int cuda_rmsnorm(CudaStream s, const float *x, const float *w, uint32_t n, uint32_t n_rows, float eps, float *y,
                 uint16_t *y16, const CudaQ8 *yq);

/* Rows rows[0 .. n_rows - 1] (device memory) of matrix w, dequantized to floats (n_rows x n_cols). */
int cuda_get_rows(CudaStream s, const CudaMatrix *w, const int32_t *rows, uint32_t n_rows, float *y);

/* The whole matrix dequantized to half floats, row-major, n_cols per row. */
int cuda_dequant_f16(CudaStream s, const CudaMatrix *w, uint16_t *y);

/* Conversions for the prompt path. */
int cuda_f32_to_f16(CudaStream s, const float *x, uint16_t *y, size_t n);

/* Prompt-batch SwiGLU over rows of gate and up laid side by side: gu is (n_tok, 2 * n_ff), gate in the first
 * n_ff columns; h (half) is (n_tok, n_ff). */
int cuda_swiglu_f16(CudaStream s, const float *gu, uint32_t n_ff, uint32_t n_tok, uint16_t *h);

/* Geometry of attention for one model. */
typedef struct CudaAttnShape {
        uint32_t n_head, n_head_kv, head_dim, n_rot;
        float rope_base;
        uint32_t n_ctx; /* positions in the KV cache */
        /* Optional (NULL: none): the frequency of each rotated pair, n_rot / 2 floats in device memory
         * (rope_base^(-2j / n_rot) with any scaling folded in; NULL: that formula unscaled), and the biases
         * of q, k and v laid out as in qkv (nq + 2 nk floats in device memory), added before RoPE. */
        const float *inv_freq;
        const float *bias;
        bool neox;  /* RoPE pairs (j, j + n_rot / 2) rather than (2j, 2j + 1) */
        bool kv_q8; /* caches in Q8_0 (blocks of 32 along each position's row; head_dim a multiple of 32), not F16 */
} CudaAttnShape;

/*
 * RoPE (GGUF's adjacent-pair convention) on q and k of n_tok tokens at positions *pos .. *pos + n_tok - 1
 * (pos in device memory, so a captured graph reads the current one), q rotated in place, k and v stored as
 * half floats into the caches (n_ctx, n_head_kv * head_dim). Token t's q, k and v are at qkv + t * stride,
 * + n_head * head_dim, + (n_head + n_head_kv) * head_dim.
 */
int cuda_rope_store(CudaStream s, const CudaAttnShape *a, float *qkv, uint32_t stride, uint32_t n_tok,
                    const int32_t *pos, void *k_cache, void *v_cache);

/*
 * Attention of one token at position *pos over positions 0 .. *pos, split along the sequence, with RoPE and
 * the KV store fused: qkv holds the token's q, k and v as the projections give them (laid out as for
 * cuda_rope_store()); the kernel rotates q and k, stores k and v into the caches at *pos and attends.
 * out is (n_head * head_dim); outq (may be NULL; head_dim a multiple of 32) gets it in 8 bits. scratch
 * comes from cuda_attn_scratch_size() and must start zeroed (cudaMemset once): the kernel leaves it that way.
 * head_dim: a multiple of 8, at most 128. early: *pos and the cache rows below it were complete before the
 * launch before this one began (in the decode graph they come from earlier graphs), so the kernel may read
 * them while that launch is still running (programmatic dependent launch) and waits for it only before
 * reading qkv; false: it waits before reading anything.
 */
size_t cuda_attn_scratch_size(const CudaAttnShape *a);
int cuda_attn_decode(CudaStream s, const CudaAttnShape *a, const float *qkv, const int32_t *pos,
                     void *k_cache, void *v_cache, void *scratch, float *out, const CudaQ8 *outq, bool early);

/* One sequence of a batched decode step, as the device reads it (an array of these in device memory): its KV
 * caches (the model's layers one after another, n_ctx positions each), the position of the token being
 * decoded, and where the on-device argmax records the tokens it picks (hist[pos], pos < n_ctx + 1). */
typedef struct CudaSeqSlot {
        void *k, *v;
        int32_t *hist;
        uint32_t n_ctx;
        int32_t pos;
} CudaSeqSlot;

/*
 * cuda_attn_decode() for n_seq sequences at once, layer layer of each: sequence b's q, k and v at
 * qkv + b * (n_head + 2 n_head_kv) * head_dim, its caches and position from seqs[b], its output at
 * out + b * n_head * head_dim (and row b of outq). a->n_ctx: the largest n_ctx of the sequences. scratch:
 * n_seq times cuda_attn_scratch_size(a) rounded up to 16 bytes, zeroed once. early: as for
 * cuda_attn_decode(), for seqs and each sequence's position and cache rows below it.
 */
int cuda_attn_decode_batch(CudaStream s, const CudaAttnShape *a, const float *qkv, uint32_t n_seq,
                           const CudaSeqSlot *seqs, uint32_t layer, void *scratch, float *out, const CudaQ8 *outq,
                           bool early);

/* Causal attention for n_tok tokens at positions *pos .. (their k and v already in the caches); q rows at
 * q + t * q_stride; out is (n_tok, n_head * head_dim). */
int cuda_attn_prefill(CudaStream s, const CudaAttnShape *a, const float *q, uint32_t q_stride, uint32_t n_tok,
                      const int32_t *pos, const void *k_cache, const void *v_cache, float *out);

/* Index of the largest of n floats (the lowest index among equals) into *ret (device memory); when pos is
 * not NULL, *pos += 1 and, when hist is not NULL and the new *pos < hist_n, hist[*pos] = the index. */
int cuda_argmax(CudaStream s, const float *x, uint32_t n, int32_t *ret, int32_t *pos, int32_t *hist,
                uint32_t hist_n);

/* cuda_argmax() for n_seq rows of n floats (x + b * n): ret[b] gets row b's index, seqs[b].pos advances by
 * one and seqs[b].hist[pos] records the index. */
int cuda_argmax_batch(CudaStream s, const float *x, uint32_t n, uint32_t n_seq, int32_t *ret, CudaSeqSlot *seqs);

/* cuBLAS for prompt batches. */
typedef struct CudaBlas CudaBlas;
int cuda_blas_new(CudaStream s, CudaBlas **ret);
CudaBlas *cuda_blas_free(CudaBlas *b);
/* y (n_tok, n_rows) = x16 (n_tok, n_cols) . w16^T (w16: n_rows x n_cols), plus y when accumulate. */
int cuda_gemm_f16(CudaBlas *b, const uint16_t *w16, uint32_t n_rows, uint32_t n_cols, const uint16_t *x16,
                  uint32_t n_tok, float *y, bool accumulate);

/* ---- synthetic weights ---- */

/* Fills n_rows rows of n_cols elements of type at data (row_stride apart) with random but valid values:
 * block scales of sensible magnitude (about scale for a dequantized weight), every other byte random. */
int cuda_fill_random(CudaStream s, const CudaMatrix *w, uint64_t seed, float scale);

/* ---- a llama-architecture model ---- */

typedef struct CudaLlamaConfig {
        uint32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_rot, n_ff;
        float rope_base, norm_eps;
        float rope_freq_scale; /* positions are multiplied by this (linear RoPE scaling); 0 means 1 */
        bool rope_neox;        /* RoPE pairs (j, j + n_rot / 2), as qwen2 has them */
        bool kv_q8;            /* KV caches in Q8_0 rather than F16 (head_dim a multiple of 32) */
} CudaLlamaConfig;

typedef enum CudaWeight {
        CUDA_W_TOKEN_EMBD,
        CUDA_W_OUTPUT_NORM,
        CUDA_W_OUTPUT,
        CUDA_W_ATTN_NORM, /* per layer from here on */
        CUDA_W_Q,
        CUDA_W_K,
        CUDA_W_V,
        CUDA_W_O,
        CUDA_W_FFN_NORM,
        CUDA_W_GATE,
        CUDA_W_UP,
        CUDA_W_DOWN,
        _CUDA_W_MAX,
        _CUDA_W_INVALID = -22,
} CudaWeight;

typedef struct CudaLlama CudaLlama;
typedef struct CudaKv CudaKv;

/* A model with no weights yet on device (cudaSetDevice'd by every call) for layers [l0, l1) of c, with the
 * token embedding when l0 is 0 and the output norm and head when l1 is c->n_layer: the GPU part of a model
 * split between backends. */
int cuda_llama_new(int device, const CudaLlamaConfig *c, uint32_t l0, uint32_t l1, CudaLlama **ret);
CudaLlama *cuda_llama_free(CudaLlama *m);

/* The (n_cols, n_rows) that GGUF gives weight w of config c (rows 0 for an invalid w). */
void cuda_llama_weight_shape(const CudaLlamaConfig *c, CudaWeight w, uint32_t *cols, uint32_t *rows);

/*
 * Places weight w (layer ignored for the first three) of type with the shape (n_cols, n_rows) GGUF gives it:
 * from host memory (data, rows contiguous as in the file), or, with data NULL, random values made on the
 * device. Norm weights are F32. -EINVAL on a shape that does not match the config, -EOPNOTSUPP on a type
 * without kernels, -ENOSPC when the device is full.
 */
int cuda_llama_set_weight(CudaLlama *m, CudaWeight w, uint32_t layer, uint32_t type, uint32_t n_cols,
                          uint32_t n_rows, const void *data);

/* Llama 3.1's RoPE frequency divisors: pair j's frequency is divided by freqs[j] (n_rot / 2 host floats).
 * Call before the first decode (captured graphs keep the table's address, not its values, so later calls
 * are seen too). */
int cuda_llama_set_rope_freqs(CudaLlama *m, const float *freqs);

/* Biases of layer's q, k and v projections (host floats: nq, nk and nk of them; NULL for none of one),
 * added before RoPE (qwen2). */
int cuda_llama_set_bias(CudaLlama *m, uint32_t layer, const float *bq, const float *bk, const float *bv);

/* Reference mode: every token goes through the prompt path (weights dequantized to F16 tiles, activations in
 * F16 and float) and the head through cuda_matvec_f32(), never through 8-bit activations. Slow. */
void cuda_llama_set_precise(CudaLlama *m, bool precise);

/* For timing studies only (bench-cuda --breakdown): leave kernels out of the decode graphs captured from now
 * on; the outputs are then meaningless. */
enum {
        CUDA_SKIP_SMALL = 1 << 0,  /* norms, quantizations, attention */
        CUDA_SKIP_MATVEC = 1 << 1, /* the layers' matrix-vector products */
};
void cuda_llama_set_skip(CudaLlama *m, unsigned mask);

/* For tests and timing: the decode graphs captured from now on keep their 8-bit inputs in plain rows rather
 * than in the layouts of their K-quant products (also QUANTD_CUDA_Q8_LAYOUT=0 at cuda_llama_new()). */
void cuda_llama_set_plain_q8(CudaLlama *m, bool plain);

/* Device bytes that the weights take, and bytes one decode step reads (all weights but the embedding
 * table, of which one row). */
uint64_t cuda_llama_weight_bytes(const CudaLlama *m);
uint64_t cuda_llama_step_bytes(const CudaLlama *m);

/* A sequence's KV cache of n_ctx positions (F16, or Q8_0 with the config's kv_q8) on the model's device. */
int cuda_kv_new(CudaLlama *m, uint32_t n_ctx, CudaKv **ret);
CudaKv *cuda_kv_free(CudaKv *kv);
uint32_t cuda_kv_pos(const CudaKv *kv);
/* Forgets every position from pos on (pos <= cuda_kv_pos()), e.g. to reuse a cached prompt prefix. */
int cuda_kv_truncate(CudaKv *kv, uint32_t pos);
/* Bytes a KV cache of n_ctx positions for n_layer layers takes on the device. */
uint64_t cuda_kv_bytes(const CudaLlamaConfig *c, uint32_t n_layer, uint32_t n_ctx);

/*
 * Runs n_tok tokens of one sequence at positions pos0 .. pos0 + n_tok - 1 (pos0 <= cuda_kv_pos(); later
 * positions are overwritten) through the model's layers. Input: tokens when the model starts at layer 0,
 * else x, (n_tok, n_embd) host floats. Output: when the model ends at the last layer, for each of n_out rows
 * (increasing indices into the n_tok) the logits (n_vocab floats), or with hidden the hidden state after the
 * output norm (n_embd floats), into consecutive rows of out; otherwise the hidden states back into x. One
 * token through the whole model goes through the decode kernels (a CUDA graph after the first call), more
 * through cuBLAS. -ENOSPC when the KV cache would overflow.
 */
int cuda_llama_run(CudaLlama *m, CudaKv *kv, uint32_t pos0, uint32_t n_tok, const int32_t *tokens, float *x,
                   uint32_t n_out, const uint32_t *out_rows, bool hidden, float *out);

/* cuda_llama_run() at the sequence's next position with the last token's logits into logits (host, may be
 * NULL), for a model on one device. */
int cuda_llama_forward(CudaLlama *m, CudaKv *kv, const int32_t *tokens, uint32_t n_tok, float *logits);

#define CUDA_BATCH_MAX 64 /* sequences a batched decode graph takes */

/*
 * One decode step of n_seq distinct sequences (any number; up to CUDA_BATCH_MAX per graph replay) of a model
 * on one device, every weight read once per 64 of them (16 for the types without tensor-core kernels,
 * cuda_matvec_batch()): sequence i takes tokens[i] at position pos[i] of kvs[i]
 * (pos[i] <= cuda_kv_pos(kvs[i]); later positions are overwritten), and its logits go to logits[i] (host,
 * n_vocab floats) unless logits or logits[i] is NULL. Each group of sequences goes through a CUDA graph
 * captured once per group size. -ENOSPC when a cache would overflow, -EINVAL for bad arguments.
 */
int cuda_llama_decode_batch(CudaLlama *m, CudaKv *const *kvs, const uint32_t *pos, const int32_t *tokens,
                            uint32_t n_seq, float *const *logits);

/* Greedy decoding of n_seq sequences together entirely on the device: each kvs[i] is fed tokens[i] at its
 * current position, then its own argmax, n_steps times; out (host, may be NULL) gets sequence i's n_steps
 * tokens at out + i * n_steps. */
int cuda_llama_generate_greedy_batch(CudaLlama *m, CudaKv *const *kvs, const int32_t *tokens, uint32_t n_seq,
                                     uint32_t n_steps, int32_t *out);

/* Greedy decoding entirely on the device: feeds token, then each argmax, n_steps times through the captured
 * graph with no host round trip; writes the n_steps generated tokens to out (host) when not NULL. */
int cuda_llama_generate_greedy(CudaLlama *m, CudaKv *kv, int32_t token, uint32_t n_steps, int32_t *out);
