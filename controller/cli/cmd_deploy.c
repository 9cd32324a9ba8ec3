/* flotilla deploy DEVICE MODEL@VERSION --controller URL [--token T] [--json]
 * flotilla revert DEVICE MODEL --controller URL [--token T] [--json]
 * Ask the controller to send a deploy or revert command to one device
 * (POST /api/v1/devices/{id}/deploy | revert, docs/api.md). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "cli.h"
#include "http_client.h"

#define NAME_MAX_LEN 64
#define VERSION_MAX_LEN 64

static void usage(FILE *f, bool deploy)
{
	if (deploy)
		fputs("usage: flotilla deploy DEVICE MODEL@VERSION [--controller URL] [--token TOKEN] "
		      "[--json]\n"
		      "\n"
		      "Send the pushed bundle MODEL VERSION to DEVICE (an operator token is needed);\n"
		      "the device verifies, fetches and installs it and reports through its state\n"
		      "(flotilla devices show DEVICE).\n",
		      f);
	else
		fputs("usage: flotilla revert DEVICE MODEL [--controller URL] [--token TOKEN] [--json]\n"
		      "\n"
		      "Ask DEVICE to switch MODEL back to its previous slot (operator token).\n",
		      f);
	fputs("  --controller URL  e.g. http://127.0.0.1:8080 (default $FLOTILLA_CONTROLLER)\n"
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

static int run(int argc, char **argv, bool deploy)
{
	const char *what = deploy ? "deploy" : "revert";
	const char *url = getenv("FLOTILLA_CONTROLLER"), *token = NULL;
	const char *pos[2] = {NULL, NULL};
	size_t npos = 0;
	bool json = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout, deploy);
			return 0;
		} else if (!strcmp(a, "--controller") && i + 1 < argc) {
			url = argv[++i];
		} else if (!strcmp(a, "--token") && i + 1 < argc) {
			token = argv[++i];
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else if (a[0] != '-' && npos < 2) {
			pos[npos++] = a;
		} else {
			usage(stderr, deploy);
			return 2;
		}
	}
	if (npos != 2 || !url || !*url) {
		usage(stderr, deploy);
		return 2;
	}
	const char *device = pos[0];
	char model[NAME_MAX_LEN + 1];
	const char *version = NULL;
	if (!fl_name_valid(device, NAME_MAX_LEN)) {
		cli_fail(0, "%s: '%s' is not a valid device id", what, device);
		return 2;
	}
	if (deploy) {
		const char *at = strchr(pos[1], '@');
		size_t ml = at ? (size_t)(at - pos[1]) : 0;
		if (!at || ml == 0 || ml > NAME_MAX_LEN || !version_ok(at + 1)) {
			cli_fail(0, "deploy: expected MODEL@VERSION, got '%s'", pos[1]);
			return 2;
		}
		memcpy(model, pos[1], ml);
		model[ml] = 0;
		version = at + 1;
	} else {
		if (strlen(pos[1]) > NAME_MAX_LEN) {
			cli_fail(0, "revert: model name too long");
			return 2;
		}
		fl_strlcpy(model, pos[1], sizeof(model));
	}
	if (!fl_name_valid(model, NAME_MAX_LEN)) {
		cli_fail(0, "%s: '%s' is not a valid model name", what, model);
		return 2;
	}
	cJSON *body = cJSON_CreateObject();
	_cleanup_free_ char *dev_esc = cli_http_escape(device);
	if (!body || !dev_esc || !cJSON_AddStringToObject(body, "model", model) ||
	    (version && !cJSON_AddStringToObject(body, "version", version))) {
		cJSON_Delete(body);
		cli_fail(-ENOMEM, "%s", what);
		return 1;
	}
	_cleanup_free_ char *text = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	_cleanup_free_ char *path = fl_asprintf("/api/v1/devices/%s/%s", dev_esc, what);
	if (!text || !path) {
		cli_fail(-ENOMEM, "%s", what);
		return 1;
	}
	struct cli_http_resp resp = {0};
	char err[256] = "";
	int r = cli_http_post_json(url, path, cli_http_token(token), text, &resp, err, sizeof(err));
	if (r < 0) {
		if (err[0])
			cli_fail(0, "%s %s: %s", what, device, err);
		else
			cli_fail(r, "%s %s", what, device);
		return 1;
	}
	_cleanup_free_ char *rbody = resp.body;
	if (resp.status != 200 && resp.status != 202) {
		char msg[512];
		const char *e = cli_http_error_text(rbody, resp.len, msg, sizeof(msg));
		cli_fail(0, "%s %s: %s (HTTP %ld)", what, device, e ? e : "unexpected answer",
			 resp.status);
		return 1;
	}
	if (json) {
		fputs(rbody, stdout);
		return 0;
	}
	cJSON *o = NULL;
	if (fl_json_parse(rbody, resp.len, CLI_HTTP_MAX_RESPONSE, 8, &o) < 0) {
		cli_fail(0, "%s %s: the controller's answer is not JSON", what, device);
		return 1;
	}
	const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(o, "id"));
	bool published = cJSON_IsTrue(cJSON_GetObjectItem(o, "published"));
	if (deploy)
		printf("deploy %s %s -> %s: command %s %s\n", model, version, device, id ? id : "?",
		       published ? "delivered to the broker" : "queued (not yet acknowledged)");
	else
		printf("revert %s on %s: command %s %s\n", model, device, id ? id : "?",
		       published ? "delivered to the broker" : "queued (not yet acknowledged)");
	cJSON_Delete(o);
	return 0;
}

int cli_deploy_main(int argc, char **argv)
{
	return run(argc, argv, true);
}

int cli_revert_main(int argc, char **argv)
{
	return run(argc, argv, false);
}
