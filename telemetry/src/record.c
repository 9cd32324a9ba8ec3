/* Record bodies: per-version metrics, per-device metrics, events. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/util.h>

#define JSON_INT_MAX 9007199254740991.0
#define CRASH_LOG_LINES_MAX 20
#define CRASH_LOG_LINE_BYTES 512
#define CRASH_CONTENT_BYTES 4096

FL_DEFINE_CLEANUP(cJSON, cJSON_Delete)

static const char *const err_names[TELE_ERR__COUNT] = {
	[TELE_ERR_TIMEOUT] = "timeout", [TELE_ERR_OVERLOAD] = "overload",
	[TELE_ERR_BAD_REQUEST] = "bad_request", [TELE_ERR_OOM] = "oom",
	[TELE_ERR_CRASH] = "crash", [TELE_ERR_INTERNAL] = "internal",
};

static const char *const event_names[TELE_EV__COUNT] = {
	[TELE_EV_INSTALL_STARTED] = "install_started",
	[TELE_EV_INSTALL_STAGED] = "install_staged",
	[TELE_EV_INSTALL_REJECTED] = "install_rejected",
	[TELE_EV_SWITCHED] = "switched",
	[TELE_EV_TRIAL_FAILED] = "trial_failed",
	[TELE_EV_COMMITTED] = "committed",
	[TELE_EV_ROLLED_BACK] = "rolled_back",
	[TELE_EV_RUNNER_CRASHED] = "runner_crashed",
	[TELE_EV_DISK_LOW] = "disk_low",
	[TELE_EV_CLOCK_JUMP] = "clock_jump",
};

const char *tele_err_kind_name(enum tele_err_kind kind)
{
	return (unsigned)kind < TELE_ERR__COUNT ? err_names[kind] : NULL;
}

const char *tele_event_kind_name(enum tele_event_kind kind)
{
	return (unsigned)kind < TELE_EV__COUNT ? event_names[kind] : NULL;
}

int tele_event_kind_from_name(const char *name, enum tele_event_kind *ret)
{
	if (!name)
		return -EINVAL;
	for (unsigned i = 0; i < TELE_EV__COUNT; i++)
		if (!strcmp(name, event_names[i])) {
			*ret = (enum tele_event_kind)i;
			return 0;
		}
	return -EINVAL;
}

static double jnum(uint64_t v)
{
	double d = (double)v;
	return d > JSON_INT_MAX ? JSON_INT_MAX : d;
}

/* cJSON_Add* return NULL on OOM; collect failures in one flag. */
static void add_num(cJSON *o, const char *k, double v, bool *oom)
{
	if (!cJSON_AddNumberToObject(o, k, isfinite(v) ? v : 0))
		*oom = true;
}

static void add_str(cJSON *o, const char *k, const char *v, bool *oom)
{
	if (!cJSON_AddStringToObject(o, k, v))
		*oom = true;
}

static void add_item(cJSON *o, const char *k, cJSON *item, bool *oom)
{
	if (!item) {
		*oom = true;
		return;
	}
	cJSON_AddItemToObject(o, k, item);
}

static cJSON *new_record(const char *type, int64_t t_s, bool *oom)
{
	cJSON *o = cJSON_CreateObject();
	if (!o) {
		*oom = true;
		return NULL;
	}
	add_str(o, "type", type, oom);
	add_num(o, "t", (double)(t_s < 0 ? 0 : t_s), oom);
	return o;
}

static cJSON *drift_to_json(const struct tele_drift *d)
{
	bool oom = false;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	add_num(o, "len_psi", d->len_psi, &oom);
	add_num(o, "class_psi", d->class_psi, &oom);
	add_num(o, "conf_psi", d->conf_psi, &oom);
	add_num(o, "empty_rate_delta", d->empty_rate_delta, &oom);
	add_num(o, "refusal_rate_delta", d->refusal_rate_delta, &oom);
	if (oom) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

int tele_record_model(const struct tele_model_metrics *m, int64_t t_s, cJSON **ret)
{
	bool oom = false;
	if (!fl_name_valid(m->model, TELE_NAME_MAX) || !fl_name_valid(m->version, TELE_NAME_MAX))
		return -EINVAL;
	_cleanup_(cJSON_Deletep) cJSON *o = new_record("model", t_s, &oom);
	if (!o)
		return -ENOMEM;
	add_str(o, "model", m->model, &oom);
	add_str(o, "version", m->version, &oom);
	add_num(o, "period_s", m->period_s, &oom);
	add_num(o, "requests", jnum(m->requests), &oom);
	cJSON *errs = cJSON_CreateObject();
	add_item(o, "errors", errs, &oom);
	for (unsigned i = 0; errs && i < TELE_ERR__COUNT; i++)
		if (m->errors[i])
			add_num(errs, err_names[i], jnum(m->errors[i]), &oom);
	add_item(o, "latency_us", tele_hist_to_json(&m->latency_us), &oom);
	add_num(o, "tokens_out", jnum(m->tokens_out), &oom);
	add_num(o, "gen_time_us", jnum(m->gen_time_us), &oom);
	double tps = m->gen_time_us ? (double)m->tokens_out * 1e6 / (double)m->gen_time_us : 0;
	add_num(o, "tokens_per_s", round(tps * 100) / 100, &oom);
	add_num(o, "queue_depth", m->queue_depth, &oom);
	add_num(o, "queue_depth_max", m->queue_depth_max, &oom);
	add_num(o, "runner_restarts", m->runner_restarts, &oom);
	if (m->has_quality)
		add_item(o, "quality", tele_quality_to_json(&m->quality), &oom);
	if (m->has_drift)
		add_item(o, "drift", drift_to_json(&m->drift), &oom);
	if (oom)
		return -ENOMEM;
	*ret = fl_steal_ptr(o);
	return 0;
}

int tele_record_device(const struct tele_device_metrics *d, int64_t t_s, cJSON **ret)
{
	bool oom = false;
	_cleanup_(cJSON_Deletep) cJSON *o = new_record("device", t_s, &oom);
	if (!o)
		return -ENOMEM;
	if (d->has_cpu) {
		add_num(o, "cpu_pct", round(d->cpu_pct * 100) / 100, &oom);
		add_num(o, "n_cpus", d->n_cpus, &oom);
	}
	if (d->has_rss)
		add_num(o, "rss_bytes", jnum(d->rss_bytes), &oom);
	if (d->has_mem) {
		add_num(o, "mem_total_bytes", jnum(d->mem_total_bytes), &oom);
		add_num(o, "mem_avail_bytes", jnum(d->mem_avail_bytes), &oom);
	}
	if (d->has_temp)
		add_num(o, "temp_mc", (double)d->temp_mc, &oom);
	if (d->has_disk) {
		add_num(o, "disk_free_bytes", jnum(d->disk_free_bytes), &oom);
		add_num(o, "disk_total_bytes", jnum(d->disk_total_bytes), &oom);
	}
	if (d->has_uptime)
		add_num(o, "uptime_s", jnum(d->uptime_s), &oom);
	add_num(o, "reconnects", jnum(d->reconnects), &oom);
	add_num(o, "tx_bytes", jnum(d->tx_bytes), &oom);
	add_num(o, "rx_bytes", jnum(d->rx_bytes), &oom);
	if (oom)
		return -ENOMEM;
	*ret = fl_steal_ptr(o);
	return 0;
}

int tele_record_event(const struct tele_event *ev, int64_t t_s, cJSON **ret)
{
	bool oom = false;
	const char *kind = tele_event_kind_name(ev->kind);
	if (!kind || !ev->reason || !fl_name_valid(ev->reason, TELE_REASON_MAX))
		return -EINVAL;
	if ((ev->model && !fl_name_valid(ev->model, TELE_NAME_MAX)) ||
	    (ev->version && !fl_name_valid(ev->version, TELE_NAME_MAX)) ||
	    (ev->version && !ev->model))
		return -EINVAL;
	if (ev->text && strnlen(ev->text, TELE_TEXT_MAX + 1) > TELE_TEXT_MAX)
		return -FL_ETOOBIG;
	if (ev->details && !cJSON_IsObject(ev->details))
		return -EINVAL;
	_cleanup_(cJSON_Deletep) cJSON *o = new_record("event", t_s, &oom);
	if (!o)
		return -ENOMEM;
	add_str(o, "kind", kind, &oom);
	if (ev->model)
		add_str(o, "model", ev->model, &oom);
	if (ev->version)
		add_str(o, "version", ev->version, &oom);
	add_str(o, "reason", ev->reason, &oom);
	if (ev->text)
		add_str(o, "text", ev->text, &oom);
	if (ev->details) {
		cJSON *d = cJSON_Duplicate(ev->details, true);
		add_item(o, "details", d, &oom);
		_cleanup_free_ char *s = d ? cJSON_PrintUnformatted(d) : NULL;
		if (!s)
			oom = true;
		else if (strlen(s) > TELE_DETAILS_MAX)
			return -FL_ETOOBIG;
	}
	if (oom)
		return -ENOMEM;
	*ret = fl_steal_ptr(o);
	return 0;
}

/* Cut S at MAX bytes without splitting a UTF-8 sequence. */
static cJSON *cut_string(const char *s, size_t max)
{
	size_t n = strnlen(s, max + 1);
	if (n > max) {
		n = max;
		while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
	}
	_cleanup_free_ char *c = strndup(s, n);
	return c ? cJSON_CreateString(c) : NULL;
}

cJSON *tele_crash_details(const struct tele_crash_info *info)
{
	bool oom = false;
	_cleanup_(cJSON_Deletep) cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	add_num(o, "signal", info->signal, &oom);
	add_num(o, "exit_code", info->exit_code, &oom);
	{
		/* Always present: an empty tail says the runner wrote nothing. */
		cJSON *a = cJSON_CreateArray();
		add_item(o, "log_tail", a, &oom);
		size_t n = info->log_lines ? info->n_log_lines : 0;
		size_t skip = n > CRASH_LOG_LINES_MAX ? n - CRASH_LOG_LINES_MAX : 0;
		for (size_t i = skip; a && i < n; i++) {
			cJSON *line = cut_string(info->log_lines[i] ? info->log_lines[i] : "",
						 CRASH_LOG_LINE_BYTES);
			if (!line) {
				oom = true;
				break;
			}
			cJSON_AddItemToArray(a, line);
		}
	}
	if (info->has_request) {
		cJSON *r = cJSON_CreateObject();
		add_item(o, "request", r, &oom);
		if (r) {
			add_num(r, "bytes", jnum(info->request_bytes), &oom);
			if (info->request_params && cJSON_IsObject(info->request_params))
				add_item(r, "params", cJSON_Duplicate(info->request_params, true),
					 &oom);
			/* The content is the user's data: only with an explicit opt-in. */
			if (info->include_content && info->request_content)
				add_item(r, "content",
					 cut_string(info->request_content, CRASH_CONTENT_BYTES),
					 &oom);
		}
	}
	if (oom)
		return NULL;
	return fl_steal_ptr(o);
}
