/* flotilla-controller: the central service. */
#include <stdio.h>
#include <string.h>

#include <flotilla/log.h>

int main(int argc, char **argv)
{
	fl_log_init("flotilla-controller");
	if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		puts("usage: flotilla-controller [--help]");
		return 0;
	}
	fprintf(stderr, "flotilla-controller: nothing to do yet (see README)\n");
	return 2;
}
