/* Helper for bench/bundle_*.sh (not a test):
 *   bundle_bench_tool gguf OUT MIB SEED [CHANGED_SEED]
 *       write a llama-like GGUF v3 file of about MIB MiB of F32 tensors with
 *       deterministic pseudo-random data; with CHANGED_SEED, about 10% of the
 *       tensor bytes (whole tensors, every 10th one first) get other data.
 *       Prints "tensors N changed_tensors K total_bytes T changed_bytes C".
 *   bundle_bench_tool trust DIR
 *       make DIR/trust/root.pem (public root key), DIR/trust/keyring.dsse.json
 *       (root-signed, delegating the release key for every model) and
 *       DIR/release.pem (release private key).
 *   bundle_bench_tool random OUT MIB   (MIB MiB of pseudo-random bytes)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/crypto.h>
#include <flotilla/dsse.h>
#include <flotilla/fs.h>
#include <flotilla/keyring.h>
#include <flotilla/util.h>

#define ALIGN 32u
#define MAX_TENSORS 256

struct tensor {
	char name[64];
	uint64_t rows, cols;
	uint64_t bytes;
	uint64_t off;
	int changed;
};

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i + 8 <= n; i += 8) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		memcpy(p + i, &s, 8);
	}
}

static int put(FILE *f, const void *d, size_t n)
{
	return fwrite(d, 1, n, f) == n ? 0 : -1;
}
static int put32(FILE *f, uint32_t v) { return put(f, &v, 4); }
static int put64(FILE *f, uint64_t v) { return put(f, &v, 8); }
static int putstr(FILE *f, const char *s) { return put64(f, strlen(s)) || put(f, s, strlen(s)); }

static int gguf(const char *out, long mib, uint64_t seed, uint64_t cseed, int change)
{
	static struct tensor t[MAX_TENSORS];
	size_t n = 0;
	const uint64_t d = 768, ff = 2048, vocab = 4096;
	uint64_t target = (uint64_t)mib << 20, total = 0;
	snprintf(t[n].name, sizeof(t[n].name), "token_embd.weight");
	t[n].rows = vocab;
	t[n++].cols = d;
	total += vocab * d * 4;
	for (int l = 0; total < target && n + 9 < MAX_TENSORS; l++) {
		static const char *names[] = {"attn_q", "attn_k", "attn_v", "attn_output",
					      "ffn_gate", "ffn_up", "ffn_down", "attn_norm",
					      "ffn_norm"};
		for (int k = 0; k < 9; k++) {
			snprintf(t[n].name, sizeof(t[n].name), "blk.%d.%s.weight", l, names[k]);
			t[n].rows = k < 4 ? d : k < 7 ? ff : 1;
			t[n].cols = d;
			total += t[n].rows * t[n].cols * 4;
			n++;
		}
	}
	snprintf(t[n].name, sizeof(t[n].name), "output_norm.weight");
	t[n].rows = 1;
	t[n++].cols = d;
	uint64_t off = 0, changed = 0, nchanged = 0;
	total = 0;
	for (size_t i = 0; i < n; i++) {
		t[i].bytes = t[i].rows * t[i].cols * 4;
		t[i].off = off;
		off += (t[i].bytes + ALIGN - 1) / ALIGN * ALIGN;
		total += t[i].bytes;
	}
	/* whole tensors until about 10% of the bytes: every 10th, then others */
	for (size_t start = 5; change && start < 10 && changed * 10 < total; start += 3)
		for (size_t i = start; i < n && changed * 10 < total; i += 10)
			if (!t[i].changed && changed + t[i].bytes <= total / 10 + total / 100) {
				t[i].changed = 1;
				changed += t[i].bytes;
				nchanged++;
			}

	FILE *f = fopen(out, "wb");
	if (!f)
		return -errno;
	int e = put(f, "GGUF", 4) || put32(f, 3) || put64(f, n) || put64(f, 2) ||
		putstr(f, "general.architecture") || put32(f, 8) || putstr(f, "llama") ||
		putstr(f, "general.alignment") || put32(f, 4) || put32(f, ALIGN);
	for (size_t i = 0; i < n && !e; i++)
		e = putstr(f, t[i].name) || put32(f, 2) || put64(f, t[i].cols) ||
		    put64(f, t[i].rows) || put32(f, 0) || put64(f, t[i].off);
	long pos = ftell(f);
	uint8_t zero[ALIGN] = {0};
	if (!e && pos % ALIGN)
		e = put(f, zero, ALIGN - (size_t)(pos % ALIGN));
	uint64_t maxb = 0;
	for (size_t i = 0; i < n; i++)
		maxb = t[i].bytes > maxb ? t[i].bytes : maxb;
	uint8_t *buf = malloc((size_t)maxb);
	for (size_t i = 0; i < n && !e && buf; i++) {
		fill(buf, (size_t)t[i].bytes, (t[i].changed ? cseed : seed) * 1000 + i);
		e = put(f, buf, (size_t)t[i].bytes);
		if (!e && t[i].bytes % ALIGN)
			e = put(f, zero, ALIGN - (size_t)(t[i].bytes % ALIGN));
	}
	free(buf);
	if (fclose(f) != 0 || e)
		return -EIO;
	printf("tensors %zu changed_tensors %llu total_bytes %llu changed_bytes %llu\n", n,
	       (unsigned long long)nchanged, (unsigned long long)total,
	       (unsigned long long)changed);
	return 0;
}

static int random_file(const char *out, long mib)
{
	FILE *f = fopen(out, "wb");
	if (!f)
		return -errno;
	uint8_t *buf = malloc(1 << 20);
	int e = buf ? 0 : -ENOMEM;
	for (long i = 0; i < mib && !e; i++) {
		fill(buf, 1 << 20, (uint64_t)i + 7);
		e = put(f, buf, 1 << 20);
	}
	free(buf);
	if (fclose(f) != 0 || e)
		return -EIO;
	return 0;
}

static int trust(const char *dir)
{
	struct ota_key *root = NULL, *rel = NULL;
	struct ota_keyring *kr = NULL;
	struct ota_dsse *env = NULL;
	char *json = NULL, *envj = NULL, *tdir = fl_path_join(dir, "trust");
	char *rootp = fl_path_join(tdir, "root.pem"), *krp = fl_path_join(tdir, "keyring.dsse.json");
	char *relp = fl_path_join(dir, "release.pem");
	size_t len = 0;
	const char *models[] = {"*"};
	int r = -ENOMEM;
	if (!tdir || !rootp || !krp || !relp)
		goto out;
	if ((r = fl_mkdir_p(tdir, 0755)) < 0 || (r = ota_key_generate(&root)) < 0 ||
	    (r = ota_key_generate(&rel)) < 0 || (r = ota_key_save_public(root, rootp)) < 0 ||
	    (r = ota_key_save_private(rel, relp)) < 0 ||
	    (r = ota_keyring_new(1, fl_now_s() + 365 * 86400, 1, &kr)) < 0 ||
	    (r = ota_keyring_add_key(kr, rel, models, 1, fl_now_s() + 365 * 86400)) < 0 ||
	    (r = ota_keyring_to_json(kr, &json, &len)) < 0 ||
	    (r = ota_dsse_new(OTA_PAYLOAD_TYPE_KEYRING, json, len, &env)) < 0 ||
	    (r = ota_dsse_sign(env, root)) < 0 || (r = ota_dsse_to_json(env, &envj, &len)) < 0)
		goto out;
	r = fl_write_file_atomic(krp, envj, len, 0644);
out:
	ota_key_free(root);
	ota_key_free(rel);
	ota_keyring_free(kr);
	ota_dsse_free(env);
	free(json);
	free(envj);
	free(tdir);
	free(rootp);
	free(krp);
	free(relp);
	return r;
}

int main(int argc, char **argv)
{
	int64_t mib = 0, seed = 0, cseed = 0;
	int r;
	if (argc >= 5 && !strcmp(argv[1], "gguf") && fl_parse_i64(argv[3], 1, 1 << 16, &mib) == 0 &&
	    fl_parse_i64(argv[4], 0, 1 << 30, &seed) == 0 &&
	    (argc == 5 || (argc == 6 && fl_parse_i64(argv[5], 0, 1 << 30, &cseed) == 0)))
		r = gguf(argv[2], (long)mib, (uint64_t)seed, (uint64_t)cseed, argc == 6);
	else if (argc == 3 && !strcmp(argv[1], "trust"))
		r = trust(argv[2]);
	else if (argc == 4 && !strcmp(argv[1], "random") &&
		 fl_parse_i64(argv[3], 1, 1 << 20, &mib) == 0)
		r = random_file(argv[2], (long)mib);
	else {
		fputs("usage: bundle_bench_tool gguf OUT MIB SEED [CHANGED_SEED] | trust DIR | "
		      "random OUT MIB\n",
		      stderr);
		return 2;
	}
	if (r < 0) {
		fprintf(stderr, "bundle_bench_tool: %s: error %d\n", argv[1], r);
		return 1;
	}
	return 0;
}
