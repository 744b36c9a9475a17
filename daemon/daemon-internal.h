/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The daemon's internal objects, shared by the files of daemon/ only: the Manager (which owns everything),
 * socket connections, jobs and the scheduler. Main thread unless a declaration says which lock protects it.
 */

#include <pthread.h>
#include <systemd/sd-event.h>

#include "daemon.h"

/* ---- intrusive doubly linked lists, in the manner of systemd's list.h ---- */

#define LIST_FIELDS(t, name) t *name##_next, *name##_prev

#define LIST_PREPEND(name, head, item)                                  \
        do {                                                            \
                __typeof__(*(head)) **_head = &(head), *_item = (item); \
                if ((_item->name##_next = *_head))                      \
                        _item->name##_next->name##_prev = _item;        \
                _item->name##_prev = NULL;                              \
                *_head = _item;                                         \
        } while (0)

#define LIST_REMOVE(name, head, item)                                         \
        do {                                                                  \
                __typeof__(*(head)) **_head = &(head), *_item = (item);       \
                if (_item->name##_next)                                       \
                        _item->name##_next->name##_prev = _item->name##_prev; \
                if (_item->name##_prev)                                       \
                        _item->name##_prev->name##_next = _item->name##_next; \
                else                                                          \
                        *_head = _item->name##_next;                          \
                _item->name##_next = _item->name##_prev = NULL;               \
        } while (0)

#define LIST_FOREACH(name, i, head) for ((i) = (head); (i); (i) = (i)->name##_next)
#define LIST_FOREACH_SAFE(name, i, n, head) \
        for ((i) = (head); (i) && (((n) = (i)->name##_next), 1); (i) = (n))

typedef struct Connection Connection;
typedef struct Job Job;
typedef struct JobPool JobPool;
typedef struct Scheduler Scheduler;

typedef struct Post {
        void (*fn)(Manager *m, void *userdata);
        void *userdata;
        struct Post *next;
} Post;

struct Manager {
        DaemonConfig config;
        bool user;
        char *socket_path;
        char *models_path;
        char *config_path;
        bool socket_bound; /* we bound socket_path (not socket activation) and unlink it at exit */
        bool group_looked_up; /* have_group and group_gid are valid */
        bool have_group;
        gid_t group_gid;
        uint64_t started_ns;
        bool stopping;

        sd_event *event;
        int listen_fd;
        sd_event_source *listen_source;
        sd_event_source *sigterm_source, *sigint_source;

        Connection *connections;
        unsigned n_connections;

        /* The mailbox from other threads. */
        pthread_mutex_t post_lock;
        Post *post_head, *post_tail; /* protected by post_lock */
        int post_fd;                 /* eventfd */
        sd_event_source *post_source;

        JobPool *pool;
        Job *jobs; /* newest first */
        uint64_t next_job_id;
        unsigned n_finished_jobs;

        Scheduler *scheduler;

        const BackendOps *backend;
        const StoreOps *store_ops;
        void *store;
};

/* The group that may use the system socket and change the store: Group=, else "quantd". */
static inline const char *manager_group(const Manager *m) {
        return m->config.group ?: "quantd";
}

/* ---- requests (request.c) ---- */

struct Request {
        unsigned n_ref;
        Manager *manager;
        const Method *method;
        uint64_t id;
        const RequestFrontend *frontend; /* NULL once detached */
        void *frontend_data;
        Caller caller;
        bool replied;
        atomic_bool cancelled;
        void (*cancel_fn)(Request *r, void *userdata);
        void *cancel_data;
};

/* ---- the socket server (server.c) ---- */

int server_listen(Manager *m);
void server_done(Manager *m);

/* ---- the mailbox (manager.c) ---- */

int manager_post_init(Manager *m);
void manager_post_done(Manager *m);
/* Runs what is queued now; used at shutdown after the threads stopped. */
void manager_post_drain(Manager *m);

/* ---- jobs (jobs.c) ---- */

typedef enum JobState {
        JOB_QUEUED,
        JOB_RUNNING,
        JOB_DONE,
        _JOB_STATE_MAX,
        _JOB_STATE_INVALID = -EINVAL,
} JobState;

/* Runs on a worker. Returns 0 or -errno with a sentence in err; checks job_cancelled() between chunks. */
typedef int (*JobRunFn)(Job *j, void *userdata, QdError *err);

int job_pool_new(Manager *m, unsigned n_workers, JobPool **ret);
/* Cancels every job, joins the workers. */
JobPool *job_pool_free(JobPool *p);

/*
 * Queues a job and makes r its first watcher (r gets its progress events and final reply); cancelling r (its
 * client's Cancel {id}, or its client going away when the method does not survive it) cancels the job.
 * userdata is freed with free_userdata when the job goes away. *ret (may be NULL) gets a borrowed pointer.
 */
int job_start(Manager *m, Request *r, const char *kind, const char *model, JobRunFn run, void *userdata,
              void (*free_userdata)(void *userdata), Job **ret);
/* Worker side: records progress; the main thread sends it to the watchers, coalesced. Any thread. */
void job_progress(Job *j, const char *status, const char *digest, uint64_t total, uint64_t completed);
/*
 * Worker side, before the job returns 0: n_fields packed msgpack map entries (keys and values) that the
 * final reply carries besides job, status and model (Eval's figures). Copied.
 */
int job_set_result(Job *j, const void *fields, size_t size, uint32_t n_fields);
const atomic_bool *job_cancel_flag(Job *j);
bool job_cancelled(Job *j);
Job *job_find(Manager *m, uint64_t id);
void job_cancel(Job *j);
/* Adds r as a watcher of j; a finished job replies at once. */
int job_watch(Job *j, Request *r);
uint64_t job_id(const Job *j);
/* Packs the jobs (only that one when only != 0, -ENOENT when it does not exist) as an array for Jobs. */
int jobs_pack(Manager *m, uint64_t only, msgpack_packer *pk, QdError *err);
void jobs_free_all(Manager *m);

/* ---- the scheduler and executors (scheduler.c) ---- */

int scheduler_new(Manager *m, Scheduler **ret);
Scheduler *scheduler_free(Scheduler *s);
/* Unloads idle models, ends generations; at shutdown. */
void scheduler_stop(Scheduler *s);

/* Parameters of a generation, decoded from the request. Strings are owned. */
typedef struct GenerateParams {
        char *model;
        char *prompt;
        int32_t *tokens; /* (n_tokens), the prompt tokenized on the executor when NULL */
        size_t n_tokens;
        bool raw;
        bool stream;
        int32_t num_predict; /* -1: until the context is full or an end-of-generation token */
        uint32_t num_ctx;    /* 0: the config's */
        int32_t num_gpu;     /* layers on the GPU: -1 as many as fit (initialise to it), 0 none, more is
                              * clamped to the model's */
        uint32_t num_thread; /* CPU threads of the model; 0: the config's Threads= */
        int64_t keep_alive_ns;
        bool keep_alive_set;
        char **stop;        /* NULL-terminated stop strings */
        bool return_tokens; /* include token ids in the events */
        bool chat;          /* reply with a message {role, content} (Chat) */
        SamplerParams sampler;
} GenerateParams;

void generate_params_done(GenerateParams *p);

/* Starts a generation for r; its events and reply go to r. Takes p's contents. */
int scheduler_generate(Scheduler *s, Request *r, GenerateParams *p, QdError *err);
/* Loads (or refreshes) a model with a keep_alive and opts' num_ctx, num_gpu and num_thread; replies when it
 * is loaded. */
int scheduler_load(Scheduler *s, Request *r, const char *model, int64_t keep_alive_ns, bool keep_alive_set,
                   const GenerateParams *opts, QdError *err);
int scheduler_unload(Scheduler *s, const char *model, QdError *err);
/* Tokenize or Detokenize on the loaded model (loading it first). */
int scheduler_tokenize(Scheduler *s, Request *r, const char *model, const char *text,
                       const msgpack_object *tokens, QdError *err);
/* Embeds each of inputs (NULL-terminated, taken also on failure) with model; replies with the vectors. */
int scheduler_embed(Scheduler *s, Request *r, const char *model, char **inputs, int64_t keep_alive_ns,
                    bool keep_alive_set, const GenerateParams *opts, QdError *err);
/* Packs the loaded models as an array for Ps. */
int scheduler_pack_ps(Scheduler *s, msgpack_packer *pk);
