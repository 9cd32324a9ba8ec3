/* Local OpenAI-compatible HTTP API in front of runner processes.
 *
 * Endpoints (docs/serving.md): POST /v1/completions, POST /v1/chat/completions
 * (with "stream": true: server-sent events "data: {...}\n\n" ... "data:
 * [DONE]\n\n"), POST /v1/predict (feature rows of a tabular model), GET
 * /v1/models, GET /healthz, GET /v1/status. Listeners: TCP
 * (meant for loopback, optional bearer token) and/or a UNIX socket (access by
 * file mode). Errors use OpenAI's shape {"error": {"message", "type", "param",
 * "code"}}: 400 bad request or over a limit, 401 bad token, 404 unknown
 * model or path, 405, 413 body too large, 503 queue full or model not ready
 * (at once, never queued), 500 runner crashed, 504 request timeout.
 *
 * Requests go to the runner the ROUTER callbacks pick (struct rt_serve_ops):
 * the agent swaps models by pointing new requests at a new runner while the
 * requests in flight finish on the old one (see rt_serve_router below).
 *
 * Threading: libmicrohttpd runs a thread per connection (bounded by
 * max_connections); each request blocks its thread in rt_runner_generate().
 * The ops callbacks are called from those threads, concurrently. */
#ifndef FLOTILLA_SERVE_H
#define FLOTILLA_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "flotilla/runner.h"

#define RT_SERVE_MODEL_ID_BYTES 64

/* One finished generate request, for telemetry (rt_serve_ops.observe). */
struct rt_serve_obs {
	const char *model;                /* the id the request was routed to */
	int err;                          /* 0 or the runner's error */
	int64_t latency_us;               /* runner call to answer, queue time included */
	size_t request_bytes;             /* HTTP body size */
	const struct rt_gen_request *req; /* sampling, max_tokens, prompt/messages */
	const struct rt_gen_result *res;  /* NULL when err < 0 */
	const struct rt_predict_result *pred; /* /v1/predict: set instead of req/res */
};

struct rt_serve_ops {
	/* Runner for MODEL (the request's "model", "" if absent). On success
	 * the runner must stay valid until release() is called with it.
	 * Errors: -ENOENT (unknown model: 404), -FL_ESTATE (not ready: 503).
	 * RET_ID receives the model id to report (RT_SERVE_MODEL_ID_BYTES). */
	int (*acquire)(void *userdata, const char *model, struct rt_runner **ret_runner,
		       char *ret_id);
	void (*release)(void *userdata, struct rt_runner *runner);
	/* Ids of the models served, for /v1/models: up to MAX, returns the count. */
	int (*list_models)(void *userdata, char (*ids)[RT_SERVE_MODEL_ID_BYTES], int max);
	/* /v1/status body: a JSON object (versions, slot, state, ...) written
	 * NUL-terminated in BUF. Optional (NULL: {}). Returns 0 or an error. */
	int (*status_json)(void *userdata, char *buf, size_t size);
	/* Optional: called after every generate request that reached RUNNER
	 * (still acquired), on the request's thread; must be quick. */
	void (*observe)(void *userdata, struct rt_runner *runner, const struct rt_serve_obs *obs);
};

struct rt_serve_config {
	const char *tcp_addr;      /* IPv4 address to bind, e.g. "127.0.0.1"; NULL: no TCP */
	uint16_t tcp_port;         /* 0: any free port (see rt_serve_tcp_port) */
	const char *unix_path;     /* UNIX socket path (replaced, mode 0660); NULL: none */
	const char *bearer_token;  /* TCP requests need "Authorization: Bearer T"; NULL: none */
	size_t max_body_bytes;     /* 0: 1 MiB */
	size_t max_prompt_bytes;   /* prompt or all messages' content; 0: 256 KiB */
	int max_tokens_limit;      /* requests asking for more get 400; 0: 4096 */
	int default_max_tokens;    /* when the request gives none; 0: 256 */
	int max_connections;       /* 0: 64 */
	int max_predict_rows;      /* rows of one /v1/predict; 0: 10000 */
	struct rt_serve_ops ops;   /* acquire, release and list_models are required */
	void *userdata;
};

struct rt_serve;

/* Start listening. The sockets are bound and listening on return;
 * libmicrohttpd is loaded (dlopen) and its threads started when the first
 * connection arrives (FLOTILLA_SERVE_EAGER=1 in the environment: at once).
 * Errors: -EINVAL (no listener, missing ops, bad address), -EADDRINUSE and
 * other socket errors, -ENOMEM; eager only: -FL_EUNSUPPORTED (libmicrohttpd
 * not installed), -FL_ENET (it refused to start). Caller stops with
 * rt_serve_stop(). */
int rt_serve_start(const struct rt_serve_config *cfg, struct rt_serve **ret_serve);

/* The bound TCP port (useful with tcp_port 0), or 0 without TCP. */
uint16_t rt_serve_tcp_port(const struct rt_serve *s);

/* Stop listening, wait for the connections' threads, remove the UNIX
 * socket, free. NULL is fine. Requests in flight are finished first. */
void rt_serve_stop(struct rt_serve *s);

/* ------------------------------------------------------- a simple router */

/* A ready-made router for rt_serve_ops: one current runner per model id (up
 * to 16 ids), reference-counted so that a swap never cuts a request in
 * flight. A request without a model goes to the first id served.
 * Thread-safe. */
struct rt_serve_router;

int rt_serve_router_new(struct rt_serve_router **ret_router);
/* Route new requests for model ID to RUNNER (NULL: ID is no longer served).
 * *RET_OLD (if not NULL) receives the previous runner of ID: wait with
 * rt_serve_router_wait_idle() before stopping it. Errors: -EINVAL (ID
 * empty or too long), -FL_ETOOBIG (16 ids already served). */
int rt_serve_router_set(struct rt_serve_router *r, const char *id, struct rt_runner *runner,
			struct rt_runner **ret_old);
/* Wait until no request holds RUNNER: 0, or -FL_ETIMEOUT. */
int rt_serve_router_wait_idle(struct rt_serve_router *r, struct rt_runner *runner, int timeout_ms);
/* Fill OPS / USERDATA of a config with this router (status_json left NULL). */
void rt_serve_router_bind(struct rt_serve_router *r, struct rt_serve_config *cfg);
void rt_serve_router_free(struct rt_serve_router *r);

#endif
