/* chunk/req -> chunk/dat frames (docs/protocol.md "chunk/req and chunk/dat"). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>

#include "ctl_internal.h"

#define FRAME_MAGIC "FLCK"
#define FRAME_VERSION 1
enum { ST_OK = 0, ST_NOT_FOUND = 1, ST_BAD = 2 };

struct item {
	uint8_t id[32];
	uint64_t off;
	uint32_t len;
};

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static int parse_req(const void *req, size_t len, struct item *items, size_t *ret_n)
{
	if (!req || len > CTL_CHUNK_REQ_MAX_BYTES)
		return -FL_ETOOBIG;
	cJSON *root = NULL;
	int r = fl_json_parse(req, len, CTL_CHUNK_REQ_MAX_BYTES, 4, &root);
	if (r < 0)
		return r;
	static const char *const keys[] = {"v", "req", NULL};
	static const char *const ikeys[] = {"id", "off", "len", NULL};
	const cJSON *arr = NULL;
	int64_t v;
	size_t n = 0;
	if (!cJSON_IsObject(root))
		r = -FL_ESCHEMA;
	if (r >= 0)
		r = fl_json_check_keys(root, keys, NULL);
	if (r >= 0)
		r = fl_json_get_int(root, "v", 0, 1000, &v);
	if (r >= 0 && v != 1)
		r = -FL_EUNSUPPORTED;
	if (r >= 0)
		r = fl_json_get_arr(root, "req", &arr);
	if (r >= 0 && (cJSON_GetArraySize(arr) < 1 ||
		       cJSON_GetArraySize(arr) > CTL_CHUNK_REQ_MAX_ITEMS))
		r = -FL_ESCHEMA;
	const cJSON *it;
	cJSON_ArrayForEach(it, arr)
	{
		if (r < 0)
			break;
		const char *hex;
		int64_t off, l;
		if (!cJSON_IsObject(it)) {
			r = -FL_ESCHEMA;
			break;
		}
		if ((r = fl_json_check_keys(it, ikeys, NULL)) < 0 ||
		    (r = fl_json_get_str(it, "id", &hex)) < 0 ||
		    (r = fl_json_get_int(it, "off", 0, 9007199254740991LL, &off)) < 0 ||
		    (r = fl_json_get_int(it, "len", 1, CTL_CHUNK_READ_MAX, &l)) < 0)
			break;
		if (strlen(hex) != FL_SHA256_HEX_LEN || fl_hex_decode(hex, items[n].id, 32) < 0) {
			r = -FL_ESCHEMA;
			break;
		}
		items[n].off = (uint64_t)off;
		items[n].len = (uint32_t)l;
		n++;
	}
	cJSON_Delete(root);
	if (r < 0)
		return r;
	*ret_n = n;
	return 0;
}

int ctl_chunks_serve(struct ctl *c, const void *req, size_t len, ctl_chunk_emit_fn emit,
		     void *userdata)
{
	if (!c || !emit)
		return -EINVAL;
	struct item items[CTL_CHUNK_REQ_MAX_ITEMS];
	size_t n = 0;
	int r = parse_req(req, len, items, &n);
	if (r < 0)
		return r;
	uint8_t *frame = malloc(CTL_CHUNK_FRAME_HEADER + CTL_CHUNK_READ_MAX);
	if (!frame)
		return -ENOMEM;
	int sent = 0;
	for (size_t i = 0; i < n; i++) {
		size_t got = 0;
		int st = ST_OK;
		r = ctl_chunks_read(c, items[i].id, items[i].off, items[i].len,
				    frame + CTL_CHUNK_FRAME_HEADER, &got);
		if (r == -ENOENT)
			st = ST_NOT_FOUND;
		else if (r == -EINVAL || (r == 0 && got == 0))
			st = ST_BAD;
		else if (r < 0)
			st = ST_NOT_FOUND; /* unreadable: the device retries elsewhere/later */
		if (st != ST_OK)
			got = 0;
		memcpy(frame, FRAME_MAGIC, 4);
		frame[4] = FRAME_VERSION;
		frame[5] = (uint8_t)st;
		frame[6] = frame[7] = 0;
		memcpy(frame + 8, items[i].id, 32);
		put_le(frame + 40, items[i].off, 8);
		put_le(frame + 48, got, 4);
		if ((r = emit(userdata, frame, CTL_CHUNK_FRAME_HEADER + got)) < 0) {
			free(frame);
			return r;
		}
		sent++;
	}
	free(frame);
	return sent;
}
