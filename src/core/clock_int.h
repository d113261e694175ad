/* SPDX-License-Identifier: MIT */
/*
 * clock_int.h - timed waits that work on both the real and a virtual clock.
 *
 * Every condition variable in sluice that waits with a deadline is created by
 * sl_cond_init() (so pthread_cond_timedwait counts on CLOCK_MONOTONIC) and
 * waited on with sl_clock_wait().  On a virtual clock a waiter registers its
 * (mutex, cond) pair with sl_clock_watch_add(); sluice_clock_advance() then
 * locks each registered mutex in turn and broadcasts, so every waiter
 * re-checks its deadline against the new time.  Lock order: the clock's own
 * list lock is never held while a registered mutex is taken.
 */
#ifndef SL_CLOCK_INT_H
#define SL_CLOCK_INT_H

#include <pthread.h>
#include <stdint.h>

#include <sluice/clock.h>

struct sl_clock_watch {
	pthread_mutex_t *mu;
	pthread_cond_t *cv;
	struct sl_clock_watch *prev, *next; /* guarded by the clock */
};

/* pthread_cond_init with CLOCK_MONOTONIC.  Returns 0 or -errno. */
int sl_cond_init(pthread_cond_t *cv);

/* Register @w (caller storage, lives until del) to be woken on advance.
 * No-op on the real clock.  Must not be called with @mu held. */
void sl_clock_watch_add(const struct sluice_clock *c, struct sl_clock_watch *w,
			pthread_mutex_t *mu, pthread_cond_t *cv);
void sl_clock_watch_del(const struct sluice_clock *c, struct sl_clock_watch *w);

/*
 * Wait on @cv with @mu held until signalled or @deadline_ns passes on @c
 * (SLUICE_FOREVER = no deadline; 0 or a past time = don't wait).
 * Returns 0 when woken (maybe spuriously: re-check your condition) or
 * SLUICE_ETIMEDOUT when the deadline has passed.
 */
int sl_clock_wait(const struct sluice_clock *c, pthread_cond_t *cv,
		  pthread_mutex_t *mu, int64_t deadline_ns);

/* A cheap upper bound on sluice_clock_now_ns(@c) (exact on a virtual
 * clock): if it is below a deadline, the deadline has not passed. */
int64_t sl_clock_upper_ns(const struct sluice_clock *c);

/* Fast inline read of the real monotonic clock. */
int64_t sl_mono_ns(void);

#endif /* SL_CLOCK_INT_H */
