/* Fleet PKI: a fleet CA and the X.509 certificates the broker, the devices and
 * the controllers authenticate with (mutual TLS; the broker maps a client
 * certificate's CN to its MQTT user name, see docs/broker.md).
 *
 * Layout of a PKI directory (every key file mode 0600, every write atomic):
 *   ca.crt, ca.key                      the fleet CA (P-256, self-signed)
 *   devices/<id>.crt, devices/<id>.key  one per device; CN = device id
 *   server.crt, server.key              the broker (serverAuth, DNS/IP SANs)
 *   controller.crt, controller.key      controllers (CN "flotilla-controller")
 *   controller-N.crt, controller-N.key  more instances (CN "flotilla-controller-N")
 *   revoked.txt, ca.crl                 revocation list and CRL (pki_revoke)
 *
 * All keys are ECDSA P-256 generated here with mbedTLS (CTR-DRBG seeded from
 * the OS entropy source); signatures are ECDSA with SHA-256; serial numbers are
 * 16 random bytes. A key never leaves the directory it was made in: for a key
 * made on the device, pki_csr_create() runs there and pki_issue_csr() signs the
 * request on the CA machine.
 *
 * Extensions: the CA has basicConstraints CA:TRUE (critical), keyUsage
 * keyCertSign+cRLSign; leaves have CA:FALSE, keyUsage digitalSignature,
 * extendedKeyUsage clientAuth (device, controller) or serverAuth (server),
 * subjectKeyIdentifier and authorityKeyIdentifier.
 *
 * Thread-safety: functions share no state; concurrent calls on the same
 * directory race like any two writers of the same files. */
#ifndef FLOTILLA_OTA_PKI_H
#define FLOTILLA_OTA_PKI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PKI_NAME_MAX_LEN 64              /* X.509 upper bound of a CN */
#define PKI_MAX_SANS 16                  /* DNS names + IP addresses per cert */
#define PKI_FILE_MAX_BYTES (64 * 1024)   /* cert / key / CSR input limit */
#define PKI_DAYS_MAX 36500               /* |days| limit */
#define PKI_CA_DAYS_DEFAULT 3650
#define PKI_LEAF_DAYS_DEFAULT 825
#define PKI_BACKDATE_S 300               /* default not-before = now - 5 min (clock skew) */
#define PKI_CONTROLLER_CN "flotilla-controller"
#define PKI_RESERVED_PREFIX "flotilla-" /* no device id starts with it */
#define PKI_CA_CN_DEFAULT "Flotilla Fleet CA"
#define PKI_SERVER_CN_DEFAULT "flotilla-broker"

enum pki_kind {
	PKI_KIND_ANY = 0, /* pki_verify(): do not check the usage */
	PKI_KIND_CA,
	PKI_KIND_DEVICE,     /* clientAuth, CN = device id */
	PKI_KIND_SERVER,     /* serverAuth */
	PKI_KIND_CONTROLLER, /* clientAuth */
};

/* Issue options. Zero-initialise, then set what you need.
 * Validity: with not_before_s / not_after_s (epoch seconds, non-zero) the
 * window is exactly that. Otherwise not-before is now - PKI_BACKDATE_S and
 * DAYS (0: the kind's default) sets the length; a NEGATIVE days makes a
 * certificate that expired |days| days ago (valid for the 30 days before
 * that): for tests of expiry handling. */
struct pki_opts {
	int64_t days;
	int64_t not_before_s;
	int64_t not_after_s;
	const char *dns[PKI_MAX_SANS]; /* server SANs (also allowed on other leaves) */
	size_t n_dns;
	const char *ip[PKI_MAX_SANS]; /* dotted IPv4 or IPv6 text */
	size_t n_ip;
	const char *cn;   /* pki_init: CA name; controller/server: CN override */
	const char *out;  /* server/controller: base name in DIR instead of "server"/"controller" */
	bool force;       /* replace existing files instead of failing with -EEXIST */
};

/* Make a fleet CA in DIR (created 0755 if missing): ca.key (0600) and ca.crt.
 * OPTS may be NULL. The CA name (opts->cn) is 1..64 of [A-Za-z0-9 ._-].
 * -EEXIST when ca.key or ca.crt exists and !opts->force; -EINVAL / -FL_ERANGE
 * for bad options; other negative errno for I/O. On error no file is left. */
int pki_init(const char *dir, const struct pki_opts *opts);

/* Issue a leaf of KIND (DEVICE, SERVER or CONTROLLER) signed by DIR's CA,
 * with a new key pair. NAME: for DEVICE the device id (fl_name_valid(id,
 * PKI_NAME_MAX_LEN) and not starting with PKI_RESERVED_PREFIX, else -EINVAL:
 * the broker ACL gives the controller's CN every topic), the CN; for SERVER / CONTROLLER the CN
 * (NULL: opts->cn or the default); a CONTROLLER's CN is PKI_CONTROLLER_CN or
 * PKI_CONTROLLER_CN "-" suffix (one certificate per running instance; the
 * broker ACL lists these names, see docs/broker.md), else -EINVAL. Files: devices/<id>.{crt,key},
 * <out|server>.{crt,key}, <out|controller>.{crt,key}.
 * If ret_crt_path is not NULL it gets the certificate's path (caller frees).
 * Errors: -EEXIST (key exists and !force), -EINVAL (bad name/kind/SAN),
 * -FL_ERANGE (bad validity), -FL_EKEY (CA key unreadable, not P-256 or not
 * matching ca.crt, or a certificate that would not chain to it),
 * -FL_EUNSUPPORTED (the CA's subject has attributes mbedTLS cannot write),
 * -FL_EFORMAT (ca.crt unparsable), -FL_ETOOBIG, -errno.
 * Bad input changes no file. */
int pki_issue(const char *dir, enum pki_kind kind, const char *name, const struct pki_opts *opts,
	      char **ret_crt_path);

/* Device side of the CSR flow: write a PEM CSR for device ID (CN = ID) to
 * CSR_PATH, signed by the key at KEY_PATH. When KEY_PATH does not exist a new
 * P-256 key is generated and saved there (0600) first. -EINVAL bad id,
 * -FL_EKEY key unusable, -errno I/O. */
int pki_csr_create(const char *id, const char *key_path, const char *csr_path);

/* CA side of the CSR flow: verify the CSR at CSR_PATH (its self-signature,
 * P-256 key, CN equal to ID) and write devices/<ID>.crt signed by DIR's CA.
 * No key file is written: the device keeps its key. -FL_EFORMAT unparsable
 * CSR, -FL_EBADSIG its signature does not verify, -FL_EUNSUPPORTED its key is
 * not P-256, -EINVAL bad id or CN != ID, -EEXIST cert exists and !force, errors of
 * pki_issue(). ret_crt_path as pki_issue(). */
int pki_issue_csr(const char *dir, const char *id, const char *csr_path,
		  const struct pki_opts *opts, char **ret_crt_path);

/* What pki_verify() learnt about a certificate. */
struct pki_cert_info {
	char cn[PKI_NAME_MAX_LEN + 1];
	int64_t not_before_s;
	int64_t not_after_s;
	bool is_ca;
	char serial_hex[2 * 20 + 1];
};

/* Verify the certificate at CRT_PATH against the CA certificate at CA_PATH,
 * at the current time. HOST (may be NULL) must match a SAN (or the CN when the
 * cert has no SAN). KIND != PKI_KIND_ANY also checks the extended key usage.
 * Returns 0 when valid; -FL_EKEYUNKNOWN not issued by this CA; -FL_EKEYEXPIRED
 * expired or not yet valid; -FL_EBADSIG any other failure (host name mismatch,
 * wrong usage, bad signature); -FL_EFORMAT unparsable; -errno I/O. When the
 * certificate parses, *info (if not NULL) is filled, even on a
 * verification failure (so a caller can report the CN and dates): INFO is an
 * out-parameter that is NOT only written on success. */
int pki_verify(const char *ca_path, const char *crt_path, const char *host, enum pki_kind kind,
	       struct pki_cert_info *info);

/* ---- revocation (ota/src/crl.c, written with OpenSSL: mbedTLS 2.28 cannot
 * write CRLs) ----
 *
 * DIR/revoked.txt lists the revoked serials, one "SERIAL EPOCH [CN]" a line
 * (lowercase hex without leading zeros, the revocation time, the CN when
 * known); DIR/ca.crl is the X.509 v2 CRL (PEM) made from it, signed by the
 * CA key with ECDSA-SHA256, with crlNumber (the issue time in seconds, kept
 * increasing), authorityKeyIdentifier, thisUpdate = now and nextUpdate =
 * now + DAYS. A CRL must be re-issued (pki_crl_write) before nextUpdate: a
 * broker with an expired CRL refuses every client. */
#define PKI_CRL_DAYS_DEFAULT 30
#define PKI_REVOKED_MAX 100000 /* entries in revoked.txt */
#define PKI_SERIAL_HEX_MAX 40  /* 20 bytes (RFC 5280) */

/* Add a certificate to DIR's revocation list and re-issue DIR/ca.crl.
 * Exactly one of ID (device id: the serial of DIR/devices/<ID>.crt) and
 * SERIAL_HEX (hex, optional "0x", ':' separators allowed) is given. DAYS: CRL
 * validity (0: PKI_CRL_DAYS_DEFAULT). The normalised serial goes to
 * ret_serial (may be NULL). Already listed: the CRL is re-issued and
 * -EALREADY returned. Errors: -EINVAL (bad id/serial/days), -ENOENT (no such
 * device certificate), -FL_EFORMAT (unparsable certificate or revoked.txt),
 * -FL_EKEY (CA key unusable / not matching ca.crt), -FL_ETOOBIG, -errno. On
 * error neither file changes. */
int pki_revoke(const char *dir, const char *id, const char *serial_hex, int64_t days,
	       char ret_serial[PKI_SERIAL_HEX_MAX + 1]);

/* Re-issue DIR/ca.crl from DIR/revoked.txt (a missing list is an empty CRL)
 * with nextUpdate now + DAYS (0: default). Errors as pki_revoke(). */
int pki_crl_write(const char *dir, int64_t days);

struct pki_crl_info {
	int64_t this_update_s;
	int64_t next_update_s;
	size_t n_revoked;
	int64_t revoked_at_s; /* when the checked certificate was revoked */
};

/* Check the certificate at CRT_PATH against the CRL at CRL_PATH, which must be
 * signed by the CA at CA_PATH and current. 0: not revoked;
 * -FL_EKEYREVOKED: listed (info->revoked_at_s set); -FL_EBADSIG: the CRL is
 * not signed by this CA (or names another issuer); -FL_EEXPIRED: the CRL is
 * past its nextUpdate (or not yet valid); -FL_EFORMAT: unparsable file;
 * -errno. INFO (may be NULL) is filled as far as the CRL parsed. */
int pki_crl_check(const char *ca_path, const char *crl_path, const char *crt_path,
		  struct pki_crl_info *info);

#endif
