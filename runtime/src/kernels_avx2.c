/* x86_64 AVX2 + FMA + F16C kernels. Every function carries a target
 * attribute, so this file builds without -mavx2; kernels.c picks this table
 * at run time only when cpuid reports all three extensions. */
#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels_internal.h"

#define AVX2_FN __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

AVX2_INLINE float h2f(uint16_t h) { return _cvtsh_ss(h); }

AVX2_INLINE float hsum8(__m256 v)
{
	__m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
	return _mm_cvtss_f32(lo);
}

AVX2_INLINE float hsum4(__m128 lo)
{
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
	return _mm_cvtss_f32(lo);
}

/* Sum of products of signed bytes, as 8 int32 (pairs pre-added). A must not
 * hold -128 (quantizers never produce it). */
AVX2_INLINE __m256i dot_i8(__m256i a, __m256i b)
{
	const __m256i ones = _mm256_set1_epi16(1);
	__m256i ax = _mm256_sign_epi8(a, a);
	__m256i sb = _mm256_sign_epi8(b, a);
	return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sb), ones);
}

/* ------------------------------------------------------------- F32, F16 */

/* F32: one accumulator in element order (8 lanes), so the tiled matmul
 * below, which keeps one accumulator per (row, token) pair, adds in exactly
 * the same order: batched and single-token results are bitwise equal. One
 * FMA chain still streams 8 bytes of weights per cycle, above DRAM speed. */
AVX2_FN static float dot_f32(int64_t n, const float *w, const float *x)
{
	__m256 acc = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc);
	float s = hsum8(acc);
	for (; i < n; i++)
		s += w[i] * x[i];
	return s;
}

/* ggml_vec_dot_f32 (AVX2 build): 4 accumulators over steps of 32, reduced
 * (0+2) + (1+3), then lanes (l + l+4), hadd, hadd; leftovers in float. */
AVX2_FN static float dot_f32_ggml(int64_t n, const float *w, const float *x)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	const int64_t np = n & ~(int64_t)31;
	for (int64_t i = 0; i < np; i += 32) {
		a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
		a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
		a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
		a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
	}
	a0 = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
	const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
	const __m128 t1 = _mm_hadd_ps(t0, t0);
	float s = _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
	for (int64_t i = np; i < n; i++)
		s = fmaf(w[i], x[i], s); /* as ggml's contracted leftover loop */
	return s;
}

/* Y[t * ldy + r] for rows [0, NR) of W (WS floats apart) and tokens [0, NT)
 * of X (XS floats apart), in tiles of 3 rows x 4 tokens (12 accumulators). */
AVX2_FN static void gemm_f32(int64_t n, const float *w, size_t ws, int64_t nr, const float *x,
			     size_t xs, int64_t nt, float *y, int64_t ldy)
{
	int64_t r = 0;
	for (; r + 3 <= nr; r += 3) {
		const float *w0 = w + (size_t)r * ws, *w1 = w0 + ws, *w2 = w1 + ws;
		int64_t t = 0;
		for (; t + 4 <= nt; t += 4) {
			const float *x0 = x + (size_t)t * xs;
			__m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
			__m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
			__m256 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
			int64_t i = 0;
			for (; i + 8 <= n; i += 8) {
				__m256 v0 = _mm256_loadu_ps(w0 + i), v1 = _mm256_loadu_ps(w1 + i),
				       v2 = _mm256_loadu_ps(w2 + i);
				__m256 xv = _mm256_loadu_ps(x0 + i);
				a00 = _mm256_fmadd_ps(v0, xv, a00);
				a10 = _mm256_fmadd_ps(v1, xv, a10);
				a20 = _mm256_fmadd_ps(v2, xv, a20);
				xv = _mm256_loadu_ps(x0 + xs + i);
				a01 = _mm256_fmadd_ps(v0, xv, a01);
				a11 = _mm256_fmadd_ps(v1, xv, a11);
				a21 = _mm256_fmadd_ps(v2, xv, a21);
				xv = _mm256_loadu_ps(x0 + 2 * xs + i);
				a02 = _mm256_fmadd_ps(v0, xv, a02);
				a12 = _mm256_fmadd_ps(v1, xv, a12);
				a22 = _mm256_fmadd_ps(v2, xv, a22);
				xv = _mm256_loadu_ps(x0 + 3 * xs + i);
				a03 = _mm256_fmadd_ps(v0, xv, a03);
				a13 = _mm256_fmadd_ps(v1, xv, a13);
				a23 = _mm256_fmadd_ps(v2, xv, a23);
			}
			float o[3][4] = {{hsum8(a00), hsum8(a01), hsum8(a02), hsum8(a03)},
					 {hsum8(a10), hsum8(a11), hsum8(a12), hsum8(a13)},
					 {hsum8(a20), hsum8(a21), hsum8(a22), hsum8(a23)}};
			const float *wr[3] = {w0, w1, w2};
			for (int a = 0; a < 3; a++)
				for (int b = 0; b < 4; b++) {
					float s = o[a][b];
					for (int64_t k = i; k < n; k++)
						s += wr[a][k] * x0[(size_t)b * xs + k];
					y[(t + b) * ldy + r + a] = s;
				}
		}
		for (; t < nt; t++)
			for (int a = 0; a < 3; a++)
				y[t * ldy + r + a] = dot_f32(n, w + (size_t)(r + a) * ws, x + (size_t)t * xs);
	}
	for (; r < nr; r++)
		for (int64_t t = 0; t < nt; t++)
			y[t * ldy + r] = dot_f32(n, w + (size_t)r * ws, x + (size_t)t * xs);
}

AVX2_INLINE __m256 ld_h(const uint16_t *p)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* ggml_vec_dot_f16 (AVX2 build): as dot_f32_ggml, leftovers in double. */
AVX2_FN static float dot_f16_ggml(int64_t n, const uint16_t *w, const uint16_t *x)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	const int64_t np = n & ~(int64_t)31;
	for (int64_t i = 0; i < np; i += 32) {
		a0 = _mm256_fmadd_ps(ld_h(w + i), ld_h(x + i), a0);
		a1 = _mm256_fmadd_ps(ld_h(w + i + 8), ld_h(x + i + 8), a1);
		a2 = _mm256_fmadd_ps(ld_h(w + i + 16), ld_h(x + i + 16), a2);
		a3 = _mm256_fmadd_ps(ld_h(w + i + 24), ld_h(x + i + 24), a3);
	}
	a0 = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
	const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
	const __m128 t1 = _mm_hadd_ps(t0, t0);
	double s = _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
	for (int64_t i = np; i < n; i++)
		s += (double)(h2f(w[i]) * h2f(x[i]));
	return (float)s;
}

/* llamafile tinyBLAS F16 (AVX2): one 8-lane FMA accumulator, then hsum8. */
AVX2_FN static float dot_f16_1acc(int64_t n, const uint16_t *w, const uint16_t *x)
{
	__m256 acc = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		acc = _mm256_fmadd_ps(ld_h(w + i), ld_h(x + i), acc);
	float s = hsum8(acc);
	for (; i < n; i++)
		s += h2f(w[i]) * h2f(x[i]);
	return s;
}

AVX2_FN static float dot_f16(int64_t n, const uint16_t *w, const uint16_t *x)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	int64_t i = 0;
	for (; i + 32 <= n; i += 32) {
		a0 = _mm256_fmadd_ps(ld_h(w + i), ld_h(x + i), a0);
		a1 = _mm256_fmadd_ps(ld_h(w + i + 8), ld_h(x + i + 8), a1);
		a2 = _mm256_fmadd_ps(ld_h(w + i + 16), ld_h(x + i + 16), a2);
		a3 = _mm256_fmadd_ps(ld_h(w + i + 24), ld_h(x + i + 24), a3);
	}
	for (; i + 8 <= n; i += 8)
		a0 = _mm256_fmadd_ps(ld_h(w + i), ld_h(x + i), a0);
	float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
	for (; i < n; i++)
		s += h2f(w[i]) * h2f(x[i]);
	return s;
}

/* ------------------------------------------------------------ Q8_0, Q4_0 */

AVX2_FN static float dot_q8_0(int64_t n, const void *wv, const void *xv)
{
	/* One accumulator in block order, like dot4_q8_0: batched and single
	 * token evaluation give bitwise equal results. */
	const struct rt_block_q8_0 *w = wv, *x = xv;
	const int64_t nb = n / RT_QK8_0;
	__m256 acc = _mm256_setzero_ps();
	int64_t b = 0;
	for (; b + 2 <= nb; b += 2) {
		__m256i p0 = dot_i8(_mm256_loadu_si256((const __m256i *)w[b].qs),
				    _mm256_loadu_si256((const __m256i *)x[b].qs));
		__m256i p1 = dot_i8(_mm256_loadu_si256((const __m256i *)w[b + 1].qs),
				    _mm256_loadu_si256((const __m256i *)x[b + 1].qs));
		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].d) * h2f(x[b].d)),
				      _mm256_cvtepi32_ps(p0), acc);
		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b + 1].d) * h2f(x[b + 1].d)),
				      _mm256_cvtepi32_ps(p1), acc);
	}
	for (; b < nb; b++) {
		__m256i p0 = dot_i8(_mm256_loadu_si256((const __m256i *)w[b].qs),
				    _mm256_loadu_si256((const __m256i *)x[b].qs));
		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].d) * h2f(x[b].d)),
				      _mm256_cvtepi32_ps(p0), acc);
	}
	return hsum8(acc);
}

AVX2_FN static void dot4_q8_0(int64_t n, const void *wv, const void *xv, size_t xs,
				 const float *xd, float *out)
{
	const struct rt_block_q8_0 *w = wv;
	const struct rt_block_q8_0 *x[4];
	_Pragma("GCC unroll 4")
	for (int k = 0; k < 4; k++)
		x[k] = (const void *)((const uint8_t *)xv + (size_t)k * xs);
	const __m256i ones = _mm256_set1_epi16(1);
	__m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
			 _mm256_setzero_ps()};
	for (int64_t b = 0; b < n / RT_QK8_0; b++) {
		__m256i qw = _mm256_loadu_si256((const __m256i *)w[b].qs);
		__m256i ax = _mm256_sign_epi8(qw, qw);
		const __m256 dw = _mm256_set1_ps(h2f(w[b].d));
		_Pragma("GCC unroll 4")
		for (int k = 0; k < 4; k++) {
			__m256i sy = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x[k][b].qs), qw);
			__m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
			acc[k] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcast_ss(xd + 4 * b + k)),
						 _mm256_cvtepi32_ps(p), acc[k]);
		}
	}
	_Pragma("GCC unroll 4")
	for (int k = 0; k < 4; k++)
		out[k] = hsum8(acc[k]);
}

/* 32 nibbles -> 32 bytes: low nibbles first (elements 0..15), then high. */
AVX2_INLINE __m256i unpack_q4_0(const uint8_t *qs)
{
	__m128i t = _mm_loadu_si128((const __m128i *)qs);
	__m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
	return _mm256_sub_epi8(_mm256_and_si256(b, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
}

AVX2_FN static float dot_q4_0(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q4_0 *w = wv;
	const struct rt_block_q8_0 *x = xv;
	__m256 acc = _mm256_setzero_ps();
	for (int64_t b = 0; b < n / RT_QK4_0; b++) {
		__m256i p = dot_i8(unpack_q4_0(w[b].qs), _mm256_loadu_si256((const __m256i *)x[b].qs));
		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].d) * h2f(x[b].d)),
				      _mm256_cvtepi32_ps(p), acc);
	}
	return hsum8(acc);
}

AVX2_FN static void dot4_q4_0(int64_t n, const void *wv, const void *xv, size_t xs,
				 const float *xd, float *out)
{
	const struct rt_block_q4_0 *w = wv;
	const struct rt_block_q8_0 *x[4];
	_Pragma("GCC unroll 4")
	for (int k = 0; k < 4; k++)
		x[k] = (const void *)((const uint8_t *)xv + (size_t)k * xs);
	const __m256i ones = _mm256_set1_epi16(1);
	__m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
			 _mm256_setzero_ps()};
	for (int64_t b = 0; b < n / RT_QK4_0; b++) {
		__m256i qw = unpack_q4_0(w[b].qs);
		__m256i ax = _mm256_sign_epi8(qw, qw);
		const __m256 dw = _mm256_set1_ps(h2f(w[b].d));
		_Pragma("GCC unroll 4")
		for (int k = 0; k < 4; k++) {
			__m256i sy = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x[k][b].qs), qw);
			__m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
			acc[k] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcast_ss(xd + 4 * b + k)),
						 _mm256_cvtepi32_ps(p), acc[k]);
		}
	}
	_Pragma("GCC unroll 4")
	for (int k = 0; k < 4; k++)
		out[k] = hsum8(acc[k]);
}

/* ------------------------------------------------------------------ Q4_K */

/* The 12 packed bytes -> 8 scales (bytes 0..7) and 8 mins (bytes 8..15). */
static inline void q4k_scales(const uint8_t *packed, uint32_t utmp[4])
{
	const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
	memcpy(utmp, packed, 12);
	utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
	const uint32_t uaux = utmp[1] & kmask1;
	utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
	utmp[2] = uaux;
	utmp[0] &= kmask1;
}

/* Minimum term: sum over sub-blocks of min[j] * (sum of the 32 q8 of j). */
AVX2_INLINE __m128i q4k_min_dot(__m128i mins16, const int16_t *bsums)
{
	__m256i s = _mm256_loadu_si256((const __m256i *)bsums);
	__m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
	return _mm_madd_epi16(mins16, q8s);
}

AVX2_FN static float dot_q4_k(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q4_k *w = wv;
	const struct rt_block_q8_k *x = xv;
	const __m256i m4 = _mm256_set1_epi8(0xF);
	__m256 acc = _mm256_setzero_ps();
	__m128 acc_m = _mm_setzero_ps();
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		const float d = x[b].d * h2f(w[b].d);
		const float dmin = -x[b].d * h2f(w[b].dmin);
		uint32_t utmp[4];
		q4k_scales(w[b].scales, utmp);
		const __m256i mins_and_scales =
			_mm256_cvtepu8_epi16(_mm_set_epi32((int)utmp[3], (int)utmp[2], (int)utmp[1], (int)utmp[0]));
		__m128i prod = q4k_min_dot(_mm256_extracti128_si256(mins_and_scales, 1), x[b].bsums);
		acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
		const __m128i sc128 = _mm256_castsi256_si128(mins_and_scales);
		const __m256i scales = _mm256_set_m128i(sc128, sc128);

		const uint8_t *q4 = w[b].qs;
		const int8_t *q8 = x[b].qs;
		__m256i sumi = _mm256_setzero_si256();
		for (int j = 0; j < RT_QK_K / 64; j++) {
			const __m256i scale_l = _mm256_shuffle_epi8(scales, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j))));
			const __m256i scale_h = _mm256_shuffle_epi8(scales, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j + 1))));
			const __m256i q4bits = _mm256_loadu_si256((const __m256i *)q4);
			q4 += 32;
			const __m256i q4l = _mm256_and_si256(q4bits, m4);
			const __m256i q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
			const __m256i q8l = _mm256_loadu_si256((const __m256i *)q8);
			const __m256i q8h = _mm256_loadu_si256((const __m256i *)(q8 + 32));
			q8 += 64;
			__m256i pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
			__m256i ph = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
			sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
		}
		acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
	}
	return hsum8(acc) + hsum4(acc_m);
}

AVX2_FN static void dot4_q4_k(int64_t n, const void *wv, const void *xv, size_t xs,
				 const float *xd, float *out)
{
	const struct rt_block_q4_k *w = wv;
	const struct rt_block_q8_k *x[4];
	(void)xd;
	_Pragma("GCC unroll 4")
	for (int k = 0; k < 4; k++)
		x[k] = (const void *)((const uint8_t *)xv + (size_t)k * xs);
	const __m256i m4 = _mm256_set1_epi8(0xF);
	__m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
			 _mm256_setzero_ps()};
	__m128 acc_m[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		uint32_t utmp[4];
		q4k_scales(w[b].scales, utmp);
		const __m256i mins_and_scales =
			_mm256_cvtepu8_epi16(_mm_set_epi32((int)utmp[3], (int)utmp[2], (int)utmp[1], (int)utmp[0]));
		const __m128i mins = _mm256_extracti128_si256(mins_and_scales, 1);
		const __m128i sc128 = _mm256_castsi256_si128(mins_and_scales);
		const __m256i scales = _mm256_set_m128i(sc128, sc128);
		const float wd = h2f(w[b].d), wdmin = h2f(w[b].dmin);
		__m256i sumi[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(),
				   _mm256_setzero_si256(), _mm256_setzero_si256()};
		const uint8_t *q4 = w[b].qs;
		for (int j = 0; j < RT_QK_K / 64; j++) {
			const __m256i scale_l = _mm256_shuffle_epi8(scales, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j))));
			const __m256i scale_h = _mm256_shuffle_epi8(scales, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j + 1))));
			const __m256i q4bits = _mm256_loadu_si256((const __m256i *)(q4 + 32 * j));
			const __m256i q4l = _mm256_and_si256(q4bits, m4);
			const __m256i q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
			_Pragma("GCC unroll 4")
			for (int k = 0; k < 4; k++) {
				const int8_t *q8 = x[k][b].qs + 64 * j;
				const __m256i q8l = _mm256_loadu_si256((const __m256i *)q8);
				const __m256i q8h = _mm256_loadu_si256((const __m256i *)(q8 + 32));
				__m256i pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
				__m256i ph = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
				sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(pl, ph));
			}
		}
		_Pragma("GCC unroll 4")
		for (int k = 0; k < 4; k++) {
			__m128i prod = q4k_min_dot(mins, x[k][b].bsums);
			acc_m[k] = _mm_fmadd_ps(_mm_set1_ps(-x[k][b].d * wdmin), _mm_cvtepi32_ps(prod), acc_m[k]);
			acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(x[k][b].d * wd), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
		}
	}
	_Pragma("GCC unroll 4")
	for (int k = 0; k < 4; k++)
		out[k] = hsum8(acc[k]) + hsum4(acc_m[k]);
}

/* The 12 packed bytes of two blocks (A in the low, B in the high 128 bits)
 * -> per 128-bit lane the 16 bytes of q4k_scales (8 scales, 8 mins). Reads
 * 16 bytes from each (the block's quants follow its scales). */
AVX2_INLINE __m256i q4k_scales2(const uint8_t *a, const uint8_t *b)
{
	const __m256i v = _mm256_inserti128_si256(
		_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
		_mm_loadu_si128((const __m128i *)b), 1);
	/* dwords: p = [u0, u2, u1, u2], q = [u0, u0, u1, u1] */
	const __m256i p = _mm256_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0));
	const __m256i q = _mm256_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0));
	const __m256i m1 = _mm256_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0, 0x3f3f3f3f,
					     0x0f0f0f0f, 0x3f3f3f3f, 0);
	const __m256i m2 = _mm256_setr_epi32(0, 0, 0, 0x0f0f0f0f, 0, 0, 0, 0x0f0f0f0f);
	const __m256i m3 = _mm256_setr_epi32(0, 0x30303030, 0, 0x30303030, 0, 0x30303030, 0,
					     0x30303030);
	return _mm256_or_si256(_mm256_or_si256(_mm256_and_si256(p, m1),
					       _mm256_and_si256(_mm256_srli_epi32(p, 4), m2)),
			       _mm256_and_si256(_mm256_srli_epi32(q, 2), m3));
}

/* hsum8 of A, B, C, D as [A, B, C, D] (each lane bitwise hsum8). */
AVX2_INLINE __m128 hsum8x4(__m256 a, __m256 b, __m256 c, __m256 d)
{
	/* t = lanes l + l+4: [tA | tB], [tC | tD] */
	const __m256 tab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
	const __m256 tcd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
	/* (t0 + t2, t1 + t3): [A A C C | B B D D] */
	const __m256 u = _mm256_add_ps(_mm256_shuffle_ps(tab, tcd, _MM_SHUFFLE(1, 0, 1, 0)),
				       _mm256_shuffle_ps(tab, tcd, _MM_SHUFFLE(3, 2, 3, 2)));
	/* (t0 + t2) + (t1 + t3): [A C A C | B D B D] */
	const __m256 s = _mm256_add_ps(_mm256_shuffle_ps(u, u, _MM_SHUFFLE(2, 0, 2, 0)),
				       _mm256_shuffle_ps(u, u, _MM_SHUFFLE(3, 1, 3, 1)));
	return _mm_unpacklo_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* hsum4 of the four 128-bit halves of [A | B], [C | D] as [A, B, C, D]. */
AVX2_INLINE __m128 hsum4x4(__m256 ab, __m256 cd)
{
	/* (x0 + x2, x1 + x3): [A A C C | B B D D] */
	const __m256 u = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
				       _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
	const __m256 s = _mm256_add_ps(_mm256_shuffle_ps(u, u, _MM_SHUFFLE(2, 0, 2, 0)),
				       _mm256_shuffle_ps(u, u, _MM_SHUFFLE(3, 1, 3, 1)));
	return _mm_unpacklo_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* One block of two rows A, B of dotr4_q4_k: their scaled integer sums
 * (the lanes of dot_q4_k's sumi) into SUMI_A, SUMI_B, their minimum terms
 * into ACC_M (A in the low, B in the high 128 bits). */
AVX2_INLINE void q4k_pair(const struct rt_block_q4_k *wa, const struct rt_block_q4_k *wb,
			  const struct rt_block_q8_k *x, __m256i q8s2, __m256 *acc_m,
			  __m256i *sumi_a, __m256i *sumi_b)
{
	const __m256i m4 = _mm256_set1_epi8(0xF);
	const __m256i sm = q4k_scales2(wa->scales, wb->scales);
	const __m256 dmin = _mm256_set_m128(_mm_set1_ps(-x->d * h2f(wb->dmin)),
					    _mm_set1_ps(-x->d * h2f(wa->dmin)));
	/* mins of A | mins of B as int16, times the sub-block sums */
	const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi64(_mm256_castsi256_si128(sm),
								      _mm256_extracti128_si256(sm, 1)));
	*acc_m = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, q8s2)), *acc_m);
	const __m128i sca = _mm_cvtepu8_epi16(_mm256_castsi256_si128(sm));
	const __m128i scb = _mm_cvtepu8_epi16(_mm256_extracti128_si256(sm, 1));
	const __m256i scales_a = _mm256_set_m128i(sca, sca), scales_b = _mm256_set_m128i(scb, scb);
	__m256i sa = _mm256_setzero_si256(), sb = _mm256_setzero_si256();
	_Pragma("GCC unroll 4")
	for (int j = 0; j < RT_QK_K / 64; j++) {
		const __m256i shl = _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j)));
		const __m256i shh = _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j + 1)));
		const __m256i q8l = _mm256_loadu_si256((const __m256i *)(x->qs + 64 * j));
		const __m256i q8h = _mm256_loadu_si256((const __m256i *)(x->qs + 64 * j + 32));
		const __m256i qa = _mm256_loadu_si256((const __m256i *)(wa->qs + 32 * j));
		const __m256i qb = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * j));
		__m256i pl = _mm256_madd_epi16(_mm256_shuffle_epi8(scales_a, shl),
					       _mm256_maddubs_epi16(_mm256_and_si256(qa, m4), q8l));
		__m256i ph = _mm256_madd_epi16(_mm256_shuffle_epi8(scales_a, shh),
					       _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4), q8h));
		sa = _mm256_add_epi32(sa, _mm256_add_epi32(pl, ph));
		pl = _mm256_madd_epi16(_mm256_shuffle_epi8(scales_b, shl),
				       _mm256_maddubs_epi16(_mm256_and_si256(qb, m4), q8l));
		ph = _mm256_madd_epi16(_mm256_shuffle_epi8(scales_b, shh),
				       _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4), q8h));
		sb = _mm256_add_epi32(sb, _mm256_add_epi32(pl, ph));
	}
	*sumi_a = sa;
	*sumi_b = sb;
}

#ifndef Q4K_PF_DIST
#define Q4K_PF_DIST 8
#endif
/* Four weight rows RS bytes apart against one Q8_K activation row: OUT[k]
 * bitwise dot_q4_k(row k) (the same float operations per row: one FMA per
 * block into 8 lanes, the mins into 4, hsum8 + hsum4; only the exact
 * integer sums and the shared activation work are rearranged). */
AVX2_FN static void dotr4_q4_k(int64_t n, const void *wv, size_t rs, const void *xv, float *out)
{
	const struct rt_block_q8_k *x = xv;
	const struct rt_block_q4_k *w0 = wv;
	const struct rt_block_q4_k *w1 = (const void *)((const uint8_t *)wv + rs);
	const struct rt_block_q4_k *w2 = (const void *)((const uint8_t *)wv + 2 * rs);
	const struct rt_block_q4_k *w3 = (const void *)((const uint8_t *)wv + 3 * rs);
	__m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
	__m256 accm01 = acc0, accm23 = acc0; /* rows 0 | 1, 2 | 3 */
	/* The 4 rows are 4 * RS contiguous bytes: prefetch, as one stream, the
	 * 4 rows Q4K_PF_DIST rows ahead (two calls on), 4 blocks' worth per
	 * block; the hardware prefetchers miss the row-interleaved loads (+30%
	 * decode speed when the weights are not in cache). Past the matrix's
	 * end this only touches addresses: prefetches never fault. */
	const uintptr_t pf = (uintptr_t)wv + Q4K_PF_DIST * rs;
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		_Pragma("GCC unroll 9")
		for (int i = 0; i < 4 * (int)sizeof(struct rt_block_q4_k); i += 64)
			_mm_prefetch((const char *)(pf + (uintptr_t)b * 4 * sizeof(struct rt_block_q4_k) + (uintptr_t)i),
				     _MM_HINT_T0);
		const __m256i bs = _mm256_loadu_si256((const __m256i *)x[b].bsums);
		const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
		const __m256i q8s2 = _mm256_set_m128i(q8s, q8s);
		__m256i s0, s1, s2, s3;
		q4k_pair(w0 + b, w1 + b, x + b, q8s2, &accm01, &s0, &s1);
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(x[b].d * h2f(w0[b].d)), _mm256_cvtepi32_ps(s0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(x[b].d * h2f(w1[b].d)), _mm256_cvtepi32_ps(s1), acc1);
		q4k_pair(w2 + b, w3 + b, x + b, q8s2, &accm23, &s2, &s3);
		acc2 = _mm256_fmadd_ps(_mm256_set1_ps(x[b].d * h2f(w2[b].d)), _mm256_cvtepi32_ps(s2), acc2);
		acc3 = _mm256_fmadd_ps(_mm256_set1_ps(x[b].d * h2f(w3[b].d)), _mm256_cvtepi32_ps(s3), acc3);
	}
	_mm_storeu_ps(out, _mm_add_ps(hsum8x4(acc0, acc1, acc2, acc3), hsum4x4(accm01, accm23)));
}

/* ------------------------------------------------------- swiglu (exp) */

/* ggml's ggml_v_expf (x86 AVX2+FMA, MIT licence, same op sequence): the
 * exp llama.cpp uses in silu; bitwise rt_k_expf_ggml. */
AVX2_INLINE __m256 v_expf(__m256 x)
{
	const __m256 r = _mm256_set1_ps(0x1.8p23f);
	const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
	const __m256 n = _mm256_sub_ps(z, r);
	const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
					  _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
	const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
	const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
	const __m256i c = _mm256_castps_si256(
		_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(126), _CMP_GT_OQ));
	const __m256 u = _mm256_mul_ps(b, b);
	const __m256 j = _mm256_fmadd_ps(
		_mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)),
				u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
		u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
	if (!_mm256_movemask_ps(_mm256_castsi256_ps(c)))
		return _mm256_fmadd_ps(j, k, k);
	const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
					   _mm256_set1_epi32((int)0x82000000u));
	const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
	const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
	const __m256i d = _mm256_castps_si256(
		_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(192), _CMP_GT_OQ));
	return _mm256_or_ps(
		_mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
		_mm256_andnot_ps(_mm256_castsi256_ps(d),
				 _mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(c),
							    _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
					      _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)))));
}

AVX2_FN static double exp_sum(float *x, int64_t n, float max)
{
	const __m256 mv = _mm256_set1_ps(max);
	double sum = 0;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		const __m256 v = v_expf(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
		_mm256_storeu_ps(x + i, v);
		__m128 t = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
		t = _mm_add_ps(t, _mm_movehl_ps(t, t));
		t = _mm_add_ss(t, _mm_movehdup_ps(t));
		sum += (double)_mm_cvtss_f32(t);
	}
	if (i < n) { /* a partial chunk: the masked rest counts as 0 */
		float v[8] = {0};
		for (int l = 0; i + l < n; l++)
			x[i + l] = v[l] = rt_k_expf_ggml(x[i + l] - max);
		float t0 = v[4] + v[0], t1 = v[5] + v[1], t2 = v[6] + v[2], t3 = v[7] + v[3];
		sum += (double)((t0 + t2) + (t1 + t3));
	}
	return sum;
}

AVX2_FN static void swiglu(float *out, const float *gate, const float *up, int64_t n)
{
	const __m256 one = _mm256_set1_ps(1.f);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		const __m256 x = _mm256_loadu_ps(gate + i);
		const __m256 e = v_expf(_mm256_sub_ps(_mm256_setzero_ps(), x));
		const __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
		_mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
	}
	for (; i < n; i++) {
		float g = gate[i];
		out[i] = g / (1.0f + rt_k_expf_ggml(0.f - g)) * up[i];
	}
}

/* ------------------------------------------------------------------ Q6_K */

/* The 4 x 32 6-bit quants (unsigned, 0..63) of one 128-element half. */
AVX2_INLINE void q6k_unpack(const uint8_t *ql, const uint8_t *qh, __m256i q[4])
{
	const __m256i m4 = _mm256_set1_epi8(0xF);
	const __m256i m2 = _mm256_set1_epi8(3);
	const __m256i b1 = _mm256_loadu_si256((const __m256i *)ql);
	const __m256i b2 = _mm256_loadu_si256((const __m256i *)(ql + 32));
	const __m256i bh = _mm256_loadu_si256((const __m256i *)qh);
	const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(bh, m2), 4);
	const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 2), m2), 4);
	const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 4), m2), 4);
	const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 6), m2), 4);
	q[0] = _mm256_or_si256(_mm256_and_si256(b1, m4), h0);
	q[1] = _mm256_or_si256(_mm256_and_si256(b2, m4), h1);
	q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), h2);
	q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4), h3);
}

/* sum over the 32 elements of scale(l/16) * q6 * q8 (q6 unsigned 0..63), as
 * 8 int32 lanes of 4 elements each; the -32 offset is applied per block from
 * the Q8_K block sums (q6k_offset), as ggml does: the lanes then hold the
 * same integers as ggml's, so the float accumulation is bitwise the same. */
AVX2_INLINE __m256i q6k_chunk(__m256i q6, __m256i q8, __m256i sc)
{
	return _mm256_madd_epi16(_mm256_maddubs_epi16(q6, q8), sc);
}

/* 32 * (bsums[2l] * sc[2l] + bsums[2l+1] * sc[2l+1]) in lane l. */
AVX2_INLINE __m256i q6k_offset(const int8_t *scales, const int16_t *bsums)
{
	const __m256i q8sums = _mm256_loadu_si256((const __m256i *)bsums);
	const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)scales));
	return _mm256_slli_epi32(_mm256_madd_epi16(q8sums, sc16), 5);
}

AVX2_INLINE __m256i q6k_scale(const int8_t *sc)
{
	return _mm256_set_m128i(_mm_set1_epi16(sc[1]), _mm_set1_epi16(sc[0]));
}

AVX2_FN static float dot_q6_k(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q6_k *w = wv;
	const struct rt_block_q8_k *x = xv;
	__m256 acc = _mm256_setzero_ps();
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		const float d = x[b].d * h2f(w[b].d);
		__m256i sumi = _mm256_setzero_si256();
		for (int h = 0; h < 2; h++) {
			__m256i q[4];
			q6k_unpack(w[b].ql + 64 * h, w[b].qh + 32 * h, q);
			const int8_t *q8 = x[b].qs + 128 * h;
			const int8_t *sc = w[b].scales + 8 * h;
			for (int c = 0; c < 4; c++) {
				__m256i y = _mm256_loadu_si256((const __m256i *)(q8 + 32 * c));
				sumi = _mm256_add_epi32(sumi, q6k_chunk(q[c], y, q6k_scale(sc + 2 * c)));
			}
		}
		sumi = _mm256_sub_epi32(sumi, q6k_offset(w[b].scales, x[b].bsums));
		acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
	}
	return hsum8(acc);
}

AVX2_FN static void dot4_q6_k(int64_t n, const void *wv, const void *xv, size_t xs,
				 const float *xd, float *out)
{
	const struct rt_block_q6_k *w = wv;
	const struct rt_block_q8_k *x[4];
	(void)xd;
	_Pragma("GCC unroll 4")
	for (int k = 0; k < 4; k++)
		x[k] = (const void *)((const uint8_t *)xv + (size_t)k * xs);
	__m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
			 _mm256_setzero_ps()};
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		__m256i sumi[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(),
				   _mm256_setzero_si256(), _mm256_setzero_si256()};
		for (int h = 0; h < 2; h++) {
			__m256i q[4];
			q6k_unpack(w[b].ql + 64 * h, w[b].qh + 32 * h, q);
			const int8_t *sc = w[b].scales + 8 * h;
			for (int c = 0; c < 4; c++) {
				const __m256i s = q6k_scale(sc + 2 * c);
				_Pragma("GCC unroll 4")
				for (int k = 0; k < 4; k++) {
					__m256i y = _mm256_loadu_si256((const __m256i *)(x[k][b].qs + 128 * h + 32 * c));
					sumi[k] = _mm256_add_epi32(sumi[k], q6k_chunk(q[c], y, s));
				}
			}
		}
		const float wd = h2f(w[b].d);
		_Pragma("GCC unroll 4")
		for (int k = 0; k < 4; k++) {
			sumi[k] = _mm256_sub_epi32(sumi[k], q6k_offset(w[b].scales, x[k][b].bsums));
			acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(x[k][b].d * wd), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
		}
	}
	_Pragma("GCC unroll 4")
	for (int k = 0; k < 4; k++)
		out[k] = hsum8(acc[k]);
}

/* ------------------------------------------------------- conversions etc */

AVX2_FN static void quant_q8_0(const float *x, void *yv, int64_t n)
{
	struct rt_block_q8_0 *y = yv;
	const __m256 sign = _mm256_set1_ps(-0.0f);
	for (int64_t b = 0; b < n / RT_QK8_0; b++) {
		const float *xb = x + b * RT_QK8_0;
		__m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
		__m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
		__m256 m = _mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1));
		m = _mm256_max_ps(m, _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
		__m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
		m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
		m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
		const float amax = _mm_cvtss_f32(m4);
		y[b].d = (uint16_t)_cvtss_sh(amax / 127.f, 0);
		const __m256 id = _mm256_set1_ps(amax != 0.f ? 127.f / amax : 0.f);
		__m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
		__m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
		__m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
		__m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
		i0 = _mm256_packs_epi32(i0, i1);
		i2 = _mm256_packs_epi32(i2, i3);
		i0 = _mm256_packs_epi16(i0, i2);
		i0 = _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
		_mm256_storeu_si256((__m256i *)y[b].qs, i0);
	}
}

AVX2_FN static void f32_to_f16(const float *x, uint16_t *y, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++)
		y[i] = (uint16_t)_cvtss_sh(x[i], 0);
}

AVX2_FN static void f16_to_f32(const uint16_t *x, float *y, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, ld_h(x + i));
	for (; i < n; i++)
		y[i] = h2f(x[i]);
}

AVX2_FN static void axpy_f32(int64_t n, float a, const float *v, float *y)
{
	const __m256 va = _mm256_set1_ps(a);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(v + i), _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * v[i];
}

AVX2_FN static void axpy_f16(int64_t n, float a, const uint16_t *v, float *y)
{
	const __m256 va = _mm256_set1_ps(a);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, ld_h(v + i), _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * h2f(v[i]);
}

const struct rt_kfuncs rt_kfuncs_avx2 = {
	.dot_f32 = dot_f32,
	.dot_f32_ggml = dot_f32_ggml,
	.gemm_f32 = gemm_f32,
	.dot_f16 = dot_f16,
	.swiglu = swiglu,
	.exp_sum = exp_sum,
	.dot_f16_ggml = dot_f16_ggml,
	.dot_f16_1acc = dot_f16_1acc,
	.dot_q8_0 = dot_q8_0,
	.dot_q4_0 = dot_q4_0,
	.dot_q4_k = dot_q4_k,
	.dot_q6_k = dot_q6_k,
	.dot4_q8_0 = dot4_q8_0,
	.dot4_q4_0 = dot4_q4_0,
	.dot4_q4_k = dot4_q4_k,
	.dotr4_q4_k = dotr4_q4_k,
	.dot4_q6_k = dot4_q6_k,
	.quant_q8_0 = quant_q8_0,
	.f32_to_f16 = f32_to_f16,
	.f16_to_f32 = f16_to_f32,
	.axpy_f32 = axpy_f32,
	.axpy_f16 = axpy_f16,
};

#else
/* Not x86_64: nothing here (ISO C wants a declaration). */
typedef int rt_kernels_avx2_unused;
#endif
