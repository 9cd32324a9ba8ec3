/* Persistent worker threads for the engine's parallel loops.
 *
 * rt_threadpool_for() splits [0, n) into a few contiguous chunks per thread
 * that the threads claim as they come (the calling thread takes part, so a
 * worker the OS has not scheduled yet delays nothing), and returns when every
 * chunk is done: each call is a fork + barrier. Workers spin briefly between calls (decode
 * makes several dispatches per layer per token, microseconds apart), then
 * sleep on a condition variable, so an idle pool costs no CPU.
 *
 * Thread-safety: one pool serves one caller thread at a time (calls on the
 * same pool must not overlap, and FN must not call back into the pool).
 * Different pools are independent. */
#ifndef FLOTILLA_THREADPOOL_H
#define FLOTILLA_THREADPOOL_H

#include <stdint.h>

#define RT_THREADPOOL_MAX_THREADS 256
#define RT_THREADPOOL_CHUNKS_PER_THREAD 4

struct rt_threadpool;

/* Work function: process items [BEGIN, END) on thread THREAD_IDX
 * (0 = the caller) of the pool. Never called with an empty range. */
typedef void (*rt_tp_fn)(void *arg, int64_t begin, int64_t end, int thread_idx);

/* Create a pool of N_THREADS threads in total, the caller included (so
 * N_THREADS - 1 workers are started; 1 means no worker). 0 means "number of
 * online CPUs". Errors: -EINVAL (N_THREADS < 0 or above
 * RT_THREADPOOL_MAX_THREADS), -ENOMEM, -errno of pthread_create. Caller frees
 * with rt_threadpool_free(). */
int rt_threadpool_new(int n_threads, struct rt_threadpool **ret_pool);

/* Stop and join the workers, free the pool. NULL is fine. */
void rt_threadpool_free(struct rt_threadpool *tp);

/* Threads of the pool, the caller included. */
int rt_threadpool_n_threads(const struct rt_threadpool *tp);

/* Run FN(ARG, b, e, tid) over [0, N) split into at most
 * RT_THREADPOOL_CHUNKS_PER_THREAD * n_threads chunks whose boundaries are
 * multiples of GRAIN (>= 1; the last chunk ends at N) and depend only on N,
 * GRAIN and n_threads. A thread index TID is used by one thread at a time
 * (per-thread scratch may be indexed by it).
 * Returns when all chunks finished; their writes are visible to the caller.
 * N <= 0 does nothing. */
void rt_threadpool_for(struct rt_threadpool *tp, int64_t n, int64_t grain, rt_tp_fn fn,
		       void *arg);

/* Number of rt_threadpool_for() calls made on this pool (statistics). */
uint64_t rt_threadpool_dispatches(const struct rt_threadpool *tp);

#endif
