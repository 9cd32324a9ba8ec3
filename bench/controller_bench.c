/* Controller API and rollout engine at fleet size (bench/controller.sh).
 *
 *   controller_bench [DEVICES [SECONDS [CLIENTS]]]     (default 10000 5 4)
 *
 * Fills a fresh store with DEVICES devices through the registry's real state
 * path (labels, hardware class, one model), one model record per device of
 * the running version through the real ingest path, starts the HTTP API on
 * 127.0.0.1 and runs CLIENTS keep-alive libcurl clients for SECONDS per
 * endpoint: GET /healthz (reference: the HTTP stack alone), the full device
 * list, a filtered page of 100 and the rollout status. Prints requests/s,
 * p50 and p99 per endpoint and the ratio to the reference.
 *
 * Then a staged rollout (waves 1,10,50,100 percent, soak 0, health gates)
 * runs to completion: after each tick every device that was sent the
 * version reports it committed and a healthy model record. Prints the
 * duration of every tick that started a wave (the rollout decision: scan,
 * classify, gates, plan, mark and audit the sends) and of the steady ticks. */
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/util.h>

#include "ctl.h"
#include "dashboard.h"
#include "http.h"
#include "registry.h"
#include "rollout.h"

#define MODEL "defect-llm"
#define OLDV "1.3.0"
#define NEWV "1.4.0"
#define TOKEN "bench-reader-token-0123456789"

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t cpu_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *what, int r)
{
	fprintf(stderr, "controller_bench: %s: %s\n", what, fl_strerror(r));
	exit(1);
}

static void state(struct ctl *c, size_t i, const char *cur, const char *istate)
{
	char id[32], buf[1024], inst[160] = "";
	snprintf(id, sizeof(id), "gw-%05zu", i);
	if (istate)
		snprintf(inst, sizeof(inst),
			 ",\"install\":{\"version\":\"" NEWV "\",\"state\":\"%s\",\"error\":\"\"}",
			 istate);
	snprintf(buf, sizeof(buf),
		 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1.0\","
		 "\"hw\":{\"arch\":\"%s\",\"ram_mb\":%d,\"accelerators\":[],\"backends\":[\"gguf\"]},"
		 "\"labels\":{\"site\":\"plant-%zu\",\"line\":\"l%zu\"},"
		 "\"models\":{\"" MODEL "\":{\"current\":\"a\",\"slots\":{\"a\":{\"status\":"
		 "\"ready\",\"version\":\"%s\",\"sequence\":1}}%s}}}",
		 id, i % 3 ? "aarch64" : "x86_64", i % 2 ? 2048 : 8192, i % 20, i % 7, cur, inst);
	int r = ctl_registry_on_state(c, id, buf, strlen(buf));
	if (r < 0)
		die("state", r);
}

/* State messages of every device, built before timing (the agent's
 * retained state as it arrives when the fleet reconnects). */
static char **states_of(size_t ndev)
{
	char **v = calloc(ndev, sizeof(*v));
	if (!v)
		die("calloc", -ENOMEM);
	for (size_t i = 0; i < ndev; i++) {
		v[i] = fl_asprintf(
			"{\"v\":1,\"device\":\"gw-%05zu\",\"online\":true,\"agent\":\"0.1.0\","
			"\"hw\":{\"arch\":\"%s\",\"ram_mb\":%d,\"accelerators\":[],\"backends\":[\"gguf\"]},"
			"\"labels\":{\"site\":\"plant-%zu\",\"line\":\"l%zu\"},"
			"\"models\":{\"" MODEL "\":{\"current\":\"a\",\"slots\":{\"a\":{\"status\":"
			"\"ready\",\"version\":\"" OLDV "\",\"sequence\":1}}}}}",
			i, i % 3 ? "aarch64" : "x86_64", i % 2 ? 2048 : 8192, i % 20, i % 7);
		if (!v[i])
			die("state", -ENOMEM);
	}
	return v;
}

/* States/s of the whole fleet reconnecting: one transaction per message
 * (ctl_registry_on_state) against the batched path the MQTT loop uses
 * (ctl_state_batch_add: CTL_STATE_BATCH_MAX per transaction). */
static void state_ingest(struct ctl *c, size_t ndev)
{
	char **v = states_of(ndev);
	char id[32];
	int64_t a = now_us(), ac = cpu_us();
	for (size_t i = 0; i < ndev; i++) {
		snprintf(id, sizeof(id), "gw-%05zu", i);
		int r = ctl_registry_on_state(c, id, v[i], strlen(v[i]));
		if (r < 0)
			die("state", r);
	}
	double one = (double)ndev / ((double)(now_us() - a) / 1e6);
	double one_cpu = (double)(cpu_us() - ac) / 1000;
	struct ctl_state_batch *b = NULL;
	int r = ctl_state_batch_new(c, &b);
	if (r < 0)
		die("batch", r);
	a = now_us();
	ac = cpu_us();
	for (size_t i = 0; i < ndev; i++) {
		snprintf(id, sizeof(id), "gw-%05zu", i);
		if ((r = ctl_state_batch_add(b, id, v[i], strlen(v[i]))) < 0)
			die("batch add", r);
	}
	if ((r = ctl_state_batch_flush(b)) < 0)
		die("batch flush", r);
	double batched = (double)ndev / ((double)(now_us() - a) / 1e6);
	double batched_cpu = (double)(cpu_us() - ac) / 1000;
	ctl_state_batch_free(b);
	printf("state ingest: %zu states, one transaction each: %.0f states/s (cpu %.0f ms); "
	       "batched (%d per transaction): %.0f states/s (cpu %.0f ms); %.1f x\n",
	       ndev, one, one_cpu, CTL_STATE_BATCH_MAX, batched, batched_cpu, batched / one);
	for (size_t i = 0; i < ndev; i++)
		free(v[i]);
	free(v);
}

static uint64_t seqs[200000];

/* The batch (one model record of VERSION) of device I; caller frees. */
static char *model_batch(size_t i, const char *version, double lat_ms)
{
	struct tele_model_metrics m = {.period_s = 60, .requests = 200};
	snprintf(m.model, sizeof(m.model), "%s", MODEL);
	snprintf(m.version, sizeof(m.version), "%s", version);
	m.errors[TELE_ERR_TIMEOUT] = 1;
	tele_hist_reset(&m.latency_us);
	for (int k = 0; k < 200; k++)
		tele_hist_add(&m.latency_us, lat_ms * 1000 * (0.8 + 0.4 * k / 200.0));
	cJSON *rec = NULL;
	if (tele_record_model(&m, 1764000000, &rec) < 0)
		die("record", -ENOMEM);
	uint64_t seq = ++seqs[i];
	cJSON_AddNumberToObject(rec, "seq", (double)seq);
	char *r = cJSON_PrintUnformatted(rec);
	cJSON_Delete(rec);
	char id[32];
	snprintf(id, sizeof(id), "gw-%05zu", i);
	char *b = fl_asprintf("{\"v\":1,\"device\":\"%s\",\"stream\":\"00000000000000bb\","
			      "\"first\":%llu,\"last\":%llu,\"n\":1,\"records\":[%s]}",
			      id, (unsigned long long)seq, (unsigned long long)seq, r);
	free(r);
	if (!b)
		die("batch", -ENOMEM);
	return b;
}

static void ingest_one(struct ctl *c, size_t i, char *b)
{
	char id[32];
	snprintf(id, sizeof(id), "gw-%05zu", i);
	int rc = ctl_ingest_batch(c, id, b, strlen(b));
	if (rc < 0)
		die("ingest", rc);
	free(b);
}

static void model_record(struct ctl *c, size_t i, const char *version, double lat_ms)
{
	ingest_one(c, i, model_batch(i, version, lat_ms));
}

/* ---------------------------------------------------------------- HTTP load */

struct load {
	const char *url;
	int64_t until_us;
	int64_t *lat; /* microseconds */
	size_t n, cap;
	size_t bytes;
	int errors;
};

static size_t sink(char *d, size_t sz, size_t n, void *ud)
{
	(void)d;
	*(size_t *)ud += sz * n;
	return sz * n;
}

static void *client(void *arg)
{
	struct load *l = arg;
	CURL *cu = curl_easy_init();
	struct curl_slist *hd = curl_slist_append(NULL, "Authorization: Bearer " TOKEN);
	curl_easy_setopt(cu, CURLOPT_URL, l->url);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
	curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(cu, CURLOPT_WRITEDATA, &l->bytes);
	while (now_us() < l->until_us) {
		int64_t t0 = now_us();
		long st = 0;
		if (curl_easy_perform(cu) != CURLE_OK ||
		    (curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &st), st != 200)) {
			l->errors++;
			continue;
		}
		if (l->n == l->cap) {
			l->cap = l->cap ? l->cap * 2 : 1024;
			l->lat = realloc(l->lat, l->cap * sizeof(*l->lat));
			if (!l->lat)
				die("realloc", -ENOMEM);
		}
		l->lat[l->n++] = now_us() - t0;
	}
	curl_slist_free_all(hd);
	curl_easy_cleanup(cu);
	return NULL;
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

/* Requests/s of PATH with NCLI clients for SECONDS; prints a line. */
static double run_load(const char *base, const char *name, const char *path, int ncli,
		       double seconds, double ref_rps)
{
	char url[512];
	snprintf(url, sizeof(url), "%s%s", base, path);
	struct load *l = calloc((size_t)ncli, sizeof(*l));
	pthread_t *th = calloc((size_t)ncli, sizeof(*th));
	int64_t t0 = now_us(), until = t0 + (int64_t)(seconds * 1e6), c0 = cpu_us();
	for (int i = 0; i < ncli; i++) {
		l[i].url = url;
		l[i].until_us = until;
		pthread_create(&th[i], NULL, client, &l[i]);
	}
	size_t n = 0, bytes = 0;
	int errors = 0;
	for (int i = 0; i < ncli; i++) {
		pthread_join(th[i], NULL);
		n += l[i].n;
		bytes += l[i].bytes;
		errors += l[i].errors;
	}
	double el = (double)(now_us() - t0) / 1e6;
	double cpu_ms = (double)(cpu_us() - c0) / 1000;
	int64_t *all = calloc(n ? n : 1, sizeof(*all));
	size_t k = 0;
	for (int i = 0; i < ncli; i++) {
		memcpy(all + k, l[i].lat, l[i].n * sizeof(*all));
		k += l[i].n;
		free(l[i].lat);
	}
	qsort(all, n, sizeof(*all), cmp64);
	double rps = (double)n / el;
	double p50 = n ? (double)all[n / 2] / 1000 : NAN;
	double p99 = n ? (double)all[(size_t)((double)(n - 1) * 0.99)] / 1000 : NAN;
	printf("api %-17s %8.1f requests/s  p50 %8.2f ms  p99 %8.2f ms  %7.1f KiB/response  "
	       "%d errors",
	       name, rps, p50, p99, n ? (double)bytes / (double)n / 1024 : 0, errors);
	/* CPU of this process (server and clients) per request: steadier than
	 * the wall clock on a shared machine */
	printf("  cpu %.2f ms/request", n ? cpu_ms / (double)n : 0);
	if (ref_rps > 0)
		printf("  (%.4f x healthz)", rps / ref_rps);
	printf("\n");
	free(all);
	free(l);
	free(th);
	return rps;
}

/* ---------------------------------------------------------------- rollout */

struct sent {
	size_t *idx;
	size_t n, cap;
};

static int capture(void *ud, const char *device, const char *json, size_t len)
{
	(void)json;
	(void)len;
	struct sent *s = ud;
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 1024;
		s->idx = realloc(s->idx, s->cap * sizeof(*s->idx));
		if (!s->idx)
			return -ENOMEM;
	}
	s->idx[s->n++] = strtoul(device + 3, NULL, 10);
	return 0;
}

int main(int argc, char **argv)
{
	size_t ndev = argc > 1 ? strtoul(argv[1], NULL, 10) : 10000;
	double seconds = argc > 2 ? strtod(argv[2], NULL) : 5;
	int ncli = argc > 3 ? atoi(argv[3]) : 4;
	if (!ndev || ndev > 200000 || !(seconds > 0) || ncli < 1 || ncli > 32) {
		fprintf(stderr, "usage: controller_bench [DEVICES [SECONDS [CLIENTS]]]\n");
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	char *dir = fl_asprintf("%s/flotilla-ctl-bench.XXXXXX",
				getenv("TMPDIR") ? getenv("TMPDIR") : "/var/tmp");
	if (!dir || !mkdtemp(dir))
		die("mkdtemp", -errno);
	/* BENCH_STORE_DSN: an empty PostgreSQL database instead of SQLite */
	struct ctl_opts o = {.data_dir = dir, .store_dsn = getenv("BENCH_STORE_DSN")};
	struct ctl *c = NULL;
	int r = ctl_open(&o, &c);
	if (r < 0)
		die("ctl_open", r);
	int64_t t0 = now_us();
	for (size_t i = 0; i < ndev; i++)
		state(c, i, OLDV, NULL);
	char **batches = calloc(ndev, sizeof(*batches));
	if (!batches)
		die("calloc", -ENOMEM);
	for (size_t i = 0; i < ndev; i++)
		batches[i] = model_batch(i, OLDV, 40);
	int64_t ti = now_us();
	for (size_t i = 0; i < ndev; i++)
		ingest_one(c, i, batches[i]);
	free(batches);
	if ((r = ctl_ingest_flush(c)) < 0)
		die("flush", r);
	printf("ingest: %zu model records (one per batch, health totals included) at %.0f "
	       "records/s\n",
	       ndev, (double)ndev / ((double)(now_us() - ti) / 1e6));
	printf("setup: %zu devices registered and one model record each in %.1f s\n", ndev,
	       (double)(now_us() - t0) / 1e6);
	state_ingest(c, ndev);
	struct ctl_store *s = ctl_get_store(c);
	struct ctl_bundle_rec b = {.model = MODEL, .version = NEWV, .sequence = 2,
				   .envelope_id = "00", .envelope = "{\"bench\":\"envelope\"}",
				   .files_json = "[]", .pushed_at_s = 1};
	if ((r = s->ops->bundle_put(s, &b)) < 0)
		die("bundle", r);
	const char *spec = "{\"model\":\"" MODEL "\",\"version\":\"" NEWV "\","
			   "\"waves\":[1,10,50,100],\"soak_s\":0,\"max_concurrent\":200000,"
			   "\"min_sample\":5,\"max_failure_rate\":0.1,"
			   "\"gates\":{\"p95_latency_max_ratio\":1.5,\"error_rate_max_delta\":0.02,"
			   "\"crashes_max\":0,\"min_requests\":100}}";
	cJSON *ro = NULL;
	if ((r = ctl_rollout_create(c, spec, strlen(spec), "bench", 1000, &ro)) < 0)
		die("rollout", r);
	cJSON_Delete(ro);

	/* The device list in-process: store query + JSON tree, then text. */
	{
		struct ctl_device_filter all = {.online = -1};
		cJSON *dl = NULL;
		int64_t a = now_us(), a_cpu = cpu_us();
		if ((r = ctl_devices_list(c, &all, &dl)) < 0)
			die("devices", r);
		int64_t m = now_us();
		char *txt = cJSON_PrintUnformatted(dl);
		int64_t e = now_us();
		printf("devices list in-process, cJSON tree (the old path): query + tree %.1f ms, "
		       "print %.1f ms (cpu %.1f ms, %zu KiB)\n",
		       (double)(m - a) / 1000, (double)(e - m) / 1000,
		       (double)(cpu_us() - a_cpu) / 1000, strlen(txt) / 1024);
		free(txt);
		cJSON_Delete(dl);
		/* The API's path: one pass from the query to the response text. */
		char *page = NULL;
		size_t plen = 0;
		for (int k = 0; k < 3; k++) {
			a = now_us();
			int64_t ac = cpu_us();
			if ((r = ctl_devices_page(c, &all, true, &page, &plen)) < 0)
				die("devices page", r);
			printf("devices list in-process, text in one pass (all=1): %.1f ms "
			       "(cpu %.1f ms, %zu KiB)\n",
			       (double)(now_us() - a) / 1000, (double)(cpu_us() - ac) / 1000,
			       plen / 1024);
			free(page);
		}
	}

	/* The dashboard's fleet summary (grouped store queries). */
	for (int k = 0; k < 2; k++) {
		cJSON *f = NULL;
		int64_t a = now_us(), ac = cpu_us();
		if ((r = ctl_fleet_summary(c, &f)) < 0)
			die("fleet summary", r);
		printf("fleet summary in-process: %.1f ms (cpu %.1f ms)\n",
		       (double)(now_us() - a) / 1000, (double)(cpu_us() - ac) / 1000);
		cJSON_Delete(f);
	}

	/* HTTP */
	char *tmp = fl_path_join(dir, "tmp");
	fl_mkdir_p(tmp, 0700);
	struct ctl_token tok = {.name = "bench", .secret = TOKEN, .role = CTL_ROLE_READ};
	struct ctl_http_opts ho = {.tokens = &tok, .n_tokens = 1, .tmp_dir = tmp};
	struct ctl_http *h = NULL;
	if ((r = ctl_http_start(c, &ho, &h)) < 0)
		die("http", r);
	char base[64];
	snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)ctl_http_port(h));
	printf("api: %d keep-alive clients, %.0f s per endpoint, %zu devices in the store\n", ncli,
	       seconds, ndev);
	double ref = run_load(base, "healthz", "/healthz", ncli, seconds, 0);
	run_load(base, "devices(all)", "/api/v1/devices?all=1", ncli, seconds, ref);
	run_load(base, "devices(page)", "/api/v1/devices", ncli, seconds, ref);
	{
		/* a page from the middle of the list (keyset cursor) */
		char mid[96];
		snprintf(mid, sizeof(mid), "/api/v1/devices?after=gw-%05zu", ndev / 2);
		run_load(base, "devices(page@mid)", mid, ncli, seconds, ref);
	}
	run_load(base, "devices(100)", "/api/v1/devices?label=site%3Dplant-3&limit=100", ncli,
		 seconds, ref);
	run_load(base, "rollout-status", "/api/v1/rollouts/1", ncli, seconds, ref);
	ctl_http_stop(h);

	/* Rollout decisions, wave by wave. */
	struct sent sent = {0};
	int64_t now = 1001;
	for (int tick = 0; tick < 64; tick++) {
		size_t before = sent.n;
		int64_t a = now_us(), ac = cpu_us();
		r = ctl_rollout_tick(c, now++, capture, &sent);
		double ms = (double)(now_us() - a) / 1000, cpu = (double)(cpu_us() - ac) / 1000;
		if (r < 0)
			die("tick", r);
		cJSON *st = NULL;
		ctl_rollout_get(c, 1, &st);
		int wave = (int)cJSON_GetObjectItem(st, "wave")->valuedouble;
		const char *state_s = cJSON_GetObjectItem(st, "state")->valuestring;
		if (sent.n > before) {
			printf("rollout wave %d: decision tick %.1f ms (cpu %.1f ms; %zu deploys sent, "
			       "%zu in all)\n",
			       wave + 1, ms, cpu, sent.n - before, sent.n);
		} else {
			printf("rollout tick completing the rollout: %.1f ms (cpu %.1f ms)\n", ms, cpu);
		}
		bool done = strcmp(state_s, "running") != 0;
		if (done) {
			printf("rollout %s after %d ticks: %s\n", state_s, tick + 1,
			       cJSON_GetObjectItem(st, "reason")->valuestring);
		}
		cJSON_Delete(st);
		if (done)
			break;
		if (sent.n > before) {
			/* Two ticks while the wave installs: gates due (5 s later), then
			 * not due (1 s later). */
			for (int k = 0; k < 2; k++) {
				now += k == 0 ? 5 : 1;
				a = now_us();
				ac = cpu_us();
				if ((r = ctl_rollout_tick(c, now, capture, &sent)) < 0)
					die("tick", r);
				printf("rollout wave %d: tick while installing, gates %s: %.1f ms "
				       "(cpu %.1f ms)\n",
				       wave + 1, k == 0 ? "evaluated" : "not due",
				       (double)(now_us() - a) / 1000, (double)(cpu_us() - ac) / 1000);
			}
			now++;
		}
		/* The devices sent this tick take it and report healthy figures. */
		for (size_t k = before; k < sent.n; k++) {
			state(c, sent.idx[k], NEWV, "COMMITTED");
			model_record(c, sent.idx[k], NEWV, 41);
		}
		ctl_ingest_flush(c);
	}
	free(sent.idx);
	ctl_free(c);
	fl_rm_rf(dir);
	free(dir);
	free(tmp);
	curl_global_cleanup();
	return 0;
}
