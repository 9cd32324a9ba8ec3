#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testutil.h"
#include <flotilla/error.h>
#include <flotilla/hash.h>

/* FIPS 180-2 test vectors. */
static const char abc_hex[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
static const char empty_hex[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
static const char two_block_hex[] = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";

static void test_sha256_vectors(void **state)
{
	(void)state;
	uint8_t d[32];
	char hex[65];
	fl_sha256("abc", 3, d);
	fl_hex_encode(d, 32, hex);
	assert_string_equal(hex, abc_hex);
	fl_sha256("", 0, d);
	fl_hex_encode(d, 32, hex);
	assert_string_equal(hex, empty_hex);

	/* Streaming in odd pieces equals one shot. */
	const char *msg = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	struct fl_sha256 *h = fl_sha256_new();
	assert_non_null(h);
	for (size_t i = 0; i < strlen(msg); i += 7)
		fl_sha256_update(h, msg + i, strlen(msg) - i < 7 ? strlen(msg) - i : 7);
	fl_sha256_final(h, d);
	fl_hex_encode(d, 32, hex);
	assert_string_equal(hex, two_block_hex);
	fl_sha256_reset(h);
	fl_sha256_update(h, "abc", 3);
	fl_sha256_final(h, d);
	fl_hex_encode(d, 32, hex);
	assert_string_equal(hex, abc_hex);
	fl_sha256_free(h);
	fl_sha256_free(NULL);
}

static void test_sha256_file(void **state)
{
	(void)state;
	char *dir = fl_test_mkdtemp("hash");
	char *p = fl_path_join(dir, "f");
	/* 3 MiB + 1: crosses the 1 MiB read buffer. */
	size_t n = 3 * 1024 * 1024 + 1;
	uint8_t *buf = malloc(n);
	for (size_t i = 0; i < n; i++)
		buf[i] = (uint8_t)(i * 31 + 7);
	assert_int_equal(fl_test_write(p, buf, n), 0);
	uint8_t a[32], b[32];
	uint64_t size = 0;
	assert_int_equal(fl_sha256_file(p, a, &size), 0);
	assert_int_equal(size, n);
	fl_sha256(buf, n, b);
	assert_memory_equal(a, b, 32);
	assert_int_equal(fl_sha256_file("/nonexistent/x", a, NULL), -ENOENT);
	free(buf);
	free(p);
	fl_rm_rf(dir);
	free(dir);
}

static void test_hex(void **state)
{
	(void)state;
	uint8_t in[4] = {0x00, 0xab, 0xCD, 0xff}, out[4];
	char hex[9];
	fl_hex_encode(in, 4, hex);
	assert_string_equal(hex, "00abcdff");
	assert_int_equal(fl_hex_decode("00ABcdff", out, 4), 0);
	assert_memory_equal(in, out, 4);
	assert_int_equal(fl_hex_decode("00abcdf", out, 4), -EINVAL);   /* short */
	assert_int_equal(fl_hex_decode("00abcdff0", out, 4), -EINVAL); /* long */
	assert_int_equal(fl_hex_decode("00abcdfg", out, 4), -EINVAL);  /* not hex */
	assert_int_equal(fl_hex_decode(NULL, out, 4), -EINVAL);
}

static void test_b64(void **state)
{
	(void)state;
	static const struct { const char *plain, *enc; } v[] = {
		{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"},
		{"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"},
	};
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char *e = fl_b64_encode((const uint8_t *)v[i].plain, strlen(v[i].plain));
		assert_string_equal(e, v[i].enc);
		uint8_t *d;
		size_t dl;
		assert_int_equal(fl_b64_decode(e, strlen(e), &d, &dl), 0);
		assert_int_equal(dl, strlen(v[i].plain));
		assert_memory_equal(d, v[i].plain, dl);
		free(d);
		free(e);
	}
	uint8_t *d = NULL;
	size_t dl;
	assert_int_equal(fl_b64_decode("Zm9", 3, &d, &dl), -EINVAL);      /* not a multiple of 4 */
	assert_int_equal(fl_b64_decode("Zm 9v", 5, &d, &dl), -EINVAL);    /* whitespace */
	assert_int_equal(fl_b64_decode("Zm9v\nYg==", 9, &d, &dl), -EINVAL);
	assert_int_equal(fl_b64_decode("Z=9v", 4, &d, &dl), -EINVAL);     /* padding inside */
	assert_int_equal(fl_b64_decode("Zh==", 4, &d, &dl), -EINVAL);     /* non-canonical bits */
	assert_int_equal(fl_b64_decode("Zm9=Zm9v", 8, &d, &dl), -EINVAL); /* padding mid-stream */
	assert_null(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sha256_vectors),
		cmocka_unit_test(test_sha256_file),
		cmocka_unit_test(test_hex),
		cmocka_unit_test(test_b64),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
