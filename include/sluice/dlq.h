/* SPDX-License-Identifier: MIT */
/*
 * dlq.h - dead-letter sinks: where messages go that will never succeed.
 *
 * The engine writes a message here when it failed PERMANENT or used up its
 * attempts, and acknowledges it to its source only after write() returned 0;
 * a failed write leaves the message with the source (requeued), so nothing is
 * lost even when the sink is broken.
 *
 * The file sink appends one JSON object per line:
 *   {"time":"2026-11-27T13:56:21.123Z","source":"queue","id":"...",
 *    "attempts":3,"class":"temporary","code":75,"reason":"...",
 *    "body":"..."}
 * "body" holds the body as a JSON string when it is valid UTF-8, otherwise
 * the field is "body_base64".  Lines are written whole with one write(2) on
 * an O_APPEND descriptor, so concurrent writers never interleave.
 *
 * The NSQ sink publishes the same JSON object (without the '\n') as the
 * body of one message to an NSQ topic, and reports success only once nsqd
 * answered OK, so the original is acknowledged only after its record is
 * queued in nsqd (at least once: a record whose OK was lost with the
 * connection may be published again when the message comes back).
 */
#ifndef SLUICE_DLQ_H
#define SLUICE_DLQ_H

#include <stdbool.h>

#include <sluice/common.h>
#include <sluice/error.h>
#include <sluice/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sluice_dlq_ops {
	const char *name;
	/*
	 * Store @msg with the reason @why (borrowed; NULL when the engine
	 * dead-letters for its own reasons).  @source names its source.
	 * Returns 0 only when the record is durable enough to ack the
	 * original.  Threads: called by several workers at once.
	 */
	int (*write)(void *self, const char *source,
		     const struct sluice_msg *msg,
		     const struct sluice_error *why);
	/* Flush and free; called once. */
	void (*close)(void *self);
};

struct sluice_dlq {
	const struct sluice_dlq_ops *ops;
	void *self;
};

/**
 * sluice_dlq_file_open() - a sink appending JSON lines to @path (created
 * 0644 if missing).  @fsync_each: fdatasync after every record.
 *
 * Returns: 0 and *@out (close with sluice_dlq_close()), or -errno.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_dlq_file_open(const char *path, bool fsync_each, struct sluice_dlq *out);

/**
 * sluice_dlq_format() - the JSON line (with '\n') the file sink writes for
 * @msg, into @buf.  @time_ns is wall-clock (CLOCK_REALTIME) nanoseconds.
 * Returns: the length needed (like snprintf), or a negative code.
 */
SLUICE_API int64_t sluice_dlq_format(char *buf, size_t size, int64_t time_ns,
				     const char *source,
				     const struct sluice_msg *msg,
				     const struct sluice_error *why);

struct sluice_nsq_producer;

/**
 * sluice_dlq_nsq_open() - a sink publishing each record (the JSON object
 * above, without its '\n') to @topic through @p (see nsq_producer.h).
 * write() waits for nsqd's answer; concurrent writes share MPUBs.
 * @own: the sink frees @p on close; otherwise @p is borrowed until then.
 *
 * Returns: 0 and *@out, SLUICE_EINVAL (invalid topic name), SLUICE_ENOMEM.
 * On failure @p is not freed even when @own.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_dlq_nsq_open(struct sluice_nsq_producer *p, bool own, const char *topic,
		    struct sluice_dlq *out);

/** sluice_dlq_close() - close @d (a no-op when its ops are NULL). */
SLUICE_API void sluice_dlq_close(struct sluice_dlq *d);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_DLQ_H */
