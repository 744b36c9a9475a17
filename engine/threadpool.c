/* SPDX-License-Identifier: MIT */
/*
 * The CPU backend's worker threads.
 *
 * DESIGN
 * Work is handed out by chunks, not by thread: the job is one 64-bit atomic word holding a generation, the
 * number of chunks and the next unclaimed chunk, and every thread (the caller included) claims runs of
 * chunks with a compare-and-swap until none is left. Completion is counted in chunks, so the caller never
 * waits for a worker that has not woken up yet: on a machine shared with other processes a descheduled worker simply takes no
 * part, where a static split by thread index would stall every job until the scheduler ran it again. The
 * job's function and context are read only after a successful claim: the caller cannot publish the next job
 * before that chunk is finished, so what a worker reads is always its job's.
 *
 * Waiting spins with a pause for a bounded time (the next job of a decode step usually comes within
 * microseconds), offering the CPU with sched_yield() every few dozen pauses (when the scheduler has put two of
 * the pool's threads on one core, which it does on a busy machine, a spinning thread would otherwise take half
 * the time of the one doing the work), and then sleeps in futex(): workers on a wake counter bumped with
 * each job, the caller on the finished-chunks counter. Each side announces its sleep in a counter and re-checks before sleeping, and the
 * other side wakes it only when it announced, so that no wake-up is lost and no syscall is made while both
 * spin. Signals are blocked in the workers; they never touch anything but the job.
 */

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>

#include "common.h"
#include "threadpool.h"

#define SPIN_NS 200000ull /* how long a waiting thread spins before it sleeps */
#define SPINS_PER_CLOCK 64 /* pauses between two looks at the clock */

/* The work word: generation (22 bits) | n_chunks (21 bits) | next chunk (21 bits). */
#define CHUNK_BITS 21
#define CHUNK_MASK ((1ull << CHUNK_BITS) - 1)
#define MAX_CHUNKS ((uint32_t)CHUNK_MASK)

struct ThreadPool {
        uint32_t n_threads;
        pthread_t *threads; /* (n_threads - 1) */
        uint64_t generation; /* caller only */
        /* The job: written by the caller before the work word is published, read by a worker after a claim. */
        ThreadPoolFn fn;
        void *ctx;
        uint32_t base; /* chunk offset of this job, for jobs split at MAX_CHUNKS */
        _Alignas(64) _Atomic uint64_t work;
        _Alignas(64) atomic_uint finished; /* chunks of the current job done */
        atomic_uint caller_sleeping;       /* 1 while the caller sleeps on finished */
        _Alignas(64) atomic_uint wake;     /* futex word of the workers: bumped with each job */
        atomic_uint n_sleeping;            /* workers in, or about to enter, futex_wait() */
        atomic_bool stop;
};

static uint64_t pack(uint64_t gen, uint32_t n, uint32_t next) {
        return gen << (2 * CHUNK_BITS) | (uint64_t)n << CHUNK_BITS | next;
}

static uint32_t work_n(uint64_t w) {
        return (uint32_t)((w >> CHUNK_BITS) & CHUNK_MASK);
}

static uint32_t work_next(uint64_t w) {
        return (uint32_t)(w & CHUNK_MASK);
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
}

static void futex_wait(atomic_uint *addr, unsigned expected) {
        (void)syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(atomic_uint *addr) {
        (void)syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

/*
 * Claims and runs chunks of the job in w until none is left. A claim takes a share of what is left (guided
 * self-scheduling: big claims first, single chunks at the end), so that the atomic operations, each a cache
 * line moving between cores, stay few even when chunks are small, while the end of a job still balances.
 */
static void run_chunks(ThreadPool *p, uint32_t ith, uint64_t w, bool is_caller) {
        while (work_next(w) < work_n(w)) {
                uint32_t left = work_n(w) - work_next(w);
                uint32_t take = MAX(1u, left / (2 * p->n_threads));
                if (!atomic_compare_exchange_weak_explicit(&p->work, &w, w + take, memory_order_acquire,
                                                           memory_order_acquire))
                        continue; /* w now holds the current word, maybe of a newer job */
                for (uint32_t c = work_next(w); c < work_next(w) + take; c++)
                        p->fn(p->ctx, ith, p->base + c);
                unsigned done = atomic_fetch_add_explicit(&p->finished, take, memory_order_acq_rel) + take;
                if (!is_caller && done == work_n(w) && atomic_load(&p->caller_sleeping))
                        futex_wake_all(&p->finished);
                w += take;
        }
}

typedef struct Worker {
        ThreadPool *pool;
        uint32_t ith;
} Worker;

static void *worker_main(void *arg) {
        Worker self = *(Worker *)arg;
        ThreadPool *p = self.pool;

        free(arg);
        for (;;) {
                uint64_t w = atomic_load_explicit(&p->work, memory_order_acquire);
                if (atomic_load_explicit(&p->stop, memory_order_acquire))
                        return NULL;
                run_chunks(p, self.ith, w, false);

                /* Nothing left to claim: wait for the word to change (a new job, or stop). */
                uint64_t seen = atomic_load_explicit(&p->work, memory_order_acquire), t0 = now_ns();
                for (unsigned spins = 1;; spins++) {
                        if (atomic_load_explicit(&p->work, memory_order_acquire) != seen ||
                            atomic_load_explicit(&p->stop, memory_order_relaxed))
                                break;
                        if (spins % SPINS_PER_CLOCK) {
                                cpu_relax();
                                continue;
                        }
                        if (now_ns() - t0 < SPIN_NS) {
                                sched_yield();
                                continue;
                        }
                        /* Announce the sleep before re-checking (sequentially consistent, pairing with
                         * threadpool_run()), so that a job published meanwhile is never slept through. */
                        unsigned wv = atomic_load(&p->wake);
                        atomic_fetch_add(&p->n_sleeping, 1);
                        if (atomic_load(&p->work) == seen && !atomic_load(&p->stop))
                                futex_wait(&p->wake, wv);
                        atomic_fetch_sub(&p->n_sleeping, 1);
                        t0 = now_ns();
                }
        }
}

uint32_t cpu_count(void) {
        cpu_set_t set;

        if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
                return (uint32_t)CPU_COUNT(&set);
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (uint32_t)n : 1;
}

int threadpool_new(uint32_t n_threads, ThreadPool **ret) {
        ThreadPool *p;
        sigset_t all, saved;
        int r = 0;

        if (n_threads == 0)
                n_threads = cpu_count();
        if (n_threads > 1024)
                return -EINVAL;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->n_threads = 1;
        p->threads = calloc(n_threads, sizeof(pthread_t));
        if (!p->threads) {
                free(p);
                return -ENOMEM;
        }

        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &saved);
        for (uint32_t i = 1; i < n_threads; i++) {
                Worker *w = malloc(sizeof(*w));
                if (!w) {
                        r = -ENOMEM;
                        break;
                }
                *w = (Worker){ .pool = p, .ith = i };
                r = -pthread_create(&p->threads[i - 1], NULL, worker_main, w);
                if (r < 0) {
                        free(w);
                        break;
                }
                p->n_threads++;
        }
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        if (r < 0) {
                threadpool_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

ThreadPool *threadpool_free(ThreadPool *p) {
        if (!p)
                return NULL;
        atomic_store(&p->stop, true);
        atomic_fetch_add(&p->wake, 1);
        futex_wake_all(&p->wake);
        for (uint32_t i = 0; i + 1 < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);
        free(p->threads);
        free(p);
        return NULL;
}

uint32_t threadpool_size(const ThreadPool *p) {
        return p->n_threads;
}

static void run_job(ThreadPool *p, uint32_t base, uint32_t n, ThreadPoolFn fn, void *ctx) {
        p->fn = fn;
        p->ctx = ctx;
        p->base = base;
        atomic_store_explicit(&p->finished, 0, memory_order_relaxed);
        p->generation = (p->generation + 1) & ((1ull << (64 - 2 * CHUNK_BITS)) - 1);
        uint64_t w = pack(p->generation, n, 0);
        atomic_store(&p->work, w);
        atomic_fetch_add(&p->wake, 1);
        if (atomic_load(&p->n_sleeping) > 0)
                futex_wake_all(&p->wake);

        run_chunks(p, 0, w, true);

        uint64_t t0 = now_ns();
        for (unsigned spins = 1;; spins++) {
                unsigned done = atomic_load_explicit(&p->finished, memory_order_acquire);
                if (done == n)
                        break;
                if (spins % SPINS_PER_CLOCK) {
                        cpu_relax();
                        continue;
                }
                if (now_ns() - t0 < SPIN_NS) {
                        sched_yield();
                        continue;
                }
                atomic_store(&p->caller_sleeping, 1);
                /* Re-check after announcing the sleep, so that a worker finishing just now is not missed. */
                done = atomic_load(&p->finished);
                if (done != n)
                        futex_wait(&p->finished, done);
                atomic_store_explicit(&p->caller_sleeping, 0, memory_order_release);
        }
}

void threadpool_run(ThreadPool *p, uint32_t n_chunks, ThreadPoolFn fn, void *ctx) {
        if (p->n_threads == 1 || n_chunks <= 1) {
                for (uint32_t c = 0; c < n_chunks; c++)
                        fn(ctx, 0, c);
                return;
        }
        for (uint32_t base = 0; base < n_chunks; base += MAX_CHUNKS)
                run_job(p, base, MIN(n_chunks - base, MAX_CHUNKS), fn, ctx);
}
