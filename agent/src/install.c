/* The install state machine (docs/install.md). Every state is journaled
 * before the action it names; every action is idempotent, so agent_recover()
 * can finish or undo whatever a power cut interrupted. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "agent.h"
#include "report.h"
#include <flotilla/bundle.h>
#include <flotilla/chunkidx.h>
#include <flotilla/hash.h>
#include <flotilla/cleanup.h>
#include <flotilla/dsse.h>
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/fs.h>
#include <flotilla/log.h>
#include <flotilla/sdnotify.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/util.h>

FL_DEFINE_CLEANUP(struct ota_bundle, ota_bundle_free)
FL_DEFINE_CLEANUP(struct ota_slots, ota_slots_free)
FL_DEFINE_CLEANUP(struct ota_manifest, ota_manifest_free)

/* Events carry JSON details; build them with cJSON so any text is escaped. */
void agent_event(struct agent *a, const char *model, const char *kind, const char *version,
		 int err, const char *reason)
{
	a->state_dirty = true;
	if (a->on_event)
		a->on_event(a->on_event_ud, model, kind, version, err, reason);
	cJSON *d = cJSON_CreateObject();
	if (!d)
		return;
	if (version)
		cJSON_AddStringToObject(d, "version", version);
	if (err) {
		cJSON_AddNumberToObject(d, "code", err);
		cJSON_AddStringToObject(d, "error", fl_strerror(err));
	}
	if (reason)
		cJSON_AddStringToObject(d, "reason", reason);
	char *s = cJSON_PrintUnformatted(d);
	cJSON_Delete(d);
	if (s) {
		journal_event(a->journal, model ? model : "", kind, s);
		free(s);
	}
	fl_info("%s %s%s%s%s%s", kind, model ? model : "?", version ? " " : "", version ? version : "",
		reason ? ": " : "", reason ? reason : "");
}

/* Manifest of the envelope stored in the journal (verified when it was
 * installed; parsed again, not re-verified: the key may have expired since). */
int agent_envelope_manifest(const char *env, size_t len, struct ota_manifest **ret)
{
	struct ota_dsse *d = NULL;
	int r = ota_dsse_parse(env, len, &d);
	if (r < 0)
		return r;
	r = ota_manifest_parse((const char *)d->payload, d->payload_len, ret);
	ota_dsse_free(d);
	return r;
}

/* The manifest of the version the journal records in SLOT of MODEL. */
static int slot_manifest(struct agent *a, const char *model, char slot, struct ota_manifest **ret)
{
	struct slot_rec sr;
	int r = journal_slot_get(a->journal, model, slot, &sr);
	if (r < 0)
		return r;
	r = sr.envelope ? agent_envelope_manifest(sr.envelope, sr.envelope_len, ret) : -FL_EMISSING;
	free(sr.envelope);
	return r;
}

struct verify_ctx {
	struct agent *a;
	int64_t now;
};

/* Signature, expiry and the per-model anti-rollback floor from the journal. */
static int verify_hook(void *ud, const char *env, size_t len, struct ota_manifest **ret)
{
	struct verify_ctx *v = ud;
	struct ota_manifest *m = NULL;
	if (!v->a->trust)
		return -FL_EKEYUNKNOWN;
	int r = ota_trust_verify_manifest(v->a->trust, env, len, v->now, 0, &m);
	if (r < 0)
		return r;
	struct model_rec mr;
	r = journal_model_get(v->a->journal, m->name, &mr);
	if (r == 0 && m->sequence < mr.highest_sequence)
		r = -FL_EREPLAY;
	if (r < 0) {
		ota_manifest_free(m);
		return r;
	}
	*ret = m;
	return 0;
}

int agent_verify_envelope(struct agent *a, const char *env, size_t len, struct ota_manifest **ret)
{
	struct verify_ctx v = {.a = a, .now = fl_now_s()};
	return verify_hook(&v, env, len, ret);
}

char *agent_progress_path(const struct agent *a, const char *model)
{
	return fl_asprintf("%s/progress/%s.progress", a->cfg.state_dir, model);
}

char *agent_cidx_dir(const struct agent *a, const char *model)
{
	return fl_asprintf("%s/cidx/%s", a->cfg.state_dir, model);
}

int agent_cidx_save(struct agent *a, const char *model, const void *buf, size_t len)
{
	_cleanup_free_ char *dir = agent_cidx_dir(a, model);
	if (!dir)
		return -ENOMEM;
	int r = fl_mkdir_p(dir, 0755);
	if (r < 0)
		return r;
	uint8_t h[FL_SHA256_LEN];
	char hex[FL_SHA256_HEX_LEN + 1];
	fl_sha256(buf, len, h);
	fl_hex_encode(h, sizeof(h), hex);
	_cleanup_free_ char *p = fl_path_join(dir, hex);
	if (!p)
		return -ENOMEM;
	if (access(p, F_OK) == 0)
		return 0;
	return fl_write_file_atomic(p, buf, len, 0644);
}

static uint64_t dir_bytes(const char *dir)
{
	/* Bytes a cleared slot gives back; a rough figure is enough. */
	uint64_t total = 0;
	struct stat st;
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return 0;
	DIR *d = opendir(dir);
	if (!d)
		return 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..")))
			continue;
		_cleanup_free_ char *p = fl_path_join(dir, de->d_name);
		if (p && lstat(p, &st) == 0)
			total += S_ISDIR(st.st_mode) ? dir_bytes(p) : (uint64_t)st.st_blocks * 512;
	}
	closedir(d);
	return total;
}

static bool dir_nonempty(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return false;
	struct dirent *de;
	bool found = false;
	while (!found && (de = readdir(d)))
		found = strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
	closedir(d);
	return found;
}

int agent_preflight(struct agent *a, const struct ota_manifest *m, struct ota_slots *s,
		    char *why, size_t why_len)
{
	struct ota_device_info dev;
	char arch[64];
	int r = ota_device_info_probe(&dev, arch, sizeof(arch));
	if (r < 0) {
		snprintf(why, why_len, "cannot read device facts");
		return r;
	}
	dev.backends = agent_backends;
	r = ota_compat_check(m, &dev, why, why_len);
	if (r < 0)
		return r;
	if ((r = agent_exec_check(&a->cfg, m, why, why_len)) < 0)
		return r;
	uint64_t need = 0, avail = 0;
	for (size_t i = 0; i < m->n_files; i++)
		need += m->files[i].size;
	r = fl_disk_free(a->models_dir, &avail);
	if (r < 0) {
		snprintf(why, why_len, "cannot read free disk space");
		return r;
	}
	avail += dir_bytes(ota_slots_dir(s, ota_slots_inactive(s)));
	if (need + a->cfg.disk_reserve_bytes > avail) {
		snprintf(why, why_len, "needs %llu bytes (+%llu reserve), %llu available",
			 (unsigned long long)need, (unsigned long long)a->cfg.disk_reserve_bytes,
			 (unsigned long long)avail);
		return -FL_ENOSPACE;
	}
	return 0;
}

/* An install runs inside the service loop (daemon.c), which pings the
 * systemd watchdog only between steps: a long staging + acceptance must not
 * get the agent killed as hung. Ping at each step of progress (and per
 * acceptance test, accept.c). No NOTIFY_SOCKET (the CLI): does nothing. */
static void install_keepalive(void)
{
	fl_sd_notify("WATCHDOG=1");
}

/* Undo a staging that did not reach the switch: the inactive slot is emptied
 * and the install ends REJECTED with REASON. */
int agent_reject_staged(struct agent *a, struct ota_slots *s, const struct install_rec *rec,
			int err, const char *reason)
{
	if (!strncmp(rec->source, AGENT_NET_SOURCE, strlen(AGENT_NET_SOURCE))) {
		_cleanup_free_ char *pp = agent_progress_path(a, rec->model);
		if (pp)
			unlink(pp);
	}
	char msg[J_ERROR_MAX];
	snprintf(msg, sizeof(msg), "%s (%s)", reason, fl_strerror(err));
	if (ota_slots_current(s) != rec->to_slot) {
		int r = ota_slots_clear(s, rec->to_slot);
		if (r < 0)
			return r;
		r = journal_slot_set(a->journal, rec->model, rec->to_slot, SLOT_EMPTY, NULL, 0, NULL, 0);
		if (r < 0)
			return r;
	}
	int r = journal_install_set(a->journal, rec->id, ST_REJECTED, msg);
	if (r < 0)
		return r;
	agent_event(a, rec->model, "install.rejected", rec->version, err, reason);
	return 0;
}

/* From SWITCHING on: point `current` at the new slot, route requests to
 * RUNNER (already answering; NULL when not serving), then trial or commit. */
static int finish_switch(struct agent *a, struct ota_slots *s, struct install_rec *rec,
			 const struct ota_manifest *m, struct rt_runner *runner, int64_t t_switching)
{
	int r = ota_slots_switch(s, rec->to_slot);
	if (r < 0) {
		agent_serving_commit_abandon(a, runner);
		return r;
	}
	int64_t t_renamed = fl_mono_ns(), t_routed = 0;
	if (runner)
		t_routed = agent_serving_commit(a, rec->model, runner);
	char how[128] = "";
	if (t_routed && t_switching) {
		/* SWITCHING journaled -> new requests on the new slot's runner
		 * (bench/install.sh reports it) */
		snprintf(how, sizeof(how), "serving slot %c %.3f ms after SWITCHING (rename %.3f ms)",
			 rec->to_slot, (double)(t_routed - t_switching) / 1e6,
			 (double)(t_renamed - t_switching) / 1e6);
	}
	agent_event(a, rec->model, "install.switched", rec->version, 0, how[0] ? how : NULL);
	if (m->trial.window_s > 0 && rec->from_slot) {
		r = journal_install_set(a->journal, rec->id, ST_TRIAL, NULL);
		if (r == 0)
			agent_event(a, rec->model, "install.trial", rec->version, 0, NULL);
		return r;
	}
	r = journal_install_commit(a->journal, rec);
	if (r == 0)
		agent_event(a, rec->model, "install.committed", rec->version, 0, NULL);
	return r;
}

int agent_finish_staged(struct agent *a, struct ota_slots *s, struct install_rec *rec,
			const struct ota_manifest *m)
{
	install_keepalive();
	int r = journal_install_set(a->journal, rec->id, ST_TESTING, NULL);
	if (r < 0)
		return r;
	char why[512] = "";
	struct tele_quality *q = malloc(sizeof(*q));
	if (!q)
		return -ENOMEM;
	r = agent_acceptance(m, ota_slots_dir(s, rec->to_slot), q, why, sizeof(why));
	if (r == 0) /* the version's quality baseline, before the switch */
		agent_report_baseline(a, rec->model, rec->version, q);
	free(q);
	if (r < 0) {
		int k = agent_reject_staged(a, s, rec, r, why[0] ? why : "acceptance tests failed");
		return k < 0 ? k : r;
	}
	install_keepalive();
	/* When serving, the new version must answer in its own runner before
	 * the switch, so the swap drops nothing. */
	struct rt_runner *runner = NULL;
	r = agent_serving_prepare(a, rec->model, rec->to_slot, m, &runner);
	if (r < 0) {
		snprintf(why, sizeof(why), "the model's runner did not start: %s", fl_strerror(r));
		int k = agent_reject_staged(a, s, rec, -FL_EACCEPT, why);
		return k < 0 ? k : -FL_EACCEPT;
	}
	int64_t t_switching = fl_mono_ns();
	r = journal_install_set(a->journal, rec->id, ST_SWITCHING, NULL);
	if (r < 0) {
		agent_serving_commit_abandon(a, runner);
		return r;
	}
	return finish_switch(a, s, rec, m, runner, t_switching);
}

int agent_install_bundle(struct agent *a, const char *path)
{
	if (!a->trust) {
		agent_event(a, NULL, "install.rejected", NULL, -FL_EKEYUNKNOWN,
		      "no usable trust store (root keys)");
		return -FL_EKEYUNKNOWN;
	}
	struct verify_ctx v = {.a = a, .now = fl_now_s()};
	struct ota_bundle_opts opts = {.verify = verify_hook, .verify_userdata = &v};
	_cleanup_(ota_bundle_freep) struct ota_bundle *b = NULL;
	int r = ota_bundle_open(path, a->trust, v.now, 0, &opts, &b);
	if (r < 0) {
		char why[600];
		snprintf(why, sizeof(why), "bundle %s refused", path);
		agent_event(a, NULL, "install.rejected", NULL, r, why);
		return r;
	}
	const struct ota_manifest *m = ota_bundle_manifest(b);
	_cleanup_(ota_slots_freep) struct ota_slots *s = NULL;
	r = ota_slots_open(a->models_dir, m->name, &s);
	if (r < 0)
		return r;

	struct install_rec pend;
	r = journal_install_pending(a->journal, m->name, &pend);
	if (r < 0)
		return r;
	if (r > 0) {
		agent_event(a, m->name, "install.rejected", m->version, -FL_ESTATE,
		      "another install of this model is in progress");
		return -FL_ESTATE;
	}

	struct install_rec rec = {.sequence = m->sequence, .from_slot = ota_slots_current(s),
				  .to_slot = ota_slots_inactive(s), .state = ST_FETCHING};
	fl_strlcpy(rec.model, m->name, sizeof(rec.model));
	fl_strlcpy(rec.version, m->version, sizeof(rec.version));
	fl_strlcpy(rec.source, path, sizeof(rec.source));

	char why[512] = "";
	r = agent_preflight(a, m, s, why, sizeof(why));
	if (r < 0) {
		rec.state = ST_REJECTED;
		snprintf(rec.error, sizeof(rec.error), "%s (%s)", why, fl_strerror(r));
		int k = journal_install_begin(a->journal, &rec);
		agent_event(a, m->name, "install.rejected", m->version, r, why);
		return k < 0 ? k : r;
	}

	r = journal_install_begin(a->journal, &rec);
	if (r < 0)
		return r;
	agent_event(a, m->name, "install.started", m->version, 0, NULL);
	r = journal_slot_set(a->journal, m->name, rec.to_slot, SLOT_STAGING, m->version,
			     m->sequence, NULL, 0);
	if (r < 0)
		return r;
	r = ota_slots_clear(s, rec.to_slot);
	if (r < 0)
		return r;
	install_keepalive();
	r = FL_FAILPOINT("install.before_extract");
	if (r == 0)
		r = ota_bundle_extract(b, ota_slots_dir(s, rec.to_slot));
	if (r < 0) {
		int k = agent_reject_staged(a, s, &rec, r, "staging failed");
		return k < 0 ? k : r;
	}
	size_t env_len;
	const char *env = ota_bundle_envelope(b, &env_len);
	r = journal_slot_set(a->journal, m->name, rec.to_slot, SLOT_READY, m->version, m->sequence,
			     env, env_len);
	if (r < 0)
		return r;
	r = journal_install_set(a->journal, rec.id, ST_STAGED, NULL);
	if (r < 0)
		return r;
	agent_event(a, m->name, "install.staged", m->version, 0, NULL);
	for (size_t i = 0; i < m->n_files; i++) {
		/* Kept for delta installs over MQTT (local chunk sources). */
		const struct ota_chunkidx *ci = ota_bundle_chunk_index(b, i);
		uint8_t *buf = NULL;
		size_t blen = 0;
		if (ci && ota_chunkidx_encode(ci, &buf, &blen) == 0)
			agent_cidx_save(a, m->name, buf, blen);
		free(buf);
	}
	return agent_finish_staged(a, s, &rec, m);
}

static int do_revert(struct agent *a, struct ota_slots *s, const struct install_rec *rec,
		     char target, const char *reason)
{
	int r = ota_slots_switch(s, target);
	if (r < 0)
		return r;
	if (a->serving) {
		/* Serve the version switched back to; if its runner cannot start
		 * the model is not served, which the status and an event say. */
		struct ota_manifest *m = NULL;
		struct rt_runner *runner = NULL;
		int k = slot_manifest(a, rec->model, target, &m);
		if (k == 0)
			k = agent_serving_prepare(a, rec->model, target, m, &runner);
		ota_manifest_free(m);
		if (k < 0)
			agent_event(a, rec->model, "serve.failed", NULL, k, "after revert");
		agent_serving_commit(a, rec->model, runner);
	}
	r = journal_install_rolled_back(a->journal, rec->id, rec->model, target, reason);
	if (r == 0)
		agent_event(a, rec->model, "install.rolled_back", rec->version, 0, reason);
	return r;
}

struct recover_ctx {
	struct agent *a;
	bool daemon_start;
};

static int recover_model(void *ud, const char *model)
{
	struct recover_ctx *rc = ud;
	struct agent *a = rc->a;
	struct install_rec rec;
	int r = journal_install_pending(a->journal, model, &rec);
	if (r <= 0)
		return r;
	_cleanup_(ota_slots_freep) struct ota_slots *s = NULL;
	r = ota_slots_open(a->models_dir, model, &s);
	if (r < 0)
		return r;
	char msg[256];
	switch (rec.state) {
	case ST_FETCHING:
		/* A network install keeps its verified chunks and resumes when
		 * the service runs with MQTT (fetch.c); without MQTT it is undone. */
		if (!strncmp(rec.source, AGENT_NET_SOURCE, strlen(AGENT_NET_SOURCE)) &&
		    a->cfg.mqtt_uri[0])
			return 0;
		/* fall through */
	case ST_STAGED:
	case ST_TESTING:
		/* Not switched yet: the old version never stopped being current.
		 * Undo; a spooled bundle is picked up again by the spool scan. */
		snprintf(msg, sizeof(msg), "interrupted in %s; inactive slot cleaned",
			 inst_state_name(rec.state));
		return agent_reject_staged(a, s, &rec, -FL_ESTATE, msg);
	case ST_SWITCHING: {
		/* Tests passed before SWITCHING was written: complete forward. */
		_cleanup_(ota_manifest_freep) struct ota_manifest *m = NULL;
		r = slot_manifest(a, model, rec.to_slot, &m);
		if (r < 0)
			return r;
		return finish_switch(a, s, &rec, m, NULL, 0);
	}
	case ST_TRIAL: {
		if (!rc->daemon_start)
			return 0;
		int boots;
		r = journal_install_trial_boot(a->journal, rec.id, &boots);
		if (r < 0)
			return r;
		if (boots < AGENT_TRIAL_MAX_BOOTS)
			return 0;
		snprintf(msg, sizeof(msg), "crash loop: %d agent starts during the trial", boots);
		agent_event(a, model, "install.trial_failed", rec.version, 0, msg);
		r = journal_install_set(a->journal, rec.id, ST_REVERTING, msg);
		if (r < 0)
			return r;
		return do_revert(a, s, &rec, rec.from_slot, msg);
	}
	case ST_REVERTING:
		return do_revert(a, s, &rec, rec.from_slot, rec.error[0] ? rec.error : "revert");
	default:
		return 0;
	}
}

int agent_recover(struct agent *a, bool daemon_start)
{
	struct recover_ctx rc = {.a = a, .daemon_start = daemon_start};
	return journal_pending_models(a->journal, recover_model, &rc);
}

int agent_revert(struct agent *a, const char *model, const char *reason)
{
	_cleanup_(ota_slots_freep) struct ota_slots *s = NULL;
	int r = ota_slots_open(a->models_dir, model, &s);
	if (r < 0)
		return r;
	char cur = ota_slots_current(s);
	if (!cur)
		return -FL_ESTATE;
	char other = cur == 'a' ? 'b' : 'a';
	struct slot_rec sr;
	r = journal_slot_get(a->journal, model, other, &sr);
	if (r < 0)
		return r;
	if (sr.status != SLOT_READY || !sr.envelope) {
		free(sr.envelope);
		return -FL_EMISSING; /* nothing to go back to */
	}
	_cleanup_(ota_manifest_freep) struct ota_manifest *m = NULL;
	r = agent_envelope_manifest(sr.envelope, sr.envelope_len, &m);
	free(sr.envelope);
	if (r < 0)
		return r;
	const char *bad = NULL;
	r = ota_slot_verify(ota_slots_dir(s, other), m, &bad);
	if (r < 0) {
		fl_err("revert %s: slot %c is damaged (%s: %s)", model, other, bad ? bad : "?",
		       fl_strerror(r));
		return r;
	}
	struct install_rec pend;
	r = journal_install_pending(a->journal, model, &pend);
	if (r < 0)
		return r;
	struct install_rec rec;
	if (r > 0 && pend.state == ST_TRIAL) {
		rec = pend; /* a trial ended by command */
	} else if (r > 0) {
		return -FL_ESTATE;
	} else {
		rec = (struct install_rec){.sequence = m->sequence, .from_slot = other,
					   .to_slot = other, .state = ST_REVERTING};
		fl_strlcpy(rec.model, model, sizeof(rec.model));
		fl_strlcpy(rec.version, m->version, sizeof(rec.version));
		fl_strlcpy(rec.error, reason, sizeof(rec.error));
		r = journal_install_begin(a->journal, &rec);
		if (r < 0)
			return r;
	}
	if (rec.state != ST_REVERTING) {
		r = journal_install_set(a->journal, rec.id, ST_REVERTING, reason);
		if (r < 0)
			return r;
	}
	return do_revert(a, s, &rec, other, reason);
}

/* Runner crashes during a trial that count as a crash loop. */
#define TRIAL_MAX_CRASHES 3

static int tick_model(void *ud, const char *model)
{
	struct agent *a = ud;
	struct install_rec rec;
	int r = journal_install_pending(a->journal, model, &rec);
	if (r <= 0 || rec.state != ST_TRIAL)
		return r < 0 ? r : 0;
	_cleanup_(ota_manifest_freep) struct ota_manifest *m = NULL;
	r = slot_manifest(a, model, rec.to_slot, &m);
	if (r < 0)
		return r;
	/* What the runner saw since the switch, when this agent serves it. */
	uint32_t crashes = 0, failed = 0, requests = 0;
	bool served = agent_serving_trial_stats(a, model, &crashes, &failed, &requests) == 0;
	/* The runner counts answered requests and failed ones apart; the gate
	 * (min_requests, error rate) judges all of them. */
	requests += failed;
	double p95 = 0;
	uint32_t n_lat = 0;
	if (served && m->trial.max_p95_latency_ms)
		agent_serving_trial_latency(a, model, 0.95, &p95, &n_lat);
	uint32_t min_req = m->trial.min_requests ? m->trial.min_requests : 1;
	char why[256] = "";
	if (served && crashes >= TRIAL_MAX_CRASHES)
		snprintf(why, sizeof(why), "crash loop: the runner crashed %u times during the trial",
			 crashes);
	else if (served && requests >= min_req &&
		 (double)failed / requests > m->trial.max_error_rate)
		snprintf(why, sizeof(why), "error rate %.3f over %u requests, limit %.3f",
			 (double)failed / requests, requests, m->trial.max_error_rate);
	else if (served && m->trial.max_p95_latency_ms && n_lat >= min_req &&
		 p95 > m->trial.max_p95_latency_ms)
		snprintf(why, sizeof(why), "latency p95 %.1f ms over %u requests, limit %u ms", p95,
			 n_lat, m->trial.max_p95_latency_ms);
	if (why[0]) {
		agent_report_trial(a, model, crashes, TRIAL_MAX_CRASHES, failed, requests,
				   m->trial.max_error_rate);
		agent_event(a, model, "install.trial_failed", rec.version, 0, why);
		return agent_revert(a, model, why);
	}
	if (fl_now_s() - rec.trial_start_s < (int64_t)m->trial.window_s)
		return 0;
	/* The window is over; a served model must also have seen enough
	 * requests to be judged. */
	if (served && requests < m->trial.min_requests)
		return 0;
	r = journal_install_commit(a->journal, &rec);
	if (r == 0) {
		char how[160] = "trial window passed";
		if (served)
			snprintf(how, sizeof(how),
				 "trial window passed: %u requests, %u failed, %u crashes", requests,
				 failed, crashes);
		if (served && n_lat)
			snprintf(how + strlen(how), sizeof(how) - strlen(how), ", p95 %.1f ms (limit %u ms)",
				 p95, m->trial.max_p95_latency_ms);
		agent_event(a, model, "install.committed", rec.version, 0, how);
	}
	return r;
}

int agent_trial_tick(struct agent *a)
{
	return journal_pending_models(a->journal, tick_model, a);
}

struct check_ctx {
	struct agent *a;
	int problems;
	int err;
};

static int check_model(void *ud, const struct model_rec *mr)
{
	struct check_ctx *c = ud;
	struct agent *a = c->a;
	_cleanup_(ota_slots_freep) struct ota_slots *s = NULL;
	int r = ota_slots_open(a->models_dir, mr->name, &s);
	if (r < 0)
		return r;
	char cur = ota_slots_current(s);
	bool bad_slot[2] = {false, false};
	/* A network install being fetched keeps its .part files for resuming. */
	struct install_rec pend;
	char resuming = 0;
	if (journal_install_pending(a->journal, mr->name, &pend) > 0 && pend.state == ST_FETCHING &&
	    !strncmp(pend.source, AGENT_NET_SOURCE, strlen(AGENT_NET_SOURCE)))
		resuming = pend.to_slot;
	for (char slot = 'a'; slot <= 'b'; slot++) {
		struct slot_rec sr;
		r = journal_slot_get(a->journal, mr->name, slot, &sr);
		if (r < 0)
			return r;
		const char *dir = ota_slots_dir(s, slot);
		if (sr.status != SLOT_READY) {
			free(sr.envelope);
			/* Leftovers of an undone staging: an inactive, unrecorded slot
			 * must be empty. */
			if (slot != cur && slot != resuming && dir_nonempty(dir)) {
				c->problems++;
				r = ota_slots_clear(s, slot);
				if (r < 0)
					return r;
				agent_event(a, mr->name, "check.cleaned", NULL, 0, "leftover files in empty slot");
			}
			if (slot == cur)
				bad_slot[slot - 'a'] = true;
			continue;
		}
		_cleanup_(ota_manifest_freep) struct ota_manifest *m = NULL;
		r = agent_envelope_manifest(sr.envelope, sr.envelope_len, &m);
		free(sr.envelope);
		const char *bad = NULL;
		if (r == 0)
			r = ota_slot_verify(dir, m, &bad);
		if (r == 0)
			continue;
		c->problems++;
		bad_slot[slot - 'a'] = true;
		char why[600];
		snprintf(why, sizeof(why), "slot %c (%s): %s: %s", slot, sr.version,
			 bad ? bad : "manifest", fl_strerror(r));
		agent_event(a, mr->name, "check.damaged", sr.version, r, why);
		if (slot != cur) {
			r = ota_slots_clear(s, slot);
			if (r == 0)
				r = journal_slot_set(a->journal, mr->name, slot, SLOT_EMPTY, NULL, 0,
						     NULL, 0);
			if (r < 0)
				return r;
		}
	}
	if (cur && bad_slot[cur - 'a']) {
		char other = cur == 'a' ? 'b' : 'a';
		if (!bad_slot[other - 'a']) {
			r = agent_revert(a, mr->name, "active slot damaged: reverted by check");
			if (r < 0)
				agent_event(a, mr->name, "check.unrepairable", NULL, r,
				      "active slot damaged and no good slot to revert to");
		}
	}
	return 0;
}

int agent_check(struct agent *a)
{
	int r = agent_recover(a, false);
	if (r < 0)
		return r;
	struct check_ctx c = {.a = a};
	r = journal_models(a->journal, check_model, &c);
	return r < 0 ? r : c.problems;
}
