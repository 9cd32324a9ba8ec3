/* The dashboard's static files and GET /api/v1/fleet (docs/dashboard.md):
 * ctl_dash_find() on its own (traversal, %2e%2e, NUL, unknown names), then a
 * real server on 127.0.0.1 through libcurl with the path sent as is:
 * statuses, content types, security headers, ETag/304, the unescape rule,
 * and the fleet summary over devices registered through the registry. */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <strings.h>

#include "ctl_testutil.h"

#include <flotilla/cleanup.h>
#include <flotilla/error.h>

#include "dashboard.h"
#include "http.h"

#define RT "reader-token-0123456789"

static struct ctl *c;
static struct ctl_http *h;
static char *dir;
static char base[64];

struct answer {
	long status;
	char type[128];
	char etag[80];
	char csp[512];
	bool nosniff;
	bool frame_deny;
	char cache[64];
	char body[65536];
	size_t len;
};

static size_t sink(char *d, size_t s, size_t n, void *ud)
{
	struct answer *a = ud;
	size_t k = s * n;
	if (a->len + k >= sizeof(a->body))
		return 0;
	memcpy(a->body + a->len, d, k);
	a->len += k;
	a->body[a->len] = 0;
	return k;
}

/* Copy the value of header NAME from LINE into OUT when it is that header. */
static void header_value(const char *line, size_t n, const char *name, char *out, size_t out_len)
{
	size_t nl = strlen(name);
	if (n <= nl + 1 || strncasecmp(line, name, nl) || line[nl] != ':')
		return;
	const char *v = line + nl + 1;
	size_t vl = n - nl - 1;
	while (vl && (*v == ' '))
		v++, vl--;
	while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n'))
		vl--;
	snprintf(out, out_len, "%.*s", (int)vl, v);
}

static size_t on_header(char *d, size_t s, size_t n, void *ud)
{
	struct answer *a = ud;
	size_t k = s * n;
	char tmp[16];
	header_value(d, k, "Content-Type", a->type, sizeof(a->type));
	header_value(d, k, "ETag", a->etag, sizeof(a->etag));
	header_value(d, k, "Content-Security-Policy", a->csp, sizeof(a->csp));
	header_value(d, k, "Cache-Control", a->cache, sizeof(a->cache));
	tmp[0] = 0;
	header_value(d, k, "X-Content-Type-Options", tmp, sizeof(tmp));
	if (!strcmp(tmp, "nosniff"))
		a->nosniff = true;
	tmp[0] = 0;
	header_value(d, k, "X-Frame-Options", tmp, sizeof(tmp));
	if (!strcmp(tmp, "DENY"))
		a->frame_deny = true;
	return k;
}

/* METHOD PATH (sent exactly as written) with TOKEN and one extra HEADER
 * (both may be NULL). */
static void req(const char *method, const char *path, const char *token, const char *header,
		struct answer *a)
{
	memset(a, 0, sizeof(*a));
	CURL *cu = curl_easy_init();
	assert_non_null(cu);
	char url[512], auth[128];
	snprintf(url, sizeof(url), "%s%s", base, path);
	struct curl_slist *hd = NULL;
	if (token) {
		snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
		hd = curl_slist_append(hd, auth);
	}
	if (header)
		hd = curl_slist_append(hd, header);
	curl_easy_setopt(cu, CURLOPT_URL, url);
	curl_easy_setopt(cu, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
	if (!strcmp(method, "HEAD"))
		curl_easy_setopt(cu, CURLOPT_NOBODY, 1L);
	else
		curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(cu, CURLOPT_WRITEDATA, a);
	curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(cu, CURLOPT_HEADERDATA, a);
	assert_int_equal(curl_easy_perform(cu), CURLE_OK);
	curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &a->status);
	curl_slist_free_all(hd);
	curl_easy_cleanup(cu);
}

static long status_of(const char *path)
{
	struct answer a;
	req("GET", path, NULL, NULL, &a);
	return a.status;
}

/* A full state: MODEL at CUR; with INST_VER an install record in INST_STATE. */
static void state(const char *id, const char *model, const char *cur, const char *inst_ver,
		  const char *inst_state)
{
	char inst[256] = "";
	if (inst_ver)
		snprintf(inst, sizeof(inst),
			 ",\"install\":{\"version\":\"%s\",\"state\":\"%s\",\"error\":\"\"}", inst_ver,
			 inst_state);
	char s[1024];
	snprintf(s, sizeof(s),
		 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1.0\","
		 "\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":512,\"accelerators\":[],\"backends\":[\"gguf\"]},"
		 "\"labels\":{},\"models\":{\"%s\":{\"current\":\"a\",\"slots\":"
		 "{\"a\":{\"status\":\"ready\",\"version\":\"%s\",\"sequence\":1}}%s}}}",
		 id, model, cur, inst);
	assert_int_equal(ctl_registry_on_state(c, id, s, strlen(s)), 0);
}

static int setup(void **st)
{
	(void)st;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	c = ctu_open("ctl-dash", NULL, &dir);
	char *tmp = fl_path_join(dir, "tmp");
	struct ctl_token toks[] = {{"dash", RT, CTL_ROLE_READ}};
	struct ctl_http_opts o = {.address = "127.0.0.1", .port = 0, .tokens = toks,
				  .n_tokens = 1, .max_upload_bytes = 1 << 20, .tmp_dir = tmp};
	assert_int_equal(ctl_http_start(c, &o, &h), 0);
	free(tmp);
	snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)ctl_http_port(h));
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	ctl_http_stop(h);
	ctu_close(c, dir);
	curl_global_cleanup();
	return 0;
}

static int find(const char *url, size_t len)
{
	const struct ctl_dash_asset *a = NULL;
	int r = ctl_dash_find(url, len, &a);
	if (r == 0)
		assert_non_null(a);
	return r;
}
#define FIND(s) find(s, strlen(s))

static void test_find(void **st)
{
	(void)st;
	const struct ctl_dash_asset *a = NULL;
	assert_int_equal(ctl_dash_find("/", 1, &a), 0);
	assert_string_equal(a->name, "index.html");
	assert_int_equal(ctl_dash_find("/ui", 3, &a), 0);
	assert_string_equal(a->name, "index.html");
	assert_int_equal(ctl_dash_find("/ui/", 4, &a), 0);
	assert_string_equal(a->name, "index.html");
	assert_int_equal(ctl_dash_find("/ui/app.js", 10, &a), 0);
	assert_string_equal(a->name, "app.js");
	assert_true(a->len > 1000);
	assert_int_equal(a->data[a->len], 0); /* NUL after the data, not counted */
	assert_int_equal(strlen(a->etag), 34);
	assert_int_equal(FIND("/ui/device.html"), 0);
	assert_int_equal(FIND("/ui/style.css"), 0);
	assert_int_equal(FIND("/ui/favicon.svg"), 0);

	/* Traversal and anything but a plain name: -EINVAL. */
	static const char *const bad[] = {
		"/ui/../etc/passwd", "/ui/..", "/ui/..%2fx", "/ui/%2e%2e/x", "/ui/%2e%2e",
		"/ui/a/b.js",        "/ui//app.js", "/ui/.hidden", "/ui/app.js/", "/ui/app..js",
		"/ui/app.js?x=1",    "/ui/app%00.js", "/ui/app\\x.js", "/ui/ app.js", "//ui/app.js",
		"/index.html",       "/uix/app.js", "",             "/ui/embed.cmake/../app.js",
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(bad); i++)
		if (FIND(bad[i]) != -EINVAL)
			fail_msg("%s: not refused as malformed", bad[i]);
	/* A NUL inside the path: the bytes after it count, so it is refused. */
	static const char nul[] = "/ui/app.js\0.png";
	assert_int_equal(find(nul, sizeof(nul) - 1), -EINVAL);
	static const char nul2[] = "/ui/\0";
	assert_int_equal(find(nul2, sizeof(nul2) - 1), -EINVAL);
	/* A name as long as the limit is looked up; one longer is malformed. */
	char name[4 + CTL_DASH_NAME_MAX + 2];
	memcpy(name, "/ui/", 4);
	memset(name + 4, 'a', CTL_DASH_NAME_MAX);
	name[4 + CTL_DASH_NAME_MAX] = 0;
	assert_int_equal(FIND(name), -ENOENT);
	name[4 + CTL_DASH_NAME_MAX] = 'a';
	name[4 + CTL_DASH_NAME_MAX + 1] = 0;
	assert_int_equal(FIND(name), -EINVAL);
	/* Well-formed but not embedded: -ENOENT (the build script is not served). */
	assert_int_equal(FIND("/ui/nope.js"), -ENOENT);
	assert_int_equal(FIND("/ui/embed.cmake"), -ENOENT);
	assert_int_equal(FIND("/ui/INDEX.HTML"), -ENOENT);
	assert_int_equal(ctl_dash_find(NULL, 0, &a), -EINVAL);

	assert_true(ctl_dash_handles("/"));
	assert_true(ctl_dash_handles("/ui"));
	assert_true(ctl_dash_handles("/ui/x"));
	assert_false(ctl_dash_handles("/uix"));
	assert_false(ctl_dash_handles("/api/v1/fleet"));
	assert_false(ctl_dash_handles("/metrics"));
}

static void test_content_types(void **st)
{
	(void)st;
	assert_string_equal(ctl_dash_content_type("index.html"), "text/html; charset=utf-8");
	assert_string_equal(ctl_dash_content_type("app.js"), "text/javascript; charset=utf-8");
	assert_string_equal(ctl_dash_content_type("style.css"), "text/css; charset=utf-8");
	assert_string_equal(ctl_dash_content_type("favicon.svg"), "image/svg+xml");
	assert_string_equal(ctl_dash_content_type("x.png"), "image/png");
	assert_null(ctl_dash_content_type("embed.cmake"));
	assert_null(ctl_dash_content_type("noext"));
	assert_null(ctl_dash_content_type(NULL));
	/* Every embedded file has a type. */
	for (size_t i = 0; i < ctl_dash_n_assets; i++)
		if (!ctl_dash_content_type(ctl_dash_assets[i].name))
			fail_msg("%s: no content type", ctl_dash_assets[i].name);

	static const struct {
		const char *path, *type;
	} served[] = {
		{"/", "text/html; charset=utf-8"},
		{"/ui/", "text/html; charset=utf-8"},
		{"/ui/device.html", "text/html; charset=utf-8"},
		{"/ui/app.js", "text/javascript; charset=utf-8"},
		{"/ui/style.css", "text/css; charset=utf-8"},
		{"/ui/favicon.svg", "image/svg+xml"},
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(served); i++) {
		struct answer a;
		req("GET", served[i].path, NULL, NULL, &a);
		if (a.status != 200 || strcmp(a.type, served[i].type))
			fail_msg("%s: %ld %s", served[i].path, a.status, a.type);
		assert_true(a.nosniff);
		assert_true(a.frame_deny);
		assert_non_null(strstr(a.csp, "default-src 'self'"));
		assert_null(strstr(a.csp, "unsafe"));
		assert_string_equal(a.cache, "no-cache");
		assert_int_equal(strlen(a.etag), 34);
	}
	struct answer a;
	req("GET", "/", NULL, NULL, &a);
	assert_non_null(strstr(a.body, "<script src=\"/ui/app.js\""));
	assert_null(strstr(a.body, "<script>")); /* no inline script (CSP) */
}

static void test_http_paths(void **st)
{
	(void)st;
	/* Sent as is (no client-side normalization). */
	assert_int_equal(status_of("/ui/../ctl.conf"), 400);
	assert_int_equal(status_of("/ui/../../etc/passwd"), 400);
	assert_int_equal(status_of("/ui/%2e%2e/%2e%2e/etc/passwd"), 400);
	assert_int_equal(status_of("/ui/%2E%2E%2Fapp.js"), 400);
	assert_int_equal(status_of("/ui/..%2fapp.js"), 400);
	/* A NUL is not decoded (ctl_http_unescape): nothing is cut short. */
	assert_int_equal(status_of("/ui/app.js%00.png"), 400);
	assert_int_equal(status_of("/ui/%00"), 400);
	assert_int_equal(status_of("/ui/nope.js"), 404);
	assert_int_equal(status_of("/ui/embed.cmake"), 404);
	/* %XX other than %00 is decoded as before. */
	assert_int_equal(status_of("/ui/app%2ejs"), 200);
	/* The API's NUL rule too: "gw-1%00x" is not cut short to gw-1. */
	state("gw-1", "llm", "1.0", NULL, NULL);
	struct answer a;
	req("GET", "/api/v1/devices/gw-1", RT, NULL, &a);
	assert_int_equal(a.status, 200);
	req("GET", "/api/v1/devices/gw-1%00x", RT, NULL, &a);
	assert_int_equal(a.status, 404);
	/* Writes and other methods. */
	req("POST", "/ui/app.js", NULL, NULL, &a);
	assert_int_equal(a.status, 405);
	assert_true(a.nosniff);
	req("DELETE", "/", NULL, NULL, &a);
	assert_int_equal(a.status, 405);
	req("HEAD", "/ui/app.js", NULL, NULL, &a);
	assert_int_equal(a.status, 200);
	assert_int_equal(a.len, 0);
	/* Paths outside the dashboard still need a token. */
	assert_int_equal(status_of("/index.html"), 401);
	assert_int_equal(status_of("/uix"), 401);
}

static void test_etag(void **st)
{
	(void)st;
	struct answer a, b;
	req("GET", "/ui/style.css", NULL, NULL, &a);
	assert_int_equal(a.status, 200);
	char hdr[160];
	snprintf(hdr, sizeof(hdr), "If-None-Match: %s", a.etag);
	req("GET", "/ui/style.css", NULL, hdr, &b);
	assert_int_equal(b.status, 304);
	assert_int_equal(b.len, 0);
	assert_string_equal(b.etag, a.etag);
	snprintf(hdr, sizeof(hdr), "If-None-Match: \"x\", W/%s", a.etag);
	req("GET", "/ui/style.css", NULL, hdr, &b);
	assert_int_equal(b.status, 304);
	req("GET", "/ui/style.css", NULL, "If-None-Match: *", &b);
	assert_int_equal(b.status, 304);
	req("GET", "/ui/style.css", NULL, "If-None-Match: \"0123\"", &b);
	assert_int_equal(b.status, 200);
	assert_int_equal(b.len, a.len);
	/* Another file's tag does not match. */
	snprintf(hdr, sizeof(hdr), "If-None-Match: %s", a.etag);
	req("GET", "/ui/app.js", NULL, hdr, &b);
	assert_int_equal(b.status, 200);
}

static double vnum(cJSON *v, const char *k)
{
	return cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(v, k));
}

static cJSON *version_of(cJSON *fleet, const char *model, const char *version)
{
	cJSON *m, *v;
	cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(fleet, "models"))
	{
		if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "model")), model))
			continue;
		cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(m, "versions"))
		if (!strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "version")),
			    version))
			return v;
	}
	return NULL;
}

static void test_fleet(void **st)
{
	(void)st;
	state("gw-1", "llm", "1.0", NULL, NULL);
	state("gw-2", "llm", "1.0", "1.1", "REJECTED");
	state("gw-3", "llm", "1.1", "1.1", "COMMITTED");
	state("gw-4", "llm", "1.0", "1.1", "FETCHING");
	state("gw-5", "llm", "1.0", "1.1", "ROLLED_BACK");
	state("gw-6", "vision", "2.0", "2.0", "IDLE");
	const char *lwt = "{\"v\":1,\"device\":\"gw-6\",\"online\":false}";
	assert_int_equal(ctl_registry_on_state(c, "gw-6", lwt, strlen(lwt)), 0);

	cJSON *f = NULL;
	assert_int_equal(ctl_fleet_summary(c, &f), 0);
	cJSON *d = cJSON_GetObjectItemCaseSensitive(f, "devices");
	assert_int_equal((int)vnum(d, "total"), 6);
	assert_int_equal((int)vnum(d, "online"), 5);
	assert_int_equal((int)vnum(d, "offline"), 1);
	cJSON *v10 = version_of(f, "llm", "1.0"), *v11 = version_of(f, "llm", "1.1");
	assert_non_null(v10);
	assert_non_null(v11);
	assert_int_equal((int)vnum(v10, "devices"), 4);
	assert_int_equal((int)vnum(v10, "attempted"), 0);
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(v10, "failure_rate")));
	assert_int_equal((int)vnum(v11, "devices"), 1);
	assert_int_equal((int)vnum(v11, "attempted"), 4);
	assert_int_equal((int)vnum(v11, "succeeded"), 1);
	assert_int_equal((int)vnum(v11, "failed"), 2);
	assert_int_equal((int)vnum(v11, "in_progress"), 1);
	assert_true(vnum(v11, "failure_rate") > 0.49 && vnum(v11, "failure_rate") < 0.51);
	cJSON *v20 = version_of(f, "vision", "2.0");
	assert_non_null(v20);
	assert_int_equal((int)vnum(v20, "devices"), 1);
	assert_int_equal((int)vnum(v20, "attempted"), 0); /* IDLE is no install */
	cJSON *hl = cJSON_GetObjectItemCaseSensitive(f, "health");
	assert_int_equal(cJSON_GetArraySize(hl), 3);
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(hl, "gw-2")), "failed");
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(hl, "gw-4")),
			    "installing");
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(hl, "gw-5")), "failed");
	assert_false(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(f, "truncated")));
	cJSON_Delete(f);

	/* Over HTTP: the same, with a token only. */
	struct answer a;
	req("GET", "/api/v1/fleet", RT, NULL, &a);
	assert_int_equal(a.status, 200);
	assert_string_equal(a.type, "application/json");
	assert_string_equal(a.cache, "no-store");
	f = cJSON_Parse(a.body);
	assert_non_null(f);
	assert_int_equal((int)vnum(version_of(f, "llm", "1.1"), "failed"), 2);
	cJSON_Delete(f);
	req("GET", "/api/v1/fleet", NULL, NULL, &a);
	assert_int_equal(a.status, 401);
	req("GET", "/api/v1/fleet", "wrong-token-0123456789", NULL, &a);
	assert_int_equal(a.status, 401);
	req("GET", "/api/v1/fleet?x=1", RT, NULL, &a);
	assert_int_equal(a.status, 400);
	req("POST", "/api/v1/fleet", RT, NULL, &a);
	assert_int_equal(a.status, 405);
	assert_int_equal(ctl_fleet_summary(NULL, &f), -EINVAL);
}

static void test_unescape(void **st)
{
	(void)st;
	char s[64];
	snprintf(s, sizeof(s), "a%%20b%%2Fc%%2e");
	assert_int_equal(ctl_http_unescape(NULL, NULL, s), 6);
	assert_string_equal(s, "a b/c.");
	snprintf(s, sizeof(s), "x%%00y%%zz%%4");
	assert_int_equal(ctl_http_unescape(NULL, NULL, s), strlen("x%00y%zz%4"));
	assert_string_equal(s, "x%00y%zz%4");
	snprintf(s, sizeof(s), "%%");
	assert_int_equal(ctl_http_unescape(NULL, NULL, s), 1);
	assert_string_equal(s, "%");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_find),	  cmocka_unit_test(test_content_types),
		cmocka_unit_test(test_http_paths), cmocka_unit_test(test_etag),
		cmocka_unit_test(test_fleet),	  cmocka_unit_test(test_unescape),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
