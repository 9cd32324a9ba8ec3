/* Supervisor side of runner processes (runner.h): one thread per runner
 * owns the child process, its socket and its stderr pipe; callers queue
 * requests under LOCK and wait on COND. */
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "flotilla/error.h"
#include "runner_internal.h"

#define MAX_CRASH_LOOP_N 64

enum req_kind { REQ_GEN, REQ_STATS, REQ_PREDICT };

struct req {
	enum req_kind kind;
	const struct rt_gen_request *greq;
	const struct rt_predict_request *preq;
	uint32_t id;
	bool sent, done, cancel_sent;
	int err;
	int64_t t0_us;              /* submitted */
	struct rt_gen_result res;
	struct rt_backend_stats stats;
	struct rt_predict_result pres;
	char *why;                  /* the runner's error text (caller's buffer) */
	size_t why_len;
	struct req *next;
};

struct rt_runner {
	/* immutable after start */
	char *exe, *backend, *model_path, *backend_config;
	struct rt_runner_limits lim;
	pthread_t th;
	int wake[2];

	pthread_mutex_t lock; /* everything below up to the thread-only part */
	pthread_cond_t cond;  /* broadcast when a request completes or the state changes */
	struct rt_runner_status st;
	struct req *head, *tail;
	uint32_t next_id;
	bool stopping, reset_req;
	int grace_ms;
	char ring[RT_RUNNER_STDERR_BYTES];
	size_t ring_pos, ring_len;
	uint32_t lat[RT_RUNNER_LAT_BUCKETS];
	char crash_tail[RT_RUNNER_CRASH_TAIL_BYTES]; /* stderr up to the last crash */

	/* thread-only */
	pid_t pid;
	int sock, errfd;
	struct rt_frame_reader rd;
	struct req *inflight;
	int64_t req_deadline, load_deadline, next_ping, ping_sent, restart_at;
	bool ping_out;
	uint32_t ping_id; /* the request in flight when the PING went out, or 0 */
	int64_t crash_t[MAX_CRASH_LOOP_N];
	int n_crash_t;
	int consecutive;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Bucket of a latency: floor(8 * log2(us)), bucket i covers
 * [2^(i/8), 2^((i+1)/8)) us. */
static int lat_bucket(int64_t us)
{
	if (us < 1)
		return 0;
	int b = (int)floor(8.0 * log2((double)us));
	return b < 0 ? 0 : b >= RT_RUNNER_LAT_BUCKETS ? RT_RUNNER_LAT_BUCKETS - 1 : b;
}

double rt_latency_quantile_ms(const uint32_t hist[RT_RUNNER_LAT_BUCKETS], double q)
{
	uint64_t total = 0;
	for (int i = 0; i < RT_RUNNER_LAT_BUCKETS; i++)
		total += hist[i];
	if (!total)
		return 0;
	if (q < 0)
		q = 0;
	if (q > 1)
		q = 1;
	uint64_t rank = (uint64_t)ceil(q * (double)total);
	if (rank < 1)
		rank = 1;
	uint64_t seen = 0;
	int i = 0;
	for (; i < RT_RUNNER_LAT_BUCKETS - 1; i++) {
		seen += hist[i];
		if (seen >= rank)
			break;
	}
	return exp2((double)(i + 1) / 8.0) / 1000.0;
}

void rt_runner_limits_default(struct rt_runner_limits *l)
{
	*l = (struct rt_runner_limits){
		.queue_max = 8,
		.heartbeat_interval_ms = 1000,
		.heartbeat_timeout_ms = 5000,
		.load_timeout_ms = 60000,
		.backoff_min_ms = 100,
		.backoff_max_ms = 30000,
		.crash_loop_n = 5,
		.crash_loop_window_ms = 60000,
	};
}

const char *rt_runner_state_name(enum rt_runner_state s)
{
	switch (s) {
	case RT_RUNNER_STARTING: return "starting";
	case RT_RUNNER_READY: return "ready";
	case RT_RUNNER_BACKOFF: return "backoff";
	case RT_RUNNER_CRASH_LOOP: return "crash_loop";
	case RT_RUNNER_LOAD_FAILED: return "load_failed";
	case RT_RUNNER_STOPPED: return "stopped";
	}
	return "unknown";
}

static void wake(struct rt_runner *r)
{
	char c = 1;
	ssize_t n = write(r->wake[1], &c, 1);
	(void)n; /* a full pipe already wakes the thread */
}

/* ---------------------------------------------------------- the child */

static void ring_add(struct rt_runner *r, const char *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		r->ring[r->ring_pos] = d[i];
		r->ring_pos = (r->ring_pos + 1) % sizeof(r->ring);
		if (r->ring_len < sizeof(r->ring))
			r->ring_len++;
	}
}

/* With LOCK held: the last SIZE - 1 bytes of the ring into BUF. */
static size_t ring_tail(struct rt_runner *r, char *buf, size_t size)
{
	size_t n = r->ring_len < size - 1 ? r->ring_len : size - 1;
	size_t start = (r->ring_pos + sizeof(r->ring) - n) % sizeof(r->ring);
	for (size_t i = 0; i < n; i++)
		buf[i] = r->ring[(start + i) % sizeof(r->ring)];
	buf[n] = '\0';
	return n;
}

static void drain_stderr(struct rt_runner *r)
{
	char buf[1024];
	for (;;) {
		ssize_t n = read(r->errfd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		pthread_mutex_lock(&r->lock);
		ring_add(r, buf, (size_t)n);
		pthread_mutex_unlock(&r->lock);
	}
}

/* Called with LOCK held. */
static void complete(struct rt_runner *r, struct req *q, int err)
{
	q->done = true;
	q->err = err;
	/* unlink from the queue */
	struct req **pp = &r->head, *prev = NULL;
	while (*pp && *pp != q) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (*pp) {
		*pp = q->next;
		if (r->tail == q)
			r->tail = prev;
		r->st.queued--;
	}
	if (err == -EINVAL || err == -FL_ERANGE || err == -FL_ETOOBIG || err == -FL_EUNSUPPORTED) {
		r->st.n_rejected++; /* the request's fault, not the model's */
	} else if (err < 0) {
		r->st.n_failed++;
		r->st.last_error = err;
	} else if (q->kind != REQ_STATS && q->t0_us) {
		r->lat[lat_bucket(now_us() - q->t0_us)]++;
	}
	if (r->inflight == q)
		r->inflight = NULL;
	pthread_cond_broadcast(&r->cond);
}

static void fail_all(struct rt_runner *r, int err)
{
	pthread_mutex_lock(&r->lock);
	while (r->head)
		complete(r, r->head, err);
	pthread_mutex_unlock(&r->lock);
}

static int spawn(struct rt_runner *r)
{
	int sv[2], ep[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	if (pipe2(ep, O_CLOEXEC) < 0) {
		int e = -errno;
		close(sv[0]);
		close(sv[1]);
		return e;
	}
	/* argv built before fork: only async-signal-safe calls in the child */
	char fdbuf[16], thr[16], ctx[16], mem[24];
	snprintf(fdbuf, sizeof(fdbuf), "%d", 3);
	snprintf(thr, sizeof(thr), "%d", r->lim.n_threads);
	snprintf(ctx, sizeof(ctx), "%d", r->lim.n_ctx);
	snprintf(mem, sizeof(mem), "%llu", (unsigned long long)r->lim.mem_bytes);
	char *argv[] = {r->exe, "runner", "--fd", fdbuf, "--backend", r->backend, "--model",
			r->model_path, "--threads", thr, "--ctx", ctx, "--mem-bytes", mem,
			r->backend_config ? "--backend-config" : NULL, r->backend_config, NULL};
	pid_t pid = fork();
	if (pid < 0) {
		int e = -errno;
		close(sv[0]);
		close(sv[1]);
		close(ep[0]);
		close(ep[1]);
		return e;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		sigset_t all;
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		/* fd 3 = socket, fd 2 = stderr pipe; dup2 clears close-on-exec */
		if (dup2(ep[1], 2) < 0 || dup2(sv[1], 3) < 0)
			_exit(127);
		int devnull = open("/dev/null", O_RDONLY);
		if (devnull >= 0)
			dup2(devnull, 0);
		if (r->exe) {
			execv(r->exe, argv);
			_exit(127);
		}
		if (r->lim.mem_bytes) {
			struct rlimit rl = {r->lim.mem_bytes, r->lim.mem_bytes};
			setrlimit(RLIMIT_AS, &rl);
		}
		struct rt_backend_opts o;
		rt_backend_opts_default(&o);
		o.n_threads = r->lim.n_threads;
		o.n_ctx = r->lim.n_ctx;
		o.config = r->backend_config;
		_exit(rt_runner_main(3, r->backend, r->model_path, &o) < 0 ? 1 : 0);
	}
	close(sv[1]);
	close(ep[1]);
	fcntl(ep[0], F_SETFL, O_NONBLOCK);
	r->pid = pid;
	r->sock = sv[0];
	r->errfd = ep[0];
	r->rd.len = 0;
	r->ping_out = false;
	int64_t t = now_ms();
	r->load_deadline = r->lim.load_timeout_ms ? t + r->lim.load_timeout_ms : 0;
	r->next_ping = t + r->lim.heartbeat_interval_ms;
	pthread_mutex_lock(&r->lock);
	r->st.state = RT_RUNNER_STARTING;
	r->st.pid = pid;
	r->st.n_starts++;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return 0;
}

/* The child is gone or must go: kill, reap, record, fail the request in
 * flight with FAIL, then restart later or give up. CRASH: count it. */
static void child_down(struct rt_runner *r, int fail, bool crash)
{
	if (r->pid <= 0)
		return;
	kill(r->pid, SIGKILL);
	int ws = 0;
	while (waitpid(r->pid, &ws, 0) < 0 && errno == EINTR)
		;
	drain_stderr(r);
	close(r->sock);
	close(r->errfd);
	r->sock = r->errfd = -1;
	r->pid = 0;
	int64_t t = now_ms();
	pthread_mutex_lock(&r->lock);
	r->st.pid = 0;
	r->st.last_exit_status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
	r->st.last_exit_signal = WIFSIGNALED(ws) ? WTERMSIG(ws) : 0;
	if (r->inflight)
		complete(r, r->inflight, fail);
	if (crash) {
		r->st.n_crashes++;
		r->st.last_error = fail;
		ring_tail(r, r->crash_tail, sizeof(r->crash_tail));
	}
	if (r->st.state == RT_RUNNER_LOAD_FAILED || r->stopping) {
		pthread_cond_broadcast(&r->cond);
		pthread_mutex_unlock(&r->lock);
		return;
	}
	/* a crash long after the last one starts the backoff afresh */
	if (r->n_crash_t && t - r->crash_t[r->n_crash_t - 1] > r->lim.crash_loop_window_ms)
		r->consecutive = 0;
	/* crash loop: crash_loop_n crashes within the window */
	if (r->n_crash_t == r->lim.crash_loop_n) {
		memmove(r->crash_t, r->crash_t + 1, (size_t)(r->n_crash_t - 1) * sizeof(int64_t));
		r->n_crash_t--;
	}
	r->crash_t[r->n_crash_t++] = t;
	if (r->n_crash_t >= r->lim.crash_loop_n &&
	    t - r->crash_t[0] <= r->lim.crash_loop_window_ms) {
		r->st.state = RT_RUNNER_CRASH_LOOP;
		r->st.crash_loop_ms = (int)(t - r->crash_t[0]);
		while (r->head)
			complete(r, r->head, -FL_ECRASH);
	} else {
		/* backoff_min_ms, doubled per consecutive crash, at most backoff_max_ms */
		int64_t d = r->lim.backoff_min_ms;
		for (int i = 0; i < r->consecutive && d < r->lim.backoff_max_ms; i++)
			d *= 2;
		if (d > r->lim.backoff_max_ms)
			d = r->lim.backoff_max_ms;
		r->consecutive++;
		r->restart_at = t + d;
		r->st.backoff_ms = (int)d;
		r->st.state = RT_RUNNER_BACKOFF;
	}
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

static int send_msg(struct rt_runner *r, const struct rt_rmsg *m)
{
	return rt_frame_send(r->sock, m);
}

/* Handle one message from the runner. Returns <0 on a protocol error, 1
 * when the runner reported a load failure that counts as a crash. */
static int on_msg(struct rt_runner *r, struct rt_rmsg *m)
{
	struct req *q = r->inflight;
	switch (m->type) {
	case RT_RMSG_READY:
		pthread_mutex_lock(&r->lock);
		if (r->st.state != RT_RUNNER_STARTING) {
			pthread_mutex_unlock(&r->lock);
			return -FL_EPROTO;
		}
		r->load_deadline = 0;
		if (m->code == -FL_ECRASH || m->code == -FL_ETIMEOUT) {
			/* the backend's own process died or hung while loading
			 * (exec: the external server): a crash, not a bad model */
			pthread_mutex_unlock(&r->lock);
			return 1;
		}
		if (m->code < 0) {
			r->st.state = RT_RUNNER_LOAD_FAILED;
			r->st.last_error = m->code;
			while (r->head)
				complete(r, r->head, -FL_ESTATE);
		} else {
			r->st.state = RT_RUNNER_READY;
			snprintf(r->st.model, sizeof(r->st.model), "%s", m->text ? m->text : "");
		}
		pthread_cond_broadcast(&r->cond);
		pthread_mutex_unlock(&r->lock);
		return 0;
	case RT_RMSG_PONG:
		r->ping_out = false;
		if (q && r->ping_id && q->id == r->ping_id && m->id != r->ping_id) {
			/* the runner owes no answer to a request we wait for: it was
			 * lost (a runner bug); fail it rather than wait forever */
			fprintf(stderr, "runner: request %u finished without an answer\n", q->id);
			pthread_mutex_lock(&r->lock);
			complete(r, q, -FL_EPROTO);
			pthread_mutex_unlock(&r->lock);
		}
		return 0;
	case RT_RMSG_PIECE:
		if (q && q->id == m->id && q->kind == REQ_GEN && q->greq->on_text && !q->cancel_sent) {
			if (q->greq->on_text(q->greq->userdata, m->text, m->text_len)) {
				struct rt_rmsg c = {.type = RT_RMSG_CANCEL, .id = q->id};
				q->cancel_sent = true;
				send_msg(r, &c);
			}
		}
		return 0;
	case RT_RMSG_DONE:
	case RT_RMSG_ERROR:
	case RT_RMSG_STATS_R:
	case RT_RMSG_PREDICTION:
		if (!q || q->id != m->id)
			return 0; /* a late answer to a request already failed */
		if ((m->type == RT_RMSG_PREDICTION) != (q->kind == REQ_PREDICT) && m->type != RT_RMSG_ERROR)
			return -FL_EPROTO; /* an answer of the wrong kind */
		pthread_mutex_lock(&r->lock);
		if (m->type == RT_RMSG_ERROR) {
			if (q->why_len && m->text)
				snprintf(q->why, q->why_len, "%s", m->text);
			complete(r, q, m->code);
		} else if (m->type == RT_RMSG_PREDICTION) {
			if (m->pres.n_rows != q->preq->n_rows) {
				pthread_mutex_unlock(&r->lock);
				return -FL_EPROTO;
			}
			q->pres = m->pres;
			q->pres.values = m->fstore; /* taken over from the message */
			m->fstore = NULL;
			m->pres.values = NULL;
			r->st.n_requests++;
			r->consecutive = 0;
			complete(r, q, 0);
		} else if (m->type == RT_RMSG_STATS_R) {
			q->stats = m->stats;
			complete(r, q, 0);
		} else {
			q->res = m->res;
			q->res.text = strdup(m->text ? m->text : "");
			if (!q->res.text) {
				complete(r, q, -ENOMEM);
			} else {
				if (q->cancel_sent && q->res.stop_reason != RT_STOP_EOG)
					q->res.stop_reason = RT_STOP_CALLBACK;
				r->st.n_requests++;
				r->consecutive = 0;
				complete(r, q, 0);
			}
		}
		pthread_mutex_unlock(&r->lock);
		return 0;
	default:
		return -FL_EPROTO;
	}
}

/* Start a child; if that fails (fork, fds), retry later like after a crash. */
static void respawn(struct rt_runner *r)
{
	int err = spawn(r);
	if (err == 0)
		return;
	pthread_mutex_lock(&r->lock);
	r->st.state = RT_RUNNER_BACKOFF;
	r->st.last_error = err;
	r->restart_at = now_ms() + (r->lim.backoff_max_ms > 1000 ? 1000 : r->lim.backoff_max_ms);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

static void *sup_thread(void *arg)
{
	struct rt_runner *r = arg;
	respawn(r);
	for (;;) {
		int64_t t = now_ms();
		pthread_mutex_lock(&r->lock);
		bool stopping = r->stopping;
		enum rt_runner_state state = r->st.state;
		bool reset = r->reset_req;
		r->reset_req = false;
		struct req *next = (!r->inflight && r->head) ? r->head : NULL;
		pthread_mutex_unlock(&r->lock);
		if (stopping)
			break;
		if (reset && r->pid <= 0) {
			r->n_crash_t = 0;
			r->consecutive = 0;
			respawn(r);
			continue;
		}
		if (state == RT_RUNNER_BACKOFF && t >= r->restart_at && r->pid <= 0) {
			respawn(r);
			continue;
		}
		if (state == RT_RUNNER_READY && next && r->pid > 0) {
			struct rt_rmsg m = {.type = next->kind == REQ_GEN       ? RT_RMSG_GENERATE
						    : next->kind == REQ_PREDICT ? RT_RMSG_PREDICT
										: RT_RMSG_STATS,
					    .id = next->id};
			if (next->kind == REQ_GEN) {
				m.req = *next->greq;
				m.stream = next->greq->on_text != NULL;
			} else if (next->kind == REQ_PREDICT) {
				m.preq = *next->preq;
			}
			r->inflight = next;
			next->sent = true;
			int e = send_msg(r, &m);
			if (e == -EINVAL || e == -FL_ETOOBIG) { /* the request itself */
				pthread_mutex_lock(&r->lock);
				complete(r, next, e);
				pthread_mutex_unlock(&r->lock);
				continue;
			}
			if (e < 0) {
				child_down(r, -FL_ECRASH, true);
				continue;
			}
			r->req_deadline = r->lim.request_timeout_ms ? t + r->lim.request_timeout_ms : 0;
		}
		/* sleep until the next timer */
		int64_t due = INT64_MAX;
		if (r->pid > 0) {
			if (state == RT_RUNNER_READY)
				due = r->ping_out ? r->ping_sent + r->lim.heartbeat_timeout_ms : r->next_ping;
			if (r->load_deadline && r->load_deadline < due)
				due = r->load_deadline;
			if (r->inflight && r->req_deadline && r->req_deadline < due)
				due = r->req_deadline;
		} else if (state == RT_RUNNER_BACKOFF) {
			due = r->restart_at;
		}
		int timeout = due == INT64_MAX ? -1 : (int)(due > t ? (due - t > 60000 ? 60000 : due - t) : 0);
		struct pollfd p[3] = {{r->wake[0], POLLIN, 0}, {r->sock, POLLIN, 0}, {r->errfd, POLLIN, 0}};
		int np = r->pid > 0 ? 3 : 1;
		if (poll(p, (nfds_t)np, timeout) < 0 && errno != EINTR)
			break;
		if (p[0].revents & POLLIN) {
			char buf[64];
			while (read(r->wake[0], buf, sizeof(buf)) > 0)
				;
		}
		if (np == 3 && (p[2].revents & (POLLIN | POLLHUP)))
			drain_stderr(r);
		if (np == 3 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
			int e = rt_frame_fill(r->sock, &r->rd);
			int crash_code = 0;
			struct rt_rmsg *m;
			while (e == 0 && (e = rt_frame_next(&r->rd, &m)) == 1) {
				e = on_msg(r, m);
				if (e == 1)
					crash_code = m->code;
				rt_rmsg_free(m);
				if (crash_code)
					break;
			}
			if (crash_code) {
				child_down(r, crash_code, true);
				continue;
			}
			if (e < 0) {
				pthread_mutex_lock(&r->lock);
				bool load_failed = r->st.state == RT_RUNNER_LOAD_FAILED;
				pthread_mutex_unlock(&r->lock);
				child_down(r, -FL_ECRASH, !load_failed);
				continue;
			}
		}
		t = now_ms();
		if (r->pid <= 0)
			continue;
		pthread_mutex_lock(&r->lock);
		state = r->st.state;
		pthread_mutex_unlock(&r->lock);
		if (r->load_deadline && t >= r->load_deadline) {
			child_down(r, -FL_ETIMEOUT, true);
		} else if (r->inflight && r->req_deadline && t >= r->req_deadline) {
			child_down(r, -FL_ETIMEOUT, true);
		} else if (state == RT_RUNNER_READY && r->ping_out &&
			   t - r->ping_sent >= r->lim.heartbeat_timeout_ms) {
			child_down(r, -FL_ECRASH, true); /* hung: no pong */
		} else if (state == RT_RUNNER_READY && !r->ping_out && t >= r->next_ping) {
			r->ping_id = r->inflight ? r->inflight->id : 0;
			struct rt_rmsg m = {.type = RT_RMSG_PING, .id = r->ping_id};
			r->ping_out = true;
			r->ping_sent = t;
			r->next_ping = t + r->lim.heartbeat_interval_ms;
			if (send_msg(r, &m) < 0)
				child_down(r, -FL_ECRASH, true);
		}
	}
	/* stopping: polite shutdown, then kill */
	if (r->pid > 0) {
		struct rt_rmsg m = {.type = RT_RMSG_SHUTDOWN};
		if (send_msg(r, &m) == 0) {
			int64_t end = now_ms() + r->grace_ms;
			for (;;) {
				int64_t left = end - now_ms();
				struct pollfd p = {r->sock, POLLIN, 0};
				if (left <= 0 || poll(&p, 1, (int)left) <= 0)
					break;
				char buf[4096];
				ssize_t n = read(r->sock, buf, sizeof(buf));
				if (n == 0 || (n < 0 && errno != EINTR))
					break;
			}
		}
		child_down(r, -FL_ESTATE, false);
	}
	fail_all(r, -FL_ESTATE);
	pthread_mutex_lock(&r->lock);
	r->st.state = RT_RUNNER_STOPPED;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

/* ---------------------------------------------------------- public API */

static bool limits_ok(const struct rt_runner_limits *l)
{
	return l->queue_max >= 1 && l->queue_max <= 65536 && l->n_threads >= 0 && l->n_ctx >= 0 &&
	       l->request_timeout_ms >= 0 && l->heartbeat_interval_ms >= 10 &&
	       l->heartbeat_timeout_ms >= 10 && l->load_timeout_ms >= 0 && l->backoff_min_ms >= 0 &&
	       l->backoff_max_ms >= l->backoff_min_ms && l->crash_loop_n >= 1 &&
	       l->crash_loop_n <= MAX_CRASH_LOOP_N && l->crash_loop_window_ms >= 0;
}

void rt_runner_stop(struct rt_runner *r, int grace_ms);

int rt_runner_start(const struct rt_runner_config *cfg, struct rt_runner **ret_runner)
{
	if (!cfg || !cfg->backend || !cfg->model_path || !ret_runner || !limits_ok(&cfg->limits))
		return -EINVAL;
	struct rt_runner *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->lim = cfg->limits;
	r->sock = r->errfd = -1;
	r->wake[0] = r->wake[1] = -1;
	r->st.last_exit_status = -1;
	r->st.state = RT_RUNNER_STARTING;
	r->backend = strdup(cfg->backend);
	r->model_path = strdup(cfg->model_path);
	r->exe = cfg->exe ? strdup(cfg->exe) : NULL;
	r->backend_config = cfg->backend_config ? strdup(cfg->backend_config) : NULL;
	int err = 0;
	if (!r->backend || !r->model_path || (cfg->exe && !r->exe) ||
	    (cfg->backend_config && !r->backend_config))
		err = -ENOMEM;
	else if (pipe2(r->wake, O_CLOEXEC | O_NONBLOCK) < 0)
		err = -errno;
	if (err < 0) {
		if (r->wake[0] >= 0) {
			close(r->wake[0]);
			close(r->wake[1]);
		}
		free(r->backend);
		free(r->model_path);
		free(r->exe);
		free(r->backend_config);
		free(r);
		return err;
	}
	pthread_mutex_init(&r->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cond, &ca);
	pthread_condattr_destroy(&ca);
	err = -pthread_create(&r->th, NULL, sup_thread, r);
	if (err < 0) {
		close(r->wake[0]);
		close(r->wake[1]);
		pthread_mutex_destroy(&r->lock);
		pthread_cond_destroy(&r->cond);
		free(r->backend);
		free(r->model_path);
		free(r->exe);
		free(r->backend_config);
		free(r);
		return err;
	}
	*ret_runner = r;
	return 0;
}

static void deadline_ts(struct timespec *ts, int64_t at_ms)
{
	ts->tv_sec = at_ms / 1000;
	ts->tv_nsec = (at_ms % 1000) * 1000000;
}

int rt_runner_wait_ready(struct rt_runner *r, int timeout_ms)
{
	if (!r)
		return -EINVAL;
	int64_t end = now_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
	struct timespec ts;
	deadline_ts(&ts, end);
	int ret;
	pthread_mutex_lock(&r->lock);
	for (;;) {
		enum rt_runner_state s = r->st.state;
		if (s == RT_RUNNER_READY) {
			ret = 0;
			break;
		}
		if (s == RT_RUNNER_LOAD_FAILED) {
			ret = r->st.last_error < 0 ? r->st.last_error : -FL_ESTATE;
			break;
		}
		if (s == RT_RUNNER_CRASH_LOOP) {
			ret = -FL_ECRASH;
			break;
		}
		if (s == RT_RUNNER_STOPPED) {
			ret = -FL_ESTATE;
			break;
		}
		if (pthread_cond_timedwait(&r->cond, &r->lock, &ts) == ETIMEDOUT) {
			ret = -FL_ETIMEOUT;
			break;
		}
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}

static int submit_wait(struct rt_runner *r, struct req *q)
{
	pthread_mutex_lock(&r->lock);
	enum rt_runner_state s = r->st.state;
	if (r->stopping || s == RT_RUNNER_CRASH_LOOP || s == RT_RUNNER_LOAD_FAILED ||
	    s == RT_RUNNER_STOPPED) {
		pthread_mutex_unlock(&r->lock);
		return -FL_ESTATE;
	}
	if (r->st.queued >= r->lim.queue_max) {
		pthread_mutex_unlock(&r->lock);
		return -FL_EBUSY;
	}
	q->id = ++r->next_id ? r->next_id : ++r->next_id;
	q->t0_us = now_us();
	if (r->tail)
		r->tail->next = q;
	else
		r->head = q;
	r->tail = q;
	r->st.queued++;
	wake(r);
	while (!q->done)
		pthread_cond_wait(&r->cond, &r->lock);
	pthread_mutex_unlock(&r->lock);
	return q->err;
}

int rt_runner_generate(struct rt_runner *r, const struct rt_gen_request *req,
		       struct rt_gen_result *ret)
{
	if (!r || !req || !ret)
		return -EINVAL;
	struct req q = {.kind = REQ_GEN, .greq = req};
	int err = submit_wait(r, &q);
	if (err < 0)
		return err;
	*ret = q.res;
	return 0;
}

int rt_runner_predict(struct rt_runner *r, const struct rt_predict_request *req,
		      struct rt_predict_result *ret, char *why, size_t why_len)
{
	if (why && why_len)
		why[0] = '\0';
	if (!r || !req || !ret || (why_len && !why))
		return -EINVAL;
	struct req q = {.kind = REQ_PREDICT, .preq = req, .why = why, .why_len = why_len};
	int err = submit_wait(r, &q);
	if (err < 0) {
		if (why_len && !why[0] && err == -FL_ETOOBIG)
			snprintf(why, why_len, "request too large for the runner protocol");
		return err;
	}
	*ret = q.pres;
	return 0;
}

void rt_runner_latency(struct rt_runner *r, uint32_t hist[RT_RUNNER_LAT_BUCKETS])
{
	pthread_mutex_lock(&r->lock);
	memcpy(hist, r->lat, sizeof(r->lat));
	pthread_mutex_unlock(&r->lock);
}

int rt_runner_backend_stats(struct rt_runner *r, struct rt_backend_stats *ret_stats)
{
	if (!r || !ret_stats)
		return -EINVAL;
	struct req q = {.kind = REQ_STATS};
	int err = submit_wait(r, &q);
	if (err < 0)
		return err;
	*ret_stats = q.stats;
	return 0;
}

void rt_runner_get_status(struct rt_runner *r, struct rt_runner_status *ret_status)
{
	pthread_mutex_lock(&r->lock);
	*ret_status = r->st;
	pthread_mutex_unlock(&r->lock);
}

size_t rt_runner_stderr_tail(struct rt_runner *r, char *buf, size_t size)
{
	if (!r || !buf || !size)
		return 0;
	pthread_mutex_lock(&r->lock);
	size_t n = ring_tail(r, buf, size);
	pthread_mutex_unlock(&r->lock);
	return n;
}

size_t rt_runner_crash_tail(struct rt_runner *r, char *buf, size_t size)
{
	if (!r || !buf || !size)
		return 0;
	pthread_mutex_lock(&r->lock);
	size_t n = strnlen(r->crash_tail, sizeof(r->crash_tail));
	if (n > size - 1) {
		memcpy(buf, r->crash_tail + n - (size - 1), size - 1);
		n = size - 1;
	} else {
		memcpy(buf, r->crash_tail, n);
	}
	buf[n] = '\0';
	pthread_mutex_unlock(&r->lock);
	return n;
}

int rt_runner_reset(struct rt_runner *r)
{
	if (!r)
		return -EINVAL;
	pthread_mutex_lock(&r->lock);
	int err = 0;
	if (r->st.state == RT_RUNNER_CRASH_LOOP || r->st.state == RT_RUNNER_LOAD_FAILED) {
		r->reset_req = true;
		r->st.state = RT_RUNNER_STARTING; /* the thread spawns at once */
		wake(r);
	} else {
		err = -FL_ESTATE;
	}
	pthread_mutex_unlock(&r->lock);
	return err;
}

void rt_runner_stop(struct rt_runner *r, int grace_ms)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stopping = true;
	r->grace_ms = grace_ms < 0 ? 0 : grace_ms;
	wake(r);
	pthread_mutex_unlock(&r->lock);
	pthread_join(r->th, NULL);
	rt_frame_reader_free(&r->rd);
	close(r->wake[0]);
	close(r->wake[1]);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r->backend);
	free(r->model_path);
	free(r->exe);
	free(r->backend_config);
	free(r);
}
