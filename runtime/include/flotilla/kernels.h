/* Math kernels of the built-in GGUF engine.
 *
 * Weights stay in their ggml encoding (F32, F16, Q8_0, Q4_0, Q4_K, Q6_K, see
 * ggml_types.h). A dot product of a weight row with an F32 activation first
 * converts the activation into the weight type's "dot type", as ggml does:
 *   F32 -> F32, F16 -> F16, Q8_0/Q4_0 -> Q8_0, Q4_K/Q6_K -> Q8_K
 * (rt_k_quantize_act), then multiplies integer blocks and scales in float.
 * Doing the same rounding as llama.cpp keeps results close to it.
 *
 * Every kernel has a portable scalar implementation; on x86_64 an AVX2+FMA+F16C
 * one is chosen at run time (cpuid), on aarch64 a NEON one. The choice is
 * process wide: rt_kernels_set_isa() (tests, benchmarks) or the environment
 * variable FLOTILLA_KERNELS=scalar read at the first call.
 *
 * Thread-safety: all kernels are pure functions of their arguments and may run
 * concurrently. rt_kernels_set_isa() must not race with running kernels.
 * Sizes: N (row length) must be a multiple of rt_k_block_elems(type); callers
 * check with rt_k_type_supported()/rt_k_row_bytes() once at load time, the hot
 * kernels do not re-check. */
#ifndef FLOTILLA_KERNELS_H
#define FLOTILLA_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flotilla/ggml_types.h"

/* Q8_K activation block (ggml block_q8_K): 256 int8 with a float scale and
 * the sums of each group of 16 (used for the mins of Q4_K). */
struct rt_block_q8_k {
	float d;
	int8_t qs[RT_QK_K];
	int16_t bsums[RT_QK_K / 16];
};
_Static_assert(sizeof(struct rt_block_q8_k) == 292, "q8_k block");

enum rt_isa {
	RT_ISA_SCALAR = 0,
	RT_ISA_AVX2 = 1, /* x86_64 AVX2 + FMA + F16C */
	RT_ISA_NEON = 2, /* aarch64 */
};

/* ISA of the kernels in use (detects on first call). */
enum rt_isa rt_kernels_isa(void);
/* Best ISA this CPU supports. */
enum rt_isa rt_kernels_best_isa(void);
/* Select ISA for all later kernel calls: 0, or -ENOTSUP when this CPU or build
 * lacks it. Not thread-safe with running kernels. */
int rt_kernels_set_isa(enum rt_isa isa);
/* Shortcut: force (true) the scalar path, or go back to the best (false). */
void rt_kernels_force_scalar(bool on);
/* "scalar", "avx2", "neon". */
const char *rt_isa_name(enum rt_isa isa);

/* True if TYPE can be a weight for rt_k_matmul / rt_k_get_row. */
bool rt_k_type_supported(uint32_t type);
/* Elements per block (1 for F32/F16), 0 for unsupported types. */
int rt_k_block_elems(uint32_t type);
/* Bytes of a row of N elements of TYPE (0 if unsupported or N not a multiple
 * of the block). Covers the weight types and RT_GGML_TYPE_Q8_K. */
size_t rt_k_row_bytes(uint32_t type, int64_t n);
/* Dot type of weight TYPE (see top). */
uint32_t rt_k_dot_type(uint32_t type);

/* Convert N floats X into the dot type of weight type WTYPE, written to OUT
 * (rt_k_row_bytes(rt_k_dot_type(WTYPE), N) bytes). */
void rt_k_quantize_act(uint32_t wtype, const float *x, void *out, int64_t n);

/* Dot product of one weight row W (type WTYPE, N elements) with an activation
 * row XQ already in rt_k_dot_type(WTYPE). */
float rt_k_vec_dot(uint32_t wtype, int64_t n, const void *w, const void *xq);

/* Matrix product over a row range: for rows r in [R0, R1) of W (WTYPE, each
 * row N elements, ROW_BYTES apart) and tokens t in [0, NT), with activation t
 * at XQ + t * XQ_STRIDE bytes (dot type):
 *   Y[t * LDY + r] = dot(W row r, X t).
 * Each weight row is loaded once for all NT tokens (batched prompt eval). */
void rt_k_matmul(uint32_t wtype, const void *w, size_t row_bytes, int64_t n, int64_t r0,
		 int64_t r1, const void *xq, size_t xq_stride, int64_t nt, float *y, int64_t ldy);

/* OR'ed into RT_GGML_TYPE_Q4_0 or _Q4_K as the weight type of rt_k_matmul /
 * rt_k_vec_dot / rt_k_dot_type / rt_k_quantize_act: sum the blocks in the
 * order of llama.cpp's x86 repacked kernels (ggml_gemv/gemm_q4_0_8x8_q8_0,
 * _q4_K_8x8_q8_K, which llama.cpp uses for such weights with rows % 8 == 0
 * on AVX2): per row, acc = fma(block integer sum, d_w * d_x, acc) block
 * after block (Q4_K: mins in a second accumulator, subtracted at the end).
 * Portable scalar code: for conformance runs, not speed. */
#define RT_K_GGML_REPACK 0x10000u

/* Row R of W as floats (embedding lookup): OUT gets N floats. */
void rt_k_get_row(uint32_t wtype, const void *w, size_t row_bytes, int64_t r, int64_t n,
		  float *out);

/* Y += A * V where V is N elements of F32 or F16 (attention value sum). */
void rt_k_axpy(uint32_t vtype, int64_t n, float a, const void *v, float *y);

/* Convert N floats to F16 and back. */
void rt_k_f32_to_f16(const float *x, uint16_t *y, int64_t n);
void rt_k_f16_to_f32(const uint16_t *x, float *y, int64_t n);

/* ---- element-wise (F32) ---- */

/* Y = X / sqrt(mean(X^2) + EPS) * W (W may be NULL: no scaling). Y may be X.
 * Mean accumulated in double, as ggml. */
void rt_k_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps);
/* In place: X = softmax(X * SCALE), as ggml's AVX2 soft_max: exp by
 * rt_k_expf_ggml, sums of 8 in float added in double. N >= 1. */
void rt_k_softmax(float *x, int64_t n, float scale);
/* ggml's vectorized exp (ggml_v_expf of the x86 AVX2 build), one element:
 * within 2 ulp of expf, bitwise what llama.cpp uses in softmax and silu. */
float rt_k_expf_ggml(float x);
/* Dot product of N floats in the order of ggml_vec_dot_f32 on AVX2 (4 x 8
 * lanes, FMA, fixed reduction): bitwise llama.cpp's attention scores. */
float rt_k_dot_f32_ggml(int64_t n, const float *x, const float *y);
/* Attention value sum, F32 cache: OUT[d] = sum_i P[i] * V[i * V_STRIDE + d]
 * for d < HD, i < N, accumulated like llama.cpp's non-flash attention on
 * x86: ggml_vec_dot_f32 order for a single token (BATCHED false), llamafile
 * tinyBLAS order (one 8-lane accumulator) for a batch. */
void rt_k_attn_pv_ggml(const float *p, int64_t n, const float *v, size_t v_stride, int64_t hd,
		       bool batched, float *out);
/* F16 dot product in llama.cpp's x86 orders: ggml_vec_dot_f16 (BATCHED
 * false: one token) or llamafile tinyBLAS F16 (one 8-lane accumulator: a
 * batch). The attention scores with an F16 cache (Q rounded to F16). */
float rt_k_dot_f16_ggml(int64_t n, const uint16_t *x, const uint16_t *y, bool batched);
/* Attention value sum over a cache of VTYPE (F32 or F16), rows of HD values
 * V_STRIDE bytes apart: OUT[d] = sum_i P[i] * V[i][d] for i < N, in the
 * order of rt_k_attn_pv_ggml (bitwise on AVX2 and NEON, whose axpy is an
 * FMA), vectorized. With F16, P[i] is rounded to F16 first (llama.cpp
 * converts the probabilities to the cache type). ACC: scratch of
 * RT_K_ATTN_PV_SLOTS * HD floats. */
#define RT_K_ATTN_PV_SLOTS 32
void rt_k_attn_pv(uint32_t vtype, const float *p, int64_t n, const void *v, size_t v_stride,
		  int64_t hd, bool batched, float *acc, float *out);
/* OUT = silu(GATE) * UP, silu(g) = g / (1 + exp(-g)). OUT may alias GATE. */
void rt_k_swiglu(float *out, const float *gate, const float *up, int64_t n);
/* In place silu. */
void rt_k_silu(float *x, int64_t n);
/* Y = A + B, Y = A * B (Y may alias A or B). */
void rt_k_add(float *y, const float *a, const float *b, int64_t n);
void rt_k_mul(float *y, const float *a, const float *b, int64_t n);
/* Y *= S. */
void rt_k_scale(float *y, float s, int64_t n);

enum rt_rope_mode {
	RT_ROPE_NORM = 0, /* rotate adjacent pairs (x[2i], x[2i+1]): llama */
	RT_ROPE_NEOX = 2, /* rotate (x[i], x[i + n_rot/2]): qwen2, qwen3 */
};

/* Rotary embedding over N_HEADS heads of HEAD_DIM floats at X (heads
 * contiguous), position POS. The first N_ROT (even, <= HEAD_DIM) dims of each
 * head rotate; theta_i = POS * FREQ_SCALE * BASE^(-2i/N_ROT) / FF[i], FF the
 * optional per-pair frequency factors (Llama 3 rope_freqs, N_ROT/2 floats, or
 * NULL). Theta is built by repeated multiplication in float, like ggml. */
void rt_k_rope(float *x, int n_heads, int head_dim, int n_rot, int64_t pos,
	       enum rt_rope_mode mode, float base, float freq_scale, const float *ff);

#endif
