/* ggml tensor types as stored in GGUF files: numbering, block geometry, block
 * layouts, fp16 conversion, and plain reference (de)quantizers.
 *
 * FOR THE ENGINE: everything here is free to use from kernels/quant/model code.
 * The block structs match ggml byte for byte (checked by _Static_assert); the
 * rt_*_row_ref functions are simple, portable and slow: they define the
 * numerics (round-to-nearest, same as ggml's quantize_row_*_ref /
 * dequantize_row_*), so fast kernels can be tested against them.
 *
 * Numbering follows ggml's enum ggml_type exactly (values 31-33 and 36-38 are
 * removed types, never valid in a file). */
#ifndef FLOTILLA_GGML_TYPES_H
#define FLOTILLA_GGML_TYPES_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

enum rt_ggml_type {
	RT_GGML_TYPE_F32 = 0,
	RT_GGML_TYPE_F16 = 1,
	RT_GGML_TYPE_Q4_0 = 2,
	RT_GGML_TYPE_Q4_1 = 3,
	RT_GGML_TYPE_Q5_0 = 6,
	RT_GGML_TYPE_Q5_1 = 7,
	RT_GGML_TYPE_Q8_0 = 8,
	RT_GGML_TYPE_Q8_1 = 9,
	RT_GGML_TYPE_Q2_K = 10,
	RT_GGML_TYPE_Q3_K = 11,
	RT_GGML_TYPE_Q4_K = 12,
	RT_GGML_TYPE_Q5_K = 13,
	RT_GGML_TYPE_Q6_K = 14,
	RT_GGML_TYPE_Q8_K = 15,
	RT_GGML_TYPE_IQ2_XXS = 16,
	RT_GGML_TYPE_IQ2_XS = 17,
	RT_GGML_TYPE_IQ3_XXS = 18,
	RT_GGML_TYPE_IQ1_S = 19,
	RT_GGML_TYPE_IQ4_NL = 20,
	RT_GGML_TYPE_IQ3_S = 21,
	RT_GGML_TYPE_IQ2_S = 22,
	RT_GGML_TYPE_IQ4_XS = 23,
	RT_GGML_TYPE_I8 = 24,
	RT_GGML_TYPE_I16 = 25,
	RT_GGML_TYPE_I32 = 26,
	RT_GGML_TYPE_I64 = 27,
	RT_GGML_TYPE_F64 = 28,
	RT_GGML_TYPE_IQ1_M = 29,
	RT_GGML_TYPE_BF16 = 30,
	RT_GGML_TYPE_TQ1_0 = 34,
	RT_GGML_TYPE_TQ2_0 = 35,
	RT_GGML_TYPE_MXFP4 = 39,
	RT_GGML_TYPE_NVFP4 = 40,
	RT_GGML_TYPE_Q1_0 = 41,
	RT_GGML_TYPE_Q2_0 = 42,
	RT_GGML_TYPE_COUNT = 43,
};

/* Block geometry. */
#define RT_QK4_0 32
#define RT_QK8_0 32
#define RT_QK_K 256
#define RT_K_SCALE_SIZE 12

/* Block layouts (fp16 fields stored as raw uint16_t bits). */
struct rt_block_q4_0 {
	uint16_t d;              /* delta */
	uint8_t qs[RT_QK4_0 / 2]; /* nibbles: low = elements 0..15, high = 16..31 */
};
struct rt_block_q8_0 {
	uint16_t d;          /* delta */
	int8_t qs[RT_QK8_0]; /* quants */
};
struct rt_block_q4_k {
	uint16_t d;                      /* super-block scale for quantized scales */
	uint16_t dmin;                   /* super-block scale for quantized mins */
	uint8_t scales[RT_K_SCALE_SIZE]; /* 8 scales + 8 mins, 6 bits each */
	uint8_t qs[RT_QK_K / 2];         /* 4-bit quants */
};
struct rt_block_q6_k {
	uint8_t ql[RT_QK_K / 2];      /* quants, lower 4 bits */
	uint8_t qh[RT_QK_K / 4];      /* quants, upper 2 bits */
	int8_t scales[RT_QK_K / 16];  /* 8-bit scales */
	uint16_t d;                   /* super-block scale */
};
_Static_assert(sizeof(struct rt_block_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(struct rt_block_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(struct rt_block_q4_k) == 144, "q4_k block");
_Static_assert(sizeof(struct rt_block_q6_k) == 210, "q6_k block");

/* Name of a type ("f32", "q8_0", ...); "unknown" for numbers ggml never used
 * or removed. Never NULL, static string. */
const char *rt_ggml_type_name(uint32_t type);

/* Elements per block and bytes per block of TYPE. Returns 0, or
 * -FL_EUNSUPPORTED for an unknown or removed type number. */
int rt_ggml_type_geometry(uint32_t type, uint32_t *ret_block_elems, uint32_t *ret_block_bytes);

/* Bytes taken by N_ELEMS elements of TYPE. -FL_EUNSUPPORTED for an unknown
 * type, -FL_EFORMAT if N_ELEMS is not a multiple of the block size, -ERANGE on
 * overflow. */
int rt_ggml_row_bytes(uint32_t type, uint64_t n_elems, uint64_t *ret_bytes);

/* True when rt_dequantize_row_ref() handles TYPE (F32, F16, BF16, Q4_0, Q8_0,
 * Q4_K, Q6_K). */
bool rt_ggml_type_can_dequantize(uint32_t type);
/* True when rt_quantize_row_ref() handles TYPE (same list). */
bool rt_ggml_type_can_quantize(uint32_t type);

/* Reference dequantizer: N elements (a multiple of the block size) of TYPE at
 * SRC to floats at DST. SRC need not be aligned. Returns 0, -FL_EUNSUPPORTED,
 * or -EINVAL (N not a multiple of the block). Thread-safe. */
int rt_dequantize_row_ref(uint32_t type, const void *src, float *dst, int64_t n);

/* Reference quantizer (ggml quantize_row_*_ref semantics, round to nearest):
 * N floats (multiple of the block size) to rt_ggml_row_bytes(TYPE, N) bytes
 * at DST. Same errors as rt_dequantize_row_ref(). Thread-safe. */
int rt_quantize_row_ref(uint32_t type, const float *src, void *dst, int64_t n);

/* IEEE half <-> float (round to nearest even; NaN/Inf preserved). */
static inline float rt_fp16_to_fp32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t mant = h & 0x3ffu;
	uint32_t bits;
	if (exp == 0) {
		if (mant == 0) {
			bits = sign;
		} else { /* subnormal: normalise */
			exp = 127 - 15 + 1;
			while (!(mant & 0x400u)) {
				mant <<= 1;
				exp--;
			}
			mant &= 0x3ffu;
			bits = sign | (exp << 23) | (mant << 13);
		}
	} else if (exp == 0x1f) {
		bits = sign | 0x7f800000u | (mant << 13);
	} else {
		bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
	}
	float f;
	memcpy(&f, &bits, sizeof(f));
	return f;
}

static inline uint16_t rt_fp32_to_fp16(float f)
{
	uint32_t x;
	memcpy(&x, &f, sizeof(x));
	uint32_t sign = (x >> 16) & 0x8000u;
	uint32_t absx = x & 0x7fffffffu;
	if (absx >= 0x7f800000u) /* Inf or NaN */
		return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
	if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to Inf */
		return (uint16_t)(sign | 0x7c00u);
	if (absx < 0x38800000u) { /* below the smallest normal half: subnormal */
		if (absx < 0x33000000u) /* < 2^-25 rounds to zero */
			return (uint16_t)sign;
		uint32_t e = absx >> 23;
		uint32_t m = (absx & 0x7fffffu) | 0x800000u;
		uint32_t shift = 126 - e; /* value / 2^-24 = mantissa24 >> (126 - e) */
		uint32_t half = m >> shift;
		uint32_t rem = m & ((1u << shift) - 1);
		uint32_t mid = 1u << (shift - 1);
		if (rem > mid || (rem == mid && (half & 1u)))
			half++;
		return (uint16_t)(sign | half);
	}
	uint32_t h = ((absx >> 13) - ((127u - 15u) << 10));
	uint32_t rem = absx & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
		h++;
	return (uint16_t)(sign | h);
}

static inline float rt_bf16_to_fp32(uint16_t h)
{
	uint32_t bits = (uint32_t)h << 16;
	float f;
	memcpy(&f, &bits, sizeof(f));
	return f;
}

#endif
