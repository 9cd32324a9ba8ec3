/* DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1):
 *
 *   {"payloadType": "...", "payload": "<base64>",
 *    "signatures": [{"keyid": "<64 hex>", "sig": "<base64 DER ECDSA>"}, ...]}
 *
 * Each signature is ECDSA P-256 / SHA-256 over
 *   PAE = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
 * (LEN in ASCII decimal, no leading zeros), so signed bytes are exactly the
 * payload bytes: no JSON canonicalisation is involved.
 *
 * Flotilla requires "keyid" in every signature (64 lower-case hex characters,
 * see crypto.h) and refuses unknown members. Limits: an envelope of at most
 * OTA_DSSE_MAX_BYTES, at most OTA_DSSE_MAX_SIGS signatures.
 *
 * The struct is public read-only data: callers read its fields but create,
 * change and free it only through these functions. */
#ifndef FLOTILLA_OTA_DSSE_H
#define FLOTILLA_OTA_DSSE_H

#include <stddef.h>
#include <stdint.h>

#include <flotilla/crypto.h>

#define OTA_DSSE_MAX_BYTES (512 * 1024)
#define OTA_DSSE_MAX_SIGS 16
#define OTA_DSSE_MAX_TYPE_LEN 128

#define OTA_PAYLOAD_TYPE_MANIFEST "application/vnd.flotilla.manifest.v1+json"
#define OTA_PAYLOAD_TYPE_KEYRING "application/vnd.flotilla.keyring.v1+json"

struct ota_dsse_sig {
	char keyid[OTA_KEYID_HEX_LEN + 1];
	uint8_t *sig; /* DER ECDSA signature */
	size_t sig_len;
};

struct ota_dsse {
	char *payload_type;
	uint8_t *payload; /* decoded payload bytes (NUL-terminated for convenience) */
	size_t payload_len;
	struct ota_dsse_sig *sigs;
	size_t n_sigs;
};

/* Parse an envelope (JSON, need not be NUL-terminated). Errors: -FL_ETOOBIG
 * (over OTA_DSSE_MAX_BYTES or too many signatures), -FL_EINVAL_JSON,
 * -FL_ESCHEMA (missing/unknown member, bad base64, bad keyid), -ENOMEM.
 * Signatures are NOT verified here. Caller frees *ret with ota_dsse_free(). */
int ota_dsse_parse(const char *json, size_t len, struct ota_dsse **ret);

/* New unsigned envelope holding a copy of PAYLOAD. Errors: -EINVAL (empty or
 * overlong type), -FL_ETOOBIG (the encoded envelope would exceed the limit),
 * -ENOMEM. Caller frees with ota_dsse_free(). */
int ota_dsse_new(const char *payload_type, const void *payload, size_t payload_len,
		 struct ota_dsse **ret);

/* Append a signature by KEY (must hold a private key: else -FL_EKEY).
 * Signing twice with the same key: -FL_EDUP; already OTA_DSSE_MAX_SIGS
 * signatures: -FL_ETOOBIG. On error ENV is unchanged. */
int ota_dsse_sign(struct ota_dsse *env, const struct ota_key *key);

/* Verify signature INDEX of ENV with KEY: 0 valid; -FL_EKEYUNKNOWN when the
 * signature's keyid is not KEY's; -FL_EBADSIG when it does not verify;
 * -EINVAL for an index out of range. */
int ota_dsse_verify_sig(const struct ota_dsse *env, size_t index, const struct ota_key *key);

/* Count DISTINCT keys among KEYS[0..N_KEYS) that made a valid signature on
 * ENV (a key that signed twice counts once). Returns the count (>= THRESHOLD)
 * on success; -FL_ENOSIG when ENV has no signature at all; -FL_ETHRESHOLD when
 * fewer than THRESHOLD (>= 1) keys signed validly. THRESHOLD 0 is -EINVAL. */
int ota_dsse_verify_threshold(const struct ota_dsse *env, struct ota_key *const *keys,
			      size_t n_keys, unsigned threshold);

/* Pre-authentication encoding of (TYPE, PAYLOAD). Caller frees *ret. */
int ota_dsse_pae(const char *payload_type, const void *payload, size_t payload_len, uint8_t **ret,
		 size_t *ret_len);

/* Serialize ENV as compact JSON (members in the order shown above). Caller
 * frees *ret with free(); *ret_len (if not NULL) gets strlen(*ret). */
int ota_dsse_to_json(const struct ota_dsse *env, char **ret, size_t *ret_len);

void ota_dsse_free(struct ota_dsse *env);

#endif
