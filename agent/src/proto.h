/* agentproto: the device side of docs/protocol.md as pure functions and
 * small state machines, shared by flotilla-agent (session.c, fetch.c) and
 * flotilla-sim (tests/sim, docs/scale.md). Nothing here touches a journal,
 * slots, SQLite, the disk or an MQTT client: callers hand in facts, bytes
 * and times, and publish what comes out. */
#ifndef FLOTILLA_AGENT_PROTO_H
#define FLOTILLA_AGENT_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cJSON;
struct ota_manifest;

#define PROTO_STATE_MAX (64u * 1024u) /* rendered state document */
#define PROTO_CMD_MAX (512u * 1024u)  /* cmd payload */
#define PROTO_STATE_MIN_INTERVAL_MS 1000 /* state publishes are coalesced to this */
#define PROTO_MODEL_NAME_MAX 64

/* ------------------------------------------------------------------ state */

/* What the device is (docs/protocol.md "state"). */
struct proto_device {
	const char *device;        /* client id = certificate CN */
	const char *agent;         /* agent version string */
	const char *arch;          /* "" when unknown */
	uint64_t ram_mb;
	const char *accelerators;  /* "a,b"; NULL or "" = none */
	const char *const *backends; /* NULL-terminated; NULL = none */
	const struct cJSON *labels; /* object or NULL ({}); copied */
};

struct proto_slot {
	const char *status;  /* "ready", "staging" or "empty" */
	const char *version; /* NULL or "": not shown */
	uint64_t sequence;
};

struct proto_install {
	const char *version, *state, *error; /* state: "FETCHING"... error may be NULL */
	bool progress;                       /* add the four counters below */
	uint64_t bytes_done, bytes_total, chunks_done, chunks_total;
};

struct proto_model {
	const char *name;
	char current;                       /* 'a', 'b' or 0 (null) */
	struct proto_slot slot[2];          /* a, b */
	const struct proto_install *install; /* NULL: none yet */
};

struct proto_state;

/* Begin a state document at wall time NOW_S. -EINVAL: no/invalid device id
 * (fl_name_valid, <= 64), no agent or arch, labels not an object. */
int proto_state_new(const struct proto_device *d, int64_t now_s, struct proto_state **ret);
/* Add one model. -EINVAL (document unchanged): invalid name, current not
 * 0/'a'/'b', unknown slot status, install without version or state, the
 * model already added. */
int proto_state_add_model(struct proto_state *s, const struct proto_model *m);
/* The document, unformatted (caller frees). -FL_ETOOBIG above PROTO_STATE_MAX. */
int proto_state_render(const struct proto_state *s, char **ret, size_t *ret_len);
void proto_state_free(struct proto_state *s); /* NULL accepted */
/* The retained last will / clean-stop document {"v":1,"device":ID,"online":false}
 * into BUF; its length, -EINVAL (bad id) or -FL_ETOOBIG (BUF too small). */
int proto_state_offline(const char *device, char *buf, size_t size);

/* --------------------------------------------------------------- commands */

enum proto_cmd_kind {
	PROTO_CMD_UNKNOWN = 0, /* a kind this agent does not know: counted as junk */
	PROTO_CMD_DEPLOY,
	PROTO_CMD_REVERT,
	PROTO_CMD_KEYRING,
	PROTO_CMD_PING,
};

#define PROTO_CMD_ID_MAX 128

struct proto_cmd {
	struct cJSON *root;  /* owns the strings below */
	const char *id;
	const char *kind_name;
	enum proto_cmd_kind kind;
	const char *envelope; /* deploy, keyring; NULL when absent */
	const char *model;    /* revert; NULL when absent */
	/* 0, or -FL_ESCHEMA when the kind's argument is missing or invalid
	 * (deploy/keyring without an envelope, revert without a valid model). */
	int arg_err;
};

/* Parse and validate one cmd payload: a JSON object of at most
 * PROTO_CMD_MAX bytes, only v, id, kind, envelope, model; v 1 (else
 * -FL_EUNSUPPORTED), id 1..PROTO_CMD_ID_MAX bytes, kind a string. Other
 * errors: fl_json_parse()'s, -FL_ESCHEMA, -EINVAL (NULL). *RET is written
 * only on success; free it with proto_cmd_free(). */
int proto_cmd_parse(const void *payload, size_t len, struct proto_cmd *ret);
void proto_cmd_free(struct proto_cmd *c);

/* The duplicate window: the last PROTO_CMD_IDS command ids (as 128-bit
 * SHA-256 prefixes: 1 KiB per device), so a redelivered command is dropped.
 * The agent also keeps them in its journal across restarts. */
#define PROTO_CMD_IDS 64
struct proto_cmd_ids {
	uint8_t h[PROTO_CMD_IDS][16];
	unsigned next, n;
};
/* 1 when ID is in the window, 0 when not; -EINVAL for an empty or too long id. */
int proto_cmd_ids_has(const struct proto_cmd_ids *w, const char *id);
/* Remember ID (the oldest goes when the window is full). 0 or -EINVAL. */
int proto_cmd_ids_add(struct proto_cmd_ids *w, const char *id);
/* has, else add: 1 duplicate, 0 new (now remembered), -EINVAL. */
int proto_cmd_ids_seen(struct proto_cmd_ids *w, const char *id);

/* What to do with a verified deploy of manifest M, given the device's facts
 * (the agent's order: replay, the running network install, another pending
 * install of the model, the current version). Compatibility is
 * ota_compat_check(), which runs before this. */
enum proto_deploy {
	PROTO_DEPLOY_START = 0,         /* begin a network install */
	PROTO_DEPLOY_SUPERSEDE,         /* cancel the running fetch of this model, then decide again */
	PROTO_DEPLOY_ALREADY_FETCHING,  /* the same release is being fetched: nothing */
	PROTO_DEPLOY_ALREADY_CURRENT,   /* it is the current version: publish state */
	PROTO_DEPLOY_REPLAY,            /* refused: older than the model's floor */
	PROTO_DEPLOY_BUSY,              /* refused: another model is being fetched */
	PROTO_DEPLOY_PENDING,           /* refused: another install of the model in progress */
};
struct proto_deploy_facts {
	uint64_t highest_sequence;   /* the model's anti-rollback floor (0: none) */
	const char *fetching_model;  /* the running network install's model; NULL: none */
	bool fetching_same;          /* ... and it is the same release as M */
	bool install_pending;        /* a non-terminal install of M's model */
	bool current_ready;          /* the current slot is ready ... */
	const char *current_version; /* ... with this version */
	uint64_t current_sequence;   /* ... and sequence */
};
/* An enum proto_deploy, or -EINVAL (no manifest, no facts). */
int proto_deploy_decide(const struct ota_manifest *m, const struct proto_deploy_facts *f);
/* The reason sent with a refusal ("deploy refused: ..."); NULL for the others. */
const char *proto_deploy_refusal(int decision);
/* The error code of a refusal (-FL_EREPLAY, -FL_EBUSY, -FL_ESTATE); 0 otherwise. */
int proto_deploy_err(int decision);

/* Rate limit of the events for deploys that do not verify (anyone who can
 * write the cmd topic could flood them): PROTO_REFUSE_EVENTS per minute. */
#define PROTO_REFUSE_EVENTS 20
struct proto_ratelimit {
	int64_t window_ms;
	int count;
};
/* true when one more event may go at NOW_MS (counted). */
bool proto_ratelimit_take(struct proto_ratelimit *rl, int64_t now_ms);

/* ------------------------------------------------------------ chunk fetch */

/* chunk/dat frames (docs/protocol.md "chunk/dat"): a 52-byte header
 * ("FLCK", version 1, status, id, offset, length) and up to PROTO_RANGE_MAX
 * bytes. Status 0 data, 1 not found, 2 past the end. */
#define PROTO_FRAME_HDR 52
#define PROTO_RANGE_MAX (256u * 1024u)
#define PROTO_FRAME_MAX (PROTO_FRAME_HDR + PROTO_RANGE_MAX)

struct proto_frame {
	int status;
	const uint8_t *id; /* 32 bytes, inside the frame */
	uint64_t off;
	const uint8_t *data;
	uint32_t len;
};
/* Check and split one frame (pointers into BUF). -FL_EPROTO: short, long,
 * bad magic/version/status, length mismatch, data with a non-zero status. */
int proto_frame_parse(const void *buf, size_t len, struct proto_frame *ret);

/* The request window (docs/protocol.md "Window"): chunk bytes asked for
 * and not yet answered, at most about one second of the measured delivery
 * rate, between 256 KiB and PROTO_FETCH_WINDOW_BYTES, and at most
 * PROTO_FETCH_WINDOW ranges; a new chunk/req goes out once a quarter of the
 * bytes (or a full request's worth of ranges) is free, with up to
 * PROTO_FETCH_REQ_ITEMS ranges. */
#define PROTO_FETCH_WINDOW_BYTES (2u << 20)
#define PROTO_FETCH_WINDOW 32
#define PROTO_FETCH_REQ_ITEMS 8

struct proto_range {
	uint8_t id[32];
	uint64_t off;
	uint32_t len;
};
/* {"v":1,"req":[{"id":..,"off":..,"len":..},...]} into BUF: its length, or
 * -EINVAL (N 0 or over PROTO_FETCH_REQ_ITEMS, len 0 or over
 * PROTO_RANGE_MAX), -FL_ETOOBIG (BUF too small). */
int proto_req_build(const struct proto_range *r, size_t n, char *buf, size_t size);

/* What the fetch engine needs from its owner: the agent's are the staging
 * slot on disk (ota_stage) and its chunk index cache; the simulator's are
 * in memory (chunks verified, not written). */
struct proto_fetch_ops {
	/* Publish one chunk/req payload: 0 or <0 (-FL_EBUSY: the publish window
	 * is full, retried after 20 ms; anything else after 200 ms). */
	int (*send)(void *ud, const void *req, size_t len);
	/* The next chunk still needed and not handed out, now marked in
	 * flight: 1 and ID, LEN; 0 none. */
	int (*next_missing)(void *ud, uint8_t id[32], uint32_t *len);
	/* Chunk ID in flight is not coming (timed out, refused, corrupted): hand it out again. */
	void (*release)(void *ud, const uint8_t id[32]);
	/* A chunk's payload: 0 stored; -FL_EHASH/-FL_ESIZE corrupted on the way
	 * (asked again); -FL_EPROTO not needed (a stray); other <0: fatal. */
	int (*put)(void *ud, const uint8_t id[32], const void *data, uint32_t len);
	/* Every chunk stored (nothing missing, nothing in flight)? */
	bool (*complete)(void *ud);
	/* A chunk index whose SHA-256 matched: 0 taken, <0 unusable (counted:
	 * PROTO_FETCH_IDX_BAD_MAX of those fail the fetch). */
	int (*index_done)(void *ud, const void *buf, size_t len);
};

struct proto_fetch_stats {
	uint64_t bytes_fetched; /* chunk/dat payload bytes taken in */
	uint64_t requests, timeouts, bad_chunks, bad_frames;
	uint64_t rtt_sum_ms, rtt_n; /* request -> answer of payload chunks */
};

#define PROTO_FETCH_IDX_BAD_MAX 3     /* chunk indexes that fail their hash */
#define PROTO_FETCH_NOT_FOUND_MAX 30 /* "not found" answers before giving up */

struct proto_fetch;

/* A fetch engine using OPS with UD, capped at BANDWIDTH_BPS (0: none).
 * -EINVAL without ops/send/next_missing/release/put/complete/index_done. */
int proto_fetch_new(const struct proto_fetch_ops *ops, void *ud, uint64_t bandwidth_bps,
		    int64_t now, struct proto_fetch **ret);
void proto_fetch_free(struct proto_fetch *f); /* NULL accepted */
/* Fetch the chunk index whose SHA-256 is ID (one at a time, 256 KiB ranges;
 * ops->index_done gets it). -EINVAL in the chunk phase or after a failure. */
int proto_fetch_want_index(struct proto_fetch *f, const uint8_t id[32]);
/* true while an index asked for with proto_fetch_want_index() is not done. */
bool proto_fetch_index_busy(const struct proto_fetch *f);
/* Every index is there: from now on chunks come from ops->next_missing. */
int proto_fetch_start_chunks(struct proto_fetch *f);
/* Send what is due at NOW. *RET_NEXT_MS: call again within this many ms
 * (-1: only on a frame). Returns 0 running, 1 every chunk stored and none
 * outstanding (chunk phase), <0 failed (proto_fetch_reason()). */
int proto_fetch_step(struct proto_fetch *f, int64_t now, int *ret_next_ms);
/* One chunk/dat message. 0 taken or ignored (a late duplicate), -FL_EPROTO
 * malformed (counted), other <0: the fetch failed (proto_fetch_reason()). */
int proto_fetch_on_frame(struct proto_fetch *f, const void *frame, size_t len, int64_t now);
/* The connection came back: nothing is outstanding any more (the owner
 * forgets its in-flight marks too), everything is asked for again. */
void proto_fetch_reconnected(struct proto_fetch *f);
/* The error and reason of a failed fetch (0 and "" while it is not). */
int proto_fetch_error(const struct proto_fetch *f);
const char *proto_fetch_reason(const struct proto_fetch *f);
void proto_fetch_stats(const struct proto_fetch *f, struct proto_fetch_stats *ret);

#endif
