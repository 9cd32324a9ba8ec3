/* finetune: make a "fine-tuned" copy of a GGUF model for demos and
 * benchmarks: every tensor of the chosen layers gets a small seeded delta
 * (as a merged LoRA would), everything else is copied byte for byte.
 *
 *   finetune IN.gguf OUT.gguf --layers 0,2 [--match attn_] [--seed 7] [--scale 0.002]
 *
 * Prints "changed_tensors N changed_bytes B total_tensor_bytes T". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/ggml_types.h>
#include <flotilla/gguf.h>
#include <flotilla/gguf_write.h>
#include <flotilla/util.h>

static uint64_t rng_state;

static double rng_uniform(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (double)(rng_state >> 11) / 9007199254740992.0;
}

static bool layer_selected(const char *name, const bool *layers, int n_layers)
{
	int l;
	if (sscanf(name, "blk.%d.", &l) != 1 || l < 0 || l >= n_layers)
		return false;
	return layers[l];
}

static int usage(void)
{
	fputs("usage: finetune IN.gguf OUT.gguf --layers L[,L...] [--match TEXT] [--seed N] "
	      "[--scale S]\n",
	      stderr);
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 5)
		return usage();
	const char *in = argv[1], *out = argv[2], *match = NULL;
	enum { MAX_LAYERS = 1024 };
	static bool layers[MAX_LAYERS];
	int64_t seed = 7;
	double scale = 0.002;
	for (int i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "--layers") && i + 1 < argc) {
			char *list = strdup(argv[++i]), *save = NULL;
			for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
				int64_t l;
				if (fl_parse_i64(t, 0, MAX_LAYERS - 1, &l) < 0) {
					free(list);
					return usage();
				}
				layers[l] = true;
			}
			free(list);
		} else if (!strcmp(argv[i], "--match") && i + 1 < argc) {
			match = argv[++i];
		} else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
			if (fl_parse_i64(argv[++i], 0, INT64_MAX, &seed) < 0)
				return usage();
		} else if (!strcmp(argv[i], "--scale") && i + 1 < argc) {
			scale = strtod(argv[++i], NULL);
		} else {
			return usage();
		}
	}
	rng_state = (uint64_t)seed * 0x9e3779b97f4a7c15ull + 1;

	struct rt_gguf *g = NULL;
	int r = rt_gguf_open(in, &g);
	if (r < 0) {
		fprintf(stderr, "finetune: %s: %s\n", in, rt_gguf_last_error());
		return 1;
	}
	struct rt_gguf_writer *w = NULL;
	if ((r = rt_gguf_writer_new(&w)) < 0 ||
	    (r = rt_gguf_writer_set_alignment(w, rt_gguf_alignment(g))) < 0)
		goto fail;
	for (size_t i = 0; i < rt_gguf_n_kv(g); i++) {
		if (!strcmp(rt_gguf_kv_key(g, i), "general.alignment"))
			continue; /* set above */
		if ((r = rt_gguf_add_kv_from(w, g, i)) < 0)
			goto fail;
	}
	uint64_t changed = 0, total = 0, n_changed = 0;
	for (size_t i = 0; i < rt_gguf_n_tensors(g); i++) {
		const struct rt_gguf_tensor *t = rt_gguf_tensor(g, i);
		total += t->size;
		bool change = layer_selected(t->name, layers, MAX_LAYERS) &&
			      (!match || strstr(t->name, match)) && t->n_dims >= 2 &&
			      rt_ggml_type_can_dequantize(t->type);
		if (!change) {
			r = rt_gguf_add_tensor_raw(w, t->name, t->type, t->n_dims, t->ne, t->data,
						   t->size);
		} else {
			float *f = malloc(t->n_elements * sizeof(float));
			if (!f) {
				r = -ENOMEM;
				goto fail;
			}
			r = rt_dequantize_row_ref(t->type, t->data, f, (int64_t)t->n_elements);
			for (uint64_t k = 0; r == 0 && k < t->n_elements; k++)
				f[k] += (float)((rng_uniform() * 2.0 - 1.0) * scale);
			if (r == 0)
				r = rt_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, f);
			free(f);
			changed += t->size;
			n_changed++;
		}
		if (r < 0)
			goto fail;
	}
	if ((r = rt_gguf_writer_write(w, out)) < 0)
		goto fail;
	printf("changed_tensors %llu changed_bytes %llu total_tensor_bytes %llu\n",
	       (unsigned long long)n_changed, (unsigned long long)changed,
	       (unsigned long long)total);
	rt_gguf_writer_free(w);
	rt_gguf_free(g);
	return 0;
fail:
	fprintf(stderr, "finetune: %s\n", fl_strerror(r));
	rt_gguf_writer_free(w);
	rt_gguf_free(g);
	return 1;
}
