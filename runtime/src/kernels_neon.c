/* aarch64 NEON kernels (baseline ARMv8.0: no dotprod extension needed).
 * The dot products of every weight type and the F16 conversions; kernels.c
 * fills the remaining slots (Q8_0 activation quantization, batched dot4)
 * with the scalar functions. Integer sums are exact, and the float steps
 * follow the scalar code's formulas. */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <math.h>

#include "kernels_internal.h"

/* x86's lane orders on NEON, so that the F32/F16 results of both ISAs are
 * bitwise equal (FMA is fused on both): an 8-lane accumulator is a pair of
 * float32x4 (lanes 0-3, 4-7). */
static inline float hsum8_x86(float32x4_t lo, float32x4_t hi)
{
	/* (l + l+4), then (0+2) + (1+3): AVX's hsum of an __m256 */
	float32x4_t t = vaddq_f32(lo, hi);
	float t0 = vgetq_lane_f32(t, 0), t1 = vgetq_lane_f32(t, 1);
	float t2 = vgetq_lane_f32(t, 2), t3 = vgetq_lane_f32(t, 3);
	return (t0 + t2) + (t1 + t3);
}

/* ggml_vec_dot_f32's AVX2 reduction of 4 accumulators of 8 lanes. */
static inline float reduce4x8_x86(const float32x4_t a[8])
{
	/* (acc0 + acc2) + (acc1 + acc3) per lane, (l + l+4), hadd, hadd */
	float32x4_t lo = vaddq_f32(vaddq_f32(a[0], a[4]), vaddq_f32(a[2], a[6]));
	float32x4_t hi = vaddq_f32(vaddq_f32(a[1], a[5]), vaddq_f32(a[3], a[7]));
	float32x4_t t = vaddq_f32(lo, hi);
	float32x4_t h = vpaddq_f32(t, t);
	return vgetq_lane_f32(vpaddq_f32(h, h), 0);
}

/* One 8-lane accumulator in element order (the x86 dot_f32 and tinyBLAS
 * order): gemm_f32 below gives bitwise the same per (row, token). */
static float dot_f32(int64_t n, const float *w, const float *x)
{
	float32x4_t lo = vdupq_n_f32(0), hi = lo;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		lo = vfmaq_f32(lo, vld1q_f32(w + i), vld1q_f32(x + i));
		hi = vfmaq_f32(hi, vld1q_f32(w + i + 4), vld1q_f32(x + i + 4));
	}
	float s = hsum8_x86(lo, hi);
	for (; i < n; i++)
		s = fmaf(w[i], x[i], s);
	return s;
}

/* ggml_vec_dot_f32's AVX2 order (the single-token F32 matmul). */
static float dot_f32_ggml(int64_t n, const float *w, const float *x)
{
	float32x4_t a[8];
	for (int k = 0; k < 8; k++)
		a[k] = vdupq_n_f32(0);
	const int64_t np = n & ~(int64_t)31;
	for (int64_t i = 0; i < np; i += 32)
		for (int k = 0; k < 8; k++)
			a[k] = vfmaq_f32(a[k], vld1q_f32(w + i + 4 * k), vld1q_f32(x + i + 4 * k));
	float s = reduce4x8_x86(a);
	for (int64_t i = np; i < n; i++)
		s = fmaf(w[i], x[i], s);
	return s;
}

/* Y[t * ldy + r] for rows [0, NR) and tokens [0, NT), 2 rows x 4 tokens per
 * tile (16 accumulators), each pair bitwise dot_f32. */
static void gemm_f32(int64_t n, const float *w, size_t ws, int64_t nr, const float *x, size_t xs,
		     int64_t nt, float *y, int64_t ldy)
{
	const int64_t n8 = n & ~(int64_t)7;
	int64_t r = 0;
	for (; r + 2 <= nr; r += 2) {
		const float *w0 = w + (size_t)r * ws, *w1 = w0 + ws;
		int64_t t = 0;
		for (; t + 4 <= nt; t += 4) {
			const float *xt = x + (size_t)t * xs;
			float32x4_t lo[2][4], hi[2][4];
			for (int a = 0; a < 2; a++)
				for (int b = 0; b < 4; b++)
					lo[a][b] = hi[a][b] = vdupq_n_f32(0);
			for (int64_t i = 0; i < n8; i += 8) {
				float32x4_t v0l = vld1q_f32(w0 + i), v0h = vld1q_f32(w0 + i + 4);
				float32x4_t v1l = vld1q_f32(w1 + i), v1h = vld1q_f32(w1 + i + 4);
				for (int b = 0; b < 4; b++) {
					float32x4_t xl = vld1q_f32(xt + (size_t)b * xs + i);
					float32x4_t xh = vld1q_f32(xt + (size_t)b * xs + i + 4);
					lo[0][b] = vfmaq_f32(lo[0][b], v0l, xl);
					hi[0][b] = vfmaq_f32(hi[0][b], v0h, xh);
					lo[1][b] = vfmaq_f32(lo[1][b], v1l, xl);
					hi[1][b] = vfmaq_f32(hi[1][b], v1h, xh);
				}
			}
			const float *wr[2] = {w0, w1};
			for (int a = 0; a < 2; a++)
				for (int b = 0; b < 4; b++) {
					float s = hsum8_x86(lo[a][b], hi[a][b]);
					for (int64_t k = n8; k < n; k++)
						s = fmaf(wr[a][k], xt[(size_t)b * xs + k], s);
					y[(t + b) * ldy + r + a] = s;
				}
		}
		for (; t < nt; t++)
			for (int a = 0; a < 2; a++)
				y[t * ldy + r + a] = dot_f32(n, w + (size_t)(r + a) * ws, x + (size_t)t * xs);
	}
	for (; r < nr; r++)
		for (int64_t t = 0; t < nt; t++)
			y[t * ldy + r] = dot_f32(n, w + (size_t)r * ws, x + (size_t)t * xs);
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

/* Q8_0 in ggml's x86 (AVX2) order: 8 float lanes, lane l the int sum of
 * bytes 4l..4l+3 of each block, fma(d_w*d_x, lane, acc) block after block,
 * then hsum8 ((l + l+4), (0+2) + (1+3)). A whole-block int sum times d (the
 * order before 2026-11-26) differs in the last bits, which the next layer's
 * Q8_0 activation rounding can turn into int8 flips (qwen2 Q8_0: logits
 * 0.09 apart, greedy split at token 20). */
static inline void q8_lanes(int8x16_t a0, int8x16_t a1, int8x16_t b0, int8x16_t b1,
			    float32x4_t *lo, float32x4_t *hi)
{
	int32x4_t p0 = vpaddlq_s16(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)));
	int32x4_t p1 = vpaddlq_s16(vmull_s8(vget_high_s8(a0), vget_high_s8(b0)));
	int32x4_t p2 = vpaddlq_s16(vmull_s8(vget_low_s8(a1), vget_low_s8(b1)));
	int32x4_t p3 = vpaddlq_s16(vmull_s8(vget_high_s8(a1), vget_high_s8(b1)));
	*lo = vcvtq_f32_s32(vpaddq_s32(p0, p1));
	*hi = vcvtq_f32_s32(vpaddq_s32(p2, p3));
}

static float dot_q8_0(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q8_0 *w = wv, *x = xv;
	float32x4_t acc_lo = vdupq_n_f32(0), acc_hi = vdupq_n_f32(0);
	for (int64_t b = 0; b < n / RT_QK8_0; b++) {
		float32x4_t lo, hi;
		q8_lanes(vld1q_s8(w[b].qs), vld1q_s8(w[b].qs + 16), vld1q_s8(x[b].qs),
			 vld1q_s8(x[b].qs + 16), &lo, &hi);
		const float32x4_t d = vdupq_n_f32(rt_k_h2f(w[b].d) * rt_k_h2f(x[b].d));
		acc_lo = vfmaq_f32(acc_lo, lo, d);
		acc_hi = vfmaq_f32(acc_hi, hi, d);
	}
	return hsum8_x86(acc_lo, acc_hi);
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
		sum = fmaf((float)si, rt_k_h2f(w[b].d) * rt_k_h2f(x[b].d), sum);
	}
	return sum;
}

/* The float step of a Q4_K block, shared by the single and 4-token dots
 * (bitwise equal results). */
static inline float q4k_acc(float sum, float xd, uint16_t wd, uint16_t wdmin, int32_t si,
			    int32_t sm)
{
	float d = xd * rt_k_h2f(wd), dmin = xd * rt_k_h2f(wdmin);
	return fmaf(d, (float)si, fmaf(-dmin, (float)sm, sum));
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
		sum = q4k_acc(sum, x[b].d, w[b].d, w[b].dmin, si, sm);
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
		sum = fmaf(x[b].d * rt_k_h2f(w[b].d), (float)si, sum);
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

/* ggml_vec_dot_f16's AVX2 order (leftovers in double). */
static float dot_f16_ggml(int64_t n, const uint16_t *w, const uint16_t *x)
{
	float32x4_t a[8];
	for (int k = 0; k < 8; k++)
		a[k] = vdupq_n_f32(0);
	const int64_t np = n & ~(int64_t)31;
	for (int64_t i = 0; i < np; i += 32)
		for (int k = 0; k < 8; k++)
			a[k] = vfmaq_f32(a[k], ld_h4(w + i + 4 * k), ld_h4(x + i + 4 * k));
	double s = reduce4x8_x86(a);
	for (int64_t i = np; i < n; i++)
		s += (double)(rt_k_h2f(w[i]) * rt_k_h2f(x[i]));
	return (float)s;
}

/* llamafile tinyBLAS F16 (AVX2): one 8-lane accumulator. */
static float dot_f16_1acc(int64_t n, const uint16_t *w, const uint16_t *x)
{
	float32x4_t lo = vdupq_n_f32(0), hi = lo;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		lo = vfmaq_f32(lo, ld_h4(w + i), ld_h4(x + i));
		hi = vfmaq_f32(hi, ld_h4(w + i + 4), ld_h4(x + i + 4));
	}
	float s = hsum8_x86(lo, hi);
	for (; i < n; i++)
		s = fmaf(rt_k_h2f(w[i]), rt_k_h2f(x[i]), s);
	return s;
}

/* ---- 4 tokens per weight row (prompt): the weights are loaded and
 * unpacked once for 4 activation rows; each token's integer sums and float
 * steps are those of the single-row dot, so results are bitwise equal. */

static inline void rows4(const void *xv, size_t xs, const void *x[4])
{
	for (int k = 0; k < 4; k++)
		x[k] = (const uint8_t *)xv + (size_t)k * xs;
}

static void dot4_q8_0(int64_t n, const void *wv, const void *xv, size_t xs, const float *xd,
		      float *out)
{
	const struct rt_block_q8_0 *w = wv;
	const void *xp[4];
	rows4(xv, xs, xp);
	float32x4_t acc_lo[4], acc_hi[4];
	for (int k = 0; k < 4; k++)
		acc_lo[k] = acc_hi[k] = vdupq_n_f32(0);
	for (int64_t b = 0; b < n / RT_QK8_0; b++) {
		int8x16_t w0 = vld1q_s8(w[b].qs), w1 = vld1q_s8(w[b].qs + 16);
		const float dw = rt_k_h2f(w[b].d);
		for (int k = 0; k < 4; k++) {
			const struct rt_block_q8_0 *x = (const struct rt_block_q8_0 *)xp[k] + b;
			float32x4_t lo, hi;
			q8_lanes(w0, w1, vld1q_s8(x->qs), vld1q_s8(x->qs + 16), &lo, &hi);
			float dx = xd ? xd[4 * b + k] : rt_k_h2f(x->d);
			const float32x4_t d = vdupq_n_f32(dw * dx);
			acc_lo[k] = vfmaq_f32(acc_lo[k], lo, d);
			acc_hi[k] = vfmaq_f32(acc_hi[k], hi, d);
		}
	}
	for (int k = 0; k < 4; k++)
		out[k] = hsum8_x86(acc_lo[k], acc_hi[k]);
}

static void dot4_q4_0(int64_t n, const void *wv, const void *xv, size_t xs, const float *xd,
		      float *out)
{
	const struct rt_block_q4_0 *w = wv;
	const void *xp[4];
	rows4(xv, xs, xp);
	const uint8x16_t m4 = vdupq_n_u8(0x0F);
	const int8x16_t s8 = vdupq_n_s8(8);
	float sum[4] = {0, 0, 0, 0};
	for (int64_t b = 0; b < n / RT_QK4_0; b++) {
		uint8x16_t q = vld1q_u8(w[b].qs);
		int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), s8);
		int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), s8);
		const float dw = rt_k_h2f(w[b].d);
		for (int k = 0; k < 4; k++) {
			const struct rt_block_q8_0 *x = (const struct rt_block_q8_0 *)xp[k] + b;
			int32_t si = dot32_i8(lo, hi, vld1q_s8(x->qs), vld1q_s8(x->qs + 16));
			float dx = xd ? xd[4 * b + k] : rt_k_h2f(x->d);
			sum[k] = fmaf((float)si, dw * dx, sum[k]);
		}
	}
	for (int k = 0; k < 4; k++)
		out[k] = sum[k];
}

static void dot4_q4_k(int64_t n, const void *wv, const void *xv, size_t xs, const float *xd,
		      float *out)
{
	(void)xd;
	const struct rt_block_q4_k *w = wv;
	const void *xp[4];
	rows4(xv, xs, xp);
	const uint8x16_t m4 = vdupq_n_u8(0x0F);
	float sum[4] = {0, 0, 0, 0};
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		int32_t si[4] = {0, 0, 0, 0}, sm[4] = {0, 0, 0, 0};
		const uint8_t *q = w[b].qs;
		for (int j = 0; j < RT_QK_K / 64; j++) {
			uint8_t sc0, m0, sc1, m1;
			rt_k_scale_min_k4(2 * j, w[b].scales, &sc0, &m0);
			rt_k_scale_min_k4(2 * j + 1, w[b].scales, &sc1, &m1);
			uint8x16_t q0 = vld1q_u8(q), q1 = vld1q_u8(q + 16);
			int8x16_t l0 = vreinterpretq_s8_u8(vandq_u8(q0, m4));
			int8x16_t l1 = vreinterpretq_s8_u8(vandq_u8(q1, m4));
			int8x16_t h0 = vreinterpretq_s8_u8(vshrq_n_u8(q0, 4));
			int8x16_t h1 = vreinterpretq_s8_u8(vshrq_n_u8(q1, 4));
			for (int k = 0; k < 4; k++) {
				const struct rt_block_q8_k *x = (const struct rt_block_q8_k *)xp[k] + b;
				const int8_t *y = x->qs + 64 * j;
				int32_t s0 = dot32_i8(l0, l1, vld1q_s8(y), vld1q_s8(y + 16));
				int32_t s1 = dot32_i8(h0, h1, vld1q_s8(y + 32), vld1q_s8(y + 48));
				si[k] += sc0 * s0 + sc1 * s1;
				sm[k] += m0 * (x->bsums[4 * j] + x->bsums[4 * j + 1]) +
					 m1 * (x->bsums[4 * j + 2] + x->bsums[4 * j + 3]);
			}
			q += 32;
		}
		for (int k = 0; k < 4; k++) {
			const struct rt_block_q8_k *x = (const struct rt_block_q8_k *)xp[k] + b;
			sum[k] = q4k_acc(sum[k], x->d, w[b].d, w[b].dmin, si[k], sm[k]);
		}
	}
	for (int k = 0; k < 4; k++)
		out[k] = sum[k];
}

static void dot4_q6_k(int64_t n, const void *wv, const void *xv, size_t xs, const float *xd,
		      float *out)
{
	(void)xd;
	const struct rt_block_q6_k *w = wv;
	const void *xp[4];
	rows4(xv, xs, xp);
	const uint8x16_t m4 = vdupq_n_u8(0x0F);
	float sum[4] = {0, 0, 0, 0};
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		const uint8_t *ql = w[b].ql, *qh = w[b].qh;
		const int8_t *sc = w[b].scales;
		int32_t si[4] = {0, 0, 0, 0};
		for (int h = 0; h < 2; h++) {
			uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16);
			uint8x16_t l2 = vld1q_u8(ql + 32), l3 = vld1q_u8(ql + 48);
			uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
			int8x16_t v[8] = {
				q6_make(vandq_u8(l0, m4), h0, 0), q6_make(vandq_u8(l1, m4), h1, 0),
				q6_make(vandq_u8(l2, m4), h0, 2), q6_make(vandq_u8(l3, m4), h1, 2),
				q6_make(vshrq_n_u8(l0, 4), h0, 4), q6_make(vshrq_n_u8(l1, 4), h1, 4),
				q6_make(vshrq_n_u8(l2, 4), h0, 6), q6_make(vshrq_n_u8(l3, 4), h1, 6),
			};
			for (int k = 0; k < 4; k++) {
				const int8_t *y = ((const struct rt_block_q8_k *)xp[k] + b)->qs + 128 * h;
				for (int g = 0; g < 8; g++)
					si[k] += sc[g] * dot16_i8(v[g], vld1q_s8(y + 16 * g));
			}
			ql += 64;
			qh += 32;
			sc += 8;
		}
		for (int k = 0; k < 4; k++) {
			const struct rt_block_q8_k *x = (const struct rt_block_q8_k *)xp[k] + b;
			sum[k] = fmaf(x->d * rt_k_h2f(w[b].d), (float)si[k], sum[k]);
		}
	}
	for (int k = 0; k < 4; k++)
		out[k] = sum[k];
}

/* Q8_0 activations as ggml's x86 quantize_row_q8_0: d = amax / 127,
 * q = round-to-nearest-even(x * 127 / amax): bytes equal to the scalar code. */
static void quant_q8_0(const float *x, void *yv, int64_t n)
{
	struct rt_block_q8_0 *y = yv;
	for (int64_t b = 0; b < n / RT_QK8_0; b++) {
		const float *xb = x + b * RT_QK8_0;
		float32x4_t v[8];
		float32x4_t m = vdupq_n_f32(0);
		for (int j = 0; j < 8; j++) {
			v[j] = vld1q_f32(xb + 4 * j);
			m = vmaxq_f32(m, vabsq_f32(v[j]));
		}
		const float amax = vmaxvq_f32(m);
		y[b].d = rt_fp32_to_fp16(amax / 127.f);
		const float id = amax != 0.f ? 127.f / amax : 0.f;
		for (int j = 0; j < 8; j += 2) {
			int32x4_t i0 = vcvtnq_s32_f32(vmulq_n_f32(v[j], id));
			int32x4_t i1 = vcvtnq_s32_f32(vmulq_n_f32(v[j + 1], id));
			int16x8_t s16 = vcombine_s16(vqmovn_s32(i0), vqmovn_s32(i1));
			vst1_s8(y[b].qs + 4 * j, vqmovn_s16(s16));
		}
	}
}

const struct rt_kfuncs rt_kfuncs_neon = {
	.dot_f32 = dot_f32,
	.dot_f32_ggml = dot_f32_ggml,
	.gemm_f32 = gemm_f32,
	.dot_f16_ggml = dot_f16_ggml,
	.dot_f16_1acc = dot_f16_1acc,
	.dot4_q8_0 = dot4_q8_0,
	.dot4_q4_0 = dot4_q4_0,
	.dot4_q4_k = dot4_q4_k,
	.dot4_q6_k = dot4_q6_k,
	.quant_q8_0 = quant_q8_0,
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
