#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "agent.h"
#include <flotilla/cleanup.h>
#include <flotilla/config.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

static const char *const config_keys[] = {
	"agent.id", "agent.state_dir", "agent.trust_dir", "agent.threshold",
	"agent.disk_reserve", "agent.log_level", NULL,
};

int agent_config_load(const char *path, struct agent_config *cfg, char *err, size_t err_len)
{
	memset(cfg, 0, sizeof(*cfg));
	fl_strlcpy(cfg->state_dir, AGENT_DEFAULT_STATE_DIR, sizeof(cfg->state_dir));
	fl_strlcpy(cfg->trust_dir, AGENT_DEFAULT_TRUST_DIR, sizeof(cfg->trust_dir));
	cfg->disk_reserve_bytes = 16u << 20;
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
