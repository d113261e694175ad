/* SPDX-License-Identifier: MIT */
/*
 * contention.c - recording for the block and mutex profiles: the slow
 * halves of the probes in contention.h, and the two stack tables.
 *
 * Sampling: a block event of d ns with rate r is kept if d >= r, else with
 * probability d/r and then weighted r/d (so the expected totals are the
 * true ones, as Go 1.22 does; Go 1.19 did not scale).  A contended lock is
 * kept with probability 1/fraction and weighted by the fraction (Go scales
 * the same way when it writes the profile).  Waits are charged to the
 * waiter's stack.
 *
 * Locking: cont_mu guards both tables; it is a leaf lock, taken after the
 * wait (for a mutex, while holding the caller's lock, which is fine since
 * nothing under cont_mu takes another lock) and never while allocating.
 */
#include "obs/contention.h"

#include <sluice/heapprof.h>

#include "core/clock_int.h"

#define CONT_MAX_STACKS 4096u

_Atomic int64_t sl_block_rate;
_Atomic int sl_mutex_fraction;

static pthread_mutex_t cont_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sl_stktab tabs[2]; /* cont_mu */

void
sluice_block_profile_set_rate(int64_t ns)
{
	atomic_store(&sl_block_rate, ns < 0 ? 0 : ns);
}

int
sluice_mutex_profile_set_fraction(int fraction)
{
	if (fraction < 0)
		return atomic_load(&sl_mutex_fraction);
	return atomic_exchange(&sl_mutex_fraction, fraction);
}

int64_t
sl_block_now(void)
{
	int64_t t = sl_mono_ns();

	return t > 0 ? t : 1; /* 0 means "not timed" */
}

SL_PROF_SKIP static void
record(enum sl_contention_kind k, int64_t count, int64_t delay)
{
	uintptr_t pcs[SL_STK_DEPTH];
	size_t n = sl_prof_stack_here(pcs, SL_STK_DEPTH);
	uint32_t b;

	pthread_mutex_lock(&cont_mu);
	b = sl_stktab_get(&tabs[k], CONT_MAX_STACKS, pcs, n);
	if (b != UINT32_MAX) {
		tabs[k].b[b].v[0] += count;
		tabs[k].b[b].v[1] += delay;
	}
	pthread_mutex_unlock(&cont_mu);
}

SL_PROF_SKIP void
sl_block_end_slow(int64_t t0)
{
	int64_t rate =
		atomic_load_explicit(&sl_block_rate, memory_order_relaxed);
	int64_t d = sl_mono_ns() - t0;

	if (rate <= 0)
		return;
	if (d <= 0)
		d = 1;
	if (d >= rate) {
		record(SL_CONT_BLOCK, 1, d);
		return;
	}
	if ((int64_t)(sl_prof_rand() % (uint64_t)rate) >= d)
		return;
	/* Stands for rate/d waits like it: rate ns in all. */
	record(SL_CONT_BLOCK, (rate + d / 2) / d, rate);
}

SL_PROF_SKIP int
sl_mutex_lock_slow(pthread_mutex_t *m)
{
	int frac =
		atomic_load_explicit(&sl_mutex_fraction, memory_order_relaxed);
	int64_t t0;
	int rc;

	if (frac <= 0 || (frac > 1 && sl_prof_rand() % (uint64_t)frac != 0))
		return pthread_mutex_lock(m);
	t0 = sl_mono_ns();
	rc = pthread_mutex_lock(m);
	if (rc == 0)
		record(SL_CONT_MUTEX, frac, (sl_mono_ns() - t0) * frac);
	return rc;
}

int
sl_contention_copy(enum sl_contention_kind k, struct sl_stk_bucket **out,
		   size_t *n, uint64_t *dropped)
{
	*dropped = atomic_load(&tabs[k].dropped);
	return sl_stktab_copy(&tabs[k], &cont_mu, out, n);
}
