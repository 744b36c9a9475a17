/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Internal to engine/: a fixed pool of worker threads that run one function together, ggml-style: the caller
 * becomes thread 0 and every worker runs fn(ctx, ith, nth) with its own index, and the call returns when all
 * are done. Workers spin briefly between jobs (a decode step runs hundreds of short jobs) and then sleep on a
 * futex, so an idle pool costs nothing.
 *
 * One thread at a time may call threadpool_run() on a pool.
 */

#include <stdint.h>

typedef struct ThreadPool ThreadPool;
typedef void (*ThreadPoolFn)(void *ctx, uint32_t ith, uint32_t nth);

/* A pool of n_threads threads counting the caller (n_threads - 1 workers); 0 means the CPU count. */
int threadpool_new(uint32_t n_threads, ThreadPool **ret);
ThreadPool *threadpool_free(ThreadPool *p);
uint32_t threadpool_size(const ThreadPool *p);

/* Runs fn(ctx, ith, nth) on every thread of the pool, ith = 0 on the caller, and waits for all. */
void threadpool_run(ThreadPool *p, ThreadPoolFn fn, void *ctx);

/* The number of CPUs this process may run on. */
uint32_t cpu_count(void);
