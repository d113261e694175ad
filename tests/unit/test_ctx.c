/* SPDX-License-Identifier: MIT */
/*
 * test_ctx.c - contexts: deadlines, cancellation, generations, the eventfd
 * and sluice_ctx_poll() (src/core/ctx.c).
 *
 * Time comes from a virtual clock.  Cross-thread cases never sleep: the
 * other thread cancels, advances or writes, and the main thread's blocking
 * call must return; a poll() with a generous real timeout is only a guard
 * that turns a missing wakeup into a failure instead of a hang.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

#include <sluice/clock.h>
#include <sluice/ctx.h>

#include "check.h"
#include "util/alloc.h"

/* Failure guard for waits that another thread must end. */
#define GUARD_MS 20000

static struct sluice_clock *
vclock(int64_t start_ns)
{
	struct sluice_clock *c = NULL;

	CHECK_OK(sluice_clock_virtual_new(start_ns, &c));
	return c;
}

/* revents of @fd after a poll with @timeout_ms (0 = just look). */
static short
poll_fd(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int n;

	n = poll(&p, 1, timeout_ms);
	CHECK_GE(n, 0);
	return n ? p.revents : 0;
}

static void
test_root_no_deadline_is_live(void)
{
	struct sluice_ctx ctx;

	CHECK_OK(sluice_ctx_init(&ctx, sluice_clock_monotonic(),
				 SLUICE_FOREVER));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);
	CHECK(!sluice_ctx_is_done(&ctx));
	CHECK_EQ(sluice_ctx_err(&ctx), 0);
	CHECK_EQ(sluice_ctx_deadline_ns(&ctx), SLUICE_FOREVER);
	CHECK_EQ(sluice_ctx_remaining_ns(&ctx), INT64_MAX);
	CHECK(sluice_ctx_clock(&ctx) == sluice_clock_monotonic());
	sluice_ctx_release(&ctx);
}

static void
test_init_rejects_bad_arguments(void)
{
	struct sluice_ctx ctx, child;
	struct sluice_ctx *heap = NULL;
	struct sluice_clock *c = vclock(0);

	CHECK_EQ(sluice_ctx_init(&ctx, c, -2), SLUICE_EINVAL);
	CHECK_EQ(sluice_ctx_init(NULL, c, SLUICE_FOREVER), SLUICE_EINVAL);
	CHECK_EQ(sluice_ctx_init_child(&child, NULL, SLUICE_FOREVER),
		 SLUICE_EINVAL);
	CHECK_OK(sluice_ctx_init(&ctx, c, SLUICE_FOREVER));
	CHECK_EQ(sluice_ctx_init_child(&child, &ctx, INT64_MIN), SLUICE_EINVAL);
	CHECK_EQ(sluice_ctx_new_child(&ctx, -5, &heap), SLUICE_EINVAL);
	CHECK(heap == NULL);
	/* An allocation failure leaves nothing behind. */
	sl_alloc_fail_after(1, 0);
	CHECK_EQ(sluice_ctx_new_child(&ctx, SLUICE_FOREVER, &heap),
		 SLUICE_ENOMEM);
	CHECK(heap == NULL);
	CHECK_OK(sluice_ctx_new_child(&ctx, SLUICE_FOREVER, &heap));
	CHECK(heap != NULL);
	CHECK(sluice_ctx_clock(heap) == c);
	sluice_ctx_free(heap);
	sluice_ctx_free(NULL);
	sluice_ctx_release(&ctx);
	sluice_clock_free(c);
}

static void
test_virtual_deadline_passes_exactly(void)
{
	struct sluice_clock *c = vclock(1000);
	struct sluice_ctx ctx;

	CHECK_OK(sluice_ctx_init(&ctx, c, 1500));
	CHECK(sluice_ctx_clock(&ctx) == c);
	CHECK_EQ(sluice_ctx_deadline_ns(&ctx), 1500);
	CHECK_EQ(sluice_ctx_remaining_ns(&ctx), 500);
	CHECK_OK(sluice_clock_advance(c, 499));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);
	CHECK_EQ(sluice_ctx_err(&ctx), 0);
	CHECK_EQ(sluice_ctx_remaining_ns(&ctx), 1);
	CHECK_OK(sluice_clock_advance(c, 1));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_DEADLINE);
	CHECK(sluice_ctx_is_done(&ctx));
	CHECK_EQ(sluice_ctx_err(&ctx), SLUICE_ETIMEDOUT);
	CHECK_EQ(sluice_ctx_remaining_ns(&ctx), 0);
	CHECK_OK(sluice_clock_advance(c, SLUICE_NS_PER_S));
	CHECK_EQ(sluice_ctx_remaining_ns(&ctx), 0);
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_DEADLINE);
	sluice_ctx_release(&ctx);

	/* A deadline of 0 (or any past time) is done from the start. */
	CHECK_OK(sluice_ctx_init(&ctx, c, 0));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_DEADLINE);
	sluice_ctx_release(&ctx);
	sluice_clock_free(c);
}

static void
test_child_deadline_clamped_to_parent(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_ctx root, parent, a, b, d, e;

	CHECK_OK(sluice_ctx_init(&root, c, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&parent, &root, 100));
	CHECK_EQ(sluice_ctx_deadline_ns(&parent),
		 100); /* FOREVER clamps nothing */
	CHECK_OK(sluice_ctx_init_child(&a, &parent, 200));
	CHECK_EQ(sluice_ctx_deadline_ns(&a), 100);
	CHECK_OK(sluice_ctx_init_child(&b, &parent, 50));
	CHECK_EQ(sluice_ctx_deadline_ns(&b), 50);
	CHECK_OK(sluice_ctx_init_child(&d, &parent, SLUICE_FOREVER));
	CHECK_EQ(sluice_ctx_deadline_ns(&d), 100);
	CHECK_EQ(sluice_ctx_remaining_ns(&d), 100);
	/* Grandchild: clamped through the chain. */
	CHECK_OK(sluice_ctx_init_child(&e, &d, 300));
	CHECK_EQ(sluice_ctx_deadline_ns(&e), 100);
	CHECK(sluice_ctx_clock(&e) == c);

	CHECK_OK(sluice_clock_advance(c, 50));
	CHECK_EQ(sluice_ctx_reason(&b), SLUICE_CANCEL_DEADLINE);
	CHECK_EQ(sluice_ctx_reason(&a), SLUICE_CANCEL_NONE);
	CHECK_EQ(sluice_ctx_reason(&parent), SLUICE_CANCEL_NONE);
	CHECK_OK(sluice_clock_advance(c, 49));
	CHECK_EQ(sluice_ctx_reason(&a), SLUICE_CANCEL_NONE);
	CHECK_EQ(sluice_ctx_reason(&e), SLUICE_CANCEL_NONE);
	CHECK_OK(sluice_clock_advance(c, 1));
	CHECK_EQ(sluice_ctx_reason(&a), SLUICE_CANCEL_DEADLINE);
	CHECK_EQ(sluice_ctx_reason(&d), SLUICE_CANCEL_DEADLINE);
	CHECK_EQ(sluice_ctx_reason(&e), SLUICE_CANCEL_DEADLINE);
	CHECK_EQ(sluice_ctx_err(&e), SLUICE_ETIMEDOUT);
	CHECK_EQ(sluice_ctx_reason(&root), SLUICE_CANCEL_NONE);

	sluice_ctx_release(&e);
	sluice_ctx_release(&d);
	sluice_ctx_release(&b);
	sluice_ctx_release(&a);
	sluice_ctx_release(&parent);
	sluice_ctx_release(&root);
	sluice_clock_free(c);
}

static void
test_child_sees_parent_cancel_reason(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_ctx root, child, grand, sibling;

	CHECK_OK(sluice_ctx_init(&root, c, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&child, &root, 1000));
	CHECK_OK(sluice_ctx_init_child(&grand, &child, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&sibling, &root, SLUICE_FOREVER));

	/* Cancelling a child does not reach up or sideways. */
	sluice_ctx_cancel(&child, SLUICE_CANCEL_CALLER);
	CHECK_EQ(sluice_ctx_reason(&child), SLUICE_CANCEL_CALLER);
	CHECK_EQ(sluice_ctx_reason(&grand), SLUICE_CANCEL_CALLER);
	CHECK_EQ(sluice_ctx_reason(&root), SLUICE_CANCEL_NONE);
	CHECK_EQ(sluice_ctx_reason(&sibling), SLUICE_CANCEL_NONE);

	/* The nearest cancelled ancestor's reason is the one reported. */
	sluice_ctx_cancel(&root, SLUICE_CANCEL_SHUTDOWN);
	CHECK_EQ(sluice_ctx_reason(&root), SLUICE_CANCEL_SHUTDOWN);
	CHECK_EQ(sluice_ctx_reason(&sibling), SLUICE_CANCEL_SHUTDOWN);
	CHECK_EQ(sluice_ctx_err(&sibling), SLUICE_ECANCELED);
	CHECK_EQ(sluice_ctx_reason(&child), SLUICE_CANCEL_CALLER);
	CHECK_EQ(sluice_ctx_reason(&grand), SLUICE_CANCEL_CALLER);

	sluice_ctx_release(&sibling);
	sluice_ctx_release(&grand);
	sluice_ctx_release(&child);
	sluice_ctx_release(&root);

	/* A fresh tree: the root's reason reaches the grandchild. */
	CHECK_OK(sluice_ctx_init(&root, c, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&child, &root, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&grand, &child, SLUICE_FOREVER));
	sluice_ctx_cancel(&root, SLUICE_CANCEL_SHUTDOWN);
	CHECK_EQ(sluice_ctx_reason(&grand), SLUICE_CANCEL_SHUTDOWN);
	CHECK_EQ(sluice_ctx_err(&grand), SLUICE_ECANCELED);
	sluice_ctx_release(&grand);
	sluice_ctx_release(&child);
	sluice_ctx_release(&root);
	sluice_clock_free(c);
}

static void
test_explicit_cancel_beats_deadline(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_ctx root, child;

	CHECK_OK(sluice_ctx_init(&root, c, 10));
	CHECK_OK(sluice_ctx_init_child(&child, &root, 5));
	CHECK_OK(sluice_clock_advance(c, 20));
	CHECK_EQ(sluice_ctx_reason(&child), SLUICE_CANCEL_DEADLINE);
	sluice_ctx_cancel(&root, SLUICE_CANCEL_SHUTDOWN);
	CHECK_EQ(sluice_ctx_reason(&root), SLUICE_CANCEL_SHUTDOWN);
	CHECK_EQ(sluice_ctx_reason(&child), SLUICE_CANCEL_SHUTDOWN);
	CHECK_EQ(sluice_ctx_err(&child), SLUICE_ECANCELED);
	sluice_ctx_cancel(&child, SLUICE_CANCEL_CALLER);
	CHECK_EQ(sluice_ctx_reason(&child), SLUICE_CANCEL_CALLER);
	sluice_ctx_release(&child);
	sluice_ctx_release(&root);
	sluice_clock_free(c);
}

static void
test_first_cancel_wins(void)
{
	struct sluice_ctx ctx;

	CHECK_OK(sluice_ctx_init(&ctx, NULL, SLUICE_FOREVER));
	/* NONE is not a cancellation. */
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_NONE);
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_SHUTDOWN);
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_CALLER);
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_DEADLINE);
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_SHUTDOWN);
	sluice_ctx_release(&ctx);

	/* An explicit DEADLINE cancel reads as a timeout. */
	CHECK_OK(sluice_ctx_init(&ctx, NULL, SLUICE_FOREVER));
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_DEADLINE);
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_SHUTDOWN);
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_DEADLINE);
	CHECK_EQ(sluice_ctx_err(&ctx), SLUICE_ETIMEDOUT);
	sluice_ctx_release(&ctx);
}

static void
test_cancel_gen(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_ctx ctx;
	uint64_t g1, g2;

	CHECK_OK(sluice_ctx_init(&ctx, c, SLUICE_FOREVER));
	g1 = sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
	g2 = sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
	CHECK_NE(g1, g2);
	/* Stale generation: nothing happens. */
	CHECK(!sluice_ctx_cancel_gen(&ctx, g1, SLUICE_CANCEL_DEADLINE));
	CHECK(!sluice_ctx_cancel_gen(&ctx, g2 + 1, SLUICE_CANCEL_DEADLINE));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);
	CHECK(!sluice_ctx_cancel_gen(&ctx, g2, SLUICE_CANCEL_NONE));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);
	/* Current generation: cancels, once. */
	CHECK(sluice_ctx_cancel_gen(&ctx, g2, SLUICE_CANCEL_DEADLINE));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_DEADLINE);
	CHECK(!sluice_ctx_cancel_gen(&ctx, g2, SLUICE_CANCEL_CALLER));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_DEADLINE);
	/* After a rearm the old generation cannot cancel the new work. */
	g1 = g2;
	g2 = sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
	CHECK_NE(g1, g2);
	CHECK(!sluice_ctx_cancel_gen(&ctx, g1, SLUICE_CANCEL_DEADLINE));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);
	CHECK(sluice_ctx_cancel_gen(&ctx, g2, SLUICE_CANCEL_CALLER));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_CALLER);
	sluice_ctx_release(&ctx);
	sluice_clock_free(c);
}

/* White-box: the generation field wraps, and rearm never hands out 0
 * (callers such as the engine use 0 as "no unit"). */
static void
test_generation_starts_at_zero_and_skips_it(void)
{
	struct sluice_ctx ctx;
	uint64_t g;

	CHECK_OK(sluice_ctx_init(&ctx, NULL, SLUICE_FOREVER));
	CHECK(sluice_ctx_cancel_gen(&ctx, 0, SLUICE_CANCEL_CALLER));
	g = sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
	CHECK_EQ(g, 1);
	atomic_store(&ctx.state, (UINT64_MAX >> 8) << 8);
	g = sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
	CHECK_NE(g, 0);
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);
	CHECK(!sluice_ctx_cancel_gen(&ctx, 0, SLUICE_CANCEL_CALLER));
	CHECK(sluice_ctx_cancel_gen(&ctx, g, SLUICE_CANCEL_CALLER));
	sluice_ctx_release(&ctx);
}

static void
test_rearm_revives_and_drains_fd(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_ctx root, ctx, sub;
	uint64_t g;
	int fd, sfd;

	CHECK_OK(sluice_ctx_init(&root, c, 1000));
	CHECK_OK(sluice_ctx_init_child(&ctx, &root, 10));
	fd = sluice_ctx_fd(&ctx);
	CHECK_GE(fd, 0);
	CHECK_EQ(sluice_ctx_fd(&ctx), fd); /* made once */
	CHECK_EQ(poll_fd(fd, 0), 0);

	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_CALLER);
	CHECK(poll_fd(fd, 0) & POLLIN);
	g = sluice_ctx_rearm(&ctx, 500);
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);
	CHECK_EQ(sluice_ctx_deadline_ns(&ctx), 500);
	CHECK_EQ(poll_fd(fd, 0), 0);
	CHECK_EQ(sluice_ctx_fd(&ctx), fd);

	/* Rearm after a deadline: live again, clamped to the parent's. */
	CHECK_OK(sluice_clock_advance(c, 500));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_DEADLINE);
	CHECK_NE(sluice_ctx_rearm(&ctx, SLUICE_FOREVER), g);
	CHECK_EQ(sluice_ctx_deadline_ns(&ctx), 1000);
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);
	(void)sluice_ctx_rearm(&ctx, 2000);
	CHECK_EQ(sluice_ctx_deadline_ns(&ctx), 1000);
	(void)sluice_ctx_rearm(&ctx, 700);
	CHECK_EQ(sluice_ctx_deadline_ns(&ctx), 700);
	CHECK_EQ(sluice_ctx_remaining_ns(&ctx), 200);

	/* A descendant's fd woken by our cancel is drained by our rearm,
	 * unless the descendant is itself still cancelled. */
	CHECK_OK(sluice_ctx_init_child(&sub, &ctx, SLUICE_FOREVER));
	sfd = sluice_ctx_fd(&sub);
	CHECK_GE(sfd, 0);
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_SHUTDOWN);
	CHECK(poll_fd(sfd, 0) & POLLIN);
	CHECK(poll_fd(fd, 0) & POLLIN);
	(void)sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
	CHECK_EQ(poll_fd(sfd, 0), 0);
	CHECK_EQ(poll_fd(fd, 0), 0);
	CHECK_EQ(sluice_ctx_reason(&sub), SLUICE_CANCEL_NONE);
	sluice_ctx_cancel(&sub, SLUICE_CANCEL_CALLER);
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_SHUTDOWN);
	(void)sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
	CHECK(poll_fd(sfd, 0) & POLLIN);
	CHECK_EQ(poll_fd(fd, 0), 0);
	sluice_ctx_release(&sub);

	/* While an ancestor stays cancelled, a rearm cannot make us live
	 * and must leave the fd readable. */
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_CALLER);
	sluice_ctx_cancel(&root, SLUICE_CANCEL_SHUTDOWN);
	(void)sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_SHUTDOWN);
	CHECK(poll_fd(fd, 0) & POLLIN);
	(void)sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
	CHECK(poll_fd(fd, 0) & POLLIN);

	sluice_ctx_release(&ctx);
	sluice_ctx_release(&root);
	sluice_clock_free(c);
}

/* A thread that cancels @ctx with @reason. */
struct canceller {
	struct sluice_ctx *ctx;
	enum sluice_cancel_reason reason;
};

static void *
cancel_main(void *arg)
{
	struct canceller *k = arg;

	sluice_ctx_cancel(k->ctx, k->reason);
	return NULL;
}

static void
fd_wakes_on_ancestor_cancel(int levels_up)
{
	struct sluice_ctx root, mid, leaf;
	/* cppcheck-suppress uninitvar ; only the address is taken here */
	struct sluice_ctx *target = levels_up == 2 ? &root : &mid;
	struct canceller k = { target, SLUICE_CANCEL_SHUTDOWN };
	pthread_t t;
	int fd;

	CHECK_OK(sluice_ctx_init(&root, NULL, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&mid, &root, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&leaf, &mid, SLUICE_FOREVER));
	fd = sluice_ctx_fd(&leaf);
	CHECK_GE(fd, 0);
	CHECK_EQ(poll_fd(fd, 0), 0);
	CHECK_OK(pthread_create(&t, NULL, cancel_main, &k));
	CHECK(poll_fd(fd, GUARD_MS) & POLLIN);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(sluice_ctx_reason(&leaf), SLUICE_CANCEL_SHUTDOWN);
	/* Readability is level-like: it stays until a rearm. */
	CHECK(poll_fd(fd, 0) & POLLIN);
	sluice_ctx_release(&leaf);
	sluice_ctx_release(&mid);
	sluice_ctx_release(&root);
}

static void
test_fd_wakes_on_parent_cancel(void)
{
	fd_wakes_on_ancestor_cancel(1);
}

static void
test_fd_wakes_on_grandparent_cancel(void)
{
	fd_wakes_on_ancestor_cancel(2);
}

static void
test_fd_made_after_cancel_is_readable(void)
{
	struct sluice_ctx root, child, grand, solo;
	int fd;

	CHECK_OK(sluice_ctx_init(&root, NULL, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&child, &root, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&grand, &child, SLUICE_FOREVER));
	sluice_ctx_cancel(&root, SLUICE_CANCEL_SHUTDOWN);
	fd = sluice_ctx_fd(&grand);
	CHECK_GE(fd, 0);
	CHECK(poll_fd(fd, 0) & POLLIN);
	sluice_ctx_release(&grand);
	sluice_ctx_release(&child);
	sluice_ctx_release(&root);

	CHECK_OK(sluice_ctx_init(&solo, NULL, SLUICE_FOREVER));
	sluice_ctx_cancel(&solo, SLUICE_CANCEL_CALLER);
	fd = sluice_ctx_fd(&solo);
	CHECK_GE(fd, 0);
	CHECK(poll_fd(fd, 0) & POLLIN);
	sluice_ctx_release(&solo);

	/* A passed deadline alone does not make the fd readable. */
	CHECK_OK(sluice_ctx_init(&solo, NULL, 0));
	CHECK(sluice_ctx_is_done(&solo));
	fd = sluice_ctx_fd(&solo);
	CHECK_GE(fd, 0);
	CHECK_EQ(poll_fd(fd, 0), 0);
	sluice_ctx_release(&solo);
}

static void
test_fd_enomem(void)
{
	struct sluice_ctx root, child;
	int fd;

	CHECK_OK(sluice_ctx_init(&root, NULL, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&child, &root, SLUICE_FOREVER));
	sl_alloc_fail_after(1, 0);
	CHECK_EQ(sluice_ctx_fd(&child), SLUICE_ENOMEM);
	/* Nothing half-made: a second try works and is registered. */
	fd = sluice_ctx_fd(&child);
	CHECK_GE(fd, 0);
	sluice_ctx_cancel(&root, SLUICE_CANCEL_SHUTDOWN);
	CHECK(poll_fd(fd, 0) & POLLIN);
	sluice_ctx_release(&child);
	sluice_ctx_release(&root);
}

/* Another thread's action ends a sluice_ctx_poll() in the main thread. */
struct actor {
	struct sluice_ctx *ctx;
	struct sluice_clock *clock;
	int64_t advance_ns;
	enum sluice_cancel_reason reason; /* NONE: do not cancel */
	int write_fd;                     /* -1: do not write */
	int drained_fd; /* >= 0: first wait until this is not readable */
};

static void *
actor_main(void *arg)
{
	struct actor *a = arg;
	struct pollfd p;

	/* Busy-waits on state, not on time: the case's timeout bounds it. */
	while (a->drained_fd >= 0) {
		p.fd = a->drained_fd;
		p.events = POLLIN;
		if (poll(&p, 1, 0) == 0)
			break;
		sched_yield();
	}
	if (a->advance_ns)
		CHECK_OK(sluice_clock_advance(a->clock, a->advance_ns));
	if (a->write_fd >= 0)
		CHECK_EQ(write(a->write_fd, "x", 1), 1);
	if (a->reason != SLUICE_CANCEL_NONE)
		sluice_ctx_cancel(a->ctx, a->reason);
	return NULL;
}

static void
test_poll_canceled_by_thread(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_ctx root, ctx;
	struct actor a = { &root, c, 0, SLUICE_CANCEL_SHUTDOWN, -1, -1 };
	pthread_t t;
	int p[2];

	CHECK_OK(pipe(p));
	CHECK_OK(sluice_ctx_init(&root, c, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&ctx, &root, 1000));
	CHECK_OK(pthread_create(&t, NULL, actor_main, &a));
	CHECK_EQ(sluice_ctx_poll(&ctx, p[0], POLLIN), SLUICE_ECANCELED);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_SHUTDOWN);
	sluice_ctx_release(&ctx);
	sluice_ctx_release(&root);

	/* fd < 0: a sleep that cancellation interrupts. */
	CHECK_OK(sluice_ctx_init(&ctx, c, SLUICE_FOREVER));
	a.ctx = &ctx;
	a.reason = SLUICE_CANCEL_CALLER;
	CHECK_OK(pthread_create(&t, NULL, actor_main, &a));
	CHECK_EQ(sluice_ctx_poll(&ctx, -1, 0), SLUICE_ECANCELED);
	CHECK_OK(pthread_join(t, NULL));
	/* Already done: returns at once, again and again. */
	CHECK_EQ(sluice_ctx_poll(&ctx, -1, 0), SLUICE_ECANCELED);
	CHECK_EQ(sluice_ctx_poll(&ctx, p[0], POLLIN), SLUICE_ECANCELED);
	sluice_ctx_release(&ctx);
	close(p[0]);
	close(p[1]);
	sluice_clock_free(c);
}

static void
test_poll_times_out_on_virtual_advance(void)
{
	struct sluice_clock *c = vclock(5000);
	struct sluice_ctx ctx;
	struct actor a = { &ctx, c, 1000, SLUICE_CANCEL_NONE, -1, -1 };
	pthread_t t;
	int p[2];

	CHECK_OK(pipe(p));
	CHECK_OK(sluice_ctx_init(&ctx, c, 6000));
	CHECK_OK(pthread_create(&t, NULL, actor_main, &a));
	CHECK_EQ(sluice_ctx_poll(&ctx, p[0], POLLIN), SLUICE_ETIMEDOUT);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(sluice_clock_now_ns(c), 6000);
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_DEADLINE);

	/* An advance short of the deadline does not end the wait: only the
	 * cancel that follows it does. */
	(void)sluice_ctx_rearm(&ctx, 7000);
	a.advance_ns = 999;
	a.reason = SLUICE_CANCEL_CALLER;
	CHECK_OK(pthread_create(&t, NULL, actor_main, &a));
	CHECK_EQ(sluice_ctx_poll(&ctx, -1, 0), SLUICE_ECANCELED);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(sluice_ctx_remaining_ns(&ctx), 1);
	sluice_ctx_release(&ctx);
	close(p[0]);
	close(p[1]);
	sluice_clock_free(c);
}

static void
test_poll_returns_fd_revents(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_ctx ctx;
	struct actor a = { &ctx, c, 0, SLUICE_CANCEL_NONE, -1, -1 };
	pthread_t t;
	char b;
	int p[2], r;

	CHECK_OK(pipe(p));
	a.write_fd = p[1];
	CHECK_OK(sluice_ctx_init(&ctx, c, 100));
	CHECK_OK(pthread_create(&t, NULL, actor_main, &a));
	r = sluice_ctx_poll(&ctx, p[0], POLLIN);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_GT(r, 0);
	CHECK(r & POLLIN);
	CHECK_EQ(read(p[0], &b, 1), 1);
	CHECK_EQ(b, 'x');
	CHECK_EQ(sluice_ctx_reason(&ctx), SLUICE_CANCEL_NONE);

	/* Hang-up is reported through revents too. */
	close(p[1]);
	r = sluice_ctx_poll(&ctx, p[0], POLLIN);
	CHECK_GT(r, 0);
	CHECK(r & POLLHUP);
	close(p[0]);
	sluice_ctx_release(&ctx);
	sluice_clock_free(c);
}

/* The real clock's deadline ends a poll by itself, never early. */
static void
test_poll_real_deadline(void)
{
	struct sluice_ctx ctx;
	int64_t deadline;
	int p[2];

	CHECK_OK(pipe(p));
	CHECK_OK(sluice_ctx_init(&ctx, NULL, 0));
	CHECK_EQ(sluice_ctx_poll(&ctx, p[0], POLLIN), SLUICE_ETIMEDOUT);
	sluice_ctx_release(&ctx);

	deadline = sluice_clock_now_ns(sluice_clock_monotonic()) +
		   2 * SLUICE_NS_PER_MS + 1;
	CHECK_OK(sluice_ctx_init(&ctx, NULL, deadline));
	CHECK_EQ(sluice_ctx_poll(&ctx, p[0], POLLIN), SLUICE_ETIMEDOUT);
	CHECK_GE(sluice_clock_now_ns(sluice_clock_monotonic()), deadline);
	sluice_ctx_release(&ctx);
	close(p[0]);
	close(p[1]);
}

/* A count left in the fd by a cancelled-then-rearmed parent must not make
 * a later poll spin or report cancellation. */
static void
test_poll_ignores_stale_wakeup(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_ctx root, ctx;
	struct actor a = { &ctx, c, 10, SLUICE_CANCEL_NONE, -1, -1 };
	pthread_t t;
	int fd;

	CHECK_OK(sluice_ctx_init(&root, c, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&ctx, &root, 10));
	fd = sluice_ctx_fd(&ctx);
	CHECK_GE(fd, 0);
	sluice_ctx_cancel(&root, SLUICE_CANCEL_SHUTDOWN);
	/* Rearming the root drains its listeners; put a stray count back
	 * as if a write had raced with it. */
	(void)sluice_ctx_rearm(&root, SLUICE_FOREVER);
	CHECK_EQ(poll_fd(fd, 0), 0);
	{
		uint64_t one = 1;

		CHECK_EQ(write(fd, &one, sizeof(one)), (ssize_t)sizeof(one));
	}
	/* The actor advances only once the poll has drained the stray count;
	 * a poll that spun on it instead would never let it. */
	a.drained_fd = fd;
	CHECK_OK(pthread_create(&t, NULL, actor_main, &a));
	CHECK_EQ(sluice_ctx_poll(&ctx, -1, 0), SLUICE_ETIMEDOUT);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(poll_fd(fd, 0), 0);
	sluice_ctx_release(&ctx);
	sluice_ctx_release(&root);
	sluice_clock_free(c);
}

static void
test_release_unregisters_fd(void)
{
	struct sluice_ctx root;
	struct sluice_ctx *kid[3];
	int fds[3], p[2], i;

	CHECK_OK(sluice_ctx_init(&root, NULL, SLUICE_FOREVER));
	for (i = 0; i < 3; i++) {
		CHECK_OK(sluice_ctx_new_child(&root, SLUICE_FOREVER, &kid[i]));
		fds[i] = sluice_ctx_fd(kid[i]);
		CHECK_GE(fds[i], 0);
	}
	/* Made first so it cannot take the numbers freed below. */
	CHECK_OK(pipe(p));
	/* Free the middle and the newest registration (head of the list). */
	sluice_ctx_free(kid[1]);
	sluice_ctx_free(kid[2]);

	/* Put the pipe's write end on the freed fd numbers: a write to a
	 * stale registration would show up at the read end. */
	CHECK_GE(dup2(p[1], fds[1]), 0);
	CHECK_GE(dup2(p[1], fds[2]), 0);

	sluice_ctx_cancel(&root, SLUICE_CANCEL_SHUTDOWN);
	CHECK(poll_fd(fds[0], 0) & POLLIN);
	CHECK_EQ(poll_fd(p[0], 0), 0);
	sluice_ctx_free(kid[0]);
	close(fds[1]);
	close(fds[2]);
	close(p[0]);
	close(p[1]);
	sluice_ctx_release(&root);
}

/* Many threads race to cancel one generation. */
struct racer {
	struct sluice_ctx *ctx;
	pthread_barrier_t *start;
	uint64_t gen;
	enum sluice_cancel_reason reason;
	atomic_int *wins;
	bool won;
};

static void *
race_main(void *arg)
{
	struct racer *r = arg;
	int e = pthread_barrier_wait(r->start);

	CHECK(e == 0 || e == PTHREAD_BARRIER_SERIAL_THREAD);
	r->won = sluice_ctx_cancel_gen(r->ctx, r->gen, r->reason);
	if (r->won)
		atomic_fetch_add(r->wins, 1);
	return NULL;
}

#define RACERS 16
#define ROUNDS 20

static void
test_concurrent_cancel_gen_one_winner(void)
{
	static const enum sluice_cancel_reason reasons[] = {
		SLUICE_CANCEL_DEADLINE, SLUICE_CANCEL_SHUTDOWN,
		SLUICE_CANCEL_CALLER
	};
	struct sluice_clock *c = vclock(0);
	struct sluice_ctx root, ctx, sub;
	struct racer r[RACERS];
	pthread_t t[RACERS];
	pthread_barrier_t start;
	atomic_int wins;
	uint64_t gen;
	int i, round, winner, fd, sfd;

	CHECK_OK(sluice_ctx_init(&root, c, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&ctx, &root, SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&sub, &ctx, SLUICE_FOREVER));
	fd = sluice_ctx_fd(&ctx);
	sfd = sluice_ctx_fd(&sub);
	CHECK_GE(fd, 0);
	CHECK_GE(sfd, 0);
	for (round = 0; round < ROUNDS; round++) {
		gen = sluice_ctx_rearm(&ctx, SLUICE_FOREVER);
		CHECK_EQ(poll_fd(fd, 0), 0);
		CHECK_EQ(poll_fd(sfd, 0), 0);
		atomic_init(&wins, 0);
		CHECK_OK(pthread_barrier_init(&start, NULL, RACERS));
		for (i = 0; i < RACERS; i++) {
			r[i] = (struct racer){ &ctx,           &start, gen,
					       reasons[i % 3], &wins,  false };
			/* A few racers hold a stale generation. */
			if (i % 5 == 4)
				r[i].gen = gen - 1;
			CHECK_OK(pthread_create(&t[i], NULL, race_main, &r[i]));
		}
		for (i = 0; i < RACERS; i++)
			CHECK_OK(pthread_join(t[i], NULL));
		pthread_barrier_destroy(&start);
		CHECK_EQ(atomic_load(&wins), 1);
		winner = -1;
		for (i = 0; i < RACERS; i++)
			if (r[i].won)
				winner = i;
		CHECK_GE(winner, 0);
		CHECK_NE(winner % 5, 4);
		CHECK_EQ(sluice_ctx_reason(&ctx), r[winner].reason);
		CHECK_EQ(sluice_ctx_reason(&sub), r[winner].reason);
		CHECK(poll_fd(fd, 0) & POLLIN);
		CHECK(poll_fd(sfd, 0) & POLLIN);
	}
	sluice_ctx_release(&sub);
	sluice_ctx_release(&ctx);
	sluice_ctx_release(&root);
	sluice_clock_free(c);
}

/* Plain cancels from many threads, racing children that make and drop
 * their fds: for TSan and ASan, and every fd must end up readable. */
struct fd_churn {
	struct sluice_ctx *parent;
	pthread_barrier_t *start;
};

static void *
churn_main(void *arg)
{
	struct fd_churn *f = arg;
	struct sluice_ctx *kid;
	int i, fd, e;

	e = pthread_barrier_wait(f->start);
	CHECK(e == 0 || e == PTHREAD_BARRIER_SERIAL_THREAD);
	for (i = 0; i < 50; i++) {
		CHECK_OK(sluice_ctx_new_child(f->parent, SLUICE_FOREVER, &kid));
		fd = sluice_ctx_fd(kid);
		CHECK_GE(fd, 0);
		if (sluice_ctx_is_done(kid))
			CHECK(poll_fd(fd, GUARD_MS) & POLLIN);
		sluice_ctx_free(kid);
	}
	/* Once the parent is cancelled every new fd is readable at once. */
	CHECK_OK(sluice_ctx_new_child(f->parent, SLUICE_FOREVER, &kid));
	fd = sluice_ctx_fd(kid);
	CHECK_GE(fd, 0);
	pthread_barrier_wait(f->start); /* the parent is cancelled by now */
	CHECK_EQ(sluice_ctx_reason(kid), SLUICE_CANCEL_SHUTDOWN);
	CHECK(poll_fd(fd, GUARD_MS) & POLLIN);
	sluice_ctx_free(kid);
	return NULL;
}

static void
test_cancel_races_fd_registration(void)
{
	struct sluice_ctx root;
	struct fd_churn f;
	struct canceller k = { &root, SLUICE_CANCEL_SHUTDOWN };
	pthread_barrier_t start;
	pthread_t t[6], kt[2];
	int i;

	CHECK_OK(sluice_ctx_init(&root, NULL, SLUICE_FOREVER));
	CHECK_OK(pthread_barrier_init(&start, NULL, 7));
	f.parent = &root;
	f.start = &start;
	for (i = 0; i < 6; i++)
		CHECK_OK(pthread_create(&t[i], NULL, churn_main, &f));
	pthread_barrier_wait(&start);
	for (i = 0; i < 2; i++)
		CHECK_OK(pthread_create(&kt[i], NULL, cancel_main, &k));
	for (i = 0; i < 2; i++)
		CHECK_OK(pthread_join(kt[i], NULL));
	pthread_barrier_wait(&start);
	for (i = 0; i < 6; i++)
		CHECK_OK(pthread_join(t[i], NULL));
	pthread_barrier_destroy(&start);
	sluice_ctx_release(&root);
}

CHECK_MAIN(test_root_no_deadline_is_live, test_init_rejects_bad_arguments,
	   test_virtual_deadline_passes_exactly,
	   test_child_deadline_clamped_to_parent,
	   test_child_sees_parent_cancel_reason,
	   test_explicit_cancel_beats_deadline, test_first_cancel_wins,
	   test_cancel_gen, test_generation_starts_at_zero_and_skips_it,
	   test_rearm_revives_and_drains_fd, test_fd_wakes_on_parent_cancel,
	   test_fd_wakes_on_grandparent_cancel,
	   test_fd_made_after_cancel_is_readable, test_fd_enomem,
	   test_poll_canceled_by_thread, test_poll_times_out_on_virtual_advance,
	   test_poll_returns_fd_revents, test_poll_real_deadline,
	   test_poll_ignores_stale_wakeup, test_release_unregisters_fd,
	   test_concurrent_cancel_gen_one_winner,
	   test_cancel_races_fd_registration)
