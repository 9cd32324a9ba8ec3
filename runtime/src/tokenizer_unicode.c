/* UTF-8 helpers, Unicode classes and the BPE pre-tokenizers (the regex
 * splits of GPT-2, Llama 3 and Qwen2), written by hand as state machines that
 * follow the same rules as llama.cpp's custom splitters: same word
 * boundaries for every input, valid UTF-8 or not. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "tokenizer_unicode_data.h"

size_t rt_utf8_decode(const char *str, size_t len, uint32_t *out)
{
	const uint8_t *s = (const uint8_t *)str;
	size_t n = 0, i = 0;
	while (i < len) {
		uint8_t c = s[i];
		if (!(c & 0x80)) {
			out[n++] = c;
			i += 1;
		} else if (!(c & 0x40)) {
			out[n++] = 0xFFFD;
			i += 1;
		} else if (!(c & 0x20)) {
			if (i + 1 >= len || (s[i + 1] & 0xc0) != 0x80) {
				out[n++] = 0xFFFD;
				i += 1;
			} else {
				out[n++] = (uint32_t)(c & 0x1f) << 6 | (s[i + 1] & 0x3f);
				i += 2;
			}
		} else if (!(c & 0x10)) {
			if (i + 2 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80) {
				out[n++] = 0xFFFD;
				i += 1;
			} else {
				out[n++] = (uint32_t)(c & 0x0f) << 12 | (uint32_t)(s[i + 1] & 0x3f) << 6 |
					   (s[i + 2] & 0x3f);
				i += 3;
			}
		} else if (!(c & 0x08)) {
			if (i + 3 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 ||
			    (s[i + 3] & 0xc0) != 0x80) {
				out[n++] = 0xFFFD;
				i += 1;
			} else {
				out[n++] = (uint32_t)(c & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3f) << 12 |
					   (uint32_t)(s[i + 2] & 0x3f) << 6 | (s[i + 3] & 0x3f);
				i += 4;
			}
		} else {
			out[n++] = 0xFFFD;
			i += 1;
		}
	}
	return n;
}

size_t rt_utf8_encode(uint32_t cpt, char *out)
{
	if (cpt < 0x80) {
		out[0] = (char)cpt;
		return 1;
	}
	if (cpt < 0x800) {
		out[0] = (char)(0xc0 | (cpt >> 6));
		out[1] = (char)(0x80 | (cpt & 0x3f));
		return 2;
	}
	if (cpt < 0x10000) {
		out[0] = (char)(0xe0 | (cpt >> 12));
		out[1] = (char)(0x80 | ((cpt >> 6) & 0x3f));
		out[2] = (char)(0x80 | (cpt & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | ((cpt >> 18) & 0x07));
	out[1] = (char)(0x80 | ((cpt >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((cpt >> 6) & 0x3f));
	out[3] = (char)(0x80 | (cpt & 0x3f));
	return 4;
}

/* ---- classes ---- */

enum {
	F_LETTER = 1,
	F_NUMBER = 2,
	F_WS = 4,
	F_ANY = 8, /* set for every codepoint inside the span: "has flags" */
};

static bool is_ws(uint32_t c)
{
	/* Unicode White_Space. */
	switch (c) {
	case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85:
	case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
	case 0x3000:
		return true;
	default:
		return c >= 0x2000 && c <= 0x200A;
	}
}

static unsigned ucd_class(uint32_t c)
{
	if (c >= 0x110000)
		return 3;
	size_t lo = 0, hi = sizeof(rt_ucd_ranges) / sizeof(rt_ucd_ranges[0]);
	/* last range whose start <= c */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if ((rt_ucd_ranges[mid] >> 4) <= c)
			lo = mid;
		else
			hi = mid;
	}
	return rt_ucd_ranges[lo] & 0xf;
}

static unsigned cpt_flags(uint32_t c)
{
	unsigned f = F_ANY;
	if (c < 128) {
		if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
			f |= F_LETTER;
		else if (c >= '0' && c <= '9')
			f |= F_NUMBER;
	} else {
		unsigned k = ucd_class(c);
		if (k == 1)
			f |= F_LETTER;
		else if (k == 2)
			f |= F_NUMBER;
	}
	if (is_ws(c))
		f |= F_WS;
	return f;
}

/* ---- splitters ---- */

#define OOR 0xFFFFFFFFu

struct split {
	const uint32_t *cpts;
	size_t end;
	size_t prev_end;
	size_t *words;
	size_t n_words;
};

static uint32_t get_cpt(const struct split *s, size_t pos) { return pos < s->end ? s->cpts[pos] : OOR; }
static unsigned get_flags(const struct split *s, size_t pos)
{
	return pos < s->end ? cpt_flags(s->cpts[pos]) : 0;
}

static size_t add_word(struct split *s, size_t end)
{
	size_t len = end - s->prev_end;
	if (len > 0)
		s->words[s->n_words++] = len;
	s->prev_end = end;
	return len;
}

static uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* 's 't 'm 'd 're 've 'll at POS: length of the contraction or 0. */
static size_t contraction(const struct split *s, size_t pos, bool icase)
{
	if (get_cpt(s, pos) != '\'' || pos + 1 >= s->end)
		return 0;
	uint32_t a = get_cpt(s, pos + 1);
	if (icase)
		a = ascii_lower(a);
	if (a == 's' || a == 't' || a == 'm' || a == 'd')
		return 2;
	if (pos + 2 < s->end) {
		uint32_t b = get_cpt(s, pos + 2);
		if (icase)
			b = ascii_lower(b);
		if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
			return 3;
	}
	return 0;
}

static void split_gpt2(struct split *s)
{
	size_t pos = 0;
	while (pos < s->end) {
		uint32_t cpt = get_cpt(s, pos);
		unsigned flags = get_flags(s, pos);
		size_t k = contraction(s, pos, false);
		if (k) {
			pos += add_word(s, pos + k);
			continue;
		}
		unsigned f2 = cpt == ' ' ? get_flags(s, pos + 1) : flags;
		if (f2 & F_LETTER) { /* ' ?\p{L}+' */
			pos += cpt == ' ';
			while (f2 & F_LETTER)
				f2 = get_flags(s, ++pos);
			add_word(s, pos);
			continue;
		}
		if (f2 & F_NUMBER) { /* ' ?\p{N}+' */
			pos += cpt == ' ';
			while (f2 & F_NUMBER)
				f2 = get_flags(s, ++pos);
			add_word(s, pos);
			continue;
		}
		if (!(f2 & (F_WS | F_LETTER | F_NUMBER)) && f2) { /* ' ?[^\s\p{L}\p{N}]+' */
			pos += cpt == ' ';
			while (!(f2 & (F_WS | F_LETTER | F_NUMBER)) && f2)
				f2 = get_flags(s, ++pos);
			add_word(s, pos);
			continue;
		}
		size_t nws = 0;
		while (get_flags(s, pos + nws) & F_WS)
			nws++;
		if (nws > 1 && get_cpt(s, pos + nws) != OOR) { /* \s+(?!\S) */
			pos += nws - 1;
			add_word(s, pos);
			continue;
		}
		if (nws > 0) {
			pos += nws;
			add_word(s, pos);
			continue;
		}
		add_word(s, ++pos);
	}
}

static void split_llama3(struct split *s, bool digits3)
{
	size_t pos = 0;
	while (pos < s->end) {
		uint32_t cpt = get_cpt(s, pos);
		unsigned flags = get_flags(s, pos);
		size_t k = contraction(s, pos, true);
		if (k) {
			pos += add_word(s, pos + k);
			continue;
		}
		/* [^\r\n\p{L}\p{N}]?\p{L}+ */
		if (!(cpt == '\r' || cpt == '\n' || (flags & F_NUMBER))) {
			if ((flags & F_LETTER) || (get_flags(s, pos + 1) & F_LETTER)) {
				pos++;
				while (get_flags(s, pos) & F_LETTER)
					pos++;
				add_word(s, pos);
				continue;
			}
		}
		if (flags & F_NUMBER) {
			if (digits3) { /* \p{N}{1,3} */
				size_t ini = pos;
				while (get_flags(s, pos) & F_NUMBER) {
					if (++pos - ini >= 3) {
						add_word(s, pos);
						ini = pos;
					}
				}
			} else { /* \p{N} */
				pos++;
			}
			add_word(s, pos);
			continue;
		}
		/* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
		unsigned f2 = cpt == ' ' ? get_flags(s, pos + 1) : flags;
		if (!(f2 & (F_WS | F_LETTER | F_NUMBER)) && flags) {
			pos += cpt == ' ';
			while (!(f2 & (F_WS | F_LETTER | F_NUMBER)) && f2)
				f2 = get_flags(s, ++pos);
			uint32_t c2 = get_cpt(s, pos);
			while (c2 == '\r' || c2 == '\n')
				c2 = get_cpt(s, ++pos);
			add_word(s, pos);
			continue;
		}
		size_t nws = 0, last_rn = 0;
		while (get_flags(s, pos + nws) & F_WS) {
			uint32_t c2 = get_cpt(s, pos + nws);
			if (c2 == '\r' || c2 == '\n')
				last_rn = pos + nws + 1;
			nws++;
		}
		if (last_rn > 0) { /* \s*[\r\n]+ */
			pos = last_rn;
			add_word(s, pos);
			continue;
		}
		if (nws > 1 && get_cpt(s, pos + nws) != OOR) { /* \s+(?!\S) */
			pos += nws - 1;
			add_word(s, pos);
			continue;
		}
		if (nws > 0) { /* \s+ */
			pos += nws;
			add_word(s, pos);
			continue;
		}
		add_word(s, ++pos);
	}
}

size_t rt_pretokenize(enum rt_pre_kind kind, const uint32_t *cpts, size_t len, size_t *words)
{
	struct split s = {.cpts = cpts, .end = len, .words = words};
	switch (kind) {
	case RT_PRE_GPT2:
		split_gpt2(&s);
		break;
	case RT_PRE_LLAMA3:
		split_llama3(&s, true);
		break;
	case RT_PRE_QWEN2:
		split_llama3(&s, false);
		break;
	default:
		if (len > 0)
			words[s.n_words++] = len;
		break;
	}
	return s.n_words;
}

/* ---- GPT-2 byte <-> unicode ---- */

static bool byte_is_printable(unsigned b)
{
	return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

/* The non-printable bytes, in order (0x00-0x20, 0x7f-0xa0, 0xad), map to
 * 256, 257, ... */
static uint32_t byte_to_cpt(uint8_t b)
{
	if (byte_is_printable(b))
		return b;
	if (b <= 0x20)
		return 256u + b;
	if (b >= 0x7f && b <= 0xa0)
		return 256u + 33u + (b - 0x7fu);
	return 256u + 67u; /* 0xad */
}

size_t rt_byte_to_utf8(uint8_t b, char *out) { return rt_utf8_encode(byte_to_cpt(b), out); }

int rt_cpt_to_byte(uint32_t cpt)
{
	if (cpt < 256)
		return byte_is_printable(cpt) ? (int)cpt : -1;
	if (cpt <= 256 + 0x20)
		return (int)(cpt - 256);
	if (cpt <= 256 + 33 + (0xa0 - 0x7f))
		return (int)(0x7f + (cpt - 256 - 33));
	if (cpt == 256 + 67)
		return 0xad;
	return -1;
}
