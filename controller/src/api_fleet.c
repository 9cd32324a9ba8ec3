/* GET /api/v1/fleet (docs/dashboard.md): the registry per model and version,
 * from grouped store queries (fleet_counts: GROUP BY model, version, install
 * state; fleet_unhealthy: the devices with an install under way or failed),
 * never a scan of every device in C. The lock is held for the store reads
 * only; the JSON is built after it is released. */
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

/* The tallies of every model of the summary, NAMES sorted. */
struct fleet {
	const char **names;
	size_t n_names;
	struct scan *sc;   /* one per name; the health list lives in HL below */
	struct scan hl;    /* hl.hl: every model's devices that are not ok */
	bool truncated;
};

static struct scan *model_scan(struct fleet *fl, const char *model)
{
	size_t lo = 0, hi = fl->n_names;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(fl->names[mid], model);
		if (!c)
			return &fl->sc[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL; /* not a model of the summary (no version running, no bundle) */
}

static int count_cb(void *ud, const char *model, const char *version, const char *install_state,
		    int64_t count)
{
	struct fleet *fl = ud;
	struct scan *sc = model_scan(fl, model);
	if (!sc || count <= 0)
		return 0;
	struct ver_tally *t;
	int r = tally(sc, version, &t);
	if (r < 0 || !t)
		return r;
	size_t n = (size_t)count;
	if (!install_state) {
		t->devices += n;
		return 0;
	}
	switch (install_health(install_state)) {
	case H_OK:
		t->succeeded += n;
		break;
	case H_FAILED:
		t->failed += n;
		break;
	case H_INSTALLING:
		t->in_progress += n;
		break;
	}
	return 0;
}

static int unhealthy_cb(void *ud, const char *device, const char *model,
			const char *install_state)
{
	struct fleet *fl = ud;
	if (!model_scan(fl, model))
		return 0;
	enum health h = install_health(install_state);
	return h == H_OK ? 0 : note_health(&fl->hl, device, h);
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

/* The store reads, under the lock: counts and names into FL; MET (online,
 * offline) for the caller. */
static int read_locked(struct ctl *c, struct fleet *fl, cJSON **met)
{
	struct ctl_store *s = c->store;
	_cleanup_(cJSON_Deletep) cJSON *bundles = NULL;
	int r = s->ops->metrics(s, met);
	if (r >= 0)
		r = s->ops->bundle_list(s, &bundles);
	if (r < 0)
		return r;
	cJSON *it;
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(*met, "versions"))
		add_model(fl->names, &fl->n_names,
			  cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "model")),
			  &fl->truncated);
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(bundles, "bundles"))
		add_model(fl->names, &fl->n_names,
			  cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "model")),
			  &fl->truncated);
	/* The names point into MET and BUNDLES: keep copies past the lock. */
	for (size_t i = 0; i < fl->n_names; i++)
		if (!(fl->names[i] = strdup(fl->names[i]))) {
			fl->n_names = i;
			return -ENOMEM;
		}
	qsort(fl->names, fl->n_names, sizeof(*fl->names), cmp_str);
	if (fl->n_names && !(fl->sc = calloc(fl->n_names, sizeof(*fl->sc))))
		return -ENOMEM;
	if ((r = s->ops2->fleet_counts(s, count_cb, fl)) < 0)
		return r;
	return s->ops2->fleet_unhealthy(s, FLEET_HEALTH_MAX + 1, unhealthy_cb, fl);
}

static int summary_json(struct fleet *fl, const cJSON *met, cJSON *root)
{
	int r = 0;
	double on = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(met, "online"));
	double off = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(met, "offline"));
	cJSON *devs = cJSON_AddObjectToObject(root, "devices");
	cJSON *models = cJSON_AddArrayToObject(root, "models");
	if (!devs || !models || add_num(devs, "total", on + off) < 0 ||
	    add_num(devs, "online", on) < 0 || add_num(devs, "offline", off) < 0)
		return -ENOMEM;
	bool truncated = fl->truncated || fl->hl.truncated;
	for (size_t i = 0; r >= 0 && i < fl->n_names; i++) {
		truncated |= fl->sc[i].truncated;
		r = model_json(fl->names[i], &fl->sc[i], models);
	}
	cJSON *health = r >= 0 ? cJSON_AddObjectToObject(root, "health") : NULL;
	if (r >= 0 && !health)
		r = -ENOMEM;
	struct scan *hl = &fl->hl;
	if (r >= 0) {
		qsort(hl->hl, hl->n_hl, sizeof(*hl->hl), cmp_health);
		for (size_t i = 0; r >= 0 && i < hl->n_hl; i++) {
			if (i > 0 && !strcmp(hl->hl[i].id, hl->hl[i - 1].id))
				continue; /* the worst of its models came first */
			if (!cJSON_AddStringToObject(health, hl->hl[i].id, health_names[hl->hl[i].h]))
				r = -ENOMEM;
		}
	}
	if (r >= 0 && !cJSON_AddBoolToObject(root, "truncated", truncated))
		r = -ENOMEM;
	return r;
}

static void fleet_free(struct fleet *fl)
{
	for (size_t i = 0; i < fl->n_names; i++) {
		free((char *)fl->names[i]);
		if (fl->sc)
			free_tallies(&fl->sc[i]);
	}
	free(fl->sc);
	free(fl->names);
	free(fl->hl.hl);
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
	struct fleet fl = {.names = calloc(FLEET_MODELS_MAX, sizeof(*fl.names))};
	cJSON *met = NULL;
	int r = fl.names ? 0 : -ENOMEM;
	if (r >= 0) {
		pthread_mutex_lock(&c->lock);
		r = read_locked(c, &fl, &met);
		pthread_mutex_unlock(&c->lock);
	}
	if (r >= 0)
		r = summary_json(&fl, met, root);
	cJSON_Delete(met);
	fleet_free(&fl);
	if (r < 0) {
		cJSON_Delete(root);
		return r;
	}
	*ret = root;
	return 0;
}
