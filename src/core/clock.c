/* SPDX-License-Identifier: MIT */
/*
 * clock.c - the real monotonic clock and the virtual clock for tests.
 *
 * A virtual clock's time is one atomic; advancing it stores the new time,
 * then broadcasts every registered (mutex, cond) pair, each under its own
 * mutex.  A waiter checks the time and sleeps under that same mutex, so an
 * advance between its check and its sleep cannot be missed.  The watch list
 * has its own lock, taken before any waiter's mutex (see advance).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#include <sluice/clock.h>

#include "core/clock_int.h"
#include "util/alloc.h"

struct sluice_clock {
	bool is_virtual;
	_Atomic int64_t now_ns;  /* virtual only; relaxed reads suffice
				    because wakeups go through mutexes */
	pthread_mutex_t list_mu; /* guards watches and nwatches */
	struct sl_clock_watch *watches;
	size_t nwatches;
};

static struct sluice_clock real_clock = { .is_virtual = false };

int64_t
sl_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * SLUICE_NS_PER_S + ts.tv_nsec;
}

/*
 * An upper bound on sluice_clock_now_ns(c), cheap enough for every message:
 * CLOCK_MONOTONIC_COARSE is the same timebase as CLOCK_MONOTONIC, read from
 * the vDSO without touching the TSC, and lags it by less than one tick.  Two
 * resolutions of margin cover a tick that is late.  Callers read the precise
 * clock only when the bound says a deadline may have passed.
 */
int64_t
sl_clock_upper_ns(const struct sluice_clock *c)
{
	static _Atomic int64_t margin_ns; /* 0 until first use; benign race */
	struct timespec ts;
	int64_t m;

	if (c && c->is_virtual)
		return atomic_load_explicit(&c->now_ns, memory_order_acquire);
	m = atomic_load_explicit(&margin_ns, memory_order_relaxed);
	if (m == 0) {
		if (clock_getres(CLOCK_MONOTONIC_COARSE, &ts) == 0)
			m = 2 * ((int64_t)ts.tv_sec * SLUICE_NS_PER_S +
				 ts.tv_nsec) +
			    1;
		else
			m = INT64_MAX / 4;
		atomic_store_explicit(&margin_ns, m, memory_order_relaxed);
	}
	if (m >= INT64_MAX / 4 ||
	    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
		return sl_mono_ns();
	return (int64_t)ts.tv_sec * SLUICE_NS_PER_S + ts.tv_nsec + m;
}

struct sluice_clock *
sluice_clock_monotonic(void)
{
	return &real_clock;
}

int
sluice_clock_virtual_new(int64_t start_ns, struct sluice_clock **out)
{
	struct sluice_clock *c;

	if (start_ns < 0)
		return SLUICE_EINVAL;
	c = sl_calloc(1, sizeof(*c));
	if (!c)
		return SLUICE_ENOMEM;
	c->is_virtual = true;
	atomic_init(&c->now_ns, start_ns);
	if (pthread_mutex_init(&c->list_mu, NULL) != 0) {
		sl_free(c);
		return SLUICE_ENOMEM;
	}
	*out = c;
	return 0;
}

void
sluice_clock_free(struct sluice_clock *c)
{
	if (!c || !c->is_virtual)
		return;
	pthread_mutex_destroy(&c->list_mu);
	sl_free(c);
}

int64_t
sluice_clock_now_ns(const struct sluice_clock *c)
{
	if (!c || !c->is_virtual)
		return sl_mono_ns();
	return atomic_load_explicit(&c->now_ns, memory_order_acquire);
}

int
sluice_clock_is_virtual(const struct sluice_clock *c)
{
	return c && c->is_virtual;
}

/*
 * Wake every watcher, each broadcast under its own mutex.  The list lock is
 * held throughout so a watch cannot be deleted (and its mutex destroyed)
 * while we use it.  This is the one place sluice nests two locks, always in
 * the order list_mu -> watcher's mutex; watchers never take list_mu while
 * holding their own mutex (sl_clock_watch_add/del forbid it), so the order
 * cannot invert.  Only virtual clocks, i.e. tests, come here.
 */
int
sluice_clock_advance(struct sluice_clock *c, int64_t delta_ns)
{
	struct sl_clock_watch *w;

	if (!c || !c->is_virtual || delta_ns < 0)
		return SLUICE_EINVAL;
	pthread_mutex_lock(&c->list_mu);
	atomic_fetch_add_explicit(&c->now_ns, delta_ns, memory_order_acq_rel);
	for (w = c->watches; w; w = w->next) {
		pthread_mutex_lock(w->mu);
		pthread_cond_broadcast(w->cv);
		pthread_mutex_unlock(w->mu);
	}
	pthread_mutex_unlock(&c->list_mu);
	return 0;
}

int
sl_cond_init(pthread_cond_t *cv)
{
	pthread_condattr_t attr;
	int err;

	err = pthread_condattr_init(&attr);
	if (err)
		return -err;
	err = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	if (!err)
		err = pthread_cond_init(cv, &attr);
	pthread_condattr_destroy(&attr);
	return -err;
}

void
sl_clock_watch_add(const struct sluice_clock *cc, struct sl_clock_watch *w,
		   pthread_mutex_t *mu, pthread_cond_t *cv)
{
	struct sluice_clock *c = (struct sluice_clock *)(uintptr_t)cc;

	w->mu = mu;
	w->cv = cv;
	w->prev = w->next = NULL;
	if (!c || !c->is_virtual)
		return;
	pthread_mutex_lock(&c->list_mu);
	w->next = c->watches;
	if (c->watches)
		c->watches->prev = w;
	c->watches = w;
	c->nwatches++;
	pthread_mutex_unlock(&c->list_mu);
}

void
sl_clock_watch_del(const struct sluice_clock *cc, struct sl_clock_watch *w)
{
	struct sluice_clock *c = (struct sluice_clock *)(uintptr_t)cc;

	if (!c || !c->is_virtual)
		return;
	pthread_mutex_lock(&c->list_mu);
	if (w->prev)
		w->prev->next = w->next;
	else if (c->watches == w)
		c->watches = w->next;
	if (w->next)
		w->next->prev = w->prev;
	w->prev = w->next = NULL;
	c->nwatches--;
	pthread_mutex_unlock(&c->list_mu);
}

int
sl_clock_wait(const struct sluice_clock *c, pthread_cond_t *cv,
	      pthread_mutex_t *mu, int64_t deadline_ns)
{
	struct timespec ts;

	if (deadline_ns == SLUICE_FOREVER) {
		pthread_cond_wait(cv, mu);
		return 0;
	}
	if (sluice_clock_now_ns(c) >= deadline_ns)
		return SLUICE_ETIMEDOUT;
	if (c && c->is_virtual) {
		/* Only an advance (or a real signal) ends this wait. */
		pthread_cond_wait(cv, mu);
		return sluice_clock_now_ns(c) >= deadline_ns ? SLUICE_ETIMEDOUT
							     : 0;
	}
	ts.tv_sec = (time_t)(deadline_ns / SLUICE_NS_PER_S);
	ts.tv_nsec = (long)(deadline_ns % SLUICE_NS_PER_S);
	if (pthread_cond_timedwait(cv, mu, &ts) == ETIMEDOUT)
		return SLUICE_ETIMEDOUT;
	return 0;
}
