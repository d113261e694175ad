/* SPDX-License-Identifier: MIT */
/*
 * test_backoff.c - the PRNG, delay growth and jitter bounds, retry decisions.
 *
 * Every random draw comes from a fixed seed, so each bound and count here is
 * reproducible; statistical checks use margins of several standard
 * deviations for that seed.  Expected un-jittered delays are computed with
 * integer arithmetic in the test, independently of the library's doubles.
 * Run under UBSan to prove huge attempts and factors saturate without
 * overflow.
 */
#include <math.h>

#include <sluice/backoff.h>
#include <sluice/error.h>

#include "check.h"

#define MS SLUICE_NS_PER_MS
#define S  SLUICE_NS_PER_S

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static struct sluice_backoff
policy(int64_t min_ns, int64_t max_ns, double factor, enum sluice_jitter j,
       uint32_t max_attempts)
{
	struct sluice_backoff b = {
		.min_ns = min_ns,
		.max_ns = max_ns,
		.factor = factor,
		.jitter = j,
		.max_attempts = max_attempts,
	};

	return b;
}

/* min * mult^(attempt-1) capped at max, in integers. */
static int64_t
expected(int64_t min_ns, int64_t max_ns, int64_t mult, uint32_t attempt)
{
	int64_t d = min_ns;
	uint32_t i;

	for (i = 1; i < attempt; i++) {
		if (d > max_ns / mult) {
			d = max_ns;
			break;
		}
		d *= mult;
	}
	return d < max_ns ? d : max_ns;
}

/* ---- rng ----------------------------------------------------------------- */

static void
test_rng_known_answers(void)
{
	/*
	 * splitmix64 seeding then xoshiro256**, from an independent
	 * implementation of the published reference algorithms.
	 */
	static const uint64_t seed0[] = { UINT64_C(0x99ec5f36cb75f2b4),
					  UINT64_C(0xbf6e1f784956452a),
					  UINT64_C(0x1a5f849d4933e6e0),
					  UINT64_C(0x6aa594f1262d2d2c) };
	static const uint64_t seed42[] = { UINT64_C(0x15780b2e0c2ec716),
					   UINT64_C(0x6104d9866d113a7e),
					   UINT64_C(0xae17533239e499a1),
					   UINT64_C(0xecb8ad4703b360a1) };
	struct sluice_rng r;
	size_t i;

	sluice_rng_seed(&r, 0);
	CHECK(r.s[0] | r.s[1] | r.s[2] | r.s[3]);
	for (i = 0; i < NELEM(seed0); i++)
		CHECK(sluice_rng_next(&r) == seed0[i]);
	sluice_rng_seed(&r, 42);
	for (i = 0; i < NELEM(seed42); i++)
		CHECK(sluice_rng_next(&r) == seed42[i]);
}

static void
test_rng_determinism(void)
{
	const uint64_t seeds[] = { 0, 1, 42, UINT64_MAX };
	struct sluice_rng a, b, c;
	size_t i, s, differ = 0;

	for (s = 0; s < NELEM(seeds); s++) {
		sluice_rng_seed(&a, seeds[s]);
		sluice_rng_seed(&b, seeds[s]);
		sluice_rng_seed(&c, seeds[s] + 1);
		for (i = 0; i < 10000; i++) {
			uint64_t x = sluice_rng_next(&a);

			CHECK(x == sluice_rng_next(&b));
			if (x != sluice_rng_next(&c))
				differ++;
		}
		CHECK_EQ(differ, 10000 * (s + 1));
	}
	/* Jittered delays replay exactly from the same seed. */
	{
		struct sluice_backoff p = sluice_backoff_default();
		uint32_t n;

		sluice_rng_seed(&a, 7);
		sluice_rng_seed(&b, 7);
		for (n = 1; n < 200; n++) {
			CHECK_EQ(sluice_backoff_delay_ns(&p, n % 20, 0, &a),
				 sluice_backoff_delay_ns(&p, n % 20, 0, &b));
		}
	}
}

static void
test_rng_bits_look_random(void)
{
	struct sluice_rng r;
	unsigned ones[64] = { 0 };
	const unsigned draws = 20000;
	unsigned i, bit;

	sluice_rng_seed(&r, 0);
	for (i = 0; i < draws; i++) {
		uint64_t x = sluice_rng_next(&r);

		for (bit = 0; bit < 64; bit++)
			ones[bit] += (unsigned)(x >> bit) & 1U;
	}
	/* Each bit is set half the time; sigma is ~71, allow 6 sigma. */
	for (bit = 0; bit < 64; bit++) {
		CHECK_GT(ones[bit], draws / 2 - 425);
		CHECK_LT(ones[bit], draws / 2 + 425);
	}
}

static void
test_rng_range_bounds(void)
{
	struct sluice_rng r;
	unsigned seen[11] = { 0 }, counts[10] = { 0 };
	bool hit_lo = false, hit_hi = false;
	int i;

	sluice_rng_seed(&r, 1);
	CHECK_EQ(sluice_rng_range(&r, 5, 5), 5);
	CHECK_EQ(sluice_rng_range(&r, 5, 4), 5);
	CHECK_EQ(sluice_rng_range(&r, INT64_MAX, INT64_MIN), INT64_MAX);
	CHECK_EQ(sluice_rng_range(&r, -3, -3), -3);

	for (i = 0; i < 20000; i++) {
		int64_t v = sluice_rng_range(&r, -5, 5);

		CHECK_GE(v, -5);
		CHECK_LE(v, 5);
		seen[v + 5]++;
	}
	for (i = 0; i < 11; i++)
		CHECK_GT(seen[i], 0);

	/* Ranges at the edges of int64_t, including the full range. */
	for (i = 0; i < 1000; i++) {
		int64_t v = sluice_rng_range(&r, INT64_MAX - 1, INT64_MAX);

		CHECK_GE(v, INT64_MAX - 1);
		hit_lo |= v == INT64_MAX - 1;
		hit_hi |= v == INT64_MAX;
		v = sluice_rng_range(&r, INT64_MIN, INT64_MIN + 1);
		CHECK_LE(v, INT64_MIN + 1);
		v = sluice_rng_range(&r, INT64_MIN, INT64_MAX);
		(void)v;
		v = sluice_rng_range(&r, -1, INT64_MAX);
		CHECK_GE(v, -1);
		v = sluice_rng_range(&r, INT64_MIN, 0);
		CHECK_LE(v, 0);
	}
	CHECK(hit_lo && hit_hi);

	/* Uniform: 100000 draws over 10 values, each 10000 +- 6 sigma. */
	for (i = 0; i < 100000; i++)
		counts[sluice_rng_range(&r, 0, 9)]++;
	for (i = 0; i < 10; i++) {
		CHECK_GT(counts[i], 10000 - 570);
		CHECK_LT(counts[i], 10000 + 570);
	}
}

/*
 * A span of n = 3 * 2^62 is where a plain "x % n" skews worst: the first
 * 2^64 - n = 2^62 values of the range would be twice as likely, putting
 * 62.5 % of the draws below the midpoint.  Rejection keeps it at 50 %.
 */
static void
test_rng_range_unbiased_large_span(void)
{
	const int64_t lo = -(INT64_C(3) << 61), hi = (INT64_C(3) << 61) - 1;
	struct sluice_rng r;
	unsigned below = 0, i;

	sluice_rng_seed(&r, 3);
	for (i = 0; i < 40000; i++) {
		int64_t v = sluice_rng_range(&r, lo, hi);

		CHECK_GE(v, lo);
		CHECK_LE(v, hi);
		if (v < 0)
			below++;
	}
	/* sigma is 100; biased would be ~25000. */
	CHECK_GT(below, 20000 - 600);
	CHECK_LT(below, 20000 + 600);
}

/* ---- policy -------------------------------------------------------------- */

static void
test_default_policy(void)
{
	struct sluice_backoff b = sluice_backoff_default();

	CHECK_EQ(b.min_ns, 100 * MS);
	CHECK_EQ(b.max_ns, 60 * S);
	CHECK(b.factor == 2.0);
	CHECK_EQ(b.jitter, SLUICE_JITTER_FULL);
	CHECK_EQ(b.max_attempts, 5);
	CHECK_OK(sluice_backoff_check(&b));
}

static void
test_check(void)
{
	struct sluice_backoff ok[] = {
		policy(0, 0, 1.0, SLUICE_JITTER_NONE, 0),
		policy(5, 5, 1.0, SLUICE_JITTER_DECORRELATED, 1),
		policy(0, INT64_MAX, 1e300, SLUICE_JITTER_EQUAL, UINT32_MAX),
		policy(1, 2, (double)INFINITY, SLUICE_JITTER_FULL, 3),
	};
	struct sluice_backoff bad[] = {
		policy(-1, 10, 2.0, SLUICE_JITTER_NONE, 0),
		policy(INT64_MIN, 10, 2.0, SLUICE_JITTER_NONE, 0),
		policy(10, 9, 2.0, SLUICE_JITTER_NONE, 0),
		policy(10, -10, 2.0, SLUICE_JITTER_NONE, 0),
		policy(1, 10, 0.999, SLUICE_JITTER_NONE, 0),
		policy(1, 10, 0.0, SLUICE_JITTER_NONE, 0),
		policy(1, 10, -2.0, SLUICE_JITTER_NONE, 0),
		policy(1, 10, (double)NAN, SLUICE_JITTER_NONE, 0),
		policy(1, 10, -(double)INFINITY, SLUICE_JITTER_NONE, 0),
		policy(1, 10, 2.0, (enum sluice_jitter)4, 0),
		policy(1, 10, 2.0, (enum sluice_jitter) - 1, 0),
	};
	size_t i;

	for (i = 0; i < NELEM(ok); i++)
		CHECK_OK(sluice_backoff_check(&ok[i]));
	for (i = 0; i < NELEM(bad); i++)
		CHECK_EQ(sluice_backoff_check(&bad[i]), SLUICE_EINVAL);
	CHECK_EQ(sluice_backoff_check(NULL), SLUICE_EINVAL);
}

static void
test_none_growth_exact(void)
{
	const struct {
		int64_t min, max, mult;
	} t[] = {
		{ 100 * MS, 60 * S, 2 },   { 1 * MS, 1000000 * S, 3 },
		{ 250 * MS, 250 * MS, 2 }, { 7 * MS, 3 * S, 1 },
		{ 1 * MS, INT64_MAX, 2 },
	};
	struct sluice_rng r;
	size_t i;
	uint32_t n;

	sluice_rng_seed(&r, 9);
	for (i = 0; i < NELEM(t); i++) {
		struct sluice_backoff b =
			policy(t[i].min, t[i].max, (double)t[i].mult,
			       SLUICE_JITTER_NONE, 5);

		for (n = 1; n <= 70; n++) {
			CHECK_EQ(sluice_backoff_delay_ns(&b, n, 0, &r),
				 expected(t[i].min, t[i].max, t[i].mult, n));
		}
		/* Attempt 0 counts as 1; no rng needed without jitter. */
		CHECK_EQ(sluice_backoff_delay_ns(&b, 0, 0, NULL), t[i].min);
	}
	/* The default policy: 100 ms, 200, 400, ... capped at 60 s. */
	{
		struct sluice_backoff b = sluice_backoff_default();

		b.jitter = SLUICE_JITTER_NONE;
		CHECK_EQ(sluice_backoff_delay_ns(&b, 1, 0, &r), 100 * MS);
		CHECK_EQ(sluice_backoff_delay_ns(&b, 2, 0, &r), 200 * MS);
		CHECK_EQ(sluice_backoff_delay_ns(&b, 10, 0, &r), 51200 * MS);
		CHECK_EQ(sluice_backoff_delay_ns(&b, 11, 0, &r), 60 * S);
	}
	/* A fractional factor truncates: 1000 ns * 1.5^k. */
	{
		struct sluice_backoff b =
			policy(1 * MS, 10 * S, 1.5, SLUICE_JITTER_NONE, 0);

		CHECK_EQ(sluice_backoff_delay_ns(&b, 2, 0, &r), 1500000);
		CHECK_EQ(sluice_backoff_delay_ns(&b, 3, 0, &r), 2250000);
		CHECK_EQ(sluice_backoff_delay_ns(&b, 4, 0, &r), 3375000);
	}
}

/* With min_ns == 0 growth starts from 1 ms (see backoff.c). */
static void
test_zero_min(void)
{
	struct sluice_backoff b = policy(0, 1 * S, 2.0, SLUICE_JITTER_NONE, 0);
	struct sluice_rng r;
	uint32_t n;
	int i;
	bool zero = false;

	sluice_rng_seed(&r, 11);
	for (n = 1; n <= 40; n++) {
		CHECK_EQ(sluice_backoff_delay_ns(&b, n, 0, &r),
			 expected(1 * MS, 1 * S, 2, n));
	}
	b.max_ns = 500000; /* below the 1 ms growth base: the cap wins */
	CHECK_EQ(sluice_backoff_delay_ns(&b, 1, 0, &r), 500000);
	b.max_ns = 0;
	CHECK_EQ(sluice_backoff_delay_ns(&b, 7, 0, &r), 0);

	/* FULL jitter from zero may really return zero. */
	b = policy(0, 3, 2.0, SLUICE_JITTER_FULL, 0);
	for (i = 0; i < 1000 && !zero; i++) {
		int64_t d = sluice_backoff_delay_ns(&b, 1, 0, &r);

		CHECK_GE(d, 0);
		CHECK_LE(d, 3);
		zero = d == 0;
	}
	CHECK(zero);
}

static void
test_jitter_bounds(void)
{
	const int64_t min = 100 * MS, max = 60 * S;
	struct sluice_backoff full =
		policy(min, max, 2.0, SLUICE_JITTER_FULL, 0);
	struct sluice_backoff eq =
		policy(min, max, 2.0, SLUICE_JITTER_EQUAL, 0);
	struct sluice_rng r;
	uint32_t n;
	int i;

	sluice_rng_seed(&r, 12345);
	for (n = 1; n <= 40; n++) {
		int64_t d = expected(min, max, 2, n);
		int64_t fmin = INT64_MAX, fmax = 0, emin = INT64_MAX, emax = 0;
		double fsum = 0, esum = 0;
		const int draws = 2000;

		for (i = 0; i < draws; i++) {
			int64_t f = sluice_backoff_delay_ns(&full, n, 0, &r);
			int64_t e = sluice_backoff_delay_ns(&eq, n, 0, &r);

			CHECK_GE(f, min);
			CHECK_LE(f, d);
			CHECK_GE(e, d / 2 > min ? d / 2 : min);
			CHECK_LE(e, d);
			fmin = f < fmin ? f : fmin;
			fmax = f > fmax ? f : fmax;
			emin = e < emin ? e : emin;
			emax = e > emax ? e : emax;
			fsum += (double)f;
			esum += (double)e;
		}
		if (d >= 4 * min) {
			/*
			 * Spread over the whole range, not stuck at one end:
			 * FULL averages d/2 (a little more from the raise to
			 * min), EQUAL 3d/4.
			 */
			CHECK_LE(fmin, d / 4);
			CHECK_GT(fmax, d - d / 16);
			CHECK_LT(emin, d / 2 + d / 16);
			CHECK_GT(emax, d - d / 16);
			CHECK_GT(fsum / draws, 0.45 * (double)d);
			CHECK_LT(fsum / draws, 0.60 * (double)d);
			CHECK_GT(esum / draws, 0.72 * (double)d);
			CHECK_LT(esum / draws, 0.78 * (double)d);
		}
	}
}

/* 100 ms * factor^(attempt-1) is far past @max: NONE gives max exactly. */
static void
check_saturates(uint32_t attempt, double factor, int64_t max,
		enum sluice_jitter j, struct sluice_rng *r)
{
	struct sluice_backoff b = policy(100 * MS, max, factor, j, 0);
	int64_t d = sluice_backoff_delay_ns(&b, attempt, 0, r);

	CHECK_GE(d, 100 * MS);
	CHECK_LE(d, max);
	if (j == SLUICE_JITTER_NONE)
		CHECK_EQ(d, max);
}

static void
test_huge_attempts_saturate(void)
{
	const uint32_t attempts[] = {
		41, 63, 64, 65, 1000, 1U << 20, UINT32_MAX - 1, UINT32_MAX
	};
	const double factors[] = { 2.0, 10.0, 1e300, (double)INFINITY };
	const int64_t maxes[] = { 60 * S, INT64_MAX };
	const enum sluice_jitter jitters[] = { SLUICE_JITTER_NONE,
					       SLUICE_JITTER_FULL,
					       SLUICE_JITTER_EQUAL };
	struct sluice_rng r;
	size_t a, f, m, j;

	sluice_rng_seed(&r, 5);
	for (a = 0; a < NELEM(attempts); a++) {
		for (f = 0; f < NELEM(factors); f++) {
			for (m = 0; m < NELEM(maxes); m++) {
				for (j = 0; j < NELEM(jitters); j++) {
					check_saturates(attempts[a], factors[f],
							maxes[m], jitters[j],
							&r);
				}
			}
		}
	}

	/* A factor just above 1 grows slowly but still saturates. */
	{
		struct sluice_backoff b = policy(100 * MS, 60 * S, 1.0000001,
						 SLUICE_JITTER_NONE, 0);
		int64_t d = sluice_backoff_delay_ns(&b, 1000, 0, &r);

		CHECK_GT(d, 100 * MS);
		CHECK_LT(d, 101 * MS);
		CHECK_EQ(sluice_backoff_delay_ns(&b, UINT32_MAX, 0, &r),
			 60 * S);
	}
	/* Factor 1 never grows, however many attempts. */
	{
		struct sluice_backoff b =
			policy(100 * MS, 60 * S, 1.0, SLUICE_JITTER_NONE, 0);

		CHECK_EQ(sluice_backoff_delay_ns(&b, UINT32_MAX, 0, &r),
			 100 * MS);
	}
	/* min == max == INT64_MAX. */
	{
		struct sluice_backoff b = policy(INT64_MAX, INT64_MAX, 2.0,
						 SLUICE_JITTER_EQUAL, 0);

		CHECK_EQ(sluice_backoff_delay_ns(&b, UINT32_MAX, 0, &r),
			 INT64_MAX);
	}
}

static void
test_decorrelated(void)
{
	const int64_t min = 100 * MS, max = 10 * S;
	struct sluice_backoff b =
		policy(min, max, 2.0, SLUICE_JITTER_DECORRELATED, 0);
	struct sluice_rng r;
	int64_t prev, top_small = 0, top_big = 0;
	int i;

	sluice_rng_seed(&r, 77);
	for (i = 0; i < 5000; i++) {
		/* prev 0 counts as min: uniform[min, 3 min]. */
		int64_t d = sluice_backoff_delay_ns(&b, 1, 0, &r);

		CHECK_GE(d, min);
		CHECK_LE(d, 3 * min);
		top_small = d > top_small ? d : top_small;
		/* A larger prev widens the range to 3 prev. */
		d = sluice_backoff_delay_ns(&b, 1, 2 * S, &r);
		CHECK_GE(d, min);
		CHECK_LE(d, 6 * S);
		top_big = d > top_big ? d : top_big;
		/* 3 prev beyond max: capped, never more. */
		d = sluice_backoff_delay_ns(&b, 1, INT64_MAX, &r);
		CHECK_GE(d, min);
		CHECK_LE(d, max);
	}
	CHECK_GT(top_small, 3 * min - 3 * min / 50);
	CHECK_GT(top_big, 6 * S - 6 * S / 50);

	/* Chained as intended: prev = last delay; stays in [min, max]. */
	prev = 0;
	for (i = 0; i < 10000; i++) {
		int64_t d = sluice_backoff_delay_ns(&b, (uint32_t)i, prev, &r);

		CHECK_GE(d, min);
		CHECK_LE(d, max);
		CHECK_LE(d, prev > min ? 3 * prev : 3 * min);
		prev = d;
	}

	/* min 0: prev 0 counts as the 1 ms growth base, so it moves. */
	b = policy(0, max, 2.0, SLUICE_JITTER_DECORRELATED, 0);
	top_small = 0;
	for (i = 0; i < 2000; i++) {
		int64_t d = sluice_backoff_delay_ns(&b, 1, 0, &r);

		CHECK_GE(d, 0);
		CHECK_LE(d, 3 * MS);
		top_small = d > top_small ? d : top_small;
	}
	CHECK_GT(top_small, 2 * MS);
}

static void
test_invalid_policy_sanitised(void)
{
	struct sluice_backoff b =
		policy(-5, -10, (double)NAN, (enum sluice_jitter)99, 0);
	struct sluice_rng r;

	sluice_rng_seed(&r, 1);
	CHECK_EQ(sluice_backoff_delay_ns(&b, 3, 0, &r), 0);
	b = policy(10 * MS, 5 * MS, 0.5, SLUICE_JITTER_FULL, 0);
	CHECK_EQ(sluice_backoff_delay_ns(&b, 3, 0, &r), 10 * MS);
	b = policy(10 * MS, 50 * MS, -1.0, SLUICE_JITTER_NONE, 0);
	CHECK_EQ(sluice_backoff_delay_ns(&b, 30, 0, &r), 10 * MS);
	CHECK_EQ(sluice_backoff_delay_ns(NULL, 3, 0, &r), 0);
}

/* ---- retry decisions ----------------------------------------------------- */

static void
test_should_retry_matrix(void)
{
	const enum sluice_class classes[] = {
		SLUICE_CLASS_OK, SLUICE_CLASS_TIMEOUT, SLUICE_CLASS_TEMPORARY,
		SLUICE_CLASS_PERMANENT, SLUICE_CLASS_CANCELED
	};
	const uint32_t attempts[] = { 0, 1, 2, 3, 4, 100, UINT32_MAX };
	struct sluice_backoff capped = sluice_backoff_default();
	struct sluice_backoff unlimited = sluice_backoff_default();
	size_t c, a;

	capped.max_attempts = 3;
	unlimited.max_attempts = 0;
	for (c = 0; c < NELEM(classes); c++) {
		bool retryable = classes[c] == SLUICE_CLASS_TIMEOUT ||
				 classes[c] == SLUICE_CLASS_TEMPORARY;

		for (a = 0; a < NELEM(attempts); a++) {
			CHECK_EQ(sluice_backoff_should_retry(
					 &capped, classes[c], attempts[a]),
				 retryable && attempts[a] < 3);
			CHECK_EQ(sluice_backoff_should_retry(
					 &unlimited, classes[c], attempts[a]),
				 retryable);
		}
	}
	capped.max_attempts = 1; /* one delivery, no retry */
	CHECK(!sluice_backoff_should_retry(&capped, SLUICE_CLASS_TEMPORARY, 1));
	CHECK(!sluice_backoff_should_retry(NULL, SLUICE_CLASS_TEMPORARY, 1));
	CHECK(!sluice_backoff_should_retry(&unlimited, (enum sluice_class)9,
					   1));
}

static void
test_retry_delay_hint(void)
{
	struct sluice_backoff b =
		policy(100 * MS, 10 * S, 2.0, SLUICE_JITTER_NONE, 0);
	struct sluice_error *e =
		sluice_error_new(SLUICE_CLASS_TEMPORARY, 503, "HTTP 503");
	struct sluice_rng r;
	int i;

	sluice_rng_seed(&r, 2);
	/* No error or no hint: the policy's delay. */
	CHECK_EQ(sluice_backoff_retry_delay_ns(&b, 3, NULL, &r), 400 * MS);
	CHECK_EQ(sluice_backoff_retry_delay_ns(&b, 3, e, &r), 400 * MS);
	/* A longer hint wins; a shorter one does not shorten the wait. */
	sluice_error_set_retry_after_ns(e, 5 * S);
	CHECK_EQ(sluice_backoff_retry_delay_ns(&b, 3, e, &r), 5 * S);
	sluice_error_set_retry_after_ns(e, 50 * MS);
	CHECK_EQ(sluice_backoff_retry_delay_ns(&b, 3, e, &r), 400 * MS);
	/* Still capped at max. */
	sluice_error_set_retry_after_ns(e, 3600 * S);
	CHECK_EQ(sluice_backoff_retry_delay_ns(&b, 3, e, &r), 10 * S);
	CHECK_EQ(sluice_backoff_retry_delay_ns(NULL, 3, e, &r), 0);

	/* With jitter the hint is a floor. */
	b.jitter = SLUICE_JITTER_FULL;
	sluice_error_set_retry_after_ns(e, 2 * S);
	for (i = 0; i < 1000; i++) {
		int64_t d = sluice_backoff_retry_delay_ns(&b, 6, e, &r);

		CHECK_GE(d, 2 * S);
		CHECK_LE(d, 3200 * MS);
	}

	/* Decorrelated takes the previous attempt's plain delay as prev. */
	b.jitter = SLUICE_JITTER_DECORRELATED;
	for (i = 0; i < 1000; i++) {
		int64_t d1 = sluice_backoff_retry_delay_ns(&b, 1, NULL, &r);
		int64_t d4 = sluice_backoff_retry_delay_ns(&b, 4, NULL, &r);

		CHECK_GE(d1, 100 * MS);
		CHECK_LE(d1, 300 * MS);
		CHECK_GE(d4, 100 * MS);
		CHECK_LE(d4, 1200 * MS); /* 3 * 400 ms */
	}
	sluice_error_free(e);
}

CHECK_MAIN(test_rng_known_answers, test_rng_determinism,
	   test_rng_bits_look_random, test_rng_range_bounds,
	   test_rng_range_unbiased_large_span, test_default_policy, test_check,
	   test_none_growth_exact, test_zero_min, test_jitter_bounds,
	   test_huge_attempts_saturate, test_decorrelated,
	   test_invalid_policy_sanitised, test_should_retry_matrix,
	   test_retry_delay_hint)
