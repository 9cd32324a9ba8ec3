/* Staging a slot from verified chunks, with local reuse and resume
 * (ota/include/flotilla/stage.h, docs/install.md "Staging from chunks"). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/stage.h>
#include <flotilla/util.h>

/* Progress record, little-endian:
 *   0  magic "FLSTAGE1" (8)      8  u32 version = 1     12 u32 file count
 *   16 manifest SHA-256 (32)     48 u64 total chunk occurrences
 *   56 per file, in manifest order: ceil(count/8) bytes of "done" bitmap
 *   then SHA-256 of every byte before it (32). */
#define REC_MAGIC "FLSTAGE1"
#define REC_VERSION 1u
#define REC_HEADER_BYTES 56u
#define FINISH_BLOCK_BYTES (1024u * 1024u)
#define LOCAL_MAX_HITS 4u

enum { G_INFLIGHT = 1u, G_LOCALBAD = 2u };

/* One chunk occurrence; the array is sorted by (id, file, chunk) so the
 * occurrences of one id are adjacent and in file order. */
struct socc {
	const uint8_t *id; /* points into the file's chunk index */
	uint32_t file;
	uint32_t chunk;
};

struct sgroup {
	const uint8_t *id;
	uint32_t len;
	uint32_t first; /* index into occ */
	uint32_t n;
	uint32_t n_done;
	uint32_t flags; /* G_* */
};

struct sfile {
	const struct ota_manifest_file *mf;
	const struct ota_chunkidx *idx;
	uint32_t n;       /* chunks */
	uint32_t *group;  /* per chunk: index into groups */
	uint8_t *done;    /* bitmap, written AND (after a sync) durable */
	char *part;       /* relative path of the .part file */
	int fd;
	bool dirty;       /* written since the last fdatasync */
};

struct ssource {
	int fd;
	const struct ota_chunkidx *idx;
};

struct ota_stage {
	int dir_fd;
	char *progress_path;
	const struct ota_manifest *m;
	uint8_t mhash[FL_SHA256_LEN];
	struct sfile *files;
	size_t n_files;
	struct socc *occ;
	size_t n_occ;
	struct sgroup *groups;
	size_t n_groups;
	uint64_t bytes_total, bytes_done, chunks_done;
	uint64_t unsynced_bytes, unsynced_chunks;
	bool record_dirty;
	bool finished;
	uint8_t *buf; /* one chunk, the largest of the target */
	size_t buf_len;
	size_t n_open, evict_next;
	size_t cur_file, cur_chunk; /* next_missing cursor */
	struct ssource src[OTA_STAGE_MAX_SOURCES];
	size_t n_src;
	struct ota_chunkmap *map;
};

static inline bool bit_get(const uint8_t *b, size_t i) { return b[i / 8] >> (i % 8) & 1u; }
static inline void bit_set(uint8_t *b, size_t i) { b[i / 8] |= (uint8_t)(1u << (i % 8)); }

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
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* ---- chunk map ---------------------------------------------------------- */

struct cm_entry {
	uint64_t prefix; /* first 8 bytes of the id */
	uint32_t slot;   /* index into map->idx (order of adding) */
	uint32_t chunk;
};

struct ota_chunkmap {
	struct cm_entry *v;
	size_t n, cap;
	const struct ota_chunkidx **idx;
	uint32_t *source;
	size_t n_idx;
	bool sorted;
};

static uint64_t id_prefix(const uint8_t *id)
{
	uint64_t v;
	memcpy(&v, id, sizeof(v));
	return v;
}

int ota_chunkmap_new(struct ota_chunkmap **ret)
{
	if (!ret)
		return -EINVAL;
	struct ota_chunkmap *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->sorted = true;
	*ret = m;
	return 0;
}

void ota_chunkmap_free(struct ota_chunkmap *map)
{
	if (!map)
		return;
	free(map->v);
	free(map->idx);
	free(map->source);
	free(map);
}

int ota_chunkmap_add(struct ota_chunkmap *map, uint32_t source, const struct ota_chunkidx *idx)
{
	if (!map || !idx)
		return -EINVAL;
	size_t n = ota_chunkidx_count(idx);
	if (n > OTA_STAGE_MAX_CHUNKS || map->n > OTA_STAGE_MAX_CHUNKS - n)
		return -FL_ETOOBIG;
	const struct ota_chunkidx **ni = realloc(map->idx, (map->n_idx + 1) * sizeof(*ni));
	if (!ni)
		return -ENOMEM;
	map->idx = ni;
	uint32_t *ns = realloc(map->source, (map->n_idx + 1) * sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	map->source = ns;
	if (map->n + n > map->cap) {
		size_t cap = map->cap ? map->cap : 1024;
		while (cap < map->n + n)
			cap *= 2;
		struct cm_entry *v = realloc(map->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		map->v = v;
		map->cap = cap;
	}
	uint32_t slot = (uint32_t)map->n_idx;
	map->idx[slot] = idx;
	map->source[slot] = source;
	map->n_idx++;
	for (size_t i = 0; i < n; i++)
		map->v[map->n++] = (struct cm_entry){
			.prefix = id_prefix(ota_chunkidx_get(idx, i)->sha256),
			.slot = slot,
			.chunk = (uint32_t)i,
		};
	if (n)
		map->sorted = false;
	return 0;
}

/* Sorting by the prefix only (then slot, chunk) keeps the comparator cheap;
 * lookups compare the full id among equal prefixes. */
static int cm_cmp(const void *a, const void *b)
{
	const struct cm_entry *x = a, *y = b;
	if (x->prefix != y->prefix)
		return x->prefix < y->prefix ? -1 : 1;
	if (x->slot != y->slot)
		return x->slot < y->slot ? -1 : 1;
	return x->chunk < y->chunk ? -1 : x->chunk > y->chunk;
}

int ota_chunkmap_find(struct ota_chunkmap *map, const uint8_t id[FL_SHA256_LEN],
		      struct ota_chunkmap_hit *out, size_t max)
{
	if (!map || !id || (!out && max))
		return -EINVAL;
	if (!map->sorted) {
		qsort(map->v, map->n, sizeof(*map->v), cm_cmp);
		map->sorted = true;
	}
	uint64_t key = id_prefix(id);
	size_t lo = 0, hi = map->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (map->v[mid].prefix < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	int found = 0;
	for (size_t i = lo; i < map->n && map->v[i].prefix == key; i++) {
		const struct cm_entry *e = &map->v[i];
		const struct ota_chunk *c = ota_chunkidx_get(map->idx[e->slot], e->chunk);
		if (memcmp(c->sha256, id, FL_SHA256_LEN))
			continue;
		if ((size_t)found < max)
			out[found] = (struct ota_chunkmap_hit){
				.source = map->source[e->slot], .len = c->len, .offset = c->offset};
		if (found < INT32_MAX)
			found++;
	}
	return found;
}

/* ---- paths inside the slot ---------------------------------------------- */

/* Open the directory holding REL (relative to DIR_FD) walking each component
 * without following symlinks, creating missing ones with CREATE. *RET_BASE
 * points into REL. */
static int open_parent(int dir_fd, const char *rel, bool create, int *ret_fd,
		       const char **ret_base)
{
	int fd = fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	const char *p = rel;
	for (;;) {
		const char *s = strchr(p, '/');
		if (!s)
			break;
		char comp[OTA_MANIFEST_MAX_PATH + 1];
		size_t cl = (size_t)(s - p);
		if (cl == 0 || cl > OTA_MANIFEST_MAX_PATH) {
			close(fd);
			return -FL_EPATH;
		}
		memcpy(comp, p, cl);
		comp[cl] = '\0';
		int nfd = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0 && errno == ENOENT && create) {
			if (mkdirat(fd, comp, 0755) < 0 && errno != EEXIST) {
				int e = -errno;
				close(fd);
				return e;
			}
			nfd = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		}
		int e = -errno;
		close(fd);
		if (nfd < 0)
			return e == -ELOOP || e == -ENOTDIR ? -FL_EPATH : e;
		fd = nfd;
		p = s + 1;
	}
	*ret_fd = fd;
	*ret_base = p;
	return 0;
}

static int open_part(struct ota_stage *st, struct sfile *f, int extra_flags)
{
	int dfd;
	const char *base;
	int r = open_parent(st->dir_fd, f->part, (extra_flags & O_CREAT) != 0, &dfd, &base);
	if (r < 0)
		return r;
	int fd = openat(dfd, base, O_RDWR | O_NOFOLLOW | O_CLOEXEC | extra_flags, 0644);
	int e = -errno;
	close(dfd);
	if (fd < 0)
		return e == -ELOOP ? -FL_EPATH : e;
	return fd;
}

/* The .part file's descriptor, opening it (and closing another after
 * syncing it when too many are open). */
static int get_fd(struct ota_stage *st, struct sfile *f)
{
	if (f->fd >= 0)
		return f->fd;
	if (st->n_open >= OTA_STAGE_MAX_OPEN_FILES) {
		for (size_t k = 0; k < st->n_files; k++) {
			struct sfile *v = &st->files[(st->evict_next + k) % st->n_files];
			if (v->fd < 0 || v == f)
				continue;
			/* Data before the record: a closed file must be durable. */
			if (v->dirty && fdatasync(v->fd) < 0)
				return -errno;
			v->dirty = false;
			close(v->fd);
			v->fd = -1;
			st->n_open--;
			st->evict_next = (size_t)(v - st->files) + 1;
			break;
		}
	}
	int fd = open_part(st, f, 0);
	if (fd < 0)
		return fd;
	f->fd = fd;
	st->n_open++;
	return fd;
}

static void close_file(struct ota_stage *st, struct sfile *f)
{
	if (f->fd >= 0) {
		close(f->fd);
		f->fd = -1;
		st->n_open--;
	}
}

/* ---- building the stage ------------------------------------------------- */

/* SHA-256 of the index's canonical encoding (chunkidx.h), streamed. */
static int index_hash(const struct ota_chunkidx *idx, uint8_t out[FL_SHA256_LEN])
{
	struct fl_sha256 *h = fl_sha256_new();
	if (!h)
		return -ENOMEM;
	uint8_t hd[OTA_CIDX_HEADER_BYTES] = {0};
	struct ota_chunk_params p;
	ota_chunkidx_params(idx, &p);
	memcpy(hd, "FLCIDX", 6);
	hd[6] = OTA_CIDX_VERSION & 0xff;
	hd[7] = OTA_CIDX_VERSION >> 8;
	put32(hd + 8, ota_chunkidx_flags(idx));
	put32(hd + 12, p.min_bytes);
	put32(hd + 16, p.avg_bytes);
	put32(hd + 20, p.max_bytes);
	put64(hd + 24, ota_chunkidx_file_size(idx));
	put64(hd + 32, ota_chunkidx_count(idx));
	memcpy(hd + 40, ota_chunkidx_file_sha256(idx), FL_SHA256_LEN);
	fl_sha256_update(h, hd, sizeof(hd));
	size_t n = ota_chunkidx_count(idx);
	for (size_t i = 0; i < n; i++) {
		const struct ota_chunk *c = ota_chunkidx_get(idx, i);
		uint8_t e[OTA_CIDX_ENTRY_BYTES];
		put64(e, c->offset);
		put32(e + 8, c->len);
		put32(e + 12, c->flags);
		memcpy(e + 16, c->sha256, FL_SHA256_LEN);
		fl_sha256_update(h, e, sizeof(e));
	}
	fl_sha256_final(h, out);
	fl_sha256_free(h);
	return 0;
}

static int occ_cmp(const void *a, const void *b)
{
	const struct socc *x = a, *y = b;
	int c = memcmp(x->id, y->id, FL_SHA256_LEN);
	if (c)
		return c;
	if (x->file != y->file)
		return x->file < y->file ? -1 : 1;
	return x->chunk < y->chunk ? -1 : x->chunk > y->chunk;
}

static int check_index(const struct ota_manifest_file *mf, const struct ota_chunkidx *idx,
		       size_t *ret_max_len)
{
	if (ota_chunkidx_file_size(idx) != mf->size)
		return -FL_ESIZE;
	if (memcmp(ota_chunkidx_file_sha256(idx), mf->sha256, FL_SHA256_LEN))
		return -FL_EHASH;
	uint8_t h[FL_SHA256_LEN];
	int r = index_hash(idx, h);
	if (r < 0)
		return r;
	if (memcmp(h, mf->chunk_index_sha256, FL_SHA256_LEN))
		return -FL_EHASH;
	/* The index is signed (via its hash), still: its layout must be sane
	 * before lengths size buffers and offsets address writes. */
	size_t n = ota_chunkidx_count(idx);
	if (n > OTA_CIDX_MAX_CHUNKS)
		return -FL_ETOOBIG;
	uint64_t off = 0;
	size_t max_len = 0;
	for (size_t i = 0; i < n; i++) {
		const struct ota_chunk *c = ota_chunkidx_get(idx, i);
		if (c->offset != off || c->len == 0 || c->len > OTA_CHUNK_MAX_HIGHEST)
			return -FL_EFORMAT;
		off += c->len;
		if (c->len > max_len)
			max_len = c->len;
	}
	if (off != mf->size)
		return -FL_EFORMAT;
	*ret_max_len = max_len;
	return 0;
}

static int build(struct ota_stage *st, const struct ota_chunkidx *const *idx)
{
	const struct ota_manifest *m = st->m;
	size_t total = 0, max_len = 0;
	for (size_t i = 0; i < m->n_files; i++) {
		if (!idx[i])
			return -EINVAL;
		size_t ml;
		int r = check_index(&m->files[i], idx[i], &ml);
		if (r < 0)
			return r;
		if (ml > max_len)
			max_len = ml;
		size_t n = ota_chunkidx_count(idx[i]);
		if (n > OTA_STAGE_MAX_CHUNKS - total)
			return -FL_ETOOBIG;
		total += n;
		_cleanup_free_ char *part = fl_asprintf("%s%s", m->files[i].path, OTA_STAGE_PART_SUFFIX);
		if (!part)
			return -ENOMEM;
		/* "x" and "x.part" in one manifest would collide at finish. */
		if (ota_manifest_find_file(m, part))
			return -FL_EPATH;
	}
	st->files = calloc(m->n_files ? m->n_files : 1, sizeof(*st->files));
	st->occ = calloc(total ? total : 1, sizeof(*st->occ));
	if (!st->files || !st->occ)
		return -ENOMEM;
	st->n_files = m->n_files;
	for (size_t i = 0; i < m->n_files; i++) {
		struct sfile *f = &st->files[i];
		f->fd = -1;
		f->mf = &m->files[i];
		f->idx = idx[i];
		f->n = (uint32_t)ota_chunkidx_count(idx[i]);
		f->group = calloc(f->n ? f->n : 1, sizeof(*f->group));
		f->done = calloc(f->n / 8 + 1, 1);
		f->part = fl_asprintf("%s%s", f->mf->path, OTA_STAGE_PART_SUFFIX);
		if (!f->group || !f->done || !f->part)
			return -ENOMEM;
		for (uint32_t c = 0; c < f->n; c++) {
			const struct ota_chunk *ch = ota_chunkidx_get(idx[i], c);
			st->occ[st->n_occ++] = (struct socc){.id = ch->sha256, .file = (uint32_t)i,
							     .chunk = c};
			st->bytes_total += ch->len;
		}
	}
	qsort(st->occ, st->n_occ, sizeof(*st->occ), occ_cmp);
	st->groups = calloc(st->n_occ ? st->n_occ : 1, sizeof(*st->groups));
	if (!st->groups)
		return -ENOMEM;
	for (size_t k = 0; k < st->n_occ; k++) {
		const struct socc *o = &st->occ[k];
		uint32_t len = ota_chunkidx_get(st->files[o->file].idx, o->chunk)->len;
		struct sgroup *g = st->n_groups ? &st->groups[st->n_groups - 1] : NULL;
		if (!g || memcmp(g->id, o->id, FL_SHA256_LEN)) {
			g = &st->groups[st->n_groups++];
			*g = (struct sgroup){.id = o->id, .len = len, .first = (uint32_t)k};
		} else if (g->len != len) {
			return -FL_EFORMAT; /* one id, two lengths */
		}
		g->n++;
		st->files[o->file].group[o->chunk] = (uint32_t)(st->n_groups - 1);
	}
	st->buf_len = max_len;
	st->buf = malloc(max_len ? max_len : 1);
	if (!st->buf)
		return -ENOMEM;
	return 0;
}

static size_t record_len(const struct ota_stage *st)
{
	size_t len = REC_HEADER_BYTES + FL_SHA256_LEN;
	for (size_t i = 0; i < st->n_files; i++)
		len += (st->files[i].n + 7u) / 8u;
	return len;
}

/* Read the progress record. Returns 1 with *RET (caller frees) when it is a
 * well-formed record of this manifest, 0 when absent or not usable. */
static int record_read(const struct ota_stage *st, uint8_t **ret)
{
	size_t want = record_len(st);
	char *data = NULL;
	size_t len = 0;
	int r = fl_read_file(st->progress_path, want, &data, &len);
	if (r == -ENOENT || r == -FL_ETOOBIG)
		return 0;
	if (r < 0)
		return r;
	uint8_t *b = (uint8_t *)data;
	uint8_t h[FL_SHA256_LEN];
	if (len == want)
		fl_sha256(b, len - FL_SHA256_LEN, h);
	if (len != want || memcmp(b, REC_MAGIC, 8) || get32(b + 8) != REC_VERSION ||
	    get32(b + 12) != st->n_files || memcmp(b + 16, st->mhash, FL_SHA256_LEN) ||
	    get64(b + 48) != st->n_occ || memcmp(h, b + len - FL_SHA256_LEN, FL_SHA256_LEN)) {
		free(data);
		return 0;
	}
	*ret = b;
	return 1;
}

static void mark_done(struct ota_stage *st, struct sfile *f, uint32_t c)
{
	bit_set(f->done, c);
	struct sgroup *g = &st->groups[f->group[c]];
	g->n_done++;
	st->bytes_done += g->len;
	st->chunks_done++;
}

/* Keep the claimed chunks of file F whose bytes in the .part hash to their id. */
static int resume_file(struct ota_stage *st, struct sfile *f, const uint8_t *claimed)
{
	for (uint32_t c = 0; c < f->n; c++) {
		if (!bit_get(claimed, c))
			continue;
		const struct ota_chunk *ch = ota_chunkidx_get(f->idx, c);
		int fd = get_fd(st, f);
		if (fd < 0)
			return fd;
		if (pread_all(fd, st->buf, ch->len, ch->offset) < 0)
			continue; /* short or unreadable: fetch it again */
		uint8_t h[FL_SHA256_LEN];
		fl_sha256(st->buf, ch->len, h);
		if (memcmp(h, ch->sha256, FL_SHA256_LEN))
			continue;
		mark_done(st, f, c);
	}
	return 0;
}

/* -EEXIST when F's final name is already in the slot. */
static int check_final(struct ota_stage *st, struct sfile *f)
{
	int dfd;
	const char *base;
	int r = open_parent(st->dir_fd, f->mf->path, false, &dfd, &base);
	if (r == -ENOENT)
		return 0; /* its directory does not exist yet */
	if (r < 0)
		return r;
	struct stat sb;
	r = fstatat(dfd, base, &sb, AT_SYMLINK_NOFOLLOW) == 0 ? -EEXIST
	    : errno == ENOENT				     ? 0
							     : -errno;
	close(dfd);
	return r;
}

static int prepare_file(struct ota_stage *st, struct sfile *f, bool resume)
{
	struct stat sb;
	int r;
	_cleanup_close_ int fd = open_part(st, f, O_CREAT | (resume ? 0 : O_TRUNC));
	if (fd < 0)
		return fd;
	if (fstat(fd, &sb) < 0)
		return -errno;
	if (!S_ISREG(sb.st_mode))
		return -FL_EPATH;
	if (f->mf->size > (uint64_t)INT64_MAX)
		return -FL_ERANGE;
	if ((uint64_t)sb.st_size != f->mf->size && ftruncate(fd, (off_t)f->mf->size) < 0)
		return -errno;
	if (f->mf->size > 0) {
		r = posix_fallocate(fd, 0, (off_t)f->mf->size);
		if (r == ENOSPC)
			return -FL_ENOSPACE;
		if (r != 0 && r != EOPNOTSUPP && r != EINVAL)
			return -r;
	}
	return 0;
}

int ota_stage_open(const char *slot_dir, const struct ota_manifest *m,
		   const struct ota_chunkidx *const *idx, const char *progress_path,
		   struct ota_stage **ret)
{
	if (!slot_dir || !m || (!idx && m->n_files) || !progress_path || !ret)
		return -EINVAL;
	if (m->n_files > OTA_MANIFEST_MAX_FILES)
		return -FL_ETOOBIG;
	struct ota_stage *st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->dir_fd = -1;
	st->m = m;
	int r;
	st->progress_path = strdup(progress_path);
	if (!st->progress_path) {
		r = -ENOMEM;
		goto fail;
	}
	st->dir_fd = open(slot_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (st->dir_fd < 0) {
		r = -errno;
		goto fail;
	}
	r = ota_chunkmap_new(&st->map);
	if (r < 0)
		goto fail;
	{
		_cleanup_free_ char *json = NULL;
		size_t jlen = 0;
		r = ota_manifest_to_json(m, &json, &jlen);
		if (r < 0)
			goto fail;
		fl_sha256(json, jlen, st->mhash);
	}
	r = build(st, idx);
	if (r < 0)
		goto fail;
	{
		_cleanup_free_ uint8_t *rec = NULL;
		r = record_read(st, &rec);
		if (r < 0)
			goto fail;
		bool resume = r == 1;
		const uint8_t *bits = rec ? rec + REC_HEADER_BYTES : NULL;
		/* Refuse before creating anything. */
		for (size_t i = 0; i < st->n_files; i++) {
			r = check_final(st, &st->files[i]);
			if (r < 0)
				goto fail;
		}
		for (size_t i = 0; i < st->n_files; i++) {
			struct sfile *f = &st->files[i];
			r = prepare_file(st, f, resume);
			if (r < 0)
				goto fail;
			if (resume) {
				r = resume_file(st, f, bits);
				if (r < 0)
					goto fail;
				bits += (f->n + 7u) / 8u;
			}
		}
	}
	/* The first sync writes a record of exactly what was verified. */
	st->record_dirty = true;
	*ret = st;
	return 0;
fail:
	ota_stage_free(st);
	return r;
}

/* ---- sources and writing ------------------------------------------------ */

int ota_stage_add_source(struct ota_stage *st, const char *path, const struct ota_chunkidx *idx)
{
	if (!st || !path || !idx)
		return -EINVAL;
	if (st->n_src >= OTA_STAGE_MAX_SOURCES)
		return -FL_ETOOBIG;
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat sb;
	if (fstat(fd, &sb) < 0)
		return -errno;
	if (!S_ISREG(sb.st_mode))
		return -EINVAL;
	if ((uint64_t)sb.st_size != ota_chunkidx_file_size(idx))
		return -FL_ESIZE;
	int r = ota_chunkmap_add(st->map, (uint32_t)st->n_src, idx);
	if (r < 0)
		return r;
	st->src[st->n_src++] = (struct ssource){.fd = fl_steal_fd(&fd), .idx = idx};
	for (size_t g = 0; g < st->n_groups; g++)
		st->groups[g].flags &= ~(uint32_t)G_LOCALBAD;
	return 0;
}

/* Write verified DATA of group G at each occurrence still missing. Returns
 * the number written. */
static int write_group(struct ota_stage *st, struct sgroup *g, const void *data)
{
	int written = 0;
	for (uint32_t k = g->first; k < g->first + g->n; k++) {
		struct sfile *f = &st->files[st->occ[k].file];
		uint32_t c = st->occ[k].chunk;
		if (bit_get(f->done, c))
			continue;
		int fd = get_fd(st, f);
		if (fd < 0)
			return fd;
		int r = pwrite_all(fd, data, g->len, ota_chunkidx_get(f->idx, c)->offset);
		if (r < 0)
			return r;
		f->dirty = true;
		mark_done(st, f, c);
		st->unsynced_bytes += g->len;
		st->unsynced_chunks++;
		st->record_dirty = true;
		written++;
		r = FL_FAILPOINT("stage.after_pwrite");
		if (r < 0)
			return r;
	}
	g->flags &= ~(uint32_t)G_INFLIGHT;
	return written;
}

static int maybe_sync(struct ota_stage *st)
{
	if (st->unsynced_bytes >= OTA_STAGE_SYNC_BYTES ||
	    st->unsynced_chunks >= OTA_STAGE_SYNC_CHUNKS)
		return ota_stage_sync(st);
	return 0;
}

int ota_stage_sync(struct ota_stage *st)
{
	if (!st)
		return -EINVAL;
	if (!st->record_dirty)
		return 0;
	for (size_t i = 0; i < st->n_files; i++) {
		struct sfile *f = &st->files[i];
		if (f->dirty && f->fd >= 0 && fdatasync(f->fd) < 0)
			return -errno;
		f->dirty = false;
	}
	int r = FL_FAILPOINT("stage.sync.after_data");
	if (r < 0)
		return r;
	size_t len = record_len(st);
	_cleanup_free_ uint8_t *rec = calloc(1, len);
	if (!rec)
		return -ENOMEM;
	memcpy(rec, REC_MAGIC, 8);
	put32(rec + 8, REC_VERSION);
	put32(rec + 12, (uint32_t)st->n_files);
	memcpy(rec + 16, st->mhash, FL_SHA256_LEN);
	put64(rec + 48, st->n_occ);
	uint8_t *p = rec + REC_HEADER_BYTES;
	for (size_t i = 0; i < st->n_files; i++) {
		size_t nb = (st->files[i].n + 7u) / 8u;
		memcpy(p, st->files[i].done, nb);
		p += nb;
	}
	fl_sha256(rec, len - FL_SHA256_LEN, p);
	r = fl_write_file_atomic(st->progress_path, rec, len, 0600);
	if (r < 0)
		return r;
	st->record_dirty = false;
	st->unsynced_bytes = 0;
	st->unsynced_chunks = 0;
	return FL_FAILPOINT("stage.sync.after_progress");
}

static struct sgroup *find_group(struct ota_stage *st, const uint8_t *id)
{
	size_t lo = 0, hi = st->n_groups;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = memcmp(st->groups[mid].id, id, FL_SHA256_LEN);
		if (c == 0)
			return &st->groups[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

int ota_stage_put_chunk(struct ota_stage *st, const uint8_t id[FL_SHA256_LEN], const void *data,
			size_t len)
{
	if (!st || !id || (!data && len))
		return -EINVAL;
	if (st->finished)
		return -FL_ESTATE;
	struct sgroup *g = find_group(st, id);
	if (!g)
		return -FL_EPROTO;
	if (len != g->len)
		return -FL_ESIZE;
	uint8_t h[FL_SHA256_LEN];
	fl_sha256(data, len, h);
	if (memcmp(h, id, FL_SHA256_LEN))
		return -FL_EHASH;
	if (g->n_done == g->n)
		return 0;
	int n = write_group(st, g, data);
	if (n < 0)
		return n;
	int r = maybe_sync(st);
	return r < 0 ? r : n;
}

int ota_stage_fill_local(struct ota_stage *st, uint64_t *ret_bytes)
{
	if (!st)
		return -EINVAL;
	uint64_t bytes = 0;
	for (size_t i = 0; i < st->n_files && st->n_src; i++) {
		struct sfile *f = &st->files[i];
		for (uint32_t c = 0; c < f->n; c++) {
			if (bit_get(f->done, c))
				continue;
			struct sgroup *g = &st->groups[f->group[c]];
			if (g->flags & G_LOCALBAD)
				continue;
			struct ota_chunkmap_hit hits[LOCAL_MAX_HITS];
			int nh = ota_chunkmap_find(st->map, g->id, hits, LOCAL_MAX_HITS);
			if (nh < 0)
				return nh;
			bool ok = false;
			for (int k = 0; k < nh && k < (int)LOCAL_MAX_HITS && !ok; k++) {
				if (hits[k].len != g->len)
					continue;
				if (pread_all(st->src[hits[k].source].fd, st->buf, g->len,
					      hits[k].offset) < 0)
					continue; /* unreadable source: not trusted */
				uint8_t h[FL_SHA256_LEN];
				fl_sha256(st->buf, g->len, h);
				ok = memcmp(h, g->id, FL_SHA256_LEN) == 0;
			}
			if (!ok) {
				g->flags |= G_LOCALBAD;
				continue;
			}
			int n = write_group(st, g, st->buf);
			if (n < 0)
				return n;
			bytes += (uint64_t)n * g->len;
			int r = maybe_sync(st);
			if (r < 0)
				return r;
		}
	}
	int r = ota_stage_sync(st);
	if (r < 0)
		return r;
	if (ret_bytes)
		*ret_bytes = bytes;
	return 0;
}

/* ---- network path ------------------------------------------------------- */

int ota_stage_next_missing(struct ota_stage *st, struct ota_stage_want *out, size_t max)
{
	if (!st || !out || max == 0)
		return -EINVAL;
	size_t n = 0;
	while (st->cur_file < st->n_files && n < max) {
		struct sfile *f = &st->files[st->cur_file];
		if (st->cur_chunk >= f->n) {
			st->cur_file++;
			st->cur_chunk = 0;
			continue;
		}
		uint32_t c = (uint32_t)st->cur_chunk++;
		if (bit_get(f->done, c))
			continue;
		struct sgroup *g = &st->groups[f->group[c]];
		if (g->flags & G_INFLIGHT)
			continue;
		g->flags |= G_INFLIGHT;
		memcpy(out[n].id, g->id, FL_SHA256_LEN);
		out[n].len = g->len;
		n++;
	}
	return (int)n;
}

int ota_stage_release(struct ota_stage *st, const uint8_t id[FL_SHA256_LEN])
{
	if (!st || !id)
		return -EINVAL;
	struct sgroup *g = find_group(st, id);
	if (!g)
		return -FL_EPROTO;
	g->flags &= ~(uint32_t)G_INFLIGHT;
	/* Occurrences are in file order: move the cursor back to the first. */
	const struct socc *o = &st->occ[g->first];
	if (o->file < st->cur_file || (o->file == st->cur_file && o->chunk < st->cur_chunk)) {
		st->cur_file = o->file;
		st->cur_chunk = o->chunk;
	}
	return 0;
}

void ota_stage_reset_inflight(struct ota_stage *st)
{
	if (!st)
		return;
	for (size_t g = 0; g < st->n_groups; g++)
		st->groups[g].flags &= ~(uint32_t)G_INFLIGHT;
	st->cur_file = 0;
	st->cur_chunk = 0;
}

void ota_stage_progress(const struct ota_stage *st, uint64_t *ret_bytes_done,
			uint64_t *ret_bytes_total, uint64_t *ret_chunks_done,
			uint64_t *ret_chunks_total)
{
	if (!st)
		return;
	if (ret_bytes_done)
		*ret_bytes_done = st->bytes_done;
	if (ret_bytes_total)
		*ret_bytes_total = st->bytes_total;
	if (ret_chunks_done)
		*ret_chunks_done = st->chunks_done;
	if (ret_chunks_total)
		*ret_chunks_total = st->n_occ;
}

/* ---- finish, abort, free ------------------------------------------------ */

/* After a whole-file mismatch: read back every chunk of F marked done and
 * forget those that no longer match (changed on disk behind our back), so
 * they are fetched again. */
static int recheck_file(struct ota_stage *st, struct sfile *f)
{
	for (uint32_t c = 0; c < f->n; c++) {
		if (!bit_get(f->done, c))
			continue;
		const struct ota_chunk *ch = ota_chunkidx_get(f->idx, c);
		int fd = get_fd(st, f);
		if (fd < 0)
			return fd;
		uint8_t h[FL_SHA256_LEN];
		bool ok = pread_all(fd, st->buf, ch->len, ch->offset) == 0;
		if (ok) {
			fl_sha256(st->buf, ch->len, h);
			ok = memcmp(h, ch->sha256, FL_SHA256_LEN) == 0;
		}
		if (ok)
			continue;
		f->done[c / 8] &= (uint8_t)~(1u << (c % 8));
		struct sgroup *g = &st->groups[f->group[c]];
		g->n_done--;
		st->bytes_done -= g->len;
		st->chunks_done--;
		st->record_dirty = true;
	}
	st->cur_file = 0;
	st->cur_chunk = 0;
	return 0;
}

static int verify_part(struct ota_stage *st, struct sfile *f, uint8_t *blk)
{
	int fd = get_fd(st, f);
	if (fd < 0)
		return fd;
	if (fsync(fd) < 0)
		return -errno;
	f->dirty = false;
	struct stat sb;
	if (fstat(fd, &sb) < 0)
		return -errno;
	if ((uint64_t)sb.st_size != f->mf->size)
		return -FL_ESIZE;
	struct fl_sha256 *h = fl_sha256_new();
	if (!h)
		return -ENOMEM;
	uint64_t off = 0;
	int r = 0;
	while (off < f->mf->size) {
		size_t n = f->mf->size - off < FINISH_BLOCK_BYTES ? (size_t)(f->mf->size - off)
								  : FINISH_BLOCK_BYTES;
		r = pread_all(fd, blk, n, off);
		if (r < 0)
			break;
		fl_sha256_update(h, blk, n);
		off += n;
	}
	uint8_t out[FL_SHA256_LEN];
	fl_sha256_final(h, out);
	fl_sha256_free(h);
	if (r < 0) {
		close_file(st, f);
		return r;
	}
	if (memcmp(out, f->mf->sha256, FL_SHA256_LEN)) {
		r = recheck_file(st, f);
		close_file(st, f);
		return r < 0 ? r : -FL_EHASH;
	}
	close_file(st, f);
	return 0;
}

/* fsync every directory between the slot and REL's parent (new
 * subdirectories must be durable too); the slot itself is synced by the
 * caller. */
static int fsync_subdirs(int dir_fd, const char *rel)
{
	const char *s = strrchr(rel, '/');
	while (s) {
		size_t l = (size_t)(s - rel);
		char sub[OTA_MANIFEST_MAX_PATH + 2];
		if (l >= sizeof(sub) - 1)
			return -FL_EPATH;
		memcpy(sub, rel, l);
		sub[l] = '/';
		sub[l + 1] = '\0';
		int dfd;
		const char *base;
		int r = open_parent(dir_fd, sub, false, &dfd, &base);
		if (r < 0)
			return r;
		r = fsync(dfd) < 0 ? -errno : 0;
		close(dfd);
		if (r < 0)
			return r;
		s = l ? memrchr(rel, '/', l) : NULL;
	}
	return 0;
}

int ota_stage_finish(struct ota_stage *st)
{
	if (!st)
		return -EINVAL;
	if (st->finished)
		return -FL_ESTATE;
	if (st->chunks_done != st->n_occ)
		return -FL_EMISSING;
	/* Record the last batch: a crash from here on resumes with nothing to
	 * fetch (every chunk re-verified). */
	int r = ota_stage_sync(st);
	if (r < 0)
		return r;
	_cleanup_free_ uint8_t *blk = malloc(FINISH_BLOCK_BYTES);
	if (!blk)
		return -ENOMEM;
	for (size_t i = 0; i < st->n_files; i++) {
		r = verify_part(st, &st->files[i], blk);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < st->n_files; i++) {
		struct sfile *f = &st->files[i];
		r = FL_FAILPOINT("stage.finish.before_rename");
		if (r < 0)
			return r;
		int dfd;
		const char *base;
		r = open_parent(st->dir_fd, f->mf->path, false, &dfd, &base);
		if (r < 0)
			return r;
		const char *pbase = strrchr(f->part, '/');
		pbase = pbase ? pbase + 1 : f->part;
		r = renameat2(dfd, pbase, dfd, base, RENAME_NOREPLACE) < 0 ? -errno : 0;
		close(dfd);
		if (r < 0)
			return r;
	}
	st->finished = true; /* the .part files are gone */
	r = FL_FAILPOINT("stage.finish.after_rename");
	if (r < 0)
		return r;
	for (size_t i = 0; i < st->n_files; i++) {
		r = fsync_subdirs(st->dir_fd, st->files[i].mf->path);
		if (r < 0)
			return r;
	}
	if (fsync(st->dir_fd) < 0)
		return -errno;
	if (unlink(st->progress_path) < 0 && errno != ENOENT)
		return -errno;
	st->record_dirty = false;
	return fl_fsync_parent(st->progress_path);
}

void ota_stage_free(struct ota_stage *st)
{
	if (!st)
		return;
	for (size_t i = 0; i < st->n_files; i++) {
		close_file(st, &st->files[i]);
		free(st->files[i].group);
		free(st->files[i].done);
		free(st->files[i].part);
	}
	for (size_t i = 0; i < st->n_src; i++)
		close(st->src[i].fd);
	if (st->dir_fd >= 0)
		close(st->dir_fd);
	ota_chunkmap_free(st->map);
	free(st->files);
	free(st->occ);
	free(st->groups);
	free(st->buf);
	free(st->progress_path);
	free(st);
}

int ota_stage_abort(struct ota_stage *st)
{
	if (!st)
		return 0;
	int ret = 0;
	for (size_t i = 0; i < st->n_files; i++) {
		struct sfile *f = &st->files[i];
		close_file(st, f);
		int dfd;
		const char *base;
		if (open_parent(st->dir_fd, f->part, false, &dfd, &base) < 0)
			continue;
		if (unlinkat(dfd, base, 0) < 0 && errno != ENOENT && ret == 0)
			ret = -errno;
		close(dfd);
		/* Remove the subdirectories it needed, deepest first, when empty. */
		char sub[OTA_MANIFEST_MAX_PATH + 1];
		if (fl_strlcpy(sub, f->mf->path, sizeof(sub)) >= sizeof(sub))
			continue;
		char *s;
		while ((s = strrchr(sub, '/'))) {
			*s = '\0';
			if (unlinkat(st->dir_fd, sub, AT_REMOVEDIR) < 0)
				break;
		}
	}
	if (st->dir_fd >= 0 && fsync(st->dir_fd) < 0 && ret == 0)
		ret = -errno;
	if (unlink(st->progress_path) < 0 && errno != ENOENT && ret == 0)
		ret = -errno;
	ota_stage_free(st);
	return ret;
}
