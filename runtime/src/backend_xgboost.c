/* The "xgboost" backend: gradient-boosted tree models (XGBoost JSON or UBJ
 * model files) through Debian's libxgboost C API. The library is loaded with
 * dlopen() when a model is opened, that is in a runner child process only:
 * the agent itself never maps it (libxgboost pulls in libstdc++ and OpenMP,
 * several MiB the agent without a model must not carry). docs/serving.md,
 * "Tabular backend". */
#ifdef FL_HAVE_XGBOOST
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <xgboost/c_api.h>

#include "flotilla/backend.h"
#include "flotilla/error.h"

#ifndef FL_XGBOOST_SONAME
#define FL_XGBOOST_SONAME "libxgboost.so"
#endif

/* The C API functions used, resolved once per process. */
static struct {
	__typeof__(XGBGetLastError) *last_error;
	__typeof__(XGBoosterCreate) *create;
	__typeof__(XGBoosterFree) *free_booster;
	__typeof__(XGBoosterLoadModel) *load;
	__typeof__(XGBoosterSetParam) *set_param;
	__typeof__(XGBoosterGetNumFeature) *num_feature;
	__typeof__(XGBoosterSaveJsonConfig) *json_config;
	__typeof__(XGBoosterBoostedRounds) *rounds;
	__typeof__(XGBoosterPredictFromDense) *predict_dense;
	void *dl;
	int err;
	char msg[256];
} xgb;
static pthread_once_t xgb_once = PTHREAD_ONCE_INIT;

static void xgb_load(void)
{
	const char *lib = getenv("FLOTILLA_XGBOOST_LIB");
	xgb.dl = dlopen(lib && lib[0] ? lib : FL_XGBOOST_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!xgb.dl) {
		snprintf(xgb.msg, sizeof(xgb.msg), "%s", dlerror());
		xgb.err = -FL_EUNSUPPORTED;
		return;
	}
#define SYM(field, name)                                                              \
	do {                                                                          \
		*(void **)&xgb.field = dlsym(xgb.dl, name);                           \
		if (!xgb.field) {                                                     \
			snprintf(xgb.msg, sizeof(xgb.msg), "libxgboost has no %s", name); \
			xgb.err = -FL_EUNSUPPORTED;                                   \
			return;                                                       \
		}                                                                     \
	} while (0)
	SYM(last_error, "XGBGetLastError");
	SYM(create, "XGBoosterCreate");
	SYM(free_booster, "XGBoosterFree");
	SYM(load, "XGBoosterLoadModel");
	SYM(set_param, "XGBoosterSetParam");
	SYM(num_feature, "XGBoosterGetNumFeature");
	SYM(json_config, "XGBoosterSaveJsonConfig");
	SYM(rounds, "XGBoosterBoostedRounds");
	SYM(predict_dense, "XGBoosterPredictFromDense");
#undef SYM
}

/* XGBoost's last error, first line only (the rest is a stack trace). */
static int last_error_line(void)
{
	const char *e = xgb.last_error();
	const char *nl = e ? strchr(e, '\n') : NULL;
	return e ? (int)(nl ? (size_t)(nl - e) : strlen(e)) : 0;
}

struct xgb_model {
	BoosterHandle h;
	size_t n_features;
	int n_class;        /* num_class of the model (0: not multi-class) */
	int rounds;
	enum rt_predict_kind kind;
	char objective[32];
	uint64_t file_bytes;
	int n_threads;
	uint64_t n_requests, n_errors, n_rows;
	double total_ms;
};

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n > k && !strcmp(s + n - k, suffix);
}

/* MODEL_PATH itself, or the only .json / .ubj file of a directory. */
static int model_file(const char *path, char **ret)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode)) {
		/* Only the JSON / UBJSON formats: XGBoost's legacy binary
		 * reader is not meant for untrusted input. Both start with '{'. */
		FILE *f = fopen(path, "rb");
		int c = f ? fgetc(f) : EOF;
		if (f)
			fclose(f);
		if ((!ends_with(path, ".json") && !ends_with(path, ".ubj")) || c != '{') {
			fprintf(stderr, "xgboost: %s: not an XGBoost JSON (.json) or UBJSON (.ubj) model\n",
				path);
			return -FL_EFORMAT;
		}
		*ret = strdup(path);
		return *ret ? 0 : -ENOMEM;
	}
	DIR *d = opendir(path);
	if (!d)
		return -errno;
	char *found = NULL;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!ends_with(de->d_name, ".json") && !ends_with(de->d_name, ".ubj"))
			continue;
		if (n++ == 0 && asprintf(&found, "%s/%s", path, de->d_name) < 0)
			found = NULL;
	}
	closedir(d);
	if (n != 1 || !found) {
		free(found);
		return n == 0 ? -FL_EMISSING : n > 1 ? -FL_EDUP : -ENOMEM;
	}
	int r = stat(found, &st) == 0 && !S_ISDIR(st.st_mode) ? model_file(found, ret) : -FL_EFORMAT;
	free(found);
	return r;
}

/* Objective and num_class from the booster's JSON configuration. */
static int read_config(struct xgb_model *x)
{
	bst_ulong len = 0;
	const char *cfg = NULL;
	if (xgb.json_config(x->h, &len, &cfg) != 0 || !cfg)
		return -FL_EFORMAT;
	cJSON *root = cJSON_ParseWithLength(cfg, (size_t)len);
	if (!root)
		return -FL_EFORMAT;
	cJSON *learner = cJSON_GetObjectItemCaseSensitive(root, "learner");
	cJSON *obj = cJSON_GetObjectItemCaseSensitive(learner, "objective");
	cJSON *name = cJSON_GetObjectItemCaseSensitive(obj, "name");
	cJSON *mp = cJSON_GetObjectItemCaseSensitive(learner, "learner_model_param");
	cJSON *nc = cJSON_GetObjectItemCaseSensitive(mp, "num_class");
	int r = 0;
	if (!cJSON_IsString(name) || strlen(name->valuestring) >= sizeof(x->objective)) {
		r = -FL_EFORMAT;
	} else {
		snprintf(x->objective, sizeof(x->objective), "%s", name->valuestring);
		if (cJSON_IsString(nc))
			x->n_class = atoi(nc->valuestring);
	}
	cJSON_Delete(root);
	if (r < 0)
		return r;
	const char *o = x->objective;
	if (!strcmp(o, "binary:logistic") || !strcmp(o, "reg:logistic"))
		x->kind = RT_PREDICT_BINARY;
	else if (!strcmp(o, "multi:softprob"))
		x->kind = RT_PREDICT_MULTICLASS;
	else if (!strcmp(o, "multi:softmax") || !strcmp(o, "binary:hinge"))
		x->kind = RT_PREDICT_CLASS;
	else
		x->kind = RT_PREDICT_VALUE; /* reg:*, count:*, survival:*, rank:*, logitraw */
	return 0;
}

static void xgb_close(void *impl)
{
	struct xgb_model *x = impl;
	if (!x)
		return;
	if (x->h)
		xgb.free_booster(x->h);
	free(x);
}

static int xgb_open(const char *model_path, const struct rt_backend_opts *opts, void **ret_impl)
{
	pthread_once(&xgb_once, xgb_load);
	if (xgb.err) {
		fprintf(stderr, "xgboost: %s\n", xgb.msg);
		return xgb.err;
	}
	char *file = NULL;
	int r = model_file(model_path, &file);
	if (r < 0)
		return r;
	struct stat st;
	struct xgb_model *x = calloc(1, sizeof(*x));
	if (!x) {
		free(file);
		return -ENOMEM;
	}
	if (stat(file, &st) == 0)
		x->file_bytes = (uint64_t)st.st_size;
	if (xgb.create(NULL, 0, &x->h) != 0) {
		r = -ENOMEM;
		goto fail;
	}
	if (xgb.load(x->h, file) != 0) {
		/* a model file XGBoost does not read */
		fprintf(stderr, "xgboost: %s: %.*s\n", file, last_error_line(), xgb.last_error());
		r = -FL_EFORMAT;
		goto fail;
	}
	x->n_threads = opts->n_threads;
	if (opts->n_threads > 0) {
		char n[16];
		snprintf(n, sizeof(n), "%d", opts->n_threads);
		xgb.set_param(x->h, "nthread", n);
	}
	bst_ulong nf = 0;
	if (xgb.num_feature(x->h, &nf) != 0 || nf == 0 || nf > RT_PREDICT_MAX_COLS) {
		fprintf(stderr, "xgboost: %s: model has %llu features\n", file, (unsigned long long)nf);
		r = -FL_EFORMAT;
		goto fail;
	}
	x->n_features = (size_t)nf;
	if (xgb.rounds(x->h, &x->rounds) != 0)
		x->rounds = 0;
	r = read_config(x);
	if (r < 0)
		goto fail;
	free(file);
	*ret_impl = x;
	return 0;
fail:
	free(file);
	xgb_close(x);
	return r;
}

static int xgb_predict(void *impl, const struct rt_predict_request *req,
		       struct rt_predict_result *ret, char *why, size_t why_len)
{
	struct xgb_model *x = impl;
	if (req->n_cols != x->n_features) {
		x->n_errors++;
		snprintf(why, why_len, "rows have %zu values, the model takes %zu features",
			 req->n_cols, x->n_features);
		return -EINVAL;
	}
	double t0 = now_ms();
	/* The rows as a NumPy-style array interface over the caller's memory:
	 * no copy. */
	char iface[160];
	snprintf(iface, sizeof(iface),
		 "{\"data\":[%llu,true],\"shape\":[%zu,%zu],\"typestr\":\"<f4\",\"version\":3}",
		 (unsigned long long)(uintptr_t)req->values, req->n_rows, req->n_cols);
	static const char config[] = "{\"type\":0,\"training\":false,\"iteration_begin\":0,"
				     "\"iteration_end\":0,\"strict_shape\":false,\"cache_id\":0,"
				     "\"missing\":NaN}";
	const bst_ulong *shape = NULL;
	bst_ulong dim = 0;
	const float *out = NULL;
	if (xgb.predict_dense(x->h, iface, config, NULL, &shape, &dim, &out) != 0) {
		x->n_errors++;
		snprintf(why, why_len, "xgboost: %.*s", last_error_line(), xgb.last_error());
		return -FL_EPROTO;
	}
	size_t total = 1;
	for (bst_ulong i = 0; i < dim; i++)
		total *= (size_t)shape[i];
	if (dim < 1 || shape[0] != req->n_rows || total == 0 || total % req->n_rows) {
		x->n_errors++;
		snprintf(why, why_len, "xgboost: unexpected output shape");
		return -FL_EPROTO;
	}
	float *v = malloc(total * sizeof(float));
	if (!v) {
		x->n_errors++;
		return -ENOMEM;
	}
	memcpy(v, out, total * sizeof(float));
	*ret = (struct rt_predict_result){.values = v, .n_rows = req->n_rows,
					  .n_out = total / req->n_rows, .kind = x->kind};
	/* a softprob model of one output per row would be odd; call it a value */
	if (ret->kind == RT_PREDICT_MULTICLASS && ret->n_out < 2)
		ret->kind = RT_PREDICT_VALUE;
	memcpy(ret->objective, x->objective, sizeof(ret->objective));
	ret->ms = now_ms() - t0;
	x->n_requests++;
	x->n_rows += req->n_rows;
	x->total_ms += ret->ms;
	return 0;
}

static int xgb_stats(void *impl, struct rt_backend_stats *ret)
{
	struct xgb_model *x = impl;
	memset(ret, 0, sizeof(*ret));
	snprintf(ret->backend, sizeof(ret->backend), "xgboost");
	snprintf(ret->model, sizeof(ret->model), "%s %zu features %d rounds", x->objective,
		 x->n_features, x->rounds);
	ret->n_requests = x->n_requests;
	ret->n_errors = x->n_errors;
	ret->n_prompt_tokens = x->n_rows; /* rows predicted */
	ret->gen_ms = x->total_ms;
	ret->mem_bytes = x->file_bytes;
	ret->n_threads = x->n_threads;
	return 0;
}

const struct rt_backend_ops rt_backend_xgboost_ops = {
	.name = "xgboost",
	.open = xgb_open,
	.stats = xgb_stats,
	.close = xgb_close,
	.predict = xgb_predict,
};
#endif
