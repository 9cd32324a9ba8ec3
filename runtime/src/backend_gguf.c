/* The built-in "gguf" backend: rt_gguf + tokenizer + engine + sampler, with
 * prompt-prefix reuse of the KV cache between requests, stop strings and
 * streaming. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "flotilla/backend.h"
#include "flotilla/cleanup.h"
#include "flotilla/engine.h"
#include "flotilla/error.h"
#include "flotilla/gguf.h"
#include "flotilla/tokenizer.h"
#include "flotilla/util.h"

#define MAX_PATH_BYTES 4096

struct gguf_impl {
	struct rt_gguf *g;
	struct rt_tokenizer *tok;
	struct rt_engine *e;
	int32_t *ctx_tokens; /* mirror of the KV cache: n_ctx entries */
	int n_ctx_tokens;
	struct rt_backend_stats st;
};

static void impl_close(void *p)
{
	struct gguf_impl *m = p;
	if (!m)
		return;
	rt_engine_free(m->e);
	rt_tokenizer_free(m->tok);
	rt_gguf_free(m->g);
	free(m->ctx_tokens);
	free(m);
}

/* A file, or a directory holding exactly one *.gguf (or a model.gguf). */
static int resolve_path(const char *path, char *out, size_t out_size)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return fl_snprintf(out, out_size, "%s", path) < 0 ? -FL_ETOOBIG : 0;
	DIR *d = opendir(path);
	if (!d)
		return -errno;
	char found[256] = "";
	int n = 0;
	bool has_model = false;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l < 6 || l >= sizeof(found) || strcmp(de->d_name + l - 5, ".gguf") != 0 ||
		    de->d_name[0] == '.')
			continue;
		if (strcmp(de->d_name, "model.gguf") == 0)
			has_model = true;
		if (n == 0 || strcmp(de->d_name, found) < 0)
			memcpy(found, de->d_name, l + 1);
		n++;
	}
	closedir(d);
	if (has_model)
		snprintf(found, sizeof(found), "model.gguf");
	else if (n == 0)
		return -FL_EMISSING;
	else if (n > 1)
		return -FL_EDUP;
	return fl_snprintf(out, out_size, "%s/%s", path, found) < 0 ? -FL_ETOOBIG : 0;
}

static int impl_open(const char *model_path, const struct rt_backend_opts *opts, void **ret_impl)
{
	char path[MAX_PATH_BYTES];
	int r = resolve_path(model_path, path, sizeof(path));
	if (r < 0)
		return r;
	struct gguf_impl *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	r = rt_gguf_open(path, &m->g);
	if (r >= 0)
		r = rt_tokenizer_load(m->g, &m->tok);
	if (r >= 0) {
		struct rt_engine_opts eo;
		rt_engine_opts_default(&eo);
		eo.n_ctx = opts->n_ctx;
		eo.n_threads = opts->n_threads;
		eo.n_batch = opts->n_batch;
		eo.kv_type = opts->kv_type == 0 ? RT_GGML_TYPE_F32 : opts->kv_type;
		r = rt_engine_new(m->g, &eo, &m->e);
	}
	if (r >= 0 && (int64_t)rt_tok_n_vocab(m->tok) > rt_engine_info(m->e)->n_vocab)
		r = -FL_EFORMAT; /* the tokenizer could produce ids the model lacks */
	if (r >= 0) {
		m->ctx_tokens = calloc((size_t)rt_engine_info(m->e)->n_ctx, sizeof(int32_t));
		if (!m->ctx_tokens)
			r = -ENOMEM;
	}
	if (r < 0) {
		impl_close(m);
		return r;
	}
	const struct rt_model_info *in = rt_engine_info(m->e);
	snprintf(m->st.backend, sizeof(m->st.backend), "gguf");
	snprintf(m->st.model, sizeof(m->st.model), "%s %s", in->arch_name, rt_ggml_type_name(in->ftype));
	m->st.n_ctx = in->n_ctx;
	m->st.n_threads = rt_engine_n_threads(m->e);
	m->st.mem_bytes = in->weight_bytes + in->kv_bytes;
	*ret_impl = m;
	return 0;
}

/* Growing text buffer of one request. */
struct textbuf {
	char *p;
	size_t len, cap;
};

static int tb_append(struct textbuf *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 256;
		while (cap < t->len + n + 1)
			cap *= 2;
		char *p = realloc(t->p, cap);
		if (!p)
			return -ENOMEM;
		t->p = p;
		t->cap = cap;
	}
	memcpy(t->p + t->len, s, n);
	t->len += n;
	t->p[t->len] = '\0';
	return 0;
}

/* Position of the first stop string in T at or after FROM, or -1. */
static ssize_t find_stop(const struct rt_gen_request *req, const struct textbuf *t, size_t from)
{
	ssize_t best = -1;
	for (size_t i = 0; i < req->n_stop; i++) {
		const char *hit = memmem(t->p + from, t->len - from, req->stop[i], strlen(req->stop[i]));
		if (hit && (best < 0 || hit - t->p < best))
			best = hit - t->p;
	}
	return best;
}

/* Length of the longest suffix of T that is a proper prefix of a stop
 * string (text that must be held back from streaming). */
static size_t stop_prefix_tail(const struct rt_gen_request *req, const struct textbuf *t)
{
	size_t best = 0;
	for (size_t i = 0; i < req->n_stop; i++) {
		size_t sl = strlen(req->stop[i]);
		for (size_t k = sl - 1; k > best; k--) {
			if (k <= t->len && memcmp(t->p + t->len - k, req->stop[i], k) == 0) {
				best = k;
				break;
			}
		}
	}
	return best;
}

static int impl_generate(void *p, const struct rt_gen_request *req, struct rt_gen_result *ret)
{
	struct gguf_impl *m = p;
	const struct rt_model_info *in = rt_engine_info(m->e);
	_cleanup_free_ char *rendered = NULL;
	const char *text = req->prompt;
	size_t text_len = text ? strlen(text) : 0;
	bool parse_special = req->parse_special;
	int r;
	if (req->n_messages > 0) {
		r = rt_chat_render(m->tok, req->messages, req->n_messages, true, &rendered, &text_len);
		if (r < 0)
			return r;
		text = rendered;
		parse_special = true;
	}
	_cleanup_free_ int32_t *toks = NULL;
	size_t n_toks = 0;
	r = rt_tokenize(m->tok, text, text_len, true, parse_special, &toks, &n_toks);
	if (r < 0)
		return r;
	if (n_toks == 0)
		return -EINVAL;
	if (n_toks >= (size_t)in->n_ctx)
		return -FL_ETOOBIG;
	const int n = (int)n_toks;

	int64_t t0 = fl_mono_ns();
	/* reuse the cached prefix; at least one token is evaluated for logits */
	int keep = 0;
	while (keep < m->n_ctx_tokens && keep < n - 1 && m->ctx_tokens[keep] == toks[keep])
		keep++;
	(void)rt_engine_truncate(m->e, keep);
	m->n_ctx_tokens = keep;
	r = rt_engine_eval(m->e, toks + keep, n - keep, false);
	if (r < 0) {
		m->st.n_errors++;
		return r;
	}
	memcpy(m->ctx_tokens + keep, toks + keep, (size_t)(n - keep) * sizeof(int32_t));
	m->n_ctx_tokens = n;
	int64_t t1 = fl_mono_ns();

	struct rt_sampler *smp = NULL;
	r = rt_sampler_new(&req->sampling, in->n_vocab, &smp);
	if (r < 0)
		return r;
	for (int i = 0; i < n; i++)
		rt_sampler_accept(smp, toks[i]);

	struct textbuf tb = {0};
	size_t emitted = 0;
	int n_gen = 0;
	enum rt_stop_reason why = RT_STOP_MAX_TOKENS;
	r = tb_append(&tb, "", 0);
	while (r >= 0) {
		int32_t id = rt_sampler_sample(smp, rt_engine_logits(m->e, -1));
		if (rt_tok_is_eog(m->tok, id)) {
			why = RT_STOP_EOG;
			break;
		}
		rt_sampler_accept(smp, id);
		n_gen++;
		size_t plen = 0;
		const char *piece = rt_token_piece(m->tok, id, false, &plen);
		size_t before = tb.len;
		if (piece && plen && (r = tb_append(&tb, piece, plen)) < 0)
			break;
		bool stop = false;
		if (req->n_stop) {
			size_t maxs = RT_BACKEND_MAX_STOP_BYTES;
			size_t from = before > maxs ? before - maxs : 0;
			ssize_t at = find_stop(req, &tb, from);
			if (at >= 0) {
				tb.len = (size_t)at;
				tb.p[tb.len] = '\0';
				why = RT_STOP_STRING;
				stop = true;
			}
		}
		size_t safe = stop ? tb.len : tb.len - stop_prefix_tail(req, &tb);
		if (req->on_text && safe > emitted) {
			if (req->on_text(req->userdata, tb.p + emitted, safe - emitted) != 0) {
				why = RT_STOP_CALLBACK;
				stop = true;
			}
			emitted = safe;
		}
		if (stop)
			break;
		if (n_gen >= req->max_tokens) {
			why = RT_STOP_MAX_TOKENS;
			break;
		}
		if (rt_engine_n_past(m->e) >= in->n_ctx) {
			why = RT_STOP_CONTEXT;
			break;
		}
		r = rt_engine_eval(m->e, &id, 1, false);
		if (r < 0)
			break;
		m->ctx_tokens[m->n_ctx_tokens++] = id;
	}
	rt_sampler_free(smp);
	if (r >= 0 && why != RT_STOP_CALLBACK && why != RT_STOP_STRING && req->on_text &&
	    tb.len > emitted)
		(void)req->on_text(req->userdata, tb.p + emitted, tb.len - emitted);
	if (r < 0) {
		free(tb.p);
		m->st.n_errors++;
		return r;
	}
	int64_t t2 = fl_mono_ns();
	memset(ret, 0, sizeof(*ret));
	ret->text = tb.p;
	ret->text_len = tb.len;
	ret->n_prompt = n;
	ret->n_prompt_cached = keep;
	ret->n_gen = n_gen;
	ret->stop_reason = why;
	ret->prompt_ms = (double)(t1 - t0) / 1e6;
	ret->gen_ms = (double)(t2 - t1) / 1e6;
	m->st.n_requests++;
	m->st.n_prompt_tokens += (uint64_t)(n - keep);
	m->st.n_gen_tokens += (uint64_t)n_gen;
	m->st.prompt_ms += ret->prompt_ms;
	m->st.gen_ms += ret->gen_ms;
	return 0;
}

static int impl_stats(void *p, struct rt_backend_stats *ret)
{
	struct gguf_impl *m = p;
	*ret = m->st;
	return 0;
}

const struct rt_backend_ops rt_backend_gguf_ops = {
	.name = "gguf",
	.open = impl_open,
	.generate = impl_generate,
	.stats = impl_stats,
	.close = impl_close,
};
