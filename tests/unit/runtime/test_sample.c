/* Sampler: greedy, penalties, top-k/top-p/min-p filters, temperature, seeded
 * determinism and the drawn distribution, parameter errors. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "flotilla/error.h"
#include "flotilla/sample.h"

static struct rt_sampler *mk(const struct rt_sampling *p, int nv)
{
	struct rt_sampler *s = NULL;
	assert_int_equal(rt_sampler_new(p, nv, &s), 0);
	return s;
}

static void test_greedy_and_penalty(void **state)
{
	(void)state;
	float lg[6] = {0.1f, 2.0f, 1.9f, -1.0f, -0.5f, 0.0f};
	struct rt_sampling p;
	rt_sampling_greedy(&p);
	struct rt_sampler *s = mk(&p, 6);
	assert_int_equal(rt_sampler_sample(s, lg), 1);
	rt_sampler_accept(s, 1); /* no penalty configured: still 1 */
	assert_int_equal(rt_sampler_sample(s, lg), 1);
	rt_sampler_free(s);

	p.repeat_penalty = 1.1f; /* 2.0 / 1.1 = 1.818 < 1.9 */
	s = mk(&p, 6);
	rt_sampler_accept(s, 1);
	assert_int_equal(rt_sampler_sample(s, lg), 2);
	assert_true(lg[1] == 2.0f); /* logits untouched */
	/* negative logits are multiplied: all negative vocabulary */
	rt_sampler_reset(s); /* history forgotten */
	assert_int_equal(rt_sampler_sample(s, lg), 1);
	rt_sampler_free(s);
	float neg[3] = {-1.0f, -1.05f, -3.0f};
	s = mk(&p, 3);
	assert_int_equal(rt_sampler_sample(s, neg), 0);
	rt_sampler_accept(s, 0); /* -1.0 * 1.1 = -1.1 < -1.05 */
	assert_int_equal(rt_sampler_sample(s, neg), 1);
	rt_sampler_free(s);

	/* history window: only the last repeat_last_n tokens count */
	p.repeat_last_n = 2;
	s = mk(&p, 6);
	rt_sampler_accept(s, 1);
	rt_sampler_accept(s, 4);
	rt_sampler_accept(s, 5); /* 1 has left the window */
	assert_int_equal(rt_sampler_sample(s, lg), 1);
	rt_sampler_free(s);
}

static int count_draws(struct rt_sampler *s, const float *lg, int nv, int n, int *hist)
{
	memset(hist, 0, sizeof(int) * (size_t)nv);
	for (int i = 0; i < n; i++) {
		int32_t t = rt_sampler_sample(s, lg);
		assert_true(t >= 0 && t < nv);
		hist[t]++;
	}
	int distinct = 0;
	for (int i = 0; i < nv; i++)
		distinct += hist[i] > 0;
	return distinct;
}

static void test_seed_determinism(void **state)
{
	(void)state;
	float lg[100];
	for (int i = 0; i < 100; i++)
		lg[i] = 0.01f * (float)(i % 7);
	struct rt_sampling p;
	rt_sampling_default(&p);
	p.top_k = 0;
	p.top_p = 1.0f;
	p.min_p = 0.0f;
	p.temperature = 1.0f;
	p.seed = 42;
	struct rt_sampler *a = mk(&p, 100), *b = mk(&p, 100);
	p.seed = 43;
	struct rt_sampler *c = mk(&p, 100);
	int32_t sa[40], sb[40], sc[40];
	for (int i = 0; i < 40; i++) {
		sa[i] = rt_sampler_sample(a, lg);
		sb[i] = rt_sampler_sample(b, lg);
		sc[i] = rt_sampler_sample(c, lg);
	}
	assert_memory_equal(sa, sb, sizeof(sa));
	assert_memory_not_equal(sa, sc, sizeof(sa));
	rt_sampler_reset(a); /* restarts the sequence */
	for (int i = 0; i < 40; i++)
		assert_int_equal(rt_sampler_sample(a, lg), sa[i]);
	rt_sampler_free(a);
	rt_sampler_free(b);
	rt_sampler_free(c);
}

static void test_filters(void **state)
{
	(void)state;
	/* probabilities 0.5, 0.25, 0.125, 0.0625, ... (logits ln 2 apart) */
	float lg[8];
	for (int i = 0; i < 8; i++)
		lg[i] = -(float)i * logf(2.0f);
	int hist[8];
	struct rt_sampling p;
	rt_sampling_default(&p);
	p.seed = 7;
	p.temperature = 1.0f;
	p.top_p = 1.0f;
	p.min_p = 0.0f;

	p.top_k = 1; /* only the best, whatever the temperature */
	p.temperature = 50.0f;
	struct rt_sampler *s = mk(&p, 8);
	assert_int_equal(count_draws(s, lg, 8, 500, hist), 1);
	assert_int_equal(hist[0], 500);
	rt_sampler_free(s);

	p.temperature = 1.0f;
	p.top_k = 3;
	s = mk(&p, 8);
	assert_int_equal(count_draws(s, lg, 8, 3000, hist), 3);
	rt_sampler_free(s);

	p.top_k = 0;
	p.top_p = 0.7f; /* 0.5 + 0.25 >= 0.7: two tokens */
	s = mk(&p, 8);
	assert_int_equal(count_draws(s, lg, 8, 3000, hist), 2);
	rt_sampler_free(s);

	p.top_p = 1.0f;
	p.min_p = 0.2f; /* keep p >= 0.1: 0.5, 0.25, 0.125 */
	s = mk(&p, 8);
	assert_int_equal(count_draws(s, lg, 8, 3000, hist), 3);
	rt_sampler_free(s);

	/* no filter, T = 1: frequencies follow the softmax */
	p.min_p = 0.0f;
	s = mk(&p, 8);
	const int n = 40000;
	count_draws(s, lg, 8, n, hist);
	double z = 0;
	for (int i = 0; i < 8; i++)
		z += exp(lg[i]);
	for (int i = 0; i < 8; i++)
		assert_true(fabs((double)hist[i] / n - exp(lg[i]) / z) < 0.012);
	rt_sampler_free(s);

	/* T = 0.5 sharpens: p ~ exp(2 * logit) -> 0.75, 0.19, ... */
	p.temperature = 0.5f;
	s = mk(&p, 8);
	count_draws(s, lg, 8, n, hist);
	assert_true(fabs((double)hist[0] / n - 0.7529) < 0.015);
	rt_sampler_free(s);
}

static void test_errors(void **state)
{
	(void)state;
	struct rt_sampling p;
	struct rt_sampler *s = (struct rt_sampler *)0x1;
	rt_sampling_default(&p);
	assert_int_equal(rt_sampling_validate(&p), 0);
	assert_int_equal(rt_sampler_new(&p, 0, &s), -EINVAL);
	p.temperature = NAN;
	assert_int_equal(rt_sampler_new(&p, 10, &s), -FL_ERANGE);
	rt_sampling_default(&p);
	p.top_p = 0.0f;
	assert_int_equal(rt_sampling_validate(&p), -FL_ERANGE);
	rt_sampling_default(&p);
	p.min_p = 1.5f;
	assert_int_equal(rt_sampling_validate(&p), -FL_ERANGE);
	rt_sampling_default(&p);
	p.top_k = -1;
	assert_int_equal(rt_sampling_validate(&p), -FL_ERANGE);
	rt_sampling_default(&p);
	p.repeat_penalty = 0.0f;
	assert_int_equal(rt_sampling_validate(&p), -FL_ERANGE);
	rt_sampling_default(&p);
	p.repeat_last_n = RT_SAMPLE_MAX_LAST_N + 1;
	assert_int_equal(rt_sampling_validate(&p), -FL_ERANGE);
	assert_int_equal(rt_sampling_validate(NULL), -FL_ERANGE);
	assert_ptr_equal(s, (struct rt_sampler *)0x1);
	rt_sampler_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_greedy_and_penalty),
		cmocka_unit_test(test_seed_determinism),
		cmocka_unit_test(test_filters),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
