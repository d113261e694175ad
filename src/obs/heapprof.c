/* SPDX-License-Identifier: MIT */
/*
 * heapprof.c - the public side of the heap, allocs, block and mutex
 * profiles (<sluice/heapprof.h>): snapshots of the stack tables the
 * sampling core (util/alloc.c) and contention.c fill, deltas between two,
 * and their encodings through the profile builder (pprof, folded, SVG) or
 * Go's debug=1 text.
 *
 * A snapshot is a sorted copy of a stack table, so a delta finds each
 * stack of the later snapshot in the earlier one by binary search.  Heap
 * counters are kept unscaled (sampled events) and scaled only here, with
 * the rate in force when the snapshot was taken.
 *
 * Locking: none of its own; the tables' owners lock while copying.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/heapprof.h>

#include "obs/contention.h"
#include "obs/heapprof_int.h"
#include "obs/pb.h"
#include "obs/profile.h"
#include "obs/threads.h"
#include "util/alloc.h"

/* Keep the unwinder linked wherever a profile can be written: the
 * sampling core refers to it only weakly. */
__attribute__((used)) static size_t (*const keep_unwinder)(
	uintptr_t *, size_t, size_t) = sl_unwind_here;

struct sluice_profile_snapshot {
	enum sluice_profile_kind kind;
	int64_t time_ns;         /* CLOCK_REALTIME */
	long rate;               /* heap: bytes; block: ns; mutex: fraction */
	struct sl_stk_bucket *b; /* sorted by bucket_cmp */
	size_t n;
	uint64_t dropped_stacks, dropped_live, sampled;
};

static const struct sl_prof_type heap_types[] = {
	{ "alloc_objects", "count" },
	{ "alloc_space", "bytes" },
	{ "inuse_objects", "count" },
	{ "inuse_space", "bytes" },
};
static const struct sl_prof_type heap_period = { "space", "bytes" };
static const struct sl_prof_type cont_types[] = {
	{ "contentions", "count" },
	{ "delay", "nanoseconds" },
};
static const struct sl_prof_type cont_period = { "contentions", "count" };

static bool
is_heap(enum sluice_profile_kind k)
{
	return k == SLUICE_PROFILE_HEAP || k == SLUICE_PROFILE_ALLOCS;
}

int
sluice_heap_profile_set_rate(long bytes)
{
	if (bytes < 0)
		return SLUICE_EINVAL;
	sl_heap_set_rate(bytes);
	return 0;
}

long
sluice_heap_profile_rate(void)
{
	return sl_heap_rate();
}

/* ---- snapshots --------------------------------------------------------- */

static int
bucket_cmp(const void *a, const void *b)
{
	const struct sl_stk_bucket *x = a, *y = b;

	if (x->hash != y->hash)
		return x->hash < y->hash ? -1 : 1;
	if (x->depth != y->depth)
		return x->depth < y->depth ? -1 : 1;
	return memcmp(x->pcs, y->pcs, x->depth * sizeof(x->pcs[0]));
}

int
sluice_profile_snapshot(enum sluice_profile_kind kind,
			struct sluice_profile_snapshot **out)
{
	struct sluice_profile_snapshot *s;
	struct sl_heap_stats_int st;
	pthread_mutex_t *mu;
	struct sl_stktab *t;
	int rc;

	if (!out)
		return SLUICE_EINVAL;
	*out = NULL;
	if ((unsigned)kind > SLUICE_PROFILE_MUTEX)
		return SLUICE_EINVAL;
	s = sl_calloc(1, sizeof(*s));
	if (!s)
		return SLUICE_ENOMEM;
	s->kind = kind;
	s->time_ns = sl_clock_ns(CLOCK_REALTIME);
	if (is_heap(kind)) {
		s->rate = sl_heap_scale_rate();
		t = sl_heap_stacks(&mu);
		rc = sl_stktab_copy(t, mu, &s->b, &s->n);
		sl_heap_stats(&st);
		s->sampled = st.sampled;
		s->dropped_live = st.dropped_live;
		s->dropped_stacks = st.dropped_stacks;
	} else {
		s->rate = kind == SLUICE_PROFILE_BLOCK
				  ? (long)atomic_load(&sl_block_rate)
				  : atomic_load(&sl_mutex_fraction);
		rc = sl_contention_copy(kind == SLUICE_PROFILE_BLOCK
						? SL_CONT_BLOCK
						: SL_CONT_MUTEX,
					&s->b, &s->n, &s->dropped_stacks);
	}
	if (rc) {
		sl_free(s);
		return rc;
	}
	qsort(s->b, s->n, sizeof(*s->b), bucket_cmp);
	*out = s;
	return 0;
}

void
sluice_profile_snapshot_free(struct sluice_profile_snapshot *s)
{
	if (!s)
		return;
	sl_free(s->b);
	sl_free(s);
}

/* ---- values ------------------------------------------------------------ */

/* 1 - exp(-x) for x >= 0 without libm: exp(-r) by its Taylor series on
 * r = x - k ln 2 in [0, ln 2), then halved k times. */
static double
one_minus_exp_neg(double x)
{
	double r, term = 1.0, sum = 1.0;
	int k, i;

	if (x > 40.0)
		return 1.0;
	k = (int)(x / 0.6931471805599453);
	r = x - (double)k * 0.6931471805599453;
	for (i = 1; i < 20; i++) {
		term *= -r / (double)i;
		sum += term;
	}
	while (k-- > 0)
		sum *= 0.5;
	return 1.0 - sum;
}

/* Go's scaleHeapSample: @count sampled objects of @size bytes in all,
 * each kept with probability 1-exp(-avg/rate), back to estimated totals. */
static void
scale_heap(int64_t count, int64_t size, long rate, int64_t *oc, int64_t *os)
{
	double avg, scale;

	if (count == 0 || size == 0) {
		*oc = 0;
		*os = 0;
		return;
	}
	if (rate <= 1) {
		*oc = count;
		*os = size;
		return;
	}
	avg = (double)size / (double)count;
	scale = 1.0 / one_minus_exp_neg(avg / (double)rate);
	*oc = (int64_t)((double)count * scale);
	*os = (int64_t)((double)size * scale);
}

/* Raw counters of bucket @i of @s, minus @base's for the same stack. */
static void
raw_values(const struct sluice_profile_snapshot *s,
	   const struct sluice_profile_snapshot *base, size_t i,
	   int64_t v[SL_STK_VALUES])
{
	const struct sl_stk_bucket *old = NULL;
	int k;

	if (base)
		old = bsearch(&s->b[i], base->b, base->n, sizeof(*base->b),
			      bucket_cmp);
	for (k = 0; k < SL_STK_VALUES; k++)
		v[k] = s->b[i].v[k] - (old ? old->v[k] : 0);
}

static bool
all_zero(const int64_t *v, size_t n)
{
	size_t k;

	for (k = 0; k < n; k++)
		if (v[k])
			return false;
	return true;
}

/* The values of bucket @i as @s's sample types (scaled for the heap). */
static size_t
sample_values(const struct sluice_profile_snapshot *s,
	      const struct sluice_profile_snapshot *base, size_t i,
	      int64_t out[SL_PROF_MAX_VALUES])
{
	int64_t v[SL_STK_VALUES];

	raw_values(s, base, i, v);
	if (!is_heap(s->kind)) {
		out[0] = v[0];
		out[1] = v[1];
		return 2;
	}
	scale_heap(v[SL_HEAP_ALLOC_N], v[SL_HEAP_ALLOC_B], s->rate, &out[0],
		   &out[1]);
	scale_heap(v[SL_HEAP_ALLOC_N] - v[SL_HEAP_FREE_N],
		   v[SL_HEAP_ALLOC_B] - v[SL_HEAP_FREE_B], s->rate, &out[2],
		   &out[3]);
	return 4;
}

/* ---- encodings --------------------------------------------------------- */

static int
build(const struct sluice_profile_snapshot *s,
      const struct sluice_profile_snapshot *base, struct sl_prof **out)
{
	bool heap = is_heap(s->kind);
	struct sl_prof_label lab = { "bytes", NULL, 0, "bytes" };
	int64_t vals[SL_PROF_MAX_VALUES], raw[SL_STK_VALUES];
	struct sl_prof *p;
	char note[160];
	size_t i, nv;
	int rc = 0;

	if (heap)
		p = sl_prof_new(heap_types, 4,
				s->kind == SLUICE_PROFILE_HEAP ? "inuse_space"
							       : "alloc_space",
				&heap_period, s->rate);
	else
		p = sl_prof_new(cont_types, 2, NULL, &cont_period, 1);
	if (!p)
		return SLUICE_ENOMEM;
	sl_prof_set_time(p, s->time_ns, base ? s->time_ns - base->time_ns : 0);
	if (s->dropped_live || s->dropped_stacks) {
		snprintf(note, sizeof(note),
			 "sluice: %" PRIu64 " samples lost to a full stack "
			 "table, %" PRIu64 " blocks not watched (table full)",
			 s->dropped_stacks, s->dropped_live);
		rc = sl_prof_add_comment(p, note);
	}
	for (i = 0; rc == 0 && i < s->n; i++) {
		nv = sample_values(s, base, i, vals);
		if (all_zero(vals, nv))
			continue;
		/* Go labels each heap sample with its block size. */
		raw_values(s, base, i, raw);
		lab.num = raw[SL_HEAP_ALLOC_N]
				  ? raw[SL_HEAP_ALLOC_B] / raw[SL_HEAP_ALLOC_N]
				  : 0;
		rc = sl_prof_add(p, s->b[i].pcs, s->b[i].depth, vals, &lab,
				 heap && lab.num > 0 ? 1 : 0);
	}
	if (rc) {
		sl_prof_free(p);
		return rc;
	}
	*out = p;
	return 0;
}

static void
put_stack(struct sl_buf *b, const struct sl_stk_bucket *k)
{
	char sym[256];
	uint32_t i;

	sl_buf_puts(b, " @");
	for (i = 0; i < k->depth; i++)
		sl_buf_printf(b, " %#" PRIxPTR, k->pcs[i]);
	sl_buf_puts(b, "\n");
	for (i = 0; i < k->depth; i++) {
		(void)sl_sym_name(k->pcs[i], sym, sizeof(sym));
		sl_buf_printf(b, "#\t%#" PRIxPTR "\t%s\n", k->pcs[i], sym);
	}
	sl_buf_puts(b, "\n");
}

/* Go's debug=1 text, unscaled: the heap's legacy "heap profile:" form (the
 * rate written doubled, as Go does) or the "--- contention:" form. */
static void
write_text(const struct sluice_profile_snapshot *s,
	   const struct sluice_profile_snapshot *base, struct sl_buf *b)
{
	int64_t v[SL_STK_VALUES], tot[SL_STK_VALUES] = { 0 };
	size_t i;
	int k;

	if (!is_heap(s->kind)) {
		sl_buf_printf(b, "--- %s:\ncycles/second=1000000000\n",
			      s->kind == SLUICE_PROFILE_BLOCK ? "contention"
							      : "mutex");
		if (s->kind == SLUICE_PROFILE_MUTEX)
			sl_buf_printf(b, "sampling period=%ld\n", s->rate);
		for (i = 0; i < s->n; i++) {
			raw_values(s, base, i, v);
			if (all_zero(v, 2))
				continue;
			sl_buf_printf(b, "%" PRId64 " %" PRId64, v[1], v[0]);
			put_stack(b, &s->b[i]);
		}
		return;
	}
	for (i = 0; i < s->n; i++) {
		raw_values(s, base, i, v);
		for (k = 0; k < SL_STK_VALUES; k++)
			tot[k] += v[k];
	}
	sl_buf_printf(b,
		      "heap profile: %" PRId64 ": %" PRId64 " [%" PRId64
		      ": %" PRId64 "] @ heap/%ld\n",
		      tot[0] - tot[2], tot[1] - tot[3], tot[0], tot[1],
		      2 * s->rate);
	for (i = 0; i < s->n; i++) {
		raw_values(s, base, i, v);
		if (all_zero(v, SL_STK_VALUES))
			continue;
		sl_buf_printf(b,
			      "%" PRId64 ": %" PRId64 " [%" PRId64 ": %" PRId64
			      "]",
			      v[0] - v[2], v[1] - v[3], v[0], v[1]);
		put_stack(b, &s->b[i]);
	}
	sl_buf_printf(b,
		      "# sluice: %" PRIu64 " samples, %" PRIu64
		      " lost to a full stack table, %" PRIu64
		      " blocks not watched\n",
		      s->sampled, s->dropped_stacks, s->dropped_live);
}

static int
type_index(const struct sluice_profile_snapshot *s, const char *name,
	   size_t *idx)
{
	const struct sl_prof_type *t =
		is_heap(s->kind) ? heap_types : cont_types;
	size_t i, n = is_heap(s->kind) ? 4 : 2;

	if (!name) {
		/* inuse_space for heap; alloc_space, delay for the others */
		*idx = s->kind == SLUICE_PROFILE_HEAP ? 3 : 1;
		return 0;
	}
	for (i = 0; i < n; i++) {
		if (strcmp(t[i].type, name) == 0) {
			*idx = i;
			return 0;
		}
	}
	return SLUICE_EINVAL;
}

static const char *
title_of(enum sluice_profile_kind k)
{
	switch (k) {
	case SLUICE_PROFILE_HEAP:
		return "heap";
	case SLUICE_PROFILE_ALLOCS:
		return "allocs";
	case SLUICE_PROFILE_BLOCK:
		return "block";
	default:
		return "mutex";
	}
}

int
sluice_profile_encode(const struct sluice_profile_snapshot *s,
		      const struct sluice_profile_snapshot *base,
		      enum sluice_profile_format format,
		      const char *sample_index, char **data, size_t *len)
{
	struct sl_prof *p = NULL;
	struct sl_buf b;
	size_t idx = 0;
	int rc;

	if (!s || !data || !len)
		return SLUICE_EINVAL;
	if (base && is_heap(base->kind) != is_heap(s->kind))
		return SLUICE_EINVAL;
	if (base && !is_heap(s->kind) && base->kind != s->kind)
		return SLUICE_EINVAL;
	if (format != SLUICE_PROFILE_PPROF && format != SLUICE_PROFILE_FOLDED &&
	    format != SLUICE_PROFILE_SVG && format != SLUICE_PROFILE_TEXT)
		return SLUICE_EINVAL;
	rc = type_index(s, sample_index, &idx);
	if (rc)
		return rc;
	if (format == SLUICE_PROFILE_TEXT) {
		sl_buf_init(&b);
		write_text(s, base, &b);
		/* The NUL is promised to text users. */
		rc = sl_buf_finish(&b, 0, len);
		if (rc == 0)
			*data = (char *)b.data;
		return rc;
	}
	rc = build(s, base, &p);
	if (rc)
		return rc;
	rc = sl_prof_encode(p, format, idx, title_of(s->kind), data, len);
	sl_prof_free(p);
	return rc;
}

int
sluice_profile_write_path(enum sluice_profile_kind kind,
			  enum sluice_profile_format format, const char *path)
{
	struct sluice_profile_snapshot *s;
	char *data = NULL;
	size_t len = 0, off = 0;
	ssize_t w;
	int rc, fd;

	if (!path)
		return SLUICE_EINVAL;
	rc = sluice_profile_snapshot(kind, &s);
	if (rc)
		return rc;
	rc = sluice_profile_encode(s, NULL, format, NULL, &data, &len);
	sluice_profile_snapshot_free(s);
	if (rc)
		return rc;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		sl_free(data);
		return rc;
	}
	while (off < len) {
		w = write(fd, data + off, len - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		off += (size_t)w;
	}
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	sl_free(data);
	return rc;
}
