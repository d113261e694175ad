/* SPDX-License-Identifier: MIT */
/*
 * engine.c - workers, credit, deadlines, settlement and the graceful drain.
 *
 * Threads.  N workers pull from the source themselves (no dispatcher hop);
 * one watchdog thread enforces deadlines and the drain deadline.
 *
 * Credit.  `held` counts messages fetched and not yet released.  A worker
 * reserves credit with a CAS before it fetches, so held never exceeds
 * max_in_flight; unused credit is returned right after the fetch.  Workers
 * that find no credit wait on credit_cv.
 *
 * Units.  A worker runs one unit at a time: one message (concurrent mode) or
 * one batch.  It publishes the unit in its slot (msgs, n, deadline) and then
 * sets slot.claim to the unit's context generation.  Whoever clears claim
 * with a CAS settles the unit: the worker when the handler returns, or the
 * watchdog at the deadline (TIMEOUT) or the drain deadline (handed back).
 * The watchdog settles under slot_mu; a worker that loses the CAS takes
 * slot_mu once to wait until that settlement is complete, then only
 * releases the messages and drops the handler's late result.
 *
 * Settling.  Acks collect in a per-worker buffer and go to the source in one
 * call per fetched batch, before that batch is released (release may free
 * what ack reads).  Requeues and dead-letter writes happen at once.
 *
 * Counters are per worker (written only by their owner: relaxed load+store,
 * no read-modify-write on shared lines) and summed by sluice_engine_stats().
 *
 * Observability.  Trace probes (obs/trace_int.h) cost one relaxed load each
 * while no trace records.  Histograms (handler latency, queue wait, fetch
 * and batch sizes) are per-worker arrays written only by their worker with
 * relaxed load + store and summed when the metrics render; latencies are
 * TSC ticks (sl_ticks), converted at render.  The in-flight table is a
 * per-worker seqlock (fr_*): the worker copies the running unit's message
 * ids, attempts and times into its slot between two stores of an odd/even
 * sequence, and a reader copies and retries until the sequence was even
 * and unchanged.  A seqlock rather than slot_mu, because the worker never
 * takes slot_mu on the hot path (the claim CAS decides settlement) and so
 * the lock would not stop it from releasing a message under a reader; the
 * copy never points into source memory.  The failure ring is a fixed array
 * of seqlocked entries claimed with fetch_add (failures only).
 *
 * Lock order: e->mu and a slot_mu are never held together; credit_mu is a
 * leaf.  No user callback runs under e->mu or credit_mu; the dead-letter sink
 * may run under a slot_mu, which only that slot's worker ever waits for.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include <sluice/engine.h>
#include <sluice/metrics.h>

#include "core/clock_int.h"
#include "obs/contention.h"
#include "obs/pb.h"
#include "obs/threads.h"
#include "obs/trace_int.h"
#include "util/alloc.h"

enum { RUNNING = 0, DRAINING = 1, FINISHED = 2 };

/* Values of worker.take besides indexes; far from SIZE_MAX so fetch_add
 * past them cannot wrap. */
#define TAKE_IDLE   (SIZE_MAX / 4)
#define TAKE_STOLEN (SIZE_MAX / 2)

struct stats_shard {
	_Atomic uint64_t delivered, handled, requeued, dead_lettered, timeouts,
		temporary, permanent, canceled, expired_waiting, exhausted,
		handed_back, dlq_failed, ack_failed, batches, max_batch;
};

/* Histogram bounds: latencies in seconds (converted to ticks per engine)
 * and sizes in messages. */
static const double lat_bounds[] = { 1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05,
				     0.1,  0.5,  1.0,  5.0,  10.0, 30.0 };
static const double size_bounds[] = { 1,  2,   4,   8,   16,  32,
				      64, 128, 256, 512, 1024 };
#define NLAT  (sizeof(lat_bounds) / sizeof(lat_bounds[0]))
#define NSIZE (sizeof(size_bounds) / sizeof(size_bounds[0]))

/* One worker's histogram: non-cumulative buckets and the sum (ticks or
 * messages); written by that worker only (relaxed load + store). */
struct hist {
	_Atomic uint64_t b[NLAT + 1];
	_Atomic uint64_t sum;
};

/* The in-flight table's slot of one worker; see "Observability" above. */
#define FR_MAX   16 /* rows kept per unit (a batch shows its first 16) */
#define ID_WORDS (SLUICE_MSG_ID_MAX / 8)
struct fr_msg {
	_Atomic uint64_t id[ID_WORDS];
	_Atomic uint32_t id_len, attempts;
};
struct fr_slot {
	_Atomic uint64_t seq;     /* odd while the worker writes */
	_Atomic uint32_t n;       /* messages in the running unit, 0 = none */
	_Atomic int64_t since_ns; /* engine clock: when they were fetched */
	_Atomic int64_t deadline; /* engine clock, or SLUICE_FOREVER */
	struct fr_msg m[FR_MAX];
};

/* The last failures, newest at fail_head - 1. */
#define FAIL_RING  64
#define FAIL_WORDS 16 /* error text kept: 128 bytes */
struct fail_ent {
	_Atomic uint64_t seq; /* odd while a settler writes */
	_Atomic int64_t at_ns;
	_Atomic uint32_t attempts, cls, id_len, text_len;
	_Atomic uint64_t id[ID_WORDS];
	_Atomic uint64_t text[FAIL_WORDS];
};

/* Everything settle() needs from the thread that settles. */
struct settler {
	struct sluice_engine *e;
	struct worker *w; /* NULL on the watchdog and in stop() */
	struct stats_shard *st;
	struct sluice_rng rng;
	struct sluice_msg **acks; /* pending acks, flushed before release */
	size_t nacks, acks_cap;
};

struct worker {
	struct sluice_engine *e;
	pthread_t thread;
	unsigned index;
	bool started;
	struct sluice_ctx ctx; /* child of e->root, rearmed per unit */

	/* The unit the watchdog may settle.  claim is the unit's ctx
	 * generation, 0 when idle; msgs/n/deadline are written before claim
	 * is set (release) and read after it is seen (acquire). */
	_Alignas(64) _Atomic uint64_t claim;
	_Atomic int64_t deadline_ns;
	struct sluice_msg *const *unit_msgs;
	size_t unit_n;
	pthread_mutex_t slot_mu; /* held by the watchdog while it settles */

	/* Concurrent mode's fetched-but-unstarted messages.  take is the
	 * next index of buf to start, TAKE_IDLE between fetches, or
	 * TAKE_STOLEN once a drain took the rest.  The owner claims an index
	 * with fetch_add; an idle sibling steals one the same way, holding
	 * slot_mu; a drain takes all the rest with exchange, holding slot_mu.
	 * The owner leaves a fetch (back to IDLE) under slot_mu, so no thief
	 * or drain can still be reading buf when it fetches again.  avail and
	 * fetch_deadline are written before take leaves IDLE. */
	_Atomic size_t take;
	_Atomic size_t avail; /* relaxed: ordered by take and slot_mu */
	int64_t fetch_deadline;
	struct sluice_msg **own; /* what the owner ran: it releases these */
	size_t nown;
	struct sluice_msg *stolen; /* the unit a thief runs */
	uint64_t seen_gen;         /* watchdog only: claim at its last scan */
	/* Credit reserved for a fetch in progress (not yet messages); stats
	 * subtract it from e->held.  Relaxed: a statistic. */
	_Atomic size_t fetching;

	struct settler s;
	struct stats_shard st;
	struct sluice_msg **buf; /* fetched messages (and batch carry) */
	size_t bufcap;
	int64_t *recv_ns;           /* batch mode: receipt time per message */
	uint64_t *recv_tk;          /* batch mode: the same in ticks */
	struct sluice_error **errs; /* batch mode outcomes */
	uint64_t fetch_tk;          /* ticks at the fetch; as fetch_deadline */
	int64_t fetch_ns; /* engine clock at the fetch; as fetch_deadline */

	/* Observability (owner-written; see the top of the file). */
	_Atomic(const char *) stage; /* relaxed; static string */
	struct hist lat, wait, fetched, batch;
	struct fr_slot fr;
};

struct sluice_engine {
	struct sluice_engine_config cfg;
	struct sluice_source src;
	struct sluice_handler handler;
	struct sluice_batch_handler batch;
	struct sluice_dlq dlq;
	bool has_dlq;
	const struct sluice_clock *clock;
	size_t max_in_flight;
	size_t fetch_cap; /* most one worker takes per fetch */

	struct sluice_ctx root;

	_Atomic size_t held;     /* credit in use; CAS only */
	_Atomic size_t max_held; /* high-water mark */
	pthread_mutex_t credit_mu;
	pthread_cond_t credit_cv;
	struct sl_clock_watch credit_watch;
	_Atomic unsigned credit_waiters; /* guarded by credit_mu for writes */

	/* Workers blocked in fetch.  seq_cst with worker.take: a worker that
	 * is about to block looks for work to steal after announcing itself,
	 * and a worker that fetched several messages wakes the fetchers
	 * after publishing them, so one of the two always sees the other. */
	_Atomic unsigned idle_fetchers;
	_Atomic int phase;       /* RUNNING, DRAINING, FINISHED */
	pthread_mutex_t idle_mu; /* guards leader, parked, idle_kicks */
	pthread_cond_t idle_cv;  /* parked workers; see park() */
	bool leader;             /* a worker is blocked in the source */
	unsigned parked;
	_Atomic unsigned nparked; /* copy of parked for lock-free looks */
	unsigned idle_kicks;      /* bumped to release parked workers */
	_Atomic bool source_closed;

	pthread_mutex_t mu; /* guards the fields below */
	pthread_cond_t cv;  /* watchdog wakeups; worker exits */
	struct sl_clock_watch watch;
	int64_t drain_deadline_ns; /* valid when phase >= DRAINING */
	unsigned stop_seq;         /* bumped by every stop(): the watchdog
				      re-checks before it sleeps */
	bool drain_cancelled;      /* root cancelled, units handed back */
	unsigned live_workers;
	bool watchdog_started, joined, closed_source;
	pthread_t watchdog;

	struct worker **workers;
	unsigned nworkers;
	struct settler wd; /* the watchdog's settler */
	struct stats_shard wd_st;
	struct metric_ud *metric_uds; /* sluice_engine_export_metrics() */
	struct hist_ud *hist_uds;     /* sluice_engine_export_metrics() */
	pthread_mutex_t steal_mu;     /* serialises steal_unstarted() callers */
	struct settler stealer;       /* guarded by steal_mu */
	struct stats_shard steal_st;

	uint64_t lat_tk[NLAT]; /* lat_bounds in ticks; immutable */
	double ns_per_tick;    /* immutable */
	/* sluice_handler_errors_total{class}: set once by export (release),
	 * bumped on failures only (sharded relaxed add). */
	_Atomic(struct sluice_counter *) class_ctr[SLUICE_CLASS_COUNT];
	_Atomic uint64_t fail_head; /* fetch_add by settlers */
	struct fail_ent fails[FAIL_RING];
};

/* ---- small helpers ------------------------------------------------------ */

static inline void
bump(_Atomic uint64_t *c, uint64_t n)
{
	/* Single writer per shard: a plain load+store is enough and avoids a
	 * locked instruction on the hot path. */
	atomic_store_explicit(c,
			      atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

static inline void
raise_max(_Atomic uint64_t *c, uint64_t v)
{
	if (v > atomic_load_explicit(c, memory_order_relaxed))
		atomic_store_explicit(c, v, memory_order_relaxed);
}

static inline int64_t
now_ns(const struct sluice_engine *e)
{
	return sluice_clock_now_ns(e->clock);
}

/* Whether @deadline has passed; reads the precise clock only near it. */
static inline bool
past(const struct sluice_engine *e, int64_t deadline)
{
	if (deadline == SLUICE_FOREVER ||
	    sl_clock_upper_ns(e->clock) < deadline)
		return false;
	return now_ns(e) >= deadline;
}

static inline int64_t
min_deadline(int64_t a, int64_t b)
{
	if (a == SLUICE_FOREVER)
		return b;
	if (b == SLUICE_FOREVER)
		return a;
	return a < b ? a : b;
}

/* ---- observability helpers ---------------------------------------------- */

static inline void
set_stage(struct worker *w, const char *stage)
{
	sl_thread_set_stage(stage);
	atomic_store_explicit(&w->stage, stage, memory_order_relaxed);
}

static inline void
hist_add(struct hist *h, size_t i, uint64_t v)
{
	bump(&h->b[i], 1);
	bump(&h->sum, v);
}

static inline void
observe_ticks(const struct sluice_engine *e, struct hist *h, uint64_t tk)
{
	size_t i = 0;

	while (i < NLAT && tk > e->lat_tk[i])
		i++;
	hist_add(h, i, tk);
}

static inline void
observe_size(struct hist *h, uint64_t n)
{
	size_t i = 0;

	while (i < NSIZE && (double)n > size_bounds[i])
		i++;
	hist_add(h, i, n);
}

/* Copy @len (<= 8 * @nwords) bytes into / out of relaxed atomic words.
 * Word by word with fixed-size copies: on the hot path (ids) a library
 * memcpy of variable length cost more than the rest of the slot. */
static inline void
words_put(_Atomic uint64_t *dst, size_t nwords, const void *src, size_t len)
{
	const unsigned char *p = src;
	uint64_t v;
	size_t i, k;

	if (len > nwords * 8)
		len = nwords * 8;
	for (i = 0; i + 8 <= len; i += 8) {
		memcpy(&v, p + i, 8);
		atomic_store_explicit(&dst[i / 8], v, memory_order_relaxed);
	}
	if (i < len) {
		v = 0;
		for (k = 0; i + k < len; k++)
			v |= (uint64_t)p[i + k] << (8 * k);
		atomic_store_explicit(&dst[i / 8], v, memory_order_relaxed);
	}
}

static void
words_get(void *dst, const _Atomic uint64_t *src, size_t nwords, size_t len)
{
	unsigned char *p = dst;
	uint64_t v;
	size_t i, k;

	if (len > nwords * 8)
		len = nwords * 8;
	for (i = 0; i + 8 <= len; i += 8) {
		v = atomic_load_explicit(&src[i / 8], memory_order_relaxed);
		memcpy(p + i, &v, 8);
	}
	if (i < len) {
		v = atomic_load_explicit(&src[i / 8], memory_order_relaxed);
		for (k = 0; i + k < len; k++)
			p[i + k] = (unsigned char)(v >> (8 * k));
	}
}

/* Publish the unit @w now runs in its in-flight slot (owner only). */
static inline void
fr_publish(struct worker *w, struct sluice_msg *const *msgs, size_t n,
	   int64_t since_ns, int64_t deadline)
{
	struct fr_slot *f = &w->fr;
	uint64_t seq = atomic_load_explicit(&f->seq, memory_order_relaxed);
	size_t i;

	atomic_store_explicit(&f->seq, seq + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&f->n, (uint32_t)n, memory_order_relaxed);
	atomic_store_explicit(&f->since_ns, since_ns, memory_order_relaxed);
	atomic_store_explicit(&f->deadline, deadline, memory_order_relaxed);
	for (i = 0; i < n && i < FR_MAX; i++) {
		words_put(f->m[i].id, ID_WORDS, msgs[i]->id, msgs[i]->id_len);
		atomic_store_explicit(&f->m[i].id_len, msgs[i]->id_len,
				      memory_order_relaxed);
		atomic_store_explicit(&f->m[i].attempts, msgs[i]->attempts,
				      memory_order_relaxed);
	}
	atomic_store_explicit(&f->seq, seq + 2, memory_order_release);
}

static void
fr_clear(struct worker *w)
{
	struct fr_slot *f = &w->fr;
	uint64_t seq = atomic_load_explicit(&f->seq, memory_order_relaxed);

	atomic_store_explicit(&f->seq, seq + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&f->n, 0, memory_order_relaxed);
	atomic_store_explicit(&f->seq, seq + 2, memory_order_release);
}

/* A failed settlement: the class counter and the failure ring. */
static void
note_failure(struct sluice_engine *e, const struct sluice_msg *m,
	     enum sluice_class cls, const struct sluice_error *err)
{
	struct sluice_counter *c =
		atomic_load_explicit(&e->class_ctr[cls], memory_order_acquire);
	uint64_t i = atomic_fetch_add_explicit(&e->fail_head, 1,
					       memory_order_relaxed);
	struct fail_ent *f = &e->fails[i % FAIL_RING];
	uint64_t seq = atomic_load_explicit(&f->seq, memory_order_relaxed);
	const char *text = sluice_error_msg(err);
	size_t tlen = text ? strlen(text) : 0;

	if (c)
		sluice_counter_inc(c);
	/* Another settler still writing this entry (64 failures later):
	 * let it finish; this failure is only counted. */
	if ((seq & 1) || !atomic_compare_exchange_strong_explicit(
				 &f->seq, &seq, seq + 1, memory_order_relaxed,
				 memory_order_relaxed))
		return;
	atomic_thread_fence(memory_order_release);
	if (tlen > FAIL_WORDS * 8)
		tlen = FAIL_WORDS * 8;
	atomic_store_explicit(&f->at_ns, now_ns(e), memory_order_relaxed);
	atomic_store_explicit(&f->attempts, m->attempts, memory_order_relaxed);
	atomic_store_explicit(&f->cls, (uint32_t)cls, memory_order_relaxed);
	atomic_store_explicit(&f->id_len, m->id_len, memory_order_relaxed);
	atomic_store_explicit(&f->text_len, (uint32_t)tlen,
			      memory_order_relaxed);
	words_put(f->id, ID_WORDS, m->id, m->id_len);
	if (tlen)
		words_put(f->text, FAIL_WORDS, text, tlen);
	atomic_store_explicit(&f->seq, seq + 2, memory_order_release);
}

/* A delivery's id in traces: unique among the deliveries in flight (the
 * source keeps a message's memory until release) and, through the lease
 * and attempt, across redeliveries. */
static inline uint64_t
jid(const struct sluice_msg *m)
{
	uint64_t x = (uint64_t)(uintptr_t)m ^
		     (m->lease * 0x9e3779b97f4a7c15ull) ^
		     ((uint64_t)m->attempts << 48);

	return x ? x : 1;
}

/* Fetched: the flow to the handler starts and the journey begins. */
static void
tr_received(struct sluice_msg *const *msgs, size_t n)
{
	size_t i;

	if (!sl_trace_active())
		return;
	for (i = 0; i < n; i++) {
		uint64_t id = jid(msgs[i]);

		sl_tr_flow_out("handoff", id);
		sl_tr_async_begin("message", id, "attempt", msgs[i]->attempts);
		sl_tr_async_begin("queued", id, NULL, 0);
	}
}

/* Leaves the queued state: to a handler (@started) or settled unstarted. */
static void
tr_dequeued(struct sluice_msg *const *msgs, size_t n, bool started)
{
	size_t i;

	if (!sl_trace_active())
		return;
	for (i = 0; i < n; i++) {
		uint64_t id = jid(msgs[i]);

		sl_tr_async_end("queued", id);
		if (started) {
			sl_tr_flow_in("handoff", id);
			sl_tr_async_begin("handler", id, NULL, 0);
		}
	}
}

static void
tr_handled(struct sluice_msg *const *msgs, size_t n)
{
	size_t i;

	if (!sl_trace_active())
		return;
	for (i = 0; i < n; i++)
		sl_tr_async_end("handler", jid(msgs[i]));
}

/* The settlement, a zero-length span inside the journey. */
static inline void
tr_outcome(const char *what, const struct sluice_msg *m)
{
	if (sl_trace_active()) {
		sl_tr_async_begin(what, jid(m), NULL, 0);
		sl_tr_async_end(what, jid(m));
	}
}

static void tr_counters(struct sluice_engine *e);

static void
tr_released(struct sluice_engine *e, struct sluice_msg *const *msgs, size_t n)
{
	size_t i;

	if (!sl_trace_active())
		return;
	for (i = 0; i < n; i++)
		sl_tr_async_end("message", jid(msgs[i]));
	tr_counters(e);
}

static uint64_t
random_seed(void)
{
	uint64_t s = 0;

	if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
		s = (uint64_t)sl_mono_ns() ^ (uint64_t)(uintptr_t)&s;
	return s;
}

void
sluice_engine_config_init(struct sluice_engine_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->mode = SLUICE_MODE_CONCURRENT;
	cfg->workers = 4;
	cfg->prefetch = SLUICE_PREFETCH_AUTO;
	cfg->batch_max = 100;
	cfg->batch_max_bytes = 0;
	cfg->batch_wait_ns = 50 * SLUICE_NS_PER_MS;
	cfg->timeout_ns = 30 * SLUICE_NS_PER_S;
	cfg->drain_timeout_ns = 30 * SLUICE_NS_PER_S;
	cfg->retry = sluice_backoff_default();
}

/* ---- credit ------------------------------------------------------------- */

/* Reserve up to @want credits; returns how many (possibly 0). */
static size_t
credit_take(struct sluice_engine *e, size_t want)
{
	size_t held = atomic_load_explicit(&e->held, memory_order_relaxed);
	size_t n;

	do {
		if (held >= e->max_in_flight)
			return 0;
		n = e->max_in_flight - held;
		if (n > want)
			n = want;
	} while (!atomic_compare_exchange_weak_explicit(
		&e->held, &held, held + n, memory_order_acq_rel,
		memory_order_relaxed));
	if (held + n > atomic_load_explicit(&e->max_held, memory_order_relaxed))
		atomic_store_explicit(&e->max_held, held + n,
				      memory_order_relaxed);
	return n;
}

static void
credit_give(struct sluice_engine *e, size_t n)
{
	if (n == 0)
		return;
	unsigned waiters;

	atomic_fetch_sub(&e->held, n);
	waiters = atomic_load(&e->credit_waiters);
	if (waiters) {
		/* Wake as many as the freed credit can serve. */
		pthread_mutex_lock(&e->credit_mu);
		if (n >= waiters)
			pthread_cond_broadcast(&e->credit_cv);
		else
			while (n--)
				pthread_cond_signal(&e->credit_cv);
		pthread_mutex_unlock(&e->credit_mu);
	}
}

/* Block until some credit may be free, or the engine stops running.
 * Spurious returns are fine: the caller retries credit_take. */
static void
credit_wait(struct sluice_engine *e)
{
	pthread_mutex_lock(&e->credit_mu);
	/* seq_cst pairs with credit_give(): either it sees this waiter or
	 * this sees the credit it returned. */
	atomic_fetch_add(&e->credit_waiters, 1);
	if (atomic_load(&e->held) >= e->max_in_flight &&
	    atomic_load_explicit(&e->phase, memory_order_acquire) == RUNNING) {
		int64_t t0 = sl_block_begin();

		sl_tr_begin("credit-wait");
		pthread_cond_wait(&e->credit_cv, &e->credit_mu);
		sl_tr_end("credit-wait");
		sl_block_end(t0);
	}
	atomic_fetch_sub_explicit(&e->credit_waiters, 1, memory_order_acq_rel);
	pthread_mutex_unlock(&e->credit_mu);
}

/* ---- settlement --------------------------------------------------------- */

static void
flush_acks(struct settler *s)
{
	struct sluice_engine *e = s->e;
	int refused;

	if (s->nacks == 0)
		return;
	if (s->w)
		set_stage(s->w, "ack");
	sl_tr_begin_arg("ack", "n", (uint32_t)s->nacks);
	refused = e->src.ops->ack(e->src.self, s->acks, s->nacks);
	sl_tr_end("ack");
	if (refused > 0)
		bump(&s->st->ack_failed, (uint64_t)refused);
	else if (refused < 0)
		bump(&s->st->ack_failed, s->nacks);
	s->nacks = 0;
}

static void
queue_ack(struct settler *s, struct sluice_msg *m)
{
	if (s->nacks == s->acks_cap)
		flush_acks(s);
	s->acks[s->nacks++] = m;
}

static void
requeue(struct settler *s, struct sluice_msg *m, int64_t delay_ns,
	bool count_attempt)
{
	struct sluice_engine *e = s->e;

	if (s->w)
		set_stage(s->w, "requeue");
	sl_tr_begin_arg("requeue", "delay_ms",
			(uint32_t)(delay_ns / SLUICE_NS_PER_MS));
	if (e->src.ops->requeue(e->src.self, m, delay_ns, count_attempt) < 0)
		bump(&s->st->ack_failed, 1);
	sl_tr_end("requeue");
	bump(&s->st->requeued, 1);
}

/* Hand an unstarted or interrupted message back without counting it. */
static void
hand_back(struct settler *s, struct sluice_msg *m)
{
	tr_outcome("hand-back", m);
	requeue(s, m, 0, false);
	bump(&s->st->handed_back, 1);
}

static void
dead_letter(struct settler *s, struct sluice_msg *m,
	    const struct sluice_error *why)
{
	struct sluice_engine *e = s->e;
	int rc = -1;

	tr_outcome("dead-letter", m);
	if (e->has_dlq) {
		if (s->w)
			set_stage(s->w, "dead-letter");
		sl_tr_begin("dead-letter");
		rc = e->dlq.ops->write(e->dlq.self, e->src.ops->name, m, why);
		sl_tr_end("dead-letter");
	}
	if (rc == 0) {
		queue_ack(s, m);
		bump(&s->st->dead_lettered, 1);
		return;
	}
	/* No sink, or it failed: the message must not be lost, so it stays
	 * with the source and comes back after the longest delay. */
	bump(&s->st->dlq_failed, 1);
	requeue(s, m, e->cfg.retry.max_ns, true);
}

/*
 * Decide a message's fate from its handler's result (@err is borrowed).
 * Runs on the worker or, for timeouts and drain, on the watchdog.
 */
static void
settle(struct settler *s, struct sluice_msg *m, const struct sluice_error *err)
{
	struct sluice_engine *e = s->e;
	enum sluice_class cls = sluice_error_class(err);
	struct sluice_error *why;

	if (cls != SLUICE_CLASS_OK)
		note_failure(e, m, cls, err);
	switch (cls) {
	case SLUICE_CLASS_OK:
		tr_outcome("ack", m);
		queue_ack(s, m);
		bump(&s->st->handled, 1);
		return;
	case SLUICE_CLASS_CANCELED:
		bump(&s->st->canceled, 1);
		hand_back(s, m);
		return;
	case SLUICE_CLASS_PERMANENT:
		bump(&s->st->permanent, 1);
		dead_letter(s, m, err);
		return;
	case SLUICE_CLASS_TIMEOUT:
		bump(&s->st->timeouts, 1);
		break;
	case SLUICE_CLASS_TEMPORARY:
	default:
		bump(&s->st->temporary, 1);
		break;
	}
	if (sluice_backoff_should_retry(&e->cfg.retry, cls, m->attempts)) {
		tr_outcome("retry", m);
		requeue(s, m,
			sluice_backoff_retry_delay_ns(
				&e->cfg.retry, m->attempts, err, &s->rng),
			true);
		return;
	}
	bump(&s->st->exhausted, 1);
	why = sluice_error_new(cls, SLUICE_CODE_EXHAUSTED,
			       "gave up after %u attempts: %s", m->attempts,
			       sluice_error_msg(err));
	dead_letter(s, m, why);
	sluice_error_free(why);
}

static struct sluice_error *
timeout_error(const struct sluice_engine *e)
{
	return sluice_error_new(
		SLUICE_CLASS_TIMEOUT, SLUICE_ETIMEDOUT,
		"handler overran its %lld ms deadline",
		(long long)(e->cfg.timeout_ns / SLUICE_NS_PER_MS));
}

/* ---- units: publish, claim, finish -------------------------------------- */

static uint64_t
unit_begin(struct worker *w, struct sluice_msg *const *msgs, size_t n,
	   int64_t deadline_ns)
{
	uint64_t gen = sluice_ctx_rearm(&w->ctx, deadline_ns);

	w->unit_msgs = msgs;
	w->unit_n = n;
	atomic_store_explicit(&w->deadline_ns, deadline_ns,
			      memory_order_relaxed);
	atomic_store_explicit(&w->claim, gen, memory_order_release);
	return gen;
}

/* Returns true if the worker still owns the unit's settlement. */
static bool
unit_end(struct worker *w, uint64_t gen)
{
	uint64_t expect = gen;

	if (atomic_compare_exchange_strong_explicit(&w->claim, &expect, 0,
						    memory_order_acq_rel,
						    memory_order_acquire))
		return true;
	/* The watchdog claimed it; wait until it has finished settling. */
	pthread_mutex_lock(&w->slot_mu);
	pthread_mutex_unlock(&w->slot_mu);
	return false;
}

/*
 * Watchdog side: settle @w's unit if it is still generation @gen.
 * @interrupt: true at the drain deadline (hand back, no attempt counted),
 * false at the unit's own deadline (TIMEOUT).
 */
static void
unit_expire(struct sluice_engine *e, struct worker *w, uint64_t gen,
	    bool interrupt)
{
	uint64_t expect = gen;
	struct sluice_error *err;
	size_t i;

	pthread_mutex_lock(&w->slot_mu);
	if (!atomic_compare_exchange_strong_explicit(&w->claim, &expect, 0,
						     memory_order_acq_rel,
						     memory_order_acquire)) {
		pthread_mutex_unlock(&w->slot_mu);
		return;
	}
	/* Settle first, cancel second: by the time the handler sees its
	 * context done, its messages are already back with the source. */
	sl_tr_begin_arg(interrupt ? "interrupt" : "expire", "worker", w->index);
	if (interrupt) {
		for (i = 0; i < w->unit_n; i++)
			hand_back(&e->wd, w->unit_msgs[i]);
	} else {
		err = timeout_error(e);
		for (i = 0; i < w->unit_n; i++)
			settle(&e->wd, w->unit_msgs[i], err);
		sluice_error_free(err);
	}
	flush_acks(&e->wd);
	sl_tr_end(interrupt ? "interrupt" : "expire");
	sluice_ctx_cancel_gen(&w->ctx, gen,
			      interrupt ? SLUICE_CANCEL_SHUTDOWN
					: SLUICE_CANCEL_DEADLINE);
	pthread_mutex_unlock(&w->slot_mu);
}

/* Ack what is pending, then give the messages and their credit back. */
static void
release_all(struct worker *w, struct sluice_msg **msgs, size_t n)
{
	struct sluice_engine *e = w->e;

	flush_acks(&w->s);
	if (n == 0)
		return;
	tr_released(e, msgs, n);
	e->src.ops->release(e->src.self, msgs, n);
	credit_give(e, n);
}

static bool
is_running(const struct sluice_engine *e)
{
	return atomic_load_explicit(&e->phase, memory_order_acquire) == RUNNING;
}

/* ---- concurrent mode ---------------------------------------------------- */

/*
 * The handler returned: settle with its result, unless the watchdog already
 * settled the unit or the deadline passed meanwhile (a late result is
 * discarded either way).  Frees @err.  Returns whether the deadline had
 * passed.
 */
static bool
finish_unit(struct worker *w, uint64_t gen, struct sluice_msg *const *msgs,
	    size_t n, struct sluice_error *err, struct sluice_error **errs,
	    int64_t deadline)
{
	struct sluice_engine *e = w->e;
	struct sluice_error *late = NULL;
	size_t i;

	if (past(e, deadline))
		late = timeout_error(e);
	if (unit_end(w, gen)) {
		for (i = 0; i < n; i++)
			settle(&w->s, msgs[i],
			       late   ? late
			       : err  ? err
			       : errs ? errs[i]
				      : NULL);
	}
	sluice_error_free(late);
	sluice_error_free(err);
	return late != NULL;
}

/* Settle @m as a TIMEOUT without running it. */
static void
expire_unstarted(struct worker *w, struct sluice_msg *m)
{
	struct sluice_error *err = timeout_error(w->e);

	tr_dequeued(&m, 1, false);
	bump(&w->st.expired_waiting, 1);
	settle(&w->s, m, err);
	sluice_error_free(err);
}

/*
 * Run one message as a unit on @w; *@slot must stay put until it returns.
 * Returns whether its deadline had passed when it finished.
 * *@tk: in, the ticks when this message starts (the caller's last reading:
 * the fetch, or the previous message's end, so a run of messages reads
 * the TSC once per message); out, the ticks when its handler returned.
 */
static bool
run_message(struct worker *w, struct sluice_msg *const *slot, int64_t deadline,
	    uint64_t fetch_tk, int64_t fetch_ns, uint64_t *tk)
{
	struct sluice_engine *e = w->e;
	uint64_t gen = unit_begin(w, slot, 1, deadline), t0 = *tk, t1;
	struct sluice_error *err;
	bool late;

	fr_publish(w, slot, 1, fetch_ns, deadline);
	set_stage(w, "handler");
	sl_tr_begin_arg("handler", "attempt", (*slot)->attempts);
	tr_dequeued(slot, 1, true);
	err = e->handler.fn(e->handler.ud, &w->ctx, *slot);
	t1 = sl_ticks();
	*tk = t1;
	tr_handled(slot, 1);
	sl_tr_end("handler");
	observe_ticks(e, &w->lat, t1 - t0);
	observe_ticks(e, &w->wait, t0 > fetch_tk ? t0 - fetch_tk : 0);
	late = finish_unit(w, gen, slot, 1, err, NULL, deadline);
	fr_clear(w);
	return late;
}

/* Leave the current fetch: take back to IDLE unless a drain stole it. */
static void
close_fetch(struct worker *w)
{
	size_t t;

	pthread_mutex_lock(&w->slot_mu);
	t = atomic_load_explicit(&w->take, memory_order_relaxed);
	if (t < TAKE_STOLEN)
		atomic_store(&w->take, TAKE_IDLE);
	pthread_mutex_unlock(&w->slot_mu);
}

/*
 * Handle the @got messages just fetched into buf, one at a time.  Idle
 * siblings may steal some and a drain may take the rest; each message is
 * settled and released by whoever claimed it.  Deadlines count from the
 * fetch: a message that waited past its deadline is not started.
 */
static void
run_fetched(struct worker *w, size_t got)
{
	struct sluice_engine *e = w->e;
	const int64_t timeout = e->cfg.timeout_ns;
	size_t expect = TAKE_IDLE, i;
	bool late = false;
	uint64_t tk;

	atomic_store_explicit(&w->avail, got, memory_order_relaxed);
	w->fetch_ns = now_ns(e);
	w->fetch_tk = tk = sl_ticks();
	w->fetch_deadline =
		timeout > 0 ? w->fetch_ns + timeout : SLUICE_FOREVER;
	w->nown = 0;
	if (!atomic_compare_exchange_strong(&w->take, &expect, 0)) {
		/* A drain began while we fetched: give it all back. */
		tr_dequeued(w->buf, got, false);
		for (i = 0; i < got; i++)
			hand_back(&w->s, w->buf[i]);
		release_all(w, w->buf, got);
		return;
	}
	for (;;) {
		i = atomic_fetch_add_explicit(&w->take, 1,
					      memory_order_acq_rel);
		if (i >= got)
			break;
		w->own[w->nown++] = w->buf[i];
		/* All share one deadline, checked when the previous one
		 * finished (nanoseconds ago): once it has passed, the rest
		 * are not started. */
		if (late)
			expire_unstarted(w, w->buf[i]);
		else
			late = run_message(w, &w->buf[i], w->fetch_deadline,
					   w->fetch_tk, w->fetch_ns, &tk);
	}
	close_fetch(w);
	release_all(w, w->own, w->nown);
}

/*
 * Run one unstarted message taken from a busy sibling, so that a slow
 * handler does not hold up the messages fetched behind it.  Returns true
 * if there was one.
 */
static bool
steal_one(struct worker *w)
{
	struct sluice_engine *e = w->e;
	struct sluice_msg *m = NULL;
	int64_t deadline = SLUICE_FOREVER, fetch_ns = 0;
	uint64_t fetch_tk = 0, tk;
	unsigned k;

	for (k = 1; k < e->nworkers && !m; k++) {
		struct worker *s = e->workers[(w->index + k) % e->nworkers];
		size_t i, avail;

		if (atomic_load(&s->take) >=
		    atomic_load_explicit(&s->avail, memory_order_relaxed))
			continue; /* a hint: nothing waiting, or drained */
		/* Stealing is opportunistic: never queue up on a busy lock
		 * (the owner takes it once per fetch). */
		if (pthread_mutex_trylock(&s->slot_mu) != 0)
			continue;
		/* take first: once it shows the current fetch (the owner
		 * cannot close it while we hold slot_mu), avail, stored before
		 * take left IDLE, is that fetch's too.  The other order could
		 * pair a stale avail with a new take and steal a pointer that
		 * is no longer in the batch. */
		i = atomic_load(&s->take);
		avail = atomic_load(&s->avail);
		if (i < avail) {
			i = atomic_fetch_add(&s->take, 1);
			if (i < avail) {
				m = s->buf[i];
				deadline = s->fetch_deadline;
				fetch_tk = s->fetch_tk;
				fetch_ns = s->fetch_ns;
			}
		}
		pthread_mutex_unlock(&s->slot_mu);
	}
	if (!m)
		return false;
	w->stolen = m;
	sl_tr_begin("steal");
	if (past(e, deadline)) {
		expire_unstarted(w, m);
	} else {
		tk = sl_ticks();
		(void)run_message(w, &w->stolen, deadline, fetch_tk, fetch_ns,
				  &tk);
	}
	release_all(w, &w->stolen, 1);
	sl_tr_end("steal");
	return true;
}

/*
 * Idle workers take turns at the source: one, the leader, blocks in fetch;
 * the others park on idle_cv instead of piling onto the source's lock.
 * Returns false when the caller is to be the leader, true after a parked
 * wait (the caller then looks for work again).
 */
static bool
park(struct worker *w)
{
	struct sluice_engine *e = w->e;
	bool parked = true;

	pthread_mutex_lock(&e->idle_mu);
	if (!e->leader) {
		e->leader = true;
		parked = false;
	} else if (is_running(e) && !atomic_load(&e->source_closed)) {
		unsigned kick = e->idle_kicks;
		int64_t t0 = sl_block_begin();

		atomic_store(&e->nparked, ++e->parked);
		set_stage(w, "idle");
		sl_tr_begin("park");
		while (e->idle_kicks == kick)
			pthread_cond_wait(&e->idle_cv, &e->idle_mu);
		sl_tr_end("park");
		sl_block_end(t0);
		atomic_store(&e->nparked, --e->parked);
	}
	pthread_mutex_unlock(&e->idle_mu);
	return parked;
}

/* The leader's fetch returned: hand the turn to one parked worker, which
 * will find the messages that woke us or become the next leader. */
static void
unlead(struct sluice_engine *e)
{
	pthread_mutex_lock(&e->idle_mu);
	e->leader = false;
	if (e->parked) {
		e->idle_kicks++;
		pthread_cond_signal(&e->idle_cv);
	}
	pthread_mutex_unlock(&e->idle_mu);
}

static void
wake_one_parked(struct sluice_engine *e)
{
	pthread_mutex_lock(&e->idle_mu);
	if (e->parked) {
		e->idle_kicks++;
		pthread_cond_signal(&e->idle_cv);
	}
	pthread_mutex_unlock(&e->idle_mu);
}

/* Wake every parked worker (stop, source closed, work to steal). */
static void
kick_parked(struct sluice_engine *e)
{
	pthread_mutex_lock(&e->idle_mu);
	e->idle_kicks++;
	pthread_cond_broadcast(&e->idle_cv);
	pthread_mutex_unlock(&e->idle_mu);
}

/*
 * Fetch up to *@credit messages into @into without blocking; if there are
 * none, look for one to steal (@may_steal), then either park or, as the
 * leader, block in the source for one message.  A worker that blocks keeps
 * a reservation of one credit only (*@credit is lowered to 1): credit held
 * by a sleeping worker is credit a busy one cannot use.
 * Returns the count fetched, 0 (look again), or the source's error.
 */
static int
fetch_or_wait(struct worker *w, struct sluice_msg **into, size_t *credit,
	      bool may_steal)
{
	struct sluice_engine *e = w->e;
	int got;

	atomic_store_explicit(&w->fetching, *credit, memory_order_relaxed);
	set_stage(w, "fetch");
	got = e->src.ops->fetch(e->src.self, into, *credit, 0);
	if ((size_t)got == *credit && atomic_load(&e->nparked)) {
		/* It took all it asked for, so more may be waiting, and
		 * workers are parked: wake one to look too.  Each one that
		 * finds work wakes the next, so a burst puts every worker to
		 * use; one that finds none parks again. */
		wake_one_parked(e);
	}
	if (got == 0) {
		atomic_fetch_add(&e->idle_fetchers, 1);
		credit_give(e, *credit - 1);
		*credit = 1;
		atomic_store_explicit(&w->fetching, 1, memory_order_relaxed);
		if (!(may_steal && steal_one(w)) && !park(w)) {
			set_stage(w, "idle");
			sl_tr_begin("wait-source");
			got = e->src.ops->fetch(e->src.self, into, 1,
						SLUICE_FOREVER);
			sl_tr_end("wait-source");
			unlead(e);
		}
		atomic_fetch_sub(&e->idle_fetchers, 1);
	}
	atomic_store_explicit(&w->fetching, 0, memory_order_relaxed);
	if (got > 0) {
		observe_size(&w->fetched, (uint64_t)got);
		tr_received(into, (size_t)got);
	}
	return got;
}

/*
 * Fetch and handle messages until the source closes or the engine drains.
 * A worker that finds nothing to fetch steals from its siblings before it
 * blocks.
 */
static void
work_concurrent(struct worker *w)
{
	struct sluice_engine *e = w->e;
	size_t credit;
	int got;

	while (is_running(e)) {
		credit = credit_take(e, e->fetch_cap);
		if (credit == 0) {
			if (!steal_one(w)) {
				set_stage(w, "idle");
				credit_wait(e);
			}
			continue;
		}
		sl_tr_begin_arg("fetch", "max", (uint32_t)credit);
		got = fetch_or_wait(w, w->buf, &credit, true);
		sl_tr_end("fetch");
		credit_give(e, got > 0 ? credit - (size_t)got : credit);
		if (got > 0)
			tr_counters(e);
		if (got == SLUICE_ECLOSED) {
			atomic_store(&e->source_closed, true);
			kick_parked(e);
			return;
		}
		if (got <= 0)
			continue; /* woken, or a transient source error */
		bump(&w->st.delivered, (uint64_t)got);
		run_fetched(w, (size_t)got);
	}
}

/*
 * Drain, step one: take every fetched-but-unstarted message away from the
 * workers, hand it back and release it now.  Called by sluice_engine_stop().
 */
static void
steal_unstarted(struct sluice_engine *e)
{
	unsigned k;
	size_t i, old, avail;

	pthread_mutex_lock(&e->steal_mu);
	for (k = 0; k < e->nworkers; k++) {
		struct worker *w = e->workers[k];

		pthread_mutex_lock(&w->slot_mu);
		old = atomic_exchange(&w->take, TAKE_STOLEN);
		avail = atomic_load_explicit(&w->avail, memory_order_relaxed);
		if (old < avail) {
			/* Never started, so no handler reads them. */
			tr_dequeued(w->buf + old, avail - old, false);
			for (i = old; i < avail; i++)
				hand_back(&e->stealer, w->buf[i]);
			tr_released(e, w->buf + old, avail - old);
			e->src.ops->release(e->src.self, w->buf + old,
					    avail - old);
			credit_give(e, avail - old);
		}
		pthread_mutex_unlock(&w->slot_mu);
	}
	pthread_mutex_unlock(&e->steal_mu);
}

/* ---- batch mode --------------------------------------------------------- */

/*
 * Run the batch buf[0..n) and release it.  Messages whose deadline (receipt
 * + timeout) passed while the batch filled are not started; the batch's
 * context carries the earliest deadline of the rest.
 */
static void
flush_batch(struct worker *w, size_t n)
{
	struct sluice_engine *e = w->e;
	const int64_t timeout = e->cfg.timeout_ns;
	struct sluice_msg **run = w->buf + w->bufcap; /* second half */
	int64_t deadline = SLUICE_FOREVER, now = 0;
	const uint64_t tk_now = sl_ticks();
	struct sluice_error *berr;
	size_t i, nrun = 0;
	uint64_t gen, t0, t1;

	sl_tr_begin_arg("batch", "n", (uint32_t)n);
	if (timeout > 0)
		now = now_ns(e);
	for (i = 0; i < n; i++) {
		if (!is_running(e)) {
			tr_dequeued(&w->buf[i], 1, false);
			hand_back(&w->s, w->buf[i]);
			continue;
		}
		if (timeout > 0) {
			int64_t dl = w->recv_ns[i] + timeout;

			if (dl <= now) {
				expire_unstarted(w, w->buf[i]);
				continue;
			}
			deadline = min_deadline(deadline, dl);
		}
		observe_ticks(e, &w->wait,
			      tk_now > w->recv_tk[i] ? tk_now - w->recv_tk[i]
						     : 0);
		run[nrun++] = w->buf[i];
	}
	if (nrun > 0) {
		memset(w->errs, 0, nrun * sizeof(*w->errs));
		gen = unit_begin(w, run, nrun, deadline);
		fr_publish(w, run, nrun, w->recv_ns[0], deadline);
		set_stage(w, "handler");
		sl_tr_begin_arg("handler", "n", (uint32_t)nrun);
		tr_dequeued(run, nrun, true);
		t0 = sl_ticks();
		berr = e->batch.fn(e->batch.ud, &w->ctx,
				   (const struct sluice_msg *const *)run, nrun,
				   w->errs);
		t1 = sl_ticks();
		tr_handled(run, nrun);
		sl_tr_end("handler");
		observe_ticks(e, &w->lat, t1 - t0);
		observe_size(&w->batch, nrun);
		(void)finish_unit(w, gen, run, nrun, berr, w->errs, deadline);
		fr_clear(w);
		for (i = 0; i < nrun; i++)
			sluice_error_free(w->errs[i]);
		bump(&w->st.batches, 1);
		raise_max(&w->st.max_batch, nrun);
	}
	release_all(w, w->buf, n);
	sl_tr_end("batch");
}

/* Index of the first message in buf[from..to) that would push @bytes past
 * the limit (never 0: a lone oversized message is a batch of its own). */
static size_t
byte_cut(const struct worker *w, size_t from, size_t to, size_t *bytes)
{
	size_t limit = w->e->cfg.batch_max_bytes, i;

	for (i = from; i < to; i++) {
		size_t len = w->buf[i]->body_len;

		if (limit && i > 0 && *bytes + len > limit)
			return i;
		*bytes += len;
	}
	return to;
}

/*
 * Ship batches from buf[0..*len) while one is due: full by count or bytes
 * (what does not fit is carried to the front), or its first message has
 * waited batch_wait.
 */
static void
flush_due(struct worker *w, size_t *len, int64_t *first, int64_t now)
{
	const struct sluice_engine_config *c = &w->e->cfg;
	size_t cut, bytes;

	while (*len > 0) {
		bytes = 0;
		cut = byte_cut(w, 0, *len, &bytes);
		if (cut == *len && cut < c->batch_max &&
		    !(c->batch_max_bytes && bytes >= c->batch_max_bytes) &&
		    now < *first + c->batch_wait_ns)
			return;
		flush_batch(w, cut);
		*len -= cut;
		memmove(w->buf, w->buf + cut, *len * sizeof(*w->buf));
		memmove(w->recv_ns, w->recv_ns + cut,
			*len * sizeof(*w->recv_ns));
		memmove(w->recv_tk, w->recv_tk + cut,
			*len * sizeof(*w->recv_tk));
		*first = *len ? w->recv_ns[0] : 0;
	}
}

static void
work_batch(struct worker *w)
{
	struct sluice_engine *e = w->e;
	const size_t max = e->cfg.batch_max;
	size_t len = 0, credit, i;
	int64_t first = 0, now;
	int got;

	while (is_running(e)) {
		credit = credit_take(e, max - len);
		if (credit == 0) {
			if (len > 0) { /* starved: ship what we have */
				flush_batch(w, len);
				len = 0;
			} else {
				credit_wait(e);
			}
			continue;
		}
		if (len == 0) {
			sl_tr_begin_arg("fetch", "max", (uint32_t)credit);
			got = fetch_or_wait(w, w->buf, &credit, false);
			sl_tr_end("fetch");
		} else {
			atomic_store_explicit(&w->fetching, credit,
					      memory_order_relaxed);
			set_stage(w, "fetch");
			sl_tr_begin_arg("fetch", "max", (uint32_t)credit);
			got = e->src.ops->fetch(e->src.self, w->buf + len,
						credit,
						first + e->cfg.batch_wait_ns);
			if (got > 0) {
				observe_size(&w->fetched, (uint64_t)got);
				tr_received(w->buf + len, (size_t)got);
			}
			sl_tr_end("fetch");
			atomic_store_explicit(&w->fetching, 0,
					      memory_order_relaxed);
		}
		credit_give(e, got > 0 ? credit - (size_t)got : credit);
		if (got == SLUICE_ECLOSED) {
			atomic_store(&e->source_closed, true);
			kick_parked(e);
			break;
		}
		if (got < 0)
			got = 0;
		now = now_ns(e);
		if (got > 0) {
			uint64_t tk = sl_ticks();

			bump(&w->st.delivered, (uint64_t)got);
			if (len == 0)
				first = now;
			for (i = len; i < len + (size_t)got; i++) {
				w->recv_ns[i] = now;
				w->recv_tk[i] = tk;
			}
			len += (size_t)got;
			tr_counters(e);
		}
		if (is_running(e))
			flush_due(w, &len, &first, now);
	}
	if (len > 0) {
		/* Not started: a drain hands it back; a closed source (which
		 * cannot close while we hold leases) would get it run. */
		if (is_running(e)) {
			flush_batch(w, len);
		} else {
			tr_dequeued(w->buf, len, false);
			for (i = 0; i < len; i++)
				hand_back(&w->s, w->buf[i]);
			release_all(w, w->buf, len);
		}
	}
}

/* ---- threads ------------------------------------------------------------ */

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct sluice_engine *e = w->e;
	char name[32];

	snprintf(name, sizeof(name), "sluice-worker-%u", w->index);
	sluice_trace_set_thread_name(name);
	if (e->cfg.mode == SLUICE_MODE_BATCH)
		work_batch(w);
	else
		work_concurrent(w);
	flush_acks(&w->s);
	set_stage(w, NULL);
	pthread_mutex_lock(&e->mu);
	e->live_workers--;
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mu);
	/* Wake siblings blocked on credit or in fetch, so they see the
	 * source closed too. */
	if (atomic_load(&e->source_closed)) {
		pthread_mutex_lock(&e->credit_mu);
		pthread_cond_broadcast(&e->credit_cv);
		pthread_mutex_unlock(&e->credit_mu);
	}
	return NULL;
}

/*
 * How often the watchdog looks at running units: a tenth of the timeout,
 * between 1 and 10 ms.  Deadline expiry is exact to within one tick, and a
 * message stuck behind a slow one is stolen after one to two ticks.
 */
static int64_t
watchdog_tick(const struct sluice_engine *e)
{
	int64_t t = e->cfg.timeout_ns / 10;

	if (t < SLUICE_NS_PER_MS)
		t = SLUICE_NS_PER_MS;
	if (e->cfg.timeout_ns <= 0 || t > 10 * SLUICE_NS_PER_MS)
		t = 10 * SLUICE_NS_PER_MS;
	return t;
}

/* Expire units past their deadline; returns the earliest pending one. */
static int64_t
scan_units(struct sluice_engine *e, int64_t now, bool interrupt, bool *stalled)
{
	int64_t next = SLUICE_FOREVER;
	unsigned i;

	for (i = 0; i < e->nworkers; i++) {
		struct worker *w = e->workers[i];
		uint64_t gen =
			atomic_load_explicit(&w->claim, memory_order_acquire);
		int64_t dl;

		if (gen == 0)
			continue;
		/* The same unit as at the last look, with fetched messages
		 * waiting behind it: let idle workers come and steal them. */
		if (gen == w->seen_gen &&
		    atomic_load(&w->take) <
			    atomic_load_explicit(&w->avail,
						 memory_order_relaxed) &&
		    atomic_load(&e->idle_fetchers))
			*stalled = true;
		w->seen_gen = gen;
		dl = atomic_load_explicit(&w->deadline_ns,
					  memory_order_relaxed);
		if (interrupt || (dl != SLUICE_FOREVER && dl <= now))
			unit_expire(e, w, gen, interrupt);
		else
			next = min_deadline(next, dl);
	}
	return next;
}

static void *
watchdog_main(void *arg)
{
	struct sluice_engine *e = arg;
	const int64_t tick = watchdog_tick(e);
	int64_t now, next;
	bool interrupt, stalled;

	unsigned seq;

	sluice_trace_set_thread_name("sluice-watchdog");
	pthread_mutex_lock(&e->mu);
	while (e->live_workers > 0) {
		seq = e->stop_seq;
		now = now_ns(e);
		interrupt = false;
		next = SLUICE_FOREVER;
		if (atomic_load(&e->phase) == DRAINING && !e->drain_cancelled) {
			if (now >= e->drain_deadline_ns) {
				e->drain_cancelled = true;
				interrupt = true;
			} else {
				next = e->drain_deadline_ns;
			}
		}
		pthread_mutex_unlock(&e->mu);
		stalled = false;
		next = min_deadline(next,
				    scan_units(e, now, interrupt, &stalled));
		if (stalled) {
			kick_parked(e);
			e->src.ops->wakeup(e->src.self);
		}
		if (interrupt) /* after the hand-back, as in unit_expire() */
			sluice_ctx_cancel(&e->root, SLUICE_CANCEL_SHUTDOWN);
		next = min_deadline(next, now + tick);
		pthread_mutex_lock(&e->mu);
		if (e->live_workers > 0 && e->stop_seq == seq)
			(void)sl_clock_wait(e->clock, &e->cv, &e->mu, next);
	}
	pthread_mutex_unlock(&e->mu);
	return NULL;
}

/* ---- lifecycle ---------------------------------------------------------- */

static int
check_config(const struct sluice_engine_config *c, struct sluice_source src,
	     struct sluice_handler h, struct sluice_batch_handler b)
{
	if (c->workers < 1 || c->workers > 1024)
		return SLUICE_EINVAL;
	if (c->timeout_ns < 0 || c->drain_timeout_ns < 0 ||
	    c->batch_wait_ns < 0)
		return SLUICE_EINVAL;
	if (sluice_backoff_check(&c->retry) != 0)
		return SLUICE_EINVAL;
	if (!src.ops || !src.ops->fetch || !src.ops->ack || !src.ops->requeue ||
	    !src.ops->release || !src.ops->wakeup)
		return SLUICE_EINVAL;
	switch (c->mode) {
	case SLUICE_MODE_CONCURRENT:
		return h.fn ? 0 : SLUICE_EINVAL;
	case SLUICE_MODE_BATCH:
		if (!b.fn || c->batch_max < 1 || c->batch_max > 1000000)
			return SLUICE_EINVAL;
		return 0;
	default:
		return SLUICE_EINVAL;
	}
}

static void
worker_free(struct worker *w)
{
	if (!w)
		return;
	sluice_ctx_release(&w->ctx);
	pthread_mutex_destroy(&w->slot_mu);
	sl_free(w->buf);
	sl_free(w->own);
	sl_free(w->recv_ns);
	sl_free(w->recv_tk);
	sl_free(w->errs);
	sl_free(w->s.acks);
	sl_free(w);
}

static struct worker *
worker_new(struct sluice_engine *e, unsigned index, uint64_t seed)
{
	struct worker *w = sl_calloc(1, sizeof(*w));
	size_t cap = e->fetch_cap;

	if (!w)
		return NULL;
	w->e = e;
	w->index = index;
	w->bufcap = cap;
	if (pthread_mutex_init(&w->slot_mu, NULL) != 0) {
		sl_free(w);
		return NULL;
	}
	if (sluice_ctx_init_child(&w->ctx, &e->root, SLUICE_FOREVER) != 0) {
		pthread_mutex_destroy(&w->slot_mu);
		sl_free(w);
		return NULL;
	}
	/* Batch mode keeps the batch in buf[0..cap) and the started subset in
	 * buf[cap..2cap). */
	w->buf = sl_calloc(2 * cap, sizeof(*w->buf));
	w->s.acks = sl_calloc(cap, sizeof(*w->s.acks));
	if (e->cfg.mode == SLUICE_MODE_BATCH) {
		w->recv_ns = sl_calloc(cap, sizeof(*w->recv_ns));
		w->recv_tk = sl_calloc(cap, sizeof(*w->recv_tk));
		w->errs = sl_calloc(cap, sizeof(*w->errs));
	}
	if (!w->buf || !w->s.acks ||
	    (e->cfg.mode == SLUICE_MODE_BATCH &&
	     (!w->recv_ns || !w->recv_tk || !w->errs))) {
		worker_free(w);
		return NULL;
	}
	atomic_init(&w->take, TAKE_IDLE);
	w->own = sl_calloc(cap, sizeof(*w->own));
	if (!w->own) {
		worker_free(w);
		return NULL;
	}
	w->s.e = e;
	w->s.w = w;
	w->s.st = &w->st;
	w->s.acks_cap = cap;
	sluice_rng_seed(&w->s.rng, seed + index + 1);
	return w;
}

int
sluice_engine_new(const struct sluice_engine_config *cfg,
		  struct sluice_source src, struct sluice_handler handler,
		  struct sluice_batch_handler batch,
		  const struct sluice_dlq *dlq, struct sluice_engine **out)
{
	struct sluice_engine *e;
	uint64_t seed;
	unsigned i;
	int err;

	err = check_config(cfg, src, handler, batch);
	if (err)
		return err;
	e = sl_calloc(1, sizeof(*e));
	if (!e)
		return SLUICE_ENOMEM;
	e->cfg = *cfg;
	if (e->cfg.prefetch == SLUICE_PREFETCH_AUTO)
		e->cfg.prefetch = e->cfg.workers / 4 ? e->cfg.workers / 4 : 1;
	e->src = src;
	e->handler = handler;
	e->batch = batch;
	if (dlq && dlq->ops) {
		e->dlq = *dlq;
		e->has_dlq = true;
	}
	e->clock = cfg->clock ? cfg->clock : sluice_clock_monotonic();
	if (cfg->mode == SLUICE_MODE_BATCH) {
		e->max_in_flight = cfg->max_in_flight ? cfg->max_in_flight
						      : (size_t)cfg->workers *
								cfg->batch_max;
		e->fetch_cap = cfg->batch_max;
	} else {
		e->max_in_flight = cfg->max_in_flight
					   ? cfg->max_in_flight
					   : cfg->workers + e->cfg.prefetch;
		e->fetch_cap =
			1 + (e->cfg.prefetch + cfg->workers - 1) / cfg->workers;
	}
	if (e->fetch_cap > e->max_in_flight)
		e->fetch_cap = e->max_in_flight;
	seed = cfg->seed ? cfg->seed : random_seed();
	e->ns_per_tick = sl_ticks_ns_per_tick();
	for (i = 0; i < NLAT; i++)
		e->lat_tk[i] = (uint64_t)(lat_bounds[i] * 1e9 / e->ns_per_tick);

	err = SLUICE_ENOMEM;
	if (sluice_ctx_init(&e->root, e->clock, SLUICE_FOREVER) != 0)
		goto out_free;
	if (pthread_mutex_init(&e->mu, NULL) != 0)
		goto out_root;
	if (sl_cond_init(&e->cv) != 0)
		goto out_mu;
	if (pthread_mutex_init(&e->credit_mu, NULL) != 0)
		goto out_cv;
	if (sl_cond_init(&e->credit_cv) != 0)
		goto out_credit_mu;
	if (pthread_mutex_init(&e->steal_mu, NULL) != 0)
		goto out_credit_cv;
	if (pthread_mutex_init(&e->idle_mu, NULL) != 0)
		goto out_steal_mu;
	if (pthread_cond_init(&e->idle_cv, NULL) != 0)
		goto out_idle_mu;
	e->wd.acks = sl_calloc(64, sizeof(*e->wd.acks));
	e->workers = sl_calloc(cfg->workers, sizeof(*e->workers));
	if (!e->wd.acks || !e->workers)
		goto out_arrays;
	e->wd.e = e;
	e->wd.st = &e->wd_st;
	e->wd.acks_cap = 64;
	sluice_rng_seed(&e->wd.rng, seed);
	e->stealer.e = e;
	e->stealer.st = &e->steal_st;
	sluice_rng_seed(&e->stealer.rng, seed ^ 0x5157ULL);
	for (i = 0; i < cfg->workers; i++) {
		e->workers[i] = worker_new(e, i, seed);
		if (!e->workers[i])
			goto out_workers;
		e->nworkers++;
	}
	sl_clock_watch_add(e->clock, &e->watch, &e->mu, &e->cv);
	sl_clock_watch_add(e->clock, &e->credit_watch, &e->credit_mu,
			   &e->credit_cv);
	if (src.ops->set_credit)
		src.ops->set_credit(src.self, e->max_in_flight);
	*out = e;
	return 0;

out_workers:
	for (i = 0; i < e->nworkers; i++)
		worker_free(e->workers[i]);
out_arrays:
	sl_free(e->workers);
	sl_free(e->wd.acks);
	pthread_cond_destroy(&e->idle_cv);
out_idle_mu:
	pthread_mutex_destroy(&e->idle_mu);
out_steal_mu:
	pthread_mutex_destroy(&e->steal_mu);
out_credit_cv:
	pthread_cond_destroy(&e->credit_cv);
out_credit_mu:
	pthread_mutex_destroy(&e->credit_mu);
out_cv:
	pthread_cond_destroy(&e->cv);
out_mu:
	pthread_mutex_destroy(&e->mu);
out_root:
	sluice_ctx_release(&e->root);
out_free:
	sl_free(e);
	return err;
}

int
sluice_engine_start(struct sluice_engine *e)
{
	unsigned i;
	int err = 0;

	pthread_mutex_lock(&e->mu);
	if (e->watchdog_started || e->live_workers) {
		pthread_mutex_unlock(&e->mu);
		return SLUICE_ESTATE;
	}
	for (i = 0; i < e->nworkers; i++) {
		err = sl_thread_create(&e->workers[i]->thread, "sluice-worker",
				       worker_main, e->workers[i]);
		if (err)
			break;
		e->workers[i]->started = true;
		e->live_workers++;
	}
	if (i == e->nworkers) {
		err = sl_thread_create(&e->watchdog, "sluice-watchdog",
				       watchdog_main, e);
		if (!err)
			e->watchdog_started = true;
	}
	pthread_mutex_unlock(&e->mu);
	if (err) {
		sluice_engine_stop(e, SLUICE_STOP_NOW);
		(void)sluice_engine_wait(e, SLUICE_FOREVER);
		return -err;
	}
	return 0;
}

void
sluice_engine_stop(struct sluice_engine *e, enum sluice_stop how)
{
	int64_t now = now_ns(e);

	pthread_mutex_lock(&e->mu);
	if (atomic_load(&e->phase) == RUNNING) {
		e->drain_deadline_ns = now + e->cfg.drain_timeout_ns;
		atomic_store(&e->phase, DRAINING);
	}
	if (how == SLUICE_STOP_NOW && e->drain_deadline_ns > now)
		e->drain_deadline_ns = now;
	e->stop_seq++;
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mu);
	steal_unstarted(e);
	kick_parked(e);
	/* Unblock fetchers and credit waiters so they see the new phase. */
	e->src.ops->wakeup(e->src.self);
	pthread_mutex_lock(&e->credit_mu);
	pthread_cond_broadcast(&e->credit_cv);
	pthread_mutex_unlock(&e->credit_mu);
}

int
sluice_engine_wait(struct sluice_engine *e, int64_t deadline_ns)
{
	unsigned i;

	pthread_mutex_lock(&e->mu);
	while (e->live_workers > 0) {
		if (atomic_load(&e->phase) != RUNNING) {
			/* A worker may have been on its way into a blocking
			 * fetch when stop() woke the source, and a source's
			 * wakeup only reaches fetches already blocked.  So
			 * while draining, repeat it every few real ms. */
			pthread_mutex_unlock(&e->mu);
			e->src.ops->wakeup(e->src.self);
			kick_parked(e);
			pthread_mutex_lock(&e->mu);
			if (e->live_workers == 0)
				break;
			if (sluice_clock_now_ns(e->clock) >= deadline_ns &&
			    deadline_ns != SLUICE_FOREVER)
				goto timed_out;
			(void)sl_clock_wait(
				sluice_clock_monotonic(), &e->cv, &e->mu,
				sl_mono_ns() + 5 * SLUICE_NS_PER_MS);
			continue;
		}
		if (sl_clock_wait(e->clock, &e->cv, &e->mu, deadline_ns) ==
			    SLUICE_ETIMEDOUT &&
		    e->live_workers > 0)
			goto timed_out;
	}
	if (e->joined) {
		pthread_mutex_unlock(&e->mu);
		return 0;
	}
	e->joined = true;
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mu);
	for (i = 0; i < e->nworkers; i++)
		if (e->workers[i]->started)
			pthread_join(e->workers[i]->thread, NULL);
	if (e->watchdog_started)
		pthread_join(e->watchdog, NULL);
	atomic_store(&e->phase, FINISHED);
	if (e->src.ops->close)
		e->src.ops->close(e->src.self);
	return 0;

timed_out:
	pthread_mutex_unlock(&e->mu);
	return SLUICE_ETIMEDOUT;
}

void
sluice_engine_free(struct sluice_engine *e)
{
	unsigned i;

	if (!e)
		return;
	if (!e->joined) {
		sluice_engine_stop(e, SLUICE_STOP_NOW);
		(void)sluice_engine_wait(e, SLUICE_FOREVER);
	}
	sl_clock_watch_del(e->clock, &e->watch);
	sl_clock_watch_del(e->clock, &e->credit_watch);
	for (i = 0; i < e->nworkers; i++)
		worker_free(e->workers[i]);
	sl_free(e->workers);
	sl_free(e->wd.acks);
	sl_free(e->metric_uds);
	sl_free(e->hist_uds);
	pthread_cond_destroy(&e->idle_cv);
	pthread_mutex_destroy(&e->idle_mu);
	pthread_mutex_destroy(&e->steal_mu);
	pthread_cond_destroy(&e->credit_cv);
	pthread_mutex_destroy(&e->credit_mu);
	pthread_cond_destroy(&e->cv);
	pthread_mutex_destroy(&e->mu);
	sluice_ctx_release(&e->root);
	sl_free(e);
}

static void
add_shard(struct sluice_engine_stats *o, struct stats_shard *s)
{
#define ADD(f) o->f += atomic_load_explicit(&s->f, memory_order_relaxed)
	ADD(delivered);
	ADD(handled);
	ADD(requeued);
	ADD(dead_lettered);
	ADD(timeouts);
	ADD(temporary);
	ADD(permanent);
	ADD(canceled);
	ADD(expired_waiting);
	ADD(exhausted);
	ADD(handed_back);
	ADD(dlq_failed);
	ADD(ack_failed);
	ADD(batches);
#undef ADD
	if (atomic_load_explicit(&s->max_batch, memory_order_relaxed) >
	    o->max_batch)
		o->max_batch = atomic_load_explicit(&s->max_batch,
						    memory_order_relaxed);
}

void
sluice_engine_stats(struct sluice_engine *e, struct sluice_engine_stats *out)
{
	unsigned i;
	size_t fetching = 0;

	memset(out, 0, sizeof(*out));
	for (i = 0; i < e->nworkers; i++) {
		add_shard(out, &e->workers[i]->st);
		fetching += atomic_load_explicit(&e->workers[i]->fetching,
						 memory_order_relaxed);
		if (atomic_load_explicit(&e->workers[i]->claim,
					 memory_order_relaxed))
			out->running++;
	}
	/* The watchdog's shard is written under slot locks by one thread. */
	add_shard(out, &e->wd_st);
	pthread_mutex_lock(&e->steal_mu);
	add_shard(out, &e->steal_st);
	pthread_mutex_unlock(&e->steal_mu);
	out->credit = atomic_load(&e->held);
	out->held = out->credit > fetching ? out->credit - fetching : 0;
	out->max_held = atomic_load(&e->max_held);
	out->max_in_flight = e->max_in_flight;
}

/* Trace counters: credit, held and running units (only while tracing). */
static void
tr_counters(struct sluice_engine *e)
{
	struct sluice_engine_stats st;
	size_t fetching = 0;
	unsigned i;
	int64_t running = 0;

	if (!sl_trace_active())
		return;
	for (i = 0; i < e->nworkers; i++) {
		fetching += atomic_load_explicit(&e->workers[i]->fetching,
						 memory_order_relaxed);
		if (atomic_load_explicit(&e->workers[i]->claim,
					 memory_order_relaxed))
			running++;
	}
	st.credit = atomic_load_explicit(&e->held, memory_order_relaxed);
	sl_tr_counter("credit", (int64_t)st.credit);
	sl_tr_counter(
		"held",
		(int64_t)(st.credit > fetching ? st.credit - fetching : 0));
	sl_tr_counter("running", running);
}

/* ---- metrics ------------------------------------------------------------- */

/* What each exported series reads from struct sluice_engine_stats. */
static const struct {
	const char *name, *help;
	size_t off; /* of a uint64_t field */
	bool counter;
} exported[] = {
#define C(n, f, h)                                                            \
	{                                                                     \
		"sluice_" n, h, offsetof(struct sluice_engine_stats, f), true \
	}
#define G(n, f, h)                                                             \
	{                                                                      \
		"sluice_" n, h, offsetof(struct sluice_engine_stats, f), false \
	}
	C("messages_delivered_total", delivered,
	  "Messages fetched from the source."),
	C("messages_handled_total", handled, "Messages acked after success."),
	C("messages_requeued_total", requeued,
	  "Messages given back for redelivery."),
	C("messages_dead_lettered_total", dead_lettered,
	  "Messages written to the dead-letter sink, then acked."),
	C("handler_timeouts_total", timeouts,
	  "Handlers that overran their deadline."),
	C("handler_temporary_errors_total", temporary,
	  "Handlers that failed TEMPORARY."),
	C("handler_permanent_errors_total", permanent,
	  "Handlers that failed PERMANENT."),
	C("messages_expired_waiting_total", expired_waiting,
	  "Messages whose deadline passed before they started."),
	C("messages_exhausted_total", exhausted,
	  "Messages dead-lettered after their last attempt."),
	C("messages_handed_back_total", handed_back,
	  "Messages handed back unstarted or at the drain deadline."),
	C("dead_letter_failures_total", dlq_failed,
	  "Dead-letter writes that failed (message kept)."),
	C("ack_failures_total", ack_failed,
	  "Acks and requeues the source refused."),
	C("batches_total", batches, "Batch handler calls."),
	G("handlers_running", running,
	  "Units (messages or batches) running now."),
	G("messages_held", held, "Messages fetched and not yet released."),
	G("credit_in_use", credit,
	  "Credit in use: held plus asked of the source."),
#undef C
#undef G
};

struct metric_ud {
	struct sluice_engine *e;
	size_t off;
};

static double
read_stat(void *ud)
{
	struct metric_ud *m = ud;
	struct sluice_engine_stats st;
	uint64_t v;

	sluice_engine_stats(m->e, &st);
	memcpy(&v, (const char *)&st + m->off, sizeof(v));
	return (double)v;
}

/* Which per-worker histogram an exported one sums. */
struct hist_ud {
	struct sluice_engine *e;
	size_t off;   /* of a struct hist in struct worker */
	double scale; /* to the exported unit: seconds per tick, or 1 */
};

static void
read_hist(void *ud, uint64_t *counts, double *sum)
{
	const struct hist_ud *h = ud;
	uint64_t total = 0;
	unsigned i;
	size_t k, nb = h->scale == 1.0 ? NSIZE : NLAT;

	for (i = 0; i < h->e->nworkers; i++) {
		const struct hist *src =
			(const struct hist
				 *)(const void *)((const char *)
							  h->e->workers[i] +
						  h->off);

		for (k = 0; k <= nb; k++)
			counts[k] += atomic_load_explicit(&src->b[k],
							  memory_order_relaxed);
		total += atomic_load_explicit(&src->sum, memory_order_relaxed);
	}
	*sum = (double)total * h->scale;
}

/* Workers doing something other than waiting for work. */
static double
read_busy(void *ud)
{
	struct sluice_engine *e = ud;
	unsigned i, n = 0;

	for (i = 0; i < e->nworkers; i++) {
		const char *st = atomic_load_explicit(&e->workers[i]->stage,
						      memory_order_relaxed);

		if (st && strcmp(st, "idle") != 0)
			n++;
	}
	return n;
}

static int
export_extra(struct sluice_engine *e, struct sluice_metrics *m)
{
	static const char *const classes[SLUICE_CLASS_COUNT] = {
		NULL, "timeout", "temporary", "permanent", "canceled"
	};
	static const char *const cls_label[] = { "class" };
	static const struct {
		const char *name, *help;
		size_t off;
		bool ticks;
	} hists[] = {
		{ "sluice_handler_latency_seconds",
		  "Handler (or batch handler) run time.",
		  offsetof(struct worker, lat), true },
		{ "sluice_queue_wait_seconds",
		  "Time from fetch to handler start, per message.",
		  offsetof(struct worker, wait), true },
		{ "sluice_fetch_size_messages", "Messages per fetch.",
		  offsetof(struct worker, fetched), false },
		{ "sluice_batch_size_messages",
		  "Messages per batch handler call.",
		  offsetof(struct worker, batch), false },
	};
	struct sluice_counter_family *fam;
	struct sluice_counter *c;
	struct hist_ud *hu;
	size_t i;
	int rc;

	hu = sl_calloc(sizeof(hists) / sizeof(hists[0]), sizeof(*hu));
	if (!hu)
		return SLUICE_ENOMEM;
	e->hist_uds = hu;
	for (i = 0; i < sizeof(hists) / sizeof(hists[0]); i++) {
		hu[i].e = e;
		hu[i].off = hists[i].off;
		hu[i].scale = hists[i].ticks ? e->ns_per_tick / 1e9 : 1.0;
		rc = sluice_histogram_register_fn(
			m, hists[i].name, hists[i].help,
			hists[i].ticks ? lat_bounds : size_bounds,
			hists[i].ticks ? NLAT : NSIZE, read_hist, &hu[i]);
		if (rc)
			return rc;
	}
	rc = sluice_gauge_register_fn(m, "sluice_workers_busy",
				      "Workers not waiting for work.",
				      read_busy, e);
	if (rc)
		return rc;
	rc = sluice_counter_family_register(
		m, "sluice_handler_errors_total",
		"Failed settlements by error class (counted from export on).",
		cls_label, 1, &fam);
	if (rc)
		return rc;
	for (i = 1; i < SLUICE_CLASS_COUNT; i++) {
		rc = sluice_counter_with(fam, &c, classes[i],
					 SLUICE_LABELS_END);
		if (rc)
			return rc;
		atomic_store_explicit(&e->class_ctr[i], c,
				      memory_order_release);
	}
	return 0;
}

int
sluice_engine_export_metrics(struct sluice_engine *e, struct sluice_metrics *m)
{
	size_t n = sizeof(exported) / sizeof(exported[0]), i;
	int rc;

	if (!e || !m || e->metric_uds)
		return SLUICE_EINVAL;
	e->metric_uds = sl_calloc(n, sizeof(*e->metric_uds));
	if (!e->metric_uds)
		return SLUICE_ENOMEM;
	for (i = 0; i < n; i++) {
		e->metric_uds[i].e = e;
		e->metric_uds[i].off = exported[i].off;
		rc = exported[i].counter
			     ? sluice_counter_register_fn(
				       m, exported[i].name, exported[i].help,
				       read_stat, &e->metric_uds[i])
			     : sluice_gauge_register_fn(
				       m, exported[i].name, exported[i].help,
				       read_stat, &e->metric_uds[i]);
		if (rc)
			return rc;
	}
	return export_extra(e, m);
}

/* ---- the flight recorder ------------------------------------------------ */

struct fr_row {
	unsigned worker;
	const char *stage;
	uint32_t attempts, id_len, n;
	int64_t since_ns, deadline;
	char id[SLUICE_MSG_ID_MAX];
};

/* Copy worker @w's slot; returns the rows (0 when it runs nothing). */
static size_t
fr_read(const struct worker *w, struct fr_row *rows)
{
	const struct fr_slot *f = &w->fr;
	uint64_t s1, s2;
	size_t i, n = 0;

	do {
		s1 = atomic_load_explicit(&f->seq, memory_order_acquire);
		if (s1 & 1) {
			sched_yield();
			s2 = s1 + 1;
			continue;
		}
		n = atomic_load_explicit(&f->n, memory_order_relaxed);
		for (i = 0; i < n && i < FR_MAX; i++) {
			rows[i].n = (uint32_t)n;
			rows[i].worker = w->index;
			rows[i].since_ns = atomic_load_explicit(
				&f->since_ns, memory_order_relaxed);
			rows[i].deadline = atomic_load_explicit(
				&f->deadline, memory_order_relaxed);
			rows[i].attempts = atomic_load_explicit(
				&f->m[i].attempts, memory_order_relaxed);
			rows[i].id_len = atomic_load_explicit(
				&f->m[i].id_len, memory_order_relaxed);
			if (rows[i].id_len > SLUICE_MSG_ID_MAX)
				rows[i].id_len = SLUICE_MSG_ID_MAX;
			words_get(rows[i].id, f->m[i].id, ID_WORDS,
				  rows[i].id_len);
		}
		atomic_thread_fence(memory_order_acquire);
		s2 = atomic_load_explicit(&f->seq, memory_order_relaxed);
	} while (s1 != s2);
	n = n < FR_MAX ? n : FR_MAX;
	for (i = 0; i < n; i++)
		rows[i].stage =
			atomic_load_explicit(&w->stage, memory_order_relaxed);
	return n;
}

struct fail_row {
	int64_t at_ns;
	uint32_t attempts, cls, id_len, text_len;
	char id[SLUICE_MSG_ID_MAX];
	char text[FAIL_WORDS * 8];
};

/* Copy failure entry @f; false when it is empty or being written. */
static bool
fail_read(const struct fail_ent *f, struct fail_row *r)
{
	uint64_t s1, s2;

	s1 = atomic_load_explicit(&f->seq, memory_order_acquire);
	if (s1 == 0 || (s1 & 1))
		return false;
	r->at_ns = atomic_load_explicit(&f->at_ns, memory_order_relaxed);
	r->attempts = atomic_load_explicit(&f->attempts, memory_order_relaxed);
	r->cls = atomic_load_explicit(&f->cls, memory_order_relaxed);
	r->id_len = atomic_load_explicit(&f->id_len, memory_order_relaxed);
	r->text_len = atomic_load_explicit(&f->text_len, memory_order_relaxed);
	if (r->id_len > SLUICE_MSG_ID_MAX)
		r->id_len = SLUICE_MSG_ID_MAX;
	if (r->text_len > FAIL_WORDS * 8)
		r->text_len = FAIL_WORDS * 8;
	words_get(r->id, f->id, ID_WORDS, r->id_len);
	words_get(r->text, f->text, FAIL_WORDS, r->text_len);
	atomic_thread_fence(memory_order_acquire);
	s2 = atomic_load_explicit(&f->seq, memory_order_relaxed);
	return s1 == s2 && r->cls < SLUICE_CLASS_COUNT;
}

/* @p[0..n) as a JSON string body, or as text with non-printables as
 * \xNN: ids are binary-safe. */
static void
put_bytes(struct sl_buf *b, const char *p, size_t n, bool json)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];

		if (json && (c == '"' || c == '\\'))
			sl_buf_printf(b, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			sl_buf_printf(b, json ? "\\u%04x" : "\\x%02x", c);
		else
			sl_buf_put(b, &c, 1);
	}
}

static double
ms(int64_t ns)
{
	return (double)ns / 1e6;
}

static void
render_row(struct sl_buf *b, const struct sluice_engine *e,
	   const struct fr_row *r, int64_t now, bool json, bool first)
{
	const char *stage = r->stage ? r->stage : "-";

	if (json) {
		sl_buf_puts(b,
			    first ? "\n    {\"id\":\"" : ",\n    {\"id\":\"");
		put_bytes(b, r->id, r->id_len, true);
		sl_buf_printf(b,
			      "\",\"source\":\"%s\",\"attempt\":%" PRIu32
			      ",\"age_ms\":%.3f,\"deadline_left_ms\":",
			      e->src.ops->name, r->attempts,
			      ms(now - r->since_ns));
		if (r->deadline == SLUICE_FOREVER)
			sl_buf_puts(b, "null");
		else
			sl_buf_printf(b, "%.3f", ms(r->deadline - now));
		sl_buf_printf(b,
			      ",\"stage\":\"%s\",\"worker\":%u,\"unit_size\":"
			      "%" PRIu32 "}",
			      stage, r->worker, r->n);
		return;
	}
	sl_buf_printf(b, "%-6u %-12s %7" PRIu32 " %10.1f ", r->worker, stage,
		      r->attempts, ms(now - r->since_ns));
	if (r->deadline == SLUICE_FOREVER)
		sl_buf_printf(b, "%11s ", "-");
	else
		sl_buf_printf(b, "%11.1f ", ms(r->deadline - now));
	sl_buf_printf(b, "%-8s ", e->src.ops->name);
	put_bytes(b, r->id, r->id_len, false);
	sl_buf_puts(b, "\n");
}

static void
render_fail(struct sl_buf *b, const struct fail_row *r, int64_t now, bool json,
	    bool first)
{
	const char *cls = sluice_class_name((enum sluice_class)r->cls);

	if (json) {
		sl_buf_printf(b,
			      "%s\n    {\"at_ns\":%" PRId64
			      ",\"ago_ms\":%.3f,\"id\":\"",
			      first ? "" : ",", r->at_ns, ms(now - r->at_ns));
		put_bytes(b, r->id, r->id_len, true);
		sl_buf_printf(b,
			      "\",\"attempt\":%" PRIu32
			      ",\"class\":\"%s\",\"error\":\"",
			      r->attempts, cls);
		put_bytes(b, r->text, r->text_len, true);
		sl_buf_puts(b, "\"}");
		return;
	}
	sl_buf_printf(b, "%10.1f %-10s %7" PRIu32 " ", ms(now - r->at_ns), cls,
		      r->attempts);
	put_bytes(b, r->id, r->id_len, false);
	sl_buf_puts(b, "  ");
	put_bytes(b, r->text, r->text_len, false);
	sl_buf_puts(b, "\n");
}

int
sluice_engine_inflight(struct sluice_engine *e, enum sluice_inflight_format fmt,
		       char **out, size_t *len)
{
	const bool json = fmt == SLUICE_INFLIGHT_JSON;
	struct fr_row rows[FR_MAX];
	struct fail_row fr;
	struct sl_buf b;
	int64_t now;
	uint64_t head, k;
	size_t i, n, total = 0, nfail = 0;
	unsigned w;

	if (!e || !out || (fmt != SLUICE_INFLIGHT_TEXT && !json))
		return SLUICE_EINVAL;
	*out = NULL;
	if (len)
		*len = 0;
	sl_buf_init(&b);
	now = now_ns(e);
	if (json)
		sl_buf_printf(&b,
			      "{\"workers\":%u,\"max_in_flight\":%zu,"
			      "\"in_flight\":[",
			      e->nworkers, e->max_in_flight);
	else
		sl_buf_printf(&b,
			      "in flight (%u workers, source %s):\n"
			      "WORKER STAGE        ATTEMPT     AGE_MS "
			      "DEADLINE_MS SOURCE   ID\n",
			      e->nworkers, e->src.ops->name);
	for (w = 0; w < e->nworkers; w++) {
		n = fr_read(e->workers[w], rows);
		for (i = 0; i < n; i++, total++)
			render_row(&b, e, &rows[i], now, json, total == 0);
	}
	head = atomic_load_explicit(&e->fail_head, memory_order_acquire);
	if (json)
		sl_buf_puts(&b, total ? "\n  ],\n  \"failures\":["
				      : "],\n  \"failures\":[");
	else
		sl_buf_printf(&b,
			      "%zu message(s)\n\nrecent failures (newest "
			      "first):\n    AGO_MS CLASS      ATTEMPT ID  "
			      "ERROR\n",
			      total);
	for (k = 0; k < FAIL_RING && k < head; k++) {
		if (!fail_read(&e->fails[(head - 1 - k) % FAIL_RING], &fr))
			continue;
		render_fail(&b, &fr, now, json, nfail == 0);
		nfail++;
	}
	if (json)
		sl_buf_puts(&b, nfail ? "\n  ]\n}\n" : "]\n}\n");
	else
		sl_buf_printf(&b, "%zu failure(s) shown, %" PRIu64 " in all\n",
			      nfail, head);
	sl_buf_put(&b, "", 1);
	if (sl_buf_failed(&b)) {
		sl_buf_free(&b);
		return SLUICE_ENOMEM;
	}
	*out = (char *)b.data;
	if (len)
		*len = b.len - 1;
	return 0;
}

void
sluice_engine_free_text(char *text)
{
	sl_free(text);
}
