/* Persistent thread pool: generation counter + spin-then-sleep workers. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "flotilla/threadpool.h"

/* How long workers spin for the next job before sleeping, and the caller
 * spins at the barrier before yielding the CPU. Decode makes a dispatch every
 * few tens of microseconds; the clock is read every TP_SPIN_CHECK pauses
 * (a pause costs 1 to 150 cycles depending on the CPU). */
#define TP_SPIN_NS 300000
#define TP_SPIN_CHECK 64
/* Chunks per thread: more than one lets a running thread take the chunks of
 * a worker the kernel has not scheduled yet (busy machines). */
#define TP_CHUNKS_PER_THREAD RT_THREADPOOL_CHUNKS_PER_THREAD
_Static_assert(RT_THREADPOOL_MAX_THREADS * TP_CHUNKS_PER_THREAD < 65536, "ticket");

/* A dispatch is a generation number, its chunk count and the next chunk
 * packed in one 64-bit ticket (gen << 32 | n_chunks << 16 | next). Threads claim chunks by CAS on it,
 * the caller included, so a chunk runs exactly once; a worker that wakes up
 * late sees a newer generation or no chunk left and does nothing. The caller
 * returns when the done counter reaches the number of chunks, without
 * waiting for workers that took no chunk. */
struct rt_threadpool {
	int n_threads;
	pthread_t *threads;
	pthread_mutex_t mu; /* guards sleeping on cv */
	pthread_cond_t cv;
	_Atomic uint64_t ticket;
	_Atomic int64_t done;
	_Atomic bool stop;
	uint32_t gen;
	uint64_t dispatches;
	/* current job: written by the caller before the ticket is published;
	 * read by a thread only after it claimed a chunk of that generation */
	rt_tp_fn fn;
	void *arg;
	int64_t n, grain;
};

struct worker_arg {
	struct rt_threadpool *tp;
	int idx;
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin budget: true while SPINS (incremented here) stays within TP_SPIN_NS
 * of the first call (*START = 0 initially). */
static bool keep_spinning(int *spins, int64_t *start)
{
	if (++*spins % TP_SPIN_CHECK != 0)
		return true;
	int64_t t = now_ns();
	if (*start == 0)
		*start = t;
	return t - *start < TP_SPIN_NS;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Claim and run chunks of generation GEN until none is left. */
static void run_chunks(struct rt_threadpool *tp, uint32_t gen, int idx)
{
	for (;;) {
		uint64_t t = atomic_load_explicit(&tp->ticket, memory_order_acquire);
		if ((uint32_t)(t >> 32) != gen)
			return;
		int64_t c = (int64_t)(t & 0xffffu);
		int64_t nc = (int64_t)((t >> 16) & 0xffffu);
		if (c >= nc)
			return;
		if (!atomic_compare_exchange_weak_explicit(&tp->ticket, &t, t + 1,
							   memory_order_acq_rel, memory_order_relaxed))
			continue;
		int64_t units = (tp->n + tp->grain - 1) / tp->grain;
		int64_t b = units * c / nc * tp->grain;
		int64_t e = units * (c + 1) / nc * tp->grain;
		if (e > tp->n)
			e = tp->n;
		if (b < e)
			tp->fn(tp->arg, b, e, idx);
		atomic_fetch_add_explicit(&tp->done, 1, memory_order_release);
	}
}

static void *worker_main(void *p)
{
	struct worker_arg wa = *(struct worker_arg *)p;
	struct rt_threadpool *tp = wa.tp;
	free(p);
	uint32_t seen = 0;
	for (;;) {
		uint32_t g;
		int spins = 0;
		int64_t start = 0;
		while ((g = (uint32_t)(atomic_load_explicit(&tp->ticket, memory_order_acquire) >> 32)) == seen &&
		       !atomic_load_explicit(&tp->stop, memory_order_acquire)) {
			if (keep_spinning(&spins, &start)) {
				cpu_relax();
				continue;
			}
			pthread_mutex_lock(&tp->mu);
			while ((uint32_t)(atomic_load(&tp->ticket) >> 32) == seen && !atomic_load(&tp->stop))
				pthread_cond_wait(&tp->cv, &tp->mu);
			pthread_mutex_unlock(&tp->mu);
		}
		if (atomic_load(&tp->stop))
			break;
		seen = g;
		run_chunks(tp, g, wa.idx);
	}
	return NULL;
}

int rt_threadpool_new(int n_threads, struct rt_threadpool **ret_pool)
{
	if (n_threads < 0 || n_threads > RT_THREADPOOL_MAX_THREADS)
		return -EINVAL;
	if (n_threads == 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = c < 1 ? 1 : c > RT_THREADPOOL_MAX_THREADS ? RT_THREADPOOL_MAX_THREADS : (int)c;
	}
	struct rt_threadpool *tp = calloc(1, sizeof(*tp));
	if (!tp)
		return -ENOMEM;
	tp->n_threads = n_threads;
	tp->threads = calloc((size_t)n_threads, sizeof(pthread_t));
	if (!tp->threads) {
		free(tp);
		return -ENOMEM;
	}
	pthread_mutex_init(&tp->mu, NULL);
	pthread_cond_init(&tp->cv, NULL);
	for (int i = 1; i < n_threads; i++) {
		struct worker_arg *wa = malloc(sizeof(*wa));
		int r = wa ? 0 : ENOMEM;
		if (wa) {
			wa->tp = tp;
			wa->idx = i;
			r = pthread_create(&tp->threads[i], NULL, worker_main, wa);
			if (r)
				free(wa);
		}
		if (r) {
			tp->n_threads = i; /* join only the started ones */
			rt_threadpool_free(tp);
			return -r;
		}
	}
	*ret_pool = tp;
	return 0;
}

void rt_threadpool_free(struct rt_threadpool *tp)
{
	if (!tp)
		return;
	pthread_mutex_lock(&tp->mu);
	atomic_store(&tp->stop, true);
	pthread_cond_broadcast(&tp->cv);
	pthread_mutex_unlock(&tp->mu);
	for (int i = 1; i < tp->n_threads; i++)
		pthread_join(tp->threads[i], NULL);
	pthread_cond_destroy(&tp->cv);
	pthread_mutex_destroy(&tp->mu);
	free(tp->threads);
	free(tp);
}

int rt_threadpool_n_threads(const struct rt_threadpool *tp) { return tp->n_threads; }

uint64_t rt_threadpool_dispatches(const struct rt_threadpool *tp) { return tp->dispatches; }

void rt_threadpool_for(struct rt_threadpool *tp, int64_t n, int64_t grain, rt_tp_fn fn,
		       void *arg)
{
	if (n <= 0)
		return;
	tp->dispatches++;
	if (grain < 1)
		grain = 1;
	int64_t units = (n + grain - 1) / grain;
	if (tp->n_threads == 1 || units == 1) {
		fn(arg, 0, n, 0);
		return;
	}
	int64_t nc = (int64_t)tp->n_threads * TP_CHUNKS_PER_THREAD;
	if (nc > units)
		nc = units;
	tp->fn = fn;
	tp->arg = arg;
	tp->n = n;
	tp->grain = grain;
	tp->gen++;
	if (tp->gen == 0) /* 0 is the workers' initial "seen" value */
		tp->gen = 1;
	atomic_store_explicit(&tp->done, 0, memory_order_relaxed);
	pthread_mutex_lock(&tp->mu);
	atomic_store_explicit(&tp->ticket, (uint64_t)tp->gen << 32 | (uint64_t)nc << 16,
			      memory_order_release);
	pthread_cond_broadcast(&tp->cv);
	pthread_mutex_unlock(&tp->mu);
	run_chunks(tp, tp->gen, 0);
	int spins = 0;
	int64_t start = 0;
	while (atomic_load_explicit(&tp->done, memory_order_acquire) < nc) {
		if (keep_spinning(&spins, &start))
			cpu_relax();
		else
			sched_yield();
	}
}
