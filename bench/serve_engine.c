/* bench/serve.sh's reference: the built-in engine called directly, in
 * process and warm. The model is loaded once with the options a runner uses
 * (the gguf backend, THREADS, CTX, the default KV type), then every line
 * read on stdin, "run" or "run N", runs one request (PROMPT, MAX_TOKENS or
 * N tokens, greedy sampling, as the HTTP side asks) and prints one line:
 *
 *   TOK_PER_S N_GEN WALL_MS CPU_MS
 *
 * where WALL_MS is the whole rt_backend_generate() call (tokenizing, prompt
 * with the prefix cache of the previous request, generation), the same span
 * an HTTP client sees minus HTTP and the runner socket, and CPU_MS the CPU
 * time this process spent in it (all its threads). Driven one request
 * at a time from the script, so engine and HTTP runs interleave and see the
 * same machine load. "quit" or end of input ends it.
 *
 *   serve_engine_bench MODEL THREADS CTX PROMPT MAX_TOKENS */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "flotilla/backend.h"
#include "flotilla/error.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double cpu_ms(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static int arg_int(const char *s, int lo, int hi, int *ret)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -EINVAL;
	*ret = (int)v;
	return 0;
}

int main(int argc, char **argv)
{
	int threads, ctx, max_tokens;
	if (argc != 6 || arg_int(argv[2], 0, 256, &threads) < 0 ||
	    arg_int(argv[3], 0, 1 << 20, &ctx) < 0 || arg_int(argv[5], 1, 1 << 20, &max_tokens) < 0) {
		fprintf(stderr, "usage: serve_engine_bench MODEL THREADS CTX PROMPT MAX_TOKENS\n");
		return 2;
	}
	struct rt_backend_opts o;
	rt_backend_opts_default(&o); /* as rt_runner_cli() */
	o.n_threads = threads;
	o.n_ctx = ctx;
	struct rt_backend *b = NULL;
	int r = rt_backend_open("gguf", argv[1], &o, &b);
	if (r < 0) {
		fprintf(stderr, "serve_engine_bench: %s: %s\n", argv[1], fl_strerror(r));
		return 1;
	}
	struct rt_gen_request req;
	rt_gen_request_default(&req); /* greedy */
	req.prompt = argv[4];
	req.max_tokens = max_tokens;
	char line[64];
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	while (fgets(line, sizeof(line), stdin) && strncmp(line, "quit", 4) != 0) {
		int n = max_tokens;
		if (sscanf(line, "run %d", &n) == 1 && (n < 1 || n > (1 << 20))) {
			fprintf(stderr, "serve_engine_bench: bad token count: %s", line);
			rt_backend_close(b);
			return 2;
		}
		req.max_tokens = n;
		struct rt_gen_result res;
		double t0 = now_ms(), c0 = cpu_ms();
		r = rt_backend_generate(b, &req, &res);
		double ms = now_ms() - t0, cms = cpu_ms() - c0;
		if (r < 0) {
			fprintf(stderr, "serve_engine_bench: generate: %s\n", fl_strerror(r));
			rt_backend_close(b);
			return 1;
		}
		printf("%.2f %d %.1f %.1f\n", res.n_gen * 1000.0 / ms, res.n_gen, ms, cms);
		rt_gen_result_free(&res);
	}
	rt_backend_close(b);
	return 0;
}
