/* Runner processes: one model per child process, supervised by the agent.
 *
 * A runner is a child process (the agent binary in "runner" mode, or a plain
 * fork in tests) that opens one model with a backend (backend.h) and serves
 * generate requests, one at a time, over a UNIX stream socket. A crash or an
 * out-of-memory kill in a model takes down that runner only; the supervisor
 * (struct rt_runner, in the parent) restarts it with exponential backoff and
 * reports a crash loop when it dies too often.
 *
 * Protocol (docs/serving.md): frames of a 4-byte little-endian payload length
 * followed by the payload (1 .. RT_RMSG_MAX_BYTES bytes); the payload starts
 * with a type byte. Integers are little-endian, strings are a u32 length and
 * the bytes (no NUL inside), floats are IEEE-754 doubles. The decoder is
 * strict: unknown types, short or trailing bytes, oversize counts and
 * strings are errors (-FL_EPROTO / -FL_ETOOBIG).
 *
 * Threading: rt_runner (the supervisor) runs one thread per runner. Every
 * rt_runner_* function is thread-safe and may be called from any thread
 * (except rt_runner_stop(): once, after the last call). Streaming callbacks
 * (req->on_text) run on the runner's supervisor thread: they must copy the
 * text and return quickly, and must not call rt_runner_* on the same runner. */
#ifndef FLOTILLA_RUNNER_H
#define FLOTILLA_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "flotilla/backend.h"

/* ------------------------------------------------------------- messages */

#define RT_RMSG_MAX_BYTES (4u << 20)    /* one frame payload */
#define RT_RMSG_MAX_TEXT_BYTES (1u << 20) /* prompt, message content, result text */
#define RT_RMSG_MAX_SHORT_BYTES 4096u    /* role, error message, names */

enum rt_rmsg_type {
	/* supervisor -> runner */
	RT_RMSG_GENERATE = 1,
	RT_RMSG_PING = 2,
	RT_RMSG_STATS = 3,
	RT_RMSG_SHUTDOWN = 4,
	RT_RMSG_CANCEL = 5,
	RT_RMSG_PREDICT = 6,  /* feature rows */
	/* runner -> supervisor */
	RT_RMSG_READY = 64,   /* load finished: code 0 or the open error; text = model */
	RT_RMSG_PONG = 65,
	RT_RMSG_PIECE = 66,   /* streamed text */
	RT_RMSG_DONE = 67,    /* result */
	RT_RMSG_ERROR = 68,   /* code + text */
	RT_RMSG_STATS_R = 69, /* stats */
	RT_RMSG_PREDICTION = 70, /* predict result */
};

/* One decoded message. Which fields are set depends on TYPE. Strings are
 * NUL-terminated copies owned by the message. */
struct rt_rmsg {
	enum rt_rmsg_type type;
	uint32_t id;          /* request id (echoed in responses) */
	/* GENERATE: the request; its strings point into this message. */
	struct rt_gen_request req;
	bool stream;          /* GENERATE: send PIECE messages */
	/* READY / ERROR: code (0 or negative); PIECE / ERROR / READY text. */
	int32_t code;
	char *text;
	size_t text_len;
	/* DONE */
	struct rt_gen_result res; /* res.text aliases TEXT (do not free it) */
	/* STATS_R */
	struct rt_backend_stats stats;
	/* PREDICT: the rows (values owned by the message) */
	struct rt_predict_request preq;
	/* PREDICTION: the result (values owned by the message: do not free) */
	struct rt_predict_result pres;
	float *fstore;
	/* owned storage */
	struct rt_chat_msg *msgs_store;
	char **strs;
	size_t n_strs;
};

/* Encode a message as one frame (length prefix included) in a new buffer.
 * For GENERATE, M->req is encoded (prompt or messages, sampling, max_tokens,
 * stop strings, parse_special) with M->stream. Errors: -EINVAL (bad type,
 * NULL string where one is required), -FL_ETOOBIG (over a size limit),
 * -ENOMEM. Caller frees *RET_BUF with free(). */
int rt_rmsg_encode(const struct rt_rmsg *m, void **ret_buf, size_t *ret_len);

/* Decode one frame PAYLOAD (without the length prefix). Errors: -FL_EPROTO
 * (malformed, unknown type, trailing bytes, NUL in a string),
 * -FL_ETOOBIG (over a limit), -ENOMEM. Caller frees with rt_rmsg_free(). */
int rt_rmsg_decode(const void *payload, size_t len, struct rt_rmsg **ret_msg);

/* Free a decoded message. NULL is fine. */
void rt_rmsg_free(struct rt_rmsg *m);

/* ---------------------------------------------------------- runner side */

/* Serve requests on socket FD with backend BACKEND on MODEL_PATH until a
 * SHUTDOWN message or the peer closes the socket. Sends READY first (with
 * the open error, then returns it, if the model does not load). Returns 0
 * after a clean shutdown, or a negative error. Does not close FD. Uses two
 * threads (a reader answering PING/CANCEL at once, a worker running
 * requests). */
int rt_runner_main(int fd, const char *backend, const char *model_path,
		   const struct rt_backend_opts *opts);

/* Command line of runner mode: parse ARGV ("--fd N --backend NAME --model PATH
 * [--threads N] [--ctx N] [--mem-bytes N] [--backend-config JSON]", as built by
 * rt_runner_start) and run
 * rt_runner_main(). Returns a process exit status (0 ok, 2 usage, 1 error).
 * For the agent's "runner" subcommand and test programs. */
int rt_runner_cli(int argc, char **argv);

/* ------------------------------------------------------ supervisor side */

enum rt_runner_state {
	RT_RUNNER_STARTING = 1, /* process started, model loading */
	RT_RUNNER_READY = 2,    /* idle or serving */
	RT_RUNNER_BACKOFF = 3,  /* died; waiting before a restart */
	RT_RUNNER_CRASH_LOOP = 4, /* died crash_loop_n times within the window: given up */
	RT_RUNNER_LOAD_FAILED = 5, /* the model did not load (no restart); an open
				    * failing -FL_ECRASH / -FL_ETIMEOUT (the backend's
				    * own server died or hung while starting) is a
				    * crash instead: restarted, counted */
	RT_RUNNER_STOPPED = 6,
};

struct rt_runner_limits {
	uint64_t mem_bytes;        /* RLIMIT_AS of the runner; 0: none */
	int n_threads;             /* inference threads; 0: backend default */
	int n_ctx;                 /* 0: backend default */
	int request_timeout_ms;    /* per request, queue time excluded; 0: none */
	int queue_max;             /* requests waiting + running; >= 1 */
	int heartbeat_interval_ms; /* ping period */
	int heartbeat_timeout_ms;  /* no pong for this long: kill and restart */
	int load_timeout_ms;       /* no READY for this long: kill and restart */
	int backoff_min_ms, backoff_max_ms; /* restart delay, doubled per crash */
	int crash_loop_n;          /* this many crashes ... */
	int crash_loop_window_ms;  /* ... within this window: CRASH_LOOP */
};

/* Defaults: no memory limit, queue 8, no request timeout, heartbeat every
 * 1 s with a 5 s timeout, load timeout 60 s, backoff 100 ms .. 30 s, crash
 * loop 5 crashes in 60 s. */
void rt_runner_limits_default(struct rt_runner_limits *l);

struct rt_runner_config {
	/* Program to exec in the child with "runner --fd N --backend B --model
	 * P [--threads T] [--ctx C]". NULL: fork only, the child calls
	 * rt_runner_main() directly (tests; the parent must be fork-safe). */
	const char *exe;
	const char *backend;
	const char *model_path;
	const char *backend_config; /* rt_backend_opts.config ("--backend-config"); NULL: none */
	struct rt_runner_limits limits;
};

struct rt_runner_status {
	enum rt_runner_state state;
	pid_t pid;                 /* current child, 0 if none */
	int queued;                /* requests waiting or running */
	uint32_t n_starts;         /* processes started */
	uint32_t n_crashes;        /* unexpected exits, heartbeat and timeout kills */
	uint32_t n_requests, n_failed;
	uint32_t n_rejected;       /* requests the backend refused as invalid (-EINVAL,
				    * -FL_ERANGE, -FL_ETOOBIG, -FL_EUNSUPPORTED): not failures */
	int last_error;            /* last load error or request failure cause */
	int last_exit_status;      /* exit code of the last child, -1 if signalled */
	int last_exit_signal;      /* signal that ended it, 0 if none */
	char model[64];            /* from READY */
	int backoff_ms;            /* delay before the latest restart (0: none yet) */
	int crash_loop_ms;         /* CRASH_LOOP: from the first to the last of the
				    * crash_loop_n crashes that made it */
};

struct rt_runner;

/* Start supervising: spawns the first runner process at once (in the
 * background: rt_runner_wait_ready() waits for the load). CFG's strings are
 * copied. Errors: -EINVAL (missing backend/model, bad limits), -ENOMEM,
 * thread/socket errors. Caller stops with rt_runner_stop(). */
int rt_runner_start(const struct rt_runner_config *cfg, struct rt_runner **ret_runner);

/* Wait until the runner is READY (0), or reached LOAD_FAILED (its load
 * error, e.g. -ENOMEM under the memory limit) / CRASH_LOOP (-FL_ECRASH), or
 * TIMEOUT_MS passed (-FL_ETIMEOUT). */
int rt_runner_wait_ready(struct rt_runner *r, int timeout_ms);

/* Run REQ on the runner and wait for the result (blocking the calling
 * thread; many threads may call at once: requests run in arrival order).
 * REQ->on_text, if set, streams the text (called on the supervisor thread;
 * a non-zero return cancels the request, which then ends with
 * stop_reason RT_STOP_CALLBACK). Errors, *RET untouched: -FL_EBUSY at once
 * when queue_max requests are already queued; -FL_ESTATE when the runner is
 * in CRASH_LOOP, LOAD_FAILED or stopping; -FL_ECRASH when the runner died
 * during the request (it is restarted; the request is not retried);
 * -FL_ETIMEOUT after request_timeout_ms (the runner is killed and
 * restarted); the backend's own errors (-EINVAL, -FL_ERANGE, -FL_ETOOBIG,
 * ...). Free *RET with rt_gen_result_free(). */
int rt_runner_generate(struct rt_runner *r, const struct rt_gen_request *req,
		       struct rt_gen_result *ret);

/* Predict REQ's feature rows on the runner (queued like a generate request).
 * Errors as rt_runner_generate(), plus -FL_EUNSUPPORTED (the model does not
 * predict) and -EINVAL (rows that do not fit the model); WHY (if WHY_LEN >
 * 0) gets the backend's message for them. Free *RET with
 * rt_predict_result_free(). */
int rt_runner_predict(struct rt_runner *r, const struct rt_predict_request *req,
		      struct rt_predict_result *ret, char *why, size_t why_len);

/* The backend's statistics, asked from the runner (queued like a request).
 * Errors as rt_runner_generate(). */
int rt_runner_backend_stats(struct rt_runner *r, struct rt_backend_stats *ret_stats);

/* Supervisor counters and state. Never fails for a valid handle. */
void rt_runner_get_status(struct rt_runner *r, struct rt_runner_status *ret_status);

/* Latency of the requests that succeeded (generate and predict), from the
 * call to the answer (queue time included): a histogram of
 * RT_RUNNER_LAT_BUCKETS counters, 8 per doubling of microseconds (bucket i
 * holds latencies below 2^((i+1)/8) us). Subtract two copies to judge a
 * window (the install trial does). */
#define RT_RUNNER_LAT_BUCKETS 256
void rt_runner_latency(struct rt_runner *r, uint32_t hist[RT_RUNNER_LAT_BUCKETS]);
/* Quantile Q (0..1) of HIST in milliseconds: the upper edge of the bucket
 * holding it (at most 9 % above the true value); 0 for an empty HIST. */
double rt_latency_quantile_ms(const uint32_t hist[RT_RUNNER_LAT_BUCKETS], double q);

/* Last lines the runner processes wrote to stderr (a ring of
 * RT_RUNNER_STDERR_BYTES, oldest first), NUL-terminated in BUF (truncated
 * to SIZE). Returns the length copied. */
#define RT_RUNNER_STDERR_BYTES 4096
size_t rt_runner_stderr_tail(struct rt_runner *r, char *buf, size_t size);

/* The end of the stderr ring as it was when the last crash was counted (the
 * dead runner's last words, before a restarted one writes more), at most
 * RT_RUNNER_CRASH_TAIL_BYTES - 1 bytes; "" before any crash. */
#define RT_RUNNER_CRASH_TAIL_BYTES 1024
size_t rt_runner_crash_tail(struct rt_runner *r, char *buf, size_t size);

/* Leave CRASH_LOOP / LOAD_FAILED and start a fresh runner (after the
 * operator fixed the cause or a new model was installed). -FL_ESTATE in
 * other states. */
int rt_runner_reset(struct rt_runner *r);

/* Ask the runner to shut down (SIGKILL after GRACE_MS), fail queued
 * requests with -FL_ESTATE, join the thread and free. NULL is fine. */
void rt_runner_stop(struct rt_runner *r, int grace_ms);

/* Name of a state ("starting", "ready", "backoff", "crash_loop",
 * "load_failed", "stopped"). */
const char *rt_runner_state_name(enum rt_runner_state s);

#endif
