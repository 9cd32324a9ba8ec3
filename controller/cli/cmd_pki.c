/* flotilla pki: the fleet CA and the certificates of devices, broker and
 * controllers (see ota/include/flotilla/pki.h and docs/broker.md). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/pki.h>
#include <flotilla/util.h>

#define PKI_DIR_DEFAULT "./pki"

static void usage(FILE *f)
{
	fputs("usage: flotilla pki COMMAND [OPTIONS]\n"
	      "\n"
	      "  init                      make the fleet CA: DIR/ca.crt, DIR/ca.key\n"
	      "  issue-device ID           DIR/devices/ID.crt + .key (CN = ID)\n"
	      "  issue-device ID --csr F   sign the device's own CSR: DIR/devices/ID.crt only\n"
	      "  issue-server [NAME]       DIR/server.crt + .key for the broker (serverAuth)\n"
	      "  issue-controller [NAME]   DIR/controller.crt + .key (CN " PKI_CONTROLLER_CN ");\n"
	      "                            more instances: " PKI_CONTROLLER_CN "-N --out controller-N\n"
	      "  csr ID --key KEY --out F  on a device: make KEY if missing, write a CSR for ID\n"
	      "  verify CERT [--host H] [--kind device|server|controller|ca]\n"
	      "                            check CERT against DIR/ca.crt (or --ca FILE) and,\n"
	      "                            when it exists, DIR/ca.crl (or --crl FILE)\n"
	      "  revoke ID | --serial S    revoke devices/ID.crt (or any serial, hex): add it to\n"
	      "                            DIR/revoked.txt and re-issue DIR/ca.crl\n"
	      "  crl                       re-issue DIR/ca.crl (do it before nextUpdate); then\n"
	      "                            reload the broker (see docs/broker.md)\n"
	      "\n"
	      "options:\n"
	      "  --dir DIR          PKI directory (default " PKI_DIR_DEFAULT ")\n"
	      "  --days N           validity in days (CA 3650, others 825, CRL 30); negative N\n"
	      "                     makes a certificate that expired N days ago (for tests)\n"
	      "  --not-before T, --not-after T   exact validity, ISO 8601 UTC\n"
	      "  --dns NAME, --ip ADDR          SANs (repeatable, at most 16 each);\n"
	      "                     issue-server without any uses its NAME as DNS SAN\n"
	      "  --cn NAME          CA name (init) or CN (server, controller)\n"
	      "  --out BASE         file base name for issue-server/-controller\n"
	      "  --serial HEX       revoke: the certificate's serial (as 'verify' prints it)\n"
	      "  --crl FILE         verify: the CRL to check against\n"
	      "  --force            replace existing files\n",
	      f);
}

enum {
	OPT_DIR = 1000,
	OPT_DAYS,
	OPT_NOT_BEFORE,
	OPT_NOT_AFTER,
	OPT_DNS,
	OPT_IP,
	OPT_CN,
	OPT_OUT,
	OPT_FORCE,
	OPT_CSR,
	OPT_KEY,
	OPT_HOST,
	OPT_KIND,
	OPT_CA,
	OPT_SERIAL,
	OPT_CRL,
	OPT_HELP,
};

struct args {
	const char *dir;
	const char *csr;
	const char *key;
	const char *host;
	const char *kind;
	const char *ca;
	const char *serial;
	const char *crl;
	const char *pos; /* the one positional argument after the command */
	struct pki_opts o;
};

static int parse(int argc, char **argv, struct args *a)
{
	static const struct option longopts[] = {
		{"dir", required_argument, NULL, OPT_DIR},
		{"days", required_argument, NULL, OPT_DAYS},
		{"not-before", required_argument, NULL, OPT_NOT_BEFORE},
		{"not-after", required_argument, NULL, OPT_NOT_AFTER},
		{"dns", required_argument, NULL, OPT_DNS},
		{"ip", required_argument, NULL, OPT_IP},
		{"cn", required_argument, NULL, OPT_CN},
		{"out", required_argument, NULL, OPT_OUT},
		{"force", no_argument, NULL, OPT_FORCE},
		{"csr", required_argument, NULL, OPT_CSR},
		{"key", required_argument, NULL, OPT_KEY},
		{"host", required_argument, NULL, OPT_HOST},
		{"kind", required_argument, NULL, OPT_KIND},
		{"ca", required_argument, NULL, OPT_CA},
		{"serial", required_argument, NULL, OPT_SERIAL},
		{"crl", required_argument, NULL, OPT_CRL},
		{"help", no_argument, NULL, OPT_HELP},
		{NULL, 0, NULL, 0},
	};
	a->dir = PKI_DIR_DEFAULT;
	optind = 1;
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		int64_t v;
		switch (c) {
		case OPT_DIR:
			a->dir = optarg;
			break;
		case OPT_DAYS:
			if (fl_parse_i64(optarg, -PKI_DAYS_MAX, PKI_DAYS_MAX, &v) < 0 || v == 0) {
				cli_fail(0, "pki: --days wants a non-zero number of days within +-%d, not '%s'",
					 PKI_DAYS_MAX, optarg);
				return 2;
			}
			a->o.days = v;
			break;
		case OPT_NOT_BEFORE:
		case OPT_NOT_AFTER:
			if (fl_time_parse(optarg, &v) < 0 || v <= 0) {
				cli_fail(0, "pki: bad time '%s' (want e.g. 2026-01-31T00:00:00Z)", optarg);
				return 2;
			}
			if (c == OPT_NOT_BEFORE)
				a->o.not_before_s = v;
			else
				a->o.not_after_s = v;
			break;
		case OPT_DNS:
			if (a->o.n_dns >= PKI_MAX_SANS) {
				cli_fail(0, "pki: at most %d --dns names", PKI_MAX_SANS);
				return 2;
			}
			a->o.dns[a->o.n_dns++] = optarg;
			break;
		case OPT_IP:
			if (a->o.n_ip >= PKI_MAX_SANS) {
				cli_fail(0, "pki: at most %d --ip addresses", PKI_MAX_SANS);
				return 2;
			}
			a->o.ip[a->o.n_ip++] = optarg;
			break;
		case OPT_CN:
			a->o.cn = optarg;
			break;
		case OPT_OUT:
			a->o.out = optarg;
			break;
		case OPT_FORCE:
			a->o.force = true;
			break;
		case OPT_CSR:
			a->csr = optarg;
			break;
		case OPT_KEY:
			a->key = optarg;
			break;
		case OPT_HOST:
			a->host = optarg;
			break;
		case OPT_KIND:
			a->kind = optarg;
			break;
		case OPT_CA:
			a->ca = optarg;
			break;
		case OPT_SERIAL:
			a->serial = optarg;
			break;
		case OPT_CRL:
			a->crl = optarg;
			break;
		case 'h':
		case OPT_HELP:
			usage(stdout);
			return 1;
		default:
			cli_fail(0, "pki: unknown or incomplete option '%s' (try 'flotilla pki --help')",
				 argv[optind - 1]);
			return 2;
		}
	}
	/* GNU getopt moved the positional arguments to the end. */
	if (optind < argc)
		a->pos = argv[optind++];
	if (optind < argc) {
		cli_fail(0, "pki: unexpected argument '%s'", argv[optind]);
		return 2;
	}
	return 0;
}

/* One clear line for a failed PKI call. */
static int fail(int err, const char *what, const struct args *a)
{
	if (err == -FL_ERANGE)
		cli_fail(0, "pki %s: bad validity: not-before must be before not-after, both "
			    "between 1970 and 9999",
			 what);
	else if (err == -EEXIST)
		cli_fail(0, "pki %s: output exists in %s (use --force to replace it)", what, a->dir);
	else if (err == -FL_EUNSUPPORTED)
		cli_fail(0, "pki %s: the subject name of %s/ca.crt cannot be reproduced as issuer "
			    "(make the CA with 'flotilla pki init')",
			 what, a->dir);
	else if (err == -FL_EKEY)
		cli_fail(err, "pki %s: CA key or certificate in %s unusable (run 'flotilla pki init "
			      "--dir %s' first?)",
			 what, a->dir, a->dir);
	else if (err == -ENOENT)
		cli_fail(err, "pki %s: missing file in %s (run 'flotilla pki init --dir %s' first?)",
			 what, a->dir, a->dir);
	else
		cli_fail(err, "pki %s", what);
	return 1;
}

static bool valid_name_arg(const char *what, const char *name)
{
	if (fl_name_valid(name, PKI_NAME_MAX_LEN))
		return true;
	cli_fail(0, "pki %s: invalid name '%s' (1-%d of [A-Za-z0-9._-], not starting with '.' or "
		    "'-')",
		 what, name, PKI_NAME_MAX_LEN);
	return false;
}

static int cmd_init(struct args *a)
{
	if (a->pos) {
		cli_fail(0, "pki init: unexpected argument '%s'", a->pos);
		return 2;
	}
	int r = pki_init(a->dir, &a->o);
	if (r == -EINVAL) {
		cli_fail(0, "pki init: invalid CA name '%s' (1-64 of [A-Za-z0-9 ._-])",
			 a->o.cn ? a->o.cn : "");
		return 2;
	}
	if (r < 0)
		return fail(r, "init", a);
	printf("%s/ca.crt\n%s/ca.key\n", a->dir, a->dir);
	return 0;
}

static int cmd_issue(struct args *a, enum pki_kind kind, const char *what)
{
	if (kind == PKI_KIND_DEVICE && !a->pos) {
		cli_fail(0, "pki issue-device: missing device ID");
		return 2;
	}
	if (a->pos && !valid_name_arg(what, a->pos))
		return 2;
	if (kind == PKI_KIND_DEVICE &&
	    !strncmp(a->pos, PKI_RESERVED_PREFIX, strlen(PKI_RESERVED_PREFIX))) {
		cli_fail(0, "pki issue-device: device ids starting with '%s' are reserved for the "
			    "controller and broker",
			 PKI_RESERVED_PREFIX);
		return 2;
	}
	if (a->o.out && !valid_name_arg(what, a->o.out))
		return 2;
	if (kind == PKI_KIND_CONTROLLER) {
		const char *cn = a->pos ? a->pos : a->o.cn ? a->o.cn : PKI_CONTROLLER_CN;
		size_t n = strlen(PKI_CONTROLLER_CN);
		if (strncmp(cn, PKI_CONTROLLER_CN, n) != 0 || (cn[n] != '\0' && cn[n] != '-')) {
			cli_fail(0, "pki issue-controller: the CN must be %s or %s-SUFFIX (the names "
				    "the broker ACL grants controller rights), not '%s'",
				 PKI_CONTROLLER_CN, PKI_CONTROLLER_CN, cn);
			return 2;
		}
	}
	char *crt = NULL;
	int r;
	if (a->csr) {
		if (kind != PKI_KIND_DEVICE) {
			cli_fail(0, "pki %s: --csr is for issue-device", what);
			return 2;
		}
		r = pki_issue_csr(a->dir, a->pos, a->csr, &a->o, &crt);
		if (r == -EINVAL) {
			cli_fail(0, "pki issue-device: CSR %s is not for device '%s' (its CN must be the "
				    "device id)",
				 a->csr, a->pos);
			return 1;
		}
		if (r == -ENOENT && access(a->csr, R_OK) != 0) {
			cli_fail(r, "pki issue-device: %s", a->csr);
			return 1;
		}
		if (r == -FL_EUNSUPPORTED) {
			cli_fail(0, "pki issue-device: CSR %s: its key is not ECDSA P-256", a->csr);
			return 1;
		}
		if (r == -FL_EFORMAT || r == -FL_EBADSIG) {
			cli_fail(r, "pki issue-device: CSR %s rejected", a->csr);
			return 1;
		}
	} else {
		r = pki_issue(a->dir, kind, a->pos, &a->o, &crt);
		if (r == -EINVAL) {
			cli_fail(0, "pki %s: invalid --dns or --ip value", what);
			return 2;
		}
	}
	if (r < 0)
		return fail(r, what, a);
	printf("%s\n", crt);
	if (!a->csr) {
		size_t n = strlen(crt);
		if (n > 4)
			printf("%.*s.key\n", (int)(n - 4), crt);
	}
	free(crt);
	return 0;
}

static int cmd_csr(struct args *a)
{
	if (!a->pos || !a->key || !a->o.out) {
		cli_fail(0, "pki csr: usage: flotilla pki csr ID --key KEY.pem --out REQ.csr");
		return 2;
	}
	if (!valid_name_arg("csr", a->pos))
		return 2;
	int r = pki_csr_create(a->pos, a->key, a->o.out);
	if (r < 0) {
		cli_fail(r, "pki csr: %s", r == -FL_EKEY ? a->key : a->o.out);
		return 1;
	}
	printf("%s\n", a->o.out);
	return 0;
}

/* The CRL part of `pki verify`: --crl FILE, else DIR/ca.crl when it exists
 * (and no --ca was given). 0 when not revoked or there is no CRL. */
static int verify_crl(const struct args *a, const char *ca, const struct pki_cert_info *info)
{
	_cleanup_free_ char *crl_alloc = NULL;
	const char *crl = a->crl;
	if (!crl) {
		if (a->ca)
			return 0;
		crl_alloc = fl_asprintf("%s/ca.crl", a->dir);
		if (!crl_alloc) {
			cli_fail(-ENOMEM, "pki verify");
			return -ENOMEM;
		}
		if (access(crl_alloc, F_OK) != 0)
			return 0;
		crl = crl_alloc;
	}
	struct pki_crl_info ci = {0};
	int r = pki_crl_check(ca, crl, a->pos, &ci);
	char t[21], nu[21];
	fl_time_format(ci.revoked_at_s, t);
	fl_time_format(ci.next_update_s, nu);
	if (r == -FL_EKEYREVOKED)
		cli_fail(0, "pki verify: %s (CN=%s serial %s) is REVOKED since %s (CRL %s)", a->pos,
			 info->cn, info->serial_hex, t, crl);
	else if (r == -FL_EBADSIG)
		cli_fail(0, "pki verify: CRL %s is not signed by the CA in %s: refused", crl, ca);
	else if (r == -FL_EEXPIRED)
		cli_fail(0, "pki verify: CRL %s is out of date (next update %s): re-issue it with "
			    "'flotilla pki crl'",
			 crl, nu);
	else if (r < 0)
		cli_fail(r, "pki verify: CRL %s", crl);
	return r;
}

static int cmd_verify(struct args *a)
{
	if (!a->pos) {
		cli_fail(0, "pki verify: missing CERT");
		return 2;
	}
	enum pki_kind kind = PKI_KIND_ANY;
	if (a->kind) {
		if (!strcmp(a->kind, "device"))
			kind = PKI_KIND_DEVICE;
		else if (!strcmp(a->kind, "server"))
			kind = PKI_KIND_SERVER;
		else if (!strcmp(a->kind, "controller"))
			kind = PKI_KIND_CONTROLLER;
		else if (!strcmp(a->kind, "ca"))
			kind = PKI_KIND_CA;
		else {
			cli_fail(0, "pki verify: --kind is device, server, controller or ca");
			return 2;
		}
	}
	char *ca_alloc = NULL;
	const char *ca = a->ca;
	if (!ca) {
		ca_alloc = fl_asprintf("%s/ca.crt", a->dir);
		if (!ca_alloc) {
			cli_fail(-ENOMEM, "pki verify");
			return 1;
		}
		ca = ca_alloc;
	}
	struct pki_cert_info info = {0};
	int r = pki_verify(ca, a->pos, a->host, kind, &info);
	if (r == 0) {
		r = verify_crl(a, ca, &info);
		if (r != 0) {
			free(ca_alloc);
			return 1;
		}
	}
	char nb[21], na[21];
	fl_time_format(info.not_before_s, nb);
	fl_time_format(info.not_after_s, na);
	if (r == 0)
		printf("%s: OK: CN=%s serial %s valid %s .. %s%s\n", a->pos, info.cn, info.serial_hex,
		       nb, na, info.is_ca ? " (CA)" : "");
	else if (r == -FL_EKEYUNKNOWN)
		cli_fail(0, "pki verify: %s (CN=%s) was not issued by the CA in %s", a->pos, info.cn,
			 ca);
	else if (r == -FL_EKEYEXPIRED)
		cli_fail(0, "pki verify: %s (CN=%s) is outside its validity %s .. %s", a->pos,
			 info.cn, nb, na);
	else if (r == -FL_EBADSIG)
		cli_fail(0, "pki verify: %s (CN=%s) does not verify%s%s%s", a->pos, info.cn,
			 a->host ? " for host " : "", a->host ? a->host : "",
			 kind != PKI_KIND_ANY ? " or has the wrong usage" : "");
	else
		cli_fail(r, "pki verify: %s", a->pos);
	free(ca_alloc);
	return r == 0 ? 0 : 1;
}

static int cmd_revoke(struct args *a)
{
	if (!a->pos == !a->serial) {
		cli_fail(0, "pki revoke: usage: flotilla pki revoke ID | --serial HEX [--dir DIR]");
		return 2;
	}
	if (a->pos && !valid_name_arg("revoke", a->pos))
		return 2;
	if (a->o.days < 0) {
		cli_fail(0, "pki revoke: --days is the CRL's validity and must be positive");
		return 2;
	}
	char serial[PKI_SERIAL_HEX_MAX + 1] = "";
	int r = pki_revoke(a->dir, a->pos, a->serial, a->o.days, serial);
	if (r == -EINVAL) {
		cli_fail(0, "pki revoke: invalid serial '%s' (1-%d hex digits, not zero)",
			 a->serial ? a->serial : "", PKI_SERIAL_HEX_MAX);
		return 2;
	}
	if (r == -ENOENT && a->pos) {
		cli_fail(0, "pki revoke: no certificate %s/devices/%s.crt (use --serial for others)",
			 a->dir, a->pos);
		return 1;
	}
	if (r == -FL_EFORMAT) {
		cli_fail(0, "pki revoke: unparsable %s in %s",
			 a->pos ? "device certificate" : "revoked.txt or certificate", a->dir);
		return 1;
	}
	if (r == -EALREADY) {
		printf("%s/ca.crl\nserial %s was already revoked; CRL re-issued\n", a->dir, serial);
		return 0;
	}
	if (r < 0)
		return fail(r, "revoke", a);
	printf("%s/ca.crl\nrevoked serial %s%s%s; reload the broker to apply\n", a->dir, serial,
	       a->pos ? " of " : "", a->pos ? a->pos : "");
	return 0;
}

static int cmd_crl(struct args *a)
{
	if (a->pos) {
		cli_fail(0, "pki crl: unexpected argument '%s'", a->pos);
		return 2;
	}
	if (a->o.days < 0) {
		cli_fail(0, "pki crl: --days is the CRL's validity and must be positive");
		return 2;
	}
	int r = pki_crl_write(a->dir, a->o.days);
	if (r == -FL_EFORMAT) {
		cli_fail(0, "pki crl: unparsable %s/revoked.txt", a->dir);
		return 1;
	}
	if (r < 0)
		return fail(r, "crl", a);
	printf("%s/ca.crl\n", a->dir);
	return 0;
}

int cli_pki_main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const char *cmd = argv[1];
	struct args a = {0};
	int r = parse(argc - 1, argv + 1, &a);
	if (r == 1)
		return 0; /* --help */
	if (r)
		return r;
	if (!strcmp(cmd, "init"))
		return cmd_init(&a);
	if (!strcmp(cmd, "issue-device"))
		return cmd_issue(&a, PKI_KIND_DEVICE, "issue-device");
	if (!strcmp(cmd, "issue-server"))
		return cmd_issue(&a, PKI_KIND_SERVER, "issue-server");
	if (!strcmp(cmd, "issue-controller"))
		return cmd_issue(&a, PKI_KIND_CONTROLLER, "issue-controller");
	if (!strcmp(cmd, "csr"))
		return cmd_csr(&a);
	if (!strcmp(cmd, "verify"))
		return cmd_verify(&a);
	if (!strcmp(cmd, "revoke"))
		return cmd_revoke(&a);
	if (!strcmp(cmd, "crl"))
		return cmd_crl(&a);
	cli_fail(0, "pki: unknown command '%s' (try 'flotilla pki --help')", cmd);
	return 2;
}
