/* GGUF reader (versions 2 and 3).
 *
 * rt_gguf_open() maps the file read-only (MAP_PRIVATE) and validates all of
 * it before returning: header, every key/value, every tensor record (type,
 * n_dims <= 4, dims > 0, element count without overflow, data offset aligned,
 * inside the file, no overlaps). A hostile file gets an error, never a crash
 * or a large allocation; rt_gguf_last_error() then says what was wrong.
 * Tensor data stays in the mapping (no copy): rt_gguf_tensor.data points into
 * it and is valid until rt_gguf_free().
 *
 * Strings (keys, tensor names, string values, string array elements) are
 * returned NUL-terminated (copied at open into one arena); GGUF strings may
 * hold NUL bytes, so the *_len out-parameters give the true length.
 *
 * Thread-safety: an open handle is immutable; any number of threads may read
 * it concurrently. rt_gguf_last_error() is per thread. */
#ifndef FLOTILLA_GGUF_H
#define FLOTILLA_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flotilla/ggml_types.h"

#define RT_GGUF_MAGIC 0x46554747u /* "GGUF" little endian */
#define RT_GGUF_DEFAULT_ALIGNMENT 32
#define RT_GGUF_MAX_DIMS 4

/* Limits enforced by the reader (a file beyond one is -FL_ETOOBIG). */
#define RT_GGUF_MAX_TENSORS 65536u
#define RT_GGUF_MAX_KV 65536u
#define RT_GGUF_MAX_STRING_BYTES (1u << 20)    /* one string */
#define RT_GGUF_MAX_ARRAY_ELEMS (16u << 20)    /* one array */
#define RT_GGUF_MAX_NAME_BYTES 256u            /* tensor name, key (ggml: 64) */

/* Value types of metadata (GGUF numbering). */
enum rt_gguf_vtype {
	RT_GGUF_U8 = 0,
	RT_GGUF_I8 = 1,
	RT_GGUF_U16 = 2,
	RT_GGUF_I16 = 3,
	RT_GGUF_U32 = 4,
	RT_GGUF_I32 = 5,
	RT_GGUF_F32 = 6,
	RT_GGUF_BOOL = 7,
	RT_GGUF_STRING = 8,
	RT_GGUF_ARRAY = 9,
	RT_GGUF_U64 = 10,
	RT_GGUF_I64 = 11,
	RT_GGUF_F64 = 12,
	RT_GGUF_VTYPE_COUNT = 13,
};

struct rt_gguf;

struct rt_gguf_tensor {
	const char *name;      /* NUL-terminated */
	uint32_t type;         /* enum rt_ggml_type */
	uint32_t n_dims;       /* 1..4 */
	int64_t ne[RT_GGUF_MAX_DIMS]; /* ggml order: ne[0] = row length; unused dims are 1 */
	uint64_t n_elements;
	uint64_t offset;       /* of the data, from the start of the data section */
	uint64_t size;         /* bytes: rt_ggml_row_bytes(type, n_elements) */
	const void *data;      /* into the mapping; aligned to rt_gguf_alignment() when that is
				* <= the page size (the mapping is page aligned) */
};

/* Open and validate PATH. On success *ret_gguf is set (caller frees with
 * rt_gguf_free()). Errors: negative errno from open/fstat/mmap, -FL_EFORMAT
 * (malformed), -FL_ETOOBIG (a limit above exceeded), -FL_EUNSUPPORTED (GGUF
 * version other than 2/3, or an unknown tensor type), -ENOMEM. */
int rt_gguf_open(const char *path, struct rt_gguf **ret_gguf);

/* Same over a caller buffer of LEN bytes, which must stay valid and unchanged
 * until rt_gguf_free() (used by fuzzers and tests). Tensor data alignment is
 * relative to DATA. */
int rt_gguf_open_memory(const void *data, size_t len, struct rt_gguf **ret_gguf);

/* Unmap and free. NULL is fine. */
void rt_gguf_free(struct rt_gguf *g);

/* Message for the last failed rt_gguf_open*() in this thread, e.g.
 * "tensor 'blk.0.attn_q.weight': data offset 100 not aligned to 32".
 * Never NULL; "" if none. */
const char *rt_gguf_last_error(void);

uint32_t rt_gguf_version(const struct rt_gguf *g);
uint64_t rt_gguf_file_size(const struct rt_gguf *g);
uint32_t rt_gguf_alignment(const struct rt_gguf *g);
/* Offset in the file of the tensor data section, and its first byte. */
uint64_t rt_gguf_data_offset(const struct rt_gguf *g);
const void *rt_gguf_data(const struct rt_gguf *g);

/* ---- metadata ---- */

/* Number of key/value pairs; index i in [0, n). */
size_t rt_gguf_n_kv(const struct rt_gguf *g);
/* Index of KEY, or -ENOENT. */
int rt_gguf_find_kv(const struct rt_gguf *g, const char *key);
/* Key of pair I (NULL if I is out of range). */
const char *rt_gguf_kv_key(const struct rt_gguf *g, size_t i);
/* Type of pair I (RT_GGUF_VTYPE_COUNT if out of range). */
enum rt_gguf_vtype rt_gguf_kv_type(const struct rt_gguf *g, size_t i);
/* For an array pair I: element type and count. -EINVAL if I is not an array. */
int rt_gguf_kv_array(const struct rt_gguf *g, size_t i, enum rt_gguf_vtype *ret_type,
		     uint64_t *ret_n);

/* Typed getters by key. Each returns 0, -ENOENT (no such key), -FL_ESCHEMA
 * (wrong type) or -FL_ERANGE (an integer of another width whose value does
 * not fit). Integer getters accept any integer type whose value fits; f32
 * accepts f32 or f64; bool accepts only bool. */
int rt_gguf_get_u32(const struct rt_gguf *g, const char *key, uint32_t *ret);
int rt_gguf_get_i32(const struct rt_gguf *g, const char *key, int32_t *ret);
int rt_gguf_get_u64(const struct rt_gguf *g, const char *key, uint64_t *ret);
int rt_gguf_get_i64(const struct rt_gguf *g, const char *key, int64_t *ret);
int rt_gguf_get_f32(const struct rt_gguf *g, const char *key, float *ret);
int rt_gguf_get_f64(const struct rt_gguf *g, const char *key, double *ret);
int rt_gguf_get_bool(const struct rt_gguf *g, const char *key, bool *ret);
/* String value: NUL-terminated, owned by G. RET_LEN may be NULL. */
int rt_gguf_get_str(const struct rt_gguf *g, const char *key, const char **ret,
		    size_t *ret_len);

/* Arrays by key. rt_gguf_get_arr_n: element count and type (-FL_ESCHEMA if
 * KEY is not an array). */
int rt_gguf_get_arr_n(const struct rt_gguf *g, const char *key, enum rt_gguf_vtype *ret_type,
		      uint64_t *ret_n);
/* Element I of a string array (NUL-terminated, owned by G). -FL_ESCHEMA if
 * not an array of strings, -ERANGE if I >= n. RET_LEN may be NULL. */
int rt_gguf_get_arr_str(const struct rt_gguf *g, const char *key, uint64_t i,
			const char **ret, size_t *ret_len);
/* Copy an integer array into OUT (N must equal the array length; any integer
 * element type whose values fit; bool counts as 0/1). -FL_ERANGE if an
 * element does not fit, -EINVAL if N differs. */
int rt_gguf_get_arr_i32(const struct rt_gguf *g, const char *key, int32_t *out, uint64_t n);
int rt_gguf_get_arr_i64(const struct rt_gguf *g, const char *key, int64_t *out, uint64_t n);
/* Copy a float array (f32 or f64 elements, or integers) into OUT. */
int rt_gguf_get_arr_f32(const struct rt_gguf *g, const char *key, float *out, uint64_t n);

/* Same by index (for generic copies of metadata, e.g. mkmodel copying the
 * tokenizer.ggml.* keys). Scalars: rt_gguf_kv_raw gives a pointer into the
 * mapping to the little-endian value bytes (unaligned: memcpy it) and its
 * size. Strings: rt_gguf_kv_str. Arrays: rt_gguf_kv_arr_raw gives the packed
 * little-endian numeric elements (not for string arrays), rt_gguf_kv_arr_str
 * element I of a string array. */
int rt_gguf_kv_raw(const struct rt_gguf *g, size_t i, const void **ret_data, size_t *ret_size);
int rt_gguf_kv_str(const struct rt_gguf *g, size_t i, const char **ret, size_t *ret_len);
int rt_gguf_kv_arr_raw(const struct rt_gguf *g, size_t i, const void **ret_data,
		       size_t *ret_size);
int rt_gguf_kv_arr_str(const struct rt_gguf *g, size_t i, uint64_t j, const char **ret,
		       size_t *ret_len);

/* ---- tensors ---- */

size_t rt_gguf_n_tensors(const struct rt_gguf *g);
/* Tensor I in file order (NULL if out of range). Owned by G. */
const struct rt_gguf_tensor *rt_gguf_tensor(const struct rt_gguf *g, size_t i);
/* Tensor by name, NULL if absent. */
const struct rt_gguf_tensor *rt_gguf_find_tensor(const struct rt_gguf *g, const char *name);

/* Size of one GGUF value of scalar type T (0 for string/array/unknown). */
size_t rt_gguf_vtype_size(enum rt_gguf_vtype t);
const char *rt_gguf_vtype_name(enum rt_gguf_vtype t);

#endif
