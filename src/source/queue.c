/* SPDX-License-Identifier: MIT */
/*
 * queue.c - the in-process bounded queue: a source and a test broker.
 *
 * Every message lives in a slot preallocated at creation: the struct
 * sluice_msg the engine borrows plus INLINE_BODY bytes of body storage
 * (larger bodies get one shared, reference-counted heap buffer).  Index
 * arrays sized `capacity` hold the free slots (a stack), the ready ones (a
 * FIFO ring), the delayed ones (a min-heap on due time) and, when leases
 * are on, the leased ones (a min-heap on lease end), so nothing grows and
 * the hot path never allocates.
 *
 * Slot states and what they count as:
 *   FREE     on the free stack.
 *   READY    in the ring.                                      (active)
 *   DELAYED  in the due heap, not borrowed.                    (active)
 *   LEASED   delivered, lease valid; normally still borrowed, but a
 *            dropped-ack fault can leave it released with its lease
 *            running: then it is redelivered in place.      (active)
 *   PENDING  borrowed, settled or lease lost, and its redelivery is still
 *            owed: due later (in the due heap) or now but no free slot
 *            was left for the copy (on the owed list).          (active)
 *   STALE    borrowed, nothing owed any more: freed at release.
 * A borrowed slot is never rewritten, because msg.h lets a handler read a
 * message after it was settled.  So a redelivery that is due while the old
 * delivery is still borrowed (lease expiry, disconnect, a requeue) copies
 * the message into a free slot and the old one turns STALE; when no slot is
 * free the redelivery waits on the owed list for the next slot released,
 * or, if the old delivery itself is released first, reuses it in place.
 * "Held" (what publishers wait on) is every slot not FREE; "active" (what
 * ECLOSED and wait_idle look at) is everything but FREE and STALE.
 *
 * Each delivery bumps its slot's generation and stamps it into msg.lease;
 * msg.source_data points at the slot.  An ack, requeue or touch is valid
 * only for a LEASED slot with a matching generation; anything else is stale.
 *
 * wakeup() bumps a sequence that makes every fetch blocked at that moment
 * return 0, and leaves a token the next fetch that would block consumes,
 * so a worker racing into fetch() just after the wakeup is not stranded.
 *
 * Locking: q->mu guards the mutable part of struct sluice_queue and every
 * slot's contents.  Each call takes it once (a blocked call re-takes it
 * through its condition variable).  Condition variables are signalled
 * after unlocking (under it only by a publisher about to wait for room),
 * and only when the waiter counts say someone sleeps on them.  The three
 * condition variables are registered with the clock for the queue's
 * lifetime, so a virtual clock's advance wakes timed waits.  q->mu is
 * taken with sl_mutex_lock() and every wait goes through blocked_wait(),
 * so both show in the mutex and block profiles when those are on.
 */
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <sluice/queue.h>

#include "core/clock_int.h"
#include "obs/contention.h"
#include "source/queue_int.h"
#include "util/alloc.h"

#define INLINE_BODY  64
#define NONE         UINT32_MAX
#define MAX_CAPACITY ((size_t)1 << 30)
#define GEN_ID_LEN   16

enum slot_state {
	S_FREE = 0,
	S_READY,
	S_DELAYED,
	S_LEASED,
	S_PENDING,
	S_STALE,
};

/* Where a PENDING slot's redelivery waits. */
enum slot_wait {
	W_NONE = 0,
	W_HEAP, /* in the due heap until key[H_DUE] */
	W_OWED, /* due now, on the owed list for want of a free slot */
};

enum { H_DUE = 0, H_LEASE = 1 };

/* A body too large for a slot, shared by the copies of one message. */
struct big {
	uint32_t refs; /* slots pointing here; guarded by q->mu */
	uint8_t data[];
};

/*
 * Laid out for the hot path: the first cache line holds the message header
 * and the fields every fetch, ack and release touch; the second starts with
 * the lease generation and the id and body bytes, so a message with a
 * generated id and a small body lives in two cache lines.  What delays and
 * leases use comes last.
 */
struct slot {
	_Alignas(
		64) struct sluice_msg msg; /* written only while not borrowed */
	uint8_t state;                     /* enum slot_state */
	uint8_t wait;                      /* enum slot_wait, PENDING only */
	uint8_t nodup;     /* a fault copy: not duplicated again */
	uint8_t lent;      /* delivered and not yet released */
	uint32_t attempts; /* msg.attempts its next delivery gets */
	uint64_t gen;      /* deliveries of this slot; msg.lease copy */
	struct big *big;   /* body storage when body_len > INLINE_BODY */
	/* The id (msg.id points here), then the body at the next multiple
	 * of 8 when it is at most INLINE_BODY bytes (msg.body points here). */
	uint8_t area[SLUICE_MSG_ID_MAX + INLINE_BODY];
	int64_t key[2];      /* due time, lease end */
	uint32_t hpos[2];    /* position in each heap or NONE */
	uint32_t prev, next; /* owed list links or NONE */
};

/* Where the inline body starts, after an id of @id_len bytes. */
static inline uint8_t *
inline_body(struct slot *s, size_t id_len)
{
	return s->area + ((id_len + 7) & ~(size_t)7);
}

struct heap {
	uint32_t *v;
	uint32_t n;
};

struct sluice_queue {
	pthread_mutex_t mu;
	pthread_cond_t fetch_cv; /* fetchers: ready, closed, wakeup */
	pthread_cond_t space_cv; /* publishers: a slot freed, closed */
	pthread_cond_t idle_cv;  /* wait_idle: nothing active */
	struct sl_clock_watch watch[3];

	/* Immutable after creation. */
	const struct sluice_clock *clock;
	uint32_t cap;
	size_t max_body;
	int64_t lease_ns;
	struct slot *slots;
	void *slots_mem; /* the allocation slots points into */

	/* Guarded by mu. */
	uint32_t *freev; /* free stack */
	uint32_t nfree;
	uint32_t *ring; /* ready FIFO */
	uint32_t rhead, nready;
	struct heap heap[2]; /* H_DUE: DELAYED and PENDING/W_HEAP;
				H_LEASE: LEASED when lease_ns > 0 */
	uint32_t owed_head, owed_tail;
	uint32_t ndelayed, nleased, npending, nstale;
	uint32_t fetch_waiters, space_waiters, idle_waiters;
	uint32_t fetch_hint; /* max of the latest fetch call (>= 1) */
	bool top_moved;      /* a heap's earliest key went down */
	uint32_t space_need; /* free slots worth waking a publisher for */
	uint64_t wake_seq;   /* bumped by wakeup() */
	bool wake_pending;   /* a wakeup no blocked fetch has consumed */
	bool disc_pending;   /* next fetch reports SLUICE_EDISCONNECTED */
	bool closed;
	unsigned dup_every, dup_count, drop_acks;
	size_t credit;
	uint64_t next_id;
	size_t max_held;
	struct sluice_queue_stats st; /* the counters; sizes filled on read */
};

/* Who to wake once the lock is dropped. */
struct wake {
	uint32_t fetch; /* fetchers to signal one by one */
	bool fetch_all, space, idle;
};

/* Test hook (tests/unit/test_queue.c): threads blocked in the queue now. */

void
sluice_queue_config_init(struct sluice_queue_config *cfg)
{
	cfg->capacity = 1024;
	cfg->max_body = (size_t)1 << 20;
	cfg->lease_ns = 0;
	cfg->clock = NULL;
}

static int64_t
now_ns(const struct sluice_queue *q)
{
	return sluice_clock_now_ns(q->clock);
}

static uint32_t
active(const struct sluice_queue *q)
{
	return q->nready + q->ndelayed + q->nleased + q->npending;
}

static uint32_t
slot_idx(const struct sluice_queue *q, const struct slot *s)
{
	return (uint32_t)(s - q->slots);
}

/* ---- heaps ------------------------------------------------------------ */

static void
heap_set(struct sluice_queue *q, int h, uint32_t i, uint32_t idx)
{
	q->heap[h].v[i] = idx;
	q->slots[idx].hpos[h] = i;
}

static void
heap_up(struct sluice_queue *q, int h, uint32_t i)
{
	uint32_t idx = q->heap[h].v[i], p;
	int64_t key = q->slots[idx].key[h];

	while (i > 0) {
		p = (i - 1) / 2;
		if (q->slots[q->heap[h].v[p]].key[h] <= key)
			break;
		heap_set(q, h, i, q->heap[h].v[p]);
		i = p;
	}
	heap_set(q, h, i, idx);
}

static void
heap_down(struct sluice_queue *q, int h, uint32_t i)
{
	struct heap *hp = &q->heap[h];
	uint32_t idx = hp->v[i], c;
	int64_t key = q->slots[idx].key[h];

	for (;;) {
		c = 2 * i + 1;
		if (c >= hp->n)
			break;
		if (c + 1 < hp->n &&
		    q->slots[hp->v[c + 1]].key[h] < q->slots[hp->v[c]].key[h])
			c++;
		if (q->slots[hp->v[c]].key[h] >= key)
			break;
		heap_set(q, h, i, hp->v[c]);
		i = c;
	}
	heap_set(q, h, i, idx);
}

static void
heap_push(struct sluice_queue *q, int h, uint32_t idx)
{
	uint32_t i = q->heap[h].n++;

	q->heap[h].v[i] = idx;
	heap_up(q, h, i);
	if (q->heap[h].v[0] == idx)
		q->top_moved = true; /* see unlock_plan() */
}

static void
heap_remove(struct sluice_queue *q, int h, uint32_t idx)
{
	struct heap *hp = &q->heap[h];
	uint32_t i = q->slots[idx].hpos[h], last;

	q->slots[idx].hpos[h] = NONE;
	last = hp->v[--hp->n];
	if (i == hp->n)
		return;
	heap_set(q, h, i, last);
	heap_down(q, h, i);
	heap_up(q, h, q->slots[last].hpos[h]);
}

/* The earliest key of heap @h, or INT64_MAX when empty. */
static int64_t
heap_top(const struct sluice_queue *q, int h)
{
	if (!q->heap[h].n)
		return INT64_MAX;
	return q->slots[q->heap[h].v[0]].key[h];
}

/* ---- ring, free stack, owed list -------------------------------------- */

static void
ring_push(struct sluice_queue *q, uint32_t idx)
{
	uint32_t p = q->rhead + q->nready;

	if (p >= q->cap)
		p -= q->cap;
	q->ring[p] = idx;
	q->nready++;
	q->slots[idx].state = S_READY;
}

static uint32_t
ring_pop(struct sluice_queue *q)
{
	uint32_t idx = q->ring[q->rhead];

	if (++q->rhead == q->cap)
		q->rhead = 0;
	q->nready--;
	return idx;
}

static uint32_t
take_free(struct sluice_queue *q)
{
	uint32_t idx = q->freev[--q->nfree];
	size_t held = (size_t)(q->cap - q->nfree);

	if (held > q->max_held)
		q->max_held = held;
	return idx;
}

static void
put_free(struct sluice_queue *q, struct slot *s)
{
	if (s->big && --s->big->refs == 0)
		sl_free(s->big);
	s->big = NULL;
	s->state = S_FREE;
	q->freev[q->nfree++] = slot_idx(q, s);
}

static void
owed_append(struct sluice_queue *q, uint32_t idx)
{
	struct slot *s = &q->slots[idx];

	s->wait = W_OWED;
	s->next = NONE;
	s->prev = q->owed_tail;
	if (q->owed_tail != NONE) {
		q->slots[q->owed_tail].next = idx;
	} else {
		q->owed_head = idx;
	}
	q->owed_tail = idx;
}

static void
owed_remove(struct sluice_queue *q, uint32_t idx)
{
	struct slot *s = &q->slots[idx];

	if (s->prev != NONE) {
		q->slots[s->prev].next = s->next;
	} else {
		q->owed_head = s->next;
	}
	if (s->next != NONE) {
		q->slots[s->next].prev = s->prev;
	} else {
		q->owed_tail = s->prev;
	}
	s->prev = s->next = NONE;
	s->wait = W_NONE;
}

/* ---- moving messages between states ----------------------------------- */

/*
 * Copy the message of slot @from into a free slot (there must be one) and
 * make the copy ready for a delivery with @attempts.  @from may be borrowed:
 * it is only read.
 */
static struct slot *
copy_ready(struct sluice_queue *q, uint32_t from, uint32_t attempts)
{
	struct slot *s = &q->slots[from], *d = &q->slots[take_free(q)];

	d->msg.id_len = s->msg.id_len;
	memcpy(d->area, s->msg.id, s->msg.id_len);
	d->msg.id = (const char *)d->area;
	d->msg.timestamp_ns = s->msg.timestamp_ns;
	d->msg.body_len = s->msg.body_len;
	if (s->big) {
		d->big = s->big;
		d->big->refs++;
		d->msg.body = d->big->data;
	} else {
		d->msg.body = inline_body(d, d->msg.id_len);
		if (s->msg.body_len)
			memcpy(inline_body(d, d->msg.id_len), s->msg.body,
			       s->msg.body_len);
	}
	d->attempts = attempts;
	d->nodup = 0;
	ring_push(q, slot_idx(q, d));
	return d;
}

/* sl_clock_wait() on q->mu, timed for the block profile. */
static int
blocked_wait(struct sluice_queue *q, pthread_cond_t *cv, int64_t deadline_ns)
{
	int64_t t0 = sl_block_begin();
	int rc = sl_clock_wait(q->clock, cv, &q->mu, deadline_ns);

	sl_block_end(t0);
	return rc;
}

/* Serve owed redeliveries, oldest first, while free slots last. */
static void
fulfil_owed(struct sluice_queue *q)
{
	uint32_t idx;
	struct slot *s;

	while (q->owed_head != NONE && q->nfree) {
		idx = q->owed_head;
		s = &q->slots[idx];
		owed_remove(q, idx);
		copy_ready(q, idx, s->attempts);
		s->state = S_STALE;
		q->npending--;
		q->nstale++;
	}
}

/* PENDING slot @idx is due for redelivery now. */
static void
owe(struct sluice_queue *q, uint32_t idx)
{
	owed_append(q, idx);
	fulfil_owed(q);
}

static void
drop_lease(struct sluice_queue *q, struct slot *s)
{
	if (s->hpos[H_LEASE] != NONE)
		heap_remove(q, H_LEASE, slot_idx(q, s));
}

/* A LEASED slot's lease is gone (expiry, disconnect): redeliver it. */
static void
lose_lease(struct sluice_queue *q, struct slot *s)
{
	drop_lease(q, s);
	q->nleased--;
	s->attempts = s->msg.attempts + 1;
	if (!s->lent) {
		ring_push(q, slot_idx(q, s));
		return;
	}
	s->state = S_PENDING;
	q->npending++;
	owe(q, slot_idx(q, s));
}

/* Make due delayed messages ready and redeliver expired leases. */
static void
process(struct sluice_queue *q, int64_t now)
{
	uint32_t idx;
	struct slot *s;

	while (heap_top(q, H_DUE) <= now) {
		idx = q->heap[H_DUE].v[0];
		s = &q->slots[idx];
		heap_remove(q, H_DUE, idx);
		if (s->state == S_DELAYED) {
			q->ndelayed--;
			ring_push(q, idx);
		} else {
			/* PENDING: its handler still borrows it. */
			s->wait = W_NONE;
			owe(q, idx);
		}
	}
	while (heap_top(q, H_LEASE) <= now) {
		s = &q->slots[q->heap[H_LEASE].v[0]];
		lose_lease(q, s);
		q->st.expired++;
	}
}

/*
 * The slot @m was delivered from, if @m is a current delivery of @q.  Only
 * the handle fields are trusted, so a copy of the struct works too.
 */
static struct slot *
lookup(const struct sluice_queue *q, const struct sluice_msg *m)
{
	uintptr_t p, lo = (uintptr_t)q->slots;
	const struct slot *s;

	if (!m)
		return NULL;
	p = (uintptr_t)m->source_data;
	if (p < lo || p >= lo + (uintptr_t)q->cap * sizeof(struct slot) ||
	    (p - lo) % sizeof(struct slot) != 0)
		return NULL;
	s = m->source_data;
	if (s->gen != m->lease)
		return NULL;
	return &q->slots[slot_idx(q, s)];
}

/* ---- waking ----------------------------------------------------------- */

static void
plan(const struct sluice_queue *q, struct wake *w)
{
	bool idle = active(q) == 0;

	w->fetch = 0;
	w->fetch_all = false;
	if (q->fetch_waiters) {
		/* Wake as many fetchers as the ready messages can keep busy,
		 * judging by the size of the last fetch: waking all of them
		 * for a few messages only makes them race for the lock and
		 * go back to sleep. */
		uint32_t need = (q->nready + q->fetch_hint - 1) / q->fetch_hint;

		if ((q->closed && idle) || need >= q->fetch_waiters)
			w->fetch_all = true;
		else
			w->fetch = need;
	}
	/* Hysteresis: a publisher that waits for room is woken when a
	 * useful amount is free (see space_need), not for every slot, so
	 * producer and consumers do not ping-pong one message at a time. */
	w->space = q->space_waiters && q->nfree >= q->space_need;
	w->idle = q->idle_waiters && idle;
}

static void
signal_waiters(struct sluice_queue *q, const struct wake *w)
{
	uint32_t i;

	if (w->fetch_all)
		pthread_cond_broadcast(&q->fetch_cv);
	for (i = 0; i < w->fetch; i++)
		pthread_cond_signal(&q->fetch_cv);
	if (w->space)
		pthread_cond_broadcast(&q->space_cv);
	if (w->idle)
		pthread_cond_broadcast(&q->idle_cv);
}

/* Unlock, then wake.  The queue outlives every call into it. */
static void
unlock_wake(struct sluice_queue *q, const struct wake *w)
{
	pthread_mutex_unlock(&q->mu);
	signal_waiters(q, w);
}

static void
unlock_plan(struct sluice_queue *q)
{
	struct wake w;

	plan(q, &w);
	if (q->top_moved) {
		/* An earlier due time or lease end: fetchers blocked with a
		 * later timeout (or none) must look again, or the message
		 * would wait for an unrelated wake-up. */
		q->top_moved = false;
		if (q->fetch_waiters)
			w.fetch_all = true;
	}
	unlock_wake(q, &w);
}

size_t
sl_queue_waiters(struct sluice_queue *q)
{
	size_t n;

	sl_mutex_lock(&q->mu);
	n = (size_t)q->fetch_waiters + q->space_waiters + q->idle_waiters;
	pthread_mutex_unlock(&q->mu);
	return n;
}

/* ---- publishing ------------------------------------------------------- */

/* "00".."ff": ids are formatted a byte at a time on the publish path. */
static const char hex_pairs[513] =
	"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
	"404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
	"606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
	"808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
	"a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
	"c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
	"e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

static void
hex_id(char *out, uint64_t v)
{
	size_t i;

	for (i = GEN_ID_LEN / 2; i-- > 0;) {
		memcpy(out + 2 * i, hex_pairs + 2 * (v & 0xFF), 2);
		v >>= 8;
	}
}

static void
fill(struct sluice_queue *q, const char *id, size_t id_len,
     const struct sluice_bytes *b, struct big **bigp, int64_t now)
{
	struct slot *s = &q->slots[take_free(q)];

	if (id) {
		memcpy(s->area, id, id_len);
		s->msg.id_len = (uint8_t)id_len;
	} else {
		hex_id((char *)s->area, ++q->next_id);
		s->msg.id_len = GEN_ID_LEN;
	}
	s->msg.id = (const char *)s->area;
	s->msg.timestamp_ns = now;
	s->msg.body_len = b->len;
	if (b->len > INLINE_BODY) {
		s->big = *bigp;
		*bigp = NULL;
		s->msg.body = s->big->data;
	} else {
		s->msg.body = inline_body(s, s->msg.id_len);
		if (b->len)
			memcpy(inline_body(s, s->msg.id_len), b->ptr, b->len);
	}
	s->attempts = 1;
	s->nodup = 0;
	ring_push(q, slot_idx(q, s));
}

static void
free_bigs(struct big **bigs, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		sl_free(bigs[i]);
}

/*
 * Copy the bodies too large for a slot before taking the lock, so the
 * critical section never allocates.  *@out stays NULL when none is.
 */
static int
prepare_bigs(const struct sluice_bytes *bodies, size_t n, struct big **one,
	     struct big ***out)
{
	struct big **bigs;
	size_t i;

	*out = NULL;
	for (i = 0; i < n && bodies[i].len <= INLINE_BODY; i++)
		;
	if (i == n)
		return 0;
	bigs = n == 1 ? one : sl_calloc(n, sizeof(*bigs)); /* NOLINT */
	if (!bigs)
		return SLUICE_ENOMEM;
	for (; i < n; i++) {
		if (bodies[i].len <= INLINE_BODY)
			continue;
		bigs[i] = sl_malloc(sizeof(struct big) + bodies[i].len);
		if (!bigs[i]) {
			free_bigs(bigs, n);
			if (bigs != one)
				sl_free(bigs);
			return SLUICE_ENOMEM;
		}
		bigs[i]->refs = 1;
		memcpy(bigs[i]->data, bodies[i].ptr, bodies[i].len);
	}
	*out = bigs;
	return 0;
}

static int
check_bodies(const struct sluice_queue *q, const struct sluice_bytes *bodies,
	     size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (bodies[i].len > q->max_body)
			return SLUICE_EMSGSIZE;
		if (!bodies[i].ptr && bodies[i].len)
			return SLUICE_EINVAL;
	}
	return 0;
}

static int
publish(struct sluice_queue *q, const char *id, size_t id_len,
	const struct sluice_bytes *bodies, size_t n, int64_t deadline_ns)
{
	struct big *one = NULL, **bigs = NULL;
	bool timed_out = false;
	uint32_t need;
	size_t i, done = 0, k;
	struct wake w;
	int64_t now;
	int err;

	err = check_bodies(q, bodies, n);
	if (!err)
		err = prepare_bigs(bodies, n, &one, &bigs);
	if (err)
		return err;
	now = now_ns(q);
	sl_mutex_lock(&q->mu);
	for (;;) {
		if (q->closed) {
			err = SLUICE_ECLOSED;
			break;
		}
		k = n - done < q->nfree ? n - done : q->nfree;
		for (i = done; i < done + k; i++) {
			fill(q, id, id_len, &bodies[i], bigs ? &bigs[i] : NULL,
			     now);
		}
		done += k;
		q->st.published += k;
		if (done == n)
			break;
		if (timed_out) {
			err = SLUICE_ETIMEDOUT;
			break;
		}
		/* Consumers must see what went in while we wait for room. */
		plan(q, &w);
		signal_waiters(q, &w);
		/* Wake me when what I still need fits, or a quarter of the
		 * queue is free, whichever is less; with several publishers
		 * waiting, the smallest need counts. */
		need = (uint32_t)(n - done < q->cap / 4 ? n - done
							: q->cap / 4);
		if (need == 0)
			need = 1;
		if (q->space_waiters == 0 || need < q->space_need)
			q->space_need = need;
		q->space_waiters++;
		if (blocked_wait(q, &q->space_cv, deadline_ns) ==
		    SLUICE_ETIMEDOUT)
			timed_out = true;
		q->space_waiters--;
	}
	unlock_plan(q);
	if (bigs) {
		free_bigs(bigs + done, n - done);
		if (bigs != &one)
			sl_free(bigs);
	}
	return done ? (int)done : err;
}

int
sluice_queue_publish(struct sluice_queue *q, const char *id, const void *body,
		     size_t len, int64_t deadline_ns)
{
	struct sluice_bytes b = { body, len };
	size_t id_len = 0;
	int rc;

	if (!q)
		return SLUICE_EINVAL;
	if (id) {
		id_len = strnlen(id, SLUICE_MSG_ID_MAX + 1);
		if (id_len == 0 || id_len > SLUICE_MSG_ID_MAX)
			return SLUICE_EINVAL;
	}
	rc = publish(q, id, id_len, &b, 1, deadline_ns);
	return rc > 0 ? 0 : rc;
}

int
sluice_queue_publish_batch(struct sluice_queue *q,
			   const struct sluice_bytes *bodies, size_t n,
			   int64_t deadline_ns)
{
	if (!q || (!bodies && n) || n > INT_MAX)
		return SLUICE_EINVAL;
	if (n == 0)
		return 0;
	return publish(q, NULL, 0, bodies, n, deadline_ns);
}

/* ---- the source operations -------------------------------------------- */

/* Deliver up to @max ready messages; @now is valid when @have_now. */
static size_t
take(struct sluice_queue *q, struct sluice_msg **out, size_t max, int64_t now,
     bool have_now)
{
	struct slot *s;
	size_t n;

	if (q->lease_ns && !have_now)
		now = now_ns(q);
	for (n = 0; n < max && q->nready; n++) {
		s = &q->slots[ring_pop(q)];
		s->state = S_LEASED;
		s->lent = 1;
		s->msg.attempts = s->attempts;
		s->msg.lease = ++s->gen;
		if (q->lease_ns) {
			s->key[H_LEASE] = now > INT64_MAX - q->lease_ns
						  ? INT64_MAX
						  : now + q->lease_ns;
			heap_push(q, H_LEASE, slot_idx(q, s));
		}
		out[n] = &s->msg;
		if (q->dup_every && !s->nodup) {
			if (q->dup_count < q->dup_every)
				q->dup_count++;
			if (q->dup_count >= q->dup_every && q->nfree) {
				q->dup_count = 0;
				copy_ready(q, slot_idx(q, s), s->msg.attempts)
					->nodup = 1;
				q->st.duplicated++;
			}
		}
		s->nodup = 0;
	}
	q->nleased += (uint32_t)n;
	q->st.delivered += n;
	return n;
}

/*
 * One look at the queue for q_fetch(): true when the call is over, with
 * the count or code in *@rc; false when it should wait.
 */
static bool
fetch_step(struct sluice_queue *q, struct sluice_msg **out, size_t max,
	   uint64_t seq, bool give_up, int *rc)
{
	bool have_now;
	int64_t now = 0;

	if (q->disc_pending) {
		q->disc_pending = false;
		*rc = SLUICE_EDISCONNECTED;
		return true;
	}
	/* The clock is read only when something is timed. */
	have_now = q->heap[H_DUE].n || q->heap[H_LEASE].n;
	if (have_now) {
		now = now_ns(q);
		process(q, now);
	}
	if (q->nready) {
		*rc = (int)take(q, out, max, now, have_now);
		return true;
	}
	*rc = 0;
	if (q->closed && active(q) == 0) {
		*rc = SLUICE_ECLOSED;
		return true;
	}
	if (give_up || q->wake_seq != seq)
		return true;
	if (q->wake_pending) {
		/* A wakeup nobody was blocked for: it may have been meant
		 * for this call, racing its way in. */
		q->wake_pending = false;
		return true;
	}
	return false;
}

/* Until when a fetch waits: its deadline or the next timed event. */
static int64_t
wait_until(const struct sluice_queue *q, int64_t deadline_ns)
{
	int64_t until = heap_top(q, H_DUE);

	if (heap_top(q, H_LEASE) < until)
		until = heap_top(q, H_LEASE);
	if (deadline_ns != SLUICE_FOREVER && deadline_ns <= until)
		return deadline_ns;
	return until == INT64_MAX ? SLUICE_FOREVER : until;
}

static int
q_fetch(void *self, struct sluice_msg **out, size_t max, int64_t deadline_ns)
{
	struct sluice_queue *q = self;
	bool timed_out = false;
	int64_t until;
	uint64_t seq;
	int rc;

	if (!q || !out || max == 0)
		return SLUICE_EINVAL;
	if (max > INT_MAX)
		max = INT_MAX;
	sl_mutex_lock(&q->mu);
	/* A slowly decaying maximum: consumers that block for one message
	 * and then fetch in bulk are judged by their bulk fetches. */
	if ((uint32_t)max >= q->fetch_hint)
		q->fetch_hint = (uint32_t)max;
	else
		q->fetch_hint -= (q->fetch_hint - (uint32_t)max) / 16;
	seq = q->wake_seq;
	while (!fetch_step(q, out, max, seq, timed_out || deadline_ns == 0,
			   &rc)) {
		until = wait_until(q, deadline_ns);
		q->fetch_waiters++;
		if (blocked_wait(q, &q->fetch_cv, until) == SLUICE_ETIMEDOUT &&
		    until == deadline_ns)
			timed_out = true;
		q->fetch_waiters--;
	}
	unlock_plan(q);
	return rc;
}

/*
 * Deliver every message that is waiting, delayed ones included whatever
 * their due time: a consumer that is shutting down and has nowhere to give
 * messages back (stdin) takes them all to record them.
 */
int
sluice_queue_take_all(struct sluice_queue *q, struct sluice_msg **out,
		      size_t max)
{
	uint32_t idx;
	size_t n;

	if (!q || !out)
		return SLUICE_EINVAL;
	if (max > INT_MAX)
		max = INT_MAX;
	sl_mutex_lock(&q->mu);
	while (q->heap[H_DUE].n) {
		idx = q->heap[H_DUE].v[0];
		heap_remove(q, H_DUE, idx);
		if (q->slots[idx].state == S_DELAYED) {
			q->ndelayed--;
			ring_push(q, idx);
		} else {
			q->slots[idx].wait = W_NONE;
			owe(q, idx);
		}
	}
	n = take(q, out, max, 0, false);
	unlock_plan(q);
	return (int)n;
}

static int
q_ack(void *self, struct sluice_msg *const *msgs, size_t n)
{
	struct sluice_queue *q = self;
	size_t i, refused = 0;
	struct slot *s;

	if (!q || (!msgs && n))
		return SLUICE_EINVAL;
	sl_mutex_lock(&q->mu);
	for (i = 0; i < n; i++) {
		s = lookup(q, msgs[i]);
		if (!s || s->state != S_LEASED || !s->lent) {
			refused++;
			continue;
		}
		if (q->drop_acks) {
			/* Fault: report success, keep the lease. */
			q->drop_acks--;
			q->st.acks_dropped++;
			continue;
		}
		drop_lease(q, s);
		s->state = S_STALE;
		q->nleased--;
		q->nstale++;
		q->st.acked++;
	}
	q->st.ack_stale += refused;
	unlock_plan(q);
	return refused > INT_MAX ? INT_MAX : (int)refused;
}

static int
q_requeue(void *self, struct sluice_msg *m, int64_t delay_ns,
	  bool count_attempt)
{
	struct sluice_queue *q = self;
	struct slot *s;
	int64_t now;

	if (!q)
		return SLUICE_EINVAL;
	sl_mutex_lock(&q->mu);
	s = lookup(q, m);
	if (!s || s->state != S_LEASED || !s->lent) {
		pthread_mutex_unlock(&q->mu);
		return SLUICE_ESTALE;
	}
	drop_lease(q, s);
	s->state = S_PENDING;
	q->nleased--;
	q->npending++;
	s->attempts = s->msg.attempts + (count_attempt ? 1U : 0U);
	q->st.requeued++;
	if (delay_ns > 0) {
		now = now_ns(q);
		s->key[H_DUE] =
			now > INT64_MAX - delay_ns ? INT64_MAX : now + delay_ns;
		s->wait = W_HEAP;
		heap_push(q, H_DUE, slot_idx(q, s));
	} else {
		owe(q, slot_idx(q, s));
	}
	unlock_plan(q);
	return 0;
}

static int
q_touch(void *self, struct sluice_msg *m)
{
	struct sluice_queue *q = self;
	struct slot *s;
	int64_t now;

	if (!q)
		return SLUICE_EINVAL;
	sl_mutex_lock(&q->mu);
	s = lookup(q, m);
	if (!s || s->state != S_LEASED || !s->lent) {
		pthread_mutex_unlock(&q->mu);
		return SLUICE_ESTALE;
	}
	if (q->lease_ns) {
		now = now_ns(q);
		s->key[H_LEASE] = now > INT64_MAX - q->lease_ns
					  ? INT64_MAX
					  : now + q->lease_ns;
		heap_down(q, H_LEASE, s->hpos[H_LEASE]);
	}
	pthread_mutex_unlock(&q->mu);
	return 0;
}

static void
q_release(void *self, struct sluice_msg *const *msgs, size_t n)
{
	struct sluice_queue *q = self;
	struct slot *s;
	size_t i;

	if (!q || !msgs)
		return;
	sl_mutex_lock(&q->mu);
	for (i = 0; i < n; i++) {
		s = lookup(q, msgs[i]);
		if (!s || !s->lent)
			continue; /* not borrowed: a double release */
		s->lent = 0;
		switch (s->state) {
		case S_STALE:
			q->nstale--;
			put_free(q, s);
			break;
		case S_PENDING:
			/* Nobody reads it any more: redeliver in place. */
			q->npending--;
			if (s->wait == W_HEAP) {
				s->state = S_DELAYED;
				q->ndelayed++;
			} else {
				owed_remove(q, slot_idx(q, s));
				ring_push(q, slot_idx(q, s));
			}
			s->wait = W_NONE;
			break;
		case S_LEASED:
			/*
			 * Released unsettled: an ack the fault switch dropped,
			 * or a caller bug.  A running lease brings it back;
			 * without one, redeliver now rather than lose it.
			 */
			if (s->hpos[H_LEASE] == NONE)
				lose_lease(q, s);
			break;
		default:
			break;
		}
	}
	fulfil_owed(q);
	unlock_plan(q);
}

static void
q_wakeup(void *self)
{
	struct sluice_queue *q = self;
	struct wake w;

	sl_mutex_lock(&q->mu);
	q->wake_seq++;
	q->wake_pending = true;
	plan(q, &w);
	w.fetch_all = q->fetch_waiters > 0;
	unlock_wake(q, &w);
}

static void
q_set_credit(void *self, size_t max_in_flight)
{
	struct sluice_queue *q = self;

	sl_mutex_lock(&q->mu);
	q->credit = max_in_flight;
	pthread_mutex_unlock(&q->mu);
}

static void
q_close(void *self)
{
	sluice_queue_close(self);
}

static const struct sluice_source_ops queue_ops = {
	.name = "queue",
	.fetch = q_fetch,
	.ack = q_ack,
	.requeue = q_requeue,
	.touch = q_touch,
	.release = q_release,
	.wakeup = q_wakeup,
	.set_credit = q_set_credit,
	.close = q_close,
};

struct sluice_source
sluice_queue_source(struct sluice_queue *q)
{
	struct sluice_source src = { &queue_ops, q };

	return src;
}

/* ---- control ---------------------------------------------------------- */

void
sluice_queue_close(struct sluice_queue *q)
{
	struct wake w;

	if (!q)
		return;
	sl_mutex_lock(&q->mu);
	q->closed = true;
	plan(q, &w);
	w.fetch_all = q->fetch_waiters > 0;
	w.space = q->space_waiters > 0;
	unlock_wake(q, &w);
}

void
sluice_queue_stats(struct sluice_queue *q, struct sluice_queue_stats *out)
{
	sl_mutex_lock(&q->mu);
	*out = q->st;
	out->ready = q->nready;
	out->delayed = (size_t)q->ndelayed + q->npending;
	out->leased = q->nleased;
	out->held = (size_t)(q->cap - q->nfree);
	out->max_held = q->max_held;
	pthread_mutex_unlock(&q->mu);
}

void
sluice_queue_fault_duplicate(struct sluice_queue *q, unsigned every)
{
	sl_mutex_lock(&q->mu);
	q->dup_every = every;
	q->dup_count = 0;
	pthread_mutex_unlock(&q->mu);
}

void
sluice_queue_fault_drop_acks(struct sluice_queue *q, unsigned n)
{
	sl_mutex_lock(&q->mu);
	q->drop_acks = n;
	pthread_mutex_unlock(&q->mu);
}

void
sluice_queue_disconnect(struct sluice_queue *q)
{
	struct wake w;
	uint32_t i;

	sl_mutex_lock(&q->mu);
	for (i = 0; i < q->cap; i++) {
		if (q->slots[i].state == S_LEASED)
			lose_lease(q, &q->slots[i]);
	}
	q->disc_pending = true;
	plan(q, &w);
	w.fetch_all = q->fetch_waiters > 0;
	unlock_wake(q, &w);
}

void
sluice_queue_expire(struct sluice_queue *q)
{
	sl_mutex_lock(&q->mu);
	process(q, now_ns(q));
	unlock_plan(q);
}

int
sluice_queue_wait_idle(struct sluice_queue *q, int64_t deadline_ns)
{
	bool timed_out = false;
	int rc = 0;

	sl_mutex_lock(&q->mu);
	while (active(q) != 0) {
		if (timed_out) {
			rc = SLUICE_ETIMEDOUT;
			break;
		}
		q->idle_waiters++;
		if (blocked_wait(q, &q->idle_cv, deadline_ns) ==
		    SLUICE_ETIMEDOUT)
			timed_out = true;
		q->idle_waiters--;
	}
	pthread_mutex_unlock(&q->mu);
	return rc;
}

/* ---- lifetime --------------------------------------------------------- */

/*
 * Producers and consumers hold the lock for short batch copies, so a
 * contended locker does better spinning a little than sleeping at once
 * (measured: about 12% less time per message with one producer and two
 * consumers on two cores).  The adaptive kind is a glibc extension.
 */
static int
mutex_init(pthread_mutex_t *mu)
{
	pthread_mutexattr_t attr;
	int err;

	err = pthread_mutexattr_init(&attr);
	if (err)
		return -err;
#if defined(__GLIBC__)
	err = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
	if (!err)
		err = pthread_mutex_init(mu, &attr);
	pthread_mutexattr_destroy(&attr);
	return -err;
}

static void
free_arrays(struct sluice_queue *q)
{
	sl_free(q->slots_mem);
	sl_free(q->freev);
	sl_free(q->ring);
	sl_free(q->heap[H_DUE].v);
	sl_free(q->heap[H_LEASE].v);
}

int
sluice_queue_new(const struct sluice_queue_config *cfg,
		 struct sluice_queue **out)
{
	struct sluice_queue *q;
	uint32_t i, cap;
	int err;

	if (!cfg || !out || cfg->capacity == 0 ||
	    cfg->capacity > MAX_CAPACITY || cfg->lease_ns < 0)
		return SLUICE_EINVAL;
	cap = (uint32_t)cfg->capacity;
	q = sl_calloc(1, sizeof(*q));
	if (!q)
		return SLUICE_ENOMEM;
	q->clock = cfg->clock ? cfg->clock : sluice_clock_monotonic();
	q->cap = cap;
	q->fetch_hint = 1;
	q->space_need = 1;
	q->max_body = cfg->max_body;
	q->lease_ns = cfg->lease_ns;
	/* Slots are cache-line aligned: over-allocate and round up. */
	q->slots_mem = sl_calloc(1, cap * sizeof(*q->slots) + 64);
	if (q->slots_mem)
		q->slots = (struct slot *)(((uintptr_t)q->slots_mem + 63) &
					   ~(uintptr_t)63);
	q->freev = sl_calloc(cap, sizeof(*q->freev));
	q->ring = sl_calloc(cap, sizeof(*q->ring));
	q->heap[H_DUE].v = sl_calloc(cap, sizeof(uint32_t));
	q->heap[H_LEASE].v = sl_calloc(cap, sizeof(uint32_t));
	err = SLUICE_ENOMEM;
	if (!q->slots || !q->freev || !q->ring || !q->heap[H_DUE].v ||
	    !q->heap[H_LEASE].v)
		goto out_free;
	for (i = 0; i < cap; i++) {
		struct slot *s = &q->slots[i];

		s->msg.source_data = s;
		s->hpos[H_DUE] = s->hpos[H_LEASE] = NONE;
		s->prev = s->next = NONE;
		/* Lowest index on top: the first slots used stay warm. */
		q->freev[i] = cap - 1 - i;
	}
	q->nfree = cap;
	q->owed_head = q->owed_tail = NONE;
	err = mutex_init(&q->mu);
	if (err)
		goto out_free;
	err = sl_cond_init(&q->fetch_cv);
	if (err)
		goto out_mutex;
	err = sl_cond_init(&q->space_cv);
	if (err)
		goto out_fetch_cv;
	err = sl_cond_init(&q->idle_cv);
	if (err)
		goto out_space_cv;
	sl_clock_watch_add(q->clock, &q->watch[0], &q->mu, &q->fetch_cv);
	sl_clock_watch_add(q->clock, &q->watch[1], &q->mu, &q->space_cv);
	sl_clock_watch_add(q->clock, &q->watch[2], &q->mu, &q->idle_cv);
	*out = q;
	return 0;

out_space_cv:
	pthread_cond_destroy(&q->space_cv);
out_fetch_cv:
	pthread_cond_destroy(&q->fetch_cv);
out_mutex:
	pthread_mutex_destroy(&q->mu);
out_free:
	free_arrays(q);
	sl_free(q);
	return err;
}

void
sluice_queue_free(struct sluice_queue *q)
{
	uint32_t i;

	if (!q)
		return;
	sl_clock_watch_del(q->clock, &q->watch[0]);
	sl_clock_watch_del(q->clock, &q->watch[1]);
	sl_clock_watch_del(q->clock, &q->watch[2]);
	for (i = 0; i < q->cap; i++) {
		if (q->slots[i].state != S_FREE)
			put_free(q, &q->slots[i]);
	}
	pthread_cond_destroy(&q->idle_cv);
	pthread_cond_destroy(&q->space_cv);
	pthread_cond_destroy(&q->fetch_cv);
	pthread_mutex_destroy(&q->mu);
	free_arrays(q);
	sl_free(q);
}
