/* GGUF reader: map, validate everything, then serve lookups. See gguf.h.
 *
 * Parsing is one forward pass over the mapping with a bounds-checked cursor.
 * Every count is checked against the bytes left before anything is allocated,
 * so memory use is proportional to the input, whatever it claims. Strings are
 * recorded as (file offset, length) during the pass and copied, NUL-terminated,
 * into one arena at the end. */
#include "flotilla/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "flotilla/cleanup.h"
#include "flotilla/error.h"

#define RT_GGUF_MAX_ALIGNMENT 65536u

struct str {
	const char *p;
	size_t len;
};

/* During the parse a string is (file offset, length). */
struct sref {
	uint64_t off;
	uint64_t len;
};

struct kv {
	uint32_t key;      /* string index */
	uint32_t type;     /* enum rt_gguf_vtype */
	uint64_t val_off;  /* file offset of the value (scalar) or first element (array) */
	uint64_t val_size; /* bytes of scalar value or numeric array payload */
	uint32_t str;      /* string index (STRING) or first element index (array of strings) */
	uint32_t arr_type;
	uint64_t arr_n;
};

struct rt_gguf {
	const uint8_t *base;
	uint64_t size;
	bool mapped;
	uint32_t version;
	uint32_t alignment;
	uint64_t data_offset;

	struct kv *kvs;
	size_t n_kv;
	uint32_t *kv_sorted; /* kv indices sorted by key */

	struct rt_gguf_tensor *tensors;
	size_t n_tensors;
	uint32_t *tensor_sorted; /* tensor indices sorted by name */

	struct str *strs; /* all strings */
	size_t n_strs;
	char *arena;
};

static _Thread_local char last_error[256];

__attribute__((format(printf, 1, 2))) static void set_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
}

const char *rt_gguf_last_error(void) { return last_error; }

size_t rt_gguf_vtype_size(enum rt_gguf_vtype t)
{
	switch (t) {
	case RT_GGUF_U8: case RT_GGUF_I8: case RT_GGUF_BOOL: return 1;
	case RT_GGUF_U16: case RT_GGUF_I16: return 2;
	case RT_GGUF_U32: case RT_GGUF_I32: case RT_GGUF_F32: return 4;
	case RT_GGUF_U64: case RT_GGUF_I64: case RT_GGUF_F64: return 8;
	default: return 0;
	}
}

const char *rt_gguf_vtype_name(enum rt_gguf_vtype t)
{
	static const char *const names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
					    "bool", "string", "array", "u64", "i64", "f64"};
	if ((unsigned)t < FL_ARRAY_SIZE(names))
		return names[t];
	return "unknown";
}

/* ---- parsing ---- */

struct parser {
	const uint8_t *p;
	uint64_t size;
	uint64_t pos;
	struct sref *refs;
	size_t n_refs, cap_refs;
};

static uint64_t left(const struct parser *ps) { return ps->size - ps->pos; }

static int take(struct parser *ps, uint64_t n, const char *what, uint64_t *ret_off)
{
	if (n > left(ps)) {
		set_error("truncated: %s needs %llu bytes at offset %llu, file has %llu", what,
			  (unsigned long long)n, (unsigned long long)ps->pos,
			  (unsigned long long)ps->size);
		return -FL_EFORMAT;
	}
	*ret_off = ps->pos;
	ps->pos += n;
	return 0;
}

static int rd_u32(struct parser *ps, const char *what, uint32_t *ret)
{
	uint64_t off;
	int r = take(ps, 4, what, &off);
	if (r < 0)
		return r;
	const uint8_t *b = ps->p + off;
	*ret = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
	return 0;
}

static int rd_u64(struct parser *ps, const char *what, uint64_t *ret)
{
	uint32_t lo, hi;
	int r = rd_u32(ps, what, &lo);
	if (r < 0)
		return r;
	r = rd_u32(ps, what, &hi);
	if (r < 0)
		return r;
	*ret = (uint64_t)hi << 32 | lo;
	return 0;
}

static int push_ref(struct parser *ps, uint64_t off, uint64_t len, uint32_t *ret_idx)
{
	if (ps->n_refs == ps->cap_refs) {
		size_t cap = ps->cap_refs ? ps->cap_refs * 2 : 64;
		if (cap > UINT32_MAX)
			return -FL_ETOOBIG;
		struct sref *n = realloc(ps->refs, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		ps->refs = n;
		ps->cap_refs = cap;
	}
	ps->refs[ps->n_refs] = (struct sref){off, len};
	*ret_idx = (uint32_t)ps->n_refs++;
	return 0;
}

/* Read a GGUF string (u64 length + bytes) of at most MAX bytes. */
static int rd_str(struct parser *ps, uint64_t max, const char *what, uint32_t *ret_idx)
{
	uint64_t len, off;
	uint64_t at = ps->pos;
	int r = rd_u64(ps, what, &len);
	if (r < 0)
		return r;
	if (len > max) {
		set_error("%s at offset %llu: length %llu over the limit %llu", what,
			  (unsigned long long)at, (unsigned long long)len, (unsigned long long)max);
		return -FL_ETOOBIG;
	}
	r = take(ps, len, what, &off);
	if (r < 0)
		return r;
	return push_ref(ps, off, len, ret_idx);
}

static const char *ref_name(const struct parser *ps, uint32_t idx, char *buf, size_t size)
{
	const struct sref *s = &ps->refs[idx];
	size_t n = s->len < size - 1 ? (size_t)s->len : size - 1;
	for (size_t i = 0; i < n; i++) {
		char c = (char)ps->p[s->off + i];
		buf[i] = (c >= 0x20 && c < 0x7f) ? c : '?';
	}
	buf[n] = '\0';
	return buf;
}

static int parse_kv(struct parser *ps, struct kv *kv, size_t index)
{
	char what[64];
	snprintf(what, sizeof(what), "key of kv %zu", index);
	int r = rd_str(ps, RT_GGUF_MAX_NAME_BYTES, what, &kv->key);
	if (r < 0)
		return r;
	char name[80];
	ref_name(ps, kv->key, name, sizeof(name));
	snprintf(what, sizeof(what), "kv '%.40s'", name);
	r = rd_u32(ps, what, &kv->type);
	if (r < 0)
		return r;
	switch (kv->type) {
	case RT_GGUF_STRING:
		return rd_str(ps, RT_GGUF_MAX_STRING_BYTES, what, &kv->str);
	case RT_GGUF_ARRAY: {
		r = rd_u32(ps, what, &kv->arr_type);
		if (r < 0)
			return r;
		r = rd_u64(ps, what, &kv->arr_n);
		if (r < 0)
			return r;
		if (kv->arr_n > RT_GGUF_MAX_ARRAY_ELEMS) {
			set_error("%s: array of %llu elements over the limit %u", what,
				  (unsigned long long)kv->arr_n, RT_GGUF_MAX_ARRAY_ELEMS);
			return -FL_ETOOBIG;
		}
		if (kv->arr_type == RT_GGUF_STRING) {
			/* Each element needs at least its 8-byte length. */
			if (kv->arr_n > left(ps) / 8) {
				set_error("%s: %llu strings cannot fit in the %llu bytes left", what,
					  (unsigned long long)kv->arr_n,
					  (unsigned long long)left(ps));
				return -FL_EFORMAT;
			}
			kv->val_off = ps->pos;
			for (uint64_t i = 0; i < kv->arr_n; i++) {
				uint32_t idx;
				r = rd_str(ps, RT_GGUF_MAX_STRING_BYTES, what, &idx);
				if (r < 0)
					return r;
				if (i == 0)
					kv->str = idx;
			}
			kv->val_size = ps->pos - kv->val_off;
			return 0;
		}
		size_t es = rt_gguf_vtype_size(kv->arr_type);
		if (es == 0) {
			set_error("%s: array element type %u not supported%s", what, kv->arr_type,
				  kv->arr_type == RT_GGUF_ARRAY ? " (nested array)" : "");
			return -FL_EFORMAT;
		}
		kv->val_size = kv->arr_n * es;
		return take(ps, kv->val_size, what, &kv->val_off);
	}
	default: {
		size_t es = rt_gguf_vtype_size(kv->type);
		if (es == 0) {
			set_error("%s: unknown value type %u", what, kv->type);
			return -FL_EFORMAT;
		}
		kv->val_size = es;
		return take(ps, es, what, &kv->val_off);
	}
	}
}

static int parse_tensor(struct parser *ps, struct rt_gguf_tensor *t, uint32_t *ret_name,
			size_t index)
{
	char what[64];
	snprintf(what, sizeof(what), "name of tensor %zu", index);
	int r = rd_str(ps, RT_GGUF_MAX_NAME_BYTES, what, ret_name);
	if (r < 0)
		return r;
	char name[80];
	ref_name(ps, *ret_name, name, sizeof(name));
	snprintf(what, sizeof(what), "tensor '%.40s'", name);
	r = rd_u32(ps, what, &t->n_dims);
	if (r < 0)
		return r;
	if (t->n_dims < 1 || t->n_dims > RT_GGUF_MAX_DIMS) {
		set_error("%s: n_dims %u not in 1..%d", what, t->n_dims, RT_GGUF_MAX_DIMS);
		return -FL_EFORMAT;
	}
	uint64_t n = 1;
	for (uint32_t d = 0; d < RT_GGUF_MAX_DIMS; d++) {
		uint64_t v = 1;
		if (d < t->n_dims) {
			r = rd_u64(ps, what, &v);
			if (r < 0)
				return r;
			if (v == 0 || v > INT64_MAX) {
				set_error("%s: dimension %u is %lld", what, d, (long long)v);
				return -FL_EFORMAT;
			}
		}
		t->ne[d] = (int64_t)v;
		if (__builtin_mul_overflow(n, v, &n) || n > INT64_MAX) {
			set_error("%s: element count overflows", what);
			return -FL_EFORMAT;
		}
	}
	t->n_elements = n;
	r = rd_u32(ps, what, &t->type);
	if (r < 0)
		return r;
	uint32_t be, bb;
	if (rt_ggml_type_geometry(t->type, &be, &bb) < 0) {
		set_error("%s: unknown or unsupported tensor type %u", what, t->type);
		return -FL_EUNSUPPORTED;
	}
	if ((uint64_t)t->ne[0] % be != 0) {
		set_error("%s: row length %lld not a multiple of the %s block (%u)", what,
			  (long long)t->ne[0], rt_ggml_type_name(t->type), be);
		return -FL_EFORMAT;
	}
	if (rt_ggml_row_bytes(t->type, n, &t->size) < 0) {
		set_error("%s: byte size overflows", what);
		return -FL_EFORMAT;
	}
	return rd_u64(ps, what, &t->offset);
}

static int cmp_tensor_off(const void *a, const void *b, void *arg)
{
	const struct rt_gguf_tensor *t = arg;
	uint64_t x = t[*(const uint32_t *)a].offset, y = t[*(const uint32_t *)b].offset;
	return x < y ? -1 : x > y;
}

static int cmp_str(const struct str *a, const struct str *b)
{
	size_t n = a->len < b->len ? a->len : b->len;
	int c = memcmp(a->p, b->p, n);
	if (c)
		return c;
	return a->len < b->len ? -1 : a->len > b->len;
}

static int cmp_kv_key(const void *a, const void *b, void *arg)
{
	const struct rt_gguf *g = arg;
	return cmp_str(&g->strs[g->kvs[*(const uint32_t *)a].key],
		       &g->strs[g->kvs[*(const uint32_t *)b].key]);
}

static int cmp_tensor_name(const void *a, const void *b, void *arg)
{
	const struct rt_gguf *g = arg;
	const struct rt_gguf_tensor *x = &g->tensors[*(const uint32_t *)a];
	const struct rt_gguf_tensor *y = &g->tensors[*(const uint32_t *)b];
	struct str sx = {x->name, strlen(x->name)}, sy = {y->name, strlen(y->name)};
	return cmp_str(&sx, &sy);
}

void rt_gguf_free(struct rt_gguf *g)
{
	if (!g)
		return;
	if (g->mapped && g->size > 0)
		munmap((void *)g->base, g->size);
	free(g->kvs);
	free(g->kv_sorted);
	free(g->tensors);
	free(g->tensor_sorted);
	free(g->strs);
	free(g->arena);
	free(g);
}
FL_DEFINE_CLEANUP(struct rt_gguf, rt_gguf_free)

static int find_kv_raw(const struct rt_gguf *g, const char *key, size_t key_len);

static int parse(struct rt_gguf *g)
{
	struct parser ps = {.p = g->base, .size = g->size};
	_cleanup_free_ uint32_t *tensor_names = NULL;
	_cleanup_free_ uint32_t *order = NULL;
	int r;
	uint32_t magic;
	uint64_t n_tensors, n_kv;

	if (g->size < 24) {
		set_error("file of %llu bytes is too small for a GGUF header",
			  (unsigned long long)g->size);
		return -FL_EFORMAT;
	}
	rd_u32(&ps, "magic", &magic);
	if (magic != RT_GGUF_MAGIC) {
		set_error("bad magic 0x%08x (not a GGUF file)", magic);
		return -FL_EFORMAT;
	}
	rd_u32(&ps, "version", &g->version);
	if (g->version != 2 && g->version != 3) {
		set_error("GGUF version %u not supported (2 or 3)", g->version);
		return -FL_EUNSUPPORTED;
	}
	rd_u64(&ps, "tensor count", &n_tensors);
	rd_u64(&ps, "kv count", &n_kv);
	if (n_tensors > RT_GGUF_MAX_TENSORS || n_kv > RT_GGUF_MAX_KV) {
		set_error("%llu tensors / %llu kvs over the limits %u / %u",
			  (unsigned long long)n_tensors, (unsigned long long)n_kv,
			  RT_GGUF_MAX_TENSORS, RT_GGUF_MAX_KV);
		return -FL_ETOOBIG;
	}
	/* A kv takes at least 8 (key len) + 4 (type) + 1 bytes, a tensor record
	 * 8 + 4 + 8 + 4 + 8: refuse counts the file cannot hold before allocating. */
	if (n_kv > left(&ps) / 13 || n_tensors > left(&ps) / 32) {
		set_error("%llu kvs / %llu tensors cannot fit in %llu bytes",
			  (unsigned long long)n_kv, (unsigned long long)n_tensors,
			  (unsigned long long)g->size);
		return -FL_EFORMAT;
	}
	g->kvs = calloc(n_kv ? n_kv : 1, sizeof(*g->kvs));
	g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(*g->tensors));
	tensor_names = calloc(n_tensors ? n_tensors : 1, sizeof(*tensor_names));
	if (!g->kvs || !g->tensors || !tensor_names)
		return -ENOMEM;

	for (size_t i = 0; i < n_kv; i++) {
		r = parse_kv(&ps, &g->kvs[i], i);
		if (r < 0)
			goto out;
		g->n_kv = i + 1;
	}
	for (size_t i = 0; i < n_tensors; i++) {
		r = parse_tensor(&ps, &g->tensors[i], &tensor_names[i], i);
		if (r < 0)
			goto out;
		g->n_tensors = i + 1;
	}

	/* Strings into the arena. Total length <= file size. */
	size_t total = 0;
	for (size_t i = 0; i < ps.n_refs; i++)
		total += (size_t)ps.refs[i].len + 1;
	g->arena = malloc(total ? total : 1);
	g->strs = calloc(ps.n_refs ? ps.n_refs : 1, sizeof(*g->strs));
	if (!g->arena || !g->strs) {
		r = -ENOMEM;
		goto out;
	}
	char *w = g->arena;
	for (size_t i = 0; i < ps.n_refs; i++) {
		memcpy(w, g->base + ps.refs[i].off, (size_t)ps.refs[i].len);
		w[ps.refs[i].len] = '\0';
		g->strs[i] = (struct str){w, (size_t)ps.refs[i].len};
		w += ps.refs[i].len + 1;
	}
	g->n_strs = ps.n_refs;

	/* Keys: non-empty, no NUL (lookups are by C string), unique. */
	for (size_t i = 0; i < g->n_kv; i++) {
		const struct str *k = &g->strs[g->kvs[i].key];
		if (k->len == 0 || memchr(k->p, '\0', k->len)) {
			set_error("kv %zu: empty key or NUL byte in key", i);
			r = -FL_EFORMAT;
			goto out;
		}
	}
	/* Unique keys. */
	g->kv_sorted = malloc((g->n_kv ? g->n_kv : 1) * sizeof(uint32_t));
	if (!g->kv_sorted) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < g->n_kv; i++)
		g->kv_sorted[i] = (uint32_t)i;
	qsort_r(g->kv_sorted, g->n_kv, sizeof(uint32_t), cmp_kv_key, g);
	for (size_t i = 1; i < g->n_kv; i++) {
		if (cmp_kv_key(&g->kv_sorted[i - 1], &g->kv_sorted[i], g) == 0) {
			set_error("duplicate key '%.64s'", g->strs[g->kvs[g->kv_sorted[i]].key].p);
			r = -FL_EFORMAT;
			goto out;
		}
	}

	/* Alignment. */
	g->alignment = RT_GGUF_DEFAULT_ALIGNMENT;
	int ai = find_kv_raw(g, "general.alignment", strlen("general.alignment"));
	if (ai >= 0) {
		const struct kv *kv = &g->kvs[ai];
		if (kv->type != RT_GGUF_U32) {
			set_error("general.alignment has type %s, not u32",
				  rt_gguf_vtype_name(kv->type));
			r = -FL_EFORMAT;
			goto out;
		}
		uint32_t a;
		memcpy(&a, g->base + kv->val_off, 4); /* little-endian hosts only */
		if (a == 0 || (a & (a - 1)) || a > RT_GGUF_MAX_ALIGNMENT) {
			set_error("general.alignment %u is not a power of two <= %u", a,
				  RT_GGUF_MAX_ALIGNMENT);
			r = -FL_EFORMAT;
			goto out;
		}
		g->alignment = a;
	}

	/* Data section. */
	uint64_t pad = (g->alignment - ps.pos % g->alignment) % g->alignment;
	g->data_offset = ps.pos + pad;
	if (g->data_offset > g->size) {
		if (g->n_tensors > 0) {
			set_error("data section at %llu starts past the end of the file (%llu)",
				  (unsigned long long)g->data_offset, (unsigned long long)g->size);
			r = -FL_EFORMAT;
			goto out;
		}
		g->data_offset = g->size;
	}
	uint64_t data_size = g->size - g->data_offset;

	/* Names, offsets, bounds. */
	for (size_t i = 0; i < g->n_tensors; i++) {
		struct rt_gguf_tensor *t = &g->tensors[i];
		const struct str *s = &g->strs[tensor_names[i]];
		t->name = s->p;
		if (memchr(s->p, '\0', s->len) || s->len == 0) {
			set_error("tensor %zu: empty name or NUL byte in name", i);
			r = -FL_EFORMAT;
			goto out;
		}
		if (t->offset % g->alignment) {
			set_error("tensor '%.64s': data offset %llu not aligned to %u", t->name,
				  (unsigned long long)t->offset, g->alignment);
			r = -FL_EFORMAT;
			goto out;
		}
		if (t->offset > data_size || t->size > data_size - t->offset) {
			set_error("tensor '%.64s': data [%llu, +%llu) past the end of the data "
				  "section (%llu bytes)",
				  t->name, (unsigned long long)t->offset, (unsigned long long)t->size,
				  (unsigned long long)data_size);
			r = -FL_EFORMAT;
			goto out;
		}
		t->data = g->base + g->data_offset + t->offset;
	}
	order = malloc((g->n_tensors ? g->n_tensors : 1) * sizeof(uint32_t));
	if (!order) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < g->n_tensors; i++)
		order[i] = (uint32_t)i;
	qsort_r(order, g->n_tensors, sizeof(uint32_t), cmp_tensor_off, g->tensors);
	for (size_t i = 1; i < g->n_tensors; i++) {
		const struct rt_gguf_tensor *a = &g->tensors[order[i - 1]];
		const struct rt_gguf_tensor *b = &g->tensors[order[i]];
		if (a->offset + a->size > b->offset) {
			set_error("tensors '%.64s' and '%.64s' overlap", a->name, b->name);
			r = -FL_EFORMAT;
			goto out;
		}
	}
	g->tensor_sorted = fl_steal_ptr(order);
	for (size_t i = 0; i < g->n_tensors; i++)
		g->tensor_sorted[i] = (uint32_t)i;
	qsort_r(g->tensor_sorted, g->n_tensors, sizeof(uint32_t), cmp_tensor_name, g);
	for (size_t i = 1; i < g->n_tensors; i++) {
		if (cmp_tensor_name(&g->tensor_sorted[i - 1], &g->tensor_sorted[i], g) == 0) {
			set_error("duplicate tensor name '%.64s'",
				  g->tensors[g->tensor_sorted[i]].name);
			r = -FL_EFORMAT;
			goto out;
		}
	}
	r = 0;
out:
	free(ps.refs);
	return r;
}

static int open_common(struct rt_gguf *g_in, struct rt_gguf **ret_gguf)
{
	_cleanup_(rt_gguf_freep) struct rt_gguf *g = g_in;
	last_error[0] = '\0';
	int r = parse(g);
	if (r < 0) {
		if (!last_error[0])
			set_error("%s", fl_strerror(r));
		return r;
	}
	*ret_gguf = fl_steal_ptr(g);
	return 0;
}

int rt_gguf_open_memory(const void *data, size_t len, struct rt_gguf **ret_gguf)
{
	if (!data && len)
		return -EINVAL;
	struct rt_gguf *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->base = data;
	g->size = len;
	return open_common(g, ret_gguf);
}

int rt_gguf_open(const char *path, struct rt_gguf **ret_gguf)
{
	last_error[0] = '\0';
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		set_error("open %s: %s", path, strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		set_error("stat %s: %s", path, strerror(e));
		return -e;
	}
	if (!S_ISREG(st.st_mode)) {
		set_error("%s is not a regular file", path);
		return -EINVAL;
	}
	if ((uint64_t)st.st_size > SIZE_MAX) {
		set_error("%s too large to map", path);
		return -FL_ETOOBIG;
	}
	struct rt_gguf *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->size = (uint64_t)st.st_size;
	if (g->size > 0) {
		void *m = mmap(NULL, (size_t)g->size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED) {
			int e = errno;
			free(g);
			set_error("mmap %s: %s", path, strerror(e));
			return -e;
		}
		g->base = m;
		g->mapped = true;
	} else {
		g->base = (const uint8_t *)"";
	}
	return open_common(g, ret_gguf);
}

/* ---- accessors ---- */

uint32_t rt_gguf_version(const struct rt_gguf *g) { return g->version; }
uint64_t rt_gguf_file_size(const struct rt_gguf *g) { return g->size; }
uint32_t rt_gguf_alignment(const struct rt_gguf *g) { return g->alignment; }
uint64_t rt_gguf_data_offset(const struct rt_gguf *g) { return g->data_offset; }
const void *rt_gguf_data(const struct rt_gguf *g) { return g->base + g->data_offset; }
size_t rt_gguf_n_kv(const struct rt_gguf *g) { return g->n_kv; }
size_t rt_gguf_n_tensors(const struct rt_gguf *g) { return g->n_tensors; }

static int find_kv_raw(const struct rt_gguf *g, const char *key, size_t key_len)
{
	struct str want = {key, key_len};
	size_t lo = 0, hi = g->n_kv;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = cmp_str(&g->strs[g->kvs[g->kv_sorted[mid]].key], &want);
		if (c == 0)
			return (int)g->kv_sorted[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -ENOENT;
}

int rt_gguf_find_kv(const struct rt_gguf *g, const char *key)
{
	if (!key)
		return -EINVAL;
	return find_kv_raw(g, key, strlen(key));
}

const char *rt_gguf_kv_key(const struct rt_gguf *g, size_t i)
{
	return i < g->n_kv ? g->strs[g->kvs[i].key].p : NULL;
}

enum rt_gguf_vtype rt_gguf_kv_type(const struct rt_gguf *g, size_t i)
{
	return i < g->n_kv ? (enum rt_gguf_vtype)g->kvs[i].type : RT_GGUF_VTYPE_COUNT;
}

int rt_gguf_kv_array(const struct rt_gguf *g, size_t i, enum rt_gguf_vtype *ret_type,
		     uint64_t *ret_n)
{
	if (i >= g->n_kv || g->kvs[i].type != RT_GGUF_ARRAY)
		return -EINVAL;
	if (ret_type)
		*ret_type = (enum rt_gguf_vtype)g->kvs[i].arr_type;
	if (ret_n)
		*ret_n = g->kvs[i].arr_n;
	return 0;
}

int rt_gguf_kv_raw(const struct rt_gguf *g, size_t i, const void **ret_data, size_t *ret_size)
{
	if (i >= g->n_kv || rt_gguf_vtype_size(g->kvs[i].type) == 0)
		return -EINVAL;
	*ret_data = g->base + g->kvs[i].val_off;
	*ret_size = (size_t)g->kvs[i].val_size;
	return 0;
}

int rt_gguf_kv_str(const struct rt_gguf *g, size_t i, const char **ret, size_t *ret_len)
{
	if (i >= g->n_kv || g->kvs[i].type != RT_GGUF_STRING)
		return -EINVAL;
	*ret = g->strs[g->kvs[i].str].p;
	if (ret_len)
		*ret_len = g->strs[g->kvs[i].str].len;
	return 0;
}

int rt_gguf_kv_arr_raw(const struct rt_gguf *g, size_t i, const void **ret_data,
		       size_t *ret_size)
{
	if (i >= g->n_kv || g->kvs[i].type != RT_GGUF_ARRAY ||
	    rt_gguf_vtype_size(g->kvs[i].arr_type) == 0)
		return -EINVAL;
	*ret_data = g->base + g->kvs[i].val_off;
	*ret_size = (size_t)g->kvs[i].val_size;
	return 0;
}

int rt_gguf_kv_arr_str(const struct rt_gguf *g, size_t i, uint64_t j, const char **ret,
		       size_t *ret_len)
{
	if (i >= g->n_kv || g->kvs[i].type != RT_GGUF_ARRAY ||
	    g->kvs[i].arr_type != RT_GGUF_STRING)
		return -EINVAL;
	if (j >= g->kvs[i].arr_n)
		return -ERANGE;
	const struct str *s = &g->strs[g->kvs[i].str + j];
	*ret = s->p;
	if (ret_len)
		*ret_len = s->len;
	return 0;
}

/* Scalar number at P of type T into either a signed or unsigned 64-bit
 * value. Returns 1 if integer (with *is_neg telling which field holds it), 2
 * if float, 0 otherwise. */
static int load_num(const uint8_t *p, uint32_t t, int64_t *ri, uint64_t *ru, double *rf,
		    bool *is_signed)
{
	union {
		uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
		uint64_t u64; int64_t i64; float f32; double f64;
	} v;
	size_t sz = rt_gguf_vtype_size(t);
	if (sz == 0)
		return 0;
	memcpy(&v, p, sz);
	*is_signed = false;
	switch (t) {
	case RT_GGUF_U8: *ru = v.u8; return 1;
	case RT_GGUF_U16: *ru = v.u16; return 1;
	case RT_GGUF_U32: *ru = v.u32; return 1;
	case RT_GGUF_U64: *ru = v.u64; return 1;
	case RT_GGUF_BOOL: *ru = v.u8 != 0; return 1;
	case RT_GGUF_I8: *ri = v.i8; *is_signed = true; return 1;
	case RT_GGUF_I16: *ri = v.i16; *is_signed = true; return 1;
	case RT_GGUF_I32: *ri = v.i32; *is_signed = true; return 1;
	case RT_GGUF_I64: *ri = v.i64; *is_signed = true; return 1;
	case RT_GGUF_F32: *rf = v.f32; return 2;
	case RT_GGUF_F64: *rf = v.f64; return 2;
	default: return 0;
	}
}

/* Integer at P (type T) within [MIN, MAX] (as signed) or [0, UMAX]. */
static int int_in_range(const uint8_t *p, uint32_t t, bool allow_bool, int64_t min, uint64_t umax,
			int64_t *ret_i, uint64_t *ret_u)
{
	int64_t i = 0;
	uint64_t u = 0;
	double f;
	bool sgn;
	if (t == RT_GGUF_BOOL && !allow_bool)
		return -FL_ESCHEMA;
	if (load_num(p, t, &i, &u, &f, &sgn) != 1)
		return -FL_ESCHEMA;
	if (sgn) {
		if (i < min || (i > 0 && (uint64_t)i > umax))
			return -FL_ERANGE;
		*ret_i = i;
		*ret_u = (uint64_t)i;
	} else {
		if (u > umax)
			return -FL_ERANGE;
		*ret_i = (int64_t)u;
		*ret_u = u;
	}
	return 0;
}

static int get_scalar(const struct rt_gguf *g, const char *key, const struct kv **ret)
{
	int i = rt_gguf_find_kv(g, key);
	if (i < 0)
		return i;
	*ret = &g->kvs[i];
	return 0;
}

#define GET_INT(fn, T, MIN, UMAX)                                                       \
	int fn(const struct rt_gguf *g, const char *key, T *ret)                        \
	{                                                                               \
		const struct kv *kv;                                                    \
		int64_t i;                                                              \
		uint64_t u;                                                             \
		int r = get_scalar(g, key, &kv);                                        \
		if (r < 0)                                                              \
			return r;                                                       \
		r = int_in_range(g->base + kv->val_off, kv->type, false, MIN, UMAX, &i, &u); \
		if (r < 0)                                                              \
			return r;                                                       \
		*ret = (T)i;                                                            \
		return 0;                                                               \
	}

GET_INT(rt_gguf_get_u32, uint32_t, 0, UINT32_MAX)
GET_INT(rt_gguf_get_i32, int32_t, INT32_MIN, INT32_MAX)
GET_INT(rt_gguf_get_i64, int64_t, INT64_MIN, INT64_MAX)

int rt_gguf_get_u64(const struct rt_gguf *g, const char *key, uint64_t *ret)
{
	const struct kv *kv;
	int64_t i;
	uint64_t u;
	int r = get_scalar(g, key, &kv);
	if (r < 0)
		return r;
	r = int_in_range(g->base + kv->val_off, kv->type, false, 0, UINT64_MAX, &i, &u);
	if (r < 0)
		return r;
	*ret = u;
	return 0;
}

int rt_gguf_get_f64(const struct rt_gguf *g, const char *key, double *ret)
{
	const struct kv *kv;
	int64_t i = 0;
	uint64_t u = 0;
	double f = 0;
	bool sgn = false;
	int r = get_scalar(g, key, &kv);
	if (r < 0)
		return r;
	if (kv->type != RT_GGUF_F32 && kv->type != RT_GGUF_F64)
		return -FL_ESCHEMA;
	load_num(g->base + kv->val_off, kv->type, &i, &u, &f, &sgn);
	*ret = f;
	return 0;
}

int rt_gguf_get_f32(const struct rt_gguf *g, const char *key, float *ret)
{
	double d = 0;
	int r = rt_gguf_get_f64(g, key, &d);
	if (r < 0)
		return r;
	*ret = (float)d;
	return 0;
}

int rt_gguf_get_bool(const struct rt_gguf *g, const char *key, bool *ret)
{
	const struct kv *kv;
	int r = get_scalar(g, key, &kv);
	if (r < 0)
		return r;
	if (kv->type != RT_GGUF_BOOL)
		return -FL_ESCHEMA;
	*ret = g->base[kv->val_off] != 0;
	return 0;
}

int rt_gguf_get_str(const struct rt_gguf *g, const char *key, const char **ret, size_t *ret_len)
{
	const struct kv *kv;
	int r = get_scalar(g, key, &kv);
	if (r < 0)
		return r;
	if (kv->type != RT_GGUF_STRING)
		return -FL_ESCHEMA;
	*ret = g->strs[kv->str].p;
	if (ret_len)
		*ret_len = g->strs[kv->str].len;
	return 0;
}

int rt_gguf_get_arr_n(const struct rt_gguf *g, const char *key, enum rt_gguf_vtype *ret_type,
		      uint64_t *ret_n)
{
	const struct kv *kv;
	int r = get_scalar(g, key, &kv);
	if (r < 0)
		return r;
	if (kv->type != RT_GGUF_ARRAY)
		return -FL_ESCHEMA;
	if (ret_type)
		*ret_type = (enum rt_gguf_vtype)kv->arr_type;
	if (ret_n)
		*ret_n = kv->arr_n;
	return 0;
}

int rt_gguf_get_arr_str(const struct rt_gguf *g, const char *key, uint64_t i, const char **ret,
			size_t *ret_len)
{
	int k = rt_gguf_find_kv(g, key);
	if (k < 0)
		return k;
	if (g->kvs[k].type != RT_GGUF_ARRAY || g->kvs[k].arr_type != RT_GGUF_STRING)
		return -FL_ESCHEMA;
	return rt_gguf_kv_arr_str(g, (size_t)k, i, ret, ret_len);
}

static int get_num_arr(const struct rt_gguf *g, const char *key, uint64_t n,
		       const struct kv **ret)
{
	const struct kv *kv;
	int r = get_scalar(g, key, &kv);
	if (r < 0)
		return r;
	if (kv->type != RT_GGUF_ARRAY || rt_gguf_vtype_size(kv->arr_type) == 0)
		return -FL_ESCHEMA;
	if (kv->arr_n != n)
		return -EINVAL;
	*ret = kv;
	return 0;
}

static int get_arr_int(const struct rt_gguf *g, const char *key, int64_t min, uint64_t umax,
		       int32_t *out32, int64_t *out64, uint64_t n)
{
	const struct kv *kv;
	int r = get_num_arr(g, key, n, &kv);
	if (r < 0)
		return r;
	size_t es = rt_gguf_vtype_size(kv->arr_type);
	const uint8_t *p = g->base + kv->val_off;
	/* Validate all before writing anything. */
	for (int pass = 0; pass < 2; pass++) {
		for (uint64_t j = 0; j < n; j++) {
			int64_t i;
			uint64_t u;
			r = int_in_range(p + j * es, kv->arr_type, true, min, umax, &i, &u);
			if (r < 0)
				return r;
			if (pass == 1) {
				if (out32)
					out32[j] = (int32_t)i;
				else
					out64[j] = i;
			}
		}
	}
	return 0;
}

int rt_gguf_get_arr_i32(const struct rt_gguf *g, const char *key, int32_t *out, uint64_t n)
{
	return get_arr_int(g, key, INT32_MIN, INT32_MAX, out, NULL, n);
}

int rt_gguf_get_arr_i64(const struct rt_gguf *g, const char *key, int64_t *out, uint64_t n)
{
	return get_arr_int(g, key, INT64_MIN, INT64_MAX, NULL, out, n);
}

int rt_gguf_get_arr_f32(const struct rt_gguf *g, const char *key, float *out, uint64_t n)
{
	const struct kv *kv;
	int r = get_num_arr(g, key, n, &kv);
	if (r < 0)
		return r;
	size_t es = rt_gguf_vtype_size(kv->arr_type);
	const uint8_t *p = g->base + kv->val_off;
	for (uint64_t j = 0; j < n; j++) {
		int64_t i = 0;
		uint64_t u = 0;
		double f = 0;
		bool sgn = false;
		int k = load_num(p + j * es, kv->arr_type, &i, &u, &f, &sgn);
		if (k == 1)
			f = sgn ? (double)i : (double)u;
		out[j] = (float)f;
	}
	return 0;
}

const struct rt_gguf_tensor *rt_gguf_tensor(const struct rt_gguf *g, size_t i)
{
	return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct rt_gguf_tensor *rt_gguf_find_tensor(const struct rt_gguf *g, const char *name)
{
	if (!name)
		return NULL;
	size_t lo = 0, hi = g->n_tensors;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(g->tensors[g->tensor_sorted[mid]].name, name);
		if (c == 0)
			return &g->tensors[g->tensor_sorted[mid]];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}
