/* Bundle builder and safe reader (libarchive). See bundle.h and
 * docs/bundle-format.md. This file is the only one in ota/ touching
 * libarchive. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <flotilla/bundle.h>
#include <flotilla/cleanup.h>
#include <flotilla/dsse.h>
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/util.h>

#include "archive_dl.h" /* libarchive, loaded on first use */

#define IO_BLOCK (1u << 20)

FL_DEFINE_CLEANUP(struct ota_chunkidx, ota_chunkidx_free)
FL_DEFINE_CLEANUP(struct ota_dsse, ota_dsse_free)
FL_DEFINE_CLEANUP(struct fl_sha256, fl_sha256_free)

struct ota_bundle {
	char *path;      /* file source, or NULL */
	const void *mem; /* memory source */
	size_t mem_len;
	char *envelope;
	size_t envelope_len;
	struct ota_manifest *m;
	struct ota_chunkidx **idx; /* one per manifest file */
	size_t max_entries;
	size_t max_manifest_bytes;
	uint64_t max_total_bytes;
};

/* ---------------------------------------------------------------- helpers */

int ota_bundle_verify_none(void *userdata, const char *envelope, size_t len,
			   struct ota_manifest **ret)
{
	(void)userdata;
	_cleanup_(ota_dsse_freep) struct ota_dsse *env = NULL;
	int r = ota_dsse_parse(envelope, len, &env);
	if (r < 0)
		return r;
	if (strcmp(env->payload_type, OTA_PAYLOAD_TYPE_MANIFEST))
		return -FL_EPAYLOADTYPE;
	return ota_manifest_parse((const char *)env->payload, env->payload_len, ret);
}

/* A tar entry name must be relative with no empty, "." or ".." component. */
static bool name_safe(const char *n)
{
	if (!n || !*n || n[0] == '/')
		return false;
	const char *p = n;
	while (*p) {
		const char *s = strchr(p, '/');
		size_t len = s ? (size_t)(s - p) : strlen(p);
		if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
			return false;
		if (!s)
			break;
		p = s + 1;
	}
	return true;
}

/* --------------------------------------------------------------- reading */

enum rmode { R_VERIFY, R_EXTRACT, R_COPY };

struct expect {
	char *name;
	size_t file; /* manifest file index */
	bool is_index;
	bool seen;
};

struct tmpfile {
	char *rel;   /* final path relative to dest */
	char *tmp;   /* temporary base name in the same directory */
	bool renamed;
};

struct writer;

struct rctx {
	struct ota_bundle *b;
	enum rmode mode;
	struct archive *a;
	struct expect *ex;
	size_t n_ex;
	/* verify */
	struct ota_trust *trust;
	int64_t now;
	uint64_t min_sequence;
	ota_bundle_verify_fn verify;
	void *verify_ud;
	/* extract */
	int dest_fd;
	struct tmpfile *tmps;
	size_t n_tmps;
	char **dirs; /* directories created, relative to dest, in creation order */
	size_t n_dirs;
	unsigned counter;
	/* copy */
	struct writer *w;
	const char *new_env;
	size_t new_env_len;
};

static int tar_err(struct archive *a)
{
	int e = archive_errno(a);
	if (e == ENOMEM)
		return -ENOMEM;
	return -FL_ETAR;
}

/* 1: an entry; 0: end of archive; < 0: error. */
static int next_entry(struct rctx *c, struct archive_entry **e)
{
	int r = archive_read_next_header(c->a, e);
	if (r == ARCHIVE_EOF)
		return 0;
	if (r != ARCHIVE_OK) /* WARN included: be strict */
		return tar_err(c->a);
	return 1;
}

static int check_entry(struct archive_entry *e)
{
	if (archive_entry_hardlink(e) || archive_entry_symlink(e))
		return -FL_EENTRYTYPE;
	if (archive_entry_filetype(e) != AE_IFREG)
		return -FL_EENTRYTYPE;
	if (archive_entry_sparse_reset(e) > 0)
		return -FL_EENTRYTYPE;
	if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0)
		return -FL_ETAR;
	if (!name_safe(archive_entry_pathname(e)))
		return -FL_EPATH;
	return 0;
}

/* Sink for an entry's bytes while streaming. */
struct sink {
	struct fl_sha256 *h;
	int fd;            /* extract: temporary file, else -1 */
	uint8_t *buf;      /* index: whole content */
	size_t buf_len;
	bool copy;         /* copy mode: pass through to the writer */
};

static int writer_data(struct writer *w, const void *d, size_t n);

static int stream_entry(struct rctx *c, int64_t size, struct sink *s)
{
	const void *blk;
	size_t len;
	la_int64_t off;
	int64_t done = 0;
	for (;;) {
		int r = archive_read_data_block(c->a, &blk, &len, &off);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK)
			return tar_err(c->a);
		if (off != done || (int64_t)len > size - done)
			return -FL_ETAR; /* holes or more data than announced */
		if (s->h)
			fl_sha256_update(s->h, blk, len);
		if (s->buf)
			memcpy(s->buf + done, blk, len);
		if (s->fd >= 0 && (r = fl_write_all(s->fd, blk, len)) < 0)
			return r;
		if (s->copy && (r = writer_data(c->w, blk, len)) < 0)
			return r;
		done += (int64_t)len;
	}
	if (done != size)
		return -FL_ETAR;
	return 0;
}

static struct expect *find_expect(struct rctx *c, const char *name)
{
	for (size_t i = 0; i < c->n_ex; i++)
		if (!strcmp(c->ex[i].name, name))
			return &c->ex[i];
	return NULL;
}

static int build_expect(struct rctx *c, const struct ota_manifest *m)
{
	c->ex = calloc(2 * m->n_files + 1, sizeof(*c->ex));
	if (!c->ex)
		return -ENOMEM;
	for (size_t i = 0; i < m->n_files; i++) {
		if (!ota_manifest_path_valid(m->files[i].path))
			return -FL_EPATH;
		char *f = fl_asprintf(OTA_BUNDLE_FILES_DIR "%s", m->files[i].path);
		char *x = fl_asprintf(OTA_BUNDLE_INDEX_DIR "%s" OTA_BUNDLE_INDEX_SUFFIX,
				      m->files[i].path);
		if (f)
			c->ex[c->n_ex++] = (struct expect){.name = f, .file = i};
		if (x)
			c->ex[c->n_ex++] = (struct expect){.name = x, .file = i, .is_index = true};
		if (!f || !x)
			return -ENOMEM;
	}
	return 0;
}

/* Open the parent directory of REL (relative to dest) walking each component
 * without following symlinks; with CREATE make missing ones (recorded in
 * c->dirs). *ret_base points into REL. */
static int open_parent(struct rctx *c, const char *rel, bool create, int *ret_fd,
		       const char **ret_base)
{
	int fd = dup(c->dest_fd);
	if (fd < 0)
		return -errno;
	const char *p = rel;
	for (;;) {
		const char *s = strchr(p, '/');
		if (!s)
			break;
		_cleanup_free_ char *comp = strndup(p, (size_t)(s - p));
		_cleanup_free_ char *sofar = strndup(rel, (size_t)(s - rel));
		if (!comp || !sofar) {
			close(fd);
			return -ENOMEM;
		}
		int nfd = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0 && errno == ENOENT && create) {
			if (mkdirat(fd, comp, 0755) < 0) {
				int e = -errno;
				close(fd);
				return e;
			}
			char **d = realloc(c->dirs, (c->n_dirs + 1) * sizeof(*d));
			if (!d) {
				unlinkat(fd, comp, AT_REMOVEDIR);
				close(fd);
				return -ENOMEM;
			}
			c->dirs = d;
			c->dirs[c->n_dirs++] = fl_steal_ptr(sofar);
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

static int extract_open(struct rctx *c, const char *rel, int *ret_fd)
{
	int dfd = -1;
	const char *base = NULL;
	int r = open_parent(c, rel, true, &dfd, &base);
	if (r < 0)
		return r;
	struct tmpfile *t = realloc(c->tmps, (c->n_tmps + 1) * sizeof(*t));
	if (!t) {
		close(dfd);
		return -ENOMEM;
	}
	c->tmps = t;
	t = &c->tmps[c->n_tmps];
	*t = (struct tmpfile){0};
	t->rel = strdup(rel);
	t->tmp = fl_asprintf(".%s.flotilla-tmp-%d-%u", base, (int)getpid(), c->counter++);
	if (!t->rel || !t->tmp) {
		free(t->rel);
		free(t->tmp);
		close(dfd);
		return -ENOMEM;
	}
	int fd = openat(dfd, t->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	int e = -errno;
	close(dfd);
	if (fd < 0) {
		free(t->rel);
		free(t->tmp);
		return e;
	}
	c->n_tmps++;
	*ret_fd = fd;
	return 0;
}

/* Undo an extraction: remove temporaries, renamed files, created dirs. */
static void extract_rollback(struct rctx *c)
{
	for (size_t i = c->n_tmps; i-- > 0;) {
		int dfd;
		const char *base;
		if (open_parent(c, c->tmps[i].rel, false, &dfd, &base) == 0) {
			unlinkat(dfd, c->tmps[i].renamed ? base : c->tmps[i].tmp, 0);
			close(dfd);
		}
	}
	for (size_t i = c->n_dirs; i-- > 0;)
		unlinkat(c->dest_fd, c->dirs[i], AT_REMOVEDIR);
}

static int extract_commit(struct rctx *c)
{
	for (size_t i = 0; i < c->n_tmps; i++) {
		int dfd;
		const char *base;
		int r = FL_FAILPOINT("bundle.extract.before_rename");
		if (r < 0)
			return r;
		r = open_parent(c, c->tmps[i].rel, false, &dfd, &base);
		if (r < 0)
			return r;
		r = renameat2(dfd, c->tmps[i].tmp, dfd, base, RENAME_NOREPLACE);
		if (r == 0)
			c->tmps[i].renamed = true;
		r = r < 0 ? -errno : fsync(dfd) < 0 ? -errno : 0;
		close(dfd);
		if (r < 0)
			return r;
	}
	if (fsync(c->dest_fd) < 0)
		return -errno;
	return 0;
}

/* Consume the data of the remaining entries looking for the manifest name:
 * tells "not first" from "missing". */
static int manifest_elsewhere(struct rctx *c, size_t max_entries)
{
	struct archive_entry *e;
	for (size_t n = 1; n < max_entries; n++) {
		if (next_entry(c, &e) <= 0)
			break;
		const char *name = archive_entry_pathname(e);
		if (name && !strcmp(name, OTA_BUNDLE_MANIFEST_NAME))
			return -FL_EFORMAT;
	}
	return -FL_EMISSING;
}

static int writer_entry(struct writer *w, const char *name, int64_t size, int64_t mtime);

static int read_manifest(struct rctx *c, uint64_t *total)
{
	struct ota_bundle *b = c->b;
	struct archive_entry *e;
	int r = next_entry(c, &e);
	if (r == 0)
		return -FL_EMISSING;
	if (r < 0)
		return r;
	if ((r = check_entry(e)) < 0)
		return r;
	if (strcmp(archive_entry_pathname(e), OTA_BUNDLE_MANIFEST_NAME))
		return manifest_elsewhere(c, b->max_entries);
	int64_t size = archive_entry_size(e);
	if ((uint64_t)size > b->max_manifest_bytes || (uint64_t)size > b->max_total_bytes)
		return -FL_ETOOBIG;
	*total = (uint64_t)size;
	_cleanup_free_ char *env = malloc((size_t)size + 1);
	if (!env)
		return -ENOMEM;
	struct sink s = {.fd = -1, .buf = (uint8_t *)env};
	if ((r = stream_entry(c, size, &s)) < 0)
		return r;
	env[size] = '\0';

	if (c->mode == R_VERIFY) {
		struct ota_manifest *m = NULL;
		if (c->verify)
			r = c->verify(c->verify_ud, env, (size_t)size, &m);
		else if (c->trust)
			r = ota_trust_verify_manifest(c->trust, env, (size_t)size, c->now,
						      c->min_sequence, &m);
		else
			r = -EINVAL;
		if (r < 0)
			return r;
		b->m = m;
		b->envelope = fl_steal_ptr(env);
		b->envelope_len = (size_t)size;
		b->idx = calloc(m->n_files ? m->n_files : 1, sizeof(*b->idx));
		if (!b->idx)
			return -ENOMEM;
	} else {
		/* The archive must still hold the manifest that was verified. */
		if ((size_t)size != b->envelope_len || memcmp(env, b->envelope, b->envelope_len))
			return -FL_EHASH;
		if (c->mode == R_COPY) {
			r = writer_entry(c->w, OTA_BUNDLE_MANIFEST_NAME, (int64_t)c->new_env_len,
					 b->m->created_s);
			if (r < 0 || (r = writer_data(c->w, c->new_env, c->new_env_len)) < 0)
				return r;
		}
	}
	return build_expect(c, b->m);
}

static int read_bundle(struct rctx *c)
{
	struct ota_bundle *b = c->b;
	struct archive_entry *e;
	uint64_t total = 0;
	int r = read_manifest(c, &total);
	if (r < 0)
		return r;
	const struct ota_manifest *m = b->m;

	for (size_t n = 1;; n++) {
		r = next_entry(c, &e);
		if (r < 0)
			return r;
		if (r == 0)
			break;
		if (n >= b->max_entries)
			return -FL_ETOOBIG;
		if ((r = check_entry(e)) < 0)
			return r;
		const char *name = archive_entry_pathname(e);
		struct expect *x = find_expect(c, name);
		if (!x)
			return -FL_EPATH;
		if (x->seen)
			return -FL_EDUP;
		x->seen = true;
		const struct ota_manifest_file *mf = &m->files[x->file];
		int64_t size = archive_entry_size(e);
		if (x->is_index) {
			if ((uint64_t)size > OTA_CIDX_MAX_BYTES)
				return -FL_ETOOBIG;
		} else if ((uint64_t)size != mf->size) {
			return -FL_ESIZE;
		}
		if ((uint64_t)size > b->max_total_bytes - total)
			return -FL_ETOOBIG;
		total += (uint64_t)size;

		_cleanup_(fl_sha256_freep) struct fl_sha256 *h = fl_sha256_new();
		if (!h)
			return -ENOMEM;
		struct sink s = {.h = h, .fd = -1, .copy = c->mode == R_COPY};
		_cleanup_free_ uint8_t *ibuf = NULL;
		if (x->is_index && c->mode == R_VERIFY) {
			ibuf = malloc(size ? (size_t)size : 1);
			if (!ibuf)
				return -ENOMEM;
			s.buf = ibuf;
		}
		if (c->mode == R_COPY && (r = writer_entry(c->w, name, size, m->created_s)) < 0)
			return r;
		_cleanup_close_ int fd = -1;
		if (!x->is_index && c->mode == R_EXTRACT) {
			if ((r = extract_open(c, mf->path, &fd)) < 0)
				return r;
			s.fd = fd;
		}
		if ((r = stream_entry(c, size, &s)) < 0)
			return r;
		uint8_t digest[FL_SHA256_LEN];
		fl_sha256_final(h, digest);
		if (memcmp(digest, x->is_index ? mf->chunk_index_sha256 : mf->sha256, FL_SHA256_LEN))
			return -FL_EHASH;
		if (fd >= 0 && fsync(fd) < 0)
			return -errno;
		if (fd >= 0 && (r = FL_FAILPOINT("bundle.extract.file_synced")) < 0)
			return r;
		if (ibuf) {
			struct ota_chunkidx *idx = NULL;
			if ((r = ota_chunkidx_decode(ibuf, (size_t)size, &idx)) < 0)
				return r;
			b->idx[x->file] = idx;
			if (ota_chunkidx_file_size(idx) != mf->size)
				return -FL_ESIZE;
			if (memcmp(ota_chunkidx_file_sha256(idx), mf->sha256, FL_SHA256_LEN))
				return -FL_EHASH;
		}
	}
	for (size_t i = 0; i < c->n_ex; i++)
		if (!c->ex[i].seen)
			return -FL_EMISSING;
	return 0;
}

static int open_source(const struct ota_bundle *b, struct archive **ret_a, int *ret_fd)
{
	int lr = fl_archive_load();
	if (lr < 0)
		return lr;
	struct archive *a = archive_read_new();
	if (!a)
		return -ENOMEM;
	archive_read_support_format_tar(a); /* no filters: bundles are plain tar */
	int r;
	*ret_fd = -1;
	if (b->path) {
		int fd = open(b->path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			r = -errno;
			archive_read_free(a);
			return r;
		}
		r = archive_read_open_fd(a, fd, IO_BLOCK);
		*ret_fd = fd;
	} else {
		r = archive_read_open_memory(a, b->mem, b->mem_len);
	}
	if (r != ARCHIVE_OK) {
		r = tar_err(a);
		archive_read_free(a);
		if (*ret_fd >= 0)
			close(*ret_fd);
		*ret_fd = -1;
		return r;
	}
	*ret_a = a;
	return 0;
}

static void rctx_done(struct rctx *c)
{
	for (size_t i = 0; i < c->n_ex; i++)
		free(c->ex[i].name);
	free(c->ex);
	for (size_t i = 0; i < c->n_tmps; i++) {
		free(c->tmps[i].rel);
		free(c->tmps[i].tmp);
	}
	free(c->tmps);
	for (size_t i = 0; i < c->n_dirs; i++)
		free(c->dirs[i]);
	free(c->dirs);
}

static int run_reader(struct rctx *c)
{
	int fd;
	int r = open_source(c->b, &c->a, &fd);
	if (r < 0)
		return r;
	r = read_bundle(c);
	archive_read_free(c->a);
	c->a = NULL;
	if (fd >= 0)
		close(fd);
	return r;
}

void ota_bundle_free(struct ota_bundle *b)
{
	if (!b)
		return;
	if (b->idx && b->m)
		for (size_t i = 0; i < b->m->n_files; i++)
			ota_chunkidx_free(b->idx[i]);
	free(b->idx);
	ota_manifest_free(b->m);
	free(b->envelope);
	free(b->path);
	free(b);
}

FL_DEFINE_CLEANUP(struct ota_bundle, ota_bundle_free)

static int do_open(struct ota_bundle *b, struct ota_trust *trust, int64_t now,
		   uint64_t min_sequence, const struct ota_bundle_opts *opts, struct ota_bundle **ret)
{
	b->max_entries = opts && opts->max_entries ? opts->max_entries : OTA_BUNDLE_MAX_ENTRIES;
	b->max_manifest_bytes = opts && opts->max_manifest_bytes ? opts->max_manifest_bytes
								 : OTA_BUNDLE_MAX_MANIFEST_BYTES;
	b->max_total_bytes = opts && opts->max_total_bytes ? opts->max_total_bytes
							   : OTA_BUNDLE_MAX_TOTAL_BYTES;
	struct rctx c = {.b = b, .mode = R_VERIFY, .trust = trust, .now = now,
			 .min_sequence = min_sequence, .dest_fd = -1,
			 .verify = opts ? opts->verify : NULL,
			 .verify_ud = opts ? opts->verify_userdata : NULL};
	int r = run_reader(&c);
	rctx_done(&c);
	if (r < 0) {
		ota_bundle_free(b);
		return r;
	}
	*ret = b;
	return 0;
}

int ota_bundle_open(const char *path, struct ota_trust *trust, int64_t now, uint64_t min_sequence,
		    const struct ota_bundle_opts *opts, struct ota_bundle **ret)
{
	if (!path || !ret)
		return -EINVAL;
	struct ota_bundle *b = calloc(1, sizeof(*b));
	if (!b || !(b->path = strdup(path))) {
		free(b);
		return -ENOMEM;
	}
	return do_open(b, trust, now, min_sequence, opts, ret);
}

int ota_bundle_open_mem(const void *data, size_t len, struct ota_trust *trust, int64_t now,
			uint64_t min_sequence, const struct ota_bundle_opts *opts,
			struct ota_bundle **ret)
{
	if ((!data && len) || !ret)
		return -EINVAL;
	struct ota_bundle *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->mem = data ? data : "";
	b->mem_len = len;
	return do_open(b, trust, now, min_sequence, opts, ret);
}

int ota_bundle_extract(struct ota_bundle *b, const char *dest_dir)
{
	if (!b || !dest_dir)
		return -EINVAL;
	_cleanup_close_ int dfd = open(dest_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	struct rctx c = {.b = b, .mode = R_EXTRACT, .dest_fd = dfd};
	int r = run_reader(&c);
	if (r >= 0)
		r = extract_commit(&c);
	if (r < 0)
		extract_rollback(&c);
	rctx_done(&c);
	return r;
}

const struct ota_manifest *ota_bundle_manifest(const struct ota_bundle *b)
{
	return b ? b->m : NULL;
}

const char *ota_bundle_envelope(const struct ota_bundle *b, size_t *ret_len)
{
	if (ret_len)
		*ret_len = b->envelope_len;
	return b->envelope;
}

const struct ota_chunkidx *ota_bundle_chunk_index(const struct ota_bundle *b, size_t i)
{
	return b && b->m && i < b->m->n_files ? b->idx[i] : NULL;
}

/* --------------------------------------------------------------- writing */

struct writer {
	char *out_path;
	char *tmp_path;
	int fd;
	struct archive *a;
};

static void writer_abort(struct writer *w)
{
	if (w->a)
		archive_write_free(w->a);
	if (w->fd >= 0)
		close(w->fd);
	if (w->tmp_path)
		unlink(w->tmp_path);
	free(w->tmp_path);
	free(w->out_path);
	*w = (struct writer){.fd = -1};
}

static int writer_open(struct writer *w, const char *out_path)
{
	*w = (struct writer){.fd = -1};
	int lr = fl_archive_load();
	if (lr < 0)
		return lr;
	w->out_path = strdup(out_path);
	w->tmp_path = fl_asprintf("%s.tmp-XXXXXX", out_path);
	if (!w->out_path || !w->tmp_path) {
		writer_abort(w);
		return -ENOMEM;
	}
	w->fd = mkostemp(w->tmp_path, O_CLOEXEC);
	if (w->fd < 0) {
		int e = -errno;
		free(w->tmp_path);
		w->tmp_path = NULL;
		writer_abort(w);
		return e;
	}
	fchmod(w->fd, 0644);
	w->a = archive_write_new();
	if (!w->a) {
		writer_abort(w);
		return -ENOMEM;
	}
	if (archive_write_set_format_pax_restricted(w->a) != ARCHIVE_OK ||
	    archive_write_set_bytes_per_block(w->a, IO_BLOCK) != ARCHIVE_OK ||
	    archive_write_set_bytes_in_last_block(w->a, 1) != ARCHIVE_OK ||
	    archive_write_open_fd(w->a, w->fd) != ARCHIVE_OK) {
		writer_abort(w);
		return -FL_ETAR;
	}
	return 0;
}

static int writer_entry(struct writer *w, const char *name, int64_t size, int64_t mtime)
{
	struct archive_entry *e = archive_entry_new();
	if (!e)
		return -ENOMEM;
	archive_entry_set_pathname(e, name);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, size);
	archive_entry_set_mtime(e, mtime, 0);
	archive_entry_set_uid(e, 0);
	archive_entry_set_gid(e, 0);
	int r = archive_write_header(w->a, e);
	archive_entry_free(e);
	return r == ARCHIVE_OK ? 0 : -FL_ETAR;
}

static int writer_data(struct writer *w, const void *d, size_t n)
{
	const uint8_t *p = d;
	while (n > 0) {
		la_ssize_t k = archive_write_data(w->a, p, n);
		if (k <= 0)
			return archive_errno(w->a) > 0 ? -archive_errno(w->a) : -FL_ETAR;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int writer_commit(struct writer *w)
{
	int r = 0;
	if (archive_write_close(w->a) != ARCHIVE_OK)
		r = -FL_ETAR;
	archive_write_free(w->a);
	w->a = NULL;
	if (r == 0 && fsync(w->fd) < 0)
		r = -errno;
	if (close(w->fd) < 0 && r == 0)
		r = -errno;
	w->fd = -1;
	if (r == 0 && rename(w->tmp_path, w->out_path) < 0)
		r = -errno;
	if (r < 0) {
		writer_abort(w);
		return r;
	}
	free(w->tmp_path);
	w->tmp_path = NULL;
	r = fl_fsync_parent(w->out_path);
	free(w->out_path);
	w->out_path = NULL;
	return r;
}

/* Stream the file at PATH into the current entry, hashing it again. */
static int write_file_data(struct writer *w, const char *path, uint64_t size,
			   const uint8_t sha[FL_SHA256_LEN])
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	_cleanup_free_ uint8_t *buf = malloc(IO_BLOCK);
	_cleanup_(fl_sha256_freep) struct fl_sha256 *h = fl_sha256_new();
	if (!buf || !h)
		return -ENOMEM;
	uint64_t done = 0;
	while (done < size) {
		size_t want = size - done < IO_BLOCK ? (size_t)(size - done) : IO_BLOCK;
		ssize_t got = read(fd, buf, want);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0)
			return -FL_EHASH; /* shrank since it was chunked */
		fl_sha256_update(h, buf, (size_t)got);
		int r = writer_data(w, buf, (size_t)got);
		if (r < 0)
			return r;
		done += (uint64_t)got;
	}
	uint8_t d[FL_SHA256_LEN];
	fl_sha256_final(h, d);
	if (memcmp(d, sha, FL_SHA256_LEN))
		return -FL_EHASH;
	return 0;
}

static int sign_manifest(const struct ota_manifest *m, struct ota_key *const *keys, size_t n_keys,
			 char **ret, size_t *ret_len)
{
	_cleanup_free_ char *json = NULL;
	size_t json_len;
	int r = ota_manifest_to_json(m, &json, &json_len);
	if (r < 0)
		return r;
	_cleanup_(ota_dsse_freep) struct ota_dsse *env = NULL;
	if ((r = ota_dsse_new(OTA_PAYLOAD_TYPE_MANIFEST, json, json_len, &env)) < 0)
		return r;
	for (size_t i = 0; i < n_keys; i++)
		if ((r = ota_dsse_sign(env, keys[i])) < 0)
			return r;
	return ota_dsse_to_json(env, ret, ret_len);
}

static void drop_files(struct ota_manifest *m, size_t keep)
{
	for (size_t i = keep; i < m->n_files; i++)
		free(m->files[i].path);
	m->n_files = keep;
}

int ota_bundle_create(const char *out_path, struct ota_manifest *m,
		      const char *const *src_paths, size_t n_files,
		      const struct ota_chunk_params *params, unsigned chunk_opts,
		      struct ota_key *const *keys, size_t n_keys)
{
	if (!out_path || !m || (!src_paths && n_files) || !keys || n_keys == 0 || m->n_files)
		return -EINVAL;
	if (n_files == 0 || n_files > OTA_MANIFEST_MAX_FILES)
		return n_files ? -FL_ETOOBIG : -EINVAL;
	struct ota_chunk_params p;
	if (params)
		p = *params;
	else
		ota_chunk_params_default(&p);

	uint8_t **ibuf = calloc(n_files, sizeof(*ibuf));
	size_t *ilen = calloc(n_files, sizeof(*ilen));
	_cleanup_free_ char *env = NULL;
	size_t env_len = 0;
	struct writer w = {.fd = -1};
	int r = 0;
	if (!ibuf || !ilen) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n_files; i++) {
		_cleanup_(ota_chunkidx_freep) struct ota_chunkidx *idx = NULL;
		if ((r = ota_chunk_file(src_paths[i], &p, chunk_opts, &idx)) < 0)
			goto out;
		if ((r = ota_chunkidx_encode(idx, &ibuf[i], &ilen[i])) < 0)
			goto out;
		uint8_t ih[FL_SHA256_LEN];
		fl_sha256(ibuf[i], ilen[i], ih);
		const char *base = strrchr(src_paths[i], '/');
		base = base ? base + 1 : src_paths[i];
		r = ota_manifest_add_file(m, base, ota_chunkidx_file_size(idx),
					  ota_chunkidx_file_sha256(idx), ih);
		if (r < 0)
			goto out;
	}
	char *desc = fl_asprintf("gear-fastcdc-v1/min=%u/avg=%u/max=%u%s", p.min_bytes,
				 p.avg_bytes, p.max_bytes,
				 (chunk_opts & OTA_CHUNK_OPT_GGUF) ? "/gguf-tensors" : "");
	if (!desc) {
		r = -ENOMEM;
		goto out;
	}
	free(m->chunking);
	m->chunking = desc;
	if ((r = sign_manifest(m, keys, n_keys, &env, &env_len)) < 0)
		goto out;
	if (env_len > OTA_BUNDLE_MAX_MANIFEST_BYTES) {
		r = -FL_ETOOBIG;
		goto out;
	}

	if ((r = writer_open(&w, out_path)) < 0)
		goto out;
	if ((r = writer_entry(&w, OTA_BUNDLE_MANIFEST_NAME, (int64_t)env_len, m->created_s)) < 0 ||
	    (r = writer_data(&w, env, env_len)) < 0)
		goto out;
	for (size_t i = 0; i < n_files; i++) {
		_cleanup_free_ char *name = fl_asprintf(OTA_BUNDLE_INDEX_DIR "%s" OTA_BUNDLE_INDEX_SUFFIX,
							m->files[i].path);
		if (!name) {
			r = -ENOMEM;
			goto out;
		}
		if ((r = writer_entry(&w, name, (int64_t)ilen[i], m->created_s)) < 0 ||
		    (r = writer_data(&w, ibuf[i], ilen[i])) < 0)
			goto out;
	}
	for (size_t i = 0; i < n_files; i++) {
		_cleanup_free_ char *name = fl_asprintf(OTA_BUNDLE_FILES_DIR "%s", m->files[i].path);
		if (!name) {
			r = -ENOMEM;
			goto out;
		}
		if ((r = writer_entry(&w, name, (int64_t)m->files[i].size, m->created_s)) < 0 ||
		    (r = write_file_data(&w, src_paths[i], m->files[i].size, m->files[i].sha256)) < 0)
			goto out;
	}
	r = writer_commit(&w);
out:
	if (w.a || w.tmp_path)
		writer_abort(&w);
	if (r < 0)
		drop_files(m, 0);
	for (size_t i = 0; ibuf && i < n_files; i++)
		free(ibuf[i]);
	free(ibuf);
	free(ilen);
	return r;
}

int ota_bundle_add_signature(const char *in_path, const char *out_path, const struct ota_key *key)
{
	if (!in_path || !out_path || !key)
		return -EINVAL;
	struct ota_bundle_opts opts = {.verify = ota_bundle_verify_none};
	_cleanup_(ota_bundle_freep) struct ota_bundle *b = NULL;
	int r = ota_bundle_open(in_path, NULL, 0, 0, &opts, &b);
	if (r < 0)
		return r;
	_cleanup_(ota_dsse_freep) struct ota_dsse *env = NULL;
	if ((r = ota_dsse_parse(b->envelope, b->envelope_len, &env)) < 0)
		return r;
	if ((r = ota_dsse_sign(env, key)) < 0)
		return r;
	_cleanup_free_ char *json = NULL;
	size_t json_len;
	if ((r = ota_dsse_to_json(env, &json, &json_len)) < 0)
		return r;
	if (json_len > b->max_manifest_bytes)
		return -FL_ETOOBIG;

	struct writer w;
	if ((r = writer_open(&w, out_path)) < 0)
		return r;
	struct rctx c = {.b = b, .mode = R_COPY, .dest_fd = -1, .w = &w, .new_env = json,
			 .new_env_len = json_len};
	r = run_reader(&c);
	rctx_done(&c);
	if (r < 0) {
		writer_abort(&w);
		return r;
	}
	return writer_commit(&w);
}

/* ------------------------------------------------------------------ diff */

struct hlen {
	uint8_t h[FL_SHA256_LEN];
	uint32_t len;
};

static int cmp_hlen(const void *a, const void *b)
{
	return memcmp(a, b, FL_SHA256_LEN);
}

static int collect_chunks(const struct ota_bundle *b, struct hlen **ret, size_t *ret_n)
{
	size_t n = 0;
	for (size_t i = 0; i < b->m->n_files; i++)
		n += ota_chunkidx_count(b->idx[i]);
	struct hlen *v = malloc((n ? n : 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	size_t k = 0;
	for (size_t i = 0; i < b->m->n_files; i++)
		for (size_t j = 0; j < ota_chunkidx_count(b->idx[i]); j++) {
			const struct ota_chunk *c = ota_chunkidx_get(b->idx[i], j);
			memcpy(v[k].h, c->sha256, FL_SHA256_LEN);
			v[k++].len = c->len;
		}
	qsort(v, n, sizeof(*v), cmp_hlen);
	/* distinct ids only */
	size_t w = 0;
	for (size_t i = 0; i < n; i++)
		if (w == 0 || memcmp(v[i].h, v[w - 1].h, FL_SHA256_LEN))
			v[w++] = v[i];
	*ret = v;
	*ret_n = w;
	return 0;
}

int ota_bundle_diff(const struct ota_bundle *old_b, const struct ota_bundle *new_b,
		    struct ota_bundle_delta *ret)
{
	if (!new_b || !ret)
		return -EINVAL;
	_cleanup_free_ struct hlen *ov = NULL, *nv = NULL;
	size_t on = 0, nn = 0;
	int r;
	if (old_b && (r = collect_chunks(old_b, &ov, &on)) < 0)
		return r;
	if ((r = collect_chunks(new_b, &nv, &nn)) < 0)
		return r;
	struct ota_bundle_delta d = {0};
	for (size_t i = 0; i < nn; i++) {
		d.total_bytes += nv[i].len;
		d.total_chunks++;
		if (!ov || !bsearch(&nv[i], ov, on, sizeof(*ov), cmp_hlen)) {
			d.fetch_bytes += nv[i].len;
			d.fetch_chunks++;
		}
	}
	*ret = d;
	return 0;
}
