/* flotilla bundle create|sign|verify|inspect|diff: signed model bundles. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "cli.h"
#include <flotilla/bundle.h>
#include <flotilla/cleanup.h>
#include <flotilla/dsse.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#define MAX_KEYS 8
#define TEMPLATE_MAX_BYTES OTA_MANIFEST_MAX_BYTES
#define DAY_S 86400

FL_DEFINE_CLEANUP(struct ota_manifest, ota_manifest_free)
FL_DEFINE_CLEANUP(struct ota_bundle, ota_bundle_free)
FL_DEFINE_CLEANUP(struct ota_trust, ota_trust_free)
FL_DEFINE_CLEANUP(struct ota_key, ota_key_free)
FL_DEFINE_CLEANUP(struct ota_dsse, ota_dsse_free)

static void usage(FILE *f)
{
	fputs("usage: flotilla bundle COMMAND ...\n"
	      "\n"
	      "  create -o OUT.tar --key KEY.pem [--key ...] FILE...\n"
	      "         (--name N --version V --sequence S | --template MANIFEST.json)\n"
	      "         [--expires-days D (90)] [--arch A[,A...]] [--backend B (gguf)]\n"
	      "         [--accelerator A (none)] [--min-ram-mb N] [--description TEXT]\n"
	      "         [--no-tensor-cuts]\n"
	      "  sign BUNDLE --key KEY.pem [-o OUT.tar]        add a signature\n"
	      "  verify BUNDLE --trust DIR [--keyring FILE] [--min-sequence N] [--now TIME]\n"
	      "         [--extract DIR]                       check signature, layout, hashes\n"
	      "  inspect BUNDLE [--json]                      show the manifest (unverified)\n"
	      "  diff OLD NEW [--json]                        bytes a device holding OLD fetches\n"
	      "  push BUNDLE --controller URL [--token T]     upload to the controller\n"
	      "\n"
	      "--trust DIR holds the root public keys (*.pem) and keyring.dsse.json.\n",
	      f);
}

static int set_str(char **dst, const char *v)
{
	char *s = strdup(v);
	if (!s)
		return -ENOMEM;
	free(*dst);
	*dst = s;
	return 0;
}

static int set_arch(struct ota_manifest *m, const char *list)
{
	_cleanup_free_ char *copy = strdup(list);
	if (!copy)
		return -ENOMEM;
	for (size_t i = 0; i < m->compat.n_arch; i++)
		free(m->compat.arch[i]);
	m->compat.n_arch = 0;
	for (char *t = copy; t;) {
		char *comma = strchr(t, ',');
		if (comma)
			*comma = '\0';
		if (*t) {
			if (m->compat.n_arch >= OTA_MANIFEST_MAX_ARCH)
				return -FL_ETOOBIG;
			char **a = realloc(m->compat.arch, (m->compat.n_arch + 1) * sizeof(*a));
			if (!a)
				return -ENOMEM;
			m->compat.arch = a;
			if (!(a[m->compat.n_arch] = strdup(t)))
				return -ENOMEM;
			m->compat.n_arch++;
		}
		t = comma ? comma + 1 : NULL;
	}
	return m->compat.n_arch ? 0 : -EINVAL;
}

static int cmd_create(int argc, char **argv)
{
	static const struct option opts[] = {
		{"name", required_argument, NULL, 'n'},
		{"version", required_argument, NULL, 'V'},
		{"sequence", required_argument, NULL, 's'},
		{"key", required_argument, NULL, 'k'},
		{"expires-days", required_argument, NULL, 'e'},
		{"arch", required_argument, NULL, 'a'},
		{"backend", required_argument, NULL, 'b'},
		{"accelerator", required_argument, NULL, 'A'},
		{"min-ram-mb", required_argument, NULL, 'r'},
		{"description", required_argument, NULL, 'd'},
		{"template", required_argument, NULL, 't'},
		{"no-tensor-cuts", no_argument, NULL, 'N'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *name = NULL, *version = NULL, *seq_s = NULL, *arch = NULL, *backend = NULL;
	const char *accel = NULL, *ram_s = NULL, *desc = NULL, *tmpl = NULL, *out = NULL;
	const char *days_s = "90";
	const char *key_paths[MAX_KEYS];
	size_t n_keys = 0;
	unsigned chunk_opts = OTA_CHUNK_OPT_GGUF;
	int c;
	while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'n': name = optarg; break;
		case 'V': version = optarg; break;
		case 's': seq_s = optarg; break;
		case 'k':
			if (n_keys == MAX_KEYS) {
				cli_fail(0, "bundle create: at most %d --key", MAX_KEYS);
				return 2;
			}
			key_paths[n_keys++] = optarg;
			break;
		case 'e': days_s = optarg; break;
		case 'a': arch = optarg; break;
		case 'b': backend = optarg; break;
		case 'A': accel = optarg; break;
		case 'r': ram_s = optarg; break;
		case 'd': desc = optarg; break;
		case 't': tmpl = optarg; break;
		case 'N': chunk_opts = 0; break;
		case 'o': out = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!out || n_keys == 0 || optind >= argc || (!tmpl && (!name || !version || !seq_s))) {
		cli_fail(0, "bundle create: need -o OUT, --key, FILE... and --name/--version/"
			    "--sequence or --template");
		return 2;
	}
	int64_t days, seq = 0, ram = 0;
	if (fl_parse_i64(days_s, 1, 36500, &days) < 0) {
		cli_fail(-FL_ERANGE, "bundle create: --expires-days '%s'", days_s);
		return 2;
	}
	if (seq_s && fl_parse_i64(seq_s, 0, OTA_MANIFEST_MAX_INT, &seq) < 0) {
		cli_fail(-FL_ERANGE, "bundle create: --sequence '%s'", seq_s);
		return 2;
	}
	if (ram_s && fl_parse_i64(ram_s, 0, 1 << 30, &ram) < 0) {
		cli_fail(-FL_ERANGE, "bundle create: --min-ram-mb '%s'", ram_s);
		return 2;
	}
	int64_t now = fl_now_s();
	_cleanup_(ota_manifest_freep) struct ota_manifest *m = NULL;
	int r;
	if (tmpl) {
		_cleanup_free_ char *json = NULL;
		size_t len;
		if ((r = fl_read_file(tmpl, TEMPLATE_MAX_BYTES, &json, &len)) < 0 ||
		    (r = ota_manifest_parse_template(json, len, &m)) < 0) {
			cli_fail(r, "bundle create: template %s", tmpl);
			return 1;
		}
		if (m->n_files) {
			cli_fail(-FL_ESCHEMA, "bundle create: template %s lists files", tmpl);
			return 1;
		}
		if ((name && (r = set_str(&m->name, name)) < 0) ||
		    (version && (r = set_str(&m->version, version)) < 0)) {
			cli_fail(r, "bundle create");
			return 1;
		}
		if (seq_s)
			m->sequence = (uint64_t)seq;
		m->created_s = now;
		m->expires_s = now + days * DAY_S;
	} else if ((r = ota_manifest_new(name, version, (uint64_t)seq, now, now + days * DAY_S,
					 &m)) < 0) {
		cli_fail(r, "bundle create: name '%s' / version '%s'", name, version);
		return 1;
	}
	struct utsname u;
	if (!arch && m->compat.n_arch == 0)
		arch = uname(&u) == 0 ? u.machine : "x86_64";
	if ((arch && (r = set_arch(m, arch)) < 0) ||
	    (backend && (r = set_str(&m->compat.backend, backend)) < 0) ||
	    (accel && (r = set_str(&m->compat.accelerator, accel)) < 0) ||
	    (desc && (r = set_str(&m->description, desc)) < 0)) {
		cli_fail(r, "bundle create: manifest fields");
		return 1;
	}
	if (ram_s)
		m->compat.min_ram_mb = (uint64_t)ram;

	struct ota_key *keys[MAX_KEYS] = {0};
	for (size_t i = 0; i < n_keys; i++) {
		if ((r = ota_key_load_private(key_paths[i], &keys[i])) < 0) {
			cli_fail(r, "bundle create: key %s", key_paths[i]);
			goto keys_out;
		}
	}
	r = ota_bundle_create(out, m, (const char *const *)argv + optind, (size_t)(argc - optind),
			      NULL, chunk_opts, keys, n_keys);
	if (r < 0)
		cli_fail(r, "bundle create: %s", out);
	else
		printf("created %s: %s %s (sequence %llu), %zu file(s)\n", out, m->name, m->version,
		       (unsigned long long)m->sequence, m->n_files);
keys_out:
	for (size_t i = 0; i < n_keys; i++)
		ota_key_free(keys[i]);
	return r < 0 ? 1 : 0;
}

static int cmd_sign(int argc, char **argv)
{
	static const struct option opts[] = {
		{"key", required_argument, NULL, 'k'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *key_path = NULL, *out = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'k': key_path = optarg; break;
		case 'o': out = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!key_path || optind + 1 != argc) {
		cli_fail(0, "bundle sign: need BUNDLE and --key KEY.pem");
		return 2;
	}
	const char *in = argv[optind];
	_cleanup_(ota_key_freep) struct ota_key *key = NULL;
	int r = ota_key_load_private(key_path, &key);
	if (r < 0) {
		cli_fail(r, "bundle sign: key %s", key_path);
		return 1;
	}
	r = ota_bundle_add_signature(in, out ? out : in, key);
	if (r < 0) {
		cli_fail(r, "bundle sign: %s", in);
		return 1;
	}
	printf("signed %s with key %s\n", out ? out : in, ota_key_id(key));
	return 0;
}

static uint64_t total_size(const struct ota_manifest *m)
{
	uint64_t t = 0;
	for (size_t i = 0; i < m->n_files; i++)
		t += m->files[i].size;
	return t;
}

static int cmd_verify(int argc, char **argv)
{
	static const struct option opts[] = {
		{"trust", required_argument, NULL, 't'},
		{"keyring", required_argument, NULL, 'k'},
		{"min-sequence", required_argument, NULL, 's'},
		{"now", required_argument, NULL, 'n'},
		{"extract", required_argument, NULL, 'x'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *trust_dir = NULL, *keyring = NULL, *seq_s = NULL, *now_s = NULL, *dest = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 't': trust_dir = optarg; break;
		case 'k': keyring = optarg; break;
		case 's': seq_s = optarg; break;
		case 'n': now_s = optarg; break;
		case 'x': dest = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!trust_dir || optind + 1 != argc) {
		cli_fail(0, "bundle verify: need BUNDLE and --trust DIR");
		return 2;
	}
	int64_t min_seq = 0, now = fl_now_s();
	if (seq_s && fl_parse_i64(seq_s, 0, OTA_MANIFEST_MAX_INT, &min_seq) < 0) {
		cli_fail(-FL_ERANGE, "bundle verify: --min-sequence '%s'", seq_s);
		return 2;
	}
	if (now_s && fl_time_parse(now_s, &now) < 0) {
		cli_fail(-EINVAL, "bundle verify: --now '%s' (want 2026-11-25T10:00:00Z)", now_s);
		return 2;
	}
	_cleanup_free_ char *kr_default = fl_path_join(trust_dir, OTA_TRUST_KEYRING_FILE);
	if (!kr_default) {
		cli_fail(-ENOMEM, "bundle verify");
		return 1;
	}
	_cleanup_(ota_trust_freep) struct ota_trust *t = NULL;
	int r = ota_trust_open(trust_dir, keyring ? keyring : kr_default, 0, &t);
	if (r < 0) {
		cli_fail(r, "bundle verify: trust store %s", trust_dir);
		return 1;
	}
	const char *path = argv[optind];
	_cleanup_(ota_bundle_freep) struct ota_bundle *b = NULL;
	r = ota_bundle_open(path, t, now, (uint64_t)min_seq, NULL, &b);
	if (r < 0) {
		cli_fail(r, "bundle verify: %s", path);
		return 1;
	}
	const struct ota_manifest *m = ota_bundle_manifest(b);
	if (dest && (r = ota_bundle_extract(b, dest)) < 0) {
		cli_fail(r, "bundle verify: extract %s into %s", path, dest);
		return 1;
	}
	printf("%s: OK: %s %s (sequence %llu), %zu file(s), %llu bytes%s%s\n", path, m->name,
	       m->version, (unsigned long long)m->sequence, m->n_files,
	       (unsigned long long)total_size(m), dest ? ", extracted into " : "", dest ? dest : "");
	return 0;
}

static int open_unverified(const char *path, struct ota_bundle **ret)
{
	struct ota_bundle_opts o = {.verify = ota_bundle_verify_none};
	return ota_bundle_open(path, NULL, 0, 0, &o, ret);
}

static int cmd_inspect(int argc, char **argv)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	int json = 0, c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind + 1 != argc) {
		cli_fail(0, "bundle inspect: need BUNDLE");
		return 2;
	}
	const char *path = argv[optind];
	_cleanup_(ota_bundle_freep) struct ota_bundle *b = NULL;
	int r = open_unverified(path, &b);
	_cleanup_(ota_dsse_freep) struct ota_dsse *env = NULL;
	size_t env_len = 0;
	const char *env_s = r < 0 ? NULL : ota_bundle_envelope(b, &env_len);
	if (r < 0 || (r = ota_dsse_parse(env_s, env_len, &env)) < 0) {
		cli_fail(r, "bundle inspect: %s", path);
		return 1;
	}
	const struct ota_manifest *m = ota_bundle_manifest(b);
	if (json) {
		cJSON *root = cJSON_CreateObject(), *man = NULL, *sigs, *files;
		if (!root || fl_json_parse((const char *)env->payload, env->payload_len,
					   OTA_MANIFEST_MAX_BYTES, OTA_MANIFEST_MAX_DEPTH, &man) < 0) {
			cJSON_Delete(root);
			cli_fail(-ENOMEM, "bundle inspect");
			return 1;
		}
		cJSON_AddItemToObject(root, "manifest", man);
		sigs = cJSON_AddArrayToObject(root, "signatures");
		for (size_t i = 0; sigs && i < env->n_sigs; i++)
			cJSON_AddItemToArray(sigs, cJSON_CreateString(env->sigs[i].keyid));
		files = cJSON_AddArrayToObject(root, "chunk_indexes");
		for (size_t i = 0; files && i < m->n_files; i++) {
			const struct ota_chunkidx *idx = ota_bundle_chunk_index(b, i);
			cJSON *f = cJSON_CreateObject();
			cJSON_AddStringToObject(f, "path", m->files[i].path);
			cJSON_AddNumberToObject(f, "chunks", (double)ota_chunkidx_count(idx));
			cJSON_AddBoolToObject(f, "tensor_cuts",
					      ota_chunkidx_flags(idx) & OTA_CIDX_F_GGUF);
			cJSON_AddItemToArray(files, f);
		}
		cJSON_AddBoolToObject(root, "signatures_verified", 0);
		char *s = fl_json_print(root);
		cJSON_Delete(root);
		if (!s) {
			cli_fail(-ENOMEM, "bundle inspect");
			return 1;
		}
		puts(s);
		free(s);
		return 0;
	}
	char created[21], expires[21];
	fl_time_format(m->created_s, created);
	fl_time_format(m->expires_s, expires);
	printf("name:        %s\nversion:     %s\nsequence:    %llu\ncreated:     %s\n"
	       "expires:     %s\n",
	       m->name, m->version, (unsigned long long)m->sequence, created, expires);
	if (m->description)
		printf("description: %s\n", m->description);
	printf("compat:      arch=");
	for (size_t i = 0; i < m->compat.n_arch; i++)
		printf("%s%s", i ? "," : "", m->compat.arch[i]);
	printf(" backend=%s accelerator=%s min_ram_mb=%llu\n", m->compat.backend,
	       m->compat.accelerator, (unsigned long long)m->compat.min_ram_mb);
	printf("chunking:    %s\nsigned by:  ", m->chunking ? m->chunking : "-");
	for (size_t i = 0; i < env->n_sigs; i++)
		printf(" %s", env->sigs[i].keyid);
	printf("\nfiles:\n");
	for (size_t i = 0; i < m->n_files; i++) {
		const struct ota_chunkidx *idx = ota_bundle_chunk_index(b, i);
		char hex[FL_SHA256_HEX_LEN + 1];
		fl_hex_encode(m->files[i].sha256, FL_SHA256_LEN, hex);
		printf("  %s  %llu bytes  sha256 %s  %zu chunks%s\n", m->files[i].path,
		       (unsigned long long)m->files[i].size, hex, ota_chunkidx_count(idx),
		       ota_chunkidx_flags(idx) & OTA_CIDX_F_GGUF ? " (tensor cuts)" : "");
	}
	printf("(layout and hashes checked; signatures NOT verified: use 'bundle verify')\n");
	return 0;
}

static int cmd_diff(int argc, char **argv)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	int json = 0, c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind + 2 != argc) {
		cli_fail(0, "bundle diff: need OLD and NEW");
		return 2;
	}
	_cleanup_(ota_bundle_freep) struct ota_bundle *a = NULL;
	_cleanup_(ota_bundle_freep) struct ota_bundle *b = NULL;
	int r = open_unverified(argv[optind], &a);
	if (r < 0) {
		cli_fail(r, "bundle diff: %s", argv[optind]);
		return 1;
	}
	if ((r = open_unverified(argv[optind + 1], &b)) < 0) {
		cli_fail(r, "bundle diff: %s", argv[optind + 1]);
		return 1;
	}
	struct ota_bundle_delta d;
	if ((r = ota_bundle_diff(a, b, &d)) < 0) {
		cli_fail(r, "bundle diff");
		return 1;
	}
	double frac = d.total_bytes ? (double)d.fetch_bytes / (double)d.total_bytes : 0.0;
	if (json)
		printf("{\"fetch_bytes\":%llu,\"fetch_chunks\":%llu,\"total_bytes\":%llu,"
		       "\"total_chunks\":%llu,\"fraction\":%.6f}\n",
		       (unsigned long long)d.fetch_bytes, (unsigned long long)d.fetch_chunks,
		       (unsigned long long)d.total_bytes, (unsigned long long)d.total_chunks, frac);
	else
		printf("fetch %llu of %llu bytes (%.2f%%), %llu of %llu chunks\n",
		       (unsigned long long)d.fetch_bytes, (unsigned long long)d.total_bytes,
		       100.0 * frac, (unsigned long long)d.fetch_chunks,
		       (unsigned long long)d.total_chunks);
	return 0;
}

int cli_bundle_main(int argc, char **argv)
{
	static const struct cli_cmd cmds[] = {
		{"create", cmd_create}, {"sign", cmd_sign},   {"verify", cmd_verify},
		{"inspect", cmd_inspect}, {"diff", cmd_diff}, {"push", cli_push_main},
	};
	return cli_dispatch("bundle", cmds, FL_ARRAY_SIZE(cmds), usage, argc, argv);
}
