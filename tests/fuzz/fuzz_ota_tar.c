/* Fuzz target: the bundle tar reader's entry checks. The input is read as a
 * bundle from memory; manifest signatures are not checked (the
 * ota_bundle_verify_none hook only parses the envelope and manifest), so
 * inputs derived from the seed bundles reach the per-entry validation: entry
 * types, names, duplicates, sizes, limits, hashes and chunk index decoding.
 * Small limits keep each run cheap. */
#include <stdint.h>
#include <stdlib.h>

#include <flotilla/bundle.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ota_bundle_opts opts = {
		.max_entries = 64,
		.max_manifest_bytes = 64 * 1024,
		.max_total_bytes = 16 * 1024 * 1024,
		.verify = ota_bundle_verify_none,
	};
	struct ota_bundle *b = NULL;
	if (ota_bundle_open_mem(data, size, NULL, 0, 0, &opts, &b) < 0)
		return 0;
	/* A bundle that opened is complete: every file has its index. */
	const struct ota_manifest *m = ota_bundle_manifest(b);
	for (size_t i = 0; i < m->n_files; i++)
		if (!ota_bundle_chunk_index(b, i) ||
		    ota_chunkidx_file_size(ota_bundle_chunk_index(b, i)) != m->files[i].size)
			__builtin_trap();
	struct ota_bundle_delta d;
	if (ota_bundle_diff(b, b, &d) < 0 || d.fetch_bytes != 0)
		__builtin_trap();
	ota_bundle_free(b);
	return 0;
}
