/* SPDX-License-Identifier: MIT */
/*
 * nsq_transport.h - the byte stream of one nsqd connection after its
 * negotiated upgrades (docs/nsq-protocol.md section 6): optional TLS, then
 * optional raw DEFLATE or snappy framing, over a connected socket.
 * Internal.
 *
 * Two halves:
 *
 * 1. The upgrade (blocking, with a deadline; the caller's thread):
 *    sl_nsq_tp_new() wraps a connected socket (made non-blocking) as a
 *    plain transport.  After the caller has written IDENTIFY and read its
 *    reply, sl_nsq_tp_upgrade() performs section 6.1 exactly: TLS
 *    handshake, the "OK" frame through TLS, then compression on and its
 *    "OK" through it; nothing is written in between.  The handshake around
 *    it (magic, IDENTIFY, AUTH, SUB) is nsq_conn.c's sl_nsq_conn_identify().
 *
 * 2. The I/O loop (non-blocking; one thread owns the transport): call
 *    sl_nsq_tp_read()/sl_nsq_tp_write()/sl_nsq_tp_flush() where read(2)/
 *    write(2) were called, and poll for sl_nsq_tp_events().  The contract:
 *
 *      for (;;) {
 *              struct pollfd p = { fd, sl_nsq_tp_events(tp) };
 *              poll(&p, 1, sl_nsq_tp_pending(tp) ? 0 : timeout);
 *              if (p.revents || sl_nsq_tp_pending(tp))
 *                      n = sl_nsq_tp_read(tp, buf, cap);  // >0, 0, EAGAIN
 *              ... append commands: sl_nsq_tp_write(tp, cmd, len) ...
 *              if (sl_nsq_tp_wpending(tp))
 *                      sl_nsq_tp_flush(tp);               // 0 or EAGAIN
 *      }
 *
 *    - Call read whenever the socket polled ready for anything (TLS may
 *      need POLLOUT to make a read progress and POLLIN to make a write
 *      progress) or pending() is true (OpenSSL or the decompressor holds
 *      bytes already: poll would sleep on them).  Reading until EAGAIN is
 *      not required, but then pending() must be checked before sleeping.
 *    - write() only queues plaintext; flush() is the message boundary: it
 *      compresses everything queued (deflate with a sync flush, snappy as
 *      whole chunks) and sends what the socket takes.  Queue whole
 *      commands only, then flush: nsqd sees nothing until a flush.  Call
 *      flush again (after poll) while wpending() is true.
 *    - Any negative return other than SLUICE_EAGAIN is final: the
 *      connection is broken; sl_nsq_tp_error() says why in words.
 *
 * nsq_conn.{h,c} plugs it in: sl_nsq_conn_identify() creates the
 * transport on c->fd once the IDENTIFY reply grants any of tls_v1 / snappy
 * / deflate, hands c->rbuf's unparsed bytes to sl_nsq_tp_upgrade() as
 * @early and keeps it in c->tp; sl_nsq_conn_read()/write()/events()/
 * pending() then go through it.
 *
 * The transport does not own the socket: sl_nsq_tp_free() releases the
 * layers (no TLS close_notify is awaited), the caller closes the fd.
 * No locking: one thread at a time per transport.  Library-wide OpenSSL
 * state is initialised by OpenSSL itself (OPENSSL_init_ssl is thread-safe).
 */
#ifndef SL_SOURCE_NSQ_TRANSPORT_H
#define SL_SOURCE_NSQ_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <sluice/common.h>

#include "proto/nsq.h"

/* TLS client settings (section 6.2). */
struct sl_nsq_tls {
	const char *ca_file;     /* PEM roots; NULL: the system's default */
	const char *cert_file;   /* client certificate chain (PEM), or NULL */
	const char *key_file;    /* its key (PEM); needed with cert_file */
	const char *server_name; /* SNI and the name the certificate must
				    match (a DNS name or an IP literal);
				    normally the host dialled; NULL: no SNI
				    and no name check */
	bool skip_verify;        /* accept any certificate (tests only) */
};

/* What the IDENTIFY reply granted (section 2.1), and limits it reported. */
struct sl_nsq_features {
	bool json;          /* the reply was JSON (else plain "OK") */
	bool tls_v1;        /* start TLS now */
	bool deflate;       /* switch to raw DEFLATE now */
	bool snappy;        /* switch to snappy framing now */
	bool auth_required; /* send AUTH before SUB/PUB */
	int deflate_level;  /* nsqd's own level (informational) */
	int64_t max_rdy_count, msg_timeout, max_msg_timeout;
};

/* snprintf into @err (when not NULL and @size > 0): the handshake's, the
 * transport's and the source's error texts. */
void sl_nsq_seterr(char *err, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/**
 * sl_nsq_refused() - "@what refused: <the frame's text>" (the server's
 * error, at most 200 bytes of it) into @err, for an unexpected reply @f.
 * Returns: SLUICE_EPROTO.
 */
int sl_nsq_refused(const struct sl_nsq_frame *f, const char *what, char *err,
		   size_t errsize);

/**
 * sl_nsq_grow() - make the sl_malloc'd buffer *@p of *@cap bytes hold at
 * least @need, doubling from @first (when *@cap is 0).
 * Returns: 0, or SLUICE_ENOMEM (nothing changed).
 */
int sl_nsq_grow(uint8_t **p, size_t *cap, size_t need, size_t first);

/**
 * sl_nsq_wait_fd() - poll @fd for @events until @until (sl_mono_ns()
 * time), retrying on EINTR.
 * Returns: 0 when ready, SLUICE_ETIMEDOUT, or -errno.
 */
int sl_nsq_wait_fd(int fd, short events, int64_t until);

struct sl_nsq_tp;

/**
 * sl_nsq_tp_new() - a plain transport over the connected socket @fd, which
 * it sets non-blocking.  @max_frame bounds the frames the blocking helpers
 * read (a size field above it is an error).
 * Returns: 0, SLUICE_ENOMEM, or -errno from fcntl().
 */
int sl_nsq_tp_new(int fd, size_t max_frame, struct sl_nsq_tp **out);

/** sl_nsq_tp_free() - release the layers (not the fd).  NULL is a no-op. */
void sl_nsq_tp_free(struct sl_nsq_tp *tp);

/**
 * sl_nsq_tp_read() - up to @cap plaintext bytes into @buf.
 * Returns: the count (> 0), 0 at EOF (nsqd closed), SLUICE_EAGAIN when
 * nothing is available without blocking, SLUICE_EPROTO for a corrupt
 * stream (bad TLS record, deflate data error, snappy checksum...),
 * SLUICE_EIO / -errno for other failures; the text is in
 * sl_nsq_tp_error().
 */
ssize_t sl_nsq_tp_read(struct sl_nsq_tp *tp, void *buf, size_t cap);

/**
 * sl_nsq_tp_write() - queue @n plaintext bytes (whole commands) for the
 * next flush.  Returns: 0 or SLUICE_ENOMEM.
 */
int sl_nsq_tp_write(struct sl_nsq_tp *tp, const void *p, size_t n);

/**
 * sl_nsq_tp_flush() - compress what is queued (ending it at a message
 * boundary) and send what the socket takes.
 * Returns: 0 when everything is out, SLUICE_EAGAIN when some is left (poll
 * for sl_nsq_tp_events() and call again), or a final error.
 */
int sl_nsq_tp_flush(struct sl_nsq_tp *tp);

/** sl_nsq_tp_wpending() - are there queued or unsent bytes? */
bool sl_nsq_tp_wpending(const struct sl_nsq_tp *tp);

/**
 * sl_nsq_tp_pending() - can sl_nsq_tp_read() return data without the
 * socket being readable (OpenSSL or the decompressor hold some)?
 */
bool sl_nsq_tp_pending(const struct sl_nsq_tp *tp);

/**
 * sl_nsq_tp_events() - the poll events to wait for: POLLIN always (nsqd
 * talks unprompted), POLLOUT while unsent bytes can go out or a TLS read
 * needs to write.
 */
short sl_nsq_tp_events(const struct sl_nsq_tp *tp);

/** sl_nsq_tp_error() - why the last call failed; "" if none did. */
const char *sl_nsq_tp_error(const struct sl_nsq_tp *tp);

/** sl_nsq_tp_fd() - the socket. */
int sl_nsq_tp_fd(const struct sl_nsq_tp *tp);

/* Which layers are on (for stats and tests). */
bool sl_nsq_tp_is_tls(const struct sl_nsq_tp *tp);
bool sl_nsq_tp_is_deflate(const struct sl_nsq_tp *tp);
bool sl_nsq_tp_is_snappy(const struct sl_nsq_tp *tp);

/* ---- blocking helpers for the handshake ---------------------------------- */

/**
 * sl_nsq_tp_send() - write + flush until everything is out or @until
 * (sl_mono_ns() time).  Returns: 0, SLUICE_ETIMEDOUT or a final error.
 */
int sl_nsq_tp_send(struct sl_nsq_tp *tp, const void *p, size_t n,
		   int64_t until);

/**
 * sl_nsq_tp_frame() - read exactly the next frame (size, then that many
 * bytes: nothing beyond it is consumed) into @buf[0..@cap), skipping
 * heartbeats (answered with NOP when @nop is true; during an upgrade
 * nothing may be written).  @f views into @buf.
 * Returns: 0, SLUICE_EMSGSIZE (over the max frame or @cap), SLUICE_EPROTO
 * (bad frame), SLUICE_EIO (EOF), SLUICE_ETIMEDOUT, or a read error.
 */
int sl_nsq_tp_frame(struct sl_nsq_tp *tp, uint8_t *buf, size_t cap, bool nop,
		    int64_t until, struct sl_nsq_frame *f);

/**
 * sl_nsq_tp_upgrade() - section 6.1, right after the IDENTIFY reply was
 * read: with @feat->tls_v1 the TLS client handshake (settings @tls; NULL
 * means verify against the system roots without a name check) and the
 * "OK" frame read through TLS; then with @feat->deflate (@deflate_level
 * 1..9 for what this side sends; 0 = 6) or @feat->snappy the compressor
 * on both directions and its "OK" read through it.  @early/@early_len are
 * bytes the caller read past the IDENTIFY reply (compressed bytes nsqd
 * sent right after it); they go to the new layers.  They must be empty
 * with TLS (nsqd sends nothing before the ClientHello).
 * Returns: 0; SLUICE_EPROTO with @err saying what (TLS verification
 * failed, no "OK", both compressions granted, corrupt stream);
 * SLUICE_ETIMEDOUT; SLUICE_ENOMEM; a socket error.
 */
int sl_nsq_tp_upgrade(struct sl_nsq_tp *tp, const struct sl_nsq_features *feat,
		      const struct sl_nsq_tls *tls, int deflate_level,
		      const uint8_t *early, size_t early_len, int64_t until,
		      char *err, size_t errsize);

/* The AUTH reply (section 2.2). */
struct sl_nsq_auth {
	char identity[256];
	char identity_url[256];
	int64_t permission_count; /* -1 when not given */
};

/**
 * sl_nsq_auth_parse() - read the AUTH reply @data[0..@len) (the data of a
 * response frame), keys by name, missing strings "".
 * Returns: 0, or SLUICE_EPROTO when it is not a JSON object.
 */
int sl_nsq_auth_parse(const uint8_t *data, size_t len, struct sl_nsq_auth *out);

#endif /* SL_SOURCE_NSQ_TRANSPORT_H */
