/* Per-version health totals from telemetry and the rollouts' health gates. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "ctl.h"
#include "health.h"

FL_DEFINE_CLEANUP(cJSON, cJSON_Delete)

/* ---------------------------------------------------------------- ingest */

static uint64_t unum(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) && v->valuedouble > 0 && v->valuedouble < 9007199254740992.0
		       ? (uint64_t)v->valuedouble
		       : 0;
}

int ctl_health_note(struct ctl_store *s, const struct ctl_tele_rec *t, int64_t now_s)
{
	bool model_rec = !strcmp(t->kind, "model");
	bool crash = !strcmp(t->kind, "event:runner_crashed");
	if (!model_rec && !crash)
		return 0;
	_cleanup_(cJSON_Deletep) cJSON *o = cJSON_Parse(t->json);
	const char *model = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "model"));
	const char *version = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "version"));
	if (!model || !version)
		return 0; /* a device-wide record */
	struct ctl_health h = {.device = t->device,
			       .model = model,
			       .version = version,
			       .first_s = now_s,
			       .last_s = now_s};
	if (crash) {
		h.crashes = 1;
		return s->ops->health_add(s, &h);
	}
	h.records = 1;
	h.requests = unum(o, "requests");
	const cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o, "errors"))
		if (cJSON_IsNumber(e) && e->valuedouble > 0)
			h.errors += (uint64_t)e->valuedouble;
	h.restarts = unum(o, "runner_restarts");
	const cJSON *lat = cJSON_GetObjectItemCaseSensitive(o, "latency_us");
	if (!lat || tele_hist_from_json(lat, &h.latency_us) < 0)
		tele_hist_reset(&h.latency_us);
	const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "quality");
	if (q) {
		h.outputs = unum(q, "outputs");
		h.empty = unum(q, "empty");
		h.refusals = unum(q, "refusals");
	}
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "drift");
	if (d) {
		static const char *const psis[] = {"len_psi", "class_psi", "conf_psi"};
		double worst = -1;
		for (size_t i = 0; i < FL_ARRAY_SIZE(psis); i++) {
			const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, psis[i]);
			if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble > worst)
				worst = v->valuedouble; /* -1: too few samples */
		}
		if (worst >= 0) {
			h.psi_sum = worst;
			h.psi_n = 1;
		}
	}
	return s->ops->health_add(s, &h);
}

/* ---------------------------------------------------------------- gates */

static const struct gate_def {
	const char *key;
	double min, max;
	bool integer;
} gate_defs[] = {
	{"min_requests", 1, 1e9, true},
	{"error_rate_max", 0, 1, false},
	{"error_rate_max_delta", 0, 1, false},
	{"p95_latency_max_ratio", 1, 1000, false},
	{"crashes_max", 0, 1e9, true},
	{"empty_rate_max_delta", 0, 1, false},
	{"refusal_rate_max_delta", 0, 1, false},
	{"drift_psi_max", 0, 100, false},
};

#define DEFAULT_MIN_REQUESTS 100

static int fail(char *err, size_t n, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t n, int code, const char *fmt, ...)
{
	if (err && n) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, n, fmt, ap);
		va_end(ap);
	}
	return code;
}

int ctl_health_gates_parse(const cJSON *in, cJSON *out, char *err, size_t err_len)
{
	if (!in)
		return 0;
	if (!cJSON_IsObject(in))
		return fail(err, err_len, -FL_ESCHEMA, "gates: expected an object");
	const cJSON *it;
	cJSON_ArrayForEach(it, in) {
		const struct gate_def *g = NULL;
		for (size_t i = 0; i < FL_ARRAY_SIZE(gate_defs); i++)
			if (!strcmp(it->string, gate_defs[i].key))
				g = &gate_defs[i];
		if (!g)
			return fail(err, err_len, -FL_ESCHEMA, "gates: unknown member '%.64s'",
				    it->string);
		if (cJSON_GetObjectItemCaseSensitive(out, g->key))
			return fail(err, err_len, -FL_ESCHEMA, "gates: '%s' given twice", g->key);
		if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble))
			return fail(err, err_len, -FL_ESCHEMA, "gates.%s: expected a number", g->key);
		double v = it->valuedouble;
		if (v < g->min || v > g->max || (g->integer && v != floor(v)))
			return fail(err, err_len, -FL_ERANGE, "gates.%s: expected %s %g..%g", g->key,
				    g->integer ? "an integer" : "a number", g->min, g->max);
		if (!cJSON_AddNumberToObject(out, g->key, v))
			return -ENOMEM;
	}
	if (!cJSON_GetObjectItemCaseSensitive(out, "min_requests") &&
	    !cJSON_AddNumberToObject(out, "min_requests", DEFAULT_MIN_REQUESTS))
		return -ENOMEM;
	return 0;
}

struct acc {
	uint64_t devices, requests, errors, crashes, outputs, empty, refusals, psi_n;
	double psi_sum;
	struct tele_hist lat;
};

struct group {
	char version[CTL_VERSION_MAX + 1];
	struct acc cand, base;
};

struct eval {
	ctl_health_version_fn version_of;
	void *ud;
	struct group g[CTL_HEALTH_GROUPS_MAX];
	size_t ng;
	/* the device being read */
	char dev[CTL_DEVICE_ID_MAX + 1];
	const char *target; /* its version, NULL: not a target */
	struct group *grp;
	bool has_cand, has_base;
	struct ctl_health base; /* its previous version's row, added with a candidate */
	char base_version[CTL_VERSION_MAX + 1];
};

static void acc_add(struct acc *a, const struct ctl_health *h)
{
	a->devices++;
	a->requests += h->requests;
	a->errors += h->errors;
	a->crashes += h->crashes > h->restarts ? h->crashes : h->restarts;
	a->outputs += h->outputs;
	a->empty += h->empty;
	a->refusals += h->refusals;
	a->psi_n += h->psi_n;
	a->psi_sum += h->psi_sum;
	if (h->latency_us.count) {
		bool first = a->lat.count == 0;
		tele_hist_merge(&a->lat, &h->latency_us);
		/* merge keeps counts and sum; min/max as the totals say */
		if (first || h->latency_us.min < a->lat.min)
			a->lat.min = h->latency_us.min;
		if (first || h->latency_us.max > a->lat.max)
			a->lat.max = h->latency_us.max;
	}
}

static void end_device(struct eval *e)
{
	if (e->grp && e->has_cand && e->has_base)
		acc_add(&e->grp->base, &e->base);
	e->dev[0] = 0;
	e->grp = NULL;
	e->has_cand = e->has_base = false;
}

static int eval_row(void *ud, const struct ctl_health *h)
{
	struct eval *e = ud;
	if (strcmp(e->dev, h->device)) {
		end_device(e);
		fl_strlcpy(e->dev, h->device, sizeof(e->dev));
		e->target = e->version_of(e->ud, h->device);
		if (e->target) {
			for (size_t i = 0; i < e->ng && !e->grp; i++)
				if (!strcmp(e->g[i].version, e->target))
					e->grp = &e->g[i];
			if (!e->grp && e->ng < CTL_HEALTH_GROUPS_MAX) {
				e->grp = &e->g[e->ng++];
				fl_strlcpy(e->grp->version, e->target, sizeof(e->grp->version));
			}
		}
	}
	if (!e->grp)
		return 0;
	if (!strcmp(h->version, e->target)) {
		if (!e->has_cand)
			acc_add(&e->grp->cand, h);
		e->has_cand = true;
	} else if (!e->has_base || h->last_s > e->base.last_s ||
		   (h->last_s == e->base.last_s && strcmp(h->version, e->base_version) > 0)) {
		/* the version the device ran before: the newest other one */
		e->base = *h;
		e->base.device = e->base.model = NULL; /* valid during the callback only */
		e->base.version = NULL;
		fl_strlcpy(e->base_version, h->version, sizeof(e->base_version));
		e->has_base = true;
	}
	return 0;
}

static double rate(uint64_t num, uint64_t den)
{
	return den ? (double)num / (double)den : NAN;
}

static double p95_ms(const struct tele_hist *h)
{
	double v;
	return tele_hist_percentile(h, 0.95, &v) == 0 ? v / 1000.0 : NAN;
}

static int add_fig(cJSON *o, const char *k, double v)
{
	cJSON *n = isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
	if (!n || !cJSON_AddItemToObject(o, k, n)) {
		cJSON_Delete(n);
		return -ENOMEM;
	}
	return 0;
}

static cJSON *figures(const struct acc *a)
{
	cJSON *o = cJSON_CreateObject();
	if (!o || add_fig(o, "devices", (double)a->devices) < 0 ||
	    add_fig(o, "requests", (double)a->requests) < 0 ||
	    add_fig(o, "errors", (double)a->errors) < 0 ||
	    add_fig(o, "error_rate", rate(a->errors, a->requests)) < 0 ||
	    add_fig(o, "p95_latency_ms", p95_ms(&a->lat)) < 0 ||
	    add_fig(o, "crashes", (double)a->crashes) < 0 ||
	    add_fig(o, "empty_rate", rate(a->empty, a->outputs)) < 0 ||
	    add_fig(o, "refusal_rate", rate(a->refusals, a->outputs)) < 0 ||
	    add_fig(o, "drift_psi", a->psi_n ? a->psi_sum / (double)a->psi_n : NAN) < 0) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/* A limit of GATES, or NAN when not set. */
static double limit(const cJSON *gates, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(gates, k);
	return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

struct verdict {
	char text[768];
	size_t len;
	bool breach, waiting;
	cJSON *list;
};

static void breach(struct verdict *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void breach(struct verdict *v, const char *fmt, ...)
{
	char one[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(one, sizeof(one), fmt, ap);
	va_end(ap);
	v->breach = true;
	if (v->len < sizeof(v->text))
		v->len += (size_t)snprintf(v->text + v->len, sizeof(v->text) - v->len, "%s%s",
					   v->len ? "; " : "", one);
	cJSON_AddItemToArray(v->list, cJSON_CreateString(one));
}

/* Compare one group against GATES. */
static void judge(const struct group *g, const cJSON *gates, struct verdict *v)
{
	const struct acc *c = &g->cand, *b = &g->base;
	double minr = limit(gates, "min_requests");
	if (!isfinite(minr))
		minr = DEFAULT_MIN_REQUESTS;
	double lim;
	if (isfinite(lim = limit(gates, "crashes_max")) && (double)c->crashes > lim)
		breach(v, "%llu runner crashes > %.0f allowed", (unsigned long long)c->crashes, lim);
	if (isfinite(lim = limit(gates, "drift_psi_max"))) {
		if (c->psi_n == 0)
			v->waiting = true;
		else if (c->psi_sum / (double)c->psi_n > lim)
			breach(v, "drift PSI %.3f > %.3f", c->psi_sum / (double)c->psi_n, lim);
	}
	bool cand_ok = (double)c->requests >= minr, base_ok = (double)b->requests >= minr;
	double cr = rate(c->errors, c->requests), br = rate(b->errors, b->requests);
	if (isfinite(lim = limit(gates, "error_rate_max"))) {
		if (!cand_ok)
			v->waiting = true;
		else if (cr > lim)
			breach(v, "error rate %.4f > %.4f", cr, lim);
	}
	if (isfinite(lim = limit(gates, "error_rate_max_delta"))) {
		if (!cand_ok || !base_ok)
			v->waiting = true;
		else if (cr - br > lim)
			breach(v, "error rate %.4f vs %.4f before (+%.4f > %.4f)", cr, br, cr - br,
			       lim);
	}
	if (isfinite(lim = limit(gates, "p95_latency_max_ratio"))) {
		double cp = p95_ms(&c->lat), bp = p95_ms(&b->lat);
		if ((double)c->lat.count < minr || (double)b->lat.count < minr || !(bp > 0))
			v->waiting = true;
		else if (cp / bp > lim)
			breach(v, "p95 latency %.1f ms vs %.1f ms before (%.2fx > %.2fx)", cp, bp,
			       cp / bp, lim);
	}
	static const struct {
		const char *key, *what;
		size_t off;
	} qs[] = {{"empty_rate_max_delta", "empty output rate", offsetof(struct acc, empty)},
		  {"refusal_rate_max_delta", "refusal rate", offsetof(struct acc, refusals)}};
	for (size_t i = 0; i < FL_ARRAY_SIZE(qs); i++) {
		if (!isfinite(lim = limit(gates, qs[i].key)))
			continue;
		uint64_t cn = *(const uint64_t *)((const char *)c + qs[i].off);
		uint64_t bn = *(const uint64_t *)((const char *)b + qs[i].off);
		if ((double)c->outputs < minr || (double)b->outputs < minr) {
			v->waiting = true;
			continue;
		}
		double cq = rate(cn, c->outputs), bq = rate(bn, b->outputs);
		if (cq - bq > lim)
			breach(v, "%s %.4f vs %.4f before (+%.4f > %.4f)", qs[i].what, cq, bq, cq - bq,
			       lim);
	}
}

static int cmp_group(const void *a, const void *b)
{
	return strcmp(((const struct group *)a)->version, ((const struct group *)b)->version);
}

int ctl_health_evaluate(struct ctl_store *s, int64_t id, const char *model, const cJSON *gates,
			ctl_health_version_fn version_of, void *ud, cJSON **ret_report,
			char **ret_breach)
{
	struct eval *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->version_of = version_of;
	e->ud = ud;
	int r = s->ops->health_scan(s, id, model, eval_row, e);
	end_device(e);
	qsort(e->g, e->ng, sizeof(e->g[0]), cmp_group); /* a stable report */
	_cleanup_(cJSON_Deletep) cJSON *rep = cJSON_CreateObject();
	cJSON *groups = rep ? cJSON_AddArrayToObject(rep, "groups") : NULL;
	if (r >= 0 && !groups)
		r = -ENOMEM;
	_cleanup_free_ char *why = NULL;
	for (size_t i = 0; r >= 0 && i < e->ng; i++) {
		const struct group *g = &e->g[i];
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(groups, o)) {
			cJSON_Delete(o);
			r = -ENOMEM;
			break;
		}
		struct verdict v = {0};
		if (!cJSON_AddStringToObject(o, "version", g->version) ||
		    !(v.list = cJSON_AddArrayToObject(o, "breaches"))) {
			r = -ENOMEM;
			break;
		}
		judge(g, gates, &v);
		cJSON *cf = figures(&g->cand), *bf = figures(&g->base);
		bool ok_c = cf && cJSON_AddItemToObject(o, "candidate", cf);
		bool ok_b = bf && cJSON_AddItemToObject(o, "baseline", bf);
		if (!ok_c)
			cJSON_Delete(cf);
		if (!ok_b)
			cJSON_Delete(bf);
		if (!ok_c || !ok_b ||
		    !cJSON_AddStringToObject(o, "verdict", v.breach    ? "breach"
							     : v.waiting ? "waiting"
									 : "ok")) {
			r = -ENOMEM;
			break;
		}
		if (v.breach && !why) {
			why = fl_asprintf("%s on %llu devices (%llu requests, %llu before): %s",
					  g->version, (unsigned long long)g->cand.devices,
					  (unsigned long long)g->cand.requests,
					  (unsigned long long)g->base.requests, v.text);
			if (!why)
				r = -ENOMEM;
		}
	}
	free(e);
	if (r < 0)
		return r;
	*ret_report = rep;
	rep = NULL;
	*ret_breach = why;
	why = NULL;
	return 0;
}
