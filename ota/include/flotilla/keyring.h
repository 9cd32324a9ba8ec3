/* Keyring v1: the root-signed list of release keys (DSSE payload type
 * "application/vnd.flotilla.keyring.v1+json"). See docs/security.md.
 *
 *   {"version": 7, "expires": "2027-11-25T00:00:00Z", "threshold": 2,
 *    "roots": [{"keyid": "<hex>", "public_key": "<base64 DER or PEM>"}],
 *    "keys": [{"keyid": "<hex>", "public_key": "<base64 DER or PEM>",
 *              "models": ["tinyllama-chat", "*"], "expires": "2027-05-01T00:00:00Z"}],
 *    "revoked": ["<keyid>", ...]}
 *
 * - "keys": release keys and the model names each may sign ("*": any).
 * - "threshold" (>= 1): root signatures the NEXT keyring needs.
 * - "roots" (optional): when present, the root set that signs the next
 *   keyring is this list (root rotation); when absent it stays the device's
 *   configured roots and the effective threshold is the larger of the
 *   device's and this keyring's.
 * - "revoked": keyids never accepted again, release keys and roots alike.
 * Every keyid must be the keyid of its public_key. Unknown members refused.
 *
 * Public read-only struct; build with the functions below. */
#ifndef FLOTILLA_OTA_KEYRING_H
#define FLOTILLA_OTA_KEYRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <flotilla/crypto.h>

#define OTA_KEYRING_MAX_BYTES (256 * 1024)
#define OTA_KEYRING_MAX_DEPTH 8
#define OTA_KEYRING_MAX_KEYS 256
#define OTA_KEYRING_MAX_ROOTS 16
#define OTA_KEYRING_MAX_REVOKED 1024
#define OTA_KEYRING_MAX_MODELS 64

struct ota_keyring_key {
	char keyid[OTA_KEYID_HEX_LEN + 1];
	struct ota_key *key; /* public key, owned */
	char **models;       /* model names or "*" */
	size_t n_models;
	int64_t expires_s;
};

struct ota_keyring_root {
	char keyid[OTA_KEYID_HEX_LEN + 1];
	struct ota_key *key; /* owned */
};

struct ota_keyring {
	uint64_t version; /* >= 1, <= 2^53-1 */
	int64_t expires_s;
	unsigned threshold;
	struct ota_keyring_root *roots; /* n_roots == 0: device roots stay */
	size_t n_roots;
	struct ota_keyring_key *keys;
	size_t n_keys;
	char (*revoked)[OTA_KEYID_HEX_LEN + 1];
	size_t n_revoked;
};

/* Parse and validate a keyring payload. Errors: -FL_ETOOBIG (size or counts),
 * -FL_ETOODEEP, -FL_EINVAL_JSON, -FL_ESCHEMA (missing/unknown member, bad
 * time, keyid not matching its key, duplicate keyid, threshold > n_roots when
 * roots are listed), -FL_ERANGE, -FL_EKEY (public key not P-256), -ENOMEM.
 * Caller frees *ret with ota_keyring_free(). */
int ota_keyring_parse(const char *json, size_t len, struct ota_keyring **ret);

/* Compact JSON in the order shown above; caller frees *ret. -FL_ESCHEMA when
 * the keyring breaks a rule of ota_keyring_parse(). */
int ota_keyring_to_json(const struct ota_keyring *kr, char **ret, size_t *ret_len);

/* Empty keyring for building. VERSION >= 1, THRESHOLD >= 1 (else -EINVAL).
 * Caller frees with ota_keyring_free(). */
int ota_keyring_new(uint64_t version, int64_t expires_s, unsigned threshold,
		    struct ota_keyring **ret);

/* Add release key PUB (its public half is copied) for MODELS (names valid per
 * fl_name_valid or "*"). -FL_EDUP already present, -FL_ETOOBIG, -EINVAL. */
int ota_keyring_add_key(struct ota_keyring *kr, const struct ota_key *pub,
			const char *const *models, size_t n_models, int64_t expires_s);
/* Add a root to the "roots" list (turns root rotation on). -FL_EDUP, -FL_ETOOBIG. */
int ota_keyring_add_root(struct ota_keyring *kr, const struct ota_key *pub);
/* Add KEYID (64 hex) to "revoked". -EINVAL bad keyid; -FL_EDUP; -FL_ETOOBIG. */
int ota_keyring_revoke(struct ota_keyring *kr, const char *keyid);

/* Lookups. NULL / false when absent. */
const struct ota_keyring_key *ota_keyring_find_key(const struct ota_keyring *kr,
						   const char *keyid);
bool ota_keyring_is_revoked(const struct ota_keyring *kr, const char *keyid);
/* True when K may sign manifests for model NAME ("*" or exact match). */
bool ota_keyring_key_allows(const struct ota_keyring_key *k, const char *name);

void ota_keyring_free(struct ota_keyring *kr);

#endif
