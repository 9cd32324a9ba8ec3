/* The agent's telemetry glue (docs/telemetry.md "Agent"): owns the outbox,
 * turns install events into event records, accumulates per-version serving
 * metrics (local API requests, runner restarts, quality signals), collects
 * device metrics every telemetry.interval, watches for low disk and clock
 * jumps, and publishes both streams (QoS 1, deleted on PUBACK).
 *
 * Threads: everything runs on the agent loop except agent_report_observe(),
 * which the local API calls on its request threads (it only takes the
 * report's lock and never touches the outbox). */
#ifndef FLOTILLA_AGENT_REPORT_H
#define FLOTILLA_AGENT_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct agent;
struct agent_config;
struct fl_config;
struct fl_mqtt;
struct rt_runner;
struct rt_serve_obs;
struct rt_predict_result;
struct tele_quality;

/* Defaults of the [telemetry] settings. */
#define REPORT_DEFAULT_INTERVAL_S 60
#define REPORT_DEFAULT_DISK_LOW (256u << 20)
#define REPORT_DEFAULT_CLOCK_JUMP_S 60

/* Read [telemetry] (interval, outbox_max_bytes, outbox_max_records,
 * include_content, disk_low, clock_jump, resend_after) into CFG.
 * -FL_ECONFIG with ERR. */
int agent_report_config(const struct fl_config *c, struct agent_config *cfg, const char *path,
			char *err, size_t err_len);

/* Open the outbox (STATE_DIR/state.db) and hook A's events. A->report is
 * NULL when it cannot be opened (logged; the agent runs on). */
int agent_report_open(struct agent *a);
void agent_report_close(struct agent *a);

/* Agent loop, about once a second: runner crashes, disk, clock, and the
 * period's metrics when telemetry.interval has passed. */
void agent_report_tick(struct agent *a);
/* Write the period's metrics now (tests, shutdown). */
void agent_report_flush(struct agent *a);

/* MQTT session: publish what is pending on M (one batch per stream in
 * flight); after every (re)connect; for every publish outcome (returns true
 * when TOKEN was ours). */
void agent_report_pump(struct agent *a, struct fl_mqtt *m);
void agent_report_connected(struct agent *a);
bool agent_report_published(struct agent *a, uint64_t token, bool ok);
/* A confirmation from the controller (.../<id>/tele/ack): the records it
 * names were committed there and leave the outbox. Junk is counted. */
void agent_report_on_ack(struct agent *a, const void *payload, size_t len);

/* Serving: RUNNER now serves MODEL at VERSION (NULL runner: MODEL is no
 * longer served). Call before the previous runner is stopped. */
void agent_report_runner(struct agent *a, const char *model, const char *version,
			 struct rt_runner *runner);
/* rt_serve_ops.observe: one finished request (any thread). */
void agent_report_observe(void *ud, struct rt_runner *runner, const struct rt_serve_obs *obs);

/* Install engine: the figures of a failing trial, attached to the next
 * trial_failed event of MODEL. */
void agent_report_trial(struct agent *a, const char *model, uint32_t crashes,
			uint32_t crash_limit, uint32_t failed, uint32_t requests,
			double max_error_rate);

/* Quality baseline (docs/telemetry.md "Quality and drift"): the signals Q
 * measured while the acceptance tests of MODEL at VERSION ran, stored in the
 * outbox database (STATE_DIR/state.db, survives restarts) before the switch;
 * model records of that version then carry drift against it. Nothing when
 * Q observed nothing or telemetry is off. */
void agent_report_baseline(struct agent *a, const char *model, const char *version,
			   const struct tele_quality *q);
/* Classifier signals of one prediction P (class mix, confidence) into Q;
 * false when P has no class (regression). Serving and acceptance share it. */
bool agent_quality_observe_predict(struct tele_quality *q, const struct rt_predict_result *p);

#endif
