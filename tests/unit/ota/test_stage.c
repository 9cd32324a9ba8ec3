/* Staging a slot from chunks: network feeder, local reuse (fine-tune),
 * resume after free and after a crash at every failpoint, finish errors,
 * damaged sources, repeated content and bounds. Real files in FL_TEST_TMPDIR. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <flotilla/chunkidx.h>
#include <flotilla/failpoint.h>
#include <flotilla/hash.h>
#include <flotilla/manifest.h>
#include <flotilla/slot.h>
#include <flotilla/stage.h>

#include "ota_testutil.h"

#define MIB (1024u * 1024u)

/* Small chunks so a few MiB give hundreds of chunks (sync batches trigger). */
static const struct ota_chunk_params small_params = {1024, 4096, 16384};

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x2545f4914f6cdd1dull + 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

/* A file of SIZE pseudo-random bytes (seed SEED), written in blocks. */
static void make_file(const char *path, uint64_t size, uint64_t seed)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	uint8_t *blk = malloc(MIB);
	assert_non_null(blk);
	for (uint64_t off = 0; off < size; off += MIB) {
		size_t n = size - off < MIB ? (size_t)(size - off) : MIB;
		fill_random(blk, n, seed + off / MIB);
		assert_int_equal(fl_write_all(fd, blk, n), 0);
	}
	free(blk);
	close(fd);
}

static void write_at(const char *path, uint64_t off, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, data, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static void read_at(int fd, uint64_t off, void *data, size_t len)
{
	assert_int_equal(pread(fd, data, len, (off_t)off), (ssize_t)len);
}

static struct ota_chunkidx *chunk(const char *path, const struct ota_chunk_params *p)
{
	struct ota_chunkidx *idx = NULL;
	assert_int_equal(ota_chunk_file(path, p, 0, &idx), 0);
	return idx;
}

static void idx_hash(const struct ota_chunkidx *idx, uint8_t out[32])
{
	uint8_t *buf = NULL;
	size_t len = 0;
	assert_int_equal(ota_chunkidx_encode(idx, &buf, &len), 0);
	fl_sha256(buf, len, out);
	free(buf);
}

static struct ota_manifest *manifest(const char *version)
{
	struct ota_manifest *m = NULL;
	assert_int_equal(ota_manifest_new("model", version, 1, TU_NOW, TU_NOW + TU_DAY, &m), 0);
	return m;
}

static void add_file(struct ota_manifest *m, const char *path, const struct ota_chunkidx *idx)
{
	uint8_t ih[32];
	idx_hash(idx, ih);
	assert_int_equal(ota_manifest_add_file(m, path, ota_chunkidx_file_size(idx),
					       ota_chunkidx_file_sha256(idx), ih),
			 0);
}

static bool exists(const char *path)
{
	struct stat sb;
	return lstat(path, &sb) == 0;
}

static bool same_file(const char *a, const char *b)
{
	uint8_t ha[32], hb[32];
	uint64_t sa = 0, sb = 0;
	assert_int_equal(fl_sha256_file(a, ha, &sa), 0);
	assert_int_equal(fl_sha256_file(b, hb, &sb), 0);
	return sa == sb && !memcmp(ha, hb, 32);
}

/* Put chunk I of SRC_FD (index IDX) into ST. */
static int put_from(struct ota_stage *st, int src_fd, const struct ota_chunkidx *idx, size_t i)
{
	const struct ota_chunk *c = ota_chunkidx_get(idx, i);
	uint8_t *buf = malloc(c->len);
	assert_non_null(buf);
	read_at(src_fd, c->offset, buf, c->len);
	int r = ota_stage_put_chunk(st, c->sha256, buf, c->len);
	free(buf);
	return r;
}

/* Drain next_missing in windows of 8, answering each from the files FDS
 * (chunk ids looked up in IDXS). Returns the bytes fetched; *RET_IDS (if not
 * NULL) the number of ids. */
static uint64_t feed_missing_n(struct ota_stage *st, const int *fds,
			       const struct ota_chunkidx *const *idxs, size_t n_src,
			       size_t *ret_ids)
{
	struct ota_chunkmap *map = NULL;
	assert_int_equal(ota_chunkmap_new(&map), 0);
	for (size_t s = 0; s < n_src; s++)
		assert_int_equal(ota_chunkmap_add(map, (uint32_t)s + 7, idxs[s]), 0);
	uint64_t bytes = 0;
	size_t ids = 0;
	struct ota_stage_want w[8];
	int n;
	uint8_t *buf = malloc(OTA_CHUNK_MAX_DEFAULT);
	assert_non_null(buf);
	while ((n = ota_stage_next_missing(st, w, 8)) > 0) {
		for (int k = 0; k < n; k++) {
			struct ota_chunkmap_hit hit;
			assert_true(ota_chunkmap_find(map, w[k].id, &hit, 1) >= 1);
			assert_true(hit.source >= 7 && hit.source < 7 + n_src);
			assert_int_equal(hit.len, w[k].len);
			read_at(fds[hit.source - 7], hit.offset, buf, hit.len);
			assert_true(ota_stage_put_chunk(st, w[k].id, buf, hit.len) >= 1);
			bytes += hit.len;
			ids++;
		}
	}
	assert_int_equal(n, 0);
	free(buf);
	ota_chunkmap_free(map);
	if (ret_ids)
		*ret_ids = ids;
	return bytes;
}

static uint64_t feed_missing(struct ota_stage *st, int src_fd, const struct ota_chunkidx *idx,
			     size_t *ret_ids)
{
	const struct ota_chunkidx *ix[] = {idx};
	return feed_missing_n(st, &src_fd, ix, 1, ret_ids);
}

static void assert_complete(const struct ota_stage *st)
{
	uint64_t bd, bt, cd, ct;
	ota_stage_progress(st, &bd, &bt, &cd, &ct);
	assert_int_equal(bd, bt);
	assert_int_equal(cd, ct);
}

static uint64_t chunks_done(const struct ota_stage *st)
{
	uint64_t cd = 0;
	ota_stage_progress(st, NULL, NULL, &cd, NULL);
	return cd;
}

/* ---- tests -------------------------------------------------------------- */

static void test_network_random_order(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-net");
	char *src = tu_path(dir, "src.bin");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	char *final = tu_path(slot, "model.bin");
	char *part = tu_path(slot, "model.bin.part");
	assert_int_equal(mkdir(slot, 0755), 0);
	make_file(src, 3 * MIB + 12345, 1);
	struct ota_chunkidx *idx = chunk(src, NULL);
	size_t n = ota_chunkidx_count(idx);
	assert_true(n > 20);
	struct ota_manifest *m = manifest("1.0");
	add_file(m, "model.bin", idx);

	struct ota_stage *st = NULL;
	const struct ota_chunkidx *ix[] = {idx};
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	assert_true(exists(part));
	assert_false(exists(final));
	uint64_t bd, bt, cd, ct;
	ota_stage_progress(st, &bd, &bt, &cd, &ct);
	assert_int_equal(bd, 0);
	assert_int_equal(bt, 3 * MIB + 12345);
	assert_int_equal(cd, 0);
	assert_int_equal(ct, n);

	int fd = open(src, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	const struct ota_chunk *c0 = ota_chunkidx_get(idx, 0);
	uint8_t *buf = malloc(OTA_CHUNK_MAX_DEFAULT + 1);
	assert_non_null(buf);

	/* Wrong data for an id: -FL_EHASH, nothing recorded. */
	read_at(fd, ota_chunkidx_get(idx, 1)->offset, buf, c0->len);
	assert_int_equal(ota_stage_put_chunk(st, c0->sha256, buf, c0->len), -FL_EHASH);
	read_at(fd, c0->offset, buf, c0->len);
	buf[c0->len / 2] ^= 1;
	assert_int_equal(ota_stage_put_chunk(st, c0->sha256, buf, c0->len), -FL_EHASH);
	/* Wrong length, unknown id: no state change. */
	buf[c0->len / 2] ^= 1;
	assert_int_equal(ota_stage_put_chunk(st, c0->sha256, buf, c0->len - 1), -FL_ESIZE);
	uint8_t unknown[32] = {0xde, 0xad};
	assert_int_equal(ota_stage_put_chunk(st, unknown, buf, c0->len), -FL_EPROTO);
	assert_int_equal(ota_stage_release(st, unknown), -FL_EPROTO);
	ota_stage_progress(st, &bd, NULL, &cd, NULL);
	assert_int_equal(bd, 0);
	assert_int_equal(cd, 0);
	assert_int_equal(ota_stage_finish(st), -FL_EMISSING);

	/* Every chunk in random order, each put twice (the second is a no-op). */
	size_t *order = malloc(n * sizeof(*order));
	assert_non_null(order);
	for (size_t i = 0; i < n; i++)
		order[i] = i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)(rng() % (i + 1));
		size_t t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(put_from(st, fd, idx, order[i]), 1);
		assert_int_equal(put_from(st, fd, idx, order[i]), 0);
	}
	assert_complete(st);
	struct ota_stage_want w[8];
	assert_int_equal(ota_stage_next_missing(st, w, 8), 0);
	assert_false(exists(final));
	assert_int_equal(ota_stage_finish(st), 0);
	assert_true(same_file(src, final));
	assert_false(exists(part));
	assert_false(exists(prog));
	assert_int_equal(ota_slot_verify(slot, m, NULL), 0);
	assert_int_equal(ota_stage_finish(st), -FL_ESTATE);
	ota_stage_free(st);

	close(fd);
	free(order);
	free(buf);
	ota_manifest_free(m);
	ota_chunkidx_free(idx);
	free(part);
	free(final);
	free(prog);
	free(slot);
	free(src);
	free(dir);
}

/* next_missing: file order, window semantics, release and reset. */
static void test_next_missing_window(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-win");
	char *src = tu_path(dir, "src.bin");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	assert_int_equal(mkdir(slot, 0755), 0);
	make_file(src, 2 * MIB, 2);
	struct ota_chunkidx *idx = chunk(src, NULL);
	size_t n = ota_chunkidx_count(idx);
	assert_true(n > 16);
	struct ota_manifest *m = manifest("1.0");
	add_file(m, "m.bin", idx);
	struct ota_stage *st = NULL;
	const struct ota_chunkidx *ix[] = {idx};
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);

	struct ota_stage_want w[8], w2[8];
	assert_int_equal(ota_stage_next_missing(st, w, 8), 8);
	for (size_t i = 0; i < 8; i++) {
		assert_memory_equal(w[i].id, ota_chunkidx_get(idx, i)->sha256, 32);
		assert_int_equal(w[i].len, ota_chunkidx_get(idx, i)->len);
	}
	/* In flight ids are not handed out again. */
	assert_int_equal(ota_stage_next_missing(st, w2, 8), 8);
	assert_memory_equal(w2[0].id, ota_chunkidx_get(idx, 8)->sha256, 32);
	/* Release chunk 3: it comes back first. */
	assert_int_equal(ota_stage_release(st, w[3].id), 0);
	assert_int_equal(ota_stage_next_missing(st, w2, 1), 1);
	assert_memory_equal(w2[0].id, w[3].id, 32);
	assert_int_equal(ota_stage_next_missing(st, w2, 1), 1);
	assert_memory_equal(w2[0].id, ota_chunkidx_get(idx, 16)->sha256, 32);
	/* Reset: everything from the start again. */
	ota_stage_reset_inflight(st);
	assert_int_equal(ota_stage_next_missing(st, w2, 2), 2);
	assert_memory_equal(w2[0].id, ota_chunkidx_get(idx, 0)->sha256, 32);
	ota_stage_reset_inflight(st);
	assert_int_equal(ota_stage_next_missing(st, w, 0), -EINVAL);

	int fd = open(src, O_RDONLY | O_CLOEXEC);
	size_t ids = 0;
	assert_int_equal(feed_missing(st, fd, idx, &ids), 2 * MIB);
	assert_int_equal(ids, n);
	assert_complete(st);
	assert_int_equal(ota_stage_finish(st), 0);
	assert_int_equal(ota_slot_verify(slot, m, NULL), 0);
	ota_stage_free(st);
	close(fd);
	ota_manifest_free(m);
	ota_chunkidx_free(idx);
	free(prog);
	free(slot);
	free(src);
	free(dir);
}

/* v1 is on the device; v2 rewrites 10 regions = ~10% of the bytes. */
static void test_fine_tune_reuse(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-ft");
	char *v1 = tu_path(dir, "v1.bin");
	char *v2 = tu_path(dir, "v2.bin");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	char *final = tu_path(slot, "model.bin");
	assert_int_equal(mkdir(slot, 0755), 0);
	const uint64_t size = 32 * MIB;
	make_file(v1, size, 3);
	make_file(v2, size, 3);
	/* Two rewritten regions of 5% each (whole-tensor rewrites, as a
	 * fine-tune does): 10% of the bytes. */
	const size_t region = (size_t)(size / 20);
	uint8_t *junk = malloc(region);
	assert_non_null(junk);
	for (int r = 0; r < 2; r++) {
		fill_random(junk, region, 1000 + (uint64_t)r);
		write_at(v2, (uint64_t)r * (size / 2) + size / 5, junk, region);
	}
	free(junk);
	const uint64_t diff = 2 * (uint64_t)region;

	struct ota_chunkidx *i1 = chunk(v1, NULL);
	struct ota_chunkidx *i2 = chunk(v2, NULL);
	struct ota_manifest *m = manifest("2.0");
	add_file(m, "model.bin", i2);
	struct ota_stage *st = NULL;
	const struct ota_chunkidx *ix[] = {i2};
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	assert_int_equal(ota_stage_add_source(st, v1, i1), 0);

	/* The chunks of v2 that v1 does not have, computed independently. */
	struct ota_chunkmap *map1 = NULL;
	assert_int_equal(ota_chunkmap_new(&map1), 0);
	assert_int_equal(ota_chunkmap_add(map1, 0, i1), 0);
	uint64_t new_bytes = 0;
	size_t new_chunks = 0;
	for (size_t i = 0; i < ota_chunkidx_count(i2); i++) {
		const struct ota_chunk *c = ota_chunkidx_get(i2, i);
		struct ota_chunkmap_hit h;
		if (ota_chunkmap_find(map1, c->sha256, &h, 1) == 0) {
			new_bytes += c->len;
			new_chunks++;
		}
	}

	uint64_t copied = 0;
	assert_int_equal(ota_stage_fill_local(st, &copied), 0);
	assert_int_equal(copied, size - new_bytes);
	assert_true(copied >= size * 85 / 100);

	/* next_missing lists exactly the changed chunks, in file order. */
	size_t listed = 0;
	struct ota_stage_want w[8];
	size_t next_i = 0;
	int n;
	while ((n = ota_stage_next_missing(st, w, 8)) > 0) {
		for (int k = 0; k < n; k++) {
			struct ota_chunkmap_hit h;
			assert_int_equal(ota_chunkmap_find(map1, w[k].id, &h, 1), 0);
			/* file order */
			while (memcmp(ota_chunkidx_get(i2, next_i)->sha256, w[k].id, 32)) {
				next_i++;
				assert_true(next_i < ota_chunkidx_count(i2));
			}
			listed++;
		}
	}
	assert_int_equal(listed, new_chunks);
	ota_stage_reset_inflight(st);

	int fd = open(v2, O_RDONLY | O_CLOEXEC);
	uint64_t fetched = feed_missing(st, fd, i2, NULL);
	assert_int_equal(fetched, new_bytes);
	/* Bytes fetched ~ the diff: at least the changed bytes, at most 1.25x
	 * (content-defined boundaries need a chunk or two to resynchronise
	 * after each edited region). */
	assert_true(fetched >= diff);
	assert_true(fetched <= diff + diff / 4);
	print_message("fine-tune: size %llu diff %llu copied %llu fetched %llu (%.3fx diff)\n",
		      (unsigned long long)size, (unsigned long long)diff,
		      (unsigned long long)copied, (unsigned long long)fetched,
		      (double)fetched / (double)diff);
	assert_complete(st);
	assert_int_equal(ota_stage_finish(st), 0);
	assert_true(same_file(v2, final));
	ota_stage_free(st);
	close(fd);
	ota_chunkmap_free(map1);
	ota_manifest_free(m);
	ota_chunkidx_free(i1);
	ota_chunkidx_free(i2);
	free(final);
	free(prog);
	free(slot);
	free(v1);
	free(v2);
	free(dir);
}

/* Stage part of a file, free, reopen: verified chunks are kept, unsynced or
 * corrupted ones are requested again; another manifest's record is dropped. */
static void test_resume_after_free(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-res");
	char *src = tu_path(dir, "src.bin");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	char *part = tu_path(slot, "m.bin.part");
	char *final = tu_path(slot, "m.bin");
	assert_int_equal(mkdir(slot, 0755), 0);
	make_file(src, 4 * MIB, 4);
	struct ota_chunkidx *idx = chunk(src, NULL);
	size_t n = ota_chunkidx_count(idx);
	assert_true(n > 30);
	struct ota_manifest *m = manifest("1.0");
	add_file(m, "m.bin", idx);
	const struct ota_chunkidx *ix[] = {idx};
	int fd = open(src, O_RDONLY | O_CLOEXEC);

	struct ota_stage *st = NULL;
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	size_t half = n / 2;
	for (size_t i = 0; i < half; i++)
		assert_int_equal(put_from(st, fd, idx, i), 1);
	assert_int_equal(ota_stage_sync(st), 0);
	assert_true(exists(prog));
	/* Two more, written but never recorded. */
	assert_int_equal(put_from(st, fd, idx, half), 1);
	assert_int_equal(put_from(st, fd, idx, half + 1), 1);
	ota_stage_free(st);

	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	assert_int_equal(chunks_done(st), half);
	struct ota_stage_want w[8];
	assert_int_equal(ota_stage_next_missing(st, w, 8), 8);
	assert_memory_equal(w[0].id, ota_chunkidx_get(idx, half)->sha256, 32);
	ota_stage_reset_inflight(st);
	/* Corrupt chunk 1's bytes on disk; its record still claims it. */
	assert_int_equal(ota_stage_sync(st), 0);
	ota_stage_free(st);
	uint8_t x = 0x5a;
	write_at(part, ota_chunkidx_get(idx, 1)->offset + 7, &x, 1);
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	assert_int_equal(chunks_done(st), half - 1);
	assert_int_equal(ota_stage_next_missing(st, w, 2), 2);
	assert_memory_equal(w[0].id, ota_chunkidx_get(idx, 1)->sha256, 32);
	assert_memory_equal(w[1].id, ota_chunkidx_get(idx, half)->sha256, 32);
	ota_stage_reset_inflight(st);
	size_t ids = 0;
	feed_missing(st, fd, idx, &ids);
	assert_int_equal(ids, n - half + 1);
	assert_int_equal(ota_stage_sync(st), 0);
	ota_stage_free(st);

	/* A lying record: claims everything, but the .part is zeroed. */
	int pfd = open(part, O_WRONLY | O_TRUNC | O_CLOEXEC);
	assert_true(pfd >= 0);
	assert_int_equal(ftruncate(pfd, 4 * MIB), 0);
	close(pfd);
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	assert_int_equal(chunks_done(st), 0);
	feed_missing(st, fd, idx, &ids);
	assert_int_equal(ids, n);
	assert_int_equal(ota_stage_sync(st), 0);
	ota_stage_free(st);

	/* The record of another manifest (same file, other version) is
	 * discarded even though the .part is complete and correct. */
	struct ota_manifest *m2 = manifest("1.1");
	add_file(m2, "m.bin", idx);
	assert_int_equal(ota_stage_open(slot, m2, ix, prog, &st), 0);
	assert_int_equal(chunks_done(st), 0);
	feed_missing(st, fd, idx, &ids);
	assert_int_equal(ids, n);
	assert_int_equal(ota_stage_finish(st), 0);
	assert_true(same_file(src, final));
	assert_false(exists(prog));
	ota_stage_free(st);

	/* A damaged record (bad checksum) is ignored, not an error. */
	assert_int_equal(unlink(final), 0);
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(put_from(st, fd, idx, i), 1);
	assert_int_equal(ota_stage_sync(st), 0);
	ota_stage_free(st);
	size_t rlen = 0;
	char *rec = tu_read(prog, &rlen);
	assert_non_null(rec);
	rec[56] ^= 0x10; /* flip a claim bit */
	assert_int_equal(fl_write_file_atomic(prog, rec, rlen, 0600), 0);
	free(rec);
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	assert_int_equal(chunks_done(st), 0);
	/* abort removes the .part and the record. */
	assert_int_equal(ota_stage_abort(st), 0);
	assert_false(exists(part));
	assert_false(exists(prog));

	close(fd);
	ota_manifest_free(m);
	ota_manifest_free(m2);
	ota_chunkidx_free(idx);
	free(final);
	free(part);
	free(prog);
	free(slot);
	free(src);
	free(dir);
}

/* The child of the crash test: stage everything in file order and finish;
 * exits 0 on success, 1 on an error (no cmocka in the child). */
static void crash_child(const char *slot, const struct ota_manifest *m,
			const struct ota_chunkidx *idx, const char *prog, const char *src,
			const char *fp)
{
	if (setenv("FLOTILLA_FAILPOINTS", fp, 1) < 0)
		_exit(1);
	fl_failpoint_reload();
	const struct ota_chunkidx *ix[] = {idx};
	struct ota_stage *st = NULL;
	if (ota_stage_open(slot, m, ix, prog, &st) < 0)
		_exit(1);
	int fd = open(src, O_RDONLY | O_CLOEXEC);
	uint8_t *buf = malloc(OTA_CHUNK_MAX_HIGHEST);
	if (fd < 0 || !buf)
		_exit(1);
	for (size_t i = 0; i < ota_chunkidx_count(idx); i++) {
		const struct ota_chunk *c = ota_chunkidx_get(idx, i);
		if (pread(fd, buf, c->len, (off_t)c->offset) != (ssize_t)c->len)
			_exit(1);
		if (ota_stage_put_chunk(st, c->sha256, buf, c->len) < 0)
			_exit(1);
	}
	if (ota_stage_finish(st) < 0)
		_exit(1);
	_exit(0);
}

/* Crash (failpoint "exit", as a power cut) at each point, reopen in the
 * parent: only what was durably recorded AND verifies is kept. */
static void test_resume_after_crash(void **state)
{
	(void)state;
	static const struct {
		const char *fp;
		long kept;   /* chunks_done after reopening; -1: all */
		bool renamed; /* final file present (reopen is -EEXIST) */
	} cases[] = {
		{"stage.after_pwrite=300*exit", 256, false},
		{"stage.after_pwrite=exit", 0, false},
		{"stage.sync.after_data=2*exit", 256, false},
		{"stage.sync.after_data=exit", 0, false},
		{"stage.sync.after_progress=2*exit", 512, false},
		{"stage.finish.before_rename=exit", -1, false},
		{"stage.finish.after_rename=exit", -1, true},
	};
	char *dir = tu_tmpdir("stage-crash");
	char *src = tu_path(dir, "src.bin");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	char *part = tu_path(slot, "m.bin.part");
	char *final = tu_path(slot, "m.bin");
	make_file(src, 3 * MIB, 5);
	struct ota_chunkidx *idx = chunk(src, &small_params);
	size_t n = ota_chunkidx_count(idx);
	assert_true(n > 600);
	struct ota_manifest *m = manifest("1.0");
	add_file(m, "m.bin", idx);
	const struct ota_chunkidx *ix[] = {idx};
	int fd = open(src, O_RDONLY | O_CLOEXEC);

	for (size_t t = 0; t < FL_ARRAY_SIZE(cases); t++) {
		assert_int_equal(fl_rm_rf(slot), 0);
		assert_int_equal(mkdir(slot, 0755), 0);
		unlink(prog);
		const char *fp = cases[t].fp;
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0)
			crash_child(slot, m, idx, prog, src, fp);
		int status = 0;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), FL_FAILPOINT_EXIT_CODE);

		struct ota_stage *st = NULL;
		if (cases[t].renamed) {
			assert_true(same_file(src, final));
			assert_false(exists(part));
			assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), -EEXIST);
			continue;
		}
		assert_false(exists(final));
		assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
		size_t kept = cases[t].kept < 0 ? n : (size_t)cases[t].kept;
		assert_int_equal(chunks_done(st), kept);
		/* next_missing excludes every kept chunk: it starts right after. */
		struct ota_stage_want w[8];
		if (kept < n) {
			assert_true(ota_stage_next_missing(st, w, 8) >= 1);
			assert_memory_equal(w[0].id, ota_chunkidx_get(idx, kept)->sha256, 32);
			ota_stage_reset_inflight(st);
		}
		if (kept >= 2) {
			/* A claimed chunk corrupted on disk is requested again. */
			assert_int_equal(ota_stage_sync(st), 0);
			ota_stage_free(st);
			uint8_t x[4] = {1, 2, 3, 4};
			write_at(part, ota_chunkidx_get(idx, 1)->offset, x, sizeof(x));
			assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
			assert_int_equal(chunks_done(st), kept - 1);
			assert_int_equal(ota_stage_next_missing(st, w, 1), 1);
			assert_memory_equal(w[0].id, ota_chunkidx_get(idx, 1)->sha256, 32);
			ota_stage_reset_inflight(st);
		}
		size_t ids = 0;
		feed_missing(st, fd, idx, &ids);
		assert_int_equal(ids, n - kept + (kept >= 2 ? 1 : 0));
		assert_int_equal(ota_stage_finish(st), 0);
		assert_true(same_file(src, final));
		assert_int_equal(ota_slot_verify(slot, m, NULL), 0);
		ota_stage_free(st);
	}
	close(fd);
	ota_manifest_free(m);
	ota_chunkidx_free(idx);
	free(final);
	free(part);
	free(prog);
	free(slot);
	free(src);
	free(dir);
}

static void test_finish_errors(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-fin");
	char *src = tu_path(dir, "src.bin");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	char *part = tu_path(slot, "m.bin.part");
	char *final = tu_path(slot, "m.bin");
	assert_int_equal(mkdir(slot, 0755), 0);
	make_file(src, MIB, 6);
	struct ota_chunkidx *idx = chunk(src, NULL);
	size_t n = ota_chunkidx_count(idx);
	struct ota_manifest *m = manifest("1.0");
	add_file(m, "m.bin", idx);
	const struct ota_chunkidx *ix[] = {idx};
	int fd = open(src, O_RDONLY | O_CLOEXEC);

	struct ota_stage *st = NULL;
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	for (size_t i = 0; i + 1 < n; i++)
		assert_int_equal(put_from(st, fd, idx, i), 1);
	assert_int_equal(ota_stage_finish(st), -FL_EMISSING);
	assert_false(exists(final));
	assert_int_equal(put_from(st, fd, idx, n - 1), 1);
	/* Tamper with the .part between put and finish. */
	uint8_t x = 0xff;
	write_at(part, 100, &x, 1);
	assert_int_equal(ota_stage_finish(st), -FL_EHASH);
	assert_false(exists(final));
	assert_true(exists(part));
	/* The damaged chunk (and only it) is missing again. */
	assert_int_equal(chunks_done(st), n - 1);
	struct ota_stage_want w[8];
	assert_int_equal(ota_stage_next_missing(st, w, 8), 1);
	assert_memory_equal(w[0].id, ota_chunkidx_get(idx, 0)->sha256, 32);
	assert_int_equal(put_from(st, fd, idx, 0), 1);

	/* A .part grown behind the stage's back: -FL_ESIZE, nothing renamed. */
	int pfd = open(part, O_WRONLY | O_APPEND | O_CLOEXEC);
	assert_int_equal(write(pfd, "z", 1), 1);
	assert_int_equal(ota_stage_finish(st), -FL_ESIZE);
	assert_false(exists(final));
	assert_int_equal(ftruncate(pfd, (off_t)MIB), 0);
	close(pfd);
	assert_int_equal(ota_stage_finish(st), 0);
	assert_true(same_file(src, final));
	ota_stage_free(st);

	/* A final name already in the slot: refused at open. */
	st = NULL;
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), -EEXIST);
	assert_null(st);
	/* ... before anything is created for the other files. */
	struct ota_manifest *m2 = manifest("1.0");
	add_file(m2, "sub/a.bin", idx);
	add_file(m2, "m.bin", idx);
	const struct ota_chunkidx *ix2f[] = {idx, idx};
	assert_int_equal(ota_stage_open(slot, m2, ix2f, prog, &st), -EEXIST);
	char *suba = tu_path(slot, "sub");
	assert_false(exists(suba));
	free(suba);
	ota_manifest_free(m2);
	assert_int_equal(unlink(final), 0);

	/* Bad arguments / an index that is not the manifest's. */
	struct ota_chunkidx *other = chunk(src, &small_params);
	const struct ota_chunkidx *bad[] = {other};
	assert_int_equal(ota_stage_open(slot, m, bad, prog, &st), -FL_EHASH);
	assert_int_equal(ota_stage_open(NULL, m, ix, prog, &st), -EINVAL);
	assert_int_equal(ota_stage_open(slot, m, ix, NULL, &st), -EINVAL);
	char *nodir = tu_path(dir, "nodir");
	assert_int_equal(ota_stage_open(nodir, m, ix, prog, &st), -ENOENT);
	/* "x" and "x.part" would collide. */
	struct ota_manifest *mc = manifest("1.0");
	add_file(mc, "m.bin", idx);
	add_file(mc, "m.bin.part", idx);
	const struct ota_chunkidx *ix2[] = {idx, idx};
	assert_int_equal(ota_stage_open(slot, mc, ix2, prog, &st), -FL_EPATH);
	/* A source whose size differs from its index. */
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	struct ota_chunkidx *small = NULL;
	char *tiny = tu_path(dir, "tiny.bin");
	make_file(tiny, 5000, 9);
	small = chunk(tiny, NULL);
	assert_int_equal(ota_stage_add_source(st, src, small), -FL_ESIZE);
	assert_int_equal(ota_stage_add_source(st, dir, idx), -EINVAL);
	assert_int_equal(ota_stage_abort(st), 0);
	assert_false(exists(part));

	close(fd);
	ota_manifest_free(mc);
	ota_manifest_free(m);
	ota_chunkidx_free(small);
	ota_chunkidx_free(other);
	ota_chunkidx_free(idx);
	free(tiny);
	free(nodir);
	free(final);
	free(part);
	free(prog);
	free(slot);
	free(src);
	free(dir);
}

/* A source with damaged bytes: those chunks are not copied, they are missing. */
static void test_damaged_source(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-dmg");
	char *src = tu_path(dir, "src.bin");
	char *copy = tu_path(dir, "copy.bin");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	char *final = tu_path(slot, "m.bin");
	assert_int_equal(mkdir(slot, 0755), 0);
	make_file(src, 2 * MIB, 7);
	make_file(copy, 2 * MIB, 7);
	struct ota_chunkidx *idx = chunk(src, NULL);
	size_t n = ota_chunkidx_count(idx);
	assert_true(n > 10);
	/* Damage chunks 2 and 5 of the copy (its index still says otherwise). */
	const struct ota_chunk *c2 = ota_chunkidx_get(idx, 2), *c5 = ota_chunkidx_get(idx, 5);
	uint8_t x = 0;
	write_at(copy, c2->offset + c2->len - 1, &x, 1);
	write_at(copy, c5->offset, "bad", 3);
	struct ota_manifest *m = manifest("1.0");
	add_file(m, "m.bin", idx);
	const struct ota_chunkidx *ix[] = {idx};
	struct ota_stage *st = NULL;
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	uint64_t copied = 0;
	assert_int_equal(ota_stage_fill_local(st, &copied), 0); /* no source yet */
	assert_int_equal(copied, 0);
	assert_int_equal(ota_stage_add_source(st, copy, idx), 0);
	assert_int_equal(ota_stage_fill_local(st, &copied), 0);
	assert_int_equal(copied, 2 * MIB - c2->len - c5->len);
	assert_int_equal(chunks_done(st), n - 2);
	struct ota_stage_want w[8];
	assert_int_equal(ota_stage_next_missing(st, w, 8), 2);
	assert_memory_equal(w[0].id, c2->sha256, 32);
	assert_memory_equal(w[1].id, c5->sha256, 32);
	ota_stage_reset_inflight(st);
	/* A second, good source fills the rest. */
	assert_int_equal(ota_stage_add_source(st, src, idx), 0);
	assert_int_equal(ota_stage_fill_local(st, &copied), 0);
	assert_int_equal(copied, c2->len + c5->len);
	assert_complete(st);
	assert_int_equal(ota_stage_finish(st), 0);
	assert_true(same_file(src, final));
	ota_stage_free(st);
	ota_manifest_free(m);
	ota_chunkidx_free(idx);
	free(final);
	free(prog);
	free(slot);
	free(copy);
	free(src);
	free(dir);
}

/* The same content at several offsets: one put writes every occurrence. */
static void test_repeated_content(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-rep");
	char *src = tu_path(dir, "src.bin");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	char *final = tu_path(slot, "r.bin");
	assert_int_equal(mkdir(slot, 0755), 0);
	/* Content-defined boundaries resynchronise inside each repeat. */
	const size_t blk = 200 * 1024;
	uint8_t *a = malloc(blk), *b = malloc(blk);
	assert_non_null(a);
	assert_non_null(b);
	fill_random(a, blk, 11);
	fill_random(b, blk, 12);
	int wfd = open(src, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	const uint8_t *seq[] = {a, a, b, a, b};
	for (size_t i = 0; i < 5; i++)
		assert_int_equal(fl_write_all(wfd, seq[i], blk), 0);
	close(wfd);
	struct ota_chunkidx *idx = chunk(src, &small_params);
	size_t n = ota_chunkidx_count(idx);
	struct ota_manifest *m = manifest("1.0");
	add_file(m, "r.bin", idx);
	/* Also a second file that is block a alone: ids shared across files. */
	char *src2 = tu_path(dir, "a.bin");
	wfd = open(src2, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_int_equal(fl_write_all(wfd, a, blk), 0);
	close(wfd);
	struct ota_chunkidx *idx2 = chunk(src2, &small_params);
	add_file(m, "a.bin", idx2);
	const struct ota_chunkidx *ix[] = {idx, idx2};
	struct ota_stage *st = NULL;
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	uint64_t ct = 0;
	ota_stage_progress(st, NULL, NULL, NULL, &ct);
	assert_int_equal(ct, n + ota_chunkidx_count(idx2));

	int fd = open(src, O_RDONLY | O_CLOEXEC);
	int fd2 = open(src2, O_RDONLY | O_CLOEXEC);
	size_t ids = 0;
	const int fds[] = {fd, fd2};
	uint64_t fetched = feed_missing_n(st, fds, ix, 2, &ids);
	/* Fewer distinct ids than occurrences, and about 2 blocks of bytes. */
	assert_true(ids < n);
	assert_true(fetched < 5 * blk * 3 / 5);
	assert_true(fetched >= 2 * blk - 2 * small_params.max_bytes);
	assert_complete(st);
	assert_int_equal(ota_stage_finish(st), 0);
	assert_true(same_file(src, final));
	assert_int_equal(ota_slot_verify(slot, m, NULL), 0);
	ota_stage_free(st);
	close(fd);
	close(fd2);
	ota_manifest_free(m);
	ota_chunkidx_free(idx);
	ota_chunkidx_free(idx2);
	free(a);
	free(b);
	free(src2);
	free(final);
	free(prog);
	free(slot);
	free(src);
	free(dir);
}

/* Empty file, one-chunk file, many small files (more than the open-file
 * cap), nested directories. */
static void test_bounds_many_files(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-many");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	char *srcdir = tu_path(dir, "src");
	assert_int_equal(mkdir(slot, 0755), 0);
	assert_int_equal(mkdir(srcdir, 0755), 0);
	enum { NF = 45 };
	char *paths[NF];
	char *srcs[NF];
	struct ota_chunkidx *idx[NF];
	struct ota_manifest *m = manifest("1.0");
	for (size_t i = 0; i < NF; i++) {
		uint64_t size = i == 0 ? 0 : i == 1 ? 1000 : 3000 + i * 7919;
		if (i % 5 == 4)
			paths[i] = fl_asprintf("sub/d%zu/f%zu.bin", i % 3, i);
		else
			paths[i] = fl_asprintf("f%zu.bin", i);
		srcs[i] = fl_asprintf("%s/s%zu", srcdir, i);
		make_file(srcs[i], size, 100 + i);
		idx[i] = chunk(srcs[i], &small_params);
		add_file(m, paths[i], idx[i]);
	}
	assert_int_equal(ota_chunkidx_count(idx[0]), 0);
	assert_int_equal(ota_chunkidx_count(idx[1]), 1);
	struct ota_stage *st = NULL;
	assert_int_equal(ota_stage_open(slot, m, (const struct ota_chunkidx *const *)idx, prog, &st),
			 0);
	/* Put in reverse file order: exercises closing/reopening .part files. */
	size_t puts = 0;
	for (size_t i = NF; i-- > 0;) {
		int fd = open(srcs[i], O_RDONLY | O_CLOEXEC);
		assert_true(fd >= 0);
		for (size_t c = 0; c < ota_chunkidx_count(idx[i]); c++) {
			assert_int_equal(put_from(st, fd, idx[i], c), 1);
			puts++;
		}
		close(fd);
		if (i == NF / 2) {
			/* Resume mid-way through many files. */
			assert_int_equal(ota_stage_sync(st), 0);
			ota_stage_free(st);
			assert_int_equal(ota_stage_open(slot, m,
							(const struct ota_chunkidx *const *)idx,
							prog, &st),
					 0);
			assert_int_equal(chunks_done(st), puts);
		}
	}
	assert_complete(st);
	assert_int_equal(ota_stage_finish(st), 0);
	assert_int_equal(ota_slot_verify(slot, m, NULL), 0);
	for (size_t i = 0; i < NF; i++) {
		char *f = tu_path(slot, paths[i]);
		assert_true(same_file(srcs[i], f));
		free(f);
	}
	ota_stage_free(st);

	/* Abort removes .part files and the subdirectories it created. */
	char *slot2 = tu_path(dir, "slot2");
	assert_int_equal(mkdir(slot2, 0755), 0);
	assert_int_equal(ota_stage_open(slot2, m, (const struct ota_chunkidx *const *)idx, prog, &st),
			 0);
	char *sub = tu_path(slot2, "sub");
	assert_true(exists(sub));
	assert_int_equal(ota_stage_abort(st), 0);
	assert_false(exists(sub));
	assert_int_equal(ota_slot_verify(slot2, m, NULL), -FL_EMISSING);
	free(sub);
	free(slot2);

	for (size_t i = 0; i < NF; i++) {
		free(paths[i]);
		free(srcs[i]);
		ota_chunkidx_free(idx[i]);
	}
	ota_manifest_free(m);
	free(srcdir);
	free(prog);
	free(slot);
	free(dir);
}

static void test_chunkmap(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-map");
	char *a = tu_path(dir, "a.bin");
	make_file(a, 512 * 1024, 21);
	struct ota_chunkidx *ia = chunk(a, &small_params);
	struct ota_chunkmap *map = NULL;
	assert_int_equal(ota_chunkmap_new(&map), 0);
	struct ota_chunkmap_hit h[4];
	assert_int_equal(ota_chunkmap_find(map, ota_chunkidx_get(ia, 0)->sha256, h, 4), 0);
	assert_int_equal(ota_chunkmap_add(map, 3, ia), 0);
	assert_int_equal(ota_chunkmap_add(map, 9, ia), 0);
	for (size_t i = 0; i < ota_chunkidx_count(ia); i++) {
		const struct ota_chunk *c = ota_chunkidx_get(ia, i);
		assert_int_equal(ota_chunkmap_find(map, c->sha256, h, 4), 2);
		assert_int_equal(h[0].source, 3);
		assert_int_equal(h[1].source, 9);
		assert_int_equal(h[0].offset, c->offset);
		assert_int_equal(h[0].len, c->len);
		/* Count without output. */
		assert_int_equal(ota_chunkmap_find(map, c->sha256, NULL, 0), 2);
	}
	uint8_t id[32];
	memcpy(id, ota_chunkidx_get(ia, 0)->sha256, 32);
	id[31] ^= 1; /* same 8-byte prefix, other id */
	assert_int_equal(ota_chunkmap_find(map, id, h, 4), 0);
	ota_chunkmap_free(map);
	ota_chunkidx_free(ia);
	free(a);
	free(dir);
}

/* A failpoint that fails (not exits): the error comes back, no record
 * claims data that was not synced, and the stage can carry on. */
static void test_failpoint_fail(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("stage-fpf");
	char *src = tu_path(dir, "src.bin");
	char *slot = tu_path(dir, "slot");
	char *prog = tu_path(dir, "progress");
	assert_int_equal(mkdir(slot, 0755), 0);
	make_file(src, 2 * MIB, 31);
	struct ota_chunkidx *idx = chunk(src, &small_params);
	size_t n = ota_chunkidx_count(idx);
	assert_true(n > OTA_STAGE_SYNC_CHUNKS);
	struct ota_manifest *m = manifest("1.0");
	add_file(m, "m.bin", idx);
	const struct ota_chunkidx *ix[] = {idx};
	int fd = open(src, O_RDONLY | O_CLOEXEC);
	struct ota_stage *st = NULL;
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	assert_int_equal(setenv("FLOTILLA_FAILPOINTS", "stage.sync.after_data=fail", 1), 0);
	fl_failpoint_reload();
	size_t i = 0;
	for (; i + 1 < OTA_STAGE_SYNC_CHUNKS; i++)
		assert_int_equal(put_from(st, fd, idx, i), 1);
	/* The batch sync fails after the data sync: no record yet. */
	assert_int_equal(put_from(st, fd, idx, i++), -FL_EFAILPOINT);
	assert_false(exists(prog));
	assert_int_equal(ota_stage_sync(st), -FL_EFAILPOINT);
	assert_int_equal(unsetenv("FLOTILLA_FAILPOINTS"), 0);
	fl_failpoint_reload();
	assert_int_equal(ota_stage_sync(st), 0);
	assert_true(exists(prog));
	ota_stage_free(st);
	assert_int_equal(ota_stage_open(slot, m, ix, prog, &st), 0);
	assert_int_equal(chunks_done(st), OTA_STAGE_SYNC_CHUNKS);
	feed_missing(st, fd, idx, NULL);
	assert_int_equal(ota_stage_finish(st), 0);
	assert_int_equal(ota_slot_verify(slot, m, NULL), 0);
	ota_stage_free(st);
	close(fd);
	ota_manifest_free(m);
	ota_chunkidx_free(idx);
	free(prog);
	free(slot);
	free(src);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_network_random_order),
		cmocka_unit_test(test_next_missing_window),
		cmocka_unit_test(test_fine_tune_reuse),
		cmocka_unit_test(test_resume_after_free),
		cmocka_unit_test(test_resume_after_crash),
		cmocka_unit_test(test_failpoint_fail),
		cmocka_unit_test(test_finish_errors),
		cmocka_unit_test(test_damaged_source),
		cmocka_unit_test(test_repeated_content),
		cmocka_unit_test(test_bounds_many_files),
		cmocka_unit_test(test_chunkmap),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
