/* cmd payloads for devices (docs/protocol.md "cmd"). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "ctl_internal.h"

bool ctl_version_valid(const char *s)
{
	if (!s)
		return false;
	size_t n = strlen(s);
	if (n == 0 || n > CTL_VERSION_MAX)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	return true;
}

static int new_id(char ret_id[CTL_CMD_ID_SIZE])
{
	uint8_t rnd[16];
	size_t got = 0;
	while (got < sizeof(rnd)) {
		ssize_t n = getrandom(rnd + got, sizeof(rnd) - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		got += (size_t)n;
	}
	ret_id[0] = 'c';
	ret_id[1] = '-';
	fl_hex_encode(rnd, sizeof(rnd), ret_id + 2);
	ret_id[CTL_CMD_ID_SIZE - 1] = 0;
	return 0;
}

/* {"v":1,"id":ID,"kind":KIND,KEY:VALUE} */
static int build(const char *kind, const char *key, const char *value,
		 char ret_id[CTL_CMD_ID_SIZE], char **ret_json)
{
	char id[CTL_CMD_ID_SIZE];
	int r = new_id(id);
	if (r < 0)
		return r;
	cJSON *o = cJSON_CreateObject();
	if (!o || !cJSON_AddNumberToObject(o, "v", 1) || !cJSON_AddStringToObject(o, "id", id) ||
	    !cJSON_AddStringToObject(o, "kind", kind) || !cJSON_AddStringToObject(o, key, value)) {
		cJSON_Delete(o);
		return -ENOMEM;
	}
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!s)
		return -ENOMEM;
	if (strlen(s) > CTL_CMD_MAX_BYTES) {
		free(s);
		return -FL_ETOOBIG;
	}
	memcpy(ret_id, id, CTL_CMD_ID_SIZE);
	*ret_json = s;
	return 0;
}

int ctl_cmd_deploy(struct ctl *c, const char *model, const char *version,
		   char ret_id[CTL_CMD_ID_SIZE], char **ret_json)
{
	if (!c || !model || !fl_name_valid(model, 64) || !ctl_version_valid(version) || !ret_id ||
	    !ret_json)
		return -EINVAL;
	_cleanup_free_ char *env = NULL;
	pthread_mutex_lock(&c->lock);
	int r = c->store->ops->bundle_envelope(c->store, model, version, &env);
	pthread_mutex_unlock(&c->lock);
	if (r < 0)
		return r;
	return build("deploy", "envelope", env, ret_id, ret_json);
}

int ctl_cmd_revert(const char *model, char ret_id[CTL_CMD_ID_SIZE], char **ret_json)
{
	if (!model || !fl_name_valid(model, 64) || !ret_id || !ret_json)
		return -EINVAL;
	return build("revert", "model", model, ret_id, ret_json);
}
