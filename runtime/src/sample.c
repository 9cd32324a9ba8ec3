/* Sampling: penalties, top-k/top-p/min-p filters, temperature, seeded draw. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flotilla/error.h"
#include "flotilla/sample.h"

struct cand {
	float logit;
	int32_t id;
};

struct rt_sampler {
	struct rt_sampling p;
	int n_vocab;
	uint64_t rng[4];
	int32_t *hist; /* ring of the last repeat_last_n tokens */
	int hist_n, hist_pos;
	struct cand *c;    /* n_vocab candidates */
	float *pen;        /* n_vocab: penalised logits */
	uint8_t *seen;     /* n_vocab flags for the penalty */
};

void rt_sampling_default(struct rt_sampling *p)
{
	p->temperature = 0.8f;
	p->top_k = 40;
	p->top_p = 0.95f;
	p->min_p = 0.05f;
	p->repeat_penalty = 1.0f;
	p->repeat_last_n = 64;
	p->seed = RT_SAMPLE_SEED_RANDOM;
}

void rt_sampling_greedy(struct rt_sampling *p)
{
	rt_sampling_default(p);
	p->temperature = 0.0f;
	p->seed = 0;
}

int rt_sampling_validate(const struct rt_sampling *p)
{
	if (!p || !(p->temperature <= 100.0f) || isnan(p->temperature) || p->top_k < 0 ||
	    p->top_k > RT_SAMPLE_MAX_TOP_K || !(p->top_p > 0.0f && p->top_p <= 1.0f) ||
	    !(p->min_p >= 0.0f && p->min_p <= 1.0f) ||
	    !(p->repeat_penalty > 0.0f && p->repeat_penalty <= 100.0f) || p->repeat_last_n < 0 ||
	    p->repeat_last_n > RT_SAMPLE_MAX_LAST_N)
		return -FL_ERANGE;
	return 0;
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro(uint64_t s[4])
{
	uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

void rt_sampler_reset(struct rt_sampler *s)
{
	uint64_t seed = s->p.seed;
	if (seed == RT_SAMPLE_SEED_RANDOM) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		seed = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	}
	for (int i = 0; i < 4; i++)
		s->rng[i] = splitmix64(&seed);
	s->hist_n = 0;
	s->hist_pos = 0;
}

int rt_sampler_new(const struct rt_sampling *p, int n_vocab, struct rt_sampler **ret_sampler)
{
	int r = rt_sampling_validate(p);
	if (r < 0)
		return r;
	if (n_vocab < 1)
		return -EINVAL;
	struct rt_sampler *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->p = *p;
	s->n_vocab = n_vocab;
	s->hist = calloc((size_t)p->repeat_last_n + 1, sizeof(int32_t));
	s->c = malloc((size_t)n_vocab * sizeof(struct cand));
	s->pen = malloc((size_t)n_vocab * sizeof(float));
	s->seen = calloc((size_t)n_vocab, 1);
	if (!s->hist || !s->c || !s->pen || !s->seen) {
		rt_sampler_free(s);
		return -ENOMEM;
	}
	rt_sampler_reset(s);
	*ret_sampler = s;
	return 0;
}

void rt_sampler_free(struct rt_sampler *s)
{
	if (!s)
		return;
	free(s->hist);
	free(s->c);
	free(s->pen);
	free(s->seen);
	free(s);
}

void rt_sampler_accept(struct rt_sampler *s, int32_t token)
{
	if (s->p.repeat_last_n == 0)
		return;
	s->hist[s->hist_pos] = token;
	s->hist_pos = (s->hist_pos + 1) % s->p.repeat_last_n;
	if (s->hist_n < s->p.repeat_last_n)
		s->hist_n++;
}

static int cand_desc(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	if (x->logit != y->logit)
		return x->logit > y->logit ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id; /* stable: lower id first */
}

/* Move the K best candidates (of N) to the front, sorted descending. */
static void top_k_sort(struct cand *c, int n, int k)
{
	if (k >= n || k <= 0) {
		qsort(c, (size_t)n, sizeof(*c), cand_desc);
		return;
	}
	/* quickselect the k best into c[0..k) */
	int lo = 0, hi = n - 1;
	while (lo < hi) {
		struct cand pivot = c[(lo + hi) / 2];
		int i = lo, j = hi;
		while (i <= j) {
			while (cand_desc(&c[i], &pivot) < 0)
				i++;
			while (cand_desc(&c[j], &pivot) > 0)
				j--;
			if (i <= j) {
				struct cand t = c[i];
				c[i] = c[j];
				c[j] = t;
				i++;
				j--;
			}
		}
		if (k - 1 <= j)
			hi = j;
		else if (k - 1 >= i)
			lo = i;
		else
			break;
	}
	qsort(c, (size_t)k, sizeof(*c), cand_desc);
}

int32_t rt_sampler_sample(struct rt_sampler *s, const float *logits)
{
	const int nv = s->n_vocab;
	const float *lg = logits;
	if (s->p.repeat_penalty != 1.0f && s->hist_n > 0) {
		memcpy(s->pen, logits, (size_t)nv * sizeof(float));
		for (int i = 0; i < s->hist_n; i++) {
			int32_t t = s->hist[i];
			if (t < 0 || t >= nv || s->seen[t])
				continue;
			s->seen[t] = 1;
			s->pen[t] = s->pen[t] > 0 ? s->pen[t] / s->p.repeat_penalty
						  : s->pen[t] * s->p.repeat_penalty;
		}
		for (int i = 0; i < s->hist_n; i++)
			if (s->hist[i] >= 0 && s->hist[i] < nv)
				s->seen[s->hist[i]] = 0;
		lg = s->pen;
	}
	if (s->p.temperature <= 0.0f) {
		int32_t best = 0;
		for (int i = 1; i < nv; i++)
			if (lg[i] > lg[best])
				best = i;
		return best;
	}
	int n = nv;
	for (int i = 0; i < nv; i++) {
		s->c[i].logit = lg[i];
		s->c[i].id = i;
	}
	top_k_sort(s->c, n, s->p.top_k);
	if (s->p.top_k > 0 && s->p.top_k < n)
		n = s->p.top_k;
	/* probabilities of the remaining candidates (sorted, c[0] is the max) */
	const float mx = s->c[0].logit;
	double sum = 0;
	for (int i = 0; i < n; i++)
		sum += exp((double)s->c[i].logit - mx);
	if (s->p.top_p < 1.0f) {
		double cum = 0;
		int keep = n;
		for (int i = 0; i < n; i++) {
			cum += exp((double)s->c[i].logit - mx) / sum;
			if (cum >= s->p.top_p) {
				keep = i + 1;
				break;
			}
		}
		n = keep;
	}
	if (s->p.min_p > 0.0f) {
		/* p_i >= min_p * p_max  <=>  logit_i >= max + log(min_p) */
		const double thr = (double)mx + log((double)s->p.min_p);
		int keep = 1;
		while (keep < n && (double)s->c[keep].logit >= thr)
			keep++;
		n = keep;
	}
	const double inv_t = 1.0 / s->p.temperature;
	double tot = 0;
	for (int i = 0; i < n; i++)
		tot += exp(((double)s->c[i].logit - mx) * inv_t);
	double u = (double)(xoshiro(s->rng) >> 11) * (1.0 / 9007199254740992.0) * tot;
	double acc = 0;
	for (int i = 0; i < n; i++) {
		acc += exp(((double)s->c[i].logit - mx) * inv_t);
		if (u < acc)
			return s->c[i].id;
	}
	return s->c[n - 1].id;
}
