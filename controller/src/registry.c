/* Device registry: the strict state-message parser and its store updates. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "ctl_internal.h"

#define STATE_MAX_DEPTH 8
#define STR_MAX 256
#define VERSION_MAX 64
#define ERROR_MAX 1024
#define INT_MAX53 9007199254740991LL

static void free_json(cJSON **p)
{
	cJSON_Delete(*p);
}
#define _cleanup_json_ _cleanup_(free_json)

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

static int on_state(struct ctl *c, const char *id, const void *json, size_t len)
{
	if (!id || !fl_name_valid(id, CTL_DEVICE_ID_MAX))
		return -FL_EPROTO;
	if (!json || len > CTL_STATE_MAX_BYTES)
		return -FL_ETOOBIG;
	_cleanup_json_ cJSON *root = NULL;
	int r = fl_json_parse(json, len, CTL_STATE_MAX_BYTES, STATE_MAX_DEPTH, &root);
	if (r < 0)
		return r;
	if (!cJSON_IsObject(root))
		return -FL_ESCHEMA;
	static const char *const keys[] = {"v", "device", "online", "ts", "agent",
					   "hw", "labels", "models", NULL};
	if ((r = fl_json_check_keys(root, keys, NULL)) < 0)
		return r;
	int64_t v;
	if ((r = fl_json_get_int(root, "v", 0, 1000, &v)) < 0)
		return r;
	if (v != 1)
		return -FL_EUNSUPPORTED;
	const char *dev;
	if ((r = fl_json_get_str(root, "device", &dev)) < 0)
		return r;
	if (strcmp(dev, id))
		return -FL_EPROTO;
	bool online;
	if ((r = fl_json_get_bool(root, "online", &online)) < 0)
		return r;
	const char *ts;
	if (cJSON_GetObjectItemCaseSensitive(root, "ts")) {
		int64_t t;
		if ((r = fl_json_get_str(root, "ts", &ts)) < 0)
			return r;
		if (fl_time_parse(ts, &t) < 0)
			return -FL_ESCHEMA;
	}
	int64_t now = fl_now_s();
	if (!online) {
		/* The last will: nothing but v, device, online (and ts). */
		if (cJSON_GetArraySize(root) > 4 || cJSON_GetObjectItemCaseSensitive(root, "hw") ||
		    cJSON_GetObjectItemCaseSensitive(root, "models") ||
		    cJSON_GetObjectItemCaseSensitive(root, "labels") ||
		    cJSON_GetObjectItemCaseSensitive(root, "agent"))
			return -FL_ESCHEMA;
		pthread_mutex_lock(&c->lock);
		r = c->store->ops->device_set_offline(c->store, id, now);
		if (r >= 0)
			c->cnt.state_offline++;
		pthread_mutex_unlock(&c->lock);
		return r;
	}

	struct ctl_device d = {.id = id, .online = true, .last_seen_s = now, .ram_mb = -1};
	if ((r = get_text(root, "agent", VERSION_MAX, false, &d.agent_version)) < 0)
		return r;
	struct parsed_hw hw;
	if ((r = parse_hw(cJSON_GetObjectItemCaseSensitive(root, "hw"), &hw)) < 0)
		return r;
	d.arch = hw.arch;
	d.ram_mb = hw.ram_mb;
	const cJSON *labels = cJSON_GetObjectItemCaseSensitive(root, "labels");
	if (labels && (r = check_labels(labels)) < 0)
		return r;
	const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
	if (models) {
		if (!cJSON_IsObject(models) || cJSON_GetArraySize(models) > CTL_MODELS_MAX)
			return -FL_ESCHEMA;
		const cJSON *m;
		cJSON_ArrayForEach(m, models)
		{
			struct ctl_device_model dm = {0};
			if ((r = parse_model(m, &dm)) < 0)
				return r;
		}
	}
	_cleanup_free_ char *labels_s = labels ? fl_json_print(labels) : strdup("{}");
	_cleanup_free_ char *accel_s = fl_json_print(hw.accel);
	_cleanup_free_ char *back_s = fl_json_print(hw.backends);
	if (!labels_s || !accel_s || !back_s)
		return -ENOMEM;
	d.labels_json = labels_s;
	d.accelerators_json = accel_s;
	d.backends_json = back_s;

	pthread_mutex_lock(&c->lock);
	struct ctl_store *st = c->store;
	r = st->ops->begin(st);
	if (r >= 0) {
		r = store_state(st, &d, models);
		if (r >= 0)
			r = st->ops->commit(st);
		if (r < 0)
			st->ops->rollback(st);
	}
	if (r >= 0)
		c->cnt.state_ok++;
	pthread_mutex_unlock(&c->lock);
	return r;
}

int ctl_registry_on_state(struct ctl *c, const char *device_id, const void *json, size_t len)
{
	int r = on_state(c, device_id, json, len);
	if (r < 0 && r != -FL_EDB && r != -ENOMEM) {
		pthread_mutex_lock(&c->lock);
		c->cnt.state_refused++;
		pthread_mutex_unlock(&c->lock);
	}
	return r;
}
