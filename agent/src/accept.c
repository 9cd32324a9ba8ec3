/* Acceptance tests run on a staged slot before the switch. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/gguf.h>

const char *const agent_backends[] = {"gguf", NULL};

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && !strcmp(s + n - k, suffix);
}

int agent_acceptance(const struct ota_manifest *m, const char *dir, char *why, size_t why_len)
{
	if (!m->compat.backend || strcmp(m->compat.backend, "gguf") != 0) {
		snprintf(why, why_len, "no acceptance runner for backend %s",
			 m->compat.backend ? m->compat.backend : "(none)");
		return -FL_EACCEPT;
	}
	/* The model must load: every GGUF payload is opened and fully checked
	 * by the runtime's reader (offsets, sizes, types, alignment). */
	size_t n_gguf = 0;
	for (size_t i = 0; i < m->n_files; i++) {
		if (!ends_with(m->files[i].path, ".gguf"))
			continue;
		n_gguf++;
		_cleanup_free_ char *p = fl_path_join(dir, m->files[i].path);
		if (!p)
			return -ENOMEM;
		struct rt_gguf *g = NULL;
		int r = rt_gguf_open(p, &g);
		if (r < 0) {
			snprintf(why, why_len, "%s does not load: %s", m->files[i].path,
				 rt_gguf_last_error());
			return -FL_EACCEPT;
		}
		rt_gguf_free(g);
	}
	if (n_gguf == 0) {
		snprintf(why, why_len, "backend gguf but the bundle has no .gguf file");
		return -FL_EACCEPT;
	}
	if (m->n_tests > 0) {
		/* Prompt tests need the built-in engine's generate loop; until it is
		 * wired in, a bundle that asks for them is refused rather than
		 * passed untested. */
		snprintf(why, why_len, "%zu acceptance prompt(s) need the inference engine, "
			 "which this agent build cannot run yet", m->n_tests);
		return -FL_EACCEPT;
	}
	return 0;
}
