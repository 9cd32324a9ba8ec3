/* Tokenizers: the built-in tiny SentencePiece vocabulary (merges, byte
 * fallback, specials, BOS, detokenize, regression vectors from
 * data/tiny_vocab_vectors.txt), a tiny byte-level BPE vocabulary, the
 * pre-tokenizer splits, chat templates, load errors, and, when llama.cpp's
 * vocab files are in the cache (FLOTILLA_CACHE or ~/.cache/flotilla), every
 * test vector of llama-spm, phi-3, llama-bpe, qwen2, gpt-2 and mpt. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../../runtime/src/tokenizer_internal.h"
#include "flotilla/cleanup.h"
#include "flotilla/error.h"
#include "flotilla/fs.h"
#include "flotilla/gguf.h"
#include "flotilla/gguf_write.h"
#include "flotilla/tokenizer.h"

#define SP "\xe2\x96\x81"

struct fixture {
	void *mem;
	struct rt_gguf *g;
	struct rt_tokenizer *t;
};

static int load_from_writer(struct rt_gguf_writer *w, struct fixture *f)
{
	size_t len;
	int r = rt_gguf_writer_to_memory(w, &f->mem, &len);
	if (r < 0)
		return r;
	r = rt_gguf_open_memory(f->mem, len, &f->g);
	if (r < 0)
		return r;
	return rt_tokenizer_load(f->g, &f->t);
}

static void fixture_free(struct fixture *f)
{
	rt_tokenizer_free(f->t);
	rt_gguf_free(f->g);
	free(f->mem);
	memset(f, 0, sizeof(*f));
}

static struct fixture tiny;

static int setup_tiny(void **state)
{
	struct rt_gguf_writer *w;
	if (rt_gguf_writer_new(&w) < 0 || rt_tok_tiny_vocab(w) < 0)
		return -1;
	int r = load_from_writer(w, &tiny);
	rt_gguf_writer_free(w);
	return r;
}

static int teardown_tiny(void **state)
{
	fixture_free(&tiny);
	return 0;
}

static size_t tok(const struct rt_tokenizer *t, const char *s, bool add, bool special, int32_t *out,
		  size_t max)
{
	int32_t *ids;
	size_t n;
	assert_int_equal(rt_tokenize(t, s, strlen(s), add, special, &ids, &n), 0);
	assert_true(n <= max);
	memcpy(out, ids, n * sizeof(int32_t));
	free(ids);
	return n;
}

static int32_t id_of(const char *s)
{
	int32_t id = rt_tok_find(tiny.t, s, strlen(s));
	assert_true(id >= 0);
	return id;
}

static void test_tiny_merges(void **state)
{
	struct rt_tokenizer *t = tiny.t;
	assert_int_equal(rt_tok_kind(t), RT_TOK_SPM);
	int32_t out[64];
	size_t n = tok(t, "Hello world", false, false, out, 64);
	assert_int_equal(n, 2);
	assert_int_equal(out[0], id_of(SP "Hello"));
	assert_int_equal(out[1], id_of(SP "world"));
	/* BOS from add_special; no EOS (add_eos_token false). */
	n = tok(t, "Hello world", true, false, out, 64);
	assert_int_equal(n, 3);
	assert_int_equal(out[0], 1);
	assert_int_equal(rt_tok_bos(t), 1);
	assert_int_equal(rt_tok_eos(t), 2);
	assert_true(rt_tok_add_bos(t));
	assert_false(rt_tok_add_eos(t));
	/* Empty text: nothing, or just BOS. */
	n = tok(t, "", false, false, out, 64);
	assert_int_equal(n, 0);
	n = tok(t, "", true, false, out, 64);
	assert_int_equal(n, 1);
	assert_int_equal(out[0], 1);
	/* Spaces: "▁▁▁" is a token, so "  a" -> "▁▁▁a" -> ▁▁▁ + a ("▁a" loses: ▁▁ ranks higher). */
	n = tok(t, "  x", false, false, out, 64);
	assert_int_equal(n, 2);
	assert_int_equal(out[0], id_of(SP SP SP));
	assert_int_equal(out[1], id_of("x"));
}

static void test_tiny_byte_fallback(void **state)
{
	struct rt_tokenizer *t = tiny.t;
	int32_t out[64];
	size_t n = tok(t, "\xc3\xa9", false, false, out, 64); /* é */
	assert_int_equal(n, 3);
	assert_int_equal(out[0], id_of(SP));
	assert_int_equal(out[1], RT_TOK_TINY_FIRST_BYTE + 0xc3);
	assert_int_equal(out[2], RT_TOK_TINY_FIRST_BYTE + 0xa9);
	/* Invalid UTF-8 and NUL bytes are bytes too. */
	const char bad[] = {'a', (char)0xff, 0, 'b'};
	int32_t *ids;
	assert_int_equal(rt_tokenize(t, bad, sizeof(bad), false, false, &ids, &n), 0);
	/* ▁a (merge "▁a"), then 0xff starts a 4-byte symbol: ff 00 62 (the 3 bytes
	 * left) is no token, so all three fall back to byte tokens. */
	assert_int_equal(n, 4);
	assert_int_equal(ids[0], id_of(SP "a"));
	assert_int_equal(ids[1], RT_TOK_TINY_FIRST_BYTE + 0xff);
	assert_int_equal(ids[2], RT_TOK_TINY_FIRST_BYTE + 0x00);
	assert_int_equal(ids[3], RT_TOK_TINY_FIRST_BYTE + 'b');
	char *text;
	size_t len;
	assert_int_equal(rt_detokenize(t, ids, n, false, true, &text, &len), 0);
	assert_int_equal(len, 4);
	assert_memory_equal(text, bad, 4);
	free(text);
	free(ids);
	size_t pl;
	const char *p = rt_token_piece(t, RT_TOK_TINY_FIRST_BYTE + 0x41, false, &pl);
	assert_int_equal(pl, 1);
	assert_int_equal(p[0], 'A');
	assert_null(rt_token_piece(t, -1, true, &pl));
	assert_null(rt_token_piece(t, (int32_t)rt_tok_n_vocab(t), true, &pl));
}

static void test_tiny_specials(void **state)
{
	struct rt_tokenizer *t = tiny.t;
	int32_t out[128];
	const char *s = "<|im_start|>user\nhi<|im_end|>";
	size_t n = tok(t, s, false, true, out, 128);
	assert_true(n >= 4);
	assert_int_equal(out[0], RT_TOK_TINY_IM_START);
	assert_int_equal(out[n - 1], RT_TOK_TINY_IM_END);
	/* After a special token the text gets its space prefix again. */
	size_t pl0;
	const char *p0 = rt_token_piece(t, out[1], false, &pl0);
	assert_true(pl0 > 0 && p0[0] == ' ');
	size_t n2 = tok(t, s, false, false, out, 128);
	for (size_t i = 0; i < n2; i++)
		assert_true(out[i] != RT_TOK_TINY_IM_START && out[i] != RT_TOK_TINY_IM_END);
	assert_true(n2 > n);
	/* Pieces: control tokens are empty unless special. */
	size_t pl;
	assert_string_equal(rt_token_piece(t, RT_TOK_TINY_IM_START, true, &pl), "<|im_start|>");
	rt_token_piece(t, RT_TOK_TINY_IM_START, false, &pl);
	assert_int_equal(pl, 0);
	assert_true(rt_tok_is_eog(t, 2));
	assert_true(rt_tok_is_eog(t, RT_TOK_TINY_IM_END));
	assert_false(rt_tok_is_eog(t, RT_TOK_TINY_IM_START));
	assert_false(rt_tok_is_eog(t, -5));
	assert_int_equal(rt_tok_type(t, 0), RT_TOKTYPE_UNKNOWN);
	assert_int_equal(rt_tok_type(t, 1), RT_TOKTYPE_CONTROL);
	assert_int_equal(rt_tok_type(t, RT_TOK_TINY_FIRST_BYTE), RT_TOKTYPE_BYTE);
	assert_string_equal(rt_tok_text(t, 1), "<s>");
	assert_null(rt_tok_text(t, 100000));
	assert_int_equal(rt_tok_find(t, "nope", 4), -ENOENT);
}

static void test_tiny_roundtrip(void **state)
{
	static const char *const texts[] = {
		"Hello world", "the model is fine", "  leading spaces", "trailing  ",
		"tabs\tand\nnewlines\n\n", "punct: {x} [y] (z)!?", "The edge you are",
		"mixed UTF-8: \xc3\xa9t\xc3\xa9 \xe2\x82\xac 100 \xf0\x9f\xa6\x99",
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(texts); i++) {
		int32_t *ids;
		size_t n, len;
		char *back;
		assert_int_equal(rt_tokenize(tiny.t, texts[i], strlen(texts[i]), false, false, &ids, &n), 0);
		assert_int_equal(rt_detokenize(tiny.t, ids, n, false, true, &back, &len), 0);
		assert_string_equal(back, texts[i]);
		free(back);
		free(ids);
		/* With BOS first, llama.cpp's rule strips only the first piece's space:
		 * BOS (empty piece) takes it, the text keeps its leading space. */
		assert_int_equal(rt_tokenize(tiny.t, texts[i], strlen(texts[i]), true, false, &ids, &n), 0);
		assert_int_equal(ids[0], 1);
		assert_int_equal(rt_detokenize(tiny.t, ids, n, false, true, &back, &len), 0);
		assert_int_equal(back[0], ' ');
		assert_string_equal(back + 1, texts[i]);
		free(back);
		free(ids);
	}
	int32_t bad_id = 99999;
	char *text;
	assert_int_equal(rt_detokenize(tiny.t, &bad_id, 1, false, false, &text, NULL), -EINVAL);
	assert_int_equal(rt_tokenize(tiny.t, NULL, 5, false, false, NULL, NULL), -EINVAL);
}

/* Regression vectors for the tiny vocabulary: "hex-of-text ids...". */
static void test_tiny_vectors_file(void **state)
{
	const char *src = getenv("FL_SOURCE_DIR");
	char path[1024];
	snprintf(path, sizeof(path), "%s/tests/unit/runtime/data/tiny_vocab_vectors.txt",
		 src ? src : ".");
	char *data;
	size_t len;
	int r = fl_read_file(path, 1 << 20, &data, &len);
	if (r < 0)
		fail_msg("%s: %s", path, fl_strerror(r));
	size_t checked = 0;
	for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
		if (line[0] == '#')
			continue;
		char *sp = strchr(line, ' ');
		assert_non_null(sp);
		*sp = '\0';
		size_t hl = strlen(line);
		char text[512];
		assert_true(hl % 2 == 0 && hl / 2 < sizeof(text));
		for (size_t i = 0; i < hl / 2; i++) {
			unsigned v;
			assert_int_equal(sscanf(line + 2 * i, "%2x", &v), 1);
			text[i] = (char)v;
		}
		int32_t want[256];
		size_t nw = 0;
		char *q = sp + 1;
		while (*q) {
			char *end;
			long v = strtol(q, &end, 10);
			if (end == q)
				break;
			want[nw++] = (int32_t)v;
			q = end;
		}
		int32_t *ids;
		size_t n;
		assert_int_equal(rt_tokenize(tiny.t, text, hl / 2, false, true, &ids, &n), 0);
		assert_int_equal(n, nw);
		assert_memory_equal(ids, want, n * sizeof(int32_t));
		free(ids);
		checked++;
	}
	free(data);
	assert_true(checked >= 10);
}

/* ---- byte-level BPE on a tiny vocabulary ---- */

static void test_bpe_tiny(void **state)
{
	/* 256 byte tokens in GPT-2's byte->unicode encoding, then merges. */
	char store[256][4];
	const char *toks[256 + 8];
	for (int b = 0; b < 256; b++) {
		size_t l = rt_byte_to_utf8((uint8_t)b, store[b]);
		store[b][l] = '\0';
		toks[b] = store[b];
	}
	const char *merged[] = {"\xc4\xa0t", "he", "\xc4\xa0the", "\xc4\xa0\x61", "<|endoftext|>"};
	for (size_t i = 0; i < FL_ARRAY_SIZE(merged); i++)
		toks[256 + i] = merged[i];
	size_t nt = 256 + FL_ARRAY_SIZE(merged);
	int32_t types[256 + 8];
	for (size_t i = 0; i < nt; i++)
		types[i] = 1;
	types[nt - 1] = 3;
	const char *merges[] = {"\xc4\xa0 t", "h e", "\xc4\xa0t he", "\xc4\xa0 a", "nospace"};
	struct rt_gguf_writer *w;
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	assert_int_equal(rt_gguf_add_str(w, "tokenizer.ggml.model", "gpt2"), 0);
	assert_int_equal(rt_gguf_add_str(w, "tokenizer.ggml.pre", "gpt-2"), 0);
	assert_int_equal(rt_gguf_add_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, nt), 0);
	assert_int_equal(rt_gguf_add_arr(w, "tokenizer.ggml.token_type", RT_GGUF_I32, types, nt), 0);
	assert_int_equal(rt_gguf_add_arr_str(w, "tokenizer.ggml.merges", merges, NULL, 5), 0);
	assert_int_equal(rt_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)nt - 1), 0);
	struct fixture f = {0};
	assert_int_equal(load_from_writer(w, &f), 0);
	rt_gguf_writer_free(w);
	int32_t out[64];
	size_t n = tok(f.t, "the a theX", false, false, out, 64);
	/* words: "the" " a" " theX" -> t,he | Ġa | Ġthe, X */
	assert_int_equal(n, 5);
	assert_int_equal(out[0], 't');
	assert_int_equal(out[1], 257); /* "he" */
	assert_int_equal(out[2], 259); /* "Ġa" */
	assert_int_equal(out[3], 258); /* "Ġthe" */
	assert_int_equal(out[4], 'X');
	/* add_special: gpt-2 adds no BOS by default. */
	n = tok(f.t, "a<|endoftext|>", true, true, out, 64);
	assert_int_equal(n, 2);
	assert_int_equal(out[1], (int32_t)nt - 1);
	assert_true(rt_tok_is_eog(f.t, (int32_t)nt - 1));
	/* Detokenize decodes the byte-level encoding (space = Ġ, newline = Ċ). */
	int32_t *ids;
	const char *txt = " the\n\xff";
	assert_int_equal(rt_tokenize(f.t, txt, strlen(txt), false, false, &ids, &n), 0);
	char *back;
	size_t bl;
	assert_int_equal(rt_detokenize(f.t, ids, n, false, false, &back, &bl), 0);
	/* 0xff is invalid UTF-8: it becomes U+FFFD (EF BF BD) like llama.cpp. */
	assert_string_equal(back, " the\n\xef\xbf\xbd");
	free(back);
	free(ids);
	assert_string_equal(rt_tok_pre(f.t), "gpt-2");
	fixture_free(&f);
}

/* ---- pre-tokenizer splits ---- */

static void check_split(enum rt_pre_kind kind, const char *text, const char *const *want, size_t nw)
{
	size_t len = strlen(text);
	uint32_t cpts[256];
	size_t words[256];
	size_t nc = rt_utf8_decode(text, len, cpts);
	size_t n = rt_pretokenize(kind, cpts, nc, words);
	if (n != nw)
		fail_msg("'%s' kind %d: %zu words, want %zu", text, kind, n, nw);
	size_t ci = 0;
	for (size_t i = 0; i < n; i++) {
		char buf[256];
		size_t bl = 0;
		for (size_t k = 0; k < words[i]; k++)
			bl += rt_utf8_encode(cpts[ci + k], buf + bl);
		buf[bl] = '\0';
		ci += words[i];
		if (strcmp(buf, want[i]))
			fail_msg("'%s' kind %d word %zu: '%s' want '%s'", text, kind, i, buf, want[i]);
	}
}

static void test_pretokenizers(void **state)
{
	const char *gpt2[] = {"Hello", " world", "'s", " 1234", " ", " x", "!!", " \xc3\xa9t\xc3\xa9"};
	check_split(RT_PRE_GPT2, "Hello world's 1234  x!! \xc3\xa9t\xc3\xa9", gpt2, FL_ARRAY_SIZE(gpt2));
	const char *l3[] = {"Hello", " world", "'S", " ", "123", "4", " ", " x", "!!\n\n", "\xc3\xa9t\xc3\xa9"};
	check_split(RT_PRE_LLAMA3, "Hello world'S 1234  x!!\n\n\xc3\xa9t\xc3\xa9", l3, FL_ARRAY_SIZE(l3));
	const char *q2[] = {"ab", "1", "2", "3", "4", " ", " x", "\n\n", " y"};
	check_split(RT_PRE_QWEN2, "ab1234  x\n\n y", q2, FL_ARRAY_SIZE(q2));
	const char *l3c[] = {"123", "456", "7"};
	check_split(RT_PRE_LLAMA3, "1234567", l3c, 3);
	const char *ws[] = {"a", "   ", " b", "   "};
	check_split(RT_PRE_GPT2, "a    b   ", ws, 4);
	check_split(RT_PRE_GPT2, "", NULL, 0);
	/* byte <-> unicode map is a bijection on 0..255 */
	for (int b = 0; b < 256; b++) {
		char u[4];
		size_t l = rt_byte_to_utf8((uint8_t)b, u);
		uint32_t c;
		assert_int_equal(rt_utf8_decode(u, l, &c), 1);
		assert_int_equal(rt_cpt_to_byte(c), b);
	}
	assert_int_equal(rt_cpt_to_byte(0x20), -1);
	assert_int_equal(rt_cpt_to_byte(0x1000), -1);
}

/* ---- chat templates ---- */

static void test_chat(void **state)
{
	const struct rt_chat_msg msgs[] = {
		{"system", "Be brief."}, {"user", " Hi "}, {"assistant", "Hello."}, {"user", "Bye"}};
	char *out;
	size_t len;
	assert_int_equal(rt_tok_chat_family(tiny.t), RT_CHAT_CHATML);
	assert_int_equal(rt_chat_render(tiny.t, msgs, 2, true, &out, &len), 0);
	assert_string_equal(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi "
				 "<|im_end|>\n<|im_start|>assistant\n");
	assert_int_equal(len, strlen(out));
	free(out);
	assert_int_equal(rt_chat_render_family(RT_CHAT_LLAMA3, false, msgs, 2, true, &out, &len), 0);
	assert_string_equal(out, "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
				 "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
				 "<|start_header_id|>assistant<|end_header_id|>\n\n");
	free(out);
	assert_int_equal(rt_chat_render_family(RT_CHAT_LLAMA2, true, msgs, 4, true, &out, &len), 0);
	assert_string_equal(out, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi  [/INST]Hello.</s>"
				 "[INST] Bye [/INST]");
	free(out);
	assert_int_equal(rt_chat_render_family(RT_CHAT_LLAMA2, false, msgs, 2, false, &out, &len), 0);
	assert_string_equal(out, "[INST] Be brief.\n Hi  [/INST]");
	free(out);
	/* The rendered chatml parses back into its special tokens. */
	assert_int_equal(rt_chat_render(tiny.t, msgs, 2, true, &out, &len), 0);
	int32_t *ids;
	size_t n;
	assert_int_equal(rt_tokenize(tiny.t, out, len, true, true, &ids, &n), 0);
	size_t starts = 0;
	for (size_t i = 0; i < n; i++)
		starts += ids[i] == RT_TOK_TINY_IM_START;
	assert_int_equal(starts, 3);
	free(ids);
	free(out);
	assert_int_equal(rt_chat_detect("{{ '[INST] ' + content }}"), RT_CHAT_LLAMA2);
	assert_int_equal(rt_chat_detect("<|start_header_id|>x<|end_header_id|>"), RT_CHAT_LLAMA3);
	assert_int_equal(rt_chat_detect("{{ bos }}"), RT_CHAT_UNKNOWN);
	assert_int_equal(rt_chat_detect(NULL), RT_CHAT_UNKNOWN);
	assert_string_equal(rt_chat_family_name(RT_CHAT_CHATML), "chatml");
	assert_int_equal(rt_chat_render_family(RT_CHAT_UNKNOWN, false, msgs, 1, true, &out, &len),
			 -FL_EUNSUPPORTED);
	const struct rt_chat_msg bad[] = {{"user", NULL}};
	assert_int_equal(rt_chat_render_family(RT_CHAT_CHATML, false, bad, 1, true, &out, &len), -EINVAL);
}

/* ---- load errors ---- */

static int try_load(void (*fill)(struct rt_gguf_writer *))
{
	struct rt_gguf_writer *w;
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	fill(w);
	struct fixture f = {0};
	int r = load_from_writer(w, &f);
	if (r < 0)
		assert_null(f.t); /* nothing returned on error */
	rt_gguf_writer_free(w);
	fixture_free(&f);
	return r;
}

static void fill_none(struct rt_gguf_writer *w) { rt_gguf_add_str(w, "general.name", "x"); }
static void fill_bert(struct rt_gguf_writer *w) { rt_gguf_add_str(w, "tokenizer.ggml.model", "bert"); }
static void fill_bad_pre(struct rt_gguf_writer *w)
{
	const char *t[] = {"a"};
	rt_gguf_add_str(w, "tokenizer.ggml.model", "gpt2");
	rt_gguf_add_str(w, "tokenizer.ggml.pre", "klingon");
	rt_gguf_add_arr_str(w, "tokenizer.ggml.tokens", t, NULL, 1);
}
static void fill_no_merges(struct rt_gguf_writer *w)
{
	const char *t[] = {"a"};
	rt_gguf_add_str(w, "tokenizer.ggml.model", "gpt2");
	rt_gguf_add_str(w, "tokenizer.ggml.pre", "qwen2");
	rt_gguf_add_arr_str(w, "tokenizer.ggml.tokens", t, NULL, 1);
}
static void fill_int_tokens(struct rt_gguf_writer *w)
{
	const int32_t t[] = {1};
	rt_gguf_add_str(w, "tokenizer.ggml.model", "llama");
	rt_gguf_add_arr(w, "tokenizer.ggml.tokens", RT_GGUF_I32, t, 1);
}
static void fill_short_scores(struct rt_gguf_writer *w)
{
	const char *t[] = {"a", "b"};
	const float s[] = {0};
	rt_gguf_add_str(w, "tokenizer.ggml.model", "llama");
	rt_gguf_add_arr_str(w, "tokenizer.ggml.tokens", t, NULL, 2);
	rt_gguf_add_arr(w, "tokenizer.ggml.scores", RT_GGUF_F32, s, 1);
}
static void fill_bad_bos(struct rt_gguf_writer *w)
{
	const char *t[] = {"a", "b"};
	rt_gguf_add_str(w, "tokenizer.ggml.model", "llama");
	rt_gguf_add_arr_str(w, "tokenizer.ggml.tokens", t, NULL, 2);
	rt_gguf_add_str(w, "tokenizer.ggml.bos_token_id", "one");
}
static void fill_minimal_spm(struct rt_gguf_writer *w)
{
	const char *t[] = {"", "b", SP "b"};
	rt_gguf_add_str(w, "tokenizer.ggml.model", "llama");
	rt_gguf_add_arr_str(w, "tokenizer.ggml.tokens", t, NULL, 3);
	rt_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", 1000); /* out of range: default kept */
}

static void test_load_errors(void **state)
{
	assert_int_equal(try_load(fill_none), -FL_EMISSING);
	assert_int_equal(try_load(fill_bert), -FL_EUNSUPPORTED);
	assert_int_equal(try_load(fill_bad_pre), -FL_EUNSUPPORTED);
	assert_int_equal(try_load(fill_no_merges), -FL_EMISSING);
	assert_int_equal(try_load(fill_int_tokens), -FL_ESCHEMA);
	assert_int_equal(try_load(fill_short_scores), -FL_ESCHEMA);
	assert_int_equal(try_load(fill_bad_bos), -FL_ESCHEMA);
	assert_int_equal(try_load(fill_minimal_spm), 0);
	struct rt_gguf_writer *w;
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	fill_minimal_spm(w);
	struct fixture f = {0};
	assert_int_equal(load_from_writer(w, &f), 0);
	rt_gguf_writer_free(w);
	assert_string_equal(rt_tok_text(f.t, 0), "[EMPTY_0]");
	assert_int_equal(rt_tok_bos(f.t), 1); /* SPM default */
	int32_t out[8];
	size_t n = tok(f.t, "b", false, false, out, 8);
	assert_int_equal(n, 1);
	assert_int_equal(out[0], 2);
	/* No byte tokens: every byte of "▁z" (E2 96 81 7A) falls back to <unk> (0). */
	n = tok(f.t, "z", false, false, out, 8);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(out[i], 0);
	fixture_free(&f);
	assert_int_equal(rt_tokenizer_load(NULL, NULL), -EINVAL);
	rt_tokenizer_free(NULL);
}

/* ---- llama.cpp's vocab vectors (when cached) ---- */

static int run_vectors(const char *dir, const char *name, size_t *ret_pass, size_t *ret_total)
{
	char path[1024], p2[1100];
	snprintf(path, sizeof(path), "%s/ggml-vocab-%s.gguf", dir, name);
	struct rt_gguf *g;
	int r = rt_gguf_open(path, &g);
	if (r < 0)
		return r;
	struct rt_tokenizer *t;
	r = rt_tokenizer_load(g, &t);
	rt_gguf_free(g);
	if (r < 0)
		return r;
	char *inp, *out;
	size_t il, ol;
	snprintf(p2, sizeof(p2), "%s.inp", path);
	r = fl_read_file(p2, 1 << 24, &inp, &il);
	if (r < 0) {
		rt_tokenizer_free(t);
		return r;
	}
	snprintf(p2, sizeof(p2), "%s.out", path);
	r = fl_read_file(p2, 1 << 24, &out, &ol);
	if (r < 0) {
		free(inp);
		rt_tokenizer_free(t);
		return r;
	}
	static const char sep[] = "\n__ggml_vocab_test__\n";
	size_t pos = 0, pass = 0, total = 0;
	char *line = out;
	while (pos < il) {
		char *nx = memmem(inp + pos, il - pos, sep, strlen(sep));
		size_t end = nx ? (size_t)(nx - inp) : il;
		char *eol = strchr(line, '\n');
		if (!eol)
			break;
		*eol = '\0';
		int32_t *ids;
		size_t n;
		total++;
		if (rt_tokenize(t, inp + pos, end - pos, false, false, &ids, &n) == 0) {
			bool ok = true;
			char *q = line;
			size_t k = 0;
			for (;;) {
				while (*q == ' ')
					q++;
				if (!*q)
					break;
				char *e;
				long v = strtol(q, &e, 10);
				q = e;
				if (k >= n || ids[k] != v)
					ok = false;
				k++;
			}
			pass += ok && k == n;
			if (!(ok && k == n))
				print_message("  %s mismatch on '%.*s'\n", name, (int)(end - pos), inp + pos);
			free(ids);
		}
		line = eol + 1;
		if (!nx)
			break;
		pos = end + strlen(sep);
	}
	free(inp);
	free(out);
	rt_tokenizer_free(t);
	*ret_pass = pass;
	*ret_total = total;
	return 0;
}

static void test_llamacpp_vectors(void **state)
{
	const char *cache = getenv("FLOTILLA_CACHE");
	const char *home = getenv("HOME");
	char dir[900];
	if (cache && *cache)
		snprintf(dir, sizeof(dir), "%s/llama.cpp-src/models", cache);
	else
		snprintf(dir, sizeof(dir), "%s/.cache/flotilla/llama.cpp-src/models", home ? home : "");
	char probe[1000];
	snprintf(probe, sizeof(probe), "%s/ggml-vocab-llama-spm.gguf.out", dir);
	if (access(probe, R_OK) != 0) {
		print_message("SKIP: llama.cpp vocab vectors not found in %s "
			      "(run tests/fetch-llama-assets.sh)\n", dir);
		skip();
	}
	static const char *const names[] = {"llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2", "mpt"};
	for (size_t i = 0; i < FL_ARRAY_SIZE(names); i++) {
		size_t pass = 0, total = 0;
		int r = run_vectors(dir, names[i], &pass, &total);
		if (r < 0)
			fail_msg("%s: %s (%s)", names[i], fl_strerror(r), rt_gguf_last_error());
		print_message("vocab %-10s: %zu/%zu vectors match llama.cpp\n", names[i], pass, total);
		assert_true(total >= 40);
		assert_int_equal(pass, total);
	}
}

/* llama.cpp's own llama_tokenize() results with add_special / parse_special
 * on chat-formatted and tricky texts (data/llamacpp_special_vectors.txt,
 * made with libllama), checked when the vocabularies are cached. */
static void test_llamacpp_special_vectors(void **state)
{
	const char *cache = getenv("FLOTILLA_CACHE");
	const char *home = getenv("HOME");
	char dir[900];
	if (cache && *cache)
		snprintf(dir, sizeof(dir), "%s/llama.cpp-src/models", cache);
	else
		snprintf(dir, sizeof(dir), "%s/.cache/flotilla/llama.cpp-src/models", home ? home : "");
	char probe[1000];
	snprintf(probe, sizeof(probe), "%s/ggml-vocab-llama-spm.gguf", dir);
	if (access(probe, R_OK) != 0) {
		print_message("SKIP: llama.cpp vocab files not found in %s\n", dir);
		skip();
	}
	const char *src = getenv("FL_SOURCE_DIR");
	char path[1024];
	snprintf(path, sizeof(path), "%s/tests/unit/runtime/data/llamacpp_special_vectors.txt",
		 src ? src : ".");
	char *data;
	size_t len;
	assert_int_equal(fl_read_file(path, 1 << 20, &data, &len), 0);
	char cur[64] = "";
	struct rt_tokenizer *t = NULL;
	size_t checked = 0;
	char *save = NULL;
	for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == '#')
			continue;
		char vocab[64], hex[1024];
		int mode, used;
		assert_int_equal(sscanf(line, "%63s %d %1023s%n", vocab, &mode, hex, &used), 3);
		if (strcmp(vocab, cur) != 0) {
			rt_tokenizer_free(t);
			char vp[1100];
			snprintf(vp, sizeof(vp), "%s/ggml-vocab-%s.gguf", dir, vocab);
			struct rt_gguf *g;
			assert_int_equal(rt_gguf_open(vp, &g), 0);
			assert_int_equal(rt_tokenizer_load(g, &t), 0);
			rt_gguf_free(g);
			snprintf(cur, sizeof(cur), "%s", vocab);
		}
		char text[512];
		size_t tl = 0;
		if (strcmp(hex, "-") != 0) {
			for (; hex[2 * tl]; tl++) {
				unsigned v;
				assert_int_equal(sscanf(hex + 2 * tl, "%2x", &v), 1);
				text[tl] = (char)v;
			}
		}
		int32_t want[256];
		size_t nw = 0;
		char *q = line + used;
		for (;;) {
			char *end;
			long v = strtol(q, &end, 10);
			if (end == q)
				break;
			want[nw++] = (int32_t)v;
			q = end;
		}
		int32_t *ids;
		size_t n;
		assert_int_equal(rt_tokenize(t, text, tl, mode & 1, mode & 2, &ids, &n), 0);
		if (n != nw || memcmp(ids, want, n * sizeof(int32_t)) != 0)
			fail_msg("%s mode %d text %s: %zu ids, want %zu", vocab, mode, hex, n, nw);
		free(ids);
		checked++;
	}
	rt_tokenizer_free(t);
	free(data);
	print_message("special/add_special vectors: %zu/%zu match llama.cpp\n", checked, checked);
	assert_true(checked >= 280);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tiny_merges),
		cmocka_unit_test(test_tiny_byte_fallback),
		cmocka_unit_test(test_tiny_specials),
		cmocka_unit_test(test_tiny_roundtrip),
		cmocka_unit_test(test_tiny_vectors_file),
		cmocka_unit_test(test_bpe_tiny),
		cmocka_unit_test(test_pretokenizers),
		cmocka_unit_test(test_chat),
		cmocka_unit_test(test_load_errors),
		cmocka_unit_test(test_llamacpp_vectors),
		cmocka_unit_test(test_llamacpp_special_vectors),
	};
	return cmocka_run_group_tests(tests, setup_tiny, teardown_tiny);
}
