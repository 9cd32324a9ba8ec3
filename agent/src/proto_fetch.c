/* The chunk fetch engine (docs/protocol.md "chunk/req", "chunk/dat",
 * "Window"): which ranges to ask for and when, from frames in to chunk/req
 * payloads out. Chunk indexes one 256 KiB range at a time; then chunks in
 * an adaptive window with a round-trip timeout, a hold-off after refusals
 * and timeouts, a bandwidth cap and re-asks after a reconnect. Where chunks
 * come from and go to is the owner's (struct proto_fetch_ops): the agent's
 * staging slot (fetch.c), the simulator's memory (tests/sim). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include <flotilla/chunkidx.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>
#include <flotilla/util.h>

#define TIMEOUT_MS 10000 /* chunk index ranges; chunks before the first RTT sample */
/* A chunk range times out when nothing at all has arrived for 3x the
 * smoothed round trip (in [2 s, 10 s]) since it was asked for, or since the
 * last answer: on a slow link the answers keep coming and the tail of the
 * window just waits (TCP restarts its timer on every ACK alike); a lost
 * request is noticed once the pipe is idle. HARD_TIMEOUT_MS catches a range
 * lost while others flow. */
#define RTO_MIN_MS 2000
#define HARD_TIMEOUT_MS 60000
/* The window follows the delivery rate: about RATE_WINDOW_MS worth of bytes,
 * between WINDOW_MIN and PROTO_FETCH_WINDOW_BYTES, so a slow link does not
 * queue more than the timeout can wait for. Measured every RATE_PERIOD_MS. */
#define RATE_WINDOW_MS 1000
#define RATE_PERIOD_MS 250
#define WINDOW_MIN (256u * 1024u)
#define HOLD_MIN_MS 500
#define HOLD_MAX_MS 30000
#define EBUSY_RETRY_MS 20
#define SEND_RETRY_MS 200

enum mode { M_INDEX, M_CHUNKS, M_FAILED };

struct outstanding {
	bool used;
	uint8_t id[FL_SHA256_LEN];
	uint32_t len;
	int64_t sent_ms;
};

struct proto_fetch {
	struct proto_fetch_ops ops;
	void *ud;
	enum mode mode;
	uint64_t cap; /* bytes/s, 0 none */
	/* chunk index being fetched */
	bool iwant;
	uint8_t iid[FL_SHA256_LEN];
	struct fl_buf ibuf;
	bool ipending;
	uint64_t ioff;
	int64_t isent_ms;
	int ibad;
	/* chunks */
	struct outstanding out[PROTO_FETCH_WINDOW];
	int n_out;
	uint64_t out_bytes; /* bytes of the outstanding ranges */
	uint8_t pend_id[FL_SHA256_LEN]; /* taken from the owner, not yet asked for */
	uint32_t pend_len;
	bool has_pend;
	/* adaptive window and timeout */
	uint64_t window; /* bytes */
	double rate;     /* bytes/s, smoothed */
	uint64_t rate_bytes;
	int64_t rate_t0;
	double srtt;           /* ms, 0: no sample yet */
	int64_t last_frame_ms; /* last chunk frame taken */
	int64_t hold_until;
	int hold_ms;
	int not_found;
	double tokens;
	int64_t tok_ms;
	struct proto_fetch_stats stats;
	int err;
	char reason[128];
};

/* --------------------------------------------------------------- frames */

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

int proto_frame_parse(const void *buf, size_t len, struct proto_frame *ret)
{
	const uint8_t *p = buf;
	if (!ret)
		return -EINVAL;
	if (!p || len < PROTO_FRAME_HDR || len > PROTO_FRAME_MAX || memcmp(p, "FLCK", 4) ||
	    p[4] != 1 || p[5] > 2)
		return -FL_EPROTO;
	uint32_t dlen = (uint32_t)get_le(p + 48, 4);
	if ((size_t)dlen != len - PROTO_FRAME_HDR || (p[5] != 0 && dlen != 0))
		return -FL_EPROTO;
	*ret = (struct proto_frame){.status = p[5],
				    .id = p + 8,
				    .off = get_le(p + 40, 8),
				    .data = p + PROTO_FRAME_HDR,
				    .len = dlen};
	return 0;
}

int proto_req_build(const struct proto_range *r, size_t n, char *buf, size_t size)
{
	if (!r || !n || n > PROTO_FETCH_REQ_ITEMS || (!buf && size))
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!r[i].len || r[i].len > PROTO_RANGE_MAX)
			return -EINVAL;
	size_t k = 0;
	int w = snprintf(buf, size, "{\"v\":1,\"req\":[");
	for (size_t i = 0; w >= 0 && i < n; i++) {
		k += (size_t)w;
		char h[FL_SHA256_HEX_LEN + 1];
		fl_hex_encode(r[i].id, FL_SHA256_LEN, h);
		w = snprintf(k < size ? buf + k : NULL, k < size ? size - k : 0,
			     "%s{\"id\":\"%s\",\"off\":%llu,\"len\":%u}", i ? "," : "", h,
			     (unsigned long long)r[i].off, r[i].len);
	}
	if (w >= 0) {
		k += (size_t)w;
		w = snprintf(k < size ? buf + k : NULL, k < size ? size - k : 0, "]}");
	}
	if (w < 0)
		return -EINVAL;
	k += (size_t)w;
	if (k >= size)
		return -FL_ETOOBIG;
	return (int)k;
}

/* ------------------------------------------------------------ lifecycle */

int proto_fetch_new(const struct proto_fetch_ops *ops, void *ud, uint64_t bandwidth_bps,
		    int64_t now, struct proto_fetch **ret)
{
	if (!ops || !ret || !ops->send || !ops->next_missing || !ops->release || !ops->put ||
	    !ops->complete || !ops->index_done)
		return -EINVAL;
	struct proto_fetch *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->ops = *ops;
	f->ud = ud;
	f->cap = bandwidth_bps;
	f->mode = M_INDEX;
	f->hold_ms = HOLD_MIN_MS;
	f->tok_ms = now;
	f->window = WINDOW_MIN;
	f->rate_t0 = now;
	*ret = f;
	return 0;
}

void proto_fetch_free(struct proto_fetch *f)
{
	if (!f)
		return;
	fl_buf_free(&f->ibuf);
	free(f);
}

static void fail(struct proto_fetch *f, int err, const char *reason)
{
	fl_buf_free(&f->ibuf);
	f->ibuf = (struct fl_buf){0};
	f->ipending = false;
	f->mode = M_FAILED;
	f->err = err;
	snprintf(f->reason, sizeof(f->reason), "%s", reason);
}

int proto_fetch_error(const struct proto_fetch *f)
{
	return f && f->mode == M_FAILED ? f->err : 0;
}

const char *proto_fetch_reason(const struct proto_fetch *f)
{
	return f && f->mode == M_FAILED ? f->reason : "";
}

void proto_fetch_stats(const struct proto_fetch *f, struct proto_fetch_stats *ret)
{
	if (f && ret)
		*ret = f->stats;
	else if (ret)
		memset(ret, 0, sizeof(*ret));
}

int proto_fetch_want_index(struct proto_fetch *f, const uint8_t id[32])
{
	if (!f || !id || f->mode != M_INDEX)
		return -EINVAL;
	if (f->iwant && !memcmp(f->iid, id, FL_SHA256_LEN))
		return 0;
	memcpy(f->iid, id, FL_SHA256_LEN);
	fl_buf_free(&f->ibuf);
	f->ibuf = (struct fl_buf){0};
	f->ipending = false;
	f->iwant = true;
	return 0;
}

bool proto_fetch_index_busy(const struct proto_fetch *f)
{
	return f && f->mode == M_INDEX && f->iwant;
}

int proto_fetch_start_chunks(struct proto_fetch *f)
{
	if (!f || f->mode != M_INDEX || f->iwant)
		return -EINVAL;
	f->mode = M_CHUNKS;
	return 0;
}

void proto_fetch_reconnected(struct proto_fetch *f)
{
	if (!f)
		return;
	memset(f->out, 0, sizeof(f->out));
	f->n_out = 0;
	f->out_bytes = 0;
	f->has_pend = false;
	f->ipending = false;
	f->hold_until = 0;
}

/* ---------------------------------------------------------------- window */

static int out_find(const struct proto_fetch *f, const uint8_t id[FL_SHA256_LEN])
{
	for (int i = 0; i < PROTO_FETCH_WINDOW; i++)
		if (f->out[i].used && !memcmp(f->out[i].id, id, FL_SHA256_LEN))
			return i;
	return -1;
}

static void out_drop(struct proto_fetch *f, int i)
{
	f->out[i].used = false;
	f->n_out--;
	f->out_bytes -= f->out[i].len;
}

static void hold(struct proto_fetch *f, int64_t now)
{
	f->hold_until = now + f->hold_ms;
	f->hold_ms = f->hold_ms * 2 > HOLD_MAX_MS ? HOLD_MAX_MS : f->hold_ms * 2;
}

static void refill_tokens(struct proto_fetch *f, int64_t now)
{
	if (!f->cap)
		return;
	f->tokens += (double)f->cap * (double)(now - f->tok_ms) / 1000.0;
	double burst = (double)(f->cap > PROTO_RANGE_MAX ? f->cap : PROTO_RANGE_MAX);
	if (f->tokens > burst)
		f->tokens = burst;
	f->tok_ms = now;
}

static int64_t rto(const struct proto_fetch *f)
{
	if (f->srtt <= 0)
		return TIMEOUT_MS;
	double t = 3.0 * f->srtt;
	return t < RTO_MIN_MS ? RTO_MIN_MS : t > TIMEOUT_MS ? TIMEOUT_MS : (int64_t)t;
}

/* When outstanding range I times out (see RTO_MIN_MS). */
static int64_t out_due(const struct proto_fetch *f, int i)
{
	int64_t from = f->out[i].sent_ms > f->last_frame_ms ? f->out[i].sent_ms : f->last_frame_ms;
	int64_t due = from + rto(f), hard = f->out[i].sent_ms + HARD_TIMEOUT_MS;
	return due < hard ? due : hard;
}

/* Window = the delivery rate x RATE_WINDOW_MS, clamped. */
static void update_window(struct proto_fetch *f, int64_t now)
{
	int64_t dt = now - f->rate_t0;
	if (dt < RATE_PERIOD_MS)
		return;
	double inst = (double)f->rate_bytes * 1000.0 / (double)dt;
	f->rate = f->rate > 0 ? 0.5 * f->rate + 0.5 * inst : inst;
	f->rate_bytes = 0;
	f->rate_t0 = now;
	double w = f->rate * RATE_WINDOW_MS / 1000.0;
	f->window = w < WINDOW_MIN		  ? WINDOW_MIN
		    : w > PROTO_FETCH_WINDOW_BYTES ? PROTO_FETCH_WINDOW_BYTES
						   : (uint64_t)w;
}

/* The next range for a request: the held one or the owner's next missing
 * chunk (0 when there is none). */
static int take_want(struct proto_fetch *f, struct proto_range *w)
{
	if (!f->has_pend) {
		if (f->ops.next_missing(f->ud, f->pend_id, &f->pend_len) != 1)
			return 0;
		f->has_pend = true;
	}
	memcpy(w->id, f->pend_id, FL_SHA256_LEN);
	w->off = 0;
	w->len = f->pend_len;
	return 1;
}

static int send_req(struct proto_fetch *f, const struct proto_range *r, size_t n)
{
	char buf[PROTO_FETCH_REQ_ITEMS * 140 + 32];
	int k = proto_req_build(r, n, buf, sizeof(buf));
	if (k < 0)
		return k;
	return f->ops.send(f->ud, buf, (size_t)k);
}

/* Chunk index phase: one range in flight at a time. */
static void step_index(struct proto_fetch *f, int64_t now)
{
	if (!f->iwant)
		return;
	if (f->ipending && now - f->isent_ms < TIMEOUT_MS)
		return;
	if (f->ipending)
		f->stats.timeouts++;
	if (now < f->hold_until)
		return;
	struct proto_range r = {.off = f->ibuf.len, .len = PROTO_RANGE_MAX};
	memcpy(r.id, f->iid, FL_SHA256_LEN);
	if (send_req(f, &r, 1) < 0) {
		f->ipending = false;
		f->hold_until = now + SEND_RETRY_MS;
		return;
	}
	f->ipending = true;
	f->ioff = r.off;
	f->isent_ms = now;
}

/* Returns 1 when every chunk is stored and nothing is outstanding. */
static int step_chunks(struct proto_fetch *f, int64_t now, int *next_ms)
{
	bool timed_out = false;
	for (int i = 0; i < PROTO_FETCH_WINDOW; i++) {
		if (f->out[i].used && now >= out_due(f, i)) {
			f->ops.release(f->ud, f->out[i].id);
			out_drop(f, i);
			f->stats.timeouts++;
			timed_out = true;
		}
	}
	if (timed_out)
		hold(f, now); /* once per sweep: the window usually times out together */
	if (f->n_out == 0 && f->ops.complete(f->ud))
		return 1;
	if (now < f->hold_until) {
		*next_ms = (int)(f->hold_until - now);
		return 0;
	}
	refill_tokens(f, now);
	update_window(f, now);
	/* Batch: ask again once a quarter of the window's bytes or a whole
	 * request's worth of ranges is free (fewer, fuller chunk/req). */
	if (f->n_out > 0 && f->out_bytes + f->window / 4 > f->window &&
	    PROTO_FETCH_WINDOW - f->n_out < PROTO_FETCH_REQ_ITEMS)
		return 0;
	for (;;) {
		struct proto_range want[PROTO_FETCH_REQ_ITEMS];
		uint64_t bytes = 0;
		size_t n = 0;
		struct proto_range w;
		while (n < PROTO_FETCH_REQ_ITEMS && f->n_out + (int)n < PROTO_FETCH_WINDOW &&
		       (!f->cap || f->tokens > 0) && take_want(f, &w)) {
			/* Always room for one range when nothing is outstanding. */
			if (f->n_out + (int)n > 0 && f->out_bytes + bytes + w.len > f->window)
				break; /* kept in pend for the next round */
			f->has_pend = false;
			if (f->cap)
				f->tokens -= w.len;
			want[n++] = w;
			bytes += w.len;
		}
		if (!n)
			break;
		int r = send_req(f, want, n);
		if (r < 0) {
			for (size_t i = 0; i < n; i++)
				f->ops.release(f->ud, want[i].id);
			if (f->cap)
				f->tokens += (double)bytes;
			/* A full publish window frees up with the broker's next
			 * PUBACK; anything else (not connected...) waits longer. */
			int d = r == -FL_EBUSY ? EBUSY_RETRY_MS : SEND_RETRY_MS;
			f->hold_until = now + d;
			*next_ms = d;
			return 0;
		}
		f->stats.requests++;
		for (size_t i = 0; i < n; i++) {
			for (int j = 0; j < PROTO_FETCH_WINDOW; j++) {
				if (!f->out[j].used) {
					f->out[j] = (struct outstanding){
						.used = true, .len = want[i].len, .sent_ms = now};
					memcpy(f->out[j].id, want[i].id, FL_SHA256_LEN);
					f->n_out++;
					f->out_bytes += want[i].len;
					break;
				}
			}
		}
		if (n < PROTO_FETCH_REQ_ITEMS)
			break; /* the window, the cap or the owner stopped it */
	}
	if (f->cap && f->tokens <= 0) {
		int wait = (int)(-f->tokens * 1000.0 / (double)f->cap) + 1;
		*next_ms = wait < *next_ms || *next_ms < 0 ? wait : *next_ms;
	}
	return 0;
}

int proto_fetch_step(struct proto_fetch *f, int64_t now, int *ret_next_ms)
{
	if (!f || !ret_next_ms)
		return -EINVAL;
	*ret_next_ms = -1;
	if (f->mode == M_FAILED)
		return f->err;
	if (f->mode == M_INDEX)
		step_index(f, now);
	else if (step_chunks(f, now, ret_next_ms) == 1)
		return 1;
	/* Wake up for the earliest timeout. */
	int64_t due = -1;
	if (f->mode == M_INDEX && f->ipending)
		due = f->isent_ms + TIMEOUT_MS;
	for (int i = 0; i < PROTO_FETCH_WINDOW; i++)
		if (f->out[i].used && (due < 0 || out_due(f, i) < due))
			due = out_due(f, i);
	if (f->hold_until > now && (due < 0 || f->hold_until < due))
		due = f->hold_until;
	if (due >= 0) {
		int d = due > now ? (int)(due - now) : 0;
		if (*ret_next_ms < 0 || d < *ret_next_ms)
			*ret_next_ms = d;
	}
	if (f->mode == M_INDEX && f->iwant && !f->ipending && f->hold_until <= now)
		*ret_next_ms = 0;
	return 0;
}

/* ----------------------------------------------------------------- frames */

static void index_done(struct proto_fetch *f)
{
	uint8_t got[FL_SHA256_LEN];
	fl_sha256(f->ibuf.p, f->ibuf.len, got);
	int r = memcmp(got, f->iid, FL_SHA256_LEN) ? -FL_EHASH : 0;
	if (r == 0)
		r = f->ops.index_done(f->ud, f->ibuf.p, f->ibuf.len);
	fl_buf_free(&f->ibuf);
	f->ibuf = (struct fl_buf){0};
	f->ipending = false;
	if (r < 0) {
		f->stats.bad_frames++;
		if (++f->ibad >= PROTO_FETCH_IDX_BAD_MAX)
			fail(f, r, "the chunk index from the controller fails its hash");
		return;
	}
	f->iwant = false;
}

static void on_index_frame(struct proto_fetch *f, const struct proto_frame *fr, int64_t now)
{
	if (!f->iwant || !f->ipending || memcmp(fr->id, f->iid, FL_SHA256_LEN) ||
	    fr->off != f->ioff)
		return; /* late duplicate */
	if (fr->status == 2 && fr->off > 0 && fr->off == f->ibuf.len) {
		index_done(f); /* the index ended exactly at the previous range */
		return;
	}
	if (fr->status != 0) {
		f->ipending = false;
		if (++f->not_found > PROTO_FETCH_NOT_FOUND_MAX) {
			fail(f, -FL_EMISSING, "the controller does not have the chunk index");
			return;
		}
		hold(f, now);
		return;
	}
	if (f->ibuf.len + fr->len > OTA_CIDX_MAX_BYTES) {
		fail(f, -FL_ETOOBIG, "chunk index too large");
		return;
	}
	if (fl_buf_append(&f->ibuf, fr->data, fr->len) < 0) {
		f->ipending = false;
		return;
	}
	f->stats.bytes_fetched += fr->len;
	f->ipending = false;
	if (fr->len < PROTO_RANGE_MAX)
		index_done(f);
}

static void on_chunk_frame(struct proto_fetch *f, const struct proto_frame *fr, int64_t now)
{
	int i = out_find(f, fr->id);
	if (fr->status != 0 || fr->off != 0) {
		if (i >= 0) {
			f->ops.release(f->ud, fr->id);
			out_drop(f, i);
			if (fr->status == 1 && ++f->not_found > PROTO_FETCH_NOT_FOUND_MAX) {
				fail(f, -FL_EMISSING, "the controller does not have a chunk");
				return;
			}
			hold(f, now);
		}
		return;
	}
	f->stats.bytes_fetched += fr->len;
	f->rate_bytes += fr->len;
	f->last_frame_ms = now;
	int r = f->ops.put(f->ud, fr->id, fr->data, fr->len);
	if (r == -FL_EHASH || r == -FL_ESIZE) {
		/* Corrupted on the way (or by the controller): ask again. */
		f->stats.bad_chunks++;
		if (i >= 0) {
			f->ops.release(f->ud, fr->id);
			out_drop(f, i);
		}
		return;
	}
	if (i >= 0) {
		int64_t rtt = now - f->out[i].sent_ms;
		f->stats.rtt_sum_ms += (uint64_t)rtt;
		f->srtt = f->srtt > 0 ? 0.875 * f->srtt + 0.125 * (double)rtt : (double)rtt;
		f->stats.rtt_n++;
		out_drop(f, i);
	}
	if (r == -FL_EPROTO)
		return; /* not needed: a stray frame */
	if (r < 0) {
		fail(f, r, "writing the new files failed");
		return;
	}
	f->hold_ms = HOLD_MIN_MS;
}

int proto_fetch_on_frame(struct proto_fetch *f, const void *frame, size_t len, int64_t now)
{
	if (!f)
		return -EINVAL;
	struct proto_frame fr;
	if (proto_frame_parse(frame, len, &fr) < 0) {
		f->stats.bad_frames++;
		return -FL_EPROTO;
	}
	if (f->mode == M_INDEX)
		on_index_frame(f, &fr, now);
	else if (f->mode == M_CHUNKS)
		on_chunk_frame(f, &fr, now);
	return f->mode == M_FAILED ? 1 : 0;
}
