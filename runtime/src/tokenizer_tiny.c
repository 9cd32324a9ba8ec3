/* A tiny SentencePiece vocabulary for tests, fuzzers and demos. See
 * rt_tok_tiny_vocab() in tokenizer.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/cleanup.h"
#include "flotilla/gguf_write.h"
#include "flotilla/tokenizer.h"

#define SP "\xe2\x96\x81" /* U+2581, SentencePiece's space */

/* Merged pieces, most preferred first (score = -index). */
static const char *const tiny_merges[] = {
	SP "t", "he", SP "the", SP "a", "in", "er", "on", "an", "re", SP "s", SP "w", SP "o",
	SP "c", "is", "en", "at", "or", "ll", SP "h", SP "b", SP "f", SP "m", SP "p", "ing",
	SP "to", SP "and", SP "of", SP "in", SP "is", "ed", "es", "ou", "it", "lo", "el",
	SP "H", SP "He", SP "Hel", SP "Hell", SP "Hello", "wor", SP "wor", "ld", SP "world",
	"llo", SP "y", SP "you", SP "are", SP "I", SP "am", SP "fine", SP "model", SP "edge",
	SP SP, SP SP SP, SP SP SP SP,
};

int rt_tok_tiny_vocab(struct rt_gguf_writer *w)
{
	enum { N_SPECIAL = 5, N_BYTES = 256, N_ASCII = 95 /* "▁" + 0x21..0x7e */ };
	const size_t n_merges = sizeof(tiny_merges) / sizeof(tiny_merges[0]);
	const size_t n = N_SPECIAL + N_BYTES + N_ASCII + n_merges;
	_cleanup_free_ char *store = malloc(n * 8);
	_cleanup_free_ const char **toks = calloc(n, sizeof(*toks));
	_cleanup_free_ float *scores = calloc(n, sizeof(float));
	_cleanup_free_ int32_t *types = calloc(n, sizeof(int32_t));
	if (!store || !toks || !scores || !types)
		return -ENOMEM;
	static const char *const specials[N_SPECIAL] = {"<unk>", "<s>", "</s>", "<|im_start|>",
							"<|im_end|>"};
	static const int32_t special_types[N_SPECIAL] = {2, 3, 3, 3, 3};
	size_t k = 0;
	for (size_t i = 0; i < N_SPECIAL; i++, k++) {
		toks[k] = specials[i];
		types[k] = special_types[i];
	}
	for (unsigned b = 0; b < N_BYTES; b++, k++) {
		char *s = store + 8 * b;
		snprintf(s, 8, "<0x%02X>", b);
		toks[k] = s;
		types[k] = 6;
	}
	char *ascii = store + 8 * N_BYTES;
	toks[k] = SP;
	scores[k] = -1000.0f;
	types[k++] = 1;
	for (unsigned c = 0x21; c <= 0x7e; c++, k++) {
		char *s = ascii + 2 * (c - 0x21);
		s[0] = (char)c;
		s[1] = '\0';
		toks[k] = s;
		scores[k] = -1000.0f - (float)c;
		types[k] = 1;
	}
	for (size_t i = 0; i < n_merges; i++, k++) {
		toks[k] = tiny_merges[i];
		scores[k] = -(float)i;
		types[k] = 1;
	}
	int r = rt_gguf_add_str(w, "tokenizer.ggml.model", "llama");
	if (r >= 0)
		r = rt_gguf_add_str(w, "tokenizer.ggml.pre", "default");
	if (r >= 0)
		r = rt_gguf_add_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, n);
	if (r >= 0)
		r = rt_gguf_add_arr(w, "tokenizer.ggml.scores", RT_GGUF_F32, scores, n);
	if (r >= 0)
		r = rt_gguf_add_arr(w, "tokenizer.ggml.token_type", RT_GGUF_I32, types, n);
	if (r >= 0)
		r = rt_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
	if (r >= 0)
		r = rt_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
	if (r >= 0)
		r = rt_gguf_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
	if (r >= 0)
		r = rt_gguf_add_bool(w, "tokenizer.ggml.add_bos_token", true);
	if (r >= 0)
		r = rt_gguf_add_bool(w, "tokenizer.ggml.add_eos_token", false);
	if (r >= 0)
		r = rt_gguf_add_str(w, "tokenizer.chat_template",
				    "{% for message in messages %}{{'<|im_start|>' + message['role'] + "
				    "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
				    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}");
	return r;
}
