/* SPDX-License-Identifier: MIT */
/*
 * engine.h - the consumer engine: bounded concurrent or batch processing of a
 * source's messages, with deadlines, classified retries, dead-lettering and a
 * graceful drain.
 *
 * Concurrent mode runs N worker threads; each pulls messages from the source
 * itself, so there is no dispatcher hop, and an idle worker steals messages
 * fetched behind a slow one.  The engine never holds more than
 * max_in_flight = N + prefetch messages (fetched and not yet released): that
 * is the credit it gives the source, and the reason load cannot pile up
 * inside the process (the seed's "avalanche").  Batch mode gives each worker
 * whole batches, flushed on max count, max bytes or max wait, whichever comes
 * first, and never asks for a batch larger than the credit.
 *
 * Every message gets a context with a deadline (timeout_ns after it starts);
 * a watchdog thread cancels it at the deadline and settles the message as a
 * TIMEOUT at once (requeue with backoff; the handler's late result is
 * discarded).  A message whose deadline passed while it waited is not
 * started.  Outcomes by class:
 *   OK        ack
 *   TIMEOUT   requeue after the retry policy's delay, while attempts remain
 *   TEMPORARY requeue after the retry policy's delay (or Retry-After)
 *   PERMANENT dead-letter at once, then ack
 *   CANCELED  requeue without counting an attempt
 * When attempts run out the message is dead-lettered; the original is acked
 * only after the dead-letter write succeeded.  Retries never sleep in a
 * worker: the delay travels with the requeue to the source.
 */
#ifndef SLUICE_ENGINE_H
#define SLUICE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/backoff.h>
#include <sluice/clock.h>
#include <sluice/common.h>
#include <sluice/dlq.h>
#include <sluice/handler.h>
#include <sluice/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

enum sluice_mode {
	SLUICE_MODE_CONCURRENT = 0,
	SLUICE_MODE_BATCH = 1,
};

#define SLUICE_PREFETCH_AUTO (~0u)

struct sluice_engine_config {
	enum sluice_mode mode;
	unsigned workers;         /* worker threads N (1..1024); default 4 */
	unsigned prefetch;        /* credit beyond N: messages fetched ahead
				     of a free worker; 0 = none; default
				     SLUICE_PREFETCH_AUTO = max(1, N/4) */
	size_t max_in_flight;     /* 0 = derived: N + prefetch (concurrent),
				     N * batch_max (batch); a smaller value
				     caps credit and batches flush when they
				     hold all they can get */
	size_t batch_max;         /* batch mode: messages per batch; 100 */
	size_t batch_max_bytes;   /* batch mode: body bytes; 0 = no limit */
	int64_t batch_wait_ns;    /* batch mode: longest fill wait; 50 ms */
	int64_t timeout_ns;       /* per message (per batch); 0 = none; 30 s */
	int64_t drain_timeout_ns; /* graceful stop budget; 30 s */
	struct sluice_backoff retry;      /* sluice_backoff_default() */
	const struct sluice_clock *clock; /* borrowed; NULL = monotonic */
	uint64_t seed; /* RNG seed for jitter; 0 = from the OS */
};

/** sluice_engine_config_init() - fill @cfg with the defaults above. */
SLUICE_API void sluice_engine_config_init(struct sluice_engine_config *cfg);

struct sluice_engine;

/**
 * sluice_engine_new() - a stopped engine over @src.
 * @handler: used in concurrent mode (fn NULL in batch mode).
 * @batch: used in batch mode (fn NULL in concurrent mode).
 * @dlq: the dead-letter sink, borrowed (NULL: messages that would be
 *       dead-lettered are requeued with the maximum delay instead, so
 *       nothing is lost; they are counted in dlq_failed).
 *
 * @cfg is copied.  The source is borrowed and must outlive the engine.
 * Returns: 0 and *@out (free with sluice_engine_free()), SLUICE_EINVAL
 * (invalid configuration; nothing is allocated), SLUICE_ENOMEM.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_engine_new(const struct sluice_engine_config *cfg,
		  struct sluice_source src, struct sluice_handler handler,
		  struct sluice_batch_handler batch,
		  const struct sluice_dlq *dlq, struct sluice_engine **out);

/** sluice_engine_start() - start the worker and watchdog threads. */
SLUICE_API SLUICE_NODISCARD int sluice_engine_start(struct sluice_engine *e);

enum sluice_stop {
	SLUICE_STOP_DRAIN = 0, /* graceful: finish in-flight work until the
				  drain deadline */
	SLUICE_STOP_NOW = 1,   /* cancel in-flight work now and hand it back */
};

/**
 * sluice_engine_stop() - begin stopping.  DRAIN: stop taking credit, hand
 * back messages not yet started, let in-flight handlers finish until the
 * drain deadline, then cancel the rest and hand them back without counting
 * an attempt.  NOW (for example on a second SIGINT): the same, with the drain
 * deadline moved to now.  Returns at once; sluice_engine_wait() waits.
 *
 * Threads: any thread.  Async-signal-safe: no (call it from a thread that
 * waits on signalfd or sigwait, or set a flag in the handler).
 */
SLUICE_API void sluice_engine_stop(struct sluice_engine *e,
				   enum sluice_stop how);

/**
 * sluice_engine_wait() - wait until the engine stopped: after stop(), or
 * after the source reported SLUICE_ECLOSED and every message was settled.
 * Then closes the source.
 *
 * Returns: 0, or SLUICE_ETIMEDOUT if @deadline_ns (on the engine's clock)
 * passed first.
 */
SLUICE_API int sluice_engine_wait(struct sluice_engine *e, int64_t deadline_ns);

/** sluice_engine_free() - stop now if running, wait, free.  NULL is a no-op. */
SLUICE_API void sluice_engine_free(struct sluice_engine *e);

struct sluice_engine_stats {
	/* accounting: delivered == handled + requeued + dead_lettered once
	 * the engine has stopped (in flight is 0) */
	uint64_t delivered; /* messages fetched from the source */
	uint64_t handled;   /* acked after success */
	uint64_t requeued;  /* given back for redelivery (any reason) */
	uint64_t
		dead_lettered; /* written to the dead-letter sink, then acked */
	/* why */
	uint64_t timeouts;        /* handler overran its deadline */
	uint64_t temporary;       /* handler failed TEMPORARY */
	uint64_t permanent;       /* handler failed PERMANENT */
	uint64_t canceled;        /* handler returned CANCELED */
	uint64_t expired_waiting; /* deadline passed before start: not run */
	uint64_t exhausted;       /* dead-lettered after max attempts */
	uint64_t handed_back;     /* requeued unstarted or cancelled at drain */
	uint64_t dlq_failed;      /* dead-letter writes that failed */
	uint64_t ack_failed;      /* acks the source refused (stale lease) */
	uint64_t batches;         /* batch handler calls */
	/* gauges and high-water marks */
	uint64_t running;     /* units (messages or batches) running now */
	uint64_t held;        /* messages fetched and not yet released */
	uint64_t credit;      /* credit in use: held + asked of the source
				 by fetches in progress */
	uint64_t max_held;    /* most credit ever in use at once (>= the
				 most messages ever held) */
	uint64_t max_batch;   /* largest batch handed to the handler */
	size_t max_in_flight; /* the credit limit in effect */
};

/** sluice_engine_stats() - a snapshot (counters are summed over workers). */
SLUICE_API void sluice_engine_stats(struct sluice_engine *e,
				    struct sluice_engine_stats *out);

struct sluice_metrics;

/**
 * sluice_engine_export_metrics() - register the engine's counters
 * (sluice_messages_handled_total, ..._requeued_total, ..._dead_lettered_total,
 * sluice_handler_timeouts_total, ...), gauges (sluice_handlers_running,
 * sluice_messages_held, sluice_credit_in_use, sluice_workers_busy) and
 * histograms (sluice_handler_latency_seconds, sluice_queue_wait_seconds,
 * sluice_fetch_size_messages, sluice_batch_size_messages) in @m.  They are
 * read from the engine's own per-worker counters when @m renders, so the
 * hot path pays no atomic read-modify-write for them.  Also
 * sluice_handler_errors_total{class="timeout|temporary|permanent|canceled"},
 * which counts failures settled after the export (export before start for
 * totals).
 *
 * Ownership: @m and @e borrow each other: render @m only while @e exists
 * (stop any server of @m before sluice_engine_free()).
 * Returns: 0, SLUICE_EINVAL (NULL, or already exported), SLUICE_ENOMEM,
 * SLUICE_EEXIST when @m already has these names.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_engine_export_metrics(struct sluice_engine *e, struct sluice_metrics *m);

enum sluice_inflight_format {
	SLUICE_INFLIGHT_TEXT = 0, /* aligned columns, for people */
	SLUICE_INFLIGHT_JSON = 1,
};

/**
 * sluice_engine_inflight() - the flight recorder: one row per message a
 * worker is running now (id, source, attempt, age since fetch, time left
 * to its deadline, the worker's stage, worker index; a batch shows its
 * first 16) and the last 64 failures, newest first (time, id, attempt,
 * class, error text).  For GET /debug/inflight.
 * @out: set to new NUL-terminated text (free with
 *       sluice_engine_free_text()); @len: its length, or NULL.
 *
 * Workers are not stopped: each publishes its running unit in a seqlocked
 * slot the reader copies, so a row is consistent but rows are taken one
 * worker after the other.  Ages use the engine's clock.
 * Returns: 0, SLUICE_EINVAL, SLUICE_ENOMEM.
 * Threads: any thread, while @e exists.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_engine_inflight(struct sluice_engine *e, enum sluice_inflight_format fmt,
		       char **out, size_t *len);

/** sluice_engine_free_text() - free sluice_engine_inflight()'s text. */
SLUICE_API void sluice_engine_free_text(char *text);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_ENGINE_H */
