/* Chunk index: the list of content-defined chunks of one payload file.
 *
 * Binary, little-endian, version 1 (docs/bundle-format.md "Chunking"):
 *   header, 80 bytes:
 *     0  magic   "FLCIDX" (6 bytes)      6  u16 version = 1
 *     8  u32 flags (OTA_CIDX_F_*)        12 u32 min_bytes
 *     16 u32 avg_bytes                   20 u32 max_bytes
 *     24 u64 file_size                   32 u64 count
 *     40 file SHA-256 (32 bytes)         72 8 bytes zero (reserved)
 *   then COUNT entries of 48 bytes:
 *     0 u64 offset   8 u32 length   12 u32 flags (OTA_CHUNK_F_*)   16 SHA-256 (32)
 * A chunk's id is the SHA-256 of its bytes. The SHA-256 of the encoded index
 * is what the manifest records as chunk_index_sha256.
 *
 * Validation (decode and seal): exact total length, known version and flags,
 * zero reserved bytes, sane parameters, count <= OTA_CIDX_MAX_CHUNKS, offsets
 * contiguous from 0, every length in [1, max], every length >= min except
 * the last chunk and chunks ending at a forced cut, lengths summing exactly to
 * file_size. Anything else is -FL_EFORMAT (-FL_EUNSUPPORTED for another
 * version, -FL_ETOOBIG past the limits). */
#ifndef FLOTILLA_CHUNKIDX_H
#define FLOTILLA_CHUNKIDX_H

#include <stddef.h>
#include <stdint.h>

#include <flotilla/chunker.h>
#include <flotilla/hash.h>

#define OTA_CIDX_VERSION 1
#define OTA_CIDX_HEADER_BYTES 80u
#define OTA_CIDX_ENTRY_BYTES 48u
/* 1 Mi chunks: a 64 GiB file at 64 KiB average; encoded index <= ~48 MiB. */
#define OTA_CIDX_MAX_CHUNKS (1u << 20)
#define OTA_CIDX_MAX_BYTES (OTA_CIDX_HEADER_BYTES + (size_t)OTA_CIDX_MAX_CHUNKS * OTA_CIDX_ENTRY_BYTES)

/* Index flag: GGUF tensor boundaries were used as forced cuts. */
#define OTA_CIDX_F_GGUF 0x1u

/* ota_chunk_file() options. */
#define OTA_CHUNK_OPT_GGUF 0x1u /* tensor-aware cuts when the file is GGUF */

struct ota_chunkidx;

/* Empty index for parameters P (NULL: defaults) and index flags FLAGS. Caller
 * frees with ota_chunkidx_free(). -EINVAL, -ENOMEM. */
int ota_chunkidx_new(const struct ota_chunk_params *p, uint32_t flags, struct ota_chunkidx **ret);
void ota_chunkidx_free(struct ota_chunkidx *idx);

/* Append chunk C (copied). -FL_ETOOBIG past OTA_CIDX_MAX_CHUNKS, -EINVAL
 * after seal, -ENOMEM. */
int ota_chunkidx_add(struct ota_chunkidx *idx, const struct ota_chunk *c);
/* Record the file's size and SHA-256 and validate the whole index (rules
 * above). Returns 0 or -FL_EFORMAT; the index is usable only after success. */
int ota_chunkidx_seal(struct ota_chunkidx *idx, uint64_t file_size,
		      const uint8_t sha256[FL_SHA256_LEN]);

/* Encode a sealed index. Caller frees *ret_buf with free(). -EINVAL when not
 * sealed, -ENOMEM. */
int ota_chunkidx_encode(const struct ota_chunkidx *idx, uint8_t **ret_buf, size_t *ret_len);
/* Decode and validate LEN bytes. Caller frees *ret with ota_chunkidx_free().
 * -FL_ETOOBIG when LEN > OTA_CIDX_MAX_BYTES or the count is past the limit,
 * -FL_EUNSUPPORTED for another version, -FL_EFORMAT for any other violation,
 * -ENOMEM. */
int ota_chunkidx_decode(const void *buf, size_t len, struct ota_chunkidx **ret);

size_t ota_chunkidx_count(const struct ota_chunkidx *idx);
/* Chunk I (< count); the pointer belongs to IDX. */
const struct ota_chunk *ota_chunkidx_get(const struct ota_chunkidx *idx, size_t i);
uint64_t ota_chunkidx_file_size(const struct ota_chunkidx *idx);
const uint8_t *ota_chunkidx_file_sha256(const struct ota_chunkidx *idx);
uint32_t ota_chunkidx_flags(const struct ota_chunkidx *idx);
void ota_chunkidx_params(const struct ota_chunkidx *idx, struct ota_chunk_params *ret);

/* Chunk the file at PATH (regular file, read in blocks, never loaded whole)
 * with parameters P (NULL: defaults) and OPTS (OTA_CHUNK_OPT_*), computing
 * each chunk's and the whole file's SHA-256 in the same pass. With
 * OTA_CHUNK_OPT_GGUF a GGUF file also gets forced cuts at its tensor data
 * boundaries (and the index flag OTA_CIDX_F_GGUF); a GGUF header that does not
 * parse cleanly gives plain CDC. Caller frees *ret with ota_chunkidx_free().
 * -errno on I/O errors, -FL_ETOOBIG for too many chunks, -EINVAL for a file
 * that is not regular. */
int ota_chunk_file(const char *path, const struct ota_chunk_params *p, unsigned opts,
		   struct ota_chunkidx **ret);
/* Same for an open regular file (read from offset 0 with pread). */
int ota_chunk_fd(int fd, const struct ota_chunk_params *p, unsigned opts,
		 struct ota_chunkidx **ret);

#endif
