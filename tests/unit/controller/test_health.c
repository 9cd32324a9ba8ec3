/* Health-regression gates: synthetic model records and crash events go
 * through the real ingest path (wire batch -> ctl_ingest_batch -> SQLite);
 * a rollout with gates halts (and reverts) on a latency regression, an
 * error-rate regression and a crash, holds while data is missing, and lets
 * a healthy release through. Each quality gate (drift_psi_max,
 * empty_rate_max_delta, refusal_rate_max_delta) halts on a breach with the
 * figures in the reason and lets a release within its limit complete. */
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>
#include <flotilla/tele_metrics.h>

#include "rollout.h"

#define MODEL "defect-llm"
#define NEWV "1.4.0"
#define OLDV "1.3.0"
#define MAXCAP 256
#define STREAM "00000000000000aa"

struct cap {
	char dev[MAXCAP][CTL_DEVICE_ID_MAX + 1];
	bool revert[MAXCAP];
	size_t n;
};

static int capture(void *ud, const char *device, const char *json, size_t len)
{
	(void)json;
	(void)len;
	struct cap *k = ud;
	assert_true(k->n < MAXCAP);
	snprintf(k->dev[k->n], sizeof(k->dev[0]), "%s", device);
	k->revert[k->n++] = strstr(json, "\"kind\":\"revert\"") != NULL;
	return 0;
}

static void report(struct ctl *c, const char *dev, const char *cur, const char *istate)
{
	char buf[1024], inst[256] = "";
	if (istate)
		snprintf(inst, sizeof(inst),
			 ",\"install\":{\"version\":\"" NEWV "\",\"state\":\"%s\",\"error\":\"\"}",
			 istate);
	snprintf(buf, sizeof(buf),
		 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1.0\","
		 "\"hw\":{\"arch\":\"aarch64\",\"ram_mb\":1000,\"accelerators\":[],\"backends\":[]},"
		 "\"labels\":{\"site\":\"s1\"},"
		 "\"models\":{\"" MODEL "\":{\"current\":\"a\",\"slots\":{\"a\":{\"status\":"
		 "\"ready\",\"version\":\"%s\",\"sequence\":1}}%s}}}",
		 dev, cur, inst);
	assert_int_equal(ctl_registry_on_state(c, dev, buf, strlen(buf)), 0);
}

static void add_bundle(struct ctl *c)
{
	struct ctl_store *s = ctl_get_store(c);
	struct ctl_bundle_rec b = {.model = MODEL, .version = NEWV, .sequence = 2,
				   .envelope_id = "00", .envelope = "ENV-" NEWV,
				   .files_json = "[]", .pushed_at_s = 1};
	assert_int_equal(s->ops->bundle_put(s, &b), 1);
}

/* Per-device telemetry sequence numbers (one stream per test device). */
static uint64_t next_seq[64];

static int dev_index(const char *dev)
{
	return atoi(strrchr(dev, '-') + 1);
}

/* Ingest one batch holding the record REC of DEV through ctl_ingest_batch. */
static void ingest_rec(struct ctl *c, const char *dev, cJSON *rec)
{
	uint64_t seq = ++next_seq[dev_index(dev)];
	cJSON_AddNumberToObject(rec, "seq", (double)seq);
	char *r = cJSON_PrintUnformatted(rec);
	cJSON_Delete(rec);
	char *batch = fl_asprintf("{\"v\":1,\"device\":\"%s\",\"stream\":\"" STREAM "\","
				  "\"first\":%llu,\"last\":%llu,\"n\":1,\"records\":[%s]}",
				  dev, (unsigned long long)seq, (unsigned long long)seq, r);
	free(r);
	assert_int_equal(ctl_ingest_batch(c, dev, batch, strlen(batch)), 1);
	free(batch);
}

/* A model record of VERSION: REQUESTS requests, ERRORS timeouts, every
 * latency LAT_MS. */
static void model_rec(struct ctl *c, const char *dev, const char *version, uint64_t requests,
		      uint64_t errors, double lat_ms)
{
	struct tele_model_metrics m = {.period_s = 60, .requests = requests};
	snprintf(m.model, sizeof(m.model), "%s", MODEL);
	snprintf(m.version, sizeof(m.version), "%s", version);
	m.errors[TELE_ERR_TIMEOUT] = errors;
	tele_hist_reset(&m.latency_us);
	for (uint64_t i = 0; i < requests; i++)
		tele_hist_add(&m.latency_us, lat_ms * 1000.0 * (0.9 + 0.2 * (double)(i % 10) / 10));
	cJSON *rec = NULL;
	assert_int_equal(tele_record_model(&m, 1764000000, &rec), 0);
	ingest_rec(c, dev, rec);
}

static void crash_event(struct ctl *c, const char *dev, const char *version)
{
	struct tele_event ev = {
		.kind = TELE_EV_RUNNER_CRASHED, .model = MODEL, .version = version, .reason = "signal"};
	cJSON *rec = NULL;
	assert_int_equal(tele_record_event(&ev, 1764000000, &rec), 0);
	ingest_rec(c, dev, rec);
}

static const char *dev_id(int i)
{
	static char id[8][32];
	static int k;
	k = (k + 1) % 8;
	snprintf(id[k], sizeof(id[k]), "gw-%02d", i);
	return id[k];
}

/* A fleet of N devices on OLDV, each with a healthy baseline. */
static struct ctl *setup(int n, char **dir)
{
	memset(next_seq, 0, sizeof(next_seq));
	struct ctl *c = ctu_open("ctl-health", NULL, dir);
	add_bundle(c);
	for (int i = 0; i < n; i++) {
		report(c, dev_id(i), OLDV, NULL);
		model_rec(c, dev_id(i), OLDV, 200, 1, 40);
	}
	assert_true(ctl_ingest_flush(c) >= 0);
	return c;
}

static int64_t create(struct ctl *c, const char *gates)
{
	char body[1024];
	snprintf(body, sizeof(body),
		 "{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[50,100],"
		 "\"soak_s\":0,\"min_sample\":1,\"revert_on_halt\":true,\"gates\":%s}",
		 gates);
	cJSON *o = NULL;
	char err[256];
	int r = ctl_rollout_create_ex(c, body, strlen(body), "alice", 1000, &o, err, sizeof(err));
	if (r < 0)
		fail_msg("create: %d %s", r, err);
	int64_t id = (int64_t)cJSON_GetObjectItem(o, "id")->valuedouble;
	cJSON_Delete(o);
	return id;
}

static cJSON *get(struct ctl *c, int64_t id)
{
	cJSON *o = NULL;
	assert_int_equal(ctl_rollout_get(c, id, &o), 0);
	return o;
}

static void assert_state(struct ctl *c, int64_t id, const char *want)
{
	cJSON *o = get(c, id);
	const char *st = cJSON_GetObjectItem(o, "state")->valuestring;
	if (strcmp(st, want))
		fail_msg("state %s, expected %s (reason: %s)", st, want,
			 cJSON_GetObjectItem(o, "reason")->valuestring);
	cJSON_Delete(o);
}

static int audit_rows(const char *dir, const char *action, const char *like)
{
	return ctu_audit_rows(dir, action, like);
}

/* First wave: 5 of 10 deploys, all committed. */
static void first_wave(struct ctl *c, struct cap *k)
{
	assert_int_equal(ctl_rollout_tick(c, 1001, capture, k), 5);
	for (size_t i = 0; i < k->n; i++)
		report(c, k->dev[i], NEWV, "COMMITTED");
}

static void test_latency_regression_halts_and_reverts(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = setup(10, &dir);
	int64_t id = create(c, "{\"p95_latency_max_ratio\":1.5,\"min_requests\":100}");
	struct cap k = {0};
	first_wave(c, &k);
	/* Data of NEWV below min_requests first, then enough. */
	for (size_t i = 0; i < 5; i++)
		model_rec(c, k.dev[i], NEWV, 10, 0, 90);
	assert_true(ctl_ingest_flush(c) >= 0);
	for (size_t i = 0; i < 5; i++)
		model_rec(c, k.dev[i], NEWV, 100, 0, 90);
	assert_true(ctl_ingest_flush(c) >= 0);
	size_t before = k.n;
	ctl_rollout_tick(c, 1002, capture, &k);
	assert_state(c, id, "halted");
	cJSON *o = get(c, id);
	const char *reason = cJSON_GetObjectItem(o, "reason")->valuestring;
	assert_non_null(strstr(reason, "health gate"));
	assert_non_null(strstr(reason, "p95 latency"));
	cJSON *g = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "health"), "groups"),
				      0);
	assert_string_equal(cJSON_GetObjectItem(g, "verdict")->valuestring, "breach");
	cJSON *cand = cJSON_GetObjectItem(g, "candidate"), *base = cJSON_GetObjectItem(g, "baseline");
	assert_int_equal((int)cJSON_GetObjectItem(cand, "devices")->valuedouble, 5);
	assert_int_equal((int)cJSON_GetObjectItem(cand, "requests")->valuedouble, 550);
	assert_int_equal((int)cJSON_GetObjectItem(base, "requests")->valuedouble, 1000);
	double cp = cJSON_GetObjectItem(cand, "p95_latency_ms")->valuedouble;
	double bp = cJSON_GetObjectItem(base, "p95_latency_ms")->valuedouble;
	assert_true(cp > 80 && cp < 120);
	assert_true(bp > 35 && bp < 55);
	cJSON_Delete(o);
	/* Reverts went to the 5 devices that took it, nothing new deployed. */
	size_t reverts = 0;
	for (size_t i = before; i < k.n; i++) {
		assert_true(k.revert[i]);
		reverts++;
	}
	assert_int_equal(reverts, 5);
	assert_int_equal(audit_rows(dir, "rollout.halt", "%health gate%p95 latency%ms%"), 1);
	assert_int_equal(audit_rows(dir, "rollout.revert", "%"), 5);
	ctu_close(c, dir);
}

static void test_error_rate_and_crashes(void **state)
{
	(void)state;
	char *dir;
	/* error rate */
	struct ctl *c = setup(10, &dir);
	int64_t id = create(c, "{\"error_rate_max_delta\":0.02}");
	struct cap k = {0};
	first_wave(c, &k);
	for (size_t i = 0; i < 5; i++)
		model_rec(c, k.dev[i], NEWV, 200, 20, 40); /* 10% vs 0.5% */
	assert_true(ctl_ingest_flush(c) >= 0);
	ctl_rollout_tick(c, 1002, capture, &k);
	assert_state(c, id, "halted");
	assert_int_equal(audit_rows(dir, "rollout.halt", "%error rate 0.1000 vs 0.0050%"), 1);
	ctu_close(c, dir);

	/* one runner crash with crashes_max 0 */
	c = setup(10, &dir);
	id = create(c, "{\"crashes_max\":0}");
	memset(&k, 0, sizeof(k));
	first_wave(c, &k);
	crash_event(c, k.dev[2], NEWV);
	crash_event(c, dev_id(9), OLDV); /* another version: not counted */
	assert_true(ctl_ingest_flush(c) >= 0);
	ctl_rollout_tick(c, 1002, capture, &k);
	assert_state(c, id, "halted");
	assert_int_equal(audit_rows(dir, "rollout.halt", "%1 runner crashes > 0 allowed%"), 1);
	ctu_close(c, dir);
}

static void test_healthy_release_completes(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = setup(10, &dir);
	int64_t id = create(c, "{\"p95_latency_max_ratio\":1.5,\"error_rate_max_delta\":0.02,"
			       "\"crashes_max\":0,\"min_requests\":100}");
	struct cap k = {0};
	first_wave(c, &k);
	for (size_t i = 0; i < 5; i++)
		model_rec(c, k.dev[i], NEWV, 200, 1, 42);
	assert_true(ctl_ingest_flush(c) >= 0);
	/* gate holds: the second wave goes out */
	assert_int_equal(ctl_rollout_tick(c, 1002, capture, &k), 5);
	assert_state(c, id, "running");
	cJSON *o = get(c, id);
	cJSON *g = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "health"), "groups"),
				      0);
	assert_string_equal(cJSON_GetObjectItem(g, "verdict")->valuestring, "ok");
	assert_string_equal(cJSON_GetObjectItem(g, "version")->valuestring, NEWV);
	cJSON_Delete(o);
	for (size_t i = 5; i < k.n; i++)
		report(c, k.dev[i], NEWV, "COMMITTED");
	ctl_rollout_tick(c, 1003, capture, &k);
	assert_state(c, id, "completed");
	ctu_close(c, dir);
}

static void test_waits_without_data(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = setup(4, &dir);
	int64_t id = create(c, "{\"p95_latency_max_ratio\":1.2}");
	struct cap k = {0};
	assert_int_equal(ctl_rollout_tick(c, 1001, capture, &k), 2);
	for (size_t i = 0; i < k.n; i++)
		report(c, k.dev[i], NEWV, "COMMITTED");
	model_rec(c, k.dev[0], NEWV, 50, 0, 400); /* under min_requests (100) */
	assert_true(ctl_ingest_flush(c) >= 0);
	ctl_rollout_tick(c, 1002, capture, &k);
	assert_state(c, id, "running");
	cJSON *o = get(c, id);
	cJSON *g = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "health"), "groups"),
				      0);
	assert_string_equal(cJSON_GetObjectItem(g, "verdict")->valuestring, "waiting");
	cJSON_Delete(o);
	ctu_close(c, dir);
}

/* A model record of VERSION with quality signals: REQUESTS outputs of which
 * EMPTY are empty and REFUSALS refusals (the real tele_quality counters),
 * and a drift block with the length PSI when PSI >= 0. */
static void quality_rec(struct ctl *c, const char *dev, const char *version, uint64_t requests,
			uint64_t empty, uint64_t refusals, double psi)
{
	struct tele_model_metrics m = {.period_s = 60, .requests = requests, .has_quality = true};
	snprintf(m.model, sizeof(m.model), "%s", MODEL);
	snprintf(m.version, sizeof(m.version), "%s", version);
	tele_hist_reset(&m.latency_us);
	tele_quality_reset(&m.quality);
	for (uint64_t i = 0; i < requests; i++) {
		tele_hist_add(&m.latency_us, 40000);
		if (i < empty)
			tele_quality_observe_output(&m.quality, " ", 1, 0);
		else if (i < empty + refusals)
			tele_quality_observe_output(&m.quality, "I'm sorry, I cannot", 19, 5);
		else
			tele_quality_observe_output(&m.quality, "The part is fine.", 17, 5);
	}
	if (psi >= 0) {
		m.has_drift = true;
		m.drift = (struct tele_drift){.len_psi = psi, .class_psi = -1, .conf_psi = -1};
	}
	cJSON *rec = NULL;
	assert_int_equal(tele_record_model(&m, 1764000000, &rec), 0);
	ingest_rec(c, dev, rec);
}

/* Like setup(), the baseline with quality signals: 1% empty, 1% refusals. */
static struct ctl *setup_quality(int n, char **dir)
{
	memset(next_seq, 0, sizeof(next_seq));
	struct ctl *c = ctu_open("ctl-health", NULL, dir);
	add_bundle(c);
	for (int i = 0; i < n; i++) {
		report(c, dev_id(i), OLDV, NULL);
		quality_rec(c, dev_id(i), OLDV, 200, 2, 2, 0.01);
	}
	assert_true(ctl_ingest_flush(c) >= 0);
	return c;
}

/* One quality gate: candidates reporting (EMPTY, REFUSALS, PSI) per 200
 * outputs; a breach halts with WANT (the figures) in the reason and the
 * audit, NULL: the rollout completes. */
static void quality_gate(const char *gates, uint64_t empty, uint64_t refusals, double psi,
			 const char *want)
{
	char *dir;
	struct ctl *c = setup_quality(10, &dir);
	int64_t id = create(c, gates);
	struct cap k = {0};
	first_wave(c, &k);
	for (size_t i = 0; i < 5; i++)
		quality_rec(c, k.dev[i], NEWV, 200, empty, refusals, psi);
	assert_true(ctl_ingest_flush(c) >= 0);
	if (want) {
		ctl_rollout_tick(c, 1002, capture, &k);
		assert_state(c, id, "halted");
		cJSON *o = get(c, id);
		const char *reason = cJSON_GetObjectItem(o, "reason")->valuestring;
		if (!strstr(reason, want))
			fail_msg("reason \"%s\" lacks \"%s\"", reason, want);
		cJSON_Delete(o);
		char like[200];
		snprintf(like, sizeof(like), "%%%s%%", want);
		assert_int_equal(audit_rows(dir, "rollout.halt", like), 1);
	} else {
		assert_int_equal(ctl_rollout_tick(c, 1002, capture, &k), 5);
		assert_state(c, id, "running");
		for (size_t i = 5; i < k.n; i++)
			report(c, k.dev[i], NEWV, "COMMITTED");
		ctl_rollout_tick(c, 1003, capture, &k);
		assert_state(c, id, "completed");
		assert_int_equal(audit_rows(dir, "rollout.halt", "%"), 0);
	}
	ctu_close(c, dir);
}

static void test_gate_drift_psi_max(void **state)
{
	(void)state;
	quality_gate("{\"drift_psi_max\":0.25}", 2, 2, 0.4, "drift PSI 0.400 > 0.250");
	quality_gate("{\"drift_psi_max\":0.25}", 2, 2, 0.1, NULL);
}

static void test_gate_empty_rate_max_delta(void **state)
{
	(void)state;
	/* 10% empty vs 1% before */
	quality_gate("{\"empty_rate_max_delta\":0.05}", 20, 2, -1,
		     "empty output rate 0.1000 vs 0.0100 before (+0.0900 > 0.0500)");
	quality_gate("{\"empty_rate_max_delta\":0.05}", 4, 2, -1, NULL); /* 2% */
}

static void test_gate_refusal_rate_max_delta(void **state)
{
	(void)state;
	/* 15% refusals vs 1% before */
	quality_gate("{\"refusal_rate_max_delta\":0.1}", 2, 30, -1,
		     "refusal rate 0.1500 vs 0.0100 before (+0.1400 > 0.1000)");
	quality_gate("{\"refusal_rate_max_delta\":0.1}", 2, 10, -1, NULL); /* 5% */
}

static void test_bad_gates(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = setup(2, &dir);
	static const char *const bad[] = {
		"[]", "{\"p95_latency_max_ratio\":0.5}", "{\"crashes_max\":1.5}",
		"{\"error_rate_max_delta\":\"0.1\"}", "{\"latency\":2}", "{\"min_requests\":0}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char body[512], err[256] = "";
		snprintf(body, sizeof(body),
			 "{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],"
			 "\"gates\":%s}",
			 bad[i]);
		cJSON *o = NULL;
		int r = ctl_rollout_create_ex(c, body, strlen(body), "eve", 1, &o, err, sizeof(err));
		assert_true(r == -FL_ESCHEMA || r == -FL_ERANGE);
		assert_non_null(strstr(err, "gates"));
		assert_null(o);
	}
	cJSON *list = NULL;
	assert_int_equal(ctl_rollout_list(c, &list), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(list, "rollouts")), 0);
	cJSON_Delete(list);
	ctu_close(c, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_latency_regression_halts_and_reverts),
		cmocka_unit_test(test_error_rate_and_crashes),
		cmocka_unit_test(test_healthy_release_completes),
		cmocka_unit_test(test_waits_without_data),
		cmocka_unit_test(test_gate_drift_psi_max),
		cmocka_unit_test(test_gate_empty_rate_max_delta),
		cmocka_unit_test(test_gate_refusal_rate_max_delta),
		cmocka_unit_test(test_bad_gates),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
