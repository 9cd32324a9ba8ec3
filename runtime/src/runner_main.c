/* Runner side: serve one backend over the runner socket (runner.h). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "flotilla/error.h"
#include "runner_internal.h"

struct runner_srv {
	int fd;
	struct rt_backend *b;
	pthread_mutex_t wlock; /* serialises writes to fd */
	pthread_mutex_t lock;  /* job, quit */
	pthread_cond_t cond;
	struct rt_rmsg *job;   /* request handed to the worker, not yet taken */
	bool busy;             /* a request is being served (until its answer is sent) */
	bool quit;
	atomic_uint cur_id;    /* id of the running request, 0 if none */
	atomic_uint owe_id;    /* id of the request whose answer is not sent yet */
	atomic_bool cancel;
};

static int srv_send(struct runner_srv *s, const struct rt_rmsg *m)
{
	pthread_mutex_lock(&s->wlock);
	int err = rt_frame_send(s->fd, m);
	pthread_mutex_unlock(&s->wlock);
	return err;
}

/* The final answer of the current request is about to go out: after it the
 * supervisor may send the next request at once, so accept it. */
static void finish(struct runner_srv *s)
{
	pthread_mutex_lock(&s->lock);
	s->busy = false;
	atomic_store(&s->cur_id, 0);
	pthread_mutex_unlock(&s->lock);
}

/* ERROR with WHY, or the error's name when WHY is NULL or empty. */
static int send_error_msg(struct runner_srv *s, uint32_t id, int code, const char *why)
{
	struct rt_rmsg m = {.type = RT_RMSG_ERROR, .id = id, .code = code};
	m.text = (char *)(why && why[0] ? why : fl_strerror(code));
	m.text_len = strlen(m.text);
	return srv_send(s, &m);
}

static int send_error(struct runner_srv *s, uint32_t id, int code)
{
	return send_error_msg(s, id, code, NULL);
}

struct piece_ctx {
	struct runner_srv *s;
	uint32_t id;
	bool stream;
	char hold[4]; /* start of a UTF-8 sequence split between pieces */
	size_t n_hold;
};

static int send_piece(struct piece_ctx *c, const char *text, size_t len)
{
	struct rt_rmsg m = {.type = RT_RMSG_PIECE, .id = c->id, .text = (char *)text, .text_len = len};
	return srv_send(c->s, &m);
}

/* Pieces go out as valid UTF-8 (the encoder replaces bad bytes with U+FFFD);
 * a multi-byte character split between two tokens is held back until its
 * last byte comes so that it is not replaced. */
static int on_piece(void *ud, const char *text, size_t len)
{
	struct piece_ctx *c = ud;
	if (c->stream && len) {
		size_t n = c->n_hold + len;
		char *buf = malloc(n);
		if (!buf)
			return 1;
		memcpy(buf, c->hold, c->n_hold);
		memcpy(buf + c->n_hold, text, len);
		size_t tail = rt_utf8_tail(buf, n);
		int err = n > tail ? send_piece(c, buf, n - tail) : 0;
		memcpy(c->hold, buf + n - tail, tail);
		c->n_hold = tail;
		free(buf);
		if (err < 0)
			return 1; /* peer gone or text too long: stop */
	}
	return atomic_load(&c->s->cancel) ? 1 : 0;
}

static void run_job(struct runner_srv *s, struct rt_rmsg *job)
{
	if (job->type == RT_RMSG_STATS) {
		struct rt_rmsg m = {.type = RT_RMSG_STATS_R, .id = job->id};
		int err = rt_backend_stats(s->b, &m.stats);
		finish(s);
		if (err < 0)
			send_error(s, job->id, err);
		else
			srv_send(s, &m);
		return;
	}
	if (job->type == RT_RMSG_PREDICT) {
		struct rt_rmsg m = {.type = RT_RMSG_PREDICTION, .id = job->id};
		char why[512];
		int err = rt_backend_predict(s->b, &job->preq, &m.pres, why, sizeof(why));
		finish(s);
		if (err < 0) {
			send_error_msg(s, job->id, err, why);
			return;
		}
		err = srv_send(s, &m);
		if (err == -EINVAL || err == -FL_ETOOBIG) /* a result the protocol cannot carry */
			send_error_msg(s, job->id, -FL_ETOOBIG, "prediction too large");
		rt_predict_result_free(&m.pres);
		return;
	}
	struct piece_ctx pc = {.s = s, .id = job->id, .stream = job->stream};
	job->req.on_text = on_piece;
	job->req.userdata = &pc;
	struct rt_gen_result res;
	int err = rt_backend_generate(s->b, &job->req, &res);
	if (err >= 0 && pc.n_hold) /* a truncated character at the end: U+FFFD */
		send_piece(&pc, pc.hold, pc.n_hold);
	finish(s);
	if (err < 0) {
		send_error(s, job->id, err);
		return;
	}
	/* Every request gets an answer: if the result cannot be sent (too
	 * long once cleaned), say so instead of leaving the supervisor waiting. */
	struct rt_rmsg m = {.type = RT_RMSG_DONE, .id = job->id, .res = res};
	err = srv_send(s, &m);
	if (err == -EINVAL || err == -FL_ETOOBIG || err == -ENOMEM)
		send_error_msg(s, job->id, -FL_ETOOBIG, "generated text too large");
	rt_gen_result_free(&res);
}

static void *worker(void *arg)
{
	struct runner_srv *s = arg;
	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (!s->job && !s->quit)
			pthread_cond_wait(&s->cond, &s->lock);
		if (!s->job)
			break;
		struct rt_rmsg *job = s->job;
		s->job = NULL;
		pthread_mutex_unlock(&s->lock);
		run_job(s, job);
		/* answered: a PING from now on is told so (its PONG follows the answer) */
		unsigned id = job->id;
		atomic_compare_exchange_strong(&s->owe_id, &id, 0);
		rt_rmsg_free(job);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int rt_runner_main(int fd, const char *backend, const char *model_path,
		   const struct rt_backend_opts *opts)
{
	if (fd < 0 || !backend || !model_path)
		return -EINVAL;
	struct runner_srv s = {.fd = fd};
	pthread_mutex_init(&s.wlock, NULL);
	pthread_mutex_init(&s.lock, NULL);
	pthread_cond_init(&s.cond, NULL);
	int err = rt_backend_open(backend, model_path, opts, &s.b);
	struct rt_rmsg ready = {.type = RT_RMSG_READY, .code = err < 0 ? err : 0};
	struct rt_backend_stats st;
	if (err == 0 && rt_backend_stats(s.b, &st) == 0) {
		ready.text = st.model;
		ready.text_len = strnlen(st.model, sizeof(st.model));
	} else if (err < 0) {
		ready.text = (char *)fl_strerror(err);
		ready.text_len = strlen(ready.text);
		fprintf(stderr, "runner: cannot open %s with %s: %s\n", model_path, backend,
			fl_strerror(err));
	}
	int serr = srv_send(&s, &ready);
	if (err < 0 || serr < 0)
		goto out;

	pthread_t th;
	err = -pthread_create(&th, NULL, worker, &s);
	if (err < 0)
		goto out;
	struct rt_frame_reader rd = {0};
	for (bool done = false; !done;) {
		int e = rt_frame_fill(fd, &rd);
		if (e < 0) {
			if (e != -EPIPE)
				err = e;
			break;
		}
		struct rt_rmsg *m;
		while (!done && (e = rt_frame_next(&rd, &m)) == 1) {
			switch (m->type) {
			case RT_RMSG_PING: {
				/* PING names the request the supervisor waits for: the
				 * PONG repeats it while its answer is still owed, else 0,
				 * so that an answer lost here cannot hang the caller. */
				uint32_t owe = atomic_load(&s.owe_id);
				struct rt_rmsg p = {.type = RT_RMSG_PONG, .id = m->id && m->id == owe ? m->id : 0};
				srv_send(&s, &p);
				rt_rmsg_free(m);
				break;
			}
			case RT_RMSG_CANCEL:
				if (m->id && atomic_load(&s.cur_id) == m->id)
					atomic_store(&s.cancel, true);
				rt_rmsg_free(m);
				break;
			case RT_RMSG_GENERATE:
			case RT_RMSG_STATS:
			case RT_RMSG_PREDICT:
				pthread_mutex_lock(&s.lock);
				if (s.busy) {
					pthread_mutex_unlock(&s.lock);
					send_error(&s, m->id, -FL_EBUSY);
					rt_rmsg_free(m);
					break;
				}
				atomic_store(&s.cancel, false);
				atomic_store(&s.cur_id, m->id);
				atomic_store(&s.owe_id, m->id);
				s.job = m;
				s.busy = true;
				pthread_cond_signal(&s.cond);
				pthread_mutex_unlock(&s.lock);
				break;
			case RT_RMSG_SHUTDOWN:
				done = true;
				rt_rmsg_free(m);
				break;
			default: /* a response type sent to the runner */
				rt_rmsg_free(m);
				err = -FL_EPROTO;
				done = true;
			}
		}
		if (e < 0) {
			fprintf(stderr, "runner: bad message from supervisor: %s\n", fl_strerror(e));
			err = e;
			break;
		}
	}
	rt_frame_reader_free(&rd);
	pthread_mutex_lock(&s.lock);
	s.quit = true;
	atomic_store(&s.cancel, true);
	pthread_cond_signal(&s.cond);
	pthread_mutex_unlock(&s.lock);
	pthread_join(th, NULL);
out:
	rt_backend_close(s.b);
	pthread_cond_destroy(&s.cond);
	pthread_mutex_destroy(&s.lock);
	pthread_mutex_destroy(&s.wlock);
	return err < 0 ? err : 0;
}

static bool parse_int(const char *s, long lo, long hi, int *ret)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return false;
	*ret = (int)v;
	return true;
}

int rt_runner_cli(int argc, char **argv)
{
	int fd = -1;
	unsigned long long mem = 0;
	const char *backend = NULL, *model = NULL;
	struct rt_backend_opts o;
	rt_backend_opts_default(&o);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "runner"))
			continue;
		if (!v)
			return 2;
		i++;
		if (!strcmp(a, "--fd")) {
			if (!parse_int(v, 0, 1 << 20, &fd))
				return 2;
		} else if (!strcmp(a, "--backend")) {
			backend = v;
		} else if (!strcmp(a, "--model")) {
			model = v;
		} else if (!strcmp(a, "--threads")) {
			if (!parse_int(v, 0, 1024, &o.n_threads))
				return 2;
		} else if (!strcmp(a, "--mem-bytes")) {
			char *end;
			errno = 0;
			mem = strtoull(v, &end, 10);
			if (errno || end == v || *end)
				return 2;
		} else if (!strcmp(a, "--backend-config")) {
			o.config = v;
		} else if (!strcmp(a, "--ctx")) {
			if (!parse_int(v, 0, 1 << 24, &o.n_ctx))
				return 2;
		} else {
			return 2;
		}
	}
	if (fd < 0 || !backend || !model)
		return 2;
	if (mem) {
		/* the model's memory limit: allocations over it fail, the load
		 * reports -ENOMEM to the supervisor */
		struct rlimit rl = {(rlim_t)mem, (rlim_t)mem};
		if (setrlimit(RLIMIT_AS, &rl) < 0)
			return 1;
	}
	return rt_runner_main(fd, backend, model, &o) < 0 ? 1 : 0;
}
