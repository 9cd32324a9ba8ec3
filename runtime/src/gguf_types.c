/* ggml type table and reference (de)quantizers. See ggml_types.h.
 *
 * The quantizers follow ggml's quantize_row_*_ref (ggml-quants.c) step by
 * step, including its nearest_int() rounding (half to even through the
 * 1.5 * 2^23 trick), so files written here hold the same bytes llama.cpp's
 * reference path would produce for the same floats. */
#include "flotilla/ggml_types.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "flotilla/cleanup.h"
#include "flotilla/error.h"

struct type_info {
	const char *name;
	uint32_t block_elems;
	uint32_t block_bytes;
};

static const struct type_info types[RT_GGML_TYPE_COUNT] = {
	[RT_GGML_TYPE_F32] = {"f32", 1, 4},
	[RT_GGML_TYPE_F16] = {"f16", 1, 2},
	[RT_GGML_TYPE_Q4_0] = {"q4_0", 32, 18},
	[RT_GGML_TYPE_Q4_1] = {"q4_1", 32, 20},
	[RT_GGML_TYPE_Q5_0] = {"q5_0", 32, 22},
	[RT_GGML_TYPE_Q5_1] = {"q5_1", 32, 24},
	[RT_GGML_TYPE_Q8_0] = {"q8_0", 32, 34},
	[RT_GGML_TYPE_Q8_1] = {"q8_1", 32, 36},
	[RT_GGML_TYPE_Q2_K] = {"q2_K", 256, 84},
	[RT_GGML_TYPE_Q3_K] = {"q3_K", 256, 110},
	[RT_GGML_TYPE_Q4_K] = {"q4_K", 256, 144},
	[RT_GGML_TYPE_Q5_K] = {"q5_K", 256, 176},
	[RT_GGML_TYPE_Q6_K] = {"q6_K", 256, 210},
	[RT_GGML_TYPE_Q8_K] = {"q8_K", 256, 292},
	[RT_GGML_TYPE_IQ2_XXS] = {"iq2_xxs", 256, 66},
	[RT_GGML_TYPE_IQ2_XS] = {"iq2_xs", 256, 74},
	[RT_GGML_TYPE_IQ3_XXS] = {"iq3_xxs", 256, 98},
	[RT_GGML_TYPE_IQ1_S] = {"iq1_s", 256, 50},
	[RT_GGML_TYPE_IQ4_NL] = {"iq4_nl", 32, 18},
	[RT_GGML_TYPE_IQ3_S] = {"iq3_s", 256, 110},
	[RT_GGML_TYPE_IQ2_S] = {"iq2_s", 256, 82},
	[RT_GGML_TYPE_IQ4_XS] = {"iq4_xs", 256, 136},
	[RT_GGML_TYPE_I8] = {"i8", 1, 1},
	[RT_GGML_TYPE_I16] = {"i16", 1, 2},
	[RT_GGML_TYPE_I32] = {"i32", 1, 4},
	[RT_GGML_TYPE_I64] = {"i64", 1, 8},
	[RT_GGML_TYPE_F64] = {"f64", 1, 8},
	[RT_GGML_TYPE_IQ1_M] = {"iq1_m", 256, 56},
	[RT_GGML_TYPE_BF16] = {"bf16", 1, 2},
	[RT_GGML_TYPE_TQ1_0] = {"tq1_0", 256, 54},
	[RT_GGML_TYPE_TQ2_0] = {"tq2_0", 256, 66},
	[RT_GGML_TYPE_MXFP4] = {"mxfp4", 32, 17},
	[RT_GGML_TYPE_NVFP4] = {"nvfp4", 64, 36},
	[RT_GGML_TYPE_Q1_0] = {"q1_0", 128, 18},
	[RT_GGML_TYPE_Q2_0] = {"q2_0", 64, 18},
};

const char *rt_ggml_type_name(uint32_t type)
{
	if (type < RT_GGML_TYPE_COUNT && types[type].name)
		return types[type].name;
	return "unknown";
}

int rt_ggml_type_geometry(uint32_t type, uint32_t *ret_block_elems, uint32_t *ret_block_bytes)
{
	if (type >= RT_GGML_TYPE_COUNT || !types[type].name)
		return -FL_EUNSUPPORTED;
	if (ret_block_elems)
		*ret_block_elems = types[type].block_elems;
	if (ret_block_bytes)
		*ret_block_bytes = types[type].block_bytes;
	return 0;
}

int rt_ggml_row_bytes(uint32_t type, uint64_t n_elems, uint64_t *ret_bytes)
{
	uint32_t be, bb;
	int r = rt_ggml_type_geometry(type, &be, &bb);
	if (r < 0)
		return r;
	if (n_elems % be)
		return -FL_EFORMAT;
	uint64_t bytes;
	if (__builtin_mul_overflow(n_elems / be, (uint64_t)bb, &bytes))
		return -ERANGE;
	*ret_bytes = bytes;
	return 0;
}

bool rt_ggml_type_can_dequantize(uint32_t type)
{
	switch (type) {
	case RT_GGML_TYPE_F32: case RT_GGML_TYPE_F16: case RT_GGML_TYPE_BF16:
	case RT_GGML_TYPE_Q4_0: case RT_GGML_TYPE_Q8_0: case RT_GGML_TYPE_Q4_K:
	case RT_GGML_TYPE_Q6_K:
		return true;
	default:
		return false;
	}
}

bool rt_ggml_type_can_quantize(uint32_t type) { return rt_ggml_type_can_dequantize(type); }

/* ggml's nearest_int: round half to even for |fval| <= 4194303. */
static inline int nearest_int(float fval)
{
	float val = fval + 12582912.f;
	int i;
	memcpy(&i, &val, sizeof(int));
	return (i & 0x007fffff) - 0x00400000;
}

#define GROUP_MAX_EPS 1e-15f
#define MAXI(a, b) ((a) > (b) ? (a) : (b))
#define MINI(a, b) ((a) < (b) ? (a) : (b))

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* ---- Q4_0 ---- */

static void quantize_q4_0(const float *x, uint8_t *out, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, x += RT_QK4_0, out += sizeof(struct rt_block_q4_0)) {
		struct rt_block_q4_0 b;
		float amax = 0.0f, max = 0.0f;
		for (int j = 0; j < RT_QK4_0; j++) {
			if (amax < fabsf(x[j])) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		}
		const float d = max / -8;
		const float id = d ? 1.0f / d : 0.0f;
		b.d = rt_fp32_to_fp16(d);
		for (int j = 0; j < RT_QK4_0 / 2; j++) {
			const float x0 = x[j] * id;
			const float x1 = x[RT_QK4_0 / 2 + j] * id;
			const uint8_t xi0 = (uint8_t)MINI(15, (int8_t)(x0 + 8.5f));
			const uint8_t xi1 = (uint8_t)MINI(15, (int8_t)(x1 + 8.5f));
			b.qs[j] = (uint8_t)(xi0 | (xi1 << 4));
		}
		memcpy(out, &b, sizeof(b));
	}
}

static void dequantize_q4_0(const uint8_t *in, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, in += sizeof(struct rt_block_q4_0), y += RT_QK4_0) {
		const float d = rt_fp16_to_fp32(rd16(in));
		const uint8_t *qs = in + 2;
		for (int j = 0; j < RT_QK4_0 / 2; j++) {
			y[j] = (float)((qs[j] & 0x0f) - 8) * d;
			y[j + RT_QK4_0 / 2] = (float)((qs[j] >> 4) - 8) * d;
		}
	}
}

/* ---- Q8_0 ---- */

static void quantize_q8_0(const float *x, uint8_t *out, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, x += RT_QK8_0, out += sizeof(struct rt_block_q8_0)) {
		struct rt_block_q8_0 b;
		float amax = 0.0f;
		for (int j = 0; j < RT_QK8_0; j++)
			amax = fmaxf(amax, fabsf(x[j]));
		const float d = amax / ((1 << 7) - 1);
		const float id = d ? 1.0f / d : 0.0f;
		b.d = rt_fp32_to_fp16(d);
		for (int j = 0; j < RT_QK8_0; j++)
			b.qs[j] = (int8_t)roundf(x[j] * id);
		memcpy(out, &b, sizeof(b));
	}
}

static void dequantize_q8_0(const uint8_t *in, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, in += sizeof(struct rt_block_q8_0), y += RT_QK8_0) {
		const float d = rt_fp16_to_fp32(rd16(in));
		const int8_t *qs = (const int8_t *)(in + 2);
		for (int j = 0; j < RT_QK8_0; j++)
			y[j] = (float)qs[j] * d;
	}
}

/* ---- K quants helpers (ggml-quants.c) ---- */

static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
			      float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
			      bool use_mad)
{
	float min = x[0];
	float max = x[0];
	float sum_w = weights[0];
	float sum_x = sum_w * x[0];
	for (int i = 1; i < n; ++i) {
		if (x[i] < min)
			min = x[i];
		if (x[i] > max)
			max = x[i];
		float w = weights[i];
		sum_w += w;
		sum_x += w * x[i];
	}
	if (min > 0)
		min = 0;
	if (max == min) {
		for (int i = 0; i < n; ++i)
			L[i] = 0;
		*the_min = -min;
		return 0.f;
	}
	float iscale = (float)nmax / (max - min);
	float scale = 1 / iscale;
	float best_error = 0;
	for (int i = 0; i < n; ++i) {
		int l = nearest_int(iscale * (x[i] - min));
		L[i] = (uint8_t)MAXI(0, MINI(nmax, l));
		float diff = scale * L[i] + min - x[i];
		diff = use_mad ? fabsf(diff) : diff * diff;
		best_error += weights[i] * diff;
	}
	if (nstep < 1) {
		*the_min = -min;
		return scale;
	}
	for (int is = 0; is <= nstep; ++is) {
		iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
		float sum_l = 0, sum_l2 = 0, sum_xl = 0;
		for (int i = 0; i < n; ++i) {
			int l = nearest_int(iscale * (x[i] - min));
			l = MAXI(0, MINI(nmax, l));
			Laux[i] = (uint8_t)l;
			float w = weights[i];
			sum_l += w * (float)l;
			sum_l2 += w * (float)l * (float)l;
			sum_xl += w * (float)l * x[i];
		}
		float D = sum_w * sum_l2 - sum_l * sum_l;
		if (D > 0) {
			float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
			float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
			if (this_min > 0) {
				this_min = 0;
				this_scale = sum_xl / sum_l2;
			}
			float cur_error = 0;
			for (int i = 0; i < n; ++i) {
				float diff = this_scale * Laux[i] + this_min - x[i];
				diff = use_mad ? fabsf(diff) : diff * diff;
				cur_error += weights[i] * diff;
			}
			if (cur_error < best_error) {
				for (int i = 0; i < n; ++i)
					L[i] = Laux[i];
				best_error = cur_error;
				scale = this_scale;
				min = this_min;
			}
		}
	}
	*the_min = -min;
	return scale;
}

static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type)
{
	float max = 0;
	float amax = 0;
	for (int i = 0; i < n; ++i) {
		float ax = fabsf(x[i]);
		if (ax > amax) {
			amax = ax;
			max = x[i];
		}
	}
	if (amax < GROUP_MAX_EPS) {
		for (int i = 0; i < n; ++i)
			L[i] = 0;
		return 0.f;
	}
	float iscale = -(float)nmax / max;
	/* q6_K uses rmse_type 1 only: weights x^2. */
	float sumlx = 0;
	float suml2 = 0;
	for (int i = 0; i < n; ++i) {
		int l = nearest_int(iscale * x[i]);
		l = MAXI(-nmax, MINI(nmax - 1, l));
		L[i] = (int8_t)(l + nmax);
		float w = rmse_type == 1 ? x[i] * x[i] : 1.0f;
		sumlx += w * x[i] * (float)l;
		suml2 += w * (float)l * (float)l;
	}
	float scale = suml2 ? sumlx / suml2 : 0.0f;
	float best = scale * sumlx;
	for (int is = -9; is <= 9; ++is) {
		if (is == 0)
			continue;
		iscale = -((float)nmax + 0.1f * (float)is) / max;
		sumlx = suml2 = 0;
		for (int i = 0; i < n; ++i) {
			int l = nearest_int(iscale * x[i]);
			l = MAXI(-nmax, MINI(nmax - 1, l));
			float w = rmse_type == 1 ? x[i] * x[i] : 1.0f;
			sumlx += w * x[i] * (float)l;
			suml2 += w * (float)l * (float)l;
		}
		if (suml2 > 0 && sumlx * sumlx > best * suml2) {
			for (int i = 0; i < n; ++i) {
				int l = nearest_int(iscale * x[i]);
				L[i] = (int8_t)(nmax + MAXI(-nmax, MINI(nmax - 1, l)));
			}
			scale = sumlx / suml2;
			best = scale * sumlx;
		}
	}
	return scale;
}

static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
	if (j < 4) {
		*d = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
		*m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
	}
}

/* ---- Q4_K ---- */

static void quantize_q4_k(const float *x, uint8_t *out, int64_t nb)
{
	uint8_t L[RT_QK_K];
	uint8_t Laux[32];
	float weights[32];
	float mins[RT_QK_K / 32];
	float scales[RT_QK_K / 32];

	for (int64_t i = 0; i < nb; i++, x += RT_QK_K, out += sizeof(struct rt_block_q4_k)) {
		struct rt_block_q4_k b;
		memset(&b, 0, sizeof(b));
		float max_scale = 0;
		float max_min = 0;
		for (int j = 0; j < RT_QK_K / 32; ++j) {
			float sum_x2 = 0;
			for (int l = 0; l < 32; ++l)
				sum_x2 += x[32 * j + l] * x[32 * j + l];
			float av_x = sqrtf(sum_x2 / 32);
			for (int l = 0; l < 32; ++l)
				weights[l] = av_x + fabsf(x[32 * j + l]);
			scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j],
						     Laux, -1.f, 0.1f, 20, false);
			if (scales[j] > max_scale)
				max_scale = scales[j];
			if (mins[j] > max_min)
				max_min = mins[j];
		}
		float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
		float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
		for (int j = 0; j < RT_QK_K / 32; ++j) {
			uint8_t ls = (uint8_t)MINI(63, nearest_int(inv_scale * scales[j]));
			uint8_t lm = (uint8_t)MINI(63, nearest_int(inv_min * mins[j]));
			if (j < 4) {
				b.scales[j] = ls;
				b.scales[j + 4] = lm;
			} else {
				b.scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
				b.scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
				b.scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
			}
		}
		b.d = rt_fp32_to_fp16(max_scale / 63.f);
		b.dmin = rt_fp32_to_fp16(max_min / 63.f);
		for (int j = 0; j < RT_QK_K / 32; ++j) {
			uint8_t sc, m;
			get_scale_min_k4(j, b.scales, &sc, &m);
			const float d = rt_fp16_to_fp32(b.d) * sc;
			if (!d)
				continue;
			const float dm = rt_fp16_to_fp32(b.dmin) * m;
			for (int ii = 0; ii < 32; ++ii) {
				int l = nearest_int((x[32 * j + ii] + dm) / d);
				L[32 * j + ii] = (uint8_t)MAXI(0, MINI(15, l));
			}
		}
		uint8_t *q = b.qs;
		for (int j = 0; j < RT_QK_K; j += 64) {
			for (int l = 0; l < 32; ++l)
				q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
			q += 32;
		}
		memcpy(out, &b, sizeof(b));
	}
}

static void dequantize_q4_k(const uint8_t *in, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, in += sizeof(struct rt_block_q4_k)) {
		struct rt_block_q4_k b;
		memcpy(&b, in, sizeof(b));
		const uint8_t *q = b.qs;
		const float d = rt_fp16_to_fp32(b.d);
		const float min = rt_fp16_to_fp32(b.dmin);
		int is = 0;
		uint8_t sc, m;
		for (int j = 0; j < RT_QK_K; j += 64) {
			get_scale_min_k4(is + 0, b.scales, &sc, &m);
			const float d1 = d * sc, m1 = min * m;
			get_scale_min_k4(is + 1, b.scales, &sc, &m);
			const float d2 = d * sc, m2 = min * m;
			for (int l = 0; l < 32; ++l)
				*y++ = d1 * (float)(q[l] & 0xF) - m1;
			for (int l = 0; l < 32; ++l)
				*y++ = d2 * (float)(q[l] >> 4) - m2;
			q += 32;
			is += 2;
		}
	}
}

/* ---- Q6_K ---- */

static void quantize_q6_k(const float *x, uint8_t *out, int64_t nb)
{
	int8_t L[RT_QK_K];
	float scales[RT_QK_K / 16];

	for (int64_t i = 0; i < nb; i++, x += RT_QK_K, out += sizeof(struct rt_block_q6_k)) {
		struct rt_block_q6_k b;
		memset(&b, 0, sizeof(b));
		float max_scale = 0;
		float max_abs_scale = 0;
		for (int ib = 0; ib < RT_QK_K / 16; ++ib) {
			const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1);
			scales[ib] = scale;
			const float abs_scale = fabsf(scale);
			if (abs_scale > max_abs_scale) {
				max_abs_scale = abs_scale;
				max_scale = scale;
			}
		}
		if (max_abs_scale < GROUP_MAX_EPS) {
			b.d = rt_fp32_to_fp16(0.f);
			memcpy(out, &b, sizeof(b));
			continue;
		}
		float iscale = -128.f / max_scale;
		b.d = rt_fp32_to_fp16(1 / iscale);
		for (int ib = 0; ib < RT_QK_K / 16; ++ib)
			b.scales[ib] = (int8_t)MINI(127, nearest_int(iscale * scales[ib]));
		for (int j = 0; j < RT_QK_K / 16; ++j) {
			float d = rt_fp16_to_fp32(b.d) * b.scales[j];
			if (!d)
				continue;
			for (int ii = 0; ii < 16; ++ii) {
				int l = nearest_int(x[16 * j + ii] / d);
				l = MAXI(-32, MINI(31, l));
				L[16 * j + ii] = (int8_t)(l + 32);
			}
		}
		uint8_t *ql = b.ql;
		uint8_t *qh = b.qh;
		for (int j = 0; j < RT_QK_K; j += 128) {
			for (int l = 0; l < 32; ++l) {
				const uint8_t q1 = L[j + l + 0] & 0xF;
				const uint8_t q2 = L[j + l + 32] & 0xF;
				const uint8_t q3 = L[j + l + 64] & 0xF;
				const uint8_t q4 = L[j + l + 96] & 0xF;
				ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
				ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
				qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
						  ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
			}
			ql += 64;
			qh += 32;
		}
		memcpy(out, &b, sizeof(b));
	}
}

static void dequantize_q6_k(const uint8_t *in, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, in += sizeof(struct rt_block_q6_k)) {
		struct rt_block_q6_k b;
		memcpy(&b, in, sizeof(b));
		const float d = rt_fp16_to_fp32(b.d);
		const uint8_t *ql = b.ql;
		const uint8_t *qh = b.qh;
		const int8_t *sc = b.scales;
		for (int n = 0; n < RT_QK_K; n += 128) {
			for (int l = 0; l < 32; ++l) {
				int is = l / 16;
				const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
				const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
				const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
				const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
				y[l + 0] = d * sc[is + 0] * q1;
				y[l + 32] = d * sc[is + 2] * q2;
				y[l + 64] = d * sc[is + 4] * q3;
				y[l + 96] = d * sc[is + 6] * q4;
			}
			y += 128;
			ql += 64;
			qh += 32;
			sc += 8;
		}
	}
}

/* ---- dispatch ---- */

static int check_n(uint32_t type, int64_t n, int64_t *ret_nb)
{
	uint32_t be;
	if (!rt_ggml_type_can_dequantize(type) || rt_ggml_type_geometry(type, &be, NULL) < 0)
		return -FL_EUNSUPPORTED;
	if (n < 0 || n % be)
		return -EINVAL;
	*ret_nb = n / be;
	return 0;
}

int rt_dequantize_row_ref(uint32_t type, const void *src, float *dst, int64_t n)
{
	int64_t nb;
	int r = check_n(type, n, &nb);
	if (r < 0)
		return r;
	const uint8_t *in = src;
	switch (type) {
	case RT_GGML_TYPE_F32:
		memcpy(dst, src, (size_t)n * sizeof(float));
		break;
	case RT_GGML_TYPE_F16:
		for (int64_t i = 0; i < n; i++)
			dst[i] = rt_fp16_to_fp32(rd16(in + 2 * i));
		break;
	case RT_GGML_TYPE_BF16:
		for (int64_t i = 0; i < n; i++)
			dst[i] = rt_bf16_to_fp32(rd16(in + 2 * i));
		break;
	case RT_GGML_TYPE_Q4_0: dequantize_q4_0(in, dst, nb); break;
	case RT_GGML_TYPE_Q8_0: dequantize_q8_0(in, dst, nb); break;
	case RT_GGML_TYPE_Q4_K: dequantize_q4_k(in, dst, nb); break;
	case RT_GGML_TYPE_Q6_K: dequantize_q6_k(in, dst, nb); break;
	default: return -FL_EUNSUPPORTED;
	}
	return 0;
}

/* ggml_compute_fp32_to_bf16: round to nearest even, quiet NaN. */
static uint16_t fp32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	if ((u & 0x7fffffff) > 0x7f800000)
		return (uint16_t)((u >> 16) | 64);
	return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

int rt_quantize_row_ref(uint32_t type, const float *src, void *dst, int64_t n)
{
	int64_t nb;
	int r = check_n(type, n, &nb);
	if (r < 0)
		return r;
	uint8_t *out = dst;
	switch (type) {
	case RT_GGML_TYPE_F32:
		memcpy(dst, src, (size_t)n * sizeof(float));
		break;
	case RT_GGML_TYPE_F16:
		for (int64_t i = 0; i < n; i++) {
			uint16_t h = rt_fp32_to_fp16(src[i]);
			memcpy(out + 2 * i, &h, 2);
		}
		break;
	case RT_GGML_TYPE_BF16:
		for (int64_t i = 0; i < n; i++) {
			uint16_t h = fp32_to_bf16(src[i]);
			memcpy(out + 2 * i, &h, 2);
		}
		break;
	case RT_GGML_TYPE_Q4_0: quantize_q4_0(src, out, nb); break;
	case RT_GGML_TYPE_Q8_0: quantize_q8_0(src, out, nb); break;
	case RT_GGML_TYPE_Q4_K: quantize_q4_k(src, out, nb); break;
	case RT_GGML_TYPE_Q6_K: quantize_q6_k(src, out, nb); break;
	default: return -FL_EUNSUPPORTED;
	}
	return 0;
}
