/* Scenario files for flotilla-sim (format: docs/scale.md "Scenario") and
 * bulk device certificates. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <flotilla/cleanup.h>
#include <flotilla/config.h>
#include <flotilla/error.h>
#include <flotilla/pki.h>
#include <flotilla/util.h>

#include "sim.h"

static int bad(const char *key, const char *why)
{
	fprintf(stderr, "flotilla-sim: scenario: %s: %s\n", key, why);
	return -FL_ECONFIG;
}

static int get_dbl(const struct fl_config *c, const char *key, double min, double max, double def,
		   double *ret)
{
	const char *s = fl_config_get_str(c, key, NULL);
	if (!s) {
		*ret = def;
		return 0;
	}
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < min || v > max)
		return bad(key, "not a number in range");
	*ret = v;
	return 0;
}

static int get_i(const struct fl_config *c, const char *key, int64_t min, int64_t max, int64_t def,
		 int64_t *ret)
{
	int r = fl_config_get_int(c, key, min, max, def, ret);
	return r < 0 ? bad(key, "not an integer in range") : 0;
}

static int get_name(const struct fl_config *c, const char *key, const char *def, char *out,
		    size_t n, bool allow_empty)
{
	const char *s = fl_config_get_str(c, key, def);
	if (strlen(s) >= n || (!allow_empty && !*s) || (*s && strcmp(s, "*") && !fl_name_valid(s, n - 1)))
		return bad(key, "not a valid name");
	snprintf(out, n, "%s", s);
	return 0;
}

/* "k=v,k2=v2" -> {"k":"v","k2":"v2"} */
static int labels_json(const char *key, const char *s, char *out, size_t n)
{
	_cleanup_free_ char *dup = strdup(s);
	cJSON *o = cJSON_CreateObject();
	if (!dup || !o) {
		cJSON_Delete(o);
		return -ENOMEM;
	}
	char *save = NULL;
	for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		char *eq = strchr(tok, '=');
		if (!eq) {
			cJSON_Delete(o);
			return bad(key, "labels are k=v,k2=v2");
		}
		*eq = 0;
		if (!fl_name_valid(tok, 64) || !cJSON_AddStringToObject(o, tok, eq + 1)) {
			cJSON_Delete(o);
			return bad(key, "bad label name");
		}
	}
	char *j = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!j)
		return -ENOMEM;
	int r = strlen(j) < n ? 0 : bad(key, "labels too long");
	if (r == 0)
		snprintf(out, n, "%s", j);
	free(j);
	return r;
}

static int load_class(const struct fl_config *c, const char *name, struct sim_class *k)
{
	char key[160];
	int64_t v;
	int r;
	if (!fl_name_valid(name, SIM_NAME_MAX))
		return bad(name, "bad class name");
	snprintf(k->name, sizeof(k->name), "%s", name);
#define K(x) (snprintf(key, sizeof(key), "%s." x, name), key)
	if ((r = get_dbl(c, K("weight"), 0, 1e9, 1, &k->weight)) < 0 ||
	    (r = get_name(c, K("arch"), "x86_64", k->arch, sizeof(k->arch), false)) < 0 ||
	    (r = get_i(c, K("ram_mb"), 1, 1LL << 30, 4096, &k->ram_mb)) < 0 ||
	    (r = get_i(c, K("fetch_ms"), 0, 3600000, 1000, &k->fetch_ms)) < 0 ||
	    (r = get_i(c, K("accept_ms"), 0, 3600000, 200, &k->accept_ms)) < 0 ||
	    (r = get_i(c, K("trial_ms"), 0, 3600000, 1000, &k->trial_ms)) < 0 ||
	    (r = get_i(c, K("latency_us"), 1, 600000000, 20000, &v)) < 0 ||
	    (r = get_name(c, K("fail_version"), "", k->fail_version, sizeof(k->fail_version), true)) < 0 ||
	    (r = get_dbl(c, K("fail_accept"), 0, 1, 0, &k->fail_accept)) < 0 ||
	    (r = get_dbl(c, K("crash_trial"), 0, 1, 0, &k->crash_trial)) < 0 ||
	    (r = get_dbl(c, K("slow_factor"), 0.01, 1000, 1, &k->slow_factor)) < 0)
		return r;
	k->latency_us = v;
	r = labels_json(K("labels"), fl_config_get_str(c, K("labels"), ""), k->labels_json,
			sizeof(k->labels_json));
#undef K
	return r;
}

int sim_scenario_load(const char *file, struct sim_scenario *sc)
{
	memset(sc, 0, sizeof(*sc));
	struct fl_config *c = NULL;
	char err[256] = "";
	int r = file ? fl_config_load(file, &c, err, sizeof(err)) : fl_config_parse("", 0, &c, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "flotilla-sim: %s: %s\n", file ? file : "-", err[0] ? err : fl_strerror(r));
		return r;
	}
	int64_t v;
	_cleanup_free_ char *dup = NULL;
	if ((r = get_i(c, "fleet.devices", 1, 100000, 100, &v)) < 0)
		goto out;
	sc->n = (int)v;
	if ((r = get_i(c, "fleet.first", 0, 10000000, 0, &v)) < 0)
		goto out;
	sc->first = (int)v;
	const char *p = fl_config_get_str(c, "fleet.prefix", "sim-");
	if (strlen(p) > 20 || !fl_name_valid(p, 20) || !strncmp(p, "flotilla-", 9)) {
		r = bad("fleet.prefix", "1-20 of [A-Za-z0-9._-], not flotilla-");
		goto out;
	}
	snprintf(sc->prefix, sizeof(sc->prefix), "%s", p);
	if ((r = get_name(c, "fleet.model", "tiny", sc->model, sizeof(sc->model), false)) < 0 ||
	    (r = get_name(c, "fleet.version", "1.0", sc->version, sizeof(sc->version), false)) < 0 ||
	    (r = get_i(c, "fleet.sequence", 0, 1LL << 52, 1, &v)) < 0)
		goto out;
	sc->sequence = (uint64_t)v;
	if ((r = get_dbl(c, "fleet.real_fetch", 0, 1, 0, &sc->real_fetch)) < 0 ||
	    (r = get_i(c, "fleet.telemetry_s", 0, 86400, 60, &sc->telemetry_s)) < 0 ||
	    (r = get_i(c, "fleet.connect_rate", 1, 100000, 500, &v)) < 0)
		goto out;
	sc->connect_rate = (int)v;
	if ((r = get_dbl(c, "fleet.churn_per_min", 0, 1, 0, &sc->churn_per_min)) < 0 ||
	    (r = get_i(c, "fleet.churn_offline_s", 0, 86400, 10, &sc->churn_offline_s)) < 0 ||
	    (r = get_i(c, "fleet.seed", 0, INT64_MAX, 1, &v)) < 0)
		goto out;
	sc->seed = (uint64_t)v;
	const char *classes = fl_config_get_str(c, "fleet.classes", "");
	dup = strdup(classes);
	if (!dup) {
		r = -ENOMEM;
		goto out;
	}
	char *save = NULL;
	for (char *t = strtok_r(dup, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
		if (sc->n_cls == SIM_MAX_CLASSES) {
			r = bad("fleet.classes", "at most 16");
			goto out;
		}
		if ((r = load_class(c, t, &sc->cls[sc->n_cls])) < 0)
			goto out;
		sc->n_cls++;
	}
	if (sc->n_cls == 0) { /* one default class */
		if ((r = load_class(c, "default", &sc->cls[0])) < 0)
			goto out;
		sc->n_cls = 1;
	}
	double w = 0;
	for (int i = 0; i < sc->n_cls; i++)
		w += sc->cls[i].weight;
	if (w <= 0)
		r = bad("weight", "the class weights add up to 0");
out:
	fl_config_free(c);
	return r;
}

int sim_certs(const char *pki_dir, const char *prefix, int first, int n)
{
	struct pki_opts o;
	memset(&o, 0, sizeof(o));
	int made = 0;
	int64_t t0 = fl_mono_ms();
	for (int i = first; i < first + n; i++) {
		char id[64], path[4096];
		snprintf(id, sizeof(id), "%s%05d", prefix, i);
		snprintf(path, sizeof(path), "%s/devices/%s.crt", pki_dir, id);
		if (access(path, R_OK) == 0)
			continue;
		int r = pki_issue(pki_dir, PKI_KIND_DEVICE, id, &o, NULL);
		if (r < 0) {
			fprintf(stderr, "flotilla-sim: issue %s: %s\n", id, fl_strerror(r));
			return r;
		}
		made++;
	}
	fprintf(stderr, "flotilla-sim: %d certificates issued (%d kept) in %.1f s\n", made, n - made,
		(double)(fl_mono_ms() - t0) / 1000.0);
	return 0;
}
