/* Staging: fill a slot directory with a manifest's files from verified
 * chunks, whatever their source (chunks already on the device, a local
 * bundle, the network), with reuse of local chunks and resume after a crash
 * or power cut (docs/install.md "Staging from chunks").
 *
 * Files are built as SLOT_DIR/<path>.part (never the final names) and renamed
 * only by ota_stage_finish() after their whole-file SHA-256 and size match the
 * manifest. A progress file outside the slot records which chunks are written
 * AND fsynced (data is fdatasynced before the record that claims it; the
 * record is replaced atomically). Reopening resumes: every claimed chunk is
 * read back and hashed, and only those that check out are kept; a record of
 * another manifest (or a damaged record) is discarded and the .part files
 * are started afresh.
 *
 * A chunk id is the SHA-256 of its bytes; an id that occurs at several places
 * (repeated content, in one file or several) is written everywhere it occurs
 * and counted done only when all occurrences are.
 *
 * Failpoints: "stage.after_pwrite" (after each chunk pwrite),
 * "stage.sync.after_data" (after the data fdatasync, before the progress
 * write), "stage.sync.after_progress", "stage.finish.before_rename" (before
 * each rename), "stage.finish.after_rename" (after all renames, before the
 * directory fsync). Until the renames the slot holds only .part files.
 *
 * Thread-safety: none; a struct ota_stage has one owner. */
#ifndef FLOTILLA_OTA_STAGE_H
#define FLOTILLA_OTA_STAGE_H

#include <stddef.h>
#include <stdint.h>

#include <flotilla/chunkidx.h>
#include <flotilla/hash.h>
#include <flotilla/manifest.h>

/* Total chunk occurrences over all files of one stage (~56 bytes of memory
 * each: a 1 GiB model at 64 KiB average is ~16 Ki chunks, under 1 MiB;
 * 4 Mi chunks is ~256 GiB of payload). */
#define OTA_STAGE_MAX_CHUNKS (4u * 1024u * 1024u)
/* Local sources registered with ota_stage_add_source(). */
#define OTA_STAGE_MAX_SOURCES 64u
/* .part files kept open at once (others are synced, closed, reopened). */
#define OTA_STAGE_MAX_OPEN_FILES 32u
/* ota_stage_put_chunk() and ota_stage_fill_local() record durable progress
 * at least every OTA_STAGE_SYNC_BYTES written or OTA_STAGE_SYNC_CHUNKS chunk
 * occurrences written, whichever comes first. */
#define OTA_STAGE_SYNC_BYTES (16u * 1024u * 1024u)
#define OTA_STAGE_SYNC_CHUNKS 256u
/* Suffix of the temporary files in the slot. */
#define OTA_STAGE_PART_SUFFIX ".part"

/* A chunk still needed (ota_stage_next_missing()). */
struct ota_stage_want {
	uint8_t id[FL_SHA256_LEN];
	uint32_t len;
};

struct ota_stage;

/* Start or resume staging manifest M into the existing directory SLOT_DIR.
 * IDX[i] is the chunk index of M->files[i] (all M->n_files of them): its
 * encoding must hash to files[i].chunk_index_sha256 and its file size and
 * SHA-256 must equal the manifest's (-FL_EHASH, -FL_ESIZE otherwise). M and
 * the indexes are borrowed: they must stay valid and unchanged until
 * ota_stage_free()/ota_stage_abort(). PROGRESS_PATH (outside the slot) is
 * the progress record: when it holds a record of this same manifest the
 * staging resumes (claimed chunks re-verified, see above); otherwise the
 * .part files are truncated and staging starts from nothing. A final file
 * name already present in the slot is -EEXIST (clear the slot first).
 * Each .part is created with its final size (fallocate where supported:
 * -FL_ENOSPACE when the disk is too small).
 * Errors: -EINVAL (NULL argument, index count or layout), -FL_EHASH,
 * -FL_ESIZE, -FL_EFORMAT (one id with two lengths), -FL_ETOOBIG (more than
 * OTA_STAGE_MAX_CHUNKS), -FL_EPATH (a .part name that is a manifest path,
 * a symlink on the way), -EEXIST, -FL_ENOSPACE, -errno, -ENOMEM.
 * Caller frees *ret with ota_stage_free() (keeps the work for a resume) or
 * ota_stage_abort() (removes it). */
int ota_stage_open(const char *slot_dir, const struct ota_manifest *m,
		   const struct ota_chunkidx *const *idx, const char *progress_path,
		   struct ota_stage **ret);

/* Register a local file PATH whose chunk index is IDX (borrowed, must
 * outlive ST) as a source of chunks for ota_stage_fill_local(): e.g. a file
 * of the active slot or a file of a local bundle's payload. The file is
 * opened read-only now. Errors: -FL_ESIZE (file size differs from the
 * index), -EINVAL (not a regular file), -FL_ETOOBIG (more than
 * OTA_STAGE_MAX_SOURCES), -errno, -ENOMEM; ST unchanged on error. */
int ota_stage_add_source(struct ota_stage *st, const char *path, const struct ota_chunkidx *idx);

/* Copy every still-needed chunk that a registered source holds: the source
 * range is read, its SHA-256 checked against the id (a damaged source chunk
 * is skipped, never written: the chunk stays missing) and written at every
 * place it occurs; progress is recorded as for ota_stage_put_chunk() and
 * once more at the end. *RET_BYTES (if not NULL) gets the bytes written.
 * Errors: -errno on a write or sync error (read errors on a source only skip
 * that chunk), failpoint errors. */
int ota_stage_fill_local(struct ota_stage *st, uint64_t *ret_bytes);

/* Up to MAX distinct chunk ids still needed and not already handed out, in
 * file order (first occurrence); each returned id is marked "in flight" and
 * not returned again until ota_stage_put_chunk() stores it or it is
 * released. Returns the count written to OUT (0: nothing more to hand out;
 * check ota_stage_progress() for completion). -EINVAL for NULL/0. */
int ota_stage_next_missing(struct ota_stage *st, struct ota_stage_want *out, size_t max);
/* Hand ID out again by the next ota_stage_next_missing() (e.g. after a
 * timeout or a chunk that failed its hash). -FL_EPROTO for an unknown id. */
int ota_stage_release(struct ota_stage *st, const uint8_t id[FL_SHA256_LEN]);
/* Forget every "in flight" mark (e.g. after a reconnect). */
void ota_stage_reset_inflight(struct ota_stage *st);

/* Store chunk ID: LEN must equal its length in the index (-FL_ESIZE) and
 * SHA-256(DATA) must equal ID (-FL_EHASH); nothing is written or recorded on
 * error (the id stays "in flight": release it to have it listed again). The
 * chunk is pwritten at every occurrence still missing; a chunk already
 * stored is ignored. Progress is recorded durably in batches (see
 * OTA_STAGE_SYNC_*). Returns the number of occurrences written (0 for a
 * duplicate). -FL_EPROTO for an id the manifest does not need (no state
 * change), -errno on I/O errors, failpoint errors. */
int ota_stage_put_chunk(struct ota_stage *st, const uint8_t id[FL_SHA256_LEN], const void *data,
			size_t len);

/* Make everything written so far durable: fdatasync the .part files, then
 * replace the progress record atomically. No-op when nothing changed.
 * -errno, failpoint errors. */
int ota_stage_sync(struct ota_stage *st);

/* Counts over chunk occurrences (a repeated chunk counts at each place).
 * Any out-pointer may be NULL. */
void ota_stage_progress(const struct ota_stage *st, uint64_t *ret_bytes_done,
			uint64_t *ret_bytes_total, uint64_t *ret_chunks_done,
			uint64_t *ret_chunks_total);

/* Complete the slot: every chunk must be present (-FL_EMISSING otherwise;
 * nothing changes), progress is recorded, each .part is fsynced and its size
 * and whole SHA-256 checked against the manifest (-FL_ESIZE / -FL_EHASH:
 * nothing renamed; after -FL_EHASH the file's chunks are read back and those
 * that no longer match are marked missing again, so the caller may fetch
 * them and call finish again, or abort), then
 * each .part is renamed to its final name (never over an existing file:
 * -EEXIST), the directories fsynced and the progress record deleted. An
 * error during the renames leaves a mix of final and .part files: the caller
 * clears the slot. ST must still be freed with ota_stage_free(). */
int ota_stage_finish(struct ota_stage *st);

/* Close ST keeping .part files and progress (a later ota_stage_open()
 * resumes). NULL is accepted. */
void ota_stage_free(struct ota_stage *st);
/* Remove the .part files (and the directories they needed, when empty) and
 * the progress record, then free ST. Returns 0 or the first -errno
 * (ST is freed in any case). NULL is accepted. */
int ota_stage_abort(struct ota_stage *st);

/* Chunk map: id -> (source, offset, length) over any number of chunk
 * indexes, for reuse of chunks already on the device. Sorted array of
 * 8-byte id prefixes with binary search (ids are SHA-256: any 8 bytes hash
 * well); built lazily at the first lookup after an add. */
struct ota_chunkmap;

struct ota_chunkmap_hit {
	uint32_t source; /* the SOURCE given to ota_chunkmap_add() */
	uint32_t len;
	uint64_t offset;
};

/* Empty map. Caller frees with ota_chunkmap_free(). -ENOMEM. */
int ota_chunkmap_new(struct ota_chunkmap **ret);
/* Add every chunk of IDX (borrowed: must outlive the map) tagged SOURCE.
 * -FL_ETOOBIG past OTA_STAGE_MAX_CHUNKS entries in the map, -ENOMEM; the
 * map is unchanged on error. */
int ota_chunkmap_add(struct ota_chunkmap *map, uint32_t source, const struct ota_chunkidx *idx);
/* Up to MAX places holding ID, in the order sources were added and then by
 * offset. Returns the number of places (may exceed MAX: only MAX written),
 * 0 when none, -ENOMEM (first lookup sorts). */
int ota_chunkmap_find(struct ota_chunkmap *map, const uint8_t id[FL_SHA256_LEN],
		      struct ota_chunkmap_hit *out, size_t max);
void ota_chunkmap_free(struct ota_chunkmap *map);

#endif
