/* Token sampling from logits, in llama.cpp's default order:
 *   repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
 * temperature <= 0 is greedy (argmax after the penalty). The random draw
 * uses a seeded xoshiro256** generator, so a seed gives the same tokens
 * every time on every machine.
 *
 * Thread-safety: a sampler is used by one thread at a time. */
#ifndef FLOTILLA_SAMPLE_H
#define FLOTILLA_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RT_SAMPLE_SEED_RANDOM UINT64_MAX /* seed from the clock */
#define RT_SAMPLE_MAX_TOP_K 100000
#define RT_SAMPLE_MAX_LAST_N 8192

struct rt_sampling {
	float temperature;    /* <= 0: greedy; at most 100 */
	int top_k;            /* 0: off */
	float top_p;          /* in (0, 1]; 1: off */
	float min_p;          /* in [0, 1]; 0: off */
	float repeat_penalty; /* > 0; 1: off. logit > 0 is divided, else multiplied */
	int repeat_last_n;    /* tokens of history the penalty looks at */
	uint64_t seed;
};

/* llama.cpp's defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * repeat_penalty 1.0 (off), repeat_last_n 64, seed RT_SAMPLE_SEED_RANDOM. */
void rt_sampling_default(struct rt_sampling *p);
/* Greedy settings (temperature 0, no penalty). */
void rt_sampling_greedy(struct rt_sampling *p);
/* 0, or -FL_ERANGE naming no field: a value outside the ranges above (NaN
 * included). */
int rt_sampling_validate(const struct rt_sampling *p);

struct rt_sampler;

/* New sampler for N_VOCAB logits. P is copied. Errors: -FL_ERANGE (see
 * rt_sampling_validate), -EINVAL (N_VOCAB < 1), -ENOMEM. Caller frees with
 * rt_sampler_free(). */
int rt_sampler_new(const struct rt_sampling *p, int n_vocab, struct rt_sampler **ret_sampler);
void rt_sampler_free(struct rt_sampler *s);

/* Forget the history and restart the random sequence from the seed. */
void rt_sampler_reset(struct rt_sampler *s);

/* Record TOKEN in the penalty history (prompt tokens and sampled ones). */
void rt_sampler_accept(struct rt_sampler *s, int32_t token);

/* Choose the next token from LOGITS (n_vocab floats, not modified).
 * Returns the token id (>= 0). Does not record it: call rt_sampler_accept.
 * Allocates nothing. */
int32_t rt_sampler_sample(struct rt_sampler *s, const float *logits);

#endif
