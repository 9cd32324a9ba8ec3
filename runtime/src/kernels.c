/* Kernels: dispatch, scalar reference implementations, element-wise ops.
 * The numerics follow ggml's CPU backend (see docs/engine.md). */
#include <errno.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/kernels.h"
#include "kernels_internal.h"

float rt_k_f16_table[65536];

/* ---------------------------------------------------------------- scalar */

/* The scalar dots add in the lane orders of llama.cpp's x86 (AVX2) build,
 * as kernels_avx2.c does, so that armhf (and FLOTILLA_KERNELS=scalar) gives
 * llama.cpp's x86 results bitwise: 8 float lanes, one FMA per lane (fmaf:
 * glibc's exact software FMA where the CPU has none), reduced as hsum8. */
static inline float hsum8_scalar(const float a[8])
{
	const float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
	return (t0 + t2) + (t1 + t3);
}

/* tinyBLAS F32 (a batch) / AVX2 dot_f32: one 8-lane FMA chain in element
 * order, hsum8, leftovers in float. */
static float dot_f32_scalar(int64_t n, const float *w, const float *x)
{
	float acc[8] = {0};
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int l = 0; l < 8; l++)
			acc[l] = fmaf(w[i + l], x[i + l], acc[l]);
	float s = hsum8_scalar(acc);
	for (; i < n; i++)
		s += w[i] * x[i];
	return s;
}

/* AVX2 dot_f16: 4 x 8 lanes over steps of 32, then 8 at a time into the
 * first, hsum8((a0 + a1) + (a2 + a3)), leftovers in float. */
static float dot_f16_scalar(int64_t n, const uint16_t *w, const uint16_t *x)
{
	float acc[4][8] = {{0}};
	int64_t i = 0;
	for (; i + 32 <= n; i += 32)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < 8; l++)
				acc[k][l] = fmaf(rt_k_h2f(w[i + 8 * k + l]), rt_k_h2f(x[i + 8 * k + l]),
						 acc[k][l]);
	for (; i + 8 <= n; i += 8)
		for (int l = 0; l < 8; l++)
			acc[0][l] = fmaf(rt_k_h2f(w[i + l]), rt_k_h2f(x[i + l]), acc[0][l]);
	float a[8];
	for (int l = 0; l < 8; l++)
		a[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
	float s = hsum8_scalar(a);
	for (; i < n; i++)
		s += rt_k_h2f(w[i]) * rt_k_h2f(x[i]);
	return s;
}

/* Q8_0 in ggml's x86 (AVX2) order, as kernels_avx2.c / kernels_neon.c: 8
 * float lanes (lane l: bytes 4l..4l+3 of each block), one FMA per lane and
 * block, then (l + l+4), (0+2) + (1+3). */
static float dot_q8_0_scalar(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q8_0 *w = wv, *x = xv;
	float acc[8] = {0};
	for (int64_t b = 0; b < n / RT_QK8_0; b++) {
		const float d = rt_k_h2f(w[b].d) * rt_k_h2f(x[b].d);
		for (int l = 0; l < 8; l++) {
			int32_t si = 0;
			for (int j = 4 * l; j < 4 * l + 4; j++)
				si += w[b].qs[j] * x[b].qs[j];
			acc[l] = fmaf(d, (float)si, acc[l]);
		}
	}
	return hsum8_scalar(acc);
}

/* ggml_vec_dot_q4_0_q8_0 (AVX2): the 32 nibbles unpacked to bytes (low
 * nibbles = elements 0..15, high = 16..31), lane l the int sum of elements
 * 4l..4l+3, one FMA per lane and block, hsum8. */
static float dot_q4_0_scalar(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q4_0 *w = wv;
	const struct rt_block_q8_0 *x = xv;
	float acc[8] = {0};
	for (int64_t b = 0; b < n / RT_QK4_0; b++) {
		const float d = rt_k_h2f(w[b].d) * rt_k_h2f(x[b].d);
		for (int l = 0; l < 8; l++) {
			int32_t si = 0;
			for (int e = 4 * l; e < 4 * l + 4; e++) {
				const int q = e < 16 ? (w[b].qs[e] & 0xF) : (w[b].qs[e - 16] >> 4);
				si += (q - 8) * x[b].qs[e];
			}
			acc[l] = fmaf(d, (float)si, acc[l]);
		}
	}
	return hsum8_scalar(acc);
}

/* ggml_vec_dot_q4_K_q8_K (AVX2): per block 8 int32 lanes, lane l the
 * scaled int sums of elements 4l..4l+3 of each 32-value sub-block; one FMA
 * per lane and block with d; the mins in 4 lanes (lane j: 64-value group j)
 * with -dmin; hsum8(acc) + hsum4(acc_m). */
static float dot_q4_k_scalar(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q4_k *w = wv;
	const struct rt_block_q8_k *x = xv;
	float acc[8] = {0}, accm[4] = {0};
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		const uint8_t *q = w[b].qs;
		const int8_t *y = x[b].qs;
		const float d = x[b].d * rt_k_h2f(w[b].d);
		const float dmin = -x[b].d * rt_k_h2f(w[b].dmin);
		int32_t si[8] = {0};
		for (int j = 0; j < RT_QK_K / 64; j++) {
			uint8_t sc0, m0, sc1, m1;
			rt_k_scale_min_k4(2 * j, w[b].scales, &sc0, &m0);
			rt_k_scale_min_k4(2 * j + 1, w[b].scales, &sc1, &m1);
			for (int l = 0; l < 8; l++) {
				int32_t s0 = 0, s1 = 0;
				for (int e = 4 * l; e < 4 * l + 4; e++) {
					s0 += (q[e] & 0xF) * y[e];
					s1 += (q[e] >> 4) * y[e + 32];
				}
				si[l] += sc0 * s0 + sc1 * s1;
			}
			const int32_t sm = m0 * (x[b].bsums[4 * j] + x[b].bsums[4 * j + 1]) +
					   m1 * (x[b].bsums[4 * j + 2] + x[b].bsums[4 * j + 3]);
			accm[j] = fmaf(dmin, (float)sm, accm[j]);
			q += 32;
			y += 64;
		}
		for (int l = 0; l < 8; l++)
			acc[l] = fmaf(d, (float)si[l], acc[l]);
	}
	return hsum8_scalar(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

/* ggml_vec_dot_q6_K_q8_K (AVX2): unsigned 6-bit quants, lane l of each
 * 32-value chunk c the int sum of its elements 4l..4l+3 times the chunk's
 * scale (lanes 0-3: scale 2c, 4-7: 2c+1); the -32 offset per lane from the
 * Q8_K sums (32 * (bsums[2l] sc[2l] + bsums[2l+1] sc[2l+1])); one FMA per
 * lane and block, hsum8. */
static float dot_q6_k_scalar(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q6_k *w = wv;
	const struct rt_block_q8_k *x = xv;
	float acc[8] = {0};
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		int32_t si[8] = {0};
		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = w[b].ql + 64 * h, *qh = w[b].qh + 32 * h;
			const int8_t *sc = w[b].scales + 8 * h, *y = x[b].qs + 128 * h;
			for (int c = 0; c < 4; c++) {
				for (int l = 0; l < 8; l++) {
					int32_t s = 0;
					for (int e = 4 * l; e < 4 * l + 4; e++) {
						const uint8_t lo = c & 1 ? ql[e + 32] : ql[e];
						const int q = ((c < 2 ? lo & 0xF : lo >> 4) |
							       (((qh[e] >> (2 * c)) & 3) << 4));
						s += q * y[32 * c + e];
					}
					si[l] += sc[2 * c + (l >= 4)] * s;
				}
			}
		}
		for (int l = 0; l < 8; l++)
			si[l] -= 32 * (x[b].bsums[2 * l] * w[b].scales[2 * l] +
				       x[b].bsums[2 * l + 1] * w[b].scales[2 * l + 1]);
		const float d = x[b].d * rt_k_h2f(w[b].d);
		for (int l = 0; l < 8; l++)
			acc[l] = fmaf(d, (float)si[l], acc[l]);
	}
	return hsum8_scalar(acc);
}

/* x86 AVX2 semantics of ggml's quantize_row_q8_0: id = 127/amax, ties to even. */
static void quant_q8_0_scalar(const float *x, void *yv, int64_t n)
{
	struct rt_block_q8_0 *y = yv;
	for (int64_t b = 0; b < n / RT_QK8_0; b++) {
		const float *xb = x + b * RT_QK8_0;
		float amax = 0;
		for (int j = 0; j < RT_QK8_0; j++)
			amax = fmaxf(amax, fabsf(xb[j]));
		float d = amax / 127.f;
		float id = amax != 0.f ? 127.f / amax : 0.f;
		y[b].d = rt_fp32_to_fp16(d);
		for (int j = 0; j < RT_QK8_0; j++)
			y[b].qs[j] = (int8_t)rt_k_nearest_int(xb[j] * id);
	}
}

static void f32_to_f16_scalar(const float *x, uint16_t *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = rt_fp32_to_fp16(x[i]);
}

static void f16_to_f32_scalar(const uint16_t *x, float *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = rt_k_h2f(x[i]);
}

/* The attention sums in llama.cpp's x86 order, as the AVX2 and NEON paths
 * (an FMA per element; fmaf is exact where the CPU has no FMA): P . V by
 * axpy, K . q by ggml_vec_dot_f16 (one token) or tinyBLAS (a batch). */
static void axpy_f32_scalar(int64_t n, float a, const float *v, float *y)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = fmaf(a, v[i], y[i]);
}

static void axpy_f16_scalar(int64_t n, float a, const uint16_t *v, float *y)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = fmaf(a, rt_k_h2f(v[i]), y[i]);
}

/* ggml_vec_dot_f16 (AVX2): 4 x 8 lanes over steps of 32, reduced as
 * dot_f32_ggml_scalar, leftovers in double. */
static float dot_f16_ggml_scalar(int64_t n, const uint16_t *x, const uint16_t *y)
{
	float acc[4][8] = {{0}};
	const int64_t np = n & ~(int64_t)31;
	for (int64_t i = 0; i < np; i += 32)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < 8; l++)
				acc[k][l] = fmaf(rt_k_h2f(x[i + 8 * k + l]), rt_k_h2f(y[i + 8 * k + l]),
						 acc[k][l]);
	float a[8];
	for (int l = 0; l < 8; l++)
		a[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
	float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
	double s = (t0 + t1) + (t2 + t3);
	for (int64_t i = np; i < n; i++)
		s += (double)(rt_k_h2f(x[i]) * rt_k_h2f(y[i]));
	return (float)s;
}

/* tinyBLAS F16 (AVX2): one 8-lane FMA chain, hsum (l + l+4), (0+2) + (1+3). */
static float dot_f16_1acc_scalar(int64_t n, const uint16_t *x, const uint16_t *y)
{
	float acc[8] = {0};
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int l = 0; l < 8; l++)
			acc[l] = fmaf(rt_k_h2f(x[i + l]), rt_k_h2f(y[i + l]), acc[l]);
	float t0 = acc[0] + acc[4], t1 = acc[1] + acc[5], t2 = acc[2] + acc[6], t3 = acc[3] + acc[7];
	float s = (t0 + t2) + (t1 + t3);
	for (; i < n; i++)
		s = fmaf(rt_k_h2f(x[i]), rt_k_h2f(y[i]), s);
	return s;
}

static void swiglu_scalar(float *out, const float *gate, const float *up, int64_t n);
static float dot_f32_ggml_scalar(int64_t n, const float *x, const float *y);
static double exp_sum_scalar(float *x, int64_t n, float max);

static const struct rt_kfuncs kfuncs_scalar = {
	.dot_f32 = dot_f32_scalar,
	.dot_f32_ggml = dot_f32_ggml_scalar,
	.dot_f16 = dot_f16_scalar,
	.dot_f16_ggml = dot_f16_ggml_scalar,
	.dot_f16_1acc = dot_f16_1acc_scalar,
	.dot_q8_0 = dot_q8_0_scalar,
	.dot_q4_0 = dot_q4_0_scalar,
	.dot_q4_k = dot_q4_k_scalar,
	.dot_q6_k = dot_q6_k_scalar,
	.quant_q8_0 = quant_q8_0_scalar,
	.swiglu = swiglu_scalar,
	.exp_sum = exp_sum_scalar,
	.f32_to_f16 = f32_to_f16_scalar,
	.f16_to_f32 = f16_to_f32_scalar,
	.axpy_f32 = axpy_f32_scalar,
	.axpy_f16 = axpy_f16_scalar,
};

/* -------------------------------------------------------------- dispatch */

static _Atomic(const struct rt_kfuncs *) g_kf;
static enum rt_isa g_isa = RT_ISA_SCALAR;
static enum rt_isa g_best = RT_ISA_SCALAR;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static struct rt_kfuncs g_table; /* best ISA, NULL slots filled from scalar */

#if defined(__x86_64__)
/* F16C from cpuid leaf 1 (ECX bit 29): not every compiler's
 * __builtin_cpu_supports() knows "f16c". AVX2 implies the OS saves YMM. */
static bool cpu_has_f16c(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d))
		return false;
	return (c >> 29) & 1u;
}
#endif

static void kernels_init(void)
{
	for (uint32_t h = 0; h < 65536; h++)
		rt_k_f16_table[h] = rt_fp16_to_fp32((uint16_t)h);
	const struct rt_kfuncs *k = &kfuncs_scalar;
#if defined(__x86_64__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c()) {
		g_best = RT_ISA_AVX2;
		k = &rt_kfuncs_avx2;
	}
#elif defined(__aarch64__)
	g_best = RT_ISA_NEON;
	k = &rt_kfuncs_neon;
#endif
	/* Entries an ISA table leaves NULL fall back to scalar ones. */
	g_table = *k;
#define FILL(f) if (!g_table.f) g_table.f = kfuncs_scalar.f
	FILL(dot_f32); FILL(dot_f32_ggml); FILL(dot_f16); FILL(dot_f16_ggml); FILL(dot_f16_1acc); FILL(dot_q8_0); FILL(dot_q4_0); FILL(dot_q4_k);
	FILL(dot_q6_k); FILL(quant_q8_0); FILL(swiglu); FILL(exp_sum); FILL(f32_to_f16); FILL(f16_to_f32);
	FILL(axpy_f32); FILL(axpy_f16);
#undef FILL
	if (k != &kfuncs_scalar)
		k = &g_table;
	g_isa = g_best;
	const char *env = getenv("FLOTILLA_KERNELS");
	if (env && strcmp(env, "scalar") == 0) {
		g_isa = RT_ISA_SCALAR;
		k = &kfuncs_scalar;
	}
	atomic_store(&g_kf, k);
}

static inline const struct rt_kfuncs *kf(void)
{
	const struct rt_kfuncs *k = atomic_load_explicit(&g_kf, memory_order_acquire);
	if (__builtin_expect(k == NULL, 0)) {
		pthread_once(&g_once, kernels_init);
		k = atomic_load(&g_kf);
	}
	return k;
}

enum rt_isa rt_kernels_isa(void)
{
	kf();
	return g_isa;
}

enum rt_isa rt_kernels_best_isa(void)
{
	kf();
	return g_best;
}

int rt_kernels_set_isa(enum rt_isa isa)
{
	kf();
	if (isa == RT_ISA_SCALAR) {
		atomic_store(&g_kf, &kfuncs_scalar);
		g_isa = isa;
		return 0;
	}
	if (isa != g_best)
		return -ENOTSUP;
	atomic_store(&g_kf, &g_table);
	g_isa = isa;
	return 0;
}

void rt_kernels_force_scalar(bool on)
{
	(void)rt_kernels_set_isa(on ? RT_ISA_SCALAR : rt_kernels_best_isa());
}

const char *rt_isa_name(enum rt_isa isa)
{
	switch (isa) {
	case RT_ISA_SCALAR: return "scalar";
	case RT_ISA_AVX2: return "avx2";
	case RT_ISA_NEON: return "neon";
	}
	return "unknown";
}

/* ------------------------------------------------------------ type info */

bool rt_k_type_supported(uint32_t type)
{
	switch (type) {
	case RT_GGML_TYPE_F32:
	case RT_GGML_TYPE_F16:
	case RT_GGML_TYPE_Q8_0:
	case RT_GGML_TYPE_Q4_0:
	case RT_GGML_TYPE_Q4_K:
	case RT_GGML_TYPE_Q6_K:
		return true;
	default:
		return false;
	}
}

int rt_k_block_elems(uint32_t type)
{
	switch (type) {
	case RT_GGML_TYPE_F32:
	case RT_GGML_TYPE_F16: return 1;
	case RT_GGML_TYPE_Q8_0: return RT_QK8_0;
	case RT_GGML_TYPE_Q4_0: return RT_QK4_0;
	case RT_GGML_TYPE_Q4_K:
	case RT_GGML_TYPE_Q6_K:
	case RT_GGML_TYPE_Q8_K: return RT_QK_K;
	default: return 0;
	}
}

static size_t block_bytes(uint32_t type)
{
	switch (type) {
	case RT_GGML_TYPE_F32: return 4;
	case RT_GGML_TYPE_F16: return 2;
	case RT_GGML_TYPE_Q8_0: return sizeof(struct rt_block_q8_0);
	case RT_GGML_TYPE_Q4_0: return sizeof(struct rt_block_q4_0);
	case RT_GGML_TYPE_Q4_K: return sizeof(struct rt_block_q4_k);
	case RT_GGML_TYPE_Q6_K: return sizeof(struct rt_block_q6_k);
	case RT_GGML_TYPE_Q8_K: return sizeof(struct rt_block_q8_k);
	default: return 0;
	}
}

size_t rt_k_row_bytes(uint32_t type, int64_t n)
{
	int be = rt_k_block_elems(type);
	if (be == 0 || n < 0 || n % be != 0)
		return 0;
	return (size_t)(n / be) * block_bytes(type);
}

uint32_t rt_k_dot_type(uint32_t type)
{
	if (type & RT_K_GGML_REPACK)
		type &= ~RT_K_GGML_REPACK;
	switch (type) {
	case RT_GGML_TYPE_Q8_0:
	case RT_GGML_TYPE_Q4_0: return RT_GGML_TYPE_Q8_0;
	case RT_GGML_TYPE_Q4_K:
	case RT_GGML_TYPE_Q6_K: return RT_GGML_TYPE_Q8_K;
	default: return type;
	}
}

/* ggml quantize_row_q8_K_ref: scale from the signed element of largest
 * magnitude, iscale = -127/max, ties to even, plus the 16-element sums. */
static void quant_q8_k(const float *x, struct rt_block_q8_k *y, int64_t n)
{
	for (int64_t b = 0; b < n / RT_QK_K; b++, x += RT_QK_K) {
		float amax = 0, max = 0;
		for (int j = 0; j < RT_QK_K; j++) {
			float ax = fabsf(x[j]);
			if (ax > amax) {
				amax = ax;
				max = x[j];
			}
		}
		if (amax == 0.f) {
			memset(&y[b], 0, sizeof(y[b]));
			continue;
		}
		const float iscale = -127.f / max;
		for (int j = 0; j < RT_QK_K; j++) {
			int v = rt_k_nearest_int(iscale * x[j]);
			y[b].qs[j] = (int8_t)(v < 127 ? v : 127);
		}
		for (int j = 0; j < RT_QK_K / 16; j++) {
			int s = 0;
			for (int i = 0; i < 16; i++)
				s += y[b].qs[j * 16 + i];
			y[b].bsums[j] = (int16_t)s;
		}
		y[b].d = 1 / iscale;
	}
}

void rt_k_quantize_act(uint32_t wtype, const float *x, void *out, int64_t n)
{
	const struct rt_kfuncs *k = kf();
	switch (rt_k_dot_type(wtype)) {
	case RT_GGML_TYPE_F32: memcpy(out, x, (size_t)n * sizeof(float)); break;
	case RT_GGML_TYPE_F16: k->f32_to_f16(x, out, n); break;
	case RT_GGML_TYPE_Q8_0: k->quant_q8_0(x, out, n); break;
	case RT_GGML_TYPE_Q8_K: quant_q8_k(x, out, n); break;
	default: break;
	}
}

static inline float vec_dot(const struct rt_kfuncs *k, uint32_t wtype, int64_t n, const void *w,
			    const void *xq)
{
	switch (wtype) {
	case RT_GGML_TYPE_F32: return k->dot_f32(n, w, xq);
	case RT_GGML_TYPE_F16: return k->dot_f16(n, w, xq);
	case RT_GGML_TYPE_Q8_0: return k->dot_q8_0(n, w, xq);
	case RT_GGML_TYPE_Q4_0: return k->dot_q4_0(n, w, xq);
	case RT_GGML_TYPE_Q4_K: return k->dot_q4_k(n, w, xq);
	case RT_GGML_TYPE_Q6_K: return k->dot_q6_k(n, w, xq);
	default: return 0.f;
	}
}

/* llama.cpp's repacked Q4_0 gemv/gemm order, one row. */
static float dot_q4_0_repack(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q4_0 *w = wv;
	const struct rt_block_q8_0 *x = xv;
	float acc = 0;
	for (int64_t b = 0; b < n / RT_QK4_0; b++) {
		int32_t si = 0;
		for (int j = 0; j < RT_QK4_0 / 2; j++) {
			si += ((w[b].qs[j] & 0xF) - 8) * x[b].qs[j];
			si += ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + RT_QK4_0 / 2];
		}
		acc = fmaf((float)si, rt_k_h2f(w[b].d) * rt_k_h2f(x[b].d), acc);
	}
	return acc;
}

/* llama.cpp's repacked Q4_K gemm order (ggml_gemm_q4_K_8x8_q8_K, AVX2:
 * the tokens of a batch in groups of 4): one FMA per pair of sub-blocks
 * (64 values) instead of one per block, for the sums and for the mins. */
static float dot_q4_k_repack_gemm(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q4_k *w = wv;
	const struct rt_block_q8_k *x = xv;
	float acc = 0, accm = 0;
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		const uint8_t *q = w[b].qs;
		const int8_t *y = x[b].qs;
		const float dd = rt_k_h2f(w[b].d) * x[b].d, dm = rt_k_h2f(w[b].dmin) * x[b].d;
		for (int j = 0; j < RT_QK_K / 64; j++) {
			uint8_t sc0, m0, sc1, m1;
			rt_k_scale_min_k4(2 * j, w[b].scales, &sc0, &m0);
			rt_k_scale_min_k4(2 * j + 1, w[b].scales, &sc1, &m1);
			int32_t s0 = 0, s1 = 0;
			for (int l = 0; l < 32; l++) {
				s0 += (q[l] & 0xF) * y[l];
				s1 += (q[l] >> 4) * y[l + 32];
			}
			int32_t sm = m0 * (x[b].bsums[4 * j] + x[b].bsums[4 * j + 1]) +
				     m1 * (x[b].bsums[4 * j + 2] + x[b].bsums[4 * j + 3]);
			acc = fmaf((float)(sc0 * s0 + sc1 * s1), dd, acc);
			accm = fmaf((float)sm, dm, accm);
			q += 32;
			y += 64;
		}
	}
	return acc - accm;
}

/* llama.cpp's repacked Q4_K gemv order (one token; a batch's last nt % 4
 * tokens), one row. */
static float dot_q4_k_repack(int64_t n, const void *wv, const void *xv)
{
	const struct rt_block_q4_k *w = wv;
	const struct rt_block_q8_k *x = xv;
	float acc = 0, accm = 0;
	for (int64_t b = 0; b < n / RT_QK_K; b++) {
		const uint8_t *q = w[b].qs;
		const int8_t *y = x[b].qs;
		int32_t si = 0, sm = 0;
		for (int j = 0; j < RT_QK_K / 64; j++) {
			uint8_t sc0, m0, sc1, m1;
			rt_k_scale_min_k4(2 * j, w[b].scales, &sc0, &m0);
			rt_k_scale_min_k4(2 * j + 1, w[b].scales, &sc1, &m1);
			int32_t s0 = 0, s1 = 0;
			for (int l = 0; l < 32; l++) {
				s0 += (q[l] & 0xF) * y[l];
				s1 += (q[l] >> 4) * y[l + 32];
			}
			si += sc0 * s0 + sc1 * s1;
			sm += m0 * (x[b].bsums[4 * j] + x[b].bsums[4 * j + 1]) +
			      m1 * (x[b].bsums[4 * j + 2] + x[b].bsums[4 * j + 3]);
			q += 32;
			y += 64;
		}
		acc = fmaf((float)si, rt_k_h2f(w[b].d) * x[b].d, acc);
		accm = fmaf((float)sm, rt_k_h2f(w[b].dmin) * x[b].d, accm);
	}
	return acc - accm;
}

float rt_k_vec_dot(uint32_t wtype, int64_t n, const void *w, const void *xq)
{
	if (wtype == (RT_GGML_TYPE_Q4_0 | RT_K_GGML_REPACK))
		return dot_q4_0_repack(n, w, xq);
	if (wtype == (RT_GGML_TYPE_Q4_K | RT_K_GGML_REPACK))
		return dot_q4_k_repack(n, w, xq);
	return vec_dot(kf(), wtype & ~RT_K_GGML_REPACK, n, w, xq);
}

typedef void (*dot4_fn)(int64_t n, const void *w, const void *x, size_t xs, const float *xd,
			float *out);

/* Float block scales of up to MM_TILE Q8_0 activation rows (per thread). */
#define MM_TILE 16
#define MM_ROW_BLOCK_BYTES (96 * 1024)
#define MM_XD_MAX_BLOCKS 2048 /* rows up to 65536 elements */
static _Thread_local float g_xd[MM_TILE * MM_XD_MAX_BLOCKS];

void rt_k_matmul(uint32_t wtype, const void *w, size_t row_bytes, int64_t n, int64_t r0,
		 int64_t r1, const void *xq, size_t xq_stride, int64_t nt, float *y, int64_t ldy)
{
	if (wtype & RT_K_GGML_REPACK) {
		/* llama.cpp: gemm for the first nt - nt % 4 tokens, gemv for
		 * the rest (the same order for Q4_0; per 64 values for Q4_K) */
		const int64_t n_gemm = nt - nt % 4;
		for (int64_t t = 0; t < nt; t++)
			for (int64_t r = r0; r < r1; r++) {
				const uint8_t *wr = (const uint8_t *)w + (size_t)r * row_bytes;
				const uint8_t *xt = (const uint8_t *)xq + (size_t)t * xq_stride;
				y[t * ldy + r] = wtype == (RT_GGML_TYPE_Q4_K | RT_K_GGML_REPACK) && t < n_gemm
							 ? dot_q4_k_repack_gemm(n, wr, xt)
							 : rt_k_vec_dot(wtype, n, wr, xt);
			}
		return;
	}
	const struct rt_kfuncs *k = kf();
	dot4_fn d4 = NULL;
	switch (wtype) {
	case RT_GGML_TYPE_Q8_0: d4 = k->dot4_q8_0; break;
	case RT_GGML_TYPE_Q4_0: d4 = k->dot4_q4_0; break;
	case RT_GGML_TYPE_Q4_K: d4 = k->dot4_q4_k; break;
	case RT_GGML_TYPE_Q6_K: d4 = k->dot4_q6_k; break;
	default: break;
	}
	const uint8_t *wb = w;
	const uint8_t *xb = xq;
	if (wtype == RT_GGML_TYPE_F16) {
		/* llama.cpp: ggml_vec_dot_f16 for one token, tinyBLAS for a batch */
		for (int64_t t = 0; t < nt; t++) {
			const uint16_t *xt = (const void *)(xb + (size_t)t * xq_stride);
			for (int64_t r = r0; r < r1; r++) {
				const uint16_t *wr = (const void *)(wb + (size_t)r * row_bytes);
				y[t * ldy + r] = nt == 1 ? k->dot_f16_ggml(n, wr, xt) : k->dot_f16_1acc(n, wr, xt);
			}
		}
		return;
	}
	if (wtype == RT_GGML_TYPE_F32 && nt == 1) {
		/* llama.cpp: ggml_vec_dot_f32 for one token, tinyBLAS (the
		 * one-accumulator order of gemm_f32) for a batch */
		for (int64_t r = r0; r < r1; r++)
			y[r] = k->dot_f32_ggml(n, (const float *)(const void *)(wb + (size_t)r * row_bytes),
					       xq);
		return;
	}
	if (wtype == RT_GGML_TYPE_F32 && k->gemm_f32 && nt > 1 && row_bytes % sizeof(float) == 0 &&
	    xq_stride % sizeof(float) == 0) {
		const size_t ws = row_bytes / sizeof(float), xs = xq_stride / sizeof(float);
		const int64_t tile = 64; /* tokens per pass: their activations stay in L2 */
		for (int64_t t0 = 0; t0 < nt; t0 += tile) {
			int64_t n_t = nt - t0 < tile ? nt - t0 : tile;
			k->gemm_f32(n, (const float *)w + (size_t)r0 * ws, ws, r1 - r0,
				    (const float *)xq + (size_t)t0 * xs, xs, n_t, y + t0 * ldy + r0, ldy);
		}
		return;
	}
	const bool q8_0_act = rt_k_dot_type(wtype) == RT_GGML_TYPE_Q8_0;
	const int64_t nb = n / RT_QK8_0;
	if (q8_0_act && nb > MM_XD_MAX_BLOCKS)
		d4 = NULL;
	/* Tokens in tiles so that a tile's activations stay in L2 while every
	 * weight row of the range streams past them once. */
	const int64_t tile = MM_TILE;
	for (int64_t t0 = 0; t0 < nt; t0 += tile) {
		int64_t t1 = t0 + tile < nt ? t0 + tile : nt;
		if (d4 && q8_0_act) {
			/* scales of each group of 4 tokens: g_xd[(group * nb + b) * 4 + k] */
			for (int64_t t = t0; t + 4 <= t1; t += 4) {
				float *xd = g_xd + (size_t)((t - t0) / 4) * (size_t)nb * 4;
				for (int j = 0; j < 4; j++) {
					const struct rt_block_q8_0 *xr =
						(const void *)(xb + (size_t)(t + j) * xq_stride);
					for (int64_t b = 0; b < nb; b++)
						xd[b * 4 + j] = rt_k_h2f(xr[b].d);
				}
			}
		}
		/* Rows in blocks of about MM_ROW_BLOCK_BYTES (they stay in L2) swept
		 * once per group of 4 tokens (whose activations stay in L1). */
		int64_t rb = (int64_t)(MM_ROW_BLOCK_BYTES / (row_bytes ? row_bytes : 1));
		if (rb < 1)
			rb = 1;
		if (rb > 4)
			rb &= ~(int64_t)3; /* whole groups for dotr4 */
		for (int64_t rb0 = r0; rb0 < r1; rb0 += rb) {
			int64_t rb1 = rb0 + rb < r1 ? rb0 + rb : r1;
			int64_t t = t0;
			if (d4) {
				for (; t + 4 <= t1; t += 4) {
					const float *xd = q8_0_act ? g_xd + (size_t)((t - t0) / 4) * (size_t)nb * 4 : NULL;
					for (int64_t r = rb0; r < rb1; r++) {
						float o[4];
						d4(n, wb + (size_t)r * row_bytes, xb + (size_t)t * xq_stride, xq_stride, xd, o);
						for (int i = 0; i < 4; i++)
							y[(t + i) * ldy + r] = o[i];
					}
				}
			}
			for (; t < t1; t++) {
				int64_t r = rb0;
				if (wtype == RT_GGML_TYPE_Q4_K && k->dotr4_q4_k)
					for (; r + 4 <= rb1; r += 4) /* 4 rows per call, bitwise as one */
						k->dotr4_q4_k(n, wb + (size_t)r * row_bytes, row_bytes,
							      xb + (size_t)t * xq_stride, y + t * ldy + r);
				for (; r < rb1; r++)
					y[t * ldy + r] = vec_dot(k, wtype, n, wb + (size_t)r * row_bytes,
								 xb + (size_t)t * xq_stride);
			}
		}
	}
}

/* Dequantize one row (plain loops: only for embeddings and tests). */
void rt_k_get_row(uint32_t wtype, const void *w, size_t row_bytes, int64_t r, int64_t n,
		  float *out)
{
	const uint8_t *src = (const uint8_t *)w + (size_t)r * row_bytes;
	kf();
	switch (wtype) {
	case RT_GGML_TYPE_F32: memcpy(out, src, (size_t)n * sizeof(float)); break;
	case RT_GGML_TYPE_F16: {
		const uint16_t *h = (const uint16_t *)src;
		for (int64_t i = 0; i < n; i++)
			out[i] = rt_k_h2f(h[i]);
		break;
	}
	case RT_GGML_TYPE_Q8_0: {
		const struct rt_block_q8_0 *b = (const void *)src;
		for (int64_t i = 0; i < n / RT_QK8_0; i++) {
			float d = rt_k_h2f(b[i].d);
			for (int j = 0; j < RT_QK8_0; j++)
				out[i * RT_QK8_0 + j] = b[i].qs[j] * d;
		}
		break;
	}
	case RT_GGML_TYPE_Q4_0: {
		const struct rt_block_q4_0 *b = (const void *)src;
		for (int64_t i = 0; i < n / RT_QK4_0; i++) {
			float d = rt_k_h2f(b[i].d);
			for (int j = 0; j < RT_QK4_0 / 2; j++) {
				out[i * RT_QK4_0 + j] = (float)((b[i].qs[j] & 0xF) - 8) * d;
				out[i * RT_QK4_0 + j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
			}
		}
		break;
	}
	case RT_GGML_TYPE_Q4_K: {
		const struct rt_block_q4_k *b = (const void *)src;
		for (int64_t i = 0; i < n / RT_QK_K; i++) {
			float d = rt_k_h2f(b[i].d), dmin = rt_k_h2f(b[i].dmin);
			const uint8_t *q = b[i].qs;
			float *o = out + i * RT_QK_K;
			for (int j = 0; j < 4; j++) {
				uint8_t sc, m;
				rt_k_scale_min_k4(2 * j, b[i].scales, &sc, &m);
				float d1 = d * sc, m1 = dmin * m;
				rt_k_scale_min_k4(2 * j + 1, b[i].scales, &sc, &m);
				float d2 = d * sc, m2 = dmin * m;
				for (int l = 0; l < 32; l++) {
					/* ggml-quants.c (gnu11, FMA): contracted */
					o[l] = fmaf(d1, (float)(q[l] & 0xF), -m1);
					o[l + 32] = fmaf(d2, (float)(q[l] >> 4), -m2);
				}
				q += 32;
				o += 64;
			}
		}
		break;
	}
	case RT_GGML_TYPE_Q6_K: {
		const struct rt_block_q6_k *b = (const void *)src;
		for (int64_t i = 0; i < n / RT_QK_K; i++) {
			float d = rt_k_h2f(b[i].d);
			const uint8_t *ql = b[i].ql, *qh = b[i].qh;
			const int8_t *sc = b[i].scales;
			float *o = out + i * RT_QK_K;
			for (int h = 0; h < 2; h++) {
				for (int l = 0; l < 32; l++) {
					int is = l / 16;
					int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
					int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
					int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
					int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
					o[l] = d * sc[is + 0] * (float)q1;
					o[l + 32] = d * sc[is + 2] * (float)q2;
					o[l + 64] = d * sc[is + 4] * (float)q3;
					o[l + 96] = d * sc[is + 6] * (float)q4;
				}
				o += 128;
				ql += 64;
				qh += 32;
				sc += 8;
			}
		}
		break;
	}
	default:
		memset(out, 0, (size_t)n * sizeof(float));
		break;
	}
}

void rt_k_axpy(uint32_t vtype, int64_t n, float a, const void *v, float *y)
{
	const struct rt_kfuncs *k = kf();
	if (vtype == RT_GGML_TYPE_F16)
		k->axpy_f16(n, a, v, y);
	else
		k->axpy_f32(n, a, v, y);
}

void rt_k_f32_to_f16(const float *x, uint16_t *y, int64_t n) { kf()->f32_to_f16(x, y, n); }
void rt_k_f16_to_f32(const uint16_t *x, float *y, int64_t n) { kf()->f16_to_f32(x, y, n); }

/* ----------------------------------------------------------- element-wise */

void rt_k_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps)
{
	double sum = 0;
	for (int64_t i = 0; i < n; i++)
		sum += (double)(x[i] * x[i]);
	const float mean = (float)(sum / (double)n);
	const float scale = 1.0f / sqrtf(mean + eps);
	if (w) {
		for (int64_t i = 0; i < n; i++)
			y[i] = (x[i] * scale) * w[i];
	} else {
		for (int64_t i = 0; i < n; i++)
			y[i] = x[i] * scale;
	}
}

/* ggml's ggml_v_expf (x86 AVX2+FMA build), one lane: a polynomial exp that
 * differs from libm expf in the last bits; llama.cpp uses it in softmax and
 * silu, so the engine does too (same op sequence, fmaf for each FMA). */
static inline float f_of_u(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

static inline uint32_t u_of_f(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

float rt_k_expf_ggml(float x)
{
	const float r = 0x1.8p23f;
	const float z = fmaf(x, 0x1.715476p+0f, r);
	const float n = z - r;
	const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
	const uint32_t e = u_of_f(z) << 23;
	const float k = f_of_u(e + u_of_f(1.0f));
	const float u = b * b;
	const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
				  fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
			     u, 0x1.ffffecp-1f * b);
	const float an = fabsf(n);
	if (!(an > 126.f))
		return fmaf(k, j, k);
	const uint32_t g = n <= 0.f ? 0x82000000u : 0u;
	const float s1 = f_of_u(g + 0x7f000000u);
	const float s2 = f_of_u(e - g);
	if (an > 192.f)
		return s1 * s1;
	return fmaf(s2, j, s2) * s1;
}

/* ggml_vec_soft_max_f32 + ggml_compute_forward_soft_max_f32 (AVX2): scale,
 * max, exp in chunks of 8 from index 0, each chunk summed in float as
 * (e0+e4 + e2+e6) + (e1+e5 + e3+e7), the chunk sums added in double; then
 * multiplied by (float)(1/sum). Entries past N count as masked (0). */
void rt_k_softmax(float *x, int64_t n, float scale)
{
	float max = -INFINITY;
	for (int64_t i = 0; i < n; i++) {
		x[i] *= scale;
		if (x[i] > max)
			max = x[i];
	}
	const double sum = kf()->exp_sum(x, n, max);
	const float inv = (float)(1.0 / sum);
	for (int64_t i = 0; i < n; i++)
		x[i] *= inv;
}

void rt_k_silu(float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		x[i] = x[i] / (1.0f + rt_k_expf_ggml(0.f - x[i]));
}

static double exp_sum_scalar(float *x, int64_t n, float max)
{
	double sum = 0;
	for (int64_t c = 0; c < n; c += 8) {
		float v[8];
		for (int l = 0; l < 8; l++) {
			v[l] = c + l < n ? rt_k_expf_ggml(x[c + l] - max) : 0.f;
			if (c + l < n)
				x[c + l] = v[l];
		}
		float t0 = v[4] + v[0], t1 = v[5] + v[1], t2 = v[6] + v[2], t3 = v[7] + v[3];
		sum += (double)((t0 + t2) + (t1 + t3));
	}
	return sum;
}

static void swiglu_scalar(float *out, const float *gate, const float *up, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		float g = gate[i];
		out[i] = g / (1.0f + rt_k_expf_ggml(0.f - g)) * up[i];
	}
}

void rt_k_swiglu(float *out, const float *gate, const float *up, int64_t n)
{
	kf()->swiglu(out, gate, up, n);
}

/* ggml_vec_dot_f32, AVX2 build: 4 accumulators of 8 lanes over steps of 32
 * (FMA), reduced as acc0+acc2, acc1+acc3, then their sum, then lanes
 * (l + l+4), hadd, hadd; leftovers added one by one in float. */
float rt_k_dot_f32_ggml(int64_t n, const float *x, const float *y)
{
	return kf()->dot_f32_ggml(n, x, y);
}

static float dot_f32_ggml_scalar(int64_t n, const float *x, const float *y)
{
	float acc[4][8] = {{0}};
	const int64_t np = n & ~(int64_t)31;
	for (int64_t i = 0; i < np; i += 32)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < 8; l++)
				acc[k][l] = fmaf(x[i + 8 * k + l], y[i + 8 * k + l], acc[k][l]);
	float a[8];
	for (int l = 0; l < 8; l++)
		a[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
	float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
	float sum = (t0 + t1) + (t2 + t3);
	/* ggml's leftover loop `sumf += x[i]*y[i]` is contracted to an FMA
	 * (-ffp-contract=fast, -march=native) */
	for (int64_t i = np; i < n; i++)
		sum = fmaf(x[i], y[i], sum);
	return sum;
}

void rt_k_attn_pv_ggml(const float *p, int64_t n, const float *v, size_t v_stride, int64_t hd,
		       bool batched, float *out)
{
	for (int64_t d = 0; d < hd; d++) {
		const float *vd = v + d;
		if (batched) {
			/* llamafile tinyBLAS (n_tokens >= 2): one 8-lane FMA
			 * accumulator, then hsum: (l + l+4), (0+2) + (1+3) */
			float a[8] = {0};
			for (int64_t i = 0; i < n; i++)
				a[i & 7] = fmaf(vd[(size_t)i * v_stride], p[i], a[i & 7]);
			float t0 = a[4] + a[0], t1 = a[5] + a[1], t2 = a[6] + a[2], t3 = a[7] + a[3];
			out[d] = (t0 + t2) + (t1 + t3);
		} else {
			/* ggml_vec_dot_f32 over n_kv (a multiple of 256 in
			 * llama.cpp, the masked tail being zeros) */
			float acc[4][8] = {{0}};
			for (int64_t i = 0; i < n; i++)
				acc[(i >> 3) & 3][i & 7] =
					fmaf(vd[(size_t)i * v_stride], p[i], acc[(i >> 3) & 3][i & 7]);
			float a[8];
			for (int l = 0; l < 8; l++)
				a[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
			float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
			out[d] = (t0 + t1) + (t2 + t3);
		}
	}
}

float rt_k_dot_f16_ggml(int64_t n, const uint16_t *x, const uint16_t *y, bool batched)
{
	const struct rt_kfuncs *k = kf();
	return batched ? k->dot_f16_1acc(n, x, y) : k->dot_f16_ggml(n, x, y);
}

/* The lanes of rt_k_attn_pv_ggml's accumulators as ACC slots of HD floats:
 * position i goes into slot i % NS (decode: 32 = 4 accumulators x 8 lanes,
 * slot 8k + l; batch: the 8 lanes of one accumulator). Each slot is an FMA
 * axpy (vectorized over d), then the slots are reduced per d in ggml's
 * order: bitwise rt_k_attn_pv_ggml where axpy is an FMA (AVX2, NEON). */
void rt_k_attn_pv(uint32_t vtype, const float *p, int64_t n, const void *v, size_t v_stride,
		  int64_t hd, bool batched, float *acc, float *out)
{
	const struct rt_kfuncs *k = kf();
	const int ns = batched ? 8 : 32;
	const uint8_t *vb = v;
	memset(acc, 0, (size_t)ns * (size_t)hd * sizeof(float));
	if (vtype == RT_GGML_TYPE_F16) {
		for (int64_t i = 0; i < n; i++) {
			/* ggml converts the probabilities to F16 (kq -> vec_dot_type) */
			float pr = rt_k_h2f(rt_fp32_to_fp16(p[i]));
			k->axpy_f16(hd, pr, (const uint16_t *)(const void *)(vb + (size_t)i * v_stride),
				    acc + (size_t)(i % ns) * (size_t)hd);
		}
	} else {
		for (int64_t i = 0; i < n; i++)
			k->axpy_f32(hd, p[i], (const float *)(const void *)(vb + (size_t)i * v_stride),
				    acc + (size_t)(i % ns) * (size_t)hd);
	}
#define S(s) (acc + (size_t)(s) * (size_t)hd)
	if (batched) {
		/* tinyBLAS hsum: (l + l+4), then (0+2) + (1+3) */
		for (int64_t d = 0; d < hd; d++) {
			float t0 = S(4)[d] + S(0)[d], t1 = S(5)[d] + S(1)[d];
			float t2 = S(6)[d] + S(2)[d], t3 = S(7)[d] + S(3)[d];
			out[d] = (t0 + t2) + (t1 + t3);
		}
	} else {
		/* GGML_F32x8_REDUCE: (acc0 + acc2) + (acc1 + acc3), lanes
		 * (l + l+4), hadd, hadd */
		float a[8];
		for (int64_t d = 0; d < hd; d++) {
			for (int l = 0; l < 8; l++)
				a[l] = (S(l)[d] + S(16 + l)[d]) + (S(8 + l)[d] + S(24 + l)[d]);
			float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
			out[d] = (t0 + t1) + (t2 + t3);
		}
	}
#undef S
}

void rt_k_add(float *y, const float *a, const float *b, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = a[i] + b[i];
}

void rt_k_mul(float *y, const float *a, const float *b, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = a[i] * b[i];
}

void rt_k_scale(float *y, float s, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] *= s;
}

#define ROPE_MAX_PAIRS 512

void rt_k_rope(float *x, int n_heads, int head_dim, int n_rot, int64_t pos,
	       enum rt_rope_mode mode, float base, float freq_scale, const float *ff)
{
	float cs[ROPE_MAX_PAIRS], sn[ROPE_MAX_PAIRS];
	const int np = n_rot / 2;
	if (np > ROPE_MAX_PAIRS || n_rot > head_dim || n_rot < 0)
		return;
	const float theta_scale = powf(base, -2.0f / (float)n_rot);
	float theta = (float)pos;
	for (int i = 0; i < np; i++) {
		float t = theta / (ff ? ff[i] : 1.0f);
		t *= freq_scale;
		cs[i] = cosf(t);
		sn[i] = sinf(t);
		theta *= theta_scale;
	}
	/* ggml's rotate_pairs is C++ built with -ffp-contract=fast (gnu++17) and
	 * FMA: GCC fuses the first product of each line, as below. */
	for (int h = 0; h < n_heads; h++) {
		float *v = x + (size_t)h * (size_t)head_dim;
		if (mode == RT_ROPE_NEOX) {
			for (int i = 0; i < np; i++) {
				float a = v[i], b = v[i + np];
				v[i] = fmaf(a, cs[i], -(b * sn[i]));
				v[i + np] = fmaf(a, sn[i], b * cs[i]);
			}
		} else {
			for (int i = 0; i < np; i++) {
				float a = v[2 * i], b = v[2 * i + 1];
				v[2 * i] = fmaf(a, cs[i], -(b * sn[i]));
				v[2 * i + 1] = fmaf(a, sn[i], b * cs[i]);
			}
		}
	}
}
