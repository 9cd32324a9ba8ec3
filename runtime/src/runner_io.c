/* Frame I/O on the runner socket (length prefix + payload). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "flotilla/error.h"
#include "runner_internal.h"

int rt_frame_send(int fd, const struct rt_rmsg *m)
{
	void *buf = NULL;
	size_t len = 0;
	int err = rt_rmsg_encode(m, &buf, &len);
	if (err < 0)
		return err;
	size_t off = 0;
	while (off < len) {
		ssize_t n = send(fd, (const uint8_t *)buf + off, len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = -errno;
			break;
		}
		off += (size_t)n;
	}
	free(buf);
	return err;
}

int rt_frame_fill(int fd, struct rt_frame_reader *r)
{
	const size_t want = 65536;
	if (r->cap - r->len < want) {
		if (r->len + want > (size_t)RT_RMSG_MAX_BYTES + 4 + want)
			return -FL_ETOOBIG;
		size_t nc = r->cap ? r->cap : want;
		while (nc - r->len < want)
			nc *= 2;
		uint8_t *nb = realloc(r->buf, nc);
		if (!nb)
			return -ENOMEM;
		r->buf = nb;
		r->cap = nc;
	}
	for (;;) {
		ssize_t n = read(fd, r->buf + r->len, r->cap - r->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EPIPE;
		r->len += (size_t)n;
		return 0;
	}
}

int rt_frame_next(struct rt_frame_reader *r, struct rt_rmsg **ret_msg)
{
	if (r->len < 4)
		return 0;
	uint32_t n = (uint32_t)r->buf[0] | (uint32_t)r->buf[1] << 8 | (uint32_t)r->buf[2] << 16 |
		     (uint32_t)r->buf[3] << 24;
	if (n == 0)
		return -FL_EPROTO;
	if (n > RT_RMSG_MAX_BYTES)
		return -FL_ETOOBIG;
	if (r->len < 4 + (size_t)n)
		return 0;
	struct rt_rmsg *m = NULL;
	int err = rt_rmsg_decode(r->buf + 4, n, &m);
	if (err < 0)
		return err;
	memmove(r->buf, r->buf + 4 + n, r->len - 4 - n);
	r->len -= 4 + (size_t)n;
	*ret_msg = m;
	return 1;
}

void rt_frame_reader_free(struct rt_frame_reader *r)
{
	free(r->buf);
	r->buf = NULL;
	r->len = r->cap = 0;
}
