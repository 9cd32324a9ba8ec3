/* libcurl wrapper for the CLI's controller commands. */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "cli.h"
#include "http_client.h"

#define CONNECT_TIMEOUT_S 10L
#define TOKEN_MAX 256

struct sink {
	char *p;
	size_t len, cap;
	int err;
};

static size_t on_data(char *data, size_t size, size_t n, void *ud)
{
	struct sink *s = ud;
	size_t k = size * n;
	if (s->len + k + 1 > CLI_HTTP_MAX_RESPONSE) {
		s->err = -FL_ETOOBIG;
		return 0;
	}
	if (s->len + k + 1 > s->cap) {
		size_t cap = (s->cap ? s->cap * 2 : 4096) + k;
		char *p = realloc(s->p, cap);
		if (!p) {
			s->err = -ENOMEM;
			return 0;
		}
		s->p = p;
		s->cap = cap;
	}
	memcpy(s->p + s->len, data, k);
	s->len += k;
	s->p[s->len] = 0;
	return k;
}

static int request(const char *method, const char *base_url, const char *path,
		   const char *token, const char *upload_path, const char *json,
		   struct cli_http_resp *ret, char *ret_err, size_t err_len)
{
	if (!base_url || (strncmp(base_url, "http://", 7) && strncmp(base_url, "https://", 8))) {
		fl_snprintf(ret_err, err_len, "controller URL must start with http:// or https://");
		return -EINVAL;
	}
	if (token && (strlen(token) > TOKEN_MAX || strpbrk(token, "\r\n"))) {
		fl_snprintf(ret_err, err_len, "bad token");
		return -EINVAL;
	}
	size_t bl = strlen(base_url);
	while (bl && base_url[bl - 1] == '/')
		bl--;
	_cleanup_free_ char *url = fl_asprintf("%.*s%s", (int)bl, base_url, path);
	_cleanup_free_ char *auth = token ? fl_asprintf("Authorization: Bearer %s", token) : NULL;
	if (!url || (token && !auth))
		return -ENOMEM;
	_cleanup_fclose_ FILE *up = NULL;
	struct stat st;
	if (upload_path) {
		if (!(up = fopen(upload_path, "rbe")))
			return -errno;
		if (fstat(fileno(up), &st) < 0)
			return -errno;
		if (!S_ISREG(st.st_mode))
			return -EINVAL;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -ENOMEM;
	CURL *cu = curl_easy_init();
	if (!cu) {
		curl_global_cleanup();
		return -ENOMEM;
	}
	struct curl_slist *hdr = NULL;
	if (auth)
		hdr = curl_slist_append(hdr, auth);
	if (up)
		hdr = curl_slist_append(hdr, "Content-Type: application/x-tar");
	if (json)
		hdr = curl_slist_append(hdr, "Content-Type: application/json");
	struct sink s = {0};
	char cerr[CURL_ERROR_SIZE] = "";
	curl_easy_setopt(cu, CURLOPT_URL, url);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(cu, CURLOPT_WRITEDATA, &s);
	curl_easy_setopt(cu, CURLOPT_ERRORBUFFER, cerr);
	curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
	curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(cu, CURLOPT_PROTOCOLS_STR, "http,https");
	if (up) {
		curl_easy_setopt(cu, CURLOPT_POST, 1L);
		curl_easy_setopt(cu, CURLOPT_READDATA, up);
		curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)st.st_size);
	} else if (json) {
		curl_easy_setopt(cu, CURLOPT_POSTFIELDS, json);
		curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(json));
	} else if (strcmp(method, "GET")) {
		curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, method);
	}
	CURLcode cc = curl_easy_perform(cu);
	long status = 0;
	curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(hdr);
	curl_easy_cleanup(cu);
	curl_global_cleanup();
	if (s.err) {
		free(s.p);
		return s.err;
	}
	if (cc != CURLE_OK && status == 0) {
		fl_snprintf(ret_err, err_len, "%s", cerr[0] ? cerr : curl_easy_strerror(cc));
		free(s.p);
		return -FL_ENET;
	}
	if (!s.p && !(s.p = strdup("")))
		return -ENOMEM;
	ret->status = status;
	ret->body = s.p;
	ret->len = s.len;
	return 0;
}

int cli_http_request(const char *method, const char *base_url, const char *path,
		     const char *token, const char *upload_path, struct cli_http_resp *ret,
		     char *ret_err, size_t err_len)
{
	return request(method, base_url, path, token, upload_path, NULL, ret, ret_err, err_len);
}

int cli_http_post_json(const char *base_url, const char *path, const char *token,
		       const char *json, struct cli_http_resp *ret, char *ret_err, size_t err_len)
{
	if (!json)
		return -EINVAL;
	return request("POST", base_url, path, token, NULL, json, ret, ret_err, err_len);
}

const char *cli_http_error_text(const char *body, size_t len, char *buf, size_t buf_len)
{
	cJSON *o = NULL;
	if (fl_json_parse(body, len, 64 * 1024, 4, &o) < 0)
		return NULL;
	const char *e = NULL;
	const char *out = NULL;
	if (fl_json_get_str(o, "error", &e) == 0) {
		fl_strlcpy(buf, e, buf_len);
		out = buf;
	}
	cJSON_Delete(o);
	return out;
}

const char *cli_http_token(const char *token_arg)
{
	if (token_arg)
		return token_arg;
	const char *t = getenv("FLOTILLA_TOKEN");
	return t && *t ? t : NULL;
}

char *cli_http_escape(const char *s)
{
	char *e = curl_easy_escape(NULL, s, 0);
	char *out = e ? strdup(e) : NULL;
	curl_free(e);
	return out;
}

int cli_api_call(const char *cmd, const char *what, const char *method, const char *base_url,
		 const char *token, const char *path, const char *body, long want, bool json,
		 cJSON **ret)
{
	*ret = NULL;
	struct cli_http_resp resp = {0};
	char err[256] = "";
	const char *tok = cli_http_token(token);
	int r = body ? cli_http_post_json(base_url, path, tok, body, &resp, err, sizeof(err))
		     : cli_http_request(method, base_url, path, tok, NULL, &resp, err,
					sizeof(err));
	if (r < 0) {
		if (err[0])
			cli_fail(0, "%s %s: %s", cmd, what, err);
		else
			cli_fail(r, "%s %s", cmd, what);
		return 1;
	}
	_cleanup_free_ char *rbody = resp.body;
	if (resp.status != want) {
		char msg[512];
		const char *e = cli_http_error_text(rbody, resp.len, msg, sizeof(msg));
		cli_fail(0, "%s %s: %s (HTTP %ld)", cmd, what, e ? e : "unexpected answer",
			 resp.status);
		return 1;
	}
	if (json) {
		fputs(rbody, stdout);
		return 0;
	}
	if (fl_json_parse(rbody, resp.len, CLI_HTTP_MAX_RESPONSE, 16, ret) < 0) {
		cli_fail(0, "%s %s: the controller's answer is not JSON", cmd, what);
		return 1;
	}
	return 0;
}
