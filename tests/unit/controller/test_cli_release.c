/* The CLI (the real `flotilla` binary) against a controller API served in
 * this process: release create/list/show (plain and --json, errors),
 * rollout create --release --gate, rollout status with its details, and
 * rollout status --watch printing a line per change (stdout not a
 * terminal) until the rollout halts (exit 3). */
#include <errno.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctl_testutil.h"

#include <flotilla/error.h>

#include "http.h"
#include "rollout.h"

#define MODEL "defect-llm"
#define OT "operator-token-0123456789"

static char cli[1024];
static char base[64];

static void add_bundle(struct ctl *c, const char *version, uint64_t seq)
{
	struct ctl_store *s = ctl_get_store(c);
	char id[8];
	snprintf(id, sizeof(id), "%02x", (unsigned)seq);
	struct ctl_bundle_rec b = {.model = MODEL, .version = version, .sequence = seq,
				   .envelope_id = id, .envelope = "ENV", .files_json = "[]",
				   .pushed_at_s = 1};
	assert_int_equal(s->ops->bundle_put(s, &b), 1);
}

static void device(struct ctl *c, const char *id, const char *arch, const char *istate,
		   const char *iversion)
{
	char buf[1024], inst[200] = "";
	if (istate)
		snprintf(inst, sizeof(inst),
			 ",\"install\":{\"version\":\"%s\",\"state\":\"%s\",\"error\":\"\"}", iversion,
			 istate);
	snprintf(buf, sizeof(buf),
		 "{\"v\":1,\"device\":\"%s\",\"online\":true,\"agent\":\"0.1.0\","
		 "\"hw\":{\"arch\":\"%s\",\"ram_mb\":2048,\"accelerators\":[],\"backends\":[]},"
		 "\"models\":{\"" MODEL "\":{\"current\":\"a\",\"slots\":{\"a\":{\"status\":"
		 "\"ready\",\"version\":\"1.3.0\",\"sequence\":1}}%s}}}",
		 id, arch, inst);
	assert_int_equal(ctl_registry_on_state(c, id, buf, strlen(buf)), 0);
}

struct sent {
	char dev[16][CTL_DEVICE_ID_MAX + 1];
	int n;
};

static int capture(void *ud, const char *device, const char *json, size_t len)
{
	(void)json;
	(void)len;
	struct sent *k = ud;
	assert_true(k->n < 16);
	snprintf(k->dev[k->n++], sizeof(k->dev[0]), "%s", device);
	return 0;
}

/* Run the CLI with ARGS (shell words); stdout+stderr in *OUT (caller
 * frees); returns the exit code. */
static int run(const char *args, char **out)
{
	char *cmd = fl_asprintf("'%s' %s --controller %s --token " OT " 2>&1", cli, args, base);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	char *buf = calloc(1, 65536);
	size_t n = fread(buf, 1, 65535, p);
	buf[n] = 0;
	int st = pclose(p);
	free(cmd);
	*out = buf;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void expect_run(const char *args, int code, const char *want)
{
	char *out = NULL;
	int rc = run(args, &out);
	if (rc != code || (want && !strstr(out, want)))
		fail_msg("flotilla %s: exit %d, expected %d with '%s':\n%s", args, rc, code,
			 want ? want : "", out);
	free(out);
}

/* Wait (up to 20 s) until the file at PATH holds NEEDLE: the watcher
 * prints on its own clock, so the test moves on only once it has seen the
 * state it must report (a fixed pause loses states on a loaded machine). */
static void wait_for_text(const char *path, const char *needle)
{
	for (int i = 0; i < 400; i++) {
		char *text = NULL;
		size_t len = 0;
		bool found = fl_read_file(path, 1 << 20, &text, &len) == 0 && strstr(text, needle);
		free(text);
		if (found)
			return;
		nanosleep(&(struct timespec){.tv_nsec = 50 * 1000000L}, NULL);
	}
	fail_msg("%s never showed \"%s\"", path, needle);
}

static void test_cli(void **state)
{
	(void)state;
	const char *bin = getenv("FL_BINARY_DIR");
	assert_non_null(bin);
	snprintf(cli, sizeof(cli), "%s/controller/cli/flotilla", bin);
	if (access(cli, X_OK) != 0)
		fail_msg("%s not built", cli);
	char *dir;
	struct ctl *c = ctu_open("ctl-cli-rel", NULL, &dir);
	add_bundle(c, "1.4.0-q4", 2);
	add_bundle(c, "1.4.0-x86", 3);
	for (int i = 0; i < 4; i++) {
		char id[16];
		snprintf(id, sizeof(id), "arm-%d", i);
		device(c, id, "aarch64", NULL, NULL);
	}
	device(c, "x86-0", "x86_64", NULL, NULL);
	device(c, "odd-0", "riscv64", NULL, NULL);
	char *tmp = fl_path_join(dir, "tmp");
	assert_int_equal(fl_mkdir_p(tmp, 0700), 0);
	struct ctl_token tokens[] = {{.name = "alice", .secret = OT, .role = CTL_ROLE_OPERATOR}};
	struct ctl_http_opts ho = {.tokens = tokens, .n_tokens = 1, .tmp_dir = tmp};
	struct ctl_http *h = NULL;
	assert_int_equal(ctl_http_start(c, &ho, &h), 0);
	snprintf(base, sizeof(base), "http://127.0.0.1:%u", (unsigned)ctl_http_port(h));

	/* releases */
	expect_run("release create " MODEL "@1.4.0 --variant 1.4.0-q4:arch=aarch64"
		   " --variant nope:arch=x86_64",
		   1, "bundle " MODEL "@nope was not pushed (see docs/api.md) (HTTP 404)");
	expect_run("release create " MODEL "@1.4.0 --variant 1.4.0-q4:gpu=yes", 2, "bad --variant");
	expect_run("release create " MODEL "@1.4.0 --variant 1.4.0-q4:arch=aarch64"
		   " --variant 1.4.0-x86:arch=x86_64,min_ram_mb=1024",
		   0, "release 1: " MODEL "@1.4.0, 2 variants");
	expect_run("release create " MODEL "@1.4.0 --variant 1.4.0-q4", 1, "exists (see docs/api.md) (HTTP 409)");
	expect_run("release show " MODEL "@1.4.0", 0, "arch=x86_64 min_ram_mb=1024");
	expect_run("release list --json", 0, "\"releases\":[{");
	expect_run("release list --model other", 0, "no releases");
	expect_run("release show 7", 1, "no such release (HTTP 404)");

	/* a rollout of the release, with a gate */
	expect_run("rollout create " MODEL "@1.4.0 --release --waves 50,100 --soak 0 --min-sample 2"
		   " --gate p95_latency_max_ratio=1.5 --gate crashes_max=0 --revert-on-halt --json",
		   0, "\"variants\":[{");
	expect_run("rollout create " MODEL "@1.4.0 --release --waves 100 --gate p95=2", 1,
		   "gates: unknown member 'p95'");
	expect_run("rollout create " MODEL "@1.4.0 --release --waves 100 --gate p95", 2,
		   "KEY=NUMBER");
	expect_run("rollout create " MODEL "@1.4.0 --release --waves 100 --window 'site=a 22:00'",
		   2, "--window");
	expect_run("rollout create " MODEL "@1.4.0 --release --waves 100"
		   " --window 'site=a 22:00-05:00 mon,xyz'",
		   1, "windows[0].days");

	/* watch, not a terminal: one line per change until it halts */
	char *wout = fl_path_join(dir, "watch.out");
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		FILE *f = freopen(wout, "w", stdout);
		if (!f || !freopen("/dev/null", "r", stdin))
			_exit(99);
		dup2(STDOUT_FILENO, STDERR_FILENO);
		execl(cli, cli, "rollout", "status", "1", "--watch", "--interval", "0.1",
		      "--controller", base, "--token", OT, (char *)NULL);
		_exit(98);
	}
	wait_for_text(wout, "  created");
	/* Wave 1: 50% of the 5 targets (odd-0: no variant fits). */
	struct sent k = {0};
	assert_int_equal(ctl_rollout_tick(c, 1001, capture, &k), 3);
	assert_int_equal(ctl_rollout_tick(c, 1002, capture, &k), 0); /* counts */
	wait_for_text(wout, "3 attempted");
	/* All three reject it: the failure gate halts the rollout. */
	for (int i = 0; i < k.n; i++)
		device(c, k.dev[i], strncmp(k.dev[i], "x86", 3) ? "aarch64" : "x86_64", "REJECTED",
		       strncmp(k.dev[i], "x86", 3) ? "1.4.0-q4" : "1.4.0-x86");
	ctl_rollout_tick(c, 1003, capture, &k);
	int st = 0, waited = 0;
	pid_t w;
	while ((w = waitpid(pid, &st, WNOHANG)) == 0 && waited++ < 100)
		nanosleep(&(struct timespec){.tv_nsec = 100 * 1000000L}, NULL);
	if (w == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		fail_msg("rollout status --watch did not stop when the rollout halted");
	}
	char *text = NULL;
	size_t len = 0;
	assert_int_equal(fl_read_file(wout, 1 << 20, &text, &len), 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 3)
		fail_msg("watch exit %d, expected 3:\n%s", WEXITSTATUS(st), text);
	/* plain lines, a new one per change: running (0 then 3 attempted), halted */
	int lines = 0;
	for (const char *p = text; (p = strchr(p, '\n')); p++)
		lines += p[1] == ' ' ? 0 : 1;
	assert_non_null(strstr(text, "running, wave 1 of 2 (50%)"));
	assert_non_null(strstr(text, "3 attempted"));
	assert_non_null(strstr(text, MODEL "@1.4.0 halted"));
	assert_null(strstr(text, "\033["));
	if (lines < 3)
		fail_msg("expected a line per change:\n%s", text);
	free(text);
	free(wout);
	expect_run("rollout status 1", 0, "skipped: 1 device no variant of the release fits");
	expect_run("rollout status 1", 0, "> wave 1 (50%): 3 devices: 0 ok, 3 failed");
	expect_run("rollout status 1", 0, "variant 1.4.0-q4: 4 targets, 2 attempted, 0 ok, 2 failed");
	expect_run("rollout status 1", 0, "halted: failure gate crossed");
	expect_run("rollout status 1 --watch --json", 3, "\"state\":\"halted\"");
	expect_run("rollout list --watch", 2, "usage");
	expect_run("devices list --backend gguf --json", 0, "{\"devices\":[]}");
	expect_run("devices list --min-ram-mb 2048 --arch riscv64", 0, "odd-0");
	expect_run("devices list --install nope", 1, "install: expected an install state");

	ctl_http_stop(h);
	free(tmp);
	ctu_close(c, dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_cli)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
