/* Telemetry ingestion: strict decode, pending list, batched commits, gaps,
 * and confirmations of what was committed (docs/telemetry.md). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/util.h>

#include "ctl_internal.h"

#define MISSING_SAMPLE 64 /* ranges summed for the missing-seq count */
/* Holes are checked against the store (what other instances committed) at
 * every flush of their device and, while the device sent a batch in the last
 * RECHECK_WINDOW_MS, every RECHECK_EVERY_MS (docs/controller.md "Gaps with
 * several instances"). */
#define RECHECK_WINDOW_MS 30000
#define RECHECK_EVERY_MS 1000
#define COVERED_MAX 256
#define ACK_MAX_RANGES 256 /* per confirmation message */

/* A confirmation for one device: {"v":1,"stream":S,"ranges":[[a,b],...]}. */
struct ctl_ack {
	struct ctl_ack *next;
	char device[CTL_DEVICE_ID_MAX + 1];
	char *json;
	size_t len;
};

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

static void acks_free(struct ctl_ack *a)
{
	while (a) {
		struct ctl_ack *n = a->next;
		free(a->json);
		free(a);
		a = n;
	}
}

void ctl_ingest_free(struct ctl *c)
{
	acks_free(c->acks);
	c->acks = NULL;
	c->acks_tail = NULL;
	c->n_acks = 0;
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
	c->recheck = NULL;
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
			d->noted_ms = fl_mono_ms();
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

/* Close the holes of D's tracker that the store covers: records or drop
 * reports another instance committed (with $share subscriptions a device's
 * batches reach any instance). */
static int heal(struct ctl *c, struct dev_gaps *d)
{
	struct ctl_store *st = c->store;
	if (!st->ops->tele_covered || !d->g || !d->stream[0])
		return 0;
	uint64_t miss[MISSING_SAMPLE][2];
	size_t n = tele_gaps_missing(d->g, miss, MISSING_SAMPLE);
	if (n == 0)
		return 0;
	if (n > MISSING_SAMPLE)
		n = MISSING_SAMPLE;
	uint64_t lo = miss[0][0], hi = miss[n - 1][1];
	uint64_t (*cov)[2] = malloc(COVERED_MAX * sizeof(*cov));
	if (!cov)
		return -ENOMEM;
	size_t k = 0;
	int r = st->ops->tele_covered(st, d->id, d->stream, lo, hi, cov, COVERED_MAX, &k);
	for (size_t i = 0; r >= 0 && i < k; i++) {
		uint64_t a = cov[i][0] < lo ? lo : cov[i][0], b = cov[i][1] > hi ? hi : cov[i][1];
		if (a <= b)
			(void)tele_gaps_received(d->g, a, b); /* -FL_ETOOBIG: stays a hole */
	}
	free(cov);
	return r;
}

static int put_gaps(struct ctl *c, struct dev_gaps *d, int64_t now)
{
	int r = heal(c, d);
	if (r < 0)
		return r;
	uint64_t ranges[MISSING_SAMPLE][2];
	size_t n = tele_gaps_missing(d->g, ranges, MISSING_SAMPLE);
	uint64_t seqs = 0;
	for (size_t i = 0; i < n && i < MISSING_SAMPLE; i++)
		seqs += ranges[i][1] - ranges[i][0] + 1;
	return c->store->ops->gaps_put(c->store, d->id, d->stream, n, seqs,
				       tele_gaps_dropped_total(d->g), tele_gaps_highest(d->g), now);
}

static int cmp_pending(const void *x, const void *y)
{
	const struct pending_rec *a = *(const struct pending_rec *const *)x;
	const struct pending_rec *b = *(const struct pending_rec *const *)y;
	int r = strcmp(a->device, b->device);
	if (!r)
		r = strcmp(a->stream, b->stream);
	if (!r)
		r = a->seq < b->seq ? -1 : a->seq > b->seq;
	return r;
}

static void ack_queue(struct ctl *c, const char *device, const char *text)
{
	if (c->n_acks >= CTL_ACKS_MAX)
		return; /* the device sends again; confirmed next time */
	struct ctl_ack *a = calloc(1, sizeof(*a));
	if (!a || !(a->json = strdup(text))) {
		free(a);
		return;
	}
	fl_strlcpy(a->device, device, sizeof(a->device));
	a->len = strlen(text);
	if (!c->acks_tail)
		c->acks_tail = &c->acks;
	*c->acks_tail = a;
	c->acks_tail = &a->next;
	c->n_acks++;
}

/* Queue confirmations of every pending record (all committed, new or
 * duplicate), per device and stream, as seq ranges. Lock held. */
static void acks_build(struct ctl *c)
{
	if (!c->n_pending)
		return;
	const struct pending_rec **v = malloc(c->n_pending * sizeof(*v));
	char *buf = malloc(64 + ACK_MAX_RANGES * 44);
	if (!v || !buf) {
		free(v);
		free(buf);
		return;
	}
	for (size_t i = 0; i < c->n_pending; i++)
		v[i] = &c->pending[i];
	qsort(v, c->n_pending, sizeof(*v), cmp_pending);
	size_t i = 0;
	while (i < c->n_pending) {
		const struct pending_rec *h = v[i];
		size_t n = 0;
		int len = snprintf(buf, 64, "{\"v\":1,\"stream\":\"%s\",\"ranges\":[", h->stream);
		while (i < c->n_pending && n < ACK_MAX_RANGES && !strcmp(v[i]->device, h->device) &&
		       !strcmp(v[i]->stream, h->stream)) {
			uint64_t a = v[i]->seq, b = a;
			while (i + 1 < c->n_pending && !strcmp(v[i + 1]->device, h->device) &&
			       !strcmp(v[i + 1]->stream, h->stream) && v[i + 1]->seq <= b + 1) {
				i++;
				b = v[i]->seq;
			}
			i++;
			len += snprintf(buf + len, 44, "%s[%" PRIu64 ",%" PRIu64 "]", n ? "," : "", a, b);
			n++;
		}
		snprintf(buf + len, 4, "]}");
		ack_queue(c, h->device, buf);
	}
	free(v);
	free(buf);
}

void ctl_ingest_take_acks(struct ctl *c, ctl_ack_fn fn, void *ud)
{
	pthread_mutex_lock(&c->lock);
	struct ctl_ack *a = c->acks;
	c->acks = NULL;
	c->acks_tail = NULL;
	c->n_acks = 0;
	pthread_mutex_unlock(&c->lock);
	while (a && fn(ud, a->device, a->json, a->len) == 0) {
		struct ctl_ack *n = a->next;
		free(a->json);
		free(a);
		a = n;
	}
	if (!a)
		return;
	/* Put the rest back in front of what was queued meanwhile. */
	struct ctl_ack *last = a;
	size_t n = 1;
	for (; last->next; last = last->next)
		n++;
	pthread_mutex_lock(&c->lock);
	last->next = c->acks;
	if (!c->acks)
		c->acks_tail = &last->next;
	c->acks = a;
	c->n_acks += n;
	pthread_mutex_unlock(&c->lock);
}

int ctl_ingest_flush_locked(struct ctl *c)
{
	if (c->n_pending == 0 && !c->dirty)
		return 0;
	struct ctl_store *st = c->store;
	int r = st->ops->begin(st);
	uint64_t ins = 0, dup = 0;
	/* A store with a batch insert (PostgreSQL) takes the records in one
	 * statement; the loop below then only reads which were new. */
	uint8_t *isnew = NULL;
	if (r >= 0 && st->ops->tele_insert_batch && c->n_pending > 1) {
		struct ctl_tele_rec *all = calloc(c->n_pending, sizeof(*all));
		isnew = malloc(c->n_pending);
		r = all && isnew ? 0 : -ENOMEM;
		for (size_t i = 0; r >= 0 && i < c->n_pending; i++) {
			const struct pending_rec *p = &c->pending[i];
			all[i] = (struct ctl_tele_rec){.device = p->device, .stream = p->stream,
						       .seq = p->seq, .kind = p->kind, .ts = p->ts,
						       .json = p->json};
		}
		if (r >= 0)
			r = st->ops->tele_insert_batch(st, all, c->n_pending, isnew);
		free(all);
	}
	for (size_t i = 0; r >= 0 && i < c->n_pending; i++) {
		const struct pending_rec *p = &c->pending[i];
		struct ctl_tele_rec t = {.device = p->device,
					 .stream = p->stream,
					 .seq = p->seq,
					 .kind = p->kind,
					 .ts = p->ts,
					 .json = p->json};
		r = isnew ? isnew[i] : st->ops->tele_insert(st, &t);
		if (r == 1 && ctl_health_note(st, &t, fl_now_s()) < 0) /* health.c */
			r = -FL_EDB;
		if (r == 1)
			ins++;
		else if (r == 0)
			dup++;
	}
	free(isnew);
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
	int64_t mono = fl_mono_ms();
	for (struct dev_gaps *d = c->dirty; d; d = d->next_dirty) {
		d->dirty = false;
		uint64_t one[1][2];
		if (!d->recheck && d->g && c->store->ops->tele_covered &&
		    mono - d->noted_ms < RECHECK_WINDOW_MS && tele_gaps_missing(d->g, one, 1) > 0) {
			d->recheck = true;
			d->next_recheck = c->recheck;
			c->recheck = d;
		}
	}
	c->dirty = NULL;
	acks_build(c);
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

/* Put the trackers whose holes are due for a check on the dirty list (they
 * are written again, healed, by the next flush); drop those whose device
 * went quiet or whose holes are gone. Lock held. */
static void recheck_due(struct ctl *c)
{
	int64_t now = fl_mono_ms();
	if (!c->recheck || now < c->recheck_at_ms)
		return;
	c->recheck_at_ms = now + RECHECK_EVERY_MS;
	struct dev_gaps *d = c->recheck;
	c->recheck = NULL;
	while (d) {
		struct dev_gaps *n = d->next_recheck;
		d->recheck = false;
		uint64_t one[1][2];
		if (!d->dirty && d->g && now - d->noted_ms < RECHECK_WINDOW_MS &&
		    tele_gaps_missing(d->g, one, 1) > 0) {
			d->dirty = true;
			d->next_dirty = c->dirty;
			c->dirty = d;
		}
		d = n;
	}
}

int ctl_tick(struct ctl *c)
{
	int r = 0;
	pthread_mutex_lock(&c->lock);
	recheck_due(c);
	if ((c->n_pending && fl_mono_ms() - c->pending_since_ms >= c->flush_ms) ||
	    (!c->n_pending && c->dirty))
		r = ctl_ingest_flush_locked(c);
	pthread_mutex_unlock(&c->lock);
	return r;
}
