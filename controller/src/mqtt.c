/* The controller's MQTT session glue (ctl_mqtt.h). */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <flotilla/error.h>
#include <flotilla/log.h>
#include <flotilla/mqtt.h>
#include <flotilla/util.h>

#include "ctl_mqtt.h"
#include "registry.h"

#define MAX_EVENTS_PER_RUN 1024
/* 10 s: while a crashed instance's session lives, the broker keeps queueing
 * its share of chunk requests and telemetry for nobody (docs/controller.md
 * "Several instances"); devices retry both, so a short life costs little. */
#define CTL_MQTT_SESSION_EXPIRY_S 10
#define TOPIC_BUF (sizeof(CTL_MQTT_TOPIC_PREFIX) + CTL_DEVICE_ID_MAX + 16)

enum { CMD_QUEUED, CMD_INFLIGHT, CMD_DONE };

struct cmd {
	struct cmd *next;
	char topic[TOPIC_BUF];
	char *json;
	size_t len;
	uint64_t token;
	int state;
	int result;
	bool abandoned; /* the waiter left: the loop frees it when done */
};

struct frame {
	struct frame *next;
	char device[CTL_DEVICE_ID_MAX + 1];
	size_t len;
	uint8_t data[];
};

struct chunk_tok {
	uint64_t token;
	size_t len;
};

struct ctl_mqtt {
	struct ctl *ctl;
	struct fl_mqtt *mq; /* NULL with a test transport */
	struct ctl_mqtt_io io;
	int wake_fd;
	size_t per_device, max_bytes, max_cmds;
	bool started;

	/* owner thread only */
	struct ctl_state_batch *states; /* during ctl_mqtt_run: state writes batched */
	struct frame *bl_head, *bl_tail;
	size_t bl_frames, bl_bytes;
	struct chunk_tok *toks; /* chunk frames in flight */
	size_t n_toks, cap_toks;

	pthread_mutex_t lock; /* guards what follows */
	pthread_cond_t cond;
	bool connected;
	struct cmd *queue, *queue_tail; /* CMD_QUEUED, FIFO */
	struct cmd *inflight;           /* CMD_INFLIGHT */
	size_t n_cmds;                  /* queued + in flight */
	struct ctl_mqtt_counters cnt;
};

/* ---------------------------------------------------------------- topics */

int ctl_mqtt_parse_topic(const char *topic, char ret_id[CTL_DEVICE_ID_MAX + 1])
{
	static const char prefix[] = CTL_MQTT_TOPIC_PREFIX;
	if (!topic || strncmp(topic, prefix, sizeof(prefix) - 1))
		return -FL_EPROTO;
	const char *id = topic + sizeof(prefix) - 1;
	const char *slash = strchr(id, '/');
	if (!slash || slash == id || (size_t)(slash - id) > CTL_DEVICE_ID_MAX)
		return -FL_EPROTO;
	char buf[CTL_DEVICE_ID_MAX + 1];
	memcpy(buf, id, (size_t)(slash - id));
	buf[slash - id] = 0;
	if (!fl_name_valid(buf, CTL_DEVICE_ID_MAX))
		return -FL_EPROTO;
	const char *kind = slash + 1;
	int k;
	if (!strcmp(kind, "state"))
		k = CTL_TOPIC_STATE;
	else if (!strcmp(kind, "event"))
		k = CTL_TOPIC_EVENT;
	else if (!strcmp(kind, "tele"))
		k = CTL_TOPIC_TELE;
	else if (!strcmp(kind, "chunk/req"))
		k = CTL_TOPIC_CHUNK_REQ;
	else
		return -FL_EPROTO;
	memcpy(ret_id, buf, sizeof(buf));
	return k;
}

static void count(struct ctl_mqtt *m, uint64_t *field, uint64_t n)
{
	pthread_mutex_lock(&m->lock);
	*field += n;
	pthread_mutex_unlock(&m->lock);
}

/* ---------------------------------------------------------------- chunk frames */

static int publish_chunk(struct ctl_mqtt *m, const char *device, const void *data, size_t len)
{
	if (m->n_toks >= m->cap_toks)
		return -FL_EBUSY;
	char topic[TOPIC_BUF];
	fl_snprintf(topic, sizeof(topic), CTL_MQTT_TOPIC_PREFIX "%s/chunk/dat", device);
	uint64_t tok = 0;
	int r = m->io.publish(m->io.ud, topic, data, len, &tok);
	if (r < 0)
		return r;
	m->toks[m->n_toks++] = (struct chunk_tok){.token = tok, .len = len};
	return 0;
}

static size_t backlog_of(const struct ctl_mqtt *m, const char *device)
{
	size_t n = 0;
	for (const struct frame *f = m->bl_head; f; f = f->next)
		n += !strcmp(f->device, device);
	return n;
}

static void backlog_gauges(struct ctl_mqtt *m)
{
	pthread_mutex_lock(&m->lock);
	m->cnt.backlog_frames = m->bl_frames;
	m->cnt.backlog_bytes = m->bl_bytes;
	pthread_mutex_unlock(&m->lock);
}

static void backlog_pop(struct ctl_mqtt *m)
{
	struct frame *f = m->bl_head;
	m->bl_head = f->next;
	if (!m->bl_head)
		m->bl_tail = NULL;
	m->bl_frames--;
	m->bl_bytes -= f->len;
	free(f);
}

static void backlog_drop_all(struct ctl_mqtt *m)
{
	uint64_t n = m->bl_frames;
	while (m->bl_head)
		backlog_pop(m);
	if (n)
		count(m, &m->cnt.chunk_frames_dropped, n);
	backlog_gauges(m);
}

static void backlog_drain(struct ctl_mqtt *m)
{
	uint64_t dropped = 0;
	bool changed = false;
	while (m->bl_head) {
		int r = publish_chunk(m, m->bl_head->device, m->bl_head->data, m->bl_head->len);
		if (r == -FL_EBUSY)
			break;
		if (r < 0)
			dropped++;
		backlog_pop(m);
		changed = true;
	}
	if (dropped)
		count(m, &m->cnt.chunk_frames_dropped, dropped);
	if (changed)
		backlog_gauges(m);
}

struct emit_ctx {
	struct ctl_mqtt *m;
	const char *device;
	size_t dev_backlog;
};

static int emit_frame(void *ud, const uint8_t *frame, size_t len)
{
	struct emit_ctx *e = ud;
	struct ctl_mqtt *m = e->m;
	if (!m->bl_head) {
		int r = publish_chunk(m, e->device, frame, len);
		if (r == 0)
			return 0;
		if (r != -FL_EBUSY) {
			count(m, &m->cnt.chunk_frames_dropped, 1);
			return 0;
		}
	}
	struct frame *f = NULL;
	if (e->dev_backlog < m->per_device && m->bl_bytes + len <= m->max_bytes)
		f = malloc(sizeof(*f) + len);
	if (!f) {
		count(m, &m->cnt.chunk_frames_dropped, 1);
		return 0;
	}
	f->next = NULL;
	fl_strlcpy(f->device, e->device, sizeof(f->device));
	f->len = len;
	memcpy(f->data, frame, len);
	if (m->bl_tail)
		m->bl_tail->next = f;
	else
		m->bl_head = f;
	m->bl_tail = f;
	m->bl_frames++;
	m->bl_bytes += len;
	e->dev_backlog++;
	count(m, &m->cnt.chunk_frames_backlogged, 1);
	backlog_gauges(m);
	return 0;
}

static void on_chunk_req(struct ctl_mqtt *m, const char *device, const void *payload, size_t len)
{
	count(m, &m->cnt.msgs_chunk_req, 1);
	if (len > CTL_CHUNK_REQ_MAX_BYTES) {
		count(m, &m->cnt.refused_chunk_req, 1);
		return;
	}
	struct emit_ctx e = {.m = m, .device = device, .dev_backlog = backlog_of(m, device)};
	if (e.dev_backlog >= m->per_device) {
		count(m, &m->cnt.chunk_req_flood, 1);
		return;
	}
	if (ctl_chunks_serve(m->ctl, payload, len, emit_frame, &e) < 0)
		count(m, &m->cnt.refused_chunk_req, 1);
}

/* ---------------------------------------------------------------- dispatch */

void ctl_mqtt_on_message(struct ctl_mqtt *m, const char *topic, const void *payload, size_t len)
{
	char id[CTL_DEVICE_ID_MAX + 1];
	int k = ctl_mqtt_parse_topic(topic, id);
	int r;
	switch (k) {
	case CTL_TOPIC_STATE:
		count(m, &m->cnt.msgs_state, 1);
		r = len > CTL_STATE_MAX_BYTES ? -FL_ETOOBIG
		    : m->states		  ? ctl_state_batch_add(m->states, id, payload, len)
					  : ctl_registry_on_state(m->ctl, id, payload, len);
		if (r < 0)
			count(m, &m->cnt.refused_state, 1);
		break;
	case CTL_TOPIC_EVENT:
	case CTL_TOPIC_TELE:
		count(m, k == CTL_TOPIC_EVENT ? &m->cnt.msgs_event : &m->cnt.msgs_tele, 1);
		r = len > CTL_TELE_MAX_BYTES ? -FL_ETOOBIG
					     : ctl_ingest_batch(m->ctl, id, payload, len);
		if (r < 0)
			count(m, &m->cnt.refused_tele, 1);
		break;
	case CTL_TOPIC_CHUNK_REQ:
		on_chunk_req(m, id, payload, len);
		break;
	default:
		count(m, &m->cnt.unexpected, 1);
		break;
	}
}

/* ---------------------------------------------------------------- commands */

static void cmd_free(struct cmd *c)
{
	if (!c)
		return;
	free(c->json);
	free(c);
}

/* Mark C done with RESULT (lock held): wake its waiter or free it. */
static void cmd_done(struct ctl_mqtt *m, struct cmd *c, int result)
{
	c->state = CMD_DONE;
	c->result = result;
	m->n_cmds--;
	if (result == 1)
		m->cnt.cmds_sent++;
	else
		m->cnt.cmds_failed++;
	if (c->abandoned)
		cmd_free(c);
	else
		pthread_cond_broadcast(&m->cond);
}

/* Publish queued commands while the window allows (owner thread). */
static void cmds_publish(struct ctl_mqtt *m)
{
	pthread_mutex_lock(&m->lock);
	while (m->queue) {
		struct cmd *c = m->queue;
		uint64_t tok = 0;
		int r = m->io.publish(m->io.ud, c->topic, c->json, c->len, &tok);
		if (r == -FL_EBUSY)
			break;
		m->queue = c->next;
		if (!m->queue)
			m->queue_tail = NULL;
		c->next = NULL;
		if (r < 0) {
			cmd_done(m, c, r == -ENOTCONN ? -ENOTCONN : -FL_ENET);
			continue;
		}
		c->token = tok;
		c->state = CMD_INFLIGHT;
		c->next = m->inflight;
		m->inflight = c;
	}
	pthread_mutex_unlock(&m->lock);
}

void ctl_mqtt_on_published(struct ctl_mqtt *m, uint64_t token, bool ok)
{
	pthread_mutex_lock(&m->lock);
	for (struct cmd **pp = &m->inflight; *pp; pp = &(*pp)->next) {
		if ((*pp)->token == token) {
			struct cmd *c = *pp;
			*pp = c->next;
			c->next = NULL;
			cmd_done(m, c, ok ? 1 : -FL_ENET);
			pthread_mutex_unlock(&m->lock);
			return;
		}
	}
	pthread_mutex_unlock(&m->lock);
	for (size_t i = 0; i < m->n_toks; i++) {
		if (m->toks[i].token != token)
			continue;
		size_t len = m->toks[i].len;
		m->toks[i] = m->toks[--m->n_toks];
		pthread_mutex_lock(&m->lock);
		if (ok) {
			m->cnt.chunk_frames_sent++;
			m->cnt.chunk_bytes_sent += len;
		} else {
			m->cnt.chunk_frames_dropped++;
		}
		pthread_mutex_unlock(&m->lock);
		return;
	}
}

void ctl_mqtt_on_connection(struct ctl_mqtt *m, bool connected)
{
	pthread_mutex_lock(&m->lock);
	m->connected = connected;
	m->cnt.connected = connected;
	pthread_mutex_unlock(&m->lock);
	if (!connected)
		backlog_drop_all(m);
}

static void add_ms(struct timespec *ts, int ms)
{
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int ctl_mqtt_command(struct ctl_mqtt *m, const char *device, const char *json, size_t len,
		     int timeout_ms)
{
	if (!m || !device || !fl_name_valid(device, CTL_DEVICE_ID_MAX) || !json || len == 0 ||
	    len > CTL_CMD_MAX_BYTES || timeout_ms < 0)
		return -EINVAL;
	struct cmd *c = calloc(1, sizeof(*c));
	if (!c || !(c->json = malloc(len))) {
		free(c);
		return -ENOMEM;
	}
	memcpy(c->json, json, len);
	c->len = len;
	fl_snprintf(c->topic, sizeof(c->topic), CTL_MQTT_TOPIC_PREFIX "%s/cmd", device);
	pthread_mutex_lock(&m->lock);
	int r = 0;
	if (!m->connected)
		r = -ENOTCONN;
	else if (m->n_cmds >= m->max_cmds)
		r = -FL_EBUSY;
	if (r < 0) {
		pthread_mutex_unlock(&m->lock);
		cmd_free(c);
		return r;
	}
	c->state = CMD_QUEUED;
	if (m->queue_tail)
		m->queue_tail->next = c;
	else
		m->queue = c;
	m->queue_tail = c;
	m->n_cmds++;
	pthread_mutex_unlock(&m->lock);
	uint64_t one = 1;
	if (write(m->wake_fd, &one, sizeof(one)) < 0) {
		/* the counter cannot overflow in practice; the loop polls anyway */
	}
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	add_ms(&deadline, timeout_ms);
	pthread_mutex_lock(&m->lock);
	while (c->state != CMD_DONE) {
		if (pthread_cond_timedwait(&m->cond, &m->lock, &deadline) == ETIMEDOUT)
			break;
	}
	if (c->state != CMD_DONE) {
		c->abandoned = true;
		pthread_mutex_unlock(&m->lock);
		return 0;
	}
	r = c->result;
	pthread_mutex_unlock(&m->lock);
	cmd_free(c);
	return r;
}

/* ---------------------------------------------------------------- counters */

void ctl_mqtt_counters(struct ctl_mqtt *m, struct ctl_mqtt_counters *ret)
{
	pthread_mutex_lock(&m->lock);
	*ret = m->cnt;
	pthread_mutex_unlock(&m->lock);
}

int ctl_mqtt_metrics_text(struct ctl_mqtt *m, char **ret)
{
	struct ctl_mqtt_counters k;
	ctl_mqtt_counters(m, &k);
	struct fl_mqtt_stats ms = {0};
	if (m->mq)
		fl_mqtt_stats(m->mq, &ms);
#define U(x) ((unsigned long long)(x))
	char *s = fl_asprintf(
		"# HELP flotilla_mqtt_connected 1 while the controller's broker session is up.\n"
		"# TYPE flotilla_mqtt_connected gauge\n"
		"flotilla_mqtt_connected %d\n"
		"# HELP flotilla_mqtt_messages_total Device messages received by topic.\n"
		"# TYPE flotilla_mqtt_messages_total counter\n"
		"flotilla_mqtt_messages_total{topic=\"state\"} %llu\n"
		"flotilla_mqtt_messages_total{topic=\"event\"} %llu\n"
		"flotilla_mqtt_messages_total{topic=\"tele\"} %llu\n"
		"flotilla_mqtt_messages_total{topic=\"chunk_req\"} %llu\n"
		"# HELP flotilla_mqtt_refused_total Device messages dropped as malformed, oversized "
		"or unexpected.\n"
		"# TYPE flotilla_mqtt_refused_total counter\n"
		"flotilla_mqtt_refused_total{topic=\"state\"} %llu\n"
		"flotilla_mqtt_refused_total{topic=\"tele\"} %llu\n"
		"flotilla_mqtt_refused_total{topic=\"chunk_req\"} %llu\n"
		"flotilla_mqtt_refused_total{topic=\"unexpected\"} %llu\n"
		"# HELP flotilla_chunk_frames_total chunk/dat frames by outcome.\n"
		"# TYPE flotilla_chunk_frames_total counter\n"
		"flotilla_chunk_frames_total{result=\"sent\"} %llu\n"
		"flotilla_chunk_frames_total{result=\"backlogged\"} %llu\n"
		"flotilla_chunk_frames_total{result=\"dropped\"} %llu\n"
		"# HELP flotilla_chunk_bytes_sent_total chunk/dat bytes acknowledged by the broker.\n"
		"# TYPE flotilla_chunk_bytes_sent_total counter\n"
		"flotilla_chunk_bytes_sent_total %llu\n"
		"# HELP flotilla_chunk_requests_flood_total chunk/req dropped because the device's "
		"backlog was full.\n"
		"# TYPE flotilla_chunk_requests_flood_total counter\n"
		"flotilla_chunk_requests_flood_total %llu\n"
		"# HELP flotilla_chunk_backlog_bytes chunk/dat bytes waiting for the publish window.\n"
		"# TYPE flotilla_chunk_backlog_bytes gauge\n"
		"flotilla_chunk_backlog_bytes %llu\n"
		"# HELP flotilla_commands_total Commands published to devices by result.\n"
		"# TYPE flotilla_commands_total counter\n"
		"flotilla_commands_total{result=\"sent\"} %llu\n"
		"flotilla_commands_total{result=\"failed\"} %llu\n"
		"# HELP flotilla_mqtt_dropped_total Incoming messages the client dropped before "
		"dispatch.\n"
		"# TYPE flotilla_mqtt_dropped_total counter\n"
		"flotilla_mqtt_dropped_total{reason=\"oversize\"} %llu\n"
		"flotilla_mqtt_dropped_total{reason=\"queue_full\"} %llu\n"
		"# HELP flotilla_mqtt_connects_total Broker connections made.\n"
		"# TYPE flotilla_mqtt_connects_total counter\n"
		"flotilla_mqtt_connects_total %llu\n",
		k.connected ? 1 : 0, U(k.msgs_state), U(k.msgs_event), U(k.msgs_tele),
		U(k.msgs_chunk_req), U(k.refused_state), U(k.refused_tele), U(k.refused_chunk_req),
		U(k.unexpected), U(k.chunk_frames_sent), U(k.chunk_frames_backlogged),
		U(k.chunk_frames_dropped), U(k.chunk_bytes_sent), U(k.chunk_req_flood),
		U(k.backlog_bytes), U(k.cmds_sent), U(k.cmds_failed), U(ms.drops_oversize),
		U(ms.drops_queue_full), U(ms.connects));
#undef U
	if (!s)
		return -ENOMEM;
	*ret = s;
	return 0;
}

/* ---------------------------------------------------------------- life cycle */

static int mq_publish(void *ud, const char *topic, const void *data, size_t len,
		      uint64_t *ret_token)
{
	return fl_mqtt_publish(ud, topic, data, len, 1, false, ret_token);
}

static int create(struct ctl *c, const struct ctl_mqtt_opts *o, struct ctl_mqtt **ret,
		  struct ctl_mqtt **out)
{
	if (!c || !o || !ret || o->max_inflight < 0 || o->max_inflight > FL_MQTT_MAX_INFLIGHT)
		return -EINVAL;
	struct ctl_mqtt *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->ctl = c;
	m->per_device = o->backlog_per_device ? o->backlog_per_device
					      : CTL_MQTT_DEFAULT_BACKLOG_PER_DEVICE;
	m->max_bytes = o->backlog_max_bytes ? o->backlog_max_bytes : CTL_MQTT_DEFAULT_BACKLOG_BYTES;
	m->max_cmds = o->max_cmds ? o->max_cmds : CTL_MQTT_DEFAULT_MAX_CMDS;
	m->cap_toks = (size_t)(o->max_inflight ? o->max_inflight : CTL_MQTT_DEFAULT_INFLIGHT);
	m->toks = calloc(m->cap_toks, sizeof(*m->toks));
	m->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&m->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&m->lock, NULL);
	if (!m->toks || m->wake_fd < 0) {
		int r = m->wake_fd < 0 ? -errno : -ENOMEM;
		ctl_mqtt_free(m);
		return r;
	}
	*out = m;
	return 0;
}

int ctl_mqtt_new(struct ctl *c, const struct ctl_mqtt_opts *o, struct ctl_mqtt **ret)
{
	if (!o || !o->uri || !o->client_id)
		return -EINVAL;
	struct ctl_mqtt *m = NULL;
	int r = create(c, o, ret, &m);
	if (r < 0)
		return r;
	struct fl_mqtt_opts mo;
	fl_mqtt_opts_init(&mo);
	mo.uri = o->uri;
	mo.client_id = o->client_id;
	mo.ca_file = o->ca_file;
	mo.cert_file = o->cert_file;
	mo.key_file = o->key_file;
	mo.verify_host = o->verify_host;
	mo.max_inflight = (int)m->cap_toks;
	/* Several instances share chunk/req, event and tele through $share. A
	 * stopped instance's session would keep taking its share (queued for
	 * it, answered by nobody): a clean stop ends the session, and a crashed
	 * one's expires after CTL_MQTT_SESSION_EXPIRY_S, long enough for a
	 * restart to resume it and answer what was queued (docs/protocol.md). */
	mo.session_expiry_s = CTL_MQTT_SESSION_EXPIRY_S;
	mo.end_session_on_free = true;
	/* The largest thing we take is a telemetry batch (256 KiB). */
	mo.max_msg_bytes = CTL_TELE_MAX_BYTES;
	mo.max_queue_bytes = 16u << 20;
	mo.max_queue_msgs = 4096;
	if ((r = fl_mqtt_new(&mo, &m->mq)) < 0) {
		ctl_mqtt_free(m);
		return r;
	}
	m->io = (struct ctl_mqtt_io){.publish = mq_publish, .ud = m->mq};
	*ret = m;
	return 0;
}

int ctl_mqtt_new_io(struct ctl *c, const struct ctl_mqtt_opts *o, const struct ctl_mqtt_io *io,
		    struct ctl_mqtt **ret)
{
	if (!io || !io->publish)
		return -EINVAL;
	struct ctl_mqtt *m = NULL;
	int r = create(c, o, ret, &m);
	if (r < 0)
		return r;
	m->io = *io;
	m->connected = m->cnt.connected = true;
	*ret = m;
	return 0;
}

int ctl_mqtt_start(struct ctl_mqtt *m)
{
	if (!m || m->started)
		return -FL_ESTATE;
	m->started = true;
	if (!m->mq)
		return 0;
	/* state is subscribed without $share: a shared subscription gets no
	 * retained messages (MQTT 5, 4.8.2), and the retained states are how a
	 * fresh controller learns the fleet (docs/protocol.md "Decisions"). */
	static const char *const subs[] = {
		CTL_MQTT_TOPIC_PREFIX "+/state",
		CTL_MQTT_SHARE_PREFIX CTL_MQTT_TOPIC_PREFIX "+/event",
		CTL_MQTT_SHARE_PREFIX CTL_MQTT_TOPIC_PREFIX "+/tele",
		CTL_MQTT_SHARE_PREFIX CTL_MQTT_TOPIC_PREFIX "+/chunk/req",
	};
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		int r = fl_mqtt_subscribe(m->mq, subs[i], 1);
		if (r < 0)
			return r;
	}
	int r = fl_mqtt_start(m->mq);
	return r == -FL_ENET ? 0 : r; /* the retry is scheduled */
}

int ctl_mqtt_fds(const struct ctl_mqtt *m, int fds[2])
{
	int n = 0;
	fds[n++] = m->wake_fd;
	if (m->mq)
		fds[n++] = fl_mqtt_fd(m->mq);
	return n;
}

/* Confirm committed telemetry to its device (docs/telemetry.md
 * "Confirmation"); QoS 0: a lost one only means the device sends again. */
static int ack_publish(void *ud, const char *device, const char *json, size_t len)
{
	struct ctl_mqtt *m = ud;
	char topic[CTL_DEVICE_ID_MAX + 64];
	snprintf(topic, sizeof(topic), CTL_MQTT_TOPIC_PREFIX "%s/tele/ack", device);
	int r = fl_mqtt_publish(m->mq, topic, json, len, 0, false, NULL);
	return r == -FL_EBUSY || r == -ENOTCONN ? r : 0;
}

int ctl_mqtt_run(struct ctl_mqtt *m, int64_t now_ms, int *ret_next_ms)
{
	uint64_t v;
	if (read(m->wake_fd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nothing was signalled */
	}
	int next = -1;
	if (m->mq) {
		struct fl_mqtt_event ev = {0};
		int n = 0;
		/* the states of this turn in one transaction (registry.h); NULL: one each */
		ctl_state_batch_new(m->ctl, &m->states);
		while (n < MAX_EVENTS_PER_RUN && fl_mqtt_next_event(m->mq, &ev) == 1) {
			n++;
			switch (ev.type) {
			case FL_MQTT_EV_CONNECTED:
				fl_info("mqtt: connected%s",
					ev.session_present ? " (session resumed)" : "");
				ctl_mqtt_on_connection(m, true);
				break;
			case FL_MQTT_EV_DISCONNECTED:
				fl_warn("mqtt: disconnected: %s%s%s (retry in %lld ms)",
					fl_strerror(ev.err), ev.text[0] ? ": " : "", ev.text,
					(long long)ev.retry_ms);
				ctl_mqtt_on_connection(m, false);
				break;
			case FL_MQTT_EV_MESSAGE:
				ctl_mqtt_on_message(m, ev.topic, ev.payload, ev.len);
				break;
			case FL_MQTT_EV_PUBLISHED:
				ctl_mqtt_on_published(m, ev.token, true);
				break;
			case FL_MQTT_EV_PUBLISH_FAILED:
				ctl_mqtt_on_published(m, ev.token, false);
				break;
			case FL_MQTT_EV_SUBSCRIBE_FAILED:
				fl_warn("mqtt: subscribe %s refused: %s", ev.topic ? ev.topic : "?",
					fl_mqtt_reason_str(ev.reason));
				break;
			default:
				break;
			}
			fl_mqtt_event_clear(&ev);
		}
		ctl_state_batch_free(m->states); /* writes what is queued */
		m->states = NULL;
		if (n == MAX_EVENTS_PER_RUN)
			next = 0;
	}
	if (m->mq && fl_mqtt_connected(m->mq))
		ctl_ingest_take_acks(m->ctl, ack_publish, m);
	cmds_publish(m);
	backlog_drain(m);
	if (m->mq) {
		int t = -1;
		fl_mqtt_tick(m->mq, now_ms, &t);
		if (next != 0)
			next = t;
	}
	*ret_next_ms = next;
	return 0;
}

void ctl_mqtt_free(struct ctl_mqtt *m)
{
	if (!m)
		return;
	fl_mqtt_free(m->mq);
	while (m->bl_head)
		backlog_pop(m);
	pthread_mutex_lock(&m->lock);
	struct cmd *lists[2] = {m->queue, m->inflight};
	for (int i = 0; i < 2; i++) {
		for (struct cmd *c = lists[i], *n; c; c = n) {
			n = c->next;
			cmd_free(c);
		}
	}
	pthread_mutex_unlock(&m->lock);
	free(m->toks);
	if (m->wake_fd >= 0)
		close(m->wake_fd);
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	free(m);
}
