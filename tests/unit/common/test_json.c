#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <flotilla/error.h>
#include <flotilla/json.h>

static int parse(const char *s, cJSON **ret)
{
	return fl_json_parse(s, strlen(s), 4096, 4, ret);
}

static void test_parse_limits(void **state)
{
	(void)state;
	cJSON *j = NULL;
	assert_int_equal(parse("{\"a\":[1,{\"b\":2}]}", &j), 0);
	cJSON_Delete(j);
	assert_int_equal(parse("[[[[1]]]]", &j), 0); /* depth 4 exactly */
	cJSON_Delete(j);
	assert_int_equal(parse("[[[[[1]]]]]", &j), -FL_ETOODEEP);
	/* brackets inside strings do not count */
	assert_int_equal(parse("{\"a\":\"[[[[[[[[\"}", &j), 0);
	cJSON_Delete(j);
	assert_int_equal(parse("{\"a\":\"\\\"[[[[[[\"}", &j), 0); /* escaped quote */
	cJSON_Delete(j);
	char big[5000];
	memset(big, ' ', sizeof(big));
	big[0] = '1';
	assert_int_equal(fl_json_parse(big, sizeof(big), 4096, 4, &j), -FL_ETOOBIG);
	assert_int_equal(parse("{\"a\":1} x", &j), -FL_EINVAL_JSON);   /* trailing garbage */
	assert_int_equal(parse("{\"a\":1}  \n", &j), 0);               /* trailing blanks ok */
	cJSON_Delete(j);
	assert_int_equal(parse("{\"a\":1,}", &j), -FL_EINVAL_JSON);
	assert_int_equal(parse("", &j), -FL_EINVAL_JSON);
	assert_int_equal(parse("{\"a\":1,\"a\":2}", &j), -FL_EINVAL_JSON); /* duplicate key */
	assert_int_equal(parse("[{\"x\":{\"k\":1,\"k\":1}}]", &j), -FL_EINVAL_JSON);
	const char nul[] = "{\"a\":1}\0{";
	assert_int_equal(fl_json_parse(nul, sizeof(nul) - 1, 100, 4, &j), -FL_EINVAL_JSON);
	/* not NUL-terminated input is fine */
	char nt[7] = {'[', '1', ',', '2', ']', 'X', 'X'};
	assert_int_equal(fl_json_parse(nt, 5, 100, 4, &j), 0);
	assert_int_equal(cJSON_GetArraySize(j), 2);
	cJSON_Delete(j);
	assert_int_equal(fl_json_parse(NULL, 0, 100, 4, &j), -EINVAL);
}

/* A large object with a duplicate far apart is found; a large object of
 * distinct keys parses (the check is O(n log n), not quadratic). */
static void test_duplicates_in_big_objects(void **state)
{
	(void)state;
	size_t n = 50000, cap = n * 16 + 16;
	char *buf = malloc(cap), *p = buf;
	*p++ = '{';
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, "%s\"k%zu\":1", i ? "," : "", i);
	*p++ = '}';
	cJSON *j = NULL;
	assert_int_equal(fl_json_parse(buf, (size_t)(p - buf), cap, 4, &j), 0);
	assert_int_equal(cJSON_GetArraySize(j), (int)n);
	cJSON_Delete(j);
	p[-1] = ',';
	p += sprintf(p, "\"k7\":2}");
	assert_int_equal(fl_json_parse(buf, (size_t)(p - buf), cap, 4, &j), -FL_EINVAL_JSON);
	free(buf);
}

static void test_getters(void **state)
{
	(void)state;
	cJSON *j;
	assert_int_equal(parse("{\"s\":\"x\",\"i\":42,\"f\":1.5,\"neg\":-3,\"b\":true,"
			       "\"o\":{},\"a\":[],\"big\":1e300,\"huge\":9007199254740993}",
			       &j),
			 0);
	const char *s;
	int64_t i;
	double d;
	bool b;
	const cJSON *o;
	assert_int_equal(fl_json_get_str(j, "s", &s), 0);
	assert_string_equal(s, "x");
	assert_int_equal(fl_json_get_str(j, "i", &s), -FL_ESCHEMA);
	assert_int_equal(fl_json_get_str(j, "missing", &s), -FL_ESCHEMA);
	assert_int_equal(fl_json_get_str_opt(j, "missing", "def", &s), 0);
	assert_string_equal(s, "def");
	assert_int_equal(fl_json_get_str_opt(j, "i", "def", &s), -FL_ESCHEMA);

	assert_int_equal(fl_json_get_int(j, "i", 0, 100, &i), 0);
	assert_int_equal(i, 42);
	assert_int_equal(fl_json_get_int(j, "i", 0, 41, &i), -FL_ERANGE);
	assert_int_equal(fl_json_get_int(j, "neg", 0, 100, &i), -FL_ERANGE);
	assert_int_equal(fl_json_get_int(j, "f", 0, 100, &i), -FL_ERANGE); /* not integral */
	assert_int_equal(fl_json_get_int(j, "big", INT64_MIN, INT64_MAX, &i), -FL_ERANGE);
	assert_int_equal(fl_json_get_int(j, "huge", INT64_MIN, INT64_MAX, &i), -FL_ERANGE);
	assert_int_equal(fl_json_get_int(j, "s", 0, 100, &i), -FL_ESCHEMA);
	assert_int_equal(fl_json_get_int_opt(j, "missing", 0, 100, 7, &i), 0);
	assert_int_equal(i, 7);

	assert_int_equal(fl_json_get_double(j, "f", 0, 2, &d), 0);
	assert_true(d == 1.5);
	assert_int_equal(fl_json_get_double(j, "f", 0, 1, &d), -FL_ERANGE);
	assert_int_equal(fl_json_get_double(j, "b", 0, 1, &d), -FL_ESCHEMA);
	assert_int_equal(fl_json_get_double_opt(j, "missing", 0, 1, 0.25, &d), 0);
	assert_true(d == 0.25);

	assert_int_equal(fl_json_get_bool(j, "b", &b), 0);
	assert_true(b);
	assert_int_equal(fl_json_get_bool(j, "i", &b), -FL_ESCHEMA);
	assert_int_equal(fl_json_get_bool_opt(j, "missing", false, &b), 0);
	assert_false(b);

	assert_int_equal(fl_json_get_obj(j, "o", &o), 0);
	assert_int_equal(fl_json_get_obj(j, "a", &o), -FL_ESCHEMA);
	assert_int_equal(fl_json_get_arr(j, "a", &o), 0);
	assert_int_equal(fl_json_get_arr(j, "o", &o), -FL_ESCHEMA);
	/* getters on a non-object */
	assert_int_equal(fl_json_get_str(cJSON_GetObjectItem(j, "a"), "s", &s), -FL_ESCHEMA);
	cJSON_Delete(j);
}

static void test_check_keys_and_print(void **state)
{
	(void)state;
	cJSON *j;
	assert_int_equal(parse("{\"a\":1,\"b\":2}", &j), 0);
	static const char *const ok[] = {"a", "b", "c", NULL};
	static const char *const few[] = {"a", NULL};
	const char *bad = NULL;
	assert_int_equal(fl_json_check_keys(j, ok, &bad), 0);
	assert_int_equal(fl_json_check_keys(j, few, &bad), -FL_ESCHEMA);
	assert_string_equal(bad, "b");
	char *out = fl_json_print(j);
	assert_string_equal(out, "{\"a\":1,\"b\":2}");
	free(out);
	cJSON_Delete(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_limits),
		cmocka_unit_test(test_getters),
		cmocka_unit_test(test_duplicates_in_big_objects),
		cmocka_unit_test(test_check_keys_and_print),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
