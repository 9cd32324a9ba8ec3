/* flotilla-agent internals shared by its source files. */
#ifndef FLOTILLA_AGENT_H
#define FLOTILLA_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "journal.h"
#include <flotilla/slot.h>
#include <flotilla/trust.h>

#define AGENT_DEFAULT_CONFIG "/etc/flotilla/agent.conf"
#define AGENT_DEFAULT_STATE_DIR "/var/lib/flotilla"
#define AGENT_DEFAULT_TRUST_DIR "/etc/flotilla/trust"
/* Agent starts during a trial after which the new version counts as crash
 * looping and is rolled back. */
#define AGENT_TRIAL_MAX_BOOTS 3

struct agent_config {
	char state_dir[1024];  /* journal, models/, trust/keyring, spool/ */
	char trust_dir[1024];  /* root public keys (*.pem) and threshold */
	char device_id[65];
	unsigned threshold;    /* 0: from trust_dir/threshold or 1 */
	uint64_t disk_reserve_bytes; /* free space kept beyond a new slot */
	/* MQTT session (docs/agent.md); mqtt_uri "" = offline (spool only). */
	char mqtt_uri[256];
	char mqtt_ca[1024], mqtt_cert[1024], mqtt_key[1024];
	int mqtt_keepalive_s;
	bool mqtt_verify_host;
	char labels[1024];       /* "k=v,k=v" (agent.labels) */
	uint64_t bandwidth_bps;  /* chunk download cap in bytes/s, 0 = none */
	/* Local inference API (docs/serving.md), started by `run`. */
	char serve_listen[128];  /* "127.0.0.1:8080"; "" = no TCP listener */
	char serve_socket[1024]; /* UNIX socket; "" = STATE_DIR/api.sock; "off" = none */
	char serve_token[256];   /* bearer token for the TCP listener; "" = none */
	char serve_exec_allow[2048]; /* commands the exec backend may run, comma-separated
				      * absolute paths; "" = exec backend refused */
	/* [telemetry] (docs/telemetry.md "Agent", report.c) */
	int tele_interval_s;          /* metrics period */
	uint64_t tele_outbox_bytes;   /* outbox bound; 0 = library default */
	uint64_t tele_outbox_records; /* 0 = library default */
	bool tele_include_content;    /* crash events carry the failing prompt */
	uint64_t tele_disk_low_bytes; /* disk_low event below this free space */
	int tele_clock_jump_s;        /* clock_jump event beyond this step */
	int tele_resend_s;            /* unconfirmed records go again after this */
	/* [hw]: what the MQTT state reports instead of what is detected, for
	 * simulation and tests (docs/agent.md "Hardware class override"). */
	char hw_arch[64];          /* "" = detected (uname) */
	uint64_t hw_ram_mb;        /* 0 = detected (sysinfo) */
	char hw_accelerators[256]; /* "a,b"; "" = none */
};

/* Called for every event the install engine records (the MQTT session
 * forwards them to the controller). KIND is "install.started" etc. */
typedef void (*agent_event_fn)(void *ud, const char *model, const char *kind,
			       const char *version, int err, const char *reason);

struct agent {
	struct agent_config cfg;
	struct journal *journal;
	struct ota_trust *trust;
	char models_dir[1100];
	int lock_fd;
	agent_event_fn on_event; /* NULL: none */
	void *on_event_ud;
	bool state_dirty;        /* something the MQTT state shows changed */
	struct agent_serving *serving; /* NULL: models are not served (commands) */
	struct agent_report *report;   /* telemetry (report.c); NULL: none */
};

struct ota_manifest;
struct ota_slots;
struct agent_serving;
struct rt_runner;

/* Start a runner child process (this program in runner mode) for the model
 * of M in directory DIR, with the manifest's runtime limits, and wait until
 * it answers. Caller stops it with rt_runner_stop(). */
int agent_runner_start(const struct ota_manifest *m, const char *dir, struct rt_runner **ret);

/* Serving (serving.c). Start runners for every model's current slot and the
 * local API; stop everything. */
int agent_serving_start(struct agent *a);
void agent_serving_stop(struct agent *a);
/* Before a switch to SLOT: start a runner on it and wait until it answers.
 * *RET_RUNNER is NULL when the agent is not serving. */
int agent_serving_prepare(struct agent *a, const char *model, char slot,
			  const struct ota_manifest *m, struct rt_runner **ret_runner);
/* After the switch: route new requests to RUNNER, let requests in flight
 * finish on the old runner, stop it. RUNNER NULL: nothing is served now.
 * Returns the fl_mono_ns() time new requests began to go to RUNNER (0 when
 * not serving). */
int64_t agent_serving_commit(struct agent *a, const char *model, struct rt_runner *runner);
/* A prepared runner that will not be used (the switch failed): stop it. */
void agent_serving_commit_abandon(struct agent *a, struct rt_runner *runner);
/* Failures of a model in TRIAL seen by its runner since the trial began:
 * crashes, failed and total requests. 0, or -ENOENT when not served. */
int agent_serving_trial_stats(struct agent *a, const char *model, uint32_t *ret_crashes,
			      uint32_t *ret_failed, uint32_t *ret_requests);
/* Quantile Q of the latency of the requests MODEL answered since its trial
 * began (rt_latency_quantile_ms: the upper edge of a 9 % bucket) and how
 * many there were. 0, or -ENOENT when not served. */
int agent_serving_trial_latency(struct agent *a, const char *model, double q, double *ret_ms,
				uint32_t *ret_n);
/* Forget the trial baseline of MODEL (a new trial starts). */
void agent_serving_trial_reset(struct agent *a, const char *model);
/* Refresh what /v1/status shows (runner counters); agent loop only. */
void agent_serving_tick(struct agent *a);

/* Shared by the local (install.c) and network (fetch.c) install paths. */
void agent_event(struct agent *a, const char *model, const char *kind, const char *version,
		 int err, const char *reason);
/* Verify a manifest envelope: signature, expiry, the model's anti-rollback
 * floor from the journal. Caller frees *RET. */
int agent_verify_envelope(struct agent *a, const char *env, size_t len, struct ota_manifest **ret);
/* Parse (not verify) a stored envelope's manifest. */
int agent_envelope_manifest(const char *env, size_t len, struct ota_manifest **ret);
/* Compatibility and disk space for M in the inactive slot of S. */
int agent_preflight(struct agent *a, const struct ota_manifest *m, struct ota_slots *s, char *why,
		    size_t why_len);
/* Undo a staging that did not reach the switch: inactive slot emptied,
 * REJECTED with REASON (and a network install's progress removed). */
int agent_reject_staged(struct agent *a, struct ota_slots *s, const struct install_rec *rec,
			int err, const char *reason);
/* From a staged slot (journaled STAGED): TESTING -> SWITCHING -> TRIAL or
 * COMMITTED, or REJECTED when acceptance fails. */
int agent_finish_staged(struct agent *a, struct ota_slots *s, struct install_rec *rec,
			const struct ota_manifest *m);
/* Prefix of install_rec.source for installs fetched over MQTT. */
#define AGENT_NET_SOURCE "net:"
/* STATE_DIR/progress/<model>.progress and the chunk index cache dir
 * STATE_DIR/cidx/<model> (caller frees). */
char *agent_progress_path(const struct agent *a, const char *model);
char *agent_cidx_dir(const struct agent *a, const char *model);
/* Save an encoded chunk index in the model's cache under its SHA-256. */
int agent_cidx_save(struct agent *a, const char *model, const void *buf, size_t len);

/* Open the journal and the trust store and take the state lock. READ_ONLY
 * (status) takes no lock and opens no trust store: it may run beside the
 * service, which holds the lock. */
int agent_open(struct agent *a, const struct agent_config *cfg, bool read_only);
void agent_close(struct agent *a);
int agent_config_load(const char *path, struct agent_config *cfg, char *err, size_t err_len);
struct cJSON;
/* Parse "k=v,k=v" labels (names fl_name_valid <= 64, values <= 128 bytes)
 * into a JSON object (RET may be NULL: only check). -FL_ECONFIG. */
int agent_labels_parse(const char *text, struct cJSON **ret);

/* Install the bundle at PATH (verify, pre-flight, stage into the inactive
 * slot, test, switch, then trial or commit). Returns 0 when the new version is
 * active (committed, or in trial), or the reason it was refused (negative).
 * Every outcome is journaled and recorded as an event. */
int agent_install_bundle(struct agent *a, const char *path);

/* Finish or undo whatever a crash interrupted, for every model. With
 * DAEMON_START (the service starting, not a command) a start during a TRIAL
 * counts as a boot, and AGENT_TRIAL_MAX_BOOTS of them roll back. */
int agent_recover(struct agent *a, bool daemon_start);

/* Switch MODEL back to the slot it ran before (always allowed: it is the
 * version this device committed itself). */
int agent_revert(struct agent *a, const char *model, const char *reason);

/* Complete trials whose window has passed without failure. */
int agent_trial_tick(struct agent *a);

/* Verify every slot against its manifest; repair what can be repaired
 * (clean a corrupt inactive slot, revert from a corrupt active one).
 * Returns the number of problems found (>= 0) or an error. */
int agent_check(struct agent *a);

/* Backend "exec": the manifest's runtime.exec.command[0] must be one of
 * serve.exec_allow (exactly). 0 (also for other backends) or -FL_EINCOMPAT
 * with the reason in WHY. */
int agent_exec_check(const struct agent_config *cfg, const struct ota_manifest *m, char *why,
		     size_t why_len);

/* Acceptance tests of manifest M on the model in DIR. 0 or -FL_EACCEPT with
 * a reason in WHY. RET_Q (may be NULL) receives the quality signals of the
 * outputs (the version's baseline, docs/telemetry.md). */
struct tele_quality;
int agent_acceptance(const struct ota_manifest *m, const char *dir, struct tele_quality *ret_q,
		     char *why, size_t why_len);

/* The model file of a manifest: runtime.model, else its only file of the
 * backend's kind (.gguf; xgboost: .json / .ubj). -FL_EMISSING none,
 * -FL_EDUP several and no runtime.model. */
int agent_model_file(const struct ota_manifest *m, const char **ret_path);
/* The manifest's backend ("gguf" when it names none). */
const char *agent_backend_of(const struct ota_manifest *m);

/* `flotilla-agent run-model`: try a model before deploying it. */
int agent_run_model(int argc, char **argv);

/* Backends this agent can run (NULL-terminated). */
extern const char *const agent_backends[];

#endif
