/* Backend registry and the request checks shared by every backend. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/backend.h"
#include "flotilla/error.h"
#include "flotilla/ggml_types.h"

/* The built-in in-process engine (backend_gguf.c). */
extern const struct rt_backend_ops rt_backend_gguf_ops;

struct rt_backend {
	const struct rt_backend_ops *ops;
	void *impl;
};

static pthread_mutex_t g_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static const struct rt_backend_ops *g_reg[RT_BACKEND_MAX_REGISTERED] = {&rt_backend_gguf_ops};
static int g_n_reg = 1;

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
	if (!ops || !ops->name || !ops->open || !ops->generate || !ops->stats || !ops->close)
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
	return b->ops->generate(b->impl, req, res);
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
