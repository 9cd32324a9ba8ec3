/* Serving: one runner child process per model (the agent binary in runner
 * mode, runtime/runner.h) behind the local OpenAI-compatible API
 * (runtime/serve.h). A swap starts the new runner on the new slot, waits
 * until it answers, flips the route, lets requests in flight finish on the
 * old runner, then stops it (docs/serving.md).
 *
 * Threads: the agent loop calls everything here; libmicrohttpd threads only
 * call the router and status_json, which reads a cached copy under
 * status_lock (the journal is not thread-safe). */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "agent.h"
#include "report.h"
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/json.h>
#include <flotilla/log.h>
#include <flotilla/runner.h>
#include <flotilla/serve.h>
#include <flotilla/util.h>

#define SERVING_MAX_MODELS 16
#define RUNNER_READY_MS 60000
#define DRAIN_MS 30000
#define STOP_GRACE_MS 5000

struct served {
	char model[J_MODEL_MAX];
	char version[J_VERSION_MAX];
	char slot;
	struct rt_runner *runner;
	/* Runner counters when the current version started serving: a trial
	 * judges only what happened since. */
	uint32_t base_crashes, base_failed, base_requests;
	uint32_t base_lat[RT_RUNNER_LAT_BUCKETS];
	uint32_t seen_crashes; /* crashes already logged */
	enum rt_runner_state seen_state; /* CRASH_LOOP / LOAD_FAILED already reported */
};

/* The last two lines of the runner's stderr (why it did not load: the
 * backend's words, then the runner's) into BUF, joined with " | ". */
static void last_lines(struct rt_runner *r, char *buf, size_t size)
{
	char tail[1024];
	size_t n = rt_runner_stderr_tail(r, tail, sizeof(tail));
	while (n && tail[n - 1] == '\n')
		tail[--n] = '\0';
	char *l = tail + n;
	for (int lines = 0; l > tail; l--)
		if (l[-1] == '\n' && ++lines == 2)
			break;
	for (char *p = l; *p; p++)
		if (*p == '\n')
			*p = '|';
	fl_strlcpy(buf, l, size);
}

/* A runner that gave up (CRASH_LOOP) or could not load its model again
 * after a restart (LOAD_FAILED: e.g. the exec program no longer passes
 * serve.exec_allow): once per state, a log line and a journal event. */
static void report_given_up(struct agent *a, struct served *e, const struct rt_runner_status *st)
{
	if (st->state != RT_RUNNER_CRASH_LOOP && st->state != RT_RUNNER_LOAD_FAILED) {
		e->seen_state = 0;
		return;
	}
	if (st->state == e->seen_state)
		return;
	e->seen_state = st->state;
	char why[512];
	if (st->state == RT_RUNNER_CRASH_LOOP) {
		snprintf(why, sizeof(why),
			 "crash loop: %u crashes, the last of them within %.1f s, %u restarts "
			 "with backoff (last delay %d ms); not restarted",
			 st->n_crashes, st->crash_loop_ms / 1000.0,
			 st->n_starts ? st->n_starts - 1 : 0, st->backoff_ms);
		fl_err("serve %s: %s", e->model, why);
		agent_event(a, e->model, "serve.crash_loop", e->version, -FL_ECRASH, why);
	} else {
		char line[400];
		last_lines(e->runner, line, sizeof(line));
		snprintf(why, sizeof(why), "runner restarted but the model did not load: %s",
			 line[0] ? line : fl_strerror(st->last_error));
		fl_err("serve %s: %s", e->model, why);
		agent_event(a, e->model, "serve.failed", e->version,
			    st->last_error < 0 ? st->last_error : -FL_ESTATE, why);
	}
}

struct agent_serving {
	struct rt_serve_router *router;
	struct rt_serve *srv;
	struct served m[SERVING_MAX_MODELS];
	char socket_path[1200];
	pthread_mutex_t status_lock; /* status */
	char *status;                /* /v1/status body */
};

static struct served *served_find(struct agent_serving *s, const char *model, bool create)
{
	for (int i = 0; i < SERVING_MAX_MODELS; i++)
		if (s->m[i].model[0] && !strcmp(s->m[i].model, model))
			return &s->m[i];
	for (int i = 0; create && i < SERVING_MAX_MODELS; i++)
		if (!s->m[i].model[0]) {
			fl_strlcpy(s->m[i].model, model, sizeof(s->m[i].model));
			return &s->m[i];
		}
	return NULL;
}

/* Rebuild the /v1/status body (agent loop only). */
static void refresh_status(struct agent *a)
{
	struct agent_serving *s = a->serving;
	cJSON *root = cJSON_CreateObject(), *models = cJSON_AddObjectToObject(root, "models");
	cJSON_AddStringToObject(root, "device", a->cfg.device_id);
	for (int i = 0; i < SERVING_MAX_MODELS; i++) {
		struct served *e = &s->m[i];
		if (!e->model[0])
			continue;
		cJSON *o = cJSON_AddObjectToObject(models, e->model);
		char slot[2] = {e->slot, 0};
		cJSON_AddStringToObject(o, "version", e->version);
		cJSON_AddStringToObject(o, "slot", slot);
		struct install_rec ir;
		if (journal_install_last(a->journal, e->model, &ir) > 0)
			cJSON_AddStringToObject(o, "state", inst_state_name(ir.state));
		if (e->runner) {
			struct rt_runner_status st;
			rt_runner_get_status(e->runner, &st);
			cJSON_AddStringToObject(o, "runner", rt_runner_state_name(st.state));
			cJSON_AddNumberToObject(o, "pid", st.pid);
			cJSON_AddNumberToObject(o, "requests", st.n_requests);
			cJSON_AddNumberToObject(o, "failed", st.n_failed);
			cJSON_AddNumberToObject(o, "crashes", st.n_crashes);
			cJSON_AddNumberToObject(o, "rejected", st.n_rejected);
			cJSON_AddNumberToObject(o, "starts", st.n_starts);
			cJSON_AddNumberToObject(o, "backoff_ms", st.backoff_ms);
			if (st.state == RT_RUNNER_CRASH_LOOP || st.state == RT_RUNNER_LOAD_FAILED)
				cJSON_AddStringToObject(o, "error", fl_strerror(st.last_error < 0
										? st.last_error
										: -FL_ESTATE));
			if (st.n_crashes > e->seen_crashes) {
				/* say why, once per crash: the end of the runner's stderr */
				char tail[RT_RUNNER_CRASH_TAIL_BYTES];
				size_t n = rt_runner_crash_tail(e->runner, tail, sizeof(tail));
				while (n && tail[n - 1] == '\n')
					tail[--n] = '\0';
				const char *last = n ? tail + n : tail;
				for (int lines = 0; last > tail && lines < 3; last--)
					if (last[-1] == '\n' && ++lines == 3)
						break;
				for (char *p = (char *)last; *p; p++)
					if (*p == '\n')
						*p = '|';
				fl_warn("serve %s: runner crashed (%s %d; %s, %u crashes): %s", e->model,
					st.last_exit_signal ? "signal" : "exit status",
					st.last_exit_signal ? st.last_exit_signal : st.last_exit_status,
					rt_runner_state_name(st.state), st.n_crashes, last);
				e->seen_crashes = st.n_crashes;
			}
			report_given_up(a, e, &st);
		} else {
			cJSON_AddStringToObject(o, "runner", "none");
		}
	}
	char *text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!text)
		return;
	pthread_mutex_lock(&s->status_lock);
	free(s->status);
	s->status = text;
	pthread_mutex_unlock(&s->status_lock);
}

static int status_json(void *ud, char *buf, size_t size)
{
	struct agent_serving *s = ud;
	pthread_mutex_lock(&s->status_lock);
	int r = 0;
	if (fl_strlcpy(buf, s->status ? s->status : "{}", size) >= size)
		r = -FL_ETOOBIG;
	pthread_mutex_unlock(&s->status_lock);
	return r;
}

/* The router's ops with our userdata for status_json. */
static struct rt_serve_ops router_ops;
static void *router_ud;

static int ops_acquire(void *ud, const char *model, struct rt_runner **ret, char *ret_id)
{
	(void)ud;
	return router_ops.acquire(router_ud, model, ret, ret_id);
}
static void ops_release(void *ud, struct rt_runner *r)
{
	(void)ud;
	router_ops.release(router_ud, r);
}
static int ops_list(void *ud, char (*ids)[RT_SERVE_MODEL_ID_BYTES], int max)
{
	(void)ud;
	return router_ops.list_models(router_ud, ids, max);
}

int agent_runner_start(const struct ota_manifest *m, const char *dir, struct rt_runner **ret)
{
	const char *rel = NULL;
	int r = agent_model_file(m, &rel);
	if (r < 0)
		return r;
	_cleanup_free_ char *path = fl_path_join(dir, rel);
	if (!path)
		return -ENOMEM;
	/* The runner is this very program in runner mode. */
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return -errno;
	exe[n] = '\0';
	struct rt_runner_config rc = {.exe = exe, .backend = agent_backend_of(m), .model_path = path};
	rt_runner_limits_default(&rc.limits);
	int64_t v;
	const cJSON *lim = NULL, *exec = NULL;
	_cleanup_free_ char *exec_json = NULL;
	if (m->runtime && !strcmp(rc.backend, "exec")) {
		/* the external server's command line and options (backend_exec.c) */
		if (fl_json_get_obj(m->runtime, "exec", &exec) < 0 ||
		    !(exec_json = cJSON_PrintUnformatted(exec)))
			return -FL_ECONFIG;
		rc.backend_config = exec_json;
	}
	if (m->runtime) {
		if (fl_json_get_int(m->runtime, "threads", 1, 256, &v) == 0)
			rc.limits.n_threads = (int)v;
		if (fl_json_get_int(m->runtime, "context_length", 16, 1 << 20, &v) == 0)
			rc.limits.n_ctx = (int)v;
		fl_json_get_obj(m->runtime, "limits", &lim);
	}
	if (lim) {
		if (fl_json_get_int(lim, "memory_mb", 16, 1 << 24, &v) == 0)
			rc.limits.mem_bytes = (uint64_t)v << 20;
		if (fl_json_get_int(lim, "request_timeout_ms", 1, 3600000, &v) == 0)
			rc.limits.request_timeout_ms = (int)v;
		if (fl_json_get_int(lim, "max_queue", 1, 4096, &v) == 0)
			rc.limits.queue_max = (int)v;
	}
	struct rt_runner *runner = NULL;
	r = rt_runner_start(&rc, &runner);
	if (r < 0)
		return r;
	r = rt_runner_wait_ready(runner, RUNNER_READY_MS);
	if (r < 0) {
		char tail[512];
		rt_runner_stderr_tail(runner, tail, sizeof(tail));
		fl_err("runner for %s did not start: %s %s", path, fl_strerror(r), tail);
		rt_runner_stop(runner, STOP_GRACE_MS);
		return r;
	}
	*ret = runner;
	return 0;
}

static int start_runner(struct agent *a, const char *model, char slot,
			const struct ota_manifest *m, struct rt_runner **ret)
{
	struct ota_slots *slots = NULL;
	int r = ota_slots_open(a->models_dir, model, &slots);
	if (r < 0)
		return r;
	_cleanup_free_ char *dir = strdup(ota_slots_dir(slots, slot));
	ota_slots_free(slots);
	if (!dir)
		return -ENOMEM;
	return agent_runner_start(m, dir, ret);
}

struct start_ctx {
	struct agent *a;
};

static int start_model(void *ud, const struct model_rec *mr)
{
	struct agent *a = ((struct start_ctx *)ud)->a;
	struct ota_slots *slots = NULL;
	if (ota_slots_open(a->models_dir, mr->name, &slots) < 0)
		return 0;
	char cur = ota_slots_current(slots);
	ota_slots_free(slots);
	if (!cur)
		return 0;
	struct slot_rec sr;
	if (journal_slot_get(a->journal, mr->name, cur, &sr) < 0)
		return 0;
	struct ota_manifest *m = NULL;
	int r = sr.envelope ? agent_envelope_manifest(sr.envelope, sr.envelope_len, &m) : -FL_EMISSING;
	free(sr.envelope);
	struct rt_runner *runner = NULL;
	if (r == 0)
		r = agent_serving_prepare(a, mr->name, cur, m, &runner);
	if (r == 0) {
		agent_serving_commit(a, mr->name, runner);
		struct served *e = served_find(a->serving, mr->name, false);
		if (e)
			fl_strlcpy(e->version, sr.version, sizeof(e->version));
	} else {
		agent_event(a, mr->name, "serve.failed", sr.version, r, "model not served");
	}
	ota_manifest_free(m);
	return 0; /* one model that cannot be served does not stop the others */
}

static int parse_listen(const char *s, char *host, size_t host_len, uint16_t *port)
{
	const char *colon = strrchr(s, ':');
	int64_t p;
	if (!colon || colon == s || (size_t)(colon - s) >= host_len ||
	    fl_parse_i64(colon + 1, 0, 65535, &p) < 0)
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	*port = (uint16_t)p;
	return 0;
}

int agent_serving_start(struct agent *a)
{
	struct agent_serving *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->status_lock, NULL);
	int r = rt_serve_router_new(&s->router);
	if (r < 0) {
		free(s);
		return r;
	}
	a->serving = s;
	struct start_ctx ctx = {.a = a};
	journal_models(a->journal, start_model, &ctx);

	struct rt_serve_config sc = {0};
	char host[64];
	uint16_t port = 0;
	if (a->cfg.serve_listen[0]) {
		if (parse_listen(a->cfg.serve_listen, host, sizeof(host), &port) < 0) {
			fl_err("serve.listen '%s': expected ADDRESS:PORT", a->cfg.serve_listen);
			agent_serving_stop(a);
			return -FL_ECONFIG;
		}
		sc.tcp_addr = host;
		sc.tcp_port = port;
		sc.bearer_token = a->cfg.serve_token[0] ? a->cfg.serve_token : NULL;
	}
	if (strcmp(a->cfg.serve_socket, "off") != 0) {
		if (a->cfg.serve_socket[0])
			fl_strlcpy(s->socket_path, a->cfg.serve_socket, sizeof(s->socket_path));
		else
			snprintf(s->socket_path, sizeof(s->socket_path), "%s/api.sock", a->cfg.state_dir);
		sc.unix_path = s->socket_path;
	}
	if (!sc.tcp_addr && !sc.unix_path) {
		refresh_status(a);
		return 0; /* runners for trials and acceptance, no API */
	}
	rt_serve_router_bind(s->router, &sc);
	router_ops = sc.ops;
	router_ud = sc.userdata;
	sc.ops.acquire = ops_acquire;
	sc.ops.release = ops_release;
	sc.ops.list_models = ops_list;
	sc.ops.status_json = status_json;
	sc.ops.observe = agent_report_observe; /* telemetry */
	sc.userdata = s;
	refresh_status(a);
	r = rt_serve_start(&sc, &s->srv);
	if (r < 0) {
		fl_err("local API on %s%s%s: %s", sc.tcp_addr ? a->cfg.serve_listen : "",
		       sc.tcp_addr && sc.unix_path ? " and " : "", sc.unix_path ? sc.unix_path : "",
		       fl_strerror(r));
		agent_serving_stop(a);
		return r;
	}
	fl_info("local API on %s%s%s", sc.tcp_addr ? a->cfg.serve_listen : "",
		sc.tcp_addr && sc.unix_path ? " and " : "", sc.unix_path ? sc.unix_path : "");
	return 0;
}

void agent_serving_stop(struct agent *a)
{
	struct agent_serving *s = a->serving;
	if (!s)
		return;
	rt_serve_stop(s->srv); /* finishes requests in flight */
	for (int i = 0; i < SERVING_MAX_MODELS; i++)
		if (s->m[i].runner)
			rt_runner_stop(s->m[i].runner, STOP_GRACE_MS);
	rt_serve_router_free(s->router);
	pthread_mutex_destroy(&s->status_lock);
	free(s->status);
	free(s);
	a->serving = NULL;
}

int agent_serving_prepare(struct agent *a, const char *model, char slot,
			  const struct ota_manifest *m, struct rt_runner **ret_runner)
{
	*ret_runner = NULL;
	if (!a->serving)
		return 0;
	return start_runner(a, model, slot, m, ret_runner);
}

int64_t agent_serving_commit(struct agent *a, const char *model, struct rt_runner *runner)
{
	struct agent_serving *s = a->serving;
	if (!s)
		return 0;
	struct served *e = served_find(s, model, runner != NULL);
	if (!e)
		return 0;
	struct rt_runner *old = NULL;
	if (rt_serve_router_set(s->router, model, runner, &old) < 0) {
		rt_runner_stop(runner, STOP_GRACE_MS);
		return 0;
	}
	int64_t routed = fl_mono_ns();
	e->runner = runner;
	e->seen_state = 0;
	/* The slot and version now current. */
	struct ota_slots *slots = NULL;
	if (ota_slots_open(a->models_dir, model, &slots) == 0) {
		e->slot = ota_slots_current(slots);
		struct slot_rec sr;
		if (journal_slot_get(a->journal, model, e->slot, &sr) == 0) {
			fl_strlcpy(e->version, sr.version, sizeof(e->version));
			free(sr.envelope);
		}
		ota_slots_free(slots);
	}
	agent_report_runner(a, model, runner ? e->version : NULL, runner);
	agent_serving_trial_reset(a, model);
	if (old) {
		if (rt_serve_router_wait_idle(s->router, old, DRAIN_MS) < 0)
			fl_warn("serve %s: old runner still busy after %d ms; stopping it", model,
				DRAIN_MS);
		rt_runner_stop(old, STOP_GRACE_MS);
	}
	if (!runner)
		e->model[0] = '\0';
	refresh_status(a);
	return routed;
}

void agent_serving_trial_reset(struct agent *a, const char *model)
{
	struct served *e = a->serving ? served_find(a->serving, model, false) : NULL;
	if (!e || !e->runner)
		return;
	struct rt_runner_status st;
	rt_runner_get_status(e->runner, &st);
	e->base_crashes = st.n_crashes;
	e->base_failed = st.n_failed;
	e->base_requests = st.n_requests;
	e->seen_crashes = st.n_crashes;
	rt_runner_latency(e->runner, e->base_lat);
}

int agent_serving_trial_latency(struct agent *a, const char *model, double q, double *ret_ms,
				uint32_t *ret_n)
{
	struct served *e = a->serving ? served_find(a->serving, model, false) : NULL;
	if (!e || !e->runner)
		return -ENOENT;
	uint32_t h[RT_RUNNER_LAT_BUCKETS];
	rt_runner_latency(e->runner, h);
	uint32_t n = 0;
	for (int i = 0; i < RT_RUNNER_LAT_BUCKETS; i++) {
		h[i] -= e->base_lat[i];
		n += h[i];
	}
	*ret_ms = rt_latency_quantile_ms(h, q);
	*ret_n = n;
	return 0;
}

int agent_serving_trial_stats(struct agent *a, const char *model, uint32_t *ret_crashes,
			      uint32_t *ret_failed, uint32_t *ret_requests)
{
	struct served *e = a->serving ? served_find(a->serving, model, false) : NULL;
	if (!e || !e->runner)
		return -ENOENT;
	struct rt_runner_status st;
	rt_runner_get_status(e->runner, &st);
	*ret_crashes = st.n_crashes - e->base_crashes;
	*ret_failed = st.n_failed - e->base_failed;
	*ret_requests = st.n_requests - e->base_requests;
	return 0;
}

void agent_serving_tick(struct agent *a)
{
	if (a->serving)
		refresh_status(a);
}

void agent_serving_commit_abandon(struct agent *a, struct rt_runner *runner)
{
	(void)a;
	rt_runner_stop(runner, STOP_GRACE_MS);
}
