/* Fleet PKI: CA and leaf generation, verification against the CA (with
 * mbedTLS directly and through pki_verify), CN = device id, bad ids, unknown
 * CA, expiry, SANs and usages, the CSR flow, and that refused input leaves no
 * file behind. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/pki.h>
#include <flotilla/util.h>

#include "testutil.h"

struct fx {
	char *dir;  /* the fleet CA */
	char *dir2; /* an unrelated CA */
};

static char *path(const char *dir, const char *rel)
{
	char *p = fl_path_join(dir, rel);
	assert_non_null(p);
	return p;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	char *root = fl_test_mkdtemp("pki");
	assert_non_null(root);
	f->dir = path(root, "ca1");
	f->dir2 = path(root, "ca2");
	free(root);
	assert_int_equal(pki_init(f->dir, NULL), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char *root = strdup(f->dir);
	assert_non_null(root);
	char *slash = strrchr(root, '/');
	*slash = '\0';
	fl_rm_rf(root);
	free(root);
	free(f->dir);
	free(f->dir2);
	free(f);
	return 0;
}

static void load_crt(const char *p, mbedtls_x509_crt *crt)
{
	mbedtls_x509_crt_init(crt);
	assert_int_equal(mbedtls_x509_crt_parse_file(crt, p), 0);
}

/* mbedtls_x509_crt_verify() of CRT_REL in DIR against CA_DIR's ca.crt. */
static uint32_t mbed_verify(const char *ca_dir, const char *dir, const char *crt_rel)
{
	char *ca_p = path(ca_dir, "ca.crt"), *crt_p = path(dir, crt_rel);
	mbedtls_x509_crt ca, crt;
	load_crt(ca_p, &ca);
	load_crt(crt_p, &crt);
	uint32_t flags = 0;
	int r = mbedtls_x509_crt_verify(&crt, &ca, NULL, NULL, &flags, NULL, NULL);
	if (r == 0)
		assert_int_equal(flags, 0);
	mbedtls_x509_crt_free(&ca);
	mbedtls_x509_crt_free(&crt);
	free(ca_p);
	free(crt_p);
	return flags;
}

static mode_t file_mode(const char *dir, const char *rel)
{
	char *p = path(dir, rel);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	free(p);
	return st.st_mode & 0777;
}

static bool exists(const char *dir, const char *rel)
{
	char *p = path(dir, rel);
	bool e = access(p, F_OK) == 0;
	free(p);
	return e;
}

static void test_init_ca(void **state)
{
	struct fx *f = *state;
	assert_int_equal(file_mode(f->dir, "ca.key"), 0600);
	char *ca_p = path(f->dir, "ca.crt");
	struct pki_cert_info info;
	assert_int_equal(pki_verify(ca_p, ca_p, NULL, PKI_KIND_CA, &info), 0);
	assert_true(info.is_ca);
	assert_string_equal(info.cn, PKI_CA_CN_DEFAULT);
	assert_int_equal(strlen(info.serial_hex), 32); /* 16 random bytes */
	int64_t days = (info.not_after_s - info.not_before_s) / 86400;
	assert_int_equal(days, PKI_CA_DAYS_DEFAULT);
	assert_true(info.not_before_s <= fl_now_s());

	mbedtls_x509_crt ca;
	load_crt(ca_p, &ca);
	assert_true(ca.ca_istrue);
	assert_int_equal(ca.max_pathlen, 1); /* pathlen 0, stored +1 */
	assert_true(ca.key_usage & MBEDTLS_X509_KU_KEY_CERT_SIGN);
	mbedtls_x509_crt_free(&ca);

	/* A second init refuses and leaves the CA as it was. */
	char *before = NULL, *after = NULL;
	size_t lb, la;
	assert_int_equal(fl_read_file(ca_p, 65536, &before, &lb), 0);
	assert_int_equal(pki_init(f->dir, NULL), -EEXIST);
	assert_int_equal(fl_read_file(ca_p, 65536, &after, &la), 0);
	assert_int_equal(lb, la);
	assert_memory_equal(before, after, lb);
	free(before);
	free(after);

	/* --force replaces it: a new serial. */
	struct pki_opts o = {.force = true, .cn = "Other Fleet CA"};
	assert_int_equal(pki_init(f->dir, &o), 0);
	struct pki_cert_info info2;
	assert_int_equal(pki_verify(ca_p, ca_p, NULL, PKI_KIND_CA, &info2), 0);
	assert_string_equal(info2.cn, "Other Fleet CA");
	assert_string_not_equal(info.serial_hex, info2.serial_hex);

	/* Bad CA names and validity: refused, nothing written. */
	struct pki_opts bad = {.cn = "a,b=c"};
	assert_int_equal(pki_init(f->dir2, &bad), -EINVAL);
	struct pki_opts bad2 = {.not_before_s = 2000000000, .not_after_s = 1900000000};
	assert_int_equal(pki_init(f->dir2, &bad2), -FL_ERANGE);
	assert_false(exists(f->dir2, "."));
	assert_int_equal(pki_init(NULL, NULL), -EINVAL);
	free(ca_p);
}

static void test_issue_device(void **state)
{
	struct fx *f = *state;
	char *crt_p = NULL;
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "dev-0001", NULL, &crt_p), 0);
	char *want = path(f->dir, "devices/dev-0001.crt");
	assert_string_equal(crt_p, want);
	free(want);
	assert_int_equal(file_mode(f->dir, "devices/dev-0001.key"), 0600);

	/* Verifies against the CA with mbedTLS directly. */
	assert_int_equal(mbed_verify(f->dir, f->dir, "devices/dev-0001.crt"), 0);

	mbedtls_x509_crt crt;
	load_crt(crt_p, &crt);
	/* CN = device id, the issuer is the CA, a leaf for client auth. */
	char dn[256];
	assert_true(mbedtls_x509_dn_gets(dn, sizeof(dn), &crt.subject) > 0);
	assert_string_equal(dn, "CN=dev-0001");
	assert_true(mbedtls_x509_dn_gets(dn, sizeof(dn), &crt.issuer) > 0);
	assert_string_equal(dn, "CN=" PKI_CA_CN_DEFAULT ", O=Flotilla");
	assert_false(crt.ca_istrue);
	assert_int_equal(crt.serial.len, 16);
	assert_int_equal(mbedtls_x509_crt_check_extended_key_usage(
				 &crt, MBEDTLS_OID_CLIENT_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)),
			 0);
	assert_int_not_equal(mbedtls_x509_crt_check_extended_key_usage(
				     &crt, MBEDTLS_OID_SERVER_AUTH,
				     MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)),
			     0);
	assert_false((crt.ext_types & MBEDTLS_X509_EXT_SUBJECT_ALT_NAME) != 0);

	/* The key file holds the certificate's private key. */
	char *key_p = path(f->dir, "devices/dev-0001.key");
	mbedtls_pk_context key;
	mbedtls_pk_init(&key);
	assert_int_equal(mbedtls_pk_parse_keyfile(&key, key_p, NULL), 0);
	assert_int_equal(mbedtls_pk_check_pair(&crt.pk, &key), 0);
	mbedtls_pk_free(&key);
	mbedtls_x509_crt_free(&crt);

	char *ca_p = path(f->dir, "ca.crt");
	struct pki_cert_info info;
	assert_int_equal(pki_verify(ca_p, crt_p, NULL, PKI_KIND_DEVICE, &info), 0);
	assert_string_equal(info.cn, "dev-0001");
	assert_false(info.is_ca);
	assert_int_equal((info.not_after_s - info.not_before_s) / 86400, PKI_LEAF_DAYS_DEFAULT);
	/* Wrong usage: a device certificate is no server certificate. */
	assert_int_equal(pki_verify(ca_p, crt_p, NULL, PKI_KIND_SERVER, NULL), -FL_EBADSIG);

	/* Issuing again refuses (no overwrite), --force replaces with a new serial. */
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "dev-0001", NULL, NULL), -EEXIST);
	struct pki_opts o = {.force = true, .days = 30};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "dev-0001", &o, NULL), 0);
	struct pki_cert_info info2;
	assert_int_equal(pki_verify(ca_p, crt_p, NULL, PKI_KIND_DEVICE, &info2), 0);
	assert_string_not_equal(info.serial_hex, info2.serial_hex);
	assert_int_equal((info2.not_after_s - info2.not_before_s) / 86400, 30);

	free(key_p);
	free(ca_p);
	free(crt_p);
}

static void test_bad_ids(void **state)
{
	struct fx *f = *state;
	char long_id[PKI_NAME_MAX_LEN + 2];
	memset(long_id, 'a', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	const char *bad[] = {"", ".hidden", "-dash", "a/b", "../x", "a b", "a+b", "a#", "dev\n1",
			     "ünicode", long_id, PKI_CONTROLLER_CN, "flotilla-x"};
	for (size_t i = 0; i < FL_ARRAY_SIZE(bad); i++) {
		char *crt_p = (char *)0x1;
		assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, bad[i], NULL, &crt_p), -EINVAL);
		assert_ptr_equal(crt_p, (char *)0x1); /* ret_ untouched */
	}
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(pki_issue(f->dir, PKI_KIND_CA, "x", NULL, NULL), -EINVAL);
	/* Exactly 64 characters is fine. */
	long_id[PKI_NAME_MAX_LEN] = '\0';
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, long_id, NULL, NULL), 0);
	char *devdir = path(f->dir, "devices");
	assert_int_equal(fl_test_count_files(devdir), 2); /* only the 64-char one */
	free(devdir);
	/* Only ca.crt, ca.key and devices/ + 2 files. */
	assert_int_equal(fl_test_count_files(f->dir), 5);

	/* Bad SANs, bad validity, bad out name: refused without files. */
	struct pki_opts o = {.n_dns = 1, .dns = {"bad name"}};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_SERVER, NULL, &o, NULL), -EINVAL);
	struct pki_opts o2 = {.n_ip = 1, .ip = {"300.1.1.1"}};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_SERVER, NULL, &o2, NULL), -EINVAL);
	struct pki_opts o3 = {.not_before_s = 1900000000, .not_after_s = 1800000000};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "d1", &o3, NULL), -FL_ERANGE);
	struct pki_opts o4 = {.days = PKI_DAYS_MAX + 1};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "d1", &o4, NULL), -FL_ERANGE);
	struct pki_opts o5 = {.out = "../evil"};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_SERVER, NULL, &o5, NULL), -EINVAL);
	assert_int_equal(fl_test_count_files(f->dir), 5);

	/* No CA: -ENOENT and no devices directory appears. */
	assert_int_equal(pki_issue(f->dir2, PKI_KIND_DEVICE, "d1", NULL, NULL), -ENOENT);
	assert_false(exists(f->dir2, "."));
}

static void test_unknown_ca(void **state)
{
	struct fx *f = *state;
	assert_int_equal(pki_init(f->dir2, NULL), 0);
	assert_int_equal(pki_issue(f->dir2, PKI_KIND_DEVICE, "dev-1", NULL, NULL), 0);
	/* Same names, different CA key: not trusted. */
	uint32_t flags = mbed_verify(f->dir, f->dir2, "devices/dev-1.crt");
	assert_true(flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED);
	assert_int_equal(mbed_verify(f->dir2, f->dir2, "devices/dev-1.crt"), 0);

	char *ca1 = path(f->dir, "ca.crt"), *crt = path(f->dir2, "devices/dev-1.crt");
	struct pki_cert_info info;
	assert_int_equal(pki_verify(ca1, crt, NULL, PKI_KIND_DEVICE, &info), -FL_EKEYUNKNOWN);
	assert_string_equal(info.cn, "dev-1"); /* still reported */

	/* A CA key that does not match ca.crt is refused. */
	char *key1 = path(f->dir, "ca.key"), *key2 = path(f->dir2, "ca.key");
	char *data = NULL;
	size_t len;
	assert_int_equal(fl_read_file(key2, 65536, &data, &len), 0);
	assert_int_equal(fl_write_file_atomic(key1, data, len, 0600), 0);
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "dev-2", NULL, NULL), -FL_EKEY);
	assert_false(exists(f->dir, "devices/dev-2.key"));
	/* A garbage CA certificate: -FL_EFORMAT. */
	assert_int_equal(fl_write_file_atomic(ca1, "garbage", 7, 0644), 0);
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "dev-2", NULL, NULL), -FL_EFORMAT);
	assert_int_equal(pki_verify(ca1, crt, NULL, PKI_KIND_ANY, NULL), -FL_EFORMAT);
	free(data);
	free(key1);
	free(key2);
	free(ca1);
	free(crt);
}

static void test_expired(void **state)
{
	struct fx *f = *state;
	struct pki_opts o = {.days = -1};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "old", &o, NULL), 0);
	assert_true(mbed_verify(f->dir, f->dir, "devices/old.crt") & MBEDTLS_X509_BADCERT_EXPIRED);
	char *ca = path(f->dir, "ca.crt"), *crt = path(f->dir, "devices/old.crt");
	struct pki_cert_info info;
	assert_int_equal(pki_verify(ca, crt, NULL, PKI_KIND_DEVICE, &info), -FL_EKEYEXPIRED);
	int64_t now = fl_now_s();
	assert_true(info.not_after_s <= now - 86400 + 5);
	assert_true(info.not_before_s < info.not_after_s);

	/* Not yet valid: the same error. */
	struct pki_opts fut = {.not_before_s = now + 86400, .not_after_s = now + 2 * 86400};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "future", &fut, NULL), 0);
	char *crt2 = path(f->dir, "devices/future.crt");
	assert_int_equal(pki_verify(ca, crt2, NULL, PKI_KIND_DEVICE, NULL), -FL_EKEYEXPIRED);
	assert_true(mbed_verify(f->dir, f->dir, "devices/future.crt") & MBEDTLS_X509_BADCERT_FUTURE);

	/* An explicit window is written exactly. */
	struct pki_opts exact = {.not_before_s = 1767225600 /* 2026-01-01 */,
				 .not_after_s = 1798761600 /* 2027-01-01 */};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "exact", &exact, NULL), 0);
	char *crt3 = path(f->dir, "devices/exact.crt");
	pki_verify(ca, crt3, NULL, PKI_KIND_ANY, &info);
	assert_int_equal(info.not_before_s, 1767225600);
	assert_int_equal(info.not_after_s, 1798761600);
	free(ca);
	free(crt);
	free(crt2);
	free(crt3);
}

static void test_server_and_controller(void **state)
{
	struct fx *f = *state;
	struct pki_opts o = {.n_dns = 1, .dns = {"localhost"}, .n_ip = 2, .ip = {"127.0.0.1", "::1"}};
	char *crt_p = NULL;
	assert_int_equal(pki_issue(f->dir, PKI_KIND_SERVER, NULL, &o, &crt_p), 0);
	char *want = path(f->dir, "server.crt");
	assert_string_equal(crt_p, want);
	free(want);
	assert_int_equal(file_mode(f->dir, "server.key"), 0600);
	char *ca = path(f->dir, "ca.crt");
	struct pki_cert_info info;
	assert_int_equal(pki_verify(ca, crt_p, "localhost", PKI_KIND_SERVER, &info), 0);
	assert_string_equal(info.cn, PKI_SERVER_CN_DEFAULT);
	assert_int_equal(pki_verify(ca, crt_p, "127.0.0.1", PKI_KIND_SERVER, NULL), 0);
	assert_int_equal(pki_verify(ca, crt_p, "::1", PKI_KIND_SERVER, NULL), 0);
	/* Names not in the SAN fail the host check. */
	assert_int_equal(pki_verify(ca, crt_p, "127.0.0.2", PKI_KIND_SERVER, NULL), -FL_EBADSIG);
	assert_int_equal(pki_verify(ca, crt_p, "broker.example", PKI_KIND_SERVER, NULL),
			 -FL_EBADSIG);
	assert_int_equal(pki_verify(ca, crt_p, PKI_SERVER_CN_DEFAULT, PKI_KIND_SERVER, NULL),
			 -FL_EBADSIG);
	/* Server usage only. */
	assert_int_equal(pki_verify(ca, crt_p, NULL, PKI_KIND_CONTROLLER, NULL), -FL_EBADSIG);

	/* Without SANs a server gets its name as DNS SAN; --out picks the file. */
	struct pki_opts o2 = {.out = "broker2"};
	char *crt2 = NULL;
	assert_int_equal(pki_issue(f->dir, PKI_KIND_SERVER, "broker2.example", &o2, &crt2), 0);
	assert_true(exists(f->dir, "broker2.key"));
	assert_int_equal(pki_verify(ca, crt2, "broker2.example", PKI_KIND_SERVER, NULL), 0);
	assert_int_equal(pki_verify(ca, crt2, "localhost", PKI_KIND_SERVER, NULL), -FL_EBADSIG);

	char *crt3 = NULL;
	assert_int_equal(pki_issue(f->dir, PKI_KIND_CONTROLLER, NULL, NULL, &crt3), 0);
	assert_int_equal(pki_verify(ca, crt3, NULL, PKI_KIND_CONTROLLER, &info), 0);
	assert_string_equal(info.cn, PKI_CONTROLLER_CN);
	assert_int_equal(pki_verify(ca, crt3, NULL, PKI_KIND_SERVER, NULL), -FL_EBADSIG);
	assert_int_equal(pki_verify(ca, crt3, NULL, PKI_KIND_CA, NULL), -FL_EBADSIG);
	assert_int_equal(file_mode(f->dir, "controller.key"), 0600);
	free(ca);
	free(crt_p);
	free(crt2);
	free(crt3);
}

static void test_csr_flow(void **state)
{
	struct fx *f = *state;
	char *key = path(f->dir2, "dev.key"), *csr = path(f->dir2, "dev.csr");
	assert_int_equal(fl_mkdir_p(f->dir2, 0755), 0);
	assert_int_equal(pki_csr_create("dev-7", key, csr), 0);
	assert_int_equal(file_mode(f->dir2, "dev.key"), 0600);
	/* A second CSR reuses the existing key. */
	char *k1 = NULL, *k2 = NULL;
	size_t l1, l2;
	assert_int_equal(fl_read_file(key, 65536, &k1, &l1), 0);
	assert_int_equal(pki_csr_create("dev-7", key, csr), 0);
	assert_int_equal(fl_read_file(key, 65536, &k2, &l2), 0);
	assert_int_equal(l1, l2);
	assert_memory_equal(k1, k2, l1);
	free(k1);
	free(k2);

	/* CN must be the id we issue for. */
	assert_int_equal(pki_issue_csr(f->dir, "dev-8", csr, NULL, NULL), -EINVAL);
	char *crt_p = NULL;
	assert_int_equal(pki_issue_csr(f->dir, "dev-7", csr, NULL, &crt_p), 0);
	assert_false(exists(f->dir, "devices/dev-7.key")); /* the key stays on the device */
	assert_int_equal(mbed_verify(f->dir, f->dir, "devices/dev-7.crt"), 0);
	mbedtls_x509_crt crt;
	load_crt(crt_p, &crt);
	mbedtls_pk_context pk;
	mbedtls_pk_init(&pk);
	assert_int_equal(mbedtls_pk_parse_keyfile(&pk, key, NULL), 0);
	assert_int_equal(mbedtls_pk_check_pair(&crt.pk, &pk), 0);
	mbedtls_pk_free(&pk);
	assert_int_equal(pki_issue_csr(f->dir, "dev-7", csr, NULL, NULL), -EEXIST);

	/* Tampered signature (last byte of the DER): -FL_EBADSIG. */
	mbedtls_x509_csr req;
	mbedtls_x509_csr_init(&req);
	assert_int_equal(mbedtls_x509_csr_parse_file(&req, csr), 0);
	unsigned char *der = malloc(req.raw.len);
	assert_non_null(der);
	memcpy(der, req.raw.p, req.raw.len);
	der[req.raw.len - 1] ^= 0x01;
	char *bad = path(f->dir2, "bad.csr");
	assert_int_equal(fl_write_file_atomic(bad, der, req.raw.len, 0644), 0);
	struct pki_opts force = {.force = true};
	assert_int_equal(pki_issue_csr(f->dir, "dev-7", bad, &force, NULL), -FL_EBADSIG);
	/* Untampered DER is accepted (DER input works too). */
	der[req.raw.len - 1] ^= 0x01;
	assert_int_equal(fl_write_file_atomic(bad, der, req.raw.len, 0644), 0);
	assert_int_equal(pki_issue_csr(f->dir, "dev-7", bad, &force, NULL), 0);
	/* Garbage: -FL_EFORMAT; missing: -ENOENT. */
	assert_int_equal(fl_write_file_atomic(bad, "hello", 5, 0644), 0);
	assert_int_equal(pki_issue_csr(f->dir, "dev-7", bad, &force, NULL), -FL_EFORMAT);
	char *missing = path(f->dir2, "nope.csr");
	assert_int_equal(pki_issue_csr(f->dir, "dev-7", missing, &force, NULL), -ENOENT);
	assert_int_equal(pki_csr_create("../x", key, csr), -EINVAL);
	/* A key file that is not a key. */
	assert_int_equal(pki_csr_create("dev-7", bad, csr), -FL_EKEY);

	mbedtls_x509_csr_free(&req);
	mbedtls_x509_crt_free(&crt);
	free(der);
	free(bad);
	free(missing);
	free(crt_p);
	free(key);
	free(csr);
}

/* CAs made by OpenSSL (fixtures for this test only, valid until 2126): one
 * with a DN that mbedTLS reproduces ("O=Acme, Inc." has a comma), one with
 * an attribute (businessCategory) it cannot write. */
static const char foreign_ok_crt[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIB2zCCAYGgAwIBAgIUSRuPuUkUeLGr+VUUqt4wcAMhgt4wCgYIKoZIzj0EAwIw\n"
	"OjELMAkGA1UEBhMCREUxEzARBgNVBAoMCkFjbWUsIEluYy4xFjAUBgNVBAMMDUFj\n"
	"bWUgRmxlZXQgQ0EwIBcNMjYxMTI1MjIyMTQ3WhgPMjEyNjExMDEyMjIxNDdaMDox\n"
	"CzAJBgNVBAYTAkRFMRMwEQYDVQQKDApBY21lLCBJbmMuMRYwFAYDVQQDDA1BY21l\n"
	"IEZsZWV0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEtOKBb//Tu6wsM7tB\n"
	"Vbg6lCo0A4pi+VdIOQUASfVWIecNc8DQhCexsTrsD9GSkxMk5kwNWb/6iqYVbqU3\n"
	"+W7hlaNjMGEwHQYDVR0OBBYEFD3/Nn8P4tFutfM2xI/tQ1ZS7NEpMB8GA1UdIwQY\n"
	"MBaAFD3/Nn8P4tFutfM2xI/tQ1ZS7NEpMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0P\n"
	"AQH/BAQDAgIEMAoGCCqGSM49BAMCA0gAMEUCIDoxqMUggghBAjR+wPjScQ5l6O2v\n"
	"WgGnw4Jt1THDtRfmAiEA9P9N0TyMHBt6rDzvZqjEIWmizlkKIiBcl/cTAfYpc3w=\n"
	"-----END CERTIFICATE-----\n";
static const char foreign_ok_key[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+K7At15wjAqN5bhA\n"
	"sX6e4Xx5W/yBHITjoNtKOPkyn6WhRANCAAS04oFv/9O7rCwzu0FVuDqUKjQDimL5\n"
	"V0g5BQBJ9VYh5w1zwNCEJ7GxOuwP0ZKTEyTmTA1Zv/qKphVupTf5buGV\n"
	"-----END PRIVATE KEY-----\n";
static const char foreign_odd_crt[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIBnTCCAUOgAwIBAgIUQ6oJlIPGUO51n459kYbl6XrscsYwCgYIKoZIzj0EAwIw\n"
	"IzEOMAwGA1UEDwwFRmxlZXQxETAPBgNVBAMMCEZsZWV0IENBMCAXDTI2MTEyNTIy\n"
	"MjE0N1oYDzIxMjYxMTAxMjIyMTQ3WjAjMQ4wDAYDVQQPDAVGbGVldDERMA8GA1UE\n"
	"AwwIRmxlZXQgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARjMi8QCgRKSFc7\n"
	"0FelvKBHVZAYZXC8T+Cv/Qb2pe/amPsaLM1Ep46XUJNXGptytgsqRbPtxi5mdXR5\n"
	"r0cbgghSo1MwUTAdBgNVHQ4EFgQUJ0Mu2ne59KTFbaovcRfMQAP8b/4wHwYDVR0j\n"
	"BBgwFoAUJ0Mu2ne59KTFbaovcRfMQAP8b/4wDwYDVR0TAQH/BAUwAwEB/zAKBggq\n"
	"hkjOPQQDAgNIADBFAiBvKlaPWj89lKhcI6r1lNYFKGfOxHwES7bntkN1++gROgIh\n"
	"AKFRmAIQSV+qoY1xj5VN1BLLvtbsP5DPNjMGclV0bGQT\n"
	"-----END CERTIFICATE-----\n";
static const char foreign_odd_key[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgu6/BOYrlzbtHQYiN\n"
	"8lAZVHNmzwj7GbiOLfWIqdmIAkGhRANCAARjMi8QCgRKSFc70FelvKBHVZAYZXC8\n"
	"T+Cv/Qb2pe/amPsaLM1Ep46XUJNXGptytgsqRbPtxi5mdXR5r0cbgghS\n"
	"-----END PRIVATE KEY-----\n";

static void put_ca(const char *dir, const char *crt, const char *key)
{
	assert_int_equal(fl_mkdir_p(dir, 0755), 0);
	char *c = path(dir, "ca.crt"), *k = path(dir, "ca.key");
	assert_int_equal(fl_write_file_atomic(c, crt, strlen(crt), 0644), 0);
	assert_int_equal(fl_write_file_atomic(k, key, strlen(key), 0600), 0);
	free(c);
	free(k);
}

static void test_foreign_ca(void **state)
{
	struct fx *f = *state;
	put_ca(f->dir2, foreign_ok_crt, foreign_ok_key);
	char *crt_p = NULL;
	assert_int_equal(pki_issue(f->dir2, PKI_KIND_DEVICE, "dev-1", NULL, &crt_p), 0);
	assert_int_equal(mbed_verify(f->dir2, f->dir2, "devices/dev-1.crt"), 0);
	char *ca_p = path(f->dir2, "ca.crt");
	mbedtls_x509_crt ca, crt;
	load_crt(ca_p, &ca);
	load_crt(crt_p, &crt);
	/* The issuer is the CA's subject byte for byte. */
	assert_int_equal(crt.issuer_raw.len, ca.subject_raw.len);
	assert_memory_equal(crt.issuer_raw.p, ca.subject_raw.p, ca.subject_raw.len);
	mbedtls_x509_crt_free(&ca);
	mbedtls_x509_crt_free(&crt);
	free(ca_p);
	free(crt_p);

	/* A CA subject mbedTLS cannot write: refused, nothing written. */
	char *dir3 = path(f->dir2, "odd");
	put_ca(dir3, foreign_odd_crt, foreign_odd_key);
	assert_int_equal(pki_issue(dir3, PKI_KIND_DEVICE, "dev-1", NULL, NULL), -FL_EUNSUPPORTED);
	assert_int_equal(fl_test_count_files(dir3), 2);
	/* A CA key that is not the certificate's: refused. */
	put_ca(dir3, foreign_odd_crt, foreign_ok_key);
	assert_int_equal(pki_issue(dir3, PKI_KIND_DEVICE, "dev-1", NULL, NULL), -FL_EKEY);
	/* A leaf is no CA. */
	char *leaf = path(f->dir2, "devices/dev-1.crt"), *data = NULL;
	size_t len;
	assert_int_equal(fl_read_file(leaf, 65536, &data, &len), 0);
	put_ca(dir3, data, foreign_ok_key);
	assert_int_equal(pki_issue(dir3, PKI_KIND_DEVICE, "dev-2", NULL, NULL), -FL_EKEY);
	assert_int_equal(fl_test_count_files(dir3), 2);
	free(data);
	free(leaf);
	free(dir3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_init_ca, setup, teardown),
		cmocka_unit_test_setup_teardown(test_issue_device, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_ids, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_ca, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expired, setup, teardown),
		cmocka_unit_test_setup_teardown(test_server_and_controller, setup, teardown),
		cmocka_unit_test_setup_teardown(test_csr_flow, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreign_ca, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
