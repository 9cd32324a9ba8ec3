/* Tokenizers built from GGUF metadata (tokenizer.ggml.*), matching llama.cpp's
 * llama_tokenize() / llama_token_to_piece():
 *   - "llama": SentencePiece-style (score-ordered merges of UTF-8 chars, "▁"
 *     for spaces, a space prefixed at the start and after special tokens,
 *     byte fallback to <0xXX> tokens);
 *   - "gpt2": byte-level BPE (ranked merges) with the pre-tokenizer selected
 *     by tokenizer.ggml.pre: "llama-bpe"/"llama3"/... (Llama 3), "qwen2"/...,
 *     "gpt-2"/... (GPT-2), "default".
 * Special tokens (control, user-defined, unknown types) are matched in the
 * text first; control/unknown ones only when parse_special is true.
 *
 * Chat templates: the family is detected from tokenizer.chat_template
 * (llama2 "[INST]", llama3 "<|start_header_id|>", chatml "<|im_start|>") and
 * rendered by a function per family, like llama.cpp's built-in templates.
 *
 * Thread-safety: a loaded tokenizer is immutable; any number of threads may
 * use it at once. */
#ifndef FLOTILLA_TOKENIZER_H
#define FLOTILLA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flotilla/gguf.h"

#define RT_TOK_MAX_VOCAB (1u << 20)         /* tokens */
#define RT_TOK_MAX_MERGES (4u << 20)        /* merge rules */
#define RT_TOK_MAX_TEXT_BYTES (8u << 20)    /* one rt_tokenize() input (BPE needs ~12x in scratch) */

enum rt_tok_kind { RT_TOK_SPM = 1, RT_TOK_BPE = 2 };

/* GGUF token types (tokenizer.ggml.token_type). */
enum rt_tok_attr {
	RT_TOKTYPE_UNDEFINED = 0,
	RT_TOKTYPE_NORMAL = 1,
	RT_TOKTYPE_UNKNOWN = 2,
	RT_TOKTYPE_CONTROL = 3,
	RT_TOKTYPE_USER_DEFINED = 4,
	RT_TOKTYPE_UNUSED = 5,
	RT_TOKTYPE_BYTE = 6,
};

struct rt_tokenizer;

/* Build the tokenizer from G's metadata. Everything is copied: G may be freed
 * afterwards. Caller frees with rt_tokenizer_free(). Errors: -FL_EMISSING
 * (no tokenizer.ggml.model / tokens), -FL_EUNSUPPORTED (model other than
 * "llama"/"gpt2", or unknown pre-tokenizer), -FL_ESCHEMA (key of the wrong
 * type or array of the wrong length), -FL_ETOOBIG (vocab/merges over the
 * limits), -ENOMEM. */
int rt_tokenizer_load(const struct rt_gguf *g, struct rt_tokenizer **ret_tok);
void rt_tokenizer_free(struct rt_tokenizer *t);

/* Tokenize LEN bytes of TEXT (any bytes; invalid UTF-8 is handled like
 * llama.cpp). ADD_SPECIAL adds BOS/EOS as the model says
 * (tokenizer.ggml.add_bos_token / add_eos_token, llama.cpp defaults);
 * PARSE_SPECIAL matches control tokens such as "<|im_start|>" in TEXT.
 * On success *ret_tokens (caller frees with free()) holds *ret_n ids.
 * Errors: -FL_ETOOBIG (LEN > RT_TOK_MAX_TEXT_BYTES), -ENOMEM. */
int rt_tokenize(const struct rt_tokenizer *t, const char *text, size_t len, bool add_special,
		bool parse_special, int32_t **ret_tokens, size_t *ret_n);

/* The text of token ID as llama_token_to_piece() gives it (byte tokens as
 * their byte, "▁" as space, byte-level BPE decoded). Control/unknown tokens
 * give "" unless SPECIAL. Returns a NUL-terminated string owned by T (a
 * piece may itself hold a NUL byte: use *RET_LEN), or NULL if ID is out of
 * range. RET_LEN may be NULL. */
const char *rt_token_piece(const struct rt_tokenizer *t, int32_t id, bool special,
			   size_t *ret_len);

/* Concatenate the pieces of N ids (SPECIAL as above); for SentencePiece
 * models a leading space of the first piece is removed when
 * REMOVE_LEADING_SPACE (llama.cpp's detokenize does so for add_space_prefix
 * models). *ret_text (NUL-terminated, caller frees) and *ret_len. -EINVAL
 * for an out-of-range id, -ENOMEM. */
int rt_detokenize(const struct rt_tokenizer *t, const int32_t *ids, size_t n, bool special,
		  bool remove_leading_space, char **ret_text, size_t *ret_len);

enum rt_tok_kind rt_tok_kind(const struct rt_tokenizer *t);
uint32_t rt_tok_n_vocab(const struct rt_tokenizer *t);
/* Special ids, -1 when the model has none. */
int32_t rt_tok_bos(const struct rt_tokenizer *t);
int32_t rt_tok_eos(const struct rt_tokenizer *t);
int32_t rt_tok_eot(const struct rt_tokenizer *t);
bool rt_tok_add_bos(const struct rt_tokenizer *t);
bool rt_tok_add_eos(const struct rt_tokenizer *t);
/* True for end-of-generation tokens, the same set as llama_vocab_is_eog():
 * eos, eot, eom, fim pad/rep/sep, and tokens whose text is "<|eot_id|>",
 * "<|im_end|>", "<|endoftext|>", "</s>", "<|end|>", "<|eom_id|>",
 * "<end_of_turn>", ... */
bool rt_tok_is_eog(const struct rt_tokenizer *t, int32_t id);
/* GGUF token type (enum rt_tok_attr) of ID; RT_TOKTYPE_UNDEFINED if out of range. */
int rt_tok_type(const struct rt_tokenizer *t, int32_t id);
/* Raw vocabulary text of ID (NUL-terminated, owned by T), NULL if out of range. */
const char *rt_tok_text(const struct rt_tokenizer *t, int32_t id);
/* Id of the token whose raw text is exactly TEXT, or -ENOENT. */
int32_t rt_tok_find(const struct rt_tokenizer *t, const char *text, size_t len);
/* tokenizer.ggml.pre as given ("default" when absent; "" for SPM). */
const char *rt_tok_pre(const struct rt_tokenizer *t);

/* Add the tokenizer.ggml.* keys of a tiny built-in SentencePiece vocabulary
 * (about 400 tokens: <unk>, <s>, </s>, <|im_start|>, <|im_end|>, 256 byte
 * tokens <0x00>..<0xFF>, "\u2581", printable ASCII and a few dozen English
 * merges; chatml chat template) to W. For tests, fuzzers and demos that must
 * not depend on downloaded vocabularies. Errors as rt_gguf_add_*(). */
struct rt_gguf_writer;
int rt_tok_tiny_vocab(struct rt_gguf_writer *w);
#define RT_TOK_TINY_IM_START 3
#define RT_TOK_TINY_IM_END 4
#define RT_TOK_TINY_FIRST_BYTE 5

/* ---- chat templates ---- */

enum rt_chat_family {
	RT_CHAT_UNKNOWN = 0,
	RT_CHAT_LLAMA2,   /* "[INST] ... [/INST]" (with <<SYS>> when the template has it) */
	RT_CHAT_LLAMA3,   /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
	RT_CHAT_CHATML,   /* <|im_start|>role\n...<|im_end|>\n (Qwen) */
};

struct rt_chat_msg {
	const char *role;    /* "system", "user", "assistant" */
	const char *content;
};

/* Family of a Jinja template text (NULL -> RT_CHAT_UNKNOWN). */
enum rt_chat_family rt_chat_detect(const char *tmpl);
/* Family of T: from tokenizer.chat_template, else guessed from the
 * vocabulary (<|im_start|> -> chatml, <|start_header_id|> -> llama3, an SPM
 * "llama" vocab -> llama2). */
enum rt_chat_family rt_tok_chat_family(const struct rt_tokenizer *t);
const char *rt_chat_family_name(enum rt_chat_family f);

/* Render N messages for T's family, as llama.cpp's built-in template of
 * that family does (no BOS: rt_tokenize(add_special) adds it). With
 * ADD_GENERATION_PROMPT, the assistant header follows. On success
 * *ret_text (NUL-terminated, caller frees) and *ret_len. Errors: -EINVAL
 * (NULL role/content), -FL_EUNSUPPORTED (unknown family), -FL_ETOOBIG
 * (result over RT_TOK_MAX_TEXT_BYTES), -ENOMEM. */
int rt_chat_render(const struct rt_tokenizer *t, const struct rt_chat_msg *msgs, size_t n,
		   bool add_generation_prompt, char **ret_text, size_t *ret_len);
/* Same with an explicit family. */
int rt_chat_render_family(enum rt_chat_family family, bool llama2_sys,
			  const struct rt_chat_msg *msgs, size_t n, bool add_generation_prompt,
			  char **ret_text, size_t *ret_len);

#endif
