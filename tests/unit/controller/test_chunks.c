/* Chunk store: real bundles from ota_bundle_create, verified and not. */
#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>

#include "ctl_testutil.h"

#include <flotilla/bundle.h>
#include <flotilla/crypto.h>
#include <flotilla/dsse.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>
#include <flotilla/keyring.h>

#define DAY 86400

static char *work;
static struct ota_key *root, *rel, *stranger;
static char *trust_dir;

static char *in_work(const char *name)
{
	char *p = fl_path_join(work, name);
	assert_non_null(p);
	return p;
}

static void write_random(const char *path, size_t n, unsigned seed)
{
	uint8_t *b = malloc(n);
	assert_non_null(b);
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		b[i] = (uint8_t)x;
	}
	assert_int_equal(fl_write_file_atomic(path, b, n, 0644), 0);
	free(b);
}

/* Bundle NAME/VERSION/SEQ of the files SRC[0..N) signed by KEY at OUT. */
static void make_bundle(const char *out, const char *name, const char *version, uint64_t seq,
			char *const *src, size_t n, struct ota_key *key)
{
	int64_t now = fl_now_s();
	struct ota_manifest *m = NULL;
	assert_int_equal(ota_manifest_new(name, version, seq, now - DAY, now + 30 * DAY, &m), 0);
	assert_int_equal(ota_bundle_create(out, m, (const char *const *)src, n, NULL, 0, &key, 1), 0);
	ota_manifest_free(m);
}

static int setup(void **state)
{
	(void)state;
	work = fl_test_mkdtemp("ctl-chunks");
	assert_int_equal(ota_key_generate(&root), 0);
	assert_int_equal(ota_key_generate(&rel), 0);
	assert_int_equal(ota_key_generate(&stranger), 0);
	/* A trust dir as devices have: a root and a root-signed keyring. */
	trust_dir = in_work("trust");
	assert_int_equal(fl_mkdir_p(trust_dir, 0755), 0);
	char *rp = fl_path_join(trust_dir, "root.pem");
	assert_int_equal(ota_key_save_public(root, rp), 0);
	free(rp);
	int64_t now = fl_now_s();
	struct ota_keyring *kr = NULL;
	assert_int_equal(ota_keyring_new(1, now + 365 * DAY, 1, &kr), 0);
	const char *models[] = {"*"};
	assert_int_equal(ota_keyring_add_key(kr, rel, models, 1, now + 365 * DAY), 0);
	char *json = NULL;
	size_t len;
	assert_int_equal(ota_keyring_to_json(kr, &json, &len), 0);
	ota_keyring_free(kr);
	struct ota_dsse *env = NULL;
	assert_int_equal(ota_dsse_new(OTA_PAYLOAD_TYPE_KEYRING, json, len, &env), 0);
	assert_int_equal(ota_dsse_sign(env, root), 0);
	char *out = NULL;
	size_t out_len;
	assert_int_equal(ota_dsse_to_json(env, &out, &out_len), 0);
	ota_dsse_free(env);
	free(json);
	char *kp = fl_path_join(trust_dir, OTA_TRUST_KEYRING_FILE);
	assert_int_equal(fl_write_file_atomic(kp, out, out_len, 0644), 0);
	free(kp);
	free(out);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	ota_key_free(root);
	ota_key_free(rel);
	ota_key_free(stranger);
	fl_rm_rf(work);
	free(work);
	free(trust_dir);
	return 0;
}

static size_t n_bundles(struct ctl *c)
{
	cJSON *o = NULL;
	assert_int_equal(ctl_bundles_list(c, &o), 0);
	size_t n = (size_t)cJSON_GetArraySize(cJSON_GetObjectItem(o, "bundles"));
	cJSON_Delete(o);
	return n;
}

/* Every chunk of B's files must read back from the store with its hash. */
static void check_all_chunks(struct ctl *c, const char *bundle_path)
{
	struct ota_bundle_opts opts = {.verify = ota_bundle_verify_none};
	struct ota_bundle *b = NULL;
	assert_int_equal(ota_bundle_open(bundle_path, NULL, fl_now_s(), 0, &opts, &b), 0);
	const struct ota_manifest *m = ota_bundle_manifest(b);
	uint8_t *buf = malloc(CTL_CHUNK_READ_MAX);
	for (size_t i = 0; i < m->n_files; i++) {
		const struct ota_chunkidx *idx = ota_bundle_chunk_index(b, i);
		for (size_t k = 0; k < ota_chunkidx_count(idx); k++) {
			const struct ota_chunk *ch = ota_chunkidx_get(idx, k);
			size_t got = 0;
			assert_int_equal(ctl_chunks_read(c, ch->sha256, 0, CTL_CHUNK_READ_MAX, buf, &got), 0);
			assert_int_equal(got, ch->len);
			uint8_t h[32];
			fl_sha256(buf, got, h);
			assert_memory_equal(h, ch->sha256, 32);
		}
		/* The index blob is there too, under the manifest's hash. */
		uint64_t size = 0;
		assert_int_equal(ctl_chunks_size(c, m->files[i].chunk_index_sha256, &size), 0);
		assert_int_equal(size, OTA_CIDX_HEADER_BYTES + ota_chunkidx_count(idx) * OTA_CIDX_ENTRY_BYTES);
		/* Ranged read of the index: the header magic. */
		size_t got = 0;
		assert_int_equal(ctl_chunks_read(c, m->files[i].chunk_index_sha256, 0, 6, buf, &got), 0);
		assert_int_equal(got, 6);
		assert_memory_equal(buf, "FLCIDX", 6);
		assert_int_equal(ctl_chunks_read(c, m->files[i].chunk_index_sha256, size - 10, 100, buf,
						 &got),
				 0);
		assert_int_equal(got, 10); /* short at the end */
		assert_int_equal(ctl_chunks_read(c, m->files[i].chunk_index_sha256, size + 1, 1, buf,
						 &got),
				 -EINVAL);
	}
	size_t el;
	const char *env = ota_bundle_envelope(b, &el);
	uint8_t eh[32];
	fl_sha256(env, el, eh);
	uint64_t es = 0;
	assert_int_equal(ctl_chunks_size(c, eh, &es), 0);
	assert_int_equal(es, el);
	free(buf);
	ota_bundle_free(b);
}

static void test_unverified_push(void **state)
{
	(void)state;
	char *src[2] = {in_work("model.bin"), in_work("tok.json")};
	write_random(src[0], 700 * 1024, 1);
	write_random(src[1], 3000, 2);
	char *bpath = in_work("b1.tar");
	make_bundle(bpath, "tiny", "1.0", 5, src, 2, rel);

	char *dir;
	struct ctl *c = ctu_open("ctl-chunks-c", NULL, &dir);
	cJSON *info = NULL;
	assert_int_equal(ctl_chunks_add_bundle(c, bpath, "tester", &info), 1);
	assert_string_equal(cJSON_GetObjectItem(info, "model")->valuestring, "tiny");
	assert_false(cJSON_IsTrue(cJSON_GetObjectItem(info, "verified")));
	assert_true(cJSON_GetObjectItem(info, "chunks")->valueint > 2);
	assert_int_equal(cJSON_GetObjectItem(info, "chunk_bytes")->valueint, 700 * 1024 + 3000);
	int written = cJSON_GetObjectItem(info, "objects_written")->valueint;
	/* chunks + 2 index blobs + the envelope */
	assert_int_equal(written, cJSON_GetObjectItem(info, "chunks")->valueint + 3);
	cJSON_Delete(info);
	check_all_chunks(c, bpath);

	/* Re-push: nothing new. */
	assert_int_equal(ctl_chunks_add_bundle(c, bpath, "tester", &info), 0);
	assert_int_equal(cJSON_GetObjectItem(info, "objects_written")->valueint, 0);
	cJSON_Delete(info);
	assert_int_equal(n_bundles(c), 1);
	int64_t audits = 0;
	assert_int_equal(ctl_get_store(c)->ops->audit_count(ctl_get_store(c), &audits), 0);
	assert_int_equal(audits, 1);

	/* A new version that shares the second file stores only new chunks. */
	char *src2[2] = {in_work("model2.bin"), src[1]};
	write_random(src2[0], 100 * 1024, 3);
	char *b2 = in_work("b2.tar");
	make_bundle(b2, "tiny", "1.1", 6, src2, 2, rel);
	assert_int_equal(ctl_chunks_add_bundle(c, b2, "tester", &info), 1);
	int chunks2 = cJSON_GetObjectItem(info, "chunks")->valueint;
	assert_true(cJSON_GetObjectItem(info, "objects_written")->valueint < chunks2 + 3);
	cJSON_Delete(info);
	assert_int_equal(n_bundles(c), 2);

	/* Same model+version with other content: conflict, nothing changes. */
	char *b3 = in_work("b3.tar");
	make_bundle(b3, "tiny", "1.1", 7, src, 1, rel);
	assert_int_equal(ctl_chunks_add_bundle(c, b3, "tester", NULL), -EEXIST);
	assert_int_equal(n_bundles(c), 2);

	/* Not a tar / truncated tar: refused, nothing recorded. */
	char *junk = in_work("junk.tar");
	write_random(junk, 5000, 9);
	assert_int_equal(ctl_chunks_add_bundle(c, junk, "tester", NULL), -FL_ETAR);
	char *data = NULL;
	size_t len = 0;
	assert_int_equal(fl_read_file(b2, 64 << 20, &data, &len), 0);
	char *trunc = in_work("trunc.tar");
	assert_int_equal(fl_write_file_atomic(trunc, data, len / 2, 0644), 0);
	free(data);
	assert_true(ctl_chunks_add_bundle(c, trunc, "tester", NULL) < 0);
	assert_int_equal(ctl_chunks_add_bundle(c, "/nonexistent.tar", "tester", NULL), -ENOENT);
	assert_int_equal(n_bundles(c), 2);

	struct ctl_counters k;
	ctl_get_counters(c, &k);
	assert_int_equal(k.bundles_added, 2);
	assert_int_equal(k.bundles_existing, 1);
	assert_int_equal(k.bundles_refused, 4);

	/* Reads of what is not there. */
	uint8_t none[32] = {0};
	uint8_t buf[16];
	size_t got;
	assert_int_equal(ctl_chunks_read(c, none, 0, sizeof(buf), buf, &got), -ENOENT);
	assert_int_equal(ctl_chunks_read(c, none, 0, CTL_CHUNK_READ_MAX + 1, buf, &got), -EINVAL);
	/* tmp is empty after the pushes */
	char *tmp = fl_path_join(dir, "tmp");
	assert_int_equal(fl_test_count_files(tmp), 0);
	free(tmp);

	ctu_close(c, dir);
	free(src[0]);
	free(src[1]);
	free(src2[0]);
	free(bpath);
	free(b2);
	free(b3);
	free(junk);
	free(trunc);
}

static void test_verified_push(void **state)
{
	(void)state;
	char *src[1] = {in_work("v.bin")};
	write_random(src[0], 200 * 1024, 4);
	char *good = in_work("good.tar");
	char *bad = in_work("stranger.tar");
	make_bundle(good, "tiny", "2.0", 9, src, 1, rel);
	make_bundle(bad, "tiny", "2.1", 10, src, 1, stranger);

	char *dir;
	struct ctl_opts o = {.trust_dir = trust_dir};
	struct ctl *c = ctu_open("ctl-chunks-v", &o, &dir);
	cJSON *info = NULL;
	assert_int_equal(ctl_chunks_add_bundle(c, good, "ci", &info), 1);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(info, "verified")));
	cJSON_Delete(info);
	assert_int_equal(ctl_chunks_add_bundle(c, bad, "ci", NULL), -FL_EKEYUNKNOWN);
	assert_int_equal(n_bundles(c), 1);
	cJSON *l = NULL;
	assert_int_equal(ctl_bundles_list(c, &l), 0);
	assert_true(cJSON_IsTrue(
		cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "bundles"), 0), "verified")));
	cJSON_Delete(l);
	ctu_close(c, dir);

	/* A trust dir without roots fails the open. */
	char *empty = in_work("empty-trust");
	assert_int_equal(fl_mkdir_p(empty, 0755), 0);
	char *d2 = fl_test_mkdtemp("ctl-chunks-e");
	struct ctl_opts o2 = {.data_dir = d2, .trust_dir = empty};
	struct ctl *c2 = NULL;
	assert_int_equal(ctl_open(&o2, &c2), -FL_EMISSING);
	assert_null(c2);
	fl_rm_rf(d2);
	free(d2);
	free(empty);
	free(src[0]);
	free(good);
	free(bad);
}

struct frames {
	int n;
	uint8_t status[8];
	uint64_t off[8];
	uint32_t len[8];
	uint8_t id[8][32];
	uint8_t first_byte[8];
	int fail_after;
};

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static int emit(void *ud, const uint8_t *f, size_t len)
{
	struct frames *fr = ud;
	if (fr->fail_after && fr->n >= fr->fail_after)
		return -EPIPE;
	assert_true(len >= CTL_CHUNK_FRAME_HEADER);
	assert_memory_equal(f, "FLCK", 4);
	assert_int_equal(f[4], 1);
	int i = fr->n++;
	fr->status[i] = f[5];
	memcpy(fr->id[i], f + 8, 32);
	fr->off[i] = get_le(f + 40, 8);
	fr->len[i] = (uint32_t)get_le(f + 48, 4);
	assert_int_equal(len, CTL_CHUNK_FRAME_HEADER + fr->len[i]);
	fr->first_byte[i] = fr->len[i] ? f[CTL_CHUNK_FRAME_HEADER] : 0;
	return 0;
}

static void test_serve(void **state)
{
	(void)state;
	char *src[1] = {in_work("s.bin")};
	write_random(src[0], 300 * 1024, 5);
	char *bp = in_work("s.tar");
	make_bundle(bp, "tiny", "3.0", 11, src, 1, rel);
	char *dir;
	struct ctl *c = ctu_open("ctl-serve", NULL, &dir);
	assert_int_equal(ctl_chunks_add_bundle(c, bp, "t", NULL), 1);

	struct ota_bundle_opts opts = {.verify = ota_bundle_verify_none};
	struct ota_bundle *b = NULL;
	assert_int_equal(ota_bundle_open(bp, NULL, fl_now_s(), 0, &opts, &b), 0);
	const struct ota_chunk *ch = ota_chunkidx_get(ota_bundle_chunk_index(b, 0), 0);
	char hex[65], cidx[65];
	fl_hex_encode(ch->sha256, 32, hex);
	fl_hex_encode(ota_bundle_manifest(b)->files[0].chunk_index_sha256, 32, cidx);
	char req[1024];
	snprintf(req, sizeof(req),
		 "{\"v\":1,\"req\":[{\"id\":\"%s\",\"off\":0,\"len\":262144},"
		 "{\"id\":\"%s\",\"off\":0,\"len\":6},"
		 "{\"id\":\"%064d\",\"off\":0,\"len\":10},"
		 "{\"id\":\"%s\",\"off\":99999999,\"len\":10}]}",
		 hex, cidx, 0, hex);
	struct frames fr = {0};
	assert_int_equal(ctl_chunks_serve(c, req, strlen(req), emit, &fr), 4);
	assert_int_equal(fr.status[0], 0);
	assert_int_equal(fr.len[0], ch->len);
	assert_memory_equal(fr.id[0], ch->sha256, 32);
	assert_int_equal(fr.status[1], 0);
	assert_int_equal(fr.len[1], 6);
	assert_int_equal(fr.first_byte[1], 'F');
	assert_int_equal(fr.status[2], 1); /* not found */
	assert_int_equal(fr.len[2], 0);
	assert_int_equal(fr.status[3], 2); /* bad range */
	assert_int_equal(fr.off[3], 99999999);

	/* An emit failure stops the answer. */
	struct frames f2 = {.fail_after = 1};
	assert_int_equal(ctl_chunks_serve(c, req, strlen(req), emit, &f2), -EPIPE);
	assert_int_equal(f2.n, 1);

#define Z "0000000000000000000000000000000000000000000000000000000000000000"
	/* Malformed requests: nothing emitted. */
	static const char *const bad[] = {
		"", "[]", "{\"v\":1}", "{\"v\":2,\"req\":[]}", "{\"v\":1,\"req\":[]}",
		"{\"v\":1,\"req\":[{\"id\":\"zz\",\"off\":0,\"len\":1}]}",
		"{\"v\":1,\"req\":[{\"id\":\"" Z "\",\"off\":0,\"len\":0}]}",
		"{\"v\":1,\"req\":[{\"id\":\"" Z "\",\"off\":0,\"len\":262145}]}",
		"{\"v\":1,\"req\":[{\"id\":\"" Z "\",\"off\":-1,\"len\":1}]}",
		"{\"v\":1,\"req\":[{\"id\":\"" Z "\",\"off\":0,\"len\":1,\"x\":1}]}",
		"{\"v\":1,\"req\":[1,2,3,4,5,6,7,8,9]}",
		"{\"v\":1,\"req\":[],\"more\":true}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *buf = bad[i];
		struct frames f3 = {0};
		int r = ctl_chunks_serve(c, buf, strlen(buf), emit, &f3);
		if (r >= 0 || f3.n != 0)
			fail_msg("request %zu (%s): %d, %d frames", i, buf, r, f3.n);
	}
#undef Z
	char *huge = calloc(1, CTL_CHUNK_REQ_MAX_BYTES + 1);
	memset(huge, ' ', CTL_CHUNK_REQ_MAX_BYTES);
	assert_int_equal(ctl_chunks_serve(c, huge, CTL_CHUNK_REQ_MAX_BYTES + 1, emit, &fr),
			 -FL_ETOOBIG);
	free(huge);
	ota_bundle_free(b);
	ctu_close(c, dir);
	free(src[0]);
	free(bp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_unverified_push),
		cmocka_unit_test(test_verified_push),
		cmocka_unit_test(test_serve),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
