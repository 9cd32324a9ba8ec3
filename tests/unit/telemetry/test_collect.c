#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/tele_collect.h>

static void burn_cpu_ms(int ms)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	volatile uint64_t x = 0;
	do {
		for (int i = 0; i < 100000; i++)
			x += (uint64_t)i;
		clock_gettime(CLOCK_MONOTONIC, &b);
	} while ((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < ms);
	(void)x;
}

static void test_this_machine(void **state)
{
	(void)state;
	struct tele_cpu_sampler s = {0};
	double pct;
	assert_int_equal(tele_cpu_sample(&s, NULL, &pct), -EAGAIN);
	burn_cpu_ms(200);
	assert_int_equal(tele_cpu_sample(&s, NULL, &pct), 0);
	assert_true(pct > 0.0 && pct <= 100.0);

	uint64_t rss;
	assert_int_equal(tele_read_rss(NULL, 0, &rss), 0);
	assert_true(rss > 512 * 1024 && rss < (64ull << 30));
	uint64_t rss2;
	assert_int_equal(tele_read_rss("/", getpid(), &rss2), 0);
	assert_true(rss2 > 512 * 1024);
	assert_int_equal(tele_read_rss(NULL, -1, &rss), -EINVAL);

	uint64_t total, avail;
	assert_int_equal(tele_read_meminfo(NULL, &total, &avail), 0);
	assert_true(total > (64ull << 20));
	assert_true(avail > 0 && avail <= total);

	uint64_t up;
	assert_int_equal(tele_read_uptime(NULL, &up), 0);
	assert_true(up > 0 && up < 100ull * 365 * 86400);

	uint64_t fr, tot;
	assert_int_equal(tele_read_disk("/", &fr, &tot), 0);
	assert_true(tot > 0 && fr <= tot);
	assert_int_equal(tele_read_disk("/nonexistent/x", &fr, &tot), -ENOENT);

	int64_t mc;
	int r = tele_read_temp(NULL, &mc);
	assert_true(r == 0 || r == -ENOENT); /* containers often expose no zone */
	if (r == 0)
		assert_true(mc > -60000 && mc < 150000);

	struct tele_device_metrics d;
	memset(&d, 0, sizeof(d));
	d.reconnects = 7; /* owned by the agent: left alone */
	tele_collect_device(&s, NULL, NULL, 0, "/", &d);
	assert_true(d.has_rss && d.has_mem && d.has_disk && d.has_uptime);
	assert_int_equal(d.has_temp, r == 0);
	assert_true(d.n_cpus >= 1);
	assert_int_equal(d.reconnects, 7);
	pid_t pids[2] = {0, getpid()};
	struct tele_device_metrics d2;
	memset(&d2, 0, sizeof(d2));
	tele_collect_device(NULL, NULL, pids, 2, NULL, &d2);
	assert_false(d2.has_cpu);
	assert_false(d2.has_disk);
	assert_true(d2.rss_bytes >= 2 * 512 * 1024); /* summed */
}

static void put(const char *root, const char *rel, const char *text)
{
	char *p = fl_path_join(root, rel);
	char *slash = strrchr(p, '/');
	*slash = '\0';
	assert_int_equal(fl_mkdir_p(p, 0755), 0);
	*slash = '/';
	assert_int_equal(fl_test_write(p, text, strlen(text)), 0);
	free(p);
}

static void test_fake_tree(void **state)
{
	(void)state;
	char *root = fl_test_mkdtemp("collect");
	struct tele_cpu_sampler s = {0};
	double pct;
	uint64_t u, v;
	int64_t mc;

	/* nothing there: every source absent, no crash, flags false */
	assert_int_equal(tele_cpu_sample(&s, root, &pct), -ENOENT);
	assert_int_equal(tele_read_rss(root, 0, &u), -ENOENT);
	assert_int_equal(tele_read_meminfo(root, &u, &v), -ENOENT);
	assert_int_equal(tele_read_temp(root, &mc), -ENOENT);
	assert_int_equal(tele_read_uptime(root, &u), -ENOENT);
	struct tele_device_metrics d;
	memset(&d, 0xff, sizeof(d));
	tele_collect_device(&s, root, NULL, 0, NULL, &d);
	assert_false(d.has_cpu || d.has_rss || d.has_mem || d.has_temp || d.has_disk ||
		     d.has_uptime);

	/* values from the fake tree */
	put(root, "proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n");
	assert_int_equal(tele_cpu_sample(&s, root, &pct), -EAGAIN);
	put(root, "proc/stat", "cpu  150 0 150 900 0 0 0 0 0 0\n");
	assert_int_equal(tele_cpu_sample(&s, root, &pct), 0);
	assert_true(fabs(pct - 50.0) < 1e-9); /* 100 busy of 200 */
	put(root, "proc/self/status", "Name:\tx\nVmPeak:\t 9 kB\nVmRSS:\t    2048 kB\n");
	assert_int_equal(tele_read_rss(root, 0, &u), 0);
	assert_int_equal(u, 2048 * 1024);
	put(root, "proc/meminfo", "MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 600 kB\n");
	assert_int_equal(tele_read_meminfo(root, &u, &v), 0);
	assert_int_equal(u, 1000 * 1024);
	assert_int_equal(v, 600 * 1024);
	put(root, "sys/class/thermal/thermal_zone0/temp", "41000\n");
	put(root, "sys/class/thermal/thermal_zone1/temp", "67500\n");
	put(root, "sys/class/thermal/thermal_zone2/temp", "garbage\n"); /* skipped */
	put(root, "sys/class/thermal/cooling_device0/cur_state", "0\n");
	assert_int_equal(tele_read_temp(root, &mc), 0);
	assert_int_equal(mc, 67500);
	put(root, "proc/uptime", "12345.67 99999.00\n");
	assert_int_equal(tele_read_uptime(root, &u), 0);
	assert_int_equal(u, 12345);

	/* malformed files: a clear error, not a wild value */
	put(root, "proc/stat", "intr 1 2 3\n");
	assert_int_equal(tele_cpu_sample(&s, root, &pct), -FL_EFORMAT);
	put(root, "proc/uptime", "soon\n");
	assert_int_equal(tele_read_uptime(root, &u), -FL_EFORMAT);
	put(root, "proc/meminfo", "MemTotal: lots\n");
	assert_int_equal(tele_read_meminfo(root, &u, &v), -FL_EFORMAT);
	/* an oversized file is refused (bounded read) */
	char *big = malloc(100 * 1024);
	memset(big, '1', 100 * 1024 - 1);
	big[100 * 1024 - 1] = '\0';
	put(root, "proc/uptime", big);
	free(big);
	assert_int_equal(tele_read_uptime(root, &u), -FL_ETOOBIG);

	fl_rm_rf(root);
	free(root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_this_machine),
		cmocka_unit_test(test_fake_tree),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
