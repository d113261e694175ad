/* SPDX-License-Identifier: MIT */
/*
 * nsq_transport.h - the byte stream of one nsqd connection after its
 * negotiated upgrades (docs/nsq-protocol.md section 6): optional TLS, then
 * optional raw DEFLATE or snappy framing, over a connected socket.
 * Internal.
 *
 * Two halves:
 *
 * 1. The handshake (blocking, with a deadline; the caller's thread):
 *    sl_nsq_tp_new() wraps a connected socket (made non-blocking) as a
 *    plain transport.  After the caller has written IDENTIFY and read its
 *    reply with exact-length reads, sl_nsq_features_parse() reads the
 *    reply's flags and sl_nsq_tp_upgrade() performs section 6.1 exactly:
 *    TLS handshake, the "OK" frame through TLS, then compression on and
 *    its "OK" through it; nothing is written in between.  Then
 *    sl_nsq_tp_auth() sends AUTH when the reply said auth_required.
 *    sl_nsq_tp_handshake() does all of it (magic, IDENTIFY, upgrade, AUTH)
 *    for a caller that has nothing to add.
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
 * Plugging into nsq_conn.{h,c} (the shared handshake): in
 * sl_nsq_conn_identify(), once the reply is parsed and any of tls_v1 /
 * snappy / deflate is granted, create the transport on c->fd, call
 * sl_nsq_tp_upgrade() with c->rbuf's unparsed bytes as @early (then empty
 * c->rbuf), keep it in c->transport and do AUTH with sl_nsq_tp_auth().
 * sl_nsq_conn_read() becomes sl_nsq_tp_read() (its SLUICE_EAGAIN is their
 * "0 = would block", its 0 their SLUICE_EIO), sl_nsq_conn_write() becomes
 * sl_nsq_tp_write() + sl_nsq_tp_flush(), and the poll loop asks
 * sl_nsq_tp_events() / sl_nsq_tp_pending().  Between IDENTIFY and the
 * upgrade's last "OK" nothing may be written, not even a NOP for a
 * heartbeat.  sl_nsq_tp_handshake() below is the same sequence on its own,
 * for tests and tools.
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

/**
 * sl_nsq_features_parse() - read the IDENTIFY reply @data[0..@len) (the
 * data of a response frame): "OK" or a JSON object, keys by name, missing
 * ones false / -1.
 * Returns: 0, or SLUICE_EPROTO for neither "OK" nor a JSON object.
 */
int sl_nsq_features_parse(const uint8_t *data, size_t len,
			  struct sl_nsq_features *out);

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
	int64_t permission_count;
};

/**
 * sl_nsq_tp_auth() - AUTH with @secret[0..@len) and read the reply.
 * Returns: 0 and *@out (may be NULL); SLUICE_EPROTO with @err holding the
 * server's error text ("AUTH refused: E_AUTH_FAILED AUTH failed") or
 * describing an unreadable reply; SLUICE_EINVAL for an empty secret;
 * SLUICE_ETIMEDOUT; a socket error.
 */
int sl_nsq_tp_auth(struct sl_nsq_tp *tp, const void *secret, size_t len,
		   int64_t until, struct sl_nsq_auth *out, char *err,
		   size_t errsize);

/* Everything sl_nsq_tp_handshake() sends and needs. */
struct sl_nsq_hs_config {
	const char *client_id, *hostname, *user_agent; /* NULL: omitted */
	int heartbeat_ms;   /* 0: server default; -1 disables */
	int msg_timeout_ms; /* 0: server default */
	bool tls_v1;        /* ask for TLS; not granted is an error */
	struct sl_nsq_tls tls;
	bool deflate, snappy;    /* ask for one (both is SLUICE_EINVAL) */
	int deflate_level;       /* 1..9; 0 = 6 */
	const char *auth_secret; /* sent if nsqd requires AUTH; NULL while
				    it does is an error */
	size_t max_frame;        /* largest frame size field; 0 = 1 MiB+ */
};

/**
 * sl_nsq_tp_handshake() - on the connected socket @fd: magic, IDENTIFY
 * with feature negotiation, the granted upgrades, AUTH if required; all
 * before @until.  On success *@out is the transport for the I/O loop,
 * *@feat (may be NULL) what was negotiated, *@auth (may be NULL) the AUTH
 * reply (zeroed if none was needed).  Nothing beyond the last reply has
 * been read.
 * Returns: 0, or the errors of the steps with @err saying which step and
 * why (the server's own error text when it sent one).
 */
int sl_nsq_tp_handshake(int fd, const struct sl_nsq_hs_config *cfg,
			int64_t until, struct sl_nsq_tp **out,
			struct sl_nsq_features *feat, struct sl_nsq_auth *auth,
			char *err, size_t errsize);

#endif /* SL_SOURCE_NSQ_TRANSPORT_H */
