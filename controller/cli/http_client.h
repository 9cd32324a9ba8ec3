/* The CLI's HTTP client for the controller API (libcurl; the only CLI file
 * that touches it). */
#ifndef FLOTILLA_CLI_HTTP_CLIENT_H
#define FLOTILLA_CLI_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#define CLI_HTTP_MAX_RESPONSE (64u * 1024 * 1024)

/* Commands built on it (also declared in cli.h by the dispatcher). */
int cli_push_main(int argc, char **argv);    /* flotilla push | bundle push */
int cli_devices_main(int argc, char **argv); /* flotilla devices ... */
int cli_deploy_main(int argc, char **argv);  /* flotilla deploy ... */
int cli_revert_main(int argc, char **argv);  /* flotilla revert ... */

struct cli_http_resp {
	long status;
	char *body; /* NUL-terminated; caller frees */
	size_t len;
};

/* METHOD ("GET" or "POST") BASE_URL + PATH with "Authorization: Bearer
 * TOKEN" (TOKEN may be NULL). UPLOAD_PATH (may be NULL) is sent as the body
 * (application/x-tar). Bodies past CLI_HTTP_MAX_RESPONSE are refused.
 * Returns 0 with *RET filled for any HTTP status; -FL_ENET (connection
 * failed: RET_ERR says why), -FL_ETOOBIG, -errno, -ENOMEM otherwise. */
int cli_http_request(const char *method, const char *base_url, const char *path,
		     const char *token, const char *upload_path, struct cli_http_resp *ret,
		     char *ret_err, size_t err_len);

/* POST the JSON text JSON to BASE_URL + PATH (application/json), otherwise
 * as cli_http_request(). */
int cli_http_post_json(const char *base_url, const char *path, const char *token,
		       const char *json, struct cli_http_resp *ret, char *ret_err, size_t err_len);

/* The "error" member of a JSON error body, or NULL (points into BODY's copy
 * in BUF of BUF_LEN bytes). */
const char *cli_http_error_text(const char *body, size_t len, char *buf, size_t buf_len);

/* One API call as the rollout/release commands make it: METHOD with BODY
 * (JSON, POSTed when not NULL) to BASE_URL + PATH. Failures (no connection,
 * a status other than WANT, an answer that is not JSON) are printed as
 * "CMD WHAT: ..." and give 1. With JSON the answer is printed as it came and
 * *RET is NULL; otherwise *RET is the parsed answer (caller frees). */
struct cJSON;
int cli_api_call(const char *cmd, const char *what, const char *method, const char *base_url,
		 const char *token, const char *path, const char *body, long want, bool json,
		 struct cJSON **ret);

/* URL-encode S (caller frees); NULL on out of memory. */
char *cli_http_escape(const char *s);

/* The token: TOKEN_ARG, else $FLOTILLA_TOKEN, else NULL. */
const char *cli_http_token(const char *token_arg);

#endif
