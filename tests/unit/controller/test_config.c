/* Controller config file and bearer-token checks. */
#include <errno.h>
#include <stdio.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>

#include "config.h"
#include "http.h"

static char *dir;

static int load(const char *text, struct ctl_config *cfg, char *err)
{
	char *p = fl_path_join(dir, "c.conf");
	assert_int_equal(fl_write_file_atomic(p, text, strlen(text), 0600), 0);
	int r = ctl_config_load(p, cfg, err, 256);
	free(p);
	return r;
}

static void test_config(void **state)
{
	(void)state;
	dir = fl_test_mkdtemp("ctl-config");
	struct ctl_config cfg;
	char err[256] = "";
	assert_int_equal(load("[controller]\n"
			      "data_dir = /var/lib/x\n"
			      "port = 0\n"
			      "read_tokens = grafana:aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb\n"
			      "operator_tokens = ci:cccccccccccccccc\n"
			      "max_upload_bytes = 2M\n",
			      &cfg, err),
			 0);
	assert_string_equal(cfg.data_dir, "/var/lib/x");
	assert_string_equal(cfg.listen, "127.0.0.1");
	assert_int_equal(cfg.port, 0);
	assert_null(cfg.trust_dir);
	assert_int_equal(cfg.max_upload_bytes, 2 * 1024 * 1024);
	assert_int_equal(cfg.n_tokens, 3);
	assert_string_equal(cfg.tokens[0].name, "grafana");
	assert_string_equal(cfg.tokens[1].name, "reader");
	assert_int_equal(cfg.tokens[1].role, CTL_ROLE_READ);
	assert_string_equal(cfg.tokens[2].name, "ci");
	assert_int_equal(cfg.tokens[2].role, CTL_ROLE_OPERATOR);

	const char *who = NULL;
	assert_int_equal(ctl_http_auth(cfg.tokens, cfg.n_tokens, "Bearer cccccccccccccccc", &who),
			 CTL_ROLE_OPERATOR);
	assert_string_equal(who, "ci");
	assert_int_equal(ctl_http_auth(cfg.tokens, cfg.n_tokens, "Bearer bbbbbbbbbbbbbbbb", &who),
			 CTL_ROLE_READ);
	assert_int_equal(ctl_http_auth(cfg.tokens, cfg.n_tokens, "Bearer cccccccccccccccd", NULL),
			 CTL_ROLE_NONE);
	assert_int_equal(ctl_http_auth(cfg.tokens, cfg.n_tokens, "Bearer cccccccccccccccc1", NULL),
			 CTL_ROLE_NONE);
	assert_int_equal(ctl_http_auth(cfg.tokens, cfg.n_tokens, "Basic cccccccccccccccc", NULL),
			 CTL_ROLE_NONE);
	assert_int_equal(ctl_http_auth(cfg.tokens, cfg.n_tokens, "Bearer ", NULL), CTL_ROLE_NONE);
	assert_int_equal(ctl_http_auth(cfg.tokens, cfg.n_tokens, NULL, NULL), CTL_ROLE_NONE);
	ctl_config_free(&cfg);

	static const char *const bad[] = {
		"[controller]\nport = 1\n",                                     /* no data_dir */
		"[controller]\ndata_dir = /x\nbogus = 1\n",                     /* unknown key */
		"[controller]\ndata_dir = /x\nport = 70000\n",                  /* range */
		"[controller]\ndata_dir = /x\nread_tokens = short\n",           /* token too short */
		"[controller]\ndata_dir = /x\nread_tokens = a:aaaaaaaaaaaaaaaa, b:aaaaaaaaaaaaaaaa\n",
		"[controller]\ndata_dir = /x\noperator_tokens = bad name:aaaaaaaaaaaaaaaa\n",
		"[controller]\ndata_dir = /x\ningest_batch_records = 0\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = 0;
		int r = load(bad[i], &cfg, err);
		if (r != -FL_ECONFIG)
			fail_msg("config %zu: got %s", i, fl_strerror(r));
		assert_true(err[0] != 0);
	}
	fl_rm_rf(dir);
	free(dir);
}

static void test_config_mqtt(void **state)
{
	(void)state;
	dir = fl_test_mkdtemp("ctl-config-mqtt");
	struct ctl_config cfg;
	char err[256] = "";
	assert_int_equal(load("[controller]\ndata_dir = /x\n", &cfg, err), 0);
	assert_null(cfg.mqtt_uri); /* no [mqtt]: no session */
	ctl_config_free(&cfg);
	assert_int_equal(load("[controller]\ndata_dir = /x\n[mqtt]\n"
			      "uri = ssl://broker:8883\nca = /p/ca.crt\ncert = /p/c.crt\n"
			      "key = /p/c.key\n",
			      &cfg, err),
			 0);
	assert_string_equal(cfg.mqtt_uri, "ssl://broker:8883");
	assert_string_equal(cfg.mqtt_ca, "/p/ca.crt");
	assert_string_equal(cfg.mqtt_cert, "/p/c.crt");
	assert_string_equal(cfg.mqtt_key, "/p/c.key");
	assert_null(cfg.mqtt_client_id); /* taken from the certificate */
	assert_true(cfg.mqtt_verify_host);
	ctl_config_free(&cfg);
	assert_int_equal(load("[controller]\ndata_dir = /x\n[mqtt]\nuri = tcp://127.0.0.1:1883\n"
			      "client_id = ctl-2\nverify_host = false\n",
			      &cfg, err),
			 0);
	assert_string_equal(cfg.mqtt_client_id, "ctl-2");
	assert_false(cfg.mqtt_verify_host);
	ctl_config_free(&cfg);

	static const char *const bad[] = {
		"[controller]\ndata_dir = /x\n[mqtt]\nca = /ca\n",            /* no uri */
		"[controller]\ndata_dir = /x\n[mqtt]\nuri = ssl://b:1\nca = /ca\n", /* no cert */
		"[controller]\ndata_dir = /x\n[mqtt]\nuri = http://b:1\n",    /* scheme */
		"[controller]\ndata_dir = /x\n[mqtt]\nuri = tcp://b:1\n",     /* plain needs an id */
		"[controller]\ndata_dir = /x\n[mqtt]\nuri = tcp://b:1\nclient_id = a b\n",
		"[controller]\ndata_dir = /x\n[mqtt]\nuri = tcp://b:1\nclient_id = c\n"
		"verify_host = maybe\n",
		"[controller]\ndata_dir = /x\n[mqtt]\nuri = tcp://b:1\nclient_id = c\nqos = 2\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = 0;
		int r = load(bad[i], &cfg, err);
		if (r != -FL_ECONFIG)
			fail_msg("mqtt config %zu: got %s", i, fl_strerror(r));
		assert_true(err[0] != 0);
	}
	fl_rm_rf(dir);
	free(dir);
}

/* Store selection: sqlite by default, postgresql with a DSN. */
static void test_config_store(void **state)
{
	(void)state;
	dir = fl_test_mkdtemp("ctl-config-store");
	struct ctl_config cfg;
	char err[256] = "";
	assert_int_equal(load("[controller]\ndata_dir = /x\n", &cfg, err), 0);
	assert_null(cfg.store_dsn);
	ctl_config_free(&cfg);
	assert_int_equal(load("[controller]\ndata_dir = /x\nstore = postgresql\n"
			      "store_dsn = host=127.0.0.1 port=5432 dbname=fl\n",
			      &cfg, err),
			 0);
	assert_string_equal(cfg.store_dsn, "host=127.0.0.1 port=5432 dbname=fl");
	ctl_config_free(&cfg);
	assert_int_equal(load("[controller]\ndata_dir = /x\nstore = postgresql\n", &cfg, err),
			 -FL_ECONFIG);
	assert_non_null(strstr(err, "needs store_dsn"));
	assert_int_equal(load("[controller]\ndata_dir = /x\nstore = mysql\n", &cfg, err),
			 -FL_ECONFIG);
	assert_non_null(strstr(err, "sqlite or postgresql"));
	assert_int_equal(load("[controller]\ndata_dir = /x\nstore_dsn = host=a\n", &cfg, err),
			 -FL_ECONFIG);
	fl_rm_rf(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config),
		cmocka_unit_test(test_config_store),
		cmocka_unit_test(test_config_mqtt),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
