/* flotilla rollout create MODEL@VERSION --waves 10,50,100 [options]
 * flotilla rollout list | status ID [--watch] | pause ID | resume ID | abort ID | rollback ID
 * Staged rollouts through the controller's API (docs/rollouts.md,
 * /api/v1/rollouts in docs/api.md). */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "cli.h"
#include "http_client.h"

#define NAME_MAX_LEN 64
#define VERSION_MAX_LEN 64
#define WAVES_MAX 16
#define ARG_MAX_LEN 256

FL_DEFINE_CLEANUP(cJSON, cJSON_Delete)

static void usage(FILE *f)
{
	fputs("usage: flotilla rollout create MODEL@VERSION --waves W1,W2,... [options]\n"
	      "       flotilla rollout list [--json]\n"
	      "       flotilla rollout status ID [--watch [--interval S]] [--json]\n"
	      "       flotilla rollout pause|resume|abort|rollback ID [--json]\n"
	      "\n"
	      "create options:\n"
	      "  --waves LIST            cumulative wave sizes, percent (last 100) or with --counts\n"
	      "  --counts                the waves are device counts, not percentages\n"
	      "  --soak SECONDS          wait after each wave before the next (default 300)\n"
	      "  --max-concurrent N      installs in flight at once (default 100)\n"
	      "  --max-failure-rate R    halt when failed/attempted > R, 0..1 (default 0.1)\n"
	      "  --min-sample N          ... once at least N devices were attempted (default 5)\n"
	      "  --select KEY=VALUE      only devices with this label (repeatable)\n"
	      "  --arch ARCH             only devices of this architecture\n"
	      "  --device ID             only these devices (repeatable)\n"
	      "  --revert-on-halt        revert the devices that took it when the gate halts it\n"
	      "  --release               MODEL@VERSION names a release (flotilla release create):\n"
	      "                          each device gets the variant that fits its class\n"
	      "  --gate KEY=VALUE        health gate against the previous version (repeatable):\n"
	      "                          error_rate_max_delta, error_rate_max, p95_latency_max_ratio,\n"
	      "                          crashes_max, empty_rate_max_delta, refusal_rate_max_delta,\n"
	      "                          drift_psi_max, min_requests (docs/rollouts.md)\n"
	      "  --window 'K=V[,K=V] HH:MM-HH:MM [DAYS]'  maintenance window (UTC, repeatable):\n"
	      "                          devices with these labels get deploys only inside\n"
	      "                          one of their windows; DAYS e.g. mon,tue (default all)\n"
	      "status options:\n"
	      "  --watch                 follow the rollout until it ends: a live view on a\n"
	      "                          terminal, a line per change otherwise (exit 0 completed,\n"
	      "                          3 halted, aborted or rolled back)\n"
	      "  --interval S            seconds between polls with --watch (default 2)\n"
	      "common:\n"
	      "  --controller URL  e.g. http://127.0.0.1:8080 (default $FLOTILLA_CONTROLLER)\n"
	      "  --token TOKEN     bearer token (default $FLOTILLA_TOKEN)\n"
	      "  --json            print the controller's JSON answer\n",
	      f);
}

static bool version_ok(const char *v)
{
	size_t n = strlen(v);
	if (n == 0 || n > VERSION_MAX_LEN)
		return false;
	for (; *v; v++)
		if ((unsigned char)*v <= 0x20 || (unsigned char)*v >= 0x7f)
			return false;
	return true;
}

static int parse_waves(const char *s, cJSON *arr)
{
	if (strlen(s) > ARG_MAX_LEN)
		return -FL_ETOOBIG;
	char buf[ARG_MAX_LEN + 1];
	fl_strlcpy(buf, s, sizeof(buf));
	int n = 0;
	char *save = NULL;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		int64_t v;
		if (++n > WAVES_MAX || fl_parse_i64(tok, 1, 1000000, &v) < 0)
			return -EINVAL;
		if (!cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)v)))
			return -ENOMEM;
	}
	return n > 0 ? 0 : -EINVAL;
}

/* The rollout's one-line summary. */
static void print_summary(const cJSON *o)
{
	const cJSON *cnt = cJSON_GetObjectItem(o, "counts");
	const cJSON *waves = cJSON_GetObjectItem(o, "waves");
	int wave = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(o, "wave"));
	const char *unit = cJSON_GetStringValue(cJSON_GetObjectItem(o, "wave_unit"));
	printf("rollout %.0f: %s@%s %s, wave %d of %d (%.0f%s)",
	       cJSON_GetNumberValue(cJSON_GetObjectItem(o, "id")),
	       cJSON_GetStringValue(cJSON_GetObjectItem(o, "model")),
	       cJSON_GetStringValue(cJSON_GetObjectItem(o, "version")),
	       cJSON_GetStringValue(cJSON_GetObjectItem(o, "state")), wave + 1,
	       cJSON_GetArraySize(waves), cJSON_GetNumberValue(cJSON_GetArrayItem(waves, wave)),
	       unit && !strcmp(unit, "count") ? " devices" : "%");
	if (cnt)
		printf(", %.0f targets, %.0f attempted, %.0f ok, %.0f failed, %.0f in progress",
		       cJSON_GetNumberValue(cJSON_GetObjectItem(cnt, "targets")),
		       cJSON_GetNumberValue(cJSON_GetObjectItem(cnt, "attempted")),
		       cJSON_GetNumberValue(cJSON_GetObjectItem(cnt, "succeeded")),
		       cJSON_GetNumberValue(cJSON_GetObjectItem(cnt, "failed")),
		       cJSON_GetNumberValue(cJSON_GetObjectItem(cnt, "in_progress")));
	printf("\n");
	const char *reason = cJSON_GetStringValue(cJSON_GetObjectItem(o, "reason"));
	if (reason)
		printf("  %s\n", reason);
}

static double num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItem(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* "12.3" or "-" for a figure that may be null. */
static const char *fig(const cJSON *o, const char *k, int decimals, char *buf, size_t n)
{
	const cJSON *v = cJSON_GetObjectItem(o, k);
	if (!cJSON_IsNumber(v))
		return "-";
	snprintf(buf, n, "%.*f", decimals, v->valuedouble);
	return buf;
}

/* Waves, variants, skipped devices and health-gate figures. BARS draws a
 * progress bar per wave (the live view). */
static void print_details(const cJSON *o, bool bars)
{
	const cJSON *cnt = cJSON_GetObjectItem(o, "counts");
	const cJSON *waves = cJSON_GetObjectItem(o, "waves");
	int cur = (int)num(o, "wave");
	const char *unit = cJSON_GetStringValue(cJSON_GetObjectItem(o, "wave_unit"));
	bool count = unit && !strcmp(unit, "count");
	int i = 0;
	const cJSON *w;
	cJSON_ArrayForEach(w, cJSON_GetObjectItem(cnt, "waves"))
	{
		double n = num(w, "devices"), ok = num(w, "succeeded"), bad = num(w, "failed");
		printf("  %c wave %d (%.0f%s): ", i == cur ? '>' : ' ', i + 1,
		       cJSON_GetNumberValue(cJSON_GetArrayItem(waves, i)), count ? " devices" : "%");
		if (bars) {
			char bar[21];
			int full = n > 0 ? (int)(20 * (ok + bad) / n + 0.5) : 0;
			int failed = n > 0 ? (int)(20 * bad / n + 0.5) : 0;
			for (int k = 0; k < 20; k++)
				bar[k] = k < full - failed ? '#' : k < full ? 'x' : '.';
			bar[20] = 0;
			printf("[%s] ", bar);
		}
		printf("%.0f devices: %.0f ok, %.0f failed, %.0f in progress, %.0f not started\n", n,
		       ok, bad, num(w, "in_progress"), num(w, "pending"));
		i++;
	}
	const cJSON *vars = cJSON_GetObjectItem(cnt, "variants");
	if (cJSON_GetArraySize(vars) > 1 ||
	    cJSON_GetObjectItem(cJSON_GetObjectItem(o, "release"), "variants")) {
		const cJSON *v;
		cJSON_ArrayForEach(v, vars)
		{
			printf("    variant %s: %.0f targets, %.0f attempted, %.0f ok, %.0f failed\n",
			       v->string, num(v, "targets"), num(v, "attempted"), num(v, "succeeded"),
			       num(v, "failed"));
		}
	}
	if (num(cnt, "outside_window") > 0)
		printf("    waiting: %.0f device%s of this wave outside %s maintenance window\n",
		       num(cnt, "outside_window"), num(cnt, "outside_window") == 1 ? "" : "s",
		       num(cnt, "outside_window") == 1 ? "its" : "their");
	if (num(cnt, "skipped") > 0)
		printf("    skipped: %.0f device%s no variant of the release fits\n",
		       num(cnt, "skipped"), num(cnt, "skipped") == 1 ? "" : "s");
	const cJSON *g;
	cJSON_ArrayForEach(g, cJSON_GetObjectItem(cJSON_GetObjectItem(o, "health"), "groups"))
	{
		const cJSON *c = cJSON_GetObjectItem(g, "candidate");
		const cJSON *b = cJSON_GetObjectItem(g, "baseline");
		char b1[32], b2[32], b3[32], b4[32];
		printf("    health %s: %s; p95 %s ms (before %s), error rate %s (before %s), "
		       "%.0f crashes, %.0f requests on %.0f devices\n",
		       cJSON_GetStringValue(cJSON_GetObjectItem(g, "version")),
		       cJSON_GetStringValue(cJSON_GetObjectItem(g, "verdict")),
		       fig(c, "p95_latency_ms", 1, b1, sizeof(b1)),
		       fig(b, "p95_latency_ms", 1, b2, sizeof(b2)),
		       fig(c, "error_rate", 4, b3, sizeof(b3)),
		       fig(b, "error_rate", 4, b4, sizeof(b4)), num(c, "crashes"),
		       num(c, "requests"), num(c, "devices"));
		const cJSON *br;
		cJSON_ArrayForEach(br, cJSON_GetObjectItem(g, "breaches"))
			printf("      breach: %s\n", cJSON_GetStringValue(br));
	}
}

/* Do the request; print the answer. Returns the exit code. */
static int call(const char *what, const char *url, const char *token, const char *method,
		const char *path, const char *body, long want, bool json)
{
	cJSON *o = NULL;
	int r = cli_api_call("rollout", what, method, url, token, path, body, want, json, &o);
	if (r || !o)
		return r;
	const cJSON *list = cJSON_GetObjectItem(o, "rollouts");
	if (list) {
		const cJSON *it;
		cJSON_ArrayForEach(it, list)
			print_summary(it);
		if (cJSON_GetArraySize(list) == 0)
			printf("no rollouts\n");
	} else {
		print_summary(o);
		if (!strcmp(what, "status"))
			print_details(o, false);
	}
	cJSON_Delete(o);
	return 0;
}

static bool finished(const char *state)
{
	return state && (!strcmp(state, "completed") || !strcmp(state, "halted") ||
			 !strcmp(state, "aborted") || !strcmp(state, "rolled_back"));
}

/* Poll PATH every INTERVAL_MS until the rollout ends. */
static int watch(const char *url, const char *token, const char *path, bool json,
		 int64_t interval_ms)
{
	bool tty = isatty(STDOUT_FILENO) && !json;
	char *last = NULL;
	int rc = 1;
	for (;;) {
		struct cli_http_resp resp = {0};
		char err[256] = "";
		int r = cli_http_request("GET", url, path, cli_http_token(token), NULL, &resp, err,
					 sizeof(err));
		if (r < 0) {
			if (err[0])
				cli_fail(0, "rollout status: %s", err);
			else
				cli_fail(r, "rollout status");
			break;
		}
		_cleanup_free_ char *body = resp.body;
		if (resp.status != 200) {
			char msg[512];
			const char *e = cli_http_error_text(body, resp.len, msg, sizeof(msg));
			cli_fail(0, "rollout status: %s (HTTP %ld)", e ? e : "unexpected answer",
				 resp.status);
			break;
		}
		cJSON *o = NULL;
		if (fl_json_parse(body, resp.len, CLI_HTTP_MAX_RESPONSE, 16, &o) < 0) {
			cli_fail(0, "rollout status: the controller's answer is not JSON");
			break;
		}
		const char *state = cJSON_GetStringValue(cJSON_GetObjectItem(o, "state"));
		bool done = finished(state), completed = done && !strcmp(state, "completed");
		char ts[21];
		fl_time_format(fl_now_s(), ts);
		if (tty) {
			fputs("\033[H\033[2J", stdout); /* home, clear: redraw */
			print_summary(o);
			print_details(o, true);
			printf("\n%s  %s\n", ts, done ? "finished" : "watching (Ctrl-C to stop)");
		} else {
			/* a line (or the JSON) only when something changed */
			cJSON_DeleteItemFromObject(o, "updated_at");
			cJSON_DeleteItemFromObject(cJSON_GetObjectItem(o, "health"), "checked_at");
			char *now = cJSON_PrintUnformatted(o);
			if (now && (!last || strcmp(now, last))) {
				if (json) {
					puts(now);
				} else {
					printf("%s ", ts);
					print_summary(o);
				}
				free(last);
				last = now;
			} else {
				free(now);
			}
		}
		fflush(stdout);
		cJSON_Delete(o);
		if (done) {
			rc = completed ? 0 : 3;
			break;
		}
		struct timespec d = {.tv_sec = interval_ms / 1000,
				     .tv_nsec = (long)(interval_ms % 1000) * 1000000L};
		nanosleep(&d, NULL);
	}
	free(last);
	return rc;
}

/* "site=a,line=2 22:00-05:00 mon,tue" -> a window object in ARR (the
 * controller checks the values). */
static int parse_window(const char *s, cJSON *arr)
{
	if (strlen(s) > ARG_MAX_LEN)
		return -FL_ETOOBIG;
	char buf[ARG_MAX_LEN + 1];
	fl_strlcpy(buf, s, sizeof(buf));
	char *save = NULL;
	char *labels = strtok_r(buf, " ", &save), *span = strtok_r(NULL, " ", &save);
	char *days = strtok_r(NULL, " ", &save);
	char *dash = span ? strchr(span, '-') : NULL;
	if (!labels || !dash || strtok_r(NULL, " ", &save))
		return -EINVAL;
	*dash = 0;
	cJSON *w = cJSON_CreateObject();
	if (!w || !cJSON_AddItemToArray(arr, w)) {
		cJSON_Delete(w);
		return -ENOMEM;
	}
	cJSON *l = cJSON_AddObjectToObject(w, "labels");
	if (!l || !cJSON_AddStringToObject(w, "start", span) ||
	    !cJSON_AddStringToObject(w, "end", dash + 1))
		return -ENOMEM;
	char *s2 = NULL;
	for (char *kv = strtok_r(labels, ",", &s2); kv; kv = strtok_r(NULL, ",", &s2)) {
		char *eq = strchr(kv, '=');
		if (!eq || eq == kv || !eq[1])
			return -EINVAL;
		*eq = 0;
		if (!cJSON_AddStringToObject(l, kv, eq + 1))
			return -ENOMEM;
	}
	if (days) {
		cJSON *d = cJSON_AddArrayToObject(w, "days");
		if (!d)
			return -ENOMEM;
		for (char *x = strtok_r(days, ",", &s2); x; x = strtok_r(NULL, ",", &s2))
			if (!cJSON_AddItemToArray(d, cJSON_CreateString(x)))
				return -ENOMEM;
	}
	return 0;
}

static int create(int argc, char **argv, const char *url, const char *token, bool json)
{
	_cleanup_(cJSON_Deletep) cJSON *b = cJSON_CreateObject();
	cJSON *labels = cJSON_CreateObject(), *devices = cJSON_CreateArray();
	cJSON *waves = cJSON_CreateArray();
	if (!b || !labels || !devices || !waves) {
		cJSON_Delete(labels);
		cJSON_Delete(devices);
		cJSON_Delete(waves);
		cli_fail(-ENOMEM, "rollout create");
		return 1;
	}
	cJSON_AddItemToObject(b, "waves", waves);
	cJSON *sel = cJSON_AddObjectToObject(b, "select");
	cJSON_AddItemToObject(sel, "labels", labels);
	cJSON_AddItemToObject(sel, "devices", devices);
	const char *rel = NULL;
	bool have_waves = false, by_release = false;
	cJSON *gates = NULL, *windows = NULL;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int64_t n;
		if (!strcmp(a, "--waves") && v) {
			if (parse_waves(v, waves) < 0) {
				cli_fail(0, "rollout create: bad --waves '%s'", v);
				return 2;
			}
			have_waves = true;
			i++;
		} else if (!strcmp(a, "--counts")) {
			cJSON_AddStringToObject(b, "wave_unit", "count");
		} else if ((!strcmp(a, "--soak") || !strcmp(a, "--max-concurrent") ||
			    !strcmp(a, "--min-sample")) &&
			   v) {
			if (fl_parse_i64(v, 0, 100000000, &n) < 0) {
				cli_fail(0, "rollout create: bad %s '%s'", a, v);
				return 2;
			}
			cJSON_AddNumberToObject(b,
						!strcmp(a, "--soak")	       ? "soak_s"
						: !strcmp(a, "--max-concurrent") ? "max_concurrent"
										 : "min_sample",
						(double)n);
			i++;
		} else if (!strcmp(a, "--max-failure-rate") && v) {
			char *end = NULL;
			double d = strtod(v, &end);
			if (!*v || *end || !isfinite(d) || d < 0 || d > 1) {
				cli_fail(0, "rollout create: bad --max-failure-rate '%s' (0..1)", v);
				return 2;
			}
			cJSON_AddNumberToObject(b, "max_failure_rate", d);
			i++;
		} else if (!strcmp(a, "--select") && v) {
			const char *eq = strchr(v, '=');
			if (!eq || eq == v || !eq[1] || strlen(v) > ARG_MAX_LEN) {
				cli_fail(0, "rollout create: expected --select KEY=VALUE, got '%s'", v);
				return 2;
			}
			char key[ARG_MAX_LEN + 1];
			memcpy(key, v, (size_t)(eq - v));
			key[eq - v] = 0;
			cJSON_DeleteItemFromObject(labels, key);
			cJSON_AddStringToObject(labels, key, eq + 1);
			i++;
		} else if (!strcmp(a, "--arch") && v) {
			cJSON_AddStringToObject(sel, "arch", v);
			i++;
		} else if (!strcmp(a, "--device") && v) {
			cJSON_AddItemToArray(devices, cJSON_CreateString(v));
			i++;
		} else if (!strcmp(a, "--revert-on-halt")) {
			cJSON_AddBoolToObject(b, "revert_on_halt", true);
		} else if (!strcmp(a, "--window") && v) {
			if (!windows && !(windows = cJSON_AddArrayToObject(b, "windows"))) {
				cli_fail(-ENOMEM, "rollout create");
				return 1;
			}
			if (parse_window(v, windows) < 0) {
				cli_fail(0, "rollout create: expected --window 'K=V[,K=V] HH:MM-HH:MM "
					    "[DAYS]', got '%s'",
					 v);
				return 2;
			}
			i++;
		} else if (!strcmp(a, "--release")) {
			by_release = true;
		} else if (!strcmp(a, "--gate") && v) {
			const char *eq = strchr(v, '=');
			char *end = NULL;
			double d = eq ? strtod(eq + 1, &end) : NAN;
			if (!eq || eq == v || !eq[1] || *end || !isfinite(d) ||
			    (size_t)(eq - v) > NAME_MAX_LEN) {
				cli_fail(0, "rollout create: expected --gate KEY=NUMBER, got '%s'", v);
				return 2;
			}
			char key[NAME_MAX_LEN + 1];
			memcpy(key, v, (size_t)(eq - v));
			key[eq - v] = 0;
			if (!gates && !(gates = cJSON_AddObjectToObject(b, "gates"))) {
				cli_fail(-ENOMEM, "rollout create");
				return 1;
			}
			cJSON_DeleteItemFromObject(gates, key);
			cJSON_AddNumberToObject(gates, key, d);
			i++;
		} else if (a[0] != '-' && !rel) {
			rel = a;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!rel || !have_waves) {
		usage(stderr);
		return 2;
	}
	const char *at = strchr(rel, '@');
	size_t ml = at ? (size_t)(at - rel) : 0;
	char model[NAME_MAX_LEN + 1];
	if (!at || ml == 0 || ml > NAME_MAX_LEN || !version_ok(at + 1)) {
		cli_fail(0, "rollout create: expected MODEL@VERSION, got '%s'", rel);
		return 2;
	}
	memcpy(model, rel, ml);
	model[ml] = 0;
	if (!fl_name_valid(model, NAME_MAX_LEN)) {
		cli_fail(0, "rollout create: '%s' is not a valid model name", model);
		return 2;
	}
	cJSON_AddStringToObject(b, "model", model);
	cJSON_AddStringToObject(b, by_release ? "release" : "version", at + 1);
	if (cJSON_GetArraySize(devices) == 0)
		cJSON_DeleteItemFromObject(sel, "devices");
	_cleanup_free_ char *text = cJSON_PrintUnformatted(b);
	if (!text) {
		cli_fail(-ENOMEM, "rollout create");
		return 1;
	}
	return call("create", url, token, "POST", "/api/v1/rollouts", text, 201, json);
}

int cli_rollout_main(int argc, char **argv)
{
	const char *url = getenv("FLOTILLA_CONTROLLER"), *token = NULL;
	bool json = false, watching = false;
	int64_t interval_ms = 2000;
	/* Pull out the common options; keep the rest in order. */
	char **rest = calloc((size_t)argc + 1, sizeof(*rest));
	if (!rest) {
		cli_fail(-ENOMEM, "rollout");
		return 1;
	}
	int nrest = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			free(rest);
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--controller") && i + 1 < argc) {
			url = argv[++i];
		} else if (!strcmp(a, "--token") && i + 1 < argc) {
			token = argv[++i];
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else if (!strcmp(a, "--watch")) {
			watching = true;
		} else if (!strcmp(a, "--interval") && i + 1 < argc) {
			char *end = NULL;
			double d = strtod(argv[++i], &end);
			if (!*argv[i] || *end || !(d >= 0.1 && d <= 60)) {
				free(rest);
				cli_fail(0, "rollout: bad --interval '%s' (0.1..60 seconds)", argv[i]);
				return 2;
			}
			interval_ms = (int64_t)(d * 1000);
		} else {
			rest[nrest++] = argv[i];
		}
	}
	int rc = 2;
	const char *sub = nrest > 0 ? rest[0] : NULL;
	if (!sub || !url || !*url || (watching && strcmp(sub, "status"))) {
		usage(stderr);
	} else if (!strcmp(sub, "create")) {
		rc = create(nrest - 1, rest + 1, url, token, json);
	} else if (!strcmp(sub, "list") && nrest == 1) {
		rc = call("list", url, token, "GET", "/api/v1/rollouts", NULL, 200, json);
	} else if ((!strcmp(sub, "status") || !strcmp(sub, "pause") || !strcmp(sub, "resume") ||
		    !strcmp(sub, "abort") || !strcmp(sub, "rollback")) &&
		   nrest == 2) {
		int64_t id;
		if (fl_parse_i64(rest[1], 1, INT64_MAX, &id) < 0) {
			cli_fail(0, "rollout %s: '%s' is not a rollout id", sub, rest[1]);
		} else {
			bool status = !strcmp(sub, "status");
			char path[96];
			if (status)
				fl_snprintf(path, sizeof(path), "/api/v1/rollouts/%lld", (long long)id);
			else
				fl_snprintf(path, sizeof(path), "/api/v1/rollouts/%lld/%s",
					    (long long)id, sub);
			if (status && watching)
				rc = watch(url, token, path, json, interval_ms);
			else
				rc = call(sub, url, token, status ? "GET" : "POST", path,
					  status ? NULL : "{}", 200, json);
		}
	} else {
		usage(stderr);
	}
	free(rest);
	return rc;
}
