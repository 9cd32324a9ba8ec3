#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/tele_metrics.h>

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Exact nearest-rank quantile of sorted V. */
static double exact_q(const double *v, size_t n, double q)
{
	size_t rank = (size_t)ceil(q * (double)n);
	if (rank < 1)
		rank = 1;
	return v[rank - 1];
}

static void check_within(const struct tele_hist *h, const double *sorted, size_t n, double q,
			 double tol)
{
	double est;
	assert_int_equal(tele_hist_percentile(h, q, &est), 0);
	double want = exact_q(sorted, n, q);
	if (fabs(est - want) > tol * want)
		fail_msg("q=%.2f: estimate %.3f, exact %.3f (tolerance %.0f%%)", q, est, want,
			 tol * 100);
}

static void test_buckets(void **state)
{
	(void)state;
	assert_int_equal(tele_hist_bucket(-5), 0);
	assert_int_equal(tele_hist_bucket(NAN), 0);
	assert_int_equal(tele_hist_bucket(0), 0);
	assert_int_equal(tele_hist_bucket(1), 0);
	assert_int_equal(tele_hist_bucket(1.0001), 1);
	/* exact edges belong to the lower bucket: 2 = 2^(3/3) is the top of bucket 3 */
	assert_int_equal(tele_hist_bucket(2), 3);
	assert_int_equal(tele_hist_bucket(2.0000001), 4);
	assert_int_equal(tele_hist_bucket(1024), 30);
	assert_int_equal(tele_hist_bucket(INFINITY), TELE_HIST_BUCKETS - 1);
	assert_int_equal(tele_hist_bucket(1e300), TELE_HIST_BUCKETS - 1);
	for (unsigned i = 1; i < TELE_HIST_BUCKETS - 1; i++) {
		double up = tele_hist_upper(i);
		assert_int_equal(tele_hist_bucket(up), i);
		assert_int_equal(tele_hist_bucket(up * 1.000001), i + 1);
		/* ratio between edges is 2^(1/3) */
		assert_true(fabs(up / tele_hist_upper(i - 1) - cbrt(2.0)) < 1e-9);
	}
	assert_true(isinf(tele_hist_upper(TELE_HIST_BUCKETS - 1)));
	/* 1 us .. well over 40 minutes before the overflow bucket */
	assert_true(tele_hist_upper(TELE_HIST_BUCKETS - 2) > 40 * 60 * 1e6);
}

static void test_percentiles(void **state)
{
	(void)state;
	struct tele_hist h;
	tele_hist_reset(&h);
	double est;
	assert_int_equal(tele_hist_percentile(&h, 0.5, &est), -ENODATA);
	tele_hist_add(&h, 1500);
	assert_int_equal(tele_hist_percentile(&h, 1.5, &est), -EINVAL);
	assert_int_equal(tele_hist_percentile(&h, NAN, &est), -EINVAL);
	/* one value: exact */
	assert_int_equal(tele_hist_percentile(&h, 0.99, &est), 0);
	assert_true(est == 1500);

	/* uniform 1 ms .. 1 s, and a log-normal-ish skewed set */
	enum { N = 10000 };
	static double v[N];
	tele_hist_reset(&h);
	for (int i = 0; i < N; i++) {
		v[i] = 1000.0 + (double)i * 100.0;
		tele_hist_add(&h, v[i]);
	}
	qsort(v, N, sizeof(v[0]), cmp_double);
	/* bucket width 26%: the interpolated estimate is within 13% */
	check_within(&h, v, N, 0.5, 0.13);
	check_within(&h, v, N, 0.95, 0.13);
	check_within(&h, v, N, 0.99, 0.13);
	assert_int_equal(tele_hist_percentile(&h, 0.0, &est), 0);
	assert_true(est == v[0]);
	assert_int_equal(tele_hist_percentile(&h, 1.0, &est), 0);
	assert_true(est == v[N - 1]);
	assert_int_equal(h.count, N);
	assert_true(h.min == 1000 && h.max == v[N - 1]);

	struct tele_hist s;
	tele_hist_reset(&s);
	srand(42);
	for (int i = 0; i < N; i++) {
		double u = ((double)rand() + 1) / ((double)RAND_MAX + 2);
		v[i] = 20000.0 * exp(1.2 * sqrt(-2 * log(u)) * cos(2 * M_PI * u * 7.3));
		tele_hist_add(&s, v[i]);
	}
	qsort(v, N, sizeof(v[0]), cmp_double);
	check_within(&s, v, N, 0.5, 0.13);
	check_within(&s, v, N, 0.95, 0.13);
	check_within(&s, v, N, 0.99, 0.13);

	/* merge = adding the values to one histogram */
	struct tele_hist m;
	tele_hist_reset(&m);
	tele_hist_merge(&m, &h);
	tele_hist_merge(&m, &s);
	assert_int_equal(m.count, 2 * N);
	assert_true(m.min == fmin(h.min, s.min));
	assert_true(m.max == fmax(h.max, s.max));
	assert_true(fabs(m.sum - (h.sum + s.sum)) < 1e-6 * m.sum);
}

static void test_hist_json(void **state)
{
	(void)state;
	struct tele_hist h, back;
	tele_hist_reset(&h);
	for (int i = 0; i < 100; i++)
		tele_hist_add(&h, i * 37.0);
	cJSON *j = tele_hist_to_json(&h);
	assert_non_null(j);
	assert_int_equal(tele_hist_from_json(j, &back), 0);
	assert_memory_equal(back.counts, h.counts, sizeof(h.counts));
	assert_int_equal(back.count, 100);
	cJSON_Delete(j);

	static const char *const bad[] = {
		"{\"n\":1,\"sum\":1,\"min\":1,\"max\":1,\"b\":[[96,1]]}",       /* index */
		"{\"n\":2,\"sum\":1,\"min\":1,\"max\":1,\"b\":[[3,1],[3,1]]}",  /* dup */
		"{\"n\":1,\"sum\":1,\"min\":2,\"max\":1,\"b\":[[3,1]]}",        /* min>max */
		"{\"n\":1,\"sum\":1,\"min\":1,\"max\":1,\"b\":[[3,0]]}",        /* empty */
		"{\"n\":1,\"sum\":1,\"min\":1,\"max\":1,\"b\":[[3,1,1]]}",      /* shape */
		"{\"n\":1,\"sum\":1,\"min\":1,\"max\":1,\"b\":[[3,1]],\"x\":0}", /* key */
		"{\"n\":-1,\"sum\":1,\"min\":1,\"max\":1,\"b\":[]}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cJSON *o = NULL;
		assert_int_equal(fl_json_parse(bad[i], strlen(bad[i]), 4096, 8, &o), 0);
		int r = tele_hist_from_json(o, &back);
		if (r != -FL_ERANGE && r != -FL_ESCHEMA)
			fail_msg("case %zu accepted (%d)", i, r);
		cJSON_Delete(o);
	}
}

static void test_quality_and_drift(void **state)
{
	(void)state;
	assert_true(tele_quality_is_refusal("I'm sorry, but I can't help", 27));
	assert_true(tele_quality_is_refusal("  \n As an AI language model", 27));
	assert_true(tele_quality_is_refusal("I\xe2\x80\x99m sorry", 11));
	assert_true(tele_quality_is_refusal("I CANNOT do that", 16));
	assert_false(tele_quality_is_refusal("Sure! Here is", 13));
	assert_false(tele_quality_is_refusal("I can help", 10));
	assert_false(tele_quality_is_refusal(NULL, 0));

	struct tele_quality base, same, shifted;
	tele_quality_reset(&base);
	tele_quality_reset(&same);
	tele_quality_reset(&shifted);
	for (int i = 0; i < 1000; i++) {
		tele_quality_observe_output(&base, "answer", 6, (uint64_t)(50 + i % 50));
		tele_quality_observe_output(&same, "answer", 6, (uint64_t)(50 + (i * 7) % 50));
		/* outputs got much shorter and 20% are empty */
		if (i % 5 == 0)
			tele_quality_observe_output(&shifted, "  ", 2, 0);
		else
			tele_quality_observe_output(&shifted, "ok", 2, (uint64_t)(5 + i % 5));
		assert_int_equal(tele_quality_observe_class(&base, (unsigned)(i % 4), 0.9), 0);
		assert_int_equal(tele_quality_observe_class(&same, (unsigned)((i + 1) % 4), 0.91), 0);
		assert_int_equal(tele_quality_observe_class(&shifted, 0, 0.4), 0);
	}
	assert_int_equal(tele_quality_observe_class(&base, TELE_MAX_CLASSES, 0.5), -ERANGE);
	assert_int_equal(tele_quality_observe_class(&base, 1, 1.5), -ERANGE);
	assert_int_equal(base.predictions, 1000);
	assert_int_equal(shifted.empty, 200);

	struct tele_drift d;
	tele_quality_drift(&base, &same, &d);
	assert_true(d.len_psi >= 0 && d.len_psi < 0.01);
	assert_true(d.class_psi >= 0 && d.class_psi < 0.01);
	assert_true(d.conf_psi >= 0 && d.conf_psi < 0.01);
	assert_true(fabs(d.empty_rate_delta) < 1e-12);

	tele_quality_drift(&base, &shifted, &d);
	assert_true(d.len_psi > 0.25);
	assert_true(d.class_psi > 0.25);
	assert_true(d.conf_psi > 0.25);
	assert_true(fabs(d.empty_rate_delta - 0.2) < 1e-9);

	/* too few samples: no figure */
	struct tele_quality tiny;
	tele_quality_reset(&tiny);
	tele_quality_observe_output(&tiny, "x", 1, 3);
	tele_quality_drift(&base, &tiny, &d);
	assert_true(d.len_psi == -1 && d.class_psi == -1 && d.empty_rate_delta == -1);

	/* JSON round trip and validation */
	cJSON *j = tele_quality_to_json(&shifted);
	struct tele_quality back;
	assert_int_equal(tele_quality_from_json(j, &back), 0);
	assert_int_equal(back.empty, 200);
	assert_int_equal(back.n_classes, 1);
	assert_memory_equal(back.conf_counts, shifted.conf_counts, sizeof(back.conf_counts));
	cJSON_ReplaceItemInObject(j, "empty", cJSON_CreateNumber(5000)); /* > outputs */
	assert_int_equal(tele_quality_from_json(j, &back), -FL_ERANGE);
	cJSON_Delete(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buckets),
		cmocka_unit_test(test_percentiles),
		cmocka_unit_test(test_hist_json),
		cmocka_unit_test(test_quality_and_drift),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
