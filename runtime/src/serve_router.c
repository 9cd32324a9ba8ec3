/* A reference-counted router for rt_serve (serve.h): one current runner per
 * model id, several model ids. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flotilla/error.h"
#include "flotilla/serve.h"

#define ROUTER_MAX_HELD 32   /* runners with requests in flight (current + retiring) */
#define ROUTER_MAX_MODELS 16 /* model ids served at once */

struct route {
	char id[RT_SERVE_MODEL_ID_BYTES]; /* "" when the slot is free */
	struct rt_runner *cur;
};

struct held {
	struct rt_runner *runner;
	int refs;
};

struct rt_serve_router {
	pthread_mutex_t lock; /* everything below */
	pthread_cond_t cond;  /* a reference was dropped */
	struct route routes[ROUTER_MAX_MODELS]; /* in the order they were added */
	struct held held[ROUTER_MAX_HELD];
};

int rt_serve_router_new(struct rt_serve_router **ret_router)
{
	if (!ret_router)
		return -EINVAL;
	struct rt_serve_router *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	pthread_mutex_init(&r->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cond, &ca);
	pthread_condattr_destroy(&ca);
	*ret_router = r;
	return 0;
}

void rt_serve_router_free(struct rt_serve_router *r)
{
	if (!r)
		return;
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r);
}

static struct route *route_find(struct rt_serve_router *r, const char *id)
{
	for (int i = 0; i < ROUTER_MAX_MODELS; i++)
		if (r->routes[i].id[0] && !strcmp(r->routes[i].id, id))
			return &r->routes[i];
	return NULL;
}

int rt_serve_router_set(struct rt_serve_router *r, const char *id, struct rt_runner *runner,
			struct rt_runner **ret_old)
{
	if (!r || !id || !id[0] || strlen(id) >= RT_SERVE_MODEL_ID_BYTES)
		return -EINVAL;
	pthread_mutex_lock(&r->lock);
	struct route *rt = route_find(r, id);
	for (int i = 0; !rt && runner && i < ROUTER_MAX_MODELS; i++)
		if (!r->routes[i].id[0]) {
			rt = &r->routes[i];
			memcpy(rt->id, id, strlen(id) + 1);
		}
	struct rt_runner *old = rt ? rt->cur : NULL;
	int err = 0;
	if (rt) {
		rt->cur = runner;
		if (!runner)
			rt->id[0] = '\0'; /* the model is no longer served */
	} else if (runner) {
		err = -FL_ETOOBIG;
	}
	pthread_mutex_unlock(&r->lock);
	if (err)
		return err;
	if (ret_old)
		*ret_old = old;
	return 0;
}

static struct held *find(struct rt_serve_router *r, struct rt_runner *runner)
{
	for (int i = 0; i < ROUTER_MAX_HELD; i++)
		if (r->held[i].runner == runner && r->held[i].refs > 0)
			return &r->held[i];
	return NULL;
}

static int acquire(void *ud, const char *model, struct rt_runner **ret_runner, char *ret_id)
{
	struct rt_serve_router *r = ud;
	pthread_mutex_lock(&r->lock);
	int err = 0;
	struct route *rt = NULL;
	if (model && model[0]) {
		rt = route_find(r, model);
		if (!rt)
			err = -ENOENT;
	} else {
		/* No model named: the first one served (OpenAI clients of a
		 * one-model device often leave it out). */
		for (int i = 0; !rt && i < ROUTER_MAX_MODELS; i++)
			if (r->routes[i].id[0])
				rt = &r->routes[i];
		if (!rt)
			err = -FL_ESTATE;
	}
	if (!err && !rt->cur)
		err = -FL_ESTATE;
	if (!err) {
		struct held *h = find(r, rt->cur);
		for (int i = 0; !h && i < ROUTER_MAX_HELD; i++)
			if (r->held[i].refs == 0) {
				h = &r->held[i];
				h->runner = rt->cur;
			}
		if (!h) {
			err = -FL_EBUSY;
		} else {
			h->refs++;
			*ret_runner = rt->cur;
			memcpy(ret_id, rt->id, sizeof(rt->id));
		}
	}
	pthread_mutex_unlock(&r->lock);
	return err;
}

static void release(void *ud, struct rt_runner *runner)
{
	struct rt_serve_router *r = ud;
	pthread_mutex_lock(&r->lock);
	struct held *h = find(r, runner);
	if (h && --h->refs == 0)
		h->runner = NULL;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

static int list_models(void *ud, char (*ids)[RT_SERVE_MODEL_ID_BYTES], int max)
{
	struct rt_serve_router *r = ud;
	pthread_mutex_lock(&r->lock);
	int n = 0;
	for (int i = 0; i < ROUTER_MAX_MODELS && n < max; i++)
		if (r->routes[i].id[0] && r->routes[i].cur)
			memcpy(ids[n++], r->routes[i].id, RT_SERVE_MODEL_ID_BYTES);
	pthread_mutex_unlock(&r->lock);
	return n;
}

int rt_serve_router_wait_idle(struct rt_serve_router *r, struct rt_runner *runner, int timeout_ms)
{
	if (!r)
		return -EINVAL;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	int64_t ns = (int64_t)ts.tv_nsec + (int64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000;
	ts.tv_sec += ns / 1000000000;
	ts.tv_nsec = ns % 1000000000;
	int err = 0;
	pthread_mutex_lock(&r->lock);
	while (find(r, runner)) {
		if (pthread_cond_timedwait(&r->cond, &r->lock, &ts) == ETIMEDOUT) {
			err = find(r, runner) ? -FL_ETIMEOUT : 0;
			break;
		}
	}
	pthread_mutex_unlock(&r->lock);
	return err;
}

void rt_serve_router_bind(struct rt_serve_router *r, struct rt_serve_config *cfg)
{
	cfg->ops.acquire = acquire;
	cfg->ops.release = release;
	cfg->ops.list_models = list_models;
	cfg->userdata = r;
}
