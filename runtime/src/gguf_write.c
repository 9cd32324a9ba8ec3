/* GGUF v3 writer. See gguf_write.h.
 *
 * Metadata is serialized at once into a byte buffer; tensors are kept as
 * records (owned bytes or a fill callback) and written after the header at
 * offsets padded to the alignment. The output goes to a "sink": a buffered
 * file descriptor or a growing memory buffer. */
#include "flotilla/gguf_write.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "flotilla/cleanup.h"
#include "flotilla/error.h"
#include "flotilla/fs.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF writer assumes a little-endian host"
#endif

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static int buf_put(struct buf *b, const void *data, size_t n)
{
	if (n > SIZE_MAX - b->len)
		return -ENOMEM;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n) {
			if (cap > SIZE_MAX / 2)
				return -ENOMEM;
			cap *= 2;
		}
		uint8_t *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, data, n);
	b->len += n;
	return 0;
}

static int buf_u32(struct buf *b, uint32_t v) { return buf_put(b, &v, 4); }
static int buf_u64(struct buf *b, uint64_t v) { return buf_put(b, &v, 8); }
static int buf_str(struct buf *b, const char *s, size_t len)
{
	int r = buf_u64(b, len);
	return r < 0 ? r : buf_put(b, s, len);
}

struct wtensor {
	char *name;
	uint32_t type;
	uint32_t n_dims;
	int64_t ne[RT_GGUF_MAX_DIMS];
	uint64_t n_elements;
	uint64_t size;
	uint64_t offset;
	uint8_t *data; /* owned bytes, or NULL with fill set */
	rt_gguf_fill_fn fill;
	void *fill_ctx;
};

struct rt_gguf_writer {
	struct buf kv; /* serialized pairs */
	uint64_t n_kv;
	char **keys;
	size_t n_keys, cap_keys;
	struct wtensor *tensors;
	size_t n_tensors, cap_tensors;
	uint32_t alignment;
};

int rt_gguf_writer_new(struct rt_gguf_writer **ret_writer)
{
	struct rt_gguf_writer *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->alignment = RT_GGUF_DEFAULT_ALIGNMENT;
	*ret_writer = w;
	return 0;
}

void rt_gguf_writer_free(struct rt_gguf_writer *w)
{
	if (!w)
		return;
	free(w->kv.p);
	for (size_t i = 0; i < w->n_keys; i++)
		free(w->keys[i]);
	free(w->keys);
	for (size_t i = 0; i < w->n_tensors; i++) {
		free(w->tensors[i].name);
		free(w->tensors[i].data);
	}
	free(w->tensors);
	free(w);
}

static bool name_ok(const char *s)
{
	if (!s)
		return false;
	size_t n = strnlen(s, RT_GGUF_WRITE_MAX_NAME + 1);
	return n > 0 && n <= RT_GGUF_WRITE_MAX_NAME;
}

/* Reserve KEY (unique) and write its header (key + type). The caller then
 * appends the value; on failure it calls kv_rollback(). */
static int kv_begin(struct rt_gguf_writer *w, const char *key, uint32_t type, size_t *ret_mark)
{
	if (!w || !name_ok(key))
		return -EINVAL;
	for (size_t i = 0; i < w->n_keys; i++)
		if (strcmp(w->keys[i], key) == 0)
			return -FL_EDUP;
	if (w->n_keys == w->cap_keys) {
		size_t cap = w->cap_keys ? w->cap_keys * 2 : 16;
		char **k = realloc(w->keys, cap * sizeof(*k));
		if (!k)
			return -ENOMEM;
		w->keys = k;
		w->cap_keys = cap;
	}
	char *copy = strdup(key);
	if (!copy)
		return -ENOMEM;
	size_t mark = w->kv.len;
	int r = buf_str(&w->kv, key, strlen(key));
	if (r >= 0)
		r = buf_u32(&w->kv, type);
	if (r < 0) {
		free(copy);
		w->kv.len = mark;
		return r;
	}
	w->keys[w->n_keys++] = copy;
	w->n_kv++;
	*ret_mark = mark;
	return 0;
}

static int kv_end(struct rt_gguf_writer *w, size_t mark, int r)
{
	if (r < 0) {
		w->kv.len = mark;
		free(w->keys[--w->n_keys]);
		w->n_kv--;
	}
	return r;
}

static int add_scalar(struct rt_gguf_writer *w, const char *key, enum rt_gguf_vtype t,
		      const void *v)
{
	size_t mark;
	int r = kv_begin(w, key, t, &mark);
	if (r < 0)
		return r;
	return kv_end(w, mark, buf_put(&w->kv, v, rt_gguf_vtype_size(t)));
}

#define ADD_SCALAR(fn, T, VT) \
	int fn(struct rt_gguf_writer *w, const char *key, T v) { return add_scalar(w, key, VT, &v); }
ADD_SCALAR(rt_gguf_add_u8, uint8_t, RT_GGUF_U8)
ADD_SCALAR(rt_gguf_add_i8, int8_t, RT_GGUF_I8)
ADD_SCALAR(rt_gguf_add_u16, uint16_t, RT_GGUF_U16)
ADD_SCALAR(rt_gguf_add_i16, int16_t, RT_GGUF_I16)
ADD_SCALAR(rt_gguf_add_u32, uint32_t, RT_GGUF_U32)
ADD_SCALAR(rt_gguf_add_i32, int32_t, RT_GGUF_I32)
ADD_SCALAR(rt_gguf_add_u64, uint64_t, RT_GGUF_U64)
ADD_SCALAR(rt_gguf_add_i64, int64_t, RT_GGUF_I64)
ADD_SCALAR(rt_gguf_add_f32, float, RT_GGUF_F32)
ADD_SCALAR(rt_gguf_add_f64, double, RT_GGUF_F64)

int rt_gguf_add_bool(struct rt_gguf_writer *w, const char *key, bool v)
{
	uint8_t b = v ? 1 : 0;
	return add_scalar(w, key, RT_GGUF_BOOL, &b);
}

int rt_gguf_add_str_n(struct rt_gguf_writer *w, const char *key, const char *s, size_t len)
{
	if ((!s && len) || len > RT_GGUF_MAX_STRING_BYTES)
		return -EINVAL;
	size_t mark;
	int r = kv_begin(w, key, RT_GGUF_STRING, &mark);
	if (r < 0)
		return r;
	return kv_end(w, mark, buf_str(&w->kv, s ? s : "", len));
}

int rt_gguf_add_str(struct rt_gguf_writer *w, const char *key, const char *s)
{
	if (!s)
		return -EINVAL;
	return rt_gguf_add_str_n(w, key, s, strlen(s));
}

int rt_gguf_add_arr(struct rt_gguf_writer *w, const char *key, enum rt_gguf_vtype t,
		    const void *data, size_t n)
{
	size_t es = rt_gguf_vtype_size(t);
	if (es == 0 || (!data && n) || n > RT_GGUF_MAX_ARRAY_ELEMS)
		return -EINVAL;
	size_t mark;
	int r = kv_begin(w, key, RT_GGUF_ARRAY, &mark);
	if (r < 0)
		return r;
	r = buf_u32(&w->kv, t);
	if (r >= 0)
		r = buf_u64(&w->kv, n);
	if (r >= 0)
		r = buf_put(&w->kv, data, n * es);
	return kv_end(w, mark, r);
}

int rt_gguf_add_arr_str(struct rt_gguf_writer *w, const char *key, const char *const *strs,
			const size_t *lens, size_t n)
{
	if ((!strs && n) || n > RT_GGUF_MAX_ARRAY_ELEMS)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		size_t len = lens ? lens[i] : (strs[i] ? strlen(strs[i]) : 0);
		if ((!strs[i] && len) || len > RT_GGUF_MAX_STRING_BYTES)
			return -EINVAL;
	}
	size_t mark;
	int r = kv_begin(w, key, RT_GGUF_ARRAY, &mark);
	if (r < 0)
		return r;
	r = buf_u32(&w->kv, RT_GGUF_STRING);
	if (r >= 0)
		r = buf_u64(&w->kv, n);
	for (size_t i = 0; i < n && r >= 0; i++) {
		size_t len = lens ? lens[i] : (strs[i] ? strlen(strs[i]) : 0);
		r = buf_str(&w->kv, strs[i] ? strs[i] : "", len);
	}
	return kv_end(w, mark, r);
}

int rt_gguf_add_kv_from(struct rt_gguf_writer *w, const struct rt_gguf *g, size_t i)
{
	const char *key = rt_gguf_kv_key(g, i);
	if (!key)
		return -EINVAL;
	enum rt_gguf_vtype t = rt_gguf_kv_type(g, i);
	const void *data;
	size_t size;
	int r;
	if (t == RT_GGUF_STRING) {
		const char *s;
		size_t len;
		r = rt_gguf_kv_str(g, i, &s, &len);
		return r < 0 ? r : rt_gguf_add_str_n(w, key, s, len);
	}
	if (t == RT_GGUF_ARRAY) {
		enum rt_gguf_vtype at;
		uint64_t n;
		r = rt_gguf_kv_array(g, i, &at, &n);
		if (r < 0)
			return r;
		if (at != RT_GGUF_STRING) {
			r = rt_gguf_kv_arr_raw(g, i, &data, &size);
			return r < 0 ? r : rt_gguf_add_arr(w, key, at, data, (size_t)n);
		}
		_cleanup_free_ const char **strs = calloc(n ? n : 1, sizeof(*strs));
		_cleanup_free_ size_t *lens = calloc(n ? n : 1, sizeof(*lens));
		if (!strs || !lens)
			return -ENOMEM;
		for (uint64_t j = 0; j < n; j++) {
			r = rt_gguf_kv_arr_str(g, i, j, &strs[j], &lens[j]);
			if (r < 0)
				return r;
		}
		return rt_gguf_add_arr_str(w, key, strs, lens, (size_t)n);
	}
	r = rt_gguf_kv_raw(g, i, &data, &size);
	return r < 0 ? r : add_scalar(w, key, t, data);
}

int rt_gguf_writer_set_alignment(struct rt_gguf_writer *w, uint32_t alignment)
{
	if (!w || alignment == 0 || (alignment & (alignment - 1)) || alignment > 65536)
		return -EINVAL;
	int r = rt_gguf_add_u32(w, "general.alignment", alignment);
	if (r < 0)
		return r;
	w->alignment = alignment;
	return 0;
}

/* ---- tensors ---- */

static int tensor_begin(struct rt_gguf_writer *w, const char *name, uint32_t type,
			uint32_t n_dims, const int64_t *ne, struct wtensor **ret)
{
	if (!w || !name_ok(name) || !ne || n_dims < 1 || n_dims > RT_GGUF_MAX_DIMS)
		return -EINVAL;
	uint32_t be;
	int r = rt_ggml_type_geometry(type, &be, NULL);
	if (r < 0)
		return r;
	uint64_t n = 1;
	for (uint32_t d = 0; d < n_dims; d++) {
		if (ne[d] <= 0 || __builtin_mul_overflow(n, (uint64_t)ne[d], &n) || n > INT64_MAX)
			return -EINVAL;
	}
	if ((uint64_t)ne[0] % be)
		return -EINVAL;
	for (size_t i = 0; i < w->n_tensors; i++)
		if (strcmp(w->tensors[i].name, name) == 0)
			return -FL_EDUP;
	if (w->n_tensors == w->cap_tensors) {
		size_t cap = w->cap_tensors ? w->cap_tensors * 2 : 16;
		struct wtensor *t = realloc(w->tensors, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		w->tensors = t;
		w->cap_tensors = cap;
	}
	struct wtensor *t = &w->tensors[w->n_tensors];
	memset(t, 0, sizeof(*t));
	r = rt_ggml_row_bytes(type, n, &t->size);
	if (r < 0 || t->size > SIZE_MAX)
		return -EINVAL;
	t->name = strdup(name);
	if (!t->name)
		return -ENOMEM;
	t->type = type;
	t->n_dims = n_dims;
	for (uint32_t d = 0; d < RT_GGUF_MAX_DIMS; d++)
		t->ne[d] = d < n_dims ? ne[d] : 1;
	t->n_elements = n;
	*ret = t;
	return 0;
}

int rt_gguf_add_tensor_raw(struct rt_gguf_writer *w, const char *name, uint32_t type,
			   uint32_t n_dims, const int64_t *ne, const void *data, size_t bytes)
{
	struct wtensor *t;
	int r = tensor_begin(w, name, type, n_dims, ne, &t);
	if (r < 0)
		return r;
	if (!data || bytes != t->size) {
		free(t->name);
		return -EINVAL;
	}
	t->data = malloc(bytes ? bytes : 1);
	if (!t->data) {
		free(t->name);
		return -ENOMEM;
	}
	memcpy(t->data, data, bytes);
	w->n_tensors++;
	return 0;
}

int rt_gguf_add_tensor(struct rt_gguf_writer *w, const char *name, uint32_t type,
		       uint32_t n_dims, const int64_t *ne, const float *data)
{
	if (!rt_ggml_type_can_quantize(type))
		return -FL_EUNSUPPORTED;
	struct wtensor *t;
	int r = tensor_begin(w, name, type, n_dims, ne, &t);
	if (r < 0)
		return r;
	if (!data) {
		free(t->name);
		return -EINVAL;
	}
	t->data = malloc(t->size ? (size_t)t->size : 1);
	if (!t->data) {
		free(t->name);
		return -ENOMEM;
	}
	uint64_t rows = t->n_elements / (uint64_t)t->ne[0];
	uint64_t row_bytes = t->size / rows;
	for (uint64_t i = 0; i < rows; i++) {
		r = rt_quantize_row_ref(type, data + i * (uint64_t)t->ne[0], t->data + i * row_bytes,
					t->ne[0]);
		if (r < 0) {
			free(t->data);
			free(t->name);
			return r;
		}
	}
	w->n_tensors++;
	return 0;
}

int rt_gguf_add_tensor_fill(struct rt_gguf_writer *w, const char *name, uint32_t type,
			    uint32_t n_dims, const int64_t *ne, rt_gguf_fill_fn fill, void *ctx)
{
	if (!fill)
		return -EINVAL;
	if (!rt_ggml_type_can_quantize(type))
		return -FL_EUNSUPPORTED;
	struct wtensor *t;
	int r = tensor_begin(w, name, type, n_dims, ne, &t);
	if (r < 0)
		return r;
	t->fill = fill;
	t->fill_ctx = ctx;
	w->n_tensors++;
	return 0;
}

/* ---- output ---- */

#define SINK_BUF_BYTES (1u << 20)

struct sink {
	int fd;          /* >= 0: buffered writes to fd */
	struct buf mem;  /* fd < 0: everything here */
	uint8_t *wbuf;
	size_t wlen;
	uint64_t written;
};

static int sink_flush(struct sink *s)
{
	if (s->fd < 0 || s->wlen == 0)
		return 0;
	int r = fl_write_all(s->fd, s->wbuf, s->wlen);
	if (r < 0)
		return r;
	s->wlen = 0;
	return 0;
}

static int sink_put(struct sink *s, const void *data, size_t n)
{
	s->written += n;
	if (s->fd < 0)
		return buf_put(&s->mem, data, n);
	const uint8_t *p = data;
	while (n > 0) {
		size_t k = SINK_BUF_BYTES - s->wlen;
		if (k > n)
			k = n;
		memcpy(s->wbuf + s->wlen, p, k);
		s->wlen += k;
		p += k;
		n -= k;
		if (s->wlen == SINK_BUF_BYTES) {
			int r = sink_flush(s);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

static int sink_pad(struct sink *s, uint32_t alignment)
{
	static const uint8_t zeros[64];
	uint64_t pad = (alignment - s->written % alignment) % alignment;
	while (pad > 0) {
		size_t k = pad > sizeof(zeros) ? sizeof(zeros) : (size_t)pad;
		int r = sink_put(s, zeros, k);
		if (r < 0)
			return r;
		pad -= k;
	}
	return 0;
}

static int emit(struct rt_gguf_writer *w, struct sink *s)
{
	struct buf hdr = {0};
	int r;
	uint64_t off = 0;

	for (size_t i = 0; i < w->n_tensors; i++) {
		struct wtensor *t = &w->tensors[i];
		t->offset = off;
		off += t->size;
		off += (w->alignment - off % w->alignment) % w->alignment;
	}
	r = buf_u32(&hdr, RT_GGUF_MAGIC);
	if (r >= 0)
		r = buf_u32(&hdr, 3);
	if (r >= 0)
		r = buf_u64(&hdr, w->n_tensors);
	if (r >= 0)
		r = buf_u64(&hdr, w->n_kv);
	if (r >= 0)
		r = buf_put(&hdr, w->kv.p, w->kv.len);
	for (size_t i = 0; i < w->n_tensors && r >= 0; i++) {
		struct wtensor *t = &w->tensors[i];
		r = buf_str(&hdr, t->name, strlen(t->name));
		if (r >= 0)
			r = buf_u32(&hdr, t->n_dims);
		for (uint32_t d = 0; d < t->n_dims && r >= 0; d++)
			r = buf_u64(&hdr, (uint64_t)t->ne[d]);
		if (r >= 0)
			r = buf_u32(&hdr, t->type);
		if (r >= 0)
			r = buf_u64(&hdr, t->offset);
	}
	if (r >= 0)
		r = sink_put(s, hdr.p, hdr.len);
	free(hdr.p);
	if (r < 0)
		return r;
	r = sink_pad(s, w->alignment);
	if (r < 0)
		return r;

	for (size_t i = 0; i < w->n_tensors; i++) {
		struct wtensor *t = &w->tensors[i];
		if (t->data) {
			r = sink_put(s, t->data, (size_t)t->size);
		} else {
			uint64_t rows = t->n_elements / (uint64_t)t->ne[0];
			uint64_t row_bytes = t->size / rows;
			_cleanup_free_ float *row = malloc((size_t)t->ne[0] * sizeof(float));
			_cleanup_free_ uint8_t *q = malloc((size_t)row_bytes);
			if (!row || !q)
				return -ENOMEM;
			for (uint64_t j = 0; j < rows && r >= 0; j++) {
				r = t->fill(t->fill_ctx, j, row);
				if (r >= 0)
					r = rt_quantize_row_ref(t->type, row, q, t->ne[0]);
				if (r >= 0)
					r = sink_put(s, q, (size_t)row_bytes);
			}
		}
		if (r >= 0 && i + 1 < w->n_tensors)
			r = sink_pad(s, w->alignment);
		if (r < 0)
			return r;
	}
	return sink_flush(s);
}

int rt_gguf_writer_to_memory(struct rt_gguf_writer *w, void **ret_data, size_t *ret_len)
{
	if (!w || !ret_data || !ret_len)
		return -EINVAL;
	struct sink s = {.fd = -1};
	int r = emit(w, &s);
	if (r < 0) {
		free(s.mem.p);
		return r;
	}
	*ret_data = s.mem.p ? s.mem.p : malloc(1);
	if (!*ret_data)
		return -ENOMEM;
	*ret_len = s.mem.len;
	return 0;
}

int rt_gguf_writer_write(struct rt_gguf_writer *w, const char *path)
{
	if (!w || !path || !*path)
		return -EINVAL;
	_cleanup_free_ char *tmp = NULL;
	size_t n = strlen(path);
	tmp = malloc(n + sizeof(".tmp.XXXXXX"));
	if (!tmp)
		return -ENOMEM;
	memcpy(tmp, path, n);
	memcpy(tmp + n, ".tmp.XXXXXX", sizeof(".tmp.XXXXXX"));
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct sink s = {.fd = fd};
	s.wbuf = malloc(SINK_BUF_BYTES);
	int r = s.wbuf ? 0 : -ENOMEM;
	if (r >= 0)
		r = emit(w, &s);
	free(s.wbuf);
	if (r >= 0 && fchmod(fd, 0644) < 0)
		r = -errno;
	if (r >= 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r >= 0)
		r = -errno;
	if (r >= 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return r;
	}
	return fl_fsync_parent(path);
}
