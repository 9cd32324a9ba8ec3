/* The agent's telemetry glue (report.h, docs/telemetry.md "Agent"). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "agent.h"
#include "report.h"
#include <flotilla/cleanup.h>
#include <flotilla/config.h>
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/json.h>
#include <flotilla/log.h>
#include <flotilla/manifest.h>
#include <flotilla/mqtt.h>
#include <flotilla/runner.h>
#include <flotilla/serve.h>
#include <flotilla/tele_collect.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/tele_outbox.h>
#include <flotilla/util.h>

#define REP_MAX_ENTRIES 32       /* model versions tracked at once */
#define REP_BATCH_BYTES (256 * 1024)
#define REP_RETRY_MS 2000        /* after a refused publish */
#define REP_DISK_EVERY_MS 10000
#define REP_CONTENT_MAX 4096
#define REP_LOG_LINES 20
#define REP_ACK_MAX_BYTES (64 * 1024)
/* Sent records the controller has not confirmed are sent again after this
 * long (doubling while nothing is confirmed, up to the cap). */
#define REP_CONFIRM_MS 30000
#define REP_CONFIRM_MAX_MS 600000

/* One model version: what it served this period. */
struct rep_entry {
	bool used;
	bool current;              /* RUNNER is the model's live runner */
	struct rt_runner *runner;  /* matched in observe; dereferenced only when current */
	bool active;               /* something to report this period */
	struct tele_model_metrics m;
	uint32_t crashes_seen;     /* the runner's n_crashes at the last look */
	uint32_t crashes_pending;  /* seen, reported at the next look (the failing
				    * request is recorded by then) */
	/* the last request that ended the runner (crash/timeout): never its
	 * content unless telemetry.include_content */
	bool crash_req;
	bool content_ok;           /* device config and the version's manifest opt in */
	uint64_t crash_req_bytes;
	cJSON *crash_params;
	char *crash_content;
	bool baseline_loaded, has_baseline;
	struct tele_quality *baseline;
};

struct agent_report {
	struct agent *a;
	struct tele_outbox *ob;
	pthread_mutex_t lock; /* entries: observe() runs on the API's threads */
	struct rep_entry e[REP_MAX_ENTRIES];
	uint64_t unattributed; /* requests of runners we were not told about */
	struct tele_cpu_sampler cpu;
	int64_t period_start_ms, next_period_ms;
	int64_t last_wall_s, last_mono_ms;
	int64_t next_disk_ms;
	bool disk_low;
	/* publishing: one batch in flight per stream */
	char topic[2][160];
	struct tele_batch *batch[2];
	uint64_t token[2];
	int64_t retry_ms[2];
	/* The outbox may hold records of this stream that are not taken yet:
	 * set when records are appended, confirmed (ack), a publish completes,
	 * or everything is offered again; cleared when a take finds nothing.
	 * The pump queries SQLite only for a dirty stream (it used to on every
	 * loop turn: ~7 % of the agent's CPU during a transfer). Atomic: set
	 * from wherever records are appended. */
	atomic_bool dirty[2];
	uint64_t takes; /* outbox queries made by the pump */
	struct fl_mqtt_stats link;
	/* broker-acknowledged, not yet confirmed by the controller */
	uint64_t *unconf;    /* in the order the broker acknowledged them */
	int64_t *unconf_ms;  /* when */
	size_t n_unconf, cap_unconf;
	int64_t confirm_ms;
	uint64_t acks_refused, resends;
	/* figures for the next trial_failed event */
	char trial_model[TELE_NAME_MAX + 1];
	char trial_reason[32];
	cJSON *trial_details;
};

/* The API's observe callback has no agent pointer: one report per process. */
static struct agent_report *g_report;

/* ---------------------------------------------------------------- config */

int agent_report_config(const struct fl_config *c, struct agent_config *cfg, const char *path,
			char *err, size_t err_len)
{
	int64_t v;
	int r;
	if ((r = fl_config_get_int(c, "telemetry.interval", 1, 86400, REPORT_DEFAULT_INTERVAL_S,
				   &v)) < 0) {
		snprintf(err, err_len, "%s: telemetry.interval must be 1..86400 seconds", path);
		return r;
	}
	cfg->tele_interval_s = (int)v;
	if ((r = fl_config_get_int(c, "telemetry.outbox_max_bytes", 4096, (int64_t)1 << 40, 0,
				   &v)) < 0) {
		snprintf(err, err_len, "%s: telemetry.outbox_max_bytes must be a size >= 4k", path);
		return r;
	}
	cfg->tele_outbox_bytes = (uint64_t)v;
	if ((r = fl_config_get_int(c, "telemetry.outbox_max_records", 2, 100000000, 0, &v)) < 0) {
		snprintf(err, err_len, "%s: telemetry.outbox_max_records must be 2..100000000", path);
		return r;
	}
	cfg->tele_outbox_records = (uint64_t)v;
	if ((r = fl_config_get_bool(c, "telemetry.include_content", false,
				    &cfg->tele_include_content)) < 0) {
		snprintf(err, err_len, "%s: telemetry.include_content must be a boolean", path);
		return r;
	}
	if ((r = fl_config_get_int(c, "telemetry.disk_low", 0, INT64_MAX, REPORT_DEFAULT_DISK_LOW,
				   &v)) < 0) {
		snprintf(err, err_len, "%s: telemetry.disk_low must be a size (0 = off)", path);
		return r;
	}
	cfg->tele_disk_low_bytes = (uint64_t)v;
	if ((r = fl_config_get_int(c, "telemetry.clock_jump", 1, 86400 * 365,
				   REPORT_DEFAULT_CLOCK_JUMP_S, &v)) < 0) {
		snprintf(err, err_len, "%s: telemetry.clock_jump must be 1.. seconds", path);
		return r;
	}
	cfg->tele_clock_jump_s = (int)v;
	if ((r = fl_config_get_int(c, "telemetry.resend_after", 1, 3600, REP_CONFIRM_MS / 1000,
				   &v)) < 0) {
		snprintf(err, err_len, "%s: telemetry.resend_after must be 1..3600 seconds", path);
		return r;
	}
	cfg->tele_resend_s = (int)v;
	return 0;
}

/* ---------------------------------------------------------------- events */

static const char *err_code(int err)
{
	switch (err) {
	case -FL_EBADSIG: return "bad_signature";
	case -FL_ENOSIG: return "unsigned";
	case -FL_EKEYUNKNOWN: return "unknown_key";
	case -FL_EKEYREVOKED: return "key_revoked";
	case -FL_EREPLAY: return "replay";
	case -FL_EEXPIRED:
	case -FL_EKEYEXPIRED:
	case -FL_EKEYRINGEXPIRED: return "expired";
	case -FL_ENOTDELEGATED: return "not_delegated";
	case -FL_EINCOMPAT: return "incompatible";
	case -FL_EACCEPT: return "acceptance";
	case -FL_ENOSPACE:
	case -ENOSPC: /* a write that found the disk full (chaos_disk_full.sh) */
	case -EDQUOT: return "no_space";
	case -FL_ESTATE:
	case -FL_EBUSY: return "busy";
	case -FL_EHASH: return "hash";
	case -FL_ESCHEMA: return "schema";
	case 0: return NULL;
	default: return "error";
	}
}

/* Why a trial failed or a version was rolled back, from the engine's text. */
static const char *text_code(const char *text)
{
	if (!text)
		return NULL;
	if (!strncmp(text, "crash loop", 10))
		return "crash_loop";
	if (!strncmp(text, "error rate", 10))
		return "error_rate";
	if (!strncmp(text, "latency", 7))
		return "latency";
	if (strstr(text, "requested"))
		return "requested";
	return NULL;
}

static void mark_dirty(struct agent_report *rp)
{
	/* A push may also add a drop report to the other stream. */
	atomic_store(&rp->dirty[TELE_STREAM_EVENTS], true);
	atomic_store(&rp->dirty[TELE_STREAM_METRICS], true);
}

static int push_event(struct agent_report *rp, const struct tele_event *ev)
{
	cJSON *body = NULL;
	int r = tele_record_event(ev, fl_now_s(), &body);
	if (r == 0)
		r = tele_outbox_push_event(rp->ob, body, NULL);
	cJSON_Delete(body);
	mark_dirty(rp); /* also on failure: a take costs little, a lost wakeup much */
	if (r < 0)
		fl_warn("telemetry: %s event not queued: %s", tele_event_kind_name(ev->kind),
			fl_strerror(r));
	return r;
}

/* A latency trial failure: the engine's text ("latency p95 812.3 ms over 5
 * requests, limit 1 ms") gives the figures; the reason follows the text, as
 * the judge's counters (agent_report_trial) would say "error_rate". */
static void trial_latency(const char *text, const char **code, cJSON **details)
{
	double p95;
	unsigned n, limit;
	if (!text || sscanf(text, "latency p95 %lf ms over %u requests, limit %u ms", &p95, &n,
			    &limit) != 3)
		return;
	*code = "latency";
	if (!*details && !(*details = cJSON_CreateObject()))
		return;
	cJSON_AddNumberToObject(*details, "p95_ms", p95);
	cJSON_AddNumberToObject(*details, "latency_requests", n);
	cJSON_AddNumberToObject(*details, "p95_limit_ms", limit);
}

static void on_event(void *ud, const char *model, const char *kind, const char *version, int err,
		     const char *reason)
{
	struct agent_report *rp = ud;
	static const struct {
		const char *name;
		enum tele_event_kind kind;
	} map[] = {
		{"install.started", TELE_EV_INSTALL_STARTED},
		{"install.staged", TELE_EV_INSTALL_STAGED},
		{"install.rejected", TELE_EV_INSTALL_REJECTED},
		{"install.switched", TELE_EV_SWITCHED},
		{"install.trial_failed", TELE_EV_TRIAL_FAILED},
		{"install.committed", TELE_EV_COMMITTED},
		{"install.rolled_back", TELE_EV_ROLLED_BACK},
	};
	size_t i = 0;
	while (i < FL_ARRAY_SIZE(map) && strcmp(map[i].name, kind))
		i++;
	if (i == FL_ARRAY_SIZE(map))
		return; /* journal-only events (check.*, serve.*, keyring.*) */
	enum tele_event_kind k = map[i].kind;
	const char *code = NULL;
	cJSON *details = NULL;
	bool valid_model = model && fl_name_valid(model, TELE_NAME_MAX);
	if (k == TELE_EV_INSTALL_REJECTED) {
		code = err_code(err);
		if (!code)
			code = "error";
	} else if (k == TELE_EV_TRIAL_FAILED) {
		if (rp->trial_details && valid_model && !strcmp(rp->trial_model, model)) {
			code = rp->trial_reason;
			details = rp->trial_details;
		} else {
			code = text_code(reason);
			int boots;
			if (reason && sscanf(reason, "crash loop: %d agent starts", &boots) == 1 &&
			    (details = cJSON_CreateObject()))
				cJSON_AddNumberToObject(details, "agent_starts", boots);
		}
		trial_latency(reason, &code, &details);
		if (!code)
			code = "trial";
	} else if (k == TELE_EV_ROLLED_BACK) {
		code = text_code(reason);
		if (!code)
			code = "revert";
	} else {
		code = err ? err_code(err) : "ok";
	}
	if (err && !details && (details = cJSON_CreateObject())) {
		cJSON_AddNumberToObject(details, "code", err);
		cJSON_AddStringToObject(details, "error", fl_strerror(err));
	}
	char text[TELE_TEXT_MAX];
	snprintf(text, sizeof(text), "%s%s%s", reason ? reason : "", err && reason ? ": " : "",
		 err ? fl_strerror(err) : "");
	struct tele_event ev = {
		.kind = k,
		.model = valid_model ? model : NULL,
		.version = version && fl_name_valid(version, TELE_NAME_MAX) ? version : NULL,
		.reason = code,
		.text = text[0] ? text : NULL,
		.details = details,
	};
	push_event(rp, &ev);
	if (details == rp->trial_details) {
		rp->trial_details = NULL;
		rp->trial_model[0] = 0;
	}
	cJSON_Delete(details);
}

void agent_report_trial(struct agent *a, const char *model, uint32_t crashes,
			uint32_t crash_limit, uint32_t failed, uint32_t requests,
			double max_error_rate)
{
	struct agent_report *rp = a->report;
	if (!rp || !model)
		return;
	cJSON_Delete(rp->trial_details);
	rp->trial_details = cJSON_CreateObject();
	if (!rp->trial_details)
		return;
	fl_strlcpy(rp->trial_model, model, sizeof(rp->trial_model));
	fl_strlcpy(rp->trial_reason, crashes >= crash_limit ? "crash_loop" : "error_rate",
		   sizeof(rp->trial_reason));
	cJSON *d = rp->trial_details;
	cJSON_AddNumberToObject(d, "crashes", crashes);
	cJSON_AddNumberToObject(d, "crash_limit", crash_limit);
	cJSON_AddNumberToObject(d, "requests", requests);
	cJSON_AddNumberToObject(d, "failed", failed);
	cJSON_AddNumberToObject(d, "error_rate", requests ? (double)failed / requests : 0);
	cJSON_AddNumberToObject(d, "error_rate_limit", max_error_rate);
}

/* --------------------------------------------------------------- entries */

static void entry_clear_crash(struct rep_entry *e)
{
	cJSON_Delete(e->crash_params);
	free(e->crash_content);
	e->crash_params = NULL;
	e->crash_content = NULL;
	e->crash_req = false;
}

static void entry_free(struct rep_entry *e)
{
	entry_clear_crash(e);
	free(e->baseline);
	memset(e, 0, sizeof(*e));
}

static void entry_reset_period(struct rep_entry *e)
{
	char model[sizeof(e->m.model)], version[sizeof(e->m.version)];
	memcpy(model, e->m.model, sizeof(model));
	memcpy(version, e->m.version, sizeof(version));
	memset(&e->m, 0, sizeof(e->m));
	memcpy(e->m.model, model, sizeof(model));
	memcpy(e->m.version, version, sizeof(version));
	tele_hist_reset(&e->m.latency_us);
	tele_quality_reset(&e->m.quality);
	e->active = false;
}

/* Entry of MODEL at VERSION, created when missing (lock held). */
static struct rep_entry *entry_get(struct agent_report *rp, const char *model, const char *version)
{
	struct rep_entry *free_e = NULL;
	for (size_t i = 0; i < REP_MAX_ENTRIES; i++) {
		struct rep_entry *e = &rp->e[i];
		if (!e->used) {
			if (!free_e)
				free_e = e;
			continue;
		}
		if (!strcmp(e->m.model, model) && !strcmp(e->m.version, version))
			return e;
	}
	if (!free_e)
		return NULL;
	memset(free_e, 0, sizeof(*free_e));
	free_e->used = true;
	fl_strlcpy(free_e->m.model, model, sizeof(free_e->m.model));
	fl_strlcpy(free_e->m.version, version, sizeof(free_e->m.version));
	entry_reset_period(free_e);
	return free_e;
}

/* May a crash event of MODEL at VERSION carry the failing request's
 * content? Only when the device config allows it (telemetry.include_content)
 * and the version's manifest opts in ("telemetry": {"include_content": true},
 * read from the slot holding that version). */
static bool content_opt_in(struct agent *a, const char *model, const char *version)
{
	if (!a->cfg.tele_include_content || !version)
		return false;
	for (const char *slot = "ab"; *slot; slot++) {
		struct slot_rec sr;
		if (journal_slot_get(a->journal, model, *slot, &sr) < 0)
			continue;
		bool match = sr.envelope && !strcmp(sr.version, version);
		struct ota_manifest *m = NULL;
		bool yes = match && agent_envelope_manifest(sr.envelope, sr.envelope_len, &m) == 0 &&
			   m->tele_include_content;
		ota_manifest_free(m);
		free(sr.envelope);
		if (match)
			return yes;
	}
	return false;
}

void agent_report_runner(struct agent *a, const char *model, const char *version,
			 struct rt_runner *runner)
{
	struct agent_report *rp = a->report;
	if (!rp || !model || !fl_name_valid(model, TELE_NAME_MAX))
		return;
	bool content_ok = runner && content_opt_in(a, model, version);
	pthread_mutex_lock(&rp->lock);
	for (size_t i = 0; i < REP_MAX_ENTRIES; i++) {
		struct rep_entry *e = &rp->e[i];
		if (!e->used)
			continue;
		if (runner && e->runner == runner)
			e->runner = NULL; /* an address reused by a new runner */
		if (!strcmp(e->m.model, model))
			e->current = false; /* old runner: still matched while it drains */
	}
	if (runner && version && fl_name_valid(version, TELE_NAME_MAX)) {
		struct rep_entry *e = entry_get(rp, model, version);
		if (e) {
			struct rt_runner_status st;
			rt_runner_get_status(runner, &st);
			e->runner = runner;
			e->current = true;
			e->content_ok = content_ok;
			e->crashes_seen = st.n_crashes;
		}
	}
	pthread_mutex_unlock(&rp->lock);
}

static enum tele_err_kind err_kind(int err)
{
	switch (err) {
	case -FL_ETIMEOUT: return TELE_ERR_TIMEOUT;
	case -FL_EBUSY: return TELE_ERR_OVERLOAD;
	case -EINVAL:
	case -FL_ERANGE:
	case -FL_ETOOBIG: return TELE_ERR_BAD_REQUEST;
	case -ENOMEM: return TELE_ERR_OOM;
	case -FL_ECRASH: return TELE_ERR_CRASH;
	default: return TELE_ERR_INTERNAL;
	}
}

static double round4(double x)
{
	return round(x * 1e4) / 1e4;
}

/* Size and parameters of a request, never its content. */
static cJSON *request_params(const struct rt_gen_request *q)
{
	cJSON *p = cJSON_CreateObject();
	if (!p)
		return NULL;
	cJSON_AddNumberToObject(p, "max_tokens", q->max_tokens);
	cJSON_AddNumberToObject(p, "temperature", round4(q->sampling.temperature));
	cJSON_AddNumberToObject(p, "top_k", q->sampling.top_k);
	cJSON_AddNumberToObject(p, "top_p", round4(q->sampling.top_p));
	cJSON_AddNumberToObject(p, "min_p", round4(q->sampling.min_p));
	cJSON_AddNumberToObject(p, "repeat_penalty", round4(q->sampling.repeat_penalty));
	cJSON_AddNumberToObject(p, "seed", (double)q->sampling.seed);
	cJSON_AddNumberToObject(p, "messages", (double)q->n_messages);
	cJSON_AddNumberToObject(p, "stop_strings", (double)q->n_stop);
	return p;
}

static char *request_content(const struct rt_gen_request *q)
{
	const char *s = q->prompt;
	if (q->n_messages)
		s = q->messages[q->n_messages - 1].content;
	if (!s)
		return NULL;
	size_t n = strnlen(s, REP_CONTENT_MAX);
	return strndup(s, n);
}

void agent_report_observe(void *ud, struct rt_runner *runner, const struct rt_serve_obs *o)
{
	(void)ud;
	struct agent_report *rp = g_report;
	if (!rp || !o)
		return;
	struct rt_runner_status st;
	rt_runner_get_status(runner, &st); /* RUNNER is acquired: valid */
	pthread_mutex_lock(&rp->lock);
	struct rep_entry *e = NULL;
	for (size_t i = 0; i < REP_MAX_ENTRIES && !e; i++)
		if (rp->e[i].used && rp->e[i].runner == runner)
			e = &rp->e[i];
	if (!e) {
		rp->unattributed++;
		pthread_mutex_unlock(&rp->lock);
		return;
	}
	struct tele_model_metrics *m = &e->m;
	e->active = true;
	m->requests++;
	tele_hist_add(&m->latency_us, (double)(o->latency_us > 0 ? o->latency_us : 0));
	if ((uint32_t)(st.queued > 0 ? st.queued : 0) > m->queue_depth_max)
		m->queue_depth_max = (uint32_t)st.queued;
	if (o->err < 0) {
		m->errors[err_kind(o->err)]++;
		if ((o->err == -FL_ECRASH || o->err == -FL_ETIMEOUT) && o->req) {
			entry_clear_crash(e);
			e->crash_req = true;
			e->crash_req_bytes = o->request_bytes;
			e->crash_params = request_params(o->req);
			if (e->content_ok)
				e->crash_content = request_content(o->req);
		}
	} else if (o->pred) {
		if (agent_quality_observe_predict(&m->quality, o->pred))
			m->has_quality = true;
	} else if (o->res) {
		m->tokens_out += o->res->n_gen > 0 ? (uint64_t)o->res->n_gen : 0;
		m->gen_time_us += o->res->gen_ms > 0 ? (uint64_t)(o->res->gen_ms * 1000) : 0;
		m->has_quality = true;
		tele_quality_observe_output(&m->quality, o->res->text, o->res->text ? o->res->text_len : 0,
					    o->res->n_gen > 0 ? (uint64_t)o->res->n_gen : 0);
	}
	pthread_mutex_unlock(&rp->lock);
}

bool agent_quality_observe_predict(struct tele_quality *q, const struct rt_predict_result *p)
{
	/* Classifiers: the predicted-class mix and the confidence (the
	 * winning probability) per row. */
	bool any = false;
	for (size_t i = 0; i < p->n_rows; i++) {
		int cls = rt_predict_class(p, i);
		if (cls < 0)
			break; /* regression: no class signals */
		const float *v = p->values + i * p->n_out;
		double conf = -1;
		if (p->kind == RT_PREDICT_BINARY && p->n_out == 1)
			conf = v[0] >= 0.5f ? v[0] : 1 - v[0];
		else if (p->kind == RT_PREDICT_MULTICLASS && p->n_out > 1)
			conf = v[cls < (int)p->n_out ? cls : 0];
		if (conf < 0 || conf > 1)
			conf = 1; /* a class without probabilities */
		if (tele_quality_observe_class(q, (unsigned)cls, conf) == 0)
			any = true;
	}
	return any;
}

void agent_report_baseline(struct agent *a, const char *model, const char *version,
			   const struct tele_quality *q)
{
	struct agent_report *rp = a->report;
	if (!rp || (!q->outputs && !q->predictions))
		return;
	cJSON *j = tele_quality_to_json(q);
	int r = j ? tele_outbox_put_baseline(rp->ob, model, version, j) : -ENOMEM;
	cJSON_Delete(j);
	if (r < 0) {
		fl_warn("telemetry: quality baseline of %s %s not stored: %s", model, version,
			fl_strerror(r));
		return;
	}
	fl_info("telemetry: quality baseline of %s %s: %llu outputs (%llu empty, %llu refusals), "
		"%llu predictions", model, version, (unsigned long long)q->outputs,
		(unsigned long long)q->empty, (unsigned long long)q->refusals,
		(unsigned long long)q->predictions);
	/* an entry of that version (a reinstall) reads it again */
	pthread_mutex_lock(&rp->lock);
	for (size_t i = 0; i < REP_MAX_ENTRIES; i++) {
		struct rep_entry *e = &rp->e[i];
		if (e->used && !strcmp(e->m.model, model) && !strcmp(e->m.version, version)) {
			free(e->baseline);
			e->baseline = NULL;
			e->baseline_loaded = e->has_baseline = false;
		}
	}
	pthread_mutex_unlock(&rp->lock);
}

/* --------------------------------------------------------------- checks */

/* What a crash event needs, taken from an entry under the lock. */
struct crash_snap {
	char model[TELE_NAME_MAX + 1], version[TELE_NAME_MAX + 1];
	struct rt_runner *runner;
	bool req;
	uint64_t req_bytes;
	cJSON *params;
	char *content;
};

/* A runner died since the last look: one event with what is known. */
static void crash_event(struct agent_report *rp, const struct crash_snap *c,
			const struct rt_runner_status *st, uint32_t n)
{
	char tail[RT_RUNNER_STDERR_BYTES];
	rt_runner_stderr_tail(c->runner, tail, sizeof(tail));
	const char *lines[REP_LOG_LINES];
	size_t nl = 0;
	/* the last REP_LOG_LINES lines, newest first, then reversed */
	char *p = tail + strlen(tail);
	while (p > tail && nl < REP_LOG_LINES) {
		while (p > tail && p[-1] == '\n')
			*--p = 0;
		char *q = p;
		while (q > tail && q[-1] != '\n')
			q--;
		if (*q)
			lines[nl++] = q;
		p = q;
	}
	for (size_t i = 0; i < nl / 2; i++) {
		const char *t = lines[i];
		lines[i] = lines[nl - 1 - i];
		lines[nl - 1 - i] = t;
	}
	struct tele_crash_info ci = {
		.signal = st->last_exit_signal,
		.exit_code = st->last_exit_signal ? -1 : st->last_exit_status,
		.log_lines = lines,
		.n_log_lines = nl,
		.has_request = c->req,
		.request_bytes = c->req_bytes,
		.request_params = c->params,
		.request_content = c->content,
		.include_content = c->content != NULL, /* only taken when opted in */
	};
	cJSON *d = tele_crash_details(&ci);
	if (d) {
		cJSON_AddNumberToObject(d, "crashes", n);
		cJSON_AddStringToObject(d, "runner", rt_runner_state_name(st->state));
	}
	char text[256];
	if (st->last_exit_signal)
		snprintf(text, sizeof(text), "runner killed by signal %d", st->last_exit_signal);
	else
		snprintf(text, sizeof(text), "runner exited with status %d", st->last_exit_status);
	struct tele_event ev = {.kind = TELE_EV_RUNNER_CRASHED,
				.model = c->model,
				.version = c->version,
				.reason = st->last_exit_signal ? "signal" : "exit",
				.text = text,
				.details = d};
	push_event(rp, &ev);
	cJSON_Delete(d);
}

static void check_runners(struct agent_report *rp)
{
	for (size_t i = 0; i < REP_MAX_ENTRIES; i++) {
		struct crash_snap c = {0};
		struct rt_runner_status st;
		uint32_t n = 0;
		pthread_mutex_lock(&rp->lock);
		struct rep_entry *e = &rp->e[i];
		if (e->used && e->current && e->runner) {
			rt_runner_get_status(e->runner, &st);
			if ((uint32_t)(st.queued > 0 ? st.queued : 0) > e->m.queue_depth_max)
				e->m.queue_depth_max = (uint32_t)st.queued;
			uint32_t fresh = st.n_crashes - e->crashes_seen;
			e->crashes_seen = st.n_crashes;
			/* A crash seen now is reported at the next look: the request
			 * that died with it reaches observe() a moment later. */
			n = e->crashes_pending;
			e->crashes_pending = fresh;
			if (fresh) {
				e->m.runner_restarts += fresh;
				e->active = true;
			}
			if (n) {
				memcpy(c.model, e->m.model, sizeof(c.model));
				memcpy(c.version, e->m.version, sizeof(c.version));
				c.runner = e->runner;
				c.req = e->crash_req;
				c.req_bytes = e->crash_req_bytes;
				c.params = e->crash_params;
				c.content = e->crash_content;
				e->crash_params = NULL;
				e->crash_content = NULL;
				e->crash_req = false;
			}
		}
		pthread_mutex_unlock(&rp->lock);
		/* Only the agent loop stops runners: c.runner stays valid. */
		if (n)
			crash_event(rp, &c, &st, n);
		cJSON_Delete(c.params);
		free(c.content);
	}
}

static void check_disk(struct agent_report *rp, int64_t now_ms)
{
	const struct agent_config *c = &rp->a->cfg;
	if (!c->tele_disk_low_bytes || now_ms < rp->next_disk_ms)
		return;
	rp->next_disk_ms = now_ms + REP_DISK_EVERY_MS;
	uint64_t fr, tot;
	if (tele_read_disk(c->state_dir, &fr, &tot) < 0)
		return;
	if (!rp->disk_low && fr < c->tele_disk_low_bytes) {
		rp->disk_low = true;
		cJSON *d = cJSON_CreateObject();
		if (d) {
			cJSON_AddNumberToObject(d, "free_bytes", (double)fr);
			cJSON_AddNumberToObject(d, "total_bytes", (double)tot);
			cJSON_AddNumberToObject(d, "threshold_bytes", (double)c->tele_disk_low_bytes);
			cJSON_AddStringToObject(d, "path", c->state_dir);
		}
		char text[200];
		snprintf(text, sizeof(text), "%llu MiB free, below %llu MiB",
			 (unsigned long long)(fr >> 20),
			 (unsigned long long)(c->tele_disk_low_bytes >> 20));
		struct tele_event ev = {.kind = TELE_EV_DISK_LOW,
					.reason = "below_threshold",
					.text = text,
					.details = d};
		push_event(rp, &ev);
		cJSON_Delete(d);
	} else if (rp->disk_low && fr > c->tele_disk_low_bytes + c->tele_disk_low_bytes / 4) {
		rp->disk_low = false; /* hysteresis: report again only after a recovery */
	}
}

/* Test hook (docs/telemetry.md "Agent"): a hit of the failpoint
 * tele.report.clock_jump armed with "fail" reads the wall clock one hour
 * ahead for that tick, so a test sees a step without changing the clock. */
static int64_t wall_now_s(void)
{
	return fl_now_s() + (FL_FAILPOINT("tele.report.clock_jump") < 0 ? 3600 : 0);
}

static void check_clock(struct agent_report *rp, int64_t now_ms)
{
	int64_t wall = wall_now_s();
	if (rp->last_mono_ms) {
		int64_t expect = rp->last_wall_s + (now_ms - rp->last_mono_ms) / 1000;
		int64_t jump = wall - expect;
		if (jump >= rp->a->cfg.tele_clock_jump_s || -jump >= rp->a->cfg.tele_clock_jump_s) {
			cJSON *d = cJSON_CreateObject();
			if (d) {
				cJSON_AddNumberToObject(d, "jump_s", (double)jump);
				cJSON_AddNumberToObject(d, "before", (double)expect);
				cJSON_AddNumberToObject(d, "after", (double)wall);
			}
			char text[128];
			snprintf(text, sizeof(text), "wall clock stepped %+lld s",
				 (long long)jump);
			struct tele_event ev = {.kind = TELE_EV_CLOCK_JUMP,
						.reason = jump > 0 ? "forward" : "backward",
						.text = text,
						.details = d};
			push_event(rp, &ev);
			cJSON_Delete(d);
		}
	}
	rp->last_wall_s = wall;
	rp->last_mono_ms = now_ms;
}

/* ---------------------------------------------------------------- period */

static void load_baseline(struct agent_report *rp, struct rep_entry *e)
{
	e->baseline_loaded = true;
	cJSON *b = NULL;
	if (tele_outbox_get_baseline(rp->ob, e->m.model, e->m.version, &b) < 0)
		return;
	struct tele_quality *q = malloc(sizeof(*q));
	if (q && tele_quality_from_json(b, q) == 0) {
		e->baseline = q;
		e->has_baseline = true;
	} else {
		free(q);
	}
	cJSON_Delete(b);
}

void agent_report_flush(struct agent *a)
{
	struct agent_report *rp = a->report;
	if (!rp)
		return;
	int64_t now = fl_mono_ms();
	uint32_t period_s = (uint32_t)((now - rp->period_start_ms + 500) / 1000);
	rp->period_start_ms = now;
	rp->next_period_ms = now + (int64_t)a->cfg.tele_interval_s * 1000;
	int64_t t = fl_now_s();

	struct tele_model_metrics *mm = malloc(REP_MAX_ENTRIES * sizeof(*mm));
	cJSON *bodies[REP_MAX_ENTRIES + 1];
	size_t nb = 0, nm = 0;
	pid_t pids[REP_MAX_ENTRIES + 1];
	size_t np = 0;
	pids[np++] = 0;
	if (!mm)
		return;
	pthread_mutex_lock(&rp->lock);
	for (size_t i = 0; i < REP_MAX_ENTRIES; i++) {
		struct rep_entry *e = &rp->e[i];
		if (!e->used)
			continue;
		if (!e->current && !e->active) {
			entry_free(e);
			continue;
		}
		if (e->current && e->runner) {
			struct rt_runner_status st;
			rt_runner_get_status(e->runner, &st);
			e->m.queue_depth = (uint32_t)(st.queued > 0 ? st.queued : 0);
			if (st.pid > 0)
				pids[np++] = st.pid;
		}
		if (!e->baseline_loaded)
			load_baseline(rp, e);
		e->m.period_s = period_s;
		e->m.has_drift = false;
		if (e->has_baseline && e->m.has_quality) {
			tele_quality_drift(e->baseline, &e->m.quality, &e->m.drift);
			e->m.has_drift = true;
		}
		mm[nm++] = e->m;
		entry_reset_period(e);
	}
	pthread_mutex_unlock(&rp->lock);

	struct tele_device_metrics dm = {0};
	tele_collect_device(&rp->cpu, NULL, pids, np, a->cfg.state_dir, &dm);
	dm.reconnects = rp->link.connects > 1 ? rp->link.connects - 1 : 0;
	dm.tx_bytes = rp->link.bytes_out;
	dm.rx_bytes = rp->link.bytes_in;
	if (tele_record_device(&dm, t, &bodies[nb]) == 0)
		nb++;
	for (size_t i = 0; i < nm; i++)
		if (tele_record_model(&mm[i], t, &bodies[nb]) == 0)
			nb++;
	free(mm);
	int r = tele_outbox_push_metrics(rp->ob, (const cJSON *const *)bodies, nb, NULL);
	mark_dirty(rp);
	if (r < 0)
		fl_warn("telemetry: metrics not stored: %s", fl_strerror(r));
	for (size_t i = 0; i < nb; i++)
		cJSON_Delete(bodies[i]);
}

void agent_report_tick(struct agent *a)
{
	struct agent_report *rp = a->report;
	if (!rp)
		return;
	int64_t now = fl_mono_ms();
	check_clock(rp, now);
	check_runners(rp);
	check_disk(rp, now);
	if (now >= rp->next_period_ms)
		agent_report_flush(a);
}

/* ------------------------------------------------------------ publishing */

void agent_report_pump(struct agent *a, struct fl_mqtt *m)
{
	struct agent_report *rp = a->report;
	if (!rp)
		return;
	fl_mqtt_stats(m, &rp->link);
	if (!fl_mqtt_connected(m))
		return;
	int64_t now = fl_mono_ms();
	if (rp->n_unconf && now - rp->unconf_ms[0] > rp->confirm_ms) {
		/* The controller may have lost them (killed before its commit):
		 * offer everything unconfirmed again; duplicates are dropped there. */
		fl_warn("telemetry: %zu records not confirmed within %lld s; sending again",
			rp->n_unconf, (long long)(rp->confirm_ms / 1000));
		rp->resends++;
		agent_report_connected(a);
		if (rp->confirm_ms < REP_CONFIRM_MAX_MS)
			rp->confirm_ms *= 2;
	}
	for (int s = 0; s < 2; s++) {
		if (rp->token[s] || now < rp->retry_ms[s])
			continue;
		if (!rp->batch[s]) {
			if (!atomic_exchange(&rp->dirty[s], false))
				continue; /* nothing new since the last empty take */
			rp->takes++;
			int r = tele_outbox_take(rp->ob, (enum tele_stream)s, REP_BATCH_BYTES,
						 &rp->batch[s]);
			if (r < 0) {
				/* Database error: try again after a pause. */
				atomic_store(&rp->dirty[s], true);
				rp->retry_ms[s] = now + REP_RETRY_MS;
				continue;
			}
			if (r == 0)
				continue; /* empty: stays clean until something changes */
			atomic_store(&rp->dirty[s], true); /* more may follow this batch */
		}
		uint64_t tok = 0;
		int r = fl_mqtt_publish(m, rp->topic[s], rp->batch[s]->data, rp->batch[s]->len, 1,
					false, &tok);
		if (r == 0)
			rp->token[s] = tok;
		else if (r != -FL_EBUSY && r != -ENOTCONN)
			rp->retry_ms[s] = now + REP_RETRY_MS;
	}
}

void agent_report_connected(struct agent *a)
{
	struct agent_report *rp = a->report;
	if (!rp)
		return;
	/* Everything not acknowledged goes again (the controller drops
	 * duplicates by (device, stream, seq)). */
	tele_outbox_rewind(rp->ob);
	mark_dirty(rp);
	rp->n_unconf = 0;
	for (int s = 0; s < 2; s++) {
		tele_batch_free(rp->batch[s]);
		rp->batch[s] = NULL;
		rp->token[s] = 0;
		rp->retry_ms[s] = 0;
	}
}

bool agent_report_published(struct agent *a, uint64_t token, bool ok)
{
	struct agent_report *rp = a->report;
	if (!rp || !token)
		return false;
	for (int s = 0; s < 2; s++) {
		if (rp->token[s] != token)
			continue;
		rp->token[s] = 0;
		if (!ok) {
			rp->retry_ms[s] = fl_mono_ms() + REP_RETRY_MS;
			return true;
		}
		/* The broker has it; it leaves the outbox when the controller
		 * confirms it committed it (agent_report_on_ack). */
		struct tele_batch *b = rp->batch[s];
		if (b && rp->n_unconf + b->n_seqs > rp->cap_unconf) {
			size_t cap = (rp->n_unconf + b->n_seqs) * 2;
			uint64_t *v = realloc(rp->unconf, cap * sizeof(*v));
			if (v)
				rp->unconf = v;
			int64_t *t = v ? realloc(rp->unconf_ms, cap * sizeof(*t)) : NULL;
			if (t) {
				rp->unconf_ms = t;
				rp->cap_unconf = cap;
			}
		}
		if (b && rp->n_unconf + b->n_seqs <= rp->cap_unconf) {
			int64_t now = fl_mono_ms();
			for (size_t i = 0; i < b->n_seqs; i++) {
				rp->unconf[rp->n_unconf] = b->seqs[i];
				rp->unconf_ms[rp->n_unconf++] = now;
			}
		}
		tele_batch_free(rp->batch[s]);
		rp->batch[s] = NULL;
		atomic_store(&rp->dirty[s], true);
		return true;
	}
	return false;
}

void agent_report_on_ack(struct agent *a, const void *payload, size_t len)
{
	struct agent_report *rp = a->report;
	if (!rp)
		return;
	cJSON *root = NULL;
	static const char *const keys[] = {"v", "stream", "ranges", NULL};
	const char *stream = NULL;
	const cJSON *ranges = NULL;
	int64_t v = 0;
	int r = fl_json_parse(payload, len, REP_ACK_MAX_BYTES, 4, &root);
	if (r == 0 && !cJSON_IsObject(root))
		r = -FL_ESCHEMA;
	if (r == 0)
		r = fl_json_check_keys(root, keys, NULL);
	if (r == 0)
		r = fl_json_get_int(root, "v", 1, 1, &v);
	if (r == 0)
		r = fl_json_get_str(root, "stream", &stream);
	if (r == 0)
		r = fl_json_get_arr(root, "ranges", &ranges);
	const cJSON *it;
	if (r == 0) {
		cJSON_ArrayForEach(it, ranges) {
			const cJSON *lo = cJSON_GetArrayItem(it, 0), *hi = cJSON_GetArrayItem(it, 1);
			if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 || !cJSON_IsNumber(lo) ||
			    !cJSON_IsNumber(hi) || lo->valuedouble < 1 || hi->valuedouble < lo->valuedouble ||
			    hi->valuedouble > 9007199254740991.0)
				r = -FL_ESCHEMA;
		}
	}
	if (r < 0) {
		rp->acks_refused++;
		fl_debug("telemetry: confirmation refused: %s", fl_strerror(r));
		cJSON_Delete(root);
		return;
	}
	if (strcmp(stream, tele_outbox_stream_id(rp->ob)) != 0) {
		cJSON_Delete(root); /* an outbox this device no longer has */
		return;
	}
	/* Confirmed seqs among the unconfirmed ones leave the outbox. */
	uint64_t *done = malloc((rp->n_unconf ? rp->n_unconf : 1) * sizeof(*done));
	bool *in = calloc(rp->n_unconf ? rp->n_unconf : 1, sizeof(*in));
	size_t nd = 0;
	for (size_t i = 0; done && in && i < rp->n_unconf; i++) {
		double s = (double)rp->unconf[i];
		cJSON_ArrayForEach(it, ranges) {
			if (s >= cJSON_GetArrayItem(it, 0)->valuedouble &&
			    s <= cJSON_GetArrayItem(it, 1)->valuedouble) {
				in[i] = true;
				done[nd++] = rp->unconf[i];
				break;
			}
		}
	}
	cJSON_Delete(root);
	/* Not deleted (database error): they stay unconfirmed and go again. */
	if (nd && tele_outbox_ack(rp->ob, done, nd) >= 0) {
		size_t keep = 0;
		for (size_t i = 0; i < rp->n_unconf; i++) {
			if (in[i])
				continue;
			rp->unconf[keep] = rp->unconf[i];
			rp->unconf_ms[keep++] = rp->unconf_ms[i];
		}
		rp->n_unconf = keep;
		rp->confirm_ms = (int64_t)rp->a->cfg.tele_resend_s * 1000;
		mark_dirty(rp);
	}
	free(done);
	free(in);
}

/* ------------------------------------------------------------- lifecycle */

int agent_report_open(struct agent *a)
{
	a->report = NULL;
	if (!a->cfg.device_id[0] || !fl_name_valid(a->cfg.device_id, TELE_DEVICE_ID_MAX))
		return -EINVAL;
	struct agent_report *rp = calloc(1, sizeof(*rp));
	if (!rp)
		return -ENOMEM;
	rp->a = a;
	if (a->cfg.tele_resend_s <= 0)
		a->cfg.tele_resend_s = REP_CONFIRM_MS / 1000;
	rp->confirm_ms = (int64_t)a->cfg.tele_resend_s * 1000;
	if (a->cfg.tele_interval_s <= 0)
		a->cfg.tele_interval_s = REPORT_DEFAULT_INTERVAL_S;
	if (a->cfg.tele_clock_jump_s <= 0)
		a->cfg.tele_clock_jump_s = REPORT_DEFAULT_CLOCK_JUMP_S;
	pthread_mutex_init(&rp->lock, NULL);
	char db[1200];
	snprintf(db, sizeof(db), "%s/state.db", a->cfg.state_dir);
	struct tele_outbox_opts oo = {.device_id = a->cfg.device_id,
				      .max_bytes = a->cfg.tele_outbox_bytes,
				      .max_records = a->cfg.tele_outbox_records};
	int r = tele_outbox_open(db, &oo, &rp->ob);
	if (r < 0) {
		fl_warn("telemetry outbox %s: %s; no telemetry", db, fl_strerror(r));
		pthread_mutex_destroy(&rp->lock);
		free(rp);
		return r;
	}
	mark_dirty(rp); /* records left from before a restart */
	snprintf(rp->topic[TELE_STREAM_EVENTS], sizeof(rp->topic[0]), "flotilla/v1/dev/%s/event",
		 a->cfg.device_id);
	snprintf(rp->topic[TELE_STREAM_METRICS], sizeof(rp->topic[1]), "flotilla/v1/dev/%s/tele",
		 a->cfg.device_id);
	int64_t now = fl_mono_ms();
	rp->period_start_ms = now;
	rp->next_period_ms = now + (int64_t)a->cfg.tele_interval_s * 1000;
	double pct;
	tele_cpu_sample(&rp->cpu, NULL, &pct); /* primes the sampler */
	a->report = rp;
	a->on_event = on_event;
	a->on_event_ud = rp;
	g_report = rp;
	struct tele_outbox_stats st;
	if (tele_outbox_stats(rp->ob, &st) == 0)
		fl_info("telemetry: every %d s; outbox %llu records (%llu events), next seq %llu, "
			"%llu metrics dropped so far",
			a->cfg.tele_interval_s, (unsigned long long)st.records,
			(unsigned long long)st.events, (unsigned long long)st.next_seq,
			(unsigned long long)st.dropped_records);
	return 0;
}

void agent_report_close(struct agent *a)
{
	struct agent_report *rp = a->report;
	if (!rp)
		return;
	fl_debug("telemetry: %llu outbox queries by the pump, %llu resends",
		 (unsigned long long)rp->takes, (unsigned long long)rp->resends);
	if (a->on_event_ud == rp) {
		a->on_event = NULL;
		a->on_event_ud = NULL;
	}
	g_report = NULL;
	for (size_t i = 0; i < REP_MAX_ENTRIES; i++)
		entry_free(&rp->e[i]);
	for (int s = 0; s < 2; s++)
		tele_batch_free(rp->batch[s]);
	cJSON_Delete(rp->trial_details);
	free(rp->unconf);
	free(rp->unconf_ms);
	tele_outbox_close(rp->ob);
	pthread_mutex_destroy(&rp->lock);
	free(rp);
	a->report = NULL;
}
