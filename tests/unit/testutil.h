/* Helpers shared by the cmocka unit tests (header-only). */
#ifndef FLOTILLA_TESTUTIL_H
#define FLOTILLA_TESTUTIL_H

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <flotilla/fs.h>

/* A fresh, empty directory for one test; caller frees the path and may
 * remove the tree with fl_rm_rf(). */
static inline char *fl_test_mkdtemp(const char *tag)
{
	const char *base = getenv("FL_TEST_TMPDIR");
	if (!base || !*base)
		base = "/tmp";
	fl_mkdir_p(base, 0755);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s.XXXXXX", base, tag);
	if (!mkdtemp(path))
		return NULL;
	return strdup(path);
}

/* Number of directory entries (other than . and ..) under DIR, recursively;
 * -1 if DIR cannot be opened. Used to assert that a failed operation left no
 * file behind. */
static inline int fl_test_count_files(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		n++;
		char *sub = fl_path_join(dir, de->d_name);
		struct stat st;
		if (sub && lstat(sub, &st) == 0 && S_ISDIR(st.st_mode)) {
			int k = fl_test_count_files(sub);
			if (k > 0)
				n += k;
		}
		free(sub);
	}
	closedir(d);
	return n;
}

static inline int fl_test_write(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	size_t w = fwrite(data, 1, len, f);
	fclose(f);
	return w == len ? 0 : -1;
}

#endif
