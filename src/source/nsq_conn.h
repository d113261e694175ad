/* SPDX-License-Identifier: MIT */
/*
 * nsq_conn.h - one nsqd TCP connection's blocking handshake, internal.
 *
 * Shared by the NSQ consumer (nsq_source.c) and the NSQ producer: connect
 * with a deadline, send the magic and IDENTIFY (with feature negotiation),
 * parse the reply into struct sl_nsq_ident, run the upgrade step (TLS /
 * snappy / deflate, see sl_nsq_conn_identify()), AUTH when nsqd asks for
 * it, and for consumers SUB.  Every step blocks on poll() until an absolute
 * deadline on the monotonic clock (sl_mono_ns()); the socket itself is
 * non-blocking and stays so afterwards, for the caller's own event loop.
 *
 * After the handshake the caller owns c->fd and c->rbuf (bytes that came in
 * behind the last handshake reply: parse them before reading more) and
 * moves data with sl_nsq_conn_read() / sl_nsq_conn_write(), the single
 * place the transport layers (TLS, deflate, snappy: nsq_transport.h) sit, so
 * callers never read or write c->fd directly.  An event loop polls c->fd for
 * sl_nsq_conn_events(), must not sleep while sl_nsq_conn_pending() (a layer
 * holds decoded bytes), and calls sl_nsq_conn_flush() while
 * sl_nsq_conn_wpending().  Without an upgrade (c->tp NULL) these are plain
 * read/send, POLLIN(|POLLOUT), false, false.
 *
 * Heartbeats that arrive during the handshake are answered with NOP by
 * sl_nsq_conn_frame().
 *
 * Not thread-safe: one connection, one thread at a time.  Nothing here
 * keeps global state.
 */
#ifndef SL_SOURCE_NSQ_CONN_H
#define SL_SOURCE_NSQ_CONN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/nsq.h"
#include "source/nsq_transport.h"

#define SL_NSQ_DEFAULT_MAX_RDY   2500u
#define SL_NSQ_DEFAULT_HB_MS     30000u
#define SL_NSQ_DEFAULT_MSG_TO_MS 60000u

/* A growable byte buffer (sl_malloc'd; zero-initialised = empty). */
struct sl_nsq_buf {
	uint8_t *p;
	size_t len, cap;
};

/* Make room for @more bytes after b->len; 0 or SLUICE_ENOMEM. */
int sl_nsq_buf_reserve(struct sl_nsq_buf *b, size_t more);
/* Drop the first @n bytes. */
void sl_nsq_buf_consume(struct sl_nsq_buf *b, size_t n);
void sl_nsq_buf_free(struct sl_nsq_buf *b);

/* What the client asks for in IDENTIFY (section 2.1).  Zero = default. */
struct sl_nsq_conn_config {
	const char *client_id;   /* default "sluice" */
	const char *user_agent;  /* default "sluice/<version>" */
	uint32_t heartbeat_ms;   /* 0 = server default (30 s) */
	uint32_t msg_timeout_ms; /* 0 = server default */
	uint32_t sample_rate;    /* 0..99 */
	size_t max_body;         /* largest message body accepted (1 MiB) */
	/* Features to request (section 6).  TLS asked for and not granted
	 * fails the handshake (no silent plaintext); a compression not
	 * granted is fine. */
	bool tls_v1, snappy, deflate;
	struct sl_nsq_tls tls;   /* TLS settings (server_name: the host) */
	int deflate_level;       /* 0 = server default */
	const void *auth_secret; /* sent with AUTH when nsqd wants it */
	size_t auth_secret_len;
};

/* What the IDENTIFY reply said (parsed by key; missing = the default). */
struct sl_nsq_ident {
	bool json;              /* false: plain "OK" (no negotiation) */
	uint32_t max_rdy_count; /* 2500 when not JSON */
	uint32_t msg_timeout_ms;
	uint32_t max_msg_timeout_ms; /* 0 = unknown */
	uint32_t heartbeat_ms;       /* what we asked for, or 30000 */
	uint32_t output_buffer_timeout_ms;
	uint32_t sample_rate;
	int deflate_level;
	bool tls_v1, snappy, deflate, auth_required;
	char version[32];
};

struct sl_nsq_conn {
	int fd;                 /* -1 when closed; non-blocking */
	size_t max_frame;       /* largest frame size field accepted */
	struct sl_nsq_buf rbuf; /* bytes read, not yet parsed */
	struct sl_nsq_ident ident;
	struct sl_nsq_tp *tp;    /* the upgraded stream; NULL = plain socket */
	struct sl_nsq_auth auth; /* the AUTH reply; zero when none was sent */
};

/* Zero @c and set fd to -1 (so sl_nsq_conn_close() is always safe). */
void sl_nsq_conn_init(struct sl_nsq_conn *c, size_t max_body);

/**
 * sl_nsq_conn_connect() - resolve @host and connect (TCP_NODELAY,
 * non-blocking) before @until.  @err gets a readable reason.
 * Returns: 0, SLUICE_ENOENT (cannot resolve), SLUICE_ETIMEDOUT, -errno.
 */
int sl_nsq_conn_connect(struct sl_nsq_conn *c, const char *host, uint16_t port,
			int64_t until, char *err, size_t errsize);

/**
 * sl_nsq_conn_identify() - magic + IDENTIFY, read and parse the reply into
 * c->ident, then the upgrade step (section 6: TLS, then snappy or deflate,
 * each followed by an "OK"), then AUTH if auth_required (the reply in
 * c->auth).
 * Returns: 0, SLUICE_EPROTO (refused: @err has the server's text; or a
 * granted feature has no transport yet; or AUTH required and no secret),
 * SLUICE_ETIMEDOUT, SLUICE_EINVAL, SLUICE_ENOMEM, -errno.
 */
int sl_nsq_conn_identify(struct sl_nsq_conn *c,
			 const struct sl_nsq_conn_config *cfg, int64_t until,
			 char *err, size_t errsize);

/** sl_nsq_conn_sub() - SUB @topic @channel and wait for its OK. */
int sl_nsq_conn_sub(struct sl_nsq_conn *c, const char *topic,
		    const char *channel, int64_t until, char *err,
		    size_t errsize);

/**
 * sl_nsq_conn_handshake() - connect + identify (+ sub when @topic is not
 * NULL) before @until; on failure the connection is closed.
 */
int sl_nsq_conn_handshake(struct sl_nsq_conn *c, const char *host,
			  uint16_t port, const struct sl_nsq_conn_config *cfg,
			  const char *topic, const char *channel, int64_t until,
			  char *err, size_t errsize);

/** sl_nsq_conn_send() - write all of @p (blocking until @until). */
int sl_nsq_conn_send(struct sl_nsq_conn *c, const void *p, size_t len,
		     int64_t until);

/**
 * sl_nsq_conn_frame() - the next frame other than a heartbeat (answered
 * with NOP), as a view into c->rbuf; drop it with sl_nsq_buf_consume(
 * &c->rbuf, *@used) when done.  Blocks until @until.
 * Returns: 0, SLUICE_EIO (EOF), SLUICE_EPROTO / SLUICE_EMSGSIZE (bad
 * frame), SLUICE_ETIMEDOUT, -errno.
 */
int sl_nsq_conn_frame(struct sl_nsq_conn *c, int64_t until,
		      struct sl_nsq_frame *f, size_t *used);

/**
 * sl_nsq_conn_read() - one non-blocking read into c->rbuf (at least
 * @want bytes of room).  Returns the bytes read (> 0), 0 for "would
 * block", SLUICE_EIO for EOF, SLUICE_ENOMEM or -errno.
 */
ssize_t sl_nsq_conn_read(struct sl_nsq_conn *c, size_t want);

/** * sl_nsq_conn_write() - one non-blocking write of up to @len bytes (whole
 * commands).  With layers, all @len are taken and flushed as far as the
 * socket allows: the rest goes out with sl_nsq_conn_flush().
 * Returns the bytes taken (>= 0; 0 = would block) or a negative code.
 */
ssize_t sl_nsq_conn_write(struct sl_nsq_conn *c, const void *p, size_t len);

/** sl_nsq_conn_events() - poll events for c->fd (@want_write: the caller
 * has bytes to write). */
short sl_nsq_conn_events(const struct sl_nsq_conn *c, bool want_write);

/** sl_nsq_conn_pending() - can a read return bytes without c->fd being
 * readable (a layer holds some)?  Do not sleep in poll() while true. */
bool sl_nsq_conn_pending(const struct sl_nsq_conn *c);

/** sl_nsq_conn_wpending() - are bytes accepted by sl_nsq_conn_write()
 * still unsent inside the layers? */
bool sl_nsq_conn_wpending(const struct sl_nsq_conn *c);

/** sl_nsq_conn_flush() - send what the layers hold: 0 when all is out,
 * SLUICE_EAGAIN when some is left (poll, call again), or an error. */
int sl_nsq_conn_flush(struct sl_nsq_conn *c);

/**
 * sl_nsq_kick() - wake the I/O thread polling the eventfd @evfd unless
 * *@kicked says a wake-up is already on its way (seq_cst; the thread
 * clears it before reading the eventfd).
 */
void sl_nsq_kick(int evfd, atomic_bool *kicked);

/** sl_nsq_conn_close() - close the socket, free the buffer.  Idempotent. */
void sl_nsq_conn_close(struct sl_nsq_conn *c);

#endif /* SL_SOURCE_NSQ_CONN_H */
