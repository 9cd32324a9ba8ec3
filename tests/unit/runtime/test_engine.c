/* Engine tests on tiny random models written with the GGUF writer:
 * logits vs a plain double-precision forward pass (llama, qwen2 biases,
 * qwen3 q/k norms, GQA, tied embeddings, rope_freqs), batched vs
 * token-by-token eval, 1 vs 2 threads, determinism, F32 vs quantized, errors.
 *
 * Tolerances: engine (F32 weights, F32 KV) vs double reference: max abs
 * logit difference <= 2e-3 (logits are O(1); float accumulation); batched vs
 * token-by-token: <= 1e-5 (the kernels accumulate in the same order either
 * way, so in practice bitwise equal); 1 vs 2 threads: bitwise equal; other
 * weight types vs the reference on their dequantized weights: a few percent
 * of max |logit| (activations are quantized to 8 bits, as in llama.cpp). */
/* gcc 12.2 for aarch64 crashes (internal compiler error in
 * vect_transform_reduction) on this file's fmax reductions at -O2; the test
 * gains nothing from vectorization. */
#if defined(__aarch64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-vectorize")
#endif
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "flotilla/engine.h"
#include "flotilla/error.h"
#include "flotilla/gguf.h"
#include "flotilla/gguf_write.h"
#include "flotilla/kernels.h"
#include "flotilla/backend.h"
#include "flotilla/tokenizer.h"

/* Tiny model geometry (multiples of 256 so every K-quant fits). */
#define D 256
#define NFF 512
#define NV 300
#define NL 2

struct spec {
	const char *arch;
	uint32_t wtype;
	int n_head, n_head_kv, head_dim;
	bool tied, rope_freqs;
	uint64_t seed;
	float rope_linear; /* linear rope scaling factor, 0: none */
	bool norm_f16;     /* norm weights stored as F16 (engine converts them) */
	const char *rope_scaling; /* scaling type string to write, or NULL */
};

static uint64_t g_rng;
static float rnd(void) /* uniform [-1, 1) */
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return (float)((double)(g_rng >> 11) / 4503599627370496.0 - 1.0);
}

static float *rnd_vec(size_t n, float scale, float offset)
{
	float *v = malloc(n * sizeof(float));
	assert_non_null(v);
	for (size_t i = 0; i < n; i++)
		v[i] = offset + rnd() * scale;
	return v;
}

static void add_t(struct rt_gguf_writer *w, const char *name, uint32_t type, int64_t n_in,
		  int64_t n_out, float scale, float offset)
{
	int64_t ne[2] = {n_in, n_out};
	float *v = rnd_vec((size_t)(n_in * n_out), scale, offset);
	assert_int_equal(rt_gguf_add_tensor(w, name, type, n_out == 1 ? 1 : 2, ne, v), 0);
	free(v);
}

/* Writer holding model S with NV tokens (and the tiny tokenizer if VOCAB). */
static struct rt_gguf_writer *model_writer(const struct spec *s, int nv, bool vocab)
{
	struct rt_gguf_writer *w = NULL;
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	if (vocab)
		assert_int_equal(rt_tok_tiny_vocab(w), 0);
	char k[96];
	const char *a = s->arch;
	g_rng = s->seed * 2654435761u + 1;
	assert_int_equal(rt_gguf_add_str(w, "general.architecture", a), 0);
#define KEY(x) (snprintf(k, sizeof(k), "%s.%s", a, x), k)
	assert_int_equal(rt_gguf_add_u32(w, KEY("context_length"), 512), 0);
	assert_int_equal(rt_gguf_add_u32(w, KEY("embedding_length"), D), 0);
	assert_int_equal(rt_gguf_add_u32(w, KEY("block_count"), NL), 0);
	assert_int_equal(rt_gguf_add_u32(w, KEY("feed_forward_length"), NFF), 0);
	assert_int_equal(rt_gguf_add_u32(w, KEY("attention.head_count"), (uint32_t)s->n_head), 0);
	assert_int_equal(rt_gguf_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)s->n_head_kv), 0);
	if (s->head_dim * s->n_head != D) {
		assert_int_equal(rt_gguf_add_u32(w, KEY("attention.key_length"), (uint32_t)s->head_dim), 0);
		assert_int_equal(rt_gguf_add_u32(w, KEY("attention.value_length"), (uint32_t)s->head_dim), 0);
	}
	assert_int_equal(rt_gguf_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-6f), 0);
	assert_int_equal(rt_gguf_add_f32(w, KEY("rope.freq_base"), 10000.0f), 0);
	if (s->rope_scaling)
		assert_int_equal(rt_gguf_add_str(w, KEY("rope.scaling.type"), s->rope_scaling), 0);
	if (s->rope_linear > 0)
		assert_int_equal(rt_gguf_add_f32(w, KEY("rope.scaling.factor"), s->rope_linear), 0);
#undef KEY
	const int qd = s->n_head * s->head_dim, kvd = s->n_head_kv * s->head_dim;
	const uint32_t wt = s->wtype;
	add_t(w, "token_embd.weight", wt, D, nv, 1.0f, 0);
	const uint32_t nt = s->norm_f16 ? RT_GGML_TYPE_F16 : RT_GGML_TYPE_F32;
	add_t(w, "output_norm.weight", nt, D, 1, 0.2f, 1.0f);
	if (!s->tied)
		add_t(w, "output.weight", wt, D, nv, 0.1f, 0);
	if (s->rope_freqs)
		add_t(w, "rope_freqs.weight", RT_GGML_TYPE_F32, s->head_dim / 2, 1, 0.5f, 2.0f);
	for (int l = 0; l < NL; l++) {
		char n[64];
#define NM(x) (snprintf(n, sizeof(n), "blk.%d.%s", l, x), n)
		add_t(w, NM("attn_norm.weight"), nt, D, 1, 0.2f, 1.0f);
		add_t(w, NM("attn_q.weight"), wt, D, qd, 0.12f, 0);
		add_t(w, NM("attn_k.weight"), wt, D, kvd, 0.12f, 0);
		add_t(w, NM("attn_v.weight"), wt, D, kvd, 0.1f, 0);
		if (strcmp(s->arch, "qwen2") == 0) {
			add_t(w, NM("attn_q.bias"), RT_GGML_TYPE_F32, qd, 1, 0.5f, 0);
			add_t(w, NM("attn_k.bias"), RT_GGML_TYPE_F32, kvd, 1, 0.5f, 0);
			add_t(w, NM("attn_v.bias"), RT_GGML_TYPE_F32, kvd, 1, 0.5f, 0);
		}
		if (strcmp(s->arch, "qwen3") == 0) {
			add_t(w, NM("attn_q_norm.weight"), RT_GGML_TYPE_F32, s->head_dim, 1, 0.2f, 1.0f);
			add_t(w, NM("attn_k_norm.weight"), RT_GGML_TYPE_F32, s->head_dim, 1, 0.2f, 1.0f);
		}
		add_t(w, NM("attn_output.weight"), wt, qd, D, 0.1f, 0);
		add_t(w, NM("ffn_norm.weight"), nt, D, 1, 0.2f, 1.0f);
		add_t(w, NM("ffn_gate.weight"), wt, D, NFF, 0.1f, 0);
		add_t(w, NM("ffn_up.weight"), wt, D, NFF, 0.1f, 0);
		add_t(w, NM("ffn_down.weight"), wt, NFF, D, 0.08f, 0);
#undef NM
	}
	return w;
}

/* Write the model to memory; *ret_buf must be freed by the caller. */
static struct rt_gguf *make_model(const struct spec *s, void **ret_buf)
{
	struct rt_gguf_writer *w = model_writer(s, NV, false);
	void *buf = NULL;
	size_t len = 0;
	assert_int_equal(rt_gguf_writer_to_memory(w, &buf, &len), 0);
	rt_gguf_writer_free(w);
	struct rt_gguf *g = NULL;
	assert_int_equal(rt_gguf_open_memory(buf, len, &g), 0);
	*ret_buf = buf;
	return g;
}

/* ------------------------------------------- double-precision reference */

static double *deq(const struct rt_gguf *g, const char *name, size_t *ret_n)
{
	const struct rt_gguf_tensor *t = rt_gguf_find_tensor(g, name);
	if (!t)
		return NULL;
	float *f = malloc(t->n_elements * sizeof(float));
	double *d = malloc(t->n_elements * sizeof(double));
	assert_true(f && d);
	assert_int_equal(rt_dequantize_row_ref(t->type, t->data, f, (int64_t)t->n_elements), 0);
	for (uint64_t i = 0; i < t->n_elements; i++)
		d[i] = f[i];
	free(f);
	if (ret_n)
		*ret_n = t->n_elements;
	return d;
}

static void ref_rms(double *x, int n, const double *w, double eps)
{
	double ss = 0;
	for (int i = 0; i < n; i++)
		ss += x[i] * x[i];
	double sc = 1.0 / sqrt(ss / n + eps);
	for (int i = 0; i < n; i++)
		x[i] = x[i] * sc * (w ? w[i] : 1.0);
}

static void ref_mv(const double *W, int n_in, int n_out, const double *x, double *y)
{
	for (int r = 0; r < n_out; r++) {
		double s = 0;
		for (int c = 0; c < n_in; c++)
			s += W[(size_t)r * n_in + c] * x[c];
		y[r] = s;
	}
}

static double g_ref_freq_scale = 1.0;

static void ref_rope(double *v, int hd, int pos, bool neox, const double *ff)
{
	for (int i = 0; i < hd / 2; i++) {
		double th = pos * pow(10000.0, -2.0 * i / hd) / (ff ? ff[i] : 1.0) * g_ref_freq_scale;
		int a = neox ? i : 2 * i, b = neox ? i + hd / 2 : 2 * i + 1;
		double x0 = v[a], x1 = v[b];
		v[a] = x0 * cos(th) - x1 * sin(th);
		v[b] = x0 * sin(th) + x1 * cos(th);
	}
}

/* Logits of every position of TOKENS (N x NV doubles, caller frees). */
static double *ref_forward(const struct rt_gguf *g, const struct spec *s, const int32_t *tokens,
			   int n)
{
	const int hd = s->head_dim, nh = s->n_head, nkv = s->n_head_kv;
	const int qd = nh * hd, kvd = nkv * hd;
	const bool neox = strcmp(s->arch, "llama") != 0;
	double *emb = deq(g, "token_embd.weight", NULL);
	double *out_w = s->tied ? emb : deq(g, "output.weight", NULL);
	double *onorm = deq(g, "output_norm.weight", NULL);
	double *ff = s->rope_freqs ? deq(g, "rope_freqs.weight", NULL) : NULL;
	double *x = calloc((size_t)n * D, sizeof(double));
	double *K = calloc((size_t)n * kvd, sizeof(double)), *V = calloc((size_t)n * kvd, sizeof(double));
	double *q = calloc((size_t)n * qd, sizeof(double)), *att = calloc(qd, sizeof(double));
	double *xn = calloc(NFF > qd ? NFF : qd, sizeof(double)), *tmp = calloc(NFF, sizeof(double));
	double *g1 = calloc(NFF, sizeof(double)), *u1 = calloc(NFF, sizeof(double));
	double *sc = calloc((size_t)n, sizeof(double));
	double *logits = calloc((size_t)n * NV, sizeof(double));
	for (int t = 0; t < n; t++)
		memcpy(x + (size_t)t * D, emb + (size_t)tokens[t] * D, D * sizeof(double));
	for (int l = 0; l < NL; l++) {
		char nm[64];
#define L(x) (snprintf(nm, sizeof(nm), "blk.%d.%s", l, x), deq(g, nm, NULL))
		double *an = L("attn_norm.weight"), *wq = L("attn_q.weight"), *wk = L("attn_k.weight"),
		       *wv = L("attn_v.weight"), *wo = L("attn_output.weight"),
		       *fn = L("ffn_norm.weight"), *wg = L("ffn_gate.weight"), *wu = L("ffn_up.weight"),
		       *wd = L("ffn_down.weight"), *bq = L("attn_q.bias"), *bk = L("attn_k.bias"),
		       *bv = L("attn_v.bias"), *qn = L("attn_q_norm.weight"), *kn = L("attn_k_norm.weight");
#undef L
		for (int t = 0; t < n; t++) {
			memcpy(xn, x + (size_t)t * D, D * sizeof(double));
			ref_rms(xn, D, an, 1e-6);
			double *qt = q + (size_t)t * qd, *kt = K + (size_t)t * kvd, *vt = V + (size_t)t * kvd;
			ref_mv(wq, D, qd, xn, qt);
			ref_mv(wk, D, kvd, xn, kt);
			ref_mv(wv, D, kvd, xn, vt);
			for (int i = 0; bq && i < qd; i++)
				qt[i] += bq[i];
			for (int i = 0; bk && i < kvd; i++)
				kt[i] += bk[i];
			for (int i = 0; bv && i < kvd; i++)
				vt[i] += bv[i];
			for (int h = 0; h < nh; h++) {
				if (qn)
					ref_rms(qt + h * hd, hd, qn, 1e-6);
				ref_rope(qt + h * hd, hd, t, neox, ff);
			}
			for (int h = 0; h < nkv; h++) {
				if (kn)
					ref_rms(kt + h * hd, hd, kn, 1e-6);
				ref_rope(kt + h * hd, hd, t, neox, ff);
			}
		}
		for (int t = 0; t < n; t++) {
			for (int h = 0; h < nh; h++) {
				int kh = h / (nh / nkv);
				double mx = -1e300, sum = 0;
				for (int p = 0; p <= t; p++) {
					double s2 = 0;
					for (int i = 0; i < hd; i++)
						s2 += q[(size_t)t * qd + h * hd + i] * K[(size_t)p * kvd + kh * hd + i];
					sc[p] = s2 / sqrt((double)hd);
					mx = fmax(mx, sc[p]);
				}
				for (int p = 0; p <= t; p++)
					sum += (sc[p] = exp(sc[p] - mx));
				for (int i = 0; i < hd; i++) {
					double o = 0;
					for (int p = 0; p <= t; p++)
						o += sc[p] / sum * V[(size_t)p * kvd + kh * hd + i];
					att[h * hd + i] = o;
				}
			}
			ref_mv(wo, qd, D, att, tmp);
			for (int i = 0; i < D; i++)
				x[(size_t)t * D + i] += tmp[i];
			memcpy(xn, x + (size_t)t * D, D * sizeof(double));
			ref_rms(xn, D, fn, 1e-6);
			ref_mv(wg, D, NFF, xn, g1);
			ref_mv(wu, D, NFF, xn, u1);
			for (int i = 0; i < NFF; i++)
				g1[i] = g1[i] / (1 + exp(-g1[i])) * u1[i];
			ref_mv(wd, NFF, D, g1, tmp);
			for (int i = 0; i < D; i++)
				x[(size_t)t * D + i] += tmp[i];
		}
		free(an); free(wq); free(wk); free(wv); free(wo); free(fn); free(wg); free(wu);
		free(wd); free(bq); free(bk); free(bv); free(qn); free(kn);
	}
	for (int t = 0; t < n; t++) {
		memcpy(xn, x + (size_t)t * D, D * sizeof(double));
		ref_rms(xn, D, onorm, 1e-6);
		ref_mv(out_w, D, NV, xn, logits + (size_t)t * NV);
	}
	if (!s->tied)
		free(out_w);
	free(emb); free(onorm); free(ff); free(x); free(K); free(V); free(q); free(att);
	free(xn); free(tmp); free(g1); free(u1); free(sc);
	return logits;
}

/* ---------------------------------------------------------------- tests */

static const int32_t k_prompt[] = {1, 17, 254, 3, 99, 42, 42, 7, 280, 5, 12, 150, 64, 33};
#define NP ((int)(sizeof(k_prompt) / sizeof(k_prompt[0])))

static struct rt_engine *new_engine(const struct rt_gguf *g, int threads, uint32_t kv, int batch)
{
	struct rt_engine_opts o;
	rt_engine_opts_default(&o);
	o.n_threads = threads;
	o.kv_type = kv;
	o.n_batch = batch;
	o.n_ctx = 128;
	struct rt_engine *e = NULL;
	assert_int_equal(rt_engine_new(g, &o, &e), 0);
	return e;
}

static double max_diff(const float *a, const float *b, int n)
{
	double m = 0;
	for (int i = 0; i < n; i++)
		m = fmax(m, fabs((double)a[i] - (double)b[i]));
	return m;
}

static void check_vs_ref(const struct spec *s)
{
	void *buf;
	struct rt_gguf *g = make_model(s, &buf);
	g_ref_freq_scale = s->rope_linear > 0 ? 1.0 / s->rope_linear : 1.0;
	double *ref = ref_forward(g, s, k_prompt, NP);
	struct rt_engine *e = new_engine(g, 2, RT_GGML_TYPE_F32, 5); /* chunks of 5: 3 chunks */
	const struct rt_model_info *in = rt_engine_info(e);
	assert_int_equal(in->n_vocab, NV);
	assert_int_equal(in->head_dim, s->head_dim);
	assert_int_equal(in->tied_embeddings, s->tied);
	assert_int_equal(in->has_rope_freqs, s->rope_freqs);
	assert_int_equal(rt_engine_eval(e, k_prompt, NP, true), 0);
	assert_int_equal(rt_engine_n_past(e), NP);
	double worst = 0, mag = 0;
	for (int t = 0; t < NP; t++) {
		const float *lg = rt_engine_logits(e, t);
		assert_non_null(lg);
		for (int i = 0; i < NV; i++) {
			worst = fmax(worst, fabs(lg[i] - ref[(size_t)t * NV + i]));
			mag = fmax(mag, fabs(ref[(size_t)t * NV + i]));
		}
	}
	assert_true(mag > 0.1); /* the model is not degenerate */
	if (worst > 2e-3)
		fail_msg("%s: max |logit - ref| = %g (max |ref| %g)", s->arch, worst, mag);
	assert_null(rt_engine_logits(e, NP));
	assert_true(rt_engine_logits(e, -1) == rt_engine_logits(e, -1));
	assert_memory_equal(rt_engine_logits(e, -1), rt_engine_logits(e, NP - 1), NV * sizeof(float));
	rt_engine_free(e);
	free(ref);
	rt_gguf_free(g);
	free(buf);
}

static void test_llama_vs_reference(void **state)
{
	(void)state;
	struct spec s = {"llama", RT_GGML_TYPE_F32, 8, 2, 32, false, false, 1, 0, false, NULL};
	check_vs_ref(&s);
	s.tied = true; /* no output.weight */
	s.rope_freqs = true;
	s.seed = 2;
	check_vs_ref(&s);
	/* linear rope scaling, F16 norm weights */
	s.tied = false;
	s.rope_freqs = false;
	s.rope_scaling = "linear";
	s.rope_linear = 4.0f;
	s.norm_f16 = true;
	s.seed = 3;
	check_vs_ref(&s);
	g_ref_freq_scale = 1.0;
}

static void test_qwen2_vs_reference(void **state)
{
	(void)state;
	struct spec s = {"qwen2", RT_GGML_TYPE_F32, 4, 2, 64, true, false, 3, 0, false, NULL};
	check_vs_ref(&s);
}

static void test_qwen3_vs_reference(void **state)
{
	(void)state;
	/* head_dim 64 with 8 heads: q is 512 wide while the model is 256 */
	struct spec s = {"qwen3", RT_GGML_TYPE_F32, 8, 4, 64, false, false, 4, 0, false, NULL};
	check_vs_ref(&s);
}

/* Greedy generation of N tokens after the prompt. */
static void greedy(struct rt_engine *e, int32_t *out, int n)
{
	assert_int_equal(rt_engine_eval(e, k_prompt, NP, false), 0);
	for (int i = 0; i < n; i++) {
		const float *lg = rt_engine_logits(e, -1);
		int best = 0;
		for (int v = 1; v < NV; v++)
			if (lg[v] > lg[best])
				best = v;
		out[i] = best;
		assert_int_equal(rt_engine_eval(e, &out[i], 1, false), 0);
	}
}

static void test_batch_threads_determinism(void **state)
{
	(void)state;
	const uint32_t types[] = {RT_GGML_TYPE_F32, RT_GGML_TYPE_F16, RT_GGML_TYPE_Q8_0,
				  RT_GGML_TYPE_Q4_0, RT_GGML_TYPE_Q4_K, RT_GGML_TYPE_Q6_K};
	for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
		struct spec s = {"llama", types[ti], 8, 2, 32, false, false, 7, 0, false, NULL};
		void *buf;
		struct rt_gguf *g = make_model(&s, &buf);
		/* batched (one chunk) vs token by token, F16 KV like llama.cpp */
		struct rt_engine *a = new_engine(g, 1, RT_GGML_TYPE_F16, 64);
		struct rt_engine *b = new_engine(g, 2, RT_GGML_TYPE_F16, 64);
		assert_int_equal(rt_engine_eval(a, k_prompt, NP, true), 0);
		for (int t = 0; t < NP; t++) {
			assert_int_equal(rt_engine_eval(b, &k_prompt[t], 1, false), 0);
			double dd = max_diff(rt_engine_logits(a, t), rt_engine_logits(b, -1), NV);
			/* F32/F16 weights: one token uses ggml_vec_dot_f32/f16's
			 * order, a batch tinyBLAS's (as llama.cpp), so they differ
			 * in the last bits (F32: up to 1e-4 here; F16: 1.5e-3, the
			 * next layer's rounding to F16 amplifies them, llama.cpp's
			 * own spread is the same); the quantized types share one
			 * order. */
			double tol = types[ti] == RT_GGML_TYPE_F32   ? 1e-3
				     : types[ti] == RT_GGML_TYPE_F16 ? 5e-3
								     : 1e-5;
			if (dd > tol)
				fail_msg("%s pos %d: batched vs single max diff %g", rt_ggml_type_name(types[ti]), t, dd);
		}
		rt_engine_free(a);
		rt_engine_free(b);
		/* 1 vs 2 threads, and twice the same: identical tokens and logits */
		int32_t o1[24], o2[24], o3[24];
		a = new_engine(g, 1, RT_GGML_TYPE_F16, 8);
		b = new_engine(g, 2, RT_GGML_TYPE_F16, 8);
		greedy(a, o1, 24);
		greedy(b, o2, 24);
		assert_memory_equal(o1, o2, sizeof(o1));
		assert_memory_equal(rt_engine_logits(a, -1), rt_engine_logits(b, -1), NV * sizeof(float));
		assert_int_equal(rt_engine_truncate(b, 0), 0);
		greedy(b, o3, 24);
		assert_memory_equal(o1, o3, sizeof(o1));
		rt_engine_free(a);
		rt_engine_free(b);
		rt_gguf_free(g);
		free(buf);
	}
}

/* The last layer's FFN runs only for the tokens whose logits are wanted
 * (llama.cpp's inp_out_ids): a prompt in chunks (the chunks before the last
 * skip that FFN) gives bitwise the logits of one chunk, and the last prompt
 * position agrees with an all-logits evaluation (there the FFN takes the
 * batch order: last bits only). */
static void test_last_layer_output_rows(void **state)
{
	(void)state;
	const uint32_t types[] = {RT_GGML_TYPE_F32, RT_GGML_TYPE_F16, RT_GGML_TYPE_Q8_0};
	for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
		struct spec s = {"llama", types[ti], 8, 2, 32, false, false, 11, 0, false, NULL};
		void *buf;
		struct rt_gguf *g = make_model(&s, &buf);
		struct rt_engine *one = new_engine(g, 2, RT_GGML_TYPE_F16, 64);
		struct rt_engine *chunked = new_engine(g, 2, RT_GGML_TYPE_F16, 5); /* 5, 5, 4 */
		struct rt_engine *all = new_engine(g, 2, RT_GGML_TYPE_F16, 5);
		assert_int_equal(rt_engine_eval(one, k_prompt, NP, false), 0);
		assert_int_equal(rt_engine_eval(chunked, k_prompt, NP, false), 0);
		assert_int_equal(rt_engine_eval(all, k_prompt, NP, true), 0);
		assert_memory_equal(rt_engine_logits(one, -1), rt_engine_logits(chunked, -1),
				    NV * sizeof(float));
		double dd = max_diff(rt_engine_logits(one, -1), rt_engine_logits(all, NP - 1), NV);
		if (dd > (types[ti] == RT_GGML_TYPE_F16 ? 5e-3 : 1e-4))
			fail_msg("%s: last position, output rows only vs all: %g",
				 rt_ggml_type_name(types[ti]), dd);
		/* the KV cache is complete: the next token agrees too */
		const int32_t next = 77;
		assert_int_equal(rt_engine_eval(one, &next, 1, false), 0);
		assert_int_equal(rt_engine_eval(chunked, &next, 1, false), 0);
		assert_memory_equal(rt_engine_logits(one, -1), rt_engine_logits(chunked, -1),
				    NV * sizeof(float));
		rt_engine_free(one);
		rt_engine_free(chunked);
		rt_engine_free(all);
		rt_gguf_free(g);
		free(buf);
	}
}

/* Every weight type against the double reference computed from the same
 * (dequantized) weights: what remains is activation quantization (Q8_0/Q8_K
 * as ggml does) and the F16 KV cache, a few percent at most. */
static void test_types_vs_reference(void **state)
{
	(void)state;
	const uint32_t types[] = {RT_GGML_TYPE_F16, RT_GGML_TYPE_Q8_0, RT_GGML_TYPE_Q6_K,
				  RT_GGML_TYPE_Q4_K, RT_GGML_TYPE_Q4_0};
	const double tol[] = {0.002, 0.04, 0.04, 0.04, 0.04}; /* x max |logit| */
	for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
		struct spec s = {"qwen2", types[ti], 4, 2, 64, false, true, 13, 0, false, NULL};
		void *buf;
		struct rt_gguf *g = make_model(&s, &buf);
		double *ref = ref_forward(g, &s, k_prompt, NP);
		struct rt_engine *e = new_engine(g, 2, RT_GGML_TYPE_F16, 16);
		assert_int_equal(rt_engine_eval(e, k_prompt, NP, false), 0);
		const float *lg = rt_engine_logits(e, -1);
		double dd = 0, mag = 0;
		for (int i = 0; i < NV; i++) {
			dd = fmax(dd, fabs(lg[i] - ref[(size_t)(NP - 1) * NV + i]));
			mag = fmax(mag, fabs(ref[(size_t)(NP - 1) * NV + i]));
		}
		if (dd > tol[ti] * mag)
			fail_msg("%s: max diff %g vs max |logit| %g", rt_ggml_type_name(types[ti]), dd, mag);
		rt_engine_free(e);
		free(ref);
		rt_gguf_free(g);
		free(buf);
	}
}

/* The same float model stored as F32, F16 and Q8_0 gives close logits. */
static void test_quantized_close_to_f32(void **state)
{
	(void)state;
	const uint32_t types[] = {RT_GGML_TYPE_F16, RT_GGML_TYPE_Q8_0};
	const double tol[] = {0.01, 0.04}; /* x max |logit| */
	struct spec s = {"llama", RT_GGML_TYPE_F32, 8, 2, 32, false, false, 9, 0, false, NULL};
	void *buf;
	struct rt_gguf *g = make_model(&s, &buf);
	struct rt_engine *e = new_engine(g, 2, RT_GGML_TYPE_F32, 16);
	assert_int_equal(rt_engine_eval(e, k_prompt, NP, false), 0);
	float ref[NV];
	memcpy(ref, rt_engine_logits(e, -1), sizeof(ref));
	rt_engine_free(e);
	rt_gguf_free(g);
	free(buf);
	double mag = 0;
	for (int i = 0; i < NV; i++)
		mag = fmax(mag, fabs(ref[i]));
	for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
		s.wtype = types[ti];
		g = make_model(&s, &buf);
		e = new_engine(g, 2, RT_GGML_TYPE_F16, 16);
		assert_int_equal(rt_engine_eval(e, k_prompt, NP, false), 0);
		double dd = max_diff(ref, rt_engine_logits(e, -1), NV);
		if (dd > tol[ti] * mag)
			fail_msg("%s: max diff %g vs max |logit| %g", rt_ggml_type_name(types[ti]), dd, mag);
		assert_true(dd > 0); /* really a different path */
		rt_engine_free(e);
		rt_gguf_free(g);
		free(buf);
	}
}

static void test_errors(void **state)
{
	(void)state;
	struct spec s = {"llama", RT_GGML_TYPE_Q8_0, 8, 2, 32, false, false, 11, 0, false, NULL};
	void *buf;
	struct rt_gguf *g = make_model(&s, &buf);
	struct rt_engine *e = NULL, *sentinel = (struct rt_engine *)0x1;
	struct rt_engine_opts o;
	rt_engine_opts_default(&o);
	o.kv_type = RT_GGML_TYPE_Q8_0;
	e = sentinel;
	assert_int_equal(rt_engine_new(g, &o, &e), -EINVAL);
	o.kv_type = RT_GGML_TYPE_F16;
	o.n_ctx = -1;
	assert_int_equal(rt_engine_new(g, &o, &e), -EINVAL);
	assert_ptr_equal(e, sentinel);
	o.n_ctx = 16;
	assert_int_equal(rt_engine_new(g, &o, &e), 0);
	assert_null(rt_engine_logits(e, -1));
	int32_t bad[2] = {3, NV};
	assert_int_equal(rt_engine_eval(e, bad, 2, false), -EINVAL);
	bad[1] = -1;
	assert_int_equal(rt_engine_eval(e, bad, 2, false), -EINVAL);
	assert_int_equal(rt_engine_eval(e, bad, 0, false), -EINVAL);
	assert_int_equal(rt_engine_n_past(e), 0);
	assert_int_equal(rt_engine_eval(e, k_prompt, 10, false), 0);
	assert_int_equal(rt_engine_eval(e, k_prompt, 7, false), -ENOSPC); /* 17 > 16 */
	assert_int_equal(rt_engine_n_past(e), 10);
	assert_int_equal(rt_engine_truncate(e, 11), -EINVAL);
	assert_int_equal(rt_engine_truncate(e, -1), -EINVAL);
	assert_int_equal(rt_engine_truncate(e, 4), 0);
	assert_int_equal(rt_engine_n_past(e), 4);
	assert_int_equal(rt_engine_eval(e, k_prompt, 12, false), 0);
	assert_int_equal(rt_engine_n_past(e), 16);
	assert_string_equal(rt_arch_name(RT_ARCH_QWEN3), "qwen3");
	rt_engine_free(e);
	rt_engine_free(NULL);
	rt_gguf_free(g);
	free(buf);

	/* unsupported rope scaling, a misshapen tensor, an unsupported type */
	struct spec y = {"llama", RT_GGML_TYPE_F32, 8, 2, 32, false, false, 12, 2.0f, false, "yarn"};
	g = make_model(&y, &buf);
	assert_int_equal(rt_engine_new(g, NULL, &e), -FL_EUNSUPPORTED);
	rt_gguf_free(g);
	free(buf);
	{
		struct spec z = {"llama", RT_GGML_TYPE_F32, 8, 2, 32, false, false, 12, 0, false, NULL};
		struct rt_gguf_writer *zw = model_writer(&z, NV, false);
		add_t(zw, "blk.5.attn_q.weight", RT_GGML_TYPE_F32, D, D, 1.0f, 0); /* harmless extra */
		void *zb;
		size_t zl;
		assert_int_equal(rt_gguf_writer_to_memory(zw, &zb, &zl), 0);
		rt_gguf_writer_free(zw);
		assert_int_equal(rt_gguf_open_memory(zb, zl, &g), 0);
		assert_int_equal(rt_engine_new(g, NULL, &e), 0); /* unknown tensors are ignored */
		rt_engine_free(e);
		rt_gguf_free(g);
		free(zb);
	}
	{
		/* attn_k with the q shape (missing GQA) -> format error */
		struct rt_gguf_writer *zw = NULL;
		assert_int_equal(rt_gguf_writer_new(&zw), 0);
		assert_int_equal(rt_gguf_add_str(zw, "general.architecture", "llama"), 0);
		assert_int_equal(rt_gguf_add_u32(zw, "llama.embedding_length", D), 0);
		assert_int_equal(rt_gguf_add_u32(zw, "llama.block_count", 1), 0);
		assert_int_equal(rt_gguf_add_u32(zw, "llama.feed_forward_length", NFF), 0);
		assert_int_equal(rt_gguf_add_u32(zw, "llama.attention.head_count", 8), 0);
		assert_int_equal(rt_gguf_add_u32(zw, "llama.attention.head_count_kv", 2), 0);
		add_t(zw, "token_embd.weight", RT_GGML_TYPE_F32, D, 8, 1.0f, 0);
		add_t(zw, "output_norm.weight", RT_GGML_TYPE_F32, D, 1, 1.0f, 0);
		add_t(zw, "blk.0.attn_norm.weight", RT_GGML_TYPE_F32, D, 1, 1.0f, 0);
		add_t(zw, "blk.0.ffn_norm.weight", RT_GGML_TYPE_F32, D, 1, 1.0f, 0);
		add_t(zw, "blk.0.attn_q.weight", RT_GGML_TYPE_F32, D, D, 1.0f, 0);
		add_t(zw, "blk.0.attn_k.weight", RT_GGML_TYPE_F32, D, D, 1.0f, 0);
		void *zb;
		size_t zl;
		assert_int_equal(rt_gguf_writer_to_memory(zw, &zb, &zl), 0);
		rt_gguf_writer_free(zw);
		assert_int_equal(rt_gguf_open_memory(zb, zl, &g), 0);
		assert_int_equal(rt_engine_new(g, NULL, &e), -FL_EFORMAT);
		rt_gguf_free(g);
		free(zb);
	}
	{
		/* a weight type the kernels do not handle (Q5_K, raw bytes) */
		struct rt_gguf_writer *zw = NULL;
		assert_int_equal(rt_gguf_writer_new(&zw), 0);
		assert_int_equal(rt_gguf_add_str(zw, "general.architecture", "llama"), 0);
		assert_int_equal(rt_gguf_add_u32(zw, "llama.embedding_length", D), 0);
		assert_int_equal(rt_gguf_add_u32(zw, "llama.block_count", 1), 0);
		assert_int_equal(rt_gguf_add_u32(zw, "llama.feed_forward_length", NFF), 0);
		assert_int_equal(rt_gguf_add_u32(zw, "llama.attention.head_count", 8), 0);
		uint64_t nb = 0;
		assert_int_equal(rt_ggml_row_bytes(RT_GGML_TYPE_Q5_K, (uint64_t)D * 8, &nb), 0);
		uint8_t *raw = calloc(1, nb);
		assert_non_null(raw);
		int64_t ne[2] = {D, 8};
		assert_int_equal(rt_gguf_add_tensor_raw(zw, "token_embd.weight", RT_GGML_TYPE_Q5_K, 2, ne, raw, nb), 0);
		free(raw);
		void *zb;
		size_t zl;
		assert_int_equal(rt_gguf_writer_to_memory(zw, &zb, &zl), 0);
		rt_gguf_writer_free(zw);
		assert_int_equal(rt_gguf_open_memory(zb, zl, &g), 0);
		assert_int_equal(rt_engine_new(g, NULL, &e), -FL_EUNSUPPORTED);
		rt_gguf_free(g);
		free(zb);
	}

	/* a missing tensor, an unknown architecture */
	struct rt_gguf_writer *w = NULL;
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	assert_int_equal(rt_gguf_add_str(w, "general.architecture", "gpt2"), 0);
	void *b2;
	size_t len;
	assert_int_equal(rt_gguf_writer_to_memory(w, &b2, &len), 0);
	rt_gguf_writer_free(w);
	assert_int_equal(rt_gguf_open_memory(b2, len, &g), 0);
	assert_int_equal(rt_engine_new(g, NULL, &e), -FL_EUNSUPPORTED);
	rt_gguf_free(g);
	free(b2);

	assert_int_equal(rt_gguf_writer_new(&w), 0);
	assert_int_equal(rt_gguf_add_str(w, "general.architecture", "llama"), 0);
	assert_int_equal(rt_gguf_add_u32(w, "llama.embedding_length", D), 0);
	assert_int_equal(rt_gguf_add_u32(w, "llama.block_count", 1), 0);
	assert_int_equal(rt_gguf_add_u32(w, "llama.feed_forward_length", NFF), 0);
	assert_int_equal(rt_gguf_add_u32(w, "llama.attention.head_count", 8), 0);
	g_rng = 5;
	add_t(w, "token_embd.weight", RT_GGML_TYPE_F32, D, 8, 1.0f, 0);
	assert_int_equal(rt_gguf_writer_to_memory(w, &b2, &len), 0);
	rt_gguf_writer_free(w);
	assert_int_equal(rt_gguf_open_memory(b2, len, &g), 0);
	assert_int_equal(rt_engine_new(g, NULL, &e), -FL_EFORMAT);
	rt_gguf_free(g);
	free(b2);
}

/* ------------------------------------------------------ backend "gguf" */

static int tiny_vocab_size(void)
{
	struct rt_gguf_writer *w = NULL;
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	assert_int_equal(rt_tok_tiny_vocab(w), 0);
	void *buf;
	size_t len;
	assert_int_equal(rt_gguf_writer_to_memory(w, &buf, &len), 0);
	rt_gguf_writer_free(w);
	struct rt_gguf *g = NULL;
	assert_int_equal(rt_gguf_open_memory(buf, len, &g), 0);
	uint64_t n = 0;
	enum rt_gguf_vtype t;
	assert_int_equal(rt_gguf_get_arr_n(g, "tokenizer.ggml.tokens", &t, &n), 0);
	rt_gguf_free(g);
	free(buf);
	return (int)n;
}

/* A directory with one model file (llama, Q8_0, tiny tokenizer). */
static void write_model_dir(const char *dir)
{
	char path[512];
	assert_true(mkdir(dir, 0755) == 0 || errno == EEXIST);
	snprintf(path, sizeof(path), "%s/m.gguf", dir);
	struct spec s = {"llama", RT_GGML_TYPE_Q8_0, 8, 2, 32, false, false, 21, 0, false, NULL};
	struct rt_gguf_writer *w = model_writer(&s, tiny_vocab_size(), true);
	assert_int_equal(rt_gguf_writer_write(w, path), 0);
	rt_gguf_writer_free(w);
}

struct stream {
	char buf[4096];
	size_t len;
	int calls, stop_after;
};

static int on_text(void *ud, const char *text, size_t len)
{
	struct stream *st = ud;
	assert_true(st->len + len < sizeof(st->buf));
	memcpy(st->buf + st->len, text, len);
	st->len += len;
	st->buf[st->len] = '\0';
	st->calls++;
	return st->stop_after && st->calls >= st->stop_after;
}

static void test_backend_gguf(void **state)
{
	(void)state;
	const char *tmp = getenv("FL_TEST_TMPDIR");
	char dir[400];
	snprintf(dir, sizeof(dir), "%s/engine_backend", tmp ? tmp : "/tmp");
	if (tmp)
		(void)mkdir(tmp, 0755);
	write_model_dir(dir);

	struct rt_backend_opts bo;
	rt_backend_opts_default(&bo);
	bo.n_ctx = 256;
	bo.n_threads = 2;
	struct rt_backend *b = NULL, *b2 = NULL;
	assert_int_equal(rt_backend_open("nope", dir, &bo, &b), -ENOENT);
	assert_int_equal(rt_backend_open("gguf", dir, &bo, &b), 0);
	assert_int_equal(rt_backend_open("gguf", dir, &bo, &b2), 0);

	struct rt_gen_request rq;
	rt_gen_request_default(&rq);
	rq.prompt = "Hello world, you are a model";
	rq.max_tokens = 24;
	struct stream st = {0};
	rq.on_text = on_text;
	rq.userdata = &st;
	struct rt_gen_result r1, r2, r3;
	assert_int_equal(rt_backend_generate(b, &rq, &r1), 0);
	assert_true(r1.n_prompt > 3);
	assert_int_equal(r1.n_prompt_cached, 0);
	assert_true(r1.n_gen >= 1 && r1.n_gen <= 24);
	assert_true(r1.stop_reason == RT_STOP_MAX_TOKENS || r1.stop_reason == RT_STOP_EOG);
	assert_int_equal(strlen(r1.text), r1.text_len);
	assert_int_equal(st.len, r1.text_len); /* streamed == returned */
	assert_memory_equal(st.buf, r1.text, r1.text_len);

	/* same request again: prompt served from the cache, same greedy text */
	rq.on_text = NULL;
	assert_int_equal(rt_backend_generate(b, &rq, &r2), 0);
	assert_int_equal(r2.n_prompt_cached, r2.n_prompt - 1);
	assert_string_equal(r1.text, r2.text);
	/* a fresh backend (no cache) agrees */
	assert_int_equal(rt_backend_generate(b2, &rq, &r3), 0);
	assert_string_equal(r1.text, r3.text);
	assert_int_equal(r1.n_gen, r3.n_gen);
	rt_gen_result_free(&r2);
	rt_gen_result_free(&r3);

	/* stop string taken from the middle of the greedy text */
	if (r1.text_len >= 6) {
		char stop[4];
		memcpy(stop, r1.text + 3, 3);
		stop[3] = '\0';
		const char *stops[] = {"zzzzqqq", stop};
		const char *first = strstr(r1.text, stop);
		rq.stop = stops;
		rq.n_stop = 2;
		memset(&st, 0, sizeof(st));
		rq.on_text = on_text;
		assert_int_equal(rt_backend_generate(b, &rq, &r2), 0);
		assert_int_equal(r2.stop_reason, RT_STOP_STRING);
		assert_int_equal(r2.text_len, (size_t)(first - r1.text));
		assert_memory_equal(r2.text, r1.text, r2.text_len);
		assert_int_equal(st.len, r2.text_len); /* the stop string never streamed */
		rt_gen_result_free(&r2);
		rq.stop = NULL;
		rq.n_stop = 0;
	}

	/* the callback stops generation */
	memset(&st, 0, sizeof(st));
	st.stop_after = 1;
	rq.on_text = on_text;
	rq.max_tokens = 50;
	assert_int_equal(rt_backend_generate(b, &rq, &r2), 0);
	if (r1.text_len > 0 && r2.stop_reason != RT_STOP_EOG) {
		assert_int_equal(r2.stop_reason, RT_STOP_CALLBACK);
		assert_int_equal(st.calls, 1);
	}
	rt_gen_result_free(&r2);
	rq.on_text = NULL;

	/* seeded sampling is reproducible */
	rq.sampling.temperature = 1.0f;
	rq.sampling.seed = 1234;
	rq.max_tokens = 16;
	assert_int_equal(rt_backend_generate(b, &rq, &r2), 0);
	assert_int_equal(rt_backend_generate(b2, &rq, &r3), 0);
	assert_string_equal(r2.text, r3.text);
	rt_gen_result_free(&r2);
	rt_gen_result_free(&r3);

	/* chat messages through the model's (chatml) template */
	struct rt_chat_msg msgs[] = {{"system", "You are fine."}, {"user", "Hello"}};
	rt_gen_request_default(&rq);
	rq.messages = msgs;
	rq.n_messages = 2;
	rq.max_tokens = 8;
	assert_int_equal(rt_backend_generate(b, &rq, &r2), 0);
	assert_true(r2.n_prompt > 5);
	rt_gen_result_free(&r2);

	/* request errors change nothing */
	struct rt_gen_result untouched = {.text = (char *)0x1};
	rt_gen_request_default(&rq);
	assert_int_equal(rt_backend_generate(b, &rq, &untouched), -EINVAL); /* no prompt */
	rq.prompt = "x";
	rq.max_tokens = 0;
	assert_int_equal(rt_backend_generate(b, &rq, &untouched), -EINVAL);
	rq.max_tokens = 4;
	rq.sampling.top_p = 2.0f;
	assert_int_equal(rt_backend_generate(b, &rq, &untouched), -FL_ERANGE);
	rt_gen_request_default(&rq);
	const char *empty_stop[] = {""};
	rq.prompt = "x";
	rq.stop = empty_stop;
	rq.n_stop = 1;
	assert_int_equal(rt_backend_generate(b, &rq, &untouched), -EINVAL);
	char *huge = malloc(20000);
	assert_non_null(huge);
	for (int i = 0; i < 19999; i++)
		huge[i] = (char)('a' + i % 26);
	huge[19999] = '\0';
	rt_gen_request_default(&rq);
	rq.prompt = huge; /* far more tokens than n_ctx = 256 */
	assert_int_equal(rt_backend_generate(b, &rq, &untouched), -FL_ETOOBIG);
	free(huge);
	assert_ptr_equal(untouched.text, (char *)0x1);

	struct rt_backend_stats bs;
	assert_int_equal(rt_backend_stats(b, &bs), 0);
	assert_string_equal(bs.backend, "gguf");
	assert_string_equal(bs.model, "llama q8_0");
	assert_true(bs.n_requests >= 6);
	assert_true(bs.n_gen_tokens >= (uint64_t)r1.n_gen);
	assert_int_equal(bs.n_ctx, 256);
	assert_int_equal(bs.n_threads, 2);
	rt_gen_result_free(&r1);
	rt_backend_close(b);
	rt_backend_close(b2);
	rt_backend_close(NULL);

	/* registry */
	assert_non_null(rt_backend_find("gguf"));
	assert_null(rt_backend_find("onnx")); /* "exec" and "xgboost" exist now */
	assert_int_equal(rt_backend_register(rt_backend_find("gguf")), -FL_EDUP);
	struct rt_backend_ops bad = {0};
	assert_int_equal(rt_backend_register(&bad), -EINVAL);
	assert_string_equal(rt_stop_reason_name(RT_STOP_STRING), "stop");

	/* a directory without a model */
	char empty[450];
	snprintf(empty, sizeof(empty), "%s/engine_empty", tmp ? tmp : "/tmp");
	assert_true(mkdir(empty, 0755) == 0 || errno == EEXIST);
	assert_int_equal(rt_backend_open("gguf", empty, &bo, &b), -FL_EMISSING);
}

static void test_run_cli(void **state)
{
	(void)state;
	const char *tmp = getenv("FL_TEST_TMPDIR");
	char dir[400], model[450], rep[450], lf[450], lpf[450];
	snprintf(dir, sizeof(dir), "%s/engine_cli", tmp ? tmp : "/tmp");
	if (tmp)
		(void)mkdir(tmp, 0755);
	write_model_dir(dir);
	snprintf(model, sizeof(model), "%s/m.gguf", dir);
	snprintf(rep, sizeof(rep), "%s/report.txt", dir);
	snprintf(lf, sizeof(lf), "%s/logits.bin", dir);
	snprintf(lpf, sizeof(lpf), "%s/logits_prompt.bin", dir);
	char *argv[] = {"run-model", "-m", model, "-i", "1, 40,41 42", "-n", "6", "-t", "2",
			"-o", rep, "--logits", lf, "--logits-prompt", lpf, NULL};
	char err[256] = "";
	assert_int_equal(rt_engine_run_cli(15, argv, stdout, err, sizeof(err)), 0);

	/* the same greedy run through the API (F32 KV, like the driver) */
	struct rt_gguf *g = NULL;
	assert_int_equal(rt_gguf_open(model, &g), 0);
	struct rt_engine_opts o;
	rt_engine_opts_default(&o);
	o.kv_type = RT_GGML_TYPE_F32;
	o.n_ctx = 32;
	struct rt_engine *e = NULL;
	assert_int_equal(rt_engine_new(g, &o, &e), 0);
	const int nv = rt_engine_info(e)->n_vocab;
	int32_t ids[4] = {1, 40, 41, 42}, gen[6];
	assert_int_equal(rt_engine_eval(e, ids, 4, false), 0);
	float *first = malloc((size_t)nv * sizeof(float)), *lastl = malloc((size_t)nv * sizeof(float));
	assert_true(first && lastl);
	memcpy(first, rt_engine_logits(e, -1), (size_t)nv * sizeof(float));
	for (int i = 0; i < 6; i++) {
		const float *l = rt_engine_logits(e, -1);
		int b = 0;
		for (int v = 1; v < nv; v++)
			if (l[v] > l[b])
				b = v;
		gen[i] = b;
		if (i == 5)
			memcpy(lastl, l, (size_t)nv * sizeof(float));
		else
			assert_int_equal(rt_engine_eval(e, &gen[i], 1, false), 0);
	}
	char want[512];
	int off = snprintf(want, sizeof(want), "prompt 4 1 40 41 42\ngen 6");
	for (int i = 0; i < 6; i++)
		off += snprintf(want + off, sizeof(want) - (size_t)off, " %d", gen[i]);
	FILE *f = fopen(rep, "r");
	assert_non_null(f);
	char got[2048];
	size_t n = fread(got, 1, sizeof(got) - 1, f);
	fclose(f);
	got[n] = '\0';
	assert_non_null(strstr(got, want));
	assert_non_null(strstr(got, "n_vocab "));
	/* logits files: n_vocab raw floats */
	float *buf = malloc((size_t)nv * sizeof(float) + 1);
	assert_non_null(buf);
	f = fopen(lpf, "rb");
	assert_non_null(f);
	assert_int_equal(fread(buf, 1, (size_t)nv * sizeof(float) + 1, f), (size_t)nv * sizeof(float));
	fclose(f);
	assert_memory_equal(buf, first, (size_t)nv * sizeof(float));
	f = fopen(lf, "rb");
	assert_non_null(f);
	assert_int_equal(fread(buf, 1, (size_t)nv * sizeof(float) + 1, f), (size_t)nv * sizeof(float));
	fclose(f);
	assert_memory_equal(buf, lastl, (size_t)nv * sizeof(float));
	free(buf);
	free(first);
	free(lastl);
	rt_engine_free(e);
	rt_gguf_free(g);

	/* text prompt through the model's tokenizer */
	char *argv2[] = {"run-model", "-m", model, "-p", "Hello world", "-n", "3", "-o", rep, NULL};
	assert_int_equal(rt_engine_run_cli(9, argv2, stdout, err, sizeof(err)), 0);

	/* errors: message, no crash */
	char *bad1[] = {"run-model", "-p", "x", NULL};
	assert_int_equal(rt_engine_run_cli(3, bad1, stdout, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "-m is required");
	char *bad2[] = {"run-model", "-m", model, "-i", "1,99999", NULL};
	assert_int_equal(rt_engine_run_cli(5, bad2, stdout, err, sizeof(err)), -EINVAL);
	char *bad3[] = {"run-model", "-m", model, "-i", "1", "-n", "-3", NULL};
	assert_int_equal(rt_engine_run_cli(7, bad3, stdout, err, sizeof(err)), -EINVAL);
	char *bad4[] = {"run-model", "-m", model, "-i", "1", "-p", "x", NULL};
	assert_int_equal(rt_engine_run_cli(7, bad4, stdout, err, sizeof(err)), -EINVAL);
	char *bad5[] = {"run-model", "-m", "/nonexistent/x.gguf", "-i", "1", NULL};
	assert_int_equal(rt_engine_run_cli(5, bad5, stdout, NULL, 0), -ENOENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_llama_vs_reference),
		cmocka_unit_test(test_qwen2_vs_reference),
		cmocka_unit_test(test_qwen3_vs_reference),
		cmocka_unit_test(test_batch_threads_determinism),
		cmocka_unit_test(test_last_layer_output_rows),
		cmocka_unit_test(test_types_vs_reference),
		cmocka_unit_test(test_quantized_close_to_f32),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_backend_gguf),
		cmocka_unit_test(test_run_cli),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
