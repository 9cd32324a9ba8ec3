/* Bundle manifest v1: parse, validate, build, serialize (see manifest.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/manifest.h>
#include <flotilla/util.h>

#define RUNTIME_MAX_DEPTH 4 /* nesting inside "runtime" */
#define MAX_TOKENS_LIMIT 1000000
#define BUDGET_MS_LIMIT (24LL * 3600 * 1000)
#define BUDGET_MB_LIMIT (16LL * 1024 * 1024)
#define RAM_MB_LIMIT (1LL << 30)
#define TRIAL_WINDOW_LIMIT_S (30LL * 24 * 3600)
#define TRIAL_REQUESTS_LIMIT 100000000LL

static inline void json_freep(cJSON **p) { cJSON_Delete(*p); }

static void test_clear(struct ota_acceptance_test *t)
{
	free(t->name);
	free(t->prompt);
	free(t->expect);
}

void ota_manifest_free(struct ota_manifest *m)
{
	if (!m)
		return;
	free(m->name);
	free(m->version);
	free(m->description);
	for (size_t i = 0; i < m->compat.n_arch; i++)
		free(m->compat.arch[i]);
	free(m->compat.arch);
	free(m->compat.accelerator);
	free(m->compat.backend);
	cJSON_Delete(m->runtime);
	for (size_t i = 0; i < m->n_tests; i++)
		test_clear(&m->tests[i]);
	free(m->tests);
	free(m->chunking);
	for (size_t i = 0; i < m->n_files; i++)
		free(m->files[i].path);
	free(m->files);
	free(m);
}

FL_DEFINE_CLEANUP(struct ota_manifest, ota_manifest_free)

/* ---- validation ---------------------------------------------------------- */

bool ota_manifest_path_valid(const char *path)
{
	if (!path)
		return false;
	size_t n = strnlen(path, OTA_MANIFEST_MAX_PATH + 1);
	if (n == 0 || n > OTA_MANIFEST_MAX_PATH || path[0] == '/')
		return false;
	const char *comp = path;
	for (size_t i = 0; i <= n; i++) {
		unsigned char c = (unsigned char)path[i];
		if (c == '/' || c == 0) {
			size_t clen = (size_t)(path + i - comp);
			if (clen == 0 || (clen == 1 && comp[0] == '.') ||
			    (clen == 2 && comp[0] == '.' && comp[1] == '.'))
				return false;
			comp = path + i + 1;
			continue;
		}
		if (c < 0x20 || c == 0x7f || c == '\\')
			return false;
	}
	return true;
}

/* Printable ASCII without blanks, 1..MAX bytes. */
static bool token_valid(const char *s, size_t max)
{
	if (!s)
		return false;
	size_t n = strnlen(s, max + 1);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return false;
	return true;
}

/* Any UTF-8 text without control characters other than \n and \t. */
static bool text_valid(const char *s, size_t max, bool allow_empty)
{
	if (!s)
		return false;
	size_t n = strnlen(s, max + 1);
	if (n > max || (n == 0 && !allow_empty))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f)
			return false;
	}
	return true;
}

static int runtime_validate(const cJSON *v, int depth)
{
	if (depth > RUNTIME_MAX_DEPTH)
		return -FL_ETOODEEP;
	if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
		int n = cJSON_GetArraySize(v);
		if (n > OTA_MANIFEST_MAX_RUNTIME_KEYS)
			return -FL_ETOOBIG;
		const cJSON *c;
		cJSON_ArrayForEach(c, v)
		{
			if (cJSON_IsObject(v)) {
				if (!c->string || !fl_name_valid(c->string, OTA_MANIFEST_MAX_NAME))
					return -FL_ESCHEMA;
				/* cJSON keeps duplicate members; refuse them. */
				for (const cJSON *d = v->child; d != c; d = d->next)
					if (!strcmp(d->string, c->string))
						return -FL_EDUP;
			}
			int r = runtime_validate(c, depth + 1);
			if (r < 0)
				return r;
		}
		return 0;
	}
	if (cJSON_IsString(v))
		return text_valid(v->valuestring, OTA_MANIFEST_MAX_RUNTIME_STR, true) ? 0
										 : -FL_ESCHEMA;
	if (cJSON_IsNumber(v))
		return isfinite(v->valuedouble) ? 0 : -FL_ERANGE;
	if (cJSON_IsBool(v))
		return 0;
	return -FL_ESCHEMA; /* null or raw */
}

/* The runtime settings the agent reads (agent/src/serving.c, same ranges):
 * a value out of range, of the wrong type or an unknown key in "limits" is
 * refused here, when the bundle is made and when it arrives, instead of
 * being silently replaced by a default on the device. Other "runtime" keys
 * (stop, mmap, exec, ...) belong to backends and are only shape-checked. */
static const struct {
	const char *key;
	int64_t min, max;
} runtime_ints[] = {
	{"threads", 1, 256},
	{"context_length", 16, 1 << 20},
}, limit_ints[] = {
	{"memory_mb", 16, 1 << 24},
	{"request_timeout_ms", 1, 3600000},
	{"max_queue", 1, 4096},
};

static int runtime_check_known(const cJSON *rt)
{
	int64_t v;
	int r;
	for (size_t i = 0; i < FL_ARRAY_SIZE(runtime_ints); i++)
		if ((r = fl_json_get_int_opt(rt, runtime_ints[i].key, runtime_ints[i].min,
					     runtime_ints[i].max, runtime_ints[i].min, &v)) < 0)
			return r;
	if (!cJSON_GetObjectItemCaseSensitive(rt, "limits"))
		return 0;
	const cJSON *lim;
	if ((r = fl_json_get_obj(rt, "limits", &lim)) < 0)
		return r;
	static const char *const keys[] = {"memory_mb", "request_timeout_ms", "max_queue", NULL};
	if ((r = fl_json_check_keys(lim, keys, NULL)) < 0)
		return r;
	for (size_t i = 0; i < FL_ARRAY_SIZE(limit_ints); i++)
		if ((r = fl_json_get_int_opt(lim, limit_ints[i].key, limit_ints[i].min,
					     limit_ints[i].max, limit_ints[i].min, &v)) < 0)
			return r;
	return 0;
}

int ota_manifest_validate(const struct ota_manifest *m, bool require_files)
{
	if (!m || !m->name || !fl_name_valid(m->name, OTA_MANIFEST_MAX_NAME))
		return -FL_ESCHEMA;
	if (!token_valid(m->version, OTA_MANIFEST_MAX_VERSION))
		return -FL_ESCHEMA;
	if (m->sequence > (uint64_t)OTA_MANIFEST_MAX_INT)
		return -FL_ERANGE;
	if (m->created_s < 0 || m->expires_s <= m->created_s || m->expires_s > OTA_TIME_MAX_S)
		return -FL_ESCHEMA;
	if (m->description && !text_valid(m->description, OTA_MANIFEST_MAX_TEXT, true))
		return -FL_ESCHEMA;

	const struct ota_compat *c = &m->compat;
	if (c->n_arch > OTA_MANIFEST_MAX_ARCH)
		return -FL_ETOOBIG;
	for (size_t i = 0; i < c->n_arch; i++) {
		if (!fl_name_valid(c->arch[i], OTA_MANIFEST_MAX_NAME))
			return -FL_ESCHEMA;
		for (size_t j = 0; j < i; j++)
			if (!strcmp(c->arch[i], c->arch[j]))
				return -FL_EDUP;
	}
	if (c->min_ram_mb > (uint64_t)RAM_MB_LIMIT)
		return -FL_ERANGE;
	if (!fl_name_valid(c->accelerator, OTA_MANIFEST_MAX_NAME) ||
	    !fl_name_valid(c->backend, OTA_MANIFEST_MAX_NAME))
		return -FL_ESCHEMA;

	if (!m->runtime || !cJSON_IsObject(m->runtime))
		return -FL_ESCHEMA;
	int r = runtime_validate(m->runtime, 1);
	if (r < 0 || (r = runtime_check_known(m->runtime)) < 0)
		return r;

	if (m->n_tests > OTA_MANIFEST_MAX_TESTS)
		return -FL_ETOOBIG;
	for (size_t i = 0; i < m->n_tests; i++) {
		const struct ota_acceptance_test *t = &m->tests[i];
		if (t->name && !fl_name_valid(t->name, OTA_MANIFEST_MAX_NAME))
			return -FL_ESCHEMA;
		if (!text_valid(t->prompt, OTA_MANIFEST_MAX_PROMPT, false))
			return -FL_ESCHEMA;
		if (t->expect && !text_valid(t->expect, OTA_MANIFEST_MAX_EXPECT, true))
			return -FL_ESCHEMA;
		if (t->max_tokens < 1 || t->max_tokens > MAX_TOKENS_LIMIT ||
		    t->latency_budget_ms > BUDGET_MS_LIMIT || t->memory_budget_mb > BUDGET_MB_LIMIT)
			return -FL_ERANGE;
	}

	const struct ota_trial *tr = &m->trial;
	if (tr->window_s > TRIAL_WINDOW_LIMIT_S || tr->min_requests > TRIAL_REQUESTS_LIMIT ||
	    tr->max_p95_latency_ms > BUDGET_MS_LIMIT || !(tr->max_error_rate >= 0.0) ||
	    !(tr->max_error_rate <= 1.0))
		return -FL_ERANGE;

	if (m->chunking && !token_valid(m->chunking, OTA_MANIFEST_MAX_TEXT))
		return -FL_ESCHEMA;

	if (m->n_files > OTA_MANIFEST_MAX_FILES)
		return -FL_ETOOBIG;
	if (require_files && m->n_files == 0)
		return -FL_ESCHEMA;
	for (size_t i = 0; i < m->n_files; i++) {
		if (!ota_manifest_path_valid(m->files[i].path))
			return -FL_EPATH;
		if (m->files[i].size > (uint64_t)OTA_MANIFEST_MAX_INT)
			return -FL_ERANGE;
		for (size_t j = 0; j < i; j++)
			if (!strcmp(m->files[i].path, m->files[j].path))
				return -FL_EDUP;
	}
	return 0;
}

/* ---- parsing ------------------------------------------------------------- */

static int dup_str(const char *s, char **ret)
{
	char *d = strdup(s);
	if (!d)
		return -ENOMEM;
	*ret = d;
	return 0;
}

/* Copy a string member of at most MAX bytes (longer: -FL_ESCHEMA). */
static int get_str_dup(const cJSON *obj, const char *key, size_t max, char **ret)
{
	const char *s;
	int r = fl_json_get_str(obj, key, &s);
	if (r < 0)
		return r;
	if (strnlen(s, max + 1) > max)
		return -FL_ESCHEMA;
	return dup_str(s, ret);
}

static int get_str_dup_opt(const cJSON *obj, const char *key, size_t max, char **ret)
{
	if (!cJSON_GetObjectItemCaseSensitive(obj, key))
		return 0;
	return get_str_dup(obj, key, max, ret);
}

static int get_time(const cJSON *obj, const char *key, int64_t *ret)
{
	const char *s;
	int r = fl_json_get_str(obj, key, &s);
	if (r < 0)
		return r;
	if (fl_time_parse(s, ret) < 0)
		return -FL_ESCHEMA;
	return 0;
}

static int get_u32(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t def,
		   bool required, uint32_t *ret)
{
	int64_t v;
	int r = required ? fl_json_get_int(obj, key, min, max, &v)
			 : fl_json_get_int_opt(obj, key, min, max, def, &v);
	if (r < 0)
		return r;
	*ret = (uint32_t)v;
	return 0;
}

static int parse_compat(const cJSON *root, struct ota_compat *c)
{
	const cJSON *obj;
	int r = fl_json_get_obj(root, "compatibility", &obj);
	if (r < 0)
		return r;
	static const char *const keys[] = {"arch", "min_ram_mb", "accelerator", "backend", NULL};
	if ((r = fl_json_check_keys(obj, keys, NULL)) < 0)
		return r;
	if (cJSON_GetObjectItemCaseSensitive(obj, "arch")) {
		const cJSON *arr;
		if ((r = fl_json_get_arr(obj, "arch", &arr)) < 0)
			return r;
		int n = cJSON_GetArraySize(arr);
		if (n > OTA_MANIFEST_MAX_ARCH)
			return -FL_ETOOBIG;
		if (n > 0) {
			c->arch = calloc((size_t)n, sizeof(char *));
			if (!c->arch)
				return -ENOMEM;
		}
		const cJSON *a;
		cJSON_ArrayForEach(a, arr)
		{
			if (!cJSON_IsString(a))
				return -FL_ESCHEMA;
			if ((r = dup_str(a->valuestring, &c->arch[c->n_arch])) < 0)
				return r;
			c->n_arch++;
		}
	}
	int64_t ram;
	if ((r = fl_json_get_int_opt(obj, "min_ram_mb", 0, RAM_MB_LIMIT, 0, &ram)) < 0)
		return r;
	c->min_ram_mb = (uint64_t)ram;
	if (cJSON_GetObjectItemCaseSensitive(obj, "accelerator"))
		r = get_str_dup(obj, "accelerator", OTA_MANIFEST_MAX_NAME, &c->accelerator);
	else
		r = dup_str("none", &c->accelerator);
	if (r < 0)
		return r;
	return get_str_dup(obj, "backend", OTA_MANIFEST_MAX_NAME, &c->backend);
}

static int parse_tests(const cJSON *root, struct ota_manifest *m)
{
	if (!cJSON_GetObjectItemCaseSensitive(root, "acceptance"))
		return 0;
	const cJSON *arr;
	int r = fl_json_get_arr(root, "acceptance", &arr);
	if (r < 0)
		return r;
	int n = cJSON_GetArraySize(arr);
	if (n > OTA_MANIFEST_MAX_TESTS)
		return -FL_ETOOBIG;
	if (n == 0)
		return 0;
	m->tests = calloc((size_t)n, sizeof(*m->tests));
	if (!m->tests)
		return -ENOMEM;
	static const char *const keys[] = {"name",		"prompt",	   "expect", "max_tokens",
					   "latency_budget_ms", "memory_budget_mb", NULL};
	const cJSON *o;
	cJSON_ArrayForEach(o, arr)
	{
		struct ota_acceptance_test *t = &m->tests[m->n_tests++];
		if (!cJSON_IsObject(o))
			return -FL_ESCHEMA;
		if ((r = fl_json_check_keys(o, keys, NULL)) < 0 ||
		    (r = get_str_dup_opt(o, "name", OTA_MANIFEST_MAX_NAME, &t->name)) < 0 ||
		    (r = get_str_dup(o, "prompt", OTA_MANIFEST_MAX_PROMPT, &t->prompt)) < 0 ||
		    (r = get_str_dup_opt(o, "expect", OTA_MANIFEST_MAX_EXPECT, &t->expect)) < 0 ||
		    (r = get_u32(o, "max_tokens", 1, MAX_TOKENS_LIMIT, 0, true, &t->max_tokens)) < 0 ||
		    (r = get_u32(o, "latency_budget_ms", 0, BUDGET_MS_LIMIT, 0, false,
				 &t->latency_budget_ms)) < 0 ||
		    (r = get_u32(o, "memory_budget_mb", 0, BUDGET_MB_LIMIT, 0, false,
				 &t->memory_budget_mb)) < 0)
			return r;
	}
	return 0;
}

static int parse_trial(const cJSON *root, struct ota_trial *t)
{
	t->max_error_rate = 1.0;
	if (!cJSON_GetObjectItemCaseSensitive(root, "trial"))
		return 0;
	const cJSON *o;
	int r = fl_json_get_obj(root, "trial", &o);
	if (r < 0)
		return r;
	static const char *const keys[] = {"window_s", "min_requests", "max_error_rate",
					   "max_p95_latency_ms", NULL};
	if ((r = fl_json_check_keys(o, keys, NULL)) < 0 ||
	    (r = get_u32(o, "window_s", 0, TRIAL_WINDOW_LIMIT_S, 0, false, &t->window_s)) < 0 ||
	    (r = get_u32(o, "min_requests", 0, TRIAL_REQUESTS_LIMIT, 0, false, &t->min_requests)) <
		    0 ||
	    (r = fl_json_get_double_opt(o, "max_error_rate", 0.0, 1.0, 1.0, &t->max_error_rate)) <
		    0 ||
	    (r = get_u32(o, "max_p95_latency_ms", 0, BUDGET_MS_LIMIT, 0, false,
			 &t->max_p95_latency_ms)) < 0)
		return r;
	return 0;
}

/* "telemetry": {"include_content": bool} (optional, default false). */
static int parse_telemetry(const cJSON *root, bool *include_content)
{
	*include_content = false;
	if (!cJSON_GetObjectItemCaseSensitive(root, "telemetry"))
		return 0;
	const cJSON *o;
	int r = fl_json_get_obj(root, "telemetry", &o);
	if (r < 0)
		return r;
	static const char *const keys[] = {"include_content", NULL};
	if ((r = fl_json_check_keys(o, keys, NULL)) < 0)
		return r;
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "include_content");
	if (v && !cJSON_IsBool(v))
		return -FL_ESCHEMA;
	*include_content = cJSON_IsTrue(v);
	return 0;
}

static int get_hash(const cJSON *obj, const char *key, uint8_t out[32])
{
	const char *s;
	int r = fl_json_get_str(obj, key, &s);
	if (r < 0)
		return r;
	if (strlen(s) != FL_SHA256_HEX_LEN || fl_hex_decode(s, out, FL_SHA256_LEN) < 0)
		return -FL_ESCHEMA;
	return 0;
}

static int parse_files(const cJSON *root, struct ota_manifest *m, bool require_files)
{
	if (!require_files && !cJSON_GetObjectItemCaseSensitive(root, "files"))
		return 0;
	const cJSON *arr;
	int r = fl_json_get_arr(root, "files", &arr);
	if (r < 0)
		return r;
	int n = cJSON_GetArraySize(arr);
	if (n > OTA_MANIFEST_MAX_FILES)
		return -FL_ETOOBIG;
	if (n == 0)
		return require_files ? -FL_ESCHEMA : 0;
	m->files = calloc((size_t)n, sizeof(*m->files));
	if (!m->files)
		return -ENOMEM;
	static const char *const keys[] = {"path", "size", "sha256", "chunk_index_sha256", NULL};
	const cJSON *o;
	cJSON_ArrayForEach(o, arr)
	{
		struct ota_manifest_file *f = &m->files[m->n_files++];
		if (!cJSON_IsObject(o))
			return -FL_ESCHEMA;
		int64_t size;
		const char *path;
		if ((r = fl_json_check_keys(o, keys, NULL)) < 0 ||
		    (r = fl_json_get_str(o, "path", &path)) < 0)
			return r;
		if (!ota_manifest_path_valid(path))
			return -FL_EPATH;
		if ((r = dup_str(path, &f->path)) < 0 ||
		    (r = fl_json_get_int(o, "size", 0, OTA_MANIFEST_MAX_INT, &size)) < 0 ||
		    (r = get_hash(o, "sha256", f->sha256)) < 0 ||
		    (r = get_hash(o, "chunk_index_sha256", f->chunk_index_sha256)) < 0)
			return r;
		f->size = (uint64_t)size;
	}
	return 0;
}

static int manifest_parse(const char *json, size_t len, bool require_files,
			  struct ota_manifest **ret)
{
	if (len > OTA_MANIFEST_MAX_BYTES)
		return -FL_ETOOBIG;
	_cleanup_(json_freep) cJSON *root = NULL;
	int r = fl_json_parse(json, len, OTA_MANIFEST_MAX_BYTES, OTA_MANIFEST_MAX_DEPTH, &root);
	if (r < 0)
		return r;
	if (!cJSON_IsObject(root))
		return -FL_ESCHEMA;
	static const char *const keys[] = {"name",	  "version",	"sequence", "created",
					   "expires",	  "description", "compatibility",
					   "runtime",	  "acceptance", "trial",    "chunking",
					   "files",	  "telemetry",	NULL};
	if ((r = fl_json_check_keys(root, keys, NULL)) < 0)
		return r;
	/* cJSON keeps duplicate members; a second "sequence" must not hide. All
	 * members are known keys, so more members than keys means a duplicate. */
	if (cJSON_GetArraySize(root) > (int)FL_ARRAY_SIZE(keys) - 1)
		return -FL_EDUP;
	for (const cJSON *a = root->child; a; a = a->next)
		for (const cJSON *b = root->child; b != a; b = b->next)
			if (!strcmp(a->string, b->string))
				return -FL_EDUP;

	_cleanup_(ota_manifest_freep) struct ota_manifest *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	int64_t seq;
	if ((r = get_str_dup(root, "name", OTA_MANIFEST_MAX_NAME, &m->name)) < 0 ||
	    (r = get_str_dup(root, "version", OTA_MANIFEST_MAX_VERSION, &m->version)) < 0 ||
	    (r = fl_json_get_int(root, "sequence", 0, OTA_MANIFEST_MAX_INT, &seq)) < 0 ||
	    (r = get_time(root, "created", &m->created_s)) < 0 ||
	    (r = get_time(root, "expires", &m->expires_s)) < 0 ||
	    (r = get_str_dup_opt(root, "description", OTA_MANIFEST_MAX_TEXT, &m->description)) < 0 ||
	    (r = parse_compat(root, &m->compat)) < 0)
		return r;
	m->sequence = (uint64_t)seq;

	if (cJSON_GetObjectItemCaseSensitive(root, "runtime")) {
		const cJSON *rt;
		if ((r = fl_json_get_obj(root, "runtime", &rt)) < 0)
			return r;
		if ((r = runtime_validate(rt, 1)) < 0)
			return r;
		m->runtime = cJSON_Duplicate(rt, true);
	} else {
		m->runtime = cJSON_CreateObject();
	}
	if (!m->runtime)
		return -ENOMEM;

	if ((r = parse_telemetry(root, &m->tele_include_content)) < 0)
		return r;
	if ((r = parse_tests(root, m)) < 0 || (r = parse_trial(root, &m->trial)) < 0 ||
	    (r = get_str_dup_opt(root, "chunking", OTA_MANIFEST_MAX_TEXT, &m->chunking)) < 0 ||
	    (r = parse_files(root, m, require_files)) < 0)
		return r;

	if ((r = ota_manifest_validate(m, require_files)) < 0)
		return r;
	*ret = fl_steal_ptr(m);
	return 0;
}

int ota_manifest_parse(const char *json, size_t len, struct ota_manifest **ret)
{
	return manifest_parse(json, len, true, ret);
}

int ota_manifest_parse_template(const char *json, size_t len, struct ota_manifest **ret)
{
	return manifest_parse(json, len, false, ret);
}

/* ---- building and serializing -------------------------------------------- */

int ota_manifest_new(const char *name, const char *version, uint64_t sequence, int64_t created_s,
		     int64_t expires_s, struct ota_manifest **ret)
{
	if (!name || !fl_name_valid(name, OTA_MANIFEST_MAX_NAME) ||
	    !token_valid(version, OTA_MANIFEST_MAX_VERSION) || created_s < 0 ||
	    expires_s <= created_s || expires_s > OTA_TIME_MAX_S ||
	    sequence > (uint64_t)OTA_MANIFEST_MAX_INT)
		return -EINVAL;
	_cleanup_(ota_manifest_freep) struct ota_manifest *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->name = strdup(name);
	m->version = strdup(version);
	m->compat.accelerator = strdup("none");
	m->compat.backend = strdup("gguf");
	m->runtime = cJSON_CreateObject();
	if (!m->name || !m->version || !m->compat.accelerator || !m->compat.backend || !m->runtime)
		return -ENOMEM;
	m->sequence = sequence;
	m->created_s = created_s;
	m->expires_s = expires_s;
	m->trial.max_error_rate = 1.0;
	*ret = fl_steal_ptr(m);
	return 0;
}

int ota_manifest_add_file(struct ota_manifest *m, const char *path, uint64_t size,
			  const uint8_t sha256[32], const uint8_t chunk_index_sha256[32])
{
	if (!ota_manifest_path_valid(path))
		return -FL_EPATH;
	if (size > (uint64_t)OTA_MANIFEST_MAX_INT)
		return -FL_ERANGE;
	if (ota_manifest_find_file(m, path))
		return -FL_EDUP;
	if (m->n_files >= OTA_MANIFEST_MAX_FILES)
		return -FL_ETOOBIG;
	char *p = strdup(path);
	if (!p)
		return -ENOMEM;
	struct ota_manifest_file *f = realloc(m->files, (m->n_files + 1) * sizeof(*f));
	if (!f) {
		free(p);
		return -ENOMEM;
	}
	m->files = f;
	f = &m->files[m->n_files++];
	f->path = p;
	f->size = size;
	memcpy(f->sha256, sha256, 32);
	memcpy(f->chunk_index_sha256, chunk_index_sha256, 32);
	return 0;
}

const struct ota_manifest_file *ota_manifest_find_file(const struct ota_manifest *m,
						       const char *path)
{
	for (size_t i = 0; i < m->n_files; i++)
		if (!strcmp(m->files[i].path, path))
			return &m->files[i];
	return NULL;
}

int ota_manifest_check_time(const struct ota_manifest *m, int64_t now)
{
	return now < m->expires_s ? 0 : -FL_EEXPIRED;
}

/* cJSON prints numbers with "%1.15g" and accepts the rounded text, which
 * loses digits above 10^15: write integers ourselves. */
static bool add_uint(cJSON *o, const char *key, uint64_t v)
{
	char buf[24];
	snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
	return cJSON_AddRawToObject(o, key, buf) != NULL;
}

static bool add_time(cJSON *o, const char *key, int64_t t)
{
	char buf[21];
	fl_time_format(t, buf);
	return cJSON_AddStringToObject(o, key, buf) != NULL;
}

static bool add_hex(cJSON *o, const char *key, const uint8_t h[32])
{
	char hex[FL_SHA256_HEX_LEN + 1];
	fl_hex_encode(h, 32, hex);
	return cJSON_AddStringToObject(o, key, hex) != NULL;
}

static int build_json(const struct ota_manifest *m, cJSON *root)
{
	if (!cJSON_AddStringToObject(root, "name", m->name) ||
	    !cJSON_AddStringToObject(root, "version", m->version) ||
	    !add_uint(root, "sequence", m->sequence) ||
	    !add_time(root, "created", m->created_s) || !add_time(root, "expires", m->expires_s))
		return -ENOMEM;
	if (m->description && !cJSON_AddStringToObject(root, "description", m->description))
		return -ENOMEM;

	cJSON *c = cJSON_AddObjectToObject(root, "compatibility");
	cJSON *arch = c ? cJSON_AddArrayToObject(c, "arch") : NULL;
	if (!arch)
		return -ENOMEM;
	for (size_t i = 0; i < m->compat.n_arch; i++) {
		cJSON *s = cJSON_CreateString(m->compat.arch[i]);
		if (!s)
			return -ENOMEM;
		cJSON_AddItemToArray(arch, s);
	}
	if (!add_uint(c, "min_ram_mb", m->compat.min_ram_mb) ||
	    !cJSON_AddStringToObject(c, "accelerator", m->compat.accelerator) ||
	    !cJSON_AddStringToObject(c, "backend", m->compat.backend))
		return -ENOMEM;

	cJSON *rt = cJSON_Duplicate(m->runtime, true);
	if (!rt)
		return -ENOMEM;
	cJSON_AddItemToObject(root, "runtime", rt);

	cJSON *tests = cJSON_AddArrayToObject(root, "acceptance");
	if (!tests)
		return -ENOMEM;
	for (size_t i = 0; i < m->n_tests; i++) {
		const struct ota_acceptance_test *t = &m->tests[i];
		cJSON *o = cJSON_CreateObject();
		if (!o)
			return -ENOMEM;
		cJSON_AddItemToArray(tests, o);
		if ((t->name && !cJSON_AddStringToObject(o, "name", t->name)) ||
		    !cJSON_AddStringToObject(o, "prompt", t->prompt) ||
		    (t->expect && !cJSON_AddStringToObject(o, "expect", t->expect)) ||
		    !add_uint(o, "max_tokens", t->max_tokens) ||
		    !add_uint(o, "latency_budget_ms", t->latency_budget_ms) ||
		    !add_uint(o, "memory_budget_mb", t->memory_budget_mb))
			return -ENOMEM;
	}

	cJSON *tr = cJSON_AddObjectToObject(root, "trial");
	if (!tr || !add_uint(tr, "window_s", m->trial.window_s) ||
	    !add_uint(tr, "min_requests", m->trial.min_requests) ||
	    !cJSON_AddNumberToObject(tr, "max_error_rate", m->trial.max_error_rate) ||
	    !add_uint(tr, "max_p95_latency_ms", m->trial.max_p95_latency_ms))
		return -ENOMEM;

	if (m->chunking && !cJSON_AddStringToObject(root, "chunking", m->chunking))
		return -ENOMEM;
	/* only when set: manifests without it serialize as before */
	if (m->tele_include_content) {
		cJSON *te = cJSON_AddObjectToObject(root, "telemetry");
		if (!te || !cJSON_AddBoolToObject(te, "include_content", true))
			return -ENOMEM;
	}

	cJSON *files = cJSON_AddArrayToObject(root, "files");
	if (!files)
		return -ENOMEM;
	for (size_t i = 0; i < m->n_files; i++) {
		const struct ota_manifest_file *f = &m->files[i];
		cJSON *o = cJSON_CreateObject();
		if (!o)
			return -ENOMEM;
		cJSON_AddItemToArray(files, o);
		if (!cJSON_AddStringToObject(o, "path", f->path) ||
		    !add_uint(o, "size", f->size) ||
		    !add_hex(o, "sha256", f->sha256) ||
		    !add_hex(o, "chunk_index_sha256", f->chunk_index_sha256))
			return -ENOMEM;
	}
	return 0;
}

int ota_manifest_to_json(const struct ota_manifest *m, char **ret, size_t *ret_len)
{
	int r = ota_manifest_validate(m, true);
	if (r < 0)
		return r;
	_cleanup_(json_freep) cJSON *root = cJSON_CreateObject();
	if (!root)
		return -ENOMEM;
	if ((r = build_json(m, root)) < 0)
		return r;
	char *out = fl_json_print(root);
	if (!out)
		return -ENOMEM;
	size_t len = strlen(out);
	if (len > OTA_MANIFEST_MAX_BYTES) {
		free(out);
		return -FL_ETOOBIG;
	}
	*ret = out;
	if (ret_len)
		*ret_len = len;
	return 0;
}
