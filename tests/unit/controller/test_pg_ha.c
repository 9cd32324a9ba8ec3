/* Several controller instances on one store, and a store whose connection
 * goes away (docs/controller.md "Several instances", "Reconnect"). The
 * PostgreSQL run (controller_pg_pg_ha) opens two controllers on one
 * database; the SQLite run checks the store op tele_covered alone. */
#include <errno.h>
#include <stdio.h>
#include <time.h>

#include "ctl_testutil.h"
#include "ctl_internal.h"
#include "rollout.h"

#include <flotilla/error.h>

#define STREAM "0123456789abcdef"

/* A batch of DEVICE: events FIRST..LAST, then (DROP_SEQ > 0) a drop report
 * at DROP_SEQ covering DROP_A..DROP_B. Caller frees. */
static char *batch(const char *device, uint64_t first, uint64_t last, uint64_t drop_seq,
		   uint64_t drop_a, uint64_t drop_b)
{
	char recs[16384] = "";
	size_t rn = 0, count = 0;
	for (uint64_t q = first; q <= last; q++, count++)
		rn += (size_t)snprintf(recs + rn, sizeof(recs) - rn,
				       "%s{\"seq\":%llu,\"type\":\"event\",\"t\":1764001440,"
				       "\"kind\":\"committed\",\"model\":\"m\",\"version\":\"1\","
				       "\"reason\":\"ok\"}",
				       count ? "," : "", (unsigned long long)q);
	uint64_t hi = last;
	if (drop_seq) {
		rn += (size_t)snprintf(recs + rn, sizeof(recs) - rn,
				       "%s{\"seq\":%llu,\"type\":\"dropped\",\"t\":7,\"count\":%llu,"
				       "\"bytes\":100,\"ranges\":[[%llu,%llu]]}",
				       count ? "," : "", (unsigned long long)drop_seq,
				       (unsigned long long)(drop_b - drop_a + 1),
				       (unsigned long long)drop_a, (unsigned long long)drop_b);
		count++;
		hi = drop_seq;
	}
	assert_true(rn < sizeof(recs));
	if (last < first) /* the drop report alone */
		first = drop_seq;
	char *s = fl_asprintf("{\"v\":1,\"device\":\"%s\",\"stream\":\"%s\",\"first\":%llu,"
			      "\"last\":%llu,\"n\":%zu,\"records\":[%s]}",
			      device, STREAM, (unsigned long long)first, (unsigned long long)hi,
			      count, recs);
	assert_non_null(s);
	return s;
}

static void feed(struct ctl *c, const char *dev, uint64_t first, uint64_t last, uint64_t drop_seq,
		 uint64_t drop_a, uint64_t drop_b)
{
	char *b = batch(dev, first, last, drop_seq, drop_a, drop_b);
	int n = ctl_ingest_batch(c, dev, b, strlen(b));
	free(b);
	assert_true(n > 0);
}

/* The device's stored gap summary (the gaps row, PostgreSQL run only):
 * missing seqs and highest. */
static void gaps_of(struct ctl *c, const char *dev, int64_t *missing, int64_t *highest)
{
	(void)c;
	PGconn *pc = PQconnectdb(ctu_store_dsn());
	assert_int_equal(PQstatus(pc), CONNECTION_OK);
	const char *v[1] = {dev};
	PGresult *res = PQexecParams(pc, "SELECT missing_seqs, highest FROM gaps WHERE device = $1",
				     1, NULL, v, NULL, NULL, 0);
	assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
	assert_int_equal(PQntuples(res), 1);
	*missing = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	*highest = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	PQclear(res);
	PQfinish(pc);
}

/* The store op on its own (both backends): runs of stored seqs and the
 * ranges of drop reports. */
static void test_covered(void **state)
{
	(void)state;
	char *dir = NULL;
	struct ctl *c = ctu_open("pgha-cov", NULL, &dir);
	feed(c, "d1", 1, 3, 0, 0, 0);
	feed(c, "d1", 6, 7, 9, 8, 8); /* 9 reports 8 dropped */
	feed(c, "d1", 12, 12, 0, 0, 0);
	assert_true(ctl_ingest_flush(c) >= 0);
	uint64_t out[16][2];
	size_t n = 99;
	struct ctl_store *st = c->store;
	assert_non_null(st->ops->tele_covered);
	assert_int_equal(st->ops->tele_covered(st, "d1", STREAM, 1, 20, out, 16, &n), 0);
	/* 1-3, 6-7, 8-8 (the drop report's range), 9-9, 12-12 */
	assert_int_equal(n, 5);
	uint64_t want[5][2] = {{1, 3}, {6, 7}, {8, 8}, {9, 9}, {12, 12}};
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(out[i][0], want[i][0]);
		assert_int_equal(out[i][1], want[i][1]);
	}
	/* a window, a cap, another stream, another device */
	assert_int_equal(st->ops->tele_covered(st, "d1", STREAM, 2, 6, out, 16, &n), 0);
	assert_true(n >= 2);
	assert_int_equal(out[0][0], 2);
	assert_int_equal(out[0][1], 3);
	assert_int_equal(st->ops->tele_covered(st, "d1", STREAM, 1, 20, out, 2, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(st->ops->tele_covered(st, "d1", "ffffffffffffffff", 1, 20, out, 16, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(st->ops->tele_covered(st, "d2", STREAM, 1, 20, out, 16, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(st->ops->tele_covered(st, "d1", STREAM, 1, UINT64_MAX, out, 16, &n),
			 -EINVAL);
	ctu_close(c, dir);
}

/* A second controller on the store of the last ctu_open(). */
static struct ctl *second(char **ret_dir)
{
	char *dir = fl_test_mkdtemp("pgha-2");
	assert_non_null(dir);
	struct ctl_opts o = {.data_dir = dir, .store_dsn = ctu_store_dsn()};
	struct ctl *c = NULL;
	assert_int_equal(ctl_open(&o, &c), 0);
	*ret_dir = dir;
	return c;
}

static void close_second(struct ctl *c, char *dir)
{
	ctl_free(c);
	fl_rm_rf(dir);
	free(dir);
}

/* Batches of one device alternate between two instances: holes the other
 * instance fills are healed from the store, a drop report committed by the
 * other one counts, nothing is stored twice, and the gap ends at 0. */
static void test_gaps_two_instances(void **state)
{
	(void)state;
	if (!ctu_pg_dsn())
		skip();
	char *d1 = NULL, *d2 = NULL;
	struct ctl *c1 = ctu_open("pgha-gaps", NULL, &d1);
	struct ctl *c2 = second(&d2);
	int64_t miss, high;

	feed(c1, "dev", 1, 5, 0, 0, 0);
	assert_true(ctl_ingest_flush(c1) >= 0);
	feed(c2, "dev", 6, 10, 0, 0, 0);  /* pending on c2 ... */
	feed(c1, "dev", 11, 15, 0, 0, 0);
	assert_true(ctl_ingest_flush(c1) >= 0);
	gaps_of(c1, "dev", &miss, &high);
	assert_int_equal(miss, 5); /* ... so c1 sees 6-10 missing for now */
	assert_int_equal(high, 15);
	assert_true(ctl_ingest_flush(c2) >= 0);
	/* c1 checks its holes against the store again within a second */
	struct timespec ts = {1, 200 * 1000 * 1000};
	nanosleep(&ts, NULL);
	assert_true(ctl_tick(c1) >= 0);
	gaps_of(c1, "dev", &miss, &high);
	assert_int_equal(miss, 0);
	assert_int_equal(high, 15);

	/* a drop report (17) for 16 reaches c2, the records after it c1 */
	feed(c2, "dev", 1, 0, 17, 16, 16);
	feed(c1, "dev", 18, 22, 0, 0, 0);
	assert_true(ctl_ingest_flush(c2) >= 0);
	assert_true(ctl_ingest_flush(c1) >= 0);
	gaps_of(c2, "dev", &miss, &high);
	assert_int_equal(miss, 0);
	assert_int_equal(high, 22);

	/* the same batch through both: stored once */
	feed(c1, "dev", 23, 25, 0, 0, 0);
	feed(c2, "dev", 23, 25, 0, 0, 0);
	assert_true(ctl_ingest_flush(c1) >= 0);
	assert_true(ctl_ingest_flush(c2) >= 0);
	nanosleep(&ts, NULL);
	assert_true(ctl_tick(c1) >= 0);
	assert_true(ctl_tick(c2) >= 0);
	gaps_of(c2, "dev", &miss, &high);
	assert_int_equal(miss, 0);
	assert_int_equal(high, 25);
	PGconn *pc = PQconnectdb(ctu_store_dsn());
	assert_int_equal(PQstatus(pc), CONNECTION_OK);
	PGresult *res = PQexec(pc, "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq)"
				   " FROM telemetry WHERE device = 'dev'");
	assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
	/* 1..25 but 16 (dropped; 17 is the report): 24 records, each once */
	assert_string_equal(PQgetvalue(res, 0, 0), "24");
	assert_string_equal(PQgetvalue(res, 0, 1), "24");
	PQclear(res);
	PQfinish(pc);
	close_second(c2, d2);
	ctu_close(c1, d1);
}

/* End the store's session from outside, as a server restart does. */
static void kill_sessions(void)
{
	char sql[256];
	snprintf(sql, sizeof(sql),
		 "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'"
		 " AND pid <> pg_backend_pid()",
		 ctu_pg_db);
	PGconn *pc = PQconnectdb(ctu_pg_dsn());
	assert_int_equal(PQstatus(pc), CONNECTION_OK);
	PGresult *res = PQexec(pc, sql);
	assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
	PQclear(res);
	PQfinish(pc);
	struct timespec ts = {0, 100 * 1000 * 1000};
	nanosleep(&ts, NULL);
}

static void allow_connections(bool on)
{
	char sql[160];
	snprintf(sql, sizeof(sql), "ALTER DATABASE %s WITH ALLOW_CONNECTIONS %s", ctu_pg_db,
		 on ? "true" : "false");
	ctu_pg_exec(sql);
}

/* The session is terminated: the next operation reconnects by itself
 * (outside a transaction the statement runs again; a transaction begins on
 * the new session); while the server refuses, operations fail at once and
 * reconnects are spaced (no spinning); the engine's lock is taken again. */
static void test_reconnect(void **state)
{
	(void)state;
	if (!ctu_pg_dsn())
		skip();
	char *dir = NULL;
	struct ctl *c = ctu_open("pgha-re", NULL, &dir);
	struct ctl_store *st = c->store;
	assert_int_equal(st->ops->engine_leader(st), 1);
	cJSON *o = NULL;

	kill_sessions();
	assert_int_equal(ctl_rollout_list(c, &o), 0); /* one statement: run again */
	cJSON_Delete(o);
	assert_int_equal(st->ops->engine_leader(st), 1); /* the lock taken again */

	kill_sessions();
	feed(c, "dev", 1, 4, 0, 0, 0);
	assert_int_equal(ctl_ingest_flush(c), 4); /* BEGIN on the new session */

	/* The server refuses the database for a while. */
	allow_connections(false);
	kill_sessions();
	feed(c, "dev", 5, 8, 0, 0, 0);
	int64_t t0 = fl_mono_ms();
	int fails = 0;
	for (int i = 0; i < 200; i++) {
		if (ctl_ingest_flush(c) == -FL_EDB)
			fails++;
		if (ctl_rollout_list(c, &o) == 0)
			cJSON_Delete(o);
		else
			fails++;
	}
	int64_t spent = fl_mono_ms() - t0;
	assert_int_equal(fails, 400);
	/* 400 calls with backoff: one connection attempt (refused at once),
	 * then each fails without trying again */
	assert_true(spent < 2000);
	assert_int_equal(st->ops->engine_leader(st), -FL_EDB);
	allow_connections(true);
	/* the pending records stayed and go in once the backoff allows */
	int r = -1;
	for (int i = 0; i < 100 && r < 0; i++) {
		struct timespec ts = {0, 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
		r = ctl_ingest_flush(c);
	}
	assert_int_equal(r, 4);
	assert_int_equal(st->ops->engine_leader(st), 1);
	int64_t miss, high;
	gaps_of(c, "dev", &miss, &high);
	assert_int_equal(miss, 0);
	assert_int_equal(high, 8);
	ctu_close(c, dir);
}

/* ---------------------------------------------------------------- takeover */

static int count_send(void *ud, const char *device, const char *json, size_t len)
{
	(void)device;
	(void)json;
	(void)len;
	(*(int *)ud)++;
	return 0;
}

static void online_v(struct ctl *c, const char *id, bool on, const char *version)
{
	char buf[1024];
	if (on)
		snprintf(buf, sizeof(buf),
			 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1.0\","
			 "\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":1024,\"accelerators\":[],"
			 "\"backends\":[]},\"labels\":{},\"models\":{\"m\":{\"current\":\"a\","
			 "\"slots\":{\"a\":{\"status\":\"ready\",\"version\":\"%s\","
			 "\"sequence\":1}}}}}",
			 id, version);
	else
		snprintf(buf, sizeof(buf), "{\"v\":1,\"device\":\"%s\",\"online\":false}", id);
	assert_int_equal(ctl_registry_on_state(c, id, buf, strlen(buf)), 0);
}

static void online(struct ctl *c, const char *id, bool on)
{
	online_v(c, id, on, "1.0");
}

/* The engine's process dies after recording deploys it may not have
 * published: the next one to run the engine sends the deploy again, once,
 * to the online devices that show no install of it 20 s after it took
 * over; not to offline ones, not again after that. */
static void test_takeover_redeploy(void **state)
{
	(void)state;
	char *dir = NULL;
	struct ctl *c1 = ctu_open("pgha-take", NULL, &dir);
	struct ctl_bundle_rec b = {.model = "m",
				   .version = "2.0",
				   .sequence = 2,
				   .envelope_id = "00",
				   .envelope = "{}",
				   .files_json = "[]",
				   .pushed_at_s = 1};
	assert_int_equal(c1->store->ops->bundle_put(c1->store, &b), 1);
	online(c1, "dev-a", true);
	online(c1, "dev-b", true);
	const char *body = "{\"model\":\"m\",\"version\":\"2.0\",\"waves\":[100],\"soak_s\":0}";
	cJSON *o = NULL;
	assert_int_equal(ctl_rollout_create(c1, body, strlen(body), "op", 1000, &o), 0);
	cJSON_Delete(o);
	int sent = 0;
	assert_int_equal(ctl_rollout_tick(c1, 1000, count_send, &sent), 2);
	assert_int_equal(ctu_audit_rows(dir, "rollout.deploy", "%"), 2);
	ctl_free(c1); /* killed: PostgreSQL frees its engine lock */

	struct ctl_opts op = {.data_dir = dir, .store_dsn = ctu_store_dsn()};
	struct ctl *c2 = NULL;
	assert_int_equal(ctl_open(&op, &c2), 0);
	online(c2, "dev-b", false);
	sent = 0;
	assert_int_equal(ctl_rollout_tick(c2, 1001, count_send, &sent), 0); /* takes over */
	assert_int_equal(ctl_rollout_tick(c2, 1020, count_send, &sent), 0);
	assert_int_equal(ctl_rollout_tick(c2, 1021, count_send, &sent), 1); /* dev-a only */
	assert_int_equal(ctu_audit_rows(dir, "rollout.redeploy", "%sent again to dev-a%"), 1);
	assert_int_equal(ctl_rollout_tick(c2, 1060, count_send, &sent), 0); /* once */
	assert_int_equal(ctu_audit_rows(dir, "rollout.redeploy", "%"), 1);
	assert_int_equal(ctu_audit_rows(dir, "rollout.deploy", "%"), 2);
	assert_int_equal(ctl_rollout_get(c2, 1, &o), 0);
	const cJSON *cnt = cJSON_GetObjectItem(o, "counts");
	assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(cnt, "attempted")), 2);
	assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(cnt, "in_progress")), 2);
	cJSON_Delete(o);

	/* Both took 2.0; rolled back by hand, the reverts are recorded, and
	 * the engine's process dies before publishing them. */
	online_v(c2, "dev-a", true, "2.0");
	online_v(c2, "dev-b", true, "2.0");
	assert_int_equal(ctl_rollout_action(c2, 1, "rollback", "op", 1070, NULL), 0);
	assert_int_equal(ctl_rollout_tick(c2, 1070, count_send, &sent), 2);
	assert_int_equal(ctu_audit_rows(dir, "rollout.revert", "%revert sent to%"), 2);
	ctl_free(c2);
	struct ctl *c3 = NULL;
	assert_int_equal(ctl_open(&op, &c3), 0);
	online(c3, "dev-b", false);
	assert_int_equal(ctl_rollout_tick(c3, 1080, count_send, &sent), 0);
	assert_int_equal(ctl_rollout_tick(c3, 1100, count_send, &sent), 1); /* dev-a only */
	assert_int_equal(ctu_audit_rows(dir, "rollout.revert", "%revert sent again to dev-a%"), 1);
	assert_int_equal(ctl_rollout_tick(c3, 1130, count_send, &sent), 0); /* once */
	assert_int_equal(ctu_audit_rows(dir, "rollout.revert", "%"), 3);
	ctu_close(c3, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_covered),
		cmocka_unit_test(test_gaps_two_instances),
		cmocka_unit_test(test_reconnect),
		cmocka_unit_test(test_takeover_redeploy),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
