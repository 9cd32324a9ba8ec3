/* Stress of fl_mqtt (common/src/mqtt.c) across broker restarts: a real
 * mosquitto (mutual TLS, Flotilla ACL, persistence on) is killed (-9) or
 * stopped and started again over and over, at random short intervals, while
 * a controller-like client (three $share subscriptions and a plain one, as
 * flotilla-controller has) and two devices keep publishing. Every reconnect
 * renews every subscription (docs/mqtt.md "Resumed sessions"), so the
 * restarts land at every point of connect / SUBSCRIBE / SUBACK / publish.
 * Built for the AddressSanitizer preset: a use-after-free in the client
 * stack (ours or Paho's) ends a client process with an ASan report; the
 * run fails then. Run by mqtt_restart_stress.sh, which sets FL_MQTT_PKI,
 * FL_MQTT_PORT and FL_MQTT_PKGDIR (as for mqtt_session).
 *
 *   mqtt_restart_stress SECONDS [ROUNDS_MIN]
 *
 * Each client runs in its own process (one Paho client per process, as in
 * production; a second client in one process connects ~2 s late). Bounded:
 * the clients stop SECONDS after the start (+ a 30 s alarm); the parent
 * stops restarting the broker after SECONDS. The restarts are paced by the
 * clients: each client reports its CONNECTED events through a pipe, and the
 * parent kills the broker 0-1.5 s after all three are connected again (or
 * after 6 s), so every restart meets clients that publish or subscribe.
 * Exit 0 when every client process exited 0 and each connected at least
 * ROUNDS_MIN (default 2) times, and the broker was restarted at least 3
 * times; 1 otherwise. */
#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <flotilla/error.h>
#include <flotilla/mqtt.h>
#include <flotilla/util.h>

#define PREFIX "flotilla/v1/dev/"
#define SHARE "$share/controllers/"
#define N_CLIENTS 3

static const char *pki, *pkgdir;
static int port;
static int rounds_min = 2;
static int conn_pipe = -1; /* children write their index on each CONNECTED */

struct counts {
	uint64_t connects, resumed, subscribed, sub_failed, msgs, published, pub_failed, disconnects;
};

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static char *path(const char *dir, const char *rel)
{
	char *p = fl_asprintf("%s/%s", dir, rel);
	if (!p)
		abort();
	return p;
}

/* One client process: ID is "controller", "devA" or "devB". */
static int client_main(int idx, const char *id, int64_t end_ms)
{
	bool ctl = !strcmp(id, "controller");
	char uri[64], rel[128];
	snprintf(uri, sizeof(uri), "ssl://127.0.0.1:%d", port);
	struct fl_mqtt_opts o;
	fl_mqtt_opts_init(&o);
	o.uri = uri;
	o.client_id = ctl ? "flotilla-controller" : id;
	char *ca = path(pki, "ca.crt"), *crt, *key;
	if (ctl) {
		crt = path(pki, "controller.crt");
		key = path(pki, "controller.key");
	} else {
		snprintf(rel, sizeof(rel), "devices/%s.crt", id);
		crt = path(pki, rel);
		snprintf(rel, sizeof(rel), "devices/%s.key", id);
		key = path(pki, rel);
	}
	o.ca_file = ca;
	o.cert_file = crt;
	o.key_file = key;
	o.keepalive_s = 5;
	o.connect_timeout_s = 5;
	/* Reconnect fast and often: the restarts must keep meeting connects. */
	o.backoff_min_ms = 50;
	o.backoff_max_ms = 400;
	o.max_inflight = 32;
	struct fl_mqtt *m = NULL;
	int r = fl_mqtt_new(&o, &m);
	if (r < 0) {
		fprintf(stderr, "%s: fl_mqtt_new: %s\n", id, fl_strerror(r));
		return 2;
	}
	char topics[4][128];
	int n_topics = 0;
	if (ctl) {
		snprintf(topics[n_topics++], 128, "%s", PREFIX "+/state");
		snprintf(topics[n_topics++], 128, "%s", SHARE PREFIX "+/event");
		snprintf(topics[n_topics++], 128, "%s", SHARE PREFIX "+/tele");
		snprintf(topics[n_topics++], 128, "%s", SHARE PREFIX "+/chunk/req");
	} else {
		snprintf(topics[n_topics++], 128, PREFIX "%s/cmd", id);
		snprintf(topics[n_topics++], 128, PREFIX "%s/chunk/dat", id);
		snprintf(topics[n_topics++], 128, PREFIX "%s/tele/ack", id);
	}
	for (int i = 0; i < n_topics; i++)
		if ((r = fl_mqtt_subscribe(m, topics[i], 1)) < 0) {
			fprintf(stderr, "%s: subscribe %s: %s\n", id, topics[i], fl_strerror(r));
			fl_mqtt_free(m);
			return 2;
		}
	fl_mqtt_start(m);

	/* What we publish: the controller to the devices, a device to its own
	 * upstream topics (the ACL allows exactly those). */
	char pubs[4][128];
	int n_pubs = 0;
	if (ctl) {
		snprintf(pubs[n_pubs++], 128, "%s", PREFIX "devA/cmd");
		snprintf(pubs[n_pubs++], 128, "%s", PREFIX "devB/cmd");
		snprintf(pubs[n_pubs++], 128, "%s", PREFIX "devA/chunk/dat");
		snprintf(pubs[n_pubs++], 128, "%s", PREFIX "devB/tele/ack");
	} else {
		snprintf(pubs[n_pubs++], 128, PREFIX "%s/state", id);
		snprintf(pubs[n_pubs++], 128, PREFIX "%s/event", id);
		snprintf(pubs[n_pubs++], 128, PREFIX "%s/tele", id);
		snprintf(pubs[n_pubs++], 128, PREFIX "%s/chunk/req", id);
	}
	static uint8_t payload[32768];
	memset(payload, 'x', sizeof(payload));
	struct counts c = {0};
	uint64_t seq = 0;
	while (fl_mono_ms() < end_ms) {
		int next = -1;
		fl_mqtt_tick(m, fl_mono_ms(), &next);
		if (next < 0 || next > 5)
			next = 5;
		struct pollfd pfd = {.fd = fl_mqtt_fd(m), .events = POLLIN};
		poll(&pfd, 1, next);
		struct fl_mqtt_event ev;
		while (fl_mqtt_next_event(m, &ev) > 0) {
			switch (ev.type) {
			case FL_MQTT_EV_CONNECTED: {
				c.connects++;
				c.resumed += ev.session_present;
				char b = (char)idx;
				ssize_t w = write(conn_pipe, &b, 1); /* the parent paces its restarts */
				(void)w;
				break;
			}
			case FL_MQTT_EV_DISCONNECTED:
				c.disconnects++;
				break;
			case FL_MQTT_EV_SUBSCRIBED:
				c.subscribed++;
				break;
			case FL_MQTT_EV_SUBSCRIBE_FAILED:
				c.sub_failed++;
				break;
			case FL_MQTT_EV_MESSAGE:
				c.msgs++;
				break;
			case FL_MQTT_EV_PUBLISHED:
				c.published++;
				break;
			case FL_MQTT_EV_PUBLISH_FAILED:
				c.pub_failed++;
				break;
			default:
				break;
			}
			fl_mqtt_event_clear(&ev);
		}
		/* Keep the window full: QoS 1 and QoS 0, small and 32 KiB (a kill
		 * -9 with unread data makes the broker's kernel answer with RST:
		 * the next write fails at once). */
		while (fl_mqtt_connected(m)) {
			const char *t = pubs[seq % (uint64_t)n_pubs];
			size_t len = seq % 3 == 0 ? sizeof(payload) : 64;
			int qos = seq % 5 == 0 ? 0 : 1;
			if (fl_mqtt_publish(m, t, payload, len, qos, false, NULL) < 0)
				break;
			seq++;
		}
	}
	struct fl_mqtt_stats st;
	fl_mqtt_stats(m, &st);
	printf("%s: connects %" PRIu64 " (resumed %" PRIu64 "), disconnects %" PRIu64
	       ", subscribed %" PRIu64 " (failed %" PRIu64 "), messages in %" PRIu64
	       ", published %" PRIu64 " (failed %" PRIu64 "), requests open %d, Paho clients "
	       "replaced %" PRIu64 "\n",
	       id, c.connects, c.resumed, c.disconnects, c.subscribed, c.sub_failed, c.msgs,
	       c.published, c.pub_failed, st.requests, st.clients_replaced);
	fflush(stdout);
	fl_mqtt_free(m);
	free(ca);
	free(crt);
	free(key);
	return c.connects >= (uint64_t)rounds_min ? 0 : 3;
}

static int run(const char *cmd)
{
	int r = system(cmd);
	return r == -1 ? -1 : WIFEXITED(r) ? WEXITSTATUS(r) : 128;
}

static pid_t broker_pid(void)
{
	char *p = path(pki, "broker/mosquitto.pid");
	FILE *f = fopen(p, "re");
	free(p);
	if (!f)
		return -1;
	long v = -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return (pid_t)v;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: mqtt_restart_stress SECONDS [ROUNDS_MIN]\n");
		return 2;
	}
	int secs = atoi(argv[1]);
	if (argc > 2)
		rounds_min = atoi(argv[2]);
	pki = getenv("FL_MQTT_PKI");
	pkgdir = getenv("FL_MQTT_PKGDIR");
	const char *p = getenv("FL_MQTT_PORT");
	if (secs < 1 || secs > 3600 || !pki || !pkgdir || !p) {
		fprintf(stderr, "mqtt_restart_stress: SECONDS 1..3600, and FL_MQTT_PKI, FL_MQTT_PORT, "
				"FL_MQTT_PKGDIR set\n");
		return 2;
	}
	port = atoi(p);
	/* The backoff options are checked (they exist for this test). */
	int bad = 0;
	static const int backoffs[][2] = {{5, 0}, {0, 5}, {-1, 0}, {2000, 1000}, {0, 3600001}};
	for (size_t i = 0; i < sizeof(backoffs) / sizeof(backoffs[0]); i++) {
		struct fl_mqtt_opts o;
		struct fl_mqtt *m = NULL;
		fl_mqtt_opts_init(&o);
		o.uri = "tcp://127.0.0.1:1";
		o.client_id = "devA";
		o.backoff_min_ms = backoffs[i][0];
		o.backoff_max_ms = backoffs[i][1];
		if (fl_mqtt_new(&o, &m) != -EINVAL) {
			printf("FAIL: backoff %d/%d ms accepted\n", backoffs[i][0], backoffs[i][1]);
			fl_mqtt_free(m);
			bad++;
		}
	}
	if (!bad)
		printf("ok: out-of-range backoff options refused (-EINVAL)\n");
	int64_t end = fl_mono_ms() + (int64_t)secs * 1000;
	int pfd[2];
	if (pipe(pfd) < 0) {
		perror("pipe");
		return 1;
	}
	conn_pipe = pfd[1];
	static const char *const ids[N_CLIENTS] = {"controller", "devA", "devB"};
	pid_t kids[N_CLIENTS];
	for (int i = 0; i < N_CLIENTS; i++) {
		fflush(NULL);
		kids[i] = fork();
		if (kids[i] < 0) {
			perror("fork");
			return 1;
		}
		if (kids[i] == 0) {
			alarm((unsigned)secs + 30); /* bounded even if something hangs */
			_exit(client_main(i, ids[i], end));
		}
	}

	close(pfd[1]);
	/* Restart the broker over and over: wait until every client has
	 * connected again (at most 6 s), let them publish for 0-1.5 s (or
	 * catch them while still subscribing), then kill -9 (3 of 4 times) or
	 * stop it, and start it again at once or after a short pause. */
	unsigned seed = (unsigned)fl_mono_ns() ^ (unsigned)getpid();
	char stop[1024], start[1024];
	snprintf(stop, sizeof(stop), "'%s/stop-broker.sh' '%s' >/dev/null 2>&1", pkgdir, pki);
	snprintf(start, sizeof(start),
		 "FL_BROKER_PERSIST=1 FL_BROKER_WAIT_S=10 '%s/start-broker.sh' '%s' %d >/dev/null",
		 pkgdir, pki, port);
	int restarts = 0, kills = 0, start_fail = 0, waits_timed_out = 0;
	while (fl_mono_ms() < end - 1500) {
		bool seen[N_CLIENTS] = {false};
		int n_seen = 0;
		int64_t until = fl_mono_ms() + 6000;
		while (n_seen < N_CLIENTS && fl_mono_ms() < until) {
			struct pollfd pp = {.fd = pfd[0], .events = POLLIN};
			if (poll(&pp, 1, 100) <= 0)
				continue;
			char b;
			if (read(pfd[0], &b, 1) != 1)
				break;
			if (b >= 0 && b < N_CLIENTS && !seen[(int)b]) {
				seen[(int)b] = true;
				n_seen++;
			}
		}
		if (n_seen < N_CLIENTS)
			waits_timed_out++;
		sleep_ms((int)(rand_r(&seed) % 1500));
		if (rand_r(&seed) % 4) {
			pid_t b = broker_pid();
			if (b > 0 && kill(b, SIGKILL) == 0) {
				kills++;
				sleep_ms(20);
			}
		}
		run(stop); /* also cleans up after a kill */
		if (rand_r(&seed) % 3 == 0)
			sleep_ms((int)(rand_r(&seed) % 500));
		if (run(start) != 0) {
			start_fail++;
			sleep_ms(200);
			if (run(start) != 0) {
				fprintf(stderr, "FAIL: the broker did not start again\n");
				break;
			}
		}
		restarts++;
	}
	printf("broker restarted %d times (%d after kill -9), %d start retries, %d times not every "
	       "client had connected within 6 s\n",
	       restarts, kills, start_fail, waits_timed_out);
	int fails = 0;
	for (int i = 0; i < N_CLIENTS; i++) {
		int st = 0;
		while (waitpid(kids[i], &st, 0) < 0 && errno == EINTR)
			;
		if (WIFSIGNALED(st)) {
			printf("FAIL: %s client killed by signal %d\n", ids[i], WTERMSIG(st));
			fails++;
		} else if (WIFEXITED(st) && WEXITSTATUS(st) == 3) {
			printf("FAIL: %s client connected fewer than %d times\n", ids[i], rounds_min);
			fails++;
		} else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			/* 1: AddressSanitizer's exit status after a report. */
			printf("FAIL: %s client exit status %d (see its report above)\n", ids[i],
			       WEXITSTATUS(st));
			fails++;
		} else
			printf("ok: %s client: at least %d connects, clean exit\n", ids[i], rounds_min);
	}
	if (restarts < 3) {
		printf("FAIL: only %d broker restarts\n", restarts);
		fails++;
	}
	fails += bad;
	printf("%d passed, %d failed\n", N_CLIENTS + 2 - fails, fails);
	return fails ? 1 : 0;
}
