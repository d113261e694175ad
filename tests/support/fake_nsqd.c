/* SPDX-License-Identifier: MIT */
/*
 * fake_nsqd.c - a stand-in for nsqd (TCP protocol V2) for the tests and
 * benchmarks of the NSQ consumer: nsqd is not packaged in Debian.
 *
 * It follows docs/nsq-protocol.md (shared docs; section numbers below point
 * there) for: the magic, IDENTIFY (JSON reply in nsqd's key order, or "OK"
 * without feature_negotiation), the upgrades of section 6.1 (TLS, then
 * snappy framing or raw DEFLATE, each followed by an "OK" through the new
 * layer; what was buffered behind IDENTIFY is dropped, as nsqd does),
 * AUTH against a fixed secret (E_AUTH_FIRST / E_AUTH_FAILED / ...),
 * SUB (one topic/channel per connection, RDY 0 after it), RDY (a cap on
 * in flight, never decremented), FIN/REQ/TOUCH (non-fatal E_*_FAILED for
 * ids not in flight or not owned), CLS (CLOSE_WAIT, connection stays open),
 * NOP, PUB/MPUB/DPUB into in-memory topics, heartbeats on a fixed ticker
 * restarted by IDENTIFY, the read deadline of 2 x heartbeat_interval since
 * the last command line, msg_timeout expiry with redelivery (attempts + 1),
 * REQ delays clamped to max_req_timeout, and the exact error texts the
 * reference captured.  Every other error is fatal: frame, then close.
 * In-flight messages of a closed connection stay in flight until their
 * timeout (section 5.7).  Not done: sample_rate, output buffering delays
 * (frames go out at the end of each loop turn), the 5 s TLS handshake
 * limit, client certificate policies, TLS 1.0/1.1.
 *
 * Usage: fake_nsqd [PORT] [--flag VALUE]...   (PORT 0 or absent: ephemeral)
 * Prints "listening on PORT\n" on stdout once it accepts connections.
 *   --max-rdy-count N        (2500)     --max-msg-size N      (1048576)
 *   --msg-timeout MS         (60000)    --max-msg-timeout MS  (900000)
 *   --heartbeat-interval MS  (30000)    --max-req-timeout MS  (3600000)
 *   --min-interval MS        (1000) the lower bound IDENTIFY accepts for
 *                            heartbeat_interval and msg_timeout; tests
 *                            lower it to keep real time short
 *   --drop-after N           close a connection once N messages went out
 *   --stall-after N          stop writing to it once N messages went out
 *   --malformed-after N      after N messages send one frame of type 7
 *                            (00 00 00 06 00 00 00 07 4F 4B)
 *   --oversized-after N      after N messages send one message frame whose
 *                            size is SL_NSQ_FRAME_SIZE_FOR(max-msg-size) + 1
 *   (N counts messages written on that connection; N = 0 acts right after
 *   the OK for SUB.)
 *   --tls-cert FILE --tls-key FILE   PEM certificate chain and key: grant
 *                            tls_v1 to clients that ask (nsqd: same flags)
 *   --tls-required           every command but IDENTIFY needs TLS first
 *   --deflate / --snappy     grant that compression when asked (nsqd has
 *                            both on by default; here they are off unless
 *                            given, so a test states what it expects)
 *   --max-deflate-level N    (6) clamps the level asked for
 *   --auth-secret SECRET     require AUTH (auth_required:true); the secret
 *                            is checked here instead of asking an HTTP auth
 *                            server: equal -> identity "fake_nsqd" with one
 *                            permission, anything else -> E_AUTH_FAILED
 *
 * Control protocol on stdin, one command a line, each answered with "ok\n"
 * (or "error\n") on stdout once done, so a test can wait for it:
 *   pub TOPIC BODY   publish BODY (rest of the line) to TOPIC
 *   drop | stall | resume | malformed | oversized
 *                    act on every connection now (resume ends a stall)
 *   quit             exit 0
 * EOF on stdin also exits, so a dying parent leaves no orphan; give
 * --no-stdin to run detached (e.g. from a benchmark script).
 *
 * Single-threaded epoll loop; no locking.  Each loop turn reads, runs
 * commands, delivers what RDY allows, fires expired timers, then flushes
 * every connection's output buffer once (so deliveries are batched).
 *
 * Layers per connection: `out` holds plaintext frames; seal() encodes them
 * (deflate with a sync flush, or snappy chunks) into `wout`, which goes to
 * the socket through TLS (OpenSSL, non-blocking) or send().  Input comes
 * from SSL_read()/recv(); with compression it goes through `win` and the
 * decoder into `in`, where the command parser reads it.  A layer switch
 * seals what was queued under the old layers first, so the IDENTIFY reply
 * leaves in plaintext and each "OK" under the layer it announces.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#define ZLIB_CONST
#include <zlib.h>

#include "proto/nsq.h"
#include "proto/nsq_snappy.h"
#include "util/alloc.h"

#define LINE_MAX_LEN 16384u

struct opts {
	int64_t max_rdy, max_msg_size, max_body_size;
	int64_t msg_timeout, max_msg_timeout, hb_interval, max_req_timeout;
	int64_t min_interval, max_hb_interval;
	int64_t drop_after, stall_after, malformed_after, oversized_after;
	int64_t max_deflate_level;
	bool use_stdin;
	const char *tls_cert, *tls_key, *auth_secret;
	bool tls_required, deflate, snappy;
};

static struct opts opt = {
	.max_rdy = 2500,
	.max_msg_size = 1048576,
	.max_body_size = 5242880,
	.msg_timeout = 60000,
	.max_msg_timeout = 900000,
	.hb_interval = 30000,
	.max_req_timeout = 3600000,
	.min_interval = 1000,
	.max_hb_interval = 60000,
	.drop_after = -1,
	.stall_after = -1,
	.malformed_after = -1,
	.oversized_after = -1,
	.max_deflate_level = 6,
	.use_stdin = true,
};

struct conn;

/* One channel's copy of a message. */
struct msg {
	struct msg *next; /* queue / deferred / in-flight list link */
	char id[SL_NSQ_ID_LEN];
	int64_t ts_ns;
	uint16_t attempts;  /* deliveries so far */
	int64_t due_ms;     /* deferred: ready time; in flight: deadline */
	int64_t first_ms;   /* first delivery of this in-flight period */
	struct conn *owner; /* in flight: delivering connection or NULL */
	uint8_t *body;
	size_t len;
};

struct channel {
	struct channel *next;
	char name[SL_NSQ_NAME_MAX + 1];
	struct msg *qhead, *qtail; /* ready to deliver, FIFO */
	struct msg *deferred;      /* unsorted */
	struct msg *inflight;      /* unsorted */
	size_t rr;                 /* round-robin start among consumers */
};

struct topic {
	struct topic *next;
	char name[SL_NSQ_NAME_MAX + 1];
	struct channel *channels;
	struct msg *backlog; /* kept until the first channel exists */
	struct msg *backlog_tail;
};

enum cstate { ST_MAGIC, ST_INIT, ST_SUB, ST_CLOSING };

/* TLS of a connection: off, IDENTIFY reply still going out in plaintext,
 * handshaking, on. */
enum tstate { TLS_OFF, TLS_REPLY, TLS_HANDSHAKE, TLS_ON };
enum comp { COMP_NONE, COMP_DEFLATE, COMP_SNAPPY };

struct bytes {
	uint8_t *p;
	size_t off, len, cap; /* [off, len) is live */
};

struct conn {
	struct conn *next;
	int fd;
	enum cstate state;
	uint8_t *in;
	size_t in_len, in_cap;
	struct bytes out;  /* plaintext frames */
	struct bytes wout; /* encoded, to the socket */
	struct bytes win;  /* compressed bytes read, not decoded yet */
	enum tstate tls;
	SSL *ssl;
	bool tls_want_write;       /* the TLS layer waits for EPOLLOUT */
	enum comp comp, comp_next; /* on; to switch on after TLS */
	int level;                 /* our deflate level */
	z_stream zin, zout;
	struct sl_snappy_dec sdec;
	bool sid_sent;
	bool discard_in; /* drop what was read behind the upgrading IDENTIFY */
	bool authed;
	bool dead;     /* close once the output is flushed */
	bool stalled;  /* write nothing */
	bool want_out; /* EPOLLOUT registered */
	int64_t rdy, in_flight, sent;
	int64_t msg_timeout, hb_interval;
	int64_t next_hb_ms, last_cmd_ms;
	struct topic *topic;
	struct channel *chan;
};

static struct topic *topics;
static struct conn *conns;
static int epfd;
static SSL_CTX *tls_ctx;
static uint64_t next_id = 1;

static const uint8_t frame_ok[] = { 0, 0, 0, 6, 0, 0, 0, 0, 'O', 'K' };
static const uint8_t frame_hb[] = { 0,   0,   0,   15,  0,   0,   0,
				    0,   '_', 'h', 'e', 'a', 'r', 't',
				    'b', 'e', 'a', 't', '_' };
static const uint8_t frame_cw[] = {
	0,   0,   0,   14,  0,   0,   0,   0,   'C',
	'L', 'O', 'S', 'E', '_', 'W', 'A', 'I', 'T'
};
static const uint8_t frame_bad[] = { 0, 0, 0, 6, 0, 0, 0, 7, 'O', 'K' };

static void *
xalloc(size_t n)
{
	void *p = sl_malloc(n ? n : 1);

	if (!p) {
		perror("fake_nsqd: out of memory");
		exit(2);
	}
	return p;
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- output ------------------------------------------------------------ */

static void
bput(struct bytes *b, const void *p, size_t n)
{
	if (b->off && b->off == b->len)
		b->off = b->len = 0;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;

		while (cap < b->len + n)
			cap *= 2;
		b->p = sl_realloc(b->p, cap);
		if (!b->p) {
			perror("fake_nsqd: out of memory");
			exit(2);
		}
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static size_t
blive(const struct bytes *b)
{
	return b->len - b->off;
}

static void
out_put(struct conn *c, const void *p, size_t n)
{
	bput(&c->out, p, n);
}

/* Forget everything not yet sent (the connection closes without it). */
static void
out_drop(struct conn *c)
{
	c->out.off = c->out.len = 0;
	c->wout.off = c->wout.len = 0;
}

static void
out_frame(struct conn *c, uint32_t type, const void *data, size_t len)
{
	uint8_t h[8];

	sl_nsq_put_be32(h, (uint32_t)(len + 4));
	sl_nsq_put_be32(h + 4, type);
	out_put(c, h, 8);
	out_put(c, data, len);
}

static void out_error(struct conn *c, bool fatal, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* "CODE description" as an error frame; a fatal one ends the connection. */
static void
out_error(struct conn *c, bool fatal, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(buf))
		n = (int)sizeof(buf) - 1;
	out_frame(c, 1, buf, (size_t)n);
	if (fatal)
		c->dead = true;
}

static void
want_out(struct conn *c, bool on)
{
	struct epoll_event ev = { 0 };

	if (c->want_out == on)
		return;
	c->want_out = on;
	ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
	ev.data.ptr = c;
	epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Encode the queued plaintext under the current layers into wout. */
static void
seal(struct conn *c)
{
	size_t off = c->out.off, n;

	if (!blive(&c->out))
		return;
	if (c->comp == COMP_NONE) {
		bput(&c->wout, c->out.p + off, blive(&c->out));
	} else if (c->comp == COMP_SNAPPY) {
		if (!c->sid_sent) {
			bput(&c->wout, SL_SNAPPY_STREAM_ID,
			     SL_SNAPPY_STREAM_ID_LEN);
			c->sid_sent = true;
		}
		for (; off < c->out.len; off += n) {
			uint8_t chunk[SL_SNAPPY_HDR + 4 + 80000];
			ssize_t k;

			n = c->out.len - off;
			if (n > SL_SNAPPY_BLOCK_MAX)
				n = SL_SNAPPY_BLOCK_MAX;
			k = sl_snappy_enc_chunk(c->out.p + off, n, chunk,
						sizeof(chunk));
			if (k < 0) {
				fputs("fake_nsqd: snappy encode\n", stderr);
				exit(2);
			}
			bput(&c->wout, chunk, (size_t)k);
		}
	} else {
		/* Zeroed only to tell cppcheck deflate() writes it. */
		uint8_t buf[16384] = { 0 };

		c->zout.next_in = c->out.p + off;
		c->zout.avail_in = (uInt)blive(&c->out);
		do {
			c->zout.next_out = buf;
			c->zout.avail_out = sizeof(buf);
			deflate(&c->zout, Z_SYNC_FLUSH);
			bput(&c->wout, buf, sizeof(buf) - c->zout.avail_out);
		} while (c->zout.avail_out == 0 || c->zout.avail_in);
	}
	c->out.off = c->out.len = 0;
}

static void
comp_on(struct conn *c, enum comp comp)
{
	c->comp = comp;
	if (comp == COMP_DEFLATE) {
		if (inflateInit2(&c->zin, -15) != Z_OK ||
		    deflateInit2(&c->zout, c->level, Z_DEFLATED, -15, 8,
				 Z_DEFAULT_STRATEGY) != Z_OK) {
			fputs("fake_nsqd: zlib init\n", stderr);
			exit(2);
		}
	}
	sl_snappy_dec_init(&c->sdec);
	/* nsqd answers the switch with "OK" under the new layer. */
	out_put(c, frame_ok, sizeof(frame_ok));
}

/* Drive the TLS handshake; false when it failed (close, no frame). */
static bool
tls_step(struct conn *c)
{
	int r;

	if (c->tls == TLS_REPLY && blive(&c->wout) == 0) {
		c->ssl = SSL_new(tls_ctx);
		if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
			return false;
		SSL_set_mode(c->ssl,
			     SSL_MODE_ENABLE_PARTIAL_WRITE |
				     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
		SSL_set_accept_state(c->ssl);
		c->tls = TLS_HANDSHAKE;
	}
	if (c->tls != TLS_HANDSHAKE)
		return true;
	c->tls_want_write = false;
	ERR_clear_error();
	r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		/* "OK" goes before anything (heartbeats) queued meanwhile. */
		struct bytes held = c->out;

		memset(&c->out, 0, sizeof(c->out));
		c->tls = TLS_ON;
		out_put(c, frame_ok, sizeof(frame_ok));
		if (c->comp_next != COMP_NONE) {
			seal(c);
			comp_on(c, c->comp_next);
		}
		out_put(c, held.p ? held.p + held.off : NULL, blive(&held));
		sl_free(held.p);
		return true;
	}
	switch (SSL_get_error(c->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		return true;
	case SSL_ERROR_WANT_WRITE:
		c->tls_want_write = true;
		return true;
	default:
		ERR_clear_error();
		return false;
	}
}

/* Write what is buffered; returns false when the connection must close. */
static bool
flush(struct conn *c)
{
	/* During the TLS switch only the IDENTIFY reply (sealed already)
	 * may go out. */
	if (!c->stalled && (c->tls == TLS_OFF || c->tls == TLS_ON))
		seal(c);
	while (!c->stalled && blive(&c->wout)) {
		ssize_t n;

		if (c->tls == TLS_HANDSHAKE)
			break; /* nothing of ours until it is done */
		if (c->tls == TLS_ON) {
			int r;

			ERR_clear_error();
			r = SSL_write(c->ssl, c->wout.p + c->wout.off,
				      (int)blive(&c->wout));
			if (r > 0) {
				c->wout.off += (size_t)r;
				continue;
			}
			r = SSL_get_error(c->ssl, r);
			if (r == SSL_ERROR_WANT_WRITE ||
			    r == SSL_ERROR_WANT_READ) {
				c->tls_want_write = r == SSL_ERROR_WANT_WRITE;
				break;
			}
			return false;
		}
		n = send(c->fd, c->wout.p + c->wout.off, blive(&c->wout),
			 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) /* == EWOULDBLOCK on Linux */
				break;
			return false;
		}
		c->wout.off += (size_t)n;
	}
	if (!c->stalled) {
		bool was_on = c->tls == TLS_ON;

		if (!tls_step(c))
			return false;
		/* The handshake may finish right here (even in the call that
		 * starts it, from TLS_REPLY): its "OK" is queued now and must
		 * go out now, or nothing wakes this connection again. */
		if (!was_on && c->tls == TLS_ON)
			return flush(c);
	}
	want_out(c, (blive(&c->wout) > 0 && !c->stalled) || c->tls_want_write);
	if (c->dead && c->stalled)
		return false;
	return !(c->dead && blive(&c->out) == 0 && blive(&c->wout) == 0);
}

/* ---- topics, channels, messages ---------------------------------------- */

static struct topic *
topic_get(const char *name)
{
	struct topic *t;

	for (t = topics; t; t = t->next)
		if (strcmp(t->name, name) == 0)
			return t;
	t = xalloc(sizeof(*t));
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->next = topics;
	topics = t;
	return t;
}

static void
enqueue(struct channel *ch, struct msg *m)
{
	m->next = NULL;
	if (ch->qtail)
		ch->qtail->next = m;
	else
		ch->qhead = m;
	ch->qtail = m;
}

static struct msg *
msg_new(const char *id, int64_t ts, const void *body, size_t len)
{
	struct msg *m = xalloc(sizeof(*m));

	memset(m, 0, sizeof(*m));
	memcpy(m->id, id, SL_NSQ_ID_LEN);
	m->ts_ns = ts;
	m->body = xalloc(len);
	memcpy(m->body, body, len);
	m->len = len;
	return m;
}

static void
msg_free(struct msg *m)
{
	sl_free(m->body);
	sl_free(m);
}

static struct channel *
channel_get(struct topic *t, const char *name)
{
	struct channel *ch;
	struct msg *m;

	for (ch = t->channels; ch; ch = ch->next)
		if (strcmp(ch->name, name) == 0)
			return ch;
	ch = xalloc(sizeof(*ch));
	memset(ch, 0, sizeof(*ch));
	snprintf(ch->name, sizeof(ch->name), "%s", name);
	ch->next = t->channels;
	t->channels = ch;
	/* The first channel takes the topic's backlog (section 5.8). */
	while ((m = t->backlog)) {
		t->backlog = m->next;
		enqueue(ch, m);
	}
	t->backlog_tail = NULL;
	return ch;
}

/* A copy per channel; deferred when @defer_ms > 0. */
static void
publish(struct topic *t, const void *body, size_t len, int64_t defer_ms)
{
	char id[SL_NSQ_ID_LEN + 1];
	struct timespec ts;
	struct channel *ch;
	struct msg *m;
	int64_t tns;

	clock_gettime(CLOCK_REALTIME, &ts);
	tns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
	snprintf(id, sizeof(id), "%016" PRIx64, next_id++);
	if (!t->channels) {
		m = msg_new(id, tns, body, len);
		m->next = NULL;
		if (t->backlog_tail)
			t->backlog_tail->next = m;
		else
			t->backlog = m;
		t->backlog_tail = m;
		return;
	}
	for (ch = t->channels; ch; ch = ch->next) {
		m = msg_new(id, tns, body, len);
		if (defer_ms > 0) {
			/* + 1: now_ms() truncates, so a message deferred at
			 * x.9 ms must not come out 0.9 ms early. */
			m->due_ms = now_ms() + defer_ms + 1;
			m->next = ch->deferred;
			ch->deferred = m;
		} else {
			enqueue(ch, m);
		}
	}
}

static void
send_msg(struct conn *c, struct msg *m)
{
	uint8_t h[8 + SL_NSQ_MSG_HDR];
	uint64_t ts = (uint64_t)m->ts_ns;
	int i;

	m->attempts++;
	sl_nsq_put_be32(h, (uint32_t)(4 + SL_NSQ_MSG_HDR + m->len));
	sl_nsq_put_be32(h + 4, 2);
	for (i = 0; i < 8; i++)
		h[8 + i] = (uint8_t)(ts >> (56 - 8 * i));
	h[16] = (uint8_t)(m->attempts >> 8);
	h[17] = (uint8_t)m->attempts;
	memcpy(h + 18, m->id, SL_NSQ_ID_LEN);
	out_put(c, h, sizeof(h));
	out_put(c, m->body, m->len);
}

/* ---- faults ------------------------------------------------------------ */

static void
fault_oversized(struct conn *c)
{
	size_t body = (size_t)opt.max_msg_size + 1;
	uint8_t *buf = xalloc(8 + SL_NSQ_MSG_HDR + body);

	memset(buf, 'x', 8 + SL_NSQ_MSG_HDR + body);
	sl_nsq_put_be32(buf,
			(uint32_t)SL_NSQ_FRAME_SIZE_FOR(opt.max_msg_size) + 1);
	sl_nsq_put_be32(buf + 4, 2);
	memset(buf + 8, 0, 10);
	out_put(c, buf, 8 + SL_NSQ_MSG_HDR + body);
	sl_free(buf);
}

static void
faults_after(struct conn *c)
{
	if (c->sent == opt.malformed_after)
		out_put(c, frame_bad, sizeof(frame_bad));
	if (c->sent == opt.oversized_after)
		fault_oversized(c);
	if (c->sent == opt.stall_after)
		c->stalled = true;
	if (c->sent == opt.drop_after)
		c->dead = true; /* the N messages still go out first */
}

/* ---- delivery and timers ----------------------------------------------- */

static bool
ready(const struct conn *c)
{
	return c->state == ST_SUB && !c->dead && !c->stalled &&
	       c->in_flight < c->rdy;
}

static void
deliver(struct channel *ch)
{
	size_t n = 0, i, k;
	struct conn *c, *pick;
	struct msg *m;

	for (c = conns; c; c = c->next)
		if (c->chan == ch)
			n++;
	while (ch->qhead && n) {
		pick = NULL;
		for (k = 0; k < n && !pick; k++) {
			i = 0;
			for (c = conns; c; c = c->next) {
				if (c->chan != ch)
					continue;
				if (i++ == (ch->rr + k) % n && ready(c))
					pick = c;
			}
		}
		if (!pick)
			return;
		ch->rr++;
		m = ch->qhead;
		ch->qhead = m->next;
		if (!ch->qhead)
			ch->qtail = NULL;
		m->owner = pick;
		m->first_ms = now_ms();
		m->due_ms = m->first_ms + pick->msg_timeout;
		m->next = ch->inflight;
		ch->inflight = m;
		pick->in_flight++;
		send_msg(pick, m);
		pick->sent++;
		faults_after(pick);
	}
}

/* Fire what is due at @now; returns the next due time or INT64_MAX. */
static int64_t
timers(int64_t now)
{
	int64_t next = INT64_MAX;
	struct topic *t;
	struct channel *ch;
	struct conn *c;
	struct msg **pp, *m;

	for (c = conns; c; c = c->next) {
		if (c->dead || c->hb_interval <= 0 || c->state == ST_MAGIC)
			continue;
		if (now - c->last_cmd_ms >= 2 * c->hb_interval) {
			/* Read deadline missed: close, no error frame. */
			c->dead = true;
			out_drop(c);
			continue;
		}
		if (now >= c->next_hb_ms) {
			out_put(c, frame_hb, sizeof(frame_hb));
			c->next_hb_ms = now + c->hb_interval;
		}
		if (c->next_hb_ms < next)
			next = c->next_hb_ms;
		if (c->last_cmd_ms + 2 * c->hb_interval < next)
			next = c->last_cmd_ms + 2 * c->hb_interval;
	}
	for (t = topics; t; t = t->next) {
		for (ch = t->channels; ch; ch = ch->next) {
			for (pp = &ch->inflight; (m = *pp);) {
				if (m->due_ms > now) {
					if (m->due_ms < next)
						next = m->due_ms;
					pp = &m->next;
					continue;
				}
				*pp = m->next;
				if (m->owner)
					m->owner->in_flight--;
				m->owner = NULL;
				enqueue(ch, m);
			}
			for (pp = &ch->deferred; (m = *pp);) {
				if (m->due_ms > now) {
					if (m->due_ms < next)
						next = m->due_ms;
					pp = &m->next;
					continue;
				}
				*pp = m->next;
				enqueue(ch, m);
			}
		}
	}
	return next;
}

/* ---- commands ---------------------------------------------------------- */

/* Look up "key": in a flat JSON object; returns the value's first byte. */
static const char *
json_find(const char *js, const char *key)
{
	char pat[80];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\"", key);
	p = strstr(js, pat);
	if (!p)
		return NULL;
	p += strlen(pat);
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	if (*p != ':')
		return NULL;
	p++;
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/* 0 absent, 1 found, -1 wrong type (E_BAD_BODY failed to decode). */
static int
json_int(const char *js, const char *key, int64_t *out)
{
	const char *p = json_find(js, key);
	char *end;

	if (!p)
		return 0;
	errno = 0;
	*out = strtoll(p, &end, 10);
	if (end == p || errno || *end == '.' || *end == 'e' || *end == 'E')
		return -1;
	return 1;
}

static int
json_bool(const char *js, const char *key, bool *out)
{
	const char *p = json_find(js, key);

	if (!p)
		return 0;
	if (strncmp(p, "true", 4) == 0)
		*out = true;
	else if (strncmp(p, "false", 5) == 0)
		*out = false;
	else
		return -1;
	return 1;
}

static void
cmd_identify(struct conn *c, const uint8_t *body, size_t len)
{
	bool fn = false, snappy = false, deflate = false, tls = false;
	int64_t hb = 0, mt = 0, dl = 0, obs = 0, obt = 0, sr = 0;
	char *js, reply[1024];
	size_t i;
	int bad = 0, n;

	if (c->state != ST_INIT) {
		out_error(c, true,
			  "E_INVALID cannot IDENTIFY in current state");
		return;
	}
	js = xalloc(len + 1);
	memcpy(js, body, len);
	js[len] = '\0';
	for (i = 0; i < len && (js[i] == ' ' || js[i] == '\n'); i++)
		;
	if (i == len || js[i] != '{' || strchr(js, '}') == NULL)
		bad = 1;
	if (json_bool(js, "feature_negotiation", &fn) < 0 ||
	    json_bool(js, "snappy", &snappy) < 0 ||
	    json_bool(js, "deflate", &deflate) < 0 ||
	    json_bool(js, "tls_v1", &tls) < 0 ||
	    json_int(js, "heartbeat_interval", &hb) < 0 ||
	    json_int(js, "msg_timeout", &mt) < 0 ||
	    json_int(js, "deflate_level", &dl) < 0 ||
	    json_int(js, "output_buffer_size", &obs) < 0 ||
	    json_int(js, "output_buffer_timeout", &obt) < 0 ||
	    json_int(js, "sample_rate", &sr) < 0)
		bad = 1;
	sl_free(js);
	if (bad) {
		out_error(c, true,
			  "E_BAD_BODY IDENTIFY failed to decode JSON "
			  "body");
		return;
	}
	if (hb == -1) {
		hb = -1;
	} else if (hb == 0) {
		hb = opt.hb_interval;
	} else if (hb < opt.min_interval || hb > opt.max_hb_interval) {
		out_error(c, true,
			  "E_BAD_BODY IDENTIFY heartbeat interval (%" PRId64
			  ") is invalid",
			  hb);
		return;
	}
	if (obt == -1)
		obt = 0;
	else if (obt == 0)
		obt = 250;
	else if (obt < 25 || obt > 30000) {
		out_error(c, true,
			  "E_BAD_BODY IDENTIFY output buffer timeout (%" PRId64
			  ") is invalid",
			  obt);
		return;
	}
	if (obs == -1)
		obs = 1;
	else if (obs == 0)
		obs = 16384;
	else if (obs < 64 || obs > 65536) {
		out_error(c, true,
			  "E_BAD_BODY IDENTIFY output buffer size (%" PRId64
			  ") is invalid",
			  obs);
		return;
	}
	if (sr < 0 || sr > 99) {
		out_error(c, true,
			  "E_BAD_BODY IDENTIFY sample rate (%" PRId64
			  ") is invalid",
			  sr);
		return;
	}
	if (mt == 0) {
		mt = opt.msg_timeout;
	} else if (mt < opt.min_interval || mt > opt.max_msg_timeout) {
		out_error(c, true,
			  "E_BAD_BODY IDENTIFY msg timeout (%" PRId64
			  ") is invalid",
			  mt);
		return;
	}
	/* What is granted: asked for and enabled here (section 2.1). */
	tls = fn && tls && tls_ctx;
	deflate = fn && deflate && opt.deflate;
	snappy = fn && snappy && opt.snappy;
	if (snappy && deflate) {
		out_error(c, true,
			  "E_IDENTIFY_FAILED cannot enable both "
			  "deflate and snappy compression");
		return;
	}
	/* The requested level counts only when deflate is granted; then
	 * both are clamped to the max (reported even with deflate off). */
	if (!deflate || dl <= 0)
		dl = 6;
	if (dl > opt.max_deflate_level)
		dl = opt.max_deflate_level;
	c->hb_interval = hb;
	c->msg_timeout = mt;
	c->next_hb_ms = now_ms() + hb; /* the ticker restarts (section 4) */
	if (!fn) {
		out_put(c, frame_ok, sizeof(frame_ok));
		return;
	}
	n = snprintf(reply, sizeof(reply),
		     "{\"max_rdy_count\":%" PRId64 ",\"version\":\"1.3.0\","
		     "\"max_msg_timeout\":%" PRId64 ",\"msg_timeout\":%" PRId64
		     ",\"tls_v1\":%s,\"deflate\":%s,\"deflate_level\":%" PRId64
		     ",\"max_deflate_level\":%" PRId64 ",\"snappy\":%s,"
		     "\"sample_rate\":%" PRId64 ",\"auth_required\":%s,"
		     "\"output_buffer_size\":%" PRId64
		     ",\"output_buffer_timeout\":%" PRId64
		     ",\"topology_region\":\"\",\"topology_zone\":\"\"}",
		     opt.max_rdy, opt.max_msg_timeout, mt,
		     tls ? "true" : "false", deflate ? "true" : "false", dl,
		     opt.max_deflate_level, snappy ? "true" : "false", sr,
		     opt.auth_secret ? "true" : "false", obs, obt);
	out_frame(c, 0, reply, (size_t)n);
	if (!tls && !deflate && !snappy)
		return;
	/* Section 6.1: the reply leaves in plaintext, then TLS, then the
	 * compressor; what nsqd had read behind IDENTIFY is lost. */
	seal(c);
	c->discard_in = true;
	c->level = (int)dl;
	if (tls) {
		c->tls = TLS_REPLY;
		c->comp_next = deflate  ? COMP_DEFLATE
			       : snappy ? COMP_SNAPPY
					: COMP_NONE;
	} else {
		comp_on(c, deflate ? COMP_DEFLATE : COMP_SNAPPY);
	}
}

static bool
parse_u64(const char *s, int64_t *out)
{
	int64_t v = 0;

	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > INT64_MAX / 16)
			return false;
		v = v * 10 + (*s - '0');
	}
	*out = v;
	return true;
}

static struct msg **
inflight_find(struct conn *c, const char *id, bool *not_owner)
{
	struct msg **pp;

	*not_owner = false;
	if (!c->chan)
		return NULL;
	for (pp = &c->chan->inflight; *pp; pp = &(*pp)->next) {
		if (memcmp((*pp)->id, id, SL_NSQ_ID_LEN) != 0)
			continue;
		if ((*pp)->owner != c) {
			*not_owner = true;
			return NULL;
		}
		return pp;
	}
	return NULL;
}

/* FIN, REQ, TOUCH: argv[1] is the id. */
static void
cmd_ack(struct conn *c, int argc, char **argv)
{
	const char *name = argv[0];
	bool not_owner;
	struct msg **pp, *m;
	int64_t delay = 0, now;

	if (c->state != ST_SUB && c->state != ST_CLOSING) {
		out_error(c, true, "E_INVALID cannot %s in current state",
			  name);
		return;
	}
	if (argc < (name[0] == 'R' ? 3 : 2)) {
		out_error(c, true, "E_INVALID %s insufficient number of params",
			  name);
		return;
	}
	if (strlen(argv[1]) != SL_NSQ_ID_LEN) {
		out_error(c, true, "E_INVALID invalid message ID");
		return;
	}
	if (name[0] == 'R' && !parse_u64(argv[2], &delay)) {
		out_error(c, true, "E_INVALID REQ could not parse timeout %s",
			  argv[2]);
		return;
	}
	pp = inflight_find(c, argv[1], &not_owner);
	if (!pp) {
		out_error(c, false, "E_%s_FAILED %s %s failed %s", name, name,
			  argv[1],
			  not_owner ? "client does not own message"
				    : "ID not in flight");
		return;
	}
	m = *pp;
	now = now_ms();
	if (name[0] == 'T') {
		m->due_ms = now + c->msg_timeout;
		if (m->due_ms > m->first_ms + opt.max_msg_timeout)
			m->due_ms = m->first_ms + opt.max_msg_timeout;
		return;
	}
	*pp = m->next;
	c->in_flight--;
	m->owner = NULL;
	if (name[0] == 'F') {
		msg_free(m);
	} else if (delay == 0) {
		enqueue(c->chan, m);
	} else {
		if (delay > opt.max_req_timeout)
			delay = opt.max_req_timeout;
		m->due_ms = now + delay + 1; /* no earlier than asked */
		m->next = c->chan->deferred;
		c->chan->deferred = m;
	}
}

static bool
name_ok(const char *s)
{
	return sl_nsq_name_is_valid(s, strlen(s));
}

/* With AUTH required: has this connection authenticated? (section 2.2) */
static bool
auth_ok(struct conn *c, const char *cmd)
{
	if (!opt.auth_secret || c->authed)
		return true;
	out_error(c, true, "E_AUTH_FIRST AUTH required before %s", cmd);
	return false;
}

static void
cmd_auth(struct conn *c, const uint8_t *secret, size_t len)
{
	static const char reply[] = "{\"identity\":\"fake_nsqd\","
				    "\"identity_url\":\"\","
				    "\"permission_count\":1}";

	if (c->authed) {
		out_error(c, true, "E_INVALID AUTH already set");
	} else if (!opt.auth_secret) {
		out_error(c, true, "E_AUTH_DISABLED AUTH disabled");
	} else if (len != strlen(opt.auth_secret) ||
		   memcmp(secret, opt.auth_secret, len) != 0) {
		/* nsqd's text when its auth server refuses the secret */
		out_error(c, true, "E_AUTH_FAILED AUTH failed");
	} else {
		c->authed = true;
		out_frame(c, 0, reply, sizeof(reply) - 1);
	}
}

/*
 * One command whose line is @line (NUL-terminated, '\n' and '\r' gone);
 * @rest/@rest_len are the bytes after the line.  Returns the body bytes
 * consumed, or -1 when the body is not complete yet.
 */
static ssize_t
command(struct conn *c, char *line, const uint8_t *rest, size_t rest_len)
{
	char *argv[8], *p = line;
	int argc = 0;
	bool body = false;
	int64_t size = 0;

	argv[argc++] = p;
	while ((p = strchr(p, ' ')) && argc < 8) {
		*p++ = '\0';
		argv[argc++] = p;
	}
	if (strcmp(argv[0], "IDENTIFY") == 0 || strcmp(argv[0], "PUB") == 0 ||
	    strcmp(argv[0], "MPUB") == 0 || strcmp(argv[0], "DPUB") == 0 ||
	    strcmp(argv[0], "AUTH") == 0)
		body = true;
	if (opt.tls_required && c->tls != TLS_ON &&
	    strcmp(argv[0], "IDENTIFY") != 0) {
		out_error(c, true,
			  "E_INVALID cannot %s in current state (TLS required)",
			  argv[0]);
		return 0;
	}
	/* Checks nsqd makes before it reads the body. */
	if (strcmp(argv[0], "MPUB") == 0 || strcmp(argv[0], "PUB") == 0 ||
	    strcmp(argv[0], "DPUB") == 0) {
		if (argc < (argv[0][0] == 'D' ? 3 : 2)) {
			out_error(c, true,
				  "E_INVALID %s insufficient number of params",
				  argv[0]);
			return 0;
		}
		if (!name_ok(argv[1])) {
			if (argv[0][0] == 'M')
				out_error(c, true,
					  "E_BAD_TOPIC E_BAD_TOPIC MPUB topic "
					  "name \"%s\" is not valid",
					  argv[1]);
			else
				out_error(c, true,
					  "E_BAD_TOPIC %s topic name \"%s\" is "
					  "not valid",
					  argv[0], argv[1]);
			return 0;
		}
	}
	if (strcmp(argv[0], "MPUB") == 0 && !auth_ok(c, "MPUB"))
		return 0;
	if (strcmp(argv[0], "AUTH") == 0) {
		if (c->state != ST_INIT) {
			out_error(c, true,
				  "E_INVALID cannot AUTH in current state");
			return 0;
		}
		if (argc != 1) {
			out_error(
				c, true,
				"E_INVALID AUTH invalid number of parameters");
			return 0;
		}
	}
	if (body) {
		bool msg = strcmp(argv[0], "PUB") == 0 ||
			   strcmp(argv[0], "DPUB") == 0;

		if (rest_len < 4)
			return -1;
		size = (int32_t)sl_nsq_get_be32(rest);
		if (size <= 0 ||
		    size > (msg ? opt.max_msg_size : opt.max_body_size)) {
			if (argv[0][0] == 'A' && size > 0)
				out_error(
					c, true,
					"E_BAD_BODY AUTH body too big %" PRId64
					" > %" PRId64,
					size, opt.max_body_size);
			else if (argv[0][0] == 'A')
				out_error(c, true,
					  "E_BAD_BODY AUTH invalid body size "
					  "%" PRId64,
					  size);
			else if (argv[0][0] == 'I')
				out_error(c, true,
					  "E_BAD_BODY IDENTIFY invalid body "
					  "size %" PRId64,
					  size);
			else if (argv[0][0] == 'M')
				out_error(c, true,
					  "E_BAD_BODY MPUB invalid body size "
					  "%" PRId64,
					  size);
			else
				out_error(c, true,
					  "E_BAD_MESSAGE %s invalid message "
					  "body size %" PRId64,
					  argv[0], size);
			return 0;
		}
		if (rest_len < 4 + (size_t)size)
			return -1;
	}
	if (strcmp(argv[0], "NOP") == 0) {
	} else if (strcmp(argv[0], "IDENTIFY") == 0) {
		cmd_identify(c, rest + 4, (size_t)size);
	} else if (strcmp(argv[0], "AUTH") == 0) {
		cmd_auth(c, rest + 4, (size_t)size);
	} else if (strcmp(argv[0], "SUB") == 0) {
		if (c->state != ST_INIT) {
			out_error(c, true,
				  "E_INVALID cannot SUB in current state");
		} else if (c->hb_interval <= 0) {
			out_error(c, true,
				  "E_INVALID cannot SUB with "
				  "heartbeats disabled");
		} else if (argc < 3) {
			out_error(
				c, true,
				"E_INVALID SUB insufficient number of params");
		} else if (!name_ok(argv[1])) {
			out_error(c, true,
				  "E_BAD_TOPIC SUB topic name \"%s\" is not "
				  "valid",
				  argv[1]);
		} else if (!name_ok(argv[2])) {
			out_error(c, true,
				  "E_BAD_CHANNEL SUB channel name \"%s\" is "
				  "not valid",
				  argv[2]);
		} else if (auth_ok(c, "SUB")) {
			c->topic = topic_get(argv[1]);
			c->chan = channel_get(c->topic, argv[2]);
			c->state = ST_SUB;
			c->rdy = 0;
			out_put(c, frame_ok, sizeof(frame_ok));
			faults_after(c);
		}
	} else if (strcmp(argv[0], "RDY") == 0) {
		int64_t n = 1;

		if (c->state == ST_CLOSING)
			return 0;
		if (c->state != ST_SUB) {
			out_error(c, true,
				  "E_INVALID cannot RDY in current state");
		} else if (argc > 1 && !parse_u64(argv[1], &n)) {
			out_error(c, true,
				  "E_INVALID RDY could not parse count %s",
				  argv[1]);
		} else if (n > opt.max_rdy) {
			out_error(c, true,
				  "E_INVALID RDY count %" PRId64
				  " out of range 0-%" PRId64,
				  n, opt.max_rdy);
		} else {
			c->rdy = n;
		}
	} else if (strcmp(argv[0], "FIN") == 0 || strcmp(argv[0], "REQ") == 0 ||
		   strcmp(argv[0], "TOUCH") == 0) {
		cmd_ack(c, argc, argv);
	} else if (strcmp(argv[0], "CLS") == 0) {
		if (c->state != ST_SUB) {
			out_error(c, true,
				  "E_INVALID cannot CLS in current state");
		} else {
			c->state = ST_CLOSING;
			c->rdy = 0;
			out_put(c, frame_cw, sizeof(frame_cw));
		}
	} else if ((strcmp(argv[0], "PUB") == 0 ||
		    strcmp(argv[0], "DPUB") == 0) &&
		   !auth_ok(c, argv[0])) {
		/* checked after the body (section 2.4) */
	} else if (strcmp(argv[0], "PUB") == 0) {
		publish(topic_get(argv[1]), rest + 4, (size_t)size, 0);
		out_put(c, frame_ok, sizeof(frame_ok));
	} else if (strcmp(argv[0], "DPUB") == 0) {
		int64_t d;

		if (!parse_u64(argv[2], &d)) {
			out_error(c, true,
				  "E_INVALID DPUB could not parse timeout %s",
				  argv[2]);
		} else if (d > opt.max_req_timeout) {
			out_error(c, true,
				  "E_INVALID DPUB timeout %" PRId64
				  " out of range 0-%" PRId64,
				  d, opt.max_req_timeout);
		} else {
			publish(topic_get(argv[1]), rest + 4, (size_t)size, d);
			out_put(c, frame_ok, sizeof(frame_ok));
		}
	} else if (strcmp(argv[0], "MPUB") == 0) {
		const uint8_t *b = rest + 4;
		size_t off = 4, i, cnt;
		int64_t sz;

		cnt = sl_nsq_get_be32(b);
		if ((int32_t)cnt <= 0 ||
		    (int64_t)cnt > (opt.max_body_size - 4) / 5) {
			out_error(c, true,
				  "E_BAD_BODY MPUB invalid message count %d",
				  (int32_t)cnt);
			return 4 + size;
		}
		/* Validate all first: nothing is queued on failure. */
		for (i = 0; i < cnt; i++) {
			if (off + 4 > (size_t)size)
				break;
			sz = (int32_t)sl_nsq_get_be32(b + off);
			if (sz <= 0 || sz > opt.max_msg_size ||
			    off + 4 + (size_t)sz > (size_t)size)
				break;
			off += 4 + (size_t)sz;
		}
		if (i < cnt) {
			out_error(c, true,
				  "E_BAD_MESSAGE MPUB failed to read message "
				  "body");
			return 4 + size;
		}
		off = 4;
		for (i = 0; i < cnt; i++) {
			sz = (int32_t)sl_nsq_get_be32(b + off);
			publish(topic_get(argv[1]), b + off + 4, (size_t)sz, 0);
			off += 4 + (size_t)sz;
		}
		out_put(c, frame_ok, sizeof(frame_ok));
	} else {
		out_error(c, true, "E_INVALID invalid command %s", argv[0]);
	}
	return body ? 4 + size : 0;
}

static void
conn_input(struct conn *c)
{
	size_t off = 0;

	if (c->state == ST_MAGIC) {
		if (c->in_len < SL_NSQ_MAGIC_LEN)
			return;
		if (memcmp(c->in, SL_NSQ_MAGIC, SL_NSQ_MAGIC_LEN) != 0) {
			out_error(c, true, "E_BAD_PROTOCOL");
			return;
		}
		c->state = ST_INIT;
		off = SL_NSQ_MAGIC_LEN;
	}
	while (!c->dead && off < c->in_len) {
		uint8_t *nl = memchr(c->in + off, '\n', c->in_len - off);
		size_t ll;
		ssize_t used;
		char *line;

		if (!nl) {
			if (c->in_len - off >= LINE_MAX_LEN) {
				c->dead = true; /* nsqd: no error frame */
				out_drop(c);
			}
			break;
		}
		ll = (size_t)(nl - (c->in + off));
		if (ll + 1 > LINE_MAX_LEN) {
			c->dead = true;
			out_drop(c);
			break;
		}
		line = xalloc(ll + 1);
		memcpy(line, c->in + off, ll);
		line[ll] = '\0';
		if (ll && line[ll - 1] == '\r')
			line[ll - 1] = '\0';
		used = command(c, line, nl + 1, c->in_len - off - ll - 1);
		sl_free(line);
		if (used < 0)
			break;
		c->last_cmd_ms = now_ms();
		off += ll + 1 + (size_t)used;
		if (c->discard_in) {
			/* An upgrade began: nsqd's old reader is gone. */
			c->discard_in = false;
			off = c->in_len;
		}
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
}

/* ---- connections ------------------------------------------------------- */

static void
conn_close(struct conn *c)
{
	struct conn **pp;
	struct topic *t;
	struct channel *ch;
	struct msg *m;

	for (pp = &conns; *pp != c; pp = &(*pp)->next)
		;
	*pp = c->next;
	/* Its in-flight messages wait for their timeout (section 5.7). */
	for (t = topics; t; t = t->next)
		for (ch = t->channels; ch; ch = ch->next)
			for (m = ch->inflight; m; m = m->next)
				if (m->owner == c)
					m->owner = NULL;
	epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
	SSL_free(c->ssl);
	if (c->comp == COMP_DEFLATE) {
		inflateEnd(&c->zin);
		deflateEnd(&c->zout);
	}
	close(c->fd);
	sl_free(c->in);
	sl_free(c->out.p);
	sl_free(c->wout.p);
	sl_free(c->win.p);
	sl_free(c);
}

/* Plaintext for the command parser. */
static void
in_put(struct conn *c, const uint8_t *p, size_t n)
{
	if (c->in_cap - c->in_len < n) {
		while (c->in_cap - c->in_len < n)
			c->in_cap = c->in_cap ? c->in_cap * 2 : 131072;
		c->in = sl_realloc(c->in, c->in_cap);
		if (!c->in) {
			perror("fake_nsqd: out of memory");
			exit(2);
		}
	}
	memcpy(c->in + c->in_len, p, n);
	c->in_len += n;
}

/* @n bytes off the wire through the decompressor; false if corrupt. */
static bool
inflow(struct conn *c, const uint8_t *p, size_t n)
{
	static uint8_t blk[SL_SNAPPY_BLOCK_MAX];
	size_t m;
	ssize_t k;
	int rc;

	if (c->comp == COMP_NONE) {
		in_put(c, p, n);
		return true;
	}
	if (c->comp == COMP_DEFLATE) {
		c->zin.next_in = p;
		c->zin.avail_in = (uInt)n;
		for (;;) {
			c->zin.next_out = blk;
			c->zin.avail_out = sizeof(blk);
			rc = inflate(&c->zin, Z_SYNC_FLUSH);
			if (rc != Z_OK && rc != Z_BUF_ERROR)
				return false;
			in_put(c, blk, sizeof(blk) - c->zin.avail_out);
			if (rc == Z_BUF_ERROR ||
			    (c->zin.avail_in == 0 && c->zin.avail_out != 0))
				return true;
		}
	}
	bput(&c->win, p, n);
	while ((k = sl_snappy_dec_chunk(&c->sdec, c->win.p + c->win.off,
					blive(&c->win), blk, sizeof(blk), &m)) >
	       0) {
		c->win.off += (size_t)k;
		in_put(c, blk, m);
	}
	if (k < 0)
		fprintf(stderr, "fake_nsqd: %s\n", c->sdec.why);
	return k == 0;
}

static void
conn_read(struct conn *c)
{
	for (;;) {
		uint8_t buf[65536];
		ssize_t n;

		if (c->tls == TLS_REPLY)
			return; /* nothing may come before our reply is out */
		if (c->tls == TLS_HANDSHAKE) {
			if (!tls_step(c))
				goto kill;
			if (c->tls == TLS_HANDSHAKE)
				return;
			continue;
		}
		if (c->tls == TLS_ON) {
			int r;

			ERR_clear_error();
			r = SSL_read(c->ssl, buf, sizeof(buf));
			if (r <= 0) {
				r = SSL_get_error(c->ssl, r);
				if (r == SSL_ERROR_WANT_READ)
					return;
				if (r == SSL_ERROR_WANT_WRITE) {
					c->tls_want_write = true;
					return;
				}
				goto kill;
			}
			n = r;
		} else {
			n = recv(c->fd, buf, sizeof(buf), 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EAGAIN) /* == EWOULDBLOCK */
				return;
			if (n <= 0)
				goto kill;
		}
		if (!inflow(c, buf, (size_t)n))
			goto kill;
		conn_input(c);
		if (c->dead)
			return;
	}
kill:
	c->dead = true;
	out_drop(c);
}

static void
accept_all(int lfd)
{
	for (;;) {
		struct epoll_event ev = { 0 };
		struct conn *c;
		int fd, one = 1;

		fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c = xalloc(sizeof(*c));
		memset(c, 0, sizeof(*c));
		c->fd = fd;
		c->state = ST_MAGIC;
		c->msg_timeout = opt.msg_timeout;
		c->hb_interval = opt.hb_interval;
		c->last_cmd_ms = now_ms();
		c->next_hb_ms = c->last_cmd_ms + c->hb_interval;
		c->next = conns;
		conns = c;
		ev.events = EPOLLIN;
		ev.data.ptr = c;
		epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
	}
}

/* ---- stdin control ----------------------------------------------------- */

static char ctl_buf[LINE_MAX_LEN];
static size_t ctl_len;

static void
ctl_line(char *line)
{
	struct conn *c;
	bool ok = true;

	if (strncmp(line, "pub ", 4) == 0) {
		char *topic = line + 4, *body = strchr(topic, ' ');

		if (body && body[1])
			*body = '\0';
		if (body && body[1] && name_ok(topic))
			publish(topic_get(topic), body + 1, strlen(body + 1),
				0);
		else
			ok = false;
	} else if (strcmp(line, "quit") == 0) {
		exit(0);
	} else {
		for (c = conns; c; c = c->next) {
			if (strcmp(line, "drop") == 0) {
				c->dead = true;
				out_drop(c);
			} else if (strcmp(line, "stall") == 0) {
				c->stalled = true;
			} else if (strcmp(line, "resume") == 0) {
				c->stalled = false;
			} else if (strcmp(line, "malformed") == 0) {
				out_put(c, frame_bad, sizeof(frame_bad));
			} else if (strcmp(line, "oversized") == 0) {
				fault_oversized(c);
			}
		}
		ok = strcmp(line, "drop") == 0 || strcmp(line, "stall") == 0 ||
		     strcmp(line, "resume") == 0 ||
		     strcmp(line, "malformed") == 0 ||
		     strcmp(line, "oversized") == 0;
	}
	fputs(ok ? "ok\n" : "error\n", stdout);
	fflush(stdout);
}

static void
ctl_read(void)
{
	ssize_t n = read(0, ctl_buf + ctl_len, sizeof(ctl_buf) - ctl_len - 1);
	char *nl;

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0)
		exit(0);
	ctl_len += (size_t)n;
	while ((nl = memchr(ctl_buf, '\n', ctl_len))) {
		size_t ll = (size_t)(nl - ctl_buf);

		*nl = '\0';
		ctl_line(ctl_buf);
		memmove(ctl_buf, nl + 1, ctl_len - ll - 1);
		ctl_len -= ll + 1;
	}
	if (ctl_len == sizeof(ctl_buf) - 1)
		ctl_len = 0;
}

/* ---- main -------------------------------------------------------------- */

static int
parse_args(int argc, char **argv, int *port)
{
	static const struct {
		const char *name;
		int64_t *v;
	} flags[] = {
		{ "--max-rdy-count", &opt.max_rdy },
		{ "--max-msg-size", &opt.max_msg_size },
		{ "--msg-timeout", &opt.msg_timeout },
		{ "--max-msg-timeout", &opt.max_msg_timeout },
		{ "--heartbeat-interval", &opt.hb_interval },
		{ "--max-req-timeout", &opt.max_req_timeout },
		{ "--min-interval", &opt.min_interval },
		{ "--drop-after", &opt.drop_after },
		{ "--stall-after", &opt.stall_after },
		{ "--malformed-after", &opt.malformed_after },
		{ "--oversized-after", &opt.oversized_after },
		{ "--max-deflate-level", &opt.max_deflate_level },
	};
	static const struct {
		const char *name;
		const char **v;
	} sflags[] = {
		{ "--tls-cert", &opt.tls_cert },
		{ "--tls-key", &opt.tls_key },
		{ "--auth-secret", &opt.auth_secret },
	};
	static const struct {
		const char *name;
		bool *v;
		bool set;
	} bflags[] = {
		{ "--no-stdin", &opt.use_stdin, false },
		{ "--tls-required", &opt.tls_required, true },
		{ "--deflate", &opt.deflate, true },
		{ "--snappy", &opt.snappy, true },
	};
	int i;
	size_t f;

	for (i = 1; i < argc; i++) {
		for (f = 0; f < sizeof(bflags) / sizeof(bflags[0]); f++)
			if (strcmp(argv[i], bflags[f].name) == 0)
				break;
		if (f < sizeof(bflags) / sizeof(bflags[0])) {
			*bflags[f].v = bflags[f].set;
			continue;
		}
		for (f = 0; f < sizeof(sflags) / sizeof(sflags[0]); f++)
			if (strcmp(argv[i], sflags[f].name) == 0)
				break;
		if (f < sizeof(sflags) / sizeof(sflags[0])) {
			if (i + 1 >= argc || !argv[i + 1][0])
				return -1;
			*sflags[f].v = argv[++i];
			continue;
		}
		if (argv[i][0] != '-') {
			int64_t p;

			if (!parse_u64(argv[i], &p) || p > 65535)
				return -1;
			*port = (int)p;
			continue;
		}
		for (f = 0; f < sizeof(flags) / sizeof(flags[0]); f++)
			if (strcmp(argv[i], flags[f].name) == 0)
				break;
		if (f == sizeof(flags) / sizeof(flags[0]) || i + 1 >= argc ||
		    !parse_u64(argv[i + 1], flags[f].v))
			return -1;
		i++;
	}
	if (opt.max_hb_interval < opt.hb_interval)
		opt.max_hb_interval = opt.hb_interval;
	if (!opt.tls_cert != !opt.tls_key ||
	    (opt.tls_required && !opt.tls_cert) || opt.max_deflate_level < 1 ||
	    opt.max_deflate_level > 9)
		return -1;
	return 0;
}

/* The server side of TLS, when a certificate was given. */
static int
tls_init(void)
{
	if (!opt.tls_cert)
		return 0;
	tls_ctx = SSL_CTX_new(TLS_server_method());
	if (!tls_ctx ||
	    SSL_CTX_use_certificate_chain_file(tls_ctx, opt.tls_cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(tls_ctx, opt.tls_key,
					SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(tls_ctx) != 1) {
		fputs("fake_nsqd: cannot load the TLS certificate/key\n",
		      stderr);
		ERR_print_errors_fp(stderr);
		return -1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct sockaddr_in sa = { 0 };
	socklen_t slen = sizeof(sa);
	struct epoll_event ev = { 0 }, evs[64];
	int lfd, port = 0, one = 1, i, n;
	struct conn *c, *cn;
	struct topic *t;
	struct channel *ch;
	int64_t next, now;

	if (parse_args(argc, argv, &port) < 0) {
		fputs("usage: fake_nsqd [PORT] [--flag N]... (see the source)\n",
		      stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (tls_init() < 0)
		return 1;
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		perror("socket");
		return 1;
	}
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons((uint16_t)port);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(lfd, 128) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &slen) < 0) {
		perror("bind/listen");
		return 1;
	}
	epfd = epoll_create1(EPOLL_CLOEXEC);
	ev.events = EPOLLIN;
	ev.data.ptr = NULL;
	epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
	if (opt.use_stdin) {
		ev.data.ptr = &ctl_len; /* tag for stdin */
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0)
			opt.use_stdin = false;
	}
	printf("listening on %d\n", ntohs(sa.sin_port));
	fflush(stdout);

	next = INT64_MAX;
	for (;;) {
		int timeout = -1;

		now = now_ms();
		if (next != INT64_MAX)
			timeout = next <= now ? 0 : (int)(next - now);
		n = epoll_wait(epfd, evs, 64, timeout);
		if (n < 0 && errno != EINTR) {
			perror("epoll_wait");
			return 1;
		}
		for (i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == NULL) {
				accept_all(lfd);
			} else if (p == &ctl_len) {
				ctl_read();
			} else {
				c = p;
				if (evs[i].events &
				    (EPOLLIN | EPOLLHUP | EPOLLERR))
					conn_read(c);
			}
		}
		next = timers(now_ms());
		for (t = topics; t; t = t->next)
			for (ch = t->channels; ch; ch = ch->next)
				deliver(ch);
		/* Deliveries may have started new deadlines. */
		next = timers(now_ms());
		for (c = conns; c; c = cn) {
			cn = c->next;
			if (!flush(c))
				conn_close(c);
		}
	}
}
