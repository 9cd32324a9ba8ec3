/* A small fake controller for tests/integration/agent_mqtt.sh: serves the
 * chunk protocol of docs/protocol.md (chunk/req -> chunk/dat frames) from
 * signed bundles, the way the real controller does, and counts what it sent.
 *
 *   agent_mqtt_ctl serve DEVICE STATS_FILE [--corrupt N] BUNDLE...
 *       answer DEVICE's chunk/req from the bundles' chunk indexes and payload
 *       until SIGTERM; the first N payload chunks are sent with one byte
 *       flipped; STATS_FILE gets {"frames":..,"bytes":..,"index_bytes":..,
 *       "chunk_bytes":..,"corrupted":..,"reqs":..,"bad_reqs":..} after every
 *       request (atomically)
 *   agent_mqtt_ctl junk DEVICE COUNT
 *       publish COUNT junk messages (random bytes, bad JSON, bad frames,
 *       oversized) to DEVICE's cmd and chunk/dat, then exit
 *
 * Environment: FL_MQTT_PKI (ca.crt, controller.crt/.key), FL_MQTT_PORT. */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include <flotilla/bundle.h>
#include <flotilla/chunkidx.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/json.h>
#include <flotilla/mqtt.h>
#include <flotilla/tele_wire.h>
#include <flotilla/util.h>

#define RANGE_MAX (256u * 1024u)
#define HDR 52
#define QUEUE_MAX 4096

struct obj { /* a payload chunk (file != NULL) or a chunk index blob */
	uint8_t id[32];
	const char *file;
	uint64_t off;
	uint32_t len;
	uint8_t *blob;
	size_t blob_len;
};

static struct obj *objs;
static size_t n_objs, cap_objs;
static char dat_topic[256], req_topic[256], state_topic[256], event_topic[256], cmd_topic[256];
static char ack_topic[256];

/* An event batch: its records (decoded, compressed ones too) go to FILE one
 * per line, and it is confirmed as the real controller does
 * (docs/telemetry.md "Confirmation"), one range per run of seqs. */
static void on_event(struct fl_mqtt *m, const char *file, const uint8_t *p, size_t len)
{
	struct tele_rx_batch *b = NULL;
	FILE *f = fopen(file, "a");
	if (tele_wire_decode(p, len, NULL, &b, NULL, 0) < 0) {
		if (f) {
			fwrite(p, 1, len, f);
			fputc('\n', f);
		}
	} else {
		char ack[8192];
		int k = snprintf(ack, sizeof(ack), "{\"v\":1,\"stream\":\"%s\",\"ranges\":[",
				 b->stream);
		for (size_t i = 0; i < b->n; i++) {
			char *js = fl_json_print(b->recs[i].json);
			if (f && js)
				fprintf(f, "%s\n", js);
			free(js);
			if (k < (int)sizeof(ack) - 64)
				k += snprintf(ack + k, sizeof(ack) - (size_t)k, "%s[%llu,%llu]",
					      i ? "," : "", (unsigned long long)b->recs[i].seq,
					      (unsigned long long)b->recs[i].seq);
		}
		snprintf(ack + k, sizeof(ack) - (size_t)k, "]}");
		fl_mqtt_publish(m, ack_topic, ack, strlen(ack), 0, false, NULL);
		tele_rx_batch_free(b);
	}
	if (f)
		fclose(f);
}

struct item {
	uint8_t id[32];
	uint64_t off;
	uint32_t len;
};
static struct item queue[QUEUE_MAX];
static size_t q_head, q_len;

static struct {
	uint64_t frames, bytes, index_bytes, chunk_bytes, corrupted, reqs, bad_reqs, not_found;
} stats;
static long corrupt_left;

static int add_obj(const struct obj *o)
{
	if (n_objs == cap_objs) {
		size_t nc = cap_objs ? cap_objs * 2 : 1024;
		struct obj *n = realloc(objs, nc * sizeof(*n));
		if (!n)
			return -ENOMEM;
		objs = n;
		cap_objs = nc;
	}
	objs[n_objs++] = *o;
	return 0;
}

static int cmp_obj(const void *a, const void *b)
{
	return memcmp(((const struct obj *)a)->id, ((const struct obj *)b)->id, 32);
}

static const struct obj *find(const uint8_t id[32])
{
	struct obj key;
	memcpy(key.id, id, 32);
	return bsearch(&key, objs, n_objs, sizeof(*objs), cmp_obj);
}

static int load_bundle(const char *path, const char *tmpdir, int k)
{
	struct ota_bundle *b = NULL;
	struct ota_bundle_opts bo = {.verify = ota_bundle_verify_none};
	int r = ota_bundle_open(path, NULL, fl_now_s(), 0, &bo, &b);
	if (r < 0) {
		fprintf(stderr, "ctl: %s: %s\n", path, fl_strerror(r));
		return r;
	}
	char *dir = fl_asprintf("%s/b%d", tmpdir, k);
	fl_mkdir_p(dir, 0755);
	r = ota_bundle_extract(b, dir);
	const struct ota_manifest *m = ota_bundle_manifest(b);
	for (size_t i = 0; r == 0 && i < m->n_files; i++) {
		const struct ota_chunkidx *ci = ota_bundle_chunk_index(b, i);
		struct obj o = {0};
		r = ota_chunkidx_encode(ci, &o.blob, &o.blob_len);
		if (r < 0)
			break;
		fl_sha256(o.blob, o.blob_len, o.id);
		add_obj(&o);
		char *file = fl_path_join(dir, m->files[i].path); /* kept for the process */
		for (size_t c = 0; c < ota_chunkidx_count(ci); c++) {
			const struct ota_chunk *ch = ota_chunkidx_get(ci, c);
			struct obj p = {.file = file, .off = ch->offset, .len = ch->len};
			memcpy(p.id, ch->sha256, 32);
			add_obj(&p);
		}
	}
	free(dir);
	ota_bundle_free(b);
	return r;
}

static void write_stats(const char *path)
{
	char buf[512];
	int n = snprintf(
		buf, sizeof(buf),
		"{\"frames\":%llu,\"bytes\":%llu,\"index_bytes\":%llu,\"chunk_bytes\":%llu,"
		"\"corrupted\":%llu,\"reqs\":%llu,\"bad_reqs\":%llu,\"not_found\":%llu}\n",
		(unsigned long long)stats.frames, (unsigned long long)stats.bytes,
		(unsigned long long)stats.index_bytes, (unsigned long long)stats.chunk_bytes,
		(unsigned long long)stats.corrupted, (unsigned long long)stats.reqs,
		(unsigned long long)stats.bad_reqs, (unsigned long long)stats.not_found);
	/* No fsync: the test reads it back on the same machine. */
	char tmpf[1100];
	snprintf(tmpf, sizeof(tmpf), "%s.tmp", path);
	FILE *f = fopen(tmpf, "w");
	if (!f)
		return;
	fwrite(buf, 1, (size_t)n, f);
	if (fclose(f) == 0)
		rename(tmpf, path);
}

static void on_req(const char *payload, size_t len)
{
	cJSON *root = NULL;
	const cJSON *arr = NULL, *it;
	stats.reqs++;
	if (len > 4096 || fl_json_parse(payload, len, 4096, 4, &root) < 0 ||
	    fl_json_get_arr(root, "req", &arr) < 0 || cJSON_GetArraySize(arr) < 1 ||
	    cJSON_GetArraySize(arr) > 8) {
		stats.bad_reqs++;
		cJSON_Delete(root);
		return;
	}
	cJSON_ArrayForEach(it, arr)
	{
		const char *h;
		int64_t off, l;
		struct item x;
		if (fl_json_get_str(it, "id", &h) < 0 || strlen(h) != 64 ||
		    fl_hex_decode(h, x.id, 32) < 0 ||
		    fl_json_get_int(it, "off", 0, INT64_MAX, &off) < 0 ||
		    fl_json_get_int(it, "len", 1, RANGE_MAX, &l) < 0) {
			stats.bad_reqs++;
			continue;
		}
		x.off = (uint64_t)off;
		x.len = (uint32_t)l;
		if (q_len < QUEUE_MAX)
			queue[(q_head + q_len++) % QUEUE_MAX] = x;
	}
	cJSON_Delete(root);
}

/* Build the frame for X into BUF; returns its length. */
static size_t make_frame(const struct item *x, uint8_t *buf)
{
	const struct obj *o = find(x->id);
	uint32_t got = 0;
	int st = 0;
	if (!o) {
		st = 1;
		stats.not_found++;
	} else if (o->blob) {
		if (x->off >= o->blob_len) {
			st = 2;
		} else {
			got = (uint32_t)(o->blob_len - x->off < x->len ? o->blob_len - x->off
								       : x->len);
			memcpy(buf + HDR, o->blob + x->off, got);
			stats.index_bytes += got;
		}
	} else {
		if (x->off >= o->len) {
			st = 2;
		} else {
			got = o->len - (uint32_t)x->off < x->len ? o->len - (uint32_t)x->off
								 : x->len;
			FILE *f = fopen(o->file, "rb");
			if (!f || fseeko(f, (off_t)(o->off + x->off), SEEK_SET) < 0 ||
			    fread(buf + HDR, 1, got, f) != got) {
				st = 1;
				got = 0;
			}
			if (f)
				fclose(f);
			stats.chunk_bytes += got;
			if (got && corrupt_left > 0) {
				corrupt_left--;
				buf[HDR + got / 2] ^= 0x5a;
				stats.corrupted++;
			}
		}
	}
	memcpy(buf, "FLCK", 4);
	buf[4] = 1;
	buf[5] = (uint8_t)st;
	buf[6] = buf[7] = 0;
	memcpy(buf + 8, x->id, 32);
	for (int i = 0; i < 8; i++)
		buf[40 + i] = (uint8_t)(x->off >> (8 * i));
	for (int i = 0; i < 4; i++)
		buf[48 + i] = (uint8_t)(got >> (8 * i));
	stats.bytes += got;
	return HDR + got;
}

static int open_client(struct fl_mqtt **ret, int inflight)
{
	const char *pki = getenv("FL_MQTT_PKI"), *port = getenv("FL_MQTT_PORT");
	if (!pki || !port)
		return -EINVAL;
	static char uri[64], ca[1024], crt[1024], key[1024];
	snprintf(uri, sizeof(uri), "ssl://127.0.0.1:%s", port);
	snprintf(ca, sizeof(ca), "%s/ca.crt", pki);
	snprintf(crt, sizeof(crt), "%s/controller.crt", pki);
	snprintf(key, sizeof(key), "%s/controller.key", pki);
	struct fl_mqtt_opts o;
	fl_mqtt_opts_init(&o);
	o.uri = uri;
	o.client_id = "flotilla-controller";
	o.ca_file = ca;
	o.cert_file = crt;
	o.key_file = key;
	o.max_inflight = inflight;
	return fl_mqtt_new(&o, ret);
}

static int serve(int argc, char **argv)
{
	if (argc < 5)
		return 2;
	const char *dev = argv[2], *statsf = argv[3];
	int i = 4;
	if (!strcmp(argv[i], "--corrupt") && i + 1 < argc) {
		corrupt_left = atol(argv[i + 1]);
		i += 2;
	}
	const char *base = getenv("FL_TEST_TMPDIR") ? getenv("FL_TEST_TMPDIR") : "/tmp";
	char *tmpl = fl_asprintf("%s/ctlXXXXXX", base);
	if (!tmpl || !mkdtemp(tmpl))
		return 1;
	for (int k = 0; i < argc; i++, k++)
		if (load_bundle(argv[i], tmpl, k) < 0)
			return 1;
	qsort(objs, n_objs, sizeof(*objs), cmp_obj);
	snprintf(dat_topic, sizeof(dat_topic), "flotilla/v1/dev/%s/chunk/dat", dev);
	snprintf(req_topic, sizeof(req_topic), "flotilla/v1/dev/%s/chunk/req", dev);
	snprintf(state_topic, sizeof(state_topic), "flotilla/v1/dev/%s/state", dev);
	snprintf(event_topic, sizeof(event_topic), "flotilla/v1/dev/%s/event", dev);
	snprintf(cmd_topic, sizeof(cmd_topic), "flotilla/v1/dev/%s/cmd", dev);
	snprintf(ack_topic, sizeof(ack_topic), "flotilla/v1/dev/%s/tele/ack", dev);
	char *state_file = fl_asprintf("%s.state", statsf);
	char *events_file = fl_asprintf("%s.events", statsf);
	char *cmd_dir = fl_asprintf("%s.cmd", statsf);
	fl_mkdir_p(cmd_dir, 0755);
	struct fl_mqtt *m = NULL;
	int r = open_client(&m, 16);
	if (r == 0)
		r = fl_mqtt_subscribe(m, req_topic, 1);
	if (r == 0)
		r = fl_mqtt_subscribe(m, state_topic, 1);
	if (r == 0)
		r = fl_mqtt_subscribe(m, event_topic, 1);
	if (r == 0)
		r = fl_mqtt_start(m);
	if (r < 0) {
		fprintf(stderr, "ctl: mqtt: %s\n", fl_strerror(r));
		return 1;
	}
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, 0);
	uint8_t *frame = malloc(HDR + RANGE_MAX);
	write_stats(statsf);
	printf("ctl: serving %zu objects\n", n_objs);
	fflush(stdout);
	int timeout = 100;
	size_t held = 0;
	bool dirty = false;
	int64_t last_write = 0;
	for (;;) {
		struct pollfd p[2] = {{.fd = fl_mqtt_fd(m), .events = POLLIN},
				      {.fd = sfd, .events = POLLIN}};
		poll(p, 2, timeout);
		if (p[1].revents & POLLIN)
			break;
		struct fl_mqtt_event ev = {0};
		bool changed = false;
		while (fl_mqtt_next_event(m, &ev) == 1) {
			if (ev.type == FL_MQTT_EV_MESSAGE && !strcmp(ev.topic, req_topic)) {
				on_req((const char *)ev.payload, ev.len);
				changed = true;
			} else if (ev.type == FL_MQTT_EV_MESSAGE &&
				   !strcmp(ev.topic, state_topic)) {
				fl_write_file_atomic(state_file, ev.payload, ev.len, 0644);
			} else if (ev.type == FL_MQTT_EV_MESSAGE &&
				   !strcmp(ev.topic, event_topic)) {
				on_event(m, events_file, ev.payload, ev.len);
			}
			fl_mqtt_event_clear(&ev);
		}
		/* A frame refused for a full window is kept and sent first. */
		while ((held || q_len) && fl_mqtt_connected(m)) {
			if (!held) {
				held = make_frame(&queue[q_head], frame);
				q_head = (q_head + 1) % QUEUE_MAX;
				q_len--;
			}
			r = fl_mqtt_publish(m, dat_topic, frame, held, 1, false, NULL);
			if (r == -FL_EBUSY)
				break;
			held = 0;
			stats.frames++;
			changed = true;
		}
		int64_t now = fl_mono_ms();
		if (changed)
			dirty = true;
		if (dirty && (now - last_write >= 200 || (!q_len && !held))) {
			write_stats(statsf);
			dirty = false;
			last_write = now;
		}
		/* Commands dropped into STATS.cmd/ by the test script (one client
		 * id per controller: the script cannot publish itself). */
		if (fl_mqtt_connected(m)) {
			DIR *d = opendir(cmd_dir);
			struct dirent *de;
			while (d && (de = readdir(d))) {
				if (de->d_name[0] == '.' || !strstr(de->d_name, ".json") ||
				    strstr(de->d_name, ".tmp"))
					continue;
				char *cp = fl_path_join(cmd_dir, de->d_name);
				char *data = NULL;
				size_t len;
				if (fl_read_file(cp, 1 << 20, &data, &len) == 0 &&
				    fl_mqtt_publish(m, cmd_topic, data, len, 1, false, NULL) == 0)
					unlink(cp);
				free(data);
				free(cp);
			}
			if (d)
				closedir(d);
		}
		fl_mqtt_tick(m, fl_mono_ms(), &timeout);
		if (timeout < 0 || timeout > 100)
			timeout = q_len || held ? 5 : dirty ? 50 : 100;
	}
	write_stats(statsf);
	fl_mqtt_free(m);
	free(frame);
	fl_rm_rf(tmpl);
	return 0;
}

static int junk(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	const char *dev = argv[2];
	long count = atol(argv[3]);
	char cmd[256], dat[256];
	snprintf(cmd, sizeof(cmd), "flotilla/v1/dev/%s/cmd", dev);
	snprintf(dat, sizeof(dat), "flotilla/v1/dev/%s/chunk/dat", dev);
	struct fl_mqtt *m = NULL;
	int r = open_client(&m, 64);
	if (r == 0)
		r = fl_mqtt_start(m);
	if (r < 0)
		return 1;
	int64_t t0 = fl_mono_ms();
	while (!fl_mqtt_connected(m) && fl_mono_ms() - t0 < 10000) {
		struct pollfd p = {.fd = fl_mqtt_fd(m), .events = POLLIN};
		poll(&p, 1, 50);
		struct fl_mqtt_event ev = {0};
		while (fl_mqtt_next_event(m, &ev) == 1)
			fl_mqtt_event_clear(&ev);
		int t;
		fl_mqtt_tick(m, fl_mono_ms(), &t);
	}
	size_t big = 700 * 1024;
	uint8_t *buf = malloc(big);
	srand(42);
	long sent = 0;
	while (sent < count && fl_mono_ms() - t0 < 60000) {
		size_t n;
		const char *topic = (sent & 1) ? dat : cmd;
		switch (sent % 6) {
		case 0:
			n = (size_t)snprintf(
				(char *)buf, big,
				"{\"v\":1,\"id\":\"j%ld\",\"kind\":\"deploy\",\"envelope\":\"{}\"}",
				sent);
			break;
		case 1:
			n = HDR + 100;
			memcpy(buf, "FLCK", 4);
			buf[4] = 1;
			buf[5] = 0;
			for (size_t k = 8; k < n; k++)
				buf[k] = (uint8_t)rand();
			buf[48] = 100;
			buf[49] = buf[50] = buf[51] = 0;
			break;
		case 2:
			n = (size_t)snprintf((char *)buf, big, "{\"v\":1,\"id\":\"x\",\"kind\":");
			break;
		case 3:
			n = big;
			for (size_t k = 0; k < n; k++)
				buf[k] = (uint8_t)rand();
			break;
		case 4:
			n = (size_t)snprintf((char *)buf, big,
					     "{\"v\":1,\"id\":\"k%ld\",\"kind\":\"nonsense\"}",
					     sent);
			break;
		default:
			n = 1 + (size_t)(rand() % 4000);
			for (size_t k = 0; k < n; k++)
				buf[k] = (uint8_t)rand();
			break;
		}
		r = fl_mqtt_publish(m, topic, buf, n, 1, false, NULL);
		if (r == 0)
			sent++;
		struct pollfd p = {.fd = fl_mqtt_fd(m), .events = POLLIN};
		poll(&p, 1, r == -FL_EBUSY ? 20 : 0);
		struct fl_mqtt_event ev = {0};
		while (fl_mqtt_next_event(m, &ev) == 1)
			fl_mqtt_event_clear(&ev);
		int t;
		fl_mqtt_tick(m, fl_mono_ms(), &t);
	}
	/* let the window drain */
	t0 = fl_mono_ms();
	struct fl_mqtt_stats s;
	do {
		struct pollfd p = {.fd = fl_mqtt_fd(m), .events = POLLIN};
		poll(&p, 1, 50);
		struct fl_mqtt_event ev = {0};
		while (fl_mqtt_next_event(m, &ev) == 1)
			fl_mqtt_event_clear(&ev);
		fl_mqtt_stats(m, &s);
	} while (s.inflight > 0 && fl_mono_ms() - t0 < 10000);
	printf("junk: sent %ld\n", sent);
	free(buf);
	fl_mqtt_free(m);
	return sent == count ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "serve"))
		return serve(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "junk"))
		return junk(argc, argv);
	fprintf(stderr, "usage: agent_mqtt_ctl serve DEVICE STATS [--corrupt N] BUNDLE... | junk "
			"DEVICE COUNT\n");
	return 2;
}
