/* MQTT session glue over a fake transport: topic parsing, dispatch (device
 * from the topic), chunk serving with the publish window, the bounded
 * backlog and flood drops, commands (deploy/revert payloads, queue, waiters). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>

#include "ctl_testutil.h"

#include <flotilla/bundle.h>
#include <flotilla/crypto.h>
#include <flotilla/error.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>

#include "ctl_mqtt.h"

#define DAY 86400
#define MAX_PUBS 256

#define STATE_OF(dev)                                                                            \
	"{\"v\": 1, \"device\": \"" dev "\", \"online\": true, \"ts\": \"2026-11-25T10:00:00Z\","  \
	" \"agent\": \"0.1.0\", \"hw\": {\"arch\": \"x86_64\", \"ram_mb\": 100, \"accelerators\": "\
	"[], \"backends\": [\"gguf\"]}, \"labels\": {}, \"models\": {}}"

/* ---------------------------------------------------------------- fake transport */

struct pub {
	char topic[128];
	uint8_t *data;
	size_t len;
	uint64_t token;
};

struct fake {
	int window;  /* publishes allowed outstanding */
	int outstanding;
	bool down;   /* -ENOTCONN */
	uint64_t next_token;
	struct pub pubs[MAX_PUBS];
	size_t n;
};

static int fake_publish(void *ud, const char *topic, const void *data, size_t len,
			uint64_t *ret_token)
{
	struct fake *f = ud;
	if (f->down)
		return -ENOTCONN;
	if (f->outstanding >= f->window)
		return -FL_EBUSY;
	assert_true(f->n < MAX_PUBS);
	struct pub *p = &f->pubs[f->n++];
	fl_strlcpy(p->topic, topic, sizeof(p->topic));
	p->data = malloc(len);
	assert_non_null(p->data);
	memcpy(p->data, data, len);
	p->len = len;
	p->token = ++f->next_token;
	f->outstanding++;
	*ret_token = p->token;
	return 0;
}

/* Acknowledge publish number I (as the broker would). */
static void fake_ack(struct ctl_mqtt *m, struct fake *f, size_t i, bool ok)
{
	f->outstanding--;
	ctl_mqtt_on_published(m, f->pubs[i].token, ok);
}

static void fake_clear(struct fake *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->pubs[i].data);
	f->n = 0;
}

static void run(struct ctl_mqtt *m)
{
	int next;
	assert_int_equal(ctl_mqtt_run(m, fl_mono_ms(), &next), 0);
}

static struct ctl_mqtt *new_session(struct ctl *c, struct fake *f, size_t per_dev,
				    size_t max_bytes, size_t max_cmds)
{
	struct ctl_mqtt_opts o = {.backlog_per_device = per_dev,
				  .backlog_max_bytes = max_bytes,
				  .max_cmds = max_cmds,
				  .max_inflight = 64};
	struct ctl_mqtt_io io = {.publish = fake_publish, .ud = f};
	struct ctl_mqtt *m = NULL;
	assert_int_equal(ctl_mqtt_new_io(c, &o, &io, &m), 0);
	assert_int_equal(ctl_mqtt_start(m), 0);
	return m;
}

static void msg(struct ctl_mqtt *m, const char *topic, const char *s)
{
	ctl_mqtt_on_message(m, topic, s, strlen(s));
}

/* ---------------------------------------------------------------- topics */

static void test_topics(void **state)
{
	(void)state;
	char id[CTL_DEVICE_ID_MAX + 1];
	assert_int_equal(ctl_mqtt_parse_topic("flotilla/v1/dev/gw-1/state", id), CTL_TOPIC_STATE);
	assert_string_equal(id, "gw-1");
	assert_int_equal(ctl_mqtt_parse_topic("flotilla/v1/dev/a/event", id), CTL_TOPIC_EVENT);
	assert_int_equal(ctl_mqtt_parse_topic("flotilla/v1/dev/a/tele", id), CTL_TOPIC_TELE);
	assert_int_equal(ctl_mqtt_parse_topic("flotilla/v1/dev/b.c_d/chunk/req", id),
			 CTL_TOPIC_CHUNK_REQ);
	assert_string_equal(id, "b.c_d");
	static const char *const bad[] = {
		"flotilla/v1/dev/gw-1/cmd",        "flotilla/v1/dev/gw-1/chunk/dat",
		"flotilla/v1/dev//state",          "flotilla/v1/dev/gw-1",
		"flotilla/v2/dev/gw-1/state",      "flotilla/v1/dev/-x/state",
		"flotilla/v1/dev/a b/state",       "flotilla/v1/dev/gw-1/state/x",
		"flotilla/v1/dev/../state",        "",
		"flotilla/v1/dev/"
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/state",
	};
	strcpy(id, "unchanged");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (ctl_mqtt_parse_topic(bad[i], id) != -FL_EPROTO)
			fail_msg("topic '%s' accepted", bad[i]);
	}
	assert_string_equal(id, "unchanged");
	assert_int_equal(ctl_mqtt_parse_topic(NULL, id), -FL_EPROTO);
}

/* ---------------------------------------------------------------- dispatch */

static void test_state_dispatch(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-mqtt-state", NULL, &dir);
	struct fake f = {.window = 8};
	struct ctl_mqtt *m = new_session(c, &f, 0, 0, 0);

	msg(m, "flotilla/v1/dev/gw-1/state", STATE_OF("gw-1"));
	char *t = ctu_device_text(c, "gw-1");
	assert_non_null(t);
	free(t);
	/* The device id comes from the topic: a payload naming another device
	 * is refused and creates nothing. */
	msg(m, "flotilla/v1/dev/gw-1/state", STATE_OF("gw-2"));
	assert_null(ctu_device_text(c, "gw-2"));
	/* Oversized and malformed: refused, nothing new. */
	size_t big = CTL_STATE_MAX_BYTES + 10;
	char *huge = malloc(big);
	assert_non_null(huge);
	memset(huge, ' ', big);
	ctl_mqtt_on_message(m, "flotilla/v1/dev/gw-3/state", huge, big);
	free(huge);
	msg(m, "flotilla/v1/dev/gw-3/state", "{\"v\":1,");
	msg(m, "flotilla/v1/dev/gw-3/state", "");
	assert_null(ctu_device_text(c, "gw-3"));
	/* Outside the tree. */
	msg(m, "flotilla/v1/dev/gw-1/cmd", "{}");
	msg(m, "elsewhere", "{}");
	/* Telemetry junk. */
	msg(m, "flotilla/v1/dev/gw-1/tele", "junk");
	msg(m, "flotilla/v1/dev/gw-1/event", "{\"v\":1}");
	/* Last will: offline. */
	msg(m, "flotilla/v1/dev/gw-1/state", "{\"v\":1,\"device\":\"gw-1\",\"online\":false}");
	cJSON *d = NULL;
	assert_int_equal(ctl_device_get(c, "gw-1", &d), 0);
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(d, "device"), "online")));
	cJSON_Delete(d);

	struct ctl_mqtt_counters k;
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.msgs_state, 6);
	assert_int_equal(k.refused_state, 4);
	assert_int_equal(k.msgs_tele, 1);
	assert_int_equal(k.msgs_event, 1);
	assert_int_equal(k.refused_tele, 2);
	assert_int_equal(k.unexpected, 2);
	assert_int_equal(f.n, 0); /* nothing was published */

	char *text = NULL;
	assert_int_equal(ctl_mqtt_metrics_text(m, &text), 0);
	assert_non_null(strstr(text, "flotilla_mqtt_refused_total{topic=\"state\"} 4\n"));
	assert_non_null(strstr(text, "flotilla_mqtt_connected 1\n"));
	free(text);
	ctl_mqtt_free(m);
	fake_clear(&f);
	ctu_close(c, dir);
}

/* ---------------------------------------------------------------- chunks */

/* Put N pseudo-random bytes into C's chunk store; *ID gets its hash. */
static uint8_t *put_object(const char *data_dir, size_t n, uint8_t id[32], char hex[65])
{
	uint8_t *b = malloc(n);
	assert_non_null(b);
	uint32_t x = 12345;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		b[i] = (uint8_t)x;
	}
	fl_sha256(b, n, id);
	fl_hex_encode(id, 32, hex);
	char *sub = fl_asprintf("%s/chunks/%.2s", data_dir, hex);
	char *path = fl_asprintf("%s/%s", sub, hex);
	assert_int_equal(fl_mkdir_p(sub, 0755), 0);
	assert_int_equal(fl_write_file_atomic(path, b, n, 0644), 0);
	free(sub);
	free(path);
	return b;
}

static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void check_frame(const struct pub *p, const char *dev, const uint8_t id[32], int status,
			uint64_t off, const uint8_t *want, size_t want_len)
{
	char topic[128];
	snprintf(topic, sizeof(topic), "flotilla/v1/dev/%s/chunk/dat", dev);
	assert_string_equal(p->topic, topic);
	assert_int_equal(p->len, CTL_CHUNK_FRAME_HEADER + want_len);
	assert_memory_equal(p->data, "FLCK\x01", 5);
	assert_int_equal(p->data[5], status);
	assert_memory_equal(p->data + 8, id, 32);
	assert_int_equal(le(p->data + 40, 8), off);
	assert_int_equal(le(p->data + 48, 4), want_len);
	if (want_len)
		assert_memory_equal(p->data + CTL_CHUNK_FRAME_HEADER, want, want_len);
}

static void test_chunk_serving(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-mqtt-chunks", NULL, &dir);
	uint8_t id[32];
	char hex[65];
	size_t size = 300 * 1024;
	uint8_t *obj = put_object(dir, size, id, hex);
	struct fake f = {.window = 1};
	struct ctl_mqtt *m = new_session(c, &f, 4, 0, 0);

	char req[1024];
	snprintf(req, sizeof(req),
		 "{\"v\":1,\"req\":[{\"id\":\"%s\",\"off\":0,\"len\":262144},"
		 "{\"id\":\"%s\",\"off\":262144,\"len\":262144},"
		 "{\"id\":\"%064d\",\"off\":0,\"len\":10}]}",
		 hex, hex, 0);
	msg(m, "flotilla/v1/dev/gw-1/chunk/req", req);
	/* Window of one: the first frame is out, two wait. */
	assert_int_equal(f.n, 1);
	check_frame(&f.pubs[0], "gw-1", id, 0, 0, obj, 262144);
	struct ctl_mqtt_counters k;
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.backlog_frames, 2);
	assert_int_equal(k.chunk_frames_backlogged, 2);
	run(m); /* nothing frees the window: still waiting */
	assert_int_equal(f.n, 1);
	fake_ack(m, &f, 0, true);
	run(m);
	assert_int_equal(f.n, 2);
	check_frame(&f.pubs[1], "gw-1", id, 0, 262144, obj + 262144, size - 262144);
	fake_ack(m, &f, 1, true);
	run(m);
	assert_int_equal(f.n, 3);
	uint8_t zero[32] = {0};
	check_frame(&f.pubs[2], "gw-1", zero, 1, 0, NULL, 0); /* not found */
	fake_ack(m, &f, 2, false);                            /* the broker refused it */
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.chunk_frames_sent, 2);
	assert_int_equal(k.chunk_bytes_sent, 2 * CTL_CHUNK_FRAME_HEADER + size);
	assert_int_equal(k.chunk_frames_dropped, 1);
	assert_int_equal(k.backlog_frames, 0);
	fake_clear(&f);

	/* Malformed requests: counted, nothing published. */
	msg(m, "flotilla/v1/dev/gw-1/chunk/req", "{\"v\":1,\"req\":[]}");
	msg(m, "flotilla/v1/dev/gw-1/chunk/req", "{\"v\":2,\"req\":[{\"id\":\"00\",\"off\":0,\"len\":1}]}");
	char big[CTL_CHUNK_REQ_MAX_BYTES + 2];
	memset(big, ' ', sizeof(big));
	ctl_mqtt_on_message(m, "flotilla/v1/dev/gw-1/chunk/req", big, sizeof(big));
	run(m);
	assert_int_equal(f.n, 0);
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.refused_chunk_req, 3);

	/* Flood: the window is full; a device gets at most 4 frames waiting,
	 * the rest is dropped, and a request while it has 4 is dropped whole. */
	f.window = 0;
	char req8[2048];
	int n = snprintf(req8, sizeof(req8), "{\"v\":1,\"req\":[");
	for (int i = 0; i < 8; i++)
		n += snprintf(req8 + n, sizeof(req8) - (size_t)n,
			      "%s{\"id\":\"%s\",\"off\":%d,\"len\":1000}", i ? "," : "", hex,
			      i * 1000);
	snprintf(req8 + n, sizeof(req8) - (size_t)n, "]}");
	msg(m, "flotilla/v1/dev/gw-1/chunk/req", req8);
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.backlog_frames, 4);
	assert_int_equal(k.chunk_frames_dropped, 1 + 4);
	msg(m, "flotilla/v1/dev/gw-1/chunk/req", req8);
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.chunk_req_flood, 1);
	assert_int_equal(k.backlog_frames, 4);
	/* Another device still gets its share. */
	msg(m, "flotilla/v1/dev/gw-2/chunk/req", req8);
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.backlog_frames, 8);
	/* The window opens: the backlog goes out in order. */
	f.window = 100;
	run(m);
	assert_int_equal(f.n, 8);
	for (size_t i = 0; i < 8; i++)
		check_frame(&f.pubs[i], i < 4 ? "gw-1" : "gw-2", id, 0, (i % 4) * 1000,
			    obj + (i % 4) * 1000, 1000);
	for (size_t i = 0; i < 8; i++)
		fake_ack(m, &f, i, true);
	fake_clear(&f);

	/* A disconnect drops the backlog (devices ask again). */
	f.window = 0;
	msg(m, "flotilla/v1/dev/gw-3/chunk/req", req8);
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.backlog_frames, 4);
	ctl_mqtt_on_connection(m, false);
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.backlog_frames, 0);
	assert_int_equal(k.backlog_bytes, 0);
	assert_false(k.connected);
	ctl_mqtt_free(m);

	/* The total byte bound. */
	struct ctl_mqtt *m2 = new_session(c, &f, 16, 2 * (CTL_CHUNK_FRAME_HEADER + 1000), 0);
	msg(m2, "flotilla/v1/dev/gw-1/chunk/req", req8);
	ctl_mqtt_counters(m2, &k);
	assert_int_equal(k.backlog_frames, 2);
	assert_int_equal(k.chunk_frames_dropped, 6);
	ctl_mqtt_free(m2);
	fake_clear(&f);
	free(obj);
	ctu_close(c, dir);
}

/* ---------------------------------------------------------------- commands */

static void make_bundle(const char *work, const char *out, const char *version, uint64_t seq)
{
	char *src = fl_path_join(work, "model.bin");
	char data[5000];
	memset(data, (int)seq, sizeof(data));
	assert_int_equal(fl_write_file_atomic(src, data, sizeof(data), 0644), 0);
	struct ota_key *key = NULL;
	assert_int_equal(ota_key_generate(&key), 0);
	int64_t now = fl_now_s();
	struct ota_manifest *man = NULL;
	assert_int_equal(ota_manifest_new("tiny", version, seq, now - DAY, now + DAY, &man), 0);
	const char *srcs[] = {src};
	assert_int_equal(ota_bundle_create(out, man, srcs, 1, NULL, 0, &key, 1), 0);
	ota_manifest_free(man);
	ota_key_free(key);
	free(src);
}

struct waiter {
	struct ctl_mqtt *m;
	const char *json;
	int r;
};

static void *wait_cmd(void *ud)
{
	struct waiter *w = ud;
	w->r = ctl_mqtt_command(w->m, "gw-1", w->json, strlen(w->json), 10000);
	return NULL;
}

static void test_commands(void **state)
{
	(void)state;
	char *dir;
	struct ctl *c = ctu_open("ctl-mqtt-cmd", NULL, &dir);
	char *bpath = fl_path_join(dir, "b.tar");
	make_bundle(dir, bpath, "1.0", 1);
	assert_int_equal(ctl_chunks_add_bundle(c, bpath, "tester", NULL), 1);

	char id[CTL_CMD_ID_SIZE], id2[CTL_CMD_ID_SIZE];
	char *json = NULL;
	assert_int_equal(ctl_cmd_deploy(c, "tiny", "1.0", id, &json), 0);
	assert_int_equal(strlen(id), CTL_CMD_ID_SIZE - 1);
	assert_memory_equal(id, "c-", 2);
	cJSON *o = NULL;
	assert_int_equal(fl_json_parse(json, strlen(json), CTL_CMD_MAX_BYTES, 8, &o), 0);
	assert_int_equal(cJSON_GetObjectItem(o, "v")->valueint, 1);
	assert_string_equal(cJSON_GetObjectItem(o, "id")->valuestring, id);
	assert_string_equal(cJSON_GetObjectItem(o, "kind")->valuestring, "deploy");
	/* The envelope is the bundle's, as a string, and parses as DSSE. */
	const char *env = cJSON_GetObjectItem(o, "envelope")->valuestring;
	cJSON *e = NULL;
	assert_int_equal(fl_json_parse(env, strlen(env), CTL_CMD_MAX_BYTES, 8, &e), 0);
	assert_non_null(cJSON_GetObjectItem(e, "payloadType"));
	assert_non_null(cJSON_GetObjectItem(e, "signatures"));
	cJSON_Delete(e);
	cJSON_Delete(o);
	/* Another command gets another id. */
	char *json2 = NULL;
	assert_int_equal(ctl_cmd_revert("tiny", id2, &json2), 0);
	assert_string_not_equal(id, id2);
	assert_int_equal(fl_json_parse(json2, strlen(json2), 4096, 4, &o), 0);
	assert_string_equal(cJSON_GetObjectItem(o, "kind")->valuestring, "revert");
	assert_string_equal(cJSON_GetObjectItem(o, "model")->valuestring, "tiny");
	cJSON_Delete(o);

	char *none = NULL;
	assert_int_equal(ctl_cmd_deploy(c, "tiny", "9.9", id2, &none), -ENOENT);
	assert_int_equal(ctl_cmd_deploy(c, "other", "1.0", id2, &none), -ENOENT);
	assert_int_equal(ctl_cmd_deploy(c, "../x", "1.0", id2, &none), -EINVAL);
	assert_int_equal(ctl_cmd_deploy(c, "tiny", "1 0", id2, &none), -EINVAL);
	assert_int_equal(ctl_cmd_deploy(c, "tiny", "", id2, &none), -EINVAL);
	assert_int_equal(ctl_cmd_revert("", id2, &none), -EINVAL);
	assert_null(none);

	/* Publishing: queued from any thread, sent by the loop. */
	struct fake f = {.window = 8};
	struct ctl_mqtt *m = new_session(c, &f, 0, 0, 2);
	assert_int_equal(ctl_mqtt_command(m, "gw-1", json, strlen(json), 0), 0); /* queued */
	assert_int_equal(f.n, 0);
	run(m);
	assert_int_equal(f.n, 1);
	assert_string_equal(f.pubs[0].topic, "flotilla/v1/dev/gw-1/cmd");
	assert_int_equal(f.pubs[0].len, strlen(json));
	assert_memory_equal(f.pubs[0].data, json, strlen(json));
	fake_ack(m, &f, 0, true);
	struct ctl_mqtt_counters k;
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.cmds_sent, 1);

	/* A waiter learns the acknowledgement. */
	struct waiter w = {.m = m, .json = json2, .r = -1000};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, wait_cmd, &w), 0);
	for (int i = 0; i < 500 && f.n < 2; i++) {
		run(m);
		usleep(10000);
	}
	assert_int_equal(f.n, 2);
	fake_ack(m, &f, 1, true);
	pthread_join(th, NULL);
	assert_int_equal(w.r, 1);

	/* A refused publish is -FL_ENET for the waiter. */
	w.r = -1000;
	assert_int_equal(pthread_create(&th, NULL, wait_cmd, &w), 0);
	for (int i = 0; i < 500 && f.n < 3; i++) {
		run(m);
		usleep(10000);
	}
	assert_int_equal(f.n, 3);
	fake_ack(m, &f, 2, false);
	pthread_join(th, NULL);
	assert_int_equal(w.r, -FL_ENET);

	/* Bad arguments, a full queue, no connection: nothing queued. */
	assert_int_equal(ctl_mqtt_command(m, "bad id", json, strlen(json), 0), -EINVAL);
	assert_int_equal(ctl_mqtt_command(m, "gw-1", json, 0, 0), -EINVAL);
	f.window = 0;
	assert_int_equal(ctl_mqtt_command(m, "gw-1", json, strlen(json), 0), 0);
	assert_int_equal(ctl_mqtt_command(m, "gw-1", json, strlen(json), 0), 0);
	assert_int_equal(ctl_mqtt_command(m, "gw-1", json, strlen(json), 0), -FL_EBUSY);
	ctl_mqtt_on_connection(m, false);
	assert_int_equal(ctl_mqtt_command(m, "gw-1", json, strlen(json), 0), -ENOTCONN);
	/* The two queued ones fail when the loop finds no connection. */
	f.down = true;
	run(m);
	ctl_mqtt_counters(m, &k);
	assert_int_equal(k.cmds_sent, 2);
	assert_int_equal(k.cmds_failed, 3);
	assert_int_equal(f.n, 3);
	ctl_mqtt_free(m);

	fake_clear(&f);
	free(json);
	free(json2);
	free(bpath);
	ctu_close(c, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_topics),
		cmocka_unit_test(test_state_dispatch),
		cmocka_unit_test(test_chunk_serving),
		cmocka_unit_test(test_commands),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
