/* DSSE envelopes: parse, build, sign, verify (see dsse.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/dsse.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>

#define DSSE_MAX_DEPTH 4
#define SIG_B64_MAX 256 /* a DER P-256 signature is at most 96 base64 characters */

void ota_dsse_free(struct ota_dsse *env)
{
	if (!env)
		return;
	free(env->payload_type);
	free(env->payload);
	for (size_t i = 0; i < env->n_sigs; i++)
		free(env->sigs[i].sig);
	free(env->sigs);
	free(env);
}

FL_DEFINE_CLEANUP(struct ota_dsse, ota_dsse_free)
static inline void json_freep(cJSON **p) { cJSON_Delete(*p); }

static bool type_valid(const char *t)
{
	size_t n = strlen(t);
	if (n == 0 || n > OTA_DSSE_MAX_TYPE_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if (t[i] <= 0x20 || t[i] >= 0x7f)
			return false;
	return true;
}

static bool keyid_valid(const char *s)
{
	if (strlen(s) != OTA_KEYID_HEX_LEN)
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

int ota_dsse_parse(const char *json, size_t len, struct ota_dsse **ret)
{
	if (len > OTA_DSSE_MAX_BYTES)
		return -FL_ETOOBIG;
	_cleanup_(json_freep) cJSON *root = NULL;
	int r = fl_json_parse(json, len, OTA_DSSE_MAX_BYTES, DSSE_MAX_DEPTH, &root);
	if (r < 0)
		return r;
	if (!cJSON_IsObject(root))
		return -FL_ESCHEMA;
	static const char *const top_keys[] = {"payloadType", "payload", "signatures", NULL};
	r = fl_json_check_keys(root, top_keys, NULL);
	if (r < 0)
		return r;
	/* cJSON keeps duplicate members: refuse them so that no reader can pick
	 * a different "payload" than the one we verify. */
	if (cJSON_GetArraySize(root) != 3)
		return -FL_ESCHEMA;

	const char *type, *payload_b64;
	const cJSON *sigs;
	if ((r = fl_json_get_str(root, "payloadType", &type)) < 0 ||
	    (r = fl_json_get_str(root, "payload", &payload_b64)) < 0 ||
	    (r = fl_json_get_arr(root, "signatures", &sigs)) < 0)
		return r;
	if (!type_valid(type))
		return -FL_ESCHEMA;
	int n = cJSON_GetArraySize(sigs);
	if (n < 0 || n > OTA_DSSE_MAX_SIGS)
		return -FL_ETOOBIG;

	_cleanup_(ota_dsse_freep) struct ota_dsse *env = calloc(1, sizeof(*env));
	if (!env)
		return -ENOMEM;
	env->payload_type = strdup(type);
	if (!env->payload_type)
		return -ENOMEM;
	uint8_t *payload = NULL;
	size_t payload_len = 0;
	r = fl_b64_decode(payload_b64, strlen(payload_b64), &payload, &payload_len);
	if (r < 0)
		return r == -ENOMEM ? r : -FL_ESCHEMA;
	/* Keep a terminating NUL so JSON payloads can be handed on as text. */
	uint8_t *p = realloc(payload, payload_len + 1);
	if (!p) {
		free(payload);
		return -ENOMEM;
	}
	p[payload_len] = 0;
	env->payload = p;
	env->payload_len = payload_len;

	if (n > 0) {
		env->sigs = calloc((size_t)n, sizeof(*env->sigs));
		if (!env->sigs)
			return -ENOMEM;
	}
	static const char *const sig_keys[] = {"keyid", "sig", NULL};
	const cJSON *s;
	cJSON_ArrayForEach(s, sigs)
	{
		if (!cJSON_IsObject(s))
			return -FL_ESCHEMA;
		const char *keyid, *sig_b64;
		if (cJSON_GetArraySize(s) != 2)
			return -FL_ESCHEMA;
		if ((r = fl_json_check_keys(s, sig_keys, NULL)) < 0 ||
		    (r = fl_json_get_str(s, "keyid", &keyid)) < 0 ||
		    (r = fl_json_get_str(s, "sig", &sig_b64)) < 0)
			return r;
		size_t b64_len = strlen(sig_b64);
		if (!keyid_valid(keyid) || b64_len == 0 || b64_len > SIG_B64_MAX)
			return -FL_ESCHEMA;
		struct ota_dsse_sig *d = &env->sigs[env->n_sigs];
		r = fl_b64_decode(sig_b64, b64_len, &d->sig, &d->sig_len);
		if (r < 0)
			return r == -ENOMEM ? r : -FL_ESCHEMA;
		env->n_sigs++;
		memcpy(d->keyid, keyid, OTA_KEYID_HEX_LEN + 1);
		if (d->sig_len == 0 || d->sig_len > OTA_SIG_MAX_BYTES)
			return -FL_ESCHEMA;
	}
	*ret = fl_steal_ptr(env);
	return 0;
}

int ota_dsse_new(const char *payload_type, const void *payload, size_t payload_len,
		 struct ota_dsse **ret)
{
	if (!payload_type || !type_valid(payload_type) || (!payload && payload_len))
		return -EINVAL;
	/* base64 grows 4/3; keep room for type and signatures. */
	if (payload_len > (OTA_DSSE_MAX_BYTES / 4) * 3 - 8 * 1024)
		return -FL_ETOOBIG;
	_cleanup_(ota_dsse_freep) struct ota_dsse *env = calloc(1, sizeof(*env));
	if (!env)
		return -ENOMEM;
	env->payload_type = strdup(payload_type);
	env->payload = malloc(payload_len + 1);
	if (!env->payload_type || !env->payload)
		return -ENOMEM;
	if (payload_len)
		memcpy(env->payload, payload, payload_len);
	env->payload[payload_len] = 0;
	env->payload_len = payload_len;
	*ret = fl_steal_ptr(env);
	return 0;
}

int ota_dsse_pae(const char *payload_type, const void *payload, size_t payload_len, uint8_t **ret,
		 size_t *ret_len)
{
	char head[OTA_DSSE_MAX_TYPE_LEN + 64];
	size_t tlen = strlen(payload_type);
	if (tlen > OTA_DSSE_MAX_TYPE_LEN)
		return -EINVAL;
	int n = snprintf(head, sizeof(head), "DSSEv1 %zu %s %zu ", tlen, payload_type, payload_len);
	if (n < 0 || (size_t)n >= sizeof(head))
		return -EINVAL;
	uint8_t *out = malloc((size_t)n + payload_len + 1);
	if (!out)
		return -ENOMEM;
	memcpy(out, head, (size_t)n);
	if (payload_len)
		memcpy(out + n, payload, payload_len);
	*ret = out;
	*ret_len = (size_t)n + payload_len;
	return 0;
}

static int pae_digest(const struct ota_dsse *env, uint8_t digest[FL_SHA256_LEN])
{
	_cleanup_free_ uint8_t *pae = NULL;
	size_t len;
	int r = ota_dsse_pae(env->payload_type, env->payload, env->payload_len, &pae, &len);
	if (r < 0)
		return r;
	fl_sha256(pae, len, digest);
	return 0;
}

int ota_dsse_sign(struct ota_dsse *env, const struct ota_key *key)
{
	if (!ota_key_has_private(key))
		return -FL_EKEY;
	const char *keyid = ota_key_id(key);
	for (size_t i = 0; i < env->n_sigs; i++)
		if (!strcmp(env->sigs[i].keyid, keyid))
			return -FL_EDUP;
	if (env->n_sigs >= OTA_DSSE_MAX_SIGS)
		return -FL_ETOOBIG;
	uint8_t digest[FL_SHA256_LEN];
	int r = pae_digest(env, digest);
	if (r < 0)
		return r;
	uint8_t *sig;
	size_t sig_len;
	r = ota_key_sign_digest(key, digest, &sig, &sig_len);
	if (r < 0)
		return r;
	struct ota_dsse_sig *s = realloc(env->sigs, (env->n_sigs + 1) * sizeof(*s));
	if (!s) {
		free(sig);
		return -ENOMEM;
	}
	env->sigs = s;
	memcpy(s[env->n_sigs].keyid, keyid, OTA_KEYID_HEX_LEN + 1);
	s[env->n_sigs].sig = sig;
	s[env->n_sigs].sig_len = sig_len;
	env->n_sigs++;
	return 0;
}

int ota_dsse_verify_sig(const struct ota_dsse *env, size_t index, const struct ota_key *key)
{
	if (index >= env->n_sigs)
		return -EINVAL;
	const struct ota_dsse_sig *s = &env->sigs[index];
	if (strcmp(s->keyid, ota_key_id(key)) != 0)
		return -FL_EKEYUNKNOWN;
	uint8_t digest[FL_SHA256_LEN];
	int r = pae_digest(env, digest);
	if (r < 0)
		return r;
	return ota_key_verify_digest(key, digest, s->sig, s->sig_len);
}

int ota_dsse_verify_threshold(const struct ota_dsse *env, struct ota_key *const *keys,
			      size_t n_keys, unsigned threshold)
{
	if (threshold == 0)
		return -EINVAL;
	if (env->n_sigs == 0)
		return -FL_ENOSIG;
	uint8_t digest[FL_SHA256_LEN];
	int r = pae_digest(env, digest);
	if (r < 0)
		return r;
	unsigned count = 0;
	for (size_t k = 0; k < n_keys; k++) {
		const char *id = ota_key_id(keys[k]);
		bool dup = false;
		/* The same key listed twice counts once. */
		for (size_t j = 0; j < k && !dup; j++)
			dup = !strcmp(ota_key_id(keys[j]), id);
		if (dup)
			continue;
		for (size_t i = 0; i < env->n_sigs; i++) {
			if (strcmp(env->sigs[i].keyid, id) != 0)
				continue;
			if (ota_key_verify_digest(keys[k], digest, env->sigs[i].sig,
						  env->sigs[i].sig_len) == 0) {
				count++;
				break; /* one vote per key however often it signed */
			}
		}
	}
	if (count < threshold)
		return -FL_ETHRESHOLD;
	return (int)count;
}

int ota_dsse_to_json(const struct ota_dsse *env, char **ret, size_t *ret_len)
{
	_cleanup_(json_freep) cJSON *root = cJSON_CreateObject();
	if (!root)
		return -ENOMEM;
	_cleanup_free_ char *payload_b64 = fl_b64_encode(env->payload, env->payload_len);
	if (!payload_b64)
		return -ENOMEM;
	if (!cJSON_AddStringToObject(root, "payloadType", env->payload_type) ||
	    !cJSON_AddStringToObject(root, "payload", payload_b64))
		return -ENOMEM;
	cJSON *sigs = cJSON_AddArrayToObject(root, "signatures");
	if (!sigs)
		return -ENOMEM;
	for (size_t i = 0; i < env->n_sigs; i++) {
		cJSON *s = cJSON_CreateObject();
		if (!s)
			return -ENOMEM;
		cJSON_AddItemToArray(sigs, s);
		_cleanup_free_ char *sig_b64 = fl_b64_encode(env->sigs[i].sig, env->sigs[i].sig_len);
		if (!sig_b64 || !cJSON_AddStringToObject(s, "keyid", env->sigs[i].keyid) ||
		    !cJSON_AddStringToObject(s, "sig", sig_b64))
			return -ENOMEM;
	}
	char *out = fl_json_print(root);
	if (!out)
		return -ENOMEM;
	*ret = out;
	if (ret_len)
		*ret_len = strlen(out);
	return 0;
}
