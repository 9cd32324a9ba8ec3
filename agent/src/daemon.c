/* `flotilla-agent run`: the service. One loop: recover at start, then watch
 * the spool directory (USB sticks, field service, a package drop), tick
 * trials and telemetry (report.c), drive the MQTT session and serve. */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "daemon.h"
#include "report.h"
#include <flotilla/sdnotify.h>
#include "session.h"
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

#define SPOOL_MAX_ATTEMPTS 3
#define SPOOL_SETTLE_S 2 /* a file must be unchanged this long before use */
#define TICK_MS 1000

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n > k && !strcmp(s + n - k, suffix);
}

/* Move a handled spool file aside so it is not installed again. */
static void spool_retire(const char *spool, const char *name, const char *sub)
{
	_cleanup_free_ char *dir = fl_path_join(spool, sub);
	_cleanup_free_ char *from = fl_path_join(spool, name);
	if (!dir || !from)
		return;
	fl_mkdir_p(dir, 0755);
	_cleanup_free_ char *to = fl_path_join(dir, name);
	if (!to || rename(from, to) < 0)
		unlink(from);
	fl_fsync_dir(spool);
}

/* Install every settled *.tar in the spool directory, oldest name first. */
static int spool_scan(struct agent *a, const char *spool)
{
	struct dirent **names = NULL;
	int n = scandir(spool, &names, NULL, alphasort);
	if (n < 0)
		return -errno;
	int64_t now = fl_now_s();
	for (int i = 0; i < n; i++) {
		const char *name = names[i]->d_name;
		_cleanup_free_ char *p = fl_path_join(spool, name);
		struct stat st;
		if (!p || !ends_with(name, ".tar") || lstat(p, &st) < 0 || !S_ISREG(st.st_mode) ||
		    now - st.st_mtime < SPOOL_SETTLE_S)
			continue;
		char key[1400];
		snprintf(key, sizeof(key), "%s:%lld:%lld", p, (long long)st.st_size,
			 (long long)st.st_mtime);
		int attempts = 0;
		if (journal_spool_attempt(a->journal, key, &attempts) < 0)
			continue;
		if (attempts > SPOOL_MAX_ATTEMPTS) {
			fl_err("spool: %s failed %d times; moved to failed/", name, attempts - 1);
			spool_retire(spool, name, "failed");
			journal_spool_forget(a->journal, key);
			continue;
		}
		fl_info("spool: installing %s (attempt %d)", name, attempts);
		int r = agent_install_bundle(a, p);
		if (r < 0)
			fl_warn("spool: %s: %s", name, fl_strerror(r));
		spool_retire(spool, name, r < 0 ? "rejected" : "installed");
		journal_spool_forget(a->journal, key);
	}
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return 0;
}

int agent_run(struct agent *a)
{
	char spool[1200];
	snprintf(spool, sizeof(spool), "%s/spool", a->cfg.state_dir);
	int r = fl_mkdir_p(spool, 0755);
	if (r < 0)
		return r;
	/* Telemetry first: recovery's events (a rollback at start) go out too.
	 * Only with MQTT: an offline device has nobody to report to. */
	if (a->cfg.mqtt_uri[0])
		agent_report_open(a);
	r = agent_recover(a, true);
	if (r < 0)
		fl_err("recovery: %s", fl_strerror(r));

	/* Runner sockets and HTTP clients may go away mid-write. */
	signal(SIGPIPE, SIG_IGN);
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	_cleanup_close_ int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	_cleanup_close_ int ifd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (sfd < 0 || ifd < 0 || inotify_add_watch(ifd, spool, IN_CLOSE_WRITE | IN_MOVED_TO) < 0) {
		r = -errno;
		agent_report_close(a);
		return r;
	}
	fl_info("running: state %s, spool %s", a->cfg.state_dir, spool);

	/* Serve the installed models (runners + local API). A model that does
	 * not start is reported and the rest go on; a busy listen address is
	 * fatal (the operator configured it). */
	r = agent_serving_start(a);
	if (r < 0) {
		agent_report_close(a);
		return r;
	}

	/* MQTT when configured; offline (spool only) otherwise. */
	struct agent_session *sess = NULL;
	if (a->cfg.mqtt_uri[0]) {
		r = agent_session_new(a, &sess);
		if (r < 0) {
			fl_err("mqtt: %s", fl_strerror(r));
			agent_serving_stop(a);
			agent_report_close(a);
			return r;
		}
	}

	/* systemd: ready after recovery and serving start; the watchdog is
	 * pinged from this loop (each turn is at most TICK_MS plus one step). */
	fl_sd_notify("READY=1\nSTATUS=running");
	/* The spool scan has its own deadline: files arriving all the time
	 * (each one delays the scan until it settled) must not hold up the
	 * watchdog, trials and telemetry. */
	int64_t next_tick = 0, next_scan = 0;
	/* The watchdog's own period: a quarter of WatchdogSec= (sd_notify(3)
	 * asks for at least half; a loop step may delay a ping), at most TICK_MS. */
	uint64_t wd_usec = 0;
	int64_t ping_ms = TICK_MS, next_ping = 0;
	if (fl_sd_watchdog_usec(&wd_usec) > 0 && (int64_t)(wd_usec / 4000) < ping_ms)
		ping_ms = wd_usec / 4000 > 10 ? (int64_t)(wd_usec / 4000) : 10;
	int sess_timeout = 0;
	for (;;) {
		int64_t now = fl_mono_ms();
		if (now >= next_scan) {
			spool_scan(a, spool);
			next_scan = now + TICK_MS;
		}
		now = fl_mono_ms();
		if (now >= next_ping) {
			fl_sd_notify("WATCHDOG=1");
			next_ping = now + ping_ms;
		}
		if (now >= next_tick) {
			agent_trial_tick(a);
			agent_serving_tick(a);
			agent_report_tick(a);
			next_tick = now + TICK_MS;
		}
		struct pollfd pfd[3] = {{.fd = sfd, .events = POLLIN},
					{.fd = ifd, .events = POLLIN},
					{.fd = sess ? agent_session_fd(sess) : -1, .events = POLLIN}};
		int64_t wake = next_scan < next_tick ? next_scan : next_tick;
		int timeout = (int)((wake < next_ping ? wake : next_ping) - fl_mono_ms());
		if (timeout < 0)
			timeout = 0;
		if (sess && sess_timeout >= 0 && sess_timeout < timeout)
			timeout = sess_timeout;
		if (poll(pfd, 3, timeout) < 0 && errno != EINTR) {
			r = -errno;
			agent_session_free(sess);
			agent_serving_stop(a);
			agent_report_close(a);
			return r;
		}
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				fl_info("signal %u: stopping", si.ssi_signo);
				fl_sd_notify("STOPPING=1");
				/* The period so far goes into the outbox (sent at the
				 * next start), while the runners still exist. */
				agent_report_flush(a);
				agent_session_free(sess);
				agent_serving_stop(a); /* drains requests in flight */
				agent_report_close(a);
				return 0;
			}
		}
		if (sess)
			agent_session_run(sess, &sess_timeout);
		if (pfd[1].revents & POLLIN) {
			char buf[4096];
			while (read(ifd, buf, sizeof(buf)) > 0)
				;
			/* A new file: look again once it has settled. */
			int64_t settled = fl_mono_ms() + SPOOL_SETTLE_S * 1000 + 100;
			if (settled < next_scan)
				next_scan = settled; /* never later than the regular scan */
		}
	}
}
