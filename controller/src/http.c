/* HTTP JSON API over libmicrohttpd (the only file that touches it). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "http.h"
#include "dashboard.h"
#include "registry.h"
#include "release.h"
#include "rollout.h"

#define API_PREFIX "/api/v1/"

FL_DEFINE_CLEANUP(cJSON, cJSON_Delete)
#define MAX_QUERY_ARGS 16
#define QUERY_VALUE_MAX 256

struct ctl_http {
	struct ctl *ctl;
	struct MHD_Daemon *d;
	uint16_t port;
	uint64_t max_upload;
	char *tmp_dir;
	struct ctl_token *tokens;
	size_t n_tokens;
	struct ctl_mqtt *mqtt;
	int cmd_wait_ms;
};

enum req_kind {
	REQ_PUSH,
	REQ_DEPLOY,
	REQ_REVERT,
	REQ_ROLLOUT_CREATE,
	REQ_ROLLOUT_ACTION,
	REQ_RELEASE_CREATE
};

struct req {
	enum req_kind kind;
	char device[CTL_DEVICE_ID_MAX + 1];
	struct fl_buf body; /* deploy / revert */
	int fd;
	char *tmp_path;
	uint64_t got;
	bool too_big;
	bool write_failed;
	const char *actor;
	int64_t rollout_id;  /* REQ_ROLLOUT_ACTION */
	char action[16];     /* REQ_ROLLOUT_ACTION */
};

/* ---------------------------------------------------------------- auth */

static bool secret_eq(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char d = la != lb;
	for (size_t i = 0; i < la && i < lb; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

enum ctl_role ctl_http_auth(const struct ctl_token *tokens, size_t n, const char *header,
			    const char **ret_name)
{
	static const char prefix[] = "Bearer ";
	if (!header || strncmp(header, prefix, sizeof(prefix) - 1))
		return CTL_ROLE_NONE;
	const char *t = header + sizeof(prefix) - 1;
	if (!*t || strlen(t) > CTL_HTTP_TOKEN_MAX)
		return CTL_ROLE_NONE;
	enum ctl_role role = CTL_ROLE_NONE;
	const char *name = NULL;
	for (size_t i = 0; i < n; i++) {
		/* compare against every token: no early exit */
		if (secret_eq(t, tokens[i].secret) && role == CTL_ROLE_NONE) {
			role = tokens[i].role;
			name = tokens[i].name;
		}
	}
	if (role != CTL_ROLE_NONE && ret_name)
		*ret_name = name;
	return role;
}

/* ---------------------------------------------------------------- responses */

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, char *body,
			       const char *type)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		strlen(body), body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	enum MHD_Result r = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

static enum MHD_Result respond_json(struct MHD_Connection *conn, unsigned status, cJSON *o)
{
	char *s = o ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	if (!s)
		return MHD_NO;
	size_t n = strlen(s);
	char *s2 = realloc(s, n + 2);
	if (!s2) {
		free(s);
		return MHD_NO;
	}
	s2[n] = '\n';
	s2[n + 1] = 0;
	return respond(conn, status, s2, "application/json");
}

static enum MHD_Result respond_error(struct MHD_Connection *conn, unsigned status,
				     const char *msg)
{
	cJSON *o = cJSON_CreateObject();
	if (!o || !cJSON_AddStringToObject(o, "error", msg)) {
		cJSON_Delete(o);
		return MHD_NO;
	}
	return respond_json(conn, status, o);
}

/* ---------------------------------------------------------------- queries */

struct query {
	const char *const *allowed;
	const char *keys[MAX_QUERY_ARGS];
	const char *vals[MAX_QUERY_ARGS];
	size_t n;
	const char *bad;
};

static enum MHD_Result query_iter(void *cls, enum MHD_ValueKind kind, const char *key,
				  const char *value)
{
	struct query *q = cls;
	if (q->bad)
		return MHD_NO;
	bool known = false;
	for (size_t i = 0; q->allowed && q->allowed[i]; i++)
		known |= !strcmp(q->allowed[i], key);
	for (size_t i = 0; i < q->n; i++)
		if (!strcmp(q->keys[i], key))
			known = false; /* the same parameter twice */
	if (!known || !value || strlen(value) > QUERY_VALUE_MAX || q->n >= MAX_QUERY_ARGS) {
		q->bad = key;
		return MHD_NO;
	}
	q->keys[q->n] = key;
	q->vals[q->n++] = value;
	return MHD_YES;
}

static const char *query_get(const struct query *q, const char *key)
{
	for (size_t i = 0; i < q->n; i++)
		if (!strcmp(q->keys[i], key))
			return q->vals[i];
	return NULL;
}

/* Collect the query of CONN, refusing any parameter not in ALLOWED. */
static int read_query(struct MHD_Connection *conn, const char *const *allowed, struct query *q)
{
	memset(q, 0, sizeof(*q));
	q->allowed = allowed;
	MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, query_iter, q);
	return q->bad ? -FL_ESCHEMA : 0;
}

static bool printable(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || *s == 0x7f)
			return false;
	return true;
}

static enum MHD_Result get_devices(struct ctl_http *h, struct MHD_Connection *conn)
{
	static const char *const allowed[] = {"label",	  "arch",	 "version",
					      "online",	  "limit",	 "min_ram_mb",
					      "accelerator", "backend", "install",
					      "after",	  "all",	 NULL};
	struct query q;
	if (read_query(conn, allowed, &q) < 0)
		return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown or repeated query parameter");
	struct ctl_device_filter f = {.online = -1};
	char label_key[65];
	const char *v;
	if ((v = query_get(&q, "label"))) {
		const char *eq = strchr(v, '=');
		size_t kl = eq ? (size_t)(eq - v) : 0;
		if (!eq || kl == 0 || kl >= sizeof(label_key))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "label: expected KEY=VALUE");
		memcpy(label_key, v, kl);
		label_key[kl] = 0;
		if (!fl_name_valid(label_key, 64))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "label: bad key");
		f.label_key = label_key;
		f.label_value = eq + 1;
	}
	if ((v = query_get(&q, "arch"))) {
		if (!fl_name_valid(v, 64))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "arch: bad value");
		f.arch = v;
	}
	if ((v = query_get(&q, "version"))) {
		if (!printable(v, 64))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "version: bad value");
		f.version = v;
	}
	if ((v = query_get(&q, "online"))) {
		if (!strcmp(v, "true"))
			f.online = 1;
		else if (!strcmp(v, "false"))
			f.online = 0;
		else
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "online: expected true or false");
	}
	if ((v = query_get(&q, "limit"))) {
		int64_t lim;
		if (fl_parse_i64(v, 1, CTL_STORE_LIST_MAX, &lim) < 0)
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "limit: expected 1..10000");
		f.limit = (size_t)lim;
	}
	if ((v = query_get(&q, "min_ram_mb"))) {
		if (fl_parse_i64(v, 1, 100000000, &f.min_ram_mb) < 0)
			return respond_error(conn, MHD_HTTP_BAD_REQUEST,
					     "min_ram_mb: expected 1..100000000");
	}
	static const char *const names[] = {"accelerator", "backend"};
	const char **dst[] = {&f.accelerator, &f.backend};
	for (size_t i = 0; i < 2; i++) {
		if ((v = query_get(&q, names[i]))) {
			if (!fl_name_valid(v, 64))
				return respond_error(conn, MHD_HTTP_BAD_REQUEST,
						     i ? "backend: bad value" : "accelerator: bad value");
			*dst[i] = v;
		}
	}
	if ((v = query_get(&q, "install"))) {
		bool ok = *v && strlen(v) <= 32;
		for (const char *p = v; ok && *p; p++)
			ok = (*p >= 'A' && *p <= 'Z') || *p == '_';
		if (!ok)
			return respond_error(conn, MHD_HTTP_BAD_REQUEST,
					     "install: expected an install state (e.g. FAILED, "
					     "REJECTED, TRIAL)");
		f.install_state = v;
	}
	if ((v = query_get(&q, "after"))) {
		if (!fl_name_valid(v, CTL_DEVICE_ID_MAX))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST,
					     "after: expected a device id (the \"next\" of a page)");
		f.after = v;
	}
	bool all = false;
	if ((v = query_get(&q, "all"))) {
		if (strcmp(v, "1") && strcmp(v, "true"))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "all: expected 1");
		if (f.limit || f.after)
			return respond_error(conn, MHD_HTTP_BAD_REQUEST,
					     "all: not together with limit or after");
		all = true;
	}
	/* One pass from the store query to the response text (registry.c). */
	char *out = NULL;
	size_t len = 0;
	int r = ctl_devices_page(h->ctl, &f, all, &out, &len);
	if (r < 0)
		return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_strerror(r));
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(len, out, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(out);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	enum MHD_Result mr = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return mr;
}

static bool no_query(struct MHD_Connection *conn)
{
	struct query q;
	return read_query(conn, NULL, &q) == 0;
}

/* ---------------------------------------------------------------- push */

static unsigned push_status(int r)
{
	switch (-r) {
	case EEXIST:
		return MHD_HTTP_CONFLICT;
	case FL_ETOOBIG:
		return MHD_HTTP_CONTENT_TOO_LARGE;
	case FL_EBADSIG:
	case FL_ENOSIG:
	case FL_EKEYUNKNOWN:
	case FL_EKEYEXPIRED:
	case FL_EKEYREVOKED:
	case FL_ENOTDELEGATED:
	case FL_ETHRESHOLD:
	case FL_EKEYRINGEXPIRED:
	case FL_EEXPIRED:
	case FL_EREPLAY:
	case FL_EPAYLOADTYPE:
		return MHD_HTTP_UNPROCESSABLE_CONTENT;
	case ENOSPC:
	case FL_ENOSPACE:
		return MHD_HTTP_INSUFFICIENT_STORAGE;
	case ENOMEM:
	case EIO:
	case FL_EDB:
		return MHD_HTTP_INTERNAL_SERVER_ERROR;
	default:
		return r <= -FL_EBASE ? MHD_HTTP_BAD_REQUEST : MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

static enum MHD_Result finish_push(struct ctl_http *h, struct MHD_Connection *conn,
				   struct req *rq)
{
	if (rq->too_big)
		return respond_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "body too large");
	if (rq->write_failed)
		return respond_error(conn, MHD_HTTP_INSUFFICIENT_STORAGE, "cannot spool upload");
	if (rq->got == 0)
		return respond_error(conn, MHD_HTTP_BAD_REQUEST, "empty body: expected a bundle tar");
	if (fsync(rq->fd) < 0)
		return respond_error(conn, MHD_HTTP_INSUFFICIENT_STORAGE, "cannot spool upload");
	cJSON *info = NULL;
	int r = ctl_chunks_add_bundle(h->ctl, rq->tmp_path, rq->actor, &info);
	if (r < 0) {
		char msg[160];
		fl_snprintf(msg, sizeof(msg), "bundle refused: %s", fl_strerror(r));
		return respond_error(conn, push_status(r), msg);
	}
	return respond_json(conn, r == 1 ? MHD_HTTP_CREATED : MHD_HTTP_OK, info);
}

static enum MHD_Result start_push(struct ctl_http *h, struct MHD_Connection *conn,
				  const char *actor, void **con_cls)
{
	if (!no_query(conn))
		return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
	const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_CONTENT_LENGTH);
	int64_t declared;
	if (cl && (fl_parse_i64(cl, 0, INT64_MAX, &declared) < 0 ||
		   (uint64_t)declared > h->max_upload))
		return respond_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "body too large");
	struct req *rq = calloc(1, sizeof(*rq));
	if (!rq)
		return MHD_NO;
	rq->fd = -1;
	rq->actor = actor;
	rq->tmp_path = fl_asprintf("%s/upload.XXXXXX", h->tmp_dir);
	if (!rq->tmp_path || (rq->fd = mkostemp(rq->tmp_path, O_CLOEXEC)) < 0) {
		free(rq->tmp_path);
		free(rq);
		return respond_error(conn, MHD_HTTP_INSUFFICIENT_STORAGE, "cannot spool upload");
	}
	*con_cls = rq;
	return MHD_YES;
}

/* ---------------------------------------------------------------- deploy / revert */

static enum MHD_Result start_cmd(struct MHD_Connection *conn, enum req_kind kind,
				 const char *id, size_t id_len, const char *actor, void **con_cls)
{
	if (!no_query(conn))
		return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
	char dev[CTL_DEVICE_ID_MAX + 1];
	if (id_len == 0 || id_len > CTL_DEVICE_ID_MAX)
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such device");
	memcpy(dev, id, id_len);
	dev[id_len] = 0;
	if (!fl_name_valid(dev, CTL_DEVICE_ID_MAX))
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such device");
	const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_CONTENT_LENGTH);
	int64_t declared;
	if (cl && (fl_parse_i64(cl, 0, INT64_MAX, &declared) < 0 ||
		   declared > CTL_HTTP_JSON_BODY_MAX))
		return respond_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "body too large");
	struct req *rq = calloc(1, sizeof(*rq));
	if (!rq)
		return MHD_NO;
	rq->kind = kind;
	rq->fd = -1;
	rq->actor = actor;
	memcpy(rq->device, dev, id_len + 1);
	*con_cls = rq;
	return MHD_YES;
}

static unsigned cmd_status(int r)
{
	switch (-r) {
	case ENOENT:
		return MHD_HTTP_NOT_FOUND;
	case ENOTCONN:
	case FL_EBUSY:
		return MHD_HTTP_SERVICE_UNAVAILABLE;
	case FL_ENET:
		return MHD_HTTP_BAD_GATEWAY;
	case ENOMEM:
	case FL_EDB:
		return MHD_HTTP_INTERNAL_SERVER_ERROR;
	default:
		return r <= -FL_EBASE || r == -EINVAL ? MHD_HTTP_BAD_REQUEST
						      : MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

/* Parse the body: deploy {"model","version"}, revert {"model"}. */
static int parse_cmd_body(const struct req *rq, const char **ret_model, const char **ret_version,
			  cJSON **ret_root)
{
	static const char *const dkeys[] = {"model", "version", NULL};
	static const char *const rkeys[] = {"model", NULL};
	if (rq->body.len == 0)
		return -FL_ESCHEMA;
	cJSON *root = NULL;
	int r = fl_json_parse(rq->body.p, rq->body.len, CTL_HTTP_JSON_BODY_MAX, 4, &root);
	if (r < 0)
		return r;
	const char *model = NULL, *version = NULL;
	if (!cJSON_IsObject(root))
		r = -FL_ESCHEMA;
	if (r >= 0)
		r = fl_json_check_keys(root, rq->kind == REQ_DEPLOY ? dkeys : rkeys, NULL);
	if (r >= 0)
		r = fl_json_get_str(root, "model", &model);
	if (r >= 0 && rq->kind == REQ_DEPLOY)
		r = fl_json_get_str(root, "version", &version);
	if (r >= 0 && !fl_name_valid(model, 64))
		r = -EINVAL;
	if (r >= 0 && rq->kind == REQ_DEPLOY && !ctl_version_valid(version))
		r = -EINVAL;
	if (r < 0) {
		cJSON_Delete(root);
		return r;
	}
	*ret_model = model;
	*ret_version = version;
	*ret_root = root;
	return 0;
}

static enum MHD_Result finish_cmd(struct ctl_http *h, struct MHD_Connection *conn,
				  struct req *rq)
{
	if (rq->too_big)
		return respond_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "body too large");
	if (rq->write_failed)
		return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	const char *model, *version;
	cJSON *root = NULL;
	int r = parse_cmd_body(rq, &model, &version, &root);
	if (r < 0)
		return respond_error(conn, MHD_HTTP_BAD_REQUEST,
				     rq->kind == REQ_DEPLOY
					     ? "expected {\"model\": NAME, \"version\": VERSION}"
					     : "expected {\"model\": NAME}");
	_cleanup_(cJSON_Deletep) cJSON *body = root;
	cJSON *dev = NULL;
	r = ctl_device_get(h->ctl, rq->device, &dev);
	cJSON_Delete(dev);
	if (r == -ENOENT)
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such device");
	if (r < 0)
		return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_strerror(r));
	char id[CTL_CMD_ID_SIZE];
	_cleanup_free_ char *cmd = NULL;
	if (rq->kind == REQ_DEPLOY)
		r = ctl_cmd_deploy(h->ctl, model, version, id, &cmd);
	else
		r = ctl_cmd_revert(model, id, &cmd);
	if (r == -ENOENT)
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such bundle (push it first)");
	if (r < 0)
		return respond_error(conn, cmd_status(r), fl_strerror(r));
	if (!h->mqtt)
		return respond_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
				     "no MQTT session configured ([mqtt] in the config)");
	r = ctl_mqtt_command(h->mqtt, rq->device, cmd, strlen(cmd), h->cmd_wait_ms);
	if (r < 0) {
		char msg[160];
		fl_snprintf(msg, sizeof(msg), "command not sent: %s",
			    r == -ENOTCONN ? "not connected to the broker" : fl_strerror(r));
		return respond_error(conn, cmd_status(r), msg);
	}
	const char *action = rq->kind == REQ_DEPLOY ? "device.deploy" : "device.revert";
	_cleanup_free_ char *what =
		rq->kind == REQ_DEPLOY
			? fl_asprintf("device %s model %s version %s command %s", rq->device, model,
				      version, id)
			: fl_asprintf("device %s model %s command %s", rq->device, model, id);
	int ar = what ? ctl_audit(h->ctl, rq->actor ? rq->actor : "", action, what) : -ENOMEM;
	cJSON *o = cJSON_CreateObject();
	if (!o || !cJSON_AddStringToObject(o, "id", id) ||
	    !cJSON_AddStringToObject(o, "device", rq->device) ||
	    !cJSON_AddStringToObject(o, "kind", rq->kind == REQ_DEPLOY ? "deploy" : "revert") ||
	    !cJSON_AddStringToObject(o, "model", model) ||
	    (version && !cJSON_AddStringToObject(o, "version", version)) ||
	    !cJSON_AddBoolToObject(o, "published", r == 1) ||
	    !cJSON_AddBoolToObject(o, "audited", ar >= 0)) {
		cJSON_Delete(o);
		return MHD_NO;
	}
	return respond_json(conn, r == 1 ? MHD_HTTP_OK : MHD_HTTP_ACCEPTED, o);
}

/* ---------------------------------------------------------------- rollouts */

static unsigned rollout_status(int r)
{
	switch (-r) {
	case ENOENT:
		return MHD_HTTP_NOT_FOUND;
	case FL_ESTATE:
		return MHD_HTTP_CONFLICT;
	case ENOMEM:
	case FL_EDB:
		return MHD_HTTP_INTERNAL_SERVER_ERROR;
	default:
		return r <= -FL_EBASE || r == -EINVAL ? MHD_HTTP_BAD_REQUEST
						      : MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

static enum MHD_Result start_body(struct MHD_Connection *conn, enum req_kind kind,
				  const char *actor, void **con_cls, struct req **ret)
{
	if (!no_query(conn))
		return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
	const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_CONTENT_LENGTH);
	int64_t declared;
	int64_t max = kind == REQ_RELEASE_CREATE ? CTL_RELEASE_BODY_MAX : CTL_ROLLOUT_BODY_MAX;
	if (cl && (fl_parse_i64(cl, 0, INT64_MAX, &declared) < 0 || declared > max))
		return respond_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "body too large");
	struct req *rq = calloc(1, sizeof(*rq));
	if (!rq)
		return MHD_NO;
	rq->kind = kind;
	rq->fd = -1;
	rq->actor = actor;
	*con_cls = rq;
	if (ret)
		*ret = rq;
	return MHD_YES;
}

/* URL is what follows API_PREFIX "rollouts". */
static enum MHD_Result route_rollouts(struct ctl_http *h, struct MHD_Connection *conn,
				      const char *url, bool get, bool post, enum ctl_role role,
				      const char *actor, void **con_cls)
{
	if (!*url) {
		if (post) {
			if (role != CTL_ROLE_OPERATOR)
				return respond_error(conn, MHD_HTTP_FORBIDDEN,
						     "this token may only read");
			return start_body(conn, REQ_ROLLOUT_CREATE, actor, con_cls, NULL);
		}
		if (!get)
			return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
		if (!no_query(conn))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
		cJSON *out = NULL;
		int r = ctl_rollout_list(h->ctl, &out);
		if (r < 0)
			return respond_error(conn, rollout_status(r), fl_strerror(r));
		return respond_json(conn, MHD_HTTP_OK, out);
	}
	if (*url != '/')
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such endpoint");
	url++;
	char idbuf[24];
	const char *slash = strchr(url, '/');
	size_t idlen = slash ? (size_t)(slash - url) : strlen(url);
	int64_t id;
	if (idlen == 0 || idlen >= sizeof(idbuf))
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such rollout");
	memcpy(idbuf, url, idlen);
	idbuf[idlen] = 0;
	if (fl_parse_i64(idbuf, 1, INT64_MAX, &id) < 0)
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such rollout");
	if (!slash) {
		if (!get)
			return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
		if (!no_query(conn))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
		cJSON *out = NULL;
		int r = ctl_rollout_get(h->ctl, id, &out);
		if (r < 0)
			return respond_error(conn, rollout_status(r),
					     r == -ENOENT ? "no such rollout" : fl_strerror(r));
		return respond_json(conn, MHD_HTTP_OK, out);
	}
	const char *action = slash + 1;
	if (strcmp(action, "pause") && strcmp(action, "resume") && strcmp(action, "abort") &&
	    strcmp(action, "rollback"))
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such endpoint");
	if (!post)
		return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
	if (role != CTL_ROLE_OPERATOR)
		return respond_error(conn, MHD_HTTP_FORBIDDEN, "this token may only read");
	struct req *rq = NULL;
	enum MHD_Result mr = start_body(conn, REQ_ROLLOUT_ACTION, actor, con_cls, &rq);
	if (rq) {
		rq->rollout_id = id;
		fl_snprintf(rq->action, sizeof(rq->action), "%s", action);
	}
	return mr;
}

static enum MHD_Result finish_rollout(struct ctl_http *h, struct MHD_Connection *conn,
				      struct req *rq)
{
	if (rq->too_big)
		return respond_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "body too large");
	if (rq->write_failed)
		return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	cJSON *out = NULL;
	int r;
	if (rq->kind == REQ_ROLLOUT_CREATE) {
		char err[256] = "";
		r = ctl_rollout_create_ex(h->ctl, rq->body.p ? rq->body.p : "", rq->body.len,
					  rq->actor ? rq->actor : "", fl_now_s(), &out, err,
					  sizeof(err));
		if (r == -ENOENT)
			return respond_error(conn, MHD_HTTP_NOT_FOUND,
					     err[0] ? err : "no such bundle (push it first)");
		if (r < 0) {
			char msg[400];
			fl_snprintf(msg, sizeof(msg), "bad rollout: %s (see docs/api.md)",
				    err[0] ? err : fl_strerror(r));
			return respond_error(conn, rollout_status(r), msg);
		}
		return respond_json(conn, MHD_HTTP_CREATED, out);
	}
	/* An action takes no body, or an empty JSON object. */
	if (rq->body.len) {
		static const char *const none[] = {NULL};
		cJSON *b = NULL;
		r = fl_json_parse(rq->body.p, rq->body.len, CTL_HTTP_JSON_BODY_MAX, 2, &b);
		if (r >= 0 && (!cJSON_IsObject(b) || fl_json_check_keys(b, none, NULL) < 0))
			r = -FL_ESCHEMA;
		cJSON_Delete(b);
		if (r < 0)
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "expected no body or {}");
	}
	r = ctl_rollout_action(h->ctl, rq->rollout_id, rq->action, rq->actor ? rq->actor : "",
			       fl_now_s(), &out);
	if (r < 0)
		return respond_error(conn, rollout_status(r),
				     r == -ENOENT	  ? "no such rollout"
				     : r == -FL_ESTATE ? "not allowed in the rollout's current state"
						       : fl_strerror(r));
	return respond_json(conn, MHD_HTTP_OK, out);
}

/* ---------------------------------------------------------------- releases */

/* URL is what follows API_PREFIX "releases". */
static enum MHD_Result route_releases(struct ctl_http *h, struct MHD_Connection *conn,
				      const char *url, bool get, bool post, enum ctl_role role,
				      const char *actor, void **con_cls)
{
	if (!*url) {
		if (post) {
			if (role != CTL_ROLE_OPERATOR)
				return respond_error(conn, MHD_HTTP_FORBIDDEN,
						     "this token may only read");
			return start_body(conn, REQ_RELEASE_CREATE, actor, con_cls, NULL);
		}
		if (!get)
			return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
		static const char *const allowed[] = {"model", NULL};
		struct query q;
		if (read_query(conn, allowed, &q) < 0)
			return respond_error(conn, MHD_HTTP_BAD_REQUEST,
					     "unknown or repeated query parameter");
		const char *model = query_get(&q, "model");
		if (model && !fl_name_valid(model, 64))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "model: bad value");
		cJSON *out = NULL;
		int r = ctl_release_list(h->ctl, model, &out);
		if (r < 0)
			return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_strerror(r));
		return respond_json(conn, MHD_HTTP_OK, out);
	}
	if (*url != '/' || !url[1] || strchr(url + 1, '/'))
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such release");
	if (!get)
		return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
	if (!no_query(conn))
		return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
	cJSON *out = NULL;
	int r = ctl_release_get(h->ctl, url + 1, &out);
	if (r == -ENOENT || r == -EINVAL)
		return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such release");
	if (r < 0)
		return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_strerror(r));
	return respond_json(conn, MHD_HTTP_OK, out);
}

static enum MHD_Result finish_release(struct ctl_http *h, struct MHD_Connection *conn,
				      struct req *rq)
{
	if (rq->too_big)
		return respond_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "body too large");
	if (rq->write_failed)
		return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	cJSON *out = NULL;
	char err[256] = "";
	int r = ctl_release_create(h->ctl, rq->body.p ? rq->body.p : "", rq->body.len,
				   rq->actor ? rq->actor : "", fl_now_s(), &out, err, sizeof(err));
	if (r < 0) {
		char msg[400];
		unsigned st = r == -ENOENT   ? MHD_HTTP_NOT_FOUND
			      : r == -EEXIST ? MHD_HTTP_CONFLICT
					     : rollout_status(r);
		fl_snprintf(msg, sizeof(msg), "bad release: %s (see docs/api.md)",
			    err[0] ? err : fl_strerror(r));
		return respond_error(conn, st, msg);
	}
	return respond_json(conn, MHD_HTTP_CREATED, out);
}

/* ---------------------------------------------------------------- routing */

static enum MHD_Result route(struct ctl_http *h, struct MHD_Connection *conn, const char *url,
			     const char *method, void **con_cls)
{
	bool get = !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD);
	bool post = !strcmp(method, MHD_HTTP_METHOD_POST);

	if (!strcmp(url, "/healthz")) {
		if (!get)
			return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
		return respond(conn, MHD_HTTP_OK, strdup("ok\n"), "text/plain");
	}
	if (ctl_dash_handles(url)) /* the dashboard's files: no token (docs/dashboard.md) */
		return ctl_dash_serve(conn, url, method);
	const char *actor = NULL;
	enum ctl_role role = ctl_http_auth(
		h->tokens, h->n_tokens,
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
		&actor);
	if (role == CTL_ROLE_NONE)
		return respond_error(conn, MHD_HTTP_UNAUTHORIZED, "missing or unknown bearer token");

	if (!strcmp(url, API_PREFIX "fleet"))
		return ctl_dash_api_fleet(h->ctl, conn, method);
	if (!strcmp(url, "/metrics")) {
		if (!get)
			return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
		if (!no_query(conn))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
		char *text = NULL, *more = NULL;
		int r = ctl_metrics_text(h->ctl, &text);
		if (r >= 0 && h->mqtt && (r = ctl_mqtt_metrics_text(h->mqtt, &more)) >= 0) {
			char *all = fl_asprintf("%s%s", text, more);
			free(text);
			free(more);
			text = all;
			r = all ? 0 : -ENOMEM;
		}
		char *ro = NULL;
		if (r >= 0 && (r = ctl_rollout_metrics_text(h->ctl, &ro)) >= 0) {
			char *all = fl_asprintf("%s%s", text, ro);
			free(text);
			free(ro);
			text = all;
			r = all ? 0 : -ENOMEM;
		}
		if (r < 0) {
			free(text);
			return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_strerror(r));
		}
		return respond(conn, MHD_HTTP_OK, text, "text/plain; version=0.0.4");
	}
	if (!strcmp(url, API_PREFIX "bundles")) {
		if (post) {
			if (role != CTL_ROLE_OPERATOR)
				return respond_error(conn, MHD_HTTP_FORBIDDEN,
						     "this token may only read");
			return start_push(h, conn, actor, con_cls);
		}
		if (!get)
			return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
		if (!no_query(conn))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
		cJSON *out = NULL;
		int r = ctl_bundles_list(h->ctl, &out);
		if (r < 0)
			return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_strerror(r));
		return respond_json(conn, MHD_HTTP_OK, out);
	}
	if (!strcmp(url, API_PREFIX "devices")) {
		if (!get)
			return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
		return get_devices(h, conn);
	}
	if (!strncmp(url, API_PREFIX "rollouts", sizeof(API_PREFIX "rollouts") - 1))
		return route_rollouts(h, conn, url + sizeof(API_PREFIX "rollouts") - 1, get, post,
				      role, actor, con_cls);
	if (!strncmp(url, API_PREFIX "releases", sizeof(API_PREFIX "releases") - 1))
		return route_releases(h, conn, url + sizeof(API_PREFIX "releases") - 1, get, post,
				      role, actor, con_cls);
	static const char dev_prefix[] = API_PREFIX "devices/";
	if (!strncmp(url, dev_prefix, sizeof(dev_prefix) - 1) &&
	    strchr(url + sizeof(dev_prefix) - 1, '/')) {
		const char *id = url + sizeof(dev_prefix) - 1;
		const char *slash = strchr(id, '/');
		enum req_kind kind;
		if (!strcmp(slash, "/deploy"))
			kind = REQ_DEPLOY;
		else if (!strcmp(slash, "/revert"))
			kind = REQ_REVERT;
		else
			return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such endpoint");
		if (!post)
			return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
		if (role != CTL_ROLE_OPERATOR)
			return respond_error(conn, MHD_HTTP_FORBIDDEN, "this token may only read");
		return start_cmd(conn, kind, id, (size_t)(slash - id), actor, con_cls);
	}
	if (!strncmp(url, dev_prefix, sizeof(dev_prefix) - 1)) {
		if (!get)
			return respond_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
		if (!no_query(conn))
			return respond_error(conn, MHD_HTTP_BAD_REQUEST, "unknown query parameter");
		const char *id = url + sizeof(dev_prefix) - 1;
		cJSON *out = NULL;
		int r = ctl_device_get(h->ctl, id, &out);
		if (r == -ENOENT)
			return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such device");
		if (r < 0)
			return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, fl_strerror(r));
		return respond_json(conn, MHD_HTTP_OK, out);
	}
	return respond_error(conn, MHD_HTTP_NOT_FOUND, "no such endpoint");
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
			       const char *method, const char *version, const char *upload_data,
			       size_t *upload_data_size, void **con_cls)
{
	struct ctl_http *h = cls;
	struct req *rq = *con_cls;
	if (!rq) {
		/* First call: headers only. Every answer but a push is given now;
		 * a push is authorized and size-checked before any byte is read. */
		return route(h, conn, url, method, con_cls);
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (rq->too_big || rq->write_failed)
			return MHD_YES; /* drain */
		if (rq->kind != REQ_PUSH) {
			size_t max = rq->kind == REQ_ROLLOUT_CREATE   ? CTL_ROLLOUT_BODY_MAX
				     : rq->kind == REQ_RELEASE_CREATE ? CTL_RELEASE_BODY_MAX
								      : CTL_HTTP_JSON_BODY_MAX;
			if (rq->body.len + n > max)
				rq->too_big = true;
			else if (fl_buf_append(&rq->body, upload_data, n) < 0)
				rq->write_failed = true;
			return MHD_YES;
		}
		if (rq->got + n > h->max_upload) {
			rq->too_big = true;
			return MHD_YES;
		}
		if (fl_write_all(rq->fd, upload_data, n) < 0)
			rq->write_failed = true;
		rq->got += n;
		return MHD_YES;
	}
	if (rq->kind == REQ_ROLLOUT_CREATE || rq->kind == REQ_ROLLOUT_ACTION)
		return finish_rollout(h, conn, rq);
	if (rq->kind == REQ_RELEASE_CREATE)
		return finish_release(h, conn, rq);
	if (rq->kind != REQ_PUSH)
		return finish_cmd(h, conn, rq);
	return finish_push(h, conn, rq);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
		      enum MHD_RequestTerminationCode toe)
{
	struct req *rq = *con_cls;
	if (!rq)
		return;
	if (rq->fd >= 0)
		close(rq->fd);
	if (rq->tmp_path) {
		unlink(rq->tmp_path);
		free(rq->tmp_path);
	}
	fl_buf_free(&rq->body);
	free(rq);
	*con_cls = NULL;
}

/* ---------------------------------------------------------------- start/stop */

static void free_http(struct ctl_http *h)
{
	for (size_t i = 0; i < h->n_tokens; i++) {
		free((char *)h->tokens[i].name);
		free((char *)h->tokens[i].secret);
	}
	free(h->tokens);
	free(h->tmp_dir);
	free(h);
}

int ctl_http_start(struct ctl *c, const struct ctl_http_opts *o, struct ctl_http **ret)
{
	if (!c || !o || !o->tmp_dir || o->n_tokens > CTL_HTTP_MAX_TOKENS || !ret)
		return -EINVAL;
	struct ctl_http *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->ctl = c;
	h->mqtt = o->mqtt;
	h->cmd_wait_ms = o->cmd_wait_ms > 0 ? o->cmd_wait_ms : 5000;
	h->max_upload = o->max_upload_bytes ? o->max_upload_bytes : CTL_HTTP_DEFAULT_UPLOAD;
	h->tmp_dir = strdup(o->tmp_dir);
	h->tokens = calloc(o->n_tokens ? o->n_tokens : 1, sizeof(*h->tokens));
	if (!h->tmp_dir || !h->tokens) {
		free_http(h);
		return -ENOMEM;
	}
	for (size_t i = 0; i < o->n_tokens; i++) {
		const struct ctl_token *t = &o->tokens[i];
		if (!t->secret || !*t->secret || strlen(t->secret) > CTL_HTTP_TOKEN_MAX ||
		    t->role == CTL_ROLE_NONE) {
			free_http(h);
			return -EINVAL;
		}
		h->tokens[i].role = t->role;
		h->tokens[i].secret = strdup(t->secret);
		h->tokens[i].name = strdup(t->name ? t->name : "token");
		h->n_tokens = i + 1;
		if (!h->tokens[i].secret || !h->tokens[i].name) {
			free_http(h);
			return -ENOMEM;
		}
	}
	const char *addr = o->address ? o->address : "127.0.0.1";
	struct sockaddr_in in4 = {.sin_family = AF_INET, .sin_port = htons(o->port)};
	struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(o->port)};
	const struct sockaddr *sa;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION;
	if (inet_pton(AF_INET, addr, &in4.sin_addr) == 1) {
		sa = (const struct sockaddr *)&in4;
	} else if (inet_pton(AF_INET6, addr, &in6.sin6_addr) == 1) {
		sa = (const struct sockaddr *)&in6;
		flags |= MHD_USE_IPv6;
	} else {
		free_http(h);
		return -EINVAL;
	}
	h->d = MHD_start_daemon(flags, o->port, NULL, NULL, handler, h, MHD_OPTION_SOCK_ADDR, sa,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)CTL_HTTP_MAX_CONNECTIONS,
				MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_NOTIFY_COMPLETED,
				completed, h, MHD_OPTION_UNESCAPE_CALLBACK, ctl_http_unescape, NULL,
				MHD_OPTION_END);
	if (!h->d) {
		int e = errno;
		free_http(h);
		return e == EADDRINUSE ? -EADDRINUSE : -FL_ENET;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
	h->port = di ? di->port : o->port;
	*ret = h;
	return 0;
}

uint16_t ctl_http_port(const struct ctl_http *h)
{
	return h->port;
}

void ctl_http_stop(struct ctl_http *h)
{
	if (!h)
		return;
	MHD_stop_daemon(h->d);
	free_http(h);
}
