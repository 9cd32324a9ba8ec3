/* Device trust store: roots, threshold, installed keyring (see trust.h). */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/trust.h>
#include <flotilla/util.h>

#define THRESHOLD_FILE_MAX 64

struct ota_trust {
	struct ota_key *roots[OTA_TRUST_MAX_ROOTS]; /* the device's configured roots */
	size_t n_roots;
	unsigned threshold; /* the device's configured threshold */
	char *keyring_path; /* NULL: memory only */
	struct ota_keyring *kr; /* installed keyring or NULL */
	uint8_t *kr_payload;    /* its payload bytes, to recognise a re-send */
	size_t kr_payload_len;
};

FL_DEFINE_CLEANUP(struct ota_dsse, ota_dsse_free)
FL_DEFINE_CLEANUP(struct ota_keyring, ota_keyring_free)
FL_DEFINE_CLEANUP(struct ota_manifest, ota_manifest_free)

void ota_trust_free(struct ota_trust *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n_roots; i++)
		ota_key_free(t->roots[i]);
	free(t->keyring_path);
	ota_keyring_free(t->kr);
	free(t->kr_payload);
	free(t);
}

FL_DEFINE_CLEANUP(struct ota_trust, ota_trust_free)

static bool has_device_root(const struct ota_trust *t, const char *keyid)
{
	for (size_t i = 0; i < t->n_roots; i++)
		if (!strcmp(ota_key_id(t->roots[i]), keyid))
			return true;
	return false;
}

/* Takes ownership of KEY on success. */
static int add_root_owned(struct ota_trust *t, struct ota_key *key)
{
	if (has_device_root(t, ota_key_id(key)))
		return -FL_EDUP;
	if (t->n_roots >= OTA_TRUST_MAX_ROOTS)
		return -FL_ETOOBIG;
	t->roots[t->n_roots++] = key;
	return 0;
}

int ota_trust_add_root(struct ota_trust *t, const struct ota_key *root)
{
	uint8_t *der;
	size_t len;
	int r = ota_key_public_der(root, &der, &len);
	if (r < 0)
		return r;
	struct ota_key *copy;
	r = ota_key_parse_public(der, len, &copy);
	free(der);
	if (r < 0)
		return r;
	r = add_root_owned(t, copy);
	if (r < 0)
		ota_key_free(copy);
	return r;
}

int ota_trust_new(unsigned threshold, struct ota_trust **ret)
{
	if (threshold < 1 || threshold > OTA_TRUST_MAX_ROOTS)
		return -EINVAL;
	struct ota_trust *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->threshold = threshold;
	*ret = t;
	return 0;
}

/* The keys that sign the next keyring and how many of them must. Roots the
 * installed keyring revokes do not count. KEYS holds OTA_TRUST_MAX_ROOTS. */
static size_t signing_roots(const struct ota_trust *t, struct ota_key **keys, unsigned *ret_thr)
{
	size_t n = 0;
	if (t->kr && t->kr->n_roots) {
		for (size_t i = 0; i < t->kr->n_roots && n < OTA_TRUST_MAX_ROOTS; i++)
			if (!ota_keyring_is_revoked(t->kr, t->kr->roots[i].keyid))
				keys[n++] = t->kr->roots[i].key;
		*ret_thr = t->kr->threshold;
		return n;
	}
	for (size_t i = 0; i < t->n_roots; i++)
		if (!t->kr || !ota_keyring_is_revoked(t->kr, ota_key_id(t->roots[i])))
			keys[n++] = t->roots[i];
	*ret_thr = t->threshold;
	if (t->kr && t->kr->threshold > *ret_thr)
		*ret_thr = t->kr->threshold;
	return n;
}

size_t ota_trust_n_roots(const struct ota_trust *t)
{
	struct ota_key *keys[OTA_TRUST_MAX_ROOTS];
	unsigned thr;
	return signing_roots(t, keys, &thr);
}

unsigned ota_trust_threshold(const struct ota_trust *t)
{
	struct ota_key *keys[OTA_TRUST_MAX_ROOTS];
	unsigned thr;
	signing_roots(t, keys, &thr);
	return thr;
}

const struct ota_keyring *ota_trust_keyring(const struct ota_trust *t)
{
	return t->kr;
}

/* A keyring that lists roots must carry THRESHOLD valid signatures of its
 * own (unrevoked) roots: proof that the new root holders have their keys. */
static int verify_self_signed(const struct ota_dsse *env, const struct ota_keyring *kr)
{
	struct ota_key *keys[OTA_KEYRING_MAX_ROOTS];
	size_t n = 0;
	for (size_t i = 0; i < kr->n_roots; i++)
		if (!ota_keyring_is_revoked(kr, kr->roots[i].keyid))
			keys[n++] = kr->roots[i].key;
	int r = ota_dsse_verify_threshold(env, keys, n, kr->threshold);
	return r < 0 ? r : 0;
}

static int parse_keyring_envelope(const char *envelope, size_t len, struct ota_dsse **ret_env)
{
	if (len > OTA_DSSE_MAX_BYTES)
		return -FL_ETOOBIG;
	struct ota_dsse *env;
	int r = ota_dsse_parse(envelope, len, &env);
	if (r < 0)
		return r;
	if (strcmp(env->payload_type, OTA_PAYLOAD_TYPE_KEYRING) != 0) {
		ota_dsse_free(env);
		return -FL_EPAYLOADTYPE;
	}
	*ret_env = env;
	return 0;
}

int ota_trust_install_keyring(struct ota_trust *t, const char *envelope, size_t len, int64_t now)
{
	_cleanup_(ota_dsse_freep) struct ota_dsse *env = NULL;
	int r = parse_keyring_envelope(envelope, len, &env);
	if (r < 0)
		return r;

	struct ota_key *keys[OTA_TRUST_MAX_ROOTS];
	unsigned thr;
	size_t n = signing_roots(t, keys, &thr);
	r = ota_dsse_verify_threshold(env, keys, n, thr);
	if (r < 0)
		return r;

	_cleanup_(ota_keyring_freep) struct ota_keyring *kr = NULL;
	r = ota_keyring_parse((const char *)env->payload, env->payload_len, &kr);
	if (r < 0)
		return r;

	if (t->kr) {
		if (kr->version < t->kr->version)
			return -FL_EKEYRINGOLD;
		if (kr->version == t->kr->version) {
			if (env->payload_len == t->kr_payload_len &&
			    !memcmp(env->payload, t->kr_payload, env->payload_len))
				return 0;
			return -FL_EKEYRINGOLD;
		}
	}
	if (now >= kr->expires_s)
		return -FL_EKEYRINGEXPIRED;

	if (kr->n_roots) {
		r = verify_self_signed(env, kr);
		if (r < 0)
			return r;
	} else {
		/* Without roots the device's roots sign the next keyring; a
		 * threshold they cannot reach would lock keyrings forever. */
		size_t usable = 0;
		for (size_t i = 0; i < t->n_roots; i++)
			if (!ota_keyring_is_revoked(kr, ota_key_id(t->roots[i])))
				usable++;
		unsigned need = kr->threshold > t->threshold ? kr->threshold : t->threshold;
		if (need > usable)
			return -FL_ETHRESHOLD;
	}

	uint8_t *payload = malloc(env->payload_len + 1);
	if (!payload)
		return -ENOMEM;
	memcpy(payload, env->payload, env->payload_len + 1);
	if (t->keyring_path) {
		r = fl_write_file_atomic(t->keyring_path, envelope, len, 0644);
		if (r < 0) {
			free(payload);
			return r;
		}
	}
	ota_keyring_free(t->kr);
	free(t->kr_payload);
	t->kr = fl_steal_ptr(kr);
	t->kr_payload = payload;
	t->kr_payload_len = env->payload_len;
	return 1;
}

/* At open, the installed keyring must verify with the device's roots or,
 * when it lists roots (a rotation, which install required to be self-signed
 * by its new roots), with its own roots. Expiry is not checked here. */
static int load_installed(struct ota_trust *t)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = fl_read_file(t->keyring_path, OTA_DSSE_MAX_BYTES, &data, &len);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	_cleanup_(ota_dsse_freep) struct ota_dsse *env = NULL;
	r = parse_keyring_envelope(data, len, &env);
	if (r < 0)
		return r;
	_cleanup_(ota_keyring_freep) struct ota_keyring *kr = NULL;
	r = ota_keyring_parse((const char *)env->payload, env->payload_len, &kr);
	if (r < 0)
		return r;
	if (kr->n_roots) {
		r = verify_self_signed(env, kr);
	} else {
		/* All device roots: the keyring's own revocations applied only
		 * after it was installed (its signers were judged by the keyring
		 * before it, which is gone). */
		r = ota_dsse_verify_threshold(env, t->roots, t->n_roots, t->threshold);
	}
	if (r < 0)
		return r;
	t->kr_payload = malloc(env->payload_len + 1);
	if (!t->kr_payload)
		return -ENOMEM;
	memcpy(t->kr_payload, env->payload, env->payload_len + 1);
	t->kr_payload_len = env->payload_len;
	t->kr = fl_steal_ptr(kr);
	return 0;
}

static bool has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n > m && !strcmp(s + n - m, suffix);
}

static int load_roots_dir(struct ota_trust *t, const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	int r = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || !has_suffix(de->d_name, ".pem"))
			continue;
		_cleanup_free_ char *path = fl_path_join(dir, de->d_name);
		if (!path) {
			r = -ENOMEM;
			break;
		}
		struct stat st;
		if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
			continue;
		struct ota_key *key;
		r = ota_key_load_public(path, &key);
		if (r < 0)
			break;
		r = add_root_owned(t, key);
		if (r == -FL_EDUP) {
			ota_key_free(key); /* the same key in two files counts once */
			r = 0;
			continue;
		}
		if (r < 0) {
			ota_key_free(key);
			break;
		}
	}
	closedir(d);
	if (r < 0)
		return r;
	return t->n_roots ? 0 : -FL_EMISSING;
}

static int read_threshold(const char *dir, unsigned *ret)
{
	_cleanup_free_ char *path = fl_path_join(dir, OTA_TRUST_THRESHOLD_FILE);
	if (!path)
		return -ENOMEM;
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = fl_read_file(path, THRESHOLD_FILE_MAX, &data, &len);
	if (r == -ENOENT) {
		*ret = 1;
		return 0;
	}
	if (r < 0)
		return r;
	while (len && (data[len - 1] == '\n' || data[len - 1] == ' ' || data[len - 1] == '\r'))
		data[--len] = 0;
	int64_t v;
	if (fl_parse_i64(data, 1, OTA_TRUST_MAX_ROOTS, &v) < 0)
		return -FL_ECONFIG;
	*ret = (unsigned)v;
	return 0;
}

int ota_trust_open(const char *roots_dir, const char *keyring_path, unsigned threshold,
		   struct ota_trust **ret)
{
	if (threshold > OTA_TRUST_MAX_ROOTS)
		return -EINVAL;
	_cleanup_(ota_trust_freep) struct ota_trust *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	int r = load_roots_dir(t, roots_dir);
	if (r < 0)
		return r;
	if (threshold == 0 && (r = read_threshold(roots_dir, &threshold)) < 0)
		return r;
	if (threshold > t->n_roots)
		return -FL_ETHRESHOLD;
	t->threshold = threshold;
	if (keyring_path) {
		t->keyring_path = strdup(keyring_path);
		if (!t->keyring_path)
			return -ENOMEM;
		if ((r = load_installed(t)) < 0)
			return r;
	}
	*ret = fl_steal_ptr(t);
	return 0;
}

/* Error ranks when no signature is good: the most specific reason wins. */
static int rank(int err)
{
	switch (err) {
	case -FL_EKEYREVOKED:
		return 4;
	case -FL_EKEYEXPIRED:
		return 3;
	case -FL_EBADSIG:
		return 2;
	default:
		return 1;
	}
}

int ota_trust_verify_manifest(struct ota_trust *t, const char *envelope, size_t len, int64_t now,
			      uint64_t min_sequence, struct ota_manifest **ret)
{
	if (len > OTA_DSSE_MAX_BYTES)
		return -FL_ETOOBIG;
	_cleanup_(ota_dsse_freep) struct ota_dsse *env = NULL;
	int r = ota_dsse_parse(envelope, len, &env);
	if (r < 0)
		return r;
	if (strcmp(env->payload_type, OTA_PAYLOAD_TYPE_MANIFEST) != 0)
		return -FL_EPAYLOADTYPE;
	if (!t->kr)
		return -FL_EKEYUNKNOWN;
	if (now >= t->kr->expires_s)
		return -FL_EKEYRINGEXPIRED;
	if (env->n_sigs == 0)
		return -FL_ENOSIG;

	const struct ota_keyring_key *good[OTA_DSSE_MAX_SIGS];
	size_t n_good = 0;
	int worst = -FL_EKEYUNKNOWN;
	for (size_t i = 0; i < env->n_sigs; i++) {
		const char *keyid = env->sigs[i].keyid;
		const struct ota_keyring_key *k = ota_keyring_find_key(t->kr, keyid);
		int e;
		if (ota_keyring_is_revoked(t->kr, keyid))
			e = -FL_EKEYREVOKED;
		else if (!k)
			e = -FL_EKEYUNKNOWN;
		else if (now >= k->expires_s)
			e = -FL_EKEYEXPIRED;
		else
			e = ota_dsse_verify_sig(env, i, k->key);
		if (e == 0)
			good[n_good++] = k;
		else if (rank(e) > rank(worst))
			worst = e;
	}
	if (n_good == 0)
		return worst;

	_cleanup_(ota_manifest_freep) struct ota_manifest *m = NULL;
	r = ota_manifest_parse((const char *)env->payload, env->payload_len, &m);
	if (r < 0)
		return r;
	bool delegated = false;
	for (size_t i = 0; i < n_good && !delegated; i++)
		delegated = ota_keyring_key_allows(good[i], m->name);
	if (!delegated)
		return -FL_ENOTDELEGATED;
	if ((r = ota_manifest_check_time(m, now)) < 0)
		return r;
	if (m->sequence < min_sequence)
		return -FL_EREPLAY;
	if (ret)
		*ret = fl_steal_ptr(m);
	return 0;
}

int ota_manifest_sign(const struct ota_manifest *m, const struct ota_key *key, char **ret,
		      size_t *ret_len)
{
	_cleanup_free_ char *json = NULL;
	size_t len;
	int r = ota_manifest_to_json(m, &json, &len);
	if (r < 0)
		return r;
	_cleanup_(ota_dsse_freep) struct ota_dsse *env = NULL;
	if ((r = ota_dsse_new(OTA_PAYLOAD_TYPE_MANIFEST, json, len, &env)) < 0 ||
	    (r = ota_dsse_sign(env, key)) < 0)
		return r;
	return ota_dsse_to_json(env, ret, ret_len);
}
