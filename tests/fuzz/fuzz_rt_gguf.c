/* Fuzz the GGUF reader: any bytes must open or fail cleanly (with a message
 * and no handle); what opens must describe only tensors inside the input,
 * answer every getter without crashing, dequantize the first block of each
 * tensor it supports, and load a tokenizer or refuse it cleanly. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/ggml_types.h>
#include <flotilla/gguf.h>
#include <flotilla/tokenizer.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Copy so that a read past the input is caught by ASan. */
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	struct rt_gguf *g = NULL;
	int r = rt_gguf_open_memory(buf, size, &g);
	if (r < 0) {
		if (g || !rt_gguf_last_error()[0])
			abort();
		free(buf);
		return 0;
	}
	for (size_t i = 0; i < rt_gguf_n_tensors(g); i++) {
		const struct rt_gguf_tensor *t = rt_gguf_tensor(g, i);
		const uint8_t *p = t->data;
		if (p < buf || t->size > size || p + t->size > buf + size || t->n_dims < 1 ||
		    t->n_dims > 4 || rt_gguf_find_tensor(g, t->name) != t)
			abort();
		uint32_t be, bb;
		if (rt_ggml_type_geometry(t->type, &be, &bb) < 0)
			abort();
		if (rt_ggml_type_can_dequantize(t->type) && t->size >= bb) {
			float out[256];
			if (rt_dequantize_row_ref(t->type, t->data, out, be) != 0)
				abort();
		}
	}
	for (size_t i = 0; i < rt_gguf_n_kv(g); i++) {
		const char *key = rt_gguf_kv_key(g, i);
		if (!key || rt_gguf_find_kv(g, key) != (int)i)
			abort();
		uint32_t u;
		int32_t s;
		uint64_t u64;
		float f;
		bool b;
		const char *str;
		size_t len;
		enum rt_gguf_vtype at;
		uint64_t n;
		(void)rt_gguf_get_u32(g, key, &u);
		(void)rt_gguf_get_i32(g, key, &s);
		(void)rt_gguf_get_u64(g, key, &u64);
		(void)rt_gguf_get_f32(g, key, &f);
		(void)rt_gguf_get_bool(g, key, &b);
		(void)rt_gguf_get_str(g, key, &str, &len);
		if (rt_gguf_get_arr_n(g, key, &at, &n) == 0 && n > 0) {
			(void)rt_gguf_get_arr_str(g, key, n - 1, &str, &len);
			if (n <= 4096) {
				float *fo = malloc(n * sizeof(float));
				int32_t *io = malloc(n * sizeof(int32_t));
				if (fo && io) {
					(void)rt_gguf_get_arr_f32(g, key, fo, n);
					(void)rt_gguf_get_arr_i32(g, key, io, n);
				}
				free(fo);
				free(io);
			}
		}
	}
	struct rt_tokenizer *t = NULL;
	if (rt_tokenizer_load(g, &t) == 0) {
		int32_t *ids;
		size_t n;
		if (rt_tokenize(t, "Hello <s> world \xff!", 18, true, true, &ids, &n) == 0) {
			char *text;
			if (rt_detokenize(t, ids, n, true, true, &text, NULL) == 0)
				free(text);
			free(ids);
		}
		rt_tokenizer_free(t);
	} else if (t) {
		abort();
	}
	rt_gguf_free(g);
	free(buf);
	return 0;
}
