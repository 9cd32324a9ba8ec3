/* Fleet PKI: CA, leaf certificates and CSRs written with mbedTLS 2.28.
 *
 * mbedTLS 2.28 has no writer for subjectAltName or extendedKeyUsage, and its
 * basicConstraints writer marks the extension non-critical; those three are
 * DER-encoded here and added with mbedtls_x509write_crt_set_extension(). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/pki.h>
#include <flotilla/util.h>

#define PEM_BUF_BYTES 4096
#define EXT_BUF_BYTES 2048
#define DNS_NAME_MAX_LEN 253
#define DAY_S 86400
#define EXPIRED_WINDOW_DAYS 30
#define TIME_MAX_S 253402300799LL /* 9999-12-31T23:59:59Z */
#define SERIAL_BYTES 16

/* ---- small mbedTLS wrappers with cleanup ---- */

struct rng {
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
};

static void rng_freep(struct rng *r)
{
	mbedtls_ctr_drbg_free(&r->drbg);
	mbedtls_entropy_free(&r->entropy);
}
#define _cleanup_rng_ _cleanup_(rng_freep)

static int rng_init(struct rng *r)
{
	static const char pers[] = "flotilla-pki";
	mbedtls_entropy_init(&r->entropy);
	mbedtls_ctr_drbg_init(&r->drbg);
	if (mbedtls_ctr_drbg_seed(&r->drbg, mbedtls_entropy_func, &r->entropy,
				  (const unsigned char *)pers, sizeof(pers) - 1) != 0)
		return -EIO;
	return 0;
}

static void pk_freep(mbedtls_pk_context *pk) { mbedtls_pk_free(pk); }
#define _cleanup_pk_ _cleanup_(pk_freep)
static void crt_freep(mbedtls_x509_crt *c) { mbedtls_x509_crt_free(c); }
#define _cleanup_crt_ _cleanup_(crt_freep)
static void csr_freep(mbedtls_x509_csr *c) { mbedtls_x509_csr_free(c); }
#define _cleanup_csr_ _cleanup_(csr_freep)
static void wcrt_freep(mbedtls_x509write_cert *c) { mbedtls_x509write_crt_free(c); }
#define _cleanup_wcrt_ _cleanup_(wcrt_freep)
static void wcsr_freep(mbedtls_x509write_csr *c) { mbedtls_x509write_csr_free(c); }
#define _cleanup_wcsr_ _cleanup_(wcsr_freep)
static void mpi_freep(mbedtls_mpi *m) { mbedtls_mpi_free(m); }
#define _cleanup_mpi_ _cleanup_(mpi_freep)

/* Heap buffer that held key material: zeroed before free. */
struct secret {
	unsigned char *p;
	size_t len;
};
static void secret_freep(struct secret *s)
{
	if (s->p) {
		mbedtls_platform_zeroize(s->p, s->len);
		free(s->p);
	}
}
#define _cleanup_secret_ _cleanup_(secret_freep)

static bool pk_is_p256(const mbedtls_pk_context *pk)
{
	if (mbedtls_pk_get_type(pk) != MBEDTLS_PK_ECKEY)
		return false;
	return mbedtls_pk_ec(*pk)->grp.id == MBEDTLS_ECP_DP_SECP256R1;
}

static int key_generate(mbedtls_pk_context *pk, struct rng *r)
{
	if (mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) != 0)
		return -ENOMEM;
	if (mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk), mbedtls_ctr_drbg_random,
				&r->drbg) != 0)
		return -FL_EKEY;
	return 0;
}

/* PEM text of PK's private key in S (zeroed on free). */
static int key_to_pem(mbedtls_pk_context *pk, struct secret *s)
{
	s->len = PEM_BUF_BYTES;
	s->p = calloc(1, s->len);
	if (!s->p)
		return -ENOMEM;
	if (mbedtls_pk_write_key_pem(pk, s->p, s->len) != 0)
		return -FL_EKEY;
	return 0;
}

static int file_exists(const char *path)
{
	struct stat st;
	if (lstat(path, &st) == 0)
		return 1;
	return errno == ENOENT ? 0 : -errno;
}

/* Read a PEM/DER file of at most PKI_FILE_MAX_BYTES; the buffer is
 * NUL-terminated and the returned length counts that NUL when the data is PEM,
 * as mbedTLS's PEM parsers want. */
static int read_input(const char *path, struct secret *s)
{
	char *data = NULL;
	size_t len = 0;
	int r = fl_read_file(path, PKI_FILE_MAX_BYTES, &data, &len);
	if (r < 0)
		return r;
	s->p = (unsigned char *)data;
	s->len = len;
	if (memchr(data, '\0', len) == NULL && strstr(data, "-----BEGIN ") != NULL)
		s->len = len + 1;
	return 0;
}

static int key_load(const char *path, mbedtls_pk_context *pk)
{
	_cleanup_secret_ struct secret s = {0};
	int r = read_input(path, &s);
	if (r < 0)
		return r;
	if (mbedtls_pk_parse_key(pk, s.p, s.len, NULL, 0) != 0)
		return -FL_EKEY;
	if (!pk_is_p256(pk))
		return -FL_EKEY;
	return 0;
}

/* ---- names, times, options ---- */

static bool ca_name_valid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > PKI_NAME_MAX_LEN || s[0] == ' ' || s[n - 1] == ' ')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == ' ' || c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* A DNS name or wildcard label: letters, digits, '-', '.', leading "*." */
static bool dns_name_valid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > DNS_NAME_MAX_LEN)
		return false;
	if (!strncmp(s, "*.", 2))
		s += 2;
	if (*s == '\0' || *s == '.' || *s == '-')
		return false;
	for (; *s; s++) {
		char c = *s;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '-'))
			return false;
	}
	return true;
}

/* Text IPv4/IPv6 into 4 or 16 bytes; returns the length or -EINVAL. */
static int ip_parse(const char *s, unsigned char out[16])
{
	if (inet_pton(AF_INET, s, out) == 1)
		return 4;
	if (inet_pton(AF_INET6, s, out) == 1)
		return 16;
	return -EINVAL;
}

static int time_x509(int64_t t, char out[15])
{
	if (t < 0 || t > TIME_MAX_S)
		return -FL_ERANGE;
	time_t tt = (time_t)t;
	struct tm tm;
	if (!gmtime_r(&tt, &tm))
		return -FL_ERANGE;
	if (strftime(out, 15, "%Y%m%d%H%M%S", &tm) != 14)
		return -FL_ERANGE;
	return 0;
}

static int64_t x509_time_epoch(const mbedtls_x509_time *t)
{
	struct tm tm = {
		.tm_year = t->year - 1900,
		.tm_mon = t->mon - 1,
		.tm_mday = t->day,
		.tm_hour = t->hour,
		.tm_min = t->min,
		.tm_sec = t->sec,
	};
	return (int64_t)timegm(&tm);
}

struct validity {
	char from[15], to[15];
};

static int validity_compute(enum pki_kind kind, const struct pki_opts *o, struct validity *v)
{
	int64_t days = o->days;
	if (days > PKI_DAYS_MAX || days < -PKI_DAYS_MAX)
		return -FL_ERANGE;
	if (days == 0)
		days = kind == PKI_KIND_CA ? PKI_CA_DAYS_DEFAULT : PKI_LEAF_DAYS_DEFAULT;
	int64_t now = fl_now_s(), from, to;
	if (days > 0) {
		from = now - PKI_BACKDATE_S;
		to = from + days * DAY_S;
	} else {
		to = now + days * DAY_S;
		from = to - EXPIRED_WINDOW_DAYS * DAY_S;
	}
	if (o->not_before_s) {
		from = o->not_before_s;
		if (!o->not_after_s && days > 0)
			to = from + days * DAY_S;
	}
	if (o->not_after_s)
		to = o->not_after_s;
	if (from >= to)
		return -FL_ERANGE;
	int r = time_x509(from, v->from);
	if (r < 0)
		return r;
	return time_x509(to, v->to);
}

static int opts_check_sans(const struct pki_opts *o)
{
	if (o->n_dns > PKI_MAX_SANS || o->n_ip > PKI_MAX_SANS)
		return -FL_ETOOBIG;
	for (size_t i = 0; i < o->n_dns; i++)
		if (!o->dns[i] || !dns_name_valid(o->dns[i]))
			return -EINVAL;
	unsigned char ip[16];
	for (size_t i = 0; i < o->n_ip; i++)
		if (!o->ip[i] || ip_parse(o->ip[i], ip) < 0)
			return -EINVAL;
	return 0;
}

/* ---- DER for the extensions mbedTLS 2.28 cannot write ---- */

static int der_basic_constraints(bool is_ca, unsigned char *buf, size_t size, size_t *ret_len)
{
	unsigned char *p = buf + size;
	size_t len = 0;
	int ret;
	if (is_ca) {
		/* pathLenConstraint 0: the fleet CA signs leaves only. */
		MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_int(&p, buf, 0));
		MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_bool(&p, buf, 1));
	}
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf,
							 MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
	memmove(buf, p, len);
	*ret_len = len;
	return 0;
}

static int der_eku(const char *oid, size_t oid_len, unsigned char *buf, size_t size,
		   size_t *ret_len)
{
	unsigned char *p = buf + size;
	size_t len = 0;
	int ret;
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_oid(&p, buf, oid, oid_len));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf,
							 MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
	memmove(buf, p, len);
	*ret_len = len;
	return 0;
}

static int der_san_entry(unsigned char **p, unsigned char *buf, int tag, const void *data,
			 size_t data_len)
{
	size_t len = 0;
	int ret;
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_raw_buffer(p, buf, data, data_len));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(p, buf, len));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(p, buf,
							 (unsigned char)(MBEDTLS_ASN1_CONTEXT_SPECIFIC | tag)));
	return (int)len;
}

/* GeneralNames: dNSName [2] IA5String, iPAddress [7] OCTET STRING. */
static int der_san(const struct pki_opts *o, unsigned char *buf, size_t size, size_t *ret_len)
{
	unsigned char *p = buf + size;
	size_t len = 0;
	int ret;
	for (size_t i = o->n_ip; i-- > 0;) {
		unsigned char ip[16];
		int n = ip_parse(o->ip[i], ip);
		if (n < 0)
			return n;
		MBEDTLS_ASN1_CHK_ADD(len, der_san_entry(&p, buf, 7, ip, (size_t)n));
	}
	for (size_t i = o->n_dns; i-- > 0;)
		MBEDTLS_ASN1_CHK_ADD(len, der_san_entry(&p, buf, 2, o->dns[i], strlen(o->dns[i])));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf,
							 MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
	memmove(buf, p, len);
	*ret_len = len;
	return 0;
}

/* ---- certificate writing ---- */

struct signer {
	mbedtls_pk_context *key; /* issuer private key */
	const char *issuer_name; /* issuer DN string */
};

/* Sign a certificate for SUBJECT_KEY; PEM into *ret (caller frees). */
static int cert_write(const struct signer *s, mbedtls_pk_context *subject_key, const char *subject,
		      enum pki_kind kind, const struct pki_opts *o, struct rng *r, char **ret)
{
	struct validity v;
	int rc = validity_compute(kind, o, &v);
	if (rc < 0)
		return rc;

	_cleanup_wcrt_ mbedtls_x509write_cert w;
	mbedtls_x509write_crt_init(&w);
	_cleanup_mpi_ mbedtls_mpi serial;
	mbedtls_mpi_init(&serial);

	unsigned char sn[SERIAL_BYTES];
	if (mbedtls_ctr_drbg_random(&r->drbg, sn, sizeof(sn)) != 0)
		return -EIO;
	/* Positive and exactly SERIAL_BYTES long once DER-encoded. */
	sn[0] = (unsigned char)((sn[0] & 0x7f) | 0x40);
	if (mbedtls_mpi_read_binary(&serial, sn, sizeof(sn)) != 0)
		return -ENOMEM;

	mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
	mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
	mbedtls_x509write_crt_set_subject_key(&w, subject_key);
	mbedtls_x509write_crt_set_issuer_key(&w, s->key);
	if (mbedtls_x509write_crt_set_serial(&w, &serial) != 0 ||
	    mbedtls_x509write_crt_set_validity(&w, v.from, v.to) != 0)
		return -FL_ERANGE;
	if (mbedtls_x509write_crt_set_subject_name(&w, subject) != 0)
		return -EINVAL;
	/* A CA made by another tool may carry attributes mbedTLS cannot write. */
	if (mbedtls_x509write_crt_set_issuer_name(&w, s->issuer_name) != 0)
		return -FL_EUNSUPPORTED;

	unsigned char ext[EXT_BUF_BYTES];
	size_t ext_len;
	bool is_ca = kind == PKI_KIND_CA;
	if (der_basic_constraints(is_ca, ext, sizeof(ext), &ext_len) != 0 ||
	    mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_BASIC_CONSTRAINTS,
						MBEDTLS_OID_SIZE(MBEDTLS_OID_BASIC_CONSTRAINTS), 1, ext,
						ext_len) != 0)
		return -ENOMEM;
	unsigned int ku = is_ca ? (MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN)
				: MBEDTLS_X509_KU_DIGITAL_SIGNATURE;
	if (mbedtls_x509write_crt_set_key_usage(&w, ku) != 0)
		return -ENOMEM;
	if (!is_ca) {
		int eku_rc;
		if (kind == PKI_KIND_SERVER)
			eku_rc = der_eku(MBEDTLS_OID_SERVER_AUTH,
					 MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH), ext, sizeof(ext),
					 &ext_len);
		else
			eku_rc = der_eku(MBEDTLS_OID_CLIENT_AUTH,
					 MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH), ext, sizeof(ext),
					 &ext_len);
		if (eku_rc != 0 ||
		    mbedtls_x509write_crt_set_extension(
			    &w, MBEDTLS_OID_EXTENDED_KEY_USAGE,
			    MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0, ext, ext_len) != 0)
			return -ENOMEM;
		if (o->n_dns + o->n_ip > 0) {
			if (der_san(o, ext, sizeof(ext), &ext_len) != 0)
				return -FL_ETOOBIG;
			if (mbedtls_x509write_crt_set_extension(
				    &w, MBEDTLS_OID_SUBJECT_ALT_NAME,
				    MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0, ext, ext_len) != 0)
				return -ENOMEM;
		}
	}
	if (mbedtls_x509write_crt_set_subject_key_identifier(&w) != 0 ||
	    mbedtls_x509write_crt_set_authority_key_identifier(&w) != 0)
		return -ENOMEM;

	_cleanup_free_ unsigned char *pem = calloc(1, PEM_BUF_BYTES);
	if (!pem)
		return -ENOMEM;
	if (mbedtls_x509write_crt_pem(&w, pem, PEM_BUF_BYTES, mbedtls_ctr_drbg_random, &r->drbg) != 0)
		return -FL_EKEY;
	*ret = (char *)fl_steal_ptr(pem);
	return 0;
}

/* The CA of DIR, loaded and checked (key is P-256 and matches the cert). */
struct ca {
	mbedtls_x509_crt crt;
	mbedtls_pk_context key;
	char name[512];
};

static void ca_freep(struct ca *ca)
{
	mbedtls_x509_crt_free(&ca->crt);
	mbedtls_pk_free(&ca->key);
}
#define _cleanup_ca_ _cleanup_(ca_freep)

static int ca_load(const char *dir, struct ca *ca)
{
	_cleanup_free_ char *crt_path = fl_path_join(dir, "ca.crt");
	_cleanup_free_ char *key_path = fl_path_join(dir, "ca.key");
	if (!crt_path || !key_path)
		return -ENOMEM;
	_cleanup_secret_ struct secret s = {0};
	int r = read_input(crt_path, &s);
	if (r < 0)
		return r;
	if (mbedtls_x509_crt_parse(&ca->crt, s.p, s.len) != 0)
		return -FL_EFORMAT;
	if (!ca->crt.ca_istrue)
		return -FL_EKEY;
	r = key_load(key_path, &ca->key);
	if (r < 0)
		return r;
	if (mbedtls_pk_check_pair(&ca->crt.pk, &ca->key) != 0)
		return -FL_EKEY;
	/* mbedTLS's own cert_write example round-trips the issuer DN the same
	 * way; pki_init() only makes names that survive it. */
	if (mbedtls_x509_dn_gets(ca->name, sizeof(ca->name), &ca->crt.subject) < 0)
		return -FL_EFORMAT;
	return 0;
}

/* The new certificate must chain to the CA: catches a CA subject that does
 * not survive the DN round trip (a CA made by another tool). Validity is not
 * judged here: expired and future certificates are made on purpose. */
static int chain_check(struct ca *ca, const char *crt_pem)
{
	_cleanup_crt_ mbedtls_x509_crt crt;
	mbedtls_x509_crt_init(&crt);
	if (mbedtls_x509_crt_parse(&crt, (const unsigned char *)crt_pem, strlen(crt_pem) + 1) != 0)
		return -FL_EFORMAT;
	uint32_t flags = 0;
	int r = mbedtls_x509_crt_verify(&crt, &ca->crt, NULL, NULL, &flags, NULL, NULL);
	flags &= ~(uint32_t)(MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE);
	if (flags != 0 || (r != 0 && r != MBEDTLS_ERR_X509_CERT_VERIFY_FAILED))
		return -FL_EKEY;
	return 0;
}

/* ---- files ---- */

/* Write KEY_PEM (0600) then CRT_PEM (0644); if the certificate cannot be
 * written the fresh key is removed again. KEY_PATH NULL: certificate only. */
static int write_pair(const char *key_path, const struct secret *key_pem, const char *crt_path,
		      const char *crt_pem)
{
	int r;
	if (key_path) {
		r = fl_write_file_atomic(key_path, key_pem->p, strlen((const char *)key_pem->p),
					 0600);
		if (r < 0)
			return r;
	}
	r = fl_write_file_atomic(crt_path, crt_pem, strlen(crt_pem), 0644);
	if (r < 0 && key_path)
		unlink(key_path);
	return r;
}

static int check_absent(const char *path, bool force)
{
	int e = file_exists(path);
	if (e < 0)
		return e;
	if (e && !force)
		return -EEXIST;
	return 0;
}

int pki_init(const char *dir, const struct pki_opts *opts)
{
	static const struct pki_opts defaults = {0};
	const struct pki_opts *o = opts ? opts : &defaults;
	if (!dir || !*dir)
		return -EINVAL;
	const char *cn = o->cn ? o->cn : PKI_CA_CN_DEFAULT;
	if (!ca_name_valid(cn))
		return -EINVAL;
	struct validity v;
	int r = validity_compute(PKI_KIND_CA, o, &v);
	if (r < 0)
		return r;

	_cleanup_free_ char *crt_path = fl_path_join(dir, "ca.crt");
	_cleanup_free_ char *key_path = fl_path_join(dir, "ca.key");
	if (!crt_path || !key_path)
		return -ENOMEM;
	if ((r = check_absent(crt_path, o->force)) < 0 || (r = check_absent(key_path, o->force)) < 0)
		return r;

	char subject[PKI_NAME_MAX_LEN + 32];
	r = fl_snprintf(subject, sizeof(subject), "CN=%s,O=Flotilla", cn);
	if (r < 0)
		return r;

	_cleanup_rng_ struct rng rng = {0};
	if ((r = rng_init(&rng)) < 0)
		return r;
	_cleanup_pk_ mbedtls_pk_context key;
	mbedtls_pk_init(&key);
	if ((r = key_generate(&key, &rng)) < 0)
		return r;
	struct signer self = {.key = &key, .issuer_name = subject};
	_cleanup_free_ char *crt_pem = NULL;
	if ((r = cert_write(&self, &key, subject, PKI_KIND_CA, o, &rng, &crt_pem)) < 0)
		return r;
	_cleanup_secret_ struct secret key_pem = {0};
	if ((r = key_to_pem(&key, &key_pem)) < 0)
		return r;
	if ((r = fl_mkdir_p(dir, 0755)) < 0)
		return r;
	return write_pair(key_path, &key_pem, crt_path, crt_pem);
}

/* Paths of a leaf's files (caller frees both). */
static int leaf_paths(const char *dir, enum pki_kind kind, const char *id, const char *out,
		      char **ret_crt, char **ret_key)
{
	char *crt = NULL, *key = NULL;
	if (kind == PKI_KIND_DEVICE) {
		crt = fl_asprintf("%s/devices/%s.crt", dir, id);
		key = fl_asprintf("%s/devices/%s.key", dir, id);
	} else {
		const char *base = out ? out : kind == PKI_KIND_SERVER ? "server" : "controller";
		crt = fl_asprintf("%s/%s.crt", dir, base);
		key = fl_asprintf("%s/%s.key", dir, base);
	}
	if (!crt || !key) {
		free(crt);
		free(key);
		return -ENOMEM;
	}
	*ret_crt = crt;
	*ret_key = key;
	return 0;
}

static int leaf_check(enum pki_kind kind, const char *name, const struct pki_opts *o,
		      const char **ret_cn)
{
	const char *cn = name;
	switch (kind) {
	case PKI_KIND_DEVICE:
		/* Reserved for infrastructure identities: the ACL grants the
		 * controller's CN everything. */
		if (name && !strncmp(name, PKI_RESERVED_PREFIX, strlen(PKI_RESERVED_PREFIX)))
			return -EINVAL;
		break;
	case PKI_KIND_SERVER:
		cn = name ? name : o->cn ? o->cn : PKI_SERVER_CN_DEFAULT;
		break;
	case PKI_KIND_CONTROLLER:
		cn = name ? name : o->cn ? o->cn : PKI_CONTROLLER_CN;
		/* flotilla-controller or flotilla-controller-N: the names the
		 * broker ACL generator (gen-acl.sh) grants the controller topics. */
		if (strncmp(cn, PKI_CONTROLLER_CN, strlen(PKI_CONTROLLER_CN)) != 0 ||
		    (cn[strlen(PKI_CONTROLLER_CN)] != '\0' && cn[strlen(PKI_CONTROLLER_CN)] != '-'))
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	if (!fl_name_valid(cn, PKI_NAME_MAX_LEN))
		return -EINVAL;
	if (o->out && (kind == PKI_KIND_DEVICE || !fl_name_valid(o->out, PKI_NAME_MAX_LEN)))
		return -EINVAL;
	int r = opts_check_sans(o);
	if (r < 0)
		return r;
	*ret_cn = cn;
	return 0;
}

int pki_issue(const char *dir, enum pki_kind kind, const char *name, const struct pki_opts *opts,
	      char **ret_crt_path)
{
	static const struct pki_opts defaults = {0};
	const struct pki_opts *o = opts ? opts : &defaults;
	if (!dir || !*dir)
		return -EINVAL;
	const char *cn;
	int r = leaf_check(kind, name, o, &cn);
	if (r < 0)
		return r;
	struct validity v;
	if ((r = validity_compute(kind, o, &v)) < 0)
		return r;
	/* A server without SANs gets its CN as DNS name: TLS clients match the
	 * host against the SANs only. */
	struct pki_opts san_opts = *o;
	if (kind == PKI_KIND_SERVER && o->n_dns == 0 && o->n_ip == 0) {
		san_opts.dns[0] = cn;
		san_opts.n_dns = 1;
	}

	_cleanup_free_ char *crt_path = NULL;
	_cleanup_free_ char *key_path = NULL;
	if ((r = leaf_paths(dir, kind, cn, o->out, &crt_path, &key_path)) < 0)
		return r;
	if ((r = check_absent(key_path, o->force)) < 0 || (r = check_absent(crt_path, o->force)) < 0)
		return r;

	_cleanup_ca_ struct ca ca;
	mbedtls_x509_crt_init(&ca.crt);
	mbedtls_pk_init(&ca.key);
	if ((r = ca_load(dir, &ca)) < 0)
		return r;

	char subject[PKI_NAME_MAX_LEN + 8];
	if ((r = fl_snprintf(subject, sizeof(subject), "CN=%s", cn)) < 0)
		return r;
	_cleanup_rng_ struct rng rng = {0};
	if ((r = rng_init(&rng)) < 0)
		return r;
	_cleanup_pk_ mbedtls_pk_context key;
	mbedtls_pk_init(&key);
	if ((r = key_generate(&key, &rng)) < 0)
		return r;
	struct signer s = {.key = &ca.key, .issuer_name = ca.name};
	_cleanup_free_ char *crt_pem = NULL;
	if ((r = cert_write(&s, &key, subject, kind, &san_opts, &rng, &crt_pem)) < 0)
		return r;
	if ((r = chain_check(&ca, crt_pem)) < 0)
		return r;
	_cleanup_secret_ struct secret key_pem = {0};
	if ((r = key_to_pem(&key, &key_pem)) < 0)
		return r;
	if (kind == PKI_KIND_DEVICE) {
		_cleanup_free_ char *devdir = fl_path_join(dir, "devices");
		if (!devdir)
			return -ENOMEM;
		if ((r = fl_mkdir_p(devdir, 0755)) < 0)
			return r;
	}
	if ((r = write_pair(key_path, &key_pem, crt_path, crt_pem)) < 0)
		return r;
	if (ret_crt_path)
		*ret_crt_path = fl_steal_ptr(crt_path);
	return 0;
}

int pki_csr_create(const char *id, const char *key_path, const char *csr_path)
{
	if (!id || !fl_name_valid(id, PKI_NAME_MAX_LEN) || !key_path || !csr_path)
		return -EINVAL;
	_cleanup_rng_ struct rng rng = {0};
	int r = rng_init(&rng);
	if (r < 0)
		return r;
	_cleanup_pk_ mbedtls_pk_context key;
	mbedtls_pk_init(&key);
	int e = file_exists(key_path);
	if (e < 0)
		return e;
	bool new_key = !e;
	if (new_key)
		r = key_generate(&key, &rng);
	else
		r = key_load(key_path, &key);
	if (r < 0)
		return r;

	char subject[PKI_NAME_MAX_LEN + 8];
	if ((r = fl_snprintf(subject, sizeof(subject), "CN=%s", id)) < 0)
		return r;
	_cleanup_wcsr_ mbedtls_x509write_csr w;
	mbedtls_x509write_csr_init(&w);
	mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
	mbedtls_x509write_csr_set_key(&w, &key);
	if (mbedtls_x509write_csr_set_subject_name(&w, subject) != 0)
		return -EINVAL;
	_cleanup_free_ unsigned char *pem = calloc(1, PEM_BUF_BYTES);
	if (!pem)
		return -ENOMEM;
	if (mbedtls_x509write_csr_pem(&w, pem, PEM_BUF_BYTES, mbedtls_ctr_drbg_random, &rng.drbg) != 0)
		return -FL_EKEY;
	if (new_key) {
		_cleanup_secret_ struct secret key_pem = {0};
		if ((r = key_to_pem(&key, &key_pem)) < 0)
			return r;
		return write_pair(key_path, &key_pem, csr_path, (const char *)pem);
	}
	return fl_write_file_atomic(csr_path, pem, strlen((const char *)pem), 0644);
}

/* The single CN of NAME, or -EINVAL (none, several, too long). */
static int name_cn(const mbedtls_x509_name *name, char out[PKI_NAME_MAX_LEN + 1])
{
	int found = 0;
	for (const mbedtls_x509_name *n = name; n; n = n->next) {
		if (!n->oid.p || MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) != 0)
			continue;
		if (found++ || n->val.len > PKI_NAME_MAX_LEN ||
		    memchr(n->val.p, '\0', n->val.len) != NULL)
			return -EINVAL;
		memcpy(out, n->val.p, n->val.len);
		out[n->val.len] = '\0';
	}
	return found == 1 ? 0 : -EINVAL;
}

static int csr_check(const mbedtls_x509_csr *csr, const char *id)
{
	if (!pk_is_p256(&csr->pk))
		return -FL_EUNSUPPORTED;
	if (csr->sig_md != MBEDTLS_MD_SHA256 && csr->sig_md != MBEDTLS_MD_SHA384 &&
	    csr->sig_md != MBEDTLS_MD_SHA512)
		return -FL_EBADSIG;
	const mbedtls_md_info_t *md = mbedtls_md_info_from_type(csr->sig_md);
	unsigned char hash[MBEDTLS_MD_MAX_SIZE];
	if (!md || mbedtls_md(md, csr->cri.p, csr->cri.len, hash) != 0)
		return -FL_EBADSIG;
	/* mbedtls_x509_csr_parse() does not check the self-signature. */
	if (mbedtls_pk_verify_ext(csr->sig_pk, csr->sig_opts, (mbedtls_pk_context *)&csr->pk,
				  csr->sig_md, hash, mbedtls_md_get_size(md), csr->sig.p,
				  csr->sig.len) != 0)
		return -FL_EBADSIG;
	char cn[PKI_NAME_MAX_LEN + 1];
	int r = name_cn(&csr->subject, cn);
	if (r < 0)
		return r;
	return strcmp(cn, id) == 0 ? 0 : -EINVAL;
}

int pki_issue_csr(const char *dir, const char *id, const char *csr_path,
		  const struct pki_opts *opts, char **ret_crt_path)
{
	static const struct pki_opts defaults = {0};
	const struct pki_opts *o = opts ? opts : &defaults;
	if (!dir || !*dir || !csr_path)
		return -EINVAL;
	const char *cn;
	int r = leaf_check(PKI_KIND_DEVICE, id, o, &cn);
	if (r < 0)
		return r;
	struct validity v;
	if ((r = validity_compute(PKI_KIND_DEVICE, o, &v)) < 0)
		return r;

	_cleanup_csr_ mbedtls_x509_csr csr;
	mbedtls_x509_csr_init(&csr);
	{
		_cleanup_secret_ struct secret s = {0};
		if ((r = read_input(csr_path, &s)) < 0)
			return r;
		if (mbedtls_x509_csr_parse(&csr, s.p, s.len) != 0)
			return -FL_EFORMAT;
	}
	if ((r = csr_check(&csr, id)) < 0)
		return r;

	_cleanup_free_ char *crt_path = NULL;
	_cleanup_free_ char *key_path = NULL;
	if ((r = leaf_paths(dir, PKI_KIND_DEVICE, id, NULL, &crt_path, &key_path)) < 0)
		return r;
	if ((r = check_absent(crt_path, o->force)) < 0)
		return r;

	_cleanup_ca_ struct ca ca;
	mbedtls_x509_crt_init(&ca.crt);
	mbedtls_pk_init(&ca.key);
	if ((r = ca_load(dir, &ca)) < 0)
		return r;
	char subject[PKI_NAME_MAX_LEN + 8];
	if ((r = fl_snprintf(subject, sizeof(subject), "CN=%s", id)) < 0)
		return r;
	_cleanup_rng_ struct rng rng = {0};
	if ((r = rng_init(&rng)) < 0)
		return r;
	struct signer s = {.key = &ca.key, .issuer_name = ca.name};
	_cleanup_free_ char *crt_pem = NULL;
	if ((r = cert_write(&s, &csr.pk, subject, PKI_KIND_DEVICE, o, &rng, &crt_pem)) < 0)
		return r;
	if ((r = chain_check(&ca, crt_pem)) < 0)
		return r;
	_cleanup_free_ char *devdir = fl_path_join(dir, "devices");
	if (!devdir)
		return -ENOMEM;
	if ((r = fl_mkdir_p(devdir, 0755)) < 0)
		return r;
	if ((r = write_pair(NULL, NULL, crt_path, crt_pem)) < 0)
		return r;
	if (ret_crt_path)
		*ret_crt_path = fl_steal_ptr(crt_path);
	return 0;
}

/* ---- verification ---- */

/* mbedTLS 2.28 matches a host only against dNSName SANs (and compares their
 * raw bytes), so an IP address host is matched here against iPAddress SANs. */
static bool crt_has_ip(const mbedtls_x509_crt *crt, const unsigned char *ip, size_t ip_len)
{
	if (!(crt->ext_types & MBEDTLS_X509_EXT_SUBJECT_ALT_NAME))
		return false;
	for (const mbedtls_x509_sequence *cur = &crt->subject_alt_names; cur; cur = cur->next) {
		if (cur->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && cur->buf.len == ip_len &&
		    memcmp(cur->buf.p, ip, ip_len) == 0)
			return true;
	}
	return false;
}

int pki_verify(const char *ca_path, const char *crt_path, const char *host, enum pki_kind kind,
	       struct pki_cert_info *info)
{
	if (!ca_path || !crt_path)
		return -EINVAL;
	_cleanup_crt_ mbedtls_x509_crt ca;
	_cleanup_crt_ mbedtls_x509_crt crt;
	mbedtls_x509_crt_init(&ca);
	mbedtls_x509_crt_init(&crt);
	{
		_cleanup_secret_ struct secret s = {0};
		int r = read_input(ca_path, &s);
		if (r < 0)
			return r;
		if (mbedtls_x509_crt_parse(&ca, s.p, s.len) != 0)
			return -FL_EFORMAT;
	}
	{
		_cleanup_secret_ struct secret s = {0};
		int r = read_input(crt_path, &s);
		if (r < 0)
			return r;
		if (mbedtls_x509_crt_parse(&crt, s.p, s.len) != 0)
			return -FL_EFORMAT;
	}
	if (info) {
		memset(info, 0, sizeof(*info));
		if (name_cn(&crt.subject, info->cn) < 0)
			info->cn[0] = '\0';
		info->not_before_s = x509_time_epoch(&crt.valid_from);
		info->not_after_s = x509_time_epoch(&crt.valid_to);
		info->is_ca = crt.ca_istrue != 0;
		size_t n = crt.serial.len < 20 ? crt.serial.len : 20;
		for (size_t i = 0; i < n; i++)
			snprintf(info->serial_hex + 2 * i, 3, "%02x", crt.serial.p[i]);
	}

	unsigned char ip[16];
	int ip_len = host ? ip_parse(host, ip) : -EINVAL;
	const char *cn_host = ip_len > 0 ? NULL : host;
	uint32_t flags = 0;
	int vr = mbedtls_x509_crt_verify(&crt, &ca, NULL, cn_host, &flags, NULL, NULL);
	if (ip_len > 0 && !crt_has_ip(&crt, ip, (size_t)ip_len))
		flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
	if (vr != 0 && flags == 0)
		return -FL_EBADSIG;
	if (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED)
		return -FL_EKEYUNKNOWN;
	if (flags & (MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE))
		return -FL_EKEYEXPIRED;
	if (flags)
		return -FL_EBADSIG;

	switch (kind) {
	case PKI_KIND_ANY:
		break;
	case PKI_KIND_CA:
		if (!crt.ca_istrue)
			return -FL_EBADSIG;
		break;
	case PKI_KIND_SERVER:
		if (crt.ca_istrue ||
		    mbedtls_x509_crt_check_extended_key_usage(
			    &crt, MBEDTLS_OID_SERVER_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)) != 0)
			return -FL_EBADSIG;
		break;
	case PKI_KIND_DEVICE:
	case PKI_KIND_CONTROLLER:
		if (crt.ca_istrue ||
		    mbedtls_x509_crt_check_extended_key_usage(
			    &crt, MBEDTLS_OID_CLIENT_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)) != 0)
			return -FL_EBADSIG;
		break;
	default:
		return -EINVAL;
	}
	return 0;
}
