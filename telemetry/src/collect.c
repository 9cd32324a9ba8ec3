/* Per-device collectors: /proc and /sys, bounded reads, absence tolerated. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/tele_collect.h>
#include <flotilla/util.h>

#define PROC_FILE_MAX (64 * 1024)
#define THERMAL_ZONES_MAX 64

static int read_rooted(const char *root, const char *path, char **ret, size_t *ret_len)
{
	char full[PATH_MAX];
	int r = fl_snprintf(full, sizeof(full), "%s%s", root && strcmp(root, "/") ? root : "",
			    path);
	if (r < 0)
		return r;
	r = fl_read_file(full, PROC_FILE_MAX, ret, ret_len);
	/* proc files report size 0: fl_read_file must read to EOF; map absence */
	if (r == -ENOTDIR || r == -EACCES)
		return -ENOENT;
	return r;
}

/* Value of the line "KEY: <number> kB" in TEXT, in bytes. */
static int kb_field(const char *text, const char *key, uint64_t *ret)
{
	size_t kl = strlen(key);
	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, key, kl) || p[kl] != ':')
			continue;
		char *end;
		errno = 0;
		unsigned long long v = strtoull(p + kl + 1, &end, 10);
		if (errno || end == p + kl + 1 || v > UINT64_MAX / 1024)
			return -FL_EFORMAT;
		*ret = (uint64_t)v * 1024;
		return 0;
	}
	return -ENOENT;
}

int tele_cpu_sample(struct tele_cpu_sampler *s, const char *root, double *ret_pct)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_rooted(root, "/proc/stat", &text, &len);
	if (r < 0)
		return r;
	if (strncmp(text, "cpu ", 4))
		return -FL_EFORMAT;
	/* user nice system idle iowait irq softirq steal */
	uint64_t v[8] = {0};
	const char *p = text + 4;
	int n = 0;
	for (; n < 8; n++) {
		char *end;
		errno = 0;
		unsigned long long x = strtoull(p, &end, 10);
		if (errno || end == p)
			break;
		v[n] = x;
		p = end;
	}
	if (n < 4)
		return -FL_EFORMAT;
	uint64_t idle = v[3] + v[4];
	uint64_t total = 0;
	for (int i = 0; i < 8; i++)
		total += v[i];
	uint64_t busy = total - idle;
	bool primed = s->primed;
	uint64_t db = busy - s->busy, dt = total - s->total;
	s->busy = busy;
	s->total = total;
	s->primed = true;
	if (!primed || busy < db || total < dt)
		return -EAGAIN;
	if (dt == 0 || db > dt) {
		*ret_pct = 0;
		return 0;
	}
	*ret_pct = 100.0 * (double)db / (double)dt;
	return 0;
}

int tele_read_rss(const char *root, pid_t pid, uint64_t *ret_bytes)
{
	char path[64];
	_cleanup_free_ char *text = NULL;
	size_t len;
	if (pid < 0)
		return -EINVAL;
	if (pid == 0)
		fl_strlcpy(path, "/proc/self/status", sizeof(path));
	else
		snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	int r = read_rooted(root, path, &text, &len);
	if (r < 0)
		return r;
	return kb_field(text, "VmRSS", ret_bytes);
}

int tele_read_meminfo(const char *root, uint64_t *ret_total, uint64_t *ret_avail)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	uint64_t total, avail;
	int r = read_rooted(root, "/proc/meminfo", &text, &len);
	if (r < 0 || (r = kb_field(text, "MemTotal", &total)) < 0 ||
	    (r = kb_field(text, "MemAvailable", &avail)) < 0)
		return r;
	*ret_total = total;
	*ret_avail = avail;
	return 0;
}

int tele_read_temp(const char *root, int64_t *ret_mc)
{
	char dir[PATH_MAX];
	int r = fl_snprintf(dir, sizeof(dir), "%s/sys/class/thermal",
			    root && strcmp(root, "/") ? root : "");
	if (r < 0)
		return r;
	DIR *d = opendir(dir);
	if (!d)
		return -ENOENT;
	bool found = false;
	int64_t best = 0;
	int zones = 0;
	struct dirent *de;
	while ((de = readdir(d)) && zones < THERMAL_ZONES_MAX) {
		if (strncmp(de->d_name, "thermal_zone", 12))
			continue;
		zones++;
		char rel[PATH_MAX];
		_cleanup_free_ char *text = NULL;
		size_t len;
		int64_t v;
		if (fl_snprintf(rel, sizeof(rel), "/sys/class/thermal/%s/temp", de->d_name) < 0 ||
		    read_rooted(root, rel, &text, &len) < 0)
			continue; /* a zone without a readable sensor is skipped */
		while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
			text[--len] = '\0';
		/* sensors report millidegrees; ignore absurd values */
		if (fl_parse_i64(text, -273150, 300000, &v) < 0)
			continue;
		if (!found || v > best)
			best = v;
		found = true;
	}
	closedir(d);
	if (!found)
		return -ENOENT;
	*ret_mc = best;
	return 0;
}

int tele_read_uptime(const char *root, uint64_t *ret_s)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_rooted(root, "/proc/uptime", &text, &len);
	if (r < 0)
		return r;
	char *end;
	errno = 0;
	double v = strtod(text, &end);
	if (errno || end == text || !(v >= 0 && v < 1e12))
		return -FL_EFORMAT;
	*ret_s = (uint64_t)v;
	return 0;
}

int tele_read_disk(const char *path, uint64_t *ret_free, uint64_t *ret_total)
{
	struct statvfs st;
	if (!path)
		return -EINVAL;
	if (statvfs(path, &st) < 0)
		return -errno;
	*ret_free = (uint64_t)st.f_bavail * st.f_frsize;
	*ret_total = (uint64_t)st.f_blocks * st.f_frsize;
	return 0;
}

void tele_collect_device(struct tele_cpu_sampler *cpu, const char *root, const pid_t *pids,
			 size_t n_pids, const char *data_dir, struct tele_device_metrics *ret)
{
	ret->has_cpu = cpu && tele_cpu_sample(cpu, root, &ret->cpu_pct) == 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	ret->n_cpus = ncpu > 0 ? (uint32_t)ncpu : 0;

	uint64_t rss_sum = 0, rss;
	bool any = false;
	pid_t self = 0;
	if (!pids || n_pids == 0) {
		pids = &self;
		n_pids = 1;
	}
	for (size_t i = 0; i < n_pids; i++)
		if (tele_read_rss(root, pids[i], &rss) == 0) {
			rss_sum += rss;
			any = true;
		}
	ret->has_rss = any;
	ret->rss_bytes = rss_sum;
	ret->has_mem = tele_read_meminfo(root, &ret->mem_total_bytes, &ret->mem_avail_bytes) == 0;
	ret->has_temp = tele_read_temp(root, &ret->temp_mc) == 0;
	ret->has_disk = data_dir &&
			tele_read_disk(data_dir, &ret->disk_free_bytes, &ret->disk_total_bytes) == 0;
	ret->has_uptime = tele_read_uptime(root, &ret->uptime_s) == 0;
}
