/* Wire encoding of telemetry batches, the controller's strict decoder, and
 * the per-device gap tracker. Format (docs/telemetry.md):
 *
 *   plain:      the JSON envelope itself (first byte '{')
 *   compressed: "FLZ" 0x01, raw length (u32 big endian), zlib stream (RFC 1950)
 *
 *   envelope: {"v":1,"device":ID,"stream":HEX16,"first":SEQ,"last":SEQ,
 *              "n":COUNT,"records":[RECORD,...]}
 *
 * Records are ascending by seq; first/last are the lowest/highest seq in the
 * batch (the batch need not be contiguous: gaps are other stream's records,
 * acked records or drops). */
#ifndef FLOTILLA_TELE_WIRE_H
#define FLOTILLA_TELE_WIRE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <flotilla/tele_metrics.h>

#define TELE_WIRE_VERSION 1
#define TELE_WIRE_MAGIC "FLZ\x01"
#define TELE_WIRE_HEADER_BYTES 8
#define TELE_WIRE_MAX_PAYLOAD (256 * 1024)  /* one MQTT message */
#define TELE_WIRE_MAX_RAW (1024 * 1024)     /* decompressed envelope */
#define TELE_WIRE_MAX_RECORDS 10000
#define TELE_WIRE_MAX_RANGES 256            /* ranges in one dropped record */
#define TELE_RECORD_MAX_DEPTH 14            /* JSON nesting inside one record */
#define TELE_WIRE_COMPRESS_MIN 1024         /* batches this big or more go compressed */

/* One record of a batch: its sequence number and its JSON text. */
struct tele_wire_item {
	uint64_t seq;
	const char *body;
	size_t len;
};

/* The payload of one batch as it goes on the wire (docs/telemetry.md): the
 * envelope {"v","device","stream","first","last","n","records"} around
 * ITEMS[0..N) (N >= 1, ascending sequence numbers of one stream) of device
 * DEVICE and stream id STREAM_ID, compressed (tele_wire_compress) when the
 * JSON is at least COMPRESS_MIN bytes and compressing makes it smaller.
 * *RET (caller frees) and *RET_LEN: what to publish; *RET_RAW_LEN: the
 * JSON's length; *RET_COMPRESSED. The agent's outbox and the fleet
 * simulator both send what this renders. Errors: -EINVAL, -FL_ETOOBIG (JSON
 * over TELE_WIRE_MAX_RAW or more than TELE_WIRE_MAX_RECORDS), -ENOMEM. */
int tele_wire_batch(const char *device, const char *stream_id, const struct tele_wire_item *items,
		    size_t n, size_t compress_min, uint8_t **ret, size_t *ret_len,
		    size_t *ret_raw_len, bool *ret_compressed);

/* Compress RAW (LEN <= TELE_WIRE_MAX_RAW bytes) into the "FLZ\x01" framing.
 * Caller frees *ret with free(). Errors: -FL_ETOOBIG, -ENOMEM, -EIO. */
int tele_wire_compress(const void *raw, size_t len, uint8_t **ret, size_t *ret_len);

/* Decompress a framed payload into a NUL-terminated buffer of at most
 * MAX_RAW bytes (the declared length is checked before inflating and must
 * match exactly). Caller frees *ret. Errors: -FL_EFORMAT (bad framing,
 * corrupt or truncated stream, trailing bytes, length mismatch), -FL_ETOOBIG
 * (declared or actual size over MAX_RAW), -ENOMEM. */
int tele_wire_decompress(const uint8_t *buf, size_t len, size_t max_raw, char **ret,
			 size_t *ret_len);

enum tele_rec_type {
	TELE_REC_MODEL,   /* per-version metrics */
	TELE_REC_DEVICE,  /* per-device metrics */
	TELE_REC_EVENT,
	TELE_REC_DROPPED, /* drop report */
};

struct tele_rx_record {
	uint64_t seq;
	int64_t t;
	enum tele_rec_type type;
	const cJSON *json; /* the whole record, owned by the batch */
	/* TELE_REC_MODEL and TELE_REC_EVENT (model/version may be NULL for events) */
	const char *model;
	const char *version;
	/* TELE_REC_EVENT */
	enum tele_event_kind event_kind;
	const char *reason;
	/* TELE_REC_DROPPED: ranges[i][0..1] inclusive, and the totals */
	const uint64_t (*ranges)[2];
	size_t n_ranges;
	uint64_t dropped_count;
	uint64_t dropped_bytes;
};

struct tele_rx_batch {
	char device[65];
	char stream[17];
	uint64_t first;
	uint64_t last;
	size_t n;
	struct tele_rx_record *recs;
	bool was_compressed;
	/* private */
	cJSON *root_;
	uint64_t (*ranges_)[2];
};

struct tele_wire_limits {
	size_t max_payload; /* 0 = TELE_WIRE_MAX_PAYLOAD */
	size_t max_raw;     /* 0 = TELE_WIRE_MAX_RAW */
	size_t max_records; /* 0 = TELE_WIRE_MAX_RECORDS */
};

/* Decode and validate a batch payload strictly: framing, sizes, envelope,
 * every record's type, fields and ranges (unknown fields are refused).
 * LIMITS may be NULL. Caller frees *ret with tele_rx_batch_free().
 * Errors: -FL_ETOOBIG, -FL_EFORMAT (framing/compression), -FL_EINVAL_JSON,
 * -FL_ETOODEEP, -FL_ESCHEMA, -FL_ERANGE, -FL_EUNSUPPORTED (version), -ENOMEM.
 * RET_ERR (may be NULL, ERR_LEN bytes) gets a short description of the first
 * problem, e.g. "records[3].latency_us: wrong type". */
int tele_wire_decode(const uint8_t *buf, size_t len, const struct tele_wire_limits *limits,
		     struct tele_rx_batch **ret, char *ret_err, size_t err_len);
void tele_rx_batch_free(struct tele_rx_batch *b);

/* Validate one record object as the decoder does (used by the outbox before
 * storing and by tests). Fills *ret (may be NULL) without ranges. */
int tele_wire_check_record(const cJSON *rec, struct tele_rx_record *ret, char *ret_err,
			   size_t err_len);

/* -------------------------------------------------------------- gap tracker
 * Per device: which sequence numbers in [floor, highest seen] have neither
 * arrived nor been reported dropped. Memory is bounded by MAX_RANGES covered
 * ranges; a record arriving twice is fine. Not thread-safe. */
struct tele_gaps;

/* FLOOR is the first seq expected (1 for a new device). Caller frees with
 * tele_gaps_free(). */
int tele_gaps_new(uint64_t floor, size_t max_ranges, struct tele_gaps **ret);
void tele_gaps_free(struct tele_gaps *g);
/* Seqs FIRST..LAST (inclusive) arrived / were reported dropped.
 * -EINVAL when FIRST > LAST, FIRST is 0 or LAST >= 2^53, -FL_ETOOBIG (state unchanged) when
 * the set would need more than max_ranges ranges. */
int tele_gaps_received(struct tele_gaps *g, uint64_t first, uint64_t last);
int tele_gaps_dropped(struct tele_gaps *g, uint64_t first, uint64_t last);
/* Feed a whole decoded batch. A batch whose stream id differs from the one
 * seen before resets the tracker (floor 1): the device lost its outbox. */
int tele_gaps_note_batch(struct tele_gaps *g, const struct tele_rx_batch *b);
/* Everything below SEQ counts as settled (lost or not): frees memory. */
void tele_gaps_settle_below(struct tele_gaps *g, uint64_t seq);
/* Missing ranges, ascending, at most MAX into OUT; returns their total number
 * (may exceed MAX). */
size_t tele_gaps_missing(const struct tele_gaps *g, uint64_t (*out)[2], size_t max);
uint64_t tele_gaps_highest(const struct tele_gaps *g);
uint64_t tele_gaps_dropped_total(const struct tele_gaps *g);

#endif
