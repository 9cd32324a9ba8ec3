#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include <flotilla/error.h>

static void test_every_code_has_a_distinct_name(void **state)
{
	(void)state;
	for (int c = FL_EBASE + 1; c < FL_ELAST; c++) {
		const char *m = fl_strerror(-c);
		assert_non_null(m);
		assert_string_not_equal(m, "unknown Flotilla error");
		for (int d = FL_EBASE + 1; d < c; d++)
			assert_string_not_equal(m, fl_strerror(-d));
	}
}

static void test_errno_and_edges(void **state)
{
	(void)state;
	assert_string_equal(fl_strerror(0), "success");
	assert_string_equal(fl_strerror(-ENOENT), "No such file or directory");
	assert_string_equal(fl_strerror(-FL_ELAST), "unknown Flotilla error");
	assert_string_equal(fl_strerror(-FL_EBASE - 5000), "unknown Flotilla error");
	assert_string_equal(fl_strerror(5), "unknown positive code");
	assert_non_null(fl_strerror(-999));
	assert_true(FL_EBASE >= 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_code_has_a_distinct_name),
		cmocka_unit_test(test_errno_and_edges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
