/* Staged rollouts: waves, soak, failure gate (halt + revert), operator
 * actions, restart, strict API input, audit. Devices are simulated by real
 * state JSON through ctl_registry_on_state(); commands are captured by the
 * engine's send hook. */
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>

#include "http.h"
#include "rollout.h"

#define MODEL "defect-llm"
#define NEWV "1.4.0"
#define OLDV "1.3.0"
#define MAXCAP 256

struct cap {
	char dev[MAXCAP][CTL_DEVICE_ID_MAX + 1];
	bool revert[MAXCAP];
	size_t n;
	bool fail;
};

static int capture(void *ud, const char *device, const char *json, size_t len)
{
	struct cap *k = ud;
	if (k->fail)
		return -ENOTCONN;
	cJSON *o = cJSON_ParseWithLength(json, len);
	assert_non_null(o);
	const char *kind = cJSON_GetObjectItem(o, "kind")->valuestring;
	bool rev = !strcmp(kind, "revert");
	if (!rev) {
		assert_string_equal(kind, "deploy");
		assert_string_equal(cJSON_GetObjectItem(o, "envelope")->valuestring, "ENV-" NEWV);
	} else {
		assert_string_equal(cJSON_GetObjectItem(o, "model")->valuestring, MODEL);
	}
	cJSON_Delete(o);
	assert_true(k->n < MAXCAP);
	snprintf(k->dev[k->n], sizeof(k->dev[0]), "%s", device);
	k->revert[k->n++] = rev;
	return 0;
}

/* Report DEV running CUR with an install of NEWV in ISTATE (NULL: none). */
static void report(struct ctl *c, const char *dev, const char *site, const char *cur,
		   const char *istate)
{
	char buf[1024], inst[256] = "";
	if (istate)
		snprintf(inst, sizeof(inst),
			 ",\"install\":{\"version\":\"" NEWV "\",\"state\":\"%s\",\"error\":\"\"}",
			 istate);
	snprintf(buf, sizeof(buf),
		 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1.0\","
		 "\"hw\":{\"arch\":\"aarch64\",\"ram_mb\":1000,\"accelerators\":[],\"backends\":[]},"
		 "\"labels\":{\"site\":\"%s\"},"
		 "\"models\":{\"" MODEL "\":{\"current\":\"a\",\"slots\":{\"a\":{\"status\":"
		 "\"ready\",\"version\":\"%s\",\"sequence\":1}}%s}}}",
		 dev, site, cur, inst);
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

static void fleet(struct ctl *c, int n, const char *site)
{
	for (int i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof(id), "%s-%03d", site, i);
		report(c, id, site, OLDV, NULL);
	}
}

static int64_t create(struct ctl *c, const char *json)
{
	cJSON *o = NULL;
	assert_int_equal(ctl_rollout_create(c, json, strlen(json), "alice", 1000, &o), 0);
	int64_t id = (int64_t)cJSON_GetObjectItem(o, "id")->valuedouble;
	assert_string_equal(cJSON_GetObjectItem(o, "state")->valuestring, "running");
	cJSON_Delete(o);
	return id;
}

static char *field(struct ctl *c, int64_t id, const char *key)
{
	cJSON *o = NULL;
	assert_int_equal(ctl_rollout_get(c, id, &o), 0);
	cJSON *v = cJSON_GetObjectItem(o, key);
	char *s = cJSON_IsString(v) ? strdup(v->valuestring) : cJSON_PrintUnformatted(v);
	cJSON_Delete(o);
	return s;
}

static void assert_field(struct ctl *c, int64_t id, const char *key, const char *want)
{
	char *s = field(c, id, key);
	assert_string_equal(s, want);
	free(s);
}

/* Answer every captured deploy from FROM on with STATE. */
static void answer(struct ctl *c, struct cap *k, size_t from, const char *state)
{
	for (size_t i = from; i < k->n; i++) {
		if (k->revert[i])
			continue;
		bool ok = !strcmp(state, "COMMITTED") || !strcmp(state, "TRIAL");
		report(c, k->dev[i], "s1", ok ? NEWV : OLDV, state);
	}
}

static int audit_rows(struct ctl *c, const char *dir, const char *action, const char *like)
{
	(void)c;
	return ctu_audit_rows(dir, action, like);
}

#define SPEC_GOOD                                                                                \
	"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[10,50,100],\"soak_s\":30," \
	"\"max_concurrent\":100,\"max_failure_rate\":0.2,\"min_sample\":3,"                      \
	"\"select\":{\"labels\":{\"site\":\"s1\"}}}"

static void test_good_release(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-ro-good", NULL, &dir);
	add_bundle(c);
	fleet(c, 20, "s1");
	fleet(c, 5, "s2"); /* not selected */
	int64_t id = create(c, SPEC_GOOD);
	struct cap k = {0};
	assert_int_equal(ctl_rollout_tick(c, 1000, capture, &k), 2); /* 10% of 20 */
	assert_int_equal(ctl_rollout_tick(c, 1001, capture, &k), 0);  /* in flight */
	answer(c, &k, 0, "COMMITTED");
	assert_int_equal(ctl_rollout_tick(c, 1002, capture, &k), 0); /* soaking */
	assert_field(c, id, "wave", "0");
	assert_int_equal(ctl_rollout_tick(c, 1031, capture, &k), 0); /* 29 s < 30 */
	assert_int_equal(ctl_rollout_tick(c, 1032, capture, &k), 8); /* wave 2: 50% */
	assert_field(c, id, "wave", "1");
	answer(c, &k, 2, "COMMITTED");
	assert_int_equal(ctl_rollout_tick(c, 1040, capture, &k), 0);
	assert_int_equal(ctl_rollout_tick(c, 1070, capture, &k), 10);
	answer(c, &k, 10, "COMMITTED");
	assert_int_equal(ctl_rollout_tick(c, 1080, capture, &k), 0);
	assert_field(c, id, "state", "running");
	assert_int_equal(ctl_rollout_tick(c, 1110, capture, &k), 0);
	assert_field(c, id, "state", "completed");
	assert_int_equal(k.n, 20);
	for (size_t i = 0; i < k.n; i++) {
		assert_false(k.revert[i]);
		assert_memory_equal(k.dev[i], "s1-", 3);
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(k.dev[i], k.dev[j]);
	}
	assert_int_equal(audit_rows(c, dir, "rollout.complete", "%completed: 20 devices%"), 1);
	assert_int_equal(audit_rows(c, dir, "rollout.advance", "%gate holds%"), 2);
	assert_int_equal(audit_rows(c, dir, "rollout.deploy", "%sent to s1-%"), 20);
	assert_int_equal(audit_rows(c, dir, "rollout.create", "%" MODEL "@" NEWV "%"), 1);
	/* A finished rollout does nothing more. */
	assert_int_equal(ctl_rollout_tick(c, 5000, capture, &k), 0);
	ctu_close(c, dir);
}

static void test_bad_release_halts(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-ro-bad", NULL, &dir);
	add_bundle(c);
	fleet(c, 10, "s1");
	int64_t id = create(c, "{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\","
			       "\"waves\":[50,100],\"soak_s\":0,\"max_concurrent\":1,"
			       "\"max_failure_rate\":0.5,\"min_sample\":3,\"revert_on_halt\":true}");
	struct cap k = {0};
	assert_int_equal(ctl_rollout_tick(c, 1000, capture, &k), 1);
	answer(c, &k, 0, "REJECTED"); /* 1 of 1 failed, but below the minimum sample */
	assert_int_equal(ctl_rollout_tick(c, 1001, capture, &k), 1);
	assert_field(c, id, "state", "running");
	answer(c, &k, 1, "COMMITTED"); /* 1 of 2 = 0.5: not above */
	assert_int_equal(ctl_rollout_tick(c, 1002, capture, &k), 1);
	assert_field(c, id, "state", "running");
	answer(c, &k, 2, "ROLLED_BACK"); /* 2 of 3 > 0.5: halt on this tick */
	assert_int_equal(ctl_rollout_tick(c, 1003, capture, &k), 1); /* the revert */
	assert_field(c, id, "state", "halted");
	assert_field(c, id, "gate_crossed_at", "1003");
	assert_field(c, id, "halted_at", "1003");
	assert_field(c, id, "wave", "0");
	assert_int_equal(k.n, 4);
	assert_true(k.revert[3]);
	assert_string_equal(k.dev[3], k.dev[1]); /* the one that took it */
	/* Nothing more: no deploys, the revert is not repeated. */
	assert_int_equal(ctl_rollout_tick(c, 1004, capture, &k), 0);
	assert_int_equal(audit_rows(c, dir, "rollout.halt", "%failure gate crossed in wave 1: 2 failed of 3%"),
			 1);
	assert_int_equal(audit_rows(c, dir, "rollout.revert", "%revert sent to%"), 1);
	/* Resume of a halted rollout is refused; abort is allowed. */
	assert_int_equal(ctl_rollout_action(c, id, "resume", "bob", 1005, NULL), -FL_ESTATE);
	assert_int_equal(ctl_rollout_action(c, id, "abort", "bob", 1005, NULL), 0);
	assert_field(c, id, "state", "aborted");
	ctu_close(c, dir);
}

static void test_operator_actions(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-ro-ops", NULL, &dir);
	add_bundle(c);
	fleet(c, 20, "s1");
	int64_t id = create(c, SPEC_GOOD);
	struct cap k = {0};
	assert_int_equal(ctl_rollout_tick(c, 1000, capture, &k), 2);
	answer(c, &k, 0, "COMMITTED");
	assert_int_equal(ctl_rollout_action(c, id, "pause", "bob", 1001, NULL), 0);
	assert_int_equal(ctl_rollout_action(c, id, "pause", "bob", 1001, NULL), -FL_ESTATE);
	assert_int_equal(ctl_rollout_tick(c, 1100, capture, &k), 0); /* paused */
	assert_field(c, id, "state", "paused");
	cJSON *o = NULL;
	assert_int_equal(ctl_rollout_action(c, id, "resume", "bob", 1101, &o), 0);
	assert_string_equal(cJSON_GetObjectItem(o, "state")->valuestring, "running");
	cJSON_Delete(o);
	assert_int_equal(ctl_rollout_tick(c, 1102, capture, &k), 0); /* wave done, soaking */
	assert_int_equal(ctl_rollout_tick(c, 1140, capture, &k), 8);
	answer(c, &k, 2, "COMMITTED");
	assert_int_equal(ctl_rollout_action(c, id, "bogus", "bob", 1141, NULL), -EINVAL);
	assert_int_equal(ctl_rollout_action(c, 999, "pause", "bob", 1141, NULL), -ENOENT);
	assert_int_equal(ctl_rollout_action(c, id, "rollback", "bob", 1141, NULL), 0);
	size_t before = k.n;
	assert_int_equal(ctl_rollout_tick(c, 1142, capture, &k), 10);
	for (size_t i = before; i < k.n; i++)
		assert_true(k.revert[i]);
	assert_int_equal(ctl_rollout_tick(c, 1143, capture, &k), 0);
	assert_field(c, id, "state", "rolled_back");
	assert_int_equal(ctl_rollout_action(c, id, "rollback", "bob", 1144, NULL), -FL_ESTATE);
	assert_int_equal(ctl_rollout_action(c, id, "abort", "bob", 1144, NULL), -FL_ESTATE);
	assert_int_equal(audit_rows(c, dir, "rollout.action", "%pause by operator%"), 1);
	assert_int_equal(audit_rows(c, dir, "rollout.action", "%resume by operator%"), 1);
	assert_int_equal(audit_rows(c, dir, "rollout.action", "%rollback by operator%"), 1);

	/* Abort: nothing more is sent. */
	int64_t id2 = create(c, SPEC_GOOD);
	assert_int_equal(ctl_rollout_action(c, id2, "abort", "bob", 1200, NULL), 0);
	assert_int_equal(ctl_rollout_tick(c, 1201, capture, &k), 0);
	assert_field(c, id2, "state", "aborted");
	/* A failed send is retried on a later tick. */
	int64_t id3 = create(c, "{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\","
				"\"waves\":[100],\"select\":{\"devices\":[\"s1-001\",\"s1-002\"]}}");
	k.fail = true;
	assert_int_equal(ctl_rollout_tick(c, 1300, capture, &k), 0);
	k.fail = false;
	/* s1-001/002 were reverted to OLDV by nobody here: they still report NEWV
	 * only if they took it; force the old version. */
	report(c, "s1-001", "s1", OLDV, NULL);
	report(c, "s1-002", "s1", OLDV, NULL);
	before = k.n;
	assert_int_equal(ctl_rollout_tick(c, 1301, capture, &k), 2);
	assert_field(c, id3, "state", "running");
	cJSON *list = NULL;
	assert_int_equal(ctl_rollout_list(c, &list), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(list, "rollouts")), 3);
	cJSON_Delete(list);
	ctu_close(c, dir);
}

static void test_restart(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-ro-restart", NULL, &dir);
	add_bundle(c);
	fleet(c, 20, "s1");
	int64_t id = create(c, SPEC_GOOD);
	struct cap k = {0};
	assert_int_equal(ctl_rollout_tick(c, 1000, capture, &k), 2);
	ctl_free(c);
	struct ctl_opts o = {.data_dir = dir, .store_dsn = ctu_store_dsn()};
	assert_int_equal(ctl_open(&o, &c), 0);
	assert_int_equal(ctl_rollout_tick(c, 1001, capture, &k), 0); /* not sent again */
	answer(c, &k, 0, "COMMITTED");
	assert_int_equal(ctl_rollout_tick(c, 1002, capture, &k), 0);
	ctl_free(c);
	assert_int_equal(ctl_open(&o, &c), 0);
	assert_int_equal(ctl_rollout_tick(c, 1040, capture, &k), 8); /* soak survived */
	assert_field(c, id, "wave", "1");
	ctu_close(c, dir);
}

/* Two controller instances on one PostgreSQL store: only the leader (a
 * child process here) ticks; when it is killed mid-rollout (SIGKILL, after
 * wave 1 was sent) the other takes the lock over and continues where the
 * store says, sending nothing twice. SQLite: always the leader. */
static void test_two_instances(void **state)
{
	(void)state;
	char *dir;
	struct ctl *a = ctu_open("ctl-ro-two", NULL, &dir);
	struct ctl_store *st = ctl_get_store(a);
	if (!ctu_store_dsn()) {
		assert_int_equal(st->ops->engine_leader(st), 1);
		ctu_close(a, dir);
		return;
	}
	add_bundle(a);
	fleet(a, 20, "s1");
	int64_t id = create(a, SPEC_GOOD);
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		struct ctl_opts o = {.data_dir = dir, .store_dsn = ctu_store_dsn()};
		struct ctl *b = NULL;
		static struct cap kb;
		int n = ctl_open(&o, &b) == 0 ? ctl_rollout_tick(b, 1000, capture, &kb) : -1000;
		if (write(fds[1], &n, sizeof(n)) != sizeof(n) || write(fds[1], &kb, sizeof(kb)) < 0)
			_exit(1);
		for (;;)
			pause(); /* killed by the parent */
	}
	close(fds[1]);
	int n = 0;
	static struct cap k;
	assert_int_equal(read(fds[0], &n, sizeof(n)), sizeof(n));
	size_t got = 0;
	while (got < sizeof(k)) {
		ssize_t r = read(fds[0], (char *)&k + got, sizeof(k) - got);
		assert_true(r > 0);
		got += (size_t)r;
	}
	close(fds[0]);
	assert_int_equal(n, 2); /* the child leads: wave 1 (10% of 20) */
	assert_int_equal(k.n, 2);
	struct cap none = {0};
	assert_int_equal(ctl_rollout_tick(a, 1001, capture, &none), 0); /* follower */
	assert_int_equal(none.n, 0);
	assert_int_equal(st->ops->engine_leader(st), 0);

	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(waitpid(pid, NULL, 0), pid);
	/* The server frees the dead session's lock; bounded wait for it. */
	int lead = 0;
	for (int i = 0; i < 500 && (lead = st->ops->engine_leader(st)) == 0; i++)
		nanosleep(&(struct timespec){0, 20 * 1000000L}, NULL);
	assert_int_equal(lead, 1);
	answer(a, &k, 0, "COMMITTED");
	assert_int_equal(ctl_rollout_tick(a, 1002, capture, &k), 0); /* soaking, none resent */
	assert_int_equal(k.n, 2);
	assert_int_equal(ctl_rollout_tick(a, 1032, capture, &k), 8); /* wave 2 by the new leader */
	assert_field(a, id, "wave", "1");
	for (size_t i = 0; i < k.n; i++)
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(k.dev[i], k.dev[j]);
	assert_int_equal(ctu_audit_rows(dir, "rollout.deploy", "%sent to s1-%"), 10);
	ctu_close(a, dir);
}

static void test_bad_input(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-ro-input", NULL, &dir);
	add_bundle(c);
	static const struct {
		const char *json;
		int err;
	} bad[] = {
		{"", -FL_EINVAL_JSON},
		{"[1]", -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\"}", -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],\"x\":1}",
		 -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[50]}", -FL_ERANGE},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[50,10,100]}",
		 -FL_ERANGE},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[\"10\"]}",
		 -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],"
		 "\"max_failure_rate\":1.5}",
		 -FL_ERANGE},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],"
		 "\"min_sample\":0}",
		 -FL_ERANGE},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],"
		 "\"soak_s\":\"30\"}",
		 -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],"
		 "\"select\":{\"site\":\"x\"}}",
		 -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],"
		 "\"select\":{\"devices\":[\"bad id\"]}}",
		 -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],"
		 "\"wave_unit\":\"permille\"}",
		 -FL_ESCHEMA},
		{"{\"model\":\"" MODEL "\",\"version\":\"9.9.9\",\"waves\":[100]}", -ENOENT},
		{"{\"model\":\"../x\",\"version\":\"" NEWV "\",\"waves\":[100]}", -EINVAL},
	};
	struct ctl_store *s = ctl_get_store(c);
	int64_t audits0 = 0, audits1 = 0;
	assert_int_equal(s->ops->audit_count(s, &audits0), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cJSON *o = NULL;
		int r = ctl_rollout_create(c, bad[i].json, strlen(bad[i].json), "eve", 1, &o);
		if (r != bad[i].err)
			fail_msg("case %zu: %d, expected %d", i, r, bad[i].err);
		assert_null(o);
	}
	assert_int_equal(s->ops->audit_count(s, &audits1), 0);
	assert_int_equal(audits0, audits1);
	cJSON *list = NULL;
	assert_int_equal(ctl_rollout_list(c, &list), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(list, "rollouts")), 0);
	cJSON_Delete(list);
	/* Counts as waves. */
	int64_t id = create(c, "{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\","
			       "\"waves\":[1,3],\"wave_unit\":\"count\",\"soak_s\":0}");
	fleet(c, 5, "s1");
	struct cap k = {0};
	assert_int_equal(ctl_rollout_tick(c, 10, capture, &k), 1);
	answer(c, &k, 0, "COMMITTED");
	assert_int_equal(ctl_rollout_tick(c, 11, capture, &k), 2);
	answer(c, &k, 1, "COMMITTED");
	assert_int_equal(ctl_rollout_tick(c, 12, capture, &k), 0);
	assert_field(c, id, "state", "completed");
	ctu_close(c, dir);
}

/* ---------------------------------------------------------------- HTTP */

#define RT "reader-token-0123456789"
#define OT "operator-token-0123456789"

struct body {
	char buf[65536];
	size_t len;
};

static size_t sink(char *d, size_t sz, size_t n, void *ud)
{
	struct body *b = ud;
	size_t k = sz * n;
	if (b->len + k >= sizeof(b->buf))
		return 0;
	memcpy(b->buf + b->len, d, k);
	b->len += k;
	b->buf[b->len] = 0;
	return k;
}

static long req(const char *base, const char *method, const char *path, const char *token,
		const char *data, cJSON **ret_json)
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
	hd = curl_slist_append(hd, "Content-Type: application/json");
	struct body b = {.len = 0};
	b.buf[0] = 0;
	curl_easy_setopt(cu, CURLOPT_URL, url);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
	curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, method);
	if (data) {
		curl_easy_setopt(cu, CURLOPT_POSTFIELDS, data);
		curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE, (long)strlen(data));
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

static void test_http_api(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-ro-http", NULL, &dir);
	add_bundle(c);
	fleet(c, 10, "s1");
	char *tmp = fl_path_join(dir, "tmp");
	assert_int_equal(fl_mkdir_p(tmp, 0700), 0);
	struct ctl_token tokens[] = {{.name = "reader", .secret = RT, .role = CTL_ROLE_READ},
				     {.name = "alice", .secret = OT, .role = CTL_ROLE_OPERATOR}};
	struct ctl_http_opts ho = {.tokens = tokens, .n_tokens = 2, .tmp_dir = tmp};
	struct ctl_http *h = NULL;
	assert_int_equal(ctl_http_start(c, &ho, &h), 0);
	char base[64];
	snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)ctl_http_port(h));
	struct ctl_store *s = ctl_get_store(c);
	int64_t a0 = 0, a1 = 0;
	assert_int_equal(s->ops->audit_count(s, &a0), 0);

	/* Refusals: nothing created, nothing audited. */
	const char *good = "{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[50,100],"
			   "\"soak_s\":0}";
	assert_int_equal(req(base, "POST", "/api/v1/rollouts", RT, good, NULL), 403);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts", NULL, good, NULL), 401);
	static const char *const bad[] = {
		"", "{", "[]", "{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],\"evil\":1}",
		"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],\"min_sample\":-1}",
		"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[100],\"revert_on_halt\":1}",
		"{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\",\"waves\":[0,100]}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cJSON *e = NULL;
		assert_int_equal(req(base, "POST", "/api/v1/rollouts", OT, bad[i], &e), 400);
		assert_non_null(cJSON_GetObjectItem(e, "error"));
		cJSON_Delete(e);
	}
	assert_int_equal(req(base, "POST", "/api/v1/rollouts",
			     OT, "{\"model\":\"" MODEL "\",\"version\":\"7.7\",\"waves\":[100]}", NULL),
			 404);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts?x=1", OT, good, NULL), 400);
	assert_int_equal(s->ops->audit_count(s, &a1), 0);
	assert_int_equal(a0, a1);
	cJSON *o = NULL;
	assert_int_equal(req(base, "GET", "/api/v1/rollouts", RT, NULL, &o), 200);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "rollouts")), 0);
	cJSON_Delete(o);

	/* Create, read, act. */
	assert_int_equal(req(base, "POST", "/api/v1/rollouts", OT, good, &o), 201);
	assert_int_equal(cJSON_GetObjectItem(o, "id")->valueint, 1);
	assert_string_equal(cJSON_GetObjectItem(o, "created_by")->valuestring, "alice");
	cJSON_Delete(o);
	assert_int_equal(req(base, "GET", "/api/v1/rollouts/1", RT, NULL, &o), 200);
	assert_string_equal(cJSON_GetObjectItem(o, "state")->valuestring, "running");
	cJSON_Delete(o);
	assert_int_equal(req(base, "GET", "/api/v1/rollouts/2", RT, NULL, NULL), 404);
	assert_int_equal(req(base, "GET", "/api/v1/rollouts/x1", RT, NULL, NULL), 404);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts/1/pause", RT, NULL, NULL), 403);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts/1/explode", OT, NULL, NULL), 404);
	assert_int_equal(req(base, "GET", "/api/v1/rollouts/1/pause", OT, NULL, NULL), 405);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts/1/pause", OT, "{\"a\":1}", NULL), 400);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts/1/pause", OT, NULL, &o), 200);
	assert_string_equal(cJSON_GetObjectItem(o, "state")->valuestring, "paused");
	cJSON_Delete(o);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts/1/pause", OT, "{}", NULL), 409);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts/1/resume", OT, "{}", NULL), 200);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts/9/abort", OT, NULL, NULL), 404);
	assert_int_equal(req(base, "POST", "/api/v1/rollouts/1/abort", OT, NULL, NULL), 200);
	assert_int_equal(audit_rows(c, dir, "rollout.action", "%abort by operator%"), 1);
	ctl_http_stop(h);
	free(tmp);
	ctu_close(c, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_release),   cmocka_unit_test(test_bad_release_halts),
		cmocka_unit_test(test_operator_actions), cmocka_unit_test(test_restart),
		cmocka_unit_test(test_two_instances),
		cmocka_unit_test(test_bad_input),	 cmocka_unit_test(test_http_api),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
