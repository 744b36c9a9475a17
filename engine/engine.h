/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * engine: GGUF files, ggml tensor types, and (as they land) tokenizers, the forward pass, backends and sampling.
 *
 * Thread safety: a Gguf is immutable after gguf_open*() and may be read from any number of threads at once.
 * A GgufWriter belongs to one thread.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* ---- ggml tensor types ---- */

/* Type ids as GGUF stores them. Gaps are ids that ggml has retired; they are rejected as unknown. */
typedef enum GgmlType {
        GGML_TYPE_F32 = 0,
        GGML_TYPE_F16 = 1,
        GGML_TYPE_Q4_0 = 2,
        GGML_TYPE_Q4_1 = 3,
        GGML_TYPE_Q5_0 = 6,
        GGML_TYPE_Q5_1 = 7,
        GGML_TYPE_Q8_0 = 8,
        GGML_TYPE_Q8_1 = 9,
        GGML_TYPE_Q2_K = 10,
        GGML_TYPE_Q3_K = 11,
        GGML_TYPE_Q4_K = 12,
        GGML_TYPE_Q5_K = 13,
        GGML_TYPE_Q6_K = 14,
        GGML_TYPE_Q8_K = 15,
        GGML_TYPE_IQ2_XXS = 16,
        GGML_TYPE_IQ2_XS = 17,
        GGML_TYPE_IQ3_XXS = 18,
        GGML_TYPE_IQ1_S = 19,
        GGML_TYPE_IQ4_NL = 20,
        GGML_TYPE_IQ3_S = 21,
        GGML_TYPE_IQ2_S = 22,
        GGML_TYPE_IQ4_XS = 23,
        GGML_TYPE_I8 = 24,
        GGML_TYPE_I16 = 25,
        GGML_TYPE_I32 = 26,
        GGML_TYPE_I64 = 27,
        GGML_TYPE_F64 = 28,
        GGML_TYPE_IQ1_M = 29,
        GGML_TYPE_BF16 = 30,
        GGML_TYPE_TQ1_0 = 34,
        GGML_TYPE_TQ2_0 = 35,
        GGML_TYPE_MXFP4 = 39,
        _GGML_TYPE_MAX,
        _GGML_TYPE_INVALID = -EINVAL,
} GgmlType;

typedef struct GgmlTypeInfo {
        const char *name;    /* "q4_K", as ggml names it */
        uint32_t block_size; /* elements per block */
        uint32_t type_size;  /* bytes per block */
        bool quantized;
} GgmlTypeInfo;

/* The block layout of a type id, or NULL for an id that is unknown or retired. */
const GgmlTypeInfo *ggml_type_info(uint32_t type);

/* The type's name, or "unknown". */
const char *ggml_type_name(uint32_t type);

/* Looks a type up by name (case-insensitive, "q4_k" finds Q4_K). Returns the type or -EINVAL. */
int ggml_type_from_name(const char *name);

/*
 * Bytes that n elements of type take: -EINVAL when the type is unknown or n is not a multiple of its block
 * size, -EOVERFLOW when the size does not fit in 64 bits.
 */
int ggml_row_size(uint32_t type, uint64_t n, uint64_t *ret);

/* ---- quantized block layouts, exactly as GGUF stores them ---- */

typedef uint16_t GgmlHalf; /* IEEE binary16 bits */

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK4_NL 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct BlockQ4_0 {
        GgmlHalf d;             /* scale */
        uint8_t qs[QK4_0 / 2];  /* nibbles: element j in qs[j] low, element j + 16 in qs[j] high */
} BlockQ4_0;
typedef struct BlockQ4_1 {
        GgmlHalf d, m;          /* scale and minimum */
        uint8_t qs[QK4_1 / 2];
} BlockQ4_1;
typedef struct BlockQ5_0 {
        GgmlHalf d;
        uint8_t qh[4];          /* fifth bits, bit j for element j */
        uint8_t qs[QK5_0 / 2];
} BlockQ5_0;
typedef struct BlockQ5_1 {
        GgmlHalf d, m;
        uint8_t qh[4];
        uint8_t qs[QK5_1 / 2];
} BlockQ5_1;
typedef struct BlockQ8_0 {
        GgmlHalf d;
        int8_t qs[QK8_0];
} BlockQ8_0;
typedef struct BlockQ8_1 {
        GgmlHalf d, s;          /* scale and d * sum(qs) */
        int8_t qs[QK8_1];
} BlockQ8_1;
typedef struct BlockQ2_K {
        uint8_t scales[QK_K / 16]; /* 4-bit scale (low) and min (high) per 16 elements */
        uint8_t qs[QK_K / 4];
        GgmlHalf d, dmin;
} BlockQ2_K;
typedef struct BlockQ3_K {
        uint8_t hmask[QK_K / 8];   /* high bits */
        uint8_t qs[QK_K / 4];      /* low 2 bits */
        uint8_t scales[12];        /* 16 scales of 6 bits */
        GgmlHalf d;
} BlockQ3_K;
typedef struct BlockQ4_K {
        GgmlHalf d, dmin;
        uint8_t scales[K_SCALE_SIZE]; /* 8 scales and 8 mins of 6 bits */
        uint8_t qs[QK_K / 2];
} BlockQ4_K;
typedef struct BlockQ5_K {
        GgmlHalf d, dmin;
        uint8_t scales[K_SCALE_SIZE];
        uint8_t qh[QK_K / 8];
        uint8_t qs[QK_K / 2];
} BlockQ5_K;
typedef struct BlockQ6_K {
        uint8_t ql[QK_K / 2];      /* low 4 bits */
        uint8_t qh[QK_K / 4];      /* high 2 bits */
        int8_t scales[QK_K / 16];
        GgmlHalf d;
} BlockQ6_K;
typedef struct BlockQ8_K {
        float d;
        int8_t qs[QK_K];
        int16_t bsums[QK_K / 16];  /* sums of groups of 16 */
} BlockQ8_K;
typedef struct BlockIQ4_NL {
        GgmlHalf d;
        uint8_t qs[QK4_NL / 2];
} BlockIQ4_NL;

_Static_assert(sizeof(BlockQ4_0) == 18, "wrong q4_0 block size");
_Static_assert(sizeof(BlockQ4_1) == 20, "wrong q4_1 block size");
_Static_assert(sizeof(BlockQ5_0) == 22, "wrong q5_0 block size");
_Static_assert(sizeof(BlockQ5_1) == 24, "wrong q5_1 block size");
_Static_assert(sizeof(BlockQ8_0) == 34, "wrong q8_0 block size");
_Static_assert(sizeof(BlockQ8_1) == 36, "wrong q8_1 block size");
_Static_assert(sizeof(BlockQ2_K) == 84, "wrong q2_K block size");
_Static_assert(sizeof(BlockQ3_K) == 110, "wrong q3_K block size");
_Static_assert(sizeof(BlockQ4_K) == 144, "wrong q4_K block size");
_Static_assert(sizeof(BlockQ5_K) == 176, "wrong q5_K block size");
_Static_assert(sizeof(BlockQ6_K) == 210, "wrong q6_K block size");
_Static_assert(sizeof(BlockQ8_K) == 292, "wrong q8_K block size");
_Static_assert(sizeof(BlockIQ4_NL) == 18, "wrong iq4_nl block size");

/* ---- scalar conversions and dequantization (the references every kernel is tested against) ---- */

/* IEEE binary16 to float32, exactly (NaN payloads kept). */
float engine_fp16_to_f32(GgmlHalf h);

/* float32 to binary16, rounding to nearest with ties to even as numpy and F16C do; overflow gives infinity,
 * NaN stays a quiet NaN. */
GgmlHalf engine_f32_to_fp16(float f);

/* bfloat16 (the top 16 bits of a float32) to float32, exactly. */
float engine_bf16_to_f32(uint16_t h);

/* float32 to bfloat16, rounding to nearest with ties to even (as ggml and the gguf package do); subnormals are
 * kept, NaN stays a quiet NaN. */
uint16_t engine_f32_to_bf16(float f);

/*
 * Dequantizes n elements of type from src (GGUF's block layout) into dst, element for element as ggml does.
 * Types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL.
 * Returns 0, -EINVAL for an unknown type, a NULL buffer or n not a multiple of the block size, or -EOPNOTSUPP
 * for a known type without a dequantizer. Any thread.
 */
int engine_dequantize_row(uint32_t type, const void *src, float *dst, uint64_t n);

/* ---- GGUF ---- */

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DIMS 4u

typedef enum GgufType {
        GGUF_TYPE_UINT8 = 0,
        GGUF_TYPE_INT8 = 1,
        GGUF_TYPE_UINT16 = 2,
        GGUF_TYPE_INT16 = 3,
        GGUF_TYPE_UINT32 = 4,
        GGUF_TYPE_INT32 = 5,
        GGUF_TYPE_FLOAT32 = 6,
        GGUF_TYPE_BOOL = 7,
        GGUF_TYPE_STRING = 8,
        GGUF_TYPE_ARRAY = 9,
        GGUF_TYPE_UINT64 = 10,
        GGUF_TYPE_INT64 = 11,
        GGUF_TYPE_FLOAT64 = 12,
        _GGUF_TYPE_MAX,
        _GGUF_TYPE_INVALID = -EINVAL,
} GgufType;

/* "uint32", "string", …; "unknown" for anything else. */
const char *gguf_type_name(GgufType t);

/* A string inside the mapped file: not NUL-terminated. */
typedef struct GgufString {
        uint64_t len;
        const char *data;
} GgufString;

typedef struct GgufValue GgufValue;

/* An array value. Scalar elements stay in the file (raw little-endian, n × element size bytes at data);
 * string and array elements are decoded into items. */
typedef struct GgufArray {
        GgufType type;    /* element type */
        uint64_t n;       /* element count */
        const void *data; /* scalar elements, in the map; NULL for string and array elements */
        GgufValue *items; /* (n) string or array elements; NULL for scalar elements */
} GgufArray;

struct GgufValue {
        GgufType type;
        union {
                uint8_t u8;
                int8_t i8;
                uint16_t u16;
                int16_t i16;
                uint32_t u32;
                int32_t i32;
                float f32;
                bool b;
                uint64_t u64;
                int64_t i64;
                double f64;
                GgufString str;
                GgufArray arr;
        };
};

typedef struct GgufKV {
        char *key; /* NUL-terminated copy */
        GgufValue value;
        uint64_t offset; /* byte offset of the key in the file, for messages */
} GgufKV;

typedef struct GgufTensor {
        char *name;                 /* NUL-terminated copy */
        uint32_t n_dims;            /* 1..GGUF_MAX_DIMS */
        uint64_t ne[GGUF_MAX_DIMS]; /* elements per dimension, ne[0] the row length; unused dims are 1 */
        uint32_t type;              /* GgmlType */
        uint64_t offset;            /* from the start of the data section */
        uint64_t n_elements;
        uint64_t size;     /* bytes */
        const void *data;  /* in the map */
} GgufTensor;

typedef struct Gguf {
        uint32_t version;
        uint32_t alignment;
        uint64_t n_kv;
        GgufKV *kv; /* (n_kv), in file order */
        uint64_t n_tensors;
        GgufTensor *tensors; /* (n_tensors), in file order */
        uint64_t data_offset; /* where the data section starts in the file */
        const uint8_t *base;  /* the whole file */
        uint64_t size;
        bool mapped; /* base came from mmap() and is unmapped by gguf_free() */
} Gguf;

/*
 * Maps and validates a GGUF file (v2 or v3, little-endian). On a malformed file returns -EBADMSG and, in err, a
 * sentence naming the problem and its byte offset. Other errors: -ENOENT, -EACCES, … from open(), -EOPNOTSUPP
 * for v1 and big-endian files, -ENOMEM.
 */
int gguf_open(const char *path, Gguf **ret, QdError *err);

/* As gguf_open() for a descriptor (it is not closed; the map stays valid after it is). */
int gguf_open_fd(int fd, Gguf **ret, QdError *err);

/* As gguf_open() for a buffer that the caller keeps alive and unchanged until gguf_free(). */
int gguf_open_memory(const void *data, size_t size, Gguf **ret, QdError *err);

/* Unmaps and frees g. NULL-safe; returns NULL. */
Gguf *gguf_free(Gguf *g);

/* Lookup by key or name; NULL when absent. */
const GgufKV *gguf_find_kv(const Gguf *g, const char *key);
const GgufTensor *gguf_find_tensor(const Gguf *g, const char *name);

/*
 * Typed getters. Each returns 0 and the value, -ENOENT when the key is absent, -EBADMSG when it has another
 * type. Integers of any width and signedness convert when the value fits (-ERANGE otherwise).
 */
int gguf_get_u64(const Gguf *g, const char *key, uint64_t *ret);
int gguf_get_u32(const Gguf *g, const char *key, uint32_t *ret);
int gguf_get_i64(const Gguf *g, const char *key, int64_t *ret);
int gguf_get_f32(const Gguf *g, const char *key, float *ret); /* float32 or float64 */
int gguf_get_bool(const Gguf *g, const char *key, bool *ret);
/* A NUL-terminated copy of a string value, caller frees. */
int gguf_get_string(const Gguf *g, const char *key, char **ret);
/* An array value (borrowed from g); -EBADMSG when the value is not an array. */
int gguf_get_array(const Gguf *g, const char *key, const GgufArray **ret);

/* The size in bytes of one element of a scalar GGUF type; 0 for strings and arrays. */
size_t gguf_type_size(GgufType t);

/* ---- GGUF writer ---- */

typedef struct GgufWriter GgufWriter;

/*
 * A streaming GGUF v3 writer to fd. Declare every key/value and tensor first, then gguf_writer_write_header(),
 * then each tensor's bytes in the order declared with gguf_writer_write_tensor_data(), then gguf_writer_finish().
 * Memory is the metadata only; tensor data passes through.
 */
int gguf_writer_new(GgufWriter **ret, int fd, uint32_t alignment);
GgufWriter *gguf_writer_free(GgufWriter *w);

int gguf_writer_add_u32(GgufWriter *w, const char *key, uint32_t v);
int gguf_writer_add_i32(GgufWriter *w, const char *key, int32_t v);
int gguf_writer_add_u64(GgufWriter *w, const char *key, uint64_t v);
int gguf_writer_add_f32(GgufWriter *w, const char *key, float v);
int gguf_writer_add_bool(GgufWriter *w, const char *key, bool v);
int gguf_writer_add_string(GgufWriter *w, const char *key, const char *v);
/* An array of scalars: n elements of type, data raw little-endian. */
int gguf_writer_add_array(GgufWriter *w, const char *key, GgufType type, const void *data, uint64_t n);
/* An array of n NUL-terminated strings. */
int gguf_writer_add_string_array(GgufWriter *w, const char *key, const char *const *v, uint64_t n);
/* Any value, including nested arrays, e.g. copied from a Gguf being rewritten. */
int gguf_writer_add_value(GgufWriter *w, const char *key, const GgufValue *v);

/* Declares a tensor; ne[0] is the row length. */
int gguf_writer_add_tensor(GgufWriter *w, const char *name, uint32_t type, uint32_t n_dims, const uint64_t *ne);

/* Writes the header, metadata and tensor infos, and pads to the data section. */
int gguf_writer_write_header(GgufWriter *w);

/* Writes the next declared tensor's bytes (exactly its size, in one or more calls) and pads after it. */
int gguf_writer_write_tensor_data(GgufWriter *w, const void *data, size_t size);

/* Checks that every tensor was written. */
int gguf_writer_finish(GgufWriter *w);

DEFINE_TRIVIAL_CLEANUP_FUNC(Gguf *, gguf_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(GgufWriter *, gguf_writer_free);

/* ---- backends ---- */

/* Number of CUDA devices the engine can use: 0 when built without CUDA or when none is present. */
int engine_cuda_devices(void);

/* A GPU as the scheduler sees it. */
typedef struct EngineGpuInfo {
        char name[128];       /* e.g. "NVIDIA H100 80GB HBM3" */
        uint64_t free_bytes;  /* device memory free now (cudaMemGetInfo()), other processes' use excluded */
        uint64_t total_bytes; /* device memory in all */
} EngineGpuInfo;

/* Device device (0 .. engine_cuda_devices() - 1): its name and memory. -ENODEV when there is no such device,
 * which is every device in a build without CUDA. Any thread. */
int engine_gpu_info(uint32_t device, EngineGpuInfo *ret);

/* ---- CPU kernels ---- */

/* Instruction sets the CPU kernels come in, chosen at run time. */
typedef enum EngineCpuIsa {
        ENGINE_CPU_SCALAR, /* plain C: the reference */
        ENGINE_CPU_AVX2,   /* AVX2 + FMA + F16C */
        ENGINE_CPU_AVX512, /* AVX-512 F/BW/VL/DQ + VNNI */
        _ENGINE_CPU_ISA_MAX,
        _ENGINE_CPU_ISA_INVALID = -EINVAL,
} EngineCpuIsa;

/* The best set this CPU runs. */
EngineCpuIsa engine_cpu_isa_best(void);
/* "scalar", "avx2", "avx512"; "unknown" otherwise. */
const char *engine_cpu_isa_name(EngineCpuIsa isa);
/* The set a name above gives; _ENGINE_CPU_ISA_INVALID (-EINVAL) for any other name. */
EngineCpuIsa engine_cpu_isa_from_name(const char *name);

/*
 * y = W x with one kernel set, single-threaded, as the forward pass computes it (activations converted to the
 * weight type's integer form first): W is n_rows rows of n elements of type (GGUF blocks), x is n_tok rows of
 * n floats, y is n_tok rows of n_rows floats. For the kernel tests and benchmarks. Returns 0, -EINVAL for bad
 * arguments or an n the type cannot take, -EOPNOTSUPP when the type has no kernel or the CPU lacks isa.
 */
int engine_cpu_matmul(EngineCpuIsa isa, uint32_t type, const void *w, uint64_t n, uint64_t n_rows, const float *x,
                      uint64_t n_tok, float *y);

/* g[i] = silu(g[i]) × u[i] (SwiGLU's gate) with one kernel set, for the kernel tests. -EINVAL for bad arguments,
 * -EOPNOTSUPP when the CPU lacks isa. */
int engine_cpu_swiglu(EngineCpuIsa isa, float *g, const float *u, uint64_t n);

/* Attention of n_q query heads of head_dim floats each (adjacent in q, their outputs adjacent in out) that
 * share n_pos keys and values (rows of head_dim elements of kv_type, F16 or F32, every kv_stride bytes), with
 * one kernel set, for the kernel tests: out_i = Σ_p softmax(q_i · k_p × scale)_p v_p. -EINVAL for bad
 * arguments, -ENOMEM, -EOPNOTSUPP when the CPU lacks isa. */
int engine_cpu_attend(EngineCpuIsa isa, const float *q, uint32_t n_q, const void *k, const void *v,
                      size_t kv_stride, uint32_t kv_type, uint32_t n_pos, uint32_t head_dim, float scale,
                      float *out);

/* ---- models and the forward pass ---- */

typedef struct EngineModelParams {
        const char *backend;  /* "cpu", "cuda", NULL = best available for the model */
        int32_t n_gpu_layers; /* layers on the GPU backend, the first ones; -1 = all that fit in the device's
                               * free memory with a context of 2048 */
        uint32_t n_threads;   /* CPU worker threads; 0 = the CPU count */
        uint32_t kv_type;     /* GGML_TYPE_F16 (default), GGML_TYPE_F32 (cpu), GGML_TYPE_Q8_0 (cuda) */
        uint32_t n_batch;     /* most tokens one forward step takes; longer prompts go in chunks; 0 = 512 */
        int32_t cpu_isa;      /* an EngineCpuIsa for the CPU kernels; -1 = the best this CPU runs */
        bool f32_activations; /* slow reference mode: weights dequantized, activations kept in float */
} EngineModelParams;

/* The defaults: best backend, all layers that fit, CPU count threads, F16 KV cache, batches of 512. */
EngineModelParams engine_model_params_default(void);

/*
 * A loaded model: read-only weights used in place in the mapped file, reference-counted. Loading, ref and
 * unref may happen on any thread; engine_decode() and friends on one thread at a time per model (its
 * executor), since the backends' scratch buffers belong to the model.
 */
typedef struct EngineModel EngineModel;

/*
 * Maps the GGUF file at path (or fd, which is not closed and may be closed after the call) and prepares it
 * for the backend p names (NULL p: the defaults). Architectures: llama, qwen2. Errors, each with a sentence in
 * err: -EOPNOTSUPP for an unknown architecture, a tensor type without kernels or an unknown backend; -EBADMSG
 * for a malformed file, a missing tensor or a wrong shape; -EINVAL for bad parameters; -ENOMEM; open() errors.
 */
int engine_model_load(const char *path, const EngineModelParams *p, EngineModel **ret, QdError *err);
int engine_model_load_fd(int fd, const EngineModelParams *p, EngineModel **ret, QdError *err);

/* Takes a reference; returns m. */
EngineModel *engine_model_ref(EngineModel *m);
/* Drops a reference, freeing the model with the last one. NULL-safe; returns NULL. */
EngineModel *engine_model_unref(EngineModel *m);

typedef struct EngineModelInfo {
        const char *arch; /* "llama", "qwen2" */
        uint32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, n_ff;
        uint64_t n_params;
        uint64_t file_size;
        const char *file_type; /* the most common weight type, e.g. "q4_1" */
        uint32_t n_gpu_layers; /* layers on the GPU backend (the first ones); 0: it all runs on the CPU */
        uint64_t vram_bytes;   /* device memory the model holds (weights as stored there, scratch), the
                                * sequences' KV caches not included: see EngineEstimate.vram_kv_bytes */
} EngineModelInfo;

/* Borrowed, valid as long as m. */
const EngineModelInfo *engine_model_info(const EngineModel *m);
const Gguf *engine_model_gguf(const EngineModel *m);

/* Bytes needed to run with n_ctx context for each of n_seq sequences: weights + KV cache + scratch. */
uint64_t engine_model_estimate(const EngineModelInfo *info, uint32_t kv_type, uint32_t n_ctx, uint32_t n_seq);

/* What a model needs with its first n_gpu_layers layers on the GPU and the rest on the CPU. */
typedef struct EngineEstimate {
        uint32_t n_gpu_layers;
        uint64_t ram_bytes;     /* host memory: the CPU layers' weights (mapped from the file), their KV
                                 * caches, scratch */
        uint64_t vram_bytes;    /* device memory: the GPU layers' weights as stored there, their KV caches,
                                 * scratch */
        uint64_t vram_kv_bytes; /* the KV caches' part of vram_bytes */
} EngineEstimate;

/*
 * Placement before loading: what the model in g needs, with n_ctx positions for each of n_seq sequences,
 * for every split between the GPU backend and the CPU: (*ret)[n] puts the first n layers on the GPU, for
 * n = 0 .. *ret_n - 1. *ret_n is n_layer + 1 when p (NULL: the defaults; its n_gpu_layers is ignored)
 * allows a GPU backend, one is present and it runs this model (architecture, features, tensor types), else
 * 1 (everything on the CPU). vram_bytes grows with n and ram_bytes shrinks. The sizes are those the backends
 * allocate (rows padded on the device, the device's scratch), so that a split whose vram_bytes is under the
 * device's free memory loads. Errors as engine_model_load() for a file the engine cannot run. The caller
 * frees *ret.
 */
int engine_model_estimate_splits(const Gguf *g, const EngineModelParams *p, uint32_t n_ctx, uint32_t n_seq,
                                 EngineEstimate **ret, size_t *ret_n, QdError *err);

/* One sequence: its KV cache of n_ctx positions on every backend of the model, and its position. */
typedef struct EngineSeq EngineSeq;

/* A new, empty sequence of m (which it references). -EINVAL for n_ctx 0, -ENOMEM/-ENOSPC when the cache does
 * not fit. */
int engine_seq_new(EngineModel *m, uint32_t n_ctx, EngineSeq **ret);
/* NULL-safe; returns NULL. */
EngineSeq *engine_seq_free(EngineSeq *s);
/* Tokens in the cache: the position the next token gets. */
uint32_t engine_seq_pos(const EngineSeq *s);
uint32_t engine_seq_n_ctx(const EngineSeq *s);
/* Keeps the first pos positions (prompt-cache reuse). -EINVAL when pos is past the current position. */
int engine_seq_truncate(EngineSeq *s, uint32_t pos);

/*
 * One forward step over a batch of sequences of m: sequence i appends n_tokens[i] tokens (a prompt chunk or
 * one generated token; 0 is allowed and skips it), and its last position's logits go to logits[i] (n_vocab
 * floats). All sequences' tokens go through the weights together (matrix-matrix). Sequences must be distinct.
 * Errors: -EINVAL (bad arguments, a token id out of range: err names it), -ENOSPC when a sequence would pass
 * its n_ctx (nothing is written then), -ECANCELED if *cancel becomes true (checked between layers; the
 * sequences' positions then stay where they were).
 */
int engine_decode(EngineModel *m, EngineSeq **seqs, const int32_t *const *tokens, const uint32_t *n_tokens,
                  size_t n_seqs, float **logits, const bool *cancel, QdError *err);

/* Appends n_tokens tokens to seq and writes the logits of every one of them, (n_tokens, n_vocab), for
 * perplexity and the reference tests. Errors as engine_decode(). */
int engine_decode_all(EngineModel *m, EngineSeq *seq, const int32_t *tokens, uint32_t n_tokens, float *logits,
                      QdError *err);

/* The mean over tokens of the last hidden state (after the output norm), L2-normalised, into ret (n_embd
 * floats). Uses a temporary sequence. Errors as engine_decode(); -EINVAL for no tokens. */
int engine_embed(EngineModel *m, const int32_t *tokens, uint32_t n_tokens, float *ret, QdError *err);

/* ---- perplexity ---- */

typedef struct EnginePerplexity {
        double ppl;       /* exp(mean_nll) */
        double ppl_err;   /* ppl × the standard error of mean_nll */
        double mean_nll;  /* mean negative log-likelihood per scored token, in nats */
        uint64_t n_scored; /* tokens scored: n_chunks × (n_ctx - 1 - n_ctx / 2) */
        uint32_t n_chunks;
} EnginePerplexity;

/* Called after each chunk with the estimate over the chunks so far. */
typedef void (*EnginePerplexityFn)(void *userdata, uint32_t chunk, uint32_t n_chunks, double ppl);

/*
 * Perplexity of m over tokens by llama-perplexity's method: consecutive chunks of n_ctx tokens (at most
 * max_chunks, 0 = all; a shorter remainder is dropped), each from an empty sequence with its first token
 * replaced by BOS when the vocabulary adds one, the second half of each chunk scored. The model's n_batch must
 * be at least n_ctx for the chunks to run as one batch, as llama-perplexity runs them (smaller works, in
 * pieces). progress may be NULL. Errors: -EINVAL (n_ctx < 4, fewer tokens than one chunk, bad arguments; with
 * a sentence in err), and those of engine_decode().
 */
int engine_perplexity(EngineModel *m, const int32_t *tokens, size_t n_tokens, uint32_t n_ctx,
                      uint32_t max_chunks, EnginePerplexityFn progress, void *userdata, EnginePerplexity *ret,
                      QdError *err);

DEFINE_TRIVIAL_CLEANUP_FUNC(EngineModel *, engine_model_unref);
DEFINE_TRIVIAL_CLEANUP_FUNC(EngineSeq *, engine_seq_free);
/* ---- vocabulary and tokenizers ---- */

/*
 * A model's vocabulary, read from its tokenizer.ggml.* metadata: the token strings, their scores and types,
 * the BPE merges, the special token ids and the tokenizer's flags. Immutable once made; any number of threads
 * may tokenize with one vocabulary at once.
 */
typedef struct EngineVocab EngineVocab;

/* tokenizer.ggml.model: "llama" (SentencePiece-style) or "gpt2" (byte-level BPE). */
typedef enum EngineVocabKind {
        ENGINE_VOCAB_SPM,
        ENGINE_VOCAB_BPE,
        _ENGINE_VOCAB_KIND_MAX,
        _ENGINE_VOCAB_KIND_INVALID = -EINVAL,
} EngineVocabKind;

/* tokenizer.ggml.token_type values, as GGUF stores them. */
typedef enum EngineTokenType {
        ENGINE_TOKEN_UNDEFINED = 0,
        ENGINE_TOKEN_NORMAL = 1,
        ENGINE_TOKEN_UNKNOWN = 2,
        ENGINE_TOKEN_CONTROL = 3,
        ENGINE_TOKEN_USER_DEFINED = 4,
        ENGINE_TOKEN_UNUSED = 5,
        ENGINE_TOKEN_BYTE = 6,
        _ENGINE_TOKEN_TYPE_MAX,
        _ENGINE_TOKEN_TYPE_INVALID = -EINVAL,
} EngineTokenType;

/*
 * Reads the vocabulary from g's tokenizer.ggml.* keys (g may be freed afterwards: everything is copied).
 * Errors: -EBADMSG with a sentence naming the key when metadata is missing, of the wrong type or inconsistent
 * (e.g. 512 tokens but 511 scores, a special token id out of range); -EOPNOTSUPP for a tokenizer model or
 * pre-tokenizer we do not implement; -ENOMEM.
 */
int engine_vocab_new(const Gguf *g, EngineVocab **ret, QdError *err);
EngineVocab *engine_vocab_free(EngineVocab *v);

/* The vocabulary of a loaded model (read at load time; borrowed, valid as long as m), or NULL when the file has
 * no tokenizer.ggml.* metadata. A file whose tokenizer metadata is present but unusable fails to load. */
const EngineVocab *engine_model_vocab(const EngineModel *m);

EngineVocabKind engine_vocab_kind(const EngineVocab *v);
/* The pre-tokenizer in use, by tokenizer.ggml.pre's name ("default" when the key is absent). */
const char *engine_vocab_pre(const EngineVocab *v);
uint32_t engine_vocab_n_tokens(const EngineVocab *v);
/* Special token ids; -1 when the model has none. */
int32_t engine_vocab_bos(const EngineVocab *v);
int32_t engine_vocab_eos(const EngineVocab *v);
int32_t engine_vocab_eot(const EngineVocab *v);
int32_t engine_vocab_pad(const EngineVocab *v);
int32_t engine_vocab_unk(const EngineVocab *v);
/* Whether tokenizing with add_special adds BOS in front / EOS at the end (tokenizer.ggml.add_*_token). */
bool engine_vocab_add_bos(const EngineVocab *v);
bool engine_vocab_add_eos(const EngineVocab *v);
/* Whether token ends generation: eos, eot, and end-of-turn control tokens such as <|im_end|>. */
bool engine_vocab_is_eog(const EngineVocab *v, int32_t token);
/* The token's type; _ENGINE_TOKEN_TYPE_INVALID for an id out of range. */
EngineTokenType engine_vocab_token_type(const EngineVocab *v, int32_t token);
/* The token's string as the vocabulary stores it (with ▁ or Ġ), or NULL for an id out of range. */
const char *engine_vocab_token_text(const EngineVocab *v, int32_t token);
/* The id of the token whose stored string is exactly text[0..len), or -ENOENT. */
int32_t engine_vocab_find(const EngineVocab *v, const char *text, size_t len);

/*
 * Splits text[0..len) (UTF-8; invalid bytes are tokenized as bytes) into token ids, returned in *ret (caller
 * frees; NULL when *ret_n is 0). add_special adds BOS/EOS as the vocabulary asks; parse_special makes control
 * tokens written in the text ("<|im_start|>") count as those tokens, otherwise they are ordinary text.
 * User-defined tokens are always recognised. Errors: -ENOMEM, -EMSGSIZE when text is over 1 GiB.
 */
int engine_tokenize(const EngineVocab *v, const char *text, size_t len, bool add_special, bool parse_special,
                    int32_t **ret, size_t *ret_n);

/*
 * Appends the bytes that token stands for to out: "▁" becomes a space, byte tokens their byte, BPE text is
 * mapped back to bytes. Control tokens give nothing unless special is set, when they give their text; an
 * unknown token gives U+FFFD. -EINVAL for an id out of range, -ENOMEM.
 */
int engine_token_piece(const EngineVocab *v, int32_t token, bool special, Buf *out);

/* Appends the text of n tokens to out, as engine_token_piece() does for each (invalid UTF-8 is kept). */
int engine_detokenize(const EngineVocab *v, const int32_t *tokens, size_t n, bool special, Buf *out);

/*
 * Streaming detokenizer: tokens go in one at a time; only complete UTF-8 characters come out, so that a
 * character split across tokens (an emoji as three byte tokens) is never cut. Bytes that cannot start or
 * continue a character come out as U+FFFD. One per sequence; not shared between threads.
 */
typedef struct EngineDetok EngineDetok;
int engine_detok_new(EngineDetok **ret);
EngineDetok *engine_detok_free(EngineDetok *d);
/* Appends to out the complete characters that token finishes (special as for engine_token_piece()). */
int engine_detok_push(EngineDetok *d, const EngineVocab *v, int32_t token, bool special, Buf *out);
/* Appends what is held back (an unfinished character, as U+FFFD) and resets d for a new sequence. */
int engine_detok_flush(EngineDetok *d, Buf *out);

DEFINE_TRIVIAL_CLEANUP_FUNC(EngineVocab *, engine_vocab_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(EngineDetok *, engine_detok_free);

/* ---- sampling ---- */

/* seed value that asks for a random seed (from getrandom()), as Ollama's seed -1 does. */
#define ENGINE_SAMPLER_SEED_RANDOM UINT64_MAX

/*
 * How the next token is chosen from the logits, in this order: the penalties over the last repeat_last_n
 * tokens, then (unless temperature is 0, which takes the highest logit) top_k, typical_p, top_p, min_p, the
 * temperature, and a draw with the sampler's own PRNG. Each filter keeps at least one token.
 */
typedef struct EngineSamplerParams {
        float temperature;       /* 0 = greedy: the highest logit, the lowest id on ties */
        int32_t top_k;           /* keep the k most likely tokens; <= 0 = off */
        float top_p;             /* keep the most likely tokens until their probability reaches p; 1 = off */
        float min_p;             /* drop tokens less likely than min_p × the most likely one; 0 = off */
        float typical_p;         /* locally typical sampling; 1 = off */
        float repeat_penalty;    /* divide positive logits (multiply negative ones) of recent tokens; 1 = off */
        int32_t repeat_last_n;   /* how many recent tokens the penalties see; 0 = none, -1 = all */
        float presence_penalty;  /* subtracted once from a recent token's logit */
        float frequency_penalty; /* subtracted per occurrence */
        uint64_t seed;           /* ENGINE_SAMPLER_SEED_RANDOM or a fixed seed: the same seed draws the same */
} EngineSamplerParams;

/* Ollama's defaults: temperature 0.8, top_k 40, top_p 0.9, min_p 0, typical_p 1, repeat_penalty 1.1 over the
 * last 64 tokens, no presence or frequency penalty, a random seed. */
EngineSamplerParams engine_sampler_params_default(void);

/* Checks the ranges (finite values; temperature, top_p, min_p, typical_p, repeat_penalty not negative, min_p
 * and typical_p at most 1, repeat_penalty not 0, repeat_last_n >= -1). -EINVAL with a sentence naming the
 * option. */
int engine_sampler_params_check(const EngineSamplerParams *p, QdError *err);

/* A sampler for one sequence over n_vocab logits. Not shared between threads. -EINVAL for bad parameters. */
typedef struct EngineSampler EngineSampler;
int engine_sampler_new(const EngineSamplerParams *p, uint32_t n_vocab, EngineSampler **ret);
EngineSampler *engine_sampler_free(EngineSampler *s);

/* Picks a token from logits (n_vocab floats, left unchanged). Returns the id, or -EINVAL when no logit is a
 * number above -infinity. Greedy sampling draws no random numbers, so it is repeatable bit for bit. */
int32_t engine_sampler_sample(EngineSampler *s, const float *logits);

/* Records a token of the sequence (prompt or generated) for the penalties; ids out of range are ignored. */
void engine_sampler_accept(EngineSampler *s, int32_t token);

/* Forgets the history and restarts the PRNG from the seed. */
void engine_sampler_reset(EngineSampler *s);

DEFINE_TRIVIAL_CLEANUP_FUNC(EngineSampler *, engine_sampler_free);

/* ---- stop strings and generation limits ---- */

/*
 * Stop strings over a stream of text that arrives in pieces: text that could still turn out to begin a stop
 * string is held back until it cannot, and the stop string itself is never passed on. One per sequence.
 */
typedef struct EngineStop EngineStop;

/* Copies the n stop strings. -EINVAL for an empty one, -EMSGSIZE for more than 64 or one over 4096 bytes. */
int engine_stop_new(const char *const *stops, size_t n, EngineStop **ret);
EngineStop *engine_stop_free(EngineStop *s);

/*
 * Feeds text[0..len) and appends to out what is safe to show. Returns 1 once a stop string has appeared: out
 * then ends just before it, and this and later calls pass nothing more on. Returns 0 otherwise, -ENOMEM.
 */
int engine_stop_push(EngineStop *s, const char *text, size_t len, Buf *out);

/* At the end of the stream (no stop string came): appends the text held back. */
int engine_stop_flush(EngineStop *s, Buf *out);

/* Whether a stop string has been seen. */
bool engine_stop_hit(const EngineStop *s);

/*
 * Whether generation has reached its length limit after n_generated tokens, as Ollama's num_predict counts:
 * -1 = no limit, -2 = until the context is full, otherwise that many tokens; either way generation ends when
 * pos (the sequence's length) reaches n_ctx, since a token more would not fit.
 */
bool engine_predict_done(int32_t num_predict, uint32_t n_generated, uint32_t pos, uint32_t n_ctx);

DEFINE_TRIVIAL_CLEANUP_FUNC(EngineStop *, engine_stop_free);

/* ---- chat templates ---- */

/* One chat message; the strings are borrowed. Roles are "system", "user", "assistant" or "tool". */
typedef struct EngineChatMessage {
        const char *role;
        const char *content;
} EngineChatMessage;

/*
 * A Modelfile TEMPLATE in the Go text/template dialect Ollama uses: text with {{ actions }}: fields (.System,
 * .Prompt, .Response, .Messages and each message's .Role and .Content), variables ($, $x := …, range $i, $m
 * := …), if / else if / else / range / with … end, {{- and -}} trimming, comments, parenthesised pipelines
 * and the functions and, or, not, eq, ne, lt, le, gt, ge, len, index, slice, print, printf and json.
 * Immutable once parsed; may be rendered from any number of threads at once.
 */
typedef struct EngineTemplate EngineTemplate;

/* Parses text. -EINVAL with a sentence naming the line and the problem (an unclosed action, an {{ end }}
 * without a block, an unknown function or variable, …), -ENOMEM. */
int engine_template_parse(const char *text, EngineTemplate **ret, QdError *err);
EngineTemplate *engine_template_free(EngineTemplate *t);

/*
 * Renders a chat as Ollama does, ending where the assistant's next reply begins. system (the Modelfile's
 * SYSTEM, may be NULL) goes first when the messages have no system message. Consecutive messages of the same
 * role are joined with a blank line. A template that uses .Messages is rendered once with the whole chat and
 * .System set to the system messages; an older one (only .System, .Prompt, .Response) once per turn, the last
 * turn cut just after {{ .Response }}. Appends to out. -EINVAL with a sentence for an error while rendering
 * (an unknown field, a bad argument to a function), -ENOMEM.
 */
int engine_template_render(const EngineTemplate *t, const char *system, const EngineChatMessage *messages,
                           size_t n_messages, Buf *out, QdError *err);

/* Chat formats recognised from a GGUF's tokenizer.chat_template (a Jinja template) and rendered natively. */
typedef enum EngineChatFormat {
        ENGINE_CHAT_CHATML,
        ENGINE_CHAT_LLAMA2,
        ENGINE_CHAT_LLAMA3,
        ENGINE_CHAT_MISTRAL,
        ENGINE_CHAT_GEMMA,
        ENGINE_CHAT_PHI3,
        _ENGINE_CHAT_FORMAT_MAX,
        _ENGINE_CHAT_FORMAT_INVALID = -EINVAL,
} EngineChatFormat;

/* "chatml", "llama2", …; NULL for a value out of range. */
const char *engine_chat_format_name(EngineChatFormat f);

/*
 * Recognises jinja's family by its marker tokens. When the template writes a fixed default system prompt for
 * chats that bring none (as SmolLM's and Qwen's do), *ret_default_system gets a copy (caller frees), else
 * NULL; ret_default_system may be NULL. -EOPNOTSUPP when the family is not one we know.
 */
int engine_chat_format_detect(const char *jinja, EngineChatFormat *ret, char **ret_default_system);

/*
 * Renders messages in format f followed by the start of the assistant's reply. default_system (may be NULL)
 * goes first when the messages have no system message. The BOS token is not written: tokenize the result with
 * add_special, and with parse_special so that the format's tokens count as tokens. -EINVAL with a sentence for
 * a role the format cannot express, -ENOMEM.
 */
int engine_chat_format_render(EngineChatFormat f, const char *default_system, const EngineChatMessage *messages,
                              size_t n_messages, Buf *out, QdError *err);

DEFINE_TRIVIAL_CLEANUP_FUNC(EngineTemplate *, engine_template_free);
