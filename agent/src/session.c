/* The agent's MQTT session (docs/protocol.md, docs/agent.md): one
 * connection to the broker, driven from the service loop (daemon.c).
 *
 *   - last will: retained {"v":1,"device":ID,"online":false} on .../state
 *   - on connect: subscribe to .../cmd and .../chunk/dat (QoS 1), publish
 *     the retained state; again on every change, at most once a second
 *   - cmd: deploy (verified with the device's own trust store before
 *     anything else), revert, keyring, ping; the last 64 ids are remembered
 *     in the journal so a redelivered command is dropped
 *   - chunk/dat: handed to the running network install (fetch.c)
 *   - telemetry (events and metrics): report.c's outbox, published from
 *     here (QoS 1, acknowledged records deleted on PUBACK, rewound on
 *     reconnect)
 * Anything else, malformed or oversized is counted and dropped. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "fetch.h"
#include "proto.h"
#include "report.h"
#include "session.h"
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/log.h>
#include <flotilla/manifest.h>
#include <flotilla/mqtt.h>
#include <flotilla/util.h>

#define AGENT_VERSION "0.1.0"
#define CMD_MAX PROTO_CMD_MAX
_Static_assert(PROTO_CMD_ID_MAX == J_CMD_ID_MAX, "command id bounds differ");
_Static_assert(PROTO_CMD_IDS == J_CMD_IDS_KEPT, "duplicate windows differ");
#define FRAME_MAX (52u + 256u * 1024u)
#define STATE_MIN_INTERVAL_MS PROTO_STATE_MIN_INTERVAL_MS
#define PROGRESS_INTERVAL_MS 1000

struct agent_session {
	struct agent *a;
	struct fl_mqtt *m;
	char t_state[160], t_cmd[160], t_dat[160], t_req[160], t_ack[160];
	char offline[256];
	char arch[64];
	uint64_t ram_mb;
	cJSON *labels;
	struct agent_fetch *fetch;
	bool state_due;
	int64_t last_state_ms;
	uint64_t state_token; /* 0: none in flight */
	struct agent_session_stats st;
	struct proto_ratelimit refuse_rl; /* events for unverifiable deploys */
	struct proto_cmd_ids cmd_ids;     /* in front of the journal's (durable) window */
};

static const char *slot_status_name(enum slot_status s)
{
	return s == SLOT_READY ? "ready" : s == SLOT_STAGING ? "staging" : "empty";
}

/* ----------------------------------------------------------------- state */

struct state_ctx {
	struct agent_session *s;
	struct proto_state *doc;
};

/* One model's slots and last install from the journal (proto_state.c). */
static int state_model(void *ud, const struct model_rec *mr)
{
	struct state_ctx *c = ud;
	struct agent *a = c->s->a;
	if (!fl_name_valid(mr->name, PROTO_MODEL_NAME_MAX))
		return 0;
	struct ota_slots *sl = NULL;
	struct proto_model pm = {.name = mr->name};
	if (ota_slots_open(a->models_dir, mr->name, &sl) == 0) {
		pm.current = ota_slots_current(sl);
		ota_slots_free(sl);
	}
	struct slot_rec sr[2];
	for (int i = 0; i < 2; i++) {
		int r = journal_slot_get(a->journal, mr->name, (char)('a' + i), &sr[i]);
		if (r < 0)
			return r;
		free(sr[i].envelope);
		pm.slot[i] = (struct proto_slot){.status = slot_status_name(sr[i].status),
						 .version = sr[i].version,
						 .sequence = sr[i].sequence};
	}
	struct install_rec ir;
	struct proto_install pi;
	int r = journal_install_last(a->journal, mr->name, &ir);
	if (r < 0)
		return r;
	if (r > 0) {
		pi = (struct proto_install){
			.version = ir.version, .state = inst_state_name(ir.state), .error = ir.error};
		struct agent_fetch *f = c->s->fetch;
		if (f && !strcmp(agent_fetch_model(f), mr->name) && ir.state == ST_FETCHING) {
			struct agent_fetch_stats fs;
			agent_fetch_stats(f, &fs);
			pi.progress = true;
			pi.bytes_done = fs.bytes_done;
			pi.bytes_total = fs.bytes_total;
			pi.chunks_done = fs.chunks_done;
			pi.chunks_total = fs.chunks_total;
		}
		pm.install = &pi;
	}
	return proto_state_add_model(c->doc, &pm);
}

int agent_session_state_json(struct agent_session *s, char **ret, size_t *ret_len)
{
	const struct agent_config *cfg = &s->a->cfg;
	struct proto_device dev = {.device = cfg->device_id,
				   .agent = AGENT_VERSION,
				   .arch = s->arch,
				   .ram_mb = s->ram_mb,
				   .accelerators = cfg->hw_accelerators,
				   .backends = agent_backends,
				   .labels = s->labels};
	struct state_ctx c = {.s = s};
	int r = proto_state_new(&dev, fl_now_s(), &c.doc);
	if (r == 0)
		r = journal_models(s->a->journal, state_model, &c);
	if (r == 0)
		r = proto_state_render(c.doc, ret, ret_len);
	proto_state_free(c.doc);
	return r;
}

static void state_pump(struct agent_session *s, int64_t now, int *next_ms)
{
	if (s->a->state_dirty) {
		s->a->state_dirty = false;
		s->state_due = true;
	}
	if (!s->state_due || !fl_mqtt_connected(s->m) || s->state_token)
		return;
	if (now - s->last_state_ms < STATE_MIN_INTERVAL_MS) {
		int d = (int)(s->last_state_ms + STATE_MIN_INTERVAL_MS - now);
		if (*next_ms < 0 || d < *next_ms)
			*next_ms = d;
		return;
	}
	_cleanup_free_ char *js = NULL;
	size_t len;
	int r = agent_session_state_json(s, &js, &len);
	if (r < 0) {
		fl_err("state: %s", fl_strerror(r));
		s->state_due = false;
		return;
	}
	uint64_t tok;
	r = fl_mqtt_publish(s->m, s->t_state, js, len, 1, true, &tok);
	if (r == 0) {
		s->state_token = tok;
		s->state_due = false;
		s->last_state_ms = now;
		s->st.states_published++;
	}
}

/* -------------------------------------------------------------- commands */

static void refuse(struct agent_session *s, const char *model, const char *version, int err,
		   const char *why)
{
	s->st.cmds_refused++;
	agent_event(s->a, model, "install.rejected", version, err, why);
}

static int fetch_send(void *ud, const void *req, size_t len)
{
	struct agent_session *s = ud;
	int r = fl_mqtt_publish(s->m, s->t_req, req, len, 1, false, NULL);
	if (r == 0)
		s->st.chunk_reqs++;
	return r;
}

static void cmd_deploy(struct agent_session *s, const char *env)
{
	struct agent *a = s->a;
	size_t env_len = strlen(env);
	struct ota_manifest *m = NULL;
	/* The controller is not trusted to produce models: verify first. */
	int r = agent_verify_envelope(a, env, env_len, &m);
	if (r < 0) {
		/* Anyone who can write our cmd topic could flood these: the event
		 * (an fsynced outbox record) is rate limited, the count is not. */
		if (proto_ratelimit_take(&s->refuse_rl, fl_mono_ms()))
			refuse(s, NULL, NULL, r, "deploy refused: manifest does not verify");
		else
			s->st.cmds_refused++;
		return;
	}
	struct ota_slots *sl = NULL;
	r = ota_slots_open(a->models_dir, m->name, &sl);
	if (r < 0) {
		refuse(s, m->name, m->version, r, "deploy refused: slots");
		ota_manifest_free(m);
		return;
	}
	char why[512] = "";
	r = agent_preflight(a, m, sl, why, sizeof(why));
	if (r < 0) {
		char msg[600];
		snprintf(msg, sizeof(msg), "deploy refused: %s", why);
		refuse(s, m->name, m->version, r, msg);
		goto out;
	}
	/* The decision (proto_cmd.c) from the journal's facts; a running fetch
	 * of an older release of this model is cancelled, then it is decided
	 * again. */
	struct proto_deploy_facts fx = {0};
	struct model_rec mr;
	if (journal_model_get(a->journal, m->name, &mr) == 0)
		fx.highest_sequence = mr.highest_sequence;
	char cur = ota_slots_current(sl);
	struct slot_rec sr = {0};
	if (cur && journal_slot_get(a->journal, m->name, cur, &sr) == 0) {
		free(sr.envelope);
		fx.current_ready = sr.status == SLOT_READY;
		fx.current_version = sr.version;
		fx.current_sequence = sr.sequence;
	}
	int d, pend_err;
	for (;;) {
		fx.fetching_model = s->fetch ? agent_fetch_model(s->fetch) : NULL;
		fx.fetching_same = s->fetch && agent_fetch_same(s->fetch, m);
		struct install_rec pend;
		pend_err = journal_install_pending(a->journal, m->name, &pend);
		fx.install_pending = pend_err != 0;
		d = proto_deploy_decide(m, &fx);
		if (d != PROTO_DEPLOY_SUPERSEDE)
			break;
		agent_fetch_cancel(s->fetch, "superseded by a newer deploy");
		agent_fetch_free(s->fetch);
		s->fetch = NULL;
	}
	switch (d) {
	case PROTO_DEPLOY_START: break;
	case PROTO_DEPLOY_ALREADY_FETCHING:
		fl_info("deploy %s %s: already fetching", m->name, m->version);
		goto out;
	case PROTO_DEPLOY_ALREADY_CURRENT:
		fl_info("deploy %s %s: already the current version", m->name, m->version);
		s->state_due = true;
		goto out;
	default:
		refuse(s, m->name, m->version,
		       d == PROTO_DEPLOY_PENDING && pend_err < 0 ? pend_err : proto_deploy_err(d),
		       proto_deploy_refusal(d));
		goto out;
	}
	r = agent_fetch_begin(a, env, env_len, m, sl, &s->fetch);
	if (r == 0) {
		m = NULL;
		sl = NULL;
		s->st.deploys++;
	} else {
		fl_err("deploy %s: %s", m->name, fl_strerror(r));
	}
out:
	ota_slots_free(sl);
	ota_manifest_free(m);
}

static void on_cmd(struct agent_session *s, const char *payload, size_t len)
{
	struct agent *a = s->a;
	struct proto_cmd c;
	int r = proto_cmd_parse(payload, len, &c);
	if (r < 0) {
		s->st.junk++;
		fl_warn("cmd dropped: %s", fl_strerror(r));
		return;
	}
	/* A redelivery: in this process's window, else in the journal's (the
	 * last J_CMD_IDS_KEPT ids, across restarts). */
	r = proto_cmd_ids_has(&s->cmd_ids, c.id);
	if (r == 0)
		r = journal_cmd_seen(a->journal, c.id);
	if (r != 0) {
		if (r > 0)
			s->st.cmd_duplicates++;
		proto_cmd_free(&c);
		return;
	}
	proto_cmd_ids_add(&s->cmd_ids, c.id);
	s->st.cmds++;
	switch (c.kind) {
	case PROTO_CMD_DEPLOY:
		if (c.arg_err)
			refuse(s, NULL, NULL, c.arg_err, "deploy without an envelope");
		else
			cmd_deploy(s, c.envelope);
		break;
	case PROTO_CMD_REVERT:
		if (c.arg_err) {
			s->st.junk++;
		} else if ((r = agent_revert(a, c.model, "revert requested by the controller")) < 0) {
			s->st.cmds_refused++;
			agent_event(a, c.model, "revert.refused", NULL, r, "revert refused");
		}
		break;
	case PROTO_CMD_KEYRING:
		if (c.arg_err || !a->trust) {
			s->st.cmds_refused++;
		} else if ((r = ota_trust_install_keyring(a->trust, c.envelope, strlen(c.envelope),
							  fl_now_s())) < 0) {
			s->st.cmds_refused++;
			agent_event(a, NULL, "keyring.refused", NULL, r, "keyring refused");
		} else {
			agent_event(a, NULL, "keyring.installed", NULL, 0,
				    r == 1 ? "installed" : "same");
		}
		break;
	case PROTO_CMD_PING: break; /* nothing else */
	default: s->st.junk++; break;
	}
	s->state_due = true;
	proto_cmd_free(&c);
}

/* ------------------------------------------------------------- lifecycle */

static int resume_cb(void *ud, const char *model)
{
	struct agent_session *s = ud;
	struct install_rec rec;
	int r = journal_install_pending(s->a->journal, model, &rec);
	if (r <= 0 || rec.state != ST_FETCHING ||
	    strncmp(rec.source, AGENT_NET_SOURCE, strlen(AGENT_NET_SOURCE)))
		return 0;
	if (s->fetch) {
		struct ota_slots *sl = NULL;
		if (ota_slots_open(s->a->models_dir, model, &sl) == 0)
			agent_reject_staged(s->a, sl, &rec, -FL_ESTATE,
					    "one network install at a time");
		ota_slots_free(sl);
		return 0;
	}
	agent_fetch_resume(s->a, &rec, &s->fetch);
	return 0;
}

int agent_session_new(struct agent *a, struct agent_session **ret)
{
	const struct agent_config *c = &a->cfg;
	if (!c->mqtt_uri[0] || !c->device_id[0])
		return -EINVAL;
	struct agent_session *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->a = a;
	const char *id = c->device_id;
	snprintf(s->t_state, sizeof(s->t_state), "flotilla/v1/dev/%s/state", id);
	snprintf(s->t_cmd, sizeof(s->t_cmd), "flotilla/v1/dev/%s/cmd", id);
	snprintf(s->t_dat, sizeof(s->t_dat), "flotilla/v1/dev/%s/chunk/dat", id);
	snprintf(s->t_req, sizeof(s->t_req), "flotilla/v1/dev/%s/chunk/req", id);
	snprintf(s->t_ack, sizeof(s->t_ack), "flotilla/v1/dev/%s/tele/ack", id);
	int n = proto_state_offline(id, s->offline, sizeof(s->offline));
	if (n < 0) {
		free(s);
		return n;
	}
	struct ota_device_info dev;
	if (ota_device_info_probe(&dev, s->arch, sizeof(s->arch)) == 0)
		s->ram_mb = dev.ram_mb;
	if (c->hw_arch[0]) /* [hw] overrides what was detected (simulation, tests) */
		fl_strlcpy(s->arch, c->hw_arch, sizeof(s->arch));
	if (c->hw_ram_mb)
		s->ram_mb = c->hw_ram_mb;
	int r = 0;
	if (c->labels[0])
		r = agent_labels_parse(c->labels, &s->labels);
	struct fl_mqtt_opts o;
	fl_mqtt_opts_init(&o);
	o.uri = c->mqtt_uri;
	o.client_id = id;
	o.ca_file = c->mqtt_ca[0] ? c->mqtt_ca : NULL;
	o.cert_file = c->mqtt_cert[0] ? c->mqtt_cert : NULL;
	o.key_file = c->mqtt_key[0] ? c->mqtt_key : NULL;
	o.verify_host = c->mqtt_verify_host;
	o.keepalive_s = c->mqtt_keepalive_s;
	o.will_topic = s->t_state;
	o.will_payload = s->offline;
	o.will_len = (size_t)n;
	o.will_qos = 1;
	o.will_retain = true;
	o.max_msg_bytes = CMD_MAX + 1024;
	/* chunk/req (QoS 1, AGENT_FETCH_REQS_INFLIGHT) + state + one telemetry
	 * batch per stream; below mosquitto's receive maximum (20). */
	o.max_inflight = 2 * AGENT_FETCH_REQS_INFLIGHT;
	if (r == 0)
		r = fl_mqtt_new(&o, &s->m);
	if (r == 0)
		r = fl_mqtt_subscribe(s->m, s->t_cmd, 1);
	if (r == 0)
		r = fl_mqtt_subscribe(s->m, s->t_dat, 1);
	if (r == 0 && s->a->report) /* telemetry confirmations (report.c) */
		r = fl_mqtt_subscribe(s->m, s->t_ack, 0);
	if (r < 0) {
		agent_session_free(s);
		return r;
	}
	journal_pending_models(a->journal, resume_cb, s);
	fl_mqtt_start(s->m);
	fl_info("mqtt: %s as %s", c->mqtt_uri, id);
	*ret = s;
	return 0;
}

int agent_session_fd(const struct agent_session *s)
{
	return fl_mqtt_fd(s->m);
}

static void handle_event(struct agent_session *s, struct fl_mqtt_event *ev, int64_t now)
{
	switch (ev->type) {
	case FL_MQTT_EV_CONNECTED:
		fl_info("mqtt: connected (session %s)", ev->session_present ? "resumed" : "new");
		s->st.connects++;
		s->state_due = true;
		s->last_state_ms = 0;
		agent_report_connected(s->a);
		if (s->fetch)
			agent_fetch_reconnected(s->fetch);
		break;
	case FL_MQTT_EV_DISCONNECTED:
		fl_warn("mqtt: disconnected: %s (retry in %lld ms)", ev->text,
			(long long)ev->retry_ms);
		break;
	case FL_MQTT_EV_MESSAGE:
		if (!strcmp(ev->topic, s->t_cmd)) {
			on_cmd(s, (const char *)ev->payload, ev->len);
		} else if (!strcmp(ev->topic, s->t_ack)) {
			agent_report_on_ack(s->a, ev->payload, ev->len);
		} else if (!strcmp(ev->topic, s->t_dat)) {
			s->st.frames++;
			if (!s->fetch || ev->len > FRAME_MAX ||
			    agent_fetch_on_frame(s->fetch, ev->payload, ev->len, now) == -FL_EPROTO)
				s->st.junk++;
		} else {
			s->st.junk++;
		}
		break;
	case FL_MQTT_EV_PUBLISHED:
	case FL_MQTT_EV_PUBLISH_FAILED: {
		bool ok = ev->type == FL_MQTT_EV_PUBLISHED;
		if (ev->token && ev->token == s->state_token) {
			s->state_token = 0;
			if (!ok)
				s->state_due = true;
		} else {
			agent_report_published(s->a, ev->token, ok);
		}
		break;
	}
	default: break;
	}
}

int agent_session_run(struct agent_session *s, int *ret_timeout_ms)
{
	int next = -1;
	struct fl_mqtt_event ev = {0};
	/* Bounded per call so the service loop stays responsive. */
	for (int i = 0; i < 256 && fl_mqtt_next_event(s->m, &ev) == 1; i++) {
		handle_event(s, &ev, fl_mono_ms());
		fl_mqtt_event_clear(&ev);
		if (s->fetch && agent_fetch_result(s->fetch) != 1)
			break;
	}
	int64_t now = fl_mono_ms();
	if (s->fetch && fl_mqtt_connected(s->m)) {
		int fnext = -1;
		if (agent_fetch_step(s->fetch, now, fetch_send, s, &fnext) == 1 ||
		    agent_fetch_result(s->fetch) != 1) {
			struct agent_fetch_stats fs;
			agent_fetch_stats(s->fetch, &fs);
			s->st.bytes_fetched += fs.bytes_fetched;
			s->st.installs_done++;
			agent_fetch_free(s->fetch);
			s->fetch = NULL;
			s->state_due = true;
		} else {
			next = fnext;
			/* Progress in state about once a second. */
			if (now - s->last_state_ms >= PROGRESS_INTERVAL_MS)
				s->state_due = true;
			if (next < 0 || next > PROGRESS_INTERVAL_MS)
				next = PROGRESS_INTERVAL_MS;
		}
	}
	state_pump(s, fl_mono_ms(), &next);
	agent_report_pump(s->a, s->m);
	int tnext = -1;
	fl_mqtt_tick(s->m, fl_mono_ms(), &tnext);
	if (tnext >= 0 && (next < 0 || tnext < next))
		next = tnext;
	*ret_timeout_ms = next;
	return 0;
}

void agent_session_stats(const struct agent_session *s, struct agent_session_stats *ret)
{
	*ret = s->st;
	if (s->fetch) {
		struct agent_fetch_stats fs;
		agent_fetch_stats(s->fetch, &fs);
		ret->bytes_fetched += fs.bytes_fetched;
	}
}

/* A clean stop marks the device offline: a normal DISCONNECT discards the
 * will, so publish the offline state ourselves (retained, QoS 1) and wait up
 * to 1 s for its PUBACK. */
static void publish_offline(struct agent_session *s)
{
	uint64_t tok;
	if (!fl_mqtt_connected(s->m) ||
	    fl_mqtt_publish(s->m, s->t_state, s->offline, strlen(s->offline), 1, true, &tok) < 0)
		return;
	int64_t end = fl_mono_ms() + 1000;
	bool done = false;
	while (!done && fl_mono_ms() < end) {
		struct pollfd p = {.fd = fl_mqtt_fd(s->m), .events = POLLIN};
		poll(&p, 1, 50);
		struct fl_mqtt_event ev = {0};
		while (fl_mqtt_next_event(s->m, &ev) == 1) {
			if ((ev.type == FL_MQTT_EV_PUBLISHED || ev.type == FL_MQTT_EV_PUBLISH_FAILED) &&
			    ev.token == tok)
				done = true;
			fl_mqtt_event_clear(&ev);
		}
	}
}

void agent_session_free(struct agent_session *s)
{
	if (!s)
		return;
	if (s->m)
		publish_offline(s);
	agent_fetch_free(s->fetch);
	fl_mqtt_free(s->m);
	cJSON_Delete(s->labels);
	free(s);
}
