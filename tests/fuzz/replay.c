/* Replay driver for libFuzzer targets outside the fuzz preset: feeds every file
 * of the given corpus directories (or files) to LLVMFuzzerTestOneInput once.
 * Fails if a directory is empty, so a lost corpus does not pass silently. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		return -1;
	}
	struct stat st;
	if (fstat(fileno(f), &st) < 0 || st.st_size > 64 * 1024 * 1024) {
		fclose(f);
		fprintf(stderr, "%s: unreadable or too large\n", path);
		return -1;
	}
	size_t n = (size_t)st.st_size;
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf || fread(buf, 1, n, f) != n) {
		free(buf);
		fclose(f);
		fprintf(stderr, "%s: read failed\n", path);
		return -1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, n);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned long files = 0;
	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) < 0) {
			perror(argv[i]);
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			if (run_file(argv[i]) < 0)
				return 1;
			files++;
			continue;
		}
		struct dirent **names;
		int n = scandir(argv[i], &names, NULL, alphasort);
		if (n < 0) {
			perror(argv[i]);
			return 1;
		}
		for (int j = 0; j < n; j++) {
			if (names[j]->d_name[0] != '.') {
				char *path = NULL;
				if (asprintf(&path, "%s/%s", argv[i], names[j]->d_name) < 0 ||
				    run_file(path) < 0)
					return 1;
				free(path);
				files++;
			}
			free(names[j]);
		}
		free(names);
	}
	printf("replayed %lu inputs\n", files);
	return files > 0 ? 0 : 1;
}
