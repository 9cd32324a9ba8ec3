/* aarch64 NEON kernels (baseline ARMv8.0: no dotprod extension needed).
 * The dot products of every weight type and the F16 conversions; kernels.c
 * fills the remaining slots (Q8_0 activation quantization, batched dot4)
 * with the scalar functions. Integer sums are exact, and the float steps
 * follow the scalar code's formulas. */
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

static inline int32_t dot16_i8(int8x16_t a, int8x16_t b)
{
	int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
	p = vmlal_s8(p, vget_high_s8(a), vget_high_s8(b));
	return vaddlvq_s16(p);
}

static float dot_q4_k(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q4_k *w = wv;
	const struct rt_block_q8_k *x = xv;
	const uint8x16_t m4 = vdupq_n_u8(0x0F);
	float sum = 0;
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		const uint8_t *q = w[b].qs;
		const int8_t *y = x[b].qs;
		int32_t si = 0, sm = 0;
		for (int j = 0; j < RT_QK_K / 64; j++) {
			uint8_t sc0, m0, sc1, m1;
			rt_k_scale_min_k4(2 * j, w[b].scales, &sc0, &m0);
			rt_k_scale_min_k4(2 * j + 1, w[b].scales, &sc1, &m1);
			uint8x16_t q0 = vld1q_u8(q), q1 = vld1q_u8(q + 16);
			int32_t s0 = dot32_i8(vreinterpretq_s8_u8(vandq_u8(q0, m4)),
					      vreinterpretq_s8_u8(vandq_u8(q1, m4)), vld1q_s8(y),
					      vld1q_s8(y + 16));
			int32_t s1 = dot32_i8(vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)),
					      vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)), vld1q_s8(y + 32),
					      vld1q_s8(y + 48));
			si += sc0 * s0 + sc1 * s1;
			sm += m0 * (x[b].bsums[4 * j] + x[b].bsums[4 * j + 1]) +
			      m1 * (x[b].bsums[4 * j + 2] + x[b].bsums[4 * j + 3]);
			q += 32;
			y += 64;
		}
		float d = x[b].d * rt_k_h2f(w[b].d);
		float dmin = x[b].d * rt_k_h2f(w[b].dmin);
		sum += d * (float)si - dmin * (float)sm;
	}
	return sum;
}

/* 16 six-bit quants minus 32, from 4-bit LO (already shifted/masked) and the
 * 2-bit field of HI at bit SHIFT. */
static inline int8x16_t q6_make(uint8x16_t lo, uint8x16_t hi, int shift)
{
	uint8x16_t h;
	switch (shift) {
	case 0: h = hi; break;
	case 2: h = vshrq_n_u8(hi, 2); break;
	case 4: h = vshrq_n_u8(hi, 4); break;
	default: h = vshrq_n_u8(hi, 6); break;
	}
	h = vshlq_n_u8(vandq_u8(h, vdupq_n_u8(3)), 4);
	return vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, h)), vdupq_n_s8(32));
}

static float dot_q6_k(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q6_k *w = wv;
	const struct rt_block_q8_k *x = xv;
	const uint8x16_t m4 = vdupq_n_u8(0x0F);
	float sum = 0;
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		const uint8_t *ql = w[b].ql, *qh = w[b].qh;
		const int8_t *sc = w[b].scales, *y = x[b].qs;
		int32_t si = 0;
		for (int h = 0; h < 2; h++) {
			uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16);
			uint8x16_t l2 = vld1q_u8(ql + 32), l3 = vld1q_u8(ql + 48);
			uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
			/* chunk c covers elements 32c..32c+31 of this half; its first
			 * 16 use scale 2c, the next 16 scale 2c+1 */
			int8x16_t v[8] = {
				q6_make(vandq_u8(l0, m4), h0, 0), q6_make(vandq_u8(l1, m4), h1, 0),
				q6_make(vandq_u8(l2, m4), h0, 2), q6_make(vandq_u8(l3, m4), h1, 2),
				q6_make(vshrq_n_u8(l0, 4), h0, 4), q6_make(vshrq_n_u8(l1, 4), h1, 4),
				q6_make(vshrq_n_u8(l2, 4), h0, 6), q6_make(vshrq_n_u8(l3, 4), h1, 6),
			};
			for (int g = 0; g < 8; g++)
				si += sc[g] * dot16_i8(v[g], vld1q_s8(y + 16 * g));
			ql += 64;
			qh += 32;
			sc += 8;
			y += 128;
		}
		sum += x[b].d * rt_k_h2f(w[b].d) * (float)si;
	}
	return sum;
}

static inline float32x4_t ld_h4(const uint16_t *p)
{
	return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

static float dot_f16(int64_t n, const uint16_t *w, const uint16_t *x)
{
	float32x4_t a0 = vdupq_n_f32(0), a1 = a0;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		a0 = vfmaq_f32(a0, ld_h4(w + i), ld_h4(x + i));
		a1 = vfmaq_f32(a1, ld_h4(w + i + 4), ld_h4(x + i + 4));
	}
	float s = vaddvq_f32(vaddq_f32(a0, a1));
	for (; i < n; i++)
		s += rt_k_h2f(w[i]) * rt_k_h2f(x[i]);
	return s;
}

static void axpy_f16(int64_t n, float a, const uint16_t *v, float *y)
{
	int64_t i = 0;
	for (; i + 4 <= n; i += 4)
		vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), ld_h4(v + i), a));
	for (; i < n; i++)
		y[i] += a * rt_k_h2f(v[i]);
}

static void f32_to_f16(const float *x, uint16_t *y, int64_t n)
{
	int64_t i = 0;
	for (; i + 4 <= n; i += 4)
		vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
	for (; i < n; i++)
		y[i] = rt_fp32_to_fp16(x[i]);
}

static void f16_to_f32(const uint16_t *x, float *y, int64_t n)
{
	int64_t i = 0;
	for (; i + 4 <= n; i += 4)
		vst1q_f32(y + i, ld_h4(x + i));
	for (; i < n; i++)
		y[i] = rt_k_h2f(x[i]);
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
	.dot_f16 = dot_f16,
	.dot_q8_0 = dot_q8_0,
	.dot_q4_0 = dot_q4_0,
	.dot_q4_k = dot_q4_k,
	.dot_q6_k = dot_q6_k,
	.f32_to_f16 = f32_to_f16,
	.f16_to_f32 = f16_to_f32,
	.axpy_f32 = axpy_f32,
	.axpy_f16 = axpy_f16,
};

#else
typedef int rt_kernels_neon_unused;
#endif
