/* GGUF reader: a hand-built valid file, then one broken field at a time
 * (truncation at every offset, bad magic/version, counts, string lengths,
 * dims, types, offsets, alignment, overlaps, duplicates, nested arrays) must
 * each give its error code and a message, never a crash; random byte flips
 * must never yield an out-of-bounds tensor. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "flotilla/error.h"
#include "flotilla/gguf.h"

struct bb {
	uint8_t p[8192];
	size_t len;
};

static void put(struct bb *b, const void *d, size_t n)
{
	assert_true(b->len + n <= sizeof(b->p));
	memcpy(b->p + b->len, d, n);
	b->len += n;
}
static void u32(struct bb *b, uint32_t v) { put(b, &v, 4); }
static void u64(struct bb *b, uint64_t v) { put(b, &v, 8); }
static void str(struct bb *b, const char *s)
{
	u64(b, strlen(s));
	put(b, s, strlen(s));
}

struct tspec {
	const char *name;
	uint32_t n_dims;
	uint64_t ne[5];
	uint32_t type;
	uint64_t offset;
};

struct fspec {
	uint32_t magic, version;
	uint64_t n_tensors, n_kv; /* written as is */
	struct tspec t[2];
	size_t nt;
	int align;              /* 0: no general.alignment kv */
	uint32_t align_type;    /* its value type */
	uint64_t str_len;       /* 0: true length of the arch string */
	bool dup_key;
	uint32_t kv_type;       /* type of the second kv "x.val" (default u32) */
	uint32_t arr_type;      /* when kv_type is ARRAY */
	uint64_t arr_n;
	uint64_t data_bytes;    /* bytes of data written after the padding */
};

static struct fspec base(void)
{
	struct fspec f = {
		.magic = RT_GGUF_MAGIC, .version = 3, .n_tensors = 2, .n_kv = 2,
		.t = {{"a", 2, {32, 2}, RT_GGML_TYPE_F32, 0}, {"b", 1, {32}, RT_GGML_TYPE_Q8_0, 256}},
		.nt = 2, .align_type = RT_GGUF_U32, .kv_type = RT_GGUF_U32, .data_bytes = 256 + 34,
	};
	return f;
}

static void build(const struct fspec *f, struct bb *b)
{
	b->len = 0;
	u32(b, f->magic);
	u32(b, f->version);
	u64(b, f->n_tensors);
	u64(b, f->n_kv + (f->align ? 1 : 0) + (f->dup_key ? 1 : 0));
	str(b, "general.architecture");
	u32(b, RT_GGUF_STRING);
	u64(b, f->str_len ? f->str_len : 5);
	put(b, "llama", 5);
	str(b, "x.val");
	u32(b, f->kv_type);
	if (f->kv_type == RT_GGUF_ARRAY) {
		u32(b, f->arr_type);
		u64(b, f->arr_n);
		for (uint64_t i = 0; i < f->arr_n && i < 4; i++)
			u32(b, (uint32_t)i);
	} else {
		u32(b, 7);
	}
	if (f->dup_key) {
		str(b, "x.val");
		u32(b, RT_GGUF_U32);
		u32(b, 8);
	}
	if (f->align) {
		str(b, "general.alignment");
		u32(b, f->align_type);
		u32(b, (uint32_t)f->align);
	}
	for (size_t i = 0; i < f->nt; i++) {
		const struct tspec *t = &f->t[i];
		str(b, t->name);
		u32(b, t->n_dims);
		for (uint32_t d = 0; d < t->n_dims && d < 5; d++)
			u64(b, t->ne[d]);
		u32(b, t->type);
		u64(b, t->offset);
	}
	uint32_t a = f->align > 0 ? (uint32_t)f->align : 32;
	if (f->align && ((a & (a - 1)) || a > 1024))
		a = 32; /* invalid alignments: the reader must refuse before the data */
	while (b->len % a)
		b->p[b->len++] = 0;
	assert_true(b->len + f->data_bytes <= sizeof(b->p));
	for (uint64_t i = 0; i < f->data_bytes; i++)
		b->p[b->len++] = (uint8_t)i;
}

static int open_spec(const struct fspec *f, struct rt_gguf **g)
{
	static struct bb b;
	build(f, &b);
	*g = NULL;
	int r = rt_gguf_open_memory(b.p, b.len, g);
	if (r < 0) {
		assert_null(*g);
		assert_true(strlen(rt_gguf_last_error()) > 0);
	}
	return r;
}

static void expect(const struct fspec *f, int err, const char *msg_part)
{
	struct rt_gguf *g;
	int r = open_spec(f, &g);
	if (r != err)
		fail_msg("expected %d got %d (%s)", err, r, rt_gguf_last_error());
	if (msg_part && !strstr(rt_gguf_last_error(), msg_part))
		fail_msg("message '%s' lacks '%s'", rt_gguf_last_error(), msg_part);
	rt_gguf_free(g);
}

static void test_valid(void **state)
{
	struct fspec f = base();
	struct rt_gguf *g;
	assert_int_equal(open_spec(&f, &g), 0);
	assert_int_equal(rt_gguf_n_kv(g), 2);
	assert_int_equal(rt_gguf_n_tensors(g), 2);
	assert_int_equal(rt_gguf_alignment(g), 32);
	const char *s;
	assert_int_equal(rt_gguf_get_str(g, "general.architecture", &s, NULL), 0);
	assert_string_equal(s, "llama");
	const struct rt_gguf_tensor *b = rt_gguf_find_tensor(g, "b");
	assert_non_null(b);
	assert_int_equal(b->size, 34);
	assert_int_equal(b->offset, 256);
	assert_int_equal(rt_gguf_data_offset(g) % 32, 0);
	assert_ptr_equal(b->data, (const uint8_t *)rt_gguf_data(g) + 256);
	assert_int_equal(((const uint8_t *)b->data)[0], 0); /* byte 256 of the data = (uint8_t)256 */
	rt_gguf_free(g);
	/* v2 is accepted too. */
	f.version = 2;
	assert_int_equal(open_spec(&f, &g), 0);
	assert_int_equal(rt_gguf_version(g), 2);
	rt_gguf_free(g);
}

static void test_truncated_everywhere(void **state)
{
	struct fspec f = base();
	struct bb b;
	build(&f, &b);
	for (size_t len = 0; len < b.len; len++) {
		uint8_t *copy = malloc(len ? len : 1);
		memcpy(copy, b.p, len);
		struct rt_gguf *g = NULL;
		int r = rt_gguf_open_memory(copy, len, &g);
		if (r != -FL_EFORMAT)
			fail_msg("truncated to %zu: %d (%s)", len, r, rt_gguf_last_error());
		assert_null(g);
		free(copy);
	}
}

static void test_header_errors(void **state)
{
	struct fspec f = base();
	f.magic = 0x46554746;
	expect(&f, -FL_EFORMAT, "magic");
	f = base();
	f.version = 1;
	expect(&f, -FL_EUNSUPPORTED, "version");
	f.version = 4;
	expect(&f, -FL_EUNSUPPORTED, "version");
	f = base();
	f.n_tensors = 1ull << 40;
	expect(&f, -FL_ETOOBIG, "limit");
	f = base();
	f.n_kv = 70000;
	expect(&f, -FL_ETOOBIG, NULL);
	f = base();
	f.n_kv = 60000; /* under the limit but cannot fit the file */
	expect(&f, -FL_EFORMAT, "fit");
	f = base();
	f.n_tensors = 3; /* claims one more record than present */
	expect(&f, -FL_EFORMAT, NULL);
}

static void test_string_errors(void **state)
{
	struct fspec f = base();
	f.str_len = 100000; /* within the string limit, past the end */
	expect(&f, -FL_EFORMAT, "truncated");
	f.str_len = 1ull << 40;
	expect(&f, -FL_ETOOBIG, "limit");
	f.str_len = UINT64_MAX;
	expect(&f, -FL_ETOOBIG, NULL);
	f = base();
	f.dup_key = true;
	expect(&f, -FL_EFORMAT, "duplicate key");
	/* A NUL inside a key (lookups are by C string). */
	f = base();
	static struct bb b;
	build(&f, &b);
	uint8_t *k = memmem(b.p, b.len, "x.val", 5);
	assert_non_null(k);
	k[1] = '\0';
	struct rt_gguf *g = NULL;
	assert_int_equal(rt_gguf_open_memory(b.p, b.len, &g), -FL_EFORMAT);
	assert_non_null(strstr(rt_gguf_last_error(), "NUL"));
	assert_null(g);
}

static void test_kv_type_errors(void **state)
{
	struct fspec f = base();
	f.kv_type = 13;
	expect(&f, -FL_EFORMAT, "unknown value type");
	f.kv_type = RT_GGUF_ARRAY;
	f.arr_type = RT_GGUF_ARRAY;
	f.arr_n = 1;
	expect(&f, -FL_EFORMAT, "nested");
	f.arr_type = RT_GGUF_U32;
	f.arr_n = 1u << 30;
	expect(&f, -FL_ETOOBIG, "limit");
	f.arr_n = 1000; /* 4000 bytes claimed, far fewer present */
	expect(&f, -FL_EFORMAT, NULL);
	f.arr_type = RT_GGUF_STRING;
	f.arr_n = 100000;
	expect(&f, -FL_EFORMAT, "cannot fit");
	f.arr_type = RT_GGUF_U32;
	f.arr_n = 4;
	struct rt_gguf *g;
	assert_int_equal(open_spec(&f, &g), 0);
	int32_t v[4];
	assert_int_equal(rt_gguf_get_arr_i32(g, "x.val", v, 4), 0);
	assert_int_equal(v[3], 3);
	rt_gguf_free(g);
}

static void test_tensor_errors(void **state)
{
	struct fspec f = base();
	f.t[1].n_dims = 5;
	expect(&f, -FL_EFORMAT, "n_dims");
	f.t[1].n_dims = 0;
	expect(&f, -FL_EFORMAT, "n_dims");
	f = base();
	f.t[0].ne[1] = 0;
	expect(&f, -FL_EFORMAT, "dimension");
	f.t[0].ne[1] = 1ull << 63; /* negative as int64 */
	expect(&f, -FL_EFORMAT, "dimension");
	f = base();
	f.t[0].ne[0] = 1ull << 40;
	f.t[0].ne[1] = 1ull << 40; /* product overflows */
	expect(&f, -FL_EFORMAT, "overflow");
	f = base();
	f.t[0].ne[0] = 1ull << 61;
	f.t[0].ne[1] = 2; /* 2^62 elements, bytes overflow */
	expect(&f, -FL_EFORMAT, NULL);
	f = base();
	f.t[1].type = 77;
	expect(&f, -FL_EUNSUPPORTED, "type 77");
	f.t[1].type = 4; /* removed Q4_2 */
	expect(&f, -FL_EUNSUPPORTED, "type 4");
	f = base();
	f.t[1].ne[0] = 48; /* Q8_0 rows must be multiples of 32 */
	expect(&f, -FL_EFORMAT, "multiple");
	f = base();
	f.t[1].offset = 288; /* aligned but runs past the end */
	expect(&f, -FL_EFORMAT, "past the end");
	f.t[1].offset = UINT64_MAX - 31; /* offset + size overflows */
	expect(&f, -FL_EFORMAT, "past the end");
	f = base();
	f.t[1].offset = 260;
	expect(&f, -FL_EFORMAT, "not aligned");
	f = base();
	f.t[1].offset = 128; /* inside tensor a */
	expect(&f, -FL_EFORMAT, "overlap");
	f = base();
	f.t[1].name = "a";
	expect(&f, -FL_EFORMAT, "duplicate tensor");
	f = base();
	f.t[1].name = "";
	expect(&f, -FL_EFORMAT, "name");
	f = base();
	f.data_bytes = 256 + 33; /* last tensor one byte short */
	expect(&f, -FL_EFORMAT, "past the end");
}

static void test_alignment(void **state)
{
	struct fspec f = base();
	f.align = 64;
	f.t[1].offset = 256;
	struct rt_gguf *g;
	assert_int_equal(open_spec(&f, &g), 0);
	assert_int_equal(rt_gguf_alignment(g), 64);
	assert_int_equal(rt_gguf_data_offset(g) % 64, 0);
	rt_gguf_free(g);
	f.t[1].offset = 288; /* 32-aligned, not 64 */
	f.data_bytes = 288 + 34;
	expect(&f, -FL_EFORMAT, "not aligned");
	f = base();
	f.align = 48;
	expect(&f, -FL_EFORMAT, "power of two");
	f.align = 0;
	f.align_type = RT_GGUF_U32;
	f.align = 1 << 20; /* over the maximum */
	expect(&f, -FL_EFORMAT, "power of two");
	f = base();
	f.align = 32;
	f.align_type = RT_GGUF_I32;
	expect(&f, -FL_EFORMAT, "u32");
}

static void test_files(void **state)
{
	struct rt_gguf *g = NULL;
	assert_int_equal(rt_gguf_open("/nonexistent/x.gguf", &g), -ENOENT);
	assert_true(strstr(rt_gguf_last_error(), "/nonexistent/x.gguf") != NULL);
	assert_int_equal(rt_gguf_open("/", &g), -EINVAL);
	const char *base_dir = getenv("FL_TEST_TMPDIR");
	char path[512];
	snprintf(path, sizeof(path), "%s/reader.%d.gguf", base_dir ? base_dir : "/tmp", (int)getpid());
	mkdir(base_dir ? base_dir : "/tmp", 0755);
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	fclose(fp);
	assert_int_equal(rt_gguf_open(path, &g), -FL_EFORMAT); /* empty */
	struct fspec f = base();
	struct bb b;
	build(&f, &b);
	fp = fopen(path, "wb");
	assert_int_equal(fwrite(b.p, 1, b.len, fp), b.len);
	fclose(fp);
	assert_int_equal(rt_gguf_open(path, &g), 0);
	assert_int_equal(rt_gguf_file_size(g), b.len);
	const struct rt_gguf_tensor *t = rt_gguf_find_tensor(g, "b");
	assert_memory_equal(t->data, b.p + rt_gguf_data_offset(g) + 256, 34);
	assert_int_equal((uintptr_t)t->data % 32, 0); /* mmap base is page aligned */
	rt_gguf_free(g);
	unlink(path);
	assert_null(NULL);
	rt_gguf_free(NULL);
}

/* Flip random bytes: whatever opens must describe tensors inside the buffer. */
static void test_random_mutations(void **state)
{
	struct fspec f = base();
	struct bb b;
	build(&f, &b);
	uint64_t s = 12345;
	int opened = 0;
	for (int iter = 0; iter < 20000; iter++) {
		uint8_t copy[8192];
		memcpy(copy, b.p, b.len);
		int flips = 1 + iter % 4;
		for (int k = 0; k < flips; k++) {
			s ^= s << 13;
			s ^= s >> 7;
			s ^= s << 17;
			copy[(s >> 8) % b.len] = (uint8_t)(s >> 40);
		}
		struct rt_gguf *g = NULL;
		if (rt_gguf_open_memory(copy, b.len, &g) == 0) {
			opened++;
			for (size_t i = 0; i < rt_gguf_n_tensors(g); i++) {
				const struct rt_gguf_tensor *t = rt_gguf_tensor(g, i);
				const uint8_t *p = t->data;
				assert_true(p >= copy && p + t->size <= copy + b.len);
			}
			for (size_t i = 0; i < rt_gguf_n_kv(g); i++)
				assert_non_null(rt_gguf_kv_key(g, i));
			rt_gguf_free(g);
		}
	}
	assert_true(opened > 0); /* flips in the data section still open */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_truncated_everywhere),
		cmocka_unit_test(test_header_errors),
		cmocka_unit_test(test_string_errors),
		cmocka_unit_test(test_kv_type_errors),
		cmocka_unit_test(test_tensor_errors),
		cmocka_unit_test(test_alignment),
		cmocka_unit_test(test_files),
		cmocka_unit_test(test_random_mutations),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
