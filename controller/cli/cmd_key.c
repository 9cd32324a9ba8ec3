/* flotilla key / flotilla keyring: release and root keys, and the
 * root-signed keyring that delegates release keys (docs/security.md). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include <flotilla/cleanup.h>
#include <flotilla/crypto.h>
#include <flotilla/dsse.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/keyring.h>
#include <flotilla/trust.h>
#include <flotilla/util.h>

#define MAX_DAYS (100LL * 366)
#define MAX_KEY_ARGS OTA_KEYRING_MAX_KEYS

static inline void key_freep(struct ota_key **k) { ota_key_free(*k); }
static inline void keyring_freep(struct ota_keyring **k) { ota_keyring_free(*k); }
static inline void dsse_freep(struct ota_dsse **e) { ota_dsse_free(*e); }
static inline void trust_freep(struct ota_trust **t) { ota_trust_free(*t); }

/* ---- flotilla key -------------------------------------------------------- */

static void key_usage(FILE *f)
{
	fputs("usage: flotilla key generate OUT.pem [--public OUT.pub.pem] [--force]\n"
	      "       flotilla key id KEY.pem\n"
	      "\n"
	      "  generate   make an ECDSA P-256 key pair: OUT.pem (private, mode 0600) and its\n"
	      "             public half (default: OUT.pem with .pem replaced by .pub.pem);\n"
	      "             prints the keyid (hex SHA-256 of the public key)\n"
	      "  id         print the keyid of a private or public key file\n",
	      f);
}

static char *default_pub_path(const char *priv)
{
	size_t n = strlen(priv);
	if (n > 4 && !strcmp(priv + n - 4, ".pem"))
		return fl_asprintf("%.*s.pub.pem", (int)(n - 4), priv);
	return fl_asprintf("%s.pub.pem", priv);
}

static int key_generate(int argc, char **argv)
{
	static const struct option opts[] = {{"public", required_argument, NULL, 'p'},
					     {"force", no_argument, NULL, 'f'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	const char *pub_arg = NULL;
	bool force = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "p:fh", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			pub_arg = optarg;
			break;
		case 'f':
			force = true;
			break;
		case 'h':
			key_usage(stdout);
			return 0;
		default:
			key_usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		key_usage(stderr);
		return 2;
	}
	const char *out = argv[optind];
	_cleanup_free_ char *pub = pub_arg ? strdup(pub_arg) : default_pub_path(out);
	if (!pub) {
		cli_fail(-ENOMEM, "key generate");
		return 1;
	}
	if (!force && (access(out, F_OK) == 0 || access(pub, F_OK) == 0)) {
		cli_fail(-EEXIST, "key generate: %s or %s exists (use --force to replace)", out,
			 pub);
		return 1;
	}
	_cleanup_(key_freep) struct ota_key *key = NULL;
	int r = ota_key_generate(&key);
	if (r < 0) {
		cli_fail(r, "key generate");
		return 1;
	}
	r = ota_key_save_private(key, out);
	if (r < 0) {
		cli_fail(r, "key generate: writing %s", out);
		return 1;
	}
	r = ota_key_save_public(key, pub);
	if (r < 0) {
		cli_fail(r, "key generate: writing %s", pub);
		return 1;
	}
	printf("%s\n", ota_key_id(key));
	return 0;
}

static int key_id(int argc, char **argv)
{
	if (argc != 2) {
		key_usage(stderr);
		return 2;
	}
	_cleanup_(key_freep) struct ota_key *key = NULL;
	int r = ota_key_load_public(argv[1], &key);
	if (r < 0) {
		cli_fail(r, "key id: %s", argv[1]);
		return 1;
	}
	printf("%s\n", ota_key_id(key));
	return 0;
}

int cli_key_main(int argc, char **argv)
{
	static const struct cli_cmd cmds[] = {{"generate", key_generate}, {"id", key_id}};
	return cli_dispatch("key", cmds, FL_ARRAY_SIZE(cmds), key_usage, argc, argv);
}

/* ---- flotilla keyring ---------------------------------------------------- */

static void keyring_usage(FILE *f)
{
	fputs("usage: flotilla keyring create --version N --expires-days D --threshold M\n"
	      "                  --key PUB.pem:MODEL[,MODEL...][:DAYS] [--key ...]\n"
	      "                  [--root PUB.pem ...] [--revoke KEYID|PUB.pem ...] -o keyring.json\n"
	      "       flotilla keyring sign keyring.json|keyring.dsse.json --key ROOT.pem\n"
	      "                  -o keyring.dsse.json\n"
	      "       flotilla keyring verify keyring.dsse.json --root ROOT.pub.pem [--root ...]\n"
	      "                  --threshold M [--at 2026-11-25T00:00:00Z]\n"
	      "\n"
	      "  create   write an unsigned keyring: release keys with the model names each may\n"
	      "           sign ('*' for any) and an expiry in DAYS (default: the keyring's);\n"
	      "           --root lists the roots that must sign the NEXT keyring (root\n"
	      "           rotation); --threshold is how many of them\n"
	      "  sign     add one root signature (root holders sign one after the other,\n"
	      "           offline); input is the unsigned keyring or a partly signed envelope\n"
	      "  verify   check an envelope as a device with these roots would (threshold,\n"
	      "           expiry, rotation rules) and print what it delegates\n",
	      f);
}

/* Parse a decimal in [MIN, MAX] or print a usage error. */
static bool num_arg(const char *what, const char *s, int64_t min, int64_t max, int64_t *ret)
{
	if (fl_parse_i64(s, min, max, ret) < 0) {
		fprintf(stderr, "flotilla: keyring: %s must be a number in %lld..%lld, not '%s'\n",
			what, (long long)min, (long long)max, s);
		return false;
	}
	return true;
}

/* "--key PUB.pem:m1,m2[:DAYS]" */
static int add_key_arg(struct ota_keyring *kr, const char *arg, int64_t default_expires,
		       int64_t now)
{
	_cleanup_free_ char *copy = strdup(arg);
	if (!copy)
		return -ENOMEM;
	char *models = strchr(copy, ':');
	if (!models || models == copy || !models[1]) {
		fprintf(stderr, "flotilla: keyring create: --key wants PUB.pem:MODEL[,MODEL...]"
				"[:DAYS], not '%s'\n",
			arg);
		return -EINVAL;
	}
	*models++ = 0;
	int64_t expires = default_expires;
	char *days = strchr(models, ':');
	if (days) {
		*days++ = 0;
		int64_t d;
		if (!num_arg("--key DAYS", days, 1, MAX_DAYS, &d))
			return -EINVAL;
		expires = now + d * 86400;
	}
	const char *list[OTA_KEYRING_MAX_MODELS];
	size_t n = 0;
	for (char *s = models; s;) {
		char *comma = strchr(s, ',');
		if (comma)
			*comma++ = 0;
		if (n == OTA_KEYRING_MAX_MODELS) {
			cli_fail(-FL_ETOOBIG, "keyring create: %s: too many models", arg);
			return -FL_ETOOBIG;
		}
		list[n++] = s;
		s = comma;
	}
	_cleanup_(key_freep) struct ota_key *key = NULL;
	int r = ota_key_load_public(copy, &key);
	if (r < 0) {
		cli_fail(r, "keyring create: %s", copy);
		return r;
	}
	r = ota_keyring_add_key(kr, key, list, n, expires);
	if (r < 0)
		cli_fail(r, "keyring create: --key %s%s", arg,
			 r == -EINVAL ? " (model names: [A-Za-z0-9._-] or '*')" : "");
	return r;
}

static int keyring_create(int argc, char **argv)
{
	static const struct option opts[] = {{"version", required_argument, NULL, 'V'},
					     {"expires-days", required_argument, NULL, 'e'},
					     {"threshold", required_argument, NULL, 't'},
					     {"key", required_argument, NULL, 'k'},
					     {"root", required_argument, NULL, 'r'},
					     {"revoke", required_argument, NULL, 'R'},
					     {"output", required_argument, NULL, 'o'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	int64_t version = 0, days = 0, threshold = 1;
	const char *out = NULL;
	const char *keys[MAX_KEY_ARGS], *roots[OTA_KEYRING_MAX_ROOTS];
	const char *revokes[OTA_KEYRING_MAX_REVOKED];
	size_t n_keys = 0, n_roots = 0, n_revokes = 0;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "V:e:t:k:r:R:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'V':
			if (!num_arg("--version", optarg, 1, OTA_MANIFEST_MAX_INT, &version))
				return 2;
			break;
		case 'e':
			if (!num_arg("--expires-days", optarg, 1, MAX_DAYS, &days))
				return 2;
			break;
		case 't':
			if (!num_arg("--threshold", optarg, 1, OTA_KEYRING_MAX_ROOTS, &threshold))
				return 2;
			break;
		case 'k':
			if (n_keys == MAX_KEY_ARGS) {
				cli_fail(-FL_ETOOBIG, "keyring create: too many --key");
				return 2;
			}
			keys[n_keys++] = optarg;
			break;
		case 'r':
			if (n_roots == OTA_KEYRING_MAX_ROOTS) {
				cli_fail(-FL_ETOOBIG, "keyring create: too many --root");
				return 2;
			}
			roots[n_roots++] = optarg;
			break;
		case 'R':
			if (n_revokes == OTA_KEYRING_MAX_REVOKED) {
				cli_fail(-FL_ETOOBIG, "keyring create: too many --revoke");
				return 2;
			}
			revokes[n_revokes++] = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case 'h':
			keyring_usage(stdout);
			return 0;
		default:
			keyring_usage(stderr);
			return 2;
		}
	}
	if (optind != argc || !version || !days || !out) {
		fprintf(stderr, "flotilla: keyring create: --version, --expires-days and -o are "
				"required\n");
		return 2;
	}
	if (n_roots && (size_t)threshold > n_roots) {
		fprintf(stderr, "flotilla: keyring create: --threshold %lld is more than the %zu "
				"--root keys\n",
			(long long)threshold, n_roots);
		return 2;
	}
	int64_t now = fl_now_s();
	int64_t expires = now + days * 86400;
	_cleanup_(keyring_freep) struct ota_keyring *kr = NULL;
	int r = ota_keyring_new((uint64_t)version, expires, (unsigned)threshold, &kr);
	if (r < 0) {
		cli_fail(r, "keyring create");
		return 1;
	}
	for (size_t i = 0; i < n_keys; i++)
		if (add_key_arg(kr, keys[i], expires, now) < 0)
			return 1;
	for (size_t i = 0; i < n_roots; i++) {
		_cleanup_(key_freep) struct ota_key *key = NULL;
		r = ota_key_load_public(roots[i], &key);
		if (r == 0)
			r = ota_keyring_add_root(kr, key);
		if (r < 0) {
			cli_fail(r, "keyring create: --root %s", roots[i]);
			return 1;
		}
	}
	for (size_t i = 0; i < n_revokes; i++) {
		const char *id = revokes[i];
		_cleanup_(key_freep) struct ota_key *key = NULL;
		if (strlen(id) != OTA_KEYID_HEX_LEN || access(id, F_OK) == 0) {
			/* Not a keyid: a key file whose keyid to revoke. */
			r = ota_key_load_public(id, &key);
			if (r < 0) {
				cli_fail(r, "keyring create: --revoke %s (a keyid or a key file)", id);
				return 1;
			}
			id = ota_key_id(key);
		}
		r = ota_keyring_revoke(kr, id);
		if (r < 0 && r != -FL_EDUP) {
			cli_fail(r, "keyring create: --revoke %s", revokes[i]);
			return 1;
		}
	}
	size_t usable_roots = 0;
	for (size_t i = 0; i < kr->n_roots; i++)
		usable_roots += !ota_keyring_is_revoked(kr, kr->roots[i].keyid);
	if (kr->n_roots && (size_t)threshold > usable_roots) {
		fprintf(stderr, "flotilla: keyring create: --threshold %lld but only %zu listed "
				"roots are not revoked: no device would accept this keyring\n",
			(long long)threshold, usable_roots);
		return 2;
	}
	_cleanup_free_ char *json = NULL;
	size_t len;
	r = ota_keyring_to_json(kr, &json, &len);
	if (r < 0) {
		cli_fail(r, "keyring create");
		return 1;
	}
	r = fl_write_file_atomic(out, json, len, 0644);
	if (r < 0) {
		cli_fail(r, "keyring create: writing %s", out);
		return 1;
	}
	char exp[21];
	fl_time_format(expires, exp);
	printf("keyring version %lld, %zu keys, %zu revoked, threshold %lld%s, expires %s: %s "
	       "(unsigned; sign with 'flotilla keyring sign')\n",
	       (long long)version, kr->n_keys, kr->n_revoked, (long long)threshold,
	       n_roots ? " of the listed roots" : "", exp, out);
	return 0;
}

/* Read IN as a keyring envelope, or wrap an unsigned keyring into one. The
 * keyring payload is validated either way. */
static int load_for_signing(const char *in, struct ota_dsse **ret)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = fl_read_file(in, OTA_DSSE_MAX_BYTES, &data, &len);
	if (r < 0) {
		cli_fail(r, "keyring sign: %s", in);
		return r;
	}
	_cleanup_(dsse_freep) struct ota_dsse *env = NULL;
	if (ota_dsse_parse(data, len, &env) == 0) {
		if (strcmp(env->payload_type, OTA_PAYLOAD_TYPE_KEYRING) != 0) {
			cli_fail(-FL_EPAYLOADTYPE, "keyring sign: %s holds '%s'", in,
				 env->payload_type);
			return -FL_EPAYLOADTYPE;
		}
	} else {
		r = ota_dsse_new(OTA_PAYLOAD_TYPE_KEYRING, data, len, &env);
		if (r < 0) {
			cli_fail(r, "keyring sign: %s", in);
			return r;
		}
	}
	_cleanup_(keyring_freep) struct ota_keyring *kr = NULL;
	r = ota_keyring_parse((const char *)env->payload, env->payload_len, &kr);
	if (r < 0) {
		cli_fail(r, "keyring sign: %s is not a valid keyring", in);
		return r;
	}
	*ret = fl_steal_ptr(env);
	return 0;
}

static int keyring_sign(int argc, char **argv)
{
	static const struct option opts[] = {{"key", required_argument, NULL, 'k'},
					     {"output", required_argument, NULL, 'o'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	const char *keyfile = NULL, *out = NULL;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "k:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'k':
			keyfile = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case 'h':
			keyring_usage(stdout);
			return 0;
		default:
			keyring_usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1 || !keyfile || !out) {
		fprintf(stderr, "flotilla: keyring sign: want INPUT --key ROOT.pem -o OUTPUT\n");
		return 2;
	}
	_cleanup_(dsse_freep) struct ota_dsse *env = NULL;
	if (load_for_signing(argv[optind], &env) < 0)
		return 1;
	_cleanup_(key_freep) struct ota_key *key = NULL;
	int r = ota_key_load_private(keyfile, &key);
	if (r < 0) {
		cli_fail(r, "keyring sign: %s (a private key)", keyfile);
		return 1;
	}
	r = ota_dsse_sign(env, key);
	if (r < 0) {
		cli_fail(r, "keyring sign: %s", r == -FL_EDUP ? "already signed by this key" : keyfile);
		return 1;
	}
	_cleanup_free_ char *json = NULL;
	size_t len;
	r = ota_dsse_to_json(env, &json, &len);
	if (r == 0)
		r = fl_write_file_atomic(out, json, len, 0644);
	if (r < 0) {
		cli_fail(r, "keyring sign: writing %s", out);
		return 1;
	}
	printf("signed by %s: %zu signature%s in %s\n", ota_key_id(key), env->n_sigs,
	       env->n_sigs == 1 ? "" : "s", out);
	return 0;
}

static int keyring_verify(int argc, char **argv)
{
	static const struct option opts[] = {{"root", required_argument, NULL, 'r'},
					     {"threshold", required_argument, NULL, 't'},
					     {"at", required_argument, NULL, 'a'},
					     {"help", no_argument, NULL, 'h'},
					     {0}};
	const char *roots[OTA_TRUST_MAX_ROOTS];
	size_t n_roots = 0;
	int64_t threshold = 1, now = fl_now_s();
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "r:t:a:h", opts, NULL)) != -1) {
		switch (c) {
		case 'r':
			if (n_roots == OTA_TRUST_MAX_ROOTS) {
				cli_fail(-FL_ETOOBIG, "keyring verify: too many --root");
				return 2;
			}
			roots[n_roots++] = optarg;
			break;
		case 't':
			if (!num_arg("--threshold", optarg, 1, OTA_TRUST_MAX_ROOTS, &threshold))
				return 2;
			break;
		case 'a':
			if (fl_time_parse(optarg, &now) < 0) {
				fprintf(stderr, "flotilla: keyring verify: --at wants "
						"YYYY-MM-DDTHH:MM:SSZ, not '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'h':
			keyring_usage(stdout);
			return 0;
		default:
			keyring_usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1 || n_roots == 0) {
		fprintf(stderr, "flotilla: keyring verify: want ENVELOPE --root ROOT.pub.pem "
				"[--root ...] --threshold M\n");
		return 2;
	}
	const char *in = argv[optind];
	_cleanup_(trust_freep) struct ota_trust *t = NULL;
	int r = ota_trust_new((unsigned)threshold, &t);
	if (r < 0) {
		cli_fail(r, "keyring verify");
		return 1;
	}
	for (size_t i = 0; i < n_roots; i++) {
		_cleanup_(key_freep) struct ota_key *key = NULL;
		r = ota_key_load_public(roots[i], &key);
		if (r == 0)
			r = ota_trust_add_root(t, key);
		if (r < 0 && r != -FL_EDUP) {
			cli_fail(r, "keyring verify: --root %s", roots[i]);
			return 1;
		}
	}
	_cleanup_free_ char *data = NULL;
	size_t len;
	r = fl_read_file(in, OTA_DSSE_MAX_BYTES, &data, &len);
	if (r < 0) {
		cli_fail(r, "keyring verify: %s", in);
		return 1;
	}
	r = ota_trust_install_keyring(t, data, len, now);
	if (r < 0) {
		cli_fail(r, "keyring verify: %s", in);
		return 1;
	}
	const struct ota_keyring *kr = ota_trust_keyring(t);
	char exp[21];
	fl_time_format(kr->expires_s, exp);
	printf("%s: OK: keyring version %llu, expires %s, next keyring needs %u signature%s of %s\n",
	       in, (unsigned long long)kr->version, exp, ota_trust_threshold(t),
	       ota_trust_threshold(t) == 1 ? "" : "s",
	       kr->n_roots ? "the roots it lists" : "the device roots");
	for (size_t i = 0; i < kr->n_roots; i++)
		printf("  root   %s\n", kr->roots[i].keyid);
	for (size_t i = 0; i < kr->n_keys; i++) {
		const struct ota_keyring_key *k = &kr->keys[i];
		fl_time_format(k->expires_s, exp);
		printf("  key    %s expires %s%s models", k->keyid, exp,
		       ota_keyring_is_revoked(kr, k->keyid) ? " REVOKED" : "");
		for (size_t j = 0; j < k->n_models; j++)
			printf("%s%s", j ? "," : " ", k->models[j]);
		printf("\n");
	}
	for (size_t i = 0; i < kr->n_revoked; i++)
		printf("  revoked %s\n", kr->revoked[i]);
	return 0;
}

int cli_keyring_main(int argc, char **argv)
{
	static const struct cli_cmd cmds[] = {
		{"create", keyring_create}, {"sign", keyring_sign}, {"verify", keyring_verify}};
	return cli_dispatch("keyring", cmds, FL_ARRAY_SIZE(cmds), keyring_usage, argc, argv);
}
