/* SPDX-License-Identifier: MIT */
/*
 * metrics.c - the metrics registry behind sluice_metrics_*, sluice_counter_*,
 * sluice_gauge_* and sluice_histogram_*, and its Prometheus text renderer.
 *
 * The registry is a list of families (registration order); each family is a
 * list of children (creation order), one per tuple of label values.  Both
 * lists only grow, under the registry mutex, and nothing is freed before
 * sluice_metrics_free(), so a child pointer handed out stays valid and the
 * hot path never takes the mutex.
 *
 * Values live in cells that are only touched with relaxed atomics: they
 * publish no other data, and a render that sums shards one by one needs no
 * more than each cell's own coherence.  Counters and histograms have
 * SHARDS slots per child, each a multiple of a cache line (CACHE_LINE) and
 * aligned to one, so threads on different slots never share a line; a
 * thread's slot is a thread-local index handed out round robin on its first
 * bump.  A histogram slot holds its non-cumulative bucket counts and then
 * its sum (the bits of a double, updated by compare-and-swap).  "_count" is
 * computed as the sum of the buckets, so it always equals the "+Inf" bucket.
 *
 * Locking: one mutex per registry guards both lists, the family count and
 * the name check.  Rendering reads the callback gauges' (fn, ud) pairs under
 * the mutex, releases it, calls them, then takes it again to write the text
 * (the callback families only grow, so the first k of them are the ones
 * snapshotted).  No callback runs under the mutex; no other lock exists.
 */
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/metrics.h>

#include "util/alloc.h"

#define SHARDS       SLUICE_METRICS_SHARDS
#define MAX_LABELS   SLUICE_METRICS_MAX_LABELS
#define CACHE_LINE   64
#define LINE_WORDS   (CACHE_LINE / sizeof(uint64_t))
#define NUMBER_BUFSZ 32

enum kind {
	KIND_COUNTER,
	KIND_GAUGE,
	KIND_GAUGE_FN,
	KIND_HISTOGRAM,
	KIND_HISTOGRAM_FN,
};

struct family;

/*
 * One series (or one histogram's set of series).  The public child types
 * are this struct under another name, so the hot path is a cast away.
 */
struct child {
	/* Gauges: relaxed atomic.  First, so the cache-line alignment costs
	 * no padding; the rest of its line is cold (read at setup and render
	 * only). */
	alignas(CACHE_LINE) _Atomic int64_t gauge;
	struct child *next; /* family's list; guarded by the registry mutex */
	struct family *fam; /* immutable */
	void *raw;          /* immutable; the allocation this sits in */
	char *values[MAX_LABELS]; /* immutable; fam->nlabels of them */
	/* Counters and histograms: SHARDS slots of `stride` words, aligned to
	 * a cache line inside cells_raw.  Relaxed atomics. */
	_Atomic uint64_t *cells;
	void *cells_raw;
};

struct sluice_counter {
	struct child c;
};
struct sluice_gauge {
	struct child c;
};
struct sluice_histogram {
	struct child c;
};

struct family {
	struct family *next; /* registry list; guarded by the registry mutex */
	struct sluice_metrics *reg; /* immutable */
	enum kind kind;             /* immutable */
	char *name;                 /* immutable */
	char *help;                 /* immutable; NULL for none */
	size_t nlabels;             /* immutable */
	char *labels[MAX_LABELS];   /* immutable */
	double *bounds;             /* immutable; histograms */
	size_t nbounds;             /* immutable */
	size_t stride;       /* immutable; words per shard slot, 0 = gauge */
	sluice_gauge_fn *fn; /* immutable; KIND_GAUGE_FN */
	void *ud;            /* immutable; KIND_GAUGE_FN */
	bool fn_counter;     /* immutable; KIND_GAUGE_FN typed counter */
	sluice_histogram_fn *hfn; /* immutable; KIND_HISTOGRAM_FN */
	struct child *children;   /* guarded by the registry mutex */
	struct child **tail;      /* guarded by the registry mutex */
};

struct sluice_counter_family {
	struct family f;
};
struct sluice_gauge_family {
	struct family f;
};
struct sluice_histogram_family {
	struct family f;
};

struct sluice_metrics {
	pthread_mutex_t mu;
	struct family *families; /* guarded by mu */
	struct family **tail;    /* guarded by mu */
	size_t nfn; /* guarded by mu; KIND_GAUGE_FN and _HISTOGRAM_FN families
		     */
};

/* 0 = not chosen yet, else the slot + 1. */
static _Thread_local unsigned tl_slot;
/* Round-robin source of slots; relaxed: it only spreads threads out. */
static _Atomic unsigned next_slot;

static inline size_t
slot(void)
{
	unsigned s = tl_slot;

	if (s == 0) {
		s = atomic_fetch_add_explicit(&next_slot, 1,
					      memory_order_relaxed) %
			    SHARDS +
		    1;
		tl_slot = s;
	}
	return s - 1;
}

/* ---- names and text checks --------------------------------------------- */

static bool
is_name_start(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool
is_digit(int c)
{
	return c >= '0' && c <= '9';
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* */
static bool
valid_metric_name(const char *s)
{
	size_t i;

	if (!s || !(is_name_start(s[0]) || s[0] == ':'))
		return false;
	for (i = 1; s[i]; i++) {
		if (!is_name_start(s[i]) && !is_digit(s[i]) && s[i] != ':')
			return false;
	}
	return true;
}

/* [a-zA-Z_][a-zA-Z0-9_]*, not "__"-prefixed (reserved by Prometheus). */
static bool
valid_label_name(const char *s)
{
	size_t i;

	if (!s || !is_name_start(s[0]) || (s[0] == '_' && s[1] == '_'))
		return false;
	for (i = 1; s[i]; i++) {
		if (!is_name_start(s[i]) && !is_digit(s[i]))
			return false;
	}
	return true;
}

/* Well-formed UTF-8: no overlong forms, surrogates or code points past
 * U+10FFFF.  Prometheus rejects anything else in label values and help. */
static bool
valid_utf8(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	while (*s) {
		unsigned c = *s, n, cp, i;

		if (c < 0x80) {
			s++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (i = 1; i <= n; i++) {
			if ((s[i] & 0xc0) != 0x80)
				return false; /* also stops at the NUL */
			cp = (cp << 6) | (s[i] & 0x3FU);
		}
		if ((n == 2 &&
		     (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return false;
		s += n + 1;
	}
	return true;
}

/* ---- registry ------------------------------------------------------------ */

int
sluice_metrics_new(struct sluice_metrics **out)
{
	struct sluice_metrics *m;
	int rc;

	*out = NULL;
	m = sl_calloc(1, sizeof(*m));
	if (!m)
		return SLUICE_ENOMEM;
	rc = pthread_mutex_init(&m->mu, NULL);
	if (rc != 0) {
		sl_free(m);
		return -rc;
	}
	m->tail = &m->families;
	*out = m;
	return 0;
}

static void
child_free(struct child *c, size_t nlabels)
{
	size_t i;

	for (i = 0; i < nlabels; i++)
		sl_free(c->values[i]);
	sl_free(c->cells_raw);
	sl_free(c->raw);
}

static void
family_free(struct family *f)
{
	struct child *c, *next;
	size_t i;

	for (c = f->children; c; c = next) {
		next = c->next;
		child_free(c, f->nlabels);
	}
	for (i = 0; i < f->nlabels; i++)
		sl_free(f->labels[i]);
	sl_free(f->bounds);
	sl_free(f->help);
	sl_free(f->name);
	sl_free(f);
}

void
sluice_metrics_free(struct sluice_metrics *m)
{
	struct family *f, *next;

	if (!m)
		return;
	for (f = m->families; f; f = next) {
		next = f->next;
		family_free(f);
	}
	pthread_mutex_destroy(&m->mu);
	sl_free(m);
}

static int
check_family_args(const char *name, const char *help,
		  const char *const *label_names, size_t nlabels,
		  enum kind kind)
{
	size_t i, j;

	if (!valid_metric_name(name) || (help && !valid_utf8(help)) ||
	    nlabels > MAX_LABELS || (nlabels && !label_names))
		return SLUICE_EINVAL;
	for (i = 0; i < nlabels; i++) {
		if (!valid_label_name(label_names[i]))
			return SLUICE_EINVAL;
		if ((kind == KIND_HISTOGRAM || kind == KIND_HISTOGRAM_FN) &&
		    strcmp(label_names[i], "le") == 0)
			return SLUICE_EINVAL;
		for (j = 0; j < i; j++) {
			if (strcmp(label_names[i], label_names[j]) == 0)
				return SLUICE_EINVAL;
		}
	}
	return 0;
}

static int
check_bounds(const double *bounds, size_t nbounds)
{
	size_t i;

	if (nbounds && !bounds)
		return SLUICE_EINVAL;
	for (i = 0; i < nbounds; i++) {
		if (!isfinite(bounds[i]))
			return SLUICE_EINVAL;
		if (i > 0 && !(bounds[i - 1] < bounds[i]))
			return SLUICE_EINVAL;
	}
	return 0;
}

/* A family, unlinked; the caller links it under the mutex. */
static int
family_new(const char *name, const char *help, const char *const *label_names,
	   size_t nlabels, enum kind kind, struct family **out)
{
	struct family *f;
	size_t i;

	f = sl_calloc(1, sizeof(*f));
	if (!f)
		return SLUICE_ENOMEM;
	f->kind = kind;
	f->tail = &f->children;
	f->name = sl_strdup(name);
	if (!f->name)
		goto fail;
	if (help && help[0]) {
		f->help = sl_strdup(help);
		if (!f->help)
			goto fail;
	}
	for (i = 0; i < nlabels; i++) {
		f->labels[i] = sl_strdup(label_names[i]);
		if (!f->labels[i])
			goto fail;
		f->nlabels = i + 1;
	}
	if (kind == KIND_COUNTER)
		f->stride = LINE_WORDS;
	*out = f;
	return 0;
fail:
	family_free(f);
	return SLUICE_ENOMEM;
}

static bool
name_taken(const struct sluice_metrics *m, const char *name)
{
	const struct family *f;

	for (f = m->families; f; f = f->next) {
		if (strcmp(f->name, name) == 0)
			return true;
	}
	return false;
}

/* The first cache-line boundary at or after @p (which has CACHE_LINE
 * bytes of slack). */
static void *
align_up(void *p)
{
	return (char *)p + (-(uintptr_t)p & (CACHE_LINE - 1));
}

/* Families whose values come from a callback at render time. */
static bool
is_fn(const struct family *f)
{
	return f->kind == KIND_GAUGE_FN || f->kind == KIND_HISTOGRAM_FN;
}

/* A child, unlinked.  @values were checked by the caller. */
static int
child_new(struct family *f, const char *const *values, struct child **out)
{
	struct child *c;
	void *raw;
	size_t i, words;

	/* sl_malloc promises only max_align_t: over-allocate and align, so
	 * no two gauges share a cache line. */
	raw = sl_calloc(1, sizeof(*c) + CACHE_LINE);
	if (!raw)
		return SLUICE_ENOMEM;
	c = (struct child *)align_up(raw);
	c->raw = raw;
	c->fam = f;
	atomic_init(&c->gauge, 0);
	for (i = 0; i < f->nlabels; i++) {
		c->values[i] = sl_strdup(values[i]);
		if (!c->values[i])
			goto fail;
	}
	if (f->stride) {
		words = SHARDS * f->stride;
		c->cells_raw =
			sl_calloc(1, words * sizeof(uint64_t) + CACHE_LINE);
		if (!c->cells_raw)
			goto fail;
		c->cells = (_Atomic uint64_t *)align_up(c->cells_raw);
		for (i = 0; i < words; i++)
			atomic_init(&c->cells[i], 0);
	}
	*out = c;
	return 0;
fail:
	for (i = 0; i < f->nlabels; i++)
		sl_free(c->values[i]);
	sl_free(raw);
	return SLUICE_ENOMEM;
}

/*
 * Register a family; with @want_child (label-less kinds), also create its
 * only child, so the pair is published together or not at all.
 */
static int
register_family(struct sluice_metrics *m, struct family *f, bool want_child,
		struct child **child_out)
{
	struct child *c = NULL;
	int rc;

	if (want_child) {
		rc = child_new(f, NULL, &c);
		if (rc < 0) {
			family_free(f);
			return rc;
		}
		f->children = c;
		f->tail = &c->next;
	}
	rc = pthread_mutex_lock(&m->mu);
	if (rc != 0) {
		family_free(f);
		return -rc;
	}
	if (name_taken(m, f->name)) {
		pthread_mutex_unlock(&m->mu);
		family_free(f);
		return SLUICE_EEXIST;
	}
	f->reg = m;
	*m->tail = f;
	m->tail = &f->next;
	if (is_fn(f))
		m->nfn++;
	pthread_mutex_unlock(&m->mu);
	if (child_out)
		*child_out = c;
	return 0;
}

static int
register_simple(struct sluice_metrics *m, const char *name, const char *help,
		enum kind kind, const char *const *label_names, size_t nlabels,
		struct family **fam_out, struct child **child_out)
{
	struct family *f;
	int rc;

	if (!m)
		return SLUICE_EINVAL;
	rc = check_family_args(name, help, label_names, nlabels, kind);
	if (rc < 0)
		return rc;
	rc = family_new(name, help, label_names, nlabels, kind, &f);
	if (rc < 0)
		return rc;
	/* register_family() frees f on failure. */
	rc = register_family(m, f, child_out != NULL, child_out);
	if (rc == 0 && fam_out)
		*fam_out = f;
	return rc;
}

static int
child_get(struct family *f, const char *const *values, size_t nvalues,
	  struct child **out)
{
	struct sluice_metrics *m = f->reg;
	struct child *c, *fresh = NULL;
	size_t i;
	int rc;

	if (nvalues != f->nlabels || (nvalues && !values))
		return SLUICE_EINVAL;
	for (i = 0; i < nvalues; i++) {
		if (!values[i] || !valid_utf8(values[i]))
			return SLUICE_EINVAL;
	}
	rc = pthread_mutex_lock(&m->mu);
	if (rc != 0)
		return -rc;
	for (c = f->children; c; c = c->next) {
		for (i = 0; i < nvalues; i++) {
			if (strcmp(c->values[i], values[i]) != 0)
				break;
		}
		if (i == nvalues)
			break;
	}
	if (!c) {
		/* Allocating under the mutex keeps the "one child per
		 * tuple" check and the insert atomic; this is setup code. */
		rc = child_new(f, values, &fresh);
		if (rc == 0) {
			*f->tail = fresh;
			f->tail = &fresh->next;
			c = fresh;
		}
	}
	pthread_mutex_unlock(&m->mu);
	if (rc < 0)
		return rc;
	*out = c;
	return 0;
}

static int
child_get_va(struct family *f, struct child **out, va_list ap)
{
	const char *values[MAX_LABELS];
	const char *v;
	size_t n = 0;

	while ((v = va_arg(ap, const char *)) != NULL) {
		if (n == MAX_LABELS)
			return SLUICE_EINVAL;
		values[n++] = v;
	}
	return child_get(f, values, n, out);
}

/* ---- counters ----------------------------------------------------------- */

int
sluice_counter_register(struct sluice_metrics *m, const char *name,
			const char *help, struct sluice_counter **out)
{
	struct child *c = NULL;
	int rc;

	rc = register_simple(m, name, help, KIND_COUNTER, NULL, 0, NULL, &c);
	*out = (struct sluice_counter *)c;
	return rc;
}

int
sluice_counter_family_register(struct sluice_metrics *m, const char *name,
			       const char *help, const char *const *label_names,
			       size_t nlabels,
			       struct sluice_counter_family **out)
{
	struct family *f = NULL;
	int rc;

	*out = NULL;
	rc = register_simple(m, name, help, KIND_COUNTER, label_names, nlabels,
			     &f, NULL);
	if (rc == 0)
		*out = (struct sluice_counter_family *)f;
	return rc;
}

int
sluice_counter_with(struct sluice_counter_family *f,
		    struct sluice_counter **out, ...)
{
	struct child *c = NULL;
	va_list ap;
	int rc;

	va_start(ap, out);
	rc = child_get_va(&f->f, &c, ap);
	va_end(ap);
	*out = (struct sluice_counter *)c;
	return rc;
}

int
sluice_counter_with_values(struct sluice_counter_family *f,
			   const char *const *values, size_t nvalues,
			   struct sluice_counter **out)
{
	struct child *c = NULL;
	int rc = child_get(&f->f, values, nvalues, &c);

	*out = (struct sluice_counter *)c;
	return rc;
}

void
sluice_counter_add(struct sluice_counter *c, uint64_t n)
{
	atomic_fetch_add_explicit(&c->c.cells[slot() * LINE_WORDS], n,
				  memory_order_relaxed);
}

void
sluice_counter_inc(struct sluice_counter *c)
{
	sluice_counter_add(c, 1);
}

static uint64_t
sum_cells(const struct child *c, size_t word)
{
	uint64_t sum = 0;
	size_t s;

	for (s = 0; s < SHARDS; s++) {
		sum += atomic_load_explicit(
			&c->cells[s * c->fam->stride + word],
			memory_order_relaxed);
	}
	return sum;
}

uint64_t
sluice_counter_value(const struct sluice_counter *c)
{
	return sum_cells(&c->c, 0);
}

/* ---- gauges ------------------------------------------------------------- */

int
sluice_gauge_register(struct sluice_metrics *m, const char *name,
		      const char *help, struct sluice_gauge **out)
{
	struct child *c = NULL;
	int rc;

	rc = register_simple(m, name, help, KIND_GAUGE, NULL, 0, NULL, &c);
	*out = (struct sluice_gauge *)c;
	return rc;
}

int
sluice_gauge_family_register(struct sluice_metrics *m, const char *name,
			     const char *help, const char *const *label_names,
			     size_t nlabels, struct sluice_gauge_family **out)
{
	struct family *f = NULL;
	int rc;

	*out = NULL;
	rc = register_simple(m, name, help, KIND_GAUGE, label_names, nlabels,
			     &f, NULL);
	if (rc == 0)
		*out = (struct sluice_gauge_family *)f;
	return rc;
}

int
sluice_gauge_with(struct sluice_gauge_family *f, struct sluice_gauge **out, ...)
{
	struct child *c = NULL;
	va_list ap;
	int rc;

	va_start(ap, out);
	rc = child_get_va(&f->f, &c, ap);
	va_end(ap);
	*out = (struct sluice_gauge *)c;
	return rc;
}

int
sluice_gauge_with_values(struct sluice_gauge_family *f,
			 const char *const *values, size_t nvalues,
			 struct sluice_gauge **out)
{
	struct child *c = NULL;
	int rc = child_get(&f->f, values, nvalues, &c);

	*out = (struct sluice_gauge *)c;
	return rc;
}

void
sluice_gauge_set(struct sluice_gauge *g, int64_t v)
{
	atomic_store_explicit(&g->c.gauge, v, memory_order_relaxed);
}

void
sluice_gauge_add(struct sluice_gauge *g, int64_t delta)
{
	/* Through uint64_t: wrapping signed overflow would be UB. */
	int64_t old = atomic_load_explicit(&g->c.gauge, memory_order_relaxed);
	int64_t nv;

	do {
		nv = (int64_t)((uint64_t)old + (uint64_t)delta);
	} while (!atomic_compare_exchange_weak_explicit(&g->c.gauge, &old, nv,
							memory_order_relaxed,
							memory_order_relaxed));
}

int64_t
sluice_gauge_value(const struct sluice_gauge *g)
{
	return atomic_load_explicit(&g->c.gauge, memory_order_relaxed);
}

static int
register_fn(struct sluice_metrics *m, const char *name, const char *help,
	    sluice_gauge_fn *fn, void *ud, bool counter)
{
	struct family *f;
	int rc;

	if (!m || !fn)
		return SLUICE_EINVAL;
	rc = check_family_args(name, help, NULL, 0, KIND_GAUGE_FN);
	if (rc < 0)
		return rc;
	rc = family_new(name, help, NULL, 0, KIND_GAUGE_FN, &f);
	if (rc < 0)
		return rc;
	f->fn = fn;
	f->ud = ud;
	f->fn_counter = counter;
	return register_family(m, f, false, NULL);
}

int
sluice_gauge_register_fn(struct sluice_metrics *m, const char *name,
			 const char *help, sluice_gauge_fn *fn, void *ud)
{
	return register_fn(m, name, help, fn, ud, false);
}

int
sluice_counter_register_fn(struct sluice_metrics *m, const char *name,
			   const char *help, sluice_gauge_fn *fn, void *ud)
{
	return register_fn(m, name, help, fn, ud, true);
}

/* ---- histograms --------------------------------------------------------- */

/* A new (unregistered) histogram family of @kind with a copy of @bounds,
 * the arguments checked. */
static int
histogram_family_new(const char *name, const char *help, const double *bounds,
		     size_t nbounds, const char *const *label_names,
		     size_t nlabels, enum kind kind, struct family **out)
{
	struct family *f;
	int rc;

	rc = check_family_args(name, help, label_names, nlabels, kind);
	if (rc == 0)
		rc = check_bounds(bounds, nbounds);
	/* Buckets plus "+Inf" plus the sum, in whole cache lines; the cap
	 * keeps SHARDS * stride * 8 far from overflowing. */
	if (rc == 0 && nbounds > SIZE_MAX / 1024 - 2)
		rc = SLUICE_EINVAL;
	if (rc < 0)
		return rc;
	rc = family_new(name, help, label_names, nlabels, kind, &f);
	if (rc < 0)
		return rc;
	if (nbounds) {
		f->bounds = sl_malloc(nbounds * sizeof(*f->bounds));
		if (!f->bounds) {
			family_free(f);
			return SLUICE_ENOMEM;
		}
		memcpy(f->bounds, bounds, nbounds * sizeof(*f->bounds));
	}
	f->nbounds = nbounds;
	*out = f;
	return 0;
}

static int
histogram_register(struct sluice_metrics *m, const char *name, const char *help,
		   const double *bounds, size_t nbounds,
		   const char *const *label_names, size_t nlabels,
		   struct family **fam_out, struct child **child_out)
{
	struct family *f;
	size_t words;
	int rc;

	if (!m)
		return SLUICE_EINVAL;
	rc = histogram_family_new(name, help, bounds, nbounds, label_names,
				  nlabels, KIND_HISTOGRAM, &f);
	if (rc < 0)
		return rc;
	words = nbounds + 2;
	f->stride = (words + LINE_WORDS - 1) / LINE_WORDS * LINE_WORDS;
	/* register_family() frees f on failure. */
	rc = register_family(m, f, child_out != NULL, child_out);
	if (rc == 0 && fam_out)
		*fam_out = f;
	return rc;
}

int
sluice_histogram_register_fn(struct sluice_metrics *m, const char *name,
			     const char *help, const double *bounds,
			     size_t nbounds, sluice_histogram_fn *fn, void *ud)
{
	struct family *f;
	int rc;

	if (!m || !fn)
		return SLUICE_EINVAL;
	rc = histogram_family_new(name, help, bounds, nbounds, NULL, 0,
				  KIND_HISTOGRAM_FN, &f);
	if (rc < 0)
		return rc;
	f->hfn = fn;
	f->ud = ud;
	return register_family(m, f, false, NULL);
}

int
sluice_histogram_register(struct sluice_metrics *m, const char *name,
			  const char *help, const double *bounds,
			  size_t nbounds, struct sluice_histogram **out)
{
	struct child *c = NULL;
	int rc;

	rc = histogram_register(m, name, help, bounds, nbounds, NULL, 0, NULL,
				&c);
	*out = (struct sluice_histogram *)c;
	return rc;
}

int
sluice_histogram_family_register(struct sluice_metrics *m, const char *name,
				 const char *help, const double *bounds,
				 size_t nbounds, const char *const *label_names,
				 size_t nlabels,
				 struct sluice_histogram_family **out)
{
	struct family *f = NULL;
	int rc;

	*out = NULL;
	rc = histogram_register(m, name, help, bounds, nbounds, label_names,
				nlabels, &f, NULL);
	if (rc == 0)
		*out = (struct sluice_histogram_family *)f;
	return rc;
}

int
sluice_histogram_with(struct sluice_histogram_family *f,
		      struct sluice_histogram **out, ...)
{
	struct child *c = NULL;
	va_list ap;
	int rc;

	va_start(ap, out);
	rc = child_get_va(&f->f, &c, ap);
	va_end(ap);
	*out = (struct sluice_histogram *)c;
	return rc;
}

int
sluice_histogram_with_values(struct sluice_histogram_family *f,
			     const char *const *values, size_t nvalues,
			     struct sluice_histogram **out)
{
	struct child *c = NULL;
	int rc = child_get(&f->f, values, nvalues, &c);

	*out = (struct sluice_histogram *)c;
	return rc;
}

static uint64_t
dbl_bits(double d)
{
	uint64_t u;

	memcpy(&u, &d, sizeof(u));
	return u;
}

static double
bits_dbl(uint64_t u)
{
	double d;

	memcpy(&d, &u, sizeof(d));
	return d;
}

void
sluice_histogram_observe(struct sluice_histogram *h, double v)
{
	const struct family *f = h->c.fam;
	_Atomic uint64_t *cells = h->c.cells + slot() * f->stride;
	size_t lo = 0, hi = f->nbounds, mid;
	uint64_t old, nv;

	/* First bound >= v ("le"); NaN compares false, so it ends at
	 * nbounds, the "+Inf" bucket. */
	if (isnan(v)) {
		lo = f->nbounds;
	} else {
		while (lo < hi) {
			mid = lo + (hi - lo) / 2;
			if (f->bounds[mid] < v) {
				lo = mid + 1;
			} else {
				hi = mid;
			}
		}
	}
	atomic_fetch_add_explicit(&cells[lo], 1, memory_order_relaxed);
	old = atomic_load_explicit(&cells[f->nbounds + 1],
				   memory_order_relaxed);
	do {
		nv = dbl_bits(bits_dbl(old) + v);
	} while (!atomic_compare_exchange_weak_explicit(
		&cells[f->nbounds + 1], &old, nv, memory_order_relaxed,
		memory_order_relaxed));
}

uint64_t
sluice_histogram_count(const struct sluice_histogram *h)
{
	uint64_t n = 0;
	size_t i;

	for (i = 0; i <= h->c.fam->nbounds; i++)
		n += sum_cells(&h->c, i);
	return n;
}

double
sluice_histogram_sum(const struct sluice_histogram *h)
{
	const struct child *c = &h->c;
	double sum = 0.0;
	size_t s;

	for (s = 0; s < SHARDS; s++) {
		sum += bits_dbl(atomic_load_explicit(
			&c->cells[s * c->fam->stride + c->fam->nbounds + 1],
			memory_order_relaxed));
	}
	return sum;
}

/* ---- rendering ---------------------------------------------------------- */

struct buf {
	char *p;
	size_t len;
	size_t cap;
	bool nomem; /* sticky: later puts are no-ops */
};

static void
put(struct buf *b, const char *s, size_t n)
{
	size_t cap;
	char *p;

	if (b->nomem)
		return;
	if (n >= b->cap - b->len) {
		cap = b->cap ? b->cap : 1024;
		while (n >= cap - b->len) {
			if (cap > SIZE_MAX / 2) {
				b->nomem = true;
				return;
			}
			cap *= 2;
		}
		p = sl_realloc(b->p, cap);
		if (!p) {
			b->nomem = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
puts_(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static void
put_u64(struct buf *b, uint64_t v)
{
	char tmp[NUMBER_BUFSZ];
	int n = snprintf(tmp, sizeof(tmp), "%" PRIu64, v);

	put(b, tmp, (size_t)n);
}

static void
put_i64(struct buf *b, int64_t v)
{
	char tmp[NUMBER_BUFSZ];
	int n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);

	put(b, tmp, (size_t)n);
}

/*
 * @v in @tmp as Go's strconv.FormatFloat(v, 'g', -1, 64) spells it, which
 * is what the Go client writes (so "le" labels from sluice and from Go
 * services aggregate): the fewest significant digits that read back as the
 * same double, in exponent form when the decimal exponent is < -4 or >= 6
 * ("0.1", "2.5", "100000", "1e+06", "1e-05"); "NaN", "+Inf", "-Inf" as the
 * exposition format spells them.  Needs the "C" numeric locale (see
 * render).
 * Returns: the length.
 */
static size_t
fmt_double(char tmp[NUMBER_BUFSZ], double v)
{
	int digits, n = 0;
	long exp10;
	char *e;

	if (isnan(v))
		return (size_t)snprintf(tmp, NUMBER_BUFSZ, "NaN");
	if (isinf(v)) {
		memcpy(tmp, v > 0 ? "+Inf" : "-Inf", sizeof("+Inf"));
		return sizeof("+Inf") - 1;
	}
	for (digits = 1; digits <= 17; digits++) {
		n = snprintf(tmp, NUMBER_BUFSZ, "%.*e", digits - 1, v);
		if (strtod(tmp, NULL) == v)
			break;
	}
	e = strchr(tmp, 'e');
	exp10 = e ? strtol(e + 1, NULL, 10) : 0;
	if (exp10 < -4 || exp10 >= 6)
		return (size_t)n;
	/* digits - 1 - exp10 decimals keep exactly those digits. */
	n = snprintf(tmp, NUMBER_BUFSZ, "%.*f",
		     digits - 1 - (int)exp10 > 0 ? digits - 1 - (int)exp10 : 0,
		     v);
	return (size_t)n;
}

static void
put_double(struct buf *b, double v)
{
	char tmp[NUMBER_BUFSZ];

	put(b, tmp, fmt_double(tmp, v));
}

/* HELP text escapes backslash and newline; label values also '"'. */
static void
put_escaped(struct buf *b, const char *s, bool quote)
{
	const char *run = s;

	for (; *s; s++) {
		const char *esc = NULL;

		switch (*s) {
		case '\\':
			esc = "\\\\";
			break;
		case '\n':
			esc = "\\n";
			break;
		case '"':
			esc = quote ? "\\\"" : NULL;
			break;
		default:
			break;
		}
		if (esc) {
			put(b, run, (size_t)(s - run));
			put(b, esc, 2);
			run = s + 1;
		}
	}
	put(b, run, (size_t)(s - run));
}

/*
 * name{l1="v1",...,le="bound"} with @suffix after the name; @le NULL for
 * none; no braces at all when there is no label.
 */
static void
put_series(struct buf *b, const struct family *f, const struct child *c,
	   const char *suffix, const char *le)
{
	size_t i;

	puts_(b, f->name);
	puts_(b, suffix);
	if (f->nlabels == 0 && !le) {
		put(b, " ", 1);
		return;
	}
	put(b, "{", 1);
	for (i = 0; i < f->nlabels; i++) {
		if (i)
			put(b, ",", 1);
		puts_(b, f->labels[i]);
		put(b, "=\"", 2);
		put_escaped(b, c->values[i], true);
		put(b, "\"", 1);
	}
	if (le) {
		if (f->nlabels)
			put(b, ",", 1);
		put(b, "le=\"", 4);
		puts_(b, le);
		put(b, "\"", 1);
	}
	put(b, "} ", 2);
}

/* The series of one histogram; bucket i's count is @counts[i] when
 * @counts is set (callback histograms), else the sum of @c's shards. */
static void
put_histogram(struct buf *b, const struct family *f, const struct child *c,
	      const uint64_t *counts, double sum)
{
	char le[NUMBER_BUFSZ];
	uint64_t cum = 0;
	size_t i;

	for (i = 0; i <= f->nbounds; i++) {
		cum += counts ? counts[i] : sum_cells(c, i);
		if (i < f->nbounds) {
			fmt_double(le, f->bounds[i]);
			put_series(b, f, c, "_bucket", le);
		} else {
			put_series(b, f, c, "_bucket", "+Inf");
		}
		put_u64(b, cum);
		put(b, "\n", 1);
	}
	put_series(b, f, c, "_sum", NULL);
	put_double(b, sum);
	put(b, "\n", 1);
	put_series(b, f, c, "_count", NULL);
	put_u64(b, cum);
	put(b, "\n", 1);
}

static void
render_histogram(struct buf *b, const struct family *f, const struct child *c)
{
	put_histogram(b, f, c, NULL,
		      sluice_histogram_sum((const struct sluice_histogram *)c));
}

struct fn_snap {
	const struct family *f;
	double v;         /* gauge callbacks */
	uint64_t *counts; /* histogram callbacks: nbounds + 1 buckets */
};

static const char *const type_name[] = {
	[KIND_COUNTER] = "counter",        [KIND_GAUGE] = "gauge",
	[KIND_GAUGE_FN] = "gauge",         [KIND_HISTOGRAM] = "histogram",
	[KIND_HISTOGRAM_FN] = "histogram",
};

static void
render_family(struct buf *b, const struct family *f,
	      const struct fn_snap *fnval)
{
	const struct child *c;

	if (!is_fn(f) && !f->children)
		return;
	if (f->help) {
		puts_(b, "# HELP ");
		puts_(b, f->name);
		put(b, " ", 1);
		put_escaped(b, f->help, false);
		put(b, "\n", 1);
	}
	puts_(b, "# TYPE ");
	puts_(b, f->name);
	put(b, " ", 1);
	puts_(b, f->fn_counter ? "counter" : type_name[f->kind]);
	put(b, "\n", 1);
	if (f->kind == KIND_GAUGE_FN) {
		put_series(b, f, NULL, "", NULL);
		put_double(b, fnval->v);
		put(b, "\n", 1);
		return;
	}
	if (f->kind == KIND_HISTOGRAM_FN) {
		put_histogram(b, f, NULL, fnval->counts, fnval->v);
		return;
	}
	for (c = f->children; c; c = c->next) {
		switch (f->kind) {
		case KIND_COUNTER:
			put_series(b, f, c, "", NULL);
			put_u64(b, sum_cells(c, 0));
			put(b, "\n", 1);
			break;
		case KIND_GAUGE:
			put_series(b, f, c, "", NULL);
			put_i64(b, atomic_load_explicit(&c->gauge,
							memory_order_relaxed));
			put(b, "\n", 1);
			break;
		case KIND_HISTOGRAM:
			render_histogram(b, f, c);
			break;
		case KIND_GAUGE_FN:
		case KIND_HISTOGRAM_FN:
			break;
		}
	}
}

static void
snap_free(struct fn_snap *snap, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		sl_free(snap[i].counts);
	sl_free(snap);
}

/* Copy the callback families out under the mutex, then call them
 * outside. */
static int
eval_callbacks(struct sluice_metrics *m, struct fn_snap **out, size_t *nout)
{
	struct fn_snap *snap = NULL;
	const struct family *f;
	size_t n, i = 0;
	int rc;

	rc = pthread_mutex_lock(&m->mu);
	if (rc != 0)
		return -rc;
	n = m->nfn;
	if (n) {
		snap = sl_malloc(n * sizeof(*snap));
		if (!snap) {
			pthread_mutex_unlock(&m->mu);
			return SLUICE_ENOMEM;
		}
		for (f = m->families; f && i < n; f = f->next) {
			if (is_fn(f))
				snap[i++].f = f;
		}
	}
	pthread_mutex_unlock(&m->mu);
	/* Families are immutable once registered and live as long as m. */
	for (i = 0; i < n; i++) {
		const struct family *sf = snap[i].f;

		snap[i].counts = NULL;
		snap[i].v = 0.0;
		if (sf->kind == KIND_GAUGE_FN) {
			snap[i].v = sf->fn(sf->ud);
			continue;
		}
		snap[i].counts =
			sl_calloc(sf->nbounds + 1, sizeof(*snap[i].counts));
		if (!snap[i].counts) {
			snap_free(snap, i);
			return SLUICE_ENOMEM;
		}
		sf->hfn(sf->ud, snap[i].counts, &snap[i].v);
	}
	*out = snap;
	*nout = n;
	return 0;
}

int
sluice_metrics_render(struct sluice_metrics *m, char **out, size_t *len)
{
	struct buf b = { NULL, 0, 0, false };
	struct fn_snap *snap = NULL;
	const struct family *f;
	locale_t cloc, old;
	size_t nsnap = 0, i = 0;
	int rc;

	*out = NULL;
	if (len)
		*len = 0;
	rc = eval_callbacks(m, &snap, &nsnap);
	if (rc < 0)
		return rc;
	/* snprintf("%g") and strtod follow LC_NUMERIC; the format wants a
	 * '.', whatever locale the application chose.  uselocale() changes
	 * this thread only. */
	cloc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
	if (cloc == (locale_t)0) {
		snap_free(snap, nsnap);
		return SLUICE_ENOMEM;
	}
	old = uselocale(cloc);
	put(&b, "", 0); /* an empty registry still renders "" */
	rc = pthread_mutex_lock(&m->mu);
	if (rc != 0) {
		rc = -rc;
		goto out_locale;
	}
	for (f = m->families; f; f = f->next) {
		const struct fn_snap *v = NULL;

		if (is_fn(f)) {
			/* Registered after the snapshot: next render. */
			if (i == nsnap)
				continue;
			v = &snap[i++];
		}
		render_family(&b, f, v);
	}
	pthread_mutex_unlock(&m->mu);
	if (b.nomem) {
		rc = SLUICE_ENOMEM;
		goto out_locale;
	}
	*out = b.p;
	if (len)
		*len = b.len;
	b.p = NULL;
out_locale:
	uselocale(old);
	freelocale(cloc);
	sl_free(b.p);
	snap_free(snap, nsnap);
	return rc;
}

void
sluice_metrics_free_text(char *text)
{
	sl_free(text);
}
