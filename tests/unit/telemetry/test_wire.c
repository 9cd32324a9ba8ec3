#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <cmocka.h>

#include <flotilla/error.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/tele_wire.h>

#define HEAD "{\"v\":1,\"device\":\"dev-1\",\"stream\":\"0123456789abcdef\","
#define EV(seq) "{\"seq\":" #seq ",\"type\":\"event\",\"t\":5,\"kind\":\"committed\",\"model\":\"m\",\"version\":\"1\",\"reason\":\"ok\"}"

static int decode_str(const char *s, struct tele_rx_batch **ret, char *err)
{
	return tele_wire_decode((const uint8_t *)s, strlen(s), NULL, ret, err, 160);
}

static void expect_fail(const char *payload, int code, const char *err_part)
{
	struct tele_rx_batch *b = NULL;
	char err[160] = "";
	int r = decode_str(payload, &b, err);
	if (r != code)
		fail_msg("payload %s: got %s (%s), want %s", payload, fl_strerror(r), err,
			 fl_strerror(code));
	assert_null(b);
	if (err_part && !strstr(err, err_part))
		fail_msg("error text '%s' lacks '%s'", err, err_part);
}

static void test_decode_ok(void **state)
{
	(void)state;
	const char *p = HEAD "\"first\":3,\"last\":9,\"n\":3,\"records\":[" EV(3) ","
			     "{\"seq\":5,\"type\":\"device\",\"t\":6,\"cpu_pct\":12.5,\"temp_mc\":45000,"
			     "\"reconnects\":1,\"tx_bytes\":10,\"rx_bytes\":20},"
			     "{\"seq\":9,\"type\":\"dropped\",\"t\":7,\"count\":4,\"bytes\":400,"
			     "\"ranges\":[[4,4],[6,8]]}]}";
	struct tele_rx_batch *b = NULL;
	char err[160] = "";
	int r = decode_str(p, &b, err);
	if (r)
		fail_msg("%s: %s", fl_strerror(r), err);
	assert_string_equal(b->device, "dev-1");
	assert_int_equal(b->n, 3);
	assert_int_equal(b->first, 3);
	assert_int_equal(b->last, 9);
	assert_false(b->was_compressed);
	assert_int_equal(b->recs[0].type, TELE_REC_EVENT);
	assert_int_equal(b->recs[0].event_kind, TELE_EV_COMMITTED);
	assert_int_equal(b->recs[1].type, TELE_REC_DEVICE);
	assert_int_equal(b->recs[2].type, TELE_REC_DROPPED);
	assert_int_equal(b->recs[2].n_ranges, 2);
	assert_int_equal(b->recs[2].ranges[1][0], 6);
	assert_int_equal(b->recs[2].ranges[1][1], 8);
	assert_int_equal(b->recs[2].dropped_count, 4);

	/* gap tracker: 1..2 missing (before this batch), 3..9 explained */
	struct tele_gaps *g = NULL;
	assert_int_equal(tele_gaps_new(1, 64, &g), 0);
	assert_int_equal(tele_gaps_note_batch(g, b), 0);
	uint64_t m[4][2];
	assert_int_equal(tele_gaps_missing(g, m, 4), 1);
	assert_int_equal(m[0][0], 1);
	assert_int_equal(m[0][1], 2);
	assert_int_equal(tele_gaps_dropped_total(g), 4);
	/* the same batch again changes nothing (dropped count not doubled) */
	assert_int_equal(tele_gaps_note_batch(g, b), 0);
	assert_int_equal(tele_gaps_dropped_total(g), 4);
	tele_gaps_free(g);

	/* compressed round trip */
	uint8_t *z = NULL;
	size_t zlen;
	assert_int_equal(tele_wire_compress(p, strlen(p), &z, &zlen), 0);
	assert_memory_equal(z, TELE_WIRE_MAGIC, 4);
	struct tele_rx_batch *b2 = NULL;
	assert_int_equal(tele_wire_decode(z, zlen, NULL, &b2, NULL, 0), 0);
	assert_true(b2->was_compressed);
	assert_int_equal(b2->n, 3);
	assert_int_equal(b2->recs[2].ranges[0][0], 4);
	tele_rx_batch_free(b2);
	free(z);
	tele_rx_batch_free(b);
}

static void test_record_encoders_round_trip(void **state)
{
	(void)state;
	struct tele_model_metrics m;
	memset(&m, 0, sizeof(m));
	strcpy(m.model, "llama-tiny");
	strcpy(m.version, "2.1.0");
	m.period_s = 60;
	m.requests = 100;
	m.errors[TELE_ERR_TIMEOUT] = 2;
	m.errors[TELE_ERR_OOM] = 1;
	for (int i = 1; i <= 100; i++)
		tele_hist_add(&m.latency_us, i * 1000.0);
	m.tokens_out = 5000;
	m.gen_time_us = 2000000;
	m.has_quality = true;
	for (int i = 0; i < 30; i++) {
		const char *out = i % 10 ? "fine" : "I'm sorry, no";
		tele_quality_observe_output(&m.quality, out, strlen(out), (uint64_t)(20 + i));
	}
	assert_int_equal(tele_quality_observe_class(&m.quality, 2, 0.9), 0);
	m.has_drift = true;
	tele_quality_drift(&m.quality, &m.quality, &m.drift);
	cJSON *rec = NULL;
	assert_int_equal(tele_record_model(&m, 1700000000, &rec), 0);
	assert_true(cJSON_GetObjectItem(rec, "tokens_per_s")->valuedouble == 2500.0);
	cJSON_AddNumberToObject(rec, "seq", 1);
	struct tele_rx_record x;
	char err[160] = "";
	int r = tele_wire_check_record(rec, &x, err, sizeof(err));
	if (r)
		fail_msg("%s: %s", fl_strerror(r), err);
	assert_int_equal(x.type, TELE_REC_MODEL);
	assert_string_equal(x.version, "2.1.0");
	struct tele_hist h;
	assert_int_equal(tele_hist_from_json(cJSON_GetObjectItem(rec, "latency_us"), &h), 0);
	assert_memory_equal(h.counts, m.latency_us.counts, sizeof(h.counts));
	struct tele_quality q;
	assert_int_equal(tele_quality_from_json(cJSON_GetObjectItem(rec, "quality"), &q), 0);
	assert_int_equal(q.refusals, 3);
	assert_int_equal(q.predictions, 1);
	assert_int_equal(q.n_classes, 3);
	cJSON_Delete(rec);

	struct tele_device_metrics d;
	memset(&d, 0, sizeof(d));
	d.has_cpu = true;
	d.cpu_pct = 33.3333;
	d.has_temp = true;
	d.temp_mc = -5000;
	assert_int_equal(tele_record_device(&d, 5, &rec), 0);
	assert_null(cJSON_GetObjectItem(rec, "rss_bytes")); /* absent, not 0 */
	cJSON_AddNumberToObject(rec, "seq", 2);
	assert_int_equal(tele_wire_check_record(rec, &x, NULL, 0), 0);
	assert_int_equal(x.type, TELE_REC_DEVICE);
	cJSON_Delete(rec);

	/* events: names, reason validation, crash details without content */
	struct tele_event ev = {.kind = TELE_EV_RUNNER_CRASHED, .model = "m", .reason = "signal"};
	const char *lines[] = {"loading", "segfault at 0"};
	cJSON *params = cJSON_Parse("{\"max_tokens\":64,\"temperature\":0.7}");
	struct tele_crash_info ci = {.signal = 11,
				     .exit_code = -1,
				     .log_lines = lines,
				     .n_log_lines = 2,
				     .has_request = true,
				     .request_bytes = 1234,
				     .request_params = params,
				     .request_content = "secret prompt"};
	cJSON *det = tele_crash_details(&ci);
	char *txt = cJSON_PrintUnformatted(det);
	assert_null(strstr(txt, "secret"));
	assert_non_null(strstr(txt, "\"bytes\":1234"));
	assert_non_null(strstr(txt, "segfault"));
	free(txt);
	ev.details = det;
	assert_int_equal(tele_record_event(&ev, 9, &rec), 0);
	cJSON_AddNumberToObject(rec, "seq", 3);
	assert_int_equal(tele_wire_check_record(rec, &x, NULL, 0), 0);
	assert_int_equal(x.event_kind, TELE_EV_RUNNER_CRASHED);
	assert_null(x.version);
	cJSON_Delete(rec);
	cJSON_Delete(det);
	ci.include_content = true;
	det = tele_crash_details(&ci);
	txt = cJSON_PrintUnformatted(det);
	assert_non_null(strstr(txt, "secret prompt"));
	free(txt);
	cJSON_Delete(det);
	cJSON_Delete(params);

	ev.reason = "bad reason!";
	assert_int_equal(tele_record_event(&ev, 9, &rec), -EINVAL);
	ev.reason = "ok";
	ev.kind = TELE_EV__COUNT;
	assert_int_equal(tele_record_event(&ev, 9, &rec), -EINVAL);
	ev.kind = TELE_EV_DISK_LOW;
	ev.model = NULL;
	ev.version = "1";
	assert_int_equal(tele_record_event(&ev, 9, &rec), -EINVAL); /* version without model */
	enum tele_event_kind k;
	assert_int_equal(tele_event_kind_from_name("clock_jump", &k), 0);
	assert_int_equal(k, TELE_EV_CLOCK_JUMP);
	assert_int_equal(tele_event_kind_from_name("reboot", &k), -EINVAL);
}

static void test_malformed(void **state)
{
	(void)state;
	/* bad JSON */
	expect_fail("{\"v\":1,", -FL_EINVAL_JSON, "malformed");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[" EV(1) "]}garbage",
		    -FL_EINVAL_JSON, NULL);
	expect_fail("", -FL_EFORMAT, "empty");
	expect_fail("[1,2]", -FL_EFORMAT, "framing");
	/* envelope */
	expect_fail("{\"v\":2}", -FL_EUNSUPPORTED, "version");
	expect_fail("{\"v\":\"1\"}", -FL_ESCHEMA, "v");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[" EV(1) "],\"x\":1}",
		    -FL_ESCHEMA, "unknown field");
	expect_fail("{\"v\":1,\"device\":\"../x\",\"stream\":\"0123456789abcdef\",\"first\":1,"
		    "\"last\":1,\"n\":1,\"records\":[" EV(1) "]}",
		    -FL_ERANGE, "device");
	expect_fail("{\"v\":1,\"device\":\"d\",\"stream\":\"XYZ\",\"first\":1,\"last\":1,\"n\":1,"
		    "\"records\":[" EV(1) "]}",
		    -FL_ESCHEMA, "stream");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":2,\"records\":[" EV(1) "]}", -FL_ESCHEMA,
		    "n");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":0,\"records\":[]}", -FL_ETOOBIG, "n");
	/* huge counts */
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1e9,\"records\":[" EV(1) "]}", -FL_ETOOBIG,
		    "n");
	expect_fail(HEAD "\"first\":1,\"last\":1e300,\"n\":1,\"records\":[" EV(1) "]}", -FL_ERANGE,
		    "last");
	/* records: wrong types, order, ranges */
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":\"1\"}]}",
		    -FL_ESCHEMA, "records[0].seq");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":1.5,\"t\":1}]}",
		    -FL_ERANGE, "seq");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":1,\"t\":1,"
			 "\"type\":\"alien\"}]}",
		    -FL_ERANGE, "type");
	expect_fail(HEAD "\"first\":1,\"last\":2,\"n\":2,\"records\":[" EV(2) "," EV(1) "]}",
		    -FL_ERANGE, NULL);
	expect_fail(HEAD "\"first\":1,\"last\":2,\"n\":2,\"records\":[" EV(1) "," EV(1) "]}",
		    -FL_ERANGE, "ascending");
	expect_fail(HEAD "\"first\":1,\"last\":5,\"n\":1,\"records\":[" EV(1) "]}", -FL_ERANGE,
		    "last");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":1,\"type\":\"event\","
			 "\"t\":5,\"kind\":\"exploded\",\"reason\":\"x\"}]}",
		    -FL_ERANGE, "kind");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":1,\"type\":\"event\","
			 "\"t\":5,\"kind\":\"committed\",\"reason\":7}]}",
		    -FL_ESCHEMA, "reason");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":1,\"type\":\"device\","
			 "\"t\":5,\"cpu_pct\":250}]}",
		    -FL_ERANGE, "cpu_pct");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":1,\"type\":\"dropped\","
			 "\"t\":5,\"count\":1,\"bytes\":1,\"ranges\":[[5,3]]}]}",
		    -FL_ERANGE, "ranges");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":1,\"type\":\"dropped\","
			 "\"t\":5,\"count\":1,\"bytes\":1,\"ranges\":[[3,4],[2,2]]}]}",
		    -FL_ERANGE, "ascending");
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":1,\"type\":\"model\","
			 "\"t\":5,\"model\":\"m\",\"version\":\"1\",\"period_s\":60,\"requests\":1,"
			 "\"errors\":{},\"latency_us\":{\"n\":2,\"sum\":1,\"min\":0,\"max\":1,"
			 "\"b\":[[0,1]]},\"tokens_out\":0,\"gen_time_us\":0,\"queue_depth\":0,"
			 "\"queue_depth_max\":0,\"runner_restarts\":0}]}",
		    -FL_ERANGE, "latency_us"); /* counts do not add up to n */
	expect_fail(HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{\"seq\":1,\"type\":\"model\","
			 "\"t\":5,\"model\":\"m\",\"version\":\"1\",\"period_s\":60,\"requests\":1,"
			 "\"errors\":{\"gremlins\":1},\"latency_us\":{\"n\":0,\"sum\":0,\"min\":0,"
			 "\"max\":0,\"b\":[]},\"tokens_out\":0,\"gen_time_us\":0,\"queue_depth\":0,"
			 "\"queue_depth_max\":0,\"runner_restarts\":0}]}",
		    -FL_ESCHEMA, "errors");

	/* too deep, too many members */
	char deep[600] = HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[";
	for (int i = 0; i < 20; i++)
		strcat(deep, "[");
	expect_fail(deep, -FL_ETOODEEP, "deep");
	char *wide = malloc(64 * 1024);
	strcpy(wide, HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[{");
	for (int i = 0; i < 1000; i++)
		sprintf(wide + strlen(wide), "\"k%d\":1,", i);
	strcat(wide, "\"z\":1}]}");
	expect_fail(wide, -FL_ETOOBIG, "members");
	free(wide);

	/* over the message limit */
	size_t big = TELE_WIRE_MAX_PAYLOAD + 1;
	uint8_t *buf = malloc(big);
	memset(buf, ' ', big);
	buf[0] = '{';
	struct tele_rx_batch *b = NULL;
	assert_int_equal(tele_wire_decode(buf, big, NULL, &b, NULL, 0), -FL_ETOOBIG);
	/* a limit set by the caller */
	struct tele_wire_limits lim = {.max_payload = 100};
	const char *ok = HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[" EV(1) "]}";
	assert_int_equal(tele_wire_decode((const uint8_t *)ok, strlen(ok), &lim, &b, NULL, 0),
			 -FL_ETOOBIG);
	struct tele_wire_limits lim2 = {.max_records = 1};
	const char *two = HEAD "\"first\":1,\"last\":2,\"n\":2,\"records\":[" EV(1) "," EV(2) "]}";
	assert_int_equal(tele_wire_decode((const uint8_t *)two, strlen(two), &lim2, &b, NULL, 0),
			 -FL_ETOOBIG);
	assert_int_equal(tele_wire_decode((const uint8_t *)two, strlen(two), NULL, &b, NULL, 0), 0);
	tele_rx_batch_free(b);
	free(buf);
}

static void test_compression_attacks(void **state)
{
	(void)state;
	const char *ok = HEAD "\"first\":1,\"last\":1,\"n\":1,\"records\":[" EV(1) "]}";
	uint8_t *z = NULL;
	size_t zlen;
	struct tele_rx_batch *b = NULL;
	assert_int_equal(tele_wire_compress(ok, strlen(ok), &z, &zlen), 0);

	/* truncated stream, at every length */
	for (size_t cut = 0; cut < zlen; cut++) {
		int r = tele_wire_decode(z, cut, NULL, &b, NULL, 0);
		assert_true(r == -FL_EFORMAT);
	}
	/* trailing bytes */
	uint8_t *t = malloc(zlen + 1);
	memcpy(t, z, zlen);
	t[zlen] = 0;
	assert_int_equal(tele_wire_decode(t, zlen + 1, NULL, &b, NULL, 0), -FL_EFORMAT);
	/* declared length too small: the stream wants more room than declared */
	memcpy(t, z, zlen);
	t[7] = (uint8_t)(t[7] - 10);
	assert_int_equal(tele_wire_decode(t, zlen, NULL, &b, NULL, 0), -FL_ETOOBIG);
	/* declared length too large: short output */
	memcpy(t, z, zlen);
	t[6] = 1;
	assert_int_equal(tele_wire_decode(t, zlen, NULL, &b, NULL, 0), -FL_EFORMAT);
	/* corrupt byte in the deflate data */
	memcpy(t, z, zlen);
	t[zlen - 3] ^= 0xff; /* adler32 */
	assert_int_equal(tele_wire_decode(t, zlen, NULL, &b, NULL, 0), -FL_EFORMAT);
	free(t);
	free(z);

	/* zip bomb: 64 MiB of spaces is ~64 KiB compressed */
	size_t huge = 64u << 20;
	char *sp = malloc(huge);
	memset(sp, ' ', huge);
	uLong bound = compressBound(huge);
	uint8_t *bomb = malloc(8 + bound);
	uLongf blen = bound;
	assert_int_equal(compress2(bomb + 8, &blen, (const Bytef *)sp, huge, 9), Z_OK);
	free(sp);
	memcpy(bomb, TELE_WIRE_MAGIC, 4);
	/* honest header: refused before inflating */
	bomb[4] = 0x04, bomb[5] = 0, bomb[6] = 0, bomb[7] = 0;
	char err[160];
	assert_int_equal(tele_wire_decode(bomb, 8 + blen, NULL, &b, err, sizeof(err)),
			 -FL_ETOOBIG);
	assert_non_null(strstr(err, "decompressed"));
	/* lying header: inflating stops at the declared size */
	bomb[4] = 0, bomb[5] = 0, bomb[6] = 0x10, bomb[7] = 0;
	assert_int_equal(tele_wire_decode(bomb, 8 + blen, NULL, &b, NULL, 0), -FL_ETOOBIG);
	free(bomb);
	assert_int_equal(tele_wire_compress(ok, TELE_WIRE_MAX_RAW + 1, &z, &zlen), -FL_ETOOBIG);
}

static void test_gaps(void **state)
{
	(void)state;
	struct tele_gaps *g = NULL;
	assert_int_equal(tele_gaps_new(0, 4, &g), -EINVAL);
	assert_int_equal(tele_gaps_new(1, 4, &g), 0);
	uint64_t m[8][2];
	assert_int_equal(tele_gaps_missing(g, m, 8), 0);
	assert_int_equal(tele_gaps_received(g, 3, 3), 0);
	assert_int_equal(tele_gaps_received(g, 7, 9), 0);
	assert_int_equal(tele_gaps_dropped(g, 12, 12), 0);
	/* missing: 1-2, 4-6, 10-11 */
	assert_int_equal(tele_gaps_missing(g, m, 8), 3);
	assert_int_equal(m[0][0], 1);
	assert_int_equal(m[0][1], 2);
	assert_int_equal(m[1][0], 4);
	assert_int_equal(m[1][1], 6);
	assert_int_equal(m[2][0], 10);
	assert_int_equal(m[2][1], 11);
	assert_int_equal(tele_gaps_missing(g, m, 1), 3); /* total, even when OUT is short */
	assert_int_equal(tele_gaps_highest(g), 12);
	/* a 4th disjoint range fits, a 5th does not (and changes nothing) */
	assert_int_equal(tele_gaps_received(g, 20, 20), 0);
	assert_int_equal(tele_gaps_received(g, 30, 30), -FL_ETOOBIG);
	assert_int_equal(tele_gaps_highest(g), 20);
	/* filling gaps merges ranges */
	assert_int_equal(tele_gaps_received(g, 4, 6), 0);
	assert_int_equal(tele_gaps_received(g, 10, 11), 0);
	assert_int_equal(tele_gaps_missing(g, m, 8), 2); /* 1-2, 13-19 */
	assert_int_equal(m[1][0], 13);
	assert_int_equal(m[1][1], 19);
	assert_int_equal(tele_gaps_received(g, 5, 2), -EINVAL);
	assert_int_equal(tele_gaps_received(g, 5, UINT64_MAX), -EINVAL);
	assert_int_equal(tele_gaps_dropped(g, 0, 1), -EINVAL);
	tele_gaps_settle_below(g, 15);
	assert_int_equal(tele_gaps_missing(g, m, 8), 1); /* 15-19 */
	assert_int_equal(m[0][0], 15);
	tele_gaps_free(g);
}

static void test_stream_change_resets(void **state)
{
	(void)state;
	const char *a = HEAD "\"first\":5,\"last\":5,\"n\":1,\"records\":[" EV(5) "]}";
	const char *b = "{\"v\":1,\"device\":\"dev-1\",\"stream\":\"fedcba9876543210\",\"first\":1,"
			"\"last\":1,\"n\":1,\"records\":[" EV(1) "]}";
	struct tele_rx_batch *ba = NULL, *bb = NULL;
	assert_int_equal(decode_str(a, &ba, NULL), 0);
	assert_int_equal(decode_str(b, &bb, NULL), 0);
	struct tele_gaps *g = NULL;
	assert_int_equal(tele_gaps_new(1, 16, &g), 0);
	assert_int_equal(tele_gaps_note_batch(g, ba), 0);
	uint64_t m[2][2];
	assert_int_equal(tele_gaps_missing(g, m, 2), 1);
	assert_int_equal(tele_gaps_note_batch(g, bb), 0);
	assert_int_equal(tele_gaps_missing(g, m, 2), 0);
	assert_int_equal(tele_gaps_highest(g), 1);
	tele_gaps_free(g);
	tele_rx_batch_free(ba);
	tele_rx_batch_free(bb);
}

/* tele_wire_batch: what the outbox and the simulator send decodes as the
 * records given, compressed only when that pays; bad arguments refused. */
static void test_batch_render(void **state)
{
	(void)state;
	char *bodies[300];
	struct tele_wire_item items[300];
	for (int i = 0; i < 300; i++) {
		struct tele_event ev = {.kind = TELE_EV_INSTALL_STARTED, .model = "m", .version = "1.0",
					.reason = "ok"};
		cJSON *rec = NULL;
		assert_int_equal(tele_record_event(&ev, 9, &rec), 0);
		cJSON_AddNumberToObject(rec, "seq", 41 + i);
		bodies[i] = cJSON_PrintUnformatted(rec);
		cJSON_Delete(rec);
		items[i] = (struct tele_wire_item){41 + (uint64_t)i, bodies[i], strlen(bodies[i])};
	}
	uint8_t *out = NULL;
	size_t len = 0, raw = 0;
	bool z = true;
	/* one record, small: plain JSON */
	assert_int_equal(tele_wire_batch("dev-1", "00000000000000aa", items, 1, TELE_WIRE_COMPRESS_MIN,
					 &out, &len, &raw, &z), 0);
	assert_false(z);
	assert_int_equal(len, raw);
	struct tele_rx_batch *b = NULL;
	assert_int_equal(tele_wire_decode(out, len, NULL, &b, NULL, 0), 0);
	assert_string_equal(b->device, "dev-1");
	assert_string_equal(b->stream, "00000000000000aa");
	assert_int_equal(b->first, 41);
	assert_int_equal(b->last, 41);
	assert_int_equal(b->n, 1);
	tele_rx_batch_free(b);
	free(out);
	/* 300 records: compressed, every one back in order */
	assert_int_equal(tele_wire_batch("dev-1", "00000000000000aa", items, 300,
					 TELE_WIRE_COMPRESS_MIN, &out, &len, &raw, &z), 0);
	assert_true(z);
	assert_true(len < raw);
	assert_int_equal(tele_wire_decode(out, len, NULL, &b, NULL, 0), 0);
	assert_true(b->was_compressed);
	assert_int_equal(b->n, 300);
	assert_int_equal(b->first, 41);
	assert_int_equal(b->last, 340);
	for (size_t i = 0; i < b->n; i++) {
		assert_int_equal(b->recs[i].seq, 41 + i);
		assert_int_equal(b->recs[i].event_kind, TELE_EV_INSTALL_STARTED);
	}
	tele_rx_batch_free(b);
	free(out);
	/* compression off (threshold above the size) */
	assert_int_equal(tele_wire_batch("dev-1", "00000000000000aa", items, 300, SIZE_MAX, &out,
					 &len, NULL, &z), 0);
	assert_false(z);
	free(out);
	/* bad arguments: nothing allocated */
	out = NULL;
	assert_int_equal(tele_wire_batch("dev-1", "s", items, 0, 0, &out, &len, NULL, NULL), -EINVAL);
	assert_int_equal(tele_wire_batch(NULL, "s", items, 1, 0, &out, &len, NULL, NULL), -EINVAL);
	struct tele_wire_item hole = {7, NULL, 3};
	assert_int_equal(tele_wire_batch("d", "s", &hole, 1, 0, &out, &len, NULL, NULL), -EINVAL);
	assert_int_equal(tele_wire_batch("d", "s", items, TELE_WIRE_MAX_RECORDS + 1, 0, &out, &len,
					 NULL, NULL), -FL_ETOOBIG);
	assert_null(out);
	for (int i = 0; i < 300; i++)
		free(bodies[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decode_ok),
		cmocka_unit_test(test_batch_render),
		cmocka_unit_test(test_record_encoders_round_trip),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_compression_attacks),
		cmocka_unit_test(test_gaps),
		cmocka_unit_test(test_stream_change_resets),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
