/* MQTT v5 client over mutual TLS: a thin, event-driven wrapper around Eclipse
 * Paho MQTTAsync (common/src/mqtt.c is the only file that includes Paho).
 *
 * Model: the owner runs one event loop. It polls fl_mqtt_fd() (an eventfd,
 * readable while events are queued), then drains fl_mqtt_next_event() and
 * calls fl_mqtt_tick() to run timers (reconnect with backoff) and to learn
 * how long it may sleep. Paho's own threads only copy what arrives into a
 * bounded, mutex-protected queue and write the eventfd; every state change
 * of the wrapper happens in the owner's thread inside next_event()/tick().
 *
 * Thread-safety: one fl_mqtt is used from one thread (the owner's), except
 * fl_mqtt_stats(), which may be called from any thread.
 *
 * Bounds: an incoming message larger than max_msg_bytes, or one that would
 * take the queue past max_queue_msgs / max_queue_bytes, is dropped and
 * counted (stats), and acknowledged. The broker is not told a maximum
 * packet size (mosquitto 2.0.11 wedges the session when it drops one for
 * us: docs/mqtt.md "Message size"); its own size limit bounds what arrives.
 * At most max_inflight publishes are unfinished at a time
 * (fl_mqtt_publish() says -FL_EBUSY). */
#ifndef FLOTILLA_MQTT_H
#define FLOTILLA_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fl_mqtt;

/* Limits on options. */
#define FL_MQTT_TOPIC_MAX 1024          /* bytes of a topic or filter */
#define FL_MQTT_CLIENT_ID_MAX 64
#define FL_MQTT_MAX_SUBS 64             /* remembered subscriptions */
#define FL_MQTT_MAX_INFLIGHT 1024
#define FL_MQTT_MSG_MAX (64u << 20)     /* largest max_msg_bytes accepted */
#define FL_MQTT_TEXT_MAX 160            /* fl_mqtt_event.text, with the NUL */

/* Reconnect backoff: first delay, cap, jitter (+-percent), and how long a
 * connection must have lasted for the next drop to start again at the first
 * delay. */
#define FL_MQTT_BACKOFF_MIN_MS 1000
#define FL_MQTT_BACKOFF_MAX_MS 60000
#define FL_MQTT_BACKOFF_JITTER_PCT 20
#define FL_MQTT_BACKOFF_RESET_MS 60000

/* The reconnect policy itself, shared by fl_mqtt and the fleet simulator
 * (tests/sim), so simulated devices reconnect exactly as agents do. */
struct fl_backoff {
	int64_t cur_ms, min_ms, max_ms;
	uint64_t rng; /* xorshift64* state: spread, not secrecy */
};

/* MIN_MS..MAX_MS (0: the FL_MQTT_BACKOFF_* defaults; MAX below MIN is
 * raised to MIN); SEED 0 picks one. */
void fl_backoff_init(struct fl_backoff *b, int64_t min_ms, int64_t max_ms, uint64_t seed);
/* The delay before the next connect attempt after a drop at NOW_MS (or a
 * failed attempt: UP_SINCE_MS 0): the current delay +-JITTER_PCT, which
 * then doubles up to the cap; a connection that lasted longer than
 * FL_MQTT_BACKOFF_RESET_MS (UP_SINCE_MS: when it came up) starts again at
 * the first delay. */
int64_t fl_backoff_next(struct fl_backoff *b, int64_t now_ms, int64_t up_since_ms);

struct fl_mqtt_opts {
	/* "ssl://host:port" or "mqtts://host:port" (mutual TLS: ca_file, cert_file
	 * and key_file required), or "tcp://host:port" / "mqtt://host:port"
	 * (plain, for benchmarks and tests only). */
	const char *uri;
	const char *client_id;    /* 1..64 bytes; with Flotilla's broker = cert CN */
	const char *ca_file;      /* PEM: the fleet CA the server must chain to */
	const char *cert_file;    /* PEM: our client certificate */
	const char *key_file;     /* PEM: its private key */
	bool verify_host;         /* check the server's name/IP against the URI's host */
	int keepalive_s;          /* 1..65535 */
	int connect_timeout_s;    /* 1..300 */
	uint32_t session_expiry_s;/* kept by the broker after a disconnect */
	bool clean_start;         /* false: resume the broker's session if any */
	/* fl_mqtt_free() ends the broker's session (DISCONNECT with session
	 * expiry 0): nothing more is queued for this client id, and its shared
	 * subscriptions stop taking their share of messages at once. For a
	 * server that several instances share ($share/...); a device keeps its
	 * session (commands wait for it). Default false. */
	bool end_session_on_free;
	/* Last will (optional: will_topic NULL for none). */
	const char *will_topic;
	const void *will_payload;
	size_t will_len;          /* <= 64 KiB */
	int will_qos;             /* 0..1 */
	bool will_retain;
	/* Bounds. */
	int max_inflight;         /* unfinished publishes, 1..FL_MQTT_MAX_INFLIGHT */
	size_t max_msg_bytes;     /* largest incoming payload, 1..FL_MQTT_MSG_MAX */
	size_t max_queue_bytes;   /* payload bytes queued for the owner, >= max_msg_bytes */
	size_t max_queue_msgs;    /* messages queued for the owner, >= 1 */
	/* Reconnect backoff: first delay and cap in ms; 0 for the defaults
	 * (FL_MQTT_BACKOFF_MIN_MS / _MAX_MS). 10..FL_MQTT_BACKOFF_MAX_MS, min <=
	 * max. Tests and stress runs shorten it; production keeps the defaults. */
	int backoff_min_ms;
	int backoff_max_ms;
};

/* Fill O with the defaults: verify_host on, keepalive 30 s, connect timeout
 * 10 s, session expiry 1 day, clean_start off, no will, max_inflight 8,
 * max_msg_bytes 1 MiB, max_queue_bytes 8 MiB, max_queue_msgs 1024. The
 * string fields are NULL: set uri and client_id (and the TLS files). */
void fl_mqtt_opts_init(struct fl_mqtt_opts *o);

enum fl_mqtt_event_type {
	FL_MQTT_EV_NONE = 0,
	FL_MQTT_EV_CONNECTED,        /* session_present */
	FL_MQTT_EV_DISCONNECTED,     /* connection lost or connect attempt failed:
	                              * err, reason (v5 reason code or -1), text;
	                              * retry_ms: when the next attempt is due */
	FL_MQTT_EV_MESSAGE,          /* topic, payload, len, qos, retained */
	FL_MQTT_EV_PUBLISHED,        /* token: QoS 1 acknowledged (PUBACK success),
	                              * QoS 0 written to the socket */
	FL_MQTT_EV_PUBLISH_FAILED,   /* token, reason (e.g. 0x87 Not authorized),
	                              * err, text */
	FL_MQTT_EV_SUBSCRIBED,       /* topic, qos (granted) */
	FL_MQTT_EV_SUBSCRIBE_FAILED, /* topic, reason, err, text */
};

/* One event. Owns topic and payload (one allocation): release with
 * fl_mqtt_event_clear(). */
struct fl_mqtt_event {
	enum fl_mqtt_event_type type;
	int err;               /* 0, or a negative code (-FL_ENET, -EACCES, ...) */
	int reason;            /* MQTT v5 reason code, -1 when there is none */
	bool session_present;  /* CONNECTED */
	int64_t retry_ms;      /* DISCONNECTED: delay before the next attempt */
	uint64_t token;        /* PUBLISHED / PUBLISH_FAILED */
	char *topic;           /* MESSAGE, SUBSCRIBED, SUBSCRIBE_FAILED */
	uint8_t *payload;      /* MESSAGE: len bytes (NUL-terminated for convenience) */
	size_t len;
	int qos;
	bool retained;
	char text[FL_MQTT_TEXT_MAX]; /* human-readable reason, "" when none */
};

struct fl_mqtt_stats {
	uint64_t msgs_in, bytes_in;       /* messages that arrived (dropped included) */
	uint64_t msgs_out, bytes_out;     /* publishes completed successfully */
	uint64_t publish_failed;
	uint64_t drops_oversize;          /* larger than max_msg_bytes */
	uint64_t drops_queue_full;        /* past max_queue_msgs / max_queue_bytes */
	uint64_t connects;                /* successful connections */
	uint64_t connect_failures;        /* attempts that failed */
	uint64_t disconnects;             /* established connections lost */
	size_t queue_msgs, queue_bytes;   /* now */
	size_t queue_peak_bytes;          /* highest queue_bytes seen */
	int inflight;                     /* unfinished publishes now */
	int requests;                     /* publishes/subscribes Paho has not
	                                   * answered yet (failed ones included) */
	uint64_t clients_replaced;        /* Paho clients set aside after a QoS 1
	                                   * publish met a dead socket
	                                   * (docs/mqtt.md "Paho's send failure") */
	bool connected;
};

/* Create a client (not connected yet). Validates the options (-EINVAL for a
 * bad URI, client id, file missing for TLS (-ENOENT), bounds out of range),
 * copies every string, creates the eventfd and the Paho client.
 * Errors: -EINVAL, -ENOENT, -ENOMEM, -FL_ENET (Paho refused). Caller frees
 * *RET with fl_mqtt_free(). */
int fl_mqtt_new(const struct fl_mqtt_opts *o, struct fl_mqtt **ret);

/* The eventfd to poll for POLLIN. It stays readable while events are queued
 * (the owner need not read it: next_event() does). Owned by M. */
int fl_mqtt_fd(const struct fl_mqtt *m);

/* Begin connecting; from then on the client reconnects by itself (backoff
 * 1 s doubling to 60 s, +-20 % jitter, reset after a connection that lasted
 * more than 60 s), driven by fl_mqtt_tick(). Errors: -FL_ESTATE when already
 * started, -FL_ENET when Paho refuses to start (the retry is scheduled
 * anyway, so the caller may ignore it). */
int fl_mqtt_start(struct fl_mqtt *m);

/* Run timers. NOW_MS is fl_mono_ms(). Writes the number of ms until tick()
 * wants to run again to *RET_NEXT_MS (-1: no timer pending). Call it after
 * draining events and whenever the poll timeout expires. Returns 0. */
int fl_mqtt_tick(struct fl_mqtt *m, int64_t now_ms, int *ret_next_ms);

/* Subscribe to TOPIC (a filter, shared subscriptions included) with QOS
 * 0..1. The subscription is remembered and sent again after every
 * reconnect, a resumed session included (a broker may resume a session
 * without some of its subscriptions; docs/mqtt.md "Resumed sessions"); on a
 * resumed session with Retain Handling 1, so retained messages are not
 * delivered twice. While disconnected it is only remembered. Result:
 * SUBSCRIBED / SUBSCRIBE_FAILED events (after each reconnect too).
 * Errors: -EINVAL (bad topic/qos), -FL_ETOOBIG (more than FL_MQTT_MAX_SUBS),
 * -ENOMEM. Subscribing twice to the same filter updates its QoS. */
int fl_mqtt_subscribe(struct fl_mqtt *m, const char *topic, int qos);

/* Publish LEN bytes (<= FL_MQTT_MSG_MAX; Paho copies them) to TOPIC (no
 * wildcards) with QOS 0..1. Never blocks. On success writes a token (> 0)
 * to *RET_TOKEN (may be NULL); exactly one PUBLISHED or PUBLISH_FAILED event
 * with that token follows. Every publish holds one of max_inflight window
 * slots until that event is taken with next_event(); QoS 0 publishes are
 * finished when written to the socket. A QoS 0 publish still unsent when
 * the connection drops, and a QoS 1 publish unacknowledged when the broker
 * lost our session, fail with err -ENOTCONN (the caller may send again:
 * QoS 1 is at least once).
 * Errors: -EINVAL (bad topic/qos/size), -FL_EBUSY (window full: retry after
 * events), -ENOTCONN (not connected), -FL_ENET (Paho refused), -ENOMEM. */
int fl_mqtt_publish(struct fl_mqtt *m, const char *topic, const void *data, size_t len,
		    int qos, bool retain, uint64_t *ret_token);

/* Take the next event: returns 1 and fills *RET (caller calls
 * fl_mqtt_event_clear()), or 0 when none is queued. Applies the state
 * change the event stands for (connected, retry scheduled, window slot
 * freed, subscriptions re-sent). */
int fl_mqtt_next_event(struct fl_mqtt *m, struct fl_mqtt_event *ret);

/* Free what EV owns and zero it. Accepts NULL and a zeroed event. */
void fl_mqtt_event_clear(struct fl_mqtt_event *ev);

/* Snapshot of the counters. Thread-safe. */
void fl_mqtt_stats(struct fl_mqtt *m, struct fl_mqtt_stats *ret);

/* True while connected (as far as the owner's thread has seen events). */
bool fl_mqtt_connected(const struct fl_mqtt *m);

/* Disconnect cleanly (waits up to 1 s for the DISCONNECT to go out), destroy
 * the Paho client (its threads make no more callbacks afterwards), free the
 * queue and M. Accepts NULL. */
void fl_mqtt_free(struct fl_mqtt *m);

/* Name of a v5 reason code ("Not authorized"), never NULL. */
const char *fl_mqtt_reason_str(int reason);

#endif
