/* Fuzz the manifest parser: any input must parse or fail cleanly; what parses
 * must serialize canonically and parse back to the same text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/manifest.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	for (int tmpl = 0; tmpl < 2; tmpl++) {
		struct ota_manifest *m = NULL;
		int r = tmpl ? ota_manifest_parse_template((const char *)data, size, &m)
			     : ota_manifest_parse((const char *)data, size, &m);
		if (r < 0) {
			if (m)
				abort(); /* ret_ written on failure */
			continue;
		}
		char *a = NULL, *b = NULL;
		int w = ota_manifest_to_json(m, &a, NULL);
		if (w == 0) {
			struct ota_manifest *m2 = NULL;
			if (ota_manifest_parse(a, strlen(a), &m2) != 0)
				abort(); /* our own output must parse */
			if (ota_manifest_to_json(m2, &b, NULL) != 0 || strcmp(a, b) != 0)
				abort(); /* and be a fixed point */
			ota_manifest_free(m2);
		} else if (!tmpl && w != -FL_ETOOBIG) {
			abort(); /* a parsed manifest must serialize (defaults may grow it) */
		}
		free(a);
		free(b);
		(void)ota_manifest_check_time(m, 0);
		ota_manifest_free(m);
	}
	return 0;
}
