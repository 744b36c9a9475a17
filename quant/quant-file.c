/* SPDX-License-Identifier: MIT */
/*
 * quant_file(): rewrites a GGUF file with the tensor types a mixture chooses.
 *
 * DESIGN
 * The source stays mapped (the Gguf reader's mmap) and the output streams through a GgufWriter in tensor
 * order, so memory is one converted tensor plus a row of floats per thread. Each tensor's rows are shared by
 * a small pool of worker threads that live as long as the call: the calling thread publishes a job under the
 * pool's lock and works on it too, the workers claim chunks of rows from an atomic counter, and the last one
 * to finish signals the caller. Rows are independent and each is quantized by the same function, so the
 * bytes do not depend on the number of threads. Cancellation is an atomic flag read between chunks.
 */

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "quant-internal.h"

/* GGML_QNT_VERSION: the version of the quantized formats, written into every file llama-quantize writes. */
#define QUANT_FORMAT_VERSION 2u

/* Rows are claimed in chunks of about this many elements: big enough to amortise the atomic add, small
 * enough to balance the last chunks and to notice a cancellation quickly. */
#define CHUNK_ELEMENTS 65536u

typedef struct Job {
        const uint8_t *src; /* (n_rows, src_row_bytes) */
        uint32_t src_type;
        size_t src_row_bytes;
        uint8_t *dst; /* (n_rows, dst_row_bytes) */
        uint32_t dst_type;
        size_t dst_row_bytes;
        uint64_t ne0;
        uint64_t n_rows;
        uint64_t chunk_rows;
        const atomic_bool *cancel;
} Job;

typedef struct Pool Pool;

typedef struct Worker {
        Pool *pool;
        pthread_t thread;
        float *row; /* (max_ne0) floats of scratch */
} Worker;

struct Pool {
        pthread_mutex_t lock;
        pthread_cond_t wake; /* a new job or quit, for the workers */
        pthread_cond_t done; /* busy dropped to 0, for the caller */
        /* protected by lock: */
        uint64_t generation; /* bumped for each job */
        unsigned busy;       /* workers still on the current job */
        bool quit;
        const Job *job;
        /* lock-free while a job runs: */
        atomic_uint_fast64_t next_row;
        atomic_int error; /* first failure of the job, 0 while none */
        /* owned by the caller: */
        Worker *workers; /* (n_workers) */
        unsigned n_workers;
        Worker self; /* the calling thread's scratch */
};

/* engine_fp16_to_f32() of every binary16 value: F16 is the commonest source, and a table lookup is several
 * times faster than the conversion. Filled once, read-only afterwards. */
static float fp16_table[65536];
static pthread_once_t fp16_table_once = PTHREAD_ONCE_INIT;

static void fp16_table_fill(void) {
        for (uint32_t h = 0; h < 65536; h++)
                fp16_table[h] = engine_fp16_to_f32((GgmlHalf)h);
}

/* Converts one source row to floats: in place for aligned F32, by the table for F16, else through the
 * engine's dequantizer, into scratch. Returns the row or NULL. */
static const float *source_row(const Job *j, uint64_t r, float *scratch) {
        const uint8_t *p = j->src + r * j->src_row_bytes;

        if (j->src_type == GGML_TYPE_F32 && (uintptr_t)p % sizeof(float) == 0)
                return (const float *)(const void *)p;
        if (j->src_type == GGML_TYPE_F16) {
                for (uint64_t i = 0; i < j->ne0; i++) {
                        GgmlHalf h;
                        memcpy(&h, p + 2 * i, sizeof(h));
                        scratch[i] = fp16_table[h];
                }
                return scratch;
        }
        if (engine_dequantize_row(j->src_type, p, scratch, j->ne0) < 0)
                return NULL;
        return scratch;
}

static void run_job(Pool *pool, const Job *j, float *scratch) {
        for (;;) {
                if (atomic_load_explicit(&pool->error, memory_order_relaxed) != 0)
                        return;
                if (j->cancel && atomic_load(j->cancel)) {
                        int none = 0;
                        atomic_compare_exchange_strong(&pool->error, &none, -ECANCELED);
                        return;
                }
                uint64_t r0 = atomic_fetch_add(&pool->next_row, j->chunk_rows);
                if (r0 >= j->n_rows)
                        return;
                uint64_t r1 = MIN(r0 + j->chunk_rows, j->n_rows);
                for (uint64_t r = r0; r < r1; r++) {
                        int k = quant_row(j->dst_type, source_row(j, r, scratch),
                                          j->dst + r * j->dst_row_bytes, j->ne0);
                        if (k < 0) {
                                int none = 0;
                                atomic_compare_exchange_strong(&pool->error, &none, k);
                                return;
                        }
                }
        }
}

static void *worker_main(void *userdata) {
        Worker *w = userdata;
        Pool *pool = w->pool;
        uint64_t seen = 0;

        pthread_mutex_lock(&pool->lock);
        for (;;) {
                while (!pool->quit && pool->generation == seen)
                        pthread_cond_wait(&pool->wake, &pool->lock);
                if (pool->quit)
                        break;
                seen = pool->generation;
                const Job *j = pool->job;
                pthread_mutex_unlock(&pool->lock);

                run_job(pool, j, w->row);

                pthread_mutex_lock(&pool->lock);
                if (--pool->busy == 0)
                        pthread_cond_signal(&pool->done);
        }
        pthread_mutex_unlock(&pool->lock);
        return NULL;
}

static void pool_free(Pool *pool) {
        if (!pool)
                return;
        pthread_mutex_lock(&pool->lock);
        pool->quit = true;
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
        for (unsigned i = 0; i < pool->n_workers; i++) {
                pthread_join(pool->workers[i].thread, NULL);
                free(pool->workers[i].row);
        }
        free(pool->workers);
        free(pool->self.row);
        pthread_cond_destroy(&pool->done);
        pthread_cond_destroy(&pool->wake);
        pthread_mutex_destroy(&pool->lock);
        free(pool);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Pool *, pool_free);

static int pool_new(unsigned n_threads, uint64_t max_ne0, Pool **ret) {
        _cleanup_(pool_freep) Pool *pool = NULL;
        sigset_t all, old;
        int r = 0;

        pool = calloc(1, sizeof(Pool));
        if (!pool)
                return -ENOMEM;
        pthread_mutex_init(&pool->lock, NULL);
        pthread_cond_init(&pool->wake, NULL);
        pthread_cond_init(&pool->done, NULL);
        pool->self.pool = pool;
        pool->self.row = malloc(MAX(max_ne0, 1) * sizeof(float));
        if (!pool->self.row)
                return -ENOMEM;
        if (n_threads <= 1) {
                *ret = TAKE_PTR(pool);
                return 0;
        }
        pool->workers = calloc(n_threads - 1, sizeof(Worker));
        if (!pool->workers)
                return -ENOMEM;

        /* Workers take no signals: the caller's thread (the daemon's main loop) handles them. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        for (unsigned i = 0; i < n_threads - 1; i++) {
                Worker *w = &pool->workers[i];

                w->pool = pool;
                w->row = malloc(MAX(max_ne0, 1) * sizeof(float));
                if (!w->row) {
                        r = -ENOMEM;
                        break;
                }
                r = -pthread_create(&w->thread, NULL, worker_main, w);
                if (r < 0) {
                        free(w->row);
                        break;
                }
                pool->n_workers++;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(pool);
        return 0;
}

/* Runs j on every thread of the pool, the caller's included. Returns 0 or the job's first error. */
static int pool_run(Pool *pool, const Job *j) {
        atomic_store(&pool->next_row, 0);
        atomic_store(&pool->error, 0);
        pthread_mutex_lock(&pool->lock);
        pool->job = j;
        pool->busy = pool->n_workers;
        pool->generation++;
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);

        run_job(pool, j, pool->self.row);

        pthread_mutex_lock(&pool->lock);
        while (pool->busy > 0)
                pthread_cond_wait(&pool->done, &pool->lock);
        pool->job = NULL;
        pthread_mutex_unlock(&pool->lock);
        return atomic_load(&pool->error);
}

/* ---- the file ---- */

/* Whether the rows of t can be turned into floats: float types always, quantized ones when the caller allows
 * requantizing (it compounds the errors of two quantizations) and the engine can dequantize them. */
static int check_source(const GgufTensor *t, uint32_t type, bool allow_requantize, QdError *err) {
        float probe[QK_K];
        int r;

        if (t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_BF16)
                return 0;
        if (!allow_requantize)
                return qd_error_set(
                        err, EOPNOTSUPP,
                        "Tensor '%s' is already quantized (%s): converting it to %s adds a second "
                        "quantization's error; allow requantizing to do it anyway.",
                        t->name, ggml_type_name(t->type), ggml_type_name(type));
        r = t->n_elements > 0 && ggml_type_info(t->type)->block_size <= ELEMENTSOF(probe)
                    ? engine_dequantize_row(t->type, t->data, probe, ggml_type_info(t->type)->block_size)
                    : -EOPNOTSUPP;
        if (r < 0)
                return qd_error_set(err, EOPNOTSUPP,
                                    "Tensor '%s' is stored as %s, which cannot be converted.", t->name,
                                    ggml_type_name(t->type));
        return 0;
}

static int copy_metadata(const Gguf *src, GgufWriter *w, QuantMixture mixture) {
        bool have_ftype = false, have_version = false;
        int r;

        /* Keys keep their places; the two we own are replaced where they are, or added at the end. */
        for (uint64_t i = 0; i < src->n_kv; i++) {
                const GgufKV *kv = &src->kv[i];

                if (streq(kv->key, "general.file_type")) {
                        r = gguf_writer_add_u32(w, kv->key, (uint32_t)mixture);
                        have_ftype = true;
                } else if (streq(kv->key, "general.quantization_version")) {
                        r = gguf_writer_add_u32(w, kv->key, QUANT_FORMAT_VERSION);
                        have_version = true;
                } else
                        r = gguf_writer_add_value(w, kv->key, &kv->value);
                if (r < 0)
                        return r;
        }
        if (!have_version &&
            (r = gguf_writer_add_u32(w, "general.quantization_version", QUANT_FORMAT_VERSION)) < 0)
                return r;
        if (!have_ftype && (r = gguf_writer_add_u32(w, "general.file_type", (uint32_t)mixture)) < 0)
                return r;
        return 0;
}

static int write_error(QdError *err, int r) {
        if (r == -ENOMEM)
                return qd_error_set(err, r, "Out of memory while writing the quantized file.");
        return qd_error_set(err, r, "Failed to write the quantized file: %s.", strerror(-r));
}

int quant_file(const Gguf *src, int fd, const QuantParams *params, QdError *err) {
        _cleanup_free_ uint32_t *types = NULL;
        _cleanup_free_ uint8_t *buf = NULL;
        _cleanup_(gguf_writer_freep) GgufWriter *w = NULL;
        _cleanup_(pool_freep) Pool *pool = NULL;
        QuantModelShape shape;
        uint64_t max_ne0 = 0, max_out = 0;
        unsigned n_threads;
        int r;

        if (!src || fd < 0 || !params)
                return qd_error_set(err, EINVAL, "Missing arguments to quantize a file.");
        if (params->cancel && atomic_load(params->cancel))
                return qd_error_set(err, ECANCELED, "Quantization was cancelled.");

        r = quant_model_shape_from_gguf(src, &shape);
        if (r < 0)
                return qd_error_set(err, r, "The model's architecture keys are malformed.");
        types = calloc(MAX(src->n_tensors, 1), sizeof(uint32_t));
        if (!types)
                return -ENOMEM;
        r = quant_choose_types(params, &shape, src->tensors, src->n_tensors, types, err);
        if (r < 0)
                return r;

        r = gguf_writer_new(&w, fd, src->alignment);
        if (r < 0)
                return qd_error_set(err, r, "Cannot write a GGUF file to descriptor %d.", fd);
        r = copy_metadata(src, w, params->mixture);
        if (r < 0)
                return write_error(err, r);

        for (uint64_t i = 0; i < src->n_tensors; i++) {
                const GgufTensor *t = &src->tensors[i];
                uint64_t out;

                if (types[i] != t->type) {
                        r = check_source(t, types[i], params->allow_requantize, err);
                        if (r < 0)
                                return r;
                        r = ggml_row_size(types[i], t->n_elements, &out);
                        if (r < 0)
                                return qd_error_set(err, r, "Tensor '%s' does not fit type %s.", t->name,
                                                    ggml_type_name(types[i]));
                        max_ne0 = MAX(max_ne0, t->ne[0]);
                        max_out = MAX(max_out, out);
                }
                r = gguf_writer_add_tensor(w, t->name, types[i], t->n_dims, t->ne);
                if (r < 0)
                        return qd_error_set(err, r, "Cannot declare tensor '%s' as %s.", t->name,
                                            ggml_type_name(types[i]));
        }

        n_threads = params->n_threads;
        if (n_threads == 0) {
                long n = sysconf(_SC_NPROCESSORS_ONLN);
                n_threads = n > 0 ? (unsigned)MIN(n, 256) : 1;
        }
        if (max_out > 0) {
                if (max_out > SIZE_MAX)
                        return qd_error_set(err, EMSGSIZE,
                                            "A tensor is too large to convert on this machine.");
                buf = malloc(max_out);
                if (!buf)
                        return qd_error_set(err, ENOMEM,
                                            "Out of memory for a converted tensor of %" PRIu64 " bytes.",
                                            max_out);
                r = pool_new(n_threads, max_ne0, &pool);
                if (r < 0)
                        return qd_error_set(err, r, "Cannot start %u quantization threads: %s.", n_threads,
                                            strerror(-r));
        }

        (void)pthread_once(&fp16_table_once, fp16_table_fill);
        r = gguf_writer_write_header(w);
        if (r < 0)
                return write_error(err, r);

        for (uint64_t i = 0; i < src->n_tensors; i++) {
                const GgufTensor *t = &src->tensors[i];

                if (params->cancel && atomic_load(params->cancel))
                        return qd_error_set(err, ECANCELED, "Quantization was cancelled.");
                if (types[i] == t->type)
                        r = gguf_writer_write_tensor_data(w, t->data, t->size);
                else {
                        uint64_t src_row, dst_row;

                        /* Both fit: the reader checked the source, the loop above the destination. */
                        (void)ggml_row_size(t->type, t->ne[0], &src_row);
                        (void)ggml_row_size(types[i], t->ne[0], &dst_row);
                        Job j = {
                                .src = t->data,
                                .src_type = t->type,
                                .src_row_bytes = src_row,
                                .dst = buf,
                                .dst_type = types[i],
                                .dst_row_bytes = dst_row,
                                .ne0 = t->ne[0],
                                .n_rows = t->n_elements / t->ne[0],
                                .chunk_rows = MAX(1u, CHUNK_ELEMENTS / t->ne[0]),
                                .cancel = params->cancel,
                        };
                        r = pool_run(pool, &j);
                        if (r == -ECANCELED)
                                return qd_error_set(err, r, "Quantization was cancelled.");
                        if (r < 0)
                                return qd_error_set(err, r, "Failed to convert tensor '%s' to %s.", t->name,
                                                    ggml_type_name(types[i]));
                        r = gguf_writer_write_tensor_data(w, buf, j.n_rows * dst_row);
                }
                if (r < 0)
                        return write_error(err, r);
                if (params->progress)
                        params->progress(params->userdata, i, src->n_tensors, t->name, types[i]);
        }
        r = gguf_writer_finish(w);
        if (r < 0)
                return write_error(err, r);
        return 0;
}
