/* SHA-256 through OpenSSL's EVP (SHA-NI where the CPU has it; ~4x mbedTLS on
 * large model files). Signatures use mbedTLS (ota/src/crypto.c). */
#ifndef FLOTILLA_HASH_H
#define FLOTILLA_HASH_H

#include <stddef.h>
#include <stdint.h>

#define FL_SHA256_LEN 32
#define FL_SHA256_HEX_LEN 64

struct fl_sha256;

/* Streaming hash. fl_sha256_new() returns NULL on out of memory. */
struct fl_sha256 *fl_sha256_new(void);
void fl_sha256_update(struct fl_sha256 *h, const void *data, size_t len);
void fl_sha256_final(struct fl_sha256 *h, uint8_t out[FL_SHA256_LEN]);
/* Reset for reuse after final. */
void fl_sha256_reset(struct fl_sha256 *h);
void fl_sha256_free(struct fl_sha256 *h);

void fl_sha256(const void *data, size_t len, uint8_t out[FL_SHA256_LEN]);
/* Hash a whole file (streamed); *ret_size gets its length if not NULL. */
int fl_sha256_file(const char *path, uint8_t out[FL_SHA256_LEN], uint64_t *ret_size);

/* Lower-case hex; OUT holds 2*len+1 bytes. */
void fl_hex_encode(const uint8_t *in, size_t len, char *out);
/* Exactly 2*LEN hex digits (either case) into OUT; -EINVAL otherwise. */
int fl_hex_decode(const char *in, uint8_t *out, size_t len);

/* Base64 (standard alphabet, padded). fl_b64_encode: caller frees; NULL on
 * OOM. fl_b64_decode: strict (no whitespace), caller frees *ret. */
char *fl_b64_encode(const uint8_t *in, size_t len);
int fl_b64_decode(const char *in, size_t in_len, uint8_t **ret, size_t *ret_len);

#endif
