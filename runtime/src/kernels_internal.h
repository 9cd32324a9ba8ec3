/* Private to the kernels: the per-ISA function table. */
#ifndef FLOTILLA_KERNELS_INTERNAL_H
#define FLOTILLA_KERNELS_INTERNAL_H

#include <stdint.h>

#include "flotilla/kernels.h"

struct rt_kfuncs {
	float (*dot_f32)(int64_t n, const float *w, const float *x);
	/* F32 dot in ggml_vec_dot_f32's AVX2 order (rt_k_dot_f32_ggml): the
	 * single-token F32 matmul, as llama.cpp's decode. */
	float (*dot_f32_ggml)(int64_t n, const float *w, const float *x);
	float (*dot_f16)(int64_t n, const uint16_t *w, const uint16_t *x);
	/* F16 dots in llama.cpp's x86 orders: ggml_vec_dot_f16 (one token) and
	 * llamafile tinyBLAS (one 8-lane accumulator, a batch). */
	float (*dot_f16_ggml)(int64_t n, const uint16_t *w, const uint16_t *x);
	float (*dot_f16_1acc)(int64_t n, const uint16_t *w, const uint16_t *x);
	float (*dot_q8_0)(int64_t n, const void *w, const void *x);
	float (*dot_q4_0)(int64_t n, const void *w, const void *x);
	float (*dot_q4_k)(int64_t n, const void *w, const void *x);
	float (*dot_q6_k)(int64_t n, const void *w, const void *x);
	/* One weight row against 4 activation rows XS bytes apart: OUT[0..3].
	 * For Q8_0 activations XD holds their block scales as floats,
	 * XD[4 * block + token] (converted once for all rows); NULL for Q8_K.
	 * A NULL entry means "call the single-row dot 4 times". */
	void (*dot4_q8_0)(int64_t n, const void *w, const void *x, size_t xs, const float *xd,
			  float *out);
	void (*dot4_q4_0)(int64_t n, const void *w, const void *x, size_t xs, const float *xd,
			  float *out);
	void (*dot4_q4_k)(int64_t n, const void *w, const void *x, size_t xs, const float *xd,
			  float *out);
	void (*dot4_q6_k)(int64_t n, const void *w, const void *x, size_t xs, const float *xd,
			  float *out);
	/* Optional: 4 weight rows RS bytes apart against one activation row:
	 * OUT[k] bitwise equal to dot_q4_k(row k) (the single-token matmul). */
	void (*dotr4_q4_k)(int64_t n, const void *w, size_t rs, const void *x, float *out);
	/* Optional: Y[t * ldy + r] = dot(W row r, X t) over rows [0, NR) and
	 * tokens [0, NT), bitwise equal to dot_f32 per pair. */
	void (*gemm_f32)(int64_t n, const float *w, size_t ws, int64_t nr, const float *x,
			 size_t xs, int64_t nt, float *y, int64_t ldy);
	void (*quant_q8_0)(const float *x, void *y, int64_t n);
	/* rt_k_swiglu, bitwise equal in every ISA. */
	void (*swiglu)(float *out, const float *gate, const float *up, int64_t n);
	/* X[i] = exp(X[i] - MAX) (ggml_v_expf) for i < N; returns the sum in
	 * ggml_vec_soft_max_f32's order (chunks of 8 from 0). Bitwise equal in
	 * every ISA. */
	double (*exp_sum)(float *x, int64_t n, float max);
	void (*f32_to_f16)(const float *x, uint16_t *y, int64_t n);
	void (*f16_to_f32)(const uint16_t *x, float *y, int64_t n);
	void (*axpy_f32)(int64_t n, float a, const float *v, float *y);
	void (*axpy_f16)(int64_t n, float a, const uint16_t *v, float *y);
};

#if defined(__x86_64__)
extern const struct rt_kfuncs rt_kfuncs_avx2;
#endif
#if defined(__aarch64__)
extern const struct rt_kfuncs rt_kfuncs_neon;
#endif

/* Scalar fp16 -> fp32 via a table (filled on first kernel use). */
extern float rt_k_f16_table[65536];
static inline float rt_k_h2f(uint16_t h) { return rt_k_f16_table[h]; }

/* Round to nearest, ties to even, for |f| < 2^22 (ggml nearest_int). */
static inline int rt_k_nearest_int(float f)
{
	float v = f + 12582912.f;
	int32_t i;
	memcpy(&i, &v, sizeof(i));
	return (i & 0x007fffff) - 0x00400000;
}

/* Q4_K: scale and min of sub-block J from the packed 12 bytes Q. */
static inline void rt_k_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
	if (j < 4) {
		*d = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
		*m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
	}
}

#endif
