/* Acceptance tests run on a staged slot before the switch: the model must
 * load in the runtime and answer each of the manifest's prompts within its
 * budgets. A tabular (xgboost) model's test gives feature rows as the
 * prompt and the expected classes / values as JSON (docs/serving.md). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "report.h"
#include <flotilla/backend.h>
#include <flotilla/runner.h>
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/gguf.h>
#include <flotilla/json.h>
#include <flotilla/log.h>
#include <flotilla/sdnotify.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/util.h>

const char *const agent_backends[] = {"gguf", "exec",
#ifdef FL_HAVE_XGBOOST
				     "xgboost",
#endif
				     NULL};

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && !strcmp(s + n - k, suffix);
}

const char *agent_backend_of(const struct ota_manifest *m)
{
	return m->compat.backend && m->compat.backend[0] ? m->compat.backend : "gguf";
}

/* A file the backend reads as its model. */
static bool model_suffix(const char *backend, const char *path)
{
	if (!strcmp(backend, "xgboost"))
		return ends_with(path, ".json") || ends_with(path, ".ubj");
	return ends_with(path, ".gguf");
}

int agent_model_file(const struct ota_manifest *m, const char **ret_path)
{
	/* runtime.model names the file when a bundle holds several models. */
	const char *named = NULL;
	if (m->runtime && fl_json_get_str_opt(m->runtime, "model", NULL, &named) < 0)
		return -FL_ESCHEMA;
	const char *backend = agent_backend_of(m), *found = NULL;
	for (size_t i = 0; i < m->n_files; i++) {
		const char *p = m->files[i].path;
		if (named ? !strcmp(p, named) : model_suffix(backend, p)) {
			if (found)
				return -FL_EDUP; /* ambiguous: the manifest must say */
			found = p;
		}
	}
	if (!found)
		return -FL_EMISSING;
	*ret_path = found;
	return 0;
}

/* Peak resident memory of process PID (VmHWM), KiB; 0 when unknown. */
/* Model output and runner stderr go into the install error, which the
 * state message carries: control characters (a model emits any byte) become
 * spaces so the text stays one printable line; at most N-1 bytes, cut on a
 * UTF-8 boundary. */
static void printable(char *dst, size_t n, const char *src)
{
	size_t i = 0;
	for (; src[i] && i + 1 < n; i++) {
		unsigned char c = (unsigned char)src[i];
		dst[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
	}
	if (src[i])
		while (i > 0 && ((unsigned char)dst[i - 1] & 0xC0) == 0x80)
			i--;
	if (src[i] && i > 0 && ((unsigned char)dst[i - 1] & 0xC0) == 0xC0)
		i--;
	dst[i] = '\0';
}

static long peak_rss_kib(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	long kib = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* Feature rows of a tabular test: "[[f, ...], ...]" or {"rows": [...]}
 * (null = missing). Caller frees *RET_VALS. */
static int parse_rows(const char *text, float **ret_vals, size_t *ret_rows, size_t *ret_cols,
		      char *why, size_t why_len)
{
	cJSON *root = NULL;
	if (fl_json_parse(text, strlen(text), OTA_MANIFEST_MAX_PROMPT, 8, &root) < 0) {
		snprintf(why, why_len, "prompt is not JSON feature rows");
		return -FL_EACCEPT;
	}
	const cJSON *rows = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "rows") : root;
	int n = cJSON_IsArray(rows) ? cJSON_GetArraySize(rows) : 0;
	const cJSON *first = n ? cJSON_GetArrayItem(rows, 0) : NULL;
	int cols = cJSON_IsArray(first) ? cJSON_GetArraySize(first) : 0;
	float *v = n && cols ? calloc((size_t)n * (size_t)cols, sizeof(float)) : NULL;
	int r = v ? 0 : -FL_EACCEPT;
	int i = 0;
	const cJSON *row, *x;
	cJSON_ArrayForEach(row, rows)
	{
		if (r < 0)
			break;
		if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != cols) {
			r = -FL_EACCEPT;
			break;
		}
		int j = 0;
		cJSON_ArrayForEach(x, row)
		{
			if (cJSON_IsNull(x))
				v[(size_t)i * cols + j] = NAN;
			else if (cJSON_IsNumber(x))
				v[(size_t)i * cols + j] = (float)x->valuedouble;
			else
				r = -FL_EACCEPT;
			j++;
		}
		i++;
	}
	cJSON_Delete(root);
	if (r < 0) {
		free(v);
		snprintf(why, why_len, "prompt must be rows of numbers of one length (null = missing)");
		return r;
	}
	*ret_vals = v;
	*ret_rows = (size_t)n;
	*ret_cols = (size_t)cols;
	return 0;
}

/* Compare a prediction with EXPECT: {"classes": [c, ...], "values": [v or
 * [v, ...], ...], "tolerance": t} (either or both lists; t defaults to
 * 1e-3, relative above 1). 0, or -FL_EACCEPT with the first difference. */
static int check_prediction(const struct rt_predict_result *res, const char *expect, char *why,
			    size_t why_len)
{
	cJSON *e = NULL;
	if (fl_json_parse(expect, strlen(expect), OTA_MANIFEST_MAX_EXPECT, 8, &e) < 0 ||
	    !cJSON_IsObject(e)) {
		cJSON_Delete(e);
		snprintf(why, why_len, "expect must be a JSON object with classes and/or values");
		return -FL_EACCEPT;
	}
	double tol = 1e-3;
	const cJSON *cls = cJSON_GetObjectItemCaseSensitive(e, "classes");
	const cJSON *vals = cJSON_GetObjectItemCaseSensitive(e, "values");
	int r = 0;
	if (fl_json_get_double_opt(e, "tolerance", 0, 1e9, 1e-3, &tol) < 0 || (!cls && !vals) ||
	    (cls && !cJSON_IsArray(cls)) || (vals && !cJSON_IsArray(vals))) {
		snprintf(why, why_len, "expect must be a JSON object with classes and/or values");
		r = -FL_EACCEPT;
	}
	if (!r && ((cls && (size_t)cJSON_GetArraySize(cls) != res->n_rows) ||
		   (vals && (size_t)cJSON_GetArraySize(vals) != res->n_rows))) {
		snprintf(why, why_len, "expect lists %d entries for %zu rows",
			 cJSON_GetArraySize(cls ? cls : vals), res->n_rows);
		r = -FL_EACCEPT;
	}
	for (size_t i = 0; !r && cls && i < res->n_rows; i++) {
		const cJSON *c = cJSON_GetArrayItem(cls, (int)i);
		int got = rt_predict_class(res, i);
		if (!cJSON_IsNumber(c) || c->valuedouble != got) {
			snprintf(why, why_len, "row %zu: class %d, expected %s%g", i, got,
				 cJSON_IsNumber(c) ? "" : "(not a number) ",
				 cJSON_IsNumber(c) ? c->valuedouble : 0.0);
			r = -FL_EACCEPT;
		}
	}
	for (size_t i = 0; !r && vals && i < res->n_rows; i++) {
		const cJSON *v = cJSON_GetArrayItem(vals, (int)i);
		size_t n = cJSON_IsArray(v) ? (size_t)cJSON_GetArraySize(v) : 1;
		if (n != res->n_out || (!cJSON_IsArray(v) && !cJSON_IsNumber(v))) {
			snprintf(why, why_len, "row %zu: %zu outputs, expect gives %zu", i, res->n_out, n);
			r = -FL_EACCEPT;
			break;
		}
		for (size_t k = 0; !r && k < n; k++) {
			const cJSON *x = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, (int)k) : v;
			double got = res->values[i * res->n_out + k];
			double want = cJSON_IsNumber(x) ? x->valuedouble : NAN;
			if (!(fabs(got - want) <= tol * (fabs(want) > 1 ? fabs(want) : 1))) {
				snprintf(why, why_len, "row %zu: value %.6g, expected %.6g (tolerance %g)",
					 i, got, want, tol);
				r = -FL_EACCEPT;
			}
		}
	}
	cJSON_Delete(e);
	return r;
}

/* One test of a tabular model. */
static int run_predict_test(struct rt_runner *runner, const struct ota_acceptance_test *t,
			    size_t idx, struct tele_quality *q, char *why, size_t why_len,
			    int64_t *ret_us)
{
	const char *label = t->name ? t->name : "";
	float *vals = NULL;
	size_t rows = 0, cols = 0;
	char msg[256];
	if (parse_rows(t->prompt, &vals, &rows, &cols, msg, sizeof(msg)) < 0) {
		snprintf(why, why_len, "test %zu %s: %s", idx + 1, label, msg);
		return -FL_EACCEPT;
	}
	struct rt_predict_request req = {.values = vals, .n_rows = rows, .n_cols = cols};
	struct rt_predict_result res = {0};
	int64_t s = fl_mono_ns();
	int k = rt_runner_predict(runner, &req, &res, msg, sizeof(msg));
	*ret_us = (fl_mono_ns() - s) / 1000;
	free(vals);
	if (k < 0) {
		snprintf(why, why_len, "test %zu %s: prediction failed: %s", idx + 1, label,
			 msg[0] ? msg : fl_strerror(k));
		return -FL_EACCEPT;
	}
	int r = 0;
	if (q)
		agent_quality_observe_predict(q, &res);
	if (t->expect && check_prediction(&res, t->expect, msg, sizeof(msg)) < 0) {
		snprintf(why, why_len, "test %zu %s: %s", idx + 1, label, msg);
		r = -FL_EACCEPT;
	}
	rt_predict_result_free(&res);
	return r;
}

int agent_acceptance(const struct ota_manifest *m, const char *dir, struct tele_quality *ret_q,
		     char *why, size_t why_len)
{
	if (ret_q)
		tele_quality_reset(ret_q);
	const char *backend = agent_backend_of(m);
	bool tabular = !strcmp(backend, "xgboost");
	bool known = false;
	for (size_t i = 0; agent_backends[i]; i++)
		known |= !strcmp(agent_backends[i], backend);
	if (!known) {
		snprintf(why, why_len, "no acceptance runner for backend %s", backend);
		return -FL_EACCEPT;
	}
	const char *rel = NULL;
	int r = agent_model_file(m, &rel);
	if (r < 0) {
		snprintf(why, why_len, "%s", r == -FL_EDUP ? "several model files and no runtime.model"
				     : r == -FL_EMISSING ? "no model file in the bundle"
							 : "runtime.model is not a string");
		return -FL_EACCEPT;
	}
	_cleanup_free_ char *path = fl_path_join(dir, rel);
	if (!path)
		return -ENOMEM;
	/* The reader checks every offset, size, type and alignment first, so a
	 * malformed file is named precisely before the engine sees it. */
	struct rt_gguf *g = NULL;
	if (!strcmp(backend, "gguf") && rt_gguf_open(path, &g) < 0) {
		snprintf(why, why_len, "%s does not load: %s", rel, rt_gguf_last_error());
		return -FL_EACCEPT;
	}
	rt_gguf_free(g);

	/* The tests run in a runner child process, as serving will: a model
	 * that crashes or runs out of memory takes down the runner, not the
	 * agent, and the memory budget is the runner's own peak RSS. */
	int64_t t0 = fl_mono_ms();
	struct rt_runner *runner = NULL;
	r = agent_runner_start(m, dir, &runner);
	if (r < 0) {
		snprintf(why, why_len, "%s does not load in the %s runner: %s", rel, backend,
			 fl_strerror(r));
		return -FL_EACCEPT;
	}
	fl_info("acceptance: %s loaded in %lld ms", rel, (long long)(fl_mono_ms() - t0));
	for (size_t i = 0; i < m->n_tests && r == 0; i++) {
		const struct ota_acceptance_test *t = &m->tests[i];
		const char *label = t->name ? t->name : "";
		fl_sd_notify("WATCHDOG=1"); /* install progress: docs/install.md "Watchdog" */
		if (tabular) {
			int64_t us = 0;
			r = run_predict_test(runner, t, i, ret_q, why, why_len, &us);
			struct rt_runner_status st;
			rt_runner_get_status(runner, &st);
			long rss_mb = st.pid > 0 ? peak_rss_kib(st.pid) / 1024 : 0;
			if (r == 0 && t->latency_budget_ms && us > (int64_t)t->latency_budget_ms * 1000) {
				snprintf(why, why_len, "test %zu %s: %lld.%03lld ms, budget %u ms", i + 1,
					 label, (long long)us / 1000, (long long)(us % 1000),
					 t->latency_budget_ms);
				r = -FL_EACCEPT;
			} else if (r == 0 && t->memory_budget_mb && rss_mb > (long)t->memory_budget_mb) {
				snprintf(why, why_len, "test %zu %s: peak RSS %ld MiB, budget %u MiB", i + 1,
					 label, rss_mb, t->memory_budget_mb);
				r = -FL_EACCEPT;
			} else if (r == 0) {
				fl_info("acceptance: test %zu %s passed (%lld us, %ld MiB)", i + 1, label,
					(long long)us, rss_mb);
			}
			continue;
		}
		struct rt_gen_request req;
		rt_gen_request_default(&req);
		rt_sampling_greedy(&req.sampling);
		req.prompt = t->prompt;
		req.max_tokens = t->max_tokens ? (int)t->max_tokens : 32;
		struct rt_gen_result res = {0};
		int64_t s = fl_mono_ns();
		int k = rt_runner_generate(runner, &req, &res);
		int64_t us = (fl_mono_ns() - s) / 1000, ms = us / 1000;
		struct rt_runner_status st;
		rt_runner_get_status(runner, &st);
		long rss_mb = st.pid > 0 ? peak_rss_kib(st.pid) / 1024 : 0;
		if (k < 0) {
			char tail[160] = "";
			if (k == -FL_ECRASH) {
				char raw[sizeof(tail)] = "";
				rt_runner_stderr_tail(runner, raw, sizeof(raw));
				printable(tail, sizeof(tail), raw);
			}
			snprintf(why, why_len, "test %zu %s: generation failed: %s%s%s", i + 1, label,
				 fl_strerror(k), tail[0] ? ": " : "", tail);
			r = -FL_EACCEPT;
		} else if (t->expect && !strstr(res.text, t->expect)) {
			char got[81];
			printable(got, sizeof(got), res.text);
			snprintf(why, why_len, "test %zu %s: output does not contain \"%.64s\" (got \"%s\")",
				 i + 1, label, t->expect, got);
			r = -FL_EACCEPT;
		} else if (t->latency_budget_ms && us > (int64_t)t->latency_budget_ms * 1000) {
			snprintf(why, why_len, "test %zu %s: %lld.%03lld ms, budget %u ms", i + 1, label,
				 (long long)ms, (long long)(us % 1000), t->latency_budget_ms);
			r = -FL_EACCEPT;
		} else if (t->memory_budget_mb && rss_mb > (long)t->memory_budget_mb) {
			snprintf(why, why_len, "test %zu %s: peak RSS %ld MiB, budget %u MiB", i + 1,
				 label, rss_mb, t->memory_budget_mb);
			r = -FL_EACCEPT;
		} else {
			/* the quality baseline: what the model answers its
			 * vendor's tests (docs/telemetry.md) */
			if (ret_q)
				tele_quality_observe_output(ret_q, res.text, res.text ? res.text_len : 0,
							    res.n_gen > 0 ? (uint64_t)res.n_gen : 0);
			fl_info("acceptance: test %zu %s passed (%d tokens, %lld ms, %ld MiB)", i + 1,
				label, res.n_gen, (long long)ms, rss_mb);
		}
		rt_gen_result_free(&res);
	}
	rt_runner_stop(runner, 5000);
	return r;
}
