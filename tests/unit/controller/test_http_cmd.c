/* POST /api/v1/devices/{id}/deploy|revert in process: real HTTP server, the
 * MQTT session over a fake transport driven by a loop thread (as main.c
 * does), audit entries, refusals that publish and record nothing. */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "ctl_testutil.h"

#include <flotilla/bundle.h>
#include <flotilla/crypto.h>
#include <flotilla/error.h>
#include <flotilla/json.h>

#include "ctl_mqtt.h"
#include "http.h"

#define RT "reader-token-0123456789"
#define OT "operator-token-0123456789"
#define DAY 86400
#define MAX_PUBS 64

static struct ctl *c;
static char *dir;

/* ---------------------------------------------------------------- fake broker */

static pthread_mutex_t plock = PTHREAD_MUTEX_INITIALIZER;
static char pub_topic[MAX_PUBS][128];
static char *pub_data[MAX_PUBS];
static uint64_t pub_tok[MAX_PUBS];
static size_t n_pubs, n_acked;
static bool refuse; /* the broker answers "not authorized" */

static int fake_publish(void *ud, const char *topic, const void *data, size_t len,
			uint64_t *ret_token)
{
	(void)ud;
	pthread_mutex_lock(&plock);
	assert_true(n_pubs < MAX_PUBS);
	fl_strlcpy(pub_topic[n_pubs], topic, sizeof(pub_topic[0]));
	pub_data[n_pubs] = strndup(data, len);
	pub_tok[n_pubs] = n_pubs + 1;
	*ret_token = pub_tok[n_pubs];
	n_pubs++;
	pthread_mutex_unlock(&plock);
	return 0;
}

static size_t pubs(void)
{
	pthread_mutex_lock(&plock);
	size_t n = n_pubs;
	pthread_mutex_unlock(&plock);
	return n;
}

struct loop {
	struct ctl_mqtt *m;
	atomic_bool stop;
	pthread_t th;
};

/* The owner thread: run the session, acknowledge what was published. */
static void *loop_main(void *ud)
{
	struct loop *l = ud;
	while (!atomic_load(&l->stop)) {
		int next;
		ctl_mqtt_run(l->m, fl_mono_ms(), &next);
		pthread_mutex_lock(&plock);
		size_t from = n_acked, to = n_pubs;
		n_acked = n_pubs;
		bool ok = !refuse;
		pthread_mutex_unlock(&plock);
		for (size_t i = from; i < to; i++)
			ctl_mqtt_on_published(l->m, pub_tok[i], ok);
		usleep(2000);
	}
	return NULL;
}

/* ---------------------------------------------------------------- HTTP client */

struct body {
	char buf[8192];
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

static long post(const char *base, const char *path, const char *token, const char *data,
		 cJSON **ret_json)
{
	CURL *cu = curl_easy_init();
	assert_non_null(cu);
	char url[512], auth[128];
	snprintf(url, sizeof(url), "%s%s", base, path);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
	struct curl_slist *hd = curl_slist_append(NULL, auth);
	struct body b = {.len = 0};
	b.buf[0] = 0;
	curl_easy_setopt(cu, CURLOPT_URL, url);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
	if (data) {
		curl_easy_setopt(cu, CURLOPT_POSTFIELDS, data);
		curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE, (long)strlen(data));
	} else {
		curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, "GET");
	}
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

static int64_t audits(void)
{
	int64_t n = -1;
	struct ctl_store *s = ctl_get_store(c);
	assert_int_equal(s->ops->audit_count(s, &n), 0);
	return n;
}

static struct ctl_http *start_http(struct ctl_mqtt *m, int wait_ms, char base[64])
{
	char *tmp = fl_path_join(dir, "tmp");
	struct ctl_token toks[] = {{"dash", RT, CTL_ROLE_READ}, {"ci", OT, CTL_ROLE_OPERATOR}};
	struct ctl_http_opts o = {.address = "127.0.0.1", .tokens = toks, .n_tokens = 2,
				  .tmp_dir = tmp, .mqtt = m, .cmd_wait_ms = wait_ms};
	struct ctl_http *h = NULL;
	assert_int_equal(ctl_http_start(c, &o, &h), 0);
	free(tmp);
	snprintf(base, 64, "http://127.0.0.1:%u", (unsigned)ctl_http_port(h));
	return h;
}

static void setup_ctl(void)
{
	c = ctu_open("ctl-http-cmd", NULL, &dir);
	const char *s = "{\"v\":1,\"device\":\"gw-1\",\"online\":true,\"agent\":\"0.1.0\","
			"\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":512,\"accelerators\":[],"
			"\"backends\":[\"gguf\"]},\"labels\":{},\"models\":{}}";
	assert_int_equal(ctl_registry_on_state(c, "gw-1", s, strlen(s)), 0);
	/* A pushed bundle tiny 1.0 (no trust dir: stored unverified). */
	char *src = fl_path_join(dir, "model.bin"), *tar = fl_path_join(dir, "b.tar");
	char data[3000];
	memset(data, 7, sizeof(data));
	assert_int_equal(fl_write_file_atomic(src, data, sizeof(data), 0644), 0);
	struct ota_key *key = NULL;
	assert_int_equal(ota_key_generate(&key), 0);
	struct ota_manifest *man = NULL;
	int64_t now = fl_now_s();
	assert_int_equal(ota_manifest_new("tiny", "1.0", 1, now - DAY, now + DAY, &man), 0);
	const char *srcs[] = {src};
	assert_int_equal(ota_bundle_create(tar, man, srcs, 1, NULL, 0, &key, 1), 0);
	ota_manifest_free(man);
	ota_key_free(key);
	assert_int_equal(ctl_chunks_add_bundle(c, tar, "tester", NULL), 1);
	free(src);
	free(tar);
}

static void test_deploy_revert(void **st)
{
	(void)st;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	setup_ctl();
	struct ctl_mqtt_io io = {.publish = fake_publish};
	struct ctl_mqtt_opts mo = {0};
	struct loop l = {0};
	assert_int_equal(ctl_mqtt_new_io(c, &mo, &io, &l.m), 0);
	assert_int_equal(pthread_create(&l.th, NULL, loop_main, &l), 0);
	char base[64];
	struct ctl_http *h = start_http(l.m, 5000, base);
	int64_t a0 = audits();

	/* Refusals: nothing published, nothing audited. */
	static const struct {
		const char *path, *token, *body;
		long status;
	} bad[] = {
		{"/api/v1/devices/gw-9/deploy", OT, "{\"model\":\"tiny\",\"version\":\"1.0\"}", 404},
		{"/api/v1/devices/gw-1/deploy", OT, "{\"model\":\"tiny\",\"version\":\"2.0\"}", 404},
		{"/api/v1/devices/gw-1/deploy", OT, "{\"model\":\"tiny\"}", 400},
		{"/api/v1/devices/gw-1/deploy", OT, "{\"model\":\"tiny\",\"version\":\"1.0\",\"x\":1}",
		 400},
		{"/api/v1/devices/gw-1/deploy", OT, "{\"model\":\"a/b\",\"version\":\"1.0\"}", 400},
		{"/api/v1/devices/gw-1/deploy", OT, "{\"model\":\"tiny\",\"version\":\"1 0\"}", 400},
		{"/api/v1/devices/gw-1/deploy", OT, "[1]", 400},
		{"/api/v1/devices/gw-1/deploy", OT, "{", 400},
		{"/api/v1/devices/gw-1/deploy", OT, "", 400},
		{"/api/v1/devices/gw-1/revert", OT, "{\"model\":\"tiny\",\"version\":\"1.0\"}", 400},
		{"/api/v1/devices/gw-1/revert", OT, "{\"model\":7}", 400},
		{"/api/v1/devices/gw-1/deploy", RT, "{\"model\":\"tiny\",\"version\":\"1.0\"}", 403},
		{"/api/v1/devices/gw-1/deploy", "wrong-token-0123456789", "{}", 401},
		{"/api/v1/devices/gw-1/deploy?x=1", OT, "{\"model\":\"tiny\",\"version\":\"1.0\"}", 400},
		{"/api/v1/devices/gw-1/reboot", OT, "{}", 404},
		{"/api/v1/devices/bad%20id/deploy", OT, "{\"model\":\"tiny\",\"version\":\"1.0\"}", 404},
		{"/api/v1/devices//deploy", OT, "{\"model\":\"tiny\",\"version\":\"1.0\"}", 404},
		{"/api/v1/devices/gw-1/deploy", OT, NULL, 405},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cJSON *o = NULL;
		long s = post(base, bad[i].path, bad[i].token, bad[i].body, &o);
		if (s != bad[i].status)
			fail_msg("case %zu (%s %s): status %ld, want %ld", i, bad[i].path,
				 bad[i].body ? bad[i].body : "GET", s, bad[i].status);
		assert_true(cJSON_IsString(cJSON_GetObjectItem(o, "error")));
		cJSON_Delete(o);
	}
	char big[CTL_HTTP_JSON_BODY_MAX + 10];
	memset(big, ' ', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	assert_int_equal(post(base, "/api/v1/devices/gw-1/deploy", OT, big, NULL), 413);
	assert_int_equal(pubs(), 0);
	assert_int_equal(audits(), a0);

	/* Deploy: published to gw-1's cmd, acknowledged, audited. */
	cJSON *o = NULL;
	assert_int_equal(post(base, "/api/v1/devices/gw-1/deploy", OT,
			      "{\"model\":\"tiny\",\"version\":\"1.0\"}", &o),
			 200);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "published")));
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "audited")));
	const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(o, "id"));
	assert_non_null(id);
	assert_int_equal(pubs(), 1);
	assert_string_equal(pub_topic[0], "flotilla/v1/dev/gw-1/cmd");
	cJSON *cmd = NULL;
	assert_int_equal(fl_json_parse(pub_data[0], strlen(pub_data[0]), CTL_CMD_MAX_BYTES, 8, &cmd),
			 0);
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(cmd, "id")), id);
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(cmd, "kind")), "deploy");
	assert_true(cJSON_IsString(cJSON_GetObjectItem(cmd, "envelope")));
	cJSON_Delete(cmd);
	cJSON_Delete(o);
	assert_int_equal(audits(), a0 + 1);

	assert_int_equal(post(base, "/api/v1/devices/gw-1/revert", OT, "{\"model\":\"tiny\"}", &o),
			 200);
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(o, "kind")), "revert");
	cJSON_Delete(o);
	assert_int_equal(pubs(), 2);
	assert_non_null(strstr(pub_data[1], "\"kind\":\"revert\""));
	assert_int_equal(audits(), a0 + 2);

	/* The broker refuses: 502, not audited. */
	pthread_mutex_lock(&plock);
	refuse = true;
	pthread_mutex_unlock(&plock);
	assert_int_equal(post(base, "/api/v1/devices/gw-1/revert", OT, "{\"model\":\"tiny\"}", NULL),
			 502);
	assert_int_equal(audits(), a0 + 2);
	pthread_mutex_lock(&plock);
	refuse = false;
	pthread_mutex_unlock(&plock);

	/* The loop stalls: 202 after the wait, the command stays queued. */
	atomic_store(&l.stop, true);
	pthread_join(l.th, NULL);
	ctl_http_stop(h);
	h = start_http(l.m, 100, base);
	assert_int_equal(post(base, "/api/v1/devices/gw-1/revert", OT, "{\"model\":\"tiny\"}", &o),
			 202);
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(o, "published")));
	cJSON_Delete(o);
	assert_int_equal(audits(), a0 + 3);
	/* Broker gone: 503, nothing recorded. */
	ctl_mqtt_on_connection(l.m, false);
	assert_int_equal(post(base, "/api/v1/devices/gw-1/revert", OT, "{\"model\":\"tiny\"}", NULL),
			 503);
	assert_int_equal(audits(), a0 + 3);
	ctl_http_stop(h);

	/* No MQTT configured: 503. */
	h = start_http(NULL, 0, base);
	assert_int_equal(post(base, "/api/v1/devices/gw-1/revert", OT, "{\"model\":\"tiny\"}", NULL),
			 503);
	assert_int_equal(audits(), a0 + 3);
	ctl_http_stop(h);

	ctl_mqtt_free(l.m);
	for (size_t i = 0; i < n_pubs; i++)
		free(pub_data[i]);
	ctu_close(c, dir);
	curl_global_cleanup();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_deploy_revert),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
