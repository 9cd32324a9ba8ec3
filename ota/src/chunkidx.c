/* Chunk index: in-memory list, binary encoding, strict validation, and the
 * file chunker driver (ota_chunk_file). */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <flotilla/chunkidx.h>
#include <flotilla/cleanup.h>
#include <flotilla/error.h>

#define CIDX_MAGIC "FLCIDX"
#define CIDX_KNOWN_FLAGS OTA_CIDX_F_GGUF
#define CHUNK_KNOWN_FLAGS OTA_CHUNK_F_FORCED
#define READ_BLOCK (4u * 1024 * 1024)

struct ota_chunkidx {
	struct ota_chunk_params p;
	uint32_t flags;
	uint64_t file_size;
	uint8_t file_sha256[FL_SHA256_LEN];
	struct ota_chunk *v;
	size_t n, cap;
	bool sealed;
};

int ota_chunkidx_new(const struct ota_chunk_params *p, uint32_t flags, struct ota_chunkidx **ret)
{
	struct ota_chunk_params def;
	if (!p) {
		ota_chunk_params_default(&def);
		p = &def;
	}
	if (!ret || ota_chunk_params_check(p) < 0 || (flags & ~CIDX_KNOWN_FLAGS))
		return -EINVAL;
	struct ota_chunkidx *idx = calloc(1, sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	idx->p = *p;
	idx->flags = flags;
	*ret = idx;
	return 0;
}

void ota_chunkidx_free(struct ota_chunkidx *idx)
{
	if (!idx)
		return;
	free(idx->v);
	free(idx);
}

int ota_chunkidx_add(struct ota_chunkidx *idx, const struct ota_chunk *c)
{
	if (!idx || !c || idx->sealed)
		return -EINVAL;
	if (idx->n >= OTA_CIDX_MAX_CHUNKS)
		return -FL_ETOOBIG;
	if (idx->n == idx->cap) {
		size_t cap = idx->cap ? idx->cap * 2 : 64;
		if (cap > OTA_CIDX_MAX_CHUNKS)
			cap = OTA_CIDX_MAX_CHUNKS;
		struct ota_chunk *v = realloc(idx->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		idx->v = v;
		idx->cap = cap;
	}
	idx->v[idx->n++] = *c;
	return 0;
}

static int validate(const struct ota_chunkidx *idx)
{
	if (ota_chunk_params_check(&idx->p) < 0 || (idx->flags & ~CIDX_KNOWN_FLAGS))
		return -FL_EFORMAT;
	if (idx->n > OTA_CIDX_MAX_CHUNKS)
		return -FL_ETOOBIG;
	if ((idx->n == 0) != (idx->file_size == 0))
		return -FL_EFORMAT;
	uint64_t off = 0;
	for (size_t i = 0; i < idx->n; i++) {
		const struct ota_chunk *c = &idx->v[i];
		bool last = i + 1 == idx->n;
		if (c->offset != off || (c->flags & ~CHUNK_KNOWN_FLAGS))
			return -FL_EFORMAT;
		if (c->len == 0 || c->len > idx->p.max_bytes)
			return -FL_EFORMAT;
		if (c->len < idx->p.min_bytes && !last && !(c->flags & OTA_CHUNK_F_FORCED))
			return -FL_EFORMAT;
		if (c->len > idx->file_size - off) /* also catches overflow */
			return -FL_EFORMAT;
		off += c->len;
	}
	if (off != idx->file_size)
		return -FL_EFORMAT;
	return 0;
}

int ota_chunkidx_seal(struct ota_chunkidx *idx, uint64_t file_size,
		      const uint8_t sha256[FL_SHA256_LEN])
{
	if (!idx || !sha256 || idx->sealed)
		return -EINVAL;
	idx->file_size = file_size;
	memcpy(idx->file_sha256, sha256, FL_SHA256_LEN);
	int r = validate(idx);
	if (r < 0)
		return r;
	idx->sealed = true;
	return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p + 4) << 32 | get32(p);
}

int ota_chunkidx_encode(const struct ota_chunkidx *idx, uint8_t **ret_buf, size_t *ret_len)
{
	if (!idx || !ret_buf || !ret_len || !idx->sealed)
		return -EINVAL;
	size_t len = OTA_CIDX_HEADER_BYTES + idx->n * OTA_CIDX_ENTRY_BYTES;
	uint8_t *b = calloc(1, len);
	if (!b)
		return -ENOMEM;
	memcpy(b, CIDX_MAGIC, 6);
	b[6] = OTA_CIDX_VERSION & 0xff;
	b[7] = OTA_CIDX_VERSION >> 8;
	put32(b + 8, idx->flags);
	put32(b + 12, idx->p.min_bytes);
	put32(b + 16, idx->p.avg_bytes);
	put32(b + 20, idx->p.max_bytes);
	put64(b + 24, idx->file_size);
	put64(b + 32, idx->n);
	memcpy(b + 40, idx->file_sha256, FL_SHA256_LEN);
	for (size_t i = 0; i < idx->n; i++) {
		uint8_t *e = b + OTA_CIDX_HEADER_BYTES + i * OTA_CIDX_ENTRY_BYTES;
		put64(e, idx->v[i].offset);
		put32(e + 8, idx->v[i].len);
		put32(e + 12, idx->v[i].flags);
		memcpy(e + 16, idx->v[i].sha256, FL_SHA256_LEN);
	}
	*ret_buf = b;
	*ret_len = len;
	return 0;
}

int ota_chunkidx_decode(const void *buf, size_t len, struct ota_chunkidx **ret)
{
	const uint8_t *b = buf;
	if ((!b && len) || !ret)
		return -EINVAL;
	if (len > OTA_CIDX_MAX_BYTES)
		return -FL_ETOOBIG;
	if (len < OTA_CIDX_HEADER_BYTES || memcmp(b, CIDX_MAGIC, 6))
		return -FL_EFORMAT;
	if ((uint16_t)(b[6] | b[7] << 8) != OTA_CIDX_VERSION)
		return -FL_EUNSUPPORTED;
	for (size_t i = 72; i < OTA_CIDX_HEADER_BYTES; i++)
		if (b[i])
			return -FL_EFORMAT;
	uint64_t count = get64(b + 32);
	if (count > OTA_CIDX_MAX_CHUNKS)
		return -FL_ETOOBIG;
	if (len != OTA_CIDX_HEADER_BYTES + count * OTA_CIDX_ENTRY_BYTES)
		return -FL_EFORMAT;
	struct ota_chunk_params p = {get32(b + 12), get32(b + 16), get32(b + 20)};
	if (ota_chunk_params_check(&p) < 0)
		return -FL_EFORMAT;
	uint32_t flags = get32(b + 8);
	if (flags & ~CIDX_KNOWN_FLAGS)
		return -FL_EFORMAT;

	struct ota_chunkidx *idx = calloc(1, sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	idx->p = p;
	idx->flags = flags;
	idx->file_size = get64(b + 24);
	memcpy(idx->file_sha256, b + 40, FL_SHA256_LEN);
	if (count) {
		idx->v = malloc((size_t)count * sizeof(*idx->v));
		if (!idx->v) {
			free(idx);
			return -ENOMEM;
		}
	}
	idx->n = idx->cap = (size_t)count;
	for (size_t i = 0; i < idx->n; i++) {
		const uint8_t *e = b + OTA_CIDX_HEADER_BYTES + i * OTA_CIDX_ENTRY_BYTES;
		idx->v[i].offset = get64(e);
		idx->v[i].len = get32(e + 8);
		idx->v[i].flags = get32(e + 12);
		memcpy(idx->v[i].sha256, e + 16, FL_SHA256_LEN);
	}
	int r = validate(idx);
	if (r < 0) {
		ota_chunkidx_free(idx);
		return r;
	}
	idx->sealed = true;
	*ret = idx;
	return 0;
}

size_t ota_chunkidx_count(const struct ota_chunkidx *idx)
{
	return idx ? idx->n : 0;
}

const struct ota_chunk *ota_chunkidx_get(const struct ota_chunkidx *idx, size_t i)
{
	return idx && i < idx->n ? &idx->v[i] : NULL;
}

uint64_t ota_chunkidx_file_size(const struct ota_chunkidx *idx)
{
	return idx->file_size;
}

const uint8_t *ota_chunkidx_file_sha256(const struct ota_chunkidx *idx)
{
	return idx->file_sha256;
}

uint32_t ota_chunkidx_flags(const struct ota_chunkidx *idx)
{
	return idx->flags;
}

void ota_chunkidx_params(const struct ota_chunkidx *idx, struct ota_chunk_params *ret)
{
	*ret = idx->p;
}

static int add_cb(void *ud, const struct ota_chunk *c)
{
	return ota_chunkidx_add(ud, c);
}

FL_DEFINE_CLEANUP(struct ota_chunker, ota_chunker_free)
FL_DEFINE_CLEANUP(struct ota_chunkidx, ota_chunkidx_free)
FL_DEFINE_CLEANUP(struct fl_sha256, fl_sha256_free)

int ota_chunk_fd(int fd, const struct ota_chunk_params *p, unsigned opts,
		 struct ota_chunkidx **ret)
{
	struct stat st;
	if (fd < 0 || !ret)
		return -EINVAL;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	uint64_t size = (uint64_t)st.st_size;

	_cleanup_free_ uint64_t *cuts = NULL;
	size_t ncuts = 0;
	uint32_t iflags = 0;
	if ((opts & OTA_CHUNK_OPT_GGUF) && ota_gguf_tensor_cuts_fd(fd, size, &cuts, &ncuts) == 0)
		iflags |= OTA_CIDX_F_GGUF;

	_cleanup_(ota_chunker_freep) struct ota_chunker *ck = NULL;
	_cleanup_(ota_chunkidx_freep) struct ota_chunkidx *idx = NULL;
	_cleanup_(fl_sha256_freep) struct fl_sha256 *fh = fl_sha256_new();
	_cleanup_free_ uint8_t *buf = malloc(READ_BLOCK);
	if (!fh || !buf)
		return -ENOMEM;
	int r = ota_chunker_new(p, &ck);
	if (r < 0 || (r = ota_chunkidx_new(p, iflags, &idx)) < 0)
		return r;
	if (ncuts && (r = ota_chunker_set_cuts(ck, cuts, ncuts)) < 0)
		return r;

	uint64_t off = 0;
	for (;;) {
		ssize_t got = pread(fd, buf, READ_BLOCK, (off_t)off);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (got == 0)
			break;
		off += (uint64_t)got;
		fl_sha256_update(fh, buf, (size_t)got);
		r = ota_chunker_feed(ck, buf, (size_t)got, add_cb, idx);
		if (r < 0)
			return r;
	}
	if (off != size) /* file changed under us */
		return -EIO;
	r = ota_chunker_finish(ck, add_cb, idx);
	if (r < 0)
		return r;
	uint8_t sha[FL_SHA256_LEN];
	fl_sha256_final(fh, sha);
	r = ota_chunkidx_seal(idx, size, sha);
	if (r < 0)
		return r;
	*ret = fl_steal_ptr(idx);
	return 0;
}

int ota_chunk_file(const char *path, const struct ota_chunk_params *p, unsigned opts,
		   struct ota_chunkidx **ret)
{
	if (!path || !ret)
		return -EINVAL;
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	return ota_chunk_fd(fd, p, opts, ret);
}
