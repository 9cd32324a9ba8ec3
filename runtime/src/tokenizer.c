/* Tokenizers from GGUF metadata: SentencePiece-style ("llama") and byte-level
 * BPE ("gpt2"), following llama.cpp's llama-vocab.cpp behaviour (facts, not
 * code): special-token partition first, then per text fragment either the
 * SPM score-ordered bigram merge with byte fallback, or the BPE pre-tokenizer
 * split + rank-ordered merges. See tokenizer.h. */
#include "flotilla/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/cleanup.h"
#include "flotilla/error.h"
#include "flotilla/util.h"
#include "tokenizer_internal.h"

struct merge {
	uint32_t a_off, a_len, b_off, b_len; /* into merge_arena */
	int32_t rank;
};

struct rt_tokenizer {
	enum rt_tok_kind kind;
	enum rt_pre_kind pre;
	char pre_name[64];
	uint32_t n_vocab;

	char *text_arena;
	uint32_t *text_off, *text_len;
	float *scores;
	uint8_t *types; /* GGUF token type (enum rt_tok_attr) */
	uint8_t *attrs; /* llama.cpp-style attribute bits (A_*) */
	uint8_t *eog;
	uint32_t *hash; /* token text -> id + 1 */
	size_t hash_mask;

	char *merge_arena;
	struct merge *merges;
	size_t n_merges;
	uint32_t *merge_hash; /* -> merge index + 1 */
	size_t merge_mask;

	char *piece_arena;
	uint32_t *piece_off, *piece_len;

	int32_t *special; /* special-token cache, longest text first */
	size_t n_special;

	int32_t bos, eos, eot, eom, unk, pad;
	int32_t fim[6]; /* pre, suf, mid, pad, rep, sep */
	bool add_bos, add_eos, add_space_prefix, ignore_merges;
	char *chat_template;
};

/* Token attributes as llama.cpp keeps them: bits, so that a user-defined
 * token can also be made control. */
enum {
	A_UNKNOWN = 1,
	A_UNUSED = 2,
	A_NORMAL = 4,
	A_CONTROL = 8,
	A_USER_DEFINED = 16,
	A_BYTE = 32,
	A_LSTRIP = 64,
	A_RSTRIP = 128,
};

static uint8_t attr_of_type(uint8_t type)
{
	switch (type) {
	case RT_TOKTYPE_UNKNOWN: return A_UNKNOWN;
	case RT_TOKTYPE_UNUSED: return A_UNUSED;
	case RT_TOKTYPE_NORMAL: return A_NORMAL;
	case RT_TOKTYPE_CONTROL: return A_CONTROL;
	case RT_TOKTYPE_USER_DEFINED: return A_USER_DEFINED;
	case RT_TOKTYPE_BYTE: return A_BYTE;
	default: return 0;
	}
}

/* ---- small helpers ---- */

struct i32vec {
	int32_t *v;
	size_t n, cap;
};

static int vpush(struct i32vec *v, int32_t x)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 64;
		int32_t *p = realloc(v->v, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		v->v = p;
		v->cap = cap;
	}
	v->v[v->n++] = x;
	return 0;
}

static uint64_t fnv1a(const void *data, size_t n, uint64_t h)
{
	const uint8_t *p = data;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

static size_t table_size(size_t n)
{
	size_t cap = 16;
	while (cap < n * 2)
		cap <<= 1;
	return cap;
}

static const char *tok_text(const struct rt_tokenizer *t, uint32_t id) { return t->text_arena + t->text_off[id]; }

int32_t rt_tok_find(const struct rt_tokenizer *t, const char *text, size_t len)
{
	size_t i = fnv1a(text, len, FNV_INIT) & t->hash_mask;
	for (;;) {
		uint32_t e = t->hash[i];
		if (!e)
			return -ENOENT;
		uint32_t id = e - 1;
		if (t->text_len[id] == len && memcmp(tok_text(t, id), text, len) == 0)
			return (int32_t)id;
		i = (i + 1) & t->hash_mask;
	}
}

static uint64_t merge_hash(const char *a, size_t al, const char *b, size_t bl)
{
	uint64_t h = fnv1a(a, al, FNV_INIT);
	h = fnv1a("\xff", 1, h ^ al);
	return fnv1a(b, bl, h);
}

static int find_rank(const struct rt_tokenizer *t, const char *a, size_t al, const char *b,
		     size_t bl)
{
	if (!t->merge_hash)
		return -1;
	size_t i = merge_hash(a, al, b, bl) & t->merge_mask;
	for (;;) {
		uint32_t e = t->merge_hash[i];
		if (!e)
			return -1;
		const struct merge *m = &t->merges[e - 1];
		if (m->a_len == al && m->b_len == bl && memcmp(t->merge_arena + m->a_off, a, al) == 0 &&
		    memcmp(t->merge_arena + m->b_off, b, bl) == 0)
			return m->rank;
		i = (i + 1) & t->merge_mask;
	}
}

/* ---- loading ---- */

void rt_tokenizer_free(struct rt_tokenizer *t)
{
	if (!t)
		return;
	free(t->text_arena);
	free(t->text_off);
	free(t->text_len);
	free(t->scores);
	free(t->types);
	free(t->attrs);
	free(t->eog);
	free(t->hash);
	free(t->merge_arena);
	free(t->merges);
	free(t->merge_hash);
	free(t->piece_arena);
	free(t->piece_off);
	free(t->piece_len);
	free(t->special);
	free(t->chat_template);
	free(t);
}
FL_DEFINE_CLEANUP(struct rt_tokenizer, rt_tokenizer_free)

struct pre_name {
	const char *name;
	enum rt_pre_kind kind;
	bool ignore_merges;
	bool add_bos;
};

static const struct pre_name pre_names[] = {
	{"llama3", RT_PRE_LLAMA3, true, true},     {"llama-v3", RT_PRE_LLAMA3, true, true},
	{"llama-bpe", RT_PRE_LLAMA3, true, true},  {"falcon3", RT_PRE_LLAMA3, true, true},
	{"falcon-h1", RT_PRE_LLAMA3, true, true},  {"pixtral", RT_PRE_LLAMA3, true, true},
	{"midm-2.0", RT_PRE_LLAMA3, true, true},   {"lfm2", RT_PRE_LLAMA3, true, true},
	{"dbrx", RT_PRE_LLAMA3, false, false},     {"smaug-bpe", RT_PRE_LLAMA3, false, false},
	{"qwen2", RT_PRE_QWEN2, false, false},     {"deepseek-r1-qwen", RT_PRE_QWEN2, false, false},
	{"stablelm2", RT_PRE_QWEN2, false, false}, {"hunyuan", RT_PRE_QWEN2, false, false},
	{"gpt-2", RT_PRE_GPT2, false, false},      {"phi-2", RT_PRE_GPT2, false, false},
	{"jina-es", RT_PRE_GPT2, false, false},    {"jina-de", RT_PRE_GPT2, false, false},
	{"gigachat", RT_PRE_GPT2, false, false},   {"jina-v2-es", RT_PRE_GPT2, false, false},
	{"jina-v2-de", RT_PRE_GPT2, false, false}, {"mpt", RT_PRE_GPT2, false, false},
	{"olmo", RT_PRE_GPT2, false, false},       {"jais", RT_PRE_GPT2, false, false},
	{"trillion", RT_PRE_GPT2, false, false},   {"mellum", RT_PRE_GPT2, false, false},
};

static int get_opt_id(const struct rt_gguf *g, const char *key, uint32_t n_vocab, int32_t *id)
{
	uint32_t v;
	int r = rt_gguf_get_u32(g, key, &v);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return -FL_ESCHEMA;
	if (v < n_vocab) /* out of range: keep the default, like llama.cpp */
		*id = (int32_t)v;
	return 0;
}

static int get_opt_bool(const struct rt_gguf *g, const char *key, bool *b)
{
	int r = rt_gguf_get_bool(g, key, b);
	if (r == -ENOENT)
		return 0;
	return r < 0 ? -FL_ESCHEMA : 0;
}

static int load_vocab(struct rt_tokenizer *t, const struct rt_gguf *g)
{
	enum rt_gguf_vtype at;
	uint64_t n;
	int r = rt_gguf_get_arr_n(g, "tokenizer.ggml.tokens", &at, &n);
	if (r == -ENOENT)
		return -FL_EMISSING;
	if (r < 0 || at != RT_GGUF_STRING || n == 0)
		return -FL_ESCHEMA;
	if (n > RT_TOK_MAX_VOCAB)
		return -FL_ETOOBIG;
	t->n_vocab = (uint32_t)n;

	/* Texts (empty ones renamed "[EMPTY_i]" like llama.cpp). */
	size_t total = 0;
	for (uint32_t i = 0; i < t->n_vocab; i++) {
		const char *s;
		size_t len;
		rt_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len);
		total += (len ? len : 20) + 1;
	}
	t->text_arena = malloc(total);
	t->text_off = malloc(n * sizeof(uint32_t));
	t->text_len = malloc(n * sizeof(uint32_t));
	t->scores = calloc(n, sizeof(float));
	t->types = malloc(n);
	t->eog = calloc(n, 1);
	if (!t->text_arena || !t->text_off || !t->text_len || !t->scores || !t->types || !t->eog)
		return -ENOMEM;
	if (total > UINT32_MAX)
		return -FL_ETOOBIG;
	size_t off = 0;
	for (uint32_t i = 0; i < t->n_vocab; i++) {
		const char *s;
		size_t len;
		rt_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len);
		char *w = t->text_arena + off;
		if (len == 0)
			len = (size_t)snprintf(w, 21, "[EMPTY_%u]", i);
		else
			memcpy(w, s, len);
		w[len] = '\0';
		t->text_off[i] = (uint32_t)off;
		t->text_len[i] = (uint32_t)len;
		off += len + 1;
	}

	/* Scores (f32 or i32) and types: optional, at least n_vocab long. */
	r = rt_gguf_get_arr_n(g, "tokenizer.ggml.scores", &at, &n);
	if (r == 0) {
		if ((at != RT_GGUF_F32 && at != RT_GGUF_I32) || n < t->n_vocab)
			return -FL_ESCHEMA;
		_cleanup_free_ float *tmp = malloc(n * sizeof(float));
		if (!tmp)
			return -ENOMEM;
		if (rt_gguf_get_arr_f32(g, "tokenizer.ggml.scores", tmp, n) < 0)
			return -FL_ESCHEMA;
		memcpy(t->scores, tmp, t->n_vocab * sizeof(float));
	} else if (r != -ENOENT) {
		return -FL_ESCHEMA;
	}
	memset(t->types, RT_TOKTYPE_NORMAL, t->n_vocab);
	r = rt_gguf_get_arr_n(g, "tokenizer.ggml.token_type", &at, &n);
	if (r == 0) {
		if (at != RT_GGUF_I32 || n < t->n_vocab)
			return -FL_ESCHEMA;
		_cleanup_free_ int32_t *tmp = malloc(n * sizeof(int32_t));
		if (!tmp)
			return -ENOMEM;
		if (rt_gguf_get_arr_i32(g, "tokenizer.ggml.token_type", tmp, n) < 0)
			return -FL_ESCHEMA;
		for (uint32_t i = 0; i < t->n_vocab; i++)
			t->types[i] = (tmp[i] >= 1 && tmp[i] <= 6) ? (uint8_t)tmp[i] : RT_TOKTYPE_UNDEFINED;
	} else if (r != -ENOENT) {
		return -FL_ESCHEMA;
	}

	/* Text -> id; a later duplicate wins, like llama.cpp's token_to_id map. */
	size_t cap = table_size(t->n_vocab);
	t->hash = calloc(cap, sizeof(uint32_t));
	if (!t->hash)
		return -ENOMEM;
	t->hash_mask = cap - 1;
	for (uint32_t id = 0; id < t->n_vocab; id++) {
		size_t i = fnv1a(tok_text(t, id), t->text_len[id], FNV_INIT) & t->hash_mask;
		for (;;) {
			uint32_t e = t->hash[i];
			if (!e) {
				t->hash[i] = id + 1;
				break;
			}
			if (t->text_len[e - 1] == t->text_len[id] &&
			    memcmp(tok_text(t, e - 1), tok_text(t, id), t->text_len[id]) == 0) {
				t->hash[i] = id + 1;
				break;
			}
			i = (i + 1) & t->hash_mask;
		}
	}
	return 0;
}

static int load_merges(struct rt_tokenizer *t, const struct rt_gguf *g)
{
	enum rt_gguf_vtype at;
	uint64_t n;
	int r = rt_gguf_get_arr_n(g, "tokenizer.ggml.merges", &at, &n);
	if (r == -ENOENT)
		return -FL_EMISSING;
	if (r < 0 || at != RT_GGUF_STRING)
		return -FL_ESCHEMA;
	if (n > RT_TOK_MAX_MERGES)
		return -FL_ETOOBIG;
	size_t total = 0;
	for (uint64_t i = 0; i < n; i++) {
		size_t len;
		const char *s;
		rt_gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &len);
		total += len;
	}
	if (total > UINT32_MAX)
		return -FL_ETOOBIG;
	t->merge_arena = malloc(total ? total : 1);
	t->merges = malloc((n ? n : 1) * sizeof(*t->merges));
	size_t cap = table_size((size_t)n);
	t->merge_hash = calloc(cap, sizeof(uint32_t));
	if (!t->merge_arena || !t->merges || !t->merge_hash)
		return -ENOMEM;
	t->merge_mask = cap - 1;
	size_t off = 0;
	for (uint64_t i = 0; i < n; i++) {
		size_t len;
		const char *s;
		rt_gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &len);
		/* Split at the first space from index 1; none -> ("", "") which never matches. */
		const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
		if (!sp)
			continue;
		size_t al = (size_t)(sp - s), bl = len - al - 1;
		memcpy(t->merge_arena + off, s, al);
		memcpy(t->merge_arena + off + al, sp + 1, bl);
		struct merge m = {(uint32_t)off, (uint32_t)al, (uint32_t)(off + al), (uint32_t)bl,
				  (int32_t)i};
		off += al + bl;
		/* First rule wins (llama.cpp's map emplace). */
		if (find_rank(t, t->merge_arena + m.a_off, al, t->merge_arena + m.b_off, bl) >= 0)
			continue;
		t->merges[t->n_merges] = m;
		size_t h = merge_hash(t->merge_arena + m.a_off, al, t->merge_arena + m.b_off, bl) &
			   t->merge_mask;
		while (t->merge_hash[h])
			h = (h + 1) & t->merge_mask;
		t->merge_hash[h] = (uint32_t)++t->n_merges;
	}
	return 0;
}

static int byte_token_value(const struct rt_tokenizer *t, uint32_t id)
{
	const char *s = tok_text(t, id);
	if (t->text_len[id] != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
		return -1;
	int v = 0;
	for (int i = 3; i < 5; i++) {
		char c = s[i];
		int d = (c >= '0' && c <= '9')   ? c - '0'
			: (c >= 'A' && c <= 'F') ? c - 'A' + 10
			: (c >= 'a' && c <= 'f') ? c - 'a' + 10
						 : -1;
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/* llama_token_to_piece(special = true) for every token. */
static int build_pieces(struct rt_tokenizer *t)
{
	struct fl_buf b = {0};
	int r = 0;
	t->piece_off = malloc(t->n_vocab * sizeof(uint32_t));
	t->piece_len = malloc(t->n_vocab * sizeof(uint32_t));
	if (!t->piece_off || !t->piece_len)
		return -ENOMEM;
	for (uint32_t id = 0; id < t->n_vocab && r >= 0; id++) {
		size_t start = b.len;
		const char *s = tok_text(t, id);
		size_t len = t->text_len[id];
		uint8_t at = t->attrs[id];
		if (at & (A_UNKNOWN | A_CONTROL | A_USER_DEFINED)) {
			r = fl_buf_append(&b, s, len);
		} else if ((at & A_NORMAL) && t->kind == RT_TOK_SPM) {
			for (size_t i = 0; i < len && r >= 0;) {
				if (i + 3 <= len && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
					r = fl_buf_append(&b, " ", 1);
					i += 3;
				} else {
					r = fl_buf_append(&b, s + i, 1);
					i++;
				}
			}
		} else if (at & A_NORMAL) {
			_cleanup_free_ uint32_t *cpts = malloc((len ? len : 1) * sizeof(uint32_t));
			if (!cpts)
				return -ENOMEM;
			size_t nc = rt_utf8_decode(s, len, cpts);
			for (size_t i = 0; i < nc && r >= 0; i++) {
				int byte = rt_cpt_to_byte(cpts[i]);
				if (byte >= 0) {
					char c = (char)byte;
					r = fl_buf_append(&b, &c, 1);
				} else {
					char u[4], hex[16];
					size_t ul = rt_utf8_encode(cpts[i], u);
					r = fl_buf_append(&b, "[UNK_BYTE_0x", 12);
					for (size_t k = 0; k < ul && r >= 0; k++) {
						snprintf(hex, sizeof(hex), "%02x", (uint8_t)u[k]);
						r = fl_buf_append(&b, hex, 2);
					}
					if (r >= 0)
						r = fl_buf_append(&b, s, len);
					if (r >= 0)
						r = fl_buf_append(&b, "]", 1);
				}
			}
		} else if (at & A_BYTE) {
			int v = byte_token_value(t, id);
			if (v >= 0) {
				char c = (char)v;
				r = fl_buf_append(&b, &c, 1);
			} else {
				r = fl_buf_append(&b, s, len);
			}
		}
		if (b.len - start > UINT32_MAX || b.len > UINT32_MAX)
			r = -FL_ETOOBIG;
		t->piece_off[id] = (uint32_t)start;
		t->piece_len[id] = (uint32_t)(b.len - start);
		if (r >= 0)
			r = fl_buf_append(&b, "", 1); /* NUL after each piece */
	}
	if (r < 0) {
		free(b.p);
		return r;
	}
	t->piece_arena = b.p ? b.p : calloc(1, 1);
	return t->piece_arena ? 0 : -ENOMEM;
}

static int cmp_special(const void *a, const void *b, void *arg)
{
	const struct rt_tokenizer *t = arg;
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	if (t->text_len[x] != t->text_len[y])
		return t->text_len[x] > t->text_len[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* llama.cpp finds end-of-turn, end-of-message and fill-in-the-middle tokens
 * by their text when the metadata does not name them, and forces such tokens
 * (and every end-of-generation one) to be control tokens. */
static const char *const eot_names[] = {
	"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
	"<EOT>", "_<EOT>", "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
	"<end_of_utterance>", NULL};
static const char *const fim_names[6][9] = {
	{"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
	 "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL},
	{"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>",
	 "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL},
	{"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
	 "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL},
	{"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL},
	{"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL},
	{"<|file_sep|>", NULL},
};
static const char *const eog_names[] = {
	"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
	"<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
	"<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
	"<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[", NULL};

static int32_t find_first(const struct rt_tokenizer *t, const char *const *names)
{
	for (size_t i = 0; names[i]; i++) {
		int32_t id = rt_tok_find(t, names[i], strlen(names[i]));
		if (id >= 0)
			return id;
	}
	return -1;
}

static void detect_special(struct rt_tokenizer *t)
{
	if (t->eot < 0 && (t->eot = find_first(t, eot_names)) >= 0)
		t->attrs[t->eot] |= A_CONTROL;
	static const char *const eom_names[] = {"<|eom_id|>", NULL};
	if (t->eom < 0 && (t->eom = find_first(t, eom_names)) >= 0)
		t->attrs[t->eom] |= A_CONTROL;
	for (int k = 0; k < 6; k++)
		if (t->fim[k] < 0 && (t->fim[k] = find_first(t, fim_names[k])) >= 0)
			t->attrs[t->fim[k]] |= A_CONTROL;
	for (int k = 3; k < 6; k++) /* fim pad, rep, sep end generation */
		if (t->fim[k] >= 0)
			t->eog[t->fim[k]] = 1;
	for (size_t i = 0; eog_names[i]; i++) {
		int32_t id = rt_tok_find(t, eog_names[i], strlen(eog_names[i]));
		if (id >= 0) {
			t->eog[id] = 1;
			t->attrs[id] |= A_CONTROL;
		}
	}
	int32_t ids[] = {t->eos, t->eot, t->eom};
	for (size_t i = 0; i < FL_ARRAY_SIZE(ids); i++)
		if (ids[i] >= 0)
			t->eog[ids[i]] = 1;
}

/* Per-model attributes llama.cpp sets by general.name (Phi-3: special tokens
 * swallow the white space after them, except <unk>, <s>, <|endoftext|>). */
static void model_attrs(struct rt_tokenizer *t, const struct rt_gguf *g)
{
	const char *name;
	size_t len;
	if (rt_gguf_get_str(g, "general.name", &name, &len) < 0)
		return;
	char low[256];
	size_t n = len < sizeof(low) - 1 ? len : sizeof(low) - 1;
	for (size_t i = 0; i < n; i++)
		low[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
	low[n] = '\0';
	if (!strstr(low, "phi-3") && !strstr(low, "phi3"))
		return;
	for (size_t i = 0; i < t->n_special; i++)
		t->attrs[t->special[i]] |= A_RSTRIP;
	int32_t id = rt_tok_find(t, "</s>", 4);
	if (id >= 0)
		t->attrs[id] |= A_RSTRIP;
	static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
	for (size_t i = 0; i < FL_ARRAY_SIZE(keep); i++) {
		id = rt_tok_find(t, keep[i], strlen(keep[i]));
		if (id >= 0)
			t->attrs[id] &= (uint8_t)~A_RSTRIP;
	}
}

int rt_tokenizer_load(const struct rt_gguf *g, struct rt_tokenizer **ret_tok)
{
	if (!g || !ret_tok)
		return -EINVAL;
	const char *model;
	int r = rt_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL);
	if (r == -ENOENT)
		return -FL_EMISSING;
	if (r < 0)
		return -FL_ESCHEMA;
	_cleanup_(rt_tokenizer_freep) struct rt_tokenizer *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->eot = t->eom = t->pad = -1;
	for (int k = 0; k < 6; k++)
		t->fim[k] = -1;
	if (strcmp(model, "llama") == 0) {
		t->kind = RT_TOK_SPM;
		t->pre = RT_PRE_NONE;
		t->bos = 1;
		t->eos = 2;
		t->unk = 0;
		t->add_bos = true;
		t->add_space_prefix = true;
	} else if (strcmp(model, "gpt2") == 0) {
		t->kind = RT_TOK_BPE;
		t->bos = t->eos = 11;
		t->unk = -1;
		const char *pre = NULL;
		r = rt_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL);
		if (r == -ENOENT)
			pre = "default";
		else if (r < 0)
			return -FL_ESCHEMA;
		size_t pl = strlen(pre);
		if (pl >= sizeof(t->pre_name))
			return -FL_EUNSUPPORTED;
		memcpy(t->pre_name, pre, pl + 1);
		for (size_t i = 0; i < FL_ARRAY_SIZE(pre_names); i++) {
			if (strcmp(pre, pre_names[i].name) == 0) {
				t->pre = pre_names[i].kind;
				t->ignore_merges = pre_names[i].ignore_merges;
				t->add_bos = pre_names[i].add_bos;
			}
		}
		if (t->pre == RT_PRE_NONE)
			return -FL_EUNSUPPORTED;
	} else {
		return -FL_EUNSUPPORTED;
	}

	r = load_vocab(t, g);
	if (r < 0)
		return r;
	if (t->kind == RT_TOK_BPE) {
		r = load_merges(t, g);
		if (r < 0)
			return r;
	}
	/* Defaults out of the vocabulary are disabled. */
	if (t->bos >= (int32_t)t->n_vocab)
		t->bos = -1;
	if (t->eos >= (int32_t)t->n_vocab)
		t->eos = -1;
	if (t->unk >= (int32_t)t->n_vocab)
		t->unk = -1;
	static const struct {
		const char *key;
		size_t off;
	} ids[] = {
		{"tokenizer.ggml.bos_token_id", offsetof(struct rt_tokenizer, bos)},
		{"tokenizer.ggml.eos_token_id", offsetof(struct rt_tokenizer, eos)},
		{"tokenizer.ggml.eot_token_id", offsetof(struct rt_tokenizer, eot)},
		{"tokenizer.ggml.eom_token_id", offsetof(struct rt_tokenizer, eom)},
		{"tokenizer.ggml.unknown_token_id", offsetof(struct rt_tokenizer, unk)},
		{"tokenizer.ggml.padding_token_id", offsetof(struct rt_tokenizer, pad)},
		{"tokenizer.ggml.fim_pre_token_id", offsetof(struct rt_tokenizer, fim[0])},
		{"tokenizer.ggml.fim_suf_token_id", offsetof(struct rt_tokenizer, fim[1])},
		{"tokenizer.ggml.fim_mid_token_id", offsetof(struct rt_tokenizer, fim[2])},
		{"tokenizer.ggml.fim_pad_token_id", offsetof(struct rt_tokenizer, fim[3])},
		{"tokenizer.ggml.fim_rep_token_id", offsetof(struct rt_tokenizer, fim[4])},
		{"tokenizer.ggml.fim_sep_token_id", offsetof(struct rt_tokenizer, fim[5])},
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(ids); i++) {
		r = get_opt_id(g, ids[i].key, t->n_vocab, (int32_t *)((char *)t + ids[i].off));
		if (r < 0)
			return r;
	}
	if ((r = get_opt_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos)) < 0 ||
	    (r = get_opt_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos)) < 0 ||
	    (t->kind == RT_TOK_SPM &&
	     (r = get_opt_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix)) < 0))
		return r;
	if (t->add_bos && t->bos < 0)
		t->add_bos = false;
	if (t->add_eos && t->eos < 0)
		t->add_eos = false;

	/* Same order as llama.cpp's load: text-detected specials, special-token
	 * cache, piece cache, then per-model attributes. */
	t->attrs = malloc(t->n_vocab);
	if (!t->attrs)
		return -ENOMEM;
	for (uint32_t id = 0; id < t->n_vocab; id++)
		t->attrs[id] = attr_of_type(t->types[id]);
	detect_special(t);
	t->special = malloc(t->n_vocab * sizeof(int32_t));
	if (!t->special)
		return -ENOMEM;
	for (uint32_t id = 0; id < t->n_vocab; id++)
		if (t->attrs[id] & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN))
			t->special[t->n_special++] = (int32_t)id;
	qsort_r(t->special, t->n_special, sizeof(int32_t), cmp_special, t);
	r = build_pieces(t);
	if (r < 0)
		return r;
	model_attrs(t, g);

	const char *tmpl;
	size_t tl;
	if (rt_gguf_get_str(g, "tokenizer.chat_template", &tmpl, &tl) == 0) {
		t->chat_template = malloc(tl + 1);
		if (!t->chat_template)
			return -ENOMEM;
		memcpy(t->chat_template, tmpl, tl);
		t->chat_template[tl] = '\0';
	}
	*ret_tok = fl_steal_ptr(t);
	return 0;
}

/* ---- special-token partition ---- */

struct frag {
	int32_t tok; /* -1: text */
	size_t off, len;
};

struct fragvec {
	struct frag *v;
	size_t n, cap;
};

static int fpush(struct fragvec *f, struct frag x)
{
	if (f->n == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 16;
		struct frag *p = realloc(f->v, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		f->v = p;
		f->cap = cap;
	}
	f->v[f->n++] = x;
	return 0;
}

static bool is_c_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static int partition(const struct rt_tokenizer *t, const char *text, size_t len, bool parse_special,
		     struct fragvec *out)
{
	struct fragvec cur = {0}, next = {0};
	int r = 0;
	if (len > 0)
		r = fpush(&cur, (struct frag){-1, 0, len});
	for (size_t si = 0; si < t->n_special && r >= 0 && cur.n > 0; si++) {
		int32_t id = t->special[si];
		uint8_t at = t->attrs[id];
		if (!parse_special && (at & (A_CONTROL | A_UNKNOWN)))
			continue;
		const char *st = tok_text(t, (uint32_t)id);
		size_t sl = t->text_len[id];
		next.n = 0;
		for (size_t i = 0; i < cur.n && r >= 0; i++) {
			struct frag f = cur.v[i];
			if (f.tok >= 0) {
				r = fpush(&next, f);
				continue;
			}
			size_t off = f.off, rem = f.len;
			for (;;) {
				const char *m = rem >= sl ? memmem(text + off, rem, st, sl) : NULL;
				if (!m) {
					if (rem > 0)
						r = fpush(&next, (struct frag){-1, off, rem});
					break;
				}
				size_t mo = (size_t)(m - text);
				size_t left = mo - off;
				if ((at & A_LSTRIP) && left > 0)
					while (left > 0 && is_c_space(text[off + left - 1]))
						left--;
				if (left > 0)
					r = fpush(&next, (struct frag){-1, off, left});
				if (r >= 0)
					r = fpush(&next, (struct frag){id, 0, 0});
				if (r < 0)
					break;
				rem -= (mo - off) + sl;
				off = mo + sl;
				if (at & A_RSTRIP)
					while (rem > 0 && is_c_space(text[off])) {
						off++;
						rem--;
					}
			}
		}
		struct fragvec tmp = cur;
		cur = next;
		next = tmp;
	}
	free(next.v);
	if (r < 0) {
		free(cur.v);
		return r;
	}
	*out = cur;
	return 0;
}

/* ---- SPM ---- */

struct sym {
	int prev, next;
	size_t off, n;
};

struct bigram {
	int left, right;
	float score; /* SPM */
	int rank;    /* BPE */
	size_t size;
};

struct heap {
	struct bigram *v;
	size_t n, cap;
	bool bpe;
};

/* True when A should come out before B. */
static bool before(const struct heap *h, const struct bigram *a, const struct bigram *b)
{
	if (h->bpe)
		return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
	return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(struct heap *h, struct bigram x)
{
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 64;
		struct bigram *p = realloc(h->v, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		h->v = p;
		h->cap = cap;
	}
	size_t i = h->n++;
	h->v[i] = x;
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (!before(h, &h->v[i], &h->v[parent]))
			break;
		struct bigram tmp = h->v[i];
		h->v[i] = h->v[parent];
		h->v[parent] = tmp;
		i = parent;
	}
	return 0;
}

static struct bigram heap_pop(struct heap *h)
{
	struct bigram top = h->v[0];
	h->v[0] = h->v[--h->n];
	size_t i = 0;
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, best = i;
		if (l < h->n && before(h, &h->v[l], &h->v[best]))
			best = l;
		if (r < h->n && before(h, &h->v[r], &h->v[best]))
			best = r;
		if (best == i)
			break;
		struct bigram tmp = h->v[i];
		h->v[i] = h->v[best];
		h->v[best] = tmp;
		i = best;
	}
	return top;
}

struct session {
	const struct rt_tokenizer *t;
	const char *text;
	struct sym *syms;
	size_t n_syms, cap_syms;
	struct heap heap;
	struct i32vec *out;
};

static int add_sym(struct session *s, size_t off, size_t n, size_t end)
{
	if (s->n_syms == s->cap_syms) {
		size_t cap = s->cap_syms ? s->cap_syms * 2 : 64;
		struct sym *p = realloc(s->syms, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		s->syms = p;
		s->cap_syms = cap;
	}
	int idx = (int)s->n_syms;
	s->syms[s->n_syms++] = (struct sym){idx - 1, off + n == end ? -1 : idx + 1, off, n};
	return 0;
}

static int spm_try_bigram(struct session *s, int left, int right)
{
	if (left == -1 || right == -1)
		return 0;
	const struct sym *l = &s->syms[left], *rr = &s->syms[right];
	size_t size = l->n + rr->n;
	int32_t id = rt_tok_find(s->t, s->text + l->off, size);
	if (id < 0)
		return 0;
	return heap_push(&s->heap, (struct bigram){left, right, s->t->scores[id], 0, size});
}

static int32_t spm_byte_token(const struct rt_tokenizer *t, uint8_t c)
{
	char buf[7];
	snprintf(buf, sizeof(buf), "<0x%02X>", c);
	int32_t id = rt_tok_find(t, buf, 6);
	if (id >= 0)
		return id;
	id = rt_tok_find(t, (const char *)&c, 1);
	return id >= 0 ? id : t->unk;
}

static int spm_tokenize(struct session *s, const char *text, size_t len)
{
	int r = 0;
	s->text = text;
	s->n_syms = 0;
	s->heap.n = 0;
	s->heap.bpe = false;
	for (size_t off = 0; off < len && r >= 0;) {
		size_t n = rt_utf8_len((uint8_t)text[off]);
		if (n > len - off)
			n = len - off;
		r = add_sym(s, off, n, len);
		off += n;
	}
	for (size_t i = 1; i < s->n_syms && r >= 0; i++)
		r = spm_try_bigram(s, (int)i - 1, (int)i);
	while (s->heap.n > 0 && r >= 0) {
		struct bigram b = heap_pop(&s->heap);
		struct sym *l = &s->syms[b.left], *rs = &s->syms[b.right];
		if (l->n == 0 || rs->n == 0 || l->n + rs->n != b.size)
			continue;
		l->n += rs->n;
		rs->n = 0;
		l->next = rs->next;
		if (rs->next >= 0)
			s->syms[rs->next].prev = b.left;
		r = spm_try_bigram(s, l->prev, b.left);
		if (r >= 0)
			r = spm_try_bigram(s, b.left, s->syms[b.left].next);
	}
	if (s->n_syms == 0)
		return r;
	for (int i = 0; i != -1 && r >= 0; i = s->syms[i].next) {
		const struct sym *sy = &s->syms[i];
		int32_t id = rt_tok_find(s->t, text + sy->off, sy->n);
		if (id >= 0) {
			r = vpush(s->out, id);
			continue;
		}
		for (size_t j = 0; j < sy->n && r >= 0; j++) {
			int32_t b = spm_byte_token(s->t, (uint8_t)text[sy->off + j]);
			if (b >= 0)
				r = vpush(s->out, b);
		}
	}
	return r;
}

/* ---- BPE ---- */

static int bpe_add_bigram(struct session *s, int left, int right)
{
	if (left == -1 || right == -1)
		return 0;
	const struct sym *l = &s->syms[left], *rr = &s->syms[right];
	int rank = find_rank(s->t, s->text + l->off, l->n, s->text + rr->off, rr->n);
	if (rank < 0)
		return 0;
	return heap_push(&s->heap, (struct bigram){left, right, 0, rank, l->n + rr->n});
}

static int bpe_word(struct session *s, const char *word, size_t len)
{
	int r = 0;
	if (s->t->ignore_merges) {
		int32_t id = rt_tok_find(s->t, word, len);
		if (id >= 0)
			return vpush(s->out, id);
	}
	s->text = word;
	s->n_syms = 0;
	s->heap.n = 0;
	s->heap.bpe = true;
	for (size_t off = 0; off < len && r >= 0;) {
		size_t n = rt_utf8_len((uint8_t)word[off]);
		if (n > len - off)
			n = len - off;
		r = add_sym(s, off, n, len);
		off += n;
	}
	for (size_t i = 1; i < s->n_syms && r >= 0; i++)
		r = bpe_add_bigram(s, (int)i - 1, (int)i);
	while (s->heap.n > 0 && r >= 0) {
		struct bigram b = heap_pop(&s->heap);
		struct sym *l = &s->syms[b.left], *rs = &s->syms[b.right];
		if (l->n == 0 || rs->n == 0 || l->n + rs->n != b.size)
			continue;
		l->n += rs->n;
		rs->n = 0;
		l->next = rs->next;
		if (rs->next >= 0)
			s->syms[rs->next].prev = b.left;
		r = bpe_add_bigram(s, l->prev, b.left);
		if (r >= 0)
			r = bpe_add_bigram(s, b.left, s->syms[b.left].next);
	}
	for (size_t i = 0; i < s->n_syms && r >= 0; i++) {
		const struct sym *sy = &s->syms[i];
		if (sy->n == 0)
			continue;
		int32_t id = rt_tok_find(s->t, word + sy->off, sy->n);
		if (id >= 0) {
			r = vpush(s->out, id);
			continue;
		}
		/* llama.cpp looks up each byte of the encoded text on its own. */
		for (size_t j = 0; j < sy->n && r >= 0; j++) {
			int32_t b = rt_tok_find(s->t, word + sy->off + j, 1);
			if (b >= 0)
				r = vpush(s->out, b);
		}
	}
	return r;
}

static int bpe_tokenize(struct session *s, const char *text, size_t len)
{
	_cleanup_free_ uint32_t *cpts = malloc((len ? len : 1) * sizeof(uint32_t));
	_cleanup_free_ size_t *words = malloc((len ? len : 1) * sizeof(size_t));
	struct fl_buf w = {0};
	if (!cpts || !words)
		return -ENOMEM;
	size_t nc = rt_utf8_decode(text, len, cpts);
	size_t nw = rt_pretokenize(s->t->pre, cpts, nc, words);
	size_t ci = 0;
	int r = 0;
	for (size_t wi = 0; wi < nw && r >= 0; wi++) {
		w.len = 0;
		for (size_t k = 0; k < words[wi] && r >= 0; k++) {
			char u[4];
			size_t ul = rt_utf8_encode(cpts[ci + k], u);
			for (size_t j = 0; j < ul && r >= 0; j++) {
				char e[4];
				size_t el = rt_byte_to_utf8((uint8_t)u[j], e);
				r = fl_buf_append(&w, e, el);
			}
		}
		ci += words[wi];
		if (r >= 0 && w.len > 0)
			r = bpe_word(s, w.p, w.len);
	}
	free(w.p);
	return r;
}

int rt_tokenize(const struct rt_tokenizer *t, const char *text, size_t len, bool add_special,
		bool parse_special, int32_t **ret_tokens, size_t *ret_n)
{
	if (!t || (!text && len) || !ret_tokens || !ret_n)
		return -EINVAL;
	if (len > RT_TOK_MAX_TEXT_BYTES)
		return -FL_ETOOBIG;
	struct fragvec frags = {0};
	struct i32vec out = {0};
	struct session s = {.t = t, .out = &out};
	struct fl_buf buf = {0};
	int r = partition(t, text ? text : "", len, parse_special, &frags);
	if (r < 0)
		return r;

	if (add_special && t->add_bos)
		r = vpush(&out, t->bos);
	bool prev_special = true;
	for (size_t i = 0; i < frags.n && r >= 0; i++) {
		const struct frag *f = &frags.v[i];
		if (f->tok >= 0) {
			r = vpush(&out, f->tok);
			prev_special = true;
			continue;
		}
		if (t->kind == RT_TOK_SPM) {
			/* Space prefix at the start / after a special token, then
			 * every ' ' becomes U+2581. */
			buf.len = 0;
			if (t->add_space_prefix && prev_special)
				r = fl_buf_append(&buf, "\xe2\x96\x81", 3);
			for (size_t j = 0; j < f->len && r >= 0; j++) {
				char c = text[f->off + j];
				r = c == ' ' ? fl_buf_append(&buf, "\xe2\x96\x81", 3) : fl_buf_append(&buf, &c, 1);
			}
			if (r >= 0)
				r = spm_tokenize(&s, buf.p, buf.len);
		} else {
			r = bpe_tokenize(&s, text + f->off, f->len);
		}
		prev_special = false;
	}
	if (r >= 0 && add_special && t->add_eos)
		r = vpush(&out, t->eos);

	free(frags.v);
	free(s.syms);
	free(s.heap.v);
	free(buf.p);
	if (r < 0) {
		free(out.v);
		return r;
	}
	*ret_tokens = out.v ? out.v : malloc(sizeof(int32_t));
	if (!*ret_tokens)
		return -ENOMEM;
	*ret_n = out.n;
	return 0;
}

/* ---- pieces and accessors ---- */

const char *rt_token_piece(const struct rt_tokenizer *t, int32_t id, bool special, size_t *ret_len)
{
	if (!t || id < 0 || (uint32_t)id >= t->n_vocab)
		return NULL;
	if (!special && (t->attrs[id] & (A_CONTROL | A_UNKNOWN))) {
		if (ret_len)
			*ret_len = 0;
		return "";
	}
	if (ret_len)
		*ret_len = t->piece_len[id];
	return t->piece_arena + t->piece_off[id];
}

int rt_detokenize(const struct rt_tokenizer *t, const int32_t *ids, size_t n, bool special,
		  bool remove_leading_space, char **ret_text, size_t *ret_len)
{
	if (!t || (!ids && n) || !ret_text)
		return -EINVAL;
	struct fl_buf b = {0};
	int r = fl_buf_append(&b, "", 0);
	for (size_t i = 0; i < n && r >= 0; i++) {
		size_t len;
		const char *p = rt_token_piece(t, ids[i], special, &len);
		if (!p) {
			r = -EINVAL;
			break;
		}
		if (i == 0 && remove_leading_space && t->kind == RT_TOK_SPM && t->add_space_prefix &&
		    len > 0 && p[0] == ' ') {
			p++;
			len--;
		}
		r = fl_buf_append(&b, p, len);
	}
	if (r < 0) {
		free(b.p);
		return r;
	}
	*ret_text = b.p;
	if (ret_len)
		*ret_len = b.len;
	return 0;
}

enum rt_tok_kind rt_tok_kind(const struct rt_tokenizer *t) { return t->kind; }
uint32_t rt_tok_n_vocab(const struct rt_tokenizer *t) { return t->n_vocab; }
int32_t rt_tok_bos(const struct rt_tokenizer *t) { return t->bos; }
int32_t rt_tok_eos(const struct rt_tokenizer *t) { return t->eos; }
int32_t rt_tok_eot(const struct rt_tokenizer *t) { return t->eot; }
bool rt_tok_add_bos(const struct rt_tokenizer *t) { return t->add_bos; }
bool rt_tok_add_eos(const struct rt_tokenizer *t) { return t->add_eos; }
const char *rt_tok_pre(const struct rt_tokenizer *t) { return t->pre_name; }

bool rt_tok_is_eog(const struct rt_tokenizer *t, int32_t id)
{
	return id >= 0 && (uint32_t)id < t->n_vocab && t->eog[id];
}

int rt_tok_type(const struct rt_tokenizer *t, int32_t id)
{
	if (id < 0 || (uint32_t)id >= t->n_vocab)
		return RT_TOKTYPE_UNDEFINED;
	return t->types[id];
}

const char *rt_tok_text(const struct rt_tokenizer *t, int32_t id)
{
	if (id < 0 || (uint32_t)id >= t->n_vocab)
		return NULL;
	return tok_text(t, (uint32_t)id);
}

const char *rt_tok_chat_template_internal(const struct rt_tokenizer *t) { return t->chat_template; }
