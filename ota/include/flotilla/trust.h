/* The device trust store: root public keys, a threshold, and the installed
 * root-signed keyring. It answers two questions:
 *   - may this keyring replace the installed one? (ota_trust_install_keyring)
 *   - is this signed manifest acceptable now?      (ota_trust_verify_manifest)
 * Rules (docs/security.md): a keyring needs valid signatures from >= threshold
 * DISTINCT current roots; versions only go up; a newer properly signed keyring
 * is accepted even when the installed one has expired (recovery never
 * depends on the clock being right about the old keyring); a manifest needs a
 * valid signature by an unrevoked, unexpired keyring key delegated for its
 * model name, an unexpired keyring, an unexpired manifest, and a sequence not
 * below the caller's highest accepted one for that model.
 *
 * The store keeps no per-model state: the caller (the agent's journal)
 * persists the highest accepted sequence and passes it in.
 *
 * Thread-safety: none; one owner (the agent's loop) uses a struct ota_trust. */
#ifndef FLOTILLA_OTA_TRUST_H
#define FLOTILLA_OTA_TRUST_H

#include <stddef.h>
#include <stdint.h>

#include <flotilla/crypto.h>
#include <flotilla/dsse.h>
#include <flotilla/keyring.h>
#include <flotilla/manifest.h>

#define OTA_TRUST_KEYRING_FILE "keyring.dsse.json" /* conventional name */
#define OTA_TRUST_THRESHOLD_FILE "threshold"       /* in the roots directory */
#define OTA_TRUST_MAX_ROOTS 16

struct ota_trust;

/* Open the device trust store.
 * ROOTS_DIR: every "*.pem" in it is a root public key (none: -FL_EMISSING;
 * more than OTA_TRUST_MAX_ROOTS: -FL_ETOOBIG; a bad file: -FL_EKEY; the same
 * key twice counts once). THRESHOLD: number of root signatures a keyring
 * needs; 0 = read ROOTS_DIR/threshold (one decimal number, else -FL_ECONFIG)
 * or 1 when that file does not exist; over OTA_TRUST_MAX_ROOTS: -EINVAL. A
 * threshold above the number of roots is -FL_ETHRESHOLD.
 * KEYRING_PATH: where the installed keyring lives (e.g.
 * /var/lib/flotilla/trust/keyring.dsse.json); it may not exist yet. If it
 * exists it must verify (signatures only: with the device roots, or with its
 * own listed roots after a rotation; expiry is not checked at open) or the
 * open fails with that error: the caller may move it aside and reopen.
 * NULL: keep the keyring in memory only (CLI verification).
 * Caller frees *ret with ota_trust_free(). */
int ota_trust_open(const char *roots_dir, const char *keyring_path, unsigned threshold,
		   struct ota_trust **ret);

/* In-memory store without roots directory or keyring file (for the CLI):
 * add roots with ota_trust_add_root(), then install a keyring. THRESHOLD >= 1. */
int ota_trust_new(unsigned threshold, struct ota_trust **ret);
/* Add a root public key (copied). -FL_EDUP if already there, -FL_ETOOBIG. */
int ota_trust_add_root(struct ota_trust *t, const struct ota_key *root);

/* Verify ENVELOPE (a DSSE keyring) and make it the installed keyring,
 * replacing the file atomically (fl_write_file_atomic). Order and errors:
 * -FL_ETOOBIG, envelope parse errors, -FL_EPAYLOADTYPE, -FL_ENOSIG /
 * -FL_ETHRESHOLD (fewer than threshold distinct, unrevoked current roots
 * signed validly), keyring parse errors, -FL_EKEYRINGOLD (version below the
 * installed one, or equal with different content), -FL_EKEYRINGEXPIRED (the
 * NEW keyring is expired at NOW), -FL_ETHRESHOLD (a keyring that lists new
 * roots must also be signed by its own threshold of them), I/O errors.
 * Returns 1 when installed, 0 when the same keyring (same version and
 * payload) was already installed. On any error nothing changes, in memory
 * or on disk. */
int ota_trust_install_keyring(struct ota_trust *t, const char *envelope, size_t len, int64_t now);

/* Verify ENVELOPE (a DSSE manifest) at time NOW. MIN_SEQUENCE is the highest
 * sequence already accepted for this model name (0 if none): a lower one is
 * refused, an equal one accepted (retry of the same release). Order/errors:
 * -FL_ETOOBIG, envelope parse errors, -FL_EPAYLOADTYPE, -FL_EKEYUNKNOWN (no
 * keyring installed, or no signature by a keyring key), -FL_EKEYRINGEXPIRED,
 * -FL_ENOSIG (no signatures), then per signature -FL_EKEYREVOKED /
 * -FL_EKEYEXPIRED / -FL_EBADSIG (the most specific one is returned when no
 * signature is good), manifest parse errors, -FL_ENOTDELEGATED, -FL_EEXPIRED,
 * -FL_EREPLAY. Caller frees *ret with ota_manifest_free(); RET may be NULL. */
int ota_trust_verify_manifest(struct ota_trust *t, const char *envelope, size_t len, int64_t now,
			      uint64_t min_sequence, struct ota_manifest **ret);

/* The installed keyring (NULL when none); owned by T, valid until the next
 * install or ota_trust_free(). */
const struct ota_keyring *ota_trust_keyring(const struct ota_trust *t);

/* Number of roots that currently sign keyrings and the threshold in force. */
size_t ota_trust_n_roots(const struct ota_trust *t);
unsigned ota_trust_threshold(const struct ota_trust *t);

/* Sign a manifest for a bundle: validate + serialize M (ota_manifest_to_json),
 * wrap it in a DSSE envelope of type OTA_PAYLOAD_TYPE_MANIFEST signed by KEY,
 * return the envelope JSON. Caller frees *ret. */
int ota_manifest_sign(const struct ota_manifest *m, const struct ota_key *key, char **ret,
		      size_t *ret_len);

void ota_trust_free(struct ota_trust *t);

#endif
