#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/tele_metrics.h>
#include <flotilla/tele_outbox.h>
#include <flotilla/tele_wire.h>

struct fx {
	char *dir;
	char *db;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->dir = fl_test_mkdtemp("outbox");
	f->db = fl_path_join(f->dir, "state.db");
	*state = f;
	unsetenv("FLOTILLA_FAILPOINTS");
	fl_failpoint_reload();
	return f->dir ? 0 : -1;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	fl_rm_rf(f->dir);
	free(f->dir);
	free(f->db);
	free(f);
	return 0;
}

static struct tele_outbox *open_ob(const char *db, uint64_t max_bytes, uint64_t max_records)
{
	struct tele_outbox_opts o = {.device_id = "dev-1",
				     .max_bytes = max_bytes,
				     .max_records = max_records};
	struct tele_outbox *ob = NULL;
	assert_int_equal(tele_outbox_open(db, &o, &ob), 0);
	return ob;
}

static cJSON *event_body(int i)
{
	char text[32];
	snprintf(text, sizeof(text), "event %d", i);
	struct tele_event ev = {.kind = TELE_EV_INSTALL_STARTED,
				.model = "m",
				.version = "1.0",
				.reason = "deploy",
				.text = text};
	cJSON *b = NULL;
	assert_int_equal(tele_record_event(&ev, 1700000000 + i, &b), 0);
	return b;
}

static cJSON *metric_body(int i)
{
	struct tele_model_metrics m;
	memset(&m, 0, sizeof(m));
	strcpy(m.model, "m");
	strcpy(m.version, "1.0");
	m.period_s = 60;
	m.requests = (uint64_t)i;
	for (int k = 0; k < 20; k++)
		tele_hist_add(&m.latency_us, 1000.0 * (k + i));
	cJSON *b = NULL;
	assert_int_equal(tele_record_model(&m, 1700000000 + i, &b), 0);
	return b;
}

static uint64_t push_event(struct tele_outbox *ob, int i)
{
	cJSON *b = event_body(i);
	uint64_t seq = 0;
	assert_int_equal(tele_outbox_push_event(ob, b, &seq), 0);
	cJSON_Delete(b);
	return seq;
}

static int push_metric(struct tele_outbox *ob, int i, uint64_t *seq)
{
	cJSON *b = metric_body(i);
	const cJSON *bs[1] = {b};
	int r = tele_outbox_push_metrics(ob, bs, 1, seq);
	cJSON_Delete(b);
	return r;
}

/* Take one batch, decode it as the controller would; returns n or 0. */
static size_t take_decode(struct tele_outbox *ob, enum tele_stream st, struct tele_rx_batch **rx,
			  struct tele_batch **ret_b)
{
	struct tele_batch *b = NULL;
	int r = tele_outbox_take(ob, st, TELE_WIRE_MAX_PAYLOAD, &b);
	assert_true(r >= 0);
	if (r == 0)
		return 0;
	char err[128];
	int d = tele_wire_decode(b->data, b->len, NULL, rx, err, sizeof(err));
	if (d < 0)
		fail_msg("decode: %s (%s)", fl_strerror(d), err);
	assert_int_equal((*rx)->n, b->n_seqs);
	for (size_t i = 0; i < b->n_seqs; i++)
		assert_int_equal((*rx)->recs[i].seq, b->seqs[i]);
	*ret_b = b;
	return b->n_seqs;
}

static void test_seq_survives_reopen(void **state)
{
	struct fx *f = *state;
	struct tele_outbox *ob = open_ob(f->db, 0, 0);
	char stream[17];
	strcpy(stream, tele_outbox_stream_id(ob));
	assert_int_equal(strlen(stream), 16);
	assert_int_equal(push_event(ob, 1), 1);
	assert_int_equal(push_event(ob, 2), 2);
	uint64_t s;
	assert_int_equal(push_metric(ob, 3, &s), 1);
	assert_int_equal(s, 3);
	/* ack everything, so the table is empty: the seq must still go on */
	uint64_t all[] = {1, 2, 3};
	assert_int_equal(tele_outbox_ack(ob, all, 3), 3);
	tele_outbox_close(ob);

	ob = open_ob(f->db, 0, 0);
	assert_string_equal(tele_outbox_stream_id(ob), stream);
	struct tele_outbox_stats st;
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 0);
	assert_int_equal(st.next_seq, 4);
	assert_int_equal(push_event(ob, 4), 4);
	tele_outbox_close(ob);
}

static void test_ack_deletes_only_acked(void **state)
{
	struct fx *f = *state;
	struct tele_outbox *ob = open_ob(f->db, 0, 0);
	for (int i = 1; i <= 5; i++)
		push_event(ob, i);
	struct tele_batch *b = NULL;
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_EVENTS, TELE_WIRE_MAX_PAYLOAD, &b), 1);
	assert_int_equal(b->n_seqs, 5);
	uint64_t acked[] = {1, 3, 3, 99}; /* duplicate and unknown seqs are ignored */
	assert_int_equal(tele_outbox_ack(ob, acked, 4), 2);
	tele_batch_free(b);
	struct tele_outbox_stats st;
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 3);
	assert_int_equal(st.events, 3);

	tele_outbox_rewind(ob);
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_EVENTS, TELE_WIRE_MAX_PAYLOAD, &b), 1);
	assert_int_equal(b->n_seqs, 3);
	assert_int_equal(b->seqs[0], 2);
	assert_int_equal(b->seqs[1], 4);
	assert_int_equal(b->seqs[2], 5);
	tele_batch_free(b);
	/* the metrics stream has nothing */
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_METRICS, TELE_WIRE_MAX_PAYLOAD, &b), 0);
	tele_outbox_close(ob);
}

static void test_unacked_offered_again(void **state)
{
	struct fx *f = *state;
	struct tele_outbox *ob = open_ob(f->db, 0, 0);
	push_event(ob, 1);
	assert_int_equal(push_metric(ob, 2, NULL), 1);
	push_event(ob, 3);
	struct tele_batch *b = NULL;
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_EVENTS, TELE_WIRE_MAX_PAYLOAD, &b), 1);
	assert_int_equal(b->n_seqs, 2);
	assert_int_equal(b->seqs[0], 1);
	assert_int_equal(b->seqs[1], 3);
	tele_batch_free(b);
	/* in flight: not offered twice */
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_EVENTS, TELE_WIRE_MAX_PAYLOAD, &b), 0);
	push_event(ob, 4);
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_EVENTS, TELE_WIRE_MAX_PAYLOAD, &b), 1);
	assert_int_equal(b->n_seqs, 1);
	assert_int_equal(b->seqs[0], 4);
	tele_batch_free(b);
	/* reconnect: everything unacked again */
	tele_outbox_rewind(ob);
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_EVENTS, TELE_WIRE_MAX_PAYLOAD, &b), 1);
	assert_int_equal(b->n_seqs, 3);
	tele_batch_free(b);
	/* restart: likewise */
	tele_outbox_close(ob);
	ob = open_ob(f->db, 0, 0);
	struct tele_rx_batch *rx = NULL;
	assert_int_equal(take_decode(ob, TELE_STREAM_EVENTS, &rx, &b), 3);
	assert_int_equal(rx->recs[0].type, TELE_REC_EVENT);
	assert_int_equal(rx->recs[0].event_kind, TELE_EV_INSTALL_STARTED);
	assert_string_equal(rx->recs[0].model, "m");
	assert_string_equal(rx->recs[0].reason, "deploy");
	assert_string_equal(rx->device, "dev-1");
	assert_string_equal(rx->stream, tele_outbox_stream_id(ob));
	assert_int_equal(tele_outbox_ack(ob, b->seqs, b->n_seqs), 3);
	tele_rx_batch_free(rx);
	tele_batch_free(b);
	assert_int_equal(take_decode(ob, TELE_STREAM_METRICS, &rx, &b), 1);
	assert_int_equal(rx->recs[0].seq, 2);
	assert_int_equal(rx->recs[0].type, TELE_REC_MODEL);
	tele_rx_batch_free(rx);
	tele_batch_free(b);
	tele_outbox_close(ob);
}

static void test_full_drops_oldest_metrics_keeps_events(void **state)
{
	struct fx *f = *state;
	/* room for about 8 metric records */
	cJSON *probe = metric_body(0);
	char *txt = cJSON_PrintUnformatted(probe);
	size_t mlen = strlen(txt) + 12;
	free(txt);
	cJSON_Delete(probe);
	struct tele_outbox *ob = open_ob(f->db, 8 * mlen, 0);
	uint64_t event_seqs[10];
	int ne = 0;
	for (int i = 0; i < 30; i++) {
		if (i % 3 == 0)
			event_seqs[ne++] = push_event(ob, i);
		else
			assert_int_equal(push_metric(ob, i, NULL), 1);
	}
	struct tele_outbox_stats st;
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.events, 10);
	assert_true(st.dropped_records > 0);
	assert_true(st.bytes <= 2 * 8 * mlen);
	uint64_t dropped_before = st.dropped_records;

	/* every event is still there */
	struct tele_rx_batch *rx = NULL;
	struct tele_batch *b = NULL;
	assert_int_equal(take_decode(ob, TELE_STREAM_EVENTS, &rx, &b), 10);
	for (int i = 0; i < 10; i++)
		assert_int_equal(rx->recs[i].seq, event_seqs[i]);
	struct tele_gaps *g = NULL;
	assert_int_equal(tele_gaps_new(1, 1024, &g), 0);
	assert_int_equal(tele_gaps_note_batch(g, rx), 0);
	tele_rx_batch_free(rx);
	tele_batch_free(b);

	/* the metrics stream reports the drop, and what survived is the newest */
	assert_true(take_decode(ob, TELE_STREAM_METRICS, &rx, &b) > 0);
	size_t n_dropped_recs = 0;
	uint64_t last_metric = 0;
	for (size_t i = 0; i < rx->n; i++) {
		const struct tele_rx_record *x = &rx->recs[i];
		if (x->type == TELE_REC_DROPPED) {
			n_dropped_recs++;
			assert_int_equal(x->dropped_count, dropped_before);
			assert_int_equal(x->n_ranges, 1);
			assert_int_equal(x->ranges[0][0], 2); /* the first metric */
		} else {
			assert_int_equal(x->type, TELE_REC_MODEL);
			last_metric = x->seq;
		}
	}
	assert_int_equal(n_dropped_recs, 1);
	tele_outbox_stats(ob, &st);
	assert_int_equal(last_metric, st.next_seq - 1);
	assert_int_equal(tele_gaps_note_batch(g, rx), 0);
	/* with the drop report, the controller sees no unexplained gap */
	uint64_t miss[4][2];
	assert_int_equal(tele_gaps_missing(g, miss, 4), 0);
	assert_int_equal(tele_gaps_dropped_total(g), dropped_before);
	assert_int_equal(tele_gaps_highest(g), st.next_seq - 1);
	tele_gaps_free(g);
	tele_rx_batch_free(rx);

	/* a drop after the report was handed out makes a new report */
	for (int i = 0; i < 10; i++)
		assert_int_equal(push_metric(ob, 100 + i, NULL), 1);
	tele_outbox_stats(ob, &st);
	assert_true(st.dropped_records > dropped_before);
	struct tele_batch *b2 = NULL;
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_METRICS, TELE_WIRE_MAX_PAYLOAD, &b2), 1);
	assert_int_equal(tele_wire_decode(b2->data, b2->len, NULL, &rx, NULL, 0), 0);
	assert_int_equal(rx->recs[0].type, TELE_REC_DROPPED);
	assert_int_equal(rx->recs[0].dropped_count, st.dropped_records - dropped_before);
	uint64_t second_report = rx->recs[0].seq;
	tele_rx_batch_free(rx);
	tele_batch_free(b2);
	tele_batch_free(b);

	/* crash without acks: after a restart, reports that may have been seen
	 * are never changed under their seq; new drops make a new report */
	tele_outbox_close(ob);
	ob = open_ob(f->db, 8 * mlen, 0);
	for (int i = 0; i < 5; i++)
		assert_int_equal(push_metric(ob, 200 + i, NULL), 1);
	struct tele_outbox_stats st2;
	tele_outbox_stats(ob, &st2);
	assert_true(st2.dropped_records > st.dropped_records);
	assert_true(take_decode(ob, TELE_STREAM_METRICS, &rx, &b) > 0);
	uint64_t sum = 0;
	int reports = 0;
	for (size_t i = 0; i < rx->n; i++) {
		const struct tele_rx_record *x = &rx->recs[i];
		if (x->type != TELE_REC_DROPPED)
			continue;
		reports++;
		sum += x->dropped_count;
		if (reports == 1)
			assert_int_equal(x->dropped_count, dropped_before);
		if (reports == 2) {
			assert_int_equal(x->seq, second_report);
			assert_int_equal(x->dropped_count, st.dropped_records - dropped_before);
		}
	}
	assert_int_equal(reports, 3);
	assert_int_equal(sum, st2.dropped_records); /* disjoint reports add up */
	tele_rx_batch_free(rx);
	tele_batch_free(b);
	tele_outbox_close(ob);
}

static void test_events_hard_limit(void **state)
{
	struct fx *f = *state;
	struct tele_outbox *ob = open_ob(f->db, 0, 4); /* 4 records, hard limit 8 */
	for (int i = 0; i < 8; i++)
		push_event(ob, i);
	cJSON *b = event_body(9);
	assert_int_equal(tele_outbox_push_event(ob, b, NULL), -FL_ENOSPACE);
	/* a metric that cannot fit is dropped and reported, events untouched */
	assert_int_equal(push_metric(ob, 10, NULL), 0);
	struct tele_outbox_stats st;
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.events, 8);
	assert_int_equal(st.dropped_records, 1);
	/* a drop whose transaction fails changes nothing, not even the counter */
	setenv("FLOTILLA_FAILPOINTS", "tele.outbox.drop.before_commit=fail", 1);
	fl_failpoint_reload();
	assert_int_equal(push_metric(ob, 11, NULL), -FL_EFAILPOINT);
	unsetenv("FLOTILLA_FAILPOINTS");
	fl_failpoint_reload();
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.dropped_records, 1);
	assert_int_equal(st.records, 9); /* 8 events + 1 drop report */
	assert_int_equal(st.next_seq, 11);
	/* after acks there is room again */
	uint64_t seqs[] = {1, 2};
	assert_int_equal(tele_outbox_ack(ob, seqs, 2), 2);
	uint64_t seq;
	assert_int_equal(tele_outbox_push_event(ob, b, &seq), 0);
	/* 9: dropped metric, 10: drop report; the refused event's seq was never
	 * committed, so the metric could take it */
	assert_int_equal(seq, 11);
	cJSON_Delete(b);
	tele_outbox_close(ob);
}

static void test_bad_input_changes_nothing(void **state)
{
	struct fx *f = *state;
	struct tele_outbox *ob = open_ob(f->db, 0, 0);
	push_event(ob, 1);
	cJSON *arr = cJSON_CreateArray();
	assert_int_equal(tele_outbox_push_event(ob, arr, NULL), -EINVAL);
	cJSON *ev = event_body(2);
	cJSON_AddNumberToObject(ev, "seq", 5);
	assert_int_equal(tele_outbox_push_event(ob, ev, NULL), -EINVAL);
	cJSON_Delete(ev);
	ev = event_body(3);
	const cJSON *bs[1] = {ev};
	assert_int_equal(tele_outbox_push_metrics(ob, bs, 1, NULL), -EINVAL); /* not a metric */
	cJSON *m = metric_body(4);
	assert_int_equal(tele_outbox_push_event(ob, m, NULL), -EINVAL); /* not an event */
	cJSON_AddStringToObject(m, "extra", "x");
	bs[0] = m;
	assert_int_equal(tele_outbox_push_metrics(ob, bs, 1, NULL), -FL_ESCHEMA);
	cJSON *big = event_body(5);
	cJSON *d = cJSON_AddObjectToObject(big, "details");
	char *pad = malloc(TELE_RECORD_MAX_BYTES);
	memset(pad, 'x', TELE_RECORD_MAX_BYTES - 1);
	pad[TELE_RECORD_MAX_BYTES - 1] = '\0';
	cJSON_AddStringToObject(d, "pad", pad);
	free(pad);
	assert_int_equal(tele_outbox_push_event(ob, big, NULL), -FL_ETOOBIG);
	assert_int_equal(tele_outbox_push_metrics(ob, bs, 0, NULL), -EINVAL);
	struct tele_batch *b = NULL;
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_EVENTS, 100, &b), -EINVAL);
	assert_int_equal(tele_outbox_take(ob, 7, TELE_WIRE_MAX_PAYLOAD, &b), -EINVAL);
	struct tele_outbox_stats st;
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 1);
	assert_int_equal(st.next_seq, 2);
	cJSON_Delete(arr);
	cJSON_Delete(ev);
	cJSON_Delete(m);
	cJSON_Delete(big);
	tele_outbox_close(ob);

	struct tele_outbox_opts o = {.device_id = "bad/id"};
	assert_int_equal(tele_outbox_open(f->db, &o, &ob), -EINVAL);
}

/* Run FN in a child with FLOTILLA_FAILPOINTS=SPEC; returns its exit status. */
static int crash_child(const char *db, const char *spec, int what)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		setenv("FLOTILLA_FAILPOINTS", spec, 1);
		fl_failpoint_reload();
		struct tele_outbox_opts o = {.device_id = "dev-1"};
		struct tele_outbox *ob = NULL;
		if (tele_outbox_open(db, &o, &ob) < 0)
			_exit(1);
		if (what == 0) {
			for (int i = 0; i < 5; i++) {
				cJSON *b = event_body(i);
				tele_outbox_push_event(ob, b, NULL);
			}
		} else if (what == 1) {
			for (int i = 0; i < 5; i++) {
				cJSON *m[3] = {metric_body(i), metric_body(i), metric_body(i)};
				tele_outbox_push_metrics(ob, (const cJSON *const *)m, 3, NULL);
			}
		} else {
			uint64_t seqs[] = {1, 2, 3};
			tele_outbox_ack(ob, seqs, 3);
		}
		_exit(0);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static void test_crash_mid_transaction(void **state)
{
	struct fx *f = *state;
	struct tele_outbox *ob = open_ob(f->db, 0, 0);
	push_event(ob, 0); /* seq 1 */
	tele_outbox_close(ob);
	struct tele_outbox_stats st;

	/* die before the 2nd event commits: the 1st of this run (seq 2) is kept */
	assert_int_equal(crash_child(f->db, "tele.outbox.push.before_commit=2*exit", 0),
			 FL_FAILPOINT_EXIT_CODE);
	ob = open_ob(f->db, 0, 0);
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 2);
	assert_int_equal(st.next_seq, 3);
	tele_outbox_close(ob);

	/* die right after the commit of the 1st: it is kept, its seq is not reused */
	assert_int_equal(crash_child(f->db, "tele.outbox.push.after_commit=exit", 0),
			 FL_FAILPOINT_EXIT_CODE);
	ob = open_ob(f->db, 0, 0);
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 3);
	assert_int_equal(st.next_seq, 4);
	assert_int_equal(push_event(ob, 9), 4);
	tele_outbox_close(ob);

	/* a metric batch dies before commit: none of its 3 records appear */
	assert_int_equal(crash_child(f->db, "tele.outbox.push.before_commit=exit", 1),
			 FL_FAILPOINT_EXIT_CODE);
	ob = open_ob(f->db, 0, 0);
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 4);
	assert_int_equal(st.next_seq, 5);
	uint64_t s;
	assert_int_equal(push_metric(ob, 1, &s), 1);
	assert_int_equal(s, 5);
	tele_outbox_close(ob);
}

static void test_crash_kill_after_commit(void **state)
{
	struct fx *f = *state;
	/* SIGKILL after the 2nd metric batch committed: 6 metrics, seqs 1..6 */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		setenv("FLOTILLA_FAILPOINTS", "tele.outbox.push.after_commit=2*kill", 1);
		fl_failpoint_reload();
		struct tele_outbox_opts o = {.device_id = "dev-1"};
		struct tele_outbox *ob = NULL;
		if (tele_outbox_open(f->db, &o, &ob) < 0)
			_exit(1);
		for (int i = 0; i < 5; i++) {
			cJSON *m[3] = {metric_body(i), metric_body(i), metric_body(i)};
			tele_outbox_push_metrics(ob, (const cJSON *const *)m, 3, NULL);
		}
		_exit(0);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGKILL);
	struct tele_outbox *ob = open_ob(f->db, 0, 0);
	struct tele_outbox_stats st;
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 6);
	assert_int_equal(st.next_seq, 7);
	uint64_t s;
	assert_int_equal(push_metric(ob, 1, &s), 1);
	assert_int_equal(s, 7);
	tele_outbox_close(ob);
}

static void test_crash_during_ack_and_fail_action(void **state)
{
	struct fx *f = *state;
	struct tele_outbox *ob = open_ob(f->db, 0, 0);
	for (int i = 0; i < 4; i++)
		push_event(ob, i);
	tele_outbox_close(ob);
	assert_int_equal(crash_child(f->db, "tele.outbox.ack.before_commit=exit", 2),
			 FL_FAILPOINT_EXIT_CODE);
	ob = open_ob(f->db, 0, 0);
	struct tele_outbox_stats st;
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 4); /* nothing acked */

	/* 'fail': the call fails cleanly and changes nothing */
	setenv("FLOTILLA_FAILPOINTS", "tele.outbox.push.before_commit=fail", 1);
	fl_failpoint_reload();
	cJSON *b = event_body(5);
	assert_int_equal(tele_outbox_push_event(ob, b, NULL), -FL_EFAILPOINT);
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 4);
	assert_int_equal(st.next_seq, 5);
	setenv("FLOTILLA_FAILPOINTS", "tele.outbox.ack.before_commit=fail", 1);
	fl_failpoint_reload();
	uint64_t seqs[] = {1};
	assert_int_equal(tele_outbox_ack(ob, seqs, 1), -FL_EFAILPOINT);
	unsetenv("FLOTILLA_FAILPOINTS");
	fl_failpoint_reload();
	assert_int_equal(tele_outbox_ack(ob, seqs, 1), 1);
	uint64_t seq;
	assert_int_equal(tele_outbox_push_event(ob, b, &seq), 0);
	assert_int_equal(seq, 5);
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 4);
	cJSON_Delete(b);
	tele_outbox_close(ob);
}

static void test_batches_fit_and_compress(void **state)
{
	struct fx *f = *state;
	struct tele_outbox *ob = open_ob(f->db, 64u << 20, 0);
	enum { N = 4000 };
	cJSON *m[100];
	for (int k = 0; k < N / 100; k++) {
		for (int i = 0; i < 100; i++)
			m[i] = metric_body(k * 100 + i);
		assert_int_equal(tele_outbox_push_metrics(ob, (const cJSON *const *)m, 100, NULL),
				 100);
		for (int i = 0; i < 100; i++)
			cJSON_Delete(m[i]);
	}
	size_t got = 0, batches = 0;
	uint64_t next = 1;
	struct tele_batch *b;
	while (tele_outbox_take(ob, TELE_STREAM_METRICS, TELE_BATCH_MIN_BYTES, &b) == 1) {
		assert_true(b->len <= TELE_BATCH_MIN_BYTES);
		assert_true(b->compressed);
		assert_true(b->len < b->raw_len);
		struct tele_rx_batch *rx = NULL;
		assert_int_equal(tele_wire_decode(b->data, b->len, NULL, &rx, NULL, 0), 0);
		assert_true(rx->was_compressed);
		for (size_t i = 0; i < rx->n; i++)
			assert_int_equal(rx->recs[i].seq, next++);
		got += rx->n;
		batches++;
		assert_int_equal(tele_outbox_ack(ob, b->seqs, b->n_seqs), (int)b->n_seqs);
		tele_rx_batch_free(rx);
		tele_batch_free(b);
	}
	assert_int_equal(got, N);
	assert_true(batches >= 2);
	struct tele_outbox_stats st;
	tele_outbox_stats(ob, &st);
	assert_int_equal(st.records, 0);
	assert_int_equal(st.bytes, 0);

	/* a small batch goes as plain JSON */
	push_event(ob, 1);
	assert_int_equal(tele_outbox_take(ob, TELE_STREAM_EVENTS, TELE_WIRE_MAX_PAYLOAD, &b), 1);
	assert_false(b->compressed);
	assert_int_equal(b->data[0], '{');
	tele_batch_free(b);
	tele_outbox_close(ob);
}

static void test_baseline(void **state)
{
	struct fx *f = *state;
	struct tele_outbox *ob = open_ob(f->db, 0, 0);
	struct tele_quality q;
	tele_quality_reset(&q);
	for (int i = 0; i < 50; i++)
		tele_quality_observe_output(&q, "hello world", 11, 10 + (uint64_t)i);
	cJSON *j = tele_quality_to_json(&q);
	cJSON *got = NULL;
	assert_int_equal(tele_outbox_get_baseline(ob, "m", "1.0", &got), -ENOENT);
	assert_int_equal(tele_outbox_put_baseline(ob, "m", "1.0", j), 0);
	assert_int_equal(tele_outbox_get_baseline(ob, "m", "1.0", &got), 0);
	struct tele_quality q2;
	assert_int_equal(tele_quality_from_json(got, &q2), 0);
	assert_int_equal(q2.outputs, 50);
	assert_int_equal(q2.out_len.count, 50);
	assert_memory_equal(q2.out_len.counts, q.out_len.counts, sizeof(q.out_len.counts));
	cJSON_Delete(got);
	cJSON *bad = cJSON_CreateObject();
	assert_int_equal(tele_outbox_put_baseline(ob, "m", "1.0", bad), -FL_ESCHEMA);
	assert_int_equal(tele_outbox_put_baseline(ob, "../m", "1.0", j), -EINVAL);
	cJSON_Delete(bad);
	cJSON_Delete(j);
	tele_outbox_close(ob);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_seq_survives_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ack_deletes_only_acked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unacked_offered_again, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_drops_oldest_metrics_keeps_events, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_events_hard_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_input_changes_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_mid_transaction, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_kill_after_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_during_ack_and_fail_action, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_batches_fit_and_compress, setup, teardown),
		cmocka_unit_test_setup_teardown(test_baseline, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
