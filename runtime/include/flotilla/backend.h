/* Inference backends behind one small interface.
 *
 * A backend is a vtable (struct rt_backend_ops) registered under a name. The
 * built-in "gguf" backend runs the engine of engine.h in process; others
 * (an exec backend supervising llama-server, xgboost, ...) register
 * themselves with rt_backend_register() and are opened the same way:
 *
 *   struct rt_backend *b;
 *   rt_backend_open("gguf", "/var/lib/flotilla/slots/a/model", &opts, &b);
 *   rt_backend_generate(b, &req, &res);   ... rt_gen_result_free(&res);
 *   rt_backend_close(b);
 *
 * Thread-safety: the registry is thread-safe. A backend handle serves one
 * request at a time (callers serialise; the agent runs inference on its own
 * worker thread). Callbacks run on the calling thread, inside generate. */
#ifndef FLOTILLA_BACKEND_H
#define FLOTILLA_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flotilla/sample.h"
#include "flotilla/tokenizer.h" /* struct rt_chat_msg */

#define RT_BACKEND_MAX_REGISTERED 16
#define RT_BACKEND_MAX_STOP 16          /* stop strings per request */
#define RT_BACKEND_MAX_STOP_BYTES 256   /* one stop string */
#define RT_BACKEND_MAX_MESSAGES 1024
#define RT_BACKEND_MAX_TOKENS_LIMIT (1 << 20)

struct rt_backend_opts {
	int n_threads;    /* 0: online CPUs */
	int n_ctx;        /* 0: min(model training context, 4096) */
	int n_batch;      /* 0: default */
	uint32_t kv_type; /* 0 (= RT_GGML_TYPE_F32) or RT_GGML_TYPE_F16; see rt_backend_opts_default */
	const char *config; /* backend-specific JSON object (exec: the command); NULL: none */
};

/* Defaults: all 0 except kv_type = F16. */
void rt_backend_opts_default(struct rt_backend_opts *o);

/* Called with each new piece of generated text (UTF-8 bytes; a multi-byte
 * character may be split across calls). Text that might start a stop string
 * is held back until it is known not to. Return non-zero to stop. */
typedef int (*rt_gen_text_fn)(void *userdata, const char *text, size_t len);

struct rt_gen_request {
	/* Either a raw PROMPT, or MESSAGES rendered with the model's chat
	 * template (then N_MESSAGES > 0 and PROMPT is ignored). */
	const char *prompt;
	const struct rt_chat_msg *messages;
	size_t n_messages;
	bool parse_special;        /* raw prompt: match control tokens in it */
	struct rt_sampling sampling;
	int max_tokens;            /* >= 1; generation also stops at end of context */
	const char *const *stop;   /* stop strings (not included in the text) */
	size_t n_stop;
	rt_gen_text_fn on_text;    /* optional streaming */
	void *userdata;
};

/* Fill REQ with defaults: greedy sampling, max_tokens 128, no stop strings. */
void rt_gen_request_default(struct rt_gen_request *req);

enum rt_stop_reason {
	RT_STOP_EOG = 1,        /* end-of-generation token */
	RT_STOP_MAX_TOKENS = 2,
	RT_STOP_STRING = 3,
	RT_STOP_CALLBACK = 4,
	RT_STOP_CONTEXT = 5,    /* context full */
};

struct rt_gen_result {
	char *text;             /* NUL-terminated; free with rt_gen_result_free() */
	size_t text_len;
	int n_prompt;           /* prompt tokens */
	int n_prompt_cached;    /* of them, reused from the previous request's cache */
	int n_gen;              /* tokens generated */
	enum rt_stop_reason stop_reason;
	double prompt_ms, gen_ms;
};

void rt_gen_result_free(struct rt_gen_result *res);

struct rt_backend_stats {
	char backend[16];
	char model[64];         /* architecture and type, e.g. "llama q8_0" */
	uint64_t n_requests, n_errors;
	uint64_t n_prompt_tokens, n_gen_tokens;
	double prompt_ms, gen_ms; /* totals */
	uint64_t mem_bytes;     /* weights (mapped) + KV cache + scratch, approximate */
	int n_ctx, n_threads;
};

/* ------------------------------------------------- tabular prediction */

/* Feature rows in, one or more numbers per row out (classic models such as
 * gradient-boosted trees: fraud scores, anomaly scores). */
#define RT_PREDICT_MAX_VALUES (1u << 20) /* rows x columns of one request */
#define RT_PREDICT_MAX_COLS 65536

enum rt_predict_kind {
	RT_PREDICT_VALUE = 1,      /* regression / scores: N_OUT numbers per row */
	RT_PREDICT_BINARY = 2,     /* probability of class 1 per row (class = p >= 0.5) */
	RT_PREDICT_MULTICLASS = 3, /* N_OUT class probabilities per row (class = argmax) */
	RT_PREDICT_CLASS = 4,      /* the class index itself per row */
};

struct rt_predict_request {
	const float *values;       /* N_ROWS x N_COLS, row-major; NaN = missing */
	size_t n_rows, n_cols;
};

struct rt_predict_result {
	float *values;             /* N_ROWS x N_OUT; free with rt_predict_result_free() */
	size_t n_rows, n_out;
	enum rt_predict_kind kind;
	char objective[32];        /* the model's, e.g. "binary:logistic" */
	double ms;                 /* time in the backend */
};

void rt_predict_result_free(struct rt_predict_result *res);

/* Name of a kind ("value", "binary", "multiclass", "class"). */
const char *rt_predict_kind_name(enum rt_predict_kind k);

/* The class a row of RES predicts (BINARY, MULTICLASS, CLASS), or -1. */
int rt_predict_class(const struct rt_predict_result *res, size_t row);

struct rt_backend_ops {
	const char *name; /* 1..15 bytes */
	/* Open MODEL_PATH (a file, or a directory the backend knows how to
	 * read). OPTS is never NULL. */
	int (*open)(const char *model_path, const struct rt_backend_opts *opts, void **ret_impl);
	/* REQ was validated by rt_backend_generate(). On success *RET is filled.
	 * NULL for a backend that does not generate text. */
	int (*generate)(void *impl, const struct rt_gen_request *req, struct rt_gen_result *ret);
	int (*stats)(void *impl, struct rt_backend_stats *ret);
	void (*close)(void *impl);
	/* Tabular prediction (NULL: not supported). REQ was checked by
	 * rt_backend_predict(). On an error, WHY (WHY_LEN > 0) gets a message
	 * for the client, e.g. "rows have 3 values, the model takes 4
	 * features". */
	int (*predict)(void *impl, const struct rt_predict_request *req,
		       struct rt_predict_result *ret, char *why, size_t why_len);
};

/* Register OPS (must stay valid for the life of the process). At least one
 * of generate and predict is required. Errors: -EINVAL (NULL op, bad name),
 * -FL_EDUP (name taken), -FL_ETOOBIG (registry
 * full). "gguf" is always registered. */
int rt_backend_register(const struct rt_backend_ops *ops);
/* Ops registered under NAME, or NULL. */
const struct rt_backend_ops *rt_backend_find(const char *name);

struct rt_backend;

/* Open MODEL_PATH with backend NAME. OPTS may be NULL (defaults). Errors:
 * -ENOENT (no such backend), -EINVAL, or the backend's open error (gguf:
 * errno from open/mmap, -FL_EFORMAT, -FL_EUNSUPPORTED, -FL_EMISSING/-FL_EDUP
 * for a directory without exactly one .gguf file, -ENOMEM). Caller closes
 * with rt_backend_close(). */
int rt_backend_open(const char *name, const char *model_path, const struct rt_backend_opts *opts,
		    struct rt_backend **ret_backend);

/* Run one request. Errors (nothing generated, *RES untouched): -EINVAL
 * (missing prompt, max_tokens < 1, too many/long stop strings or
 * messages), -FL_ERANGE (sampling), -FL_ETOOBIG (prompt does not fit the
 * context), -FL_EUNSUPPORTED (chat without a known template, or a backend
 * that does not generate text, e.g. xgboost), -ENOMEM. */
int rt_backend_generate(struct rt_backend *b, const struct rt_gen_request *req,
			struct rt_gen_result *res);

/* Predict REQ's rows. Errors (*RES untouched, WHY says why when WHY_LEN >
 * 0): -EINVAL (no rows, no columns, over RT_PREDICT_MAX_VALUES /
 * RT_PREDICT_MAX_COLS, or the backend's schema check: wrong number of
 * features), -FL_EUNSUPPORTED (a backend that does not predict, e.g. gguf),
 * -ENOMEM, the backend's errors. Free *RES with rt_predict_result_free(). */
int rt_backend_predict(struct rt_backend *b, const struct rt_predict_request *req,
		       struct rt_predict_result *res, char *why, size_t why_len);

int rt_backend_stats(struct rt_backend *b, struct rt_backend_stats *ret_stats);

/* The name B was opened with ("gguf", "xgboost", ...). */
const char *rt_backend_name(const struct rt_backend *b);

/* Close and free. NULL is fine. */
void rt_backend_close(struct rt_backend *b);

/* Name of a stop reason ("eog", "max_tokens", "stop", "callback", "context"). */
const char *rt_stop_reason_name(enum rt_stop_reason r);

#endif
