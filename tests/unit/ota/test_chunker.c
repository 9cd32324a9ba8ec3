/* Chunker: determinism, streaming independence, boundary stability, limits,
 * forced cuts and GGUF tensor-aware cuts. */
#include <errno.h>
#include <fcntl.h>
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

#include <flotilla/chunker.h>
#include <flotilla/chunkidx.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>

struct list {
	struct ota_chunk *v;
	size_t n, cap;
};

static int collect(void *ud, const struct ota_chunk *c)
{
	struct list *l = ud;
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		assert_non_null(l->v);
	}
	l->v[l->n++] = *c;
	return 0;
}

static uint64_t rng_state;
static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
	rng_state = seed;
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(rnd() >> 56);
}

static struct list chunk_buf(const uint8_t *p, size_t n, size_t block, const uint64_t *cuts,
			     size_t ncuts)
{
	struct ota_chunker *c = NULL;
	struct list l = {0};
	assert_int_equal(ota_chunker_new(NULL, &c), 0);
	if (ncuts)
		assert_int_equal(ota_chunker_set_cuts(c, cuts, ncuts), 0);
	for (size_t off = 0; off < n; off += block) {
		size_t k = n - off < block ? n - off : block;
		assert_int_equal(ota_chunker_feed(c, p + off, k, collect, &l), 0);
	}
	assert_int_equal(ota_chunker_finish(c, collect, &l), 0);
	assert_int_equal(ota_chunker_offset(c), n);
	ota_chunker_free(c);
	return l;
}

/* Sum of the lengths of chunks of B whose hash is not among A's. */
static uint64_t new_bytes(const struct list *a, const struct list *b, size_t *ret_chunks)
{
	uint64_t sum = 0;
	size_t cnt = 0;
	for (size_t i = 0; i < b->n; i++) {
		int found = 0;
		for (size_t j = 0; j < a->n && !found; j++)
			found = !memcmp(a->v[j].sha256, b->v[i].sha256, 32);
		if (!found) {
			sum += b->v[i].len;
			cnt++;
		}
	}
	if (ret_chunks)
		*ret_chunks = cnt;
	return sum;
}

static void check_list(const struct list *l, const uint8_t *p, size_t n)
{
	uint64_t off = 0;
	for (size_t i = 0; i < l->n; i++) {
		assert_int_equal(l->v[i].offset, off);
		assert_true(l->v[i].len <= OTA_CHUNK_MAX_DEFAULT);
		if (i + 1 < l->n && !(l->v[i].flags & OTA_CHUNK_F_FORCED))
			assert_true(l->v[i].len >= OTA_CHUNK_MIN_DEFAULT);
		uint8_t h[32];
		fl_sha256(p + off, l->v[i].len, h);
		assert_memory_equal(h, l->v[i].sha256, 32);
		off += l->v[i].len;
	}
	assert_int_equal(off, n);
}

#define BIG (8u * 1024 * 1024)

static void test_params(void **state)
{
	(void)state;
	struct ota_chunk_params p;
	struct ota_chunker *c = NULL;
	ota_chunk_params_default(&p);
	assert_int_equal(ota_chunk_params_check(&p), 0);
	struct ota_chunk_params bad[] = {
		{16, 64, 256},                     /* min too small */
		{1024, 3000, 8192},                /* avg not a power of two */
		{4096, 4096, 8192},                /* min == avg */
		{1024, 4096, 4096},                /* avg == max */
		{1024, 4096, 32u * 1024 * 1024},   /* max too large */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(ota_chunk_params_check(&bad[i]), -EINVAL);
		assert_int_equal(ota_chunker_new(&bad[i], &c), -EINVAL);
	}
	assert_int_equal(ota_chunker_new(NULL, &c), 0);
	uint64_t unsorted[] = {10, 5};
	assert_int_equal(ota_chunker_set_cuts(c, unsorted, 2), -EINVAL);
	uint8_t b[4] = {0};
	assert_int_equal(ota_chunker_feed(c, b, sizeof(b), NULL, NULL), 0);
	uint64_t late[] = {1};
	assert_int_equal(ota_chunker_set_cuts(c, late, 1), -EINVAL); /* after feeding */
	ota_chunker_free(c);
}

static void test_deterministic_and_streaming(void **state)
{
	(void)state;
	uint8_t *p = malloc(BIG);
	assert_non_null(p);
	fill_random(p, BIG, 1);
	struct list whole = chunk_buf(p, BIG, BIG, NULL, 0);
	check_list(&whole, p, BIG);
	/* Average chunk size near the target (normalized chunking). */
	uint64_t avg = BIG / whole.n;
	assert_true(avg >= 48 * 1024 && avg <= 112 * 1024);
	size_t blocks[] = {1, 7, 4096, 65537, 1u << 20};
	for (size_t b = 0; b < sizeof(blocks) / sizeof(blocks[0]); b++) {
		size_t n = blocks[b] < 4096 ? 1u << 20 : BIG; /* tiny blocks on a prefix */
		struct list l = chunk_buf(p, n, blocks[b], NULL, 0);
		struct list ref = n == BIG ? whole : chunk_buf(p, n, n, NULL, 0);
		assert_int_equal(l.n, ref.n);
		for (size_t i = 0; i < l.n; i++) {
			assert_int_equal(l.v[i].len, ref.v[i].len);
			assert_memory_equal(l.v[i].sha256, ref.v[i].sha256, 32);
		}
		if (ref.v != whole.v)
			free(ref.v);
		free(l.v);
	}
	free(whole.v);
	free(p);
}

static void test_boundary_stability(void **state)
{
	(void)state;
	uint8_t *p = malloc(BIG + 1000);
	assert_non_null(p);
	fill_random(p, BIG, 2);
	struct list a = chunk_buf(p, BIG, 1u << 20, NULL, 0);

	/* Modify 100 bytes in the middle: only the chunks around them change. */
	for (size_t i = 0; i < 100; i++)
		p[BIG / 2 + i] ^= 0x5a;
	struct list b = chunk_buf(p, BIG, 1u << 20, NULL, 0);
	size_t nchg;
	uint64_t moved = new_bytes(&a, &b, &nchg);
	assert_true(nchg >= 1 && nchg <= 2);
	assert_true(moved <= 2 * OTA_CHUNK_MAX_DEFAULT);
	for (size_t i = 0; i < 100; i++)
		p[BIG / 2 + i] ^= 0x5a;

	/* Insert 1000 bytes in the middle: boundaries resynchronise. */
	memmove(p + BIG / 2 + 1000, p + BIG / 2, BIG / 2);
	memset(p + BIG / 2, 0xab, 1000);
	struct list c = chunk_buf(p, BIG + 1000, 1u << 20, NULL, 0);
	check_list(&c, p, BIG + 1000);
	moved = new_bytes(&a, &c, &nchg);
	assert_true(nchg >= 1 && nchg <= 3);
	assert_true(moved <= 3 * OTA_CHUNK_MAX_DEFAULT);
	assert_true(c.n >= a.n - 1 && c.n <= a.n + 2);
	free(a.v);
	free(b.v);
	free(c.v);
	free(p);
}

static void test_min_max(void **state)
{
	(void)state;
	/* Zeros never match the mask: every chunk is max long, the last shorter. */
	size_t n = 5 * OTA_CHUNK_MAX_DEFAULT + 123;
	uint8_t *p = calloc(1, n);
	assert_non_null(p);
	struct list l = chunk_buf(p, n, 100000, NULL, 0);
	assert_int_equal(l.n, 6);
	for (size_t i = 0; i < 5; i++)
		assert_int_equal(l.v[i].len, OTA_CHUNK_MAX_DEFAULT);
	assert_int_equal(l.v[5].len, 123);
	/* All five full chunks are the same content: the same id. */
	assert_memory_equal(l.v[0].sha256, l.v[4].sha256, 32);
	free(l.v);
	free(p);

	/* Random data: no chunk below min (except the last) or above max. */
	p = malloc(BIG);
	assert_non_null(p);
	fill_random(p, BIG, 3);
	l = chunk_buf(p, BIG, 333333, NULL, 0);
	check_list(&l, p, BIG);
	free(l.v);
	free(p);

	/* Empty input: no chunk. */
	struct list e = chunk_buf(NULL, 0, 1, NULL, 0);
	assert_int_equal(e.n, 0);
}

static void test_forced_cuts(void **state)
{
	(void)state;
	uint8_t *p = malloc(BIG);
	assert_non_null(p);
	fill_random(p, BIG, 4);
	uint64_t cuts[] = {0, 100, 1000, 500000, 4u * 1024 * 1024, BIG, BIG + 10};
	struct list l = chunk_buf(p, BIG, 77777, cuts, sizeof(cuts) / sizeof(cuts[0]));
	check_list(&l, p, BIG);
	size_t hit = 0;
	for (size_t i = 0; i < l.n; i++) {
		uint64_t end = l.v[i].offset + l.v[i].len;
		for (size_t k = 1; k < 5; k++)
			if (end == cuts[k]) {
				assert_true(l.v[i].flags & OTA_CHUNK_F_FORCED);
				hit++;
			}
	}
	assert_int_equal(hit, 4);
	assert_int_equal(l.v[0].len, 100);
	assert_int_equal(l.v[1].len, 900);

	/* Rewriting the region before a forced cut leaves every chunk after it as is. */
	uint64_t cut2[] = {4u * 1024 * 1024};
	struct list a = chunk_buf(p, BIG, 1u << 20, cut2, 1);
	fill_random(p, 4u * 1024 * 1024, 99);
	struct list b = chunk_buf(p, BIG, 1u << 20, cut2, 1);
	size_t nchg;
	uint64_t moved = new_bytes(&a, &b, &nchg);
	assert_int_equal(moved, 4u * 1024 * 1024);
	free(a.v);
	free(b.v);
	free(l.v);
	free(p);
}

/* ---- a small GGUF v3 writer (F32 1-D tensors) ---- */
struct wb {
	uint8_t *p;
	size_t n, cap;
};
static void wb_put(struct wb *w, const void *d, size_t n)
{
	if (w->n + n > w->cap) {
		w->cap = (w->n + n) * 2;
		w->p = realloc(w->p, w->cap);
		assert_non_null(w->p);
	}
	memcpy(w->p + w->n, d, n);
	w->n += n;
}
static void wb_u32(struct wb *w, uint32_t v) { wb_put(w, &v, 4); }
static void wb_u64(struct wb *w, uint64_t v) { wb_put(w, &v, 8); }
static void wb_str(struct wb *w, const char *s)
{
	wb_u64(w, strlen(s));
	wb_put(w, s, strlen(s));
}

/* GGUF with N tensors of SIZES[i] bytes (multiples of 4), data random from
 * SEEDS[i]. *ret_starts gets each tensor's absolute data offset. */
static struct wb make_gguf(size_t n, const uint64_t *sizes, const uint64_t *seeds,
			   uint32_t alignment, uint64_t *ret_starts)
{
	struct wb w = {0};
	wb_put(&w, "GGUF", 4);
	wb_u32(&w, 3);
	wb_u64(&w, n);
	wb_u64(&w, 3);
	wb_str(&w, "general.architecture");
	wb_u32(&w, 8);
	wb_str(&w, "llama");
	wb_str(&w, "general.alignment");
	wb_u32(&w, 4);
	wb_u32(&w, alignment);
	wb_str(&w, "tokenizer.ggml.tokens");
	wb_u32(&w, 9);
	wb_u32(&w, 8);
	wb_u64(&w, 3);
	wb_str(&w, "a");
	wb_str(&w, "bb");
	wb_str(&w, "ccc");
	uint64_t off = 0;
	uint64_t *rel = calloc(n, sizeof(uint64_t));
	for (size_t i = 0; i < n; i++) {
		char name[32];
		snprintf(name, sizeof(name), "blk.%zu.weight", i);
		wb_str(&w, name);
		wb_u32(&w, 1);
		wb_u64(&w, sizes[i] / 4);
		wb_u32(&w, 0);
		wb_u64(&w, off);
		rel[i] = off;
		off += (sizes[i] + alignment - 1) / alignment * alignment;
	}
	uint8_t zero[256] = {0};
	while (w.n % alignment)
		wb_put(&w, zero, 1);
	uint64_t data = w.n;
	for (size_t i = 0; i < n; i++) {
		uint8_t *t = malloc(sizes[i]);
		fill_random(t, sizes[i], seeds[i]);
		wb_put(&w, t, sizes[i]);
		free(t);
		while ((w.n - data) % alignment)
			wb_put(&w, zero, 1);
		ret_starts[i] = data + rel[i];
	}
	free(rel);
	return w;
}

static void test_gguf_cuts(void **state)
{
	(void)state;
	uint64_t sizes[] = {4096, 1000000, 8, 300000, 65536};
	uint64_t seeds[] = {1, 2, 3, 4, 5};
	uint64_t starts[5];
	struct wb w = make_gguf(5, sizes, seeds, 64, starts);
	uint64_t *cuts = NULL;
	size_t n = 0;
	assert_int_equal(ota_gguf_tensor_cuts_mem(w.p, w.n, w.n, &cuts, &n), 0);
	assert_int_equal(n, 5); /* data start == tensor 0 start, de-duplicated */
	for (size_t i = 0; i < 5; i++)
		assert_int_equal(cuts[i], starts[i]);
	free(cuts);

	/* Malformed headers: all refused with -FL_EFORMAT, never a crash. */
	struct wb bad = {0};
	wb_put(&bad, w.p, w.n);
	bad.p[0] = 'X';
	assert_int_equal(ota_gguf_tensor_cuts_mem(bad.p, bad.n, bad.n, &cuts, &n), -FL_EFORMAT);
	bad.p[0] = 'G';
	bad.p[4] = 1; /* version 1 */
	assert_int_equal(ota_gguf_tensor_cuts_mem(bad.p, bad.n, bad.n, &cuts, &n), -FL_EFORMAT);
	bad.p[4] = 3;
	/* truncated inside the tensor table */
	assert_int_equal(ota_gguf_tensor_cuts_mem(bad.p, 200, 200, &cuts, &n), -FL_EFORMAT);
	/* file too short for the last tensor's offset */
	assert_int_equal(ota_gguf_tensor_cuts_mem(bad.p, bad.n, starts[4], &cuts, &n), -FL_EFORMAT);
	/* unaligned tensor offset: the last u64 of the tensor table */
	size_t data_start = (size_t)starts[0];
	size_t tab_end = data_start;
	while (tab_end > 0 && bad.p[tab_end - 1] == 0)
		tab_end--;
	/* find the last offset field: 8 bytes before the end of the table */
	uint64_t last_off = starts[4] - starts[0];
	size_t pos = 0;
	for (size_t i = 0; i + 8 <= data_start; i++)
		if (!memcmp(bad.p + i, &last_off, 8))
			pos = i;
	assert_true(pos > 0);
	uint64_t odd = last_off + 4;
	memcpy(bad.p + pos, &odd, 8);
	assert_int_equal(ota_gguf_tensor_cuts_mem(bad.p, bad.n, bad.n, &cuts, &n), -FL_EFORMAT);
	memcpy(bad.p + pos, &last_off, 8);
	/* absurd string length in the first key */
	uint64_t huge = 1ull << 62;
	memcpy(bad.p + 24, &huge, 8);
	assert_int_equal(ota_gguf_tensor_cuts_mem(bad.p, bad.n, bad.n, &cuts, &n), -FL_EFORMAT);
	/* absurd tensor count */
	memcpy(bad.p, w.p, w.n);
	memcpy(bad.p + 8, &huge, 8);
	assert_int_equal(ota_gguf_tensor_cuts_mem(bad.p, bad.n, bad.n, &cuts, &n), -FL_EFORMAT);
	free(bad.p);
	free(w.p);
}

static char *tmp_path(const char *name)
{
	const char *dir = getenv("FL_TEST_TMPDIR");
	if (!dir)
		dir = "/tmp";
	mkdir(dir, 0755);
	char *p = malloc(4096);
	snprintf(p, 4096, "%s/chunker-%d-%s", dir, (int)getpid(), name);
	return p;
}

static void write_file(const char *path, const void *d, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, d, n), (ssize_t)n);
	close(fd);
}

static uint64_t idx_new_bytes(const struct ota_chunkidx *a, const struct ota_chunkidx *b)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < ota_chunkidx_count(b); i++) {
		const struct ota_chunk *cb = ota_chunkidx_get(b, i);
		int found = 0;
		for (size_t j = 0; j < ota_chunkidx_count(a) && !found; j++)
			found = !memcmp(ota_chunkidx_get(a, j)->sha256, cb->sha256, 32);
		if (!found)
			sum += cb->len;
	}
	return sum;
}

static void test_gguf_finetune_delta(void **state)
{
	(void)state;
	enum { N = 20 };
	uint64_t sizes[N], seeds[N], starts[N];
	for (size_t i = 0; i < N; i++) {
		sizes[i] = 200000 + 4 * (uint64_t)(i * 7919 % 50000); /* 200-400 kB */
		seeds[i] = 100 + i;
	}
	struct wb a = make_gguf(N, sizes, seeds, 32, starts);
	/* fine-tune: tensors 3 and 11 rewritten completely */
	seeds[3] = 1003;
	seeds[11] = 1011;
	struct wb b = make_gguf(N, sizes, seeds, 32, starts);
	uint64_t changed = sizes[3] + sizes[11];

	char *pa = tmp_path("a.gguf"), *pb = tmp_path("b.gguf");
	write_file(pa, a.p, a.n);
	write_file(pb, b.p, b.n);
	struct ota_chunkidx *ia = NULL, *ib = NULL, *pa_plain = NULL, *pb_plain = NULL;
	assert_int_equal(ota_chunk_file(pa, NULL, OTA_CHUNK_OPT_GGUF, &ia), 0);
	assert_int_equal(ota_chunk_file(pb, NULL, OTA_CHUNK_OPT_GGUF, &ib), 0);
	assert_int_equal(ota_chunkidx_flags(ia), OTA_CIDX_F_GGUF);
	assert_int_equal(ota_chunkidx_file_size(ia), a.n);
	uint8_t h[32];
	fl_sha256(a.p, a.n, h);
	assert_memory_equal(ota_chunkidx_file_sha256(ia), h, 32);
	/* every tensor start is a chunk boundary */
	for (size_t t = 0; t < N; t++) {
		int found = 0;
		for (size_t i = 0; i < ota_chunkidx_count(ia); i++)
			found |= ota_chunkidx_get(ia, i)->offset == starts[t];
		assert_true(found);
	}
	uint64_t moved = idx_new_bytes(ia, ib);
	assert_true(moved >= changed);
	assert_true(moved * 100 <= changed * 102); /* <= 1.02x the changed bytes */

	/* Plain CDC of the same files moves more (the tensor-aware mode is why). */
	assert_int_equal(ota_chunk_file(pa, NULL, 0, &pa_plain), 0);
	assert_int_equal(ota_chunk_file(pb, NULL, 0, &pb_plain), 0);
	assert_int_equal(ota_chunkidx_flags(pa_plain), 0);
	assert_true(idx_new_bytes(pa_plain, pb_plain) > moved);

	/* A non-GGUF file with the option: plain CDC, no flag. */
	a.p[0] = 'X';
	write_file(pa, a.p, a.n);
	struct ota_chunkidx *ix = NULL;
	assert_int_equal(ota_chunk_file(pa, NULL, OTA_CHUNK_OPT_GGUF, &ix), 0);
	assert_int_equal(ota_chunkidx_flags(ix), 0);

	/* Errors: missing file, directory. */
	struct ota_chunkidx *none = NULL;
	assert_int_equal(ota_chunk_file("/nonexistent/x", NULL, 0, &none), -ENOENT);
	int dfd = open("/", O_RDONLY | O_DIRECTORY);
	assert_int_equal(ota_chunk_fd(dfd, NULL, 0, &none), -EINVAL);
	close(dfd);
	assert_null(none);

	unlink(pa);
	unlink(pb);
	free(pa);
	free(pb);
	ota_chunkidx_free(ia);
	ota_chunkidx_free(ib);
	ota_chunkidx_free(ix);
	ota_chunkidx_free(pa_plain);
	ota_chunkidx_free(pb_plain);
	free(a.p);
	free(b.p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_deterministic_and_streaming),
		cmocka_unit_test(test_boundary_stability),
		cmocka_unit_test(test_min_max),
		cmocka_unit_test(test_forced_cuts),
		cmocka_unit_test(test_gguf_cuts),
		cmocka_unit_test(test_gguf_finetune_delta),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
