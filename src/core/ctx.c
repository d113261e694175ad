/* SPDX-License-Identifier: MIT */
/*
 * ctx.c - contexts: an absolute deadline plus cancellation with a reason.
 *
 * State.  ctx->state packs (generation << 8) | reason; reason 0 means live.
 * It only changes by CAS: a cancel sets the reason of a live state (so the
 * first cancel wins and a cancel_gen for an old generation fails), a rearm
 * bumps the generation and clears the reason.  A new context is generation
 * 0; rearm never hands out 0, so callers can use it as "no unit".  Whether a
 * context is done is read without locks: the states of the context and its
 * ancestors, then the tightest deadline of the chain against one clock read.
 * The deadline is stored before the state is made live again, so a reader that
 * sees the new generation also sees the new deadline.
 *
 * Fds.  The eventfd is made on first use by sluice_ctx_fd(), which then adds
 * one registration per ancestor to that ancestor's listeners list, so a cancel
 * anywhere up the chain can write to it.  A cancel writes only while holding
 * its own mu, and only if its state is still the one it set, so a rearm (which
 * drains under the same mu after changing the state) cannot be followed by a
 * stale write.  A listener's efd is removed from the ancestor's list under
 * that ancestor's mu before it is closed, so no ancestor writes a closed fd.
 * An efd may hold counts from several writers; whoever drains one (rearm, or
 * a poll that woke for nothing) re-checks the chain afterwards and writes again
 * if something is still cancelled: every write follows its cancel's CAS, so a
 * count that was drained belongs to a cancel the re-check can see.
 *
 * Locking.  Each context's mu guards efd, fd_signalled, listeners and
 * registrations.  No path holds two mu at once: registration and release
 * take each ancestor's mu in turn.  Nothing here calls back into user code.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <sluice/ctx.h>

#include "util/alloc.h"

#define REASON_BITS 8
#define REASON_MASK ((uint64_t)0xff)
#define GEN_MASK    (UINT64_MAX >> REASON_BITS)

/* Real time one poll slice may last when the context runs on a virtual
 * clock: the virtual deadline can only be noticed by re-checking. */
#define VIRTUAL_SLICE_MS 10

/*
 * One descendant's efd in one ancestor's listeners list.  A context's
 * registrations are one allocation (an array, one entry per ancestor, linked
 * through reg_next for ctx->registrations); prev/next are guarded by the
 * ancestor's mu, the rest is immutable while registered.
 */
struct sluice_ctx_fdreg {
	const struct sluice_ctx *owner; /* whose efd this is */
	struct sluice_ctx *anc;         /* whose listeners list it sits in */
	int efd;
	struct sluice_ctx_fdreg *prev, *next; /* anc->listeners; anc->mu */
	struct sluice_ctx_fdreg *reg_next;    /* owner->registrations */
};

/* The contract hands out const parents; registering and cancelling them
 * still needs their mutex and lists. */
static struct sluice_ctx *
unconst(const struct sluice_ctx *c)
{
	return (struct sluice_ctx *)(uintptr_t)c;
}

static enum sluice_cancel_reason
reason_of(uint64_t state)
{
	return (enum sluice_cancel_reason)(state & REASON_MASK);
}

static bool
valid_reason(enum sluice_cancel_reason r)
{
	return r == SLUICE_CANCEL_DEADLINE || r == SLUICE_CANCEL_SHUTDOWN ||
	       r == SLUICE_CANCEL_CALLER;
}

/* min() where SLUICE_FOREVER (-1) is +infinity. */
static int64_t
min_deadline(int64_t a, int64_t b)
{
	if (a == SLUICE_FOREVER)
		return b;
	if (b == SLUICE_FOREVER)
		return a;
	return a < b ? a : b;
}

static int64_t
load_deadline(const struct sluice_ctx *c)
{
	return atomic_load_explicit(&unconst(c)->deadline_ns,
				    memory_order_acquire);
}

static uint64_t
load_state(const struct sluice_ctx *c)
{
	return atomic_load_explicit(&unconst(c)->state, memory_order_acquire);
}

/*
 * The deadline that applies: our own, already clamped at init/rearm, and
 * still clamped against the chain so that an ancestor rearmed to an earlier
 * deadline is honoured too.
 */
static int64_t
effective_deadline(const struct sluice_ctx *ctx)
{
	int64_t d = load_deadline(ctx);
	const struct sluice_ctx *c;

	for (c = ctx->parent; c; c = c->parent)
		d = min_deadline(d, load_deadline(c));
	return d;
}

/* The explicit reason of @c or its nearest explicitly cancelled ancestor. */
static enum sluice_cancel_reason
chain_cancelled(const struct sluice_ctx *c)
{
	enum sluice_cancel_reason r;

	for (; c; c = c->parent) {
		r = reason_of(load_state(c));
		if (r != SLUICE_CANCEL_NONE)
			return r;
	}
	return SLUICE_CANCEL_NONE;
}

/* An eventfd write can only fail on overflow, which leaves it readable. */
static void
efd_signal(int efd)
{
	uint64_t one = 1;
	ssize_t n;

	do
		n = write(efd, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
}

/* Empty a non-blocking eventfd; EAGAIN means it already was. */
static void
efd_drain(int efd)
{
	uint64_t v;
	ssize_t n;

	do
		n = read(efd, &v, sizeof(v));
	while (n < 0 && errno == EINTR);
}

/*
 * With ctx->mu held: drop every count in our efd, then put one back if we or
 * an ancestor are still cancelled.  The re-check comes after the read, so a
 * count that was drained is never one a live cancel still needs.
 */
static void
resync_locked(struct sluice_ctx *ctx)
{
	if (ctx->efd < 0)
		return;
	efd_drain(ctx->efd);
	ctx->fd_signalled = false;
	if (chain_cancelled(ctx) != SLUICE_CANCEL_NONE) {
		efd_signal(ctx->efd);
		ctx->fd_signalled = true;
	}
}

static int
init_common(struct sluice_ctx *ctx, const struct sluice_ctx *parent,
	    const struct sluice_clock *clock, int64_t deadline_ns)
{
	int err;

	if (!ctx || (deadline_ns < 0 && deadline_ns != SLUICE_FOREVER))
		return SLUICE_EINVAL;
	err = pthread_mutex_init(&ctx->mu, NULL);
	if (err)
		return -err;
	ctx->parent = parent;
	ctx->clock = clock ? clock : sluice_clock_monotonic();
	if (parent)
		deadline_ns =
			min_deadline(deadline_ns, effective_deadline(parent));
	atomic_init(&ctx->deadline_ns, deadline_ns);
	atomic_init(&ctx->state, (uint64_t)0);
	atomic_init(&ctx->has_fds, false);
	ctx->efd = -1;
	ctx->fd_signalled = false;
	ctx->listeners = NULL;
	ctx->registrations = NULL;
	return 0;
}

int
sluice_ctx_init(struct sluice_ctx *ctx, const struct sluice_clock *clock,
		int64_t deadline_ns)
{
	return init_common(ctx, NULL, clock, deadline_ns);
}

int
sluice_ctx_init_child(struct sluice_ctx *ctx, const struct sluice_ctx *parent,
		      int64_t deadline_ns)
{
	if (!parent)
		return SLUICE_EINVAL;
	return init_common(ctx, parent, parent->clock, deadline_ns);
}

void
sluice_ctx_release(struct sluice_ctx *ctx)
{
	struct sluice_ctx_fdreg *regs, *r;
	struct sluice_ctx *anc;

	if (!ctx)
		return;
	/* The owner alone uses @ctx now, so its own fields need no lock. */
	regs = ctx->registrations;
	for (r = regs; r; r = r->reg_next) {
		anc = r->anc;
		pthread_mutex_lock(&anc->mu);
		if (r->prev)
			r->prev->next = r->next;
		else
			anc->listeners = r->next;
		if (r->next)
			r->next->prev = r->prev;
		pthread_mutex_unlock(&anc->mu);
	}
	/* Unregistered everywhere: no ancestor can be writing the efd now. */
	if (ctx->efd >= 0)
		close(ctx->efd);
	ctx->efd = -1;
	ctx->registrations = NULL;
	sl_free(regs);
	pthread_mutex_destroy(&ctx->mu);
}

int
sluice_ctx_new_child(const struct sluice_ctx *parent, int64_t deadline_ns,
		     struct sluice_ctx **out)
{
	struct sluice_ctx *ctx;
	int err;

	if (!out)
		return SLUICE_EINVAL;
	ctx = sl_calloc(1, sizeof(*ctx));
	if (!ctx)
		return SLUICE_ENOMEM;
	err = sluice_ctx_init_child(ctx, parent, deadline_ns);
	if (err) {
		sl_free(ctx);
		return err;
	}
	*out = ctx;
	return 0;
}

void
sluice_ctx_free(struct sluice_ctx *ctx)
{
	if (!ctx)
		return;
	sluice_ctx_release(ctx);
	sl_free(ctx);
}

/*
 * After our CAS made the state @set: wake our efd and every descendant's.
 * Under mu, and only if no rearm has replaced @set meanwhile; a rearm drains
 * under mu after changing the state, so it sees any write made here.
 */
static void
wake(struct sluice_ctx *ctx, uint64_t set)
{
	struct sluice_ctx_fdreg *r;

	pthread_mutex_lock(&ctx->mu);
	if (load_state(ctx) == set) {
		if (ctx->efd >= 0) {
			efd_signal(ctx->efd);
			ctx->fd_signalled = true;
		}
		for (r = ctx->listeners; r; r = r->next)
			efd_signal(r->efd);
	}
	pthread_mutex_unlock(&ctx->mu);
}

/* Set @reason if the state is live and, when @match, of generation @gen. */
static bool
cancel_if(struct sluice_ctx *ctx, bool match, uint64_t gen,
	  enum sluice_cancel_reason reason)
{
	uint64_t old, set;

	if (!ctx || !valid_reason(reason))
		return false;
	old = load_state(ctx);
	do {
		if (reason_of(old) != SLUICE_CANCEL_NONE)
			return false;
		if (match && (old >> REASON_BITS) != gen)
			return false;
		set = old | (uint64_t)reason;
	} while (!atomic_compare_exchange_weak_explicit(&ctx->state, &old, set,
							memory_order_acq_rel,
							memory_order_acquire));
	wake(ctx, set);
	return true;
}

void
sluice_ctx_cancel(struct sluice_ctx *ctx, enum sluice_cancel_reason reason)
{
	(void)cancel_if(ctx, false, 0, reason);
}

bool
sluice_ctx_cancel_gen(struct sluice_ctx *ctx, uint64_t gen,
		      enum sluice_cancel_reason reason)
{
	return cancel_if(ctx, true, gen, reason);
}

enum sluice_cancel_reason
sluice_ctx_reason(const struct sluice_ctx *ctx)
{
	enum sluice_cancel_reason r = chain_cancelled(ctx);
	int64_t d;

	if (r != SLUICE_CANCEL_NONE)
		return r;
	d = effective_deadline(ctx);
	if (d != SLUICE_FOREVER && sluice_clock_now_ns(ctx->clock) >= d)
		return SLUICE_CANCEL_DEADLINE;
	return SLUICE_CANCEL_NONE;
}

bool
sluice_ctx_is_done(const struct sluice_ctx *ctx)
{
	return sluice_ctx_reason(ctx) != SLUICE_CANCEL_NONE;
}

static int
reason_err(enum sluice_cancel_reason r)
{
	switch (r) {
	case SLUICE_CANCEL_DEADLINE:
		return SLUICE_ETIMEDOUT;
	case SLUICE_CANCEL_SHUTDOWN:
	case SLUICE_CANCEL_CALLER:
		return SLUICE_ECANCELED;
	case SLUICE_CANCEL_NONE:
	default:
		return 0;
	}
}

int
sluice_ctx_err(const struct sluice_ctx *ctx)
{
	return reason_err(sluice_ctx_reason(ctx));
}

int64_t
sluice_ctx_deadline_ns(const struct sluice_ctx *ctx)
{
	return effective_deadline(ctx);
}

int64_t
sluice_ctx_remaining_ns(const struct sluice_ctx *ctx)
{
	int64_t d = effective_deadline(ctx), now;

	if (d == SLUICE_FOREVER)
		return INT64_MAX;
	now = sluice_clock_now_ns(ctx->clock);
	return now >= d ? 0 : d - now;
}

const struct sluice_clock *
sluice_ctx_clock(const struct sluice_ctx *ctx)
{
	return ctx->clock;
}

/* Link the prepared @regs into each ancestor's list, one mu at a time. */
static void
register_all(struct sluice_ctx_fdreg *regs)
{
	struct sluice_ctx_fdreg *r;
	struct sluice_ctx *anc;

	for (r = regs; r; r = r->reg_next) {
		anc = r->anc;
		pthread_mutex_lock(&anc->mu);
		r->prev = NULL;
		r->next = anc->listeners;
		if (anc->listeners)
			anc->listeners->prev = r;
		anc->listeners = r;
		atomic_store_explicit(&anc->has_fds, true,
				      memory_order_release);
		pthread_mutex_unlock(&anc->mu);
	}
}

int
sluice_ctx_fd(struct sluice_ctx *ctx)
{
	struct sluice_ctx_fdreg *regs = NULL;
	const struct sluice_ctx *a;
	size_t n = 0, i;
	int efd, err;

	if (!ctx)
		return SLUICE_EINVAL;
	pthread_mutex_lock(&ctx->mu);
	if (ctx->efd >= 0) {
		efd = ctx->efd;
		pthread_mutex_unlock(&ctx->mu);
		return efd;
	}
	for (a = ctx->parent; a; a = a->parent)
		n++;
	if (n) {
		regs = sl_calloc(n, sizeof(*regs));
		if (!regs) {
			err = SLUICE_ENOMEM;
			goto out_unlock;
		}
	}
	efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (efd < 0) {
		err = -errno;
		goto out_free;
	}
	for (i = 0, a = ctx->parent; a; a = a->parent, i++) {
		regs[i].owner = ctx;
		regs[i].anc = unconst(a);
		regs[i].efd = efd;
		regs[i].reg_next = i + 1 < n ? &regs[i + 1] : NULL;
	}
	ctx->efd = efd;
	ctx->registrations = regs;
	atomic_store_explicit(&ctx->has_fds, true, memory_order_release);
	pthread_mutex_unlock(&ctx->mu);

	/*
	 * A concurrent caller may already be handed efd; an ancestor cancelled
	 * before we joined its list is caught by the re-check below, which
	 * follows our registration under that ancestor's mu.
	 */
	register_all(regs);
	pthread_mutex_lock(&ctx->mu);
	if (!ctx->fd_signalled && chain_cancelled(ctx) != SLUICE_CANCEL_NONE) {
		efd_signal(efd);
		ctx->fd_signalled = true;
	}
	pthread_mutex_unlock(&ctx->mu);
	return efd;

out_free:
	sl_free(regs);
out_unlock:
	pthread_mutex_unlock(&ctx->mu);
	return err;
}

static int
timeout_ms(const struct sluice_ctx *ctx)
{
	int64_t rem = sluice_ctx_remaining_ns(ctx), ms;

	if (rem == INT64_MAX)
		return -1;
	if (sluice_clock_is_virtual(ctx->clock))
		return VIRTUAL_SLICE_MS;
	/* Round up so a real-clock wake is never before the deadline. */
	ms = rem / SLUICE_NS_PER_MS + (rem % SLUICE_NS_PER_MS != 0);
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

int
sluice_ctx_poll(struct sluice_ctx *ctx, int fd, short events)
{
	struct pollfd pfd[2];
	enum sluice_cancel_reason r;
	nfds_t nfds = 0;
	int efd, n, e;
	size_t ei;

	efd = sluice_ctx_fd(ctx);
	if (efd < 0)
		return efd;
	if (fd >= 0) {
		pfd[nfds].fd = fd;
		pfd[nfds].events = events;
		nfds++;
	}
	ei = nfds;
	pfd[nfds].fd = efd;
	pfd[nfds].events = POLLIN;
	nfds++;
	for (;;) {
		r = sluice_ctx_reason(ctx);
		if (r != SLUICE_CANCEL_NONE)
			return reason_err(r);
		n = poll(pfd, nfds, timeout_ms(ctx));
		if (n < 0) {
			e = errno;
			if (e == EINTR)
				continue;
			return -e;
		}
		if (fd >= 0 && pfd[0].revents)
			return pfd[0].revents;
		if (n > 0 && pfd[ei].revents && !sluice_ctx_is_done(ctx)) {
			/* A count left from an earlier generation (ours or an
			 * ancestor's): drain it, or poll would spin. */
			pthread_mutex_lock(&ctx->mu);
			resync_locked(ctx);
			pthread_mutex_unlock(&ctx->mu);
		}
	}
}

uint64_t
sluice_ctx_rearm(struct sluice_ctx *ctx, int64_t deadline_ns)
{
	struct sluice_ctx_fdreg *r;
	uint64_t old, set, gen;

	if (deadline_ns < 0 && deadline_ns != SLUICE_FOREVER)
		deadline_ns = 0;
	if (ctx->parent)
		deadline_ns = min_deadline(deadline_ns,
					   effective_deadline(ctx->parent));
	/* Deadline first: a reader that sees the live state sees it too. */
	atomic_store_explicit(&ctx->deadline_ns, deadline_ns,
			      memory_order_release);
	/*
	 * The owner is the only writer of a new generation, and nobody
	 * cancels a generation that is over except with cancel_gen(), whose
	 * CAS fails once the word changed.  So a plain store suffices
	 * (rearm runs once per message: no locked instruction here); a
	 * stale cancel that won just before the store only leaves an fd
	 * count, which has_fds below sends down the locked path.
	 */
	old = load_state(ctx);
	/* Generations run 1, 2, ... and skip 0 when they wrap, so callers
	 * may use 0 as "no unit". */
	gen = ((old >> REASON_BITS) + 1) & GEN_MASK;
	set = (gen ? gen : 1) << REASON_BITS;
	atomic_store_explicit(&ctx->state, set, memory_order_release);

	/* The common case, a live context that never made an fd, has nothing
	 * to drain: no lock. */
	if (reason_of(old) == SLUICE_CANCEL_NONE &&
	    !atomic_load_explicit(&ctx->has_fds, memory_order_acquire))
		return set >> REASON_BITS;
	pthread_mutex_lock(&ctx->mu);
	if (ctx->fd_signalled || reason_of(old) != SLUICE_CANCEL_NONE) {
		resync_locked(ctx);
		/*
		 * Our old cancel also woke the descendants' efds.  Drain each
		 * and re-check its own chain; its owner's fd_signalled is left
		 * alone (its mu is not ours), which only costs it a read.
		 */
		for (r = ctx->listeners; r; r = r->next) {
			efd_drain(r->efd);
			if (chain_cancelled(r->owner) != SLUICE_CANCEL_NONE)
				efd_signal(r->efd);
		}
	}
	pthread_mutex_unlock(&ctx->mu);
	return set >> REASON_BITS;
}
