/* mkmodel: write a small llama / qwen2 / qwen3 GGUF model with seeded random
 * weights and a real tokenizer vocabulary, with the tensor names and metadata
 * keys llama.cpp expects. Weights are N(0, std^2) from a per-row seeded
 * xorshift generator (so a tensor's values depend only on --seed, its name and
 * its row), norms are 1 + N(0, std^2), biases N(0, std^2).
 *
 *   mkmodel --arch llama --vocab ggml-vocab-llama-spm.gguf --dim 256 --layers 4 \
 *           --heads 8 --kv-heads 4 --ffn 768 --type q8_0 --seed 1 -o out.gguf
 *
 * --vocab tiny uses the built-in ~400-token SentencePiece vocabulary. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/cleanup.h"
#include "flotilla/error.h"
#include "flotilla/gguf.h"
#include "flotilla/gguf_write.h"
#include "flotilla/tokenizer.h"

struct opts {
	const char *arch;
	const char *vocab;
	const char *out;
	const char *name;
	uint32_t dim, layers, heads, kv_heads, ffn, ctx;
	float rope_theta, rms_eps, std;
	uint32_t type;
	uint64_t seed;
	bool tie;
	bool rope_llama3;
	float rope_factor, rope_low, rope_high;
	uint32_t rope_orig_ctx;
};

struct fill_ctx {
	uint64_t seed;
	uint64_t name_hash;
	int64_t cols;
	float mean, std;
	const float *values; /* fixed values (rope_freqs) instead of random */
};

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

static double uniform(uint64_t *s) { return ((double)(xorshift(s) >> 11) + 0.5) / 9007199254740992.0; }

static int fill_row(void *vctx, uint64_t row, float *out)
{
	const struct fill_ctx *c = vctx;
	if (c->values) {
		memcpy(out, c->values, (size_t)c->cols * sizeof(float));
		return 0;
	}
	uint64_t st = c->seed ^ c->name_hash ^ (row * 0xd1342543de82ef95ull);
	st = splitmix(&st);
	if (!st)
		st = 1;
	for (int64_t i = 0; i < c->cols; i += 2) {
		/* Box-Muller: two normals per pair of uniforms. */
		double u1 = uniform(&st), u2 = uniform(&st);
		double rad = sqrt(-2.0 * log(u1));
		out[i] = c->mean + c->std * (float)(rad * cos(2 * M_PI * u2));
		if (i + 1 < c->cols)
			out[i + 1] = c->mean + c->std * (float)(rad * sin(2 * M_PI * u2));
	}
	return 0;
}

static uint64_t hash_name(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
	return h;
}

/* Up to 1024 tensors per model (layers <= 64 checked in main). */
#define MAX_TENSORS 1024
static struct fill_ctx fills[MAX_TENSORS];
static size_t n_fills;

/* Type for a matrix whose rows have COLS elements: the requested type when
 * the row is a multiple of its block, else q8_0, f16, f32. */
static uint32_t pick_type(uint32_t want, int64_t cols)
{
	const uint32_t chain[] = {want, RT_GGML_TYPE_Q8_0, RT_GGML_TYPE_F16, RT_GGML_TYPE_F32};
	for (size_t i = 0; i < FL_ARRAY_SIZE(chain); i++) {
		uint32_t be;
		if (rt_ggml_type_geometry(chain[i], &be, NULL) == 0 && cols % be == 0)
			return chain[i];
	}
	return RT_GGML_TYPE_F32;
}

static int add(struct rt_gguf_writer *w, const struct opts *o, const char *name, uint32_t type,
	       int64_t ne0, int64_t ne1, float mean, float std, const float *values)
{
	if (n_fills >= MAX_TENSORS)
		return -FL_ETOOBIG;
	struct fill_ctx *c = &fills[n_fills++];
	*c = (struct fill_ctx){o->seed, hash_name(name), ne0, mean, std, values};
	int64_t ne[2] = {ne0, ne1};
	uint32_t t = pick_type(type, ne0);
	if (t != type)
		fprintf(stderr, "mkmodel: %s: rows of %lld do not fit %s, using %s\n", name,
			(long long)ne0, rt_ggml_type_name(type), rt_ggml_type_name(t));
	int r = rt_gguf_add_tensor_fill(w, name, t, ne1 > 1 ? 2 : 1, ne, fill_row, c);
	if (r < 0)
		fprintf(stderr, "mkmodel: tensor %s: %s\n", name, fl_strerror(r));
	return r;
}

static int parse_u32(const char *s, uint32_t *v)
{
	char *end;
	errno = 0;
	unsigned long x = strtoul(s, &end, 10);
	if (errno || *end || end == s || x > UINT32_MAX)
		return -EINVAL;
	*v = (uint32_t)x;
	return 0;
}

static int parse_f32(const char *s, float *v)
{
	char *end;
	errno = 0;
	float x = strtof(s, &end);
	if (errno || *end || end == s)
		return -EINVAL;
	*v = x;
	return 0;
}

static int parse_type(const char *s, uint32_t *t)
{
	static const struct {
		const char *name;
		uint32_t type;
	} types[] = {{"f32", RT_GGML_TYPE_F32},   {"f16", RT_GGML_TYPE_F16},
		     {"bf16", RT_GGML_TYPE_BF16}, {"q8_0", RT_GGML_TYPE_Q8_0},
		     {"q4_0", RT_GGML_TYPE_Q4_0}, {"q4_k", RT_GGML_TYPE_Q4_K},
		     {"q4_K", RT_GGML_TYPE_Q4_K}, {"q6_k", RT_GGML_TYPE_Q6_K},
		     {"q6_K", RT_GGML_TYPE_Q6_K}};
	for (size_t i = 0; i < FL_ARRAY_SIZE(types); i++) {
		if (strcmp(s, types[i].name) == 0) {
			*t = types[i].type;
			return 0;
		}
	}
	return -EINVAL;
}

/* llama.cpp's LLAMA_FTYPE for a whole-model type (informational). */
static uint32_t ftype_of(uint32_t type)
{
	switch (type) {
	case RT_GGML_TYPE_F16: return 1;
	case RT_GGML_TYPE_Q4_0: return 2;
	case RT_GGML_TYPE_Q8_0: return 7;
	case RT_GGML_TYPE_Q4_K: return 15;
	case RT_GGML_TYPE_Q6_K: return 18;
	case RT_GGML_TYPE_BF16: return 32;
	default: return 0;
	}
}

static void usage(void)
{
	fprintf(stderr,
		"usage: mkmodel --arch llama|qwen2|qwen3 --vocab VOCAB.gguf|tiny -o OUT.gguf\n"
		"  [--dim 256] [--layers 4] [--heads 8] [--kv-heads 4] [--ffn 768] [--ctx 2048]\n"
		"  [--rope-theta 10000] [--rms-eps 1e-5] [--type f32|f16|bf16|q8_0|q4_0|q4_K|q6_K]\n"
		"  [--seed 1] [--std 0.02] [--tie] [--name NAME]\n"
		"  [--rope-scaling llama3 [--rope-factor 8] [--rope-low 1] [--rope-high 4]\n"
		"   [--rope-orig-ctx 8192]]\n");
}

static int copy_vocab(struct rt_gguf_writer *w, const char *path, uint32_t *ret_n_vocab)
{
	if (strcmp(path, "tiny") == 0) {
		int r = rt_tok_tiny_vocab(w);
		if (r < 0)
			return r;
	} else {
		struct rt_gguf *g;
		int r = rt_gguf_open(path, &g);
		if (r < 0) {
			fprintf(stderr, "mkmodel: %s: %s\n", path, rt_gguf_last_error());
			return r;
		}
		for (size_t i = 0; i < rt_gguf_n_kv(g) && r >= 0; i++)
			if (strncmp(rt_gguf_kv_key(g, i), "tokenizer.", 10) == 0)
				r = rt_gguf_add_kv_from(w, g, i);
		rt_gguf_free(g);
		if (r < 0)
			return r;
	}
	/* Count tokens through a round trip of the metadata written so far. */
	void *mem;
	size_t len;
	int r = rt_gguf_writer_to_memory(w, &mem, &len);
	if (r < 0)
		return r;
	struct rt_gguf *g;
	r = rt_gguf_open_memory(mem, len, &g);
	if (r == 0) {
		enum rt_gguf_vtype t;
		uint64_t n;
		r = rt_gguf_get_arr_n(g, "tokenizer.ggml.tokens", &t, &n);
		if (r == 0 && (t != RT_GGUF_STRING || n == 0 || n > UINT32_MAX))
			r = -FL_ESCHEMA;
		if (r == 0)
			*ret_n_vocab = (uint32_t)n;
		rt_gguf_free(g);
	}
	free(mem);
	return r;
}

int main(int argc, char **argv)
{
	struct opts o = {.arch = "llama", .dim = 256, .layers = 4, .heads = 8, .kv_heads = 4,
			 .ffn = 768, .ctx = 2048, .rope_theta = 10000.0f, .rms_eps = 1e-5f,
			 .std = 0.02f, .type = RT_GGML_TYPE_F32, .seed = 1, .rope_factor = 8.0f,
			 .rope_low = 1.0f, .rope_high = 4.0f, .rope_orig_ctx = 8192};
	int bad = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes = true;
		if (!strcmp(a, "--tie")) {
			o.tie = true;
			takes = false;
		} else if (!v) {
			bad = 1;
		} else if (!strcmp(a, "--arch")) {
			o.arch = v;
		} else if (!strcmp(a, "--vocab")) {
			o.vocab = v;
		} else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
			o.out = v;
		} else if (!strcmp(a, "--name")) {
			o.name = v;
		} else if (!strcmp(a, "--dim")) {
			bad |= parse_u32(v, &o.dim) < 0;
		} else if (!strcmp(a, "--layers")) {
			bad |= parse_u32(v, &o.layers) < 0;
		} else if (!strcmp(a, "--heads")) {
			bad |= parse_u32(v, &o.heads) < 0;
		} else if (!strcmp(a, "--kv-heads")) {
			bad |= parse_u32(v, &o.kv_heads) < 0;
		} else if (!strcmp(a, "--ffn")) {
			bad |= parse_u32(v, &o.ffn) < 0;
		} else if (!strcmp(a, "--ctx")) {
			bad |= parse_u32(v, &o.ctx) < 0;
		} else if (!strcmp(a, "--rope-theta")) {
			bad |= parse_f32(v, &o.rope_theta) < 0;
		} else if (!strcmp(a, "--rms-eps")) {
			bad |= parse_f32(v, &o.rms_eps) < 0;
		} else if (!strcmp(a, "--std")) {
			bad |= parse_f32(v, &o.std) < 0;
		} else if (!strcmp(a, "--type")) {
			bad |= parse_type(v, &o.type) < 0;
		} else if (!strcmp(a, "--seed")) {
			uint32_t s;
			bad |= parse_u32(v, &s) < 0;
			o.seed = s;
		} else if (!strcmp(a, "--rope-scaling")) {
			o.rope_llama3 = !strcmp(v, "llama3");
			bad |= !o.rope_llama3 && strcmp(v, "none");
		} else if (!strcmp(a, "--rope-factor")) {
			bad |= parse_f32(v, &o.rope_factor) < 0;
		} else if (!strcmp(a, "--rope-low")) {
			bad |= parse_f32(v, &o.rope_low) < 0;
		} else if (!strcmp(a, "--rope-high")) {
			bad |= parse_f32(v, &o.rope_high) < 0;
		} else if (!strcmp(a, "--rope-orig-ctx")) {
			bad |= parse_u32(v, &o.rope_orig_ctx) < 0;
		} else {
			bad = 1;
		}
		if (bad) {
			fprintf(stderr, "mkmodel: bad argument %s\n", a);
			usage();
			return 2;
		}
		if (takes)
			i++;
	}
	bool is_llama = !strcmp(o.arch, "llama"), is_qwen2 = !strcmp(o.arch, "qwen2"),
	     is_qwen3 = !strcmp(o.arch, "qwen3");
	if (!o.vocab || !o.out || !(is_llama || is_qwen2 || is_qwen3)) {
		usage();
		return 2;
	}
	if (o.rope_llama3 && !is_llama) {
		fprintf(stderr, "mkmodel: --rope-scaling llama3 is for --arch llama only "
				"(llama.cpp loads rope_freqs.weight for llama)\n");
		return 2;
	}
	if (!o.dim || !o.heads || !o.kv_heads || !o.layers || !o.ffn || o.layers > 64 ||
	    o.dim % o.heads || o.heads % o.kv_heads || (o.dim / o.heads) % 2 ||
	    (o.rope_llama3 && o.rope_low == o.rope_high)) {
		fprintf(stderr, "mkmodel: inconsistent shape (dim %% heads, heads %% kv-heads, even "
				"head_dim, layers 1..64)\n");
		return 2;
	}
	const uint32_t head_dim = o.dim / o.heads;

	struct rt_gguf_writer *w;
	int r = rt_gguf_writer_new(&w);
	if (r < 0)
		return 1;
	char key[128];
#define K(suffix) (snprintf(key, sizeof(key), "%s.%s", o.arch, suffix), key)
	r = rt_gguf_add_str(w, "general.architecture", o.arch);
	if (r >= 0)
		r = rt_gguf_add_str(w, "general.name", o.name ? o.name : "flotilla-mkmodel");
	if (r >= 0)
		r = rt_gguf_add_u32(w, "general.file_type", ftype_of(o.type));
	uint32_t n_vocab = 0;
	if (r >= 0)
		r = copy_vocab(w, o.vocab, &n_vocab);
	if (r >= 0)
		r = rt_gguf_add_u32(w, K("vocab_size"), n_vocab);
	if (r >= 0)
		r = rt_gguf_add_u32(w, K("context_length"), o.ctx);
	if (r >= 0)
		r = rt_gguf_add_u32(w, K("embedding_length"), o.dim);
	if (r >= 0)
		r = rt_gguf_add_u32(w, K("block_count"), o.layers);
	if (r >= 0)
		r = rt_gguf_add_u32(w, K("feed_forward_length"), o.ffn);
	if (r >= 0)
		r = rt_gguf_add_u32(w, K("attention.head_count"), o.heads);
	if (r >= 0)
		r = rt_gguf_add_u32(w, K("attention.head_count_kv"), o.kv_heads);
	if (r >= 0)
		r = rt_gguf_add_f32(w, K("attention.layer_norm_rms_epsilon"), o.rms_eps);
	if (r >= 0)
		r = rt_gguf_add_f32(w, K("rope.freq_base"), o.rope_theta);
	if (r >= 0)
		r = rt_gguf_add_u32(w, K("rope.dimension_count"), head_dim);
	if (r >= 0 && is_qwen3)
		r = rt_gguf_add_u32(w, K("attention.key_length"), head_dim);
	if (r >= 0 && is_qwen3)
		r = rt_gguf_add_u32(w, K("attention.value_length"), head_dim);
	if (r < 0) {
		fprintf(stderr, "mkmodel: metadata: %s\n", fl_strerror(r));
		rt_gguf_writer_free(w);
		return 1;
	}

	_cleanup_free_ float *rope_factors = NULL;
	const int64_t q_out = (int64_t)o.heads * head_dim, kv_out = (int64_t)o.kv_heads * head_dim;
	r = add(w, &o, "token_embd.weight", o.type, o.dim, n_vocab, 0, o.std, NULL);
	if (r >= 0 && o.rope_llama3) {
		rope_factors = malloc(head_dim / 2 * sizeof(float));
		if (!rope_factors)
			r = -ENOMEM;
		for (uint32_t i = 0; r >= 0 && i < head_dim / 2; i++) {
			double freq = 1.0 / pow(o.rope_theta, (double)(2 * i) / head_dim);
			double wavelen = 2 * M_PI / freq;
			double low_wl = o.rope_orig_ctx / o.rope_low, high_wl = o.rope_orig_ctx / o.rope_high;
			double f;
			if (wavelen < high_wl) {
				f = 1.0;
			} else if (wavelen > low_wl) {
				f = o.rope_factor;
			} else {
				double smooth = (o.rope_orig_ctx / wavelen - o.rope_low) / (o.rope_high - o.rope_low);
				f = 1.0 / ((1 - smooth) / o.rope_factor + smooth);
			}
			rope_factors[i] = (float)f;
		}
		if (r >= 0)
			r = add(w, &o, "rope_freqs.weight", RT_GGML_TYPE_F32, head_dim / 2, 1, 0, 0,
				rope_factors);
	}
	for (uint32_t l = 0; l < o.layers && r >= 0; l++) {
		char n[64];
#define T(s) (snprintf(n, sizeof(n), "blk.%u.%s", l, s), n)
		r = add(w, &o, T("attn_norm.weight"), RT_GGML_TYPE_F32, o.dim, 1, 1, o.std, NULL);
		if (r >= 0)
			r = add(w, &o, T("attn_q.weight"), o.type, o.dim, q_out, 0, o.std, NULL);
		if (r >= 0)
			r = add(w, &o, T("attn_k.weight"), o.type, o.dim, kv_out, 0, o.std, NULL);
		if (r >= 0)
			r = add(w, &o, T("attn_v.weight"), o.type, o.dim, kv_out, 0, o.std, NULL);
		if (r >= 0 && is_qwen2)
			r = add(w, &o, T("attn_q.bias"), RT_GGML_TYPE_F32, q_out, 1, 0, o.std, NULL);
		if (r >= 0 && is_qwen2)
			r = add(w, &o, T("attn_k.bias"), RT_GGML_TYPE_F32, kv_out, 1, 0, o.std, NULL);
		if (r >= 0 && is_qwen2)
			r = add(w, &o, T("attn_v.bias"), RT_GGML_TYPE_F32, kv_out, 1, 0, o.std, NULL);
		if (r >= 0 && is_qwen3)
			r = add(w, &o, T("attn_q_norm.weight"), RT_GGML_TYPE_F32, head_dim, 1, 1, o.std, NULL);
		if (r >= 0 && is_qwen3)
			r = add(w, &o, T("attn_k_norm.weight"), RT_GGML_TYPE_F32, head_dim, 1, 1, o.std, NULL);
		if (r >= 0)
			r = add(w, &o, T("attn_output.weight"), o.type, q_out, o.dim, 0, o.std, NULL);
		if (r >= 0)
			r = add(w, &o, T("ffn_norm.weight"), RT_GGML_TYPE_F32, o.dim, 1, 1, o.std, NULL);
		if (r >= 0)
			r = add(w, &o, T("ffn_gate.weight"), o.type, o.dim, o.ffn, 0, o.std, NULL);
		if (r >= 0)
			r = add(w, &o, T("ffn_up.weight"), o.type, o.dim, o.ffn, 0, o.std, NULL);
		if (r >= 0)
			r = add(w, &o, T("ffn_down.weight"), o.type, o.ffn, o.dim, 0, o.std, NULL);
#undef T
	}
	if (r >= 0)
		r = add(w, &o, "output_norm.weight", RT_GGML_TYPE_F32, o.dim, 1, 1, o.std, NULL);
	if (r >= 0 && !o.tie)
		r = add(w, &o, "output.weight", o.type, o.dim, n_vocab, 0, o.std, NULL);
	if (r >= 0)
		r = rt_gguf_writer_write(w, o.out);
	rt_gguf_writer_free(w);
	if (r < 0) {
		fprintf(stderr, "mkmodel: %s: %s\n", o.out, fl_strerror(r));
		return 1;
	}
	return 0;
}
