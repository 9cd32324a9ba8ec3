/* GGUF writer: round trip of every metadata type and every writable tensor
 * type through the reader, alignment, atomic file write, argument errors, and
 * the reference quantizers' error bounds and fp16 conversion. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>

#include <cmocka.h>

#include "flotilla/cleanup.h"
#include "flotilla/error.h"
#include "flotilla/ggml_types.h"
#include "flotilla/gguf.h"
#include "flotilla/gguf_write.h"

static char tmpdir[512];

static int setup_dir(void **state)
{
	const char *base = getenv("FL_TEST_TMPDIR");
	snprintf(tmpdir, sizeof(tmpdir), "%s/gguf_write.%d", base ? base : "/tmp", (int)getpid());
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static int teardown_dir(void **state)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static float *random_floats(size_t n, uint64_t seed, float scale)
{
	float *x = malloc(n * sizeof(float));
	assert_non_null(x);
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i < n; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		x[i] = (float)(((double)(s >> 11) / 9007199254740992.0) * 2.0 - 1.0) * scale;
	}
	return x;
}

static struct rt_gguf *reopen(struct rt_gguf_writer *w, void **mem)
{
	size_t len;
	assert_int_equal(rt_gguf_writer_to_memory(w, mem, &len), 0);
	struct rt_gguf *g = NULL;
	int r = rt_gguf_open_memory(*mem, len, &g);
	if (r < 0)
		fail_msg("reopen: %s", rt_gguf_last_error());
	return g;
}

static void test_kv_roundtrip(void **state)
{
	struct rt_gguf_writer *w;
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	assert_int_equal(rt_gguf_add_u8(w, "k.u8", 200), 0);
	assert_int_equal(rt_gguf_add_i8(w, "k.i8", -100), 0);
	assert_int_equal(rt_gguf_add_u16(w, "k.u16", 60000), 0);
	assert_int_equal(rt_gguf_add_i16(w, "k.i16", -30000), 0);
	assert_int_equal(rt_gguf_add_u32(w, "k.u32", 4000000000u), 0);
	assert_int_equal(rt_gguf_add_i32(w, "k.i32", -2000000000), 0);
	assert_int_equal(rt_gguf_add_u64(w, "k.u64", UINT64_MAX - 5), 0);
	assert_int_equal(rt_gguf_add_i64(w, "k.i64", INT64_MIN + 7), 0);
	assert_int_equal(rt_gguf_add_f32(w, "k.f32", 1.5f), 0);
	assert_int_equal(rt_gguf_add_f64(w, "k.f64", -2.25), 0);
	assert_int_equal(rt_gguf_add_bool(w, "k.bool", true), 0);
	assert_int_equal(rt_gguf_add_str(w, "k.str", "héllo"), 0);
	assert_int_equal(rt_gguf_add_str_n(w, "k.nul", "a\0b", 3), 0);
	const int32_t ia[] = {1, -2, 3};
	const float fa[] = {0.5f, -1.0f};
	const uint8_t ba[] = {1, 0, 1};
	const char *sa[] = {"x", "", "zz"};
	assert_int_equal(rt_gguf_add_arr(w, "k.ai32", RT_GGUF_I32, ia, 3), 0);
	assert_int_equal(rt_gguf_add_arr(w, "k.af32", RT_GGUF_F32, fa, 2), 0);
	assert_int_equal(rt_gguf_add_arr(w, "k.abool", RT_GGUF_BOOL, ba, 3), 0);
	assert_int_equal(rt_gguf_add_arr(w, "k.empty", RT_GGUF_U64, NULL, 0), 0);
	assert_int_equal(rt_gguf_add_arr_str(w, "k.astr", sa, NULL, 3), 0);

	/* Errors leave the writer unchanged. */
	assert_int_equal(rt_gguf_add_u32(w, "k.u32", 1), -FL_EDUP);
	assert_int_equal(rt_gguf_add_u32(w, "", 1), -EINVAL);
	char longkey[100];
	memset(longkey, 'a', sizeof(longkey) - 1);
	longkey[99] = '\0';
	assert_int_equal(rt_gguf_add_u32(w, longkey, 1), -EINVAL);
	assert_int_equal(rt_gguf_add_arr(w, "k.nested", RT_GGUF_ARRAY, ia, 1), -EINVAL);
	assert_int_equal(rt_gguf_add_arr(w, "k.strarr", RT_GGUF_STRING, ia, 1), -EINVAL);
	assert_int_equal(rt_gguf_add_str(w, "k.null", NULL), -EINVAL);

	void *mem;
	struct rt_gguf *g = reopen(w, &mem);
	assert_int_equal(rt_gguf_version(g), 3);
	assert_int_equal(rt_gguf_n_kv(g), 18);
	assert_int_equal(rt_gguf_n_tensors(g), 0);
	uint32_t u32;
	int32_t i32;
	uint64_t u64;
	int64_t i64;
	float f;
	double d;
	bool b;
	const char *s;
	size_t len;
	assert_int_equal(rt_gguf_get_u32(g, "k.u8", &u32), 0);
	assert_int_equal(u32, 200);
	assert_int_equal(rt_gguf_get_i32(g, "k.i8", &i32), 0);
	assert_int_equal(i32, -100);
	assert_int_equal(rt_gguf_get_u32(g, "k.u16", &u32), 0);
	assert_int_equal(u32, 60000);
	assert_int_equal(rt_gguf_get_i32(g, "k.i16", &i32), 0);
	assert_int_equal(i32, -30000);
	assert_int_equal(rt_gguf_get_u32(g, "k.u32", &u32), 0);
	assert_int_equal(u32, 4000000000u);
	assert_int_equal(rt_gguf_get_i32(g, "k.i32", &i32), 0);
	assert_int_equal(i32, -2000000000);
	assert_int_equal(rt_gguf_get_u64(g, "k.u64", &u64), 0);
	assert_true(u64 == UINT64_MAX - 5);
	assert_int_equal(rt_gguf_get_i64(g, "k.i64", &i64), 0);
	assert_true(i64 == INT64_MIN + 7);
	assert_int_equal(rt_gguf_get_f32(g, "k.f32", &f), 0);
	assert_true(f == 1.5f);
	assert_int_equal(rt_gguf_get_f64(g, "k.f64", &d), 0);
	assert_true(d == -2.25);
	assert_int_equal(rt_gguf_get_f32(g, "k.f64", &f), 0);
	assert_true(f == -2.25f);
	assert_int_equal(rt_gguf_get_bool(g, "k.bool", &b), 0);
	assert_true(b);
	assert_int_equal(rt_gguf_get_str(g, "k.str", &s, &len), 0);
	assert_string_equal(s, "héllo");
	assert_int_equal(len, 6);
	assert_int_equal(rt_gguf_get_str(g, "k.nul", &s, &len), 0);
	assert_int_equal(len, 3);
	assert_memory_equal(s, "a\0b", 3);

	/* Conversions and their limits. */
	assert_int_equal(rt_gguf_get_i32(g, "k.u32", &i32), -FL_ERANGE);
	assert_int_equal(rt_gguf_get_u32(g, "k.i8", &u32), -FL_ERANGE);
	assert_int_equal(rt_gguf_get_u32(g, "k.u64", &u32), -FL_ERANGE);
	assert_int_equal(rt_gguf_get_i64(g, "k.u64", &i64), -FL_ERANGE);
	assert_int_equal(rt_gguf_get_u32(g, "k.str", &u32), -FL_ESCHEMA);
	assert_int_equal(rt_gguf_get_u32(g, "k.f32", &u32), -FL_ESCHEMA);
	assert_int_equal(rt_gguf_get_u32(g, "k.bool", &u32), -FL_ESCHEMA);
	assert_int_equal(rt_gguf_get_f32(g, "k.u32", &f), -FL_ESCHEMA);
	assert_int_equal(rt_gguf_get_bool(g, "k.u8", &b), -FL_ESCHEMA);
	assert_int_equal(rt_gguf_get_str(g, "k.u8", &s, NULL), -FL_ESCHEMA);
	assert_int_equal(rt_gguf_get_u32(g, "missing", &u32), -ENOENT);
	u32 = 77;
	assert_int_equal(rt_gguf_get_u32(g, "k.i32", &u32), -FL_ERANGE);
	assert_int_equal(u32, 77); /* untouched on error */

	/* Arrays. */
	enum rt_gguf_vtype at;
	uint64_t n;
	assert_int_equal(rt_gguf_get_arr_n(g, "k.ai32", &at, &n), 0);
	assert_int_equal(at, RT_GGUF_I32);
	assert_int_equal(n, 3);
	int32_t io[3];
	assert_int_equal(rt_gguf_get_arr_i32(g, "k.ai32", io, 3), 0);
	assert_memory_equal(io, ia, sizeof(ia));
	assert_int_equal(rt_gguf_get_arr_i32(g, "k.ai32", io, 2), -EINVAL);
	int64_t i64o[3];
	assert_int_equal(rt_gguf_get_arr_i64(g, "k.abool", i64o, 3), 0);
	assert_true(i64o[0] == 1 && i64o[1] == 0 && i64o[2] == 1);
	float fo[3];
	assert_int_equal(rt_gguf_get_arr_f32(g, "k.af32", fo, 2), 0);
	assert_true(fo[0] == 0.5f && fo[1] == -1.0f);
	assert_int_equal(rt_gguf_get_arr_f32(g, "k.ai32", fo, 3), 0);
	assert_true(fo[1] == -2.0f);
	assert_int_equal(rt_gguf_get_arr_f32(g, "k.astr", fo, 3), -FL_ESCHEMA);
	assert_int_equal(rt_gguf_get_arr_n(g, "k.u8", &at, &n), -FL_ESCHEMA);
	assert_int_equal(rt_gguf_get_arr_n(g, "k.empty", &at, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(rt_gguf_get_arr_str(g, "k.astr", 2, &s, &len), 0);
	assert_string_equal(s, "zz");
	assert_int_equal(rt_gguf_get_arr_str(g, "k.astr", 1, &s, &len), 0);
	assert_int_equal(len, 0);
	assert_int_equal(rt_gguf_get_arr_str(g, "k.astr", 3, &s, &len), -ERANGE);
	assert_int_equal(rt_gguf_get_arr_str(g, "k.ai32", 0, &s, &len), -FL_ESCHEMA);

	/* By index + copy into another writer. */
	int idx = rt_gguf_find_kv(g, "k.astr");
	assert_true(idx >= 0);
	assert_string_equal(rt_gguf_kv_key(g, (size_t)idx), "k.astr");
	assert_int_equal(rt_gguf_kv_type(g, (size_t)idx), RT_GGUF_ARRAY);
	assert_null(rt_gguf_kv_key(g, 1000));
	struct rt_gguf_writer *w2;
	assert_int_equal(rt_gguf_writer_new(&w2), 0);
	for (size_t i = 0; i < rt_gguf_n_kv(g); i++)
		assert_int_equal(rt_gguf_add_kv_from(w2, g, i), 0);
	void *mem1, *mem2;
	size_t l1, l2;
	assert_int_equal(rt_gguf_writer_to_memory(w, &mem1, &l1), 0);
	assert_int_equal(rt_gguf_writer_to_memory(w2, &mem2, &l2), 0);
	assert_int_equal(l1, l2);
	assert_memory_equal(mem1, mem2, l1); /* identical bytes */
	free(mem1);
	free(mem2);
	rt_gguf_writer_free(w2);
	rt_gguf_free(g);
	free(mem);
	rt_gguf_writer_free(w);
}

static float max_abs_err(const float *a, const float *b, size_t n)
{
	float m = 0;
	for (size_t i = 0; i < n; i++)
		m = fmaxf(m, fabsf(a[i] - b[i]));
	return m;
}

/* Every writable type: write, read back, dequantize, compare with the
 * original within the type's error bound. */
static void test_tensor_roundtrip(void **state)
{
	static const struct {
		uint32_t type;
		float bound; /* max abs error for inputs in [-1, 1] */
	} cases[] = {
		{RT_GGML_TYPE_F32, 0.0f},      {RT_GGML_TYPE_F16, 1e-3f},
		{RT_GGML_TYPE_BF16, 8e-3f},    {RT_GGML_TYPE_Q8_0, 1.0f / 127 * 0.51f + 1e-3f},
		{RT_GGML_TYPE_Q4_0, 1.0f / 8 * 0.51f + 1e-3f + 1.0f / 16},
		{RT_GGML_TYPE_Q4_K, 0.16f},    {RT_GGML_TYPE_Q6_K, 0.04f},
	};
	const int64_t ne[2] = {512, 6};
	const size_t n = 512 * 6;
	float *x = random_floats(n, 7, 1.0f);
	float *y = malloc(n * sizeof(float));
	for (size_t c = 0; c < FL_ARRAY_SIZE(cases); c++) {
		struct rt_gguf_writer *w;
		assert_int_equal(rt_gguf_writer_new(&w), 0);
		assert_int_equal(rt_gguf_add_str(w, "general.architecture", "test"), 0);
		assert_int_equal(rt_gguf_add_tensor(w, "a", cases[c].type, 2, ne, x), 0);
		const int64_t ne1[1] = {RT_QK_K};
		assert_int_equal(rt_gguf_add_tensor(w, "b.1d", cases[c].type, 1, ne1, x), 0);
		void *mem;
		struct rt_gguf *g = reopen(w, &mem);
		const struct rt_gguf_tensor *t = rt_gguf_find_tensor(g, "a");
		assert_non_null(t);
		assert_string_equal(t->name, "a");
		assert_int_equal(t->type, cases[c].type);
		assert_int_equal(t->n_dims, 2);
		assert_true(t->ne[0] == 512 && t->ne[1] == 6 && t->ne[2] == 1 && t->ne[3] == 1);
		assert_int_equal(t->n_elements, n);
		uint64_t bytes;
		assert_int_equal(rt_ggml_row_bytes(cases[c].type, n, &bytes), 0);
		assert_int_equal(t->size, bytes);
		assert_int_equal((uintptr_t)t->data % 32, (uintptr_t)mem % 32);
		assert_int_equal(rt_dequantize_row_ref(cases[c].type, t->data, y, (int64_t)n), 0);
		float err = max_abs_err(x, y, n);
		if (err > cases[c].bound)
			fail_msg("%s: max error %g > %g", rt_ggml_type_name(cases[c].type), err,
				 cases[c].bound);
		if (cases[c].type == RT_GGML_TYPE_F32)
			assert_memory_equal(x, y, n * sizeof(float));
		const struct rt_gguf_tensor *t2 = rt_gguf_find_tensor(g, "b.1d");
		assert_non_null(t2);
		assert_int_equal(t2->n_dims, 1);
		assert_int_equal(t2->offset % rt_gguf_alignment(g), 0);
		assert_true(t2->offset >= t->offset + t->size);
		assert_null(rt_gguf_find_tensor(g, "nope"));
		assert_ptr_equal(rt_gguf_tensor(g, 0), t);
		assert_null(rt_gguf_tensor(g, 2));
		rt_gguf_free(g);
		free(mem);
		rt_gguf_writer_free(w);
	}
	free(x);
	free(y);
}

/* The quantizers are deterministic and match known values on a simple
 * ramp (computed by hand from the ggml formulas). */
static void test_quant_known_values(void **state)
{
	float x[32];
	for (int i = 0; i < 32; i++)
		x[i] = (float)(i - 16) / 16.0f; /* -1 .. 0.9375 */
	struct rt_block_q8_0 q8;
	assert_int_equal(rt_quantize_row_ref(RT_GGML_TYPE_Q8_0, x, &q8, 32), 0);
	/* d = 1/127; q = round(x * 127) */
	assert_true(fabsf(rt_fp16_to_fp32(q8.d) - 1.0f / 127) < 1e-5f);
	assert_int_equal(q8.qs[0], -127);
	assert_int_equal(q8.qs[16], 0);
	assert_int_equal(q8.qs[24], 64); /* 0.5 * 127 = 63.5 -> 64 */
	struct rt_block_q4_0 q4;
	assert_int_equal(rt_quantize_row_ref(RT_GGML_TYPE_Q4_0, x, &q4, 32), 0);
	/* max by magnitude is -1 -> d = -1/-8 = 0.125; x=-1 -> -8+8.5 -> 0 */
	assert_true(rt_fp16_to_fp32(q4.d) == 0.125f);
	assert_int_equal(q4.qs[0] & 0xf, 0);
	assert_int_equal(q4.qs[0] >> 4, 8); /* x[16] = 0 -> 8 */
	float y[32];
	assert_int_equal(rt_dequantize_row_ref(RT_GGML_TYPE_Q4_0, &q4, y, 32), 0);
	assert_true(y[0] == -1.0f); /* (0 - 8) * 0.125 */
	/* Zero blocks stay zero in every type. */
	float z[256] = {0};
	uint8_t buf[512];
	const uint32_t types[] = {RT_GGML_TYPE_Q8_0, RT_GGML_TYPE_Q4_0, RT_GGML_TYPE_Q4_K,
				  RT_GGML_TYPE_Q6_K, RT_GGML_TYPE_F16, RT_GGML_TYPE_BF16};
	for (size_t i = 0; i < FL_ARRAY_SIZE(types); i++) {
		float out[256];
		assert_int_equal(rt_quantize_row_ref(types[i], z, buf, 256), 0);
		assert_int_equal(rt_dequantize_row_ref(types[i], buf, out, 256), 0);
		for (int k = 0; k < 256; k++)
			assert_true(out[k] == 0.0f);
	}
	/* Errors. */
	assert_int_equal(rt_quantize_row_ref(RT_GGML_TYPE_Q4_K, z, buf, 100), -EINVAL);
	assert_int_equal(rt_quantize_row_ref(RT_GGML_TYPE_Q5_K, z, buf, 256), -FL_EUNSUPPORTED);
	assert_int_equal(rt_dequantize_row_ref(77, buf, z, 256), -FL_EUNSUPPORTED);
	assert_int_equal(rt_dequantize_row_ref(RT_GGML_TYPE_Q8_0, buf, z, -32), -EINVAL);
}

static void test_type_table(void **state)
{
	uint32_t be, bb;
	assert_int_equal(rt_ggml_type_geometry(RT_GGML_TYPE_Q8_0, &be, &bb), 0);
	assert_true(be == 32 && bb == 34);
	assert_int_equal(rt_ggml_type_geometry(RT_GGML_TYPE_Q4_0, &be, &bb), 0);
	assert_true(be == 32 && bb == 18);
	assert_int_equal(rt_ggml_type_geometry(RT_GGML_TYPE_Q4_K, &be, &bb), 0);
	assert_true(be == 256 && bb == 144);
	assert_int_equal(rt_ggml_type_geometry(RT_GGML_TYPE_Q6_K, &be, &bb), 0);
	assert_true(be == 256 && bb == 210);
	assert_int_equal(rt_ggml_type_geometry(RT_GGML_TYPE_IQ4_XS, &be, &bb), 0);
	assert_true(be == 256 && bb == 136);
	assert_int_equal(rt_ggml_type_geometry(4, &be, &bb), -FL_EUNSUPPORTED);  /* removed Q4_2 */
	assert_int_equal(rt_ggml_type_geometry(31, &be, &bb), -FL_EUNSUPPORTED); /* removed Q4_0_4_4 */
	assert_int_equal(rt_ggml_type_geometry(RT_GGML_TYPE_COUNT, &be, &bb), -FL_EUNSUPPORTED);
	assert_string_equal(rt_ggml_type_name(RT_GGML_TYPE_Q6_K), "q6_K");
	assert_string_equal(rt_ggml_type_name(1000), "unknown");
	uint64_t bytes;
	assert_int_equal(rt_ggml_row_bytes(RT_GGML_TYPE_Q8_0, 64, &bytes), 0);
	assert_int_equal(bytes, 68);
	assert_int_equal(rt_ggml_row_bytes(RT_GGML_TYPE_Q8_0, 33, &bytes), -FL_EFORMAT);
	assert_int_equal(rt_ggml_row_bytes(RT_GGML_TYPE_F32, UINT64_MAX / 2, &bytes), -ERANGE);
	/* fp16: exact values, rounding, specials. */
	assert_int_equal(rt_fp32_to_fp16(1.0f), 0x3c00);
	assert_int_equal(rt_fp32_to_fp16(-2.0f), 0xc000);
	assert_int_equal(rt_fp32_to_fp16(65504.0f), 0x7bff);
	assert_int_equal(rt_fp32_to_fp16(1e6f), 0x7c00);
	assert_int_equal(rt_fp32_to_fp16(5.960464477539063e-08f), 0x0001); /* smallest subnormal */
	assert_int_equal(rt_fp32_to_fp16(1.0f + 1.0f / 2048), 0x3c00);      /* tie -> even */
	assert_int_equal(rt_fp32_to_fp16(1.0f + 3.0f / 2048), 0x3c02);      /* tie -> even */
	assert_true(rt_fp16_to_fp32(0x0001) == 5.960464477539063e-08f);
	assert_true(isinf(rt_fp16_to_fp32(0x7c00)));
	assert_true(isnan(rt_fp16_to_fp32(rt_fp32_to_fp16(NAN))));
	for (uint32_t h = 0; h < 0x7c00; h++) /* every finite positive half round-trips */
		assert_int_equal(rt_fp32_to_fp16(rt_fp16_to_fp32((uint16_t)h)), h);
}

static int fill_ramp(void *ctx, uint64_t row, float *out)
{
	int *calls = ctx;
	(*calls)++;
	for (int i = 0; i < 64; i++)
		out[i] = (float)row + (float)i / 64.0f;
	return row == 1000 ? -EIO : 0;
}

static int fill_fail(void *ctx, uint64_t row, float *out)
{
	for (int i = 0; i < 32; i++)
		out[i] = 0;
	return row == 2 ? -EIO : 0;
}

static size_t count_files(const char *dir)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static void test_file_write_atomic(void **state)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/m.gguf", tmpdir);
	struct rt_gguf_writer *w;
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	assert_int_equal(rt_gguf_writer_set_alignment(w, 64), 0);
	assert_int_equal(rt_gguf_writer_set_alignment(w, 48), -EINVAL);
	int calls = 0;
	const int64_t ne[2] = {64, 3};
	assert_int_equal(rt_gguf_add_tensor_fill(w, "ramp", RT_GGML_TYPE_F32, 2, ne, fill_ramp, &calls), 0);
	const int64_t ne1[1] = {64};
	float ones[64];
	for (int i = 0; i < 64; i++)
		ones[i] = 1;
	assert_int_equal(rt_gguf_add_tensor(w, "ones", RT_GGML_TYPE_Q8_0, 1, ne1, ones), 0);
	assert_int_equal(rt_gguf_writer_write(w, path), 0);
	assert_int_equal(calls, 3);
	assert_int_equal(count_files(tmpdir), 1); /* no temporary left */

	struct rt_gguf *g;
	assert_int_equal(rt_gguf_open(path, &g), 0);
	assert_int_equal(rt_gguf_alignment(g), 64);
	assert_int_equal(rt_gguf_data_offset(g) % 64, 0);
	const struct rt_gguf_tensor *t = rt_gguf_find_tensor(g, "ramp");
	assert_non_null(t);
	assert_int_equal((uintptr_t)t->data % 64, 0);
	float v[192];
	memcpy(v, t->data, sizeof(v));
	assert_true(v[0] == 0.0f && v[64] == 1.0f && v[191] == 2.0f + 63.0f / 64);
	t = rt_gguf_find_tensor(g, "ones");
	assert_int_equal(t->offset % 64, 0);
	assert_int_equal((uintptr_t)t->data % 64, 0);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal((uint64_t)st.st_size, rt_gguf_file_size(g));
	assert_int_equal(st.st_mode & 0777, 0644);
	rt_gguf_free(g);
	rt_gguf_writer_free(w);

	/* A failing fill leaves the old file untouched and no temporary. */
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	const int64_t ne2[2] = {32, 4};
	assert_int_equal(rt_gguf_add_tensor_fill(w, "x", RT_GGML_TYPE_F32, 2, ne2, fill_fail, NULL), 0);
	assert_int_equal(rt_gguf_writer_write(w, path), -EIO);
	assert_int_equal(count_files(tmpdir), 1);
	assert_int_equal(rt_gguf_open(path, &g), 0);
	assert_non_null(rt_gguf_find_tensor(g, "ramp"));
	rt_gguf_free(g);
	char bad[700];
	snprintf(bad, sizeof(bad), "%s/no/such/dir/m.gguf", tmpdir);
	assert_int_equal(rt_gguf_writer_write(w, bad), -ENOENT);
	rt_gguf_writer_free(w);
}

static void test_tensor_errors(void **state)
{
	struct rt_gguf_writer *w;
	assert_int_equal(rt_gguf_writer_new(&w), 0);
	float x[512] = {0};
	const int64_t ok[2] = {32, 2};
	assert_int_equal(rt_gguf_add_tensor(w, "t", RT_GGML_TYPE_F32, 2, ok, x), 0);
	assert_int_equal(rt_gguf_add_tensor(w, "t", RT_GGML_TYPE_F32, 2, ok, x), -FL_EDUP);
	const int64_t zero[2] = {32, 0};
	assert_int_equal(rt_gguf_add_tensor(w, "z", RT_GGML_TYPE_F32, 2, zero, x), -EINVAL);
	const int64_t neg[1] = {-32};
	assert_int_equal(rt_gguf_add_tensor(w, "n", RT_GGML_TYPE_F32, 1, neg, x), -EINVAL);
	assert_int_equal(rt_gguf_add_tensor(w, "d5", RT_GGML_TYPE_F32, 5, ok, x), -EINVAL);
	assert_int_equal(rt_gguf_add_tensor(w, "d0", RT_GGML_TYPE_F32, 0, ok, x), -EINVAL);
	const int64_t odd[1] = {48};
	assert_int_equal(rt_gguf_add_tensor(w, "k", RT_GGML_TYPE_Q4_K, 1, odd, x), -EINVAL);
	assert_int_equal(rt_gguf_add_tensor(w, "u", RT_GGML_TYPE_Q5_K, 1, ok, x), -FL_EUNSUPPORTED);
	assert_int_equal(rt_gguf_add_tensor(w, "nodata", RT_GGML_TYPE_F32, 1, ok, NULL), -EINVAL);
	const int64_t huge[4] = {INT64_MAX / 2, 4, 1, 1};
	assert_int_equal(rt_gguf_add_tensor(w, "h", RT_GGML_TYPE_F32, 2, huge, x), -EINVAL);
	char name[80];
	memset(name, 'n', 79);
	name[79] = '\0';
	assert_int_equal(rt_gguf_add_tensor(w, name, RT_GGML_TYPE_F32, 2, ok, x), -EINVAL);
	/* raw: any known type, exact size */
	uint8_t raw[136];
	const int64_t ne_iq[1] = {256};
	assert_int_equal(rt_gguf_add_tensor_raw(w, "iq", RT_GGML_TYPE_IQ4_XS, 1, ne_iq, raw, 135), -EINVAL);
	assert_int_equal(rt_gguf_add_tensor_raw(w, "iq", RT_GGML_TYPE_IQ4_XS, 1, ne_iq, raw, 136), 0);
	assert_int_equal(rt_gguf_add_tensor_raw(w, "bad", 4, 1, ne_iq, raw, 136), -FL_EUNSUPPORTED);
	void *mem;
	struct rt_gguf *g = reopen(w, &mem);
	assert_int_equal(rt_gguf_n_tensors(g), 2);
	assert_int_equal(rt_gguf_find_tensor(g, "iq")->type, RT_GGML_TYPE_IQ4_XS);
	rt_gguf_free(g);
	free(mem);
	rt_gguf_writer_free(w);
	rt_gguf_writer_free(NULL);
}

/* runtime/tools/mkmodel: names, shapes, keys llama.cpp expects; deterministic. */
static void test_mkmodel(void **state)
{
	const char *bin = getenv("FL_BINARY_DIR");
	char exe[600];
	snprintf(exe, sizeof(exe), "%s/runtime/tools/mkmodel", bin ? bin : ".");
	if (access(exe, X_OK) != 0) {
		print_message("SKIP: %s not built\n", exe);
		skip();
	}
	static const char *const archs[] = {"llama", "qwen2", "qwen3"};
	for (size_t a = 0; a < FL_ARRAY_SIZE(archs); a++) {
		char out[700], cmd[4096];
		snprintf(out, sizeof(out), "%s/mk-%s.gguf", tmpdir, archs[a]);
		snprintf(cmd, sizeof(cmd),
			 "'%s' --arch %s --vocab tiny --dim 64 --layers 2 --heads 4 --kv-heads 2 "
			 "--ffn 96 --ctx 512 --type q8_0 --seed 3 %s -o '%s'",
			 exe, archs[a], a == 0 ? "--rope-scaling llama3" : "--tie", out);
		assert_int_equal(system(cmd), 0);
		struct rt_gguf *g;
		assert_int_equal(rt_gguf_open(out, &g), 0);
		const char *arch;
		assert_int_equal(rt_gguf_get_str(g, "general.architecture", &arch, NULL), 0);
		assert_string_equal(arch, archs[a]);
		char key[128];
		uint32_t v;
		float f;
#define KEY(sfx) (snprintf(key, sizeof(key), "%s.%s", archs[a], sfx), key)
		assert_int_equal(rt_gguf_get_u32(g, KEY("embedding_length"), &v), 0);
		assert_int_equal(v, 64);
		assert_int_equal(rt_gguf_get_u32(g, KEY("block_count"), &v), 0);
		assert_int_equal(v, 2);
		assert_int_equal(rt_gguf_get_u32(g, KEY("feed_forward_length"), &v), 0);
		assert_int_equal(v, 96);
		assert_int_equal(rt_gguf_get_u32(g, KEY("attention.head_count"), &v), 0);
		assert_int_equal(v, 4);
		assert_int_equal(rt_gguf_get_u32(g, KEY("attention.head_count_kv"), &v), 0);
		assert_int_equal(v, 2);
		assert_int_equal(rt_gguf_get_u32(g, KEY("context_length"), &v), 0);
		assert_int_equal(v, 512);
		assert_int_equal(rt_gguf_get_u32(g, KEY("rope.dimension_count"), &v), 0);
		assert_int_equal(v, 16);
		assert_int_equal(rt_gguf_get_f32(g, KEY("rope.freq_base"), &f), 0);
		assert_true(f == 10000.0f);
		assert_int_equal(rt_gguf_get_f32(g, KEY("attention.layer_norm_rms_epsilon"), &f), 0);
		uint32_t n_vocab;
		assert_int_equal(rt_gguf_get_u32(g, KEY("vocab_size"), &n_vocab), 0);
		enum rt_gguf_vtype at;
		uint64_t nt;
		assert_int_equal(rt_gguf_get_arr_n(g, "tokenizer.ggml.tokens", &at, &nt), 0);
		assert_int_equal(nt, n_vocab);
#undef KEY
		const struct rt_gguf_tensor *t = rt_gguf_find_tensor(g, "token_embd.weight");
		assert_non_null(t);
		assert_true(t->ne[0] == 64 && t->ne[1] == (int64_t)n_vocab);
		assert_int_equal(t->type, RT_GGML_TYPE_Q8_0);
		/* Weights look like N(0, 0.02^2). */
		float row[64];
		assert_int_equal(rt_dequantize_row_ref(t->type, t->data, row, 64), 0);
		double ss = 0;
		for (int i = 0; i < 64; i++)
			ss += row[i] * row[i];
		assert_true(ss / 64 > 0.0001 && ss / 64 < 0.0009);
		static const struct {
			const char *name;
			int64_t ne0, ne1;
		} want[] = {
			{"blk.1.attn_norm.weight", 64, 1}, {"blk.1.attn_q.weight", 64, 64},
			{"blk.1.attn_k.weight", 64, 32},   {"blk.1.attn_v.weight", 64, 32},
			{"blk.1.attn_output.weight", 64, 64}, {"blk.1.ffn_norm.weight", 64, 1},
			{"blk.1.ffn_gate.weight", 64, 96}, {"blk.1.ffn_up.weight", 64, 96},
			{"blk.1.ffn_down.weight", 96, 64}, {"output_norm.weight", 64, 1},
		};
		for (size_t i = 0; i < FL_ARRAY_SIZE(want); i++) {
			t = rt_gguf_find_tensor(g, want[i].name);
			if (!t)
				fail_msg("%s: no %s", archs[a], want[i].name);
			assert_true(t->ne[0] == want[i].ne0 && t->ne[1] == want[i].ne1);
			if (want[i].ne1 == 1)
				assert_int_equal(t->type, RT_GGML_TYPE_F32);
		}
		assert_true((rt_gguf_find_tensor(g, "output.weight") != NULL) == (a == 0));
		assert_true((rt_gguf_find_tensor(g, "rope_freqs.weight") != NULL) == (a == 0));
		assert_true((rt_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL) == (a == 1));
		assert_true((rt_gguf_find_tensor(g, "blk.0.attn_k_norm.weight") != NULL) == (a == 2));
		if (a == 0) { /* llama3 factors: 1 for high frequencies, 8 for the lowest */
			t = rt_gguf_find_tensor(g, "rope_freqs.weight");
			float fac[8];
			assert_int_equal(t->ne[0], 8);
			memcpy(fac, t->data, sizeof(fac));
			assert_true(fac[0] == 1.0f && fac[7] == 8.0f);
		}
		size_t n_tensors = rt_gguf_n_tensors(g);
		rt_gguf_free(g);
		/* Same arguments, same bytes. */
		char out2[720];
		snprintf(out2, sizeof(out2), "%s.again", out);
		snprintf(cmd, sizeof(cmd),
			 "'%s' --arch %s --vocab tiny --dim 64 --layers 2 --heads 4 --kv-heads 2 "
			 "--ffn 96 --ctx 512 --type q8_0 --seed 3 %s -o '%s' && cmp -s '%s' '%s'",
			 exe, archs[a], a == 0 ? "--rope-scaling llama3" : "--tie", out2, out, out2);
		assert_int_equal(system(cmd), 0);
		assert_int_equal(n_tensors, a == 0 ? 2 + 2 * 9 + 2 : a == 1 ? 1 + 2 * 12 + 1 : 1 + 2 * 11 + 1);
	}
	char cmd[800];
	snprintf(cmd, sizeof(cmd), "'%s' --arch gpt9 --vocab tiny -o /dev/null 2>/dev/null", exe);
	assert_int_not_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kv_roundtrip),
		cmocka_unit_test(test_tensor_roundtrip),
		cmocka_unit_test(test_quant_known_values),
		cmocka_unit_test(test_type_table),
		cmocka_unit_test(test_file_write_atomic),
		cmocka_unit_test(test_tensor_errors),
		cmocka_unit_test(test_mkmodel),
	};
	return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
