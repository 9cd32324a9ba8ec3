/* Gear/FastCDC content-defined chunker with forced cut points. See chunker.h
 * and docs/chunking.md for the choices. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <flotilla/chunker.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>

/* Seed of the gear table (ASCII "flotilla"); part of the format. */
#define GEAR_SEED 0x666c6f74696c6c61ull

struct ota_chunker {
	struct ota_chunk_params p;
	uint64_t gear[256];
	uint64_t mask_s; /* below avg: harder (more bits) */
	uint64_t mask_l; /* above avg: easier (fewer bits) */
	uint64_t pos;    /* bytes fed */
	uint64_t start;  /* offset of the chunk being built */
	uint32_t cur;    /* its length so far */
	uint64_t fp;     /* rolling gear hash */
	struct fl_sha256 *h;
	uint64_t *cuts;
	size_t ncuts;
	size_t next_cut;
	bool failed;
};

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void ota_chunk_params_default(struct ota_chunk_params *ret)
{
	ret->min_bytes = OTA_CHUNK_MIN_DEFAULT;
	ret->avg_bytes = OTA_CHUNK_AVG_DEFAULT;
	ret->max_bytes = OTA_CHUNK_MAX_DEFAULT;
}

int ota_chunk_params_check(const struct ota_chunk_params *p)
{
	if (!p)
		return -EINVAL;
	if (p->min_bytes < OTA_CHUNK_MIN_LOWEST || p->max_bytes > OTA_CHUNK_MAX_HIGHEST)
		return -EINVAL;
	if (!(p->min_bytes < p->avg_bytes && p->avg_bytes < p->max_bytes))
		return -EINVAL;
	if (p->avg_bytes & (p->avg_bytes - 1))
		return -EINVAL;
	return 0;
}

static unsigned log2u(uint32_t v)
{
	unsigned b = 0;
	while (v > 1) {
		v >>= 1;
		b++;
	}
	return b;
}

int ota_chunker_new(const struct ota_chunk_params *p, struct ota_chunker **ret)
{
	struct ota_chunk_params def;
	if (!p) {
		ota_chunk_params_default(&def);
		p = &def;
	}
	if (!ret || ota_chunk_params_check(p) < 0)
		return -EINVAL;
	struct ota_chunker *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->p = *p;
	c->h = fl_sha256_new();
	if (!c->h) {
		free(c);
		return -ENOMEM;
	}
	uint64_t s = GEAR_SEED;
	for (size_t i = 0; i < 256; i++)
		c->gear[i] = splitmix64(&s);
	unsigned bits = log2u(p->avg_bytes);
	/* The top bits of a shift-left gear hash mix the most recent 64 bytes. */
	c->mask_s = ~0ull << (64 - (bits + 2));
	c->mask_l = ~0ull << (64 - (bits > 2 ? bits - 2 : 1));
	*ret = c;
	return 0;
}

void ota_chunker_free(struct ota_chunker *c)
{
	if (!c)
		return;
	fl_sha256_free(c->h);
	free(c->cuts);
	free(c);
}

uint64_t ota_chunker_offset(const struct ota_chunker *c)
{
	return c->pos;
}

int ota_chunker_set_cuts(struct ota_chunker *c, const uint64_t *cuts, size_t n)
{
	if (!c || (n && !cuts) || c->pos != 0 || c->cuts)
		return -EINVAL;
	for (size_t i = 1; i < n; i++)
		if (cuts[i] <= cuts[i - 1])
			return -EINVAL;
	if (n == 0)
		return 0;
	if (n > SIZE_MAX / sizeof(uint64_t))
		return -ENOMEM;
	c->cuts = malloc(n * sizeof(uint64_t));
	if (!c->cuts)
		return -ENOMEM;
	memcpy(c->cuts, cuts, n * sizeof(uint64_t));
	c->ncuts = n;
	return 0;
}

static int emit(struct ota_chunker *c, uint32_t flags, ota_chunk_cb cb, void *ud)
{
	struct ota_chunk ch = {.offset = c->start, .len = c->cur, .flags = flags};
	fl_sha256_final(c->h, ch.sha256);
	fl_sha256_reset(c->h);
	c->start += c->cur;
	c->cur = 0;
	c->fp = 0;
	int r = cb ? cb(ud, &ch) : 0;
	if (r < 0)
		c->failed = true;
	return r < 0 ? r : 0;
}

/* Scan up to N bytes of P for the end of the current chunk. Returns the number
 * of bytes that belong to the chunk; *found tells whether the chunk ends after
 * them. Updates cur and fp. */
static size_t scan(struct ota_chunker *c, const uint8_t *p, size_t n, bool *found)
{
	size_t i = 0;
	uint32_t cur = c->cur;
	uint64_t fp = c->fp;
	const uint32_t min = c->p.min_bytes, avg = c->p.avg_bytes, max = c->p.max_bytes;

	*found = false;
	if (cur < min) {
		size_t skip = min - cur;
		if (skip > n)
			skip = n;
		i = skip;
		cur += (uint32_t)skip;
		if (cur < min)
			goto out;
	}
	while (i < n && cur < avg) {
		fp = (fp << 1) + c->gear[p[i]];
		i++;
		cur++;
		if (!(fp & c->mask_s)) {
			*found = true;
			goto out;
		}
	}
	while (i < n && cur < max) {
		fp = (fp << 1) + c->gear[p[i]];
		i++;
		cur++;
		if (!(fp & c->mask_l)) {
			*found = true;
			goto out;
		}
	}
	if (cur >= max)
		*found = true;
out:
	c->cur = cur;
	c->fp = fp;
	return i;
}

int ota_chunker_feed(struct ota_chunker *c, const void *data, size_t len, ota_chunk_cb cb,
		     void *userdata)
{
	if (!c || (len && !data))
		return -EINVAL;
	if (c->failed)
		return -EINVAL;
	const uint8_t *p = data;
	while (len > 0) {
		/* Forced cuts at or before the chunk start carry no information. */
		while (c->next_cut < c->ncuts && c->cuts[c->next_cut] <= c->start)
			c->next_cut++;
		size_t limit = len;
		if (c->next_cut < c->ncuts) {
			uint64_t to_cut = c->cuts[c->next_cut] - c->pos;
			if (to_cut == 0) {
				/* cur > 0 here because the cut is past start. */
				c->next_cut++;
				int r = emit(c, OTA_CHUNK_F_FORCED, cb, userdata);
				if (r < 0)
					return r;
				continue;
			}
			if (to_cut < limit)
				limit = (size_t)to_cut;
		}
		bool found;
		size_t n = scan(c, p, limit, &found);
		fl_sha256_update(c->h, p, n);
		c->pos += n;
		p += n;
		len -= n;
		if (found) {
			int r = emit(c, 0, cb, userdata);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

int ota_chunker_finish(struct ota_chunker *c, ota_chunk_cb cb, void *userdata)
{
	if (!c || c->failed)
		return -EINVAL;
	if (c->cur == 0)
		return 0;
	return emit(c, 0, cb, userdata);
}

/* ---- GGUF header parsing (only what is needed to find tensor offsets) ---- */

#define GGUF_MAX_KV (1u << 20)
#define GGUF_MAX_STRING (16u * 1024 * 1024)
#define GGUF_MAX_DIMS 8u
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_READ_BUF (64u * 1024)

enum {
	GGUF_T_U8 = 0, GGUF_T_I8, GGUF_T_U16, GGUF_T_I16, GGUF_T_U32, GGUF_T_I32, GGUF_T_F32,
	GGUF_T_BOOL, GGUF_T_STRING, GGUF_T_ARRAY, GGUF_T_U64, GGUF_T_I64, GGUF_T_F64,
};

struct grd {
	const uint8_t *mem; /* memory source, or NULL for fd */
	size_t mem_len;
	int fd;
	uint64_t file_size;
	uint64_t pos;
	uint8_t *buf; /* fd: window [buf_off, buf_off + buf_len) */
	uint64_t buf_off;
	size_t buf_len;
};

/* Bytes available for the header: the file, capped at OTA_GGUF_MAX_HEADER. */
static uint64_t grd_limit(const struct grd *r)
{
	uint64_t lim = r->file_size < OTA_GGUF_MAX_HEADER ? r->file_size : OTA_GGUF_MAX_HEADER;
	if (r->mem && r->mem_len < lim)
		lim = r->mem_len;
	return lim;
}

static int grd_read(struct grd *r, void *out, size_t n)
{
	if (n > grd_limit(r) || r->pos > grd_limit(r) - n)
		return -FL_EFORMAT;
	if (r->mem) {
		memcpy(out, r->mem + r->pos, n);
		r->pos += n;
		return 0;
	}
	uint8_t *o = out;
	while (n > 0) {
		if (r->pos < r->buf_off || r->pos >= r->buf_off + r->buf_len) {
			ssize_t got;
			do {
				got = pread(r->fd, r->buf, GGUF_READ_BUF, (off_t)r->pos);
			} while (got < 0 && errno == EINTR);
			if (got < 0)
				return -errno;
			if (got == 0)
				return -FL_EFORMAT;
			r->buf_off = r->pos;
			r->buf_len = (size_t)got;
		}
		size_t off = (size_t)(r->pos - r->buf_off);
		size_t k = r->buf_len - off;
		if (k > n)
			k = n;
		memcpy(o, r->buf + off, k);
		o += k;
		n -= k;
		r->pos += k;
	}
	return 0;
}

static int grd_skip(struct grd *r, uint64_t n)
{
	if (n > grd_limit(r) || r->pos > grd_limit(r) - n)
		return -FL_EFORMAT;
	r->pos += n;
	return 0;
}

static int grd_u32(struct grd *r, uint32_t *v)
{
	uint8_t b[4];
	int e = grd_read(r, b, 4);
	if (e < 0)
		return e;
	*v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
	return 0;
}

static int grd_u64(struct grd *r, uint64_t *v)
{
	uint32_t lo, hi;
	int e = grd_u32(r, &lo);
	if (e < 0 || (e = grd_u32(r, &hi)) < 0)
		return e;
	*v = (uint64_t)hi << 32 | lo;
	return 0;
}

/* Read a string; copy at most OUT_LEN-1 bytes into OUT (if not NULL). */
static int grd_string(struct grd *r, char *out, size_t out_len, uint64_t *ret_len)
{
	uint64_t n;
	int e = grd_u64(r, &n);
	if (e < 0)
		return e;
	if (n > GGUF_MAX_STRING)
		return -FL_EFORMAT;
	if (ret_len)
		*ret_len = n;
	if (out && n < out_len) {
		e = grd_read(r, out, (size_t)n);
		out[n] = '\0';
		return e;
	}
	if (out && out_len)
		out[0] = '\0';
	return grd_skip(r, n);
}

static int gguf_type_size(uint32_t t, uint64_t *ret)
{
	switch (t) {
	case GGUF_T_U8: case GGUF_T_I8: case GGUF_T_BOOL: *ret = 1; return 0;
	case GGUF_T_U16: case GGUF_T_I16: *ret = 2; return 0;
	case GGUF_T_U32: case GGUF_T_I32: case GGUF_T_F32: *ret = 4; return 0;
	case GGUF_T_U64: case GGUF_T_I64: case GGUF_T_F64: *ret = 8; return 0;
	default: return -FL_EFORMAT;
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int gguf_cuts(struct grd *r, uint64_t **ret_cuts, size_t *ret_n)
{
	uint32_t magic, version;
	uint64_t n_tensors, n_kv;
	uint32_t alignment = GGUF_DEFAULT_ALIGNMENT;
	int e;

	if ((e = grd_u32(r, &magic)) < 0)
		return e;
	if (magic != 0x46554747u) /* "GGUF" little-endian */
		return -FL_EFORMAT;
	if ((e = grd_u32(r, &version)) < 0)
		return e;
	if (version != 2 && version != 3)
		return -FL_EFORMAT;
	if ((e = grd_u64(r, &n_tensors)) < 0 || (e = grd_u64(r, &n_kv)) < 0)
		return e;
	if (n_tensors > OTA_GGUF_MAX_TENSORS || n_kv > GGUF_MAX_KV)
		return -FL_EFORMAT;

	for (uint64_t i = 0; i < n_kv; i++) {
		char key[64];
		uint32_t type;
		if ((e = grd_string(r, key, sizeof(key), NULL)) < 0 || (e = grd_u32(r, &type)) < 0)
			return e;
		if (!strcmp(key, "general.alignment")) {
			if (type != GGUF_T_U32)
				return -FL_EFORMAT;
			if ((e = grd_u32(r, &alignment)) < 0)
				return e;
			if (alignment == 0 || (alignment & (alignment - 1)) || alignment > (1u << 20))
				return -FL_EFORMAT;
			continue;
		}
		if (type == GGUF_T_STRING) {
			if ((e = grd_string(r, NULL, 0, NULL)) < 0)
				return e;
		} else if (type == GGUF_T_ARRAY) {
			uint32_t et;
			uint64_t count, es;
			if ((e = grd_u32(r, &et)) < 0 || (e = grd_u64(r, &count)) < 0)
				return e;
			if (count > OTA_GGUF_MAX_HEADER)
				return -FL_EFORMAT;
			if (et == GGUF_T_STRING) {
				for (uint64_t j = 0; j < count; j++)
					if ((e = grd_string(r, NULL, 0, NULL)) < 0)
						return e;
			} else {
				if ((e = gguf_type_size(et, &es)) < 0) /* nested arrays: refuse */
					return e;
				if ((e = grd_skip(r, count * es)) < 0)
					return e;
			}
		} else {
			uint64_t es;
			if ((e = gguf_type_size(type, &es)) < 0 || (e = grd_skip(r, es)) < 0)
				return e;
		}
	}

	uint64_t *cuts = malloc((size_t)(n_tensors + 1) * sizeof(uint64_t));
	if (!cuts)
		return -ENOMEM;
	for (uint64_t i = 0; i < n_tensors; i++) {
		uint32_t n_dims, type;
		uint64_t off;
		if ((e = grd_string(r, NULL, 0, NULL)) < 0 || (e = grd_u32(r, &n_dims)) < 0)
			goto fail;
		if (n_dims == 0 || n_dims > GGUF_MAX_DIMS) {
			e = -FL_EFORMAT;
			goto fail;
		}
		if ((e = grd_skip(r, 8ull * n_dims)) < 0 || (e = grd_u32(r, &type)) < 0 ||
		    (e = grd_u64(r, &off)) < 0)
			goto fail;
		if (off % alignment) {
			e = -FL_EFORMAT;
			goto fail;
		}
		cuts[i + 1] = off; /* relative for now */
	}
	uint64_t data = r->pos + (alignment - r->pos % alignment) % alignment;
	if (data > r->file_size) {
		e = -FL_EFORMAT;
		goto fail;
	}
	cuts[0] = data;
	for (uint64_t i = 1; i <= n_tensors; i++) {
		if (cuts[i] >= r->file_size - data) {
			e = -FL_EFORMAT;
			goto fail;
		}
		cuts[i] += data;
	}
	size_t n = (size_t)n_tensors + 1;
	qsort(cuts, n, sizeof(uint64_t), cmp_u64);
	size_t w = 0;
	for (size_t i = 0; i < n; i++)
		if (w == 0 || cuts[i] != cuts[w - 1])
			cuts[w++] = cuts[i];
	*ret_cuts = cuts;
	*ret_n = w;
	return 0;
fail:
	free(cuts);
	return e;
}

int ota_gguf_tensor_cuts_fd(int fd, uint64_t file_size, uint64_t **ret_cuts, size_t *ret_n)
{
	if (fd < 0 || !ret_cuts || !ret_n)
		return -EINVAL;
	struct grd r = {.fd = fd, .file_size = file_size};
	r.buf = malloc(GGUF_READ_BUF);
	if (!r.buf)
		return -ENOMEM;
	int e = gguf_cuts(&r, ret_cuts, ret_n);
	free(r.buf);
	return e;
}

int ota_gguf_tensor_cuts_mem(const void *data, size_t len, uint64_t file_size,
			     uint64_t **ret_cuts, size_t *ret_n)
{
	if ((!data && len) || !ret_cuts || !ret_n)
		return -EINVAL;
	struct grd r = {.mem = data ? data : (const uint8_t *)"", .mem_len = len,
			.file_size = file_size};
	return gguf_cuts(&r, ret_cuts, ret_n);
}
