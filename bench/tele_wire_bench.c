/* Helper for bench/telemetry.sh (not a test): bytes a device sends per hour
 * at a reporting INTERVAL_S (default 60) for one model, built with the
 * telemetry library itself: each interval one model record (latency
 * histogram, quality signals) + one device record pushed to an outbox, then
 * taken as one batch (what the agent publishes per interval). Also the same
 * hour taken as one batch.
 *
 *   tele_wire_bench DIR [INTERVAL_S]
 *
 * Prints "interval_s S intervals N batch_bytes_first B raw_json_first J
 * bytes_per_hour H hourly_batch_bytes K". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/tele_metrics.h>
#include <flotilla/tele_outbox.h>

static int push_interval(struct tele_outbox *ob, unsigned i, unsigned period, int64_t t)
{
	static struct tele_model_metrics m;
	struct tele_device_metrics d;
	cJSON *b[2] = {NULL, NULL};
	int r;

	memset(&m, 0, sizeof(m));
	snprintf(m.model, sizeof(m.model), "llama-3b-chat");
	snprintf(m.version, sizeof(m.version), "2026.11.1");
	m.period_s = period;
	m.requests = 40 + i % 7;
	m.errors[0] = i % 3 == 0;
	tele_hist_reset(&m.latency_us);
	for (unsigned k = 0; k < m.requests; k++)
		tele_hist_add(&m.latency_us, 150000.0 + (double)((k * 7919u + i * 104729u) % 900000u));
	m.tokens_out = m.requests * 96;
	m.gen_time_us = m.tokens_out * 45000;
	m.queue_depth = i % 2;
	m.queue_depth_max = 3;
	m.has_quality = true;
	tele_quality_reset(&m.quality);
	for (unsigned k = 0; k < m.requests; k++) {
		char txt[64];
		snprintf(txt, sizeof(txt), "Sure, here is answer %u.", k);
		tele_quality_observe_output(&m.quality, txt, strlen(txt), 20 + (k * 37u + i) % 200);
	}
	memset(&d, 0, sizeof(d));
	d.has_cpu = true, d.cpu_pct = 12.5 + i % 10, d.n_cpus = 4;
	d.has_rss = true, d.rss_bytes = 812345678ull + i * 4096;
	d.has_mem = true, d.mem_total_bytes = 4ull << 30, d.mem_avail_bytes = (2ull << 30) - i * 65536;
	d.has_temp = true, d.temp_mc = 51000 + (int64_t)(i % 5) * 250;
	d.has_disk = true, d.disk_free_bytes = 20ull << 30, d.disk_total_bytes = 32ull << 30;
	d.has_uptime = true, d.uptime_s = 86400 + (uint64_t)i * period;
	d.reconnects = 1, d.tx_bytes = 100000 + i * 700ull, d.rx_bytes = 50000 + i * 300ull;
	r = tele_record_model(&m, t, &b[0]);
	if (r >= 0)
		r = tele_record_device(&d, t, &b[1]);
	if (r >= 0) {
		r = tele_outbox_push_metrics(ob, (const cJSON *const *)b, 2, NULL);
		if (r >= 0 && r != 2)
			r = -1;
	}
	cJSON_Delete(b[0]);
	cJSON_Delete(b[1]);
	return r < 0 ? r : 0;
}

static int take_all(struct tele_outbox *ob, size_t *bytes, size_t *raw)
{
	struct tele_batch *bt;
	int r;
	while ((r = tele_outbox_take(ob, TELE_STREAM_METRICS, 256 * 1024, &bt)) == 1) {
		*bytes += bt->len;
		*raw += bt->raw_len;
		r = tele_outbox_ack(ob, bt->seqs, bt->n_seqs);
		tele_batch_free(bt);
		if (r < 0)
			return r;
	}
	return r;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: tele_wire_bench DIR [INTERVAL_S]\n");
		return 2;
	}
	unsigned period = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 60;
	if (period == 0 || period > 3600) {
		fprintf(stderr, "tele_wire_bench: INTERVAL_S must be 1..3600\n");
		return 2;
	}
	unsigned n = 3600 / period;
	char path[4096];
	snprintf(path, sizeof(path), "%s/tele.db", argv[1]);
	struct tele_outbox_opts o = {.device_id = "bench-dev"};
	struct tele_outbox *ob;
	int r = tele_outbox_open(path, &o, &ob);
	if (r < 0) {
		fprintf(stderr, "tele_wire_bench: outbox: %d\n", r);
		return 1;
	}
	int64_t t0 = 1795000000;
	size_t per = 0, raw = 0, first = 0, first_raw = 0, hourly = 0, hraw = 0;
	for (unsigned i = 0; i < n && r >= 0; i++) {
		r = push_interval(ob, i, period, t0 + (int64_t)i * period);
		size_t b = 0, j = 0;
		if (r >= 0)
			r = take_all(ob, &b, &j);
		if (i == 0)
			first = b, first_raw = j;
		per += b, raw += j;
	}
	for (unsigned i = 0; i < n && r >= 0; i++)
		r = push_interval(ob, i, period, t0 + 3600 + (int64_t)i * period);
	if (r >= 0)
		r = take_all(ob, &hourly, &hraw);
	tele_outbox_close(ob);
	if (r < 0) {
		fprintf(stderr, "tele_wire_bench: failed: %d\n", r);
		return 1;
	}
	printf("interval_s %u intervals %u batch_bytes_first %zu raw_json_first %zu "
	       "bytes_per_hour %zu raw_json_per_hour %zu hourly_batch_bytes %zu\n",
	       period, n, first, first_raw, per, raw, hourly);
	return 0;
}
