/* The web dashboard (docs/dashboard.md): static files from controller/web/,
 * embedded at build time as C arrays (controller/web/embed.cmake), served at
 * "/" and "/ui/..." without a token (they hold no fleet data), and the
 * read-only fleet summary GET /api/v1/fleet that the page reads with the
 * user's token. dashboard.c is the dashboard's HTTP glue (libmicrohttpd);
 * api_fleet.c computes the summary. */
#ifndef FLOTILLA_CTL_DASHBOARD_H
#define FLOTILLA_CTL_DASHBOARD_H

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

#include "ctl.h"

/* One embedded file. */
struct ctl_dash_asset {
	const char *name;          /* e.g. "index.html" */
	const unsigned char *data; /* LEN bytes (plus a NUL not counted) */
	size_t len;
	const char *etag;          /* "\"<first 32 hex of its SHA-256>\"" */
};

/* The embedded files, generated (build dir: controller/dashboard_assets.c). */
extern const struct ctl_dash_asset ctl_dash_assets[];
extern const size_t ctl_dash_n_assets;

#define CTL_DASH_NAME_MAX 64
/* Content-Security-Policy of every dashboard answer: nothing but this origin. */
#define CTL_DASH_CSP                                                                         \
	"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "          \
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "       \
	"frame-ancestors 'none'"

/* True when URL is the dashboard's: "/", "/ui" or "/ui/...". The router
 * sends it to ctl_dash_serve() before looking for a token. */
bool ctl_dash_handles(const char *url);

/* Resolve the path URL (LEN bytes, not necessarily NUL-terminated) to an
 * embedded file: "/", "/ui" and "/ui/" are index.html, "/ui/NAME" is NAME.
 * NAME is 1..CTL_DASH_NAME_MAX of [A-Za-z0-9._-], not starting with '.':
 * anything else ("..", '/', '%', a NUL, another prefix) is -EINVAL; a
 * well-formed name that is not embedded is -ENOENT. *RET_ASSET is static. */
int ctl_dash_find(const char *url, size_t len, const struct ctl_dash_asset **ret_asset);

/* Content-Type for NAME from its extension (html, css, js, svg, png, json,
 * txt); NULL for any other. */
const char *ctl_dash_content_type(const char *name);

/* Answer a dashboard request URL with METHOD on CONN: GET/HEAD an embedded
 * file (Content-Type, ETag + Cache-Control: no-cache, 304 on a matching
 * If-None-Match), 400 for a malformed path, 404 for an unknown file, 405 for
 * any other method. Every answer carries CTL_DASH_CSP, X-Content-Type-Options:
 * nosniff, X-Frame-Options: DENY and Referrer-Policy: no-referrer. */
enum MHD_Result ctl_dash_serve(struct MHD_Connection *conn, const char *url, const char *method);

/* GET /api/v1/fleet for a caller already authorized to read: the JSON of
 * ctl_fleet_summary(); 405 other methods, 400 any query parameter. */
enum MHD_Result ctl_dash_api_fleet(struct ctl *c, struct MHD_Connection *conn,
				   const char *method);

/* The fleet summary (docs/dashboard.md "GET /api/v1/fleet"): device counts,
 * per model and version the devices running it and the outcome of the
 * installs of it the devices report, and the health of every device that is
 * not "ok" by its installs. One consistent read under the controller's lock
 * (one registry scan per model). RET (caller frees with cJSON_Delete()).
 * Errors: -FL_EDB, -ENOMEM. */
int ctl_fleet_summary(struct ctl *c, cJSON **ret);

/* libmicrohttpd's MHD_OPTION_UNESCAPE_CALLBACK: decode %XX in place like
 * the default, but leave "%00" as it is, so that a NUL never cuts a path or
 * a query value short (the handler gets C strings). Returns the new length. */
size_t ctl_http_unescape(void *cls, struct MHD_Connection *conn, char *s);

#endif
