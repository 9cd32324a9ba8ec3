/* SQLite (WAL) backend of the controller store. Every SQL statement of the
 * controller is in this file; the SQL sticks to what PostgreSQL also accepts
 * where it can (ON CONFLICT upserts, no AUTOINCREMENT), JSON helpers aside. */
#include <errno.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

#include "store.h"

/* Each migration runs in one transaction together with the row that records
 * it. Append only: never edit a migration that has shipped. */
static const char *const migrations[] = {
	/* 1: initial schema */
	"CREATE TABLE devices("
	" id TEXT PRIMARY KEY,"
	" labels TEXT NOT NULL DEFAULT '{}',"
	" arch TEXT,"
	" ram_mb INTEGER,"
	" accelerators TEXT NOT NULL DEFAULT '[]',"
	" backends TEXT NOT NULL DEFAULT '[]',"
	" online INTEGER NOT NULL DEFAULT 0,"
	" last_seen INTEGER NOT NULL DEFAULT 0,"
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
	" bytes_done INTEGER NOT NULL DEFAULT 0,"
	" bytes_total INTEGER NOT NULL DEFAULT 0,"
	" chunks_done INTEGER NOT NULL DEFAULT 0,"
	" chunks_total INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY(device, model));"
	"CREATE INDEX device_models_version ON device_models(current_version);"
	"CREATE TABLE bundles("
	" model TEXT NOT NULL,"
	" version TEXT NOT NULL,"
	" sequence INTEGER NOT NULL,"
	" envelope_id TEXT NOT NULL,"
	" envelope TEXT NOT NULL,"
	" files TEXT NOT NULL,"
	" verified INTEGER NOT NULL,"
	" pushed_at INTEGER NOT NULL,"
	" PRIMARY KEY(model, version),"
	" UNIQUE(model, sequence));"
	"CREATE TABLE telemetry("
	" id INTEGER PRIMARY KEY,"
	" device TEXT NOT NULL,"
	" stream TEXT NOT NULL,"
	" seq INTEGER NOT NULL,"
	" kind TEXT NOT NULL,"
	" ts INTEGER NOT NULL,"
	" body TEXT NOT NULL,"
	" UNIQUE(device, stream, seq));"
	"CREATE TABLE gaps("
	" device TEXT PRIMARY KEY,"
	" stream TEXT NOT NULL,"
	" missing_ranges INTEGER NOT NULL,"
	" missing_seqs INTEGER NOT NULL,"
	" dropped INTEGER NOT NULL,"
	" highest INTEGER NOT NULL,"
	" updated INTEGER NOT NULL);"
	"CREATE TABLE audit("
	" id INTEGER PRIMARY KEY,"
	" ts INTEGER NOT NULL,"
	" actor TEXT NOT NULL,"
	" action TEXT NOT NULL,"
	" reason TEXT NOT NULL);",
	/* 2: staged rollouts (docs/rollouts.md) */
	"CREATE TABLE rollouts("
	" id INTEGER PRIMARY KEY,"
	" body TEXT NOT NULL,"
	" updated INTEGER NOT NULL);"
	"CREATE TABLE rollout_devices("
	" rollout INTEGER NOT NULL REFERENCES rollouts(id),"
	" device TEXT NOT NULL,"
	" sent_at INTEGER NOT NULL,"
	" reverted INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY(rollout, device));",
	/* 3: releases with per-class variants; per-version health totals
	 * (docs/rollouts.md) */
	"CREATE TABLE releases("
	" id INTEGER PRIMARY KEY,"
	" model TEXT NOT NULL,"
	" version TEXT NOT NULL,"
	" body TEXT NOT NULL,"
	" created_at INTEGER NOT NULL,"
	" UNIQUE(model, version));"
	"CREATE TABLE health("
	" device TEXT NOT NULL,"
	" model TEXT NOT NULL,"
	" version TEXT NOT NULL,"
	" first_s INTEGER NOT NULL,"
	" last_s INTEGER NOT NULL,"
	" records INTEGER NOT NULL,"
	" requests INTEGER NOT NULL,"
	" errors INTEGER NOT NULL,"
	" crashes INTEGER NOT NULL,"
	" restarts INTEGER NOT NULL,"
	" outputs INTEGER NOT NULL,"
	" empty INTEGER NOT NULL,"
	" refusals INTEGER NOT NULL,"
	" psi_sum REAL NOT NULL,"
	" psi_n INTEGER NOT NULL,"
	" lat_n INTEGER NOT NULL,"
	" lat_sum REAL NOT NULL,"
	" lat_min REAL NOT NULL,"
	" lat_max REAL NOT NULL,"
	" lat_hist BLOB,"
	" PRIMARY KEY(device, model, version));"
	"CREATE INDEX health_version ON health(model, version);",
};

enum {
	Q_BEGIN,
	Q_COMMIT,
	Q_ROLLBACK,
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
	Q_COUNT
};

static const char *const queries[Q_COUNT] = {
	[Q_BEGIN] = "BEGIN IMMEDIATE",
	[Q_COMMIT] = "COMMIT",
	[Q_ROLLBACK] = "ROLLBACK",
	[Q_DEV_UPSERT] =
		"INSERT INTO devices(id, labels, arch, ram_mb, accelerators, backends, online,"
		" last_seen, agent_version) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
		" ON CONFLICT(id) DO UPDATE SET labels = excluded.labels, arch = excluded.arch,"
		" ram_mb = excluded.ram_mb, accelerators = excluded.accelerators,"
		" backends = excluded.backends, online = excluded.online,"
		" last_seen = excluded.last_seen, agent_version = excluded.agent_version",
	[Q_DEV_OFFLINE] = "INSERT INTO devices(id, online, last_seen) VALUES(?1, 0, ?2)"
			  " ON CONFLICT(id) DO UPDATE SET online = 0",
	[Q_MODELS_CLEAR] = "DELETE FROM device_models WHERE device = ?1",
	[Q_MODEL_PUT] = "INSERT INTO device_models(device, model, current_slot, current_version,"
			" slots, install_state, install_version, install_error, bytes_done,"
			" bytes_total, chunks_done, chunks_total)"
			" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
	/* One row per (device, model) of the selected devices, models in order
	 * (NULL model: none); one query instead of one per device. */
	[Q_DEV_LIST] =
		"SELECT d.id, d.labels, d.arch, d.ram_mb, d.accelerators, d.backends, d.online,"
		" d.last_seen, d.agent_version, m.model, m.current_version FROM"
		" (SELECT * FROM devices d"
		"  WHERE (?1 IS NULL OR EXISTS (SELECT 1 FROM json_each(d.labels) j"
		"         WHERE j.key = ?1 AND j.value = ?2))"
		"  AND (?3 IS NULL OR d.arch = ?3)"
		"  AND (?4 IS NULL OR EXISTS (SELECT 1 FROM device_models m"
		"         WHERE m.device = d.id AND m.current_version = ?4))"
		"  AND (?5 < 0 OR d.online = ?5)"
		"  AND (?7 IS NULL OR d.ram_mb >= ?7)"
		"  AND (?8 IS NULL OR EXISTS (SELECT 1 FROM json_each(d.accelerators) j"
		"         WHERE j.value = ?8))"
		"  AND (?9 IS NULL OR EXISTS (SELECT 1 FROM json_each(d.backends) j"
		"         WHERE j.value = ?9))"
		"  AND (?10 IS NULL OR EXISTS (SELECT 1 FROM device_models m"
		"         WHERE m.device = d.id AND m.install_state = ?10))"
		"  AND (?11 IS NULL OR d.id > ?11)"
		"  ORDER BY d.id LIMIT ?6) d"
		" LEFT JOIN device_models m ON m.device = d.id"
		" ORDER BY d.id, m.model",
	[Q_DEV_MODELS] = "SELECT model, current_slot, current_version, slots, install_state,"
			 " install_version, install_error, bytes_done, bytes_total, chunks_done,"
			 " chunks_total FROM device_models WHERE device = ?1 ORDER BY model",
	[Q_DEV_GET] = "SELECT id, labels, arch, ram_mb, accelerators, backends, online, last_seen,"
		      " agent_version FROM devices WHERE id = ?1",
	[Q_DEV_EVENTS] = "SELECT body FROM telemetry WHERE device = ?1 AND kind LIKE 'event:%'"
			 " ORDER BY id DESC LIMIT ?2",
	[Q_DEV_GAPS] = "SELECT stream, missing_ranges, missing_seqs, dropped, highest, updated"
		       " FROM gaps WHERE device = ?1",
	[Q_BUNDLE_GET] = "SELECT envelope_id FROM bundles WHERE model = ?1 AND version = ?2",
	[Q_BUNDLE_CONFLICT] = "SELECT envelope_id FROM bundles WHERE model = ?1 AND sequence = ?2",
	[Q_BUNDLE_PUT] = "INSERT INTO bundles(model, version, sequence, envelope_id, envelope,"
			 " files, verified, pushed_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
	[Q_BUNDLE_LIST] = "SELECT model, version, sequence, envelope_id, files, verified,"
			  " pushed_at FROM bundles ORDER BY model, sequence LIMIT 10000",
	[Q_BUNDLE_ENVELOPE] = "SELECT envelope FROM bundles WHERE model = ?1 AND version = ?2",
	[Q_TELE_INSERT] = "INSERT INTO telemetry(device, stream, seq, kind, ts, body)"
			  " VALUES(?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
	[Q_GAPS_PUT] = "INSERT INTO gaps(device, stream, missing_ranges, missing_seqs, dropped,"
		       " highest, updated) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"
		       " ON CONFLICT(device) DO UPDATE SET stream = excluded.stream,"
		       " missing_ranges = excluded.missing_ranges,"
		       " missing_seqs = excluded.missing_seqs, dropped = excluded.dropped,"
		       " highest = excluded.highest, updated = excluded.updated",
	[Q_GAPS_GET] = "SELECT stream, highest FROM gaps WHERE device = ?1",
	[Q_AUDIT] = "INSERT INTO audit(ts, actor, action, reason) VALUES(?1, ?2, ?3, ?4)",
	[Q_AUDIT_COUNT] = "SELECT COUNT(*) FROM audit",
	[Q_M_ONLINE] = "SELECT online, COUNT(*) FROM devices GROUP BY online",
	[Q_M_VERSIONS] = "SELECT model, current_version, COUNT(*) FROM device_models"
			 " WHERE current_version IS NOT NULL GROUP BY model, current_version"
			 " ORDER BY model, current_version LIMIT 1000",
	[Q_M_BUNDLES] = "SELECT COUNT(*) FROM bundles",
	[Q_M_GAPS] = "SELECT COALESCE(SUM(missing_seqs), 0) FROM gaps",
	[Q_RO_INSERT] = "INSERT INTO rollouts(id, body, updated)"
			" VALUES((SELECT COALESCE(MAX(id), 0) + 1 FROM rollouts), ?1, ?2)"
			" RETURNING id",
	[Q_RO_UPDATE] = "UPDATE rollouts SET body = ?2, updated = ?3 WHERE id = ?1",
	[Q_RO_GET] = "SELECT body FROM rollouts WHERE id = ?1",
	[Q_RO_LIST] = "SELECT id, body FROM rollouts ORDER BY id LIMIT 10000",
	[Q_RO_MARK] = "INSERT INTO rollout_devices(rollout, device, sent_at, reverted)"
		      " VALUES(?1, ?2, ?3, ?4) ON CONFLICT(rollout, device) DO UPDATE SET"
		      " sent_at = excluded.sent_at, reverted = excluded.reverted",
	[Q_RO_SCAN] = "SELECT d.id, d.labels, d.arch, d.online, m.current_version,"
		      " m.install_state, m.install_version, r.sent_at, r.reverted,"
		      " d.ram_mb, d.accelerators, d.backends"
		      " FROM devices d"
		      " LEFT JOIN device_models m ON m.device = d.id AND m.model = ?2"
		      " LEFT JOIN rollout_devices r ON r.rollout = ?1 AND r.device = d.id",
	[Q_REL_INSERT] = "INSERT INTO releases(id, model, version, body, created_at)"
			 " VALUES((SELECT COALESCE(MAX(id), 0) + 1 FROM releases), ?1, ?2, ?3, ?4)"
			 " ON CONFLICT(model, version) DO NOTHING RETURNING id",
	[Q_REL_GET_ID] = "SELECT id, body FROM releases WHERE id = ?1",
	[Q_REL_GET_NAME] = "SELECT id, body FROM releases WHERE model = ?1 AND version = ?2",
	[Q_REL_LIST] = "SELECT id, body FROM releases WHERE (?1 IS NULL OR model = ?1)"
		       " ORDER BY id LIMIT 10000",
	[Q_HEALTH_ADD] =
		"INSERT INTO health(device, model, version, first_s, last_s, records, requests,"
		" errors, crashes, restarts, outputs, empty, refusals, psi_sum, psi_n, lat_n,"
		" lat_sum, lat_min, lat_max, lat_hist) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
		" ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
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
		"  ELSE MIN(health.lat_min, excluded.lat_min) END,"
		" lat_max = CASE WHEN excluded.lat_n = 0 THEN health.lat_max"
		"  WHEN health.lat_n = 0 THEN excluded.lat_max"
		"  ELSE MAX(health.lat_max, excluded.lat_max) END,"
		" lat_n = health.lat_n + excluded.lat_n,"
		" lat_sum = health.lat_sum + excluded.lat_sum,"
		" lat_hist = fl_hist_add(health.lat_hist, excluded.lat_hist)",
	[Q_HEALTH_SCAN] = "SELECT h.device, h.version, h.first_s, h.last_s, h.records, h.requests,"
			  " h.errors, h.crashes, h.restarts, h.outputs, h.empty, h.refusals,"
			  " h.psi_sum, h.psi_n, h.lat_n, h.lat_sum, h.lat_min, h.lat_max,"
			  " h.lat_hist FROM rollout_devices r"
			  /* CROSS JOIN: SQLite keeps this order, rollout_devices'
			   * key gives the devices sorted, no temp b-tree */
			  " CROSS JOIN health h ON h.device = r.device AND h.model = ?2"
			  " WHERE r.rollout = ?1 ORDER BY r.device",
};

struct sq_store {
	struct ctl_store base;
	sqlite3 *db;
	sqlite3_stmt *st[Q_COUNT];
};

static struct sq_store *SQ(struct ctl_store *s)
{
	return (struct sq_store *)s;
}

/* A prepared statement, reset and unbound. */
static sqlite3_stmt *q(struct ctl_store *s, int which)
{
	sqlite3_stmt *st = SQ(s)->st[which];
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return st;
}

static int bind_text(sqlite3_stmt *st, int i, const char *v)
{
	if (!v)
		return sqlite3_bind_null(st, i);
	return sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
}

/* Run a statement that returns no rows. */
static int step_done(sqlite3_stmt *st)
{
	int r = sqlite3_step(st);
	sqlite3_reset(st);
	return r == SQLITE_DONE ? 0 : -FL_EDB;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
	return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -FL_EDB;
}

static const char *col_text(sqlite3_stmt *st, int i)
{
	return (const char *)sqlite3_column_text(st, i);
}

/* Add the JSON text of column I to OBJ as KEY (a parse failure adds null). */
static int add_json_col(cJSON *obj, const char *key, sqlite3_stmt *st, int i)
{
	const char *t = col_text(st, i);
	cJSON *v = t ? cJSON_Parse(t) : NULL;
	if (!v)
		v = cJSON_CreateNull();
	if (!v || !cJSON_AddItemToObject(obj, key, v)) {
		cJSON_Delete(v);
		return -ENOMEM;
	}
	return 0;
}

static int add_str_col(cJSON *obj, const char *key, sqlite3_stmt *st, int i)
{
	const char *t = col_text(st, i);
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

static void sq_close(struct ctl_store *s)
{
	struct sq_store *x = SQ(s);
	for (int i = 0; i < Q_COUNT; i++)
		sqlite3_finalize(x->st[i]);
	sqlite3_close(x->db);
	free(x);
}

static int sq_begin(struct ctl_store *s)
{
	return step_done(q(s, Q_BEGIN));
}

static int sq_commit(struct ctl_store *s)
{
	return step_done(q(s, Q_COMMIT));
}

static int sq_rollback(struct ctl_store *s)
{
	return step_done(q(s, Q_ROLLBACK));
}

static int user_version(sqlite3 *db, int *ret)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", -1,
			       &st, NULL) != SQLITE_OK)
		return -FL_EDB;
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		*ret = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return r == SQLITE_ROW ? 0 : -FL_EDB;
}

static int sq_schema_version(struct ctl_store *s, int *ret)
{
	return user_version(SQ(s)->db, ret);
}

/* ---------------------------------------------------------------- devices */

static int sq_device_upsert(struct ctl_store *s, const struct ctl_device *d)
{
	sqlite3_stmt *st = q(s, Q_DEV_UPSERT);
	bind_text(st, 1, d->id);
	bind_text(st, 2, d->labels_json ? d->labels_json : "{}");
	bind_text(st, 3, d->arch);
	if (d->ram_mb >= 0)
		sqlite3_bind_int64(st, 4, d->ram_mb);
	bind_text(st, 5, d->accelerators_json ? d->accelerators_json : "[]");
	bind_text(st, 6, d->backends_json ? d->backends_json : "[]");
	sqlite3_bind_int(st, 7, d->online ? 1 : 0);
	sqlite3_bind_int64(st, 8, d->last_seen_s);
	bind_text(st, 9, d->agent_version);
	return step_done(st);
}

static int sq_device_set_offline(struct ctl_store *s, const char *id, int64_t now_s)
{
	sqlite3_stmt *st = q(s, Q_DEV_OFFLINE);
	bind_text(st, 1, id);
	sqlite3_bind_int64(st, 2, now_s);
	return step_done(st);
}

static int sq_device_models_clear(struct ctl_store *s, const char *id)
{
	sqlite3_stmt *st = q(s, Q_MODELS_CLEAR);
	bind_text(st, 1, id);
	return step_done(st);
}

static int sq_device_model_put(struct ctl_store *s, const struct ctl_device_model *m)
{
	sqlite3_stmt *st = q(s, Q_MODEL_PUT);
	bind_text(st, 1, m->device);
	bind_text(st, 2, m->model);
	bind_text(st, 3, m->current_slot);
	bind_text(st, 4, m->current_version);
	bind_text(st, 5, m->slots_json ? m->slots_json : "{}");
	bind_text(st, 6, m->install_state);
	bind_text(st, 7, m->install_version);
	bind_text(st, 8, m->install_error);
	sqlite3_bind_int64(st, 9, m->bytes_done);
	sqlite3_bind_int64(st, 10, m->bytes_total);
	sqlite3_bind_int64(st, 11, m->chunks_done);
	sqlite3_bind_int64(st, 12, m->chunks_total);
	return step_done(st);
}

/* A device row (columns of Q_DEV_LIST / Q_DEV_GET) as a JSON object. */
static int device_row(sqlite3_stmt *st, cJSON **ret)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return -ENOMEM;
	int r = 0;
	if (r >= 0)
		r = add_str_col(o, "id", st, 0);
	if (r >= 0)
		r = add_json_col(o, "labels", st, 1);
	if (r >= 0)
		r = add_str_col(o, "arch", st, 2);
	if (r >= 0) {
		if (sqlite3_column_type(st, 3) == SQLITE_NULL)
			r = cJSON_AddNullToObject(o, "ram_mb") ? 0 : -ENOMEM;
		else
			r = add_num(o, "ram_mb", (double)sqlite3_column_int64(st, 3));
	}
	if (r >= 0)
		r = add_json_col(o, "accelerators", st, 4);
	if (r >= 0)
		r = add_json_col(o, "backends", st, 5);
	if (r >= 0)
		r = cJSON_AddBoolToObject(o, "online", sqlite3_column_int(st, 6) != 0) ? 0 : -ENOMEM;
	if (r >= 0)
		r = add_num(o, "last_seen", (double)sqlite3_column_int64(st, 7));
	if (r >= 0)
		r = add_str_col(o, "agent", st, 8);
	if (r < 0) {
		cJSON_Delete(o);
		return r;
	}
	*ret = o;
	return 0;
}

/* The models of device ID: full rows (FULL) or {"model": "current version"}. */
static int device_models(struct ctl_store *s, const char *id, bool full, cJSON **ret)
{
	sqlite3_stmt *st = q(s, Q_DEV_MODELS);
	bind_text(st, 1, id);
	cJSON *out = full ? cJSON_CreateArray() : cJSON_CreateObject();
	if (!out)
		return -ENOMEM;
	int r, rc = 0;
	while ((r = sqlite3_step(st)) == SQLITE_ROW && rc == 0) {
		if (!full) {
			rc = add_str_col(out, col_text(st, 0), st, 2);
			continue;
		}
		cJSON *m = cJSON_CreateObject();
		if (!m || !cJSON_AddItemToArray(out, m)) {
			cJSON_Delete(m);
			rc = -ENOMEM;
			break;
		}
		rc = add_str_col(m, "model", st, 0);
		if (rc >= 0)
			rc = add_str_col(m, "current", st, 1);
		if (rc >= 0)
			rc = add_str_col(m, "version", st, 2);
		if (rc >= 0)
			rc = add_json_col(m, "slots", st, 3);
		if (rc >= 0 && sqlite3_column_type(st, 4) != SQLITE_NULL) {
			cJSON *in = cJSON_AddObjectToObject(m, "install");
			rc = in ? 0 : -ENOMEM;
			if (rc >= 0)
				rc = add_str_col(in, "state", st, 4);
			if (rc >= 0)
				rc = add_str_col(in, "version", st, 5);
			if (rc >= 0)
				rc = add_str_col(in, "error", st, 6);
			static const char *const nums[] = {"bytes_done", "bytes_total", "chunks_done",
							   "chunks_total"};
			for (int i = 0; i < 4 && rc >= 0; i++)
				rc = add_num(in, nums[i], (double)sqlite3_column_int64(st, 7 + i));
		}
	}
	if (rc == 0 && r != SQLITE_DONE && r != SQLITE_ROW)
		rc = -FL_EDB;
	sqlite3_reset(st);
	if (rc < 0) {
		cJSON_Delete(out);
		return rc;
	}
	*ret = out;
	return 0;
}

static int sq_device_list(struct ctl_store *s, const struct ctl_device_filter *f, cJSON **ret)
{
	sqlite3_stmt *st = q(s, Q_DEV_LIST);
	bind_text(st, 1, f->label_key);
	bind_text(st, 2, f->label_value ? f->label_value : "");
	bind_text(st, 3, f->arch);
	bind_text(st, 4, f->version);
	sqlite3_bind_int(st, 5, f->online);
	size_t limit = f->limit && f->limit < CTL_STORE_LIST_MAX ? f->limit : CTL_STORE_LIST_MAX;
	sqlite3_bind_int64(st, 6, (sqlite3_int64)limit);
	if (f->min_ram_mb > 0)
		sqlite3_bind_int64(st, 7, f->min_ram_mb);
	bind_text(st, 8, f->accelerator);
	bind_text(st, 9, f->backend);
	bind_text(st, 10, f->install_state);
	bind_text(st, 11, f->after);

	cJSON *root = cJSON_CreateObject();
	cJSON *arr = root ? cJSON_AddArrayToObject(root, "devices") : NULL;
	if (!arr) {
		cJSON_Delete(root);
		sqlite3_reset(st);
		return -ENOMEM;
	}
	int r, rc = 0;
	cJSON *d = NULL, *versions = NULL;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		const char *id = col_text(st, 0);
		if (!d || !id || strcmp(cJSON_GetObjectItem(d, "id")->valuestring, id)) {
			d = NULL;
			if ((rc = device_row(st, &d)) < 0)
				break;
			cJSON_AddItemToArray(arr, d);
			if (!(versions = cJSON_AddObjectToObject(d, "versions"))) {
				rc = -ENOMEM;
				break;
			}
		}
		if (sqlite3_column_type(st, 9) != SQLITE_NULL &&
		    (rc = add_str_col(versions, col_text(st, 9), st, 10)) < 0)
			break;
	}
	if (rc == 0 && r != SQLITE_DONE)
		rc = -FL_EDB;
	sqlite3_reset(st);
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

static int sq_device_get(struct ctl_store *s, const char *id, size_t n_events, cJSON **ret)
{
	sqlite3_stmt *st = q(s, Q_DEV_GET);
	bind_text(st, 1, id);
	int r = sqlite3_step(st);
	if (r == SQLITE_DONE) {
		sqlite3_reset(st);
		return -ENOENT;
	}
	if (r != SQLITE_ROW) {
		sqlite3_reset(st);
		return -FL_EDB;
	}
	cJSON *dev = NULL;
	int rc = device_row(st, &dev);
	sqlite3_reset(st);
	if (rc < 0)
		return rc;
	cJSON *root = cJSON_CreateObject();
	if (!root) {
		cJSON_Delete(dev);
		return -ENOMEM;
	}
	cJSON_AddItemToObject(root, "device", dev);
	cJSON *models = NULL;
	rc = device_models(s, id, true, &models);
	if (rc >= 0)
		cJSON_AddItemToObject(root, "models", models);

	cJSON *evs = rc >= 0 ? cJSON_AddArrayToObject(root, "events") : NULL;
	if (rc >= 0 && !evs)
		rc = -ENOMEM;
	if (rc >= 0) {
		st = q(s, Q_DEV_EVENTS);
		bind_text(st, 1, id);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)n_events);
		while ((r = sqlite3_step(st)) == SQLITE_ROW) {
			cJSON *e = cJSON_Parse(col_text(st, 0));
			if (e)
				cJSON_AddItemToArray(evs, e);
		}
		if (r != SQLITE_DONE)
			rc = -FL_EDB;
		sqlite3_reset(st);
	}
	if (rc >= 0) {
		st = q(s, Q_DEV_GAPS);
		bind_text(st, 1, id);
		r = sqlite3_step(st);
		if (r == SQLITE_ROW) {
			cJSON *g = cJSON_AddObjectToObject(root, "telemetry");
			if (!g)
				rc = -ENOMEM;
			static const char *const nums[] = {"missing_ranges", "missing_seqs",
							   "dropped", "highest", "updated"};
			if (rc >= 0)
				rc = add_str_col(g, "stream", st, 0);
			for (int i = 0; i < 5 && rc >= 0; i++)
				rc = add_num(g, nums[i], (double)sqlite3_column_int64(st, 1 + i));
		} else if (r != SQLITE_DONE) {
			rc = -FL_EDB;
		}
		sqlite3_reset(st);
	}
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

/* ---------------------------------------------------------------- bundles */

/* 1 when ST (bound) finds a row whose first column equals ID, 0 when it finds
 * none, -EEXIST when another id. */
static int same_envelope(sqlite3_stmt *st, const char *id)
{
	int r = sqlite3_step(st);
	int rc;
	if (r == SQLITE_DONE)
		rc = 0;
	else if (r == SQLITE_ROW)
		rc = strcmp(col_text(st, 0), id) == 0 ? 1 : -EEXIST;
	else
		rc = -FL_EDB;
	sqlite3_reset(st);
	return rc;
}

static int sq_bundle_put(struct ctl_store *s, const struct ctl_bundle_rec *b)
{
	if (b->sequence > (uint64_t)INT64_MAX)
		return -EINVAL;
	sqlite3_stmt *st = q(s, Q_BUNDLE_GET);
	bind_text(st, 1, b->model);
	bind_text(st, 2, b->version);
	int r1 = same_envelope(st, b->envelope_id);
	if (r1 < 0)
		return r1;
	st = q(s, Q_BUNDLE_CONFLICT);
	bind_text(st, 1, b->model);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)b->sequence);
	int r2 = same_envelope(st, b->envelope_id);
	if (r2 < 0)
		return r2;
	if (r1 == 1 && r2 == 1)
		return 0;
	if (r1 || r2)
		return -EEXIST;
	st = q(s, Q_BUNDLE_PUT);
	bind_text(st, 1, b->model);
	bind_text(st, 2, b->version);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)b->sequence);
	bind_text(st, 4, b->envelope_id);
	bind_text(st, 5, b->envelope);
	bind_text(st, 6, b->files_json);
	sqlite3_bind_int(st, 7, b->verified ? 1 : 0);
	sqlite3_bind_int64(st, 8, b->pushed_at_s);
	int r = step_done(st);
	return r < 0 ? r : 1;
}

static int sq_bundle_envelope(struct ctl_store *s, const char *model, const char *version,
			      char **ret)
{
	sqlite3_stmt *st = q(s, Q_BUNDLE_ENVELOPE);
	bind_text(st, 1, model);
	bind_text(st, 2, version);
	int r = sqlite3_step(st);
	int rc;
	if (r == SQLITE_ROW) {
		char *e = strdup(col_text(st, 0));
		rc = e ? 0 : -ENOMEM;
		if (e)
			*ret = e;
	} else {
		rc = r == SQLITE_DONE ? -ENOENT : -FL_EDB;
	}
	sqlite3_reset(st);
	return rc;
}

static int sq_bundle_list(struct ctl_store *s, cJSON **ret)
{
	sqlite3_stmt *st = q(s, Q_BUNDLE_LIST);
	cJSON *root = cJSON_CreateObject();
	cJSON *arr = root ? cJSON_AddArrayToObject(root, "bundles") : NULL;
	if (!arr) {
		cJSON_Delete(root);
		return -ENOMEM;
	}
	int r, rc = 0;
	while (rc == 0 && (r = sqlite3_step(st)) == SQLITE_ROW) {
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(arr, o)) {
			cJSON_Delete(o);
			rc = -ENOMEM;
			break;
		}
		rc = add_str_col(o, "model", st, 0);
		if (rc >= 0)
			rc = add_str_col(o, "version", st, 1);
		if (rc >= 0)
			rc = add_num(o, "sequence", (double)sqlite3_column_int64(st, 2));
		if (rc >= 0)
			rc = add_str_col(o, "envelope_sha256", st, 3);
		if (rc >= 0)
			rc = add_json_col(o, "files", st, 4);
		if (rc >= 0)
			rc = cJSON_AddBoolToObject(o, "verified", sqlite3_column_int(st, 5) != 0)
				     ? 0
				     : -ENOMEM;
		if (rc >= 0)
			rc = add_num(o, "pushed_at", (double)sqlite3_column_int64(st, 6));
	}
	if (rc == 0 && r != SQLITE_DONE)
		rc = -FL_EDB;
	sqlite3_reset(st);
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

/* ---------------------------------------------------------------- telemetry */

static int sq_tele_insert(struct ctl_store *s, const struct ctl_tele_rec *t)
{
	if (t->seq > (uint64_t)INT64_MAX)
		return -EINVAL;
	sqlite3_stmt *st = q(s, Q_TELE_INSERT);
	bind_text(st, 1, t->device);
	bind_text(st, 2, t->stream);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)t->seq);
	bind_text(st, 4, t->kind);
	sqlite3_bind_int64(st, 5, t->ts);
	bind_text(st, 6, t->json);
	int r = step_done(st);
	if (r < 0)
		return r;
	return sqlite3_changes(SQ(s)->db) > 0 ? 1 : 0;
}

static int sq_gaps_put(struct ctl_store *s, const char *device, const char *stream,
		       uint64_t missing_ranges, uint64_t missing_seqs, uint64_t dropped,
		       uint64_t highest, int64_t now_s)
{
	sqlite3_stmt *st = q(s, Q_GAPS_PUT);
	bind_text(st, 1, device);
	bind_text(st, 2, stream);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)missing_ranges);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)missing_seqs);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)dropped);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)highest);
	sqlite3_bind_int64(st, 7, now_s);
	return step_done(st);
}

static int sq_gaps_get(struct ctl_store *s, const char *device, char ret_stream[17],
		       uint64_t *ret_highest)
{
	sqlite3_stmt *st = q(s, Q_GAPS_GET);
	bind_text(st, 1, device);
	int r = sqlite3_step(st);
	int rc = r == SQLITE_ROW ? 0 : r == SQLITE_DONE ? -ENOENT : -FL_EDB;
	if (rc == 0) {
		fl_strlcpy(ret_stream, col_text(st, 0), 17);
		*ret_highest = (uint64_t)sqlite3_column_int64(st, 1);
	}
	sqlite3_reset(st);
	return rc;
}

static int sq_audit(struct ctl_store *s, int64_t ts, const char *actor, const char *action,
		    const char *reason)
{
	sqlite3_stmt *st = q(s, Q_AUDIT);
	sqlite3_bind_int64(st, 1, ts);
	bind_text(st, 2, actor ? actor : "");
	bind_text(st, 3, action ? action : "");
	bind_text(st, 4, reason ? reason : "");
	return step_done(st);
}

static int count_query(struct ctl_store *s, int which, int64_t *ret)
{
	sqlite3_stmt *st = q(s, which);
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		*ret = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	return r == SQLITE_ROW ? 0 : -FL_EDB;
}

static int sq_audit_count(struct ctl_store *s, int64_t *ret)
{
	return count_query(s, Q_AUDIT_COUNT, ret);
}

static int sq_metrics(struct ctl_store *s, cJSON **ret)
{
	cJSON *root = cJSON_CreateObject();
	if (!root)
		return -ENOMEM;
	int64_t on = 0, off = 0, nb = 0, ng = 0;
	int r, rc = 0;
	sqlite3_stmt *st = q(s, Q_M_ONLINE);
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if (sqlite3_column_int(st, 0))
			on += sqlite3_column_int64(st, 1);
		else
			off += sqlite3_column_int64(st, 1);
	}
	if (r != SQLITE_DONE)
		rc = -FL_EDB;
	sqlite3_reset(st);
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
		st = q(s, Q_M_VERSIONS);
		while (rc >= 0 && (r = sqlite3_step(st)) == SQLITE_ROW) {
			cJSON *o = cJSON_CreateObject();
			if (!o || !cJSON_AddItemToArray(vers, o)) {
				cJSON_Delete(o);
				rc = -ENOMEM;
				break;
			}
			rc = add_str_col(o, "model", st, 0);
			if (rc >= 0)
				rc = add_str_col(o, "version", st, 1);
			if (rc >= 0)
				rc = add_num(o, "devices", (double)sqlite3_column_int64(st, 2));
		}
		if (rc >= 0 && r != SQLITE_DONE)
			rc = -FL_EDB;
		sqlite3_reset(st);
	}
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

/* ---------------------------------------------------------------- rollouts */

static int sq_rollout_insert(struct ctl_store *s, const char *body, int64_t now_s, int64_t *ret_id)
{
	sqlite3_stmt *st = q(s, Q_RO_INSERT);
	bind_text(st, 1, body);
	sqlite3_bind_int64(st, 2, now_s);
	int r = sqlite3_step(st);
	int64_t id = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	if (r == SQLITE_ROW)
		r = sqlite3_step(st);
	sqlite3_reset(st);
	if (r != SQLITE_DONE)
		return -FL_EDB;
	*ret_id = id;
	return 0;
}

static int sq_rollout_update(struct ctl_store *s, int64_t id, const char *body, int64_t now_s)
{
	sqlite3_stmt *st = q(s, Q_RO_UPDATE);
	sqlite3_bind_int64(st, 1, id);
	bind_text(st, 2, body);
	sqlite3_bind_int64(st, 3, now_s);
	int r = step_done(st);
	if (r < 0)
		return r;
	return sqlite3_changes(SQ(s)->db) == 1 ? 0 : -ENOENT;
}

static int sq_rollout_get(struct ctl_store *s, int64_t id, char **ret)
{
	sqlite3_stmt *st = q(s, Q_RO_GET);
	sqlite3_bind_int64(st, 1, id);
	int r = sqlite3_step(st);
	int rc;
	if (r == SQLITE_ROW) {
		char *b = strdup(col_text(st, 0));
		rc = b ? 0 : -ENOMEM;
		if (b)
			*ret = b;
	} else {
		rc = r == SQLITE_DONE ? -ENOENT : -FL_EDB;
	}
	sqlite3_reset(st);
	return rc;
}

static int sq_rollout_list(struct ctl_store *s, int64_t *ids, size_t max, size_t *ret_n)
{
	sqlite3_stmt *st = q(s, Q_RO_LIST);
	size_t n = 0;
	int r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW && n < max)
		ids[n++] = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	if (r != SQLITE_ROW && r != SQLITE_DONE)
		return -FL_EDB;
	*ret_n = n;
	return 0;
}

static int sq_rollout_mark(struct ctl_store *s, int64_t id, const char *device, int64_t sent_at,
			   bool reverted)
{
	sqlite3_stmt *st = q(s, Q_RO_MARK);
	sqlite3_bind_int64(st, 1, id);
	bind_text(st, 2, device);
	sqlite3_bind_int64(st, 3, sent_at);
	sqlite3_bind_int(st, 4, reverted ? 1 : 0);
	return step_done(st);
}

static int sq_rollout_scan(struct ctl_store *s, int64_t id, const char *model,
			   ctl_rollout_scan_fn fn, void *ud)
{
	sqlite3_stmt *st = q(s, Q_RO_SCAN);
	sqlite3_bind_int64(st, 1, id);
	bind_text(st, 2, model);
	int r, rc = 0;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		struct ctl_rollout_dev d = {
			.id = col_text(st, 0),
			.labels_json = col_text(st, 1),
			.arch = col_text(st, 2),
			.online = sqlite3_column_int(st, 3) != 0,
			.current_version = col_text(st, 4),
			.install_state = col_text(st, 5),
			.install_version = col_text(st, 6),
			.sent = sqlite3_column_type(st, 7) != SQLITE_NULL,
			.sent_at = sqlite3_column_int64(st, 7),
			.reverted = sqlite3_column_int(st, 8) != 0,
			.ram_mb = sqlite3_column_type(st, 9) == SQLITE_NULL
					  ? -1
					  : sqlite3_column_int64(st, 9),
			.accelerators_json = col_text(st, 10),
			.backends_json = col_text(st, 11),
		};
		if (!d.id)
			continue;
		if ((rc = fn(ud, &d)) < 0)
			break;
	}
	if (rc >= 0 && r != SQLITE_DONE)
		rc = -FL_EDB;
	sqlite3_reset(st);
	return rc;
}

/* ---------------------------------------------------------------- releases */

static int sq_release_insert(struct ctl_store *s, const char *model, const char *version,
			     const char *body, int64_t now_s, int64_t *ret_id)
{
	sqlite3_stmt *st = q(s, Q_REL_INSERT);
	bind_text(st, 1, model);
	bind_text(st, 2, version);
	bind_text(st, 3, body);
	sqlite3_bind_int64(st, 4, now_s);
	int r = sqlite3_step(st);
	bool inserted = r == SQLITE_ROW;
	int64_t id = inserted ? sqlite3_column_int64(st, 0) : 0;
	if (inserted)
		r = sqlite3_step(st);
	sqlite3_reset(st);
	if (r != SQLITE_DONE)
		return -FL_EDB;
	if (!inserted)
		return -EEXIST;
	*ret_id = id;
	return 0;
}

static int sq_release_get(struct ctl_store *s, int64_t id, const char *model,
			  const char *version, int64_t *ret_id, char **ret_body)
{
	sqlite3_stmt *st;
	if (id > 0) {
		st = q(s, Q_REL_GET_ID);
		sqlite3_bind_int64(st, 1, id);
	} else {
		st = q(s, Q_REL_GET_NAME);
		bind_text(st, 1, model);
		bind_text(st, 2, version);
	}
	int r = sqlite3_step(st);
	int rc;
	if (r == SQLITE_ROW) {
		char *b = strdup(col_text(st, 1));
		rc = b ? 0 : -ENOMEM;
		if (b) {
			if (ret_id)
				*ret_id = sqlite3_column_int64(st, 0);
			*ret_body = b;
		}
	} else {
		rc = r == SQLITE_DONE ? -ENOENT : -FL_EDB;
	}
	sqlite3_reset(st);
	return rc;
}

static int sq_release_list(struct ctl_store *s, const char *model, cJSON **ret)
{
	sqlite3_stmt *st = q(s, Q_REL_LIST);
	bind_text(st, 1, model);
	cJSON *root = cJSON_CreateObject();
	cJSON *arr = root ? cJSON_AddArrayToObject(root, "releases") : NULL;
	if (!arr) {
		cJSON_Delete(root);
		return -ENOMEM;
	}
	int r, rc = 0;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		cJSON *o = cJSON_Parse(col_text(st, 1));
		if (!o) {
			rc = -FL_EDB; /* we wrote it */
			break;
		}
		cJSON_DeleteItemFromObjectCaseSensitive(o, "id");
		if (!cJSON_AddNumberToObject(o, "id", (double)sqlite3_column_int64(st, 0)) ||
		    !cJSON_AddItemToArray(arr, o)) {
			cJSON_Delete(o);
			rc = -ENOMEM;
			break;
		}
	}
	if (rc == 0 && r != SQLITE_DONE)
		rc = -FL_EDB;
	sqlite3_reset(st);
	if (rc < 0) {
		cJSON_Delete(root);
		return rc;
	}
	*ret = root;
	return 0;
}

/* ---------------------------------------------------------------- health */

/* A latency histogram as a blob: its non-empty buckets only, each as the
 * bucket index (1 byte) and the count (8 bytes, little endian); a typical
 * histogram has a handful of buckets, so ~50-100 bytes instead of 768. */
#define HIST_ENTRY_BYTES 9
#define HIST_BLOB_MAX (TELE_HIST_BUCKETS * HIST_ENTRY_BYTES)

static size_t hist_put(uint8_t *blob, const uint64_t *counts)
{
	size_t n = 0;
	for (size_t i = 0; i < TELE_HIST_BUCKETS; i++) {
		if (!counts[i])
			continue;
		blob[n++] = (uint8_t)i;
		for (size_t k = 0; k < 8; k++)
			blob[n++] = (uint8_t)(counts[i] >> (8 * k));
	}
	return n;
}

/* Add the blob's counts to COUNTS; a malformed blob adds nothing (-EINVAL). */
static int hist_add_blob(const uint8_t *blob, size_t len, uint64_t *counts)
{
	if (len % HIST_ENTRY_BYTES || len > HIST_BLOB_MAX)
		return -EINVAL;
	for (size_t e = 0; e < len; e += HIST_ENTRY_BYTES)
		if (blob[e] >= TELE_HIST_BUCKETS)
			return -EINVAL;
	for (size_t e = 0; e < len; e += HIST_ENTRY_BYTES) {
		uint64_t v = 0;
		for (size_t k = 0; k < 8; k++)
			v |= (uint64_t)blob[e + 1 + k] << (8 * k);
		counts[blob[e]] += v;
	}
	return 0;
}

/* SQL fl_hist_add(A, B): the bucket-wise sum of two histogram blobs (NULL or
 * a malformed blob counts as empty). */
static void sql_hist_add(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	uint64_t sum[TELE_HIST_BUCKETS] = {0};
	for (int k = 0; k < argc && k < 2; k++) {
		if (sqlite3_value_type(argv[k]) != SQLITE_BLOB)
			continue;
		uint64_t one[TELE_HIST_BUCKETS] = {0};
		if (hist_add_blob(sqlite3_value_blob(argv[k]), (size_t)sqlite3_value_bytes(argv[k]),
				  one) == 0)
			for (size_t i = 0; i < TELE_HIST_BUCKETS; i++)
				sum[i] += one[i];
	}
	uint8_t *out = sqlite3_malloc(HIST_BLOB_MAX);
	if (!out) {
		sqlite3_result_error_nomem(ctx);
		return;
	}
	size_t n = hist_put(out, sum);
	sqlite3_result_blob(ctx, out, (int)n, sqlite3_free);
}

static int sq_health_add(struct ctl_store *s, const struct ctl_health *h)
{
	uint8_t blob[HIST_BLOB_MAX];
	size_t blob_len = hist_put(blob, h->latency_us.counts);
	sqlite3_stmt *st = q(s, Q_HEALTH_ADD);
	bind_text(st, 1, h->device);
	bind_text(st, 2, h->model);
	bind_text(st, 3, h->version);
	sqlite3_bind_int64(st, 4, h->first_s);
	sqlite3_bind_int64(st, 5, h->last_s);
	const uint64_t nums[] = {h->records, h->requests, h->errors,   h->crashes,
				 h->restarts, h->outputs, h->empty, h->refusals};
	for (size_t i = 0; i < FL_ARRAY_SIZE(nums); i++) {
		if (nums[i] > (uint64_t)INT64_MAX)
			return -EINVAL;
		sqlite3_bind_int64(st, 6 + (int)i, (sqlite3_int64)nums[i]);
	}
	sqlite3_bind_double(st, 14, h->psi_sum);
	sqlite3_bind_int64(st, 15, (sqlite3_int64)h->psi_n);
	sqlite3_bind_int64(st, 16, (sqlite3_int64)h->latency_us.count);
	sqlite3_bind_double(st, 17, h->latency_us.sum);
	sqlite3_bind_double(st, 18, h->latency_us.count ? h->latency_us.min : 0);
	sqlite3_bind_double(st, 19, h->latency_us.count ? h->latency_us.max : 0);
	sqlite3_bind_blob(st, 20, blob, (int)blob_len, SQLITE_STATIC);
	return step_done(st);
}

static int sq_health_scan(struct ctl_store *s, int64_t id, const char *model,
			  ctl_health_scan_fn fn, void *ud)
{
	sqlite3_stmt *st = q(s, Q_HEALTH_SCAN);
	sqlite3_bind_int64(st, 1, id);
	bind_text(st, 2, model);
	int r, rc = 0;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		struct ctl_health h = {
			.device = col_text(st, 0),
			.model = model,
			.version = col_text(st, 1),
			.first_s = sqlite3_column_int64(st, 2),
			.last_s = sqlite3_column_int64(st, 3),
			.records = (uint64_t)sqlite3_column_int64(st, 4),
			.requests = (uint64_t)sqlite3_column_int64(st, 5),
			.errors = (uint64_t)sqlite3_column_int64(st, 6),
			.crashes = (uint64_t)sqlite3_column_int64(st, 7),
			.restarts = (uint64_t)sqlite3_column_int64(st, 8),
			.outputs = (uint64_t)sqlite3_column_int64(st, 9),
			.empty = (uint64_t)sqlite3_column_int64(st, 10),
			.refusals = (uint64_t)sqlite3_column_int64(st, 11),
			.psi_sum = sqlite3_column_double(st, 12),
			.psi_n = (uint64_t)sqlite3_column_int64(st, 13),
		};
		h.latency_us.count = (uint64_t)sqlite3_column_int64(st, 14);
		h.latency_us.sum = sqlite3_column_double(st, 15);
		h.latency_us.min = sqlite3_column_double(st, 16);
		h.latency_us.max = sqlite3_column_double(st, 17);
		if (sqlite3_column_type(st, 18) == SQLITE_BLOB)
			hist_add_blob(sqlite3_column_blob(st, 18),
				      (size_t)sqlite3_column_bytes(st, 18), h.latency_us.counts);
		if (!h.device || !h.version)
			continue;
		if ((rc = fn(ud, &h)) < 0)
			break;
	}
	if (rc >= 0 && r != SQLITE_DONE)
		rc = -FL_EDB;
	sqlite3_reset(st);
	return rc;
}

static int sq_engine_leader(struct ctl_store *s)
{
	(void)s;
	return 1;
}

static const struct ctl_store_ops2 sq_ops2; /* at the end of the file */
static int sq_tele_covered(struct ctl_store *s, const char *device, const char *stream,
			   uint64_t lo, uint64_t hi, uint64_t (*out)[2], size_t max,
			   size_t *ret_n); /* at the end of the file */

static const struct ctl_store_ops sq_ops = {
	.close = sq_close,
	.begin = sq_begin,
	.commit = sq_commit,
	.rollback = sq_rollback,
	.schema_version = sq_schema_version,
	.device_upsert = sq_device_upsert,
	.device_set_offline = sq_device_set_offline,
	.device_models_clear = sq_device_models_clear,
	.device_model_put = sq_device_model_put,
	.device_list = sq_device_list,
	.device_get = sq_device_get,
	.bundle_put = sq_bundle_put,
	.bundle_list = sq_bundle_list,
	.bundle_envelope = sq_bundle_envelope,
	.tele_insert = sq_tele_insert,
	.gaps_put = sq_gaps_put,
	.gaps_get = sq_gaps_get,
	.audit = sq_audit,
	.audit_count = sq_audit_count,
	.metrics = sq_metrics,
	.rollout_insert = sq_rollout_insert,
	.rollout_update = sq_rollout_update,
	.rollout_get = sq_rollout_get,
	.rollout_list = sq_rollout_list,
	.rollout_mark = sq_rollout_mark,
	.rollout_scan = sq_rollout_scan,
	.release_insert = sq_release_insert,
	.release_get = sq_release_get,
	.release_list = sq_release_list,
	.health_add = sq_health_add,
	.health_scan = sq_health_scan,
	.engine_leader = sq_engine_leader,
	.tele_covered = sq_tele_covered,
};

/* ---------------------------------------------------------------- open */

static int migrate(sqlite3 *db)
{
	int r = exec_sql(db, "CREATE TABLE IF NOT EXISTS schema_migrations("
			     " version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)");
	if (r < 0)
		return r;
	int have = 0;
	if ((r = user_version(db, &have)) < 0)
		return r;
	int known = (int)FL_ARRAY_SIZE(migrations);
	if (have > known)
		return -FL_EUNSUPPORTED;
	for (int v = have + 1; v <= known; v++) {
		if ((r = exec_sql(db, "BEGIN IMMEDIATE")) < 0)
			return r;
		r = exec_sql(db, migrations[v - 1]);
		if (r >= 0) {
			_cleanup_free_ char *rec = fl_asprintf(
				"INSERT INTO schema_migrations(version, applied_at) VALUES(%d, %lld)",
				v, (long long)fl_now_s());
			r = rec ? exec_sql(db, rec) : -ENOMEM;
		}
		if (r >= 0)
			r = exec_sql(db, "COMMIT");
		if (r < 0) {
			exec_sql(db, "ROLLBACK");
			return r;
		}
	}
	return 0;
}

int ctl_store_open_sqlite(const char *path, struct ctl_store **ret)
{
	if (!path || !ret)
		return -EINVAL;
	struct sq_store *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->base.ops = &sq_ops;
	x->base.ops2 = &sq_ops2;
	int r = -FL_EDB;
	if (sqlite3_open_v2(path, &x->db,
			    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			    NULL) != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(x->db, 5000);
	/* WAL + NORMAL: a commit survives a crash of the controller; a power cut
	 * may lose the last transactions (devices resend unacked telemetry, and
	 * state is retained by the broker). */
	if ((r = exec_sql(x->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
				 " PRAGMA foreign_keys=ON")) < 0)
		goto fail;
	if (sqlite3_create_function(x->db, "fl_hist_add", 2,
				    SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY, NULL,
				    sql_hist_add, NULL, NULL) != SQLITE_OK) {
		r = -FL_EDB;
		goto fail;
	}
	if ((r = migrate(x->db)) < 0)
		goto fail;
	for (int i = 0; i < Q_COUNT; i++) {
		if (sqlite3_prepare_v3(x->db, queries[i], -1, SQLITE_PREPARE_PERSISTENT, &x->st[i],
				       NULL) != SQLITE_OK) {
			r = -FL_EDB;
			goto fail;
		}
	}
	*ret = &x->base;
	return 0;
fail:
	sq_close(&x->base);
	return r;
}

void ctl_store_close(struct ctl_store *s)
{
	if (s)
		s->ops->close(s);
}

/* ---------------------------------------------------------------- ops2 */

/* Prepare SQL on S's connection (statements of ops2 are rare: one per
 * page or dashboard refresh). */
static int sq_prepare(struct ctl_store *s, const char *sql, sqlite3_stmt **ret)
{
	sqlite3 *db = ((struct sq_store *)s)->db;
	if (sqlite3_prepare_v2(db, sql, -1, ret, NULL) != SQLITE_OK) {
		fl_warn("store(sqlite): %s", sqlite3_errmsg(db));
		return -FL_EDB;
	}
	return 0;
}

/* One pass over the devices table in id order from the cursor on (an
 * index range, no sort), each device's models as one JSON object built by
 * SQLite from device_models' primary key. */
static int sq_device_scan(struct ctl_store *s, const struct ctl_device_filter *f,
			  ctl_device_row_fn fn, void *ud)
{
	sqlite3_stmt *st;
	int r = sq_prepare(
		s,
		"SELECT d.id, d.labels, d.arch, d.ram_mb, d.accelerators, d.backends, d.online,"
		" d.last_seen, d.agent_version,"
		" (SELECT json_group_object(m.model, m.current_version) FROM device_models m"
		"  WHERE m.device = d.id)"
		" FROM devices d WHERE d.id > ?11"
		" AND (?1 IS NULL OR EXISTS (SELECT 1 FROM json_each(d.labels) j"
		"      WHERE j.key = ?1 AND j.value = ?2))"
		" AND (?3 IS NULL OR d.arch = ?3)"
		" AND (?4 IS NULL OR EXISTS (SELECT 1 FROM device_models m"
		"      WHERE m.device = d.id AND m.current_version = ?4))"
		" AND (?5 < 0 OR d.online = ?5)"
		" AND (?7 IS NULL OR d.ram_mb >= ?7)"
		" AND (?8 IS NULL OR EXISTS (SELECT 1 FROM json_each(d.accelerators) j"
		"      WHERE j.value = ?8))"
		" AND (?9 IS NULL OR EXISTS (SELECT 1 FROM json_each(d.backends) j"
		"      WHERE j.value = ?9))"
		" AND (?10 IS NULL OR EXISTS (SELECT 1 FROM device_models m"
		"      WHERE m.device = d.id AND m.install_state = ?10))"
		" ORDER BY d.id LIMIT ?6",
		&st);
	if (r < 0)
		return r;
	bind_text(st, 1, f->label_key);
	bind_text(st, 2, f->label_value ? f->label_value : "");
	bind_text(st, 3, f->arch);
	bind_text(st, 4, f->version);
	sqlite3_bind_int(st, 5, f->online);
	/* one more than the largest page: the caller learns whether more follow */
	size_t limit = f->limit && f->limit <= CTL_STORE_LIST_MAX ? f->limit : CTL_STORE_LIST_MAX + 1;
	sqlite3_bind_int64(st, 6, (sqlite3_int64)limit);
	if (f->min_ram_mb > 0)
		sqlite3_bind_int64(st, 7, f->min_ram_mb);
	bind_text(st, 8, f->accelerator);
	bind_text(st, 9, f->backend);
	bind_text(st, 10, f->install_state);
	bind_text(st, 11, f->after ? f->after : ""); /* ids are never empty */
	int rc = 0;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		struct ctl_device_row d = {
			.id = col_text(st, 0),
			.labels_json = col_text(st, 1),
			.arch = col_text(st, 2),
			.has_ram = sqlite3_column_type(st, 3) != SQLITE_NULL,
			.ram_mb = sqlite3_column_int64(st, 3),
			.accelerators_json = col_text(st, 4),
			.backends_json = col_text(st, 5),
			.online = sqlite3_column_int(st, 6) != 0,
			.last_seen_s = sqlite3_column_int64(st, 7),
			.agent_version = col_text(st, 8),
			.versions_json = col_text(st, 9),
		};
		if (!d.id)
			continue;
		if ((rc = fn(ud, &d)) < 0)
			break;
	}
	if (rc >= 0 && r != SQLITE_DONE)
		rc = -FL_EDB;
	sqlite3_finalize(st);
	return rc;
}

static int sq_fleet_counts(struct ctl_store *s, ctl_fleet_count_fn fn, void *ud)
{
	sqlite3_stmt *st;
	int r = sq_prepare(s,
			   "SELECT model, current_version, NULL, COUNT(*) FROM device_models"
			   " WHERE current_version IS NOT NULL GROUP BY model, current_version"
			   " UNION ALL"
			   " SELECT model, install_version, install_state, COUNT(*) FROM device_models"
			   " WHERE install_version IS NOT NULL AND install_state IS NOT NULL"
			   " AND install_state <> 'IDLE'"
			   " GROUP BY model, install_version, install_state",
			   &st);
	if (r < 0)
		return r;
	int rc = 0;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		const char *m = col_text(st, 0), *v = col_text(st, 1);
		if (!m || !v)
			continue;
		if ((rc = fn(ud, m, v, col_text(st, 2), sqlite3_column_int64(st, 3))) < 0)
			break;
	}
	if (rc >= 0 && r != SQLITE_DONE)
		rc = -FL_EDB;
	sqlite3_finalize(st);
	return rc;
}

static int sq_fleet_unhealthy(struct ctl_store *s, size_t max, ctl_fleet_unhealthy_fn fn,
			      void *ud)
{
	sqlite3_stmt *st;
	int r = sq_prepare(s,
			   "SELECT device, model, install_state FROM device_models"
			   " WHERE install_version IS NOT NULL AND install_state IS NOT NULL"
			   " AND install_state NOT IN ('IDLE', 'COMMITTED')"
			   " ORDER BY device, model LIMIT ?1",
			   &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)max);
	int rc = 0;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		const char *d = col_text(st, 0), *m = col_text(st, 1), *is = col_text(st, 2);
		if (!d || !m || !is)
			continue;
		if ((rc = fn(ud, d, m, is)) < 0)
			break;
	}
	if (rc >= 0 && r != SQLITE_DONE)
		rc = -FL_EDB;
	sqlite3_finalize(st);
	return rc;
}

static const struct ctl_store_ops2 sq_ops2 = {
	.device_scan = sq_device_scan,
	.fleet_counts = sq_fleet_counts,
	.fleet_unhealthy = sq_fleet_unhealthy,
};

/* ---------------------------------------------------------------- gaps */

/* tele_covered: runs of stored seqs (gaps and islands: seq minus its rank
 * is constant along a run) and the ranges of stored drop reports. */
static int sq_tele_covered(struct ctl_store *s, const char *device, const char *stream,
			   uint64_t lo, uint64_t hi, uint64_t (*out)[2], size_t max,
			   size_t *ret_n)
{
	*ret_n = 0;
	if (lo > (uint64_t)INT64_MAX || hi > (uint64_t)INT64_MAX || max > INT32_MAX)
		return -EINVAL;
	sqlite3_stmt *st;
	int r = sq_prepare(s,
			   "SELECT MIN(seq), MAX(seq) FROM (SELECT seq, seq - ROW_NUMBER()"
			   " OVER (ORDER BY seq) AS g FROM telemetry WHERE device = ?1"
			   " AND stream = ?2 AND seq BETWEEN ?3 AND ?4) GROUP BY g"
			   " UNION ALL"
			   " SELECT json_extract(r.value, '$[0]'), json_extract(r.value, '$[1]')"
			   " FROM telemetry, json_each(telemetry.body, '$.ranges') r"
			   " WHERE device = ?1 AND stream = ?2 AND kind = 'dropped' AND seq > ?3"
			   " ORDER BY 1 LIMIT ?5",
			   &st);
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, stream, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)lo);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)hi);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)max);
	size_t n = 0;
	while ((r = sqlite3_step(st)) == SQLITE_ROW && n < max) {
		sqlite3_int64 a = sqlite3_column_int64(st, 0), b = sqlite3_column_int64(st, 1);
		if (a <= 0 || b < a)
			continue;
		out[n][0] = (uint64_t)a;
		out[n][1] = (uint64_t)b;
		n++;
	}
	int rc = r == SQLITE_DONE || r == SQLITE_ROW ? 0 : -FL_EDB;
	sqlite3_finalize(st);
	*ret_n = n;
	return rc;
}
