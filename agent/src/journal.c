/* The one agent file that touches SQLite. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "journal.h"
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

struct journal {
	sqlite3 *db;
};

static const char *const state_names[] = {
	[ST_IDLE] = "IDLE",           [ST_FETCHING] = "FETCHING", [ST_STAGED] = "STAGED",
	[ST_TESTING] = "TESTING",     [ST_SWITCHING] = "SWITCHING", [ST_TRIAL] = "TRIAL",
	[ST_COMMITTED] = "COMMITTED", [ST_REJECTED] = "REJECTED", [ST_REVERTING] = "REVERTING",
	[ST_ROLLED_BACK] = "ROLLED_BACK",
};

const char *inst_state_name(enum inst_state s)
{
	return (unsigned)s < FL_ARRAY_SIZE(state_names) ? state_names[s] : "UNKNOWN";
}

bool inst_state_terminal(enum inst_state s)
{
	return s == ST_IDLE || s == ST_COMMITTED || s == ST_REJECTED || s == ST_ROLLED_BACK;
}

static const char schema[] =
	"PRAGMA journal_mode=WAL;"
	"CREATE TABLE IF NOT EXISTS models("
	"  name TEXT PRIMARY KEY, highest_seq INTEGER NOT NULL DEFAULT 0,"
	"  committed_slot TEXT NOT NULL DEFAULT '');"
	"CREATE TABLE IF NOT EXISTS installs("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, version TEXT NOT NULL,"
	"  sequence INTEGER NOT NULL, state INTEGER NOT NULL, from_slot TEXT NOT NULL,"
	"  to_slot TEXT NOT NULL, source TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',"
	"  trial_boots INTEGER NOT NULL DEFAULT 0, started INTEGER NOT NULL,"
	"  updated INTEGER NOT NULL, trial_start INTEGER NOT NULL DEFAULT 0);"
	"CREATE INDEX IF NOT EXISTS installs_model ON installs(model, id);"
	"CREATE TABLE IF NOT EXISTS slots("
	"  model TEXT NOT NULL, slot TEXT NOT NULL, status INTEGER NOT NULL,"
	"  version TEXT NOT NULL DEFAULT '', sequence INTEGER NOT NULL DEFAULT 0,"
	"  envelope BLOB, PRIMARY KEY(model, slot));"
	"CREATE TABLE IF NOT EXISTS spool(key TEXT PRIMARY KEY, attempts INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS events("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, model TEXT NOT NULL,"
	"  kind TEXT NOT NULL, detail TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS cmds("
	"  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE);";

static int db_err(struct journal *j, const char *what)
{
	fl_err("journal: %s: %s", what, sqlite3_errmsg(j->db));
	return -FL_EDB;
}

void journal_close(struct journal *j)
{
	if (!j)
		return;
	sqlite3_close(j->db);
	free(j);
}

int journal_open(const char *path, struct journal **ret)
{
	struct journal *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	if (sqlite3_open_v2(path, &j->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
				  SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		fl_err("journal: open %s: %s", path, j->db ? sqlite3_errmsg(j->db) : "out of memory");
		journal_close(j);
		return -FL_EDB;
	}
	sqlite3_busy_timeout(j->db, 10000);
	/* synchronous=FULL: every commit is fsynced before it returns, so a state
	 * written before an action is on disk before the action starts. */
	char *msg = NULL;
	if (sqlite3_exec(j->db, schema, NULL, NULL, &msg) != SQLITE_OK ||
	    sqlite3_exec(j->db, "PRAGMA synchronous=FULL;", NULL, NULL, &msg) != SQLITE_OK) {
		fl_err("journal: schema: %s", msg ? msg : "?");
		sqlite3_free(msg);
		journal_close(j);
		return -FL_EDB;
	}
	*ret = j;
	return 0;
}

static int exec(struct journal *j, const char *sql)
{
	return sqlite3_exec(j->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : db_err(j, sql);
}

static void bind_slot(sqlite3_stmt *st, int i, char slot)
{
	const char s[2] = {slot, '\0'};
	sqlite3_bind_text(st, i, s, slot ? 1 : 0, SQLITE_TRANSIENT);
}

static char col_slot(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return t && (t[0] == 'a' || t[0] == 'b') ? (char)t[0] : 0;
}

static void col_text(sqlite3_stmt *st, int i, char *out, size_t len)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	fl_strlcpy(out, t ? (const char *)t : "", len);
}

/* Prepare, run one step expecting DONE, finalize. */
static int step_done(struct journal *j, sqlite3_stmt *st, const char *what)
{
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : db_err(j, what);
}

int journal_install_begin(struct journal *j, struct install_rec *rec)
{
	int64_t now = fl_now_s();
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db,
			       "INSERT INTO installs(model,version,sequence,state,from_slot,to_slot,"
			       "source,started,updated,error) VALUES(?,?,?,?,?,?,?,?,?,?)",
			       -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare insert");
	if (rec->state != ST_FETCHING && rec->state != ST_REJECTED && rec->state != ST_REVERTING) {
		sqlite3_finalize(st);
		return -EINVAL;
	}
	sqlite3_bind_text(st, 1, rec->model, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, rec->version, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)rec->sequence);
	sqlite3_bind_int(st, 4, rec->state);
	bind_slot(st, 5, rec->from_slot);
	bind_slot(st, 6, rec->to_slot);
	sqlite3_bind_text(st, 7, rec->source, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 10, rec->error, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 8, now);
	sqlite3_bind_int64(st, 9, now);
	int r = step_done(j, st, "insert install");
	if (r < 0)
		return r;
	rec->id = sqlite3_last_insert_rowid(j->db);
	rec->started_s = rec->updated_s = now;
	return FL_FAILPOINT("journal.install.begun");
}

int journal_install_set(struct journal *j, int64_t id, enum inst_state state, const char *error)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db,
			       "UPDATE installs SET state=?, error=COALESCE(?,error), updated=?,"
			       " trial_start=CASE WHEN ?=? THEN ? ELSE trial_start END WHERE id=?",
			       -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare update");
	int64_t now = fl_now_s();
	sqlite3_bind_int(st, 1, state);
	if (error)
		sqlite3_bind_text(st, 2, error, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 2);
	sqlite3_bind_int64(st, 3, now);
	sqlite3_bind_int(st, 4, state);
	sqlite3_bind_int(st, 5, ST_TRIAL);
	sqlite3_bind_int64(st, 6, now);
	sqlite3_bind_int64(st, 7, id);
	int r = step_done(j, st, "update install");
	if (r < 0)
		return r;
	char fp[64];
	snprintf(fp, sizeof(fp), "journal.state.%s", inst_state_name(state));
	return FL_FAILPOINT(fp);
}

int journal_install_trial_boot(struct journal *j, int64_t id, int *ret_boots)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db,
			       "UPDATE installs SET trial_boots=trial_boots+1 WHERE id=? "
			       "RETURNING trial_boots",
			       -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare trial boot");
	sqlite3_bind_int64(st, 1, id);
	int rc = sqlite3_step(st);
	int boots = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (boots < 0 || rc != SQLITE_DONE)
		return db_err(j, "trial boot");
	*ret_boots = boots;
	return 0;
}

#define INSTALL_COLS \
	"id,model,version,sequence,state,from_slot,to_slot,source,error,trial_boots,started," \
	"updated,trial_start"

static void read_install(sqlite3_stmt *st, struct install_rec *r)
{
	memset(r, 0, sizeof(*r));
	r->id = sqlite3_column_int64(st, 0);
	col_text(st, 1, r->model, sizeof(r->model));
	col_text(st, 2, r->version, sizeof(r->version));
	r->sequence = (uint64_t)sqlite3_column_int64(st, 3);
	r->state = (enum inst_state)sqlite3_column_int(st, 4);
	r->from_slot = col_slot(st, 5);
	r->to_slot = col_slot(st, 6);
	col_text(st, 7, r->source, sizeof(r->source));
	col_text(st, 8, r->error, sizeof(r->error));
	r->trial_boots = sqlite3_column_int(st, 9);
	r->started_s = sqlite3_column_int64(st, 10);
	r->updated_s = sqlite3_column_int64(st, 11);
	r->trial_start_s = sqlite3_column_int64(st, 12);
}

static int query_install(struct journal *j, const char *sql, const char *model,
			 struct install_rec *ret)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db, sql, -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare select install");
	sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	int found = 0;
	if (rc == SQLITE_ROW) {
		read_install(st, ret);
		found = 1;
	} else if (rc != SQLITE_DONE) {
		sqlite3_finalize(st);
		return db_err(j, "select install");
	}
	sqlite3_finalize(st);
	return found;
}

int journal_install_pending(struct journal *j, const char *model, struct install_rec *ret)
{
	return query_install(j,
			     "SELECT " INSTALL_COLS " FROM installs WHERE model=? AND state NOT IN "
			     "(0,6,7,9) ORDER BY id DESC LIMIT 1",
			     model, ret);
}

int journal_install_last(struct journal *j, const char *model, struct install_rec *ret)
{
	return query_install(j,
			     "SELECT " INSTALL_COLS " FROM installs WHERE model=? ORDER BY id DESC LIMIT 1",
			     model, ret);
}

/* Run SQL (one text column, no parameters) and collect the values first:
 * callers then call back into the journal, which writes. Caller frees. */
static int collect_names(struct journal *j, const char *sql, char (**ret)[J_MODEL_MAX],
			 size_t *ret_n)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db, sql, -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare names");
	char (*names)[J_MODEL_MAX] = NULL;
	size_t n = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		void *nn = realloc(names, (n + 1) * sizeof(*names));
		if (!nn) {
			free(names);
			sqlite3_finalize(st);
			return -ENOMEM;
		}
		names = nn;
		col_text(st, 0, names[n++], J_MODEL_MAX);
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		free(names);
		return db_err(j, "names");
	}
	*ret = names;
	*ret_n = n;
	return 0;
}

int journal_pending_models(struct journal *j, int (*cb)(void *ud, const char *model), void *ud)
{
	char (*names)[J_MODEL_MAX] = NULL;
	size_t n = 0;
	int r = collect_names(j,
			      "SELECT DISTINCT model FROM installs WHERE state NOT IN (0,6,7,9)"
			      " ORDER BY model",
			      &names, &n);
	for (size_t i = 0; i < n && r == 0; i++)
		r = cb(ud, names[i]);
	free(names);
	return r;
}

static int model_upsert(struct journal *j, const char *model, uint64_t seq, char slot)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db,
			       "INSERT INTO models(name,highest_seq,committed_slot) VALUES(?,?,?) "
			       "ON CONFLICT(name) DO UPDATE SET highest_seq=MAX(highest_seq,"
			       "excluded.highest_seq), committed_slot=excluded.committed_slot",
			       -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare model");
	sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
	bind_slot(st, 3, slot);
	return step_done(j, st, "upsert model");
}

static int set_state_nofp(struct journal *j, int64_t id, enum inst_state state, const char *error)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db,
			       "UPDATE installs SET state=?, error=COALESCE(?,error), updated=? "
			       "WHERE id=?",
			       -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare update");
	sqlite3_bind_int(st, 1, state);
	if (error)
		sqlite3_bind_text(st, 2, error, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 2);
	sqlite3_bind_int64(st, 3, fl_now_s());
	sqlite3_bind_int64(st, 4, id);
	return step_done(j, st, "update install");
}

static int in_txn(struct journal *j, int r)
{
	if (r < 0) {
		exec(j, "ROLLBACK");
		return r;
	}
	return exec(j, "COMMIT");
}

int journal_install_commit(struct journal *j, const struct install_rec *rec)
{
	int r = exec(j, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	r = set_state_nofp(j, rec->id, ST_COMMITTED, NULL);
	if (r == 0)
		r = model_upsert(j, rec->model, rec->sequence, rec->to_slot);
	r = in_txn(j, r);
	return r < 0 ? r : FL_FAILPOINT("journal.state.COMMITTED");
}

int journal_install_rolled_back(struct journal *j, int64_t id, const char *model, char slot,
				const char *reason)
{
	int r = exec(j, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	r = set_state_nofp(j, id, ST_ROLLED_BACK, reason);
	if (r == 0)
		r = model_upsert(j, model, 0, slot);
	r = in_txn(j, r);
	return r < 0 ? r : FL_FAILPOINT("journal.state.ROLLED_BACK");
}

int journal_slot_set(struct journal *j, const char *model, char slot, enum slot_status status,
		     const char *version, uint64_t sequence, const char *envelope, size_t env_len)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db,
			       "INSERT OR REPLACE INTO slots(model,slot,status,version,sequence,"
			       "envelope) VALUES(?,?,?,?,?,?)",
			       -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare slot");
	sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
	bind_slot(st, 2, slot);
	sqlite3_bind_int(st, 3, status);
	sqlite3_bind_text(st, 4, version ? version : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)sequence);
	if (envelope)
		sqlite3_bind_blob(st, 6, envelope, (int)env_len, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 6);
	int r = step_done(j, st, "set slot");
	if (r < 0)
		return r;
	char fp[64];
	snprintf(fp, sizeof(fp), "journal.slot.%s",
		 status == SLOT_READY ? "ready" : status == SLOT_STAGING ? "staging" : "empty");
	return FL_FAILPOINT(fp);
}

int journal_slot_get(struct journal *j, const char *model, char slot, struct slot_rec *ret)
{
	memset(ret, 0, sizeof(*ret));
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db,
			       "SELECT status,version,sequence,envelope FROM slots WHERE model=? "
			       "AND slot=?",
			       -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare slot get");
	sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
	bind_slot(st, 2, slot);
	int rc = sqlite3_step(st);
	int r = 0;
	if (rc == SQLITE_ROW) {
		ret->status = (enum slot_status)sqlite3_column_int(st, 0);
		col_text(st, 1, ret->version, sizeof(ret->version));
		ret->sequence = (uint64_t)sqlite3_column_int64(st, 2);
		int n = sqlite3_column_bytes(st, 3);
		const void *b = sqlite3_column_blob(st, 3);
		if (b && n > 0) {
			ret->envelope = malloc((size_t)n + 1);
			if (!ret->envelope)
				r = -ENOMEM;
			else {
				memcpy(ret->envelope, b, (size_t)n);
				ret->envelope[n] = '\0';
				ret->envelope_len = (size_t)n;
			}
		}
	} else if (rc != SQLITE_DONE) {
		r = db_err(j, "slot get");
	}
	sqlite3_finalize(st);
	return r;
}

int journal_model_get(struct journal *j, const char *model, struct model_rec *ret)
{
	memset(ret, 0, sizeof(*ret));
	fl_strlcpy(ret->name, model, sizeof(ret->name));
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db,
			       "SELECT highest_seq, committed_slot FROM models WHERE name=?", -1, &st,
			       NULL) != SQLITE_OK)
		return db_err(j, "prepare model get");
	sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		ret->highest_sequence = (uint64_t)sqlite3_column_int64(st, 0);
		ret->committed_slot = col_slot(st, 1);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_err(j, "model get");
}

int journal_models(struct journal *j, int (*cb)(void *ud, const struct model_rec *m), void *ud)
{
	char (*names)[J_MODEL_MAX] = NULL;
	size_t n = 0;
	int r = collect_names(j,
			      "SELECT name FROM (SELECT name FROM models UNION "
			      "SELECT model AS name FROM installs) ORDER BY name",
			      &names, &n);
	for (size_t i = 0; i < n && r == 0; i++) {
		struct model_rec m;
		r = journal_model_get(j, names[i], &m);
		if (r == 0)
			r = cb(ud, &m);
	}
	free(names);
	return r;
}

int journal_event(struct journal *j, const char *model, const char *kind, const char *detail_json)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db, "INSERT INTO events(ts,model,kind,detail) VALUES(?,?,?,?)",
			       -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare event");
	sqlite3_bind_int64(st, 1, fl_now_s());
	sqlite3_bind_text(st, 2, model, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, detail_json ? detail_json : "{}", -1, SQLITE_STATIC);
	return step_done(j, st, "insert event");
}

int journal_event_count(struct journal *j, const char *model, const char *kind)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db, "SELECT COUNT(*) FROM events WHERE model=? AND kind=?", -1,
			       &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare count");
	sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
	int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
	sqlite3_finalize(st);
	return n < 0 ? db_err(j, "count") : n;
}

int journal_spool_attempt(struct journal *j, const char *key, int *ret_attempts)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db,
			       "INSERT INTO spool(key,attempts) VALUES(?,1) ON CONFLICT(key) DO "
			       "UPDATE SET attempts=attempts+1 RETURNING attempts",
			       -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare spool");
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (n < 0 || rc != SQLITE_DONE)
		return db_err(j, "spool attempt");
	*ret_attempts = n;
	return 0;
}

int journal_spool_forget(struct journal *j, const char *key)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db, "DELETE FROM spool WHERE key=?", -1, &st, NULL) != SQLITE_OK)
		return db_err(j, "prepare spool forget");
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	return step_done(j, st, "spool forget");
}

int journal_cmd_seen(struct journal *j, const char *id)
{
	if (!id || !id[0] || strlen(id) > J_CMD_ID_MAX)
		return -EINVAL;
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(j->db, "INSERT OR IGNORE INTO cmds(id) VALUES(?)", -1, &st, NULL) !=
	    SQLITE_OK)
		return db_err(j, "prepare cmd");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return db_err(j, "cmd insert");
	if (sqlite3_changes(j->db) == 0)
		return 1;
	char sql[128];
	snprintf(sql, sizeof(sql),
		 "DELETE FROM cmds WHERE seq <= (SELECT MAX(seq) FROM cmds) - %d", J_CMD_IDS_KEPT);
	return exec(j, sql);
}
