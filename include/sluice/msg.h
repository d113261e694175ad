/* SPDX-License-Identifier: MIT */
/*
 * msg.h - messages and the source interface every broker driver implements.
 *
 * A message is created by its source and stays the source's: the engine
 * lends it to one handler, which borrows it until the handler returns, then
 * settles it (ack, requeue or dead-letter) and gives it back with release.
 * Settling and releasing are separate steps because a message can be settled
 * (requeued at its deadline) while a handler that ignores cancellation still
 * reads it; the memory stays valid until release.
 *
 * The fields of struct sluice_msg are set by the source before delivery and
 * are read-only for everyone else.
 */
#ifndef SLUICE_MSG_H
#define SLUICE_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A borrowed view of bytes. */
struct sluice_bytes {
	const void *ptr;
	size_t len;
};

#define SLUICE_MSG_ID_MAX 64

/* 56 bytes on LP64: the header a handler reads fits one cache line. */
struct sluice_msg {
	const uint8_t *body; /* binary-safe; may hold NUL; not terminated */
	size_t body_len;
	int64_t timestamp_ns; /* when it was enqueued (source's clock) */
	uint32_t attempts;    /* deliveries so far, this one included (>= 1) */
	uint8_t id_len;       /* bytes at id, at most SLUICE_MSG_ID_MAX */
	const char *id;       /* owned by the source; not NUL-terminated */
	/* Source-private: the lease (delivery handle) and anything else. */
	uint64_t lease;
	void *source_data;
};

/** sluice_msg_body() - the body as a borrowed view. */
SLUICE_API struct sluice_bytes sluice_msg_body(const struct sluice_msg *m);

/** sluice_msg_id() - the id bytes; *@len gets their count. */
SLUICE_API const char *sluice_msg_id(const struct sluice_msg *m, size_t *len);

/** sluice_msg_attempts() - deliveries so far, this one included. */
SLUICE_API uint32_t sluice_msg_attempts(const struct sluice_msg *m);

/** sluice_msg_timestamp_ns() - the enqueue time on the source's clock. */
SLUICE_API int64_t sluice_msg_timestamp_ns(const struct sluice_msg *m);

/*
 * The source interface.  The engine calls these; users call only the
 * constructors of concrete sources (sluice_queue_source(), ...).
 *
 * Credit: the engine never holds more than max_in_flight messages (fetched
 * and not yet released); it passes that limit once through set_credit and
 * never asks fetch for more than it may still hold, so a source that grants
 * credit to a broker (NSQ RDY, XREADGROUP COUNT) can mirror it exactly.
 */
struct sluice_source_ops {
	const char *name; /* "queue", "nsq", "redis", "stdin" */

	/*
	 * Take up to @max ready messages into @out, waiting until at least one
	 * is ready, @deadline_ns passes, or wakeup() is called.
	 * Returns: the count (0 after deadline/wakeup), SLUICE_ECLOSED when no
	 * message will ever be ready again, SLUICE_EDISCONNECTED when leases
	 * were lost (the engine carries on), or another negative code.
	 * Threads: called by several workers at once.
	 */
	int (*fetch)(void *self, struct sluice_msg **out, size_t max,
		     int64_t deadline_ns);

	/*
	 * Acknowledge @n handled messages.  Returns how many acks were refused
	 * because the lease was no longer valid (>= 0), or a negative code.
	 */
	int (*ack)(void *self, struct sluice_msg *const *msgs, size_t n);

	/*
	 * Give @msg back for redelivery after @delay_ns.  @count_attempt false
	 * asks the source not to count this delivery (drain hand-back) where
	 * the broker allows it.  Returns 0 or a negative code (SLUICE_ESTALE).
	 */
	int (*requeue)(void *self, struct sluice_msg *msg, int64_t delay_ns,
		       bool count_attempt);

	/* Extend @msg's lease.  Optional (NULL). */
	int (*touch)(void *self, struct sluice_msg *msg);

	/* Free @n settled messages that no handler reads any more. */
	void (*release)(void *self, struct sluice_msg *const *msgs, size_t n);

	/* Make every blocked fetch() return 0 soon.  Any thread. */
	void (*wakeup)(void *self);

	/* The engine's max_in_flight, once before the first fetch.  Optional.
	 */
	void (*set_credit)(void *self, size_t max_in_flight);

	/* Stop delivering; called once, after the engine settled everything. */
	void (*close)(void *self);
};

/* A source: its operations and their receiver.  Copied by value. */
struct sluice_source {
	const struct sluice_source_ops *ops;
	void *self;
};

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_MSG_H */
