/* SPDX-License-Identifier: MIT */
/*
 * Jobs: long store-changing work (pull, push, create) on a pool of worker threads, and the job table the
 * main thread keeps of them.
 *
 * DESIGN
 * As in redis's bio.c: a mutex, a condition variable and a queue; a worker takes a job, drops the lock and
 * runs it. A job reports progress with job_progress(), which stores the latest figures under the job's lock
 * and posts one main-thread closure until that closure has run, so a chatty job cannot flood the loop. Its
 * end is posted too; the main thread then replies to every watcher. A job belongs to nobody's connection:
 * watchers are requests (the one that started it, and any Jobs {id, watch: true}), and a job keeps running
 * when they all go away. Cancellation is an atomic flag the job polls.
 */

#include <inttypes.h>

#include "daemon-internal.h"

struct Job {
        atomic_uint n_ref;
        Manager *manager;
        uint64_t id;
        char *kind;
        char *model;
        JobRunFn run;
        void *userdata;
        void (*free_userdata)(void *userdata);
        atomic_bool cancel;

        /* Main thread. */
        JobState state;
        Request **watchers; /* (n_watchers), one reference each */
        size_t n_watchers;
        uint64_t created_ns, finished_ns;
        LIST_FIELDS(Job, jobs);

        /* Written by the worker before it posts the end, read by the main thread after. */
        int result;
        QdError error;
        Buf result_fields; /* packed map entries that the final reply adds (job_set_result()) */
        uint32_t n_result_fields;

        /* Protected by lock. */
        pthread_mutex_t lock;
        char status[128];
        char digest[80];
        uint64_t total, completed;
        bool progress_posted;

        struct Job *queue_next; /* protected by the pool's lock */
};

struct JobPool {
        Manager *manager;
        pthread_t *threads;
        size_t n_threads;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        Job *queue_head, *queue_tail; /* protected by lock */
        bool stop;                    /* protected by lock */
};

static Job *job_ref(Job *j) {
        atomic_fetch_add(&j->n_ref, 1);
        return j;
}

static void job_unref(Job *j) {
        if (!j || atomic_fetch_sub(&j->n_ref, 1) > 1)
                return;
        if (j->free_userdata)
                j->free_userdata(j->userdata);
        pthread_mutex_destroy(&j->lock);
        buf_free(&j->result_fields);
        free(j->kind);
        free(j->model);
        free(j->watchers);
        free(j);
}

uint64_t job_id(const Job *j) {
        return j->id;
}

const atomic_bool *job_cancel_flag(Job *j) {
        return &j->cancel;
}

bool job_cancelled(Job *j) {
        return atomic_load(&j->cancel);
}

static const char *job_state_to_string(JobState s) {
        switch (s) {
        case JOB_QUEUED:
                return "queued";
        case JOB_RUNNING:
                return "running";
        case JOB_DONE:
                return "done";
        case _JOB_STATE_MAX:
        case _JOB_STATE_INVALID:
                break;
        }
        return "unknown";
}

/* ---- main thread: events and replies ---- */

static int pack_progress(Job *j, Reply *rep, uint32_t *ret_n) {
        pthread_mutex_lock(&j->lock);
        char status[sizeof(j->status)], digest[sizeof(j->digest)];
        memcpy(status, j->status, sizeof(status));
        memcpy(digest, j->digest, sizeof(digest));
        uint64_t total = j->total, completed = j->completed;
        j->progress_posted = false;
        pthread_mutex_unlock(&j->lock);

        int k = proto_pack_kv_u64(&rep->pk, "job", j->id);
        if (k >= 0)
                k = proto_pack_kv_str(&rep->pk, "status", status);
        if (k >= 0)
                k = proto_pack_kv_str(&rep->pk, "digest", digest[0] ? digest : NULL);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep->pk, "total", total);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep->pk, "completed", completed);
        *ret_n = 5;
        return k;
}

static void job_progress_main(Manager *m, void *userdata) {
        Job *j = userdata;
        Reply rep;
        uint32_t n;

        reply_init(&rep);
        if (j->state != JOB_DONE && pack_progress(j, &rep, &n) >= 0)
                for (size_t i = 0; i < j->n_watchers; i++)
                        (void)request_notify(j->watchers[i], "progress", &rep, n);
        reply_done(&rep);
        job_unref(j);
}

static void job_reply(Job *j, Request *r) {
        if (j->result < 0) {
                if (j->error.code != 0)
                        request_reply_error(r, j->result, "%s", j->error.msg);
                else
                        request_reply_error(r, j->result, NULL);
                return;
        }
        Reply rep;
        reply_init(&rep);
        if (msgpack_pack_map(&rep.pk, 3 + j->n_result_fields) >= 0 &&
            proto_pack_kv_u64(&rep.pk, "job", j->id) >= 0 &&
            proto_pack_kv_str(&rep.pk, "status", "success") >= 0 &&
            proto_pack_kv_str(&rep.pk, "model", j->model) >= 0 &&
            (j->result_fields.len == 0 ||
             msgpack_sbuffer_write(&rep.sb, (const char *)j->result_fields.data, j->result_fields.len) >= 0))
                request_reply(r, &rep);
        else
                request_reply_error(r, ENOMEM, NULL);
        reply_done(&rep);
}

/* Forgets the oldest finished jobs beyond KeepFinishedJobs=. */
static void jobs_trim(Manager *m) {
        Job *j, *n, *last = NULL;

        LIST_FOREACH(jobs, j, m->jobs)
        last = j;
        for (j = last; j && m->n_finished_jobs > m->config.finished_jobs; j = n) {
                n = j->jobs_prev;
                if (j->state != JOB_DONE)
                        continue;
                LIST_REMOVE(jobs, m->jobs, j);
                m->n_finished_jobs--;
                job_unref(j);
        }
}

/* The starting request's Cancel (or its client going away, for a job that does not survive it). */
static void job_request_cancel(Request *r, void *userdata) {
        job_cancel(userdata);
}

static void job_finished_main(Manager *m, void *userdata) {
        Job *j = userdata;

        j->state = JOB_DONE;
        j->finished_ns = now_ns();
        /* What the job held (descriptors, buffers) goes now; the table keeps only its record. */
        if (j->free_userdata)
                j->free_userdata(j->userdata);
        j->free_userdata = NULL;
        j->userdata = NULL;
        if (j->result < 0)
                log_info("Job %" PRIu64 " (%s %s) failed: %s", j->id, j->kind, strempty(j->model),
                         j->error.code ? j->error.msg : strerror(-j->result));
        else
                log_info("Job %" PRIu64 " (%s %s) finished.", j->id, j->kind, strempty(j->model));
        for (size_t i = 0; i < j->n_watchers; i++) {
                /* The job record may be trimmed while the request lives on: forget the link. */
                if (j->watchers[i]->cancel_data == j)
                        request_set_cancel(j->watchers[i], NULL, NULL);
                job_reply(j, j->watchers[i]);
                request_unref(j->watchers[i]);
        }
        j->n_watchers = 0;
        m->n_finished_jobs++;
        jobs_trim(m);
        job_unref(j);
}

static void job_started_main(Manager *m, void *userdata) {
        Job *j = userdata;
        if (j->state == JOB_QUEUED)
                j->state = JOB_RUNNING;
        job_unref(j);
}

/* ---- workers ---- */

int job_set_result(Job *j, const void *fields, size_t size, uint32_t n_fields) {
        buf_free(&j->result_fields);
        j->n_result_fields = 0;
        int k = buf_append(&j->result_fields, fields, size);
        if (k < 0)
                return k;
        j->n_result_fields = n_fields;
        return 0;
}

void job_progress(Job *j, const char *status, const char *digest, uint64_t total, uint64_t completed) {
        bool post;

        pthread_mutex_lock(&j->lock);
        if (status)
                snprintf(j->status, sizeof(j->status), "%s", status);
        snprintf(j->digest, sizeof(j->digest), "%s", strempty(digest));
        j->total = total;
        j->completed = completed;
        post = !j->progress_posted;
        j->progress_posted = true;
        pthread_mutex_unlock(&j->lock);
        if (post && manager_post(j->manager, job_progress_main, job_ref(j)) < 0) {
                pthread_mutex_lock(&j->lock);
                j->progress_posted = false;
                pthread_mutex_unlock(&j->lock);
                job_unref(j);
        }
}

static void *worker_main(void *userdata) {
        JobPool *p = userdata;

        for (;;) {
                pthread_mutex_lock(&p->lock);
                while (!p->stop && !p->queue_head)
                        pthread_cond_wait(&p->cond, &p->lock);
                Job *j = p->queue_head;
                if (j) {
                        p->queue_head = j->queue_next;
                        if (!p->queue_head)
                                p->queue_tail = NULL;
                }
                bool stop = p->stop;
                pthread_mutex_unlock(&p->lock);
                if (!j) {
                        if (stop)
                                return NULL;
                        continue;
                }

                if (manager_post(p->manager, job_started_main, job_ref(j)) < 0)
                        job_unref(j);
                if (job_cancelled(j))
                        j->result = qd_error_set(&j->error, ECANCELED, "The job was cancelled.");
                else
                        j->result = j->run(j, j->userdata, &j->error);
                /* The queue's reference travels to the main thread with the end. */
                while (manager_post(p->manager, job_finished_main, j) < 0)
                        usleep(10000);
        }
}

int job_pool_new(Manager *m, unsigned n_workers, JobPool **ret) {
        JobPool *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->manager = m;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->cond, NULL);
        p->threads = calloc(n_workers, sizeof(pthread_t));
        if (!p->threads) {
                job_pool_free(p);
                return -ENOMEM;
        }
        for (unsigned i = 0; i < n_workers; i++) {
                int k = pthread_create(&p->threads[i], NULL, worker_main, p);
                if (k != 0) {
                        job_pool_free(p);
                        return -k;
                }
                p->n_threads++;
        }
        *ret = p;
        return 0;
}

JobPool *job_pool_free(JobPool *p) {
        if (!p)
                return NULL;
        /* Everything still queued or running ends as cancelled; workers finish the queue quickly. */
        Job *j;
        LIST_FOREACH(jobs, j, p->manager->jobs)
        atomic_store(&j->cancel, true);
        pthread_mutex_lock(&p->lock);
        p->stop = true;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->lock);
        for (size_t i = 0; i < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);
        /* Queue entries left when the workers failed to start hold references. */
        while (p->queue_head) {
                Job *q = p->queue_head;
                p->queue_head = q->queue_next;
                job_unref(q);
        }
        manager_post_drain(p->manager);
        pthread_cond_destroy(&p->cond);
        pthread_mutex_destroy(&p->lock);
        free(p->threads);
        free(p);
        return NULL;
}

/* ---- the table ---- */

int job_start(Manager *m, Request *r, const char *kind, const char *model, JobRunFn run, void *userdata,
              void (*free_userdata)(void *userdata), Job **ret) {
        JobPool *p = m->pool;
        Job *j = calloc(1, sizeof(*j));

        if (!j) {
                if (free_userdata)
                        free_userdata(userdata);
                return -ENOMEM;
        }
        atomic_init(&j->n_ref, 1);
        atomic_init(&j->cancel, false);
        pthread_mutex_init(&j->lock, NULL);
        j->manager = m;
        j->run = run;
        j->userdata = userdata;
        j->free_userdata = free_userdata;
        j->created_ns = now_ns();
        j->kind = strdup(kind);
        j->model = model ? strdup(model) : NULL;
        snprintf(j->status, sizeof(j->status), "queued");
        if (!j->kind || (model && !j->model)) {
                job_unref(j);
                return -ENOMEM;
        }
        if (r && job_watch(j, r) < 0) {
                job_unref(j);
                return -ENOMEM;
        }
        /* Cancel {id} of the starting request (qctl's Ctrl+C) cancels the job. */
        if (r)
                request_set_cancel(r, job_request_cancel, j);
        j->id = m->next_job_id++;
        LIST_PREPEND(jobs, m->jobs, j);

        pthread_mutex_lock(&p->lock);
        job_ref(j);
        if (p->queue_tail)
                p->queue_tail->queue_next = j;
        else
                p->queue_head = j;
        p->queue_tail = j;
        pthread_cond_signal(&p->cond);
        pthread_mutex_unlock(&p->lock);

        log_info("Job %" PRIu64 " (%s %s) queued.", j->id, kind, strempty(model));
        if (ret)
                *ret = j;
        return 0;
}

Job *job_find(Manager *m, uint64_t id) {
        Job *j;
        LIST_FOREACH(jobs, j, m->jobs)
        if (j->id == id)
                return j;
        return NULL;
}

void job_cancel(Job *j) {
        atomic_store(&j->cancel, true);
}

int job_watch(Job *j, Request *r) {
        if (j->state == JOB_DONE) {
                job_reply(j, r);
                return 0;
        }
        Request **w = reallocarray(j->watchers, j->n_watchers + 1, sizeof(Request *));
        if (!w)
                return -ENOMEM;
        j->watchers = w;
        j->watchers[j->n_watchers++] = request_ref(r);
        return 0;
}

static int job_pack(const Job *j, msgpack_packer *pk) {
        Job *mj = (Job *)j;
        pthread_mutex_lock(&mj->lock);
        char status[sizeof(j->status)];
        memcpy(status, j->status, sizeof(status));
        uint64_t total = j->total, completed = j->completed;
        pthread_mutex_unlock(&mj->lock);

        bool failed = j->state == JOB_DONE && j->result < 0;
        if (msgpack_pack_map(pk, 7 + (failed ? 1 : 0)) < 0 || proto_pack_kv_u64(pk, "job", j->id) < 0 ||
            proto_pack_kv_str(pk, "kind", j->kind) < 0 || proto_pack_kv_str(pk, "model", j->model) < 0 ||
            proto_pack_kv_str(pk, "state", job_state_to_string(j->state)) < 0 ||
            proto_pack_kv_str(pk, "status",
                              j->state == JOB_DONE ? (failed ? "failed" : "success") : status) < 0 ||
            proto_pack_kv_u64(pk, "total", total) < 0 || proto_pack_kv_u64(pk, "completed", completed) < 0)
                return -ENOMEM;
        if (failed &&
            proto_pack_kv_str(pk, "error", j->error.code ? j->error.msg : strerror(-j->result)) < 0)
                return -ENOMEM;
        return 0;
}

int jobs_pack(Manager *m, uint64_t only, msgpack_packer *pk, QdError *err) {
        size_t n = 0;
        Job *j;
        int k;

        LIST_FOREACH(jobs, j, m->jobs)
        n += only == 0 || j->id == only;
        if (only != 0 && n == 0)
                return qd_error_set(err, ENOENT, "No job %" PRIu64 ".", only);
        if (msgpack_pack_array(pk, n) < 0)
                return -ENOMEM;
        LIST_FOREACH(jobs, j, m->jobs)
        if (only == 0 || j->id == only) {
                k = job_pack(j, pk);
                if (k < 0)
                        return k;
        }
        return 0;
}

void jobs_free_all(Manager *m) {
        Job *j;
        while ((j = m->jobs)) {
                LIST_REMOVE(jobs, m->jobs, j);
                for (size_t i = 0; i < j->n_watchers; i++)
                        request_unref(j->watchers[i]);
                j->n_watchers = 0;
                job_unref(j);
        }
        m->n_finished_jobs = 0;
}
