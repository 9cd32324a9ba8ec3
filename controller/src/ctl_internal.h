/* Private state of struct ctl, shared by the core's source files. */
#ifndef FLOTILLA_CTL_INTERNAL_H
#define FLOTILLA_CTL_INTERNAL_H

#include <pthread.h>

#include <flotilla/tele_wire.h>
#include <flotilla/trust.h>

#include "ctl.h"
#include "health.h" /* ctl_health_note(), called by ingest.c */

struct pending_rec {
	char device[CTL_DEVICE_ID_MAX + 1];
	char stream[17];
	char kind[48];
	uint64_t seq;
	int64_t ts;
	char *json;
};

struct dev_gaps {
	struct dev_gaps *next; /* hash chain */
	char id[CTL_DEVICE_ID_MAX + 1];
	char stream[17];
	struct tele_gaps *g;
	bool dirty;
	struct dev_gaps *next_dirty;
	int64_t noted_ms; /* ingest.c: last batch; holes rechecked until */
	bool recheck;     /* ... on c->recheck */
	struct dev_gaps *next_recheck;
};

#define CTL_GAP_BUCKETS 4096

struct ctl_ack; /* ingest.c: confirmations waiting for the MQTT session */

struct ctl {
	pthread_mutex_t push_lock; /* one bundle push at a time (trust store is single-owner) */
	pthread_mutex_t lock; /* guards everything below */
	char *data_dir;
	char *chunks_dir;
	char *tmp_dir;
	struct ctl_store *store;
	struct ota_trust *trust; /* NULL: unverified */
	size_t batch_records;
	int64_t flush_ms;
	size_t max_pending;
	uint64_t max_bundle_bytes;

	struct pending_rec *pending;
	size_t n_pending;
	int64_t pending_since_ms;

	struct dev_gaps *gaps[CTL_GAP_BUCKETS];
	size_t n_gaps;
	struct dev_gaps *dirty;
	struct dev_gaps *recheck; /* ingest.c: holes to check against the store */
	int64_t recheck_at_ms;
	int64_t engine_since_s; /* rollout.c: leads the engine since (0: does not) */
	struct ctl_ack *acks, **acks_tail; /* ingest.c */
	size_t n_acks;

	struct ctl_counters cnt;
};

/* ingest.c */
int ctl_ingest_flush_locked(struct ctl *c);
void ctl_ingest_free(struct ctl *c);

#endif
