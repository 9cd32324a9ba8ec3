/* Controller configuration file. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/config.h>
#include <flotilla/error.h>
#include <flotilla/util.h>

#include "config.h"

#define TOKEN_MIN_BYTES 16

FL_DEFINE_CLEANUP(struct fl_config, fl_config_free)

static char *dup_or_null(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

/* Parse "NAME:SECRET, SECRET2, ..." into CFG->tokens with ROLE. */
static int add_tokens(struct ctl_config *cfg, const char *list, enum ctl_role role,
		      char *err, size_t err_len)
{
	if (!list)
		return 0;
	_cleanup_free_ char *copy = strdup(list);
	if (!copy)
		return -ENOMEM;
	for (char *item = copy, *next; item; item = next) {
		next = strchr(item, ',');
		if (next)
			*next++ = 0;
		while (*item == ' ' || *item == '\t')
			item++;
		size_t n = strlen(item);
		while (n && (item[n - 1] == ' ' || item[n - 1] == '\t'))
			item[--n] = 0;
		if (!n)
			continue;
		char *colon = strchr(item, ':');
		const char *name = role == CTL_ROLE_OPERATOR ? "operator" : "reader";
		const char *secret = item;
		if (colon) {
			*colon = 0;
			name = item;
			secret = colon + 1;
			if (!fl_name_valid(name, 64)) {
				fl_snprintf(err, err_len, "token name '%s' is not a valid name", name);
				return -FL_ECONFIG;
			}
		}
		if (strlen(secret) < TOKEN_MIN_BYTES || strlen(secret) > CTL_HTTP_TOKEN_MAX ||
		    strchr(secret, ' ')) {
			fl_snprintf(err, err_len, "token of '%s' must be %d..%d bytes without blanks",
				    name, TOKEN_MIN_BYTES, CTL_HTTP_TOKEN_MAX);
			return -FL_ECONFIG;
		}
		for (size_t i = 0; i < cfg->n_tokens; i++) {
			if (!strcmp(cfg->tokens[i].secret, secret)) {
				fl_snprintf(err, err_len, "token of '%s' is given twice", name);
				return -FL_ECONFIG;
			}
		}
		if (cfg->n_tokens >= CTL_HTTP_MAX_TOKENS) {
			fl_snprintf(err, err_len, "more than %d tokens", CTL_HTTP_MAX_TOKENS);
			return -FL_ECONFIG;
		}
		struct ctl_token *t = &cfg->tokens[cfg->n_tokens];
		t->name = strdup(name);
		t->secret = strdup(secret);
		t->role = role;
		cfg->n_tokens++;
		if (!t->name || !t->secret)
			return -ENOMEM;
	}
	return 0;
}

/* The [mqtt] section: all of it or none (uri starts it). */
static int load_mqtt(struct fl_config *fc, const char *path, struct ctl_config *c, char *err,
		     size_t err_len)
{
	const char *uri = fl_config_get_str(fc, "mqtt.uri", NULL);
	const char *ca = fl_config_get_str(fc, "mqtt.ca", NULL);
	const char *cert = fl_config_get_str(fc, "mqtt.cert", NULL);
	const char *key = fl_config_get_str(fc, "mqtt.key", NULL);
	const char *id = fl_config_get_str(fc, "mqtt.client_id", NULL);
	const char *vh = fl_config_get_str(fc, "mqtt.verify_host", NULL);
	if (!uri || !*uri) {
		if (ca || cert || key || id || vh) {
			fl_snprintf(err, err_len, "%s: [mqtt] needs uri", path);
			return -FL_ECONFIG;
		}
		return 0;
	}
	bool tls = !strncmp(uri, "ssl://", 6) || !strncmp(uri, "mqtts://", 8);
	bool plain = !strncmp(uri, "tcp://", 6) || !strncmp(uri, "mqtt://", 7);
	if (!tls && !plain) {
		fl_snprintf(err, err_len, "%s: mqtt.uri must be ssl://, mqtts://, tcp:// or mqtt://",
			    path);
		return -FL_ECONFIG;
	}
	if (tls && (!ca || !*ca || !cert || !*cert || !key || !*key)) {
		fl_snprintf(err, err_len, "%s: [mqtt] over TLS needs ca, cert and key", path);
		return -FL_ECONFIG;
	}
	if (id && !fl_name_valid(id, 64)) {
		fl_snprintf(err, err_len, "%s: mqtt.client_id is not a valid name", path);
		return -FL_ECONFIG;
	}
	if (!tls && !id) {
		fl_snprintf(err, err_len, "%s: [mqtt] without TLS needs client_id", path);
		return -FL_ECONFIG;
	}
	if (fl_config_get_bool(fc, "mqtt.verify_host", true, &c->mqtt_verify_host) < 0) {
		fl_snprintf(err, err_len, "%s: mqtt.verify_host must be true or false", path);
		return -FL_ECONFIG;
	}
	c->mqtt_uri = strdup(uri);
	c->mqtt_ca = dup_or_null(ca);
	c->mqtt_cert = dup_or_null(cert);
	c->mqtt_key = dup_or_null(key);
	c->mqtt_client_id = dup_or_null(id);
	if (!c->mqtt_uri || (ca && !c->mqtt_ca) || (cert && !c->mqtt_cert) ||
	    (key && !c->mqtt_key) || (id && !c->mqtt_client_id))
		return -ENOMEM;
	return 0;
}

int ctl_config_load(const char *path, struct ctl_config *ret, char *err, size_t err_len)
{
	static const char *const keys[] = {
		"controller.data_dir",         "controller.listen",
		"controller.port",             "controller.trust_dir",
		"controller.read_tokens",      "controller.operator_tokens",
		"controller.max_upload_bytes", "controller.ingest_batch_records",
		"controller.ingest_flush_ms",  "controller.log_level",
		"controller.store",            "controller.store_dsn",
		"mqtt.uri",                    "mqtt.ca",
		"mqtt.cert",                   "mqtt.key",
		"mqtt.client_id",              "mqtt.verify_host",
		NULL};
	_cleanup_(fl_config_freep) struct fl_config *fc = NULL;
	int r = fl_config_load(path, &fc, err, err_len);
	if (r < 0)
		return r;
	const char *bad = NULL;
	if (fl_config_check_keys(fc, keys, &bad) < 0) {
		fl_snprintf(err, err_len, "%s: unknown key '%s'", path, bad);
		return -FL_ECONFIG;
	}
	struct ctl_config c = {0};
	int64_t v;
	r = -ENOMEM;
	const char *dd = fl_config_get_str(fc, "controller.data_dir", NULL);
	if (!dd || !*dd) {
		fl_snprintf(err, err_len, "%s: controller.data_dir is required", path);
		return -FL_ECONFIG;
	}
	if (!(c.data_dir = strdup(dd)))
		goto fail;
	if (!(c.listen = strdup(fl_config_get_str(fc, "controller.listen", "127.0.0.1"))))
		goto fail;
	c.trust_dir = dup_or_null(fl_config_get_str(fc, "controller.trust_dir", NULL));
	/* store = sqlite (default, DATA_DIR/controller.db) | postgresql (store_dsn:
	 * a libpq connection string, required then and refused otherwise). */
	const char *store = fl_config_get_str(fc, "controller.store", "sqlite");
	const char *dsn = fl_config_get_str(fc, "controller.store_dsn", NULL);
	if (strcmp(store, "sqlite") && strcmp(store, "postgresql")) {
		fl_snprintf(err, err_len, "%s: controller.store must be sqlite or postgresql, not '%s'",
			    path, store);
		r = -FL_ECONFIG;
		goto fail;
	}
	if (!strcmp(store, "postgresql") && (!dsn || !*dsn)) {
		fl_snprintf(err, err_len, "%s: controller.store = postgresql needs store_dsn", path);
		r = -FL_ECONFIG;
		goto fail;
	}
	if (!strcmp(store, "sqlite") && dsn) {
		fl_snprintf(err, err_len, "%s: controller.store_dsn is only for store = postgresql",
			    path);
		r = -FL_ECONFIG;
		goto fail;
	}
	if (dsn && !(c.store_dsn = strdup(dsn)))
		goto fail;
	c.log_level = dup_or_null(fl_config_get_str(fc, "controller.log_level", NULL));
	if ((r = fl_config_get_int(fc, "controller.port", 0, 65535, 8080, &v)) < 0)
		goto bad_value;
	c.port = (uint16_t)v;
	if ((r = fl_config_get_int(fc, "controller.max_upload_bytes", 1024, INT64_MAX,
				   (int64_t)CTL_HTTP_DEFAULT_UPLOAD, &v)) < 0)
		goto bad_value;
	c.max_upload_bytes = (uint64_t)v;
	if ((r = fl_config_get_int(fc, "controller.ingest_batch_records", 1, 100000,
				   CTL_DEFAULT_BATCH_RECORDS, &v)) < 0)
		goto bad_value;
	c.batch_records = (size_t)v;
	if ((r = fl_config_get_int(fc, "controller.ingest_flush_ms", 1, 60000,
				   CTL_DEFAULT_FLUSH_MS, &v)) < 0)
		goto bad_value;
	c.flush_ms = v;
	if ((r = add_tokens(&c, fl_config_get_str(fc, "controller.read_tokens", NULL),
			    CTL_ROLE_READ, err, err_len)) < 0)
		goto fail;
	if ((r = add_tokens(&c, fl_config_get_str(fc, "controller.operator_tokens", NULL),
			    CTL_ROLE_OPERATOR, err, err_len)) < 0)
		goto fail;
	if ((r = load_mqtt(fc, path, &c, err, err_len)) < 0)
		goto fail;
	*ret = c;
	return 0;
bad_value:
	fl_snprintf(err, err_len, "%s: a number in [controller] is malformed or out of range", path);
	r = -FL_ECONFIG;
fail:
	ctl_config_free(&c);
	return r;
}

void ctl_config_free(struct ctl_config *cfg)
{
	if (!cfg)
		return;
	free(cfg->data_dir);
	free(cfg->listen);
	free(cfg->trust_dir);
	free(cfg->store_dsn);
	free(cfg->log_level);
	free(cfg->mqtt_uri);
	free(cfg->mqtt_ca);
	free(cfg->mqtt_cert);
	free(cfg->mqtt_key);
	free(cfg->mqtt_client_id);
	for (size_t i = 0; i < cfg->n_tokens; i++) {
		free((char *)cfg->tokens[i].name);
		free((char *)cfg->tokens[i].secret);
	}
	memset(cfg, 0, sizeof(*cfg));
}
