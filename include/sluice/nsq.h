/* SPDX-License-Identifier: MIT */
/*
 * nsq.h - the NSQ consumer source: many nsqd connections feeding one engine.
 *
 * Connections come from nsqd addresses given directly (each reconnected
 * with exponential backoff and jitter when it drops) and/or from
 * nsqlookupd HTTP addresses polled on an interval with jitter (producers
 * that appear are connected, those that vanish are closed gracefully; a
 * failing lookupd is logged and skipped).  Handshakes (magic, IDENTIFY with
 * feature negotiation, SUB) run on a dialer thread; one I/O thread owns
 * every connected socket: it reads frames, answers heartbeats with NOP,
 * declares a connection silent for two heartbeat intervals dead, and writes
 * the FIN / REQ / TOUCH / RDY / CLS commands the engine's calls queue.
 *
 * Flow control follows go-nsq (docs/nsq-protocol.md section 8.3): the
 * engine's credit (free worker slots + prefetch) is the max_in_flight
 * budget, spread as max(1, credit / connections) per connection, capped by
 * each nsqd's max_rdy_count; with more connections than credit RDY 1
 * rotates among them, taken back from connections idle for low_rdy_idle_ns.
 * The sum of the RDY counts in force never exceeds the credit.
 *
 * Consumer backoff (section 8.5): an engine requeue that counts an attempt
 * (TEMPORARY error, TIMEOUT) is a failure, an ack is a success, a hand-back
 * that does not count an attempt is neither.  Failures set RDY 0 everywhere
 * for backoff_unit_ns * 2^level; then one connection gets RDY 1 to probe;
 * successes step the level down and level 0 restores full credit.  The
 * state is the consumer's, not a connection's: it survives reconnects, and
 * a probe whose connection died is re-armed on another one.
 *
 * Auto-TOUCH: with touch_deadline_ns set (the engine's per-message
 * timeout), a message the engine still holds is TOUCHed at 2/3 of
 * msg_timeout after its delivery or last touch when its own deadline lies
 * beyond the lease, and never after that deadline.
 *
 * Attempts come from the message header (nsqd counts every delivery, so a
 * requeue's count_attempt false cannot be honoured by the broker).  When a
 * connection dies, fetch() returns SLUICE_EDISCONNECTED once, its unfetched
 * messages are dropped and settling its messages is refused (ESTALE):
 * nsqd redelivers them after msg_timeout.
 *
 * TLS (OpenSSL, certificate checked against the host dialled unless
 * tls_skip_verify), snappy or deflate compression and AUTH are negotiated
 * per connection in the handshake (section 6): TLS asked for and not
 * granted fails the connection; a compression not granted is not used.
 */
#ifndef SLUICE_NSQ_H
#define SLUICE_NSQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/clock.h>
#include <sluice/common.h>
#include <sluice/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sluice_nsq_config {
	/* Where: nsqd[] and lookupd[] may both be given; when both are
	 * empty, host:port is the one nsqd. */
	const char *host; /* name or address; default "127.0.0.1" */
	uint16_t port;    /* default 4150 */
	/* n_nsqd "HOST:PORT" ("[v6]:PORT") strings (copied) */
	const char *const *nsqd;
	size_t n_nsqd;
	/* n_lookupd nsqlookupd HTTP addresses, "HOST:PORT" or
	 * "http://HOST:PORT[/path]" (copied) */
	const char *const *lookupd;
	size_t n_lookupd;
	const char *topic;       /* required; a valid NSQ name */
	const char *channel;     /* required; a valid NSQ name */
	const char *client_id;   /* shown in nsqd's stats; default "sluice" */
	uint32_t msg_timeout_ms; /* in-flight timeout; 0 = server default */
	uint32_t heartbeat_ms;   /* heartbeat interval; 0 = server default
				    (30 s); the connection is declared dead
				    after two intervals without a byte */
	size_t max_body;         /* longest body accepted (nsqd's
				    --max-msg-size); default 1 MiB */
	int64_t timeout_ns;      /* connect + handshake in open(), and the
				    wait for CLOSE_WAIT in close(); 10 s */
	const struct sluice_clock *clock; /* fetch() deadlines: use the
					     engine's; NULL = monotonic */
	/* Discovery and reconnection (real time). */
	int64_t lookupd_poll_ns;    /* poll period; 60 s */
	double lookupd_poll_jitter; /* 0..1 of the period, random per poll;
				       0.3 */
	int64_t reconnect_min_ns;   /* first reconnect delay; 1 s */
	int64_t reconnect_max_ns;   /* its cap (doubling, jittered); 60 s */
	/* RDY redistribution when connections > credit (section 8.3). */
	int64_t rdy_redistribute_ns; /* check period; 5 s */
	int64_t low_rdy_idle_ns;     /* take RDY from a connection idle this
					long; 10 s */
	int64_t low_rdy_ns;          /* ... or holding it this long; 30 s */
	/* Consumer backoff (section 8.5). */
	int64_t backoff_unit_ns; /* duration unit; 1 s */
	int64_t backoff_max_ns;  /* level grows while unit * 2^level fits;
				    2 min; 0 = no backoff */
	/* Auto-TOUCH: the handler's deadline counted from fetch (set it to
	 * the engine's timeout_ns); 0 = never touch automatically. */
	int64_t touch_deadline_ns;

	/* TLS, compression, AUTH (section 6; strings are copied). */
	bool tls;                  /* ask for TLS; refused = failure */
	const char *tls_ca_file;   /* PEM roots; NULL = the system's */
	const char *tls_cert_file; /* client certificate (PEM) or NULL */
	const char *tls_key_file;  /* its key */
	bool tls_skip_verify;      /* accept any certificate (tests) */
	bool snappy, deflate;      /* ask for one of them */
	int deflate_level;         /* 1..9; 0 = 6 */
	const char *auth_secret;   /* AUTH when nsqd requires it */
	/* Diagnostics (dropped connections, lookupd failures): called
	 * without any sluice lock, from the source's threads; NULL = none. */
	void (*log)(void *ud, const char *line);
	void *log_ud;
};

/** sluice_nsq_config_init() - fill @cfg with the defaults above. */
SLUICE_API void sluice_nsq_config_init(struct sluice_nsq_config *cfg);

struct sluice_nsq;

/**
 * sluice_nsq_open() - connect, IDENTIFY and SUB to every nsqd given
 * directly and query each lookupd once (synchronously, each within
 * cfg->timeout_ns of real time), then start the I/O and dialer threads.
 * RDY stays 0 until the engine passes its credit through set_credit.
 * Fails when no lookupd is given and not one nsqd could be connected (the
 * error of the first); the others are retried in the background.
 * @err: on failure a human-readable reason (the server's error text when
 *       it sent one); may be NULL.
 *
 * Returns: 0 and *@out (free with sluice_nsq_free()), SLUICE_EINVAL (bad
 * configuration), SLUICE_ETIMEDOUT, SLUICE_EPROTO (the server refused or
 * spoke something else), SLUICE_ENOMEM, or -errno of a socket call.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_nsq_open(const struct sluice_nsq_config *cfg, char *err, size_t errsize,
		struct sluice_nsq **out);

/** sluice_nsq_source() - the source to give sluice_engine_new(). */
SLUICE_API struct sluice_source sluice_nsq_source(struct sluice_nsq *n);

/* Totals over all connections (sluice_nsq_stats()), or one connection's
 * (sluice_nsq_conn_stats(), which counts since that address was first
 * connected). */
struct sluice_nsq_stats {
	/* negotiated (totals: of the connection that came up last) */
	uint32_t max_rdy_count;  /* from the IDENTIFY reply (2500 if "OK") */
	uint32_t msg_timeout_ms; /* in force on this connection */
	uint32_t heartbeat_ms;   /* the interval asked for, or 30000 */
	uint32_t rdy;            /* the RDY in force (totals: the sum) */
	/* flow control */
	uint64_t credit;      /* the engine's max_in_flight (totals only) */
	uint64_t in_flight;   /* delivered, not yet FIN/REQ'd */
	uint64_t max_rdy_sum; /* highest sum of RDY ever in force */
	uint32_t connections; /* connected now (1 or 0 for one connection) */
	uint32_t backoff_level;
	bool backoff_waiting; /* a backoff period runs (RDY 0 everywhere) */
	uint64_t backoffs;    /* backoff periods started */
	uint64_t reconnects;  /* connections re-established */
	uint64_t lookupd_polls, lookupd_errors;
	/* traffic */
	uint64_t messages;    /* message frames received */
	uint64_t fins;        /* FIN commands queued */
	uint64_t reqs;        /* REQ commands queued (engine requeues) */
	uint64_t touches;     /* TOUCH commands queued */
	uint64_t heartbeats;  /* heartbeats received (each answered by NOP) */
	uint64_t handed_back; /* messages REQ'd 0 unfetched at close */
	/* failures */
	uint64_t fin_failed;   /* E_FIN_FAILED received (not fatal) */
	uint64_t req_failed;   /* E_REQ_FAILED received (not fatal) */
	uint64_t touch_failed; /* E_TOUCH_FAILED received (not fatal) */
	uint64_t refused;      /* ack/requeue/touch of a dead connection */
	uint64_t alloc_failed; /* messages REQ'd 0 for want of memory */
	uint64_t auto_touches; /* TOUCH commands sent by auto-TOUCH */
	uint64_t disconnects;  /* connections lost (not closed by us) */
	bool connected;        /* at least one connection is up */
	int error;             /* why the last connection died (0: none) */
};

/** sluice_nsq_stats() - a snapshot.  Any thread. */
SLUICE_API void sluice_nsq_stats(struct sluice_nsq *n,
				 struct sluice_nsq_stats *out);

/**
 * sluice_nsq_conn_count() - how many addresses the source knows (direct and
 * discovered, connected or not); index them with sluice_nsq_conn_stats().
 */
SLUICE_API size_t sluice_nsq_conn_count(struct sluice_nsq *n);

/**
 * sluice_nsq_conn_stats() - address @i's counters and its "HOST:PORT" in
 * @addr (may be NULL).  Returns 0 or SLUICE_ENOENT for @i out of range.
 */
SLUICE_API int sluice_nsq_conn_stats(struct sluice_nsq *n, size_t i, char *addr,
				     size_t addrsize,
				     struct sluice_nsq_stats *out);

struct sluice_metrics;

/**
 * sluice_nsq_export_metrics() - register the totals (sluice_nsq_rdy,
 * sluice_nsq_credit, sluice_nsq_in_flight, sluice_nsq_connections,
 * sluice_nsq_backoff_level, sluice_nsq_backoff_waiting and the counters
 * sluice_nsq_{messages,fin,req,touch,reconnects,backoffs,...}_total) and
 * per-connection gauges labelled addr (sluice_nsq_conn_rdy,
 * sluice_nsq_conn_in_flight, sluice_nsq_conn_connected,
 * sluice_nsq_conn_{fin,req,touch,reconnects}) in @m.  Totals are read at
 * render time; per-connection gauges are refreshed by the I/O thread about
 * every 100 ms.  @m must outlive @n's I/O thread (free @n first).
 * Returns: 0, SLUICE_EINVAL, SLUICE_EEXIST, SLUICE_ENOMEM.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_nsq_export_metrics(struct sluice_nsq *n, struct sluice_metrics *m);

/**
 * sluice_nsq_stop() - begin a graceful stop early: CLS on every connection
 * (nsqd answers CLOSE_WAIT and sends no more), no more reconnects or
 * lookupd polls.  In-flight messages can still be settled.  Call it before
 * sluice_engine_stop(); the engine's close() finishes the job.  Any thread.
 */
SLUICE_API void sluice_nsq_stop(struct sluice_nsq *n);

/**
 * sluice_nsq_last_error() - copy the text of the error that killed the
 * last connection (e.g. the server's "E_BAD_TOPIC ...") into @buf; "" if
 * none died.
 */
SLUICE_API void sluice_nsq_last_error(struct sluice_nsq *n, char *buf,
				      size_t size);

/**
 * sluice_nsq_free() - close (CLS on all, wait for CLOSE_WAIT, REQ 0 what
 * nsqd still sends, close the sockets) if the engine did not, then free.  Call
 * it after sluice_engine_free(): every message must have been released.  NULL
 * is a no-op.
 */
SLUICE_API void sluice_nsq_free(struct sluice_nsq *n);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_NSQ_H */
