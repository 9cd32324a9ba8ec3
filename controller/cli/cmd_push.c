/* flotilla push BUNDLE --controller URL [--token T] [--json]
 * (also reached as `flotilla bundle push ...`): upload a bundle to the
 * controller's POST /api/v1/bundles (docs/api.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>

#include "cli.h"
#include "http_client.h"

static void usage(FILE *f)
{
	fputs("usage: flotilla push BUNDLE --controller URL [--token TOKEN] [--json]\n"
	      "\n"
	      "Upload a bundle tar to the controller (an operator token is needed).\n"
	      "  --controller URL  e.g. http://127.0.0.1:8080 (default $FLOTILLA_CONTROLLER)\n"
	      "  --token TOKEN     bearer token (default $FLOTILLA_TOKEN)\n"
	      "  --json            print the controller's JSON answer\n",
	      f);
}

int cli_push_main(int argc, char **argv)
{
	const char *file = NULL, *url = getenv("FLOTILLA_CONTROLLER"), *token = NULL;
	bool json = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--controller") && i + 1 < argc) {
			url = argv[++i];
		} else if (!strcmp(a, "--token") && i + 1 < argc) {
			token = argv[++i];
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else if (a[0] != '-' && !file) {
			file = a;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!file || !url || !*url) {
		usage(stderr);
		return 2;
	}
	struct cli_http_resp resp = {0};
	char err[256] = "";
	int r = cli_http_request("POST", url, "/api/v1/bundles", cli_http_token(token), file, &resp,
				 err, sizeof(err));
	if (r < 0) {
		if (err[0])
			cli_fail(0, "push %s: %s", file, err);
		else
			cli_fail(r, "push %s", file);
		return 1;
	}
	_cleanup_free_ char *body = resp.body;
	if (resp.status != 200 && resp.status != 201) {
		char msg[512];
		const char *e = cli_http_error_text(body, resp.len, msg, sizeof(msg));
		cli_fail(0, "push %s: %s (HTTP %ld)", file, e ? e : "unexpected answer", resp.status);
		return 1;
	}
	if (json) {
		fputs(body, stdout);
		return 0;
	}
	cJSON *o = NULL;
	if (fl_json_parse(body, resp.len, CLI_HTTP_MAX_RESPONSE, 16, &o) < 0) {
		cli_fail(0, "push %s: the controller's answer is not JSON", file);
		return 1;
	}
	const char *model = cJSON_GetStringValue(cJSON_GetObjectItem(o, "model"));
	const char *ver = cJSON_GetStringValue(cJSON_GetObjectItem(o, "version"));
	const cJSON *seq = cJSON_GetObjectItem(o, "sequence");
	const cJSON *chunks = cJSON_GetObjectItem(o, "chunks");
	const cJSON *bytes = cJSON_GetObjectItem(o, "chunk_bytes");
	printf("%s %s %s (sequence %.0f, %.0f chunks, %.0f bytes)%s\n",
	       resp.status == 201 ? "pushed" : "already present:", model ? model : "?",
	       ver ? ver : "?", cJSON_IsNumber(seq) ? seq->valuedouble : 0,
	       cJSON_IsNumber(chunks) ? chunks->valuedouble : 0,
	       cJSON_IsNumber(bytes) ? bytes->valuedouble : 0,
	       cJSON_IsTrue(cJSON_GetObjectItem(o, "verified")) ? "" : " [unverified]");
	cJSON_Delete(o);
	return 0;
}
