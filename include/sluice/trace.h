/* SPDX-License-Identifier: MIT */
/*
 * trace.h - the execution trace: what every sluice thread did and when,
 * written as Chrome Trace Event JSON or Perfetto TrackEvent protobuf (open
 * either in ui.perfetto.dev; `go tool trace` cannot read them).
 *
 * While a trace records, sluice's own threads log slices (fetch, handler,
 * ack, park...), counters (credit, held, running), flows (a message handed
 * from the fetching thread to the one that runs it) and one async span per
 * message delivery (received -> queued -> handler -> settled -> released).
 * Applications may add their own slices, instants and counters below.
 *
 * Recording costs one relaxed load per probe when off and, when on, about
 * one TSC read and a 40-byte store into a per-thread chunk (no lock, no
 * allocation after a thread's first event).  Memory is bounded: all chunks
 * come from one pre-faulted pool of opts.buffer_bytes.  When it is used up,
 * either recording stops and further events are counted as dropped
 * (default), or, in ring mode (a flight recorder), each thread overwrites
 * its own oldest chunk, so the trace keeps the most recent events.
 *
 * One trace at a time per process.  Write it after sluice_trace_stop():
 * the writer closes slices a start or stop cut in half and leaves out
 * flows and async spans whose other half was not recorded, so the output
 * always nests and matches.
 */
#ifndef SLUICE_TRACE_H
#define SLUICE_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <sluice/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sluice_trace_options {
	size_t buffer_bytes; /* the whole pool; 8 MiB by default; at least
				4 KiB, at most 1 GiB */
	bool ring;           /* flight recorder: keep the newest events */
};

/** sluice_trace_options_init() - the defaults above (8 MiB, not ring). */
SLUICE_API void sluice_trace_options_init(struct sluice_trace_options *o);

/**
 * sluice_trace_start() - discard the previous trace and start recording.
 * @o: NULL for the defaults.
 *
 * Returns: 0, SLUICE_EBUSY (already recording), SLUICE_EINVAL (size out
 * of range), SLUICE_ENOMEM.
 * Threads: any thread; start, stop and the writers are serialised.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_trace_start(const struct sluice_trace_options *o);

/**
 * sluice_trace_stop() - stop recording; returns once no thread is still
 * inside a probe.  The trace stays until the next start.
 *
 * Returns: 0, or SLUICE_ESTATE when not recording.
 */
SLUICE_API int sluice_trace_stop(void);

/** sluice_trace_enabled() - whether a trace is recording now. */
SLUICE_API bool sluice_trace_enabled(void);

enum sluice_trace_format {
	SLUICE_TRACE_JSON = 0,     /* Chrome Trace Event JSON (object form) */
	SLUICE_TRACE_PERFETTO = 1, /* Perfetto Trace protobuf */
};

/**
 * sluice_trace_write() - the stopped trace as one new buffer.
 * @out: set to the bytes (JSON is also NUL-terminated); free with
 *       sluice_trace_free().
 * @len: set to the length (without the NUL).
 *
 * Returns: 0, SLUICE_ESTATE (still recording), SLUICE_EINVAL (format),
 * SLUICE_ENOMEM.
 */
SLUICE_API SLUICE_NODISCARD int sluice_trace_write(enum sluice_trace_format fmt,
						   void **out, size_t *len);

/** sluice_trace_free() - free sluice_trace_write()'s buffer; NULL is ok. */
SLUICE_API void sluice_trace_free(void *p);

/**
 * sluice_trace_write_file() / sluice_trace_write_path() - the same, into
 * a stream (not closed) or a file created or truncated at @path.
 * Returns: as sluice_trace_write(), or SLUICE_EIO / -errno on I/O errors.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_trace_write_file(FILE *f, enum sluice_trace_format fmt);
SLUICE_API SLUICE_NODISCARD int
sluice_trace_write_path(const char *path, enum sluice_trace_format fmt);

struct sluice_trace_stats {
	uint64_t events;      /* records held in the buffers now */
	uint64_t dropped;     /* not recorded: the pool was full */
	uint64_t overwritten; /* ring mode: recorded, then overwritten */
	size_t threads;       /* threads with a buffer */
	size_t chunks_used, chunks_total;
	bool recording, ring;
};

/**
 * sluice_trace_stats() - counts for the current or last trace.  Exact
 * once stopped; while recording, counts of other threads may lag.
 */
SLUICE_API void sluice_trace_stats(struct sluice_trace_stats *out);

/**
 * sluice_trace_set_thread_name() - the calling thread's track name in
 * traces (copied; at most 31 bytes kept).  Without it a thread is shown
 * under its pthread name.  Threads: the calling thread; any time.
 */
SLUICE_API void sluice_trace_set_thread_name(const char *name);

/*
 * Application probes.  @name and @key must be string literals or
 * otherwise live for the whole process: the trace stores the pointer.
 * Begin/end pairs must nest on each thread.  No-ops when not recording.
 */
SLUICE_API void sluice_trace_begin(const char *name);
SLUICE_API void sluice_trace_end(const char *name);
SLUICE_API void sluice_trace_instant(const char *name);
SLUICE_API void sluice_trace_counter(const char *name, int64_t value);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_TRACE_H */
