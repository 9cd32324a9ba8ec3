/* Content-defined chunking (gear hash, FastCDC-style normalized chunking) with
 * optional forced cut points (GGUF tensor boundaries).
 *
 * A chunk ends where the rolling gear hash of the last bytes matches a mask,
 * never before min_bytes and always at max_bytes. Below avg_bytes a harder mask
 * (2 more bits) is used, above it an easier one (2 fewer bits): "normalized
 * chunking level 2", which narrows the size distribution around avg_bytes.
 * Forced cuts (ota_chunker_set_cuts) end a chunk exactly at the given file
 * offsets, even below min_bytes, and restart the rolling state there, so the
 * chunks inside a region between two forced cuts depend only on that region's
 * bytes. The gear table and masks are part of the on-disk format: changing
 * them changes every chunk id (see docs/chunking.md).
 *
 * Streaming: feed any number of blocks of any size, then finish. Each finished
 * chunk (offset, length, SHA-256 of its bytes, flags) is passed to a callback.
 * Memory use is constant (the chunker never holds chunk bytes). */
#ifndef FLOTILLA_CHUNKER_H
#define FLOTILLA_CHUNKER_H

#include <stddef.h>
#include <stdint.h>

#include <flotilla/hash.h>

/* Defaults (docs/chunking.md): 16 KiB / 64 KiB / 256 KiB. A chunk always fits
 * one MQTT message of the chunk protocol. */
#define OTA_CHUNK_MIN_DEFAULT (16u * 1024u)
#define OTA_CHUNK_AVG_DEFAULT (64u * 1024u)
#define OTA_CHUNK_MAX_DEFAULT (256u * 1024u)

/* Bounds on any parameter set (also enforced on chunk indexes read from disk). */
#define OTA_CHUNK_MIN_LOWEST 64u
#define OTA_CHUNK_MAX_HIGHEST (16u * 1024u * 1024u)

/* Chunk flag: this chunk ends at a forced cut (may be shorter than min). */
#define OTA_CHUNK_F_FORCED 0x1u

struct ota_chunk_params {
	uint32_t min_bytes; /* >= OTA_CHUNK_MIN_LOWEST */
	uint32_t avg_bytes; /* power of two, min < avg < max */
	uint32_t max_bytes; /* <= OTA_CHUNK_MAX_HIGHEST */
};

struct ota_chunk {
	uint64_t offset;
	uint32_t len;
	uint32_t flags; /* OTA_CHUNK_F_* */
	uint8_t sha256[FL_SHA256_LEN];
};

/* Called once per finished chunk, in file order. A negative return stops the
 * feed/finish call, which returns that value. */
typedef int (*ota_chunk_cb)(void *userdata, const struct ota_chunk *chunk);

struct ota_chunker;

/* The default parameters. */
void ota_chunk_params_default(struct ota_chunk_params *ret);
/* 0 when P is a usable parameter set, else -EINVAL. */
int ota_chunk_params_check(const struct ota_chunk_params *p);

/* New chunker with parameters P (NULL: defaults). Caller frees with
 * ota_chunker_free(). -EINVAL on bad parameters, -ENOMEM. */
int ota_chunker_new(const struct ota_chunk_params *p, struct ota_chunker **ret);
void ota_chunker_free(struct ota_chunker *c);

/* Force chunk boundaries at the file offsets CUTS[0..N) (copied; must be
 * strictly increasing; offset 0 and offsets past the end are ignored). Call
 * before the first feed. -EINVAL if not increasing or already fed, -ENOMEM. */
int ota_chunker_set_cuts(struct ota_chunker *c, const uint64_t *cuts, size_t n);

/* Feed the next LEN bytes of the file. CB gets every chunk that ends inside
 * them. Returns 0 or CB's negative value (the chunker is then unusable). */
int ota_chunker_feed(struct ota_chunker *c, const void *data, size_t len, ota_chunk_cb cb,
		     void *userdata);
/* Emit the last (possibly short) chunk; an empty file has no chunk. Returns 0
 * or CB's negative value. */
int ota_chunker_finish(struct ota_chunker *c, ota_chunk_cb cb, void *userdata);
/* Bytes fed so far. */
uint64_t ota_chunker_offset(const struct ota_chunker *c);

/* GGUF tensor boundaries. Reads the GGUF header and tensor info table of the
 * FILE_SIZE-byte file open at FD (pread, bounded: at most OTA_GGUF_MAX_HEADER
 * bytes of header, OTA_GGUF_MAX_TENSORS tensors) and returns the sorted,
 * de-duplicated file offsets where the tensor data section and each tensor's
 * data start. Accepts GGUF versions 2 and 3, little-endian. Caller frees
 * *ret_cuts with free(). Errors: -FL_EFORMAT for anything that is not a
 * well-formed GGUF (not GGUF, bad version, offsets out of bounds or not
 * aligned, header too large), -EIO/-errno on read errors, -ENOMEM. Callers
 * treat any error as "no tensor cuts". */
#define OTA_GGUF_MAX_HEADER (256ull * 1024 * 1024)
#define OTA_GGUF_MAX_TENSORS (1u << 20)
int ota_gguf_tensor_cuts_fd(int fd, uint64_t file_size, uint64_t **ret_cuts, size_t *ret_n);
/* Same over LEN bytes in memory (the whole file or at least its header;
 * FILE_SIZE is the size of the whole file). */
int ota_gguf_tensor_cuts_mem(const void *data, size_t len, uint64_t file_size,
			     uint64_t **ret_cuts, size_t *ret_n);

#endif
