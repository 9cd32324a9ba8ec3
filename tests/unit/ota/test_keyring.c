/* Keyring v1: build, serialize, parse round trip, lookups, and bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ota_testutil.h"
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/keyring.h>

static void test_build_roundtrip(void **state)
{
	struct ota_key *rel = tu_key(), *rel2 = tu_key(), *root = tu_key();
	struct ota_keyring *kr = NULL;
	assert_int_equal(ota_keyring_new(0, TU_NOW, 1, &kr), -EINVAL);
	assert_int_equal(ota_keyring_new(1, TU_NOW, 0, &kr), -EINVAL);
	assert_int_equal(ota_keyring_new(1, -5, 1, &kr), -EINVAL);
	assert_null(kr);
	assert_int_equal(ota_keyring_new(3, TU_NOW + 365 * TU_DAY, 1, &kr), 0);
	const char *models[] = {"tinyllama-chat", "classifier"};
	const char *any[] = {"*"};
	const char *bad_models[] = {"bad name"};
	assert_int_equal(ota_keyring_add_key(kr, rel, models, 2, TU_NOW + 90 * TU_DAY), 0);
	assert_int_equal(ota_keyring_add_key(kr, rel, models, 2, TU_NOW), -FL_EDUP);
	assert_int_equal(ota_keyring_add_key(kr, rel2, bad_models, 1, TU_NOW), -EINVAL);
	assert_int_equal(ota_keyring_add_key(kr, rel2, models, 0, TU_NOW), -EINVAL);
	assert_int_equal(ota_keyring_add_key(kr, rel2, any, 1, TU_NOW + TU_DAY), 0);
	assert_int_equal(ota_keyring_add_root(kr, root), 0);
	assert_int_equal(ota_keyring_add_root(kr, root), -FL_EDUP);
	char revoked[65];
	memset(revoked, 'c', 64);
	revoked[64] = 0;
	assert_int_equal(ota_keyring_revoke(kr, revoked), 0);
	assert_int_equal(ota_keyring_revoke(kr, revoked), -FL_EDUP);
	assert_int_equal(ota_keyring_revoke(kr, "abc"), -EINVAL);
	assert_int_equal(kr->n_keys, 2);
	assert_int_equal(kr->n_roots, 1);
	assert_int_equal(kr->n_revoked, 1);
	/* The stored copy is public only. */
	assert_false(ota_key_has_private(kr->keys[0].key));

	char *json = NULL;
	size_t len = 0;
	assert_int_equal(ota_keyring_to_json(kr, &json, &len), 0);
	assert_int_equal(len, strlen(json));
	struct ota_keyring *p = NULL;
	assert_int_equal(ota_keyring_parse(json, len, &p), 0);
	assert_int_equal(p->version, 3);
	assert_int_equal(p->expires_s, TU_NOW + 365 * TU_DAY);
	assert_int_equal(p->threshold, 1);
	assert_int_equal(p->n_keys, 2);
	assert_string_equal(p->keys[0].keyid, ota_key_id(rel));
	assert_string_equal(ota_key_id(p->keys[0].key), ota_key_id(rel));
	assert_int_equal(p->keys[0].n_models, 2);
	assert_string_equal(p->keys[0].models[1], "classifier");
	assert_int_equal(p->keys[0].expires_s, TU_NOW + 90 * TU_DAY);
	assert_int_equal(p->n_roots, 1);
	assert_string_equal(p->roots[0].keyid, ota_key_id(root));
	assert_true(ota_keyring_is_revoked(p, revoked));
	assert_false(ota_keyring_is_revoked(p, ota_key_id(rel)));

	const struct ota_keyring_key *k = ota_keyring_find_key(p, ota_key_id(rel));
	assert_non_null(k);
	assert_true(ota_keyring_key_allows(k, "classifier"));
	assert_false(ota_keyring_key_allows(k, "other"));
	k = ota_keyring_find_key(p, ota_key_id(rel2));
	assert_true(ota_keyring_key_allows(k, "anything"));
	assert_null(ota_keyring_find_key(p, ota_key_id(root)));

	/* Serialization is a fixed point. */
	char *json2 = NULL;
	assert_int_equal(ota_keyring_to_json(p, &json2, NULL), 0);
	assert_string_equal(json, json2);

	free(json);
	free(json2);
	ota_keyring_free(kr);
	ota_keyring_free(p);
	ota_keyring_free(NULL);
	ota_key_free(rel);
	ota_key_free(rel2);
	ota_key_free(root);
}

static void test_pem_public_key(void **state)
{
	/* "public_key" may also be PEM text. */
	struct ota_key *k = tu_key();
	char *pem = NULL;
	assert_int_equal(ota_key_public_pem(k, &pem), 0);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "version", 1);
	cJSON_AddStringToObject(o, "expires", "2030-01-01T00:00:00Z");
	cJSON_AddNumberToObject(o, "threshold", 1);
	cJSON *keys = cJSON_AddArrayToObject(o, "keys");
	cJSON *e = cJSON_CreateObject();
	cJSON_AddStringToObject(e, "keyid", ota_key_id(k));
	cJSON_AddStringToObject(e, "public_key", pem);
	cJSON *models = cJSON_AddArrayToObject(e, "models");
	cJSON_AddItemToArray(models, cJSON_CreateString("m"));
	cJSON_AddStringToObject(e, "expires", "2030-01-01T00:00:00Z");
	cJSON_AddItemToArray(keys, e);
	char *json = cJSON_PrintUnformatted(o);
	struct ota_keyring *kr = NULL;
	assert_int_equal(ota_keyring_parse(json, strlen(json), &kr), 0);
	assert_string_equal(ota_key_id(kr->keys[0].key), ota_key_id(k));
	ota_keyring_free(kr);
	kr = NULL;
	free(json);

	/* keyid that does not belong to the key. */
	char wrong[65];
	memset(wrong, 'a', 64);
	wrong[64] = 0;
	cJSON_ReplaceItemInObject(e, "keyid", cJSON_CreateString(wrong));
	json = cJSON_PrintUnformatted(o);
	assert_int_equal(ota_keyring_parse(json, strlen(json), &kr), -FL_ESCHEMA);
	free(json);
	/* A key that is not a P-256 public key. */
	cJSON_ReplaceItemInObject(e, "keyid", cJSON_CreateString(ota_key_id(k)));
	cJSON_ReplaceItemInObject(e, "public_key", cJSON_CreateString("AAAA"));
	json = cJSON_PrintUnformatted(o);
	assert_int_equal(ota_keyring_parse(json, strlen(json), &kr), -FL_EKEY);
	free(json);
	cJSON_ReplaceItemInObject(e, "public_key", cJSON_CreateString("@@@"));
	json = cJSON_PrintUnformatted(o);
	assert_int_equal(ota_keyring_parse(json, strlen(json), &kr), -FL_ESCHEMA);
	free(json);
	assert_null(kr);
	cJSON_Delete(o);
	free(pem);
	ota_key_free(k);
}

/* A valid keyring JSON (one key, one root) to mutate. */
static char *base_json(struct ota_key *rel, struct ota_key *root)
{
	struct ota_keyring *kr = NULL;
	assert_int_equal(ota_keyring_new(5, TU_NOW + TU_DAY, 1, &kr), 0);
	const char *models[] = {"m"};
	assert_int_equal(ota_keyring_add_key(kr, rel, models, 1, TU_NOW + TU_DAY), 0);
	assert_int_equal(ota_keyring_add_root(kr, root), 0);
	char *json = NULL;
	assert_int_equal(ota_keyring_to_json(kr, &json, NULL), 0);
	ota_keyring_free(kr);
	return json;
}

static void test_bad_inputs(void **state)
{
	struct ota_key *rel = tu_key(), *root = tu_key();
	char *base = base_json(rel, root);
	struct ota_keyring *kr = NULL;
	assert_int_equal(ota_keyring_parse(base, strlen(base), &kr), 0);
	ota_keyring_free(kr);
	kr = NULL;

	char many_rev[70 * (OTA_KEYRING_MAX_REVOKED + 2)];
	size_t off = 0;
	many_rev[off++] = '[';
	for (int i = 0; i <= OTA_KEYRING_MAX_REVOKED; i++)
		off += (size_t)snprintf(many_rev + off, sizeof(many_rev) - off, "%s\"%064x\"",
					i ? "," : "", i);
	snprintf(many_rev + off, sizeof(many_rev) - off, "]");

	struct {
		const char *what, *key, *sub, *value;
		int err;
	} cases[] = {
		{"unknown member", "extra", NULL, "1", -FL_ESCHEMA},
		{"missing version", "version", NULL, NULL, -FL_ESCHEMA},
		{"version 0", "version", NULL, "0", -FL_ERANGE},
		{"version 1e300", "version", NULL, "1e300", -FL_ERANGE},
		{"negative version", "version", NULL, "-3", -FL_ERANGE},
		{"bad expires", "expires", NULL, "\"soon\"", -FL_ESCHEMA},
		{"threshold 0", "threshold", NULL, "0", -FL_ERANGE},
		{"threshold above roots", "threshold", NULL, "2", -FL_ESCHEMA},
		{"threshold huge", "threshold", NULL, "1e9", -FL_ERANGE},
		{"missing keys", "keys", NULL, NULL, -FL_ESCHEMA},
		{"keys not array", "keys", NULL, "{}", -FL_ESCHEMA},
		{"key without models", "keys", "models", NULL, -FL_ESCHEMA},
		{"empty models", "keys", "models", "[]", -FL_ESCHEMA},
		{"bad model", "keys", "models", "[\"a b\"]", -FL_ESCHEMA},
		{"key expires bad", "keys", "expires", "1", -FL_ESCHEMA},
		{"key unknown member", "keys", "extra", "1", -FL_ESCHEMA},
		{"short keyid", "keys", "keyid", "\"abc\"", -FL_ESCHEMA},
		{"root unknown member", "roots", "extra", "1", -FL_ESCHEMA},
		{"revoked not keyids", "revoked", NULL, "[\"xyz\"]", -FL_ESCHEMA},
		{"too many revoked", "revoked", NULL, many_rev, -FL_ETOOBIG},
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(cases); i++) {
		cJSON *o = cJSON_Parse(base);
		cJSON *obj = o;
		const char *key = cases[i].key;
		if (cases[i].sub) {
			obj = cJSON_GetArrayItem(cJSON_GetObjectItem(o, key), 0);
			key = cases[i].sub;
		}
		cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
		if (cases[i].value)
			cJSON_AddItemToObject(obj, key, cJSON_Parse(cases[i].value));
		char *json = cJSON_PrintUnformatted(o);
		int r = ota_keyring_parse(json, strlen(json), &kr);
		if (r != cases[i].err)
			fail_msg("%s: got %d (%s), want %s", cases[i].what, r, fl_strerror(r),
				 fl_strerror(cases[i].err));
		assert_null(kr);
		free(json);
		cJSON_Delete(o);
	}
	/* Duplicate keys and roots. */
	cJSON *o = cJSON_Parse(base);
	cJSON *keys = cJSON_GetObjectItem(o, "keys");
	cJSON_AddItemToArray(keys, cJSON_Duplicate(cJSON_GetArrayItem(keys, 0), true));
	char *json = cJSON_PrintUnformatted(o);
	assert_int_equal(ota_keyring_parse(json, strlen(json), &kr), -FL_ESCHEMA);
	free(json);
	cJSON_Delete(o);
	o = cJSON_Parse(base);
	cJSON *roots = cJSON_GetObjectItem(o, "roots");
	cJSON_AddItemToArray(roots, cJSON_Duplicate(cJSON_GetArrayItem(roots, 0), true));
	json = cJSON_PrintUnformatted(o);
	assert_int_equal(ota_keyring_parse(json, strlen(json), &kr), -FL_ESCHEMA);
	free(json);
	cJSON_Delete(o);

	assert_int_equal(ota_keyring_parse("", 0, &kr), -FL_EINVAL_JSON);
	assert_int_equal(ota_keyring_parse("[]", 2, &kr), -FL_ESCHEMA);
	size_t n = OTA_KEYRING_MAX_BYTES + 1;
	char *big = malloc(n);
	memset(big, ' ', n);
	assert_int_equal(ota_keyring_parse(big, n, &kr), -FL_ETOOBIG);
	free(big);
	assert_null(kr);
	free(base);
	ota_key_free(rel);
	ota_key_free(root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_build_roundtrip),
		cmocka_unit_test(test_pem_public_key),
		cmocka_unit_test(test_bad_inputs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
