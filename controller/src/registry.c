/* Device registry: the strict state-message parser and its store updates. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

#include "ctl_internal.h"
#include "registry.h"

#define STATE_MAX_DEPTH 8
#define STR_MAX 256
#define VERSION_MAX 64
#define ERROR_MAX 1024
#define INT_MAX53 9007199254740991LL

/* 1..MAX bytes, no control characters. */
static bool text_ok(const char *s, size_t max, bool allow_empty)
{
	size_t n = strlen(s);
	if ((!allow_empty && n == 0) || n > max)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

static int get_text(const cJSON *o, const char *key, size_t max, bool allow_empty,
		    const char **ret)
{
	const char *s;
	int r = fl_json_get_str(o, key, &s);
	if (r < 0)
		return r;
	if (!text_ok(s, max, allow_empty))
		return -FL_ESCHEMA;
	*ret = s;
	return 0;
}

/* An array of at most CTL_HW_LIST_MAX names. */
static int check_name_list(const cJSON *a)
{
	if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) > CTL_HW_LIST_MAX)
		return -FL_ESCHEMA;
	const cJSON *x;
	cJSON_ArrayForEach(x, a)
	{
		if (!cJSON_IsString(x) || !fl_name_valid(x->valuestring, 64))
			return -FL_ESCHEMA;
	}
	return 0;
}

struct parsed_hw {
	const char *arch;
	int64_t ram_mb;
	const cJSON *accel, *backends;
};

static int parse_hw(const cJSON *hw, struct parsed_hw *ret)
{
	static const char *const keys[] = {"arch", "ram_mb", "accelerators", "backends", NULL};
	if (!cJSON_IsObject(hw))
		return -FL_ESCHEMA;
	int r = fl_json_check_keys(hw, keys, NULL);
	if (r < 0)
		return r;
	if ((r = fl_json_get_str(hw, "arch", &ret->arch)) < 0)
		return r;
	if (!fl_name_valid(ret->arch, 64))
		return -FL_ESCHEMA;
	if ((r = fl_json_get_int(hw, "ram_mb", 0, 1LL << 40, &ret->ram_mb)) < 0)
		return r;
	ret->accel = cJSON_GetObjectItemCaseSensitive(hw, "accelerators");
	ret->backends = cJSON_GetObjectItemCaseSensitive(hw, "backends");
	if ((r = check_name_list(ret->accel)) < 0 || (r = check_name_list(ret->backends)) < 0)
		return r;
	return 0;
}

static int check_labels(const cJSON *l)
{
	if (!cJSON_IsObject(l) || cJSON_GetArraySize(l) > CTL_LABELS_MAX)
		return -FL_ESCHEMA;
	const cJSON *x;
	cJSON_ArrayForEach(x, l)
	{
		if (!fl_name_valid(x->string, 64) || !cJSON_IsString(x) ||
		    !text_ok(x->valuestring, CTL_LABEL_VALUE_MAX, true))
			return -FL_ESCHEMA;
	}
	return 0;
}

static int check_slot(const cJSON *s)
{
	static const char *const keys[] = {"status", "version", "sequence", NULL};
	if (!cJSON_IsObject(s))
		return -FL_ESCHEMA;
	int r = fl_json_check_keys(s, keys, NULL);
	const char *t;
	int64_t seq;
	if (r >= 0)
		r = get_text(s, "status", 32, false, &t);
	if (r >= 0 && cJSON_GetObjectItemCaseSensitive(s, "version"))
		r = get_text(s, "version", VERSION_MAX, false, &t);
	if (r >= 0)
		r = fl_json_get_int_opt(s, "sequence", 0, INT_MAX53, 0, &seq);
	return r;
}

/* Validate model M; fill DM (strings point into M). */
static int parse_model(const cJSON *m, struct ctl_device_model *dm)
{
	static const char *const keys[] = {"current", "slots", "install", NULL};
	static const char *const ikeys[] = {"version", "state", "error", "bytes_done",
					    "bytes_total", "chunks_done", "chunks_total", NULL};
	if (!fl_name_valid(m->string, 64) || !cJSON_IsObject(m))
		return -FL_ESCHEMA;
	int r = fl_json_check_keys(m, keys, NULL);
	if (r < 0)
		return r;
	dm->model = m->string;
	const cJSON *cur = cJSON_GetObjectItemCaseSensitive(m, "current");
	if (cur && !cJSON_IsNull(cur)) {
		if (!cJSON_IsString(cur) || (strcmp(cur->valuestring, "a") && strcmp(cur->valuestring, "b")))
			return -FL_ESCHEMA;
		dm->current_slot = cur->valuestring;
	}
	const cJSON *slots = cJSON_GetObjectItemCaseSensitive(m, "slots");
	if (slots) {
		if (!cJSON_IsObject(slots))
			return -FL_ESCHEMA;
		const cJSON *s;
		cJSON_ArrayForEach(s, slots)
		{
			if (strcmp(s->string, "a") && strcmp(s->string, "b"))
				return -FL_ESCHEMA;
			if ((r = check_slot(s)) < 0)
				return r;
		}
		if (dm->current_slot) {
			const cJSON *cs = cJSON_GetObjectItemCaseSensitive(slots, dm->current_slot);
			const cJSON *v = cJSON_GetObjectItemCaseSensitive(cs, "version");
			dm->current_version = cJSON_IsString(v) ? v->valuestring : NULL;
		}
	}
	const cJSON *in = cJSON_GetObjectItemCaseSensitive(m, "install");
	if (in && !cJSON_IsNull(in)) {
		if (!cJSON_IsObject(in) || (r = fl_json_check_keys(in, ikeys, NULL)) < 0)
			return -FL_ESCHEMA;
		if ((r = get_text(in, "state", 32, false, &dm->install_state)) < 0)
			return r;
		if (cJSON_GetObjectItemCaseSensitive(in, "version") &&
		    (r = get_text(in, "version", VERSION_MAX, false, &dm->install_version)) < 0)
			return r;
		if (cJSON_GetObjectItemCaseSensitive(in, "error") &&
		    (r = get_text(in, "error", ERROR_MAX, true, &dm->install_error)) < 0)
			return r;
		if ((r = fl_json_get_int_opt(in, "bytes_done", 0, INT_MAX53, 0, &dm->bytes_done)) < 0 ||
		    (r = fl_json_get_int_opt(in, "bytes_total", 0, INT_MAX53, 0, &dm->bytes_total)) < 0 ||
		    (r = fl_json_get_int_opt(in, "chunks_done", 0, INT_MAX53, 0, &dm->chunks_done)) < 0 ||
		    (r = fl_json_get_int_opt(in, "chunks_total", 0, INT_MAX53, 0, &dm->chunks_total)) < 0)
			return r;
	}
	return 0;
}

/* The whole write of one full state, inside a transaction. */
static int store_state(struct ctl_store *st, const struct ctl_device *d, const cJSON *models)
{
	int r = st->ops->device_upsert(st, d);
	if (r < 0)
		return r;
	if ((r = st->ops->device_models_clear(st, d->id)) < 0)
		return r;
	const cJSON *m;
	cJSON_ArrayForEach(m, models)
	{
		struct ctl_device_model dm = {.device = d->id};
		r = parse_model(m, &dm); /* validated before: cannot fail */
		if (r < 0)
			return r;
		_cleanup_free_ char *slots = NULL;
		const cJSON *s = cJSON_GetObjectItemCaseSensitive(m, "slots");
		if (s && !(slots = fl_json_print(s)))
			return -ENOMEM;
		dm.slots_json = slots;
		if ((r = st->ops->device_model_put(st, &dm)) < 0)
			return r;
	}
	return 0;
}

/* One validated state message, ready to be written (strings of D point
 * into ROOT, ID and the three printed texts). */
struct state_msg {
	cJSON *root;
	char id[CTL_DEVICE_ID_MAX + 1];
	bool online;
	struct ctl_device d;
	const cJSON *models;
	char *labels_s, *accel_s, *back_s;
	int64_t now;
};

static void state_msg_clear(struct state_msg *m)
{
	cJSON_Delete(m->root);
	free(m->labels_s);
	free(m->accel_s);
	free(m->back_s);
	memset(m, 0, sizeof(*m));
}

/* Validate a state message of device ID into *M (cleared on failure). */
static int parse_state(const char *id, const void *json, size_t len, struct state_msg *m)
{
	memset(m, 0, sizeof(*m));
	if (!id || !fl_name_valid(id, CTL_DEVICE_ID_MAX))
		return -FL_EPROTO;
	if (!json || len > CTL_STATE_MAX_BYTES)
		return -FL_ETOOBIG;
	strcpy(m->id, id);
	int r = fl_json_parse(json, len, CTL_STATE_MAX_BYTES, STATE_MAX_DEPTH, &m->root);
	if (r < 0)
		return r;
	const cJSON *root = m->root;
	r = -FL_ESCHEMA;
	if (!cJSON_IsObject(root))
		goto fail;
	static const char *const keys[] = {"v", "device", "online", "ts", "agent",
					   "hw", "labels", "models", NULL};
	if ((r = fl_json_check_keys(root, keys, NULL)) < 0)
		goto fail;
	int64_t v;
	if ((r = fl_json_get_int(root, "v", 0, 1000, &v)) < 0)
		goto fail;
	r = -FL_EUNSUPPORTED;
	if (v != 1)
		goto fail;
	const char *dev;
	if ((r = fl_json_get_str(root, "device", &dev)) < 0)
		goto fail;
	r = -FL_EPROTO;
	if (strcmp(dev, id))
		goto fail;
	if ((r = fl_json_get_bool(root, "online", &m->online)) < 0)
		goto fail;
	const char *ts;
	if (cJSON_GetObjectItemCaseSensitive(root, "ts")) {
		int64_t t;
		if ((r = fl_json_get_str(root, "ts", &ts)) < 0)
			goto fail;
		r = -FL_ESCHEMA;
		if (fl_time_parse(ts, &t) < 0)
			goto fail;
	}
	m->now = fl_now_s();
	if (!m->online) {
		/* The last will: nothing but v, device, online (and ts). */
		r = -FL_ESCHEMA;
		if (cJSON_GetArraySize(root) > 4 || cJSON_GetObjectItemCaseSensitive(root, "hw") ||
		    cJSON_GetObjectItemCaseSensitive(root, "models") ||
		    cJSON_GetObjectItemCaseSensitive(root, "labels") ||
		    cJSON_GetObjectItemCaseSensitive(root, "agent"))
			goto fail;
		return 0;
	}

	struct ctl_device *d = &m->d;
	*d = (struct ctl_device){.id = m->id, .online = true, .last_seen_s = m->now, .ram_mb = -1};
	if ((r = get_text(root, "agent", VERSION_MAX, false, &d->agent_version)) < 0)
		goto fail;
	struct parsed_hw hw;
	if ((r = parse_hw(cJSON_GetObjectItemCaseSensitive(root, "hw"), &hw)) < 0)
		goto fail;
	d->arch = hw.arch;
	d->ram_mb = hw.ram_mb;
	const cJSON *labels = cJSON_GetObjectItemCaseSensitive(root, "labels");
	if (labels && (r = check_labels(labels)) < 0)
		goto fail;
	const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
	if (models) {
		r = -FL_ESCHEMA;
		if (!cJSON_IsObject(models) || cJSON_GetArraySize(models) > CTL_MODELS_MAX)
			goto fail;
		const cJSON *mo;
		cJSON_ArrayForEach(mo, models)
		{
			struct ctl_device_model dm = {0};
			if ((r = parse_model(mo, &dm)) < 0)
				goto fail;
		}
	}
	m->models = models;
	m->labels_s = labels ? fl_json_print(labels) : strdup("{}");
	m->accel_s = fl_json_print(hw.accel);
	m->back_s = fl_json_print(hw.backends);
	r = -ENOMEM;
	if (!m->labels_s || !m->accel_s || !m->back_s)
		goto fail;
	d->labels_json = m->labels_s;
	d->accelerators_json = m->accel_s;
	d->backends_json = m->back_s;
	return 0;
fail:
	state_msg_clear(m);
	return r;
}

/* Write M (lock held, inside a transaction); counts it on success. */
static int write_state(struct ctl *c, const struct state_msg *m)
{
	struct ctl_store *st = c->store;
	if (!m->online)
		return st->ops->device_set_offline(st, m->id, m->now);
	return store_state(st, &m->d, m->models);
}

static void count_written(struct ctl *c, const struct state_msg *m)
{
	if (m->online)
		c->cnt.state_ok++;
	else
		c->cnt.state_offline++;
}

/* Write MSGS[0..N) in one transaction (lock held). */
static int write_states_txn(struct ctl *c, const struct state_msg *msgs, size_t n)
{
	struct ctl_store *st = c->store;
	int r = st->ops->begin(st);
	for (size_t i = 0; r >= 0 && i < n; i++)
		r = write_state(c, &msgs[i]);
	if (r >= 0)
		r = st->ops->commit(st);
	if (r < 0) {
		st->ops->rollback(st);
		return r;
	}
	for (size_t i = 0; i < n; i++)
		count_written(c, &msgs[i]);
	return 0;
}

static int on_state(struct ctl *c, const char *id, const void *json, size_t len)
{
	struct state_msg m;
	int r = parse_state(id, json, len, &m);
	if (r < 0)
		return r;
	pthread_mutex_lock(&c->lock);
	/* A last will alone needs no transaction. */
	if (!m.online) {
		r = write_state(c, &m);
		if (r >= 0)
			count_written(c, &m);
	} else {
		r = write_states_txn(c, &m, 1);
	}
	pthread_mutex_unlock(&c->lock);
	state_msg_clear(&m);
	return r;
}

static void count_refused(struct ctl *c, int r)
{
	if (r < 0 && r != -FL_EDB && r != -ENOMEM) {
		pthread_mutex_lock(&c->lock);
		c->cnt.state_refused++;
		pthread_mutex_unlock(&c->lock);
	}
}

int ctl_registry_on_state(struct ctl *c, const char *device_id, const void *json, size_t len)
{
	int r = on_state(c, device_id, json, len);
	count_refused(c, r);
	return r;
}

/* ---------------------------------------------------------------- batched state ingest */

struct ctl_state_batch {
	struct ctl *c;
	struct state_msg *msgs; /* CTL_STATE_BATCH_MAX, allocated by the first add */
	size_t n;
	int64_t first_ms; /* when the oldest queued message arrived */
	int64_t wait_ms;
	uint64_t batches, fallbacks;
};

int ctl_state_batch_new(struct ctl *c, struct ctl_state_batch **ret)
{
	if (!c || !ret)
		return -EINVAL;
	struct ctl_state_batch *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->c = c;
	b->wait_ms = CTL_STATE_BATCH_MS;
	*ret = b;
	return 0;
}

size_t ctl_state_batch_pending(const struct ctl_state_batch *b)
{
	return b ? b->n : 0;
}

void ctl_state_batch_set_wait(struct ctl_state_batch *b, int64_t ms)
{
	if (b)
		b->wait_ms = ms < 0 ? 0 : ms;
}

bool ctl_state_batch_due(const struct ctl_state_batch *b)
{
	return b && b->n && fl_mono_ms() - b->first_ms >= b->wait_ms;
}

int ctl_state_batch_flush(struct ctl_state_batch *b)
{
	if (!b || !b->n)
		return 0;
	struct ctl *c = b->c;
	pthread_mutex_lock(&c->lock);
	int r = write_states_txn(c, b->msgs, b->n);
	if (r < 0) {
		/* One message may be what failed: each on its own, so that the
		 * others are not lost with it. */
		b->fallbacks++;
		r = 0;
		for (size_t i = 0; i < b->n; i++) {
			int ri = write_states_txn(c, &b->msgs[i], 1);
			if (ri < 0) {
				fl_warn("registry: state of %s not stored: %s", b->msgs[i].id,
					fl_strerror(ri));
				if (r == 0)
					r = ri;
			}
		}
	}
	b->batches++;
	pthread_mutex_unlock(&c->lock);
	for (size_t i = 0; i < b->n; i++)
		state_msg_clear(&b->msgs[i]);
	b->n = 0;
	return r;
}

int ctl_state_batch_add(struct ctl_state_batch *b, const char *device_id, const void *json,
			size_t len)
{
	if (!b)
		return -EINVAL;
	if (!b->msgs && !(b->msgs = calloc(CTL_STATE_BATCH_MAX, sizeof(*b->msgs))))
		return ctl_registry_on_state(b->c, device_id, json, len); /* unbatched */
	int r = parse_state(device_id, json, len, &b->msgs[b->n]);
	if (r < 0) {
		count_refused(b->c, r);
		return r;
	}
	if (b->n++ == 0)
		b->first_ms = fl_mono_ms();
	if (b->n == CTL_STATE_BATCH_MAX || ctl_state_batch_due(b))
		return ctl_state_batch_flush(b);
	return 0;
}

void ctl_state_batch_free(struct ctl_state_batch *b)
{
	if (!b)
		return;
	ctl_state_batch_flush(b);
	free(b->msgs);
	free(b);
}

/* ---------------------------------------------------------------- device list pages */

/* Stops a scan at the first device past the page (not an error). */
#define PAGE_FULL (-ECANCELED)

struct page {
	struct fl_buf *out;
	size_t limit;  /* devices this scan may write */
	size_t n;      /* devices written by this scan */
	size_t total;  /* devices written in all */
	char last[CTL_DEVICE_ID_MAX + 1]; /* id of the last device written */
	bool more;     /* a device past LIMIT exists */
};

static int put(struct fl_buf *b, const char *s, size_t n)
{
	return fl_buf_append(b, s, n);
}
#define PUT_LIT(b, lit) put((b), (lit), sizeof(lit) - 1)

/* S as a JSON string (NULL: null). */
static int put_str(struct fl_buf *b, const char *s)
{
	if (!s)
		return PUT_LIT(b, "null");
	int r = PUT_LIT(b, "\"");
	while (r >= 0 && *s) {
		size_t k = 0;
		while (s[k] && s[k] != '"' && s[k] != '\\' && (unsigned char)s[k] >= 0x20)
			k++;
		if (k)
			r = put(b, s, k);
		s += k;
		if (r < 0 || !*s)
			break;
		char esc[8];
		unsigned char ch = (unsigned char)*s++;
		if (ch == '"' || ch == '\\') {
			esc[0] = '\\';
			esc[1] = (char)ch;
			r = put(b, esc, 2);
		} else {
			static const char hex[] = "0123456789abcdef";
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[ch >> 4];
			esc[5] = hex[ch & 15];
			r = put(b, esc, 6);
		}
	}
	return r < 0 ? r : PUT_LIT(b, "\"");
}

static int put_int(struct fl_buf *b, int64_t v)
{
	char t[24];
	size_t i = sizeof(t);
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	do {
		t[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		t[--i] = '-';
	return put(b, t + i, sizeof(t) - i);
}

/* Stored JSON text (written by this controller from a parsed document) as
 * it is; DEF when absent. */
static int put_raw(struct fl_buf *b, const char *json, const char *def)
{
	const char *s = json && *json ? json : def;
	return put(b, s, strlen(s));
}

static int page_row(void *ud, const struct ctl_device_row *d)
{
	struct page *p = ud;
	struct fl_buf *b = p->out;
	if (p->n == p->limit) {
		p->more = true;
		return PAGE_FULL;
	}
	if (strlen(d->id) > CTL_DEVICE_ID_MAX)
		return -FL_EDB;
	strcpy(p->last, d->id);
	int r = p->total ? PUT_LIT(b, ",") : 0;
	p->n++;
	p->total++;
	if (r < 0 || (r = PUT_LIT(b, "{\"id\":")) < 0 || (r = put_str(b, d->id)) < 0 ||
	    (r = PUT_LIT(b, ",\"labels\":")) < 0 || (r = put_raw(b, d->labels_json, "{}")) < 0 ||
	    (r = PUT_LIT(b, ",\"arch\":")) < 0 || (r = put_str(b, d->arch)) < 0 ||
	    (r = PUT_LIT(b, ",\"ram_mb\":")) < 0 ||
	    (r = d->has_ram ? put_int(b, d->ram_mb) : PUT_LIT(b, "null")) < 0 ||
	    (r = PUT_LIT(b, ",\"accelerators\":")) < 0 ||
	    (r = put_raw(b, d->accelerators_json, "[]")) < 0 ||
	    (r = PUT_LIT(b, ",\"backends\":")) < 0 || (r = put_raw(b, d->backends_json, "[]")) < 0 ||
	    (r = d->online ? PUT_LIT(b, ",\"online\":true") : PUT_LIT(b, ",\"online\":false")) < 0 ||
	    (r = PUT_LIT(b, ",\"last_seen\":")) < 0 || (r = put_int(b, d->last_seen_s)) < 0 ||
	    (r = PUT_LIT(b, ",\"agent\":")) < 0 || (r = put_str(b, d->agent_version)) < 0 ||
	    (r = PUT_LIT(b, ",\"versions\":")) < 0 || (r = put_raw(b, d->versions_json, "{}")) < 0)
		return r;
	return PUT_LIT(b, "}");
}

/* One store query of at most LIMIT devices after F->after into P. */
static int page_scan(struct ctl *c, const struct ctl_device_filter *f, size_t limit,
		     struct page *p)
{
	struct ctl_device_filter g = *f;
	g.limit = limit + 1; /* one more: is there a next page? */
	p->limit = limit;
	p->n = 0;
	p->more = false;
	pthread_mutex_lock(&c->lock);
	struct ctl_store *s = c->store;
	int r = s->ops2->device_scan(s, &g, page_row, p);
	pthread_mutex_unlock(&c->lock);
	return r == PAGE_FULL ? 0 : r;
}

int ctl_devices_page(struct ctl *c, const struct ctl_device_filter *f, bool all, char **ret,
		     size_t *ret_len)
{
	if (!c || !f || !ret || !ret_len || f->limit > CTL_STORE_LIST_MAX ||
	    (all && (f->limit || f->after)))
		return -EINVAL;
	size_t limit = all ? CTL_DEVICES_ALL_CHUNK : f->limit ? f->limit : CTL_DEVICES_PAGE_DEFAULT;
	struct fl_buf b = {0};
	/* One allocation for a page: ~200 bytes per device of a typical fleet. */
	b.cap = 64 + limit * 256;
	if (!(b.p = malloc(b.cap)))
		return -ENOMEM;
	b.p[0] = 0;
	struct page p = {.out = &b};
	struct ctl_device_filter g = *f;
	int r = PUT_LIT(&b, "{\"devices\":[");
	while (r >= 0) {
		r = page_scan(c, &g, limit, &p);
		if (r < 0 || !all || !p.more)
			break;
		g.after = p.last; /* the next chunk: after the last id written */
	}
	if (r >= 0)
		r = PUT_LIT(&b, "]");
	if (r >= 0 && !all && p.more && (r = PUT_LIT(&b, ",\"next\":")) >= 0)
		r = put_str(&b, p.last);
	if (r >= 0)
		r = PUT_LIT(&b, "}\n");
	if (r < 0) {
		fl_buf_free(&b);
		return r;
	}
	*ret = b.p;
	*ret_len = b.len;
	return 0;
}
