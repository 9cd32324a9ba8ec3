/* Releases with per-class variants: strict creation, most-specific variant
 * choice, rollouts of a release (each device gets its variant; devices no
 * variant fits are skipped and counted), per-wave and per-variant counts. */
#include <errno.h>
#include <stdio.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>

#include "release.h"
#include "rollout.h"

#define MODEL "defect-llm"

static void add_bundle(struct ctl *c, const char *version, uint64_t seq)
{
	struct ctl_store *s = ctl_get_store(c);
	char env[64], id[8];
	snprintf(env, sizeof(env), "ENV-%s", version);
	snprintf(id, sizeof(id), "%02x", (unsigned)seq);
	struct ctl_bundle_rec b = {.model = MODEL, .version = version, .sequence = seq,
				   .envelope_id = id, .envelope = env,
				   .files_json = "[]", .pushed_at_s = 1};
	assert_int_equal(s->ops->bundle_put(s, &b), 1);
}

/* A device of class ARCH / RAM / BACKEND running 1.3.0. */
static void device(struct ctl *c, const char *id, const char *arch, int ram,
		   const char *backend)
{
	char buf[1024];
	snprintf(buf, sizeof(buf),
		 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1.0\","
		 "\"hw\":{\"arch\":\"%s\",\"ram_mb\":%d,\"accelerators\":[],\"backends\":[\"%s\"]},"
		 "\"models\":{\"" MODEL "\":{\"current\":\"a\",\"slots\":{\"a\":{\"status\":"
		 "\"ready\",\"version\":\"1.3.0\",\"sequence\":1}}}}}",
		 id, arch, ram, backend);
	assert_int_equal(ctl_registry_on_state(c, id, buf, strlen(buf)), 0);
}

#define REL_BODY                                                                               \
	"{\"model\":\"" MODEL "\",\"version\":\"1.4.0\",\"variants\":["                           \
	"{\"bundle\":\"1.4.0-q4\",\"select\":{\"arch\":\"aarch64\"}},"                            \
	"{\"bundle\":\"1.4.0-q8\",\"select\":{\"arch\":\"aarch64\",\"min_ram_mb\":4096}},"        \
	"{\"bundle\":\"1.4.0-x86\",\"select\":{\"arch\":\"x86_64\",\"backend\":\"gguf\"}},"       \
	"{\"bundle\":\"1.4.0-xgb\",\"select\":{\"backend\":\"xgboost\"}}]}"

struct cap {
	char dev[64][CTL_DEVICE_ID_MAX + 1];
	char env[64][32];
	size_t n;
};

static int capture(void *ud, const char *device, const char *json, size_t len)
{
	struct cap *k = ud;
	cJSON *o = cJSON_ParseWithLength(json, len);
	assert_non_null(o);
	assert_true(k->n < 64);
	snprintf(k->dev[k->n], sizeof(k->dev[0]), "%s", device);
	const char *e = cJSON_GetStringValue(cJSON_GetObjectItem(o, "envelope"));
	snprintf(k->env[k->n++], sizeof(k->env[0]), "%s", e ? e : "revert");
	cJSON_Delete(o);
	return 0;
}

static const char *env_of(const struct cap *k, const char *dev)
{
	for (size_t i = 0; i < k->n; i++)
		if (!strcmp(k->dev[i], dev))
			return k->env[i];
	return NULL;
}

static void test_pick(void **state)
{
	(void)state;
	cJSON *r = cJSON_Parse(REL_BODY);
	const cJSON *v = cJSON_GetObjectItem(r, "variants");
	struct ctl_hw small = {.arch = "aarch64", .ram_mb = 1024, .backends_json = "[\"gguf\"]"};
	struct ctl_hw big = {.arch = "aarch64", .ram_mb = 8192, .backends_json = "[\"gguf\"]"};
	struct ctl_hw unknown_ram = {.arch = "aarch64", .ram_mb = -1};
	struct ctl_hw x86 = {.arch = "x86_64", .ram_mb = 8192, .backends_json = "[\"gguf\"]"};
	struct ctl_hw x86_nogguf = {.arch = "x86_64", .ram_mb = 8192, .backends_json = "[]"};
	struct ctl_hw term = {.arch = "armv7l", .ram_mb = 256, .backends_json = "[\"xgboost\"]"};
	struct ctl_hw other = {.arch = "riscv64", .ram_mb = 256, .backends_json = "[\"onnx\"]"};
	assert_int_equal(ctl_release_pick(v, &small), 0);
	assert_int_equal(ctl_release_pick(v, &big), 1);       /* more specific wins */
	assert_int_equal(ctl_release_pick(v, &unknown_ram), 0); /* unknown RAM: no min match */
	assert_int_equal(ctl_release_pick(v, &x86), 2);
	assert_int_equal(ctl_release_pick(v, &x86_nogguf), -1);
	assert_int_equal(ctl_release_pick(v, &term), 3);
	assert_int_equal(ctl_release_pick(v, &other), -1);
	/* An empty selector is the default. */
	cJSON *d = cJSON_Parse("[{\"bundle\":\"a\",\"select\":{}},"
			       "{\"bundle\":\"b\",\"select\":{\"arch\":\"x86_64\"}}]");
	assert_int_equal(ctl_release_pick(d, &other), 0);
	assert_int_equal(ctl_release_pick(d, &x86), 1);
	cJSON_Delete(d);
	cJSON_Delete(r);
}

static void test_create_and_query(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-rel", NULL, &dir);
	add_bundle(c, "1.4.0-q4", 2);
	add_bundle(c, "1.4.0-q8", 3);
	add_bundle(c, "1.4.0-x86", 4);
	struct ctl_store *s = ctl_get_store(c);
	int64_t a0 = 0, a1 = 0;
	assert_int_equal(s->ops->audit_count(s, &a0), 0);
	char err[256];
	cJSON *o = NULL;
	/* The xgb bundle is not pushed yet: 404, nothing stored. */
	assert_int_equal(ctl_release_create(c, REL_BODY, strlen(REL_BODY), "alice", 100, &o, err,
					    sizeof(err)),
			 -ENOENT);
	assert_non_null(strstr(err, "1.4.0-xgb"));
	assert_null(o);
	add_bundle(c, "1.4.0-xgb", 5);
	assert_int_equal(s->ops->audit_count(s, &a1), 0);
	assert_int_equal(ctl_release_create(c, REL_BODY, strlen(REL_BODY), "alice", 100, &o, err,
					    sizeof(err)),
			 0);
	assert_int_equal((int)cJSON_GetObjectItem(o, "id")->valuedouble, 1);
	assert_string_equal(cJSON_GetObjectItem(o, "created_by")->valuestring, "alice");
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "variants")), 4);
	cJSON_Delete(o);
	int64_t a2 = 0;
	assert_int_equal(s->ops->audit_count(s, &a2), 0);
	assert_int_equal(a2, a1 + 1);
	/* Same model@version again: -EEXIST. */
	assert_int_equal(ctl_release_create(c, REL_BODY, strlen(REL_BODY), "alice", 100, &o, err,
					    sizeof(err)),
			 -EEXIST);
	assert_int_equal(ctl_release_get(c, "1", &o), 0);
	assert_string_equal(cJSON_GetObjectItem(o, "version")->valuestring, "1.4.0");
	cJSON_Delete(o);
	assert_int_equal(ctl_release_get(c, MODEL "@1.4.0", &o), 0);
	assert_int_equal((int)cJSON_GetObjectItem(o, "id")->valuedouble, 1);
	cJSON_Delete(o);
	assert_int_equal(ctl_release_get(c, "2", &o), -ENOENT);
	assert_int_equal(ctl_release_get(c, MODEL "@9", &o), -ENOENT);
	assert_int_equal(ctl_release_get(c, "x", &o), -EINVAL);
	assert_int_equal(ctl_release_list(c, NULL, &o), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "releases")), 1);
	cJSON_Delete(o);
	assert_int_equal(ctl_release_list(c, "other", &o), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "releases")), 0);
	cJSON_Delete(o);

	/* Refused bodies change nothing and say what is wrong. */
	static const struct {
		const char *json, *msg;
		int err;
	} bad[] = {
		{"", "body", -FL_EINVAL_JSON},
		{"[]", "object", -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":[],\"x\":1}", "'x'",
		 -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":[]}", "variants",
		 -FL_ERANGE},
		{"{\"model\":\"" MODEL "\",\"version\":2,\"variants\":[{\"bundle\":\"1.4.0-q4\"}]}",
		 "version", -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":[{\"bundle\":\"1.4.0-q4\","
		 "\"select\":{\"gpu\":\"x\"}}]}",
		 "'gpu'", -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":[{\"bundle\":\"1.4.0-q4\","
		 "\"select\":{\"min_ram_mb\":-1}}]}",
		 "min_ram_mb", -FL_ERANGE},
		{"{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":[{\"bundle\":\"1.4.0-q4\","
		 "\"select\":{\"min_ram_mb\":800,\"max_ram_mb\":100}}]}",
		 "min_ram_mb > max_ram_mb", -FL_ERANGE},
		{"{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":[{\"bundle\":\"1.4.0-q4\","
		 "\"select\":{\"arch\":\"x86_64\"}},{\"bundle\":\"1.4.0-q8\",\"select\":"
		 "{\"arch\":\"x86_64\"}}]}",
		 "same select", -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"2\",\"variants\":[{\"bundle\":\"nope\"}]}",
		 "not pushed", -ENOENT},
		{"{\"model\":\"../x\",\"version\":\"2\",\"variants\":[{\"bundle\":\"1.4.0-q4\"}]}",
		 "model", -EINVAL},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = 0;
		int r = ctl_release_create(c, bad[i].json, strlen(bad[i].json), "eve", 1, &o, err,
					   sizeof(err));
		if (r != bad[i].err || !strstr(err, bad[i].msg))
			fail_msg("case %zu: %d '%s', expected %d '%s'", i, r, err, bad[i].err,
				 bad[i].msg);
	}
	int64_t a3 = 0;
	assert_int_equal(s->ops->audit_count(s, &a3), 0);
	assert_int_equal(a3, a2);
	assert_int_equal(ctl_release_list(c, NULL, &o), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "releases")), 1);
	cJSON_Delete(o);
	ctu_close(c, dir);
}

static void test_rollout_of_release(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-rel-ro", NULL, &dir);
	add_bundle(c, "1.4.0-q4", 2);
	add_bundle(c, "1.4.0-q8", 3);
	add_bundle(c, "1.4.0-x86", 4);
	add_bundle(c, "1.4.0-xgb", 5);
	cJSON *o = NULL;
	char err[256];
	assert_int_equal(ctl_release_create(c, REL_BODY, strlen(REL_BODY), "alice", 100, &o, err,
					    sizeof(err)),
			 0);
	cJSON_Delete(o);
	device(c, "arm-small", "aarch64", 1024, "gguf");
	device(c, "arm-big", "aarch64", 8192, "gguf");
	device(c, "x86-1", "x86_64", 16000, "gguf");
	device(c, "term-1", "armv7l", 256, "xgboost");
	device(c, "odd-1", "riscv64", 512, "onnx");
	/* No such release: 404 with a message. */
	const char *nope = "{\"model\":\"" MODEL "\",\"release\":\"9\",\"waves\":[100]}";
	assert_int_equal(ctl_rollout_create_ex(c, nope, strlen(nope), "alice", 1000, &o, err,
					       sizeof(err)),
			 -ENOENT);
	assert_non_null(strstr(err, "no release"));
	/* version and release together: refused */
	const char *both = "{\"model\":\"" MODEL "\",\"release\":\"1.4.0\",\"version\":\"1.4.0-q4\","
			   "\"waves\":[100]}";
	assert_int_equal(ctl_rollout_create_ex(c, both, strlen(both), "alice", 1000, &o, err,
					       sizeof(err)),
			 -FL_ESCHEMA);
	const char *body = "{\"model\":\"" MODEL "\",\"release\":\"1.4.0\",\"waves\":[100],"
			   "\"soak_s\":0}";
	assert_int_equal(ctl_rollout_create_ex(c, body, strlen(body), "alice", 1000, &o, err,
					       sizeof(err)),
			 0);
	int64_t id = (int64_t)cJSON_GetObjectItem(o, "id")->valuedouble;
	cJSON *rel = cJSON_GetObjectItem(o, "release");
	assert_int_equal((int)cJSON_GetObjectItem(rel, "id")->valuedouble, 1);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(rel, "variants")), 4);
	assert_string_equal(cJSON_GetObjectItem(o, "version")->valuestring, "1.4.0");
	cJSON_Delete(o);
	struct cap k = {0};
	assert_int_equal(ctl_rollout_tick(c, 1001, capture, &k), 4);
	assert_string_equal(env_of(&k, "arm-small"), "ENV-1.4.0-q4");
	assert_string_equal(env_of(&k, "arm-big"), "ENV-1.4.0-q8");
	assert_string_equal(env_of(&k, "x86-1"), "ENV-1.4.0-x86");
	assert_string_equal(env_of(&k, "term-1"), "ENV-1.4.0-xgb");
	assert_null(env_of(&k, "odd-1"));
	/* counts are what a tick saw before sending: look after the next one */
	assert_int_equal(ctl_rollout_tick(c, 1002, capture, &k), 0);
	assert_int_equal(ctl_rollout_get(c, id, &o), 0);
	cJSON *cnt = cJSON_GetObjectItem(o, "counts");
	assert_int_equal((int)cJSON_GetObjectItem(cnt, "targets")->valuedouble, 4);
	assert_int_equal((int)cJSON_GetObjectItem(cnt, "skipped")->valuedouble, 1);
	cJSON *vq8 = cJSON_GetObjectItem(cJSON_GetObjectItem(cnt, "variants"), "1.4.0-q8");
	assert_int_equal((int)cJSON_GetObjectItem(vq8, "targets")->valuedouble, 1);
	assert_int_equal((int)cJSON_GetObjectItem(vq8, "attempted")->valuedouble, 1);
	cJSON *w0 = cJSON_GetArrayItem(cJSON_GetObjectItem(cnt, "waves"), 0);
	assert_int_equal((int)cJSON_GetObjectItem(w0, "devices")->valuedouble, 4);
	assert_int_equal((int)cJSON_GetObjectItem(w0, "in_progress")->valuedouble, 4);
	cJSON_Delete(o);
	/* /metrics: rollout progress */
	char *m = NULL;
	assert_int_equal(ctl_rollout_metrics_text(c, &m), 0);
	assert_non_null(strstr(m, "flotilla_rollout_info{rollout=\"1\",model=\"" MODEL
				  "\",version=\"1.4.0\",state=\"running\"} 1\n"));
	assert_non_null(strstr(m, "flotilla_rollout_wave{rollout=\"1\"} 1\n"));
	assert_non_null(strstr(m, "flotilla_rollout_devices{rollout=\"1\",outcome=\"in_progress\"} 4\n"));
	assert_non_null(strstr(m, "flotilla_rollout_devices{rollout=\"1\",outcome=\"skipped\"} 1\n"));
	free(m);
	ctu_close(c, dir);
}

static void labeled(struct ctl *c, const char *id, const char *site)
{
	char buf[1024];
	snprintf(buf, sizeof(buf),
		 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1.0\","
		 "\"hw\":{\"arch\":\"aarch64\",\"ram_mb\":1024,\"accelerators\":[],"
		 "\"backends\":[]},\"labels\":{\"site\":\"%s\"},"
		 "\"models\":{\"" MODEL "\":{\"current\":\"a\",\"slots\":{\"a\":{\"status\":"
		 "\"ready\",\"version\":\"1.3.0\",\"sequence\":1}}}}}",
		 id, site);
	assert_int_equal(ctl_registry_on_state(c, id, buf, strlen(buf)), 0);
}

/* Maintenance windows: devices matching a window's labels get deploys only
 * inside it (UTC); the others at any time. */
static void test_windows(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-rel-win", NULL, &dir);
	add_bundle(c, "1.4.0-q4", 2);
	labeled(c, "night-1", "plant-7");
	labeled(c, "night-2", "plant-7");
	labeled(c, "day-1", "office");
	char err[256];
	cJSON *o = NULL;
	static const char *const bad[] = {
		"[]", "[{\"labels\":{},\"start\":\"25:00\",\"end\":\"01:00\"}]",
		"[{\"labels\":{},\"start\":\"22:00\"}]",
		"[{\"labels\":{},\"start\":\"22:00\",\"end\":\"05:00\",\"days\":[\"mon\",\"mon\"]}]",
		"[{\"labels\":{},\"start\":\"22:00\",\"end\":\"05:00\",\"tz\":\"CET\"}]",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char body[512];
		snprintf(body, sizeof(body),
			 "{\"model\":\"" MODEL "\",\"version\":\"1.4.0-q4\",\"waves\":[100],"
			 "\"windows\":%s}",
			 bad[i]);
		err[0] = 0;
		assert_int_equal(ctl_rollout_create_ex(c, body, strlen(body), "eve", 1, &o, err,
						       sizeof(err)),
				 -FL_ESCHEMA);
		assert_non_null(strstr(err, "windows"));
	}
	/* 2026-11-26 is a Thursday; 12:00 UTC, then 23:00 UTC. */
	const int64_t noon = 1795694400, late = noon + 11 * 3600;
	const char *body = "{\"model\":\"" MODEL "\",\"version\":\"1.4.0-q4\",\"waves\":[100],"
			   "\"soak_s\":0,\"windows\":[{\"labels\":{\"site\":\"plant-7\"},"
			   "\"start\":\"22:00\",\"end\":\"05:00\",\"days\":[\"thu\",\"fri\"]}]}";
	assert_int_equal(ctl_rollout_create_ex(c, body, strlen(body), "alice", noon, &o, err,
					       sizeof(err)),
			 0);
	int64_t id = (int64_t)cJSON_GetObjectItem(o, "id")->valuedouble;
	cJSON_Delete(o);
	struct cap k = {0};
	assert_int_equal(ctl_rollout_tick(c, noon, capture, &k), 1);
	assert_non_null(env_of(&k, "day-1"));
	assert_int_equal(ctl_rollout_tick(c, noon + 60, capture, &k), 0);
	assert_int_equal(ctl_rollout_get(c, id, &o), 0);
	cJSON *cnt = cJSON_GetObjectItem(o, "counts");
	assert_int_equal((int)cJSON_GetObjectItem(cnt, "outside_window")->valuedouble, 2);
	cJSON_Delete(o);
	/* Saturday night: not one of its days. */
	assert_int_equal(ctl_rollout_tick(c, late + 2 * 86400, capture, &k), 0);
	/* Thursday 23:00: inside. */
	assert_int_equal(ctl_rollout_tick(c, late, capture, &k), 2);
	assert_non_null(env_of(&k, "night-1"));
	assert_non_null(env_of(&k, "night-2"));
	ctu_close(c, dir);
}

/* Device list filters by hardware class and install health. */
static void test_device_filters(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-rel-filt", NULL, &dir);
	device(c, "arm-small", "aarch64", 1024, "gguf");
	device(c, "arm-big", "aarch64", 8192, "gguf");
	device(c, "term-1", "armv7l", 256, "xgboost");
	const char *st = "{\"v\":1,\"device\":\"bad-1\",\"online\":true,\"agent\":\"1\","
			 "\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":4096,\"accelerators\":[\"npu\"],"
			 "\"backends\":[\"gguf\"]},\"models\":{\"" MODEL "\":{\"current\":\"a\","
			 "\"slots\":{\"a\":{\"status\":\"ready\",\"version\":\"1\",\"sequence\":1}},"
			 "\"install\":{\"version\":\"2\",\"state\":\"REJECTED\",\"error\":\"x\"}}}}";
	assert_int_equal(ctl_registry_on_state(c, "bad-1", st, strlen(st)), 0);
	struct ctl_device_filter f = {.online = -1, .min_ram_mb = 4096};
	assert_int_equal(ctu_count_devices(c, &f), 2);
	f = (struct ctl_device_filter){.online = -1, .backend = "gguf"};
	assert_int_equal(ctu_count_devices(c, &f), 3);
	f = (struct ctl_device_filter){.online = -1, .backend = "xgboost"};
	assert_int_equal(ctu_count_devices(c, &f), 1);
	f = (struct ctl_device_filter){.online = -1, .accelerator = "npu"};
	assert_int_equal(ctu_count_devices(c, &f), 1);
	f = (struct ctl_device_filter){.online = -1, .install_state = "REJECTED"};
	assert_int_equal(ctu_count_devices(c, &f), 1);
	f = (struct ctl_device_filter){.online = -1, .arch = "aarch64", .min_ram_mb = 2000};
	assert_int_equal(ctu_count_devices(c, &f), 1);
	ctu_close(c, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pick),
		cmocka_unit_test(test_create_and_query),
		cmocka_unit_test(test_rollout_of_release),
		cmocka_unit_test(test_windows),
		cmocka_unit_test(test_device_filters),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
