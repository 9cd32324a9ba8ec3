/* Fuzz the tokenizers: arbitrary bytes through the built-in tiny SentencePiece
 * vocabulary and a tiny byte-level BPE vocabulary (each of the three
 * pre-tokenizers), with and without special-token parsing. The first input
 * byte picks the mode. Invariants: tokenizing never fails on valid sizes,
 * every id is in range, and SPM detokenization of tokens made without
 * special parsing gives back the input bytes (unless the input holds a
 * literal U+2581, which SentencePiece reads as a space, or a truncated UTF-8
 * lead that swallows an escaped space). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/gguf.h>
#include <flotilla/gguf_write.h>
#include <flotilla/tokenizer.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct rt_tokenizer *toks[4];

static struct rt_tokenizer *make(int which)
{
	struct rt_gguf_writer *w;
	if (rt_gguf_writer_new(&w) < 0)
		abort();
	if (which == 0) {
		if (rt_tok_tiny_vocab(w) < 0)
			abort();
	} else {
		/* 256 byte tokens in GPT-2's encoding (printable ASCII as itself,
		 * others as U+0100.. in order), a few merges and a control token. */
		static char store[256][4];
		const char *t[260];
		int n_np = 0;
		for (int b = 0; b < 256; b++) {
			int pr = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
			unsigned c = pr ? (unsigned)b : 256u + (unsigned)n_np++;
			if (c < 0x80) {
				store[b][0] = (char)c;
				store[b][1] = 0;
			} else {
				store[b][0] = (char)(0xc0 | (c >> 6));
				store[b][1] = (char)(0x80 | (c & 0x3f));
				store[b][2] = 0;
			}
			t[b] = store[b];
		}
		t[256] = "he";
		t[257] = "\xc4\xa0t";
		t[258] = "\xc4\xa0the";
		t[259] = "<|endoftext|>";
		int32_t types[260];
		for (int i = 0; i < 260; i++)
			types[i] = i == 259 ? 3 : 1;
		const char *merges[] = {"h e", "\xc4\xa0 t", "\xc4\xa0t he"};
		static const char *const pre[] = {"gpt-2", "llama-bpe", "qwen2"};
		if (rt_gguf_add_str(w, "tokenizer.ggml.model", "gpt2") < 0 ||
		    rt_gguf_add_str(w, "tokenizer.ggml.pre", pre[which - 1]) < 0 ||
		    rt_gguf_add_arr_str(w, "tokenizer.ggml.tokens", t, NULL, 260) < 0 ||
		    rt_gguf_add_arr(w, "tokenizer.ggml.token_type", RT_GGUF_I32, types, 260) < 0 ||
		    rt_gguf_add_arr_str(w, "tokenizer.ggml.merges", merges, NULL, 3) < 0)
			abort();
	}
	void *mem;
	size_t len;
	struct rt_gguf *g;
	struct rt_tokenizer *tk;
	if (rt_gguf_writer_to_memory(w, &mem, &len) < 0 || rt_gguf_open_memory(mem, len, &g) < 0 ||
	    rt_tokenizer_load(g, &tk) < 0)
		abort();
	rt_gguf_free(g);
	free(mem);
	rt_gguf_writer_free(w);
	return tk;
}

/* True when no multi-byte lead swallows a following non-continuation byte
 * (SentencePiece splits by lead byte only; a swallowed escaped space would
 * come back as its raw bytes, as in llama.cpp). */
static bool leads_complete(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t l = (s[i] >> 4) >= 0xc ? ((s[i] >> 4) == 0xf ? 4 : (s[i] >> 4) == 0xe ? 3 : 2) : 1;
		if (l > n - i)
			return false;
		for (size_t k = 1; k < l; k++)
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
		i += l;
	}
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int which = data[0] & 3;
	bool special = data[0] & 4, add = data[0] & 8;
	if (!toks[which])
		toks[which] = make(which);
	struct rt_tokenizer *t = toks[which];
	const char *text = (const char *)data + 1;
	size_t len = size - 1;
	int32_t *ids;
	size_t n;
	if (rt_tokenize(t, text, len, add, special, &ids, &n) != 0)
		abort();
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || (uint32_t)ids[i] >= rt_tok_n_vocab(t))
			abort();
	char *back;
	size_t bl;
	if (rt_detokenize(t, ids, n, true, !add, &back, &bl) != 0)
		abort();
	/* SPM keeps every byte (byte fallback); without specials and BOS the
	 * round trip is exact. */
	if (which == 0 && !special && !add && !memmem(text, len, "\xe2\x96\x81", 3) &&
	    leads_complete(data + 1, len) &&
	    (bl != len || memcmp(back, text, len) != 0))
		abort();
	free(back);
	free(ids);
	return 0;
}
