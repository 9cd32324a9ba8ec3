/* Acceptance tests run on a staged slot before the switch: the model must
 * load in the runtime and answer each of the manifest's prompts within its
 * budgets. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include <flotilla/backend.h>
#include <flotilla/runner.h>
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/gguf.h>
#include <flotilla/json.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

const char *const agent_backends[] = {"gguf", NULL};

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && !strcmp(s + n - k, suffix);
}

int agent_model_file(const struct ota_manifest *m, const char **ret_path)
{
	/* runtime.model names the file when a bundle holds several GGUFs. */
	const char *named = NULL;
	if (m->runtime && fl_json_get_str_opt(m->runtime, "model", NULL, &named) < 0)
		return -FL_ESCHEMA;
	const char *found = NULL;
	for (size_t i = 0; i < m->n_files; i++) {
		const char *p = m->files[i].path;
		if (named ? !strcmp(p, named) : ends_with(p, ".gguf")) {
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

int agent_acceptance(const struct ota_manifest *m, const char *dir, char *why, size_t why_len)
{
	if (!m->compat.backend || strcmp(m->compat.backend, "gguf") != 0) {
		snprintf(why, why_len, "no acceptance runner for backend %s",
			 m->compat.backend ? m->compat.backend : "(none)");
		return -FL_EACCEPT;
	}
	const char *rel = NULL;
	int r = agent_model_file(m, &rel);
	if (r < 0) {
		snprintf(why, why_len, "%s", r == -FL_EDUP ? "several .gguf files and no runtime.model"
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
	if (rt_gguf_open(path, &g) < 0) {
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
		snprintf(why, why_len, "%s does not load in the engine: %s", rel, fl_strerror(r));
		return -FL_EACCEPT;
	}
	fl_info("acceptance: %s loaded in %lld ms", rel, (long long)(fl_mono_ms() - t0));
	for (size_t i = 0; i < m->n_tests && r == 0; i++) {
		const struct ota_acceptance_test *t = &m->tests[i];
		const char *label = t->name ? t->name : "";
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
			if (k == -FL_ECRASH)
				rt_runner_stderr_tail(runner, tail, sizeof(tail));
			snprintf(why, why_len, "test %zu %s: generation failed: %s%s%s", i + 1, label,
				 fl_strerror(k), tail[0] ? ": " : "", tail);
			r = -FL_EACCEPT;
		} else if (t->expect && !strstr(res.text, t->expect)) {
			snprintf(why, why_len, "test %zu %s: output does not contain \"%.64s\" (got \"%.80s\")",
				 i + 1, label, t->expect, res.text);
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
			fl_info("acceptance: test %zu %s passed (%d tokens, %lld ms, %ld MiB)", i + 1,
				label, res.n_gen, (long long)ms, rss_mb);
		}
		rt_gen_result_free(&res);
	}
	rt_runner_stop(runner, 5000);
	return r;
}
