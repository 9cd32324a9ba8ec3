#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "agent.h"
#include "report.h"
#include <flotilla/cleanup.h>
#include <flotilla/config.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

static const char *const config_keys[] = {
	"agent.id", "agent.state_dir", "agent.trust_dir", "agent.threshold",
	"agent.disk_reserve", "agent.log_level", "agent.labels", "agent.bandwidth",
	"mqtt.uri", "mqtt.ca", "mqtt.cert", "mqtt.key", "mqtt.keepalive", "mqtt.verify_host",
	"telemetry.interval", "telemetry.outbox_max_bytes", "telemetry.outbox_max_records",
	"telemetry.include_content", "telemetry.disk_low", "telemetry.clock_jump",
	"telemetry.resend_after",
	"serve.listen", "serve.socket", "serve.token", "serve.exec_allow", "hw.arch", "hw.ram_mb",
	"hw.accelerators", NULL,
};

/* Copy setting KEY (if set) into OUT; too long is -FL_ECONFIG. */
static int copy_setting(const struct fl_config *c, const char *key, char *out, size_t out_len,
			const char *path, char *err, size_t err_len)
{
	const char *s = fl_config_get_str(c, key, NULL);
	if (!s)
		return 0;
	if (strlen(s) >= out_len) {
		snprintf(err, err_len, "%s: %s is too long (max %zu bytes)", path, key, out_len - 1);
		return -FL_ECONFIG;
	}
	fl_strlcpy(out, s, out_len);
	return 0;
}

/* Next entry of a comma-separated list at *P (blanks around it trimmed):
 * its start and length; false at the end. */
static bool list_next(const char **p, const char **ret, size_t *ret_len)
{
	const char *s = *p;
	while (*s == ' ' || *s == '\t' || *s == ',')
		s++;
	if (!*s)
		return false;
	const char *e = strchr(s, ',');
	if (!e)
		e = s + strlen(s);
	*p = e;
	while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	*ret = s;
	*ret_len = (size_t)(e - s);
	return true;
}

static int exec_allow_valid(const char *list)
{
	const char *p = list, *s;
	size_t n;
	while (list_next(&p, &s, &n))
		if (s[0] != '/' || n < 2 || memchr(s, '{', n))
			return -FL_ECONFIG;
	return 0;
}

int agent_exec_check(const struct agent_config *cfg, const struct ota_manifest *m, char *why,
		     size_t why_len)
{
	if (strcmp(agent_backend_of(m), "exec"))
		return 0;
	const cJSON *ex = m->runtime ? cJSON_GetObjectItemCaseSensitive(m->runtime, "exec") : NULL;
	const cJSON *cmd = cJSON_IsObject(ex) ? cJSON_GetObjectItemCaseSensitive(ex, "command") : NULL;
	const cJSON *c0 = cJSON_IsArray(cmd) ? cJSON_GetArrayItem(cmd, 0) : NULL;
	if (!cJSON_IsString(c0) || !c0->valuestring[0]) {
		snprintf(why, why_len, "backend exec: runtime.exec.command names no program");
		return -FL_EINCOMPAT;
	}
	const char *prog = c0->valuestring, *p = cfg->serve_exec_allow, *s;
	size_t n;
	while (list_next(&p, &s, &n))
		if (strlen(prog) == n && !memcmp(prog, s, n))
			return 0;
	snprintf(why, why_len, "backend exec: %.200s is not allowed on this device (%s)", prog,
		 cfg->serve_exec_allow[0] ? "not in serve.exec_allow"
					  : "serve.exec_allow is empty: exec backend disabled");
	return -FL_EINCOMPAT;
}

int agent_labels_parse(const char *text, cJSON **ret)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return -ENOMEM;
	char buf[1024];
	if (strlen(text) >= sizeof(buf)) {
		cJSON_Delete(o);
		return -FL_ECONFIG;
	}
	fl_strlcpy(buf, text, sizeof(buf));
	char *save = NULL;
	int r = 0;
	for (char *tok = strtok_r(buf, ",", &save); tok && r == 0; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		char *eq = strchr(tok, '=');
		if (!eq) {
			r = -FL_ECONFIG;
			break;
		}
		*eq = 0;
		char *val = eq + 1;
		size_t n = strlen(val);
		while (n && val[n - 1] == ' ')
			val[--n] = 0;
		n = strlen(tok);
		while (n && tok[n - 1] == ' ')
			tok[--n] = 0;
		if (!fl_name_valid(tok, 64) || n == 0 || strlen(val) > 128 ||
		    cJSON_GetObjectItemCaseSensitive(o, tok) || !cJSON_AddStringToObject(o, tok, val))
			r = -FL_ECONFIG;
	}
	if (r < 0 || !ret)
		cJSON_Delete(o);
	else
		*ret = o;
	return r;
}

/* A comma-separated list of names, each valid (fl_name_valid, <= 64). */
static bool name_list_valid(const char *text)
{
	char buf[256];
	if (strlen(text) >= sizeof(buf))
		return false;
	fl_strlcpy(buf, text, sizeof(buf));
	char *save = NULL;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		if (!fl_name_valid(tok, 64))
			return false;
	return true;
}

/* [hw]: arch, ram_mb, accelerators override the detected hardware class. */
static int agent_config_hw(const struct fl_config *c, struct agent_config *cfg, const char *path,
			   char *err, size_t err_len)
{
	int64_t v;
	int r = fl_config_get_int(c, "hw.ram_mb", 1, 1 << 30, 0, &v);
	if (r < 0) {
		snprintf(err, err_len, "%s: hw.ram_mb must be a number of MiB (1..%d)", path, 1 << 30);
		return r;
	}
	cfg->hw_ram_mb = (uint64_t)v;
	const char *s = fl_config_get_str(c, "hw.arch", NULL);
	if (s && (!fl_name_valid(s, sizeof(cfg->hw_arch) - 1))) {
		snprintf(err, err_len, "%s: hw.arch '%s' is not a valid name (e.g. aarch64)", path, s);
		return -FL_ECONFIG;
	}
	if (s)
		fl_strlcpy(cfg->hw_arch, s, sizeof(cfg->hw_arch));
	s = fl_config_get_str(c, "hw.accelerators", NULL);
	if (s && !name_list_valid(s)) {
		snprintf(err, err_len, "%s: hw.accelerators must be names separated by commas", path);
		return -FL_ECONFIG;
	}
	if (s)
		fl_strlcpy(cfg->hw_accelerators, s, sizeof(cfg->hw_accelerators));
	return 0;
}

int agent_config_load(const char *path, struct agent_config *cfg, char *err, size_t err_len)
{
	memset(cfg, 0, sizeof(*cfg));
	fl_strlcpy(cfg->state_dir, AGENT_DEFAULT_STATE_DIR, sizeof(cfg->state_dir));
	fl_strlcpy(cfg->trust_dir, AGENT_DEFAULT_TRUST_DIR, sizeof(cfg->trust_dir));
	cfg->disk_reserve_bytes = 16u << 20;
	cfg->mqtt_keepalive_s = 30;
	cfg->mqtt_verify_host = true;
	if (!path)
		return 0;
	struct fl_config *c = NULL;
	int r = fl_config_load(path, &c, err, err_len);
	if (r < 0)
		return r;
	const char *bad = NULL;
	int64_t v;
	r = fl_config_check_keys(c, config_keys, &bad);
	if (r < 0) {
		snprintf(err, err_len, "%s: unknown setting '%s'", path, bad);
		goto out;
	}
	const char *s;
	if ((s = fl_config_get_str(c, "agent.state_dir", NULL)))
		fl_strlcpy(cfg->state_dir, s, sizeof(cfg->state_dir));
	if ((s = fl_config_get_str(c, "agent.trust_dir", NULL)))
		fl_strlcpy(cfg->trust_dir, s, sizeof(cfg->trust_dir));
	if ((s = fl_config_get_str(c, "agent.id", NULL))) {
		if (!fl_name_valid(s, sizeof(cfg->device_id) - 1)) {
			snprintf(err, err_len, "%s: agent.id '%s' is not a valid device id", path, s);
			r = -FL_ECONFIG;
			goto out;
		}
		fl_strlcpy(cfg->device_id, s, sizeof(cfg->device_id));
	}
	if ((r = fl_config_get_int(c, "agent.threshold", 0, 16, 0, &v)) < 0) {
		snprintf(err, err_len, "%s: agent.threshold must be 0..16", path);
		goto out;
	}
	cfg->threshold = (unsigned)v;
	if ((r = fl_config_get_int(c, "agent.disk_reserve", 0, INT64_MAX, 16 << 20, &v)) < 0) {
		snprintf(err, err_len, "%s: agent.disk_reserve must be a size", path);
		goto out;
	}
	cfg->disk_reserve_bytes = (uint64_t)v;
	if ((r = fl_config_get_int(c, "agent.bandwidth", 0, INT64_MAX, 0, &v)) < 0) {
		snprintf(err, err_len, "%s: agent.bandwidth must be bytes/s (0 = no cap)", path);
		goto out;
	}
	cfg->bandwidth_bps = (uint64_t)v;
	if ((r = fl_config_get_int(c, "mqtt.keepalive", 1, 65535, 30, &v)) < 0) {
		snprintf(err, err_len, "%s: mqtt.keepalive must be 1..65535 seconds", path);
		goto out;
	}
	cfg->mqtt_keepalive_s = (int)v;
	if ((r = fl_config_get_bool(c, "mqtt.verify_host", true, &cfg->mqtt_verify_host)) < 0) {
		snprintf(err, err_len, "%s: mqtt.verify_host must be a boolean", path);
		goto out;
	}
	if ((r = copy_setting(c, "agent.labels", cfg->labels, sizeof(cfg->labels), path, err, err_len)) < 0 ||
	    (r = copy_setting(c, "mqtt.uri", cfg->mqtt_uri, sizeof(cfg->mqtt_uri), path, err, err_len)) < 0 ||
	    (r = copy_setting(c, "mqtt.ca", cfg->mqtt_ca, sizeof(cfg->mqtt_ca), path, err, err_len)) < 0 ||
	    (r = copy_setting(c, "mqtt.cert", cfg->mqtt_cert, sizeof(cfg->mqtt_cert), path, err, err_len)) < 0 ||
	    (r = copy_setting(c, "mqtt.key", cfg->mqtt_key, sizeof(cfg->mqtt_key), path, err, err_len)) < 0 ||
	    (r = copy_setting(c, "serve.listen", cfg->serve_listen, sizeof(cfg->serve_listen), path, err, err_len)) < 0 ||
	    (r = copy_setting(c, "serve.socket", cfg->serve_socket, sizeof(cfg->serve_socket), path, err, err_len)) < 0 ||
	    (r = copy_setting(c, "serve.token", cfg->serve_token, sizeof(cfg->serve_token), path, err, err_len)) < 0 ||
	    (r = copy_setting(c, "serve.exec_allow", cfg->serve_exec_allow, sizeof(cfg->serve_exec_allow), path, err, err_len)) < 0)
		goto out;
	if ((r = exec_allow_valid(cfg->serve_exec_allow)) < 0) {
		snprintf(err, err_len, "%s: serve.exec_allow must be absolute paths separated by commas", path);
		goto out;
	}
	if ((r = agent_config_hw(c, cfg, path, err, err_len)) < 0)
		goto out;
	if ((r = agent_report_config(c, cfg, path, err, err_len)) < 0)
		goto out;
	if (cfg->labels[0] && (r = agent_labels_parse(cfg->labels, NULL)) < 0) {
		snprintf(err, err_len, "%s: agent.labels must be name=value pairs separated by commas", path);
		goto out;
	}
	if (cfg->mqtt_uri[0] && !cfg->device_id[0]) {
		snprintf(err, err_len, "%s: mqtt.uri needs agent.id (the certificate's CN)", path);
		r = -FL_ECONFIG;
		goto out;
	}
	if ((s = fl_config_get_str(c, "agent.log_level", NULL))) {
		enum fl_log_level l;
		if (fl_log_parse_level(s, &l) < 0) {
			snprintf(err, err_len, "%s: agent.log_level must be error|warn|info|debug", path);
			r = -FL_ECONFIG;
			goto out;
		}
		fl_log_set_level(l);
	}
out:
	fl_config_free(c);
	return r;
}

/* A keyring shipped next to the root keys (TRUST_DIR/keyring.dsse.json, put
 * there when the device was provisioned or by a package) is installed when it
 * is newer than the one in the state directory. It goes through the same
 * checks as any keyring: threshold of roots, monotonic version, expiry. */
static void provision_keyring(struct agent *a)
{
	_cleanup_free_ char *p = fl_path_join(a->cfg.trust_dir, OTA_TRUST_KEYRING_FILE);
	_cleanup_free_ char *data = NULL;
	size_t len;
	if (!p || fl_read_file(p, OTA_DSSE_MAX_BYTES, &data, &len) < 0)
		return;
	int r = ota_trust_install_keyring(a->trust, data, len, fl_now_s());
	if (r == 1)
		fl_info("installed keyring from %s", p);
	else if (r < 0 && r != -FL_EKEYRINGOLD)
		fl_warn("keyring %s not installed: %s", p, fl_strerror(r));
}

int agent_open(struct agent *a, const struct agent_config *cfg, bool read_only)
{
	memset(a, 0, sizeof(*a));
	a->lock_fd = -1;
	a->cfg = *cfg;
	/* runners (children) check it again when they start an exec server */
	if (setenv("FLOTILLA_EXEC_ALLOW", cfg->serve_exec_allow, 1) < 0)
		return -errno;
	int r = fl_mkdir_p(cfg->state_dir, 0755);
	if (r < 0) {
		fl_err("state directory %s: %s", cfg->state_dir, fl_strerror(r));
		return r;
	}
	snprintf(a->models_dir, sizeof(a->models_dir), "%s/models", cfg->state_dir);
	r = fl_mkdir_p(a->models_dir, 0755);
	if (r < 0)
		return r;
	char path[1200];
	if (read_only) {
		snprintf(path, sizeof(path), "%s/state.db", cfg->state_dir);
		r = journal_open(path, &a->journal);
		if (r < 0)
			goto fail;
		return 0;
	}
	snprintf(path, sizeof(path), "%s/agent.lock", cfg->state_dir);
	a->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (a->lock_fd < 0)
		return -errno;
	if (flock(a->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		fl_err("another flotilla-agent is using %s (with the service running, drop "
		       "bundles into %s/spool instead)", cfg->state_dir, cfg->state_dir);
		r = -FL_EBUSY;
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/state.db", cfg->state_dir);
	r = journal_open(path, &a->journal);
	if (r < 0)
		goto fail;
	snprintf(path, sizeof(path), "%s/trust", cfg->state_dir);
	r = fl_mkdir_p(path, 0755);
	if (r < 0)
		goto fail;
	snprintf(path, sizeof(path), "%s/trust/keyring.dsse.json", cfg->state_dir);
	r = ota_trust_open(cfg->trust_dir, path, cfg->threshold, &a->trust);
	if (r < 0) {
		/* Status and check work without trust; install reports it. */
		fl_warn("trust store %s: %s", cfg->trust_dir, fl_strerror(r));
		a->trust = NULL;
		return 0;
	}
	provision_keyring(a);
	return 0;
fail:
	agent_close(a);
	return r;
}

void agent_close(struct agent *a)
{
	ota_trust_free(a->trust);
	a->trust = NULL;
	journal_close(a->journal);
	a->journal = NULL;
	if (a->lock_fd >= 0)
		close(a->lock_fd);
	a->lock_fd = -1;
}
