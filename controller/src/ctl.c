/* struct ctl: open/close, queries and the Prometheus text. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <flotilla/bundle.h>
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/util.h>

#include "ctl_internal.h"

int ctl_open(const struct ctl_opts *o, struct ctl **ret)
{
	if (!o || !o->data_dir || !*o->data_dir || !ret)
		return -EINVAL;
	struct ctl *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->push_lock, NULL);
	c->batch_records = o->batch_records ? o->batch_records : CTL_DEFAULT_BATCH_RECORDS;
	c->flush_ms = o->flush_ms > 0 ? o->flush_ms : CTL_DEFAULT_FLUSH_MS;
	c->max_pending = o->max_pending ? o->max_pending : CTL_DEFAULT_MAX_PENDING;
	if (c->max_pending < c->batch_records)
		c->max_pending = c->batch_records;
	c->max_bundle_bytes = o->max_bundle_bytes ? o->max_bundle_bytes : OTA_BUNDLE_MAX_TOTAL_BYTES;
	int r = -ENOMEM;
	c->data_dir = strdup(o->data_dir);
	c->chunks_dir = fl_path_join(o->data_dir, "chunks");
	c->tmp_dir = fl_path_join(o->data_dir, "tmp");
	c->pending = calloc(c->max_pending, sizeof(*c->pending));
	_cleanup_free_ char *db = fl_path_join(o->data_dir, "controller.db");
	if (!c->data_dir || !c->chunks_dir || !c->tmp_dir || !db || !c->pending)
		goto fail;
	if ((r = fl_mkdir_p(c->chunks_dir, 0750)) < 0)
		goto fail;
	/* Leftovers of an interrupted push are garbage. */
	if ((r = fl_rm_rf(c->tmp_dir)) < 0 || (r = fl_mkdir_p(c->tmp_dir, 0750)) < 0)
		goto fail;
	if (o->trust_dir) {
		_cleanup_free_ char *kr = fl_path_join(o->trust_dir, OTA_TRUST_KEYRING_FILE);
		if (!kr) {
			r = -ENOMEM;
			goto fail;
		}
		if ((r = ota_trust_open(o->trust_dir, kr, 0, &c->trust)) < 0)
			goto fail;
	}
	if (o->store_dsn)
		r = ctl_store_open_pg(o->store_dsn, &c->store);
	else
		r = ctl_store_open_sqlite(db, &c->store);
	if (r < 0)
		goto fail;
	*ret = c;
	return 0;
fail:
	ctl_free(c);
	return r;
}

void ctl_free(struct ctl *c)
{
	if (!c)
		return;
	if (c->store && (c->n_pending || c->dirty))
		ctl_ingest_flush_locked(c);
	ctl_ingest_free(c);
	free(c->pending);
	ctl_store_close(c->store);
	ota_trust_free(c->trust);
	free(c->data_dir);
	free(c->chunks_dir);
	free(c->tmp_dir);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->push_lock);
	free(c);
}

struct ctl_store *ctl_get_store(struct ctl *c)
{
	return c->store;
}

void ctl_get_counters(struct ctl *c, struct ctl_counters *ret)
{
	pthread_mutex_lock(&c->lock);
	*ret = c->cnt;
	pthread_mutex_unlock(&c->lock);
}

int ctl_devices_list(struct ctl *c, const struct ctl_device_filter *f, cJSON **ret)
{
	pthread_mutex_lock(&c->lock);
	int r = c->store->ops->device_list(c->store, f, ret);
	pthread_mutex_unlock(&c->lock);
	return r;
}

int ctl_device_get(struct ctl *c, const char *id, cJSON **ret)
{
	if (!id || !fl_name_valid(id, CTL_DEVICE_ID_MAX))
		return -ENOENT;
	pthread_mutex_lock(&c->lock);
	int r = c->store->ops->device_get(c->store, id, CTL_RECENT_EVENTS, ret);
	pthread_mutex_unlock(&c->lock);
	return r;
}

int ctl_bundles_list(struct ctl *c, cJSON **ret)
{
	pthread_mutex_lock(&c->lock);
	int r = c->store->ops->bundle_list(c->store, ret);
	pthread_mutex_unlock(&c->lock);
	return r;
}

int ctl_audit(struct ctl *c, const char *actor, const char *action, const char *reason)
{
	pthread_mutex_lock(&c->lock);
	int r = c->store->ops->audit(c->store, fl_now_s(), actor, action, reason);
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* ---------------------------------------------------------------- metrics */

struct sbuf {
	char *p;
	size_t len, cap;
	int err;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	if (b->err)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->err = -EINVAL;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->err = -ENOMEM;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

/* A Prometheus label value: backslash, quote and newline escaped. */
static void sb_label(struct sbuf *b, const char *v)
{
	for (; v && *v; v++) {
		if (*v == '\\' || *v == '"')
			sb_printf(b, "\\%c", *v);
		else if (*v == '\n')
			sb_printf(b, "\\n");
		else
			sb_printf(b, "%c", *v);
	}
}

static double num_of(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

int ctl_metrics_text(struct ctl *c, char **ret)
{
	cJSON *m = NULL;
	pthread_mutex_lock(&c->lock);
	int r = c->store->ops->metrics(c->store, &m);
	struct ctl_counters k = c->cnt;
	size_t pending = c->n_pending;
	pthread_mutex_unlock(&c->lock);
	if (r < 0)
		return r;
	struct sbuf b = {0};
	sb_printf(&b, "# HELP flotilla_devices Registered devices by online state.\n"
		      "# TYPE flotilla_devices gauge\n"
		      "flotilla_devices{state=\"online\"} %.0f\n"
		      "flotilla_devices{state=\"offline\"} %.0f\n",
		  num_of(m, "online"), num_of(m, "offline"));
	sb_printf(&b, "# HELP flotilla_model_version_devices Devices running each model version "
		      "(current slot).\n# TYPE flotilla_model_version_devices gauge\n");
	const cJSON *v;
	cJSON_ArrayForEach(v, cJSON_GetObjectItem(m, "versions"))
	{
		sb_printf(&b, "flotilla_model_version_devices{model=\"");
		sb_label(&b, cJSON_GetStringValue(cJSON_GetObjectItem(v, "model")));
		sb_printf(&b, "\",version=\"");
		sb_label(&b, cJSON_GetStringValue(cJSON_GetObjectItem(v, "version")));
		sb_printf(&b, "\"} %.0f\n", num_of(v, "devices"));
	}
	sb_printf(&b, "# HELP flotilla_bundles Bundles in the chunk store.\n"
		      "# TYPE flotilla_bundles gauge\nflotilla_bundles %.0f\n",
		  num_of(m, "bundles"));
	sb_printf(&b, "# HELP flotilla_telemetry_missing_seqs Sequence numbers neither received "
		      "nor reported dropped (gaps), all devices.\n"
		      "# TYPE flotilla_telemetry_missing_seqs gauge\n"
		      "flotilla_telemetry_missing_seqs %.0f\n",
		  num_of(m, "gaps_missing"));
	sb_printf(&b, "# HELP flotilla_telemetry_pending_records Records waiting for the next "
		      "commit.\n# TYPE flotilla_telemetry_pending_records gauge\n"
		      "flotilla_telemetry_pending_records %zu\n",
		  pending);
	sb_printf(&b,
		  "# HELP flotilla_state_messages_total State messages by result.\n"
		  "# TYPE flotilla_state_messages_total counter\n"
		  "flotilla_state_messages_total{result=\"ok\"} %llu\n"
		  "flotilla_state_messages_total{result=\"offline\"} %llu\n"
		  "flotilla_state_messages_total{result=\"refused\"} %llu\n",
		  (unsigned long long)k.state_ok, (unsigned long long)k.state_offline,
		  (unsigned long long)k.state_refused);
	sb_printf(&b,
		  "# HELP flotilla_telemetry_batches_total Telemetry batches by result.\n"
		  "# TYPE flotilla_telemetry_batches_total counter\n"
		  "flotilla_telemetry_batches_total{result=\"ok\"} %llu\n"
		  "flotilla_telemetry_batches_total{result=\"refused\"} %llu\n",
		  (unsigned long long)k.tele_batches, (unsigned long long)k.tele_refused);
	sb_printf(&b,
		  "# HELP flotilla_telemetry_records_total Telemetry records committed.\n"
		  "# TYPE flotilla_telemetry_records_total counter\n"
		  "flotilla_telemetry_records_total{result=\"inserted\"} %llu\n"
		  "flotilla_telemetry_records_total{result=\"duplicate\"} %llu\n",
		  (unsigned long long)k.tele_inserted, (unsigned long long)k.tele_duplicates);
	sb_printf(&b,
		  "# HELP flotilla_telemetry_commits_total Ingestion transactions by result.\n"
		  "# TYPE flotilla_telemetry_commits_total counter\n"
		  "flotilla_telemetry_commits_total{result=\"ok\"} %llu\n"
		  "flotilla_telemetry_commits_total{result=\"error\"} %llu\n",
		  (unsigned long long)k.tele_commits, (unsigned long long)k.tele_commit_errors);
	sb_printf(&b,
		  "# HELP flotilla_bundle_pushes_total Bundle pushes by result.\n"
		  "# TYPE flotilla_bundle_pushes_total counter\n"
		  "flotilla_bundle_pushes_total{result=\"added\"} %llu\n"
		  "flotilla_bundle_pushes_total{result=\"existing\"} %llu\n"
		  "flotilla_bundle_pushes_total{result=\"refused\"} %llu\n",
		  (unsigned long long)k.bundles_added, (unsigned long long)k.bundles_existing,
		  (unsigned long long)k.bundles_refused);
	sb_printf(&b,
		  "# HELP flotilla_chunks_written_total Chunk store objects written.\n"
		  "# TYPE flotilla_chunks_written_total counter\n"
		  "flotilla_chunks_written_total %llu\n"
		  "# HELP flotilla_chunk_reads_total Chunk store range reads.\n"
		  "# TYPE flotilla_chunk_reads_total counter\n"
		  "flotilla_chunk_reads_total %llu\n",
		  (unsigned long long)k.chunks_written, (unsigned long long)k.chunk_reads);
	cJSON_Delete(m);
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*ret = b.p;
	return 0;
}
