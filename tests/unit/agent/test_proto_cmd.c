/* agentproto: commands, the duplicate window, the deploy decision and the
 * refusal rate limit (agent/src/proto_cmd.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto.h"
#include <flotilla/error.h>
#include <flotilla/manifest.h>

static int parse(const char *txt, struct proto_cmd *c)
{
	return proto_cmd_parse(txt, strlen(txt), c);
}

static void test_parse_kinds(void **state)
{
	(void)state;
	struct proto_cmd c;
	assert_int_equal(parse("{\"v\":1,\"id\":\"c1\",\"kind\":\"deploy\",\"envelope\":\"E\"}", &c), 0);
	assert_int_equal(c.kind, PROTO_CMD_DEPLOY);
	assert_string_equal(c.id, "c1");
	assert_string_equal(c.envelope, "E");
	assert_int_equal(c.arg_err, 0);
	proto_cmd_free(&c);
	assert_null(c.root);
	assert_int_equal(parse("{\"v\":1,\"id\":\"c2\",\"kind\":\"deploy\"}", &c), 0);
	assert_int_equal(c.arg_err, -FL_ESCHEMA);
	assert_null(c.envelope);
	proto_cmd_free(&c);
	assert_int_equal(parse("{\"v\":1,\"id\":\"c3\",\"kind\":\"revert\",\"model\":\"tiny\"}", &c), 0);
	assert_int_equal(c.kind, PROTO_CMD_REVERT);
	assert_string_equal(c.model, "tiny");
	proto_cmd_free(&c);
	assert_int_equal(parse("{\"v\":1,\"id\":\"c4\",\"kind\":\"revert\",\"model\":\"../x\"}", &c), 0);
	assert_int_equal(c.arg_err, -FL_ESCHEMA);
	proto_cmd_free(&c);
	assert_int_equal(parse("{\"v\":1,\"id\":\"c5\",\"kind\":\"revert\"}", &c), 0);
	assert_int_equal(c.arg_err, -FL_ESCHEMA);
	proto_cmd_free(&c);
	assert_int_equal(parse("{\"v\":1,\"id\":\"c6\",\"kind\":\"keyring\",\"envelope\":\"K\"}", &c), 0);
	assert_int_equal(c.kind, PROTO_CMD_KEYRING);
	proto_cmd_free(&c);
	assert_int_equal(parse("{\"v\":1,\"id\":\"c7\",\"kind\":\"keyring\",\"envelope\":3}", &c), 0);
	assert_int_equal(c.arg_err, -FL_ESCHEMA);
	proto_cmd_free(&c);
	assert_int_equal(parse("{\"v\":1,\"id\":\"c8\",\"kind\":\"ping\"}", &c), 0);
	assert_int_equal(c.kind, PROTO_CMD_PING);
	proto_cmd_free(&c);
	assert_int_equal(parse("{\"v\":1,\"id\":\"c9\",\"kind\":\"reboot\"}", &c), 0);
	assert_int_equal(c.kind, PROTO_CMD_UNKNOWN);
	assert_string_equal(c.kind_name, "reboot");
	proto_cmd_free(&c);
	proto_cmd_free(NULL);
}

static void test_parse_bad(void **state)
{
	(void)state;
	struct proto_cmd c, sentinel;
	memset(&c, 0x5a, sizeof(c));
	sentinel = c;
	assert_int_equal(proto_cmd_parse(NULL, 3, &c), -EINVAL);
	assert_int_equal(proto_cmd_parse("{}", 2, NULL), -EINVAL);
	assert_int_equal(parse("", &c), -FL_EINVAL_JSON);
	assert_int_equal(parse("not json", &c), -FL_EINVAL_JSON);
	assert_int_equal(parse("[1]", &c), -FL_ESCHEMA);
	assert_int_equal(parse("{\"id\":\"a\",\"kind\":\"ping\"}", &c), -FL_ESCHEMA); /* no v */
	assert_int_equal(parse("{\"v\":2,\"id\":\"a\",\"kind\":\"ping\"}", &c), -FL_EUNSUPPORTED);
	assert_int_equal(parse("{\"v\":\"1\",\"id\":\"a\",\"kind\":\"ping\"}", &c), -FL_ESCHEMA);
	assert_int_equal(parse("{\"v\":1,\"kind\":\"ping\"}", &c), -FL_ESCHEMA);
	assert_int_equal(parse("{\"v\":1,\"id\":\"\",\"kind\":\"ping\"}", &c), -FL_ESCHEMA);
	assert_int_equal(parse("{\"v\":1,\"id\":7,\"kind\":\"ping\"}", &c), -FL_ESCHEMA);
	assert_int_equal(parse("{\"v\":1,\"id\":\"a\"}", &c), -FL_ESCHEMA);
	assert_int_equal(parse("{\"v\":1,\"id\":\"a\",\"kind\":\"ping\",\"x\":1}", &c), -FL_ESCHEMA);
	assert_int_equal(parse("{\"v\":1,\"id\":\"a\",\"kind\":\"ping\",\"model\":[[[[1]]]]}", &c),
			 -FL_ETOODEEP);
	assert_memory_equal(&c, &sentinel, sizeof(c)); /* untouched by every refusal */
	char big[300];
	memset(big, 'i', sizeof(big));
	big[129] = 0;
	char msg[400];
	snprintf(msg, sizeof(msg), "{\"v\":1,\"id\":\"%s\",\"kind\":\"ping\"}", big);
	assert_int_equal(parse(msg, &c), -FL_ESCHEMA); /* 129 bytes */
	big[128] = 0;
	snprintf(msg, sizeof(msg), "{\"v\":1,\"id\":\"%s\",\"kind\":\"ping\"}", big);
	assert_int_equal(parse(msg, &c), 0);
	proto_cmd_free(&c);
	char *huge = malloc(PROTO_CMD_MAX + 100);
	memset(huge, ' ', PROTO_CMD_MAX + 100);
	memcpy(huge, "{}", 2);
	assert_int_equal(proto_cmd_parse(huge, PROTO_CMD_MAX + 100, &c), -FL_ETOOBIG);
	free(huge);
}

static void test_ids(void **state)
{
	(void)state;
	struct proto_cmd_ids w = {0};
	assert_int_equal(proto_cmd_ids_seen(&w, "a"), 0);
	assert_int_equal(proto_cmd_ids_seen(&w, "a"), 1);
	assert_int_equal(proto_cmd_ids_has(&w, "b"), 0);
	char id[16];
	for (int i = 0; i < PROTO_CMD_IDS - 1; i++) {
		snprintf(id, sizeof(id), "x%d", i);
		assert_int_equal(proto_cmd_ids_seen(&w, id), 0);
	}
	assert_int_equal(proto_cmd_ids_has(&w, "a"), 1); /* 64 remembered */
	assert_int_equal(proto_cmd_ids_seen(&w, "one-more"), 0);
	assert_int_equal(proto_cmd_ids_has(&w, "a"), 0); /* the oldest went */
	assert_int_equal(proto_cmd_ids_has(&w, "x0"), 1);
	assert_int_equal(proto_cmd_ids_has(&w, "one-more"), 1);
	/* bad input changes nothing */
	struct proto_cmd_ids before = w;
	char big[200];
	memset(big, 'z', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	assert_int_equal(proto_cmd_ids_seen(&w, ""), -EINVAL);
	assert_int_equal(proto_cmd_ids_seen(&w, NULL), -EINVAL);
	assert_int_equal(proto_cmd_ids_add(&w, big), -EINVAL);
	assert_int_equal(proto_cmd_ids_has(&w, big), -EINVAL);
	assert_int_equal(proto_cmd_ids_has(NULL, "a"), -EINVAL);
	assert_int_equal(proto_cmd_ids_add(NULL, "a"), -EINVAL);
	assert_memory_equal(&before, &w, sizeof(w));
}

static void test_deploy(void **state)
{
	(void)state;
	struct ota_manifest m = {.name = "tiny", .version = "1.2", .sequence = 5};
	struct proto_deploy_facts f = {0};
	assert_int_equal(proto_deploy_decide(&m, &f), PROTO_DEPLOY_START);
	f.highest_sequence = 6;
	assert_int_equal(proto_deploy_decide(&m, &f), PROTO_DEPLOY_REPLAY);
	assert_int_equal(proto_deploy_err(PROTO_DEPLOY_REPLAY), -FL_EREPLAY);
	assert_non_null(proto_deploy_refusal(PROTO_DEPLOY_REPLAY));
	f.highest_sequence = 5; /* the same sequence is no replay */
	f.fetching_model = "tiny";
	assert_int_equal(proto_deploy_decide(&m, &f), PROTO_DEPLOY_SUPERSEDE);
	f.fetching_same = true;
	assert_int_equal(proto_deploy_decide(&m, &f), PROTO_DEPLOY_ALREADY_FETCHING);
	f.fetching_model = "other";
	f.fetching_same = false;
	assert_int_equal(proto_deploy_decide(&m, &f), PROTO_DEPLOY_BUSY);
	assert_int_equal(proto_deploy_err(PROTO_DEPLOY_BUSY), -FL_EBUSY);
	f.fetching_model = NULL;
	f.install_pending = true;
	assert_int_equal(proto_deploy_decide(&m, &f), PROTO_DEPLOY_PENDING);
	assert_int_equal(proto_deploy_err(PROTO_DEPLOY_PENDING), -FL_ESTATE);
	f.install_pending = false;
	f.current_ready = true;
	f.current_version = "1.2";
	f.current_sequence = 5;
	assert_int_equal(proto_deploy_decide(&m, &f), PROTO_DEPLOY_ALREADY_CURRENT);
	f.current_sequence = 4; /* same version string, other release */
	assert_int_equal(proto_deploy_decide(&m, &f), PROTO_DEPLOY_START);
	f.current_sequence = 5;
	f.current_ready = false;
	assert_int_equal(proto_deploy_decide(&m, &f), PROTO_DEPLOY_START);
	assert_null(proto_deploy_refusal(PROTO_DEPLOY_START));
	assert_int_equal(proto_deploy_err(PROTO_DEPLOY_ALREADY_CURRENT), 0);
	assert_null(proto_deploy_refusal(-EINVAL));
	assert_int_equal(proto_deploy_decide(NULL, &f), -EINVAL);
	assert_int_equal(proto_deploy_decide(&m, NULL), -EINVAL);
	struct ota_manifest bad = {.name = NULL, .version = "1"};
	assert_int_equal(proto_deploy_decide(&bad, &f), -EINVAL);
}

static void test_ratelimit(void **state)
{
	(void)state;
	struct proto_ratelimit rl = {0};
	int64_t t = 1000000;
	for (int i = 0; i < PROTO_REFUSE_EVENTS; i++)
		assert_true(proto_ratelimit_take(&rl, t + i));
	assert_false(proto_ratelimit_take(&rl, t + 59000));
	assert_true(proto_ratelimit_take(&rl, t + 60001)); /* a new minute */
	assert_false(proto_ratelimit_take(NULL, t));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_kinds), cmocka_unit_test(test_parse_bad),
		cmocka_unit_test(test_ids),	    cmocka_unit_test(test_deploy),
		cmocka_unit_test(test_ratelimit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
