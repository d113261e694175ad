/* SPDX-License-Identifier: MIT */
/*
 * nsq_source.c - the NSQ consumer source over one nsqd TCP connection.
 *
 * sluice_nsq_open() does the handshake (magic, IDENTIFY, SUB) on the
 * caller's thread with poll() timeouts, then starts one I/O thread that
 * owns the socket until the connection ends.  The I/O thread reads frames
 * with the sans-I/O codec (proto/nsq.h), answers each heartbeat with NOP,
 * copies every message into a record of its own (one allocation holding the
 * struct sluice_msg, the 16-byte id and the body; TODO: carve records out
 * of the read buffer instead) and appends a whole read's worth of records
 * to the ready queue under one lock.  fetch() pops from that queue.
 *
 * Commands from the engine's threads (FIN, REQ, TOUCH, RDY, CLS) are
 * encoded into the shared output buffer under the lock; the I/O thread is
 * woken through an eventfd and takes the whole buffer at once, so many
 * acks become one write.  Only one eventfd write is outstanding at a time
 * (kicked).
 *
 * Leases: msg.lease is the connection's generation.  When the connection
 * dies the generation moves on, queued records are freed and fetch() owes
 * the engine one SLUICE_EDISCONNECTED; settling a message of the dead
 * connection is refused (nsqd binds FIN/REQ/TOUCH to the connection that
 * delivered it).  There is no reconnection yet: fetch() returns 0 from then
 * on.  Records lent to the engine stay valid until release().
 *
 * The ready queue is bounded by the RDY count (nsqd never has more than
 * RDY messages in flight to us), except that a message nsqd timed out and
 * redelivered while we still held its old copy counts twice; keep the
 * engine's timeout below msg_timeout.
 *
 * Locking: n->mu guards the fields marked so (ready queue, output buffer,
 * connection state, wakeup state, stats); fetchers wait on n->cv, which is
 * registered with the clock.  The I/O thread holds n->mu only to move
 * buffers and records, never across a system call.  The socket, the read
 * buffer and the write buffer belong to the I/O thread alone (to open()
 * before it starts).  Record memory is not guarded: a record belongs to
 * exactly one side at a time (I/O thread, queue, engine).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sluice/nsq.h>
#include <sluice/version.h>

#include "core/clock_int.h"
#include "proto/nsq.h"
#include "util/alloc.h"

#define DEFAULT_HOST     "127.0.0.1"
#define DEFAULT_PORT     4150u
#define DEFAULT_CLIENT   "sluice"
#define DEFAULT_MAX_BODY ((size_t)1 << 20)
#define DEFAULT_TIMEOUT  (10 * SLUICE_NS_PER_S)
#define DEFAULT_HB_MS    30000u
#define DEFAULT_MAX_RDY  2500u
#define READ_CHUNK       65536u
#define CMD_MAX          64u /* longest FIN/REQ/TOUCH/RDY/NOP/CLS line */
#define ERR_TEXT         256u

struct rec {
	struct sluice_msg msg;
	struct rec *next; /* ready queue link (n->mu while queued) */
	char id[SL_NSQ_ID_LEN];
	uint8_t body[];
};

struct buf {
	uint8_t *p;
	size_t len, cap;
};

/* What one batch of frames did, added to the stats under the lock. */
struct tally {
	uint64_t messages, heartbeats, fin_failed, req_failed, touch_failed;
	uint64_t alloc_failed;
};

struct sluice_nsq {
	/* Immutable once open() returns: */
	const struct sluice_clock *clock;
	int evfd;         /* wakes the I/O thread */
	size_t max_frame; /* largest size field accepted */
	uint32_t max_rdy;
	int64_t hb_ns, timeout_ns;
	struct sl_clock_watch watch;
	pthread_t io;
	bool io_started;

	pthread_mutex_t mu;
	pthread_cond_t cv;          /* fetchers: ready, death, wakeup (mu) */
	struct rec *head, *tail;    /* ready queue (mu) */
	struct buf out;             /* commands for the I/O thread (mu) */
	uint64_t gen;               /* lease stamp of the connection (mu) */
	bool dead;                  /* no more commands go out (mu) */
	bool disc_pending;          /* fetch owes SLUICE_EDISCONNECTED (mu) */
	bool closing;               /* close() began (mu) */
	bool joined;                /* close() joined the I/O thread (mu) */
	uint64_t wake_seq;          /* bumped by wakeup() (mu) */
	bool wake_pending;          /* a wakeup no blocked fetch took (mu) */
	struct sluice_nsq_stats st; /* (mu) */
	char errtext[ERR_TEXT];     /* why it died (mu) */
	pthread_mutex_t close_mu;   /* serialises close() calls */
	atomic_bool kicked; /* an eventfd write is unread (seq_cst: cleared
			       before the I/O thread takes &out, set after
			       a command is added to it) */

	/* The I/O thread's (open()'s before the thread starts): */
	int fd;
	struct buf rbuf, wbuf;
	bool got_close_wait;
	int64_t last_read_ns; /* real time of the last byte read */
};

static void seterr(char *err, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
seterr(char *err, size_t size, const char *fmt, ...)
{
	va_list ap;

	if (!err || size == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, size, fmt, ap);
	va_end(ap);
}

/* Make room for @more bytes after b->len. */
static int
buf_reserve(struct buf *b, size_t more)
{
	size_t cap = b->cap ? b->cap : 256;
	uint8_t *p;

	if (b->len + more <= b->cap)
		return 0;
	while (cap < b->len + more)
		cap *= 2;
	p = sl_realloc(b->p, cap);
	if (!p)
		return SLUICE_ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

enum cmd { C_FIN, C_REQ, C_TOUCH, C_RDY, C_NOP, C_CLS };

/* Append one short command to @b. */
static int
put_cmd(struct buf *b, enum cmd c, const char *id, uint32_t arg)
{
	uint8_t *p;
	ssize_t r = SLUICE_EINVAL;

	if (buf_reserve(b, CMD_MAX) < 0)
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
	uint64_t one = 1;
	ssize_t r;

	if (atomic_exchange(&n->kicked, true))
		return;
	do
		r = write(n->evfd, &one, sizeof(one));
	while (r < 0 && errno == EINTR);
}

static void
free_list(struct rec *r)
{
	while (r) {
		struct rec *next = r->next;

		sl_free(r);
		r = next;
	}
}

static uint32_t
be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

/* ---- the I/O thread ---------------------------------------------------- */

/* Note why the connection is dying (first reason wins).  Takes n->mu. */
static void note_error(struct sluice_nsq *n, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
note_error(struct sluice_nsq *n, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&n->mu);
	if (n->errtext[0] == '\0') {
		va_start(ap, fmt);
		vsnprintf(n->errtext, sizeof(n->errtext), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&n->mu);
}

/*
 * Hand the records of one read to fetchers, or, once close() began, give
 * them straight back (REQ 0) so nsqd redelivers them without waiting for
 * their msg_timeout.
 */
static void
deliver(struct sluice_nsq *n, struct rec *head, struct rec *tail, size_t cnt,
	const struct tally *t)
{
	struct rec *drop = NULL, *r;

	pthread_mutex_lock(&n->mu);
	n->st.messages += t->messages;
	n->st.heartbeats += t->heartbeats;
	n->st.fin_failed += t->fin_failed;
	n->st.req_failed += t->req_failed;
	n->st.touch_failed += t->touch_failed;
	n->st.alloc_failed += t->alloc_failed;
	if (cnt && n->closing) {
		for (r = head; r; r = r->next)
			if (put_cmd(&n->wbuf, C_REQ, r->id, 0) == 0)
				n->st.handed_back++;
		drop = head;
	} else if (cnt) {
		for (r = head; r; r = r->next)
			r->msg.lease = n->gen;
		if (n->tail)
			n->tail->next = head;
		else
			n->head = head;
		n->tail = tail;
		pthread_cond_broadcast(&n->cv);
	}
	pthread_mutex_unlock(&n->mu);
	free_list(drop);
}

static int
on_error_frame(struct sluice_nsq *n, const struct sl_nsq_frame *f,
	       struct tally *t)
{
	struct sl_nsq_error e;

	if (sl_nsq_error_parse(f->data, f->len, &e) < 0) {
		note_error(n, "nsqd sent an empty error frame");
		return SLUICE_EPROTO;
	}
	if (e.fatal) {
		note_error(n, "nsqd: %.*s", (int)f->len, (const char *)f->data);
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

/* Parse every complete frame in the read buffer; keep the rest. */
static int
parse(struct sluice_nsq *n)
{
	struct rec *head = NULL, *tail = NULL;
	struct tally t = { 0 };
	size_t off = 0, cnt = 0;
	int err = 0;

	while (off < n->rbuf.len && !err) {
		struct sl_nsq_frame f;
		struct sl_nsq_message m;
		struct rec *r;
		ssize_t used = sl_nsq_frame(n->rbuf.p + off, n->rbuf.len - off,
					    n->max_frame, &f);

		if (used == 0)
			break;
		if (used < 0) {
			note_error(n, "bad frame from nsqd: %s",
				   sluice_strerror((int)used));
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
				if (put_cmd(&n->wbuf, C_NOP, NULL, 0) < 0)
					err = SLUICE_ENOMEM;
				break;
			case SL_NSQ_RESP_CLOSE_WAIT:
				n->got_close_wait = true;
				break;
			default:
				break;
			}
			break;
		case SL_NSQ_FRAME_ERROR:
			err = on_error_frame(n, &f, &t);
			break;
		case SL_NSQ_FRAME_MESSAGE:
			if (sl_nsq_message(f.data, f.len, &m) < 0) {
				note_error(n, "short message frame from nsqd");
				err = SLUICE_EPROTO;
				break;
			}
			t.messages++;
			r = sl_malloc(sizeof(*r) + m.body_len);
			if (!r) {
				/* Give it back rather than hold it unseen. */
				t.alloc_failed++;
				if (put_cmd(&n->wbuf, C_REQ, m.id, 0) < 0)
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
			r->next = NULL;
			if (tail)
				tail->next = r;
			else
				head = r;
			tail = r;
			cnt++;
			break;
		}
	}
	if (off) {
		memmove(n->rbuf.p, n->rbuf.p + off, n->rbuf.len - off);
		n->rbuf.len -= off;
	}
	if (err) {
		free_list(head);
		head = tail = NULL;
		cnt = 0;
	}
	deliver(n, head, tail, cnt, &t);
	return err;
}

/* Read what the socket has (one read) and parse it. */
static int
do_read(struct sluice_nsq *n)
{
	size_t want = READ_CHUNK;
	ssize_t r;

	if (n->rbuf.len >= 4) {
		/* sl_nsq_frame() already checked the size against
		 * max_frame, so this is bounded. */
		size_t need = 4 + (size_t)be32(n->rbuf.p);

		if (need > n->rbuf.len && need - n->rbuf.len > want)
			want = need - n->rbuf.len;
	}
	if (buf_reserve(&n->rbuf, want) < 0) {
		note_error(n, "out of memory for the read buffer");
		return SLUICE_ENOMEM;
	}
	do
		r = read(n->fd, n->rbuf.p + n->rbuf.len,
			 n->rbuf.cap - n->rbuf.len);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		int e = errno;

		if (e == EAGAIN)
			return 0;
		note_error(n, "read: %s", sluice_strerror(-e));
		return -e;
	}
	if (r == 0) {
		note_error(n, "nsqd closed the connection");
		return SLUICE_EIO;
	}
	n->rbuf.len += (size_t)r;
	n->last_read_ns = sl_mono_ns();
	return parse(n);
}

static int
do_write(struct sluice_nsq *n)
{
	size_t off = 0;

	while (off < n->wbuf.len) {
		ssize_t r = send(n->fd, n->wbuf.p + off, n->wbuf.len - off,
				 MSG_NOSIGNAL);

		if (r < 0) {
			int e = errno;

			if (e == EINTR)
				continue;
			if (e == EAGAIN)
				break;
			note_error(n, "write: %s", sluice_strerror(-e));
			return -e;
		}
		off += (size_t)r;
	}
	memmove(n->wbuf.p, n->wbuf.p + off, n->wbuf.len - off);
	n->wbuf.len -= off;
	return 0;
}

/* Move the queued commands into the write buffer; is close() under way? */
static int
take_commands(struct sluice_nsq *n, bool *closing)
{
	int err = 0;

	atomic_store(&n->kicked, false);
	pthread_mutex_lock(&n->mu);
	if (n->out.len && n->wbuf.len == 0) {
		struct buf tmp = n->wbuf;

		n->wbuf = n->out;
		n->out = tmp;
	} else if (n->out.len) {
		if (buf_reserve(&n->wbuf, n->out.len) == 0) {
			memcpy(n->wbuf.p + n->wbuf.len, n->out.p, n->out.len);
			n->wbuf.len += n->out.len;
			n->out.len = 0;
		} else {
			err = SLUICE_ENOMEM;
		}
	}
	*closing = n->closing;
	pthread_mutex_unlock(&n->mu);
	return err;
}

/* The connection is over: refuse its leases, drop what fetch had not
 * taken, and tell fetch (unless close() asked for it). */
static void
die(struct sluice_nsq *n, int err)
{
	struct rec *drop;

	pthread_mutex_lock(&n->mu);
	n->dead = true;
	n->gen++;
	if (err && !n->closing)
		n->disc_pending = true;
	n->st.connected = false;
	n->st.error = err;
	if (err && n->errtext[0] == '\0')
		snprintf(n->errtext, sizeof(n->errtext), "%s",
			 sluice_strerror(err));
	drop = n->head;
	n->head = n->tail = NULL;
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
	free_list(drop);
	close(n->fd);
	n->fd = -1;
}

static void *
io_main(void *arg)
{
	struct sluice_nsq *n = arg;
	int64_t close_by = 0;
	int err = 0;

	n->last_read_ns = sl_mono_ns();
	/* Frames that came in with the handshake's last read. */
	if (n->rbuf.len)
		err = parse(n);
	while (!err) {
		struct pollfd p[2];
		int64_t now, wait_ns;
		bool closing;
		int r;

		err = take_commands(n, &closing);
		if (err)
			break;
		now = sl_mono_ns();
		if (closing && close_by == 0)
			close_by = now + n->timeout_ns;
		if (closing && n->got_close_wait && n->wbuf.len == 0)
			break; /* clean close: every command is out */
		if (closing && now >= close_by)
			break; /* no CLOSE_WAIT in time: close anyway */
		if (!closing && now - n->last_read_ns > 2 * n->hb_ns) {
			note_error(n, "no heartbeat from nsqd for %lld ms",
				   (long long)((now - n->last_read_ns) /
					       SLUICE_NS_PER_MS));
			err = SLUICE_ETIMEDOUT;
			break;
		}
		wait_ns = n->hb_ns / 2;
		if (closing && close_by - now < wait_ns)
			wait_ns = close_by - now;
		p[0] = (struct pollfd){ .fd = n->fd, .events = POLLIN };
		if (n->wbuf.len)
			p[0].events |= POLLOUT;
		p[1] = (struct pollfd){ .fd = n->evfd, .events = POLLIN };
		r = poll(p, 2, (int)(wait_ns / SLUICE_NS_PER_MS) + 1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		if (p[1].revents & POLLIN) {
			uint64_t v;
			ssize_t rr = read(n->evfd, &v, sizeof(v));

			(void)rr; /* EAGAIN: someone else drained it */
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			err = do_read(n);
			if (err)
				break;
		}
		if (n->wbuf.len) {
			err = do_write(n);
			if (err)
				break;
		}
	}
	die(n, err);
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
			while (n->head && (size_t)got < max) {
				struct rec *r = n->head;

				n->head = r->next;
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
			/* Woken while blocked, or a wakeup nobody blocked
			 * for was meant for a fetch like this one. */
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

/* Does @m belong to the live connection?  n->mu held. */
static bool
valid(const struct sluice_nsq *n, const struct sluice_msg *m)
{
	return !n->dead && m->lease == n->gen && m->id_len == SL_NSQ_ID_LEN;
}

static int
nsq_ack(void *self, struct sluice_msg *const *msgs, size_t n_msgs)
{
	struct sluice_nsq *n = self;
	size_t i, sent = 0;
	int refused = 0;

	pthread_mutex_lock(&n->mu);
	for (i = 0; i < n_msgs; i++) {
		/* Out of memory for the command: refused too; nsqd
		 * redelivers it after msg_timeout (at least once). */
		if (valid(n, msgs[i]) &&
		    put_cmd(&n->out, C_FIN, msgs[i]->id, 0) == 0)
			sent++;
		else
			refused++;
	}
	n->st.fins += sent;
	n->st.refused += (uint64_t)refused;
	pthread_mutex_unlock(&n->mu);
	if (sent)
		kick(n);
	return refused;
}

/* A command about one message: REQ or TOUCH. */
static int
one_cmd(struct sluice_nsq *n, struct sluice_msg *m, enum cmd c, uint32_t arg)
{
	int rc;

	pthread_mutex_lock(&n->mu);
	if (!valid(n, m)) {
		n->st.refused++;
		rc = SLUICE_ESTALE;
	} else {
		rc = put_cmd(&n->out, c, m->id, arg);
		if (rc == 0 && c == C_REQ)
			n->st.reqs++;
		else if (rc == 0)
			n->st.touches++;
	}
	pthread_mutex_unlock(&n->mu);
	if (rc == 0)
		kick(n);
	return rc;
}

/*
 * nsqd counts every delivery itself, so count_attempt cannot be honoured:
 * the redelivery carries attempts + 1 either way.
 */
static int
nsq_requeue(void *self, struct sluice_msg *m, int64_t delay_ns,
	    bool count_attempt)
{
	uint32_t ms = 0;

	(void)count_attempt;
	if (delay_ns > 0) {
		int64_t v =
			(delay_ns + SLUICE_NS_PER_MS - 1) / SLUICE_NS_PER_MS;

		/* nsqd clamps to its --max-req-timeout itself. */
		ms = v > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)v;
	}
	return one_cmd(self, m, C_REQ, ms);
}

static int
nsq_touch(void *self, struct sluice_msg *m)
{
	return one_cmd(self, m, C_TOUCH, 0);
}

static void
nsq_release(void *self, struct sluice_msg *const *msgs, size_t n_msgs)
{
	size_t i;

	(void)self;
	for (i = 0; i < n_msgs; i++)
		sl_free(msgs[i]->source_data);
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
	uint32_t rdy = n->max_rdy;
	bool sent = false;

	if (max_in_flight < rdy)
		rdy = (uint32_t)max_in_flight;
	pthread_mutex_lock(&n->mu);
	if (!n->dead && !n->closing && rdy != n->st.rdy &&
	    put_cmd(&n->out, C_RDY, NULL, rdy) == 0) {
		n->st.rdy = rdy;
		sent = true;
	}
	pthread_mutex_unlock(&n->mu);
	if (sent)
		kick(n);
}

/*
 * Give back what fetch never took (REQ 0), send CLS, and let the I/O thread
 * flush, wait for CLOSE_WAIT (bounded by timeout_ns) and close the socket.
 */
static void
nsq_close(void *self)
{
	struct sluice_nsq *n = self;
	struct rec *drop, *r;
	bool join;

	pthread_mutex_lock(&n->close_mu);
	pthread_mutex_lock(&n->mu);
	join = !n->closing && n->io_started;
	n->closing = true;
	drop = n->head;
	n->head = n->tail = NULL;
	if (!n->dead) {
		for (r = drop; r; r = r->next)
			if (put_cmd(&n->out, C_REQ, r->id, 0) == 0)
				n->st.handed_back++;
		/* Without CLS the I/O thread closes at its timeout. */
		(void)put_cmd(&n->out, C_CLS, NULL, 0);
	}
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
	free_list(drop);
	if (join) {
		kick(n);
		pthread_join(n->io, NULL);
		pthread_mutex_lock(&n->mu);
		n->joined = true;
		pthread_mutex_unlock(&n->mu);
	}
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

/* ---- the handshake ----------------------------------------------------- */

/* Wait for @events on the socket until @until (real time). */
static int
hs_poll(int fd, short events, int64_t until)
{
	struct pollfd p = { .fd = fd, .events = events };
	int64_t left;
	int r;

	for (;;) {
		left = until - sl_mono_ns();
		if (left <= 0)
			return SLUICE_ETIMEDOUT;
		r = poll(&p, 1, (int)(left / SLUICE_NS_PER_MS) + 1);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

static int
hs_send(int fd, const uint8_t *p, size_t len, int64_t until)
{
	while (len) {
		ssize_t r = send(fd, p, len, MSG_NOSIGNAL);
		int rc;

		if (r >= 0) {
			p += r;
			len -= (size_t)r;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		rc = hs_poll(fd, POLLOUT, until);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/*
 * The next frame other than a heartbeat (each answered with NOP), as a view
 * into n->rbuf; *@used is what to drop with hs_consume() afterwards.
 */
static int
hs_frame(struct sluice_nsq *n, int64_t until, struct sl_nsq_frame *f,
	 size_t *used)
{
	for (;;) {
		ssize_t k =
			sl_nsq_frame(n->rbuf.p, n->rbuf.len, n->max_frame, f);
		ssize_t r;
		int rc;

		if (k < 0)
			return (int)k;
		if (k > 0 && f->type == SL_NSQ_FRAME_RESPONSE &&
		    sl_nsq_response_kind(f->data, f->len) ==
			    SL_NSQ_RESP_HEARTBEAT) {
			uint8_t nop[8];
			ssize_t m = sl_nsq_enc_nop(nop, sizeof(nop));

			memmove(n->rbuf.p, n->rbuf.p + k,
				n->rbuf.len - (size_t)k);
			n->rbuf.len -= (size_t)k;
			rc = m > 0 ? hs_send(n->fd, nop, (size_t)m, until)
				   : (int)m;
			if (rc < 0)
				return rc;
			continue;
		}
		if (k > 0) {
			*used = (size_t)k;
			return 0;
		}
		if (buf_reserve(&n->rbuf, 4096) < 0)
			return SLUICE_ENOMEM;
		r = read(n->fd, n->rbuf.p + n->rbuf.len,
			 n->rbuf.cap - n->rbuf.len);
		if (r > 0) {
			n->rbuf.len += (size_t)r;
			continue;
		}
		if (r == 0)
			return SLUICE_EIO;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		rc = hs_poll(n->fd, POLLIN, until);
		if (rc < 0)
			return rc;
	}
}

static void
hs_consume(struct sluice_nsq *n, size_t used)
{
	memmove(n->rbuf.p, n->rbuf.p + used, n->rbuf.len - used);
	n->rbuf.len -= used;
}

static int
hs_connect(struct sluice_nsq *n, const char *host, uint16_t port, int64_t until,
	   char *err, size_t errsize)
{
	struct addrinfo hints = { 0 }, *ai = NULL, *a;
	char ports[8];
	int rc, one = 1;

	snprintf(ports, sizeof(ports), "%u", (unsigned)port);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(host, ports, &hints, &ai);
	if (rc != 0) {
		seterr(err, errsize, "cannot resolve %s: %s", host,
		       gai_strerror(rc));
		return SLUICE_ENOENT;
	}
	rc = SLUICE_ENOENT;
	for (a = ai; a; a = a->ai_next) {
		int fd = socket(a->ai_family,
				SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int soerr = 0;
		socklen_t sl = sizeof(soerr);

		if (fd < 0) {
			rc = -errno;
			continue;
		}
		if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
			if (errno != EINPROGRESS) {
				rc = -errno;
				close(fd);
				continue;
			}
			rc = hs_poll(fd, POLLOUT, until);
			if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR,
						  &soerr, &sl) < 0)
				rc = -errno;
			else if (rc == 0 && soerr)
				rc = -soerr;
			if (rc < 0) {
				close(fd);
				continue;
			}
		}
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
				 sizeof(one));
		n->fd = fd;
		rc = 0;
		break;
	}
	freeaddrinfo(ai);
	if (rc < 0)
		seterr(err, errsize, "cannot connect to %s:%u: %s", host,
		       (unsigned)port, sluice_strerror(rc));
	return rc;
}

/* Describe an unexpected reply frame in @err. */
static int
hs_refused(const struct sl_nsq_frame *f, const char *what, char *err,
	   size_t errsize)
{
	int len = f->len > 200 ? 200 : (int)f->len;

	seterr(err, errsize, "%s refused: %.*s", what, len,
	       (const char *)f->data);
	return SLUICE_EPROTO;
}

static int64_t
json_int_or(json_t *o, const char *key, int64_t dflt)
{
	json_t *v = json_object_get(o, key);

	return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static int
hs_identify(struct sluice_nsq *n, const struct sluice_nsq_config *cfg,
	    int64_t until, char *err, size_t errsize)
{
	uint8_t buf[1024];
	char js[768], host[256];
	struct sl_nsq_frame f;
	json_error_t je;
	json_t *o;
	size_t jlen, used = 0;
	ssize_t m, k;
	int rc;

	if (gethostname(host, sizeof(host)) < 0)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	o = json_pack("{s:s, s:s, s:s, s:b}", "client_id",
		      cfg->client_id ? cfg->client_id : DEFAULT_CLIENT,
		      "hostname", host, "user_agent",
		      "sluice/" SLUICE_VERSION_STRING, "feature_negotiation",
		      1);
	if (!o)
		return SLUICE_ENOMEM;
	if (cfg->heartbeat_ms)
		json_object_set_new(o, "heartbeat_interval",
				    json_integer(cfg->heartbeat_ms));
	if (cfg->msg_timeout_ms)
		json_object_set_new(o, "msg_timeout",
				    json_integer(cfg->msg_timeout_ms));
	jlen = json_dumpb(o, js, sizeof(js), JSON_COMPACT);
	json_decref(o);
	if (jlen == 0 || jlen > sizeof(js)) {
		seterr(err, errsize, "IDENTIFY body too long");
		return SLUICE_EINVAL;
	}
	m = sl_nsq_enc_magic(buf, sizeof(buf));
	if (m < 0 || (size_t)m > sizeof(buf))
		return SLUICE_EINVAL;
	k = sl_nsq_enc_identify(buf + m, sizeof(buf) - (size_t)m, js, jlen);
	if (k < 0 || (size_t)k > sizeof(buf) - (size_t)m)
		return SLUICE_EINVAL;
	m += k;
	rc = hs_send(n->fd, buf, (size_t)m, until);
	if (rc == 0)
		rc = hs_frame(n, until, &f, &used);
	if (rc < 0) {
		seterr(err, errsize, "IDENTIFY: %s", sluice_strerror(rc));
		return rc;
	}
	if (f.type != SL_NSQ_FRAME_RESPONSE)
		return hs_refused(&f, "IDENTIFY", err, errsize);
	n->max_rdy = DEFAULT_MAX_RDY;
	n->st.msg_timeout_ms =
		cfg->msg_timeout_ms ? cfg->msg_timeout_ms : 60000u;
	if (sl_nsq_response_kind(f.data, f.len) == SL_NSQ_RESP_JSON) {
		int64_t v;

		o = json_loadb((const char *)f.data, f.len, 0, &je);
		if (!json_is_object(o)) {
			json_decref(o);
			return hs_refused(&f, "IDENTIFY (unreadable reply)",
					  err, errsize);
		}
		if (json_is_true(json_object_get(o, "tls_v1")) ||
		    json_is_true(json_object_get(o, "snappy")) ||
		    json_is_true(json_object_get(o, "deflate")) ||
		    json_is_true(json_object_get(o, "auth_required"))) {
			json_decref(o);
			seterr(err, errsize,
			       "nsqd wants TLS, compression or AUTH, which "
			       "this source does not support yet");
			return SLUICE_EPROTO;
		}
		v = json_int_or(o, "max_rdy_count", DEFAULT_MAX_RDY);
		if (v > 0 && v <= UINT32_MAX)
			n->max_rdy = (uint32_t)v;
		v = json_int_or(o, "msg_timeout", n->st.msg_timeout_ms);
		if (v > 0 && v <= UINT32_MAX)
			n->st.msg_timeout_ms = (uint32_t)v;
		/* nsqd does not echo it; take it if a server does. */
		v = json_int_or(o, "heartbeat_interval", 0);
		if (v > 0 && v <= UINT32_MAX)
			n->st.heartbeat_ms = (uint32_t)v;
		json_decref(o);
	} else if (sl_nsq_response_kind(f.data, f.len) != SL_NSQ_RESP_OK) {
		return hs_refused(&f, "IDENTIFY", err, errsize);
	}
	hs_consume(n, used);
	return 0;
}

static int
hs_sub(struct sluice_nsq *n, const struct sluice_nsq_config *cfg, int64_t until,
       char *err, size_t errsize)
{
	uint8_t buf[2 * SL_NSQ_NAME_MAX + 16];
	struct sl_nsq_frame f;
	ssize_t m = sl_nsq_enc_sub(buf, sizeof(buf), cfg->topic, cfg->channel);
	size_t used = 0;
	int rc;

	if (m < 0 || (size_t)m > sizeof(buf))
		return SLUICE_EINVAL;
	rc = hs_send(n->fd, buf, (size_t)m, until);
	if (rc == 0)
		rc = hs_frame(n, until, &f, &used);
	if (rc < 0) {
		seterr(err, errsize, "SUB: %s", sluice_strerror(rc));
		return rc;
	}
	if (f.type != SL_NSQ_FRAME_RESPONSE ||
	    sl_nsq_response_kind(f.data, f.len) != SL_NSQ_RESP_OK)
		return hs_refused(&f, "SUB", err, errsize);
	hs_consume(n, used);
	return 0;
}

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
	};
}

static void
nsq_destroy(struct sluice_nsq *n)
{
	if (n->fd >= 0)
		close(n->fd);
	if (n->evfd >= 0)
		close(n->evfd);
	free_list(n->head);
	sl_free(n->rbuf.p);
	sl_free(n->wbuf.p);
	sl_free(n->out.p);
	pthread_cond_destroy(&n->cv);
	pthread_mutex_destroy(&n->mu);
	pthread_mutex_destroy(&n->close_mu);
	sl_free(n);
}

int
sluice_nsq_open(const struct sluice_nsq_config *cfg, char *err, size_t errsize,
		struct sluice_nsq **out)
{
	struct sluice_nsq *n;
	int64_t until;
	int rc;

	seterr(err, errsize, "%s", "");
	if (!cfg || !out || !cfg->topic || !cfg->channel ||
	    !sl_nsq_name_is_valid(cfg->topic, strlen(cfg->topic)) ||
	    !sl_nsq_name_is_valid(cfg->channel, strlen(cfg->channel)) ||
	    cfg->max_body == 0 || cfg->max_body > INT32_MAX - 64 ||
	    cfg->heartbeat_ms > INT32_MAX / 4 || cfg->timeout_ns <= 0) {
		seterr(err, errsize, "invalid NSQ configuration");
		return SLUICE_EINVAL;
	}
	n = sl_calloc(1, sizeof(*n));
	if (!n)
		return SLUICE_ENOMEM;
	n->fd = -1;
	n->evfd = -1;
	n->clock = cfg->clock ? cfg->clock : sluice_clock_monotonic();
	n->max_frame = SL_NSQ_FRAME_SIZE_FOR(cfg->max_body);
	n->timeout_ns = cfg->timeout_ns;
	n->st.heartbeat_ms =
		cfg->heartbeat_ms ? cfg->heartbeat_ms : DEFAULT_HB_MS;
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
	if (rc) {
		pthread_mutex_destroy(&n->close_mu);
		pthread_mutex_destroy(&n->mu);
		sl_free(n);
		return rc;
	}
	until = sl_mono_ns() + cfg->timeout_ns;
	rc = hs_connect(n, cfg->host ? cfg->host : DEFAULT_HOST,
			cfg->port ? cfg->port : (uint16_t)DEFAULT_PORT, until,
			err, errsize);
	if (rc == 0)
		rc = hs_identify(n, cfg, until, err, errsize);
	if (rc == 0)
		rc = hs_sub(n, cfg, until, err, errsize);
	if (rc == 0) {
		n->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (n->evfd < 0)
			rc = -errno;
	}
	if (rc < 0) {
		nsq_destroy(n);
		return rc;
	}
	n->hb_ns = (int64_t)n->st.heartbeat_ms * SLUICE_NS_PER_MS;
	n->st.max_rdy_count = n->max_rdy;
	n->st.connected = true;
	n->gen = 1;
	sl_clock_watch_add(n->clock, &n->watch, &n->mu, &n->cv);
	rc = pthread_create(&n->io, NULL, io_main, n);
	if (rc) {
		seterr(err, errsize, "cannot start the I/O thread");
		sl_clock_watch_del(n->clock, &n->watch);
		nsq_destroy(n);
		return -rc;
	}
	n->io_started = true;
	*out = n;
	return 0;
}

struct sluice_source
sluice_nsq_source(struct sluice_nsq *n)
{
	return (struct sluice_source){ .ops = &nsq_ops, .self = n };
}

void
sluice_nsq_stats(struct sluice_nsq *n, struct sluice_nsq_stats *out)
{
	pthread_mutex_lock(&n->mu);
	*out = n->st;
	pthread_mutex_unlock(&n->mu);
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
