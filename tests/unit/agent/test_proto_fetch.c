/* agentproto: chunk/dat frames, chunk/req payloads and the fetch engine
 * (agent/src/proto_fetch.c) against an owner held in memory. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "proto.h"
#include <flotilla/error.h>
#include <flotilla/hash.h>

/* ------------------------------------------------------------- helpers */

static size_t frame(uint8_t *out, int status, const uint8_t id[32], uint64_t off, const void *data,
		    uint32_t len)
{
	memset(out, 0, PROTO_FRAME_HDR);
	memcpy(out, "FLCK", 4);
	out[4] = 1;
	out[5] = (uint8_t)status;
	memcpy(out + 8, id, 32);
	for (int i = 0; i < 8; i++)
		out[40 + i] = (uint8_t)(off >> (8 * i));
	for (int i = 0; i < 4; i++)
		out[48 + i] = (uint8_t)(len >> (8 * i));
	if (len)
		memcpy(out + PROTO_FRAME_HDR, data, len);
	return PROTO_FRAME_HDR + len;
}

#define NCH 3
struct owner {
	uint8_t data[NCH][4096];
	uint8_t id[NCH][32];
	int state[NCH]; /* 0 missing, 1 in flight, 2 stored */
	int sends, send_err, put_err;
	char last_req[2048];
	int index_calls, index_err;
	size_t index_len;
	int released;
};

static int o_send(void *ud, const void *req, size_t len)
{
	struct owner *o = ud;
	if (o->send_err)
		return o->send_err;
	o->sends++;
	assert_true(len < sizeof(o->last_req));
	memcpy(o->last_req, req, len);
	o->last_req[len] = 0;
	return 0;
}

static int o_next(void *ud, uint8_t id[32], uint32_t *len)
{
	struct owner *o = ud;
	for (int i = 0; i < NCH; i++)
		if (o->state[i] == 0) {
			o->state[i] = 1;
			memcpy(id, o->id[i], 32);
			*len = sizeof(o->data[i]);
			return 1;
		}
	return 0;
}

static int find(struct owner *o, const uint8_t id[32])
{
	for (int i = 0; i < NCH; i++)
		if (!memcmp(o->id[i], id, 32))
			return i;
	return -1;
}

static void o_release(void *ud, const uint8_t id[32])
{
	struct owner *o = ud;
	int i = find(o, id);
	assert_true(i >= 0);
	if (o->state[i] == 1)
		o->state[i] = 0;
	o->released++;
}

static int o_put(void *ud, const uint8_t id[32], const void *data, uint32_t len)
{
	struct owner *o = ud;
	if (o->put_err)
		return o->put_err;
	int i = find(o, id);
	if (i < 0 || o->state[i] == 2)
		return -FL_EPROTO;
	uint8_t h[32];
	fl_sha256(data, len, h);
	if (len != sizeof(o->data[i]))
		return -FL_ESIZE;
	if (memcmp(h, id, 32))
		return -FL_EHASH;
	o->state[i] = 2;
	return 0;
}

static bool o_complete(void *ud)
{
	struct owner *o = ud;
	for (int i = 0; i < NCH; i++)
		if (o->state[i] != 2)
			return false;
	return true;
}

static int o_index(void *ud, const void *buf, size_t len)
{
	struct owner *o = ud;
	(void)buf;
	o->index_calls++;
	o->index_len = len;
	return o->index_err;
}

static const struct proto_fetch_ops ops = {.send = o_send, .next_missing = o_next,
					   .release = o_release, .put = o_put,
					   .complete = o_complete, .index_done = o_index};

static void owner_init(struct owner *o)
{
	memset(o, 0, sizeof(*o));
	for (int i = 0; i < NCH; i++) {
		memset(o->data[i], 'a' + i, sizeof(o->data[i]));
		fl_sha256(o->data[i], sizeof(o->data[i]), o->id[i]);
	}
}

/* ranges of the last request: count, and whether chunk I is in it */
static int req_count(struct owner *o)
{
	cJSON *j = cJSON_Parse(o->last_req);
	assert_non_null(j);
	assert_int_equal(cJSON_GetObjectItem(j, "v")->valueint, 1);
	int n = cJSON_GetArraySize(cJSON_GetObjectItem(j, "req"));
	cJSON_Delete(j);
	return n;
}

static struct proto_fetch *chunk_engine(struct owner *o, uint64_t cap, int64_t now)
{
	struct proto_fetch *f = NULL;
	assert_int_equal(proto_fetch_new(&ops, o, cap, now, &f), 0);
	assert_int_equal(proto_fetch_start_chunks(f), 0);
	return f;
}

static uint8_t fb[PROTO_FRAME_MAX + 16];

/* --------------------------------------------------------------- tests */

static void test_frame_parse(void **state)
{
	(void)state;
	uint8_t id[32];
	memset(id, 7, sizeof(id));
	size_t n = frame(fb, 0, id, 123, "abc", 3);
	struct proto_frame fr;
	assert_int_equal(proto_frame_parse(fb, n, &fr), 0);
	assert_int_equal(fr.status, 0);
	assert_int_equal(fr.off, 123);
	assert_int_equal(fr.len, 3);
	assert_memory_equal(fr.data, "abc", 3);
	assert_memory_equal(fr.id, id, 32);
	assert_int_equal(proto_frame_parse(fb, n - 1, &fr), -FL_EPROTO); /* length mismatch */
	assert_int_equal(proto_frame_parse(fb, 51, &fr), -FL_EPROTO);    /* short */
	assert_int_equal(proto_frame_parse(NULL, n, &fr), -FL_EPROTO);
	assert_int_equal(proto_frame_parse(fb, n, NULL), -EINVAL);
	fb[0] = 'X';
	assert_int_equal(proto_frame_parse(fb, n, &fr), -FL_EPROTO);
	n = frame(fb, 0, id, 0, "abc", 3);
	fb[4] = 2;
	assert_int_equal(proto_frame_parse(fb, n, &fr), -FL_EPROTO); /* version */
	n = frame(fb, 3, id, 0, NULL, 0);
	assert_int_equal(proto_frame_parse(fb, n, &fr), -FL_EPROTO); /* status */
	n = frame(fb, 1, id, 0, "abc", 3);
	assert_int_equal(proto_frame_parse(fb, n, &fr), -FL_EPROTO); /* data with "not found" */
	n = frame(fb, 2, id, 5, NULL, 0);
	assert_int_equal(proto_frame_parse(fb, n, &fr), 0);
	assert_int_equal(fr.status, 2);
	static uint8_t big[PROTO_RANGE_MAX + 1];
	n = frame(fb, 0, id, 0, big, PROTO_RANGE_MAX);
	assert_int_equal(proto_frame_parse(fb, n, &fr), 0);
	n = frame(fb, 0, id, 0, big, PROTO_RANGE_MAX + 1);
	assert_int_equal(proto_frame_parse(fb, n, &fr), -FL_EPROTO); /* too long */
}

static void test_req_build(void **state)
{
	(void)state;
	struct proto_range r[PROTO_FETCH_REQ_ITEMS + 1];
	memset(r, 0, sizeof(r));
	for (int i = 0; i < PROTO_FETCH_REQ_ITEMS + 1; i++) {
		memset(r[i].id, 0xab, 32);
		r[i].off = (uint64_t)i << 40;
		r[i].len = PROTO_RANGE_MAX;
	}
	char buf[2048];
	int n = proto_req_build(r, PROTO_FETCH_REQ_ITEMS, buf, sizeof(buf));
	assert_true(n > 0);
	assert_int_equal((size_t)n, strlen(buf));
	cJSON *j = cJSON_Parse(buf);
	assert_non_null(j);
	cJSON *a = cJSON_GetObjectItem(j, "req");
	assert_int_equal(cJSON_GetArraySize(a), PROTO_FETCH_REQ_ITEMS);
	cJSON *last = cJSON_GetArrayItem(a, PROTO_FETCH_REQ_ITEMS - 1);
	assert_int_equal(strlen(cJSON_GetObjectItem(last, "id")->valuestring), 64);
	assert_true(cJSON_GetObjectItem(last, "off")->valuedouble == (double)(7ull << 40));
	cJSON_Delete(j);
	assert_int_equal(proto_req_build(r, PROTO_FETCH_REQ_ITEMS + 1, buf, sizeof(buf)), -EINVAL);
	assert_int_equal(proto_req_build(r, 0, buf, sizeof(buf)), -EINVAL);
	assert_int_equal(proto_req_build(NULL, 1, buf, sizeof(buf)), -EINVAL);
	assert_int_equal(proto_req_build(r, 1, NULL, 10), -EINVAL);
	assert_int_equal(proto_req_build(r, 1, buf, 40), -FL_ETOOBIG);
	r[0].len = 0;
	assert_int_equal(proto_req_build(r, 1, buf, sizeof(buf)), -EINVAL);
	r[0].len = PROTO_RANGE_MAX + 1;
	assert_int_equal(proto_req_build(r, 1, buf, sizeof(buf)), -EINVAL);
}

static void test_bad_calls(void **state)
{
	(void)state;
	struct owner o;
	owner_init(&o);
	struct proto_fetch *f = NULL;
	struct proto_fetch_ops bad = ops;
	bad.put = NULL;
	assert_int_equal(proto_fetch_new(&bad, &o, 0, 0, &f), -EINVAL);
	bad = ops;
	bad.send = NULL;
	assert_int_equal(proto_fetch_new(&bad, &o, 0, 0, &f), -EINVAL);
	assert_int_equal(proto_fetch_new(NULL, &o, 0, 0, &f), -EINVAL);
	assert_int_equal(proto_fetch_new(&ops, &o, 0, 0, NULL), -EINVAL);
	assert_null(f);
	int next;
	assert_int_equal(proto_fetch_step(NULL, 0, &next), -EINVAL);
	assert_int_equal(proto_fetch_on_frame(NULL, fb, 60, 0), -EINVAL);
	assert_int_equal(proto_fetch_want_index(NULL, o.id[0]), -EINVAL);
	assert_int_equal(proto_fetch_start_chunks(NULL), -EINVAL);
	proto_fetch_reconnected(NULL);
	proto_fetch_free(NULL);
	assert_int_equal(proto_fetch_error(NULL), 0);
	assert_string_equal(proto_fetch_reason(NULL), "");
	assert_int_equal(proto_fetch_new(&ops, &o, 0, 0, &f), 0);
	assert_int_equal(proto_fetch_step(f, 0, NULL), -EINVAL);
	assert_int_equal(proto_fetch_want_index(f, NULL), -EINVAL);
	assert_int_equal(proto_fetch_want_index(f, o.id[0]), 0);
	assert_int_equal(proto_fetch_start_chunks(f), -EINVAL); /* an index is wanted */
	proto_fetch_free(f);
	f = chunk_engine(&o, 0, 0);
	assert_int_equal(proto_fetch_want_index(f, o.id[0]), -EINVAL); /* chunk phase */
	assert_int_equal(proto_fetch_start_chunks(f), -EINVAL);
	/* a malformed frame is counted and changes nothing */
	assert_int_equal(proto_fetch_on_frame(f, "FLCK", 4, 0), -FL_EPROTO);
	struct proto_fetch_stats ps;
	proto_fetch_stats(f, &ps);
	assert_int_equal(ps.bad_frames, 1);
	assert_int_equal(o.sends, 0);
	proto_fetch_free(f);
}

static void test_index(void **state)
{
	(void)state;
	struct owner o;
	owner_init(&o);
	/* an index of 256 KiB + 100 bytes: two ranges */
	static uint8_t idx[PROTO_RANGE_MAX + 100];
	memset(idx, 'i', sizeof(idx));
	uint8_t iid[32];
	fl_sha256(idx, sizeof(idx), iid);
	struct proto_fetch *f = NULL;
	assert_int_equal(proto_fetch_new(&ops, &o, 0, 1000, &f), 0);
	int next;
	assert_int_equal(proto_fetch_step(f, 1000, &next), 0); /* nothing wanted yet */
	assert_int_equal(o.sends, 0);
	assert_int_equal(proto_fetch_want_index(f, iid), 0);
	assert_true(proto_fetch_index_busy(f));
	assert_int_equal(proto_fetch_step(f, 1000, &next), 0);
	assert_int_equal(o.sends, 1);
	assert_non_null(strstr(o.last_req, "\"off\":0,\"len\":262144"));
	assert_int_equal(next, 10000); /* the range's timeout */
	/* a late frame for another offset is ignored */
	size_t n = frame(fb, 0, iid, 5, idx, 10);
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 1010), 0);
	n = frame(fb, 0, iid, 0, idx, PROTO_RANGE_MAX);
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 1020), 0);
	assert_int_equal(o.index_calls, 0);
	assert_int_equal(proto_fetch_step(f, 1020, &next), 0);
	assert_int_equal(o.sends, 2);
	assert_non_null(strstr(o.last_req, "\"off\":262144,"));
	/* no answer: asked again after 10 s */
	assert_int_equal(proto_fetch_step(f, 5000, &next), 0);
	assert_int_equal(o.sends, 2);
	assert_int_equal(proto_fetch_step(f, 11020, &next), 0);
	assert_int_equal(o.sends, 3);
	struct proto_fetch_stats ps;
	proto_fetch_stats(f, &ps);
	assert_int_equal(ps.timeouts, 1);
	n = frame(fb, 0, iid, PROTO_RANGE_MAX, idx + PROTO_RANGE_MAX, 100);
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 11030), 0);
	assert_int_equal(o.index_calls, 1);
	assert_int_equal(o.index_len, sizeof(idx));
	assert_false(proto_fetch_index_busy(f));
	proto_fetch_stats(f, &ps);
	assert_int_equal(ps.bytes_fetched, sizeof(idx));
	assert_int_equal(proto_fetch_start_chunks(f), 0);
	proto_fetch_free(f);
}

static void test_index_bad(void **state)
{
	(void)state;
	struct owner o;
	owner_init(&o);
	uint8_t iid[32];
	memset(iid, 1, sizeof(iid)); /* matches no content */
	struct proto_fetch *f = NULL;
	assert_int_equal(proto_fetch_new(&ops, &o, 0, 0, &f), 0);
	assert_int_equal(proto_fetch_want_index(f, iid), 0);
	int next;
	int64_t t = 0;
	for (int i = 0; i < PROTO_FETCH_IDX_BAD_MAX; i++) {
		assert_int_equal(proto_fetch_step(f, t, &next), 0);
		size_t n = frame(fb, 0, iid, 0, "junk", 4);
		int r = proto_fetch_on_frame(f, fb, n, t);
		assert_int_equal(r, i + 1 < PROTO_FETCH_IDX_BAD_MAX ? 0 : 1);
		t += 10;
	}
	assert_int_equal(o.index_calls, 0); /* never handed over */
	assert_int_equal(proto_fetch_error(f), -FL_EHASH);
	assert_non_null(strstr(proto_fetch_reason(f), "hash"));
	assert_int_equal(proto_fetch_step(f, t, &next), -FL_EHASH);
	proto_fetch_free(f);
	/* "not found" answers: held off (doubling), then the fetch fails */
	assert_int_equal(proto_fetch_new(&ops, &o, 0, 0, &f), 0);
	assert_int_equal(proto_fetch_want_index(f, iid), 0);
	t = 0;
	int r = 0;
	for (int i = 0; i <= PROTO_FETCH_NOT_FOUND_MAX && r == 0; i++) {
		assert_int_equal(proto_fetch_step(f, t, &next), 0);
		size_t n = frame(fb, 1, iid, 0, NULL, 0);
		r = proto_fetch_on_frame(f, fb, n, t);
		if (i == 0) {
			int sends = o.sends;
			assert_int_equal(proto_fetch_step(f, t + 100, &next), 0);
			assert_int_equal(o.sends, sends); /* held */
			assert_int_equal(next, 400);
		}
		t += 60000;
	}
	assert_int_equal(r, 1);
	assert_int_equal(proto_fetch_error(f), -FL_EMISSING);
	proto_fetch_free(f);
	/* the owner refuses the index (cannot decode it) */
	static uint8_t idx[100];
	memset(idx, 'x', sizeof(idx));
	fl_sha256(idx, sizeof(idx), iid);
	o.index_err = -FL_EFORMAT;
	assert_int_equal(proto_fetch_new(&ops, &o, 0, 0, &f), 0);
	assert_int_equal(proto_fetch_want_index(f, iid), 0);
	assert_int_equal(proto_fetch_step(f, 0, &next), 0);
	size_t n = frame(fb, 0, iid, 0, idx, sizeof(idx));
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 0), 0);
	assert_true(proto_fetch_index_busy(f)); /* fetched again */
	proto_fetch_free(f);
}

static void test_chunks(void **state)
{
	(void)state;
	struct owner o;
	owner_init(&o);
	struct proto_fetch *f = chunk_engine(&o, 0, 0);
	int next;
	assert_int_equal(proto_fetch_step(f, 0, &next), 0);
	assert_int_equal(o.sends, 1);
	assert_int_equal(req_count(&o), NCH); /* one request for all three */
	assert_int_equal(next, 10000);
	/* chunk 1 corrupted: asked again; chunks 0 and 2 fine */
	size_t n = frame(fb, 0, o.id[0], 0, o.data[0], 4096);
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 50), 0);
	uint8_t bad[4096];
	memset(bad, 'z', sizeof(bad));
	n = frame(fb, 0, o.id[1], 0, bad, sizeof(bad));
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 60), 0);
	n = frame(fb, 0, o.id[2], 0, o.data[2], 4096);
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 70), 0);
	assert_int_equal(o.state[1], 0);
	assert_int_equal(proto_fetch_step(f, 70, &next), 0);
	assert_int_equal(o.sends, 2);
	assert_int_equal(req_count(&o), 1);
	/* a duplicate of a stored chunk is harmless */
	n = frame(fb, 0, o.id[0], 0, o.data[0], 4096);
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 80), 0);
	n = frame(fb, 0, o.id[1], 0, o.data[1], 4096);
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 90), 0);
	assert_int_equal(proto_fetch_step(f, 90, &next), 1); /* complete */
	struct proto_fetch_stats ps;
	proto_fetch_stats(f, &ps);
	assert_int_equal(ps.bad_chunks, 1);
	assert_int_equal(ps.requests, 2);
	assert_int_equal(ps.rtt_n, 3);
	assert_int_equal(ps.bytes_fetched, 5 * 4096);
	proto_fetch_free(f);
}

static void test_timeout_reconnect_busy(void **state)
{
	(void)state;
	struct owner o;
	owner_init(&o);
	struct proto_fetch *f = chunk_engine(&o, 0, 0);
	int next;
	assert_int_equal(proto_fetch_step(f, 0, &next), 0);
	assert_int_equal(o.sends, 1);
	/* nothing answers: all three time out together, released, held 500 ms */
	assert_int_equal(proto_fetch_step(f, 10000, &next), 0);
	assert_int_equal(o.released, 3);
	assert_int_equal(o.sends, 1);
	assert_int_equal(next, 500);
	assert_int_equal(proto_fetch_step(f, 10500, &next), 0);
	assert_int_equal(o.sends, 2);
	/* a reconnect forgets what is outstanding; the owner does too */
	proto_fetch_reconnected(f);
	for (int i = 0; i < NCH; i++)
		o.state[i] = 0;
	/* the publish window is full: released, retried in 20 ms */
	o.send_err = -FL_EBUSY;
	assert_int_equal(proto_fetch_step(f, 10600, &next), 0);
	assert_int_equal(next, 20);
	for (int i = 0; i < NCH; i++)
		assert_int_equal(o.state[i], 0);
	o.send_err = -ENOTCONN;
	assert_int_equal(proto_fetch_step(f, 10620, &next), 0);
	assert_int_equal(next, 200);
	o.send_err = 0;
	assert_int_equal(proto_fetch_step(f, 10820, &next), 0);
	assert_int_equal(o.sends, 3);
	assert_int_equal(req_count(&o), NCH);
	/* refused chunk ("not found"): released and held */
	size_t n = frame(fb, 1, o.id[0], 0, NULL, 0);
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 10830), 0);
	assert_int_equal(o.state[0], 0);
	/* a fatal store error fails the fetch */
	o.put_err = -EIO;
	n = frame(fb, 0, o.id[1], 0, o.data[1], 4096);
	assert_int_equal(proto_fetch_on_frame(f, fb, n, 10840), 1);
	assert_int_equal(proto_fetch_error(f), -EIO);
	assert_non_null(strstr(proto_fetch_reason(f), "writing"));
	proto_fetch_free(f);
}

static void test_bandwidth_cap(void **state)
{
	(void)state;
	struct owner o;
	owner_init(&o);
	struct proto_fetch *f = chunk_engine(&o, 1000, 0); /* 1000 B/s */
	int next;
	assert_int_equal(proto_fetch_step(f, 0, &next), 0);
	assert_int_equal(o.sends, 0); /* no tokens yet */
	assert_int_equal(next, 1);
	assert_int_equal(proto_fetch_step(f, 1000, &next), 0);
	assert_int_equal(o.sends, 1);
	assert_int_equal(req_count(&o), 1); /* one 4 KiB range, then in debt */
	assert_true(next > 3000 && next <= 3100);
	proto_fetch_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_frame_parse),  cmocka_unit_test(test_req_build),
		cmocka_unit_test(test_bad_calls),    cmocka_unit_test(test_index),
		cmocka_unit_test(test_index_bad),    cmocka_unit_test(test_chunks),
		cmocka_unit_test(test_timeout_reconnect_busy), cmocka_unit_test(test_bandwidth_cap),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
