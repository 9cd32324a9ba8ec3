/* aarch64 NEON kernels (baseline ARMv8.0: no dotprod extension needed).
 * Only the hot dot products are here; kernels.c fills the other slots of
 * the table with the scalar functions. */
#if defined(__aarch64__)

#include <arm_neon.h>

#include "kernels_internal.h"

static float dot_f32(int64_t n, const float *w, const float *x)
{
	float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		a0 = vfmaq_f32(a0, vld1q_f32(w + i), vld1q_f32(x + i));
		a1 = vfmaq_f32(a1, vld1q_f32(w + i + 4), vld1q_f32(x + i + 4));
		a2 = vfmaq_f32(a2, vld1q_f32(w + i + 8), vld1q_f32(x + i + 8));
		a3 = vfmaq_f32(a3, vld1q_f32(w + i + 12), vld1q_f32(x + i + 12));
	}
	float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
	for (; i < n; i++)
		s += w[i] * x[i];
	return s;
}

/* Sum of 32 int8 products. */
static inline int32_t dot32_i8(int8x16_t a0, int8x16_t a1, int8x16_t b0, int8x16_t b1)
{
	int16x8_t p = vmull_s8(vget_low_s8(a0), vget_low_s8(b0));
	p = vmlal_s8(p, vget_high_s8(a0), vget_high_s8(b0));
	int16x8_t q = vmull_s8(vget_low_s8(a1), vget_low_s8(b1));
	q = vmlal_s8(q, vget_high_s8(a1), vget_high_s8(b1));
	return vaddvq_s32(vaddq_s32(vpaddlq_s16(p), vpaddlq_s16(q)));
}

static float dot_q8_0(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q8_0 *w = wv, *x = xv;
	float sum = 0;
	for (int64_t b = 0; b < n / RT_QK8_0; b++) {
		int32_t si = dot32_i8(vld1q_s8(w[b].qs), vld1q_s8(w[b].qs + 16), vld1q_s8(x[b].qs),
				      vld1q_s8(x[b].qs + 16));
		sum += (float)si * (rt_k_h2f(w[b].d) * rt_k_h2f(x[b].d));
	}
	return sum;
}

static float dot_q4_0(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q4_0 *w = wv;
	const struct rt_block_q8_0 *x = xv;
	const uint8x16_t m4 = vdupq_n_u8(0x0F);
	const int8x16_t s8 = vdupq_n_s8(8);
	float sum = 0;
	for (int64_t b = 0; b < n / RT_QK4_0; b++) {
		uint8x16_t q = vld1q_u8(w[b].qs);
		int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), s8);
		int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), s8);
		int32_t si = dot32_i8(lo, hi, vld1q_s8(x[b].qs), vld1q_s8(x[b].qs + 16));
		sum += (float)si * (rt_k_h2f(w[b].d) * rt_k_h2f(x[b].d));
	}
	return sum;
}

static void axpy_f32(int64_t n, float a, const float *v, float *y)
{
	int64_t i = 0;
	for (; i + 4 <= n; i += 4)
		vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(v + i), a));
	for (; i < n; i++)
		y[i] += a * v[i];
}

const struct rt_kfuncs rt_kfuncs_neon = {
	.dot_f32 = dot_f32,
	.dot_q8_0 = dot_q8_0,
	.dot_q4_0 = dot_q4_0,
	.axpy_f32 = axpy_f32,
};

#else
typedef int rt_kernels_neon_unused;
#endif
