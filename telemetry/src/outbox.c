/* SQLite store-and-forward outbox. The only telemetry file that touches
 * SQLite. Rules and formats: docs/telemetry.md. */
#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/json.h>
#include <flotilla/tele_outbox.h>
#include <flotilla/tele_wire.h>
#include <flotilla/util.h>

#define DEFAULT_MAX_BYTES (16u * 1024 * 1024)
#define DEFAULT_MAX_RECORDS 100000
#define DEFAULT_COMPRESS_MIN TELE_WIRE_COMPRESS_MIN
#define HARD_LIMIT_FACTOR 2 /* events may overflow the bound up to this factor */
#define BUSY_TIMEOUT_MS 5000
#define ENVELOPE_RESERVE 256 /* bytes of envelope around the records */
#define BASELINE_MAX_BYTES (64 * 1024)

FL_DEFINE_CLEANUP(cJSON, cJSON_Delete)

struct tele_outbox {
	sqlite3 *db;
	char device[TELE_DEVICE_ID_MAX + 1];
	char stream[17];
	uint64_t max_bytes;
	uint64_t max_records;
	size_t compress_min;
	/* mirrors of committed state, updated only after a commit */
	uint64_t next_seq;
	uint64_t bytes;
	uint64_t records;
	uint64_t events;
	uint64_t dropped_records;
	uint64_t dropped_bytes;
	/* highest seq handed out per stream since the last rewind (memory only) */
	uint64_t cursor[2];
	/* highest drop report ever handed out (persisted as "drop_report_sent"):
	 * only a report nobody may have seen can be updated in place */
	uint64_t drop_sent;
};

static void stmt_finalizep(sqlite3_stmt **s)
{
	if (*s)
		sqlite3_finalize(*s);
}
#define _cleanup_stmt_ _cleanup_(stmt_finalizep)

static int db_err(int rc)
{
	if (rc == SQLITE_FULL)
		return -ENOSPC;
	if (rc == SQLITE_NOMEM)
		return -ENOMEM;
	return -FL_EDB;
}

static int exec(struct tele_outbox *ob, const char *sql)
{
	int rc = sqlite3_exec(ob->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : db_err(rc);
}

static int prepare(struct tele_outbox *ob, const char *sql, sqlite3_stmt **ret)
{
	int rc = sqlite3_prepare_v2(ob->db, sql, -1, ret, NULL);
	return rc == SQLITE_OK ? 0 : db_err(rc);
}

static void rollback(struct tele_outbox *ob)
{
	sqlite3_exec(ob->db, "ROLLBACK", NULL, NULL, NULL);
}

static int meta_get(struct tele_outbox *ob, const char *k, char *buf, size_t len)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int r = prepare(ob, "SELECT v FROM tele_meta WHERE k = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, k, -1, SQLITE_STATIC);
	int rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return -ENOENT;
	if (rc != SQLITE_ROW)
		return db_err(rc);
	const unsigned char *v = sqlite3_column_text(s, 0);
	if (!v || fl_strlcpy(buf, (const char *)v, len) >= len)
		return -FL_EDB;
	return 0;
}

static int meta_get_u64(struct tele_outbox *ob, const char *k, uint64_t *ret)
{
	char buf[32];
	int64_t v;
	int r = meta_get(ob, k, buf, sizeof(buf));
	if (r < 0)
		return r;
	if (fl_parse_i64(buf, 0, INT64_MAX, &v) < 0)
		return -FL_EDB;
	*ret = (uint64_t)v;
	return 0;
}

static int meta_put(struct tele_outbox *ob, const char *k, const char *v)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int r = prepare(ob, "INSERT OR REPLACE INTO tele_meta(k, v) VALUES(?, ?)", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, k, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, v, -1, SQLITE_TRANSIENT);
	int rc = sqlite3_step(s);
	return rc == SQLITE_DONE ? 0 : db_err(rc);
}

static int meta_put_u64(struct tele_outbox *ob, const char *k, uint64_t v)
{
	char buf[32];
	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	return meta_put(ob, k, buf);
}

static int query_u64(struct tele_outbox *ob, const char *sql, uint64_t *ret)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int r = prepare(ob, sql, &s);
	if (r < 0)
		return r;
	int rc = sqlite3_step(s);
	if (rc != SQLITE_ROW)
		return db_err(rc);
	int64_t v = sqlite3_column_int64(s, 0);
	*ret = v < 0 ? 0 : (uint64_t)v;
	return 0;
}

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS tele_outbox("
	" seq INTEGER PRIMARY KEY, cls INTEGER NOT NULL, bytes INTEGER NOT NULL,"
	" body TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS tele_outbox_cls ON tele_outbox(cls, seq);"
	"CREATE TABLE IF NOT EXISTS tele_meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS tele_baseline(model TEXT NOT NULL, version TEXT NOT NULL,"
	" body TEXT NOT NULL, PRIMARY KEY(model, version));";

static int load_state(struct tele_outbox *ob)
{
	int r;
	if ((r = exec(ob, "BEGIN IMMEDIATE")) < 0)
		return r;
	r = meta_get(ob, "stream", ob->stream, sizeof(ob->stream));
	if (r == -ENOENT) {
		uint8_t rnd[8];
		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
			rollback(ob);
			return -errno;
		}
		for (size_t i = 0; i < sizeof(rnd); i++)
			snprintf(ob->stream + 2 * i, 3, "%02x", rnd[i]);
		r = meta_put(ob, "stream", ob->stream);
		if (r == 0)
			r = meta_put_u64(ob, "next_seq", 1);
	}
	uint64_t max_seq = 0;
	if (r == 0)
		r = meta_get_u64(ob, "next_seq", &ob->next_seq);
	if (r == 0 && meta_get_u64(ob, "dropped_records", &ob->dropped_records) == -ENOENT)
		ob->dropped_records = 0;
	if (r == 0 && meta_get_u64(ob, "dropped_bytes", &ob->dropped_bytes) == -ENOENT)
		ob->dropped_bytes = 0;
	if (r == 0 && meta_get_u64(ob, "drop_report_sent", &ob->drop_sent) == -ENOENT)
		ob->drop_sent = 0;
	if (r == 0)
		r = query_u64(ob, "SELECT COALESCE(MAX(seq), 0) FROM tele_outbox", &max_seq);
	if (r == 0)
		r = query_u64(ob, "SELECT COUNT(*) FROM tele_outbox", &ob->records);
	if (r == 0)
		r = query_u64(ob, "SELECT COALESCE(SUM(bytes), 0) FROM tele_outbox", &ob->bytes);
	if (r == 0)
		r = query_u64(ob, "SELECT COUNT(*) FROM tele_outbox WHERE cls = 1", &ob->events);
	if (r == 0 && (ob->next_seq == 0 || !(ob->stream[0])))
		r = -FL_EDB;
	if (r == 0 && max_seq >= ob->next_seq) {
		/* never hand out a seq that is already stored */
		ob->next_seq = max_seq + 1;
		r = meta_put_u64(ob, "next_seq", ob->next_seq);
	}
	if (r == 0)
		r = exec(ob, "COMMIT");
	if (r < 0)
		rollback(ob);
	return r;
}

int tele_outbox_open(const char *path, const struct tele_outbox_opts *opts,
		     struct tele_outbox **ret)
{
	if (!path || !opts || !opts->device_id || !fl_name_valid(opts->device_id, TELE_DEVICE_ID_MAX))
		return -EINVAL;
	struct tele_outbox *ob = calloc(1, sizeof(*ob));
	if (!ob)
		return -ENOMEM;
	fl_strlcpy(ob->device, opts->device_id, sizeof(ob->device));
	ob->max_bytes = opts->max_bytes ? opts->max_bytes : DEFAULT_MAX_BYTES;
	ob->max_records = opts->max_records ? opts->max_records : DEFAULT_MAX_RECORDS;
	ob->compress_min = opts->compress_min_bytes ? opts->compress_min_bytes : DEFAULT_COMPRESS_MIN;
	int rc = sqlite3_open_v2(path, &ob->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
	int r = rc == SQLITE_OK ? 0 : db_err(rc);
	if (r == 0) {
		sqlite3_busy_timeout(ob->db, BUSY_TIMEOUT_MS);
		/* WAL + FULL: every commit is fsync'd before it returns */
		r = exec(ob, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
	}
	if (r == 0)
		r = exec(ob, schema);
	if (r == 0)
		r = load_state(ob);
	if (r < 0) {
		tele_outbox_close(ob);
		return r;
	}
	*ret = ob;
	return 0;
}

void tele_outbox_close(struct tele_outbox *ob)
{
	if (!ob)
		return;
	sqlite3_close_v2(ob->db);
	free(ob);
}

const char *tele_outbox_stream_id(const struct tele_outbox *ob)
{
	return ob->stream;
}

int tele_outbox_stats(struct tele_outbox *ob, struct tele_outbox_stats *ret)
{
	ret->records = ob->records;
	ret->bytes = ob->bytes;
	ret->events = ob->events;
	ret->next_seq = ob->next_seq;
	ret->dropped_records = ob->dropped_records;
	ret->dropped_bytes = ob->dropped_bytes;
	return 0;
}

/* Render BODY as a stored record with "seq" first, and validate it exactly as
 * the controller's decoder will, so the device never emits what the
 * controller refuses. Caller frees *ret. */
static int render(const cJSON *body, uint64_t seq, enum tele_class want, char **ret,
		  size_t *ret_len)
{
	if (!cJSON_IsObject(body) || cJSON_GetObjectItemCaseSensitive(body, "seq"))
		return -EINVAL;
	_cleanup_free_ char *s = cJSON_PrintUnformatted(body);
	if (!s)
		return -ENOMEM;
	size_t n = strlen(s);
	if (n > TELE_RECORD_MAX_BYTES)
		return -FL_ETOOBIG;
	_cleanup_free_ char *out =
		fl_asprintf("{\"seq\":%" PRIu64 "%s%s", seq, n > 2 ? "," : "", s + 1);
	if (!out)
		return -ENOMEM;
	size_t len = strlen(out);
	if (len > TELE_RECORD_MAX_BYTES)
		return -FL_ETOOBIG;
	_cleanup_(cJSON_Deletep) cJSON *parsed = NULL;
	struct tele_rx_record rec;
	int r = fl_json_parse(out, len, TELE_RECORD_MAX_BYTES, TELE_RECORD_MAX_DEPTH, &parsed);
	if (r < 0)
		return r;
	if ((r = tele_wire_check_record(parsed, &rec, NULL, 0)) < 0)
		return r;
	bool is_event = rec.type == TELE_REC_EVENT;
	if (rec.type == TELE_REC_DROPPED || is_event != (want == TELE_CLASS_EVENT))
		return -EINVAL;
	*ret = fl_steal_ptr(out);
	*ret_len = len;
	return 0;
}

static int insert(struct tele_outbox *ob, uint64_t seq, enum tele_class cls, const char *body,
		  size_t len)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int r = prepare(ob, "INSERT INTO tele_outbox(seq, cls, bytes, body) VALUES(?, ?, ?, ?)",
			&s);
	if (r < 0)
		return r;
	sqlite3_bind_int64(s, 1, (sqlite3_int64)seq);
	sqlite3_bind_int(s, 2, cls);
	sqlite3_bind_int64(s, 3, (sqlite3_int64)len);
	sqlite3_bind_text(s, 4, body, (int)len, SQLITE_STATIC);
	int rc = sqlite3_step(s);
	return rc == SQLITE_DONE ? 0 : db_err(rc);
}

/* State changes of one transaction, applied to the mirrors after COMMIT. */
struct txn {
	uint64_t next_seq;
	int64_t bytes, records, events;
	uint64_t drop_first, drop_last; /* 0: nothing dropped */
	uint64_t drop_count, drop_bytes;
};

/* Delete the oldest metrics until NEED_BYTES and NEED_RECORDS more fit under
 * the bound. Returns 1 when they fit, 0 when only non-metrics are left. */
static int make_room(struct tele_outbox *ob, struct txn *t, uint64_t need_bytes,
		     uint64_t need_records)
{
	_cleanup_stmt_ sqlite3_stmt *sel = NULL, *del = NULL;
	int r;
	if ((r = prepare(ob, "SELECT seq, bytes FROM tele_outbox WHERE cls = 0 ORDER BY seq", &sel)) <
		    0 ||
	    (r = prepare(ob, "DELETE FROM tele_outbox WHERE seq = ?", &del)) < 0)
		return r;
	for (;;) {
		uint64_t bytes = (uint64_t)((int64_t)ob->bytes + t->bytes);
		uint64_t records = (uint64_t)((int64_t)ob->records + t->records);
		if (bytes + need_bytes <= ob->max_bytes && records + need_records <= ob->max_records)
			return 1;
		int rc = sqlite3_step(sel);
		if (rc == SQLITE_DONE)
			return 0;
		if (rc != SQLITE_ROW)
			return db_err(rc);
		uint64_t seq = (uint64_t)sqlite3_column_int64(sel, 0);
		int64_t len = sqlite3_column_int64(sel, 1);
		sqlite3_reset(del);
		sqlite3_bind_int64(del, 1, (sqlite3_int64)seq);
		if ((rc = sqlite3_step(del)) != SQLITE_DONE)
			return db_err(rc);
		t->bytes -= len;
		t->records--;
		if (!t->drop_first)
			t->drop_first = seq;
		t->drop_last = seq;
		t->drop_count++;
		t->drop_bytes += (uint64_t)len;
	}
}

/* Report this transaction's drops: extend the newest drop report when it was
 * never handed out (durably recorded by take, so also across crashes: a
 * report the controller may hold is never changed under the same seq), else
 * add a new one. Each report counts disjoint drops, so they add up. One range per report is
 * enough: metrics are dropped oldest first, so every metric between two
 * dropped ones was dropped or already acknowledged, and events are never
 * dropped (they arrive on their own). */
static int record_drops(struct tele_outbox *ob, struct txn *t)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	uint64_t seq = 0, first = t->drop_first, last = t->drop_last, count = t->drop_count, bytes = t->drop_bytes;
	int64_t old_len = 0;
	int r = prepare(ob, "SELECT seq, bytes, body FROM tele_outbox WHERE cls = 2 "
			    "ORDER BY seq DESC LIMIT 1", &s);
	if (r < 0)
		return r;
	int rc = sqlite3_step(s);
	if (rc == SQLITE_ROW &&
	    (uint64_t)sqlite3_column_int64(s, 0) > ob->drop_sent) {
		_cleanup_(cJSON_Deletep) cJSON *old = NULL;
		const char *txt = (const char *)sqlite3_column_text(s, 2);
		struct tele_rx_record rec;
		if (!txt || fl_json_parse(txt, strlen(txt), TELE_RECORD_MAX_BYTES, 8, &old) < 0 ||
		    tele_wire_check_record(old, &rec, NULL, 0) < 0 || rec.type != TELE_REC_DROPPED)
			return -FL_EDB;
		const cJSON *rg = cJSON_GetObjectItemCaseSensitive(old, "ranges");
		double a = cJSON_GetArrayItem(cJSON_GetArrayItem(rg, 0), 0)->valuedouble;
		double b = cJSON_GetArrayItem(cJSON_GetArrayItem(rg, 0), 1)->valuedouble;
		if ((uint64_t)a < first)
			first = (uint64_t)a;
		if ((uint64_t)b > last)
			last = (uint64_t)b;
		count += rec.dropped_count;
		bytes += rec.dropped_bytes;
		seq = rec.seq;
		old_len = sqlite3_column_int64(s, 1);
	} else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		return db_err(rc);
	}
	bool fresh = seq == 0;
	if (fresh)
		seq = t->next_seq++;
	_cleanup_free_ char *body = fl_asprintf(
		"{\"seq\":%" PRIu64 ",\"type\":\"dropped\",\"t\":%" PRId64 ",\"count\":%" PRIu64
		",\"bytes\":%" PRIu64 ",\"ranges\":[[%" PRIu64 ",%" PRIu64 "]]}",
		seq, fl_now_s() < 0 ? 0 : fl_now_s(), count, bytes, first, last);
	if (!body)
		return -ENOMEM;
	size_t len = strlen(body);
	sqlite3_finalize(s);
	s = NULL;
	if (fresh) {
		if ((r = insert(ob, seq, TELE_CLASS_DROPPED, body, len)) < 0)
			return r;
		t->records++;
	} else {
		if ((r = prepare(ob, "UPDATE tele_outbox SET bytes = ?, body = ? WHERE seq = ?",
				 &s)) < 0)
			return r;
		sqlite3_bind_int64(s, 1, (sqlite3_int64)len);
		sqlite3_bind_text(s, 2, body, (int)len, SQLITE_STATIC);
		sqlite3_bind_int64(s, 3, (sqlite3_int64)seq);
		if ((rc = sqlite3_step(s)) != SQLITE_DONE)
			return db_err(rc);
	}
	t->bytes += (int64_t)len - old_len;
	return 0;
}

static int commit(struct tele_outbox *ob, struct txn *t, const char *fp_before)
{
	int r;
	if (t->drop_count) {
		if ((r = record_drops(ob, t)) < 0)
			return r;
		if ((r = meta_put_u64(ob, "dropped_records", ob->dropped_records + t->drop_count)) <
			    0 ||
		    (r = meta_put_u64(ob, "dropped_bytes", ob->dropped_bytes + t->drop_bytes)) < 0)
			return r;
		if ((r = FL_FAILPOINT("tele.outbox.drop.before_commit")) < 0)
			return r;
	}
	if (t->next_seq != ob->next_seq && (r = meta_put_u64(ob, "next_seq", t->next_seq)) < 0)
		return r;
	if ((r = FL_FAILPOINT(fp_before)) < 0)
		return r;
	if ((r = exec(ob, "COMMIT")) < 0)
		return r;
	ob->next_seq = t->next_seq;
	ob->bytes = (uint64_t)((int64_t)ob->bytes + t->bytes);
	ob->records = (uint64_t)((int64_t)ob->records + t->records);
	ob->events = (uint64_t)((int64_t)ob->events + t->events);
	ob->dropped_records += t->drop_count;
	ob->dropped_bytes += t->drop_bytes;
	return 0;
}

int tele_outbox_push_event(struct tele_outbox *ob, const cJSON *body, uint64_t *ret_seq)
{
	struct txn t = {.next_seq = ob->next_seq};
	_cleanup_free_ char *txt = NULL;
	size_t len;
	uint64_t seq = t.next_seq;
	int r = render(body, seq, TELE_CLASS_EVENT, &txt, &len);
	if (r < 0)
		return r;
	if ((r = exec(ob, "BEGIN IMMEDIATE")) < 0)
		return r;
	r = make_room(ob, &t, len, 1);
	if (r == 0) {
		/* only events and drop reports left: allow up to the hard limit */
		uint64_t bytes = (uint64_t)((int64_t)ob->bytes + t.bytes);
		uint64_t records = (uint64_t)((int64_t)ob->records + t.records);
		if (bytes + len > HARD_LIMIT_FACTOR * ob->max_bytes ||
		    records + 1 > HARD_LIMIT_FACTOR * ob->max_records)
			r = -FL_ENOSPACE;
	}
	if (r >= 0) {
		t.next_seq++;
		r = insert(ob, seq, TELE_CLASS_EVENT, txt, len);
	}
	if (r >= 0) {
		t.bytes += (int64_t)len;
		t.records++;
		t.events++;
		r = commit(ob, &t, "tele.outbox.push.before_commit");
	}
	if (r < 0) {
		rollback(ob);
		return r;
	}
	FL_FAILPOINT("tele.outbox.push.after_commit");
	if (ret_seq)
		*ret_seq = seq;
	return 0;
}

int tele_outbox_push_metrics(struct tele_outbox *ob, const cJSON *const *bodies, size_t n,
			     uint64_t *ret_first_seq)
{
	if (n == 0 || !bodies)
		return -EINVAL;
	if (n > TELE_WIRE_MAX_RECORDS)
		return -FL_ETOOBIG;
	_cleanup_free_ char **txt = calloc(n, sizeof(*txt));
	_cleanup_free_ size_t *len = calloc(n, sizeof(*len));
	if (!txt || !len)
		return -ENOMEM;
	int r = 0;
	uint64_t first = ob->next_seq;
	for (size_t i = 0; i < n && r == 0; i++)
		r = render(bodies[i], first + i, TELE_CLASS_METRIC, &txt[i], &len[i]);
	struct txn t = {.next_seq = ob->next_seq};
	int stored = 0;
	if (r == 0)
		r = exec(ob, "BEGIN IMMEDIATE");
	else
		goto out;
	for (size_t i = 0; i < n && r >= 0; i++) {
		uint64_t seq = t.next_seq++;
		r = make_room(ob, &t, len[i], 1);
		if (r == 0) {
			/* nothing left to drop: the new record itself is dropped */
			if (!t.drop_first)
				t.drop_first = seq;
			t.drop_last = seq;
			t.drop_count++;
			t.drop_bytes += len[i];
			continue;
		}
		if (r > 0)
			r = insert(ob, seq, TELE_CLASS_METRIC, txt[i], len[i]);
		if (r >= 0) {
			t.bytes += (int64_t)len[i];
			t.records++;
			stored++;
		}
	}
	if (r >= 0)
		r = commit(ob, &t, "tele.outbox.push.before_commit");
	if (r < 0)
		rollback(ob);
	else
		FL_FAILPOINT("tele.outbox.push.after_commit");
out:
	for (size_t i = 0; i < n; i++)
		free(txt[i]);
	if (r < 0)
		return r;
	if (ret_first_seq)
		*ret_first_seq = first;
	return stored;
}

/* ------------------------------------------------------------------- take */

struct row {
	uint64_t seq;
	int cls;
	char *body;
	size_t len;
};

static void rows_free(struct row *rows, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(rows[i].body);
	free(rows);
}

void tele_batch_free(struct tele_batch *b)
{
	if (!b)
		return;
	free(b->data);
	free(b->seqs);
	free(b);
}

int tele_outbox_take(struct tele_outbox *ob, enum tele_stream stream, size_t max_bytes,
		     struct tele_batch **ret)
{
	if ((stream != TELE_STREAM_EVENTS && stream != TELE_STREAM_METRICS) ||
	    max_bytes < TELE_BATCH_MIN_BYTES || max_bytes > TELE_WIRE_MAX_PAYLOAD)
		return -EINVAL;
	const char *sql = stream == TELE_STREAM_EVENTS
				  ? "SELECT seq, body, cls FROM tele_outbox WHERE cls = 1 AND seq > ? "
				    "ORDER BY seq LIMIT ?"
				  : "SELECT seq, body, cls FROM tele_outbox WHERE cls IN (0, 2) AND seq > ? "
				    "ORDER BY seq LIMIT ?";
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int r = prepare(ob, sql, &s);
	if (r < 0)
		return r;
	sqlite3_bind_int64(s, 1, (sqlite3_int64)ob->cursor[stream]);
	sqlite3_bind_int(s, 2, TELE_WIRE_MAX_RECORDS);

	/* Read rows while their raw size stays under the decompressed cap. */
	struct row *rows = NULL;
	size_t n = 0, raw = ENVELOPE_RESERVE;
	int rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *body = (const char *)sqlite3_column_text(s, 1);
		size_t len = (size_t)sqlite3_column_bytes(s, 1);
		if (!body)
			continue;
		if (raw + len + 1 > TELE_WIRE_MAX_RAW)
			break;
		if (n % 256 == 0) {
			struct row *p = realloc(rows, (n + 256) * sizeof(*rows));
			if (!p) {
				rows_free(rows, n);
				return -ENOMEM;
			}
			rows = p;
		}
		rows[n].seq = (uint64_t)sqlite3_column_int64(s, 0);
		rows[n].cls = sqlite3_column_int(s, 2);
		rows[n].len = len;
		rows[n].body = strndup(body, len);
		if (!rows[n].body) {
			rows_free(rows, n);
			return -ENOMEM;
		}
		n++;
		raw += len + 1;
	}
	/* end the read so the write below commits on its own */
	sqlite3_reset(s);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		rows_free(rows, n);
		return db_err(rc);
	}
	if (n == 0) {
		free(rows);
		return 0;
	}

	/* Largest prefix whose encoding fits MAX_BYTES: halve until it does. A
	 * single record always fits (TELE_BATCH_MIN_BYTES). */
	struct tele_wire_item *items = malloc(n * sizeof(*items));
	if (!items) {
		rows_free(rows, n);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++)
		items[i] = (struct tele_wire_item){rows[i].seq, rows[i].body, rows[i].len};
	uint8_t *out = NULL;
	size_t out_len = 0, raw_len = 0, k = n;
	bool compressed = false;
	for (;;) {
		free(out);
		out = NULL;
		if ((r = tele_wire_batch(ob->device, ob->stream, items, k, ob->compress_min, &out,
					 &out_len, &raw_len, &compressed)) < 0)
			break;
		if (out_len <= max_bytes)
			break;
		if (k == 1) {
			r = -FL_ETOOBIG;
			break;
		}
		/* aim at the size that fits, at least halving */
		size_t guess = (size_t)((double)k * (double)max_bytes / (double)out_len * 0.9);
		k = guess < k / 2 ? guess : k / 2;
		if (k == 0)
			k = 1;
	}
	free(items);
	/* Record durably that a drop report leaves, before it can leave. */
	uint64_t report = 0;
	for (size_t i = 0; r >= 0 && i < k; i++)
		if (rows[i].cls == TELE_CLASS_DROPPED && rows[i].seq > ob->drop_sent)
			report = rows[i].seq;
	if (report) {
		r = meta_put_u64(ob, "drop_report_sent", report);
		if (r >= 0)
			ob->drop_sent = report;
	}
	struct tele_batch *batch = NULL;
	if (r >= 0) {
		batch = calloc(1, sizeof(*batch));
		uint64_t *seqs = calloc(k, sizeof(*seqs));
		if (!batch || !seqs) {
			free(batch);
			free(seqs);
			batch = NULL;
			r = -ENOMEM;
		} else {
			for (size_t i = 0; i < k; i++)
				seqs[i] = rows[i].seq;
			batch->seqs = seqs;
			batch->n_seqs = k;
			batch->raw_len = raw_len;
			batch->compressed = compressed;
			batch->data = out;
			batch->len = out_len;
			out = NULL;
		}
	}
	free(out);
	if (r >= 0)
		ob->cursor[stream] = rows[k - 1].seq;
	rows_free(rows, n);
	if (r < 0)
		return r;
	*ret = batch;
	return 1;
}

int tele_outbox_ack(struct tele_outbox *ob, const uint64_t *seqs, size_t n)
{
	if (n == 0)
		return 0;
	if (!seqs)
		return -EINVAL;
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int r = prepare(ob, "DELETE FROM tele_outbox WHERE seq = ? RETURNING cls, bytes", &s);
	if (r < 0)
		return r;
	if ((r = exec(ob, "BEGIN IMMEDIATE")) < 0)
		return r;
	struct txn t = {.next_seq = ob->next_seq};
	int deleted = 0;
	for (size_t i = 0; i < n && r >= 0; i++) {
		sqlite3_reset(s);
		sqlite3_bind_int64(s, 1, (sqlite3_int64)seqs[i]);
		int rc = sqlite3_step(s);
		if (rc == SQLITE_ROW) {
			int cls = sqlite3_column_int(s, 0);
			t.bytes -= sqlite3_column_int64(s, 1);
			t.records--;
			if (cls == TELE_CLASS_EVENT)
				t.events--;
			deleted++;
			rc = sqlite3_step(s);
		}
		if (rc != SQLITE_DONE)
			r = db_err(rc);
	}
	sqlite3_reset(s);
	if (r >= 0)
		r = commit(ob, &t, "tele.outbox.ack.before_commit");
	if (r < 0) {
		rollback(ob);
		return r;
	}
	return deleted;
}

void tele_outbox_rewind(struct tele_outbox *ob)
{
	ob->cursor[TELE_STREAM_EVENTS] = 0;
	ob->cursor[TELE_STREAM_METRICS] = 0;
}

/* -------------------------------------------------------------- baselines */

int tele_outbox_put_baseline(struct tele_outbox *ob, const char *model, const char *version,
			     const cJSON *baseline)
{
	struct tele_quality q;
	if (!model || !version || !fl_name_valid(model, TELE_NAME_MAX) ||
	    !fl_name_valid(version, TELE_NAME_MAX) || !baseline)
		return -EINVAL;
	int r = tele_quality_from_json(baseline, &q);
	if (r < 0)
		return r;
	_cleanup_free_ char *txt = cJSON_PrintUnformatted(baseline);
	if (!txt)
		return -ENOMEM;
	if (strlen(txt) > BASELINE_MAX_BYTES)
		return -FL_ETOOBIG;
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	if ((r = prepare(ob, "INSERT OR REPLACE INTO tele_baseline(model, version, body) "
			     "VALUES(?, ?, ?)", &s)) < 0)
		return r;
	sqlite3_bind_text(s, 1, model, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, version, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, txt, -1, SQLITE_STATIC);
	int rc = sqlite3_step(s);
	return rc == SQLITE_DONE ? 0 : db_err(rc);
}

int tele_outbox_get_baseline(struct tele_outbox *ob, const char *model, const char *version,
			     cJSON **ret)
{
	if (!model || !version)
		return -EINVAL;
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int r = prepare(ob, "SELECT body FROM tele_baseline WHERE model = ? AND version = ?", &s);
	if (r < 0)
		return r;
	sqlite3_bind_text(s, 1, model, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, version, -1, SQLITE_STATIC);
	int rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return -ENOENT;
	if (rc != SQLITE_ROW)
		return db_err(rc);
	const char *txt = (const char *)sqlite3_column_text(s, 0);
	cJSON *o = NULL;
	if (!txt || (r = fl_json_parse(txt, strlen(txt), BASELINE_MAX_BYTES, 16, &o)) < 0)
		return -FL_EDB;
	*ret = o;
	return 0;
}
