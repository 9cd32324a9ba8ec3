/* Bundles: create -> open/verify -> extract round trip, re-signing, diff, and
 * a table of malicious tars built with libarchive, each refused with its own
 * code and leaving the destination directory empty. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
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
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cmocka.h>

#include <flotilla/bundle.h>
#include <flotilla/dsse.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/keyring.h>
#include <flotilla/trust.h>
#include <flotilla/util.h>

#define NOW 1795564800LL /* 2026-11-25T00:00:00Z */
#define DAY 86400LL

static char *dir;            /* scratch directory */
static char *src[2];         /* payload files */
static char *good;           /* good bundle */
static struct ota_key *root, *rel, *rel2, *stranger;
static struct ota_trust *trust;

/* ---- helpers ---- */

static char *path_in(const char *name)
{
	char *p = fl_path_join(dir, name);
	assert_non_null(p);
	return p;
}

static void write_bytes(const char *path, const void *d, size_t n)
{
	assert_int_equal(fl_write_file_atomic(path, d, n, 0644), 0);
}

static uint8_t *read_bytes(const char *path, size_t *ret_len)
{
	char *d = NULL;
	assert_int_equal(fl_read_file(path, 64u * 1024 * 1024, &d, ret_len), 0);
	return (uint8_t *)d;
}

static uint64_t rng;
static uint8_t rnd8(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (uint8_t)((z ^ (z >> 31)) >> 56);
}

/* A GGUF v3 file of N F32 tensors of 100000 bytes; tensor K's data from SEED+K. */
static void write_gguf(const char *path, size_t n, uint64_t seed, int changed)
{
	size_t cap = 4096 + n * 100032;
	uint8_t *b = calloc(1, cap);
	size_t o = 0;
#define PUT(p, l) (memcpy(b + o, (p), (l)), o += (l))
	uint32_t u32;
	uint64_t u64;
	PUT("GGUF", 4);
	u32 = 3; PUT(&u32, 4);
	u64 = n; PUT(&u64, 8);
	u64 = 1; PUT(&u64, 8);
	u64 = 20; PUT(&u64, 8); PUT("general.architecture", 20);
	u32 = 8; PUT(&u32, 4);
	u64 = 5; PUT(&u64, 8); PUT("llama", 5);
	for (size_t i = 0; i < n; i++) {
		char name[32];
		snprintf(name, sizeof(name), "t%02u", (unsigned)(i % 100));
		u64 = 3; PUT(&u64, 8); PUT(name, 3);
		u32 = 1; PUT(&u32, 4);
		u64 = 25000; PUT(&u64, 8);
		u32 = 0; PUT(&u32, 4);
		u64 = i * 100000; PUT(&u64, 8);
	}
	o = (o + 31) / 32 * 32;
	for (size_t i = 0; i < n; i++) {
		rng = seed + i + (changed == (int)i ? 1000 : 0);
		for (size_t k = 0; k < 100000; k++)
			b[o++] = rnd8();
	}
#undef PUT
	write_bytes(path, b, o);
	free(b);
}

static struct ota_manifest *new_manifest(const char *name, uint64_t seq)
{
	struct ota_manifest *m = NULL;
	assert_int_equal(ota_manifest_new(name, "1.0.0", seq, NOW - DAY, NOW + 30 * DAY, &m), 0);
	m->compat.arch = calloc(1, sizeof(char *));
	m->compat.arch[0] = strdup("x86_64");
	m->compat.n_arch = 1;
	return m;
}

static void make_bundle(const char *out, const char *name, uint64_t seq, char *const *files,
			size_t n, struct ota_key *key)
{
	struct ota_manifest *m = new_manifest(name, seq);
	assert_int_equal(ota_bundle_create(out, m, (const char *const *)files, n, NULL,
					   OTA_CHUNK_OPT_GGUF, &key, 1),
			 0);
	assert_int_equal(m->n_files, n);
	ota_manifest_free(m);
}

static char *sign_keyring(struct ota_key *signer, struct ota_key *release)
{
	struct ota_keyring *kr = NULL;
	assert_int_equal(ota_keyring_new(1, NOW + 365 * DAY, 1, &kr), 0);
	const char *models[] = {"*"};
	assert_int_equal(ota_keyring_add_key(kr, release, models, 1, NOW + 365 * DAY), 0);
	char *json = NULL;
	size_t len;
	assert_int_equal(ota_keyring_to_json(kr, &json, &len), 0);
	ota_keyring_free(kr);
	struct ota_dsse *env = NULL;
	assert_int_equal(ota_dsse_new(OTA_PAYLOAD_TYPE_KEYRING, json, len, &env), 0);
	assert_int_equal(ota_dsse_sign(env, signer), 0);
	char *out = NULL;
	assert_int_equal(ota_dsse_to_json(env, &out, NULL), 0);
	ota_dsse_free(env);
	free(json);
	return out;
}

static size_t dir_count(const char *d)
{
	DIR *dp = opendir(d);
	assert_non_null(dp);
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(dp)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(dp);
	return n;
}

static char *fresh_dir(const char *name)
{
	char *d = path_in(name);
	assert_int_equal(fl_rm_rf(d), 0);
	assert_int_equal(mkdir(d, 0755), 0);
	return d;
}

static int setup(void **state)
{
	(void)state;
	const char *base = getenv("FL_TEST_TMPDIR");
	dir = fl_asprintf("%s/bundle-%ld", base ? base : "/tmp", (long)getpid());
	assert_int_equal(fl_rm_rf(dir), 0);
	assert_int_equal(fl_mkdir_p(dir, 0755), 0);
	assert_int_equal(ota_key_generate(&root), 0);
	assert_int_equal(ota_key_generate(&rel), 0);
	assert_int_equal(ota_key_generate(&rel2), 0);
	assert_int_equal(ota_key_generate(&stranger), 0);
	assert_int_equal(ota_trust_new(1, &trust), 0);
	assert_int_equal(ota_trust_add_root(trust, root), 0);
	char *kr = sign_keyring(root, rel);
	assert_int_equal(ota_trust_install_keyring(trust, kr, strlen(kr), NOW), 1);
	free(kr);

	src[0] = path_in("model.gguf");
	src[1] = path_in("tokenizer.json");
	write_gguf(src[0], 6, 1, -1);
	const char *tok = "{\"tokens\": [\"a\", \"b\"]}\n";
	write_bytes(src[1], tok, strlen(tok));
	good = path_in("good.tar");
	make_bundle(good, "tiny", 5, src, 2, rel);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	ota_trust_free(trust);
	ota_key_free(root);
	ota_key_free(rel);
	ota_key_free(rel2);
	ota_key_free(stranger);
	fl_rm_rf(dir);
	free(dir);
	free(src[0]);
	free(src[1]);
	free(good);
	return 0;
}

static void assert_same_file(const char *a, const char *b)
{
	uint8_t ha[32], hb[32];
	uint64_t sa, sb;
	assert_int_equal(fl_sha256_file(a, ha, &sa), 0);
	assert_int_equal(fl_sha256_file(b, hb, &sb), 0);
	assert_int_equal(sa, sb);
	assert_memory_equal(ha, hb, 32);
}

/* ---- round trip ---- */

static void test_round_trip(void **state)
{
	(void)state;
	struct ota_bundle *b = NULL;
	assert_int_equal(ota_bundle_open(good, trust, NOW, 0, NULL, &b), 0);
	const struct ota_manifest *m = ota_bundle_manifest(b);
	assert_string_equal(m->name, "tiny");
	assert_int_equal(m->sequence, 5);
	assert_int_equal(m->n_files, 2);
	assert_string_equal(m->files[0].path, "model.gguf");
	assert_non_null(m->chunking);
	const struct ota_chunkidx *idx = ota_bundle_chunk_index(b, 0);
	assert_non_null(idx);
	assert_int_equal(ota_chunkidx_flags(idx), OTA_CIDX_F_GGUF);
	assert_true(ota_chunkidx_count(idx) >= 7); /* header + 6 tensors at least */
	assert_null(ota_bundle_chunk_index(b, 2));
	/* the index hash in the manifest is the hash of the encoded index */
	uint8_t *ib = NULL;
	size_t il;
	assert_int_equal(ota_chunkidx_encode(idx, &ib, &il), 0);
	uint8_t h[32];
	fl_sha256(ib, il, h);
	assert_memory_equal(h, m->files[0].chunk_index_sha256, 32);
	free(ib);

	char *dest = fresh_dir("dest-rt");
	assert_int_equal(ota_bundle_extract(b, dest), 0);
	assert_int_equal(dir_count(dest), 2);
	char *o0 = fl_path_join(dest, "model.gguf"), *o1 = fl_path_join(dest, "tokenizer.json");
	assert_same_file(src[0], o0);
	assert_same_file(src[1], o1);
	/* extracting again never overwrites: -EEXIST and nothing new */
	assert_int_equal(ota_bundle_extract(b, dest), -EEXIST);
	assert_int_equal(dir_count(dest), 2);
	assert_same_file(src[0], o0);
	assert_int_equal(ota_bundle_extract(b, "/nonexistent/dir"), -ENOENT);
	free(o0);
	free(o1);
	free(dest);
	ota_bundle_free(b);

	/* same inputs, same bytes (deterministic writer; ECDSA aside) */
	b = NULL;
	assert_int_equal(ota_bundle_open(good, trust, NOW, 5, NULL, &b), 0); /* equal seq ok */
	ota_bundle_free(b);
	b = NULL;
	assert_int_equal(ota_bundle_open(good, trust, NOW, 6, NULL, &b), -FL_EREPLAY);
	assert_int_equal(ota_bundle_open(good, trust, NOW + 31 * DAY, 0, NULL, &b), -FL_EEXPIRED);
	assert_int_equal(ota_bundle_open(good, NULL, NOW, 0, NULL, &b), -EINVAL);
	char *missing = path_in("missing.tar");
	assert_int_equal(ota_bundle_open(missing, trust, NOW, 0, NULL, &b), -ENOENT);
	free(missing);
	assert_null(b);
}

static void test_create_errors(void **state)
{
	(void)state;
	char *out = path_in("err.tar");
	size_t before = dir_count(dir);
	struct ota_manifest *m = new_manifest("tiny", 1);
	char *dup[] = {src[0], src[0]};
	assert_int_equal(ota_bundle_create(out, m, (const char *const *)dup, 2, NULL, 0, &rel, 1),
			 -FL_EDUP);
	assert_int_equal(m->n_files, 0);
	char *nofile[] = {path_in("nope.bin")};
	assert_int_equal(ota_bundle_create(out, m, (const char *const *)nofile, 1, NULL, 0, &rel, 1),
			 -ENOENT);
	free(nofile[0]);
	assert_int_equal(ota_bundle_create(out, m, (const char *const *)src, 2, NULL, 0, NULL, 0),
			 -EINVAL);
	/* a public-only key cannot sign */
	char *pub = path_in("rel.pub.pem");
	assert_int_equal(ota_key_save_public(rel, pub), 0);
	struct ota_key *pk = NULL;
	assert_int_equal(ota_key_load_public(pub, &pk), 0);
	assert_int_equal(ota_bundle_create(out, m, (const char *const *)src, 2, NULL, 0, &pk, 1),
			 -FL_EKEY);
	ota_key_free(pk);
	unlink(pub);
	free(pub);
	assert_int_equal(m->n_files, 0);
	struct stat st;
	assert_int_equal(stat(out, &st), -1); /* nothing left behind */
	assert_int_equal(dir_count(dir), before); /* no temporaries either */
	ota_manifest_free(m);
	free(out);
}

static void test_signatures(void **state)
{
	(void)state;
	struct ota_bundle *b = NULL;
	/* signed by a key the keyring does not hold */
	char *other = path_in("stranger.tar");
	make_bundle(other, "tiny", 5, src, 2, stranger);
	assert_int_equal(ota_bundle_open(other, trust, NOW, 0, NULL, &b), -FL_EKEYUNKNOWN);
	/* adding the release key's signature makes it acceptable */
	char *both = path_in("both.tar");
	assert_int_equal(ota_bundle_add_signature(other, both, rel), 0);
	assert_int_equal(ota_bundle_open(both, trust, NOW, 0, NULL, &b), 0);
	size_t len;
	const char *env = ota_bundle_envelope(b, &len);
	struct ota_dsse *d = NULL;
	assert_int_equal(ota_dsse_parse(env, len, &d), 0);
	assert_int_equal(d->n_sigs, 2);
	ota_dsse_free(d);
	ota_bundle_free(b);
	b = NULL;
	/* in place, and a second time with the same key is refused */
	assert_int_equal(ota_bundle_add_signature(both, both, rel), -FL_EDUP);
	assert_int_equal(ota_bundle_add_signature(both, both, rel2), 0);
	assert_int_equal(ota_bundle_open(both, trust, NOW, 0, NULL, &b), 0);
	ota_bundle_free(b);
	unlink(other);
	unlink(both);
	free(other);
	free(both);
}

static void test_diff(void **state)
{
	(void)state;
	char *f2 = path_in("v2/model.gguf");
	char *v2dir = path_in("v2");
	assert_int_equal(fl_mkdir_p(v2dir, 0755), 0);
	free(v2dir);
	write_gguf(f2, 6, 1, 3); /* tensor 3 rewritten */
	char *files[] = {f2, src[1]};
	char *v2 = path_in("v2.tar");
	make_bundle(v2, "tiny", 6, files, 2, rel);
	struct ota_bundle *a = NULL, *b = NULL;
	assert_int_equal(ota_bundle_open(good, trust, NOW, 0, NULL, &a), 0);
	assert_int_equal(ota_bundle_open(v2, trust, NOW, 5, NULL, &b), 0);
	struct ota_bundle_delta d;
	assert_int_equal(ota_bundle_diff(a, b, &d), 0);
	/* exactly the rewritten tensor moves (100000 bytes, its alignment pad aside) */
	assert_true(d.fetch_bytes >= 100000 && d.fetch_bytes <= 102000);
	assert_true(d.fetch_chunks >= 1 && d.fetch_chunks <= 3);
	assert_true(d.total_bytes >= 600000);
	assert_int_equal(ota_bundle_diff(a, a, &d), 0);
	assert_int_equal(d.fetch_bytes, 0);
	assert_int_equal(d.fetch_chunks, 0);
	assert_int_equal(ota_bundle_diff(NULL, a, &d), 0);
	assert_int_equal(d.fetch_bytes, d.total_bytes);
	ota_bundle_free(a);
	ota_bundle_free(b);
	free(f2);
	free(v2);
}

/* ---- malicious tars ---- */

enum kind { K_FILE, K_SYMLINK, K_HARDLINK, K_CHR, K_BLK, K_FIFO, K_DIR };

struct tent {
	const char *name;
	enum kind kind;
	const void *data;
	size_t len;
	int64_t size_delta; /* written size = len + delta (data padded with zeros) */
	int flip;           /* flip a byte in the middle of the data */
};

static void write_tar(const char *path, const struct tent *e, size_t n)
{
	struct archive *a = archive_write_new();
	assert_int_equal(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
	assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
	for (size_t i = 0; i < n; i++) {
		struct archive_entry *ae = archive_entry_new();
		archive_entry_set_pathname(ae, e[i].name);
		archive_entry_set_perm(ae, 0644);
		size_t size = 0;
		switch (e[i].kind) {
		case K_FILE:
			archive_entry_set_filetype(ae, AE_IFREG);
			size = (size_t)((int64_t)e[i].len + e[i].size_delta);
			break;
		case K_SYMLINK:
			archive_entry_set_filetype(ae, AE_IFLNK);
			archive_entry_set_symlink(ae, "/etc/passwd");
			break;
		case K_HARDLINK:
			archive_entry_set_filetype(ae, AE_IFREG);
			archive_entry_set_hardlink(ae, "files/model.gguf");
			break;
		case K_CHR:
			archive_entry_set_filetype(ae, AE_IFCHR);
			archive_entry_set_rdev(ae, makedev(1, 3));
			break;
		case K_BLK:
			archive_entry_set_filetype(ae, AE_IFBLK);
			archive_entry_set_rdev(ae, makedev(8, 0));
			break;
		case K_FIFO:
			archive_entry_set_filetype(ae, AE_IFIFO);
			break;
		case K_DIR:
			archive_entry_set_filetype(ae, AE_IFDIR);
			archive_entry_set_perm(ae, 0755);
			break;
		}
		archive_entry_set_size(ae, (la_int64_t)size);
		assert_int_equal(archive_write_header(a, ae), ARCHIVE_OK);
		if (size) {
			uint8_t *buf = calloc(1, size);
			memcpy(buf, e[i].data, e[i].len < size ? e[i].len : size);
			if (e[i].flip)
				buf[size / 2] ^= 0x01;
			assert_int_equal(archive_write_data(a, buf, size), (la_ssize_t)size);
			free(buf);
		}
		archive_entry_free(ae);
	}
	assert_int_equal(archive_write_close(a), ARCHIVE_OK);
	archive_write_free(a);
}

struct part {
	uint8_t *d;
	size_t len;
};

static void test_bad_tars(void **state)
{
	(void)state;
	struct ota_bundle *gb = NULL;
	assert_int_equal(ota_bundle_open(good, trust, NOW, 0, NULL, &gb), 0);
	struct part env = {0}, idx[2], file[2], big, stranger_env = {0};
	env.d = (uint8_t *)ota_bundle_envelope(gb, &env.len);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(ota_chunkidx_encode(ota_bundle_chunk_index(gb, (size_t)i), &idx[i].d,
						     &idx[i].len),
				 0);
		file[i].d = read_bytes(src[i], &file[i].len);
	}
	big.len = OTA_BUNDLE_MAX_MANIFEST_BYTES + 1;
	big.d = calloc(1, big.len);
	memset(big.d, ' ', big.len);
	{
		/* the same manifest signed by a key the keyring does not hold */
		struct ota_dsse *d = NULL;
		assert_int_equal(ota_dsse_parse((const char *)env.d, env.len, &d), 0);
		struct ota_dsse *d2 = NULL;
		assert_int_equal(ota_dsse_new(d->payload_type, d->payload, d->payload_len, &d2), 0);
		assert_int_equal(ota_dsse_sign(d2, stranger), 0);
		char *j = NULL;
		assert_int_equal(ota_dsse_to_json(d2, &j, &stranger_env.len), 0);
		stranger_env.d = (uint8_t *)j;
		ota_dsse_free(d);
		ota_dsse_free(d2);
	}

#define E(n, k) {.name = (n), .kind = (k)}
#define M E(OTA_BUNDLE_MANIFEST_NAME, K_FILE)
#define F(n, p) E(n, K_FILE)
	/* Entries refer to parts by name; data is filled in below. */
	struct tcase {
		const char *what;
		struct tent e[8];
		size_t n;
		int want;
		size_t max_entries;
		uint64_t max_total;
	} cases[] = {
		{"good", {M, F("index/model.gguf.cidx", 0), F("index/tokenizer.json.cidx", 0),
			  F("files/model.gguf", 0), F("files/tokenizer.json", 0)}, 5, 0, 0, 0},
		{"bit-flipped payload", {M, F("index/model.gguf.cidx", 0), F("index/tokenizer.json.cidx", 0),
			  F("files/tokenizer.json", 0), {.name = "files/model.gguf", .kind = K_FILE, .flip = 1}},
		 5, -FL_EHASH, 0, 0},
		{"bit-flipped index", {M, {.name = "index/model.gguf.cidx", .kind = K_FILE, .flip = 1}}, 2,
		 -FL_EHASH, 0, 0},
		{"size mismatch", {M, F("index/model.gguf.cidx", 0), F("index/tokenizer.json.cidx", 0),
			  F("files/model.gguf", 0), {.name = "files/tokenizer.json", .kind = K_FILE, .size_delta = 1}},
		 5, -FL_ESIZE, 0, 0},
		{"symlink", {M, F("files/tokenizer.json", 0), E("files/model.gguf", K_SYMLINK)}, 3,
		 -FL_EENTRYTYPE, 0, 0},
		{"hardlink", {M, F("files/model.gguf", 0), E("files/tokenizer.json", K_HARDLINK)}, 3,
		 -FL_EENTRYTYPE, 0, 0},
		{"char device", {M, F("files/tokenizer.json", 0), E("files/model.gguf", K_CHR)}, 3,
		 -FL_EENTRYTYPE, 0, 0},
		{"block device", {M, F("files/tokenizer.json", 0), E("files/model.gguf", K_BLK)}, 3,
		 -FL_EENTRYTYPE, 0, 0},
		{"fifo", {M, F("files/tokenizer.json", 0), E("files/model.gguf", K_FIFO)}, 3,
		 -FL_EENTRYTYPE, 0, 0},
		{"directory", {M, F("files/tokenizer.json", 0), E("files/model.gguf", K_DIR)}, 3,
		 -FL_EENTRYTYPE, 0, 0},
		{"symlink manifest", {E(OTA_BUNDLE_MANIFEST_NAME, K_SYMLINK)}, 1, -FL_EENTRYTYPE, 0, 0},
		{"dotdot", {M, F("files/tokenizer.json", 0), F("../x", 0)}, 3, -FL_EPATH, 0, 0},
		{"dotdot inside", {M, F("files/tokenizer.json", 0), F("files/../files/model.gguf", 0)},
		 3, -FL_EPATH, 0, 0},
		{"absolute", {M, F("files/tokenizer.json", 0), F("/abs", 0)}, 3, -FL_EPATH, 0, 0},
		{"duplicate", {M, F("files/tokenizer.json", 0), F("files/tokenizer.json", 0)}, 3,
		 -FL_EDUP, 0, 0},
		{"unexpected extra", {M, F("index/model.gguf.cidx", 0), F("index/tokenizer.json.cidx", 0),
			  F("files/model.gguf", 0), F("files/tokenizer.json", 0), F("files/extra.bin", 0)},
		 6, -FL_EPATH, 0, 0},
		{"index under files/", {M, F("files/tokenizer.json", 0), F("files/model.gguf.cidx", 0)},
		 3, -FL_EPATH, 0, 0},
		{"payload missing", {M, F("index/model.gguf.cidx", 0), F("index/tokenizer.json.cidx", 0),
			  F("files/model.gguf", 0)}, 4, -FL_EMISSING, 0, 0},
		{"index missing", {M, F("index/model.gguf.cidx", 0), F("files/tokenizer.json", 0),
			  F("files/model.gguf", 0)}, 4, -FL_EMISSING, 0, 0},
		{"manifest missing", {F("index/model.gguf.cidx", 0), F("files/model.gguf", 0)}, 2,
		 -FL_EMISSING, 0, 0},
		{"empty archive", {{0}}, 0, -FL_EMISSING, 0, 0},
		{"manifest not first", {F("files/tokenizer.json", 0), M, F("files/model.gguf", 0)}, 3,
		 -FL_EFORMAT, 0, 0},
		{"oversized manifest", {E(OTA_BUNDLE_MANIFEST_NAME, K_FILE)}, 1, -FL_ETOOBIG, 0, 0},
		{"unknown signer", {E(OTA_BUNDLE_MANIFEST_NAME, K_FILE), F("files/model.gguf", 0)}, 2,
		 -FL_EKEYUNKNOWN, 0, 0},
		{"too many entries", {M, F("index/model.gguf.cidx", 0), F("index/tokenizer.json.cidx", 0),
			  F("files/model.gguf", 0), F("files/tokenizer.json", 0)}, 5, -FL_ETOOBIG, 4, 0},
		{"total size limit", {M, F("index/model.gguf.cidx", 0), F("index/tokenizer.json.cidx", 0),
			  F("files/model.gguf", 0), F("files/tokenizer.json", 0)}, 5, -FL_ETOOBIG, 0,
		 100000},
	};
#undef E
#undef M
#undef F
	char *bad = path_in("bad.tar");
	char *swap = path_in("swap.tar"); /* path the opened good bundle reads at extract */
	char *dest = fresh_dir("dest-bad");
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct tent *e = cases[c].e;
		for (size_t i = 0; i < cases[c].n; i++) {
			const char *nm = e[i].name;
			struct part *p = NULL;
			if (!strcmp(nm, OTA_BUNDLE_MANIFEST_NAME))
				p = !strcmp(cases[c].what, "oversized manifest") ? &big
				    : !strcmp(cases[c].what, "unknown signer")   ? &stranger_env
										 : &env;
			else if (strstr(nm, "model.gguf.cidx"))
				p = &idx[0];
			else if (strstr(nm, "tokenizer.json.cidx"))
				p = &idx[1];
			else if (strstr(nm, "model.gguf"))
				p = &file[0];
			else
				p = &file[1];
			if (e[i].kind == K_FILE) {
				e[i].data = p->d;
				e[i].len = p->len;
			}
		}
		write_tar(bad, e, cases[c].n);
		struct ota_bundle_opts opts = {.max_entries = cases[c].max_entries,
					       .max_total_bytes = cases[c].max_total};
		struct ota_bundle *b = NULL;
		int r = ota_bundle_open(bad, trust, NOW, 0, &opts, &b);
		if (r != cases[c].want)
			fail_msg("case '%s': got %d (%s), want %d (%s)", cases[c].what, r,
				 fl_strerror(r), cases[c].want, fl_strerror(cases[c].want));
		ota_bundle_free(b);

		/* Extraction of an opened bundle whose file was swapped for this one:
		 * refused, and nothing is left in the destination. */
		if (cases[c].want != 0 && !cases[c].max_entries && !cases[c].max_total) {
			struct ota_bundle *ob = NULL;
			uint8_t *gd;
			size_t gl;
			gd = read_bytes(good, &gl);
			write_bytes(swap, gd, gl);
			free(gd);
			assert_int_equal(ota_bundle_open(swap, trust, NOW, 0, NULL, &ob), 0);
			assert_int_equal(rename(bad, swap), 0);
			r = ota_bundle_extract(ob, dest);
			if (strcmp(cases[c].what, "unknown signer") &&
			    strcmp(cases[c].what, "oversized manifest") &&
			    strcmp(cases[c].what, "manifest missing") &&
			    strcmp(cases[c].what, "manifest not first") &&
			    strcmp(cases[c].what, "symlink manifest") &&
			    strcmp(cases[c].what, "empty archive")) {
				if (r != cases[c].want)
					fail_msg("extract '%s': got %d (%s)", cases[c].what, r,
						 fl_strerror(r));
			} else {
				assert_true(r < 0);
			}
			if (dir_count(dest) != 0)
				fail_msg("extract '%s' left files behind", cases[c].what);
			ota_bundle_free(ob);
		}
	}

	/* Truncated archives, garbage and an empty file. */
	uint8_t *gd;
	size_t gl;
	gd = read_bytes(good, &gl);
	size_t cuts[] = {gl / 2, 700, 5000, gl - 1024 - 1};
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		struct ota_bundle *b = NULL;
		write_bytes(bad, gd, cuts[i]);
		int r = ota_bundle_open(bad, trust, NOW, 0, NULL, &b);
		if (r != -FL_ETAR)
			fail_msg("truncated at %zu: got %d (%s)", cuts[i], r, fl_strerror(r));
		/* and extraction from a truncated file leaves nothing */
		struct ota_bundle *ob = NULL;
		write_bytes(swap, gd, gl);
		assert_int_equal(ota_bundle_open(swap, trust, NOW, 0, NULL, &ob), 0);
		write_bytes(swap, gd, cuts[i]);
		assert_true(ota_bundle_extract(ob, dest) < 0);
		assert_int_equal(dir_count(dest), 0);
		ota_bundle_free(ob);
	}
	struct ota_bundle *b = NULL;
	memset(gd, 'x', 4096);
	assert_int_equal(ota_bundle_open_mem(gd, 4096, trust, NOW, 0, NULL, &b), -FL_ETAR);
	assert_int_equal(ota_bundle_open_mem(gd, 0, trust, NOW, 0, NULL, &b), -FL_ETAR);
	assert_null(b);
	free(gd);

	for (int i = 0; i < 2; i++) {
		free(idx[i].d);
		free(file[i].d);
	}
	free(big.d);
	free(stranger_env.d);
	free(bad);
	free(swap);
	free(dest);
	ota_bundle_free(gb);
}

/* A manifest whose file lives in a subdirectory: extraction creates the
 * directory, and a failure removes it again. */
static void test_subdir_extract(void **state)
{
	(void)state;
	struct ota_manifest *m = new_manifest("tiny", 7);
	size_t len;
	uint8_t *data = read_bytes(src[1], &len);
	struct ota_chunkidx *ci = NULL;
	assert_int_equal(ota_chunk_file(src[1], NULL, 0, &ci), 0);
	uint8_t *ib;
	size_t il;
	assert_int_equal(ota_chunkidx_encode(ci, &ib, &il), 0);
	uint8_t fh[32], ih[32];
	fl_sha256(data, len, fh);
	fl_sha256(ib, il, ih);
	assert_int_equal(ota_manifest_add_file(m, "tok/sub/tokenizer.json", len, fh, ih), 0);
	char *env = NULL;
	size_t el;
	assert_int_equal(ota_manifest_sign(m, rel, &env, &el), 0);
	struct tent e[] = {
		{.name = OTA_BUNDLE_MANIFEST_NAME, .kind = K_FILE, .data = env, .len = el},
		{.name = "index/tok/sub/tokenizer.json.cidx", .kind = K_FILE, .data = ib, .len = il},
		{.name = "files/tok/sub/tokenizer.json", .kind = K_FILE, .data = data, .len = len},
	};
	char *t = path_in("sub.tar");
	write_tar(t, e, 3);
	struct ota_bundle *b = NULL;
	assert_int_equal(ota_bundle_open(t, trust, NOW, 0, NULL, &b), 0);
	char *dest = fresh_dir("dest-sub");
	/* swapped for a flipped payload: the created directories go too */
	e[2].flip = 1;
	write_tar(t, e, 3);
	assert_int_equal(ota_bundle_extract(b, dest), -FL_EHASH);
	assert_int_equal(dir_count(dest), 0);
	e[2].flip = 0;
	write_tar(t, e, 3);
	assert_int_equal(ota_bundle_extract(b, dest), 0);
	char *out = fl_asprintf("%s/tok/sub/tokenizer.json", dest);
	assert_same_file(src[1], out);
	/* a symlink planted where a directory goes is not followed */
	char *dest2 = fresh_dir("dest-sub2");
	char *lnk = fl_asprintf("%s/tok", dest2);
	assert_int_equal(symlink("/tmp", lnk), 0);
	assert_int_equal(ota_bundle_extract(b, dest2), -FL_EPATH);
	assert_int_equal(dir_count(dest2), 1); /* only the planted link */
	free(lnk);
	free(dest2);
	free(out);
	free(dest);
	free(t);
	ota_bundle_free(b);
	ota_chunkidx_free(ci);
	ota_manifest_free(m);
	free(env);
	free(ib);
	free(data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_create_errors),
		cmocka_unit_test(test_signatures),
		cmocka_unit_test(test_diff),
		cmocka_unit_test(test_bad_tars),
		cmocka_unit_test(test_subdir_extract),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
