/* fl_pki_cli: `flotilla pki` on its own (the same controller/cli/cmd_pki.c),
 * so the broker integration test does not depend on the rest of the CLI.
 * Usage is the CLI's: fl_pki_cli pki COMMAND [OPTIONS]. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include <flotilla/error.h>

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

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "pki") != 0) {
		fputs("usage: fl_pki_cli pki COMMAND [OPTIONS] (see 'fl_pki_cli pki --help')\n", stderr);
		return 2;
	}
	return cli_pki_main(argc - 1, argv + 1);
}
