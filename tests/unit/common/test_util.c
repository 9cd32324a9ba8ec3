#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

static void test_strings(void **state)
{
	(void)state;
	char b[4];
	assert_int_equal(fl_strlcpy(b, "abcdef", sizeof(b)), 6);
	assert_string_equal(b, "abc");
	assert_int_equal(fl_strlcpy(b, "ab", sizeof(b)), 2);
	assert_string_equal(b, "ab");
	assert_int_equal(fl_snprintf(b, sizeof(b), "%d", 12), 2);
	assert_int_equal(fl_snprintf(b, sizeof(b), "%d", 1234), -FL_ETOOBIG);
	char *s = fl_asprintf("%s-%d", "x", 5);
	assert_string_equal(s, "x-5");
	free(s);
}

static void test_buf(void **state)
{
	(void)state;
	struct fl_buf b = {0};
	assert_int_equal(fl_buf_append(&b, "", 0), 0);
	assert_non_null(b.p);
	assert_string_equal(b.p, "");
	for (int i = 0; i < 1000; i++)
		assert_int_equal(fl_buf_append(&b, "abc", 3), 0);
	assert_int_equal(b.len, 3000);
	assert_int_equal(strlen(b.p), 3000);
	assert_memory_equal(b.p + 2997, "abc", 3);
	assert_true(b.cap > b.len);
	assert_int_equal(fl_buf_append(&b, "x", SIZE_MAX - 10), -ENOMEM);
	assert_int_equal(b.len, 3000);
	fl_buf_free(&b);
	assert_null(b.p);
	assert_int_equal(b.len, 0);
}

static void test_parse_i64(void **state)
{
	(void)state;
	int64_t v;
	assert_int_equal(fl_parse_i64("42", 0, 100, &v), 0);
	assert_int_equal(v, 42);
	assert_int_equal(fl_parse_i64("-7", -10, 10, &v), 0);
	assert_int_equal(v, -7);
	assert_int_equal(fl_parse_i64("101", 0, 100, &v), -ERANGE);
	assert_int_equal(fl_parse_i64("99999999999999999999", INT64_MIN, INT64_MAX, &v), -ERANGE);
	assert_int_equal(fl_parse_i64("", 0, 1, &v), -EINVAL);
	assert_int_equal(fl_parse_i64(" 1", 0, 1, &v), -EINVAL);
	assert_int_equal(fl_parse_i64("1 ", 0, 1, &v), -EINVAL);
	assert_int_equal(fl_parse_i64("0x10", 0, 100, &v), -EINVAL);
	assert_int_equal(fl_parse_i64("-", 0, 100, &v), -EINVAL);
	assert_int_equal(fl_parse_i64(NULL, 0, 100, &v), -EINVAL);
}

static void test_time(void **state)
{
	(void)state;
	int64_t t;
	assert_int_equal(fl_time_parse("2026-11-25T10:00:00Z", &t), 0);
	assert_int_equal(t, 1795600800);
	char out[21];
	fl_time_format(t, out);
	assert_string_equal(out, "2026-11-25T10:00:00Z");
	assert_int_equal(fl_time_parse("1970-01-01T00:00:00Z", &t), 0);
	assert_int_equal(t, 0);
	assert_int_equal(fl_time_parse("2024-02-29T00:00:00Z", &t), 0); /* leap day */
	static const char *const bad[] = {
		"2023-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-11-25 10:00:00Z",
		"2026-11-25T10:00:00", "2026-11-25T10:00:00+01:00", "2026-11-25T24:00:00Z",
		"1969-12-31T23:59:59Z", "2026-1-25T10:00:00Z", "+026-11-25T10:00:00Z", "",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(fl_time_parse(bad[i], &t), -EINVAL);
	assert_true(fl_now_s() > 1700000000);
	int64_t a = fl_mono_ns(), b = fl_mono_ns();
	assert_true(b >= a);
	assert_true(fl_mono_ms() >= 0);
}

static void test_names(void **state)
{
	(void)state;
	assert_true(fl_name_valid("llama-3.2_1b", 64));
	assert_false(fl_name_valid("", 64));
	assert_false(fl_name_valid(".hidden", 64));
	assert_false(fl_name_valid("-flag", 64));
	assert_false(fl_name_valid("a/b", 64));
	assert_false(fl_name_valid("a b", 64));
	assert_false(fl_name_valid("abcdef", 5));
	assert_true(fl_name_valid("abcde", 5));
	assert_false(fl_name_valid("caf\xc3\xa9", 64));
	assert_false(fl_name_valid(NULL, 64));
}

static void test_failpoints(void **state)
{
	(void)state;
	char *dir = fl_test_mkdtemp("fp");
	char *trace = fl_path_join(dir, "trace");
	setenv("FLOTILLA_FAILPOINTS", "a=fail,b=2*fail,junk,c=bogus,=fail", 1);
	setenv("FLOTILLA_FAILPOINT_TRACE", trace, 1);
	fl_failpoint_reload();
	assert_int_equal(FL_FAILPOINT("a"), -FL_EFAILPOINT);
	assert_int_equal(FL_FAILPOINT("a"), -FL_EFAILPOINT);
	assert_int_equal(FL_FAILPOINT("b"), 0);
	assert_int_equal(FL_FAILPOINT("b"), -FL_EFAILPOINT); /* only the 2nd time */
	assert_int_equal(FL_FAILPOINT("b"), 0);
	assert_int_equal(FL_FAILPOINT("c"), 0); /* unknown action ignored */
	assert_int_equal(FL_FAILPOINT("other"), 0);

	pid_t pid = fork();
	if (pid == 0) {
		setenv("FLOTILLA_FAILPOINTS", "die=kill", 1);
		fl_failpoint_reload();
		FL_FAILPOINT("die");
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGKILL);

	unsetenv("FLOTILLA_FAILPOINTS");
	unsetenv("FLOTILLA_FAILPOINT_TRACE");
	fl_failpoint_reload();
	assert_int_equal(FL_FAILPOINT("a"), 0);

	char *data;
	size_t len;
	assert_int_equal(fl_read_file(trace, 4096, &data, &len), 0);
	/* the child inherited the trace and recorded "die" before it was killed */
	assert_string_equal(data, "a\na\nb\nb\nb\nc\nother\ndie\n");
	free(data);
	free(trace);
	fl_rm_rf(dir);
	free(dir);
}

static void test_log(void **state)
{
	(void)state;
	enum fl_log_level l;
	assert_int_equal(fl_log_parse_level("debug", &l), 0);
	assert_int_equal(l, FL_LOG_DEBUG);
	assert_int_equal(fl_log_parse_level("warn", &l), 0);
	assert_int_equal(l, FL_LOG_WARN);
	assert_int_equal(fl_log_parse_level("loud", &l), -EINVAL);

	/* Capture stderr through a pipe and check format, level filter and
	 * that a newline in a message cannot forge a second record. */
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	int saved = dup(2);
	dup2(fds[1], 2);
	unsetenv("JOURNAL_STREAM");
	fl_log_init("unit");
	fl_log_set_level(FL_LOG_INFO);
	fl_debug("hidden %d", 1);
	fl_warn("shown %d\nforged", 2);
	dup2(saved, 2);
	close(saved);
	close(fds[1]);
	char buf[512] = "";
	ssize_t n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	assert_true(n > 0);
	assert_null(strstr(buf, "hidden"));
	assert_non_null(strstr(buf, "unit["));
	assert_non_null(strstr(buf, "warn: shown 2 forged\n"));
	assert_int_equal(strchr(buf, '\n') - buf, n - 1); /* exactly one line */
	assert_int_equal(fl_log_get_level(), FL_LOG_INFO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_strings),   cmocka_unit_test(test_buf),
		cmocka_unit_test(test_parse_i64),
		cmocka_unit_test(test_time),      cmocka_unit_test(test_names),
		cmocka_unit_test(test_failpoints), cmocka_unit_test(test_log),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
