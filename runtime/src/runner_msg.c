/* Runner protocol: encoding and strict decoding of one frame (runner.h). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flotilla/cleanup.h"
#include "flotilla/error.h"
#include "flotilla/runner.h"
#include "runner_internal.h"

#define MAX_STRS (2 * RT_BACKEND_MAX_MESSAGES + RT_BACKEND_MAX_STOP + 4)

/* ------------------------------------------------------ generated text */

/* Bytes of the well-formed UTF-8 prefix at P[0..N): *RET_NEED is the length
 * the lead byte announces (0 if P[0] cannot start a sequence); the return is
 * how many bytes from P[0] fit that sequence (the "maximal subpart"). */
static size_t utf8_prefix(const uint8_t *p, size_t n, size_t *ret_need)
{
	uint8_t c = p[0], lo = 0x80, hi = 0xBF;
	size_t need;
	if (c >= 0x01 && c < 0x80)
		need = 1;
	else if (c >= 0xC2 && c <= 0xDF)
		need = 2;
	else if (c >= 0xE0 && c <= 0xEF) {
		need = 3;
		lo = c == 0xE0 ? 0xA0 : 0x80;
		hi = c == 0xED ? 0x9F : 0xBF;
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 4;
		lo = c == 0xF0 ? 0x90 : 0x80;
		hi = c == 0xF4 ? 0x8F : 0xBF;
	} else {
		*ret_need = 0;
		return 0;
	}
	*ret_need = need;
	size_t k = 1;
	for (; k < need && k < n; k++) {
		uint8_t b = p[k];
		if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF))
			break;
	}
	return k;
}

char *rt_text_clean(const char *s, size_t n, size_t *ret_len)
{
	if (!s)
		n = 0;
	/* each input byte becomes at most 3 output bytes */
	char *out = malloc(n * 3 + 1);
	if (!out)
		return NULL;
	const uint8_t *p = (const uint8_t *)s;
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		size_t need, k = utf8_prefix(p + i, n - i, &need);
		if (need && k == need) {
			memcpy(out + o, p + i, k);
			o += k;
			i += k;
		} else {
			memcpy(out + o, "\xEF\xBF\xBD", 3); /* U+FFFD */
			o += 3;
			i += k ? k : 1;
		}
	}
	out[o] = '\0';
	if (ret_len)
		*ret_len = o;
	return out;
}

static bool utf8_valid(const char *s, size_t n)
{
	const uint8_t *p = (const uint8_t *)s;
	for (size_t i = 0; i < n;) {
		size_t need, k = utf8_prefix(p + i, n - i, &need);
		if (!need || k != need)
			return false;
		i += k;
	}
	return true;
}

size_t rt_utf8_tail(const char *s, size_t n)
{
	const uint8_t *p = (const uint8_t *)s;
	for (size_t back = 1; back <= 3 && back <= n; back++) {
		uint8_t c = p[n - back];
		if (c >= 0x80 && c < 0xC0)
			continue; /* continuation byte: look further back */
		size_t need, k = utf8_prefix(p + n - back, back, &need);
		return need > back && k == back ? back : 0;
	}
	return 0;
}

/* ------------------------------------------------------------- encoder */

struct wbuf {
	uint8_t *p;
	size_t len, cap;
	int err;
};

static void w_bytes(struct wbuf *w, const void *d, size_t n)
{
	if (w->err)
		return;
	if (w->len + n > (size_t)RT_RMSG_MAX_BYTES + 4) {
		w->err = -FL_ETOOBIG;
		return;
	}
	if (w->len + n > w->cap) {
		size_t nc = w->cap ? w->cap : 256;
		while (nc < w->len + n)
			nc *= 2;
		uint8_t *np = realloc(w->p, nc);
		if (!np) {
			w->err = -ENOMEM;
			return;
		}
		w->p = np;
		w->cap = nc;
	}
	memcpy(w->p + w->len, d, n);
	w->len += n;
}

static void w_u8(struct wbuf *w, uint8_t v) { w_bytes(w, &v, 1); }

static void w_u32(struct wbuf *w, uint32_t v)
{
	uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
	w_bytes(w, b, 4);
}

static void w_u64(struct wbuf *w, uint64_t v)
{
	w_u32(w, (uint32_t)v);
	w_u32(w, (uint32_t)(v >> 32));
}

static void w_i32(struct wbuf *w, int32_t v) { w_u32(w, (uint32_t)v); }

static void w_f32s(struct wbuf *w, const float *v, size_t n)
{
	for (size_t i = 0; i < n && !w->err; i++) {
		uint32_t u;
		memcpy(&u, &v[i], 4);
		w_u32(w, u);
	}
}

static void w_f64(struct wbuf *w, double v)
{
	uint64_t u;
	memcpy(&u, &v, 8);
	w_u64(w, u);
}

static void w_strn(struct wbuf *w, const char *s, size_t n, size_t max)
{
	if (!s) {
		if (!w->err)
			w->err = -EINVAL;
		return;
	}
	if (n > max || memchr(s, '\0', n)) {
		if (!w->err)
			w->err = n > max ? -FL_ETOOBIG : -EINVAL;
		return;
	}
	w_u32(w, (uint32_t)n);
	w_bytes(w, s, n);
}

static void w_str(struct wbuf *w, const char *s, size_t max)
{
	w_strn(w, s, s ? strnlen(s, max + 1) : 0, max);
}

/* Generated text: any bytes in, valid UTF-8 without NUL on the wire. */
static void w_text(struct wbuf *w, const char *s, size_t n, size_t max)
{
	if (w->err)
		return;
	if (n > max) { /* before cleaning: it only grows */
		w->err = -FL_ETOOBIG;
		return;
	}
	size_t cn = 0;
	char *c = rt_text_clean(s, n, &cn);
	if (!c) {
		w->err = -ENOMEM;
		return;
	}
	w_strn(w, c, cn, max);
	free(c);
}

int rt_rmsg_encode(const struct rt_rmsg *m, void **ret_buf, size_t *ret_len)
{
	if (!m || !ret_buf || !ret_len)
		return -EINVAL;
	struct wbuf w = {0};
	w_u32(&w, 0); /* length, patched below */
	w_u8(&w, (uint8_t)m->type);
	w_u32(&w, m->id);
	switch (m->type) {
	case RT_RMSG_GENERATE: {
		const struct rt_gen_request *q = &m->req;
		bool has_prompt = q->n_messages == 0;
		if (q->n_messages > RT_BACKEND_MAX_MESSAGES || q->n_stop > RT_BACKEND_MAX_STOP ||
		    (q->n_messages && !q->messages) || (q->n_stop && !q->stop) || q->max_tokens < 1 ||
		    q->max_tokens > RT_BACKEND_MAX_TOKENS_LIMIT) {
			w.err = w.err ? w.err : -EINVAL;
			break;
		}
		w_u8(&w, (uint8_t)((m->stream ? 1 : 0) | (q->parse_special ? 2 : 0) |
				   (has_prompt ? 4 : 0)));
		if (has_prompt)
			w_str(&w, q->prompt, RT_RMSG_MAX_TEXT_BYTES);
		w_u32(&w, (uint32_t)q->n_messages);
		for (size_t i = 0; i < q->n_messages; i++) {
			w_str(&w, q->messages[i].role, RT_RMSG_MAX_SHORT_BYTES);
			w_str(&w, q->messages[i].content, RT_RMSG_MAX_TEXT_BYTES);
		}
		w_f64(&w, q->sampling.temperature);
		w_i32(&w, q->sampling.top_k);
		w_f64(&w, q->sampling.top_p);
		w_f64(&w, q->sampling.min_p);
		w_f64(&w, q->sampling.repeat_penalty);
		w_i32(&w, q->sampling.repeat_last_n);
		w_u64(&w, q->sampling.seed);
		w_i32(&w, q->max_tokens);
		w_u32(&w, (uint32_t)q->n_stop);
		for (size_t i = 0; i < q->n_stop; i++)
			w_str(&w, q->stop[i], RT_BACKEND_MAX_STOP_BYTES);
		break;
	}
	case RT_RMSG_PING:
	case RT_RMSG_PONG:
	case RT_RMSG_STATS:
	case RT_RMSG_SHUTDOWN:
	case RT_RMSG_CANCEL:
		break;
	case RT_RMSG_PREDICT: {
		const struct rt_predict_request *q = &m->preq;
		if (!q->values || q->n_rows < 1 || q->n_cols < 1 || q->n_cols > RT_PREDICT_MAX_COLS ||
		    q->n_rows > RT_PREDICT_MAX_VALUES / q->n_cols) {
			w.err = w.err ? w.err : -EINVAL;
			break;
		}
		w_u32(&w, (uint32_t)q->n_rows);
		w_u32(&w, (uint32_t)q->n_cols);
		w_f32s(&w, q->values, q->n_rows * q->n_cols);
		break;
	}
	case RT_RMSG_PREDICTION: {
		const struct rt_predict_result *p = &m->pres;
		if (!p->values || p->n_rows < 1 || p->n_out < 1 || p->n_out > RT_PREDICT_MAX_VALUES ||
		    p->n_rows > RT_PREDICT_MAX_VALUES / p->n_out || p->kind < RT_PREDICT_VALUE ||
		    p->kind > RT_PREDICT_CLASS) {
			w.err = w.err ? w.err : -EINVAL;
			break;
		}
		w_u8(&w, (uint8_t)p->kind);
		w_strn(&w, p->objective, strnlen(p->objective, sizeof(p->objective) - 1),
		       sizeof(p->objective) - 1);
		w_f64(&w, p->ms);
		w_u32(&w, (uint32_t)p->n_rows);
		w_u32(&w, (uint32_t)p->n_out);
		w_f32s(&w, p->values, p->n_rows * p->n_out);
		break;
	}
	case RT_RMSG_READY:
	case RT_RMSG_ERROR:
		if (m->code > 0 || (m->type == RT_RMSG_ERROR && m->code == 0)) {
			w.err = w.err ? w.err : -EINVAL;
			break;
		}
		w_i32(&w, m->code);
		w_strn(&w, m->text ? m->text : "", m->text ? m->text_len : 0, RT_RMSG_MAX_SHORT_BYTES);
		break;
	case RT_RMSG_PIECE:
		if (!m->text) {
			w.err = w.err ? w.err : -EINVAL;
			break;
		}
		w_text(&w, m->text, m->text_len, RT_RMSG_MAX_TEXT_BYTES);
		break;
	case RT_RMSG_DONE:
		w_text(&w, m->res.text, m->res.text ? m->res.text_len : 0, RT_RMSG_MAX_TEXT_BYTES);
		w_i32(&w, m->res.n_prompt);
		w_i32(&w, m->res.n_prompt_cached);
		w_i32(&w, m->res.n_gen);
		w_u8(&w, (uint8_t)m->res.stop_reason);
		w_f64(&w, m->res.prompt_ms);
		w_f64(&w, m->res.gen_ms);
		break;
	case RT_RMSG_STATS_R: {
		const struct rt_backend_stats *s = &m->stats;
		w_strn(&w, s->backend, strnlen(s->backend, sizeof(s->backend) - 1), sizeof(s->backend) - 1);
		w_strn(&w, s->model, strnlen(s->model, sizeof(s->model) - 1), sizeof(s->model) - 1);
		w_u64(&w, s->n_requests);
		w_u64(&w, s->n_errors);
		w_u64(&w, s->n_prompt_tokens);
		w_u64(&w, s->n_gen_tokens);
		w_f64(&w, s->prompt_ms);
		w_f64(&w, s->gen_ms);
		w_u64(&w, s->mem_bytes);
		w_i32(&w, s->n_ctx);
		w_i32(&w, s->n_threads);
		break;
	}
	default:
		w.err = w.err ? w.err : -EINVAL;
	}
	if (!w.err && w.len - 4 > RT_RMSG_MAX_BYTES)
		w.err = -FL_ETOOBIG;
	if (w.err) {
		free(w.p);
		return w.err;
	}
	uint32_t n = (uint32_t)(w.len - 4);
	w.p[0] = (uint8_t)n;
	w.p[1] = (uint8_t)(n >> 8);
	w.p[2] = (uint8_t)(n >> 16);
	w.p[3] = (uint8_t)(n >> 24);
	*ret_buf = w.p;
	*ret_len = w.len;
	return 0;
}

/* ------------------------------------------------------------- decoder */

struct rbuf {
	const uint8_t *p;
	size_t len, off;
	int err;
};

static const uint8_t *r_take(struct rbuf *r, size_t n)
{
	if (r->err)
		return NULL;
	if (r->len - r->off < n) {
		r->err = -FL_EPROTO;
		return NULL;
	}
	const uint8_t *p = r->p + r->off;
	r->off += n;
	return p;
}

static uint8_t r_u8(struct rbuf *r)
{
	const uint8_t *p = r_take(r, 1);
	return p ? p[0] : 0;
}

static uint32_t r_u32(struct rbuf *r)
{
	const uint8_t *p = r_take(r, 4);
	return p ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
		 : 0;
}

static uint64_t r_u64(struct rbuf *r)
{
	uint64_t lo = r_u32(r);
	return lo | (uint64_t)r_u32(r) << 32;
}

static int32_t r_i32(struct rbuf *r) { return (int32_t)r_u32(r); }

static double r_f64(struct rbuf *r)
{
	uint64_t u = r_u64(r);
	double d;
	memcpy(&d, &u, 8);
	return d;
}

/* A string copy owned by M (freed with it), or NULL with r->err set. */
static char *r_str(struct rbuf *r, struct rt_rmsg *m, size_t max, size_t *ret_len)
{
	uint32_t n = r_u32(r);
	if (r->err)
		return NULL;
	if (n > max) {
		r->err = -FL_ETOOBIG;
		return NULL;
	}
	const uint8_t *p = r_take(r, n);
	if (!p)
		return NULL;
	if (memchr(p, '\0', n)) {
		r->err = -FL_EPROTO;
		return NULL;
	}
	if (m->n_strs >= MAX_STRS) {
		r->err = -FL_ETOOBIG;
		return NULL;
	}
	char *s = malloc((size_t)n + 1);
	if (!s) {
		r->err = -ENOMEM;
		return NULL;
	}
	memcpy(s, p, n);
	s[n] = '\0';
	m->strs[m->n_strs++] = s;
	if (ret_len)
		*ret_len = n;
	return s;
}

static void r_fixed(struct rbuf *r, struct rt_rmsg *m, char *dst, size_t size)
{
	size_t n = 0;
	const char *s = r_str(r, m, size - 1, &n);
	if (s)
		memcpy(dst, s, n + 1);
}

void rt_rmsg_free(struct rt_rmsg *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n_strs; i++)
		free(m->strs[i]);
	free(m->strs);
	free(m->msgs_store);
	free((void *)m->req.stop);
	free(m->fstore);
	free(m);
}

static void decode_generate(struct rbuf *r, struct rt_rmsg *m)
{
	struct rt_gen_request *q = &m->req;
	rt_gen_request_default(q);
	uint8_t flags = r_u8(r);
	if (flags & ~7u) {
		r->err = r->err ? r->err : -FL_EPROTO;
		return;
	}
	m->stream = flags & 1;
	q->parse_special = (flags & 2) != 0;
	if (flags & 4)
		q->prompt = r_str(r, m, RT_RMSG_MAX_TEXT_BYTES, NULL);
	uint32_t nm = r_u32(r);
	if (r->err)
		return;
	if (nm > RT_BACKEND_MAX_MESSAGES) {
		r->err = -FL_ETOOBIG;
		return;
	}
	/* exactly one of prompt and messages */
	if ((nm == 0) != ((flags & 4) != 0)) {
		r->err = -FL_EPROTO;
		return;
	}
	if (nm) {
		/* each message takes >= 8 bytes: reject counts the payload cannot hold */
		if ((size_t)nm * 8 > r->len - r->off) {
			r->err = -FL_EPROTO;
			return;
		}
		m->msgs_store = calloc(nm, sizeof(*m->msgs_store));
		if (!m->msgs_store) {
			r->err = -ENOMEM;
			return;
		}
		for (uint32_t i = 0; i < nm && !r->err; i++) {
			m->msgs_store[i].role = r_str(r, m, RT_RMSG_MAX_SHORT_BYTES, NULL);
			m->msgs_store[i].content = r_str(r, m, RT_RMSG_MAX_TEXT_BYTES, NULL);
		}
		q->messages = m->msgs_store;
		q->n_messages = nm;
	}
	q->sampling.temperature = (float)r_f64(r);
	q->sampling.top_k = r_i32(r);
	q->sampling.top_p = (float)r_f64(r);
	q->sampling.min_p = (float)r_f64(r);
	q->sampling.repeat_penalty = (float)r_f64(r);
	q->sampling.repeat_last_n = r_i32(r);
	q->sampling.seed = r_u64(r);
	q->max_tokens = r_i32(r);
	uint32_t ns = r_u32(r);
	if (r->err)
		return;
	if (ns > RT_BACKEND_MAX_STOP) {
		r->err = -FL_ETOOBIG;
		return;
	}
	if (q->max_tokens < 1 || q->max_tokens > RT_BACKEND_MAX_TOKENS_LIMIT) {
		r->err = -FL_EPROTO;
		return;
	}
	if (ns) {
		const char **stops = calloc(ns, sizeof(*stops));
		if (!stops) {
			r->err = -ENOMEM;
			return;
		}
		q->stop = stops;
		for (uint32_t i = 0; i < ns && !r->err; i++)
			stops[i] = r_str(r, m, RT_BACKEND_MAX_STOP_BYTES, NULL);
		q->n_stop = ns;
	}
}

/* N floats into a new m->fstore. */
static float *r_f32s(struct rbuf *r, struct rt_rmsg *m, size_t n)
{
	if (r->err)
		return NULL;
	if (r->len - r->off < n * 4) {
		r->err = -FL_EPROTO;
		return NULL;
	}
	m->fstore = malloc(n * sizeof(float));
	if (!m->fstore) {
		r->err = -ENOMEM;
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t u = r_u32(r);
		memcpy(&m->fstore[i], &u, 4);
	}
	return m->fstore;
}

/* Rows x columns of a PREDICT / PREDICTION, checked against the limits. */
static size_t r_dims(struct rbuf *r, size_t *rows, size_t *cols, size_t max_cols)
{
	*rows = r_u32(r);
	*cols = r_u32(r);
	if (r->err)
		return 0;
	if (*rows < 1 || *cols < 1) {
		r->err = -FL_EPROTO;
		return 0;
	}
	if (*cols > max_cols || *rows > RT_PREDICT_MAX_VALUES / *cols) {
		r->err = -FL_ETOOBIG;
		return 0;
	}
	return *rows * *cols;
}

int rt_rmsg_decode(const void *payload, size_t len, struct rt_rmsg **ret_msg)
{
	if (!payload || !ret_msg)
		return -EINVAL;
	if (len < 5)
		return -FL_EPROTO;
	if (len > RT_RMSG_MAX_BYTES)
		return -FL_ETOOBIG;
	struct rt_rmsg *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->strs = calloc(MAX_STRS, sizeof(char *));
	if (!m->strs) {
		free(m);
		return -ENOMEM;
	}
	struct rbuf r = {payload, len, 0, 0};
	uint8_t t = r_u8(&r);
	m->type = (enum rt_rmsg_type)t;
	m->id = r_u32(&r);
	switch (t) {
	case RT_RMSG_GENERATE:
		decode_generate(&r, m);
		break;
	case RT_RMSG_PING:
	case RT_RMSG_PONG:
	case RT_RMSG_STATS:
	case RT_RMSG_SHUTDOWN:
	case RT_RMSG_CANCEL:
		break;
	case RT_RMSG_PREDICT: {
		size_t n = r_dims(&r, &m->preq.n_rows, &m->preq.n_cols, RT_PREDICT_MAX_COLS);
		m->preq.values = n ? r_f32s(&r, m, n) : NULL;
		break;
	}
	case RT_RMSG_PREDICTION: {
		struct rt_predict_result *p = &m->pres;
		uint8_t k = r_u8(&r);
		r_fixed(&r, m, p->objective, sizeof(p->objective));
		p->ms = r_f64(&r);
		size_t n = r_dims(&r, &p->n_rows, &p->n_out, RT_PREDICT_MAX_VALUES);
		p->values = n ? r_f32s(&r, m, n) : NULL;
		if (!r.err && (k < RT_PREDICT_VALUE || k > RT_PREDICT_CLASS || !isfinite(p->ms)))
			r.err = -FL_EPROTO;
		p->kind = (enum rt_predict_kind)k;
		break;
	}
	case RT_RMSG_READY:
	case RT_RMSG_ERROR:
		m->code = r_i32(&r);
		m->text = r_str(&r, m, RT_RMSG_MAX_SHORT_BYTES, &m->text_len);
		if (!r.err && (m->code > 0 || (t == RT_RMSG_ERROR && m->code == 0)))
			r.err = -FL_EPROTO;
		break;
	case RT_RMSG_PIECE:
		m->text = r_str(&r, m, RT_RMSG_MAX_TEXT_BYTES, &m->text_len);
		if (m->text && !utf8_valid(m->text, m->text_len)) /* w_text sends no other */
			r.err = -FL_EPROTO;
		break;
	case RT_RMSG_DONE: {
		m->text = r_str(&r, m, RT_RMSG_MAX_TEXT_BYTES, &m->text_len);
		if (m->text && !utf8_valid(m->text, m->text_len))
			r.err = -FL_EPROTO;
		m->res.text = m->text;
		m->res.text_len = m->text_len;
		m->res.n_prompt = r_i32(&r);
		m->res.n_prompt_cached = r_i32(&r);
		m->res.n_gen = r_i32(&r);
		uint8_t sr = r_u8(&r);
		m->res.prompt_ms = r_f64(&r);
		m->res.gen_ms = r_f64(&r);
		if (!r.err && (sr < RT_STOP_EOG || sr > RT_STOP_CONTEXT || m->res.n_prompt < 0 ||
			       m->res.n_gen < 0 || m->res.n_prompt_cached < 0 ||
			       m->res.n_prompt_cached > m->res.n_prompt || !isfinite(m->res.prompt_ms) ||
			       !isfinite(m->res.gen_ms)))
			r.err = -FL_EPROTO;
		m->res.stop_reason = (enum rt_stop_reason)sr;
		break;
	}
	case RT_RMSG_STATS_R: {
		struct rt_backend_stats *s = &m->stats;
		r_fixed(&r, m, s->backend, sizeof(s->backend));
		r_fixed(&r, m, s->model, sizeof(s->model));
		s->n_requests = r_u64(&r);
		s->n_errors = r_u64(&r);
		s->n_prompt_tokens = r_u64(&r);
		s->n_gen_tokens = r_u64(&r);
		s->prompt_ms = r_f64(&r);
		s->gen_ms = r_f64(&r);
		s->mem_bytes = r_u64(&r);
		s->n_ctx = r_i32(&r);
		s->n_threads = r_i32(&r);
		break;
	}
	default:
		r.err = -FL_EPROTO;
	}
	if (!r.err && r.off != r.len)
		r.err = -FL_EPROTO;
	if (r.err) {
		rt_rmsg_free(m);
		return r.err;
	}
	*ret_msg = m;
	return 0;
}
