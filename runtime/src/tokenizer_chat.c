/* Chat templates without a Jinja engine: detect the family from the
 * template text (same tests as llama.cpp's llm_chat_detect_template for these
 * families) and render with one function per family, as llama.cpp's
 * built-in llm_chat_apply_template does. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/error.h"
#include "flotilla/tokenizer.h"
#include "tokenizer_internal.h"

struct sbuf {
	char *p;
	size_t len, cap;
	int err;
};

static void put(struct sbuf *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->len + n > RT_TOK_MAX_TEXT_BYTES) {
		b->err = -FL_ETOOBIG;
		return;
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->err = -ENOMEM;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void puts_(struct sbuf *b, const char *s) { put(b, s, strlen(s)); }

/* Python-style strip of ASCII whitespace, as llama.cpp's trim(). */
static void put_trimmed(struct sbuf *b, const char *s)
{
	size_t start = 0, end = strlen(s);
	while (start < end && strchr(" \t\n\r\v\f", s[start]))
		start++;
	while (end > start && strchr(" \t\n\r\v\f", s[end - 1]))
		end--;
	put(b, s + start, end - start);
}

enum rt_chat_family rt_chat_detect(const char *tmpl)
{
	if (!tmpl)
		return RT_CHAT_UNKNOWN;
	if (strstr(tmpl, "<|im_start|>"))
		return RT_CHAT_CHATML;
	if (strstr(tmpl, "[INST]"))
		return RT_CHAT_LLAMA2;
	if (strstr(tmpl, "<|start_header_id|>") && strstr(tmpl, "<|end_header_id|>"))
		return RT_CHAT_LLAMA3;
	return RT_CHAT_UNKNOWN;
}

const char *rt_chat_family_name(enum rt_chat_family f)
{
	switch (f) {
	case RT_CHAT_LLAMA2: return "llama2";
	case RT_CHAT_LLAMA3: return "llama3";
	case RT_CHAT_CHATML: return "chatml";
	default: return "unknown";
	}
}

enum rt_chat_family rt_tok_chat_family(const struct rt_tokenizer *t)
{
	enum rt_chat_family f = rt_chat_detect(rt_tok_chat_template_internal(t));
	if (f != RT_CHAT_UNKNOWN)
		return f;
	if (rt_tok_find(t, "<|im_start|>", 12) >= 0)
		return RT_CHAT_CHATML;
	if (rt_tok_find(t, "<|start_header_id|>", 19) >= 0)
		return RT_CHAT_LLAMA3;
	if (rt_tok_kind(t) == RT_TOK_SPM)
		return RT_CHAT_LLAMA2;
	return RT_CHAT_UNKNOWN;
}

int rt_chat_render_family(enum rt_chat_family family, bool llama2_sys,
			  const struct rt_chat_msg *msgs, size_t n, bool add_generation_prompt,
			  char **ret_text, size_t *ret_len)
{
	if ((!msgs && n) || !ret_text)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!msgs[i].role || !msgs[i].content)
			return -EINVAL;
	struct sbuf b = {0};
	put(&b, "", 0);
	switch (family) {
	case RT_CHAT_CHATML:
		for (size_t i = 0; i < n; i++) {
			puts_(&b, "<|im_start|>");
			puts_(&b, msgs[i].role);
			puts_(&b, "\n");
			puts_(&b, msgs[i].content);
			puts_(&b, "<|im_end|>\n");
		}
		if (add_generation_prompt)
			puts_(&b, "<|im_start|>assistant\n");
		break;
	case RT_CHAT_LLAMA3:
		for (size_t i = 0; i < n; i++) {
			puts_(&b, "<|start_header_id|>");
			puts_(&b, msgs[i].role);
			puts_(&b, "<|end_header_id|>\n\n");
			put_trimmed(&b, msgs[i].content);
			puts_(&b, "<|eot_id|>");
		}
		if (add_generation_prompt)
			puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
		break;
	case RT_CHAT_LLAMA2: {
		/* The generation prompt is implicit: the text ends with [/INST]. */
		bool inside_turn = true;
		puts_(&b, "[INST] ");
		for (size_t i = 0; i < n; i++) {
			if (!inside_turn) {
				inside_turn = true;
				puts_(&b, "[INST] ");
			}
			if (strcmp(msgs[i].role, "system") == 0) {
				if (llama2_sys) {
					puts_(&b, "<<SYS>>\n");
					puts_(&b, msgs[i].content);
					puts_(&b, "\n<</SYS>>\n\n");
				} else {
					puts_(&b, msgs[i].content);
					puts_(&b, "\n");
				}
			} else if (strcmp(msgs[i].role, "user") == 0) {
				puts_(&b, msgs[i].content);
				puts_(&b, " [/INST]");
			} else {
				puts_(&b, msgs[i].content);
				puts_(&b, "</s>");
				inside_turn = false;
			}
		}
		break;
	}
	default:
		free(b.p);
		return -FL_EUNSUPPORTED;
	}
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*ret_text = b.p;
	if (ret_len)
		*ret_len = b.len;
	return 0;
}

int rt_chat_render(const struct rt_tokenizer *t, const struct rt_chat_msg *msgs, size_t n,
		   bool add_generation_prompt, char **ret_text, size_t *ret_len)
{
	if (!t)
		return -EINVAL;
	enum rt_chat_family f = rt_tok_chat_family(t);
	const char *tmpl = rt_tok_chat_template_internal(t);
	/* llama.cpp: "<<SYS>>" in the template selects the system-message variant;
	 * without a template use it too (Llama 2 chat's documented format). */
	bool sys = !tmpl || strstr(tmpl, "<<SYS>>") != NULL;
	return rt_chat_render_family(f, sys, msgs, n, add_generation_prompt, ret_text, ret_len);
}
