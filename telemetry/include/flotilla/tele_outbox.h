/* The on-device store-and-forward outbox (SQLite, WAL).
 *
 * Every record gets a per-device sequence number (monotonic, persisted in the
 * same transaction as the record, never reused, also across crashes) and is
 * committed before the push call returns: one fsync'd transaction per event,
 * one per batch of metric records. A record leaves the outbox only when the
 * transport acknowledged it:
 *
 *   tele_outbox_take(ob, TELE_STREAM_EVENTS, max_bytes, &batch)
 *   publish batch->data (QoS 1)   ->   tele_outbox_ack(ob, batch->seqs, n)
 *
 * Records taken but not acknowledged are not offered again until
 * tele_outbox_rewind() (call it after every reconnect) or a reopen.
 *
 * The outbox is bounded (max_bytes / max_records): when full it drops the
 * OLDEST METRICS first and never events; drops are reported by a "dropped"
 * record (seq ranges, count, bytes) that itself travels in the metrics stream
 * and is never dropped. Events may overflow the bound by up to one bound
 * (hard limit 2x); beyond that an event push fails with -FL_ENOSPACE.
 *
 * Failpoints: tele.outbox.push.before_commit, tele.outbox.push.after_commit,
 * tele.outbox.ack.before_commit, tele.outbox.drop.before_commit.
 *
 * A handle is not thread-safe: use it from one thread (the agent's loop). */
#ifndef FLOTILLA_TELE_OUTBOX_H
#define FLOTILLA_TELE_OUTBOX_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <flotilla/tele_metrics.h>

struct tele_outbox;

#define TELE_RECORD_MAX_BYTES (64 * 1024) /* one serialized record */
/* Smallest max_bytes for tele_outbox_take(): one record always fits. */
#define TELE_BATCH_MIN_BYTES (TELE_RECORD_MAX_BYTES + 512)

struct tele_outbox_opts {
	const char *device_id;    /* fl_name_valid(id, TELE_DEVICE_ID_MAX) */
	uint64_t max_bytes;       /* bound on stored record bytes; 0 = 16 MiB */
	uint64_t max_records;     /* bound on stored records; 0 = 100000 */
	size_t compress_min_bytes; /* batches below this go as plain JSON; 0 = 1024 */
};

/* Open (creating if needed) the outbox tables in the SQLite database at PATH
 * (may be the agent's state.db: tables are named tele_*). Caller frees with
 * tele_outbox_close(). Errors: -EINVAL, -FL_EDB, -ENOMEM. */
int tele_outbox_open(const char *path, const struct tele_outbox_opts *opts,
		     struct tele_outbox **ret);
void tele_outbox_close(struct tele_outbox *ob);

enum tele_class {
	TELE_CLASS_METRIC = 0,  /* droppable */
	TELE_CLASS_EVENT = 1,   /* never dropped */
	TELE_CLASS_DROPPED = 2, /* drop report; never dropped */
};

/* Store one event record BODY (from tele_record_event()); it is committed and
 * fsync'd before return. *ret_seq (may be NULL) gets its sequence number.
 * Errors: -EINVAL (BODY not an object or has "seq"), -FL_ETOOBIG (record over
 * TELE_RECORD_MAX_BYTES), -FL_ENOSPACE (hard limit), -FL_EDB, -FL_EFAILPOINT. */
int tele_outbox_push_event(struct tele_outbox *ob, const cJSON *body, uint64_t *ret_seq);

/* Store N metric record BODIES in one transaction (oldest metrics are dropped
 * first to make room; if there is still no room, the new ones are dropped and
 * reported). Returns the number of records stored (<= N). On error nothing is
 * stored. *ret_first_seq (may be NULL) gets the first sequence assigned. */
int tele_outbox_push_metrics(struct tele_outbox *ob, const cJSON *const *bodies, size_t n,
			     uint64_t *ret_first_seq);

/* A batch taken for publishing. data is the wire payload (docs/telemetry.md),
 * seqs the records it holds (ascending). Free with tele_batch_free(). */
struct tele_batch {
	uint8_t *data;
	size_t len;
	bool compressed;
	uint64_t *seqs;
	size_t n_seqs;
	size_t raw_len; /* uncompressed JSON size */
};
void tele_batch_free(struct tele_batch *b);

enum tele_stream {
	TELE_STREAM_EVENTS = 0,  /* events -> flotilla/v1/dev/<id>/event */
	TELE_STREAM_METRICS = 1, /* metrics + drop reports -> .../tele */
};

/* Take the oldest unsent records of STREAM whose encoded payload fits in
 * MAX_BYTES (TELE_BATCH_MIN_BYTES .. TELE_WIRE_MAX_PAYLOAD). Returns 1 and
 * *ret when a batch was made, 0 when nothing is pending (*ret untouched).
 * Taken records are in flight until acked or rewound.
 * Errors: -EINVAL, -FL_EDB, -ENOMEM. */
int tele_outbox_take(struct tele_outbox *ob, enum tele_stream stream, size_t max_bytes,
		     struct tele_batch **ret);

/* The broker acknowledged the records SEQS[0..N): delete them (one
 * transaction). Unknown or already acked seqs are ignored. Returns the number
 * deleted. Errors: -FL_EDB, -FL_EFAILPOINT (nothing deleted). */
int tele_outbox_ack(struct tele_outbox *ob, const uint64_t *seqs, size_t n);

/* Offer every unacknowledged record again (after a reconnect). */
void tele_outbox_rewind(struct tele_outbox *ob);

struct tele_outbox_stats {
	uint64_t records;        /* stored */
	uint64_t bytes;          /* stored record bytes */
	uint64_t events;         /* stored events */
	uint64_t next_seq;       /* next sequence number to be assigned */
	uint64_t dropped_records; /* metrics dropped since the outbox was created */
	uint64_t dropped_bytes;
};
int tele_outbox_stats(struct tele_outbox *ob, struct tele_outbox_stats *ret);

/* Random id (16 hex chars) made when the outbox was created; it changes only
 * if the database is lost, so the controller can tell a restarted sequence
 * from a replay. Valid while OB is open. */
const char *tele_outbox_stream_id(const struct tele_outbox *ob);

/* Baselines (quality measured during acceptance tests) per model version,
 * stored in the same database. put replaces; get returns -ENOENT when none.
 * BASELINE is an object from tele_quality_to_json(); get's *ret: caller frees
 * with cJSON_Delete(). */
int tele_outbox_put_baseline(struct tele_outbox *ob, const char *model, const char *version,
			     const cJSON *baseline);
int tele_outbox_get_baseline(struct tele_outbox *ob, const char *model, const char *version,
			     cJSON **ret);

#endif
