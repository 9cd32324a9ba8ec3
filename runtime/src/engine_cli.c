/* rt_engine_run_cli(): the engine driven like bench/conformance/llref.c
 * (greedy ids, report, raw logits files), for `flotilla-agent run-model`. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/cleanup.h"
#include "flotilla/engine.h"
#include "flotilla/error.h"
#include "flotilla/gguf.h"
#include "flotilla/tokenizer.h"
#include "flotilla/util.h"

#define CLI_MAX_PROMPT_TOKENS 65536
#define CLI_MAX_GEN 32768

struct cli_opts {
	const char *model, *prompt, *ids, *report, *logits, *logits_prompt;
	int n_gen, threads;
	bool add_bos, parse_special, kv_f16, stop_eog, no_repack;
};

static int fail(char *err, size_t err_size, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t err_size, int code, const char *fmt, ...)
{
	if (err && err_size) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, err_size, fmt, ap);
		va_end(ap);
	}
	return code;
}

static int parse_args(int argc, char **argv, struct cli_opts *o, char *err, size_t es)
{
	memset(o, 0, sizeof(*o));
	o->n_gen = 64;
	o->threads = 2;
	o->add_bos = true;
	o->parse_special = true;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes = true;
		int64_t n;
		if (!strcmp(a, "-m"))
			o->model = v;
		else if (!strcmp(a, "-p"))
			o->prompt = v;
		else if (!strcmp(a, "-i"))
			o->ids = v;
		else if (!strcmp(a, "-o"))
			o->report = v;
		else if (!strcmp(a, "--logits"))
			o->logits = v;
		else if (!strcmp(a, "--logits-prompt"))
			o->logits_prompt = v;
		else if (!strcmp(a, "-n")) {
			if (!v || fl_parse_i64(v, 0, CLI_MAX_GEN, &n) < 0)
				return fail(err, es, -EINVAL, "bad -n");
			o->n_gen = (int)n;
		} else if (!strcmp(a, "-t")) {
			if (!v || fl_parse_i64(v, 1, 256, &n) < 0)
				return fail(err, es, -EINVAL, "bad -t");
			o->threads = (int)n;
		} else if (!strcmp(a, "--fa")) {
			if (!v || strcmp(v, "off") != 0)
				return fail(err, es, -FL_EUNSUPPORTED, "--fa: only 'off' is implemented");
		} else {
			takes = false;
			if (!strcmp(a, "--no-bos"))
				o->add_bos = false;
			else if (!strcmp(a, "--no-parse-special"))
				o->parse_special = false;
			else if (!strcmp(a, "--kv-f16"))
				o->kv_f16 = true;
			else if (!strcmp(a, "--no-repack"))
				o->no_repack = true;
			else if (!strcmp(a, "--stop-eog"))
				o->stop_eog = true;
			else if (strcmp(a, "-v") != 0)
				return fail(err, es, -EINVAL, "unknown argument '%s'", a);
		}
		if (takes) {
			if (!v)
				return fail(err, es, -EINVAL, "%s needs a value", a);
			i++;
		}
	}
	if (!o->model)
		return fail(err, es, -EINVAL, "-m is required");
	if ((o->prompt == NULL) == (o->ids == NULL))
		return fail(err, es, -EINVAL, "exactly one of -p / -i is required");
	return 0;
}

static int parse_ids(const char *s, int32_t *out, int max, int n_vocab)
{
	int n = 0;
	for (const char *p = s; *p;) {
		while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n')
			p++;
		if (!*p)
			break;
		char *end = NULL;
		errno = 0;
		long v = strtol(p, &end, 10);
		if (errno || end == p || v < 0 || v >= n_vocab || n >= max)
			return -EINVAL;
		out[n++] = (int32_t)v;
		p = end;
	}
	return n;
}

static int write_f32(const char *path, const float *v, int n)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -errno;
	size_t w = fwrite(v, sizeof(float), (size_t)n, f);
	int rc = fclose(f);
	return w == (size_t)n && rc == 0 ? 0 : -EIO;
}

static int32_t argmax(const float *l, int n)
{
	int32_t b = 0;
	for (int i = 1; i < n; i++)
		if (l[i] > l[b])
			b = i;
	return b;
}

int rt_engine_run_cli(int argc, char **argv, FILE *out, char *err, size_t err_size)
{
	struct cli_opts o;
	int r = parse_args(argc, argv, &o, err, err_size);
	if (r < 0)
		return r;
	struct rt_gguf *g = NULL;
	struct rt_tokenizer *tok = NULL;
	struct rt_engine *e = NULL;
	_cleanup_free_ int32_t *toks = NULL;
	FILE *rep = NULL;
	r = rt_gguf_open(o.model, &g);
	if (r < 0) {
		r = fail(err, err_size, r, "cannot open %s: %s %s", o.model, fl_strerror(r),
			 rt_gguf_last_error());
		goto out;
	}
	int n_prompt = 0;
	toks = calloc((size_t)CLI_MAX_PROMPT_TOKENS + CLI_MAX_GEN + 1, sizeof(int32_t));
	if (!toks) {
		r = -ENOMEM;
		goto out;
	}
	/* the vocabulary size comes from the model for -i, from the tokenizer for -p */
	const struct rt_gguf_tensor *te = rt_gguf_find_tensor(g, "token_embd.weight");
	int n_vocab_model = te ? (int)te->ne[1] : 0;
	if (o.ids) {
		n_prompt = parse_ids(o.ids, toks, CLI_MAX_PROMPT_TOKENS, n_vocab_model);
		if (n_prompt < 0) {
			r = fail(err, err_size, -EINVAL, "bad token id list (ids must be 0..%d)",
				 n_vocab_model - 1);
			goto out;
		}
	} else {
		r = rt_tokenizer_load(g, &tok);
		if (r < 0) {
			r = fail(err, err_size, r, "tokenizer: %s", fl_strerror(r));
			goto out;
		}
		int32_t *ids = NULL;
		size_t n = 0;
		r = rt_tokenize(tok, o.prompt, strlen(o.prompt), o.add_bos, o.parse_special, &ids, &n);
		if (r < 0) {
			r = fail(err, err_size, r, "tokenize: %s", fl_strerror(r));
			goto out;
		}
		if (n > CLI_MAX_PROMPT_TOKENS) {
			free(ids);
			r = fail(err, err_size, -FL_ETOOBIG, "prompt too long");
			goto out;
		}
		memcpy(toks, ids, n * sizeof(int32_t));
		free(ids);
		n_prompt = (int)n;
	}
	if (n_prompt == 0) {
		r = fail(err, err_size, -EINVAL, "empty prompt");
		goto out;
	}
	struct rt_engine_opts eo;
	rt_engine_opts_default(&eo);
	eo.n_ctx = n_prompt + o.n_gen + 1;
	eo.n_threads = o.threads;
	eo.n_batch = eo.n_ctx < 512 ? eo.n_ctx : 512;
	eo.kv_type = o.kv_f16 ? RT_GGML_TYPE_F16 : RT_GGML_TYPE_F32;
	eo.ggml_repack_order = !o.no_repack;
	r = rt_engine_new(g, &eo, &e);
	if (r < 0) {
		r = fail(err, err_size, r, "engine: %s", fl_strerror(r));
		goto out;
	}
	const int nv = rt_engine_info(e)->n_vocab;
	int64_t t0 = fl_mono_ns();
	r = rt_engine_eval(e, toks, n_prompt, false);
	int64_t t_prompt = fl_mono_ns() - t0;
	if (r < 0) {
		r = fail(err, err_size, r, "prompt eval: %s", fl_strerror(r));
		goto out;
	}
	const float *lg = rt_engine_logits(e, -1);
	if (o.logits_prompt && (r = write_f32(o.logits_prompt, lg, nv)) < 0) {
		r = fail(err, err_size, r, "cannot write %s", o.logits_prompt);
		goto out;
	}
	int32_t *gen = toks + n_prompt;
	int n_done = 0;
	int64_t t1 = fl_mono_ns();
	while (n_done < o.n_gen) {
		int32_t next = argmax(lg, nv);
		gen[n_done++] = next;
		if (n_done == o.n_gen || (o.stop_eog && tok && rt_tok_is_eog(tok, next)))
			break; /* lg stays the distribution of the last generated token */
		r = rt_engine_eval(e, &gen[n_done - 1], 1, false);
		if (r < 0) {
			r = fail(err, err_size, r, "decode: %s", fl_strerror(r));
			goto out;
		}
		lg = rt_engine_logits(e, -1);
	}
	int64_t t_gen = fl_mono_ns() - t1;
	if (o.logits && (r = write_f32(o.logits, lg, nv)) < 0) {
		r = fail(err, err_size, r, "cannot write %s", o.logits);
		goto out;
	}
	rep = o.report ? fopen(o.report, "w") : out;
	if (!rep) {
		r = fail(err, err_size, -errno, "cannot write %s", o.report);
		goto out;
	}
	fprintf(rep, "flotilla 1\nn_vocab %d\nprompt %d", nv, n_prompt);
	for (int i = 0; i < n_prompt; i++)
		fprintf(rep, " %d", toks[i]);
	fprintf(rep, "\ngen %d", n_done);
	for (int i = 0; i < n_done; i++)
		fprintf(rep, " %d", gen[i]);
	fprintf(rep, "\ntiming prompt_tokens %d prompt_ms %.3f gen_tokens %d gen_ms %.3f\n", n_prompt,
		(double)t_prompt / 1e6, n_done > 0 ? n_done - 1 : 0, (double)t_gen / 1e6);
	r = fflush(rep) == 0 ? 0 : -EIO;
	if (o.report && fclose(rep) != 0 && r == 0)
		r = -EIO;
	rep = NULL;
	if (r < 0)
		fail(err, err_size, r, "write failed");
out:
	if (rep && rep != out)
		fclose(rep);
	rt_engine_free(e);
	rt_tokenizer_free(tok);
	rt_gguf_free(g);
	return r;
}
