/* SPDX-License-Identifier: MIT */
/*
 * nsq_transport.c - TLS (OpenSSL 3) and DEFLATE (zlib) / snappy framing
 * layers over one nsqd socket, and the blocking upgrade that switches
 * them on (docs/nsq-protocol.md section 6).
 *
 * Layering: plaintext <-> [deflate | snappy] <-> [TLS] <-> socket.
 *  - Reading: the lowest layer (SSL_read or recv) fills `cin` with
 *    compressed bytes; inflate() or sl_snappy_dec_chunk() decode from it
 *    into the caller's buffer (snappy through `dec`, one block at a time,
 *    since a chunk must be decoded whole).  Without compression the lowest
 *    layer reads straight into the caller's buffer, so an exact-length read
 *    never consumes bytes beyond what was asked for; with compression the
 *    surplus stays in `cin`/`dec`/zlib and pending() reports it.
 *  - Writing: write() appends plaintext to `plain`; flush() encodes all of
 *    it into `wire` (deflate + Z_SYNC_FLUSH, or snappy chunks after the
 *    stream identifier) and sends `wire` through TLS or send().
 *  - TLS runs on a BIO of our own that uses send(MSG_NOSIGNAL)/recv, so a
 *    peer that closed cannot raise SIGPIPE (the library may not touch
 *    signal dispositions).  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER because a
 *    retried SSL_write may see `wire` reallocated;
 *    SSL_OP_IGNORE_UNEXPECTED_EOF because nsqd may close without
 *    close_notify and frames are length-prefixed anyway (a truncated frame
 *    is still detected by the parser).
 *  - zlib allocates through sl_calloc/sl_free (zalloc hooks); OpenSSL and
 *    libsnappy keep their own allocators.
 *
 * Decisions: TLS 1.2 is the minimum (nsqd offers 1.3); verification is on
 * unless skip_verify, against ca_file or the system roots; a requested but
 * refused TLS is an error in sl_nsq_conn_identify() (no silent plaintext
 * downgrade), a refused compression is not.  A deflate stream that ends
 * (final block) reads as EOF.  Errors are sticky: once a read or flush
 * failed every later call returns the same code.
 *
 * No locking: a transport belongs to one thread at a time.  The BIO method
 * is created once (pthread_once) and never freed.
 */
#include "source/nsq_transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <zlib.h>

#include "core/clock_int.h"
#include "proto/nsq_snappy.h"
#include "util/alloc.h"

#define READ_CHUNK        16384u
#define ERR_TEXT          256u
#define HS_FRAME_MAX      4096u /* the upgrade's "OK" replies are far shorter */
#define DEFAULT_MAX_FRAME SL_NSQ_FRAME_SIZE_FOR(1u << 20)
/* Largest snappy chunk that may sit in cin (3-byte length + header). */
#define SNAPPY_CHUNK_MAX  ((size_t)SL_SNAPPY_HDR + 0xffffffu)

enum comp { C_NONE, C_DEFLATE, C_SNAPPY };

struct xbuf {
	uint8_t *p;
	size_t off, len, cap; /* bytes [off, len) are live */
};

struct sl_nsq_tp {
	int fd;
	size_t max_frame;
	SSL_CTX *ctx;
	SSL *ssl;
	enum comp comp;
	z_stream zin, zout;
	bool zin_on, zout_on;
	bool z_full; /* the last inflate filled its output: more may come */
	bool z_end;  /* the peer's deflate stream ended */
	struct sl_snappy_dec sdec;
	bool sid_sent;       /* our snappy stream identifier went out */
	struct xbuf cin;     /* compressed bytes read, not decoded yet */
	struct xbuf dec;     /* snappy: a decoded block not returned yet */
	struct xbuf plain;   /* queued plaintext */
	struct xbuf wire;    /* encoded, not sent yet */
	bool rd_wants_write; /* the last SSL_read asked for POLLOUT */
	bool wr_wants_read;  /* the last SSL_write asked for POLLIN */
	int broken;          /* sticky error, 0 while usable */
	char errtext[ERR_TEXT];
};

void
sl_nsq_seterr(char *err, size_t size, const char *fmt, ...)
{
	va_list ap;

	if (!err || size == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, size, fmt, ap);
	va_end(ap);
}

/* Record a final error with its text; returns @code. */
static int fail(struct sl_nsq_tp *tp, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int
fail(struct sl_nsq_tp *tp, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tp->errtext, sizeof(tp->errtext), fmt, ap);
	va_end(ap);
	tp->broken = code;
	return code;
}

/* The newest OpenSSL error as text (the queue is then cleared). */
static const char *
ssl_reason(char *buf, size_t size)
{
	unsigned long e = ERR_peek_last_error();

	if (e == 0)
		snprintf(buf, size, "unknown TLS error");
	else
		ERR_error_string_n(e, buf, size);
	ERR_clear_error();
	return buf;
}

/* ---- buffers ------------------------------------------------------------- */

int
sl_nsq_grow(uint8_t **p, size_t *cap, size_t need, size_t first)
{
	size_t n = *cap ? *cap : first;
	uint8_t *q;

	if (need <= *cap)
		return 0;
	while (n < need) {
		if (n > SIZE_MAX / 2)
			return SLUICE_ENOMEM;
		n *= 2;
	}
	q = sl_realloc(*p, n);
	if (!q)
		return SLUICE_ENOMEM;
	*p = q;
	*cap = n;
	return 0;
}

static int
xreserve(struct xbuf *b, size_t more)
{
	if (b->off && b->off == b->len)
		b->off = b->len = 0;
	if (b->cap - b->len >= more)
		return 0;
	if (b->off) { /* compact first */
		memmove(b->p, b->p + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
		if (b->cap - b->len >= more)
			return 0;
	}
	if (more > SIZE_MAX - b->len)
		return SLUICE_ENOMEM;
	return sl_nsq_grow(&b->p, &b->cap, b->len + more, 4096);
}

static int
xappend(struct xbuf *b, const void *p, size_t n)
{
	if (xreserve(b, n) < 0)
		return SLUICE_ENOMEM;
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

static size_t
xlive(const struct xbuf *b)
{
	return b->len - b->off;
}

/* ---- the socket BIO ------------------------------------------------------ */

static BIO_METHOD *sock_meth;
static pthread_once_t sock_once = PTHREAD_ONCE_INIT;

static int
bio_fd(BIO *b)
{
	return (int)(intptr_t)BIO_get_data(b);
}

static int
bio_write(BIO *b, const char *p, int n)
{
	ssize_t r;

	BIO_clear_retry_flags(b);
	do
		r = send(bio_fd(b), p, (size_t)n, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	if (r < 0 && errno == EAGAIN)
		BIO_set_retry_write(b);
	return (int)r;
}

static int
bio_read(BIO *b, char *p, int n)
{
	ssize_t r;

	BIO_clear_retry_flags(b);
	do
		r = recv(bio_fd(b), p, (size_t)n, 0);
	while (r < 0 && errno == EINTR);
	if (r < 0 && errno == EAGAIN)
		BIO_set_retry_read(b);
	return (int)r;
}

static long
bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)b;
	(void)num;
	(void)ptr;
	return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int
bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static void
make_meth(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				     "sluice-nsq-socket");

	if (!m)
		return;
	if (!BIO_meth_set_write(m, bio_write) ||
	    !BIO_meth_set_read(m, bio_read) ||
	    !BIO_meth_set_ctrl(m, bio_ctrl) ||
	    !BIO_meth_set_create(m, bio_create)) {
		BIO_meth_free(m);
		return;
	}
	sock_meth = m;
}

/* ---- zlib allocation ----------------------------------------------------- */

static voidpf
z_alloc(voidpf opaque, uInt items, uInt size)
{
	(void)opaque;
	return sl_calloc(items, size);
}

static void
z_free(voidpf opaque, voidpf p)
{
	(void)opaque;
	sl_free(p);
}

/* ---- lifecycle ----------------------------------------------------------- */

int
sl_nsq_tp_new(int fd, size_t max_frame, struct sl_nsq_tp **out)
{
	struct sl_nsq_tp *tp;
	int fl;

	if (fd < 0 || !out)
		return SLUICE_EINVAL;
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	tp = sl_calloc(1, sizeof(*tp));
	if (!tp)
		return SLUICE_ENOMEM;
	tp->fd = fd;
	tp->max_frame = max_frame ? max_frame : DEFAULT_MAX_FRAME;
	sl_snappy_dec_init(&tp->sdec);
	*out = tp;
	return 0;
}

void
sl_nsq_tp_free(struct sl_nsq_tp *tp)
{
	if (!tp)
		return;
	if (tp->zin_on)
		inflateEnd(&tp->zin);
	if (tp->zout_on)
		deflateEnd(&tp->zout);
	SSL_free(tp->ssl); /* frees its BIO */
	SSL_CTX_free(tp->ctx);
	sl_free(tp->cin.p);
	sl_free(tp->dec.p);
	sl_free(tp->plain.p);
	sl_free(tp->wire.p);
	sl_free(tp);
}

int
sl_nsq_tp_fd(const struct sl_nsq_tp *tp)
{
	return tp->fd;
}

const char *
sl_nsq_tp_error(const struct sl_nsq_tp *tp)
{
	return tp->errtext;
}

bool
sl_nsq_tp_is_tls(const struct sl_nsq_tp *tp)
{
	return tp->ssl != NULL;
}

bool
sl_nsq_tp_is_deflate(const struct sl_nsq_tp *tp)
{
	return tp->comp == C_DEFLATE;
}

bool
sl_nsq_tp_is_snappy(const struct sl_nsq_tp *tp)
{
	return tp->comp == C_SNAPPY;
}

/* ---- the lowest layer: TLS or the socket --------------------------------- */

/*
 * One read (@rbuf) or write (@wbuf) of up to @n bytes on the lowest layer:
 * the count (> 0), 0 at EOF (reads only), SLUICE_EAGAIN, or a final error.
 */
static ssize_t
lower_io(struct sl_nsq_tp *tp, void *rbuf, const void *wbuf, size_t n)
{
	const char *what = wbuf ? "write" : "read";
	char why[160];
	ssize_t r;
	int k, e;

	if (!tp->ssl) {
		do
			r = wbuf ? send(tp->fd, wbuf, n, MSG_NOSIGNAL)
				 : recv(tp->fd, rbuf, n, 0);
		while (r < 0 && errno == EINTR);
		if (r >= 0)
			return r;
		e = errno;
		if (e == EAGAIN)
			return SLUICE_EAGAIN;
		return fail(tp, -e, "%s: %s", what, sluice_strerror(-e));
	}
	ERR_clear_error();
	if (wbuf)
		tp->wr_wants_read = false;
	else
		tp->rd_wants_write = false;
	k = n > INT_MAX ? INT_MAX : (int)n;
	k = wbuf ? SSL_write(tp->ssl, wbuf, k) : SSL_read(tp->ssl, rbuf, k);
	if (k > 0)
		return k;
	e = errno;
	switch (SSL_get_error(tp->ssl, k)) {
	case SSL_ERROR_WANT_READ:
		tp->wr_wants_read = wbuf != NULL;
		return SLUICE_EAGAIN;
	case SSL_ERROR_WANT_WRITE:
		tp->rd_wants_write = wbuf == NULL;
		return SLUICE_EAGAIN;
	case SSL_ERROR_ZERO_RETURN:
		if (!wbuf)
			return 0; /* close_notify */
		break;
	case SSL_ERROR_SYSCALL:
		if (ERR_peek_error() != 0)
			break;
		if (e == 0 && !wbuf)
			return 0; /* EOF without close_notify */
		return fail(tp, e ? -e : SLUICE_EIO, "TLS %s: %s", what,
			    e ? sluice_strerror(-e) : "connection closed");
	default:
		break;
	}
	return fail(tp, SLUICE_EPROTO, "TLS %s: %s", what,
		    ssl_reason(why, sizeof(why)));
}

/* Read more compressed bytes into cin: > 0, 0 at EOF, EAGAIN, error. */
static ssize_t
fill_cin(struct sl_nsq_tp *tp, size_t want)
{
	ssize_t r;

	if (want < READ_CHUNK)
		want = READ_CHUNK;
	if (xreserve(&tp->cin, want) < 0)
		return fail(tp, SLUICE_ENOMEM, "out of memory");
	r = lower_io(tp, tp->cin.p + tp->cin.len, NULL,
		     tp->cin.cap - tp->cin.len);
	if (r > 0)
		tp->cin.len += (size_t)r;
	return r;
}

/* ---- reading ------------------------------------------------------------- */

static ssize_t
read_deflate(struct sl_nsq_tp *tp, uint8_t *buf, size_t cap)
{
	for (;;) {
		ssize_t r;

		if (tp->z_end)
			return 0;
		if (xlive(&tp->cin) || tp->z_full) {
			size_t in = xlive(&tp->cin);
			size_t outn = cap > UINT_MAX ? UINT_MAX : cap;
			int rc;

			if (in > UINT_MAX)
				in = UINT_MAX;
			tp->zin.next_in =
				tp->cin.p ? tp->cin.p + tp->cin.off : NULL;
			tp->zin.avail_in = (uInt)in;
			tp->zin.next_out = buf;
			tp->zin.avail_out = (uInt)outn;
			rc = inflate(&tp->zin, Z_SYNC_FLUSH);
			tp->cin.off += in - tp->zin.avail_in;
			if (rc != Z_OK && rc != Z_BUF_ERROR &&
			    rc != Z_STREAM_END)
				return fail(tp, SLUICE_EPROTO, "deflate: %s",
					    tp->zin.msg ? tp->zin.msg
							: "corrupt stream");
			tp->z_full = tp->zin.avail_out == 0;
			if (rc == Z_STREAM_END)
				tp->z_end = true;
			if (outn - tp->zin.avail_out > 0)
				return (ssize_t)(outn - tp->zin.avail_out);
			if (tp->z_end)
				return 0;
		}
		r = fill_cin(tp, 0);
		if (r <= 0)
			return r;
	}
}

static ssize_t
read_snappy(struct sl_nsq_tp *tp, uint8_t *buf, size_t cap)
{
	for (;;) {
		size_t n;
		ssize_t k;

		if (xlive(&tp->dec)) {
			n = xlive(&tp->dec) < cap ? xlive(&tp->dec) : cap;
			memcpy(buf, tp->dec.p + tp->dec.off, n);
			tp->dec.off += n;
			return (ssize_t)n;
		}
		if (!tp->dec.p) {
			tp->dec.p = sl_malloc(SL_SNAPPY_BLOCK_MAX);
			if (!tp->dec.p)
				return fail(tp, SLUICE_ENOMEM, "out of memory");
			tp->dec.cap = SL_SNAPPY_BLOCK_MAX;
		}
		k = sl_snappy_dec_chunk(
			&tp->sdec, tp->cin.p ? tp->cin.p + tp->cin.off : NULL,
			xlive(&tp->cin), tp->dec.p, tp->dec.cap, &n);
		if (k < 0)
			return fail(tp, SLUICE_EPROTO, "%s",
				    tp->sdec.why ? tp->sdec.why
						 : "snappy: bad stream");
		if (k > 0) {
			tp->cin.off += (size_t)k;
			tp->dec.off = 0;
			tp->dec.len = n;
			continue;
		}
		/* Need more: at least the rest of the chunk begun. */
		n = 0;
		if (xlive(&tp->cin) >= SL_SNAPPY_HDR) {
			const uint8_t *h = tp->cin.p + tp->cin.off;

			n = SL_SNAPPY_HDR + ((size_t)h[1] | (size_t)h[2] << 8 |
					     (size_t)h[3] << 16);
			if (n > SNAPPY_CHUNK_MAX)
				n = SNAPPY_CHUNK_MAX;
			n -= xlive(&tp->cin);
		}
		k = fill_cin(tp, n);
		if (k <= 0)
			return k;
	}
}

ssize_t
sl_nsq_tp_read(struct sl_nsq_tp *tp, void *buf, size_t cap)
{
	if (tp->broken)
		return tp->broken;
	if (!buf || cap == 0)
		return SLUICE_EINVAL;
	switch (tp->comp) {
	case C_DEFLATE:
		return read_deflate(tp, buf, cap);
	case C_SNAPPY:
		return read_snappy(tp, buf, cap);
	case C_NONE:
	default:
		return lower_io(tp, buf, NULL, cap);
	}
}

bool
sl_nsq_tp_pending(const struct sl_nsq_tp *tp)
{
	if (tp->broken)
		return true; /* the read reports it at once */
	if (tp->ssl && SSL_pending(tp->ssl) > 0)
		return true;
	switch (tp->comp) {
	case C_DEFLATE:
		return tp->z_full || xlive(&tp->cin) > 0;
	case C_SNAPPY:
		return xlive(&tp->dec) > 0 ||
		       sl_snappy_dec_ready(&tp->sdec,
					   tp->cin.p ? tp->cin.p + tp->cin.off
						     : NULL,
					   xlive(&tp->cin));
	case C_NONE:
	default:
		return false;
	}
}

/* ---- writing ------------------------------------------------------------- */

int
sl_nsq_tp_write(struct sl_nsq_tp *tp, const void *p, size_t n)
{
	if (tp->broken)
		return tp->broken;
	if (!p && n)
		return SLUICE_EINVAL;
	if (xappend(&tp->plain, p, n) < 0)
		return SLUICE_ENOMEM;
	return 0;
}

static int
encode_deflate(struct sl_nsq_tp *tp)
{
	size_t in = xlive(&tp->plain);
	int rc;

	tp->zout.next_in = tp->plain.p + tp->plain.off;
	tp->zout.avail_in = 0;
	do {
		size_t step = in > UINT_MAX / 2 ? UINT_MAX / 2 : in;
		size_t room;

		tp->zout.avail_in = (uInt)step;
		in -= step;
		do {
			if (xreserve(&tp->wire,
				     (size_t)deflateBound(&tp->zout,
							  tp->zout.avail_in) +
					     16) < 0)
				return fail(tp, SLUICE_ENOMEM, "out of memory");
			room = tp->wire.cap - tp->wire.len;
			if (room > UINT_MAX)
				room = UINT_MAX;
			tp->zout.next_out = tp->wire.p + tp->wire.len;
			tp->zout.avail_out = (uInt)room;
			rc = deflate(&tp->zout, Z_SYNC_FLUSH);
			tp->wire.len += room - tp->zout.avail_out;
			if (rc != Z_OK && rc != Z_BUF_ERROR)
				return fail(tp, SLUICE_EIO, "deflate: %s",
					    tp->zout.msg ? tp->zout.msg
							 : "failed");
		} while (tp->zout.avail_out == 0 || tp->zout.avail_in);
	} while (in);
	return 0;
}

static int
encode_snappy(struct sl_nsq_tp *tp)
{
	size_t off = tp->plain.off;

	if (!tp->sid_sent) {
		if (xappend(&tp->wire, SL_SNAPPY_STREAM_ID,
			    SL_SNAPPY_STREAM_ID_LEN) < 0)
			return fail(tp, SLUICE_ENOMEM, "out of memory");
		tp->sid_sent = true;
	}
	while (off < tp->plain.len) {
		size_t n = tp->plain.len - off;
		ssize_t k;

		if (n > SL_SNAPPY_BLOCK_MAX)
			n = SL_SNAPPY_BLOCK_MAX;
		if (xreserve(&tp->wire, sl_snappy_enc_bound(n)) < 0)
			return fail(tp, SLUICE_ENOMEM, "out of memory");
		k = sl_snappy_enc_chunk(tp->plain.p + off, n,
					tp->wire.p + tp->wire.len,
					tp->wire.cap - tp->wire.len);
		if (k < 0)
			return fail(tp, SLUICE_EIO, "snappy: encode failed");
		tp->wire.len += (size_t)k;
		off += n;
	}
	return 0;
}

/* Move everything queued in plain into wire, encoded. */
static int
encode(struct sl_nsq_tp *tp)
{
	int rc = 0;

	if (!xlive(&tp->plain))
		return 0;
	switch (tp->comp) {
	case C_DEFLATE:
		rc = encode_deflate(tp);
		break;
	case C_SNAPPY:
		rc = encode_snappy(tp);
		break;
	case C_NONE:
	default:
		if (!xlive(&tp->wire)) {
			struct xbuf t = tp->wire;

			tp->wire = tp->plain;
			tp->plain = t;
			tp->plain.off = tp->plain.len = 0;
			return 0;
		}
		if (xappend(&tp->wire, tp->plain.p + tp->plain.off,
			    xlive(&tp->plain)) < 0)
			rc = fail(tp, SLUICE_ENOMEM, "out of memory");
		break;
	}
	tp->plain.off = tp->plain.len = 0;
	return rc;
}

int
sl_nsq_tp_flush(struct sl_nsq_tp *tp)
{
	int rc;

	if (tp->broken)
		return tp->broken;
	rc = encode(tp);
	if (rc < 0)
		return rc;
	while (xlive(&tp->wire)) {
		ssize_t r = lower_io(tp, NULL, tp->wire.p + tp->wire.off,
				     xlive(&tp->wire));

		if (r < 0)
			return (int)r;
		tp->wire.off += (size_t)r;
	}
	tp->wire.off = tp->wire.len = 0;
	return 0;
}

bool
sl_nsq_tp_wpending(const struct sl_nsq_tp *tp)
{
	return xlive(&tp->plain) > 0 || xlive(&tp->wire) > 0;
}

short
sl_nsq_tp_events(const struct sl_nsq_tp *tp)
{
	short ev = POLLIN;

	if (tp->rd_wants_write ||
	    ((xlive(&tp->wire) || xlive(&tp->plain)) && !tp->wr_wants_read))
		ev |= POLLOUT;
	return ev;
}

/* ---- blocking helpers ---------------------------------------------------- */

int
sl_nsq_wait_fd(int fd, short events, int64_t until)
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

/* Wait until the transport can make progress, or @until. */
static int
wait_io(struct sl_nsq_tp *tp, short events, int64_t until)
{
	if (sl_nsq_tp_pending(tp))
		return 0;
	return sl_nsq_wait_fd(tp->fd, events, until);
}

int
sl_nsq_tp_send(struct sl_nsq_tp *tp, const void *p, size_t n, int64_t until)
{
	int rc = sl_nsq_tp_write(tp, p, n);

	while (rc == 0) {
		rc = sl_nsq_tp_flush(tp);
		if (rc != SLUICE_EAGAIN)
			break;
		rc = wait_io(tp, sl_nsq_tp_events(tp), until);
	}
	return rc;
}

static int
read_exact(struct sl_nsq_tp *tp, uint8_t *buf, size_t n, int64_t until)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = sl_nsq_tp_read(tp, buf + got, n - got);
		int rc;

		if (r > 0) {
			got += (size_t)r;
			continue;
		}
		if (r == 0) {
			snprintf(tp->errtext, sizeof(tp->errtext),
				 "nsqd closed the connection");
			return SLUICE_EIO;
		}
		if (r != SLUICE_EAGAIN)
			return (int)r;
		rc = wait_io(tp, sl_nsq_tp_events(tp), until);
		if (rc < 0) {
			snprintf(tp->errtext, sizeof(tp->errtext), "%s",
				 sluice_strerror(rc));
			return rc;
		}
	}
	return 0;
}

int
sl_nsq_tp_frame(struct sl_nsq_tp *tp, uint8_t *buf, size_t cap, bool nop,
		int64_t until, struct sl_nsq_frame *f)
{
	for (;;) {
		size_t total;
		ssize_t k;
		int rc;

		if (cap < SL_NSQ_FRAME_HDR)
			return SLUICE_EMSGSIZE;
		rc = read_exact(tp, buf, SL_NSQ_FRAME_HDR, until);
		if (rc < 0)
			return rc;
		k = sl_nsq_frame(buf, SL_NSQ_FRAME_HDR, tp->max_frame, f);
		if (k < 0) {
			snprintf(tp->errtext, sizeof(tp->errtext),
				 "%s from nsqd",
				 sl_nsq_is_http(buf, 4)
					 ? "an HTTP reply (wrong port?)"
					 : "a malformed frame");
			return (int)k;
		}
		total = 4 + (size_t)sl_nsq_get_be32(buf);
		if (total > cap) {
			snprintf(tp->errtext, sizeof(tp->errtext),
				 "a %zu-byte frame where a short reply was "
				 "expected",
				 total);
			return SLUICE_EMSGSIZE;
		}
		rc = read_exact(tp, buf + SL_NSQ_FRAME_HDR,
				total - SL_NSQ_FRAME_HDR, until);
		if (rc < 0)
			return rc;
		k = sl_nsq_frame(buf, total, tp->max_frame, f);
		if (k <= 0)
			return k < 0 ? (int)k : SLUICE_EPROTO;
		if (f->type != SL_NSQ_FRAME_RESPONSE ||
		    sl_nsq_response_kind(f->data, f->len) !=
			    SL_NSQ_RESP_HEARTBEAT)
			return 0;
		if (nop) {
			uint8_t cmd[8];
			ssize_t m = sl_nsq_enc_nop(cmd, sizeof(cmd));

			rc = m > 0 ? sl_nsq_tp_send(tp, cmd, (size_t)m, until)
				   : (int)m;
			if (rc < 0)
				return rc;
		}
	}
}

/* Read the frame that must be "OK" after an upgrade step. */
static int
expect_ok(struct sl_nsq_tp *tp, const char *step, int64_t until, char *err,
	  size_t errsize)
{
	uint8_t buf[HS_FRAME_MAX];
	struct sl_nsq_frame f;
	int rc = sl_nsq_tp_frame(tp, buf, sizeof(buf), false, until, &f);

	if (rc < 0) {
		sl_nsq_seterr(err, errsize, "%s: %s", step, tp->errtext);
		return rc;
	}
	if (f.type != SL_NSQ_FRAME_RESPONSE ||
	    sl_nsq_response_kind(f.data, f.len) != SL_NSQ_RESP_OK) {
		sl_nsq_seterr(err, errsize, "%s: nsqd answered %.*s", step,
			      f.len > 200 ? 200 : (int)f.len,
			      (const char *)f.data);
		return SLUICE_EPROTO;
	}
	return 0;
}

static bool
is_ip(const char *s)
{
	unsigned char a[16];

	return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

static int
tls_setup(struct sl_nsq_tp *tp, const struct sl_nsq_tls *tls, char *err,
	  size_t errsize)
{
	static const struct sl_nsq_tls none = { 0 };
	char why[160];
	BIO *bio;

	if (!tls)
		tls = &none;
	if (pthread_once(&sock_once, make_meth) != 0 || !sock_meth)
		return SLUICE_ENOMEM;
	ERR_clear_error();
	tp->ctx = SSL_CTX_new(TLS_client_method());
	if (!tp->ctx)
		return SLUICE_ENOMEM;
	SSL_CTX_set_min_proto_version(tp->ctx, TLS1_2_VERSION);
	if (!tls->skip_verify) {
		if (tls->ca_file
			    ? SSL_CTX_load_verify_locations(
				      tp->ctx, tls->ca_file, NULL) != 1
			    : SSL_CTX_set_default_verify_paths(tp->ctx) != 1) {
			sl_nsq_seterr(err, errsize,
				      "TLS: cannot load CA file %s: %s",
				      tls->ca_file ? tls->ca_file : "(default)",
				      ssl_reason(why, sizeof(why)));
			return SLUICE_EINVAL;
		}
		SSL_CTX_set_verify(tp->ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(tp->ctx, SSL_VERIFY_NONE, NULL);
	}
	if (tls->cert_file &&
	    (SSL_CTX_use_certificate_chain_file(tp->ctx, tls->cert_file) != 1 ||
	     SSL_CTX_use_PrivateKey_file(
		     tp->ctx, tls->key_file ? tls->key_file : tls->cert_file,
		     SSL_FILETYPE_PEM) != 1 ||
	     SSL_CTX_check_private_key(tp->ctx) != 1)) {
		sl_nsq_seterr(err, errsize,
			      "TLS: cannot use client certificate %s: %s",
			      tls->cert_file, ssl_reason(why, sizeof(why)));
		return SLUICE_EINVAL;
	}
	tp->ssl = SSL_new(tp->ctx);
	bio = tp->ssl ? BIO_new(sock_meth) : NULL;
	if (!bio)
		return SLUICE_ENOMEM;
	BIO_set_data(bio, (void *)(intptr_t)tp->fd);
	SSL_set_bio(tp->ssl, bio, bio);
	SSL_set_mode(tp->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
				      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_set_options(tp->ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
	if (tls->server_name && *tls->server_name) {
		int ok;

		if (is_ip(tls->server_name)) {
			ok = X509_VERIFY_PARAM_set1_ip_asc(
				SSL_get0_param(tp->ssl), tls->server_name);
		} else {
			/* The macro casts away const: pass a copy. */
			char name[256];

			snprintf(name, sizeof(name), "%s", tls->server_name);
			ok = strlen(tls->server_name) < sizeof(name) &&
			     SSL_set_tlsext_host_name(tp->ssl, name) == 1 &&
			     SSL_set1_host(tp->ssl, name) == 1;
		}
		if (!ok) {
			sl_nsq_seterr(err, errsize, "TLS: bad server name %s",
				      tls->server_name);
			return SLUICE_EINVAL;
		}
	}
	SSL_set_connect_state(tp->ssl);
	return 0;
}

static int
tls_handshake(struct sl_nsq_tp *tp, int64_t until, char *err, size_t errsize)
{
	char why[160];

	for (;;) {
		int r, e, rc;
		short ev;

		ERR_clear_error();
		r = SSL_do_handshake(tp->ssl);
		if (r == 1)
			return 0;
		e = errno;
		switch (SSL_get_error(tp->ssl, r)) {
		case SSL_ERROR_WANT_READ:
			ev = POLLIN;
			break;
		case SSL_ERROR_WANT_WRITE:
			ev = POLLOUT;
			break;
		case SSL_ERROR_SYSCALL:
			if (ERR_peek_error() == 0) {
				sl_nsq_seterr(err, errsize, "TLS handshake: %s",
					      e ? sluice_strerror(-e)
						: "nsqd closed the connection");
				return e ? -e : SLUICE_EIO;
			}
			/* An OpenSSL error is queued: report it below. */
			__attribute__((fallthrough));
		default: {
			long v = SSL_get_verify_result(tp->ssl);

			if (v != X509_V_OK)
				sl_nsq_seterr(
					err, errsize,
					"TLS certificate verification failed: "
					"%s",
					X509_verify_cert_error_string(v));
			else
				sl_nsq_seterr(err, errsize, "TLS handshake: %s",
					      ssl_reason(why, sizeof(why)));
			ERR_clear_error();
			return SLUICE_EPROTO;
		}
		}
		rc = wait_io(tp, ev, until);
		if (rc < 0) {
			sl_nsq_seterr(err, errsize, "TLS handshake: %s",
				      sluice_strerror(rc));
			return rc;
		}
	}
}

static int
compress_on(struct sl_nsq_tp *tp, bool deflate, int level)
{
	if (!deflate) {
		tp->comp = C_SNAPPY;
		return 0;
	}
	if (level <= 0)
		level = 6;
	if (level > 9)
		level = 9;
	tp->zin.zalloc = tp->zout.zalloc = z_alloc;
	tp->zin.zfree = tp->zout.zfree = z_free;
	if (inflateInit2(&tp->zin, -15) != Z_OK)
		return SLUICE_ENOMEM;
	tp->zin_on = true;
	if (deflateInit2(&tp->zout, level, Z_DEFLATED, -15, 8,
			 Z_DEFAULT_STRATEGY) != Z_OK)
		return SLUICE_ENOMEM;
	tp->zout_on = true;
	tp->comp = C_DEFLATE;
	return 0;
}

int
sl_nsq_tp_upgrade(struct sl_nsq_tp *tp, const struct sl_nsq_features *feat,
		  const struct sl_nsq_tls *tls, int deflate_level,
		  const uint8_t *early, size_t early_len, int64_t until,
		  char *err, size_t errsize)
{
	int rc;

	sl_nsq_seterr(err, errsize, "%s", "");
	if (!tp || !feat || (!early && early_len))
		return SLUICE_EINVAL;
	if (tp->ssl || tp->comp != C_NONE) {
		sl_nsq_seterr(err, errsize,
			      "upgrade: the transport is upgraded");
		return SLUICE_EINVAL;
	}
	if (feat->deflate && feat->snappy) {
		sl_nsq_seterr(
			err, errsize,
			"nsqd granted both deflate and snappy compression");
		return SLUICE_EPROTO;
	}
	if (feat->tls_v1) {
		if (early_len) {
			sl_nsq_seterr(err, errsize,
				      "TLS: nsqd sent %zu bytes before the TLS "
				      "handshake",
				      early_len);
			return SLUICE_EPROTO;
		}
		rc = tls_setup(tp, tls, err, errsize);
		if (rc == SLUICE_ENOMEM)
			sl_nsq_seterr(err, errsize, "TLS: out of memory");
		if (rc == 0)
			rc = tls_handshake(tp, until, err, errsize);
		if (rc == 0)
			rc = expect_ok(tp, "TLS", until, err, errsize);
		if (rc < 0)
			return rc;
	}
	if (feat->deflate || feat->snappy) {
		const char *step = feat->deflate ? "deflate" : "snappy";

		rc = compress_on(tp, feat->deflate, deflate_level);
		if (rc == 0 && early_len &&
		    xappend(&tp->cin, early, early_len) < 0)
			rc = SLUICE_ENOMEM;
		if (rc < 0) {
			sl_nsq_seterr(err, errsize, "%s: out of memory", step);
			return rc;
		}
		rc = expect_ok(tp, step, until, err, errsize);
		if (rc < 0)
			return rc;
	} else if (early_len) {
		sl_nsq_seterr(err, errsize,
			      "%zu unexpected bytes after the IDENTIFY reply",
			      early_len);
		return SLUICE_EPROTO;
	}
	return 0;
}

/* ---- replies ------------------------------------------------------------- */

int
sl_nsq_refused(const struct sl_nsq_frame *f, const char *what, char *err,
	       size_t errsize)
{
	sl_nsq_seterr(err, errsize, "%s refused: %.*s", what,
		      f->len > 200 ? 200 : (int)f->len, (const char *)f->data);
	return SLUICE_EPROTO;
}

int
sl_nsq_auth_parse(const uint8_t *data, size_t len, struct sl_nsq_auth *out)
{
	json_error_t je;
	json_t *o, *v;
	const char *str;

	o = data ? json_loadb((const char *)data, len, 0, &je) : NULL;
	if (!json_is_object(o)) {
		json_decref(o);
		return SLUICE_EPROTO;
	}
	str = json_string_value(json_object_get(o, "identity"));
	snprintf(out->identity, sizeof(out->identity), "%s", str ? str : "");
	str = json_string_value(json_object_get(o, "identity_url"));
	snprintf(out->identity_url, sizeof(out->identity_url), "%s",
		 str ? str : "");
	v = json_object_get(o, "permission_count");
	out->permission_count =
		json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
	json_decref(o);
	return 0;
}
