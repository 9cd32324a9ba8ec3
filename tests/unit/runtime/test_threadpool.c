/* Thread pool: coverage of every item exactly once, chunk alignment, many
 * back-to-back dispatches, wake-up after sleeping, futex-only waits,
 * argument errors. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "flotilla/threadpool.h"

struct job {
	_Atomic int *hits;
	int64_t grain, n;
	int n_threads;
	_Atomic int bad;
	_Atomic int calls;
	_Atomic int64_t sum;
};

static void job_fn(void *arg, int64_t b, int64_t e, int tid)
{
	struct job *j = arg;
	atomic_fetch_add(&j->calls, 1);
	if (b >= e || b % j->grain != 0 || (e != j->n && e % j->grain != 0) || tid < 0 ||
	    tid >= j->n_threads)
		atomic_store(&j->bad, 1);
	int64_t s = 0;
	for (int64_t i = b; i < e; i++) {
		atomic_fetch_add(&j->hits[i], 1);
		s += i;
	}
	atomic_fetch_add(&j->sum, s);
}

static void check_cover(struct rt_threadpool *tp, int64_t n, int64_t grain)
{
	struct job j;
	memset(&j, 0, sizeof(j));
	j.hits = calloc((size_t)(n > 0 ? n : 1), sizeof(*j.hits));
	assert_non_null(j.hits);
	j.grain = grain;
	j.n = n;
	j.n_threads = rt_threadpool_n_threads(tp);
	rt_threadpool_for(tp, n, grain, job_fn, &j);
	assert_int_equal(atomic_load(&j.bad), 0);
	for (int64_t i = 0; i < n; i++)
		assert_int_equal(atomic_load(&j.hits[i]), 1);
	assert_true(atomic_load(&j.calls) <= j.n_threads * RT_THREADPOOL_CHUNKS_PER_THREAD);
	if (n <= 0)
		assert_int_equal(atomic_load(&j.calls), 0);
	free(j.hits);
}

static void test_cover(void **state)
{
	(void)state;
	const int threads[] = {1, 2, 3, 4, 7};
	const int64_t ns[] = {0, 1, 2, 5, 31, 32, 33, 100, 1000, 4097};
	const int64_t grains[] = {1, 4, 16, 64};
	for (size_t t = 0; t < sizeof(threads) / sizeof(threads[0]); t++) {
		struct rt_threadpool *tp = NULL;
		assert_int_equal(rt_threadpool_new(threads[t], &tp), 0);
		assert_int_equal(rt_threadpool_n_threads(tp), threads[t]);
		for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
			for (size_t g = 0; g < sizeof(grains) / sizeof(grains[0]); g++)
				check_cover(tp, ns[i], grains[g]);
		rt_threadpool_free(tp);
	}
}

static void test_many_dispatches(void **state)
{
	(void)state;
	struct rt_threadpool *tp = NULL;
	assert_int_equal(rt_threadpool_new(2, &tp), 0);
	_Atomic int hits[64];
	struct job j;
	memset(&j, 0, sizeof(j));
	j.hits = hits;
	j.grain = 1;
	j.n = 64;
	j.n_threads = 2;
	const int rounds = 20000;
	memset(hits, 0, sizeof(hits));
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int r = 0; r < rounds; r++)
		rt_threadpool_for(tp, 64, 1, job_fn, &j);
	clock_gettime(CLOCK_MONOTONIC, &b);
	for (int i = 0; i < 64; i++)
		assert_int_equal(atomic_load(&hits[i]), rounds);
	assert_int_equal(atomic_load(&j.sum), (int64_t)rounds * (63 * 64 / 2));
	assert_int_equal(atomic_load(&j.bad), 0);
	assert_int_equal(rt_threadpool_dispatches(tp), (uint64_t)rounds);
	double us = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / 1e3 / rounds;
	/* generous bound: the machine is shared; typical is a few microseconds */
	assert_true(us < 2000.0);
	rt_threadpool_free(tp);
}

static void test_wake_after_sleep(void **state)
{
	(void)state;
	struct rt_threadpool *tp = NULL;
	assert_int_equal(rt_threadpool_new(3, &tp), 0);
	for (int r = 0; r < 3; r++) {
		usleep(30 * 1000); /* workers have gone from spinning to sleeping */
		check_cover(tp, 300, 8);
	}
	rt_threadpool_free(tp);
}

/* No spinning (FLOTILLA_TP_SPIN_US=0): every wait of workers and caller
 * goes through the futex, so a lost wake-up (a missing barrier between
 * publishing a dispatch and reading the sleeper count, a wake before the
 * store it announces, a wrong futex compare value) hangs here: alarm()
 * turns a hang into a failure instead of a ctest timeout. */
static void test_no_spin(void **state)
{
	(void)state;
	assert_int_equal(setenv("FLOTILLA_TP_SPIN_US", "0", 1), 0);
	const int threads[] = {2, 3, 5};
	alarm(240);
	for (size_t t = 0; t < sizeof(threads) / sizeof(threads[0]); t++) {
		struct rt_threadpool *tp = NULL;
		assert_int_equal(rt_threadpool_new(threads[t], &tp), 0);
		for (int r = 0; r < 1500; r++) {
			check_cover(tp, 1 + r % 97, 1 + r % 5);
			if (r % 250 == 0)
				usleep(2000);
		}
		rt_threadpool_free(tp);
	}
	alarm(0);
	assert_int_equal(unsetenv("FLOTILLA_TP_SPIN_US"), 0);
}

static void test_errors(void **state)
{
	(void)state;
	struct rt_threadpool *tp = (struct rt_threadpool *)0x1;
	assert_int_equal(rt_threadpool_new(-1, &tp), -EINVAL);
	assert_int_equal(rt_threadpool_new(RT_THREADPOOL_MAX_THREADS + 1, &tp), -EINVAL);
	assert_ptr_equal(tp, (struct rt_threadpool *)0x1); /* untouched on error */
	assert_int_equal(rt_threadpool_new(0, &tp), 0); /* online CPUs */
	assert_true(rt_threadpool_n_threads(tp) >= 1);
	rt_threadpool_free(tp);
	rt_threadpool_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cover),
		cmocka_unit_test(test_many_dispatches),
		cmocka_unit_test(test_wake_after_sleep),
		cmocka_unit_test(test_no_spin),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
