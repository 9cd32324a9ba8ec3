/* Framing helpers shared by the runner and its supervisor (not public). */
#ifndef FLOTILLA_RUNNER_INTERNAL_H
#define FLOTILLA_RUNNER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "flotilla/runner.h"

struct rt_frame_reader {
	uint8_t *buf;
	size_t len, cap;
};

/* Encode M and write the whole frame to FD (blocking; EINTR retried;
 * MSG_NOSIGNAL). Errors: rt_rmsg_encode's, -EPIPE and other send errors. */
int rt_frame_send(int fd, const struct rt_rmsg *m);

/* One read() from FD into R. 0 on data, -EPIPE at end of file, -EAGAIN,
 * other read errors, -ENOMEM. */
int rt_frame_fill(int fd, struct rt_frame_reader *r);

/* Next complete message from R: 1 and *RET_MSG, 0 if more bytes are needed,
 * or a negative error (bad length prefix, rt_rmsg_decode's). */
int rt_frame_next(struct rt_frame_reader *r, struct rt_rmsg **ret_msg);

void rt_frame_reader_free(struct rt_frame_reader *r);

/* Generated text on the wire is valid UTF-8 without NUL (docs/serving.md):
 * rt_text_clean copies S[0..N) to a new NUL-terminated buffer with every NUL
 * byte and every invalid or truncated UTF-8 sequence replaced by U+FFFD
 * (*RET_LEN its length; NULL on ENOMEM). rt_utf8_tail is the number of bytes
 * (0-3) at the end of S[0..N) that begin a multi-byte sequence still missing
 * bytes, which a streaming sender holds back until the rest arrives. */
char *rt_text_clean(const char *s, size_t n, size_t *ret_len);
size_t rt_utf8_tail(const char *s, size_t n);

#endif
