/* The agent's MQTT session (docs/protocol.md): state, commands, network
 * installs, events. One owner: the service loop (daemon.c). */
#ifndef FLOTILLA_AGENT_SESSION_H
#define FLOTILLA_AGENT_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "agent.h"

struct agent_session;

struct agent_session_stats {
	uint64_t connects, cmds, cmd_duplicates, cmds_refused, deploys, installs_done;
	uint64_t frames, chunk_reqs, junk, states_published;
	uint64_t bytes_fetched; /* chunk/dat payload bytes taken in by this process */
};

/* Connect to A->cfg.mqtt_uri as A->cfg.device_id (with the last will),
 * subscribe to the device's cmd and chunk/dat, resume a journaled network
 * install. Registers A's event hook. -EINVAL without uri/id; fl_mqtt_new()
 * errors. Caller frees with agent_session_free(). */
int agent_session_new(struct agent *a, struct agent_session **ret);
/* Poll this fd for POLLIN. */
int agent_session_fd(const struct agent_session *s);
/* Take what arrived, run what is due; *RET_TIMEOUT_MS: call again within
 * this many ms (-1: when the fd is readable). Returns 0. */
int agent_session_run(struct agent_session *s, int *ret_timeout_ms);
/* The retained state document (docs/protocol.md "state"). Caller frees. */
int agent_session_state_json(struct agent_session *s, char **ret, size_t *ret_len);
void agent_session_stats(const struct agent_session *s, struct agent_session_stats *ret);
void agent_session_free(struct agent_session *s);

#endif
