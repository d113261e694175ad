/* SPDX-License-Identifier: MIT */
/*
 * nsq_source.c - the NSQ consumer source: many nsqd connections, one engine
 * source (contract in include/sluice/nsq.h; protocol references point into
 * docs/nsq-protocol.md).
 *
 * Threads.  The dialer thread polls the lookupds and runs every handshake
 * (nsq_conn.h, blocking with a deadline), so a slow nsqd never stalls the
 * others.  The I/O thread owns the sockets of connected slots: one poll()
 * over all of them plus an eventfd, reading frames with the sans-I/O codec,
 * answering heartbeats, and running the timers (heartbeat silence, RDY
 * redistribution, the backoff period, auto-TOUCH, CLOSE_WAIT waits).
 * Engine threads call fetch/ack/requeue/touch/release; they queue commands
 * in the slot's `out` buffer and kick the I/O thread through the eventfd.
 *
 * Slots.  One slot per nsqd address ever known (direct or discovered), never
 * freed before the source, so a record may point at its slot for life.  A
 * slot's session is stamped with a generation (msg.lease): when the
 * connection dies the stamp is cleared, so settling its messages is refused
 * (nsqd binds FIN/REQ/TOUCH to the delivering connection).
 *
 * RDY (section 8.3) and backoff (section 8.5) follow go-nsq, computed under
 * n->mu from the engine's credit; total_rdy is the sum of the RDY in force
 * and never exceeds the credit.  Unlike go-nsq, a backoff probe that lost
 * its connection (or had none) is re-armed by the I/O thread's tick
 * (ensure_probe), which is what go-nsq issues #106/#127/#128 lacked.
 *
 * Records.  One allocation per message holds struct sluice_msg, the id and
 * the body; released records go to a free list (n->pool) and the I/O
 * thread takes the whole list at once into its private cache, so steady
 * state allocates nothing.
 *
 * Locking: n->mu guards every field marked (mu), slot fields marked so, and
 * record fields next/lprev/lnext/state.  The I/O thread never holds n->mu
 * across a system call; the dialer never across a handshake or an HTTP
 * query.  The log callback runs with no lock held.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <sluice/metrics.h>
#include <sluice/nsq.h>

#include "core/clock_int.h"
#include "proto/nsq.h"
#include "source/nsq_conn.h"
#include "source/nsq_lookupd.h"
#include "util/alloc.h"

#define DEFAULT_HOST     "127.0.0.1"
#define DEFAULT_PORT     4150u
#define DEFAULT_CLIENT   "sluice"
#define DEFAULT_MAX_BODY ((size_t)1 << 20)
#define DEFAULT_TIMEOUT  (10 * SLUICE_NS_PER_S)
#define READ_CHUNK       65536u
#define CMD_MAX          64u
#define ERR_TEXT         640u
#define ADDR_MAX         272u
#ifndef SL_NSQ_POOL_MAX /* -DSL_NSQ_POOL_MAX=0: no pool (to measure it) */
#define SL_NSQ_POOL_MAX 4096u
#endif
#define POOL_MAX     SL_NSQ_POOL_MAX
#define REC_MIN_BODY 512u
#define TICK_NS      (100 * SLUICE_NS_PER_MS)
#define NGAUGE       7u

enum sstate { S_DOWN, S_UP, S_CLOSING };
enum rstate { R_FREE, R_QUEUED, R_LENT, R_SETTLED };
enum signal { SIG_RESUME, SIG_FAIL };

struct slot;

struct rec {
	struct sluice_msg msg;
	struct rec *next;          /* ready queue / pool link (mu) */
	struct rec *lprev, *lnext; /* lent list (mu) */
	struct slot *s;
	int64_t touched_ns;  /* delivery or last TOUCH, real time (mu) */
	int64_t deadline_ns; /* auto-TOUCH stops here, real time (mu) */
	enum rstate state;   /* (mu) */
	size_t cap;          /* body capacity */
	char id[SL_NSQ_ID_LEN];
	uint8_t body[];
};

struct slot {
	char addr[ADDR_MAX];    /* immutable */
	char host[256];         /* immutable */
	uint16_t port;          /* immutable */
	bool direct;            /* given by the user (mu) */
	bool listed;            /* in the last lookupd answer (mu) */
	bool retire;            /* close gracefully, do not redial (mu) */
	enum sstate state;      /* (mu) */
	bool dialing;           /* the dialer owns it now (mu) */
	bool fresh;             /* c.rbuf may hold frames from the handshake
				   (I/O thread) */
	bool lowered;           /* a RDY decrease is queued in out (mu) */
	struct sl_nsq_conn c;   /* the I/O thread's while UP/CLOSING */
	uint64_t gen;           /* lease stamp; 0 while down (mu) */
	struct sl_nsq_buf out;  /* commands for the I/O thread (mu) */
	struct sl_nsq_buf wbuf; /* being written (I/O thread) */
	uint32_t rdy, max_rdy;  /* (mu) */
	uint32_t in_flight;     /* (mu) */
	int64_t last_msg_ns, last_rdy_ns; /* (mu) */
	int64_t last_read_ns, hb_ns;      /* (I/O thread) */
	int64_t msg_to_ns;                /* (mu) */
	bool got_close_wait;              /* (I/O thread) */
	int64_t close_by;                 /* (mu) */
	int64_t next_dial_ns;             /* (mu) */
	unsigned fails;                   /* dials failed in a row (mu) */
	bool ever_up;                     /* (mu) */
	struct sluice_nsq_stats st;       /* (mu) */
	struct sluice_gauge *g[NGAUGE];   /* per-address gauges (mu) */
};

struct sluice_nsq {
	/* Immutable once open() returns: */ char *topic, *channel, *client_id,
		*host;
	char *tls_ca, *tls_cert, *tls_key, *auth; /* copies of the config */
	char **lookupd;
	size_t n_lookupd;
	struct sl_nsq_conn_config ccfg;
	struct sluice_nsq_config cfg; /* pointers in it are not used */
	const struct sluice_clock *clock;
	struct sl_clock_watch watch;
	int evfd;
	pthread_t io, dialer;
	bool io_started, dialer_started;

	pthread_mutex_t mu;
	pthread_cond_t cv;       /* fetchers (mu; registered with the clock) */
	pthread_cond_t dcv;      /* the dialer (mu; monotonic) */
	struct slot **slots;     /* (mu) */
	size_t nslots;           /* (mu) */
	struct rec *head, *tail; /* ready queue (mu) */
	struct rec *lent;        /* fetched, unsettled, auto-TOUCH (mu) */
	struct rec *pool;        /* released records (mu) */
	size_t npool;            /* (mu) */
	uint64_t next_gen;       /* (mu) */
	size_t credit;           /* the engine's max_in_flight (mu) */
	uint64_t total_rdy;      /* sum of slot rdy (mu) */
	uint64_t max_rdy_sum;    /* (mu) */
	unsigned level;          /* backoff level (mu) */
	bool bo_waiting;         /* a backoff period runs (mu) */
	int64_t bo_until;        /* when it ends (mu) */
	uint64_t backoffs;       /* (mu) */
	size_t probe_rr;         /* rotates the probe's slot (mu) */
	int64_t next_redist;     /* (mu) */
	int64_t next_poll;       /* lookupd (mu) */
	bool poll_now;           /* a connection closed: poll early (mu) */
	uint64_t polls, poll_errors; /* (mu) */
	bool stopping;               /* no more dials; CLS everywhere (mu) */
	bool closing;                /* close() began (mu) */
	bool quit;                   /* the threads end (mu) */
	bool joined;                 /* (mu) */
	bool disc_pending;           /* fetch owes SLUICE_EDISCONNECTED (mu) */
	uint64_t wake_seq;           /* (mu) */
	bool wake_pending;           /* (mu) */
	uint64_t rng;                /* xorshift state (mu) */
	int last_error;              /* (mu) */
	uint64_t disconnects, auto_touches; /* (mu) */
	char errtext[ERR_TEXT];             /* (mu) */
	pthread_mutex_t close_mu;           /* serialises close() */
	atomic_bool kicked; /* an eventfd write is unread (seq_cst: cleared
			       before the I/O thread takes commands, set
			       after a command is queued) */
	struct sluice_gauge_family *gf[NGAUGE]; /* when exported (mu) */
	bool exported;                          /* (mu) */
	int64_t next_metrics;                   /* (I/O thread) */

	/* The I/O thread's: */
	struct rec *cache; /* records to fill */
	struct slot **act; /* slots polled this turn */
	struct pollfd *pfd;
	size_t act_cap;
};

/* ---- small helpers ----------------------------------------------------- */

static void say(struct sluice_nsq *n, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Log a line through the user's callback.  No lock may be held. */
static void
say(struct sluice_nsq *n, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	if (!n->cfg.log)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	n->cfg.log(n->cfg.log_ud, line);
}

/* A uniform double in [0, 1).  n->mu held. */
static double
rnd(struct sluice_nsq *n)
{
	uint64_t x = n->rng;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	n->rng = x;
	return (double)(x >> 11) / (double)(UINT64_C(1) << 53);
}

enum cmd { C_FIN, C_REQ, C_TOUCH, C_RDY, C_NOP, C_CLS };

/* Append one short command to @b. */
static int
put_cmd(struct sl_nsq_buf *b, enum cmd c, const char *id, uint32_t arg)
{
	uint8_t *p;
	ssize_t r = SLUICE_EINVAL;

	if (sl_nsq_buf_reserve(b, CMD_MAX) < 0)
		return SLUICE_ENOMEM;
	p = b->p + b->len;
	switch (c) {
	case C_FIN:
		r = sl_nsq_enc_fin(p, CMD_MAX, id, SL_NSQ_ID_LEN);
		break;
	case C_REQ:
		r = sl_nsq_enc_req(p, CMD_MAX, id, SL_NSQ_ID_LEN, arg);
		break;
	case C_TOUCH:
		r = sl_nsq_enc_touch(p, CMD_MAX, id, SL_NSQ_ID_LEN);
		break;
	case C_RDY:
		r = sl_nsq_enc_rdy(p, CMD_MAX, arg);
		break;
	case C_NOP:
		r = sl_nsq_enc_nop(p, CMD_MAX);
		break;
	case C_CLS:
		r = sl_nsq_enc_cls(p, CMD_MAX);
		break;
	}
	if (r < 0)
		return (int)r;
	if ((size_t)r > CMD_MAX)
		return SLUICE_EMSGSIZE;
	b->len += (size_t)r;
	return 0;
}

/* Wake the I/O thread unless a wake-up is already on its way. */
static void
kick(struct sluice_nsq *n)
{
	sl_nsq_kick(n->evfd, &n->kicked);
}

/* Split "HOST:PORT" / "[V6]:PORT".  Returns 0 or SLUICE_EINVAL. */
static int
split_addr(const char *a, char *host, size_t hcap, uint16_t *port)
{
	const char *colon = strrchr(a, ':'), *h = a;
	size_t hl;
	char *end;
	long p;

	if (!colon || colon == a)
		return SLUICE_EINVAL;
	hl = (size_t)(colon - a);
	if (a[0] == '[' && colon[-1] == ']') {
		h = a + 1;
		hl -= 2;
	}
	if (hl == 0 || hl >= hcap)
		return SLUICE_EINVAL;
	p = strtol(colon + 1, &end, 10);
	if (*end || p <= 0 || p > 65535)
		return SLUICE_EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	*port = (uint16_t)p;
	return 0;
}

/* The slot for @addr, created if new.  n->mu held (or before threads). */
static struct slot *
slot_get(struct sluice_nsq *n, const char *addr)
{
	struct slot *s, **v;
	size_t i;

	for (i = 0; i < n->nslots; i++)
		if (strcmp(n->slots[i]->addr, addr) == 0)
			return n->slots[i];
	if (strlen(addr) >= ADDR_MAX)
		return NULL;
	s = sl_calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	if (split_addr(addr, s->host, sizeof(s->host), &s->port) < 0) {
		sl_free(s);
		return NULL;
	}
	v = sl_realloc(n->slots, (n->nslots + 1) * sizeof(*v));
	if (!v) {
		sl_free(s);
		return NULL;
	}
	n->slots = v;
	snprintf(s->addr, sizeof(s->addr), "%s", addr);
	sl_nsq_conn_init(&s->c, n->cfg.max_body);
	v[n->nslots++] = s;
	return s;
}

static bool
wanted(const struct sluice_nsq *n, const struct slot *s)
{
	return !n->stopping && !s->retire && (s->direct || s->listed);
}

/* ---- RDY and backoff (mu held) ----------------------------------------- */

static void
send_rdy(struct sluice_nsq *n, struct slot *s, uint32_t count)
{
	if (count == s->rdy)
		return;
	if (put_cmd(&s->out, C_RDY, NULL, count) < 0)
		return; /* out of memory: keep the old value, retried later */
	n->total_rdy = n->total_rdy - s->rdy + count;
	if (count < s->rdy)
		s->lowered = true;
	s->rdy = count;
	s->st.rdy = count;
	if (count)
		s->last_rdy_ns = sl_mono_ns();
	if (n->total_rdy > n->max_rdy_sum)
		n->max_rdy_sum = n->total_rdy;
}

/* go-nsq's updateRDY: never let the sum exceed the credit.  0 or -1. */
static int
update_rdy(struct sluice_nsq *n, struct slot *s, uint32_t count)
{
	int64_t max_possible;

	if (s->state != S_UP)
		return -1;
	if (count > s->max_rdy)
		count = s->max_rdy;
	max_possible = (int64_t)n->credit - (int64_t)n->total_rdy + s->rdy;
	if (max_possible > 0 && max_possible < count)
		count = (uint32_t)max_possible;
	if (max_possible <= 0 && count > 0)
		return -1;
	send_rdy(n, s, count);
	return 0;
}

static size_t
count_up(const struct sluice_nsq *n)
{
	size_t i, up = 0;

	for (i = 0; i < n->nslots; i++)
		up += n->slots[i]->state == S_UP;
	return up;
}

static uint32_t
per_conn(const struct sluice_nsq *n)
{
	size_t up = count_up(n), v;

	if (n->credit == 0 || up == 0)
		return 0;
	v = n->credit / up;
	if (v < 1)
		v = 1;
	return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* In backoff, outside a period, with no RDY anywhere: give one slot RDY 1
 * (the probe), so no sequence of closes leaves the consumer stuck. */
static void
ensure_probe(struct sluice_nsq *n)
{
	size_t i;

	if (n->level == 0 || n->bo_waiting || n->total_rdy > 0 || n->closing ||
	    n->nslots == 0)
		return;
	for (i = 0; i < n->nslots; i++) {
		struct slot *s = n->slots[(n->probe_rr + i) % n->nslots];

		if (s->state == S_UP && update_rdy(n, s, 1) == 0) {
			n->probe_rr += i + 1;
			return;
		}
	}
}

/* Spread the credit: lower first, then raise (section 8.2 step 5). */
static void
rebalance(struct sluice_nsq *n)
{
	uint32_t per;
	size_t i;

	if (n->closing)
		return;
	if (n->level > 0) {
		ensure_probe(n);
		return;
	}
	per = per_conn(n);
	for (i = 0; i < n->nslots; i++)
		if (n->slots[i]->state == S_UP && n->slots[i]->rdy > per)
			(void)update_rdy(n, n->slots[i], per);
	for (i = 0; i < n->nslots; i++)
		if (n->slots[i]->state == S_UP && n->slots[i]->rdy < per)
			(void)update_rdy(n, n->slots[i], per);
}

static int64_t
bo_duration(const struct sluice_nsq *n, unsigned level)
{
	if (level >= 40)
		return INT64_MAX;
	return n->cfg.backoff_unit_ns * ((int64_t)1 << level);
}

/* A result from the engine (section 8.5 on_signal). */
static void
backoff_signal(struct sluice_nsq *n, enum signal sig)
{
	bool changed = false;
	int64_t d;
	size_t i;

	if (n->cfg.backoff_max_ns <= 0 || n->bo_waiting || n->closing)
		return;
	if (sig == SIG_RESUME && n->level > 0) {
		n->level--;
		changed = true;
	}
	if (sig == SIG_FAIL &&
	    bo_duration(n, n->level + 1) <= n->cfg.backoff_max_ns) {
		n->level++;
		changed = true;
	}
	if (n->level == 0 && changed) {
		rebalance(n);
	} else if (n->level > 0) {
		d = bo_duration(n, n->level);
		if (d > n->cfg.backoff_max_ns)
			d = n->cfg.backoff_max_ns;
		for (i = 0; i < n->nslots; i++)
			if (n->slots[i]->state == S_UP)
				send_rdy(n, n->slots[i], 0);
		n->bo_waiting = true;
		n->bo_until = sl_mono_ns() + d;
		n->backoffs++;
	}
}

/* The period is over: probe with RDY 1 on one connection. */
static void
backoff_expire(struct sluice_nsq *n, int64_t now)
{
	if (!n->bo_waiting || now < n->bo_until)
		return;
	n->bo_waiting = false;
	ensure_probe(n);
	if (n->total_rdy == 0 && count_up(n) == 0)
		return; /* ensure_probe() runs again when one comes up */
}

/* Section 8.3's redistribution loop. */
static void
redistribute(struct sluice_nsq *n, int64_t now)
{
	size_t i, up = count_up(n), cand = 0;
	int64_t avail;

	if (now < n->next_redist)
		return;
	n->next_redist = now + n->cfg.rdy_redistribute_ns;
	if (n->bo_waiting || up == 0 || n->closing)
		return;
	if (!(up > n->credit || (n->level > 0 && up > 1)))
		return;
	for (i = 0; i < n->nslots; i++) {
		struct slot *s = n->slots[i];

		if (s->state == S_UP && s->rdy > 0 &&
		    (now - s->last_msg_ns > n->cfg.low_rdy_idle_ns ||
		     now - s->last_rdy_ns > n->cfg.low_rdy_ns))
			(void)update_rdy(n, s, 0);
	}
	avail = (int64_t)(n->level > 0 ? 1 : n->credit) - (int64_t)n->total_rdy;
	for (i = 0; i < n->nslots; i++)
		cand += n->slots[i]->state == S_UP && n->slots[i]->rdy == 0;
	while (avail > 0 && cand > 0) {
		size_t pick = (size_t)(rnd(n) * (double)cand), k = 0;

		for (i = 0; i < n->nslots; i++) {
			struct slot *s = n->slots[i];

			if (s->state != S_UP || s->rdy != 0)
				continue;
			if (k++ == pick) {
				(void)update_rdy(n, s, 1);
				break;
			}
		}
		cand--;
		avail--;
	}
}

/* ---- records ----------------------------------------------------------- */

static void
lent_del(struct sluice_nsq *n, struct rec *r)
{
	if (r->lprev)
		r->lprev->lnext = r->lnext;
	else if (n->lent == r)
		n->lent = r->lnext;
	if (r->lnext)
		r->lnext->lprev = r->lprev;
	r->lprev = r->lnext = NULL;
}

/* Give @r back to the pool.  n->mu held. */
static void
rec_put(struct sluice_nsq *n, struct rec *r)
{
	r->state = R_FREE;
	if (n->npool >= POOL_MAX) {
		sl_free(r);
		return;
	}
	r->next = n->pool;
	n->pool = r;
	n->npool++;
}

/* A record for @len body bytes, from the I/O thread's cache. */
static struct rec *
rec_get(struct sluice_nsq *n, size_t len)
{
	struct rec *r = n->cache;
	size_t cap = len < REC_MIN_BODY ? REC_MIN_BODY : len;

	if (r && r->cap >= len) {
		n->cache = r->next;
		return r;
	}
	r = sl_malloc(sizeof(*r) + cap);
	if (r)
		r->cap = cap;
	return r;
}

static void
free_chain(struct rec *r)
{
	while (r) {
		struct rec *next = r->next;

		sl_free(r);
		r = next;
	}
}

/* ---- the I/O thread ---------------------------------------------------- */

/* What one read's frames did, added to the slot under the lock. */
struct tally {
	uint64_t messages, heartbeats, fin_failed, req_failed, touch_failed;
	uint64_t alloc_failed;
};

/* Hand one read's records to fetchers, or straight back (REQ 0) when the
 * source or the slot is closing. */
static void
deliver(struct sluice_nsq *n, struct slot *s, struct rec *head,
	struct rec *tail, const struct tally *t)
{
	struct rec *r, *next;
	int64_t now = sl_mono_ns();

	pthread_mutex_lock(&n->mu);
	s->st.messages += t->messages;
	s->st.heartbeats += t->heartbeats;
	s->st.fin_failed += t->fin_failed;
	s->st.req_failed += t->req_failed;
	s->st.touch_failed += t->touch_failed;
	s->st.alloc_failed += t->alloc_failed;
	if (t->messages)
		s->last_msg_ns = now;
	if (head && (n->closing || s->state != S_UP)) {
		for (r = head; r; r = next) {
			next = r->next;
			if (put_cmd(&s->out, C_REQ, r->id, 0) == 0) {
				s->st.handed_back++;
				s->in_flight--;
			}
			rec_put(n, r);
		}
	} else if (head) {
		for (r = head; r; r = r->next) {
			r->msg.lease = s->gen;
			r->state = R_QUEUED;
		}
		if (n->tail)
			n->tail->next = head;
		else
			n->head = head;
		n->tail = tail;
		pthread_cond_broadcast(&n->cv);
	}
	if (!n->cache) {
		n->cache = n->pool;
		n->pool = NULL;
		n->npool = 0;
	}
	pthread_mutex_unlock(&n->mu);
}

static int
on_error_frame(struct sluice_nsq *n, struct slot *s,
	       const struct sl_nsq_frame *f, struct tally *t)
{
	struct sl_nsq_error e;

	if (sl_nsq_error_parse(f->data, f->len, &e) < 0) {
		pthread_mutex_lock(&n->mu);
		snprintf(n->errtext, sizeof(n->errtext),
			 "%s: nsqd sent an empty error frame", s->addr);
		pthread_mutex_unlock(&n->mu);
		return SLUICE_EPROTO;
	}
	if (e.fatal) {
		pthread_mutex_lock(&n->mu);
		snprintf(n->errtext, sizeof(n->errtext), "%s: nsqd: %.*s",
			 s->addr, (int)(f->len > 200 ? 200 : f->len),
			 (const char *)f->data);
		pthread_mutex_unlock(&n->mu);
		return SLUICE_EIO;
	}
	if (e.code_len == 12 && memcmp(e.code, "E_FIN_FAILED", 12) == 0)
		t->fin_failed++;
	else if (e.code_len == 12 && memcmp(e.code, "E_REQ_FAILED", 12) == 0)
		t->req_failed++;
	else
		t->touch_failed++;
	return 0;
}

static void
note_bad_frame(struct sluice_nsq *n, struct slot *s, ssize_t why)
{
	pthread_mutex_lock(&n->mu);
	snprintf(n->errtext, sizeof(n->errtext),
		 "%s: bad frame from nsqd: %s%s", s->addr,
		 sluice_strerror((int)why),
		 sl_nsq_is_http(s->c.rbuf.p, s->c.rbuf.len) ? " (an HTTP port?)"
							    : "");
	pthread_mutex_unlock(&n->mu);
}

/* Parse every complete frame in the slot's read buffer. */
static int
parse(struct sluice_nsq *n, struct slot *s)
{
	struct rec *head = NULL, *tail = NULL;
	struct tally t = { 0 };
	struct sl_nsq_buf *rb = &s->c.rbuf;
	size_t off = 0;
	int err = 0;

	while (off < rb->len && !err) {
		struct sl_nsq_frame f;
		struct sl_nsq_message m;
		struct rec *r;
		ssize_t used = sl_nsq_frame(rb->p + off, rb->len - off,
					    s->c.max_frame, &f);

		if (used == 0)
			break;
		if (used < 0) {
			note_bad_frame(n, s, used);
			err = used == SLUICE_EMSGSIZE ? SLUICE_EMSGSIZE
						      : SLUICE_EPROTO;
			break;
		}
		off += (size_t)used;
		switch (f.type) {
		case SL_NSQ_FRAME_RESPONSE:
			switch (sl_nsq_response_kind(f.data, f.len)) {
			case SL_NSQ_RESP_HEARTBEAT:
				t.heartbeats++;
				if (put_cmd(&s->wbuf, C_NOP, NULL, 0) < 0)
					err = SLUICE_ENOMEM;
				break;
			case SL_NSQ_RESP_CLOSE_WAIT:
				s->got_close_wait = true;
				break;
			default:
				break;
			}
			break;
		case SL_NSQ_FRAME_ERROR:
			err = on_error_frame(n, s, &f, &t);
			break;
		case SL_NSQ_FRAME_MESSAGE:
			if (sl_nsq_message(f.data, f.len, &m) < 0) {
				note_bad_frame(n, s, SLUICE_EPROTO);
				err = SLUICE_EPROTO;
				break;
			}
			t.messages++;
			r = rec_get(n, m.body_len);
			if (!r) {
				t.alloc_failed++;
				if (put_cmd(&s->wbuf, C_REQ, m.id, 0) < 0)
					err = SLUICE_ENOMEM;
				break;
			}
			memcpy(r->id, m.id, SL_NSQ_ID_LEN);
			if (m.body_len)
				memcpy(r->body, m.body, m.body_len);
			r->msg = (struct sluice_msg){
				.body = r->body,
				.body_len = m.body_len,
				.timestamp_ns = m.timestamp_ns,
				.attempts = m.attempts ? m.attempts : 1u,
				.id_len = SL_NSQ_ID_LEN,
				.id = r->id,
				.source_data = r,
			};
			r->s = s;
			/* nsqd's lease runs from delivery, not from fetch. */
			r->touched_ns = s->last_read_ns;
			r->next = NULL;
			r->lprev = r->lnext = NULL;
			if (tail)
				tail->next = r;
			else
				head = r;
			tail = r;
			break;
		}
	}
	sl_nsq_buf_consume(rb, off);
	/* Count in flight before the lock drops, so an ack cannot
	 * underflow it. */
	if (t.messages) {
		pthread_mutex_lock(&n->mu);
		s->in_flight += (uint32_t)(t.messages - t.alloc_failed);
		pthread_mutex_unlock(&n->mu);
	}
	deliver(n, s, head, tail, &t);
	return err;
}

static int
do_read(struct sluice_nsq *n, struct slot *s)
{
	size_t want = READ_CHUNK;
	ssize_t r;

	if (s->c.rbuf.len >= 4) {
		const uint8_t *p = s->c.rbuf.p;
		size_t need = 4 + ((size_t)p[0] << 24 | (size_t)p[1] << 16 |
				   (size_t)p[2] << 8 | p[3]);

		/* An oversized size is refused by parse() before this
		 * grows: sl_nsq_frame() saw the same 4 bytes. */
		if (need <= 4 + s->c.max_frame && need > s->c.rbuf.len &&
		    need - s->c.rbuf.len > want)
			want = need - s->c.rbuf.len;
	}
	r = sl_nsq_conn_read(&s->c, want);
	if (r == 0)
		return 0;
	if (r < 0) {
		pthread_mutex_lock(&n->mu);
		snprintf(n->errtext, sizeof(n->errtext), "%s: %s", s->addr,
			 r == SLUICE_EIO ? "nsqd closed the connection"
					 : sluice_strerror((int)r));
		pthread_mutex_unlock(&n->mu);
		return (int)r;
	}
	s->last_read_ns = sl_mono_ns();
	return parse(n, s);
}

static int
do_write(struct sluice_nsq *n, struct slot *s)
{
	size_t off = 0;

	while (off < s->wbuf.len) {
		ssize_t r = sl_nsq_conn_write(&s->c, s->wbuf.p + off,
					      s->wbuf.len - off);

		if (r == 0)
			break;
		if (r < 0) {
			pthread_mutex_lock(&n->mu);
			snprintf(n->errtext, sizeof(n->errtext),
				 "%s: write: %s", s->addr,
				 sluice_strerror((int)r));
			pthread_mutex_unlock(&n->mu);
			return (int)r;
		}
		off += (size_t)r;
	}
	sl_nsq_buf_consume(&s->wbuf, off);
	if (sl_nsq_conn_wpending(&s->c)) {
		int rc = sl_nsq_conn_flush(&s->c);

		if (rc < 0 && rc != SLUICE_EAGAIN) {
			pthread_mutex_lock(&n->mu);
			snprintf(n->errtext, sizeof(n->errtext),
				 "%s: write: %s", s->addr,
				 s->c.tp ? sl_nsq_tp_error(s->c.tp)
					 : sluice_strerror(rc));
			pthread_mutex_unlock(&n->mu);
			return rc;
		}
	}
	return 0;
}

static int64_t
jittered_redial(struct sluice_nsq *n, unsigned fails)
{
	int64_t d = n->cfg.reconnect_min_ns;
	unsigned i;

	for (i = 1; i < fails && d < n->cfg.reconnect_max_ns; i++)
		d *= 2;
	if (d > n->cfg.reconnect_max_ns)
		d = n->cfg.reconnect_max_ns;
	/* Equal jitter: [d/2, d). */
	return d / 2 + (int64_t)(rnd(n) * (double)(d / 2));
}

/*
 * The session of @s is over (@err 0: closed by us after CLOSE_WAIT).
 * Refuse its leases, drop its unfetched records, return its RDY, schedule
 * the redial.  Called by the I/O thread.
 */
static void
slot_down(struct sluice_nsq *n, struct slot *s, int err)
{
	struct rec *r, **pp, *drop = NULL;
	char why[ERR_TEXT];
	bool lost;

	sl_nsq_conn_close(&s->c);
	s->wbuf.len = 0;
	pthread_mutex_lock(&n->mu);
	lost = s->in_flight > 0 || err != 0;
	pp = &n->head;
	n->tail = NULL;
	while ((r = *pp)) {
		if (r->s == s) {
			*pp = r->next;
			r->next = drop;
			drop = r;
			continue;
		}
		n->tail = r;
		pp = &r->next;
	}
	while (drop) {
		r = drop;
		drop = r->next;
		rec_put(n, r);
	}
	s->state = S_DOWN;
	s->gen = 0;
	s->out.len = 0;
	n->total_rdy -= s->rdy;
	s->rdy = 0;
	s->st.rdy = 0;
	s->in_flight = 0;
	s->st.connected = false;
	s->st.error = err;
	if (err) {
		n->last_error = err;
		s->fails++;
		s->st.disconnects++;
		n->disconnects++;
		if (n->errtext[0] == '\0')
			snprintf(n->errtext, sizeof(n->errtext), "%s: %s",
				 s->addr, sluice_strerror(err));
	}
	if (lost && !n->closing) {
		n->disc_pending = true;
		pthread_cond_broadcast(&n->cv);
	}
	s->next_dial_ns =
		sl_mono_ns() + jittered_redial(n, s->fails ? s->fails : 1);
	if (!s->direct)
		n->poll_now = true;
	rebalance(n);
	snprintf(why, sizeof(why), "%s", n->errtext);
	pthread_cond_broadcast(&n->dcv);
	pthread_mutex_unlock(&n->mu);
	if (err)
		say(n, "nsq: connection to %s lost: %s", s->addr, why);
}

/* Auto-TOUCH: touch what the engine holds before its lease runs out,
 * while its own deadline lies beyond the lease.  n->mu held. */
static void
auto_touch(struct sluice_nsq *n, int64_t now, int64_t *next)
{
	struct rec *r;

	for (r = n->lent; r; r = r->lnext) {
		struct slot *s = r->s;
		int64_t due = r->touched_ns + s->msg_to_ns * 2 / 3;

		if (r->deadline_ns <= r->touched_ns + s->msg_to_ns ||
		    now >= r->deadline_ns || s->gen != r->msg.lease)
			continue; /* settles inside the lease, or lost */
		if (now >= due) {
			if (put_cmd(&s->out, C_TOUCH, r->id, 0) == 0) {
				s->st.touches++;
				n->auto_touches++;
				r->touched_ns = now;
				due = now + s->msg_to_ns * 2 / 3;
			}
		}
		if (due < *next)
			*next = due;
	}
}

/* Per-connection gauges (when exported).  n->mu held. */
static void
refresh_metrics(struct sluice_nsq *n)
{
	size_t i, j;

	for (i = 0; i < n->nslots; i++) {
		struct slot *s = n->slots[i];
		const char *v[1] = { s->addr };
		int64_t val[NGAUGE] = {
			s->rdy,
			s->in_flight,
			s->state == S_UP,
			(int64_t)s->st.fins,
			(int64_t)s->st.reqs,
			(int64_t)s->st.touches,
			(int64_t)s->st.reconnects,
		};

		for (j = 0; j < NGAUGE; j++) {
			if (!s->g[j] && sluice_gauge_with_values(n->gf[j], v, 1,
								 &s->g[j]) < 0)
				continue;
			sluice_gauge_set(s->g[j], val[j]);
		}
	}
}

/*
 * One turn's bookkeeping under the lock: timers, CLS for retiring slots,
 * commands into the write buffers, the list of sockets to poll.  Returns
 * how many slots to poll, or -1 when the thread should exit.
 */
static int
prepare(struct sluice_nsq *n, int64_t now, int64_t *next)
{
	size_t i, k = 0;
	bool any_open = false;

	atomic_store(&n->kicked, false);
	pthread_mutex_lock(&n->mu);
	if (!n->pfd || n->act_cap < n->nslots) {
		size_t want = n->nslots ? n->nslots : 1;
		struct slot **a = sl_realloc(n->act, want * sizeof(*a));
		struct pollfd *p =
			a ? sl_realloc(n->pfd, (want + 1) * sizeof(*p)) : NULL;

		if (a)
			n->act = a;
		if (p) {
			n->pfd = p;
			n->act_cap = want;
		}
	}
	backoff_expire(n, now);
	if (n->bo_waiting && n->bo_until < *next)
		*next = n->bo_until;
	ensure_probe(n);
	redistribute(n, now);
	if (n->next_redist < *next)
		*next = n->next_redist;
	auto_touch(n, now, next);
	if (n->exported && now >= n->next_metrics) {
		refresh_metrics(n);
		n->next_metrics = now + TICK_NS;
	}
	for (i = 0; i < n->nslots && k < n->act_cap; i++) {
		struct slot *s = n->slots[i];

		if (s->state == S_DOWN)
			continue;
		any_open = true;
		if (s->state == S_UP &&
		    (n->closing || n->stopping || s->retire || !wanted(n, s))) {
			struct rec *r, **pp = &n->head;

			/* CLS: nsqd answers CLOSE_WAIT and sends no more;
			 * give back what fetch never took. */
			n->tail = NULL;
			while ((r = *pp)) {
				if (r->s != s) {
					n->tail = r;
					pp = &r->next;
					continue;
				}
				*pp = r->next;
				if (put_cmd(&s->out, C_REQ, r->id, 0) == 0) {
					s->st.handed_back++;
					s->in_flight--;
				}
				rec_put(n, r);
			}
			n->total_rdy -= s->rdy;
			s->rdy = 0;
			s->st.rdy = 0;
			(void)put_cmd(&s->out, C_CLS, NULL, 0);
			s->state = S_CLOSING;
			s->close_by = now + n->cfg.timeout_ns;
			rebalance(n);
		}
		if (s->out.len) {
			if (s->wbuf.len == 0) {
				struct sl_nsq_buf tmp = s->wbuf;

				s->wbuf = s->out;
				s->out = tmp;
			} else if (sl_nsq_buf_reserve(&s->wbuf, s->out.len) ==
				   0) {
				memcpy(s->wbuf.p + s->wbuf.len, s->out.p,
				       s->out.len);
				s->wbuf.len += s->out.len;
				s->out.len = 0;
			}
		}
		if (s->state == S_CLOSING && s->close_by < *next)
			*next = s->close_by;
		n->act[k++] = s;
	}
	/* Write decreases first: a RDY taken from one connection reaches
	 * the wire before the RDY it pays for on another. */
	for (i = 1; i < k; i++) {
		struct slot *s = n->act[i];
		size_t j = i;

		if (!s->lowered)
			continue;
		while (j > 0 && !n->act[j - 1]->lowered) {
			n->act[j] = n->act[j - 1];
			j--;
		}
		n->act[j] = s;
	}
	for (i = 0; i < k; i++)
		n->act[i]->lowered = false;
	if (n->quit && !any_open) {
		pthread_mutex_unlock(&n->mu);
		return -1;
	}
	pthread_mutex_unlock(&n->mu);
	return (int)k;
}

/* Is @s done: silent too long, closed cleanly, or out of time? */
static int
check_slot(struct sluice_nsq *n, struct slot *s, int64_t now, bool *clean)
{
	bool closing, drained;

	pthread_mutex_lock(&n->mu);
	closing = s->state == S_CLOSING;
	drained = s->in_flight == 0 && s->out.len == 0;
	pthread_mutex_unlock(&n->mu);
	*clean = false;
	if (closing && s->got_close_wait && drained && s->wbuf.len == 0 &&
	    !sl_nsq_conn_wpending(&s->c)) {
		*clean = true;
		return 0;
	}
	if (closing && now >= s->close_by) {
		*clean = !s->got_close_wait ? false : true;
		return s->got_close_wait ? 0 : SLUICE_ETIMEDOUT;
	}
	if (now - s->last_read_ns > 2 * s->hb_ns) {
		pthread_mutex_lock(&n->mu);
		snprintf(n->errtext, sizeof(n->errtext),
			 "%s: no heartbeat from nsqd for %lld ms", s->addr,
			 (long long)((now - s->last_read_ns) /
				     SLUICE_NS_PER_MS));
		pthread_mutex_unlock(&n->mu);
		return SLUICE_ETIMEDOUT;
	}
	return 1;
}

static void *
io_main(void *arg)
{
	struct sluice_nsq *n = arg;

	for (;;) {
		int64_t now = sl_mono_ns(), next = now + TICK_NS, wait;
		int k, i, r;

		k = prepare(n, now, &next);
		if (k < 0)
			break;
		if (!n->pfd) {
			(void)poll(NULL, 0, 10); /* out of memory: retry */
			continue;
		}
		for (i = 0; i < k; i++) {
			struct slot *s = n->act[i];
			bool clean;
			int err = 0;

			if (s->fresh) {
				s->fresh = false;
				s->last_read_ns = now;
				s->got_close_wait = false;
				if (s->c.rbuf.len)
					err = parse(n, s);
			}
			if (!err &&
			    (s->wbuf.len || sl_nsq_conn_wpending(&s->c)))
				err = do_write(n, s);
			if (!err) {
				err = check_slot(n, s, now, &clean);
				if (err == 0 || (err < 0 && clean)) {
					err = 0;
					clean = true;
				} else if (err > 0) {
					err = 0;
					clean = false;
				}
				if (clean) {
					slot_down(n, s, 0);
					n->act[i] = NULL;
					continue;
				}
			}
			if (err) {
				slot_down(n, s, err);
				n->act[i] = NULL;
				continue;
			}
			n->pfd[i] = (struct pollfd){
				.fd = s->c.fd,
				.events = sl_nsq_conn_events(
					&s->c,
					s->wbuf.len ||
						sl_nsq_conn_wpending(&s->c)),
			};
			if (now + s->hb_ns < next)
				next = now + s->hb_ns;
			if (sl_nsq_conn_pending(&s->c))
				next = now; /* a layer holds decoded bytes */
		}
		for (i = 0; i < k; i++)
			if (!n->act[i])
				n->pfd[i] = (struct pollfd){ .fd = -1 };
		n->pfd[k] = (struct pollfd){ .fd = n->evfd, .events = POLLIN };
		wait = next - sl_mono_ns();
		if (wait < 0)
			wait = 0;
		r = poll(n->pfd, (nfds_t)k + 1,
			 (int)(wait / SLUICE_NS_PER_MS) + 1);
		if (r < 0 && errno != EINTR)
			break;
		if (r < 0)
			continue;
		if (n->pfd[k].revents & POLLIN) {
			uint64_t v;
			ssize_t rr = read(n->evfd, &v, sizeof(v));

			(void)rr; /* EAGAIN: drained already */
		}
		for (i = 0; i < k; i++) {
			struct slot *s = n->act[i];
			int err = 0;

			if (!s ||
			    (!n->pfd[i].revents && !sl_nsq_conn_pending(&s->c)))
				continue;
			/* TLS may need POLLOUT to read: read on any event. */
			err = do_read(n, s);
			if (!err &&
			    (s->wbuf.len || sl_nsq_conn_wpending(&s->c)))
				err = do_write(n, s);
			if (err)
				slot_down(n, s, err);
		}
	}
	return NULL;
}

/* ---- the dialer thread ------------------------------------------------- */

/* Handshake with @s (n->mu held on entry and exit, dropped meanwhile). */
static int
dial(struct sluice_nsq *n, struct slot *s, char *err, size_t errsize)
{
	struct sl_nsq_conn_config cc = n->ccfg;
	struct sl_nsq_conn c;
	int rc;

	/* Verify the certificate against the host dialled (section 6.2). */
	if (cc.tls_v1 && !cc.tls.server_name && !n->cfg.tls_skip_verify)
		cc.tls.server_name = s->host;
	s->dialing = true;
	pthread_mutex_unlock(&n->mu);
	sl_nsq_conn_init(&c, n->cfg.max_body);
	rc = sl_nsq_conn_handshake(&c, s->host, s->port, &cc, n->topic,
				   n->channel, sl_mono_ns() + n->cfg.timeout_ns,
				   err, errsize);
	pthread_mutex_lock(&n->mu);
	s->dialing = false;
	if (rc == 0 && !wanted(n, s)) {
		sl_nsq_conn_close(&c);
		rc = SLUICE_ECLOSED;
		sl_nsq_seterr(err, errsize, "%s: no longer wanted", s->addr);
	}
	if (rc < 0) {
		s->fails++;
		s->next_dial_ns = sl_mono_ns() + jittered_redial(n, s->fails);
		s->st.error = rc;
		return rc;
	}
	s->c = c;
	s->fresh = true;
	s->gen = ++n->next_gen;
	s->max_rdy = c.ident.max_rdy_count;
	s->hb_ns = (int64_t)c.ident.heartbeat_ms * SLUICE_NS_PER_MS;
	s->msg_to_ns = (int64_t)c.ident.msg_timeout_ms * SLUICE_NS_PER_MS;
	s->last_msg_ns = s->last_rdy_ns = sl_mono_ns();
	s->rdy = 0;
	s->in_flight = 0;
	s->fails = 0;
	s->st.max_rdy_count = c.ident.max_rdy_count;
	s->st.msg_timeout_ms = c.ident.msg_timeout_ms;
	s->st.heartbeat_ms = c.ident.heartbeat_ms;
	s->st.connected = true;
	s->st.connections = 1;
	s->st.error = 0;
	if (s->ever_up)
		s->st.reconnects++;
	s->ever_up = true;
	s->state = S_UP;
	rebalance(n);
	return 0;
}

/* Ask every lookupd (no lock held); merge under n->mu. */
static void
poll_lookupds(struct sluice_nsq *n)
{
	struct sl_nsq_addrs all = { 0 };
	bool all_ok = true;
	size_t i, j;

	for (i = 0; i < n->n_lookupd; i++) {
		struct sl_nsq_addrs a;
		char err[ERR_TEXT] = "";
		int rc = sl_nsq_lookupd_query(n->lookupd[i], n->topic,
					      n->cfg.timeout_ns, &a, err,
					      sizeof(err));

		if (rc < 0) {
			all_ok = false;
			pthread_mutex_lock(&n->mu);
			n->poll_errors++;
			pthread_mutex_unlock(&n->mu);
			say(n, "nsq: lookupd skipped: %s",
			    err[0] ? err : sluice_strerror(rc));
			continue;
		}
		for (j = 0; j < a.n; j++) {
			char **v = sl_realloc(all.v, (all.n + 1) * sizeof(*v));

			if (!v)
				break;
			all.v = v;
			all.v[all.n++] = a.v[j];
			a.v[j] = NULL;
		}
		sl_nsq_addrs_free(&a);
	}
	pthread_mutex_lock(&n->mu);
	n->polls++;
	for (i = 0; i < n->nslots; i++) {
		struct slot *s = n->slots[i];
		bool seen = false;

		for (j = 0; j < all.n && !seen; j++)
			seen = all.v[j] && strcmp(all.v[j], s->addr) == 0;
		if (seen && !s->listed) {
			s->listed = true;
			s->retire = false;
			s->next_dial_ns = 0;
		} else if (!seen && s->listed && all_ok) {
			s->listed = false; /* vanished: I/O thread sends CLS */
		}
	}
	for (j = 0; j < all.n; j++) {
		struct slot *s;

		if (!all.v[j])
			continue;
		s = slot_get(n, all.v[j]);
		if (s && !s->listed) {
			s->listed = true;
			s->retire = false;
			s->next_dial_ns = 0;
		}
	}
	pthread_mutex_unlock(&n->mu);
	sl_nsq_addrs_free(&all);
	kick(n);
}

static void *
dialer_main(void *arg)
{
	struct sluice_nsq *n = arg;
	char err[ERR_TEXT];

	pthread_mutex_lock(&n->mu);
	while (!n->quit) {
		int64_t now = sl_mono_ns(), wake = INT64_MAX;
		struct slot *pick = NULL;
		size_t i;

		if (!n->stopping && n->n_lookupd &&
		    (now >= n->next_poll || n->poll_now)) {
			n->poll_now = false;
			pthread_mutex_unlock(&n->mu);
			poll_lookupds(n);
			pthread_mutex_lock(&n->mu);
			n->next_poll =
				sl_mono_ns() +
				(int64_t)((double)n->cfg.lookupd_poll_ns *
					  (1.0 + n->cfg.lookupd_poll_jitter *
							 (rnd(n) - 0.5)));
			continue;
		}
		if (n->n_lookupd && !n->stopping)
			wake = n->next_poll;
		for (i = 0; i < n->nslots; i++) {
			struct slot *s = n->slots[i];

			if (s->state != S_DOWN || s->dialing || !wanted(n, s))
				continue;
			if (s->next_dial_ns <= now) {
				pick = s;
				break;
			}
			if (s->next_dial_ns < wake)
				wake = s->next_dial_ns;
		}
		if (pick) {
			int rc = dial(n, pick, err, sizeof(err));
			bool again = pick->st.reconnects > 0;

			pthread_mutex_unlock(&n->mu);
			if (rc < 0 && rc != SLUICE_ECLOSED)
				say(n, "nsq: cannot connect to %s: %s",
				    pick->addr, err);
			else if (rc == 0)
				say(n, "nsq: %s %s",
				    again ? "reconnected to" : "connected to",
				    pick->addr);
			kick(n);
			pthread_mutex_lock(&n->mu);
			continue;
		}
		(void)sl_clock_wait(sluice_clock_monotonic(), &n->dcv, &n->mu,
				    wake == INT64_MAX ? SLUICE_FOREVER : wake);
	}
	pthread_mutex_unlock(&n->mu);
	return NULL;
}

/* ---- source operations ------------------------------------------------- */

static int
nsq_fetch(void *self, struct sluice_msg **out, size_t max, int64_t deadline_ns)
{
	struct sluice_nsq *n = self;
	uint64_t seq;
	int got = 0;

	if (max > INT_MAX)
		max = INT_MAX;
	pthread_mutex_lock(&n->mu);
	seq = n->wake_seq;
	for (;;) {
		if (n->disc_pending) {
			n->disc_pending = false;
			got = SLUICE_EDISCONNECTED;
			break;
		}
		if (n->head && max) {
			int64_t now =
				n->cfg.touch_deadline_ns ? sl_mono_ns() : 0;

			while (n->head && (size_t)got < max) {
				struct rec *r = n->head;

				n->head = r->next;
				r->state = R_LENT;
				if (now) {
					r->deadline_ns =
						now + n->cfg.touch_deadline_ns;
					r->lprev = NULL;
					r->lnext = n->lent;
					if (n->lent)
						n->lent->lprev = r;
					n->lent = r;
				}
				out[got++] = &r->msg;
			}
			if (!n->head)
				n->tail = NULL;
			break;
		}
		if (n->closing) {
			got = SLUICE_ECLOSED;
			break;
		}
		if (max == 0 || deadline_ns == 0)
			break;
		if (n->wake_seq != seq || n->wake_pending) {
			n->wake_pending = false;
			break;
		}
		if (sl_clock_wait(n->clock, &n->cv, &n->mu, deadline_ns) ==
		    SLUICE_ETIMEDOUT)
			deadline_ns = 0; /* one last look, then return */
	}
	pthread_mutex_unlock(&n->mu);
	return got;
}

/* Does @m belong to a live session and still await its answer?  mu held. */
static struct rec *
valid(const struct sluice_msg *m)
{
	struct rec *r = m->source_data;

	if (!r || m->id_len != SL_NSQ_ID_LEN || r->state != R_LENT ||
	    r->s->gen == 0 || r->s->gen != m->lease)
		return NULL;
	return r;
}

/* Settle @r with @c: backoff bookkeeping first, so a RDY 0 precedes the
 * REQ on the wire (section 8.4).  mu held. */
static int
settle(struct sluice_nsq *n, struct rec *r, enum cmd c, uint32_t arg, int sig)
{
	struct slot *s = r->s;
	int rc;

	if (sig >= 0)
		backoff_signal(n, (enum signal)sig);
	rc = put_cmd(&s->out, c, r->id, arg);
	if (rc < 0)
		return rc;
	r->state = R_SETTLED;
	lent_del(n, r);
	if (s->in_flight)
		s->in_flight--;
	if (c == C_FIN)
		s->st.fins++;
	else
		s->st.reqs++;
	return 0;
}

static int
nsq_ack(void *self, struct sluice_msg *const *msgs, size_t n_msgs)
{
	struct sluice_nsq *n = self;
	size_t i, sent = 0;
	int refused = 0;

	pthread_mutex_lock(&n->mu);
	for (i = 0; i < n_msgs; i++) {
		struct rec *r = valid(msgs[i]);

		if (r && settle(n, r, C_FIN, 0, SIG_RESUME) == 0) {
			sent++;
			continue;
		}
		refused++;
		if (msgs[i]->source_data) {
			r = msgs[i]->source_data;
			r->state = R_SETTLED;
			lent_del(n, r);
			r->s->st.refused++;
		}
	}
	pthread_mutex_unlock(&n->mu);
	if (sent)
		kick(n);
	return refused;
}

static int
nsq_requeue(void *self, struct sluice_msg *m, int64_t delay_ns,
	    bool count_attempt)
{
	struct sluice_nsq *n = self;
	uint32_t ms = 0;
	struct rec *r;
	int rc;

	if (delay_ns > 0) {
		int64_t v =
			(delay_ns + SLUICE_NS_PER_MS - 1) / SLUICE_NS_PER_MS;

		/* nsqd clamps to its --max-req-timeout itself. */
		ms = v > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)v;
	}
	pthread_mutex_lock(&n->mu);
	r = valid(m);
	if (r) {
		/* A requeue that counts an attempt is a failure (TEMPORARY,
		 * TIMEOUT); a drain hand-back is neither. */
		rc = settle(n, r, C_REQ, ms, count_attempt ? SIG_FAIL : -1);
	} else {
		rc = SLUICE_ESTALE;
		r = m->source_data;
		if (r) {
			r->state = R_SETTLED;
			lent_del(n, r);
			r->s->st.refused++;
		}
	}
	pthread_mutex_unlock(&n->mu);
	if (rc == 0)
		kick(n);
	return rc;
}

static int
nsq_touch(void *self, struct sluice_msg *m)
{
	struct sluice_nsq *n = self;
	struct rec *r;
	int rc;

	pthread_mutex_lock(&n->mu);
	r = valid(m);
	if (!r) {
		rc = SLUICE_ESTALE;
		if (m->source_data)
			((struct rec *)m->source_data)->s->st.refused++;
	} else {
		rc = put_cmd(&r->s->out, C_TOUCH, r->id, 0);
		if (rc == 0) {
			r->s->st.touches++;
			r->touched_ns = sl_mono_ns();
		}
	}
	pthread_mutex_unlock(&n->mu);
	if (rc == 0)
		kick(n);
	return rc;
}

static void
nsq_release(void *self, struct sluice_msg *const *msgs, size_t n_msgs)
{
	struct sluice_nsq *n = self;
	size_t i;

	pthread_mutex_lock(&n->mu);
	for (i = 0; i < n_msgs; i++) {
		struct rec *r = msgs[i]->source_data;

		lent_del(n, r);
		if (r->state == R_LENT && r->s->gen == r->msg.lease &&
		    r->s->in_flight)
			r->s->in_flight--; /* released unsettled: nsqd
					      times it out */
		rec_put(n, r);
	}
	pthread_mutex_unlock(&n->mu);
}

static void
nsq_wakeup(void *self)
{
	struct sluice_nsq *n = self;

	pthread_mutex_lock(&n->mu);
	n->wake_seq++;
	n->wake_pending = true;
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
}

static void
nsq_set_credit(void *self, size_t max_in_flight)
{
	struct sluice_nsq *n = self;

	pthread_mutex_lock(&n->mu);
	n->credit = max_in_flight;
	if (!n->closing)
		rebalance(n);
	pthread_mutex_unlock(&n->mu);
	kick(n);
}

/* Wake both threads and join them (close() and free()). */
static void
join_threads(struct sluice_nsq *n)
{
	pthread_mutex_lock(&n->mu);
	n->quit = true;
	pthread_cond_broadcast(&n->dcv);
	pthread_mutex_unlock(&n->mu);
	kick(n);
	if (n->dialer_started)
		pthread_join(n->dialer, NULL);
	n->dialer_started = false;
	if (n->io_started)
		pthread_join(n->io, NULL);
	n->io_started = false;
}

/*
 * The engine settled everything: hand back what fetch never took (REQ 0),
 * CLS every connection, wait (bounded by timeout_ns per connection) for
 * CLOSE_WAIT and for in-flight to reach 0, REQ 0 what nsqd still sends,
 * close.  The I/O thread does the work; this joins it.
 */
static void
nsq_close(void *self)
{
	struct sluice_nsq *n = self;

	pthread_mutex_lock(&n->close_mu);
	pthread_mutex_lock(&n->mu);
	n->closing = true;
	n->stopping = true;
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
	join_threads(n);
	pthread_mutex_lock(&n->mu);
	n->joined = true;
	pthread_mutex_unlock(&n->mu);
	pthread_mutex_unlock(&n->close_mu);
}

static const struct sluice_source_ops nsq_ops = {
	.name = "nsq",
	.fetch = nsq_fetch,
	.ack = nsq_ack,
	.requeue = nsq_requeue,
	.touch = nsq_touch,
	.release = nsq_release,
	.wakeup = nsq_wakeup,
	.set_credit = nsq_set_credit,
	.close = nsq_close,
};

/* ---- public ------------------------------------------------------------ */

void
sluice_nsq_config_init(struct sluice_nsq_config *cfg)
{
	*cfg = (struct sluice_nsq_config){
		.host = DEFAULT_HOST,
		.port = DEFAULT_PORT,
		.client_id = DEFAULT_CLIENT,
		.max_body = DEFAULT_MAX_BODY,
		.timeout_ns = DEFAULT_TIMEOUT,
		.lookupd_poll_ns = 60 * SLUICE_NS_PER_S,
		.lookupd_poll_jitter = 0.3,
		.reconnect_min_ns = SLUICE_NS_PER_S,
		.reconnect_max_ns = 60 * SLUICE_NS_PER_S,
		.rdy_redistribute_ns = 5 * SLUICE_NS_PER_S,
		.low_rdy_idle_ns = 10 * SLUICE_NS_PER_S,
		.low_rdy_ns = 30 * SLUICE_NS_PER_S,
		.backoff_unit_ns = SLUICE_NS_PER_S,
		.backoff_max_ns = 120 * SLUICE_NS_PER_S,
	};
}

static void
nsq_destroy(struct sluice_nsq *n)
{
	size_t i;

	for (i = 0; i < n->nslots; i++) {
		sl_nsq_conn_close(&n->slots[i]->c);
		sl_nsq_buf_free(&n->slots[i]->out);
		sl_nsq_buf_free(&n->slots[i]->wbuf);
		sl_free(n->slots[i]);
	}
	sl_free(n->slots);
	for (i = 0; i < n->n_lookupd; i++)
		sl_free(n->lookupd[i]);
	sl_free(n->lookupd);
	free_chain(n->head);
	free_chain(n->pool);
	free_chain(n->cache);
	sl_free(n->act);
	sl_free(n->pfd);
	sl_free(n->topic);
	sl_free(n->channel);
	sl_free(n->client_id);
	sl_free(n->host);
	sl_free(n->tls_ca);
	sl_free(n->tls_cert);
	sl_free(n->tls_key);
	sl_free(n->auth);
	if (n->evfd >= 0)
		close(n->evfd);
	pthread_cond_destroy(&n->cv);
	pthread_cond_destroy(&n->dcv);
	pthread_mutex_destroy(&n->mu);
	pthread_mutex_destroy(&n->close_mu);
	sl_free(n);
}

static bool
config_ok(const struct sluice_nsq_config *c)
{
	return c->topic && c->channel &&
	       sl_nsq_name_is_valid(c->topic, strlen(c->topic)) &&
	       sl_nsq_name_is_valid(c->channel, strlen(c->channel)) &&
	       c->max_body > 0 && c->max_body <= INT32_MAX - 64 &&
	       c->heartbeat_ms <= INT32_MAX / 4 && c->timeout_ns > 0 &&
	       (c->n_nsqd == 0 || c->nsqd) &&
	       (c->n_lookupd == 0 || c->lookupd) && c->lookupd_poll_ns > 0 &&
	       c->lookupd_poll_jitter >= 0 && c->lookupd_poll_jitter <= 1 &&
	       c->reconnect_min_ns > 0 &&
	       c->reconnect_max_ns >= c->reconnect_min_ns &&
	       c->rdy_redistribute_ns > 0 && c->low_rdy_idle_ns > 0 &&
	       c->low_rdy_ns > 0 && c->backoff_unit_ns > 0 &&
	       c->backoff_max_ns >= 0 && c->touch_deadline_ns >= 0 &&
	       !(c->snappy && c->deflate) && c->deflate_level >= 0 &&
	       c->deflate_level <= 9;
}

/* Copy what the source keeps of @cfg.  Before threads exist. */
static int
setup(struct sluice_nsq *n, const struct sluice_nsq_config *cfg, char *err,
      size_t errsize)
{
	char addr[ADDR_MAX];
	size_t i;

	n->cfg = *cfg;
	n->topic = sl_strdup(cfg->topic);
	n->channel = sl_strdup(cfg->channel);
	n->client_id =
		sl_strdup(cfg->client_id ? cfg->client_id : DEFAULT_CLIENT);
	if (!n->topic || !n->channel || !n->client_id)
		return SLUICE_ENOMEM;
	n->ccfg = (struct sl_nsq_conn_config){
		.client_id = n->client_id,
		.heartbeat_ms = cfg->heartbeat_ms,
		.msg_timeout_ms = cfg->msg_timeout_ms,
		.max_body = cfg->max_body,
		.tls_v1 = cfg->tls,
		.snappy = cfg->snappy,
		.deflate = cfg->deflate,
		.deflate_level = cfg->deflate_level,
		.tls = {
			.skip_verify = cfg->tls_skip_verify,
		},
	};
	if (cfg->tls_ca_file && !(n->tls_ca = sl_strdup(cfg->tls_ca_file)))
		return SLUICE_ENOMEM;
	if (cfg->tls_cert_file &&
	    !(n->tls_cert = sl_strdup(cfg->tls_cert_file)))
		return SLUICE_ENOMEM;
	if (cfg->tls_key_file && !(n->tls_key = sl_strdup(cfg->tls_key_file)))
		return SLUICE_ENOMEM;
	if (cfg->auth_secret && !(n->auth = sl_strdup(cfg->auth_secret)))
		return SLUICE_ENOMEM;
	n->ccfg.tls.ca_file = n->tls_ca;
	n->ccfg.tls.cert_file = n->tls_cert;
	n->ccfg.tls.key_file = n->tls_key;
	n->ccfg.auth_secret = n->auth;
	n->ccfg.auth_secret_len = n->auth ? strlen(n->auth) : 0;
	if (cfg->n_lookupd) {
		n->lookupd = sl_calloc(cfg->n_lookupd, sizeof(char *));
		if (!n->lookupd)
			return SLUICE_ENOMEM;
		for (i = 0; i < cfg->n_lookupd; i++) {
			n->lookupd[i] = sl_strdup(cfg->lookupd[i]);
			if (!n->lookupd[i])
				return SLUICE_ENOMEM;
			n->n_lookupd++;
		}
	}
	for (i = 0; i < cfg->n_nsqd; i++) {
		struct slot *s =
			cfg->nsqd[i] ? slot_get(n, cfg->nsqd[i]) : NULL;

		if (!s) {
			sl_nsq_seterr(err, errsize, "bad nsqd address %s",
				      cfg->nsqd[i] ? cfg->nsqd[i] : "(null)");
			return SLUICE_EINVAL;
		}
		s->direct = true;
	}
	if (cfg->n_nsqd == 0 && cfg->n_lookupd == 0) {
		const char *h = cfg->host ? cfg->host : DEFAULT_HOST;
		struct slot *s;

		snprintf(addr, sizeof(addr),
			 strchr(h, ':') ? "[%s]:%u" : "%s:%u", h,
			 (unsigned)(cfg->port ? cfg->port : DEFAULT_PORT));
		s = slot_get(n, addr);
		if (!s) {
			sl_nsq_seterr(err, errsize, "bad nsqd address %s",
				      addr);
			return SLUICE_EINVAL;
		}
		s->direct = true;
	}
	return 0;
}

int
sluice_nsq_open(const struct sluice_nsq_config *cfg, char *err, size_t errsize,
		struct sluice_nsq **out)
{
	struct sluice_nsq *n;
	char first[ERR_TEXT] = "", e2[ERR_TEXT];
	int rc, first_rc = 0;
	size_t i, up = 0;

	sl_nsq_seterr(err, errsize, "%s", "");
	if (!cfg || !out || !config_ok(cfg)) {
		sl_nsq_seterr(err, errsize, "invalid NSQ configuration");
		return SLUICE_EINVAL;
	}
	n = sl_calloc(1, sizeof(*n));
	if (!n)
		return SLUICE_ENOMEM;
	n->evfd = -1;
	n->clock = cfg->clock ? cfg->clock : sluice_clock_monotonic();
	n->rng = (uint64_t)sl_mono_ns() ^ (uint64_t)(uintptr_t)n ^
		 UINT64_C(0x9e3779b97f4a7c15);
	if (n->rng == 0)
		n->rng = 1;
	atomic_init(&n->kicked, false);
	rc = pthread_mutex_init(&n->mu, NULL);
	if (rc) {
		sl_free(n);
		return -rc;
	}
	rc = pthread_mutex_init(&n->close_mu, NULL);
	if (rc) {
		pthread_mutex_destroy(&n->mu);
		sl_free(n);
		return -rc;
	}
	rc = sl_cond_init(&n->cv);
	if (rc == 0) {
		rc = sl_cond_init(&n->dcv);
		if (rc)
			pthread_cond_destroy(&n->cv);
	}
	if (rc) {
		pthread_mutex_destroy(&n->close_mu);
		pthread_mutex_destroy(&n->mu);
		sl_free(n);
		return rc;
	}
	n->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	rc = n->evfd < 0 ? -errno : setup(n, cfg, err, errsize);
	if (rc < 0) {
		nsq_destroy(n);
		return rc;
	}
	/* The first round on the caller's thread: every direct nsqd, and
	 * the lookupds with what they list. */
	pthread_mutex_lock(&n->mu);
	if (n->n_lookupd) {
		pthread_mutex_unlock(&n->mu);
		poll_lookupds(n);
		pthread_mutex_lock(&n->mu);
		n->next_poll = sl_mono_ns() + n->cfg.lookupd_poll_ns;
	}
	for (i = 0; i < n->nslots; i++) {
		rc = dial(n, n->slots[i], e2, sizeof(e2));
		if (rc == 0) {
			up++;
		} else if (first_rc == 0) {
			first_rc = rc;
			snprintf(first, sizeof(first), "%s", e2);
		}
	}
	pthread_mutex_unlock(&n->mu);
	if (up == 0 && n->n_lookupd == 0) {
		sl_nsq_seterr(err, errsize, "%s", first);
		nsq_destroy(n);
		return first_rc ? first_rc : SLUICE_ENOENT;
	}
	if (first_rc)
		say(n, "nsq: %s (retrying)", first);
	sl_clock_watch_add(n->clock, &n->watch, &n->mu, &n->cv);
	rc = pthread_create(&n->io, NULL, io_main, n);
	if (rc == 0) {
		n->io_started = true;
		rc = pthread_create(&n->dialer, NULL, dialer_main, n);
		if (rc == 0)
			n->dialer_started = true;
	}
	if (rc) {
		sl_nsq_seterr(err, errsize, "cannot start the NSQ threads");
		join_threads(n);
		sl_clock_watch_del(n->clock, &n->watch);
		nsq_destroy(n);
		return -rc;
	}
	*out = n;
	return 0;
}

struct sluice_source
sluice_nsq_source(struct sluice_nsq *n)
{
	return (struct sluice_source){ .ops = &nsq_ops, .self = n };
}

static void
add_stats(struct sluice_nsq_stats *t, const struct sluice_nsq_stats *s)
{
	t->messages += s->messages;
	t->fins += s->fins;
	t->reqs += s->reqs;
	t->touches += s->touches;
	t->heartbeats += s->heartbeats;
	t->handed_back += s->handed_back;
	t->fin_failed += s->fin_failed;
	t->req_failed += s->req_failed;
	t->touch_failed += s->touch_failed;
	t->refused += s->refused;
	t->alloc_failed += s->alloc_failed;
	t->reconnects += s->reconnects;
}

void
sluice_nsq_stats(struct sluice_nsq *n, struct sluice_nsq_stats *out)
{
	size_t i;

	*out = (struct sluice_nsq_stats){ 0 };
	pthread_mutex_lock(&n->mu);
	for (i = 0; i < n->nslots; i++) {
		struct slot *s = n->slots[i];

		add_stats(out, &s->st);
		out->rdy += s->rdy;
		out->in_flight += s->in_flight;
		if (s->state == S_UP) {
			out->connections++;
			out->max_rdy_count = s->st.max_rdy_count;
			out->msg_timeout_ms = s->st.msg_timeout_ms;
			out->heartbeat_ms = s->st.heartbeat_ms;
		}
	}
	if (out->max_rdy_count == 0 && n->nslots) {
		out->max_rdy_count = n->slots[0]->st.max_rdy_count;
		out->msg_timeout_ms = n->slots[0]->st.msg_timeout_ms;
		out->heartbeat_ms = n->slots[0]->st.heartbeat_ms;
	}
	out->credit = n->credit;
	out->max_rdy_sum = n->max_rdy_sum;
	out->backoff_level = n->level;
	out->backoff_waiting = n->bo_waiting;
	out->backoffs = n->backoffs;
	out->lookupd_polls = n->polls;
	out->lookupd_errors = n->poll_errors;
	out->auto_touches = n->auto_touches;
	out->disconnects = n->disconnects;
	out->connected = out->connections > 0;
	out->error = n->last_error;
	pthread_mutex_unlock(&n->mu);
}

size_t
sluice_nsq_conn_count(struct sluice_nsq *n)
{
	size_t c;

	pthread_mutex_lock(&n->mu);
	c = n->nslots;
	pthread_mutex_unlock(&n->mu);
	return c;
}

int
sluice_nsq_conn_stats(struct sluice_nsq *n, size_t i, char *addr,
		      size_t addrsize, struct sluice_nsq_stats *out)
{
	struct slot *s;

	pthread_mutex_lock(&n->mu);
	if (i >= n->nslots) {
		pthread_mutex_unlock(&n->mu);
		return SLUICE_ENOENT;
	}
	s = n->slots[i];
	*out = s->st;
	out->rdy = s->rdy;
	out->in_flight = s->in_flight;
	out->connections = s->state == S_UP;
	out->connected = s->state == S_UP;
	out->credit = n->credit;
	if (addr && addrsize)
		snprintf(addr, addrsize, "%s", s->addr);
	pthread_mutex_unlock(&n->mu);
	return 0;
}

void
sluice_nsq_stop(struct sluice_nsq *n)
{
	pthread_mutex_lock(&n->mu);
	n->stopping = true;
	pthread_cond_broadcast(&n->dcv);
	pthread_mutex_unlock(&n->mu);
	kick(n);
}

void
sluice_nsq_last_error(struct sluice_nsq *n, char *buf, size_t size)
{
	if (!buf || size == 0)
		return;
	pthread_mutex_lock(&n->mu);
	snprintf(buf, size, "%s", n->errtext);
	pthread_mutex_unlock(&n->mu);
}

void
sluice_nsq_free(struct sluice_nsq *n)
{
	if (!n)
		return;
	nsq_close(n);
	sl_clock_watch_del(n->clock, &n->watch);
	nsq_destroy(n);
}

/* ---- metrics ----------------------------------------------------------- */

#define STAT_FN(name, expr)                 \
	static double name(void *ud)        \
	{                                   \
		struct sluice_nsq_stats st; \
                                            \
		sluice_nsq_stats(ud, &st);  \
		return (double)(expr);      \
	}

STAT_FN(m_rdy, st.rdy)
STAT_FN(m_credit, st.credit)
STAT_FN(m_inflight, st.in_flight)
STAT_FN(m_conns, st.connections)
STAT_FN(m_level, st.backoff_level)
STAT_FN(m_waiting, st.backoff_waiting)
STAT_FN(m_messages, st.messages)
STAT_FN(m_fin, st.fins)
STAT_FN(m_req, st.reqs)
STAT_FN(m_touch, st.touches)
STAT_FN(m_reconn, st.reconnects)
STAT_FN(m_backoffs, st.backoffs)
STAT_FN(m_disc, st.disconnects)
STAT_FN(m_hb, st.heartbeats)
STAT_FN(m_finfail, st.fin_failed)

int
sluice_nsq_export_metrics(struct sluice_nsq *n, struct sluice_metrics *m)
{
	static const struct {
		const char *name, *help;
		sluice_gauge_fn *fn;
		bool counter;
	} t[] = {
		{ "sluice_nsq_rdy", "Sum of the RDY counts in force", m_rdy,
		  false },
		{ "sluice_nsq_credit", "The engine's credit (max in flight)",
		  m_credit, false },
		{ "sluice_nsq_in_flight", "Delivered, not yet FIN/REQ'd",
		  m_inflight, false },
		{ "sluice_nsq_connections", "nsqd connections up", m_conns,
		  false },
		{ "sluice_nsq_backoff_level", "Consumer backoff level", m_level,
		  false },
		{ "sluice_nsq_backoff_waiting",
		  "1 while a backoff period holds RDY at 0", m_waiting, false },
		{ "sluice_nsq_messages_total", "Message frames received",
		  m_messages, true },
		{ "sluice_nsq_fin_total", "FIN commands sent", m_fin, true },
		{ "sluice_nsq_req_total", "REQ commands sent", m_req, true },
		{ "sluice_nsq_touch_total", "TOUCH commands sent", m_touch,
		  true },
		{ "sluice_nsq_reconnects_total", "Connections re-established",
		  m_reconn, true },
		{ "sluice_nsq_backoffs_total", "Backoff periods started",
		  m_backoffs, true },
		{ "sluice_nsq_disconnects_total", "Connections lost", m_disc,
		  true },
		{ "sluice_nsq_heartbeats_total", "Heartbeats received", m_hb,
		  true },
		{ "sluice_nsq_fin_failed_total", "E_FIN_FAILED received",
		  m_finfail, true },
	};
	static const char *const lbl[1] = { "addr" };
	struct sluice_gauge_family *f[NGAUGE];
	static const char *const fam[NGAUGE][2] = {
		{ "sluice_nsq_conn_rdy", "RDY in force per connection" },
		{ "sluice_nsq_conn_in_flight", "In flight per connection" },
		{ "sluice_nsq_conn_connected", "1 while connected" },
		{ "sluice_nsq_conn_fin", "FIN sent per address" },
		{ "sluice_nsq_conn_req", "REQ sent per address" },
		{ "sluice_nsq_conn_touch", "TOUCH sent per address" },
		{ "sluice_nsq_conn_reconnects", "Reconnects per address" },
	};
	size_t i;
	int rc;

	if (!n || !m)
		return SLUICE_EINVAL;
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		rc = t[i].counter
			     ? sluice_counter_register_fn(m, t[i].name,
							  t[i].help, t[i].fn, n)
			     : sluice_gauge_register_fn(m, t[i].name, t[i].help,
							t[i].fn, n);
		if (rc < 0)
			return rc;
	}
	for (i = 0; i < NGAUGE; i++) {
		rc = sluice_gauge_family_register(m, fam[i][0], fam[i][1], lbl,
						  1, &f[i]);
		if (rc < 0)
			return rc;
	}
	pthread_mutex_lock(&n->mu);
	memcpy(n->gf, f, sizeof(f));
	n->exported = true;
	pthread_mutex_unlock(&n->mu);
	kick(n);
	return 0;
}
