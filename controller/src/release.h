/* Releases (docs/rollouts.md "Releases"): a model version with one or more
 * variants, each a pushed bundle version for the devices whose hardware
 * class its selector matches. Rollouts reference a release; every device
 * gets the most specific variant that fits it.
 *
 * Thread-safety: like ctl.h (the struct's lock). */
#ifndef FLOTILLA_CTL_RELEASE_H
#define FLOTILLA_CTL_RELEASE_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "ctl.h"

#define CTL_RELEASE_BODY_MAX (64 * 1024)
#define CTL_RELEASE_VARIANTS_MAX 16
#define CTL_RELEASE_RAM_MAX 100000000 /* MB */

/* Create a release from the API body (docs/api.md "Releases"), parsed
 * strictly: {"model", "version", "variants": [{"bundle": VERSION,
 * "select": {"arch", "min_ram_mb", "max_ram_mb", "accelerator",
 * "backend"}}]}. Every variant's bundle must be a pushed bundle of the model.
 * Audited ("release.create", ACTOR). RET (caller frees) gets the release's
 * JSON; ERR (may be NULL) a message naming what is wrong. Errors:
 * -FL_EINVAL_JSON, -FL_ETOODEEP, -FL_ETOOBIG, -FL_ESCHEMA, -FL_ERANGE,
 * -EINVAL (bad name), -ENOENT (a bundle not pushed), -EEXIST (the model's
 * version is taken), -FL_EDB, -ENOMEM; nothing changes on error. */
int ctl_release_create(struct ctl *c, const void *json, size_t len, const char *actor,
		       int64_t now_s, cJSON **ret, char *err, size_t err_len);
/* The release REF ("ID" or "MODEL@VERSION"); -ENOENT, -EINVAL. */
int ctl_release_get(struct ctl *c, const char *ref, cJSON **ret);
/* {"releases":[...]}, all or MODEL's (may be NULL). */
int ctl_release_list(struct ctl *c, const char *model, cJSON **ret);

/* A device's hardware class as the registry stores it. */
struct ctl_hw {
	const char *arch;              /* NULL: unknown */
	int64_t ram_mb;                /* < 0: unknown */
	const char *accelerators_json; /* JSON array of names, may be NULL */
	const char *backends_json;
};
/* The index in VARIANTS (a release's "variants") of the most specific variant
 * whose selector HW satisfies (most selector members; the first on a tie),
 * or -1 when none fits. A member about something the device does not report
 * (e.g. RAM unknown) does not match. */
int ctl_release_pick(const cJSON *variants, const struct ctl_hw *hw);

#endif
