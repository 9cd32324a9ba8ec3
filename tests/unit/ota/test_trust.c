/* Trust store: keyring install (threshold, versions, expiry, rotation,
 * revocation) and manifest verification, with a table of bad inputs where
 * each must fail with its own code and change no state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ota_testutil.h"
#include <flotilla/failpoint.h>
#include <flotilla/hash.h>
#include <flotilla/trust.h>

#define NROOTS 3
#define YEAR (365 * TU_DAY)

struct fx {
	char *dir, *roots_dir, *keyring_path;
	struct ota_key *root[NROOTS];
	struct ota_key *rel;         /* delegated for "llm" */
	struct ota_key *rel_any;     /* delegated for "*" */
	struct ota_key *rel_other;   /* delegated for "other" */
	struct ota_key *rel_expired; /* expired yesterday */
	struct ota_key *rel_revoked; /* listed and revoked */
	struct ota_key *stranger;    /* not in the keyring */
	char *kr2;                   /* installed keyring v2 envelope */
	struct ota_trust *t;
};

/* Keyring payload: VERSION, EXPIRES, THRESHOLD, the fixture's release keys
 * (valid until EXPIRES but rel_expired),
 * root3 and rel_revoked revoked; NEW_ROOTS (may be NULL) listed as roots. */
static char *keyring_payload(struct fx *f, uint64_t version, int64_t expires, unsigned threshold,
			     struct ota_key *const *new_roots, size_t n_new)
{
	struct ota_keyring *kr = NULL;
	assert_int_equal(ota_keyring_new(version, expires, threshold, &kr), 0);
	const char *llm[] = {"llm"}, *any[] = {"*"}, *other[] = {"other"};
	assert_int_equal(ota_keyring_add_key(kr, f->rel, llm, 1, expires), 0);
	assert_int_equal(ota_keyring_add_key(kr, f->rel_any, any, 1, expires), 0);
	assert_int_equal(ota_keyring_add_key(kr, f->rel_other, other, 1, expires), 0);
	assert_int_equal(ota_keyring_add_key(kr, f->rel_expired, llm, 1, TU_NOW - TU_DAY), 0);
	assert_int_equal(ota_keyring_add_key(kr, f->rel_revoked, llm, 1, expires), 0);
	assert_int_equal(ota_keyring_revoke(kr, ota_key_id(f->rel_revoked)), 0);
	assert_int_equal(ota_keyring_revoke(kr, ota_key_id(f->root[2])), 0);
	for (size_t i = 0; i < n_new; i++)
		assert_int_equal(ota_keyring_add_root(kr, new_roots[i]), 0);
	char *json = NULL;
	assert_int_equal(ota_keyring_to_json(kr, &json, NULL), 0);
	ota_keyring_free(kr);
	return json;
}

static char *keyring_env(struct fx *f, uint64_t version, int64_t expires, unsigned threshold,
			 struct ota_key *const *signers, size_t n)
{
	char *payload = keyring_payload(f, version, expires, threshold, NULL, 0);
	char *env = tu_envelope(OTA_PAYLOAD_TYPE_KEYRING, payload, signers, n);
	free(payload);
	return env;
}

static char *manifest_payload(const char *name, uint64_t seq, int64_t created, int64_t expires)
{
	struct ota_manifest *m = NULL;
	assert_int_equal(ota_manifest_new(name, "1.0", seq, created, expires, &m), 0);
	uint8_t h[32] = {1};
	assert_int_equal(ota_manifest_add_file(m, "model.gguf", 10, h, h), 0);
	char *json = NULL;
	assert_int_equal(ota_manifest_to_json(m, &json, NULL), 0);
	ota_manifest_free(m);
	return json;
}

static char *manifest_env(const char *name, uint64_t seq, int64_t expires, struct ota_key *signer)
{
	char *payload = manifest_payload(name, seq, TU_NOW - TU_DAY, expires);
	char *env = tu_envelope(OTA_PAYLOAD_TYPE_MANIFEST, payload, &signer, 1);
	free(payload);
	return env;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->dir = tu_tmpdir("trust");
	f->roots_dir = tu_path(f->dir, "roots");
	f->keyring_path = tu_path(f->dir, "keyring.dsse.json");
	assert_int_equal(fl_mkdir_p(f->roots_dir, 0755), 0);
	for (int i = 0; i < NROOTS; i++) {
		f->root[i] = tu_key();
		char name[32];
		snprintf(name, sizeof(name), "root%d.pem", i + 1);
		char *p = tu_path(f->roots_dir, name);
		assert_int_equal(ota_key_save_public(f->root[i], p), 0);
		free(p);
	}
	char *thr = tu_path(f->roots_dir, "threshold");
	tu_write(thr, "2\n");
	free(thr);
	f->rel = tu_key();
	f->rel_any = tu_key();
	f->rel_other = tu_key();
	f->rel_expired = tu_key();
	f->rel_revoked = tu_key();
	f->stranger = tu_key();
	assert_int_equal(ota_trust_open(f->roots_dir, f->keyring_path, 0, &f->t), 0);
	assert_int_equal(ota_trust_threshold(f->t), 2);
	assert_int_equal(ota_trust_n_roots(f->t), 3);
	assert_null(ota_trust_keyring(f->t));
	f->kr2 = keyring_env(f, 2, TU_NOW + YEAR, 2, f->root, 2);
	assert_int_equal(ota_trust_install_keyring(f->t, f->kr2, strlen(f->kr2), TU_NOW), 1);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	ota_trust_free(f->t);
	for (int i = 0; i < NROOTS; i++)
		ota_key_free(f->root[i]);
	ota_key_free(f->rel);
	ota_key_free(f->rel_any);
	ota_key_free(f->rel_other);
	ota_key_free(f->rel_expired);
	ota_key_free(f->rel_revoked);
	ota_key_free(f->stranger);
	fl_rm_rf(f->dir);
	free(f->kr2);
	free(f->dir);
	free(f->roots_dir);
	free(f->keyring_path);
	free(f);
	return 0;
}

static void test_install_and_verify(void **state)
{
	struct fx *f = *state;
	const struct ota_keyring *kr = ota_trust_keyring(f->t);
	assert_non_null(kr);
	assert_int_equal(kr->version, 2);
	/* root3 is revoked by the keyring: only two roots sign from now on. */
	assert_int_equal(ota_trust_n_roots(f->t), 2);
	size_t len;
	char *disk = tu_read(f->keyring_path, &len);
	assert_non_null(disk);
	assert_string_equal(disk, f->kr2);
	free(disk);
	/* Same keyring again: accepted, nothing to do. */
	assert_int_equal(ota_trust_install_keyring(f->t, f->kr2, strlen(f->kr2), TU_NOW), 0);

	char *env = manifest_env("llm", 10, TU_NOW + 30 * TU_DAY, f->rel);
	struct ota_manifest *m = NULL;
	assert_int_equal(ota_trust_verify_manifest(f->t, env, strlen(env), TU_NOW, 5, &m), 0);
	assert_non_null(m);
	assert_string_equal(m->name, "llm");
	assert_int_equal(m->sequence, 10);
	ota_manifest_free(m);
	/* Equal sequence is a retry of the same release: accepted. */
	assert_int_equal(ota_trust_verify_manifest(f->t, env, strlen(env), TU_NOW, 10, NULL), 0);
	free(env);
	/* "*" delegation covers any model. */
	env = manifest_env("whatever", 1, TU_NOW + TU_DAY, f->rel_any);
	assert_int_equal(ota_trust_verify_manifest(f->t, env, strlen(env), TU_NOW, 0, NULL), 0);
	free(env);

	/* A manifest signed by a revoked key and a good key passes on the good one. */
	char *payload = manifest_payload("llm", 11, TU_NOW - TU_DAY, TU_NOW + TU_DAY);
	struct ota_key *two[] = {f->rel_revoked, f->rel};
	env = tu_envelope(OTA_PAYLOAD_TYPE_MANIFEST, payload, two, 2);
	assert_int_equal(ota_trust_verify_manifest(f->t, env, strlen(env), TU_NOW, 0, NULL), 0);
	free(env);
	free(payload);

	/* The builder helper produces what the device accepts. */
	struct ota_manifest *b = NULL;
	assert_int_equal(ota_manifest_new("llm", "2.0", 12, TU_NOW, TU_NOW + TU_DAY, &b), 0);
	uint8_t h[32] = {0};
	assert_int_equal(ota_manifest_add_file(b, "w.bin", 1, h, h), 0);
	char *signed_json = NULL;
	size_t signed_len = 0;
	assert_int_equal(ota_manifest_sign(b, f->rel, &signed_json, &signed_len), 0);
	assert_int_equal(
		ota_trust_verify_manifest(f->t, signed_json, signed_len, TU_NOW + 1, 12, &m), 0);
	assert_string_equal(m->version, "2.0");
	ota_manifest_free(m);
	free(signed_json);
	ota_manifest_free(b);

	/* The installed keyring survives a reopen. */
	struct ota_trust *t2 = NULL;
	assert_int_equal(ota_trust_open(f->roots_dir, f->keyring_path, 0, &t2), 0);
	assert_int_equal(ota_trust_keyring(t2)->version, 2);
	env = manifest_env("llm", 10, TU_NOW + 30 * TU_DAY, f->rel);
	assert_int_equal(ota_trust_verify_manifest(t2, env, strlen(env), TU_NOW, 0, NULL), 0);
	free(env);
	ota_trust_free(t2);
}

/* ---- the table ----------------------------------------------------------- */

enum target { MANIFEST, KEYRING };

struct bad_case {
	const char *what;
	enum target target;
	char *input;
	size_t len;
	int64_t now;
	uint64_t min_sequence;
	int err;
};

static char *flip_payload(const char *json, size_t at)
{
	struct ota_dsse *env = NULL;
	assert_int_equal(ota_dsse_parse(json, strlen(json), &env), 0);
	assert_true(at < env->payload_len);
	env->payload[at] ^= 0x01;
	char *out = NULL;
	assert_int_equal(ota_dsse_to_json(env, &out, NULL), 0);
	ota_dsse_free(env);
	return out;
}

static char *flip_sig(const char *json, size_t at)
{
	struct ota_dsse *env = NULL;
	assert_int_equal(ota_dsse_parse(json, strlen(json), &env), 0);
	env->sigs[0].sig[at % env->sigs[0].sig_len] ^= 0x80;
	char *out = NULL;
	assert_int_equal(ota_dsse_to_json(env, &out, NULL), 0);
	ota_dsse_free(env);
	return out;
}

/* An envelope whose signature list is the one of JSON twice over. */
static char *double_sigs(const char *json)
{
	struct ota_dsse *env = NULL;
	assert_int_equal(ota_dsse_parse(json, strlen(json), &env), 0);
	size_t n = env->n_sigs;
	env->sigs = realloc(env->sigs, 2 * n * sizeof(*env->sigs));
	for (size_t i = 0; i < n; i++) {
		env->sigs[n + i] = env->sigs[i];
		env->sigs[n + i].sig = malloc(env->sigs[i].sig_len);
		memcpy(env->sigs[n + i].sig, env->sigs[i].sig, env->sigs[i].sig_len);
	}
	env->n_sigs = 2 * n;
	char *out = NULL;
	assert_int_equal(ota_dsse_to_json(env, &out, NULL), 0);
	ota_dsse_free(env);
	return out;
}

static char *signed_text(const char *type, const char *payload, struct ota_key *k)
{
	return tu_envelope(type, payload, &k, 1);
}

/* A manifest payload with "size":1 replaced by TEXT in the first file. */
static char *manifest_with(const char *from, const char *to)
{
	char *p = manifest_payload("llm", 20, TU_NOW - TU_DAY, TU_NOW + TU_DAY);
	char *at = strstr(p, from);
	assert_non_null(at);
	char *out = fl_asprintf("%.*s%s%s", (int)(at - p), p, to, at + strlen(from));
	free(p);
	return out;
}

static char *many_files_manifest(size_t n)
{
	struct ota_manifest *m = NULL;
	assert_int_equal(ota_manifest_new("llm", "1", 30, TU_NOW - TU_DAY, TU_NOW + TU_DAY, &m),
			 0);
	uint8_t h[32] = {0};
	assert_int_equal(ota_manifest_add_file(m, "f0", 1, h, h), 0);
	char *one = NULL;
	assert_int_equal(ota_manifest_to_json(m, &one, NULL), 0);
	ota_manifest_free(m);
	/* Splice N more file objects in after the first one (paths repeat: the
	 * count limit is checked before any entry). */
	char *files = strstr(one, "\"files\":[") + strlen("\"files\":[");
	char *end = strrchr(one, ']');
	size_t item_len = (size_t)(end - files);
	size_t cap = strlen(one) + n * (item_len + 16) + 1;
	char *out = malloc(cap);
	size_t off = (size_t)(end - one);
	memcpy(out, one, off);
	for (size_t i = 1; i <= n; i++) {
		/* Same item with path "fN". */
		off += (size_t)snprintf(out + off, cap - off, ",%.*s", (int)item_len, files);
		char *pos = strstr(out + off - item_len, "\"f0\"");
		char num[16];
		int nl = snprintf(num, sizeof(num), "%zu", i % 10);
		pos[2] = num[0];
		(void)nl;
	}
	snprintf(out + off, cap - off, "%s", end);
	free(one);
	return out;
}

static void add_case(struct bad_case *c, size_t *n, const char *what, enum target target,
		     char *input, int err)
{
	c[*n] = (struct bad_case){.what = what, .target = target, .input = input,
				  .len = strlen(input), .now = TU_NOW, .err = err};
	(*n)++;
}

static void test_bad_table(void **state)
{
	struct fx *f = *state;
	struct bad_case c[64];
	size_t n = 0;
	char *good = manifest_env("llm", 10, TU_NOW + 30 * TU_DAY, f->rel);
	size_t good_len = strlen(good);

	/* -- manifests -- */
	char *trunc = strndup(good, good_len / 2);
	add_case(c, &n, "truncated envelope", MANIFEST, trunc, -FL_EINVAL_JSON);
	add_case(c, &n, "bit-flipped payload", MANIFEST, flip_payload(good, 20), -FL_EBADSIG);
	add_case(c, &n, "bit-flipped signature", MANIFEST, flip_sig(good, 10), -FL_EBADSIG);
	add_case(c, &n, "signature bit in DER header", MANIFEST, flip_sig(good, 0), -FL_EBADSIG);
	char *huge = malloc(OTA_DSSE_MAX_BYTES + 2);
	memset(huge, ' ', OTA_DSSE_MAX_BYTES + 1);
	huge[OTA_DSSE_MAX_BYTES + 1] = 0;
	add_case(c, &n, "oversized envelope", MANIFEST, huge, -FL_ETOOBIG);
	add_case(c, &n, "unknown key", MANIFEST,
		 manifest_env("llm", 10, TU_NOW + TU_DAY, f->stranger), -FL_EKEYUNKNOWN);
	add_case(c, &n, "root key is not a release key", MANIFEST,
		 manifest_env("llm", 10, TU_NOW + TU_DAY, f->root[0]), -FL_EKEYUNKNOWN);
	add_case(c, &n, "key not delegated for model", MANIFEST,
		 manifest_env("llm", 10, TU_NOW + TU_DAY, f->rel_other), -FL_ENOTDELEGATED);
	add_case(c, &n, "expired manifest", MANIFEST, manifest_env("llm", 10, TU_NOW, f->rel),
		 -FL_EEXPIRED);
	add_case(c, &n, "expired release key", MANIFEST,
		 manifest_env("llm", 10, TU_NOW + TU_DAY, f->rel_expired), -FL_EKEYEXPIRED);
	add_case(c, &n, "revoked release key", MANIFEST,
		 manifest_env("llm", 10, TU_NOW + TU_DAY, f->rel_revoked), -FL_EKEYREVOKED);
	add_case(c, &n, "replayed lower sequence", MANIFEST, strdup(good), -FL_EREPLAY);
	c[n - 1].min_sequence = 11;
	add_case(c, &n, "keyring expired", MANIFEST, strdup(good), -FL_EKEYRINGEXPIRED);
	c[n - 1].now = TU_NOW + YEAR;
	add_case(c, &n, "malformed JSON payload", MANIFEST,
		 signed_text(OTA_PAYLOAD_TYPE_MANIFEST, "{\"name\":", f->rel), -FL_EINVAL_JSON);
	char *p = manifest_with("\"sequence\":20", "\"sequence\":1e300");
	add_case(c, &n, "sequence 1e300", MANIFEST, signed_text(OTA_PAYLOAD_TYPE_MANIFEST, p, f->rel),
		 -FL_ERANGE);
	free(p);
	p = manifest_with("\"size\":10", "\"size\":-10");
	add_case(c, &n, "negative size", MANIFEST, signed_text(OTA_PAYLOAD_TYPE_MANIFEST, p, f->rel),
		 -FL_ERANGE);
	free(p);
	p = manifest_with("\"path\":\"model.gguf\"", "\"path\":\"../../etc/shadow\"");
	add_case(c, &n, "path traversal", MANIFEST, signed_text(OTA_PAYLOAD_TYPE_MANIFEST, p, f->rel),
		 -FL_EPATH);
	free(p);
	p = many_files_manifest(OTA_MANIFEST_MAX_FILES + 1);
	add_case(c, &n, "huge file array", MANIFEST, signed_text(OTA_PAYLOAD_TYPE_MANIFEST, p, f->rel),
		 -FL_ETOOBIG);
	free(p);
	add_case(c, &n, "wrong payload type", MANIFEST, strdup(f->kr2), -FL_EPAYLOADTYPE);
	p = manifest_payload("llm", 10, TU_NOW - TU_DAY, TU_NOW + TU_DAY);
	add_case(c, &n, "no signature", MANIFEST, tu_envelope(OTA_PAYLOAD_TYPE_MANIFEST, p, NULL, 0),
		 -FL_ENOSIG);
	free(p);

	/* -- keyrings -- */
	add_case(c, &n, "older keyring", KEYRING, keyring_env(f, 1, TU_NOW + YEAR, 2, f->root, 2),
		 -FL_EKEYRINGOLD);
	add_case(c, &n, "same version, other content", KEYRING,
		 keyring_env(f, 2, TU_NOW + 2 * YEAR, 2, f->root, 2), -FL_EKEYRINGOLD);
	add_case(c, &n, "below threshold", KEYRING, keyring_env(f, 3, TU_NOW + YEAR, 2, f->root, 1),
		 -FL_ETHRESHOLD);
	char *one = keyring_env(f, 3, TU_NOW + YEAR, 2, f->root, 1);
	add_case(c, &n, "same root twice counts once", KEYRING, double_sigs(one), -FL_ETHRESHOLD);
	free(one);
	struct ota_key *r13[] = {f->root[0], f->root[2]};
	add_case(c, &n, "revoked root does not count", KEYRING,
		 keyring_env(f, 3, TU_NOW + YEAR, 2, r13, 2), -FL_ETHRESHOLD);
	struct ota_key *strangers[] = {f->stranger, f->rel};
	add_case(c, &n, "signed by non-roots", KEYRING,
		 keyring_env(f, 3, TU_NOW + YEAR, 2, strangers, 2), -FL_ETHRESHOLD);
	add_case(c, &n, "unsigned keyring", KEYRING, keyring_env(f, 3, TU_NOW + YEAR, 2, NULL, 0),
		 -FL_ENOSIG);
	add_case(c, &n, "expired new keyring", KEYRING, keyring_env(f, 3, TU_NOW, 2, f->root, 2),
		 -FL_EKEYRINGEXPIRED);
	add_case(c, &n, "manifest as keyring", KEYRING, strdup(good), -FL_EPAYLOADTYPE);
	add_case(c, &n, "truncated keyring", KEYRING, strndup(f->kr2, strlen(f->kr2) - 3),
		 -FL_EINVAL_JSON);
	char *k3 = keyring_env(f, 3, TU_NOW + YEAR, 2, f->root, 2);
	add_case(c, &n, "bit-flipped keyring payload", KEYRING, flip_payload(k3, 12),
		 -FL_ETHRESHOLD);
	add_case(c, &n, "bit-flipped keyring signature", KEYRING, flip_sig(k3, 20),
		 -FL_ETHRESHOLD);
	free(k3);
	add_case(c, &n, "oversized keyring", KEYRING, strdup(huge), -FL_ETOOBIG);
	add_case(c, &n, "malformed keyring JSON", KEYRING,
		 tu_envelope(OTA_PAYLOAD_TYPE_KEYRING, "{\"version\":", f->root, 2), -FL_EINVAL_JSON);
	add_case(c, &n, "keyring version 1e300", KEYRING,
		 tu_envelope(OTA_PAYLOAD_TYPE_KEYRING,
			     "{\"version\":1e300,\"expires\":\"2030-01-01T00:00:00Z\",\"threshold\":1,"
			     "\"keys\":[]}",
			     f->root, 2),
		 -FL_ERANGE);
	add_case(c, &n, "unreachable threshold", KEYRING,
		 keyring_env(f, 3, TU_NOW + YEAR, 3, f->root, 2), -FL_ETHRESHOLD);
	struct ota_key *newroots[] = {f->stranger, f->rel_any};
	char *rot = keyring_payload(f, 3, TU_NOW + YEAR, 2, newroots, 2);
	add_case(c, &n, "rotation not signed by new roots", KEYRING,
		 tu_envelope(OTA_PAYLOAD_TYPE_KEYRING, rot, f->root, 2), -FL_ETHRESHOLD);
	free(rot);
	assert_true(n <= FL_ARRAY_SIZE(c));

	size_t before_len;
	char *before = tu_read(f->keyring_path, &before_len);
	for (size_t i = 0; i < n; i++) {
		int r;
		if (c[i].target == MANIFEST) {
			struct ota_manifest *m = NULL;
			r = ota_trust_verify_manifest(f->t, c[i].input, c[i].len, c[i].now,
						      c[i].min_sequence, &m);
			assert_null(m);
		} else {
			r = ota_trust_install_keyring(f->t, c[i].input, c[i].len, c[i].now);
		}
		if (r != c[i].err)
			fail_msg("%s: got %d (%s), want %s", c[i].what, r, fl_strerror(r),
				 fl_strerror(c[i].err));
		/* No state changed: the installed keyring is the same, on disk
		 * and in memory. */
		size_t after_len;
		char *after = tu_read(f->keyring_path, &after_len);
		assert_int_equal(after_len, before_len);
		assert_memory_equal(after, before, before_len);
		free(after);
		assert_int_equal(ota_trust_keyring(f->t)->version, 2);
		free(c[i].input);
	}
	/* And the good manifest still verifies afterwards. */
	assert_int_equal(ota_trust_verify_manifest(f->t, good, good_len, TU_NOW, 0, NULL), 0);
	free(before);
	free(good);
}

/* ---- recovery, rotation, persistence ------------------------------------- */

static void test_expired_keyring_recovery(void **state)
{
	struct fx *f = *state;
	int64_t later = TU_NOW + 2 * YEAR; /* installed keyring long expired */
	char *m = manifest_env("llm", 10, later + YEAR, f->rel_any);
	assert_int_equal(ota_trust_verify_manifest(f->t, m, strlen(m), later, 0, NULL),
			 -FL_EKEYRINGEXPIRED);
	/* A newer keyring signed by the roots is accepted although the
	 * installed one expired; the device can update again. */
	char *k3 = keyring_env(f, 3, later + YEAR, 2, f->root, 2);
	assert_int_equal(ota_trust_install_keyring(f->t, k3, strlen(k3), later), 1);
	assert_int_equal(ota_trust_keyring(f->t)->version, 3);
	assert_int_equal(ota_trust_verify_manifest(f->t, m, strlen(m), later, 0, NULL), 0);
	/* An expired keyring on disk still loads (expiry is not checked at open). */
	struct ota_trust *t2 = NULL;
	assert_int_equal(ota_trust_open(f->roots_dir, f->keyring_path, 0, &t2), 0);
	assert_int_equal(ota_trust_keyring(t2)->version, 3);
	ota_trust_free(t2);
	free(k3);
	free(m);
}

static void test_root_rotation(void **state)
{
	struct fx *f = *state;
	struct ota_key *n1 = tu_key(), *n2 = tu_key();
	struct ota_key *newroots[] = {n1, n2};
	char *payload = keyring_payload(f, 3, TU_NOW + YEAR, 2, newroots, 2);
	/* Signed by the current roots (threshold 2) and by both new roots. */
	struct ota_key *signers[] = {f->root[0], f->root[1], n1, n2};
	char *k3 = tu_envelope(OTA_PAYLOAD_TYPE_KEYRING, payload, signers, 4);
	assert_int_equal(ota_trust_install_keyring(f->t, k3, strlen(k3), TU_NOW), 1);
	assert_int_equal(ota_trust_n_roots(f->t), 2);
	free(payload);

	/* From now on only the new roots sign keyrings. */
	payload = keyring_payload(f, 4, TU_NOW + YEAR, 2, newroots, 2);
	char *old_signed = tu_envelope(OTA_PAYLOAD_TYPE_KEYRING, payload, f->root, 2);
	assert_int_equal(ota_trust_install_keyring(f->t, old_signed, strlen(old_signed), TU_NOW),
			 -FL_ETHRESHOLD);
	char *new_signed = tu_envelope(OTA_PAYLOAD_TYPE_KEYRING, payload, newroots, 2);
	assert_int_equal(ota_trust_install_keyring(f->t, new_signed, strlen(new_signed), TU_NOW), 1);
	assert_int_equal(ota_trust_keyring(f->t)->version, 4);

	/* The rotated keyring reloads from disk (self-signed by its roots). */
	struct ota_trust *t2 = NULL;
	assert_int_equal(ota_trust_open(f->roots_dir, f->keyring_path, 0, &t2), 0);
	assert_int_equal(ota_trust_keyring(t2)->version, 4);
	char *m = manifest_env("llm", 1, TU_NOW + TU_DAY, f->rel);
	assert_int_equal(ota_trust_verify_manifest(t2, m, strlen(m), TU_NOW, 0, NULL), 0);
	ota_trust_free(t2);
	free(m);
	free(payload);
	free(old_signed);
	free(new_signed);
	free(k3);
	ota_key_free(n1);
	ota_key_free(n2);
}

/* A keyring that revokes one of the roots that signed it still reloads. */
static void test_revoke_signing_root(void **state)
{
	struct fx *f = *state;
	struct ota_keyring *kr = NULL;
	assert_int_equal(ota_keyring_new(3, TU_NOW + YEAR, 2, &kr), 0);
	const char *any[] = {"*"};
	assert_int_equal(ota_keyring_add_key(kr, f->rel_any, any, 1, TU_NOW + YEAR), 0);
	assert_int_equal(ota_keyring_revoke(kr, ota_key_id(f->root[1])), 0);
	char *payload = NULL;
	assert_int_equal(ota_keyring_to_json(kr, &payload, NULL), 0);
	ota_keyring_free(kr);
	char *k3 = tu_envelope(OTA_PAYLOAD_TYPE_KEYRING, payload, f->root, 2);
	assert_int_equal(ota_trust_install_keyring(f->t, k3, strlen(k3), TU_NOW), 1);
	/* root2 is out, root3 (revoked only by v2) is back. */
	assert_int_equal(ota_trust_n_roots(f->t), 2);
	struct ota_trust *t2 = NULL;
	assert_int_equal(ota_trust_open(f->roots_dir, f->keyring_path, 0, &t2), 0);
	assert_int_equal(ota_trust_keyring(t2)->version, 3);
	/* The next keyring needs root1 + root3; root2's signature is worthless. */
	char *k4 = keyring_env(f, 4, TU_NOW + YEAR, 2, f->root, 2);
	assert_int_equal(ota_trust_install_keyring(t2, k4, strlen(k4), TU_NOW), -FL_ETHRESHOLD);
	struct ota_key *r13[] = {f->root[0], f->root[2]};
	char *k4b = keyring_env(f, 4, TU_NOW + YEAR, 2, r13, 2);
	assert_int_equal(ota_trust_install_keyring(t2, k4b, strlen(k4b), TU_NOW), 1);
	ota_trust_free(t2);
	free(k4);
	free(k4b);
	free(k3);
	free(payload);
}

static void test_write_failure_changes_nothing(void **state)
{
	struct fx *f = *state;
	char *k3 = keyring_env(f, 3, TU_NOW + YEAR, 2, f->root, 2);
	setenv("FLOTILLA_FAILPOINTS", "fs.atomic.before_rename=fail", 1);
	fl_failpoint_reload();
	int r = ota_trust_install_keyring(f->t, k3, strlen(k3), TU_NOW);
	unsetenv("FLOTILLA_FAILPOINTS");
	fl_failpoint_reload();
	assert_true(r < 0);
	assert_int_equal(ota_trust_keyring(f->t)->version, 2);
	char *disk = tu_read(f->keyring_path, NULL);
	assert_string_equal(disk, f->kr2);
	free(disk);
	assert_int_equal(ota_trust_install_keyring(f->t, k3, strlen(k3), TU_NOW), 1);
	free(k3);
}

static void test_open_errors(void **state)
{
	struct fx *f = *state;
	struct ota_trust *t = NULL;
	char *missing = tu_path(f->dir, "nope");
	assert_int_equal(ota_trust_open(missing, NULL, 1, &t), -ENOENT);
	char *empty = tu_path(f->dir, "empty");
	assert_int_equal(fl_mkdir_p(empty, 0755), 0);
	assert_int_equal(ota_trust_open(empty, NULL, 1, &t), -FL_EMISSING);
	assert_int_equal(ota_trust_open(f->roots_dir, NULL, 4, &t), -FL_ETHRESHOLD);
	assert_int_equal(ota_trust_open(f->roots_dir, NULL, 17, &t), -EINVAL);

	char *thr = tu_path(f->roots_dir, "threshold");
	tu_write(thr, "two");
	assert_int_equal(ota_trust_open(f->roots_dir, NULL, 0, &t), -FL_ECONFIG);
	tu_write(thr, "5");
	assert_int_equal(ota_trust_open(f->roots_dir, NULL, 0, &t), -FL_ETHRESHOLD);
	unlink(thr);
	assert_int_equal(ota_trust_open(f->roots_dir, NULL, 0, &t), 0); /* default 1 */
	assert_int_equal(ota_trust_threshold(t), 1);
	ota_trust_free(t);
	t = NULL;

	/* A bad key file among the roots. */
	char *bad = tu_path(empty, "bad.pem");
	tu_write(bad, "not a key");
	assert_int_equal(ota_trust_open(empty, NULL, 1, &t), -FL_EKEY);
	/* The same key twice counts once. */
	char *a = tu_path(empty, "a.pem"), *b = tu_path(empty, "b.pem");
	unlink(bad);
	assert_int_equal(ota_key_save_public(f->root[0], a), 0);
	assert_int_equal(ota_key_save_public(f->root[0], b), 0);
	assert_int_equal(ota_trust_open(empty, NULL, 2, &t), -FL_ETHRESHOLD);
	assert_int_equal(ota_trust_open(empty, NULL, 1, &t), 0);
	assert_int_equal(ota_trust_n_roots(t), 1);
	ota_trust_free(t);
	t = NULL;

	/* A corrupt or foreign installed keyring fails the open. */
	char *kp = tu_path(f->dir, "corrupt.dsse.json");
	tu_write(kp, "{garbage");
	assert_int_equal(ota_trust_open(f->roots_dir, kp, 2, &t), -FL_EINVAL_JSON);
	struct ota_key *strangers[] = {f->stranger, f->rel};
	char *foreign = keyring_env(f, 9, TU_NOW + YEAR, 2, strangers, 2);
	tu_write(kp, foreign);
	assert_int_equal(ota_trust_open(f->roots_dir, kp, 2, &t), -FL_ETHRESHOLD);
	assert_null(t);
	free(foreign);
	free(kp);
	free(a);
	free(b);
	free(bad);
	free(thr);
	free(missing);
	free(empty);
}

static void test_memory_store(void **state)
{
	struct fx *f = *state;
	struct ota_trust *t = NULL;
	assert_int_equal(ota_trust_new(0, &t), -EINVAL);
	assert_int_equal(ota_trust_new(2, &t), 0);
	char *m = manifest_env("llm", 1, TU_NOW + TU_DAY, f->rel);
	assert_int_equal(ota_trust_verify_manifest(t, m, strlen(m), TU_NOW, 0, NULL),
			 -FL_EKEYUNKNOWN); /* no keyring yet */
	assert_int_equal(ota_trust_add_root(t, f->root[0]), 0);
	assert_int_equal(ota_trust_add_root(t, f->root[0]), -FL_EDUP);
	assert_int_equal(ota_trust_install_keyring(t, f->kr2, strlen(f->kr2), TU_NOW),
			 -FL_ETHRESHOLD);
	assert_int_equal(ota_trust_add_root(t, f->root[1]), 0);
	assert_int_equal(ota_trust_install_keyring(t, f->kr2, strlen(f->kr2), TU_NOW), 1);
	assert_int_equal(ota_trust_verify_manifest(t, m, strlen(m), TU_NOW, 0, NULL), 0);
	ota_trust_free(t);
	ota_trust_free(NULL);
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_install_and_verify, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_table, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expired_keyring_recovery, setup, teardown),
		cmocka_unit_test_setup_teardown(test_root_rotation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_revoke_signing_root, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_failure_changes_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_memory_store, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
