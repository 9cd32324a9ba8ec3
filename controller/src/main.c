/* flotilla-controller: the central service (docs/controller.md).
 *
 *   flotilla-controller --config FILE [--port-file FILE]
 *
 * Serves the HTTP API until SIGTERM or SIGINT, then stops cleanly: the HTTP
 * threads are joined and pending telemetry is committed. With an [mqtt]
 * section it also runs the device session (ctl_mqtt.h) in this thread's
 * poll loop: states, telemetry, chunk requests in; chunk data and commands
 * out. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/log.h>
#include <flotilla/sdnotify.h>
#include <flotilla/util.h>

#include <flotilla/pki.h>

#include "config.h"
#include "ctl.h"
#include "ctl_mqtt.h"
#include "http.h"
#include "rollout.h"

#define TICK_MS 100
#define ROLLOUT_TICK_MS 500

/* The rollout engine's commands go out like the API's deploy/revert: queued
 * on the MQTT session, not waited for (the loop publishes them). */
static int rollout_send(void *ud, const char *device, const char *json, size_t len)
{
	return ctl_mqtt_command(ud, device, json, len, 0);
}

/* Start the MQTT session of [mqtt] (*RET stays NULL without one). */
static int start_mqtt(struct ctl *c, const struct ctl_config *cfg, struct ctl_mqtt **ret)
{
	if (!cfg->mqtt_uri)
		return 0;
	char cn[PKI_NAME_MAX_LEN + 1] = "";
	const char *id = cfg->mqtt_client_id;
	if (!id) {
		/* The broker takes the certificate's CN as the user name and
		 * client id (docs/broker.md): use the same. */
		struct pki_cert_info info;
		memset(&info, 0, sizeof(info));
		int r = pki_verify(cfg->mqtt_ca, cfg->mqtt_cert, NULL, PKI_KIND_ANY, &info);
		if (r < 0) {
			fprintf(stderr, "flotilla-controller: certificate %s: %s\n", cfg->mqtt_cert,
				fl_strerror(r));
			return r;
		}
		fl_strlcpy(cn, info.cn, sizeof(cn));
		id = cn;
	}
	struct ctl_mqtt_opts mo = {.uri = cfg->mqtt_uri,
				   .client_id = id,
				   .ca_file = cfg->mqtt_ca,
				   .cert_file = cfg->mqtt_cert,
				   .key_file = cfg->mqtt_key,
				   .verify_host = cfg->mqtt_verify_host};
	struct ctl_mqtt *m = NULL;
	int r = ctl_mqtt_new(c, &mo, &m);
	if (r >= 0)
		r = ctl_mqtt_start(m);
	if (r < 0) {
		fprintf(stderr, "flotilla-controller: MQTT %s: %s\n", cfg->mqtt_uri, fl_strerror(r));
		ctl_mqtt_free(m);
		return r;
	}
	fl_info("mqtt: connecting to %s as %s", cfg->mqtt_uri, id);
	*ret = m;
	return 0;
}

/* A failure repeated every tick (the database is down: the store retries
 * with its own backoff) is logged when it starts, every LOG_EVERY_MS while
 * it lasts (with the count) and when it ends. */
#define LOG_EVERY_MS 10000
struct err_log {
	const char *what;
	int64_t since_ms, last_ms;
	unsigned n;
};

static void err_note(struct err_log *e, int r, const char *hint)
{
	int64_t now = fl_mono_ms();
	if (r >= 0) {
		if (e->n)
			fl_info("%s: works again after %u failures in %lld ms", e->what, e->n,
				(long long)(now - e->since_ms));
		e->n = 0;
		return;
	}
	if (e->n++ == 0) {
		e->since_ms = e->last_ms = now;
		fl_warn("%s failed: %s%s", e->what, fl_strerror(r), hint);
	} else if (now - e->last_ms >= LOG_EVERY_MS) {
		e->last_ms = now;
		fl_warn("%s still failing: %s (%u times in %lld ms)%s", e->what, fl_strerror(r),
			e->n, (long long)(now - e->since_ms), hint);
	}
}

static void usage(FILE *f)
{
	fputs("usage: flotilla-controller --config FILE [--port-file FILE]\n"
	      "\n"
	      "  --config FILE     configuration (docs/controller.md)\n"
	      "  --port-file FILE  write the HTTP port bound (useful with port = 0)\n",
	      f);
}

int main(int argc, char **argv)
{
	fl_log_init("flotilla-controller");
	const char *config = NULL, *port_file = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--config") && i + 1 < argc) {
			config = argv[++i];
		} else if (!strcmp(argv[i], "--port-file") && i + 1 < argc) {
			port_file = argv[++i];
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!config) {
		usage(stderr);
		return 2;
	}
	struct ctl_config cfg;
	char err[512] = "";
	int r = ctl_config_load(config, &cfg, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "flotilla-controller: %s\n", err[0] ? err : fl_strerror(r));
		return 1;
	}
	if (cfg.log_level) {
		enum fl_log_level lvl;
		if (fl_log_parse_level(cfg.log_level, &lvl) == 0)
			fl_log_set_level(lvl);
	}
	if (cfg.n_tokens == 0)
		fl_warn("no tokens configured: every API request but /healthz is refused");

	/* Signals are taken synchronously by the main loop; the HTTP threads
	 * inherit the blocked mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct ctl_opts opts = {.data_dir = cfg.data_dir,
				.trust_dir = cfg.trust_dir,
				.store_dsn = cfg.store_dsn,
				.batch_records = cfg.batch_records,
				.flush_ms = cfg.flush_ms,
				.max_bundle_bytes = cfg.max_upload_bytes};
	struct ctl *c = NULL;
	if ((r = ctl_open(&opts, &c)) < 0) {
		fprintf(stderr, "flotilla-controller: cannot open %s%s%s: %s\n", cfg.data_dir,
			cfg.trust_dir ? " with trust dir " : "", cfg.trust_dir ? cfg.trust_dir : "",
			fl_strerror(r));
		ctl_config_free(&cfg);
		return 1;
	}
	struct ctl_mqtt *mq = NULL;
	if (start_mqtt(c, &cfg, &mq) < 0) {
		ctl_free(c);
		ctl_config_free(&cfg);
		return 1;
	}
	char *tmp = fl_path_join(cfg.data_dir, "tmp");
	struct ctl_http_opts ho = {.address = cfg.listen,
				   .port = cfg.port,
				   .tokens = cfg.tokens,
				   .n_tokens = cfg.n_tokens,
				   .max_upload_bytes = cfg.max_upload_bytes,
				   .tmp_dir = tmp,
				   .mqtt = mq};
	struct ctl_http *h = NULL;
	r = tmp ? ctl_http_start(c, &ho, &h) : -ENOMEM;
	free(tmp);
	if (r < 0) {
		fprintf(stderr, "flotilla-controller: cannot listen on %s port %u: %s\n", cfg.listen,
			(unsigned)cfg.port, fl_strerror(r));
		ctl_mqtt_free(mq);
		ctl_free(c);
		ctl_config_free(&cfg);
		return 1;
	}
	uint16_t port = ctl_http_port(h);
	if (port_file) {
		char buf[16];
		int n = fl_snprintf(buf, sizeof(buf), "%u\n", (unsigned)port);
		if (n < 0 || (r = fl_write_file_atomic(port_file, buf, (size_t)n, 0644)) < 0) {
			fprintf(stderr, "flotilla-controller: cannot write %s: %s\n", port_file,
				fl_strerror(n < 0 ? n : r));
			ctl_http_stop(h);
			ctl_mqtt_free(mq);
			ctl_free(c);
			ctl_config_free(&cfg);
			return 1;
		}
	}
	fl_info("listening on %s port %u, data in %s, bundles %s", cfg.listen, (unsigned)port,
		cfg.data_dir, cfg.trust_dir ? "verified" : "NOT verified (no trust_dir)");

	int sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		fprintf(stderr, "flotilla-controller: signalfd: %s\n", fl_strerror(-errno));
		ctl_http_stop(h);
		ctl_mqtt_free(mq);
		ctl_free(c);
		ctl_config_free(&cfg);
		return 1;
	}
	int64_t next_tick = fl_mono_ms() + TICK_MS;
	int64_t next_rollout = fl_mono_ms() + ROLLOUT_TICK_MS;
	/* systemd (Type=notify, WatchdogSec): ready once listening; the
	 * watchdog is pinged from this loop's tick. */
	fl_sd_notify("READY=1\nSTATUS=serving");
	struct err_log tele_log = {.what = "telemetry commit"}, ro_log = {.what = "rollout tick"};
	for (;;) {
		struct pollfd pfd[3] = {{.fd = sfd, .events = POLLIN}};
		int n = 1, mfds[2];
		int k = mq ? ctl_mqtt_fds(mq, mfds) : 0;
		for (int i = 0; i < k; i++)
			pfd[n++] = (struct pollfd){.fd = mfds[i], .events = POLLIN};
		int64_t now = fl_mono_ms();
		int timeout = next_tick > now ? (int)(next_tick - now) : 0;
		if (mq) {
			int next = -1;
			ctl_mqtt_run(mq, now, &next);
			if (next >= 0 && next < timeout)
				timeout = next;
		}
		if (poll(pfd, (nfds_t)n, timeout) < 0 && errno != EINTR) {
			fl_err("poll: %s", fl_strerror(-errno));
			break;
		}
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si) &&
			    (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)) {
				fl_info("signal %u: stopping", si.ssi_signo);
				fl_sd_notify("STOPPING=1");
				break;
			}
		}
		if (fl_mono_ms() >= next_tick) {
			next_tick = fl_mono_ms() + TICK_MS;
			fl_sd_notify("WATCHDOG=1");
			r = ctl_tick(c);
			err_note(&tele_log, r, r < 0 ? " (records kept pending)" : "");
		}
		if (mq && fl_mono_ms() >= next_rollout) {
			next_rollout = fl_mono_ms() + ROLLOUT_TICK_MS;
			r = ctl_rollout_tick(c, fl_now_s(), rollout_send, mq);
			err_note(&ro_log, r, "");
		}
	}
	close(sfd);
	/* HTTP first: its threads may be waiting on a command. */
	ctl_http_stop(h);
	ctl_mqtt_free(mq);
	ctl_free(c);
	ctl_config_free(&cfg);
	return 0;
}
