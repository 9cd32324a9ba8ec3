/* The operator's CLI: one entry per command group, each in its own file.
 * Each returns the process exit code (0 ok, 1 failure, 2 usage) and prints
 * errors as one clear line on stderr: "flotilla: <what>: <why>". */
#ifndef FLOTILLA_CLI_H
#define FLOTILLA_CLI_H

#include <stddef.h>
#include <stdio.h>

int cli_key_main(int argc, char **argv);     /* flotilla key ... */
int cli_keyring_main(int argc, char **argv); /* flotilla keyring ... */
int cli_bundle_main(int argc, char **argv);  /* flotilla bundle ... */
int cli_pki_main(int argc, char **argv);     /* flotilla pki ... */
int cli_push_main(int argc, char **argv);    /* flotilla push | bundle push */
int cli_devices_main(int argc, char **argv); /* flotilla devices ... */
int cli_deploy_main(int argc, char **argv);  /* flotilla deploy DEVICE MODEL@VERSION */
int cli_revert_main(int argc, char **argv);  /* flotilla revert DEVICE MODEL */
int cli_rollout_main(int argc, char **argv); /* flotilla rollout ... */
int cli_release_main(int argc, char **argv); /* flotilla release ... */

/* A command group's sub-commands, for cli_dispatch(). */
struct cli_cmd {
	const char *name;
	int (*run)(int argc, char **argv); /* argv[0] is the sub-command name */
};

/* Run the sub-command named by ARGV[1] of GROUP ("bundle", "key" ...):
 * no argument prints USAGE to stderr (exit 2), -h/--help/help to stdout
 * (exit 0), an unknown name is one error line (exit 2). getopt is reset so
 * the sub-command parses ARGV[1..] as its own argv. */
int cli_dispatch(const char *group, const struct cli_cmd *cmds, size_t n, void (*usage)(FILE *),
		 int argc, char **argv);

/* Print "flotilla: " + message + ": " + fl_strerror(err) to stderr. */
void cli_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
