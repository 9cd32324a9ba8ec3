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
 * chunk/dat message. Which ranges to ask for and when (window, round-trip
 * timeout, hold-off, bandwidth cap) is agentproto's fetch engine
 * (proto_fetch.c, shared with flotilla-sim); this file is its disk side:
 * the chunk index cache, the staging slot (ota_stage) and the journal.
 * Nothing here blocks on the network. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "fetch.h"
#include "proto.h"
#include <flotilla/chunkidx.h>
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/log.h>
#include <flotilla/manifest.h>
#include <flotilla/stage.h>
#include <flotilla/util.h>

_Static_assert(AGENT_FETCH_WINDOW == PROTO_FETCH_WINDOW &&
		       AGENT_FETCH_WINDOW_BYTES == PROTO_FETCH_WINDOW_BYTES &&
		       AGENT_FETCH_REQ_ITEMS == PROTO_FETCH_REQ_ITEMS,
	       "fetch.h and proto.h disagree on the window");

/* Durable progress: the stage records it every OTA_STAGE_SYNC_BYTES or
 * OTA_STAGE_SYNC_CHUNKS; on a slow link also at least this often. A kill -9
 * loses nothing written since (the .part files are read back on resume),
 * a power cut at most that much. */
#define SYNC_MS 10000

enum phase { PH_INDEX, PH_CHUNKS, PH_DONE };

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
	/* local sources (the active slot) */
	struct ota_chunkidx **src;
	size_t n_src;
	struct ota_stage *st;
	bool resumed; /* agent_fetch_resume(): look into the .part files */
	int64_t sync_ms;
	uint64_t unsynced;
	struct proto_fetch *pf; /* the request engine */
	agent_fetch_send_fn send; /* of the agent_fetch_step() in progress */
	void *send_ud;
	uint64_t bad_frames_done; /* malformed frames after the end */
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
	if (f)
		f->a = a;
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
	proto_fetch_free(f->pf);
	ota_slots_free(f->s);
	ota_manifest_free(f->m);
	free(f->env);
	free(f);
}


/* ------------------------------------------------- the engine's disk side */

static int op_send(void *ud, const void *req, size_t len)
{
	struct agent_fetch *f = ud;
	return f->send ? f->send(f->send_ud, req, len) : -ENOTCONN;
}

static int op_next_missing(void *ud, uint8_t id[32], uint32_t *len)
{
	struct agent_fetch *f = ud;
	struct ota_stage_want w;
	if (ota_stage_next_missing(f->st, &w, 1) != 1)
		return 0;
	memcpy(id, w.id, FL_SHA256_LEN);
	*len = w.len;
	return 1;
}

static void op_release(void *ud, const uint8_t id[32])
{
	struct agent_fetch *f = ud;
	ota_stage_release(f->st, id);
}

static int op_put(void *ud, const uint8_t id[32], const void *data, uint32_t len)
{
	struct agent_fetch *f = ud;
	int r = ota_stage_put_chunk(f->st, id, data, len);
	if (r >= 0)
		f->unsynced += len;
	return r;
}

static bool op_complete(void *ud)
{
	struct agent_fetch *f = ud;
	uint64_t done = 0, total = 0;
	ota_stage_progress(f->st, &done, &total, NULL, NULL);
	return done == total;
}

/* A fetched chunk index (its SHA-256 checked): decode, cache, keep. */
static int op_index_done(void *ud, const void *buf, size_t len)
{
	struct agent_fetch *f = ud;
	struct ota_chunkidx *ci = NULL;
	int r = ota_chunkidx_decode(buf, len, &ci);
	if (r < 0)
		return r;
	agent_cidx_save(f->a, f->rec.model, buf, len);
	f->idx[f->n_idx++] = ci;
	return 0;
}

static const struct proto_fetch_ops fetch_ops = {
	.send = op_send,
	.next_missing = op_next_missing,
	.release = op_release,
	.put = op_put,
	.complete = op_complete,
	.index_done = op_index_done,
};

static int fetch_init_common(struct agent_fetch *f)
{
	f->idx = calloc(f->m->n_files ? f->m->n_files : 1, sizeof(*f->idx));
	if (!f->idx)
		return -ENOMEM;
	int64_t now = fl_mono_ms();
	f->stats.started_ms = now;
	f->phase = PH_INDEX;
	f->sync_ms = now;
	return proto_fetch_new(&fetch_ops, f, f->a->cfg.bandwidth_bps, now, &f->pf);
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
	proto_fetch_reconnected(f->pf);
	if (f->st)
		ota_stage_reset_inflight(f->st);
}

void agent_fetch_stats(const struct agent_fetch *f, struct agent_fetch_stats *ret)
{
	*ret = f->stats;
	struct proto_fetch_stats ps;
	proto_fetch_stats(f->pf, &ps);
	ret->bytes_fetched = ps.bytes_fetched;
	ret->requests = ps.requests;
	ret->timeouts = ps.timeouts;
	ret->bad_chunks = ps.bad_chunks;
	ret->bad_frames = ps.bad_frames + f->bad_frames_done;
	ret->rtt_sum_ms = ps.rtt_sum_ms;
	ret->rtt_n = ps.rtt_n;
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
	struct agent_fetch_stats fs;
	agent_fetch_stats(f, &fs);
	fl_info("%s %s fetched: %llu bytes over MQTT in %lld ms (%llu local, %llu resumed, "
		"%llu bad chunks refetched, %llu timeouts, mean round trip %llu ms)",
		f->rec.model, f->rec.version, (unsigned long long)fs.bytes_fetched,
		(long long)(fs.done_ms - fs.started_ms), (unsigned long long)fs.bytes_local,
		(unsigned long long)fs.bytes_resumed, (unsigned long long)fs.bad_chunks,
		(unsigned long long)fs.timeouts,
		(unsigned long long)(fs.rtt_n ? fs.rtt_sum_ms / fs.rtt_n : 0));
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

/* Index phase: take every chunk index from the cache; the first one that is
 * not there is fetched (the engine), then the stage opens. Returns 1 when the
 * chunk phase begins. */
static int step_index(struct agent_fetch *f)
{
	while (!proto_fetch_index_busy(f->pf) && f->n_idx < f->m->n_files) {
		const struct ota_manifest_file *mf = &f->m->files[f->n_idx];
		struct ota_chunkidx *ci = NULL;
		if (cidx_load(f->a, f->rec.model, mf->chunk_index_sha256, &ci) < 0) {
			proto_fetch_want_index(f->pf, mf->chunk_index_sha256);
			break;
		}
		f->idx[f->n_idx++] = ci;
	}
	if (f->n_idx < f->m->n_files)
		return 0;
	int r = open_stage(f);
	if (r < 0) {
		fail(f, r, "cannot stage the new files");
		return 0;
	}
	f->phase = PH_CHUNKS;
	proto_fetch_start_chunks(f->pf);
	return 1;
}

int agent_fetch_step(struct agent_fetch *f, int64_t now, agent_fetch_send_fn send, void *ud,
		     int *ret_next_ms)
{
	*ret_next_ms = -1;
	f->send = send;
	f->send_ud = ud;
	for (int guard = 0; guard < 4; guard++) {
		if (f->phase == PH_INDEX)
			step_index(f);
		if (f->phase == PH_CHUNKS && f->unsynced && now - f->sync_ms >= SYNC_MS) {
			int r = ota_stage_sync(f->st);
			if (r < 0) {
				fail(f, r, "recording progress failed");
			} else {
				f->unsynced = 0;
				f->sync_ms = now;
			}
		}
		if (f->phase == PH_DONE)
			break;
		int r = proto_fetch_step(f->pf, now, ret_next_ms);
		if (r < 0) {
			fail(f, r, proto_fetch_reason(f->pf));
			break;
		}
		if (r == 0)
			break;
		complete(f); /* or a staged file failed its hash: its chunks are missing again */
		if (f->phase == PH_DONE)
			break;
	}
	f->send = NULL;
	f->send_ud = NULL;
	return f->phase == PH_DONE ? 1 : 0;
}

int agent_fetch_on_frame(struct agent_fetch *f, const void *frame, size_t len, int64_t now)
{
	if (f->phase == PH_DONE) {
		struct proto_frame fr;
		if (proto_frame_parse(frame, len, &fr) < 0) {
			f->bad_frames_done++;
			return -FL_EPROTO;
		}
		return 0;
	}
	int r = proto_fetch_on_frame(f->pf, frame, len, now);
	if (r == 1) {
		fail(f, proto_fetch_error(f->pf), proto_fetch_reason(f->pf));
		return 0;
	}
	return r;
}
