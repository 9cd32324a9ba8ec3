/* Backend registry and the request checks shared by every backend. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/backend.h"
#include "flotilla/error.h"
#include "flotilla/ggml_types.h"

/* The built-in in-process engine (backend_gguf.c), gradient-boosted trees
 * (backend_xgboost.c, libxgboost loaded when a model is opened) and an
 * external server (backend_exec.c). */
extern const struct rt_backend_ops rt_backend_gguf_ops;
#ifdef FL_HAVE_XGBOOST
extern const struct rt_backend_ops rt_backend_xgboost_ops;
#endif
extern const struct rt_backend_ops rt_backend_exec_ops;

struct rt_backend {
	const struct rt_backend_ops *ops;
	void *impl;
};

static pthread_mutex_t g_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static const struct rt_backend_ops *g_reg[RT_BACKEND_MAX_REGISTERED] = {
	&rt_backend_gguf_ops,
	&rt_backend_exec_ops,
#ifdef FL_HAVE_XGBOOST
	&rt_backend_xgboost_ops,
#endif
};
static int g_n_reg = 2
#ifdef FL_HAVE_XGBOOST
		     + 1
#endif
	;

void rt_backend_opts_default(struct rt_backend_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->kv_type = RT_GGML_TYPE_F16;
}

void rt_gen_request_default(struct rt_gen_request *req)
{
	memset(req, 0, sizeof(*req));
	rt_sampling_greedy(&req->sampling);
	req->max_tokens = 128;
}

void rt_gen_result_free(struct rt_gen_result *res)
{
	if (!res)
		return;
	free(res->text);
	res->text = NULL;
	res->text_len = 0;
}

const char *rt_stop_reason_name(enum rt_stop_reason r)
{
	switch (r) {
	case RT_STOP_EOG: return "eog";
	case RT_STOP_MAX_TOKENS: return "max_tokens";
	case RT_STOP_STRING: return "stop";
	case RT_STOP_CALLBACK: return "callback";
	case RT_STOP_CONTEXT: return "context";
	}
	return "unknown";
}

int rt_backend_register(const struct rt_backend_ops *ops)
{
	if (!ops || !ops->name || !ops->open || (!ops->generate && !ops->predict) || !ops->stats ||
	    !ops->close)
		return -EINVAL;
	size_t len = strnlen(ops->name, 16);
	if (len == 0 || len > 15)
		return -EINVAL;
	int r = 0;
	pthread_mutex_lock(&g_reg_lock);
	for (int i = 0; i < g_n_reg; i++)
		if (strcmp(g_reg[i]->name, ops->name) == 0)
			r = -FL_EDUP;
	if (r == 0 && g_n_reg >= RT_BACKEND_MAX_REGISTERED)
		r = -FL_ETOOBIG;
	if (r == 0)
		g_reg[g_n_reg++] = ops;
	pthread_mutex_unlock(&g_reg_lock);
	return r;
}

const struct rt_backend_ops *rt_backend_find(const char *name)
{
	const struct rt_backend_ops *found = NULL;
	if (!name)
		return NULL;
	pthread_mutex_lock(&g_reg_lock);
	for (int i = 0; i < g_n_reg; i++)
		if (strcmp(g_reg[i]->name, name) == 0)
			found = g_reg[i];
	pthread_mutex_unlock(&g_reg_lock);
	return found;
}

int rt_backend_open(const char *name, const char *model_path, const struct rt_backend_opts *opts,
		    struct rt_backend **ret_backend)
{
	if (!model_path || !ret_backend)
		return -EINVAL;
	const struct rt_backend_ops *ops = rt_backend_find(name);
	if (!ops)
		return -ENOENT;
	struct rt_backend_opts o;
	if (opts)
		o = *opts;
	else
		rt_backend_opts_default(&o);
	if (o.n_threads < 0 || o.n_ctx < 0 || o.n_batch < 0)
		return -EINVAL;
	struct rt_backend *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	int r = ops->open(model_path, &o, &b->impl);
	if (r < 0) {
		free(b);
		return r;
	}
	b->ops = ops;
	*ret_backend = b;
	return 0;
}

static int check_request(const struct rt_gen_request *req)
{
	if (!req || req->max_tokens < 1 || req->max_tokens > RT_BACKEND_MAX_TOKENS_LIMIT)
		return -EINVAL;
	if (req->n_messages == 0 && !req->prompt)
		return -EINVAL;
	if (req->n_messages > RT_BACKEND_MAX_MESSAGES || (req->n_messages && !req->messages))
		return -EINVAL;
	for (size_t i = 0; i < req->n_messages; i++)
		if (!req->messages[i].role || !req->messages[i].content)
			return -EINVAL;
	if (req->n_stop > RT_BACKEND_MAX_STOP || (req->n_stop && !req->stop))
		return -EINVAL;
	for (size_t i = 0; i < req->n_stop; i++) {
		if (!req->stop[i])
			return -EINVAL;
		size_t l = strnlen(req->stop[i], RT_BACKEND_MAX_STOP_BYTES + 1);
		if (l == 0 || l > RT_BACKEND_MAX_STOP_BYTES)
			return -EINVAL;
	}
	return rt_sampling_validate(&req->sampling);
}

int rt_backend_generate(struct rt_backend *b, const struct rt_gen_request *req,
			struct rt_gen_result *res)
{
	if (!b || !res)
		return -EINVAL;
	int r = check_request(req);
	if (r < 0)
		return r;
	if (!b->ops->generate)
		return -FL_EUNSUPPORTED;
	return b->ops->generate(b->impl, req, res);
}

void rt_predict_result_free(struct rt_predict_result *res)
{
	if (!res)
		return;
	free(res->values);
	res->values = NULL;
	res->n_rows = res->n_out = 0;
}

const char *rt_predict_kind_name(enum rt_predict_kind k)
{
	switch (k) {
	case RT_PREDICT_VALUE: return "value";
	case RT_PREDICT_BINARY: return "binary";
	case RT_PREDICT_MULTICLASS: return "multiclass";
	case RT_PREDICT_CLASS: return "class";
	}
	return "unknown";
}

int rt_predict_class(const struct rt_predict_result *res, size_t row)
{
	if (!res || !res->values || row >= res->n_rows || res->n_out == 0)
		return -1;
	const float *v = res->values + row * res->n_out;
	switch (res->kind) {
	case RT_PREDICT_BINARY:
		return v[0] >= 0.5f ? 1 : 0;
	case RT_PREDICT_MULTICLASS: {
		size_t best = 0;
		for (size_t i = 1; i < res->n_out; i++)
			if (v[i] > v[best])
				best = i;
		return (int)best;
	}
	case RT_PREDICT_CLASS:
		return v[0] >= 0 && v[0] < 1e9f ? (int)v[0] : -1;
	default:
		return -1;
	}
}

int rt_backend_predict(struct rt_backend *b, const struct rt_predict_request *req,
		       struct rt_predict_result *res, char *why, size_t why_len)
{
	if (why && why_len)
		why[0] = '\0';
	if (!b || !req || !res || (why_len && !why))
		return -EINVAL;
	if (!b->ops->predict) {
		if (why_len)
			snprintf(why, why_len, "a %s model does not take feature rows", b->ops->name);
		return -FL_EUNSUPPORTED;
	}
	if (!req->values || req->n_rows < 1 || req->n_cols < 1 || req->n_cols > RT_PREDICT_MAX_COLS ||
	    req->n_rows > RT_PREDICT_MAX_VALUES / req->n_cols) {
		if (why_len)
			snprintf(why, why_len, "between 1 and %u values per request, at most %u per row",
				 RT_PREDICT_MAX_VALUES, RT_PREDICT_MAX_COLS);
		return -EINVAL;
	}
	char dummy[1];
	return b->ops->predict(b->impl, req, res, why_len ? why : dummy, why_len ? why_len : 1);
}

const char *rt_backend_name(const struct rt_backend *b)
{
	return b ? b->ops->name : NULL;
}

int rt_backend_stats(struct rt_backend *b, struct rt_backend_stats *ret_stats)
{
	if (!b || !ret_stats)
		return -EINVAL;
	return b->ops->stats(b->impl, ret_stats);
}

void rt_backend_close(struct rt_backend *b)
{
	if (!b)
		return;
	b->ops->close(b->impl);
	free(b);
}
