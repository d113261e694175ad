/* SPDX-License-Identifier: MIT */
/*
 * clock.h - the injectable monotonic clock every sluice module reads time from.
 *
 * Production code uses sluice_clock_monotonic() (CLOCK_MONOTONIC).  Tests use
 * a virtual clock that only moves when the test calls sluice_clock_advance(),
 * so no test sleeps: every timed wait inside sluice is a wait on a condition
 * variable that the virtual clock wakes when it moves.
 */
#ifndef SLUICE_CLOCK_H
#define SLUICE_CLOCK_H

#include <stdint.h>

#include <sluice/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sluice_clock;

/**
 * sluice_clock_monotonic() - the process-wide real clock (CLOCK_MONOTONIC).
 *
 * Returns: a static object; never free it.
 */
SLUICE_API struct sluice_clock *sluice_clock_monotonic(void);

/**
 * sluice_clock_virtual_new() - a clock that stands still until advanced.
 * @start_ns: the time it reads at first (must be >= 0).
 *
 * Returns: 0 and *@out set (free with sluice_clock_free()), or SLUICE_ENOMEM.
 * Threads: the clock may be read and advanced from any thread.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_clock_virtual_new(int64_t start_ns, struct sluice_clock **out);

/** sluice_clock_free() - free a virtual clock; NULL and the real one are
 * no-ops. */
SLUICE_API void sluice_clock_free(struct sluice_clock *c);

/** sluice_clock_now_ns() - the current monotonic time in nanoseconds. */
SLUICE_API int64_t sluice_clock_now_ns(const struct sluice_clock *c);

/**
 * sluice_clock_advance() - move a virtual clock forward by @delta_ns and wake
 * every timed wait that uses it, so each re-checks its deadline.
 *
 * Returns: 0, or SLUICE_EINVAL for the real clock or a negative delta.
 */
SLUICE_API int sluice_clock_advance(struct sluice_clock *c, int64_t delta_ns);

/** sluice_clock_is_virtual() - true for a clock made by
 * sluice_clock_virtual_new(). */
SLUICE_API int sluice_clock_is_virtual(const struct sluice_clock *c);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_CLOCK_H */
