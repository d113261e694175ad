/* SPDX-License-Identifier: MIT */
/*
 * handler.h - handlers and the middleware that composes them.
 *
 * A handler is a function plus user data.  A middleware takes a handler and
 * returns a new handler that wraps it (the seed's lesson 7: composition, not
 * inheritance).  Wrapping is explicit and inside-out: the handler wrapped
 * last runs first.  The recommended order, outermost first, is
 *
 *     capture -> hooks -> dedup -> retry -> timeout -> your handler
 *
 * capture sees every failure including the ones the others produce; hooks
 * time the whole attempt; dedup skips work before anything is spent on it;
 * retry re-runs only the call it wraps; timeout bounds each single try.
 *
 * Middleware state lives in a struct sluice_stack, which owns it: free the
 * stack after the last call through any handler made from it.
 */
#ifndef SLUICE_HANDLER_H
#define SLUICE_HANDLER_H

#include <sluice/backoff.h>
#include <sluice/common.h>
#include <sluice/ctx.h>
#include <sluice/error.h>
#include <sluice/map.h>
#include <sluice/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Process one message.  @msg is borrowed until return.  Return NULL on
 * success or a new error value (the engine takes it).  @ctx carries the
 * message's deadline and is cancelled at that deadline and at shutdown.
 */
typedef struct sluice_error *sluice_handler_fn(void *ud, struct sluice_ctx *ctx,
					       const struct sluice_msg *msg);

struct sluice_handler {
	sluice_handler_fn *fn;
	void *ud;
};

/*
 * Process a batch of @n messages (all borrowed until return).  Either return
 * one error for the whole batch (it applies to every message; @errs is then
 * ignored and freed), or return NULL and leave per-message outcomes in
 * @errs[i] (NULL = that message succeeded; the engine takes each error).
 * @errs arrives zeroed.
 */
typedef struct sluice_error *
sluice_batch_fn(void *ud, struct sluice_ctx *ctx,
		const struct sluice_msg *const *msgs, size_t n,
		struct sluice_error **errs);

struct sluice_batch_handler {
	sluice_batch_fn *fn;
	void *ud;
};

/** sluice_handler_call() - call @h. */
SLUICE_API struct sluice_error *
sluice_handler_call(struct sluice_handler h, struct sluice_ctx *ctx,
		    const struct sluice_msg *msg);

struct sluice_stack;

/** sluice_stack_new() - an empty owner for middleware state. */
SLUICE_API SLUICE_NODISCARD int sluice_stack_new(struct sluice_stack **out);

/** sluice_stack_free() - free all middleware made on @st.  NULL is a no-op. */
SLUICE_API void sluice_stack_free(struct sluice_stack *st);

/**
 * sluice_mw_timeout() - run @next under a child context whose deadline is
 * min(now + @timeout_ns, the incoming deadline).  If @next returns after that
 * deadline, its result is discarded (freed) and a TIMEOUT error returned.
 */
SLUICE_API SLUICE_NODISCARD int sluice_mw_timeout(struct sluice_stack *st,
						  struct sluice_handler next,
						  int64_t timeout_ns,
						  struct sluice_handler *out);

/**
 * sluice_mw_retry() - a short local retry: re-run @next on TEMPORARY or
 * TIMEOUT up to @tries times in all, waiting the policy's delay in between
 * on the context (a cancellable wait, never past the deadline).  This holds a
 * worker slot while it waits, so keep @policy's delays small (it refuses
 * max_ns > 1 s); long retries belong to the engine, which requeues instead.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_mw_retry(struct sluice_stack *st, struct sluice_handler next,
		const struct sluice_backoff *policy, unsigned tries,
		uint64_t seed, struct sluice_handler *out);

/**
 * sluice_mw_dedup() - skip messages whose id succeeded within @ttl_ns, using
 * @seen (borrowed; may be shared by several handlers).  A message whose id is
 * being processed right now by another worker fails TEMPORARY with code
 * SLUICE_CODE_DUPLICATE instead of running twice at once.
 */
SLUICE_API SLUICE_NODISCARD int sluice_mw_dedup(struct sluice_stack *st,
						struct sluice_handler next,
						struct sluice_map *seen,
						int64_t ttl_ns,
						struct sluice_handler *out);

/**
 * sluice_mw_capture() - the error-capture layer: turns contract breaches into
 * ordinary errors (a result of SLUICE_CLASS_OK with an error object, an
 * unknown class, or success reported after the context was cancelled become
 * the corresponding error) and keeps the last @ring failures for inspection
 * with sluice_mw_capture_last().  Nothing aborts.
 */
SLUICE_API SLUICE_NODISCARD int sluice_mw_capture(struct sluice_stack *st,
						  struct sluice_handler next,
						  unsigned ring,
						  struct sluice_handler *out);

/**
 * sluice_mw_capture_last() - copy the formatted text of the @i-th most recent
 * failure (0 = newest) seen by capture handler @h into @buf.
 * Returns: 0, or SLUICE_ENOENT.
 */
SLUICE_API int sluice_mw_capture_last(struct sluice_handler h, unsigned i,
				      char *buf, size_t size);

/* Metrics hooks: called around every call, outside any sluice lock. */
struct sluice_hooks {
	void (*on_start)(void *ud, const struct sluice_msg *msg);
	void (*on_done)(void *ud, const struct sluice_msg *msg,
			const struct sluice_error *err, int64_t elapsed_ns);
	void *ud;
};

/** sluice_mw_hooks() - call @hooks around @next (either hook may be NULL). */
SLUICE_API SLUICE_NODISCARD int
sluice_mw_hooks(struct sluice_stack *st, struct sluice_handler next,
		const struct sluice_hooks *hooks, struct sluice_handler *out);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_HANDLER_H */
