/* SPDX-License-Identifier: MIT */
/*
 * test_clock.c - the real and virtual clocks and the timed waits built on
 * them (src/core/clock.c).
 *
 * Nothing here sleeps.  A waiter thread announces, under the watched mutex,
 * that it is about to wait; since sl_clock_wait() releases that mutex only
 * inside pthread_cond_wait, the main thread holding the mutex afterwards
 * knows the waiter is blocked, and advancing the virtual clock is the only
 * thing that can move it on.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <sluice/clock.h>

#include "check.h"
#include "core/clock_int.h"
#include "util/alloc.h"

static void
test_real_clock_monotonic(void)
{
	struct sluice_clock *c = sluice_clock_monotonic();
	int64_t prev, now;
	int i;

	CHECK(c != NULL);
	CHECK(c == sluice_clock_monotonic());
	CHECK(!sluice_clock_is_virtual(c));
	CHECK(!sluice_clock_is_virtual(NULL));
	prev = sluice_clock_now_ns(c);
	CHECK_GT(prev, 0);
	for (i = 0; i < 100000; i++) {
		now = sluice_clock_now_ns(c);
		CHECK_GE(now, prev);
		prev = now;
	}
	/* sl_mono_ns() reads the same clock. */
	now = sl_mono_ns();
	CHECK_GE(now, prev);
	CHECK_GE(sluice_clock_now_ns(c), now);
	/* The real clock cannot be moved or freed. */
	CHECK_EQ(sluice_clock_advance(c, 1), SLUICE_EINVAL);
	CHECK_EQ(sluice_clock_advance(NULL, 1), SLUICE_EINVAL);
	sluice_clock_free(c);
	sluice_clock_free(NULL);
	CHECK_GE(sluice_clock_now_ns(c), now);
}

static void
test_virtual_start_and_advance(void)
{
	struct sluice_clock *c = NULL;

	CHECK_EQ(sluice_clock_virtual_new(-1, &c), SLUICE_EINVAL);
	CHECK(c == NULL);
	CHECK_OK(sluice_clock_virtual_new(1234, &c));
	CHECK(sluice_clock_is_virtual(c));
	CHECK_EQ(sluice_clock_now_ns(c), 1234);
	CHECK_EQ(sluice_clock_now_ns(c), 1234); /* stands still */
	CHECK_OK(sluice_clock_advance(c, 10));
	CHECK_EQ(sluice_clock_now_ns(c), 1244);
	CHECK_OK(sluice_clock_advance(c, 0));
	CHECK_EQ(sluice_clock_now_ns(c), 1244);
	CHECK_EQ(sluice_clock_advance(c, -1), SLUICE_EINVAL);
	CHECK_EQ(sluice_clock_now_ns(c), 1244);
	CHECK_OK(sluice_clock_advance(c, 3 * SLUICE_NS_PER_S));
	CHECK_EQ(sluice_clock_now_ns(c), 1244 + 3 * SLUICE_NS_PER_S);
	sluice_clock_free(c);

	CHECK_OK(sluice_clock_virtual_new(0, &c));
	CHECK_EQ(sluice_clock_now_ns(c), 0);
	sluice_clock_free(c);
}

static void
test_virtual_new_enomem(void)
{
	struct sluice_clock *c = NULL;

	sl_alloc_fail_after(1, 0);
	CHECK_EQ(sluice_clock_virtual_new(5, &c), SLUICE_ENOMEM);
	CHECK(c == NULL);
	CHECK_OK(sluice_clock_virtual_new(5, &c));
	CHECK_EQ(sluice_clock_now_ns(c), 5);
	sluice_clock_free(c);
}

/* A waiter blocked in sl_clock_wait on a registered watch. */
struct waiter {
	struct sluice_clock *clock;
	pthread_mutex_t mu;
	pthread_cond_t cv;       /* the watched cond; sl_cond_init */
	pthread_cond_t progress; /* waiter -> main; guarded by mu */
	struct sl_clock_watch watch;
	int64_t deadline_ns;
	/* guarded by mu: */
	bool waiting;    /* about to call sl_clock_wait */
	int wakeups;     /* returns from sl_clock_wait with 0 */
	int64_t woke_at; /* virtual time at the latest return */
	int last;        /* latest return value */
	bool done;
};

static void *
waiter_main(void *arg)
{
	struct waiter *w = arg;
	int r;

	pthread_mutex_lock(&w->mu);
	w->waiting = true;
	pthread_cond_broadcast(&w->progress);
	for (;;) {
		r = sl_clock_wait(w->clock, &w->cv, &w->mu, w->deadline_ns);
		w->last = r;
		w->woke_at = sluice_clock_now_ns(w->clock);
		if (r == SLUICE_ETIMEDOUT)
			break;
		/* 0 means woken early: it must really be early. */
		CHECK_EQ(r, 0);
		CHECK_LT(w->woke_at, w->deadline_ns);
		w->wakeups++;
		pthread_cond_broadcast(&w->progress);
	}
	CHECK_GE(w->woke_at, w->deadline_ns);
	w->done = true;
	pthread_cond_broadcast(&w->progress);
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static void
waiter_setup(struct waiter *w, struct sluice_clock *c, int64_t deadline_ns)
{
	memset(w, 0, sizeof(*w));
	w->clock = c;
	w->deadline_ns = deadline_ns;
	CHECK_OK(pthread_mutex_init(&w->mu, NULL));
	CHECK_OK(sl_cond_init(&w->cv));
	CHECK_OK(pthread_cond_init(&w->progress, NULL));
	sl_clock_watch_add(c, &w->watch, &w->mu, &w->cv);
}

static void
waiter_teardown(struct waiter *w)
{
	sl_clock_watch_del(w->clock, &w->watch);
	pthread_cond_destroy(&w->progress);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
}

/* Returns once the waiter is blocked inside sl_clock_wait. */
static void
waiter_wait_blocked(struct waiter *w)
{
	pthread_mutex_lock(&w->mu);
	while (!w->waiting)
		pthread_cond_wait(&w->progress, &w->mu);
	pthread_mutex_unlock(&w->mu);
}

static void
test_wait_wakes_on_advance(void)
{
	struct sluice_clock *c;
	struct waiter w;
	pthread_t t;
	int64_t start = 1000, deadline = start + 100;

	CHECK_OK(sluice_clock_virtual_new(start, &c));
	waiter_setup(&w, c, deadline);
	CHECK_OK(pthread_create(&t, NULL, waiter_main, &w));
	waiter_wait_blocked(&w);

	/* Short of the deadline: the waiter wakes, sees 0, waits again. */
	CHECK_OK(sluice_clock_advance(c, 99));
	pthread_mutex_lock(&w.mu);
	while (w.woke_at < start + 99 && !w.done)
		pthread_cond_wait(&w.progress, &w.mu);
	CHECK(!w.done);
	CHECK_EQ(w.last, 0);
	CHECK_GE(w.wakeups, 1);
	CHECK_EQ(w.woke_at, start + 99);
	pthread_mutex_unlock(&w.mu);

	/* Exactly at the deadline: timed out. */
	CHECK_OK(sluice_clock_advance(c, 1));
	CHECK_OK(pthread_join(t, NULL));
	CHECK(w.done);
	CHECK_EQ(w.last, SLUICE_ETIMEDOUT);
	CHECK_EQ(w.woke_at, deadline);
	waiter_teardown(&w);
	sluice_clock_free(c);
}

static void
test_wait_past_deadline_returns_at_once(void)
{
	struct sluice_clock *c;
	pthread_mutex_t mu;
	pthread_cond_t cv;

	CHECK_OK(sluice_clock_virtual_new(500, &c));
	CHECK_OK(pthread_mutex_init(&mu, NULL));
	CHECK_OK(sl_cond_init(&cv));
	pthread_mutex_lock(&mu);
	/* Nobody will ever signal cv: any real wait would hang the case. */
	CHECK_EQ(sl_clock_wait(c, &cv, &mu, 0), SLUICE_ETIMEDOUT);
	CHECK_EQ(sl_clock_wait(c, &cv, &mu, 499), SLUICE_ETIMEDOUT);
	CHECK_EQ(sl_clock_wait(c, &cv, &mu, 500), SLUICE_ETIMEDOUT);
	CHECK_EQ(sl_clock_wait(sluice_clock_monotonic(), &cv, &mu, 0),
		 SLUICE_ETIMEDOUT);
	CHECK_EQ(sl_clock_wait(sluice_clock_monotonic(), &cv, &mu,
			       sl_mono_ns() - 1),
		 SLUICE_ETIMEDOUT);
	pthread_mutex_unlock(&mu);
	pthread_cond_destroy(&cv);
	pthread_mutex_destroy(&mu);
	sluice_clock_free(c);
}

/* The real clock's timed wait ends by itself, and never before the
 * deadline (it counts on CLOCK_MONOTONIC, set by sl_cond_init). */
static void
test_wait_real_clock_deadline(void)
{
	struct sluice_clock *c = sluice_clock_monotonic();
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int64_t deadline;
	int r;

	CHECK_OK(pthread_mutex_init(&mu, NULL));
	CHECK_OK(sl_cond_init(&cv));
	pthread_mutex_lock(&mu);
	deadline = sluice_clock_now_ns(c) + 2 * SLUICE_NS_PER_MS;
	do
		r = sl_clock_wait(c, &cv, &mu, deadline);
	while (r == 0);
	CHECK_EQ(r, SLUICE_ETIMEDOUT);
	CHECK_GE(sluice_clock_now_ns(c), deadline);
	pthread_mutex_unlock(&mu);
	pthread_cond_destroy(&cv);
	pthread_mutex_destroy(&mu);
}

/* Storage for a watch that is removed and then freed. */
struct dead_watch {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct sl_clock_watch watch;
};

static void
test_watch_del_then_advance(void)
{
	struct sluice_clock *c;
	struct dead_watch *head, *mid, *tail;
	struct waiter w;
	pthread_t t;

	CHECK_OK(sluice_clock_virtual_new(0, &c));
	/* Registered first, so it ends up last in the list. */
	waiter_setup(&w, c, 50);
	mid = calloc(1, sizeof(*mid));
	head = calloc(1, sizeof(*head));
	tail = calloc(1, sizeof(*tail));
	CHECK(mid && head && tail);
	CHECK_OK(pthread_mutex_init(&mid->mu, NULL));
	CHECK_OK(sl_cond_init(&mid->cv));
	CHECK_OK(pthread_mutex_init(&head->mu, NULL));
	CHECK_OK(sl_cond_init(&head->cv));
	CHECK_OK(pthread_mutex_init(&tail->mu, NULL));
	CHECK_OK(sl_cond_init(&tail->cv));
	sl_clock_watch_add(c, &tail->watch, &tail->mu, &tail->cv);
	sl_clock_watch_add(c, &mid->watch, &mid->mu, &mid->cv);
	sl_clock_watch_add(c, &head->watch, &head->mu, &head->cv);

	/* Remove the middle one and hold its mutex: an advance that still
	 * tried to lock it would hang this case. */
	sl_clock_watch_del(c, &mid->watch);
	pthread_mutex_lock(&mid->mu);
	CHECK_OK(sluice_clock_advance(c, 1));
	pthread_mutex_unlock(&mid->mu);

	/* Remove head and tail and free all three: ASan reports any later
	 * touch of their storage. */
	sl_clock_watch_del(c, &head->watch);
	sl_clock_watch_del(c, &tail->watch);
	pthread_cond_destroy(&mid->cv);
	pthread_mutex_destroy(&mid->mu);
	pthread_cond_destroy(&head->cv);
	pthread_mutex_destroy(&head->mu);
	pthread_cond_destroy(&tail->cv);
	pthread_mutex_destroy(&tail->mu);
	free(mid);
	free(head);
	free(tail);

	/* The surviving watch is still woken. */
	CHECK_OK(pthread_create(&t, NULL, waiter_main, &w));
	waiter_wait_blocked(&w);
	CHECK_OK(sluice_clock_advance(c, 49));
	CHECK_OK(pthread_join(t, NULL));
	CHECK(w.done);
	CHECK_EQ(w.last, SLUICE_ETIMEDOUT);
	waiter_teardown(&w);
	/* With no watches left an advance touches nothing. */
	CHECK_OK(sluice_clock_advance(c, 1));
	CHECK_EQ(sluice_clock_now_ns(c), 51);
	sluice_clock_free(c);
}

/* Several waiters on one clock, each with its own deadline: one advance
 * releases exactly those whose deadline has come. */
static void
test_advance_wakes_only_due_waiters(void)
{
	struct sluice_clock *c;
	struct waiter w[3];
	pthread_t t[3];
	int64_t deadlines[3] = { 10, 20, 30 };
	int i;

	CHECK_OK(sluice_clock_virtual_new(0, &c));
	for (i = 0; i < 3; i++) {
		waiter_setup(&w[i], c, deadlines[i]);
		CHECK_OK(pthread_create(&t[i], NULL, waiter_main, &w[i]));
		waiter_wait_blocked(&w[i]);
	}
	CHECK_OK(sluice_clock_advance(c, 20));
	CHECK_OK(pthread_join(t[0], NULL));
	CHECK_OK(pthread_join(t[1], NULL));
	CHECK(w[0].done && w[1].done);
	pthread_mutex_lock(&w[2].mu);
	while (w[2].woke_at < 20)
		pthread_cond_wait(&w[2].progress, &w[2].mu);
	CHECK(!w[2].done);
	CHECK_EQ(w[2].last, 0);
	pthread_mutex_unlock(&w[2].mu);
	CHECK_OK(sluice_clock_advance(c, 10));
	CHECK_OK(pthread_join(t[2], NULL));
	CHECK(w[2].done);
	CHECK_EQ(w[2].woke_at, 30);
	for (i = 0; i < 3; i++)
		waiter_teardown(&w[i]);
	sluice_clock_free(c);
}

CHECK_MAIN(test_real_clock_monotonic, test_virtual_start_and_advance,
	   test_virtual_new_enomem, test_wait_wakes_on_advance,
	   test_wait_past_deadline_returns_at_once,
	   test_wait_real_clock_deadline, test_watch_del_then_advance,
	   test_advance_wakes_only_due_waiters)
