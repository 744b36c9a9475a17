/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * daemon: quantd's manager (event loop, socket server, jobs, scheduler). Everything here runs on the main
 * thread unless a function says otherwise.
 *
 * The socket server and the D-Bus front end are two adapters over one method table (daemon_methods): a
 * front end decodes a call into a ProtoMessage (params as msgpack, descriptors by index), wraps the caller
 * in a Request with its RequestFrontend ops, and calls manager_dispatch(). Handlers reply through the
 * Request, so a method is implemented once, with the same names, arguments and errors on both.
 */

#include <msgpack.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "common.h"

typedef struct sd_event sd_event;

/* ---- paths ---- */

/* The paths of the design's table, resolved for the system daemon or for --user. */
typedef struct DaemonPaths {
        char *socket;
        char *models;
        char *config;
} DaemonPaths;

/*
 * Fills p from the defaults for the mode (user: XDG directories; system: /run, /var/lib, /etc), then the
 * environment (QUANTD_SOCKET, QUANTD_MODELS). Command-line overrides are applied by the caller afterwards.
 */
int daemon_paths_resolve(DaemonPaths *p, bool user);
void daemon_paths_done(DaemonPaths *p);

/* ---- configuration (quantd.conf(5)) ---- */

typedef struct DaemonConfig {
        /* [Daemon] */
        char *socket;             /* Socket=, NULL: the path of the mode */
        char *models;             /* Models=, NULL: the path of the mode */
        char *group;              /* Group=, the group that may use the system socket and change the store;
                                   * NULL: "quantd" */
        int log_level;            /* LogLevel=, -1: leave as set */
        unsigned workers;         /* Workers=, threads running jobs (pull, push, create) */
        unsigned max_connections; /* MaxConnections= */
        unsigned max_requests;    /* MaxRequestsPerConnection=, requests in flight per connection */
        uint64_t max_frame;       /* MaxFrameSize=, bytes of one message */
        uint64_t max_output;      /* MaxQueuedOutput=, bytes queued for a client that does not read */
        unsigned finished_jobs;   /* KeepFinishedJobs=, finished jobs that Jobs still lists */

        /* [Scheduler] */
        int64_t keep_alive_ns;   /* KeepAlive=, default for requests; negative: forever */
        unsigned max_loaded;     /* MaxLoadedModels= */
        uint64_t memory_budget;  /* MemoryBudget=, bytes per device; 0: 3/4 of the RAM */
        int64_t load_timeout_ns; /* LoadTimeout=, how long a request waits for room before ENOSPC */
        unsigned num_parallel;   /* NumParallel=, sequences per loaded model sharing each forward pass */
        unsigned num_ctx;        /* ContextLength=, default context per sequence */
        unsigned threads;        /* Threads=, CPU threads per executor; 0: all */
        uint64_t gpu_budget;     /* GpuMemoryBudget=, bytes of the GPU for loaded models; 0: all of it */
        uint64_t gpu_overhead;   /* GpuOverhead=, bytes of the GPU's free memory left alone */
} DaemonConfig;

/* The built-in defaults. */
void daemon_config_init(DaemonConfig *c);
void daemon_config_done(DaemonConfig *c);

/*
 * Applies the [Daemon] and [Scheduler] sections of the INI file at path (other components' sections, such as
 * [Registry], are left to them; unknown sections and keys are logged and ignored). Returns 0, -ENOENT when
 * the file does not exist, or -EINVAL with "FILE:LINE: …" in err.
 */
int daemon_config_load(DaemonConfig *c, const char *path, QdError *err);

/* Parses "512", "64K", "1.5G" (powers of 1024). Returns 0 or -EINVAL/-ERANGE. */
int daemon_parse_bytes(const char *s, uint64_t *ret);

/* ---- model backends: what the scheduler and executors need from an inference engine ---- */

typedef struct BackendModelInfo {
        uint32_t n_vocab;
        uint32_t n_ctx_train;
        uint32_t n_embd;
        uint64_t size;    /* bytes of weights */
        const char *arch; /* borrowed from the model */
        const char *file_type;
        uint32_t n_layer;
        uint32_t n_gpu_layers; /* the first layers, on the GPU */
        uint64_t vram;         /* bytes the model holds on the GPU now: weights and scratch, no KV caches */
} BackendModelInfo;

/* What a model needs with its first n_gpu_layers layers on the GPU and the rest on the CPU, as estimated
 * before loading for n_seq sequences of n_ctx positions. */
typedef struct BackendSplit {
        uint32_t n_gpu_layers;
        uint64_t ram;     /* host bytes: the CPU layers' weights, KV caches and scratch */
        uint64_t vram;    /* GPU bytes: the GPU layers' weights, KV caches and scratch */
        uint64_t vram_kv; /* the KV caches' part of vram */
} BackendSplit;

/* A GPU's memory, as the device reports it (cudaMemGetInfo()): what other processes and our models hold is
 * already gone from free. */
typedef struct BackendGpu {
        char name[128];
        uint64_t free;
        uint64_t total;
} BackendGpu;

/* How to load a model. */
typedef struct BackendLoadParams {
        unsigned threads;      /* CPU threads; 0: all */
        uint32_t n_gpu_layers; /* the first layers on the GPU, at most the model's; 0: CPU only */
} BackendLoadParams;

/* One sequence's sampling settings, as the request gave them. */
typedef struct SamplerParams {
        float temperature;
        int32_t top_k;
        float top_p, min_p, typical_p;
        float repeat_penalty;
        int32_t repeat_last_n;
        float presence_penalty, frequency_penalty;
        uint64_t seed;
} SamplerParams;

/*
 * The executor's view of an inference engine, an ops table so that tests run the scheduler and the
 * continuous-batching loop over a fake model. load, unload, the seq functions and decode run on the executor
 * thread that owns the model; estimate and tokenize on any thread; tokenize/detokenize only need a loaded
 * model.
 */
typedef struct BackendOps {
        const char *name;
        /*
         * What running path with n_seq sequences of n_ctx positions takes (weights + KV + scratch) for each
         * split between GPU and CPU: (*ret)[n] with the first n layers on the GPU, n = 0 .. *ret_n - 1, so
         * *ret_n is 1 without a GPU. The caller frees *ret.
         */
        int (*estimate)(const char *path, uint32_t n_ctx, uint32_t n_seq, BackendSplit **ret, size_t *ret_n,
                        QdError *err);
        /* Optional: the GPU's memory now; -ENODEV when there is none. Any thread. */
        int (*gpu_info)(BackendGpu *ret);
        int (*load)(const char *path, const BackendLoadParams *p, void **ret_model, QdError *err);
        void (*unload)(void *model);
        void (*info)(void *model, BackendModelInfo *ret);
        int (*tokenize)(void *model, const char *text, size_t len, bool add_special, int32_t **ret,
                        size_t *ret_n);
        /* Appends the bytes of token to out (the executor holds back incomplete UTF-8 sequences). */
        int (*token_piece)(void *model, int32_t token, Buf *out);
        bool (*is_eog)(void *model, int32_t token);
        int (*seq_new)(void *model, uint32_t n_ctx, void **ret_seq);
        void (*seq_free)(void *seq);
        /* One forward step for n sequences; logits[i] gets n_vocab floats for sequence i. */
        int (*decode)(void *model, void **seqs, const int32_t *const *tokens, const uint32_t *n_tokens,
                      size_t n, float **logits, const bool *cancel, QdError *err);
        /* Optional: checks the sampling parameters before a generation is queued (EINVAL with a sentence).
         */
        int (*check_sampler)(const SamplerParams *p, QdError *err);
        int (*sampler_new)(void *model, const SamplerParams *p, void **ret);
        void (*sampler_free)(void *sampler);
        int32_t (*sample)(void *sampler, const float *logits);
        /* Optional: mean-pooled, normalised embedding of n_embd floats. */
        int (*embed)(void *model, const int32_t *tokens, uint32_t n, float *ret, QdError *err);
} BackendOps;

/* engine/: real models. */
extern const BackendOps backend_engine_ops;

/* A deterministic stand-in model for tests: any file is a "model"; its tokens are bytes. */
extern const BackendOps backend_fake_ops;

/* ---- the model store: names to files ---- */

typedef struct StoreModel {
        char *name;
        uint64_t size;
        int64_t modified_s;
        char *digest;
} StoreModel;

/*
 * What the daemon needs from the model store, an ops table so that the daemon does not depend on the store's
 * layout. store_registry_ops is registry/'s Ollama-compatible store.
 */
/* Progress of a store operation, on the worker that runs it: status as Ollama words it, the blob (may be
 * NULL). */
typedef void (*StoreProgressFn)(const char *status, const char *digest, uint64_t completed, uint64_t total,
                                void *userdata);

/* What a new model is made of; every member but fd may be NULL. */
typedef struct StoreCreateSpec {
        int fd;                 /* the GGUF, read to its end */
        const char *template;   /* Modelfile TEMPLATE */
        const char *system;     /* Modelfile SYSTEM */
        const char *parameters; /* Modelfile PARAMETERs as Ollama's params JSON object */
        const char *messages;   /* Modelfile MESSAGEs as a JSON array of {role, content} */
        char **licenses;        /* NULL-terminated Modelfile LICENSE texts */
} StoreCreateSpec;

typedef struct StoreOps {
        /* config_path: the INI file whose [Registry] sections apply (may be NULL or missing). */
        int (*open)(const char *root, const char *config_path, void **ret, QdError *err);
        void (*close)(void *store);
        /* The GGUF file of name, for the engine to map, and the name's canonical form (may be NULL). */
        int (*resolve)(void *store, const char *name, char **ret_path, char **ret_canonical, QdError *err);
        int (*list)(void *store, StoreModel **ret, size_t *ret_n, QdError *err);
        /* Optional: the model's ID as list gives it ("sha256:…"). */
        int (*digest)(void *store, const char *name, char **ret, QdError *err);
        /* Runs on a worker: stores the GGUF read from spec->fd as name, with the Modelfile's other layers,
         * reporting bytes through progress. */
        int (*create)(void *store, const char *name, const StoreCreateSpec *spec, StoreProgressFn progress,
                      void *userdata, const atomic_bool *cancel, QdError *err);
        /* Runs on a worker: adds the model of the archive read from fd (as registry_export() writes it) as
         * name, replacing an existing one; spec's text layers (its fd is unused) replace the archive's
         * layers of the same kinds (all its LICENSE layers for spec's licenses). With name NULL (and no
         * spec) the model keeps the archive's name, which must be free; ret_name (may be NULL) gets it. */
        int (*import)(void *store, int fd, const char *name, const StoreCreateSpec *spec,
                      StoreProgressFn progress, void *userdata, const atomic_bool *cancel, char **ret_name,
                      QdError *err);
        /* Runs on a worker: writes name to fd as a model archive; format "tar", "tar.gz" or "tar.zst". */
        int (*export)(void *store, const char *name, int fd, const char *format, StoreProgressFn progress,
                      void *userdata, const atomic_bool *cancel, QdError *err);
        /* Run on a worker: download name from its registry, or upload it. */
        int (*pull)(void *store, const char *name, StoreProgressFn progress, void *userdata,
                    const atomic_bool *cancel, QdError *err);
        int (*push)(void *store, const char *name, StoreProgressFn progress, void *userdata,
                    const atomic_bool *cancel, QdError *err);
        /* The contents of the model's layer of media_type (a template, a system prompt), at most 1 MiB;
         * *ret is NULL when the model has no such layer. */
        int (*read_layer)(void *store, const char *name, const char *media_type, char **ret, QdError *err);
        int (*copy)(void *store, const char *src, const char *dst, QdError *err);
        int (*remove)(void *store, const char *name, QdError *err);
} StoreOps;

extern const StoreOps store_registry_ops;

/* Layers a model may carry besides its GGUF, as Ollama names their media types. */
#define STORE_LAYER_TEMPLATE "application/vnd.ollama.image.template"
#define STORE_LAYER_SYSTEM "application/vnd.ollama.image.system"
#define STORE_LAYER_PARAMS "application/vnd.ollama.image.params"
void store_model_free_many(StoreModel *l, size_t n);

/* ---- the manager, requests and the method table ---- */

typedef struct Manager Manager;
typedef struct Request Request;

/* Who is calling, as the front end established it (SO_PEERCRED, or the bus's credentials). */
typedef struct Caller {
        uid_t uid;
        gid_t gid;
        pid_t pid;
        bool may_change_store; /* uid 0, the daemon's uid or a member of the configured group */
} Caller;

/* How a front end delivers what a handler produces. Called on the main thread. */
typedef struct RequestFrontend {
        /* The final reply: error 0 with result (one packed msgpack object, NULL for nil), else an error. */
        void (*reply)(Request *r, int error, const char *message, const void *result, size_t size);
        /* A streamed event: n_fields packed map entries (keys and values) that follow "id". */
        int (*notify)(Request *r, const char *event, const void *fields, size_t size, uint32_t n_fields);
        /* The same client's request with that id, for Cancel {id}; NULL when there is none. */
        Request *(*find_sibling)(Request *r, uint64_t id);
} RequestFrontend;

/* A packed msgpack value under construction, for replies and events. */
typedef struct Reply {
        msgpack_sbuffer sb;
        msgpack_packer pk;
} Reply;
void reply_init(Reply *r);
void reply_done(Reply *r);

typedef enum MethodFlags {
        METHOD_CHANGES_STORE = 1 << 0,   /* needs Caller.may_change_store (polkit on the system bus) */
        METHOD_STREAMS = 1 << 1,         /* may send events before its reply */
        METHOD_SURVIVES_CLIENT = 1 << 2, /* keeps running when its client goes away (a job) */
} MethodFlags;

/*
 * Handles call for r. Returns 0 when it replied or will reply later (then it holds a reference to r), or
 * -errno with a sentence in err, which the dispatcher sends as the error reply.
 */
typedef int (*MethodHandler)(Manager *m, Request *r, ProtoMessage *call, QdError *err);

typedef struct Method {
        const char *name;
        MethodHandler handler;
        MethodFlags flags;
} Method;

/* The table both front ends serve, terminated by an entry with a NULL name. */
extern const Method daemon_methods[];
const Method *method_find(const char *name);

/* Creates a request; the front end keeps the returned reference and drops it with request_unref(). */
int request_new(Manager *m, const RequestFrontend *fe, void *frontend_data, uint64_t id,
                const Caller *caller, Request **ret);
Request *request_ref(Request *r);
Request *request_unref(Request *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(Request *, request_unref);
uint64_t request_id(const Request *r);
void *request_frontend_data(const Request *r);
const Caller *request_caller(const Request *r);
bool request_replied(const Request *r);

/* The front end's client went away: nothing more is delivered, and the request is cancelled unless it is a
 * job. */
void request_detach(Request *r);
/* Cancels what the request runs (Cancel, a disconnect, shutdown). Idempotent. */
void request_cancel(Request *r);
/* Whether request_cancel() was called; any thread. */
bool request_is_cancelled(const Request *r);
/* What request_cancel() should stop; set by the handler that started something. */
void request_set_cancel(Request *r, void (*cancel)(Request *r, void *userdata), void *userdata);

/* Replies with result (may be NULL for nil) and releases what the reply needs no more. */
void request_reply(Request *r, Reply *result);
/* Replies with an error; fmt NULL uses strerror's text. */
void request_reply_error(Request *r, int error, const char *fmt, ...) _printf_(3, 4);
/* Sends an event with n_fields entries packed in fields (may be NULL for none). */
int request_notify(Request *r, const char *event, Reply *fields, uint32_t n_fields);

/*
 * Runs call for r: looks the method up, checks the caller's rights, calls the handler and turns its error
 * into the reply. Never fails: every outcome is a reply (now or later).
 */
void manager_dispatch(Manager *m, Request *r, ProtoMessage *call);

/* The options the command line resolved. */
typedef struct ManagerOptions {
        bool user;
        const char *socket; /* where to listen when not socket-activated */
        const char *models;
        const char *config_path; /* for the store's own sections */
        const BackendOps *backend;
        const StoreOps *store;
} ManagerOptions;

/* Takes over c (its contents are moved; the caller's copy is left empty). */
int manager_new(Manager **ret, DaemonConfig *c, const ManagerOptions *o);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);

/* Binds or takes the socket, starts workers and executors, tells systemd READY=1, runs until SIGTERM. */
int manager_run(Manager *m);

sd_event *manager_event(Manager *m);
const DaemonConfig *manager_config(const Manager *m);

/*
 * Whether a caller may change the model store: root, the daemon's own uid, or a member of the configured group
 * (gid its primary group, groups its supplementary ones). The one rule the socket server and the D-Bus front
 * end both apply.
 */
bool manager_may_change_store(Manager *m, uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups);

/*
 * Runs fn(m, userdata) on the main thread soon. The only way other threads talk to the main thread: a locked
 * list plus an eventfd registered in sd-event. Any thread. Returns 0 or -ENOMEM.
 */
int manager_post(Manager *m, void (*fn)(Manager *m, void *userdata), void *userdata);
