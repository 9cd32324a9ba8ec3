/* flotilla-agent: the device daemon. */
#include <stdio.h>
#include <string.h>

#include <flotilla/log.h>

int main(int argc, char **argv)
{
	fl_log_init("flotilla-agent");
	if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		puts("usage: flotilla-agent [--help]");
		return 0;
	}
	fprintf(stderr, "flotilla-agent: nothing to do yet (see README)\n");
	return 2;
}
