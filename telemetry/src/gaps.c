/* Per-device gap tracker: a sorted set of covered (received or reported
 * dropped) seq ranges above a floor. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/error.h>
#include <flotilla/tele_wire.h>
#include <flotilla/util.h>

#define SEQ_MAX UINT64_C(9007199254740991) /* seqs travel as exact JSON numbers */

struct range {
	uint64_t a, b; /* inclusive */
};

struct tele_gaps {
	uint64_t floor;
	uint64_t highest; /* 0: nothing seen */
	uint64_t dropped_total;
	size_t n, max;
	struct range *r; /* ascending, disjoint, not adjacent */
	char stream[17];
};

int tele_gaps_new(uint64_t floor, size_t max_ranges, struct tele_gaps **ret)
{
	if (floor == 0 || max_ranges == 0 || max_ranges > (1u << 20))
		return -EINVAL;
	struct tele_gaps *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->r = calloc(max_ranges, sizeof(*g->r));
	if (!g->r) {
		free(g);
		return -ENOMEM;
	}
	g->floor = floor;
	g->max = max_ranges;
	*ret = g;
	return 0;
}

void tele_gaps_free(struct tele_gaps *g)
{
	if (!g)
		return;
	free(g->r);
	free(g);
}

static bool covered(const struct tele_gaps *g, uint64_t seq)
{
	if (seq < g->floor)
		return true;
	size_t lo = 0, hi = g->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (g->r[mid].b < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < g->n && g->r[lo].a <= seq;
}

static int cover(struct tele_gaps *g, uint64_t a, uint64_t b)
{
	if (a == 0 || a > b || b > SEQ_MAX)
		return -EINVAL;
	if (b < g->floor)
		return 0;
	if (a < g->floor)
		a = g->floor;
	/* [i, j) are the ranges that overlap or touch [a, b] */
	size_t i = 0;
	while (i < g->n && g->r[i].b + 1 < a)
		i++;
	size_t j = i;
	while (j < g->n && g->r[j].a <= b + 1)
		j++;
	size_t new_n = g->n - (j - i) + 1;
	if (new_n > g->max)
		return -FL_ETOOBIG;
	struct range m = {a, b};
	if (j > i) {
		if (g->r[i].a < m.a)
			m.a = g->r[i].a;
		if (g->r[j - 1].b > m.b)
			m.b = g->r[j - 1].b;
	}
	memmove(&g->r[i + 1], &g->r[j], (g->n - j) * sizeof(*g->r));
	g->r[i] = m;
	g->n = new_n;
	if (b > g->highest)
		g->highest = b;
	return 0;
}

int tele_gaps_received(struct tele_gaps *g, uint64_t first, uint64_t last)
{
	return cover(g, first, last);
}

int tele_gaps_dropped(struct tele_gaps *g, uint64_t first, uint64_t last)
{
	return cover(g, first, last);
}

void tele_gaps_settle_below(struct tele_gaps *g, uint64_t seq)
{
	if (seq <= g->floor)
		return;
	g->floor = seq;
	size_t k = 0;
	for (size_t i = 0; i < g->n; i++) {
		if (g->r[i].b < seq)
			continue;
		g->r[k] = g->r[i];
		if (g->r[k].a < seq)
			g->r[k].a = seq;
		k++;
	}
	g->n = k;
}

int tele_gaps_note_batch(struct tele_gaps *g, const struct tele_rx_batch *b)
{
	int r;
	if (g->stream[0] && strcmp(g->stream, b->stream)) {
		/* the device lost its outbox and started a new sequence */
		g->floor = 1;
		g->highest = 0;
		g->n = 0;
		g->dropped_total = 0;
	}
	fl_strlcpy(g->stream, b->stream, sizeof(g->stream));
	for (size_t i = 0; i < b->n; i++) {
		const struct tele_rx_record *x = &b->recs[i];
		if (x->type == TELE_REC_DROPPED && !covered(g, x->seq)) {
			for (size_t k = 0; k < x->n_ranges; k++)
				if ((r = cover(g, x->ranges[k][0], x->ranges[k][1])) < 0)
					return r;
			g->dropped_total += x->dropped_count;
		}
		/* contiguous runs in one step */
		size_t j = i;
		while (j + 1 < b->n && b->recs[j + 1].seq == b->recs[j].seq + 1 &&
		       b->recs[j + 1].type != TELE_REC_DROPPED)
			j++;
		if ((r = cover(g, x->seq, b->recs[j].seq)) < 0)
			return r;
		i = j;
	}
	return 0;
}

size_t tele_gaps_missing(const struct tele_gaps *g, uint64_t (*out)[2], size_t max)
{
	size_t n = 0;
	uint64_t next = g->floor; /* first seq not yet known to be covered */
	for (size_t i = 0; i <= g->n; i++) {
		uint64_t end = i < g->n ? g->r[i].a : g->highest + 1;
		if (end > next) {
			if (n < max) {
				out[n][0] = next;
				out[n][1] = end - 1;
			}
			n++;
		}
		if (i < g->n)
			next = g->r[i].b + 1;
	}
	return n;
}

uint64_t tele_gaps_highest(const struct tele_gaps *g)
{
	return g->highest;
}

uint64_t tele_gaps_dropped_total(const struct tele_gaps *g)
{
	return g->dropped_total;
}
