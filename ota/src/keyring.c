/* Keyring v1: root-signed delegation of release keys (see keyring.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/keyring.h>
#include <flotilla/util.h>

#define KEYRING_MAX_INT 9007199254740991LL
#define PUBKEY_TEXT_MAX 4096
#define MODEL_NAME_MAX 64

static inline void json_freep(cJSON **p) { cJSON_Delete(*p); }

static void key_clear(struct ota_keyring_key *k)
{
	ota_key_free(k->key);
	for (size_t i = 0; i < k->n_models; i++)
		free(k->models[i]);
	free(k->models);
}

void ota_keyring_free(struct ota_keyring *kr)
{
	if (!kr)
		return;
	for (size_t i = 0; i < kr->n_roots; i++)
		ota_key_free(kr->roots[i].key);
	free(kr->roots);
	for (size_t i = 0; i < kr->n_keys; i++)
		key_clear(&kr->keys[i]);
	free(kr->keys);
	free(kr->revoked);
	free(kr);
}

FL_DEFINE_CLEANUP(struct ota_keyring, ota_keyring_free)

static bool keyid_valid(const char *s)
{
	if (!s || strnlen(s, OTA_KEYID_HEX_LEN + 1) != OTA_KEYID_HEX_LEN)
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

/* Times that fl_time_format() can write (0001..9999 years; >= 1970 here). */
static bool time_ok(int64_t t)
{
	return t >= 0 && t <= 253402300799LL;
}

static bool model_valid(const char *s)
{
	return s && (!strcmp(s, "*") || fl_name_valid(s, MODEL_NAME_MAX));
}

const struct ota_keyring_key *ota_keyring_find_key(const struct ota_keyring *kr,
						   const char *keyid)
{
	for (size_t i = 0; i < kr->n_keys; i++)
		if (!strcmp(kr->keys[i].keyid, keyid))
			return &kr->keys[i];
	return NULL;
}

static bool has_root(const struct ota_keyring *kr, const char *keyid)
{
	for (size_t i = 0; i < kr->n_roots; i++)
		if (!strcmp(kr->roots[i].keyid, keyid))
			return true;
	return false;
}

bool ota_keyring_is_revoked(const struct ota_keyring *kr, const char *keyid)
{
	for (size_t i = 0; i < kr->n_revoked; i++)
		if (!strcmp(kr->revoked[i], keyid))
			return true;
	return false;
}

bool ota_keyring_key_allows(const struct ota_keyring_key *k, const char *name)
{
	for (size_t i = 0; i < k->n_models; i++)
		if (!strcmp(k->models[i], "*") || !strcmp(k->models[i], name))
			return true;
	return false;
}

/* ---- parsing ------------------------------------------------------------- */

/* "public_key": PEM text or base64 DER; "keyid" must be its keyid. */
static int parse_keypair(const cJSON *o, char keyid[OTA_KEYID_HEX_LEN + 1], struct ota_key **ret)
{
	const char *id, *text;
	int r;
	if ((r = fl_json_get_str(o, "keyid", &id)) < 0 ||
	    (r = fl_json_get_str(o, "public_key", &text)) < 0)
		return r;
	size_t len = strnlen(text, PUBKEY_TEXT_MAX + 1);
	if (!keyid_valid(id) || len == 0 || len > PUBKEY_TEXT_MAX)
		return -FL_ESCHEMA;
	struct ota_key *key = NULL;
	if (!strncmp(text, "-----BEGIN", 10)) {
		r = ota_key_parse_public(text, len, &key);
	} else {
		_cleanup_free_ uint8_t *der = NULL;
		size_t der_len;
		r = fl_b64_decode(text, len, &der, &der_len);
		if (r < 0)
			return r == -ENOMEM ? r : -FL_ESCHEMA;
		r = ota_key_parse_public(der, der_len, &key);
	}
	if (r < 0)
		return r == -ENOMEM ? r : -FL_EKEY;
	if (strcmp(ota_key_id(key), id) != 0) {
		ota_key_free(key);
		return -FL_ESCHEMA;
	}
	memcpy(keyid, id, OTA_KEYID_HEX_LEN + 1);
	*ret = key;
	return 0;
}

static int parse_roots(const cJSON *root, struct ota_keyring *kr)
{
	if (!cJSON_GetObjectItemCaseSensitive(root, "roots"))
		return 0;
	const cJSON *arr;
	int r = fl_json_get_arr(root, "roots", &arr);
	if (r < 0)
		return r;
	int n = cJSON_GetArraySize(arr);
	if (n > OTA_KEYRING_MAX_ROOTS)
		return -FL_ETOOBIG;
	if (n == 0)
		return 0;
	kr->roots = calloc((size_t)n, sizeof(*kr->roots));
	if (!kr->roots)
		return -ENOMEM;
	static const char *const keys[] = {"keyid", "public_key", NULL};
	const cJSON *o;
	cJSON_ArrayForEach(o, arr)
	{
		if (!cJSON_IsObject(o) || cJSON_GetArraySize(o) != 2)
			return -FL_ESCHEMA;
		struct ota_keyring_root *rt = &kr->roots[kr->n_roots];
		if ((r = fl_json_check_keys(o, keys, NULL)) < 0 ||
		    (r = parse_keypair(o, rt->keyid, &rt->key)) < 0)
			return r;
		if (has_root(kr, rt->keyid)) {
			ota_key_free(rt->key);
			rt->key = NULL;
			return -FL_ESCHEMA;
		}
		kr->n_roots++;
	}
	return 0;
}

static int parse_keys(const cJSON *root, struct ota_keyring *kr)
{
	const cJSON *arr;
	int r = fl_json_get_arr(root, "keys", &arr);
	if (r < 0)
		return r;
	int n = cJSON_GetArraySize(arr);
	if (n > OTA_KEYRING_MAX_KEYS)
		return -FL_ETOOBIG;
	if (n == 0)
		return 0;
	kr->keys = calloc((size_t)n, sizeof(*kr->keys));
	if (!kr->keys)
		return -ENOMEM;
	static const char *const keys[] = {"keyid", "public_key", "models", "expires", NULL};
	const cJSON *o;
	cJSON_ArrayForEach(o, arr)
	{
		if (!cJSON_IsObject(o) || cJSON_GetArraySize(o) != 4)
			return -FL_ESCHEMA;
		struct ota_keyring_key *k = &kr->keys[kr->n_keys];
		const cJSON *models;
		const char *exp;
		if ((r = fl_json_check_keys(o, keys, NULL)) < 0 ||
		    (r = fl_json_get_arr(o, "models", &models)) < 0 ||
		    (r = fl_json_get_str(o, "expires", &exp)) < 0)
			return r;
		if (fl_time_parse(exp, &k->expires_s) < 0)
			return -FL_ESCHEMA;
		int nm = cJSON_GetArraySize(models);
		if (nm > OTA_KEYRING_MAX_MODELS)
			return -FL_ETOOBIG;
		if (nm == 0)
			return -FL_ESCHEMA;
		if ((r = parse_keypair(o, k->keyid, &k->key)) < 0)
			return r;
		kr->n_keys++; /* from here on k is freed with kr */
		for (size_t j = 0; j + 1 < kr->n_keys; j++)
			if (!strcmp(kr->keys[j].keyid, k->keyid))
				return -FL_ESCHEMA;
		k->models = calloc((size_t)nm, sizeof(char *));
		if (!k->models)
			return -ENOMEM;
		const cJSON *mo;
		cJSON_ArrayForEach(mo, models)
		{
			if (!cJSON_IsString(mo) || !model_valid(mo->valuestring))
				return -FL_ESCHEMA;
			k->models[k->n_models] = strdup(mo->valuestring);
			if (!k->models[k->n_models])
				return -ENOMEM;
			k->n_models++;
		}
	}
	return 0;
}

static int parse_revoked(const cJSON *root, struct ota_keyring *kr)
{
	if (!cJSON_GetObjectItemCaseSensitive(root, "revoked"))
		return 0;
	const cJSON *arr;
	int r = fl_json_get_arr(root, "revoked", &arr);
	if (r < 0)
		return r;
	int n = cJSON_GetArraySize(arr);
	if (n > OTA_KEYRING_MAX_REVOKED)
		return -FL_ETOOBIG;
	if (n == 0)
		return 0;
	kr->revoked = calloc((size_t)n, sizeof(*kr->revoked));
	if (!kr->revoked)
		return -ENOMEM;
	const cJSON *s;
	cJSON_ArrayForEach(s, arr)
	{
		if (!cJSON_IsString(s) || !keyid_valid(s->valuestring))
			return -FL_ESCHEMA;
		memcpy(kr->revoked[kr->n_revoked++], s->valuestring, OTA_KEYID_HEX_LEN + 1);
	}
	return 0;
}

int ota_keyring_parse(const char *json, size_t len, struct ota_keyring **ret)
{
	if (len > OTA_KEYRING_MAX_BYTES)
		return -FL_ETOOBIG;
	_cleanup_(json_freep) cJSON *root = NULL;
	int r = fl_json_parse(json, len, OTA_KEYRING_MAX_BYTES, OTA_KEYRING_MAX_DEPTH, &root);
	if (r < 0)
		return r;
	if (!cJSON_IsObject(root))
		return -FL_ESCHEMA;
	static const char *const keys[] = {"version", "expires", "threshold", "roots",
					   "keys",    "revoked", NULL};
	if ((r = fl_json_check_keys(root, keys, NULL)) < 0)
		return r;
	if (cJSON_GetArraySize(root) > (int)FL_ARRAY_SIZE(keys) - 1)
		return -FL_ESCHEMA; /* a duplicate member */
	for (const cJSON *a = root->child; a; a = a->next)
		for (const cJSON *b = root->child; b != a; b = b->next)
			if (!strcmp(a->string, b->string))
				return -FL_ESCHEMA;

	_cleanup_(ota_keyring_freep) struct ota_keyring *kr = calloc(1, sizeof(*kr));
	if (!kr)
		return -ENOMEM;
	int64_t version, threshold;
	const char *exp;
	if ((r = fl_json_get_int(root, "version", 1, KEYRING_MAX_INT, &version)) < 0 ||
	    (r = fl_json_get_str(root, "expires", &exp)) < 0 ||
	    (r = fl_json_get_int(root, "threshold", 1, OTA_KEYRING_MAX_ROOTS, &threshold)) < 0)
		return r;
	if (fl_time_parse(exp, &kr->expires_s) < 0)
		return -FL_ESCHEMA;
	kr->version = (uint64_t)version;
	kr->threshold = (unsigned)threshold;
	if ((r = parse_roots(root, kr)) < 0 || (r = parse_keys(root, kr)) < 0 ||
	    (r = parse_revoked(root, kr)) < 0)
		return r;
	if (kr->n_roots > 0 && kr->threshold > kr->n_roots)
		return -FL_ESCHEMA;
	for (size_t i = 0; i < kr->n_revoked; i++)
		for (size_t j = 0; j < i; j++)
			if (!strcmp(kr->revoked[i], kr->revoked[j]))
				return -FL_ESCHEMA;
	*ret = fl_steal_ptr(kr);
	return 0;
}

/* ---- building ------------------------------------------------------------ */

int ota_keyring_new(uint64_t version, int64_t expires_s, unsigned threshold,
		    struct ota_keyring **ret)
{
	if (version < 1 || version > (uint64_t)KEYRING_MAX_INT || threshold < 1 ||
	    threshold > OTA_KEYRING_MAX_ROOTS || !time_ok(expires_s))
		return -EINVAL;
	struct ota_keyring *kr = calloc(1, sizeof(*kr));
	if (!kr)
		return -ENOMEM;
	kr->version = version;
	kr->expires_s = expires_s;
	kr->threshold = threshold;
	*ret = kr;
	return 0;
}

/* A public-only copy of KEY. */
static int key_copy_public(const struct ota_key *key, struct ota_key **ret)
{
	_cleanup_free_ uint8_t *der = NULL;
	size_t len;
	int r = ota_key_public_der(key, &der, &len);
	if (r < 0)
		return r;
	return ota_key_parse_public(der, len, ret);
}

int ota_keyring_add_key(struct ota_keyring *kr, const struct ota_key *pub,
			const char *const *models, size_t n_models, int64_t expires_s)
{
	if (n_models == 0 || n_models > OTA_KEYRING_MAX_MODELS || !time_ok(expires_s))
		return -EINVAL;
	for (size_t i = 0; i < n_models; i++)
		if (!model_valid(models[i]))
			return -EINVAL;
	if (ota_keyring_find_key(kr, ota_key_id(pub)))
		return -FL_EDUP;
	if (kr->n_keys >= OTA_KEYRING_MAX_KEYS)
		return -FL_ETOOBIG;
	struct ota_keyring_key k = {.expires_s = expires_s};
	int r = key_copy_public(pub, &k.key);
	if (r < 0)
		return r;
	memcpy(k.keyid, ota_key_id(pub), OTA_KEYID_HEX_LEN + 1);
	k.models = calloc(n_models, sizeof(char *));
	if (!k.models) {
		key_clear(&k);
		return -ENOMEM;
	}
	for (; k.n_models < n_models; k.n_models++) {
		k.models[k.n_models] = strdup(models[k.n_models]);
		if (!k.models[k.n_models]) {
			key_clear(&k);
			return -ENOMEM;
		}
	}
	struct ota_keyring_key *arr = realloc(kr->keys, (kr->n_keys + 1) * sizeof(*arr));
	if (!arr) {
		key_clear(&k);
		return -ENOMEM;
	}
	kr->keys = arr;
	kr->keys[kr->n_keys++] = k;
	return 0;
}

int ota_keyring_add_root(struct ota_keyring *kr, const struct ota_key *pub)
{
	if (has_root(kr, ota_key_id(pub)))
		return -FL_EDUP;
	if (kr->n_roots >= OTA_KEYRING_MAX_ROOTS)
		return -FL_ETOOBIG;
	struct ota_key *copy;
	int r = key_copy_public(pub, &copy);
	if (r < 0)
		return r;
	struct ota_keyring_root *arr = realloc(kr->roots, (kr->n_roots + 1) * sizeof(*arr));
	if (!arr) {
		ota_key_free(copy);
		return -ENOMEM;
	}
	kr->roots = arr;
	memcpy(arr[kr->n_roots].keyid, ota_key_id(pub), OTA_KEYID_HEX_LEN + 1);
	arr[kr->n_roots].key = copy;
	kr->n_roots++;
	return 0;
}

int ota_keyring_revoke(struct ota_keyring *kr, const char *keyid)
{
	if (!keyid_valid(keyid))
		return -EINVAL;
	if (ota_keyring_is_revoked(kr, keyid))
		return -FL_EDUP;
	if (kr->n_revoked >= OTA_KEYRING_MAX_REVOKED)
		return -FL_ETOOBIG;
	char(*arr)[OTA_KEYID_HEX_LEN + 1] = realloc(kr->revoked, (kr->n_revoked + 1) * sizeof(*arr));
	if (!arr)
		return -ENOMEM;
	kr->revoked = arr;
	memcpy(arr[kr->n_revoked++], keyid, OTA_KEYID_HEX_LEN + 1);
	return 0;
}

/* ---- serializing --------------------------------------------------------- */

static int add_pubkey(cJSON *o, const char *keyid, const struct ota_key *key)
{
	_cleanup_free_ uint8_t *der = NULL;
	size_t len;
	int r = ota_key_public_der(key, &der, &len);
	if (r < 0)
		return r;
	_cleanup_free_ char *b64 = fl_b64_encode(der, len);
	if (!b64 || !cJSON_AddStringToObject(o, "keyid", keyid) ||
	    !cJSON_AddStringToObject(o, "public_key", b64))
		return -ENOMEM;
	return 0;
}

int ota_keyring_to_json(const struct ota_keyring *kr, char **ret, size_t *ret_len)
{
	if (kr->version < 1 || kr->version > (uint64_t)KEYRING_MAX_INT || kr->threshold < 1 ||
	    kr->threshold > OTA_KEYRING_MAX_ROOTS || (kr->n_roots && kr->threshold > kr->n_roots) ||
	    !time_ok(kr->expires_s))
		return -FL_ESCHEMA;
	for (size_t i = 0; i < kr->n_keys; i++)
		if (!time_ok(kr->keys[i].expires_s))
			return -FL_ESCHEMA;
	_cleanup_(json_freep) cJSON *root = cJSON_CreateObject();
	if (!root)
		return -ENOMEM;
	char exp[21];
	fl_time_format(kr->expires_s, exp);
	char num[24];
	snprintf(num, sizeof(num), "%llu", (unsigned long long)kr->version);
	if (!cJSON_AddRawToObject(root, "version", num) ||
	    !cJSON_AddStringToObject(root, "expires", exp) ||
	    !cJSON_AddNumberToObject(root, "threshold", kr->threshold))
		return -ENOMEM;
	int r;
	if (kr->n_roots) {
		cJSON *roots = cJSON_AddArrayToObject(root, "roots");
		if (!roots)
			return -ENOMEM;
		for (size_t i = 0; i < kr->n_roots; i++) {
			cJSON *o = cJSON_CreateObject();
			if (!o)
				return -ENOMEM;
			cJSON_AddItemToArray(roots, o);
			if ((r = add_pubkey(o, kr->roots[i].keyid, kr->roots[i].key)) < 0)
				return r;
		}
	}
	cJSON *keys = cJSON_AddArrayToObject(root, "keys");
	if (!keys)
		return -ENOMEM;
	for (size_t i = 0; i < kr->n_keys; i++) {
		const struct ota_keyring_key *k = &kr->keys[i];
		cJSON *o = cJSON_CreateObject();
		if (!o)
			return -ENOMEM;
		cJSON_AddItemToArray(keys, o);
		if ((r = add_pubkey(o, k->keyid, k->key)) < 0)
			return r;
		cJSON *models = cJSON_AddArrayToObject(o, "models");
		if (!models)
			return -ENOMEM;
		for (size_t j = 0; j < k->n_models; j++) {
			cJSON *s = cJSON_CreateString(k->models[j]);
			if (!s)
				return -ENOMEM;
			cJSON_AddItemToArray(models, s);
		}
		fl_time_format(k->expires_s, exp);
		if (!cJSON_AddStringToObject(o, "expires", exp))
			return -ENOMEM;
	}
	cJSON *rev = cJSON_AddArrayToObject(root, "revoked");
	if (!rev)
		return -ENOMEM;
	for (size_t i = 0; i < kr->n_revoked; i++) {
		cJSON *s = cJSON_CreateString(kr->revoked[i]);
		if (!s)
			return -ENOMEM;
		cJSON_AddItemToArray(rev, s);
	}
	char *out = fl_json_print(root);
	if (!out)
		return -ENOMEM;
	*ret = out;
	if (ret_len)
		*ret_len = strlen(out);
	return 0;
}
