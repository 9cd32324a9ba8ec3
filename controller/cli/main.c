/* flotilla: the operator's command line. */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include <flotilla/error.h>
#include <flotilla/log.h>

void cli_fail(int err, const char *fmt, ...)
{
	va_list ap;
	fputs("flotilla: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (err)
		fprintf(stderr, ": %s", fl_strerror(err));
	fputc('\n', stderr);
}

int cli_dispatch(const char *group, const struct cli_cmd *cmds, size_t n, void (*usage)(FILE *),
		 int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		if (!strcmp(cmd, cmds[i].name)) {
			optind = 1; /* getopt sees argv[1..] as its own argv */
			return cmds[i].run(argc - 1, argv + 1);
		}
	cli_fail(0, "%s: unknown command '%s' (try 'flotilla %s --help')", group, cmd, group);
	return 2;
}

static void usage(FILE *f)
{
	fputs("usage: flotilla COMMAND [ARGS]\n"
	      "\n"
	      "  key generate OUT.pem [--public OUT.pub.pem]   make an ECDSA P-256 key\n"
	      "  keyring create|sign|verify ...               root-signed delegation of release keys\n"
	      "  bundle create|sign|verify|inspect|diff ...    signed model bundles\n"
	      "  bundle push BUNDLE --controller URL [--token T]  upload to the controller\n"
	      "  devices list|show ID [--json]                   the fleet as the controller sees it\n"
	      "  deploy DEVICE MODEL@VERSION --controller URL    send a pushed bundle to a device\n"
	      "  revert DEVICE MODEL --controller URL            switch a device back to its previous slot\n"
	      "  release create|list|show ...                   releases with per-class variants\n"
	      "  rollout create|list|status|pause|resume|abort|rollback ...  staged rollouts\n"
	      "  pki init|issue-device|issue-server|issue-controller ...  fleet CA and certificates\n"
	      "\n"
	      "Run 'flotilla COMMAND --help' for a command's options.\n",
	      f);
}

int main(int argc, char **argv)
{
	fl_log_init("flotilla");
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(cmd, "key"))
		return cli_key_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "keyring"))
		return cli_keyring_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "bundle"))
		return cli_bundle_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "pki"))
		return cli_pki_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "push"))
		return cli_push_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "devices"))
		return cli_devices_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "deploy"))
		return cli_deploy_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "revert"))
		return cli_revert_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "rollout"))
		return cli_rollout_main(argc - 1, argv + 1);
	if (!strcmp(cmd, "release"))
		return cli_release_main(argc - 1, argv + 1);
	fprintf(stderr, "flotilla: unknown command '%s' (try 'flotilla --help')\n", cmd);
	return 2;
}
