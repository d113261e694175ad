/* SPDX-License-Identifier: MIT */
/*
 * alloc.c - heap wrappers with fault injection for tests, and the sampling
 * core of the heap profiler (see obs/heapprof_int.h for the design).
 *
 * The core lives here, not in obs/heapprof.c, so that everything linking
 * sl_malloc links it without the encoders; the unwinder (obs/threads.c)
 * is a weak reference for the same reason.
 *
 * Costs: an allocation that is not sampled costs the fault-injection load
 * and one thread-local decrement; a free costs one relaxed load while no
 * sampled block is live, and a filter load otherwise.  The sampled path
 * (about one allocation per 512 KiB) unwinds and takes heap_mu.
 *
 * Locking: heap_mu guards the live table (live), the heap stack table
 * (heap_stacks) and the filter counters' writes; the filter is read
 * without it (a stale non-zero only costs a lock, and a block's own
 * insertion happens before any free of it).  Nothing under heap_mu
 * allocates: the tables are mmap'd once, so the interposed malloc cannot
 * re-enter.  A process that forks while another thread holds heap_mu
 * leaves the child unable to sample (as with any lock around malloc).
 */
#include "util/alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <sluice/common.h>

#include "obs/heapprof_int.h"
#include "obs/threads.h"

/* Weak: programs that never link the unwinder still link sl_malloc. */
#pragma weak sl_unwind_here

/* This object's SL_PROF_SKIP section, from the linker. */
extern const char __start_sl_prof_skip[]
	__attribute__((weak, visibility("hidden")));
extern const char __stop_sl_prof_skip[]
	__attribute__((weak, visibility("hidden")));

static _Atomic unsigned long fail_countdown; /* 0 = off */
static _Atomic int fail_sticky;

#define TLS_IE __attribute__((tls_model("initial-exec")))

/* Countdown when sampling is off or stood down: how often a thread looks
 * at the rate again. */
#define RECHECK_BYTES ((int64_t)64 << 20)

#define LIVE_SLOTS  (2 * SL_HEAP_MAX_LIVE) /* load factor <= 1/2 */
#define FILTER_BITS 20
#define NOBUCKET    UINT32_MAX

struct live_rec {
	uintptr_t ptr; /* 0 = empty slot */
	size_t size;
	uint32_t bucket;
};

static __thread struct sl_heap_tls own_tls TLS_IE;   /* sl_malloc scope */
__thread struct sl_heap_tls sl_heap_tls_proc TLS_IE; /* interposer scope */
static __thread uint64_t rng_state TLS_IE;

static _Atomic long heap_rate = SL_HEAP_DEFAULT_RATE;       /* relaxed */
static _Atomic long heap_scale_rate = SL_HEAP_DEFAULT_RATE; /* relaxed */
static _Atomic unsigned heap_gen; /* bumped by each rate change */
static _Atomic bool heap_process; /* the interposer is linked */
_Atomic long sl_heap_live;        /* writes under heap_mu */
static _Atomic uint64_t heap_sampled, heap_dropped_live;

static pthread_mutex_t heap_mu = PTHREAD_MUTEX_INITIALIZER;
static struct live_rec *live;     /* [LIVE_SLOTS], heap_mu */
static bool heap_init_failed;     /* heap_mu */
static struct sl_stktab heap_stk; /* heap_mu */
/* Counting filter over live sampled pointers: written under heap_mu,
 * read lock-free by free(); published once with release. */
static _Atomic(_Atomic uint16_t *) heap_filter;

/* Extra SL_PROF_SKIP ranges registered by other modules. */
#define MAX_SKIP 4
static struct {
	_Atomic uintptr_t start, stop;
} skip_ranges[MAX_SKIP];
static _Atomic unsigned nskip;

static int
should_fail(void)
{
	unsigned long c =
		atomic_load_explicit(&fail_countdown, memory_order_relaxed);

	if (c == 0)
		return 0;
	if (c == 1) {
		if (!atomic_load_explicit(&fail_sticky, memory_order_relaxed))
			atomic_store_explicit(&fail_countdown, 0,
					      memory_order_relaxed);
		return 1;
	}
	atomic_fetch_sub_explicit(&fail_countdown, 1, memory_order_relaxed);
	return 0;
}

void
sl_alloc_fail_after(unsigned long n, int sticky)
{
	atomic_store(&fail_sticky, sticky);
	atomic_store(&fail_countdown, n);
}

/*
 * The wrappers are SL_PROF_SKIP (never inlined, trimmed from stacks) so
 * that a sample is charged to sl_malloc's caller however it was reached.
 */
SL_PROF_SKIP void *
sl_malloc(size_t n)
{
	void *p;

	if (should_fail())
		return NULL;
	if (n == 0)
		n = 1;
	p = malloc(n);
	if (p && (own_tls.left -= (int64_t)n) < 0)
		sl_heap_sample(&own_tls, SL_HEAP_SCOPE_SLUICE, p, n);
	return p;
}

SL_PROF_SKIP void *
sl_calloc(size_t nmemb, size_t size)
{
	size_t n;
	void *p;

	if (should_fail())
		return NULL;
	if (nmemb == 0)
		nmemb = 1;
	if (size == 0)
		size = 1;
	p = calloc(nmemb, size);
	if (p && !__builtin_mul_overflow(nmemb, size, &n) &&
	    (own_tls.left -= (int64_t)n) < 0)
		sl_heap_sample(&own_tls, SL_HEAP_SCOPE_SLUICE, p, n);
	return p;
}

SL_PROF_SKIP void *
sl_realloc(void *p, size_t n)
{
	struct sl_heap_taken tk;
	void *q;

	if (should_fail())
		return NULL;
	if (n == 0)
		n = 1;
	if (p && atomic_load_explicit(&sl_heap_live, memory_order_relaxed) &&
	    sl_heap_take(SL_HEAP_SCOPE_SLUICE, p, &tk)) {
		uintptr_t old = (uintptr_t)p;

		q = realloc(p, n);
		sl_heap_moved(old, q, n, &tk);
		return q;
	}
	q = realloc(p, n);
	if (q && (own_tls.left -= (int64_t)n) < 0)
		sl_heap_sample(&own_tls, SL_HEAP_SCOPE_SLUICE, q, n);
	return q;
}

SL_PROF_SKIP void
sl_free(void *p)
{
	/* The record goes before the memory: once freed, another thread
	 * may get the same address back and sample it. */
	if (p && atomic_load_explicit(&sl_heap_live, memory_order_relaxed))
		sl_heap_forget(SL_HEAP_SCOPE_SLUICE, p);
	free(p);
}

SL_PROF_SKIP char *
sl_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = sl_malloc(n);

	if (p)
		memcpy(p, s, n);
	return p;
}

/* ---- stacks ------------------------------------------------------------ */

void
sl_prof_skip_range_add(uintptr_t start, uintptr_t stop)
{
	unsigned i = atomic_fetch_add(&nskip, 1);

	if (i >= MAX_SKIP || start >= stop)
		return;
	atomic_store(&skip_ranges[i].start, start);
	atomic_store(&skip_ranges[i].stop, stop);
}

static bool
in_skip(uintptr_t pc)
{
	unsigned i, n = atomic_load_explicit(&nskip, memory_order_relaxed);

	if (pc >= (uintptr_t)__start_sl_prof_skip &&
	    pc < (uintptr_t)__stop_sl_prof_skip)
		return true;
	if (n > MAX_SKIP)
		n = MAX_SKIP;
	for (i = 0; i < n; i++)
		if (pc >= atomic_load_explicit(&skip_ranges[i].start,
					       memory_order_relaxed) &&
		    pc < atomic_load_explicit(&skip_ranges[i].stop,
					      memory_order_relaxed))
			return true;
	return false;
}

SL_PROF_SKIP size_t
sl_prof_stack_here(uintptr_t *pcs, size_t max)
{
	uintptr_t tmp[SL_STK_DEPTH + 8];
	size_t n, i = 0, k;

	if (!sl_unwind_here)
		return 0;
	n = sl_unwind_here(tmp, SL_STK_DEPTH + 8, 0);
	/* Drop everything up to the end of the first run of skipped frames
	 * near the leaf (the unwinder may or may not report itself). */
	for (k = 0; k < n && k < 4; k++)
		if (in_skip(tmp[k]))
			break;
	if (k < n && k < 4) {
		i = k;
		while (i < n && in_skip(tmp[i]))
			i++;
	}
	n -= i;
	if (n > max)
		n = max;
	memcpy(pcs, tmp + i, n * sizeof(*pcs));
	return n;
}

uint64_t
sl_prof_rand(void)
{
	static _Atomic uint64_t seq;
	uint64_t x = rng_state;

	if (x == 0) {
		/* splitmix64 of a per-thread sequence number */
		x = atomic_fetch_add(&seq, 1) * 0x9e3779b97f4a7c15ULL +
		    (uintptr_t)&rng_state;
		x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
		x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
		x ^= x >> 31;
		if (x == 0)
			x = 1;
	}
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x;
}

/* -ln(u) for u uniform in (0, 1], without libm: split u into 2^e * m and
 * take ln(m) from the atanh series (|s| <= 1/3: error below 1e-6). */
static double
exp_gap(void)
{
	double u = (double)((sl_prof_rand() >> 11) + 1) * 0x1p-53, m, s, s2;
	uint64_t bits;
	int e;

	memcpy(&bits, &u, sizeof(bits));
	e = (int)((bits >> 52) & 0x7ff) - 1023;
	bits = (bits & ((UINT64_C(1) << 52) - 1)) | (UINT64_C(1023) << 52);
	memcpy(&m, &bits, sizeof(m));
	s = (m - 1.0) / (m + 1.0);
	s2 = s * s;
	return -((double)e * 0.6931471805599453 +
		 2.0 * s *
			 (1.0 +
			  s2 * (1.0 / 3 +
				s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 / 9)))));
}

/* ---- stack tables ------------------------------------------------------ */

static uint64_t
hash_pcs(const uintptr_t *pcs, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ n;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= pcs[i];
		h *= 0x100000001b3ULL;
		h ^= h >> 29;
	}
	return h;
}

uint32_t
sl_stktab_get(struct sl_stktab *t, uint32_t cap, const uintptr_t *pcs, size_t n)
{
	uint32_t mask, i, used, idx;
	struct sl_stk_bucket *b;
	uint64_t h;
	void *m;

	if (!t->b) {
		size_t bytes = (size_t)cap * sizeof(*t->b) +
			       (size_t)cap * 2 * sizeof(*t->index);

		if (t->cap == UINT32_MAX) /* mmap failed before */
			goto full;
		m = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED) {
			t->cap = UINT32_MAX;
			goto full;
		}
		t->b = m;
		t->index = (uint32_t *)(void *)(t->b + cap);
		t->cap = cap;
	}
	if (n > SL_STK_DEPTH)
		n = SL_STK_DEPTH;
	h = hash_pcs(pcs, n);
	mask = t->cap * 2 - 1;
	for (i = (uint32_t)h & mask;; i = (i + 1) & mask) {
		idx = t->index[i];
		if (idx == 0)
			break;
		b = &t->b[idx - 1];
		if (b->hash == h && b->depth == n &&
		    memcmp(b->pcs, pcs, n * sizeof(*pcs)) == 0)
			return idx - 1;
	}
	used = atomic_load_explicit(&t->n, memory_order_relaxed);
	if (used >= t->cap)
		goto full;
	b = &t->b[used];
	memset(b, 0, sizeof(*b));
	b->hash = h;
	b->depth = (uint32_t)n;
	memcpy(b->pcs, pcs, n * sizeof(*pcs));
	t->index[i] = used + 1;
	atomic_store_explicit(&t->n, used + 1, memory_order_relaxed);
	return used;
full:
	atomic_fetch_add_explicit(&t->dropped, 1, memory_order_relaxed);
	return NOBUCKET;
}

int
sl_stktab_copy(struct sl_stktab *t, pthread_mutex_t *mu,
	       struct sl_stk_bucket **out, size_t *n)
{
	struct sl_stk_bucket *arr;
	uint32_t want, have;

	for (;;) {
		want = atomic_load_explicit(&t->n, memory_order_relaxed);
		/* Not under @mu: this allocation may itself be sampled. */
		arr = sl_malloc((want ? want : 1) * sizeof(*arr));
		if (!arr)
			return SLUICE_ENOMEM;
		pthread_mutex_lock(mu);
		have = atomic_load_explicit(&t->n, memory_order_relaxed);
		if (have <= want) {
			if (have)
				memcpy(arr, t->b, have * sizeof(*arr));
			pthread_mutex_unlock(mu);
			*out = arr;
			*n = have;
			return 0;
		}
		pthread_mutex_unlock(mu);
		sl_free(arr);
	}
}

/* ---- heap sampling ----------------------------------------------------- */

static uint32_t
ptr_hash(const void *p, unsigned bits)
{
	return (uint32_t)((((uintptr_t)p >> 4) * 0x9e3779b97f4a7c15ULL) >>
			  (64 - bits));
}

/* Under heap_mu.  The tables come from mmap, never from malloc. */
static bool
heap_init(void)
{
	size_t lbytes = LIVE_SLOTS * sizeof(struct live_rec);
	size_t fbytes = ((size_t)1 << FILTER_BITS) * sizeof(_Atomic uint16_t);
	void *m;

	if (live)
		return true;
	if (heap_init_failed)
		return false;
	m = mmap(NULL, lbytes + fbytes, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		heap_init_failed = true;
		return false;
	}
	live = m;
	atomic_store_explicit(&heap_filter,
			      (_Atomic uint16_t *)(void *)((char *)m + lbytes),
			      memory_order_release);
	return true;
}

static uint32_t
live_find(uintptr_t p)
{
	uint32_t i;

	for (i = ptr_hash((void *)p, 16);; i = (i + 1) & (LIVE_SLOTS - 1)) {
		if (live[i].ptr == p)
			return i;
		if (live[i].ptr == 0)
			return UINT32_MAX;
	}
}

/* Under heap_mu, with room checked. */
static void
live_insert(uintptr_t p, size_t size, uint32_t bucket)
{
	_Atomic uint16_t *f =
		atomic_load_explicit(&heap_filter, memory_order_relaxed);
	uint32_t i;

	for (i = ptr_hash((void *)p, 16); live[i].ptr;
	     i = (i + 1) & (LIVE_SLOTS - 1))
		;
	live[i].ptr = p;
	live[i].size = size;
	live[i].bucket = bucket;
	atomic_fetch_add_explicit(&f[ptr_hash((void *)p, FILTER_BITS)], 1,
				  memory_order_relaxed);
	atomic_fetch_add_explicit(&sl_heap_live, 1, memory_order_relaxed);
}

/* Under heap_mu: remove slot @i with backward-shift deletion (linear
 * probing without tombstones, so the table never degrades). */
static void
live_delete(uint32_t i)
{
	_Atomic uint16_t *f =
		atomic_load_explicit(&heap_filter, memory_order_relaxed);
	uint32_t j = i, home;

	atomic_fetch_sub_explicit(
		&f[ptr_hash((void *)live[i].ptr, FILTER_BITS)], 1,
		memory_order_relaxed);
	atomic_fetch_sub_explicit(&sl_heap_live, 1, memory_order_relaxed);
	for (;;) {
		live[i].ptr = 0;
		for (;;) {
			j = (j + 1) & (LIVE_SLOTS - 1);
			if (live[j].ptr == 0)
				return;
			home = ptr_hash((void *)live[j].ptr, 16);
			/* Move j back to i unless its home lies in (i, j]. */
			if (i <= j ? (i < home && home <= j)
				   : (i < home || home <= j))
				continue;
			live[i] = live[j];
			i = j;
			break;
		}
	}
}

static void
draw(struct sl_heap_tls *t, long rate)
{
	double gap;

	if (rate <= 1) {
		t->left = 0; /* rate 1: every allocation */
		return;
	}
	gap = exp_gap() * (double)rate;
	t->left = gap > (double)(INT64_MAX / 2) ? INT64_MAX / 2 : (int64_t)gap;
}

SL_PROF_SKIP static void
record(void *p, size_t size)
{
	uintptr_t pcs[SL_STK_DEPTH];
	size_t n = sl_prof_stack_here(pcs, SL_STK_DEPTH);
	struct sl_stk_bucket *b;
	uint32_t bi;

	pthread_mutex_lock(&heap_mu);
	if (!heap_init()) {
		pthread_mutex_unlock(&heap_mu);
		return;
	}
	bi = sl_stktab_get(&heap_stk, SL_HEAP_MAX_STACKS, pcs, n);
	if (bi != NOBUCKET) {
		b = &heap_stk.b[bi];
		b->v[SL_HEAP_ALLOC_N]++;
		b->v[SL_HEAP_ALLOC_B] += (int64_t)size;
		if (atomic_load_explicit(&sl_heap_live, memory_order_relaxed) <
		    (long)SL_HEAP_MAX_LIVE) {
			live_insert((uintptr_t)p, size, bi);
		} else {
			/* No room to watch it: count it freed at once. */
			b->v[SL_HEAP_FREE_N]++;
			b->v[SL_HEAP_FREE_B] += (int64_t)size;
			atomic_fetch_add_explicit(&heap_dropped_live, 1,
						  memory_order_relaxed);
		}
		atomic_fetch_add_explicit(&heap_sampled, 1,
					  memory_order_relaxed);
	}
	pthread_mutex_unlock(&heap_mu);
}

SL_PROF_SKIP void
sl_heap_sample(struct sl_heap_tls *t, enum sl_heap_scope scope, void *p,
	       size_t size)
{
	long rate = atomic_load_explicit(&heap_rate, memory_order_relaxed);
	unsigned gen = atomic_load_explicit(&heap_gen, memory_order_relaxed);

	if (rate <= 0 ||
	    (scope == SL_HEAP_SCOPE_SLUICE &&
	     atomic_load_explicit(&heap_process, memory_order_relaxed))) {
		t->left = RECHECK_BYTES;
		t->init = false;
		return;
	}
	if (!t->init || t->gen != gen) {
		/* A thread's first crossing, or the rate changed since the
		 * gap was drawn: draw a gap of the current rate, which this
		 * allocation starts to use up. */
		t->init = true;
		t->gen = gen;
		draw(t, rate);
		t->left -= (int64_t)size;
		if (t->left >= 0)
			return;
	}
	record(p, size);
	draw(t, rate);
}

void
sl_heap_forget(enum sl_heap_scope scope, void *p)
{
	_Atomic uint16_t *f;
	struct sl_stk_bucket *b;
	uint32_t i;

	if (scope == SL_HEAP_SCOPE_SLUICE &&
	    atomic_load_explicit(&heap_process, memory_order_relaxed))
		return; /* the interposed free() does it */
	f = atomic_load_explicit(&heap_filter, memory_order_acquire);
	if (!f || !atomic_load_explicit(&f[ptr_hash(p, FILTER_BITS)],
					memory_order_relaxed))
		return;
	pthread_mutex_lock(&heap_mu);
	i = live_find((uintptr_t)p);
	if (i != UINT32_MAX) {
		b = &heap_stk.b[live[i].bucket];
		b->v[SL_HEAP_FREE_N]++;
		b->v[SL_HEAP_FREE_B] += (int64_t)live[i].size;
		live_delete(i);
	}
	pthread_mutex_unlock(&heap_mu);
}

bool
sl_heap_take(enum sl_heap_scope scope, void *p, struct sl_heap_taken *tk)
{
	_Atomic uint16_t *f;
	uint32_t i;
	bool hit = false;

	if (scope == SL_HEAP_SCOPE_SLUICE &&
	    atomic_load_explicit(&heap_process, memory_order_relaxed))
		return false;
	f = atomic_load_explicit(&heap_filter, memory_order_acquire);
	if (!f || !atomic_load_explicit(&f[ptr_hash(p, FILTER_BITS)],
					memory_order_relaxed))
		return false;
	pthread_mutex_lock(&heap_mu);
	i = live_find((uintptr_t)p);
	if (i != UINT32_MAX) {
		tk->size = live[i].size;
		tk->bucket = live[i].bucket;
		live_delete(i);
		hit = true;
	}
	pthread_mutex_unlock(&heap_mu);
	return hit;
}

void
sl_heap_moved(uintptr_t oldp, void *newp, size_t size,
	      const struct sl_heap_taken *tk)
{
	struct sl_stk_bucket *b;
	bool room;

	pthread_mutex_lock(&heap_mu);
	b = &heap_stk.b[tk->bucket];
	room = atomic_load_explicit(&sl_heap_live, memory_order_relaxed) <
	       (long)SL_HEAP_MAX_LIVE;
	if (!newp) {
		/* realloc failed: the old block is still live. */
		if (room) {
			live_insert(oldp, tk->size, tk->bucket);
		} else {
			b->v[SL_HEAP_FREE_N]++;
			b->v[SL_HEAP_FREE_B] += (int64_t)tk->size;
		}
		pthread_mutex_unlock(&heap_mu);
		return;
	}
	/* The record follows the block: the old size freed, the new one
	 * allocated, both charged to the stack that was sampled. */
	b->v[SL_HEAP_FREE_N]++;
	b->v[SL_HEAP_FREE_B] += (int64_t)tk->size;
	b->v[SL_HEAP_ALLOC_N]++;
	b->v[SL_HEAP_ALLOC_B] += (int64_t)size;
	if (room) {
		live_insert((uintptr_t)newp, size, tk->bucket);
	} else {
		b->v[SL_HEAP_FREE_N]++;
		b->v[SL_HEAP_FREE_B] += (int64_t)size;
		atomic_fetch_add_explicit(&heap_dropped_live, 1,
					  memory_order_relaxed);
	}
	pthread_mutex_unlock(&heap_mu);
}

void
sl_heap_set_process_scope(void)
{
	atomic_store(&heap_process, true);
}

bool
sl_heap_process_scope(void)
{
	return atomic_load(&heap_process);
}

long
sl_heap_rate(void)
{
	return atomic_load_explicit(&heap_rate, memory_order_relaxed);
}

long
sl_heap_scale_rate(void)
{
	return atomic_load_explicit(&heap_scale_rate, memory_order_relaxed);
}

void
sl_heap_set_rate(long rate)
{
	if (rate < 0)
		rate = 0;
	if (rate > 0)
		atomic_store(&heap_scale_rate, rate);
	atomic_store(&heap_rate, rate);
	atomic_fetch_add(&heap_gen, 1);
	/* The calling thread starts a new gap at its next allocation; the
	 * others at their next sample point. */
	own_tls.left = -1;
	own_tls.init = false;
	sl_heap_tls_proc.left = -1;
	sl_heap_tls_proc.init = false;
}

struct sl_stktab *
sl_heap_stacks(pthread_mutex_t **mu)
{
	*mu = &heap_mu;
	return &heap_stk;
}

void
sl_heap_stats(struct sl_heap_stats_int *out)
{
	out->sampled = atomic_load(&heap_sampled);
	out->dropped_live = atomic_load(&heap_dropped_live);
	out->dropped_stacks = atomic_load(&heap_stk.dropped);
	out->live = atomic_load(&sl_heap_live);
}
