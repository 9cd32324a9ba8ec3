/* Bundles: a signed model version as one uncompressed tar (libarchive).
 *
 * Layout (docs/bundle-format.md "Tar layout"), in this order when written:
 *   manifest.dsse.json          DSSE envelope of the manifest; FIRST entry
 *   index/<path>.cidx           chunk index of each payload file (chunkidx.h)
 *   files/<path>                each payload file, byte for byte
 * <path> is the manifest's file path (safe relative '/'-separated path).
 * Entries other than the manifest may come in any order when read, but each
 * exactly once. Written as pax (restricted) with mode 0644, uid/gid 0 and the
 * manifest's creation time, so the same inputs give the same bytes.
 *
 * Safe reading (docs/bundle-format.md "Safe reading"): the manifest must be
 * the first entry and its signature is verified before any other entry is
 * looked at; only regular files with exactly the expected names are
 * accepted; every size must match the manifest; every payload's SHA-256 and
 * every chunk index's SHA-256 must match it; limits on entry count, manifest
 * size and total bytes are checked before data is read. Verification streams
 * (no whole-file buffer) and hashes with fl_sha256 (OpenSSL).
 *
 * Refusals, each with its own code:
 *   -FL_ETAR        not a tar, truncated, unreadable
 *   -FL_EENTRYTYPE  symlink, hard link, device, fifo, directory, sparse entry
 *   -FL_EPATH       absolute path, "..", or a name the manifest does not imply
 *   -FL_EDUP        the same entry twice
 *   -FL_EMISSING    no manifest at all, or a file/index the manifest names is absent
 *   -FL_EFORMAT     the manifest exists but is not the first entry; an index
 *                   that does not decode
 *   -FL_ESIZE       entry size differs from the manifest
 *   -FL_EHASH       payload or chunk index hash differs from the manifest
 *   -FL_ETOOBIG     past the entry, manifest-size or total-size limit
 *   and whatever manifest verification returns (ota_trust_verify_manifest()).
 *
 * Thread-safety: none; a struct ota_bundle has one owner. */
#ifndef FLOTILLA_OTA_BUNDLE_H
#define FLOTILLA_OTA_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include <flotilla/chunkidx.h>
#include <flotilla/crypto.h>
#include <flotilla/manifest.h>
#include <flotilla/trust.h>

#define OTA_BUNDLE_MANIFEST_NAME "manifest.dsse.json"
#define OTA_BUNDLE_FILES_DIR "files/"
#define OTA_BUNDLE_INDEX_DIR "index/"
#define OTA_BUNDLE_INDEX_SUFFIX ".cidx"

/* Default limits. */
#define OTA_BUNDLE_MAX_ENTRIES (1 + 2 * OTA_MANIFEST_MAX_FILES)
#define OTA_BUNDLE_MAX_MANIFEST_BYTES OTA_DSSE_MAX_BYTES
#define OTA_BUNDLE_MAX_TOTAL_BYTES (256ull * 1024 * 1024 * 1024)

/* Verifies the manifest envelope; on success *ret is the parsed manifest
 * (caller of the hook frees it with ota_manifest_free()). */
typedef int (*ota_bundle_verify_fn)(void *userdata, const char *envelope, size_t len,
				    struct ota_manifest **ret);

struct ota_bundle_opts {
	size_t max_entries;        /* 0: OTA_BUNDLE_MAX_ENTRIES */
	size_t max_manifest_bytes; /* 0: OTA_BUNDLE_MAX_MANIFEST_BYTES */
	uint64_t max_total_bytes;  /* 0: OTA_BUNDLE_MAX_TOTAL_BYTES (sum of entry sizes) */
	/* NULL: ota_trust_verify_manifest(trust, envelope, now, min_sequence). */
	ota_bundle_verify_fn verify;
	void *verify_userdata;
};

/* A ready-made hook that parses the envelope and the manifest WITHOUT
 * checking any signature: for inspection tools, planning (diff) and fuzzing
 * only; never for installing. */
int ota_bundle_verify_none(void *userdata, const char *envelope, size_t len,
			   struct ota_manifest **ret);

struct ota_bundle;

/* Open and fully verify the bundle at PATH: manifest signature (TRUST, NOW,
 * MIN_SEQUENCE as for ota_trust_verify_manifest(); TRUST unused when
 * OPTS->verify is set), then every entry, size and hash (one streaming pass).
 * OPTS may be NULL. Caller frees *ret with ota_bundle_free(). Errors: see
 * the list above, -errno for I/O, -ENOMEM. */
int ota_bundle_open(const char *path, struct ota_trust *trust, int64_t now, uint64_t min_sequence,
		    const struct ota_bundle_opts *opts, struct ota_bundle **ret);
/* Same over LEN bytes in memory; DATA must stay valid until *ret is freed
 * (ota_bundle_extract() reads it again). */
int ota_bundle_open_mem(const void *data, size_t len, struct ota_trust *trust, int64_t now,
			uint64_t min_sequence, const struct ota_bundle_opts *opts,
			struct ota_bundle **ret);

/* Extract the payload files of an opened bundle into the existing directory
 * DEST_DIR (files/<path> -> DEST_DIR/<path>; subdirectories created inside
 * DEST_DIR without following symlinks). The archive is read again and checked
 * again (the manifest entry must be byte-identical to the one verified at
 * open, every size and hash again), each file is written to a temporary name
 * in its final directory and fsynced; only when the whole archive checked out
 * are they renamed into place (never over an existing file: -EEXIST) and the
 * directories fsynced. On any error everything written is removed: DEST_DIR
 * holds no new file or directory. Chunk indexes are not extracted (see
 * ota_bundle_chunk_index()). Errors: as for open, -errno. */
int ota_bundle_extract(struct ota_bundle *b, const char *dest_dir);

/* The verified manifest / envelope bytes (owned by B). */
const struct ota_manifest *ota_bundle_manifest(const struct ota_bundle *b);
const char *ota_bundle_envelope(const struct ota_bundle *b, size_t *ret_len);
/* Chunk index of manifest file I (owned by B), NULL when I is out of range. */
const struct ota_chunkidx *ota_bundle_chunk_index(const struct ota_bundle *b, size_t i);

void ota_bundle_free(struct ota_bundle *b);

/* Build a bundle at OUT_PATH from the files SRC_PATHS[0..N_FILES) (bundle
 * path = each file's base name). M supplies every manifest field but the
 * files (it must have none): the builder appends the files and sets
 * M->chunking; on error M's file list is left empty again. Each file is
 * chunked (CHUNK_OPTS, OTA_CHUNK_OPT_*; PARAMS NULL = defaults), its size,
 * SHA-256 and chunk index SHA-256 go into the manifest,
 * the manifest is signed by each of KEYS[0..N_KEYS) (>= 1, private keys) in a
 * DSSE envelope, and the tar is written to a temporary name next to OUT_PATH,
 * fsynced and renamed over it (directory fsynced). Files are hashed again
 * while written: one that changed meanwhile is -FL_EHASH. On error no file is
 * left behind. Errors: manifest errors (-FL_EPATH, -FL_EDUP, -FL_ESCHEMA ...),
 * -FL_EKEY, -FL_ETOOBIG, -FL_ETAR (libarchive write error), -errno. */
int ota_bundle_create(const char *out_path, struct ota_manifest *m,
		      const char *const *src_paths, size_t n_files,
		      const struct ota_chunk_params *params, unsigned chunk_opts,
		      struct ota_key *const *keys, size_t n_keys);

/* Add KEY's signature to the manifest of the bundle IN_PATH and write the
 * result to OUT_PATH (may equal IN_PATH; atomic as above). IN_PATH is checked
 * structurally (layout, sizes, hashes; signatures are not checked). Errors:
 * as ota_bundle_open() with ota_bundle_verify_none, -FL_EDUP (KEY already
 * signed), -FL_ETOOBIG (too many signatures), -FL_EKEY, -errno. */
int ota_bundle_add_signature(const char *in_path, const char *out_path, const struct ota_key *key);

/* What a device holding OLD must fetch to build NEW: the bytes and number of
 * NEW's distinct chunks (by chunk id) that no file of OLD has. TOTAL_* are
 * NEW's distinct chunk bytes and count. OLD may be NULL (everything moves).
 * Both bundles must have been opened (any verify hook). -EINVAL, -ENOMEM. */
struct ota_bundle_delta {
	uint64_t fetch_bytes;
	uint64_t fetch_chunks;
	uint64_t total_bytes;
	uint64_t total_chunks;
};
int ota_bundle_diff(const struct ota_bundle *old_b, const struct ota_bundle *new_b,
		    struct ota_bundle_delta *ret);

#endif
