/* Fuzz the keyring parser and the trust store's keyring/manifest paths: any
 * input is parsed as a keyring payload, and as an envelope offered to an
 * in-memory trust store (which must refuse it: the fuzzer holds no root). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/keyring.h>
#include <flotilla/trust.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct ota_trust *fuzz_trust(void)
{
	static struct ota_trust *t;
	if (t)
		return t;
	struct ota_key *root = NULL;
	if (ota_key_generate(&root) < 0 || ota_trust_new(1, &t) < 0 ||
	    ota_trust_add_root(t, root) < 0)
		abort();
	ota_key_free(root);
	return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ota_keyring *kr = NULL;
	if (ota_keyring_parse((const char *)data, size, &kr) == 0) {
		char *json = NULL;
		size_t len = 0;
		if (ota_keyring_to_json(kr, &json, &len) == 0) {
			struct ota_keyring *again = NULL;
			if (ota_keyring_parse(json, len, &again) != 0 ||
			    again->n_keys != kr->n_keys || again->version != kr->version)
				abort();
			ota_keyring_free(again);
			free(json);
		}
		for (size_t i = 0; i < kr->n_keys; i++)
			(void)ota_keyring_key_allows(&kr->keys[i], "llm");
		ota_keyring_free(kr);
	} else if (kr) {
		abort();
	}

	struct ota_trust *t = fuzz_trust();
	if (ota_trust_install_keyring(t, (const char *)data, size, 1800000000) >= 0)
		abort();
	struct ota_manifest *m = NULL;
	if (ota_trust_verify_manifest(t, (const char *)data, size, 1800000000, 0, &m) >= 0 || m)
		abort();
	return 0;
}
