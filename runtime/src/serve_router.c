/* A reference-counted one-model router for rt_serve (serve.h). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flotilla/error.h"
#include "flotilla/serve.h"

#define ROUTER_MAX_HELD 16 /* runners with requests in flight (current + retiring) */

struct held {
	struct rt_runner *runner;
	int refs;
};

struct rt_serve_router {
	pthread_mutex_t lock; /* everything below */
	pthread_cond_t cond;  /* a reference was dropped */
	struct rt_runner *cur;
	char id[RT_SERVE_MODEL_ID_BYTES];
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

int rt_serve_router_set(struct rt_serve_router *r, const char *id, struct rt_runner *runner,
			struct rt_runner **ret_old)
{
	if (!r || !id || !id[0] || strlen(id) >= RT_SERVE_MODEL_ID_BYTES)
		return -EINVAL;
	pthread_mutex_lock(&r->lock);
	struct rt_runner *old = r->cur;
	r->cur = runner;
	memcpy(r->id, id, strlen(id) + 1);
	pthread_mutex_unlock(&r->lock);
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
	if (!r->cur) {
		err = -FL_ESTATE;
	} else if (model && model[0] && strcmp(model, r->id) != 0) {
		err = -ENOENT;
	} else {
		struct held *h = find(r, r->cur);
		for (int i = 0; !h && i < ROUTER_MAX_HELD; i++)
			if (r->held[i].refs == 0) {
				h = &r->held[i];
				h->runner = r->cur;
			}
		if (!h) {
			err = -FL_EBUSY;
		} else {
			h->refs++;
			*ret_runner = r->cur;
			memcpy(ret_id, r->id, sizeof(r->id));
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
	if (r->cur && max > 0) {
		memcpy(ids[0], r->id, sizeof(r->id));
		n = 1;
	}
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
