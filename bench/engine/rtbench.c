/* bench/engine/rtbench.c - driver of the built-in engine for bench/engine.sh
 * and bench/conformance.sh (compiled by those scripts against the runtime and
 * common static libraries of a build directory; not part of the CMake build,
 * so the benches do not depend on flotilla-agent).
 *
 *   rtbench ref ARGS...      = rt_engine_run_cli (llref's contract, see
 *                              bench/conformance/llref.c)
 *   rtbench bench -m MODEL [-t T] [-p 128] [-n 32] [-r 3] [--kv-f16]
 *       prints one line:
 *       pp_tok_s X tg_tok_s Y peak_rss_kib Z file_bytes W
 *       prompt: P fixed pseudo-random token ids evaluated in one call (batch
 *       512, like llama-bench's -p); decode: N single-token evals after
 *       them (like llama-bench's -n, which decodes from an empty cache;
 *       here after the prompt, so slightly more attention work). Best of R. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "flotilla/engine.h"
#include "flotilla/ggml_types.h"
#include "flotilla/gguf.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int bench(int argc, char **argv)
{
	const char *model = NULL;
	int threads = 1, np = 128, ng = 32, reps = 3;
	int kv_f16 = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--kv-f16")) {
			kv_f16 = 1;
			continue;
		}
		if (!v) {
			fprintf(stderr, "rtbench: %s needs a value\n", a);
			return 2;
		}
		if (!strcmp(a, "-m"))
			model = v;
		else if (!strcmp(a, "-t"))
			threads = atoi(v);
		else if (!strcmp(a, "-p"))
			np = atoi(v);
		else if (!strcmp(a, "-n"))
			ng = atoi(v);
		else if (!strcmp(a, "-r"))
			reps = atoi(v);
		else {
			fprintf(stderr, "rtbench: unknown argument %s\n", a);
			return 2;
		}
		i++;
	}
	if (!model || threads < 1 || threads > 256 || np < 1 || np > 4096 || ng < 1 ||
	    ng > 4096 || reps < 1 || reps > 100) {
		fprintf(stderr, "rtbench bench: -m MODEL [-t 1..256] [-p 1..4096] [-n 1..4096] "
				"[-r 1..100] [--kv-f16]\n");
		return 2;
	}
	struct stat st;
	if (stat(model, &st) != 0) {
		fprintf(stderr, "rtbench: %s: %s\n", model, strerror(errno));
		return 1;
	}
	struct rt_gguf *g;
	int r = rt_gguf_open(model, &g);
	if (r < 0) {
		fprintf(stderr, "rtbench: %s: %s\n", model, rt_gguf_last_error());
		return 1;
	}
	struct rt_engine_opts eo;
	rt_engine_opts_default(&eo);
	eo.n_threads = threads;
	eo.n_ctx = np + ng + 16;
	eo.n_batch = np < 512 ? np : 512;
	eo.kv_type = kv_f16 ? RT_GGML_TYPE_F16 : RT_GGML_TYPE_F32;
	struct rt_engine *e;
	r = rt_engine_new(g, &eo, &e);
	if (r < 0) {
		fprintf(stderr, "rtbench: engine: %d\n", r);
		rt_gguf_free(g);
		return 1;
	}
	int nv = rt_engine_info(e)->n_vocab;
	int32_t *toks = calloc((size_t)np, sizeof(*toks));
	if (!toks) {
		rt_engine_free(e);
		rt_gguf_free(g);
		return 1;
	}
	uint32_t s = 12345;
	for (int i = 0; i < np; i++) {
		s = s * 1664525u + 1013904223u;
		toks[i] = (int32_t)((s >> 8) % (uint32_t)nv);
	}
	double best_pp = 0, best_tg = 0;
	for (int rep = 0; rep < reps && r == 0; rep++) {
		r = rt_engine_truncate(e, 0);
		double t0 = now_s();
		if (r == 0)
			r = rt_engine_eval(e, toks, np, false);
		double t1 = now_s();
		int32_t tok = toks[np - 1];
		for (int i = 0; i < ng && r == 0; i++) {
			r = rt_engine_eval(e, &tok, 1, false);
			tok = (int32_t)((tok * 31 + 7) % nv);
		}
		double t2 = now_s();
		if (r == 0) {
			double pp = np / (t1 - t0), tg = ng / (t2 - t1);
			if (pp > best_pp)
				best_pp = pp;
			if (tg > best_tg)
				best_tg = tg;
		}
	}
	free(toks);
	rt_engine_free(e);
	rt_gguf_free(g);
	if (r < 0) {
		fprintf(stderr, "rtbench: eval: %d\n", r);
		return 1;
	}
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("pp_tok_s %.2f tg_tok_s %.2f peak_rss_kib %ld file_bytes %lld\n", best_pp, best_tg,
	       ru.ru_maxrss, (long long)st.st_size);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "ref")) {
		char err[512] = "";
		int r = rt_engine_run_cli(argc - 1, argv + 1, stdout, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "rtbench: %s (%d)\n", err, r);
			return 1;
		}
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "bench"))
		return bench(argc - 1, argv + 1);
	fprintf(stderr, "usage: rtbench ref ARGS... | rtbench bench -m MODEL [-t T] [-p P] [-n N] "
			"[-r R] [--kv-f16]\n");
	return 2;
}
