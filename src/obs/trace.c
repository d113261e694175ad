/* SPDX-License-Identifier: MIT */
/*
 * trace.c - the execution trace recorder and its JSON / Perfetto writers,
 * and the TSC stopwatch (trace_int.h).
 *
 * Buffers.  sluice_trace_start() allocates one pool of fixed-size chunks and
 * pre-faults it (writing a non-zero byte per page: a zeroing memset may be
 * turned into calloc, which faults nothing).  Each thread owns a `struct
 * tbuf`, created on its first event, pushed once onto a global list with a
 * CAS and never freed (a thread that exits leaves it DEAD with its events;
 * the next start recycles it as FREE for a new thread).  The owner appends
 * 40-byte records to its last chunk and publishes the chunk's count with a
 * release store; a full chunk is replaced by the next free one of the pool
 * (a CAS on the pool index), linked at the tail of the owner's list.  When
 * the pool is empty: in the default mode the event is counted as dropped;
 * in ring mode the owner unlinks its own oldest chunk and reuses it.
 *
 * Timestamps are TSC ticks (9 ns to read here, vs 21 ns for
 * clock_gettime(CLOCK_MONOTONIC); see sl_ticks()), converted at write time
 * with (ticks, CLOCK_MONOTONIC) pairs taken at start and stop.  Each thread
 * clamps its timestamps to be non-decreasing.
 *
 * Quiescence.  start() resets the per-thread state and a writer reads it,
 * so neither may overlap a probe.  A probe sets its thread's `busy` flag,
 * then (after a barrier) loads sl_trace_on; stop() clears sl_trace_on, then
 * waits until every `busy` is 0.  That is Dekker's pattern: the barrier on
 * the probe side is only a compiler barrier, because stop() runs
 * membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), which makes every running
 * thread execute a full fence; where membarrier is unavailable probes use a
 * seq_cst fence instead (`strict`).  After stop() returns no probe touches
 * a buffer until the next start, whose release store of sl_trace_on
 * publishes the reset state to the probes' acquire load.
 *
 * Locking: g.mu serialises start/stop/write/stats and thread names.  The
 * probes take no lock.  Fields below name their rule.
 */
#include <errno.h>
#include <inttypes.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <sluice/trace.h>

#include "obs/pb.h"
#include "obs/trace_int.h"
#include "util/alloc.h"

#define MIN_POOL   ((size_t)4096)
#define MAX_POOL   ((size_t)1 << 30)
#define DEF_POOL   ((size_t)8 << 20)
#define MAX_CHUNK  ((size_t)64 << 10)
#define NAME_MAX_  32
#define PAGE_BYTES 4096

struct rec {
	uint64_t ts;      /* sl_ticks() */
	const char *name; /* static */
	const char *akey; /* static; NULL: no argument */
	uint64_t val;     /* counter value, flow or async id */
	uint32_t kind;    /* enum sl_tr_kind */
	uint32_t aux;     /* the argument's value */
};

struct chunk {
	struct chunk *next;     /* owner's list; owner-written */
	_Atomic uint32_t count; /* records; owner stores with release */
	uint32_t pad_;
	struct rec recs[];
};

enum { TB_OWNED = 0, TB_DEAD = 1, TB_FREE = 2 };

struct tbuf {
	struct tbuf *next;    /* global list; immutable once pushed */
	_Atomic int state;    /* TB_*; CAS FREE -> OWNED to adopt */
	_Atomic int busy;     /* 1 while inside a probe; see quiescence */
	_Atomic int tid;      /* relaxed; set by the owner when it adopts */
	char name[NAME_MAX_]; /* guarded by g.mu */
	/* Owner-written while recording; reset by start() (quiescent). */
	struct chunk *head, *tail;
	uint32_t n;       /* == tail->count */
	uint64_t last_ts; /* clamp: timestamps never go back */
	/* Owner-written (relaxed load + store); read by stats. */
	_Atomic uint64_t events, dropped, overwritten;
};

_Atomic int sl_trace_on;
_Atomic int sl_ticks_tsc;

static struct {
	pthread_mutex_t mu;
	bool running, ring, strict; /* mu; ring/strict read by probes
				       after the acquire of sl_trace_on */
	bool membarrier_ok;         /* mu */
	uint8_t *pool;              /* mu; probes use it while on */
	size_t pool_bytes, chunk_bytes, chunk_recs, nchunks; /* as pool */
	_Atomic size_t next_chunk;                           /* CAS by probes */
	_Atomic(struct tbuf *) threads; /* CAS push; never shrinks */
	uint64_t tk0, tk1;              /* mu: ticks at start / stop */
	int64_t mono0, mono1;           /* mu: CLOCK_MONOTONIC ns */
} g = { .mu = PTHREAD_MUTEX_INITIALIZER };

static _Thread_local struct tbuf *tls_tb
	__attribute__((tls_model("initial-exec")));
static pthread_key_t tb_key;
static pthread_once_t tb_once = PTHREAD_ONCE_INIT;

/* ---- the stopwatch ------------------------------------------------------ */

static pthread_once_t ticks_once = PTHREAD_ONCE_INIT;
static double ns_per_tick = 1.0; /* written once under ticks_once */

static int64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Both flags, or the TSC may stop in idle states or change rate. */
static bool
tsc_usable(void)
{
#if defined(__x86_64__) || defined(__i386__)
	char line[4096];
	bool constant = false, nonstop = false;
	FILE *f = fopen("/proc/cpuinfo", "r");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "flags", 5) != 0)
			continue;
		constant = strstr(line, " constant_tsc") != NULL;
		nonstop = strstr(line, " nonstop_tsc") != NULL;
		break;
	}
	fclose(f);
	return constant && nonstop;
#else
	return false;
#endif
}

static void
ticks_calibrate(void)
{
	uint64_t t0, t1;
	int64_t m0, m1;

	if (!tsc_usable())
		return;
	atomic_store(&sl_ticks_tsc, 1);
	/* ~2 ms of spinning: clock_gettime's ~30 ns of jitter on each end
	 * make the rate good to about 3e-5. */
	m0 = mono_ns();
	t0 = sl_ticks();
	do
		m1 = mono_ns();
	while (m1 - m0 < 2000000);
	t1 = sl_ticks();
	if (t1 > t0)
		ns_per_tick = (double)(m1 - m0) / (double)(t1 - t0);
	else
		atomic_store(&sl_ticks_tsc, 0);
}

void
sl_ticks_init(void)
{
	(void)pthread_once(&ticks_once, ticks_calibrate);
}

double
sl_ticks_ns_per_tick(void)
{
	sl_ticks_init();
	return ns_per_tick;
}

/* ---- per-thread buffers ------------------------------------------------- */

static void
tb_exit(void *p)
{
	struct tbuf *t = p;

	tls_tb = NULL;
	atomic_store_explicit(&t->state, TB_DEAD, memory_order_release);
}

static void
tb_key_init(void)
{
	if (pthread_key_create(&tb_key, tb_exit) != 0)
		tb_key = (pthread_key_t)-1;
}

static void
default_name(struct tbuf *t)
{
	char nm[NAME_MAX_];

	if (pthread_getname_np(pthread_self(), nm, sizeof(nm)) != 0)
		nm[0] = '\0';
	pthread_mutex_lock(&g.mu);
	snprintf(t->name, sizeof(t->name), "%s", nm);
	pthread_mutex_unlock(&g.mu);
}

/* A DEAD buffer with no events may be taken at once (threads that named
 * themselves but never recorded must not pile up between traces). */
static bool
adopt(struct tbuf *t)
{
	int s = TB_FREE;

	if (atomic_compare_exchange_strong(&t->state, &s, TB_OWNED))
		return true;
	if (s != TB_DEAD)
		return false;
	pthread_mutex_lock(&g.mu);
	/* Under g.mu: start() (which resets head) cannot run meanwhile. */
	if (t->head == NULL &&
	    atomic_compare_exchange_strong(&t->state, &s, TB_OWNED)) {
		pthread_mutex_unlock(&g.mu);
		return true;
	}
	pthread_mutex_unlock(&g.mu);
	return false;
}

/* The calling thread's buffer: adopt a FREE one or allocate.  NULL on
 * ENOMEM (the event is then lost uncounted). */
static struct tbuf *
tb_get(void)
{
	struct tbuf *t, *head;

	if (tls_tb)
		return tls_tb;
	(void)pthread_once(&tb_once, tb_key_init);
	for (t = atomic_load(&g.threads); t; t = t->next)
		if (adopt(t))
			goto got;
	t = sl_calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	atomic_init(&t->state, TB_OWNED);
	head = atomic_load(&g.threads);
	do
		t->next = head;
	while (!atomic_compare_exchange_weak(&g.threads, &head, t));
got:
	atomic_store_explicit(&t->tid, (int)syscall(SYS_gettid),
			      memory_order_relaxed);
	tls_tb = t;
	if (tb_key != (pthread_key_t)-1)
		(void)pthread_setspecific(tb_key, t);
	default_name(t);
	return t;
}

static struct chunk *
chunk_at(size_t i)
{
	return (struct chunk *)(void *)(g.pool + i * g.chunk_bytes);
}

/* A chunk for the owner's next record, or NULL (pool full, not ring). */
static struct chunk *
next_chunk(struct tbuf *t)
{
	size_t i = atomic_load_explicit(&g.next_chunk, memory_order_relaxed);
	struct chunk *c;

	while (i < g.nchunks &&
	       !atomic_compare_exchange_weak_explicit(&g.next_chunk, &i, i + 1,
						      memory_order_relaxed,
						      memory_order_relaxed))
		;
	if (i < g.nchunks) {
		c = chunk_at(i);
		c->next = NULL;
		atomic_store_explicit(&c->count, 0, memory_order_relaxed);
		if (t->tail)
			t->tail->next = c;
		else
			t->head = c;
		t->tail = c;
		t->n = 0;
		return c;
	}
	if (!g.ring || !t->head)
		return NULL;
	/* Flight recorder: recycle this thread's oldest chunk. */
	c = t->head;
	atomic_store_explicit(
		&t->overwritten,
		atomic_load_explicit(&t->overwritten, memory_order_relaxed) +
			atomic_load_explicit(&c->count, memory_order_relaxed),
		memory_order_relaxed);
	if (c->next) {
		t->head = c->next;
		c->next = NULL;
		t->tail->next = c;
		t->tail = c;
	}
	atomic_store_explicit(&c->count, 0, memory_order_relaxed);
	t->n = 0;
	return c;
}

static void
bump(_Atomic uint64_t *c)
{
	atomic_store_explicit(c,
			      atomic_load_explicit(c, memory_order_relaxed) + 1,
			      memory_order_relaxed);
}

void
sl_trace_rec(unsigned kind, const char *name, uint64_t val, const char *akey,
	     uint32_t aux)
{
	struct tbuf *t = tls_tb;
	struct chunk *c;
	struct rec *r;
	uint64_t ts;

	if (!t && !(t = tb_get()))
		return;
	atomic_store_explicit(&t->busy, 1, memory_order_relaxed);
	if (g.strict)
		atomic_thread_fence(memory_order_seq_cst);
	else
		atomic_signal_fence(memory_order_seq_cst);
	if (!atomic_load_explicit(&sl_trace_on, memory_order_acquire))
		goto out;
	ts = sl_ticks();
	if (ts < t->last_ts)
		ts = t->last_ts;
	t->last_ts = ts;
	c = t->tail;
	if (!c || t->n == g.chunk_recs) {
		c = next_chunk(t);
		if (!c) {
			bump(&t->dropped);
			goto out;
		}
	}
	r = &c->recs[t->n];
	r->ts = ts;
	r->name = name;
	r->akey = akey;
	r->val = val;
	r->kind = kind;
	r->aux = aux;
	t->n++;
	atomic_store_explicit(&c->count, t->n, memory_order_release);
	bump(&t->events);
out:
	atomic_store_explicit(&t->busy, 0, memory_order_release);
}

/* ---- control ------------------------------------------------------------ */

void
sluice_trace_options_init(struct sluice_trace_options *o)
{
	o->buffer_bytes = DEF_POOL;
	o->ring = false;
}

static int
pool_make(size_t bytes)
{
	size_t cb = MAX_CHUNK, i;

	/* At least 16 chunks when the pool allows: a thread that fills its
	 * chunk must find another, and ring mode needs some per thread. */
	while (cb > PAGE_BYTES && bytes / cb < 16)
		cb /= 2;
	if (g.pool && g.pool_bytes == bytes)
		return 0;
	sl_free(g.pool);
	g.pool = sl_malloc(bytes);
	if (!g.pool) {
		g.pool_bytes = 0;
		return SLUICE_ENOMEM;
	}
	for (i = 0; i < bytes; i += PAGE_BYTES)
		g.pool[i] = 0x5a;
	g.pool_bytes = bytes;
	g.chunk_bytes = cb;
	g.nchunks = bytes / cb;
	g.chunk_recs = (cb - sizeof(struct chunk)) / sizeof(struct rec);
	return 0;
}

static void
barrier_setup(void)
{
	if (g.membarrier_ok || g.strict)
		return;
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
		    0, 0) == 0)
		g.membarrier_ok = true;
	else
		g.strict = true;
}

int
sluice_trace_start(const struct sluice_trace_options *o)
{
	struct sluice_trace_options def;
	struct tbuf *t;
	int rc, s;

	if (!o) {
		sluice_trace_options_init(&def);
		o = &def;
	}
	if (o->buffer_bytes < MIN_POOL || o->buffer_bytes > MAX_POOL)
		return SLUICE_EINVAL;
	sl_ticks_init();
	pthread_mutex_lock(&g.mu);
	if (g.running) {
		pthread_mutex_unlock(&g.mu);
		return SLUICE_EBUSY;
	}
	rc = pool_make(o->buffer_bytes);
	if (rc) {
		pthread_mutex_unlock(&g.mu);
		return rc;
	}
	barrier_setup();
	/* Quiescent since the last stop(): no probe is past its check. */
	for (t = atomic_load(&g.threads); t; t = t->next) {
		t->head = t->tail = NULL;
		t->n = 0;
		t->last_ts = 0;
		atomic_store_explicit(&t->events, 0, memory_order_relaxed);
		atomic_store_explicit(&t->dropped, 0, memory_order_relaxed);
		atomic_store_explicit(&t->overwritten, 0, memory_order_relaxed);
		s = TB_DEAD;
		if (atomic_compare_exchange_strong(&t->state, &s, TB_FREE))
			t->name[0] = '\0';
	}
	atomic_store(&g.next_chunk, 0);
	g.ring = o->ring;
	g.running = true;
	g.mono0 = mono_ns();
	g.tk0 = sl_ticks();
	g.tk1 = g.tk0;
	g.mono1 = g.mono0;
	atomic_store_explicit(&sl_trace_on, 1, memory_order_release);
	pthread_mutex_unlock(&g.mu);
	return 0;
}

int
sluice_trace_stop(void)
{
	struct tbuf *t;

	pthread_mutex_lock(&g.mu);
	if (!g.running) {
		pthread_mutex_unlock(&g.mu);
		return SLUICE_ESTATE;
	}
	atomic_store(&sl_trace_on, 0);
	if (g.membarrier_ok &&
	    syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) !=
		    0) {
		/* Cannot happen once registered; if it does, a probe that
		 * missed the store finishes within its few instructions. */
		sched_yield();
	}
	for (t = atomic_load(&g.threads); t; t = t->next)
		while (atomic_load_explicit(&t->busy, memory_order_acquire))
			sched_yield();
	g.tk1 = sl_ticks();
	g.mono1 = mono_ns();
	g.running = false;
	pthread_mutex_unlock(&g.mu);
	return 0;
}

bool
sluice_trace_enabled(void)
{
	return sl_trace_active();
}

void
sluice_trace_stats(struct sluice_trace_stats *out)
{
	struct tbuf *t;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&g.mu);
	for (t = atomic_load(&g.threads); t; t = t->next) {
		uint64_t ev =
			atomic_load_explicit(&t->events, memory_order_relaxed);

		out->dropped +=
			atomic_load_explicit(&t->dropped, memory_order_relaxed);
		out->overwritten += atomic_load_explicit(&t->overwritten,
							 memory_order_relaxed);
		out->events += ev;
		if (ev)
			out->threads++;
	}
	out->events -= out->overwritten;
	out->chunks_used = atomic_load(&g.next_chunk);
	if (out->chunks_used > g.nchunks)
		out->chunks_used = g.nchunks;
	out->chunks_total = g.nchunks;
	out->recording = g.running;
	out->ring = g.ring;
	pthread_mutex_unlock(&g.mu);
}

void
sluice_trace_set_thread_name(const char *name)
{
	struct tbuf *t = tb_get();

	if (!t || !name)
		return;
	pthread_mutex_lock(&g.mu);
	snprintf(t->name, sizeof(t->name), "%s", name);
	pthread_mutex_unlock(&g.mu);
}

void
sluice_trace_begin(const char *name)
{
	sl_tr_begin(name);
}

void
sluice_trace_end(const char *name)
{
	sl_tr_end(name);
}

void
sluice_trace_instant(const char *name)
{
	sl_tr_instant(name, NULL, 0);
}

void
sluice_trace_counter(const char *name, int64_t value)
{
	sl_tr_counter(name, value);
}

/* ---- writing: shared ---------------------------------------------------- */

/* A flow or async record, for matching halves across threads. */
struct half {
	uint64_t id;
	const char *name; /* async: spans match per (id, name) */
	uint64_t ts;
	int kind;
};

struct wctx {
	struct sl_buf *b;
	enum sluice_trace_format fmt;
	int pid;
	double scale; /* ns per tick for this trace */
	struct half *halves;
	size_t nhalves;
	const char **counters; /* distinct counter names (Perfetto) */
	size_t ncounters;
	uint64_t *async_seen; /* Perfetto: journey tracks described */
	size_t nasync_seen;
	bool async_overflow;
};

static int64_t
to_ns(const struct wctx *w, uint64_t ts)
{
	return g.mono0 + (int64_t)((double)(int64_t)(ts - g.tk0) * w->scale);
}

static int
half_cmp(const void *a, const void *b)
{
	const struct half *x = a, *y = b;

	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	if (x->name != y->name)
		return (uintptr_t)x->name < (uintptr_t)y->name ? -1 : 1;
	if (x->ts != y->ts)
		return x->ts < y->ts ? -1 : 1;
	/* On a tie a begin goes first, so a zero-length span balances. */
	return x->kind == SL_TR_ASYNC_BEGIN ? -1 : y->kind == SL_TR_ASYNC_BEGIN;
}

static bool
is_half(uint32_t kind)
{
	return kind == SL_TR_FLOW_OUT || kind == SL_TR_FLOW_IN ||
	       kind == SL_TR_ASYNC_BEGIN || kind == SL_TR_ASYNC_END;
}

/* Iteration over a thread's records, oldest first. */
struct rec_it {
	struct chunk *c;
	uint32_t i;
};

static struct rec *
rec_next(struct rec_it *it)
{
	while (it->c) {
		if (it->i <
		    atomic_load_explicit(&it->c->count, memory_order_acquire))
			return &it->c->recs[it->i++];
		it->c = it->c->next;
		it->i = 0;
	}
	return NULL;
}

static struct rec_it
rec_iter(const struct tbuf *t)
{
	struct rec_it it = { t->head, 0 };

	return it;
}

/*
 * Collect every flow and async half, sort by (id, name, ts) and mark each
 * group matched (flows: an OUT and an IN; async: begins and ends balance
 * in time order) by setting kind to 0 in unmatched ones.
 */
static int
match_halves(struct wctx *w)
{
	struct tbuf *t;
	struct rec_it it;
	struct rec *r;
	size_t n = 0, k, j, cap = 0;

	for (t = atomic_load(&g.threads); t; t = t->next)
		for (it = rec_iter(t); (r = rec_next(&it));)
			if (is_half(r->kind))
				cap++;
	if (cap == 0)
		return 0;
	w->halves = sl_malloc(cap * sizeof(*w->halves));
	if (!w->halves)
		return SLUICE_ENOMEM;
	for (t = atomic_load(&g.threads); t; t = t->next)
		for (it = rec_iter(t); (r = rec_next(&it));) {
			if (!is_half(r->kind) || n == cap)
				continue;
			w->halves[n].id = r->val;
			w->halves[n].name =
				r->kind == SL_TR_FLOW_OUT ||
						r->kind == SL_TR_FLOW_IN
					? NULL
					: r->name;
			w->halves[n].ts = r->ts;
			w->halves[n].kind = (int)r->kind;
			n++;
		}
	w->nhalves = n;
	qsort(w->halves, n, sizeof(*w->halves), half_cmp);
	for (k = 0; k < n; k = j) {
		bool out = false, in = false, ok = true;
		long bal = 0;

		for (j = k; j < n && w->halves[j].id == w->halves[k].id &&
			    w->halves[j].name == w->halves[k].name;
		     j++) {
			switch (w->halves[j].kind) {
			case SL_TR_FLOW_OUT:
				out = true;
				break;
			case SL_TR_FLOW_IN:
				in = true;
				break;
			case SL_TR_ASYNC_BEGIN:
				bal++;
				break;
			default:
				if (--bal < 0)
					ok = false;
				break;
			}
		}
		if (w->halves[k].name == NULL)
			ok = out && in;
		else
			ok = ok && bal == 0;
		if (!ok)
			while (k < j)
				w->halves[k++].kind = 0;
	}
	return 0;
}

/* Whether @r's other halves were recorded too. */
static bool
matched(const struct wctx *w, const struct rec *r)
{
	struct half key = { r->val,
			    r->kind == SL_TR_FLOW_OUT ||
					    r->kind == SL_TR_FLOW_IN
				    ? NULL
				    : r->name,
			    r->ts, (int)r->kind };
	size_t lo = 0, hi = w->nhalves, mid;

	/* Find the first entry of the group, then any of its entries with
	 * this timestamp: unmatched groups were all zeroed together. */
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (w->halves[mid].id < key.id ||
		    (w->halves[mid].id == key.id &&
		     (uintptr_t)w->halves[mid].name < (uintptr_t)key.name))
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < w->nhalves && w->halves[lo].id == key.id &&
	       w->halves[lo].name == key.name && w->halves[lo].kind != 0;
}

/* ---- writing: Chrome JSON ----------------------------------------------- */

static void
json_str(struct sl_buf *b, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	sl_buf_puts(b, "\"");
	for (; *p; p++) {
		if (*p == '"' || *p == '\\')
			sl_buf_printf(b, "\\%c", *p);
		else if (*p < 0x20)
			sl_buf_printf(b, "\\u%04x", *p);
		else
			sl_buf_put(b, p, 1);
	}
	sl_buf_puts(b, "\"");
}

static void
json_head(struct wctx *w, const char *ph, const char *name, int tid,
	  const struct rec *r, bool *first)
{
	struct sl_buf *b = w->b;
	int64_t ns = to_ns(w, r->ts);

	sl_buf_puts(b, *first ? "\n" : ",\n");
	*first = false;
	sl_buf_printf(b,
		      "{\"ph\":\"%s\",\"pid\":%d,\"tid\":%d,\"ts\":%" PRId64
		      ".%03d,\"name\":",
		      ph, w->pid, tid, ns / 1000, (int)(ns % 1000));
	json_str(b, name);
}

static void
json_args(struct sl_buf *b, const struct rec *r)
{
	if (!r->akey)
		return;
	sl_buf_puts(b, ",\"args\":{");
	json_str(b, r->akey);
	sl_buf_printf(b, ":%" PRIu32 "}", r->aux);
}

static void
json_meta(struct wctx *w, const char *what, int tid, const char *name,
	  bool *first)
{
	sl_buf_puts(w->b, *first ? "\n" : ",\n");
	*first = false;
	sl_buf_printf(w->b,
		      "{\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"name\":\"%s\","
		      "\"args\":{\"name\":",
		      w->pid, tid, what);
	json_str(w->b, name);
	sl_buf_puts(w->b, "}}");
}

/* A growable stack of open slice names (for the nesting repair). */
struct stack {
	const char **v;
	size_t n, cap;
	bool failed;
};

static void
push(struct stack *s, const char *name)
{
	if (s->n == s->cap) {
		size_t nc = s->cap ? 2 * s->cap : 16;
		const char **nv = sl_realloc(s->v, nc * sizeof(*nv));

		if (!nv) {
			s->failed = true;
			return;
		}
		s->v = nv;
		s->cap = nc;
	}
	s->v[s->n++] = name;
}

/*
 * The slice-nesting repair shared by both writers: returns whether @r
 * (BEGIN or END) is to be written.  An END with no open slice was cut off
 * by the start; it is skipped.
 */
static bool
nest_ok(struct stack *s, const struct rec *r)
{
	if (r->kind == SL_TR_BEGIN) {
		push(s, r->name);
		return !s->failed;
	}
	if (s->n == 0)
		return false;
	s->n--;
	return true;
}

/*
 * Feed thread @t's events to @emit, the filters both writers share
 * applied: slices repaired for nesting (nest_ok), flow and async halves
 * without a partner left out (matched).  The slices the stop (or a full
 * buffer) left open are closed with an END at the last event's time.
 */
static void
walk_thread(struct wctx *w, struct tbuf *t, struct stack *st,
	    void (*emit)(void *ctx, const struct rec *r), void *ctx)
{
	struct rec_it it = rec_iter(t);
	struct rec *r, last = { 0 };

	st->n = 0;
	while ((r = rec_next(&it))) {
		last = *r;
		switch (r->kind) {
		case SL_TR_BEGIN:
		case SL_TR_END:
			if (nest_ok(st, r))
				emit(ctx, r);
			break;
		case SL_TR_FLOW_OUT:
		case SL_TR_FLOW_IN:
		case SL_TR_ASYNC_BEGIN:
		case SL_TR_ASYNC_END:
			if (matched(w, r))
				emit(ctx, r);
			break;
		case SL_TR_INSTANT:
		case SL_TR_COUNTER:
			emit(ctx, r);
			break;
		default:
			break;
		}
	}
	while (st->n > 0) {
		last.kind = SL_TR_END;
		last.name = st->v[--st->n];
		last.akey = NULL;
		emit(ctx, &last);
	}
}

struct json_ctx {
	struct wctx *w;
	int tid;
	bool *first;
};

static void
json_event(void *ctx, const struct rec *r)
{
	struct json_ctx *c = ctx;
	struct wctx *w = c->w;
	struct sl_buf *b = w->b;

	switch (r->kind) {
	case SL_TR_BEGIN:
	case SL_TR_END:
		json_head(w, r->kind == SL_TR_BEGIN ? "B" : "E", r->name,
			  c->tid, r, c->first);
		if (r->kind == SL_TR_BEGIN)
			json_args(b, r);
		sl_buf_puts(b, "}");
		break;
	case SL_TR_INSTANT:
		json_head(w, "i", r->name, c->tid, r, c->first);
		sl_buf_puts(b, ",\"s\":\"t\"");
		json_args(b, r);
		sl_buf_puts(b, "}");
		break;
	case SL_TR_COUNTER:
		json_head(w, "C", r->name, c->tid, r, c->first);
		sl_buf_printf(b, ",\"args\":{\"value\":%" PRId64 "}}",
			      (int64_t)r->val);
		break;
	case SL_TR_FLOW_OUT:
	case SL_TR_FLOW_IN:
		json_head(w, r->kind == SL_TR_FLOW_OUT ? "s" : "f", r->name,
			  c->tid, r, c->first);
		sl_buf_printf(b,
			      ",\"cat\":\"flow\",\"id\":\"0x%" PRIx64 "\"%s}",
			      r->val,
			      r->kind == SL_TR_FLOW_IN ? ",\"bp\":\"e\"" : "");
		break;
	case SL_TR_ASYNC_BEGIN:
	case SL_TR_ASYNC_END:
		json_head(w, r->kind == SL_TR_ASYNC_BEGIN ? "b" : "e", r->name,
			  c->tid, r, c->first);
		sl_buf_printf(b,
			      ",\"cat\":\"message\",\"id2\":{\"local\":"
			      "\"0x%" PRIx64 "\"}",
			      r->val);
		json_args(b, r);
		sl_buf_puts(b, "}");
		break;
	default:
		break;
	}
}

static void
json_thread(struct wctx *w, struct tbuf *t, bool *first, struct stack *st)
{
	struct json_ctx c = {
		w, atomic_load_explicit(&t->tid, memory_order_relaxed), first
	};

	walk_thread(w, t, st, json_event, &c);
}

static bool
has_events(struct tbuf *t)
{
	return t->head &&
	       atomic_load_explicit(&t->head->count, memory_order_acquire) > 0;
}

static void
write_json(struct wctx *w, struct stack *st)
{
	struct tbuf *t;
	bool first = true;
	char pname[32];

	snprintf(pname, sizeof(pname), "%s", program_invocation_short_name);
	sl_buf_puts(w->b, "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[");
	json_meta(w, "process_name", w->pid, pname, &first);
	for (t = atomic_load(&g.threads); t; t = t->next) {
		if (!has_events(t))
			continue;
		json_meta(w, "thread_name",
			  atomic_load_explicit(&t->tid, memory_order_relaxed),
			  t->name[0] ? t->name : "thread", &first);
	}
	for (t = atomic_load(&g.threads); t; t = t->next)
		json_thread(w, t, &first, st);
	sl_buf_puts(w->b, "\n]}\n");
}

/* ---- writing: Perfetto -------------------------------------------------- */

/* Track uuids: process 1, threads 2.., counters and journeys tagged. */
#define UUID_PROCESS     1u
#define UUID_COUNTER(i)  ((1ull << 62) | (uint64_t)(i))
#define UUID_JOURNEY(id) ((1ull << 63) | ((id) & ~(1ull << 63)))
#define TYPE_SLICE_BEGIN 1
#define TYPE_SLICE_END   2
#define TYPE_INSTANT     3
#define TYPE_COUNTER     4

/* TracePacket fields (perfetto/trace/trace_packet.proto). */
enum {
	F_TRACE_PACKET = 1,
	F_TIMESTAMP = 8,
	F_SEQ_ID = 10,
	F_TRACK_EVENT = 11,
	F_TRACK_DESCRIPTOR = 60,
};
/* TrackEvent, TrackDescriptor, Thread/ProcessDescriptor, DebugAnnotation */
enum {
	F_TE_DEBUG = 4,
	F_TE_TYPE = 9,
	F_TE_TRACK = 11,
	F_TE_NAME = 23,
	F_TE_COUNTER = 30,
	F_TE_FLOW = 47,
	F_TE_FLOW_END = 48,
	F_TD_UUID = 1,
	F_TD_NAME = 2,
	F_TD_PROCESS = 3,
	F_TD_THREAD = 4,
	F_TD_PARENT = 5,
	F_TD_COUNTER = 8,
	F_PD_PID = 1,
	F_PD_NAME = 6,
	F_THD_PID = 1,
	F_THD_TID = 2,
	F_THD_NAME = 5,
	F_DA_UINT = 3,
	F_DA_NAME = 10,
};

static size_t
pkt_begin(struct sl_buf *b, uint32_t seq)
{
	size_t m = sl_pb_begin(b, F_TRACE_PACKET);

	sl_pb_uint(b, F_SEQ_ID, seq);
	return m;
}

static size_t
counter_index(struct wctx *w, const char *name)
{
	size_t i;

	for (i = 0; i < w->ncounters; i++)
		if (w->counters[i] == name)
			return i;
	return SIZE_MAX;
}

static void
pf_descriptors(struct wctx *w, struct sl_buf *b)
{
	struct tbuf *t;
	size_t pk, d, s, i;
	uint64_t uuid = 2;
	char pname[32];

	snprintf(pname, sizeof(pname), "%s", program_invocation_short_name);
	pk = pkt_begin(b, 1);
	d = sl_pb_begin(b, F_TRACK_DESCRIPTOR);
	sl_pb_uint(b, F_TD_UUID, UUID_PROCESS);
	s = sl_pb_begin(b, F_TD_PROCESS);
	sl_pb_uint(b, F_PD_PID, (uint64_t)w->pid);
	sl_pb_string(b, F_PD_NAME, pname);
	sl_pb_end(b, s);
	sl_pb_end(b, d);
	sl_pb_end(b, pk);
	for (t = atomic_load(&g.threads); t; t = t->next, uuid++) {
		if (!has_events(t))
			continue;
		pk = pkt_begin(b, 1);
		d = sl_pb_begin(b, F_TRACK_DESCRIPTOR);
		sl_pb_uint(b, F_TD_UUID, uuid);
		sl_pb_uint(b, F_TD_PARENT, UUID_PROCESS);
		s = sl_pb_begin(b, F_TD_THREAD);
		sl_pb_uint(b, F_THD_PID, (uint64_t)w->pid);
		sl_pb_uint(b, F_THD_TID,
			   (uint64_t)atomic_load_explicit(
				   &t->tid, memory_order_relaxed));
		sl_pb_string(b, F_THD_NAME, t->name[0] ? t->name : "thread");
		sl_pb_end(b, s);
		sl_pb_end(b, d);
		sl_pb_end(b, pk);
	}
	for (i = 0; i < w->ncounters; i++) {
		pk = pkt_begin(b, 1);
		d = sl_pb_begin(b, F_TRACK_DESCRIPTOR);
		sl_pb_uint(b, F_TD_UUID, UUID_COUNTER(i));
		sl_pb_uint(b, F_TD_PARENT, UUID_PROCESS);
		sl_pb_string(b, F_TD_NAME, w->counters[i]);
		sl_pb_end(b, sl_pb_begin(b, F_TD_COUNTER));
		sl_pb_end(b, d);
		sl_pb_end(b, pk);
	}
}

/* Describe journey @id's track the first time it is used. */
static void
pf_journey(struct wctx *w, struct sl_buf *b, uint64_t id)
{
	size_t lo = 0, hi = w->nasync_seen, mid, pk, d;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (w->async_seen[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < w->nasync_seen && w->async_seen[lo] == id)
		return;
	if (w->async_overflow)
		return;
	/* async_seen has room for every distinct async id. */
	memmove(w->async_seen + lo + 1, w->async_seen + lo,
		(w->nasync_seen - lo) * sizeof(*w->async_seen));
	w->async_seen[lo] = id;
	w->nasync_seen++;
	pk = pkt_begin(b, 1);
	d = sl_pb_begin(b, F_TRACK_DESCRIPTOR);
	sl_pb_uint(b, F_TD_UUID, UUID_JOURNEY(id));
	sl_pb_uint(b, F_TD_PARENT, UUID_PROCESS);
	sl_pb_string(b, F_TD_NAME, "message");
	sl_pb_end(b, d);
	sl_pb_end(b, pk);
}

static void
pf_event(struct wctx *w, struct sl_buf *b, uint32_t seq, uint64_t track,
	 int type, const struct rec *r, bool with_name)
{
	size_t pk = pkt_begin(b, seq), te, da;

	sl_pb_uint(b, F_TIMESTAMP, (uint64_t)to_ns(w, r->ts));
	te = sl_pb_begin(b, F_TRACK_EVENT);
	sl_pb_uint(b, F_TE_TYPE, (uint64_t)type);
	sl_pb_uint(b, F_TE_TRACK, track);
	if (with_name)
		sl_pb_string(b, F_TE_NAME, r->name);
	if (type == TYPE_COUNTER)
		sl_pb_int(b, F_TE_COUNTER, (int64_t)r->val);
	if (r->kind == SL_TR_FLOW_OUT)
		sl_pb_fixed64(b, F_TE_FLOW, r->val);
	if (r->kind == SL_TR_FLOW_IN)
		sl_pb_fixed64(b, F_TE_FLOW_END, r->val);
	if (r->akey && type != TYPE_SLICE_END) {
		da = sl_pb_begin(b, F_TE_DEBUG);
		sl_pb_string(b, F_DA_NAME, r->akey);
		sl_pb_uint(b, F_DA_UINT, r->aux);
		sl_pb_end(b, da);
	}
	sl_pb_end(b, te);
	sl_pb_end(b, pk);
}

struct pf_ctx {
	struct wctx *w;
	struct sl_buf *b;
	uint64_t uuid;
	uint32_t seq;
};

static void
pf_thread_event(void *ctx, const struct rec *r)
{
	struct pf_ctx *c = ctx;
	struct wctx *w = c->w;
	struct sl_buf *b = c->b;

	switch (r->kind) {
	case SL_TR_BEGIN:
	case SL_TR_END:
		pf_event(w, b, c->seq, c->uuid,
			 r->kind == SL_TR_BEGIN ? TYPE_SLICE_BEGIN
						: TYPE_SLICE_END,
			 r, r->kind == SL_TR_BEGIN);
		break;
	case SL_TR_INSTANT:
	case SL_TR_FLOW_OUT:
	case SL_TR_FLOW_IN:
		pf_event(w, b, c->seq, c->uuid, TYPE_INSTANT, r, true);
		break;
	case SL_TR_COUNTER:
		pf_event(w, b, c->seq, UUID_COUNTER(counter_index(w, r->name)),
			 TYPE_COUNTER, r, false);
		break;
	case SL_TR_ASYNC_BEGIN:
	case SL_TR_ASYNC_END:
		pf_journey(w, b, r->val);
		pf_event(w, b, c->seq, UUID_JOURNEY(r->val),
			 r->kind == SL_TR_ASYNC_BEGIN ? TYPE_SLICE_BEGIN
						      : TYPE_SLICE_END,
			 r, r->kind == SL_TR_ASYNC_BEGIN);
		break;
	default:
		break;
	}
}

static void
pf_thread(struct wctx *w, struct sl_buf *b, struct tbuf *t, uint64_t uuid,
	  uint32_t seq, struct stack *st)
{
	struct pf_ctx c = { w, b, uuid, seq };

	walk_thread(w, t, st, pf_thread_event, &c);
}

static int
write_perfetto(struct wctx *w, struct stack *st)
{
	struct tbuf *t;
	struct rec_it it;
	struct rec *r;
	uint32_t seq = 2;
	uint64_t uuid = 2;
	size_t cap = 0, i;

	for (t = atomic_load(&g.threads); t; t = t->next)
		for (it = rec_iter(t); (r = rec_next(&it));) {
			if (r->kind == SL_TR_COUNTER &&
			    counter_index(w, r->name) == SIZE_MAX) {
				const char **nc = sl_realloc(
					w->counters,
					(w->ncounters + 1) * sizeof(*nc));

				if (!nc)
					return SLUICE_ENOMEM;
				w->counters = nc;
				w->counters[w->ncounters++] = r->name;
			}
		}
	/* Room for every async id, so pf_journey never reallocates. */
	for (i = 0; i < w->nhalves; i++)
		if (w->halves[i].kind == SL_TR_ASYNC_BEGIN)
			cap++;
	if (cap) {
		w->async_seen = sl_malloc(cap * sizeof(*w->async_seen));
		if (!w->async_seen)
			return SLUICE_ENOMEM;
	}
	pf_descriptors(w, w->b);
	for (t = atomic_load(&g.threads); t; t = t->next, uuid++) {
		if (!has_events(t))
			continue;
		pf_thread(w, w->b, t, uuid, seq++, st);
	}
	return 0;
}

int
sl_trace_write_buf(struct sl_buf *b, enum sluice_trace_format fmt)
{
	struct wctx w;
	struct stack st = { NULL, 0, 0, false };
	int rc;

	if (fmt != SLUICE_TRACE_JSON && fmt != SLUICE_TRACE_PERFETTO)
		return SLUICE_EINVAL;
	memset(&w, 0, sizeof(w));
	w.b = b;
	w.fmt = fmt;
	w.pid = (int)getpid();
	pthread_mutex_lock(&g.mu);
	if (g.running) {
		pthread_mutex_unlock(&g.mu);
		return SLUICE_ESTATE;
	}
	/* The trace's own calibration when it ran long enough to beat the
	 * process-wide one (2 ms), else that one. */
	w.scale = sl_ticks_ns_per_tick();
	if (atomic_load(&sl_ticks_tsc) && g.mono1 - g.mono0 > 20000000 &&
	    g.tk1 > g.tk0)
		w.scale = (double)(g.mono1 - g.mono0) / (double)(g.tk1 - g.tk0);
	if (!atomic_load(&sl_ticks_tsc))
		w.scale = 1.0;
	rc = match_halves(&w);
	if (rc == 0) {
		if (fmt == SLUICE_TRACE_JSON)
			write_json(&w, &st);
		else
			rc = write_perfetto(&w, &st);
	}
	pthread_mutex_unlock(&g.mu);
	sl_free(w.halves);
	sl_free(w.counters);
	sl_free(w.async_seen);
	sl_free(st.v);
	if (rc == 0 && (st.failed || sl_buf_failed(b)))
		rc = SLUICE_ENOMEM;
	return rc;
}

int
sluice_trace_write(enum sluice_trace_format fmt, void **out, size_t *len)
{
	struct sl_buf b;
	int rc;

	*out = NULL;
	*len = 0;
	sl_buf_init(&b);
	rc = sl_trace_write_buf(&b, fmt);
	rc = sl_buf_finish(&b, rc, len);
	if (rc == 0)
		*out = b.data;
	return rc;
}

void
sluice_trace_free(void *p)
{
	sl_free(p);
}

int
sluice_trace_write_file(FILE *f, enum sluice_trace_format fmt)
{
	struct sl_buf b;
	int rc;

	sl_buf_init(&b);
	rc = sl_trace_write_buf(&b, fmt);
	if (rc == 0 && b.len && fwrite(b.data, 1, b.len, f) != b.len)
		rc = SLUICE_EIO;
	if (rc == 0 && fflush(f) != 0)
		rc = SLUICE_EIO;
	sl_buf_free(&b);
	return rc;
}

int
sluice_trace_write_path(const char *path, enum sluice_trace_format fmt)
{
	FILE *f = fopen(path, "wb");
	int rc, err;

	if (!f) {
		err = errno;
		return -err;
	}
	rc = sluice_trace_write_file(f, fmt);
	if (fclose(f) != 0 && rc == 0)
		rc = SLUICE_EIO;
	return rc;
}
