/* The controller core (docs/controller.md): registry, telemetry ingestion and
 * chunk store over one struct ctl_store. The MQTT glue and the HTTP API call
 * these functions; none of them prints or exits.
 *
 * Thread-safety: every function takes the struct's lock (one mutex), so the
 * MQTT loop and the HTTP threads may call them concurrently. The slow part of
 * a bundle push (hashing, writing chunks) runs outside the lock. */
#ifndef FLOTILLA_CTL_H
#define FLOTILLA_CTL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define CTL_STATE_MAX_BYTES (64 * 1024)     /* docs/protocol.md */
#define CTL_CHUNK_READ_MAX (256 * 1024)     /* one chunk/dat range */
#define CTL_DEFAULT_BATCH_RECORDS 5000
#define CTL_DEFAULT_FLUSH_MS 200
#define CTL_DEFAULT_MAX_PENDING 100000
#define CTL_MAX_TRACKED_DEVICES 200000
#define CTL_GAPS_MAX_RANGES 256
#define CTL_RECENT_EVENTS 20
#define CTL_LABELS_MAX 64
#define CTL_LABEL_VALUE_MAX 256
#define CTL_MODELS_MAX 64
#define CTL_HW_LIST_MAX 16

struct ctl_opts {
	const char *data_dir;        /* required; created when absent */
	const char *trust_dir;       /* NULL: bundles are stored "unverified" */
	const char *store_dsn;       /* libpq conninfo: PostgreSQL store; NULL: SQLite
				      * in DATA_DIR/controller.db */
	size_t batch_records;        /* commit when this many are pending (0: default) */
	int64_t flush_ms;            /* ctl_tick() commits older pending records (0: default) */
	size_t max_pending;          /* refuse batches past this (0: default) */
	uint64_t max_bundle_bytes;   /* 0: OTA_BUNDLE_MAX_TOTAL_BYTES */
};

/* Counters since start (for /metrics). */
struct ctl_counters {
	uint64_t state_ok;
	uint64_t state_offline;
	uint64_t state_refused;
	uint64_t tele_batches;
	uint64_t tele_refused;
	uint64_t tele_records;     /* accepted into the pending list */
	uint64_t tele_inserted;    /* committed new rows */
	uint64_t tele_duplicates;  /* (device, stream, seq) already stored */
	uint64_t tele_commits;
	uint64_t tele_commit_errors;
	uint64_t bundles_added;
	uint64_t bundles_existing;
	uint64_t bundles_refused;
	uint64_t chunks_written;
	uint64_t chunk_reads;
};

struct ctl;

/* Open DATA_DIR/controller.db (migrating it) and DATA_DIR/chunks/. With a
 * TRUST_DIR, its roots ("*.pem", "threshold") and keyring
 * (keyring.dsse.json) are loaded now: a bad trust dir fails the open.
 * Caller frees with ctl_free(). Errors: -EINVAL, store and trust errors,
 * -errno. */
int ctl_open(const struct ctl_opts *opts, struct ctl **ret);
/* Commit pending telemetry, then free everything (NULL is fine). */
void ctl_free(struct ctl *c);

/* The store (owned by C) for tests; callers must not use it concurrently. */
struct ctl_store *ctl_get_store(struct ctl *c);
void ctl_get_counters(struct ctl *c, struct ctl_counters *ret);

/* ---------------------------------------------------------------- registry
 * A state message from flotilla/v1/dev/<DEVICE_ID>/state (docs/protocol.md).
 * Parsed strictly: at most CTL_STATE_MAX_BYTES, v == 1, "device" equal to
 * DEVICE_ID, no unknown members, every field typed and bounded. A full state
 * upserts the device and replaces its model list in one transaction; the
 * last will ({"v":1,"device":ID,"online":false}) marks it offline.
 * Anything refused is counted (state_refused) and changes nothing.
 * Errors: -FL_ETOOBIG, -FL_EINVAL_JSON, -FL_ETOODEEP, -FL_ESCHEMA, -FL_ERANGE,
 * -FL_EUNSUPPORTED (v), -FL_EPROTO (device mismatch or bad id), -FL_EDB. */
int ctl_registry_on_state(struct ctl *c, const char *device_id, const void *json, size_t len);

/* ---------------------------------------------------------------- telemetry
 * A batch from .../<DEVICE_ID>/event or .../tele: decoded strictly with
 * tele_wire_decode(); the batch's device must be DEVICE_ID. Its records go to
 * a pending list that is committed in one transaction (many batches per
 * transaction) when batch_records are pending, on ctl_ingest_flush(), or by
 * ctl_tick() after flush_ms. Ingestion is idempotent on (device, stream,
 * seq). The per-device gap tracker notes every batch; drops the device
 * reports are not gaps. Returns the number of records taken. Errors: the
 * decoder's (-FL_ETOOBIG, -FL_EFORMAT, -FL_ESCHEMA, ...), -FL_EPROTO (device
 * mismatch), -FL_EBUSY (pending list full: the store is failing), -ENOMEM;
 * a refused batch is counted (tele_refused) and changes nothing. */
int ctl_ingest_batch(struct ctl *c, const char *device_id, const void *payload, size_t len);
/* Commit everything pending. Returns the number of new rows, or -FL_EDB
 * (the records stay pending and are retried). */
int ctl_ingest_flush(struct ctl *c);
/* Periodic work (call every ~100 ms): commits pending records older than
 * flush_ms. Returns what ctl_ingest_flush() returns, 0 when nothing to do. */
int ctl_tick(struct ctl *c);
/* Confirmations of committed telemetry (docs/telemetry.md "Confirmation"):
 * calls FN with each queued (device, JSON payload for .../<id>/tele/ack) in
 * order and forgets those FN took (0); when FN returns < 0 (publish window
 * full) that one and the rest stay queued. At most CTL_ACKS_MAX are queued;
 * more are dropped (the device sends its records again and they are
 * confirmed then). */
#define CTL_ACKS_MAX 8192
typedef int (*ctl_ack_fn)(void *ud, const char *device, const char *json, size_t len);
void ctl_ingest_take_acks(struct ctl *c, ctl_ack_fn fn, void *ud);

/* ---------------------------------------------------------------- chunks
 * Add the bundle tar at PATH: open it with ota_bundle_open() (signatures
 * checked against the trust dir when configured; else parsed only and
 * recorded as unverified), store every distinct payload chunk, every chunk
 * index blob and the manifest envelope content-addressed under
 * DATA_DIR/chunks/<2 hex>/<64 hex> (temp file, fsync, rename), then record
 * the bundle and an audit entry (ACTOR) in the store.
 * Returns 1 when added, 0 when the same bundle (same envelope) was already
 * there. RET_INFO (may be NULL; caller frees with cJSON_Delete()) describes
 * the bundle. Errors: bundle errors (-FL_ETAR, -FL_EHASH, -FL_EBADSIG, ...),
 * -EEXIST (model+version or model+sequence taken by another envelope),
 * -FL_EDB, -errno. On error the store is unchanged (chunk files already
 * written stay: they are content addressed and harmless). */
int ctl_chunks_add_bundle(struct ctl *c, const char *path, const char *actor, cJSON **ret_info);

/* Read LEN (<= CTL_CHUNK_READ_MAX) bytes at OFF of object ID (SHA-256) into
 * BUF; *RET_N gets the byte count (short only at the object's end).
 * Errors: -ENOENT (no such object), -EINVAL (range outside the object or
 * LEN too big), -errno. */
int ctl_chunks_read(struct ctl *c, const uint8_t id[32], uint64_t off, size_t len, void *buf,
		    size_t *ret_n);
/* chunk/req -> chunk/dat (docs/protocol.md): parse the request REQ (JSON, at
 * most CTL_CHUNK_REQ_MAX_BYTES, v 1, 1..CTL_CHUNK_REQ_MAX_ITEMS items of
 * {"id": 64 hex, "off": N, "len": 1..262144}, nothing else) strictly, then
 * call EMIT once per item with its binary answer frame (52-byte header:
 * "FLCK", version 1, status 0 ok / 1 not found / 2 bad range, object id,
 * offset, data length (0 unless ok); then the data). The frame belongs to the callee only during
 * the call. Returns the number of frames emitted. Errors: -FL_ETOOBIG,
 * -FL_EINVAL_JSON, -FL_ESCHEMA, -FL_ERANGE, -FL_EUNSUPPORTED (nothing
 * emitted), or EMIT's negative return (stops). */
#define CTL_CHUNK_REQ_MAX_BYTES 4096
#define CTL_CHUNK_REQ_MAX_ITEMS 8
#define CTL_CHUNK_FRAME_HEADER 52
typedef int (*ctl_chunk_emit_fn)(void *userdata, const uint8_t *frame, size_t len);
int ctl_chunks_serve(struct ctl *c, const void *req, size_t len, ctl_chunk_emit_fn emit,
		     void *userdata);

/* Size of object ID; -ENOENT. */
int ctl_chunks_size(struct ctl *c, const uint8_t id[32], uint64_t *ret);

/* ---------------------------------------------------------------- queries
 * JSON for the API (caller frees with cJSON_Delete()); see docs/api.md. */
int ctl_devices_list(struct ctl *c, const struct ctl_device_filter *f, cJSON **ret);
int ctl_device_get(struct ctl *c, const char *id, cJSON **ret); /* -ENOENT */
int ctl_bundles_list(struct ctl *c, cJSON **ret);
/* Prometheus text exposition; caller frees with free(). */
int ctl_metrics_text(struct ctl *c, char **ret);
/* Record an audit entry. */
int ctl_audit(struct ctl *c, const char *actor, const char *action, const char *reason);

/* ---------------------------------------------------------------- commands
 * cmd payloads (docs/protocol.md "cmd"). Each gets a fresh id "c-" + 32 hex
 * (128 random bits) in RET_ID. The JSON (caller frees) is at most
 * CTL_CMD_MAX_BYTES. */
#define CTL_CMD_MAX_BYTES (512 * 1024)
#define CTL_CMD_ID_SIZE 35 /* "c-" + 32 hex + NUL */
#define CTL_VERSION_MAX 64

/* A deploy of the pushed bundle MODEL VERSION: {"v":1,"id":..,"kind":"deploy",
 * "envelope":"<the stored envelope>"}. Errors: -EINVAL (MODEL not a valid
 * name, VERSION empty, longer than CTL_VERSION_MAX or with blanks/control
 * characters), -ENOENT (no such bundle), -FL_ETOOBIG (envelope too large for
 * one cmd), -FL_EDB, -ENOMEM, -errno (no randomness). */
int ctl_cmd_deploy(struct ctl *c, const char *model, const char *version,
		   char ret_id[CTL_CMD_ID_SIZE], char **ret_json);
/* A revert of MODEL to its previous slot: {"v":1,"id":..,"kind":"revert",
 * "model":MODEL}. Errors: -EINVAL (bad name), -ENOMEM, -errno. */
int ctl_cmd_revert(const char *model, char ret_id[CTL_CMD_ID_SIZE], char **ret_json);
/* True when S is an acceptable version string (see ctl_cmd_deploy()). */
bool ctl_version_valid(const char *s);

#endif
