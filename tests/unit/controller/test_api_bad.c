/* API hardening: bad tokens, unknown members, wrong types, huge bodies
 * (declared and chunked) and bad query parameters get a 4xx with a clear
 * JSON error and change nothing (audit log, rollouts, releases, devices). */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>

#include "ctl_testutil.h"

#include <flotilla/cleanup.h>
#include <flotilla/error.h>

#include "http.h"
#include "release.h"
#include "rollout.h"

#define MODEL "defect-llm"
#define RT "reader-token-0123456789"
#define OT "operator-token-0123456789"

struct body {
	char *buf;
	size_t len;
};

static size_t sink(char *d, size_t sz, size_t n, void *ud)
{
	struct body *b = ud;
	size_t k = sz * n;
	char *p = realloc(b->buf, b->len + k + 1);
	assert_non_null(p);
	b->buf = p;
	memcpy(b->buf + b->len, d, k);
	b->len += k;
	b->buf[b->len] = 0;
	return k;
}

struct src {
	size_t left;
};

static size_t source(char *d, size_t sz, size_t n, void *ud)
{
	struct src *s = ud;
	size_t k = sz * n < s->left ? sz * n : s->left;
	memset(d, ' ', k);
	s->left -= k;
	return k;
}

struct resp {
	long status;
	cJSON *json;
	bool www_auth;
};

static size_t header_cb(char *d, size_t sz, size_t n, void *ud)
{
	struct resp *r = ud;
	if (!strncasecmp(d, "WWW-Authenticate: Bearer", 24))
		r->www_auth = true;
	return sz * n;
}

/* METHOD PATH with AUTH (a whole header value, NULL: none) and DATA (NULL:
 * none); CHUNKED_BYTES > 0 streams that many blanks chunked instead. */
static struct resp call(const char *base, const char *method, const char *path, const char *auth,
			const char *data, size_t chunked_bytes)
{
	CURL *cu = curl_easy_init();
	assert_non_null(cu);
	char url[512];
	snprintf(url, sizeof(url), "%s%s", base, path);
	struct curl_slist *hd = NULL;
	char *ah = NULL;
	if (auth) {
		ah = fl_asprintf("Authorization: %s", auth);
		hd = curl_slist_append(hd, ah);
	}
	hd = curl_slist_append(hd, "Content-Type: application/json");
	struct src src = {.left = chunked_bytes};
	if (chunked_bytes) {
		hd = curl_slist_append(hd, "Transfer-Encoding: chunked");
		curl_easy_setopt(cu, CURLOPT_POST, 1L);
		curl_easy_setopt(cu, CURLOPT_READFUNCTION, source);
		curl_easy_setopt(cu, CURLOPT_READDATA, &src);
	} else if (data) {
		curl_easy_setopt(cu, CURLOPT_POSTFIELDS, data);
		curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE, (long)strlen(data));
	}
	struct body b = {0};
	struct resp r = {0};
	curl_easy_setopt(cu, CURLOPT_URL, url);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
	curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(cu, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(cu, CURLOPT_HEADERDATA, &r);
	curl_easy_setopt(cu, CURLOPT_TIMEOUT, 30L);
	CURLcode cc = curl_easy_perform(cu);
	/* The server may answer a huge body early and stop reading. */
	assert_true(cc == CURLE_OK || cc == CURLE_SEND_ERROR);
	curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &r.status);
	r.json = b.buf ? cJSON_Parse(b.buf) : NULL;
	free(b.buf);
	free(ah);
	curl_slist_free_all(hd);
	curl_easy_cleanup(cu);
	return r;
}

/* Expect STATUS and a JSON {"error"} containing WANT. */
static void expect(struct resp r, long status, const char *want, const char *what)
{
	const char *e = cJSON_GetStringValue(cJSON_GetObjectItem(r.json, "error"));
	if (r.status != status || !e || (want && !strstr(e, want)))
		fail_msg("%s: HTTP %ld '%s', expected %ld '%s'", what, r.status, e ? e : "(no error)",
			 status, want ? want : "");
	cJSON_Delete(r.json);
}

/* Everything a refused request must leave unchanged. */
static char *snapshot(struct ctl *c)
{
	struct ctl_store *s = ctl_get_store(c);
	int64_t audits = 0;
	assert_int_equal(s->ops->audit_count(s, &audits), 0);
	cJSON *ro = NULL, *rel = NULL, *dev = NULL;
	struct ctl_device_filter all = {.online = -1};
	assert_int_equal(ctl_rollout_list(c, &ro), 0);
	assert_int_equal(ctl_release_list(c, NULL, &rel), 0);
	assert_int_equal(ctl_devices_list(c, &all, &dev), 0);
	char *a = cJSON_PrintUnformatted(ro), *b = cJSON_PrintUnformatted(rel),
	     *d = cJSON_PrintUnformatted(dev);
	char *out = fl_asprintf("%lld|%s|%s|%s", (long long)audits, a, b, d);
	free(a);
	free(b);
	free(d);
	cJSON_Delete(ro);
	cJSON_Delete(rel);
	cJSON_Delete(dev);
	return out;
}

static void test_bad_api_input(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-api-bad", NULL, &dir);
	struct ctl_store *s = ctl_get_store(c);
	struct ctl_bundle_rec b = {.model = MODEL, .version = "1.4.0", .sequence = 2,
				   .envelope_id = "00", .envelope = "ENV", .files_json = "[]",
				   .pushed_at_s = 1};
	assert_int_equal(s->ops->bundle_put(s, &b), 1);
	const char *st = "{\"v\":1,\"device\":\"gw-1\",\"online\":true,\"agent\":\"1\","
			 "\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":1,\"accelerators\":[],"
			 "\"backends\":[]}}";
	assert_int_equal(ctl_registry_on_state(c, "gw-1", st, strlen(st)), 0);
	/* One rollout to act on. */
	const char *good_ro = "{\"model\":\"" MODEL "\",\"version\":\"1.4.0\",\"waves\":[100]}";
	cJSON *o = NULL;
	assert_int_equal(ctl_rollout_create(c, good_ro, strlen(good_ro), "setup", 1, &o), 0);
	cJSON_Delete(o);

	char *tmp = fl_path_join(dir, "tmp");
	assert_int_equal(fl_mkdir_p(tmp, 0700), 0);
	struct ctl_token tokens[] = {{.name = "reader", .secret = RT, .role = CTL_ROLE_READ},
				     {.name = "alice", .secret = OT, .role = CTL_ROLE_OPERATOR}};
	struct ctl_http_opts ho = {.tokens = tokens, .n_tokens = 2, .tmp_dir = tmp};
	struct ctl_http *h = NULL;
	assert_int_equal(ctl_http_start(c, &ho, &h), 0);
	char base[64];
	snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)ctl_http_port(h));
	char *before = snapshot(c);
	const char *op = "Bearer " OT, *rd = "Bearer " RT;

	/* Tokens: none, wrong scheme, unknown, empty, too long, read-only writes. */
	char longtok[400];
	memset(longtok, 'a', sizeof(longtok) - 1);
	longtok[sizeof(longtok) - 1] = 0;
	memcpy(longtok, "Bearer ", 7);
	const char *const bad_auth[] = {NULL, "Basic YWxpY2U6c2VjcmV0", "Bearer wrong-token-0123456789",
					"Bearer ", "bearer " OT, "Bearer " OT "x", longtok};
	const char *const paths[][2] = {{"GET", "/api/v1/devices"},
					{"GET", "/api/v1/rollouts/1"},
					{"GET", "/api/v1/releases"},
					{"POST", "/api/v1/rollouts"},
					{"POST", "/api/v1/releases"},
					{"POST", "/api/v1/rollouts/1/abort"},
					{"POST", "/api/v1/devices/gw-1/deploy"},
					{"GET", "/metrics"}};
	for (size_t i = 0; i < FL_ARRAY_SIZE(bad_auth); i++)
		for (size_t j = 0; j < FL_ARRAY_SIZE(paths); j++) {
			struct resp r = call(base, paths[j][0], paths[j][1], bad_auth[i],
					     !strcmp(paths[j][0], "POST") ? good_ro : NULL, 0);
			assert_true(r.www_auth);
			expect(r, 401, "bearer token", paths[j][1]);
		}
	for (size_t j = 3; j < 7; j++)
		expect(call(base, "POST", paths[j][1], rd, "{}", 0), 403, "only read", paths[j][1]);

	/* Unknown members and wrong types: 400 naming the member. */
	static const struct {
		const char *path, *body, *want;
	} bad[] = {
		{"/api/v1/rollouts", "{\"model\":\"" MODEL "\",\"version\":\"1.4.0\",\"waves\":[100],"
				     "\"evil\":1}", "'evil'"},
		{"/api/v1/rollouts", "{\"model\":\"" MODEL "\",\"version\":\"1.4.0\",\"waves\":\"100\"}",
		 "waves"},
		{"/api/v1/rollouts", "{\"model\":\"" MODEL "\",\"version\":\"1.4.0\",\"waves\":[100],"
				     "\"soak_s\":\"5\"}", "soak_s"},
		{"/api/v1/rollouts", "{\"model\":\"" MODEL "\",\"version\":\"1.4.0\",\"waves\":[100],"
				     "\"max_failure_rate\":2}", "max_failure_rate"},
		{"/api/v1/rollouts", "{\"model\":\"" MODEL "\",\"version\":\"1.4.0\",\"waves\":[100],"
				     "\"select\":{\"labels\":{\"a\":1}}}", "select.labels"},
		{"/api/v1/rollouts", "{\"model\":\"" MODEL "\",\"version\":\"1.4.0\",\"waves\":[100],"
				     "\"gates\":{\"p95\":2}}", "'p95'"},
		{"/api/v1/rollouts", "{\"model\":7,\"version\":\"1.4.0\",\"waves\":[100]}", "model"},
		{"/api/v1/rollouts", "{\"model\":\"" MODEL "\",\"version\":\"1.4.0\",\"waves\":[100]"
				     ",\"waves\":[100]}", NULL},
		{"/api/v1/rollouts", "{\"model\":\"" MODEL "\",", "body"},
		{"/api/v1/rollouts", "", "body"},
		{"/api/v1/rollouts", "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]", "body"},
		{"/api/v1/releases", "{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":"
				     "[{\"bundle\":\"1.4.0\",\"extra\":true}]}", "'extra'"},
		{"/api/v1/releases", "{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":"
				     "{\"bundle\":\"1.4.0\"}}", "variants"},
		{"/api/v1/releases", "{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":"
				     "[{\"bundle\":\"1.4.0\",\"select\":{\"min_ram_mb\":\"1G\"}}]}",
		 "min_ram_mb"},
		{"/api/v1/releases", "{\"model\":\"" MODEL "\",\"version\":null,\"variants\":[]}",
		 "version"},
		{"/api/v1/devices/gw-1/deploy", "{\"model\":\"" MODEL "\",\"version\":\"1.4.0\","
						"\"force\":true}", "expected"},
		{"/api/v1/devices/gw-1/deploy", "{\"model\":\"" MODEL "\",\"version\":1}", "expected"},
		{"/api/v1/devices/gw-1/revert", "{\"model\":[]}", "expected"},
		{"/api/v1/rollouts/1/abort", "{\"now\":true}", "expected no body"},
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(bad); i++)
		expect(call(base, "POST", bad[i].path, op, bad[i].body, 0), 400, bad[i].want,
		       bad[i].body);

	/* Huge bodies: declared (Content-Length) and streamed (chunked). */
	size_t big = CTL_ROLLOUT_BODY_MAX + 10;
	char *huge = malloc(big + 1);
	assert_non_null(huge);
	memset(huge, ' ', big);
	huge[big] = 0;
	huge[0] = '{';
	expect(call(base, "POST", "/api/v1/rollouts", op, huge, 0), 413, "too large", "rollout");
	huge[CTL_RELEASE_BODY_MAX + 10] = 0;
	expect(call(base, "POST", "/api/v1/releases", op, huge, 0), 413, "too large", "release");
	huge[CTL_HTTP_JSON_BODY_MAX + 10] = 0;
	expect(call(base, "POST", "/api/v1/devices/gw-1/deploy", op, huge, 0), 413, "too large",
	       "deploy");
	free(huge);
	expect(call(base, "POST", "/api/v1/rollouts", op, NULL, CTL_ROLLOUT_BODY_MAX + 100), 413,
	       "too large", "rollout chunked");
	expect(call(base, "POST", "/api/v1/releases", op, NULL, CTL_RELEASE_BODY_MAX + 100), 413,
	       "too large", "release chunked");

	/* Query parameters and paths. */
	expect(call(base, "GET", "/api/v1/devices?limit=0", rd, NULL, 0), 400, "limit", "limit");
	expect(call(base, "GET", "/api/v1/devices?online=maybe", rd, NULL, 0), 400, "online",
	       "online");
	expect(call(base, "GET", "/api/v1/devices?color=red", rd, NULL, 0), 400, "query", "color");
	expect(call(base, "GET", "/api/v1/devices?min_ram_mb=lots", rd, NULL, 0), 400, "min_ram_mb",
	       "min_ram_mb");
	expect(call(base, "GET", "/api/v1/devices?install=failed", rd, NULL, 0), 400, "install",
	       "install");
	expect(call(base, "GET", "/api/v1/devices?backend=a%20b", rd, NULL, 0), 400, "backend",
	       "backend");
	expect(call(base, "GET", "/api/v1/releases?model=a&model=b", rd, NULL, 0), 400, "query",
	       "twice");
	expect(call(base, "GET", "/api/v1/releases?model=..%2Fx", rd, NULL, 0), 400, "model",
	       "model");
	expect(call(base, "GET", "/api/v1/releases/77", rd, NULL, 0), 404, "no such release", "77");
	expect(call(base, "GET", "/api/v1/releases/a/b", rd, NULL, 0), 404, "no such release", "a/b");
	expect(call(base, "PUT", "/api/v1/releases", op, "{}", 0), 405, "method", "PUT");
	expect(call(base, "DELETE", "/api/v1/rollouts/1", op, NULL, 0), 405, "method", "DELETE");

	char *after = snapshot(c);
	assert_string_equal(before, after);
	free(before);
	free(after);
	ctl_http_stop(h);
	free(tmp);
	ctu_close(c, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_api_input),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
