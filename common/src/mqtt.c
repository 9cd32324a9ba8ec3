/* MQTT v5 + mutual TLS over Eclipse Paho MQTTAsync (the only file that
 * includes Paho). See flotilla/mqtt.h for the model and docs/mqtt.md.
 *
 * Threads. Paho calls us on its own threads: on_message(), on_connect_*(),
 * on_lost(), on_disconnected(), on_ssl_error() and the per-request
 * on_req_*(). They only copy into the queue and wake the owner through the
 * eventfd. Everything else runs in the owner's thread.
 *
 * Shared state, all protected by m->lock (held only for short copies, never
 * across a call into Paho): the event queue (head/tail, q_msgs, q_bytes),
 * m->st (counters), m->ssl_text, m->disc_reason, and the `queued` flags of
 * the nodes embedded in m and in requests.
 *
 * Requests. Every publish and subscribe gets a `struct req`, allocated and
 * linked into m->reqs by the owner; Paho gets it as the callback context.
 * The callback fills the queue node embedded in the req and queues it, so a
 * completion never needs an allocation and cannot be lost; the owner frees
 * the req when it takes that event. Reqs Paho never completes are freed by
 * fl_mqtt_free() after MQTTAsync_destroy() (no callbacks after that). */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <flotilla/error.h>
#include <flotilla/mqtt.h>
#include <flotilla/util.h>

#define WILL_MAX_BYTES (64u << 10)
#define PATH_MAX_BYTES 4096
#define URI_MAX_BYTES 512
#define FREE_DISCONNECT_MS 1000

enum qkind {
	Q_MESSAGE = 1,
	Q_CONNECT_OK,
	Q_CONNECT_FAIL,
	Q_LOST,
	Q_PUB_DONE,  /* req: ok or failed (code/reason) */
	Q_SUB_DONE,
};

struct qnode {
	struct qnode *next;
	enum qkind kind;
	bool queued;     /* linked in the queue (embedded nodes) */
	bool ok;
	bool session_present;
	int reason;      /* v5 reason code or -1 */
	int code;        /* Paho return code */
	int granted;     /* SUBACK: granted QoS */
	char text[FL_MQTT_TEXT_MAX];
	/* Q_MESSAGE */
	char *buf;       /* topic NUL payload NUL */
	size_t tlen, len;
	int qos;
	bool retained;
	struct req *req; /* Q_PUB_DONE / Q_SUB_DONE */
};

enum req_kind { REQ_PUB, REQ_SUB };

struct req {
	struct req *prev, *next; /* m->reqs, owner only */
	struct fl_mqtt *m;
	enum req_kind kind;
	bool abandoned;          /* failed to the caller already; free silently */
	bool orphan;             /* in m->orphans: its Paho client was set aside */
	int qos;
	size_t len;
	uint64_t token;
	int sub_idx;             /* REQ_SUB */
	struct qnode node;
};

struct sub {
	char *topic;
	int qos;
	bool confirmed; /* SUBACK seen in the current session */
	bool pending;   /* SUBSCRIBE sent, no answer yet */
};

enum state { ST_IDLE, ST_CONNECTING, ST_CONNECTED, ST_WAITING };

struct fl_mqtt {
	/* Owner-only. */
	MQTTAsync client;
	bool tls;
	char *uri, *client_id, *ca_file, *cert_file, *key_file, *will_topic;
	void *will_payload;
	struct fl_mqtt_opts o;
	MQTTProperties connect_props;
	MQTTProperties disconnect_props; /* end_session_on_free */
	enum state state;
	int64_t connected_at_ms;
	int64_t retry_at_ms;
	struct fl_backoff backoff;
	uint64_t next_token;
	int inflight;
	int n_reqs;
	struct req *reqs;
	/* Requests of Paho clients set aside by replace_client(): Paho never
	 * answers them; freed by fl_mqtt_free(). */
	struct req *orphans;
	struct sub subs[FL_MQTT_MAX_SUBS];
	int n_subs;
	int efd;

	/* Shared with Paho's threads, under lock. */
	pthread_mutex_t lock;
	struct qnode *head, *tail;
	size_t q_msgs, q_bytes;
	struct fl_mqtt_stats st;
	char ssl_text[FL_MQTT_TEXT_MAX];
	int disc_reason;
	/* A QoS 1 publish failed on a dead socket: Paho's state for this client
	 * is unsafe to use again (see replace_client()). */
	bool poisoned;
	struct qnode conn_node; /* connect result */
	struct qnode lost_node; /* connection lost */
};

/* ---- queue (any thread) ---- */

static void wake_locked(struct fl_mqtt *m, bool was_empty)
{
	if (was_empty) {
		uint64_t one = 1;
		/* Cannot fail short of EAGAIN at 2^64-1, which cannot happen as we
		 * read it back when the queue drains. */
		ssize_t n = write(m->efd, &one, sizeof(one));
		(void)n;
	}
}

static void push_locked(struct fl_mqtt *m, struct qnode *n)
{
	bool was_empty = m->head == NULL;
	n->next = NULL;
	n->queued = true;
	if (m->tail)
		m->tail->next = n;
	else
		m->head = n;
	m->tail = n;
	wake_locked(m, was_empty);
}

static void push(struct fl_mqtt *m, struct qnode *n)
{
	pthread_mutex_lock(&m->lock);
	push_locked(m, n);
	pthread_mutex_unlock(&m->lock);
}

static struct qnode *pop(struct fl_mqtt *m)
{
	pthread_mutex_lock(&m->lock);
	struct qnode *n = m->head;
	if (n) {
		m->head = n->next;
		if (!m->head)
			m->tail = NULL;
		n->queued = false;
		n->next = NULL;
		if (n->kind == Q_MESSAGE) {
			m->q_msgs--;
			m->q_bytes -= n->tlen + n->len;
		}
	}
	if (!m->head) {
		uint64_t v;
		ssize_t r = read(m->efd, &v, sizeof(v)); /* EAGAIN when already 0 */
		(void)r;
	}
	pthread_mutex_unlock(&m->lock);
	return n;
}

/* ---- Paho callbacks (Paho's threads) ---- */

static int on_ssl_error(const char *str, size_t len, void *u)
{
	struct fl_mqtt *m = u;
	/* OpenSSL's line reads "<thread>:error:<code>:<lib>:<func>:<reason>:<file>:...":
	 * keep the reason ("certificate verify failed"), or the line when it
	 * does not parse. */
	const char *end = str + len, *p = NULL, *q;
	for (q = str; q + 6 <= end; q++)
		if (!memcmp(q, "error:", 6)) {
			p = q + 6;
			break;
		}
	for (int field = 0; p && field < 3; field++) {
		p = memchr(p, ':', (size_t)(end - p));
		if (p)
			p++;
	}
	if (p) {
		q = memchr(p, ':', (size_t)(end - p));
		str = p;
		len = (size_t)((q ? q : end) - p);
	}
	pthread_mutex_lock(&m->lock);
	/* Keep the first error of an attempt: it names the cause. */
	if (m->ssl_text[0] == '\0') {
		size_t n = len < sizeof(m->ssl_text) - 1 ? len : sizeof(m->ssl_text) - 1;
		memcpy(m->ssl_text, str, n);
		while (n > 0 && (m->ssl_text[n - 1] == '\n' || m->ssl_text[n - 1] == '\r'))
			n--;
		m->ssl_text[n] = '\0';
	}
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *msg)
{
	struct fl_mqtt *m = ctx;
	size_t tlen = topic_len > 0 ? (size_t)topic_len : strlen(topic);
	size_t len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
	bool take = false;

	pthread_mutex_lock(&m->lock);
	m->st.msgs_in++;
	m->st.bytes_in += len;
	if (len > m->o.max_msg_bytes || tlen > FL_MQTT_TOPIC_MAX)
		m->st.drops_oversize++;
	else if (m->q_msgs + 1 > m->o.max_queue_msgs || m->q_bytes + tlen + len > m->o.max_queue_bytes)
		m->st.drops_queue_full++;
	else {
		/* Reserve before allocating, so the bound holds at every moment. */
		m->q_msgs++;
		m->q_bytes += tlen + len;
		if (m->q_bytes > m->st.queue_peak_bytes)
			m->st.queue_peak_bytes = m->q_bytes;
		take = true;
	}
	pthread_mutex_unlock(&m->lock);

	if (take) {
		struct qnode *n = calloc(1, sizeof(*n));
		char *buf = malloc(tlen + 1 + len + 1);
		if (!n || !buf) {
			free(n);
			free(buf);
			pthread_mutex_lock(&m->lock);
			m->q_msgs--;
			m->q_bytes -= tlen + len;
			m->st.drops_queue_full++;
			pthread_mutex_unlock(&m->lock);
		} else {
			memcpy(buf, topic, tlen);
			buf[tlen] = '\0';
			if (len)
				memcpy(buf + tlen + 1, msg->payload, len);
			buf[tlen + 1 + len] = '\0';
			n->kind = Q_MESSAGE;
			n->buf = buf;
			n->tlen = tlen;
			n->len = len;
			n->qos = msg->qos;
			n->retained = msg->retained != 0;
			n->reason = -1;
			push(m, n);
		}
	}
	MQTTAsync_freeMessage(&msg);
	MQTTAsync_free(topic);
	/* 1: handled. A dropped message is acknowledged too: retrying delivery
	 * would only spin Paho's thread on a message we will never take. */
	return 1;
}

static void fill_text(char *dst, const char *a, const char *b)
{
	if (a && *a && b && *b)
		snprintf(dst, FL_MQTT_TEXT_MAX, "%s; %s", a, b);
	else if (a && *a)
		snprintf(dst, FL_MQTT_TEXT_MAX, "%s", a);
	else if (b && *b)
		snprintf(dst, FL_MQTT_TEXT_MAX, "%s", b);
	else
		dst[0] = '\0';
}

static void on_connect_ok(void *ctx, MQTTAsync_successData5 *r)
{
	struct fl_mqtt *m = ctx;
	pthread_mutex_lock(&m->lock);
	struct qnode *n = &m->conn_node;
	if (!n->queued) {
		memset(n, 0, sizeof(*n));
		n->kind = Q_CONNECT_OK;
		n->reason = -1;
		n->session_present = r && r->alt.connect.sessionPresent;
		push_locked(m, n);
	}
	pthread_mutex_unlock(&m->lock);
}

static void on_connect_fail(void *ctx, MQTTAsync_failureData5 *r)
{
	struct fl_mqtt *m = ctx;
	pthread_mutex_lock(&m->lock);
	struct qnode *n = &m->conn_node;
	if (!n->queued) {
		memset(n, 0, sizeof(*n));
		n->kind = Q_CONNECT_FAIL;
		n->reason = -1;
		if (r) {
			n->code = r->code;
			/* A CONNACK refusal carries a reason code >= 0x80. */
			if (r->reasonCode >= 0x80)
				n->reason = (int)r->reasonCode;
		}
		char paho[96] = "";
		if (r && r->message)
			snprintf(paho, sizeof(paho), "%s", r->message);
		else if (r && n->reason >= 0)
			snprintf(paho, sizeof(paho), "refused: %s", MQTTReasonCode_toString(r->reasonCode));
		else if (r)
			snprintf(paho, sizeof(paho), "connect failed (paho %d)", r->code);
		char tls[FL_MQTT_TEXT_MAX];
		if (m->ssl_text[0])
			snprintf(tls, sizeof(tls), "TLS: %s", m->ssl_text);
		else
			tls[0] = '\0';
		/* Paho reports a failed host name check, and a broker that closes
		 * the connection after the handshake (our certificate refused), as
		 * the same bare connect failure: say what it may be. */
		if (!tls[0] && m->tls && n->reason < 0 && r && r->code == MQTTASYNC_FAILURE)
			snprintf(tls, sizeof(tls), "%s",
				 "TLS session not established (server host name mismatch, our "
				 "certificate refused, or connection refused)");
		fill_text(n->text, paho, tls);
		push_locked(m, n);
	}
	pthread_mutex_unlock(&m->lock);
}

static void on_disconnected(void *ctx, MQTTProperties *props, enum MQTTReasonCodes rc)
{
	struct fl_mqtt *m = ctx;
	pthread_mutex_lock(&m->lock);
	m->disc_reason = (int)rc;
	pthread_mutex_unlock(&m->lock);
}

static void on_lost(void *ctx, char *cause)
{
	struct fl_mqtt *m = ctx;
	pthread_mutex_lock(&m->lock);
	struct qnode *n = &m->lost_node;
	if (!n->queued) {
		memset(n, 0, sizeof(*n));
		n->kind = Q_LOST;
		n->reason = m->disc_reason;
		m->disc_reason = -1;
		if (n->reason >= 0)
			snprintf(n->text, sizeof(n->text), "server sent DISCONNECT: %s",
				 MQTTReasonCode_toString((enum MQTTReasonCodes)n->reason));
		else
			snprintf(n->text, sizeof(n->text), "connection lost%s%s",
				 cause ? ": " : "", cause ? cause : "");
		push_locked(m, n);
	}
	pthread_mutex_unlock(&m->lock);
	if (cause)
		MQTTAsync_free(cause);
}

static void on_req_ok(void *ctx, MQTTAsync_successData5 *r)
{
	struct req *q = ctx;
	struct fl_mqtt *m = q->m;
	pthread_mutex_lock(&m->lock);
	struct qnode *n = &q->node;
	n->kind = q->kind == REQ_PUB ? Q_PUB_DONE : Q_SUB_DONE;
	n->ok = true;
	n->reason = -1;
	if (r && q->kind == REQ_SUB) {
		/* One filter per SUBSCRIBE: Paho puts its reason code (the granted
		 * QoS, or >= 0x80) in reasonCode; alt.sub is only filled for lists. */
		int rc = (int)r->reasonCode;
		if (rc >= 0x80) {
			n->ok = false;
			n->reason = rc;
			snprintf(n->text, sizeof(n->text), "%s",
				 MQTTReasonCode_toString((enum MQTTReasonCodes)rc));
		} else
			n->granted = rc;
	} else if (r && (int)r->reasonCode >= 0x80) {
		n->ok = false;
		n->reason = (int)r->reasonCode;
		snprintf(n->text, sizeof(n->text), "%s", MQTTReasonCode_toString(r->reasonCode));
	}
	if (!n->queued)
		push_locked(m, n);
	pthread_mutex_unlock(&m->lock);
}

static void on_req_fail(void *ctx, MQTTAsync_failureData5 *r)
{
	struct req *q = ctx;
	struct fl_mqtt *m = q->m;
	pthread_mutex_lock(&m->lock);
	struct qnode *n = &q->node;
	n->kind = q->kind == REQ_PUB ? Q_PUB_DONE : Q_SUB_DONE;
	n->ok = false;
	n->reason = -1;
	if (r) {
		n->code = r->code;
		if ((int)r->reasonCode >= 0x80)
			n->reason = (int)r->reasonCode;
		if (n->reason >= 0)
			snprintf(n->text, sizeof(n->text), "%s",
				 MQTTReasonCode_toString(r->reasonCode));
		else if (r->message)
			snprintf(n->text, sizeof(n->text), "%s", r->message);
		else
			snprintf(n->text, sizeof(n->text), "failed (paho %d)", r->code);
		/* Paho 1.3.12 (Debian bookworm): when writing a QoS 1 PUBLISH
		 * fails (socket error: the connection died under it), its send
		 * thread calls us here and then frees the command's topic and
		 * payload, which the message it already put in the session's
		 * in-flight list still points to. The next connect that resumes
		 * the session re-sends that message from freed memory (and
		 * ending the session frees it a second time). This client must
		 * not connect again: do_connect() replaces it. docs/mqtt.md
		 * "Paho's send failure". */
		if (q->kind == REQ_PUB && q->qos > 0 && (int)r->reasonCode < 0x80 &&
		    (r->code == MQTTASYNC_FAILURE || r->code == MQTTASYNC_PERSISTENCE_ERROR))
			m->poisoned = true;
	}
	if (!n->queued)
		push_locked(m, n);
	pthread_mutex_unlock(&m->lock);
}

/* Callbacks of a client set aside by replace_client(): nothing reaches us. */
static void noop_lost(void *ctx, char *cause)
{
	(void)ctx;
	if (cause)
		MQTTAsync_free(cause);
}

static int noop_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *msg)
{
	(void)ctx;
	(void)topic_len;
	MQTTAsync_freeMessage(&msg);
	MQTTAsync_free(topic);
	return 1;
}

static void noop_disconnected(void *ctx, MQTTProperties *props, enum MQTTReasonCodes rc)
{
	(void)ctx;
	(void)props;
	(void)rc;
}

/* ---- helpers (owner) ---- */

void fl_backoff_init(struct fl_backoff *b, int64_t min_ms, int64_t max_ms, uint64_t seed)
{
	b->min_ms = min_ms > 0 ? min_ms : FL_MQTT_BACKOFF_MIN_MS;
	b->max_ms = max_ms > 0 ? max_ms : FL_MQTT_BACKOFF_MAX_MS;
	if (b->max_ms < b->min_ms)
		b->max_ms = b->min_ms; /* e.g. only a larger min was given */
	b->cur_ms = b->min_ms;
	b->rng = seed ? seed : (uint64_t)fl_mono_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)b;
	if (b->rng == 0)
		b->rng = 0x9E3779B97F4A7C15ull;
}

int64_t fl_backoff_next(struct fl_backoff *b, int64_t now_ms, int64_t up_since_ms)
{
	if (up_since_ms && now_ms - up_since_ms > FL_MQTT_BACKOFF_RESET_MS)
		b->cur_ms = b->min_ms;
	b->rng ^= b->rng >> 12;
	b->rng ^= b->rng << 25;
	b->rng ^= b->rng >> 27;
	uint64_t r = b->rng * 2685821657736338717ull;
	int64_t span = b->cur_ms * FL_MQTT_BACKOFF_JITTER_PCT / 100;
	int64_t d = b->cur_ms - span + (int64_t)(r % (uint64_t)(2 * span + 1));
	b->cur_ms = b->cur_ms * 2 > b->max_ms ? b->max_ms : b->cur_ms * 2;
	return d;
}

/* Schedule the next connect attempt; returns the delay. */
static int64_t schedule_retry(struct fl_mqtt *m, bool was_connected)
{
	int64_t now = fl_mono_ms();
	int64_t d = fl_backoff_next(&m->backoff, now, was_connected ? m->connected_at_ms : 0);
	m->retry_at_ms = now + d;
	m->state = ST_WAITING;
	return d;
}

static int replace_client(struct fl_mqtt *m);

static int do_connect(struct fl_mqtt *m)
{
	MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
	MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;

	co.keepAliveInterval = m->o.keepalive_s;
	co.cleanstart = m->o.clean_start ? 1 : 0;
	co.connectTimeout = m->o.connect_timeout_s;
	co.automaticReconnect = 0; /* ours has jitter and runs in the owner's loop */
	co.maxInflight = m->o.max_inflight;
	co.connectProperties = &m->connect_props;
	co.onSuccess5 = on_connect_ok;
	co.onFailure5 = on_connect_fail;
	co.context = m;
	if (m->tls) {
		ssl.trustStore = m->ca_file;
		ssl.keyStore = m->cert_file;
		ssl.privateKey = m->key_file;
		ssl.enableServerCertAuth = 1;
		ssl.verify = m->o.verify_host ? 1 : 0;
		ssl.sslVersion = MQTT_SSL_VERSION_TLS_1_2; /* minimum; 1.3 negotiated */
		ssl.disableDefaultTrustStore = 1;         /* the fleet CA only */
		ssl.ssl_error_cb = on_ssl_error;
		ssl.ssl_error_context = m;
		co.ssl = &ssl;
	}
	if (m->will_topic) {
		will.topicName = m->will_topic;
		will.payload.data = m->will_payload;
		will.payload.len = (int)m->o.will_len;
		will.qos = m->o.will_qos;
		will.retained = m->o.will_retain;
		co.will = &will;
	}
	pthread_mutex_lock(&m->lock);
	m->ssl_text[0] = '\0';
	m->disc_reason = -1;
	bool poisoned = m->poisoned;
	pthread_mutex_unlock(&m->lock);
	if (poisoned && replace_client(m) < 0) {
		schedule_retry(m, false); /* no memory for a new client: later */
		return -FL_ENET;
	}
	m->state = ST_CONNECTING;
	int rc = MQTTAsync_connect(m->client, &co);
	if (rc != MQTTASYNC_SUCCESS) {
		pthread_mutex_lock(&m->lock);
		m->st.connect_failures++;
		pthread_mutex_unlock(&m->lock);
		schedule_retry(m, false);
		return -FL_ENET;
	}
	return 0;
}

static void req_link(struct fl_mqtt *m, struct req *q)
{
	m->n_reqs++;
	q->prev = NULL;
	q->next = m->reqs;
	if (m->reqs)
		m->reqs->prev = q;
	m->reqs = q;
}

static void req_free(struct fl_mqtt *m, struct req *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		m->reqs = q->next;
	if (q->next)
		q->next->prev = q->prev;
	m->n_reqs--;
	free(q);
}

/* RESUMED: the SUBSCRIBE renews a subscription the resumed session should
 * already hold: Retain Handling 1 (retained messages only if the broker did
 * not have the subscription after all), so a renewal does not deliver the
 * retained messages a second time. */
static int send_subscribe(struct fl_mqtt *m, int idx, bool resumed)
{
	struct req *q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->m = m;
	q->kind = REQ_SUB;
	q->sub_idx = idx;
	q->qos = m->subs[idx].qos;
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	ro.onSuccess5 = on_req_ok;
	ro.onFailure5 = on_req_fail;
	ro.context = q;
	if (resumed)
		ro.subscribeOptions.retainHandling = 1;
	req_link(m, q);
	int rc = MQTTAsync_subscribe(m->client, m->subs[idx].topic, m->subs[idx].qos, &ro);
	if (rc != MQTTASYNC_SUCCESS) {
		req_free(m, q);
		return rc == MQTTASYNC_DISCONNECTED ? -ENOTCONN : -FL_ENET;
	}
	m->subs[idx].pending = true;
	return 0;
}

static int err_of_reason(int reason)
{
	switch (reason) {
	case 0x86: /* bad user name or password */
	case 0x87: /* not authorized */
	case 0x8A: /* banned */
		return -EACCES;
	case 0x95: /* packet too large */
		return -FL_ETOOBIG;
	case 0x97: /* quota exceeded */
		return -FL_EBUSY;
	default:
		return -FL_ENET;
	}
}

/* Fail publish Q to the caller now, as a PUBLISH_FAILED event placed at the
 * queue's head (a synthetic node, not the embedded one: Paho may still
 * complete the request and use it). */
static void abandon_pub(struct fl_mqtt *m, struct req *q, const char *why)
{
	struct qnode *n = calloc(1, sizeof(*n));
	if (!n)
		return; /* the slot stays taken until Paho answers */
	n->kind = Q_PUB_DONE;
	n->ok = false;
	n->reason = -1;
	n->code = -ENOTCONN;
	n->req = q;
	snprintf(n->text, sizeof(n->text), "%s", why);
	q->abandoned = true;
	m->inflight--;
	pthread_mutex_lock(&m->lock);
	bool was_empty = m->head == NULL;
	n->next = m->head;
	n->queued = true;
	m->head = n;
	if (!m->tail)
		m->tail = n;
	m->st.publish_failed++;
	wake_locked(m, was_empty);
	pthread_mutex_unlock(&m->lock);
}

/* Fail every unfinished publish (ALL: of any QoS; else QoS 0 only) to the
 * caller. */
static void abandon_pubs(struct fl_mqtt *m, bool all, const char *why)
{
	for (struct req *q = m->reqs; q; q = q->next)
		if (q->kind == REQ_PUB && !q->abandoned && (all || q->qos == 0))
			abandon_pub(m, q, why);
}

/* Create the Paho client and hook our callbacks. */
static int paho_create(struct fl_mqtt *m)
{
	MQTTAsync_createOptions cr = MQTTAsync_createOptions_initializer5;
	cr.sendWhileDisconnected = 0;
	cr.maxBufferedMessages = m->o.max_inflight + FL_MQTT_MAX_SUBS + 16;
	MQTTAsync c = NULL;
	int rc = MQTTAsync_createWithOptions(&c, m->uri, m->client_id, MQTTCLIENT_PERSISTENCE_NONE,
					     NULL, &cr);
	if (rc != MQTTASYNC_SUCCESS)
		return rc == MQTTASYNC_BAD_PROTOCOL ? -EINVAL : -FL_ENET;
	if (MQTTAsync_setCallbacks(c, m, on_lost, on_message, NULL) != MQTTASYNC_SUCCESS ||
	    MQTTAsync_setDisconnected(c, m, on_disconnected) != MQTTASYNC_SUCCESS) {
		MQTTAsync_destroy(&c);
		return -FL_ENET;
	}
	m->client = c;
	return 0;
}

/* The current Paho client is poisoned (on_req_fail()): set it aside for
 * good and create a new one. The old client is closed (its connection-lost
 * callback has run) and is never connected or destroyed again: destroying
 * it would free the dangling message a second time. Its callbacks go to
 * no-ops; its requests that Paho has not answered are failed to the caller
 * (publishes) or sent again on connect (subscriptions), and their memory
 * is kept until fl_mqtt_free(). Costs: the old client's memory (a few KiB)
 * stays allocated; the new client's first connect may take ~2 s (Paho's
 * receive thread notices a new socket late). Owner's thread. */
static int replace_client(struct fl_mqtt *m)
{
	MQTTAsync old = m->client;
	m->client = NULL;
	int r = paho_create(m);
	if (r < 0) {
		m->client = old;
		return r;
	}
	/* Paho refuses new callbacks while a connect is in progress; a
	 * poisoned client is closed, so this does not fail. If it did, the old
	 * callbacks stay: they only queue events for m. */
	MQTTAsync_setCallbacks(old, NULL, noop_lost, noop_message, NULL);
	MQTTAsync_setDisconnected(old, NULL, noop_disconnected);
	for (struct req *q = m->reqs, *next; q; q = next) {
		next = q->next;
		pthread_mutex_lock(&m->lock);
		bool queued = q->node.queued;
		pthread_mutex_unlock(&m->lock);
		if (queued)
			continue; /* answered already: next_event() frees it */
		if (q->kind == REQ_PUB && !q->abandoned)
			abandon_pub(m, q, "connection lost before the broker acknowledged it");
		if (q->kind == REQ_SUB && q->sub_idx >= 0 && q->sub_idx < m->n_subs)
			m->subs[q->sub_idx].pending = false;
		/* Move to the orphans: a synthetic failure event may still name it. */
		q->orphan = true;
		if (q->prev)
			q->prev->next = q->next;
		else
			m->reqs = q->next;
		if (q->next)
			q->next->prev = q->prev;
		m->n_reqs--;
		q->prev = NULL;
		q->next = m->orphans;
		if (m->orphans)
			m->orphans->prev = q;
		m->orphans = q;
	}
	pthread_mutex_lock(&m->lock);
	m->poisoned = false;
	m->st.clients_replaced++;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

/* ---- public ---- */

void fl_mqtt_opts_init(struct fl_mqtt_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->verify_host = true;
	o->keepalive_s = 30;
	o->connect_timeout_s = 10;
	o->session_expiry_s = 86400;
	o->clean_start = false;
	o->max_inflight = 8;
	o->max_msg_bytes = 1u << 20;
	o->max_queue_bytes = 8u << 20;
	o->max_queue_msgs = 1024;
}

static int dup_str(const char *s, size_t max, char **ret)
{
	if (!s) {
		*ret = NULL;
		return 0;
	}
	size_t n = strnlen(s, max + 1);
	if (n == 0 || n > max)
		return -EINVAL;
	char *d = strdup(s);
	if (!d)
		return -ENOMEM;
	*ret = d;
	return 0;
}

static int check_file(const char *path)
{
	if (!path || !*path || strnlen(path, PATH_MAX_BYTES + 1) > PATH_MAX_BYTES)
		return -EINVAL;
	if (access(path, R_OK) < 0)
		return -errno;
	return 0;
}

static bool topic_ok(const char *t, bool filter)
{
	if (!t)
		return false;
	size_t n = strnlen(t, FL_MQTT_TOPIC_MAX + 1);
	if (n == 0 || n > FL_MQTT_TOPIC_MAX)
		return false;
	if (!filter)
		return strpbrk(t, "+#") == NULL;
	/* Filters: '+' fills a whole level, '#' is the whole last level. A
	 * malformed filter would get us disconnected by the broker. */
	for (size_t i = 0; i < n; i++) {
		if (t[i] != '+' && t[i] != '#')
			continue;
		bool starts = i == 0 || t[i - 1] == '/';
		if (!starts || (t[i] == '#' && i + 1 != n) || (t[i] == '+' && i + 1 < n && t[i + 1] != '/'))
			return false;
	}
	return true;
}

int fl_mqtt_new(const struct fl_mqtt_opts *o, struct fl_mqtt **ret)
{
	if (!o || !ret || !o->uri || !o->client_id)
		return -EINVAL;
	if (strnlen(o->uri, URI_MAX_BYTES + 1) > URI_MAX_BYTES)
		return -EINVAL;
	bool tls;
	const char *rest;
	if (!strncmp(o->uri, "ssl://", 6))
		tls = true, rest = o->uri + 6;
	else if (!strncmp(o->uri, "mqtts://", 8))
		tls = true, rest = o->uri + 8;
	else if (!strncmp(o->uri, "tcp://", 6))
		tls = false, rest = o->uri + 6;
	else if (!strncmp(o->uri, "mqtt://", 7))
		tls = false, rest = o->uri + 7;
	else
		return -EINVAL;
	if (*rest == '\0' || !strchr(rest, ':'))
		return -EINVAL; /* host:port, port explicit */
	if (!fl_name_valid(o->client_id, FL_MQTT_CLIENT_ID_MAX))
		return -EINVAL;
	if (o->keepalive_s < 1 || o->keepalive_s > 65535 || o->connect_timeout_s < 1 ||
	    o->connect_timeout_s > 300)
		return -EINVAL;
	if (o->max_inflight < 1 || o->max_inflight > FL_MQTT_MAX_INFLIGHT)
		return -EINVAL;
	if (o->max_msg_bytes < 1 || o->max_msg_bytes > FL_MQTT_MSG_MAX ||
	    o->max_queue_bytes < o->max_msg_bytes || o->max_queue_msgs < 1)
		return -EINVAL;
	if (o->will_topic && (!topic_ok(o->will_topic, false) || o->will_len > WILL_MAX_BYTES ||
			      (o->will_len && !o->will_payload) || o->will_qos < 0 ||
			      o->will_qos > 1))
		return -EINVAL;
	if (o->backoff_min_ms < 0 || o->backoff_max_ms < 0 ||
	    (o->backoff_min_ms && o->backoff_min_ms < 10) || o->backoff_min_ms > FL_MQTT_BACKOFF_MAX_MS ||
	    (o->backoff_max_ms && o->backoff_max_ms < 10) || o->backoff_max_ms > FL_MQTT_BACKOFF_MAX_MS ||
	    (o->backoff_min_ms && o->backoff_max_ms && o->backoff_min_ms > o->backoff_max_ms))
		return -EINVAL;
	if (tls) {
		int r;
		if ((r = check_file(o->ca_file)) < 0 || (r = check_file(o->cert_file)) < 0 ||
		    (r = check_file(o->key_file)) < 0)
			return r;
	}

	struct fl_mqtt *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->efd = -1;
	m->o = *o;
	m->tls = tls;
	m->disc_reason = -1;
	pthread_mutex_init(&m->lock, NULL);
	int r = 0;
	const char *scheme = tls ? "ssl://" : "tcp://";
	m->uri = fl_asprintf("%s%s", scheme, rest);
	if (!m->uri)
		r = -ENOMEM;
	if (r == 0)
		r = dup_str(o->client_id, FL_MQTT_CLIENT_ID_MAX, &m->client_id);
	if (r == 0 && tls)
		r = dup_str(o->ca_file, PATH_MAX_BYTES, &m->ca_file);
	if (r == 0 && tls)
		r = dup_str(o->cert_file, PATH_MAX_BYTES, &m->cert_file);
	if (r == 0 && tls)
		r = dup_str(o->key_file, PATH_MAX_BYTES, &m->key_file);
	if (r == 0)
		r = dup_str(o->will_topic, FL_MQTT_TOPIC_MAX, &m->will_topic);
	if (r == 0 && o->will_topic) {
		m->will_payload = malloc(o->will_len ? o->will_len : 1);
		if (!m->will_payload)
			r = -ENOMEM;
		else if (o->will_len)
			memcpy(m->will_payload, o->will_payload, o->will_len);
	}
	/* Keep only what we copied: no caller pointers survive new(). */
	m->o.uri = m->o.client_id = m->o.ca_file = m->o.cert_file = m->o.key_file = NULL;
	m->o.will_topic = NULL;
	m->o.will_payload = NULL;
	if (r == 0) {
		m->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (m->efd < 0)
			r = -errno;
	}
	if (r == 0)
		r = paho_create(m);
	/* After create: Paho's allocator state lives while a client exists, so
	 * its allocations must too (freed before MQTTAsync_destroy()). */
	if (r == 0) {
		MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
		p.value.integer4 = o->session_expiry_s;
		if (MQTTProperties_add(&m->connect_props, &p) != 0)
			r = -ENOMEM;
		/* No Maximum Packet Size in CONNECT, on purpose: mosquitto 2.0.11
		 * (Debian bookworm) drops a QoS 1 message larger than that
		 * ("Dropping too large outgoing PUBLISH") but keeps it counted
		 * against our session's in-flight window, and no PUBACK can ever
		 * free it: enough of them and the broker delivers nothing more to
		 * us (seen after a junk flood on a session taken over after a
		 * restart with persistence). on_message() drops what is over
		 * max_msg_bytes and acknowledges it, which keeps the flow moving;
		 * the broker's size limit bounds what reaches us. docs/mqtt.md
		 * "Message size". */
	}
	if (r < 0) {
		fl_mqtt_free(m);
		return r;
	}
	fl_backoff_init(&m->backoff, m->o.backoff_min_ms, m->o.backoff_max_ms, 0);
	m->next_token = 1;
	*ret = m;
	return 0;
}

int fl_mqtt_fd(const struct fl_mqtt *m)
{
	return m->efd;
}

bool fl_mqtt_connected(const struct fl_mqtt *m)
{
	return m->state == ST_CONNECTED;
}

int fl_mqtt_start(struct fl_mqtt *m)
{
	if (m->state != ST_IDLE)
		return -FL_ESTATE;
	return do_connect(m);
}

int fl_mqtt_tick(struct fl_mqtt *m, int64_t now_ms, int *ret_next_ms)
{
	if (m->state == ST_WAITING && now_ms >= m->retry_at_ms)
		do_connect(m); /* a refusal schedules the next attempt itself */
	int next = -1;
	if (m->state == ST_WAITING) {
		int64_t d = m->retry_at_ms - now_ms;
		next = d < 0 ? 0 : d > INT32_MAX ? INT32_MAX : (int)d;
	}
	if (ret_next_ms)
		*ret_next_ms = next;
	return 0;
}

int fl_mqtt_subscribe(struct fl_mqtt *m, const char *topic, int qos)
{
	if (!topic_ok(topic, true) || qos < 0 || qos > 1)
		return -EINVAL;
	int idx = -1;
	for (int i = 0; i < m->n_subs; i++)
		if (!strcmp(m->subs[i].topic, topic))
			idx = i;
	if (idx < 0) {
		if (m->n_subs >= FL_MQTT_MAX_SUBS)
			return -FL_ETOOBIG;
		char *t = strdup(topic);
		if (!t)
			return -ENOMEM;
		idx = m->n_subs++;
		m->subs[idx] = (struct sub){.topic = t};
	}
	m->subs[idx].qos = qos;
	m->subs[idx].confirmed = false;
	if (m->state != ST_CONNECTED)
		return 0; /* sent on connect */
	int r = send_subscribe(m, idx, false);
	/* Not connected after all: it is remembered and goes out on connect. */
	return r == -ENOTCONN ? 0 : r;
}

int fl_mqtt_publish(struct fl_mqtt *m, const char *topic, const void *data, size_t len,
		    int qos, bool retain, uint64_t *ret_token)
{
	if (!topic_ok(topic, false) || qos < 0 || qos > 1 || len > FL_MQTT_MSG_MAX ||
	    (len && !data))
		return -EINVAL;
	if (m->state != ST_CONNECTED)
		return -ENOTCONN;
	if (m->inflight >= m->o.max_inflight)
		return -FL_EBUSY;
	struct req *q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->m = m;
	q->kind = REQ_PUB;
	q->qos = qos;
	q->len = len;
	q->token = m->next_token++;
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	ro.onSuccess5 = on_req_ok;
	ro.onFailure5 = on_req_fail;
	ro.context = q;
	MQTTAsync_message msg = MQTTAsync_message_initializer;
	msg.payload = (void *)data;
	msg.payloadlen = (int)len;
	msg.qos = qos;
	msg.retained = retain ? 1 : 0;
	req_link(m, q);
	int rc = MQTTAsync_sendMessage(m->client, topic, &msg, &ro);
	if (rc != MQTTASYNC_SUCCESS) {
		req_free(m, q);
		switch (rc) {
		case MQTTASYNC_DISCONNECTED:
			return -ENOTCONN;
		case MQTTASYNC_MAX_BUFFERED_MESSAGES:
		case MQTTASYNC_NO_MORE_MSGIDS:
			return -FL_EBUSY;
		case MQTTASYNC_BAD_UTF8_STRING:
		case MQTTASYNC_BAD_QOS:
		case MQTTASYNC_NULL_PARAMETER:
			return -EINVAL;
		default:
			return -FL_ENET;
		}
	}
	m->inflight++;
	if (ret_token)
		*ret_token = q->token;
	return 0;
}

static void on_connected_owner(struct fl_mqtt *m, bool session_present)
{
	m->state = ST_CONNECTED;
	m->connected_at_ms = fl_mono_ms();
	if (!session_present)
		/* The broker forgot us: our QoS 1 publishes in flight are gone with
		 * the session. Paho sends those again itself on a resumed one. */
		abandon_pubs(m, true, "session lost before the broker acknowledged it");
	/* Every subscription is sent again, on a resumed session too: "session
	 * present" does not promise that the session still has all of them.
	 * mosquitto 2.0.11 with persistence restores a session over a broker
	 * restart without its shared ($share/...) subscriptions, and publishes
	 * to them then match nobody (docs/mqtt.md "Resumed sessions"). A
	 * SUBSCRIBE for a filter the session has replaces it (MQTT 5 3.8.4):
	 * nothing queued for us is lost and nothing arrives twice. */
	for (int i = 0; i < m->n_subs; i++) {
		m->subs[i].confirmed = false;
		if (!m->subs[i].pending)
			send_subscribe(m, i, session_present); /* failure: retried on the next connect */
	}
}

/* Paho does not set TCP_NODELAY, and Nagle's algorithm with the peer's
 * delayed ACK holds the tail of a publish up to ~40 ms: with chunk/req ->
 * chunk/dat round trips that costs 3x or more in throughput (docs/mqtt.md).
 * Done for every client (agent and controller) on each connect.
 * After a connect, find our TCP sockets connected to the broker's port and
 * set it. Best effort: nothing happens when /proc is not there. */
static void nodelay(int port)
{
	if (port <= 0)
		return;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		char *end;
		long fd = strtol(de->d_name, &end, 10);
		if (*end || end == de->d_name || fd < 0 || fd == dirfd(d))
			continue;
		int type = 0;
		socklen_t tl = sizeof(type);
		if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_STREAM)
			continue;
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		if (getpeername((int)fd, (struct sockaddr *)&ss, &sl) < 0)
			continue;
		int peer = ss.ss_family == AF_INET    ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
			   : ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
						      : -1;
		if (peer != port)
			continue;
		int one = 1;
		setsockopt((int)fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	closedir(d);
}

/* A connect failed: when our own certificate is outside its validity
 * period, say so first (the broker refuses it, and Paho reports only a bare
 * connect failure). TEXT is FL_MQTT_TEXT_MAX bytes. Owner's thread. */
static void own_cert_note(const struct fl_mqtt *m, char *text)
{
	if (!m->tls || !m->cert_file)
		return;
	FILE *fp = fopen(m->cert_file, "re");
	if (!fp)
		return;
	X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	if (!x)
		return;
	const char *what = NULL;
	const ASN1_TIME *t = NULL;
	if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
		what = "expired";
		t = X509_get0_notAfter(x);
	} else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
		what = "is not valid before";
		t = X509_get0_notBefore(x);
	}
	if (what) {
		struct tm tm;
		char when[32] = "?";
		if (ASN1_TIME_to_tm(t, &tm) == 1)
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		char old[FL_MQTT_TEXT_MAX];
		memcpy(old, text, sizeof(old));
		old[sizeof(old) - 1] = '\0';
		snprintf(text, FL_MQTT_TEXT_MAX, "our certificate %s %.24s; %.100s", what, when, old);
	}
	X509_free(x);
}

/* The port of "scheme://host:port" (0 when absent or malformed). */
static int uri_port(const char *uri)
{
	const char *c = strrchr(uri, ':');
	if (!c || c[1] == '/' || !c[1])
		return 0;
	int64_t v;
	return fl_parse_i64(c + 1, 1, 65535, &v) == 0 ? (int)v : 0;
}

int fl_mqtt_next_event(struct fl_mqtt *m, struct fl_mqtt_event *ret)
{
	for (;;) {
		struct qnode *n = pop(m);
		if (!n)
			return 0;
		struct fl_mqtt_event ev = {.reason = n->reason};
		switch (n->kind) {
		case Q_MESSAGE:
			ev.type = FL_MQTT_EV_MESSAGE;
			ev.topic = n->buf;
			ev.payload = (uint8_t *)n->buf + n->tlen + 1;
			ev.len = n->len;
			ev.qos = n->qos;
			ev.retained = n->retained;
			free(n);
			*ret = ev;
			return 1;
		case Q_CONNECT_OK:
			pthread_mutex_lock(&m->lock);
			m->st.connects++;
			pthread_mutex_unlock(&m->lock);
			/* Owner's view first, so new publishes see it. */
			on_connected_owner(m, n->session_present);
			nodelay(uri_port(m->uri));
			ev.type = FL_MQTT_EV_CONNECTED;
			ev.session_present = n->session_present;
			*ret = ev;
			return 1;
		case Q_CONNECT_FAIL:
		case Q_LOST: {
			bool was = n->kind == Q_LOST;
			if (was && m->state != ST_CONNECTED)
				continue; /* stale */
			pthread_mutex_lock(&m->lock);
			if (was)
				m->st.disconnects++;
			else
				m->st.connect_failures++;
			pthread_mutex_unlock(&m->lock);
			for (int i = 0; i < m->n_subs; i++)
				m->subs[i].pending = false;
			abandon_pubs(m, false, "connection lost before a QoS 0 publish was sent");
			ev.type = FL_MQTT_EV_DISCONNECTED;
			ev.err = n->reason >= 0x80 ? err_of_reason(n->reason) : -FL_ENET;
			memcpy(ev.text, n->text, sizeof(ev.text));
			if (!was)
				own_cert_note(m, ev.text);
			ev.retry_ms = schedule_retry(m, was);
			*ret = ev;
			return 1;
		}
		case Q_PUB_DONE: {
			/* n is the req's embedded node, or a synthetic one (abandon). */
			struct req *q = n->req ? n->req : (struct req *)((char *)n - offsetof(struct req, node));
			bool synthetic = n->req != NULL;
			if (!synthetic && q->orphan)
				continue; /* not expected: Paho answered a set-aside client */
			if (!synthetic && q->abandoned) {
				req_free(m, q); /* already failed to the caller */
				continue;
			}
			ev.type = n->ok ? FL_MQTT_EV_PUBLISHED : FL_MQTT_EV_PUBLISH_FAILED;
			ev.token = q->token;
			ev.qos = q->qos;
			ev.len = q->len;
			memcpy(ev.text, n->text, sizeof(ev.text));
			if (synthetic) {
				ev.err = -ENOTCONN;
				free(n);
			} else {
				ev.err = n->ok ? 0 : n->reason >= 0 ? err_of_reason(n->reason) : -FL_ENET;
				pthread_mutex_lock(&m->lock);
				if (n->ok) {
					m->st.msgs_out++;
					m->st.bytes_out += q->len;
				} else
					m->st.publish_failed++;
				pthread_mutex_unlock(&m->lock);
				m->inflight--;
				req_free(m, q);
			}
			*ret = ev;
			return 1;
		}
		case Q_SUB_DONE: {
			struct req *q = (struct req *)((char *)n - offsetof(struct req, node));
			if (q->orphan)
				continue; /* as above */
			int idx = q->sub_idx;
			bool ok = n->ok;
			ev.type = ok ? FL_MQTT_EV_SUBSCRIBED : FL_MQTT_EV_SUBSCRIBE_FAILED;
			ev.qos = ok ? n->granted : q->qos;
			ev.err = ok ? 0 : n->reason >= 0 ? err_of_reason(n->reason) : -FL_ENET;
			memcpy(ev.text, n->text, sizeof(ev.text));
			req_free(m, q);
			if (idx >= 0 && idx < m->n_subs) {
				m->subs[idx].pending = false;
				m->subs[idx].confirmed = ok;
				ev.topic = strdup(m->subs[idx].topic);
			}
			*ret = ev;
			return 1;
		}
		}
	}
}

void fl_mqtt_event_clear(struct fl_mqtt_event *ev)
{
	if (!ev)
		return;
	free(ev->topic); /* the payload shares the topic's allocation */
	memset(ev, 0, sizeof(*ev));
}

void fl_mqtt_stats(struct fl_mqtt *m, struct fl_mqtt_stats *ret)
{
	pthread_mutex_lock(&m->lock);
	struct fl_mqtt_stats s = m->st;
	s.queue_msgs = m->q_msgs;
	s.queue_bytes = m->q_bytes;
	pthread_mutex_unlock(&m->lock);
	/* Owner fields: a racy read from another thread is only a snapshot. */
	s.inflight = m->inflight;
	s.requests = m->n_reqs;
	s.connected = m->state == ST_CONNECTED;
	*ret = s;
}

void fl_mqtt_free(struct fl_mqtt *m)
{
	if (!m)
		return;
	if (m->client) {
		if (MQTTAsync_isConnected(m->client)) {
			MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;
			d.timeout = FREE_DISCONNECT_MS;
			if (m->o.end_session_on_free) {
				MQTTProperty p = {
					.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
				p.value.integer4 = 0;
				/* Paho's allocation: freed before MQTTAsync_destroy(). */
				if (MQTTProperties_add(&m->disconnect_props, &p) == 0)
					d.properties = m->disconnect_props;
			}
			if (MQTTAsync_disconnect(m->client, &d) == MQTTASYNC_SUCCESS) {
				int64_t end = fl_mono_ms() + FREE_DISCONNECT_MS + 200;
				while (MQTTAsync_isConnected(m->client) && fl_mono_ms() < end) {
					struct timespec ts = {0, 5 * 1000 * 1000};
					nanosleep(&ts, NULL);
				}
			}
		}
		MQTTProperties_free(&m->connect_props);
		MQTTProperties_free(&m->disconnect_props);
		/* After this Paho makes no more callbacks into m. */
		MQTTAsync_destroy(&m->client);
	}
	/* Queued nodes: messages and synthetic publish failures are heap nodes;
	 * request nodes are freed with their requests below; the connection
	 * nodes are part of m. */
	for (struct qnode *n = m->head, *next; n; n = next) {
		next = n->next;
		if (n->kind == Q_MESSAGE) {
			free(n->buf);
			free(n);
		} else if (n->kind == Q_PUB_DONE && n->req)
			free(n);
	}
	while (m->reqs)
		req_free(m, m->reqs);
	for (struct req *q = m->orphans, *next; q; q = next) {
		next = q->next;
		free(q);
	}
	for (int i = 0; i < m->n_subs; i++)
		free(m->subs[i].topic);
	if (m->efd >= 0)
		close(m->efd);
	pthread_mutex_destroy(&m->lock);
	free(m->uri);
	free(m->client_id);
	free(m->ca_file);
	free(m->cert_file);
	free(m->key_file);
	free(m->will_topic);
	free(m->will_payload);
	free(m);
}

const char *fl_mqtt_reason_str(int reason)
{
	if (reason < 0 || reason > 0xFF)
		return "none";
	const char *s = MQTTReasonCode_toString((enum MQTTReasonCodes)reason);
	return s ? s : "unknown reason code";
}
