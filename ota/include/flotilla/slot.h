/* A/B slots of one model name on a device (docs/install.md).
 *
 *   MODELS_DIR/<name>/a/         slot A (payload files only)
 *   MODELS_DIR/<name>/b/         slot B
 *   MODELS_DIR/<name>/current -> a   symlink, replaced by rename(2)
 *
 * Which version a slot holds is recorded in the agent's journal, not in the
 * slot: a slot directory holds exactly the manifest's payload files.
 * The active slot (the one `current` names) is never written: clearing it is
 * -FL_ESTATE. Failpoints: "slot.clear.after_remove", "slot.switch.before",
 * "slot.switch.after" (plus fs.symlink.* inside the switch).
 * Thread-safety: none; callers serialize (the agent holds a lock file). */
#ifndef FLOTILLA_OTA_SLOT_H
#define FLOTILLA_OTA_SLOT_H

#include <stdbool.h>
#include <stdint.h>

#include <flotilla/manifest.h>

struct ota_slots;

/* Open (creating MODELS_DIR/<NAME>/{a,b} as needed) the slots of model NAME
 * (fl_name_valid). A `current` that is missing means no slot is active; one
 * that is not a symlink to "a" or "b" is -FL_EFORMAT. Caller frees *ret with
 * ota_slots_free(). */
int ota_slots_open(const char *models_dir, const char *name, struct ota_slots **ret);
void ota_slots_free(struct ota_slots *s);

/* 'a', 'b', or 0 when no slot is active (read from disk on every call). */
char ota_slots_current(const struct ota_slots *s);
/* The slot that is not active ('a' when none is). */
char ota_slots_inactive(const struct ota_slots *s);
/* Absolute path of slot SLOT ('a' or 'b'); owned by S. NULL for another value. */
const char *ota_slots_dir(const struct ota_slots *s, char slot);
/* Path of the `current` link; owned by S. */
const char *ota_slots_link(const struct ota_slots *s);

/* Empty slot SLOT (remove everything in it, recreate it, fsync). -FL_ESTATE
 * when SLOT is active, -EINVAL for a bad slot. */
int ota_slots_clear(struct ota_slots *s, char slot);
/* Point `current` at SLOT atomically (idempotent). */
int ota_slots_switch(struct ota_slots *s, char slot);

/* Check that directory DIR holds exactly M's files (no more, no other kind
 * of entry, no symlink) with their sizes and SHA-256. Returns 0, -FL_EMISSING
 * (a file absent), -FL_ESIZE, -FL_EHASH, -FL_EPATH (an extra entry), or
 * -errno. When RET_BAD is not NULL it gets the offending path (static
 * storage overwritten by the next call: copy it). */
int ota_slot_verify(const char *dir, const struct ota_manifest *m, const char **ret_bad);

/* What a device offers, for the compatibility check. */
struct ota_device_info {
	const char *arch;        /* uname machine: "x86_64", "aarch64", "armv7l" */
	uint64_t ram_mb;
	const char *const *accelerators; /* NULL-terminated; "none" is implied */
	const char *const *backends;     /* NULL-terminated, e.g. {"gguf", NULL} */
};

/* Fill INFO from this machine (uname, sysinfo); accelerators and backends are
 * left NULL for the caller. */
int ota_device_info_probe(struct ota_device_info *info, char *arch_buf, size_t arch_len);

/* 0 when M fits the device; else -FL_EINCOMPAT and a reason in WHY (e.g.
 * "arch aarch64 not in [x86_64]", "needs 4096 MiB RAM, device has 2048").
 * Architecture names are compared after mapping aliases (amd64=x86_64,
 * arm64=aarch64, armhf=armv7l). */
int ota_compat_check(const struct ota_manifest *m, const struct ota_device_info *dev, char *why,
		     size_t why_len);

#endif
