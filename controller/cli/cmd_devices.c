/* flotilla devices [list] [--label K=V] [--arch A] [--version V]
 *                  [--online|--offline] [--json]
 * flotilla devices show ID [--json]
 * Read the controller's device registry (GET /api/v1/devices, docs/api.md). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "cli.h"
#include "http_client.h"

#define MAX_FILTERS 9

static void usage(FILE *f)
{
	fputs("usage: flotilla devices [list] [--label KEY=VALUE] [--arch ARCH] [--version V]\n"
	      "                        [--online|--offline] [--min-ram-mb N] [--accelerator A]\n"
	      "                        [--backend B] [--install STATE] [--json] [COMMON]\n"
	      "       flotilla devices show ID [--json] [COMMON]\n"
	      "COMMON: --controller URL (default $FLOTILLA_CONTROLLER)\n"
	      "        --token TOKEN    (default $FLOTILLA_TOKEN)\n",
	      f);
}

static const char *str_of(const cJSON *o, const char *key)
{
	const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(o, key));
	return s ? s : "-";
}

static void fmt_time(const cJSON *o, const char *key, char out[21])
{
	const cJSON *t = cJSON_GetObjectItem(o, key);
	if (cJSON_IsNumber(t) && t->valuedouble > 0)
		fl_time_format((int64_t)t->valuedouble, out);
	else
		fl_strlcpy(out, "-", 21);
}

static void print_versions(const cJSON *vers)
{
	const cJSON *v;
	bool first = true;
	cJSON_ArrayForEach(v, vers)
	{
		printf("%s%s=%s", first ? "" : ",", v->string,
		       cJSON_IsString(v) ? v->valuestring : "-");
		first = false;
	}
	if (first)
		fputs("-", stdout);
}

static void print_list(const cJSON *root)
{
	printf("%-24s %-7s %-8s %-8s %-20s %s\n", "ID", "ONLINE", "ARCH", "AGENT", "LAST SEEN",
	       "VERSIONS");
	const cJSON *d;
	cJSON_ArrayForEach(d, cJSON_GetObjectItem(root, "devices"))
	{
		char ts[21];
		fmt_time(d, "last_seen", ts);
		printf("%-24s %-7s %-8s %-8s %-20s ", str_of(d, "id"),
		       cJSON_IsTrue(cJSON_GetObjectItem(d, "online")) ? "yes" : "no", str_of(d, "arch"),
		       str_of(d, "agent"), ts);
		print_versions(cJSON_GetObjectItem(d, "versions"));
		putchar('\n');
	}
}

static void print_show(const cJSON *root)
{
	const cJSON *d = cJSON_GetObjectItem(root, "device");
	char ts[21];
	fmt_time(d, "last_seen", ts);
	printf("device:    %s\nonline:    %s\nlast seen: %s\nagent:     %s\narch:      %s\n",
	       str_of(d, "id"), cJSON_IsTrue(cJSON_GetObjectItem(d, "online")) ? "yes" : "no", ts,
	       str_of(d, "agent"), str_of(d, "arch"));
	const cJSON *ram = cJSON_GetObjectItem(d, "ram_mb");
	if (cJSON_IsNumber(ram))
		printf("ram:       %.0f MB\n", ram->valuedouble);
	const cJSON *l;
	cJSON_ArrayForEach(l, cJSON_GetObjectItem(d, "labels"))
	{
		printf("label:     %s=%s\n", l->string, cJSON_IsString(l) ? l->valuestring : "?");
	}
	const cJSON *m;
	cJSON_ArrayForEach(m, cJSON_GetObjectItem(root, "models"))
	{
		printf("model:     %s current=%s version=%s", str_of(m, "model"), str_of(m, "current"),
		       str_of(m, "version"));
		const cJSON *in = cJSON_GetObjectItem(m, "install");
		if (in)
			printf(" install=%s %s", str_of(in, "state"), str_of(in, "version"));
		putchar('\n');
	}
	const cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItem(root, "events"))
	{
		char ets[21];
		fmt_time(e, "t", ets);
		printf("event:     %s %s %s %s\n", ets, str_of(e, "kind"), str_of(e, "model"),
		       str_of(e, "reason"));
	}
}

int cli_devices_main(int argc, char **argv)
{
	const char *url = getenv("FLOTILLA_CONTROLLER"), *token = NULL, *show = NULL;
	bool json = false;
	const char *fkey[MAX_FILTERS], *fval[MAX_FILTERS];
	size_t nf = 0;
	int i = 1;
	if (i < argc && !strcmp(argv[i], "list")) {
		i++;
	} else if (i < argc && !strcmp(argv[i], "show")) {
		if (i + 1 >= argc || argv[i + 1][0] == '-') {
			usage(stderr);
			return 2;
		}
		show = argv[i + 1];
		i += 2;
	}
	for (; i < argc; i++) {
		const char *a = argv[i];
		const char *filter = NULL;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--controller") && i + 1 < argc) {
			url = argv[++i];
		} else if (!strcmp(a, "--token") && i + 1 < argc) {
			token = argv[++i];
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else if (!show && (!strcmp(a, "--online") || !strcmp(a, "--offline"))) {
			if (nf >= MAX_FILTERS) {
				usage(stderr);
				return 2;
			}
			fkey[nf] = "online";
			fval[nf++] = !strcmp(a, "--online") ? "true" : "false";
		} else if (!show && (!strcmp(a, "--label") || !strcmp(a, "--arch") ||
				     !strcmp(a, "--version") || !strcmp(a, "--accelerator") ||
				     !strcmp(a, "--backend") || !strcmp(a, "--install")) &&
			   i + 1 < argc) {
			filter = a + 2;
		} else if (!show && !strcmp(a, "--min-ram-mb") && i + 1 < argc) {
			filter = "min_ram_mb";
		} else {
			usage(stderr);
			return 2;
		}
		if (filter) {
			if (nf >= MAX_FILTERS) {
				usage(stderr);
				return 2;
			}
			fkey[nf] = filter;
			fval[nf++] = argv[++i];
		}
	}
	if (!url || !*url) {
		usage(stderr);
		return 2;
	}
	_cleanup_free_ char *path = NULL;
	if (show) {
		if (!fl_name_valid(show, 64)) {
			cli_fail(0, "devices show: '%s' is not a valid device id", show);
			return 1;
		}
		path = fl_asprintf("/api/v1/devices/%s", show);
	} else {
		path = strdup("/api/v1/devices?all=1"); /* every page (docs/api.md) */
		for (size_t k = 0; path && k < nf; k++) {
			_cleanup_free_ char *ev = cli_http_escape(fval[k]);
			char *p = ev ? fl_asprintf("%s&%s=%s", path, fkey[k], ev) : NULL;
			free(path);
			path = p;
		}
	}
	if (!path) {
		cli_fail(-ENOMEM, "devices");
		return 1;
	}
	struct cli_http_resp resp = {0};
	char err[256] = "";
	int r = cli_http_request("GET", url, path, cli_http_token(token), NULL, &resp, err,
				 sizeof(err));
	if (r < 0) {
		if (err[0])
			cli_fail(0, "devices: %s", err);
		else
			cli_fail(r, "devices");
		return 1;
	}
	_cleanup_free_ char *body = resp.body;
	if (resp.status != 200) {
		char msg[512];
		const char *e = cli_http_error_text(body, resp.len, msg, sizeof(msg));
		cli_fail(0, "devices%s%s: %s (HTTP %ld)", show ? " show " : "", show ? show : "",
			 e ? e : "unexpected answer", resp.status);
		return 1;
	}
	if (json) {
		fputs(body, stdout);
		return 0;
	}
	cJSON *o = NULL;
	if (fl_json_parse(body, resp.len, CLI_HTTP_MAX_RESPONSE, 32, &o) < 0) {
		cli_fail(0, "devices: the controller's answer is not JSON");
		return 1;
	}
	if (show)
		print_show(o);
	else
		print_list(o);
	cJSON_Delete(o);
	return 0;
}
