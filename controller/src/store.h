/* The controller's storage interface (docs/controller.md "Store").
 *
 * A struct ctl_store is a table of operations plus the backend's state:
 * SQLite (store_sqlite.c, WAL, the default) or PostgreSQL (store_pg.c,
 * libpq). All SQL lives in those two files. Listing operations return cJSON trees because every caller (HTTP
 * API, CLI) wants JSON anyway.
 *
 * Errors: -FL_EDB for a database failure, -EINVAL for a bad argument,
 * -ENOMEM. Functions that report "new or not" return 1 (changed) or 0.
 *
 * Thread-safety: none; the caller (struct ctl, ctl.h) serializes access with
 * its lock. */
#ifndef FLOTILLA_CTL_STORE_H
#define FLOTILLA_CTL_STORE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <flotilla/tele_metrics.h>

#define CTL_DEVICE_ID_MAX 64
#define CTL_STORE_SCHEMA_VERSION 3

/* A device as the registry keeps it (strings owned by the caller). */
struct ctl_device {
	const char *id;
	const char *labels_json;       /* JSON object text */
	const char *arch;              /* NULL when unknown */
	int64_t ram_mb;                /* -1 when unknown */
	const char *accelerators_json; /* JSON array text */
	const char *backends_json;     /* JSON array text */
	bool online;
	int64_t last_seen_s;
	const char *agent_version;     /* NULL when unknown */
};

/* One model on a device. */
struct ctl_device_model {
	const char *device;
	const char *model;
	const char *current_slot;  /* "a", "b" or NULL */
	const char *current_version; /* version in the current slot, or NULL */
	const char *slots_json;    /* the "slots" object as JSON text */
	const char *install_state; /* NULL when no install */
	const char *install_version;
	const char *install_error;
	int64_t bytes_done, bytes_total, chunks_done, chunks_total;
};

/* A pushed bundle. */
struct ctl_bundle_rec {
	const char *model;
	const char *version;
	uint64_t sequence;
	const char *envelope_id;  /* hex SHA-256 of the envelope */
	const char *envelope;
	const char *files_json;   /* [{"path","size","sha256","chunk_index_sha256"}] */
	bool verified;
	int64_t pushed_at_s;
};

/* One telemetry record. */
struct ctl_tele_rec {
	const char *device;
	const char *stream;
	uint64_t seq;
	const char *kind; /* "model", "device", "event:<kind>", "dropped" */
	int64_t ts;
	const char *json;
};

/* Device list filters; NULL / -1 fields are not applied. */
struct ctl_device_filter {
	const char *label_key;
	const char *label_value;
	const char *arch;
	const char *version; /* any model's current version */
	int online;          /* -1 any, 0, 1 */
	size_t limit;        /* 0: CTL_STORE_LIST_MAX */
	/* hardware class and install health (0 / NULL: not applied) */
	int64_t min_ram_mb;
	const char *accelerator;   /* listed in the device's accelerators */
	const char *backend;       /* listed in its backends */
	const char *install_state; /* any model's install state, e.g. "FAILED" */
	const char *after;         /* keyset cursor: only ids sorting after it */
};
#define CTL_STORE_LIST_MAX 10000

/* One device as a rollout sees it (rollout_scan; strings valid during the
 * callback only). */
struct ctl_rollout_dev {
	const char *id;
	const char *labels_json;
	const char *arch;            /* NULL when unknown */
	int64_t ram_mb;              /* -1 when unknown */
	const char *accelerators_json; /* JSON array text of names */
	const char *backends_json;     /* JSON array text of names */
	bool online;
	const char *current_version; /* of the rollout's model, NULL when absent */
	const char *install_state;
	const char *install_version;
	bool sent;                   /* the rollout sent it a deploy */
	int64_t sent_at;
	bool reverted;               /* ... and later a revert */
};
typedef int (*ctl_rollout_scan_fn)(void *userdata, const struct ctl_rollout_dev *d);
#define CTL_ROLLOUTS_MAX 10000
#define CTL_RELEASES_MAX 10000

/* Health figures of one model version on one device (health.c): what
 * health_add() adds to the stored totals, and what health_scan() returns
 * (strings valid during the callback only). */
struct ctl_health {
	const char *device;
	const char *model;
	const char *version;
	int64_t first_s, last_s; /* controller clock: first and last record added */
	uint64_t records;        /* model records added */
	uint64_t requests;
	uint64_t errors;         /* every error kind */
	uint64_t crashes;        /* runner_crashed events */
	uint64_t restarts;       /* runner_restarts from the model records */
	uint64_t outputs, empty, refusals; /* quality signals */
	double psi_sum;          /* sum of each record's largest drift PSI */
	uint64_t psi_n;          /* records with a drift PSI */
	struct tele_hist latency_us;
};
typedef int (*ctl_health_scan_fn)(void *userdata, const struct ctl_health *h);

struct ctl_store;

struct ctl_store_ops {
	void (*close)(struct ctl_store *s);
	int (*begin)(struct ctl_store *s);
	int (*commit)(struct ctl_store *s);
	int (*rollback)(struct ctl_store *s);
	int (*schema_version)(struct ctl_store *s, int *ret);

	int (*device_upsert)(struct ctl_store *s, const struct ctl_device *d);
	/* Mark ID offline (creating a bare row when unknown). */
	int (*device_set_offline)(struct ctl_store *s, const char *id, int64_t now_s);
	/* Replace the whole model list of a device: delete, then put each. */
	int (*device_models_clear)(struct ctl_store *s, const char *id);
	int (*device_model_put)(struct ctl_store *s, const struct ctl_device_model *m);
	/* {"devices":[...]} */
	int (*device_list)(struct ctl_store *s, const struct ctl_device_filter *f, cJSON **ret);
	/* {"device":{...},"models":[...],"events":[...],"gaps":{...}}; -ENOENT. */
	int (*device_get)(struct ctl_store *s, const char *id, size_t n_events, cJSON **ret);

	/* 1 new, 0 the same envelope already stored, -EEXIST when (model,
	 * version) or (model, sequence) exists with another envelope. */
	int (*bundle_put)(struct ctl_store *s, const struct ctl_bundle_rec *b);
	int (*bundle_list)(struct ctl_store *s, cJSON **ret); /* {"bundles":[...]} */
	/* The stored envelope of MODEL VERSION (caller frees); -ENOENT. */
	int (*bundle_envelope)(struct ctl_store *s, const char *model, const char *version,
			       char **ret);

	/* 1 inserted, 0 duplicate (device, stream, seq). */
	int (*tele_insert)(struct ctl_store *s, const struct ctl_tele_rec *r);
	/* Optional (NULL: tele_insert one by one): insert N records in one
	 * statement; RET_NEW[i] = 1 when record i was inserted, 0 when a
	 * duplicate (also of an earlier record of the same call). PostgreSQL
	 * has it: one round trip per batch instead of one per record. */
	int (*tele_insert_batch)(struct ctl_store *s, const struct ctl_tele_rec *recs, size_t n,
				 uint8_t *ret_new);
	int (*gaps_put)(struct ctl_store *s, const char *device, const char *stream,
			uint64_t missing_ranges, uint64_t missing_seqs, uint64_t dropped,
			uint64_t highest, int64_t now_s);
	/* Stored stream and highest seq of DEVICE's tracker; -ENOENT. */
	int (*gaps_get)(struct ctl_store *s, const char *device, char ret_stream[17],
			uint64_t *ret_highest);
	int (*audit)(struct ctl_store *s, int64_t ts, const char *actor, const char *action,
		     const char *reason);
	int (*audit_count)(struct ctl_store *s, int64_t *ret);
	/* {"online":N,"offline":N,"versions":[{"model","version","devices"}],
	 *  "tele_records":N,"bundles":N,"gaps_missing":N} */
	int (*metrics)(struct ctl_store *s, cJSON **ret);

	/* Rollouts (docs/rollouts.md): BODY is the rollout's JSON document. */
	int (*rollout_insert)(struct ctl_store *s, const char *body, int64_t now_s,
			      int64_t *ret_id);
	int (*rollout_update)(struct ctl_store *s, int64_t id, const char *body,
			      int64_t now_s); /* -ENOENT */
	int (*rollout_get)(struct ctl_store *s, int64_t id, char **ret); /* -ENOENT */
	/* Up to MAX ids, ascending. */
	int (*rollout_list)(struct ctl_store *s, int64_t *ids, size_t max, size_t *ret_n);
	int (*rollout_mark)(struct ctl_store *s, int64_t id, const char *device, int64_t sent_at,
			    bool reverted);
	/* Call FN for every device with its state of MODEL and rollout ID's
	 * record; FN's negative return stops the scan and is returned. */
	int (*rollout_scan)(struct ctl_store *s, int64_t id, const char *model,
			    ctl_rollout_scan_fn fn, void *ud);

	/* Releases (docs/rollouts.md): BODY is the release's JSON document.
	 * insert: -EEXIST when (MODEL, VERSION) is taken. get: by ID (> 0) or
	 * by MODEL and VERSION (ID 0); -ENOENT. list: {"releases":[...]} in
	 * ascending id, only MODEL's when not NULL; each body gets "id". */
	int (*release_insert)(struct ctl_store *s, const char *model, const char *version,
			      const char *body, int64_t now_s, int64_t *ret_id);
	int (*release_get)(struct ctl_store *s, int64_t id, const char *model,
			   const char *version, int64_t *ret_id, char **ret_body);
	int (*release_list)(struct ctl_store *s, const char *model, cJSON **ret);

	/* Health totals per (device, model, version): add H's counts (the
	 * histograms bucket by bucket); first_s is kept, last_s replaced. */
	int (*health_add)(struct ctl_store *s, const struct ctl_health *h);
	/* Call FN for every stored (device, MODEL, version) of the devices
	 * rollout ID sent a deploy to, grouped by device (ascending id). FN's
	 * negative return stops and is returned. */
	int (*health_scan)(struct ctl_store *s, int64_t id, const char *model,
			   ctl_health_scan_fn fn, void *ud);

	/* 1 when this instance runs the rollout engine, 0 when another
	 * instance on the same store does. SQLite: always 1 (one controller
	 * per file). PostgreSQL: a session advisory lock taken on the first
	 * success and held until the connection closes, so a killed leader's
	 * lock is freed by the server and the next instance to ask takes it. */
	int (*engine_leader)(struct ctl_store *s);

	/* What the store holds of DEVICE's STREAM between LO and HI: the runs
	 * of stored seqs (first, last) and the ranges the stored drop reports
	 * cover, ascending by first, at most MAX into OUT (*RET_N of them).
	 * The gap tracker of an instance checks its holes against it, since
	 * with several instances the records of one device reach any of them
	 * (docs/controller.md "Gaps with several instances"). */
	int (*tele_covered)(struct ctl_store *s, const char *device, const char *stream,
			    uint64_t lo, uint64_t hi, uint64_t (*out)[2], size_t max,
			    size_t *ret_n);
};

/* One row of device_scan: a device with the current version of each of its
 * models. Strings valid during the callback only. */
struct ctl_device_row {
	const char *id;
	const char *labels_json;       /* JSON object text as stored */
	const char *arch;              /* NULL when unknown */
	bool has_ram;
	int64_t ram_mb;
	const char *accelerators_json; /* JSON array text as stored */
	const char *backends_json;     /* JSON array text as stored */
	bool online;
	int64_t last_seen_s;
	const char *agent_version;     /* NULL when unknown */
	const char *versions_json;     /* {"model": "current version"|null}, NULL: {} */
};
typedef int (*ctl_device_row_fn)(void *userdata, const struct ctl_device_row *r);

/* One row of fleet_counts: COUNT devices of MODEL with VERSION in their
 * current slot (INSTALL_STATE NULL), or with an install of VERSION in
 * INSTALL_STATE (never IDLE). Strings valid during the callback only. */
typedef int (*ctl_fleet_count_fn)(void *userdata, const char *model, const char *version,
				  const char *install_state, int64_t count);
/* One (device, model) whose install of a version is neither IDLE nor
 * COMMITTED (fleet_unhealthy), ascending device id. */
typedef int (*ctl_fleet_unhealthy_fn)(void *userdata, const char *device, const char *model,
				      const char *install_state);

/* Operations added after the first table (docs/api.md paging, issue 9
 * figures); every backend has them. */
struct ctl_store_ops2 {
	/* The devices F selects (F->after: keyset cursor, F->limit devices at
	 * most, 1..CTL_STORE_LIST_MAX + 1, 0: the largest) with their models'
	 * versions, in one query, ordered by id; FN's negative return stops
	 * and is returned. */
	int (*device_scan)(struct ctl_store *s, const struct ctl_device_filter *f,
			   ctl_device_row_fn fn, void *ud);
	/* The version distribution and install outcomes in one grouped query
	 * (GROUP BY model, version, state). */
	int (*fleet_counts)(struct ctl_store *s, ctl_fleet_count_fn fn, void *ud);
	/* At most MAX (device, model) pairs whose install is under way or failed. */
	int (*fleet_unhealthy)(struct ctl_store *s, size_t max, ctl_fleet_unhealthy_fn fn,
			       void *ud);
};

struct ctl_store {
	const struct ctl_store_ops *ops;
	const struct ctl_store_ops2 *ops2;
};

/* Open (creating when absent) the SQLite store at PATH, WAL mode, and run
 * every pending schema migration (each in one transaction; the
 * schema_migrations table records which ran). A database with a newer schema
 * than this program knows is -FL_EUNSUPPORTED. Caller frees with
 * ctl_store_close(). Errors: -FL_EDB, -FL_EUNSUPPORTED, -ENOMEM. */
int ctl_store_open_sqlite(const char *path, struct ctl_store **ret);

/* Open the PostgreSQL store at CONNINFO (a libpq connection string,
 * "host=... port=... dbname=..." or "postgresql://..."), run the pending
 * migrations the same way (each in one transaction, under an advisory lock
 * so that instances starting together migrate once) and prepare every
 * statement. Errors: -EINVAL, -FL_EDB (connection or SQL, logged),
 * -FL_EUNSUPPORTED (newer schema), -ENOMEM. */
int ctl_store_open_pg(const char *conninfo, struct ctl_store **ret);

/* Close S (NULL is fine). */
void ctl_store_close(struct ctl_store *s);

#endif
