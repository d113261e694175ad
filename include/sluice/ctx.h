/* SPDX-License-Identifier: MIT */
/*
 * ctx.h - contexts: an absolute deadline plus cancellation with a reason.
 *
 * The C counterpart of Go's context.WithDeadline.  A context is done when it
 * was cancelled, when its deadline passed, or when any ancestor is done; a
 * child's deadline is clamped to its parent's at creation, so a child never
 * outlives its parent.  Checking costs a few atomic loads and one clock read;
 * it never locks.  For blocking I/O, sluice_ctx_fd() returns an eventfd that
 * becomes readable when the context or an ancestor is cancelled, and
 * sluice_ctx_poll() waits on a caller's fd, the context and its deadline at
 * once.
 *
 * struct sluice_ctx is public only so it can be embedded (on the stack, in a
 * worker); its fields are private.  Initialise with sluice_ctx_init() or
 * sluice_ctx_init_child() and end with sluice_ctx_release().
 */
#ifndef SLUICE_CTX_H
#define SLUICE_CTX_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <sluice/clock.h>
#include <sluice/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Why a context is done.  NONE means it is not done. */
enum sluice_cancel_reason {
	SLUICE_CANCEL_NONE = 0,
	SLUICE_CANCEL_DEADLINE = 1, /* its deadline (or an ancestor's) passed */
	SLUICE_CANCEL_SHUTDOWN = 2, /* the engine is draining or stopping */
	SLUICE_CANCEL_CALLER = 3,   /* sluice_ctx_cancel() by user code */
};

struct sluice_ctx_fdreg; /* private */

struct sluice_ctx {
	/* Private.  Immutable after init: */
	const struct sluice_ctx *parent;
	const struct sluice_clock *clock;
	/* Written only by the owner between uses (sluice_ctx_rearm); atomic
	 * because other threads read it. */
	SLUICE_ATOMIC(int64_t) deadline_ns;
	/* (generation << 8) | reason; reason 0 = live.  CAS only. */
	SLUICE_ATOMIC(uint64_t) state;
	/* Set (release) once an fd is made for this context or a descendant
	 * registers one here; never cleared.  Lets rearm skip mu when no fd
	 * can need draining. */
	SLUICE_ATOMIC(bool) has_fds;
	/* Guards efd, fd_signalled, listeners and the registrations below. */
	pthread_mutex_t mu;
	int efd;                                /* -1 until sluice_ctx_fd() */
	bool fd_signalled;                      /* efd holds an unread count */
	struct sluice_ctx_fdreg *listeners;     /* descendants' efds to wake */
	struct sluice_ctx_fdreg *registrations; /* our entries in ancestors */
};

/**
 * sluice_ctx_init() - a root context.
 * @clock: borrowed; must outlive the context.
 * @deadline_ns: absolute time on @clock, or SLUICE_FOREVER.
 *
 * Returns: 0 or a negative errno from pthread_mutex_init.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_ctx_init(struct sluice_ctx *ctx, const struct sluice_clock *clock,
		int64_t deadline_ns);

/**
 * sluice_ctx_init_child() - a context done whenever @parent is, and also at
 * min(@deadline_ns, the parent's deadline).
 *
 * @parent is borrowed and must outlive the child.  No lock is taken and
 * nothing is allocated until sluice_ctx_fd() is called on the child.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_ctx_init_child(struct sluice_ctx *ctx, const struct sluice_ctx *parent,
		      int64_t deadline_ns);

/**
 * sluice_ctx_release() - undo init: unregister from ancestors, close the fd.
 * Threads: the owner, once no other thread uses @ctx.
 */
SLUICE_API void sluice_ctx_release(struct sluice_ctx *ctx);

/**
 * sluice_ctx_new_child() / sluice_ctx_free() - heap versions of the above.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_ctx_new_child(const struct sluice_ctx *parent, int64_t deadline_ns,
		     struct sluice_ctx **out);
SLUICE_API void sluice_ctx_free(struct sluice_ctx *ctx);

/**
 * sluice_ctx_cancel() - mark @ctx done with @reason and wake every fd waiting
 * on it or on a descendant.  The first cancellation wins; later calls are
 * no-ops.  Threads: any thread.
 */
SLUICE_API void sluice_ctx_cancel(struct sluice_ctx *ctx,
				  enum sluice_cancel_reason reason);

/**
 * sluice_ctx_reason() - why @ctx is done, or SLUICE_CANCEL_NONE.
 *
 * An explicit cancellation of @ctx or its nearest cancelled ancestor wins
 * over a passed deadline.  Threads: any thread.
 */
SLUICE_API enum sluice_cancel_reason
sluice_ctx_reason(const struct sluice_ctx *ctx);

/** sluice_ctx_is_done() - sluice_ctx_reason(ctx) != SLUICE_CANCEL_NONE. */
SLUICE_API bool sluice_ctx_is_done(const struct sluice_ctx *ctx);

/**
 * sluice_ctx_err() - SLUICE_ETIMEDOUT when the deadline passed,
 * SLUICE_ECANCELED when cancelled, else 0.
 */
SLUICE_API int sluice_ctx_err(const struct sluice_ctx *ctx);

/** sluice_ctx_deadline_ns() - the absolute deadline, or SLUICE_FOREVER. */
SLUICE_API int64_t sluice_ctx_deadline_ns(const struct sluice_ctx *ctx);

/**
 * sluice_ctx_remaining_ns() - time left before the deadline: 0 when passed,
 * INT64_MAX when there is none.
 */
SLUICE_API int64_t sluice_ctx_remaining_ns(const struct sluice_ctx *ctx);

/** sluice_ctx_clock() - the clock @ctx reads; borrowed. */
SLUICE_API const struct sluice_clock *
sluice_ctx_clock(const struct sluice_ctx *ctx);

/**
 * sluice_ctx_fd() - an eventfd that is readable once @ctx or an ancestor is
 * cancelled.  It does not fire by itself when the deadline passes: wait with
 * a timeout of sluice_ctx_remaining_ns(), or use sluice_ctx_poll().
 *
 * Returns: the fd (owned by @ctx; do not close or read it), or a negative
 * code.  The first call allocates and registers with every ancestor.
 */
SLUICE_API int sluice_ctx_fd(struct sluice_ctx *ctx);

/**
 * sluice_ctx_poll() - wait until @fd reports one of @events (POLLIN, ...),
 * or @ctx is done.
 *
 * Returns: the revents of @fd (> 0), SLUICE_ETIMEDOUT, SLUICE_ECANCELED, or
 * -errno.  @fd < 0 waits on the context alone (a sleep that cancellation
 * interrupts).  On a virtual clock the deadline is checked against that
 * clock; real time is only used to wait.
 */
SLUICE_API int sluice_ctx_poll(struct sluice_ctx *ctx, int fd, short events);

/**
 * sluice_ctx_rearm() - reuse @ctx for a new unit of work: set its deadline
 * (clamped to the parent's) and make it live again.
 *
 * Returns: the new generation, to pass to sluice_ctx_cancel_gen().
 * Threads: the owner only, while no handler is using @ctx.
 */
SLUICE_API uint64_t sluice_ctx_rearm(struct sluice_ctx *ctx,
				     int64_t deadline_ns);

/**
 * sluice_ctx_cancel_gen() - cancel @ctx only if it is still in generation
 * @gen, so a watchdog that is late cannot cancel the next unit of work.
 *
 * Returns: true if this call cancelled it.
 */
SLUICE_API bool sluice_ctx_cancel_gen(struct sluice_ctx *ctx, uint64_t gen,
				      enum sluice_cancel_reason reason);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_CTX_H */
