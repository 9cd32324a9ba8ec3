/* GET /api/v1/fleet (docs/dashboard.md): the registry per model and version,
 * read through the store's operations (metrics, bundle_list, rollout_scan),
 * so it needs no SQL of its own and works on any backend. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/util.h>

#include "ctl_internal.h"
#include "dashboard.h"

#define FLEET_MODELS_MAX 1000
#define FLEET_VERSIONS_MAX 1000  /* per model */
#define FLEET_HEALTH_MAX 200000  /* (device, model) pairs that are not ok */

FL_DEFINE_CLEANUP(cJSON, cJSON_Delete)

enum health { H_OK, H_INSTALLING, H_FAILED };
static const char *const health_names[] = {"ok", "installing", "failed"};

struct ver_tally {
	char *version;
	size_t devices;     /* current slot runs it */
	size_t succeeded;   /* install of it COMMITTED */
	size_t failed;      /* REJECTED, ROLLED_BACK, REVERTING, FAILED */
	size_t in_progress; /* any other install state but IDLE */
};

struct dev_health {
	char id[CTL_DEVICE_ID_MAX + 1];
	enum health h;
};

struct scan {
	struct ver_tally *v; /* this model's versions */
	size_t n_v;
	struct dev_health *hl; /* every model's devices that are not ok */
	size_t n_hl, cap_hl;
	bool truncated;
};

/* The outcome of an install the device reports, counted as docs/rollouts.md
 * does; IDLE (no install going on) is ok. */
static enum health install_health(const char *state)
{
	if (!state || !strcmp(state, "IDLE") || !strcmp(state, "COMMITTED"))
		return H_OK;
	if (!strcmp(state, "REJECTED") || !strcmp(state, "ROLLED_BACK") ||
	    !strcmp(state, "REVERTING") || !strcmp(state, "FAILED"))
		return H_FAILED;
	return H_INSTALLING;
}

/* VERSION's tally in *RET (NULL past FLEET_VERSIONS_MAX: truncated). */
static int tally(struct scan *sc, const char *version, struct ver_tally **ret)
{
	*ret = NULL;
	for (size_t i = 0; i < sc->n_v; i++)
		if (!strcmp(sc->v[i].version, version)) {
			*ret = &sc->v[i];
			return 0;
		}
	if (sc->n_v >= FLEET_VERSIONS_MAX) {
		sc->truncated = true;
		return 0;
	}
	struct ver_tally *nv = realloc(sc->v, (sc->n_v + 1) * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	sc->v = nv;
	char *v = strdup(version);
	if (!v)
		return -ENOMEM;
	nv[sc->n_v] = (struct ver_tally){.version = v};
	*ret = &nv[sc->n_v++];
	return 0;
}

static int note_health(struct scan *sc, const char *id, enum health h)
{
	if (sc->n_hl >= FLEET_HEALTH_MAX) {
		sc->truncated = true;
		return 0;
	}
	if (sc->n_hl == sc->cap_hl) {
		size_t cap = sc->cap_hl ? sc->cap_hl * 2 : 64;
		struct dev_health *n = realloc(sc->hl, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		sc->hl = n;
		sc->cap_hl = cap;
	}
	struct dev_health *e = &sc->hl[sc->n_hl++];
	fl_snprintf(e->id, sizeof(e->id), "%s", id);
	e->h = h;
	return 0;
}

static int scan_cb(void *ud, const struct ctl_rollout_dev *d)
{
	struct scan *sc = ud;
	struct ver_tally *t;
	int r;
	if (d->current_version) {
		if ((r = tally(sc, d->current_version, &t)) < 0)
			return r;
		if (t)
			t->devices++;
	}
	if (!d->install_version || !d->install_state || !strcmp(d->install_state, "IDLE"))
		return 0;
	enum health h = install_health(d->install_state);
	if ((r = tally(sc, d->install_version, &t)) < 0)
		return r;
	if (t) {
		t->succeeded += h == H_OK;
		t->failed += h == H_FAILED;
		t->in_progress += h == H_INSTALLING;
	}
	return h == H_OK ? 0 : note_health(sc, d->id, h);
}

static int cmp_ver(const void *a, const void *b)
{
	return strcmp(((const struct ver_tally *)a)->version, ((const struct ver_tally *)b)->version);
}

static int cmp_health(const void *a, const void *b)
{
	const struct dev_health *x = a, *y = b;
	int r = strcmp(x->id, y->id);
	return r ? r : (int)y->h - (int)x->h; /* worst first */
}

static void free_tallies(struct scan *sc)
{
	for (size_t i = 0; i < sc->n_v; i++)
		free(sc->v[i].version);
	free(sc->v);
	sc->v = NULL;
	sc->n_v = 0;
}

static int add_num(cJSON *o, const char *key, double v)
{
	return cJSON_AddNumberToObject(o, key, v) ? 0 : -ENOMEM;
}

/* {"model":M,"devices":N,"versions":[...]} from one scan. */
static int model_json(const char *model, struct scan *sc, cJSON *models)
{
	qsort(sc->v, sc->n_v, sizeof(*sc->v), cmp_ver);
	cJSON *m = cJSON_CreateObject();
	if (!m || !cJSON_AddItemToArray(models, m)) {
		cJSON_Delete(m);
		return -ENOMEM;
	}
	size_t total = 0;
	cJSON *vs = cJSON_AddArrayToObject(m, "versions");
	if (!cJSON_AddStringToObject(m, "model", model) || !vs)
		return -ENOMEM;
	for (size_t i = 0; i < sc->n_v; i++) {
		const struct ver_tally *t = &sc->v[i];
		size_t attempted = t->succeeded + t->failed + t->in_progress;
		total += t->devices;
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(vs, o)) {
			cJSON_Delete(o);
			return -ENOMEM;
		}
		if (!cJSON_AddStringToObject(o, "version", t->version) ||
		    add_num(o, "devices", (double)t->devices) < 0 ||
		    add_num(o, "attempted", (double)attempted) < 0 ||
		    add_num(o, "succeeded", (double)t->succeeded) < 0 ||
		    add_num(o, "failed", (double)t->failed) < 0 ||
		    add_num(o, "in_progress", (double)t->in_progress) < 0)
			return -ENOMEM;
		cJSON *rate = attempted ? cJSON_CreateNumber((double)t->failed / (double)attempted)
					: cJSON_CreateNull();
		if (!rate || !cJSON_AddItemToObject(o, "failure_rate", rate)) {
			cJSON_Delete(rate);
			return -ENOMEM;
		}
	}
	return add_num(m, "devices", (double)total);
}

/* Add NAME to the set NAMES (at most FLEET_MODELS_MAX) unless present. */
static void add_model(const char **names, size_t *n, const char *name, bool *truncated)
{
	if (!name)
		return;
	for (size_t i = 0; i < *n; i++)
		if (!strcmp(names[i], name))
			return;
	if (*n >= FLEET_MODELS_MAX) {
		*truncated = true;
		return;
	}
	names[(*n)++] = name;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int summary_locked(struct ctl *c, cJSON *root)
{
	struct ctl_store *s = c->store;
	_cleanup_(cJSON_Deletep) cJSON *met = NULL;
	_cleanup_(cJSON_Deletep) cJSON *bundles = NULL;
	int r = s->ops->metrics(s, &met);
	if (r >= 0)
		r = s->ops->bundle_list(s, &bundles);
	if (r < 0)
		return r;
	const char **names = calloc(FLEET_MODELS_MAX, sizeof(*names));
	if (!names)
		return -ENOMEM;
	struct scan sc = {0};
	size_t n_names = 0;
	cJSON *it;
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(met, "versions"))
		add_model(names, &n_names,
			  cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "model")),
			  &sc.truncated);
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(bundles, "bundles"))
		add_model(names, &n_names,
			  cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "model")),
			  &sc.truncated);
	qsort(names, n_names, sizeof(*names), cmp_str);

	double on = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(met, "online"));
	double off = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(met, "offline"));
	cJSON *devs = cJSON_AddObjectToObject(root, "devices");
	cJSON *models = cJSON_AddArrayToObject(root, "models");
	if (!devs || !models || add_num(devs, "total", on + off) < 0 ||
	    add_num(devs, "online", on) < 0 || add_num(devs, "offline", off) < 0)
		r = -ENOMEM;
	for (size_t i = 0; r >= 0 && i < n_names; i++) {
		/* Rollout id 0 never exists: every device with its row of the model. */
		r = s->ops->rollout_scan(s, 0, names[i], scan_cb, &sc);
		if (r >= 0)
			r = model_json(names[i], &sc, models);
		free_tallies(&sc);
	}
	cJSON *health = r >= 0 ? cJSON_AddObjectToObject(root, "health") : NULL;
	if (r >= 0 && !health)
		r = -ENOMEM;
	if (r >= 0) {
		qsort(sc.hl, sc.n_hl, sizeof(*sc.hl), cmp_health);
		for (size_t i = 0; r >= 0 && i < sc.n_hl; i++) {
			if (i > 0 && !strcmp(sc.hl[i].id, sc.hl[i - 1].id))
				continue; /* the worst of its models came first */
			if (!cJSON_AddStringToObject(health, sc.hl[i].id, health_names[sc.hl[i].h]))
				r = -ENOMEM;
		}
	}
	if (r >= 0 && !cJSON_AddBoolToObject(root, "truncated", sc.truncated))
		r = -ENOMEM;
	free_tallies(&sc);
	free(sc.hl);
	free(names);
	return r;
}

int ctl_fleet_summary(struct ctl *c, cJSON **ret)
{
	if (!c || !ret)
		return -EINVAL;
	cJSON *root = cJSON_CreateObject();
	if (!root || add_num(root, "generated_at", (double)fl_now_s()) < 0) {
		cJSON_Delete(root);
		return -ENOMEM;
	}
	pthread_mutex_lock(&c->lock);
	int r = summary_locked(c, root);
	pthread_mutex_unlock(&c->lock);
	if (r < 0) {
		cJSON_Delete(root);
		return r;
	}
	*ret = root;
	return 0;
}
