/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Internal to engine/: a fixed pool of worker threads that share out the chunks of one job. The caller of
 * threadpool_run() works on the job too (as thread 0) and returns when every chunk is done. Workers spin
 * briefly between jobs (a decode step runs hundreds of short jobs) and then sleep on a futex, so an idle pool
 * costs nothing.
 *
 * One thread at a time may call threadpool_run() on a pool.
 */

#include <stdint.h>

typedef struct ThreadPool ThreadPool;

/* Runs chunk number chunk of a job on thread ith (0 is the caller; ith < threadpool_size()), e.g. to pick a
 * per-thread scratch buffer. */
typedef void (*ThreadPoolFn)(void *ctx, uint32_t ith, uint32_t chunk);

/* A pool of n_threads threads counting the caller (n_threads - 1 workers); 0 means the CPU count. */
int threadpool_new(uint32_t n_threads, ThreadPool **ret);
ThreadPool *threadpool_free(ThreadPool *p);
uint32_t threadpool_size(const ThreadPool *p);

/*
 * Runs fn(ctx, ith, c) once for every c in [0, n_chunks), each on whichever thread claims it first, and waits
 * for all. Chunks should be small enough that a thread slowed down by another process does not hold the others
 * up: whoever is free takes the next one. A job of one chunk runs on the caller without waking anyone.
 */
void threadpool_run(ThreadPool *p, uint32_t n_chunks, ThreadPoolFn fn, void *ctx);

/* The number of CPUs this process may run on. */
uint32_t cpu_count(void);
