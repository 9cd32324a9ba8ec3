/* Per-device collectors from /proc and /sys. Every read is bounded (at most
 * 64 KiB per file, 64 thermal zones) and a missing source is not an error:
 * the matching has_* flag in struct tele_device_metrics stays false.
 *
 * ROOT (may be NULL for "/") prefixes every path, so tests can point the
 * collectors at a fake tree. Not thread-safe per sampler. */
#ifndef FLOTILLA_TELE_COLLECT_H
#define FLOTILLA_TELE_COLLECT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <flotilla/tele_metrics.h>

/* Device CPU utilisation needs two samples of /proc/stat. */
struct tele_cpu_sampler {
	uint64_t busy;
	uint64_t total;
	bool primed;
};

/* Utilisation (0..100, all CPUs) since the previous call; the first call only
 * primes the sampler and returns -EAGAIN. -ENOENT / -FL_EFORMAT when
 * /proc/stat is absent or unreadable. */
int tele_cpu_sample(struct tele_cpu_sampler *s, const char *root, double *ret_pct);

/* Resident set size of PID (0 = this process) from /proc/<pid>/status VmRSS. */
int tele_read_rss(const char *root, pid_t pid, uint64_t *ret_bytes);
/* MemTotal / MemAvailable from /proc/meminfo. */
int tele_read_meminfo(const char *root, uint64_t *ret_total, uint64_t *ret_avail);
/* Hottest /sys/class/thermal/thermal_zone*\/temp in millidegrees C;
 * -ENOENT when the kernel exposes none. */
int tele_read_temp(const char *root, int64_t *ret_mc);
/* Seconds since boot from /proc/uptime. */
int tele_read_uptime(const char *root, uint64_t *ret_s);
/* Free (for unprivileged users) and total bytes of the file system of PATH
 * (not prefixed with ROOT). */
int tele_read_disk(const char *path, uint64_t *ret_free, uint64_t *ret_total);

/* Fill every collectable field of *ret (link counters are left untouched:
 * the agent owns them). PIDS[0..N_PIDS) are summed for RSS (0 = this process).
 * DATA_DIR is the file system whose free space is reported. Always succeeds;
 * absent sources leave their has_* false. */
void tele_collect_device(struct tele_cpu_sampler *cpu, const char *root, const pid_t *pids,
			 size_t n_pids, const char *data_dir, struct tele_device_metrics *ret);

#endif
