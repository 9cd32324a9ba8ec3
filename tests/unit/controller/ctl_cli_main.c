/* fl_ctl_cli push|devices ...: the controller commands of the CLI alone. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "http_client.h"
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
	if (argc >= 2 && !strcmp(argv[1], "push"))
		return cli_push_main(argc - 1, argv + 1);
	if (argc >= 2 && !strcmp(argv[1], "devices"))
		return cli_devices_main(argc - 1, argv + 1);
	fputs("usage: fl_ctl_cli push|devices ...\n", stderr);
	return 2;
}
