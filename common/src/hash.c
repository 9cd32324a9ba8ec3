/* The one file that touches OpenSSL's digest API.
 *
 * SHA-256 goes through OpenSSL's low-level SHA256_Init/Update/Final, not
 * EVP: in OpenSSL 3 the first EVP_sha256()/SHA256()/EVP_Digest() runs
 * EVP_MD_fetch, which initialises the provider machinery (default provider,
 * method stores, name maps) and costs the agent ~1.9 MiB of resident
 * libcrypto pages at start, when it hashes its trust store's keys
 * (docs/serving.md, "Memory"). The low-level functions run the same
 * assembly (SHA-NI / AVX2 chosen by OPENSSL_cpuid) without providers.
 * They are deprecated in 3.0 but still exported and supported for the
 * whole 3.x series; the suppression below is scoped to this file. If a
 * future OpenSSL drops them, the EVP version is a drop-in replacement
 * here. Nothing else in libcrypto is used from this file but the base64
 * encoder, which needs no provider either. */
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>

struct fl_sha256 {
	SHA256_CTX ctx;
};

struct fl_sha256 *fl_sha256_new(void)
{
	struct fl_sha256 *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	SHA256_Init(&h->ctx);
	return h;
}

void fl_sha256_update(struct fl_sha256 *h, const void *data, size_t len)
{
	SHA256_Update(&h->ctx, data, len);
}

void fl_sha256_final(struct fl_sha256 *h, uint8_t out[FL_SHA256_LEN])
{
	SHA256_Final(out, &h->ctx);
}

void fl_sha256_reset(struct fl_sha256 *h)
{
	SHA256_Init(&h->ctx);
}

void fl_sha256_free(struct fl_sha256 *h)
{
	if (!h)
		return;
	OPENSSL_cleanse(&h->ctx, sizeof(h->ctx));
	free(h);
}

void fl_sha256(const void *data, size_t len, uint8_t out[FL_SHA256_LEN])
{
	SHA256_CTX c;
	SHA256_Init(&c);
	SHA256_Update(&c, data, len);
	SHA256_Final(out, &c);
	OPENSSL_cleanse(&c, sizeof(c));
}

FL_DEFINE_CLEANUP(struct fl_sha256, fl_sha256_free)

int fl_sha256_file(const char *path, uint8_t out[FL_SHA256_LEN], uint64_t *ret_size)
{
	enum { BUF_BYTES = 1 << 20 };
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	_cleanup_(fl_sha256_freep) struct fl_sha256 *h = fl_sha256_new();
	_cleanup_free_ uint8_t *buf = malloc(BUF_BYTES);
	if (!h || !buf)
		return -ENOMEM;
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	uint64_t total = 0;
	for (;;) {
		ssize_t r = read(fd, buf, BUF_BYTES);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		fl_sha256_update(h, buf, (size_t)r);
		total += (uint64_t)r;
	}
	fl_sha256_final(h, out);
	if (ret_size)
		*ret_size = total;
	return 0;
}

void fl_hex_encode(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int fl_hex_decode(const char *in, uint8_t *out, size_t len)
{
	if (!in || strlen(in) != 2 * len)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

char *fl_b64_encode(const uint8_t *in, size_t len)
{
	if (len > (SIZE_MAX / 4) * 3 - 3)
		return NULL;
	size_t out_len = 4 * ((len + 2) / 3);
	char *out = malloc(out_len + 1);
	if (!out)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, in, (int)len);
	out[out_len] = '\0';
	return out;
}

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int fl_b64_decode(const char *in, size_t in_len, uint8_t **ret, size_t *ret_len)
{
	/* Hand-rolled: EVP_DecodeBlock accepts whitespace and miscounts padding. */
	if (in_len % 4 != 0)
		return -EINVAL;
	size_t pad = 0;
	if (in_len >= 1 && in[in_len - 1] == '=')
		pad++;
	if (in_len >= 2 && in[in_len - 2] == '=')
		pad++;
	size_t out_len = in_len / 4 * 3 - pad;
	uint8_t *out = malloc(out_len + 1);
	if (!out)
		return -ENOMEM;
	size_t o = 0;
	for (size_t i = 0; i < in_len; i += 4) {
		int v[4];
		for (int k = 0; k < 4; k++) {
			char c = in[i + k];
			bool last_quad = i + 4 == in_len;
			if (c == '=' && last_quad && k >= 4 - (int)pad) {
				v[k] = 0;
				continue;
			}
			v[k] = b64val(c);
			if (v[k] < 0) {
				free(out);
				return -EINVAL;
			}
		}
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
			     (uint32_t)v[3];
		uint8_t b[3] = {(uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w};
		for (int k = 0; k < 3 && o < out_len; k++)
			out[o++] = b[k];
		/* Non-canonical encodings (stray bits under the padding) are refused. */
		if (i + 4 == in_len && ((pad == 1 && (v[2] & 3)) || (pad == 2 && (v[1] & 15)))) {
			free(out);
			return -EINVAL;
		}
	}
	*ret = out;
	*ret_len = out_len;
	return 0;
}
