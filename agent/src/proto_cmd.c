/* Commands (docs/protocol.md "cmd"): parsing and validation, the duplicate
 * window, the deploy decision and the refusal rate limit. */
#include <errno.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "proto.h"
#include <flotilla/error.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/manifest.h>
#include <flotilla/util.h>

int proto_cmd_parse(const void *payload, size_t len, struct proto_cmd *ret)
{
	if (!ret || !payload)
		return -EINVAL;
	cJSON *root = NULL;
	int r = fl_json_parse(payload, len, PROTO_CMD_MAX, 4, &root);
	static const char *const keys[] = {"v", "id", "kind", "envelope", "model", NULL};
	const char *id = NULL, *kind = NULL;
	int64_t v = 0;
	if (r == 0 && !cJSON_IsObject(root))
		r = -FL_ESCHEMA;
	if (r == 0)
		r = fl_json_check_keys(root, keys, NULL);
	if (r == 0)
		r = fl_json_get_int(root, "v", 0, 1000, &v);
	if (r == 0 && v != 1)
		r = -FL_EUNSUPPORTED;
	if (r == 0)
		r = fl_json_get_str(root, "id", &id);
	if (r == 0)
		r = fl_json_get_str(root, "kind", &kind);
	if (r == 0 && (!id[0] || strlen(id) > PROTO_CMD_ID_MAX))
		r = -FL_ESCHEMA;
	if (r < 0) {
		cJSON_Delete(root);
		return r;
	}
	struct proto_cmd c = {.root = root, .id = id, .kind_name = kind};
	const char *s = NULL;
	if (!strcmp(kind, "deploy") || !strcmp(kind, "keyring")) {
		c.kind = kind[0] == 'd' ? PROTO_CMD_DEPLOY : PROTO_CMD_KEYRING;
		if (fl_json_get_str(root, "envelope", &s) == 0)
			c.envelope = s;
		else
			c.arg_err = -FL_ESCHEMA;
	} else if (!strcmp(kind, "revert")) {
		c.kind = PROTO_CMD_REVERT;
		if (fl_json_get_str(root, "model", &s) == 0 && fl_name_valid(s, PROTO_MODEL_NAME_MAX))
			c.model = s;
		else
			c.arg_err = -FL_ESCHEMA;
	} else if (!strcmp(kind, "ping")) {
		c.kind = PROTO_CMD_PING;
	} else {
		c.kind = PROTO_CMD_UNKNOWN;
	}
	*ret = c;
	return 0;
}

void proto_cmd_free(struct proto_cmd *c)
{
	if (!c)
		return;
	cJSON_Delete(c->root);
	memset(c, 0, sizeof(*c));
}

static int id_hash(const char *id, uint8_t out[16])
{
	if (!id || !id[0] || strlen(id) > PROTO_CMD_ID_MAX)
		return -EINVAL;
	uint8_t h[FL_SHA256_LEN];
	fl_sha256(id, strlen(id), h);
	memcpy(out, h, 16);
	return 0;
}

int proto_cmd_ids_has(const struct proto_cmd_ids *w, const char *id)
{
	uint8_t h[16];
	if (!w)
		return -EINVAL;
	int r = id_hash(id, h);
	if (r < 0)
		return r;
	for (unsigned i = 0; i < w->n && i < PROTO_CMD_IDS; i++)
		if (!memcmp(w->h[i], h, 16))
			return 1;
	return 0;
}

int proto_cmd_ids_add(struct proto_cmd_ids *w, const char *id)
{
	uint8_t h[16];
	if (!w)
		return -EINVAL;
	int r = id_hash(id, h);
	if (r < 0)
		return r;
	unsigned at = w->next % PROTO_CMD_IDS;
	memcpy(w->h[at], h, 16);
	w->next = (at + 1) % PROTO_CMD_IDS;
	if (w->n < PROTO_CMD_IDS)
		w->n++;
	return 0;
}

int proto_cmd_ids_seen(struct proto_cmd_ids *w, const char *id)
{
	int r = proto_cmd_ids_has(w, id);
	if (r != 0)
		return r;
	return proto_cmd_ids_add(w, id);
}

int proto_deploy_decide(const struct ota_manifest *m, const struct proto_deploy_facts *f)
{
	if (!m || !f || !m->name || !m->version)
		return -EINVAL;
	/* The anti-rollback floor: never below what this model has committed. */
	if (m->sequence < f->highest_sequence)
		return PROTO_DEPLOY_REPLAY;
	if (f->fetching_model && !strcmp(f->fetching_model, m->name))
		return f->fetching_same ? PROTO_DEPLOY_ALREADY_FETCHING : PROTO_DEPLOY_SUPERSEDE;
	if (f->fetching_model)
		return PROTO_DEPLOY_BUSY;
	if (f->install_pending)
		return PROTO_DEPLOY_PENDING;
	if (f->current_ready && f->current_version && f->current_sequence == m->sequence &&
	    !strcmp(f->current_version, m->version))
		return PROTO_DEPLOY_ALREADY_CURRENT;
	return PROTO_DEPLOY_START;
}

const char *proto_deploy_refusal(int decision)
{
	switch (decision) {
	case PROTO_DEPLOY_REPLAY: return "deploy refused: older than the installed sequence";
	case PROTO_DEPLOY_BUSY: return "deploy refused: another model is being fetched";
	case PROTO_DEPLOY_PENDING:
		return "deploy refused: another install of this model is in progress";
	default: return NULL;
	}
}

int proto_deploy_err(int decision)
{
	switch (decision) {
	case PROTO_DEPLOY_REPLAY: return -FL_EREPLAY;
	case PROTO_DEPLOY_BUSY: return -FL_EBUSY;
	case PROTO_DEPLOY_PENDING: return -FL_ESTATE;
	default: return 0;
	}
}

bool proto_ratelimit_take(struct proto_ratelimit *rl, int64_t now_ms)
{
	if (!rl)
		return false;
	if (now_ms - rl->window_ms > 60000) {
		rl->window_ms = now_ms;
		rl->count = 0;
	}
	return rl->count++ < PROTO_REFUSE_EVENTS;
}
