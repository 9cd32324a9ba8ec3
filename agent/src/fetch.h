/* Network install: pull a verified manifest's files over chunk/req +
 * chunk/dat (docs/protocol.md) into the inactive slot, then test and switch
 * like a local install. Driven by the MQTT session (session.c). */
#ifndef FLOTILLA_AGENT_FETCH_H
#define FLOTILLA_AGENT_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent.h"

/* The request window (docs/protocol.md "Window"): chunk bytes asked for
 * and not yet answered, at most about one second of the measured delivery
 * rate, between 256 KiB and AGENT_FETCH_WINDOW_BYTES, and at most
 * AGENT_FETCH_WINDOW ranges; a new chunk/req goes out once a quarter of the
 * bytes (or a full request's worth of ranges) is free, with up to
 * AGENT_FETCH_REQ_ITEMS ranges. A restart or reconnect re-fetches at most
 * one window. */
#define AGENT_FETCH_WINDOW_BYTES (2u << 20)
#define AGENT_FETCH_WINDOW 32
#define AGENT_FETCH_REQ_ITEMS 8
/* chunk/req publishes not yet acknowledged by the broker (the session's
 * publish window adds room for state and events; mosquitto's receive
 * maximum is 20). */
#define AGENT_FETCH_REQS_INFLIGHT 8

struct agent_fetch;

/* Publish one chunk/req payload; 0 or negative (-FL_EBUSY, -ENOTCONN...). */
typedef int (*agent_fetch_send_fn)(void *ud, const void *req, size_t len);

struct agent_fetch_stats {
	uint64_t bytes_fetched; /* chunk/dat payload bytes taken in by this process */
	uint64_t bytes_local; /* copied from the active slot */
	uint64_t bytes_resumed; /* already staged when this process started */
	uint64_t bytes_recovered; /* of those, read back from the .part files (written,
				   * not yet recorded when the previous process ended) */
	uint64_t bytes_done, bytes_total, chunks_done, chunks_total;
	uint64_t requests, timeouts, bad_chunks, bad_frames;
	uint64_t rtt_sum_ms, rtt_n; /* request -> answer of payload chunks */
	int64_t started_ms, done_ms;
};

/* Start installing verified manifest M (its envelope ENV) for the model of
 * slots S: journals FETCHING with the envelope on the staging slot and clears
 * that slot. Takes M and S on success. */
int agent_fetch_begin(struct agent *a, const char *env, size_t env_len, struct ota_manifest *m,
		      struct ota_slots *s, struct agent_fetch **ret);
/* Continue a journaled network FETCHING after a restart (its verified chunks
 * are kept). On error the install is ended REJECTED. */
int agent_fetch_resume(struct agent *a, const struct install_rec *rec, struct agent_fetch **ret);
/* Send what is due; *RET_NEXT_MS: call again within this many ms (-1: only
 * on a frame). Returns 1 when the install has ended (agent_fetch_result). */
int agent_fetch_step(struct agent_fetch *f, int64_t now, agent_fetch_send_fn send, void *ud,
		     int *ret_next_ms);
/* One chunk/dat message. -FL_EPROTO for a malformed frame (counted). */
int agent_fetch_on_frame(struct agent_fetch *f, const void *frame, size_t len, int64_t now);
/* The connection came back: everything in flight is asked for again. */
void agent_fetch_reconnected(struct agent_fetch *f);
/* Superseded: remove the staged work, end REJECTED with REASON. */
int agent_fetch_cancel(struct agent_fetch *f, const char *reason);
/* 1 while running, else the outcome (0 installed, <0 refused/failed). */
int agent_fetch_result(const struct agent_fetch *f);
const char *agent_fetch_model(const struct agent_fetch *f);
/* Same release (name, version, sequence, files) as M. */
bool agent_fetch_same(const struct agent_fetch *f, const struct ota_manifest *m);
void agent_fetch_stats(const struct agent_fetch *f, struct agent_fetch_stats *ret);
/* Sync progress and free (the work is kept for a resume). NULL accepted. */
void agent_fetch_free(struct agent_fetch *f);

#endif
