/* Fuzz target: a device's cmd payload as the agent and the simulator parse
 * it (agentproto proto_cmd_parse), then the duplicate window with its id. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proto_cmd c;
	if (proto_cmd_parse(data, size, &c) < 0)
		return 0;
	/* invariants the session relies on */
	size_t idlen = c.id ? strlen(c.id) : 0;
	if (idlen == 0 || idlen > PROTO_CMD_ID_MAX || !c.kind_name)
		__builtin_trap();
	if ((c.kind == PROTO_CMD_DEPLOY || c.kind == PROTO_CMD_KEYRING) && !c.arg_err && !c.envelope)
		__builtin_trap();
	if (c.kind == PROTO_CMD_REVERT && !c.arg_err && !c.model)
		__builtin_trap();
	static struct proto_cmd_ids w;
	int seen = proto_cmd_ids_seen(&w, c.id);
	if (seen < 0 || proto_cmd_ids_has(&w, c.id) != 1)
		__builtin_trap();
	proto_cmd_free(&c);
	return 0;
}
