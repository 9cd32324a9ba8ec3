/* Fleet PKI revocation: pki_revoke() / pki_crl_write() write revoked.txt and
 * a CRL signed by the CA; the CRL is cross-checked with mbedTLS (a second
 * implementation: it must see the device revoked); pki_crl_check() reports
 * revoked / not revoked / foreign or tampered CRL; bad input changes no file. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <mbedtls/x509_crl.h>
#include <mbedtls/x509_crt.h>

#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/pki.h>
#include <flotilla/util.h>

#include "testutil.h"

struct fx {
	char *root;
	char *dir;   /* the fleet CA with devices d1, d2 */
	char *other; /* an unrelated CA (same default name) */
};

static char *path(const char *dir, const char *rel)
{
	char *p = fl_path_join(dir, rel);
	assert_non_null(p);
	return p;
}

static char *slurp(const char *dir, const char *rel)
{
	char *p = path(dir, rel), *data = NULL;
	size_t len = 0;
	int r = fl_read_file(p, 1 << 20, &data, &len);
	free(p);
	return r == 0 ? data : NULL;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->root = fl_test_mkdtemp("pki_crl");
	assert_non_null(f->root);
	f->dir = path(f->root, "ca");
	f->other = path(f->root, "other");
	assert_int_equal(pki_init(f->dir, NULL), 0);
	assert_int_equal(pki_init(f->other, NULL), 0);
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "d1", NULL, NULL), 0);
	assert_int_equal(pki_issue(f->dir, PKI_KIND_DEVICE, "d2", NULL, NULL), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	fl_rm_rf(f->root);
	free(f->root);
	free(f->dir);
	free(f->other);
	free(f);
	return 0;
}

static int check(struct fx *f, const char *crl_dir, const char *dev, struct pki_crl_info *info)
{
	char *ca = path(f->dir, "ca.crt"), *crl = path(crl_dir, "ca.crl");
	char *crt = fl_asprintf("%s/devices/%s.crt", f->dir, dev);
	assert_non_null(crt);
	int r = pki_crl_check(ca, crl, crt, info);
	free(ca);
	free(crl);
	free(crt);
	return r;
}

/* mbedTLS verification flags of DEV against the CA and the CRL. */
static uint32_t mbed_flags(struct fx *f, const char *dev)
{
	char *ca_p = path(f->dir, "ca.crt"), *crl_p = path(f->dir, "ca.crl");
	char *crt_p = fl_asprintf("%s/devices/%s.crt", f->dir, dev);
	mbedtls_x509_crt ca, crt;
	mbedtls_x509_crl crl;
	mbedtls_x509_crt_init(&ca);
	mbedtls_x509_crt_init(&crt);
	mbedtls_x509_crl_init(&crl);
	assert_int_equal(mbedtls_x509_crt_parse_file(&ca, ca_p), 0);
	assert_int_equal(mbedtls_x509_crt_parse_file(&crt, crt_p), 0);
	assert_int_equal(mbedtls_x509_crl_parse_file(&crl, crl_p), 0);
	uint32_t flags = 0;
	(void)mbedtls_x509_crt_verify(&crt, &ca, &crl, NULL, &flags, NULL, NULL);
	mbedtls_x509_crl_free(&crl);
	mbedtls_x509_crt_free(&crt);
	mbedtls_x509_crt_free(&ca);
	free(ca_p);
	free(crl_p);
	free(crt_p);
	return flags;
}

static void test_revoke_device(void **state)
{
	struct fx *f = *state;
	char serial[PKI_SERIAL_HEX_MAX + 1] = "";
	int64_t now = fl_now_s();
	assert_int_equal(pki_revoke(f->dir, "d1", NULL, 0, serial), 0);
	assert_true(strlen(serial) > 0 && strlen(serial) <= 32);

	/* The serial is the certificate's, as pki_verify() reports it. */
	char *ca = path(f->dir, "ca.crt"), *crt = path(f->dir, "devices/d1.crt");
	struct pki_cert_info ci;
	assert_int_equal(pki_verify(ca, crt, NULL, PKI_KIND_DEVICE, &ci), 0);
	assert_string_equal(ci.serial_hex, serial); /* 16 bytes, top byte 0x40..0x7f */
	free(ca);
	free(crt);

	char *list = slurp(f->dir, "revoked.txt");
	assert_non_null(list);
	char *want = fl_asprintf("\n%s ", serial);
	assert_non_null(strstr(list, want));
	assert_non_null(strstr(list, " d1\n"));
	free(want);
	free(list);

	struct pki_crl_info info;
	assert_int_equal(check(f, f->dir, "d1", &info), -FL_EKEYREVOKED);
	assert_int_equal(info.n_revoked, 1);
	assert_true(info.revoked_at_s >= now - 1 && info.revoked_at_s <= now + 5);
	assert_true(info.this_update_s >= now - 1 && info.this_update_s <= now + 5);
	assert_int_equal(info.next_update_s - info.this_update_s,
			 (int64_t)PKI_CRL_DAYS_DEFAULT * 86400);
	assert_int_equal(check(f, f->dir, "d2", &info), 0);

	/* mbedTLS agrees: d1 revoked, d2 fine. */
	assert_true(mbed_flags(f, "d1") & MBEDTLS_X509_BADCERT_REVOKED);
	assert_int_equal(mbed_flags(f, "d2"), 0);

	/* Again: -EALREADY, still one entry, CRL re-issued. */
	char *crl1 = slurp(f->dir, "ca.crl");
	assert_int_equal(pki_revoke(f->dir, "d1", NULL, 7, NULL), -EALREADY);
	assert_int_equal(check(f, f->dir, "d1", &info), -FL_EKEYREVOKED);
	assert_int_equal(info.n_revoked, 1);
	assert_int_equal(info.next_update_s - info.this_update_s, (int64_t)7 * 86400);
	char *crl2 = slurp(f->dir, "ca.crl");
	assert_string_not_equal(crl1, crl2);
	free(crl1);
	free(crl2);
}

static void test_revoke_serial_forms(void **state)
{
	struct fx *f = *state;
	char serial[PKI_SERIAL_HEX_MAX + 1];
	assert_int_equal(pki_revoke(f->dir, NULL, "0x00AB:CD:01", 0, serial), 0);
	assert_string_equal(serial, "abcd01");
	assert_int_equal(pki_revoke(f->dir, NULL, "abcd01", 0, NULL), -EALREADY);
	/* 40 digits is the maximum. */
	assert_int_equal(pki_revoke(f->dir, NULL, "7fffffffffffffffffffffffffffffffffffffff", 0, serial),
			 0);
	struct pki_crl_info info;
	assert_int_equal(check(f, f->dir, "d1", &info), 0);
	assert_int_equal(info.n_revoked, 2);
}

static void test_crl_write_empty(void **state)
{
	struct fx *f = *state;
	assert_int_equal(pki_crl_write(f->dir, 90), 0);
	char *lp = path(f->dir, "revoked.txt");
	assert_int_equal(access(lp, F_OK), -1); /* not created */
	free(lp);
	struct pki_crl_info info;
	assert_int_equal(check(f, f->dir, "d1", &info), 0);
	assert_int_equal(info.n_revoked, 0);
	assert_int_equal(info.next_update_s - info.this_update_s, (int64_t)90 * 86400);
	assert_int_equal(mbed_flags(f, "d1"), 0);
}

static void test_bad_input_changes_nothing(void **state)
{
	struct fx *f = *state;
	assert_int_equal(pki_revoke(f->dir, "d2", NULL, 0, NULL), 0);
	char *list0 = slurp(f->dir, "revoked.txt"), *crl0 = slurp(f->dir, "ca.crl");
	assert_non_null(list0);
	assert_non_null(crl0);

	assert_int_equal(pki_revoke(NULL, "d1", NULL, 0, NULL), -EINVAL);
	assert_int_equal(pki_revoke("", "d1", NULL, 0, NULL), -EINVAL);
	assert_int_equal(pki_revoke(f->dir, NULL, NULL, 0, NULL), -EINVAL);
	assert_int_equal(pki_revoke(f->dir, "d1", "01", 0, NULL), -EINVAL);
	assert_int_equal(pki_revoke(f->dir, "../d1", NULL, 0, NULL), -EINVAL);
	assert_int_equal(pki_revoke(f->dir, "nosuch", NULL, 0, NULL), -ENOENT);
	assert_int_equal(pki_revoke(f->dir, NULL, "zz", 0, NULL), -EINVAL);
	assert_int_equal(pki_revoke(f->dir, NULL, "0", 0, NULL), -EINVAL);
	assert_int_equal(pki_revoke(f->dir, NULL, "", 0, NULL), -EINVAL);
	assert_int_equal(pki_revoke(f->dir, NULL, "12 34", 0, NULL), -EINVAL);
	assert_int_equal(pki_revoke(f->dir, NULL, "1ffffffffffffffffffffffffffffffffffffffff", 0, NULL),
			 -EINVAL); /* 41 digits */
	assert_int_equal(pki_revoke(f->dir, "d1", NULL, -1, NULL), -EINVAL);
	assert_int_equal(pki_revoke(f->dir, "d1", NULL, PKI_DAYS_MAX + 1, NULL), -EINVAL);
	assert_int_equal(pki_crl_write(f->dir, -1), -EINVAL);
	assert_int_equal(pki_crl_write(NULL, 0), -EINVAL);

	/* A device certificate that does not parse. */
	char *bad = path(f->dir, "devices/junk.crt");
	assert_int_equal(fl_test_write(bad, "not a cert", 10), 0);
	assert_int_equal(pki_revoke(f->dir, "junk", NULL, 0, NULL), -FL_EFORMAT);
	free(bad);

	/* A CA key that does not match ca.crt: nothing is signed or written. */
	char *key = path(f->dir, "ca.key"), *okey = path(f->other, "ca.key");
	char *keep = slurp(f->dir, "ca.key");
	char *other_key = slurp(f->other, "ca.key");
	assert_int_equal(fl_write_file_atomic(key, other_key, strlen(other_key), 0600), 0);
	assert_int_equal(pki_revoke(f->dir, "d1", NULL, 0, NULL), -FL_EKEY);
	assert_int_equal(pki_crl_write(f->dir, 0), -FL_EKEY);
	assert_int_equal(fl_write_file_atomic(key, keep, strlen(keep), 0600), 0);
	free(keep);
	free(other_key);
	free(key);
	free(okey);

	char *list1 = slurp(f->dir, "revoked.txt"), *crl1 = slurp(f->dir, "ca.crl");
	assert_string_equal(list0, list1);
	assert_string_equal(crl0, crl1);
	free(list1);
	free(crl1);

	/* A corrupt revoked.txt is refused, not silently emptied. */
	char *lp = path(f->dir, "revoked.txt");
	const char *corrupt = "# comment\nnot-hex 123\n";
	assert_int_equal(fl_write_file_atomic(lp, corrupt, strlen(corrupt), 0644), 0);
	assert_int_equal(pki_crl_write(f->dir, 0), -FL_EFORMAT);
	assert_int_equal(pki_revoke(f->dir, "d1", NULL, 0, NULL), -FL_EFORMAT);
	crl1 = slurp(f->dir, "ca.crl");
	assert_string_equal(crl0, crl1);
	free(crl1);
	/* Upper case or leading zeros are not the normal form either. */
	const char *upper = "ABCD 123\n";
	assert_int_equal(fl_write_file_atomic(lp, upper, strlen(upper), 0644), 0);
	assert_int_equal(pki_crl_write(f->dir, 0), -FL_EFORMAT);
	assert_int_equal(fl_write_file_atomic(lp, list0, strlen(list0), 0644), 0);
	assert_int_equal(pki_crl_write(f->dir, 0), 0);
	free(lp);
	free(list0);
	free(crl0);
}

static void test_check_foreign_and_tampered(void **state)
{
	struct fx *f = *state;
	assert_int_equal(pki_revoke(f->dir, "d1", NULL, 0, NULL), 0);
	/* Another CA (same name "Flotilla Fleet CA") revoking nothing: its CRL
	 * must not be accepted as this CA's. */
	assert_int_equal(pki_crl_write(f->other, 0), 0);
	struct pki_crl_info info;
	assert_int_equal(check(f, f->other, "d1", &info), -FL_EBADSIG);
	assert_int_equal(check(f, f->other, "d2", NULL), -FL_EBADSIG);

	/* Tampered: one base64 character of the body changed. */
	char *crl = slurp(f->dir, "ca.crl");
	assert_non_null(crl);
	char *body = strchr(crl, '\n') + 1;
	size_t pos = 60;
	body[pos] = body[pos] == 'A' ? 'B' : 'A';
	char *tp = path(f->root, "tampered");
	assert_int_equal(fl_mkdir_p(tp, 0755), 0);
	char *tcrl = path(tp, "ca.crl");
	assert_int_equal(fl_write_file_atomic(tcrl, crl, strlen(crl), 0644), 0);
	int r = check(f, tp, "d1", NULL);
	assert_true(r == -FL_EBADSIG || r == -FL_EFORMAT);

	/* Not a CRL at all; missing file. */
	assert_int_equal(fl_write_file_atomic(tcrl, "junk\n", 5, 0644), 0);
	assert_int_equal(check(f, tp, "d1", NULL), -FL_EFORMAT);
	assert_int_equal(unlink(tcrl), 0);
	assert_int_equal(check(f, tp, "d1", NULL), -ENOENT);
	assert_int_equal(pki_crl_check(NULL, tcrl, tcrl, NULL), -EINVAL);
	free(tcrl);
	free(tp);
	free(crl);
}

/* Controller CNs are the names the broker ACL generator grants rights. */
static void test_controller_names(void **state)
{
	struct fx *f = *state;
	struct pki_opts o = {.out = "controller-2"};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_CONTROLLER, "flotilla-controller-2", &o, NULL), 0);
	struct pki_opts o3 = {.out = "controller-3"};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_CONTROLLER, "ops", &o3, NULL), -EINVAL);
	assert_int_equal(pki_issue(f->dir, PKI_KIND_CONTROLLER, "flotilla-controllerX", &o3, NULL),
			 -EINVAL);
	struct pki_opts o4 = {.out = "controller-3", .cn = "dev-1"};
	assert_int_equal(pki_issue(f->dir, PKI_KIND_CONTROLLER, NULL, &o4, NULL), -EINVAL);
	char *p = path(f->dir, "controller-3.key");
	assert_int_equal(access(p, F_OK), -1);
	free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_revoke_device, setup, teardown),
		cmocka_unit_test_setup_teardown(test_revoke_serial_forms, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crl_write_empty, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_input_changes_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_foreign_and_tampered, setup, teardown),
		cmocka_unit_test_setup_teardown(test_controller_names, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
