/* Fuzz target: the controller's telemetry batch decoder (plain JSON and
 * FLZ/zlib framing), then the gap tracker over what it accepted. */
#include <stddef.h>
#include <stdint.h>

#include <flotilla/tele_wire.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tele_rx_batch *b = NULL;
	char err[128];
	if (tele_wire_decode(data, size, NULL, &b, err, sizeof(err)) < 0)
		return 0;
	/* invariants the controller relies on */
	if (b->n == 0 || b->recs[0].seq != b->first || b->recs[b->n - 1].seq != b->last)
		__builtin_trap();
	for (size_t i = 1; i < b->n; i++)
		if (b->recs[i].seq <= b->recs[i - 1].seq)
			__builtin_trap();
	struct tele_gaps *g = NULL;
	if (tele_gaps_new(1, 64, &g) == 0) {
		uint64_t m[8][2];
		tele_gaps_note_batch(g, b);
		tele_gaps_missing(g, m, 8);
		tele_gaps_free(g);
	}
	tele_rx_batch_free(b);
	return 0;
}
