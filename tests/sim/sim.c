/* flotilla-sim: a fleet of simulated devices in one process.
 *
 *   flotilla-sim certs --pki DIR [--prefix P] [--first I] --count N
 *   flotilla-sim run --uri ssl://HOST:PORT --pki DIR --trust DIR
 *                    [--scenario FILE] [--count N] [--first I] [--status FILE]
 *                    [--duration S]
 *
 * One thread, one epoll set; every device is a libmosquitto client (MQTT
 * v5, clean start off, session expiry 1 day, keep-alive 30 s) over mutual
 * TLS with its own certificate, all sharing one SSL_CTX whose certificate
 * callback hands each handshake its device's certificate and key. What a
 * device says is decided by the agent's own protocol code (agentproto:
 * state document, command validation and duplicate window, the deploy
 * decision, the chunk fetch engine); what it would do on disk and in the
 * model runtime is simulated (chunks verified, not written; times and
 * failure rates from the scenario). Design and figures: docs/scale.md. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <flotilla/chunkidx.h>
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/manifest.h>
#include <flotilla/mqtt.h>
#include <flotilla/slot.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/tele_wire.h>
#include <flotilla/trust.h>
#include <flotilla/util.h>

#include "proto.h"
#include "sim.h"

#define SIM_FDS_PER_DEVICE 3
#define CONNECT_TIMEOUT_MS 20000
#define PENDING_MAX 256 /* telemetry records kept per device while offline */
#define ACK_RING 32

enum ist { I_IDLE, I_FETCHING, I_STAGED, I_TESTING, I_TRIAL, I_COMMITTED, I_REJECTED, I_ROLLED_BACK, I__N };
static const char *const ist_name[] = {"IDLE",	    "FETCHING", "STAGED",     "TESTING",
				       "TRIAL",	    "COMMITTED", "REJECTED",  "ROLLED_BACK"};

/* A real pull of every file of the manifest with the agent's fetch engine
 * (agentproto, proto_fetch.c); the simulated disk is this table of the
 * distinct chunks (sorted by id): verified on arrival, not written. */
struct vchunk {
	uint8_t id[32];
	uint32_t len;
	uint8_t state; /* 0 missing, 1 in flight, 2 stored */
};

struct fetch {
	struct dev *d;
	struct proto_fetch *pf;
	struct ota_chunkidx **idx; /* of the manifest's files, in order */
	size_t n_idx;
	struct vchunk *c; /* NULL until every index is there */
	size_t n_c, n_done, scan;
	uint64_t timeouts_seen;
};

struct pend {
	char *rec[PENDING_MAX];
	uint64_t seq[PENDING_MAX];
	int n;
};

struct dev {
	int i;
	char id[48];
	const struct sim_class *k;
	struct mosquitto *m;
	X509 *crt;
	EVP_PKEY *key;
	int fd;
	uint32_t ev;
	/* link */
	bool started, connecting, connected;
	int64_t conn_at, next_conn, up_since, offline_until;
	struct fl_backoff backoff;
	bool registered;
	int state_mid;
	bool state_dirty;
	int64_t state_last;
	int64_t misc_next;
	/* slots */
	char ver[2][SIM_NAME_MAX + 1];
	uint64_t seq[2];
	int cur;
	/* install */
	enum ist ist;
	char iver[SIM_NAME_MAX + 1], ierr[64];
	uint64_t iseq;
	const struct ota_manifest *man;
	int64_t inext, fetch_start;
	uint64_t bytes_done, bytes_total, chunks_done, chunks_total;
	bool real;
	struct fetch *f;
	/* commands (agentproto: the agent's duplicate window and refusal limit) */
	struct proto_cmd_ids cmd_ids;
	struct proto_ratelimit refuse_rl;
	uint64_t floor; /* anti-rollback: highest committed sequence */
	/* telemetry */
	char stream[17];
	uint64_t next_seq;
	struct pend pev, pmet;
	int64_t tele_next;
	struct {
		int mid, n;
		bool ev;
	} acks[ACK_RING];
	int ack_pos;
	uint64_t reconnects;
};

static struct sim_scenario S;
static struct dev *D;
static int N;
static int ep = -1;
static SSL_CTX *ctx;
static struct ota_trust *trust;
static char host[256];
static int port;
static struct dev *g_cur;
static volatile sig_atomic_t stop;
static uint64_t rng_state;
static int64_t t0, t0_wall; /* start of the run: monotonic, wall clock (ms) */
static cJSON *cls_labels[SIM_MAX_CLASSES]; /* each class's labels, parsed once */
static const char *const sim_backends[] = {"gguf", NULL};
#define SIM_AGENT_VERSION "sim-0.1.0"

static struct {
	uint64_t connects, disconnects, refused, cmds, dup_cmds, deploys, reverts, pings;
	uint64_t ev_made, ev_acked, met_made, met_acked, batches, pub_refused;
	uint64_t fetch_bytes, chunks_ok, chunks_bad, chunk_timeouts, frames_bad, reqs;
	uint64_t churned, verify_fail;
	int64_t all_connected_ms, all_registered_ms;
	int64_t first_fail_wall_ms; /* wall clock (ms) of the first failed install reported in a state */
} st = {.all_connected_ms = -1, .all_registered_ms = -1};

/* ------------------------------------------------------------ helpers */

static uint64_t rnd(void)
{
	/* xorshift64*: reproducible from the scenario's seed */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}
static double rnd01(void)
{
	return (double)(rnd() >> 11) / 9007199254740992.0;
}
static int64_t jitter(int64_t ms, double frac)
{
	return ms + (int64_t)((rnd01() * 2 - 1) * frac * (double)ms);
}

static bool hits(const struct sim_class *k, const char *version)
{
	return k->fail_version[0] && (!strcmp(k->fail_version, "*") || !strcmp(k->fail_version, version));
}

static void topic(const struct dev *d, const char *suffix, char *out, size_t n)
{
	snprintf(out, n, "flotilla/v1/dev/%s/%s", d->id, suffix);
}

static void sync_fd(struct dev *d)
{
	int s = mosquitto_socket(d->m);
	if (s != d->fd) {
		d->fd = s;
		d->ev = 0;
	}
	if (s < 0)
		return;
	uint32_t want = EPOLLIN | (mosquitto_want_write(d->m) ? EPOLLOUT : 0);
	if (want == d->ev)
		return;
	struct epoll_event e = {.events = want, .data.ptr = d};
	if (d->ev == 0) {
		if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &e) < 0 && errno == EEXIST)
			epoll_ctl(ep, EPOLL_CTL_MOD, s, &e);
	} else {
		epoll_ctl(ep, EPOLL_CTL_MOD, s, &e);
	}
	d->ev = want;
}

static void lost(struct dev *d, int64_t now)
{
	if (d->connected || d->connecting) {
		if (d->connected)
			st.disconnects++;
		d->connected = d->connecting = false;
		/* The agent's own policy (fl_backoff, as fl_mqtt runs it): 1 s
		 * doubling to 60 s, +-20 %, reset after a connection that lasted
		 * > 60 s */
		d->next_conn = now + fl_backoff_next(&d->backoff, now, d->up_since);
		d->up_since = 0;
	}
	d->fd = mosquitto_socket(d->m);
	if (d->fd < 0)
		d->ev = 0;
}

static int publish(struct dev *d, const char *suffix, const void *p, size_t len, bool retain,
		   int *ret_mid)
{
	char t[160];
	topic(d, suffix, t, sizeof(t));
	int mid = 0;
	g_cur = d;
	int rc = mosquitto_publish_v5(d->m, &mid, t, (int)len, p, 1, retain, NULL);
	sync_fd(d);
	if (rc != MOSQ_ERR_SUCCESS)
		return -EIO;
	if (ret_mid)
		*ret_mid = mid;
	return 0;
}

/* ------------------------------------------------------------ state */

/* The agent's state document builder (agentproto, proto_state.c) fed with
 * the simulated slots and install. */
static int state_json(const struct dev *d, char **ret, size_t *ret_len)
{
	struct proto_device pd = {.device = d->id,
				  .agent = SIM_AGENT_VERSION,
				  .arch = d->k->arch,
				  .ram_mb = (uint64_t)d->k->ram_mb,
				  .backends = sim_backends,
				  .labels = cls_labels[d->k - S.cls]};
	struct proto_model pm = {.name = S.model, .current = d->cur ? 'b' : 'a'};
	for (int i = 0; i < 2; i++)
		pm.slot[i] = (struct proto_slot){.status = d->ver[i][0] ? "ready" : "empty",
						 .version = d->ver[i],
						 .sequence = d->seq[i]};
	struct proto_install pi = {.version = d->iver,
				   .state = ist_name[d->ist],
				   .error = d->ierr,
				   .progress = d->ist == I_FETCHING,
				   .bytes_done = d->bytes_done,
				   .bytes_total = d->bytes_total,
				   .chunks_done = d->chunks_done,
				   .chunks_total = d->chunks_total};
	if (d->ist != I_IDLE)
		pm.install = &pi;
	struct proto_state *ps = NULL;
	int r = proto_state_new(&pd, fl_now_s(), &ps);
	if (r == 0)
		r = proto_state_add_model(ps, &pm);
	if (r == 0)
		r = proto_state_render(ps, ret, ret_len);
	proto_state_free(ps);
	return r;
}

static void state_publish(struct dev *d, int64_t now)
{
	char *js = NULL;
	size_t len = 0;
	int mid;
	if (state_json(d, &js, &len) == 0 && publish(d, "state", js, len, true, &mid) == 0) {
		d->state_dirty = false;
		d->state_last = now;
		if (!st.first_fail_wall_ms && (d->ist == I_REJECTED || d->ist == I_ROLLED_BACK)) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			st.first_fail_wall_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
		}
		if (!d->registered)
			d->state_mid = mid;
	}
	free(js);
}

/* ------------------------------------------------------------ telemetry */

static void pend_push(struct dev *d, struct pend *p, cJSON *body)
{
	if (!body)
		return;
	char *s = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	if (!s)
		return;
	if (p->n == PENDING_MAX) { /* offline too long: the oldest metric goes (events: never made that many) */
		free(p->rec[0]);
		memmove(p->rec, p->rec + 1, sizeof(p->rec[0]) * (PENDING_MAX - 1));
		memmove(p->seq, p->seq + 1, sizeof(p->seq[0]) * (PENDING_MAX - 1));
		p->n--;
	}
	uint64_t seq = d->next_seq++;
	p->rec[p->n] = fl_asprintf("{\"seq\":%" PRIu64 ",%s", seq, s + 1);
	p->seq[p->n] = seq;
	free(s);
	if (p->rec[p->n])
		p->n++;
}

static void event_m(struct dev *d, const char *model, enum tele_event_kind kind, const char *version,
		    const char *reason, const char *text)
{
	struct tele_event ev = {.kind = kind, .model = model, .version = version, .reason = reason ? reason : "ok", .text = text};
	cJSON *body = NULL;
	if (tele_record_event(&ev, fl_now_s(), &body) == 0) {
		pend_push(d, &d->pev, body);
		st.ev_made++;
	}
}

static void event(struct dev *d, enum tele_event_kind kind, const char *version, const char *reason,
		  const char *text)
{
	event_m(d, S.model, kind, version, reason, text);
}

static void flush(struct dev *d, struct pend *p, bool is_ev)
{
	if (!d->connected || p->n == 0)
		return;
	/* the batch as the agent's outbox renders it (tele_wire_batch) */
	struct tele_wire_item items[PENDING_MAX];
	for (int i = 0; i < p->n; i++)
		items[i] = (struct tele_wire_item){p->seq[i], p->rec[i], strlen(p->rec[i])};
	uint8_t *out = NULL;
	size_t ol = 0;
	int mid;
	if (tele_wire_batch(d->id, d->stream, items, (size_t)p->n, TELE_WIRE_COMPRESS_MIN, &out, &ol, NULL,
			    NULL) == 0 &&
	    publish(d, is_ev ? "event" : "tele", out, ol, false, &mid) == 0) {
		d->acks[d->ack_pos].mid = mid;
		d->acks[d->ack_pos].n = p->n;
		d->acks[d->ack_pos].ev = is_ev;
		d->ack_pos = (d->ack_pos + 1) % ACK_RING;
		st.batches++;
		for (int i = 0; i < p->n; i++)
			free(p->rec[i]);
		p->n = 0;
	}
	free(out);
}

static void metrics(struct dev *d)
{
	const char *v = d->ver[d->cur];
	struct tele_model_metrics m;
	memset(&m, 0, sizeof(m));
	snprintf(m.model, sizeof(m.model), "%s", S.model);
	snprintf(m.version, sizeof(m.version), "%s", v);
	m.period_s = (uint32_t)S.telemetry_s;
	m.requests = 20 + rnd() % 40;
	double lat = (double)d->k->latency_us * (hits(d->k, v) ? d->k->slow_factor : 1.0);
	for (uint64_t i = 0; i < m.requests; i++)
		tele_hist_add(&m.latency_us, lat * (0.7 + 0.6 * rnd01()));
	m.tokens_out = m.requests * 50;
	m.gen_time_us = (uint64_t)(lat * (double)m.requests);
	cJSON *a = NULL, *b = NULL;
	if (tele_record_model(&m, fl_now_s(), &a) == 0) {
		pend_push(d, &d->pmet, a);
		st.met_made++;
	}
	struct tele_device_metrics dm;
	memset(&dm, 0, sizeof(dm));
	dm.has_cpu = true;
	dm.cpu_pct = 5 + 50 * rnd01();
	dm.n_cpus = 4;
	dm.has_mem = true;
	dm.mem_total_bytes = (uint64_t)d->k->ram_mb << 20;
	dm.mem_avail_bytes = dm.mem_total_bytes / 2;
	dm.reconnects = d->reconnects;
	if (tele_record_device(&dm, fl_now_s(), &b) == 0) {
		pend_push(d, &d->pmet, b);
		st.met_made++;
	}
}

/* ------------------------------------------------------------ installs */

static void set_ist(struct dev *d, enum ist s, const char *err)
{
	d->ist = s;
	snprintf(d->ierr, sizeof(d->ierr), "%s", err ? err : "");
	d->state_dirty = true;
}

static void fetch_free(struct dev *d)
{
	struct fetch *f = d->f;
	if (!f)
		return;
	proto_fetch_free(f->pf);
	for (size_t i = 0; f->idx && i < f->n_idx; i++)
		ota_chunkidx_free(f->idx[i]);
	free(f->idx);
	free(f->c);
	free(f);
	d->f = NULL;
}

static void reject(struct dev *d, const char *code, const char *text)
{
	static int logged;
	if (logged++ < 20)
		fprintf(stderr, "flotilla-sim: %s: %s %s rejected: %s (%s)\n", d->id, S.model, d->iver, code, text);
	fetch_free(d);
	set_ist(d, I_REJECTED, code);
	event(d, TELE_EV_INSTALL_REJECTED, d->iver, code, text);
}

static void staged(struct dev *d, int64_t now)
{
	fetch_free(d);
	d->bytes_done = d->bytes_total;
	d->chunks_done = d->chunks_total;
	set_ist(d, I_STAGED, NULL);
	event(d, TELE_EV_INSTALL_STAGED, d->iver, NULL, NULL);
	d->inext = now + 50;
}

/* ------------------------------------------------ the engine's simulated disk */

static int op_send(void *ud, const void *req, size_t len)
{
	struct fetch *f = ud;
	if (!f->d->connected)
		return -ENOTCONN;
	int r = publish(f->d, "chunk/req", req, len, false, NULL);
	if (r == 0)
		st.reqs++;
	return r;
}

static int op_next_missing(void *ud, uint8_t id[32], uint32_t *len)
{
	struct fetch *f = ud;
	for (; f->scan < f->n_c; f->scan++) {
		struct vchunk *c = &f->c[f->scan];
		if (c->state == 0) {
			c->state = 1;
			memcpy(id, c->id, 32);
			*len = c->len;
			return 1;
		}
	}
	return 0;
}

static int vchunk_cmp(const void *a, const void *b)
{
	return memcmp(((const struct vchunk *)a)->id, ((const struct vchunk *)b)->id, 32);
}

static struct vchunk *vchunk_find(struct fetch *f, const uint8_t id[32])
{
	struct vchunk key;
	memcpy(key.id, id, 32);
	return f->c ? bsearch(&key, f->c, f->n_c, sizeof(*f->c), vchunk_cmp) : NULL;
}

static void op_release(void *ud, const uint8_t id[32])
{
	struct fetch *f = ud;
	struct vchunk *c = vchunk_find(f, id);
	if (c && c->state == 1) {
		c->state = 0;
		size_t i = (size_t)(c - f->c);
		if (i < f->scan)
			f->scan = i;
	}
}

static int op_put(void *ud, const uint8_t id[32], const void *data, uint32_t len)
{
	struct fetch *f = ud;
	struct vchunk *c = vchunk_find(f, id);
	if (!c || c->state == 2)
		return -FL_EPROTO; /* not needed */
	uint8_t h[32];
	fl_sha256(data, len, h);
	if (len != c->len || memcmp(h, id, 32)) {
		st.chunks_bad++;
		return len != c->len ? -FL_ESIZE : -FL_EHASH;
	}
	c->state = 2;
	f->n_done++;
	st.chunks_ok++;
	st.fetch_bytes += len;
	f->d->chunks_done++;
	f->d->bytes_done += len;
	return 0;
}

static bool op_complete(void *ud)
{
	struct fetch *f = ud;
	return f->c && f->n_done == f->n_c;
}

static int op_index_done(void *ud, const void *buf, size_t len)
{
	struct fetch *f = ud;
	struct ota_chunkidx *ci = NULL;
	int r = ota_chunkidx_decode(buf, len, &ci);
	if (r < 0)
		return r;
	st.fetch_bytes += len;
	f->idx[f->n_idx++] = ci;
	f->d->chunks_total += ota_chunkidx_count(ci);
	return 0;
}

static const struct proto_fetch_ops sim_fetch_ops = {
	.send = op_send,
	.next_missing = op_next_missing,
	.release = op_release,
	.put = op_put,
	.complete = op_complete,
	.index_done = op_index_done,
};

/* Every index is there: the table of distinct chunks. */
static int vchunks_build(struct fetch *f)
{
	size_t n = 0;
	for (size_t i = 0; i < f->n_idx; i++)
		n += ota_chunkidx_count(f->idx[i]);
	f->c = calloc(n ? n : 1, sizeof(*f->c));
	if (!f->c)
		return -ENOMEM;
	for (size_t i = 0; i < f->n_idx; i++)
		for (size_t k = 0; k < ota_chunkidx_count(f->idx[i]); k++) {
			const struct ota_chunk *ch = ota_chunkidx_get(f->idx[i], k);
			memcpy(f->c[f->n_c].id, ch->sha256, 32);
			f->c[f->n_c++].len = ch->len;
		}
	qsort(f->c, f->n_c, sizeof(*f->c), vchunk_cmp);
	size_t u = 0;
	for (size_t i = 0; i < f->n_c; i++)
		if (!u || memcmp(f->c[u - 1].id, f->c[i].id, 32))
			f->c[u++] = f->c[i];
	f->n_c = u;
	return 0;
}

static int fetch_new(struct dev *d, int64_t now)
{
	struct fetch *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->d = d;
	f->idx = calloc(d->man->n_files ? d->man->n_files : 1, sizeof(*f->idx));
	int r = f->idx ? proto_fetch_new(&sim_fetch_ops, f, 0, now, &f->pf) : -ENOMEM;
	if (r < 0) {
		free(f->idx);
		free(f);
		return r;
	}
	d->f = f;
	return 0;
}

/* One step of D's real fetch (the agent's session does this after every
 * batch of events and when the engine's timer is due). */
static void fetch_tick(struct dev *d, int64_t now)
{
	struct fetch *f = d->f;
	if (!f || !d->connected)
		return;
	if (!f->c && !proto_fetch_index_busy(f->pf)) {
		if (f->n_idx < d->man->n_files) {
			proto_fetch_want_index(f->pf, d->man->files[f->n_idx].chunk_index_sha256);
		} else if (vchunks_build(f) < 0 || proto_fetch_start_chunks(f->pf) < 0) {
			reject(d, "internal", "out of memory");
			return;
		}
	}
	int next;
	int r = proto_fetch_step(f->pf, now, &next);
	struct proto_fetch_stats ps;
	proto_fetch_stats(f->pf, &ps);
	st.chunk_timeouts += ps.timeouts - f->timeouts_seen;
	f->timeouts_seen = ps.timeouts;
	if (r < 0) {
		reject(d, "fetch", proto_fetch_reason(f->pf));
		return;
	}
	if (r == 1) {
		staged(d, now);
		return;
	}
	d->state_dirty |= now - d->state_last > 1000;
}

static void on_frame(struct dev *d, const uint8_t *p, size_t len, int64_t now)
{
	if (!d->f || d->ist != I_FETCHING) {
		struct proto_frame fr;
		if (proto_frame_parse(p, len, &fr) < 0)
			st.frames_bad++;
		return; /* late answer to a finished install */
	}
	int r = proto_fetch_on_frame(d->f->pf, p, len, now);
	if (r == -FL_EPROTO)
		st.frames_bad++;
	else if (r == 1)
		reject(d, "fetch", proto_fetch_reason(d->f->pf));
	else
		fetch_tick(d, now);
}

static struct {
	uint8_t h[32];
	int r;
	struct ota_manifest *m;
} cache[64];
static int n_cache;

static const struct ota_manifest *verify(const char *env, size_t len, const char **ret_code)
{
	/* Verification result per envelope (SHA-256): every simulated device
	 * gets the same envelope bytes and the same trust store, so one check
	 * answers for all; the per-device checks (replay, compatibility) run
	 * per device. */
	uint8_t h[32];
	fl_sha256(env, len, h);
	for (int i = 0; i < n_cache; i++)
		if (!memcmp(cache[i].h, h, 32)) {
			*ret_code = cache[i].r < 0 ? "bad_signature" : NULL;
			return cache[i].m;
		}
	struct ota_manifest *m = NULL;
	int r = ota_trust_verify_manifest(trust, env, len, fl_now_s(), 0, &m);
	if (r < 0) {
		fprintf(stderr, "flotilla-sim: manifest refused: %s\n", fl_strerror(r));
		st.verify_fail++;
		m = NULL;
	}
	if (n_cache < 64) {
		memcpy(cache[n_cache].h, h, 32);
		cache[n_cache].r = r;
		cache[n_cache].m = m;
		n_cache++;
	}
	*ret_code = r < 0 ? (r == -FL_EEXPIRED ? "expired" : "bad_signature") : NULL;
	return m;
}

/* A refusal before an install starts: an install.rejected event, no state
 * change (what the agent's session.c does). */
static void refuse(struct dev *d, const char *model, const char *version, const char *code,
		   const char *text)
{
	static int logged;
	if (logged++ < 20)
		fprintf(stderr, "flotilla-sim: %s: deploy %s %s refused: %s (%s)\n", d->id,
			model ? model : "-", version ? version : "-", code, text);
	event_m(d, model, TELE_EV_INSTALL_REJECTED, version, code, text);
}

/* The agent's deploy path: verify (cached per envelope), replay, then
 * compatibility (ota_compat_check, as the agent's pre-flight) and the
 * decision of agentproto (proto_deploy_decide) on the simulated facts. */
static void deploy(struct dev *d, const char *env, size_t len, int64_t now)
{
	st.deploys++;
	const char *code = NULL;
	const struct ota_manifest *m = verify(env, len, &code);
	if (!m) {
		if (proto_ratelimit_take(&d->refuse_rl, now))
			refuse(d, NULL, NULL, code, "deploy refused: manifest does not verify");
		return;
	}
	if (strcmp(m->name, S.model))
		return; /* one model per simulated device */
	struct proto_deploy_facts fx = {.highest_sequence = d->floor,
					.current_ready = d->ver[d->cur][0] != 0,
					.current_version = d->ver[d->cur],
					.current_sequence = d->seq[d->cur]};
	int dec;
	for (;;) {
		bool fetching = d->ist == I_FETCHING;
		fx.fetching_model = fetching ? S.model : NULL;
		fx.fetching_same = fetching && (d->man == m || (!strcmp(d->iver, m->version) &&
								 d->iseq == m->sequence));
		fx.install_pending = d->ist == I_STAGED || d->ist == I_TESTING || d->ist == I_TRIAL;
		dec = proto_deploy_decide(m, &fx);
		if (dec != PROTO_DEPLOY_SUPERSEDE)
			break;
		reject(d, "busy", "superseded by a newer deploy");
	}
	if (dec == PROTO_DEPLOY_REPLAY) { /* the agent's verification refuses it */
		if (proto_ratelimit_take(&d->refuse_rl, now))
			refuse(d, NULL, NULL, "replay", "deploy refused: manifest does not verify");
		return;
	}
	struct ota_device_info dev = {.arch = d->k->arch, .ram_mb = (uint64_t)d->k->ram_mb,
				      .backends = sim_backends};
	char why[256], msg[300];
	if (ota_compat_check(m, &dev, why, sizeof(why)) < 0) {
		snprintf(msg, sizeof(msg), "deploy refused: %s", why);
		refuse(d, m->name, m->version, "incompatible", msg);
		return;
	}
	switch (dec) {
	case PROTO_DEPLOY_START: break;
	case PROTO_DEPLOY_ALREADY_FETCHING: return;
	case PROTO_DEPLOY_ALREADY_CURRENT: d->state_dirty = true; return;
	default: refuse(d, m->name, m->version, "busy", proto_deploy_refusal(dec)); return;
	}
	fetch_free(d);
	snprintf(d->iver, sizeof(d->iver), "%s", m->version);
	d->iseq = m->sequence;
	d->man = m;
	d->bytes_done = d->chunks_done = d->chunks_total = 0;
	d->bytes_total = 0;
	for (size_t i = 0; i < m->n_files; i++)
		d->bytes_total += m->files[i].size;
	set_ist(d, I_FETCHING, NULL);
	event(d, TELE_EV_INSTALL_STARTED, d->iver, NULL, NULL);
	d->fetch_start = now;
	if (d->real) {
		if (fetch_new(d, now) < 0) {
			reject(d, "internal", "out of memory");
			return;
		}
		d->inext = now;
	} else {
		d->inext = now + jitter(d->k->fetch_ms, 0.3);
	}
}

static void revert(struct dev *d)
{
	st.reverts++;
	int o = 1 - d->cur;
	if (!d->ver[o][0])
		return;
	fetch_free(d);
	snprintf(d->iver, sizeof(d->iver), "%s", d->ver[d->cur]);
	d->cur = o;
	set_ist(d, I_ROLLED_BACK, "revert");
	event(d, TELE_EV_ROLLED_BACK, d->iver, "revert", "revert requested by the controller");
}

/* Advance D's install when its timer is due. */
static void install_step(struct dev *d, int64_t now)
{
	switch (d->ist) {
	case I_FETCHING:
		if (d->real) {
			if (!d->f)
				return;
			fetch_tick(d, now);
			return;
		}
		if (now >= d->inext) {
			d->chunks_total = d->chunks_total ? d->chunks_total : 1 + d->bytes_total / 65536;
			staged(d, now);
		} else {
			int64_t span = d->inext - d->fetch_start;
			d->bytes_done = span > 0 ? d->bytes_total * (uint64_t)(now - d->fetch_start) / (uint64_t)span : 0;
		}
		return;
	case I_STAGED:
		if (now >= d->inext) {
			set_ist(d, I_TESTING, NULL);
			d->inext = now + jitter(d->k->accept_ms, 0.2);
		}
		return;
	case I_TESTING:
		if (now < d->inext)
			return;
		if (hits(d->k, d->iver) && rnd01() < d->k->fail_accept) {
			reject(d, "acceptance", "acceptance test failed (simulated)");
			return;
		}
		d->cur = 1 - d->cur;
		snprintf(d->ver[d->cur], sizeof(d->ver[d->cur]), "%s", d->iver);
		d->seq[d->cur] = d->iseq;
		set_ist(d, I_TRIAL, NULL);
		event(d, TELE_EV_SWITCHED, d->iver, NULL, NULL);
		d->inext = now + jitter(d->k->trial_ms, 0.2);
		return;
	case I_TRIAL:
		if (now < d->inext)
			return;
		if (hits(d->k, d->iver) && rnd01() < d->k->crash_trial) {
			event(d, TELE_EV_TRIAL_FAILED, d->iver, "crash_loop", "runner crashed 3 times (simulated)");
			d->cur = 1 - d->cur;
			set_ist(d, I_ROLLED_BACK, "crash_loop");
			event(d, TELE_EV_ROLLED_BACK, d->iver, "crash_loop", NULL);
			return;
		}
		set_ist(d, I_COMMITTED, NULL);
		if (d->iseq > d->floor)
			d->floor = d->iseq;
		event(d, TELE_EV_COMMITTED, d->iver, NULL, NULL);
		return;
	default:
		return;
	}
}

/* ------------------------------------------------------------ MQTT callbacks */

/* The agent's command handling (agentproto: parse + validation, duplicate
 * window); keyring commands are counted and not simulated. */
static void on_cmd(struct dev *d, const char *p, size_t len, int64_t now)
{
	struct proto_cmd c;
	if (proto_cmd_parse(p, len, &c) < 0)
		return;
	st.cmds++;
	if (proto_cmd_ids_seen(&d->cmd_ids, c.id) != 0) {
		st.dup_cmds++;
		proto_cmd_free(&c);
		return;
	}
	switch (c.kind) {
	case PROTO_CMD_DEPLOY:
		if (c.arg_err)
			refuse(d, NULL, NULL, "schema", "deploy without an envelope");
		else
			deploy(d, c.envelope, strlen(c.envelope), now);
		break;
	case PROTO_CMD_REVERT:
		if (!c.arg_err && !strcmp(c.model, S.model))
			revert(d);
		break;
	case PROTO_CMD_PING: st.pings++; break;
	default: break;
	}
	d->state_dirty = true;
	proto_cmd_free(&c);
}

static void cb_connect(struct mosquitto *m, void *obj, int rc, int flags, const mosquitto_property *props)
{
	struct dev *d = obj;
	int64_t now = fl_mono_ms();
	if (rc != 0) {
		st.refused++;
		lost(d, now);
		return;
	}
	d->connecting = false;
	d->connected = true;
	d->up_since = now;
	d->reconnects++;
	st.connects++;
	char t[160];
	topic(d, "cmd", t, sizeof(t));
	mosquitto_subscribe_v5(m, NULL, t, 1, 0, NULL);
	topic(d, "chunk/dat", t, sizeof(t));
	mosquitto_subscribe_v5(m, NULL, t, 1, 0, NULL);
	state_publish(d, now);
	if (d->f) { /* everything in flight is asked for again */
		proto_fetch_reconnected(d->f->pf);
		for (size_t i = 0; i < d->f->n_c; i++)
			if (d->f->c[i].state == 1)
				d->f->c[i].state = 0;
		d->f->scan = 0;
	}
	flush(d, &d->pev, true);
	flush(d, &d->pmet, false);
	(void)flags;
	(void)props;
}

static void cb_disconnect(struct mosquitto *m, void *obj, int rc, const mosquitto_property *props)
{
	lost(obj, fl_mono_ms());
	(void)m;
	(void)rc;
	(void)props;
}

static void cb_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
		       const mosquitto_property *props)
{
	struct dev *d = obj;
	size_t tl = strlen(msg->topic);
	int64_t now = fl_mono_ms();
	if (tl > 4 && !strcmp(msg->topic + tl - 4, "/cmd"))
		on_cmd(d, msg->payload, (size_t)msg->payloadlen, now);
	else if (tl > 10 && !strcmp(msg->topic + tl - 10, "/chunk/dat"))
		on_frame(d, msg->payload, (size_t)msg->payloadlen, now);
	(void)m;
	(void)props;
}

static void cb_publish(struct mosquitto *m, void *obj, int mid, int reason, const mosquitto_property *props)
{
	struct dev *d = obj;
	if (reason >= 0x80)
		st.pub_refused++;
	if (!d->registered && mid == d->state_mid && reason < 0x80)
		d->registered = true;
	for (int i = 0; i < ACK_RING; i++)
		if (d->acks[i].mid == mid && d->acks[i].n) {
			if (reason < 0x80) {
				if (d->acks[i].ev)
					st.ev_acked += (uint64_t)d->acks[i].n;
				else
					st.met_acked += (uint64_t)d->acks[i].n;
			}
			d->acks[i].n = 0;
			break;
		}
	(void)m;
	(void)props;
}

static int cert_cb(SSL *ssl, void *arg)
{
	struct dev *d = g_cur;
	(void)arg;
	if (!d)
		return 0;
	if (SSL_use_certificate(ssl, d->crt) != 1 || SSL_use_PrivateKey(ssl, d->key) != 1)
		return 0;
	return 1;
}

/* ------------------------------------------------------------ setup */

static int load_pem(const char *path, X509 **crt, EVP_PKEY **key)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	if (crt)
		*crt = PEM_read_X509(f, NULL, NULL, NULL);
	if (key)
		*key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	return (crt && !*crt) || (key && !*key) ? -FL_EFORMAT : 0;
}

static int dev_init(struct dev *d, int i, const char *pki)
{
	d->i = i;
	snprintf(d->id, sizeof(d->id), "%s%05d", S.prefix, S.first + i);
	double w = 0, x;
	for (int c = 0; c < S.n_cls; c++)
		w += S.cls[c].weight;
	x = rnd01() * w;
	d->k = &S.cls[S.n_cls - 1];
	for (int c = 0; c < S.n_cls; c++) {
		if (x < S.cls[c].weight) {
			d->k = &S.cls[c];
			break;
		}
		x -= S.cls[c].weight;
	}
	d->real = rnd01() < S.real_fetch;
	char path[4096];
	snprintf(path, sizeof(path), "%s/devices/%s.crt", pki, d->id);
	int r = load_pem(path, &d->crt, NULL);
	if (r == 0) {
		snprintf(path, sizeof(path), "%s/devices/%s.key", pki, d->id);
		r = load_pem(path, NULL, &d->key);
	}
	if (r < 0) {
		fprintf(stderr, "flotilla-sim: %s: %s (run 'flotilla-sim certs' first)\n", path, fl_strerror(r));
		return r;
	}
	snprintf(d->ver[0], sizeof(d->ver[0]), "%s", S.version);
	d->seq[0] = S.sequence;
	d->floor = S.sequence;
	snprintf(d->stream, sizeof(d->stream), "%016" PRIx64, rnd());
	d->next_seq = 1;
	d->fd = -1;
	fl_backoff_init(&d->backoff, 0, 0, rnd() | 1);
	d->tele_next = S.telemetry_s ? fl_mono_ms() + (int64_t)(rnd01() * (double)S.telemetry_s * 1000) : INT64_MAX;
	d->m = mosquitto_new(d->id, false, d);
	if (!d->m)
		return -ENOMEM;
	mosquitto_int_option(d->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	mosquitto_int_option(d->m, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
	mosquitto_int_option(d->m, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_void_option(d->m, MOSQ_OPT_SSL_CTX, ctx);
	char t[160], off[256];
	topic(d, "state", t, sizeof(t));
	int n = proto_state_offline(d->id, off, sizeof(off));
	if (n < 0)
		return n;
	mosquitto_will_set_v5(d->m, t, n, off, 1, true, NULL);
	mosquitto_connect_v5_callback_set(d->m, cb_connect);
	mosquitto_disconnect_v5_callback_set(d->m, cb_disconnect);
	mosquitto_message_v5_callback_set(d->m, cb_message);
	mosquitto_publish_v5_callback_set(d->m, cb_publish);
	return 0;
}

static void dev_connect(struct dev *d, int64_t now)
{
	mosquitto_property *props = NULL;
	mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, 86400);
	g_cur = d;
	d->fd = -1;
	d->ev = 0;
	/* blocking only for the TCP connect (loopback: immediate); TLS and
	 * MQTT go on in the epoll loop */
	int rc = mosquitto_connect_bind_v5(d->m, host, port, 30, NULL, props);
	mosquitto_property_free_all(&props);
	d->started = true;
	d->connecting = true;
	d->conn_at = now;
	sync_fd(d);
	if (rc != MOSQ_ERR_SUCCESS)
		lost(d, now);
}

static int tls_init(const char *ca)
{
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		return -ENOMEM;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		fprintf(stderr, "flotilla-sim: cannot load CA %s\n", ca);
		return -FL_EKEY;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	X509_VERIFY_PARAM *vp = SSL_CTX_get0_param(ctx);
	if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1)
		X509_VERIFY_PARAM_set1_host(vp, host, 0);
	SSL_CTX_set_cert_cb(ctx, cert_cb, NULL);
	return 0;
}

static int trust_init(const char *dir)
{
	int r = ota_trust_open(dir, NULL, 0, &trust);
	if (r < 0) {
		fprintf(stderr, "flotilla-sim: trust %s: %s\n", dir, fl_strerror(r));
		return r;
	}
	_cleanup_free_ char *p = fl_path_join(dir, OTA_TRUST_KEYRING_FILE);
	_cleanup_free_ char *data = NULL;
	size_t len;
	if (p && fl_read_file(p, 1 << 20, &data, &len) == 0) {
		r = ota_trust_install_keyring(trust, data, len, fl_now_s());
		if (r < 0) {
			fprintf(stderr, "flotilla-sim: keyring %s: %s\n", p, fl_strerror(r));
			return r;
		}
	}
	return 0;
}

/* ------------------------------------------------------------ status */

static void write_status(const char *path, int64_t now)
{
	int conn = 0, reg = 0, ist[I__N] = {0}, no_model = 0;
	struct {
		char v[SIM_NAME_MAX + 1];
		int n;
	} vers[16];
	int nv = 0;
	for (int i = 0; i < N; i++) {
		struct dev *d = &D[i];
		conn += d->connected;
		reg += d->registered;
		ist[d->ist]++;
		const char *v = d->ver[d->cur];
		no_model += !v[0];
		int j;
		for (j = 0; j < nv; j++)
			if (!strcmp(vers[j].v, v))
				break;
		if (j == nv && nv < 16) {
			snprintf(vers[nv].v, sizeof(vers[nv].v), "%s", v);
			vers[nv++].n = 0;
		}
		if (j < nv)
			vers[j].n++;
	}
	if (conn == N && st.all_connected_ms < 0)
		st.all_connected_ms = now - t0;
	if (reg == N && st.all_registered_ms < 0)
		st.all_registered_ms = now - t0;
	if (!path)
		return;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	fprintf(f,
		"{\"start_wall_ms\":%" PRId64 ",\"t_ms\":%" PRId64 ",\"devices\":%d,\"connected\":%d,\"registered\":%d,"
		"\"all_connected_ms\":%" PRId64 ",\"all_registered_ms\":%" PRId64 ",\"connects\":%" PRIu64
		",\"disconnects\":%" PRIu64 ",\"refused\":%" PRIu64 ",\"churned\":%" PRIu64 ",\"cmds\":%" PRIu64
		",\"dup_cmds\":%" PRIu64 ",\"deploys\":%" PRIu64 ",\"reverts\":%" PRIu64 ",\"verify_fail\":%" PRIu64
		",\"events_made\":%" PRIu64 ",\"events_acked\":%" PRIu64 ",\"metrics_made\":%" PRIu64
		",\"metrics_acked\":%" PRIu64 ",\"batches\":%" PRIu64 ",\"pub_refused\":%" PRIu64
		",\"fetch_bytes\":%" PRIu64 ",\"chunks_ok\":%" PRIu64 ",\"chunks_bad\":%" PRIu64
		",\"chunk_timeouts\":%" PRIu64 ",\"chunk_reqs\":%" PRIu64 ",\"frames_bad\":%" PRIu64
		",\"first_fail_wall_ms\":%" PRId64 ",\"no_model\":%d,\"cpu_s\":%.2f,\"rss_kb\":%ld,\"install\":{",
		t0_wall, now - t0, N, conn, reg, st.all_connected_ms, st.all_registered_ms, st.connects, st.disconnects,
		st.refused, st.churned, st.cmds, st.dup_cmds, st.deploys, st.reverts, st.verify_fail, st.ev_made,
		st.ev_acked, st.met_made, st.met_acked, st.batches, st.pub_refused, st.fetch_bytes, st.chunks_ok,
		st.chunks_bad, st.chunk_timeouts, st.reqs, st.frames_bad, st.first_fail_wall_ms, no_model,
		(double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
			(double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6,
		ru.ru_maxrss);
	for (int i = 0; i < I__N; i++)
		fprintf(f, "%s\"%s\":%d", i ? "," : "", ist_name[i], ist[i]);
	fprintf(f, "},\"versions\":{");
	for (int j = 0; j < nv; j++)
		fprintf(f, "%s\"%s\":%d", j ? "," : "", vers[j].v, vers[j].n);
	fprintf(f, "}}\n");
	if (fclose(f) == 0)
		rename(tmp, path);
}

/* ------------------------------------------------------------ loop */

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void tick(int64_t now, double *tokens)
{
	for (int i = 0; i < N; i++) {
		struct dev *d = &D[i];
		g_cur = d;
		if (!d->connected && !d->connecting) {
			if (now >= d->next_conn && now >= d->offline_until && *tokens >= 1) {
				*tokens -= 1;
				dev_connect(d, now);
			}
		} else if (d->connecting && now - d->conn_at > CONNECT_TIMEOUT_MS) {
			lost(d, now);
		}
		if (d->connected && S.churn_per_min > 0 && rnd01() < S.churn_per_min * 0.05 / 60.0) {
			/* drop without DISCONNECT: the broker publishes the will */
			st.churned++;
			shutdown(mosquitto_socket(d->m), SHUT_RDWR);
			d->offline_until = now + jitter(S.churn_offline_s * 1000, 0.3);
		}
		if (d->ist != I_IDLE)
			install_step(d, now);
		if (d->connected) {
			if (d->state_dirty && now - d->state_last >= 1000)
				state_publish(d, now);
			if (now >= d->tele_next) {
				d->tele_next = now + S.telemetry_s * 1000;
				metrics(d);
			}
			flush(d, &d->pev, true);
			if (d->pmet.n)
				flush(d, &d->pmet, false);
		}
		if (d->started && now >= d->misc_next) {
			d->misc_next = now + 1000;
			mosquitto_loop_misc(d->m);
			sync_fd(d);
		}
	}
}

static int run(const char *status_path, int64_t duration_s)
{
	struct epoll_event evs[512];
	double tokens = 0;
	int64_t last = fl_mono_ms(), next_status = 0, next_tick = 0;
	int64_t end = duration_s > 0 ? last + duration_s * 1000 : INT64_MAX;
	while (!stop && fl_mono_ms() < end) {
		int n = epoll_wait(ep, evs, 512, 20);
		int64_t now = fl_mono_ms();
		for (int i = 0; i < n; i++) {
			struct dev *d = evs[i].data.ptr;
			if (d->fd < 0 || d->ev == 0)
				continue;
			g_cur = d;
			int rc = MOSQ_ERR_SUCCESS;
			if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				rc = mosquitto_loop_read(d->m, 16);
			if (rc == MOSQ_ERR_SUCCESS && (evs[i].events & EPOLLOUT) && mosquitto_socket(d->m) >= 0)
				rc = mosquitto_loop_write(d->m, 16);
			if (rc != MOSQ_ERR_SUCCESS && mosquitto_socket(d->m) < 0)
				lost(d, now);
			sync_fd(d);
		}
		if (now >= next_tick) {
			tokens += (double)(now - last) * S.connect_rate / 1000.0;
			if (tokens > S.connect_rate / 10.0 + 1)
				tokens = S.connect_rate / 10.0 + 1;
			last = now;
			tick(now, &tokens);
			next_tick = now + 50;
		}
		if (now >= next_status) {
			write_status(status_path, now);
			next_status = now + 1000;
		}
	}
	/* clean stop: DISCONNECT with reason 0x04 so that the broker sends the will */
	for (int i = 0; i < N; i++)
		if (D[i].connected) {
			g_cur = &D[i];
			mosquitto_disconnect_v5(D[i].m, MQTT_RC_DISCONNECT_WITH_WILL_MSG, NULL);
			mosquitto_loop_write(D[i].m, 1);
		}
	write_status(status_path, fl_mono_ms());
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: flotilla-sim certs --pki DIR [--prefix P] [--first I] --count N\n"
		"       flotilla-sim run --uri ssl://HOST:PORT --pki DIR --trust DIR [--scenario FILE]\n"
		"                        [--count N] [--first I] [--prefix P] [--status FILE] [--duration S]\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage();
		return 2;
	}
	const char *cmd = argv[1];
	const char *pki = NULL, *uri = NULL, *trust_dir = NULL, *scen = NULL, *status = NULL, *prefix = NULL;
	int64_t count = -1, first = -1, duration = 0;
	static const struct option opts[] = {
		{"pki", 1, 0, 'p'},	 {"uri", 1, 0, 'u'},   {"trust", 1, 0, 't'},	{"scenario", 1, 0, 's'},
		{"status", 1, 0, 'S'},	 {"count", 1, 0, 'n'}, {"first", 1, 0, 'f'},	{"prefix", 1, 0, 'P'},
		{"duration", 1, 0, 'd'}, {"help", 0, 0, 'h'},  {0, 0, 0, 0},
	};
	int c;
	optind = 2;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		int r = 0;
		switch (c) {
		case 'p': pki = optarg; break;
		case 'u': uri = optarg; break;
		case 't': trust_dir = optarg; break;
		case 's': scen = optarg; break;
		case 'S': status = optarg; break;
		case 'P': prefix = optarg; break;
		case 'n': r = fl_parse_i64(optarg, 1, 100000, &count); break;
		case 'f': r = fl_parse_i64(optarg, 0, 10000000, &first); break;
		case 'd': r = fl_parse_i64(optarg, 0, 86400 * 7, &duration); break;
		default: usage(); return 2;
		}
		if (r < 0) {
			fprintf(stderr, "flotilla-sim: bad value for --%s: %s\n", opts[0].name, optarg);
			usage();
			return 2;
		}
	}
	if (optind != argc) {
		usage();
		return 2;
	}
	if (sim_scenario_load(scen, &S) < 0)
		return 2;
	if (count > 0)
		S.n = (int)count;
	if (first >= 0)
		S.first = (int)first;
	if (prefix) {
		if (strlen(prefix) > 20 || !fl_name_valid(prefix, 20) || !strncmp(prefix, "flotilla-", 9)) {
			fprintf(stderr, "flotilla-sim: bad --prefix\n");
			return 2;
		}
		snprintf(S.prefix, sizeof(S.prefix), "%s", prefix);
	}
	if (!strcmp(cmd, "certs")) {
		if (!pki) {
			usage();
			return 2;
		}
		return sim_certs(pki, S.prefix, S.first, S.n) < 0 ? 1 : 0;
	}
	if (strcmp(cmd, "run") || !pki || !uri || !trust_dir) {
		usage();
		return 2;
	}
	if (sscanf(uri, "ssl://%255[^:]:%d", host, &port) != 2 || port <= 0 || port > 65535) {
		fprintf(stderr, "flotilla-sim: --uri must be ssl://HOST:PORT\n");
		return 2;
	}
	/* A libmosquitto client holds three descriptors (its socket and a
	 * socketpair made by mosquitto_new() for its threaded loop, unused here):
	 * raise the soft limit to the hard one and refuse what does not fit. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		if ((rlim_t)S.n * SIM_FDS_PER_DEVICE + 64 > rl.rlim_cur) {
			fprintf(stderr,
				"flotilla-sim: %d devices need %d descriptors, the limit is %llu: "
				"run several processes (--first/--count)\n",
				S.n, S.n * SIM_FDS_PER_DEVICE + 64, (unsigned long long)rl.rlim_cur);
			return 3;
		}
	}
	rng_state = S.seed * 0x9E3779B97F4A7C15ULL + 1;
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	signal(SIGPIPE, SIG_IGN);
	mosquitto_lib_init();
	char ca[4096];
	snprintf(ca, sizeof(ca), "%s/ca.crt", pki);
	int rc = 1;
	if (tls_init(ca) < 0 || trust_init(trust_dir) < 0)
		goto out;
	for (int k = 0; k < S.n_cls; k++) {
		const char *lj = S.cls[k].labels_json[0] ? S.cls[k].labels_json : "{}";
		cls_labels[k] = cJSON_Parse(lj);
		if (!cJSON_IsObject(cls_labels[k])) {
			fprintf(stderr, "flotilla-sim: class %s: bad labels\n", S.cls[k].name);
			goto out;
		}
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	N = S.n;
	D = calloc((size_t)N, sizeof(*D));
	if (!D || ep < 0)
		goto out;
	int64_t tl = fl_mono_ms();
	for (int i = 0; i < N; i++)
		if (dev_init(&D[i], i, pki) < 0) {
			N = i;
			goto out;
		}
	fprintf(stderr, "flotilla-sim: %d devices (%d classes, %.0f%% fetch for real) loaded in %" PRId64 " ms\n",
		N, S.n_cls, S.real_fetch * 100, fl_mono_ms() - tl);
	t0 = fl_mono_ms();
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	t0_wall = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	rc = run(status, duration);
out:
	for (int i = 0; i < N; i++) {
		fetch_free(&D[i]);
		for (int j = 0; j < D[i].pev.n; j++)
			free(D[i].pev.rec[j]);
		for (int j = 0; j < D[i].pmet.n; j++)
			free(D[i].pmet.rec[j]);
		mosquitto_destroy(D[i].m);
		X509_free(D[i].crt);
		EVP_PKEY_free(D[i].key);
	}
	free(D);
	for (int k = 0; k < SIM_MAX_CLASSES; k++)
		cJSON_Delete(cls_labels[k]);
	for (int i = 0; i < n_cache; i++)
		ota_manifest_free(cache[i].m);
	SSL_CTX_free(ctx);
	ota_trust_free(trust);
	if (ep >= 0)
		close(ep);
	mosquitto_lib_cleanup();
	return rc;
}
