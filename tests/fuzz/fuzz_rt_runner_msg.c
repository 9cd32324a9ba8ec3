/* Fuzz the runner protocol decoder (runner.h): any payload must decode or
 * fail cleanly (no message); what decodes must encode again and decode to
 * the same type, id and strings. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/runner.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	struct rt_rmsg *m = NULL;
	int r = rt_rmsg_decode(buf, size, &m);
	free(buf);
	if (r < 0) {
		if (m)
			abort();
		return 0;
	}
	void *enc = NULL;
	size_t len = 0;
	if (rt_rmsg_encode(m, &enc, &len) < 0 || len < 4)
		abort();
	struct rt_rmsg *m2 = NULL;
	if (rt_rmsg_decode((uint8_t *)enc + 4, len - 4, &m2) < 0)
		abort();
	if (m2->type != m->type || m2->id != m->id || m2->text_len != m->text_len ||
	    (m->text && memcmp(m->text, m2->text, m->text_len)) ||
	    m2->req.n_messages != m->req.n_messages || m2->req.n_stop != m->req.n_stop)
		abort();
	for (size_t i = 0; i < m->req.n_stop; i++)
		if (strcmp(m->req.stop[i], m2->req.stop[i]))
			abort();
	if (m->req.prompt && strcmp(m->req.prompt, m2->req.prompt))
		abort();
	rt_rmsg_free(m2);
	free(enc);
	rt_rmsg_free(m);
	return 0;
}
