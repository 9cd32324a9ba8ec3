#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testutil.h"
#include <flotilla/config.h>
#include <flotilla/error.h>

static int parse(const char *s, struct fl_config **c, char *err, size_t el)
{
	return fl_config_parse(s, strlen(s), c, err, el);
}

static void test_parse_and_get(void **state)
{
	(void)state;
	const char *text = "# comment\n"
			   "log_level = debug\n"
			   "; other comment\n"
			   "\n"
			   "[mqtt]\n"
			   "  host =  127.0.0.1  \n"
			   "port=8883\r\n"
			   "[ ota ]\n"
			   "max_bytes = 2G\n"
			   "cache = 64k\n"
			   "label = \" spaced value \"\n"
			   "enabled = yes\n"
			   "off = off\n"
			   "bad_bool = maybe\n"
			   "neg = -5";
	struct fl_config *c = NULL;
	char err[128];
	assert_int_equal(parse(text, &c, err, sizeof(err)), 0);
	assert_int_equal(fl_config_count(c), 10);
	assert_string_equal(fl_config_get_str(c, "log_level", NULL), "debug");
	assert_string_equal(fl_config_get_str(c, "mqtt.host", NULL), "127.0.0.1");
	assert_string_equal(fl_config_get_str(c, "ota.label", NULL), " spaced value ");
	assert_null(fl_config_get_str(c, "host", NULL));
	assert_string_equal(fl_config_get_str(c, "nope", "dflt"), "dflt");
	int64_t v;
	assert_int_equal(fl_config_get_int(c, "mqtt.port", 1, 65535, 0, &v), 0);
	assert_int_equal(v, 8883);
	assert_int_equal(fl_config_get_int(c, "ota.max_bytes", 0, INT64_MAX, 0, &v), 0);
	assert_int_equal(v, 2LL << 30);
	assert_int_equal(fl_config_get_int(c, "ota.cache", 0, INT64_MAX, 0, &v), 0);
	assert_int_equal(v, 65536);
	assert_int_equal(fl_config_get_int(c, "ota.neg", -10, 10, 0, &v), 0);
	assert_int_equal(v, -5);
	assert_int_equal(fl_config_get_int(c, "ota.neg", 0, 10, 0, &v), -FL_ECONFIG);
	assert_int_equal(fl_config_get_int(c, "mqtt.host", 0, 10, 0, &v), -FL_ECONFIG);
	assert_int_equal(fl_config_get_int(c, "absent", 0, 10, 3, &v), 0);
	assert_int_equal(v, 3);
	bool b;
	assert_int_equal(fl_config_get_bool(c, "ota.enabled", false, &b), 0);
	assert_true(b);
	assert_int_equal(fl_config_get_bool(c, "ota.off", true, &b), 0);
	assert_false(b);
	assert_int_equal(fl_config_get_bool(c, "ota.bad_bool", true, &b), -FL_ECONFIG);
	assert_int_equal(fl_config_get_bool(c, "absent", true, &b), 0);
	assert_true(b);

	static const char *const allowed[] = {"log_level", "mqtt.host", "mqtt.port",
					      "ota.max_bytes", "ota.cache", "ota.label",
					      "ota.enabled", "ota.off", "ota.bad_bool", NULL};
	const char *bad = NULL;
	assert_int_equal(fl_config_check_keys(c, allowed, &bad), -FL_ECONFIG);
	assert_string_equal(bad, "ota.neg");
	fl_config_free(c);
	fl_config_free(NULL);
}

static void test_errors(void **state)
{
	(void)state;
	static const struct { const char *text; const char *msg; } bad[] = {
		{"a = 1\na = 2\n", "line 2: duplicate key 'a'"},
		{"just words\n", "line 1: expected 'key = value'"},
		{"[sec\n", "line 1: bad section header"},
		{"[]\n", "line 1: bad section name"},
		{"[a b]\n", "line 1: bad section name"},
		{"k y = v\n", "line 1: bad key"},
		{" = v\n", "line 1: bad key"},
		{"k = \"open\n", "line 1: unbalanced quote"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct fl_config *c = NULL;
		char err[128] = "";
		assert_int_equal(parse(bad[i].text, &c, err, sizeof(err)), -FL_ECONFIG);
		assert_string_equal(err, bad[i].msg);
		assert_null(c);
	}
	/* overlong line */
	char *line = malloc(5000);
	memset(line, 'x', 4999);
	line[0] = 'k';
	line[1] = '=';
	line[4999] = '\0';
	struct fl_config *c = NULL;
	assert_int_equal(parse(line, &c, NULL, 0), -FL_ECONFIG);
	free(line);
	/* NUL byte inside */
	assert_int_equal(fl_config_parse("a = 1\0b", 7, &c, NULL, 0), -FL_ECONFIG);
	/* too many settings */
	size_t cap = 1100 * 16;
	char *many = malloc(cap), *p = many;
	for (int i = 0; i < 1100; i++)
		p += sprintf(p, "k%d = %d\n", i, i);
	assert_int_equal(parse(many, &c, NULL, 0), -FL_ECONFIG);
	free(many);
	/* too big a file */
	char *huge = calloc(1, (1u << 20) + 2);
	memset(huge, '#', (1u << 20) + 1);
	assert_int_equal(fl_config_parse(huge, (1u << 20) + 1, &c, NULL, 0), -FL_ECONFIG);
	free(huge);
	/* integer overflow with a unit */
	assert_int_equal(parse("n = 9999999999999G\n", &c, NULL, 0), 0);
	int64_t v;
	assert_int_equal(fl_config_get_int(c, "n", INT64_MIN, INT64_MAX, 0, &v), -FL_ECONFIG);
	fl_config_free(c);
}

static void test_load(void **state)
{
	(void)state;
	char *dir = fl_test_mkdtemp("config");
	char *p = fl_path_join(dir, "agent.conf");
	const char *t = "[agent]\nid = dev-1\n";
	assert_int_equal(fl_test_write(p, t, strlen(t)), 0);
	struct fl_config *c = NULL;
	char err[256];
	assert_int_equal(fl_config_load(p, &c, err, sizeof(err)), 0);
	assert_string_equal(fl_config_get_str(c, "agent.id", NULL), "dev-1");
	fl_config_free(c);
	const char *bad = "[agent]\nid\n";
	assert_int_equal(fl_test_write(p, bad, strlen(bad)), 0);
	assert_int_equal(fl_config_load(p, &c, err, sizeof(err)), -FL_ECONFIG);
	assert_non_null(strstr(err, "agent.conf: line 2"));
	char *missing = fl_path_join(dir, "missing.conf");
	assert_int_equal(fl_config_load(missing, &c, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "missing.conf"));
	free(missing);
	free(p);
	fl_rm_rf(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_and_get),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_load),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
