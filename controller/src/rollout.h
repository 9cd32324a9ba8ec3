/* Staged rollouts (docs/rollouts.md): a release (model + version per device
 * class) goes to the devices a selector picks, wave by wave, with a soak
 * time per wave, a cap on concurrent installs and a failure gate that halts
 * the rollout by itself. Every decision goes to the audit log; all state is
 * in the store, so a restarted controller continues where it was.
 *
 * Thread-safety: like ctl.h (the struct's lock); commands are sent outside
 * the lock. */
#ifndef FLOTILLA_CTL_ROLLOUT_H
#define FLOTILLA_CTL_ROLLOUT_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "ctl.h"

#define CTL_ROLLOUT_BODY_MAX (1024 * 1024)
#define CTL_ROLLOUT_WAVES_MAX 16
#define CTL_ROLLOUT_SELECT_DEVICES_MAX 10000
#define CTL_ROLLOUT_SELECT_LABELS_MAX 16
#define CTL_ROLLOUT_WINDOWS_MAX 16
#define CTL_ROLLOUT_SOAK_MAX_S (30 * 24 * 3600)
#define CTL_ROLLOUT_ACTOR "rollout-engine"
#define CTL_ROLLOUT_HEALTH_EVERY_S 5 /* health gates evaluated at most this often... */
/* ... and always before a wave may advance */

/* Send the command JSON (LEN bytes) to DEVICE's cmd topic; < 0 on failure
 * (the device is tried again on a later tick). */
typedef int (*ctl_rollout_send_fn)(void *userdata, const char *device, const char *json,
				   size_t len);

/* Create a rollout from the API body JSON (docs/api.md "rollouts"), parsed
 * strictly: unknown members, wrong types and out-of-range values are
 * -FL_ESCHEMA / -FL_ERANGE / -FL_EINVAL_JSON / -FL_ETOOBIG / -EINVAL and
 * change nothing; -ENOENT when the bundle was not pushed. It starts
 * "running" (audited, ACTOR). RET (caller frees) gets the rollout's JSON.
 * Errors also: -FL_EDB, -ENOMEM. */
int ctl_rollout_create(struct ctl *c, const void *json, size_t len, const char *actor,
		       int64_t now_s, cJSON **ret);
/* The same; ERR (ERR_LEN bytes, may be NULL) gets a message naming what is
 * wrong. The body may name a release ({"model", "release": VERSION}: each
 * device gets the variant that fits its class; -ENOENT when there is no such
 * release) instead of one bundle ({"model", "version"}), and may carry
 * health gates ("gates", docs/rollouts.md). */
int ctl_rollout_create_ex(struct ctl *c, const void *json, size_t len, const char *actor,
			  int64_t now_s, cJSON **ret, char *err, size_t err_len);
/* The rollout's JSON (caller frees); -ENOENT. */
int ctl_rollout_get(struct ctl *c, int64_t id, cJSON **ret);
/* {"rollouts":[...]} (caller frees). */
int ctl_rollout_list(struct ctl *c, cJSON **ret);
/* Operator ACTION "pause" (running), "resume" (paused), "abort" (running,
 * paused, halted), "rollback" (anything but rolled_back: every device the
 * rollout sent the version to and that runs it is sent a revert by the next
 * ticks). Audited with ACTOR. RET (may be NULL; caller frees) gets the new
 * JSON. Errors: -EINVAL (unknown action), -ENOENT, -FL_ESTATE (not allowed in
 * the current state; nothing changes), -FL_EDB, -ENOMEM. */
int ctl_rollout_action(struct ctl *c, int64_t id, const char *action, const char *actor,
		       int64_t now_s, cJSON **ret);
/* The engine, called periodically (e.g. every 500 ms) with the wall clock:
 * for every running rollout observe the devices, halt on the failure gate,
 * send deploys (up to max_concurrent in flight) through SEND, advance waves
 * after their soak, complete; for halted (revert_on_halt) and rolled-back
 * rollouts send the reverts. Returns the number of commands sent, or the
 * first error (-FL_EDB, -ENOMEM); other rollouts still get their turn. */
int ctl_rollout_tick(struct ctl *c, int64_t now_s, ctl_rollout_send_fn send, void *userdata);

/* Prometheus text for /metrics (caller frees): flotilla_rollout_info
 * {rollout, model, version, state}, flotilla_rollout_wave{rollout} and
 * flotilla_rollout_devices{rollout, outcome} for the CTL_ROLLOUT_METRICS_MAX
 * newest rollouts. */
#define CTL_ROLLOUT_METRICS_MAX 100
int ctl_rollout_metrics_text(struct ctl *c, char **ret);

#endif
