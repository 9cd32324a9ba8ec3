/* Registry: strict state parsing, upserts, last will, refusals change nothing. */
#include <errno.h>
#include <stdio.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>

#define GOOD_STATE                                                                               \
	"{\"v\": 1, \"device\": \"gw-0042\", \"online\": true, \"ts\": \"2026-11-25T10:00:00Z\","  \
	" \"agent\": \"0.1.0\","                                                                   \
	" \"hw\": {\"arch\": \"aarch64\", \"ram_mb\": 3900, \"accelerators\": [], \"backends\": "  \
	"[\"gguf\"]},"                                                                             \
	" \"labels\": {\"site\": \"plant-7\", \"line\": \"3\"},"                                   \
	" \"models\": {\"defect-llm\": {"                                                          \
	"   \"current\": \"b\","                                                                   \
	"   \"slots\": {\"a\": {\"status\": \"ready\", \"version\": \"1.3.0\", \"sequence\": 41},"   \
	"             \"b\": {\"status\": \"ready\", \"version\": \"1.4.0\", \"sequence\": 42}},"   \
	"   \"install\": {\"version\": \"1.4.0\", \"state\": \"TRIAL\", \"error\": \"\","          \
	"               \"bytes_done\": 1048576, \"bytes_total\": 734003200,"                      \
	"               \"chunks_done\": 12, \"chunks_total\": 9000}}}}"

static int on_state(struct ctl *c, const char *id, const char *s)
{
	return ctl_registry_on_state(c, id, s, strlen(s));
}

static void test_state_upsert(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-reg", NULL, &dir);
	assert_int_equal(on_state(c, "gw-0042", GOOD_STATE), 0);
	cJSON *o = NULL;
	assert_int_equal(ctl_device_get(c, "gw-0042", &o), 0);
	cJSON *d = cJSON_GetObjectItem(o, "device");
	assert_string_equal(cJSON_GetObjectItem(d, "arch")->valuestring, "aarch64");
	assert_int_equal(cJSON_GetObjectItem(d, "ram_mb")->valueint, 3900);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(d, "online")));
	assert_string_equal(cJSON_GetObjectItem(d, "agent")->valuestring, "0.1.0");
	assert_string_equal(
		cJSON_GetObjectItem(cJSON_GetObjectItem(d, "labels"), "site")->valuestring, "plant-7");
	assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(d, "backends"), 0)->valuestring,
			    "gguf");
	cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "models"), 0);
	assert_string_equal(cJSON_GetObjectItem(m, "model")->valuestring, "defect-llm");
	assert_string_equal(cJSON_GetObjectItem(m, "version")->valuestring, "1.4.0");
	assert_string_equal(cJSON_GetObjectItem(m, "current")->valuestring, "b");
	cJSON *in = cJSON_GetObjectItem(m, "install");
	assert_string_equal(cJSON_GetObjectItem(in, "state")->valuestring, "TRIAL");
	assert_int_equal(cJSON_GetObjectItem(in, "chunks_total")->valueint, 9000);
	cJSON_Delete(o);

	/* Filters. */
	struct ctl_device_filter f = {.online = 1, .label_key = "site", .label_value = "plant-7",
				      .arch = "aarch64", .version = "1.4.0"};
	assert_int_equal(ctu_count_devices(c, &f), 1);
	f.version = "1.3.0"; /* only in the other slot */
	assert_int_equal(ctu_count_devices(c, &f), 0);

	/* A new state replaces the model list. */
	assert_int_equal(on_state(c, "gw-0042",
				  "{\"v\":1,\"device\":\"gw-0042\",\"online\":true,\"agent\":\"0.2.0\","
				  "\"hw\":{\"arch\":\"aarch64\",\"ram_mb\":3900,\"accelerators\":[],"
				  "\"backends\":[]}}"),
			 0);
	assert_int_equal(ctl_device_get(c, "gw-0042", &o), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "models")), 0);
	assert_string_equal(
		cJSON_GetObjectItem(cJSON_GetObjectItem(o, "device"), "agent")->valuestring, "0.2.0");
	cJSON_Delete(o);

	/* The last will marks it offline and keeps the rest. */
	assert_int_equal(on_state(c, "gw-0042", "{\"v\": 1, \"device\": \"gw-0042\", \"online\": false}"),
			 0);
	struct ctl_device_filter on = {.online = 1}, off = {.online = 0};
	assert_int_equal(ctu_count_devices(c, &on), 0);
	assert_int_equal(ctu_count_devices(c, &off), 1);
	assert_int_equal(ctl_device_get(c, "gw-0042", &o), 0);
	assert_string_equal(
		cJSON_GetObjectItem(cJSON_GetObjectItem(o, "device"), "arch")->valuestring, "aarch64");
	cJSON_Delete(o);
	/* A last will of a device never seen creates a bare offline row. */
	assert_int_equal(on_state(c, "gw-9", "{\"v\":1,\"device\":\"gw-9\",\"online\":false}"), 0);
	assert_int_equal(ctu_count_devices(c, &off), 2);

	struct ctl_counters k;
	ctl_get_counters(c, &k);
	assert_int_equal(k.state_ok, 2);
	assert_int_equal(k.state_offline, 2);
	assert_int_equal(k.state_refused, 0);
	ctu_close(c, dir);
}

struct bad_case {
	const char *id;
	const char *json;
	int code;
};

static void test_state_refused(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-reg-bad", NULL, &dir);
	assert_int_equal(on_state(c, "gw-0042", GOOD_STATE), 0);
	char *before = ctu_device_text(c, "gw-0042");
	assert_non_null(before);

#define HW "\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":1,\"accelerators\":[],\"backends\":[]}"
#define BASE "{\"v\":1,\"device\":\"gw-0042\",\"online\":true,\"agent\":\"9\","
	static const struct bad_case cases[] = {
		{"gw-0042", "not json", -FL_EINVAL_JSON},
		{"gw-0042", "[1,2]", -FL_ESCHEMA},
		{"gw-0042", BASE HW ",\"extra\":1}", -FL_ESCHEMA},
		{"gw-0042", "{\"v\":2,\"device\":\"gw-0042\",\"online\":true}", -FL_EUNSUPPORTED},
		{"gw-0042", "{\"v\":1,\"device\":\"gw-0043\",\"online\":false}", -FL_EPROTO},
		{"../etc", "{\"v\":1,\"device\":\"../etc\",\"online\":false}", -FL_EPROTO},
		{"gw-0042", "{\"v\":1,\"device\":\"gw-0042\",\"online\":\"yes\"}", -FL_ESCHEMA},
		{"gw-0042", BASE "\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":\"1\",\"accelerators\":[],"
				 "\"backends\":[]}}",
		 -FL_ESCHEMA},
		{"gw-0042", BASE "\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":-1,\"accelerators\":[],"
				 "\"backends\":[]}}",
		 -FL_ERANGE},
		{"gw-0042", BASE "\"hw\":{\"arch\":\"x86_64\",\"ram_mb\":1,\"accelerators\":[],"
				 "\"backends\":[],\"gpu\":1}}",
		 -FL_ESCHEMA},
		{"gw-0042", BASE HW ",\"labels\":{\"bad key\":\"x\"}}", -FL_ESCHEMA},
		{"gw-0042", BASE HW ",\"labels\":{\"k\":1}}", -FL_ESCHEMA},
		{"gw-0042", BASE HW ",\"models\":{\"m\":{\"current\":\"c\"}}}", -FL_ESCHEMA},
		{"gw-0042", BASE HW ",\"models\":{\"m\":{\"slots\":{\"z\":{\"status\":\"ready\"}}}}}",
		 -FL_ESCHEMA},
		{"gw-0042", BASE HW ",\"models\":{\"m\":{\"install\":{\"state\":\"X\",\"bytes_done\":1.5}}}}",
		 -FL_ERANGE},
		{"gw-0042", BASE "\"hw\":{}}", -FL_ESCHEMA},
		{"gw-0042", "{\"v\":1,\"device\":\"gw-0042\",\"online\":true}", -FL_ESCHEMA},
		{"gw-0042", "{\"v\":1,\"device\":\"gw-0042\",\"online\":false,\"agent\":\"1\"}",
		 -FL_ESCHEMA},
		{"gw-0042", BASE HW ",\"ts\":\"yesterday\"}", -FL_ESCHEMA},
		{"gw-0042", BASE HW ",\"models\":{\"m\":{\"x\":[[[[[[[[[[1]]]]]]]]]]}}}", -FL_ETOODEEP},
	};
	size_t n = sizeof(cases) / sizeof(cases[0]);
	for (size_t i = 0; i < n; i++) {
		int r = on_state(c, cases[i].id, cases[i].json);
		if (r != cases[i].code)
			fail_msg("case %zu (%s): got %s, want %s", i, cases[i].json, fl_strerror(r),
				 fl_strerror(cases[i].code));
	}
	/* Over 64 KiB: refused before parsing. */
	size_t big = CTL_STATE_MAX_BYTES + 1;
	char *huge = malloc(big);
	memset(huge, ' ', big);
	huge[0] = '{';
	huge[big - 1] = '}';
	assert_int_equal(ctl_registry_on_state(c, "gw-0042", huge, big), -FL_ETOOBIG);
	free(huge);

	char *after = ctu_device_text(c, "gw-0042");
	assert_string_equal(before, after);
	assert_int_equal(ctu_count_devices(c, NULL), 1);
	struct ctl_counters k;
	ctl_get_counters(c, &k);
	assert_int_equal(k.state_refused, n + 1);
	assert_int_equal(k.state_ok, 1);
	free(before);
	free(after);
	ctu_close(c, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_state_upsert),
		cmocka_unit_test(test_state_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
