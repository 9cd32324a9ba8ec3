/* The agent's journal: SQLite (WAL, synchronous=FULL) in STATE_DIR/state.db.
 * Every install state is written (and fsynced by the commit) BEFORE the
 * action it names, so on start the agent knows what a power cut interrupted
 * (docs/install.md). Thread-safety: one owner (the agent's loop). */
#ifndef FLOTILLA_AGENT_JOURNAL_H
#define FLOTILLA_AGENT_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum inst_state {
	ST_IDLE = 0,
	ST_FETCHING,   /* verified manifest; writing the inactive slot */
	ST_STAGED,     /* slot written and verified */
	ST_TESTING,    /* acceptance tests running on the staged slot */
	ST_SWITCHING,  /* about to point `current` at the new slot */
	ST_TRIAL,      /* switched; watching for failures */
	ST_COMMITTED,  /* terminal: new version is the committed one */
	ST_REJECTED,   /* terminal: refused before the switch; old slot untouched */
	ST_REVERTING,  /* about to point `current` back at the previous slot */
	ST_ROLLED_BACK /* terminal: previous slot active again */
};

const char *inst_state_name(enum inst_state s);
bool inst_state_terminal(enum inst_state s);

#define J_MODEL_MAX 65
#define J_VERSION_MAX 65
#define J_ERROR_MAX 512
#define J_SOURCE_MAX 4096

struct install_rec {
	int64_t id;
	char model[J_MODEL_MAX];
	char version[J_VERSION_MAX];
	uint64_t sequence;
	enum inst_state state;
	char from_slot; /* slot active when the install began (0: none) */
	char to_slot;
	char source[J_SOURCE_MAX]; /* bundle path for local installs ("" otherwise) */
	char error[J_ERROR_MAX];
	int trial_boots; /* agent starts seen during TRIAL */
	int64_t started_s, updated_s, trial_start_s;
};

enum slot_status { SLOT_EMPTY = 0, SLOT_STAGING, SLOT_READY };

struct slot_rec {
	enum slot_status status;
	char version[J_VERSION_MAX];
	uint64_t sequence;
	char *envelope; /* manifest DSSE envelope; caller frees */
	size_t envelope_len;
};

struct model_rec {
	char name[J_MODEL_MAX];
	uint64_t highest_sequence; /* anti-rollback floor (committed sequences) */
	char committed_slot;       /* 0 when none */
};

struct journal;

int journal_open(const char *path, struct journal **ret);
void journal_close(struct journal *j);

/* Insert a new install in REC->state (ST_FETCHING, ST_REJECTED for a
 * refusal before any change, ST_REVERTING for a revert); sets REC->id. */
int journal_install_begin(struct journal *j, struct install_rec *rec);
/* Move install ID to STATE (ERROR may be NULL). One fsynced transaction. */
int journal_install_set(struct journal *j, int64_t id, enum inst_state state, const char *error);
int journal_install_trial_boot(struct journal *j, int64_t id, int *ret_boots);
/* The newest install of MODEL that is not terminal: 1 found, 0 none. */
int journal_install_pending(struct journal *j, const char *model, struct install_rec *ret);
/* The newest install of MODEL, any state: 1 found, 0 none. */
int journal_install_last(struct journal *j, const char *model, struct install_rec *ret);
/* Every model with a pending install; calls CB for each. */
int journal_pending_models(struct journal *j, int (*cb)(void *ud, const char *model), void *ud);

/* Terminal transition to COMMITTED plus the model's floor and committed slot,
 * in one transaction. */
int journal_install_commit(struct journal *j, const struct install_rec *rec);
/* Terminal ROLLED_BACK; committed slot becomes SLOT. */
int journal_install_rolled_back(struct journal *j, int64_t id, const char *model, char slot,
				const char *reason);

int journal_slot_set(struct journal *j, const char *model, char slot, enum slot_status status,
		     const char *version, uint64_t sequence, const char *envelope, size_t env_len);
/* 0 and an SLOT_EMPTY record when unknown. */
int journal_slot_get(struct journal *j, const char *model, char slot, struct slot_rec *ret);

/* 0 and a zeroed record (name set) when the model is unknown. */
int journal_model_get(struct journal *j, const char *model, struct model_rec *ret);
int journal_models(struct journal *j, int (*cb)(void *ud, const struct model_rec *m), void *ud);

/* Count one more install attempt of spool file KEY (path + size + mtime);
 * *ret_attempts gets the new count. journal_spool_forget() drops the record. */
int journal_spool_attempt(struct journal *j, const char *key, int *ret_attempts);
int journal_spool_forget(struct journal *j, const char *key);

/* Record an event (kind, model, JSON detail) for telemetry. */
int journal_event(struct journal *j, const char *model, const char *kind, const char *detail_json);
/* Count events of KIND for MODEL (tests and status). */
int journal_event_count(struct journal *j, const char *model, const char *kind);

/* Command ids seen over MQTT: the last J_CMD_IDS_KEPT are remembered.
 * Returns 1 when ID was seen already (a redelivery: drop it), 0 when it is
 * new (now recorded). -EINVAL for an empty id or one over J_CMD_ID_MAX. */
#define J_CMD_IDS_KEPT 64
#define J_CMD_ID_MAX 128
int journal_cmd_seen(struct journal *j, const char *id);

#endif
