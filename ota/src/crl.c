/* Certificate revocation for the fleet PKI: DIR/revoked.txt and the CRL
 * DIR/ca.crl made from it (see pki.h). mbedTLS 2.28 parses CRLs but cannot
 * write them, so this file uses OpenSSL's X509_CRL API; the CA key is the SEC1
 * PEM that mbedTLS wrote in pki_init(), which OpenSSL reads as is. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/pki.h>
#include <flotilla/util.h>

#define DAY_S 86400
#define REVOKED_FILE "revoked.txt"
#define CRL_FILE "ca.crl"
#define REVOKED_FILE_MAX_BYTES (PKI_REVOKED_MAX * (PKI_SERIAL_HEX_MAX + PKI_NAME_MAX_LEN + 24))

static void x509_freep(X509 **p) { X509_free(*p); }
static void crl_freep(X509_CRL **p) { X509_CRL_free(*p); }
static void pkey_freep(EVP_PKEY **p) { EVP_PKEY_free(*p); }
static void bio_freep(BIO **p) { BIO_free(*p); }
static void bn_freep(BIGNUM **p) { BN_free(*p); }
static void asn1_int_freep(ASN1_INTEGER **p) { ASN1_INTEGER_free(*p); }
static void asn1_time_freep(ASN1_TIME **p) { ASN1_TIME_free(*p); }

/* One line of revoked.txt. */
struct revoked {
	char serial[PKI_SERIAL_HEX_MAX + 1];
	int64_t at;
	char cn[PKI_NAME_MAX_LEN + 1];
};

struct revoked_list {
	struct revoked *v;
	size_t n;
};

static void list_freep(struct revoked_list *l) { free(l->v); }

/* Hex text (optional 0x, ':' separators, any case) to the normal form:
 * lowercase, no leading zeros, 1..40 digits, not zero. */
static int serial_normalise(const char *in, char out[PKI_SERIAL_HEX_MAX + 1])
{
	if (!in)
		return -EINVAL;
	if (in[0] == '0' && (in[1] == 'x' || in[1] == 'X'))
		in += 2;
	size_t n = 0;
	bool leading = true;
	for (const char *p = in; *p; p++) {
		if (*p == ':')
			continue;
		if (!isxdigit((unsigned char)*p))
			return -EINVAL;
		if (leading && *p == '0')
			continue;
		leading = false;
		if (n >= PKI_SERIAL_HEX_MAX)
			return -EINVAL;
		out[n++] = (char)tolower((unsigned char)*p);
	}
	if (n == 0)
		return -EINVAL;
	out[n] = '\0';
	return 0;
}

static int serial_from_asn1(const ASN1_INTEGER *ai, char out[PKI_SERIAL_HEX_MAX + 1])
{
	_cleanup_(bn_freep) BIGNUM *bn = ASN1_INTEGER_to_BN(ai, NULL);
	if (!bn || BN_is_negative(bn))
		return -FL_EFORMAT;
	char *hex = BN_bn2hex(bn);
	if (!hex)
		return -ENOMEM;
	int r = serial_normalise(hex, out);
	OPENSSL_free(hex);
	return r < 0 ? -FL_EFORMAT : 0;
}

static int list_add(struct revoked_list *l, const struct revoked *e)
{
	if (l->n >= PKI_REVOKED_MAX)
		return -FL_ETOOBIG;
	struct revoked *v = realloc(l->v, (l->n + 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	l->v = v;
	l->v[l->n++] = *e;
	return 0;
}

static bool list_has(const struct revoked_list *l, const char *serial)
{
	for (size_t i = 0; i < l->n; i++)
		if (!strcmp(l->v[i].serial, serial))
			return true;
	return false;
}

/* Parse revoked.txt (TEXT may be NULL: no file). */
static int list_parse(char *text, struct revoked_list *l)
{
	if (!text)
		return 0;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		while (*line == ' ' || *line == '\t')
			line++;
		if (*line == '\0' || *line == '#')
			continue;
		char serial[PKI_SERIAL_HEX_MAX + 8] = "", cn[PKI_NAME_MAX_LEN + 8] = "";
		long long at = 0;
		int k = sscanf(line, "%47s %lld %71s", serial, &at, cn);
		struct revoked e = {.at = at};
		if (k < 2 || at < 0 || serial_normalise(serial, e.serial) < 0 ||
		    strcmp(serial, e.serial) != 0)
			return -FL_EFORMAT;
		if (k == 3) {
			if (!fl_name_valid(cn, PKI_NAME_MAX_LEN))
				return -FL_EFORMAT;
			snprintf(e.cn, sizeof(e.cn), "%s", cn);
		}
		if (list_has(l, e.serial))
			continue;
		int r = list_add(l, &e);
		if (r < 0)
			return r;
	}
	return 0;
}

static int list_format(const struct revoked_list *l, char **ret, size_t *ret_len)
{
	_cleanup_(bio_freep) BIO *b = BIO_new(BIO_s_mem());
	if (!b)
		return -ENOMEM;
	BIO_puts(b, "# Revoked certificates of this fleet CA: serial (hex), revocation time "
		    "(epoch s), CN.\n# Written by `flotilla pki revoke`; ca.crl is made from "
		    "this file.\n");
	for (size_t i = 0; i < l->n; i++)
		if (BIO_printf(b, "%s %lld%s%s\n", l->v[i].serial, (long long)l->v[i].at,
			       l->v[i].cn[0] ? " " : "", l->v[i].cn) <= 0)
			return -ENOMEM;
	char *p;
	long n = BIO_get_mem_data(b, &p);
	char *out = malloc((size_t)n + 1);
	if (!out)
		return -ENOMEM;
	memcpy(out, p, (size_t)n);
	out[n] = '\0';
	*ret = out;
	*ret_len = (size_t)n;
	return 0;
}

/* ---- OpenSSL loading ---- */

/* Read a PEM file (bounded) into a memory BIO. */
static int bio_load(const char *path, BIO **ret)
{
	_cleanup_free_ char *data = NULL;
	size_t len = 0;
	int r = fl_read_file(path, PKI_FILE_MAX_BYTES * 64, &data, &len);
	if (r < 0)
		return r;
	BIO *b = BIO_new(BIO_s_mem());
	if (!b)
		return -ENOMEM;
	if (BIO_write(b, data, (int)len) != (int)len) {
		BIO_free(b);
		return -ENOMEM;
	}
	*ret = b;
	return 0;
}

static int x509_load(const char *path, X509 **ret)
{
	_cleanup_(bio_freep) BIO *b = NULL;
	int r = bio_load(path, &b);
	if (r < 0)
		return r;
	*ret = PEM_read_bio_X509(b, NULL, NULL, NULL);
	return *ret ? 0 : -FL_EFORMAT;
}

static int crl_load(const char *path, X509_CRL **ret)
{
	_cleanup_(bio_freep) BIO *b = NULL;
	int r = bio_load(path, &b);
	if (r < 0)
		return r;
	*ret = PEM_read_bio_X509_CRL(b, NULL, NULL, NULL);
	return *ret ? 0 : -FL_EFORMAT;
}

static int64_t asn1_time_epoch(const ASN1_TIME *t)
{
	struct tm tm;
	if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
		return -1;
	return (int64_t)timegm(&tm);
}

/* The CA certificate and its private key, checked to match. */
static int ca_load_ossl(const char *dir, X509 **ret_crt, EVP_PKEY **ret_key)
{
	_cleanup_free_ char *crt_path = fl_path_join(dir, "ca.crt");
	_cleanup_free_ char *key_path = fl_path_join(dir, "ca.key");
	if (!crt_path || !key_path)
		return -ENOMEM;
	_cleanup_(x509_freep) X509 *crt = NULL;
	int r = x509_load(crt_path, &crt);
	if (r < 0)
		return r;
	_cleanup_(bio_freep) BIO *b = NULL;
	if ((r = bio_load(key_path, &b)) < 0)
		return r;
	_cleanup_(pkey_freep) EVP_PKEY *key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	/* BIO holding key bytes: clear before freeing. */
	char *p;
	long n = BIO_get_mem_data(b, &p);
	if (n > 0)
		OPENSSL_cleanse(p, (size_t)n);
	if (!key || X509_check_private_key(crt, key) != 1)
		return -FL_EKEY;
	*ret_crt = fl_steal_ptr(crt);
	*ret_key = fl_steal_ptr(key);
	return 0;
}

/* crlNumber of the CRL at PATH, or 0. */
static int64_t crl_number_of(const char *path)
{
	_cleanup_(crl_freep) X509_CRL *crl = NULL;
	if (crl_load(path, &crl) < 0)
		return 0;
	_cleanup_(asn1_int_freep) ASN1_INTEGER *num =
		X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
	int64_t v = 0;
	if (!num || ASN1_INTEGER_get_int64(&v, num) != 1 || v < 0)
		return 0;
	return v;
}

/* PEM of a CRL listing L, signed by the CA of DIR. */
static int crl_make(const char *dir, const char *crl_path, const struct revoked_list *l,
		    int64_t days, char **ret_pem, size_t *ret_len)
{
	_cleanup_(x509_freep) X509 *ca = NULL;
	_cleanup_(pkey_freep) EVP_PKEY *key = NULL;
	int r = ca_load_ossl(dir, &ca, &key);
	if (r < 0)
		return r;
	_cleanup_(crl_freep) X509_CRL *crl = X509_CRL_new();
	if (!crl)
		return -ENOMEM;
	int64_t now = fl_now_s();
	_cleanup_(asn1_time_freep) ASN1_TIME *t_this = ASN1_TIME_set(NULL, (time_t)now);
	_cleanup_(asn1_time_freep) ASN1_TIME *t_next =
		ASN1_TIME_set(NULL, (time_t)(now + days * DAY_S));
	if (!t_this || !t_next)
		return -ENOMEM;
	if (X509_CRL_set_version(crl, 1) != 1 || /* v2: extensions */
	    X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)) != 1 ||
	    X509_CRL_set1_lastUpdate(crl, t_this) != 1 || X509_CRL_set1_nextUpdate(crl, t_next) != 1)
		return -ENOMEM;

	for (size_t i = 0; i < l->n; i++) {
		BIGNUM *bn = NULL;
		if (!BN_hex2bn(&bn, l->v[i].serial))
			return -FL_EFORMAT;
		ASN1_INTEGER *ai = BN_to_ASN1_INTEGER(bn, NULL);
		BN_free(bn);
		_cleanup_(asn1_time_freep) ASN1_TIME *at = ASN1_TIME_set(NULL, (time_t)l->v[i].at);
		X509_REVOKED *rv = X509_REVOKED_new();
		if (!ai || !at || !rv || X509_REVOKED_set_serialNumber(rv, ai) != 1 ||
		    X509_REVOKED_set_revocationDate(rv, at) != 1 || X509_CRL_add0_revoked(crl, rv) != 1) {
			ASN1_INTEGER_free(ai);
			X509_REVOKED_free(rv);
			return -ENOMEM;
		}
		ASN1_INTEGER_free(ai);
	}
	if (X509_CRL_sort(crl) != 1)
		return -ENOMEM;

	/* crlNumber must grow with every issue (RFC 5280 5.2.3). */
	int64_t number = now;
	int64_t prev = crl_number_of(crl_path);
	if (prev >= number)
		number = prev + 1;
	_cleanup_(asn1_int_freep) ASN1_INTEGER *num = ASN1_INTEGER_new();
	if (!num || ASN1_INTEGER_set_int64(num, number) != 1 ||
	    X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) != 1)
		return -ENOMEM;
	X509V3_CTX ctx;
	X509V3_set_ctx(&ctx, ca, NULL, NULL, crl, 0);
	X509_EXTENSION *aki = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier,
						   "keyid:always");
	if (!aki)
		return -FL_EKEY; /* the CA has no subjectKeyIdentifier */
	int ok = X509_CRL_add_ext(crl, aki, -1);
	X509_EXTENSION_free(aki);
	if (ok != 1)
		return -ENOMEM;

	if (X509_CRL_sign(crl, key, EVP_sha256()) <= 0)
		return -FL_EKEY;
	_cleanup_(bio_freep) BIO *out = BIO_new(BIO_s_mem());
	if (!out || PEM_write_bio_X509_CRL(out, crl) != 1)
		return -ENOMEM;
	char *p;
	long n = BIO_get_mem_data(out, &p);
	char *pem = malloc((size_t)n + 1);
	if (!pem)
		return -ENOMEM;
	memcpy(pem, p, (size_t)n);
	pem[n] = '\0';
	*ret_pem = pem;
	*ret_len = (size_t)n;
	return 0;
}

/* Read revoked.txt of DIR (missing: empty list) into L. */
static int list_load(const char *path, struct revoked_list *l, char **ret_old, size_t *ret_old_len)
{
	char *text = NULL;
	size_t len = 0;
	int r = fl_read_file(path, REVOKED_FILE_MAX_BYTES, &text, &len);
	if (r == -ENOENT) {
		*ret_old = NULL;
		*ret_old_len = 0;
		return 0;
	}
	if (r < 0)
		return r;
	_cleanup_free_ char *copy = strdup(text);
	if (!copy) {
		free(text);
		return -ENOMEM;
	}
	r = list_parse(copy, l);
	if (r < 0) {
		free(text);
		return r;
	}
	*ret_old = text;
	*ret_old_len = len;
	return 0;
}

/* Write revoked.txt (when NEW_LIST) and ca.crl for L; on a failed CRL write
 * revoked.txt gets its old content back (or goes away if it had none). */
static int commit(const char *dir, const struct revoked_list *l, bool new_list, const char *old,
		  size_t old_len, int64_t days)
{
	_cleanup_free_ char *list_path = fl_path_join(dir, REVOKED_FILE);
	_cleanup_free_ char *crl_path = fl_path_join(dir, CRL_FILE);
	if (!list_path || !crl_path)
		return -ENOMEM;
	_cleanup_free_ char *pem = NULL;
	size_t pem_len = 0;
	int r = crl_make(dir, crl_path, l, days, &pem, &pem_len);
	if (r < 0)
		return r;
	if (new_list) {
		_cleanup_free_ char *text = NULL;
		size_t len = 0;
		if ((r = list_format(l, &text, &len)) < 0)
			return r;
		if ((r = fl_write_file_atomic(list_path, text, len, 0644)) < 0)
			return r;
	}
	r = fl_write_file_atomic(crl_path, pem, pem_len, 0644);
	if (r < 0 && new_list) {
		if (old)
			(void)fl_write_file_atomic(list_path, old, old_len, 0644);
		else
			(void)remove(list_path);
	}
	return r;
}

static int64_t days_or_default(int64_t days)
{
	return days == 0 ? PKI_CRL_DAYS_DEFAULT : days;
}

int pki_crl_write(const char *dir, int64_t days)
{
	if (!dir || !*dir || days < 0 || days > PKI_DAYS_MAX)
		return -EINVAL;
	_cleanup_free_ char *list_path = fl_path_join(dir, REVOKED_FILE);
	if (!list_path)
		return -ENOMEM;
	_cleanup_(list_freep) struct revoked_list l = {0};
	_cleanup_free_ char *old = NULL;
	size_t old_len = 0;
	int r = list_load(list_path, &l, &old, &old_len);
	if (r < 0)
		return r;
	return commit(dir, &l, false, NULL, 0, days_or_default(days));
}

/* Serial and CN of the device certificate of ID in DIR. */
static int device_serial(const char *dir, const char *id, struct revoked *e)
{
	_cleanup_free_ char *p = fl_asprintf("%s/devices/%s.crt", dir, id);
	if (!p)
		return -ENOMEM;
	_cleanup_(x509_freep) X509 *crt = NULL;
	int r = x509_load(p, &crt);
	if (r < 0)
		return r;
	if ((r = serial_from_asn1(X509_get0_serialNumber(crt), e->serial)) < 0)
		return r;
	snprintf(e->cn, sizeof(e->cn), "%s", id);
	return 0;
}

int pki_revoke(const char *dir, const char *id, const char *serial_hex, int64_t days,
	       char ret_serial[PKI_SERIAL_HEX_MAX + 1])
{
	if (!dir || !*dir || !id == !serial_hex || days < 0 || days > PKI_DAYS_MAX)
		return -EINVAL;
	struct revoked e = {.at = fl_now_s()};
	int r;
	if (id) {
		if (!fl_name_valid(id, PKI_NAME_MAX_LEN))
			return -EINVAL;
		if ((r = device_serial(dir, id, &e)) < 0)
			return r;
	} else if ((r = serial_normalise(serial_hex, e.serial)) < 0) {
		return r;
	}
	if (ret_serial)
		memcpy(ret_serial, e.serial, strlen(e.serial) + 1);

	_cleanup_free_ char *list_path = fl_path_join(dir, REVOKED_FILE);
	if (!list_path)
		return -ENOMEM;
	_cleanup_(list_freep) struct revoked_list l = {0};
	_cleanup_free_ char *old = NULL;
	size_t old_len = 0;
	if ((r = list_load(list_path, &l, &old, &old_len)) < 0)
		return r;
	if (list_has(&l, e.serial)) {
		r = commit(dir, &l, false, NULL, 0, days_or_default(days));
		return r < 0 ? r : -EALREADY;
	}
	if ((r = list_add(&l, &e)) < 0)
		return r;
	return commit(dir, &l, true, old, old_len, days_or_default(days));
}

int pki_crl_check(const char *ca_path, const char *crl_path, const char *crt_path,
		  struct pki_crl_info *info)
{
	if (!ca_path || !crl_path || !crt_path)
		return -EINVAL;
	struct pki_crl_info dummy;
	if (!info)
		info = &dummy;
	memset(info, 0, sizeof(*info));
	_cleanup_(x509_freep) X509 *ca = NULL;
	_cleanup_(x509_freep) X509 *crt = NULL;
	_cleanup_(crl_freep) X509_CRL *crl = NULL;
	int r;
	if ((r = x509_load(ca_path, &ca)) < 0 || (r = crl_load(crl_path, &crl)) < 0 ||
	    (r = x509_load(crt_path, &crt)) < 0)
		return r;
	STACK_OF(X509_REVOKED) *revs = X509_CRL_get_REVOKED(crl);
	info->n_revoked = revs ? (size_t)sk_X509_REVOKED_num(revs) : 0;
	info->this_update_s = asn1_time_epoch(X509_CRL_get0_lastUpdate(crl));
	info->next_update_s = asn1_time_epoch(X509_CRL_get0_nextUpdate(crl));

	EVP_PKEY *ca_pub = X509_get0_pubkey(ca);
	if (!ca_pub || X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)) != 0 ||
	    X509_CRL_verify(crl, ca_pub) != 1)
		return -FL_EBADSIG;
	int64_t now = fl_now_s();
	if (info->this_update_s < 0 || info->this_update_s > now + PKI_BACKDATE_S ||
	    info->next_update_s < 0 || info->next_update_s < now)
		return -FL_EEXPIRED;
	X509_REVOKED *rv = NULL;
	if (X509_CRL_get0_by_serial(crl, &rv, X509_get0_serialNumber(crt)) == 1 && rv) {
		info->revoked_at_s = asn1_time_epoch(X509_REVOKED_get0_revocationDate(rv));
		return -FL_EKEYREVOKED;
	}
	return 0;
}
