/* Telemetry ingestion: strict decode, pending list, batched commits, gaps. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/util.h>

#include "ctl_internal.h"

#define MISSING_SAMPLE 64 /* ranges summed for the missing-seq count */

static size_t hash_id(const char *s)
{
	size_t h = 5381;
	for (; *s; s++)
		h = h * 33 + (unsigned char)*s;
	return h % CTL_GAP_BUCKETS;
}

/* The tracker of device ID (created on first use, floor from the store). NULL
 * when the table is full or out of memory: gaps are then not tracked. */
static struct dev_gaps *gaps_for(struct ctl *c, const char *id)
{
	size_t h = hash_id(id);
	for (struct dev_gaps *d = c->gaps[h]; d; d = d->next)
		if (!strcmp(d->id, id))
			return d;
	if (c->n_gaps >= CTL_MAX_TRACKED_DEVICES)
		return NULL;
	struct dev_gaps *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	fl_strlcpy(d->id, id, sizeof(d->id));
	/* After a restart, continue above what was already seen. */
	uint64_t floor = 1, highest = 0;
	if (c->store->ops->gaps_get(c->store, id, d->stream, &highest) == 0)
		floor = highest + 1;
	else
		d->stream[0] = 0;
	if (tele_gaps_new(floor, CTL_GAPS_MAX_RANGES, &d->g) < 0) {
		free(d);
		return NULL;
	}
	d->next = c->gaps[h];
	c->gaps[h] = d;
	c->n_gaps++;
	return d;
}

void ctl_ingest_free(struct ctl *c)
{
	for (size_t i = 0; i < c->n_pending; i++)
		free(c->pending[i].json);
	c->n_pending = 0;
	for (size_t h = 0; h < CTL_GAP_BUCKETS; h++) {
		struct dev_gaps *d = c->gaps[h];
		while (d) {
			struct dev_gaps *n = d->next;
			tele_gaps_free(d->g);
			free(d);
			d = n;
		}
		c->gaps[h] = NULL;
	}
	c->n_gaps = 0;
	c->dirty = NULL;
}

static void kind_of(const struct tele_rx_record *x, char *out, size_t n)
{
	switch (x->type) {
	case TELE_REC_MODEL:
		fl_strlcpy(out, "model", n);
		break;
	case TELE_REC_DEVICE:
		fl_strlcpy(out, "device", n);
		break;
	case TELE_REC_DROPPED:
		fl_strlcpy(out, "dropped", n);
		break;
	case TELE_REC_EVENT:
		fl_snprintf(out, n, "event:%s", tele_event_kind_name(x->event_kind));
		break;
	}
}

static int ingest(struct ctl *c, const char *id, const void *payload, size_t len)
{
	if (!id || !fl_name_valid(id, CTL_DEVICE_ID_MAX))
		return -FL_EPROTO;
	if (!payload || len > TELE_WIRE_MAX_PAYLOAD)
		return -FL_ETOOBIG;
	struct tele_rx_batch *b = NULL;
	int r = tele_wire_decode(payload, len, NULL, &b, NULL, 0);
	if (r < 0)
		return r;
	if (strcmp(b->device, id)) {
		tele_rx_batch_free(b);
		return -FL_EPROTO;
	}
	/* Render outside the lock; a failure leaves nothing behind. */
	struct pending_rec *recs = calloc(b->n ? b->n : 1, sizeof(*recs));
	if (!recs) {
		tele_rx_batch_free(b);
		return -ENOMEM;
	}
	for (size_t i = 0; i < b->n; i++) {
		const struct tele_rx_record *x = &b->recs[i];
		struct pending_rec *p = &recs[i];
		fl_strlcpy(p->device, id, sizeof(p->device));
		fl_strlcpy(p->stream, b->stream, sizeof(p->stream));
		kind_of(x, p->kind, sizeof(p->kind));
		p->seq = x->seq;
		p->ts = x->t;
		if (!(p->json = fl_json_print(x->json))) {
			r = -ENOMEM;
			break;
		}
	}
	size_t n = b->n;
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			free(recs[i].json);
		free(recs);
		tele_rx_batch_free(b);
		return r;
	}

	pthread_mutex_lock(&c->lock);
	if (c->n_pending + n > c->max_pending) {
		/* The store keeps failing; refuse rather than grow. */
		r = ctl_ingest_flush_locked(c);
		if (r >= 0 && c->n_pending + n > c->max_pending)
			r = -FL_EBUSY;
		if (r < 0) {
			pthread_mutex_unlock(&c->lock);
			for (size_t i = 0; i < n; i++)
				free(recs[i].json);
			free(recs);
			tele_rx_batch_free(b);
			return r == -FL_EDB ? -FL_EBUSY : r;
		}
	}
	if (c->n_pending == 0)
		c->pending_since_ms = fl_mono_ms();
	memcpy(&c->pending[c->n_pending], recs, n * sizeof(*recs));
	c->n_pending += n;
	free(recs);
	c->cnt.tele_batches++;
	c->cnt.tele_records += n;

	struct dev_gaps *d = gaps_for(c, id);
	if (d) {
		if (strcmp(d->stream, b->stream) && d->stream[0]) {
			/* A new outbox: the tracker starts again at 1. */
			tele_gaps_free(d->g);
			d->g = NULL;
			if (tele_gaps_new(1, CTL_GAPS_MAX_RANGES, &d->g) < 0)
				d->g = NULL;
		}
		if (d->g) {
			int g = tele_gaps_note_batch(d->g, b);
			if (g == -FL_ETOOBIG) {
				/* Too fragmented: give up on what lies below this batch. */
				tele_gaps_settle_below(d->g, b->first);
				tele_gaps_note_batch(d->g, b);
			}
			fl_strlcpy(d->stream, b->stream, sizeof(d->stream));
			if (!d->dirty) {
				d->dirty = true;
				d->next_dirty = c->dirty;
				c->dirty = d;
			}
		}
	}
	r = (int)n;
	if (c->n_pending >= c->batch_records) {
		int f = ctl_ingest_flush_locked(c);
		(void)f; /* records stay pending and are retried; counted */
	}
	pthread_mutex_unlock(&c->lock);
	tele_rx_batch_free(b);
	return r;
}

int ctl_ingest_batch(struct ctl *c, const char *device_id, const void *payload, size_t len)
{
	int r = ingest(c, device_id, payload, len);
	if (r < 0) {
		pthread_mutex_lock(&c->lock);
		c->cnt.tele_refused++;
		pthread_mutex_unlock(&c->lock);
	}
	return r;
}

static int put_gaps(struct ctl *c, struct dev_gaps *d, int64_t now)
{
	uint64_t ranges[MISSING_SAMPLE][2];
	size_t n = tele_gaps_missing(d->g, ranges, MISSING_SAMPLE);
	uint64_t seqs = 0;
	for (size_t i = 0; i < n && i < MISSING_SAMPLE; i++)
		seqs += ranges[i][1] - ranges[i][0] + 1;
	return c->store->ops->gaps_put(c->store, d->id, d->stream, n, seqs,
				       tele_gaps_dropped_total(d->g), tele_gaps_highest(d->g), now);
}

int ctl_ingest_flush_locked(struct ctl *c)
{
	if (c->n_pending == 0 && !c->dirty)
		return 0;
	struct ctl_store *st = c->store;
	int r = st->ops->begin(st);
	uint64_t ins = 0, dup = 0;
	for (size_t i = 0; r >= 0 && i < c->n_pending; i++) {
		const struct pending_rec *p = &c->pending[i];
		struct ctl_tele_rec t = {.device = p->device,
					 .stream = p->stream,
					 .seq = p->seq,
					 .kind = p->kind,
					 .ts = p->ts,
					 .json = p->json};
		r = st->ops->tele_insert(st, &t);
		if (r == 1)
			ins++;
		else if (r == 0)
			dup++;
	}
	int64_t now = fl_now_s();
	for (struct dev_gaps *d = c->dirty; r >= 0 && d; d = d->next_dirty)
		r = put_gaps(c, d, now);
	if (r >= 0)
		r = st->ops->commit(st);
	if (r < 0) {
		st->ops->rollback(st);
		c->cnt.tele_commit_errors++;
		return r;
	}
	for (struct dev_gaps *d = c->dirty; d; d = d->next_dirty)
		d->dirty = false;
	c->dirty = NULL;
	for (size_t i = 0; i < c->n_pending; i++)
		free(c->pending[i].json);
	c->n_pending = 0;
	c->cnt.tele_commits++;
	c->cnt.tele_inserted += ins;
	c->cnt.tele_duplicates += dup;
	return (int)ins;
}

int ctl_ingest_flush(struct ctl *c)
{
	pthread_mutex_lock(&c->lock);
	int r = ctl_ingest_flush_locked(c);
	pthread_mutex_unlock(&c->lock);
	return r;
}

int ctl_tick(struct ctl *c)
{
	int r = 0;
	pthread_mutex_lock(&c->lock);
	if ((c->n_pending && fl_mono_ms() - c->pending_since_ms >= c->flush_ms) ||
	    (!c->n_pending && c->dirty))
		r = ctl_ingest_flush_locked(c);
	pthread_mutex_unlock(&c->lock);
	return r;
}
