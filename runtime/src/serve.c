/* OpenAI-compatible local HTTP API over libmicrohttpd (serve.h). This file
 * is the only one touching libmicrohttpd.
 *
 * The listening sockets are ours; libmicrohttpd (and the TLS stack Debian
 * builds it with: gnutls, p11-kit, nettle, gmp, ... about 2.4 MiB of
 * resident pages) is loaded with dlopen() when the first connection
 * arrives, so an agent nobody calls does not carry it (docs/serving.md,
 * "Memory"). */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <errno.h>
#include <poll.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "flotilla/error.h"
#include "flotilla/json.h"
#include "flotilla/serve.h"
#include "flotilla/util.h"

#define MAX_MODELS_LISTED 32
#define STATUS_JSON_BYTES 8192
#define JSON_MAX_DEPTH 8

#ifndef FL_MHD_SONAME
#define FL_MHD_SONAME "libmicrohttpd.so.12"
#endif

/* The libmicrohttpd functions used, resolved once per process. */
static struct {
	__typeof__(MHD_start_daemon) *start_daemon;
	__typeof__(MHD_stop_daemon) *stop_daemon;
	__typeof__(MHD_quiesce_daemon) *quiesce_daemon;
	__typeof__(MHD_get_daemon_info) *get_daemon_info;
	__typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
	__typeof__(MHD_create_response_from_callback) *create_response_from_callback;
	__typeof__(MHD_add_response_header) *add_response_header;
	__typeof__(MHD_queue_response) *queue_response;
	__typeof__(MHD_destroy_response) *destroy_response;
	__typeof__(MHD_lookup_connection_value) *lookup_connection_value;
	int err;
} mhd;
static pthread_once_t mhd_once = PTHREAD_ONCE_INIT;

static void mhd_load(void)
{
	void *dl = dlopen(FL_MHD_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!dl) {
		fprintf(stderr, "serve: %s\n", dlerror());
		mhd.err = -FL_EUNSUPPORTED;
		return;
	}
#define SYM(f)                                                   \
	do {                                                     \
		*(void **)&mhd.f = dlsym(dl, "MHD_" #f);          \
		if (!mhd.f)                                      \
			mhd.err = -FL_EUNSUPPORTED;              \
	} while (0)
	SYM(start_daemon);
	SYM(stop_daemon);
	SYM(quiesce_daemon);
	SYM(get_daemon_info);
	SYM(create_response_from_buffer);
	SYM(create_response_from_callback);
	SYM(add_response_header);
	SYM(queue_response);
	SYM(destroy_response);
	SYM(lookup_connection_value);
#undef SYM
}

struct rt_serve {
	struct rt_serve_config cfg;
	char *token, *unix_path;
	int tcp_fd, unx_fd;      /* listening; owned by MHD once its daemon runs */
	struct MHD_Daemon *tcp, *unx;
	uint16_t port;
	atomic_uint_fast64_t next_id;
	pthread_t lazy_th;       /* waits for the first connection */
	int wake[2];
	int start_err;           /* the daemons could not be started */
	atomic_int active;       /* requests in flight (rt_serve_stop drains them) */
	atomic_bool cancel;      /* drain time is up: streams stop generating */
};

/* per connection */
struct conn {
	char *body;
	size_t len, cap;
	bool too_big;
};

/* ------------------------------------------------------------ helpers */

static const char *finish_reason(enum rt_stop_reason r)
{
	return (r == RT_STOP_MAX_TOKENS || r == RT_STOP_CONTEXT) ? "length" : "stop";
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *type,
				 char *text)
{
	struct MHD_Response *res = mhd.create_response_from_buffer(strlen(text), text,
								    MHD_RESPMEM_MUST_FREE);
	if (!res) {
		free(text);
		return MHD_NO;
	}
	mhd.add_response_header(res, "Content-Type", type);
	enum MHD_Result r = mhd.queue_response(c, status, res);
	mhd.destroy_response(res);
	return r;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *j)
{
	char *s = j ? fl_json_print(j) : NULL;
	cJSON_Delete(j);
	if (!s)
		return MHD_NO;
	return send_text(c, status, "application/json", s);
}

static cJSON *error_json(const char *msg, const char *type, const char *param, const char *code)
{
	cJSON *root = cJSON_CreateObject(), *e = cJSON_CreateObject();
	if (!root || !e) {
		cJSON_Delete(root);
		cJSON_Delete(e);
		return NULL;
	}
	cJSON_AddItemToObject(root, "error", e);
	cJSON_AddStringToObject(e, "message", msg);
	cJSON_AddStringToObject(e, "type", type);
	if (param)
		cJSON_AddStringToObject(e, "param", param);
	else
		cJSON_AddNullToObject(e, "param");
	if (code)
		cJSON_AddStringToObject(e, "code", code);
	else
		cJSON_AddNullToObject(e, "code");
	return root;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *msg,
				  const char *param, const char *code)
{
	const char *type = status >= 500 ? "server_error"
			   : status == 401 ? "authentication_error"
					   : "invalid_request_error";
	return send_json(c, status, error_json(msg, type, param, code));
}

/* HTTP status and OpenAI code of a generate / acquire error. */
static unsigned err_status(int err, const char **ret_code)
{
	switch (err) {
	case -FL_EBUSY: *ret_code = "overloaded"; return 503;
	case -FL_ESTATE: *ret_code = "model_not_ready"; return 503;
	case -ENOENT: *ret_code = "model_not_found"; return 404;
	case -FL_ETOOBIG: *ret_code = "context_length_exceeded"; return 400;
	case -EINVAL:
	case -FL_ERANGE: *ret_code = "invalid_value"; return 400;
	case -FL_EUNSUPPORTED: *ret_code = "unsupported"; return 400;
	case -FL_ECRASH: *ret_code = "runner_crashed"; return 500;
	case -FL_ETIMEOUT: *ret_code = "timeout"; return 504;
	default: *ret_code = "internal_error"; return 500;
	}
}

static enum MHD_Result send_gen_error(struct MHD_Connection *c, int err)
{
	const char *code;
	unsigned st = err_status(err, &code);
	return send_error(c, st, fl_strerror(err), NULL, code);
}

/* How a request the runner did not run is answered. */
struct run_err {
	unsigned status;
	const char *code;
	char msg[256];
};

/* ERR from RUNNER (still acquired) for MODEL: a runner that gave up (crash
 * loop) or whose model did not load says so with a 503 the client can act
 * on; other errors as err_status(). */
static void run_err_of(struct rt_runner *runner, const char *model, int err, struct run_err *ret)
{
	ret->status = err_status(err, &ret->code);
	snprintf(ret->msg, sizeof(ret->msg), "%s", fl_strerror(err));
	if (err != -FL_ESTATE && err != -FL_ECRASH)
		return;
	struct rt_runner_status rs;
	rt_runner_get_status(runner, &rs);
	if (rs.state == RT_RUNNER_CRASH_LOOP) {
		ret->status = 503;
		ret->code = "model_crash_loop";
		snprintf(ret->msg, sizeof(ret->msg),
			 "model %s is in a crash loop: its runner crashed %u times (the last "
			 "ones within %.1f s, restarted with backoff) and is not restarted until "
			 "a new version is installed or the agent restarts",
			 model, rs.n_crashes, rs.crash_loop_ms / 1000.0);
	} else if (rs.state == RT_RUNNER_LOAD_FAILED) {
		ret->status = 503;
		ret->code = "model_load_failed";
		snprintf(ret->msg, sizeof(ret->msg), "model %s failed to load: %s", model,
			 fl_strerror(rs.last_error < 0 ? rs.last_error : -FL_ESTATE));
	}
}

static enum MHD_Result send_run_err(struct MHD_Connection *c, const struct run_err *e)
{
	return send_error(c, e->status, e->msg, NULL, e->code);
}

/* Valid UTF-8 of IN[0..LEN): invalid bytes and NUL become U+FFFD (the runner
 * already sends clean text, see docs/serving.md "Generated bytes"; this keeps
 * a NUL from cutting a cJSON string short whatever the backend). With HOLD, an
 * incomplete but so far valid sequence at the end is not consumed. Appends
 * to OUT (capacity >= 3 * LEN + 1); returns bytes consumed. */
static size_t utf8_clean(const uint8_t *in, size_t len, bool hold, char *out, size_t *out_len)
{
	size_t i = 0, o = *out_len;
	while (i < len) {
		uint8_t b = in[i];
		size_t n = b < 0x80 ? 1 : (b & 0xe0) == 0xc0 ? 2 : (b & 0xf0) == 0xe0 ? 3
				  : (b & 0xf8) == 0xf0 ? 4 : 0;
		if (n == 1 && b) {
			out[o++] = (char)b;
			i++;
			continue;
		}
		bool ok = n > 1 && !(n == 2 && b < 0xc2) && !(n == 4 && b > 0xf4);
		size_t k = 1;
		for (; ok && k < n && i + k < len; k++) {
			uint8_t cb = in[i + k];
			if ((cb & 0xc0) != 0x80)
				ok = false;
			/* overlong / surrogate / > U+10FFFF */
			if (k == 1 && ((b == 0xe0 && cb < 0xa0) || (b == 0xed && cb > 0x9f) ||
				       (b == 0xf0 && cb < 0x90) || (b == 0xf4 && cb > 0x8f)))
				ok = false;
		}
		if (ok && i + n > len) { /* incomplete at the end */
			if (hold)
				break;
			ok = false;
		}
		if (!ok) {
			memcpy(out + o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
			continue;
		}
		memcpy(out + o, in + i, n);
		o += n;
		i += n;
	}
	out[o] = '\0';
	*out_len = o;
	return i;
}

static char *clean_text(const char *text, size_t len)
{
	char *out = malloc(3 * len + 1);
	if (!out)
		return NULL;
	size_t o = 0;
	utf8_clean((const uint8_t *)text, len, false, out, &o);
	return out;
}

/* ------------------------------------------------------- request parse */

struct parsed {
	size_t body_len;
	cJSON *root;
	bool chat, stream;
	const char *model;
	struct rt_gen_request req;
	struct rt_chat_msg *msgs;
	const char *stops[RT_BACKEND_MAX_STOP];
	const char *err_msg, *err_param;
};

static void parsed_free(struct parsed *p)
{
	free(p->msgs);
	cJSON_Delete(p->root);
}

/* Tell the observer (telemetry) how a request that reached RUNNER ended. */
static void observe(const struct rt_serve *s, struct rt_runner *runner, const char *model,
		    const struct parsed *p, int64_t t0_ns, int err, const struct rt_gen_result *res)
{
	if (!s->cfg.ops.observe)
		return;
	struct rt_serve_obs o = {.model = model,
				 .err = err,
				 .latency_us = (fl_mono_ns() - t0_ns) / 1000,
				 .request_bytes = p->body_len,
				 .req = &p->req,
				 .res = err < 0 ? NULL : res};
	s->cfg.ops.observe(s->cfg.userdata, runner, &o);
}

/* 0, or -1 with p->err_msg / err_param set (400). */
static int parse_request(const struct rt_serve *s, const char *body, size_t len, bool chat,
			 struct parsed *p)
{
	const struct rt_serve_config *c = &s->cfg;
	p->chat = chat;
	p->body_len = len;
	rt_gen_request_default(&p->req);
	rt_sampling_default(&p->req.sampling);
	p->req.sampling.seed = 0;
	if (fl_json_parse(body, len, c->max_body_bytes, JSON_MAX_DEPTH, &p->root) < 0 ||
	    !cJSON_IsObject(p->root)) {
		p->err_msg = "request body is not a JSON object";
		return -1;
	}
	cJSON *root = p->root;
	if (fl_json_get_str_opt(root, "model", "", &p->model) < 0) {
		p->err_msg = "model must be a string";
		p->err_param = "model";
		return -1;
	}
	if (fl_json_get_bool_opt(root, "stream", false, &p->stream) < 0) {
		p->err_msg = "stream must be a boolean";
		p->err_param = "stream";
		return -1;
	}
	size_t total = 0;
	if (chat) {
		const cJSON *arr;
		if (fl_json_get_arr(root, "messages", &arr) < 0 || cJSON_GetArraySize(arr) < 1) {
			p->err_msg = "messages must be a non-empty array";
			p->err_param = "messages";
			return -1;
		}
		int n = cJSON_GetArraySize(arr);
		if (n > RT_BACKEND_MAX_MESSAGES) {
			p->err_msg = "too many messages";
			p->err_param = "messages";
			return -1;
		}
		p->msgs = calloc((size_t)n, sizeof(*p->msgs));
		if (!p->msgs) {
			p->err_msg = "out of memory";
			return -1;
		}
		int i = 0;
		const cJSON *m;
		cJSON_ArrayForEach(m, arr)
		{
			if (!cJSON_IsObject(m) || fl_json_get_str(m, "role", &p->msgs[i].role) < 0 ||
			    fl_json_get_str(m, "content", &p->msgs[i].content) < 0) {
				p->err_msg = "each message needs string role and content";
				p->err_param = "messages";
				return -1;
			}
			const char *r = p->msgs[i].role;
			if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
				p->err_msg = "role must be system, user or assistant";
				p->err_param = "messages";
				return -1;
			}
			total += strlen(p->msgs[i].content);
			i++;
		}
		p->req.messages = p->msgs;
		p->req.n_messages = (size_t)n;
	} else {
		if (fl_json_get_str(root, "prompt", &p->req.prompt) < 0) {
			p->err_msg = "prompt must be a string";
			p->err_param = "prompt";
			return -1;
		}
		total = strlen(p->req.prompt);
	}
	if (total > c->max_prompt_bytes) {
		p->err_msg = "prompt longer than this server accepts";
		p->err_param = chat ? "messages" : "prompt";
		return -1;
	}
	int64_t v;
	const char *key = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens")
				  ? "max_completion_tokens" : "max_tokens";
	if (fl_json_get_int_opt(root, key, 1, c->max_tokens_limit, c->default_max_tokens, &v) < 0) {
		p->err_msg = "max_tokens must be an integer between 1 and the server's limit";
		p->err_param = key;
		return -1;
	}
	p->req.max_tokens = (int)v;
	if (fl_json_get_int_opt(root, "n", 1, 1, 1, &v) < 0) {
		p->err_msg = "only n = 1 is supported";
		p->err_param = "n";
		return -1;
	}
	double d;
	struct { const char *key; double lo, hi; float *dst; } fl[] = {
		{"temperature", 0, 2, &p->req.sampling.temperature},
		{"top_p", 0, 1, &p->req.sampling.top_p},
		{"min_p", 0, 1, &p->req.sampling.min_p},
		{"repeat_penalty", 0.01, 10, &p->req.sampling.repeat_penalty},
	};
	for (size_t i = 0; i < sizeof(fl) / sizeof(fl[0]); i++) {
		if (fl_json_get_double_opt(root, fl[i].key, fl[i].lo, fl[i].hi, *fl[i].dst, &d) < 0) {
			p->err_msg = "number out of range";
			p->err_param = fl[i].key;
			return -1;
		}
		*fl[i].dst = (float)d;
	}
	if (p->req.sampling.top_p <= 0) {
		p->err_msg = "top_p must be in (0, 1]";
		p->err_param = "top_p";
		return -1;
	}
	if (fl_json_get_int_opt(root, "top_k", 0, 100000, p->req.sampling.top_k, &v) < 0) {
		p->err_msg = "top_k out of range";
		p->err_param = "top_k";
		return -1;
	}
	p->req.sampling.top_k = (int)v;
	if (fl_json_get_int_opt(root, "seed", 0, (int64_t)1 << 52, 0, &v) < 0) {
		p->err_msg = "seed out of range";
		p->err_param = "seed";
		return -1;
	}
	p->req.sampling.seed = (uint64_t)v;
	const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
	if (stop && !cJSON_IsNull(stop)) {
		size_t n = 0;
		if (cJSON_IsString(stop)) {
			p->stops[n++] = stop->valuestring;
		} else if (cJSON_IsArray(stop) && cJSON_GetArraySize(stop) <= RT_BACKEND_MAX_STOP) {
			const cJSON *it;
			cJSON_ArrayForEach(it, stop)
			{
				if (!cJSON_IsString(it)) {
					n = SIZE_MAX;
					break;
				}
				p->stops[n++] = it->valuestring;
			}
		} else {
			n = SIZE_MAX;
		}
		for (size_t i = 0; n != SIZE_MAX && i < n; i++)
			if (!p->stops[i][0] || strlen(p->stops[i]) > RT_BACKEND_MAX_STOP_BYTES)
				n = SIZE_MAX;
		if (n == SIZE_MAX) {
			p->err_msg = "stop must be a string or an array of up to 16 non-empty strings";
			p->err_param = "stop";
			return -1;
		}
		p->req.stop = p->stops;
		p->req.n_stop = n;
	}
	return 0;
}

/* ------------------------------------------------------------- output */

static cJSON *base_obj(const char *id, const char *object, const char *model)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "id", id);
	cJSON_AddStringToObject(o, "object", object);
	cJSON_AddNumberToObject(o, "created", (double)time(NULL));
	cJSON_AddStringToObject(o, "model", model);
	return o;
}

static void add_usage(cJSON *o, const struct rt_gen_result *res)
{
	cJSON *u = cJSON_AddObjectToObject(o, "usage");
	if (!u)
		return;
	cJSON_AddNumberToObject(u, "prompt_tokens", res->n_prompt);
	cJSON_AddNumberToObject(u, "completion_tokens", res->n_gen);
	cJSON_AddNumberToObject(u, "total_tokens", res->n_prompt + res->n_gen);
}

/* A choice object: text / message / delta. TEXT NULL: no content. FINISH NULL: null. */
static cJSON *choice(bool chat, bool chunk, const char *text, bool role, const char *finish)
{
	cJSON *ch = cJSON_CreateObject();
	if (!ch)
		return NULL;
	cJSON_AddNumberToObject(ch, "index", 0);
	if (chat) {
		cJSON *m = cJSON_AddObjectToObject(ch, chunk ? "delta" : "message");
		if (m && role)
			cJSON_AddStringToObject(m, "role", "assistant");
		if (m && text)
			cJSON_AddStringToObject(m, "content", text);
	} else {
		cJSON_AddStringToObject(ch, "text", text ? text : "");
		cJSON_AddNullToObject(ch, "logprobs");
	}
	if (finish)
		cJSON_AddStringToObject(ch, "finish_reason", finish);
	else
		cJSON_AddNullToObject(ch, "finish_reason");
	return ch;
}

static char *chunk_event(bool chat, const char *id, const char *model, const char *text, bool role,
			 const char *finish)
{
	cJSON *o = base_obj(id, chat ? "chat.completion.chunk" : "text_completion", model);
	cJSON *arr = o ? cJSON_AddArrayToObject(o, "choices") : NULL;
	cJSON *ch = arr ? choice(chat, true, text, role, finish) : NULL;
	if (!ch) {
		cJSON_Delete(o);
		return NULL;
	}
	cJSON_AddItemToArray(arr, ch);
	char *js = fl_json_print(o);
	cJSON_Delete(o);
	if (!js)
		return NULL;
	size_t n = strlen(js) + 9;
	char *ev = malloc(n);
	if (ev)
		snprintf(ev, n, "data: %s\n\n", js);
	free(js);
	return ev;
}

/* ------------------------------------------------------------ streaming */

struct stream {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int refs;              /* worker thread + response */
	char *out;             /* SSE bytes not yet sent */
	size_t out_len, out_cap;
	uint8_t pend[8];       /* incomplete UTF-8 held back */
	size_t pend_len;
	bool started, done, gone, role_sent;
	int err;
	struct run_err rerr;   /* ERR as answered (set with it) */
	/* immutable while the worker runs */
	struct rt_serve *srv;
	struct parsed p;
	struct rt_runner *runner;
	char id[48], model[RT_SERVE_MODEL_ID_BYTES];
};

static void stream_unref(struct stream *st)
{
	pthread_mutex_lock(&st->lock);
	bool last = --st->refs == 0;
	pthread_mutex_unlock(&st->lock);
	if (!last)
		return;
	parsed_free(&st->p);
	free(st->out);
	pthread_mutex_destroy(&st->lock);
	pthread_cond_destroy(&st->cond);
	free(st);
}

/* With LOCK held. */
static int out_add(struct stream *st, const char *ev)
{
	if (!ev)
		return -ENOMEM;
	size_t n = strlen(ev);
	if (st->out_len + n > st->out_cap) {
		size_t nc = st->out_cap ? st->out_cap * 2 : 4096;
		while (nc < st->out_len + n)
			nc *= 2;
		char *nb = realloc(st->out, nc);
		if (!nb)
			return -ENOMEM;
		st->out = nb;
		st->out_cap = nc;
	}
	memcpy(st->out + st->out_len, ev, n);
	st->out_len += n;
	return 0;
}

/* With LOCK held: a delta event for TEXT (plus held-back bytes); FLUSH: no hold. */
static int out_delta(struct stream *st, const char *text, size_t len, bool flush)
{
	uint8_t *in = malloc(st->pend_len + len + 1);
	char *clean = malloc(3 * (st->pend_len + len) + 1);
	int err = 0;
	if (!in || !clean) {
		err = -ENOMEM;
		goto out;
	}
	memcpy(in, st->pend, st->pend_len);
	memcpy(in + st->pend_len, text, len);
	size_t n = st->pend_len + len, o = 0;
	size_t used = utf8_clean(in, n, !flush, clean, &o);
	st->pend_len = n - used; /* < 4 */
	memcpy(st->pend, in + used, st->pend_len);
	if (o == 0 && !(st->p.chat && !st->role_sent))
		goto out;
	char *ev = chunk_event(st->p.chat, st->id, st->model, clean, !st->role_sent, NULL);
	st->role_sent = true;
	err = out_add(st, ev);
	free(ev);
out:
	free(in);
	free(clean);
	return err;
}

static int stream_on_text(void *ud, const char *text, size_t len)
{
	struct stream *st = ud;
	pthread_mutex_lock(&st->lock);
	int stop = st->gone || atomic_load(&st->srv->cancel);
	if (!stop && out_delta(st, text, len, false) < 0)
		stop = 1;
	st->started = true;
	pthread_cond_broadcast(&st->cond);
	pthread_mutex_unlock(&st->lock);
	return stop;
}

static void *stream_worker(void *arg)
{
	struct stream *st = arg;
	struct rt_gen_result res;
	st->p.req.on_text = stream_on_text;
	st->p.req.userdata = st;
	int64_t t0 = fl_mono_ns();
	int err = rt_runner_generate(st->runner, &st->p.req, &res);
	observe(st->srv, st->runner, st->model, &st->p, t0, err, &res);
	struct run_err rerr = {0};
	if (err < 0)
		run_err_of(st->runner, st->model, err, &rerr);
	st->srv->cfg.ops.release(st->srv->cfg.userdata, st->runner);
	pthread_mutex_lock(&st->lock);
	st->err = err;
	st->rerr = rerr;
	if (err == 0) {
		if (st->pend_len || (st->p.chat && !st->role_sent))
			out_delta(st, "", 0, true);
		char *ev = chunk_event(st->p.chat, st->id, st->model, st->p.chat ? NULL : "", false,
				       finish_reason(res.stop_reason));
		out_add(st, ev);
		free(ev);
		rt_gen_result_free(&res);
	} else if (st->started) {
		cJSON *e = error_json(rerr.msg, "server_error", NULL, rerr.code);
		char *js = e ? fl_json_print(e) : NULL;
		cJSON_Delete(e);
		if (js) {
			size_t n = strlen(js) + 9;
			char *ev = malloc(n);
			if (ev) {
				snprintf(ev, n, "data: %s\n\n", js);
				out_add(st, ev);
			}
			free(ev);
			free(js);
		}
	}
	if (err == 0 || st->started)
		out_add(st, "data: [DONE]\n\n");
	st->done = true;
	pthread_cond_broadcast(&st->cond);
	pthread_mutex_unlock(&st->lock);
	stream_unref(st);
	return NULL;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	struct stream *st = cls;
	pthread_mutex_lock(&st->lock);
	while (st->out_len == 0 && !st->done)
		pthread_cond_wait(&st->cond, &st->lock);
	ssize_t ret;
	if (st->out_len) {
		size_t n = st->out_len < max ? st->out_len : max;
		memcpy(buf, st->out, n);
		memmove(st->out, st->out + n, st->out_len - n);
		st->out_len -= n;
		ret = (ssize_t)n;
	} else {
		ret = MHD_CONTENT_READER_END_OF_STREAM;
	}
	pthread_mutex_unlock(&st->lock);
	return ret;
}

static void stream_free_cb(void *cls)
{
	struct stream *st = cls;
	pthread_mutex_lock(&st->lock);
	st->gone = true; /* a client that left cancels the generation */
	pthread_mutex_unlock(&st->lock);
	stream_unref(st);
}

static enum MHD_Result start_stream(struct rt_serve *s, struct MHD_Connection *c, struct parsed *p,
				    struct rt_runner *runner, const char *model)
{
	struct stream *st = calloc(1, sizeof(*st));
	if (!st) {
		s->cfg.ops.release(s->cfg.userdata, runner);
		parsed_free(p);
		return send_error(c, 500, "out of memory", NULL, "internal_error");
	}
	pthread_mutex_init(&st->lock, NULL);
	pthread_cond_init(&st->cond, NULL);
	st->refs = 2;
	st->srv = s;
	st->p = *p;
	if (p->req.stop == p->stops)
		st->p.req.stop = st->p.stops;
	st->runner = runner;
	snprintf(st->id, sizeof(st->id), "%s-%llu", p->chat ? "chatcmpl" : "cmpl",
		 (unsigned long long)atomic_fetch_add(&s->next_id, 1));
	snprintf(st->model, sizeof(st->model), "%s", model);
	pthread_t th;
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	int e = pthread_create(&th, &at, stream_worker, st);
	pthread_attr_destroy(&at);
	if (e) {
		s->cfg.ops.release(s->cfg.userdata, runner);
		st->refs = 1;
		stream_unref(st);
		return send_error(c, 500, "cannot start a thread", NULL, "internal_error");
	}
	/* headers only once the request is running: a full queue is a plain 503 */
	pthread_mutex_lock(&st->lock);
	while (!st->started && !st->done)
		pthread_cond_wait(&st->cond, &st->lock);
	int err = st->started ? 0 : st->err;
	struct run_err rerr = st->rerr;
	pthread_mutex_unlock(&st->lock);
	if (err < 0) {
		stream_unref(st);
		return send_run_err(c, &rerr);
	}
	struct MHD_Response *res =
		mhd.create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_free_cb);
	if (!res) {
		stream_free_cb(st);
		return MHD_NO;
	}
	mhd.add_response_header(res, "Content-Type", "text/event-stream");
	mhd.add_response_header(res, "Cache-Control", "no-cache");
	enum MHD_Result r = mhd.queue_response(c, 200, res);
	mhd.destroy_response(res);
	return r;
}

/* ------------------------------------------------------------ handlers */

static enum MHD_Result handle_generate(struct rt_serve *s, struct MHD_Connection *c,
				       struct conn *cn, bool chat)
{
	struct parsed p = {0};
	if (parse_request(s, cn->body ? cn->body : "", cn->len, chat, &p) < 0) {
		enum MHD_Result r = send_error(c, 400, p.err_msg, p.err_param, "invalid_request");
		parsed_free(&p);
		return r;
	}
	struct rt_runner *runner = NULL;
	char model[RT_SERVE_MODEL_ID_BYTES] = "";
	int err = s->cfg.ops.acquire(s->cfg.userdata, p.model, &runner, model);
	if (err < 0) {
		parsed_free(&p);
		return send_gen_error(c, err);
	}
	if (p.stream)
		return start_stream(s, c, &p, runner, model);
	struct rt_gen_result res;
	int64_t t0 = fl_mono_ns();
	err = rt_runner_generate(runner, &p.req, &res);
	observe(s, runner, model, &p, t0, err, &res);
	struct run_err rerr;
	if (err < 0)
		run_err_of(runner, model, err, &rerr);
	s->cfg.ops.release(s->cfg.userdata, runner);
	if (err < 0) {
		parsed_free(&p);
		return send_run_err(c, &rerr);
	}
	char id[48];
	snprintf(id, sizeof(id), "%s-%llu", chat ? "chatcmpl" : "cmpl",
		 (unsigned long long)atomic_fetch_add(&s->next_id, 1));
	char *text = clean_text(res.text, res.text_len);
	cJSON *o = base_obj(id, chat ? "chat.completion" : "text_completion", model);
	cJSON *arr = o ? cJSON_AddArrayToObject(o, "choices") : NULL;
	cJSON *ch = arr && text ? choice(chat, false, text, true, finish_reason(res.stop_reason)) : NULL;
	if (ch) {
		cJSON_AddItemToArray(arr, ch);
		add_usage(o, &res);
	}
	free(text);
	rt_gen_result_free(&res);
	parsed_free(&p);
	if (!ch) {
		cJSON_Delete(o);
		return send_error(c, 500, "out of memory", NULL, "internal_error");
	}
	return send_json(c, 200, o);
}

/* A float as JSON: the shortest decimal that reads back as the same float
 * (not the float's exact double expansion); NaN / inf as null. */
static cJSON *float_json(float f)
{
	if (!isfinite(f))
		return cJSON_CreateNull();
	char buf[32];
	snprintf(buf, sizeof(buf), "%.9g", (double)f);
	for (int prec = 6; prec < 9; prec++) { /* shorter when it round-trips */
		char b2[32];
		snprintf(b2, sizeof(b2), "%.*g", prec, (double)f);
		if (strtof(b2, NULL) == f) {
			memcpy(buf, b2, sizeof(buf));
			break;
		}
	}
	return cJSON_CreateNumber(strtod(buf, NULL));
}

static enum MHD_Result predict_bad(struct MHD_Connection *c, cJSON *root, const char *msg)
{
	cJSON_Delete(root);
	return send_error(c, 400, msg, "rows", "invalid_request");
}

/* POST /v1/predict {"model": "...", "rows": [[f, f, null, ...], ...]}: feature
 * rows in (null = missing), one prediction per row out. */
static enum MHD_Result handle_predict(struct rt_serve *s, struct MHD_Connection *c, struct conn *cn)
{
	cJSON *root = NULL;
	char msg[192];
	if (fl_json_parse(cn->body ? cn->body : "", cn->len, s->cfg.max_body_bytes, JSON_MAX_DEPTH,
			  &root) < 0 ||
	    !cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return send_error(c, 400, "request body is not a JSON object", NULL, "invalid_request");
	}
	const char *model = "";
	if (fl_json_get_str_opt(root, "model", "", &model) < 0) {
		cJSON_Delete(root);
		return send_error(c, 400, "model must be a string", "model", "invalid_request");
	}
	const cJSON *rows = cJSON_GetObjectItemCaseSensitive(root, "rows");
	int n_rows = cJSON_IsArray(rows) ? cJSON_GetArraySize(rows) : 0;
	if (n_rows < 1)
		return predict_bad(c, root, "rows must be a non-empty array of rows (arrays of numbers, null = missing)");
	if (n_rows > s->cfg.max_predict_rows) {
		snprintf(msg, sizeof(msg), "%d rows; at most %d per request", n_rows,
			 s->cfg.max_predict_rows);
		return predict_bad(c, root, msg);
	}
	const cJSON *first = cJSON_GetArrayItem(rows, 0);
	int n_cols = cJSON_IsArray(first) ? cJSON_GetArraySize(first) : 0;
	if (n_cols < 1 || n_cols > RT_PREDICT_MAX_COLS) {
		snprintf(msg, sizeof(msg), "rows[0] must be an array of 1 to %d numbers (null = missing)",
			 RT_PREDICT_MAX_COLS);
		return predict_bad(c, root, msg);
	}
	if ((size_t)n_rows * (size_t)n_cols > RT_PREDICT_MAX_VALUES) {
		snprintf(msg, sizeof(msg), "%d x %d values; at most %u per request", n_rows, n_cols,
			 RT_PREDICT_MAX_VALUES);
		return predict_bad(c, root, msg);
	}
	float *vals = malloc((size_t)n_rows * (size_t)n_cols * sizeof(float));
	if (!vals) {
		cJSON_Delete(root);
		return send_error(c, 500, "out of memory", NULL, "internal_error");
	}
	int i = 0;
	const cJSON *row;
	msg[0] = '\0';
	cJSON_ArrayForEach(row, rows)
	{
		if (!cJSON_IsArray(row)) {
			snprintf(msg, sizeof(msg), "rows[%d] must be an array of numbers (null = missing)", i);
			break;
		}
		int n = cJSON_GetArraySize(row);
		if (n != n_cols) {
			snprintf(msg, sizeof(msg), "rows[%d] has %d values, rows[0] has %d", i, n, n_cols);
			break;
		}
		int j = 0;
		const cJSON *v;
		cJSON_ArrayForEach(v, row)
		{
			if (cJSON_IsNull(v)) {
				vals[(size_t)i * n_cols + j] = NAN;
			} else if (cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
				   fabs(v->valuedouble) <= 3.4e38) {
				vals[(size_t)i * n_cols + j] = (float)v->valuedouble;
			} else {
				snprintf(msg, sizeof(msg), "rows[%d][%d] must be a number or null", i, j);
				break;
			}
			j++;
		}
		if (msg[0])
			break;
		i++;
	}
	if (msg[0]) {
		free(vals);
		return predict_bad(c, root, msg);
	}
	struct rt_runner *runner = NULL;
	char id_model[RT_SERVE_MODEL_ID_BYTES] = "";
	int err = s->cfg.ops.acquire(s->cfg.userdata, model, &runner, id_model);
	cJSON_Delete(root);
	if (err < 0) {
		free(vals);
		return send_gen_error(c, err);
	}
	struct rt_predict_request req = {.values = vals, .n_rows = (size_t)n_rows,
					 .n_cols = (size_t)n_cols};
	struct rt_predict_result res;
	char why[256] = "";
	int64_t t0 = fl_mono_ns();
	err = rt_runner_predict(runner, &req, &res, why, sizeof(why));
	if (s->cfg.ops.observe) { /* telemetry */
		struct rt_serve_obs ob = {.model = id_model, .err = err,
					  .latency_us = (fl_mono_ns() - t0) / 1000,
					  .request_bytes = cn->len, .pred = err < 0 ? NULL : &res};
		s->cfg.ops.observe(s->cfg.userdata, runner, &ob);
	}
	struct run_err rerr;
	if (err < 0)
		run_err_of(runner, id_model, err, &rerr);
	s->cfg.ops.release(s->cfg.userdata, runner);
	free(vals);
	if (err < 0 && (!strcmp(rerr.code, "model_crash_loop") ||
			!strcmp(rerr.code, "model_load_failed")))
		return send_run_err(c, &rerr);
	if (err < 0) {
		const char *code;
		unsigned st = err_status(err, &code);
		if (err == -FL_EUNSUPPORTED)
			snprintf(why, sizeof(why), "model %s does not take feature rows", id_model);
		return send_error(c, st, why[0] ? why : fl_strerror(err),
				  st == 400 ? "rows" : NULL, code);
	}
	char id[48];
	snprintf(id, sizeof(id), "pred-%llu", (unsigned long long)atomic_fetch_add(&s->next_id, 1));
	cJSON *o = base_obj(id, "prediction", id_model);
	bool ok = o != NULL;
	if (ok) {
		cJSON_AddStringToObject(o, "objective", res.objective);
		cJSON_AddStringToObject(o, "kind", rt_predict_kind_name(res.kind));
	}
	cJSON *preds = ok ? cJSON_AddArrayToObject(o, "predictions") : NULL;
	bool classes = res.kind != RT_PREDICT_VALUE;
	cJSON *cls = ok && classes ? cJSON_AddArrayToObject(o, "classes") : NULL;
	ok = preds && (!classes || cls);
	for (size_t r = 0; ok && r < res.n_rows; r++) {
		const float *v = res.values + r * res.n_out;
		cJSON *p;
		if (res.n_out == 1) {
			p = float_json(v[0]);
		} else {
			p = cJSON_CreateArray();
			for (size_t k = 0; p && k < res.n_out; k++)
				cJSON_AddItemToArray(p, float_json(v[k]));
		}
		ok = p != NULL;
		cJSON_AddItemToArray(preds, p);
		if (classes)
			cJSON_AddItemToArray(cls, cJSON_CreateNumber(rt_predict_class(&res, r)));
	}
	cJSON *u = ok ? cJSON_AddObjectToObject(o, "usage") : NULL;
	if (u) {
		cJSON_AddNumberToObject(u, "rows", (double)res.n_rows);
		cJSON_AddNumberToObject(u, "features", n_cols);
		cJSON_AddNumberToObject(u, "backend_ms", res.ms);
	}
	rt_predict_result_free(&res);
	if (!u) {
		cJSON_Delete(o);
		return send_error(c, 500, "out of memory", NULL, "internal_error");
	}
	return send_json(c, 200, o);
}

static enum MHD_Result handle_models(struct rt_serve *s, struct MHD_Connection *c)
{
	char ids[MAX_MODELS_LISTED][RT_SERVE_MODEL_ID_BYTES];
	int n = s->cfg.ops.list_models(s->cfg.userdata, ids, MAX_MODELS_LISTED);
	cJSON *o = cJSON_CreateObject();
	cJSON *arr = o ? cJSON_AddArrayToObject(o, "data") : NULL;
	if (!arr) {
		cJSON_Delete(o);
		return MHD_NO;
	}
	cJSON_AddStringToObject(o, "object", "list");
	for (int i = 0; i < n && i < MAX_MODELS_LISTED; i++) {
		cJSON *m = cJSON_CreateObject();
		if (!m)
			break;
		ids[i][RT_SERVE_MODEL_ID_BYTES - 1] = '\0';
		cJSON_AddStringToObject(m, "id", ids[i]);
		cJSON_AddStringToObject(m, "object", "model");
		cJSON_AddNumberToObject(m, "created", 0);
		cJSON_AddStringToObject(m, "owned_by", "flotilla");
		cJSON_AddItemToArray(arr, m);
	}
	return send_json(c, 200, o);
}

static enum MHD_Result handle_health(struct rt_serve *s, struct MHD_Connection *c)
{
	struct rt_runner *r = NULL;
	char id[RT_SERVE_MODEL_ID_BYTES];
	int err = s->cfg.ops.acquire(s->cfg.userdata, "", &r, id);
	bool ok = err == 0;
	if (ok) {
		struct rt_runner_status st;
		rt_runner_get_status(r, &st);
		ok = st.state == RT_RUNNER_READY;
		s->cfg.ops.release(s->cfg.userdata, r);
	}
	char *body = strdup(ok ? "{\"status\":\"ok\"}" : "{\"status\":\"unavailable\"}");
	if (!body)
		return MHD_NO;
	return send_text(c, ok ? 200 : 503, "application/json", body);
}

static enum MHD_Result handle_status(struct rt_serve *s, struct MHD_Connection *c)
{
	char *buf = calloc(1, STATUS_JSON_BYTES);
	if (!buf)
		return MHD_NO;
	strcpy(buf, "{}");
	if (s->cfg.ops.status_json && s->cfg.ops.status_json(s->cfg.userdata, buf, STATUS_JSON_BYTES) < 0) {
		free(buf);
		return send_error(c, 500, "status unavailable", NULL, "internal_error");
	}
	buf[STATUS_JSON_BYTES - 1] = '\0';
	return send_text(c, 200, "application/json", buf);
}

static bool token_ok(const struct rt_serve *s, struct MHD_Connection *c)
{
	const char *h = mhd.lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
	if (!h || strncmp(h, "Bearer ", 7) != 0)
		return false;
	h += 7;
	size_t a = strlen(h), b = strlen(s->token);
	unsigned char diff = a != b;
	for (size_t i = 0; i < a && i < b; i++)
		diff |= (unsigned char)(h[i] ^ s->token[i]);
	return diff == 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
			       const char *method, const char *version, const char *upload,
			       size_t *upload_size, void **con_cls, bool is_tcp)
{
	(void)version;
	struct rt_serve *s = cls;
	struct conn *cn = *con_cls;
	if (!cn) {
		cn = calloc(1, sizeof(*cn));
		if (!cn)
			return MHD_NO;
		*con_cls = cn;
		atomic_fetch_add(&s->active, 1); /* until completed() */
		return MHD_YES;
	}
	if (*upload_size) {
		size_t n = *upload_size;
		*upload_size = 0;
		if (cn->too_big || cn->len + n > s->cfg.max_body_bytes) {
			cn->too_big = true;
			return MHD_YES;
		}
		if (cn->len + n + 1 > cn->cap) {
			size_t nc = cn->cap ? cn->cap : 4096;
			while (nc < cn->len + n + 1)
				nc *= 2;
			char *nb = realloc(cn->body, nc);
			if (!nb)
				return MHD_NO;
			cn->body = nb;
			cn->cap = nc;
		}
		memcpy(cn->body + cn->len, upload, n);
		cn->len += n;
		return MHD_YES;
	}
	if (is_tcp && s->token && !token_ok(s, c))
		return send_error(c, 401, "missing or wrong bearer token", NULL, "invalid_api_key");
	if (cn->too_big)
		return send_error(c, 413, "request body too large", NULL, "body_too_large");
	bool post = strcmp(method, "POST") == 0, get = strcmp(method, "GET") == 0;
	if (!strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions")) {
		if (!post)
			return send_error(c, 405, "use POST", NULL, "method_not_allowed");
		return handle_generate(s, c, cn, url[4] == 'c' && url[5] == 'h');
	}
	if (!strcmp(url, "/v1/predict")) {
		if (!post)
			return send_error(c, 405, "use POST", NULL, "method_not_allowed");
		return handle_predict(s, c, cn);
	}
	if (!strcmp(url, "/v1/models") || !strcmp(url, "/healthz") || !strcmp(url, "/v1/status")) {
		if (!get)
			return send_error(c, 405, "use GET", NULL, "method_not_allowed");
		if (url[1] == 'h')
			return handle_health(s, c);
		return url[4] == 'm' ? handle_models(s, c) : handle_status(s, c);
	}
	return send_error(c, 404, "no such endpoint", NULL, "not_found");
}

static enum MHD_Result handler_tcp(void *cls, struct MHD_Connection *c, const char *url,
				   const char *method, const char *version, const char *upload,
				   size_t *upload_size, void **con_cls)
{
	return handler(cls, c, url, method, version, upload, upload_size, con_cls, true);
}

static enum MHD_Result handler_unix(void *cls, struct MHD_Connection *c, const char *url,
				    const char *method, const char *version, const char *upload,
				    size_t *upload_size, void **con_cls)
{
	return handler(cls, c, url, method, version, upload, upload_size, con_cls, false);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
		      enum MHD_RequestTerminationCode toe)
{
	struct rt_serve *s = cls;
	(void)c;
	(void)toe;
	struct conn *cn = *con_cls;
	if (cn) {
		free(cn->body);
		free(cn);
		*con_cls = NULL;
		atomic_fetch_sub(&s->active, 1);
	}
}

/* -------------------------------------------------------------- daemon */

static struct MHD_Daemon *start_daemon(struct rt_serve *s, MHD_AccessHandlerCallback h, int fd)
{
	/* MHD_USE_ITC: MHD_quiesce_daemon() needs it in this mode. */
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
			 MHD_USE_POLL | MHD_USE_ITC;
	return mhd.start_daemon(flags, 0, NULL, NULL, h, s, MHD_OPTION_LISTEN_SOCKET, fd,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->cfg.max_connections,
				MHD_OPTION_CONNECTION_TIMEOUT, 600u, MHD_OPTION_NOTIFY_COMPLETED,
				completed, s, MHD_OPTION_END);
}

/* Load libmicrohttpd and hand it the listening sockets. */
static int activate(struct rt_serve *s)
{
	pthread_once(&mhd_once, mhd_load);
	if (mhd.err)
		return mhd.err;
	if (s->tcp_fd >= 0) {
		s->tcp = start_daemon(s, handler_tcp, s->tcp_fd);
		if (!s->tcp)
			return -FL_ENET;
		s->tcp_fd = -1;
	}
	if (s->unx_fd >= 0) {
		s->unx = start_daemon(s, handler_unix, s->unx_fd);
		if (!s->unx)
			return -FL_ENET;
		s->unx_fd = -1;
	}
	return 0;
}

/* Wait for the first connection on either socket (it stays in the backlog
 * for libmicrohttpd to accept), or for rt_serve_stop(). */
static void *lazy_thread(void *arg)
{
	struct rt_serve *s = arg;
	for (;;) {
		struct pollfd p[3] = {{s->wake[0], POLLIN, 0}, {s->tcp_fd, POLLIN, 0},
				      {s->unx_fd, POLLIN, 0}};
		if (poll(p, 3, -1) < 0 && errno != EINTR)
			break;
		if (p[0].revents)
			break;
		if ((p[1].revents | p[2].revents) & POLLIN) {
			s->start_err = activate(s);
			if (s->start_err < 0) {
				fprintf(stderr, "serve: cannot start the HTTP server: %s\n",
					fl_strerror(s->start_err));
				/* refuse connections rather than leave them waiting */
				for (int *fd = &s->tcp_fd; fd; fd = fd == &s->tcp_fd ? &s->unx_fd : NULL)
					if (*fd >= 0) {
						close(*fd);
						*fd = -1;
					}
			}
			break;
		}
	}
	return NULL;
}

static int tcp_listen(const struct sockaddr_in *sin, int *ret_fd, uint16_t *ret_port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in got;
	socklen_t gl = sizeof(got);
	if (bind(fd, (const struct sockaddr *)sin, sizeof(*sin)) < 0 || listen(fd, 64) < 0 ||
	    getsockname(fd, (struct sockaddr *)&got, &gl) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	*ret_fd = fd;
	*ret_port = ntohs(got.sin_port);
	return 0;
}

static int unix_listen(const char *path, int *ret_fd)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(a.sun_path))
		return -EINVAL;
	memcpy(a.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	(void)unlink(path);
	mode_t old = umask(0117);
	int r = bind(fd, (struct sockaddr *)&a, sizeof(a));
	umask(old);
	if (r < 0 || listen(fd, 64) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	*ret_fd = fd;
	return 0;
}

static void serve_free(struct rt_serve *s)
{
	if (s->tcp)
		mhd.stop_daemon(s->tcp); /* closes its listening socket */
	if (s->unx)
		mhd.stop_daemon(s->unx);
	if (s->tcp_fd >= 0)
		close(s->tcp_fd);
	if (s->unx_fd >= 0)
		close(s->unx_fd);
	if (s->unix_path && (s->unx || s->unx_fd >= 0))
		(void)unlink(s->unix_path);
	for (int i = 0; i < 2; i++)
		if (s->wake[i] >= 0)
			close(s->wake[i]);
	free(s->token);
	free(s->unix_path);
	free(s);
}

/* Stop accepting (listening sockets closed, the UNIX socket's path removed),
 * then wait until the requests in flight are answered, streams included.
 * After RT_SERVE_DRAIN_MS streams are told to stop generating (they still
 * end the usual way: a finish_reason chunk, then [DONE]) and get
 * RT_SERVE_CANCEL_MS more; whatever is left is then cut. */
#define RT_SERVE_DRAIN_MS 20000
#define RT_SERVE_CANCEL_MS 5000

static void drain(struct rt_serve *s)
{
	struct MHD_Daemon *d[2] = {s->tcp, s->unx};
	for (int i = 0; i < 2; i++) {
		if (!d[i])
			continue;
		MHD_socket fd = mhd.quiesce_daemon(d[i]);
		if (fd != MHD_INVALID_SOCKET)
			close(fd);
	}
	if (s->unix_path && s->unx)
		(void)unlink(s->unix_path);
	int64_t t0 = fl_mono_ms();
	while (atomic_load(&s->active) > 0) {
		int64_t waited = fl_mono_ms() - t0;
		if (waited >= RT_SERVE_DRAIN_MS + RT_SERVE_CANCEL_MS)
			break;
		if (waited >= RT_SERVE_DRAIN_MS && !atomic_exchange(&s->cancel, true))
			fprintf(stderr, "serve: %d requests still running after %d ms: stopping them\n",
				atomic_load(&s->active), RT_SERVE_DRAIN_MS);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

void rt_serve_stop(struct rt_serve *s)
{
	if (!s)
		return;
	char c = 1;
	ssize_t n = write(s->wake[1], &c, 1);
	(void)n;
	pthread_join(s->lazy_th, NULL);
	drain(s);
	serve_free(s);
}

int rt_serve_start(const struct rt_serve_config *cfg, struct rt_serve **ret_serve)
{
	if (!cfg || !ret_serve || (!cfg->tcp_addr && !cfg->unix_path) || !cfg->ops.acquire ||
	    !cfg->ops.release || !cfg->ops.list_models || cfg->max_tokens_limit < 0 ||
	    cfg->default_max_tokens < 0 || cfg->max_connections < 0 || cfg->max_predict_rows < 0)
		return -EINVAL;
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(cfg->tcp_port)};
	if (cfg->tcp_addr && inet_pton(AF_INET, cfg->tcp_addr, &sin.sin_addr) != 1)
		return -EINVAL;
	struct rt_serve *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->tcp_fd = s->unx_fd = s->wake[0] = s->wake[1] = -1;
	s->cfg = *cfg;
	struct rt_serve_config *c = &s->cfg;
	if (!c->max_body_bytes)
		c->max_body_bytes = 1u << 20;
	if (!c->max_prompt_bytes)
		c->max_prompt_bytes = 256u << 10;
	if (!c->max_tokens_limit)
		c->max_tokens_limit = 4096;
	if (!c->default_max_tokens)
		c->default_max_tokens = 256;
	if (c->default_max_tokens > c->max_tokens_limit)
		c->default_max_tokens = c->max_tokens_limit;
	if (!c->max_connections)
		c->max_connections = 64;
	if (!c->max_predict_rows)
		c->max_predict_rows = 10000;
	c->tcp_addr = NULL;
	c->unix_path = NULL;
	c->bearer_token = NULL;
	int err = 0;
	if ((cfg->bearer_token && !(s->token = strdup(cfg->bearer_token))) ||
	    (cfg->unix_path && !(s->unix_path = strdup(cfg->unix_path))))
		err = -ENOMEM;
	if (!err && pipe2(s->wake, O_CLOEXEC) < 0)
		err = -errno;
	if (!err && cfg->tcp_addr)
		err = tcp_listen(&sin, &s->tcp_fd, &s->port);
	if (!err && cfg->unix_path)
		err = unix_listen(cfg->unix_path, &s->unx_fd);
	if (!err && getenv("FLOTILLA_SERVE_EAGER")) /* load libmicrohttpd now */
		err = activate(s);
	if (!err)
		err = -pthread_create(&s->lazy_th, NULL, lazy_thread, s);
	if (err < 0) {
		serve_free(s);
		return err;
	}
	*ret_serve = s;
	return 0;
}

uint16_t rt_serve_tcp_port(const struct rt_serve *s) { return s ? s->port : 0; }
