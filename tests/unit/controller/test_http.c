/* HTTP API in process: real server on 127.0.0.1, libcurl client, devices
 * registered through the registry, filters, roles, errors. */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>

#include "http.h"

#define RT "reader-token-0123456789"
#define OT "operator-token-0123456789"

static struct ctl *c;
static struct ctl_http *h;
static char *dir;
static char base[64];

struct body {
	char buf[65536];
	size_t len;
};

static size_t sink(char *d, size_t s, size_t n, void *ud)
{
	struct body *b = ud;
	size_t k = s * n;
	if (b->len + k >= sizeof(b->buf))
		return 0;
	memcpy(b->buf + b->len, d, k);
	b->len += k;
	b->buf[b->len] = 0;
	return k;
}

/* METHOD PATH with TOKEN (may be NULL); body of the answer in *RET_JSON when
 * it is JSON. Returns the status. */
static long req(const char *method, const char *path, const char *token, cJSON **ret_json)
{
	CURL *cu = curl_easy_init();
	assert_non_null(cu);
	char url[512], auth[128];
	snprintf(url, sizeof(url), "%s%s", base, path);
	struct curl_slist *hd = NULL;
	if (token) {
		snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
		hd = curl_slist_append(hd, auth);
	}
	struct body b = {.len = 0};
	b.buf[0] = 0;
	curl_easy_setopt(cu, CURLOPT_URL, url);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
	curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(cu, CURLOPT_WRITEDATA, &b);
	assert_int_equal(curl_easy_perform(cu), CURLE_OK);
	long st = 0;
	curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &st);
	curl_slist_free_all(hd);
	curl_easy_cleanup(cu);
	if (ret_json)
		*ret_json = cJSON_Parse(b.buf);
	return st;
}

static int n_devices(const char *query)
{
	char path[256];
	snprintf(path, sizeof(path), "/api/v1/devices%s", query);
	cJSON *o = NULL;
	assert_int_equal(req("GET", path, RT, &o), 200);
	int n = cJSON_GetArraySize(cJSON_GetObjectItem(o, "devices"));
	cJSON_Delete(o);
	return n;
}

static void state(const char *id, const char *arch, const char *site, const char *ver)
{
	char s[1024];
	snprintf(s, sizeof(s),
		 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1.0\","
		 "\"hw\":{\"arch\":\"%s\",\"ram_mb\":512,\"accelerators\":[],\"backends\":[\"gguf\"]},"
		 "\"labels\":{\"site\":\"%s\"},\"models\":{\"llm\":{\"current\":\"a\",\"slots\":"
		 "{\"a\":{\"status\":\"ready\",\"version\":\"%s\",\"sequence\":1}}}}}",
		 id, arch, site, ver);
	assert_int_equal(ctl_registry_on_state(c, id, s, strlen(s)), 0);
}

static int setup(void **st)
{
	(void)st;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	c = ctu_open("ctl-http", NULL, &dir);
	char *tmp = fl_path_join(dir, "tmp");
	struct ctl_token toks[] = {{"dash", RT, CTL_ROLE_READ}, {"ci", OT, CTL_ROLE_OPERATOR}};
	struct ctl_http_opts o = {.address = "127.0.0.1", .port = 0, .tokens = toks,
				  .n_tokens = 2, .max_upload_bytes = 1 << 20, .tmp_dir = tmp};
	assert_int_equal(ctl_http_start(c, &o, &h), 0);
	free(tmp);
	assert_true(ctl_http_port(h) > 0);
	snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)ctl_http_port(h));
	state("gw-1", "aarch64", "plant 7", "1.0");
	state("gw-2", "x86_64", "plant-8", "2.0");
	state("gw-3", "x86_64", "plant-8", "1.0");
	const char *lwt = "{\"v\":1,\"device\":\"gw-3\",\"online\":false}";
	assert_int_equal(ctl_registry_on_state(c, "gw-3", lwt, strlen(lwt)), 0);
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

static void test_devices(void **st)
{
	(void)st;
	assert_int_equal(n_devices(""), 3);
	assert_int_equal(n_devices("?arch=x86_64"), 2);
	assert_int_equal(n_devices("?online=true"), 2);
	assert_int_equal(n_devices("?online=false"), 1);
	assert_int_equal(n_devices("?version=1.0"), 2);
	assert_int_equal(n_devices("?version=1.0&arch=x86_64&online=false"), 1);
	assert_int_equal(n_devices("?label=site%3Dplant%207"), 1); /* URL-decoded */
	assert_int_equal(n_devices("?label=site=plant-8"), 2);
	assert_int_equal(n_devices("?label=site=nowhere"), 0);
	assert_int_equal(n_devices("?limit=1"), 1);
	cJSON *o = NULL;
	assert_int_equal(req("GET", "/api/v1/devices/gw-2", RT, &o), 200);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "device"), "arch")->valuestring,
			    "x86_64");
	assert_string_equal(
		cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "models"), 0), "version")
			->valuestring,
		"2.0");
	cJSON_Delete(o);

	static const char *const bad[] = {"?label=site", "?label==x", "?label=bad%20key=x",
					  "?online=1", "?limit=0", "?limit=x", "?arch=a%2Fb",
					  "?arch=a&arch=b", "?colour=red", "?version"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char path[128];
		snprintf(path, sizeof(path), "/api/v1/devices%s", bad[i]);
		long s = req("GET", path, RT, &o);
		if (s != 400)
			fail_msg("%s: status %ld", bad[i], s);
		assert_non_null(cJSON_GetStringValue(cJSON_GetObjectItem(o, "error")));
		cJSON_Delete(o);
	}
	assert_int_equal(req("GET", "/api/v1/devices/nope", RT, NULL), 404);
	assert_int_equal(req("GET", "/api/v1/devices/..%2Fx", RT, NULL), 404);
}

static void test_auth_and_metrics(void **st)
{
	(void)st;
	assert_int_equal(req("GET", "/api/v1/devices", NULL, NULL), 401);
	assert_int_equal(req("GET", "/api/v1/devices", "x" RT, NULL), 401);
	assert_int_equal(req("GET", "/api/v1/devices", OT, NULL), 200); /* operator reads too */
	assert_int_equal(req("POST", "/api/v1/bundles", RT, NULL), 403);
	assert_int_equal(req("POST", "/api/v1/bundles", OT, NULL), 400); /* empty body */
	assert_int_equal(req("PUT", "/api/v1/devices", OT, NULL), 405);
	assert_int_equal(req("GET", "/healthz", NULL, NULL), 200);
	assert_int_equal(req("GET", "/nothing", RT, NULL), 404);

	CURL *cu = curl_easy_init();
	char url[128];
	snprintf(url, sizeof(url), "%s/metrics", base);
	struct curl_slist *hd = curl_slist_append(NULL, "Authorization: Bearer " RT);
	struct body b = {.len = 0};
	curl_easy_setopt(cu, CURLOPT_URL, url);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
	curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(cu, CURLOPT_WRITEDATA, &b);
	assert_int_equal(curl_easy_perform(cu), CURLE_OK);
	curl_slist_free_all(hd);
	curl_easy_cleanup(cu);
	assert_non_null(strstr(b.buf, "flotilla_devices{state=\"online\"} 2\n"));
	assert_non_null(strstr(b.buf, "flotilla_devices{state=\"offline\"} 1\n"));
	assert_non_null(
		strstr(b.buf, "flotilla_model_version_devices{model=\"llm\",version=\"1.0\"} 2\n"));
	assert_non_null(
		strstr(b.buf, "flotilla_model_version_devices{model=\"llm\",version=\"2.0\"} 1\n"));
	assert_non_null(strstr(b.buf, "flotilla_state_messages_total{result=\"offline\"} 1\n"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_devices),
		cmocka_unit_test(test_auth_and_metrics),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
