/* SPDX-License-Identifier: MIT */
/*
 * backoff.h - retry policy: exponential backoff with jitter and an attempt cap.
 *
 * delay(n) for attempt n >= 1 grows as base * factor^(n-1), capped at max_ns,
 * then jitter spreads it (AWS Architecture Blog's "Exponential Backoff and
 * Jitter" definitions):
 *   NONE          d
 *   FULL          uniform[0, d]               (then raised to min_ns)
 *   EQUAL         d/2 + uniform[0, d/2]
 *   DECORRELATED  min(max, uniform[min, prev*3])  (prev = last delay)
 * Every result lies in [min_ns, max_ns].  Randomness comes from a caller-held
 * struct sluice_rng, so a seeded policy is fully deterministic in tests.
 */
#ifndef SLUICE_BACKOFF_H
#define SLUICE_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

#include <sluice/common.h>
#include <sluice/error.h>

#ifdef __cplusplus
extern "C" {
#endif

enum sluice_jitter {
	SLUICE_JITTER_NONE = 0,
	SLUICE_JITTER_FULL = 1,
	SLUICE_JITTER_EQUAL = 2,
	SLUICE_JITTER_DECORRELATED = 3,
};

/* A plain-data policy; copy it freely. */
struct sluice_backoff {
	int64_t min_ns; /* floor for every delay (and base of growth) */
	int64_t max_ns; /* ceiling for every delay */
	double factor;  /* growth per attempt, >= 1.0 */
	enum sluice_jitter jitter;
	uint32_t
		max_attempts; /* deliveries before dead-letter; 0 = unlimited */
};

/* A small, fast PRNG (xoshiro256**); one per thread, never shared. */
struct sluice_rng {
	uint64_t s[4];
};

/** sluice_rng_seed() - seed deterministically from @seed (any value). */
SLUICE_API void sluice_rng_seed(struct sluice_rng *r, uint64_t seed);

/** sluice_rng_next() - the next 64 random bits. */
SLUICE_API uint64_t sluice_rng_next(struct sluice_rng *r);

/** sluice_rng_range() - uniform in [lo, hi] (inclusive); lo when hi <= lo. */
SLUICE_API int64_t sluice_rng_range(struct sluice_rng *r, int64_t lo,
				    int64_t hi);

/**
 * sluice_backoff_default() - 100 ms .. 60 s, factor 2, full jitter, 5 attempts.
 */
SLUICE_API struct sluice_backoff sluice_backoff_default(void);

/**
 * sluice_backoff_check() - SLUICE_EINVAL unless 0 <= min <= max and
 * factor >= 1 and jitter is known; else 0.
 */
SLUICE_API int sluice_backoff_check(const struct sluice_backoff *b);

/**
 * sluice_backoff_delay_ns() - the delay before retry after attempt @attempt
 * (1 = the first delivery failed).
 * @prev_ns: the previous delay (decorrelated jitter only; 0 at first).
 */
SLUICE_API int64_t sluice_backoff_delay_ns(const struct sluice_backoff *b,
					   uint32_t attempt, int64_t prev_ns,
					   struct sluice_rng *rng);

/**
 * sluice_backoff_should_retry() - whether a message that failed with class
 * @cls on delivery @attempt gets another try: TIMEOUT and TEMPORARY do while
 * attempt < max_attempts (or max_attempts is 0); PERMANENT never.
 */
SLUICE_API bool sluice_backoff_should_retry(const struct sluice_backoff *b,
					    enum sluice_class cls,
					    uint32_t attempt);

/**
 * sluice_backoff_retry_delay_ns() - the delay for a failed message: the
 * policy's delay, raised to the error's Retry-After hint when it has one
 * (still capped at max_ns).
 */
SLUICE_API int64_t sluice_backoff_retry_delay_ns(const struct sluice_backoff *b,
						 uint32_t attempt,
						 const struct sluice_error *err,
						 struct sluice_rng *rng);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_BACKOFF_H */
