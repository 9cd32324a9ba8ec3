/* The retained state document (docs/protocol.md "state") from plain facts:
 * the agent fills it from its journal and slots (session.c), the simulator
 * from its simulated slots (tests/sim). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "proto.h"
#include <flotilla/error.h>
#include <flotilla/util.h>

struct proto_state {
	cJSON *root, *models;
};

int proto_state_new(const struct proto_device *d, int64_t now_s, struct proto_state **ret)
{
	if (!d || !ret || !d->device || !fl_name_valid(d->device, 64) || !d->agent || !d->arch ||
	    (d->labels && !cJSON_IsObject(d->labels)))
		return -EINVAL;
	struct proto_state *s = calloc(1, sizeof(*s));
	cJSON *root = s ? cJSON_CreateObject() : NULL;
	if (!root) {
		free(s);
		return -ENOMEM;
	}
	s->root = root;
	char ts[21];
	fl_time_format(now_s, ts);
	bool ok = cJSON_AddNumberToObject(root, "v", 1) &&
		  cJSON_AddStringToObject(root, "device", d->device) &&
		  cJSON_AddBoolToObject(root, "online", true) &&
		  cJSON_AddStringToObject(root, "ts", ts) &&
		  cJSON_AddStringToObject(root, "agent", d->agent);
	cJSON *hw = ok ? cJSON_AddObjectToObject(root, "hw") : NULL;
	ok = hw && cJSON_AddStringToObject(hw, "arch", d->arch) &&
	     cJSON_AddNumberToObject(hw, "ram_mb", (double)d->ram_mb);
	cJSON *acc = ok ? cJSON_AddArrayToObject(hw, "accelerators") : NULL;
	ok = acc != NULL;
	if (ok && d->accelerators && d->accelerators[0]) {
		char *buf = strdup(d->accelerators);
		char *save = NULL;
		ok = buf != NULL;
		for (char *t = buf ? strtok_r(buf, ",", &save) : NULL; t;
		     t = strtok_r(NULL, ",", &save))
			ok = ok && cJSON_AddItemToArray(acc, cJSON_CreateString(t));
		free(buf);
	}
	cJSON *be = ok ? cJSON_AddArrayToObject(hw, "backends") : NULL;
	ok = be != NULL;
	for (size_t i = 0; ok && d->backends && d->backends[i]; i++)
		ok = cJSON_AddItemToArray(be, cJSON_CreateString(d->backends[i]));
	ok = ok && cJSON_AddItemToObject(root, "labels",
					 d->labels ? cJSON_Duplicate(d->labels, true)
						   : cJSON_CreateObject());
	s->models = ok ? cJSON_AddObjectToObject(root, "models") : NULL;
	if (!s->models) {
		proto_state_free(s);
		return -ENOMEM;
	}
	*ret = s;
	return 0;
}

static bool slot_status_valid(const char *st)
{
	return st && (!strcmp(st, "ready") || !strcmp(st, "staging") || !strcmp(st, "empty"));
}

int proto_state_add_model(struct proto_state *s, const struct proto_model *m)
{
	if (!s || !m || !m->name || !fl_name_valid(m->name, PROTO_MODEL_NAME_MAX) ||
	    (m->current && m->current != 'a' && m->current != 'b') ||
	    !slot_status_valid(m->slot[0].status) || !slot_status_valid(m->slot[1].status) ||
	    (m->install && (!m->install->version || !m->install->state)) ||
	    cJSON_GetObjectItemCaseSensitive(s->models, m->name))
		return -EINVAL;
	cJSON *o = cJSON_CreateObject();
	char cs[2] = {m->current, 0};
	bool ok = o && (m->current ? cJSON_AddStringToObject(o, "current", cs) != NULL
				   : cJSON_AddNullToObject(o, "current") != NULL);
	cJSON *slots = ok ? cJSON_AddObjectToObject(o, "slots") : NULL;
	ok = slots != NULL;
	for (int i = 0; ok && i < 2; i++) {
		const struct proto_slot *sl = &m->slot[i];
		char name[2] = {(char)('a' + i), 0};
		cJSON *so = cJSON_AddObjectToObject(slots, name);
		ok = so && cJSON_AddStringToObject(so, "status", sl->status);
		if (ok && sl->version && sl->version[0])
			ok = cJSON_AddStringToObject(so, "version", sl->version) != NULL;
		ok = ok && cJSON_AddNumberToObject(so, "sequence", (double)sl->sequence);
	}
	const struct proto_install *in = m->install;
	if (ok && in) {
		cJSON *io = cJSON_AddObjectToObject(o, "install");
		ok = io && cJSON_AddStringToObject(io, "version", in->version) &&
		     cJSON_AddStringToObject(io, "state", in->state) &&
		     cJSON_AddStringToObject(io, "error", in->error ? in->error : "");
		if (ok && in->progress)
			ok = cJSON_AddNumberToObject(io, "bytes_done", (double)in->bytes_done) &&
			     cJSON_AddNumberToObject(io, "bytes_total", (double)in->bytes_total) &&
			     cJSON_AddNumberToObject(io, "chunks_done", (double)in->chunks_done) &&
			     cJSON_AddNumberToObject(io, "chunks_total", (double)in->chunks_total);
	}
	if (!ok) {
		cJSON_Delete(o);
		return -ENOMEM;
	}
	cJSON_AddItemToObject(s->models, m->name, o);
	return 0;
}

int proto_state_render(const struct proto_state *s, char **ret, size_t *ret_len)
{
	if (!s || !ret || !ret_len)
		return -EINVAL;
	char *txt = cJSON_PrintUnformatted(s->root);
	if (!txt)
		return -ENOMEM;
	size_t n = strlen(txt);
	if (n > PROTO_STATE_MAX) {
		free(txt);
		return -FL_ETOOBIG;
	}
	*ret = txt;
	*ret_len = n;
	return 0;
}

void proto_state_free(struct proto_state *s)
{
	if (!s)
		return;
	cJSON_Delete(s->root);
	free(s);
}

int proto_state_offline(const char *device, char *buf, size_t size)
{
	if (!device || !fl_name_valid(device, 64) || (!buf && size))
		return -EINVAL;
	int n = snprintf(buf, size, "{\"v\":1,\"device\":\"%s\",\"online\":false}", device);
	if (n < 0 || (size_t)n >= size)
		return -FL_ETOOBIG;
	return n;
}
