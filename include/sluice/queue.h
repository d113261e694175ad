/* SPDX-License-Identifier: MIT */
/*
 * queue.h - the in-process source: a bounded queue with a publish API.
 *
 * The seed's buffered channel, done right: publishing blocks (up to a
 * deadline) when the queue holds `capacity` messages, counting ready,
 * delayed and leased ones, so memory is bounded however fast producers are.
 * Consumers take messages through the struct sluice_source it exposes, with
 * leases, acks, delayed requeues and an attempt counter like a real broker.
 *
 * It doubles as a deterministic test broker on an injected (virtual) clock:
 * lease expiry redelivers, and fault switches duplicate deliveries, drop
 * acks and disconnect (every lease is lost and its message redelivered).
 * A refused ack (lease stale) is counted, like NSQ's E_FIN_FAILED.
 *
 * Locking: one mutex guards everything; every operation takes it once per
 * call, and the batch calls move many messages per acquisition.
 */
#ifndef SLUICE_QUEUE_H
#define SLUICE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/clock.h>
#include <sluice/common.h>
#include <sluice/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sluice_queue;

struct sluice_queue_config {
	size_t capacity; /* messages held at most (ready+delayed+leased); > 0 */
	size_t max_body; /* larger publishes fail with SLUICE_EMSGSIZE */
	int64_t lease_ns; /* redeliver if not settled within this; 0 = never */
	const struct sluice_clock *clock; /* borrowed; NULL = monotonic */
};

/** sluice_queue_config_init() - capacity 1024, max_body 1 MiB, no lease. */
SLUICE_API void sluice_queue_config_init(struct sluice_queue_config *cfg);

/** sluice_queue_new() - Returns 0 and *@out (free with sluice_queue_free()). */
SLUICE_API SLUICE_NODISCARD int
sluice_queue_new(const struct sluice_queue_config *cfg,
		 struct sluice_queue **out);

/** sluice_queue_free() - free the queue and every message.  NULL is a no-op. */
SLUICE_API void sluice_queue_free(struct sluice_queue *q);

/**
 * sluice_queue_publish() - copy @body in as a new message, waiting while the
 * queue is full until @deadline_ns (0 = don't wait, SLUICE_FOREVER).
 * @id: optional id (NULL = a generated unique id), at most 64 bytes.
 *
 * Returns: 0, SLUICE_ETIMEDOUT (still full), SLUICE_ECLOSED (closed),
 * SLUICE_EMSGSIZE, SLUICE_EINVAL, SLUICE_ENOMEM.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_queue_publish(struct sluice_queue *q, const char *id, const void *body,
		     size_t len, int64_t deadline_ns);

/**
 * sluice_queue_publish_batch() - publish @n bodies with one lock round per
 * run of free slots; waits like sluice_queue_publish() when full.
 *
 * Returns: how many were published (all, or fewer when the deadline passed
 * or the queue closed), or a negative code if none was.
 */
SLUICE_API int sluice_queue_publish_batch(struct sluice_queue *q,
					  const struct sluice_bytes *bodies,
					  size_t n, int64_t deadline_ns);

/**
 * sluice_queue_close() - refuse further publishes.  Consumers keep receiving
 * what is queued, delayed or leased-then-requeued; fetch reports
 * SLUICE_ECLOSED once nothing is left anywhere.
 */
SLUICE_API void sluice_queue_close(struct sluice_queue *q);

/** sluice_queue_source() - the source view of @q (borrowed from @q). */
SLUICE_API struct sluice_source sluice_queue_source(struct sluice_queue *q);

struct sluice_queue_stats {
	uint64_t published;    /* accepted by publish */
	uint64_t delivered;    /* handed to a consumer, redeliveries included */
	uint64_t acked;        /* acks accepted */
	uint64_t ack_stale;    /* acks refused: lease expired or lost */
	uint64_t requeued;     /* requeue calls accepted */
	uint64_t expired;      /* leases that ran out and were redelivered */
	uint64_t duplicated;   /* extra deliveries made by the fault switch */
	uint64_t acks_dropped; /* acks swallowed by the fault switch */
	size_t ready;          /* waiting to be fetched now */
	size_t delayed;        /* requeued with a delay not yet due */
	size_t leased;         /* delivered and not settled */
	size_t held;     /* slots in use (ready + delayed + leased + ...) */
	size_t max_held; /* high-water mark of held */
};

/** sluice_queue_stats() - a consistent snapshot. */
SLUICE_API void sluice_queue_stats(struct sluice_queue *q,
				   struct sluice_queue_stats *out);

/**
 * sluice_queue_fault_duplicate() - from now on, deliver every @every-th
 * message twice (0 turns it off).  The two copies share id and body and have
 * separate leases.
 */
SLUICE_API void sluice_queue_fault_duplicate(struct sluice_queue *q,
					     unsigned every);

/**
 * sluice_queue_fault_drop_acks() - silently swallow the next @n acks: they
 * report success but the lease stays, so it expires and the message comes
 * back (needs lease_ns > 0).
 */
SLUICE_API void sluice_queue_fault_drop_acks(struct sluice_queue *q,
					     unsigned n);

/**
 * sluice_queue_disconnect() - lose every current lease at once: each leased
 * message is redelivered (attempt counted) and later acks of the old leases
 * are refused.  The next fetch returns SLUICE_EDISCONNECTED once.
 */
SLUICE_API void sluice_queue_disconnect(struct sluice_queue *q);

/**
 * sluice_queue_expire() - process the clock now: redeliver expired leases and
 * make due delayed messages ready.  Fetch does this itself; tests on a
 * virtual clock call it to observe the effect without fetching.
 */
SLUICE_API void sluice_queue_expire(struct sluice_queue *q);

/**
 * sluice_queue_take_all() - deliver up to @max waiting messages, delayed
 * ones too regardless of their due time, as leased deliveries to be acked
 * and released like fetched ones.  For a consumer shutting down with
 * nowhere to give messages back (it records them instead).
 *
 * Returns: how many (0 when nothing waits), or SLUICE_EINVAL.
 */
SLUICE_API int sluice_queue_take_all(struct sluice_queue *q,
				     struct sluice_msg **out, size_t max);

/**
 * sluice_queue_wait_idle() - block until nothing is ready, delayed or leased,
 * or @deadline_ns.  Returns 0 or SLUICE_ETIMEDOUT.
 */
SLUICE_API int sluice_queue_wait_idle(struct sluice_queue *q,
				      int64_t deadline_ns);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_QUEUE_H */
