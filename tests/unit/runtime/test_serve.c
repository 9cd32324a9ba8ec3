/* OpenAI-compatible HTTP API tests: a real runner process serving a tiny
 * model, a raw HTTP/1.0 client over TCP and over the UNIX socket. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "flotilla/backend.h"
#include "flotilla/error.h"
#include "flotilla/json.h"
#include "flotilla/runner.h"
#include "flotilla/serve.h"

#define TOKEN "s3cret-token"

static char g_model[512], g_exe[512], g_sock[512];
static struct rt_runner *g_runner;
static struct rt_serve_router *g_router;
static struct rt_serve *g_srv;
static uint16_t g_port;

static double ms_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000 + (double)ts.tv_nsec / 1e6;
}

/* ----------------------------------------------------------- the client */

struct http_res {
	int status;
	char *raw;
	const char *body;
	size_t body_len;
};

static void http_res_free(struct http_res *r) { free(r->raw); }

/* One HTTP/1.0 request (the server closes after the response). UNIX: over
 * the UNIX socket, else TCP to g_port. */
static int http(bool unx, const char *method, const char *path, const char *auth,
		const char *body, struct http_res *out)
{
	int fd;
	if (unx) {
		struct sockaddr_un a = {.sun_family = AF_UNIX};
		snprintf(a.sun_path, sizeof(a.sun_path), "%s", g_sock);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
			return -errno;
	} else {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g_port)};
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
			return -errno;
	}
	size_t blen = body ? strlen(body) : 0;
	size_t hcap = 1024 + blen;
	char *req = malloc(hcap);
	int n = snprintf(req, hcap,
			 "%s %s HTTP/1.0\r\nHost: localhost\r\n%s%s%sContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\n\r\n",
			 method, path, auth ? "Authorization: Bearer " : "", auth ? auth : "",
			 auth ? "\r\n" : "", blen);
	memcpy(req + n, body ? body : "", blen);
	size_t total = (size_t)n + blen, off = 0;
	while (off < total) {
		ssize_t w = send(fd, req + off, total - off, MSG_NOSIGNAL);
		if (w <= 0)
			break; /* the server may answer (413) before reading everything */
		off += (size_t)w;
	}
	free(req);
	struct timeval tv = {30, 0}; /* a hung answer fails the test, not hangs it */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);
	for (;;) {
		if (len + 4096 > cap)
			buf = realloc(buf, cap *= 2);
		ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = '\0';
	out->raw = buf;
	out->status = 0;
	if (sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1)
		return -EPROTO;
	char *b = strstr(buf, "\r\n\r\n");
	out->body = b ? b + 4 : buf + len;
	out->body_len = (size_t)(buf + len - out->body);
	return 0;
}

static cJSON *body_json(const struct http_res *r)
{
	cJSON *j = NULL;
	assert_int_equal(fl_json_parse(r->body, r->body_len, 1 << 22, 16, &j), 0);
	return j;
}

/* Assert an OpenAI error body with CODE and TYPE. */
static void assert_error(const struct http_res *r, int status, const char *type, const char *code)
{
	assert_int_equal(r->status, status);
	cJSON *j = body_json(r);
	const cJSON *e;
	const char *s;
	assert_int_equal(fl_json_get_obj(j, "error", &e), 0);
	assert_int_equal(fl_json_get_str(e, "message", &s), 0);
	assert_true(strlen(s) > 0);
	assert_int_equal(fl_json_get_str(e, "type", &s), 0);
	assert_string_equal(s, type);
	assert_non_null(cJSON_GetObjectItemCaseSensitive(e, "param"));
	assert_int_equal(fl_json_get_str(e, "code", &s), 0);
	assert_string_equal(s, code);
	cJSON_Delete(j);
}

/* ------------------------------------------------------------- fixture */

static int status_json(void *ud, char *buf, size_t size)
{
	(void)ud;
	snprintf(buf, size, "{\"agent\":\"test\",\"slot\":\"a\",\"state\":\"serving\"}");
	return 0;
}

static void runner_cfg(struct rt_runner_config *c)
{
	memset(c, 0, sizeof(*c));
	c->exe = g_exe;
	c->backend = "gguf";
	c->model_path = g_model;
	rt_runner_limits_default(&c->limits);
	c->limits.n_threads = 1;
	c->limits.n_ctx = 512;
	c->limits.queue_max = 4;
}

static int setup_all(void **state)
{
	(void)state;
	const char *tmp = getenv("FL_TEST_TMPDIR");
	const char *bin = getenv("FL_BINARY_DIR");
	if (!tmp || !bin)
		return -1;
	(void)mkdir(tmp, 0755);
	snprintf(g_model, sizeof(g_model), "%s/serve_model.gguf", tmp);
	snprintf(g_sock, sizeof(g_sock), "%s/serve.sock", tmp);
	snprintf(g_exe, sizeof(g_exe), "%s/runtime/tools/rt-runner", bin);
	char cmd[2048];
	snprintf(cmd, sizeof(cmd),
		 "%s/runtime/tools/mkmodel --arch llama --vocab tiny --dim 256 --layers 2 --heads 8 "
		 "--kv-heads 2 --ffn 512 --type q8_0 --seed 3 -o %s",
		 bin, g_model);
	if (system(cmd) != 0)
		return -1;
	struct rt_runner_config rc;
	runner_cfg(&rc);
	if (rt_runner_start(&rc, &g_runner) < 0 || rt_runner_wait_ready(g_runner, 20000) < 0)
		return -1;
	if (rt_serve_router_new(&g_router) < 0 || rt_serve_router_set(g_router, "tiny", g_runner, NULL) < 0)
		return -1;
	struct rt_serve_config sc = {
		.tcp_addr = "127.0.0.1",
		.unix_path = g_sock,
		.bearer_token = TOKEN,
		.max_body_bytes = 64 * 1024,
		.max_prompt_bytes = 8 * 1024,
		.max_tokens_limit = 200,
		.default_max_tokens = 16,
	};
	rt_serve_router_bind(g_router, &sc);
	sc.ops.status_json = status_json;
	if (rt_serve_start(&sc, &g_srv) < 0)
		return -1;
	g_port = rt_serve_tcp_port(g_srv);
	return g_port ? 0 : -1;
}

static int teardown_all(void **state)
{
	(void)state;
	rt_serve_stop(g_srv);
	rt_runner_stop(g_runner, 2000);
	rt_serve_router_free(g_router);
	return 0;
}

/* ----------------------------------------------------------------- tests */

static char *direct_text(const char *prompt, int max_tokens)
{
	struct rt_backend_opts bo;
	rt_backend_opts_default(&bo);
	bo.n_threads = 1;
	bo.n_ctx = 512;
	struct rt_backend *b = NULL;
	assert_int_equal(rt_backend_open("gguf", g_model, &bo, &b), 0);
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = prompt;
	q.max_tokens = max_tokens;
	struct rt_gen_result res;
	assert_int_equal(rt_backend_generate(b, &q, &res), 0);
	char *t = strdup(res.text);
	rt_gen_result_free(&res);
	rt_backend_close(b);
	return t;
}

static const char *choice_text(cJSON *j, bool chat, const char **finish)
{
	const cJSON *arr, *c;
	assert_int_equal(fl_json_get_arr(j, "choices", &arr), 0);
	assert_int_equal(cJSON_GetArraySize(arr), 1);
	c = cJSON_GetArrayItem(arr, 0);
	const char *t = NULL;
	if (chat) {
		const cJSON *m;
		const char *role;
		assert_int_equal(fl_json_get_obj(c, "message", &m), 0);
		assert_int_equal(fl_json_get_str(m, "role", &role), 0);
		assert_string_equal(role, "assistant");
		assert_int_equal(fl_json_get_str(m, "content", &t), 0);
	} else {
		assert_int_equal(fl_json_get_str(c, "text", &t), 0);
	}
	assert_int_equal(fl_json_get_str(c, "finish_reason", finish), 0);
	return t;
}

/* Parse an SSE body: every event "data: ...\n\n", the last "[DONE]". The
 * deltas concatenated go to OUT; the last finish_reason to FINISH. */
static int parse_sse(const struct http_res *r, bool chat, char *out, size_t cap, char *finish)
{
	const char *p = r->body, *end = r->body + r->body_len;
	size_t o = 0;
	int events = 0;
	bool done = false;
	out[0] = finish[0] = '\0';
	while (p < end) {
		assert_false(done); /* nothing after [DONE] */
		assert_memory_equal(p, "data: ", 6);
		const char *e = strstr(p, "\n\n");
		assert_non_null(e);
		p += 6;
		if ((size_t)(e - p) == 6 && !memcmp(p, "[DONE]", 6)) {
			done = true;
		} else {
			cJSON *j = NULL;
			assert_int_equal(fl_json_parse(p, (size_t)(e - p), 1 << 20, 16, &j), 0);
			const char *obj;
			assert_int_equal(fl_json_get_str(j, "object", &obj), 0);
			assert_string_equal(obj, chat ? "chat.completion.chunk" : "text_completion");
			const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
			assert_non_null(c);
			const cJSON *t = chat ? cJSON_GetObjectItem(cJSON_GetObjectItem(c, "delta"), "content")
					      : cJSON_GetObjectItem(c, "text");
			if (t) {
				assert_true(cJSON_IsString(t));
				size_t n = strlen(t->valuestring);
				assert_true(o + n < cap);
				memcpy(out + o, t->valuestring, n + 1);
				o += n;
			}
			const cJSON *f = cJSON_GetObjectItem(c, "finish_reason");
			assert_non_null(f);
			if (cJSON_IsString(f))
				snprintf(finish, 32, "%s", f->valuestring);
			cJSON_Delete(j);
		}
		events++;
		p = e + 2;
	}
	assert_true(done);
	return events;
}

static void test_completions(void **state)
{
	(void)state;
	const char *prompt = "The quick brown fox";
	char *want = direct_text(prompt, 24);
	struct http_res r;
	const char *body = "{\"model\":\"tiny\",\"prompt\":\"The quick brown fox\",\"max_tokens\":24,"
			   "\"temperature\":0}";
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, body, &r), 0);
	assert_int_equal(r.status, 200);
	assert_non_null(strstr(r.raw, "application/json"));
	cJSON *j = body_json(&r);
	const char *finish, *obj, *model;
	const char *text = choice_text(j, false, &finish);
	assert_string_equal(text, want);
	assert_int_equal(fl_json_get_str(j, "object", &obj), 0);
	assert_string_equal(obj, "text_completion");
	assert_int_equal(fl_json_get_str(j, "model", &model), 0);
	assert_string_equal(model, "tiny");
	const cJSON *u;
	int64_t pt, ct, tt;
	assert_int_equal(fl_json_get_obj(j, "usage", &u), 0);
	assert_int_equal(fl_json_get_int(u, "prompt_tokens", 1, 1000, &pt), 0);
	assert_int_equal(fl_json_get_int(u, "completion_tokens", 1, 24, &ct), 0);
	assert_int_equal(fl_json_get_int(u, "total_tokens", 0, 2000, &tt), 0);
	assert_int_equal(tt, pt + ct);
	assert_string_equal(finish, ct == 24 ? "length" : "stop");

	/* streamed: SSE framing, deltas add up to the same text */
	const char *sbody = "{\"prompt\":\"The quick brown fox\",\"max_tokens\":24,\"temperature\":0,"
			    "\"stream\":true}";
	struct http_res s;
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, sbody, &s), 0);
	assert_int_equal(s.status, 200);
	assert_non_null(strstr(s.raw, "text/event-stream"));
	char got[8192], fin[32];
	int events = parse_sse(&s, false, got, sizeof(got), fin);
	assert_true(events >= 3); /* at least one delta, the final chunk, [DONE] */
	assert_string_equal(got, text);
	assert_string_equal(fin, finish);
	http_res_free(&s);

	/* over the UNIX socket: no token needed */
	assert_int_equal(http(true, "POST", "/v1/completions", NULL, body, &s), 0);
	assert_int_equal(s.status, 200);
	cJSON *j2 = body_json(&s);
	assert_string_equal(choice_text(j2, false, &finish), want);
	cJSON_Delete(j2);
	http_res_free(&s);
	cJSON_Delete(j);
	http_res_free(&r);
	free(want);
}

static void test_chat(void **state)
{
	(void)state;
	const char *body = "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
			   "{\"role\":\"user\",\"content\":\"Hello there\"}],\"max_tokens\":20,"
			   "\"temperature\":0}";
	struct http_res r;
	assert_int_equal(http(false, "POST", "/v1/chat/completions", TOKEN, body, &r), 0);
	assert_int_equal(r.status, 200);
	cJSON *j = body_json(&r);
	const char *finish, *obj;
	const char *text = choice_text(j, true, &finish);
	assert_int_equal(fl_json_get_str(j, "object", &obj), 0);
	assert_string_equal(obj, "chat.completion");

	char sbody[512];
	snprintf(sbody, sizeof(sbody), "%.*s,\"stream\":true}", (int)strlen(body) - 1, body);
	struct http_res s;
	assert_int_equal(http(false, "POST", "/v1/chat/completions", TOKEN, sbody, &s), 0);
	assert_int_equal(s.status, 200);
	char got[8192], fin[32];
	parse_sse(&s, true, got, sizeof(got), fin);
	assert_string_equal(got, text);
	assert_string_equal(fin, finish);
	/* the first chunk carries the role */
	assert_non_null(strstr(s.body, "\"role\":\"assistant\""));
	http_res_free(&s);
	cJSON_Delete(j);
	http_res_free(&r);
}

static char *http_text(const char *body)
{
	struct http_res r;
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, body, &r), 0);
	assert_int_equal(r.status, 200);
	cJSON *j = body_json(&r);
	const char *finish;
	char *t = strdup(choice_text(j, false, &finish));
	cJSON_Delete(j);
	http_res_free(&r);
	return t;
}

static void test_stop_string(void **state)
{
	(void)state;
	/* the random model's text is not always valid UTF-8 (the server sends
	 * U+FFFD for bad bytes): take the stop string from printable ASCII */
	char *full = http_text("{\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"temperature\":0}");
	const char *at = NULL;
	for (const char *p = full + 1; p[0] && p[1] && p[2]; p++)
		if (p[0] > 32 && p[0] < 127 && p[1] > 32 && p[1] < 127 && p[2] > 32 && p[2] < 127) {
			at = p;
			break;
		}
	if (!at) {
		free(full);
		skip();
	}
	char stop[4];
	memcpy(stop, at, 3);
	stop[3] = '\0';
	size_t want = (size_t)(strstr(full, stop) - full);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "prompt", "Once upon a time");
	cJSON_AddNumberToObject(o, "max_tokens", 24);
	cJSON_AddNumberToObject(o, "temperature", 0);
	cJSON *arr = cJSON_AddArrayToObject(o, "stop");
	cJSON_AddItemToArray(arr, cJSON_CreateString("zzzqqq"));
	cJSON_AddItemToArray(arr, cJSON_CreateString(stop));
	char *body = fl_json_print(o);
	struct http_res r;
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, body, &r), 0);
	assert_int_equal(r.status, 200);
	cJSON *j = body_json(&r);
	const char *finish;
	const char *text = choice_text(j, false, &finish);
	assert_string_equal(finish, "stop");
	assert_int_equal(strlen(text), want);
	assert_memory_equal(text, full, want);
	cJSON_Delete(j);
	http_res_free(&r);
	free(body);
	cJSON_Delete(o);
	free(full);
}

static void test_errors_and_limits(void **state)
{
	(void)state;
	struct http_res r;
	const char *ok = "{\"prompt\":\"hi\",\"max_tokens\":2}";
	/* token */
	assert_int_equal(http(false, "POST", "/v1/completions", NULL, ok, &r), 0);
	assert_error(&r, 401, "authentication_error", "invalid_api_key");
	http_res_free(&r);
	assert_int_equal(http(false, "POST", "/v1/completions", "s3cret-tokem", ok, &r), 0);
	assert_error(&r, 401, "authentication_error", "invalid_api_key");
	http_res_free(&r);
	assert_int_equal(http(false, "GET", "/v1/models", "s3cret-token-longer", NULL, &r), 0);
	assert_int_equal(r.status, 401);
	http_res_free(&r);
	/* bad bodies */
	const char *bad[][2] = {
		{"{not json", ""},
		{"[1,2]", ""},
		{"{\"prompt\":5}", "prompt"},
		{"{\"prompt\":\"x\",\"max_tokens\":201}", "max_tokens"},
		{"{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens"},
		{"{\"prompt\":\"x\",\"temperature\":3}", "temperature"},
		{"{\"prompt\":\"x\",\"n\":2}", "n"},
		{"{\"prompt\":\"x\",\"stop\":[1]}", "stop"},
		{"{\"prompt\":\"x\",\"stream\":\"yes\"}", "stream"},
		{"{\"messages\":[]}", "messages"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *url = strstr(bad[i][0], "messages") ? "/v1/chat/completions" : "/v1/completions";
		assert_int_equal(http(false, "POST", url, TOKEN, bad[i][0], &r), 0);
		assert_error(&r, 400, "invalid_request_error", "invalid_request");
		if (bad[i][1][0]) {
			cJSON *j = body_json(&r);
			const char *param;
			assert_int_equal(fl_json_get_str(cJSON_GetObjectItem(j, "error"), "param", &param), 0);
			assert_string_equal(param, bad[i][1]);
			cJSON_Delete(j);
		}
		http_res_free(&r);
	}
	/* chat roles */
	assert_int_equal(http(false, "POST", "/v1/chat/completions", TOKEN,
			      "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", &r), 0);
	assert_error(&r, 400, "invalid_request_error", "invalid_request");
	http_res_free(&r);
	/* prompt over max_prompt_bytes (8 KiB) but body within 64 KiB */
	size_t n = 10000;
	char *big = malloc(n + 64);
	int k = snprintf(big, n + 64, "{\"prompt\":\"");
	memset(big + k, 'a', n);
	snprintf(big + k + n, 64, "\",\"max_tokens\":1}");
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, big, &r), 0);
	assert_error(&r, 400, "invalid_request_error", "invalid_request");
	http_res_free(&r);
	free(big);
	/* body over 64 KiB */
	n = 70000;
	big = malloc(n + 64);
	k = snprintf(big, n + 64, "{\"prompt\":\"");
	memset(big + k, 'a', n);
	snprintf(big + k + n, 64, "\"}");
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, big, &r), 0);
	assert_error(&r, 413, "invalid_request_error", "body_too_large");
	http_res_free(&r);
	free(big);
	/* routing and methods */
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN,
			      "{\"model\":\"other\",\"prompt\":\"x\"}", &r), 0);
	assert_error(&r, 404, "invalid_request_error", "model_not_found");
	http_res_free(&r);
	assert_int_equal(http(false, "GET", "/v1/completions", TOKEN, NULL, &r), 0);
	assert_error(&r, 405, "invalid_request_error", "method_not_allowed");
	http_res_free(&r);
	assert_int_equal(http(false, "GET", "/v2/nothing", TOKEN, NULL, &r), 0);
	assert_error(&r, 404, "invalid_request_error", "not_found");
	http_res_free(&r);
}

static void test_info_endpoints(void **state)
{
	(void)state;
	struct http_res r;
	assert_int_equal(http(false, "GET", "/v1/models", TOKEN, NULL, &r), 0);
	assert_int_equal(r.status, 200);
	cJSON *j = body_json(&r);
	const cJSON *arr;
	assert_int_equal(fl_json_get_arr(j, "data", &arr), 0);
	assert_int_equal(cJSON_GetArraySize(arr), 1);
	const char *id;
	assert_int_equal(fl_json_get_str(cJSON_GetArrayItem(arr, 0), "id", &id), 0);
	assert_string_equal(id, "tiny");
	cJSON_Delete(j);
	http_res_free(&r);
	assert_int_equal(http(true, "GET", "/healthz", NULL, NULL, &r), 0);
	assert_int_equal(r.status, 200);
	assert_non_null(strstr(r.body, "\"ok\""));
	http_res_free(&r);
	assert_int_equal(http(true, "GET", "/v1/status", NULL, NULL, &r), 0);
	assert_int_equal(r.status, 200);
	j = body_json(&r);
	const char *slot;
	assert_int_equal(fl_json_get_str(j, "slot", &slot), 0);
	assert_string_equal(slot, "a");
	cJSON_Delete(j);
	http_res_free(&r);
}

struct bg {
	bool stream;
	int status;
	struct http_res r;
};

static void *bg_request(void *arg)
{
	struct bg *b = arg;
	const char *body = b->stream ? "{\"prompt\":\"bg\",\"max_tokens\":8,\"stream\":true}"
				     : "{\"prompt\":\"bg\",\"max_tokens\":8}";
	if (http(true, "POST", "/v1/completions", NULL, body, &b->r) == 0)
		b->status = b->r.status;
	return NULL;
}

static void test_queue_full_503(void **state)
{
	(void)state;
	/* a second runner with a queue of one, in place of the first */
	struct rt_runner_config rc;
	runner_cfg(&rc);
	rc.limits.queue_max = 1;
	struct rt_runner *small = NULL, *old = NULL;
	assert_int_equal(rt_runner_start(&rc, &small), 0);
	assert_int_equal(rt_runner_wait_ready(small, 20000), 0);
	assert_int_equal(rt_serve_router_set(g_router, "tiny", small, &old), 0);
	assert_ptr_equal(old, g_runner);
	assert_int_equal(rt_serve_router_wait_idle(g_router, old, 1000), 0);
	struct rt_runner_status st;
	rt_runner_get_status(small, &st);
	assert_int_equal(kill(st.pid, SIGSTOP), 0);
	struct bg b = {.stream = false};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, bg_request, &b), 0);
	for (int i = 0; i < 2000; i++) {
		rt_runner_get_status(small, &st);
		if (st.queued == 1)
			break;
		usleep(1000);
	}
	assert_int_equal(st.queued, 1);
	/* the old runner is idle while a request holds the new one */
	assert_int_equal(rt_serve_router_wait_idle(g_router, old, 10), 0);
	assert_int_equal(rt_serve_router_wait_idle(g_router, small, 10), -FL_ETIMEOUT);
	struct http_res r;
	double t0 = ms_now();
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, "{\"prompt\":\"x\"}", &r), 0);
	assert_true(ms_now() - t0 < 2000); /* the request in flight is held: no waiting */
	assert_error(&r, 503, "server_error", "overloaded");
	http_res_free(&r);
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN,
			      "{\"prompt\":\"x\",\"stream\":true}", &r), 0);
	assert_error(&r, 503, "server_error", "overloaded");
	http_res_free(&r);
	assert_int_equal(kill(st.pid, SIGCONT), 0);
	pthread_join(th, NULL);
	assert_int_equal(b.status, 200);
	http_res_free(&b.r);
	/* back to the first runner */
	assert_int_equal(rt_serve_router_set(g_router, "tiny", g_runner, &old), 0);
	assert_int_equal(rt_serve_router_wait_idle(g_router, small, 5000), 0);
	rt_runner_stop(small, 2000);
	/* no runner: 503 model_not_ready, healthz 503 */
	assert_int_equal(rt_serve_router_set(g_router, "tiny", NULL, &old), 0);
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, "{\"prompt\":\"x\"}", &r), 0);
	assert_error(&r, 503, "server_error", "model_not_ready");
	http_res_free(&r);
	assert_int_equal(http(false, "GET", "/healthz", TOKEN, NULL, &r), 0);
	assert_int_equal(r.status, 503);
	http_res_free(&r);
	assert_int_equal(rt_serve_router_set(g_router, "tiny", g_runner, NULL), 0);
}

/* A runner that gave up answers 503 with a code saying so: crash loop
 * (whole, streamed and /v1/predict), model that does not load. */
static void test_runner_gave_up(void **state)
{
	(void)state;
	struct rt_runner_config c;
	runner_cfg(&c);
	c.exe = "/bin/sh"; /* "sh runner --fd ...": exits at once */
	c.limits.crash_loop_n = 2;
	c.limits.backoff_min_ms = 5;
	struct rt_runner *loop = NULL;
	assert_int_equal(rt_runner_start(&c, &loop), 0);
	assert_int_equal(rt_runner_wait_ready(loop, 10000), -FL_ECRASH);
	struct rt_runner *old = NULL;
	assert_int_equal(rt_serve_router_set(g_router, "tiny", loop, &old), 0);
	struct http_res r;
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, "{\"prompt\":\"x\"}", &r), 0);
	assert_error(&r, 503, "server_error", "model_crash_loop");
	assert_non_null(strstr(r.body, "model tiny is in a crash loop: its runner crashed 2 times"));
	http_res_free(&r);
	assert_int_equal(http(false, "POST", "/v1/chat/completions", TOKEN,
			      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true}",
			      &r), 0);
	assert_error(&r, 503, "server_error", "model_crash_loop");
	http_res_free(&r);
	assert_int_equal(http(false, "POST", "/v1/predict", TOKEN,
			      "{\"model\":\"tiny\",\"rows\":[[1,2]]}", &r), 0);
	assert_error(&r, 503, "server_error", "model_crash_loop");
	http_res_free(&r);

	runner_cfg(&c);
	c.model_path = "/nonexistent/model.gguf";
	struct rt_runner *bad = NULL;
	assert_int_equal(rt_runner_start(&c, &bad), 0);
	assert_int_equal(rt_runner_wait_ready(bad, 10000), -ENOENT);
	struct rt_runner *prev = NULL;
	assert_int_equal(rt_serve_router_set(g_router, "tiny", bad, &prev), 0);
	assert_ptr_equal(prev, loop);
	assert_int_equal(rt_serve_router_wait_idle(g_router, loop, 5000), 0);
	rt_runner_stop(loop, 100);
	assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, "{\"prompt\":\"x\"}", &r), 0);
	assert_error(&r, 503, "server_error", "model_load_failed");
	assert_non_null(strstr(r.body, "model tiny failed to load: "));
	http_res_free(&r);
	assert_int_equal(rt_serve_router_set(g_router, "tiny", old, &prev), 0);
	assert_ptr_equal(prev, bad);
	assert_int_equal(rt_serve_router_wait_idle(g_router, bad, 5000), 0);
	rt_runner_stop(bad, 100);
}

static void test_bench(void **state)
{
	(void)state;
	const int n_small = 20, gen = 64;
	struct http_res r;
	/* 1-token request latency through HTTP (TCP) */
	double t0 = ms_now();
	for (int i = 0; i < n_small; i++) {
		assert_int_equal(http(false, "POST", "/v1/completions", TOKEN,
				      "{\"prompt\":\"Hi\",\"max_tokens\":1,\"temperature\":0}", &r), 0);
		assert_int_equal(r.status, 200);
		http_res_free(&r);
	}
	double http_1tok = (ms_now() - t0) / n_small;
	/* the same through the runner without HTTP, and in process */
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "Hi";
	q.max_tokens = 1;
	struct rt_gen_result res;
	t0 = ms_now();
	for (int i = 0; i < n_small; i++) {
		assert_int_equal(rt_runner_generate(g_runner, &q, &res), 0);
		rt_gen_result_free(&res);
	}
	double runner_1tok = (ms_now() - t0) / n_small;
	struct rt_backend_opts bo;
	rt_backend_opts_default(&bo);
	bo.n_threads = 1;
	bo.n_ctx = 512;
	struct rt_backend *b = NULL;
	assert_int_equal(rt_backend_open("gguf", g_model, &bo, &b), 0);
	t0 = ms_now();
	for (int i = 0; i < n_small; i++) {
		assert_int_equal(rt_backend_generate(b, &q, &res), 0);
		rt_gen_result_free(&res);
	}
	double direct_1tok = (ms_now() - t0) / n_small;
	/* tokens/s for GEN-token generations (ignore_eos is not available:
	 * count the tokens actually generated) */
	q.prompt = "Once upon a time there was";
	q.max_tokens = gen;
	int toks = 0;
	t0 = ms_now();
	for (int i = 0; i < 3; i++) {
		assert_int_equal(rt_backend_generate(b, &q, &res), 0);
		toks += res.n_gen;
		rt_gen_result_free(&res);
	}
	double direct_tps = toks / ((ms_now() - t0) / 1000);
	rt_backend_close(b);
	char body[256];
	snprintf(body, sizeof(body),
		 "{\"prompt\":\"Once upon a time there was\",\"max_tokens\":%d,\"temperature\":0}", gen);
	int htoks = 0;
	t0 = ms_now();
	for (int i = 0; i < 3; i++) {
		assert_int_equal(http(false, "POST", "/v1/completions", TOKEN, body, &r), 0);
		assert_int_equal(r.status, 200);
		cJSON *j = body_json(&r);
		int64_t ct;
		assert_int_equal(fl_json_get_int(cJSON_GetObjectItem(j, "usage"), "completion_tokens", 0,
						 gen, &ct), 0);
		htoks += (int)ct;
		cJSON_Delete(j);
		http_res_free(&r);
	}
	double http_tps = htoks / ((ms_now() - t0) / 1000);
	assert_int_equal(htoks, toks); /* same greedy generations */
	print_message("bench: 1-token request: http %.2f ms (%.0f req/s), runner %.2f ms, in-process "
		      "%.2f ms\n",
		      http_1tok, 1000 / http_1tok, runner_1tok, direct_1tok);
	print_message("bench: %d-token generations: http %.0f tok/s, in-process %.0f tok/s\n", gen,
		      http_tps, direct_tps);
	assert_true(http_1tok > 0 && http_tps > 0);
}

struct conc {
	int ok, busy, other;
	double ms;
};

static void *conc_client(void *arg)
{
	struct conc *c = arg;
	double t0 = ms_now();
	for (int i = 0; i < 10; i++) {
		struct http_res r;
		if (http(i % 2, "POST", "/v1/completions", TOKEN,
			 "{\"prompt\":\"Hi there\",\"max_tokens\":8,\"temperature\":0}", &r) < 0) {
			c->other++;
			continue;
		}
		if (r.status == 200)
			c->ok++;
		else if (r.status == 503)
			c->busy++;
		else
			c->other++;
		http_res_free(&r);
	}
	c->ms = ms_now() - t0;
	return NULL;
}

/* Four clients at once on a queue of four: all served, same answers. */
static void test_concurrent(void **state)
{
	(void)state;
	struct conc c[4] = {0};
	pthread_t th[4];
	double t0 = ms_now();
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&th[i], NULL, conc_client, &c[i]), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	double total = ms_now() - t0;
	for (int i = 0; i < 4; i++) {
		assert_int_equal(c[i].ok, 10);
		assert_int_equal(c[i].busy + c[i].other, 0);
	}
	print_message("bench: 4 concurrent clients, 8-token requests: %.0f req/s\n", 40 / (total / 1000));
	struct rt_runner_status st;
	rt_runner_get_status(g_runner, &st);
	assert_int_equal(st.n_crashes, 0);
	assert_int_equal(st.queued, 0);
}

static void test_start_args(void **state)
{
	(void)state;
	struct rt_serve_config sc = {.tcp_addr = "127.0.0.1"};
	struct rt_serve *s = NULL;
	assert_int_equal(rt_serve_start(&sc, &s), -EINVAL); /* no ops */
	rt_serve_router_bind(g_router, &sc);
	sc.tcp_addr = "not-an-ip";
	assert_int_equal(rt_serve_start(&sc, &s), -EINVAL);
	sc.tcp_addr = NULL;
	assert_int_equal(rt_serve_start(&sc, &s), -EINVAL); /* no listener */
	sc.tcp_addr = "127.0.0.1";
	sc.tcp_port = g_port; /* taken */
	assert_true(rt_serve_start(&sc, &s) < 0);
	assert_null(s);
	rt_serve_stop(NULL);
	assert_int_equal(rt_serve_router_set(g_router, "", g_runner, NULL), -EINVAL);
}

/* Strict UTF-8 (no overlongs, surrogates or values past U+10FFFF) and no
 * raw control bytes other than the newlines between SSE events. */
static bool strict_utf8_json_text(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		unsigned c = p[i];
		if (c < 0x80) {
			if (c < 0x20 && c != '\n')
				return false;
			i++;
			continue;
		}
		size_t k = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
		if (!k || i + k > n)
			return false;
		unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
		unsigned hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
		if (p[i + 1] < lo || p[i + 1] > hi)
			return false;
		for (size_t j = 2; j < k; j++)
			if (p[i + j] < 0x80 || p[i + j] > 0xBF)
				return false;
		i += k;
	}
	return true;
}

/* A model whose output starts with a NUL byte followed by invalid UTF-8
 * (mkmodel seed 2, "Hi"): through the runner protocol and the HTTP layer it
 * comes back as valid JSON with U+FFFD in place of the bad bytes, streamed
 * and not, and at once (docs/serving.md "Generated bytes"). */
static void test_odd_bytes(void **state)
{
	(void)state;
	const char *tmp = getenv("FL_TEST_TMPDIR"), *bin = getenv("FL_BINARY_DIR");
	char model[512], cmd[2048];
	snprintf(model, sizeof(model), "%s/serve_bytes.gguf", tmp);
	snprintf(cmd, sizeof(cmd),
		 "%s/runtime/tools/mkmodel --arch llama --vocab tiny --dim 64 --layers 2 --heads 4 "
		 "--kv-heads 2 --ffn 128 --ctx 256 --type q8_0 --seed 2 -o %s >/dev/null",
		 bin, model);
	assert_int_equal(system(cmd), 0);
	/* the test means something: the raw generation has a NUL and bad UTF-8 */
	struct rt_backend_opts bo;
	rt_backend_opts_default(&bo);
	bo.n_threads = 1;
	struct rt_backend *b = NULL;
	assert_int_equal(rt_backend_open("gguf", model, &bo, &b), 0);
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "Hi";
	q.max_tokens = 4;
	q.sampling.temperature = 0;
	struct rt_gen_result raw;
	assert_int_equal(rt_backend_generate(b, &q, &raw), 0);
	assert_non_null(memchr(raw.text, '\0', raw.text_len));
	assert_false(strict_utf8_json_text(raw.text, raw.text_len));
	rt_gen_result_free(&raw);
	rt_backend_close(b);

	struct rt_runner_config rc;
	runner_cfg(&rc);
	rc.model_path = model;
	rc.limits.n_ctx = 256;
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&rc, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	assert_int_equal(rt_serve_router_set(g_router, "bytes", r, NULL), 0);
	char text[2][256];
	for (int stream = 0; stream < 2; stream++) {
		char body[256];
		snprintf(body, sizeof(body),
			 "{\"model\":\"bytes\",\"prompt\":\"Hi\",\"max_tokens\":4,\"temperature\":0,"
			 "\"stream\":%s}", stream ? "true" : "false");
		struct http_res res;
		double t0 = ms_now();
		assert_int_equal(http(true, "POST", "/v1/completions", NULL, body, &res), 0);
		double ms = ms_now() - t0;
		print_message("odd bytes, stream=%d: %d in %.0f ms\n", stream, res.status, ms);
		assert_int_equal(res.status, 200);
		assert_true(ms < 10000);
		assert_true(strict_utf8_json_text(res.body, res.body_len));
		if (stream) {
			char finish[32];
			assert_true(parse_sse(&res, false, text[1], sizeof(text[1]), finish) >= 2);
			assert_string_equal(finish, "length");
		} else {
			cJSON *j = body_json(&res);
			const char *finish;
			snprintf(text[0], sizeof(text[0]), "%s", choice_text(j, false, &finish));
			assert_string_equal(finish, "length");
			cJSON_Delete(j);
		}
		http_res_free(&res);
	}
	assert_memory_equal(text[0], "\xEF\xBF\xBD", 3); /* the NUL */
	assert_string_equal(text[0], text[1]);
	assert_true(strict_utf8_json_text(text[0], strlen(text[0])));
	assert_int_equal(rt_serve_router_set(g_router, "bytes", NULL, NULL), 0);
	rt_runner_stop(r, 2000);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_completions),
		cmocka_unit_test(test_chat),
		cmocka_unit_test(test_stop_string),
		cmocka_unit_test(test_errors_and_limits),
		cmocka_unit_test(test_info_endpoints),
		cmocka_unit_test(test_queue_full_503),
		cmocka_unit_test(test_runner_gave_up),
		cmocka_unit_test(test_bench),
		cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_start_args),
		cmocka_unit_test(test_odd_bytes),
	};
	return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
