/* PostgreSQL (libpq) backend of the controller store (docs/controller.md
 * "Store: PostgreSQL"). Same operations, same JSON and the same numbered
 * migrations as store_sqlite.c; the SQL differs where the dialects do:
 * $N placeholders, BIGINT everywhere, jsonb operators instead of json_each,
 * the latency histogram as a BIGINT[] of TELE_HIST_BUCKETS counts summed in
 * SQL, ids from sequences. Parameters and results travel as text. */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

#include "store.h"

/* Key of the advisory lock that serializes migrations of several instances
 * starting at once ("flotmigr"). */
#define PG_MIGRATE_LOCK 0x666c6f746d696772LL
/* Key of the session advisory lock of the rollout engine's leader
 * ("flotlead"). */
#define PG_LEADER_LOCK 0x666c6f746c656164LL

/* Append only: never edit a migration that has shipped. Version N here is
 * the same schema as version N of the SQLite store. */
static const char *const migrations[] = {
	/* 1: initial schema */
	"CREATE TABLE devices("
	" id TEXT PRIMARY KEY,"
	" labels TEXT NOT NULL DEFAULT '{}',"
	" arch TEXT,"
	" ram_mb BIGINT,"
	" accelerators TEXT NOT NULL DEFAULT '[]',"
	" backends TEXT NOT NULL DEFAULT '[]',"
	" online INTEGER NOT NULL DEFAULT 0,"
	" last_seen BIGINT NOT NULL DEFAULT 0,"
	" agent_version TEXT);"
	"CREATE TABLE device_models("
	" device TEXT NOT NULL REFERENCES devices(id),"
	" model TEXT NOT NULL,"
	" current_slot TEXT,"
	" current_version TEXT,"
	" slots TEXT NOT NULL DEFAULT '{}',"
	" install_state TEXT,"
	" install_version TEXT,"
	" install_error TEXT,"
	" bytes_done BIGINT NOT NULL DEFAULT 0,"
	" bytes_total BIGINT NOT NULL DEFAULT 0,"
	" chunks_done BIGINT NOT NULL DEFAULT 0,"
	" chunks_total BIGINT NOT NULL DEFAULT 0,"
	" PRIMARY KEY(device, model));"
	"CREATE INDEX device_models_version ON device_models(current_version);"
	"CREATE TABLE bundles("
	" model TEXT NOT NULL,"
	" version TEXT NOT NULL,"
	" sequence BIGINT NOT NULL,"
	" envelope_id TEXT NOT NULL,"
	" envelope TEXT NOT NULL,"
	" files TEXT NOT NULL,"
	" verified INTEGER NOT NULL,"
	" pushed_at BIGINT NOT NULL,"
	" PRIMARY KEY(model, version),"
	" UNIQUE(model, sequence));"
	"CREATE TABLE telemetry("
	" id BIGSERIAL PRIMARY KEY,"
	" device TEXT NOT NULL,"
	" stream TEXT NOT NULL,"
	" seq BIGINT NOT NULL,"
	" kind TEXT NOT NULL,"
	" ts BIGINT NOT NULL,"
	" body TEXT NOT NULL,"
	" UNIQUE(device, stream, seq));"
	"CREATE TABLE gaps("
	" device TEXT PRIMARY KEY,"
	" stream TEXT NOT NULL,"
	" missing_ranges BIGINT NOT NULL,"
	" missing_seqs BIGINT NOT NULL,"
	" dropped BIGINT NOT NULL,"
	" highest BIGINT NOT NULL,"
	" updated BIGINT NOT NULL);"
	"CREATE TABLE audit("
	" id BIGSERIAL PRIMARY KEY,"
	" ts BIGINT NOT NULL,"
	" actor TEXT NOT NULL,"
	" action TEXT NOT NULL,"
	" reason TEXT NOT NULL);",
	/* 2: staged rollouts */
	"CREATE TABLE rollouts("
	" id BIGSERIAL PRIMARY KEY,"
	" body TEXT NOT NULL,"
	" updated BIGINT NOT NULL);"
	"CREATE TABLE rollout_devices("
	" rollout BIGINT NOT NULL REFERENCES rollouts(id),"
	" device TEXT NOT NULL,"
	" sent_at BIGINT NOT NULL,"
	" reverted INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY(rollout, device));",
	/* 3: releases; per-version health totals */
	"CREATE TABLE releases("
	" id BIGSERIAL PRIMARY KEY,"
	" model TEXT NOT NULL,"
	" version TEXT NOT NULL,"
	" body TEXT NOT NULL,"
	" created_at BIGINT NOT NULL,"
	" UNIQUE(model, version));"
	"CREATE TABLE health("
	" device TEXT NOT NULL,"
	" model TEXT NOT NULL,"
	" version TEXT NOT NULL,"
	" first_s BIGINT NOT NULL,"
	" last_s BIGINT NOT NULL,"
	" records BIGINT NOT NULL,"
	" requests BIGINT NOT NULL,"
	" errors BIGINT NOT NULL,"
	" crashes BIGINT NOT NULL,"
	" restarts BIGINT NOT NULL,"
	" outputs BIGINT NOT NULL,"
	" empty BIGINT NOT NULL,"
	" refusals BIGINT NOT NULL,"
	" psi_sum DOUBLE PRECISION NOT NULL,"
	" psi_n BIGINT NOT NULL,"
	" lat_n BIGINT NOT NULL,"
	" lat_sum DOUBLE PRECISION NOT NULL,"
	" lat_min DOUBLE PRECISION NOT NULL,"
	" lat_max DOUBLE PRECISION NOT NULL,"
	" lat_hist BIGINT[] NOT NULL,"
	" PRIMARY KEY(device, model, version));"
	"CREATE INDEX health_version ON health(model, version);",
};

enum {
	Q_DEV_UPSERT,
	Q_DEV_OFFLINE,
	Q_MODELS_CLEAR,
	Q_MODEL_PUT,
	Q_DEV_LIST,
	Q_DEV_MODELS,
	Q_DEV_GET,
	Q_DEV_EVENTS,
	Q_DEV_GAPS,
	Q_BUNDLE_GET,
	Q_BUNDLE_CONFLICT,
	Q_BUNDLE_PUT,
	Q_BUNDLE_LIST,
	Q_BUNDLE_ENVELOPE,
	Q_TELE_INSERT,
	Q_GAPS_PUT,
	Q_GAPS_GET,
	Q_AUDIT,
	Q_AUDIT_COUNT,
	Q_M_ONLINE,
	Q_M_VERSIONS,
	Q_M_BUNDLES,
	Q_M_GAPS,
	Q_RO_INSERT,
	Q_RO_UPDATE,
	Q_RO_GET,
	Q_RO_LIST,
	Q_RO_MARK,
	Q_RO_SCAN,
	Q_REL_INSERT,
	Q_REL_GET_ID,
	Q_REL_GET_NAME,
	Q_REL_LIST,
	Q_HEALTH_ADD,
	Q_HEALTH_SCAN,
	Q_SCHEMA_VERSION,
	Q_TELE_BATCH,
	Q_RO_GET_LOCK,
	Q_TELE_COVERED,
	Q_COUNT
};

static const char *const queries[Q_COUNT] = {
	[Q_DEV_UPSERT] =
		"INSERT INTO devices(id, labels, arch, ram_mb, accelerators, backends, online,"
		" last_seen, agent_version) VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9)"
		" ON CONFLICT(id) DO UPDATE SET labels = excluded.labels, arch = excluded.arch,"
		" ram_mb = excluded.ram_mb, accelerators = excluded.accelerators,"
		" backends = excluded.backends, online = excluded.online,"
		" last_seen = excluded.last_seen, agent_version = excluded.agent_version",
	[Q_DEV_OFFLINE] = "INSERT INTO devices(id, online, last_seen) VALUES($1, 0, $2)"
			  " ON CONFLICT(id) DO UPDATE SET online = 0",
	[Q_MODELS_CLEAR] = "DELETE FROM device_models WHERE device = $1",
	[Q_MODEL_PUT] = "INSERT INTO device_models(device, model, current_slot, current_version,"
			" slots, install_state, install_version, install_error, bytes_done,"
			" bytes_total, chunks_done, chunks_total)"
			" VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
	[Q_DEV_LIST] =
		"SELECT d.id, d.labels, d.arch, d.ram_mb, d.accelerators, d.backends, d.online,"
		" d.last_seen, d.agent_version, m.model, m.current_version FROM"
		" (SELECT * FROM devices d"
		"  WHERE ($1::text IS NULL OR (d.labels::jsonb) ->> $1::text = $2::text)"
		"  AND ($3::text IS NULL OR d.arch = $3::text)"
		"  AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM device_models m"
		"         WHERE m.device = d.id AND m.current_version = $4::text))"
		"  AND ($5::int < 0 OR d.online = $5::int)"
		"  AND ($7::bigint IS NULL OR d.ram_mb >= $7::bigint)"
		"  AND ($8::text IS NULL OR (d.accelerators::jsonb) ? $8::text)"
		"  AND ($9::text IS NULL OR (d.backends::jsonb) ? $9::text)"
		"  AND ($10::text IS NULL OR EXISTS (SELECT 1 FROM device_models m"
		"         WHERE m.device = d.id AND m.install_state = $10::text))"
		"  AND ($11::text IS NULL OR d.id > $11::text)"
		"  ORDER BY d.id LIMIT $6::bigint) d"
		" LEFT JOIN device_models m ON m.device = d.id"
		" ORDER BY d.id, m.model",
	[Q_DEV_MODELS] = "SELECT model, current_slot, current_version, slots, install_state,"
			 " install_version, install_error, bytes_done, bytes_total, chunks_done,"
			 " chunks_total FROM device_models WHERE device = $1 ORDER BY model",
	[Q_DEV_GET] = "SELECT id, labels, arch, ram_mb, accelerators, backends, online, last_seen,"
		      " agent_version FROM devices WHERE id = $1",
	[Q_DEV_EVENTS] = "SELECT body FROM telemetry WHERE device = $1 AND kind LIKE 'event:%'"
			 " ORDER BY id DESC LIMIT $2",
	[Q_DEV_GAPS] = "SELECT stream, missing_ranges, missing_seqs, dropped, highest, updated"
		       " FROM gaps WHERE device = $1",
	[Q_BUNDLE_GET] = "SELECT envelope_id FROM bundles WHERE model = $1 AND version = $2",
	[Q_BUNDLE_CONFLICT] = "SELECT envelope_id FROM bundles WHERE model = $1 AND sequence = $2",
	[Q_BUNDLE_PUT] = "INSERT INTO bundles(model, version, sequence, envelope_id, envelope,"
			 " files, verified, pushed_at) VALUES($1, $2, $3, $4, $5, $6, $7, $8)",
	[Q_BUNDLE_LIST] = "SELECT model, version, sequence, envelope_id, files, verified,"
			  " pushed_at FROM bundles ORDER BY model, sequence LIMIT 10000",
	[Q_BUNDLE_ENVELOPE] = "SELECT envelope FROM bundles WHERE model = $1 AND version = $2",
	[Q_TELE_INSERT] = "INSERT INTO telemetry(device, stream, seq, kind, ts, body)"
			  " VALUES($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
	[Q_GAPS_PUT] = "INSERT INTO gaps(device, stream, missing_ranges, missing_seqs, dropped,"
		       " highest, updated) VALUES($1, $2, $3, $4, $5, $6, $7)"
		       " ON CONFLICT(device) DO UPDATE SET stream = excluded.stream,"
		       " missing_ranges = excluded.missing_ranges,"
		       " missing_seqs = excluded.missing_seqs, dropped = excluded.dropped,"
		       " highest = excluded.highest, updated = excluded.updated",
	[Q_GAPS_GET] = "SELECT stream, highest FROM gaps WHERE device = $1",
	[Q_AUDIT] = "INSERT INTO audit(ts, actor, action, reason) VALUES($1, $2, $3, $4)",
	[Q_AUDIT_COUNT] = "SELECT COUNT(*) FROM audit",
	[Q_M_ONLINE] = "SELECT online, COUNT(*) FROM devices GROUP BY online",
	[Q_M_VERSIONS] = "SELECT model, current_version, COUNT(*) FROM device_models"
			 " WHERE current_version IS NOT NULL GROUP BY model, current_version"
			 " ORDER BY model, current_version LIMIT 1000",
	[Q_M_BUNDLES] = "SELECT COUNT(*) FROM bundles",
	[Q_M_GAPS] = "SELECT COALESCE(SUM(missing_seqs), 0) FROM gaps",
	[Q_RO_INSERT] = "INSERT INTO rollouts(body, updated) VALUES($1, $2) RETURNING id",
	[Q_RO_UPDATE] = "UPDATE rollouts SET body = $2, updated = $3 WHERE id = $1",
	[Q_RO_GET] = "SELECT body FROM rollouts WHERE id = $1",
	/* inside a transaction: the engine's decision and an operator action
	 * of another instance take turns on the row */
	[Q_RO_GET_LOCK] = "SELECT body FROM rollouts WHERE id = $1 FOR UPDATE",
	/* runs of stored seqs (seq minus its rank is constant along a run) and
	 * the ranges of the stored drop reports */
	[Q_TELE_COVERED] =
		"SELECT MIN(seq), MAX(seq) FROM (SELECT seq, seq - ROW_NUMBER() OVER (ORDER BY seq)"
		" AS g FROM telemetry WHERE device = $1 AND stream = $2 AND seq BETWEEN $3::bigint"
		" AND $4::bigint) t GROUP BY g"
		" UNION ALL"
		" SELECT (r ->> 0)::bigint, (r ->> 1)::bigint FROM telemetry,"
		" jsonb_array_elements(CASE WHEN jsonb_typeof(telemetry.body::jsonb -> 'ranges')"
		" = 'array' THEN telemetry.body::jsonb -> 'ranges' ELSE '[]'::jsonb END) r"
		" WHERE device = $1 AND stream = $2 AND kind = 'dropped' AND seq > $3::bigint"
		" ORDER BY 1 LIMIT $5::bigint",
	[Q_RO_LIST] = "SELECT id FROM rollouts ORDER BY id LIMIT 10000",
	[Q_RO_MARK] = "INSERT INTO rollout_devices(rollout, device, sent_at, reverted)"
		      " VALUES($1, $2, $3, $4) ON CONFLICT(rollout, device) DO UPDATE SET"
		      " sent_at = excluded.sent_at, reverted = excluded.reverted",
	[Q_RO_SCAN] = "SELECT d.id, d.labels, d.arch, d.online, m.current_version,"
		      " m.install_state, m.install_version, r.sent_at, r.reverted,"
		      " d.ram_mb, d.accelerators, d.backends"
		      " FROM devices d"
		      " LEFT JOIN device_models m ON m.device = d.id AND m.model = $2"
		      " LEFT JOIN rollout_devices r ON r.rollout = $1 AND r.device = d.id"
		      " ORDER BY d.id",
	/* The sequence is only drawn when the name is free: ids stay dense. */
	[Q_REL_INSERT] = "INSERT INTO releases(model, version, body, created_at)"
			 " SELECT $1::text, $2::text, $3::text, $4::bigint WHERE NOT EXISTS"
			 " (SELECT 1 FROM releases WHERE model = $1::text AND version = $2::text)"
			 " ON CONFLICT(model, version) DO NOTHING RETURNING id",
	[Q_REL_GET_ID] = "SELECT id, body FROM releases WHERE id = $1",
	[Q_REL_GET_NAME] = "SELECT id, body FROM releases WHERE model = $1 AND version = $2",
	[Q_REL_LIST] = "SELECT id, body FROM releases WHERE ($1::text IS NULL OR model = $1::text)"
		       " ORDER BY id LIMIT 10000",
	[Q_HEALTH_ADD] =
		"INSERT INTO health(device, model, version, first_s, last_s, records, requests,"
		" errors, crashes, restarts, outputs, empty, refusals, psi_sum, psi_n, lat_n,"
		" lat_sum, lat_min, lat_max, lat_hist) VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9,"
		" $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
		" ON CONFLICT(device, model, version) DO UPDATE SET last_s = excluded.last_s,"
		" records = health.records + excluded.records,"
		" requests = health.requests + excluded.requests,"
		" errors = health.errors + excluded.errors,"
		" crashes = health.crashes + excluded.crashes,"
		" restarts = health.restarts + excluded.restarts,"
		" outputs = health.outputs + excluded.outputs,"
		" empty = health.empty + excluded.empty,"
		" refusals = health.refusals + excluded.refusals,"
		" psi_sum = health.psi_sum + excluded.psi_sum,"
		" psi_n = health.psi_n + excluded.psi_n,"
		" lat_min = CASE WHEN excluded.lat_n = 0 THEN health.lat_min"
		"  WHEN health.lat_n = 0 THEN excluded.lat_min"
		"  ELSE LEAST(health.lat_min, excluded.lat_min) END,"
		" lat_max = CASE WHEN excluded.lat_n = 0 THEN health.lat_max"
		"  WHEN health.lat_n = 0 THEN excluded.lat_max"
		"  ELSE GREATEST(health.lat_max, excluded.lat_max) END,"
		" lat_n = health.lat_n + excluded.lat_n,"
		" lat_sum = health.lat_sum + excluded.lat_sum,"
		" lat_hist = ARRAY(SELECT COALESCE(a, 0) + COALESCE(b, 0)"
		"  FROM unnest(health.lat_hist, excluded.lat_hist) WITH ORDINALITY AS t(a, b, i)"
		"  ORDER BY i)",
	[Q_HEALTH_SCAN] = "SELECT h.device, h.version, h.first_s, h.last_s, h.records, h.requests,"
			  " h.errors, h.crashes, h.restarts, h.outputs, h.empty, h.refusals,"
			  " h.psi_sum, h.psi_n, h.lat_n, h.lat_sum, h.lat_min, h.lat_max,"
			  " h.lat_hist FROM rollout_devices r"
			  " JOIN health h ON h.device = r.device AND h.model = $2"
			  " WHERE r.rollout = $1 ORDER BY r.device, h.version",
	[Q_SCHEMA_VERSION] = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
	/* $1: [{"d","s","q","k","t","b","i"}]; returns the index of each record
	 * inserted (rows go in in index order, so of duplicates the first). */
	[Q_TELE_BATCH] =
		"WITH u AS (SELECT * FROM jsonb_to_recordset($1::jsonb)"
		"  AS x(d text, s text, q bigint, k text, t bigint, b text, i int)),"
		" ins AS (INSERT INTO telemetry(device, stream, seq, kind, ts, body)"
		"  SELECT d, s, q, k, t, b FROM u ORDER BY i ON CONFLICT DO NOTHING"
		"  RETURNING device, stream, seq)"
		" SELECT MIN(u.i) FROM u JOIN ins ON ins.device = u.d AND ins.stream = u.s"
		" AND ins.seq = u.q GROUP BY u.d, u.s, u.q",
};

struct pg_store {
	struct ctl_store base;
	PGconn *conn;
	bool leader; /* holds PG_LEADER_LOCK */
	bool in_txn;
	int queued;  /* health_add statements sent in pipeline mode, unread */
	/* Connection loss (docs/controller.md "Reconnect"): set when a
	 * statement finds the connection gone; the next statement outside a
	 * transaction reconnects, at most once per backoff_ms. */
	bool lost;
	unsigned attempts;
	int64_t backoff_ms, retry_at_ms;
};

#define PG_BACKOFF_MIN_MS 250
#define PG_BACKOFF_MAX_MS 5000

static int prepare_all(PGconn *c);

/* Note that the connection is gone (logged once per loss). The session's
 * advisory lock went with it: this instance no longer leads. */
static void mark_lost(struct pg_store *x)
{
	if (x->lost)
		return;
	x->lost = true;
	x->attempts = 0;
	x->backoff_ms = 0;
	x->retry_at_ms = 0;
	x->queued = 0;
	char msg[256];
	fl_strlcpy(msg, PQerrorMessage(x->conn), sizeof(msg));
	msg[strcspn(msg, "\n")] = 0;
	fl_warn("store(pg): connection lost (%s); reconnecting", msg[0] ? msg : "closed");
	if (x->leader) {
		x->leader = false;
		fl_warn("store(pg): the rollout engine lock went with the connection");
	}
}

/* 0 when the connection is usable, reconnecting when it was lost and the
 * backoff allows; -FL_EDB otherwise (also inside a transaction: the server
 * ended it with the session, the caller rolls back). */
static int alive(struct pg_store *x)
{
	if (!x->lost && PQstatus(x->conn) == CONNECTION_OK)
		return 0;
	mark_lost(x);
	if (x->in_txn)
		return -FL_EDB;
	int64_t now = fl_mono_ms();
	if (now < x->retry_at_ms)
		return -FL_EDB;
	x->attempts++;
	PQreset(x->conn);
	if (PQstatus(x->conn) == CONNECTION_OK && prepare_all(x->conn) == 0) {
		fl_info("store(pg): reconnected (attempt %u)", x->attempts);
		x->lost = false;
		return 0;
	}
	x->backoff_ms = x->backoff_ms ? x->backoff_ms * 2 : PG_BACKOFF_MIN_MS;
	if (x->backoff_ms > PG_BACKOFF_MAX_MS)
		x->backoff_ms = PG_BACKOFF_MAX_MS;
	x->retry_at_ms = now + x->backoff_ms;
	char msg[256];
	fl_strlcpy(msg, PQerrorMessage(x->conn), sizeof(msg));
	msg[strcspn(msg, "\n")] = 0;
	fl_warn("store(pg): reconnect failed (attempt %u, next in %lld ms): %s", x->attempts,
		(long long)x->backoff_ms, msg);
	return -FL_EDB;
}

/* Writes that return nothing (health_add, one per model record) are sent in
 * libpq pipeline mode inside a transaction: no round trip each. drain()
 * reads their results before any other statement and at commit; an error
 * there fails that statement or the commit (the caller rolls back). */
#define PG_PIPELINE_MAX 1000

static int drain(struct pg_store *x)
{
	if (PQpipelineStatus(x->conn) == PQ_PIPELINE_OFF)
		return 0;
	int rc = 0;
	if (!PQpipelineSync(x->conn)) {
		rc = -FL_EDB;
	} else {
		int nulls = 0;
		for (;;) {
			PGresult *res = PQgetResult(x->conn);
			if (!res) {
				/* one NULL ends each query's results; more means a dead
				 * connection */
				if (++nulls > 1 || PQstatus(x->conn) == CONNECTION_BAD) {
					rc = -FL_EDB;
					break;
				}
				continue;
			}
			nulls = 0;
			ExecStatusType st = PQresultStatus(res);
			if (st == PGRES_FATAL_ERROR) {
				fl_warn("store(pg): pipelined write: %s", PQresultErrorMessage(res));
				rc = -FL_EDB;
			} else if (st == PGRES_PIPELINE_ABORTED) {
				rc = -FL_EDB;
			}
			PQclear(res);
			if (st == PGRES_PIPELINE_SYNC)
				break;
		}
	}
	x->queued = 0;
	if (!PQexitPipelineMode(x->conn)) {
		fl_warn("store(pg): pipeline: %s", PQerrorMessage(x->conn));
		rc = -FL_EDB;
	}
	return rc;
}

static PGconn *CONN(struct ctl_store *s)
{
	return ((struct pg_store *)s)->conn;
}

/* Text parameters of one statement. */
#define PG_MAX_PARAMS 20
struct params {
	const char *v[PG_MAX_PARAMS];
	char num[PG_MAX_PARAMS][32];
	int n;
};

static void p_text(struct params *p, const char *v)
{
	p->v[p->n++] = v;
}

static void p_int(struct params *p, int64_t v)
{
	snprintf(p->num[p->n], sizeof(p->num[0]), "%" PRId64, v);
	p->v[p->n] = p->num[p->n];
	p->n++;
}

static void p_double(struct params *p, double v)
{
	snprintf(p->num[p->n], sizeof(p->num[0]), "%.17g", v);
	p->v[p->n] = p->num[p->n];
	p->n++;
}

/* Run prepared statement WHICH; NULL (logged) on failure. Outside a
 * transaction a statement that finds the connection gone (the server
 * restarted meanwhile) is run once more after reconnecting. */
static PGresult *run(struct ctl_store *s, int which, const struct params *p)
{
	struct pg_store *x = (struct pg_store *)s;
	char name[16];
	snprintf(name, sizeof(name), "q%d", which);
	if (alive(x) < 0 || drain(x) < 0)
		return NULL;
	for (int again = 0;; again++) {
		PGresult *res = PQexecPrepared(x->conn, name, p ? p->n : 0, p ? p->v : NULL, NULL,
					       NULL, 0);
		ExecStatusType st = PQresultStatus(res);
		if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
			return res;
		bool gone = PQstatus(x->conn) == CONNECTION_BAD;
		if (!gone || again || x->in_txn)
			fl_warn("store(pg): q%d: %s", which,
				res ? PQresultErrorMessage(res) : PQerrorMessage(x->conn));
		PQclear(res);
		if (gone)
			mark_lost(x);
		if (!gone || again || x->in_txn || alive(x) < 0)
			return NULL;
	}
}

/* Run a statement that returns no rows (or ignore them). */
static int run_done(struct ctl_store *s, int which, const struct params *p)
{
	PGresult *res = run(s, which, p);
	if (!res)
		return -FL_EDB;
	PQclear(res);
	return 0;
}

static int exec_sql(PGconn *c, const char *sql)
{
	PGresult *res = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(res);
	int r = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : -FL_EDB;
	if (r < 0)
		fl_warn("store(pg): %s", res ? PQresultErrorMessage(res) : PQerrorMessage(c));
	PQclear(res);
	return r;
}

static const char *col_text(PGresult *res, int row, int i)
{
	return PQgetisnull(res, row, i) ? NULL : PQgetvalue(res, row, i);
}

static int64_t col_int(PGresult *res, int row, int i)
{
	return PQgetisnull(res, row, i) ? 0 : strtoll(PQgetvalue(res, row, i), NULL, 10);
}

static double col_double(PGresult *res, int row, int i)
{
	return PQgetisnull(res, row, i) ? 0 : strtod(PQgetvalue(res, row, i), NULL);
}

static int add_json_col(cJSON *obj, const char *key, PGresult *res, int row, int i)
{
	const char *t = col_text(res, row, i);
	cJSON *v = t ? cJSON_Parse(t) : NULL;
	if (!v)
		v = cJSON_CreateNull();
	if (!v || !cJSON_AddItemToObject(obj, key, v)) {
		cJSON_Delete(v);
		return -ENOMEM;
	}
	return 0;
}

static int add_str_col(cJSON *obj, const char *key, PGresult *res, int row, int i)
{
	const char *t = col_text(res, row, i);
	cJSON *v = t ? cJSON_CreateString(t) : cJSON_CreateNull();
	if (!v || !cJSON_AddItemToObject(obj, key, v)) {
		cJSON_Delete(v);
		return -ENOMEM;
	}
	return 0;
}

static int add_num(cJSON *obj, const char *key, double v)
{
	return cJSON_AddNumberToObject(obj, key, v) ? 0 : -ENOMEM;
}

/* ---------------------------------------------------------------- basics */

static void pg_close(struct ctl_store *s)
{
	PQfinish(CONN(s));
	free(s);
}

static int pg_begin(struct ctl_store *s)
{
	struct pg_store *x = (struct pg_store *)s;
	x->in_txn = false;
	int r = alive(x);
	if (r >= 0)
		r = drain(x);
	for (int again = 0; r >= 0; again++) {
		PGresult *res = PQexec(x->conn, "BEGIN ISOLATION LEVEL READ COMMITTED");
		bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
		PQclear(res);
		if (ok)
			break;
		if (PQstatus(x->conn) != CONNECTION_BAD || again) {
			fl_warn("store(pg): BEGIN: %s", PQerrorMessage(x->conn));
			r = -FL_EDB;
			break;
		}
		/* the server went away while we were idle: reconnect, once */
		mark_lost(x);
		r = alive(x);
	}
	x->in_txn = r >= 0;
	return r;
}

static int pg_commit(struct ctl_store *s)
{
	struct pg_store *x = (struct pg_store *)s;
	if (x->lost)
		return -FL_EDB; /* the caller rolls back */
	int r = drain(x);
	if (r < 0)
		return r; /* the caller rolls back */
	x->in_txn = false;
	r = exec_sql(x->conn, "COMMIT");
	if (r < 0 && PQstatus(x->conn) == CONNECTION_BAD)
		mark_lost(x);
	return r;
}

static int pg_rollback(struct ctl_store *s)
{
	struct pg_store *x = (struct pg_store *)s;
	x->in_txn = false;
	if (x->lost || PQstatus(x->conn) == CONNECTION_BAD) {
		/* the server ended the transaction with the session */
		mark_lost(x);
		return 0;
	}
	drain(x);
	return exec_sql(x->conn, "ROLLBACK");
}

static int count_query(struct ctl_store *s, int which, int64_t *ret)
{
	PGresult *res = run(s, which, NULL);
	if (!res)
		return -FL_EDB;
	int rc = PQntuples(res) == 1 ? 0 : -FL_EDB;
	if (rc == 0)
		*ret = col_int(res, 0, 0);
	PQclear(res);
	return rc;
}

static int pg_schema_version(struct ctl_store *s, int *ret)
{
	int64_t v = 0;
	int r = count_query(s, Q_SCHEMA_VERSION, &v);
	if (r == 0)
		*ret = (int)v;
	return r;
}

/* ---------------------------------------------------------------- devices */

static int pg_device_upsert(struct ctl_store *s, const struct ctl_device *d)
{
	struct params p = {0};
	p_text(&p, d->id);
	p_text(&p, d->labels_json ? d->labels_json : "{}");
	p_text(&p, d->arch);
	if (d->ram_mb >= 0)
		p_int(&p, d->ram_mb);
	else
		p_text(&p, NULL);
	p_text(&p, d->accelerators_json ? d->accelerators_json : "[]");
	p_text(&p, d->backends_json ? d->backends_json : "[]");
	p_int(&p, d->online ? 1 : 0);
	p_int(&p, d->last_seen_s);
	p_text(&p, d->agent_version);
	return run_done(s, Q_DEV_UPSERT, &p);
}

static int pg_device_set_offline(struct ctl_store *s, const char *id, int64_t now_s)
{
	struct params p = {0};
	p_text(&p, id);
	p_int(&p, now_s);
	return run_done(s, Q_DEV_OFFLINE, &p);
}

static int pg_device_models_clear(struct ctl_store *s, const char *id)
{
	struct params p = {0};
	p_text(&p, id);
	return run_done(s, Q_MODELS_CLEAR, &p);
}

static int pg_device_model_put(struct ctl_store *s, const struct ctl_device_model *m)
{
	struct params p = {0};
	p_text(&p, m->device);
	p_text(&p, m->model);
	p_text(&p, m->current_slot);
	p_text(&p, m->current_version);
	p_text(&p, m->slots_json ? m->slots_json : "{}");
	p_text(&p, m->install_state);
	p_text(&p, m->install_version);
	p_text(&p, m->install_error);
	p_int(&p, m->bytes_done);
	p_int(&p, m->bytes_total);
	p_int(&p, m->chunks_done);
	p_int(&p, m->chunks_total);
	return run_done(s, Q_MODEL_PUT, &p);
}

static int device_row(PGresult *res, int row, cJSON **ret)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return -ENOMEM;
	int r = add_str_col(o, "id", res, row, 0);
	if (r >= 0)
		r = add_json_col(o, "labels", res, row, 1);
	if (r >= 0)
		r = add_str_col(o, "arch", res, row, 2);
	if (r >= 0) {
		if (PQgetisnull(res, row, 3))
			r = cJSON_AddNullToObject(o, "ram_mb") ? 0 : -ENOMEM;
		else
			r = add_num(o, "ram_mb", (double)col_int(res, row, 3));
	}
	if (r >= 0)
		r = add_json_col(o, "accelerators", res, row, 4);
	if (r >= 0)
		r = add_json_col(o, "backends", res, row, 5);
	if (r >= 0)
		r = cJSON_AddBoolToObject(o, "online", col_int(res, row, 6) != 0) ? 0 : -ENOMEM;
	if (r >= 0)
		r = add_num(o, "last_seen", (double)col_int(res, row, 7));
	if (r >= 0)
		r = add_str_col(o, "agent", res, row, 8);
	if (r < 0) {
		cJSON_Delete(o);
		return r;
	}
	*ret = o;
	return 0;
}

static int device_models(struct ctl_store *s, const char *id, cJSON **ret)
{
	struct params p = {0};
	p_text(&p, id);
	PGresult *res = run(s, Q_DEV_MODELS, &p);
	if (!res)
		return -FL_EDB;
	cJSON *out = cJSON_CreateArray();
	int rc = out ? 0 : -ENOMEM;
	for (int row = 0; rc == 0 && row < PQntuples(res); row++) {
		cJSON *m = cJSON_CreateObject();
		if (!m || !cJSON_AddItemToArray(out, m)) {
			cJSON_Delete(m);
			rc = -ENOMEM;
			break;
		}
		rc = add_str_col(m, "model", res, row, 0);
		if (rc >= 0)
			rc = add_str_col(m, "current", res, row, 1);
		if (rc >= 0)
			rc = add_str_col(m, "version", res, row, 2);
		if (rc >= 0)
			rc = add_json_col(m, "slots", res, row, 3);
		if (rc >= 0 && !PQgetisnull(res, row, 4)) {
			cJSON *in = cJSON_AddObjectToObject(m, "install");
			rc = in ? 0 : -ENOMEM;
			if (rc >= 0)
				rc = add_str_col(in, "state", res, row, 4);
			if (rc >= 0)
				rc = add_str_col(in, "version", res, row, 5);
			if (rc >= 0)
				rc = add_str_col(in, "error", res, row, 6);
			static const char *const nums[] = {"bytes_done", "bytes_total", "chunks_done",
							   "chunks_total"};
			for (int i = 0; i < 4 && rc >= 0; i++)
				rc = add_num(in, nums[i], (double)col_int(res, row, 7 + i));
		}
	}
	PQclear(res);
	if (rc < 0) {
		cJSON_Delete(out);
		return rc;
	}
	*ret = out;
	return 0;
}

static int pg_device_list(struct ctl_store *s, const struct ctl_device_filter *f, cJSON **ret)
{
	struct params p = {0};
	p_text(&p, f->label_key);
	p_text(&p, f->label_value ? f->label_value : "");
	p_text(&p, f->arch);
	p_text(&p, f->version);
	p_int(&p, f->online);
	size_t limit = f->limit && f->limit < CTL_STORE_LIST_MAX ? f->limit : CTL_STORE_LIST_MAX;
	p_int(&p, (int64_t)limit);
	if (f->min_ram_mb > 0)
		p_int(&p, f->min_ram_mb);
	else
		p_text(&p, NULL);
	p_text(&p, f->accelerator);
	p_text(&p, f->backend);
	p_text(&p, f->install_state);
	p_text(&p, f->after);
	PGresult *res = run(s, Q_DEV_LIST, &p);
	if (!res)
		return -FL_EDB;
	cJSON *root = cJSON_CreateObject();
	cJSON *arr = root ? cJSON_AddArrayToObject(root, "devices") : NULL;
	int rc = arr ? 0 : -ENOMEM;
	cJSON *d = NULL, *versions = NULL;
	for (int row = 0; rc == 0 && row < PQntuples(res); row++) {
		const char *id = col_text(res, row, 0);
		if (!d || !id || strcmp(cJSON_GetObjectItem(d, "id")->valuestring, id)) {
			d = NULL;
			if ((rc = device_row(res, row, &d)) < 0)
				break;
			cJSON_AddItemToArray(arr, d);
			if (!(versions = cJSON_AddObjectToObject(d, "versions"))) {
				rc = -ENOMEM;
				break;
			}
		}
		if (!PQgetisnull(res, row, 9))
			rc = add_str_col(versions, col_text(res, row, 9), res, row, 10);
	}
	PQclear(res);
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

static int pg_device_get(struct ctl_store *s, const char *id, size_t n_events, cJSON **ret)
{
	struct params p = {0};
	p_text(&p, id);
	PGresult *res = run(s, Q_DEV_GET, &p);
	if (!res)
		return -FL_EDB;
	if (PQntuples(res) != 1) {
		PQclear(res);
		return -ENOENT;
	}
	cJSON *dev = NULL;
	int rc = device_row(res, 0, &dev);
	PQclear(res);
	if (rc < 0)
		return rc;
	cJSON *root = cJSON_CreateObject();
	if (!root) {
		cJSON_Delete(dev);
		return -ENOMEM;
	}
	cJSON_AddItemToObject(root, "device", dev);
	cJSON *models = NULL;
	rc = device_models(s, id, &models);
	if (rc >= 0)
		cJSON_AddItemToObject(root, "models", models);
	cJSON *evs = rc >= 0 ? cJSON_AddArrayToObject(root, "events") : NULL;
	if (rc >= 0 && !evs)
		rc = -ENOMEM;
	if (rc >= 0) {
		struct params pe = {0};
		p_text(&pe, id);
		p_int(&pe, (int64_t)n_events);
		res = run(s, Q_DEV_EVENTS, &pe);
		if (!res)
			rc = -FL_EDB;
		for (int row = 0; res && row < PQntuples(res); row++) {
			cJSON *e = cJSON_Parse(col_text(res, row, 0));
			if (e)
				cJSON_AddItemToArray(evs, e);
		}
		PQclear(res);
	}
	if (rc >= 0) {
		res = run(s, Q_DEV_GAPS, &p);
		if (!res)
			rc = -FL_EDB;
		if (res && PQntuples(res) == 1) {
			cJSON *g = cJSON_AddObjectToObject(root, "telemetry");
			if (!g)
				rc = -ENOMEM;
			static const char *const nums[] = {"missing_ranges", "missing_seqs",
							   "dropped", "highest", "updated"};
			if (rc >= 0)
				rc = add_str_col(g, "stream", res, 0, 0);
			for (int i = 0; i < 5 && rc >= 0; i++)
				rc = add_num(g, nums[i], (double)col_int(res, 0, 1 + i));
		}
		PQclear(res);
	}
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

/* ---------------------------------------------------------------- bundles */

/* 1 when the statement finds a row whose first column is ID, 0 none,
 * -EEXIST another id. */
static int same_envelope(struct ctl_store *s, int which, const struct params *p, const char *id)
{
	PGresult *res = run(s, which, p);
	if (!res)
		return -FL_EDB;
	int rc = PQntuples(res) == 0			       ? 0
		 : strcmp(col_text(res, 0, 0) ?: "", id) == 0 ? 1
							       : -EEXIST;
	PQclear(res);
	return rc;
}

static int pg_bundle_put(struct ctl_store *s, const struct ctl_bundle_rec *b)
{
	if (b->sequence > (uint64_t)INT64_MAX)
		return -EINVAL;
	struct params p = {0};
	p_text(&p, b->model);
	p_text(&p, b->version);
	int r1 = same_envelope(s, Q_BUNDLE_GET, &p, b->envelope_id);
	if (r1 < 0)
		return r1;
	struct params pc = {0};
	p_text(&pc, b->model);
	p_int(&pc, (int64_t)b->sequence);
	int r2 = same_envelope(s, Q_BUNDLE_CONFLICT, &pc, b->envelope_id);
	if (r2 < 0)
		return r2;
	if (r1 == 1 && r2 == 1)
		return 0;
	if (r1 || r2)
		return -EEXIST;
	struct params pi = {0};
	p_text(&pi, b->model);
	p_text(&pi, b->version);
	p_int(&pi, (int64_t)b->sequence);
	p_text(&pi, b->envelope_id);
	p_text(&pi, b->envelope);
	p_text(&pi, b->files_json);
	p_int(&pi, b->verified ? 1 : 0);
	p_int(&pi, b->pushed_at_s);
	int r = run_done(s, Q_BUNDLE_PUT, &pi);
	return r < 0 ? r : 1;
}

/* The first column of the first row, strdup'ed; -ENOENT without a row. */
static int one_text(struct ctl_store *s, int which, const struct params *p, int col, char **ret)
{
	PGresult *res = run(s, which, p);
	if (!res)
		return -FL_EDB;
	int rc = -ENOENT;
	if (PQntuples(res) > 0) {
		char *t = strdup(PQgetvalue(res, 0, col));
		rc = t ? 0 : -ENOMEM;
		if (t)
			*ret = t;
	}
	PQclear(res);
	return rc;
}

static int pg_bundle_envelope(struct ctl_store *s, const char *model, const char *version,
			      char **ret)
{
	struct params p = {0};
	p_text(&p, model);
	p_text(&p, version);
	return one_text(s, Q_BUNDLE_ENVELOPE, &p, 0, ret);
}

static int pg_bundle_list(struct ctl_store *s, cJSON **ret)
{
	PGresult *res = run(s, Q_BUNDLE_LIST, NULL);
	if (!res)
		return -FL_EDB;
	cJSON *root = cJSON_CreateObject();
	cJSON *arr = root ? cJSON_AddArrayToObject(root, "bundles") : NULL;
	int rc = arr ? 0 : -ENOMEM;
	for (int row = 0; rc == 0 && row < PQntuples(res); row++) {
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(arr, o)) {
			cJSON_Delete(o);
			rc = -ENOMEM;
			break;
		}
		rc = add_str_col(o, "model", res, row, 0);
		if (rc >= 0)
			rc = add_str_col(o, "version", res, row, 1);
		if (rc >= 0)
			rc = add_num(o, "sequence", (double)col_int(res, row, 2));
		if (rc >= 0)
			rc = add_str_col(o, "envelope_sha256", res, row, 3);
		if (rc >= 0)
			rc = add_json_col(o, "files", res, row, 4);
		if (rc >= 0)
			rc = cJSON_AddBoolToObject(o, "verified", col_int(res, row, 5) != 0)
				     ? 0
				     : -ENOMEM;
		if (rc >= 0)
			rc = add_num(o, "pushed_at", (double)col_int(res, row, 6));
	}
	PQclear(res);
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

/* ---------------------------------------------------------------- telemetry */

/* Rows changed by RES's command (INSERT/UPDATE). */
static int changed(PGresult *res)
{
	const char *t = PQcmdTuples(res);
	return t && *t ? atoi(t) : 0;
}

static int pg_tele_insert(struct ctl_store *s, const struct ctl_tele_rec *t)
{
	if (t->seq > (uint64_t)INT64_MAX)
		return -EINVAL;
	struct params p = {0};
	p_text(&p, t->device);
	p_text(&p, t->stream);
	p_int(&p, (int64_t)t->seq);
	p_text(&p, t->kind);
	p_int(&p, t->ts);
	p_text(&p, t->json);
	PGresult *res = run(s, Q_TELE_INSERT, &p);
	if (!res)
		return -FL_EDB;
	int n = changed(res);
	PQclear(res);
	return n > 0 ? 1 : 0;
}

static int pg_tele_insert_batch(struct ctl_store *s, const struct ctl_tele_rec *recs, size_t n,
				uint8_t *ret_new)
{
	if (n == 0)
		return 0;
	if (n > INT32_MAX)
		return -EINVAL;
	cJSON *arr = cJSON_CreateArray();
	int rc = arr ? 0 : -ENOMEM;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		const struct ctl_tele_rec *t = &recs[i];
		if (t->seq > (uint64_t)INT64_MAX) {
			rc = -EINVAL;
			break;
		}
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(arr, o)) {
			cJSON_Delete(o);
			rc = -ENOMEM;
			break;
		}
		if (!cJSON_AddStringToObject(o, "d", t->device) ||
		    !cJSON_AddStringToObject(o, "s", t->stream) ||
		    !cJSON_AddStringToObject(o, "k", t->kind) ||
		    !cJSON_AddStringToObject(o, "b", t->json) ||
		    !cJSON_AddNumberToObject(o, "i", (double)i))
			rc = -ENOMEM;
		/* 64-bit integers as raw JSON numbers (a double would round). */
		char num[32];
		snprintf(num, sizeof(num), "%" PRIu64, t->seq);
		if (rc == 0 && !cJSON_AddRawToObject(o, "q", num))
			rc = -ENOMEM;
		snprintf(num, sizeof(num), "%" PRId64, t->ts);
		if (rc == 0 && !cJSON_AddRawToObject(o, "t", num))
			rc = -ENOMEM;
	}
	char *text = rc == 0 ? cJSON_PrintUnformatted(arr) : NULL;
	cJSON_Delete(arr);
	if (rc == 0 && !text)
		rc = -ENOMEM;
	if (rc < 0) {
		free(text);
		return rc;
	}
	struct params p = {0};
	p_text(&p, text);
	PGresult *res = run(s, Q_TELE_BATCH, &p);
	free(text);
	if (!res)
		return -FL_EDB;
	memset(ret_new, 0, n);
	for (int row = 0; row < PQntuples(res); row++) {
		int64_t i = col_int(res, row, 0);
		if (i >= 0 && (uint64_t)i < n)
			ret_new[i] = 1;
	}
	PQclear(res);
	return 0;
}

static int pg_gaps_put(struct ctl_store *s, const char *device, const char *stream,
		       uint64_t missing_ranges, uint64_t missing_seqs, uint64_t dropped,
		       uint64_t highest, int64_t now_s)
{
	struct params p = {0};
	p_text(&p, device);
	p_text(&p, stream);
	p_int(&p, (int64_t)missing_ranges);
	p_int(&p, (int64_t)missing_seqs);
	p_int(&p, (int64_t)dropped);
	p_int(&p, (int64_t)highest);
	p_int(&p, now_s);
	return run_done(s, Q_GAPS_PUT, &p);
}

static int pg_gaps_get(struct ctl_store *s, const char *device, char ret_stream[17],
		       uint64_t *ret_highest)
{
	struct params p = {0};
	p_text(&p, device);
	PGresult *res = run(s, Q_GAPS_GET, &p);
	if (!res)
		return -FL_EDB;
	int rc = PQntuples(res) == 1 ? 0 : -ENOENT;
	if (rc == 0) {
		fl_strlcpy(ret_stream, PQgetvalue(res, 0, 0), 17);
		*ret_highest = (uint64_t)col_int(res, 0, 1);
	}
	PQclear(res);
	return rc;
}

static int pg_audit(struct ctl_store *s, int64_t ts, const char *actor, const char *action,
		    const char *reason)
{
	struct params p = {0};
	p_int(&p, ts);
	p_text(&p, actor ? actor : "");
	p_text(&p, action ? action : "");
	p_text(&p, reason ? reason : "");
	return run_done(s, Q_AUDIT, &p);
}

static int pg_audit_count(struct ctl_store *s, int64_t *ret)
{
	return count_query(s, Q_AUDIT_COUNT, ret);
}

static int pg_metrics(struct ctl_store *s, cJSON **ret)
{
	cJSON *root = cJSON_CreateObject();
	if (!root)
		return -ENOMEM;
	int64_t on = 0, off = 0, nb = 0, ng = 0;
	int rc = 0;
	PGresult *res = run(s, Q_M_ONLINE, NULL);
	if (!res)
		rc = -FL_EDB;
	for (int row = 0; res && row < PQntuples(res); row++) {
		if (col_int(res, row, 0))
			on += col_int(res, row, 1);
		else
			off += col_int(res, row, 1);
	}
	PQclear(res);
	if (rc >= 0)
		rc = count_query(s, Q_M_BUNDLES, &nb);
	if (rc >= 0)
		rc = count_query(s, Q_M_GAPS, &ng);
	if (rc >= 0)
		rc = add_num(root, "online", (double)on);
	if (rc >= 0)
		rc = add_num(root, "offline", (double)off);
	if (rc >= 0)
		rc = add_num(root, "bundles", (double)nb);
	if (rc >= 0)
		rc = add_num(root, "gaps_missing", (double)ng);
	cJSON *vers = rc >= 0 ? cJSON_AddArrayToObject(root, "versions") : NULL;
	if (rc >= 0 && !vers)
		rc = -ENOMEM;
	if (rc >= 0) {
		res = run(s, Q_M_VERSIONS, NULL);
		if (!res)
			rc = -FL_EDB;
		for (int row = 0; rc >= 0 && res && row < PQntuples(res); row++) {
			cJSON *o = cJSON_CreateObject();
			if (!o || !cJSON_AddItemToArray(vers, o)) {
				cJSON_Delete(o);
				rc = -ENOMEM;
				break;
			}
			rc = add_str_col(o, "model", res, row, 0);
			if (rc >= 0)
				rc = add_str_col(o, "version", res, row, 1);
			if (rc >= 0)
				rc = add_num(o, "devices", (double)col_int(res, row, 2));
		}
		PQclear(res);
	}
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

/* ---------------------------------------------------------------- rollouts */

static int pg_rollout_insert(struct ctl_store *s, const char *body, int64_t now_s, int64_t *ret_id)
{
	struct params p = {0};
	p_text(&p, body);
	p_int(&p, now_s);
	PGresult *res = run(s, Q_RO_INSERT, &p);
	if (!res)
		return -FL_EDB;
	int rc = PQntuples(res) == 1 ? 0 : -FL_EDB;
	if (rc == 0)
		*ret_id = col_int(res, 0, 0);
	PQclear(res);
	return rc;
}

static int pg_rollout_update(struct ctl_store *s, int64_t id, const char *body, int64_t now_s)
{
	struct params p = {0};
	p_int(&p, id);
	p_text(&p, body);
	p_int(&p, now_s);
	PGresult *res = run(s, Q_RO_UPDATE, &p);
	if (!res)
		return -FL_EDB;
	int n = changed(res);
	PQclear(res);
	return n == 1 ? 0 : -ENOENT;
}

static int pg_rollout_get(struct ctl_store *s, int64_t id, char **ret)
{
	struct params p = {0};
	p_int(&p, id);
	return one_text(s, ((struct pg_store *)s)->in_txn ? Q_RO_GET_LOCK : Q_RO_GET, &p, 0, ret);
}

static int pg_rollout_list(struct ctl_store *s, int64_t *ids, size_t max, size_t *ret_n)
{
	PGresult *res = run(s, Q_RO_LIST, NULL);
	if (!res)
		return -FL_EDB;
	size_t n = 0;
	for (int row = 0; row < PQntuples(res) && n < max; row++)
		ids[n++] = col_int(res, row, 0);
	PQclear(res);
	*ret_n = n;
	return 0;
}

static int pg_rollout_mark(struct ctl_store *s, int64_t id, const char *device, int64_t sent_at,
			   bool reverted)
{
	struct params p = {0};
	p_int(&p, id);
	p_text(&p, device);
	p_int(&p, sent_at);
	p_int(&p, reverted ? 1 : 0);
	return run_done(s, Q_RO_MARK, &p);
}

static int pg_rollout_scan(struct ctl_store *s, int64_t id, const char *model,
			   ctl_rollout_scan_fn fn, void *ud)
{
	struct params p = {0};
	p_int(&p, id);
	p_text(&p, model);
	PGresult *res = run(s, Q_RO_SCAN, &p);
	if (!res)
		return -FL_EDB;
	int rc = 0;
	for (int row = 0; row < PQntuples(res); row++) {
		struct ctl_rollout_dev d = {
			.id = col_text(res, row, 0),
			.labels_json = col_text(res, row, 1),
			.arch = col_text(res, row, 2),
			.online = col_int(res, row, 3) != 0,
			.current_version = col_text(res, row, 4),
			.install_state = col_text(res, row, 5),
			.install_version = col_text(res, row, 6),
			.sent = !PQgetisnull(res, row, 7),
			.sent_at = col_int(res, row, 7),
			.reverted = col_int(res, row, 8) != 0,
			.ram_mb = PQgetisnull(res, row, 9) ? -1 : col_int(res, row, 9),
			.accelerators_json = col_text(res, row, 10),
			.backends_json = col_text(res, row, 11),
		};
		if (!d.id)
			continue;
		if ((rc = fn(ud, &d)) < 0)
			break;
	}
	PQclear(res);
	return rc < 0 ? rc : 0;
}

/* ---------------------------------------------------------------- releases */

static int pg_release_insert(struct ctl_store *s, const char *model, const char *version,
			     const char *body, int64_t now_s, int64_t *ret_id)
{
	struct params p = {0};
	p_text(&p, model);
	p_text(&p, version);
	p_text(&p, body);
	p_int(&p, now_s);
	PGresult *res = run(s, Q_REL_INSERT, &p);
	if (!res)
		return -FL_EDB;
	int rc = PQntuples(res) == 1 ? 0 : -EEXIST;
	if (rc == 0)
		*ret_id = col_int(res, 0, 0);
	PQclear(res);
	return rc;
}

static int pg_release_get(struct ctl_store *s, int64_t id, const char *model,
			  const char *version, int64_t *ret_id, char **ret_body)
{
	struct params p = {0};
	int which;
	if (id > 0) {
		which = Q_REL_GET_ID;
		p_int(&p, id);
	} else {
		which = Q_REL_GET_NAME;
		p_text(&p, model);
		p_text(&p, version);
	}
	PGresult *res = run(s, which, &p);
	if (!res)
		return -FL_EDB;
	int rc = -ENOENT;
	if (PQntuples(res) == 1) {
		char *b = strdup(PQgetvalue(res, 0, 1));
		rc = b ? 0 : -ENOMEM;
		if (b) {
			if (ret_id)
				*ret_id = col_int(res, 0, 0);
			*ret_body = b;
		}
	}
	PQclear(res);
	return rc;
}

static int pg_release_list(struct ctl_store *s, const char *model, cJSON **ret)
{
	struct params p = {0};
	p_text(&p, model);
	PGresult *res = run(s, Q_REL_LIST, &p);
	if (!res)
		return -FL_EDB;
	cJSON *root = cJSON_CreateObject();
	cJSON *arr = root ? cJSON_AddArrayToObject(root, "releases") : NULL;
	int rc = arr ? 0 : -ENOMEM;
	for (int row = 0; rc == 0 && row < PQntuples(res); row++) {
		cJSON *o = cJSON_Parse(PQgetvalue(res, row, 1));
		if (!o) {
			rc = -FL_EDB; /* we wrote it */
			break;
		}
		cJSON_DeleteItemFromObjectCaseSensitive(o, "id");
		if (!cJSON_AddNumberToObject(o, "id", (double)col_int(res, row, 0)) ||
		    !cJSON_AddItemToArray(arr, o)) {
			cJSON_Delete(o);
			rc = -ENOMEM;
		}
	}
	PQclear(res);
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

/* ---------------------------------------------------------------- health */

/* The histogram as a PostgreSQL array literal "{c0,c1,...}". */
#define HIST_TEXT_MAX (TELE_HIST_BUCKETS * 21 + 3)

static void hist_text(char *out, const uint64_t *counts)
{
	size_t n = 0;
	out[n++] = '{';
	for (size_t i = 0; i < TELE_HIST_BUCKETS; i++)
		n += (size_t)snprintf(out + n, HIST_TEXT_MAX - n, "%s%" PRIu64, i ? "," : "",
				      counts[i] > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX
								      : counts[i]);
	snprintf(out + n, HIST_TEXT_MAX - n, "}");
}

/* Parse "{c0,c1,...}" into COUNTS (added); extra entries are ignored. */
static void hist_parse(const char *t, uint64_t *counts)
{
	if (!t || *t != '{')
		return;
	t++;
	for (size_t i = 0; i < TELE_HIST_BUCKETS && *t && *t != '}'; i++) {
		char *end = NULL;
		long long v = strtoll(t, &end, 10);
		if (end == t)
			return;
		if (v > 0)
			counts[i] += (uint64_t)v;
		t = *end == ',' ? end + 1 : end;
	}
}

static int pg_health_add(struct ctl_store *s, const struct ctl_health *h)
{
	char hist[HIST_TEXT_MAX];
	hist_text(hist, h->latency_us.counts);
	struct params p = {0};
	p_text(&p, h->device);
	p_text(&p, h->model);
	p_text(&p, h->version);
	p_int(&p, h->first_s);
	p_int(&p, h->last_s);
	const uint64_t nums[] = {h->records, h->requests, h->errors,   h->crashes,
				 h->restarts, h->outputs, h->empty, h->refusals};
	for (size_t i = 0; i < FL_ARRAY_SIZE(nums); i++) {
		if (nums[i] > (uint64_t)INT64_MAX)
			return -EINVAL;
		p_int(&p, (int64_t)nums[i]);
	}
	p_double(&p, h->psi_sum);
	p_int(&p, (int64_t)h->psi_n);
	p_int(&p, (int64_t)h->latency_us.count);
	p_double(&p, h->latency_us.sum);
	p_double(&p, h->latency_us.count ? h->latency_us.min : 0);
	p_double(&p, h->latency_us.count ? h->latency_us.max : 0);
	p_text(&p, hist);
	struct pg_store *x = (struct pg_store *)s;
	if (!x->in_txn || (PQpipelineStatus(x->conn) == PQ_PIPELINE_OFF &&
			   !PQenterPipelineMode(x->conn)))
		return run_done(s, Q_HEALTH_ADD, &p);
	char name[16];
	snprintf(name, sizeof(name), "q%d", Q_HEALTH_ADD);
	/* libpq copies the parameters into its output buffer now */
	if (!PQsendQueryPrepared(x->conn, name, p.n, p.v, NULL, NULL, 0)) {
		fl_warn("store(pg): health_add: %s", PQerrorMessage(x->conn));
		drain(x);
		return -FL_EDB;
	}
	if (++x->queued >= PG_PIPELINE_MAX)
		return drain(x);
	return 0;
}

static int pg_health_scan(struct ctl_store *s, int64_t id, const char *model,
			  ctl_health_scan_fn fn, void *ud)
{
	struct params p = {0};
	p_int(&p, id);
	p_text(&p, model);
	PGresult *res = run(s, Q_HEALTH_SCAN, &p);
	if (!res)
		return -FL_EDB;
	int rc = 0;
	for (int row = 0; row < PQntuples(res); row++) {
		struct ctl_health h = {
			.device = col_text(res, row, 0),
			.model = model,
			.version = col_text(res, row, 1),
			.first_s = col_int(res, row, 2),
			.last_s = col_int(res, row, 3),
			.records = (uint64_t)col_int(res, row, 4),
			.requests = (uint64_t)col_int(res, row, 5),
			.errors = (uint64_t)col_int(res, row, 6),
			.crashes = (uint64_t)col_int(res, row, 7),
			.restarts = (uint64_t)col_int(res, row, 8),
			.outputs = (uint64_t)col_int(res, row, 9),
			.empty = (uint64_t)col_int(res, row, 10),
			.refusals = (uint64_t)col_int(res, row, 11),
			.psi_sum = col_double(res, row, 12),
			.psi_n = (uint64_t)col_int(res, row, 13),
		};
		h.latency_us.count = (uint64_t)col_int(res, row, 14);
		h.latency_us.sum = col_double(res, row, 15);
		h.latency_us.min = col_double(res, row, 16);
		h.latency_us.max = col_double(res, row, 17);
		hist_parse(col_text(res, row, 18), h.latency_us.counts);
		if (!h.device || !h.version)
			continue;
		if ((rc = fn(ud, &h)) < 0)
			break;
	}
	PQclear(res);
	return rc < 0 ? rc : 0;
}

static int pg_engine_leader(struct ctl_store *s)
{
	struct pg_store *x = (struct pg_store *)s;
	if (x->leader && !x->lost)
		return 1;
	if (alive(x) < 0 || drain(x) < 0)
		return -FL_EDB;
	char sql[64];
	snprintf(sql, sizeof(sql), "SELECT pg_try_advisory_lock(%lld)", PG_LEADER_LOCK);
	PGresult *res = PQexec(x->conn, sql);
	int r = -FL_EDB;
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		r = PQgetvalue(res, 0, 0)[0] == 't';
	else
		fl_warn("store(pg): leader lock: %s", PQerrorMessage(x->conn));
	PQclear(res);
	if (r < 0 && PQstatus(x->conn) == CONNECTION_BAD)
		mark_lost(x);
	if (r == 1) {
		x->leader = true;
		fl_info("store(pg): this instance now runs the rollout engine");
	}
	return r;
}

static const struct ctl_store_ops2 pg_ops2; /* at the end of the file */

static int pg_tele_covered(struct ctl_store *s, const char *device, const char *stream,
			   uint64_t lo, uint64_t hi, uint64_t (*out)[2], size_t max,
			   size_t *ret_n)
{
	*ret_n = 0;
	if (lo > (uint64_t)INT64_MAX || hi > (uint64_t)INT64_MAX || max > INT32_MAX)
		return -EINVAL;
	struct params p = {0};
	p_text(&p, device);
	p_text(&p, stream);
	p_int(&p, (int64_t)lo);
	p_int(&p, (int64_t)hi);
	p_int(&p, (int64_t)max);
	PGresult *res = run(s, Q_TELE_COVERED, &p);
	if (!res)
		return -FL_EDB;
	size_t n = 0;
	for (int row = 0; row < PQntuples(res) && n < max; row++) {
		int64_t a = col_int(res, row, 0), b = col_int(res, row, 1);
		if (a <= 0 || b < a)
			continue;
		out[n][0] = (uint64_t)a;
		out[n][1] = (uint64_t)b;
		n++;
	}
	PQclear(res);
	*ret_n = n;
	return 0;
}

static const struct ctl_store_ops pg_ops = {
	.close = pg_close,
	.begin = pg_begin,
	.commit = pg_commit,
	.rollback = pg_rollback,
	.schema_version = pg_schema_version,
	.device_upsert = pg_device_upsert,
	.device_set_offline = pg_device_set_offline,
	.device_models_clear = pg_device_models_clear,
	.device_model_put = pg_device_model_put,
	.device_list = pg_device_list,
	.device_get = pg_device_get,
	.bundle_put = pg_bundle_put,
	.bundle_list = pg_bundle_list,
	.bundle_envelope = pg_bundle_envelope,
	.tele_insert = pg_tele_insert,
	.tele_insert_batch = pg_tele_insert_batch,
	.gaps_put = pg_gaps_put,
	.gaps_get = pg_gaps_get,
	.audit = pg_audit,
	.audit_count = pg_audit_count,
	.metrics = pg_metrics,
	.rollout_insert = pg_rollout_insert,
	.rollout_update = pg_rollout_update,
	.rollout_get = pg_rollout_get,
	.rollout_list = pg_rollout_list,
	.rollout_mark = pg_rollout_mark,
	.rollout_scan = pg_rollout_scan,
	.release_insert = pg_release_insert,
	.release_get = pg_release_get,
	.release_list = pg_release_list,
	.health_add = pg_health_add,
	.health_scan = pg_health_scan,
	.engine_leader = pg_engine_leader,
	.tele_covered = pg_tele_covered,
};

/* ---------------------------------------------------------------- open */

/* One step of the migration: under the advisory lock (several instances may
 * start at once), read the version and apply the next migration with its
 * record in the same transaction. 1 applied, 0 up to date. */
static int migrate_step(PGconn *c)
{
	int r = exec_sql(c, "BEGIN");
	if (r < 0)
		return r;
	char sql[256];
	snprintf(sql, sizeof(sql), "SELECT pg_advisory_xact_lock(%lld)", PG_MIGRATE_LOCK);
	if ((r = exec_sql(c, sql)) < 0 ||
	    (r = exec_sql(c, "CREATE TABLE IF NOT EXISTS schema_migrations("
			     " version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")) < 0)
		goto fail;
	PGresult *res = PQexec(c, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
	int have = -1;
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		have = atoi(PQgetvalue(res, 0, 0));
	PQclear(res);
	int known = (int)FL_ARRAY_SIZE(migrations);
	if (have < 0) {
		r = -FL_EDB;
		goto fail;
	}
	if (have > known) {
		fl_err("store(pg): schema version %d is newer than this controller's %d", have,
		       known);
		r = -FL_EUNSUPPORTED;
		goto fail;
	}
	if (have == known)
		return exec_sql(c, "COMMIT");
	if ((r = exec_sql(c, migrations[have])) < 0)
		goto fail;
	snprintf(sql, sizeof(sql),
		 "INSERT INTO schema_migrations(version, applied_at) VALUES(%d, %lld)", have + 1,
		 (long long)fl_now_s());
	if ((r = exec_sql(c, sql)) < 0 || (r = exec_sql(c, "COMMIT")) < 0)
		goto fail;
	return 1;
fail:
	exec_sql(c, "ROLLBACK");
	return r;
}

/* Prepare every statement on C (at open and after each reconnect: prepared
 * statements live in the session). */
static int prepare_all(PGconn *c)
{
	for (int i = 0; i < Q_COUNT; i++) {
		char name[16];
		snprintf(name, sizeof(name), "q%d", i);
		PGresult *res = PQprepare(c, name, queries[i], 0, NULL);
		bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
		if (!ok)
			fl_err("store(pg): prepare q%d: %s", i, PQresultErrorMessage(res));
		PQclear(res);
		if (!ok)
			return -FL_EDB;
	}
	return 0;
}

static void quiet_notice(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

int ctl_store_open_pg(const char *conninfo, struct ctl_store **ret)
{
	if (!conninfo || !*conninfo || !ret)
		return -EINVAL;
	struct pg_store *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->base.ops = &pg_ops;
	x->base.ops2 = &pg_ops2;
	int r = -FL_EDB;
	x->conn = PQconnectdb(conninfo);
	if (!x->conn || PQstatus(x->conn) != CONNECTION_OK) {
		fl_err("store(pg): cannot connect: %s",
		       x->conn ? PQerrorMessage(x->conn) : "out of memory");
		goto fail;
	}
	PQsetNoticeProcessor(x->conn, quiet_notice, NULL);
	while ((r = migrate_step(x->conn)) == 1)
		;
	if (r < 0 || (r = prepare_all(x->conn)) < 0)
		goto fail;
	*ret = &x->base;
	return 0;
fail:
	pg_close(&x->base);
	return r;
}

/* ---------------------------------------------------------------- ops2 */

/* Run SQL (not prepared: ops2 statements are rare) with P's parameters;
 * NULL (logged) on failure. */
static PGresult *run_sql(struct ctl_store *s, const char *sql, const struct params *p)
{
	struct pg_store *x = (struct pg_store *)s;
	if (alive(x) < 0 || drain(x) < 0)
		return NULL;
	PGresult *res = PQexecParams(x->conn, sql, p ? p->n : 0, NULL, p ? p->v : NULL, NULL,
				     NULL, 0);
	ExecStatusType st = PQresultStatus(res);
	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
		return res;
	fl_warn("store(pg): %s", res ? PQresultErrorMessage(res) : PQerrorMessage(x->conn));
	PQclear(res);
	if (PQstatus(x->conn) == CONNECTION_BAD)
		mark_lost(x);
	return NULL;
}

/* S as a JSON string into B (device_scan's versions object). */
static int json_str(struct fl_buf *b, const char *s)
{
	if (!s)
		return fl_buf_append(b, "null", 4);
	int r = fl_buf_append(b, "\"", 1);
	for (; r >= 0 && *s; s++) {
		unsigned char ch = (unsigned char)*s;
		char esc[8];
		if (ch == '"' || ch == '\\') {
			esc[0] = '\\';
			esc[1] = (char)ch;
			r = fl_buf_append(b, esc, 2);
		} else if (ch < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", ch);
			r = fl_buf_append(b, esc, 6);
		} else {
			r = fl_buf_append(b, s, 1);
		}
	}
	return r < 0 ? r : fl_buf_append(b, "\"", 1);
}

/* The devices of one page by their primary key from the cursor on, joined
 * with their models (one row per device and model, set-based: a correlated
 * json_object_agg per device costs PostgreSQL ~3x more), each device's
 * versions gathered into one JSON object here. */
static int pg_device_scan(struct ctl_store *s, const struct ctl_device_filter *f,
			  ctl_device_row_fn fn, void *ud)
{
	struct params p = {0};
	p_text(&p, f->label_key);
	p_text(&p, f->label_value ? f->label_value : "");
	p_text(&p, f->arch);
	p_text(&p, f->version);
	p_int(&p, f->online);
	/* one more than the largest page: the caller learns whether more follow */
	size_t limit = f->limit && f->limit <= CTL_STORE_LIST_MAX ? f->limit : CTL_STORE_LIST_MAX + 1;
	p_int(&p, (int64_t)limit);
	if (f->min_ram_mb > 0)
		p_int(&p, f->min_ram_mb);
	else
		p_text(&p, NULL);
	p_text(&p, f->accelerator);
	p_text(&p, f->backend);
	p_text(&p, f->install_state);
	p_text(&p, f->after ? f->after : ""); /* ids are never empty */
	PGresult *res = run_sql(
		s,
		"SELECT d.id, d.labels, d.arch, d.ram_mb, d.accelerators, d.backends, d.online,"
		" d.last_seen, d.agent_version, m.model, m.current_version FROM"
		" (SELECT * FROM devices d WHERE d.id > $11::text"
		"  AND ($1::text IS NULL OR (d.labels::jsonb) ->> $1::text = $2::text)"
		"  AND ($3::text IS NULL OR d.arch = $3::text)"
		"  AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM device_models m"
		"       WHERE m.device = d.id AND m.current_version = $4::text))"
		"  AND ($5::int < 0 OR d.online = $5::int)"
		"  AND ($7::bigint IS NULL OR d.ram_mb >= $7::bigint)"
		"  AND ($8::text IS NULL OR (d.accelerators::jsonb) ? $8::text)"
		"  AND ($9::text IS NULL OR (d.backends::jsonb) ? $9::text)"
		"  AND ($10::text IS NULL OR EXISTS (SELECT 1 FROM device_models m"
		"       WHERE m.device = d.id AND m.install_state = $10::text))"
		"  ORDER BY d.id LIMIT $6::bigint) d"
		" LEFT JOIN device_models m ON m.device = d.id"
		" ORDER BY d.id, m.model",
		&p);
	if (!res)
		return -FL_EDB;
	int rc = 0, n = PQntuples(res);
	struct fl_buf v = {0};
	for (int row = 0; row < n && rc >= 0;) {
		/* rows ROW..END-1 are one device */
		const char *id = col_text(res, row, 0);
		int end = row + 1;
		while (end < n && id && !strcmp(id, PQgetvalue(res, end, 0)))
			end++;
		v.len = 0;
		rc = fl_buf_append(&v, "{", 1);
		for (int k = row; rc >= 0 && k < end; k++) {
			if (PQgetisnull(res, k, 9))
				continue;
			if (v.len > 1)
				rc = fl_buf_append(&v, ",", 1);
			if (rc >= 0)
				rc = json_str(&v, col_text(res, k, 9));
			if (rc >= 0)
				rc = fl_buf_append(&v, ":", 1);
			if (rc >= 0)
				rc = json_str(&v, col_text(res, k, 10));
		}
		if (rc >= 0)
			rc = fl_buf_append(&v, "}", 1);
		struct ctl_device_row d = {
			.id = id,
			.labels_json = col_text(res, row, 1),
			.arch = col_text(res, row, 2),
			.has_ram = !PQgetisnull(res, row, 3),
			.ram_mb = col_int(res, row, 3),
			.accelerators_json = col_text(res, row, 4),
			.backends_json = col_text(res, row, 5),
			.online = col_int(res, row, 6) != 0,
			.last_seen_s = col_int(res, row, 7),
			.agent_version = col_text(res, row, 8),
			.versions_json = v.p,
		};
		if (rc >= 0 && d.id)
			rc = fn(ud, &d);
		row = end;
	}
	fl_buf_free(&v);
	PQclear(res);
	return rc < 0 ? rc : 0;
}

static int pg_fleet_counts(struct ctl_store *s, ctl_fleet_count_fn fn, void *ud)
{
	PGresult *res =
		run_sql(s,
			"SELECT model, current_version, NULL, COUNT(*) FROM device_models"
			" WHERE current_version IS NOT NULL GROUP BY model, current_version"
			" UNION ALL"
			" SELECT model, install_version, install_state, COUNT(*) FROM device_models"
			" WHERE install_version IS NOT NULL AND install_state IS NOT NULL"
			" AND install_state <> 'IDLE'"
			" GROUP BY model, install_version, install_state",
			NULL);
	if (!res)
		return -FL_EDB;
	int rc = 0;
	for (int row = 0; row < PQntuples(res); row++) {
		const char *m = col_text(res, row, 0), *v = col_text(res, row, 1);
		if (!m || !v)
			continue;
		if ((rc = fn(ud, m, v, col_text(res, row, 2), col_int(res, row, 3))) < 0)
			break;
	}
	PQclear(res);
	return rc < 0 ? rc : 0;
}

static int pg_fleet_unhealthy(struct ctl_store *s, size_t max, ctl_fleet_unhealthy_fn fn,
			      void *ud)
{
	struct params p = {0};
	p_int(&p, (int64_t)max);
	PGresult *res = run_sql(s,
				"SELECT device, model, install_state FROM device_models"
				" WHERE install_version IS NOT NULL AND install_state IS NOT NULL"
				" AND install_state NOT IN ('IDLE', 'COMMITTED')"
				" ORDER BY device, model LIMIT $1::bigint",
				&p);
	if (!res)
		return -FL_EDB;
	int rc = 0;
	for (int row = 0; row < PQntuples(res); row++) {
		const char *d = col_text(res, row, 0), *m = col_text(res, row, 1),
			   *is = col_text(res, row, 2);
		if (!d || !m || !is)
			continue;
		if ((rc = fn(ud, d, m, is)) < 0)
			break;
	}
	PQclear(res);
	return rc < 0 ? rc : 0;
}

static const struct ctl_store_ops2 pg_ops2 = {
	.device_scan = pg_device_scan,
	.fleet_counts = pg_fleet_counts,
	.fleet_unhealthy = pg_fleet_unhealthy,
};
