/* SPDX-License-Identifier: MIT */
/*
 * stream.h - a source reading framed messages from files or stdin.
 *
 * A reader thread parses the input (see framing.h) and publishes each
 * message into an in-process queue of bounded capacity, so reading runs
 * ahead of processing by at most that many messages and a slow consumer
 * slows the reader instead of filling memory.  The engine consumes the
 * queue's source.  Messages are numbered from 1 in input order; the id is
 * that number in 16 hex digits.  At end of input the queue is closed, and
 * the source reports SLUICE_ECLOSED once every message read was settled.
 *
 * A stream has no broker to give messages back to: retries wait in the
 * queue, and at shutdown sluice_stream_take_unfinished() hands over what
 * was read but not finished, so the caller can record it.
 */
#ifndef SLUICE_STREAM_H
#define SLUICE_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/clock.h>
#include <sluice/common.h>
#include <sluice/framing.h>
#include <sluice/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sluice_stream;

struct sluice_stream_config {
	/* Inputs read one after another; NULL or empty = stdin.  "-" is
	 * stdin too.  Borrowed until sluice_stream_free(). */
	const char *const *paths;
	size_t npaths;
	enum sluice_framing framing;
	size_t max_body; /* longer messages stop the stream with an error;
			    default 1 MiB */
	size_t capacity; /* messages read ahead at most; default 1024 */
	uint64_t limit;  /* stop after this many messages; 0 = all */
	const struct sluice_clock *clock; /* borrowed; NULL = monotonic */
};

/** sluice_stream_config_init() - stdin, line framing, the defaults above. */
SLUICE_API void sluice_stream_config_init(struct sluice_stream_config *cfg);

/**
 * sluice_stream_open() - open every input (so a missing file fails here,
 * before anything is read) and start reading.
 *
 * Returns: 0 and *@out (free with sluice_stream_free()), -errno from open(2)
 * with @err naming the file, SLUICE_EINVAL, SLUICE_ENOMEM.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_stream_open(const struct sluice_stream_config *cfg, char *err,
		   size_t errsize, struct sluice_stream **out);

/** sluice_stream_source() - the source to give the engine; borrowed. */
SLUICE_API struct sluice_source sluice_stream_source(struct sluice_stream *s);

/**
 * sluice_stream_stop() - stop reading now (shutdown): what was read stays
 * to be processed or taken; nothing more is read.  Any thread; idempotent.
 */
SLUICE_API void sluice_stream_stop(struct sluice_stream *s);

/**
 * sluice_stream_finish() - wait for the reader to end (after end of input,
 * the limit, an error or stop()).
 *
 * Returns: 0, or the error that ended reading (SLUICE_EMSGSIZE,
 * SLUICE_EPROTO, -errno of read(2)) with @err describing it, e.g.
 * "stdin: message 42 is longer than 1048576 bytes".
 */
SLUICE_API int sluice_stream_finish(struct sluice_stream *s, char *err,
				    size_t errsize);

/**
 * sluice_stream_take_unfinished() - after the engine stopped: deliver up to
 * @max messages that were read but not finished (waiting or waiting to be
 * retried).  Ack and release them through the source like fetched ones.
 * Returns: the count, 0 when none are left.
 */
SLUICE_API int sluice_stream_take_unfinished(struct sluice_stream *s,
					     struct sluice_msg **out,
					     size_t max);

struct sluice_stream_stats {
	uint64_t messages; /* read and queued */
	uint64_t bytes;    /* input bytes consumed */
	int eof;           /* every input was read to its end */
};

/** sluice_stream_stats() - a snapshot; any thread. */
SLUICE_API void sluice_stream_stats(struct sluice_stream *s,
				    struct sluice_stream_stats *out);

/** sluice_stream_free() - stop, join the reader, free.  NULL is a no-op. */
SLUICE_API void sluice_stream_free(struct sluice_stream *s);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_STREAM_H */
