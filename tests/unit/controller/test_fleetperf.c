/* The registry at fleet size (issue 9 figures, docs/api.md "Paging"):
 * device list pages written in one pass (the same devices and fields as
 * the cJSON listing, cursor paging that visits every device once, ?all=1,
 * the default page size, bad paging parameters over HTTP) and batched
 * state ingest (one transaction per batch, refusals counted per message,
 * order kept within a batch), and the fleet summary from grouped queries.
 * Runs against SQLite and PostgreSQL. */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>

#include "dashboard.h"
#include "http.h"
#include "registry.h"

#define RT "reader-token-0123456789"

static char *state_text(const char *id, int i)
{
	/* labels with characters JSON must escape; two models on every third
	 * device, one without a current slot on every fifth */
	char *s = fl_asprintf(
		"{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.%d \\\"beta\\\"\","
		"\"hw\":{\"arch\":\"%s\",\"ram_mb\":%d,\"accelerators\":[%s],\"backends\":[\"gguf\"]},"
		"\"labels\":{\"site\":\"plant-%d\",\"note\":\"a\\\\b \\u00e9\"},"
		"\"models\":{\"llm\":{\"current\":\"a\",\"slots\":{\"a\":{\"status\":\"ready\","
		"\"version\":\"1.%d\",\"sequence\":1}}}%s%s}}",
		id, i, i % 2 ? "aarch64" : "x86_64", 512 * (1 + i % 4), i % 4 ? "" : "\"npu\"", i % 7,
		i % 3,
		i % 3 ? "" : ",\"vision\":{\"current\":\"b\",\"slots\":{\"b\":{\"status\":\"ready\","
			      "\"version\":\"2.0\",\"sequence\":3}}}",
		i % 5 ? "" : ",\"ocr\":{\"slots\":{}}");
	assert_non_null(s);
	return s;
}

static void register_n(struct ctl *c, int first, int n)
{
	struct ctl_state_batch *b = NULL;
	assert_int_equal(ctl_state_batch_new(c, &b), 0);
	for (int i = first; i < first + n; i++) {
		char id[32];
		snprintf(id, sizeof(id), "gw-%04d", i);
		char *s = state_text(id, i);
		assert_int_equal(ctl_state_batch_add(b, id, s, strlen(s)), 0);
		free(s);
	}
	assert_int_equal(ctl_state_batch_flush(b), 0);
	assert_int_equal(ctl_state_batch_pending(b), 0);
	ctl_state_batch_free(b);
}

static cJSON *page(struct ctl *c, const struct ctl_device_filter *f, bool all)
{
	char *txt = NULL;
	size_t len = 0;
	assert_int_equal(ctl_devices_page(c, f, all, &txt, &len), 0);
	assert_int_equal(strlen(txt), len);
	assert_true(len > 0 && txt[len - 1] == '\n');
	cJSON *o = cJSON_Parse(txt);
	if (!o)
		fail_msg("page is not JSON: %.300s", txt);
	free(txt);
	return o;
}

/* Every device F selects, page by page of LIMIT, as one array; *RET_PAGES. */
static cJSON *walk(struct ctl *c, const struct ctl_device_filter *f, size_t limit, int *ret_pages)
{
	cJSON *all = cJSON_CreateArray();
	char after[CTL_DEVICE_ID_MAX + 1] = "";
	int pages = 0;
	for (;;) {
		struct ctl_device_filter g = *f;
		g.limit = limit;
		g.after = after[0] ? after : NULL;
		cJSON *o = page(c, &g, false);
		pages++;
		assert_true(pages < 1000);
		cJSON *d, *devs = cJSON_GetObjectItem(o, "devices");
		assert_true((size_t)cJSON_GetArraySize(devs) <= limit);
		cJSON_ArrayForEach(d, devs)
		cJSON_AddItemToArray(all, cJSON_Duplicate(d, true));
		const char *next = cJSON_GetStringValue(cJSON_GetObjectItem(o, "next"));
		if (next) {
			/* the cursor is the last id of the page, and the page is full */
			assert_int_equal((size_t)cJSON_GetArraySize(devs), limit);
			assert_string_equal(next, cJSON_GetStringValue(cJSON_GetObjectItem(
							  cJSON_GetArrayItem(devs, (int)limit - 1), "id")));
			fl_strlcpy(after, next, sizeof(after));
		}
		cJSON_Delete(o);
		if (!next)
			break;
	}
	*ret_pages = pages;
	return all;
}

static void test_pages(void **st)
{
	(void)st;
	char *dir;
	struct ctl *c = ctu_open("ctl-fleetperf-pages", NULL, &dir);
	register_n(c, 0, 57);
	/* a bare row: a last will of a device never seen (no class, no models) */
	const char *lwt = "{\"v\":1,\"device\":\"gw-zz\",\"online\":false}";
	assert_int_equal(ctl_registry_on_state(c, "gw-zz", lwt, strlen(lwt)), 0);

	/* ?all=1 is the cJSON listing, field for field */
	struct ctl_device_filter any = {.online = -1};
	cJSON *ref = NULL;
	assert_int_equal(ctl_devices_list(c, &any, &ref), 0);
	cJSON *full = page(c, &any, true);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(full, "devices")), 58);
	assert_null(cJSON_GetObjectItem(full, "next"));
	if (!cJSON_Compare(cJSON_GetObjectItem(ref, "devices"), cJSON_GetObjectItem(full, "devices"),
			   true)) {
		char *a = cJSON_PrintUnformatted(cJSON_GetArrayItem(cJSON_GetObjectItem(ref, "devices"), 0));
		char *b = cJSON_PrintUnformatted(cJSON_GetArrayItem(cJSON_GetObjectItem(full, "devices"), 0));
		fail_msg("pages differ from the listing:\n%s\n%s", a, b);
	}
	cJSON *d0 = cJSON_GetArrayItem(cJSON_GetObjectItem(full, "devices"), 0);
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(
				    cJSON_GetObjectItem(d0, "labels"), "note")),
			    "a\\b \xc3\xa9");
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(d0, "agent")), "0.0 \"beta\"");
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(d0, "versions"), "ocr")));
	cJSON *zz = cJSON_GetArrayItem(cJSON_GetObjectItem(full, "devices"), 57);
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(zz, "id")), "gw-zz");
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(zz, "ram_mb")));
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(zz, "versions")), 0);

	/* cursor paging visits every device once, in order */
	static const size_t limits[] = {1, 10, 29, 57, 58, 59, 10000};
	static const int pages_of[] = {58, 6, 2, 2, 1, 1, 1};
	for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
		int pages = 0;
		cJSON *w = walk(c, &any, limits[i], &pages);
		if (!cJSON_Compare(w, cJSON_GetObjectItem(full, "devices"), true))
			fail_msg("pages of %zu differ from the whole list", limits[i]);
		assert_int_equal(pages, pages_of[i]);
		cJSON_Delete(w);
	}
	/* with a filter: the same as the filtered listing */
	struct ctl_device_filter fl = {.online = -1, .arch = "aarch64", .accelerator = NULL};
	cJSON *fref = NULL;
	assert_int_equal(ctl_devices_list(c, &fl, &fref), 0);
	int pages = 0;
	cJSON *w = walk(c, &fl, 4, &pages);
	assert_int_equal(cJSON_GetArraySize(w), 28);
	assert_true(cJSON_Compare(w, cJSON_GetObjectItem(fref, "devices"), true));
	assert_int_equal(pages, 7);
	cJSON_Delete(w);
	cJSON_Delete(fref);
	struct ctl_device_filter fv = {.online = -1, .version = "2.0", .limit = 5};
	cJSON *o = page(c, &fv, false);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "devices")), 5);
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(o, "next")), "gw-0012");
	cJSON_Delete(o);
	/* after the last id: empty, no cursor */
	struct ctl_device_filter end = {.online = -1, .after = "gw-zz"};
	o = page(c, &end, false);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "devices")), 0);
	assert_null(cJSON_GetObjectItem(o, "next"));
	cJSON_Delete(o);

	/* bad arguments change nothing */
	char *txt = NULL;
	size_t len = 0;
	struct ctl_device_filter bad = {.online = -1, .limit = 5};
	assert_int_equal(ctl_devices_page(c, &bad, true, &txt, &len), -EINVAL);
	bad.limit = CTL_STORE_LIST_MAX + 1;
	assert_int_equal(ctl_devices_page(c, &bad, false, &txt, &len), -EINVAL);
	assert_null(txt);

	cJSON_Delete(ref);
	cJSON_Delete(full);
	ctu_close(c, dir);
}

/* ---------------------------------------------------------------- over HTTP */

struct body {
	char *p;
	size_t len;
};

static size_t sink(char *d, size_t s, size_t n, void *ud)
{
	struct body *b = ud;
	char *p = realloc(b->p, b->len + s * n + 1);
	assert_non_null(p);
	memcpy(p + b->len, d, s * n);
	b->len += s * n;
	p[b->len] = 0;
	b->p = p;
	return s * n;
}

static long get(const char *base, const char *path, cJSON **ret)
{
	char url[512];
	snprintf(url, sizeof(url), "%s%s", base, path);
	CURL *cu = curl_easy_init();
	struct curl_slist *hd = curl_slist_append(NULL, "Authorization: Bearer " RT);
	struct body b = {0};
	curl_easy_setopt(cu, CURLOPT_URL, url);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
	curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(cu, CURLOPT_WRITEDATA, &b);
	assert_int_equal(curl_easy_perform(cu), CURLE_OK);
	long st = 0;
	curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &st);
	curl_slist_free_all(hd);
	curl_easy_cleanup(cu);
	if (ret)
		*ret = b.p ? cJSON_Parse(b.p) : NULL;
	free(b.p);
	return st;
}

static int n_of(cJSON *o)
{
	return cJSON_GetArraySize(cJSON_GetObjectItem(o, "devices"));
}

static void test_http_paging(void **st)
{
	(void)st;
	char *dir;
	struct ctl *c = ctu_open("ctl-fleetperf-http", NULL, &dir);
	register_n(c, 0, CTL_DEVICES_PAGE_DEFAULT + 5);
	char *tmp = fl_path_join(dir, "tmp");
	struct ctl_token tok = {"dash", RT, CTL_ROLE_READ};
	struct ctl_http_opts ho = {.address = "127.0.0.1", .tokens = &tok, .n_tokens = 1,
				   .max_upload_bytes = 1 << 20, .tmp_dir = tmp};
	struct ctl_http *h = NULL;
	assert_int_equal(ctl_http_start(c, &ho, &h), 0);
	free(tmp);
	char base[64];
	snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)ctl_http_port(h));

	/* the default page, then the rest after its cursor */
	cJSON *o = NULL;
	assert_int_equal(get(base, "/api/v1/devices", &o), 200);
	assert_int_equal(n_of(o), CTL_DEVICES_PAGE_DEFAULT);
	char next[80];
	fl_strlcpy(next, cJSON_GetStringValue(cJSON_GetObjectItem(o, "next")), sizeof(next));
	assert_string_equal(next, "gw-0999");
	cJSON_Delete(o);
	char path[160];
	snprintf(path, sizeof(path), "/api/v1/devices?after=%s", next);
	assert_int_equal(get(base, path, &o), 200);
	assert_int_equal(n_of(o), 5);
	assert_null(cJSON_GetObjectItem(o, "next"));
	cJSON_Delete(o);
	assert_int_equal(get(base, "/api/v1/devices?all=1", &o), 200);
	assert_int_equal(n_of(o), CTL_DEVICES_PAGE_DEFAULT + 5);
	assert_null(cJSON_GetObjectItem(o, "next"));
	cJSON_Delete(o);
	assert_int_equal(get(base, "/api/v1/devices?all=true&arch=x86_64", &o), 200);
	assert_int_equal(n_of(o), (CTL_DEVICES_PAGE_DEFAULT + 5 + 1) / 2);
	cJSON_Delete(o);
	assert_int_equal(get(base, "/api/v1/devices?limit=2&after=gw-0500&arch=aarch64", &o), 200);
	assert_int_equal(n_of(o), 2);
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(o, "next")), "gw-0503");
	cJSON_Delete(o);

	/* bad paging: 400 with a message */
	static const char *const bad[] = {
		"?all=2", "?all=", "?all=1&limit=5", "?all=1&after=gw-0001", "?after=bad%20id",
		"?after=", "?after=a&after=b", "?limit=0", "?limit=10001", "?offset=5",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(path, sizeof(path), "/api/v1/devices%s", bad[i]);
		o = NULL;
		long status = get(base, path, &o);
		if (status != 400)
			fail_msg("%s: %ld, expected 400", bad[i], status);
		assert_non_null(cJSON_GetStringValue(cJSON_GetObjectItem(o, "error")));
		cJSON_Delete(o);
	}
	ctl_http_stop(h);
	ctu_close(c, dir);
}

/* ---------------------------------------------------------------- batched ingest */

static void test_batch(void **st)
{
	(void)st;
	char *dir;
	struct ctl *c = ctu_open("ctl-fleetperf-batch", NULL, &dir);
	struct ctl_state_batch *b = NULL;
	assert_int_equal(ctl_state_batch_new(c, &b), 0);
	ctl_state_batch_set_wait(b, 600000); /* only the count or a flush writes */
	struct ctl_counters k0;
	ctl_get_counters(c, &k0);

	/* A full batch is written by the add that fills it. */
	for (int i = 0; i < CTL_STATE_BATCH_MAX; i++) {
		char id[32];
		snprintf(id, sizeof(id), "gw-%04d", i);
		char *s = state_text(id, i);
		assert_int_equal(ctl_state_batch_add(b, id, s, strlen(s)), 0);
		free(s);
		assert_int_equal(ctl_state_batch_pending(b), (size_t)(i + 1) % CTL_STATE_BATCH_MAX);
	}
	assert_int_equal(ctu_count_devices(c, NULL), CTL_STATE_BATCH_MAX);

	/* Refused messages are refused (and counted) at once, the good ones
	 * around them wait for the flush. */
	char *s = state_text("gw-9000", 1);
	assert_int_equal(ctl_state_batch_add(b, "gw-9000", s, strlen(s)), 0);
	assert_int_equal(ctl_state_batch_add(b, "gw-9001", s, strlen(s)), -FL_EPROTO); /* not its id */
	assert_int_equal(ctl_state_batch_add(b, "gw-9002", "{\"v\":1,", 7), -FL_EINVAL_JSON);
	assert_int_equal(ctl_state_batch_add(b, "bad id", s, strlen(s)), -FL_EPROTO);
	free(s);
	/* online, then its last will, in the same batch: the order is kept */
	s = state_text("gw-9003", 3);
	assert_int_equal(ctl_state_batch_add(b, "gw-9003", s, strlen(s)), 0);
	free(s);
	const char *lwt = "{\"v\":1,\"device\":\"gw-9003\",\"online\":false}";
	assert_int_equal(ctl_state_batch_add(b, "gw-9003", lwt, strlen(lwt)), 0);
	assert_int_equal(ctl_state_batch_pending(b), 3);
	assert_true(ctl_state_batch_due(b) == false);
	assert_null(ctu_device_text(c, "gw-9000")); /* not written before the flush */
	struct ctl_counters k;
	ctl_get_counters(c, &k);
	assert_int_equal(k.state_refused - k0.state_refused, 3);
	assert_int_equal(k.state_ok - k0.state_ok, CTL_STATE_BATCH_MAX);

	assert_int_equal(ctl_state_batch_flush(b), 0);
	assert_int_equal(ctl_state_batch_pending(b), 0);
	assert_false(ctl_state_batch_due(b));
	assert_int_equal(ctu_count_devices(c, NULL), CTL_STATE_BATCH_MAX + 2);
	char *t = ctu_device_text(c, "gw-9000");
	assert_non_null(t);
	free(t);
	assert_null(ctu_device_text(c, "gw-9001"));
	cJSON *d = NULL;
	assert_int_equal(ctl_device_get(c, "gw-9003", &d), 0);
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(d, "device"), "online")));
	cJSON_Delete(d);
	ctl_get_counters(c, &k);
	assert_int_equal(k.state_ok - k0.state_ok, CTL_STATE_BATCH_MAX + 2);
	assert_int_equal(k.state_offline - k0.state_offline, 1);
	assert_int_equal(k.state_refused - k0.state_refused, 3);

	/* A later state replaces the models written by a batch. */
	s = fl_asprintf("{\"v\":1,\"device\":\"gw-0003\",\"online\":true,\"agent\":\"0.1\","
			"\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":1,\"accelerators\":[],\"backends\":[]}}");
	assert_int_equal(ctl_state_batch_add(b, "gw-0003", s, strlen(s)), 0);
	free(s);
	ctl_state_batch_free(b); /* flushes */
	assert_int_equal(ctl_device_get(c, "gw-0003", &d), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(d, "models")), 0);
	cJSON_Delete(d);
	/* The time bound: a message that waited long enough is written by the
	 * next add (here at once: no wait). */
	assert_int_equal(ctl_state_batch_new(c, &b), 0);
	ctl_state_batch_set_wait(b, 0);
	s = state_text("gw-0004", 7);
	assert_int_equal(ctl_state_batch_add(b, "gw-0004", s, strlen(s)), 0);
	free(s);
	assert_int_equal(ctl_state_batch_pending(b), 0);
	ctl_state_batch_free(b);
	assert_int_equal(ctl_device_get(c, "gw-0004", &d), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(d, "models")), 1);
	cJSON_Delete(d);

	assert_int_equal(ctl_state_batch_new(NULL, &b), -EINVAL);
	assert_int_equal(ctl_state_batch_add(NULL, "gw-1", "{}", 2), -EINVAL);
	assert_int_equal(ctl_state_batch_flush(NULL), 0);
	ctl_state_batch_free(NULL);
	ctu_close(c, dir);
}

/* ---------------------------------------------------------------- fleet summary */

static void inst_state(struct ctl *c, const char *id, const char *model, const char *cur,
		       const char *iv, const char *is)
{
	char inst[160] = "";
	if (iv)
		snprintf(inst, sizeof(inst),
			 ",\"install\":{\"version\":\"%s\",\"state\":\"%s\",\"error\":\"\"}", iv, is);
	char *s = fl_asprintf(
		"{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1\","
		"\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":1,\"accelerators\":[],\"backends\":[]},"
		"\"models\":{\"%s\":{\"current\":\"a\",\"slots\":{\"a\":{\"status\":\"ready\","
		"\"version\":\"%s\",\"sequence\":1}}%s}}}",
		id, model, cur, inst);
	assert_int_equal(ctl_registry_on_state(c, id, s, strlen(s)), 0);
	free(s);
}

static double vnum(cJSON *fleet, const char *model, const char *version, const char *key)
{
	cJSON *m, *v;
	cJSON_ArrayForEach(m, cJSON_GetObjectItem(fleet, "models"))
	{
		if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(m, "model")), model))
			continue;
		cJSON_ArrayForEach(v, cJSON_GetObjectItem(m, "versions"))
		if (!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(v, "version")), version))
			return cJSON_GetNumberValue(cJSON_GetObjectItem(v, key));
	}
	return -1;
}

/* The summary from grouped queries: counts per (model, version, state). */
static void test_summary(void **st)
{
	(void)st;
	char *dir;
	struct ctl *c = ctu_open("ctl-fleetperf-summary", NULL, &dir);
	inst_state(c, "gw-1", "llm", "1.0", NULL, NULL);
	inst_state(c, "gw-2", "llm", "1.0", "1.1", "REJECTED");
	inst_state(c, "gw-3", "llm", "1.1", "1.1", "COMMITTED");
	inst_state(c, "gw-4", "llm", "1.0", "1.1", "FETCHING");
	inst_state(c, "gw-5", "llm", "1.0", "1.1", "ROLLED_BACK");
	inst_state(c, "gw-6", "vision", "2.0", "2.0", "IDLE");
	inst_state(c, "gw-7", "vision", "2.0", "2.1", "TRIAL");
	const char *lwt = "{\"v\":1,\"device\":\"gw-6\",\"online\":false}";
	assert_int_equal(ctl_registry_on_state(c, "gw-6", lwt, strlen(lwt)), 0);
	cJSON *f = NULL;
	assert_int_equal(ctl_fleet_summary(c, &f), 0);
	cJSON *devs = cJSON_GetObjectItem(f, "devices");
	assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(devs, "total")), 7);
	assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(devs, "offline")), 1);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(f, "models")), 2);
	assert_int_equal((int)vnum(f, "llm", "1.0", "devices"), 4);
	assert_int_equal((int)vnum(f, "llm", "1.1", "devices"), 1);
	assert_int_equal((int)vnum(f, "llm", "1.1", "attempted"), 4);
	assert_int_equal((int)vnum(f, "llm", "1.1", "succeeded"), 1);
	assert_int_equal((int)vnum(f, "llm", "1.1", "failed"), 2);
	assert_int_equal((int)vnum(f, "llm", "1.1", "in_progress"), 1);
	assert_int_equal((int)vnum(f, "vision", "2.0", "devices"), 2);
	assert_int_equal((int)vnum(f, "vision", "2.0", "attempted"), 0); /* IDLE: no install */
	assert_int_equal((int)vnum(f, "vision", "2.1", "in_progress"), 1);
	assert_int_equal((int)vnum(f, "vision", "2.1", "devices"), 0);
	cJSON *hl = cJSON_GetObjectItem(f, "health");
	assert_int_equal(cJSON_GetArraySize(hl), 4);
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(hl, "gw-2")), "failed");
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(hl, "gw-4")), "installing");
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(hl, "gw-5")), "failed");
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(hl, "gw-7")), "installing");
	assert_false(cJSON_IsTrue(cJSON_GetObjectItem(f, "truncated")));
	cJSON_Delete(f);
	ctu_close(c, dir);
}

int main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pages),
		cmocka_unit_test(test_http_paging),
		cmocka_unit_test(test_batch),
		cmocka_unit_test(test_summary),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	curl_global_cleanup();
	return r;
}
