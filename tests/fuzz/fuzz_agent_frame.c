/* Fuzz target: a chunk/dat frame as the agent and the simulator split it
 * (agentproto proto_frame_parse). */
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proto_frame f;
	if (proto_frame_parse(data, size, &f) < 0)
		return 0;
	/* everything it points at lies inside the frame */
	if (f.id != data + 8 || f.data != data + PROTO_FRAME_HDR ||
	    (size_t)f.len != size - PROTO_FRAME_HDR || f.len > PROTO_RANGE_MAX)
		__builtin_trap();
	if (f.status < 0 || f.status > 2 || (f.status != 0 && f.len != 0))
		__builtin_trap();
	volatile uint8_t sink = 0;
	for (uint32_t i = 0; i < f.len; i += 4096)
		sink ^= f.data[i];
	(void)sink;
	return 0;
}
