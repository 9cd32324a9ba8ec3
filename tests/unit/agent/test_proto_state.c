/* agentproto: the state document (agent/src/proto_state.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "proto.h"
#include <flotilla/error.h>

static const char *const backends[] = {"gguf", "xgboost", NULL};

static struct proto_device dev(void)
{
	return (struct proto_device){.device = "dev-1", .agent = "0.1.0", .arch = "aarch64",
				     .ram_mb = 2048, .accelerators = "npu,gpu",
				     .backends = backends};
}

static cJSON *render(struct proto_state *s)
{
	char *txt = NULL;
	size_t n = 0;
	assert_int_equal(proto_state_render(s, &txt, &n), 0);
	assert_int_equal(strlen(txt), n);
	cJSON *j = cJSON_Parse(txt);
	free(txt);
	assert_non_null(j);
	return j;
}

static void test_document(void **state)
{
	(void)state;
	cJSON *labels = cJSON_Parse("{\"site\":\"north\"}");
	struct proto_device d = dev();
	d.labels = labels;
	struct proto_state *s = NULL;
	assert_int_equal(proto_state_new(&d, 1700000000, &s), 0);
	cJSON_Delete(labels); /* copied */
	struct proto_install in = {.version = "1.1", .state = "FETCHING", .error = NULL,
				   .progress = true, .bytes_done = 10, .bytes_total = 20,
				   .chunks_done = 1, .chunks_total = 2};
	struct proto_model m = {.name = "tiny", .current = 'a',
				.slot = {{"ready", "1.0", 3}, {"staging", "1.1", 4}},
				.install = &in};
	assert_int_equal(proto_state_add_model(s, &m), 0);
	struct proto_model m2 = {.name = "other", .current = 0,
				 .slot = {{"empty", "", 0}, {"empty", NULL, 0}}};
	assert_int_equal(proto_state_add_model(s, &m2), 0);
	cJSON *j = render(s);
	proto_state_free(s);
	assert_int_equal(cJSON_GetObjectItem(j, "v")->valueint, 1);
	assert_string_equal(cJSON_GetObjectItem(j, "device")->valuestring, "dev-1");
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "online")));
	assert_string_equal(cJSON_GetObjectItem(j, "ts")->valuestring, "2023-11-14T22:13:20Z");
	cJSON *hw = cJSON_GetObjectItem(j, "hw");
	assert_string_equal(cJSON_GetObjectItem(hw, "arch")->valuestring, "aarch64");
	assert_int_equal(cJSON_GetObjectItem(hw, "ram_mb")->valueint, 2048);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(hw, "accelerators")), 2);
	assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(hw, "backends"), 1)->valuestring,
			    "xgboost");
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "labels"), "site")->valuestring,
			    "north");
	cJSON *t = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "models"), "tiny");
	assert_string_equal(cJSON_GetObjectItem(t, "current")->valuestring, "a");
	cJSON *b = cJSON_GetObjectItem(cJSON_GetObjectItem(t, "slots"), "b");
	assert_string_equal(cJSON_GetObjectItem(b, "status")->valuestring, "staging");
	assert_string_equal(cJSON_GetObjectItem(b, "version")->valuestring, "1.1");
	assert_int_equal(cJSON_GetObjectItem(b, "sequence")->valueint, 4);
	cJSON *i = cJSON_GetObjectItem(t, "install");
	assert_string_equal(cJSON_GetObjectItem(i, "state")->valuestring, "FETCHING");
	assert_string_equal(cJSON_GetObjectItem(i, "error")->valuestring, "");
	assert_int_equal(cJSON_GetObjectItem(i, "chunks_total")->valueint, 2);
	cJSON *o = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "models"), "other");
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "current")));
	assert_null(cJSON_GetObjectItem(o, "install"));
	assert_null(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "slots"), "a"),
					"version"));
	cJSON_Delete(j);
}

static void test_no_install_progress(void **state)
{
	(void)state;
	struct proto_device d = dev();
	d.accelerators = NULL;
	d.backends = NULL;
	struct proto_state *s = NULL;
	assert_int_equal(proto_state_new(&d, 0, &s), 0);
	struct proto_install in = {.version = "1", .state = "COMMITTED", .error = "x"};
	struct proto_model m = {.name = "m", .current = 'b',
				.slot = {{"ready", "0", 1}, {"ready", "1", 2}}, .install = &in};
	assert_int_equal(proto_state_add_model(s, &m), 0);
	cJSON *j = render(s);
	proto_state_free(s);
	cJSON *i = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "models"), "m"),
				       "install");
	assert_null(cJSON_GetObjectItem(i, "bytes_done"));
	assert_string_equal(cJSON_GetObjectItem(i, "error")->valuestring, "x");
	cJSON *hw = cJSON_GetObjectItem(j, "hw");
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(hw, "accelerators")), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(hw, "backends")), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "labels")), 0);
	cJSON_Delete(j);
}

static void test_bad_device(void **state)
{
	(void)state;
	struct proto_state *s = (void *)1;
	struct proto_device d = dev();
	assert_int_equal(proto_state_new(NULL, 0, &s), -EINVAL);
	assert_int_equal(proto_state_new(&d, 0, NULL), -EINVAL);
	d.device = NULL;
	assert_int_equal(proto_state_new(&d, 0, &s), -EINVAL);
	d.device = "";
	assert_int_equal(proto_state_new(&d, 0, &s), -EINVAL);
	d.device = "a/b";
	assert_int_equal(proto_state_new(&d, 0, &s), -EINVAL);
	d.device = "x\"y";
	assert_int_equal(proto_state_new(&d, 0, &s), -EINVAL);
	d = dev();
	d.agent = NULL;
	assert_int_equal(proto_state_new(&d, 0, &s), -EINVAL);
	d = dev();
	d.arch = NULL;
	assert_int_equal(proto_state_new(&d, 0, &s), -EINVAL);
	d = dev();
	cJSON *arr = cJSON_CreateArray();
	d.labels = arr;
	assert_int_equal(proto_state_new(&d, 0, &s), -EINVAL);
	cJSON_Delete(arr);
	assert_ptr_equal(s, (void *)1); /* untouched on error */
}

static void test_bad_model(void **state)
{
	(void)state;
	struct proto_device d = dev();
	struct proto_state *s = NULL;
	assert_int_equal(proto_state_new(&d, 0, &s), 0);
	struct proto_model ok = {.name = "m", .slot = {{"ready", "1", 1}, {"empty", NULL, 0}}};
	struct proto_model m = ok;
	assert_int_equal(proto_state_add_model(NULL, &m), -EINVAL);
	assert_int_equal(proto_state_add_model(s, NULL), -EINVAL);
	m.name = NULL;
	assert_int_equal(proto_state_add_model(s, &m), -EINVAL);
	m.name = "../x";
	assert_int_equal(proto_state_add_model(s, &m), -EINVAL);
	m = ok;
	m.current = 'c';
	assert_int_equal(proto_state_add_model(s, &m), -EINVAL);
	m = ok;
	m.slot[1].status = "busy";
	assert_int_equal(proto_state_add_model(s, &m), -EINVAL);
	m = ok;
	m.slot[0].status = NULL;
	assert_int_equal(proto_state_add_model(s, &m), -EINVAL);
	struct proto_install in = {.version = NULL, .state = "TRIAL"};
	m = ok;
	m.install = &in;
	assert_int_equal(proto_state_add_model(s, &m), -EINVAL);
	in = (struct proto_install){.version = "1", .state = NULL};
	assert_int_equal(proto_state_add_model(s, &m), -EINVAL);
	/* nothing was added by the refusals */
	cJSON *j = render(s);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "models")), 0);
	cJSON_Delete(j);
	assert_int_equal(proto_state_add_model(s, &ok), 0);
	assert_int_equal(proto_state_add_model(s, &ok), -EINVAL); /* twice */
	j = render(s);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "models")), 1);
	cJSON_Delete(j);
	char *txt = NULL;
	size_t n;
	assert_int_equal(proto_state_render(NULL, &txt, &n), -EINVAL);
	assert_int_equal(proto_state_render(s, NULL, &n), -EINVAL);
	proto_state_free(s);
	proto_state_free(NULL);
}

static void test_too_big(void **state)
{
	(void)state;
	struct proto_device d = dev();
	struct proto_state *s = NULL;
	assert_int_equal(proto_state_new(&d, 0, &s), 0);
	char err[600];
	memset(err, 'e', sizeof(err) - 1);
	err[sizeof(err) - 1] = 0;
	struct proto_install in = {.version = "1", .state = "REJECTED", .error = err};
	for (int i = 0; i < 120; i++) {
		char name[16];
		snprintf(name, sizeof(name), "m%d", i);
		struct proto_model m = {.name = name,
					.slot = {{"empty", NULL, 0}, {"empty", NULL, 0}},
					.install = &in};
		assert_int_equal(proto_state_add_model(s, &m), 0);
	}
	char *txt = NULL;
	size_t n = 0;
	assert_int_equal(proto_state_render(s, &txt, &n), -FL_ETOOBIG);
	assert_null(txt);
	proto_state_free(s);
}

static void test_offline(void **state)
{
	(void)state;
	char buf[128];
	int n = proto_state_offline("dev-1", buf, sizeof(buf));
	assert_int_equal(n, (int)strlen(buf));
	assert_string_equal(buf, "{\"v\":1,\"device\":\"dev-1\",\"online\":false}");
	assert_int_equal(proto_state_offline("dev-1", buf, 10), -FL_ETOOBIG);
	assert_int_equal(proto_state_offline(NULL, buf, sizeof(buf)), -EINVAL);
	assert_int_equal(proto_state_offline("a\"b", buf, sizeof(buf)), -EINVAL);
	assert_int_equal(proto_state_offline("dev", NULL, 5), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_document),    cmocka_unit_test(test_no_install_progress),
		cmocka_unit_test(test_bad_device),  cmocka_unit_test(test_bad_model),
		cmocka_unit_test(test_too_big),     cmocka_unit_test(test_offline),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
