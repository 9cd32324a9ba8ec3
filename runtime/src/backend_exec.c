/* The "exec" backend: an external inference server (for example llama.cpp's
 * llama-server) run as a child of the runner process and driven over its
 * OpenAI-compatible HTTP API on loopback. The runner stays what the
 * supervisor knows: if the server exits, hangs (its health check fails) or
 * cannot start, the runner exits and the supervisor restarts it with the
 * usual backoff and crash-loop counting. docs/serving.md, "exec backend".
 *
 * Configuration (rt_backend_opts.config, the manifest's runtime.exec):
 *   {"command": ["/usr/bin/llama-server", "-m", "{model}", "--port", "{port}",
 *                "-t", "{threads}", "-c", "{ctx}"],
 *    "health": "/health", "ready_timeout_ms": 60000,
 *    "request": {"grammar": "..."}}      members added to every request */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "flotilla/backend.h"
#include "flotilla/error.h"
#include "flotilla/json.h"
#include "flotilla/util.h"

#define EXEC_MAX_ARGS 64
#define EXEC_HEALTH_PERIOD_MS 1000
#define EXEC_HEALTH_TIMEOUT_MS 3000
#define EXEC_HEALTH_FAILS 3     /* consecutive failed checks: the server hangs */
#define EXEC_MAX_RESPONSE (16u << 20)

struct exec_srv {
	pid_t pid;
	uint16_t port;
	char *argv[EXEC_MAX_ARGS + 1];
	char health[256];
	cJSON *extra;           /* "request" members */
	char name[48];
	pthread_t mon;
	bool mon_started;
	atomic_bool quit;
	int n_threads, n_ctx;
	uint64_t n_requests, n_errors, n_prompt, n_gen;
	double prompt_ms, gen_ms;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------ a tiny client */

/* Body bytes as they arrive; non-zero: stop reading. */
typedef int (*body_fn)(void *ud, const char *data, size_t len);

struct http_rd {
	int fd;
	int64_t deadline; /* 0: none */
	char buf[16384];
	size_t off, len;
};

static int rd_fill(struct http_rd *h)
{
	if (h->off < h->len)
		return 0;
	int t = -1;
	if (h->deadline) {
		int64_t left = h->deadline - now_ms();
		if (left <= 0)
			return -FL_ETIMEOUT;
		t = (int)left;
	}
	struct pollfd p = {h->fd, POLLIN, 0};
	int r = poll(&p, 1, t);
	if (r == 0)
		return -FL_ETIMEOUT;
	if (r < 0)
		return -errno;
	ssize_t n = recv(h->fd, h->buf, sizeof(h->buf), 0);
	if (n < 0)
		return errno == EINTR ? rd_fill(h) : -errno;
	if (n == 0)
		return -EPIPE;
	h->off = 0;
	h->len = (size_t)n;
	return 0;
}

/* One line (without CRLF) into LINE; -FL_ETOOBIG when longer than SIZE. */
static int rd_line(struct http_rd *h, char *line, size_t size)
{
	size_t n = 0;
	for (;;) {
		int r = rd_fill(h);
		if (r < 0)
			return r;
		char c = h->buf[h->off++];
		if (c == '\n') {
			if (n && line[n - 1] == '\r')
				n--;
			line[n] = '\0';
			return 0;
		}
		if (n + 1 >= size)
			return -FL_ETOOBIG;
		line[n++] = c;
	}
}

/* METHOD PATH with BODY (may be NULL) to 127.0.0.1:PORT; the response body
 * goes to ON_BODY (dechunked). Returns the HTTP status, or an error. */
static int http_do(uint16_t port, const char *method, const char *path, const char *body,
		   int timeout_ms, body_fn on_body, void *ud)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	size_t blen = body ? strlen(body) : 0;
	char head[512];
	int hn = snprintf(head, sizeof(head),
			  "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nConnection: close\r\n"
			  "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
			  method, path, port, blen);
	int err = 0;
	const char *parts[2] = {head, body};
	size_t lens[2] = {(size_t)hn, blen};
	for (int i = 0; i < 2 && !err; i++)
		for (size_t off = 0; off < lens[i];) {
			ssize_t w = send(fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				err = -errno;
				break;
			}
			off += (size_t)w;
		}
	struct http_rd *h = err ? NULL : calloc(1, sizeof(*h));
	if (!err && !h)
		err = -ENOMEM;
	if (err) {
		close(fd);
		free(h);
		return err;
	}
	h->fd = fd;
	h->deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
	char line[1024];
	int status = 0;
	bool chunked = false;
	long long clen = -1;
	err = rd_line(h, line, sizeof(line));
	if (!err && sscanf(line, "HTTP/1.%*d %d", &status) != 1)
		err = -FL_EPROTO;
	while (!err) {
		err = rd_line(h, line, sizeof(line));
		if (err || !line[0])
			break;
		if (!strncasecmp(line, "Transfer-Encoding:", 18) && strstr(line + 18, "chunked"))
			chunked = true;
		else if (!strncasecmp(line, "Content-Length:", 15))
			clen = atoll(line + 15);
	}
	size_t total = 0;
	bool stop = false;
	while (!err && !stop) {
		long long want = -1; /* bytes of this piece; -1: until the end */
		if (chunked) {
			err = rd_line(h, line, sizeof(line));
			if (err)
				break;
			want = strtoll(line, NULL, 16);
			if (want <= 0)
				break; /* last chunk */
		} else if (clen >= 0) {
			want = clen - (long long)total;
			if (want <= 0)
				break;
		}
		while (!err && !stop && want != 0) {
			int r = rd_fill(h);
			if (r == -EPIPE && want < 0 && !chunked)
				goto done; /* end of a body without length */
			if (r < 0) {
				err = r;
				break;
			}
			size_t n = h->len - h->off;
			if (want > 0 && (long long)n > want)
				n = (size_t)want;
			total += n;
			if (total > EXEC_MAX_RESPONSE) {
				err = -FL_ETOOBIG;
				break;
			}
			if (on_body && on_body(ud, h->buf + h->off, n))
				stop = true;
			h->off += n;
			if (want > 0)
				want -= (long long)n;
		}
		if (chunked && !err && !stop)
			err = rd_line(h, line, sizeof(line)); /* CRLF after the chunk */
		if (!chunked)
			break;
	}
done:
	close(fd);
	free(h);
	return err < 0 ? err : status;
}

/* ---------------------------------------------------------- the child */

static int free_port(uint16_t *ret)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof(a);
	int r = 0;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &al) < 0)
		r = -errno;
	close(fd);
	if (r == 0)
		*ret = ntohs(a.sin_port);
	return r;
}

/* ARG with {model}, {port}, {threads}, {ctx} replaced. */
static char *subst(const char *arg, const char *model, uint16_t port, int threads, int ctx)
{
	char num[3][16];
	snprintf(num[0], sizeof(num[0]), "%u", port);
	snprintf(num[1], sizeof(num[1]), "%d", threads);
	snprintf(num[2], sizeof(num[2]), "%d", ctx);
	const char *keys[4] = {"{model}", "{port}", "{threads}", "{ctx}"};
	const char *vals[4] = {model, num[0], num[1], num[2]};
	size_t cap = strlen(arg) + strlen(model) + 64, n = 0;
	char *out = malloc(cap);
	if (!out)
		return NULL;
	for (const char *p = arg; *p;) {
		int k = 0;
		for (; k < 4; k++)
			if (!strncmp(p, keys[k], strlen(keys[k])))
				break;
		const char *v = k < 4 ? vals[k] : p;
		size_t vl = k < 4 ? strlen(vals[k]) : 1;
		if (n + vl + 1 > cap) {
			char *nb = realloc(out, cap = (n + vl + 1) * 2);
			if (!nb) {
				free(out);
				return NULL;
			}
			out = nb;
		}
		memcpy(out + n, v, vl);
		n += vl;
		p += k < 4 ? strlen(keys[k]) : 1;
	}
	out[n] = '\0';
	return out;
}

static int health_ok(struct exec_srv *x, int timeout_ms)
{
	int st = http_do(x->port, "GET", x->health, NULL, timeout_ms, NULL, NULL);
	return st == 200 ? 0 : st < 0 ? st : -FL_ESTATE;
}

/* Runs while the backend is open: the server gone or hung takes the runner
 * down with it, so the supervisor sees a crash and restarts both. */
static void *monitor(void *arg)
{
	struct exec_srv *x = arg;
	int fails = 0;
	while (!atomic_load(&x->quit)) {
		for (int i = 0; i < EXEC_HEALTH_PERIOD_MS / 50 && !atomic_load(&x->quit); i++)
			usleep(50 * 1000);
		if (atomic_load(&x->quit))
			break;
		int ws;
		pid_t p = waitpid(x->pid, &ws, WNOHANG);
		if (p == x->pid) {
			fprintf(stderr, "exec: %s exited (%s %d); the runner goes down with it\n", x->name,
				WIFSIGNALED(ws) ? "signal" : "status",
				WIFSIGNALED(ws) ? WTERMSIG(ws) : WEXITSTATUS(ws));
			_exit(3);
		}
		if (health_ok(x, EXEC_HEALTH_TIMEOUT_MS) < 0) {
			if (++fails >= EXEC_HEALTH_FAILS && !atomic_load(&x->quit)) {
				fprintf(stderr, "exec: %s failed %d health checks; killing it\n", x->name,
					fails);
				kill(x->pid, SIGKILL);
				while (waitpid(x->pid, &ws, 0) < 0 && errno == EINTR)
					;
				_exit(3);
			}
		} else {
			fails = 0;
		}
	}
	return NULL;
}

static void stop_child(struct exec_srv *x)
{
	if (x->pid <= 0)
		return;
	kill(x->pid, SIGTERM);
	int ws;
	for (int i = 0; i < 100; i++) { /* 2 s, then SIGKILL */
		if (waitpid(x->pid, &ws, WNOHANG) == x->pid) {
			x->pid = 0;
			return;
		}
		usleep(20 * 1000);
	}
	kill(x->pid, SIGKILL);
	while (waitpid(x->pid, &ws, 0) < 0 && errno == EINTR)
		;
	x->pid = 0;
}

static void exec_close(void *impl)
{
	struct exec_srv *x = impl;
	if (!x)
		return;
	atomic_store(&x->quit, true);
	if (x->mon_started)
		pthread_join(x->mon, NULL);
	stop_child(x);
	for (int i = 0; x->argv[i]; i++)
		free(x->argv[i]);
	cJSON_Delete(x->extra);
	free(x);
}

/* The agent puts its serve.exec_allow (comma-separated absolute paths) in
 * FLOTILLA_EXEC_ALLOW for its runners. Unset (the runtime used on its own:
 * run-model, benches) the list is not checked; the permission checks of
 * exec_program_check() apply anyway. */
static bool in_allow_list(const char *list, const char *prog)
{
	size_t want = strlen(prog);
	const char *p = list;
	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		const char *e = strchr(p, ',');
		if (!e)
			e = p + strlen(p);
		const char *t = e;
		while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
			t--;
		if (t > p && (size_t)(t - p) == want && !memcmp(p, prog, want))
			return true;
		p = e;
	}
	return false;
}

/* Owned by root or by us: nobody else can change it. */
static bool owner_ok(const struct stat *st)
{
	return st->st_uid == 0 || st->st_uid == geteuid();
}

/* Checked at every start of the external program (each runner start, so
 * every restart too), just before it is executed: PROG (the manifest's
 * command[0]) must be listed in FLOTILLA_EXEC_ALLOW, and so must the real
 * path it resolves to now (a symlink swapped, or the program replaced by a
 * link to a path the list does not name, is refused); the real file must be
 * a regular executable file owned by root or by us and not writable by
 * others, and no directory on its real path may be writable by others
 * (unless sticky, as /tmp) or owned by another user. REAL gets the path to
 * execute. Errors (and a line on stderr saying why): -FL_EINCOMPAT (not
 * allowed), -EACCES (permissions), -FL_ECONFIG (not absolute), errno of
 * realpath/stat. docs/serving.md "exec backend". */
int rt_exec_program_check(const char *prog, char *real, size_t real_size);
int rt_exec_program_check(const char *prog, char *real, size_t real_size)
{
	const char *allow = getenv("FLOTILLA_EXEC_ALLOW");
	if (prog[0] != '/') {
		fprintf(stderr, "exec: command must be an absolute path: %s\n", prog);
		return -FL_ECONFIG;
	}
	if (allow && !in_allow_list(allow, prog)) {
		fprintf(stderr, "exec: %s is not in the agent's serve.exec_allow\n", prog);
		return -FL_EINCOMPAT;
	}
	char buf[PATH_MAX];
	if (!realpath(prog, buf)) {
		int e = -errno;
		fprintf(stderr, "exec: %s: %s\n", prog, strerror(errno));
		return e;
	}
	if (allow && strcmp(buf, prog) != 0 && !in_allow_list(allow, buf)) {
		fprintf(stderr,
			"exec: %s now resolves to %s, which is not in the agent's serve.exec_allow: "
			"not started\n",
			prog, buf);
		return -FL_EINCOMPAT;
	}
	struct stat st;
	if (stat(buf, &st) < 0) {
		int e = -errno;
		fprintf(stderr, "exec: %s: %s\n", buf, strerror(errno));
		return e;
	}
	if (!S_ISREG(st.st_mode) || access(buf, X_OK) < 0) {
		fprintf(stderr, "exec: %s is not an executable file\n", buf);
		return -EACCES;
	}
	if ((st.st_mode & S_IWOTH) || !owner_ok(&st)) {
		fprintf(stderr, "exec: %s is %s: not started\n", buf,
			(st.st_mode & S_IWOTH) ? "writable by everyone" : "owned by another user");
		return -EACCES;
	}
	/* every directory from / down to the program's */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", buf);
	for (char *slash = strrchr(dir, '/'); slash; slash = strrchr(dir, '/')) {
		if (slash == dir)
			slash[1] = '\0'; /* "/" itself */
		else
			*slash = '\0';
		if (stat(dir, &st) < 0) {
			int e = -errno;
			fprintf(stderr, "exec: %s: %s\n", dir, strerror(errno));
			return e;
		}
		bool open_dir = (st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX);
		if (open_dir || !owner_ok(&st)) {
			fprintf(stderr, "exec: directory %s of %s is %s: not started\n", dir, buf,
				open_dir ? "writable by everyone" : "owned by another user");
			return -EACCES;
		}
		if (slash == dir)
			break;
	}
	if (fl_snprintf(real, real_size, "%s", buf) < 0)
		return -FL_ETOOBIG;
	return 0;
}

static int exec_open(const char *model_path, const struct rt_backend_opts *opts, void **ret_impl)
{
	if (!opts->config) {
		fprintf(stderr, "exec: no command configured (runtime.exec)\n");
		return -FL_ECONFIG;
	}
	cJSON *cfg = NULL;
	int r = fl_json_parse(opts->config, strlen(opts->config), 65536, 8, &cfg);
	const cJSON *cmd = NULL;
	const char *health = "/health";
	int64_t ready_ms = 60000;
	if (r == 0 && (!cJSON_IsObject(cfg) || fl_json_get_arr(cfg, "command", &cmd) < 0 ||
		       cJSON_GetArraySize(cmd) < 1 || cJSON_GetArraySize(cmd) > EXEC_MAX_ARGS ||
		       fl_json_get_str_opt(cfg, "health", "/health", &health) < 0 ||
		       health[0] != '/' || strlen(health) > 200 || strpbrk(health, " \r\n") ||
		       fl_json_get_int_opt(cfg, "ready_timeout_ms", 100, 3600000, 60000, &ready_ms) < 0))
		r = -FL_ECONFIG;
	const cJSON *extra = cJSON_GetObjectItemCaseSensitive(cfg, "request");
	if (r == 0 && extra && !cJSON_IsObject(extra))
		r = -FL_ECONFIG;
	struct exec_srv *x = r == 0 ? calloc(1, sizeof(*x)) : NULL;
	if (r == 0 && !x)
		r = -ENOMEM;
	if (r < 0) {
		fprintf(stderr, "exec: bad configuration: command (array of strings), health, "
				"ready_timeout_ms, request (object)\n");
		cJSON_Delete(cfg);
		return r;
	}
	snprintf(x->health, sizeof(x->health), "%s", health);
	x->n_threads = opts->n_threads;
	x->n_ctx = opts->n_ctx;
	x->extra = extra ? cJSON_Duplicate(extra, true) : NULL;
	r = free_port(&x->port);
	int i = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, cmd)
	{
		if (r < 0)
			break;
		if (!cJSON_IsString(it) || !it->valuestring[0] ||
		    (i == 0 && strchr(it->valuestring, '{'))) {
			r = -FL_ECONFIG;
			fprintf(stderr, "exec: command must be non-empty strings, the program a "
					"plain path (no {placeholder})\n");
			break;
		}
		x->argv[i] = subst(it->valuestring, model_path, x->port, opts->n_threads, opts->n_ctx);
		if (!x->argv[i++])
			r = -ENOMEM;
	}
	cJSON_Delete(cfg);
	/* at every start: the allow-list and permissions, on the path run */
	char real[PATH_MAX];
	if (r == 0)
		r = rt_exec_program_check(x->argv[0], real, sizeof(real));
	if (r < 0) {
		exec_close(x);
		return r;
	}
	const char *base = strrchr(x->argv[0], '/');
	snprintf(x->name, sizeof(x->name), "%s", base ? base + 1 : x->argv[0]);

	x->pid = fork();
	if (x->pid < 0) {
		r = -errno;
		x->pid = 0;
		exec_close(x);
		return r;
	}
	if (x->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* the runner gone: the server too */
		int devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(2, 1); /* its output ends in the runner's stderr tail */
		}
		execv(real, x->argv); /* the path checked, not the link */
		_exit(127);
	}
	/* Ready when the health check answers 200 (llama-server: 503 while
	 * loading). An exit before that, or no answer in time, fails the open
	 * with -FL_ECRASH / -FL_ETIMEOUT, which the supervisor counts as a
	 * crash (restart with backoff, crash loop), not as a load failure. */
	int64_t end = now_ms() + ready_ms;
	for (;;) {
		int ws;
		if (waitpid(x->pid, &ws, WNOHANG) == x->pid) {
			fprintf(stderr, "exec: %s exited while starting (%s %d)\n", x->name,
				WIFSIGNALED(ws) ? "signal" : "status",
				WIFSIGNALED(ws) ? WTERMSIG(ws) : WEXITSTATUS(ws));
			x->pid = 0;
			exec_close(x);
			return -FL_ECRASH;
		}
		if (health_ok(x, 2000) == 0)
			break;
		if (now_ms() >= end) {
			fprintf(stderr, "exec: %s not ready after %lld ms\n", x->name, (long long)ready_ms);
			exec_close(x);
			return -FL_ETIMEOUT;
		}
		usleep(50 * 1000);
	}
	r = -pthread_create(&x->mon, NULL, monitor, x);
	if (r < 0) {
		exec_close(x);
		return r;
	}
	x->mon_started = true;
	*ret_impl = x;
	return 0;
}

/* ---------------------------------------------------------- requests */

struct sse {
	const struct rt_gen_request *req;
	char *line;
	size_t line_len, line_cap;
	char *text;
	size_t text_len, text_cap;
	int err;
	char errmsg[256];
	bool stopped, done;
	const char *finish;
	char finish_buf[16];
	int n_chunks, n_prompt, n_gen;
	double prompt_ms, gen_ms;
};

static int sse_add_text(struct sse *s, const char *t, size_t n)
{
	if (s->text_len + n + 1 > s->text_cap) {
		size_t nc = s->text_cap ? s->text_cap * 2 : 1024;
		while (nc < s->text_len + n + 1)
			nc *= 2;
		char *nb = realloc(s->text, nc);
		if (!nb)
			return -ENOMEM;
		s->text = nb;
		s->text_cap = nc;
	}
	memcpy(s->text + s->text_len, t, n);
	s->text_len += n;
	s->text[s->text_len] = '\0';
	return 0;
}

/* One "data: {...}" event of the stream. */
static void sse_event(struct sse *s, const char *data)
{
	if (!strcmp(data, "[DONE]")) {
		s->done = true;
		return;
	}
	cJSON *j = cJSON_Parse(data);
	if (!j) {
		s->err = -FL_EPROTO;
		snprintf(s->errmsg, sizeof(s->errmsg), "server sent an event that is not JSON");
		return;
	}
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
	if (e) {
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
		s->err = -FL_EPROTO;
		snprintf(s->errmsg, sizeof(s->errmsg), "server error: %s",
			 cJSON_IsString(m) ? m->valuestring : "(no message)");
		cJSON_Delete(j);
		return;
	}
	const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(ch, "text");
	if (!t)
		t = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ch, "delta"),
						      "content");
	if (cJSON_IsString(t) && t->valuestring[0]) {
		size_t n = strlen(t->valuestring);
		s->n_chunks++;
		if (sse_add_text(s, t->valuestring, n) < 0)
			s->err = -ENOMEM;
		else if (s->req->on_text && s->req->on_text(s->req->userdata, t->valuestring, n))
			s->stopped = true;
	}
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
	if (cJSON_IsString(f)) {
		snprintf(s->finish_buf, sizeof(s->finish_buf), "%s", f->valuestring);
		s->finish = s->finish_buf;
	}
	const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
	const cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
	const cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
	if (cJSON_IsNumber(pt))
		s->n_prompt = pt->valueint;
	if (cJSON_IsNumber(ct))
		s->n_gen = ct->valueint;
	const cJSON *tm = cJSON_GetObjectItemCaseSensitive(j, "timings");
	const cJSON *pm = cJSON_GetObjectItemCaseSensitive(tm, "prompt_ms");
	const cJSON *gm = cJSON_GetObjectItemCaseSensitive(tm, "predicted_ms");
	if (cJSON_IsNumber(pm))
		s->prompt_ms = pm->valuedouble;
	if (cJSON_IsNumber(gm))
		s->gen_ms = gm->valuedouble;
	cJSON_Delete(j);
}

static int sse_body(void *ud, const char *data, size_t len)
{
	struct sse *s = ud;
	for (size_t i = 0; i < len && !s->err && !s->stopped; i++) {
		if (data[i] == '\n') {
			s->line[s->line_len] = '\0';
			if (s->line_len && s->line[s->line_len - 1] == '\r')
				s->line[--s->line_len] = '\0';
			if (!strncmp(s->line, "data:", 5))
				sse_event(s, s->line + 5 + (s->line[5] == ' '));
			else if (s->line[0] == '{') /* a plain JSON error body */
				sse_event(s, s->line);
			s->line_len = 0;
			continue;
		}
		if (s->line_len + 2 > s->line_cap) {
			size_t nc = s->line_cap ? s->line_cap * 2 : 4096;
			if (nc > EXEC_MAX_RESPONSE) {
				s->err = -FL_ETOOBIG;
				break;
			}
			char *nb = realloc(s->line, nc);
			if (!nb) {
				s->err = -ENOMEM;
				break;
			}
			s->line = nb;
			s->line_cap = nc;
		}
		s->line[s->line_len++] = data[i];
	}
	return s->err || s->stopped;
}

static cJSON *build_request(struct exec_srv *x, const struct rt_gen_request *req)
{
	cJSON *o = x->extra ? cJSON_Duplicate(x->extra, true) : cJSON_CreateObject();
	if (!o)
		return NULL;
	/* ours win over the configured extras */
	static const char *const ours[] = {"prompt", "messages", "max_tokens", "temperature",
					   "top_k", "top_p", "min_p", "repeat_penalty",
					   "repeat_last_n", "seed", "stop", "stream"};
	for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
		cJSON_DeleteItemFromObjectCaseSensitive(o, ours[i]);
	if (req->n_messages) {
		cJSON *arr = cJSON_AddArrayToObject(o, "messages");
		for (size_t i = 0; arr && i < req->n_messages; i++) {
			cJSON *m = cJSON_CreateObject();
			cJSON_AddStringToObject(m, "role", req->messages[i].role);
			cJSON_AddStringToObject(m, "content", req->messages[i].content);
			cJSON_AddItemToArray(arr, m);
		}
	} else {
		cJSON_AddStringToObject(o, "prompt", req->prompt);
	}
	const struct rt_sampling *sp = &req->sampling;
	cJSON_AddNumberToObject(o, "max_tokens", req->max_tokens);
	cJSON_AddNumberToObject(o, "temperature", sp->temperature);
	cJSON_AddNumberToObject(o, "top_k", sp->top_k);
	cJSON_AddNumberToObject(o, "top_p", sp->top_p);
	cJSON_AddNumberToObject(o, "min_p", sp->min_p);
	cJSON_AddNumberToObject(o, "repeat_penalty", sp->repeat_penalty);
	cJSON_AddNumberToObject(o, "repeat_last_n", sp->repeat_last_n);
	cJSON_AddNumberToObject(o, "seed", (double)(sp->seed & ((1ull << 52) - 1)));
	if (req->n_stop) {
		cJSON *st = cJSON_AddArrayToObject(o, "stop");
		for (size_t i = 0; st && i < req->n_stop; i++)
			cJSON_AddItemToArray(st, cJSON_CreateString(req->stop[i]));
	}
	cJSON_AddBoolToObject(o, "stream", true);
	return o;
}

static int exec_generate(void *impl, const struct rt_gen_request *req, struct rt_gen_result *ret)
{
	struct exec_srv *x = impl;
	cJSON *o = build_request(x, req);
	char *body = o ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	if (!body)
		return -ENOMEM;
	struct sse s = {.req = req};
	int64_t t0 = now_ms();
	int st = http_do(x->port, "POST", req->n_messages ? "/v1/chat/completions" : "/v1/completions",
			 body, 0, sse_body, &s);
	free(body);
	free(s.line);
	int err = st < 0 ? st : s.err;
	if (!err && st != 200) {
		/* 400: a request the server refuses (often over its context) */
		err = st == 400 ? -FL_ETOOBIG : st == 503 ? -FL_EBUSY : -FL_EPROTO;
	}
	if (!err && !s.stopped && !s.done && !s.finish)
		err = -FL_EPROTO; /* the stream ended early */
	if (err) {
		x->n_errors++;
		if (s.errmsg[0])
			fprintf(stderr, "exec: %s\n", s.errmsg);
		free(s.text);
		return err == -EPIPE || err == -ECONNREFUSED || err == -ECONNRESET ? -FL_ECRASH : err;
	}
	if (!s.text && sse_add_text(&s, "", 0) < 0)
		return -ENOMEM;
	*ret = (struct rt_gen_result){.text = s.text, .text_len = s.text_len};
	ret->n_gen = s.n_gen ? s.n_gen : s.n_chunks;
	ret->n_prompt = s.n_prompt;
	ret->stop_reason = s.stopped ? RT_STOP_CALLBACK
			   : s.finish && !strcmp(s.finish, "length") ? RT_STOP_MAX_TOKENS
								      : RT_STOP_EOG;
	ret->prompt_ms = s.prompt_ms;
	ret->gen_ms = s.gen_ms ? s.gen_ms : (double)(now_ms() - t0);
	x->n_requests++;
	x->n_prompt += (uint64_t)ret->n_prompt;
	x->n_gen += (uint64_t)ret->n_gen;
	x->prompt_ms += ret->prompt_ms;
	x->gen_ms += ret->gen_ms;
	return 0;
}

static int exec_stats(void *impl, struct rt_backend_stats *ret)
{
	struct exec_srv *x = impl;
	memset(ret, 0, sizeof(*ret));
	snprintf(ret->backend, sizeof(ret->backend), "exec");
	snprintf(ret->model, sizeof(ret->model), "exec %s :%u", x->name, x->port);
	ret->n_requests = x->n_requests;
	ret->n_errors = x->n_errors;
	ret->n_prompt_tokens = x->n_prompt;
	ret->n_gen_tokens = x->n_gen;
	ret->prompt_ms = x->prompt_ms;
	ret->gen_ms = x->gen_ms;
	ret->n_ctx = x->n_ctx;
	ret->n_threads = x->n_threads;
	return 0;
}

const struct rt_backend_ops rt_backend_exec_ops = {
	.name = "exec",
	.open = exec_open,
	.generate = exec_generate,
	.stats = exec_stats,
	.close = exec_close,
};
