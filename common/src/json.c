/* The one file that touches cJSON's parser. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/json.h>

/* Depth of brackets outside strings, checked before cJSON recurses. Also
 * refuses NUL bytes, which cJSON would treat as the end of input. */
static int prescan(const char *buf, size_t len, int max_depth)
{
	int depth = 0;
	bool in_str = false;
	for (size_t i = 0; i < len; i++) {
		char c = buf[i];
		if (c == '\0')
			return -FL_EINVAL_JSON;
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = false;
			continue;
		}
		if (c == '"')
			in_str = true;
		else if (c == '{' || c == '[') {
			if (++depth > max_depth)
				return -FL_ETOODEEP;
		} else if (c == '}' || c == ']')
			depth--;
	}
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Objects of any size: sort the member names and compare neighbours
 * (O(n log n); a quadratic scan would let one big object burn CPU). */
static int object_has_duplicates(const cJSON *obj)
{
	size_t n = 0;
	for (const cJSON *m = obj->child; m; m = m->next)
		n++;
	if (n < 2)
		return 0;
	const char **names = malloc(n * sizeof(*names));
	if (!names)
		return -ENOMEM;
	size_t i = 0;
	for (const cJSON *m = obj->child; m; m = m->next)
		names[i++] = m->string ? m->string : "";
	qsort(names, n, sizeof(*names), cmp_str);
	int dup = 0;
	for (i = 1; i < n && !dup; i++)
		dup = !strcmp(names[i - 1], names[i]);
	free(names);
	return dup;
}

static int has_duplicate_keys(const cJSON *node)
{
	for (; node; node = node->next) {
		if (cJSON_IsObject(node)) {
			int r = object_has_duplicates(node);
			if (r)
				return r;
		}
		if (node->child) {
			int r = has_duplicate_keys(node->child);
			if (r)
				return r;
		}
	}
	return 0;
}

int fl_json_parse(const char *buf, size_t len, size_t max_bytes, int max_depth, cJSON **ret)
{
	if (!buf)
		return -EINVAL;
	if (len > max_bytes)
		return -FL_ETOOBIG;
	int r = prescan(buf, len, max_depth);
	if (r < 0)
		return r;
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, false);
	if (!root)
		return -FL_EINVAL_JSON;
	for (const char *p = end; p && p < buf + len; p++)
		if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
			cJSON_Delete(root);
			return -FL_EINVAL_JSON;
		}
	r = has_duplicate_keys(root);
	if (r) {
		cJSON_Delete(root);
		return r < 0 ? r : -FL_EINVAL_JSON;
	}
	*ret = root;
	return 0;
}

static const cJSON *member(const cJSON *obj, const char *key)
{
	if (!cJSON_IsObject(obj))
		return NULL;
	return cJSON_GetObjectItemCaseSensitive(obj, key);
}

int fl_json_get_str(const cJSON *obj, const char *key, const char **ret)
{
	const cJSON *m = member(obj, key);
	if (!cJSON_IsString(m) || !m->valuestring)
		return -FL_ESCHEMA;
	*ret = m->valuestring;
	return 0;
}

int fl_json_get_str_opt(const cJSON *obj, const char *key, const char *def, const char **ret)
{
	if (!member(obj, key)) {
		*ret = def;
		return 0;
	}
	return fl_json_get_str(obj, key, ret);
}

int fl_json_get_int(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t *ret)
{
	const cJSON *m = member(obj, key);
	if (!cJSON_IsNumber(m))
		return -FL_ESCHEMA;
	double v = m->valuedouble;
	if (!isfinite(v) || v != floor(v) || fabs(v) >= 9007199254740992.0)
		return -FL_ERANGE;
	int64_t i = (int64_t)v;
	if (i < min || i > max)
		return -FL_ERANGE;
	*ret = i;
	return 0;
}

int fl_json_get_int_opt(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t def,
			int64_t *ret)
{
	if (!member(obj, key)) {
		*ret = def;
		return 0;
	}
	return fl_json_get_int(obj, key, min, max, ret);
}

int fl_json_get_double(const cJSON *obj, const char *key, double min, double max, double *ret)
{
	const cJSON *m = member(obj, key);
	if (!cJSON_IsNumber(m))
		return -FL_ESCHEMA;
	double v = m->valuedouble;
	if (!isfinite(v) || v < min || v > max)
		return -FL_ERANGE;
	*ret = v;
	return 0;
}

int fl_json_get_double_opt(const cJSON *obj, const char *key, double min, double max, double def,
			   double *ret)
{
	if (!member(obj, key)) {
		*ret = def;
		return 0;
	}
	return fl_json_get_double(obj, key, min, max, ret);
}

int fl_json_get_bool(const cJSON *obj, const char *key, bool *ret)
{
	const cJSON *m = member(obj, key);
	if (!cJSON_IsBool(m))
		return -FL_ESCHEMA;
	*ret = cJSON_IsTrue(m);
	return 0;
}

int fl_json_get_bool_opt(const cJSON *obj, const char *key, bool def, bool *ret)
{
	if (!member(obj, key)) {
		*ret = def;
		return 0;
	}
	return fl_json_get_bool(obj, key, ret);
}

int fl_json_get_obj(const cJSON *obj, const char *key, const cJSON **ret)
{
	const cJSON *m = member(obj, key);
	if (!cJSON_IsObject(m))
		return -FL_ESCHEMA;
	*ret = m;
	return 0;
}

int fl_json_get_arr(const cJSON *obj, const char *key, const cJSON **ret)
{
	const cJSON *m = member(obj, key);
	if (!cJSON_IsArray(m))
		return -FL_ESCHEMA;
	*ret = m;
	return 0;
}

int fl_json_check_keys(const cJSON *obj, const char *const *allowed, const char **ret_bad)
{
	if (!cJSON_IsObject(obj))
		return -FL_ESCHEMA;
	for (const cJSON *m = obj->child; m; m = m->next) {
		bool ok = false;
		for (const char *const *a = allowed; *a; a++)
			if (m->string && !strcmp(m->string, *a)) {
				ok = true;
				break;
			}
		if (!ok) {
			if (ret_bad)
				*ret_bad = m->string;
			return -FL_ESCHEMA;
		}
	}
	return 0;
}

char *fl_json_print(const cJSON *obj)
{
	return cJSON_PrintUnformatted(obj);
}
