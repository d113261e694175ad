/* SPDX-License-Identifier: MIT */
/*
 * nsq_producer.h - an NSQ producer: publishes to one nsqd over TCP.
 *
 * Publishes are queued and sent by one I/O thread.  Small publishes to the
 * same topic are coalesced into one MPUB (up to batch_max messages or
 * batch_bytes of body, or once the first has waited linger_ns); a batch of
 * one goes out as PUB, a deferred publish always as DPUB (DPUB carries one
 * body).  Several commands are in flight at once: nsqd answers each
 * PUB/MPUB/DPUB in order with OK or a (fatal) error frame, so answers are
 * matched first-in first-out, heartbeats aside (each answered with NOP).
 *
 * Results: every accepted publish gets exactly one result, through its
 * callback (on the I/O thread) or as the return of the synchronous calls:
 *   0                    nsqd answered OK: the message is queued in nsqd.
 *   SLUICE_EINVAL        nsqd refused it (E_BAD_TOPIC, E_BAD_MESSAGE,
 *                        E_BAD_BODY, E_INVALID): retrying cannot help.
 *   -EACCES              E_AUTH_*, E_UNAUTHORIZED.
 *   SLUICE_EIO           E_PUB_FAILED / E_MPUB_FAILED / E_DPUB_FAILED or
 *                        an unknown error code: nsqd could not queue it.
 *   SLUICE_EDISCONNECTED the connection dropped after the command was
 *                        written and before its answer arrived, and the
 *                        retries (config.retries) are used up.
 *   -errno / SLUICE_ETIMEDOUT / SLUICE_EPROTO  a (re)connection attempt
 *                        failed while the message waited to be sent.
 *   SLUICE_ECANCELED     the producer was freed before it was sent.
 * sluice_nsq_producer_last_error() has the text (e.g. nsqd's
 * "E_BAD_TOPIC ..." or "cannot connect to ...").
 *
 * Delivery is AT LEAST ONCE at best: a publish whose OK was not seen may
 * still have been queued by nsqd (the OK, not the command, may be what the
 * dropped connection lost), so a retried publish (config.retries > 0) can
 * be a duplicate, and an SLUICE_EDISCONNECTED result means "unknown", not
 * "not published".  Commands pipelined behind one that drew an error frame
 * were certainly not executed (nsqd closes after a fatal error, section
 * 1.6 of docs/nsq-protocol.md); they are resent on the next connection
 * without counting as a retry.  MPUB is validated as a whole by nsqd, so
 * one bad message fails its whole batch.
 *
 * Connection: sluice_nsq_producer_new() connects before it returns, so a
 * bad address is reported at once.  When the connection drops, the I/O
 * thread reconnects when there is something to send, waiting
 * reconnect_min_ns after the first failure, doubling up to
 * reconnect_max_ns; every failed attempt fails the publishes waiting at
 * that moment (they never reached nsqd), so nothing waits forever.
 *
 * Limits: nsqd does not advertise its --max-msg-size or --max-body-size
 * (section 1.5), so they are configuration: a body over max_msg_size is
 * refused locally with SLUICE_EMSGSIZE, an empty body with SLUICE_EINVAL
 * (nsqd would close the connection), and a batch never exceeds
 * max_body_size on the wire.
 *
 * Threads: every function may be called from any thread, concurrently.
 * Callbacks run on the I/O thread, never under a library lock, in the order
 * the commands were answered; they must not block for long (they hold up
 * every other publish) and must not call the synchronous functions.
 * Not done yet: TLS, compression, AUTH (a server asking for them is
 * refused at connect), nsqlookupd, several nsqd.
 */
#ifndef SLUICE_NSQ_PRODUCER_H
#define SLUICE_NSQ_PRODUCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/common.h>
#include <sluice/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sluice_nsq_producer_config {
	const char *host;         /* name or address; default "127.0.0.1" */
	uint16_t port;            /* default 4150 */
	const char *client_id;    /* shown in nsqd's stats; default "sluice" */
	uint32_t heartbeat_ms;    /* 0 = server default (30 s); the connection
				     is declared dead after two intervals
				     without a byte from nsqd */
	size_t max_msg_size;      /* nsqd --max-msg-size; default 1 MiB */
	size_t max_body_size;     /* nsqd --max-body-size (a whole MPUB);
				     default 5 MiB */
	size_t batch_max;         /* messages per MPUB; default 1024; 1 = no
				     batching (one PUB each) */
	size_t batch_bytes;       /* MPUB body bytes; default 1 MiB, capped by
				     max_body_size */
	int64_t linger_ns;        /* longest a partial batch waits for more;
				     default 1 ms; 0 = send each turn */
	size_t queue_bytes;       /* bytes queued and in flight before
				     publish_async() blocks; default 64 MiB */
	uint32_t retries;         /* resends of a publish whose connection
				     dropped before its answer (duplicates
				     possible); default 0 */
	int64_t timeout_ns;       /* each connect + handshake; default 10 s */
	int64_t reconnect_min_ns; /* default 100 ms */
	int64_t reconnect_max_ns; /* default 10 s */
};

/** sluice_nsq_producer_config_init() - fill @cfg with the defaults above. */
SLUICE_API void
sluice_nsq_producer_config_init(struct sluice_nsq_producer_config *cfg);

struct sluice_nsq_producer;

/*
 * The result of one publish: @result as in the table at the top.  @arg is
 * what was given with it.  Runs on the I/O thread.
 */
typedef void sluice_nsq_publish_fn(void *arg, int result);

/**
 * sluice_nsq_producer_new() - connect (magic, IDENTIFY) within
 * cfg->timeout_ns and start the I/O thread.
 * @err: on failure a human-readable reason; may be NULL.
 *
 * Returns: 0 and *@out (free with sluice_nsq_producer_free()),
 * SLUICE_EINVAL (bad configuration), SLUICE_ETIMEDOUT, SLUICE_EPROTO (the
 * server refused or spoke something else), SLUICE_ENOMEM, -errno.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_nsq_producer_new(const struct sluice_nsq_producer_config *cfg, char *err,
			size_t errsize, struct sluice_nsq_producer **out);

/**
 * sluice_nsq_publish_async() - queue @body (copied) for @topic.  @fn (may
 * be NULL) is called once with the result.  Blocks while queue_bytes are
 * queued (not when called from a callback).
 *
 * Returns: 0 (queued: @fn will be called), or, without calling @fn,
 * SLUICE_EINVAL (invalid topic name, empty body), SLUICE_EMSGSIZE (over
 * max_msg_size), SLUICE_ESTATE (the producer is being freed).
 */
SLUICE_API SLUICE_NODISCARD int
sluice_nsq_publish_async(struct sluice_nsq_producer *p, const char *topic,
			 const void *body, size_t len,
			 sluice_nsq_publish_fn *fn, void *arg);

/**
 * sluice_nsq_dpublish_async() - the same as DPUB: nsqd delivers it no
 * earlier than @defer_ms after it queued it (0..its --max-req-timeout,
 * 1 h by default; more draws E_INVALID).  Never batched.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_nsq_dpublish_async(struct sluice_nsq_producer *p, const char *topic,
			  uint32_t defer_ms, const void *body, size_t len,
			  sluice_nsq_publish_fn *fn, void *arg);

/**
 * sluice_nsq_publish() / sluice_nsq_dpublish() - publish and wait for the
 * result.  The message is sent at the I/O thread's next turn (no linger),
 * still coalesced with whatever else is queued for the topic.
 * Returns: the result (see the top), or an error of the _async call.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_nsq_publish(struct sluice_nsq_producer *p, const char *topic,
		   const void *body, size_t len);
SLUICE_API SLUICE_NODISCARD int
sluice_nsq_dpublish(struct sluice_nsq_producer *p, const char *topic,
		    uint32_t defer_ms, const void *body, size_t len);

/**
 * sluice_nsq_producer_flush() - send what is queued now (no linger) and
 * wait until no publish is without its result (so publishes other threads
 * queue meanwhile are waited for too) and every callback has returned, or
 * until @deadline_ns (monotonic; SLUICE_FOREVER).
 * Returns: 0 or SLUICE_ETIMEDOUT.
 */
SLUICE_API int sluice_nsq_producer_flush(struct sluice_nsq_producer *p,
					 int64_t deadline_ns);

struct sluice_nsq_producer_stats {
	uint64_t queued;    /* publishes accepted */
	uint64_t published; /* messages nsqd answered OK */
	uint64_t bytes;     /* body bytes of those */
	uint64_t failed;    /* messages with a non-zero result */
	uint64_t commands;  /* PUB + MPUB + DPUB answered OK */
	uint64_t mpubs;     /* of which MPUB */
	uint64_t dpubs;     /* of which DPUB */
	uint64_t max_batch; /* most messages in one command */
	uint64_t errors;    /* error frames from nsqd */
	uint64_t retried;   /* commands resent after a drop */
	uint64_t connects;  /* successful connections, the first included */
	uint64_t connect_failures;
	uint64_t heartbeats; /* heartbeats answered with NOP */
	uint64_t in_flight;  /* commands written, not yet answered */
	bool connected;
};

/** sluice_nsq_producer_stats() - a snapshot.  Any thread. */
SLUICE_API void
sluice_nsq_producer_stats(struct sluice_nsq_producer *p,
			  struct sluice_nsq_producer_stats *out);

/**
 * sluice_nsq_producer_last_error() - the text of the last failure (a server
 * error frame, a dropped connection, a failed connect); "" if none.
 */
SLUICE_API void sluice_nsq_producer_last_error(struct sluice_nsq_producer *p,
					       char *buf, size_t size);

/**
 * sluice_nsq_name_is_valid() - is @name a valid NSQ topic or channel name:
 * 1..64 bytes of [.a-zA-Z0-9_-], "#ephemeral" suffix allowed and counted?
 */
SLUICE_API bool sluice_nsq_name_is_valid(const char *name);

/**
 * sluice_nsq_producer_free() - flush for up to timeout_ns, then close the
 * connection and stop the I/O thread; publishes still without a result get
 * SLUICE_ECANCELED.  NULL is a no-op.  Not from a callback.
 */
SLUICE_API void sluice_nsq_producer_free(struct sluice_nsq_producer *p);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_NSQ_PRODUCER_H */
