/* Bundle manifest, format v1 (DSSE payload type
 * "application/vnd.flotilla.manifest.v1+json"). Full field reference:
 * docs/bundle-format.md, section "Manifest".
 *
 *   {"name": "tinyllama-chat", "version": "1.4.0", "sequence": 42,
 *    "created": "2026-11-25T10:00:00Z", "expires": "2027-02-23T10:00:00Z",
 *    "description": "optional text",
 *    "compatibility": {"arch": ["x86_64","aarch64"], "min_ram_mb": 512,
 *                      "accelerator": "none", "backend": "gguf"},
 *    "runtime": {"context_length": 2048, "threads": 4, "limits": {...}},
 *    "acceptance": [{"name": "greet", "prompt": "Hello", "expect": "Hi",
 *                    "max_tokens": 16, "latency_budget_ms": 2000,
 *                    "memory_budget_mb": 600}],
 *    "trial": {"window_s": 600, "min_requests": 20, "max_error_rate": 0.05,
 *              "max_p95_latency_ms": 1500},
 *    "chunking": "<opaque chunker descriptor>",
 *    "files": [{"path": "model.gguf", "size": 1234, "sha256": "<64 hex>",
 *               "chunk_index_sha256": "<64 hex>"}]}
 *
 * Limits (checked before allocation): document <= OTA_MANIFEST_MAX_BYTES,
 * nesting <= OTA_MANIFEST_MAX_DEPTH, <= OTA_MANIFEST_MAX_FILES files, every
 * string bounded (see the constants). Unknown top-level keys (and unknown keys
 * in the fixed sub-objects) are refused. "runtime" is open: any keys that are
 * valid names, values of string/number/bool/array/object, bounded.
 *
 * The struct is public: the bundle builder fills it (every string and array is
 * malloc()ed and owned by the manifest; ota_manifest_free() frees them). */
#ifndef FLOTILLA_OTA_MANIFEST_H
#define FLOTILLA_OTA_MANIFEST_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OTA_MANIFEST_MAX_BYTES (256 * 1024)
#define OTA_MANIFEST_MAX_DEPTH 16
#define OTA_MANIFEST_MAX_FILES 1024
#define OTA_MANIFEST_MAX_PATH 255        /* bytes of a file path */
#define OTA_MANIFEST_MAX_NAME 64         /* model name, arch, accelerator, backend */
#define OTA_MANIFEST_MAX_VERSION 64      /* version string */
#define OTA_MANIFEST_MAX_TEXT 1024       /* description, chunking descriptor */
#define OTA_MANIFEST_MAX_ARCH 16
#define OTA_MANIFEST_MAX_TESTS 64
#define OTA_MANIFEST_MAX_PROMPT (16 * 1024)
#define OTA_MANIFEST_MAX_EXPECT (4 * 1024)
#define OTA_MANIFEST_MAX_RUNTIME_KEYS 64 /* members per object/array inside "runtime" */
#define OTA_MANIFEST_MAX_RUNTIME_STR 1024
#define OTA_MANIFEST_MAX_INT 9007199254740991LL /* 2^53-1: exact in JSON */
#define OTA_TIME_MAX_S 253402300799LL /* 9999-12-31T23:59:59Z; times are >= 0 */

struct ota_manifest_file {
	char *path; /* relative, '/'-separated, safe components */
	uint64_t size;
	uint8_t sha256[32];
	uint8_t chunk_index_sha256[32];
};

struct ota_compat {
	char **arch; /* e.g. "x86_64", "aarch64"; empty: any architecture */
	size_t n_arch;
	uint64_t min_ram_mb;  /* 0: no requirement */
	char *accelerator;    /* "none", "cuda", ... */
	char *backend;        /* "gguf", "exec", "xgboost", ... */
};

struct ota_acceptance_test {
	char *name;       /* optional label (NULL if absent) */
	char *prompt;
	char *expect;     /* output must contain this substring; NULL: no check */
	uint32_t max_tokens;
	uint32_t latency_budget_ms; /* 0: no budget */
	uint32_t memory_budget_mb;  /* 0: no budget */
};

struct ota_trial {
	uint32_t window_s;           /* 0: no trial, commit after acceptance */
	uint32_t min_requests;       /* requests to see before the window may end */
	double max_error_rate;       /* 0..1; default 1 (no limit) */
	uint32_t max_p95_latency_ms; /* 0: no limit */
};

struct ota_manifest {
	char *name;        /* fl_name_valid(.., OTA_MANIFEST_MAX_NAME) */
	char *version;     /* free-form but printable, no spaces, bounded */
	uint64_t sequence; /* monotonic per name, <= OTA_MANIFEST_MAX_INT */
	int64_t created_s; /* epoch seconds (ISO 8601 UTC in JSON) */
	int64_t expires_s; /* > created_s */
	char *description; /* NULL if absent */
	struct ota_compat compat;
	cJSON *runtime;    /* an object (possibly empty), owned by the manifest */
	struct ota_acceptance_test *tests;
	size_t n_tests;
	struct ota_trial trial;
	/* "telemetry": {"include_content": bool}: the publisher allows a
	 * runner_crashed event to carry the failing request's content (the
	 * device config must allow it too; docs/telemetry.md). */
	bool tele_include_content;
	char *chunking;    /* opaque descriptor from the chunker; NULL if absent */
	struct ota_manifest_file *files;
	size_t n_files;
};

/* Parse and validate a manifest (need not be NUL-terminated). At least one
 * file is required. Errors: -FL_ETOOBIG, -FL_ETOODEEP, -FL_EINVAL_JSON,
 * -FL_ESCHEMA (missing/unknown/mistyped member, bad name, bad hex, bad time,
 * expires <= created, time outside 0..OTA_TIME_MAX_S), -FL_ERANGE (number out of range or not an integer),
 * -FL_EPATH (unsafe file path), -FL_EDUP (duplicate path), -ENOMEM.
 * Caller frees *ret with ota_manifest_free(). */
int ota_manifest_parse(const char *json, size_t len, struct ota_manifest **ret);

/* Like ota_manifest_parse() but for a build template: "files" may be absent
 * or empty (the builder adds them with ota_manifest_add_file()). */
int ota_manifest_parse_template(const char *json, size_t len, struct ota_manifest **ret);

/* Check every rule ota_manifest_parse() checks, on a struct filled by hand.
 * With REQUIRE_FILES false, zero files is allowed. Same error codes. */
int ota_manifest_validate(const struct ota_manifest *m, bool require_files);

/* Canonical serialization: compact JSON, members in the order of the example
 * above, optional members omitted when unset, files in the order added. The
 * manifest is validated first (errors as ota_manifest_validate(m, true)).
 * Parsing the output gives an equal manifest. Caller frees *ret with free();
 * *ret_len (if not NULL) gets strlen(*ret). */
int ota_manifest_to_json(const struct ota_manifest *m, char **ret, size_t *ret_len);

/* A minimal manifest for the builder: NAME, VERSION, SEQUENCE, CREATED_S,
 * EXPIRES_S set (strings copied); compat arch empty (any), accelerator "none",
 * backend "gguf", runtime {}, no tests, no trial, no files. Fill the rest
 * before ota_manifest_to_json(). -EINVAL on an invalid name/version or
 * expires <= created; -ENOMEM. Caller frees with ota_manifest_free(). */
int ota_manifest_new(const char *name, const char *version, uint64_t sequence, int64_t created_s,
		     int64_t expires_s, struct ota_manifest **ret);

/* Append a file (PATH copied, hashes raw 32 bytes). -FL_EPATH unsafe path,
 * -FL_EDUP path already present, -FL_ETOOBIG over OTA_MANIFEST_MAX_FILES,
 * -FL_ERANGE size over OTA_MANIFEST_MAX_INT, -ENOMEM. M unchanged on error. */
int ota_manifest_add_file(struct ota_manifest *m, const char *path, uint64_t size,
			  const uint8_t sha256[32], const uint8_t chunk_index_sha256[32]);

/* The file entry with PATH, or NULL. */
const struct ota_manifest_file *ota_manifest_find_file(const struct ota_manifest *m,
						       const char *path);

/* 0 when NOW (epoch seconds) is before expires_s; -FL_EEXPIRED otherwise.
 * A manifest created in the future is accepted (device clocks drift). */
int ota_manifest_check_time(const struct ota_manifest *m, int64_t now);

/* True when PATH is a safe relative bundle path: 1..OTA_MANIFEST_MAX_PATH
 * bytes, '/'-separated, no leading '/', no empty, "." or ".." component, no
 * backslash, no control characters. */
bool ota_manifest_path_valid(const char *path);

void ota_manifest_free(struct ota_manifest *m);

#endif
