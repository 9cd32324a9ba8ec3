/* Manifest v1: parse, validate, build, canonical serialization, and a table
 * of bad inputs each with its own error code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ota_testutil.h"
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/manifest.h>

#define H64A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define H64B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

static const char valid[] =
	"{\"name\":\"tinyllama-chat\",\"version\":\"1.4.0\",\"sequence\":42,"
	"\"created\":\"2026-11-25T10:00:00Z\",\"expires\":\"2027-02-23T10:00:00Z\","
	"\"description\":\"fine-tune of\\nthe week\","
	"\"compatibility\":{\"arch\":[\"x86_64\",\"aarch64\"],\"min_ram_mb\":512,"
	"\"accelerator\":\"none\",\"backend\":\"gguf\"},"
	"\"runtime\":{\"context_length\":2048,\"threads\":4,\"limits\":{\"memory_mb\":800,"
	"\"request_timeout_ms\":30000,\"max_queue\":4},"
	"\"stop\":[\"</s>\"],\"mmap\":true},"
	"\"acceptance\":[{\"name\":\"greet\",\"prompt\":\"Hello\",\"expect\":\"Hi\","
	"\"max_tokens\":16,\"latency_budget_ms\":2000,\"memory_budget_mb\":600},"
	"{\"prompt\":\"2+2=\",\"max_tokens\":4}],"
	"\"trial\":{\"window_s\":600,\"min_requests\":20,\"max_error_rate\":0.05,"
	"\"max_p95_latency_ms\":1500},"
	"\"chunking\":\"gear-v1:avg=262144\","
	"\"files\":[{\"path\":\"model.gguf\",\"size\":1234,\"sha256\":\"" H64A "\","
	"\"chunk_index_sha256\":\"" H64B "\"},"
	"{\"path\":\"tok/tokenizer.json\",\"size\":0,\"sha256\":\"" H64B "\","
	"\"chunk_index_sha256\":\"" H64A "\"}]}";

static struct ota_manifest *parse_ok(const char *json)
{
	struct ota_manifest *m = NULL;
	int r = ota_manifest_parse(json, strlen(json), &m);
	if (r != 0)
		fail_msg("parse: %s", fl_strerror(r));
	return m;
}

static void test_parse_valid(void **state)
{
	struct ota_manifest *m = parse_ok(valid);
	assert_string_equal(m->name, "tinyllama-chat");
	assert_string_equal(m->version, "1.4.0");
	assert_int_equal(m->sequence, 42);
	int64_t t;
	assert_int_equal(fl_time_parse("2026-11-25T10:00:00Z", &t), 0);
	assert_int_equal(m->created_s, t);
	assert_int_equal(m->expires_s, t + 90 * TU_DAY);
	assert_string_equal(m->description, "fine-tune of\nthe week");
	assert_int_equal(m->compat.n_arch, 2);
	assert_string_equal(m->compat.arch[1], "aarch64");
	assert_int_equal(m->compat.min_ram_mb, 512);
	assert_string_equal(m->compat.accelerator, "none");
	assert_string_equal(m->compat.backend, "gguf");
	int64_t ctx;
	assert_int_equal(fl_json_get_int(m->runtime, "context_length", 0, 1 << 20, &ctx), 0);
	assert_int_equal(ctx, 2048);
	assert_int_equal(m->n_tests, 2);
	assert_string_equal(m->tests[0].name, "greet");
	assert_string_equal(m->tests[0].expect, "Hi");
	assert_int_equal(m->tests[0].latency_budget_ms, 2000);
	assert_int_equal(m->tests[0].memory_budget_mb, 600);
	assert_null(m->tests[1].name);
	assert_null(m->tests[1].expect);
	assert_int_equal(m->tests[1].max_tokens, 4);
	assert_int_equal(m->tests[1].latency_budget_ms, 0);
	assert_int_equal(m->trial.window_s, 600);
	assert_int_equal(m->trial.min_requests, 20);
	assert_true(m->trial.max_error_rate > 0.049 && m->trial.max_error_rate < 0.051);
	assert_int_equal(m->trial.max_p95_latency_ms, 1500);
	assert_string_equal(m->chunking, "gear-v1:avg=262144");
	assert_int_equal(m->n_files, 2);
	assert_string_equal(m->files[0].path, "model.gguf");
	assert_int_equal(m->files[0].size, 1234);
	assert_int_equal(m->files[0].sha256[0], 0xaa);
	assert_int_equal(m->files[0].chunk_index_sha256[31], 0xbb);
	assert_ptr_equal(ota_manifest_find_file(m, "tok/tokenizer.json"), &m->files[1]);
	assert_null(ota_manifest_find_file(m, "nope"));
	ota_manifest_free(m);
	ota_manifest_free(NULL);
}

static void test_roundtrip(void **state)
{
	struct ota_manifest *m = parse_ok(valid);
	char *a = NULL, *b = NULL;
	size_t alen = 0;
	assert_int_equal(ota_manifest_to_json(m, &a, &alen), 0);
	assert_int_equal(alen, strlen(a));
	struct ota_manifest *m2 = parse_ok(a);
	assert_int_equal(ota_manifest_to_json(m2, &b, NULL), 0);
	assert_string_equal(a, b); /* canonical: a fixed point */
	assert_int_equal(m2->sequence, m->sequence);
	assert_memory_equal(m2->files[1].sha256, m->files[1].sha256, 32);
	/* Members come out in the documented order. */
	assert_true(strstr(a, "\"name\"") < strstr(a, "\"sequence\""));
	assert_true(strstr(a, "\"runtime\"") < strstr(a, "\"files\""));
	free(a);
	free(b);
	ota_manifest_free(m);
	ota_manifest_free(m2);

	/* A minimal manifest: optional members get their defaults. */
	const char minimal[] = "{\"name\":\"m\",\"version\":\"1\",\"sequence\":0,"
			       "\"created\":\"2026-01-01T00:00:00Z\",\"expires\":\"2026-01-02T00:00:00Z\","
			       "\"compatibility\":{\"backend\":\"exec\"},"
			       "\"files\":[{\"path\":\"f\",\"size\":9007199254740991,\"sha256\":\"" H64A
			       "\",\"chunk_index_sha256\":\"" H64A "\"}]}";
	m = parse_ok(minimal);
	assert_int_equal(m->compat.n_arch, 0);
	assert_string_equal(m->compat.accelerator, "none");
	assert_true(cJSON_IsObject(m->runtime));
	assert_int_equal(m->trial.window_s, 0);
	assert_true(m->trial.max_error_rate == 1.0);
	assert_null(m->chunking);
	assert_int_equal(m->files[0].size, 9007199254740991ULL);
	assert_int_equal(ota_manifest_to_json(m, &a, NULL), 0);
	assert_non_null(strstr(a, "\"size\":9007199254740991"));
	m2 = parse_ok(a);
	assert_int_equal(m2->files[0].size, 9007199254740991ULL);
	free(a);
	ota_manifest_free(m);
	ota_manifest_free(m2);
}

static void test_build(void **state)
{
	struct ota_manifest *m = NULL;
	assert_int_equal(ota_manifest_new("bad name", "1", 1, 0, 10, &m), -EINVAL);
	assert_int_equal(ota_manifest_new("ok", "has space", 1, 0, 10, &m), -EINVAL);
	assert_int_equal(ota_manifest_new("ok", "1", 1, 10, 10, &m), -EINVAL);
	assert_int_equal(ota_manifest_new("ok", "1", 1ULL << 60, 0, 10, &m), -EINVAL);
	assert_null(m);
	assert_int_equal(ota_manifest_new("llm", "2.0", 7, TU_NOW, TU_NOW + TU_DAY, &m), 0);
	char *json = NULL;
	/* No files yet: cannot be serialized. */
	assert_int_equal(ota_manifest_to_json(m, &json, NULL), -FL_ESCHEMA);
	assert_int_equal(ota_manifest_validate(m, false), 0);
	uint8_t h1[32], h2[32];
	memset(h1, 1, 32);
	memset(h2, 2, 32);
	assert_int_equal(ota_manifest_add_file(m, "model.gguf", 100, h1, h2), 0);
	assert_int_equal(ota_manifest_add_file(m, "model.gguf", 100, h1, h2), -FL_EDUP);
	assert_int_equal(ota_manifest_add_file(m, "../x", 1, h1, h2), -FL_EPATH);
	assert_int_equal(ota_manifest_add_file(m, "x", 1ULL << 60, h1, h2), -FL_ERANGE);
	assert_int_equal(m->n_files, 1);
	m->chunking = strdup("gear-v1");
	assert_int_equal(ota_manifest_to_json(m, &json, NULL), 0);
	struct ota_manifest *p = parse_ok(json);
	assert_string_equal(p->name, "llm");
	assert_int_equal(p->sequence, 7);
	assert_int_equal(p->created_s, TU_NOW);
	assert_int_equal(p->expires_s, TU_NOW + TU_DAY);
	assert_string_equal(p->compat.backend, "gguf");
	assert_memory_equal(p->files[0].chunk_index_sha256, h2, 32);
	assert_string_equal(p->chunking, "gear-v1");
	free(json);
	ota_manifest_free(p);

	/* Hand-filled bad values are caught by validate and to_json. */
	m->trial.max_error_rate = 2.0;
	assert_int_equal(ota_manifest_validate(m, true), -FL_ERANGE);
	assert_int_equal(ota_manifest_to_json(m, &json, NULL), -FL_ERANGE);
	m->trial.max_error_rate = 0.5;
	free(m->files[0].path);
	m->files[0].path = strdup("/etc/passwd");
	assert_int_equal(ota_manifest_validate(m, true), -FL_EPATH);
	ota_manifest_free(m);

	/* The file count limit. */
	assert_int_equal(ota_manifest_new("many", "1", 1, 0, 10, &m), 0);
	for (int i = 0; i < OTA_MANIFEST_MAX_FILES; i++) {
		char name[32];
		snprintf(name, sizeof(name), "f%d", i);
		assert_int_equal(ota_manifest_add_file(m, name, 1, h1, h2), 0);
	}
	assert_int_equal(ota_manifest_add_file(m, "one-more", 1, h1, h2), -FL_ETOOBIG);
	assert_int_equal(m->n_files, OTA_MANIFEST_MAX_FILES);
	assert_int_equal(ota_manifest_to_json(m, &json, &(size_t){0}), 0);
	struct ota_manifest *big = parse_ok(json);
	assert_int_equal(big->n_files, OTA_MANIFEST_MAX_FILES);
	ota_manifest_free(big);
	free(json);
	ota_manifest_free(m);
}

static void test_template(void **state)
{
	const char tmpl[] = "{\"name\":\"m\",\"version\":\"1\",\"sequence\":3,"
			    "\"created\":\"2026-01-01T00:00:00Z\",\"expires\":\"2026-01-02T00:00:00Z\","
			    "\"compatibility\":{\"backend\":\"gguf\"}}";
	struct ota_manifest *m = NULL;
	assert_int_equal(ota_manifest_parse(tmpl, strlen(tmpl), &m), -FL_ESCHEMA);
	assert_null(m);
	assert_int_equal(ota_manifest_parse_template(tmpl, strlen(tmpl), &m), 0);
	assert_int_equal(m->n_files, 0);
	ota_manifest_free(m);
}

static void test_check_time(void **state)
{
	struct ota_manifest *m = parse_ok(valid);
	assert_int_equal(ota_manifest_check_time(m, m->created_s), 0);
	assert_int_equal(ota_manifest_check_time(m, m->created_s - 1000), 0); /* clock behind */
	assert_int_equal(ota_manifest_check_time(m, m->expires_s - 1), 0);
	assert_int_equal(ota_manifest_check_time(m, m->expires_s), -FL_EEXPIRED);
	assert_int_equal(ota_manifest_check_time(m, m->expires_s + 365 * TU_DAY), -FL_EEXPIRED);
	ota_manifest_free(m);
}

static void test_paths(void **state)
{
	static const char *good[] = {"a", "model.gguf", "dir/sub/file.bin", "..a", "a..", ".hidden",
				     "a/.b", "with space", "ünï"};
	static const char *bad[] = {"",	    "/abs",  "a/",     "a//b", "..",  "../a", "a/../b",
				    "a/..", ".",     "./a",    "a/./b", "a\\b", "a\nb", "\x7f"};
	for (size_t i = 0; i < FL_ARRAY_SIZE(good); i++)
		if (!ota_manifest_path_valid(good[i]))
			fail_msg("should be valid: '%s'", good[i]);
	for (size_t i = 0; i < FL_ARRAY_SIZE(bad); i++)
		if (ota_manifest_path_valid(bad[i]))
			fail_msg("should be invalid: '%s'", bad[i]);
	assert_false(ota_manifest_path_valid(NULL));
	char longp[OTA_MANIFEST_MAX_PATH + 2];
	memset(longp, 'a', sizeof(longp));
	longp[OTA_MANIFEST_MAX_PATH] = 0;
	assert_true(ota_manifest_path_valid(longp));
	longp[OTA_MANIFEST_MAX_PATH] = 'a';
	longp[OTA_MANIFEST_MAX_PATH + 1] = 0;
	assert_false(ota_manifest_path_valid(longp));
}

/* VALID with one member changed: KEY at top level, or SUB inside the object
 * KEY (or inside element 0 when KEY is an array). VALUE is JSON text; NULL
 * removes the member. Caller frees. */
static char *variant(const char *key, const char *sub, const char *value)
{
	cJSON *root = cJSON_Parse(valid);
	assert_non_null(root);
	cJSON *obj = root;
	if (sub) {
		obj = cJSON_GetObjectItemCaseSensitive(root, key);
		if (cJSON_IsArray(obj))
			obj = cJSON_GetArrayItem(obj, 0);
		key = sub;
	}
	assert_non_null(obj);
	cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
	if (value) {
		cJSON *v = cJSON_Parse(value);
		assert_non_null(v);
		cJSON_AddItemToObject(obj, key, v);
	}
	char *out = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	return out;
}

/* A JSON array of N copies of ITEM; caller frees. */
static char *repeat(const char *item, size_t n)
{
	size_t il = strlen(item);
	char *s = malloc(n * (il + 1) + 3);
	char *p = s;
	*p++ = '[';
	for (size_t i = 0; i < n; i++) {
		if (i)
			*p++ = ',';
		memcpy(p, item, il);
		p += il;
	}
	*p++ = ']';
	*p = 0;
	return s;
}

/* The runtime settings at the ends of their ranges are accepted. */
static void test_runtime_limits_bounds(void **state)
{
	(void)state;
	static const char *const ok[][2] = {
		{"limits", "{\"memory_mb\":16,\"request_timeout_ms\":3600000,\"max_queue\":1}"},
		{"limits", "{\"memory_mb\":16777216,\"request_timeout_ms\":1,\"max_queue\":4096}"},
		{"limits", "{}"},
		{"threads", "256"},
		{"context_length", "16"},
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(ok); i++) {
		char *json = variant("runtime", ok[i][0], ok[i][1]);
		struct ota_manifest *m = NULL;
		int r = ota_manifest_parse(json, strlen(json), &m);
		if (r < 0)
			fail_msg("runtime.%s = %s: %s", ok[i][0], ok[i][1], fl_strerror(r));
		ota_manifest_free(m);
		free(json);
	}
}

static void test_bad_inputs(void **state)
{
	char *files_many = NULL, *tests_many = NULL, *arch_many = NULL, *deep = NULL;
	{
		/* 1025 files with distinct paths. */
		size_t n = OTA_MANIFEST_MAX_FILES + 1;
		size_t cap = n * 200 + 8;
		files_many = malloc(cap);
		size_t off = 0;
		files_many[off++] = '[';
		for (size_t i = 0; i < n; i++)
			off += (size_t)snprintf(files_many + off, cap - off,
						"%s{\"path\":\"f%zu\",\"size\":1,\"sha256\":\"" H64A
						"\",\"chunk_index_sha256\":\"" H64A "\"}",
						i ? "," : "", i);
		snprintf(files_many + off, cap - off, "]");
		tests_many = repeat("{\"prompt\":\"p\",\"max_tokens\":1}", OTA_MANIFEST_MAX_TESTS + 1);
		arch_many = fl_asprintf("[%s]", "\"a1\",\"a2\",\"a3\",\"a4\",\"a5\",\"a6\",\"a7\","
						"\"a8\",\"a9\",\"a10\",\"a11\",\"a12\",\"a13\",\"a14\","
						"\"a15\",\"a16\",\"a17\"");
		deep = strdup("{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":1}}}}}");
	}
	char big_prompt[OTA_MANIFEST_MAX_PROMPT + 8];
	big_prompt[0] = '"';
	memset(big_prompt + 1, 'x', OTA_MANIFEST_MAX_PROMPT + 1);
	strcpy(big_prompt + OTA_MANIFEST_MAX_PROMPT + 2, "\"");

	struct {
		const char *what;
		const char *key, *sub, *value;
		int err;
	} cases[] = {
		{"unknown top-level key", "extra", NULL, "1", -FL_ESCHEMA},
		{"missing name", "name", NULL, NULL, -FL_ESCHEMA},
		{"name with slash", "name", NULL, "\"a/b\"", -FL_ESCHEMA},
		{"name starting with dot", "name", NULL, "\".x\"", -FL_ESCHEMA},
		{"name is a number", "name", NULL, "5", -FL_ESCHEMA},
		{"empty version", "version", NULL, "\"\"", -FL_ESCHEMA},
		{"version with space", "version", NULL, "\"1 0\"", -FL_ESCHEMA},
		{"missing sequence", "sequence", NULL, NULL, -FL_ESCHEMA},
		{"sequence 1e300", "sequence", NULL, "1e300", -FL_ERANGE},
		{"sequence 1e16", "sequence", NULL, "1e16", -FL_ERANGE},
		{"negative sequence", "sequence", NULL, "-1", -FL_ERANGE},
		{"fractional sequence", "sequence", NULL, "1.5", -FL_ERANGE},
		{"sequence as string", "sequence", NULL, "\"5\"", -FL_ESCHEMA},
		{"bad created", "created", NULL, "\"yesterday\"", -FL_ESCHEMA},
		{"local time", "created", NULL, "\"2026-11-25T10:00:00+01:00\"", -FL_ESCHEMA},
		{"expires before created", "expires", NULL, "\"2026-11-25T09:59:59Z\"", -FL_ESCHEMA},
		{"expires equals created", "expires", NULL, "\"2026-11-25T10:00:00Z\"", -FL_ESCHEMA},
		{"description with control char", "description", NULL, "\"a\\u0001\"", -FL_ESCHEMA},
		{"missing compatibility", "compatibility", NULL, NULL, -FL_ESCHEMA},
		{"unknown compat key", "compatibility", "gpu", "true", -FL_ESCHEMA},
		{"missing backend", "compatibility", "backend", NULL, -FL_ESCHEMA},
		{"bad backend", "compatibility", "backend", "\"g guf\"", -FL_ESCHEMA},
		{"arch not strings", "compatibility", "arch", "[1]", -FL_ESCHEMA},
		{"duplicate arch", "compatibility", "arch", "[\"x86_64\",\"x86_64\"]", -FL_EDUP},
		{"too many arch", "compatibility", "arch", arch_many, -FL_ETOOBIG},
		{"negative ram", "compatibility", "min_ram_mb", "-1", -FL_ERANGE},
		{"absurd ram", "compatibility", "min_ram_mb", "1e300", -FL_ERANGE},
		{"runtime not object", "runtime", NULL, "[]", -FL_ESCHEMA},
		{"runtime null value", "runtime", "x", "null", -FL_ESCHEMA},
		{"runtime bad key", "runtime", NULL, "{\"bad key\":1}", -FL_ESCHEMA},
		{"runtime too deep", "runtime", NULL, deep, -FL_ETOODEEP},
		/* the settings the agent reads (agent/src/serving.c): range-checked */
		{"threads 0", "runtime", "threads", "0", -FL_ERANGE},
		{"threads 257", "runtime", "threads", "257", -FL_ERANGE},
		{"threads as string", "runtime", "threads", "\"4\"", -FL_ESCHEMA},
		{"context_length 8", "runtime", "context_length", "8", -FL_ERANGE},
		{"context_length 1.5", "runtime", "context_length", "1.5", -FL_ERANGE},
		{"limits not object", "runtime", "limits", "5", -FL_ESCHEMA},
		{"max_queue 0", "runtime", "limits", "{\"max_queue\":0}", -FL_ERANGE},
		{"max_queue 4097", "runtime", "limits", "{\"max_queue\":4097}", -FL_ERANGE},
		{"max_queue negative", "runtime", "limits", "{\"max_queue\":-1}", -FL_ERANGE},
		{"memory_mb 15", "runtime", "limits", "{\"memory_mb\":15}", -FL_ERANGE},
		{"memory_mb 1e300", "runtime", "limits", "{\"memory_mb\":1e300}", -FL_ERANGE},
		{"request_timeout_ms 0", "runtime", "limits", "{\"request_timeout_ms\":0}",
		 -FL_ERANGE},
		{"request_timeout_ms > 1 h", "runtime", "limits",
		 "{\"request_timeout_ms\":3600001}", -FL_ERANGE},
		{"unknown limit max_rss_mb", "runtime", "limits", "{\"max_rss_mb\":800}",
		 -FL_ESCHEMA},
		{"acceptance not array", "acceptance", NULL, "{}", -FL_ESCHEMA},
		{"too many tests", "acceptance", NULL, tests_many, -FL_ETOOBIG},
		{"test without prompt", "acceptance", "prompt", NULL, -FL_ESCHEMA},
		{"empty prompt", "acceptance", "prompt", "\"\"", -FL_ESCHEMA},
		{"prompt too long", "acceptance", "prompt", big_prompt, -FL_ESCHEMA},
		{"max_tokens 0", "acceptance", "max_tokens", "0", -FL_ERANGE},
		{"max_tokens huge", "acceptance", "max_tokens", "1e12", -FL_ERANGE},
		{"negative latency", "acceptance", "latency_budget_ms", "-5", -FL_ERANGE},
		{"unknown test key", "acceptance", "regex", "\".*\"", -FL_ESCHEMA},
		{"error rate > 1", "trial", "max_error_rate", "1.5", -FL_ERANGE},
		{"negative error rate", "trial", "max_error_rate", "-0.1", -FL_ERANGE},
		{"unknown trial key", "trial", "x", "1", -FL_ESCHEMA},
		{"chunking not string", "chunking", NULL, "{}", -FL_ESCHEMA},
		{"missing files", "files", NULL, NULL, -FL_ESCHEMA},
		{"empty files", "files", NULL, "[]", -FL_ESCHEMA},
		{"too many files", "files", NULL, files_many, -FL_ETOOBIG},
		{"path traversal", "files", "path", "\"../etc/passwd\"", -FL_EPATH},
		{"absolute path", "files", "path", "\"/etc/passwd\"", -FL_EPATH},
		{"empty component", "files", "path", "\"a//b\"", -FL_EPATH},
		{"backslash", "files", "path", "\"a\\\\b\"", -FL_EPATH},
		{"duplicate path", "files", "path", "\"tok/tokenizer.json\"", -FL_EDUP},
		{"negative size", "files", "size", "-1", -FL_ERANGE},
		{"absurd size", "files", "size", "1e300", -FL_ERANGE},
		{"short hash", "files", "sha256", "\"abcd\"", -FL_ESCHEMA},
		{"non-hex hash", "files", "sha256",
		 "\"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\"", -FL_ESCHEMA},
		{"missing chunk index hash", "files", "chunk_index_sha256", NULL, -FL_ESCHEMA},
		{"unknown file key", "files", "mode", "\"0755\"", -FL_ESCHEMA},
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(cases); i++) {
		char *json = variant(cases[i].key, cases[i].sub, cases[i].value);
		struct ota_manifest *m = NULL;
		int r = ota_manifest_parse(json, strlen(json), &m);
		if (r != cases[i].err)
			fail_msg("%s: got %d (%s), want %s", cases[i].what, r, fl_strerror(r),
				 fl_strerror(cases[i].err));
		assert_null(m);
		free(json);
	}
	free(files_many);
	free(tests_many);
	free(arch_many);
	free(deep);

	/* Raw documents. */
	struct ota_manifest *m = NULL;
	char *seq = strdup(valid);
	char *at = strstr(seq, "\"sequence\":42,");
	assert_non_null(at);
	char *seq53 = fl_asprintf("%.*s\"sequence\":9007199254740992,%s", (int)(at - seq), seq,
				  at + strlen("\"sequence\":42,"));
	assert_int_equal(ota_manifest_parse(seq53, strlen(seq53), &m), -FL_ERANGE);
	free(seq53);
	free(seq);
	assert_int_equal(ota_manifest_parse("", 0, &m), -FL_EINVAL_JSON);
	assert_int_equal(ota_manifest_parse("[]", 2, &m), -FL_ESCHEMA);
	assert_int_equal(ota_manifest_parse(valid, strlen(valid) - 1, &m), -FL_EINVAL_JSON);
	char *nested = malloc(64);
	memset(nested, '[', 40);
	nested[40] = 0;
	assert_int_equal(ota_manifest_parse(nested, 40, &m), -FL_ETOODEEP);
	free(nested);
	size_t n = OTA_MANIFEST_MAX_BYTES + 1;
	char *big = malloc(n);
	memset(big, ' ', n);
	assert_int_equal(ota_manifest_parse(big, n, &m), -FL_ETOOBIG);
	free(big);
	assert_null(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_valid), cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_build),	    cmocka_unit_test(test_template),
		cmocka_unit_test(test_check_time),  cmocka_unit_test(test_paths),
		cmocka_unit_test(test_bad_inputs),  cmocka_unit_test(test_runtime_limits_bounds),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
