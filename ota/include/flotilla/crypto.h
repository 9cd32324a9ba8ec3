/* Keys and signatures: ECDSA P-256 over SHA-256, DER-encoded signatures.
 *
 * This is the only file set in Flotilla that touches mbedTLS (ota/src/crypto.c).
 * A struct ota_key holds either a key pair (private + public) or a public key
 * only. Its keyid is the lower-case hex SHA-256 of the public key's DER
 * SubjectPublicKeyInfo, so the same key always has the same id whatever file
 * format it came from.
 *
 * Thread-safety: a struct ota_key is immutable after creation; verify, sign
 * and the getters may be called from several threads on the same key. */
#ifndef FLOTILLA_OTA_CRYPTO_H
#define FLOTILLA_OTA_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OTA_KEYID_HEX_LEN 64     /* hex SHA-256 of the SubjectPublicKeyInfo */
#define OTA_SIG_MAX_BYTES 80     /* DER ECDSA P-256 signature is at most 72 */
#define OTA_KEY_FILE_MAX_BYTES (16 * 1024) /* PEM/DER key input limit */

struct ota_key;

/* Generate a new P-256 key pair (entropy: mbedtls_entropy + CTR-DRBG seeded
 * from the OS). Caller frees *ret with ota_key_free(). -ENOMEM, -FL_EKEY. */
int ota_key_generate(struct ota_key **ret);

/* Load a PEM (or DER) private key file (SEC1 or PKCS#8, unencrypted). The key
 * must be an EC P-256 key: anything else is -FL_EKEY. Missing file: -ENOENT
 * (or another negative errno); larger than OTA_KEY_FILE_MAX_BYTES: -FL_ETOOBIG.
 * Caller frees *ret with ota_key_free(). */
int ota_key_load_private(const char *path, struct ota_key **ret);

/* Load a public key file (PEM "PUBLIC KEY" or DER SubjectPublicKeyInfo). A
 * private key file is accepted too (its public half is used). Errors as
 * ota_key_load_private(). Caller frees *ret with ota_key_free(). */
int ota_key_load_public(const char *path, struct ota_key **ret);

/* Parse a public key from memory: PEM text (need not be NUL-terminated) or
 * DER SubjectPublicKeyInfo. Non-P-256 or garbage: -FL_EKEY. Caller frees. */
int ota_key_parse_public(const void *buf, size_t len, struct ota_key **ret);

/* Write the private key as PEM (SEC1 "EC PRIVATE KEY") atomically with mode
 * 0600. A public-only key: -FL_EKEY. I/O errors as negative errno. */
int ota_key_save_private(const struct ota_key *key, const char *path);

/* Write the public key as PEM ("PUBLIC KEY") atomically with mode 0644. */
int ota_key_save_public(const struct ota_key *key, const char *path);

/* Public key as PEM text (NUL-terminated) or as DER SubjectPublicKeyInfo.
 * Caller frees *ret with free(). */
int ota_key_public_pem(const struct ota_key *key, char **ret);
int ota_key_public_der(const struct ota_key *key, uint8_t **ret, size_t *ret_len);

/* The keyid: OTA_KEYID_HEX_LEN lower-case hex characters, NUL-terminated,
 * owned by KEY. Never NULL. */
const char *ota_key_id(const struct ota_key *key);

/* True when KEY holds a private key (can sign). */
bool ota_key_has_private(const struct ota_key *key);

/* Sign a SHA-256 digest / the SHA-256 of DATA. *ret_sig is a DER ECDSA
 * signature of *ret_len <= OTA_SIG_MAX_BYTES bytes; caller frees with free().
 * Public-only key: -FL_EKEY. */
int ota_key_sign_digest(const struct ota_key *key, const uint8_t digest[32], uint8_t **ret_sig,
			size_t *ret_len);
int ota_key_sign(const struct ota_key *key, const void *data, size_t len, uint8_t **ret_sig,
		 size_t *ret_len);

/* Verify a DER signature over a SHA-256 digest / over the SHA-256 of DATA.
 * 0 when valid, -FL_EBADSIG when not (including malformed DER or a signature
 * longer than OTA_SIG_MAX_BYTES). */
int ota_key_verify_digest(const struct ota_key *key, const uint8_t digest[32], const uint8_t *sig,
			  size_t sig_len);
int ota_key_verify(const struct ota_key *key, const void *data, size_t len, const uint8_t *sig,
		   size_t sig_len);

/* Free a key (private material is zeroed). NULL is a no-op. */
void ota_key_free(struct ota_key *key);

#endif
