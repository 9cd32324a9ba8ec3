/* The store: migrations, bundles, telemetry idempotency, filters. Runs on
 * SQLite, and on PostgreSQL when FL_TEST_PG_DSN(_FILE) is set (ctest
 * controller_pg_store, docs/controller.md "Store: PostgreSQL"). */
#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>

static char *dbdir;
static char *dbpath;
static const char *pg; /* the test's PostgreSQL database, NULL for SQLite */

static int setup(void **state)
{
	(void)state;
	dbdir = fl_test_mkdtemp("ctl-store");
	dbpath = fl_path_join(dbdir, "c.db");
	pg = ctu_pg_new_db();
	return dbdir && dbpath ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	fl_rm_rf(dbdir);
	free(dbdir);
	free(dbpath);
	if (pg) {
		char sql[128];
		snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", ctu_pg_db);
		ctu_pg_exec(sql);
		pg = NULL;
	}
	return 0;
}

static int open_store(struct ctl_store **s)
{
	return pg ? ctl_store_open_pg(pg, s) : ctl_store_open_sqlite(dbpath, s);
}

static PGresult *pg_run(const char *sql)
{
	PGconn *pc = PQconnectdb(pg);
	assert_int_equal(PQstatus(pc), CONNECTION_OK);
	PGresult *res = PQexec(pc, sql);
	PQfinish(pc);
	return res;
}

static int64_t scalar(const char *sql)
{
	if (pg) {
		PGresult *res = pg_run(sql);
		assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
		int64_t v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		PQclear(res);
		return v;
	}
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	int64_t v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

static void exec(const char *sql)
{
	if (pg) {
		PGresult *res = pg_run(sql);
		assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
		PQclear(res);
		return;
	}
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
}

static void test_migrations(void **state)
{
	(void)state;
	struct ctl_store *s = NULL;
	assert_int_equal(open_store(&s), 0);
	int v = 0;
	assert_int_equal(s->ops->schema_version(s, &v), 0);
	assert_int_equal(v, CTL_STORE_SCHEMA_VERSION);
	ctl_store_close(s);
	/* Reopening runs nothing again. */
	assert_int_equal(open_store(&s), 0);
	ctl_store_close(s);
	assert_int_equal(scalar("SELECT COUNT(*) FROM schema_migrations"), CTL_STORE_SCHEMA_VERSION);
	assert_int_equal(scalar(pg ? "SELECT COUNT(*) FROM information_schema.tables"
				     " WHERE table_name = 'telemetry'"
				   : "SELECT COUNT(*) FROM sqlite_master WHERE name = 'telemetry'"),
			 1);

	/* A database from a newer controller is refused and left alone. */
	exec("INSERT INTO schema_migrations(version, applied_at) VALUES(99, 0)");
	assert_int_equal(open_store(&s), -FL_EUNSUPPORTED);
	assert_int_equal(scalar("SELECT MAX(version) FROM schema_migrations"), 99);
	exec("DELETE FROM schema_migrations WHERE version = 99");

	/* A missing directory or an unreachable server is an error, not a crash. */
	assert_int_equal(ctl_store_open_sqlite("/nonexistent/dir/c.db", &s), -FL_EDB);
	assert_int_equal(ctl_store_open_sqlite(NULL, &s), -EINVAL);
	assert_int_equal(ctl_store_open_pg("host=127.0.0.1 port=1 connect_timeout=2", &s), -FL_EDB);
	assert_int_equal(ctl_store_open_pg("", &s), -EINVAL);
}

static void *open_close(void *arg)
{
	struct ctl_store *s = NULL;
	*(int *)arg = ctl_store_open_pg(pg, &s);
	ctl_store_close(s);
	return NULL;
}

/* PostgreSQL: several controller instances starting at once on an empty
 * database migrate it once (the advisory lock), none fails. */
static void test_migrations_concurrent(void **state)
{
	(void)state;
	if (!pg)
		return; /* SQLite: one controller per file */
	enum { N = 4 };
	pthread_t t[N];
	int r[N];
	for (int i = 0; i < N; i++)
		assert_int_equal(pthread_create(&t[i], NULL, open_close, &r[i]), 0);
	for (int i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(r[i], 0);
	}
	assert_int_equal(scalar("SELECT COUNT(*) FROM schema_migrations"), CTL_STORE_SCHEMA_VERSION);
}

static void test_bundles(void **state)
{
	(void)state;
	struct ctl_store *s = NULL;
	assert_int_equal(open_store(&s), 0);
	struct ctl_bundle_rec b = {.model = "m", .version = "1.0", .sequence = 3,
				   .envelope_id = "aa", .envelope = "{}", .files_json = "[]",
				   .verified = false, .pushed_at_s = 7};
	assert_int_equal(s->ops->bundle_put(s, &b), 1);
	assert_int_equal(s->ops->bundle_put(s, &b), 0); /* idempotent */
	struct ctl_bundle_rec other = b;
	other.envelope_id = "bb";
	assert_int_equal(s->ops->bundle_put(s, &other), -EEXIST); /* same version */
	other.version = "1.1";
	assert_int_equal(s->ops->bundle_put(s, &other), -EEXIST); /* same sequence */
	other.sequence = 4;
	assert_int_equal(s->ops->bundle_put(s, &other), 1);
	cJSON *l = NULL;
	assert_int_equal(s->ops->bundle_list(s, &l), 0);
	cJSON *arr = cJSON_GetObjectItem(l, "bundles");
	assert_int_equal(cJSON_GetArraySize(arr), 2);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 1), "version")->valuestring,
			    "1.1");
	assert_false(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 0), "verified")));
	cJSON_Delete(l);
	ctl_store_close(s);
}

static void test_telemetry_idempotent(void **state)
{
	(void)state;
	struct ctl_store *s = NULL;
	assert_int_equal(open_store(&s), 0);
	struct ctl_tele_rec t = {.device = "d1", .stream = "0123456789abcdef", .seq = 1,
				 .kind = "event:committed", .ts = 5, .json = "{\"seq\":1}"};
	assert_int_equal(s->ops->begin(s), 0);
	assert_int_equal(s->ops->tele_insert(s, &t), 1);
	assert_int_equal(s->ops->tele_insert(s, &t), 0);
	t.stream = "fedcba9876543210"; /* a new outbox: same seq is a new record */
	assert_int_equal(s->ops->tele_insert(s, &t), 1);
	assert_int_equal(s->ops->commit(s), 0);
	/* A rolled back transaction leaves nothing. */
	t.seq = 2;
	assert_int_equal(s->ops->begin(s), 0);
	assert_int_equal(s->ops->tele_insert(s, &t), 1);
	assert_int_equal(s->ops->rollback(s), 0);
	ctl_store_close(s);
	assert_int_equal(scalar("SELECT COUNT(*) FROM telemetry"), 2);

	/* The batch insert (PostgreSQL): which records were new, duplicates of
	 * stored ones and of earlier ones in the batch are not. */
	assert_int_equal(open_store(&s), 0);
	if (s->ops->tele_insert_batch) {
		struct ctl_tele_rec b[4] = {t, t, t, t};
		b[0].seq = 1; /* stored above */
		b[1].seq = 7;
		b[2].seq = 7; /* same as b[1] */
		b[3].seq = (uint64_t)INT64_MAX;
		b[3].json = "{\"q\":\"\\\"quoted\\\"\"}";
		uint8_t isnew[4] = {9, 9, 9, 9};
		assert_int_equal(s->ops->begin(s), 0);
		assert_int_equal(s->ops->tele_insert_batch(s, b, 4, isnew), 0);
		assert_int_equal(s->ops->commit(s), 0);
		assert_int_equal(isnew[0], 0);
		assert_int_equal(isnew[1], 1);
		assert_int_equal(isnew[2], 0);
		assert_int_equal(isnew[3], 1);
		assert_int_equal(scalar("SELECT COUNT(*) FROM telemetry WHERE seq = 9223372036854775807"
					" AND body = '{\"q\":\"\\\"quoted\\\"\"}'"),
				 1);
		assert_int_equal(scalar("SELECT COUNT(*) FROM telemetry"), 4);
	}
	ctl_store_close(s);
}

static void test_devices_and_audit(void **state)
{
	(void)state;
	struct ctl_store *s = NULL;
	assert_int_equal(open_store(&s), 0);
	struct ctl_device d = {.id = "gw-1", .labels_json = "{\"site\":\"a\"}", .arch = "aarch64",
			       .ram_mb = 512, .online = true, .last_seen_s = 10, .agent_version = "0.1"};
	assert_int_equal(s->ops->device_upsert(s, &d), 0);
	d.id = "gw-2";
	d.arch = "x86_64";
	d.labels_json = "{\"site\":\"b\"}";
	assert_int_equal(s->ops->device_upsert(s, &d), 0);
	struct ctl_device_model m = {.device = "gw-2", .model = "llm", .current_slot = "a",
				     .current_version = "2.0"};
	assert_int_equal(s->ops->device_model_put(s, &m), 0);
	assert_int_equal(s->ops->device_model_put(s, &m), -FL_EDB); /* primary key */
	assert_int_equal(s->ops->device_set_offline(s, "gw-1", 11), 0);

	cJSON *o = NULL;
	struct ctl_device_filter f = {.online = -1, .label_key = "site", .label_value = "b"};
	assert_int_equal(s->ops->device_list(s, &f, &o), 0);
	cJSON *arr = cJSON_GetObjectItem(o, "devices");
	assert_int_equal(cJSON_GetArraySize(arr), 1);
	cJSON *dev = cJSON_GetArrayItem(arr, 0);
	assert_string_equal(cJSON_GetObjectItem(dev, "id")->valuestring, "gw-2");
	assert_string_equal(
		cJSON_GetObjectItem(cJSON_GetObjectItem(dev, "versions"), "llm")->valuestring, "2.0");
	cJSON_Delete(o);
	struct ctl_device_filter f2 = {.online = 0};
	assert_int_equal(s->ops->device_list(s, &f2, &o), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "devices")), 1);
	cJSON_Delete(o);
	struct ctl_device_filter f3 = {.online = -1, .version = "2.0", .arch = "aarch64"};
	assert_int_equal(s->ops->device_list(s, &f3, &o), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "devices")), 0);
	cJSON_Delete(o);
	assert_int_equal(s->ops->device_get(s, "nope", 5, &o), -ENOENT);

	assert_int_equal(s->ops->metrics(s, &o), 0);
	assert_int_equal(cJSON_GetObjectItem(o, "online")->valueint, 1);
	assert_int_equal(cJSON_GetObjectItem(o, "offline")->valueint, 1);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "versions")), 1);
	cJSON_Delete(o);

	int64_t n = -1;
	assert_int_equal(s->ops->audit(s, 1, "ci", "bundle.push", "why"), 0);
	assert_int_equal(s->ops->audit_count(s, &n), 0);
	assert_int_equal(n, 1);
	ctl_store_close(s);
}

/* Health totals add up inside a transaction (PostgreSQL sends these writes
 * pipelined), and a failing one fails the commit (read back: nothing). */
static void test_health_totals(void **state)
{
	(void)state;
	struct ctl_store *s = NULL;
	assert_int_equal(open_store(&s), 0);
	struct ctl_health h = {.device = "d1", .model = "m", .version = "1", .first_s = 5,
			       .last_s = 5, .records = 1, .requests = 10, .errors = 1};
	h.latency_us.count = 2;
	h.latency_us.counts[3] = 2;
	assert_int_equal(s->ops->begin(s), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(s->ops->health_add(s, &h), 0);
	assert_int_equal(s->ops->commit(s), 0);
	assert_int_equal(scalar("SELECT requests FROM health WHERE device = 'd1'"), 30);
	assert_int_equal(scalar("SELECT errors + records FROM health WHERE device = 'd1'"), 6);
	assert_int_equal(scalar("SELECT lat_n FROM health WHERE device = 'd1'"), 6);
	if (pg) {
		assert_int_equal(scalar("SELECT lat_hist[4] FROM health WHERE device = 'd1'"), 6);
		struct ctl_health bad = h;
		bad.device = "d\xff"; /* not UTF-8: the server refuses it */
		assert_int_equal(s->ops->begin(s), 0);
		assert_int_equal(s->ops->health_add(s, &h), 0);
		(void)s->ops->health_add(s, &bad); /* may fail now or at the commit */
		assert_int_equal(s->ops->commit(s), -FL_EDB);
		assert_int_equal(s->ops->rollback(s), 0);
		assert_int_equal(scalar("SELECT requests FROM health WHERE device = 'd1'"), 30);
		int v = 0;
		assert_int_equal(s->ops->schema_version(s, &v), 0); /* usable again */
		assert_int_equal(v, CTL_STORE_SCHEMA_VERSION);
	}
	ctl_store_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_migrations, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrations_concurrent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bundles, setup, teardown),
		cmocka_unit_test_setup_teardown(test_telemetry_idempotent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_devices_and_audit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_health_totals, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
