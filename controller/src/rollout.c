/* Staged rollouts: specification, operator actions and the engine's tick. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "ctl_internal.h"
#include "health.h"
#include "release.h"
#include "rollout.h"

FL_DEFINE_CLEANUP(cJSON, cJSON_Delete)

/* ---------------------------------------------------------------- helpers */

static bool label_str_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > CTL_LABEL_VALUE_MAX)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			return false;
	return true;
}

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *k, double def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static bool jbool(const cJSON *o, const char *k)
{
	return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, k));
}

static int set_num(cJSON *o, const char *k, double v)
{
	cJSON *n = cJSON_CreateNumber(v);
	if (!n)
		return -ENOMEM;
	if (cJSON_GetObjectItemCaseSensitive(o, k))
		return cJSON_ReplaceItemInObjectCaseSensitive(o, k, n) ? 0 : (cJSON_Delete(n), -ENOMEM);
	return cJSON_AddItemToObject(o, k, n) ? 0 : (cJSON_Delete(n), -ENOMEM);
}

static int set_str(cJSON *o, const char *k, const char *v)
{
	cJSON *n = v ? cJSON_CreateString(v) : cJSON_CreateNull();
	if (!n)
		return -ENOMEM;
	if (cJSON_GetObjectItemCaseSensitive(o, k))
		return cJSON_ReplaceItemInObjectCaseSensitive(o, k, n) ? 0 : (cJSON_Delete(n), -ENOMEM);
	return cJSON_AddItemToObject(o, k, n) ? 0 : (cJSON_Delete(n), -ENOMEM);
}

static int set_bool(cJSON *o, const char *k, bool v)
{
	cJSON *n = cJSON_CreateBool(v);
	if (!n)
		return -ENOMEM;
	if (cJSON_GetObjectItemCaseSensitive(o, k))
		return cJSON_ReplaceItemInObjectCaseSensitive(o, k, n) ? 0 : (cJSON_Delete(n), -ENOMEM);
	return cJSON_AddItemToObject(o, k, n) ? 0 : (cJSON_Delete(n), -ENOMEM);
}

static int fail(char *err, size_t n, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t n, int code, const char *fmt, ...)
{
	if (err && n) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, n, fmt, ap);
		va_end(ap);
	}
	return code;
}

/* The bundle version the rollout's release has for device D: the most
 * specific variant that fits its class, or (rollouts of one bundle, and
 * documents written before releases had variants) release.bundles by arch,
 * then "*". NULL: no variant fits. */
static const char *release_version(const cJSON *body, const struct ctl_rollout_dev *d)
{
	const cJSON *rel = cJSON_GetObjectItemCaseSensitive(body, "release");
	const cJSON *vars = cJSON_GetObjectItemCaseSensitive(rel, "variants");
	if (vars) {
		struct ctl_hw hw = {.arch = d->arch,
				    .ram_mb = d->ram_mb,
				    .accelerators_json = d->accelerators_json,
				    .backends_json = d->backends_json};
		int i = ctl_release_pick(vars, &hw);
		return i < 0 ? NULL : jstr(cJSON_GetArrayItem(vars, i), "bundle");
	}
	const cJSON *b = cJSON_GetObjectItemCaseSensitive(rel, "bundles");
	const char *v = d->arch ? jstr(b, d->arch) : NULL;
	return v ? v : jstr(b, "*");
}

static int store_body(struct ctl *c, int64_t id, const cJSON *body, int64_t now_s)
{
	_cleanup_free_ char *s = cJSON_PrintUnformatted(body);
	if (!s)
		return -ENOMEM;
	return c->store->ops->rollout_update(c->store, id, s, now_s);
}

static int load_body(struct ctl *c, int64_t id, cJSON **ret)
{
	_cleanup_free_ char *s = NULL;
	int r = c->store->ops->rollout_get(c->store, id, &s);
	if (r < 0)
		return r;
	cJSON *o = cJSON_Parse(s);
	if (!o)
		return -FL_EDB; /* we wrote it: a bad body is a corrupt store */
	*ret = o;
	return 0;
}

static int audit(struct ctl *c, int64_t now_s, const char *actor, const char *action, int64_t id,
		 const char *why)
{
	_cleanup_free_ char *reason = fl_asprintf("rollout %lld: %s", (long long)id, why);
	if (!reason)
		return -ENOMEM;
	return c->store->ops->audit(c->store, now_s, actor ? actor : "", action, reason);
}

static cJSON *with_id(const cJSON *body, int64_t id)
{
	cJSON *o = cJSON_Duplicate(body, true);
	if (o && set_num(o, "id", (double)id) < 0) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/* ---------------------------------------------------------------- create */

static int parse_select(const cJSON *sel, cJSON *out, char *err, size_t en)
{
	static const char *const keys[] = {"labels", "arch", "devices", NULL};
	if (!cJSON_IsObject(sel))
		return fail(err, en, -FL_ESCHEMA, "select: expected an object");
	const char *bad = NULL;
	if (fl_json_check_keys(sel, keys, &bad) < 0)
		return fail(err, en, -FL_ESCHEMA,
			    "select: unknown member '%.64s' (labels, arch, devices)", bad);
	cJSON *labels = cJSON_AddObjectToObject(out, "labels");
	if (!labels)
		return -ENOMEM;
	const cJSON *l = cJSON_GetObjectItemCaseSensitive(sel, "labels");
	if (l) {
		if (!cJSON_IsObject(l) || cJSON_GetArraySize(l) > CTL_ROLLOUT_SELECT_LABELS_MAX)
			return fail(err, en, -FL_ESCHEMA,
				    "select.labels: expected an object of at most %d strings",
				    CTL_ROLLOUT_SELECT_LABELS_MAX);
		const cJSON *it;
		cJSON_ArrayForEach(it, l) {
			if (!cJSON_IsString(it) || !label_str_ok(it->string) ||
			    !label_str_ok(it->valuestring))
				return fail(err, en, -FL_ESCHEMA,
					    "select.labels: each value a string of 1..%d "
					    "characters, no control characters",
					    CTL_LABEL_VALUE_MAX);
			if (!cJSON_AddStringToObject(labels, it->string, it->valuestring))
				return -ENOMEM;
		}
	}
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(sel, "arch");
	if (a) {
		if (!cJSON_IsString(a) || !fl_name_valid(a->valuestring, 64))
			return fail(err, en, -FL_ESCHEMA, "select.arch: expected a name");
		if (!cJSON_AddStringToObject(out, "arch", a->valuestring))
			return -ENOMEM;
	}
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(sel, "devices");
	if (d) {
		if (!cJSON_IsArray(d) || cJSON_GetArraySize(d) < 1 ||
		    cJSON_GetArraySize(d) > CTL_ROLLOUT_SELECT_DEVICES_MAX)
			return fail(err, en, -FL_ESCHEMA, "select.devices: expected 1..%d device ids",
				    CTL_ROLLOUT_SELECT_DEVICES_MAX);
		cJSON *arr = cJSON_AddArrayToObject(out, "devices");
		if (!arr)
			return -ENOMEM;
		const cJSON *it;
		cJSON_ArrayForEach(it, d) {
			if (!cJSON_IsString(it) || !fl_name_valid(it->valuestring, CTL_DEVICE_ID_MAX))
				return fail(err, en, -FL_ESCHEMA,
					    "select.devices: each a device id (name of 1..%d "
					    "characters)",
					    CTL_DEVICE_ID_MAX);
			cJSON *s = cJSON_CreateString(it->valuestring);
			if (!s || !cJSON_AddItemToArray(arr, s)) {
				cJSON_Delete(s);
				return -ENOMEM;
			}
		}
	}
	return 0;
}

/* "HH:MM" -> minutes of the day, -1 when malformed. */
static int hhmm(const char *s)
{
	if (!s || strlen(s) != 5 || s[2] != ':')
		return -1;
	for (int i = 0; i < 5; i++)
		if (i != 2 && (s[i] < '0' || s[i] > '9'))
			return -1;
	int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
	return h < 24 && m < 60 ? h * 60 + m : -1;
}

static const char *const weekdays[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

/* Maintenance windows: [{"labels": {..}, "start": "HH:MM", "end": "HH:MM",
 * "days": ["mon", ...]}] (UTC). */
static int parse_windows(const cJSON *in, cJSON *out, char *err, size_t en)
{
	static const char *const keys[] = {"labels", "start", "end", "days", NULL};
	if (!cJSON_IsArray(in) || cJSON_GetArraySize(in) < 1 ||
	    cJSON_GetArraySize(in) > CTL_ROLLOUT_WINDOWS_MAX)
		return fail(err, en, -FL_ESCHEMA, "windows: expected an array of 1..%d windows",
			    CTL_ROLLOUT_WINDOWS_MAX);
	int i = 0;
	const cJSON *w;
	cJSON_ArrayForEach(w, in) {
		const char *bad = NULL;
		if (!cJSON_IsObject(w))
			return fail(err, en, -FL_ESCHEMA, "windows[%d]: expected an object", i);
		if (fl_json_check_keys(w, keys, &bad) < 0)
			return fail(err, en, -FL_ESCHEMA,
				    "windows[%d]: unknown member '%.64s' (labels, start, end, days)",
				    i, bad);
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(out, o)) {
			cJSON_Delete(o);
			return -ENOMEM;
		}
		cJSON *labels = cJSON_AddObjectToObject(o, "labels");
		if (!labels)
			return -ENOMEM;
		const cJSON *l = cJSON_GetObjectItemCaseSensitive(w, "labels");
		if (!cJSON_IsObject(l) || cJSON_GetArraySize(l) > CTL_ROLLOUT_SELECT_LABELS_MAX)
			return fail(err, en, -FL_ESCHEMA,
				    "windows[%d].labels: expected an object of at most %d strings", i,
				    CTL_ROLLOUT_SELECT_LABELS_MAX);
		const cJSON *it;
		cJSON_ArrayForEach(it, l) {
			if (!cJSON_IsString(it) || !label_str_ok(it->string) ||
			    !label_str_ok(it->valuestring))
				return fail(err, en, -FL_ESCHEMA,
					    "windows[%d].labels: each value a string", i);
			if (!cJSON_AddStringToObject(labels, it->string, it->valuestring))
				return -ENOMEM;
		}
		static const char *const se[] = {"start", "end"};
		for (int k = 0; k < 2; k++) {
			const cJSON *v = cJSON_GetObjectItemCaseSensitive(w, se[k]);
			if (!cJSON_IsString(v) || hhmm(v->valuestring) < 0)
				return fail(err, en, -FL_ESCHEMA,
					    "windows[%d].%s: expected \"HH:MM\" (UTC)", i, se[k]);
			if (!cJSON_AddStringToObject(o, se[k], v->valuestring))
				return -ENOMEM;
		}
		const cJSON *d = cJSON_GetObjectItemCaseSensitive(w, "days");
		if (d) {
			if (!cJSON_IsArray(d) || cJSON_GetArraySize(d) < 1 || cJSON_GetArraySize(d) > 7)
				return fail(err, en, -FL_ESCHEMA,
					    "windows[%d].days: expected 1..7 of sun, mon, ..., sat", i);
			cJSON *days = cJSON_AddArrayToObject(o, "days");
			if (!days)
				return -ENOMEM;
			cJSON_ArrayForEach(it, d) {
				bool known = false, dup = false;
				for (int k = 0; k < 7 && cJSON_IsString(it); k++)
					known |= !strcmp(it->valuestring, weekdays[k]);
				const cJSON *x;
				cJSON_ArrayForEach(x, days)
					dup |= known && !strcmp(x->valuestring, it->valuestring);
				if (!known || dup)
					return fail(err, en, -FL_ESCHEMA,
						    "windows[%d].days: expected distinct sun, mon, ..., "
						    "sat",
						    i);
				if (!cJSON_AddItemToArray(days, cJSON_CreateString(it->valuestring)))
					return -ENOMEM;
			}
		}
		i++;
	}
	return 0;
}

/* True when NOW_S (UTC) lies in window W. */
static bool in_window(const cJSON *w, int64_t now_s)
{
	int64_t day = now_s >= 0 ? now_s / 86400 : (now_s - 86399) / 86400;
	int minute = (int)((now_s - day * 86400) / 60);
	int wd = (int)(((day % 7) + 7 + 4) % 7); /* 1970-01-01 was a Thursday */
	const cJSON *days = cJSON_GetObjectItemCaseSensitive(w, "days");
	if (days) {
		bool ok = false;
		const cJSON *it;
		cJSON_ArrayForEach(it, days)
			ok |= cJSON_IsString(it) && !strcmp(it->valuestring, weekdays[wd]);
		if (!ok)
			return false;
	}
	int a = hhmm(jstr(w, "start")), b = hhmm(jstr(w, "end"));
	if (a < 0 || b < 0)
		return false;
	return a <= b ? minute >= a && minute < b : minute >= a || minute < b;
}

/* A getter's error as a message naming KEY. */
static int member_err(int r, const char *key, const char *what, char *err, size_t en)
{
	if (r == -FL_ERANGE)
		return fail(err, en, r, "%s: expected %s", key, what);
	return fail(err, en, r, "%s: wrong type, expected %s", key, what);
}

/* Validate the API body into a fresh rollout document (the release member
 * is filled by the caller). */
static int parse_spec(const void *json, size_t len, int64_t now_s, const char *actor,
		      cJSON **ret, char *err, size_t en)
{
	static const char *const keys[] = {"model",	     "version",	       "release",
					   "select",	     "waves",	       "wave_unit",
					   "soak_s",	     "max_concurrent", "max_failure_rate",
					   "min_sample",     "revert_on_halt", "gates",
					   "windows",	     NULL};
	_cleanup_(cJSON_Deletep) cJSON *in = NULL;
	int r = fl_json_parse(json, len, CTL_ROLLOUT_BODY_MAX, 6, &in);
	if (r < 0)
		return fail(err, en, r, "body: %s", fl_strerror(r));
	if (!cJSON_IsObject(in))
		return fail(err, en, -FL_ESCHEMA, "body: expected a JSON object");
	const char *bad = NULL;
	if (fl_json_check_keys(in, keys, &bad) < 0)
		return fail(err, en, -FL_ESCHEMA, "unknown member '%.64s'", bad);
	const char *model, *version = NULL, *release = NULL, *unit;
	int64_t soak, maxc, mins;
	double rate;
	bool roh;
	if ((r = fl_json_get_str(in, "model", &model)) < 0)
		return member_err(r, "model", "a string", err, en);
	bool has_v = cJSON_GetObjectItemCaseSensitive(in, "version") != NULL;
	bool has_r = cJSON_GetObjectItemCaseSensitive(in, "release") != NULL;
	if (has_v == has_r)
		return fail(err, en, -FL_ESCHEMA,
			    "give either version (one bundle) or release (a release's version)");
	if (has_v && (r = fl_json_get_str(in, "version", &version)) < 0)
		return member_err(r, "version", "a string", err, en);
	if (has_r && (r = fl_json_get_str(in, "release", &release)) < 0)
		return member_err(r, "release", "a string (the release's version)", err, en);
	if ((r = fl_json_get_str_opt(in, "wave_unit", "percent", &unit)) < 0)
		return member_err(r, "wave_unit", "\"percent\" or \"count\"", err, en);
	if ((r = fl_json_get_int_opt(in, "soak_s", 0, CTL_ROLLOUT_SOAK_MAX_S, 300, &soak)) < 0)
		return member_err(r, "soak_s", "an integer 0..2592000", err, en);
	if ((r = fl_json_get_int_opt(in, "max_concurrent", 1, CTL_MAX_TRACKED_DEVICES, 100,
				     &maxc)) < 0)
		return member_err(r, "max_concurrent", "an integer 1..200000", err, en);
	if ((r = fl_json_get_double_opt(in, "max_failure_rate", 0.0, 1.0, 0.1, &rate)) < 0)
		return member_err(r, "max_failure_rate", "a number 0..1", err, en);
	if ((r = fl_json_get_int_opt(in, "min_sample", 1, CTL_MAX_TRACKED_DEVICES, 5, &mins)) < 0)
		return member_err(r, "min_sample", "an integer 1..200000", err, en);
	if ((r = fl_json_get_bool_opt(in, "revert_on_halt", false, &roh)) < 0)
		return member_err(r, "revert_on_halt", "true or false", err, en);
	if (!fl_name_valid(model, 64))
		return fail(err, en, -EINVAL, "model: not a valid name");
	if (!ctl_version_valid(version ? version : release))
		return fail(err, en, -EINVAL, "%s: 1..64 printable characters, no blanks",
			    version ? "version" : "release");
	bool percent = !strcmp(unit, "percent");
	if (!percent && strcmp(unit, "count"))
		return fail(err, en, -FL_ESCHEMA, "wave_unit: expected \"percent\" or \"count\"");
	const cJSON *w;
	if ((r = fl_json_get_arr(in, "waves", &w)) < 0)
		return member_err(r, "waves", "an array of integers", err, en);
	int nw = cJSON_GetArraySize(w);
	if (nw < 1 || nw > CTL_ROLLOUT_WAVES_MAX)
		return fail(err, en, -FL_ERANGE, "waves: expected 1..%d waves",
			    CTL_ROLLOUT_WAVES_MAX);
	cJSON *out = cJSON_CreateObject();
	if (!out)
		return -ENOMEM;
	_cleanup_(cJSON_Deletep) cJSON *o = out;
	cJSON *waves = cJSON_AddArrayToObject(o, "waves");
	if (!waves)
		return -ENOMEM;
	int64_t prev = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, w) {
		if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble))
			return fail(err, en, -FL_ESCHEMA, "waves: each an integer");
		double v = it->valuedouble;
		if (v <= (double)prev || v > (percent ? 100.0 : (double)CTL_MAX_TRACKED_DEVICES))
			return fail(err, en, -FL_ERANGE,
				    "waves: strictly increasing, cumulative, %s",
				    percent ? "1..100 percent" : "1..200000 devices");
		prev = (int64_t)v;
		if (!cJSON_AddItemToArray(waves, cJSON_CreateNumber(v)))
			return -ENOMEM;
	}
	if (percent && prev != 100)
		return fail(err, en, -FL_ERANGE, "waves: the last percent wave must be 100");
	cJSON *sel = cJSON_AddObjectToObject(o, "select");
	if (!sel)
		return -ENOMEM;
	const cJSON *si = cJSON_GetObjectItemCaseSensitive(in, "select");
	if (si && (r = parse_select(si, sel, err, en)) < 0)
		return r;
	else if (!si && !cJSON_AddObjectToObject(sel, "labels"))
		return -ENOMEM;
	const cJSON *wi = cJSON_GetObjectItemCaseSensitive(in, "windows");
	if (wi) {
		cJSON *windows = cJSON_AddArrayToObject(o, "windows");
		if (!windows)
			return -ENOMEM;
		if ((r = parse_windows(wi, windows, err, en)) < 0)
			return r;
	}
	const cJSON *gi = cJSON_GetObjectItemCaseSensitive(in, "gates");
	if (gi) {
		cJSON *gates = cJSON_AddObjectToObject(o, "gates");
		if (!gates)
			return -ENOMEM;
		if ((r = ctl_health_gates_parse(gi, gates, err, en)) < 0)
			return r;
	}
	if (version) {
		cJSON *rel = cJSON_AddObjectToObject(o, "release");
		cJSON *bundles = rel ? cJSON_AddObjectToObject(rel, "bundles") : NULL;
		if (!bundles || !cJSON_AddStringToObject(rel, "model", model) ||
		    !cJSON_AddStringToObject(bundles, "*", version))
			return -ENOMEM;
	}
	if (!cJSON_AddStringToObject(o, "model", model) ||
	    !cJSON_AddStringToObject(o, "version", version ? version : release) ||
	    !cJSON_AddStringToObject(o, "wave_unit", unit) ||
	    set_num(o, "soak_s", (double)soak) < 0 || set_num(o, "max_concurrent", (double)maxc) < 0 ||
	    set_num(o, "max_failure_rate", rate) < 0 || set_num(o, "min_sample", (double)mins) < 0 ||
	    set_bool(o, "revert_on_halt", roh) < 0 || set_str(o, "state", "running") < 0 ||
	    set_num(o, "wave", 0) < 0 || set_num(o, "wave_started_at", (double)now_s) < 0 ||
	    set_str(o, "wave_done_at", NULL) < 0 || set_num(o, "created_at", (double)now_s) < 0 ||
	    set_str(o, "created_by", actor ? actor : "") < 0 ||
	    set_str(o, "gate_crossed_at", NULL) < 0 || set_str(o, "halted_at", NULL) < 0 ||
	    set_str(o, "reason", "created") < 0 || set_bool(o, "revert_pending", false) < 0 ||
	    set_num(o, "updated_at", (double)now_s) < 0)
		return -ENOMEM;
	*ret = o;
	o = NULL;
	return 0;
}

/* Fill the rollout's "release" from the stored release MODEL@VERSION
 * (locked). */
static int attach_release(struct ctl *c, cJSON *body, char *err, size_t en)
{
	const char *model = jstr(body, "model"), *version = jstr(body, "version");
	_cleanup_free_ char *text = NULL;
	int64_t rel_id = 0;
	int r = c->store->ops->release_get(c->store, 0, model, version, &rel_id, &text);
	if (r == -ENOENT)
		return fail(err, en, r, "no release %s@%s (create it first)", model, version);
	if (r < 0)
		return r;
	cJSON *stored = cJSON_Parse(text);
	const cJSON *vars = cJSON_GetObjectItemCaseSensitive(stored, "variants");
	cJSON *rel = cJSON_CreateObject();
	cJSON *vcopy = vars ? cJSON_Duplicate(vars, true) : NULL;
	if (!stored || !vars) {
		r = -FL_EDB;
	} else if (!rel || !vcopy || !cJSON_AddNumberToObject(rel, "id", (double)rel_id) ||
		   !cJSON_AddStringToObject(rel, "model", model) ||
		   !cJSON_AddStringToObject(rel, "version", version) ||
		   !cJSON_AddItemToObject(rel, "variants", vcopy)) {
		r = -ENOMEM;
	} else {
		vcopy = NULL;
		r = cJSON_AddItemToObject(body, "release", rel) ? 0 : -ENOMEM;
		if (r == 0)
			rel = NULL;
	}
	cJSON_Delete(vcopy);
	cJSON_Delete(rel);
	cJSON_Delete(stored);
	return r;
}

int ctl_rollout_create_ex(struct ctl *c, const void *json, size_t len, const char *actor,
			  int64_t now_s, cJSON **ret, char *err, size_t err_len)
{
	if (!c || !json || !ret)
		return -EINVAL;
	if (err && err_len)
		err[0] = 0;
	_cleanup_(cJSON_Deletep) cJSON *body = NULL;
	int r = parse_spec(json, len, now_s, actor, &body, err, err_len);
	if (r < 0)
		return r;
	bool by_release = !cJSON_GetObjectItemCaseSensitive(body, "release");
	pthread_mutex_lock(&c->lock);
	_cleanup_free_ char *env = NULL;
	_cleanup_free_ char *text = NULL;
	int64_t id = 0;
	if (by_release) {
		r = attach_release(c, body, err, err_len);
	} else {
		r = c->store->ops->bundle_envelope(c->store, jstr(body, "model"),
						   jstr(body, "version"), &env);
		if (r == -ENOENT)
			fail(err, err_len, r, "bundle %s@%s was not pushed", jstr(body, "model"),
			     jstr(body, "version"));
	}
	if (r >= 0 && !(text = cJSON_PrintUnformatted(body)))
		r = -ENOMEM;
	if (r >= 0 && (r = c->store->ops->begin(c->store)) >= 0) {
		r = c->store->ops->rollout_insert(c->store, text, now_s, &id);
		if (r >= 0) {
			_cleanup_free_ char *waves = cJSON_PrintUnformatted(
				cJSON_GetObjectItemCaseSensitive(body, "waves"));
			_cleanup_free_ char *sel = cJSON_PrintUnformatted(
				cJSON_GetObjectItemCaseSensitive(body, "select"));
			const cJSON *g = cJSON_GetObjectItemCaseSensitive(body, "gates");
			_cleanup_free_ char *gates = g ? cJSON_PrintUnformatted(g) : strdup("none");
			_cleanup_free_ char *why =
				waves && sel && gates
					? fl_asprintf("created: %s%s@%s waves %s (%s) soak %.0f s, "
						      "max concurrent %.0f, halt above failure "
						      "rate %.3f (min sample %.0f)%s, health gates "
						      "%s, select %s",
						      by_release ? "release " : "",
						      jstr(body, "model"), jstr(body, "version"),
						      waves, jstr(body, "wave_unit"),
						      jnum(body, "soak_s", 0),
						      jnum(body, "max_concurrent", 0),
						      jnum(body, "max_failure_rate", 0),
						      jnum(body, "min_sample", 0),
						      jbool(body, "revert_on_halt")
							      ? ", revert on halt"
							      : "",
						      gates, sel)
					: NULL;
			r = why ? audit(c, now_s, actor, "rollout.create", id, why) : -ENOMEM;
		}
		if (r >= 0)
			r = c->store->ops->commit(c->store);
		if (r < 0)
			c->store->ops->rollback(c->store);
	}
	pthread_mutex_unlock(&c->lock);
	if (r < 0)
		return r;
	cJSON *o = with_id(body, id);
	if (!o)
		return -ENOMEM;
	*ret = o;
	return 0;
}

int ctl_rollout_create(struct ctl *c, const void *json, size_t len, const char *actor,
		       int64_t now_s, cJSON **ret)
{
	return ctl_rollout_create_ex(c, json, len, actor, now_s, ret, NULL, 0);
}

/* ---------------------------------------------------------------- queries */

int ctl_rollout_get(struct ctl *c, int64_t id, cJSON **ret)
{
	if (!c || !ret)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	cJSON *body = NULL;
	int r = load_body(c, id, &body);
	pthread_mutex_unlock(&c->lock);
	if (r < 0)
		return r;
	r = set_num(body, "id", (double)id);
	if (r < 0) {
		cJSON_Delete(body);
		return r;
	}
	*ret = body;
	return 0;
}

int ctl_rollout_list(struct ctl *c, cJSON **ret)
{
	if (!c || !ret)
		return -EINVAL;
	_cleanup_free_ int64_t *ids = calloc(CTL_ROLLOUTS_MAX, sizeof(*ids));
	_cleanup_(cJSON_Deletep) cJSON *o = cJSON_CreateObject();
	cJSON *arr = o ? cJSON_AddArrayToObject(o, "rollouts") : NULL;
	if (!ids || !arr)
		return -ENOMEM;
	size_t n = 0;
	pthread_mutex_lock(&c->lock);
	int r = c->store->ops->rollout_list(c->store, ids, CTL_ROLLOUTS_MAX, &n);
	for (size_t i = 0; r >= 0 && i < n; i++) {
		cJSON *b = NULL;
		r = load_body(c, ids[i], &b);
		if (r >= 0 && (r = set_num(b, "id", (double)ids[i])) >= 0)
			r = cJSON_AddItemToArray(arr, b) ? 0 : -ENOMEM;
		if (r < 0)
			cJSON_Delete(b);
	}
	pthread_mutex_unlock(&c->lock);
	if (r < 0)
		return r;
	*ret = o;
	o = NULL;
	return 0;
}

/* ---------------------------------------------------------------- actions */

int ctl_rollout_action(struct ctl *c, int64_t id, const char *action, const char *actor,
		       int64_t now_s, cJSON **ret)
{
	if (!c || !action)
		return -EINVAL;
	const char *to;
	if (!strcmp(action, "pause"))
		to = "paused";
	else if (!strcmp(action, "resume"))
		to = "running";
	else if (!strcmp(action, "abort"))
		to = "aborted";
	else if (!strcmp(action, "rollback"))
		to = "rolled_back";
	else
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	cJSON *body = NULL;
	/* Read and write in one transaction (PostgreSQL: the row locked), so
	 * that the engine of another instance cannot overwrite the action. */
	int r = c->store->ops->begin(c->store);
	if (r < 0) {
		pthread_mutex_unlock(&c->lock);
		return r;
	}
	r = load_body(c, id, &body);
	if (r >= 0) {
		const char *st = jstr(body, "state");
		st = st ? st : "";
		bool ok = !strcmp(action, "pause")	  ? !strcmp(st, "running")
			  : !strcmp(action, "resume") ? !strcmp(st, "paused")
			  : !strcmp(action, "abort")  ? (!strcmp(st, "running") ||
							 !strcmp(st, "paused") ||
							 !strcmp(st, "halted"))
						      : strcmp(st, "rolled_back") != 0;
		if (!ok)
			r = -FL_ESTATE;
	}
	_cleanup_free_ char *why = NULL;
	if (r >= 0) {
		why = fl_asprintf("%s by operator: %s -> %s", action, jstr(body, "state"), to);
		r = why ? 0 : -ENOMEM;
	}
	if (r >= 0 && (r = set_str(body, "state", to)) >= 0 &&
	    (r = set_str(body, "reason", why)) >= 0 &&
	    (r = set_num(body, "updated_at", (double)now_s)) >= 0 && !strcmp(action, "rollback"))
		r = set_bool(body, "revert_pending", true);
	if (r >= 0 && !strcmp(action, "resume"))
		r = set_num(body, "wave_started_at", (double)now_s);
	if (r >= 0)
		r = store_body(c, id, body, now_s);
	if (r >= 0)
		r = audit(c, now_s, actor, "rollout.action", id, why);
	if (r >= 0)
		r = c->store->ops->commit(c->store);
	if (r < 0)
		c->store->ops->rollback(c->store);
	pthread_mutex_unlock(&c->lock);
	if (r >= 0 && ret) {
		r = set_num(body, "id", (double)id);
		if (r >= 0) {
			*ret = body;
			body = NULL;
		}
	}
	cJSON_Delete(body);
	return r;
}

/* ---------------------------------------------------------------- engine */

enum outcome { O_NONE, O_PROGRESS, O_OK, O_FAIL };

/* A device the rollout sent a deploy to before this instance ran the engine
 * (another instance, or this process before a restart) that is online but
 * shows no install of the version this long after the takeover is sent the
 * deploy again, once (audited as rollout.redeploy): the command may have
 * been lost with the process that queued it (killed between recording and
 * publishing it). The agent takes a repeated deploy of what it is fetching
 * or runs as a no-op. */
#define ROLLOUT_RESEND_S 20

struct target {
	uint64_t hash;
	char id[CTL_DEVICE_ID_MAX + 1];
	char version[CTL_VERSION_MAX + 1];
	enum outcome out;
	bool sent, reverted, on_version;
	bool window_ok; /* may be sent a deploy now (maintenance windows) */
	bool stale;     /* sent, online, no install of it after ROLLOUT_RESEND_S */
	bool stale_revert; /* sent a revert, online, still on it after that */
};

struct scan {
	const cJSON *body;
	int64_t rid;
	const cJSON *labels, *devices;
	const char *arch;
	struct target *t;
	size_t n, cap;
	size_t skipped; /* selected, but no variant of the release fits */
	const cJSON *windows;
	int64_t now_s;
	int64_t since_s; /* this instance runs the engine since */
	int err;
};

/* Maintenance windows: a device that matches the labels of one or more
 * windows may be sent a deploy only inside one of them. */
static bool window_ok(const struct scan *sc, const struct ctl_rollout_dev *d)
{
	if (!sc->windows || d->sent)
		return true;
	cJSON *l = d->labels_json ? cJSON_Parse(d->labels_json) : NULL;
	bool matched = false, inside = false;
	const cJSON *w;
	cJSON_ArrayForEach(w, sc->windows) {
		bool m = true;
		const cJSON *it;
		cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(w, "labels")) {
			const char *v = jstr(l, it->string);
			if (!v || strcmp(v, it->valuestring))
				m = false;
		}
		if (!m)
			continue;
		matched = true;
		if (in_window(w, sc->now_s)) {
			inside = true;
			break;
		}
	}
	cJSON_Delete(l);
	return !matched || inside;
}

static uint64_t fnv(int64_t rid, const char *id)
{
	uint64_t h = 1469598103934665603ULL;
	char pre[24];
	int n = fl_snprintf(pre, sizeof(pre), "%lld:", (long long)rid);
	for (int i = 0; i < n; i++)
		h = (h ^ (uint8_t)pre[i]) * 1099511628211ULL;
	for (; *id; id++)
		h = (h ^ (uint8_t)*id) * 1099511628211ULL;
	return h;
}

static bool selected(struct scan *sc, const struct ctl_rollout_dev *d)
{
	if (sc->arch && (!d->arch || strcmp(sc->arch, d->arch)))
		return false;
	if (sc->devices) {
		bool found = false;
		const cJSON *it;
		cJSON_ArrayForEach(it, sc->devices) {
			if (!strcmp(it->valuestring, d->id)) {
				found = true;
				break;
			}
		}
		if (!found)
			return false;
	}
	if (cJSON_GetArraySize(sc->labels) > 0) {
		cJSON *l = d->labels_json ? cJSON_Parse(d->labels_json) : NULL;
		bool ok = l != NULL;
		const cJSON *it;
		cJSON_ArrayForEach(it, sc->labels) {
			const char *v = ok ? jstr(l, it->string) : NULL;
			if (!v || strcmp(v, it->valuestring))
				ok = false;
		}
		cJSON_Delete(l);
		if (!ok)
			return false;
	}
	return true;
}

static enum outcome classify(const struct ctl_rollout_dev *d, const char *version)
{
	if (d->install_version && !strcmp(d->install_version, version) && d->install_state) {
		const char *s = d->install_state;
		if (!strcmp(s, "COMMITTED"))
			return O_OK;
		if (!strcmp(s, "REJECTED") || !strcmp(s, "ROLLED_BACK") ||
		    !strcmp(s, "REVERTING") || !strcmp(s, "FAILED"))
			return O_FAIL;
		return O_PROGRESS;
	}
	if (d->current_version && !strcmp(d->current_version, version))
		return O_OK;
	return d->sent ? O_PROGRESS : O_NONE;
}

static int scan_cb(void *ud, const struct ctl_rollout_dev *d)
{
	struct scan *sc = ud;
	if (!d->sent && !selected(sc, d))
		return 0;
	if (strlen(d->id) > CTL_DEVICE_ID_MAX)
		return 0;
	const char *version = release_version(sc->body, d);
	if (!version) {
		sc->skipped++;
		return 0;
	}
	if (sc->n == sc->cap) {
		size_t cap = sc->cap ? sc->cap * 2 : 256;
		if (cap > CTL_MAX_TRACKED_DEVICES)
			return -FL_ETOOBIG;
		struct target *t = realloc(sc->t, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		sc->t = t;
		sc->cap = cap;
	}
	struct target *t = &sc->t[sc->n++];
	t->hash = fnv(sc->rid, d->id);
	memcpy(t->id, d->id, strlen(d->id) + 1);
	fl_snprintf(t->version, sizeof(t->version), "%s", version);
	t->out = classify(d, version);
	t->sent = d->sent;
	t->reverted = d->reverted;
	t->on_version = d->current_version && !strcmp(d->current_version, version);
	t->window_ok = t->out == O_NONE ? window_ok(sc, d) : true;
	t->stale = d->sent && !d->reverted && d->online && t->out == O_PROGRESS &&
		   !(d->install_version && !strcmp(d->install_version, version)) &&
		   sc->since_s > 0 && d->sent_at < sc->since_s &&
		   sc->now_s - sc->since_s >= ROLLOUT_RESEND_S;
	/* the same for a revert recorded by the previous engine */
	t->stale_revert = d->sent && d->reverted && d->online && t->on_version &&
			  sc->since_s > 0 && d->sent_at < sc->since_s &&
			  sc->now_s - sc->since_s >= ROLLOUT_RESEND_S;
	return 0;
}

static int cmp_target(const void *a, const void *b)
{
	const struct target *x = a, *y = b;
	if (x->hash != y->hash)
		return x->hash < y->hash ? -1 : 1;
	return strcmp(x->id, y->id);
}

struct send_item {
	char id[CTL_DEVICE_ID_MAX + 1];
	char version[CTL_VERSION_MAX + 1];
	bool revert;
	bool again; /* a deploy sent before (ROLLOUT_RESEND_S) */
};

struct plan {
	int64_t rid;
	char model[65];
	struct send_item *items;
	size_t n;
};

static int plan_add(struct plan *p, const struct target *t, bool revert, size_t cap)
{
	if (!p->items) {
		p->items = calloc(cap ? cap : 1, sizeof(*p->items));
		if (!p->items)
			return -ENOMEM;
	}
	struct send_item *it = &p->items[p->n++];
	memcpy(it->id, t->id, sizeof(it->id));
	memcpy(it->version, t->version, sizeof(it->version));
	it->revert = revert;
	it->again = t->sent && (!revert || t->reverted);
	return 0;
}

static size_t wave_size(const cJSON *body, int wave, size_t n)
{
	const cJSON *w = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(body, "waves"), wave);
	double v = cJSON_IsNumber(w) ? w->valuedouble : 100.0;
	const char *unit = jstr(body, "wave_unit");
	if (unit && !strcmp(unit, "count"))
		return v < (double)n ? (size_t)v : n;
	size_t k = (size_t)ceil((double)n * v / 100.0);
	return k < n ? k : n;
}

struct lookup {
	const struct target *t;
	size_t n;
	int64_t rid;
};

/* The version DEVICE was sent by the rollout (ctl_health_version_fn). */
static const char *sent_version(void *ud, const char *device)
{
	const struct lookup *l = ud;
	struct target key = {.hash = fnv(l->rid, device)};
	fl_strlcpy(key.id, device, sizeof(key.id));
	const struct target *f = bsearch(&key, l->t, l->n, sizeof(*f), cmp_target);
	return f && f->sent ? f->version : NULL;
}

/* Halt rollout RID now with WHY (stored, audited); with revert_on_halt
 * plan a revert for every device that took the version. */
static int halt(struct ctl *c, int64_t rid, cJSON *body, int64_t now_s, const char *why,
		const struct target *t, size_t n, struct plan *p)
{
	int r;
	if ((r = set_str(body, "state", "halted")) < 0 ||
	    (r = set_num(body, "gate_crossed_at", (double)now_s)) < 0 ||
	    (r = set_num(body, "halted_at", (double)now_s)) < 0 ||
	    (r = set_str(body, "reason", why)) < 0 ||
	    (r = set_bool(body, "revert_pending", jbool(body, "revert_on_halt"))) < 0 ||
	    (r = set_num(body, "updated_at", (double)now_s)) < 0)
		return r;
	if ((r = store_body(c, rid, body, now_s)) < 0 ||
	    (r = audit(c, now_s, CTL_ROLLOUT_ACTOR, "rollout.halt", rid, why)) < 0)
		return r;
	if (jbool(body, "revert_on_halt"))
		for (size_t i = 0; i < n; i++)
			if (t[i].sent && !t[i].reverted && t[i].on_version &&
			    (r = plan_add(p, &t[i], true, n)) < 0)
				return r;
	return 0;
}

/* counts.waves (each wave's own members: done, failed, in progress, not
 * started) and counts.variants (per bundle version). */
static int detail_counts(const cJSON *body, const struct target *t, size_t n, cJSON *counts)
{
	int nwaves = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(body, "waves"));
	cJSON *waves = cJSON_AddArrayToObject(counts, "waves");
	cJSON *vars = cJSON_AddObjectToObject(counts, "variants");
	if (!waves || !vars)
		return -ENOMEM;
	size_t lo = 0;
	for (int w = 0; w < nwaves; w++) {
		size_t hi = wave_size(body, w, n);
		size_t ok = 0, failed = 0, prog = 0, pending = 0;
		for (size_t i = lo; i < hi; i++) {
			ok += t[i].out == O_OK;
			failed += t[i].out == O_FAIL;
			prog += t[i].out == O_PROGRESS;
			pending += t[i].out == O_NONE;
		}
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(waves, o)) {
			cJSON_Delete(o);
			return -ENOMEM;
		}
		if (set_num(o, "devices", (double)(hi > lo ? hi - lo : 0)) < 0 ||
		    set_num(o, "succeeded", (double)ok) < 0 || set_num(o, "failed", (double)failed) < 0 ||
		    set_num(o, "in_progress", (double)prog) < 0 ||
		    set_num(o, "pending", (double)pending) < 0)
			return -ENOMEM;
		lo = hi > lo ? hi : lo;
	}
	for (size_t i = 0; i < n; i++) {
		cJSON *v = cJSON_GetObjectItemCaseSensitive(vars, t[i].version);
		if (!v) {
			v = cJSON_AddObjectToObject(vars, t[i].version);
			if (!v || set_num(v, "targets", 0) < 0 || set_num(v, "attempted", 0) < 0 ||
			    set_num(v, "succeeded", 0) < 0 || set_num(v, "failed", 0) < 0)
				return -ENOMEM;
		}
		const char *k[] = {"targets", "attempted", "succeeded", "failed"};
		bool inc[] = {true, t[i].sent, t[i].sent && t[i].out == O_OK,
			      t[i].sent && t[i].out == O_FAIL};
		for (size_t j = 0; j < 4; j++)
			if (inc[j]) {
				cJSON *x = cJSON_GetObjectItemCaseSensitive(v, k[j]);
				cJSON_SetNumberValue(x, x->valuedouble + 1);
			}
	}
	return 0;
}

/* True when GATES sets a limit (not just min_requests). */
static bool has_health_limits(const cJSON *gates)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, gates)
		if (strcmp(it->string, "min_requests"))
			return true;
	return false;
}

/* Decide for rollout RID (locked). Changes to BODY are stored and audited;
 * the commands to send go to PLAN. */
static int decide(struct ctl *c, int64_t rid, cJSON *body, int64_t now_s, struct plan *p)
{
	const char *state = jstr(body, "state");
	bool running = state && !strcmp(state, "running");
	bool reverting = jbool(body, "revert_pending") && state &&
			 (!strcmp(state, "halted") || !strcmp(state, "rolled_back"));
	if (!running && !reverting)
		return 0;
	const cJSON *sel = cJSON_GetObjectItemCaseSensitive(body, "select");
	struct scan sc = {.body = body,
			  .rid = rid,
			  .labels = cJSON_GetObjectItemCaseSensitive(sel, "labels"),
			  .devices = cJSON_GetObjectItemCaseSensitive(sel, "devices"),
			  .arch = jstr(sel, "arch"),
			  .windows = cJSON_GetObjectItemCaseSensitive(body, "windows"),
			  .now_s = now_s,
			  .since_s = c->engine_since_s};
	const char *model = jstr(body, "model");
	if (!model)
		return -FL_EDB;
	fl_snprintf(p->model, sizeof(p->model), "%s", model);
	int r = c->store->ops->rollout_scan(c->store, rid, model, scan_cb, &sc);
	_cleanup_free_ struct target *t = sc.t;
	if (r < 0)
		return r;
	qsort(t, sc.n, sizeof(*t), cmp_target);

	bool changed = false;
	if (reverting) {
		for (size_t i = 0; i < sc.n; i++)
			if (((t[i].sent && !t[i].reverted && t[i].on_version) || t[i].stale_revert) &&
			    (r = plan_add(p, &t[i], true, sc.n)) < 0)
				return r;
		return 0;
	}

	size_t sent = 0, failed = 0, ok = 0, inflight = 0;
	for (size_t i = 0; i < sc.n; i++) {
		if (!t[i].sent)
			continue;
		sent++;
		failed += t[i].out == O_FAIL;
		ok += t[i].out == O_OK;
		inflight += t[i].out == O_PROGRESS;
	}
	int wave = (int)jnum(body, "wave", 0);
	int nwaves = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(body, "waves"));
	double rate = jnum(body, "max_failure_rate", 0.1);
	size_t min_sample = (size_t)jnum(body, "min_sample", 5);
	size_t outside = 0; /* current wave, not sent: outside their maintenance window */
	for (size_t i = 0, m = wave_size(body, wave, sc.n); i < m; i++)
		outside += t[i].out == O_NONE && !t[i].window_ok;
	cJSON *counts = cJSON_CreateObject();
	if (!counts || set_num(counts, "targets", (double)sc.n) < 0 ||
	    set_num(counts, "attempted", (double)sent) < 0 ||
	    set_num(counts, "succeeded", (double)ok) < 0 ||
	    set_num(counts, "failed", (double)failed) < 0 ||
	    set_num(counts, "in_progress", (double)inflight) < 0 ||
	    set_num(counts, "skipped", (double)sc.skipped) < 0 ||
	    set_num(counts, "outside_window", (double)outside) < 0 ||
	    detail_counts(body, t, sc.n, counts) < 0) {
		cJSON_Delete(counts);
		return -ENOMEM;
	}
	cJSON *old = cJSON_GetObjectItemCaseSensitive(body, "counts");
	if (!old || !cJSON_Compare(old, counts, true))
		changed = true;
	if (old)
		cJSON_ReplaceItemInObjectCaseSensitive(body, "counts", counts);
	else
		cJSON_AddItemToObject(body, "counts", counts);

	if (sent >= min_sample && sent > 0 && (double)failed / (double)sent > rate) {
		_cleanup_free_ char *why = fl_asprintf(
			"halted: failure gate crossed in wave %d: %zu failed of %zu attempted "
			"(%.3f > %.3f, min sample %zu)%s",
			wave + 1, failed, sent, (double)failed / (double)sent, rate, min_sample,
			jbool(body, "revert_on_halt") ? "; reverting the devices that took it" : "");
		if (!why)
			return -ENOMEM;
		return halt(c, rid, body, now_s, why, t, sc.n, p);
	}

	/* Health gates: every CTL_ROLLOUT_HEALTH_EVERY_S (telemetry comes once a
	 * reporting period), and always before a wave may advance. */
	const cJSON *gates = cJSON_GetObjectItemCaseSensitive(body, "gates");
	bool wave_done = true;
	for (size_t i = 0, m = wave_size(body, wave, sc.n); i < m && wave_done; i++)
		wave_done = t[i].out == O_OK || t[i].out == O_FAIL;
	const cJSON *done_at = cJSON_GetObjectItemCaseSensitive(body, "wave_done_at");
	double soak = jnum(body, "soak_s", 0);
	bool may_advance = wave_done && (cJSON_IsNumber(done_at)
						 ? (double)now_s - done_at->valuedouble >= soak
						 : soak <= 0);
	const cJSON *last_eval = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(body, "health"), "evaluated_at");
	bool due = may_advance || !cJSON_IsNumber(last_eval) ||
		   (double)now_s - last_eval->valuedouble >= CTL_ROLLOUT_HEALTH_EVERY_S ||
		   (double)now_s < last_eval->valuedouble;
	if (sent > 0 && due && has_health_limits(gates)) {
		struct lookup l = {.t = t, .n = sc.n, .rid = rid};
		cJSON *rep = NULL;
		_cleanup_free_ char *breach = NULL;
		if ((r = ctl_health_evaluate(c->store, rid, model, gates, sent_version, &l, &rep,
					     &breach)) < 0)
			return r;
		cJSON *old_h = cJSON_GetObjectItemCaseSensitive(body, "health");
		const cJSON *old_c = cJSON_GetObjectItemCaseSensitive(old_h, "checked_at");
		bool same = old_h && cJSON_Compare(cJSON_GetObjectItemCaseSensitive(old_h, "groups"),
						   cJSON_GetObjectItemCaseSensitive(rep, "groups"),
						   true);
		changed = true; /* evaluated_at at least */
		if (set_num(rep, "checked_at",
			    same && cJSON_IsNumber(old_c) ? old_c->valuedouble : (double)now_s) < 0 ||
		    set_num(rep, "evaluated_at", (double)now_s) < 0) {
			cJSON_Delete(rep);
			return -ENOMEM;
		}
		if (old_h)
			cJSON_ReplaceItemInObjectCaseSensitive(body, "health", rep);
		else
			cJSON_AddItemToObject(body, "health", rep);
		if (breach) {
			_cleanup_free_ char *why = fl_asprintf(
				"halted: health gate crossed in wave %d: %s%s", wave + 1, breach,
				jbool(body, "revert_on_halt") ? "; reverting the devices that took it"
							      : "");
			if (!why)
				return -ENOMEM;
			return halt(c, rid, body, now_s, why, t, sc.n, p);
		}
	}

	for (;;) {
		size_t members = wave_size(body, wave, sc.n);
		size_t maxc = (size_t)jnum(body, "max_concurrent", 100);
		bool all_done = true;
		for (size_t i = 0; i < members; i++) {
			if (t[i].out == O_OK || t[i].out == O_FAIL)
				continue;
			all_done = false;
			if (t[i].stale && (r = plan_add(p, &t[i], false, sc.n)) < 0)
				return r;
			if (!t[i].sent && inflight < maxc && t[i].window_ok) {
				if ((r = plan_add(p, &t[i], false, sc.n)) < 0)
					return r;
				inflight++;
			}
		}
		if (!all_done || members == 0)
			break;
		const cJSON *done = cJSON_GetObjectItemCaseSensitive(body, "wave_done_at");
		if (!cJSON_IsNumber(done)) {
			_cleanup_free_ char *why = fl_asprintf(
				"wave %d of %d done (%zu devices), soaking %.0f s", wave + 1, nwaves,
				members, jnum(body, "soak_s", 0));
			if (!why || set_num(body, "wave_done_at", (double)now_s) < 0 ||
			    set_str(body, "reason", why) < 0)
				return -ENOMEM;
			if ((r = audit(c, now_s, CTL_ROLLOUT_ACTOR, "rollout.wave_done", rid, why)) < 0)
				return r;
			changed = true;
			done = cJSON_GetObjectItemCaseSensitive(body, "wave_done_at");
		}
		if ((double)now_s - done->valuedouble < jnum(body, "soak_s", 0))
			break;
		changed = true;
		if (wave + 1 >= nwaves || members == sc.n) {
			_cleanup_free_ char *why = fl_asprintf(
				"completed: %zu devices, %zu failed of %zu attempted", sc.n, failed, sent);
			if (!why || set_str(body, "state", "completed") < 0 ||
			    set_str(body, "reason", why) < 0)
				return -ENOMEM;
			if ((r = audit(c, now_s, CTL_ROLLOUT_ACTOR, "rollout.complete", rid, why)) < 0)
				return r;
			break;
		}
		wave++;
		_cleanup_free_ char *why =
			fl_asprintf("wave %d of %d started after soak; gate holds (%zu failed of "
				    "%zu attempted)",
				    wave + 1, nwaves, failed, sent);
		if (!why || set_num(body, "wave", wave) < 0 ||
		    set_num(body, "wave_started_at", (double)now_s) < 0 ||
		    set_str(body, "wave_done_at", NULL) < 0 || set_str(body, "reason", why) < 0)
			return -ENOMEM;
		if ((r = audit(c, now_s, CTL_ROLLOUT_ACTOR, "rollout.advance", rid, why)) < 0)
			return r;
	}
	if (changed) {
		if ((r = set_num(body, "updated_at", (double)now_s)) < 0 ||
		    (r = store_body(c, rid, body, now_s)) < 0)
			return r;
	}
	return 0;
}

static int tick_one(struct ctl *c, int64_t rid, int64_t now_s, ctl_rollout_send_fn send,
		    void *ud)
{
	struct plan p = {.rid = rid};
	pthread_mutex_lock(&c->lock);
	cJSON *body = NULL;
	/* The body is read inside the decision's transaction (PostgreSQL: with
	 * a row lock), so an operator action of another instance is either
	 * seen or waits for the decision: never overwritten by it. */
	int r = c->store->ops->begin(c->store);
	if (r >= 0) {
		/* Still the leader? (PostgreSQL: a reconnect inside begin() loses
		 * the engine's lock; another instance may hold it by now.) */
		bool lead = true;
		if (c->store->ops->engine_leader) {
			int l = c->store->ops->engine_leader(c->store);
			lead = l > 0;
			if (l < 0)
				r = l;
		}
		if (r >= 0 && lead && (r = load_body(c, rid, &body)) >= 0)
			r = decide(c, rid, body, now_s, &p);
		if (r >= 0)
			r = c->store->ops->commit(c->store);
		if (r < 0)
			c->store->ops->rollback(c->store);
	}
	pthread_mutex_unlock(&c->lock);
	cJSON_Delete(body);
	if (r < 0 || p.n == 0) {
		free(p.items);
		return r;
	}
	/* Send outside the lock (ctl_cmd_deploy takes it), then record. */
	size_t n_sent = 0;
	for (size_t i = 0; i < p.n; i++) {
		struct send_item *it = &p.items[i];
		char id[CTL_CMD_ID_SIZE];
		_cleanup_free_ char *cmd = NULL;
		int s = it->revert ? ctl_cmd_revert(p.model, id, &cmd)
				   : ctl_cmd_deploy(c, p.model, it->version, id, &cmd);
		if (s >= 0)
			s = send(ud, it->id, cmd, strlen(cmd));
		if (s < 0) {
			it->id[0] = 0; /* retried on a later tick */
			continue;
		}
		n_sent++;
	}
	pthread_mutex_lock(&c->lock);
	r = c->store->ops->begin(c->store);
	for (size_t i = 0; r >= 0 && i < p.n; i++) {
		struct send_item *it = &p.items[i];
		if (!it->id[0])
			continue;
		r = c->store->ops->rollout_mark(c->store, rid, it->id, now_s, it->revert);
		if (r >= 0) {
			_cleanup_free_ char *why =
				it->revert && it->again
					? fl_asprintf("revert sent again to %s (model %s; still on it "
						      "%d s after the takeover)",
						      it->id, p.model, ROLLOUT_RESEND_S)
				: it->revert ? fl_asprintf("revert sent to %s (model %s)", it->id, p.model)
				: it->again ? fl_asprintf("deploy %s@%s sent again to %s (no install "
							  "of it %d s after the takeover)",
							  p.model, it->version, it->id,
							  ROLLOUT_RESEND_S)
					    : fl_asprintf("deploy %s@%s sent to %s", p.model,
							  it->version, it->id);
			r = why ? audit(c, now_s, CTL_ROLLOUT_ACTOR,
					it->revert  ? "rollout.revert"
					: it->again ? "rollout.redeploy"
						    : "rollout.deploy",
					rid, why)
				: -ENOMEM;
		}
	}
	if (r >= 0)
		r = c->store->ops->commit(c->store);
	else
		c->store->ops->rollback(c->store);
	pthread_mutex_unlock(&c->lock);
	free(p.items);
	return r < 0 ? r : (int)n_sent;
}

int ctl_rollout_tick(struct ctl *c, int64_t now_s, ctl_rollout_send_fn send, void *ud)
{
	if (!c || !send)
		return -EINVAL;
	_cleanup_free_ int64_t *ids = calloc(CTL_ROLLOUTS_MAX, sizeof(*ids));
	if (!ids)
		return -ENOMEM;
	size_t n = 0;
	pthread_mutex_lock(&c->lock);
	/* Several instances on one PostgreSQL store: only the leader ticks
	 * (N stays 0 on the others). */
	int r = c->store->ops->engine_leader ? c->store->ops->engine_leader(c->store) : 1;
	if (r > 0 && !c->engine_since_s)
		c->engine_since_s = now_s > 0 ? now_s : 1;
	else if (r <= 0)
		c->engine_since_s = 0;
	if (r > 0)
		r = c->store->ops->rollout_list(c->store, ids, CTL_ROLLOUTS_MAX, &n);
	pthread_mutex_unlock(&c->lock);
	if (r < 0)
		return r;
	int first_err = 0, total = 0;
	for (size_t i = 0; i < n; i++) {
		r = tick_one(c, ids[i], now_s, send, ud);
		if (r < 0 && !first_err)
			first_err = r;
		else if (r > 0)
			total += r;
	}
	return first_err ? first_err : total;
}

/* ---------------------------------------------------------------- metrics */

/* Append S to B as a Prometheus label value (backslash, quote escaped). */
static int label_val(struct fl_buf *b, const char *s)
{
	for (; s && *s; s++) {
		int r = (*s == '"' || *s == '\\') ? fl_buf_append(b, "\\", 1) : 0;
		if (r < 0 || (r = fl_buf_append(b, s, 1)) < 0)
			return r;
	}
	return 0;
}

static int bprintf(struct fl_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bprintf(struct fl_buf *b, const char *fmt, ...)
{
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	return fl_buf_append(b, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

int ctl_rollout_metrics_text(struct ctl *c, char **ret)
{
	if (!c || !ret)
		return -EINVAL;
	cJSON *all = NULL;
	int r = ctl_rollout_list(c, &all);
	if (r < 0)
		return r;
	struct fl_buf b = {0};
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(all, "rollouts");
	int n = cJSON_GetArraySize(arr), first = n > CTL_ROLLOUT_METRICS_MAX
							  ? n - CTL_ROLLOUT_METRICS_MAX
							  : 0;
	static const char *const outcomes[] = {"targets",   "attempted",   "succeeded",
					       "failed",    "in_progress", "skipped"};
	r = bprintf(&b, "# HELP flotilla_rollout_info Rollouts (the %d newest) and their state.\n"
			"# TYPE flotilla_rollout_info gauge\n",
		    CTL_ROLLOUT_METRICS_MAX);
	for (int pass = 0; pass < 3 && r >= 0; pass++) {
		if (pass == 1)
			r = bprintf(&b, "# HELP flotilla_rollout_wave Current wave (from 1) of each "
					"rollout.\n# TYPE flotilla_rollout_wave gauge\n");
		if (pass == 2)
			r = bprintf(&b, "# HELP flotilla_rollout_devices Devices of each rollout by "
					"outcome, as its last tick saw them.\n"
					"# TYPE flotilla_rollout_devices gauge\n");
		for (int i = first; r >= 0 && i < n; i++) {
			const cJSON *o = cJSON_GetArrayItem(arr, i);
			long long id = (long long)jnum(o, "id", 0);
			if (pass == 0) {
				r = bprintf(&b, "flotilla_rollout_info{rollout=\"%lld\",model=\"", id);
				if (r >= 0)
					r = label_val(&b, jstr(o, "model"));
				if (r >= 0)
					r = bprintf(&b, "\",version=\"");
				if (r >= 0)
					r = label_val(&b, jstr(o, "version"));
				if (r >= 0)
					r = bprintf(&b, "\",state=\"");
				if (r >= 0)
					r = label_val(&b, jstr(o, "state"));
				if (r >= 0)
					r = bprintf(&b, "\"} 1\n");
			} else if (pass == 1) {
				r = bprintf(&b, "flotilla_rollout_wave{rollout=\"%lld\"} %.0f\n", id,
					    jnum(o, "wave", 0) + 1);
			} else {
				const cJSON *cnt = cJSON_GetObjectItemCaseSensitive(o, "counts");
				for (size_t k = 0; cnt && r >= 0 && k < FL_ARRAY_SIZE(outcomes); k++)
					r = bprintf(&b,
						    "flotilla_rollout_devices{rollout=\"%lld\","
						    "outcome=\"%s\"} %.0f\n",
						    id, outcomes[k], jnum(cnt, outcomes[k], 0));
			}
		}
	}
	cJSON_Delete(all);
	if (r >= 0)
		r = fl_buf_append(&b, "", 1);
	if (r < 0) {
		fl_buf_free(&b);
		return r;
	}
	*ret = (char *)b.p;
	return 0;
}
