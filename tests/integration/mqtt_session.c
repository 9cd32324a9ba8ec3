/* Integration test of common/src/mqtt.c (fl_mqtt) against a real mosquitto
 * with mutual TLS and the Flotilla ACL. Run by mqtt_session.sh, which makes
 * the PKI with `flotilla pki`, starts the brokers and sets:
 *   FL_MQTT_PKI      PKI directory (ca.crt, controller.crt/.key, devices/)
 *   FL_MQTT_OTHER    a second CA's PKI directory (unknown CA)
 *   FL_MQTT_PORT     the broker's port (127.0.0.1)
 *   FL_MQTT_WPORT    a broker whose certificate names only broker.invalid
 *   FL_MQTT_PKGDIR   packaging/mosquitto (start/stop scripts: restart test)
 *
 *   mqtt_session [all|basic|session|persist|restart|flood|tls|backoff|idle]
 *   mqtt_session bench MIB MSG_KIB WINDOW       (prints MB/s)
 *   (FL_MQTT_PLAIN=1: tcp:// instead of ssl://, for a plain broker)
 *
 * Every wait is bounded; exit status 0 only when every check passed. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <flotilla/error.h>
#include <flotilla/mqtt.h>
#include <flotilla/util.h>

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

static int failures;
static int checks;

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		checks++;                                                                  \
		if (cond) {                                                                \
			printf("ok: ");                                                    \
		} else {                                                                   \
			failures++;                                                        \
			printf("FAIL (%s:%d): ", __FILE__, __LINE__);                      \
		}                                                                          \
		printf(__VA_ARGS__);                                                       \
		putchar('\n');                                                             \
		fflush(stdout);                                                            \
	} while (0)

static const char *pki, *other, *pkgdir;
static int port, wport;

/* ---- a tiny harness: clients, their events, a poll loop ---- */

#define MAX_EV 256
#define MAX_CL 6

struct tcl {
	const char *name;
	struct fl_mqtt *m;
	bool paused; /* events are left queued (flood test) */
	struct fl_mqtt_event ev[MAX_EV];
	int n, cur;
	uint64_t dropped_events; /* harness overflow: only counted */
	uint64_t msgs_seen, bytes_seen;
};

static struct tcl *cls[MAX_CL];
static int ncl;

static void cl_reset(struct tcl *c)
{
	for (int i = 0; i < c->n; i++)
		fl_mqtt_event_clear(&c->ev[i]);
	c->n = c->cur = 0;
}

static void drain(struct tcl *c)
{
	struct fl_mqtt_event e;
	while (fl_mqtt_next_event(c->m, &e) == 1) {
		if (e.type == FL_MQTT_EV_MESSAGE) {
			c->msgs_seen++;
			c->bytes_seen += e.len;
		}
		if (c->n < MAX_EV)
			c->ev[c->n++] = e;
		else {
			c->dropped_events++;
			fl_mqtt_event_clear(&e);
		}
	}
}

/* One round of the owner's loop for every registered client. */
static void pump(int max_wait_ms)
{
	struct pollfd pf[MAX_CL];
	int n = 0, wait = max_wait_ms;
	int64_t now = fl_mono_ms();
	for (int i = 0; i < ncl; i++) {
		int next;
		fl_mqtt_tick(cls[i]->m, now, &next);
		if (next >= 0 && next < wait)
			wait = next;
		if (!cls[i]->paused)
			pf[n++] = (struct pollfd){.fd = fl_mqtt_fd(cls[i]->m), .events = POLLIN};
	}
	poll(pf, (nfds_t)n, wait);
	for (int i = 0; i < ncl; i++)
		if (!cls[i]->paused)
			drain(cls[i]);
}

static void pump_for(int ms)
{
	int64_t end = fl_mono_ms() + ms;
	while (fl_mono_ms() < end)
		pump((int)(end - fl_mono_ms()));
}

static void add_cl(struct tcl *c)
{
	cls[ncl++] = c;
}

static void del_cl(struct tcl *c)
{
	for (int i = 0; i < ncl; i++)
		if (cls[i] == c) {
			cls[i] = cls[--ncl];
			break;
		}
	cl_reset(c);
	fl_mqtt_free(c->m);
	c->m = NULL;
}

static bool ev_match(const struct fl_mqtt_event *e, enum fl_mqtt_event_type t, const char *topic)
{
	return e->type == t && (!topic || (e->topic && !strcmp(e->topic, topic)));
}

/* Wait until C has an event of type T (and TOPIC, when given) after its
 * cursor; returns it (owned by C) or NULL after TIMEOUT_MS. */
static struct fl_mqtt_event *wait_ev(struct tcl *c, enum fl_mqtt_event_type t, const char *topic,
				     int timeout_ms)
{
	int64_t end = fl_mono_ms() + timeout_ms;
	for (;;) {
		for (int i = c->cur; i < c->n; i++)
			if (ev_match(&c->ev[i], t, topic)) {
				c->cur = i + 1;
				return &c->ev[i];
			}
		int64_t left = end - fl_mono_ms();
		if (left <= 0)
			return NULL;
		pump(left > 100 ? 100 : (int)left);
	}
}

static struct fl_mqtt_event *wait_token(struct tcl *c, uint64_t token, int timeout_ms)
{
	int64_t end = fl_mono_ms() + timeout_ms;
	for (;;) {
		for (int i = 0; i < c->n; i++)
			if ((c->ev[i].type == FL_MQTT_EV_PUBLISHED ||
			     c->ev[i].type == FL_MQTT_EV_PUBLISH_FAILED) &&
			    c->ev[i].token == token)
				return &c->ev[i];
		int64_t left = end - fl_mono_ms();
		if (left <= 0)
			return NULL;
		pump(left > 100 ? 100 : (int)left);
	}
}

static int count_msgs(struct tcl *c, const char *topic, const char *payload)
{
	int k = 0;
	for (int i = 0; i < c->n; i++)
		if (ev_match(&c->ev[i], FL_MQTT_EV_MESSAGE, topic) &&
		    (!payload || (c->ev[i].len == strlen(payload) &&
				  !memcmp(c->ev[i].payload, payload, c->ev[i].len))))
			k++;
	return k;
}

static char *path(const char *dir, const char *rel)
{
	char *p = fl_asprintf("%s/%s", dir, rel);
	if (!p)
		abort();
	return p;
}

/* Options for an identity: "controller" or a device id. */
static char *files[3];

static void opts_release(void)
{
	for (int i = 0; i < 3; i++) {
		free(files[i]);
		files[i] = NULL;
	}
}

static void opts_for(struct fl_mqtt_opts *o, const char *dir, const char *id, int p)
{
	static char uri[64];
	opts_release();
	fl_mqtt_opts_init(o);
	/* FL_MQTT_PLAIN=1: plain tcp:// (benchmarks against a plain broker). */
	snprintf(uri, sizeof(uri), "%s://127.0.0.1:%d", getenv("FL_MQTT_PLAIN") ? "tcp" : "ssl", p);
	o->uri = uri;
	o->client_id = strcmp(id, "controller") ? id : "flotilla-controller";
	files[0] = path(dir, "ca.crt");
	if (!strcmp(id, "controller")) {
		files[1] = path(dir, "controller.crt");
		files[2] = path(dir, "controller.key");
	} else {
		char rel[128];
		snprintf(rel, sizeof(rel), "devices/%s.crt", id);
		files[1] = path(dir, rel);
		snprintf(rel, sizeof(rel), "devices/%s.key", id);
		files[2] = path(dir, rel);
	}
	o->ca_file = files[0];
	o->cert_file = files[1];
	o->key_file = files[2];
}

static bool start_cl(struct tcl *c, const char *name, const struct fl_mqtt_opts *o)
{
	memset(c, 0, sizeof(*c));
	c->name = name;
	int r = fl_mqtt_new(o, &c->m);
	CHECK(r == 0, "%s: fl_mqtt_new: %s", name, fl_strerror(r));
	if (r < 0)
		return false;
	add_cl(c);
	r = fl_mqtt_start(c->m);
	CHECK(r == 0, "%s: fl_mqtt_start: %s", name, fl_strerror(r));
	return r == 0;
}

static bool connect_cl(struct tcl *c, const char *name, const struct fl_mqtt_opts *o)
{
	if (!start_cl(c, name, o))
		return false;
	int64_t t0 = fl_mono_ms();
	struct fl_mqtt_event *e = wait_ev(c, FL_MQTT_EV_CONNECTED, NULL, 10000);
	CHECK(e != NULL, "%s: CONNECTED in %" PRId64 " ms", name, fl_mono_ms() - t0);
	if (!e) {
		for (int i = 0; i < c->n; i++)
			printf("  event %d: %s\n", c->ev[i].type, c->ev[i].text);
	}
	return e != NULL;
}

static bool subscribe(struct tcl *c, const char *topic)
{
	int r = fl_mqtt_subscribe(c->m, topic, 1);
	if (r < 0) {
		CHECK(0, "%s: subscribe %s: %s", c->name, topic, fl_strerror(r));
		return false;
	}
	struct fl_mqtt_event *e = wait_ev(c, FL_MQTT_EV_SUBSCRIBED, topic, 5000);
	CHECK(e && e->qos == 1, "%s: SUBSCRIBED %s (granted QoS %d)", c->name, topic, e ? e->qos : -1);
	return e != NULL;
}

static int publish(struct tcl *c, const char *topic, const char *s, uint64_t *tok)
{
	return fl_mqtt_publish(c->m, topic, s, strlen(s), 1, false, tok);
}

#define CMD_A "flotilla/v1/dev/devA/cmd"
#define STATE_A "flotilla/v1/dev/devA/state"
#define EVENT_A "flotilla/v1/dev/devA/event"
#define STATE_B "flotilla/v1/dev/devB/state"
#define DAT_A "flotilla/v1/dev/devA/chunk/dat"

/* ---- scenarios ---- */

static void test_bad_input(void)
{
	struct fl_mqtt_opts o;
	struct fl_mqtt *m = (struct fl_mqtt *)0x1;
	opts_for(&o, pki, "devA", port);
	o.uri = "http://127.0.0.1:1";
	CHECK(fl_mqtt_new(&o, &m) == -EINVAL && m == (struct fl_mqtt *)0x1, "bad URI scheme refused, ret untouched");
	opts_for(&o, pki, "devA", port);
	o.uri = "ssl://127.0.0.1";
	CHECK(fl_mqtt_new(&o, &m) == -EINVAL, "URI without port refused");
	opts_for(&o, pki, "devA", port);
	o.client_id = "dev A";
	CHECK(fl_mqtt_new(&o, &m) == -EINVAL, "bad client id refused");
	opts_for(&o, pki, "devA", port);
	o.cert_file = "/nonexistent/devA.crt";
	CHECK(fl_mqtt_new(&o, &m) == -ENOENT, "missing certificate file: -ENOENT");
	opts_for(&o, pki, "devA", port);
	o.max_inflight = 0;
	CHECK(fl_mqtt_new(&o, &m) == -EINVAL, "max_inflight 0 refused");
	opts_for(&o, pki, "devA", port);
	o.max_queue_bytes = o.max_msg_bytes - 1;
	CHECK(fl_mqtt_new(&o, &m) == -EINVAL, "queue smaller than one message refused");
	opts_for(&o, pki, "devA", port);
	o.will_topic = "flotilla/v1/dev/+/state";
	CHECK(fl_mqtt_new(&o, &m) == -EINVAL, "wildcard will topic refused");

	opts_for(&o, pki, "devA", port);
	CHECK(fl_mqtt_new(&o, &m) == 0, "valid options accepted");
	uint64_t tok = 77;
	CHECK(fl_mqtt_publish(m, STATE_A, "x", 1, 1, false, &tok) == -ENOTCONN && tok == 77,
	      "publish before connect: -ENOTCONN, token untouched");
	CHECK(fl_mqtt_publish(m, "flotilla/v1/dev/#", "x", 1, 1, false, &tok) == -EINVAL, "publish to a wildcard: -EINVAL");
	CHECK(fl_mqtt_publish(m, STATE_A, "x", 1, 2, false, &tok) == -EINVAL, "QoS 2: -EINVAL");
	CHECK(fl_mqtt_subscribe(m, "", 1) == -EINVAL, "empty filter: -EINVAL");
	CHECK(fl_mqtt_subscribe(m, CMD_A, 3) == -EINVAL, "subscribe QoS 3: -EINVAL");
	CHECK(fl_mqtt_subscribe(m, "a/#/b", 1) == -EINVAL && fl_mqtt_subscribe(m, "a/b#", 1) == -EINVAL &&
		      fl_mqtt_subscribe(m, "a/+b", 1) == -EINVAL,
	      "malformed filters: -EINVAL");
	CHECK(fl_mqtt_subscribe(m, "$share/g/flotilla/v1/dev/+/state", 1) == 0 && fl_mqtt_subscribe(m, "#", 0) == 0,
	      "valid filters remembered before connect");
	int next = 5;
	CHECK(fl_mqtt_tick(m, fl_mono_ms(), &next) == 0 && next == -1, "idle client: no timer");
	struct fl_mqtt_event e;
	CHECK(fl_mqtt_next_event(m, &e) == 0, "no events before start");
	CHECK(fl_mqtt_start(m) == 0 && fl_mqtt_start(m) == -FL_ESTATE, "second start: -FL_ESTATE");
	fl_mqtt_free(m);
	fl_mqtt_free(NULL);
}

static void test_basic(void)
{
	struct fl_mqtt_opts o;
	struct tcl dev, ctl;
	opts_for(&o, pki, "devA", port);
	o.clean_start = true; /* start from a known empty session */
	o.max_inflight = 8;
	if (!connect_cl(&dev, "devA", &o))
		return;
	opts_for(&o, pki, "controller", port);
	o.clean_start = true;
	if (!connect_cl(&ctl, "controller", &o))
		return;
	subscribe(&dev, CMD_A);
	subscribe(&ctl, "$share/controllers/flotilla/v1/dev/+/state");

	/* controller -> device cmd */
	uint64_t tok = 0;
	int r = publish(&ctl, CMD_A, "{\"v\":1,\"kind\":\"ping\"}", &tok);
	CHECK(r == 0 && tok > 0, "controller publishes to devA/cmd (token %" PRIu64 ")", tok);
	struct fl_mqtt_event *e = wait_token(&ctl, tok, 5000);
	CHECK(e && e->type == FL_MQTT_EV_PUBLISHED, "controller: PUBLISHED for its token");
	e = wait_ev(&dev, FL_MQTT_EV_MESSAGE, CMD_A, 5000);
	CHECK(e && e->len == strlen("{\"v\":1,\"kind\":\"ping\"}") &&
		      !memcmp(e->payload, "{\"v\":1,\"kind\":\"ping\"}", e->len) && e->qos == 1 && !e->retained,
	      "devA receives exactly the command (QoS 1, not retained)");
	pump_for(300);
	CHECK(count_msgs(&dev, NULL, NULL) == 1, "devA received exactly one message (%d)", count_msgs(&dev, NULL, NULL));

	/* device -> its own state */
	tok = 0;
	r = publish(&dev, STATE_A, "A-state-ok", &tok);
	e = r == 0 ? wait_token(&dev, tok, 5000) : NULL;
	CHECK(e && e->type == FL_MQTT_EV_PUBLISHED && e->err == 0, "devA own state: PUBLISHED (token %" PRIu64 ")", tok);
	e = wait_ev(&ctl, FL_MQTT_EV_MESSAGE, STATE_A, 5000);
	CHECK(e && e->len == 10 && !memcmp(e->payload, "A-state-ok", 10), "controller receives devA's state via $share");

	/* device -> another device's state: refused by the ACL */
	tok = 0;
	r = publish(&dev, STATE_B, "spoof", &tok);
	e = r == 0 ? wait_token(&dev, tok, 5000) : NULL;
	CHECK(e && e->type == FL_MQTT_EV_PUBLISH_FAILED && e->reason == 0x87 && e->err == -EACCES,
	      "devA -> devB/state: PUBLISH_FAILED reason 0x%x (%s) err %s", e ? e->reason : -1,
	      e ? e->text : "", e ? fl_strerror(e->err) : "-");
	pump_for(500);
	CHECK(count_msgs(&ctl, STATE_B, NULL) == 0, "controller never received the spoofed state");

	/* publish window */
	uint64_t toks[9] = {0};
	int ok = 0;
	for (int i = 0; i < 8; i++)
		ok += publish(&dev, EVENT_A, "window", &toks[i]) == 0;
	r = publish(&dev, EVENT_A, "window-9", &toks[8]);
	CHECK(ok == 8 && r == -FL_EBUSY && toks[8] == 0, "window 8: 8 publishes accepted, the 9th is -FL_EBUSY");
	struct fl_mqtt_stats st;
	fl_mqtt_stats(dev.m, &st);
	CHECK(st.inflight == 8, "stats: 8 in flight");
	int acked = 0;
	for (int i = 0; i < 8; i++) {
		e = wait_token(&dev, toks[i], 5000);
		acked += e && e->type == FL_MQTT_EV_PUBLISHED;
	}
	CHECK(acked == 8, "all 8 acknowledged (%d)", acked);
	CHECK(publish(&dev, EVENT_A, "window-9", &toks[8]) == 0, "after the acks the next publish is accepted");
	e = wait_token(&dev, toks[8], 5000);
	fl_mqtt_stats(dev.m, &st);
	CHECK(st.inflight == 0 && st.msgs_out >= 10 && st.publish_failed == 1 && st.connects == 1,
	      "stats: inflight %d, out %" PRIu64 ", failed %" PRIu64 ", connects %" PRIu64, st.inflight,
	      st.msgs_out, st.publish_failed, st.connects);

	/* Clean shutdown: the session (expiry 1 day) stays on the broker. */
	del_cl(&dev);
	del_cl(&ctl);
}

/* Offline delivery: devA (clean start off, session expiry) disconnects; a
 * QoS 1 command published meanwhile arrives when it comes back. */
static void test_session(void)
{
	struct fl_mqtt_opts o;
	struct tcl dev, ctl;
	opts_for(&o, pki, "devA", port);
	o.clean_start = false;
	if (!connect_cl(&dev, "devA", &o))
		return;
	subscribe(&dev, CMD_A);
	del_cl(&dev); /* clean disconnect, session kept */

	opts_for(&o, pki, "controller", port);
	if (!connect_cl(&ctl, "controller", &o))
		return;
	uint64_t tok = 0;
	int r = publish(&ctl, CMD_A, "while-offline", &tok);
	struct fl_mqtt_event *e = r == 0 ? wait_token(&ctl, tok, 5000) : NULL;
	CHECK(e && e->type == FL_MQTT_EV_PUBLISHED, "controller: command for the offline device acknowledged");

	opts_for(&o, pki, "devA", port);
	o.clean_start = false;
	if (!start_cl(&dev, "devA", &o))
		return;
	e = wait_ev(&dev, FL_MQTT_EV_CONNECTED, NULL, 10000);
	CHECK(e && e->session_present, "devA reconnects with session_present=1");
	e = wait_ev(&dev, FL_MQTT_EV_MESSAGE, CMD_A, 5000);
	CHECK(e && e->len == 13 && !memcmp(e->payload, "while-offline", 13),
	      "the command sent while devA was offline is delivered after reconnect");
	del_cl(&dev);
	del_cl(&ctl);
}

static int run(const char *cmd)
{
	int r = system(cmd);
	return r;
}

/* A fresh, empty session for ID: connect with clean start, disconnect. */
static bool fresh_session(const char *id)
{
	struct fl_mqtt_opts o;
	struct tcl c;
	opts_for(&o, pki, id, port);
	o.clean_start = true;
	if (!connect_cl(&c, id, &o))
		return false;
	del_cl(&c);
	return true;
}

#define SHARE_EVENT "$share/controllers/flotilla/v1/dev/+/event"
#define STATES "flotilla/v1/dev/+/state"

/* Broker with persistence (as in production) stopped and started again
 * while QoS 1 publishes are in flight: both clients resume their sessions
 * (session_present 1). mosquitto 2.0.11 restores such a session without
 * its $share subscriptions, so unless the wrapper subscribes again on a
 * resumed session too, devA's events then match no subscriber and the
 * controller never gets another one (the stall of transport_restart.sh B).
 * Afterwards: every in-flight publish ends exactly once, the window is
 * free, new publishes flow both ways through plain and $share
 * subscriptions, and the renewal does not deliver a retained message twice
 * (Retain Handling 1). */
static void test_restart_persist(void)
{
	struct fl_mqtt_opts o;
	struct tcl dev, ctl;
	if (!fresh_session("devA") || !fresh_session("controller"))
		return;
	opts_for(&o, pki, "devA", port);
	if (!connect_cl(&dev, "devA", &o))
		return;
	subscribe(&dev, CMD_A);
	uint64_t tok = 0;
	struct fl_mqtt_event *e;
	int r = fl_mqtt_publish(dev.m, STATE_A, "retained-1", 10, 1, true, &tok);
	e = r == 0 ? wait_token(&dev, tok, 5000) : NULL;
	CHECK(e && e->type == FL_MQTT_EV_PUBLISHED, "devA: retained state published");
	opts_for(&o, pki, "controller", port);
	if (!connect_cl(&ctl, "controller", &o))
		return;
	subscribe(&ctl, STATES);
	subscribe(&ctl, SHARE_EVENT);
	int64_t until = fl_mono_ms() + 5000;
	while (count_msgs(&ctl, STATE_A, "retained-1") < 1 && fl_mono_ms() < until)
		pump(100);
	CHECK(count_msgs(&ctl, STATE_A, "retained-1") == 1, "controller: devA's retained state on subscribing");

	uint64_t toks[8] = {0};
	int np = 0;
	for (int i = 0; i < 8; i++)
		np += fl_mqtt_publish(dev.m, EVENT_A, "in-flight", 9, 1, false, &toks[i]) == 0;
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "'%s/stop-broker.sh' '%s'", pkgdir, pki);
	CHECK(np == 8 && run(cmd) == 0, "8 QoS 1 publishes in flight; broker (persistence on) stopped");
	e = wait_ev(&dev, FL_MQTT_EV_DISCONNECTED, NULL, 5000);
	CHECK(e != NULL, "devA: DISCONNECTED");
	snprintf(cmd, sizeof(cmd), "FL_BROKER_PERSIST=1 FL_BROKER_WAIT_S=10 '%s/start-broker.sh' '%s' %d >/dev/null",
		 pkgdir, pki, port);
	CHECK(run(cmd) == 0, "broker started again with its persistence database");
	e = wait_ev(&dev, FL_MQTT_EV_CONNECTED, NULL, 9000);
	CHECK(e && e->session_present, "devA: CONNECTED, session resumed (session_present %d)",
	      e ? e->session_present : -1);
	e = wait_ev(&ctl, FL_MQTT_EV_CONNECTED, NULL, 9000);
	CHECK(e && e->session_present, "controller: CONNECTED, session resumed (session_present %d)",
	      e ? e->session_present : -1);
	e = wait_ev(&ctl, FL_MQTT_EV_SUBSCRIBED, SHARE_EVENT, 5000);
	CHECK(e != NULL, "controller: $share subscription renewed on the resumed session");
	e = wait_ev(&dev, FL_MQTT_EV_SUBSCRIBED, CMD_A, 5000);
	CHECK(e != NULL, "devA: cmd subscription renewed on the resumed session");

	/* Every in-flight publish completes exactly once; the window frees. */
	int once = 0;
	for (int i = 0; i < 8; i++) {
		int k = 0;
		if (wait_token(&dev, toks[i], 10000))
			for (int j = 0; j < dev.n; j++)
				k += (dev.ev[j].type == FL_MQTT_EV_PUBLISHED ||
				      dev.ev[j].type == FL_MQTT_EV_PUBLISH_FAILED) &&
				     dev.ev[j].token == toks[i];
		once += k == 1;
	}
	struct fl_mqtt_stats st;
	fl_mqtt_stats(dev.m, &st);
	CHECK(once == 8 && st.inflight == 0, "each in-flight publish ended exactly once; window free (inflight %d)",
	      st.inflight);

	/* A full window of new events reaches the controller through $share. */
	int before = count_msgs(&ctl, EVENT_A, "after-restart");
	np = 0;
	for (int i = 0; i < 8; i++)
		np += fl_mqtt_publish(dev.m, EVENT_A, "after-restart", 13, 1, false, &toks[i]) == 0;
	int acked = 0;
	for (int i = 0; i < 8 && i < np; i++) {
		e = wait_token(&dev, toks[i], 5000);
		acked += e && e->type == FL_MQTT_EV_PUBLISHED;
	}
	int64_t end = fl_mono_ms() + 5000;
	while (count_msgs(&ctl, EVENT_A, "after-restart") - before < 8 && fl_mono_ms() < end)
		pump(100);
	int got = count_msgs(&ctl, EVENT_A, "after-restart") - before;
	CHECK(np == 8 && acked == 8 && got == 8,
	      "after the restart: 8 of 8 new events accepted, %d acknowledged, %d received via $share", acked, got);
	r = publish(&ctl, CMD_A, "after-persist", &tok);
	e = wait_ev(&dev, FL_MQTT_EV_MESSAGE, CMD_A, 5000);
	CHECK(r == 0 && e && e->len == 13 && !memcmp(e->payload, "after-persist", 13),
	      "devA receives commands after the restart");
	pump_for(300);
	CHECK(count_msgs(&ctl, STATE_A, "retained-1") == 1 && count_msgs(&dev, CMD_A, "after-persist") == 1,
	      "nothing delivered twice (retained state %d, command %d)", count_msgs(&ctl, STATE_A, "retained-1"),
	      count_msgs(&dev, CMD_A, "after-persist"));
	/* Clear the retained state: later scenarios start from nothing. */
	r = fl_mqtt_publish(dev.m, STATE_A, "", 0, 1, true, &tok);
	if (r == 0)
		wait_token(&dev, tok, 5000);
	del_cl(&dev);
	del_cl(&ctl);
}

/* Broker stopped and restarted under connected clients. The test broker has
 * no persistence, so sessions are lost: the wrapper must subscribe again. */
static void test_restart(void)
{
	struct fl_mqtt_opts o;
	struct tcl dev, ctl;
	opts_for(&o, pki, "devA", port);
	if (!connect_cl(&dev, "devA", &o))
		return;
	subscribe(&dev, CMD_A);
	opts_for(&o, pki, "controller", port);
	if (!connect_cl(&ctl, "controller", &o))
		return;

	/* Publishes in flight when the broker goes away: each must end in
	 * exactly one PUBLISHED or PUBLISH_FAILED, and free its window slot. */
	uint64_t toks[8] = {0};
	int np = 0;
	for (int i = 0; i < 8; i++)
		np += fl_mqtt_publish(dev.m, EVENT_A, "in-flight", 9, i % 2, false, &toks[i]) == 0;
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "'%s/stop-broker.sh' '%s'", pkgdir, pki);
	CHECK(np == 8 && run(cmd) == 0, "8 publishes (QoS 0 and 1) in flight; broker stopped");
	int64_t t0 = fl_mono_ms();
	struct fl_mqtt_event *e = wait_ev(&dev, FL_MQTT_EV_DISCONNECTED, NULL, 5000);
	CHECK(e != NULL, "devA: DISCONNECTED after %" PRId64 " ms (%s), next try in %" PRId64 " ms",
	      fl_mono_ms() - t0, e ? e->text : "-", e ? e->retry_ms : -1);
	CHECK(e && e->retry_ms >= 800 && e->retry_ms <= 1200, "first retry after 1 s +-20%%");
	snprintf(cmd, sizeof(cmd), "FL_BROKER_PERSIST=0 FL_BROKER_WAIT_S=10 '%s/start-broker.sh' '%s' %d >/dev/null", pkgdir, pki, port);
	CHECK(run(cmd) == 0, "broker restarted on the same port");
	t0 = fl_mono_ms();
	/* Bound: the retries due within 1.2 + 2.4 + 4.8 s of the drop. */
	e = wait_ev(&dev, FL_MQTT_EV_CONNECTED, NULL, 9000);
	CHECK(e != NULL, "devA: CONNECTED again %" PRId64 " ms after the restart (session_present %d)",
	      fl_mono_ms() - t0, e ? e->session_present : -1);
	e = wait_ev(&dev, FL_MQTT_EV_SUBSCRIBED, CMD_A, 5000);
	CHECK(e != NULL, "devA re-subscribed to its cmd by itself (the session was lost)");
	e = wait_ev(&ctl, FL_MQTT_EV_CONNECTED, NULL, 9000);
	CHECK(e != NULL, "controller reconnected too");
	uint64_t tok = 0;
	int r = publish(&ctl, CMD_A, "after-restart", &tok);
	e = wait_ev(&dev, FL_MQTT_EV_MESSAGE, CMD_A, 5000);
	CHECK(r == 0 && e && e->len == 13 && !memcmp(e->payload, "after-restart", 13),
	      "devA receives commands after the restart");
	struct fl_mqtt_stats st;
	fl_mqtt_stats(dev.m, &st);
	CHECK(st.connects == 2 && st.disconnects == 1, "stats: connects %" PRIu64 ", disconnects %" PRIu64 ", failed attempts %" PRIu64,
	      st.connects, st.disconnects, st.connect_failures);
	int once = 0, okc = 0;
	for (int i = 0; i < 8; i++) {
		int k = 0;
		for (int j = 0; j < dev.n; j++)
			if ((dev.ev[j].type == FL_MQTT_EV_PUBLISHED || dev.ev[j].type == FL_MQTT_EV_PUBLISH_FAILED) &&
			    dev.ev[j].token == toks[i]) {
				k++;
				okc += dev.ev[j].type == FL_MQTT_EV_PUBLISHED;
			}
		once += k == 1;
	}
	CHECK(once == 8 && st.inflight == 0, "each in-flight publish ended exactly once (%d acked, %d failed); window free",
	      okc, 8 - okc);
	printf("  requests still unanswered by Paho: %d\n", st.requests);
	del_cl(&dev);
	del_cl(&ctl);
}

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, res = 0;
	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &res) != 2)
		res = -1;
	fclose(f);
	return res * (sysconf(_SC_PAGESIZE) / 1024);
}

#define MSG_KIB 100

/* Oversized messages, then a flood the device does not drain. */
static void test_flood(void)
{
	struct fl_mqtt_opts o;
	struct tcl dev, ctl;
	const size_t max_msg = 256 << 10, max_q = 4u << 20;
	int n_flood = getenv("FL_MQTT_FLOOD_N") ? atoi(getenv("FL_MQTT_FLOOD_N")) : 5000;

	opts_for(&o, pki, "devA", port);
	o.clean_start = true;
	o.max_msg_bytes = max_msg;
	o.max_queue_bytes = max_q;
	o.max_queue_msgs = 1000;
	if (!connect_cl(&dev, "devA", &o))
		return;
	subscribe(&dev, DAT_A);
	opts_for(&o, pki, "controller", port);
	o.clean_start = true;
	if (!connect_cl(&ctl, "controller", &o))
		return;

	uint8_t *buf = calloc(1, 1u << 20);
	if (!buf)
		abort();
	/* Just over our limit, and far over it: the wrapper drops (and
	 * acknowledges) both; the broker is told no packet size limit
	 * (docs/mqtt.md "Message size"). */
	uint64_t t1 = 0, t2 = 0, t3 = 0;
	fl_mqtt_publish(ctl.m, DAT_A, buf, max_msg + 1, 1, false, &t1);
	fl_mqtt_publish(ctl.m, DAT_A, buf, 1u << 20, 1, false, &t2);
	fl_mqtt_publish(ctl.m, DAT_A, "marker", 6, 1, false, &t3);
	struct fl_mqtt_event *e = wait_ev(&dev, FL_MQTT_EV_MESSAGE, DAT_A, 5000);
	CHECK(e && e->len == 6 && !memcmp(e->payload, "marker", 6), "only the small marker message is delivered");
	pump_for(300);
	struct fl_mqtt_stats st;
	fl_mqtt_stats(dev.m, &st);
	CHECK(count_msgs(&dev, DAT_A, NULL) == 1 && st.drops_oversize == 2,
	      "oversized: %d delivered, %" PRIu64 " dropped by the wrapper (%" PRIu64 " in)",
	      count_msgs(&dev, DAT_A, NULL), st.drops_oversize, st.msgs_in);
	cl_reset(&dev);
	cl_reset(&ctl);

	/* Flood: the device's owner stops draining. */
	pump_for(200);
	long rss0 = rss_kib();
	dev.paused = true;
	uint64_t in0 = st.msgs_in;
	int sent = 0, acked = 0, busy = 0;
	int64_t t0 = fl_mono_ms(), end = t0 + 60000;
	while ((sent < n_flood || acked < n_flood) && fl_mono_ms() < end) {
		while (sent < n_flood) {
			int r = fl_mqtt_publish(ctl.m, DAT_A, buf, MSG_KIB << 10, 1, false, NULL);
			if (r == -FL_EBUSY) {
				busy++;
				break;
			}
			if (r < 0) {
				CHECK(0, "flood publish: %s", fl_strerror(r));
				end = 0;
				break;
			}
			sent++;
		}
		pump(50);
		for (int i = 0; i < ctl.n; i++)
			acked += ctl.ev[i].type == FL_MQTT_EV_PUBLISHED;
		cl_reset(&ctl);
	}
	double secs = (double)(fl_mono_ms() - t0) / 1000.0;
	/* Wait until the device's side has seen every message arrive. */
	int64_t wend = fl_mono_ms() + 15000;
	do {
		fl_mqtt_stats(dev.m, &st);
		if (st.msgs_in - in0 >= (uint64_t)n_flood)
			break;
		pump(50);
	} while (fl_mono_ms() < wend);
	long rss1 = rss_kib();
	printf("flood: %d x %d KiB sent in %.1f s (%.0f MB/s), %d busy; device: in %" PRIu64
	       ", queued %zu msgs / %zu bytes (peak %zu), dropped %" PRIu64 "; RSS %ld -> %ld KiB\n",
	       sent, MSG_KIB, secs, (double)sent * MSG_KIB * 1024 / 1e6 / secs, busy, st.msgs_in - in0,
	       st.queue_msgs, st.queue_bytes, st.queue_peak_bytes, st.drops_queue_full, rss0, rss1);
	CHECK(acked == n_flood, "controller: all %d flood messages acknowledged (%d)", n_flood, acked);
	CHECK(st.msgs_in - in0 == (uint64_t)n_flood, "device: all %d arrived at the wrapper", n_flood);
	CHECK(st.queue_bytes <= max_q && st.queue_peak_bytes <= max_q, "queue within max_queue_bytes (%zu, peak %zu <= %zu)",
	      st.queue_bytes, st.queue_peak_bytes, max_q);
	size_t per = (MSG_KIB << 10) + strlen(DAT_A);
	CHECK(st.queue_msgs == max_q / per && st.drops_queue_full == (uint64_t)n_flood - st.queue_msgs,
	      "queued %zu (= %zu fit), dropped the other %" PRIu64, st.queue_msgs, max_q / per, st.drops_queue_full);
	long grow = rss1 - rss0, bound = (long)(max_q >> 10) + 32 * 1024;
	if (UNDER_ASAN)
		printf("note: RSS bound not checked under AddressSanitizer (quarantine); grew %ld KiB\n", grow);
	else
		CHECK(grow < bound, "RSS grew %ld KiB < bound %ld KiB (queue + 32 MiB slack; the flood was %d MiB)",
		      grow, bound, n_flood * MSG_KIB / 1024);

	/* The owner drains again: exactly the queued messages, intact. */
	dev.paused = false;
	uint64_t seen0 = dev.msgs_seen;
	size_t queued = st.queue_msgs;
	pump_for(300);
	int whole = 0;
	for (int i = 0; i < dev.n; i++)
		whole += dev.ev[i].type == FL_MQTT_EV_MESSAGE && dev.ev[i].len == (MSG_KIB << 10);
	fl_mqtt_stats(dev.m, &st);
	CHECK(dev.msgs_seen - seen0 == queued && whole == (int)queued && st.queue_bytes == 0,
	      "drained %" PRIu64 " messages of %d KiB after the flood; queue empty", dev.msgs_seen - seen0, MSG_KIB);
	free(buf);
	del_cl(&dev);
	del_cl(&ctl);
}

static void expect_refused(const char *what, struct fl_mqtt_opts *o)
{
	struct tcl c;
	if (!start_cl(&c, what, o))
		return;
	struct fl_mqtt_event *e = wait_ev(&c, FL_MQTT_EV_DISCONNECTED, NULL, 10000);
	CHECK(e && e->err < 0 && e->text[0], "%s: refused, DISCONNECTED (%s): '%s'", what,
	      e ? fl_strerror(e->err) : "-", e ? e->text : "");
	bool connected = false;
	for (int i = 0; i < c.n; i++)
		connected |= c.ev[i].type == FL_MQTT_EV_CONNECTED;
	struct fl_mqtt_stats st;
	fl_mqtt_stats(c.m, &st);
	CHECK(!connected && st.connect_failures >= 1 && !st.connected, "%s: never connected", what);
	del_cl(&c);
}

static void test_tls(void)
{
	struct fl_mqtt_opts o;
	char *oca = path(other, "ca.crt");
	/* We do not trust the broker's CA. */
	opts_for(&o, pki, "devA", port);
	o.ca_file = oca;
	expect_refused("unknown server CA", &o);
	/* The broker does not trust our CA. */
	opts_for(&o, other, "devA", port);
	char *ca = path(pki, "ca.crt");
	o.ca_file = ca;
	expect_refused("client certificate from an unknown CA", &o);
	/* The broker's certificate names broker.invalid, not 127.0.0.1. */
	opts_for(&o, pki, "devA", wport);
	expect_refused("wrong server host name", &o);
	/* Same broker with the host check off connects: the host name is what
	 * failed above (verify_host must stay on in production). */
	struct tcl c;
	opts_for(&o, pki, "devA", wport);
	o.verify_host = false;
	if (connect_cl(&c, "host check off", &o))
		del_cl(&c);
	/* Nothing listening. */
	opts_for(&o, pki, "devA", 1);
	expect_refused("connection refused (port 1)", &o);
	free(oca);
	free(ca);
}

/* Reconnect backoff against a closed port: 1 s, 2 s, 4 s (+-20 %). */
static void test_backoff(void)
{
	struct fl_mqtt_opts o;
	struct tcl c;
	opts_for(&o, pki, "devA", 1);
	if (!start_cl(&c, "backoff", &o))
		return;
	int64_t want[3] = {1000, 2000, 4000}, last = 0;
	int good = 0;
	for (int i = 0; i < 3; i++) {
		struct fl_mqtt_event *e = wait_ev(&c, FL_MQTT_EV_DISCONNECTED, NULL, 10000);
		int64_t now = fl_mono_ms();
		bool ok = e && e->retry_ms >= want[i] * 8 / 10 && e->retry_ms <= want[i] * 12 / 10;
		/* The attempt itself came when the previous delay said. */
		if (ok && i > 0)
			ok = now - last >= want[i - 1] * 8 / 10;
		printf("  attempt %d failed; next in %" PRId64 " ms\n", i + 1, e ? e->retry_ms : -1);
		good += ok;
		last = now;
	}
	CHECK(good == 3, "backoff doubles from 1 s with +-20%% jitter (%d/3 delays in range)", good);
	struct fl_mqtt_stats st;
	fl_mqtt_stats(c.m, &st);
	CHECK(st.connect_failures == 3 && st.connects == 0, "stats: %" PRIu64 " failed attempts", st.connect_failures);
	del_cl(&c);
}

static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_idle(void)
{
	struct fl_mqtt_opts o;
	struct tcl dev;
	opts_for(&o, pki, "devA", port);
	if (!connect_cl(&dev, "devA", &o))
		return;
	subscribe(&dev, CMD_A);
	pump_for(200);
	double c0 = cpu_s();
	int64_t t0 = fl_mono_ms();
	pump_for(3000);
	double used = cpu_s() - c0, wall = (double)(fl_mono_ms() - t0) / 1000.0;
	CHECK(used / wall < 0.02, "idle connected client: %.2f%% CPU (%.4f s in %.1f s)", 100 * used / wall, used, wall);
	del_cl(&dev);
}

/* 64 MiB in 256 KiB QoS 1 messages, window W: controller -> devA chunk/dat. */
static int bench(int mib, int kib, int window)
{
	struct fl_mqtt_opts o;
	struct tcl dev, ctl;
	opts_for(&o, pki, "devA", port);
	o.clean_start = true;
	o.max_msg_bytes = (size_t)kib << 10;
	o.max_queue_bytes = o.max_msg_bytes * 64;
	if (!connect_cl(&dev, "devA", &o))
		return 1;
	subscribe(&dev, DAT_A);
	opts_for(&o, pki, "controller", port);
	o.clean_start = true;
	o.max_inflight = window;
	if (!connect_cl(&ctl, "controller", &o))
		return 1;
	int n = mib * 1024 / kib;
	uint8_t *buf = calloc(1, (size_t)kib << 10);
	int sent = 0;
	uint64_t seen0 = dev.msgs_seen;
	double c0 = cpu_s();
	int64_t t0 = fl_mono_ms(), end = t0 + 120000;
	while (dev.msgs_seen - seen0 < (uint64_t)n && fl_mono_ms() < end) {
		while (sent < n && fl_mqtt_publish(ctl.m, DAT_A, buf, (size_t)kib << 10, 1, false, NULL) == 0)
			sent++;
		pump(50);
		cl_reset(&ctl);
		cl_reset(&dev);
	}
	double secs = (double)(fl_mono_ms() - t0) / 1000.0;
	struct fl_mqtt_stats st;
	fl_mqtt_stats(dev.m, &st);
	printf("bench: %d MiB in %d KiB QoS 1 messages, window %d: received %" PRIu64 "/%d in %.2f s = %.1f MB/s "
	       "(CPU %.2f s; drops %" PRIu64 ")\n",
	       mib, kib, window, dev.msgs_seen - seen0, n, secs,
	       (double)(dev.msgs_seen - seen0) * kib * 1024 / 1e6 / secs, cpu_s() - c0, st.drops_queue_full);
	free(buf);
	int r = dev.msgs_seen - seen0 == (uint64_t)n ? 0 : 1;
	del_cl(&dev);
	del_cl(&ctl);
	return r;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	pki = getenv("FL_MQTT_PKI");
	other = getenv("FL_MQTT_OTHER");
	pkgdir = getenv("FL_MQTT_PKGDIR");
	const char *p = getenv("FL_MQTT_PORT"), *wp = getenv("FL_MQTT_WPORT");
	if (!pki || !other || !pkgdir || !p || !wp) {
		fprintf(stderr, "mqtt_session: run by mqtt_session.sh (FL_MQTT_* not set)\n");
		return 2;
	}
	port = atoi(p);
	wport = atoi(wp);
	const char *what = argc > 1 ? argv[1] : "all";
	if (!strcmp(what, "bench")) {
		if (argc != 5)
			return 2;
		int r = bench(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
		opts_release();
		return r;
	}
	bool all = !strcmp(what, "all");
	if (all || !strcmp(what, "basic")) {
		test_bad_input();
		test_basic();
	}
	if (all || !strcmp(what, "session"))
		test_session();
	if (all || !strcmp(what, "tls"))
		test_tls();
	if (all || !strcmp(what, "backoff"))
		test_backoff();
	if (all || !strcmp(what, "flood"))
		test_flood();
	if (all || !strcmp(what, "idle"))
		test_idle();
	/* Before "restart", which leaves the broker without persistence. */
	if (all || !strcmp(what, "persist"))
		test_restart_persist();
	if (all || !strcmp(what, "restart"))
		test_restart();
	opts_release();
	printf("mqtt_session: %d checks, %d failed\n", checks, failures);
	return failures ? 1 : 0;
}
