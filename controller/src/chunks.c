/* Content-addressed chunk store: DATA_DIR/chunks/<2 hex>/<64 hex>. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <flotilla/bundle.h>
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/util.h>

#include "ctl_internal.h"

FL_DEFINE_CLEANUP(struct ota_bundle, ota_bundle_free)

static void free_json(cJSON **p)
{
	cJSON_Delete(*p);
}

static char *object_path(const struct ctl *c, const uint8_t id[32])
{
	char hex[FL_SHA256_HEX_LEN + 1];
	fl_hex_encode(id, 32, hex);
	return fl_asprintf("%s/%.2s/%s", c->chunks_dir, hex, hex);
}

/* Store DATA under its SHA-256 ID (already checked by the caller). 1 when
 * written, 0 when it was there. */
static int put_object(const struct ctl *c, const uint8_t id[32], const void *data, size_t len)
{
	_cleanup_free_ char *path = object_path(c, id);
	if (!path)
		return -ENOMEM;
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == len)
		return 0;
	char *slash = strrchr(path, '/');
	*slash = 0;
	int r = fl_mkdir_p(path, 0750);
	*slash = '/';
	if (r < 0)
		return r;
	r = fl_write_file_atomic(path, data, len, 0640);
	return r < 0 ? r : 1;
}

static bool object_exists(const struct ctl *c, const uint8_t id[32], uint64_t len)
{
	_cleanup_free_ char *path = object_path(c, id);
	struct stat st;
	return path && lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == len;
}

struct push_stats {
	uint64_t chunks, chunk_bytes, written;
};

/* Store the index blob and every chunk of manifest file I. */
static int store_file(struct ctl *c, struct ota_bundle *b, size_t i, const char *dir,
		      struct push_stats *ps)
{
	const struct ota_manifest_file *mf = &ota_bundle_manifest(b)->files[i];
	const struct ota_chunkidx *idx = ota_bundle_chunk_index(b, i);
	if (!idx)
		return -FL_EMISSING;
	_cleanup_free_ uint8_t *blob = NULL;
	size_t blob_len;
	int r = ota_chunkidx_encode(idx, &blob, &blob_len);
	if (r < 0)
		return r;
	uint8_t h[32];
	fl_sha256(blob, blob_len, h);
	if (memcmp(h, mf->chunk_index_sha256, 32))
		return -FL_EHASH;
	if ((r = put_object(c, h, blob, blob_len)) < 0)
		return r;
	ps->written += (uint64_t)r;

	_cleanup_free_ char *fpath = fl_path_join(dir, mf->path);
	if (!fpath)
		return -ENOMEM;
	_cleanup_close_ int fd = open(fpath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	_cleanup_free_ uint8_t *buf = NULL;
	size_t cap = 0;
	size_t n = ota_chunkidx_count(idx);
	for (size_t k = 0; k < n; k++) {
		const struct ota_chunk *ch = ota_chunkidx_get(idx, k);
		if (ch->len > OTA_CHUNK_MAX_HIGHEST)
			return -FL_EFORMAT;
		ps->chunks++;
		ps->chunk_bytes += ch->len;
		if (object_exists(c, ch->sha256, ch->len))
			continue;
		if (cap < ch->len) {
			uint8_t *nb = realloc(buf, ch->len);
			if (!nb)
				return -ENOMEM;
			buf = nb;
			cap = ch->len;
		}
		ssize_t got = pread(fd, buf, ch->len, (off_t)ch->offset);
		if (got != (ssize_t)ch->len)
			return got < 0 ? -errno : -EIO;
		fl_sha256(buf, ch->len, h);
		if (memcmp(h, ch->sha256, 32))
			return -FL_EHASH;
		if ((r = put_object(c, h, buf, ch->len)) < 0)
			return r;
		ps->written += (uint64_t)r;
	}
	return 0;
}

static cJSON *files_json(const struct ota_manifest *m)
{
	cJSON *a = cJSON_CreateArray();
	for (size_t i = 0; a && i < m->n_files; i++) {
		char h1[65], h2[65];
		fl_hex_encode(m->files[i].sha256, 32, h1);
		fl_hex_encode(m->files[i].chunk_index_sha256, 32, h2);
		cJSON *f = cJSON_CreateObject();
		if (!f || !cJSON_AddItemToArray(a, f)) {
			cJSON_Delete(f);
			cJSON_Delete(a);
			return NULL;
		}
		if (!cJSON_AddStringToObject(f, "path", m->files[i].path) ||
		    !cJSON_AddNumberToObject(f, "size", (double)m->files[i].size) ||
		    !cJSON_AddStringToObject(f, "sha256", h1) ||
		    !cJSON_AddStringToObject(f, "chunk_index_sha256", h2)) {
			cJSON_Delete(a);
			return NULL;
		}
	}
	return a;
}

/* Open, store the objects; holds push_lock. */
static int add_bundle(struct ctl *c, const char *path, const char *actor, cJSON **ret_info)
{
	struct ota_bundle_opts opts = {.max_total_bytes = c->max_bundle_bytes};
	if (!c->trust)
		opts.verify = ota_bundle_verify_none;
	_cleanup_(ota_bundle_freep) struct ota_bundle *b = NULL;
	int r = ota_bundle_open(path, c->trust, fl_now_s(), 0, &opts, &b);
	if (r < 0)
		return r;
	const struct ota_manifest *m = ota_bundle_manifest(b);

	_cleanup_free_ char *dir = fl_asprintf("%s/push.XXXXXX", c->tmp_dir);
	if (!dir)
		return -ENOMEM;
	if (!mkdtemp(dir))
		return -errno;
	struct push_stats ps = {0};
	r = ota_bundle_extract(b, dir);
	for (size_t i = 0; r >= 0 && i < m->n_files; i++)
		r = store_file(c, b, i, dir, &ps);
	fl_rm_rf(dir);
	if (r < 0)
		return r;

	size_t env_len;
	const char *env = ota_bundle_envelope(b, &env_len);
	uint8_t env_id[32];
	fl_sha256(env, env_len, env_id);
	if ((r = put_object(c, env_id, env, env_len)) < 0)
		return r;
	ps.written += (uint64_t)r;
	char env_hex[65];
	fl_hex_encode(env_id, 32, env_hex);

	_cleanup_(free_json) cJSON *files = files_json(m);
	_cleanup_free_ char *files_s = files ? fl_json_print(files) : NULL;
	_cleanup_free_ char *env_s = strndup(env, env_len);
	if (!files_s || !env_s)
		return -ENOMEM;
	struct ctl_bundle_rec rec = {.model = m->name,
				     .version = m->version,
				     .sequence = m->sequence,
				     .envelope_id = env_hex,
				     .envelope = env_s,
				     .files_json = files_s,
				     .verified = c->trust != NULL,
				     .pushed_at_s = fl_now_s()};
	_cleanup_free_ char *what =
		fl_asprintf("bundle %s %s sequence %llu envelope %s%s", m->name, m->version,
			    (unsigned long long)m->sequence, env_hex, c->trust ? "" : " (unverified)");
	if (!what)
		return -ENOMEM;

	pthread_mutex_lock(&c->lock);
	struct ctl_store *st = c->store;
	int added = st->ops->begin(st);
	if (added >= 0) {
		added = st->ops->bundle_put(st, &rec);
		if (added == 1)
			r = st->ops->audit(st, fl_now_s(), actor ? actor : "", "bundle.push", what);
		else
			r = 0;
		if (added >= 0 && r >= 0)
			r = st->ops->commit(st);
		if (added < 0 || r < 0)
			st->ops->rollback(st);
		if (added >= 0 && r < 0)
			added = r;
	}
	c->cnt.chunks_written += ps.written;
	if (added == 1)
		c->cnt.bundles_added++;
	else if (added == 0)
		c->cnt.bundles_existing++;
	pthread_mutex_unlock(&c->lock);
	if (added < 0)
		return added;

	if (ret_info) {
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddStringToObject(o, "model", m->name) ||
		    !cJSON_AddStringToObject(o, "version", m->version) ||
		    !cJSON_AddNumberToObject(o, "sequence", (double)m->sequence) ||
		    !cJSON_AddBoolToObject(o, "verified", c->trust != NULL) ||
		    !cJSON_AddBoolToObject(o, "added", added == 1) ||
		    !cJSON_AddStringToObject(o, "envelope_sha256", env_hex) ||
		    !cJSON_AddNumberToObject(o, "chunks", (double)ps.chunks) ||
		    !cJSON_AddNumberToObject(o, "chunk_bytes", (double)ps.chunk_bytes) ||
		    !cJSON_AddNumberToObject(o, "objects_written", (double)ps.written)) {
			cJSON_Delete(o);
			return -ENOMEM;
		}
		cJSON_AddItemToObject(o, "files", fl_steal_ptr(files));
		*ret_info = o;
	}
	return added;
}

int ctl_chunks_add_bundle(struct ctl *c, const char *path, const char *actor, cJSON **ret_info)
{
	if (!c || !path)
		return -EINVAL;
	pthread_mutex_lock(&c->push_lock);
	int r = add_bundle(c, path, actor, ret_info);
	pthread_mutex_unlock(&c->push_lock);
	if (r < 0 && r != -ENOMEM) {
		pthread_mutex_lock(&c->lock);
		c->cnt.bundles_refused++;
		pthread_mutex_unlock(&c->lock);
	}
	return r;
}

static int open_object(struct ctl *c, const uint8_t id[32], uint64_t *ret_size)
{
	_cleanup_free_ char *path = object_path(c, id);
	if (!path)
		return -ENOMEM;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ELOOP ? -ENOENT : -errno;
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return -ENOENT;
	}
	*ret_size = (uint64_t)st.st_size;
	return fd;
}

int ctl_chunks_size(struct ctl *c, const uint8_t id[32], uint64_t *ret)
{
	uint64_t size;
	int fd = open_object(c, id, &size);
	if (fd < 0)
		return fd;
	close(fd);
	*ret = size;
	return 0;
}

int ctl_chunks_read(struct ctl *c, const uint8_t id[32], uint64_t off, size_t len, void *buf,
		    size_t *ret_n)
{
	if (!c || !id || (!buf && len) || len > CTL_CHUNK_READ_MAX)
		return -EINVAL;
	uint64_t size;
	_cleanup_close_ int fd = open_object(c, id, &size);
	if (fd < 0)
		return fd;
	if (off > size)
		return -EINVAL;
	size_t want = size - off < len ? (size_t)(size - off) : len;
	size_t got = 0;
	while (got < want) {
		ssize_t k = pread(fd, (uint8_t *)buf + got, want - got, (off_t)(off + got));
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (k == 0)
			return -EIO;
		got += (size_t)k;
	}
	pthread_mutex_lock(&c->lock);
	c->cnt.chunk_reads++;
	pthread_mutex_unlock(&c->lock);
	*ret_n = got;
	return 0;
}
