/* Runner protocol and supervisor tests, with real runner processes serving a
 * tiny model written by mkmodel. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "flotilla/backend.h"
#include "flotilla/error.h"
#include "flotilla/runner.h"

static char g_model[512], g_exe[512];

static long long ms_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int setup_all(void **state)
{
	(void)state;
	const char *tmp = getenv("FL_TEST_TMPDIR");
	const char *bin = getenv("FL_BINARY_DIR");
	if (!tmp || !bin)
		return -1;
	(void)mkdir(tmp, 0755);
	snprintf(g_model, sizeof(g_model), "%s/runner_model.gguf", tmp);
	snprintf(g_exe, sizeof(g_exe), "%s/runtime/tools/rt-runner", bin);
	char cmd[2048];
	snprintf(cmd, sizeof(cmd),
		 "%s/runtime/tools/mkmodel --arch llama --vocab tiny --dim 256 --layers 2 --heads 8 "
		 "--kv-heads 2 --ffn 512 --type q8_0 --seed 1 -o %s",
		 bin, g_model);
	return system(cmd) == 0 && access(g_exe, X_OK) == 0 ? 0 : -1;
}

static void cfg_default(struct rt_runner_config *c)
{
	memset(c, 0, sizeof(*c));
	c->exe = g_exe;
	c->backend = "gguf";
	c->model_path = g_model;
	rt_runner_limits_default(&c->limits);
	c->limits.n_threads = 1;
	c->limits.n_ctx = 256;
	c->limits.backoff_min_ms = 10;
}

/* ------------------------------------------------------------- messages */

static void roundtrip(const struct rt_rmsg *m, struct rt_rmsg **out)
{
	void *buf;
	size_t len;
	assert_int_equal(rt_rmsg_encode(m, &buf, &len), 0);
	const uint8_t *b = buf;
	assert_int_equal((size_t)(b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24), len - 4);
	assert_int_equal(rt_rmsg_decode(b + 4, len - 4, out), 0);
	/* every strict prefix is rejected, a trailing byte too */
	for (size_t n = 0; n < len - 4; n++) {
		struct rt_rmsg *x = NULL;
		assert_true(rt_rmsg_decode(b + 4, n, &x) < 0);
		assert_null(x);
	}
	uint8_t *longer = malloc(len + 1);
	memcpy(longer, buf, len);
	longer[len] = 0;
	struct rt_rmsg *x = NULL;
	assert_int_equal(rt_rmsg_decode(longer + 4, len - 3, &x), -FL_EPROTO);
	free(longer);
	free(buf);
}

static void test_msg_roundtrip(void **state)
{
	(void)state;
	struct rt_chat_msg msgs[2] = {{"system", "be brief"}, {"user", "hi there"}};
	const char *stops[] = {"\n\n", "END"};
	struct rt_rmsg g = {.type = RT_RMSG_GENERATE, .id = 7, .stream = true};
	rt_gen_request_default(&g.req);
	g.req.messages = msgs;
	g.req.n_messages = 2;
	g.req.stop = stops;
	g.req.n_stop = 2;
	g.req.max_tokens = 33;
	g.req.sampling.temperature = 0.5f;
	g.req.sampling.top_k = 12;
	g.req.sampling.seed = 99;
	struct rt_rmsg *d = NULL;
	roundtrip(&g, &d);
	assert_int_equal(d->type, RT_RMSG_GENERATE);
	assert_int_equal(d->id, 7);
	assert_true(d->stream);
	assert_int_equal(d->req.n_messages, 2);
	assert_string_equal(d->req.messages[1].role, "user");
	assert_string_equal(d->req.messages[1].content, "hi there");
	assert_null(d->req.prompt);
	assert_int_equal(d->req.n_stop, 2);
	assert_string_equal(d->req.stop[1], "END");
	assert_int_equal(d->req.max_tokens, 33);
	assert_true(d->req.sampling.temperature == 0.5f);
	assert_int_equal(d->req.sampling.top_k, 12);
	assert_int_equal(d->req.sampling.seed, 99);
	rt_rmsg_free(d);

	struct rt_rmsg p = {.type = RT_RMSG_GENERATE, .id = 8};
	rt_gen_request_default(&p.req);
	p.req.prompt = "Once upon";
	roundtrip(&p, &d);
	assert_string_equal(d->req.prompt, "Once upon");
	assert_int_equal(d->req.n_messages, 0);
	assert_false(d->stream);
	rt_rmsg_free(d);

	struct rt_rmsg done = {.type = RT_RMSG_DONE, .id = 9};
	done.res.text = "abc";
	done.res.text_len = 3;
	done.res.n_prompt = 5;
	done.res.n_prompt_cached = 2;
	done.res.n_gen = 3;
	done.res.stop_reason = RT_STOP_STRING;
	done.res.gen_ms = 1.5;
	roundtrip(&done, &d);
	assert_string_equal(d->res.text, "abc");
	assert_int_equal(d->res.n_prompt_cached, 2);
	assert_int_equal(d->res.stop_reason, RT_STOP_STRING);
	assert_true(d->res.gen_ms == 1.5);
	rt_rmsg_free(d);

	struct rt_rmsg e = {.type = RT_RMSG_ERROR, .id = 3, .code = -FL_EBUSY, .text = "busy", .text_len = 4};
	roundtrip(&e, &d);
	assert_int_equal(d->code, -FL_EBUSY);
	assert_string_equal(d->text, "busy");
	rt_rmsg_free(d);

	struct rt_rmsg s = {.type = RT_RMSG_STATS_R, .id = 4};
	snprintf(s.stats.model, sizeof(s.stats.model), "llama q8_0");
	s.stats.n_gen_tokens = 1234;
	roundtrip(&s, &d);
	assert_string_equal(d->stats.model, "llama q8_0");
	assert_int_equal(d->stats.n_gen_tokens, 1234);
	rt_rmsg_free(d);

	struct rt_rmsg ping = {.type = RT_RMSG_PING, .id = 5};
	roundtrip(&ping, &d);
	assert_int_equal(d->type, RT_RMSG_PING);
	rt_rmsg_free(d);
}

/* Generated text carries any bytes: PIECE and DONE go on the wire as valid
 * UTF-8, NUL and bad sequences replaced by U+FFFD (docs/serving.md). */
static void test_msg_text_bytes(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		size_t n;
		const char *out;
	} cases[] = {
		{"\0a", 2, "\xEF\xBF\xBD" "a"},
		{"\xff\xfe", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},
		{"x\xe2\x82", 3, "x\xEF\xBF\xBD"},              /* truncated: one U+FFFD */
		{"\xe2\x82\xac\xc3\xa9", 5, "\xe2\x82\xac\xc3\xa9"}, /* valid: as is */
		{"\xc0\xaf", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},      /* overlong */
		{"\xed\xa0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* surrogate */
		{"\x01\x1f", 2, "\x01\x1f"}, /* control bytes stay (JSON escapes them) */
		{"", 0, ""},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int type = 0; type < 2; type++) {
			struct rt_rmsg m = {.type = type ? RT_RMSG_DONE : RT_RMSG_PIECE, .id = 7};
			if (type) {
				m.res.stop_reason = RT_STOP_MAX_TOKENS;
				m.res.text = (char *)cases[i].in;
				m.res.text_len = cases[i].n;
			} else {
				m.text = (char *)cases[i].in;
				m.text_len = cases[i].n;
			}
			struct rt_rmsg *d = NULL;
			roundtrip(&m, &d);
			assert_int_equal(d->text_len, strlen(cases[i].out));
			assert_string_equal(d->text, cases[i].out);
			rt_rmsg_free(d);
		}
	}
	/* the decoder takes nothing else: raw bad bytes in a PIECE are refused */
	const uint8_t bad[] = {RT_RMSG_PIECE, 7, 0, 0, 0, 2, 0, 0, 0, 'a', 0xff};
	struct rt_rmsg *x = NULL;
	assert_int_equal(rt_rmsg_decode(bad, sizeof(bad), &x), -FL_EPROTO);
	assert_null(x);
	const uint8_t good[] = {RT_RMSG_PIECE, 7, 0, 0, 0, 2, 0, 0, 0, 0xc3, 0xa9};
	assert_int_equal(rt_rmsg_decode(good, sizeof(good), &x), 0);
	assert_string_equal(x->text, "\xc3\xa9");
	rt_rmsg_free(x);
}

static void test_msg_reject(void **state)
{
	(void)state;
	struct rt_rmsg *d = NULL;
	/* unknown type */
	uint8_t unk[5] = {200, 1, 0, 0, 0};
	assert_int_equal(rt_rmsg_decode(unk, 5, &d), -FL_EPROTO);
	/* ERROR with code 0 or positive */
	uint8_t err0[13] = {RT_RMSG_ERROR, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
	assert_int_equal(rt_rmsg_decode(err0, sizeof(err0), &d), -FL_EPROTO);
	/* PIECE string longer than the limit */
	uint8_t big[9] = {RT_RMSG_PIECE, 1, 0, 0, 0, 0, 0, 0x20, 0};
	assert_int_equal(rt_rmsg_decode(big, sizeof(big), &d), -FL_ETOOBIG);
	/* PIECE string with a NUL */
	uint8_t nul[11] = {RT_RMSG_PIECE, 1, 0, 0, 0, 2, 0, 0, 0, 'a', 0};
	assert_int_equal(rt_rmsg_decode(nul, sizeof(nul), &d), -FL_EPROTO);
	/* a GENERATE with too many messages */
	uint8_t many[14] = {RT_RMSG_GENERATE, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f};
	assert_int_equal(rt_rmsg_decode(many, 10, &d), -FL_ETOOBIG);
	assert_null(d);
	/* encoder limits */
	struct rt_rmsg g = {.type = RT_RMSG_GENERATE};
	rt_gen_request_default(&g.req);
	void *buf = NULL;
	size_t len = 0;
	assert_int_equal(rt_rmsg_encode(&g, &buf, &len), -EINVAL); /* no prompt */
	const char *stops[RT_BACKEND_MAX_STOP + 1] = {0};
	g.req.prompt = "x";
	g.req.stop = stops;
	g.req.n_stop = RT_BACKEND_MAX_STOP + 1;
	assert_int_equal(rt_rmsg_encode(&g, &buf, &len), -EINVAL);
	char *huge = malloc(RT_RMSG_MAX_TEXT_BYTES + 2);
	memset(huge, 'a', RT_RMSG_MAX_TEXT_BYTES + 1);
	huge[RT_RMSG_MAX_TEXT_BYTES + 1] = '\0';
	g.req.n_stop = 0;
	g.req.prompt = huge;
	assert_int_equal(rt_rmsg_encode(&g, &buf, &len), -FL_ETOOBIG);
	free(huge);
	assert_null(buf);
}

/* ----------------------------------------------------------- supervisor */

struct sink {
	char buf[8192];
	size_t len;
	int calls;
	pid_t kill_pid; /* SIGKILL this on the first piece */
	int stop_after; /* return 1 after this many pieces */
};

static int on_text(void *ud, const char *t, size_t n)
{
	struct sink *s = ud;
	assert_true(s->len + n < sizeof(s->buf));
	memcpy(s->buf + s->len, t, n);
	s->len += n;
	s->buf[s->len] = '\0';
	if (s->calls++ == 0 && s->kill_pid > 0)
		kill(s->kill_pid, SIGKILL);
	return s->stop_after && s->calls >= s->stop_after;
}

static void test_generate_real(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_default(&c);
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	assert_int_equal(st.state, RT_RUNNER_READY);
	assert_true(st.pid > 0);
	assert_non_null(strstr(st.model, "llama"));

	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "Hello world, you are a model";
	q.max_tokens = 24;
	struct sink sk = {0};
	q.on_text = on_text;
	q.userdata = &sk;
	struct rt_gen_result res;
	assert_int_equal(rt_runner_generate(r, &q, &res), 0);
	assert_true(res.n_prompt > 3);
	assert_true(res.n_gen >= 1 && res.n_gen <= 24);
	assert_int_equal(strlen(res.text), res.text_len);
	assert_int_equal(sk.len, res.text_len);
	assert_memory_equal(sk.buf, res.text, res.text_len);

	/* the same request in process gives the same greedy text */
	struct rt_backend_opts bo;
	rt_backend_opts_default(&bo);
	bo.n_threads = 1;
	bo.n_ctx = 256;
	struct rt_backend *b = NULL;
	assert_int_equal(rt_backend_open("gguf", g_model, &bo, &b), 0);
	struct rt_gen_request q2 = q;
	q2.on_text = NULL;
	struct rt_gen_result direct;
	assert_int_equal(rt_backend_generate(b, &q2, &direct), 0);
	assert_string_equal(direct.text, res.text);
	assert_int_equal(direct.n_gen, res.n_gen);
	rt_gen_result_free(&direct);
	rt_backend_close(b);
	rt_gen_result_free(&res);

	/* backend errors come back as they are */
	q2.max_tokens = 0;
	assert_int_equal(rt_runner_generate(r, &q2, &res), -EINVAL);
	q2.max_tokens = 4;
	q2.sampling.temperature = -1.0f / 0.0f * 0.0f; /* NaN */
	assert_int_equal(rt_runner_generate(r, &q2, &res), -FL_ERANGE);

	/* a callback returning non-zero cancels the request in the runner */
	struct sink sk2 = {.stop_after = 1};
	q2 = q;
	q2.max_tokens = 200;
	q2.userdata = &sk2;
	assert_int_equal(rt_runner_generate(r, &q2, &res), 0);
	if (res.stop_reason != RT_STOP_EOG) {
		assert_int_equal(res.stop_reason, RT_STOP_CALLBACK);
		assert_true(res.n_gen < 200);
	}
	rt_gen_result_free(&res);

	struct rt_backend_stats bs;
	assert_int_equal(rt_runner_backend_stats(r, &bs), 0);
	assert_int_equal(bs.n_requests, 2);
	assert_true(bs.n_gen_tokens >= 1);
	rt_runner_get_status(r, &st);
	assert_int_equal(st.n_crashes, 0);
	assert_int_equal(st.queued, 0);
	assert_int_equal(rt_runner_reset(r), -FL_ESTATE);
	rt_runner_stop(r, 2000);
}

static void test_fork_mode(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_default(&c);
	c.exe = NULL;
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "fork";
	q.max_tokens = 3;
	struct rt_gen_result res;
	assert_int_equal(rt_runner_generate(r, &q, &res), 0);
	assert_true(res.n_gen >= 1);
	rt_gen_result_free(&res);
	rt_runner_stop(r, 2000);
}

static void test_killed_mid_request(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_default(&c);
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	pid_t first = st.pid;

	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "Tell me a long story";
	q.max_tokens = 200;
	struct sink sk = {.kill_pid = first};
	q.on_text = on_text;
	q.userdata = &sk;
	struct rt_gen_result res;
	assert_int_equal(rt_runner_generate(r, &q, &res), -FL_ECRASH);
	rt_runner_get_status(r, &st);
	assert_int_equal(st.last_exit_signal, SIGKILL);
	assert_int_equal(st.last_exit_status, -1);
	assert_int_equal(st.n_crashes, 1);
	assert_int_equal(st.last_error, -FL_ECRASH);

	/* restarted: the next request works */
	q.on_text = NULL;
	q.max_tokens = 4;
	assert_int_equal(rt_runner_generate(r, &q, &res), 0);
	assert_true(res.n_gen >= 1);
	rt_gen_result_free(&res);
	rt_runner_get_status(r, &st);
	assert_int_equal(st.state, RT_RUNNER_READY);
	assert_true(st.pid > 0 && st.pid != first);
	assert_int_equal(st.n_starts, 2);
	rt_runner_stop(r, 2000);
}

static void test_hung_heartbeat(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_default(&c);
	c.limits.heartbeat_interval_ms = 50;
	c.limits.heartbeat_timeout_ms = 300;
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	pid_t first = st.pid;
	assert_int_equal(kill(first, SIGSTOP), 0);
	/* a request to the hung runner fails once the heartbeat gives up */
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "anyone?";
	q.max_tokens = 2;
	struct rt_gen_result res;
	long long t0 = ms_now();
	assert_int_equal(rt_runner_generate(r, &q, &res), -FL_ECRASH);
	long long dt = ms_now() - t0;
	assert_true(dt >= 200 && dt < 3000);
	rt_runner_get_status(r, &st);
	assert_int_equal(st.n_crashes, 1);
	assert_int_equal(st.last_exit_signal, SIGKILL);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	rt_runner_get_status(r, &st);
	assert_true(st.pid != first);
	assert_int_equal(rt_runner_generate(r, &q, &res), 0);
	rt_gen_result_free(&res);
	rt_runner_stop(r, 2000);
}

/* FL_TEST_TIME_SCALE (1-100, default 1): how much slower than a native
 * machine this one runs the engine (packaging/cross/build.sh sets 10 for
 * qemu-user, where armhf has no hardware fmaf). */
static int time_scale(void)
{
	const char *e = getenv("FL_TEST_TIME_SCALE");
	int k = e ? atoi(e) : 1;
	return k < 1 ? 1 : k > 100 ? 100 : k;
}

static void test_request_timeout(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_default(&c);
	/* Generous against a loaded machine under ASan: a steady 16-token
	 * request takes milliseconds, the timeout is only for the hung one. */
	c.limits.request_timeout_ms = 3000 * time_scale();
	c.limits.heartbeat_interval_ms = 20; /* pings during generation are answered */
	c.limits.heartbeat_timeout_ms = 3000 * time_scale();
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "steady";
	q.max_tokens = 16;
	struct rt_gen_result res;
	for (int i = 0; i < 3; i++) {
		assert_int_equal(rt_runner_generate(r, &q, &res), 0);
		rt_gen_result_free(&res);
		usleep(50000);
	}
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	assert_int_equal(st.n_crashes, 0);
	/* a runner that stops answering: the request times out first */
	c.limits.heartbeat_timeout_ms = 30000;
	rt_runner_stop(r, 1000);
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	rt_runner_get_status(r, &st);
	assert_int_equal(kill(st.pid, SIGSTOP), 0);
	long long t0 = ms_now();
	assert_int_equal(rt_runner_generate(r, &q, &res), -FL_ETIMEOUT);
	long long dt = ms_now() - t0;
	assert_true(dt >= 2950LL * time_scale() && dt < 15000LL * time_scale());
	rt_runner_get_status(r, &st);
	assert_int_equal(st.last_error, -FL_ETIMEOUT);
	assert_int_equal(st.n_crashes, 1);
	assert_int_equal(rt_runner_generate(r, &q, &res), 0);
	rt_gen_result_free(&res);
	rt_runner_stop(r, 1000);
}

static void test_crash_loop(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_default(&c);
	c.exe = "/bin/sh"; /* "sh runner --fd ...": fails at once with a message */
	c.limits.crash_loop_n = 3;
	c.limits.crash_loop_window_ms = 10000;
	c.limits.backoff_min_ms = 5;
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	long long t0 = ms_now();
	assert_int_equal(rt_runner_wait_ready(r, 10000), -FL_ECRASH);
	assert_true(ms_now() - t0 < 5000);
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	assert_int_equal(st.state, RT_RUNNER_CRASH_LOOP);
	assert_int_equal(st.n_starts, 3);
	assert_int_equal(st.n_crashes, 3);
	assert_true(st.last_exit_status > 0);
	assert_int_equal(st.last_exit_signal, 0);
	char tail[RT_RUNNER_STDERR_BYTES];
	assert_true(rt_runner_stderr_tail(r, tail, sizeof(tail)) > 0);
	assert_non_null(strstr(tail, "runner")); /* sh: cannot open runner */
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "x";
	struct rt_gen_result res;
	assert_int_equal(rt_runner_generate(r, &q, &res), -FL_ESTATE);
	/* reset: tries again (and loops again) */
	assert_int_equal(rt_runner_reset(r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 10000), -FL_ECRASH);
	rt_runner_get_status(r, &st);
	assert_int_equal(st.n_starts, 6);
	rt_runner_stop(r, 100);
}

struct bg {
	struct rt_runner *r;
	int ret;
};

static void *bg_gen(void *arg)
{
	struct bg *g = arg;
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "a long one";
	q.max_tokens = 200;
	struct rt_gen_result res;
	g->ret = rt_runner_generate(g->r, &q, &res);
	if (g->ret == 0)
		rt_gen_result_free(&res);
	return NULL;
}

static void test_queue_full(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_default(&c);
	c.limits.queue_max = 1;
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	assert_int_equal(kill(st.pid, SIGSTOP), 0); /* keep the first request in flight */
	struct bg g = {r, 1};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, bg_gen, &g), 0);
	for (int i = 0; i < 2000; i++) {
		rt_runner_get_status(r, &st);
		if (st.queued == 1)
			break;
		usleep(1000);
	}
	assert_int_equal(st.queued, 1);
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "x";
	struct rt_gen_result res;
	long long t0 = ms_now();
	assert_int_equal(rt_runner_generate(r, &q, &res), -FL_EBUSY);
	/* "At once": the request in flight is stopped for good, so any bound
	 * proves no waiting; 2 s leaves room for a loaded machine. */
	assert_true(ms_now() - t0 < 2000);
	assert_int_equal(kill(st.pid, SIGCONT), 0);
	pthread_join(th, NULL);
	if (g.ret != 0) {
		char tail[RT_RUNNER_STDERR_BYTES];
		rt_runner_stderr_tail(r, tail, sizeof(tail));
		rt_runner_get_status(r, &st);
		print_message("runner stderr: %s crashes %u\n", tail, st.n_crashes);
	}
	assert_int_equal(g.ret, 0);
	assert_int_equal(rt_runner_generate(r, &q, &res), 0);
	rt_gen_result_free(&res);
	rt_runner_stop(r, 2000);
}

/* Does RLIMIT_AS bind this process? A child lowers it to 64 MiB and maps
 * 256 MiB. qemu-user accepts the guest's setrlimit(RLIMIT_AS) but does not
 * apply it (the limit would hit qemu's own allocations), so there the map
 * succeeds. Probing the behaviour itself is more robust than spotting qemu
 * (its auxv, /proc and uname all look like the guest's). */
static bool rlimit_as_enforced(void)
{
	pid_t pid = fork();
	if (pid < 0)
		return true;
	if (pid == 0) {
		struct rlimit rl = {.rlim_cur = 64u << 20, .rlim_max = 64u << 20};
		if (setrlimit(RLIMIT_AS, &rl) != 0)
			_exit(2);
		void *p = mmap(NULL, 256u << 20, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		_exit(p == MAP_FAILED ? 0 : 1);
	}
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return !WIFEXITED(st) || WEXITSTATUS(st) != 1;
}

static void test_memory_limit(void **state)
{
	(void)state;
#if defined(__SANITIZE_ADDRESS__)
	skip(); /* ASan reserves terabytes of shadow memory: no RLIMIT_AS possible */
#endif
	if (!rlimit_as_enforced()) {
		print_message("test_memory_limit skipped: RLIMIT_AS is not enforced here "
			      "(qemu-user ignores the guest's address-space limit)\n");
		skip();
	}
	struct rt_runner_config c;
	cfg_default(&c);
	c.limits.mem_bytes = 4ull << 20; /* the 1.4 MB model plus its buffers do not fit */
	c.limits.n_ctx = 0;
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), -ENOMEM);
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	assert_int_equal(st.state, RT_RUNNER_LOAD_FAILED);
	assert_int_equal(st.last_error, -ENOMEM);
	assert_int_equal(st.n_crashes, 0);
	char tail[RT_RUNNER_STDERR_BYTES];
	rt_runner_stderr_tail(r, tail, sizeof(tail));
	assert_non_null(strstr(tail, "cannot open"));
	rt_runner_stop(r, 1000);
}

static void test_load_failed_and_args(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_default(&c);
	struct rt_runner *r = NULL;
	c.limits.queue_max = 0;
	assert_int_equal(rt_runner_start(&c, &r), -EINVAL);
	cfg_default(&c);
	c.backend = NULL;
	assert_int_equal(rt_runner_start(&c, &r), -EINVAL);
	assert_null(r);
	cfg_default(&c);
	c.model_path = "/nonexistent/model.gguf";
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), -ENOENT);
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "x";
	struct rt_gen_result res;
	assert_int_equal(rt_runner_generate(r, &q, &res), -FL_ESTATE);
	rt_runner_stop(r, 1000);
	rt_runner_stop(NULL, 0);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_msg_roundtrip),
		cmocka_unit_test(test_msg_reject),
		cmocka_unit_test(test_msg_text_bytes),
		cmocka_unit_test(test_generate_real),
		cmocka_unit_test(test_fork_mode),
		cmocka_unit_test(test_killed_mid_request),
		cmocka_unit_test(test_hung_heartbeat),
		cmocka_unit_test(test_request_timeout),
		cmocka_unit_test(test_crash_loop),
		cmocka_unit_test(test_queue_full),
		cmocka_unit_test(test_memory_limit),
		cmocka_unit_test(test_load_failed_and_args),
	};
	return cmocka_run_group_tests(tests, setup_all, NULL);
}
