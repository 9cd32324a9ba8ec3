/* flotilla-sim: many simulated devices in one process (docs/scale.md).
 * Each device is its own MQTT v5 client over mutual TLS (libmosquitto,
 * driven by one epoll loop), with its own certificate, speaking
 * docs/protocol.md with the agent's protocol library (agentproto,
 * agent/src/proto.h): retained state with last will, cmd (deploy, revert,
 * ping), chunk/req + chunk/dat, telemetry batches (docs/telemetry.md). */
#ifndef FLOTILLA_SIM_H
#define FLOTILLA_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIM_MAX_CLASSES 16
#define SIM_NAME_MAX 64

struct sim_class {
	char name[SIM_NAME_MAX + 1];
	double weight;                  /* share of the fleet (relative) */
	char arch[SIM_NAME_MAX + 1];
	int64_t ram_mb;
	char labels_json[1024];         /* {"k":"v",...} */
	int64_t fetch_ms;               /* simulated fetch time (devices that do not fetch for real) */
	int64_t accept_ms, trial_ms;    /* acceptance tests, trial window */
	int64_t latency_us;             /* median request latency reported in metrics */
	char fail_version[SIM_NAME_MAX + 1]; /* "*" any, "" none: versions the failures below hit */
	double fail_accept;             /* probability the acceptance tests fail */
	double crash_trial;             /* probability the trial crash-loops (rolled back) */
	double slow_factor;             /* latency multiplier on fail_version */
};

struct sim_scenario {
	int n;                          /* devices */
	int first;                      /* index of the first device (ids PREFIX%05d) */
	char prefix[32];
	char model[SIM_NAME_MAX + 1];
	char version[SIM_NAME_MAX + 1]; /* what every device runs at start */
	uint64_t sequence;
	double real_fetch;              /* fraction of devices that pull chunks for real */
	int64_t telemetry_s;            /* metrics interval; 0 off */
	int connect_rate;               /* new connections started per second */
	double churn_per_min;           /* fraction of the fleet dropping per minute */
	int64_t churn_offline_s;        /* how long a churned device stays away */
	uint64_t seed;
	struct sim_class cls[SIM_MAX_CLASSES];
	int n_cls;
};

/* Defaults, then FILE (may be NULL). Errors print a message; -FL_ECONFIG. */
int sim_scenario_load(const char *file, struct sim_scenario *sc);

/* Issue device certificates PREFIX%05d for indexes [first, first+n) in
 * PKI_DIR/devices with the ota pki API; existing ones are kept. */
int sim_certs(const char *pki_dir, const char *prefix, int first, int n);

#endif
