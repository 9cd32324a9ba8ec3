/* chunk_fetch: fetch one file through the controller's chunk/req ->
 * chunk/dat service (docs/protocol.md) as device DEVICE, with at most 8
 * ranges outstanding, verifying every chunk's SHA-256 and the whole file's,
 * and print the throughput. A test and measuring tool for e2e_deploy.sh,
 * not an agent: no install, no state.
 *
 *   chunk_fetch URI DEVICE CHUNK_INDEX OUT
 *   chunk_fetch --req URI DEVICE REQUEST_JSON COUNT
 *       publish one chunk/req and print the next COUNT chunk/dat payloads,
 *       one hex line each (one connection: the broker allows one per device)
 *   env FL_FETCH_CA, FL_FETCH_CERT, FL_FETCH_KEY: the device's TLS files
 *
 * Exit 0 when OUT was rebuilt and matches the index; 1 otherwise. */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <flotilla/chunkidx.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/mqtt.h>
#include <flotilla/util.h>

#define WINDOW 8
#define HDR 52
#define TIMEOUT_MS 30000

static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static int die(const char *what, int r)
{
	fprintf(stderr, "chunk_fetch: %s: %s\n", what, r ? fl_strerror(r) : "failed");
	return 1;
}

/* As the controller does (controller/src/mqtt.c): TCP_NODELAY on every
 * connected TCP socket (this program has only the broker's), unless
 * FL_FETCH_NAGLE is set. */
static void nodelay(void)
{
	if (getenv("FL_FETCH_NAGLE"))
		return;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		int fd = atoi(de->d_name), one = 1, type = 0;
		socklen_t tl = sizeof(type);
		if (fd > 2 && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 &&
		    type == SOCK_STREAM)
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	closedir(d);
}

static struct fl_mqtt *connect_as(const char *uri, const char *dev, const char *dat_topic)
{
	struct fl_mqtt_opts o;
	fl_mqtt_opts_init(&o);
	o.uri = uri;
	o.client_id = dev;
	o.ca_file = getenv("FL_FETCH_CA");
	o.cert_file = getenv("FL_FETCH_CERT");
	o.key_file = getenv("FL_FETCH_KEY");
	o.clean_start = true;
	o.max_msg_bytes = HDR + 256 * 1024;
	o.max_queue_bytes = 16u << 20;
	struct fl_mqtt *m = NULL;
	int r = fl_mqtt_new(&o, &m);
	if (r < 0) {
		die("mqtt", r);
		return NULL;
	}
	fl_mqtt_subscribe(m, dat_topic, 1);
	fl_mqtt_start(m);
	return m;
}

/* Wait for events up to 100 ms; returns the next one in *EV (1) or 0. */
static int next_event(struct fl_mqtt *m, struct fl_mqtt_event *ev)
{
	if (fl_mqtt_next_event(m, ev) == 1)
		return 1;
	struct pollfd p = {.fd = fl_mqtt_fd(m), .events = POLLIN};
	int wait_ms = 100;
	fl_mqtt_tick(m, fl_mono_ms(), &wait_ms);
	poll(&p, 1, wait_ms < 0 || wait_ms > 100 ? 100 : wait_ms);
	return fl_mqtt_next_event(m, ev);
}

static int req_mode(const char *uri, const char *dev, const char *json, long count)
{
	char req_topic[128], dat_topic[128];
	fl_snprintf(req_topic, sizeof(req_topic), "flotilla/v1/dev/%s/chunk/req", dev);
	fl_snprintf(dat_topic, sizeof(dat_topic), "flotilla/v1/dev/%s/chunk/dat", dev);
	struct fl_mqtt *m = connect_as(uri, dev, dat_topic);
	if (!m)
		return 1;
	long got = 0;
	bool sent = false;
	int64_t deadline = fl_mono_ms() + 20000;
	while (got < count && fl_mono_ms() < deadline) {
		struct fl_mqtt_event ev = {0};
		if (!next_event(m, &ev))
			continue;
		if (ev.type == FL_MQTT_EV_SUBSCRIBED && !sent) {
			int r = fl_mqtt_publish(m, req_topic, json, strlen(json), 1, false, NULL);
			if (r < 0) {
				fl_mqtt_event_clear(&ev);
				fl_mqtt_free(m);
				return die("publish chunk/req", r);
			}
			sent = true;
		} else if (ev.type == FL_MQTT_EV_PUBLISH_FAILED) {
			fprintf(stderr, "chunk_fetch: chunk/req refused: %s\n",
				fl_mqtt_reason_str(ev.reason));
		} else if (ev.type == FL_MQTT_EV_MESSAGE) {
			for (size_t i = 0; i < ev.len; i++)
				printf("%02x", ev.payload[i]);
			printf("\n");
			got++;
		}
		fl_mqtt_event_clear(&ev);
	}
	/* Anything more within 300 ms is an error too. */
	int64_t quiet = fl_mono_ms() + 300;
	while (got == count && fl_mono_ms() < quiet) {
		struct fl_mqtt_event ev = {0};
		if (next_event(m, &ev) && ev.type == FL_MQTT_EV_MESSAGE)
			got++;
		fl_mqtt_event_clear(&ev);
	}
	fl_mqtt_free(m);
	if (got != count) {
		fprintf(stderr, "chunk_fetch: %ld frames, expected %ld\n", got, count);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "--req"))
		return req_mode(argv[2], argv[3], argv[4], strtol(argv[5], NULL, 10));
	if (argc != 5) {
		fprintf(stderr, "usage: chunk_fetch URI DEVICE CHUNK_INDEX OUT\n");
		return 2;
	}
	const char *uri = argv[1], *dev = argv[2];
	char *buf = NULL;
	size_t len = 0;
	int r = fl_read_file(argv[3], OTA_CIDX_MAX_BYTES, &buf, &len);
	if (r < 0)
		return die(argv[3], r);
	struct ota_chunkidx *idx = NULL;
	r = ota_chunkidx_decode(buf, len, &idx);
	free(buf);
	if (r < 0)
		return die("chunk index", r);
	size_t n = ota_chunkidx_count(idx);
	int out = open(argv[4], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
		return die(argv[4], -errno);

	char req_topic[128], dat_topic[128];
	fl_snprintf(req_topic, sizeof(req_topic), "flotilla/v1/dev/%s/chunk/req", dev);
	fl_snprintf(dat_topic, sizeof(dat_topic), "flotilla/v1/dev/%s/chunk/dat", dev);
	struct fl_mqtt *m = connect_as(uri, dev, dat_topic);
	if (!m)
		return 1;
	bool subscribed = false;
	size_t next = 0, done = 0, outstanding = 0, bad = 0;
	uint64_t bytes = 0;
	bool *got = calloc(n ? n : 1, sizeof(bool));
	int64_t t0 = 0, deadline = fl_mono_ms() + TIMEOUT_MS;
	while (done < n && fl_mono_ms() < deadline) {
		while (subscribed && outstanding < WINDOW && next < n) {
			const struct ota_chunk *c = ota_chunkidx_get(idx, next);
			char hex[65], req[256];
			fl_hex_encode(c->sha256, 32, hex);
			fl_snprintf(req, sizeof(req),
				    "{\"v\":1,\"req\":[{\"id\":\"%s\",\"off\":0,\"len\":%u}]}", hex,
				    (unsigned)c->len);
			r = fl_mqtt_publish(m, req_topic, req, strlen(req), 1, false, NULL);
			if (r == -FL_EBUSY)
				break;
			if (r < 0)
				return die("publish chunk/req", r);
			if (!t0)
				t0 = fl_mono_ms();
			next++;
			outstanding++;
		}
		struct pollfd p = {.fd = fl_mqtt_fd(m), .events = POLLIN};
		int wait_ms = 100;
		fl_mqtt_tick(m, fl_mono_ms(), &wait_ms);
		poll(&p, 1, wait_ms < 0 || wait_ms > 100 ? 100 : wait_ms);
		struct fl_mqtt_event ev = {0};
		while (fl_mqtt_next_event(m, &ev) == 1) {
			if (ev.type == FL_MQTT_EV_SUBSCRIBED) {
				nodelay();
				subscribed = true;
			} else if (ev.type == FL_MQTT_EV_SUBSCRIBE_FAILED) {
				int e = ev.err;
				fl_mqtt_event_clear(&ev);
				return die("subscribe chunk/dat", e);
			} else if (ev.type == FL_MQTT_EV_MESSAGE) {
				const uint8_t *f = ev.payload;
				bool ok = ev.len >= HDR && !memcmp(f, "FLCK\x01", 5) && f[5] == 0 &&
					  le(f + 48, 4) == ev.len - HDR;
				/* Which outstanding chunk is it? (same id may repeat) */
				size_t which = n;
				for (size_t i = done; ok && i < next && which == n; i++) {
					const struct ota_chunk *c = ota_chunkidx_get(idx, i);
					if (!got[i] && !memcmp(c->sha256, f + 8, 32) &&
					    c->len == ev.len - HDR)
						which = i;
				}
				uint8_t h[32];
				if (which < n)
					fl_sha256(f + HDR, ev.len - HDR, h);
				if (which == n || memcmp(h, f + 8, 32)) {
					bad++;
				} else {
					const struct ota_chunk *c = ota_chunkidx_get(idx, which);
					if (pwrite(out, f + HDR, c->len, (off_t)c->offset) != (ssize_t)c->len)
						return die("write", -errno);
					got[which] = true;
					bytes += c->len;
					outstanding--;
					while (done < n && got[done])
						done++;
				}
			}
			fl_mqtt_event_clear(&ev);
		}
	}
	int64_t ms = fl_mono_ms() - t0;
	struct fl_mqtt_stats st;
	fl_mqtt_stats(m, &st);
	fl_mqtt_free(m);
	if (done < n) {
		fprintf(stderr, "chunk_fetch: timed out: %zu of %zu chunks, %zu bad frames\n", done, n,
			bad);
		return 1;
	}
	/* The whole file. */
	uint8_t h[32];
	char *data = NULL;
	size_t dl = 0;
	close(out);
	if ((r = fl_read_file(argv[4], ota_chunkidx_file_size(idx) + 1, &data, &dl)) < 0)
		return die(argv[4], r);
	fl_sha256(data, dl, h);
	free(data);
	if (dl != ota_chunkidx_file_size(idx) || memcmp(h, ota_chunkidx_file_sha256(idx), 32))
		return die("the rebuilt file does not match the index", 0);
	printf("chunk_fetch: %zu chunks, %llu bytes in %lld ms over %s: %.1f MB/s "
	       "(window %d, %zu bad frames, %llu messages in)\n",
	       n, (unsigned long long)bytes, (long long)ms, uri,
	       ms > 0 ? (double)bytes / 1e3 / (double)ms : 0.0, WINDOW, bad,
	       (unsigned long long)st.msgs_in);
	free(got);
	ota_chunkidx_free(idx);
	return bad ? 1 : 0;
}
