#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"
#include <flotilla/sdnotify.h>

/* A bound datagram socket standing in for systemd's notify socket. NAME is a
 * path, or "@name" for an abstract socket. Returns the fd. */
static int listen_at(const char *name)
{
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	size_t n = strlen(name);
	assert_true(n < sizeof(a.sun_path));
	memcpy(a.sun_path, name, n);
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	if (name[0] == '@') {
		a.sun_path[0] = '\0';
		len--;
	}
	assert_int_equal(bind(fd, (struct sockaddr *)&a, len), 0);
	return fd;
}

/* The next datagram on FD, NUL-terminated, or "" when none is waiting. */
static void recv_one(int fd, char *buf, size_t size)
{
	ssize_t k = recv(fd, buf, size - 1, MSG_DONTWAIT);
	buf[k < 0 ? 0 : k] = '\0';
}

static void test_unset_is_noop(void **state)
{
	(void)state;
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(fl_sd_notify("READY=1"), 0);
	setenv("NOTIFY_SOCKET", "", 1);
	assert_int_equal(fl_sd_notify("READY=1"), 0);
	/* Bad states are refused even outside systemd: a caller bug shows. */
	assert_int_equal(fl_sd_notify(NULL), -EINVAL);
	assert_int_equal(fl_sd_notify(""), -EINVAL);
	unsetenv("NOTIFY_SOCKET");
}

static void test_path_socket(void **state)
{
	(void)state;
	char *dir = fl_test_mkdtemp("sdnotify");
	assert_non_null(dir);
	char *path = fl_path_join(dir, "notify");
	int fd = listen_at(path);
	setenv("NOTIFY_SOCKET", path, 1);
	char buf[8192];

	assert_int_equal(fl_sd_notify("READY=1\nSTATUS=recovered"), 1);
	recv_one(fd, buf, sizeof(buf));
	assert_string_equal(buf, "READY=1\nSTATUS=recovered");
	assert_int_equal(fl_sd_notify("WATCHDOG=1"), 1);
	recv_one(fd, buf, sizeof(buf));
	assert_string_equal(buf, "WATCHDOG=1");
	assert_int_equal(fl_sd_notify("STOPPING=1"), 1);
	recv_one(fd, buf, sizeof(buf));
	assert_string_equal(buf, "STOPPING=1");

	/* Largest state goes through whole; one byte more is refused unsent. */
	char *big = malloc(FL_SD_NOTIFY_MAX_BYTES + 2);
	assert_non_null(big);
	memset(big, 'x', FL_SD_NOTIFY_MAX_BYTES + 1);
	memcpy(big, "STATUS=", 7);
	big[FL_SD_NOTIFY_MAX_BYTES] = '\0';
	assert_int_equal(fl_sd_notify(big), 1);
	recv_one(fd, buf, sizeof(buf));
	assert_int_equal(strlen(buf), FL_SD_NOTIFY_MAX_BYTES);
	big[FL_SD_NOTIFY_MAX_BYTES] = 'x';
	big[FL_SD_NOTIFY_MAX_BYTES + 1] = '\0';
	assert_int_equal(fl_sd_notify(big), -EINVAL);
	recv_one(fd, buf, sizeof(buf));
	assert_string_equal(buf, "");
	free(big);

	/* Nobody listening any more: the error comes back, no crash. */
	close(fd);
	unlink(path);
	assert_int_equal(fl_sd_notify("READY=1"), -ENOENT);
	unsetenv("NOTIFY_SOCKET");
	fl_rm_rf(dir);
	free(path);
	free(dir);
}

static void test_abstract_socket(void **state)
{
	(void)state;
	char name[64];
	snprintf(name, sizeof(name), "@flotilla-test-sdnotify-%d", (int)getpid());
	int fd = listen_at(name);
	setenv("NOTIFY_SOCKET", name, 1);
	char buf[256];
	assert_int_equal(fl_sd_notify("READY=1"), 1);
	recv_one(fd, buf, sizeof(buf));
	assert_string_equal(buf, "READY=1");
	close(fd);
	/* Abstract name with no listener. */
	assert_int_equal(fl_sd_notify("READY=1"), -ECONNREFUSED);
	unsetenv("NOTIFY_SOCKET");
}

static void test_bad_socket_values(void **state)
{
	(void)state;
	setenv("NOTIFY_SOCKET", "relative/path", 1);
	assert_int_equal(fl_sd_notify("READY=1"), -EINVAL);
	setenv("NOTIFY_SOCKET", "@", 1);
	assert_int_equal(fl_sd_notify("READY=1"), -EINVAL);
	setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
	assert_int_equal(fl_sd_notify("READY=1"), -EAFNOSUPPORT);
	char longp[200];
	memset(longp, 'a', sizeof(longp) - 1);
	longp[0] = '/';
	longp[sizeof(longp) - 1] = '\0';
	setenv("NOTIFY_SOCKET", longp, 1);
	assert_int_equal(fl_sd_notify("READY=1"), -EINVAL);
	unsetenv("NOTIFY_SOCKET");
}

static void test_watchdog_usec(void **state)
{
	(void)state;
	uint64_t us = 7;
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	assert_int_equal(fl_sd_watchdog_usec(&us), 0);
	assert_int_equal(us, 7);

	setenv("WATCHDOG_USEC", "30000000", 1);
	assert_int_equal(fl_sd_watchdog_usec(&us), 1);
	assert_int_equal(us, 30000000);

	char pid[32];
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	us = 7;
	assert_int_equal(fl_sd_watchdog_usec(&us), 1);
	assert_int_equal(us, 30000000);
	snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	us = 7;
	assert_int_equal(fl_sd_watchdog_usec(&us), 0);
	assert_int_equal(us, 7);

	setenv("WATCHDOG_PID", "12x", 1);
	assert_int_equal(fl_sd_watchdog_usec(&us), -EINVAL);
	unsetenv("WATCHDOG_PID");
	setenv("WATCHDOG_USEC", "0", 1);
	assert_int_equal(fl_sd_watchdog_usec(&us), -EINVAL);
	setenv("WATCHDOG_USEC", "-5", 1);
	assert_int_equal(fl_sd_watchdog_usec(&us), -EINVAL);
	setenv("WATCHDOG_USEC", "abc", 1);
	assert_int_equal(fl_sd_watchdog_usec(&us), -EINVAL);
	assert_int_equal(us, 7);
	unsetenv("WATCHDOG_USEC");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_unset_is_noop),
		cmocka_unit_test(test_path_socket),
		cmocka_unit_test(test_abstract_socket),
		cmocka_unit_test(test_bad_socket_values),
		cmocka_unit_test(test_watchdog_usec),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
