/* Telemetry values: log-bucket histograms, per-model-version metrics,
 * label-free model-quality signals with drift against a baseline, per-device
 * metrics, events, and their JSON record encoding (docs/telemetry.md).
 *
 * Everything here is plain data plus pure functions: no I/O, no globals.
 * The structs are public so the agent can accumulate into them directly;
 * they are not thread-safe (the caller owns the lock, if any). */
#ifndef FLOTILLA_TELE_METRICS_H
#define FLOTILLA_TELE_METRICS_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- histogram
 * Fixed log-spaced buckets shared by every device and every version, so two
 * histograms can always be added and compared. Bucket 0 holds [0, 1]; bucket
 * i (1 <= i < TELE_HIST_BUCKETS-1) holds (2^((i-1)/3), 2^(i/3)]; the last
 * bucket holds everything larger. Each bucket spans a factor of 2^(1/3)
 * (26%), so a percentile read back from the histogram is within 13% of the
 * exact value. Latencies are recorded in microseconds (1 us .. ~43 min),
 * output lengths in tokens. */
#define TELE_HIST_BUCKETS 96
#define TELE_HIST_STEPS_PER_OCTAVE 3

struct tele_hist {
	uint64_t counts[TELE_HIST_BUCKETS];
	uint64_t count;
	double sum;
	double min; /* valid when count > 0 */
	double max;
};

/* Bucket index of VALUE (negative and NaN values go to bucket 0). */
unsigned tele_hist_bucket(double value);
/* Upper bound of bucket I (+inf for the last bucket). */
double tele_hist_upper(unsigned i);
void tele_hist_reset(struct tele_hist *h);
void tele_hist_add(struct tele_hist *h, double value);
/* Add every count of SRC into DST. */
void tele_hist_merge(struct tele_hist *dst, const struct tele_hist *src);
/* Estimate the Q-quantile (0 <= Q <= 1) by log-linear interpolation inside
 * the bucket that holds rank ceil(Q*count), clamped to [min, max].
 * -ENODATA when the histogram is empty, -EINVAL for Q outside [0, 1]. */
int tele_hist_percentile(const struct tele_hist *h, double q, double *ret);
/* Histogram <-> JSON {"n":COUNT,"sum":S,"min":M,"max":X,"b":[[INDEX,COUNT],...]}
 * (non-empty buckets only, ascending). to_json: NULL on OOM, caller frees with
 * cJSON_Delete(). from_json validates (indices ascending and in range, counts
 * adding up to n): -FL_ESCHEMA / -FL_ERANGE. */
cJSON *tele_hist_to_json(const struct tele_hist *h);
int tele_hist_from_json(const cJSON *obj, struct tele_hist *ret);

/* ------------------------------------------------------------ model quality
 * Signals that need no labels. Confidence (classifiers, 0..1) uses
 * TELE_CONF_BUCKETS linear buckets; classes are indices < TELE_MAX_CLASSES. */
#define TELE_CONF_BUCKETS 20
#define TELE_MAX_CLASSES 64

struct tele_quality {
	struct tele_hist out_len; /* output length in tokens */
	uint64_t outputs;         /* generative outputs observed */
	uint64_t empty;           /* empty or whitespace-only outputs */
	uint64_t refusals;        /* outputs that open like a refusal */
	uint64_t predictions;     /* classifier predictions observed */
	uint32_t n_classes;       /* 1 + highest class index seen */
	uint64_t class_counts[TELE_MAX_CLASSES];
	uint64_t conf_counts[TELE_CONF_BUCKETS];
};

void tele_quality_reset(struct tele_quality *q);
/* Record one generative output: TEXT (LEN bytes, may be NULL when LEN is 0)
 * and its length in tokens. Only the first 256 bytes of TEXT are looked at
 * (refusal check); the text is never stored. */
void tele_quality_observe_output(struct tele_quality *q, const char *text, size_t len,
				 uint64_t n_tokens);
/* Record one classifier prediction. -ERANGE (nothing recorded) when CLASS_IDX
 * >= TELE_MAX_CLASSES or CONFIDENCE is not within [0, 1]. */
int tele_quality_observe_class(struct tele_quality *q, unsigned class_idx, double confidence);
/* True when TEXT (LEN bytes) opens like a refusal ("I'm sorry", "I cannot",
 * "As an AI", ...; case-insensitive, after leading white space). */
bool tele_quality_is_refusal(const char *text, size_t len);

/* Drift of CURRENT against BASELINE (the values measured during acceptance
 * tests). Each *_psi is the population stability index
 * sum (c_i - b_i) ln(c_i / b_i) over bucket shares, with empty buckets
 * smoothed to 1e-4; < 0.1 is usually read as stable, > 0.25 as a shift.
 * A figure is -1 when either side has fewer than TELE_DRIFT_MIN_SAMPLES,
 * except the rate deltas, whose baseline side needs only
 * TELE_DRIFT_MIN_BASELINE_OUTPUTS: the baseline is the acceptance tests'
 * outputs, which a manifest usually has a handful of (docs/telemetry.md). */
#define TELE_DRIFT_MIN_SAMPLES 20
#define TELE_DRIFT_MIN_BASELINE_OUTPUTS 1

struct tele_drift {
	double len_psi;            /* output length distribution */
	double class_psi;          /* predicted-class mix */
	double conf_psi;           /* confidence histogram */
	double empty_rate_delta;   /* current minus baseline (absolute) */
	double refusal_rate_delta; /* current minus baseline (absolute) */
};

void tele_quality_drift(const struct tele_quality *baseline, const struct tele_quality *current,
			struct tele_drift *ret);

/* Quality <-> JSON object (the baseline is stored in this form). to_json
 * returns NULL on out of memory; caller frees with cJSON_Delete().
 * from_json validates every field: -FL_ESCHEMA / -FL_ERANGE. */
cJSON *tele_quality_to_json(const struct tele_quality *q);
int tele_quality_from_json(const cJSON *obj, struct tele_quality *ret);

/* ---------------------------------------------------- per-version metrics */
enum tele_err_kind {
	TELE_ERR_TIMEOUT,     /* request exceeded its deadline */
	TELE_ERR_OVERLOAD,    /* refused: queue full */
	TELE_ERR_BAD_REQUEST, /* invalid request */
	TELE_ERR_OOM,         /* runner out of memory */
	TELE_ERR_CRASH,       /* runner died during the request */
	TELE_ERR_INTERNAL,    /* anything else */
	TELE_ERR__COUNT
};
/* Wire name of KIND ("timeout", ...); NULL when out of range. */
const char *tele_err_kind_name(enum tele_err_kind kind);

#define TELE_NAME_MAX 64 /* model names and versions: fl_name_valid(s, 64) */
#define TELE_DEVICE_ID_MAX 64 /* device ids: fl_name_valid(id, 64) */

/* Counters over one reporting period for one model version. */
struct tele_model_metrics {
	char model[TELE_NAME_MAX + 1];
	char version[TELE_NAME_MAX + 1];
	uint32_t period_s;
	uint64_t requests;
	uint64_t errors[TELE_ERR__COUNT];
	struct tele_hist latency_us;
	uint64_t tokens_out;     /* tokens generated in the period */
	uint64_t gen_time_us;    /* time spent generating them (tokens/s derives) */
	uint32_t queue_depth;    /* at the end of the period */
	uint32_t queue_depth_max;
	uint32_t runner_restarts;
	bool has_quality;
	struct tele_quality quality;
	bool has_drift; /* drift against the version's baseline */
	struct tele_drift drift;
};

/* Per-device values (see tele_collect.h for the collectors). A field whose
 * source is absent on this machine has its has_* flag false. */
struct tele_device_metrics {
	bool has_cpu;
	double cpu_pct; /* all CPUs, 0..100, over the last sample interval */
	uint32_t n_cpus;
	bool has_rss;
	uint64_t rss_bytes; /* agent + runners */
	bool has_mem;
	uint64_t mem_total_bytes;
	uint64_t mem_avail_bytes;
	bool has_temp;
	int64_t temp_mc; /* hottest thermal zone, millidegrees Celsius */
	bool has_disk;
	uint64_t disk_free_bytes;
	uint64_t disk_total_bytes;
	bool has_uptime;
	uint64_t uptime_s;
	/* link quality, counted by the agent's MQTT session */
	uint64_t reconnects;
	uint64_t tx_bytes;
	uint64_t rx_bytes;
};

/* ------------------------------------------------------------------ events */
enum tele_event_kind {
	TELE_EV_INSTALL_STARTED,
	TELE_EV_INSTALL_STAGED,
	TELE_EV_INSTALL_REJECTED, /* reason: the check that failed */
	TELE_EV_SWITCHED,
	TELE_EV_TRIAL_FAILED,     /* reason: crash_loop | error_rate | latency; details: figures */
	TELE_EV_COMMITTED,
	TELE_EV_ROLLED_BACK,
	TELE_EV_RUNNER_CRASHED,   /* details: see tele_crash_details() */
	TELE_EV_DISK_LOW,
	TELE_EV_CLOCK_JUMP,
	TELE_EV__COUNT
};
const char *tele_event_kind_name(enum tele_event_kind kind);
/* Kind from its wire name; -EINVAL when unknown. */
int tele_event_kind_from_name(const char *name, enum tele_event_kind *ret);

#define TELE_REASON_MAX 64   /* reason code: fl_name_valid(reason, 64) */
#define TELE_TEXT_MAX 1024   /* reason text */
#define TELE_DETAILS_MAX 16384 /* serialized details object */

struct tele_event {
	enum tele_event_kind kind;
	const char *model;   /* NULL for device-wide events (disk_low, clock_jump) */
	const char *version; /* NULL when not tied to a version */
	const char *reason;  /* machine code, e.g. "bad_signature", "crash_loop" */
	const char *text;    /* human text, may be NULL */
	const cJSON *details; /* JSON object or NULL; not taken over */
};

/* Details of a runner crash. The failing request's content (prompt) goes out
 * only when INCLUDE_CONTENT is true (an opt-in of the device config); its size
 * and parameters always do. LOG_LINES (N_LOG_LINES, at most 20, each cut at
 * 512 bytes) are the runner's last log lines. Any pointer may be NULL.
 * Returns a new object (caller frees with cJSON_Delete()) or NULL on OOM. */
struct tele_crash_info {
	int signal;    /* 0 when it exited */
	int exit_code; /* -1 when killed by a signal */
	const char *const *log_lines;
	size_t n_log_lines;
	bool has_request;
	uint64_t request_bytes;
	const cJSON *request_params; /* e.g. {"max_tokens":..,"temperature":..} */
	const char *request_content; /* sent only with include_content */
	bool include_content;
};
cJSON *tele_crash_details(const struct tele_crash_info *info);

/* --------------------------------------------------------- record encoding
 * Each function renders one record body (a JSON object without "seq"; the
 * outbox adds it) at wall-clock time T_S. Caller frees *ret with cJSON_Delete().
 * Errors: -EINVAL (bad name, reason or kind), -FL_ETOOBIG (text or details
 * over their limits), -ENOMEM. */
int tele_record_model(const struct tele_model_metrics *m, int64_t t_s, cJSON **ret);
int tele_record_device(const struct tele_device_metrics *d, int64_t t_s, cJSON **ret);
int tele_record_event(const struct tele_event *ev, int64_t t_s, cJSON **ret);

#endif
