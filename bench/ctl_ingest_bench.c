/* Controller telemetry ingestion throughput: decode + pending list + batched
 * SQLite (WAL) commits, as ctl_ingest_batch() does for MQTT messages.
 *
 *   ctl_ingest_bench [RECORDS [PER_BATCH [DEVICES]]]   (default 200000 100 10)
 *
 * Payloads are built before timing; half the records are events, half
 * per-device metrics. Prints records/s for a first pass and for a pass of
 * duplicates (redelivery). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/util.h>

#include "ctl.h"

static char *make_batch(const char *dev, uint64_t first, size_t n)
{
	size_t cap = 256 + n * 320;
	char *s = malloc(cap);
	if (!s)
		return NULL;
	size_t o = (size_t)snprintf(s, cap,
				    "{\"v\":1,\"device\":\"%s\",\"stream\":\"0123456789abcdef\","
				    "\"first\":%llu,\"last\":%llu,\"n\":%zu,\"records\":[",
				    dev, (unsigned long long)first, (unsigned long long)(first + n - 1), n);
	for (size_t i = 0; i < n; i++) {
		uint64_t q = first + i;
		if (q % 2)
			o += (size_t)snprintf(s + o, cap - o,
					      "%s{\"seq\":%llu,\"type\":\"event\",\"t\":1764001440,"
					      "\"kind\":\"trial_failed\",\"model\":\"m\",\"version\":\"2\","
					      "\"reason\":\"error_rate\",\"text\":\"error rate 12%% over 5%%\"}",
					      i ? "," : "", (unsigned long long)q);
		else
			o += (size_t)snprintf(s + o, cap - o,
					      "%s{\"seq\":%llu,\"type\":\"device\",\"t\":1764001440,"
					      "\"cpu_pct\":12.5,\"n_cpus\":4,\"rss_bytes\":123456789,"
					      "\"mem_total_bytes\":4000000000,\"temp_mc\":51000,"
					      "\"uptime_s\":3600}",
					      i ? "," : "", (unsigned long long)q);
	}
	snprintf(s + o, cap - o, "]}");
	return s;
}

int main(int argc, char **argv)
{
	size_t total = argc > 1 ? strtoul(argv[1], NULL, 10) : 200000;
	size_t per = argc > 2 ? strtoul(argv[2], NULL, 10) : 100;
	size_t ndev = argc > 3 ? strtoul(argv[3], NULL, 10) : 10;
	if (!total || !per || !ndev || per > 10000) {
		fprintf(stderr, "usage: ctl_ingest_bench [RECORDS [PER_BATCH [DEVICES]]]\n");
		return 2;
	}
	size_t nb = (total + per - 1) / per;
	char **pl = calloc(nb, sizeof(char *));
	char (*devs)[16] = calloc(nb, 16);
	uint64_t *next = calloc(ndev, sizeof(uint64_t));
	if (!pl || !devs || !next)
		return 1;
	for (size_t i = 0; i < nb; i++) {
		size_t d = i % ndev;
		snprintf(devs[i], 16, "dev-%zu", d);
		pl[i] = make_batch(devs[i], next[d] + 1, per);
		next[d] += per;
		if (!pl[i])
			return 1;
	}
	char dir[] = "/tmp/ctl-bench.XXXXXX";
	const char *base = getenv("FL_BENCH_DIR");
	char *d = base ? fl_asprintf("%s/ctl-bench.XXXXXX", base) : strdup(dir);
	if (!d || !mkdtemp(d))
		return 1;
	struct ctl_opts o = {.data_dir = d};
	struct ctl *c = NULL;
	int r = ctl_open(&o, &c);
	if (r < 0) {
		fprintf(stderr, "ctl_open: %s\n", fl_strerror(r));
		return 1;
	}
	for (int pass = 0; pass < 2; pass++) {
		int64_t t0 = fl_mono_ns();
		for (size_t i = 0; i < nb; i++) {
			r = ctl_ingest_batch(c, devs[i], pl[i], strlen(pl[i]));
			if (r < 0) {
				fprintf(stderr, "ingest: %s\n", fl_strerror(r));
				return 1;
			}
		}
		if ((r = ctl_ingest_flush(c)) < 0) {
			fprintf(stderr, "flush: %s\n", fl_strerror(r));
			return 1;
		}
		double s = (double)(fl_mono_ns() - t0) / 1e9;
		struct ctl_counters k;
		ctl_get_counters(c, &k);
		printf("%s: %zu records in %zu batches of %zu, %zu devices: %.2f s, %.0f records/s "
		       "(inserted %llu, duplicates %llu, commits %llu)\n",
		       pass ? "redelivery" : "first pass", nb * per, nb, per, ndev, s,
		       (double)(nb * per) / s, (unsigned long long)k.tele_inserted,
		       (unsigned long long)k.tele_duplicates, (unsigned long long)k.tele_commits);
	}
	ctl_free(c);
	fl_rm_rf(d);
	free(d);
	for (size_t i = 0; i < nb; i++)
		free(pl[i]);
	free(pl);
	free(devs);
	free(next);
	return 0;
}
