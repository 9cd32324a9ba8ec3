/* Log-bucket histograms and label-free quality signals. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/json.h>
#include <flotilla/tele_metrics.h>

#define LAST_BUCKET (TELE_HIST_BUCKETS - 1)
#define PSI_EPS 1e-4
/* Counters on the wire are JSON numbers: exact up to 2^53. */
#define JSON_INT_MAX 9007199254740991.0

double tele_hist_upper(unsigned i)
{
	if (i >= LAST_BUCKET)
		return INFINITY;
	return exp2((double)i / TELE_HIST_STEPS_PER_OCTAVE);
}

static double hist_lower(unsigned i)
{
	return i == 0 ? 0.0 : tele_hist_upper(i - 1);
}

unsigned tele_hist_bucket(double value)
{
	if (!(value > 1.0))
		return 0; /* also NaN */
	if (isinf(value))
		return LAST_BUCKET;
	double l = ceil(log2(value) * TELE_HIST_STEPS_PER_OCTAVE);
	if (l >= LAST_BUCKET)
		return LAST_BUCKET;
	unsigned i = l < 1 ? 1 : (unsigned)l;
	/* log2 rounding at exact bucket edges */
	if (i < LAST_BUCKET && value > tele_hist_upper(i))
		i++;
	else if (i > 1 && value <= tele_hist_upper(i - 1))
		i--;
	return i;
}

void tele_hist_reset(struct tele_hist *h)
{
	memset(h, 0, sizeof(*h));
}

void tele_hist_add(struct tele_hist *h, double value)
{
	if (isnan(value) || value < 0)
		value = 0;
	h->counts[tele_hist_bucket(value)]++;
	if (h->count == 0 || value < h->min)
		h->min = value;
	if (h->count == 0 || value > h->max)
		h->max = value;
	h->count++;
	h->sum += value;
}

void tele_hist_merge(struct tele_hist *dst, const struct tele_hist *src)
{
	if (src->count == 0)
		return;
	for (unsigned i = 0; i < TELE_HIST_BUCKETS; i++)
		dst->counts[i] += src->counts[i];
	if (dst->count == 0 || src->min < dst->min)
		dst->min = src->min;
	if (dst->count == 0 || src->max > dst->max)
		dst->max = src->max;
	dst->count += src->count;
	dst->sum += src->sum;
}

int tele_hist_percentile(const struct tele_hist *h, double q, double *ret)
{
	if (!(q >= 0.0 && q <= 1.0))
		return -EINVAL;
	if (h->count == 0)
		return -ENODATA;
	if (q == 0.0 || q == 1.0) {
		*ret = q == 0.0 ? h->min : h->max;
		return 0;
	}
	double rank = ceil(q * (double)h->count);
	if (rank < 1)
		rank = 1;
	double cum = 0;
	for (unsigned i = 0; i < TELE_HIST_BUCKETS; i++) {
		double c = (double)h->counts[i];
		if (c == 0 || cum + c < rank) {
			cum += c;
			continue;
		}
		double lo = fmax(hist_lower(i), h->min);
		double hi = fmin(tele_hist_upper(i), h->max);
		if (hi < lo)
			hi = lo;
		double frac = (rank - cum) / c;
		double v;
		if (lo <= 0.0)
			v = lo + (hi - lo) * frac;
		else
			v = lo * pow(hi / lo, frac);
		*ret = fmin(fmax(v, h->min), h->max);
		return 0;
	}
	/* counts disagree with count (merged garbage): report the maximum */
	*ret = h->max;
	return 0;
}

/* ------------------------------------------------------------------ quality */

void tele_quality_reset(struct tele_quality *q)
{
	memset(q, 0, sizeof(*q));
}

bool tele_quality_is_refusal(const char *text, size_t len)
{
	static const char *const openers[] = {
		"i'm sorry",   "i am sorry",     "sorry, i",      "i cannot",  "i can't",
		"i can not",   "i won't",        "i will not",    "i'm unable", "i am unable",
		"i'm not able", "i am not able", "as an ai",      "i apologize",
	};
	char buf[48];
	size_t n = 0;
	size_t i = 0;
	if (!text)
		return false;
	if (len > 256)
		len = 256;
	while (i < len && isspace((unsigned char)text[i]))
		i++;
	while (i < len && n < sizeof(buf) - 1) {
		unsigned char c = (unsigned char)text[i];
		/* U+2019 (right single quote) reads as an apostrophe */
		if (c == 0xe2 && i + 2 < len && (unsigned char)text[i + 1] == 0x80 &&
		    (unsigned char)text[i + 2] == 0x99) {
			buf[n++] = '\'';
			i += 3;
			continue;
		}
		buf[n++] = (char)tolower(c);
		i++;
	}
	buf[n] = '\0';
	for (size_t k = 0; k < sizeof(openers) / sizeof(openers[0]); k++)
		if (!strncmp(buf, openers[k], strlen(openers[k])))
			return true;
	return false;
}

void tele_quality_observe_output(struct tele_quality *q, const char *text, size_t len,
				 uint64_t n_tokens)
{
	q->outputs++;
	tele_hist_add(&q->out_len, (double)n_tokens);
	bool blank = true;
	size_t look = len > 256 ? 256 : len;
	for (size_t i = 0; text && i < look; i++)
		if (!isspace((unsigned char)text[i])) {
			blank = false;
			break;
		}
	if (blank && len <= 256)
		q->empty++;
	else if (tele_quality_is_refusal(text, len))
		q->refusals++;
}

int tele_quality_observe_class(struct tele_quality *q, unsigned class_idx, double confidence)
{
	if (class_idx >= TELE_MAX_CLASSES || !(confidence >= 0.0 && confidence <= 1.0))
		return -ERANGE;
	unsigned b = (unsigned)(confidence * TELE_CONF_BUCKETS);
	if (b >= TELE_CONF_BUCKETS)
		b = TELE_CONF_BUCKETS - 1;
	q->predictions++;
	q->class_counts[class_idx]++;
	q->conf_counts[b]++;
	if (class_idx + 1 > q->n_classes)
		q->n_classes = class_idx + 1;
	return 0;
}

static uint64_t sum_u64(const uint64_t *v, size_t n)
{
	uint64_t s = 0;
	for (size_t i = 0; i < n; i++)
		s += v[i];
	return s;
}

static double psi(const uint64_t *base, const uint64_t *cur, size_t n)
{
	uint64_t bt = sum_u64(base, n);
	uint64_t ct = sum_u64(cur, n);
	if (bt < TELE_DRIFT_MIN_SAMPLES || ct < TELE_DRIFT_MIN_SAMPLES)
		return -1;
	double s = 0;
	for (size_t i = 0; i < n; i++) {
		double b = fmax((double)base[i] / (double)bt, PSI_EPS);
		double c = fmax((double)cur[i] / (double)ct, PSI_EPS);
		s += (c - b) * log(c / b);
	}
	return s;
}

static double rate_delta(uint64_t bn, uint64_t bt, uint64_t cn, uint64_t ct)
{
	if (bt < TELE_DRIFT_MIN_BASELINE_OUTPUTS || ct < TELE_DRIFT_MIN_SAMPLES)
		return -1;
	return (double)cn / (double)ct - (double)bn / (double)bt;
}

void tele_quality_drift(const struct tele_quality *baseline, const struct tele_quality *current,
			struct tele_drift *ret)
{
	ret->len_psi = psi(baseline->out_len.counts, current->out_len.counts, TELE_HIST_BUCKETS);
	ret->class_psi = psi(baseline->class_counts, current->class_counts, TELE_MAX_CLASSES);
	ret->conf_psi = psi(baseline->conf_counts, current->conf_counts, TELE_CONF_BUCKETS);
	ret->empty_rate_delta =
		rate_delta(baseline->empty, baseline->outputs, current->empty, current->outputs);
	ret->refusal_rate_delta = rate_delta(baseline->refusals, baseline->outputs,
					     current->refusals, current->outputs);
}

/* ----------------------------------------------------------------- JSON I/O */

static double jnum(uint64_t v)
{
	double d = (double)v;
	return d > JSON_INT_MAX ? JSON_INT_MAX : d;
}

cJSON *tele_hist_to_json(const struct tele_hist *h)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *b = cJSON_AddArrayToObject(o, "b");
	if (!b || !cJSON_AddNumberToObject(o, "n", jnum(h->count)) ||
	    !cJSON_AddNumberToObject(o, "sum", isfinite(h->sum) ? h->sum : 0) ||
	    !cJSON_AddNumberToObject(o, "min", h->count ? h->min : 0) ||
	    !cJSON_AddNumberToObject(o, "max", h->count ? h->max : 0))
		goto oom;
	for (unsigned i = 0; i < TELE_HIST_BUCKETS; i++) {
		if (!h->counts[i])
			continue;
		cJSON *pair = cJSON_CreateArray();
		cJSON *ji = cJSON_CreateNumber(i);
		cJSON *jc = cJSON_CreateNumber(jnum(h->counts[i]));
		if (!pair || !ji || !jc) {
			cJSON_Delete(pair);
			cJSON_Delete(ji);
			cJSON_Delete(jc);
			goto oom;
		}
		cJSON_AddItemToArray(pair, ji);
		cJSON_AddItemToArray(pair, jc);
		cJSON_AddItemToArray(b, pair);
	}
	return o;
oom:
	cJSON_Delete(o);
	return NULL;
}

int tele_hist_from_json(const cJSON *o, struct tele_hist *ret)
{
	static const char *const keys[] = {"n", "sum", "min", "max", "b", NULL};
	struct tele_hist h;
	int64_t n;
	const cJSON *b;
	int r;

	tele_hist_reset(&h);
	if ((r = fl_json_check_keys(o, keys, NULL)) < 0 ||
	    (r = fl_json_get_int(o, "n", 0, INT64_C(9007199254740991), &n)) < 0 ||
	    (r = fl_json_get_double(o, "sum", 0, 1e300, &h.sum)) < 0 ||
	    (r = fl_json_get_double(o, "min", 0, 1e300, &h.min)) < 0 ||
	    (r = fl_json_get_double(o, "max", 0, 1e300, &h.max)) < 0 ||
	    (r = fl_json_get_arr(o, "b", &b)) < 0)
		return r;
	if (h.min > h.max)
		return -FL_ERANGE;
	uint64_t total = 0;
	int prev = -1;
	const cJSON *pair;
	cJSON_ArrayForEach(pair, b)
	{
		if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2)
			return -FL_ESCHEMA;
		const cJSON *ji = pair->child, *jc = pair->child->next;
		if (!cJSON_IsNumber(ji) || !cJSON_IsNumber(jc))
			return -FL_ESCHEMA;
		double di = ji->valuedouble, dc = jc->valuedouble;
		if (!(di >= 0 && di < TELE_HIST_BUCKETS && di == floor(di)) ||
		    !(dc >= 1 && dc <= JSON_INT_MAX && dc == floor(dc)))
			return -FL_ERANGE;
		if ((int)di <= prev)
			return -FL_ERANGE; /* ascending, no duplicates */
		prev = (int)di;
		h.counts[prev] = (uint64_t)dc;
		total += (uint64_t)dc;
		if (total > (uint64_t)JSON_INT_MAX)
			return -FL_ERANGE;
	}
	if (total != (uint64_t)n)
		return -FL_ERANGE;
	h.count = (uint64_t)n;
	*ret = h;
	return 0;
}

static cJSON *u64_array(const uint64_t *v, size_t n)
{
	cJSON *a = cJSON_CreateArray();
	for (size_t i = 0; a && i < n; i++) {
		cJSON *x = cJSON_CreateNumber(jnum(v[i]));
		if (!x) {
			cJSON_Delete(a);
			return NULL;
		}
		cJSON_AddItemToArray(a, x);
	}
	return a;
}

cJSON *tele_quality_to_json(const struct tele_quality *q)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *len = tele_hist_to_json(&q->out_len);
	if (!o || !len) {
		cJSON_Delete(o);
		cJSON_Delete(len);
		return NULL;
	}
	cJSON_AddItemToObject(o, "out_len", len);
	if (!cJSON_AddNumberToObject(o, "outputs", jnum(q->outputs)) ||
	    !cJSON_AddNumberToObject(o, "empty", jnum(q->empty)) ||
	    !cJSON_AddNumberToObject(o, "refusals", jnum(q->refusals)) ||
	    !cJSON_AddNumberToObject(o, "predictions", jnum(q->predictions)))
		goto oom;
	if (q->predictions) {
		cJSON *c = u64_array(q->class_counts, q->n_classes);
		cJSON *f = u64_array(q->conf_counts, TELE_CONF_BUCKETS);
		if (!c || !f) {
			cJSON_Delete(c);
			cJSON_Delete(f);
			goto oom;
		}
		cJSON_AddItemToObject(o, "classes", c);
		cJSON_AddItemToObject(o, "conf", f);
	}
	return o;
oom:
	cJSON_Delete(o);
	return NULL;
}

static int u64_array_from_json(const cJSON *a, size_t max, uint64_t *out, size_t *ret_n)
{
	if (!cJSON_IsArray(a))
		return -FL_ESCHEMA;
	size_t n = 0;
	const cJSON *x;
	cJSON_ArrayForEach(x, a)
	{
		if (n >= max)
			return -FL_ERANGE;
		if (!cJSON_IsNumber(x))
			return -FL_ESCHEMA;
		double d = x->valuedouble;
		if (!(d >= 0 && d <= JSON_INT_MAX && d == floor(d)))
			return -FL_ERANGE;
		out[n++] = (uint64_t)d;
	}
	*ret_n = n;
	return 0;
}

int tele_quality_from_json(const cJSON *o, struct tele_quality *ret)
{
	static const char *const keys[] = {"out_len", "outputs", "empty",   "refusals",
					   "predictions", "classes", "conf", NULL};
	struct tele_quality q;
	const cJSON *len;
	int64_t outputs, empty, refusals, predictions;
	int r;

	tele_quality_reset(&q);
	if ((r = fl_json_check_keys(o, keys, NULL)) < 0 ||
	    (r = fl_json_get_obj(o, "out_len", &len)) < 0 ||
	    (r = tele_hist_from_json(len, &q.out_len)) < 0 ||
	    (r = fl_json_get_int(o, "outputs", 0, INT64_C(9007199254740991), &outputs)) < 0 ||
	    (r = fl_json_get_int(o, "empty", 0, outputs, &empty)) < 0 ||
	    (r = fl_json_get_int(o, "refusals", 0, outputs, &refusals)) < 0 ||
	    (r = fl_json_get_int(o, "predictions", 0, INT64_C(9007199254740991), &predictions)) < 0)
		return r;
	if (empty + refusals > outputs)
		return -FL_ERANGE;
	q.outputs = (uint64_t)outputs;
	q.empty = (uint64_t)empty;
	q.refusals = (uint64_t)refusals;
	q.predictions = (uint64_t)predictions;
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "classes");
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, "conf");
	if ((c == NULL) != (f == NULL))
		return -FL_ESCHEMA;
	if (c) {
		size_t nc, nf;
		if ((r = u64_array_from_json(c, TELE_MAX_CLASSES, q.class_counts, &nc)) < 0 ||
		    (r = u64_array_from_json(f, TELE_CONF_BUCKETS, q.conf_counts, &nf)) < 0)
			return r;
		if (nf != TELE_CONF_BUCKETS || sum_u64(q.class_counts, nc) != q.predictions ||
		    sum_u64(q.conf_counts, nf) != q.predictions)
			return -FL_ERANGE;
		q.n_classes = (uint32_t)nc;
	} else if (q.predictions) {
		return -FL_ESCHEMA;
	}
	*ret = q;
	return 0;
}
