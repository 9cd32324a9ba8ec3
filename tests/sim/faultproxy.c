/* faultproxy: a TCP proxy that injects network faults, for the chaos tests
 * (docs/scale.md "Chaos").
 *
 *   faultproxy --to HOST:PORT [--listen PORT] [--port-file F] [--ctl FILE]
 *              [--latency-ms N] [--bw BYTES_PER_S] [--reset-per-min F] [--seed N]
 *
 * Every accepted connection gets its own upstream connection. Faults:
 *   latency_ms      each read segment is held this long before it is passed on
 *   bw              bytes/s per connection and direction (token bucket; 0: none)
 *   reset_per_min   probability per minute that a connection is reset (RST
 *                   both ways, SO_LINGER 0), checked every second
 *   mode            pass | blackhole (nothing moves, connections stay open,
 *                   new ones are accepted and held) | reject (every connection
 *                   reset, new ones reset at once)
 * The --ctl file (key = value lines, same names) is re-read when it changes,
 * so a test switches faults on and off while devices are connected. Counters
 * go to stderr on SIGUSR1 and at exit. One thread, poll(); bounded buffers
 * (1 MiB per direction: a full buffer stops reading, TCP pushes back). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 8192
#define BUF_MAX (1 << 20)
#define READ_MAX 65536

enum mode { M_PASS, M_BLACKHOLE, M_REJECT };

struct seg {
	struct seg *next;
	int64_t due;
	size_t len, off;
	char data[];
};

struct dir { /* bytes read from one side, waiting to be written to the other */
	struct seg *head, *tail;
	size_t queued;
	double tokens;
	bool eof; /* the reader side closed: shut down writing when drained */
	bool shut;
};

struct conn {
	int fd[2]; /* 0 client, 1 upstream */
	bool connected; /* upstream connect finished */
	struct dir d[2]; /* d[0]: client -> upstream, d[1]: upstream -> client */
};

static struct conn *conns[MAX_CONNS];
static int n_conns;
static struct {
	int64_t latency_ms, bw;
	double reset_per_min;
	enum mode mode;
} F;
static struct sockaddr_in up;
static volatile sig_atomic_t stop, dump;
static uint64_t rng = 88172645463325252ULL;
static struct {
	uint64_t accepted, resets, rejected, bytes[2], closed;
} C;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double rnd01(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) / 9007199254740992.0;
}

static void rst_close(int fd)
{
	if (fd < 0)
		return;
	struct linger l = {1, 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
}

static void conn_free(int i, bool reset)
{
	struct conn *c = conns[i];
	for (int k = 0; k < 2; k++) {
		if (reset)
			rst_close(c->fd[k]);
		else if (c->fd[k] >= 0)
			close(c->fd[k]);
		for (struct seg *s = c->d[k].head, *n; s; s = n) {
			n = s->next;
			free(s);
		}
	}
	free(c);
	conns[i] = conns[--n_conns];
	conns[n_conns] = NULL;
	if (reset)
		C.resets++;
	else
		C.closed++;
}

static int nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void accept_one(int lfd)
{
	int fd = accept(lfd, NULL, NULL);
	if (fd < 0)
		return;
	C.accepted++;
	if (F.mode == M_REJECT || n_conns == MAX_CONNS) {
		C.rejected++;
		rst_close(fd);
		return;
	}
	int one = 1;
	nonblock(fd);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	int u = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (u < 0) {
		rst_close(fd);
		return;
	}
	setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(u, (struct sockaddr *)&up, sizeof(up)) < 0 && errno != EINPROGRESS) {
		rst_close(fd);
		close(u);
		return;
	}
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		rst_close(fd);
		close(u);
		return;
	}
	c->fd[0] = fd;
	c->fd[1] = u;
	conns[n_conns++] = c;
}

/* Read what side K has into d[K]; returns -1 when the connection is gone. */
static int pump_read(struct conn *c, int k, int64_t now)
{
	struct dir *d = &c->d[k];
	if (d->eof || d->queued >= BUF_MAX)
		return 0;
	struct seg *s = malloc(sizeof(*s) + READ_MAX);
	if (!s)
		return 0;
	ssize_t n = read(c->fd[k], s->data, READ_MAX);
	if (n <= 0) {
		free(s);
		if (n == 0) {
			d->eof = true;
			return 0;
		}
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	}
	s->len = (size_t)n;
	s->off = 0;
	s->next = NULL;
	s->due = now + F.latency_ms;
	if (d->tail)
		d->tail->next = s;
	else
		d->head = s;
	d->tail = s;
	d->queued += (size_t)n;
	return 0;
}

static int pump_write(struct conn *c, int k, int64_t now)
{
	struct dir *d = &c->d[k];
	int out = c->fd[1 - k];
	while (d->head && d->head->due <= now) {
		struct seg *s = d->head;
		size_t want = s->len - s->off;
		if (F.bw > 0) {
			if (d->tokens < 1)
				return 0;
			if ((double)want > d->tokens)
				want = (size_t)d->tokens;
		}
		ssize_t n = write(out, s->data + s->off, want);
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		s->off += (size_t)n;
		d->queued -= (size_t)n;
		C.bytes[k] += (uint64_t)n;
		if (F.bw > 0)
			d->tokens -= (double)n;
		if (s->off < s->len)
			return 0;
		d->head = s->next;
		if (!d->head)
			d->tail = NULL;
		free(s);
	}
	if (!d->head && d->eof && !d->shut) {
		shutdown(out, SHUT_WR);
		d->shut = true;
	}
	return 0;
}

static void read_ctl(const char *path, struct timespec *mtime)
{
	struct stat sb;
	if (!path || stat(path, &sb) < 0 ||
	    (sb.st_mtim.tv_sec == mtime->tv_sec && sb.st_mtim.tv_nsec == mtime->tv_nsec))
		return;
	*mtime = sb.st_mtim;
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	char line[256], key[64], val[64];
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, " %63[a-z_] = %63s", key, val) != 2)
			continue;
		if (!strcmp(key, "latency_ms"))
			F.latency_ms = strtoll(val, NULL, 10);
		else if (!strcmp(key, "bw"))
			F.bw = strtoll(val, NULL, 10);
		else if (!strcmp(key, "reset_per_min"))
			F.reset_per_min = strtod(val, NULL);
		else if (!strcmp(key, "mode"))
			F.mode = !strcmp(val, "blackhole") ? M_BLACKHOLE : !strcmp(val, "reject") ? M_REJECT : M_PASS;
	}
	fclose(f);
	fprintf(stderr, "faultproxy: mode %s, latency %" PRId64 " ms, bw %" PRId64 " B/s, resets %.3f/min\n",
		F.mode == M_PASS ? "pass" : F.mode == M_BLACKHOLE ? "blackhole" : "reject", F.latency_ms, F.bw,
		F.reset_per_min);
}

static void report(void)
{
	fprintf(stderr,
		"faultproxy: %d open, %" PRIu64 " accepted, %" PRIu64 " reset, %" PRIu64 " rejected, %" PRIu64
		" closed, %" PRIu64 " bytes up, %" PRIu64 " bytes down\n",
		n_conns, C.accepted, C.resets, C.rejected, C.closed, C.bytes[0], C.bytes[1]);
}

static void on_sig(int s)
{
	if (s == SIGUSR1)
		dump = 1;
	else
		stop = 1;
}

static void usage(void)
{
	fprintf(stderr, "usage: faultproxy --to HOST:PORT [--listen PORT] [--port-file F] [--ctl FILE]\n"
			"                  [--latency-ms N] [--bw BYTES_PER_S] [--reset-per-min F] [--seed N]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"to", 1, 0, 't'},	    {"listen", 1, 0, 'l'}, {"port-file", 1, 0, 'p'},
		{"ctl", 1, 0, 'c'},	    {"latency-ms", 1, 0, 'L'}, {"bw", 1, 0, 'b'},
		{"reset-per-min", 1, 0, 'r'}, {"seed", 1, 0, 's'},   {0, 0, 0, 0},
	};
	const char *to = NULL, *port_file = NULL, *ctl = NULL;
	int lport = 0, c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 't': to = optarg; break;
		case 'l': lport = atoi(optarg); break;
		case 'p': port_file = optarg; break;
		case 'c': ctl = optarg; break;
		case 'L': F.latency_ms = strtoll(optarg, NULL, 10); break;
		case 'b': F.bw = strtoll(optarg, NULL, 10); break;
		case 'r': F.reset_per_min = strtod(optarg, NULL); break;
		case 's': rng = strtoull(optarg, NULL, 10) * 2654435761ULL + 1; break;
		default: usage(); return 2;
		}
	}
	char host[64];
	int uport;
	if (!to || sscanf(to, "%63[^:]:%d", host, &uport) != 2 || uport <= 0 || uport > 65535 ||
	    lport < 0 || lport > 65535 || F.latency_ms < 0 || F.bw < 0 || F.reset_per_min < 0 || optind != argc) {
		usage();
		return 2;
	}
	memset(&up, 0, sizeof(up));
	up.sin_family = AF_INET;
	up.sin_port = htons((uint16_t)uport);
	if (inet_pton(AF_INET, host, &up.sin_addr) != 1) {
		fprintf(stderr, "faultproxy: --to needs an IPv4 address\n");
		return 2;
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_sig);
	signal(SIGINT, on_sig);
	signal(SIGUSR1, on_sig);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lport)};
	la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(la);
	if (bind(lfd, (struct sockaddr *)&la, sizeof(la)) < 0 || listen(lfd, 1024) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&la, &sl) < 0) {
		fprintf(stderr, "faultproxy: listen on port %d: %s\n", lport, strerror(errno));
		return 1;
	}
	if (port_file) {
		char tmp[4200];
		snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
		FILE *f = fopen(tmp, "w");
		if (!f || fprintf(f, "%d\n", ntohs(la.sin_port)) < 0 || fclose(f) != 0 || rename(tmp, port_file) < 0) {
			fprintf(stderr, "faultproxy: cannot write %s\n", port_file);
			return 1;
		}
	}
	struct timespec mt = {0};
	read_ctl(ctl, &mt);
	static struct pollfd pf[1 + 2 * MAX_CONNS];
	int64_t next_sec = now_ms() + 1000, last = now_ms();
	while (!stop) {
		int64_t now = now_ms();
		int n = 0, timeout = 200;
		pf[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
		for (int i = 0; i < n_conns; i++) {
			struct conn *cn = conns[i];
			for (int k = 0; k < 2; k++) {
				short ev = 0;
				if (F.mode == M_PASS && !cn->d[k].eof && cn->d[k].queued < BUF_MAX)
					ev |= POLLIN;
				if (!cn->connected && k == 1)
					ev |= POLLOUT;
				struct dir *o = &cn->d[1 - k]; /* what we write to side k */
				if (F.mode == M_PASS && o->head) {
					if (o->head->due <= now && (F.bw == 0 || o->tokens >= 1))
						ev |= POLLOUT;
					else
						timeout = 2;
				}
				pf[n++] = (struct pollfd){.fd = cn->fd[k], .events = ev};
			}
		}
		poll(pf, (nfds_t)n, timeout);
		now = now_ms();
		double dt = (double)(now - last) / 1000.0;
		last = now;
		if (pf[0].revents & POLLIN)
			for (int i = 0; i < 64; i++) {
				int before = (int)C.accepted;
				accept_one(lfd);
				if ((int)C.accepted == before)
					break;
			}
		/* the pollfd array was built for conns[0..], in order, before accepts */
		int polled = (n - 1) / 2;
		for (int i = polled - 1; i >= 0; i--) {
			struct conn *cn = conns[i];
			struct pollfd *p = &pf[1 + 2 * i];
			if (!cn->connected && (p[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
				int err = 0;
				socklen_t el = sizeof(err);
				getsockopt(cn->fd[1], SOL_SOCKET, SO_ERROR, &err, &el);
				if (err) {
					conn_free(i, true);
					continue;
				}
				cn->connected = true;
			}
			if (F.mode != M_PASS || !cn->connected)
				continue;
			bool gone = false;
			for (int k = 0; k < 2 && !gone; k++) {
				if (F.bw > 0) {
					cn->d[k].tokens += dt * (double)F.bw;
					if (cn->d[k].tokens > (double)F.bw)
						cn->d[k].tokens = (double)F.bw;
				}
				if ((p[k].revents & (POLLIN | POLLHUP | POLLERR)) && pump_read(cn, k, now) < 0)
					gone = true;
				if (!gone && pump_write(cn, k, now) < 0)
					gone = true;
			}
			if (gone || (cn->d[0].shut && cn->d[1].shut))
				conn_free(i, gone);
		}
		if (F.mode == M_REJECT)
			while (n_conns)
				conn_free(n_conns - 1, true);
		if (now >= next_sec) {
			next_sec = now + 1000;
			read_ctl(ctl, &mt);
			if (F.reset_per_min > 0)
				for (int i = n_conns - 1; i >= 0; i--)
					if (rnd01() < F.reset_per_min / 60.0)
						conn_free(i, true);
		}
		if (dump) {
			dump = 0;
			report();
		}
	}
	while (n_conns)
		conn_free(n_conns - 1, false);
	report();
	close(lfd);
	return 0;
}
