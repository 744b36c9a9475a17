/* SPDX-License-Identifier: MIT */
/*
 * The CPU backend's worker threads.
 *
 * DESIGN
 * A job is published by bumping an atomic generation counter; workers wait for the counter to move, run the
 * job with their index, and count themselves done. Waiting spins with a pause for a short while (the next
 * matrix multiplication of a decode step usually comes within microseconds) and then sleeps in futex() on the
 * counter, so that a pool between requests uses no CPU. The caller runs share 0 itself and then waits, the
 * same way, for the done counter. Signals are blocked in the workers; they never touch anything but the job.
 */

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>

#include "common.h"
#include "threadpool.h"

#define SPIN_ROUNDS 20000

struct ThreadPool {
        uint32_t n_threads;
        pthread_t *threads; /* (n_threads - 1) */
        /* The job: written by the caller before generation is bumped, read by workers after they see it. */
        ThreadPoolFn fn;
        void *ctx;
        _Alignas(64) atomic_uint generation; /* bumped once per job; UINT32 wrap is fine */
        _Alignas(64) atomic_uint n_done;     /* workers finished with the current job */
        atomic_uint n_sleeping;              /* workers that are in, or about to enter, futex_wait() */
        atomic_uint n_sleeping_done;         /* 1 while the caller sleeps on n_done */
        atomic_bool stop;
};

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

typedef struct Worker {
        ThreadPool *pool;
        uint32_t ith;
} Worker;

static void *worker_main(void *arg) {
        Worker w = *(Worker *)arg;
        ThreadPool *p = w.pool;
        unsigned seen = 0;

        free(arg);
        for (;;) {
                unsigned g;
                int spins = 0;
                while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
                        if (++spins < SPIN_ROUNDS)
                                cpu_relax();
                        else {
                                /* Announce the sleep before re-checking (sequentially consistent, pairing
                                 * with threadpool_run()), so a job published meanwhile is never slept through. */
                                atomic_fetch_add(&p->n_sleeping, 1);
                                if (atomic_load(&p->generation) == seen)
                                        futex_wait(&p->generation, seen);
                                atomic_fetch_sub(&p->n_sleeping, 1);
                        }
                }
                seen = g;
                if (atomic_load_explicit(&p->stop, memory_order_acquire))
                        return NULL;
                p->fn(p->ctx, w.ith, p->n_threads);
                if (atomic_fetch_add(&p->n_done, 1) + 1 == p->n_threads - 1 && atomic_load(&p->n_sleeping_done))
                        futex_wake_all(&p->n_done);
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
        atomic_store_explicit(&p->stop, true, memory_order_release);
        atomic_fetch_add_explicit(&p->generation, 1, memory_order_acq_rel);
        futex_wake_all(&p->generation);
        for (uint32_t i = 0; i + 1 < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);
        free(p->threads);
        free(p);
        return NULL;
}

uint32_t threadpool_size(const ThreadPool *p) {
        return p->n_threads;
}

void threadpool_run(ThreadPool *p, ThreadPoolFn fn, void *ctx) {
        if (p->n_threads == 1) {
                fn(ctx, 0, 1);
                return;
        }
        p->fn = fn;
        p->ctx = ctx;
        atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
        atomic_fetch_add(&p->generation, 1);
        if (atomic_load(&p->n_sleeping) > 0)
                futex_wake_all(&p->generation);

        fn(ctx, 0, p->n_threads);

        unsigned done;
        int spins = 0;
        while ((done = atomic_load_explicit(&p->n_done, memory_order_acquire)) != p->n_threads - 1) {
                if (++spins < SPIN_ROUNDS) {
                        cpu_relax();
                        continue;
                }
                atomic_store(&p->n_sleeping_done, 1);
                /* Re-check after announcing the sleep, so a worker finishing just now is not missed. */
                done = atomic_load(&p->n_done);
                if (done != p->n_threads - 1)
                        futex_wait(&p->n_done, done);
                atomic_store_explicit(&p->n_sleeping_done, 0, memory_order_release);
        }
}
