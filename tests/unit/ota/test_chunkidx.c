/* Chunk index: build, encode/decode round trip, and every validation rule. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <flotilla/chunkidx.h>
#include <flotilla/error.h>

#define MIN OTA_CHUNK_MIN_DEFAULT
#define MAX OTA_CHUNK_MAX_DEFAULT

static const uint8_t file_sha[32] = {1, 2, 3};

/* An index of chunks with lengths LENS (flags FLAGS or NULL). */
static struct ota_chunkidx *build(const uint32_t *lens, const uint32_t *flags, size_t n,
				  uint64_t *ret_size)
{
	struct ota_chunkidx *idx = NULL;
	assert_int_equal(ota_chunkidx_new(NULL, OTA_CIDX_F_GGUF, &idx), 0);
	uint64_t off = 0;
	for (size_t i = 0; i < n; i++) {
		struct ota_chunk c = {.offset = off, .len = lens[i], .flags = flags ? flags[i] : 0};
		memset(c.sha256, (int)i + 1, 32);
		assert_int_equal(ota_chunkidx_add(idx, &c), 0);
		off += lens[i];
	}
	*ret_size = off;
	return idx;
}

static uint8_t *encode_ok(size_t *ret_len)
{
	uint32_t lens[] = {MIN, 100, MAX, 70000, 5};
	uint32_t flags[] = {0, OTA_CHUNK_F_FORCED, 0, 0, 0};
	uint64_t size;
	struct ota_chunkidx *idx = build(lens, flags, 5, &size);
	assert_int_equal(ota_chunkidx_seal(idx, size, file_sha), 0);
	uint8_t *buf = NULL;
	assert_int_equal(ota_chunkidx_encode(idx, &buf, ret_len), 0);
	ota_chunkidx_free(idx);
	return buf;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static void test_round_trip(void **state)
{
	(void)state;
	size_t len;
	uint8_t *buf = encode_ok(&len);
	assert_int_equal(len, OTA_CIDX_HEADER_BYTES + 5 * OTA_CIDX_ENTRY_BYTES);
	assert_memory_equal(buf, "FLCIDX\1\0", 8);
	struct ota_chunkidx *idx = NULL;
	assert_int_equal(ota_chunkidx_decode(buf, len, &idx), 0);
	assert_int_equal(ota_chunkidx_count(idx), 5);
	assert_int_equal(ota_chunkidx_flags(idx), OTA_CIDX_F_GGUF);
	assert_int_equal(ota_chunkidx_file_size(idx), MIN + 100 + MAX + 70000 + 5);
	assert_memory_equal(ota_chunkidx_file_sha256(idx), file_sha, 32);
	const struct ota_chunk *c = ota_chunkidx_get(idx, 1);
	assert_int_equal(c->offset, MIN);
	assert_int_equal(c->len, 100);
	assert_int_equal(c->flags, OTA_CHUNK_F_FORCED);
	assert_int_equal(c->sha256[0], 2);
	assert_null(ota_chunkidx_get(idx, 5));
	struct ota_chunk_params p;
	ota_chunkidx_params(idx, &p);
	assert_int_equal(p.avg_bytes, OTA_CHUNK_AVG_DEFAULT);
	/* re-encoding gives the same bytes */
	uint8_t *buf2 = NULL;
	size_t len2;
	assert_int_equal(ota_chunkidx_encode(idx, &buf2, &len2), 0);
	assert_int_equal(len2, len);
	assert_memory_equal(buf, buf2, len);
	ota_chunkidx_free(idx);
	free(buf);
	free(buf2);

	/* The empty file: zero chunks. */
	struct ota_chunkidx *e = NULL;
	assert_int_equal(ota_chunkidx_new(NULL, 0, &e), 0);
	assert_int_equal(ota_chunkidx_encode(e, &buf, &len), -EINVAL); /* not sealed */
	assert_int_equal(ota_chunkidx_seal(e, 0, file_sha), 0);
	assert_int_equal(ota_chunkidx_encode(e, &buf, &len), 0);
	ota_chunkidx_free(e);
	assert_int_equal(ota_chunkidx_decode(buf, len, &e), 0);
	assert_int_equal(ota_chunkidx_count(e), 0);
	ota_chunkidx_free(e);
	free(buf);
}

static void test_seal_rules(void **state)
{
	(void)state;
	struct {
		uint32_t lens[4];
		uint32_t flags[4];
		size_t n;
		int64_t size_delta;
	} cases[] = {
		{{MIN - 1, MIN}, {0, 0}, 2, 0},      /* short chunk, not forced, not last */
		{{MAX + 1}, {0}, 1, 0},               /* longer than max */
		{{MIN, 0, MIN}, {0, 0, 0}, 3, 0},     /* empty chunk */
		{{MIN, MIN}, {0, 0}, 2, 1},           /* sum != file size */
		{{MIN, MIN}, {0, 0}, 2, -1},          /* sum != file size */
		{{MIN}, {0x80}, 1, 0},                /* unknown chunk flag */
		{{0}, {0}, 0, 5},                     /* no chunks, non-empty file */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t size;
		struct ota_chunkidx *idx = build(cases[i].lens, cases[i].flags, cases[i].n, &size);
		assert_int_equal(ota_chunkidx_seal(idx, size + (uint64_t)cases[i].size_delta, file_sha),
				 -FL_EFORMAT);
		ota_chunkidx_free(idx);
	}
	/* non-contiguous offsets */
	struct ota_chunkidx *idx = NULL;
	assert_int_equal(ota_chunkidx_new(NULL, 0, &idx), 0);
	struct ota_chunk c = {.offset = 0, .len = MIN};
	assert_int_equal(ota_chunkidx_add(idx, &c), 0);
	c.offset = MIN + 1;
	assert_int_equal(ota_chunkidx_add(idx, &c), 0);
	assert_int_equal(ota_chunkidx_seal(idx, 2 * MIN, file_sha), -FL_EFORMAT);
	ota_chunkidx_free(idx);
	/* bad parameters and flags at creation */
	struct ota_chunk_params bad = {1, 2, 3};
	assert_int_equal(ota_chunkidx_new(&bad, 0, &idx), -EINVAL);
	assert_int_equal(ota_chunkidx_new(NULL, 0x100, &idx), -EINVAL);
}

static void expect_decode(uint8_t *buf, size_t len, int want)
{
	struct ota_chunkidx *idx = NULL;
	assert_int_equal(ota_chunkidx_decode(buf, len, &idx), want);
	assert_null(idx);
}

static void test_decode_errors(void **state)
{
	(void)state;
	size_t len;
	uint8_t *ok = encode_ok(&len);
	uint8_t *b = malloc(len + 64);
	const size_t E0 = OTA_CIDX_HEADER_BYTES, ES = OTA_CIDX_ENTRY_BYTES;

#define FRESH() memcpy(b, ok, len)
	FRESH();
	expect_decode(b, 10, -FL_EFORMAT);          /* shorter than a header */
	expect_decode(b, len - 1, -FL_EFORMAT);     /* truncated entry */
	memset(b + len, 0, 48);
	expect_decode(b, len + 48, -FL_EFORMAT);    /* trailing bytes */
	FRESH(); b[0] = 'X';
	expect_decode(b, len, -FL_EFORMAT);         /* magic */
	FRESH(); b[6] = 2;
	expect_decode(b, len, -FL_EUNSUPPORTED);    /* version */
	FRESH(); put32(b + 8, 0x10);
	expect_decode(b, len, -FL_EFORMAT);         /* unknown index flag */
	FRESH(); put32(b + 12, 8);
	expect_decode(b, len, -FL_EFORMAT);         /* min below the floor */
	FRESH(); put32(b + 16, 70000);
	expect_decode(b, len, -FL_EFORMAT);         /* avg not a power of two */
	FRESH(); put32(b + 20, 64u * 1024 * 1024);
	expect_decode(b, len, -FL_EFORMAT);         /* max above the ceiling */
	FRESH(); put64(b + 24, 1);
	expect_decode(b, len, -FL_EFORMAT);         /* file size != sum */
	FRESH(); put64(b + 32, 4);
	expect_decode(b, len, -FL_EFORMAT);         /* count disagrees with length */
	FRESH(); put64(b + 32, (uint64_t)OTA_CIDX_MAX_CHUNKS + 1);
	expect_decode(b, len, -FL_ETOOBIG);         /* count over the limit */
	FRESH(); put64(b + 32, UINT64_MAX / 48 + 2);
	expect_decode(b, len, -FL_ETOOBIG);         /* count that would overflow */
	FRESH(); b[75] = 1;
	expect_decode(b, len, -FL_EFORMAT);         /* reserved bytes */
	FRESH(); put64(b + E0 + ES, MIN + 1);
	expect_decode(b, len, -FL_EFORMAT);         /* gap between chunks */
	FRESH(); put64(b + E0 + 2 * ES, MIN);
	expect_decode(b, len, -FL_EFORMAT);         /* overlap (not monotonic) */
	FRESH(); put32(b + E0 + ES + 12, 0);
	expect_decode(b, len, -FL_EFORMAT);         /* short chunk without forced flag */
	FRESH(); put32(b + E0 + 2 * ES + 8, MAX + 1);
	expect_decode(b, len, -FL_EFORMAT);         /* chunk above max */
	FRESH(); put32(b + E0 + 4 * ES + 8, 0);
	expect_decode(b, len, -FL_EFORMAT);         /* empty last chunk */
	FRESH(); put32(b + E0 + 12, 2);
	expect_decode(b, len, -FL_EFORMAT);         /* unknown chunk flag */
	expect_decode(b, OTA_CIDX_MAX_BYTES + 1, -FL_ETOOBIG); /* refused before reading */
	FRESH();
	struct ota_chunkidx *idx = NULL;
	assert_int_equal(ota_chunkidx_decode(b, len, &idx), 0); /* the original still decodes */
	ota_chunkidx_free(idx);
#undef FRESH
	free(b);
	free(ok);
}

static void test_limits(void **state)
{
	(void)state;
	struct ota_chunkidx *idx = NULL;
	assert_int_equal(ota_chunkidx_new(NULL, 0, &idx), 0);
	struct ota_chunk c = {.len = MIN};
	for (size_t i = 0; i < OTA_CIDX_MAX_CHUNKS; i++) {
		c.offset = (uint64_t)i * MIN;
		assert_int_equal(ota_chunkidx_add(idx, &c), 0);
	}
	assert_int_equal(ota_chunkidx_add(idx, &c), -FL_ETOOBIG);
	assert_int_equal(ota_chunkidx_count(idx), OTA_CIDX_MAX_CHUNKS);
	assert_int_equal(ota_chunkidx_seal(idx, (uint64_t)OTA_CIDX_MAX_CHUNKS * MIN, file_sha), 0);
	assert_int_equal(ota_chunkidx_add(idx, &c), -EINVAL); /* sealed */
	ota_chunkidx_free(idx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_seal_rules),
		cmocka_unit_test(test_decode_errors),
		cmocka_unit_test(test_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
