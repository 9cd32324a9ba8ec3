/* Internal pieces shared by tokenizer*.c. Not a public header. */
#ifndef FLOTILLA_TOKENIZER_INTERNAL_H
#define FLOTILLA_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Pre-tokenizer (regex split) families, named after llama.cpp's. */
enum rt_pre_kind {
	RT_PRE_NONE = 0, /* SPM: no split */
	RT_PRE_GPT2,     /* 's|'t|... | ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
	RT_PRE_LLAMA3,   /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
	RT_PRE_QWEN2,    /* same with \p{N} (one digit per word) */
};

/* Bytes of the UTF-8 sequence starting with C, from its high nibble only
 * (llama.cpp's unicode_len_utf8: continuation bytes count as 1). */
static inline size_t rt_utf8_len(uint8_t c)
{
	static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
	return lookup[c >> 4];
}

/* Decode S (LEN bytes) to codepoints like llama.cpp's unicode_cpts_from_utf8:
 * an invalid sequence becomes U+FFFD and consumes one byte. OUT holds LEN
 * entries. Returns the count. */
size_t rt_utf8_decode(const char *s, size_t len, uint32_t *out);
/* Encode CPT (any value < 2^21) to OUT[4]; returns bytes. */
size_t rt_utf8_encode(uint32_t cpt, char *out);

/* Split LEN codepoints into words for KIND; writes word lengths (in
 * codepoints) to WORDS (room for LEN entries). Returns the word count. */
size_t rt_pretokenize(enum rt_pre_kind kind, const uint32_t *cpts, size_t len, size_t *words);

/* GPT-2 byte <-> unicode mapping. rt_byte_to_utf8 writes 1-2 bytes to
 * OUT and returns the count; rt_cpt_to_byte returns the byte for a mapped
 * codepoint or -1. */
size_t rt_byte_to_utf8(uint8_t b, char *out);
int rt_cpt_to_byte(uint32_t cpt);

struct rt_tokenizer;
/* tokenizer.chat_template of T, or NULL (for tokenizer_chat.c). */
const char *rt_tok_chat_template_internal(const struct rt_tokenizer *t);

#endif
