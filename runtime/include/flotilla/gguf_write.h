/* GGUF writer (version 3): metadata of every value type, tensors of any ggml
 * type (quantized here from floats for F32, F16, BF16, Q4_0, Q8_0, Q4_K,
 * Q6_K with ggml's reference round-to-nearest algorithms, or given as raw
 * bytes), aligned to general.alignment (default 32). The file is written
 * atomically: temporary file in the same directory, fsync, rename, fsync of
 * the directory.
 *
 * Used by tests, demos, benchmarks and runtime/tools/mkmodel. Keys and tensor
 * names must be unique and shorter than 64 bytes (ggml's GGML_MAX_NAME), so
 * llama.cpp reads every file this writes.
 *
 * Thread-safety: one writer per thread. */
#ifndef FLOTILLA_GGUF_WRITE_H
#define FLOTILLA_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flotilla/gguf.h"

#define RT_GGUF_WRITE_MAX_NAME 63 /* bytes, like ggml (GGML_MAX_NAME - 1) */

struct rt_gguf_writer;

/* New empty writer. Caller frees with rt_gguf_writer_free(). -ENOMEM. */
int rt_gguf_writer_new(struct rt_gguf_writer **ret_writer);
void rt_gguf_writer_free(struct rt_gguf_writer *w);

/* Set the data alignment (power of two, 1..65536) and store it as the u32
 * key general.alignment. -EINVAL otherwise. */
int rt_gguf_writer_set_alignment(struct rt_gguf_writer *w, uint32_t alignment);

/* Metadata. Each returns 0, -EINVAL (bad key, empty or too long, or bad
 * arguments), -FL_EDUP (key already added), -ENOMEM. Values are copied. */
int rt_gguf_add_u8(struct rt_gguf_writer *w, const char *key, uint8_t v);
int rt_gguf_add_i8(struct rt_gguf_writer *w, const char *key, int8_t v);
int rt_gguf_add_u16(struct rt_gguf_writer *w, const char *key, uint16_t v);
int rt_gguf_add_i16(struct rt_gguf_writer *w, const char *key, int16_t v);
int rt_gguf_add_u32(struct rt_gguf_writer *w, const char *key, uint32_t v);
int rt_gguf_add_i32(struct rt_gguf_writer *w, const char *key, int32_t v);
int rt_gguf_add_u64(struct rt_gguf_writer *w, const char *key, uint64_t v);
int rt_gguf_add_i64(struct rt_gguf_writer *w, const char *key, int64_t v);
int rt_gguf_add_f32(struct rt_gguf_writer *w, const char *key, float v);
int rt_gguf_add_f64(struct rt_gguf_writer *w, const char *key, double v);
int rt_gguf_add_bool(struct rt_gguf_writer *w, const char *key, bool v);
/* NUL-terminated string. */
int rt_gguf_add_str(struct rt_gguf_writer *w, const char *key, const char *s);
/* String of LEN bytes (may hold NULs). */
int rt_gguf_add_str_n(struct rt_gguf_writer *w, const char *key, const char *s, size_t len);
/* Array of N numeric elements of scalar type T (not STRING/ARRAY), packed
 * little-endian at DATA (bool: one byte each). */
int rt_gguf_add_arr(struct rt_gguf_writer *w, const char *key, enum rt_gguf_vtype t,
		    const void *data, size_t n);
/* Array of N strings; LENS may be NULL (then each is NUL-terminated). */
int rt_gguf_add_arr_str(struct rt_gguf_writer *w, const char *key, const char *const *strs,
			const size_t *lens, size_t n);
/* Copy pair I of an open file (any type) under its own key. */
int rt_gguf_add_kv_from(struct rt_gguf_writer *w, const struct rt_gguf *g, size_t i);

/* Tensors (data offsets follow the order of the calls). NE is in ggml order
 * (NE[0] = row length), N_DIMS 1..4, every dim > 0, NE[0] a multiple of the
 * type's block. Errors: -EINVAL (shape, name), -FL_EDUP (name taken),
 * -FL_EUNSUPPORTED (type cannot be quantized here), -ENOMEM. */

/* Quantize N floats (the product of NE) at DATA to TYPE now (data copied). */
int rt_gguf_add_tensor(struct rt_gguf_writer *w, const char *name, uint32_t type,
		       uint32_t n_dims, const int64_t *ne, const float *data);
/* Already encoded bytes of TYPE (any known ggml type); BYTES must equal
 * rt_ggml_row_bytes(TYPE, n_elements). Copied. */
int rt_gguf_add_tensor_raw(struct rt_gguf_writer *w, const char *name, uint32_t type,
			   uint32_t n_dims, const int64_t *ne, const void *data, size_t bytes);
/* Streaming: FILL(CTX, ROW, OUT) is called at write time for each row
 * 0..rows-1 (rows = product of NE[1..]) to produce NE[0] floats, which are
 * quantized to TYPE and written; nothing is held in memory. FILL returns 0
 * or a negative error that aborts the write. CTX must outlive the write. */
typedef int (*rt_gguf_fill_fn)(void *ctx, uint64_t row, float *out);
int rt_gguf_add_tensor_fill(struct rt_gguf_writer *w, const char *name, uint32_t type,
			    uint32_t n_dims, const int64_t *ne, rt_gguf_fill_fn fill, void *ctx);

/* Write the file atomically to PATH (mode 0644). On error nothing is left
 * behind and an existing PATH is untouched. */
int rt_gguf_writer_write(struct rt_gguf_writer *w, const char *path);
/* Build the file in memory. Caller frees *ret_data with free(). */
int rt_gguf_writer_to_memory(struct rt_gguf_writer *w, void **ret_data, size_t *ret_len);

#endif
