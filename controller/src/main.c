/* flotilla-controller: the central service (docs/controller.md).
 *
 *   flotilla-controller --config FILE [--port-file FILE]
 *
 * Serves the HTTP API until SIGTERM or SIGINT, then stops cleanly: the HTTP
 * threads are joined and pending telemetry is committed. The MQTT side joins
 * later (it will call ctl_registry_on_state(), ctl_ingest_batch() and
 * ctl_chunks_read()). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

#include "config.h"
#include "ctl.h"
#include "http.h"

#define TICK_MS 100

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
	char *tmp = fl_path_join(cfg.data_dir, "tmp");
	struct ctl_http_opts ho = {.address = cfg.listen,
				   .port = cfg.port,
				   .tokens = cfg.tokens,
				   .n_tokens = cfg.n_tokens,
				   .max_upload_bytes = cfg.max_upload_bytes,
				   .tmp_dir = tmp};
	struct ctl_http *h = NULL;
	r = tmp ? ctl_http_start(c, &ho, &h) : -ENOMEM;
	free(tmp);
	if (r < 0) {
		fprintf(stderr, "flotilla-controller: cannot listen on %s port %u: %s\n", cfg.listen,
			(unsigned)cfg.port, fl_strerror(r));
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
			ctl_free(c);
			ctl_config_free(&cfg);
			return 1;
		}
	}
	fl_info("listening on %s port %u, data in %s, bundles %s", cfg.listen, (unsigned)port,
		cfg.data_dir, cfg.trust_dir ? "verified" : "NOT verified (no trust_dir)");

	struct timespec tick = {.tv_sec = 0, .tv_nsec = TICK_MS * 1000000L};
	for (;;) {
		int sig = sigtimedwait(&sigs, NULL, &tick);
		if (sig == SIGTERM || sig == SIGINT) {
			fl_info("signal %d: stopping", sig);
			break;
		}
		r = ctl_tick(c);
		if (r < 0)
			fl_warn("telemetry commit failed: %s (records kept pending)", fl_strerror(r));
	}
	ctl_http_stop(h);
	ctl_free(c);
	ctl_config_free(&cfg);
	return 0;
}
