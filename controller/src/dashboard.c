/* The dashboard's HTTP side (docs/dashboard.md): embedded static files and
 * GET /api/v1/fleet. http.c routes to it; like http.c it talks to
 * libmicrohttpd directly. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>

#include "dashboard.h"

static const struct {
	const char *ext;
	const char *type;
} content_types[] = {
	{".html", "text/html; charset=utf-8"},
	{".css", "text/css; charset=utf-8"},
	{".js", "text/javascript; charset=utf-8"},
	{".svg", "image/svg+xml"},
	{".png", "image/png"},
	{".json", "application/json"},
	{".txt", "text/plain; charset=utf-8"},
};

bool ctl_dash_handles(const char *url)
{
	return url && (!strcmp(url, "/") || !strcmp(url, "/ui") || !strncmp(url, "/ui/", 4));
}

const char *ctl_dash_content_type(const char *name)
{
	const char *dot = name ? strrchr(name, '.') : NULL;
	if (!dot)
		return NULL;
	for (size_t i = 0; i < sizeof(content_types) / sizeof(content_types[0]); i++)
		if (!strcmp(dot, content_types[i].ext))
			return content_types[i].type;
	return NULL;
}

static bool name_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '.' || ch == '_' || ch == '-';
}

int ctl_dash_find(const char *url, size_t len, const struct ctl_dash_asset **ret_asset)
{
	if (!url || !ret_asset)
		return -EINVAL;
	const char *name;
	size_t n;
	if ((len == 1 && url[0] == '/') || (len == 3 && !memcmp(url, "/ui", 3)) ||
	    (len == 4 && !memcmp(url, "/ui/", 4))) {
		name = "index.html";
		n = strlen(name);
	} else if (len > 4 && !memcmp(url, "/ui/", 4)) {
		name = url + 4;
		n = len - 4;
		if (n > CTL_DASH_NAME_MAX || name[0] == '.')
			return -EINVAL;
		for (size_t i = 0; i < n; i++)
			if (!name_char(name[i]) || (name[i] == '.' && i + 1 < n && name[i + 1] == '.'))
				return -EINVAL; /* '/', '%', NUL, "..", ... */
	} else {
		return -EINVAL;
	}
	for (size_t i = 0; i < ctl_dash_n_assets; i++) {
		const struct ctl_dash_asset *a = &ctl_dash_assets[i];
		if (strlen(a->name) == n && !memcmp(a->name, name, n)) {
			*ret_asset = a;
			return 0;
		}
	}
	return -ENOENT;
}

/* True when the If-None-Match list HDR names ETAG (weak or strong) or is *. */
static bool etag_matches(const char *hdr, const char *etag)
{
	size_t el = strlen(etag);
	const char *p = hdr;
	while (p && *p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (*p == '*')
			return true;
		if (!strncmp(p, "W/", 2))
			p += 2;
		const char *end = strchr(p, ',');
		size_t tl = end ? (size_t)(end - p) : strlen(p);
		while (tl > 0 && (p[tl - 1] == ' ' || p[tl - 1] == '\t'))
			tl--;
		if (tl == el && !memcmp(p, etag, el))
			return true;
		p = end;
	}
	return false;
}

static void security_headers(struct MHD_Response *resp)
{
	MHD_add_response_header(resp, "Content-Security-Policy", CTL_DASH_CSP);
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(resp, "X-Frame-Options", "DENY");
	MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
}

/* Queue BODY (LEN bytes; freed by libmicrohttpd when OWNED) as TYPE. */
static enum MHD_Result queue(struct MHD_Connection *conn, unsigned status, const void *body,
			     size_t len, bool owned, const char *type, const char *cache,
			     const char *etag)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		len, (void *)body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (!resp) {
		if (owned)
			free((void *)body);
		return MHD_NO;
	}
	security_headers(resp);
	if (type)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, cache);
	if (etag)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
	enum MHD_Result r = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

static enum MHD_Result queue_json(struct MHD_Connection *conn, unsigned status, cJSON *o)
{
	char *s = o ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	if (!s)
		return MHD_NO;
	return queue(conn, status, s, strlen(s), true, "application/json", "no-store", NULL);
}

static enum MHD_Result queue_error(struct MHD_Connection *conn, unsigned status, const char *msg)
{
	cJSON *o = cJSON_CreateObject();
	if (!o || !cJSON_AddStringToObject(o, "error", msg)) {
		cJSON_Delete(o);
		return MHD_NO;
	}
	return queue_json(conn, status, o);
}

static bool is_get(const char *method)
{
	return !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD);
}

enum MHD_Result ctl_dash_serve(struct MHD_Connection *conn, const char *url, const char *method)
{
	if (!is_get(method))
		return queue_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
	const struct ctl_dash_asset *a = NULL;
	int r = ctl_dash_find(url, strlen(url), &a);
	if (r == -ENOENT)
		return queue_error(conn, MHD_HTTP_NOT_FOUND, "no such file");
	if (r < 0)
		return queue_error(conn, MHD_HTTP_BAD_REQUEST, "bad path");
	const char *type = ctl_dash_content_type(a->name);
	const char *inm =
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
	/* no-cache: the browser revalidates every load; the ETag makes that a 304. */
	if (inm && etag_matches(inm, a->etag))
		return queue(conn, MHD_HTTP_NOT_MODIFIED, "", 0, false, NULL, "no-cache", a->etag);
	return queue(conn, MHD_HTTP_OK, a->data, a->len, false,
		     type ? type : "application/octet-stream", "no-cache", a->etag);
}

static enum MHD_Result count_arg(void *cls, enum MHD_ValueKind kind, const char *key,
				 const char *value)
{
	(void)kind;
	(void)key;
	(void)value;
	(*(size_t *)cls)++;
	return MHD_YES;
}

enum MHD_Result ctl_dash_api_fleet(struct ctl *c, struct MHD_Connection *conn,
				   const char *method)
{
	if (!is_get(method))
		return queue_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
	size_t n_args = 0;
	MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, count_arg, &n_args);
	if (n_args)
		return queue_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
	cJSON *out = NULL;
	int r = ctl_fleet_summary(c, &out);
	if (r < 0)
		return queue_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_strerror(r));
	return queue_json(conn, MHD_HTTP_OK, out);
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

size_t ctl_http_unescape(void *cls, struct MHD_Connection *conn, char *s)
{
	(void)cls;
	(void)conn;
	char *w = s;
	for (const char *p = s; *p;) {
		int hi, lo;
		if (p[0] == '%' && (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0 &&
		    (hi | lo) != 0) {
			*w++ = (char)(hi * 16 + lo);
			p += 3;
		} else {
			*w++ = *p++; /* "%00" and malformed escapes stay as they are */
		}
	}
	*w = 0;
	return (size_t)(w - s);
}
