/* Persistent thread pool: one 64-bit ticket per dispatch, chunks claimed by
 * CAS, spin-then-futex waits on both sides. */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "flotilla/threadpool.h"

/* How long a thread spins before it blocks in the kernel: a worker waiting
 * for the next dispatch, the caller waiting for the last chunk. Decode makes
 * a dispatch every ~20-400 us with only microseconds of serial work between
 * them, so an unloaded machine never blocks. On a loaded machine a thread
 * the kernel preempted while it held a chunk makes the others wait for
 * milliseconds: blocking (instead of spinning or sched_yield) frees the CPU,
 * and the scheduler's idle balancing then moves the preempted thread onto
 * it. The clock is read every TP_SPIN_CHECK pauses. Both budgets can be
 * overridden with FLOTILLA_TP_SPIN_US (benchmarks). */
#define TP_SPIN_US_DEFAULT 50
#define TP_SPIN_CHECK 32
#define TP_CHUNKS_PER_THREAD RT_THREADPOOL_CHUNKS_PER_THREAD
_Static_assert(RT_THREADPOOL_MAX_THREADS * TP_CHUNKS_PER_THREAD < 65536, "ticket");

/* A dispatch is a generation number, its chunk count and the next chunk
 * packed in one 64-bit ticket (gen << 32 | n_chunks << 16 | next). Threads
 * claim chunks by CAS on it, the caller included, so a chunk runs exactly
 * once; a worker that wakes up late sees a newer generation or no chunk left
 * and does nothing. The caller returns when the done counter reaches the
 * number of chunks, without waiting for workers that took no chunk. Words
 * written by different threads live on their own cache lines. */
struct rt_threadpool {
	_Alignas(64) _Atomic uint64_t ticket;
	_Alignas(64) _Atomic uint32_t done;   /* futex: chunks finished */
	_Atomic uint32_t caller_sleeping;
	_Alignas(64) _Atomic uint32_t seq;    /* futex: bumped per dispatch and at stop */
	_Atomic uint32_t sleepers;            /* workers blocked on seq */
	_Atomic bool stop;
	/* current job: written by the caller before the ticket is published;
	 * read by a thread only after it claimed a chunk of that generation */
	_Alignas(64) rt_tp_fn fn;
	void *arg;
	int64_t n, grain;
	int n_threads;
	int64_t spin_ns;
	uint32_t gen;
	uint64_t dispatches;
	pthread_t *threads;
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

static void futex_wait(_Atomic uint32_t *addr, uint32_t val)
{
	/* EAGAIN (value changed), EINTR and spurious wake-ups: callers re-check */
	syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr, int n)
{
	syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

/* Spin budget: true while SPINS (incremented here) stays within BUDGET ns
 * of the first call (*START = 0 initially). */
static bool keep_spinning(int *spins, int64_t *start, int64_t budget)
{
	if (++*spins % TP_SPIN_CHECK != 0)
		return true;
	int64_t t = now_ns();
	if (*start == 0)
		*start = t;
	return t - *start < budget;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__) || (defined(__arm__) && defined(__ARM_ARCH) && __ARM_ARCH >= 7)
	__asm__ __volatile__("yield");
#endif
}

static inline uint32_t ticket_gen(uint64_t t) { return (uint32_t)(t >> 32); }

/* Claim and run chunks of generation GEN until none is left. */
static void run_chunks(struct rt_threadpool *tp, uint32_t gen, int idx)
{
	for (;;) {
		uint64_t t = atomic_load_explicit(&tp->ticket, memory_order_acquire);
		if (ticket_gen(t) != gen)
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
		uint32_t d = atomic_fetch_add(&tp->done, 1) + 1;
		if (d == (uint32_t)nc && atomic_load(&tp->caller_sleeping))
			futex_wake(&tp->done, 1);
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
		while ((g = ticket_gen(atomic_load_explicit(&tp->ticket, memory_order_acquire))) == seen &&
		       !atomic_load_explicit(&tp->stop, memory_order_acquire)) {
			if (keep_spinning(&spins, &start, tp->spin_ns)) {
				cpu_relax();
				continue;
			}
			/* Dekker with the caller (seq_cst): it publishes the
			 * ticket, bumps seq, then reads sleepers; we count
			 * ourselves, read seq, then re-check the ticket. */
			atomic_fetch_add(&tp->sleepers, 1);
			uint32_t s = atomic_load(&tp->seq);
			if (ticket_gen(atomic_load(&tp->ticket)) == seen && !atomic_load(&tp->stop))
				futex_wait(&tp->seq, s);
			atomic_fetch_sub(&tp->sleepers, 1);
			spins = 0;
			start = 0;
		}
		if (atomic_load(&tp->stop))
			break;
		seen = g;
		run_chunks(tp, g, wa.idx);
	}
	return NULL;
}

static int64_t spin_budget_ns(void)
{
	const char *s = getenv("FLOTILLA_TP_SPIN_US");
	if (s && *s) {
		char *end;
		long v = strtol(s, &end, 10);
		if (*end == '\0' && v >= 0 && v <= 1000000)
			return (int64_t)v * 1000;
	}
	return (int64_t)TP_SPIN_US_DEFAULT * 1000;
}

int rt_threadpool_new(int n_threads, struct rt_threadpool **ret_pool)
{
	if (n_threads < 0 || n_threads > RT_THREADPOOL_MAX_THREADS)
		return -EINVAL;
	if (n_threads == 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = c < 1 ? 1 : c > RT_THREADPOOL_MAX_THREADS ? RT_THREADPOOL_MAX_THREADS : (int)c;
	}
	struct rt_threadpool *tp = aligned_alloc(64, (sizeof(*tp) + 63) / 64 * 64);
	if (!tp)
		return -ENOMEM;
	memset(tp, 0, sizeof(*tp));
	tp->n_threads = n_threads;
	tp->spin_ns = spin_budget_ns();
	tp->threads = calloc((size_t)n_threads, sizeof(pthread_t));
	if (!tp->threads) {
		free(tp);
		return -ENOMEM;
	}
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
	atomic_store(&tp->stop, true);
	atomic_fetch_add(&tp->seq, 1);
	futex_wake(&tp->seq, INT_MAX);
	for (int i = 1; i < tp->n_threads; i++)
		pthread_join(tp->threads[i], NULL);
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
	atomic_store(&tp->ticket, (uint64_t)tp->gen << 32 | (uint64_t)nc << 16);
	atomic_fetch_add(&tp->seq, 1);
	if (atomic_load(&tp->sleepers))
		futex_wake(&tp->seq, INT_MAX);
	run_chunks(tp, tp->gen, 0);
	int spins = 0;
	int64_t start = 0;
	uint32_t d;
	while ((d = atomic_load_explicit(&tp->done, memory_order_acquire)) < (uint32_t)nc) {
		if (keep_spinning(&spins, &start, tp->spin_ns)) {
			cpu_relax();
			continue;
		}
		atomic_store(&tp->caller_sleeping, 1);
		while ((d = atomic_load(&tp->done)) < (uint32_t)nc)
			futex_wait(&tp->done, d);
		atomic_store(&tp->caller_sleeping, 0);
	}
}
