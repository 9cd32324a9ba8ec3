/* Confirmations of committed telemetry (docs/telemetry.md "Confirmation"):
 * per device and stream, seq ranges of every committed record (duplicates
 * too), nothing before the commit, the rest kept when the publisher is busy. */
#include <stdio.h>
#include <string.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>

/* A plain batch of DEVICE/STREAM with one event per seq in SEQS. */
static int feed(struct ctl *c, const char *device, const char *stream, const int *seqs, int n)
{
	char recs[8192] = "", buf[9000];
	size_t k = 0;
	for (int i = 0; i < n; i++)
		k += (size_t)snprintf(recs + k, sizeof(recs) - k,
				      "%s{\"seq\":%d,\"type\":\"event\",\"t\":1764001440,"
				      "\"kind\":\"disk_low\",\"reason\":\"below_threshold\"}",
				      i ? "," : "", seqs[i]);
	int len = snprintf(buf, sizeof(buf),
			   "{\"v\":1,\"device\":\"%s\",\"stream\":\"%s\",\"first\":%d,\"last\":%d,"
			   "\"n\":%d,\"records\":[%s]}",
			   device, stream, seqs[0], seqs[n - 1], n, recs);
	return ctl_ingest_batch(c, device, buf, (size_t)len);
}

struct got {
	char dev[8][16];
	char json[8][512];
	int n;
	int busy_after; /* refuse (window full) once this many were taken; -1 never */
};

static int take(void *ud, const char *device, const char *json, size_t len)
{
	struct got *g = ud;
	if (g->busy_after >= 0 && g->n >= g->busy_after)
		return -FL_EBUSY;
	assert_true(g->n < 8);
	assert_int_equal(strlen(json), len);
	snprintf(g->dev[g->n], sizeof(g->dev[0]), "%s", device);
	snprintf(g->json[g->n], sizeof(g->json[0]), "%s", json);
	g->n++;
	return 0;
}

static void test_ranges(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-ack", NULL, &dir);
	struct got g = {.busy_after = -1};
	int a[] = {1, 2, 3}, b[] = {5, 7, 8}, d2[] = {4};
	assert_int_equal(feed(c, "d1", "00000000000000aa", a, 3), 3);
	assert_int_equal(feed(c, "d1", "00000000000000aa", b, 3), 3);
	assert_int_equal(feed(c, "d2", "00000000000000bb", d2, 1), 1);
	/* nothing is confirmed before the commit */
	ctl_ingest_take_acks(c, take, &g);
	assert_int_equal(g.n, 0);
	assert_true(ctl_ingest_flush(c) >= 0);
	ctl_ingest_take_acks(c, take, &g);
	assert_int_equal(g.n, 2);
	assert_string_equal(g.dev[0], "d1");
	assert_string_equal(g.json[0],
			    "{\"v\":1,\"stream\":\"00000000000000aa\",\"ranges\":[[1,3],[5,5],[7,8]]}");
	assert_string_equal(g.dev[1], "d2");
	assert_string_equal(g.json[1], "{\"v\":1,\"stream\":\"00000000000000bb\",\"ranges\":[[4,4]]}");
	/* taken once: gone */
	g.n = 0;
	ctl_ingest_take_acks(c, take, &g);
	assert_int_equal(g.n, 0);

	/* duplicates are confirmed again (the device did not get the first) */
	assert_int_equal(feed(c, "d1", "00000000000000aa", a, 3), 3);
	assert_int_equal(feed(c, "d2", "00000000000000bb", d2, 1), 1);
	assert_true(ctl_ingest_flush(c) >= 0);
	/* the publisher is busy after one: the other stays queued, in order */
	g.busy_after = 1;
	ctl_ingest_take_acks(c, take, &g);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.json[0], "{\"v\":1,\"stream\":\"00000000000000aa\",\"ranges\":[[1,3]]}");
	g.busy_after = -1;
	g.n = 0;
	ctl_ingest_take_acks(c, take, &g);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.dev[0], "d2");
	ctu_close(c, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ranges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
