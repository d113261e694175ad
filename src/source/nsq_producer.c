/* SPDX-License-Identifier: MIT */
/*
 * nsq_producer.c - the NSQ producer: batching, pipelining, FIFO response
 * matching and reconnection over one nsqd connection (nsq_producer.h).
 *
 * A "txn" is one command on the wire (PUB, MPUB or DPUB) and the callbacks
 * of the messages it carries.  Its buffer is laid out so that a batch is
 * built in place with one memcpy per message and no allocation once the
 * buffer has grown to its working size:
 *
 *   [ HDR_ROOM bytes ........ header ][ size | body ][ size | body ] ...
 *                        ^ start       ^ HDR_ROOM
 *
 * Each body goes in with its 4-byte size, which is MPUB's inner layout and
 * also PUB's and DPUB's (command line, size, body).  Sealing writes the
 * command line (and for MPUB the total size and count) right-aligned just
 * before HDR_ROOM, so the wire bytes are b[start .. len).  Txns are
 * recycled through a free list.
 *
 * Life of a txn: open (one per topic, taking publishes, mu) -> sealed when
 * full, when its first message has waited linger_ns, when a synchronous
 * publish or a flush wants it out (ready list, mu) -> taken by the I/O
 * thread onto its in-flight list (written or to be written; I/O thread
 * only) -> answered (OK or error frame, oldest first) -> callbacks run on
 * the I/O thread without any lock -> back to the free list (mu).
 *
 * Connection loss: an error frame fails the oldest txn with the mapped
 * code; nsqd closed after it, so the txns behind it were not executed and
 * are resent as they are.  EOF, a read/write error, a protocol violation
 * or two heartbeat intervals of silence leave every fully written txn
 * uncertain: resent while it has retries left (at least once), else
 * failed with SLUICE_EDISCONNECTED.  A failed (re)connect fails every txn
 * the I/O thread holds: they never reached nsqd.
 *
 * Locking: p->mu guards the fields marked (mu); waiters (back-pressure,
 * flush, synchronous publishes) sleep on p->cv.  The connection, the
 * in-flight list and the write cursor belong to the I/O thread (and to
 * new() before the thread starts).  p->kicked (seq_cst) keeps at most one
 * eventfd write unread.  Callbacks run on the I/O thread with no lock held.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <sluice/nsq_producer.h>

#include "core/clock_int.h"
#include "obs/pb.h"
#include "proto/nsq.h"
#include "source/nsq_conn.h"
#include "util/alloc.h"

#define DEFAULT_HOST      "127.0.0.1"
#define DEFAULT_PORT      4150u
#define DEFAULT_CLIENT    "sluice"
#define DEFAULT_MAX_MSG   ((size_t)1 << 20)
#define DEFAULT_MAX_BODY  ((size_t)5 << 20)
#define DEFAULT_BATCH     1024u
#define DEFAULT_BATCH_B   ((size_t)1 << 20)
#define DEFAULT_LINGER    SLUICE_NS_PER_MS
#define DEFAULT_QUEUE     ((size_t)64 << 20)
#define DEFAULT_TIMEOUT   (10 * SLUICE_NS_PER_S)
#define DEFAULT_RECON_MIN (100 * SLUICE_NS_PER_MS)
#define DEFAULT_RECON_MAX (10 * SLUICE_NS_PER_S)
/* "DPUB " + 64-byte topic + " " + 10 digits + "\n" + 8 (MPUB sizes) */
#define HDR_ROOM          96u
#define REPLY_MAX         4096u /* longest response/error frame accepted */
#define READ_CHUNK        4096u
#define FREE_KEEP         64u /* txns kept for reuse */
#define ERR_TEXT          256u

/* The producer whose I/O thread this is (callbacks publish without
 * waiting for room: the I/O thread would be waiting for itself). */
static _Thread_local const struct sluice_nsq_producer *io_self;

static const char nops[] = "NOP\nNOP\nNOP\nNOP\nNOP\nNOP\nNOP\nNOP\n";

struct cbent {
	sluice_nsq_publish_fn *fn;
	void *arg;
};

struct txn {
	struct txn *next;
	char topic[SL_NSQ_NAME_MAX + 1];
	bool dpub;
	uint32_t defer_ms;
	bool urgent;     /* seal at the next turn (open txn, mu) */
	struct sl_buf b; /* see the top; b.len >= HDR_ROOM */
	size_t start;    /* first wire byte, once sealed */
	size_t count, body_bytes;
	struct cbent *cb;
	size_t cb_cap;
	int64_t opened_ns; /* when its first message came */
	uint32_t tries;    /* connections it was lost with */
	int result;
};

struct list {
	struct txn *head, *tail;
};

struct sluice_nsq_producer {
	/* Immutable after new(): */
	struct sluice_nsq_producer_config cfg; /* strings point below */
	char host[256], client_id[128];
	size_t batch_limit; /* MPUB body bytes, inner sizes included */
	int evfd;
	pthread_t io;

	pthread_mutex_t mu;
	pthread_cond_t cv;    /* results, space, flushes (mu) */
	struct txn *open;     /* open txns, one per topic (mu) */
	struct list ready;    /* sealed, for the I/O thread (mu) */
	struct txn *spare;    /* free list (mu) */
	size_t nspare;        /* (mu) */
	size_t queued_bytes;  /* wire bytes not yet answered (mu) */
	uint64_t outstanding; /* publishes without a result (mu) */
	unsigned flushers;    /* flush() calls waiting: seal all (mu) */
	bool stopping;        /* producer_free() began: refuse (mu) */
	bool quit;            /* the I/O thread is to end (mu) */
	struct sluice_nsq_producer_stats st; /* (mu) */
	char errtext[ERR_TEXT];              /* (mu) */
	atomic_bool kicked;                  /* see the top */

	/* The I/O thread's: */
	struct sl_nsq_conn c;
	struct list fl;     /* in flight / to write, oldest first */
	struct txn *wr;     /* first txn of fl not fully written */
	size_t wr_off;      /* bytes of wr written */
	uint64_t nwritten;  /* txns of fl before wr: awaiting answers */
	unsigned nops_owed; /* heartbeats to answer */
	size_t nop_left;    /* NOP bytes being written */
	int64_t last_read_ns;
	int64_t next_connect_ns, backoff_ns;
};

static void
list_add(struct list *l, struct txn *t)
{
	t->next = NULL;
	if (l->tail)
		l->tail->next = t;
	else
		l->head = t;
	l->tail = t;
}

static void
list_cat(struct list *l, struct list *more)
{
	if (!more->head)
		return;
	if (l->tail)
		l->tail->next = more->head;
	else
		l->head = more->head;
	l->tail = more->tail;
	more->head = more->tail = NULL;
}

static size_t
wire_len(const struct txn *t)
{
	return t->b.len - t->start;
}

/* Record why something failed (last one wins).  Takes p->mu. */
static void note(struct sluice_nsq_producer *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
note(struct sluice_nsq_producer *p, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&p->mu);
	va_start(ap, fmt);
	vsnprintf(p->errtext, sizeof(p->errtext), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&p->mu);
}

static void
kick(struct sluice_nsq_producer *p)
{
	sl_nsq_kick(p->evfd, &p->kicked);
}

/* ---- building txns (under mu) -------------------------------------------- */

static void
txn_free(struct txn *t)
{
	sl_buf_free(&t->b);
	sl_free(t->cb);
	sl_free(t);
}

/* A txn for @topic from the free list or new; NULL when out of memory. */
static struct txn *
txn_get(struct sluice_nsq_producer *p, const char *topic, bool dpub,
	uint32_t defer_ms)
{
	struct txn *t = p->spare;

	if (t) {
		p->spare = t->next;
		p->nspare--;
	} else {
		t = sl_calloc(1, sizeof(*t));
		if (!t)
			return NULL;
		sl_buf_init(&t->b);
	}
	t->b.len = 0;
	t->b.failed = false;
	if (!sl_buf_reserve(&t->b, HDR_ROOM)) {
		txn_free(t);
		return NULL;
	}
	t->b.len = HDR_ROOM;
	snprintf(t->topic, sizeof(t->topic), "%s", topic);
	t->dpub = dpub;
	t->defer_ms = defer_ms;
	t->urgent = false;
	t->start = HDR_ROOM;
	t->count = t->body_bytes = 0;
	t->tries = 0;
	t->result = 0;
	t->next = NULL;
	return t;
}

static void
txn_put(struct sluice_nsq_producer *p, struct txn *t)
{
	/* A buffer grown by one huge batch is not kept. */
	if (p->nspare >= FREE_KEEP ||
	    t->b.cap > 2 * p->batch_limit + HDR_ROOM) {
		txn_free(t);
		return;
	}
	t->next = p->spare;
	p->spare = t;
	p->nspare++;
}

/* Append one message; the txn's buffer has been reserved. */
static int
txn_append(struct txn *t, const void *body, size_t len,
	   sluice_nsq_publish_fn *fn, void *arg)
{
	uint8_t sz[4];

	if (t->count == t->cb_cap) {
		size_t cap = t->cb_cap ? 2 * t->cb_cap : 8;
		struct cbent *cb = sl_realloc(t->cb, cap * sizeof(*cb));

		if (!cb)
			return SLUICE_ENOMEM;
		t->cb = cb;
		t->cb_cap = cap;
	}
	if (!sl_buf_reserve(&t->b, 4 + len)) {
		t->b.failed = false; /* the txn's contents are intact */
		return SLUICE_ENOMEM;
	}
	sl_nsq_put_be32(sz, (uint32_t)len);
	sl_buf_put(&t->b, sz, 4);
	sl_buf_put(&t->b, body, len);
	t->cb[t->count++] = (struct cbent){ fn, arg };
	t->body_bytes += len;
	return 0;
}

/* Write the header before HDR_ROOM; the wire is b[start..len). */
static void
txn_seal(struct txn *t)
{
	char line[HDR_ROOM];
	int n;
	size_t k;

	if (t->dpub)
		n = snprintf(line, sizeof(line), "DPUB %s %u\n", t->topic,
			     (unsigned)t->defer_ms);
	else if (t->count == 1)
		n = snprintf(line, sizeof(line), "PUB %s\n", t->topic);
	else
		n = snprintf(line, sizeof(line), "MPUB %s\n", t->topic);
	k = (size_t)n;
	if (!t->dpub && t->count > 1) {
		/* body size = 4 (count) + sum(4 + len), then the count */
		sl_nsq_put_be32(t->b.data + HDR_ROOM - 8,
				(uint32_t)(t->b.len - HDR_ROOM + 4));
		sl_nsq_put_be32(t->b.data + HDR_ROOM - 4, (uint32_t)t->count);
		t->start = HDR_ROOM - 8 - k;
	} else {
		t->start = HDR_ROOM - k;
	}
	memcpy(t->b.data + t->start, line, k);
}

/* Move open txn @t (unlinked by the caller) to the ready list. */
static void
seal_ready(struct sluice_nsq_producer *p, struct txn *t)
{
	txn_seal(t);
	list_add(&p->ready, t);
}

/* Seal open txns that are due; the earliest linger deadline left. */
static int64_t
seal_due(struct sluice_nsq_producer *p, int64_t now)
{
	struct txn **pp = &p->open, *t;
	int64_t next = INT64_MAX;

	while ((t = *pp)) {
		int64_t due = t->opened_ns + p->cfg.linger_ns;

		if (p->flushers || t->urgent || due <= now) {
			*pp = t->next;
			seal_ready(p, t);
			continue;
		}
		if (due < next)
			next = due;
		pp = &t->next;
	}
	return next;
}

static int
check_args(const struct sluice_nsq_producer *p, const char *topic,
	   const void *body, size_t len)
{
	if (!topic || !sl_nsq_name_is_valid(topic, strlen(topic)))
		return SLUICE_EINVAL;
	if (len == 0 || !body)
		return SLUICE_EINVAL; /* nsqd: fatal E_BAD_MESSAGE */
	if (len > p->cfg.max_msg_size)
		return SLUICE_EMSGSIZE;
	return 0;
}

static int
enqueue(struct sluice_nsq_producer *p, const char *topic, bool dpub,
	uint32_t defer_ms, const void *body, size_t len,
	sluice_nsq_publish_fn *fn, void *arg, bool urgent)
{
	bool on_io = io_self == p, wake = false;
	struct txn **pp, *t = NULL;
	int rc = check_args(p, topic, body, len);

	if (rc)
		return rc;
	pthread_mutex_lock(&p->mu);
	/* Back-pressure, except for the I/O thread (a callback), which
	 * would wait for itself. */
	while (!on_io && !p->stopping && p->queued_bytes > 0 &&
	       p->queued_bytes + len > p->cfg.queue_bytes)
		pthread_cond_wait(&p->cv, &p->mu);
	if (p->stopping) {
		pthread_mutex_unlock(&p->mu);
		return SLUICE_ESTATE;
	}
	if (!dpub) {
		for (pp = &p->open; (t = *pp); pp = &t->next)
			if (!t->dpub && strcmp(t->topic, topic) == 0)
				break;
		/* Full: this message would break a limit. */
		if (t && (t->count >= p->cfg.batch_max ||
			  t->b.len - HDR_ROOM + 4 + 4 + len > p->batch_limit)) {
			*pp = t->next;
			seal_ready(p, t);
			wake = true;
			t = NULL;
		}
	}
	if (!t) {
		t = txn_get(p, topic, dpub, defer_ms);
		if (!t) {
			pthread_mutex_unlock(&p->mu);
			return SLUICE_ENOMEM;
		}
		t->opened_ns = sl_mono_ns();
		t->next = p->open;
		p->open = t;
		wake = true; /* the I/O thread arms the linger timer */
	}
	rc = txn_append(t, body, len, fn, arg);
	if (rc == 0) {
		p->queued_bytes += 4 + len;
		p->outstanding++;
		p->st.queued++;
		if (urgent || dpub) {
			t->urgent = true;
			wake = true;
		}
	} else if (t->count == 0) {
		for (pp = &p->open; *pp; pp = &(*pp)->next)
			if (*pp == t) {
				*pp = t->next;
				break;
			}
		txn_put(p, t);
	}
	pthread_mutex_unlock(&p->mu);
	if (rc == 0 && wake)
		kick(p);
	return rc;
}

int
sluice_nsq_publish_async(struct sluice_nsq_producer *p, const char *topic,
			 const void *body, size_t len,
			 sluice_nsq_publish_fn *fn, void *arg)
{
	if (!p)
		return SLUICE_EINVAL;
	return enqueue(p, topic, false, 0, body, len, fn, arg, false);
}

int
sluice_nsq_dpublish_async(struct sluice_nsq_producer *p, const char *topic,
			  uint32_t defer_ms, const void *body, size_t len,
			  sluice_nsq_publish_fn *fn, void *arg)
{
	if (!p)
		return SLUICE_EINVAL;
	return enqueue(p, topic, true, defer_ms, body, len, fn, arg, false);
}

/* ---- synchronous calls ----------------------------------------------------
 */

struct waiter {
	struct sluice_nsq_producer *p;
	bool done; /* p->mu */
	int rc;    /* p->mu */
};

static void
wake_waiter(void *arg, int result)
{
	struct waiter *w = arg;
	struct sluice_nsq_producer *p = w->p;

	pthread_mutex_lock(&p->mu);
	w->rc = result;
	w->done = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

static int
publish_wait(struct sluice_nsq_producer *p, const char *topic, bool dpub,
	     uint32_t defer_ms, const void *body, size_t len)
{
	struct waiter w = { .p = p };
	int rc;

	if (!p)
		return SLUICE_EINVAL;
	rc = enqueue(p, topic, dpub, defer_ms, body, len, wake_waiter, &w,
		     true);
	if (rc)
		return rc;
	pthread_mutex_lock(&p->mu);
	while (!w.done)
		pthread_cond_wait(&p->cv, &p->mu);
	rc = w.rc;
	pthread_mutex_unlock(&p->mu);
	return rc;
}

int
sluice_nsq_publish(struct sluice_nsq_producer *p, const char *topic,
		   const void *body, size_t len)
{
	return publish_wait(p, topic, false, 0, body, len);
}

int
sluice_nsq_dpublish(struct sluice_nsq_producer *p, const char *topic,
		    uint32_t defer_ms, const void *body, size_t len)
{
	return publish_wait(p, topic, true, defer_ms, body, len);
}

int
sluice_nsq_producer_flush(struct sluice_nsq_producer *p, int64_t deadline_ns)
{
	int rc = 0;

	if (!p)
		return SLUICE_EINVAL;
	pthread_mutex_lock(&p->mu);
	p->flushers++;
	pthread_mutex_unlock(&p->mu);
	kick(p);
	pthread_mutex_lock(&p->mu);
	while (p->outstanding > 0 && rc == 0)
		rc = sl_clock_wait(sluice_clock_monotonic(), &p->cv, &p->mu,
				   deadline_ns);
	if (p->outstanding == 0)
		rc = 0;
	p->flushers--;
	pthread_mutex_unlock(&p->mu);
	return rc;
}

/* ---- results ------------------------------------------------------------- */

/* nsqd's error code -> the result of the failed publish (see the .h). */
static int
map_error(const struct sl_nsq_error *e)
{
	static const struct {
		const char *code;
		int rc;
	} tab[] = {
		{ "E_BAD_TOPIC", SLUICE_EINVAL },
		{ "E_BAD_MESSAGE", SLUICE_EINVAL },
		{ "E_BAD_BODY", SLUICE_EINVAL },
		{ "E_INVALID", SLUICE_EINVAL },
		{ "E_AUTH_FIRST", -EACCES },
		{ "E_AUTH_FAILED", -EACCES },
		{ "E_UNAUTHORIZED", -EACCES },
	};
	size_t i;

	for (i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
		if (e->code_len == strlen(tab[i].code) &&
		    memcmp(e->code, tab[i].code, e->code_len) == 0)
			return tab[i].rc;
	return SLUICE_EIO;
}

/*
 * Give every txn of @done its result: callbacks first (no lock), then the
 * accounting and the recycling under the lock.
 */
static void
finish(struct sluice_nsq_producer *p, struct list *done)
{
	struct txn *t, *next;
	size_t i;

	if (!done->head)
		return;
	/* Counters first, so a synchronous caller woken by its callback
	 * sees its publish counted. */
	pthread_mutex_lock(&p->mu);
	p->st.in_flight = p->nwritten;
	for (t = done->head; t; t = t->next) {
		if (t->result == 0) {
			p->st.published += t->count;
			p->st.bytes += t->body_bytes;
			p->st.commands++;
			if (t->dpub)
				p->st.dpubs++;
			else if (t->count > 1)
				p->st.mpubs++;
			if (t->count > p->st.max_batch)
				p->st.max_batch = t->count;
		} else {
			p->st.failed += t->count;
		}
	}
	pthread_mutex_unlock(&p->mu);
	for (t = done->head; t; t = t->next)
		for (i = 0; i < t->count; i++)
			if (t->cb[i].fn)
				t->cb[i].fn(t->cb[i].arg, t->result);
	/* Then the room and the flush count: flush() returns after every
	 * callback ran. */
	pthread_mutex_lock(&p->mu);
	for (t = done->head; t; t = next) {
		next = t->next;
		p->queued_bytes -= t->b.len - HDR_ROOM;
		p->outstanding -= t->count;
		txn_put(p, t);
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	done->head = done->tail = NULL;
}

/* Take the oldest in-flight txn off fl with @result into @done. */
static void
complete_head(struct sluice_nsq_producer *p, int result, struct list *done)
{
	struct txn *t = p->fl.head;

	p->fl.head = t->next;
	if (!p->fl.head)
		p->fl.tail = NULL;
	t->result = result;
	list_add(done, t);
}

/* Fail everything the I/O thread holds with @result. */
static void
fail_held(struct sluice_nsq_producer *p, int result, struct list *done)
{
	while (p->fl.head)
		complete_head(p, result, done);
	p->wr = NULL;
	p->wr_off = 0;
	p->nwritten = 0;
}

/* ---- the connection -------------------------------------------------------
 */

static void
set_connected(struct sluice_nsq_producer *p, bool up, bool counted)
{
	pthread_mutex_lock(&p->mu);
	p->st.connected = up;
	if (up && counted)
		p->st.connects++;
	else if (!up && counted)
		p->st.connect_failures++;
	p->st.in_flight = 0;
	pthread_mutex_unlock(&p->mu);
}

static int
dial(struct sluice_nsq_producer *p, char *err, size_t errsize)
{
	struct sl_nsq_conn_config cc = { 0 };
	int rc;

	cc.client_id = p->client_id;
	cc.heartbeat_ms = p->cfg.heartbeat_ms;
	sl_nsq_conn_init(&p->c, REPLY_MAX);
	rc = sl_nsq_conn_handshake(&p->c, p->host, p->cfg.port, &cc, NULL, NULL,
				   sl_mono_ns() + p->cfg.timeout_ns, err,
				   errsize);
	if (rc == 0) {
		p->last_read_ns = sl_mono_ns();
		p->nops_owed = 0;
		p->nop_left = 0;
	}
	return rc;
}

/*
 * The connection is gone.  @by_error: nsqd sent an error frame (already
 * given to the oldest txn), so nothing behind it ran.  Otherwise every
 * fully written txn is uncertain: resent while it has retries left.
 */
static void
drop_conn(struct sluice_nsq_producer *p, bool by_error, struct list *done)
{
	struct list keep = { 0 };
	struct txn *t, *next;
	bool written = true;
	uint64_t retried = 0;

	sl_nsq_conn_close(&p->c);
	for (t = p->fl.head; t; t = next) {
		next = t->next;
		if (t == p->wr)
			written = false; /* never reached nsqd whole */
		if (written && !by_error) {
			if (++t->tries > p->cfg.retries) {
				t->result = SLUICE_EDISCONNECTED;
				list_add(done, t);
				continue;
			}
			retried++;
		}
		list_add(&keep, t);
	}
	p->fl = keep;
	p->wr = p->fl.head;
	p->wr_off = 0;
	p->nwritten = 0;
	p->next_connect_ns = sl_mono_ns(); /* at once, then with backoff */
	pthread_mutex_lock(&p->mu);
	p->st.retried += retried;
	pthread_mutex_unlock(&p->mu);
	set_connected(p, false, false);
}

/* Parse the frames read.  Returns 0, or < 0 when the connection must go
 * (*@by_error set when an error frame ended it). */
static int
parse(struct sluice_nsq_producer *p, struct list *done, bool *by_error)
{
	struct sl_nsq_buf *rb = &p->c.rbuf;
	size_t off = 0;
	int rc = 0;

	while (off < rb->len && rc == 0) {
		struct sl_nsq_frame f;
		struct sl_nsq_error e;
		ssize_t used = sl_nsq_frame(rb->p + off, rb->len - off,
					    p->c.max_frame, &f);
		enum sl_nsq_response kind;

		if (used == 0)
			break;
		if (used < 0) {
			note(p, "bad frame from nsqd: %s",
			     sluice_strerror((int)used));
			rc = SLUICE_EPROTO;
			break;
		}
		off += (size_t)used;
		if (f.type == SL_NSQ_FRAME_RESPONSE) {
			kind = sl_nsq_response_kind(f.data, f.len);
			if (kind == SL_NSQ_RESP_HEARTBEAT) {
				p->nops_owed++;
				pthread_mutex_lock(&p->mu);
				p->st.heartbeats++;
				pthread_mutex_unlock(&p->mu);
			} else if (kind == SL_NSQ_RESP_OK && p->fl.head &&
				   p->fl.head != p->wr) {
				p->nwritten--;
				complete_head(p, 0, done);
			} else {
				note(p, "unexpected response from nsqd: %.*s",
				     (int)(f.len > 64 ? 64 : f.len),
				     (const char *)f.data);
				rc = SLUICE_EPROTO;
			}
		} else if (f.type == SL_NSQ_FRAME_ERROR && p->fl.head &&
			   (p->fl.head != p->wr || p->wr_off > 0) &&
			   sl_nsq_error_parse(f.data, f.len, &e) == 0) {
			/* nsqd may refuse a command from its line or size
			 * before the body is in (E_BAD_MESSAGE for a size
			 * over its limit): then it is the one being
			 * written. */
			if (p->wr == p->fl.head) {
				p->wr = p->wr->next;
				p->wr_off = 0;
			} else {
				p->nwritten--;
			}
			note(p, "nsqd: %.*s", (int)f.len, (const char *)f.data);
			pthread_mutex_lock(&p->mu);
			p->st.errors++;
			pthread_mutex_unlock(&p->mu);
			complete_head(p, map_error(&e), done);
			*by_error = true;
			rc = SLUICE_EIO; /* fatal: nsqd closes after it */
		} else {
			note(p, "unexpected %s frame from nsqd",
			     f.type == SL_NSQ_FRAME_MESSAGE ? "message"
							    : "error");
			rc = SLUICE_EPROTO;
		}
	}
	sl_nsq_buf_consume(rb, off);
	return rc;
}

/* Write as much as the socket takes: owed NOPs at a command boundary,
 * then the txns from the cursor. */
static int
write_some(struct sluice_nsq_producer *p)
{
	for (;;) {
		const uint8_t *src;
		size_t len;
		ssize_t w;

		if (p->nop_left == 0 && p->nops_owed && p->wr_off == 0) {
			unsigned k = p->nops_owed;

			if (k > (sizeof(nops) - 1) / 4)
				k = (sizeof(nops) - 1) / 4;
			p->nops_owed -= k;
			p->nop_left = 4 * (size_t)k;
		}
		if (p->nop_left) {
			src = (const uint8_t *)nops;
			len = p->nop_left;
		} else if (p->wr) {
			src = p->wr->b.data + p->wr->start + p->wr_off;
			len = wire_len(p->wr) - p->wr_off;
		} else {
			return 0;
		}
		w = sl_nsq_conn_write(&p->c, src, len);
		if (w < 0) {
			note(p, "write to nsqd: %s", sluice_strerror((int)w));
			return (int)w;
		}
		if (w == 0)
			return 0;
		if (p->nop_left) {
			p->nop_left -= (size_t)w;
			continue;
		}
		p->wr_off += (size_t)w;
		if (p->wr_off == wire_len(p->wr)) {
			p->nwritten++;
			p->wr = p->wr->next;
			p->wr_off = 0;
		}
	}
}

static bool
want_write(const struct sluice_nsq_producer *p)
{
	return p->wr || p->nop_left || p->nops_owed;
}

/* ---- the I/O thread -------------------------------------------------------
 */

/* Reconnect when something waits, at most once per backoff step. */
static void
maybe_connect(struct sluice_nsq_producer *p, int64_t now, struct list *done)
{
	char err[ERR_TEXT];
	int rc;

	if (p->c.fd >= 0 || !p->fl.head || now < p->next_connect_ns)
		return;
	rc = dial(p, err, sizeof(err));
	if (rc == 0) {
		p->backoff_ns = 0;
		set_connected(p, true, true);
		return;
	}
	note(p, "%s", err[0] ? err : sluice_strerror(rc));
	set_connected(p, false, true);
	fail_held(p, rc, done);
	p->backoff_ns =
		p->backoff_ns ? 2 * p->backoff_ns : p->cfg.reconnect_min_ns;
	if (p->backoff_ns > p->cfg.reconnect_max_ns)
		p->backoff_ns = p->cfg.reconnect_max_ns;
	p->next_connect_ns = sl_mono_ns() + p->backoff_ns;
}

/* One read, parsed: > 0 bytes, 0 would block, < 0 the connection must
 * go. */
static int
do_read(struct sluice_nsq_producer *p, struct list *done, bool *by_error)
{
	ssize_t r = sl_nsq_conn_read(&p->c, READ_CHUNK);
	int rc;

	if (r == 0)
		return 0;
	if (r < 0) {
		if (r == SLUICE_EIO)
			note(p, "nsqd closed the connection");
		else
			note(p, "read from nsqd: %s", sluice_strerror((int)r));
		return (int)r;
	}
	p->last_read_ns = sl_mono_ns();
	rc = parse(p, done, by_error);
	return rc < 0 ? rc : (int)(r > INT32_MAX ? INT32_MAX : r);
}

/*
 * A write failed (nsqd closed): read what it sent before closing, so an
 * error frame still fails the publish that caused it, not as "unknown".
 */
static void
salvage(struct sluice_nsq_producer *p, struct list *done, bool *by_error)
{
	while (!*by_error && do_read(p, done, by_error) > 0)
		;
}

static void
drain_evfd(struct sluice_nsq_producer *p)
{
	uint64_t v;
	ssize_t r;

	/*
	 * Read, then clear: a kick that lands in between finds the flag
	 * still set and writes nothing, but the loop re-reads the state
	 * right after this.  Clearing first could leave the flag set with
	 * the eventfd drained, and every later kick would be swallowed.
	 */
	do
		r = read(p->evfd, &v, sizeof(v));
	while (r < 0 && errno == EINTR);
	atomic_store(&p->kicked, false);
}

static void *
io_main(void *arg)
{
	struct sluice_nsq_producer *p = arg;
	struct list done = { 0 }, taken;
	int64_t hb_ns =
		(int64_t)(p->c.ident.heartbeat_ms ? p->c.ident.heartbeat_ms
						  : SL_NSQ_DEFAULT_HB_MS) *
		SLUICE_NS_PER_MS;

	io_self = p;
	for (;;) {
		struct pollfd pf[2];
		int64_t now = sl_mono_ns(), next, wait;
		bool quit, by_error = false;
		int rc = 0, np = 1;

		pthread_mutex_lock(&p->mu);
		p->st.in_flight = p->nwritten;
		next = seal_due(p, now);
		taken = p->ready;
		p->ready.head = p->ready.tail = NULL;
		quit = p->quit;
		pthread_mutex_unlock(&p->mu);
		if (!p->wr)
			p->wr = taken.head;
		list_cat(&p->fl, &taken);
		if (quit)
			break;
		maybe_connect(p, now, &done);
		if (p->c.fd >= 0) {
			rc = write_some(p);
			if (rc < 0)
				salvage(p, &done, &by_error);
		}
		if (rc == 0 && p->c.fd >= 0 &&
		    now - p->last_read_ns > 2 * hb_ns) {
			note(p, "no heartbeat from nsqd for %lld ms",
			     (long long)((now - p->last_read_ns) /
					 SLUICE_NS_PER_MS));
			rc = SLUICE_ETIMEDOUT;
		}
		if (rc == 0) {
			finish(p, &done);
			wait = hb_ns / 2;
			if (next != INT64_MAX && next - now < wait)
				wait = next - now;
			if (p->c.fd < 0 && p->fl.head &&
			    p->next_connect_ns - now < wait)
				wait = p->next_connect_ns - now;
			if (wait < 0)
				wait = 0;
			pf[0] = (struct pollfd){ .fd = p->evfd,
						 .events = POLLIN };
			if (p->c.fd >= 0) {
				pf[1] = (struct pollfd){ .fd = p->c.fd,
							 .events = POLLIN };
				if (want_write(p))
					pf[1].events |= POLLOUT;
				np = 2;
			}
			/* Round up: a timer due in 0.4 ms must not spin. */
			if (poll(pf, (nfds_t)np,
				 (int)((wait + SLUICE_NS_PER_MS - 1) /
				       SLUICE_NS_PER_MS)) < 0 &&
			    errno != EINTR) {
				note(p, "poll: %s", sluice_strerror(-errno));
				rc = SLUICE_EIO;
			}
			if (pf[0].revents)
				drain_evfd(p);
			if (rc == 0 && np == 2 &&
			    (pf[1].revents & (POLLIN | POLLHUP | POLLERR)))
				rc = do_read(p, &done, &by_error);
		}
		if (rc < 0)
			drop_conn(p, by_error, &done);
		finish(p, &done);
	}
	/* free(): whatever is left never got an answer. */
	sl_nsq_conn_close(&p->c);
	fail_held(p, SLUICE_ECANCELED, &done);
	finish(p, &done);
	return NULL;
}

/* ---- public ---------------------------------------------------------------
 */

void
sluice_nsq_producer_config_init(struct sluice_nsq_producer_config *cfg)
{
	*cfg = (struct sluice_nsq_producer_config){
		.host = DEFAULT_HOST,
		.port = DEFAULT_PORT,
		.client_id = DEFAULT_CLIENT,
		.max_msg_size = DEFAULT_MAX_MSG,
		.max_body_size = DEFAULT_MAX_BODY,
		.batch_max = DEFAULT_BATCH,
		.batch_bytes = DEFAULT_BATCH_B,
		.linger_ns = DEFAULT_LINGER,
		.queue_bytes = DEFAULT_QUEUE,
		.timeout_ns = DEFAULT_TIMEOUT,
		.reconnect_min_ns = DEFAULT_RECON_MIN,
		.reconnect_max_ns = DEFAULT_RECON_MAX,
	};
}

static void
destroy(struct sluice_nsq_producer *p)
{
	struct txn *t;

	sl_nsq_conn_close(&p->c);
	while ((t = p->spare)) {
		p->spare = t->next;
		txn_free(t);
	}
	if (p->evfd >= 0)
		close(p->evfd);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	sl_free(p);
}

static bool
config_ok(const struct sluice_nsq_producer_config *c)
{
	return c->max_msg_size > 0 && c->max_msg_size <= INT32_MAX - 64 &&
	       c->max_body_size >= 12 && c->max_body_size <= INT32_MAX - 64 &&
	       c->batch_max >= 1 && c->linger_ns >= 0 && c->queue_bytes > 0 &&
	       c->timeout_ns > 0 && c->reconnect_min_ns > 0 &&
	       c->reconnect_max_ns >= c->reconnect_min_ns &&
	       c->heartbeat_ms <= INT32_MAX / 4 &&
	       (!c->host || strlen(c->host) < 256) &&
	       (!c->client_id || strlen(c->client_id) < 128);
}

int
sluice_nsq_producer_new(const struct sluice_nsq_producer_config *cfg, char *err,
			size_t errsize, struct sluice_nsq_producer **out)
{
	struct sluice_nsq_producer *p;
	char ebuf[ERR_TEXT] = "";
	int rc;

	if (err && errsize)
		err[0] = '\0';
	if (!cfg || !out || !config_ok(cfg)) {
		if (err && errsize)
			snprintf(err, errsize,
				 "invalid producer configuration");
		return SLUICE_EINVAL;
	}
	p = sl_calloc(1, sizeof(*p));
	if (!p)
		return SLUICE_ENOMEM;
	p->cfg = *cfg;
	p->evfd = -1;
	sl_nsq_conn_init(&p->c, REPLY_MAX);
	snprintf(p->host, sizeof(p->host), "%s",
		 cfg->host ? cfg->host : DEFAULT_HOST);
	snprintf(p->client_id, sizeof(p->client_id), "%s",
		 cfg->client_id ? cfg->client_id : DEFAULT_CLIENT);
	if (!p->cfg.port)
		p->cfg.port = (uint16_t)DEFAULT_PORT;
	/* An MPUB body is 4 + sum(4 + len) <= max_body_size. */
	p->batch_limit = cfg->max_body_size - 4;
	if (cfg->batch_bytes && cfg->batch_bytes < p->batch_limit)
		p->batch_limit = cfg->batch_bytes;
	/* A message over the limit still goes, alone in its batch. */
	atomic_init(&p->kicked, false);
	rc = pthread_mutex_init(&p->mu, NULL);
	if (rc) {
		sl_free(p);
		return -rc;
	}
	rc = sl_cond_init(&p->cv);
	if (rc) {
		pthread_mutex_destroy(&p->mu);
		sl_free(p);
		return rc;
	}
	p->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->evfd < 0) {
		rc = -errno;
		destroy(p);
		return rc;
	}
	rc = dial(p, ebuf, sizeof(ebuf));
	if (rc) {
		if (err && errsize)
			snprintf(err, errsize, "%s",
				 ebuf[0] ? ebuf : sluice_strerror(rc));
		destroy(p);
		return rc;
	}
	p->st.connected = true;
	p->st.connects = 1;
	rc = pthread_create(&p->io, NULL, io_main, p);
	if (rc) {
		if (err && errsize)
			snprintf(err, errsize, "cannot start the I/O thread");
		destroy(p);
		return -rc;
	}
	*out = p;
	return 0;
}

void
sluice_nsq_producer_stats(struct sluice_nsq_producer *p,
			  struct sluice_nsq_producer_stats *out)
{
	pthread_mutex_lock(&p->mu);
	*out = p->st;
	pthread_mutex_unlock(&p->mu);
}

void
sluice_nsq_producer_last_error(struct sluice_nsq_producer *p, char *buf,
			       size_t size)
{
	if (!buf || size == 0)
		return;
	pthread_mutex_lock(&p->mu);
	snprintf(buf, size, "%s", p->errtext);
	pthread_mutex_unlock(&p->mu);
}

bool
sluice_nsq_name_is_valid(const char *name)
{
	return name && sl_nsq_name_is_valid(name, strlen(name));
}

void
sluice_nsq_producer_free(struct sluice_nsq_producer *p)
{
	struct txn *t;
	struct list left = { 0 };

	if (!p)
		return;
	(void)sluice_nsq_producer_flush(p, sl_mono_ns() + p->cfg.timeout_ns);
	pthread_mutex_lock(&p->mu);
	p->stopping = true;
	p->quit = true;
	pthread_cond_broadcast(&p->cv); /* blocked publishers: ESTATE */
	pthread_mutex_unlock(&p->mu);
	kick(p);
	pthread_join(p->io, NULL);
	/* Publishes that were still open or ready: no answer ever. */
	pthread_mutex_lock(&p->mu);
	while ((t = p->open)) {
		p->open = t->next;
		list_add(&left, t);
	}
	list_cat(&left, &p->ready);
	pthread_mutex_unlock(&p->mu);
	for (t = left.head; t; t = t->next)
		t->result = SLUICE_ECANCELED;
	finish(p, &left);
	destroy(p);
}
