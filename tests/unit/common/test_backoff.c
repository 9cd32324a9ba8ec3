/* fl_backoff: the reconnect policy agents (fl_mqtt) and the fleet simulator
 * share. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <flotilla/mqtt.h>

/* Delay D is the current step +-20 %. */
static void assert_step(int64_t d, int64_t step)
{
	int64_t span = step * FL_MQTT_BACKOFF_JITTER_PCT / 100;
	if (d < step - span || d > step + span)
		fail_msg("delay %lld outside %lld +- %lld", (long long)d, (long long)step,
			 (long long)span);
}

static void test_doubles_to_cap(void **state)
{
	(void)state;
	struct fl_backoff b;
	fl_backoff_init(&b, 0, 0, 42);
	assert_int_equal(b.min_ms, FL_MQTT_BACKOFF_MIN_MS);
	assert_int_equal(b.max_ms, FL_MQTT_BACKOFF_MAX_MS);
	int64_t step = FL_MQTT_BACKOFF_MIN_MS;
	for (int i = 0; i < 12; i++) {
		assert_step(fl_backoff_next(&b, 1000000, 0), step);
		step = step * 2 > FL_MQTT_BACKOFF_MAX_MS ? FL_MQTT_BACKOFF_MAX_MS : step * 2;
	}
	assert_int_equal(b.cur_ms, FL_MQTT_BACKOFF_MAX_MS);
}

static void test_reset_after_long_connection(void **state)
{
	(void)state;
	struct fl_backoff b;
	fl_backoff_init(&b, 100, 800, 7);
	for (int i = 0; i < 5; i++)
		fl_backoff_next(&b, 1000, 0);
	assert_int_equal(b.cur_ms, 800);
	/* a short connection keeps the long delay */
	assert_step(fl_backoff_next(&b, 10000, 10000 - FL_MQTT_BACKOFF_RESET_MS), 800);
	/* a connection that lasted longer than the reset time starts over */
	assert_step(fl_backoff_next(&b, 200000, 200000 - FL_MQTT_BACKOFF_RESET_MS - 1), 100);
	assert_int_equal(b.cur_ms, 200);
}

static void test_jitter_spreads(void **state)
{
	(void)state;
	/* a fleet must not reconnect in lockstep: 100 devices, different seeds */
	int64_t lo = INT64_MAX, hi = 0;
	for (uint64_t s = 1; s <= 100; s++) {
		struct fl_backoff b;
		fl_backoff_init(&b, 1000, 1000, s * 0x9E3779B97F4A7C15ull);
		int64_t d = fl_backoff_next(&b, 0, 0);
		assert_step(d, 1000);
		lo = d < lo ? d : lo;
		hi = d > hi ? d : hi;
	}
	assert_true(hi - lo > 200); /* of the 400 ms the jitter allows */
}

static void test_max_below_min(void **state)
{
	(void)state;
	struct fl_backoff b;
	fl_backoff_init(&b, 5000, 0, 0); /* only a larger min: the cap follows */
	assert_int_equal(b.max_ms, FL_MQTT_BACKOFF_MAX_MS);
	fl_backoff_init(&b, 5000, 2000, 0);
	assert_int_equal(b.max_ms, 5000);
	assert_true(b.rng != 0);
	assert_step(fl_backoff_next(&b, 0, 0), 5000);
	assert_step(fl_backoff_next(&b, 0, 0), 5000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_doubles_to_cap),
		cmocka_unit_test(test_reset_after_long_connection),
		cmocka_unit_test(test_jitter_spreads),
		cmocka_unit_test(test_max_below_min),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
