/* Built-in engine: model loading (weights stay mmapped) and the forward pass.
 *
 * One forward chunk of nt tokens runs, per layer:
 *   rmsnorm -> [q|k|v matmul (+bias)] -> (q/k norm) -> rope -> KV store ->
 *   attention (per token x head) -> [o matmul + residual] -> rmsnorm ->
 *   [gate|up matmul + swiglu] -> [down matmul + residual]
 * Each bracket is one parallel dispatch over output rows, which all threads
 * share with every token of the chunk (each weight row is read once per
 * chunk). Activations are quantized once per dispatch into the weights' dot
 * type (kernels.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/cleanup.h"
#include "flotilla/engine.h"
#include "flotilla/error.h"
#include "flotilla/kernels.h"
#include "flotilla/threadpool.h"

#define DEFAULT_CTX 4096
#define DEFAULT_BATCH 64
#define ROW_GRAIN 16 /* output rows per chunk unit: 64-byte multiples of floats */
#define MAX_OWNED 4096

struct wmat {
	uint32_t type;
	const uint8_t *data;
	size_t row_bytes;
	int64_t n_in, n_out;
};

struct layer {
	const float *attn_norm, *ffn_norm, *q_norm, *k_norm, *bq, *bk, *bv;
	struct wmat wq, wk, wv, wo, gate, up, down;
};

/* Activations of the current dispatch, quantized per distinct dot type. */
#define ACT_SLOTS 3
struct actset {
	int n;
	uint32_t type[ACT_SLOTS];
	const void *p[ACT_SLOTS];
	size_t stride[ACT_SLOTS];
};

struct rt_engine {
	const struct rt_gguf *g;
	struct rt_model_info info;
	struct wmat tok_embd, output;
	const float *output_norm, *rope_ff;
	struct layer *layers;
	float *owned[MAX_OWNED];
	int n_owned;
	struct rt_threadpool *tp;
	int n_threads;

	/* KV cache: [layer][pos][n_head_kv * head_dim] of kv_type, K and V */
	uint32_t kv_type;
	size_t kv_row_bytes; /* one position of one layer */
	uint8_t *kcache, *vcache;
	int n_past;

	/* scratch for a chunk of up to n_batch tokens */
	int n_batch;
	int q_dim, kv_dim; /* n_head * head_dim, n_head_kv * head_dim */
	float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up;
	uint8_t *xq_buf[ACT_SLOTS];
	size_t xq_cap; /* bytes per slot */
	float *scores;    /* n_threads x n_ctx */
	uint16_t *q16;    /* n_threads x head_dim */
	float *pv_acc;    /* n_threads x RT_K_ATTN_PV_SLOTS x head_dim */
	float *logits;    /* n_vocab: last token */
	float *logits_all;
	size_t logits_all_cap; /* floats */
	int n_logits;          /* rows valid in logits_all (0: only last) */
	bool have_logits;
};

const char *rt_arch_name(enum rt_arch arch)
{
	switch (arch) {
	case RT_ARCH_LLAMA: return "llama";
	case RT_ARCH_QWEN2: return "qwen2";
	case RT_ARCH_QWEN3: return "qwen3";
	}
	return "unknown";
}

void rt_engine_opts_default(struct rt_engine_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->kv_type = RT_GGML_TYPE_F16;
}

/* ------------------------------------------------------------- loading */

static int key_u32(const struct rt_gguf *g, const char *arch, const char *suffix, uint32_t *out,
		   bool required)
{
	char key[128];
	snprintf(key, sizeof(key), "%s.%s", arch, suffix);
	uint32_t v;
	int r = rt_gguf_get_u32(g, key, &v);
	if (r == -ENOENT && !required)
		return 0;
	if (r < 0)
		return r == -ENOENT ? -FL_EFORMAT : r;
	*out = v;
	return 1;
}

static int key_f32(const struct rt_gguf *g, const char *arch, const char *suffix, float *out)
{
	char key[128];
	snprintf(key, sizeof(key), "%s.%s", arch, suffix);
	float v;
	int r = rt_gguf_get_f32(g, key, &v);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	*out = v;
	return 1;
}

/* Matrix NAME of N_OUT rows of N_IN. Returns 0, 1 if absent and OPTIONAL. */
static int get_mat(struct rt_engine *e, const char *name, int64_t n_in, int64_t n_out,
		   struct wmat *m, bool optional)
{
	const struct rt_gguf_tensor *t = rt_gguf_find_tensor(e->g, name);
	if (!t)
		return optional ? 1 : -FL_EFORMAT;
	if (!rt_k_type_supported(t->type))
		return -FL_EUNSUPPORTED;
	if (t->ne[0] != n_in || t->ne[1] != n_out || t->ne[2] != 1 || t->ne[3] != 1)
		return -FL_EFORMAT;
	size_t rb = rt_k_row_bytes(t->type, n_in);
	if (rb == 0 || (uint64_t)rb * (uint64_t)n_out != t->size)
		return -FL_EFORMAT;
	m->type = t->type;
	m->data = t->data;
	m->row_bytes = rb;
	m->n_in = n_in;
	m->n_out = n_out;
	e->info.weight_bytes += t->size;
	return 0;
}

/* Vector NAME of N floats (converted into an owned copy unless F32). */
static int get_vec(struct rt_engine *e, const char *name, int64_t n, const float **out,
		   bool optional)
{
	const struct rt_gguf_tensor *t = rt_gguf_find_tensor(e->g, name);
	if (!t) {
		if (!optional)
			return -FL_EFORMAT;
		*out = NULL;
		return 1;
	}
	if ((int64_t)t->n_elements != n || t->ne[0] != n)
		return -FL_EFORMAT;
	e->info.weight_bytes += t->size;
	if (t->type == RT_GGML_TYPE_F32 && ((uintptr_t)t->data % sizeof(float)) == 0) {
		*out = t->data;
		return 0;
	}
	if (!rt_ggml_type_can_dequantize(t->type))
		return -FL_EUNSUPPORTED;
	if (e->n_owned >= MAX_OWNED)
		return -FL_ETOOBIG;
	float *f = malloc((size_t)n * sizeof(float));
	if (!f)
		return -ENOMEM;
	int r = rt_dequantize_row_ref(t->type, t->data, f, n);
	if (r < 0) {
		free(f);
		return r == -EINVAL ? -FL_EFORMAT : r;
	}
	e->owned[e->n_owned++] = f;
	*out = f;
	return 0;
}

static int load_hparams(struct rt_engine *e)
{
	struct rt_model_info *in = &e->info;
	const char *arch;
	int r = rt_gguf_get_str(e->g, "general.architecture", &arch, NULL);
	if (r < 0)
		return -FL_EFORMAT;
	if (strcmp(arch, "llama") == 0)
		in->arch = RT_ARCH_LLAMA;
	else if (strcmp(arch, "qwen2") == 0)
		in->arch = RT_ARCH_QWEN2;
	else if (strcmp(arch, "qwen3") == 0)
		in->arch = RT_ARCH_QWEN3;
	else
		return -FL_EUNSUPPORTED;
	snprintf(in->arch_name, sizeof(in->arch_name), "%s", arch);
	in->rope_neox = in->arch != RT_ARCH_LLAMA;

	uint32_t n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, n_ff = 0, ctx = 0;
	uint32_t key_len = 0, val_len = 0, n_rot = 0;
	if ((r = key_u32(e->g, arch, "embedding_length", &n_embd, true)) < 0 ||
	    (r = key_u32(e->g, arch, "block_count", &n_layer, true)) < 0 ||
	    (r = key_u32(e->g, arch, "attention.head_count", &n_head, true)) < 0 ||
	    (r = key_u32(e->g, arch, "feed_forward_length", &n_ff, true)) < 0)
		return r == -FL_ESCHEMA || r == -FL_ERANGE ? -FL_EFORMAT : r;
	n_head_kv = n_head;
	if ((r = key_u32(e->g, arch, "attention.head_count_kv", &n_head_kv, false)) < 0 ||
	    (r = key_u32(e->g, arch, "context_length", &ctx, false)) < 0 ||
	    (r = key_u32(e->g, arch, "attention.key_length", &key_len, false)) < 0 ||
	    (r = key_u32(e->g, arch, "attention.value_length", &val_len, false)) < 0 ||
	    (r = key_u32(e->g, arch, "rope.dimension_count", &n_rot, false)) < 0)
		return -FL_EFORMAT;
	if (n_embd == 0 || n_layer == 0 || n_head == 0 || n_head_kv == 0 || n_ff == 0 ||
	    n_head % n_head_kv != 0)
		return -FL_EFORMAT;
	if (n_layer > RT_ENGINE_MAX_LAYERS || n_embd > (1u << 16) || n_ff > (1u << 18) ||
	    n_head > 1024)
		return -FL_ETOOBIG;
	uint32_t hd = key_len ? key_len : n_embd / n_head;
	if (!key_len && n_embd % n_head != 0)
		return -FL_EFORMAT;
	if (val_len && val_len != hd)
		return -FL_EUNSUPPORTED;
	if (hd == 0 || hd > RT_ENGINE_MAX_HEAD_DIM)
		return -FL_ETOOBIG;
	if (!n_rot)
		n_rot = hd;
	if (n_rot > hd || n_rot % 2 != 0)
		return -FL_EFORMAT;

	in->n_embd = (int)n_embd;
	in->n_layer = (int)n_layer;
	in->n_head = (int)n_head;
	in->n_head_kv = (int)n_head_kv;
	in->n_ff = (int)n_ff;
	in->head_dim = (int)hd;
	in->n_rot = (int)n_rot;
	in->n_ctx_train = (int)(ctx > RT_ENGINE_MAX_CTX ? RT_ENGINE_MAX_CTX : ctx);

	in->rms_eps = 1e-5f;
	in->rope_base = 10000.0f;
	in->rope_freq_scale = 1.0f;
	if ((r = key_f32(e->g, arch, "attention.layer_norm_rms_epsilon", &in->rms_eps)) < 0 ||
	    (r = key_f32(e->g, arch, "rope.freq_base", &in->rope_base)) < 0)
		return -FL_EFORMAT;
	char key[128];
	snprintf(key, sizeof(key), "%s.rope.scaling.type", arch);
	const char *stype = NULL;
	if (rt_gguf_get_str(e->g, key, &stype, NULL) == 0 && strcmp(stype, "none") != 0) {
		float factor = 1.0f;
		if (strcmp(stype, "linear") != 0)
			return -FL_EUNSUPPORTED; /* yarn, longrope: not implemented */
		if (key_f32(e->g, arch, "rope.scaling.factor", &factor) < 0 || !(factor > 0))
			return -FL_EFORMAT;
		in->rope_freq_scale = 1.0f / factor;
	} else {
		float factor = 0;
		if (key_f32(e->g, arch, "rope.scale_linear", &factor) > 0 && factor > 0)
			in->rope_freq_scale = 1.0f / factor;
	}
	if (!(in->rms_eps > 0) || !(in->rope_base > 0))
		return -FL_EFORMAT;
	return 0;
}

static int load_tensors(struct rt_engine *e)
{
	struct rt_model_info *in = &e->info;
	const struct rt_gguf_tensor *te = rt_gguf_find_tensor(e->g, "token_embd.weight");
	if (!te || te->ne[1] < 1 || te->ne[1] > (1 << 24))
		return -FL_EFORMAT;
	in->n_vocab = (int)te->ne[1];
	const int64_t d = in->n_embd, qd = (int64_t)in->n_head * in->head_dim,
		      kvd = (int64_t)in->n_head_kv * in->head_dim, hd = in->head_dim;
	int r = get_mat(e, "token_embd.weight", d, in->n_vocab, &e->tok_embd, false);
	if (r < 0)
		return r;
	r = get_mat(e, "output.weight", d, in->n_vocab, &e->output, true);
	if (r < 0)
		return r;
	if (r == 1) {
		e->output = e->tok_embd;
		in->tied_embeddings = true;
	}
	if ((r = get_vec(e, "output_norm.weight", d, &e->output_norm, false)) < 0)
		return r;
	if ((r = get_vec(e, "rope_freqs.weight", in->n_rot / 2, &e->rope_ff, true)) < 0)
		return r;
	in->has_rope_freqs = e->rope_ff != NULL;

	e->layers = calloc((size_t)in->n_layer, sizeof(*e->layers));
	if (!e->layers)
		return -ENOMEM;
	for (int l = 0; l < in->n_layer; l++) {
		struct layer *L = &e->layers[l];
		char n[96];
#define NM(s) (snprintf(n, sizeof(n), "blk.%d.%s", l, s), n)
		if ((r = get_vec(e, NM("attn_norm.weight"), d, &L->attn_norm, false)) < 0 ||
		    (r = get_vec(e, NM("ffn_norm.weight"), d, &L->ffn_norm, false)) < 0 ||
		    (r = get_mat(e, NM("attn_q.weight"), d, qd, &L->wq, false)) < 0 ||
		    (r = get_mat(e, NM("attn_k.weight"), d, kvd, &L->wk, false)) < 0 ||
		    (r = get_mat(e, NM("attn_v.weight"), d, kvd, &L->wv, false)) < 0 ||
		    (r = get_mat(e, NM("attn_output.weight"), qd, d, &L->wo, false)) < 0 ||
		    (r = get_mat(e, NM("ffn_gate.weight"), d, in->n_ff, &L->gate, false)) < 0 ||
		    (r = get_mat(e, NM("ffn_up.weight"), d, in->n_ff, &L->up, false)) < 0 ||
		    (r = get_mat(e, NM("ffn_down.weight"), in->n_ff, d, &L->down, false)) < 0)
			return r;
		/* qwen2 has biases; accept them on any architecture */
		if ((r = get_vec(e, NM("attn_q.bias"), qd, &L->bq, true)) < 0 ||
		    (r = get_vec(e, NM("attn_k.bias"), kvd, &L->bk, true)) < 0 ||
		    (r = get_vec(e, NM("attn_v.bias"), kvd, &L->bv, true)) < 0)
			return r;
		bool need_qk_norm = in->arch == RT_ARCH_QWEN3;
		if ((r = get_vec(e, NM("attn_q_norm.weight"), hd, &L->q_norm, !need_qk_norm)) < 0 ||
		    (r = get_vec(e, NM("attn_k_norm.weight"), hd, &L->k_norm, !need_qk_norm)) < 0)
			return r;
#undef NM
	}
	in->ftype = e->layers[0].wq.type;
	return 0;
}

/* llama.cpp (x86, AVX2) repacks the Q4_0/Q4_K matrices that only feed
 * matmuls and have rows % 8 == 0: all but token_embd (also read by
 * get_rows, so a tied output keeps the plain kernels). */
static void mark_one(struct wmat *m)
{
	if ((m->type == RT_GGML_TYPE_Q4_0 || m->type == RT_GGML_TYPE_Q4_K) && m->n_out % 8 == 0)
		m->type |= RT_K_GGML_REPACK;
}

static void mark_repacked(struct rt_engine *e)
{
	for (int l = 0; l < e->info.n_layer; l++) {
		struct layer *L = &e->layers[l];
		struct wmat *ms[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
		for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
			mark_one(ms[i]);
	}
	if (!e->info.tied_embeddings)
		mark_one(&e->output);
}

static void *xcalloc(size_t n, size_t size, bool *fail)
{
	void *p = calloc(n ? n : 1, size);
	if (!p)
		*fail = true;
	return p;
}

static size_t max_act_bytes(int64_t ncols)
{
	size_t m = 0;
	const uint32_t dts[] = {RT_GGML_TYPE_F32, RT_GGML_TYPE_F16, RT_GGML_TYPE_Q8_0,
				RT_GGML_TYPE_Q8_K};
	for (size_t i = 0; i < FL_ARRAY_SIZE(dts); i++) {
		int be = rt_k_block_elems(dts[i]);
		int64_t padded = (ncols + be - 1) / be * be;
		size_t b = rt_k_row_bytes(dts[i], padded);
		if (b > m)
			m = b;
	}
	return m;
}

int rt_engine_new(const struct rt_gguf *g, const struct rt_engine_opts *opts,
		  struct rt_engine **ret_engine)
{
	struct rt_engine_opts o;
	if (opts)
		o = *opts;
	else
		rt_engine_opts_default(&o);
	if (!g || o.n_ctx < 0 || o.n_ctx > RT_ENGINE_MAX_CTX || o.n_threads < 0 ||
	    o.n_threads > RT_THREADPOOL_MAX_THREADS || o.n_batch < 0 ||
	    o.n_batch > RT_ENGINE_MAX_BATCH ||
	    (o.kv_type != RT_GGML_TYPE_F16 && o.kv_type != RT_GGML_TYPE_F32))
		return -EINVAL;

	struct rt_engine *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->g = g;
	int r = load_hparams(e);
	if (r >= 0)
		r = load_tensors(e);
	if (r < 0) {
		rt_engine_free(e);
		return r;
	}
	if (o.ggml_repack_order)
		mark_repacked(e);
	struct rt_model_info *in = &e->info;
	int n_ctx = o.n_ctx;
	if (n_ctx == 0)
		n_ctx = in->n_ctx_train > 0 && in->n_ctx_train < DEFAULT_CTX ? in->n_ctx_train : DEFAULT_CTX;
	in->n_ctx = n_ctx;
	e->n_batch = o.n_batch ? o.n_batch : DEFAULT_BATCH;
	if (e->n_batch > n_ctx)
		e->n_batch = n_ctx;
	e->kv_type = o.kv_type;
	e->q_dim = in->n_head * in->head_dim;
	e->kv_dim = in->n_head_kv * in->head_dim;
	e->kv_row_bytes = rt_k_row_bytes(e->kv_type, e->kv_dim);

	uint64_t kv_total = (uint64_t)in->n_layer * (uint64_t)n_ctx * e->kv_row_bytes;
	if (kv_total > ((uint64_t)1 << 40)) {
		rt_engine_free(e);
		return -FL_ETOOBIG;
	}
	in->kv_bytes = 2 * kv_total;

	r = rt_threadpool_new(o.n_threads, &e->tp);
	if (r < 0) {
		rt_engine_free(e);
		return r;
	}
	e->n_threads = rt_threadpool_n_threads(e->tp);

	bool fail = false;
	const size_t B = (size_t)e->n_batch;
	e->kcache = xcalloc(kv_total, 1, &fail);
	e->vcache = xcalloc(kv_total, 1, &fail);
	e->x = xcalloc(B * (size_t)in->n_embd, sizeof(float), &fail);
	e->xn = xcalloc(B * (size_t)in->n_embd, sizeof(float), &fail);
	e->tmp = xcalloc(B * (size_t)in->n_embd, sizeof(float), &fail);
	e->q = xcalloc(B * (size_t)e->q_dim, sizeof(float), &fail);
	e->att = xcalloc(B * (size_t)e->q_dim, sizeof(float), &fail);
	e->k = xcalloc(B * (size_t)e->kv_dim, sizeof(float), &fail);
	e->v = xcalloc(B * (size_t)e->kv_dim, sizeof(float), &fail);
	e->gate = xcalloc(B * (size_t)in->n_ff, sizeof(float), &fail);
	e->up = xcalloc(B * (size_t)in->n_ff, sizeof(float), &fail);
	int64_t widest = in->n_ff > e->q_dim ? in->n_ff : e->q_dim;
	if (in->n_embd > widest)
		widest = in->n_embd;
	e->xq_cap = B * max_act_bytes(widest);
	for (int i = 0; i < ACT_SLOTS; i++)
		e->xq_buf[i] = xcalloc(e->xq_cap, 1, &fail);
	e->scores = xcalloc((size_t)e->n_threads * (size_t)n_ctx, sizeof(float), &fail);
	e->q16 = xcalloc((size_t)e->n_threads * (size_t)in->head_dim, sizeof(uint16_t), &fail);
	e->pv_acc = xcalloc((size_t)e->n_threads * RT_K_ATTN_PV_SLOTS * (size_t)in->head_dim,
			    sizeof(float), &fail);
	e->logits = xcalloc((size_t)in->n_vocab, sizeof(float), &fail);
	if (fail) {
		rt_engine_free(e);
		return -ENOMEM;
	}
	*ret_engine = e;
	return 0;
}

void rt_engine_free(struct rt_engine *e)
{
	if (!e)
		return;
	rt_threadpool_free(e->tp);
	for (int i = 0; i < e->n_owned; i++)
		free(e->owned[i]);
	free(e->layers);
	free(e->kcache);
	free(e->vcache);
	free(e->x);
	free(e->xn);
	free(e->tmp);
	free(e->q);
	free(e->att);
	free(e->k);
	free(e->v);
	free(e->gate);
	free(e->up);
	for (int i = 0; i < ACT_SLOTS; i++)
		free(e->xq_buf[i]);
	free(e->scores);
	free(e->q16);
	free(e->pv_acc);
	free(e->logits);
	free(e->logits_all);
	free(e);
}

const struct rt_model_info *rt_engine_info(const struct rt_engine *e) { return &e->info; }
int rt_engine_n_past(const struct rt_engine *e) { return e->n_past; }
int rt_engine_n_threads(const struct rt_engine *e) { return e->n_threads; }

int rt_engine_truncate(struct rt_engine *e, int n_past)
{
	if (n_past < 0 || n_past > e->n_past)
		return -EINVAL;
	e->n_past = n_past;
	return 0;
}

const float *rt_engine_logits(const struct rt_engine *e, int i)
{
	if (!e->have_logits)
		return NULL;
	if (i == -1)
		return e->logits;
	if (i < 0 || i >= e->n_logits)
		return NULL;
	return e->logits_all + (size_t)i * (size_t)e->info.n_vocab;
}

/* ------------------------------------------------------ activation prep */

struct quant_job {
	uint32_t wtype;
	const float *src;
	int64_t ld, ncols;
	uint8_t *dst;
	size_t stride;
};

static void quant_fn(void *arg, int64_t b, int64_t e, int tid)
{
	const struct quant_job *j = arg;
	(void)tid;
	for (int64_t t = b; t < e; t++)
		rt_k_quantize_act(j->wtype, j->src + t * j->ld, j->dst + (size_t)t * j->stride, j->ncols);
}

/* The activation SRC (NT rows, LD floats apart, NCOLS used) in the dot type
 * of WTYPE: quantized on first request within the set. */
static int act_get(struct rt_engine *e, struct actset *as, uint32_t wtype, const float *src,
		   int64_t ld, int64_t nt, int64_t ncols)
{
	uint32_t dt = rt_k_dot_type(wtype);
	for (int i = 0; i < as->n; i++)
		if (as->type[i] == dt)
			return i;
	int slot = as->n++;
	struct quant_job j = {
		.wtype = wtype, .src = src, .ld = ld, .ncols = ncols, .dst = e->xq_buf[slot],
		.stride = rt_k_row_bytes(dt, ncols),
	};
	if (nt * ncols >= 32768)
		rt_threadpool_for(e->tp, nt, 1, quant_fn, &j);
	else
		quant_fn(&j, 0, nt, 0);
	as->type[slot] = dt;
	as->p[slot] = j.dst;
	as->stride[slot] = j.stride;
	return slot;
}

/* --------------------------------------------------------------- matmul */

/* Up to 3 matrices over one input, their output rows concatenated in one
 * parallel loop. Post-ops per item on the finished rows: bias, residual add,
 * swiglu (item 0 = gate, item 1 = up, rows split identically). */
struct mm_item {
	const struct wmat *w;
	const void *xq;
	size_t xs;
	float *y;
	int64_t ldy;
	const float *bias;
	float *resid; /* resid[t * ldy + r] += y */
};

struct mm_job {
	int n;
	struct mm_item it[3];
	int64_t start[4];
	int64_t nt;
	bool swiglu;
};

static void mm_fn(void *arg, int64_t b, int64_t e, int tid)
{
	const struct mm_job *j = arg;
	(void)tid;
	if (j->swiglu) {
		for (int i = 0; i < 2; i++) {
			const struct mm_item *m = &j->it[i];
			rt_k_matmul(m->w->type, m->w->data, m->w->row_bytes, m->w->n_in, b, e, m->xq,
				    m->xs, j->nt, m->y, m->ldy);
		}
		for (int64_t t = 0; t < j->nt; t++) {
			float *g = j->it[0].y + t * j->it[0].ldy;
			const float *u = j->it[1].y + t * j->it[1].ldy;
			rt_k_swiglu(g + b, g + b, u + b, e - b);
		}
		return;
	}
	for (int i = 0; i < j->n; i++) {
		int64_t lo = b > j->start[i] ? b : j->start[i];
		int64_t hi = e < j->start[i + 1] ? e : j->start[i + 1];
		if (lo >= hi)
			continue;
		const struct mm_item *m = &j->it[i];
		int64_t r0 = lo - j->start[i], r1 = hi - j->start[i];
		rt_k_matmul(m->w->type, m->w->data, m->w->row_bytes, m->w->n_in, r0, r1, m->xq, m->xs,
			    j->nt, m->y, m->ldy);
		for (int64_t t = 0; t < j->nt; t++) {
			float *y = m->y + t * m->ldy;
			if (m->bias)
				rt_k_add(y + r0, y + r0, m->bias + r0, r1 - r0);
			if (m->resid) {
				float *x = m->resid + t * m->ldy;
				rt_k_add(x + r0, x + r0, y + r0, r1 - r0);
			}
		}
	}
}

static void mm_run(struct rt_engine *e, struct mm_job *j)
{
	j->start[0] = 0;
	for (int i = 0; i < j->n; i++)
		j->start[i + 1] = j->start[i] + j->it[i].w->n_out;
	int64_t rows = j->swiglu ? j->it[0].w->n_out : j->start[j->n];
	rt_threadpool_for(e->tp, rows, ROW_GRAIN, mm_fn, j);
}

static void mm_item_set(struct mm_item *m, const struct wmat *w, const struct actset *as,
			int slot, float *y, const float *bias, float *resid)
{
	m->w = w;
	m->xq = as->p[slot];
	m->xs = as->stride[slot];
	m->y = y;
	m->ldy = w->n_out;
	m->bias = bias;
	m->resid = resid;
}

/* ------------------------------------------------------------ attention */

struct att_job {
	struct rt_engine *e;
	int layer, nt;
	int pos0;
};

static void att_fn(void *arg, int64_t b, int64_t end, int tid)
{
	const struct att_job *j = arg;
	struct rt_engine *e = j->e;
	const int nh = e->info.n_head, hd = e->info.head_dim;
	const int group = e->info.n_head / e->info.n_head_kv;
	const float scale = 1.0f / sqrtf((float)hd);
	const bool f16 = e->kv_type == RT_GGML_TYPE_F16;
	float *sc = e->scores + (size_t)tid * (size_t)e->info.n_ctx;
	uint16_t *q16 = e->q16 + (size_t)tid * (size_t)hd;
	float *pv_acc = e->pv_acc + (size_t)tid * RT_K_ATTN_PV_SLOTS * (size_t)hd;
	const bool batched = j->nt > 1;
	const size_t lay = (size_t)j->layer * (size_t)e->info.n_ctx * e->kv_row_bytes;
	const size_t head_bytes = e->kv_row_bytes / (size_t)e->info.n_head_kv;
	for (int64_t item = b; item < end; item++) {
		int t = (int)(item / nh), h = (int)(item % nh);
		int kvh = h / group;
		int n_kv = j->pos0 + t + 1; /* causal: positions 0 .. pos0 + t */
		const float *qv = e->q + (size_t)t * (size_t)e->q_dim + (size_t)h * (size_t)hd;
		if (f16)
			rt_k_f32_to_f16(qv, q16, hd);
		const uint8_t *kb = e->kcache + lay + (size_t)kvh * head_bytes;
		const uint8_t *vb = e->vcache + lay + (size_t)kvh * head_bytes;
		/* llama.cpp's non-flash attention on x86: K.q in ggml_vec_dot
		 * order for one token, tinyBLAS order for a batch with an F16
		 * cache (q converted to F16); ggml_vec_dot_f32 with an F32 cache
		 * (q not contiguous: no tinyBLAS) */
		if (f16) {
			for (int p = 0; p < n_kv; p++)
				sc[p] = rt_k_dot_f16_ggml(
					hd, (const uint16_t *)(const void *)(kb + (size_t)p * e->kv_row_bytes),
					q16, batched);
		} else {
			for (int p = 0; p < n_kv; p++)
				sc[p] = rt_k_dot_f32_ggml(
					hd, (const float *)(const void *)(kb + (size_t)p * e->kv_row_bytes),
					qv);
		}
		rt_k_softmax(sc, n_kv, scale);
		float *out = e->att + (size_t)t * (size_t)e->q_dim + (size_t)h * (size_t)hd;
		rt_k_attn_pv(e->kv_type, sc, n_kv, vb, e->kv_row_bytes, hd, batched, pv_acc, out);
	}
}

/* ------------------------------------------------------------- forward */

static void forward_chunk(struct rt_engine *e, const int32_t *tokens, int nt, float *logits_out,
			  bool all, bool want_out)
{
	const struct rt_model_info *in = &e->info;
	const int64_t d = in->n_embd, hd = in->head_dim;
	const int pos0 = e->n_past;

	for (int t = 0; t < nt; t++)
		rt_k_get_row(e->tok_embd.type, e->tok_embd.data, e->tok_embd.row_bytes, tokens[t], d,
			     e->x + (size_t)t * (size_t)d);

	for (int l = 0; l < in->n_layer; l++) {
		const struct layer *L = &e->layers[l];
		struct actset as = {0};
		struct mm_job j;

		for (int t = 0; t < nt; t++)
			rt_k_rmsnorm(e->xn + t * d, e->x + t * d, L->attn_norm, d, in->rms_eps);
		int sq = act_get(e, &as, L->wq.type, e->xn, d, nt, d);
		int sk = act_get(e, &as, L->wk.type, e->xn, d, nt, d);
		int sv = act_get(e, &as, L->wv.type, e->xn, d, nt, d);
		memset(&j, 0, sizeof(j));
		j.n = 3;
		j.nt = nt;
		mm_item_set(&j.it[0], &L->wq, &as, sq, e->q, L->bq, NULL);
		mm_item_set(&j.it[1], &L->wk, &as, sk, e->k, L->bk, NULL);
		mm_item_set(&j.it[2], &L->wv, &as, sv, e->v, L->bv, NULL);
		mm_run(e, &j);

		for (int t = 0; t < nt; t++) {
			float *q = e->q + (size_t)t * (size_t)e->q_dim;
			float *k = e->k + (size_t)t * (size_t)e->kv_dim;
			if (L->q_norm)
				for (int h = 0; h < in->n_head; h++)
					rt_k_rmsnorm(q + h * hd, q + h * hd, L->q_norm, hd, in->rms_eps);
			if (L->k_norm)
				for (int h = 0; h < in->n_head_kv; h++)
					rt_k_rmsnorm(k + h * hd, k + h * hd, L->k_norm, hd, in->rms_eps);
			enum rt_rope_mode mode = in->rope_neox ? RT_ROPE_NEOX : RT_ROPE_NORM;
			rt_k_rope(q, in->n_head, (int)hd, in->n_rot, pos0 + t, mode, in->rope_base,
				  in->rope_freq_scale, e->rope_ff);
			rt_k_rope(k, in->n_head_kv, (int)hd, in->n_rot, pos0 + t, mode, in->rope_base,
				  in->rope_freq_scale, e->rope_ff);
			size_t off = ((size_t)l * (size_t)in->n_ctx + (size_t)(pos0 + t)) * e->kv_row_bytes;
			const float *v = e->v + (size_t)t * (size_t)e->kv_dim;
			if (e->kv_type == RT_GGML_TYPE_F16) {
				rt_k_f32_to_f16(k, (uint16_t *)(e->kcache + off), e->kv_dim);
				rt_k_f32_to_f16(v, (uint16_t *)(e->vcache + off), e->kv_dim);
			} else {
				memcpy(e->kcache + off, k, e->kv_row_bytes);
				memcpy(e->vcache + off, v, e->kv_row_bytes);
			}
		}

		struct att_job aj = {.e = e, .layer = l, .nt = nt, .pos0 = pos0};
		rt_threadpool_for(e->tp, (int64_t)nt * in->n_head, 1, att_fn, &aj);

		memset(&as, 0, sizeof(as));
		int so = act_get(e, &as, L->wo.type, e->att, e->q_dim, nt, e->q_dim);
		memset(&j, 0, sizeof(j));
		j.n = 1;
		j.nt = nt;
		mm_item_set(&j.it[0], &L->wo, &as, so, e->tmp, NULL, e->x);
		mm_run(e, &j);

		/* The last layer's FFN runs only for the tokens whose logits
		 * are wanted, like llama.cpp (ggml_get_rows(inp_out_ids) after
		 * the attention output): for a prompt that is its last token,
		 * which takes the single-token (ggml_vec_dot) order instead of
		 * the batch (tinyBLAS) order: the same float results as
		 * llama.cpp, and less work. */
		int f0 = 0, nf = nt;
		if (l == in->n_layer - 1 && !all) {
			if (!want_out)
				break;
			f0 = nt - 1;
			nf = 1;
		}
		float *xf = e->x + (size_t)f0 * (size_t)d;
		for (int t = 0; t < nf; t++)
			rt_k_rmsnorm(e->xn + t * d, xf + t * d, L->ffn_norm, d, in->rms_eps);
		memset(&as, 0, sizeof(as));
		int sg = act_get(e, &as, L->gate.type, e->xn, d, nf, d);
		int su = act_get(e, &as, L->up.type, e->xn, d, nf, d);
		memset(&j, 0, sizeof(j));
		j.n = 2;
		j.nt = nf;
		j.swiglu = true;
		mm_item_set(&j.it[0], &L->gate, &as, sg, e->gate, NULL, NULL);
		mm_item_set(&j.it[1], &L->up, &as, su, e->up, NULL, NULL);
		mm_run(e, &j);

		memset(&as, 0, sizeof(as));
		int sd = act_get(e, &as, L->down.type, e->gate, in->n_ff, nf, in->n_ff);
		memset(&j, 0, sizeof(j));
		j.n = 1;
		j.nt = nf;
		mm_item_set(&j.it[0], &L->down, &as, sd, e->tmp, NULL, xf);
		mm_run(e, &j);
	}

	if (!want_out)
		return;
	/* output: every token of the chunk, or only the last one */
	int first = all ? 0 : nt - 1;
	int n_out = nt - first;
	for (int t = first; t < nt; t++)
		rt_k_rmsnorm(e->xn + (t - first) * d, e->x + t * d, e->output_norm, d, in->rms_eps);
	struct actset as = {0};
	int s = act_get(e, &as, e->output.type, e->xn, d, n_out, d);
	struct mm_job j;
	memset(&j, 0, sizeof(j));
	j.n = 1;
	j.nt = n_out;
	mm_item_set(&j.it[0], &e->output, &as, s, logits_out, NULL, NULL);
	mm_run(e, &j);
}

int rt_engine_eval(struct rt_engine *e, const int32_t *tokens, int n, bool all_logits)
{
	if (!e || !tokens || n < 1)
		return -EINVAL;
	for (int i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= e->info.n_vocab)
			return -EINVAL;
	if (n > e->info.n_ctx - e->n_past)
		return -ENOSPC;
	const size_t nv = (size_t)e->info.n_vocab;
	if (all_logits && (size_t)n * nv > e->logits_all_cap) {
		float *p = realloc(e->logits_all, (size_t)n * nv * sizeof(float));
		if (!p)
			return -ENOMEM;
		e->logits_all = p;
		e->logits_all_cap = (size_t)n * nv;
	}
	for (int done = 0; done < n;) {
		int nt = n - done < e->n_batch ? n - done : e->n_batch;
		bool last = done + nt == n;
		float *out = all_logits ? e->logits_all + (size_t)done * nv : e->logits;
		forward_chunk(e, tokens + done, nt, out, all_logits, all_logits || last);
		e->n_past += nt;
		done += nt;
	}
	if (all_logits)
		memcpy(e->logits, e->logits_all + (size_t)(n - 1) * nv, nv * sizeof(float));
	e->n_logits = all_logits ? n : 0;
	e->have_logits = true;
	return 0;
}
