/* The "xgboost" tabular backend: models trained here with XGBoost's own C
 * API (fixed data and seed), predicted through rt_backend, through a runner
 * process and through POST /v1/predict; predictions must equal XGBoost's
 * own, classes the expected ones, and bad rows get clear 4xx errors.
 * Skipped (visibly) when the build has no libxgboost-dev. */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "flotilla/backend.h"
#include "flotilla/error.h"
#include "flotilla/json.h"
#include "flotilla/runner.h"
#include "flotilla/serve.h"

#ifdef FL_HAVE_XGBOOST
#include <xgboost/c_api.h>

#define N_TRAIN 240
#define N_FEAT 3

static char g_dir[512], g_bin_model[600], g_multi_model[600], g_reg_model[600], g_exe[512],
	g_gguf[600];
static float g_x[N_TRAIN * N_FEAT];
/* XGBoost's own predictions on g_x, per model */
static float g_want_bin[N_TRAIN], g_want_multi[N_TRAIN * 3], g_want_reg[N_TRAIN];

static struct {
	__typeof__(XGDMatrixCreateFromMat) *dm_create;
	__typeof__(XGDMatrixSetFloatInfo) *dm_set;
	__typeof__(XGDMatrixFree) *dm_free;
	__typeof__(XGBoosterCreate) *create;
	__typeof__(XGBoosterSetParam) *set;
	__typeof__(XGBoosterUpdateOneIter) *update;
	__typeof__(XGBoosterSaveModel) *save;
	__typeof__(XGBoosterPredict) *predict;
	__typeof__(XGBoosterFree) *free_booster;
} api;

/* A fixed pseudo-random sequence in [0, 1). */
static uint32_t g_seed = 12345;
static float rnd(void)
{
	g_seed = g_seed * 1664525u + 1013904223u;
	return (float)(g_seed >> 8) / (float)(1u << 24);
}

/* Train ROUNDS rounds of OBJECTIVE on g_x with LABELS, save to PATH, and
 * keep XGBoost's own predictions on g_x in WANT. */
static int train(const char *objective, const float *labels, int num_class, const char *path,
		 float *want, size_t want_n)
{
	DMatrixHandle dm;
	BoosterHandle b;
	if (api.dm_create(g_x, N_TRAIN, N_FEAT, NAN, &dm) || api.dm_set(dm, "label", labels, N_TRAIN) ||
	    api.create(&dm, 1, &b))
		return -1;
	char nc[8];
	snprintf(nc, sizeof(nc), "%d", num_class);
	api.set(b, "objective", objective);
	api.set(b, "max_depth", "3");
	api.set(b, "eta", "0.3");
	api.set(b, "seed", "7");
	api.set(b, "nthread", "1");
	if (num_class)
		api.set(b, "num_class", nc);
	for (int it = 0; it < 12; it++)
		if (api.update(b, it, dm))
			return -1;
	bst_ulong n = 0;
	const float *out = NULL;
	if (api.save(b, path) || api.predict(b, dm, 0, 0, 0, &n, &out) || n != want_n)
		return -1;
	memcpy(want, out, want_n * sizeof(float));
	api.free_booster(b);
	api.dm_free(dm);
	return 0;
}

static int setup_all(void **state)
{
	(void)state;
	const char *tmp = getenv("FL_TEST_TMPDIR"), *bin = getenv("FL_BINARY_DIR");
	if (!tmp || !bin)
		return -1;
	(void)mkdir(tmp, 0755);
	snprintf(g_dir, sizeof(g_dir), "%s/xgb", tmp);
	(void)mkdir(g_dir, 0755);
	snprintf(g_bin_model, sizeof(g_bin_model), "%s/fraud.json", g_dir);
	snprintf(g_multi_model, sizeof(g_multi_model), "%s/multi.ubj", g_dir);
	snprintf(g_reg_model, sizeof(g_reg_model), "%s/reg.json", g_dir);
	snprintf(g_gguf, sizeof(g_gguf), "%s/tiny.gguf", g_dir);
	snprintf(g_exe, sizeof(g_exe), "%s/runtime/tools/rt-runner", bin);
	void *dl = dlopen(FL_XGBOOST_SONAME, RTLD_NOW);
	if (!dl) {
		fprintf(stderr, "cannot load %s: %s\n", FL_XGBOOST_SONAME, dlerror());
		return -1;
	}
	*(void **)&api.dm_create = dlsym(dl, "XGDMatrixCreateFromMat");
	*(void **)&api.dm_set = dlsym(dl, "XGDMatrixSetFloatInfo");
	*(void **)&api.dm_free = dlsym(dl, "XGDMatrixFree");
	*(void **)&api.create = dlsym(dl, "XGBoosterCreate");
	*(void **)&api.set = dlsym(dl, "XGBoosterSetParam");
	*(void **)&api.update = dlsym(dl, "XGBoosterUpdateOneIter");
	*(void **)&api.save = dlsym(dl, "XGBoosterSaveModel");
	*(void **)&api.predict = dlsym(dl, "XGBoosterPredict");
	*(void **)&api.free_booster = dlsym(dl, "XGBoosterFree");
	if (!api.dm_create || !api.dm_set || !api.dm_free || !api.create || !api.set || !api.update ||
	    !api.save || !api.predict || !api.free_booster)
		return -1;
	/* Fraud-like: class 1 when x0 + x1/2 > 0.8; three classes by x2's
	 * third; a regression target 3*x0 - x1. */
	float yb[N_TRAIN], ym[N_TRAIN], yr[N_TRAIN];
	for (int i = 0; i < N_TRAIN; i++) {
		float *x = g_x + i * N_FEAT;
		for (int j = 0; j < N_FEAT; j++)
			x[j] = rnd();
		yb[i] = x[0] + x[1] / 2 > 0.8f ? 1.0f : 0.0f;
		ym[i] = x[2] < 1.0f / 3 ? 0.0f : x[2] < 2.0f / 3 ? 1.0f : 2.0f;
		yr[i] = 3 * x[0] - x[1];
	}
	if (train("binary:logistic", yb, 0, g_bin_model, g_want_bin, N_TRAIN) ||
	    train("multi:softprob", ym, 3, g_multi_model, g_want_multi, N_TRAIN * 3) ||
	    train("reg:squarederror", yr, 0, g_reg_model, g_want_reg, N_TRAIN))
		return -1;
	char cmd[1400];
	snprintf(cmd, sizeof(cmd),
		 "%s/runtime/tools/mkmodel --arch llama --vocab tiny --dim 64 --layers 1 --heads 4 "
		 "--kv-heads 2 --ffn 128 --type f32 --seed 1 -o %s >/dev/null",
		 bin, g_gguf);
	return system(cmd) == 0 && access(g_exe, X_OK) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ backend */

static void test_backend_binary(void **state)
{
	(void)state;
	struct rt_backend_opts o;
	rt_backend_opts_default(&o);
	o.n_threads = 1;
	struct rt_backend *b = NULL;
	assert_int_equal(rt_backend_open("xgboost", g_bin_model, &o, &b), 0);
	assert_string_equal(rt_backend_name(b), "xgboost");
	struct rt_predict_request req = {.values = g_x, .n_rows = N_TRAIN, .n_cols = N_FEAT};
	struct rt_predict_result res;
	char why[256];
	assert_int_equal(rt_backend_predict(b, &req, &res, why, sizeof(why)), 0);
	assert_int_equal(res.n_rows, N_TRAIN);
	assert_int_equal(res.n_out, 1);
	assert_int_equal(res.kind, RT_PREDICT_BINARY);
	assert_string_equal(res.objective, "binary:logistic");
	int right = 0;
	for (int i = 0; i < N_TRAIN; i++) {
		/* the very numbers XGBoost computes itself */
		assert_true(fabsf(res.values[i] - g_want_bin[i]) < 1e-6f);
		const float *x = g_x + i * N_FEAT;
		right += rt_predict_class(&res, (size_t)i) == (x[0] + x[1] / 2 > 0.8f);
	}
	print_message("xgboost binary: %d of %d training rows classified right\n", right, N_TRAIN);
	assert_true(right >= N_TRAIN * 95 / 100);
	rt_predict_result_free(&res);

	/* clear points far from the boundary: the expected classes */
	float pts[] = {0.95f, 0.9f, 0.5f, 0.05f, 0.1f, 0.5f, NAN, NAN, NAN};
	struct rt_predict_request r2 = {.values = pts, .n_rows = 3, .n_cols = N_FEAT};
	assert_int_equal(rt_backend_predict(b, &r2, &res, why, sizeof(why)), 0);
	assert_int_equal(rt_predict_class(&res, 0), 1);
	assert_int_equal(rt_predict_class(&res, 1), 0);
	assert_true(res.values[2] > 0 && res.values[2] < 1); /* all missing: still a probability */
	rt_predict_result_free(&res);

	/* schema: the wrong number of features is refused with a message */
	struct rt_predict_request r3 = {.values = pts, .n_rows = 2, .n_cols = 4};
	assert_int_equal(rt_backend_predict(b, &r3, &res, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "the model takes 3 features"));
	struct rt_predict_request r4 = {.values = pts, .n_rows = 0, .n_cols = 3};
	assert_int_equal(rt_backend_predict(b, &r4, &res, why, sizeof(why)), -EINVAL);
	/* it does not generate text */
	struct rt_gen_request g;
	rt_gen_request_default(&g);
	g.prompt = "hello";
	struct rt_gen_result gr;
	assert_int_equal(rt_backend_generate(b, &g, &gr), -FL_EUNSUPPORTED);
	struct rt_backend_stats st;
	assert_int_equal(rt_backend_stats(b, &st), 0);
	assert_string_equal(st.backend, "xgboost");
	assert_non_null(strstr(st.model, "binary:logistic 3 features 12 rounds"));
	assert_int_equal(st.n_requests, 2);
	assert_int_equal(st.n_errors, 1);
	rt_backend_close(b);
}

static void test_backend_multi_reg(void **state)
{
	(void)state;
	struct rt_backend *b = NULL;
	/* a directory with one .ubj file opens too */
	char dir[700];
	snprintf(dir, sizeof(dir), "%s/multidir", g_dir);
	(void)mkdir(dir, 0755);
	char link[800];
	snprintf(link, sizeof(link), "%s/model.ubj", dir);
	(void)unlink(link);
	assert_int_equal(symlink(g_multi_model, link), 0);
	assert_int_equal(rt_backend_open("xgboost", dir, NULL, &b), 0);
	struct rt_predict_request req = {.values = g_x, .n_rows = N_TRAIN, .n_cols = N_FEAT};
	struct rt_predict_result res;
	char why[256];
	assert_int_equal(rt_backend_predict(b, &req, &res, why, sizeof(why)), 0);
	assert_int_equal(res.kind, RT_PREDICT_MULTICLASS);
	assert_int_equal(res.n_out, 3);
	int right = 0;
	for (int i = 0; i < N_TRAIN; i++) {
		float sum = 0;
		for (int k = 0; k < 3; k++) {
			assert_true(fabsf(res.values[i * 3 + k] - g_want_multi[i * 3 + k]) < 1e-6f);
			sum += res.values[i * 3 + k];
		}
		assert_true(fabsf(sum - 1) < 1e-4f);
		float x2 = g_x[i * N_FEAT + 2];
		int want = x2 < 1.0f / 3 ? 0 : x2 < 2.0f / 3 ? 1 : 2;
		right += rt_predict_class(&res, (size_t)i) == want;
	}
	assert_true(right >= N_TRAIN * 95 / 100);
	rt_predict_result_free(&res);
	rt_backend_close(b);

	assert_int_equal(rt_backend_open("xgboost", g_reg_model, NULL, &b), 0);
	assert_int_equal(rt_backend_predict(b, &req, &res, why, sizeof(why)), 0);
	assert_int_equal(res.kind, RT_PREDICT_VALUE);
	assert_int_equal(rt_predict_class(&res, 0), -1);
	for (int i = 0; i < N_TRAIN; i++)
		assert_true(fabsf(res.values[i] - g_want_reg[i]) < 1e-5f);
	rt_predict_result_free(&res);
	rt_backend_close(b);

	/* files XGBoost does not read, or nothing to read */
	char bad[700];
	snprintf(bad, sizeof(bad), "%s/bad.json", g_dir);
	FILE *f = fopen(bad, "w");
	assert_non_null(f);
	fputs("{\"learner\": 42}", f);
	fclose(f);
	assert_int_equal(rt_backend_open("xgboost", bad, NULL, &b), -FL_EFORMAT);
	snprintf(bad, sizeof(bad), "%s/none.json", g_dir);
	assert_int_equal(rt_backend_open("xgboost", bad, NULL, &b), -ENOENT);
	/* the gguf engine does not predict */
	assert_int_equal(rt_backend_open("gguf", g_gguf, NULL, &b), 0);
	assert_int_equal(rt_backend_predict(b, &req, &res, why, sizeof(why)), -FL_EUNSUPPORTED);
	assert_non_null(strstr(why, "does not take feature rows"));
	rt_backend_close(b);
}

/* ------------------------------------------------------------- runner */

static void cfg_xgb(struct rt_runner_config *c, const char *model)
{
	memset(c, 0, sizeof(*c));
	c->exe = g_exe;
	c->backend = "xgboost";
	c->model_path = model;
	rt_runner_limits_default(&c->limits);
	c->limits.n_threads = 1;
	c->limits.backoff_min_ms = 10;
}

static void test_msg_roundtrip(void **state)
{
	(void)state;
	float v[6] = {1, 2, NAN, -4, 5e30f, 0};
	struct rt_rmsg m = {.type = RT_RMSG_PREDICT, .id = 9,
			    .preq = {.values = v, .n_rows = 2, .n_cols = 3}};
	void *buf;
	size_t len;
	assert_int_equal(rt_rmsg_encode(&m, &buf, &len), 0);
	struct rt_rmsg *d = NULL;
	assert_int_equal(rt_rmsg_decode((uint8_t *)buf + 4, len - 4, &d), 0);
	assert_int_equal(d->preq.n_rows, 2);
	assert_int_equal(d->preq.n_cols, 3);
	assert_memory_equal(d->preq.values, v, sizeof(v));
	for (size_t n = 0; n < len - 4; n++) { /* every strict prefix is refused */
		struct rt_rmsg *x = NULL;
		assert_true(rt_rmsg_decode((uint8_t *)buf + 4, n, &x) < 0);
		assert_null(x);
	}
	rt_rmsg_free(d);
	free(buf);
	struct rt_rmsg p = {.type = RT_RMSG_PREDICTION, .id = 9,
			    .pres = {.values = v, .n_rows = 2, .n_out = 3, .kind = RT_PREDICT_MULTICLASS,
				     .objective = "multi:softprob", .ms = 0.5}};
	assert_int_equal(rt_rmsg_encode(&p, &buf, &len), 0);
	assert_int_equal(rt_rmsg_decode((uint8_t *)buf + 4, len - 4, &d), 0);
	assert_int_equal(d->pres.kind, RT_PREDICT_MULTICLASS);
	assert_string_equal(d->pres.objective, "multi:softprob");
	assert_memory_equal(d->pres.values, v, sizeof(v));
	/* a bad kind byte is refused */
	((uint8_t *)buf)[9] = 9;
	rt_rmsg_free(d);
	d = NULL;
	assert_int_equal(rt_rmsg_decode((uint8_t *)buf + 4, len - 4, &d), -FL_EPROTO);
	free(buf);
	/* row counts the payload cannot hold */
	uint8_t huge[13] = {RT_RMSG_PREDICT, 1, 0, 0, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0, 0};
	assert_int_equal(rt_rmsg_decode(huge, sizeof(huge), &d), -FL_ETOOBIG);
	uint8_t zero[13] = {RT_RMSG_PREDICT, 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0};
	assert_int_equal(rt_rmsg_decode(zero, sizeof(zero), &d), -FL_EPROTO);
	/* an empty request is not encoded */
	m.preq.n_rows = 0;
	assert_int_equal(rt_rmsg_encode(&m, &buf, &len), -EINVAL);
}

static void test_runner_predict(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_xgb(&c, g_bin_model);
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), 0);
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	assert_non_null(strstr(st.model, "binary:logistic"));
	struct rt_predict_request req = {.values = g_x, .n_rows = N_TRAIN, .n_cols = N_FEAT};
	struct rt_predict_result res;
	char why[256];
	for (int k = 0; k < 3; k++) {
		assert_int_equal(rt_runner_predict(r, &req, &res, why, sizeof(why)), 0);
		assert_int_equal(res.n_rows, N_TRAIN);
		for (int i = 0; i < N_TRAIN; i++)
			assert_true(fabsf(res.values[i] - g_want_bin[i]) < 1e-6f);
		rt_predict_result_free(&res);
	}
	req.n_cols = 2;
	req.n_rows = 5;
	assert_int_equal(rt_runner_predict(r, &req, &res, why, sizeof(why)), -EINVAL);
	assert_string_equal(why, "rows have 2 values, the model takes 3 features");
	struct rt_gen_request g;
	rt_gen_request_default(&g);
	g.prompt = "hello";
	struct rt_gen_result gr;
	assert_int_equal(rt_runner_generate(r, &g, &gr), -FL_EUNSUPPORTED);
	rt_runner_get_status(r, &st);
	assert_int_equal(st.n_requests, 3);
	assert_int_equal(st.n_failed, 0); /* bad requests are not the model's failures */
	assert_int_equal(st.n_rejected, 2);
	assert_int_equal(st.n_crashes, 0);
	uint32_t hist[RT_RUNNER_LAT_BUCKETS];
	rt_runner_latency(r, hist);
	uint32_t n = 0;
	for (int i = 0; i < RT_RUNNER_LAT_BUCKETS; i++)
		n += hist[i];
	assert_int_equal(n, 3);
	double p50 = rt_latency_quantile_ms(hist, 0.5);
	print_message("runner predict of %d rows: p50 <= %.3f ms\n", N_TRAIN, p50);
	assert_true(p50 > 0 && p50 < 5000);
	/* a crash (kill -9) restarts the runner; predictions go on */
	kill(st.pid, SIGKILL);
	req.n_cols = N_FEAT;
	req.n_rows = 1;
	int e = rt_runner_predict(r, &req, &res, why, sizeof(why));
	if (e == -FL_ECRASH) /* the kill raced the request */
		e = rt_runner_predict(r, &req, &res, why, sizeof(why));
	assert_int_equal(e, 0);
	assert_true(fabsf(res.values[0] - g_want_bin[0]) < 1e-6f);
	rt_predict_result_free(&res);
	rt_runner_get_status(r, &st);
	assert_int_equal(st.n_crashes, 1);
	rt_runner_stop(r, 5000);

	/* a file that is not a model: the load fails, no restart loop */
	cfg_xgb(&c, g_gguf);
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), -FL_EFORMAT);
	rt_runner_stop(r, 5000);
}

static void test_latency_quantile(void **state)
{
	(void)state;
	uint32_t h[RT_RUNNER_LAT_BUCKETS] = {0};
	assert_true(rt_latency_quantile_ms(h, 0.95) == 0);
	/* 1 ms = 1000 us: bucket floor(8 * log2(1000)) = 79, upper edge 2^(80/8) us */
	h[79] = 95;
	h[133] = 5; /* ~100 ms */
	double p95 = rt_latency_quantile_ms(h, 0.95), p99 = rt_latency_quantile_ms(h, 0.99);
	assert_true(p95 >= 1.0 && p95 < 1.1);
	assert_true(p99 > 100 && p99 < 112);
}

/* ----------------------------------------------------------- HTTP API */

struct http_res {
	int status;
	char *raw;
	const char *body;
	size_t body_len;
};

static int http_post(uint16_t port, const char *path, const char *body, struct http_res *out)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		return -errno;
	size_t blen = strlen(body);
	char *req = malloc(blen + 256);
	int n = snprintf(req, 256,
			 "POST %s HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\n\r\n",
			 path, blen);
	memcpy(req + n, body, blen);
	size_t total = (size_t)n + blen, off = 0;
	while (off < total) {
		ssize_t w = send(fd, req + off, total - off, MSG_NOSIGNAL);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	free(req);
	size_t cap = 1 << 16, len = 0;
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
	if (sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1)
		return -EPROTO;
	char *b = strstr(buf, "\r\n\r\n");
	out->body = b ? b + 4 : buf + len;
	out->body_len = (size_t)(buf + len - out->body);
	return 0;
}

/* POST BODY, expect STATUS; returns the parsed JSON body. */
static cJSON *post(uint16_t port, const char *body, int status)
{
	struct http_res r;
	assert_int_equal(http_post(port, "/v1/predict", body, &r), 0);
	if (r.status != status)
		fprintf(stderr, "got %d: %.*s\n", r.status, (int)r.body_len, r.body);
	assert_int_equal(r.status, status);
	cJSON *j = NULL;
	assert_int_equal(fl_json_parse(r.body, r.body_len, 1 << 22, 16, &j), 0);
	free(r.raw);
	return j;
}

/* A 400 whose message contains WANT and whose param is "rows". */
static void post_bad(uint16_t port, const char *body, const char *want)
{
	cJSON *j = post(port, body, 400);
	const cJSON *e;
	const char *msg, *param;
	assert_int_equal(fl_json_get_obj(j, "error", &e), 0);
	assert_int_equal(fl_json_get_str(e, "message", &msg), 0);
	if (!strstr(msg, want))
		fprintf(stderr, "message '%s' lacks '%s'\n", msg, want);
	assert_non_null(strstr(msg, want));
	assert_int_equal(fl_json_get_str(e, "type", &param), 0);
	assert_string_equal(param, "invalid_request_error");
	cJSON_Delete(j);
}

static void test_http_predict(void **state)
{
	(void)state;
	struct rt_runner_config c;
	cfg_xgb(&c, g_bin_model);
	struct rt_runner *rx = NULL, *rg = NULL;
	assert_int_equal(rt_runner_start(&c, &rx), 0);
	assert_int_equal(rt_runner_wait_ready(rx, 20000), 0);
	c.backend = "gguf";
	c.model_path = g_gguf;
	assert_int_equal(rt_runner_start(&c, &rg), 0);
	assert_int_equal(rt_runner_wait_ready(rg, 20000), 0);
	struct rt_serve_router *router;
	assert_int_equal(rt_serve_router_new(&router), 0);
	assert_int_equal(rt_serve_router_set(router, "fraud", rx, NULL), 0);
	assert_int_equal(rt_serve_router_set(router, "chat", rg, NULL), 0);
	struct rt_serve_config sc = {.tcp_addr = "127.0.0.1", .max_predict_rows = 100};
	rt_serve_router_bind(router, &sc);
	struct rt_serve *srv;
	assert_int_equal(rt_serve_start(&sc, &srv), 0);
	uint16_t port = rt_serve_tcp_port(srv);

	cJSON *j = post(port, "{\"model\":\"fraud\",\"rows\":[[0.95,0.9,0.5],[0.05,0.1,0.5],[null,null,null]]}", 200);
	const char *s;
	assert_int_equal(fl_json_get_str(j, "object", &s), 0);
	assert_string_equal(s, "prediction");
	assert_int_equal(fl_json_get_str(j, "objective", &s), 0);
	assert_string_equal(s, "binary:logistic");
	assert_int_equal(fl_json_get_str(j, "model", &s), 0);
	assert_string_equal(s, "fraud");
	const cJSON *preds = cJSON_GetObjectItemCaseSensitive(j, "predictions");
	const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j, "classes");
	assert_int_equal(cJSON_GetArraySize(preds), 3);
	assert_int_equal(cJSON_GetArraySize(cls), 3);
	assert_int_equal(cJSON_GetArrayItem(cls, 0)->valueint, 1);
	assert_int_equal(cJSON_GetArrayItem(cls, 1)->valueint, 0);
	assert_true(cJSON_GetArrayItem(preds, 0)->valuedouble > 0.5);
	assert_true(cJSON_GetArrayItem(preds, 1)->valuedouble < 0.5);
	cJSON_Delete(j);

	/* the same numbers as XGBoost's own, within float printing */
	char body[4096];
	size_t o = (size_t)snprintf(body, sizeof(body), "{\"rows\":[");
	for (int i = 0; i < 10; i++)
		o += (size_t)snprintf(body + o, sizeof(body) - o, "%s[%.9g,%.9g,%.9g]", i ? "," : "",
				      g_x[i * 3], g_x[i * 3 + 1], g_x[i * 3 + 2]);
	snprintf(body + o, sizeof(body) - o, "]}");
	j = post(port, body, 200); /* no model named: the first served */
	preds = cJSON_GetObjectItemCaseSensitive(j, "predictions");
	for (int i = 0; i < 10; i++)
		assert_true(fabs(cJSON_GetArrayItem(preds, i)->valuedouble - g_want_bin[i]) < 1e-6);
	cJSON_Delete(j);

	/* schema errors: 400 with the place named */
	post_bad(port, "{\"model\":\"fraud\"}", "rows must be a non-empty array");
	post_bad(port, "{\"rows\":[]}", "rows must be a non-empty array");
	post_bad(port, "{\"rows\":[[1,2,3],[1,2]]}", "rows[1] has 2 values, rows[0] has 3");
	post_bad(port, "{\"rows\":[[1,2,3],[1,\"x\",3]]}", "rows[1][1] must be a number or null");
	post_bad(port, "{\"rows\":[[1,2,3],{\"a\":1}]}", "rows[1] must be an array");
	post_bad(port, "{\"rows\":[[true,2,3]]}", "rows[0][0] must be a number or null");
	post_bad(port, "{\"rows\":[[1,2]]}", "rows have 2 values, the model takes 3 features");
	post_bad(port, "{\"rows\":[[1e39,2,3]]}", "rows[0][0] must be a number or null");
	o = (size_t)snprintf(body, sizeof(body), "{\"rows\":[");
	for (int i = 0; i < 101; i++)
		o += (size_t)snprintf(body + o, sizeof(body) - o, "%s[1,2,3]", i ? "," : "");
	snprintf(body + o, sizeof(body) - o, "]}");
	post_bad(port, body, "101 rows; at most 100 per request");
	post_bad(port, "{\"model\":\"chat\",\"rows\":[[1,2,3]]}", "model chat does not take feature rows");
	j = post(port, "{\"model\":\"nope\",\"rows\":[[1,2,3]]}", 404);
	cJSON_Delete(j);
	j = post(port, "[1,2]", 400);
	cJSON_Delete(j);
	/* completions on a tabular model: a 400, not a crash */
	struct http_res r;
	assert_int_equal(http_post(port, "/v1/completions", "{\"model\":\"fraud\",\"prompt\":\"hi\"}", &r), 0);
	assert_int_equal(r.status, 400);
	free(r.raw);
	struct rt_runner_status st;
	rt_runner_get_status(rx, &st);
	assert_int_equal(st.n_crashes, 0);
	assert_int_equal(st.n_failed, 0);

	rt_serve_stop(srv);
	rt_runner_stop(rx, 5000);
	rt_runner_stop(rg, 5000);
	rt_serve_router_free(router);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_latency_quantile),
		cmocka_unit_test(test_msg_roundtrip),
		cmocka_unit_test(test_backend_binary),
		cmocka_unit_test(test_backend_multi_reg),
		cmocka_unit_test(test_runner_predict),
		cmocka_unit_test(test_http_predict),
	};
	return cmocka_run_group_tests(tests, setup_all, NULL);
}

#else /* no libxgboost-dev at build time */

static void test_skipped(void **state)
{
	(void)state;
	print_message("SKIPPED: built without libxgboost-dev (packaging/deps.sh installs it)\n");
	skip();
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_skipped)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
#endif
