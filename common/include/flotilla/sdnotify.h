/* systemd service notification (sd_notify(3) protocol) without libsystemd.
 *
 * A service started with Type=notify finds the manager's datagram socket in
 * $NOTIFY_SOCKET (a path, or "@name" for an abstract socket) and sends it
 * newline-separated assignments: "READY=1", "WATCHDOG=1", "STOPPING=1",
 * "STATUS=...". Outside systemd the variable is unset and every call is a
 * no-op returning 0, so callers need no "am I under systemd" test.
 * Thread-safe (no shared state; reads the environment). */
#ifndef FLOTILLA_SDNOTIFY_H
#define FLOTILLA_SDNOTIFY_H

#include <stdint.h>

/* Longest STATE accepted, in bytes (systemd itself takes up to 4 KiB as one
 * datagram without file descriptors). */
#define FL_SD_NOTIFY_MAX_BYTES 4096

/* Send STATE (e.g. "READY=1\nSTATUS=serving") to $NOTIFY_SOCKET.
 * Returns 1 when sent, 0 when NOTIFY_SOCKET is unset or empty (not run by
 * systemd), -EINVAL for a NULL/empty STATE or one longer than
 * FL_SD_NOTIFY_MAX_BYTES or a NOTIFY_SOCKET that is neither an absolute path
 * nor "@abstract" or is too long for sockaddr_un, -EAFNOSUPPORT for other
 * address kinds (vsock:), or the negative errno of socket()/sendto()
 * (-ENOENT, -ECONNREFUSED when nobody listens). Never blocks for long: the
 * datagram is sent with MSG_DONTWAIT. */
int fl_sd_notify(const char *state);

/* Watchdog interval that systemd asked for (WatchdogSec= sets WATCHDOG_USEC
 * and WATCHDOG_PID). Returns 1 and the interval in *RET_USEC when the
 * watchdog is on for this process, 0 when it is off (unset, or WATCHDOG_PID
 * names another process), -EINVAL when a variable is malformed or zero.
 * Send "WATCHDOG=1" at least every *RET_USEC / 2. */
int fl_sd_watchdog_usec(uint64_t *ret_usec);

#endif
