/* SPDX-License-Identifier: MIT */
/*
 * contention.h - internal: the probes behind the block and mutex
 * profiles (see <sluice/heapprof.h>).
 *
 * Block: bracket a wait on one of sluice's own condition variables,
 *
 *	int64_t t0 = sl_block_begin();
 *	...pthread_cond_wait / sl_clock_wait...
 *	sl_block_end(t0);
 *
 * Mutex: take a lock with sl_mutex_lock() instead of pthread_mutex_lock().
 * Uncontended, that is one trylock and nothing else; contended, the wait
 * is timed when the profile is on.
 *
 * Off (the default), each probe costs one relaxed load.  Recording takes
 * a leaf lock (never held while taking another) after the wait, so it
 * never changes what the instrumented code locks or in which order.
 */
#ifndef SL_OBS_CONTENTION_H
#define SL_OBS_CONTENTION_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "obs/heapprof_int.h"

extern _Atomic int64_t sl_block_rate; /* ns; <= 0: off; relaxed */
extern _Atomic int sl_mutex_fraction; /* <= 0: off; relaxed */

int64_t sl_block_now(void);
void sl_block_end_slow(int64_t t0);
int sl_mutex_lock_slow(pthread_mutex_t *m);

/* A start time for sl_block_end(), or 0 when the profile is off. */
static inline int64_t
sl_block_begin(void)
{
	if (atomic_load_explicit(&sl_block_rate, memory_order_relaxed) <= 0)
		return 0;
	return sl_block_now();
}

static inline void
sl_block_end(int64_t t0)
{
	if (t0)
		sl_block_end_slow(t0);
}

/* pthread_mutex_lock(), timing the wait when contended.  Same return. */
static inline int
sl_mutex_lock(pthread_mutex_t *m)
{
	int rc = pthread_mutex_trylock(m);

	if (rc != EBUSY)
		return rc;
	return sl_mutex_lock_slow(m);
}

/* Which table: block or mutex.  Counters v[0] contentions, v[1] delay. */
enum sl_contention_kind { SL_CONT_BLOCK, SL_CONT_MUTEX };

/* Copy a table (as sl_stktab_copy). */
int sl_contention_copy(enum sl_contention_kind k, struct sl_stk_bucket **out,
		       size_t *n, uint64_t *dropped);

#endif /* SL_OBS_CONTENTION_H */
