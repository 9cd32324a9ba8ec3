/* Telemetry ingestion: idempotency, batching, gaps, drops, refusals. */
#include <errno.h>
#include <stdio.h>
#include <time.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>
#include <flotilla/tele_wire.h>

#define STREAM "0123456789abcdef"

/* A batch of DEVICE with events FIRST..LAST (step STEP), plus an optional
 * drop report at seq DROP_SEQ covering DROP_A..DROP_B. Caller frees. */
static char *batch(const char *device, const char *stream, uint64_t first, uint64_t last,
		   uint64_t drop_seq, uint64_t drop_a, uint64_t drop_b)
{
	size_t cap = 256 + (last - first + 2) * 160;
	char *s = malloc(cap);
	assert_non_null(s);
	size_t n = 0, count = 0;
	uint64_t lo = first, hi = last;
	if (drop_seq && drop_seq < lo)
		lo = drop_seq;
	if (drop_seq > hi)
		hi = drop_seq;
	char recs[65536] = "";
	size_t rn = 0;
	for (uint64_t q = lo; q <= hi; q++) {
		if (q == drop_seq)
			rn += (size_t)snprintf(recs + rn, sizeof(recs) - rn,
					       "%s{\"seq\":%llu,\"type\":\"dropped\",\"t\":7,\"count\":%llu,"
					       "\"bytes\":100,\"ranges\":[[%llu,%llu]]}",
					       count ? "," : "", (unsigned long long)q,
					       (unsigned long long)(drop_b - drop_a + 1),
					       (unsigned long long)drop_a, (unsigned long long)drop_b);
		else if (q >= first && q <= last)
			rn += (size_t)snprintf(recs + rn, sizeof(recs) - rn,
					       "%s{\"seq\":%llu,\"type\":\"event\",\"t\":1764001440,"
					       "\"kind\":\"committed\",\"model\":\"m\",\"version\":\"1\","
					       "\"reason\":\"ok\"}",
					       count ? "," : "", (unsigned long long)q);
		else
			continue;
		count++;
	}
	n = (size_t)snprintf(s, cap, "{\"v\":1,\"device\":\"%s\",\"stream\":\"%s\",\"first\":%llu,"
				     "\"last\":%llu,\"n\":%zu,\"records\":[%s]}",
			     device, stream, (unsigned long long)lo, (unsigned long long)hi, count, recs);
	assert_true(n < cap);
	return s;
}

static int ingest(struct ctl *c, const char *id, const char *payload)
{
	return ctl_ingest_batch(c, id, payload, strlen(payload));
}

static cJSON *tele_of(struct ctl *c, const char *id, cJSON **root)
{
	assert_int_equal(ctl_device_get(c, id, root), 0);
	return cJSON_GetObjectItem(*root, "telemetry");
}

static void register_dev(struct ctl *c, const char *id)
{
	char s[512];
	snprintf(s, sizeof(s),
		 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"1\",\"hw\":{\"arch\":"
		 "\"x86_64\",\"ram_mb\":1,\"accelerators\":[],\"backends\":[]}}",
		 id);
	assert_int_equal(ctl_registry_on_state(c, id, s, strlen(s)), 0);
}

static void test_idempotent(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-ing", NULL, &dir);
	register_dev(c, "d1");
	char *b = batch("d1", STREAM, 1, 3, 0, 0, 0);
	assert_int_equal(ingest(c, "d1", b), 3);
	assert_int_equal(ctl_ingest_flush(c), 3);
	assert_int_equal(ingest(c, "d1", b), 3); /* redelivered */
	assert_int_equal(ctl_ingest_flush(c), 0);
	struct ctl_counters k;
	ctl_get_counters(c, &k);
	assert_int_equal(k.tele_inserted, 3);
	assert_int_equal(k.tele_duplicates, 3);
	assert_int_equal(k.tele_batches, 2);

	cJSON *root = NULL;
	cJSON *t = tele_of(c, "d1", &root);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(root, "events")), 3);
	assert_int_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "events"), 0),
					     "seq")->valueint,
			 3); /* newest first */
	assert_int_equal(cJSON_GetObjectItem(t, "highest")->valueint, 3);
	assert_int_equal(cJSON_GetObjectItem(t, "missing_seqs")->valueint, 0);
	cJSON_Delete(root);

	/* Compressed framing is accepted the same way. */
	char *b2 = batch("d1", STREAM, 4, 5, 0, 0, 0);
	uint8_t *z = NULL;
	size_t zl = 0;
	assert_int_equal(tele_wire_compress(b2, strlen(b2), &z, &zl), 0);
	assert_int_equal(ctl_ingest_batch(c, "d1", z, zl), 2);
	assert_int_equal(ctl_ingest_flush(c), 2);
	free(z);
	free(b2);
	free(b);
	ctu_close(c, dir);
}

static void test_gaps_and_drops(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-gaps", NULL, &dir);
	register_dev(c, "d2");
	char *b1 = batch("d2", STREAM, 1, 2, 0, 0, 0);
	char *b2 = batch("d2", STREAM, 6, 7, 0, 0, 0);
	assert_int_equal(ingest(c, "d2", b1), 2);
	assert_int_equal(ingest(c, "d2", b2), 2);
	assert_int_equal(ctl_ingest_flush(c), 4);
	cJSON *root = NULL;
	cJSON *t = tele_of(c, "d2", &root);
	assert_int_equal(cJSON_GetObjectItem(t, "missing_seqs")->valueint, 3); /* 3..5 */
	assert_int_equal(cJSON_GetObjectItem(t, "missing_ranges")->valueint, 1);
	cJSON_Delete(root);

	/* The device reports 3..4 dropped (at seq 8): those are not gaps. */
	char *b3 = batch("d2", STREAM, 9, 9, 8, 3, 4);
	assert_int_equal(ingest(c, "d2", b3), 2);
	assert_int_equal(ctl_ingest_flush(c), 2);
	t = tele_of(c, "d2", &root);
	assert_int_equal(cJSON_GetObjectItem(t, "missing_seqs")->valueint, 1); /* 5 */
	assert_int_equal(cJSON_GetObjectItem(t, "dropped")->valueint, 2);
	cJSON_Delete(root);

	/* Late arrival of 5 closes the gap. */
	char *b4 = batch("d2", STREAM, 5, 5, 0, 0, 0);
	assert_int_equal(ingest(c, "d2", b4), 1);
	assert_int_equal(ctl_ingest_flush(c), 1);
	t = tele_of(c, "d2", &root);
	assert_int_equal(cJSON_GetObjectItem(t, "missing_seqs")->valueint, 0);
	assert_int_equal(cJSON_GetObjectItem(t, "highest")->valueint, 9);
	cJSON_Delete(root);

	/* After a restart the tracker continues above the stored highest. */
	ctl_free(c);
	struct ctl_opts o = {.data_dir = dir, .store_dsn = ctu_store_dsn()};
	assert_int_equal(ctl_open(&o, &c), 0);
	char *b5 = batch("d2", STREAM, 10, 11, 0, 0, 0);
	assert_int_equal(ingest(c, "d2", b5), 2);
	assert_int_equal(ctl_ingest_flush(c), 2);
	t = tele_of(c, "d2", &root);
	assert_int_equal(cJSON_GetObjectItem(t, "missing_seqs")->valueint, 0);
	assert_int_equal(cJSON_GetObjectItem(t, "highest")->valueint, 11);
	cJSON_Delete(root);

	/* A new stream (the device lost its outbox) starts again at 1. */
	char *b6 = batch("d2", "fedcba9876543210", 3, 3, 0, 0, 0);
	assert_int_equal(ingest(c, "d2", b6), 1);
	assert_int_equal(ctl_ingest_flush(c), 1);
	t = tele_of(c, "d2", &root);
	assert_string_equal(cJSON_GetObjectItem(t, "stream")->valuestring, "fedcba9876543210");
	assert_int_equal(cJSON_GetObjectItem(t, "missing_seqs")->valueint, 2); /* 1..2 */
	cJSON_Delete(root);

	char *m = NULL;
	assert_int_equal(ctl_metrics_text(c, &m), 0);
	assert_non_null(strstr(m, "flotilla_telemetry_missing_seqs 2\n"));
	free(m);
	free(b1);
	free(b2);
	free(b3);
	free(b4);
	free(b5);
	free(b6);
	ctu_close(c, dir);
}

static void test_batching(void **state)
{
	(void)state;
	char *dir;
	struct ctl_opts o = {.batch_records = 10, .flush_ms = 1};
	struct ctl *c = ctu_open("ctl-batch", &o, &dir);
	register_dev(c, "d3");
	struct ctl_counters k;
	for (uint64_t i = 0; i < 4; i++) {
		char *b = batch("d3", STREAM, 1 + 3 * i, 3 + 3 * i, 0, 0, 0);
		assert_int_equal(ingest(c, "d3", b), 3);
		free(b);
	}
	/* 12 records: one commit happened when 12 >= 10 were pending. */
	ctl_get_counters(c, &k);
	assert_int_equal(k.tele_commits, 1);
	assert_int_equal(k.tele_inserted, 12);
	char *b = batch("d3", STREAM, 13, 13, 0, 0, 0);
	assert_int_equal(ingest(c, "d3", b), 1);
	free(b);
	ctl_get_counters(c, &k);
	assert_int_equal(k.tele_inserted, 12); /* pending */
	struct timespec ts = {0, 5 * 1000000L};
	nanosleep(&ts, NULL);
	assert_int_equal(ctl_tick(c), 1);
	ctl_get_counters(c, &k);
	assert_int_equal(k.tele_inserted, 13);
	assert_int_equal(ctl_tick(c), 0); /* nothing left */
	/* Closing commits what is pending. */
	b = batch("d3", STREAM, 14, 15, 0, 0, 0);
	assert_int_equal(ingest(c, "d3", b), 2);
	free(b);
	ctl_free(c);
	struct ctl_opts o2 = {.data_dir = dir, .store_dsn = ctu_store_dsn()};
	assert_int_equal(ctl_open(&o2, &c), 0);
	cJSON *root = NULL;
	cJSON *t = tele_of(c, "d3", &root);
	(void)t;
	cJSON_Delete(root);
	b = batch("d3", STREAM, 1, 15, 0, 0, 0);
	assert_int_equal(ingest(c, "d3", b), 15);
	assert_int_equal(ctl_ingest_flush(c), 0); /* all 15 were stored */
	free(b);
	ctu_close(c, dir);
}

static void test_refused(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-refuse", NULL, &dir);
	char *good = batch("d4", STREAM, 1, 2, 0, 0, 0);
	assert_int_equal(ingest(c, "d4", good), 2);
	/* Another device's batch on d5's topic. */
	assert_int_equal(ingest(c, "d5", good), -FL_EPROTO);
	assert_int_equal(ingest(c, "bad/id", good), -FL_EPROTO);
	assert_int_equal(ingest(c, "d4", "{\"v\":1}"), -FL_ESCHEMA);
	assert_int_equal(ingest(c, "d4", "garbage"), -FL_EFORMAT);
	assert_int_equal(ingest(c, "d4", "{garbage"), -FL_EINVAL_JSON);
	assert_int_equal(ctl_ingest_batch(c, "d4", "FLZ\x01\x00\x00\x00\x10xx", 10), -FL_EFORMAT);
	size_t big = TELE_WIRE_MAX_PAYLOAD + 1;
	char *huge = calloc(1, big);
	huge[0] = '{';
	assert_int_equal(ctl_ingest_batch(c, "d4", huge, big), -FL_ETOOBIG);
	free(huge);
	/* A record with an unknown field spoils its whole batch. */
	assert_int_equal(
		ingest(c, "d4",
		       "{\"v\":1,\"device\":\"d4\",\"stream\":\"" STREAM "\",\"first\":3,\"last\":4,"
		       "\"n\":2,\"records\":[{\"seq\":3,\"type\":\"event\",\"t\":1,\"kind\":"
		       "\"committed\",\"model\":\"m\",\"version\":\"1\",\"reason\":\"ok\"},"
		       "{\"seq\":4,\"type\":\"event\",\"t\":1,\"kind\":\"committed\",\"evil\":1}]}"),
		-FL_ESCHEMA);
	assert_int_equal(ctl_ingest_flush(c), 2);
	struct ctl_counters k;
	ctl_get_counters(c, &k);
	assert_int_equal(k.tele_refused, 8);
	assert_int_equal(k.tele_batches, 1);
	assert_int_equal(k.tele_inserted, 2);
	free(good);
	ctu_close(c, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_idempotent),
		cmocka_unit_test(test_gaps_and_drops),
		cmocka_unit_test(test_batching),
		cmocka_unit_test(test_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
