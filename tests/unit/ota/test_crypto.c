/* ota crypto: P-256 keys, PEM/DER files, keyids, sign and verify. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ota_testutil.h"
#include <flotilla/hash.h>

static void test_generate_and_keyid(void **state)
{
	struct ota_key *a = tu_key(), *b = tu_key();
	assert_true(ota_key_has_private(a));
	const char *id = ota_key_id(a);
	assert_int_equal(strlen(id), OTA_KEYID_HEX_LEN);
	for (const char *p = id; *p; p++)
		assert_true((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'));
	assert_string_not_equal(ota_key_id(a), ota_key_id(b));

	/* keyid = hex SHA-256 of the DER SubjectPublicKeyInfo. */
	uint8_t *der = NULL;
	size_t der_len = 0;
	assert_int_equal(ota_key_public_der(a, &der, &der_len), 0);
	assert_int_equal(der_len, 91); /* P-256 SPKI */
	uint8_t digest[32];
	char hex[65];
	fl_sha256(der, der_len, digest);
	fl_hex_encode(digest, 32, hex);
	assert_string_equal(hex, id);
	free(der);
	ota_key_free(a);
	ota_key_free(b);
	ota_key_free(NULL);
}

static void test_sign_verify(void **state)
{
	struct ota_key *a = tu_key(), *b = tu_key();
	const char msg[] = "hello fleet";
	uint8_t *sig = NULL;
	size_t sig_len = 0;
	assert_int_equal(ota_key_sign(a, msg, sizeof(msg), &sig, &sig_len), 0);
	assert_true(sig_len > 8 && sig_len <= OTA_SIG_MAX_BYTES);
	assert_int_equal(sig[0], 0x30); /* DER SEQUENCE */
	assert_int_equal(ota_key_verify(a, msg, sizeof(msg), sig, sig_len), 0);

	/* Wrong data, wrong key, flipped bits, truncation, absurd lengths. */
	assert_int_equal(ota_key_verify(a, msg, sizeof(msg) - 1, sig, sig_len), -FL_EBADSIG);
	assert_int_equal(ota_key_verify(b, msg, sizeof(msg), sig, sig_len), -FL_EBADSIG);
	for (size_t i = 0; i < sig_len; i++) {
		sig[i] ^= 0x01;
		assert_int_equal(ota_key_verify(a, msg, sizeof(msg), sig, sig_len), -FL_EBADSIG);
		sig[i] ^= 0x01;
	}
	assert_int_equal(ota_key_verify(a, msg, sizeof(msg), sig, sig_len - 1), -FL_EBADSIG);
	assert_int_equal(ota_key_verify(a, msg, sizeof(msg), sig, 0), -FL_EBADSIG);
	assert_int_equal(ota_key_verify(a, msg, sizeof(msg), NULL, 0), -FL_EBADSIG);
	uint8_t big[OTA_SIG_MAX_BYTES + 1];
	memset(big, 0x30, sizeof(big));
	assert_int_equal(ota_key_verify(a, msg, sizeof(msg), big, sizeof(big)), -FL_EBADSIG);

	/* Digest API agrees with the data API. */
	uint8_t digest[32];
	fl_sha256(msg, sizeof(msg), digest);
	assert_int_equal(ota_key_verify_digest(a, digest, sig, sig_len), 0);
	uint8_t *sig2 = NULL;
	size_t sig2_len = 0;
	assert_int_equal(ota_key_sign_digest(a, digest, &sig2, &sig2_len), 0);
	assert_int_equal(ota_key_verify(a, msg, sizeof(msg), sig2, sig2_len), 0);
	digest[0] ^= 1;
	assert_int_equal(ota_key_verify_digest(a, digest, sig2, sig2_len), -FL_EBADSIG);
	free(sig);
	free(sig2);
	ota_key_free(a);
	ota_key_free(b);
}

static void test_files(void **state)
{
	char *dir = tu_tmpdir("crypto-files");
	char *priv = tu_path(dir, "k.pem"), *pub = tu_path(dir, "k.pub.pem");
	struct ota_key *k = tu_key();
	assert_int_equal(ota_key_save_private(k, priv), 0);
	assert_int_equal(ota_key_save_public(k, pub), 0);
	struct stat st;
	assert_int_equal(stat(priv, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(stat(pub, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0644);
	char *text = tu_read(pub, NULL);
	assert_non_null(strstr(text, "-----BEGIN PUBLIC KEY-----"));
	free(text);
	text = tu_read(priv, NULL);
	assert_non_null(strstr(text, "PRIVATE KEY-----"));
	free(text);

	struct ota_key *lp = NULL, *lu = NULL, *lpu = NULL;
	assert_int_equal(ota_key_load_private(priv, &lp), 0);
	assert_true(ota_key_has_private(lp));
	assert_string_equal(ota_key_id(lp), ota_key_id(k));
	assert_int_equal(ota_key_load_public(pub, &lu), 0);
	assert_false(ota_key_has_private(lu));
	assert_string_equal(ota_key_id(lu), ota_key_id(k));
	/* A private key file loaded as public gives the public half only. */
	assert_int_equal(ota_key_load_public(priv, &lpu), 0);
	assert_false(ota_key_has_private(lpu));
	assert_string_equal(ota_key_id(lpu), ota_key_id(k));

	/* The loaded private key signs; the public one verifies. */
	uint8_t *sig = NULL;
	size_t sig_len = 0;
	assert_int_equal(ota_key_sign(lp, "x", 1, &sig, &sig_len), 0);
	assert_int_equal(ota_key_verify(lu, "x", 1, sig, sig_len), 0);
	free(sig);
	sig = NULL;
	/* Public-only keys cannot sign or be saved as private. */
	assert_int_equal(ota_key_sign(lu, "x", 1, &sig, &sig_len), -FL_EKEY);
	assert_null(sig);
	char *priv2 = tu_path(dir, "never.pem");
	assert_int_equal(ota_key_save_private(lu, priv2), -FL_EKEY);
	assert_int_equal(access(priv2, F_OK), -1);
	/* A public key file is not a private key. */
	struct ota_key *bad = NULL;
	assert_int_equal(ota_key_load_private(pub, &bad), -FL_EKEY);
	assert_null(bad);

	/* Unwritable destinations report the errno. */
	assert_int_equal(ota_key_save_private(k, "/nonexistent-dir/k.pem"), -ENOENT);
	assert_int_equal(ota_key_save_public(k, "/nonexistent-dir/k.pub.pem"), -ENOENT);

	ota_key_free(k);
	ota_key_free(lp);
	ota_key_free(lu);
	ota_key_free(lpu);
	free(priv2);
	free(priv);
	free(pub);
	free(dir);
}

static void test_bad_files(void **state)
{
	char *dir = tu_tmpdir("crypto-bad");
	struct ota_key *k = NULL;
	char *missing = tu_path(dir, "missing.pem");
	assert_int_equal(ota_key_load_public(missing, &k), -ENOENT);
	assert_int_equal(ota_key_load_private(missing, &k), -ENOENT);

	char *garbage = tu_path(dir, "garbage.pem");
	tu_write(garbage, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
	assert_int_equal(ota_key_load_public(garbage, &k), -FL_EKEY);
	assert_int_equal(ota_key_load_private(garbage, &k), -FL_EKEY);

	char *empty = tu_path(dir, "empty.pem");
	tu_write(empty, "");
	assert_int_equal(ota_key_load_public(empty, &k), -FL_EKEY);

	char *huge = tu_path(dir, "huge.pem");
	char *big = malloc(OTA_KEY_FILE_MAX_BYTES + 2);
	memset(big, 'A', OTA_KEY_FILE_MAX_BYTES + 1);
	big[OTA_KEY_FILE_MAX_BYTES + 1] = 0;
	tu_write(huge, big);
	assert_int_equal(ota_key_load_public(huge, &k), -FL_ETOOBIG);
	free(big);

	/* Keys of another curve or algorithm are refused. */
	char *p384 = tu_path(dir, "p384.pem"), *rsa = tu_path(dir, "rsa.pem");
	char *cmd = fl_asprintf("openssl ecparam -name secp384r1 -genkey -noout -out %s 2>/dev/null &&"
				" openssl genrsa -out %s 1024 2>/dev/null",
				p384, rsa);
	if (system(cmd) == 0) {
		assert_int_equal(ota_key_load_private(p384, &k), -FL_EKEY);
		assert_int_equal(ota_key_load_public(p384, &k), -FL_EKEY);
		assert_int_equal(ota_key_load_private(rsa, &k), -FL_EKEY);
	}
	assert_null(k);
	free(cmd);
	free(p384);
	free(rsa);
	free(missing);
	free(garbage);
	free(empty);
	free(huge);
	free(dir);
}

static void test_parse_public(void **state)
{
	struct ota_key *k = tu_key(), *a = NULL, *b = NULL, *c = NULL;
	char *pem = NULL;
	uint8_t *der = NULL;
	size_t der_len;
	assert_int_equal(ota_key_public_pem(k, &pem), 0);
	assert_int_equal(ota_key_public_der(k, &der, &der_len), 0);
	/* PEM with and without the terminating NUL in the length. */
	assert_int_equal(ota_key_parse_public(pem, strlen(pem), &a), 0);
	assert_int_equal(ota_key_parse_public(der, der_len, &b), 0);
	assert_string_equal(ota_key_id(a), ota_key_id(k));
	assert_string_equal(ota_key_id(b), ota_key_id(k));
	assert_false(ota_key_has_private(a));

	assert_int_equal(ota_key_parse_public(der, der_len - 1, &c), -FL_EKEY);
	der[der_len - 5] ^= 0x55; /* point no longer on the curve */
	assert_int_equal(ota_key_parse_public(der, der_len, &c), -FL_EKEY);
	assert_int_equal(ota_key_parse_public("", 0, &c), -FL_EKEY);
	assert_int_equal(ota_key_parse_public("junk", 4, &c), -FL_EKEY);
	assert_null(c);
	ota_key_free(k);
	ota_key_free(a);
	ota_key_free(b);
	free(pem);
	free(der);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_generate_and_keyid), cmocka_unit_test(test_sign_verify),
		cmocka_unit_test(test_files),		    cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_parse_public),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
