/* Kernel tests: every weight type and element-wise op, scalar and SIMD,
 * against plain double-precision references on random data.
 *
 * Tolerances: a dot product of N terms whose inputs are exactly representable
 * (dequantized weights x dequantized activations) must match the double
 * reference within 2e-5 * sum|w_i x_i| + 1e-6 (float accumulation error);
 * element-wise ops within 1e-5 relative (rope 2e-5, libm differences). */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "flotilla/cleanup.h"
#include "flotilla/ggml_types.h"
#include "flotilla/kernels.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd_u32(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return (uint32_t)(x >> 16);
}

/* Uniform in [-1, 1). */
static float rnd_f(void) { return (float)((double)rnd_u32() / 2147483648.0 - 1.0); }

static void fill_f(float *x, int64_t n, float scale)
{
	for (int64_t i = 0; i < n; i++)
		x[i] = rnd_f() * scale;
}

static const uint32_t k_types[] = {RT_GGML_TYPE_F32, RT_GGML_TYPE_F16, RT_GGML_TYPE_Q8_0,
				   RT_GGML_TYPE_Q4_0, RT_GGML_TYPE_Q4_K, RT_GGML_TYPE_Q6_K};

/* Weight matrix of ROWS x N of TYPE from random floats (reference quantizer),
 * or with random bytes in the quant fields when RAW (covers every bit pattern
 * of scales and quants; the fp16 scales stay small and finite). */
static void *make_weights(uint32_t type, int64_t rows, int64_t n, bool raw)
{
	size_t rb = rt_k_row_bytes(type, n);
	uint8_t *w = malloc(rb * (size_t)rows);
	assert_non_null(w);
	float *tmp = malloc((size_t)n * sizeof(float));
	assert_non_null(tmp);
	for (int64_t r = 0; r < rows; r++) {
		fill_f(tmp, n, 1.0f);
		assert_int_equal(rt_quantize_row_ref(type, tmp, w + (size_t)r * rb, n), 0);
		if (!raw || type == RT_GGML_TYPE_F32 || type == RT_GGML_TYPE_F16)
			continue;
		uint8_t *p = w + (size_t)r * rb;
		for (size_t i = 0; i < rb; i++)
			p[i] = (uint8_t)rnd_u32();
		/* fix the fp16 scales: small positive/negative finite values */
		int be = rt_k_block_elems(type);
		size_t bb = rb / (size_t)(n / be);
		for (int64_t b = 0; b < n / be; b++) {
			uint8_t *blk = p + (size_t)b * bb;
			uint16_t h1 = rt_fp32_to_fp16(rnd_f() * 0.01f);
			uint16_t h2 = rt_fp32_to_fp16(rnd_f() * 0.01f);
			switch (type) {
			case RT_GGML_TYPE_Q8_0:
				memcpy(blk, &h1, 2);
				for (int j = 0; j < 32; j++)
					if (blk[2 + j] == 0x80) /* -128 never comes from a quantizer */
						blk[2 + j] = 0x81;
				break;
			case RT_GGML_TYPE_Q4_0: memcpy(blk, &h1, 2); break;
			case RT_GGML_TYPE_Q4_K:
				memcpy(blk, &h1, 2);
				memcpy(blk + 2, &h2, 2);
				break;
			case RT_GGML_TYPE_Q6_K: memcpy(blk + 208, &h1, 2); break;
			default: break;
			}
		}
	}
	free(tmp);
	return w;
}

/* Dequantize an activation in the dot type (test-local, independent code). */
static void deq_act(uint32_t dtype, const void *xq, int64_t n, double *out)
{
	switch (dtype) {
	case RT_GGML_TYPE_F32:
		for (int64_t i = 0; i < n; i++)
			out[i] = ((const float *)xq)[i];
		break;
	case RT_GGML_TYPE_F16:
		for (int64_t i = 0; i < n; i++)
			out[i] = rt_fp16_to_fp32(((const uint16_t *)xq)[i]);
		break;
	case RT_GGML_TYPE_Q8_0: {
		const struct rt_block_q8_0 *b = xq;
		for (int64_t i = 0; i < n; i++)
			out[i] = (double)b[i / 32].qs[i % 32] * rt_fp16_to_fp32(b[i / 32].d);
		break;
	}
	case RT_GGML_TYPE_Q8_K: {
		const struct rt_block_q8_k *b = xq;
		for (int64_t i = 0; i < n; i++)
			out[i] = (double)b[i / 256].qs[i % 256] * b[i / 256].d;
		break;
	}
	default: fail();
	}
}

static const int64_t sizes_f[] = {1, 7, 33, 100, 257, 1031};
static const int64_t sizes_32[] = {32, 96, 352, 1024};
static const int64_t sizes_256[] = {256, 768, 2048};

static void sizes_for(uint32_t type, const int64_t **s, size_t *ns)
{
	if (type == RT_GGML_TYPE_F32 || type == RT_GGML_TYPE_F16) {
		*s = sizes_f;
		*ns = FL_ARRAY_SIZE(sizes_f);
	} else if (rt_k_block_elems(type) == 32) {
		*s = sizes_32;
		*ns = FL_ARRAY_SIZE(sizes_32);
	} else {
		*s = sizes_256;
		*ns = FL_ARRAY_SIZE(sizes_256);
	}
}

/* Dot product of one type and size on the current ISA vs the reference. */
static void check_dot(uint32_t type, int64_t n, bool raw)
{
	const int64_t rows = 5;
	uint8_t *w = make_weights(type, rows, n, raw);
	size_t rb = rt_k_row_bytes(type, n);
	uint32_t dt = rt_k_dot_type(type);
	float *x = malloc((size_t)n * sizeof(float));
	float *wf = malloc((size_t)n * sizeof(float));
	float *wr = malloc((size_t)n * sizeof(float));
	double *xd = malloc((size_t)n * sizeof(double));
	void *xq = malloc(rt_k_row_bytes(dt, n));
	assert_true(x && wf && wr && xd && xq);
	fill_f(x, n, 3.0f);
	rt_k_quantize_act(type, x, xq, n);
	deq_act(dt, xq, n, xd);
	for (int64_t i = 0; i < n; i++) /* the activation survives its quantization */
		assert_true(fabs(xd[i] - x[i]) <= 3.0 / 127 * 0.51 + 3.0 / 1024);
	if (dt == RT_GGML_TYPE_Q8_K) { /* block sums match the quants */
		const struct rt_block_q8_k *qb = xq;
		for (int64_t b = 0; b < n / 256; b++)
			for (int j = 0; j < 16; j++) {
				int sum = 0;
				for (int i = 0; i < 16; i++)
					sum += qb[b].qs[j * 16 + i];
				assert_int_equal(qb[b].bsums[j], sum);
			}
	}
	for (int64_t r = 0; r < rows; r++) {
		rt_k_get_row(type, w, rb, r, n, wf);
		/* independent dequantizer (gguf module) agrees bit for bit */
		assert_int_equal(rt_dequantize_row_ref(type, w + (size_t)r * rb, wr, n), 0);
		assert_memory_equal(wf, wr, (size_t)n * sizeof(float));
		double ref = 0, mag = 0;
		for (int64_t i = 0; i < n; i++) {
			ref += (double)wf[i] * xd[i];
			mag += fabs((double)wf[i] * xd[i]);
		}
		float got = rt_k_vec_dot(type, n, w + (size_t)r * rb, xq);
		double tol = 2e-5 * mag + 1e-6;
		if (fabs(got - ref) > tol)
			fail_msg("%s n=%lld isa=%s: got %.9g want %.9g (tol %.3g)",
				 rt_ggml_type_name(type), (long long)n, rt_isa_name(rt_kernels_isa()),
				 (double)got, ref, tol);
	}
	free(x);
	free(wf);
	free(wr);
	free(xd);
	free(xq);
	free(w);
}

static void run_isas(void (*fn)(void))
{
	assert_int_equal(rt_kernels_set_isa(RT_ISA_SCALAR), 0);
	fn();
	if (rt_kernels_best_isa() != RT_ISA_SCALAR) {
		assert_int_equal(rt_kernels_set_isa(rt_kernels_best_isa()), 0);
		fn();
	}
	rt_kernels_force_scalar(false);
}

static void all_dots(void)
{
	for (size_t t = 0; t < FL_ARRAY_SIZE(k_types); t++) {
		const int64_t *s;
		size_t ns;
		sizes_for(k_types[t], &s, &ns);
		for (size_t i = 0; i < ns; i++) {
			check_dot(k_types[t], s[i], false);
			check_dot(k_types[t], s[i], true);
		}
	}
}

static void test_env_forces_scalar(void **state)
{
	(void)state;
	/* first kernel call of the process: the environment decides */
	setenv("FLOTILLA_KERNELS", "scalar", 1);
	assert_int_equal(rt_kernels_isa(), RT_ISA_SCALAR);
	unsetenv("FLOTILLA_KERNELS");
	rt_kernels_force_scalar(false);
	assert_int_equal(rt_kernels_isa(), rt_kernels_best_isa());
	rt_kernels_force_scalar(true);
	assert_int_equal(rt_kernels_isa(), RT_ISA_SCALAR);
	assert_string_equal(rt_isa_name(RT_ISA_SCALAR), "scalar");
	rt_kernels_force_scalar(false);
	/* an ISA this CPU/build lacks is refused and changes nothing */
	enum rt_isa other = rt_kernels_best_isa() == RT_ISA_NEON ? RT_ISA_AVX2 : RT_ISA_NEON;
	assert_int_equal(rt_kernels_set_isa(other), -ENOTSUP);
	assert_int_equal(rt_kernels_isa(), rt_kernels_best_isa());
#if defined(__x86_64__)
	/* the run-time detection picks AVX2 where the CPU has it */
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		assert_int_equal(rt_kernels_best_isa(), RT_ISA_AVX2);
#elif defined(__aarch64__)
	assert_int_equal(rt_kernels_best_isa(), RT_ISA_NEON);
#endif
}

static void test_type_info(void **state)
{
	(void)state;
	assert_int_equal(rt_k_row_bytes(RT_GGML_TYPE_Q8_0, 64), 68);
	assert_int_equal(rt_k_row_bytes(RT_GGML_TYPE_Q4_0, 64), 36);
	assert_int_equal(rt_k_row_bytes(RT_GGML_TYPE_Q4_K, 512), 288);
	assert_int_equal(rt_k_row_bytes(RT_GGML_TYPE_Q6_K, 256), 210);
	assert_int_equal(rt_k_row_bytes(RT_GGML_TYPE_Q8_K, 256), 292);
	assert_int_equal(rt_k_row_bytes(RT_GGML_TYPE_F16, 3), 6);
	assert_int_equal(rt_k_row_bytes(RT_GGML_TYPE_Q8_0, 33), 0); /* not a block multiple */
	assert_int_equal(rt_k_row_bytes(RT_GGML_TYPE_Q5_K, 256), 0); /* unsupported */
	assert_false(rt_k_type_supported(RT_GGML_TYPE_Q2_K));
	assert_true(rt_k_type_supported(RT_GGML_TYPE_Q6_K));
	assert_int_equal(rt_k_dot_type(RT_GGML_TYPE_Q4_0), RT_GGML_TYPE_Q8_0);
	assert_int_equal(rt_k_dot_type(RT_GGML_TYPE_Q4_K), RT_GGML_TYPE_Q8_K);
	assert_int_equal(rt_k_dot_type(RT_GGML_TYPE_F16), RT_GGML_TYPE_F16);
}

static void test_dot_all_types(void **state)
{
	(void)state;
	run_isas(all_dots);
}

/* Scalar and SIMD agree closely with each other, and Q8_0 activations are
 * quantized to identical bytes on both paths. */
static void test_scalar_vs_simd(void **state)
{
	(void)state;
	if (rt_kernels_best_isa() == RT_ISA_SCALAR)
		skip();
	const int64_t n = 2048;
	float *x = malloc(n * sizeof(float));
	assert_non_null(x);
	fill_f(x, n, 5.0f);
	x[7] = 0.5f * 5.0f / 127.0f * 127.0f; /* a value near a rounding tie */
	uint8_t qa[2048 / 32 * 34], qb[2048 / 32 * 34];
	rt_kernels_force_scalar(true);
	rt_k_quantize_act(RT_GGML_TYPE_Q8_0, x, qa, n);
	rt_kernels_force_scalar(false);
	rt_k_quantize_act(RT_GGML_TYPE_Q8_0, x, qb, n);
	assert_memory_equal(qa, qb, sizeof(qa));
	uint16_t ha[2048], hb[2048];
	rt_kernels_force_scalar(true);
	rt_k_f32_to_f16(x, ha, n);
	rt_kernels_force_scalar(false);
	rt_k_f32_to_f16(x, hb, n);
	assert_memory_equal(ha, hb, sizeof(ha));
	for (size_t t = 0; t < FL_ARRAY_SIZE(k_types); t++) {
		uint32_t type = k_types[t];
		uint8_t *w = make_weights(type, 1, n, false);
		void *xq = malloc(rt_k_row_bytes(rt_k_dot_type(type), n));
		assert_non_null(xq);
		rt_k_quantize_act(type, x, xq, n);
		rt_kernels_force_scalar(true);
		float a = rt_k_vec_dot(type, n, w, xq);
		rt_kernels_force_scalar(false);
		float b = rt_k_vec_dot(type, n, w, xq);
		assert_true(fabsf(a - b) <= 1e-4f * (fabsf(a) + 1.0f));
		/* the scalar dots follow the AVX2 (llama.cpp x86) lane orders, so
		 * armhf computes llama.cpp's x86 sums: bitwise equal there */
		if (rt_kernels_best_isa() == RT_ISA_AVX2)
			assert_memory_equal(&a, &b, sizeof(a));
		free(xq);
		free(w);
	}
	free(x);
}

/* A batch of tokens through rt_k_matmul (F32: tinyBLAS's one-accumulator
 * order; quantized: the dot4 kernels): scalar == AVX2, bitwise. */
static void test_scalar_matmul_bitwise(void **state)
{
	(void)state;
	if (rt_kernels_best_isa() != RT_ISA_AVX2)
		skip();
	for (size_t t = 0; t < FL_ARRAY_SIZE(k_types); t++) {
		uint32_t type = k_types[t];
		const int64_t n = 512, rows = 7, nt = 9;
		uint8_t *w = make_weights(type, rows, n, false);
		const size_t rb = rt_k_row_bytes(type, n), xs = rt_k_row_bytes(rt_k_dot_type(type), n);
		uint8_t *xq = malloc(xs * (size_t)nt);
		float *x = malloc((size_t)n * sizeof(float));
		float *ya = calloc((size_t)(rows * nt), sizeof(float));
		float *yb = calloc((size_t)(rows * nt), sizeof(float));
		assert_true(w && xq && x && ya && yb);
		for (int64_t i = 0; i < nt; i++) {
			fill_f(x, n, 1.0f);
			rt_k_quantize_act(type, x, xq + (size_t)i * xs, n);
		}
		rt_kernels_force_scalar(true);
		rt_k_matmul(type, w, rb, n, 0, rows, xq, xs, nt, ya, rows);
		rt_kernels_force_scalar(false);
		rt_k_matmul(type, w, rb, n, 0, rows, xq, xs, nt, yb, rows);
		assert_memory_equal(ya, yb, sizeof(float) * (size_t)(rows * nt));
		free(yb);
		free(ya);
		free(x);
		free(xq);
		free(w);
	}
}

static void matmul_case(void)
{
	for (size_t t = 0; t < FL_ARRAY_SIZE(k_types); t++) {
		uint32_t type = k_types[t];
		const int64_t n = rt_k_block_elems(type) == 1 ? 75 : 512;
		const int64_t rows = 7, nt_max = 11;
		uint8_t *w = make_weights(type, rows, n, false);
		size_t rb = rt_k_row_bytes(type, n);
		size_t xs = rt_k_row_bytes(rt_k_dot_type(type), n);
		uint8_t *xq = malloc(xs * nt_max);
		float *x = malloc((size_t)n * sizeof(float));
		float *y = malloc(sizeof(float) * (size_t)(rows + 3) * nt_max);
		assert_true(xq && x && y);
		for (int64_t i = 0; i < nt_max; i++) {
			fill_f(x, n, 1.0f);
			rt_k_quantize_act(type, x, xq + (size_t)i * xs, n);
		}
		for (int64_t nt = 1; nt <= nt_max; nt += 3) {
			const int64_t ldy = rows + 3;
			for (int64_t i = 0; i < ldy * nt; i++)
				y[i] = -12345.0f;
			rt_k_matmul(type, w, rb, n, 2, rows, xq, xs, nt, y, ldy);
			for (int64_t ti = 0; ti < nt; ti++) {
				for (int64_t r = 0; r < ldy; r++) {
					float got = y[ti * ldy + r];
					if (r < 2 || r >= rows) { /* outside the row range: untouched */
						assert_true(got == -12345.0f);
						continue;
					}
					float want = rt_k_vec_dot(type, n, w + (size_t)r * rb, xq + (size_t)ti * xs);
					assert_true(fabsf(got - want) <= 1e-5f * (fabsf(want) + 1.0f));
					/* quantized types: the batched (4-token) kernels
					 * add in the single-row order, bitwise */
					if (rt_k_block_elems(type) > 1 && memcmp(&got, &want, sizeof(got)) != 0)
						fail_msg("type %u nt %d token %d row %d: %.9g vs %.9g", type,
							 (int)nt, (int)ti, (int)r, (double)got, (double)want);
				}
			}
		}
		free(xq);
		free(x);
		free(y);
		free(w);
	}
}

static void test_matmul(void **state)
{
	(void)state;
	run_isas(matmul_case);
}

static void elementwise_case(void)
{
	const int64_t n = 131;
	float x[131], w[131], y[131], g[131], u[131];
	fill_f(x, n, 2.0f);
	fill_f(w, n, 1.0f);
	/* rmsnorm */
	double ss = 0;
	for (int i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	double sc = 1.0 / sqrt(ss / n + 1e-5);
	rt_k_rmsnorm(y, x, w, n, 1e-5f);
	for (int i = 0; i < n; i++)
		assert_true(fabs(y[i] - x[i] * sc * w[i]) <= 1e-5 * (fabs(x[i] * sc * w[i]) + 1e-3));
	rt_k_rmsnorm(y, x, NULL, n, 1e-5f);
	for (int i = 0; i < n; i++)
		assert_true(fabs(y[i] - x[i] * sc) <= 1e-5 * (fabs(x[i] * sc) + 1e-3));
	/* softmax with scale */
	memcpy(y, x, sizeof(x));
	rt_k_softmax(y, n, 0.7f);
	double mx = -1e30, sum = 0, tot = 0;
	for (int i = 0; i < n; i++)
		mx = fmax(mx, 0.7 * x[i]);
	for (int i = 0; i < n; i++)
		sum += exp(0.7 * x[i] - mx);
	for (int i = 0; i < n; i++) {
		double want = exp(0.7 * x[i] - mx) / sum;
		assert_true(fabs(y[i] - want) <= 1e-5 * want + 1e-9);
		tot += y[i];
	}
	assert_true(fabs(tot - 1.0) < 1e-5);
	/* swiglu / silu */
	fill_f(g, n, 6.0f);
	fill_f(u, n, 2.0f);
	rt_k_swiglu(y, g, u, n);
	for (int i = 0; i < n; i++) {
		double want = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
		assert_true(fabs(y[i] - want) <= 1e-5 * fabs(want) + 1e-7);
	}
	memcpy(y, g, sizeof(g));
	rt_k_silu(y, n);
	for (int i = 0; i < n; i++) {
		double want = g[i] / (1.0 + exp(-(double)g[i]));
		assert_true(fabs(y[i] - want) <= 1e-5 * fabs(want) + 1e-7);
	}
	/* add, mul, scale */
	rt_k_add(y, x, w, n);
	for (int i = 0; i < n; i++)
		assert_true(y[i] == x[i] + w[i]);
	rt_k_mul(y, x, w, n);
	for (int i = 0; i < n; i++)
		assert_true(y[i] == x[i] * w[i]);
	memcpy(y, x, sizeof(x));
	rt_k_scale(y, 0.25f, n);
	for (int i = 0; i < n; i++)
		assert_true(y[i] == x[i] * 0.25f);
	/* axpy F32 and F16, f16 round trip */
	uint16_t h[131];
	rt_k_f32_to_f16(w, h, n);
	float back[131];
	rt_k_f16_to_f32(h, back, n);
	for (int i = 0; i < n; i++) {
		assert_true(back[i] == rt_fp16_to_fp32(rt_fp32_to_fp16(w[i])));
		assert_true(fabsf(back[i] - w[i]) <= fabsf(w[i]) / 1024.0f + 1e-7f);
	}
	memcpy(y, x, sizeof(x));
	rt_k_axpy(RT_GGML_TYPE_F32, n, 0.3f, w, y);
	for (int i = 0; i < n; i++)
		assert_true(fabs(y[i] - (x[i] + 0.3 * w[i])) <= 1e-6);
	memcpy(y, x, sizeof(x));
	rt_k_axpy(RT_GGML_TYPE_F16, n, -1.5f, h, y);
	for (int i = 0; i < n; i++)
		assert_true(fabs(y[i] - (x[i] - 1.5 * back[i])) <= 1e-6);
}

static void test_elementwise(void **state)
{
	(void)state;
	run_isas(elementwise_case);
}

static void rope_ref(double *v, int head_dim, int n_rot, int64_t pos, enum rt_rope_mode mode,
		     double base, double fs, const float *ff)
{
	for (int i = 0; i < n_rot / 2; i++) {
		double th = (double)pos * pow(base, -2.0 * i / n_rot) * fs / (ff ? ff[i] : 1.0);
		int a = mode == RT_ROPE_NEOX ? i : 2 * i;
		int b = mode == RT_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
		double x0 = v[a], x1 = v[b];
		v[a] = x0 * cos(th) - x1 * sin(th);
		v[b] = x0 * sin(th) + x1 * cos(th);
	}
	(void)head_dim;
}

/* The llama.cpp-order kernels: ggml's polynomial exp, the AVX2 swiglu and
 * the ggml-order dot products against their scalar emulations (bitwise),
 * and against double references. */
static void test_ggml_order(void **state)
{
	(void)state;
	/* exp: close to libm over the softmax range, exact edge cases */
	for (int i = -4000; i <= 800; i++) {
		float x = (float)i * 0.02f;
		double want = exp((double)x);
		float got = rt_k_expf_ggml(x);
		if (fabs(got - want) > 3e-7 * want + 1e-38)
			fail_msg("expf_ggml(%g) = %.9g want %.9g", (double)x, (double)got, want);
	}
	assert_true(rt_k_expf_ggml(-INFINITY) == 0.0f);
	assert_true(rt_k_expf_ggml(0.0f) == 1.0f);
	assert_true(rt_k_expf_ggml(-200.0f) == 0.0f);
	assert_true(isinf(rt_k_expf_ggml(100.0f)));
	/* a known lane-order value: (1e8 + 1) - 1e8 summed by lanes */
	{
		float x[40], y[40];
		for (int i = 0; i < 40; i++) {
			x[i] = 0.0f;
			y[i] = 1.0f;
		}
		x[0] = 1e8f;  /* acc0 lane 0 */
		x[16] = 1.0f; /* acc2 lane 0: (acc0 + acc2) rounds the 1 away */
		x[32] = -1e8f; /* leftover */
		assert_true(rt_k_dot_f32_ggml(40, x, y) == 0.0f);
		x[16] = 0.0f;
		x[4] = 1.0f; /* acc0 lane 4: also lost */
		assert_true(rt_k_dot_f32_ggml(40, x, y) == 0.0f);
	}
	enum { N = 2048 + 40 };
	float a[N], b[N], c[N], o1[N], o2[N];
	fill_f(a, N, 8.0f);
	fill_f(b, N, 2.0f);
	fill_f(c, N, 1.0f);
	/* swiglu: SIMD == scalar, bitwise, and close to the libm formula */
	rt_k_swiglu(o1, a, b, N);
	rt_kernels_force_scalar(true);
	rt_k_swiglu(o2, a, b, N);
	rt_kernels_force_scalar(false);
	assert_memory_equal(o1, o2, sizeof(o1));
	for (int i = 0; i < N; i++) {
		double want = a[i] / (1.0 + exp(-(double)a[i])) * b[i];
		assert_true(fabs(o1[i] - want) <= 1e-5 * fabs(want) + 1e-7);
	}
	/* softmax: SIMD == scalar, bitwise, for full and partial chunks */
	for (int n = 1; n <= 70; n += 23) {
		memcpy(o1, a, sizeof(float) * (size_t)n);
		memcpy(o2, a, sizeof(float) * (size_t)n);
		rt_k_softmax(o1, n, 0.3f);
		rt_kernels_force_scalar(true);
		rt_k_softmax(o2, n, 0.3f);
		rt_kernels_force_scalar(false);
		assert_memory_equal(o1, o2, sizeof(float) * (size_t)n);
	}
	/* the SIMD emulations of ggml's F32 order (AVX2, NEON) == the scalar
	 * one, bitwise */
	for (int n = 8; n <= 2048 + 40; n += 333) {
		float s1 = rt_k_dot_f32_ggml(n, a, b);
		rt_kernels_force_scalar(true);
		float s2 = rt_k_dot_f32_ggml(n, a, b);
		rt_kernels_force_scalar(false);
		assert_memory_equal(&s1, &s2, sizeof(s1));
	}
	/* F32 single-token matmul == rt_k_dot_f32_ggml, bitwise */
	for (int n = 8; n <= 2048 + 40; n += 520) {
		float y[3];
		float w[3 * (2048 + 40)];
		fill_f(w, 3 * n, 1.0f);
		rt_k_matmul(RT_GGML_TYPE_F32, w, (size_t)n * sizeof(float), n, 0, 3, a, 0, 1, y, 3);
		for (int r = 0; r < 3; r++) {
			float want = rt_k_dot_f32_ggml(n, w + r * n, a);
			if (memcmp(&y[r], &want, sizeof(want)) != 0)
				fail_msg("n %d row %d: %.9g vs %.9g", n, r, (double)y[r], (double)want);
			double ref = 0, mag = 0;
			for (int i = 0; i < n; i++) {
				ref += (double)w[r * n + i] * a[i];
				mag += fabs((double)w[r * n + i] * a[i]);
			}
			assert_true(fabs(y[r] - ref) <= 2e-6 * mag + 1e-6);
		}
	}
	/* attention value sums, both orders, against double */
	for (int n = 1; n <= 300; n += 37) {
		enum { HD = 24, ST = 40 };
		static float v[300 * ST];
		float p[300], out1[HD], out2[HD];
		fill_f(v, 300 * ST, 1.0f);
		for (int i = 0; i < n; i++)
			p[i] = fabsf(rnd_f());
		rt_k_attn_pv_ggml(p, n, v, ST, HD, false, out1);
		rt_k_attn_pv_ggml(p, n, v, ST, HD, true, out2);
		for (int d = 0; d < HD; d++) {
			double ref = 0, mag = 0;
			for (int i = 0; i < n; i++) {
				ref += (double)p[i] * v[i * ST + d];
				mag += fabs((double)p[i] * v[i * ST + d]);
			}
			assert_true(fabs(out1[d] - ref) <= 2e-6 * mag + 1e-7);
			assert_true(fabs(out2[d] - ref) <= 2e-6 * mag + 1e-7);
		}
		/* up to 8 terms both orders add each term to its own lane: equal */
		if (n <= 8)
			assert_memory_equal(out1, out2, sizeof(out1));
	}
}

/* rt_k_attn_pv (the engine's vectorized attention value sum, F32 and F16
 * caches) against the scalar ggml-order reference rt_k_attn_pv_ggml:
 * bitwise where axpy is an FMA (AVX2, NEON), close otherwise; and the F16
 * score dots in both llama.cpp orders against double. */
static void attn_pv_case(void)
{
	enum { HD = 64, NMAX = 300, ST = 72 };
	static float v[NMAX * ST], acc[RT_K_ATTN_PV_SLOTS * HD];
	static uint16_t vh[NMAX * ST];
	static float vhf[NMAX * ST];
	float p[NMAX], ph[NMAX], out1[HD], out2[HD];
	const bool fma_axpy = rt_kernels_isa() != RT_ISA_SCALAR;
	fill_f(v, NMAX * ST, 1.0f);
	rt_k_f32_to_f16(v, vh, NMAX * ST);
	for (int i = 0; i < NMAX * ST; i++)
		vhf[i] = rt_fp16_to_fp32(vh[i]);
	for (int n = 1; n <= NMAX; n += 29) {
		for (int i = 0; i < n; i++) {
			p[i] = fabsf(rnd_f());
			ph[i] = rt_fp16_to_fp32(rt_fp32_to_fp16(p[i]));
		}
		for (int batched = 0; batched < 2; batched++) {
			/* F32 cache */
			rt_k_attn_pv_ggml(p, n, v, ST, HD, batched, out1);
			memset(out2, 0x7f, sizeof(out2));
			rt_k_attn_pv(RT_GGML_TYPE_F32, p, n, v, ST * sizeof(float), HD, batched, acc, out2);
			for (int d = 0; d < HD; d++) {
				if (fma_axpy && memcmp(&out1[d], &out2[d], sizeof(float)) != 0)
					fail_msg("f32 n %d batched %d d %d: %.9g vs %.9g", n, batched, d,
						 (double)out1[d], (double)out2[d]);
				assert_true(fabsf(out1[d] - out2[d]) <= 1e-5f * (1.0f + fabsf(out1[d])));
			}
			/* F16 cache: probabilities rounded to F16 */
			rt_k_attn_pv_ggml(ph, n, vhf, ST, HD, batched, out1);
			rt_k_attn_pv(RT_GGML_TYPE_F16, p, n, vh, ST * sizeof(uint16_t), HD, batched, acc, out2);
			for (int d = 0; d < HD; d++) {
				if (fma_axpy && memcmp(&out1[d], &out2[d], sizeof(float)) != 0)
					fail_msg("f16 n %d batched %d d %d: %.9g vs %.9g", n, batched, d,
						 (double)out1[d], (double)out2[d]);
				assert_true(fabsf(out1[d] - out2[d]) <= 1e-5f * (1.0f + fabsf(out1[d])));
			}
		}
	}
	/* F16 dots: both orders close to double; the same lane order as
	 * rt_k_dot_f32_ggml on the converted values where SIMD */
	for (int n = 8; n <= 2048; n += 248) {
		double ref = 0, mag = 0;
		for (int i = 0; i < n; i++) {
			ref += (double)vhf[i] * vhf[ST + i];
			mag += fabs((double)vhf[i] * vhf[ST + i]);
		}
		for (int batched = 0; batched < 2; batched++) {
			float got = rt_k_dot_f16_ggml(n, vh, vh + ST, batched);
			assert_true(fabs(got - ref) <= 2e-6 * mag + 1e-6);
		}
		if (fma_axpy && rt_kernels_isa() == RT_ISA_AVX2) {
			float a = rt_k_dot_f16_ggml(n, vh, vh + ST, false);
			float b = rt_k_dot_f32_ggml(n, vhf, vhf + ST);
			if (n % 32 == 0)
				assert_memory_equal(&a, &b, sizeof(a));
		}
	}
}

static void test_attn_pv(void **state)
{
	(void)state;
	run_isas(attn_pv_case);
}

/* Q4_K in llama.cpp's repacked orders (RT_K_GGML_REPACK): the first
 * nt - nt % 4 tokens of a batch in the gemm order (one FMA per 64 values,
 * mins apart), the rest and single tokens in the gemv order (one FMA per
 * block); both against an independent per-64 implementation here and
 * against double. */
static float q4k_gemm_ref(int64_t n, const struct rt_block_q4_k *w, const struct rt_block_q8_k *x)
{
	float acc = 0, accm = 0;
	for (int64_t b = 0; b < n / 256; b++) {
		uint8_t sc[8], mn[8];
		const uint8_t *s = w[b].scales;
		for (int j = 0; j < 8; j++) {
			sc[j] = j < 4 ? (s[j] & 63) : (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
			mn[j] = j < 4 ? (s[j + 4] & 63) : (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
		}
		for (int p = 0; p < 4; p++) {
			int32_t si = 0, sm = 0;
			for (int h = 0; h < 2; h++) {
				int j = 2 * p + h;
				int32_t sum = 0, xs = 0;
				for (int l = 0; l < 32; l++) {
					uint8_t byte = w[b].qs[32 * p + l];
					int q = h ? byte >> 4 : byte & 0xF;
					sum += q * x[b].qs[32 * j + l];
					xs += x[b].qs[32 * j + l];
				}
				si += sc[j] * sum;
				sm += mn[j] * xs;
			}
			acc = fmaf((float)si, rt_fp16_to_fp32(w[b].d) * x[b].d, acc);
			accm = fmaf((float)sm, rt_fp16_to_fp32(w[b].dmin) * x[b].d, accm);
		}
	}
	return acc - accm;
}

static void test_repack_order(void **state)
{
	(void)state;
	enum { N = 512, ROWS = 8, NT = 6 };
	const uint32_t wt = RT_GGML_TYPE_Q4_K | RT_K_GGML_REPACK;
	uint8_t *w = make_weights(RT_GGML_TYPE_Q4_K, ROWS, N, false);
	const size_t rb = rt_k_row_bytes(RT_GGML_TYPE_Q4_K, N);
	const size_t xs = rt_k_row_bytes(RT_GGML_TYPE_Q8_K, N);
	assert_int_equal(rt_k_dot_type(wt), RT_GGML_TYPE_Q8_K);
	static uint8_t xq[NT * 2048];
	float x[N], y[NT * ROWS];
	for (int t = 0; t < NT; t++) {
		fill_f(x, N, 1.0f);
		rt_k_quantize_act(wt, x, xq + (size_t)t * xs, N);
	}
	rt_k_matmul(wt, w, rb, N, 0, ROWS, xq, xs, NT, y, ROWS);
	for (int t = 0; t < NT; t++) {
		const void *xt = xq + (size_t)t * xs;
		for (int r = 0; r < ROWS; r++) {
			const void *wr = w + (size_t)r * rb;
			float want = t < NT - NT % 4 ? q4k_gemm_ref(N, wr, xt) : rt_k_vec_dot(wt, N, wr, xt);
			if (memcmp(&want, &y[t * ROWS + r], sizeof(float)) != 0)
				fail_msg("token %d row %d: %.9g vs %.9g", t, r, (double)y[t * ROWS + r],
					 (double)want);
			double a[N], b[N], ref = 0, mag = 0;
			float wf[N];
			assert_int_equal(rt_dequantize_row_ref(RT_GGML_TYPE_Q4_K, wr, wf, N), 0);
			deq_act(RT_GGML_TYPE_Q8_K, xt, N, b);
			for (int i = 0; i < N; i++) {
				a[i] = wf[i];
				ref += a[i] * b[i];
				mag += fabs(a[i] * b[i]);
			}
			assert_true(fabs(want - ref) <= 2e-5 * mag + 1e-6);
		}
	}
	/* a single token (decode) is the gemv order */
	rt_k_matmul(wt, w, rb, N, 0, ROWS, xq, xs, 1, y, ROWS);
	for (int r = 0; r < ROWS; r++) {
		float want = rt_k_vec_dot(wt, N, w + (size_t)r * rb, xq);
		assert_memory_equal(&want, &y[r], sizeof(float));
	}
	free(w);
}

static void test_rope(void **state)
{
	(void)state;
	const int heads = 3, hd = 16;
	float ff[8];
	for (int i = 0; i < 8; i++)
		ff[i] = 1.0f + (float)i * 0.5f;
	for (int mode = 0; mode < 2; mode++) {
		for (int variant = 0; variant < 3; variant++) {
			enum rt_rope_mode m = mode ? RT_ROPE_NEOX : RT_ROPE_NORM;
			int n_rot = variant == 2 ? 8 : hd; /* partial rotation */
			const float *f = variant == 1 ? ff : NULL;
			float fs = variant == 2 ? 0.5f : 1.0f;
			for (int64_t pos = 0; pos < 40; pos += 13) {
				float x[48];
				double r[48];
				fill_f(x, 48, 1.0f);
				for (int i = 0; i < 48; i++)
					r[i] = x[i];
				rt_k_rope(x, heads, hd, n_rot, pos, m, 10000.0f, fs, f);
				for (int h = 0; h < heads; h++)
					rope_ref(r + h * hd, hd, n_rot, pos, m, 10000.0, fs, f);
				for (int i = 0; i < 48; i++)
					assert_true(fabs(x[i] - r[i]) <= 2e-5 * (1 + fabs(r[i])));
			}
		}
	}
	/* position 0 is the identity */
	float x[16], y[16];
	fill_f(x, 16, 1.0f);
	memcpy(y, x, sizeof(x));
	rt_k_rope(y, 1, 16, 16, 0, RT_ROPE_NORM, 10000.0f, 1.0f, NULL);
	assert_memory_equal(x, y, sizeof(x));
}

/* Decode (one token) runs Q4_K rows 4 per call (dotr4_q4_k on AVX2): every
 * row's result must be bitwise the single-row dot's, for row ranges of every
 * length and offset mod 4, several n, quantizer and raw (all bit patterns of
 * scales and quants) weights. */
static void multirow_q4k_case(void)
{
	static const int64_t ns[] = {256, 512, 768, 2816};
	for (size_t in = 0; in < FL_ARRAY_SIZE(ns); in++) {
		const int64_t n = ns[in];
		for (int raw = 0; raw < 2; raw++) {
			enum { ROWS = 19, NT = 3 };
			uint8_t *w = make_weights(RT_GGML_TYPE_Q4_K, ROWS, n, raw);
			const size_t rb = rt_k_row_bytes(RT_GGML_TYPE_Q4_K, n);
			const size_t xs = rt_k_row_bytes(RT_GGML_TYPE_Q8_K, n);
			uint8_t *xq = malloc(xs * NT);
			float *x = malloc((size_t)n * sizeof(float));
			float y[NT * ROWS];
			assert_non_null(xq);
			assert_non_null(x);
			for (int t = 0; t < NT; t++) {
				fill_f(x, n, t == 2 ? 100.0f : 1.0f);
				rt_k_quantize_act(RT_GGML_TYPE_Q4_K, x, xq + (size_t)t * xs, n);
			}
			for (int r0 = 0; r0 < 4; r0++)
				for (int r1 = r0; r1 <= ROWS; r1 += 1 + (r1 > 9)) {
					for (int nt = 1; nt <= NT; nt += NT - 1) {
						for (size_t i = 0; i < FL_ARRAY_SIZE(y); i++)
							y[i] = -7.0f;
						rt_k_matmul(RT_GGML_TYPE_Q4_K, w, rb, n, r0, r1, xq, xs, nt, y, ROWS);
						for (int t = 0; t < nt; t++)
							for (int r = 0; r < ROWS; r++) {
								float want = r >= r0 && r < r1
										     ? rt_k_vec_dot(RT_GGML_TYPE_Q4_K, n,
												    w + (size_t)r * rb,
												    xq + (size_t)t * xs)
										     : -7.0f;
								if (memcmp(&want, &y[t * ROWS + r], sizeof(float)) != 0)
									fail_msg("n %lld raw %d rows [%d, %d) token %d row %d: %a vs %a",
										 (long long)n, raw, r0, r1, t, r,
										 (double)y[t * ROWS + r], (double)want);
							}
					}
				}
			free(x);
			free(xq);
			free(w);
		}
	}
}

static void test_multirow_q4k(void **state)
{
	(void)state;
	run_isas(multirow_q4k_case);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_env_forces_scalar), /* must run first */
		cmocka_unit_test(test_type_info),
		cmocka_unit_test(test_dot_all_types),
		cmocka_unit_test(test_scalar_vs_simd),
		cmocka_unit_test(test_scalar_matmul_bitwise),
		cmocka_unit_test(test_matmul),
		cmocka_unit_test(test_elementwise),
		cmocka_unit_test(test_rope),
		cmocka_unit_test(test_ggml_order),
		cmocka_unit_test(test_attn_pv),
		cmocka_unit_test(test_repack_order),
		cmocka_unit_test(test_multirow_q4k),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
