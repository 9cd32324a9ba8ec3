/* flotilla-agent run-model: load a GGUF model (a file, or a slot/bundle
 * directory holding one) in the built-in engine, generate, print text and
 * timings. `run-model --ref ARGS` speaks the llama.cpp reference driver's
 * contract (bench/conformance.sh). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>

#include "agent.h"
#include <flotilla/backend.h>
#include <flotilla/cleanup.h>
#include <flotilla/engine.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/util.h>

static void usage(FILE *f)
{
	fputs("usage: flotilla-agent run-model MODEL.gguf|DIR [--prompt TEXT | --chat TEXT]\n"
	      "         [-n MAX_TOKENS (64)] [-t THREADS] [-c CONTEXT] [--temp T] [--seed N]\n"
	      "       flotilla-agent run-model --ref -m MODEL ...   (conformance driver)\n",
	      f);
}

static int print_piece(void *ud, const char *text, size_t len)
{
	(void)ud;
	fwrite(text, 1, len, stdout);
	fflush(stdout);
	return 0;
}

/* A directory: its only *.gguf file. */
static char *resolve_model(const char *arg)
{
	struct stat st;
	if (stat(arg, &st) < 0 || !S_ISDIR(st.st_mode))
		return strdup(arg);
	DIR *d = opendir(arg);
	if (!d)
		return NULL;
	char *found = NULL;
	struct dirent *de;
	int n = 0;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l > 5 && !strcmp(de->d_name + l - 5, ".gguf") && n++ == 0)
			found = fl_path_join(arg, de->d_name);
	}
	closedir(d);
	if (n != 1) {
		free(found);
		return NULL;
	}
	return found;
}

int agent_run_model(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "--ref")) {
		char err[256] = "";
		int r = rt_engine_run_cli(argc - 1, argv + 1, stdout, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "flotilla-agent: run-model: %s\n", err[0] ? err : fl_strerror(r));
			return 1;
		}
		return 0;
	}
	static const struct option opts[] = {
		{"prompt", required_argument, NULL, 'p'}, {"chat", required_argument, NULL, 'C'},
		{"threads", required_argument, NULL, 't'}, {"ctx", required_argument, NULL, 'c'},
		{"temp", required_argument, NULL, 'T'},   {"seed", required_argument, NULL, 'S'},
		{"help", no_argument, NULL, 'h'},         {0},
	};
	const char *prompt = NULL, *chat = NULL;
	int64_t n = 64, threads = 0, ctx = 0, seed = 1;
	double temp = 0;
	int o;
	optind = 0; /* full re-initialization: main() parsed another argv */
	while ((o = getopt_long(argc, argv, "p:n:t:c:h", opts, NULL)) != -1) {
		int r = 0;
		switch (o) {
		case 'p': prompt = optarg; break;
		case 'C': chat = optarg; break;
		case 'n': r = fl_parse_i64(optarg, 1, 1 << 20, &n); break;
		case 't': r = fl_parse_i64(optarg, 1, 256, &threads); break;
		case 'c': r = fl_parse_i64(optarg, 16, 1 << 20, &ctx); break;
		case 'S': r = fl_parse_i64(optarg, 0, INT64_MAX, &seed); break;
		case 'T': temp = strtod(optarg, NULL); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (r < 0) {
			fprintf(stderr, "flotilla-agent: run-model: bad value for -%c: %s\n", o, optarg);
			return 2;
		}
	}
	if (optind != argc - 1 || (!prompt && !chat) || (prompt && chat)) {
		usage(stderr);
		return 2;
	}
	_cleanup_free_ char *path = resolve_model(argv[optind]);
	if (!path) {
		fprintf(stderr, "flotilla-agent: run-model: %s: no single .gguf file there\n",
			argv[optind]);
		return 1;
	}
	struct rt_backend_opts bo;
	rt_backend_opts_default(&bo);
	bo.n_threads = (int)threads;
	bo.n_ctx = (int)ctx;
	int64_t t0 = fl_mono_ms();
	struct rt_backend *b = NULL;
	int r = rt_backend_open("gguf", path, &bo, &b);
	if (r < 0) {
		fprintf(stderr, "flotilla-agent: run-model: %s: %s\n", path, fl_strerror(r));
		return 1;
	}
	int64_t load_ms = fl_mono_ms() - t0;
	struct rt_gen_request req;
	rt_gen_request_default(&req);
	rt_sampling_default(&req.sampling);
	req.sampling.temperature = (float)temp;
	req.sampling.seed = (uint64_t)seed;
	if (temp <= 0)
		rt_sampling_greedy(&req.sampling);
	struct rt_chat_msg msg = {.role = "user", .content = chat};
	if (chat) {
		req.messages = &msg;
		req.n_messages = 1;
	} else {
		req.prompt = prompt;
	}
	req.max_tokens = (int)n;
	req.on_text = print_piece;
	struct rt_gen_result res = {0};
	r = rt_backend_generate(b, &req, &res);
	putchar('\n');
	if (r < 0) {
		fprintf(stderr, "flotilla-agent: run-model: %s\n", fl_strerror(r));
		rt_backend_close(b);
		return 1;
	}
	struct rt_backend_stats st;
	rt_backend_stats(b, &st);
	fprintf(stderr,
		"model %s, load %lld ms, %d threads, context %d\n"
		"prompt %d tokens in %.1f ms (%.1f tok/s); generated %d tokens in %.1f ms "
		"(%.1f tok/s), stop: %s\n",
		st.model, (long long)load_ms, st.n_threads, st.n_ctx, res.n_prompt, res.prompt_ms,
		res.prompt_ms > 0 ? res.n_prompt * 1000.0 / res.prompt_ms : 0, res.n_gen, res.gen_ms,
		res.gen_ms > 0 ? res.n_gen * 1000.0 / res.gen_ms : 0,
		rt_stop_reason_name(res.stop_reason));
	rt_gen_result_free(&res);
	rt_backend_close(b);
	return 0;
}
