/* Health of model versions from ingested telemetry, and the rollouts'
 * health-regression gates (docs/rollouts.md "Health gates").
 *
 * Ingestion feeds ctl_health_note() with every new record; it keeps running
 * totals per (device, model, version) in the store (health_add). A rollout's
 * gate compares, per variant version V, the totals of V on the devices the
 * rollout sent V to ("candidate") with the totals of the version each of
 * those devices ran before V ("baseline": its most recently reporting other
 * version).
 *
 * Thread-safety: none; callers hold struct ctl's lock. */
#ifndef FLOTILLA_CTL_HEALTH_H
#define FLOTILLA_CTL_HEALTH_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define CTL_HEALTH_GROUPS_MAX 32 /* variant versions compared per rollout */

/* Add record T (as ingested) to the health totals when it is a "model"
 * record or a runner_crashed event; other records, and records that do not
 * parse, are ignored (0). NOW_S is the controller's clock. Errors: -FL_EDB,
 * -ENOMEM. */
int ctl_health_note(struct ctl_store *s, const struct ctl_tele_rec *t, int64_t now_s);

/* Validate the "gates" member of a rollout create body (IN, may be NULL)
 * into the normalized object OUT (limits that are not set are absent).
 * ERR (ERR_LEN bytes) gets a message naming the bad member. Errors:
 * -FL_ESCHEMA, -FL_ERANGE, -ENOMEM. */
int ctl_health_gates_parse(const cJSON *in, cJSON *out, char *err, size_t err_len);

/* The target version of DEVICE in the rollout (NULL: not a target). */
typedef const char *(*ctl_health_version_fn)(void *userdata, const char *device);

/* Evaluate GATES (a normalized "gates" object) of rollout ID over its
 * devices. RET_REPORT (caller frees) gets the figures: {"groups":[{"version",
 * "devices","candidate":{..},"baseline":{..},"verdict":"ok"|"waiting"|
 * "breach","breaches":[..]}]}. When a limit is crossed *RET_BREACH (caller
 * frees) gets one line with the figures, else NULL. Errors: -FL_EDB,
 * -ENOMEM. */
int ctl_health_evaluate(struct ctl_store *s, int64_t id, const char *model, const cJSON *gates,
			ctl_health_version_fn version_of, void *userdata, cJSON **ret_report,
			char **ret_breach);

#endif
