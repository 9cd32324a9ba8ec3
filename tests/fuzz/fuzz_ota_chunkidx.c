/* Fuzz target: chunk index decoder. A decoded index must re-encode to the
 * exact input bytes (the format has one encoding per index). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/chunkidx.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ota_chunkidx *idx = NULL;
	if (ota_chunkidx_decode(data, size, &idx) < 0)
		return 0;
	uint8_t *out = NULL;
	size_t len = 0;
	if (ota_chunkidx_encode(idx, &out, &len) < 0 || len != size || memcmp(out, data, size))
		__builtin_trap();
	/* walk every chunk through the getters */
	uint64_t sum = 0;
	for (size_t i = 0; i < ota_chunkidx_count(idx); i++)
		sum += ota_chunkidx_get(idx, i)->len;
	if (sum != ota_chunkidx_file_size(idx))
		__builtin_trap();
	free(out);
	ota_chunkidx_free(idx);
	return 0;
}
