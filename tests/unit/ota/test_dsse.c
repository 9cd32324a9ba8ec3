/* DSSE envelopes: PAE, build/sign/serialize/parse round trip, verification,
 * threshold counting and every parse error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ota_testutil.h"
#include <flotilla/hash.h>

#define TYPE "application/example+json"

static void test_pae(void **state)
{
	uint8_t *pae = NULL;
	size_t len = 0;
	/* The example from the DSSE protocol document. */
	assert_int_equal(ota_dsse_pae("http://example.com/HelloWorld", "hello world", 11, &pae, &len),
			 0);
	const char want[] = "DSSEv1 29 http://example.com/HelloWorld 11 hello world";
	assert_int_equal(len, sizeof(want) - 1);
	assert_memory_equal(pae, want, len);
	free(pae);
	assert_int_equal(ota_dsse_pae("t", "", 0, &pae, &len), 0);
	assert_int_equal(len, strlen("DSSEv1 1 t 0 "));
	assert_memory_equal(pae, "DSSEv1 1 t 0 ", len);
	free(pae);
}

static void test_roundtrip(void **state)
{
	struct ota_key *a = tu_key(), *b = tu_key(), *c = tu_key();
	struct ota_dsse *env = NULL;
	const char payload[] = "{\"x\":1}";
	assert_int_equal(ota_dsse_new(TYPE, payload, strlen(payload), &env), 0);
	assert_int_equal(env->n_sigs, 0);
	assert_int_equal(ota_dsse_sign(env, a), 0);
	assert_int_equal(ota_dsse_sign(env, b), 0);
	assert_int_equal(ota_dsse_sign(env, a), -FL_EDUP);
	assert_int_equal(env->n_sigs, 2);

	char *json = NULL;
	size_t json_len = 0;
	assert_int_equal(ota_dsse_to_json(env, &json, &json_len), 0);
	assert_int_equal(json_len, strlen(json));
	assert_non_null(strstr(json, "\"payloadType\":\"" TYPE "\""));
	assert_non_null(strstr(json, "\"payload\":\"eyJ4IjoxfQ==\""));

	struct ota_dsse *p = NULL;
	assert_int_equal(ota_dsse_parse(json, json_len, &p), 0);
	assert_string_equal(p->payload_type, TYPE);
	assert_int_equal(p->payload_len, strlen(payload));
	assert_memory_equal(p->payload, payload, p->payload_len);
	assert_int_equal(p->payload[p->payload_len], 0);
	assert_int_equal(p->n_sigs, 2);
	assert_string_equal(p->sigs[0].keyid, ota_key_id(a));
	assert_string_equal(p->sigs[1].keyid, ota_key_id(b));
	assert_int_equal(ota_dsse_verify_sig(p, 0, a), 0);
	assert_int_equal(ota_dsse_verify_sig(p, 1, b), 0);
	assert_int_equal(ota_dsse_verify_sig(p, 0, b), -FL_EKEYUNKNOWN);
	assert_int_equal(ota_dsse_verify_sig(p, 2, a), -EINVAL);

	/* The signature is over PAE: verify it by hand. */
	uint8_t *pae;
	size_t pae_len;
	assert_int_equal(ota_dsse_pae(TYPE, payload, strlen(payload), &pae, &pae_len), 0);
	assert_int_equal(ota_key_verify(a, pae, pae_len, p->sigs[0].sig, p->sigs[0].sig_len), 0);
	free(pae);

	/* Threshold: distinct keys only. */
	struct ota_key *keys[] = {a, b, c};
	assert_int_equal(ota_dsse_verify_threshold(p, keys, 3, 2), 2);
	assert_int_equal(ota_dsse_verify_threshold(p, keys, 3, 3), -FL_ETHRESHOLD);
	struct ota_key *same[] = {a, a, a};
	assert_int_equal(ota_dsse_verify_threshold(p, same, 3, 2), -FL_ETHRESHOLD);
	assert_int_equal(ota_dsse_verify_threshold(p, same, 3, 1), 1);
	assert_int_equal(ota_dsse_verify_threshold(p, keys, 3, 0), -EINVAL);
	struct ota_key *only_c[] = {c};
	assert_int_equal(ota_dsse_verify_threshold(p, only_c, 1, 1), -FL_ETHRESHOLD);

	/* A changed payload invalidates every signature. */
	p->payload[2] ^= 1;
	assert_int_equal(ota_dsse_verify_sig(p, 0, a), -FL_EBADSIG);
	assert_int_equal(ota_dsse_verify_threshold(p, keys, 3, 1), -FL_ETHRESHOLD);

	/* No signatures at all. */
	struct ota_dsse *u = NULL;
	assert_int_equal(ota_dsse_new(TYPE, "", 0, &u), 0);
	assert_int_equal(ota_dsse_verify_threshold(u, keys, 3, 1), -FL_ENOSIG);
	char *uj = NULL;
	assert_int_equal(ota_dsse_to_json(u, &uj, NULL), 0);
	struct ota_dsse *up = NULL;
	assert_int_equal(ota_dsse_parse(uj, strlen(uj), &up), 0);
	assert_int_equal(up->n_sigs, 0);
	assert_int_equal(up->payload_len, 0);

	ota_dsse_free(up);
	free(uj);
	ota_dsse_free(u);
	ota_dsse_free(p);
	ota_dsse_free(env);
	ota_dsse_free(NULL);
	free(json);
	ota_key_free(a);
	ota_key_free(b);
	ota_key_free(c);
}

/* A duplicate signature entry (same key twice) in the JSON counts once. */
static void test_duplicate_sig_entries(void **state)
{
	struct ota_key *a = tu_key();
	struct ota_key *keys[] = {a};
	char *json = tu_envelope(TYPE, "p", keys, 1);
	/* Append the same signature object again: ...[{SIG}]} -> ...[{SIG},{SIG}]} */
	size_t len = strlen(json);
	size_t open_at = (size_t)(strstr(json, "[{") - json) + 1;
	size_t close_at = len - 2; /* json ends with "]}" */
	assert_int_equal(json[close_at], ']');
	char *dup = fl_asprintf("%.*s,%.*s]}", (int)close_at, json, (int)(close_at - open_at),
				json + open_at);
	struct ota_dsse *p = NULL;
	assert_int_equal(ota_dsse_parse(dup, strlen(dup), &p), 0);
	assert_int_equal(p->n_sigs, 2);
	assert_int_equal(ota_dsse_verify_threshold(p, keys, 1, 1), 1);
	assert_int_equal(ota_dsse_verify_threshold(p, keys, 1, 2), -FL_ETHRESHOLD);
	ota_dsse_free(p);
	free(dup);
	free(json);
	ota_key_free(a);
}

static void test_sign_errors(void **state)
{
	struct ota_key *a = tu_key();
	uint8_t *der;
	size_t der_len;
	assert_int_equal(ota_key_public_der(a, &der, &der_len), 0);
	struct ota_key *pub = NULL;
	assert_int_equal(ota_key_parse_public(der, der_len, &pub), 0);
	free(der);
	struct ota_dsse *env = NULL;
	assert_int_equal(ota_dsse_new(TYPE, "x", 1, &env), 0);
	assert_int_equal(ota_dsse_sign(env, pub), -FL_EKEY);
	assert_int_equal(env->n_sigs, 0);
	/* Signature count limit. */
	for (int i = 0; i < OTA_DSSE_MAX_SIGS; i++) {
		struct ota_key *k = tu_key();
		assert_int_equal(ota_dsse_sign(env, k), 0);
		ota_key_free(k);
	}
	assert_int_equal(ota_dsse_sign(env, a), -FL_ETOOBIG);
	assert_int_equal(env->n_sigs, OTA_DSSE_MAX_SIGS);
	ota_dsse_free(env);

	struct ota_dsse *bad = NULL;
	assert_int_equal(ota_dsse_new("", "x", 1, &bad), -EINVAL);
	assert_int_equal(ota_dsse_new("has space", "x", 1, &bad), -EINVAL);
	assert_int_equal(ota_dsse_new(TYPE, NULL, 1, &bad), -EINVAL);
	char *big = calloc(1, OTA_DSSE_MAX_BYTES);
	assert_int_equal(ota_dsse_new(TYPE, big, OTA_DSSE_MAX_BYTES, &bad), -FL_ETOOBIG);
	assert_null(bad);
	free(big);
	ota_key_free(a);
	ota_key_free(pub);
}

static void test_parse_errors(void **state)
{
	static const char kid[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	struct {
		const char *json;
		int err;
	} cases[] = {
		{"", -FL_EINVAL_JSON},
		{"{", -FL_EINVAL_JSON},
		{"[]", -FL_ESCHEMA},
		{"{\"payloadType\":\"t\",\"payload\":\"\"}", -FL_ESCHEMA},
		{"{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":[],\"x\":1}", -FL_ESCHEMA},
		{"{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":{}}", -FL_ESCHEMA},
		{"{\"payloadType\":1,\"payload\":\"\",\"signatures\":[]}", -FL_ESCHEMA},
		{"{\"payloadType\":\"\",\"payload\":\"\",\"signatures\":[]}", -FL_ESCHEMA},
		{"{\"payloadType\":\"t\",\"payload\":\"!!!!\",\"signatures\":[]}", -FL_ESCHEMA},
		{"{\"payloadType\":\"t\",\"payload\":\"\",\"payload\":\"\",\"signatures\":[]}",
		 -FL_EINVAL_JSON /* duplicate member */},
		{"{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":[1]}", -FL_ESCHEMA},
		{"{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":[{\"keyid\":\"ab\",\"sig\":"
		 "\"MAA=\"}]}",
		 -FL_ESCHEMA},
		{"{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":[{\"sig\":\"MAA=\"}]}",
		 -FL_ESCHEMA},
		{"{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":[1,2,3,4,5,6,7,8,9,10,11,12,"
		 "13,14,15,16,17]}",
		 -FL_ETOOBIG},
		{"{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":[]} x", -FL_EINVAL_JSON},
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(cases); i++) {
		struct ota_dsse *env = NULL;
		int r = ota_dsse_parse(cases[i].json, strlen(cases[i].json), &env);
		if (r != cases[i].err)
			fail_msg("case %zu: got %d (%s), want %d", i, r, fl_strerror(r), cases[i].err);
		assert_null(env);
	}
	/* Bad signature encodings. */
	const char *sigs[] = {"", "!!", "AAAA" /* decodes fine but to 3 bytes: ok */};
	for (size_t i = 0; i < 2; i++) {
		char *j = fl_asprintf("{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":"
				      "[{\"keyid\":\"%s\",\"sig\":\"%s\"}]}",
				      kid, sigs[i]);
		struct ota_dsse *env = NULL;
		assert_int_equal(ota_dsse_parse(j, strlen(j), &env), -FL_ESCHEMA);
		free(j);
	}
	/* Upper-case keyid is refused (keyids are compared as strings). */
	char *upper = fl_asprintf("{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":"
				  "[{\"keyid\":\"%.63sA\",\"sig\":\"MAA=\"}]}",
				  kid);
	struct ota_dsse *env = NULL;
	assert_int_equal(ota_dsse_parse(upper, strlen(upper), &env), -FL_ESCHEMA);
	free(upper);
	/* An over-long signature. */
	char longsig[200];
	memset(longsig, 'A', 120);
	longsig[120] = 0;
	char *j = fl_asprintf("{\"payloadType\":\"t\",\"payload\":\"\",\"signatures\":"
			      "[{\"keyid\":\"%s\",\"sig\":\"%s\"}]}",
			      kid, longsig);
	assert_int_equal(ota_dsse_parse(j, strlen(j), &env), -FL_ESCHEMA);
	free(j);
	/* Oversized envelope. */
	size_t n = OTA_DSSE_MAX_BYTES + 1;
	char *big = malloc(n);
	memset(big, ' ', n);
	assert_int_equal(ota_dsse_parse(big, n, &env), -FL_ETOOBIG);
	free(big);
	assert_null(env);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pae),	    cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_duplicate_sig_entries),
		cmocka_unit_test(test_sign_errors), cmocka_unit_test(test_parse_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
