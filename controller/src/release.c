/* Releases with per-class variants: creation, queries, variant choice. */
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
#include "release.h"

FL_DEFINE_CLEANUP(cJSON, cJSON_Delete)

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

/* ---------------------------------------------------------------- matching */

static bool list_has(const char *json, const char *name)
{
	if (!json)
		return false;
	cJSON *a = cJSON_Parse(json);
	bool found = false;
	const cJSON *it;
	cJSON_ArrayForEach(it, a) {
		if (cJSON_IsString(it) && !strcmp(it->valuestring, name)) {
			found = true;
			break;
		}
	}
	cJSON_Delete(a);
	return found;
}

/* Number of selector members (-1: SEL does not fit HW). */
static int fits(const cJSON *sel, const struct ctl_hw *hw)
{
	int n = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, sel) {
		const char *k = it->string;
		bool ok;
		if (!strcmp(k, "arch"))
			ok = hw->arch && cJSON_IsString(it) && !strcmp(hw->arch, it->valuestring);
		else if (!strcmp(k, "min_ram_mb"))
			ok = hw->ram_mb >= 0 && cJSON_IsNumber(it) && (double)hw->ram_mb >= it->valuedouble;
		else if (!strcmp(k, "max_ram_mb"))
			ok = hw->ram_mb >= 0 && cJSON_IsNumber(it) && (double)hw->ram_mb <= it->valuedouble;
		else if (!strcmp(k, "accelerator"))
			ok = cJSON_IsString(it) && list_has(hw->accelerators_json, it->valuestring);
		else if (!strcmp(k, "backend"))
			ok = cJSON_IsString(it) && list_has(hw->backends_json, it->valuestring);
		else
			ok = false;
		if (!ok)
			return -1;
		n++;
	}
	return n;
}

int ctl_release_pick(const cJSON *variants, const struct ctl_hw *hw)
{
	int best = -1, best_n = -1, i = 0;
	const cJSON *v;
	cJSON_ArrayForEach(v, variants) {
		int n = fits(cJSON_GetObjectItemCaseSensitive(v, "select"), hw);
		if (n > best_n) {
			best = i;
			best_n = n;
		}
		i++;
	}
	return best;
}

/* ---------------------------------------------------------------- create */

static int parse_select(const cJSON *in, cJSON *out, int idx, char *err, size_t en)
{
	if (!cJSON_IsObject(in))
		return fail(err, en, -FL_ESCHEMA, "variants[%d].select: expected an object", idx);
	const cJSON *it;
	cJSON_ArrayForEach(it, in) {
		const char *k = it->string;
		if (cJSON_GetObjectItemCaseSensitive(out, k))
			return fail(err, en, -FL_ESCHEMA, "variants[%d].select.%.64s: given twice",
				    idx, k);
		if (!strcmp(k, "arch") || !strcmp(k, "accelerator") || !strcmp(k, "backend")) {
			if (!cJSON_IsString(it) || !fl_name_valid(it->valuestring, 64))
				return fail(err, en, -FL_ESCHEMA,
					    "variants[%d].select.%s: expected a name", idx, k);
			if (!cJSON_AddStringToObject(out, k, it->valuestring))
				return -ENOMEM;
		} else if (!strcmp(k, "min_ram_mb") || !strcmp(k, "max_ram_mb")) {
			if (!cJSON_IsNumber(it))
				return fail(err, en, -FL_ESCHEMA,
					    "variants[%d].select.%s: expected a number", idx, k);
			double v = it->valuedouble;
			if (v != floor(v) || v < 0 || v > CTL_RELEASE_RAM_MAX)
				return fail(err, en, -FL_ERANGE,
					    "variants[%d].select.%s: expected an integer 0..%d",
					    idx, k, CTL_RELEASE_RAM_MAX);
			if (!cJSON_AddNumberToObject(out, k, v))
				return -ENOMEM;
		} else {
			return fail(err, en, -FL_ESCHEMA,
				    "variants[%d].select: unknown member '%.64s' (arch, min_ram_mb, "
				    "max_ram_mb, accelerator, backend)",
				    idx, k);
		}
	}
	const cJSON *lo = cJSON_GetObjectItemCaseSensitive(out, "min_ram_mb");
	const cJSON *hi = cJSON_GetObjectItemCaseSensitive(out, "max_ram_mb");
	if (lo && hi && lo->valuedouble > hi->valuedouble)
		return fail(err, en, -FL_ERANGE, "variants[%d].select: min_ram_mb > max_ram_mb", idx);
	return 0;
}

static int parse_release(const void *json, size_t len, cJSON **ret, char *err, size_t en)
{
	static const char *const keys[] = {"model", "version", "variants", NULL};
	static const char *const vkeys[] = {"bundle", "select", NULL};
	_cleanup_(cJSON_Deletep) cJSON *in = NULL;
	int r = fl_json_parse(json, len, CTL_RELEASE_BODY_MAX, 6, &in);
	if (r < 0)
		return fail(err, en, r, "body: %s", fl_strerror(r));
	if (!cJSON_IsObject(in))
		return fail(err, en, -FL_ESCHEMA, "body: expected a JSON object");
	const char *bad = NULL;
	if (fl_json_check_keys(in, keys, &bad) < 0)
		return fail(err, en, -FL_ESCHEMA, "unknown member '%.64s' (model, version, variants)",
			    bad);
	const char *model, *version;
	if (fl_json_get_str(in, "model", &model) < 0)
		return fail(err, en, -FL_ESCHEMA, "model: expected a string");
	if (fl_json_get_str(in, "version", &version) < 0)
		return fail(err, en, -FL_ESCHEMA, "version: expected a string");
	if (!fl_name_valid(model, 64))
		return fail(err, en, -EINVAL, "model: not a valid name");
	if (!ctl_version_valid(version))
		return fail(err, en, -EINVAL, "version: 1..64 printable characters, no blanks");
	const cJSON *vs;
	if (fl_json_get_arr(in, "variants", &vs) < 0)
		return fail(err, en, -FL_ESCHEMA, "variants: expected an array");
	int nv = cJSON_GetArraySize(vs);
	if (nv < 1 || nv > CTL_RELEASE_VARIANTS_MAX)
		return fail(err, en, -FL_ERANGE, "variants: expected 1..%d", CTL_RELEASE_VARIANTS_MAX);
	_cleanup_(cJSON_Deletep) cJSON *o = cJSON_CreateObject();
	cJSON *arr = o ? cJSON_AddArrayToObject(o, "variants") : NULL;
	if (!arr || !cJSON_AddStringToObject(o, "model", model) ||
	    !cJSON_AddStringToObject(o, "version", version))
		return -ENOMEM;
	int i = 0;
	const cJSON *v;
	cJSON_ArrayForEach(v, vs) {
		if (!cJSON_IsObject(v))
			return fail(err, en, -FL_ESCHEMA, "variants[%d]: expected an object", i);
		if (fl_json_check_keys(v, vkeys, &bad) < 0)
			return fail(err, en, -FL_ESCHEMA,
				    "variants[%d]: unknown member '%.64s' (bundle, select)", i, bad);
		const char *b;
		if (fl_json_get_str(v, "bundle", &b) < 0)
			return fail(err, en, -FL_ESCHEMA, "variants[%d].bundle: expected a string", i);
		if (!ctl_version_valid(b))
			return fail(err, en, -EINVAL, "variants[%d].bundle: not a valid version", i);
		cJSON *ov = cJSON_CreateObject();
		if (!ov || !cJSON_AddItemToArray(arr, ov)) {
			cJSON_Delete(ov);
			return -ENOMEM;
		}
		cJSON *sel = cJSON_AddObjectToObject(ov, "select");
		if (!sel || !cJSON_AddStringToObject(ov, "bundle", b))
			return -ENOMEM;
		const cJSON *si = cJSON_GetObjectItemCaseSensitive(v, "select");
		if (si && (r = parse_select(si, sel, i, err, en)) < 0)
			return r;
		/* Two variants with the same selector: the second never applies. */
		int j = 0;
		const cJSON *w;
		cJSON_ArrayForEach(w, arr) {
			if (w != ov && cJSON_Compare(cJSON_GetObjectItemCaseSensitive(w, "select"), sel,
						     true))
				return fail(err, en, -FL_ESCHEMA,
					    "variants[%d] and [%d] have the same select", j, i);
			j++;
		}
		i++;
	}
	*ret = o;
	o = NULL;
	return 0;
}

int ctl_release_create(struct ctl *c, const void *json, size_t len, const char *actor,
		       int64_t now_s, cJSON **ret, char *err, size_t err_len)
{
	if (!c || !json || !ret)
		return -EINVAL;
	if (err && err_len)
		err[0] = 0;
	_cleanup_(cJSON_Deletep) cJSON *body = NULL;
	int r = parse_release(json, len, &body, err, err_len);
	if (r < 0)
		return r;
	const char *model = cJSON_GetObjectItemCaseSensitive(body, "model")->valuestring;
	const char *version = cJSON_GetObjectItemCaseSensitive(body, "version")->valuestring;
	if (!cJSON_AddNumberToObject(body, "created_at", (double)now_s) ||
	    !cJSON_AddStringToObject(body, "created_by", actor ? actor : ""))
		return -ENOMEM;
	_cleanup_free_ char *text = cJSON_PrintUnformatted(body);
	if (!text)
		return -ENOMEM;
	int64_t id = 0;
	pthread_mutex_lock(&c->lock);
	const cJSON *v;
	cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(body, "variants")) {
		const char *b = cJSON_GetObjectItemCaseSensitive(v, "bundle")->valuestring;
		char *env = NULL;
		r = c->store->ops->bundle_envelope(c->store, model, b, &env);
		free(env);
		if (r == -ENOENT)
			fail(err, err_len, r, "bundle %s@%s was not pushed", model, b);
		if (r < 0)
			break;
	}
	if (r >= 0 && (r = c->store->ops->begin(c->store)) >= 0) {
		r = c->store->ops->release_insert(c->store, model, version, text, now_s, &id);
		if (r == -EEXIST)
			fail(err, err_len, r, "release %s@%s exists", model, version);
		if (r >= 0) {
			_cleanup_free_ char *vars = cJSON_PrintUnformatted(
				cJSON_GetObjectItemCaseSensitive(body, "variants"));
			_cleanup_free_ char *why =
				vars ? fl_asprintf("release %lld: %s@%s variants %s", (long long)id,
						   model, version, vars)
				     : NULL;
			r = why ? c->store->ops->audit(c->store, now_s, actor ? actor : "",
						       "release.create", why)
				: -ENOMEM;
		}
		if (r >= 0)
			r = c->store->ops->commit(c->store);
		if (r < 0)
			c->store->ops->rollback(c->store);
	}
	pthread_mutex_unlock(&c->lock);
	if (r < 0)
		return r;
	if (!cJSON_AddNumberToObject(body, "id", (double)id))
		return -ENOMEM;
	*ret = body;
	body = NULL;
	return 0;
}

/* ---------------------------------------------------------------- queries */

int ctl_release_get(struct ctl *c, const char *ref, cJSON **ret)
{
	if (!c || !ref || !ret)
		return -EINVAL;
	int64_t id = 0;
	char model[65] = "";
	const char *version = NULL;
	const char *at = strchr(ref, '@');
	if (at) {
		size_t ml = (size_t)(at - ref);
		if (ml == 0 || ml >= sizeof(model))
			return -EINVAL;
		memcpy(model, ref, ml);
		model[ml] = 0;
		version = at + 1;
		if (!fl_name_valid(model, 64) || !ctl_version_valid(version))
			return -EINVAL;
	} else if (fl_parse_i64(ref, 1, INT64_MAX, &id) < 0) {
		return -EINVAL;
	}
	_cleanup_free_ char *text = NULL;
	int64_t got = 0;
	pthread_mutex_lock(&c->lock);
	int r = c->store->ops->release_get(c->store, id, model, version, &got, &text);
	pthread_mutex_unlock(&c->lock);
	if (r < 0)
		return r;
	cJSON *o = cJSON_Parse(text);
	if (!o)
		return -FL_EDB;
	if (!cJSON_AddNumberToObject(o, "id", (double)got)) {
		cJSON_Delete(o);
		return -ENOMEM;
	}
	*ret = o;
	return 0;
}

int ctl_release_list(struct ctl *c, const char *model, cJSON **ret)
{
	if (!c || !ret)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	int r = c->store->ops->release_list(c->store, model, ret);
	pthread_mutex_unlock(&c->lock);
	return r;
}
