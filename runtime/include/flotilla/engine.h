/* Built-in inference engine for llama-family GGUF models: llama (Llama 2/3,
 * TinyLlama, Mistral-style), qwen2 (q/k/v biases) and qwen3 (per-head
 * q_norm/k_norm). Grouped-query attention, tied embeddings (no output.weight),
 * Llama 3 rope frequency factors (rope_freqs.weight) and linear rope scaling.
 *
 * Weights stay in the rt_gguf mapping (no copy); only small vectors (norms,
 * biases) are converted when they are not F32. Weight types: F32, F16, Q8_0,
 * Q4_0, Q4_K, Q6_K (see kernels.h). The KV cache (F16 or F32) and all scratch
 * buffers are allocated once in rt_engine_new(), so evaluating a token
 * allocates nothing.
 *
 * Numerics follow llama.cpp's CPU backend (activations quantized like ggml,
 * F16 KV cache with the query rounded to F16, softmax and RMSNorm sums in
 * double, rope angles built like ggml): see docs/engine.md.
 *
 * Thread-safety: one engine is used by one thread at a time (it runs its own
 * worker pool inside rt_engine_eval). Several engines may share one rt_gguf. */
#ifndef FLOTILLA_ENGINE_H
#define FLOTILLA_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "flotilla/gguf.h"

/* Limits on what a model file may ask for (beyond: -FL_ETOOBIG). */
#define RT_ENGINE_MAX_CTX (1 << 20)
#define RT_ENGINE_MAX_LAYERS 512
#define RT_ENGINE_MAX_HEAD_DIM 1024
#define RT_ENGINE_MAX_BATCH 4096

struct rt_engine;

struct rt_engine_opts {
	int n_ctx;       /* context length in tokens; 0: min(training ctx, 4096) */
	int n_threads;   /* 0: online CPUs */
	int n_batch;     /* tokens per forward chunk (prompt eval); 0: 64 */
	uint32_t kv_type; /* RT_GGML_TYPE_F16 (default, as llama.cpp) or F32 */
	/* Sum Q4_0/Q4_K layer matrices in the order of llama.cpp's x86
	 * repacked kernels (RT_K_GGML_REPACK, kernels.h): bitwise conformance
	 * with an AVX2 llama.cpp, at scalar speed for those matrices. */
	bool ggml_repack_order;
};

/* Defaults (all zero fields above, kv_type F16). */
void rt_engine_opts_default(struct rt_engine_opts *opts);

enum rt_arch {
	RT_ARCH_LLAMA = 0,
	RT_ARCH_QWEN2 = 1,
	RT_ARCH_QWEN3 = 2,
};

struct rt_model_info {
	enum rt_arch arch;
	char arch_name[16];
	int n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_rot, n_ff;
	int n_ctx_train; /* from the file */
	int n_ctx;       /* of this engine */
	float rms_eps, rope_base, rope_freq_scale;
	bool rope_neox, tied_embeddings, has_rope_freqs;
	uint32_t ftype;  /* type of blk.0.attn_q.weight: a summary of the file */
	uint64_t weight_bytes; /* all tensors of the model */
	uint64_t kv_bytes;     /* KV cache */
};

/* Build an engine over model G (which must stay open until rt_engine_free()).
 * OPTS may be NULL (defaults). Checks every tensor's presence, shape and type.
 * Errors: -EINVAL (bad option), -FL_EFORMAT (missing/misshapen tensor or
 * hyper-parameter), -FL_EUNSUPPORTED (architecture, tensor type, rope
 * scaling kind), -FL_ETOOBIG (limits above), -ENOMEM, thread creation errors.
 * Caller frees with rt_engine_free(). */
int rt_engine_new(const struct rt_gguf *g, const struct rt_engine_opts *opts,
		  struct rt_engine **ret_engine);

/* Free the engine (not the rt_gguf). NULL is fine. */
void rt_engine_free(struct rt_engine *e);

/* Model and engine parameters. Owned by E. */
const struct rt_model_info *rt_engine_info(const struct rt_engine *e);

/* Evaluate N tokens at positions n_past .. n_past+N-1, appending them to the
 * KV cache. Afterwards rt_engine_logits(E, -1) holds the next-token logits of
 * the last one; with ALL_LOGITS, rt_engine_logits(E, i) for every i in [0,N)
 * (this may allocate N * n_vocab floats once).
 * Errors (nothing changes): -EINVAL (N < 1, a token outside the vocabulary),
 * -ENOSPC (n_past + N > n_ctx), -ENOMEM (ALL_LOGITS buffer). */
int rt_engine_eval(struct rt_engine *e, const int32_t *tokens, int n, bool all_logits);

/* Logits (n_vocab floats) of token I of the last eval; I = -1: the last
 * token. NULL if I is out of range or nothing was evaluated yet. Valid until
 * the next eval/reset. */
const float *rt_engine_logits(const struct rt_engine *e, int i);

/* Tokens in the KV cache. */
int rt_engine_n_past(const struct rt_engine *e);

/* Forget the cache beyond the first N_PAST tokens (0: everything), e.g. to
 * reuse a common prompt prefix. -EINVAL if N_PAST < 0 or > rt_engine_n_past. */
int rt_engine_truncate(struct rt_engine *e, int n_past);

/* Threads the engine uses (the caller included). */
int rt_engine_n_threads(const struct rt_engine *e);

/* Command-line driver with the contract of bench/conformance/llref.c, for
 * `flotilla-agent run-model` (ARGV[0] is the command name):
 *   -m MODEL (-p TEXT | -i IDS) [-n N=64] [-t T=2] [-o REPORT]
 *   [--logits F] [--logits-prompt F] [--no-bos] [--no-parse-special]
 *   [--kv-f16] [--fa off] [--stop-eog] [--no-repack] [-v]
 * Greedy (argmax, ties to the lowest id) for N tokens after the prompt; KV
 * cache F32 unless --kv-f16. Q4_0/Q4_K layer matrices are summed in the
 * order of llama.cpp's repacked x86 kernels (ggml_repack_order) unless
 * --no-repack (the order of llama.cpp with repacking off, llref --no-repack).
 * The report ("flotilla 1", "n_vocab V", "prompt n ids...", "gen n ids...",
 * "timing ...") goes to -o REPORT or to OUT; --logits / --logits-prompt get n_vocab raw little-endian floats (the
 * distribution of the last generated token / at the last prompt position).
 * Returns 0, or a negative code with a one-line message in ERR (ERR_SIZE
 * bytes; may be NULL). Prints nothing else. */
int rt_engine_run_cli(int argc, char **argv, FILE *out, char *err, size_t err_size);

/* Name of an architecture ("llama", "qwen2", "qwen3"). */
const char *rt_arch_name(enum rt_arch arch);

#endif
