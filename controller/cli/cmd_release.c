/* flotilla release create MODEL@VERSION --variant BUNDLE[:K=V,...] ... | --file BODY.json
 * flotilla release list [--model M] | show ID|MODEL@VERSION
 * Releases with per-class variants through the controller's API
 * (/api/v1/releases in docs/api.md, docs/rollouts.md "Releases"). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "cli.h"
#include "http_client.h"

#define NAME_MAX_LEN 64
#define ARG_MAX_LEN 512
#define BODY_FILE_MAX (64 * 1024)

FL_DEFINE_CLEANUP(cJSON, cJSON_Delete)

static void usage(FILE *f)
{
	fputs("usage: flotilla release create MODEL@VERSION --variant BUNDLE[:SELECTOR] ... [--json]\n"
	      "       flotilla release create --file RELEASE.json [--json]\n"
	      "       flotilla release list [--model MODEL] [--json]\n"
	      "       flotilla release show ID|MODEL@VERSION [--json]\n"
	      "\n"
	      "A release is a model version with variants: each is a pushed bundle version\n"
	      "(BUNDLE) for the devices its selector matches; a device gets the most specific\n"
	      "variant that fits its hardware class (no selector: any device).\n"
	      "SELECTOR: comma-separated KEY=VALUE, KEY one of arch, min_ram_mb, max_ram_mb,\n"
	      "          accelerator, backend. Example:\n"
	      "  flotilla release create defect-llm@1.4.0 --variant 1.4.0-q4:arch=aarch64 \\\n"
	      "      --variant 1.4.0-q8:arch=x86_64 --variant 1.4.0-xgb:backend=xgboost\n"
	      "common:\n"
	      "  --controller URL  e.g. http://127.0.0.1:8080 (default $FLOTILLA_CONTROLLER)\n"
	      "  --token TOKEN     bearer token (default $FLOTILLA_TOKEN)\n"
	      "  --json            print the controller's JSON answer\n",
	      f);
}

static void print_release(const cJSON *r)
{
	char ts[21] = "-";
	const cJSON *t = cJSON_GetObjectItem(r, "created_at");
	if (cJSON_IsNumber(t))
		fl_time_format((int64_t)t->valuedouble, ts);
	const cJSON *vars = cJSON_GetObjectItem(r, "variants");
	printf("release %.0f: %s@%s, %d variant%s, created %s by %s\n",
	       cJSON_GetNumberValue(cJSON_GetObjectItem(r, "id")),
	       cJSON_GetStringValue(cJSON_GetObjectItem(r, "model")),
	       cJSON_GetStringValue(cJSON_GetObjectItem(r, "version")), cJSON_GetArraySize(vars),
	       cJSON_GetArraySize(vars) == 1 ? "" : "s", ts,
	       cJSON_GetStringValue(cJSON_GetObjectItem(r, "created_by")));
	const cJSON *v;
	cJSON_ArrayForEach(v, vars)
	{
		printf("  %-24s", cJSON_GetStringValue(cJSON_GetObjectItem(v, "bundle")));
		const cJSON *sel = cJSON_GetObjectItem(v, "select");
		const cJSON *k;
		int n = 0;
		cJSON_ArrayForEach(k, sel)
		{
			if (cJSON_IsString(k))
				printf(" %s=%s", k->string, k->valuestring);
			else
				printf(" %s=%.0f", k->string, k->valuedouble);
			n++;
		}
		printf("%s\n", n ? "" : " (any device)");
	}
}

static int call(const char *what, const char *url, const char *token, const char *path,
		const char *body, long want, bool json)
{
	cJSON *o = NULL;
	int r = cli_api_call("release", what, "GET", url, token, path, body, want, json, &o);
	if (r || !o)
		return r;
	const cJSON *list = cJSON_GetObjectItem(o, "releases");
	if (list) {
		const cJSON *it;
		cJSON_ArrayForEach(it, list)
			print_release(it);
		if (cJSON_GetArraySize(list) == 0)
			printf("no releases\n");
	} else {
		print_release(o);
	}
	cJSON_Delete(o);
	return 0;
}

/* "BUNDLE[:K=V,K=V]" -> {"bundle","select"}; the selector starts after the
 * last ':' that is followed by a KEY=VALUE list. */
static int parse_variant(const char *s, cJSON *arr)
{
	if (strlen(s) > ARG_MAX_LEN)
		return -FL_ETOOBIG;
	char buf[ARG_MAX_LEN + 1];
	fl_strlcpy(buf, s, sizeof(buf));
	char *colon = strrchr(buf, ':');
	char *sel_s = NULL;
	if (colon && strchr(colon, '=')) {
		*colon = 0;
		sel_s = colon + 1;
	}
	if (!buf[0])
		return -EINVAL;
	cJSON *v = cJSON_CreateObject();
	if (!v || !cJSON_AddItemToArray(arr, v)) {
		cJSON_Delete(v);
		return -ENOMEM;
	}
	cJSON *sel = cJSON_AddObjectToObject(v, "select");
	if (!sel || !cJSON_AddStringToObject(v, "bundle", buf))
		return -ENOMEM;
	char *save = NULL;
	for (char *kv = sel_s ? strtok_r(sel_s, ",", &save) : NULL; kv;
	     kv = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(kv, '=');
		if (!eq || eq == kv || !eq[1])
			return -EINVAL;
		*eq = 0;
		const char *k = kv, *val = eq + 1;
		if (!strcmp(k, "min_ram_mb") || !strcmp(k, "max_ram_mb")) {
			int64_t n;
			if (fl_parse_i64(val, 0, 100000000, &n) < 0)
				return -EINVAL;
			if (!cJSON_AddNumberToObject(sel, k, (double)n))
				return -ENOMEM;
		} else if (!strcmp(k, "arch") || !strcmp(k, "accelerator") ||
			   !strcmp(k, "backend")) {
			if (!cJSON_AddStringToObject(sel, k, val))
				return -ENOMEM;
		} else {
			return -EINVAL;
		}
	}
	return 0;
}

static int create(int argc, char **argv, const char *url, const char *token, bool json)
{
	_cleanup_(cJSON_Deletep) cJSON *b = cJSON_CreateObject();
	cJSON *vars = b ? cJSON_AddArrayToObject(b, "variants") : NULL;
	if (!vars) {
		cli_fail(-ENOMEM, "release create");
		return 1;
	}
	const char *rel = NULL, *file = NULL;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--variant") && v) {
			if (parse_variant(v, vars) < 0) {
				cli_fail(0, "release create: bad --variant '%s' (BUNDLE[:KEY=VALUE,...], "
					    "KEY arch, min_ram_mb, max_ram_mb, accelerator, backend)",
					 v);
				return 2;
			}
			i++;
		} else if (!strcmp(a, "--file") && v) {
			file = v;
			i++;
		} else if (a[0] != '-' && !rel) {
			rel = a;
		} else {
			usage(stderr);
			return 2;
		}
	}
	_cleanup_free_ char *text = NULL;
	if (file) {
		if (rel || cJSON_GetArraySize(vars) > 0) {
			cli_fail(0, "release create: --file takes the whole body; no MODEL@VERSION "
				    "or --variant with it");
			return 2;
		}
		size_t len = 0;
		int r = fl_read_file(file, BODY_FILE_MAX, &text, &len);
		if (r < 0) {
			cli_fail(r, "release create: %s", file);
			return 1;
		}
	} else {
		if (!rel || cJSON_GetArraySize(vars) == 0) {
			usage(stderr);
			return 2;
		}
		const char *at = strchr(rel, '@');
		size_t ml = at ? (size_t)(at - rel) : 0;
		char model[NAME_MAX_LEN + 1];
		if (!at || ml == 0 || ml > NAME_MAX_LEN || !at[1]) {
			cli_fail(0, "release create: expected MODEL@VERSION, got '%s'", rel);
			return 2;
		}
		memcpy(model, rel, ml);
		model[ml] = 0;
		if (!cJSON_AddStringToObject(b, "model", model) ||
		    !cJSON_AddStringToObject(b, "version", at + 1) ||
		    !(text = cJSON_PrintUnformatted(b))) {
			cli_fail(-ENOMEM, "release create");
			return 1;
		}
	}
	return call("create", url, token, "/api/v1/releases", text, 201, json);
}

int cli_release_main(int argc, char **argv)
{
	const char *url = getenv("FLOTILLA_CONTROLLER"), *token = NULL, *model = NULL;
	bool json = false;
	char **rest = calloc((size_t)argc + 1, sizeof(*rest));
	if (!rest) {
		cli_fail(-ENOMEM, "release");
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
		} else if (!strcmp(a, "--model") && i + 1 < argc) {
			model = argv[++i];
		} else {
			rest[nrest++] = argv[i];
		}
	}
	int rc = 2;
	const char *sub = nrest > 0 ? rest[0] : NULL;
	if (!sub || !url || !*url) {
		usage(stderr);
	} else if (!strcmp(sub, "create") && !model) {
		rc = create(nrest - 1, rest + 1, url, token, json);
	} else if (!strcmp(sub, "list") && nrest == 1) {
		_cleanup_free_ char *esc = model ? cli_http_escape(model) : NULL;
		_cleanup_free_ char *path = model ? fl_asprintf("/api/v1/releases?model=%s", esc ? esc : "")
						  : strdup("/api/v1/releases");
		if (!path || (model && !esc))
			cli_fail(-ENOMEM, "release list");
		else
			rc = call("list", url, token, path, NULL, 200, json);
	} else if (!strcmp(sub, "show") && nrest == 2 && !model) {
		const char *ref = rest[1];
		bool ok = strlen(ref) <= 2 * NAME_MAX_LEN + 1 && !strchr(ref, '/') &&
			  !strchr(ref, '?') && !strchr(ref, '#') && !strchr(ref, '%');
		for (const char *p = ref; ok && *p; p++)
			ok = (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f;
		if (!ok || !*ref) {
			cli_fail(0, "release show: '%s' is not ID or MODEL@VERSION", ref);
		} else {
			_cleanup_free_ char *path = fl_asprintf("/api/v1/releases/%s", ref);
			rc = path ? call("show", url, token, path, NULL, 200, json) : 1;
		}
	} else {
		usage(stderr);
	}
	free(rest);
	return rc;
}
