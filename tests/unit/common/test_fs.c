#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/fs.h>

static void test_atomic_write_and_read(void **state)
{
	(void)state;
	char *dir = fl_test_mkdtemp("fs");
	char *p = fl_path_join(dir, "file");
	assert_int_equal(fl_write_file_atomic(p, "hello", 5, 0600), 0);
	char *data;
	size_t len;
	assert_int_equal(fl_read_file(p, 100, &data, &len), 0);
	assert_int_equal(len, 5);
	assert_string_equal(data, "hello");
	free(data);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	/* replace */
	assert_int_equal(fl_write_file_atomic(p, "bye", 3, 0644), 0);
	assert_int_equal(fl_read_file(p, 100, &data, &len), 0);
	assert_string_equal(data, "bye");
	free(data);
	assert_int_equal(fl_read_file(p, 2, &data, &len), -FL_ETOOBIG);
	assert_int_equal(fl_read_file(dir, 100, &data, &len), -EINVAL); /* a directory */
	char *missing = fl_path_join(dir, "nope/x");
	assert_int_equal(fl_write_file_atomic(missing, "x", 1, 0644), -ENOENT);
	assert_int_equal(fl_read_file(missing, 10, &data, &len), -ENOENT);
	free(missing);
	/* only the file itself: no temporary left behind */
	assert_int_equal(fl_test_count_files(dir), 1);
	free(p);
	fl_rm_rf(dir);
	free(dir);
}

static void test_atomic_write_failpoints(void **state)
{
	(void)state;
	char *dir = fl_test_mkdtemp("fsfp");
	char *p = fl_path_join(dir, "file");
	assert_int_equal(fl_write_file_atomic(p, "old", 3, 0644), 0);

	/* A failed call before the rename keeps the old content and no temp. */
	setenv("FLOTILLA_FAILPOINTS", "fs.atomic.before_rename=fail", 1);
	fl_failpoint_reload();
	assert_int_equal(fl_write_file_atomic(p, "new", 3, 0644), -FL_EFAILPOINT);
	char *data;
	size_t len;
	assert_int_equal(fl_read_file(p, 10, &data, &len), 0);
	assert_string_equal(data, "old");
	free(data);
	assert_int_equal(fl_test_count_files(dir), 1);

	/* A power cut (exit) before the rename: the old file is intact. */
	setenv("FLOTILLA_FAILPOINTS", "fs.atomic.before_rename=exit", 1);
	pid_t pid = fork();
	if (pid == 0) {
		fl_failpoint_reload();
		fl_write_file_atomic(p, "new", 3, 0644);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), FL_FAILPOINT_EXIT_CODE);
	assert_int_equal(fl_read_file(p, 10, &data, &len), 0);
	assert_string_equal(data, "old");
	free(data);

	/* After the rename: the new content is there. */
	setenv("FLOTILLA_FAILPOINTS", "fs.atomic.after_rename=exit", 1);
	pid = fork();
	if (pid == 0) {
		fl_failpoint_reload();
		fl_write_file_atomic(p, "new", 3, 0644);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	assert_int_equal(WEXITSTATUS(status), FL_FAILPOINT_EXIT_CODE);
	assert_int_equal(fl_read_file(p, 10, &data, &len), 0);
	assert_string_equal(data, "new");
	free(data);
	unsetenv("FLOTILLA_FAILPOINTS");
	fl_failpoint_reload();
	free(p);
	fl_rm_rf(dir);
	free(dir);
}

static void test_dirs_and_links(void **state)
{
	(void)state;
	char *dir = fl_test_mkdtemp("fsdir");
	char *deep = fl_path_join(dir, "a/b/c");
	assert_int_equal(fl_mkdir_p(deep, 0755), 0);
	assert_int_equal(fl_mkdir_p(deep, 0755), 0); /* exists: fine */
	assert_int_equal(fl_fsync_dir(deep), 0);
	assert_int_equal(fl_fsync_parent(deep), 0);
	char *f = fl_path_join(deep, "f");
	assert_int_equal(fl_write_file_atomic(f, "x", 1, 0644), 0);
	assert_int_equal(fl_mkdir_p(f, 0755), -ENOTDIR);

	/* rm -rf must not follow a symlink out of the tree */
	char *outside = fl_test_mkdtemp("fsoutside");
	char *keep = fl_path_join(outside, "keep");
	assert_int_equal(fl_write_file_atomic(keep, "k", 1, 0644), 0);
	char *link = fl_path_join(dir, "a/link");
	assert_int_equal(symlink(outside, link), 0);

	char *cur = fl_path_join(dir, "current");
	assert_int_equal(fl_symlink_atomic("a", cur), 0);
	char buf[64];
	ssize_t n = readlink(cur, buf, sizeof(buf));
	assert_int_equal(n, 1);
	assert_memory_equal(buf, "a", 1);
	assert_int_equal(fl_symlink_atomic("b", cur), 0);
	n = readlink(cur, buf, sizeof(buf));
	assert_int_equal(n, 1);
	assert_memory_equal(buf, "b", 1);

	char *a = fl_path_join(dir, "a");
	assert_int_equal(fl_rm_rf(a), 0);
	assert_int_equal(access(a, F_OK), -1);
	assert_int_equal(access(keep, F_OK), 0);
	assert_int_equal(fl_rm_rf(a), 0); /* missing: success */

	uint64_t free_bytes = 0;
	assert_int_equal(fl_disk_free(dir, &free_bytes), 0);
	assert_true(free_bytes > 0);
	assert_int_equal(fl_disk_free("/nonexistent/path", &free_bytes), -ENOENT);

	char *j = fl_path_join("/x//", "/y");
	assert_string_equal(j, "/x/y");
	free(j);
	j = fl_path_join("/", "y");
	assert_string_equal(j, "/y");
	free(j);

	free(a);
	free(cur);
	free(link);
	free(keep);
	fl_rm_rf(outside);
	free(outside);
	free(f);
	free(deep);
	fl_rm_rf(dir);
	free(dir);
}

static void test_read_write_all(void **state)
{
	(void)state;
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	assert_int_equal(fl_write_all(fds[1], "abcdef", 6), 0);
	close(fds[1]);
	char buf[8];
	assert_int_equal(fl_read_all(fds[0], buf, 4), 0);
	assert_memory_equal(buf, "abcd", 4);
	assert_int_equal(fl_read_all(fds[0], buf, 4), -EIO); /* only 2 left */
	close(fds[0]);
	assert_int_equal(fl_write_all(-1, "x", 1), -EBADF);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_atomic_write_and_read),
		cmocka_unit_test(test_atomic_write_failpoints),
		cmocka_unit_test(test_dirs_and_links),
		cmocka_unit_test(test_read_write_all),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
