/* Device list pages and batched state ingest (registry.c, docs/api.md). */
#ifndef FLOTILLA_CTL_REGISTRY_H
#define FLOTILLA_CTL_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctl.h"

/* Devices per page of GET /api/v1/devices without `limit` (docs/api.md). */
#define CTL_DEVICES_PAGE_DEFAULT 1000
/* Devices read per store query (one hold of the controller's lock) when the
 * whole list is asked for (?all=1). */
#define CTL_DEVICES_ALL_CHUNK 1000

/* The JSON text of one page of the device list F selects,
 * {"devices":[...],"next":"<id>"} and a newline, written in one pass from
 * one store query (F->limit devices, 0: CTL_DEVICES_PAGE_DEFAULT, after
 * F->after). "next", the cursor of the following page (the last id
 * listed), is there only when more devices follow. ALL: every device F
 * selects, read CTL_DEVICES_ALL_CHUNK at a time with the lock released
 * between chunks (F->limit and F->after must be unset). Caller frees *RET.
 * Errors: -EINVAL, -ENOMEM, -FL_EDB. */
int ctl_devices_page(struct ctl *c, const struct ctl_device_filter *f, bool all, char **ret,
		     size_t *ret_len);

/* Batched state ingest: state messages that arrive together are validated
 * one by one as they arrive (a refused message is refused and counted at
 * once) and written in one transaction (ctl_state_batch_flush, or by the
 * add that fills the batch). */
#define CTL_STATE_BATCH_MAX 256   /* messages per transaction */
#define CTL_STATE_BATCH_MS 50     /* oldest message waits at most this long */
struct ctl_state_batch;
int ctl_state_batch_new(struct ctl *c, struct ctl_state_batch **ret);
/* Validate one state message (as ctl_registry_on_state) and queue it:
 * 0 queued (or written when this filled the batch), <0 refused (counted).
 * A store failure of the flush this add triggers is returned too. */
int ctl_state_batch_add(struct ctl_state_batch *b, const char *device_id, const void *json,
			size_t len);
/* Write every queued message in one transaction (0 when none). On a
 * failure of the batch each message is written again in its own
 * transaction, so that one bad row costs only itself. */
int ctl_state_batch_flush(struct ctl_state_batch *b);
/* How long the oldest message may wait (CTL_STATE_BATCH_MS by default;
 * 0: every add writes at once). */
void ctl_state_batch_set_wait(struct ctl_state_batch *b, int64_t ms);
/* Queued messages, and whether the oldest has waited long enough. */
size_t ctl_state_batch_pending(const struct ctl_state_batch *b);
bool ctl_state_batch_due(const struct ctl_state_batch *b);
/* Flush, then free (NULL is fine). */
void ctl_state_batch_free(struct ctl_state_batch *b);

#endif
