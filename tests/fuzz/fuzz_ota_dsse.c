/* Fuzz the DSSE envelope parser and signature checks: never crash, and a
 * parsed envelope must round-trip through ota_dsse_to_json(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/dsse.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct ota_key *fuzz_key(void)
{
	static struct ota_key *key;
	if (!key && ota_key_generate(&key) < 0)
		abort();
	return key;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ota_dsse *env = NULL;
	if (ota_dsse_parse((const char *)data, size, &env) < 0) {
		if (env)
			abort();
		return 0;
	}
	char *json = NULL;
	size_t len = 0;
	if (ota_dsse_to_json(env, &json, &len) != 0)
		abort();
	struct ota_dsse *again = NULL;
	if (ota_dsse_parse(json, len, &again) != 0 || again->n_sigs != env->n_sigs ||
	    again->payload_len != env->payload_len ||
	    memcmp(again->payload, env->payload, env->payload_len) != 0)
		abort();
	struct ota_key *key = fuzz_key();
	for (size_t i = 0; i < env->n_sigs; i++)
		(void)ota_dsse_verify_sig(env, i, key);
	int r = ota_dsse_verify_threshold(env, &key, 1, 1);
	if (r > 0)
		abort(); /* the fuzzer cannot forge our fresh key's signature */
	ota_dsse_free(again);
	ota_dsse_free(env);
	free(json);
	return 0;
}
