/* sd_notify(3) by hand: one AF_UNIX datagram to $NOTIFY_SOCKET. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <flotilla/cleanup.h>
#include <flotilla/sdnotify.h>
#include <flotilla/util.h>

/* Fill ADDR from $NOTIFY_SOCKET's value; returns the address length. */
static int notify_addr(const char *e, struct sockaddr_un *addr, socklen_t *ret_len)
{
	size_t n = strlen(e);
	if (e[0] != '/' && e[0] != '@')
		return strncmp(e, "vsock:", 6) == 0 ? -EAFNOSUPPORT : -EINVAL;
	/* A path needs its terminating NUL inside sun_path; an abstract name
	 * ('@' becomes the leading NUL) may fill it. */
	if (n < 2 || n > sizeof(addr->sun_path) - (e[0] == '/'))
		return -EINVAL;
	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	memcpy(addr->sun_path, e, n);
	if (e[0] == '@')
		addr->sun_path[0] = '\0';
	*ret_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (e[0] == '/'));
	return 0;
}

int fl_sd_notify(const char *state)
{
	if (!state || !state[0] || strnlen(state, FL_SD_NOTIFY_MAX_BYTES + 1) > FL_SD_NOTIFY_MAX_BYTES)
		return -EINVAL;
	const char *e = getenv("NOTIFY_SOCKET");
	if (!e || !e[0])
		return 0;
	struct sockaddr_un addr;
	socklen_t alen;
	int r = notify_addr(e, &addr, &alen);
	if (r < 0)
		return r;
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	size_t len = strlen(state);
	ssize_t k = sendto(fd, state, len, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&addr, alen);
	if (k < 0)
		return -errno;
	return (size_t)k == len ? 1 : -EMSGSIZE;
}

int fl_sd_watchdog_usec(uint64_t *ret_usec)
{
	const char *u = getenv("WATCHDOG_USEC");
	if (!u || !u[0])
		return 0;
	const char *p = getenv("WATCHDOG_PID");
	if (p && p[0]) {
		int64_t pid;
		if (fl_parse_i64(p, 1, INT32_MAX, &pid) < 0)
			return -EINVAL;
		if ((pid_t)pid != getpid())
			return 0;
	}
	int64_t usec;
	if (fl_parse_i64(u, 1, INT64_MAX, &usec) < 0)
		return -EINVAL;
	*ret_usec = (uint64_t)usec;
	return 1;
}
