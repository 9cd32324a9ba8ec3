/* Batch framing (zlib), and the controller's strict batch decoder. The only
 * file that touches zlib. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/tele_wire.h>
#include <flotilla/util.h>

#define INT_MAX53 INT64_C(9007199254740991)
#define JSON_DEPTH_MAX 16
#define OBJECT_MEMBERS_MAX 256 /* per JSON object: bounds cJSON's duplicate-key scan */
#define DETAILS_DEPTH_MAX 8

/* ------------------------------------------------------------------ framing */

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int tele_wire_compress(const void *raw, size_t len, uint8_t **ret, size_t *ret_len)
{
	if (!raw || len > TELE_WIRE_MAX_RAW)
		return len > TELE_WIRE_MAX_RAW ? -FL_ETOOBIG : -EINVAL;
	uLong bound = compressBound((uLong)len);
	_cleanup_free_ uint8_t *out = malloc(TELE_WIRE_HEADER_BYTES + bound);
	if (!out)
		return -ENOMEM;
	memcpy(out, TELE_WIRE_MAGIC, 4);
	put_be32(out + 4, (uint32_t)len);
	uLongf out_len = bound;
	int z = compress2(out + TELE_WIRE_HEADER_BYTES, &out_len, raw, (uLong)len, 6);
	if (z == Z_MEM_ERROR)
		return -ENOMEM;
	if (z != Z_OK)
		return -EIO;
	*ret_len = TELE_WIRE_HEADER_BYTES + out_len;
	*ret = fl_steal_ptr(out);
	return 0;
}

int tele_wire_batch(const char *device, const char *stream_id, const struct tele_wire_item *items,
		    size_t n, size_t compress_min, uint8_t **ret, size_t *ret_len,
		    size_t *ret_raw_len, bool *ret_compressed)
{
	if (!device || !stream_id || !items || n == 0 || !ret || !ret_len)
		return -EINVAL;
	if (n > TELE_WIRE_MAX_RECORDS)
		return -FL_ETOOBIG;
	char head[256];
	int r = fl_snprintf(head, sizeof(head),
			    "{\"v\":%d,\"device\":\"%s\",\"stream\":\"%s\",\"first\":%" PRIu64
			    ",\"last\":%" PRIu64 ",\"n\":%zu,\"records\":[",
			    TELE_WIRE_VERSION, device, stream_id, items[0].seq, items[n - 1].seq, n);
	if (r < 0)
		return r;
	struct fl_buf b = {0};
	if ((r = fl_buf_append(&b, head, (size_t)r)) < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		if (!items[i].body) {
			r = -EINVAL;
			goto out;
		}
		if ((i && (r = fl_buf_append(&b, ",", 1)) < 0) ||
		    (r = fl_buf_append(&b, items[i].body, items[i].len)) < 0)
			goto out;
	}
	if ((r = fl_buf_append(&b, "]}", 2)) < 0)
		goto out;
	if (b.len > TELE_WIRE_MAX_RAW) {
		r = -FL_ETOOBIG;
		goto out;
	}
	uint8_t *z = NULL;
	size_t zlen = 0;
	bool compressed = false;
	if (b.len >= compress_min) {
		if ((r = tele_wire_compress(b.p, b.len, &z, &zlen)) < 0)
			goto out;
		compressed = zlen < b.len;
	}
	if (ret_raw_len)
		*ret_raw_len = b.len;
	if (ret_compressed)
		*ret_compressed = compressed;
	if (compressed) {
		*ret = z;
		*ret_len = zlen;
	} else {
		free(z);
		*ret = (uint8_t *)b.p;
		*ret_len = b.len;
		b.p = NULL;
	}
	r = 0;
out:
	fl_buf_free(&b);
	return r;
}

int tele_wire_decompress(const uint8_t *buf, size_t len, size_t max_raw, char **ret,
			 size_t *ret_len)
{
	if (!buf || len < TELE_WIRE_HEADER_BYTES + 2 || memcmp(buf, TELE_WIRE_MAGIC, 4))
		return -FL_EFORMAT;
	if (len > UINT32_MAX)
		return -FL_ETOOBIG;
	size_t raw_len = get_be32(buf + 4);
	if (raw_len > max_raw)
		return -FL_ETOOBIG; /* checked before a single byte is inflated */
	_cleanup_free_ char *out = malloc(raw_len + 1);
	if (!out)
		return -ENOMEM;
	z_stream zs;
	memset(&zs, 0, sizeof(zs));
	if (inflateInit(&zs) != Z_OK)
		return -ENOMEM;
	zs.next_in = (Bytef *)(uintptr_t)(buf + TELE_WIRE_HEADER_BYTES);
	zs.avail_in = (uInt)(len - TELE_WIRE_HEADER_BYTES);
	zs.next_out = (Bytef *)out;
	zs.avail_out = (uInt)raw_len;
	int z = inflate(&zs, Z_FINISH);
	size_t produced = zs.total_out;
	size_t left_in = zs.avail_in;
	bool out_full = zs.avail_out == 0;
	inflateEnd(&zs);
	if (z == Z_MEM_ERROR)
		return -ENOMEM;
	if (z != Z_STREAM_END) {
		/* A stream that wants to go on past the declared length is a bomb
		 * or a lie: it never gets more room. */
		if (out_full && left_in > 0)
			return -FL_ETOOBIG;
		return -FL_EFORMAT; /* corrupt or truncated */
	}
	if (produced != raw_len || left_in != 0)
		return -FL_EFORMAT; /* short output or trailing bytes */
	out[raw_len] = '\0';
	*ret_len = raw_len;
	*ret = fl_steal_ptr(out);
	return 0;
}

/* ------------------------------------------------------------------ decoder */

struct errctx {
	char *buf;
	size_t len;
	long idx; /* record index or -1 */
};

static int fail(struct errctx *e, int code, const char *field, const char *what)
{
	if (e && e->buf && e->len) {
		if (e->idx >= 0)
			snprintf(e->buf, e->len, "records[%ld].%s: %s", e->idx, field, what);
		else
			snprintf(e->buf, e->len, "%s: %s", field, what);
	}
	return code;
}

static const char *code_what(int r)
{
	switch (r) {
	case -FL_ESCHEMA:
		return "missing or wrong type";
	case -FL_ERANGE:
		return "out of range";
	default:
		return fl_strerror(r);
	}
}

static int get_u(const cJSON *o, const char *k, int64_t max, bool optional, struct errctx *e,
		 uint64_t *ret)
{
	int64_t v;
	int r = optional ? fl_json_get_int_opt(o, k, 0, max, 0, &v)
			 : fl_json_get_int(o, k, 0, max, &v);
	if (r < 0)
		return fail(e, r, k, code_what(r));
	*ret = (uint64_t)v;
	return 0;
}

static int get_d(const cJSON *o, const char *k, double min, double max, struct errctx *e)
{
	double v;
	int r = fl_json_get_double_opt(o, k, min, max, 0, &v);
	return r < 0 ? fail(e, r, k, code_what(r)) : 0;
}

static int get_name(const cJSON *o, const char *k, size_t max, bool optional, struct errctx *e,
		    const char **ret)
{
	const char *s = NULL;
	int r = optional ? fl_json_get_str_opt(o, k, NULL, &s) : fl_json_get_str(o, k, &s);
	if (r < 0)
		return fail(e, r, k, code_what(r));
	if (s && !fl_name_valid(s, max))
		return fail(e, -FL_ERANGE, k, "not a valid name");
	*ret = s;
	return 0;
}

static int check_keys(const cJSON *o, const char *const *keys, struct errctx *e)
{
	const char *bad = NULL;
	if (fl_json_check_keys(o, keys, &bad) < 0)
		return fail(e, -FL_ESCHEMA, bad ? bad : "record", "unknown field");
	return 0;
}

static int json_depth(const cJSON *n)
{
	int d = 0;
	for (const cJSON *c = n ? n->child : NULL; c; c = c->next) {
		int k = json_depth(c);
		if (k > d)
			d = k;
	}
	return (cJSON_IsObject(n) || cJSON_IsArray(n)) ? d + 1 : d;
}

/* Every record must survive the decoder's envelope limits: depth (the
 * envelope adds two levels) and members per object. */
static int check_shape(const cJSON *n, int depth)
{
	if (depth > TELE_RECORD_MAX_DEPTH)
		return -FL_ETOODEEP;
	int members = 0;
	for (const cJSON *c = n->child; c; c = c->next) {
		if (cJSON_IsObject(n) && ++members >= OBJECT_MEMBERS_MAX)
			return -FL_ETOOBIG;
		if (cJSON_IsObject(c) || cJSON_IsArray(c)) {
			int r = check_shape(c, depth + 1);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

static int check_model(const cJSON *o, struct tele_rx_record *r, struct errctx *e)
{
	static const char *const keys[] = {
		"seq",         "t",           "type",         "model",        "version",
		"period_s",    "requests",    "errors",       "latency_us",   "tokens_out",
		"gen_time_us", "tokens_per_s", "queue_depth", "queue_depth_max",
		"runner_restarts", "quality", "drift",        NULL};
	static const char *const drift_keys[] = {"len_psi", "class_psi", "conf_psi",
						 "empty_rate_delta", "refusal_rate_delta", NULL};
	uint64_t u;
	int rc;
	if ((rc = check_keys(o, keys, e)) < 0 ||
	    (rc = get_name(o, "model", TELE_NAME_MAX, false, e, &r->model)) < 0 ||
	    (rc = get_name(o, "version", TELE_NAME_MAX, false, e, &r->version)) < 0 ||
	    (rc = get_u(o, "period_s", 86400 * 366, false, e, &u)) < 0 ||
	    (rc = get_u(o, "requests", INT_MAX53, false, e, &u)) < 0 ||
	    (rc = get_u(o, "tokens_out", INT_MAX53, false, e, &u)) < 0 ||
	    (rc = get_u(o, "gen_time_us", INT_MAX53, false, e, &u)) < 0 ||
	    (rc = get_d(o, "tokens_per_s", 0, 1e12, e)) < 0 ||
	    (rc = get_u(o, "queue_depth", UINT32_MAX, false, e, &u)) < 0 ||
	    (rc = get_u(o, "queue_depth_max", UINT32_MAX, false, e, &u)) < 0 ||
	    (rc = get_u(o, "runner_restarts", UINT32_MAX, false, e, &u)) < 0)
		return rc;
	const cJSON *errs, *lat, *q, *d;
	if (fl_json_get_obj(o, "errors", &errs) < 0)
		return fail(e, -FL_ESCHEMA, "errors", "missing or wrong type");
	for (const cJSON *m = errs->child; m; m = m->next) {
		bool known = false;
		for (unsigned i = 0; i < TELE_ERR__COUNT; i++)
			if (!strcmp(m->string, tele_err_kind_name((enum tele_err_kind)i)))
				known = true;
		if (!known)
			return fail(e, -FL_ESCHEMA, "errors", "unknown error kind");
		if ((rc = get_u(errs, m->string, INT_MAX53, false, e, &u)) < 0)
			return rc;
	}
	struct tele_hist h;
	if (fl_json_get_obj(o, "latency_us", &lat) < 0)
		return fail(e, -FL_ESCHEMA, "latency_us", "missing or wrong type");
	if ((rc = tele_hist_from_json(lat, &h)) < 0)
		return fail(e, rc, "latency_us", code_what(rc));
	if (cJSON_GetObjectItemCaseSensitive(o, "quality")) {
		struct tele_quality qu;
		if (fl_json_get_obj(o, "quality", &q) < 0)
			return fail(e, -FL_ESCHEMA, "quality", "wrong type");
		if ((rc = tele_quality_from_json(q, &qu)) < 0)
			return fail(e, rc, "quality", code_what(rc));
	}
	if (cJSON_GetObjectItemCaseSensitive(o, "drift")) {
		if (fl_json_get_obj(o, "drift", &d) < 0)
			return fail(e, -FL_ESCHEMA, "drift", "wrong type");
		if ((rc = check_keys(d, drift_keys, e)) < 0)
			return rc;
		for (const char *const *k = drift_keys; *k; k++) {
			double v;
			if ((rc = fl_json_get_double(d, *k, -1, 1e6, &v)) < 0)
				return fail(e, rc, *k, code_what(rc));
		}
	}
	return 0;
}

static int check_device(const cJSON *o, struct errctx *e)
{
	static const char *const keys[] = {
		"seq",  "t", "type", "cpu_pct", "n_cpus", "rss_bytes", "mem_total_bytes",
		"mem_avail_bytes", "temp_mc", "disk_free_bytes", "disk_total_bytes", "uptime_s",
		"reconnects", "tx_bytes", "rx_bytes", NULL};
	static const char *const counters[] = {"rss_bytes", "mem_total_bytes", "mem_avail_bytes",
					       "disk_free_bytes", "disk_total_bytes", "uptime_s",
					       "reconnects", "tx_bytes", "rx_bytes", NULL};
	uint64_t u;
	int rc;
	if ((rc = check_keys(o, keys, e)) < 0 || (rc = get_d(o, "cpu_pct", 0, 100, e)) < 0 ||
	    (rc = get_u(o, "n_cpus", 65536, true, e, &u)) < 0 ||
	    (rc = get_d(o, "temp_mc", -300000, 300000, e)) < 0)
		return rc;
	for (const char *const *k = counters; *k; k++)
		if ((rc = get_u(o, *k, INT_MAX53, true, e, &u)) < 0)
			return rc;
	return 0;
}

static int check_event(const cJSON *o, struct tele_rx_record *r, struct errctx *e)
{
	static const char *const keys[] = {"seq",    "t",    "type",    "kind", "model",
					   "version", "reason", "text", "details", NULL};
	const char *kind, *text;
	int rc;
	if ((rc = check_keys(o, keys, e)) < 0)
		return rc;
	if (fl_json_get_str(o, "kind", &kind) < 0)
		return fail(e, -FL_ESCHEMA, "kind", "missing or wrong type");
	if (tele_event_kind_from_name(kind, &r->event_kind) < 0)
		return fail(e, -FL_ERANGE, "kind", "unknown event kind");
	if ((rc = get_name(o, "model", TELE_NAME_MAX, true, e, &r->model)) < 0 ||
	    (rc = get_name(o, "version", TELE_NAME_MAX, true, e, &r->version)) < 0 ||
	    (rc = get_name(o, "reason", TELE_REASON_MAX, false, e, &r->reason)) < 0)
		return rc;
	if (r->version && !r->model)
		return fail(e, -FL_ESCHEMA, "version", "without model");
	if (fl_json_get_str_opt(o, "text", NULL, &text) < 0)
		return fail(e, -FL_ESCHEMA, "text", "wrong type");
	if (text && strlen(text) > TELE_TEXT_MAX)
		return fail(e, -FL_ETOOBIG, "text", "too long");
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "details");
	if (d && !cJSON_IsObject(d))
		return fail(e, -FL_ESCHEMA, "details", "not an object");
	if (d && json_depth(d) > DETAILS_DEPTH_MAX)
		return fail(e, -FL_ETOODEEP, "details", "nested too deep");
	return 0;
}

/* Ranges: [[a,b],...], 1 <= a <= b, ascending and disjoint. OUT may be NULL
 * (count only). */
static int check_ranges(const cJSON *a, uint64_t (*out)[2], size_t *ret_n, struct errctx *e)
{
	size_t n = 0;
	uint64_t prev = 0;
	const cJSON *p;
	if (!cJSON_IsArray(a))
		return fail(e, -FL_ESCHEMA, "ranges", "missing or wrong type");
	cJSON_ArrayForEach(p, a)
	{
		if (n >= TELE_WIRE_MAX_RANGES)
			return fail(e, -FL_ETOOBIG, "ranges", "too many");
		if (!cJSON_IsArray(p) || cJSON_GetArraySize(p) != 2 || !cJSON_IsNumber(p->child) ||
		    !cJSON_IsNumber(p->child->next))
			return fail(e, -FL_ESCHEMA, "ranges", "not a [first,last] pair");
		double x = p->child->valuedouble, y = p->child->next->valuedouble;
		if (!(x >= 1 && y >= x && y <= (double)INT_MAX53 && x == floor(x) && y == floor(y)))
			return fail(e, -FL_ERANGE, "ranges", "bad range");
		if (n > 0 && (uint64_t)x <= prev)
			return fail(e, -FL_ERANGE, "ranges", "not ascending");
		prev = (uint64_t)y;
		if (out) {
			out[n][0] = (uint64_t)x;
			out[n][1] = (uint64_t)y;
		}
		n++;
	}
	if (n == 0)
		return fail(e, -FL_ERANGE, "ranges", "empty");
	*ret_n = n;
	return 0;
}

static int check_dropped(const cJSON *o, struct tele_rx_record *r, struct errctx *e)
{
	static const char *const keys[] = {"seq", "t", "type", "count", "bytes", "ranges", NULL};
	int rc;
	size_t n;
	if ((rc = check_keys(o, keys, e)) < 0 ||
	    (rc = get_u(o, "count", INT_MAX53, false, e, &r->dropped_count)) < 0 ||
	    (rc = get_u(o, "bytes", INT_MAX53, false, e, &r->dropped_bytes)) < 0 ||
	    (rc = check_ranges(cJSON_GetObjectItemCaseSensitive(o, "ranges"), NULL, &n, e)) < 0)
		return rc;
	r->n_ranges = n;
	return 0;
}

static int check_record(const cJSON *o, struct tele_rx_record *ret, struct errctx *e)
{
	struct tele_rx_record r;
	const char *type;
	int64_t v;
	int rc;

	memset(&r, 0, sizeof(r));
	if (!cJSON_IsObject(o))
		return fail(e, -FL_ESCHEMA, "record", "not an object");
	if ((rc = check_shape(o, 1)) < 0)
		return fail(e, rc, "record", rc == -FL_ETOODEEP ? "nested too deep"
							   : "object with too many members");
	if ((rc = fl_json_get_int(o, "seq", 1, INT_MAX53, &v)) < 0)
		return fail(e, rc, "seq", code_what(rc));
	r.seq = (uint64_t)v;
	if ((rc = fl_json_get_int(o, "t", 0, INT_MAX53, &r.t)) < 0)
		return fail(e, rc, "t", code_what(rc));
	if (fl_json_get_str(o, "type", &type) < 0)
		return fail(e, -FL_ESCHEMA, "type", "missing or wrong type");
	if (!strcmp(type, "model")) {
		r.type = TELE_REC_MODEL;
		rc = check_model(o, &r, e);
	} else if (!strcmp(type, "device")) {
		r.type = TELE_REC_DEVICE;
		rc = check_device(o, e);
	} else if (!strcmp(type, "event")) {
		r.type = TELE_REC_EVENT;
		rc = check_event(o, &r, e);
	} else if (!strcmp(type, "dropped")) {
		r.type = TELE_REC_DROPPED;
		rc = check_dropped(o, &r, e);
	} else {
		return fail(e, -FL_ERANGE, "type", "unknown record type");
	}
	if (rc < 0)
		return rc;
	r.json = o;
	if (ret)
		*ret = r;
	return 0;
}

int tele_wire_check_record(const cJSON *rec, struct tele_rx_record *ret, char *ret_err,
			   size_t err_len)
{
	struct errctx e = {ret_err, err_len, -1};
	return check_record(rec, ret, &e);
}

/* Refuse objects with more than OBJECT_MEMBERS_MAX members before cJSON (and
 * its quadratic duplicate-key check) sees them. Depth is bounded by the
 * JSON parser itself; deeper input is refused here too. */
static int prescan_members(const char *s, size_t len)
{
	unsigned members[JSON_DEPTH_MAX + 2];
	bool is_obj[JSON_DEPTH_MAX + 2];
	int depth = 0;
	bool in_str = false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = false;
			continue;
		}
		if (c == '"') {
			in_str = true;
		} else if (c == '{' || c == '[') {
			if (++depth > JSON_DEPTH_MAX)
				return -FL_ETOODEEP;
			members[depth] = 0;
			is_obj[depth] = c == '{';
		} else if (c == '}' || c == ']') {
			if (depth > 0)
				depth--;
		} else if (c == ',' && depth > 0 && is_obj[depth]) {
			if (++members[depth] >= OBJECT_MEMBERS_MAX)
				return -FL_ETOOBIG;
		}
	}
	return 0;
}

void tele_rx_batch_free(struct tele_rx_batch *b)
{
	if (!b)
		return;
	cJSON_Delete(b->root_);
	free(b->recs);
	free(b->ranges_);
	free(b);
}

FL_DEFINE_CLEANUP(struct tele_rx_batch, tele_rx_batch_free)

static bool is_hex16(const char *s)
{
	if (strlen(s) != 16)
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

int tele_wire_decode(const uint8_t *buf, size_t len, const struct tele_wire_limits *limits,
		     struct tele_rx_batch **ret, char *ret_err, size_t err_len)
{
	static const char *const keys[] = {"v", "device", "stream", "first", "last", "n",
					   "records", NULL};
	size_t max_payload = limits && limits->max_payload ? limits->max_payload
							   : TELE_WIRE_MAX_PAYLOAD;
	size_t max_raw = limits && limits->max_raw ? limits->max_raw : TELE_WIRE_MAX_RAW;
	size_t max_records = limits && limits->max_records ? limits->max_records
							   : TELE_WIRE_MAX_RECORDS;
	struct errctx e = {ret_err, err_len, -1};
	_cleanup_free_ char *inflated = NULL;
	const char *raw;
	size_t raw_len;
	bool compressed = false;
	int r;

	if (ret_err && err_len)
		ret_err[0] = '\0';
	if (!buf || len == 0)
		return fail(&e, -FL_EFORMAT, "payload", "empty");
	if (len > max_payload)
		return fail(&e, -FL_ETOOBIG, "payload", "larger than the message limit");
	if (buf[0] == '{') {
		if (len > max_raw)
			return fail(&e, -FL_ETOOBIG, "payload", "larger than the size cap");
		raw = (const char *)buf;
		raw_len = len;
	} else if (len >= 4 && !memcmp(buf, TELE_WIRE_MAGIC, 4)) {
		r = tele_wire_decompress(buf, len, max_raw, &inflated, &raw_len);
		if (r == -FL_ETOOBIG)
			return fail(&e, r, "payload", "decompressed size over the cap");
		if (r < 0)
			return fail(&e, r, "payload", "corrupt or truncated compression");
		raw = inflated;
		compressed = true;
	} else {
		return fail(&e, -FL_EFORMAT, "payload", "neither JSON nor FLZ framing");
	}
	if ((r = prescan_members(raw, raw_len)) < 0)
		return fail(&e, r, "payload", r == -FL_ETOODEEP ? "nested too deep"
								: "object with too many members");

	_cleanup_(tele_rx_batch_freep) struct tele_rx_batch *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->was_compressed = compressed;
	r = fl_json_parse(raw, raw_len, max_raw, JSON_DEPTH_MAX, &b->root_);
	if (r < 0)
		return fail(&e, r, "payload", "malformed JSON");
	const cJSON *root = b->root_;
	const char *device, *stream;
	const cJSON *recs;
	int64_t v, first, last, n;
	if (!cJSON_IsObject(root))
		return fail(&e, -FL_ESCHEMA, "envelope", "not an object");
	if ((r = fl_json_get_int(root, "v", 0, INT_MAX53, &v)) < 0)
		return fail(&e, r, "v", code_what(r));
	if (v != TELE_WIRE_VERSION)
		return fail(&e, -FL_EUNSUPPORTED, "v", "unsupported version");
	if ((r = check_keys(root, keys, &e)) < 0)
		return r;
	if ((r = get_name(root, "device", TELE_DEVICE_ID_MAX, false, &e, &device)) < 0)
		return r;
	if (fl_json_get_str(root, "stream", &stream) < 0 || !is_hex16(stream))
		return fail(&e, -FL_ESCHEMA, "stream", "not 16 hex digits");
	if ((r = fl_json_get_int(root, "first", 1, INT_MAX53, &first)) < 0)
		return fail(&e, r, "first", code_what(r));
	if ((r = fl_json_get_int(root, "last", first, INT_MAX53, &last)) < 0)
		return fail(&e, r, "last", code_what(r));
	if ((r = fl_json_get_int(root, "n", 1, (int64_t)max_records, &n)) < 0)
		return fail(&e, r == -FL_ERANGE ? -FL_ETOOBIG : r, "n",
			    r == -FL_ERANGE ? "record count over the cap or zero" : code_what(r));
	if (fl_json_get_arr(root, "records", &recs) < 0)
		return fail(&e, -FL_ESCHEMA, "records", "missing or wrong type");
	if (cJSON_GetArraySize(recs) != n)
		return fail(&e, -FL_ESCHEMA, "n", "disagrees with the records array");
	if ((uint64_t)(last - first) + 1 < (uint64_t)n)
		return fail(&e, -FL_ERANGE, "n", "more records than the seq range holds");

	b->recs = calloc((size_t)n, sizeof(*b->recs));
	if (!b->recs)
		return -ENOMEM;
	size_t total_ranges = 0;
	size_t i = 0;
	const cJSON *rec;
	cJSON_ArrayForEach(rec, recs)
	{
		e.idx = (long)i;
		struct tele_rx_record *out = &b->recs[i];
		if ((r = check_record(rec, out, &e)) < 0)
			return r;
		if (i == 0 && out->seq != (uint64_t)first)
			return fail(&e, -FL_ERANGE, "seq", "first record is not 'first'");
		if (i > 0 && out->seq <= b->recs[i - 1].seq)
			return fail(&e, -FL_ERANGE, "seq", "not ascending");
		if (out->seq > (uint64_t)last)
			return fail(&e, -FL_ERANGE, "seq", "beyond 'last'");
		total_ranges += out->n_ranges;
		i++;
	}
	e.idx = -1;
	if (b->recs[n - 1].seq != (uint64_t)last)
		return fail(&e, -FL_ERANGE, "last", "not the last record's seq");
	if (total_ranges) {
		b->ranges_ = calloc(total_ranges, sizeof(*b->ranges_));
		if (!b->ranges_)
			return -ENOMEM;
		size_t at = 0;
		for (i = 0; i < (size_t)n; i++) {
			struct tele_rx_record *x = &b->recs[i];
			if (x->type != TELE_REC_DROPPED)
				continue;
			size_t k;
			check_ranges(cJSON_GetObjectItemCaseSensitive(x->json, "ranges"),
				     b->ranges_ + at, &k, NULL);
			x->ranges = (const uint64_t(*)[2])(b->ranges_ + at);
			at += k;
		}
	}
	fl_strlcpy(b->device, device, sizeof(b->device));
	fl_strlcpy(b->stream, stream, sizeof(b->stream));
	b->first = (uint64_t)first;
	b->last = (uint64_t)last;
	b->n = (size_t)n;
	*ret = fl_steal_ptr(b);
	return 0;
}
