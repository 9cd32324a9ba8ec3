/* Network install (docs/install.md "Installing over MQTT"): fill the
 * inactive slot from chunks pulled with chunk/req + chunk/dat
 * (docs/protocol.md), reusing every chunk the active slot already holds,
 * with durable progress so that a disconnect, a broker restart or an agent
 * restart only costs the chunks that were in flight. When the slot is
 * complete the install continues exactly like a local one (STAGED ->
 * TESTING -> SWITCHING -> TRIAL/COMMITTED, install.c).
 *
 * The owner (session.c) drives it: agent_fetch_step() sends requests through
 * a callback and says when to call again, agent_fetch_on_frame() takes each
 * chunk/dat message. Nothing here blocks on the network. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "fetch.h"
#include <flotilla/chunkidx.h>
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/log.h>
#include <flotilla/manifest.h>
#include <flotilla/stage.h>
#include <flotilla/util.h>

#define FRAME_HDR 52
#define RANGE_MAX (256u * 1024u)
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
 * between WINDOW_MIN and AGENT_FETCH_WINDOW_BYTES, so a slow link does not
 * queue more than the timeout can wait for. Measured every RATE_PERIOD_MS. */
#define RATE_WINDOW_MS 1000
#define RATE_PERIOD_MS 250
#define WINDOW_MIN (256u * 1024u)
#define HOLD_MAX_MS 30000
/* Durable progress: the stage records it every OTA_STAGE_SYNC_BYTES or
 * OTA_STAGE_SYNC_CHUNKS; on a slow link also at least this often. A kill -9
 * loses nothing written since (the .part files are read back on resume),
 * a power cut at most that much. */
#define SYNC_MS 10000
#define EBUSY_RETRY_MS 20
#define NOT_FOUND_MAX 30 /* "not found" answers before giving up */
#define IDX_BAD_MAX 3 /* chunk indexes that fail their hash */

enum phase { PH_INDEX, PH_CHUNKS, PH_DONE };

struct outstanding {
	bool used;
	uint8_t id[FL_SHA256_LEN];
	uint32_t len;
	int64_t sent_ms;
};

struct agent_fetch {
	struct agent *a;
	struct install_rec rec;
	struct ota_manifest *m;
	char *env;
	size_t env_len;
	struct ota_slots *s;
	enum phase phase;
	/* chunk indexes of the new files */
	struct ota_chunkidx **idx;
	size_t n_idx; /* loaded so far (file order) */
	struct fl_buf ibuf; /* index being fetched */
	bool ipending;
	uint64_t ioff;
	int64_t isent_ms;
	int ibad;
	/* local sources (the active slot) */
	struct ota_chunkidx **src;
	size_t n_src;
	struct ota_stage *st;
	struct outstanding out[AGENT_FETCH_WINDOW];
	int n_out;
	uint64_t out_bytes; /* bytes of the outstanding ranges */
	struct ota_stage_want pend; /* taken from the stage, not yet asked for */
	bool has_pend;
	bool resumed; /* agent_fetch_resume(): look into the .part files */
	int64_t sync_ms;
	/* adaptive window and timeout */
	uint64_t window; /* bytes */
	double rate; /* bytes/s, smoothed */
	uint64_t rate_bytes;
	int64_t rate_t0;
	double srtt; /* ms, 0: no sample yet */
	int64_t last_frame_ms; /* last chunk frame taken */
	int64_t hold_until;
	int hold_ms;
	int not_found;
	double tokens;
	int64_t tok_ms;
	uint64_t unsynced;
	struct agent_fetch_stats stats;
	int result;
};

static bool is_net(const struct install_rec *rec)
{
	return !strncmp(rec->source, AGENT_NET_SOURCE, strlen(AGENT_NET_SOURCE));
}

static void hex(const uint8_t id[FL_SHA256_LEN], char out[FL_SHA256_HEX_LEN + 1])
{
	fl_hex_encode(id, FL_SHA256_LEN, out);
}

/* Load the cached chunk index whose SHA-256 is WANT; 0 and *ret, or <0. */
static int cidx_load(struct agent *a, const char *model, const uint8_t want[FL_SHA256_LEN],
		     struct ota_chunkidx **ret)
{
	_cleanup_free_ char *dir = agent_cidx_dir(a, model);
	char h[FL_SHA256_HEX_LEN + 1];
	hex(want, h);
	_cleanup_free_ char *p = dir ? fl_path_join(dir, h) : NULL;
	if (!p)
		return -ENOMEM;
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = fl_read_file(p, OTA_CIDX_MAX_BYTES, &data, &len);
	if (r < 0)
		return r;
	uint8_t got[FL_SHA256_LEN];
	fl_sha256(data, len, got);
	if (memcmp(got, want, FL_SHA256_LEN)) {
		unlink(p); /* damaged cache entry */
		return -FL_EHASH;
	}
	return ota_chunkidx_decode(data, len, ret);
}

/* Keep only the cached indexes the two manifests name. */
static void cidx_prune(struct agent *a, const char *model, const struct ota_manifest *keep1,
		       const struct ota_manifest *keep2)
{
	_cleanup_free_ char *dir = agent_cidx_dir(a, model);
	DIR *d = dir ? opendir(dir) : NULL;
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		uint8_t id[FL_SHA256_LEN];
		if (strlen(de->d_name) != FL_SHA256_HEX_LEN ||
		    fl_hex_decode(de->d_name, id, sizeof(id)) < 0)
			continue;
		bool keep = false;
		for (int k = 0; k < 2 && !keep; k++) {
			const struct ota_manifest *m = k ? keep2 : keep1;
			for (size_t i = 0; m && i < m->n_files && !keep; i++)
				keep = !memcmp(m->files[i].chunk_index_sha256, id, FL_SHA256_LEN);
		}
		if (!keep) {
			_cleanup_free_ char *p = fl_path_join(dir, de->d_name);
			if (p)
				unlink(p);
		}
	}
	closedir(d);
}

static struct agent_fetch *fetch_alloc(struct agent *a)
{
	struct agent_fetch *f = calloc(1, sizeof(*f));
	if (f) {
		f->a = a;
		f->hold_ms = 500;
	}
	return f;
}

void agent_fetch_free(struct agent_fetch *f)
{
	if (!f)
		return;
	if (f->st) {
		ota_stage_sync(f->st);
		ota_stage_free(f->st);
	}
	for (size_t i = 0; f->idx && i < f->m->n_files; i++)
		ota_chunkidx_free(f->idx[i]);
	free(f->idx);
	for (size_t i = 0; i < f->n_src; i++)
		ota_chunkidx_free(f->src[i]);
	free(f->src);
	fl_buf_free(&f->ibuf);
	ota_slots_free(f->s);
	ota_manifest_free(f->m);
	free(f->env);
	free(f);
}

static int fetch_init_common(struct agent_fetch *f)
{
	f->idx = calloc(f->m->n_files ? f->m->n_files : 1, sizeof(*f->idx));
	if (!f->idx)
		return -ENOMEM;
	f->stats.started_ms = fl_mono_ms();
	f->phase = PH_INDEX;
	f->tok_ms = fl_mono_ms();
	f->tokens = 0;
	f->sync_ms = f->tok_ms;
	f->window = WINDOW_MIN;
	f->rate_t0 = f->tok_ms;
	return 0;
}

int agent_fetch_begin(struct agent *a, const char *env, size_t env_len, struct ota_manifest *m,
		      struct ota_slots *s, struct agent_fetch **ret)
{
	struct agent_fetch *f = fetch_alloc(a);
	if (!f)
		return -ENOMEM;
	f->env = malloc(env_len + 1);
	if (!f->env) {
		free(f);
		return -ENOMEM;
	}
	memcpy(f->env, env, env_len);
	f->env[env_len] = 0;
	f->env_len = env_len;
	f->m = m;
	f->s = s;
	struct install_rec *rec = &f->rec;
	*rec = (struct install_rec){.sequence = m->sequence,
				    .from_slot = ota_slots_current(s),
				    .to_slot = ota_slots_inactive(s),
				    .state = ST_FETCHING};
	fl_strlcpy(rec->model, m->name, sizeof(rec->model));
	fl_strlcpy(rec->version, m->version, sizeof(rec->version));
	snprintf(rec->source, sizeof(rec->source), AGENT_NET_SOURCE "%s", m->version);
	int r = fetch_init_common(f);
	_cleanup_free_ char *pp = agent_progress_path(a, m->name);
	_cleanup_free_ char *pdir = fl_asprintf("%s/progress", a->cfg.state_dir);
	if (r == 0 && (!pp || !pdir))
		r = -ENOMEM;
	if (r == 0)
		r = fl_mkdir_p(pdir, 0755);
	if (r == 0)
		unlink(pp); /* a record of an older, superseded fetch */
	if (r == 0)
		r = journal_install_begin(a->journal, rec);
	if (r == 0) {
		agent_event(a, m->name, "install.started", m->version, 0, "fetching over MQTT");
		/* The envelope goes with the staging slot so a restart can resume. */
		r = journal_slot_set(a->journal, m->name, rec->to_slot, SLOT_STAGING, m->version,
				     m->sequence, env, env_len);
	}
	if (r == 0)
		r = ota_slots_clear(s, rec->to_slot);
	if (r < 0) {
		if (rec->id)
			agent_reject_staged(a, s, rec, r, "could not start the fetch");
		f->m = NULL; /* caller keeps M and S on error */
		f->s = NULL;
		agent_fetch_free(f);
		return r;
	}
	*ret = f;
	return 0;
}

int agent_fetch_resume(struct agent *a, const struct install_rec *rec, struct agent_fetch **ret)
{
	if (rec->state != ST_FETCHING || !is_net(rec))
		return -EINVAL;
	struct agent_fetch *f = fetch_alloc(a);
	if (!f)
		return -ENOMEM;
	f->rec = *rec;
	struct slot_rec sr;
	int r = journal_slot_get(a->journal, rec->model, rec->to_slot, &sr);
	if (r == 0 && !sr.envelope)
		r = -FL_EMISSING;
	if (r == 0) {
		f->env = sr.envelope;
		f->env_len = sr.envelope_len;
		r = agent_envelope_manifest(sr.envelope, sr.envelope_len, &f->m);
	}
	if (r == 0)
		r = ota_slots_open(a->models_dir, rec->model, &f->s);
	if (r == 0 && ota_slots_current(f->s) == rec->to_slot)
		r = -FL_ESTATE;
	if (r == 0)
		r = fetch_init_common(f);
	f->resumed = true;
	if (r < 0) {
		if (f->s || ota_slots_open(a->models_dir, rec->model, &f->s) == 0)
			agent_reject_staged(a, f->s, rec, r, "cannot resume the network install");
		agent_fetch_free(f);
		return r;
	}
	fl_info("resuming network install of %s %s", rec->model, rec->version);
	*ret = f;
	return 0;
}

const char *agent_fetch_model(const struct agent_fetch *f)
{
	return f->rec.model;
}

bool agent_fetch_same(const struct agent_fetch *f, const struct ota_manifest *m)
{
	const struct ota_manifest *o = f->m;
	if (strcmp(o->name, m->name) || strcmp(o->version, m->version) ||
	    o->sequence != m->sequence || o->n_files != m->n_files)
		return false;
	for (size_t i = 0; i < m->n_files; i++)
		if (strcmp(o->files[i].path, m->files[i].path) ||
		    memcmp(o->files[i].sha256, m->files[i].sha256, FL_SHA256_LEN))
			return false;
	return true;
}

int agent_fetch_cancel(struct agent_fetch *f, const char *reason)
{
	if (f->st) {
		ota_stage_abort(f->st);
		f->st = NULL;
	}
	int r = agent_reject_staged(f->a, f->s, &f->rec, -FL_ESTATE, reason);
	f->phase = PH_DONE;
	f->result = -FL_ESTATE;
	return r;
}

void agent_fetch_reconnected(struct agent_fetch *f)
{
	memset(f->out, 0, sizeof(f->out));
	f->n_out = 0;
	f->out_bytes = 0;
	f->has_pend = false;
	if (f->st)
		ota_stage_reset_inflight(f->st);
	f->ipending = false;
	f->hold_until = 0;
}

void agent_fetch_stats(const struct agent_fetch *f, struct agent_fetch_stats *ret)
{
	*ret = f->stats;
	if (f->st)
		ota_stage_progress(f->st, &ret->bytes_done, &ret->bytes_total, &ret->chunks_done,
				   &ret->chunks_total);
}

int agent_fetch_result(const struct agent_fetch *f)
{
	return f->phase == PH_DONE ? f->result : 1;
}

/* End the install before the switch with REASON. */
static void fail(struct agent_fetch *f, int err, const char *reason)
{
	if (f->st) {
		ota_stage_abort(f->st);
		f->st = NULL;
	}
	fl_err("network install of %s %s: %s (%s)", f->rec.model, f->rec.version, reason,
	       fl_strerror(err));
	agent_reject_staged(f->a, f->s, &f->rec, err, reason);
	f->phase = PH_DONE;
	f->result = err;
}

/* Index of OUT holding ID, or -1. */
static int out_find(const struct agent_fetch *f, const uint8_t id[FL_SHA256_LEN])
{
	for (int i = 0; i < AGENT_FETCH_WINDOW; i++)
		if (f->out[i].used && !memcmp(f->out[i].id, id, FL_SHA256_LEN))
			return i;
	return -1;
}

static void out_drop(struct agent_fetch *f, int i)
{
	f->out[i].used = false;
	f->n_out--;
	f->out_bytes -= f->out[i].len;
}

static void hold(struct agent_fetch *f, int64_t now)
{
	f->hold_until = now + f->hold_ms;
	f->hold_ms = f->hold_ms * 2 > HOLD_MAX_MS ? HOLD_MAX_MS : f->hold_ms * 2;
}

/* {"v":1,"req":[{"id":..,"off":..,"len":..},...]} */
static int send_req(const uint8_t (*ids)[FL_SHA256_LEN], const uint64_t *offs, const uint32_t *lens,
		    size_t n, agent_fetch_send_fn send, void *ud)
{
	char buf[AGENT_FETCH_REQ_ITEMS * 140 + 32];
	size_t k = (size_t)snprintf(buf, sizeof(buf), "{\"v\":1,\"req\":[");
	for (size_t i = 0; i < n; i++) {
		char h[FL_SHA256_HEX_LEN + 1];
		hex(ids[i], h);
		k += (size_t)snprintf(buf + k, sizeof(buf) - k,
				      "%s{\"id\":\"%s\",\"off\":%llu,\"len\":%u}", i ? "," : "", h,
				      (unsigned long long)offs[i], lens[i]);
	}
	k += (size_t)snprintf(buf + k, sizeof(buf) - k, "]}");
	return send(ud, buf, k);
}

/* All indexes are there: open the stage, register the active slot's files
 * and copy every chunk found locally. */
static int open_stage(struct agent_fetch *f)
{
	struct agent *a = f->a;
	_cleanup_free_ char *pp = agent_progress_path(a, f->rec.model);
	if (!pp)
		return -ENOMEM;
	const char *dir = ota_slots_dir(f->s, f->rec.to_slot);
	int r = fl_mkdir_p(dir, 0755);
	if (r == 0)
		r = ota_stage_open(dir, f->m, (const struct ota_chunkidx *const *)f->idx, pp,
				   &f->st);
	if (r < 0)
		return r;
	char cur = ota_slots_current(f->s);
	struct slot_rec sr = {0};
	struct ota_manifest *am = NULL;
	if (cur && journal_slot_get(a->journal, f->rec.model, cur, &sr) == 0 && sr.envelope &&
	    sr.status == SLOT_READY)
		agent_envelope_manifest(sr.envelope, sr.envelope_len, &am);
	free(sr.envelope);
	if (am) {
		f->src = calloc(am->n_files ? am->n_files : 1, sizeof(*f->src));
		struct ota_chunk_params par;
		ota_chunkidx_params(f->idx[0], &par);
		unsigned opts =
			(ota_chunkidx_flags(f->idx[0]) & OTA_CIDX_F_GGUF) ? OTA_CHUNK_OPT_GGUF : 0;
		for (size_t i = 0; f->src && i < am->n_files; i++) {
			_cleanup_free_ char *p =
				fl_path_join(ota_slots_dir(f->s, cur), am->files[i].path);
			struct ota_chunkidx *ci = NULL;
			if (!p)
				continue;
			if (cidx_load(a, f->rec.model, am->files[i].chunk_index_sha256, &ci) < 0 &&
			    ota_chunk_file(p, &par, opts, &ci) < 0)
				continue;
			if (ota_stage_add_source(f->st, p, ci) < 0) {
				ota_chunkidx_free(ci);
				continue;
			}
			f->src[f->n_src++] = ci;
		}
		ota_manifest_free(am);
	}
	uint64_t before = 0, local = 0, recovered = 0;
	ota_stage_progress(f->st, &before, NULL, NULL, NULL);
	r = ota_stage_fill_local(f->st, &local);
	if (r < 0)
		return r;
	/* After a restart: chunks written to the .part files but not yet in the
	 * progress record (a kill -9 between two syncs) are still there; each
	 * one is hashed before it counts, so a torn or lost write is fetched. */
	size_t added = 0;
	for (size_t i = 0; f->resumed && i < f->m->n_files; i++) {
		_cleanup_free_ char *p = fl_asprintf("%s/%s" OTA_STAGE_PART_SUFFIX, dir,
						     f->m->files[i].path);
		if (p && access(p, F_OK) == 0 && ota_stage_add_source(f->st, p, f->idx[i]) == 0)
			added++;
	}
	if (added) {
		r = ota_stage_fill_local(f->st, &recovered);
		if (r < 0)
			return r;
	}
	f->stats.bytes_local = local;
	f->stats.bytes_resumed = before + recovered;
	f->stats.bytes_recovered = recovered;
	fl_info("%s %s: %llu bytes resumed (%llu of them read back from unrecorded writes), "
		"%llu copied from the active slot",
		f->rec.model, f->rec.version, (unsigned long long)(before + recovered),
		(unsigned long long)recovered, (unsigned long long)local);
	return 0;
}

/* Slot complete: rename, journal, then the local path's test/switch. */
static void complete(struct agent_fetch *f)
{
	int r = ota_stage_finish(f->st);
	if (r == -FL_EHASH) {
		fl_warn("%s: a staged file failed its hash; fetching its bad chunks again",
			f->rec.model);
		return; /* chunks marked missing again */
	}
	if (r < 0) {
		fail(f, r, "staging failed");
		return;
	}
	ota_stage_free(f->st);
	f->st = NULL;
	struct agent *a = f->a;
	f->stats.done_ms = fl_mono_ms();
	fl_info("%s %s fetched: %llu bytes over MQTT in %lld ms (%llu local, %llu resumed, "
		"%llu bad chunks refetched, %llu timeouts, mean round trip %llu ms)",
		f->rec.model, f->rec.version, (unsigned long long)f->stats.bytes_fetched,
		(long long)(f->stats.done_ms - f->stats.started_ms),
		(unsigned long long)f->stats.bytes_local,
		(unsigned long long)f->stats.bytes_resumed, (unsigned long long)f->stats.bad_chunks,
		(unsigned long long)f->stats.timeouts,
		(unsigned long long)(f->stats.rtt_n ? f->stats.rtt_sum_ms / f->stats.rtt_n : 0));
	r = journal_slot_set(a->journal, f->m->name, f->rec.to_slot, SLOT_READY, f->m->version,
			     f->m->sequence, f->env, f->env_len);
	if (r == 0)
		r = journal_install_set(a->journal, f->rec.id, ST_STAGED, NULL);
	if (r < 0) {
		f->phase = PH_DONE;
		f->result = r;
		return;
	}
	agent_event(a, f->m->name, "install.staged", f->m->version, 0, NULL);
	f->phase = PH_DONE;
	f->result = agent_finish_staged(a, f->s, &f->rec, f->m);
	/* Keep the chunk indexes of what the slots now hold. */
	struct ota_manifest *old = NULL;
	struct slot_rec sr = {0};
	if (f->rec.from_slot &&
	    journal_slot_get(a->journal, f->rec.model, f->rec.from_slot, &sr) == 0 && sr.envelope)
		agent_envelope_manifest(sr.envelope, sr.envelope_len, &old);
	free(sr.envelope);
	cidx_prune(a, f->rec.model, f->m, old);
	ota_manifest_free(old);
}

/* Chunk index phase: one range in flight at a time. */
static int step_index(struct agent_fetch *f, int64_t now, agent_fetch_send_fn send, void *ud)
{
	while (!f->ipending && f->n_idx < f->m->n_files) {
		const struct ota_manifest_file *mf = &f->m->files[f->n_idx];
		struct ota_chunkidx *ci = NULL;
		if (cidx_load(f->a, f->rec.model, mf->chunk_index_sha256, &ci) < 0)
			break;
		f->idx[f->n_idx++] = ci;
	}
	if (f->n_idx == f->m->n_files) {
		int r = open_stage(f);
		if (r < 0) {
			fail(f, r, "cannot stage the new files");
			return 0;
		}
		f->phase = PH_CHUNKS;
		return 1;
	}
	if (f->ipending && now - f->isent_ms < TIMEOUT_MS)
		return 0;
	if (f->ipending)
		f->stats.timeouts++;
	if (now < f->hold_until)
		return 0;
	uint64_t off = f->ibuf.len;
	uint32_t len = RANGE_MAX;
	int r = send_req(&f->m->files[f->n_idx].chunk_index_sha256, &off, &len, 1, send, ud);
	if (r < 0) {
		f->ipending = false;
		f->hold_until = now + 200;
		return 0;
	}
	f->ipending = true;
	f->ioff = off;
	f->isent_ms = now;
	return 0;
}

static void index_done(struct agent_fetch *f)
{
	const struct ota_manifest_file *mf = &f->m->files[f->n_idx];
	uint8_t got[FL_SHA256_LEN];
	fl_sha256(f->ibuf.p, f->ibuf.len, got);
	struct ota_chunkidx *ci = NULL;
	int r = memcmp(got, mf->chunk_index_sha256, FL_SHA256_LEN) ? -FL_EHASH : 0;
	if (r == 0)
		r = ota_chunkidx_decode(f->ibuf.p, f->ibuf.len, &ci);
	if (r == 0)
		agent_cidx_save(f->a, f->rec.model, f->ibuf.p, f->ibuf.len);
	fl_buf_free(&f->ibuf);
	f->ibuf = (struct fl_buf){0};
	f->ipending = false;
	if (r < 0) {
		f->stats.bad_frames++;
		if (++f->ibad >= IDX_BAD_MAX)
			fail(f, r, "the chunk index from the controller fails its hash");
		return;
	}
	f->idx[f->n_idx++] = ci;
}

static void on_index_frame(struct agent_fetch *f, int status, const uint8_t *id, uint64_t off,
			   const uint8_t *data, uint32_t len, int64_t now)
{
	if (!f->ipending || f->n_idx >= f->m->n_files ||
	    memcmp(id, f->m->files[f->n_idx].chunk_index_sha256, FL_SHA256_LEN) || off != f->ioff)
		return; /* late duplicate */
	if (status == 2 && off > 0 && off == f->ibuf.len) {
		index_done(f); /* the index ended exactly at the previous range */
		return;
	}
	if (status != 0) {
		f->ipending = false;
		if (++f->not_found > NOT_FOUND_MAX) {
			fail(f, -FL_EMISSING, "the controller does not have the chunk index");
			return;
		}
		hold(f, now);
		return;
	}
	if (f->ibuf.len + len > OTA_CIDX_MAX_BYTES) {
		fl_buf_free(&f->ibuf);
		f->ibuf = (struct fl_buf){0};
		f->ipending = false;
		fail(f, -FL_ETOOBIG, "chunk index too large");
		return;
	}
	if (fl_buf_append(&f->ibuf, data, len) < 0) {
		f->ipending = false;
		return;
	}
	f->stats.bytes_fetched += len;
	f->ipending = false;
	if (len < RANGE_MAX)
		index_done(f);
}

static void refill_tokens(struct agent_fetch *f, int64_t now)
{
	uint64_t cap = f->a->cfg.bandwidth_bps;
	if (!cap)
		return;
	f->tokens += (double)cap * (double)(now - f->tok_ms) / 1000.0;
	double burst = (double)(cap > RANGE_MAX ? cap : RANGE_MAX);
	if (f->tokens > burst)
		f->tokens = burst;
	f->tok_ms = now;
}

static int64_t rto(const struct agent_fetch *f)
{
	if (f->srtt <= 0)
		return TIMEOUT_MS;
	double t = 3.0 * f->srtt;
	return t < RTO_MIN_MS ? RTO_MIN_MS : t > TIMEOUT_MS ? TIMEOUT_MS : (int64_t)t;
}

/* When outstanding range I times out (see RTO_MIN_MS). */
static int64_t out_due(const struct agent_fetch *f, int i)
{
	int64_t from = f->out[i].sent_ms > f->last_frame_ms ? f->out[i].sent_ms : f->last_frame_ms;
	int64_t due = from + rto(f), hard = f->out[i].sent_ms + HARD_TIMEOUT_MS;
	return due < hard ? due : hard;
}

/* Window = the delivery rate x RATE_WINDOW_MS, clamped. */
static void update_window(struct agent_fetch *f, int64_t now)
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
		    : w > AGENT_FETCH_WINDOW_BYTES ? AGENT_FETCH_WINDOW_BYTES
						   : (uint64_t)w;
}

/* Take the next range for a request: the held one or the stage's next
 * missing chunk (0 when there is none). */
static int take_want(struct agent_fetch *f, struct ota_stage_want *w)
{
	if (!f->has_pend) {
		if (ota_stage_next_missing(f->st, &f->pend, 1) != 1)
			return 0;
		f->has_pend = true;
	}
	*w = f->pend;
	return 1;
}

static int step_chunks(struct agent_fetch *f, int64_t now, agent_fetch_send_fn send, void *ud,
		       int *next_ms)
{
	bool timed_out = false;
	for (int i = 0; i < AGENT_FETCH_WINDOW; i++) {
		if (f->out[i].used && now >= out_due(f, i)) {
			ota_stage_release(f->st, f->out[i].id);
			out_drop(f, i);
			f->stats.timeouts++;
			timed_out = true;
		}
	}
	if (timed_out)
		hold(f, now); /* once per sweep: the window usually times out together */
	uint64_t done = 0, total = 0;
	ota_stage_progress(f->st, &done, &total, NULL, NULL);
	if (done == total && f->n_out == 0) {
		complete(f);
		return 1;
	}
	if (f->unsynced && now - f->sync_ms >= SYNC_MS) {
		int r = ota_stage_sync(f->st);
		if (r < 0) {
			fail(f, r, "recording progress failed");
			return 0;
		}
		f->unsynced = 0;
		f->sync_ms = now;
	}
	if (now < f->hold_until) {
		*next_ms = (int)(f->hold_until - now);
		return 0;
	}
	refill_tokens(f, now);
	update_window(f, now);
	uint64_t cap = f->a->cfg.bandwidth_bps;
	/* Batch: ask again once a quarter of the window's bytes or a whole
	 * request's worth of ranges is free (fewer, fuller chunk/req). */
	if (f->n_out > 0 && f->out_bytes + f->window / 4 > f->window &&
	    AGENT_FETCH_WINDOW - f->n_out < AGENT_FETCH_REQ_ITEMS)
		return 0;
	for (;;) {
		struct ota_stage_want want[AGENT_FETCH_REQ_ITEMS];
		uint64_t bytes = 0;
		size_t n = 0;
		struct ota_stage_want w;
		while (n < AGENT_FETCH_REQ_ITEMS && f->n_out + (int)n < AGENT_FETCH_WINDOW &&
		       (!cap || f->tokens > 0) && take_want(f, &w)) {
			/* Always room for one range when nothing is outstanding. */
			if (f->n_out + (int)n > 0 &&
			    f->out_bytes + bytes + w.len > f->window)
				break; /* kept in f->pend for the next round */
			f->has_pend = false;
			if (cap)
				f->tokens -= w.len;
			want[n++] = w;
			bytes += w.len;
		}
		if (!n)
			break;
		uint8_t ids[AGENT_FETCH_REQ_ITEMS][FL_SHA256_LEN];
		uint64_t offs[AGENT_FETCH_REQ_ITEMS];
		uint32_t lens[AGENT_FETCH_REQ_ITEMS];
		for (size_t i = 0; i < n; i++) {
			memcpy(ids[i], want[i].id, FL_SHA256_LEN);
			offs[i] = 0;
			lens[i] = want[i].len;
		}
		int r = send_req((const uint8_t(*)[FL_SHA256_LEN])ids, offs, lens, n, send, ud);
		if (r < 0) {
			for (size_t i = 0; i < n; i++)
				ota_stage_release(f->st, want[i].id);
			if (cap)
				f->tokens += (double)bytes;
			/* A full publish window frees up with the broker's next
			 * PUBACK; anything else (not connected...) waits longer. */
			int d = r == -FL_EBUSY ? EBUSY_RETRY_MS : 200;
			f->hold_until = now + d;
			*next_ms = d;
			return 0;
		}
		f->stats.requests++;
		for (size_t i = 0; i < n; i++) {
			for (int j = 0; j < AGENT_FETCH_WINDOW; j++) {
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
		if (n < AGENT_FETCH_REQ_ITEMS)
			break; /* the window, the cap or the stage stopped it */
	}
	if (cap && f->tokens <= 0) {
		int wait = (int)(-f->tokens * 1000.0 / (double)cap) + 1;
		*next_ms = wait < *next_ms || *next_ms < 0 ? wait : *next_ms;
	}
	return 0;
}

int agent_fetch_step(struct agent_fetch *f, int64_t now, agent_fetch_send_fn send, void *ud,
		     int *ret_next_ms)
{
	*ret_next_ms = -1;
	for (int guard = 0; guard < 4; guard++) {
		int r = 0;
		if (f->phase == PH_INDEX)
			r = step_index(f, now, send, ud);
		else if (f->phase == PH_CHUNKS)
			r = step_chunks(f, now, send, ud, ret_next_ms);
		if (f->phase == PH_DONE)
			return 1;
		if (r == 0)
			break;
	}
	/* Wake up for the earliest timeout. */
	int64_t due = -1;
	if (f->phase == PH_INDEX && f->ipending)
		due = f->isent_ms + TIMEOUT_MS;
	for (int i = 0; i < AGENT_FETCH_WINDOW; i++)
		if (f->out[i].used && (due < 0 || out_due(f, i) < due))
			due = out_due(f, i);
	if (f->hold_until > now && (due < 0 || f->hold_until < due))
		due = f->hold_until;
	if (due >= 0) {
		int d = due > now ? (int)(due - now) : 0;
		if (*ret_next_ms < 0 || d < *ret_next_ms)
			*ret_next_ms = d;
	}
	if (f->phase == PH_INDEX && !f->ipending && f->hold_until <= now)
		*ret_next_ms = 0;
	return 0;
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

int agent_fetch_on_frame(struct agent_fetch *f, const void *frame, size_t len, int64_t now)
{
	const uint8_t *p = frame;
	if (!p || len < FRAME_HDR || len > FRAME_HDR + RANGE_MAX || memcmp(p, "FLCK", 4) ||
	    p[4] != 1 || p[5] > 2) {
		f->stats.bad_frames++;
		return -FL_EPROTO;
	}
	int status = p[5];
	const uint8_t *id = p + 8;
	uint64_t off = get_le(p + 40, 8);
	uint32_t dlen = (uint32_t)get_le(p + 48, 4);
	if ((size_t)dlen != len - FRAME_HDR || (status != 0 && dlen != 0)) {
		f->stats.bad_frames++;
		return -FL_EPROTO;
	}
	if (f->phase == PH_INDEX) {
		on_index_frame(f, status, id, off, p + FRAME_HDR, dlen, now);
		return 0;
	}
	if (f->phase != PH_CHUNKS)
		return 0;
	int i = out_find(f, id);
	if (status != 0 || off != 0) {
		if (i >= 0) {
			ota_stage_release(f->st, id);
			out_drop(f, i);
			if (status == 1 && ++f->not_found > NOT_FOUND_MAX) {
				fail(f, -FL_EMISSING, "the controller does not have a chunk");
				return 0;
			}
			hold(f, now);
		}
		return 0;
	}
	f->stats.bytes_fetched += dlen;
	f->rate_bytes += dlen;
	f->last_frame_ms = now;
	int r = ota_stage_put_chunk(f->st, id, p + FRAME_HDR, dlen);
	if (r == -FL_EHASH || r == -FL_ESIZE) {
		/* Corrupted on the way (or by the controller): ask again. */
		f->stats.bad_chunks++;
		if (i >= 0) {
			ota_stage_release(f->st, id);
			out_drop(f, i);
		}
		return 0;
	}
	if (i >= 0) {
		int64_t rtt = now - f->out[i].sent_ms;
		f->stats.rtt_sum_ms += (uint64_t)rtt;
		f->srtt = f->srtt > 0 ? 0.875 * f->srtt + 0.125 * (double)rtt : (double)rtt;
		f->stats.rtt_n++;
		out_drop(f, i);
	}
	if (r == -FL_EPROTO)
		return 0; /* not needed: a stray frame */
	if (r < 0) {
		fail(f, r, "writing the new files failed");
		return r;
	}
	f->hold_ms = 500;
	f->unsynced += dlen;
	return 0;
}
