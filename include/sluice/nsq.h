/* SPDX-License-Identifier: MIT */
/*
 * nsq.h - an NSQ consumer source over one nsqd TCP connection.
 *
 * sluice_nsq_open() connects to one nsqd, sends the magic, IDENTIFY (with
 * feature negotiation, to learn max_rdy_count and the msg_timeout in force)
 * and SUB, all before it returns.  From then on one I/O thread owns the
 * socket: it reads frames, answers heartbeats, queues messages for fetch()
 * and writes the FIN / REQ / TOUCH / RDY commands the engine's calls queue,
 * many to a write.  RDY mirrors the engine's credit exactly: the engine
 * never holds more than max_in_flight messages, so RDY = min(max_in_flight,
 * max_rdy_count) never lets nsqd push more than the engine can take.
 *
 * This first slice does NOT do: TLS, snappy/deflate, AUTH, nsqlookupd
 * discovery, more than one nsqd, consumer backoff (RDY is never lowered
 * after failures), or reconnection.  When the connection dies (EOF, a fatal
 * error frame, a protocol error, missed heartbeats) fetch() returns
 * SLUICE_EDISCONNECTED once and 0 ever after, and acks, requeues and touches
 * of messages delivered on it are refused: nsqd redelivers those messages
 * after their msg_timeout.
 *
 * Attempts: nsqd counts every delivery itself, so requeue()'s count_attempt
 * false (the engine's drain hand-back) cannot be honoured: the next delivery
 * still carries attempts + 1.
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
	const char *host;        /* name or address; default "127.0.0.1" */
	uint16_t port;           /* default 4150 */
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
};

/** sluice_nsq_config_init() - fill @cfg with the defaults above. */
SLUICE_API void sluice_nsq_config_init(struct sluice_nsq_config *cfg);

struct sluice_nsq;

/**
 * sluice_nsq_open() - connect, IDENTIFY and SUB (synchronously, within
 * cfg->timeout_ns of real time), then start the I/O thread.  RDY stays 0
 * until the engine passes its credit through set_credit.
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

struct sluice_nsq_stats {
	/* negotiated */
	uint32_t max_rdy_count;  /* from the IDENTIFY reply (2500 if "OK") */
	uint32_t msg_timeout_ms; /* in force on this connection */
	uint32_t heartbeat_ms;   /* the interval asked for, or 30000 */
	uint32_t rdy;            /* the last RDY queued */
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
	bool connected;        /* false once the connection died or closed */
	int error;             /* why it died (0 while alive / clean close) */
};

/** sluice_nsq_stats() - a snapshot.  Any thread. */
SLUICE_API void sluice_nsq_stats(struct sluice_nsq *n,
				 struct sluice_nsq_stats *out);

/**
 * sluice_nsq_last_error() - copy the text of the error that killed the
 * connection (e.g. the server's "E_BAD_TOPIC ...") into @buf; "" while it
 * is alive.
 */
SLUICE_API void sluice_nsq_last_error(struct sluice_nsq *n, char *buf,
				      size_t size);

/**
 * sluice_nsq_free() - close (CLS, wait for CLOSE_WAIT, close the socket) if
 * the engine did not, then free.  Call it after sluice_engine_free(): every
 * message must have been released.  NULL is a no-op.
 */
SLUICE_API void sluice_nsq_free(struct sluice_nsq *n);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_NSQ_H */
