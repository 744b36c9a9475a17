/* SPDX-License-Identifier: MIT */
/*
 * The scheduler: which models are loaded, who uses them, when they go; and the executor thread that owns the
 * loaded models and runs every active sequence's forward pass.
 *
 * DESIGN
 * Main thread: a LoadedModel per model in memory, reference-counted by the generations and other requests
 * that use it. When the last user leaves, its keep_alive decides: 0 unloads now, a negative value keeps it
 * forever, anything else arms a timer. A new model is admitted only when MaxLoadedModels= and the memory
 * budget (the backend's estimate of weights + KV cache + scratch for NumParallel= sequences) allow;
 * otherwise the idle model that expires first is evicted, and when no model is idle the request waits until
 * one is, or fails with ENOSPC after LoadTimeout=.
 *
 * GPU placement. RAM and GPU memory are accounted separately: the backend's estimate is a table over the
 * splits "first n layers on the GPU, the rest on the CPU", and a model counts its split's host bytes against
 * MemoryBudget= and its GPU bytes against the GPU. What the GPU has room for is the device's free memory
 * now (cudaMemGetInfo(), so other processes count), less GpuOverhead=, less what our models have reserved
 * but not allocated yet (the KV caches of NumParallel= slots), and within GpuMemoryBudget=; while a model
 * with GPU layers is loading, its memory is in flux and the next placement on the GPU waits for it. A model
 * gets num_gpu layers (all when -1) if they fit; if not, the idle model on the GPU that expires first is
 * evicted and the placement tried again once its memory is back; only when no idle model is left on the GPU
 * does the new one settle for as many layers as fit (partial offload), the rest then counting against the
 * memory budget, which may in turn evict models from RAM. Reserving KV caches that busy generations already
 * allocated counts them twice, which errs on the side of loads that succeed. After the load the model's GPU
 * bytes are what the backend says it holds (plus its KV reservation).
 *
 * A loaded model serves requests whose settings it meets: a context at least the request's default, or the
 * same context when the request names one, and the same num_gpu (clamped) and num_thread when the request
 * names them. Otherwise an idle model is reloaded with the new settings, as Ollama does; a busy one serves
 * the request as it is. Tokenize and Detokenize take a loaded model whatever its settings.
 *
 * Executor thread (one for now, for the CPU and the GPU alike: the engine runs a split model's layers on
 * both in one call; the design's thread per device comes with several GPUs): loads and unloads models and
 * runs continuous batching. Every step it gathers the active sequences of a model, a prompt chunk for those
 * still reading their prompt and one token for the others, and runs them through one backend decode call, so
 * concurrent requests share each pass over the weights. Sampling, stop strings and UTF-8 assembly happen per
 * sequence on the executor; text goes to the main thread as posted chunks, in order, followed by the final
 * statistics.
 *
 * Ownership: a Gen (one generation) is created by the main thread, handed to the executor, and handed back
 * with the "done" post; the main thread frees it. Cancellation is an atomic flag checked every step.
 */

#include <assert.h>
#include <inttypes.h>
#include <time.h>

#include "daemon-internal.h"
#include "engine.h"

#define PROMPT_CHUNK 256U

typedef enum ModelState {
        MODEL_LOADING,
        MODEL_READY,
        MODEL_UNLOADING,
        MODEL_FAILED,
        _MODEL_STATE_MAX,
        _MODEL_STATE_INVALID = -EINVAL,
} ModelState;

typedef struct Gen Gen;
typedef struct Waiter Waiter;
typedef struct RoomWaiter RoomWaiter;

typedef struct LoadedModel {
        Scheduler *scheduler;
        char *name;
        char *path;
        char *digest;     /* the store's ID of the model; NULL when the store has none */
        uint64_t ram;     /* host bytes counted against MemoryBudget= */
        uint64_t vram;    /* GPU bytes: estimated until loaded, then what the model holds plus its KV */
        uint64_t vram_kv; /* the KV caches' part of vram */
        uint32_t n_ctx;
        uint32_t n_parallel;
        uint32_t n_layer;
        uint32_t n_gpu_layers; /* the first layers on the GPU */
        uint32_t gpu_max;      /* layers the GPU could take: the model's, 0 without a GPU that runs it */
        uint32_t gpu_target;   /* layers the load asked for: num_gpu clamped to gpu_max */
        unsigned threads;      /* CPU threads it was loaded with (Threads= when the request named none) */
        BackendSplit *splits;  /* (n_splits) the estimate, until the load is done */
        size_t n_splits;

        /* Main thread. */
        ModelState state;
        unsigned n_users;      /* generations, loads and tokenizations in flight */
        int64_t keep_alive_ns; /* from the latest request */
        uint64_t expires_ns;   /* CLOCK_MONOTONIC; UINT64_MAX while in use or kept forever */
        sd_event_source *timer;
        Waiter *waiters; /* requests waiting for the load */
        Gen *queued;     /* generations waiting for a free slot (FIFO through queued_tail) */
        Gen *queued_tail;
        unsigned n_running; /* generations handed to the executor */
        uint64_t load_started_ns, load_ns;
        int load_error;
        QdError load_err;

        /* Set by the executor during the load, read by the main thread after the "loaded" post. */
        void *model;
        BackendModelInfo info;

        LIST_FIELDS(struct LoadedModel, models);
} LoadedModel;

typedef enum WaiterKind {
        WAITER_LOAD,
        WAITER_GENERATE,
        WAITER_TOKENIZE,
        WAITER_EMBED,
        _WAITER_KIND_MAX,
        _WAITER_KIND_INVALID = -EINVAL,
} WaiterKind;

/* A request waiting for its model to be loaded (or for room to load it). */
struct Waiter {
        WaiterKind kind;
        Request *request;
        Gen *gen;        /* WAITER_GENERATE */
        char *text;      /* WAITER_TOKENIZE: text, or */
        int32_t *tokens; /* tokens to detokenize */
        size_t n_tokens;
        char **inputs; /* WAITER_EMBED: texts to embed */
        bool waited;   /* waited for the model's load */
        struct Waiter *next;
};

struct Gen {
        Scheduler *scheduler;
        LoadedModel *lm;
        Request *request;
        GenerateParams p;
        atomic_bool cancel;
        struct Gen *queue_next; /* the model's queue (main) or the executor's inbox (executor lock) */

        /* Executor thread. */
        void *seq;
        void *sampler;
        int32_t *prompt; /* (n_prompt) */
        size_t n_prompt, prompt_done;
        int32_t next_token; /* sampled, to be fed next step */
        uint32_t n_generated;
        Buf held;         /* bytes not yet sent: an incomplete UTF-8 sequence */
        EngineStop *stop; /* the request's stop strings (made on the main thread) */
        bool finished;
        bool stepped;            /* took part in the current round */
        const char *done_reason; /* "stop", "length", "cancel" */
        int result;
        QdError err;
        uint64_t start_ns, prompt_ns, eval_ns;
        uint64_t queued_ns; /* main thread: when the request came */
        uint64_t load_ns;   /* main thread: the load it waited for; 0 when the model was ready */
        LIST_FIELDS(struct Gen, active);

        Buf response; /* main thread: the text of a non-streamed generation */
};

typedef enum CommandKind {
        CMD_LOAD,
        CMD_UNLOAD,
        CMD_EMBED,
        _CMD_KIND_MAX,
        _CMD_KIND_INVALID = -EINVAL,
} CommandKind;

typedef struct Embedding Embedding;

typedef struct Command {
        CommandKind kind;
        LoadedModel *lm;
        Embedding *embedding; /* CMD_EMBED */
        struct Command *next;
} Command;

/* One Embed request: its inputs tokenized on the main thread, embedded on the executor. */
struct Embedding {
        LoadedModel *lm;
        Request *request;
        int32_t **tokens; /* (n_inputs) token arrays */
        size_t *n_tokens; /* (n_inputs) */
        size_t n_inputs;
        uint32_t n_embd;
        float *vectors; /* (n_inputs, n_embd), written by the executor */
        int result;
        QdError err;
};

struct Scheduler {
        Manager *manager;
        const BackendOps *ops;
        LoadedModel *models;
        unsigned n_models;        /* in memory or loading, unloading included */
        uint64_t used;            /* host bytes of those models (LoadedModel.ram) */
        uint64_t used_vram;       /* GPU bytes of those models (LoadedModel.vram) */
        RoomWaiter *room_waiters; /* requests for models not yet admitted, oldest first */
        bool stopped;
        sd_event_source *room_timer;

        pthread_t thread;
        bool thread_started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        Command *commands, *commands_tail; /* protected by lock */
        Gen *inbox;                        /* protected by lock */
        bool stop;                         /* protected by lock */
};

static void model_maybe_expire(LoadedModel *lm);
static void model_release(LoadedModel *lm);
static void scheduler_admit(Scheduler *s);

/* ---- posts from the executor ---- */

typedef struct Chunk {
        Gen *gen;
        char *text;
        int32_t token;
} Chunk;

static void executor_post(Scheduler *s, void (*fn)(Manager *m, void *u), void *userdata) {
        /* A lost post would leave a request unanswered forever; memory comes back eventually. */
        while (manager_post(s->manager, fn, userdata) < 0)
                usleep(1000);
}

/* ---- the executor thread ---- */

static void executor_send(Scheduler *s, CommandKind kind, LoadedModel *lm, Embedding *embedding) {
        Command *c;
        while (!(c = calloc(1, sizeof(*c))))
                usleep(1000);
        c->kind = kind;
        c->lm = lm;
        c->embedding = embedding;
        pthread_mutex_lock(&s->lock);
        if (s->commands_tail)
                s->commands_tail->next = c;
        else
                s->commands = c;
        s->commands_tail = c;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
}

static void model_loaded_main(Manager *m, void *userdata);
static void model_unloaded_main(Manager *m, void *userdata);
static void gen_chunk_main(Manager *m, void *userdata);
static void gen_done_main(Manager *m, void *userdata);
static void embed_done_main(Manager *m, void *userdata);

static void gen_finish(Gen *g, int result, const char *reason) {
        g->finished = true;
        g->result = result;
        g->done_reason = reason;
}

/* How many bytes at the end of b form an incomplete UTF-8 sequence. */
static size_t utf8_incomplete_tail(const uint8_t *b, size_t n) {
        for (size_t back = 1; back <= MIN(n, (size_t)4); back++) {
                uint8_t c = b[n - back];
                if ((c & 0xc0) == 0x80)
                        continue;
                size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
                return need > back ? back : 0;
        }
        return 0;
}

/*
 * Sends what of g->held can no longer change: whole UTF-8 characters (unless final), passed through the stop
 * strings, which hold back what may begin one and end the generation when one appears.
 */
static int gen_emit(Gen *g, int32_t token, bool final) {
        Scheduler *s = g->scheduler;
        _cleanup_(buf_free) Buf out = {};
        size_t n = g->held.len;
        int k = 0;

        if (!final)
                n -= MIN(utf8_incomplete_tail(g->held.data, n), n);
        if (n > 0)
                k = engine_stop_push(g->stop, (const char *)g->held.data, n, &out);
        if (k < 0)
                return k;
        memmove(g->held.data, g->held.data + n, g->held.len - n);
        g->held.len -= n;
        if (k > 0)
                gen_finish(g, 0, "stop");
        else if (final) {
                k = engine_stop_flush(g->stop, &out);
                if (k < 0)
                        return k;
        }
        if (out.len == 0 && !(g->p.return_tokens && token >= 0))
                return 0;

        Chunk *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->gen = g;
        c->token = token;
        c->text = out.len > 0 ? buf_steal_str(&out) : strdup("");
        if (!c->text) {
                free(c);
                return -ENOMEM;
        }
        executor_post(s, gen_chunk_main, c);
        return 0;
}

static int gen_start(Scheduler *s, Gen *g) {
        LoadedModel *lm = g->lm;
        const BackendOps *ops = s->ops;
        int k;

        g->start_ns = now_ns();
        if (!g->prompt) {
                k = ops->tokenize(lm->model, g->p.prompt, strlen(g->p.prompt), !g->p.raw, &g->prompt,
                                  &g->n_prompt);
                if (k < 0)
                        return qd_error_set(&g->err, k, "Failed to tokenize the prompt.");
        }
        if (g->n_prompt == 0)
                return qd_error_set(&g->err, EINVAL,
                                    "The prompt is empty and the model adds no start token.");
        if (g->n_prompt >= lm->n_ctx)
                return qd_error_set(&g->err, EMSGSIZE,
                                    "The prompt has %zu tokens; the context holds %" PRIu32 ".", g->n_prompt,
                                    lm->n_ctx);
        k = ops->seq_new(lm->model, lm->n_ctx, &g->seq);
        if (k < 0)
                return qd_error_set(&g->err, k, "Failed to allocate the sequence's context.");
        k = ops->sampler_new(lm->model, &g->p.sampler, &g->sampler);
        if (k < 0)
                return qd_error_set(&g->err, k, "Failed to set up sampling.");
        return 0;
}

static void gen_release(Scheduler *s, Gen *g) {
        if (g->sampler)
                s->ops->sampler_free(g->sampler);
        if (g->seq)
                s->ops->seq_free(g->seq);
        g->sampler = g->seq = NULL;
        buf_free(&g->held);
}

/* One continuous-batching step over the active generations of lm. */
static void executor_step(Scheduler *s, LoadedModel *lm, Gen **gens, size_t n) {
        const BackendOps *ops = s->ops;
        void *seqs[n];
        const int32_t *tokens[n];
        uint32_t n_tokens[n];
        float *logits[n];
        bool sampling[n];
        bool cancel = false;
        QdError err = {};

        for (size_t i = 0; i < n; i++) {
                Gen *g = gens[i];
                seqs[i] = g->seq;
                if (g->prompt_done < g->n_prompt) {
                        tokens[i] = g->prompt + g->prompt_done;
                        n_tokens[i] = (uint32_t)MIN(g->n_prompt - g->prompt_done, (size_t)PROMPT_CHUNK);
                } else {
                        tokens[i] = &g->next_token;
                        n_tokens[i] = 1;
                }
                sampling[i] = g->prompt_done + n_tokens[i] >= g->n_prompt;
                logits[i] = NULL;
        }
        float *space = malloc(sizeof(float) * lm->info.n_vocab * n);
        if (!space) {
                for (size_t i = 0; i < n; i++)
                        gen_finish(gens[i], qd_error_set(&gens[i]->err, ENOMEM, "Out of memory."), NULL);
                return;
        }
        for (size_t i = 0; i < n; i++)
                logits[i] = space + (size_t)lm->info.n_vocab * i;

        uint64_t t0 = now_ns();
        int k = ops->decode(lm->model, seqs, tokens, n_tokens, n, logits, &cancel, &err);
        uint64_t dt = now_ns() - t0;
        if (k < 0) {
                for (size_t i = 0; i < n; i++)
                        gen_finish(gens[i],
                                   qd_error_set(&gens[i]->err, k, "%s",
                                                err.code ? err.msg : "The forward pass failed."),
                                   NULL);
                free(space);
                return;
        }

        for (size_t i = 0; i < n; i++) {
                Gen *g = gens[i];
                bool was_prompt = g->prompt_done < g->n_prompt;
                if (was_prompt) {
                        g->prompt_done += n_tokens[i];
                        g->prompt_ns += dt;
                } else {
                        g->eval_ns += dt;
                }
                if (!sampling[i])
                        continue;
                int32_t t = ops->sample(g->sampler, logits[i]);
                if (t < 0 || (uint32_t)t >= lm->info.n_vocab) {
                        gen_finish(g, qd_error_set(&g->err, EIO, "Sampling failed."), NULL);
                        continue;
                }
                if (ops->is_eog(lm->model, t)) {
                        (void)gen_emit(g, -1, true);
                        gen_finish(g, 0, "stop");
                        continue;
                }
                g->n_generated++;
                g->next_token = t;
                if (ops->token_piece(lm->model, t, &g->held) < 0 || gen_emit(g, t, false) < 0) {
                        gen_finish(g, qd_error_set(&g->err, ENOMEM, "Out of memory."), NULL);
                        continue;
                }
                if (g->finished)
                        continue;
                /* Ollama's num_predict: -1 no limit, -2 until the context is full; the context ends it
                 * anyway. */
                if (engine_predict_done(g->p.num_predict, g->n_generated,
                                        (uint32_t)(g->n_prompt + g->n_generated), lm->n_ctx)) {
                        (void)gen_emit(g, -1, true);
                        gen_finish(g, 0, "length");
                }
        }
        free(space);
}

static void *executor_main(void *userdata) {
        Scheduler *s = userdata;
        Gen *active = NULL;
        bool stop = false;

        for (;;) {
                pthread_mutex_lock(&s->lock);
                while (!s->stop && !s->commands && !s->inbox && !active)
                        pthread_cond_wait(&s->cond, &s->lock);
                Command *cmds = s->commands;
                s->commands = s->commands_tail = NULL;
                Gen *inbox = s->inbox;
                s->inbox = NULL;
                stop = s->stop;
                pthread_mutex_unlock(&s->lock);

                /* New generations join the batch. */
                while (inbox) {
                        Gen *g = inbox;
                        inbox = g->queue_next;
                        g->queue_next = NULL;
                        if (gen_start(s, g) < 0)
                                gen_finish(g, g->err.code ? -g->err.code : -EIO, NULL);
                        LIST_PREPEND(active, active, g);
                }
                while (cmds) {
                        Command *c = cmds;
                        cmds = c->next;
                        LoadedModel *lm = c->lm;
                        if (c->kind == CMD_LOAD) {
                                BackendLoadParams lp = {
                                        .threads = lm->threads,
                                        .n_gpu_layers = lm->n_gpu_layers,
                                };
                                lm->load_error = s->ops->load(lm->path, &lp, &lm->model, &lm->load_err);
                                /* The estimate was short (another process took memory, or the backend
                                 * allocates more than it said): fewer layers rather than no model. */
                                while (lm->load_error == -ENOSPC && lp.n_gpu_layers > 0) {
                                        uint32_t fewer = lp.n_gpu_layers - MAX(lp.n_gpu_layers / 4, 1U);
                                        log_warning("Model '%s' did not fit on the GPU with %" PRIu32
                                                    " layers (%s); trying %" PRIu32 ".",
                                                    lm->name, lp.n_gpu_layers, lm->load_err.msg, fewer);
                                        qd_error_clear(&lm->load_err);
                                        lp.n_gpu_layers = fewer;
                                        lm->load_error =
                                                s->ops->load(lm->path, &lp, &lm->model, &lm->load_err);
                                }
                                /* A GPU backend that cannot run this model after all: the CPU can. */
                                if (lm->load_error == -EOPNOTSUPP && lp.n_gpu_layers > 0) {
                                        log_warning(
                                                "Model '%s' cannot run on the GPU (%s); loading it on the "
                                                "CPU.",
                                                lm->name, lm->load_err.msg);
                                        qd_error_clear(&lm->load_err);
                                        lp.n_gpu_layers = 0;
                                        lm->load_error =
                                                s->ops->load(lm->path, &lp, &lm->model, &lm->load_err);
                                }
                                if (lm->load_error >= 0)
                                        s->ops->info(lm->model, &lm->info);
                                executor_post(s, model_loaded_main, lm);
                        } else if (c->kind == CMD_EMBED) {
                                Embedding *e = c->embedding;
                                for (size_t i = 0; e->result >= 0 && i < e->n_inputs; i++)
                                        e->result = s->ops->embed(lm->model, e->tokens[i],
                                                                  (uint32_t)e->n_tokens[i],
                                                                  e->vectors + i * e->n_embd, &e->err);
                                executor_post(s, embed_done_main, e);
                        } else {
                                if (lm->model)
                                        s->ops->unload(lm->model);
                                lm->model = NULL;
                                executor_post(s, model_unloaded_main, lm);
                        }
                        free(c);
                }

                /* One step per model that has active generations. */
                Gen *g, *next;
                LIST_FOREACH(active, g, active)
                if ((stop || atomic_load(&g->cancel)) && !g->finished)
                        gen_finish(g, qd_error_set(&g->err, ECANCELED, "The generation was cancelled."),
                                   "cancel");
                for (;;) {
                        LoadedModel *lm = NULL;
                        size_t n = 0;
                        LIST_FOREACH(active, g, active)
                        if (!g->finished && !g->stepped && (!lm || g->lm == lm)) {
                                lm = g->lm;
                                n++;
                        }
                        if (!lm)
                                break;
                        Gen *batch[n];
                        size_t i = 0;
                        LIST_FOREACH(active, g, active)
                        if (!g->finished && g->lm == lm && !g->stepped) {
                                batch[i++] = g;
                                g->stepped = true;
                        }
                        executor_step(s, lm, batch, n);
                }
                LIST_FOREACH_SAFE(active, g, next, active) {
                        g->stepped = false;
                        if (!g->finished)
                                continue;
                        LIST_REMOVE(active, active, g);
                        gen_release(s, g);
                        executor_post(s, gen_done_main, g);
                }
                if (stop && !active)
                        return NULL;
        }
}

/* ---- main thread: models ---- */

static LoadedModel *model_find(Scheduler *s, const char *name) {
        LoadedModel *lm;
        LIST_FOREACH(models, lm, s->models)
        if (streq(lm->name, name) && lm->state != MODEL_UNLOADING)
                return lm;
        return NULL;
}

static void model_free(LoadedModel *lm) {
        sd_event_source_disable_unref(lm->timer);
        free(lm->name);
        free(lm->path);
        free(lm->digest);
        free(lm->splits);
        free(lm);
}

static void waiter_free(Waiter *w) {
        request_unref(w->request);
        free(w->text);
        free(w->tokens);
        strv_free(w->inputs);
        free(w);
}

static void embedding_free(Embedding *e) {
        if (!e)
                return;
        for (size_t i = 0; i < e->n_inputs; i++)
                free(e->tokens ? e->tokens[i] : NULL);
        free(e->tokens);
        free(e->n_tokens);
        free(e->vectors);
        request_unref(e->request);
        free(e);
}

static void embed_done_main(Manager *m, void *userdata) {
        Embedding *e = userdata;
        LoadedModel *lm = e->lm;
        Reply rep;

        if (e->result < 0)
                request_reply_error(e->request, e->result, "%s",
                                    e->err.code ? e->err.msg : "Embedding failed.");
        else {
                size_t n_tokens = 0;
                reply_init(&rep);
                int k = msgpack_pack_map(&rep.pk, 3) < 0 ||
                                        proto_pack_kv_str(&rep.pk, "model", lm->name) < 0 ||
                                        proto_pack_key(&rep.pk, "embeddings") < 0 ||
                                        msgpack_pack_array(&rep.pk, e->n_inputs) < 0
                                ? -ENOMEM
                                : 0;
                for (size_t i = 0; k >= 0 && i < e->n_inputs; i++) {
                        n_tokens += e->n_tokens[i];
                        k = msgpack_pack_array(&rep.pk, e->n_embd) < 0 ? -ENOMEM : 0;
                        for (uint32_t j = 0; k >= 0 && j < e->n_embd; j++)
                                k = msgpack_pack_float(&rep.pk, e->vectors[i * e->n_embd + j]) < 0 ? -ENOMEM
                                                                                                   : 0;
                }
                if (k >= 0)
                        k = proto_pack_kv_u64(&rep.pk, "prompt_eval_count", n_tokens);
                if (k >= 0)
                        request_reply(e->request, &rep);
                else
                        request_reply_error(e->request, k, NULL);
                reply_done(&rep);
        }
        embedding_free(e);
        model_release(lm);
}

/* Tokenizes the inputs and hands them to the executor; the model's user count stays up until it is done. */
static void embed_start(Scheduler *s, LoadedModel *lm, Waiter *w) {
        size_t n = 0;
        while (w->inputs[n])
                n++;
        Embedding *e = calloc(1, sizeof(*e));
        if (e) {
                e->lm = lm;
                e->request = request_ref(w->request);
                e->n_inputs = n;
                e->n_embd = lm->info.n_embd;
                e->tokens = calloc(MAX(n, (size_t)1), sizeof(int32_t *));
                e->n_tokens = calloc(MAX(n, (size_t)1), sizeof(size_t));
                e->vectors = calloc(MAX(n * e->n_embd, (size_t)1), sizeof(float));
        }
        if (!e || !e->tokens || !e->n_tokens || !e->vectors) {
                request_reply_error(w->request, ENOMEM, NULL);
                embedding_free(e);
                model_release(lm);
                return;
        }
        for (size_t i = 0; i < n; i++) {
                int k = s->ops->tokenize(lm->model, w->inputs[i], strlen(w->inputs[i]), true, &e->tokens[i],
                                         &e->n_tokens[i]);
                if (k < 0 || e->n_tokens[i] == 0 || e->n_tokens[i] > lm->n_ctx) {
                        request_reply_error(w->request, k < 0 ? k : EMSGSIZE,
                                            k < 0 ? "Failed to tokenize input %zu."
                                                  : "Input %zu is empty or longer than the context.",
                                            i);
                        embedding_free(e);
                        model_release(lm);
                        return;
                }
        }
        executor_send(s, CMD_EMBED, lm, e);
}

static void gen_free(Gen *g) {
        if (!g)
                return;
        if (g->request) {
                request_set_cancel(g->request, NULL, NULL);
                request_unref(g->request);
        }
        generate_params_done(&g->p);
        free(g->prompt);
        buf_free(&g->held);
        buf_free(&g->response);
        engine_stop_free(g->stop);
        free(g);
}

static void model_unload(LoadedModel *lm) {
        Scheduler *s = lm->scheduler;

        if (lm->state == MODEL_UNLOADING)
                return;
        log_info("Unloading model '%s'.", lm->name);
        lm->state = MODEL_UNLOADING;
        lm->timer = sd_event_source_disable_unref(lm->timer);
        executor_send(s, CMD_UNLOAD, lm, NULL);
}

static int model_timer(sd_event_source *src, uint64_t usec, void *userdata) {
        LoadedModel *lm = userdata;
        if (lm->n_users == 0 && lm->state == MODEL_READY)
                model_unload(lm);
        return 0;
}

/* The last user left: keep_alive decides what happens next. */
static void model_maybe_expire(LoadedModel *lm) {
        Scheduler *s = lm->scheduler;

        if (lm->n_users > 0 || lm->state != MODEL_READY)
                return;
        if (lm->keep_alive_ns == 0) {
                model_unload(lm);
                return;
        }
        if (lm->keep_alive_ns < 0) {
                lm->expires_ns = UINT64_MAX;
        } else {
                lm->expires_ns = now_ns() + (uint64_t)lm->keep_alive_ns;
                uint64_t usec = lm->expires_ns / 1000;
                if (lm->timer)
                        (void)sd_event_source_set_time(lm->timer, usec),
                                (void)sd_event_source_set_enabled(lm->timer, SD_EVENT_ONESHOT);
                else if (sd_event_add_time(s->manager->event, &lm->timer, CLOCK_MONOTONIC, usec, 1000,
                                           model_timer, lm) < 0)
                        log_warning("Failed to arm the keep_alive timer of '%s'; it stays loaded.",
                                    lm->name);
        }
        /* Someone may be waiting for room that an idle model can make. */
        scheduler_admit(s);
}

static void model_use(LoadedModel *lm, int64_t keep_alive_ns) {
        lm->n_users++;
        lm->keep_alive_ns = keep_alive_ns;
        lm->expires_ns = UINT64_MAX;
        if (lm->timer)
                (void)sd_event_source_set_enabled(lm->timer, SD_EVENT_OFF);
}

static void model_release(LoadedModel *lm) {
        assert(lm->n_users > 0);
        lm->n_users--;
        model_maybe_expire(lm);
}

static void reply_loaded(Request *r, LoadedModel *lm) {
        Reply rep;
        reply_init(&rep);
        if (msgpack_pack_map(&rep.pk, 3) >= 0 && proto_pack_kv_str(&rep.pk, "model", lm->name) >= 0 &&
            proto_pack_kv_u64(&rep.pk, "size", lm->ram + lm->vram) >= 0 &&
            proto_pack_kv_u64(&rep.pk, "load_duration_ns", lm->load_ns) >= 0)
                request_reply(r, &rep);
        else
                request_reply_error(r, ENOMEM, NULL);
        reply_done(&rep);
}

/* Hands a generation to the executor, or queues it for a slot. */
static void gen_submit(Scheduler *s, Gen *g) {
        LoadedModel *lm = g->lm;

        if (s->stopped) {
                request_reply_error(g->request, ESHUTDOWN, "The daemon is shutting down.");
                gen_free(g);
                lm->n_users--;
                return;
        }
        if (lm->n_running >= lm->n_parallel) {
                g->queue_next = NULL;
                if (lm->queued_tail)
                        lm->queued_tail->queue_next = g;
                else
                        lm->queued = g;
                lm->queued_tail = g;
                return;
        }
        lm->n_running++;
        g->queue_next = NULL;
        pthread_mutex_lock(&s->lock);
        g->queue_next = s->inbox;
        s->inbox = g;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
}

static int tokenize_reply(Scheduler *s, Request *r, LoadedModel *lm, const char *text, const int32_t *tokens,
                          size_t n_tokens) {
        Reply rep;
        int k;

        reply_init(&rep);
        if (text) {
                _cleanup_free_ int32_t *ids = NULL;
                size_t n = 0;
                k = s->ops->tokenize(lm->model, text, strlen(text), false, &ids, &n);
                if (k >= 0)
                        k = msgpack_pack_map(&rep.pk, 1) < 0 || proto_pack_key(&rep.pk, "tokens") < 0 ||
                                            msgpack_pack_array(&rep.pk, n) < 0
                                    ? -ENOMEM
                                    : 0;
                for (size_t i = 0; k >= 0 && i < n; i++)
                        k = msgpack_pack_int32(&rep.pk, ids[i]) < 0 ? -ENOMEM : 0;
        } else {
                Buf b = {};
                k = 0;
                for (size_t i = 0; k >= 0 && i < n_tokens; i++) {
                        if ((uint32_t)tokens[i] >= lm->info.n_vocab) {
                                buf_free(&b);
                                reply_done(&rep);
                                request_reply_error(r, EINVAL,
                                                    "Token %" PRId32
                                                    " is not in the vocabulary of '%s' (%" PRIu32
                                                    " tokens).",
                                                    tokens[i], lm->name, lm->info.n_vocab);
                                return 0;
                        }
                        k = s->ops->token_piece(lm->model, tokens[i], &b);
                }
                if (k >= 0) {
                        k = msgpack_pack_map(&rep.pk, 1) < 0 || proto_pack_key(&rep.pk, "text") < 0 ||
                                            msgpack_pack_str_with_body(
                                                    &rep.pk, b.data ? (const char *)b.data : "", b.len) < 0
                                    ? -ENOMEM
                                    : 0;
                }
                buf_free(&b);
        }
        if (k < 0)
                request_reply_error(r, k, "Failed to tokenize.");
        else
                request_reply(r, &rep);
        reply_done(&rep);
        return 0;
}

/* Serves one waiter of a model that is ready or failed; frees w. */
static void serve_one(LoadedModel *lm, Waiter *w) {
        Scheduler *s = lm->scheduler;

        if (lm->state == MODEL_FAILED) {
                request_reply_error(w->request, lm->load_error, "%s",
                                    lm->load_err.code ? lm->load_err.msg : "Failed to load the model.");
                lm->n_users--;
        } else if (w->kind == WAITER_GENERATE) {
                Gen *g = TAKE_PTR(w->gen);
                g->lm = lm;
                g->load_ns = w->waited ? lm->load_ns : 0;
                if (request_is_cancelled(w->request)) {
                        request_reply_error(w->request, ECANCELED, "The generation was cancelled.");
                        gen_free(g);
                        lm->n_users--;
                } else
                        /* The model's user count stays up until the generation is done. */
                        gen_submit(s, g);
        } else if (w->kind == WAITER_LOAD) {
                reply_loaded(w->request, lm);
                lm->n_users--;
        } else if (w->kind == WAITER_EMBED) {
                /* The model's user count stays up until the executor is done. */
                embed_start(s, lm, w);
        } else {
                (void)tokenize_reply(s, w->request, lm, w->text, w->tokens, w->n_tokens);
                lm->n_users--;
        }
        if (w->gen)
                gen_free(w->gen);
        w->gen = NULL;
        waiter_free(w);
}

/* The model is ready (or failed): let its waiters go, oldest first. */
static void model_serve_waiters(LoadedModel *lm) {
        Waiter *list = TAKE_PTR(lm->waiters), *rev = NULL;

        while (list) {
                Waiter *w = list;
                list = w->next;
                w->next = rev;
                rev = w;
        }
        while (rev) {
                Waiter *w = rev;
                rev = w->next;
                serve_one(lm, w);
        }
}

static void model_loaded_main(Manager *m, void *userdata) {
        LoadedModel *lm = userdata;
        Scheduler *s = m->scheduler;

        lm->load_ns = now_ns() - lm->load_started_ns;
        if (lm->load_error < 0) {
                log_warning("Failed to load model '%s': %s", lm->name,
                            lm->load_err.code ? lm->load_err.msg : strerror(-lm->load_error));
                lm->state = MODEL_FAILED;
                model_serve_waiters(lm);
                /* Nothing to free on the executor; account it as gone now. */
                LIST_REMOVE(models, s->models, lm);
                s->n_models--;
                s->used -= lm->ram;
                s->used_vram -= lm->vram;
                model_free(lm);
                scheduler_admit(s);
                return;
        }
        /* Fewer layers than planned made it to the GPU: the rest counts against the memory budget. */
        if (lm->info.n_gpu_layers != lm->n_gpu_layers && lm->info.n_gpu_layers < lm->n_splits) {
                const BackendSplit *sp = &lm->splits[lm->info.n_gpu_layers];
                s->used = s->used - lm->ram + sp->ram;
                lm->ram = sp->ram;
                lm->vram_kv = sp->vram_kv;
        }
        free(lm->splits);
        lm->splits = NULL;
        /* From now on the GPU bytes are what the backend says the model holds, plus its KV reservation. */
        uint64_t vram = lm->info.n_gpu_layers > 0 ? lm->info.vram + lm->vram_kv : 0;
        s->used_vram = s->used_vram - lm->vram + vram;
        lm->vram = vram;
        lm->n_gpu_layers = lm->info.n_gpu_layers;
        lm->n_layer = lm->info.n_layer;
        log_info("Loaded model '%s' in %.1f ms (%" PRIu64 " bytes of RAM budgeted, %" PRIu32 "/%" PRIu32
                 " layers and %" PRIu64 " bytes on the GPU).",
                 lm->name, lm->load_ns / 1e6, lm->ram, lm->n_gpu_layers, lm->n_layer, lm->vram);
        lm->state = MODEL_READY;
        model_serve_waiters(lm);
        model_maybe_expire(lm);
        /* A placement may have waited for this load; its own users keep model_maybe_expire() from asking. */
        scheduler_admit(s);
}

static void model_unloaded_main(Manager *m, void *userdata) {
        LoadedModel *lm = userdata;
        Scheduler *s = m->scheduler;

        LIST_REMOVE(models, s->models, lm);
        s->n_models--;
        s->used -= lm->ram;
        s->used_vram -= lm->vram;
        log_info("Unloaded model '%s'.", lm->name);
        model_free(lm);
        scheduler_admit(s);
}

static void gen_chunk_main(Manager *m, void *userdata) {
        Chunk *c = userdata;
        Gen *g = c->gen;
        Reply rep;

        if (g->p.stream) {
                reply_init(&rep);
                uint32_t n = 1;
                int k = proto_pack_kv_str(&rep.pk, "text", c->text);
                if (k >= 0 && g->p.return_tokens && c->token >= 0) {
                        k = proto_pack_kv_i64(&rep.pk, "token", c->token);
                        n++;
                }
                if (k >= 0)
                        (void)request_notify(g->request, "token", &rep, n);
                reply_done(&rep);
        } else
                (void)buf_append_str(&g->response, c->text);
        free(c->text);
        free(c);
}

static void gen_done_main(Manager *m, void *userdata) {
        Gen *g = userdata;
        Scheduler *s = m->scheduler;
        LoadedModel *lm = g->lm;
        Reply rep;

        if (g->result < 0) {
                request_reply_error(g->request, g->result, "%s",
                                    g->err.code ? g->err.msg : strerror(-g->result));
        } else {
                reply_init(&rep);
                int k = msgpack_pack_map(&rep.pk, g->p.stream ? 9 : 10) < 0 ? -ENOMEM : 0;
                const char *text = g->response.data ? (const char *)g->response.data : "";
                if (k >= 0)
                        k = proto_pack_kv_str(&rep.pk, "model", lm->name);
                if (k >= 0)
                        k = proto_pack_kv_bool(&rep.pk, "done", true);
                if (k >= 0)
                        k = proto_pack_kv_str(&rep.pk, "done_reason", g->done_reason);
                if (k >= 0)
                        k = proto_pack_kv_u64(&rep.pk, "prompt_eval_count", g->n_prompt);
                if (k >= 0)
                        k = proto_pack_kv_u64(&rep.pk, "prompt_eval_duration_ns", g->prompt_ns);
                if (k >= 0)
                        k = proto_pack_kv_u64(&rep.pk, "eval_count", g->n_generated);
                if (k >= 0)
                        k = proto_pack_kv_u64(&rep.pk, "eval_duration_ns", g->eval_ns);
                if (k >= 0)
                        k = proto_pack_kv_u64(&rep.pk, "load_duration_ns", g->load_ns);
                /* As Ollama counts it: from the request, the load included. */
                if (k >= 0)
                        k = proto_pack_kv_u64(&rep.pk, "total_duration_ns", now_ns() - g->queued_ns);
                if (k >= 0 && !g->p.stream && !g->p.chat)
                        k = proto_pack_kv_str(&rep.pk, "response", text);
                if (k >= 0 && !g->p.stream && g->p.chat)
                        k = proto_pack_key(&rep.pk, "message") < 0 || msgpack_pack_map(&rep.pk, 2) < 0 ||
                                            proto_pack_kv_str(&rep.pk, "role", "assistant") < 0 ||
                                            proto_pack_kv_str(&rep.pk, "content", text) < 0
                                    ? -ENOMEM
                                    : 0;
                if (k >= 0)
                        request_reply(g->request, &rep);
                else
                        request_reply_error(g->request, k, NULL);
                reply_done(&rep);
        }
        lm->n_running--;
        gen_free(g);
        /* The next queued generation takes the free slot before the model may expire. */
        if (lm->queued) {
                Gen *q = lm->queued;
                lm->queued = q->queue_next;
                if (!lm->queued)
                        lm->queued_tail = NULL;
                gen_submit(s, q);
        }
        model_release(lm);
}

/* ---- admission: memory budget, the GPU and MaxLoadedModels= ---- */

/* What a request for a model not loaded yet carries until there is room to load it. */
struct RoomWaiter {
        Waiter *w;
        char *name, *path, *digest;
        BackendSplit *splits; /* (n_splits): the backend's estimate for n = 0 .. n_splits - 1 GPU layers */
        size_t n_splits;
        uint32_t target;  /* GPU layers wanted: num_gpu clamped, all when it is -1, 0 without a GPU */
        uint32_t gpu_max; /* GPU layers possible: the model's, 0 without a GPU */
        unsigned threads;
        uint32_t n_ctx;
        uint64_t deadline_ns;
        int64_t keep_alive_ns;
        struct RoomWaiter *next;
};

/* The idle model to evict first: the one that expires first, among those holding GPU memory when gpu. */
static LoadedModel *idle_victim(Scheduler *s, bool gpu) {
        LoadedModel *lm, *victim = NULL;

        LIST_FOREACH(models, lm, s->models) {
                if (lm->state != MODEL_READY || lm->n_users > 0 || (gpu && lm->vram == 0))
                        continue;
                if (!victim || lm->expires_ns < victim->expires_ns)
                        victim = lm;
        }
        return victim;
}

/* Whether a model in state (with GPU memory when gpu) exists. */
static bool any_model(Scheduler *s, ModelState state, bool gpu) {
        LoadedModel *lm;

        LIST_FOREACH(models, lm, s->models)
        if (lm->state == state && (!gpu || lm->vram > 0))
                return true;
        return false;
}

/* GPU bytes a new model may take now (see DESIGN); false when there is no GPU. */
static bool gpu_available(Scheduler *s, uint64_t *ret) {
        const DaemonConfig *c = &s->manager->config;
        BackendGpu g;
        LoadedModel *lm;
        uint64_t reserved = c->gpu_overhead;

        if (!s->ops->gpu_info || s->ops->gpu_info(&g) < 0)
                return false;
        LIST_FOREACH(models, lm, s->models)
        reserved += lm->state == MODEL_LOADING ? lm->vram : lm->state == MODEL_READY ? lm->vram_kv : 0;
        uint64_t avail = g.free - MIN(reserved, g.free);
        uint64_t budget = c->gpu_budget ?: g.total;
        *ret = MIN(avail, budget - MIN(s->used_vram, budget));
        return true;
}

static void evict(LoadedModel *victim, const char *why) {
        log_info("Evicting idle model '%s' to make room %s.", victim->name, why);
        model_unload(victim);
}

/*
 * Chooses rw's split and makes room for it: returns true with the GPU layers in *ret_n when the model can
 * be loaded now; false when it must wait (an eviction started, or every model is busy).
 */
static bool place(Scheduler *s, RoomWaiter *rw, uint32_t *ret_n) {
        const DaemonConfig *c = &s->manager->config;
        uint32_t n = 0;
        uint64_t avail;

        if (rw->target > 0 && gpu_available(s, &avail)) {
                /* A load on the GPU has its memory in flux: place the next one when it is done (loads
                 * run one after the other on the executor anyway). */
                if (any_model(s, MODEL_LOADING, true))
                        return false;
                if (rw->splits[rw->target].vram <= avail)
                        n = rw->target;
                else {
                        LoadedModel *victim = idle_victim(s, true);
                        if (victim) {
                                evict(victim, "on the GPU");
                                return false;
                        }
                        /* Memory on its way back: wait for it rather than settle for less. */
                        if (any_model(s, MODEL_UNLOADING, true))
                                return false;
                        for (n = rw->target; n > 0 && rw->splits[n].vram > avail; n--)
                                ;
                }
        }
        if (s->used + rw->splits[n].ram <= c->memory_budget && s->n_models < c->max_loaded) {
                *ret_n = n;
                return true;
        }
        LoadedModel *victim = idle_victim(s, false);
        if (victim)
                evict(victim, "in memory");
        return false;
}

static int model_start_load(Scheduler *s, RoomWaiter *rw, uint32_t n_gpu, LoadedModel **ret) {
        const BackendSplit *sp = &rw->splits[n_gpu];
        LoadedModel *lm = calloc(1, sizeof(*lm));
        if (!lm)
                return -ENOMEM;
        lm->scheduler = s;
        lm->name = strdup(rw->name);
        lm->path = strdup(rw->path);
        if (!lm->name || !lm->path || (rw->digest && !(lm->digest = strdup(rw->digest)))) {
                model_free(lm);
                return -ENOMEM;
        }
        lm->ram = sp->ram;
        lm->vram = sp->vram;
        lm->vram_kv = sp->vram_kv;
        lm->n_ctx = rw->n_ctx;
        lm->n_parallel = s->manager->config.num_parallel;
        lm->n_layer = rw->n_splits > 1 ? (uint32_t)rw->n_splits - 1 : 0;
        lm->n_gpu_layers = n_gpu;
        lm->gpu_max = rw->gpu_max;
        lm->gpu_target = rw->target;
        lm->threads = rw->threads ?: s->manager->config.threads;
        lm->splits = TAKE_PTR(rw->splits);
        lm->n_splits = rw->n_splits;
        lm->state = MODEL_LOADING;
        lm->expires_ns = UINT64_MAX;
        lm->keep_alive_ns = s->manager->config.keep_alive_ns;
        lm->load_started_ns = now_ns();
        LIST_PREPEND(models, s->models, lm);
        s->n_models++;
        s->used += lm->ram;
        s->used_vram += lm->vram;
        if (rw->n_splits > 1)
                log_info("Loading model '%s' from %s with %" PRIu32 " of %zu layers on the GPU.", lm->name,
                         lm->path, n_gpu, rw->n_splits - 1);
        else
                log_info("Loading model '%s' from %s.", lm->name, lm->path);
        executor_send(s, CMD_LOAD, lm, NULL);
        *ret = lm;
        return 0;
}

static void attach_waiter(LoadedModel *lm, Waiter *w, int64_t keep_alive_ns) {
        model_use(lm, keep_alive_ns);
        if (lm->state == MODEL_READY) {
                serve_one(lm, w);
                model_maybe_expire(lm);
                return;
        }
        w->waited = true;
        w->next = lm->waiters;
        lm->waiters = w;
}

static void room_waiter_free(RoomWaiter *rw) {
        if (rw->w) {
                gen_free(rw->w->gen);
                rw->w->gen = NULL;
                waiter_free(rw->w);
        }
        free(rw->name);
        free(rw->path);
        free(rw->digest);
        free(rw->splits);
        free(rw);
}

static int room_timer(sd_event_source *src, uint64_t usec, void *userdata) {
        scheduler_admit(userdata);
        return 0;
}

/* Admits waiting requests in order while there is room; fails those past their deadline. */
static void scheduler_admit(Scheduler *s) {
        RoomWaiter **p = &s->room_waiters, *rw;
        uint64_t now = now_ns(), next_deadline = UINT64_MAX;

        while ((rw = *p)) {
                LoadedModel *lm = model_find(s, rw->name);
                uint32_t n_gpu = 0;
                if (lm || place(s, rw, &n_gpu)) {
                        if (!lm && model_start_load(s, rw, n_gpu, &lm) < 0) {
                                request_reply_error(rw->w->request, ENOMEM, NULL);
                        } else {
                                Waiter *w = TAKE_PTR(rw->w);
                                attach_waiter(lm, w, rw->keep_alive_ns);
                        }
                        *p = rw->next;
                        room_waiter_free(rw);
                        continue;
                }
                if (now >= rw->deadline_ns || request_is_cancelled(rw->w->request)) {
                        if (request_is_cancelled(rw->w->request))
                                request_reply_error(rw->w->request, ECANCELED, "The request was cancelled.");
                        else
                                request_reply_error(
                                        rw->w->request, ENOSPC,
                                        "No room to load model '%s': it needs %" PRIu64 " bytes and the "
                                        "loaded models are busy; try again later, or raise MemoryBudget= "
                                        "or MaxLoadedModels=.",
                                        rw->name, rw->splits[0].ram);
                        *p = rw->next;
                        room_waiter_free(rw);
                        continue;
                }
                next_deadline = MIN(next_deadline, rw->deadline_ns);
                /* Strict order: a later small request must not starve an earlier large one. */
                break;
        }
        if (next_deadline != UINT64_MAX) {
                uint64_t usec = next_deadline / 1000 + 1;
                if (s->room_timer) {
                        (void)sd_event_source_set_time(s->room_timer, usec);
                        (void)sd_event_source_set_enabled(s->room_timer, SD_EVENT_ONESHOT);
                } else
                        (void)sd_event_add_time(s->manager->event, &s->room_timer, CLOCK_MONOTONIC, usec,
                                                1000, room_timer, s);
        }
}

/* What a request asks of the model it uses, besides the model itself. */
typedef struct ModelSettings {
        uint32_t n_ctx;      /* the context it needs */
        bool n_ctx_exact;    /* it named the context: a model with another one is reloaded */
        int32_t num_gpu;     /* -1: as many layers as fit */
        unsigned num_thread; /* 0: Threads= */
        bool any;            /* any loaded model will do (it only tokenizes): never reload for it */
        int64_t keep_alive_ns;
} ModelSettings;

static ModelSettings settings_default(Scheduler *s, int64_t keep_alive_ns) {
        return (ModelSettings){
                .n_ctx = s->manager->config.num_ctx,
                .num_gpu = -1,
                .keep_alive_ns = keep_alive_ns,
        };
}

/*
 * Whether the loaded lm can serve a request with settings st. num_gpu compares as asked, not as placed (both
 * clamped to what the GPU could take): a model that got fewer layers than it asked for for want of room
 * would get no more from a reload, and a num_gpu on a machine without a GPU changes nothing.
 */
static bool model_matches(const LoadedModel *lm, const ModelSettings *st) {
        if (st->any)
                return true;
        if (st->n_ctx_exact ? lm->n_ctx != st->n_ctx : lm->n_ctx < st->n_ctx)
                return false;
        if (st->num_gpu >= 0 && MIN((uint32_t)st->num_gpu, lm->gpu_max) != lm->gpu_target)
                return false;
        return st->num_thread == 0 || st->num_thread == lm->threads;
}

/* Finds or loads name for a waiter. Takes w (also on failure). */
static int scheduler_acquire(Scheduler *s, const char *requested, Waiter *w, const ModelSettings *st,
                             QdError *err) {
        Manager *m = s->manager;
        const DaemonConfig *c = &m->config;
        _cleanup_free_ char *path = NULL, *name = NULL, *digest = NULL;
        _cleanup_free_ BackendSplit *splits = NULL;
        size_t n_splits = 0;
        int k;

        k = m->store_ops->resolve(m->store, requested, &path, &name, err);
        if (k < 0) {
                gen_free(TAKE_PTR(w->gen));
                waiter_free(w);
                return k;
        }
        LoadedModel *lm = model_find(s, name);

        if (lm && (lm->state != MODEL_READY || model_matches(lm, st))) {
                /* Loading: it was loaded for a request like this one a moment ago; take it as it is. */
                attach_waiter(lm, w, st->keep_alive_ns);
                return 0;
        }
        if (lm && lm->n_users == 0) {
                log_info("Reloading model '%s' with other settings.", lm->name);
                model_unload(lm);
        } else if (lm) {
                attach_waiter(lm, w, st->keep_alive_ns);
                return 0;
        }

        k = s->ops->estimate(path, st->n_ctx, c->num_parallel, &splits, &n_splits, err);
        if (k >= 0 && n_splits == 0)
                k = qd_error_set(err, EIO, "The %s backend gave no estimate for model '%s'.", s->ops->name,
                                 name);
        /* The least RAM it can do with: as many layers on the GPU as it takes and the GPU could ever hold.
         */
        uint32_t target = 0, gpu_max = 0;
        uint64_t least = 0;
        if (k >= 0) {
                BackendGpu g;
                uint64_t capacity = 0;
                if (n_splits > 1 && s->ops->gpu_info && s->ops->gpu_info(&g) >= 0) {
                        capacity = MIN(g.total - MIN(c->gpu_overhead, g.total), c->gpu_budget ?: g.total);
                        gpu_max = (uint32_t)n_splits - 1;
                        target = st->num_gpu < 0 ? gpu_max : MIN((uint32_t)st->num_gpu, gpu_max);
                }
                least = splits[0].ram;
                for (uint32_t i = 1; i <= target; i++)
                        if (splits[i].vram <= capacity)
                                least = MIN(least, splits[i].ram);
        }
        if (k >= 0 && least > c->memory_budget)
                k = qd_error_set(err, ENOSPC,
                                 "Model '%s' needs %" PRIu64 " bytes with a context of %" PRIu32
                                 " for %u sequences; "
                                 "the memory budget is %" PRIu64 " bytes (MemoryBudget=).",
                                 name, least, st->n_ctx, c->num_parallel, c->memory_budget);
        if (k >= 0 && m->store_ops->digest && m->store_ops->digest(m->store, name, &digest, NULL) < 0)
                digest = NULL; /* Ps goes without an ID rather than the request failing */
        if (k < 0) {
                if (w->gen)
                        gen_free(w->gen);
                w->gen = NULL;
                waiter_free(w);
                return k;
        }

        RoomWaiter *rw = calloc(1, sizeof(*rw));
        if (!rw) {
                gen_free(w->gen);
                w->gen = NULL;
                waiter_free(w);
                return -ENOMEM;
        }
        rw->w = w;
        rw->name = TAKE_PTR(name);
        rw->path = TAKE_PTR(path);
        rw->digest = TAKE_PTR(digest);
        rw->splits = TAKE_PTR(splits);
        rw->n_splits = n_splits;
        rw->target = target;
        rw->gpu_max = gpu_max;
        rw->threads = st->num_thread;
        rw->n_ctx = st->n_ctx;
        rw->keep_alive_ns = st->keep_alive_ns;
        rw->deadline_ns = now_ns() + (uint64_t)MAX(c->load_timeout_ns, (int64_t)0);
        RoomWaiter **p = &s->room_waiters;
        while (*p)
                p = &(*p)->next;
        *p = rw;
        scheduler_admit(s);
        return 0;
}

/* ---- entry points ---- */

static void gen_cancel(Request *r, void *userdata) {
        Gen *g = userdata;
        Scheduler *s = g->scheduler;

        atomic_store(&g->cancel, true);
        pthread_mutex_lock(&s->lock);
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
        /* A generation still waiting for room ends now rather than at its deadline. */
        if (!s->stopped)
                scheduler_admit(s);
}

/* The options of p that decide how a model is loaded. */
static int check_model_options(const GenerateParams *p, QdError *err) {
        if (p->num_gpu < -1)
                return qd_error_set(err, EINVAL,
                                    "Option 'num_gpu' must be -1 (as many layers as fit), 0 (CPU only) or a "
                                    "number of layers, not %" PRId32 ".",
                                    p->num_gpu);
        if (p->num_thread > 1024)
                return qd_error_set(err, EINVAL,
                                    "Option 'num_thread' must be 0 (the daemon's Threads=) to 1024, not "
                                    "%" PRIu32 ".",
                                    p->num_thread);
        return 0;
}

/* What a request with p's options asks of its model. */
static ModelSettings settings_from(Scheduler *s, const GenerateParams *p, int64_t keep_alive_ns) {
        ModelSettings st = settings_default(s, keep_alive_ns);
        if (p->num_ctx) {
                st.n_ctx = p->num_ctx;
                st.n_ctx_exact = true;
        }
        st.num_gpu = p->num_gpu;
        st.num_thread = p->num_thread;
        return st;
}

static int need_backend(Scheduler *s, const char *method, QdError *err) {
        if (!s->ops)
                return qd_error_set(
                        err, EOPNOTSUPP,
                        "%s is not available in this build: the inference engine has not landed yet.",
                        method);
        return 0;
}

int scheduler_generate(Scheduler *s, Request *r, GenerateParams *p, QdError *err) {
        int k = need_backend(s, "Generate", err);
        if (k < 0)
                return k;
        if (s->ops->check_sampler) {
                k = s->ops->check_sampler(&p->sampler, err);
                if (k < 0)
                        return k;
        }
        k = check_model_options(p, err);
        if (k < 0)
                return k;

        Gen *g = calloc(1, sizeof(*g));
        Waiter *w = calloc(1, sizeof(*w));
        if (!g || !w) {
                free(g);
                free(w);
                return -ENOMEM;
        }
        g->scheduler = s;
        g->queued_ns = now_ns();
        g->p = *p;
        *p = (GenerateParams){};
        g->request = request_ref(r);
        atomic_init(&g->cancel, false);
        size_t n_stop = 0;
        while (g->p.stop && g->p.stop[n_stop])
                n_stop++;
        k = engine_stop_new((const char *const *)g->p.stop, n_stop, &g->stop);
        if (k < 0) {
                free(w);
                gen_free(g);
                if (k == -ENOMEM)
                        return k;
                return qd_error_set(err, k,
                                    k == -EMSGSIZE
                                            ? "Option 'stop' takes up to 64 strings of up to 4096 bytes."
                                            : "Option 'stop' must not hold an empty string.");
        }
        request_set_cancel(r, gen_cancel, g);
        w->kind = WAITER_GENERATE;
        w->request = request_ref(r);
        w->gen = g;

        ModelSettings st = settings_from(s, &g->p, g->p.keep_alive_ns);
        _cleanup_free_ char *name = strdup(g->p.model);
        if (!name) {
                gen_free(g);
                w->gen = NULL;
                waiter_free(w);
                return -ENOMEM;
        }
        return scheduler_acquire(s, name, w, &st, err);
}

int scheduler_load(Scheduler *s, Request *r, const char *model, int64_t keep_alive_ns, bool keep_alive_set,
                   const GenerateParams *opts, QdError *err) {
        int k = need_backend(s, "Load", err);
        if (k >= 0)
                k = check_model_options(opts, err);
        if (k < 0)
                return k;
        Waiter *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->kind = WAITER_LOAD;
        w->request = request_ref(r);
        ModelSettings st =
                settings_from(s, opts, keep_alive_set ? keep_alive_ns : s->manager->config.keep_alive_ns);
        return scheduler_acquire(s, model, w, &st, err);
}

int scheduler_unload(Scheduler *s, const char *model, QdError *err) {
        Manager *m = s->manager;
        _cleanup_free_ char *path = NULL, *canonical = NULL;

        /* Loaded models go by their canonical names; a name the store no longer has may still be loaded. */
        if (m->store_ops->resolve(m->store, model, &path, &canonical, NULL) >= 0)
                model = canonical;
        LoadedModel *lm = model_find(s, model);
        if (!lm)
                return qd_error_set(err, ENOENT,
                                    "Model '%s' is not loaded; 'qctl ps' lists the loaded models.", model);
        /* In use: it goes when its last request ends. */
        lm->keep_alive_ns = 0;
        if (lm->n_users == 0 && lm->state == MODEL_READY)
                model_unload(lm);
        return 0;
}

int scheduler_tokenize(Scheduler *s, Request *r, const char *model, const char *text,
                       const msgpack_object *tokens, QdError *err) {
        int k = need_backend(s, text ? "Tokenize" : "Detokenize", err);
        if (k < 0)
                return k;
        Waiter *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->kind = WAITER_TOKENIZE;
        w->request = request_ref(r);
        if (text)
                w->text = strdup(text);
        else {
                w->n_tokens = tokens->via.array.size;
                w->tokens = calloc(MAX(w->n_tokens, (size_t)1), sizeof(int32_t));
                for (size_t i = 0; w->tokens && i < w->n_tokens; i++)
                        w->tokens[i] = (int32_t)tokens->via.array.ptr[i].via.u64;
        }
        if ((text && !w->text) || (!text && !w->tokens)) {
                waiter_free(w);
                return -ENOMEM;
        }
        ModelSettings st = settings_default(s, s->manager->config.keep_alive_ns);
        st.any = true;
        return scheduler_acquire(s, model, w, &st, err);
}

int scheduler_embed(Scheduler *s, Request *r, const char *model, char **inputs, int64_t keep_alive_ns,
                    bool keep_alive_set, const GenerateParams *opts, QdError *err) {
        int k = need_backend(s, "Embed", err);
        if (k >= 0)
                k = check_model_options(opts, err);
        if (k < 0) {
                strv_free(inputs);
                return k;
        }
        if (!s->ops->embed) {
                strv_free(inputs);
                return qd_error_set(err, EOPNOTSUPP, "The %s backend computes no embeddings.", s->ops->name);
        }
        Waiter *w = calloc(1, sizeof(*w));
        if (!w) {
                strv_free(inputs);
                return -ENOMEM;
        }
        w->kind = WAITER_EMBED;
        w->request = request_ref(r);
        w->inputs = inputs;
        ModelSettings st =
                settings_from(s, opts, keep_alive_set ? keep_alive_ns : s->manager->config.keep_alive_ns);
        return scheduler_acquire(s, model, w, &st, err);
}

/* Where the model runs, as Ollama's ps words it: "100% GPU", "100% CPU" or "48%/52% CPU/GPU" (by bytes). */
static void model_processor(const LoadedModel *lm, char *buf, size_t size) {
        uint64_t total = lm->ram + lm->vram;

        if (lm->n_gpu_layers == 0 || lm->vram == 0)
                snprintf(buf, size, "100%% CPU");
        else if (lm->n_gpu_layers >= lm->n_layer)
                snprintf(buf, size, "100%% GPU");
        else {
                unsigned cpu = (unsigned)((lm->ram * 100 + total / 2) / total);
                snprintf(buf, size, "%u%%/%u%% CPU/GPU", cpu, 100 - cpu);
        }
}

int scheduler_pack_ps(Scheduler *s, msgpack_packer *pk) {
        LoadedModel *lm;
        size_t n = 0;
        uint64_t now = now_ns();
        int64_t wall_now = (int64_t)time(NULL);

        LIST_FOREACH(models, lm, s->models)
        n += lm->state == MODEL_READY || lm->state == MODEL_LOADING;
        if (msgpack_pack_array(pk, n) < 0)
                return -ENOMEM;
        LIST_FOREACH(models, lm, s->models) {
                if (lm->state != MODEL_READY && lm->state != MODEL_LOADING)
                        continue;
                int64_t expires = -1; /* in use, or kept forever */
                if (lm->n_users == 0 && lm->expires_ns != UINT64_MAX)
                        expires = wall_now +
                                  (int64_t)((lm->expires_ns - MIN(now, lm->expires_ns)) / 1000000000ULL);
                char processor[48];
                model_processor(lm, processor, sizeof(processor));
                if (msgpack_pack_map(pk, 11) < 0 || proto_pack_kv_str(pk, "name", lm->name) < 0 ||
                    proto_pack_kv_str(pk, "digest", lm->digest ?: "") < 0 ||
                    proto_pack_kv_u64(pk, "size", lm->ram + lm->vram) < 0 ||
                    proto_pack_kv_u64(pk, "size_vram", lm->vram) < 0 ||
                    proto_pack_kv_str(pk, "processor", processor) < 0 ||
                    proto_pack_kv_u64(pk, "num_gpu", lm->n_gpu_layers) < 0 ||
                    proto_pack_kv_u64(pk, "context_length", lm->n_ctx) < 0 ||
                    proto_pack_kv_u64(pk, "parallel", lm->n_parallel) < 0 ||
                    proto_pack_kv_u64(pk, "in_use", lm->n_users) < 0 ||
                    proto_pack_kv_str(pk, "state", lm->state == MODEL_READY ? "ready" : "loading") < 0 ||
                    proto_pack_kv_i64(pk, "expires_at", expires) < 0)
                        return -ENOMEM;
        }
        return 0;
}

int scheduler_new(Manager *m, Scheduler **ret) {
        Scheduler *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->manager = m;
        s->ops = m->backend;
        BackendGpu g;
        int k = s->ops && s->ops->gpu_info ? s->ops->gpu_info(&g) : -ENODEV;
        if (k >= 0)
                log_info("GPU: %s, %.1f of %.1f GiB free.", g.name, g.free / 1073741824.0,
                         g.total / 1073741824.0);
        else if (k != -ENODEV)
                log_warning("Failed to query the GPU, models run on the CPU: %s", strerror(-k));
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);
        if (s->ops) {
                k = pthread_create(&s->thread, NULL, executor_main, s);
                if (k != 0) {
                        scheduler_free(s);
                        return -k;
                }
                s->thread_started = true;
        }
        *ret = s;
        return 0;
}

void scheduler_stop(Scheduler *s) {
        if (!s->thread_started)
                return;
        s->stopped = true;
        /* Requests waiting for room or for a load end now. */
        RoomWaiter *rw;
        while ((rw = s->room_waiters)) {
                s->room_waiters = rw->next;
                request_reply_error(rw->w->request, ESHUTDOWN, "The daemon is shutting down.");
                room_waiter_free(rw);
        }
        LoadedModel *lm;
        LIST_FOREACH(models, lm, s->models) {
                Gen *g;
                while ((g = lm->queued)) {
                        lm->queued = g->queue_next;
                        request_reply_error(g->request, ESHUTDOWN, "The daemon is shutting down.");
                        gen_free(g);
                        lm->n_users--;
                }
                lm->queued_tail = NULL;
        }
        /* Running generations end as cancelled; the executor finishes them, then stops. */
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
        /* Cancel flags are set by the requests' detach; make sure of it for requests still attached. */
        pthread_join(s->thread, NULL);
        s->thread_started = false;
        manager_post_drain(s->manager);
        /* Generations handed over after the executor's last look. */
        while (s->inbox) {
                Gen *g = s->inbox;
                s->inbox = g->queue_next;
                request_reply_error(g->request, ESHUTDOWN, "The daemon is shutting down.");
                gen_free(g);
        }
        /* Unload whatever stayed: the executor has stopped, so do it here. */
        LoadedModel *next;
        LIST_FOREACH_SAFE(models, lm, next, s->models) {
                while (lm->waiters) {
                        Waiter *w = lm->waiters;
                        lm->waiters = w->next;
                        request_reply_error(w->request, ESHUTDOWN, "The daemon is shutting down.");
                        if (w->gen)
                                gen_free(w->gen);
                        w->gen = NULL;
                        waiter_free(w);
                }
                if (lm->model)
                        s->ops->unload(lm->model);
                LIST_REMOVE(models, s->models, lm);
                model_free(lm);
        }
        s->n_models = 0;
        s->used = 0;
}

Scheduler *scheduler_free(Scheduler *s) {
        if (!s)
                return NULL;
        scheduler_stop(s);
        while (s->commands) {
                Command *c = s->commands;
                s->commands = c->next;
                free(c);
        }
        sd_event_source_disable_unref(s->room_timer);
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
}
