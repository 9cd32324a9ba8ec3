/* The controller's HTTP JSON API (libmicrohttpd), docs/api.md. */
#ifndef FLOTILLA_CTL_HTTP_H
#define FLOTILLA_CTL_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "ctl.h"
#include "ctl_mqtt.h"

#define CTL_HTTP_MAX_TOKENS 64
#define CTL_HTTP_TOKEN_MAX 256
#define CTL_HTTP_MAX_CONNECTIONS 64
#define CTL_HTTP_DEFAULT_UPLOAD (4ull * 1024 * 1024 * 1024)
#define CTL_HTTP_JSON_BODY_MAX 4096 /* deploy / revert request bodies */

enum ctl_role {
	CTL_ROLE_NONE = 0,
	CTL_ROLE_READ = 1,
	CTL_ROLE_OPERATOR = 2, /* read + write */
};

struct ctl_token {
	const char *name;   /* who: recorded in the audit log */
	const char *secret; /* the bearer token */
	enum ctl_role role;
};

struct ctl_http_opts {
	const char *address;          /* numeric IPv4 or IPv6; NULL: 127.0.0.1 */
	uint16_t port;                /* 0: any free port (see ctl_http_port) */
	const struct ctl_token *tokens;
	size_t n_tokens;
	uint64_t max_upload_bytes;    /* 0: CTL_HTTP_DEFAULT_UPLOAD */
	const char *tmp_dir;          /* where uploads are spooled (required) */
	struct ctl_mqtt *mqtt;        /* commands go out through it; NULL: 503 */
	int cmd_wait_ms;              /* how long deploy/revert wait for PUBACK; 0: 5000 */
};

struct ctl_http;

/* Start serving C (which must outlive the server) on its own threads (one
 * per connection, at most CTL_HTTP_MAX_CONNECTIONS). Tokens are copied.
 * Errors: -EINVAL (bad address, too many tokens), -EADDRINUSE / -FL_ENET
 * (cannot listen), -ENOMEM. Caller stops with ctl_http_stop(). */
int ctl_http_start(struct ctl *c, const struct ctl_http_opts *o, struct ctl_http **ret);
/* The port actually bound. */
uint16_t ctl_http_port(const struct ctl_http *h);
/* Stop serving (waits for the connection threads) and free H (NULL ok). */
void ctl_http_stop(struct ctl_http *h);

/* The role a bearer token string grants under TOKENS (constant-time compare);
 * *RET_NAME gets the token's name. */
enum ctl_role ctl_http_auth(const struct ctl_token *tokens, size_t n, const char *header,
			    const char **ret_name);

#endif
