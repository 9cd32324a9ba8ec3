/* The controller's MQTT session (docs/controller.md "MQTT", docs/protocol.md):
 * subscribes to every device's state, event, tele and chunk/req, feeds them
 * to the core (ctl.h) and answers chunk requests on the device's chunk/dat;
 * publishes commands (deploy, revert) for the HTTP API.
 *
 * Threading: one owner thread (the main loop) calls ctl_mqtt_start(),
 * ctl_mqtt_run() and ctl_mqtt_free(); ctl_mqtt_command(), ctl_mqtt_counters()
 * and ctl_mqtt_metrics_text() may be called from any thread (the HTTP
 * threads): a command is queued under a lock, the owner is woken through an
 * eventfd and publishes it.
 *
 * Bounds: chunk frames the publish window cannot take now wait in a
 * backlog bounded per device (backlog_per_device frames) and in total
 * (backlog_max_bytes); a chunk/req that arrives while its device already has
 * backlog_per_device frames waiting is dropped whole and counted (a device
 * that floods requests gets nothing more); queued commands are bounded by
 * max_cmds. Malformed, oversized and unexpected messages are counted and
 * dropped. */
#ifndef FLOTILLA_CTL_MQTT_H
#define FLOTILLA_CTL_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctl.h"

#define CTL_MQTT_TOPIC_PREFIX "flotilla/v1/dev/"
#define CTL_MQTT_SHARE_PREFIX "$share/controllers/"
#define CTL_TELE_MAX_BYTES (256 * 1024)
#define CTL_MQTT_DEFAULT_INFLIGHT 8
#define CTL_MQTT_DEFAULT_BACKLOG_PER_DEVICE 64 /* >= an agent's window (32 ranges) */
#define CTL_MQTT_DEFAULT_BACKLOG_BYTES (32u << 20)
#define CTL_MQTT_DEFAULT_MAX_CMDS 256

struct ctl_mqtt_opts {
	const char *uri;          /* ssl://host:port (or tcp:// for tests) */
	const char *client_id;    /* = the certificate's CN */
	const char *ca_file, *cert_file, *key_file;
	bool verify_host;
	int max_inflight;         /* publish window; 0: CTL_MQTT_DEFAULT_INFLIGHT */
	size_t backlog_per_device;/* 0: CTL_MQTT_DEFAULT_BACKLOG_PER_DEVICE */
	size_t backlog_max_bytes; /* 0: CTL_MQTT_DEFAULT_BACKLOG_BYTES */
	size_t max_cmds;          /* 0: CTL_MQTT_DEFAULT_MAX_CMDS */
};

/* The transport under the session; tests replace it (ctl_mqtt_new_io()).
 * PUBLISH has fl_mqtt_publish()'s contract at QoS 1, no retain: a token
 * > 0 and exactly one later ctl_mqtt_on_published() for it, or -FL_EBUSY
 * (window full), -ENOTCONN, other negative codes. */
struct ctl_mqtt_io {
	int (*publish)(void *ud, const char *topic, const void *data, size_t len,
		       uint64_t *ret_token);
	void *ud;
};

struct ctl_mqtt_counters {
	uint64_t msgs_state, msgs_event, msgs_tele, msgs_chunk_req;
	uint64_t refused_state, refused_tele, refused_chunk_req; /* malformed/oversized */
	uint64_t unexpected;          /* topic outside the tree, bad device id */
	uint64_t chunk_frames_sent;   /* acknowledged by the broker */
	uint64_t chunk_bytes_sent;
	uint64_t chunk_frames_backlogged;
	uint64_t chunk_frames_dropped;/* backlog full, not connected, publish failed */
	uint64_t chunk_req_flood;     /* requests dropped: the device's backlog was full */
	uint64_t cmds_sent, cmds_failed;
	uint64_t backlog_frames, backlog_bytes; /* now */
	bool connected;
};

struct ctl_mqtt;

/* A session on C (which must outlive it) with a real fl_mqtt client.
 * Errors: -EINVAL (missing uri/client id, bad bounds), fl_mqtt_new()'s
 * errors, -ENOMEM. Free with ctl_mqtt_free(). */
int ctl_mqtt_new(struct ctl *c, const struct ctl_mqtt_opts *o, struct ctl_mqtt **ret);
/* The same over IO (no broker; it counts as connected). For tests. */
int ctl_mqtt_new_io(struct ctl *c, const struct ctl_mqtt_opts *o, const struct ctl_mqtt_io *io,
		    struct ctl_mqtt **ret);
/* Subscribe (state, event, tele, chunk/req; QoS 1) and start connecting. */
int ctl_mqtt_start(struct ctl_mqtt *m);
/* File descriptors to poll for POLLIN (the client's and the command
 * wake-up eventfd); returns how many were written to FDS (<= 2). */
int ctl_mqtt_fds(const struct ctl_mqtt *m, int fds[2]);
/* Owner's work: take every queued event, publish queued commands and
 * backlogged frames, run the client's timers. *RET_NEXT_MS gets how long
 * the owner may sleep (-1: until an fd is readable). Never blocks. */
int ctl_mqtt_run(struct ctl_mqtt *m, int64_t now_ms, int *ret_next_ms);

/* Dispatch one incoming message (ctl_mqtt_run() calls it; tests too). */
void ctl_mqtt_on_message(struct ctl_mqtt *m, const char *topic, const void *payload,
			 size_t len);
/* The transport finished publish TOKEN (OK: acknowledged). */
void ctl_mqtt_on_published(struct ctl_mqtt *m, uint64_t token, bool ok);
/* The connection state changed (the backlog is dropped on a disconnect: the
 * devices ask again). */
void ctl_mqtt_on_connection(struct ctl_mqtt *m, bool connected);

/* Publish the command JSON (LEN bytes, <= CTL_CMD_MAX_BYTES) to DEVICE's
 * cmd topic at QoS 1 and wait up to TIMEOUT_MS for the broker's
 * acknowledgement. Returns 1 acknowledged, 0 still queued or in flight when
 * the wait ended (it goes out later). Errors: -EINVAL, -ENOTCONN (no broker
 * connection: nothing queued), -FL_EBUSY (command queue full: nothing
 * queued), -FL_ENET (the broker refused it), -ENOMEM. Thread-safe. */
int ctl_mqtt_command(struct ctl_mqtt *m, const char *device, const char *json, size_t len,
		     int timeout_ms);

void ctl_mqtt_counters(struct ctl_mqtt *m, struct ctl_mqtt_counters *ret);
/* The counters in Prometheus text format (caller frees). */
int ctl_mqtt_metrics_text(struct ctl_mqtt *m, char **ret);

/* Disconnect and free (NULL ok). Commands still waiting fail with
 * -ENOTCONN; their waiters must be gone (stop the HTTP server first). */
void ctl_mqtt_free(struct ctl_mqtt *m);

/* Parse TOPIC "flotilla/v1/dev/<id>/<kind>": copies the id (valid name,
 * <= CTL_DEVICE_ID_MAX) into RET_ID and returns the kind (1 state, 2 event,
 * 3 tele, 4 chunk/req), or -FL_EPROTO. */
enum { CTL_TOPIC_STATE = 1, CTL_TOPIC_EVENT, CTL_TOPIC_TELE, CTL_TOPIC_CHUNK_REQ };
int ctl_mqtt_parse_topic(const char *topic, char ret_id[CTL_DEVICE_ID_MAX + 1]);

#endif
