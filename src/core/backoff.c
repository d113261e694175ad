/* SPDX-License-Identifier: MIT */
/*
 * backoff.c - retry policy arithmetic and the xoshiro256** generator.
 *
 * Everything here is a pure function of its arguments plus a caller-held
 * struct sluice_rng, so there is no shared state and no locking; each
 * thread keeps its own rng.
 *
 * Invariants the arithmetic keeps for ANY policy, valid or not (an invalid
 * one is sanitised rather than trusted: negative min becomes 0, max below
 * min becomes min, a factor below 1 or NaN becomes 1, an unknown jitter acts
 * as NONE):
 *  - no signed overflow and no out-of-range double to integer conversion,
 *    for every attempt up to UINT32_MAX and every factor up to infinity;
 *  - every delay lies in [min_ns, max_ns].
 *
 * Growth starts from max(min_ns, 1 ms): with min_ns == 0 a base of 0 would
 * never grow, so 1 ms is the smallest step (still raised/capped into
 * [min_ns, max_ns] afterwards).  Fractional results are truncated.
 */
#include <limits.h>

#include <sluice/backoff.h>

#define GROWTH_FLOOR_NS SLUICE_NS_PER_MS

/* ---- xoshiro256** (Blackman and Vigna, public domain) -------------------- */

static uint64_t
rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t
splitmix64(uint64_t *x)
{
	uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));

	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/*
 * splitmix64 is a bijection of its counter, so at most one of four
 * consecutive outputs is zero: every seed, 0 included, yields the non-zero
 * state xoshiro needs.
 */
void
sluice_rng_seed(struct sluice_rng *r, uint64_t seed)
{
	int i;

	for (i = 0; i < 4; i++)
		r->s[i] = splitmix64(&seed);
}

uint64_t
sluice_rng_next(struct sluice_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

/* Two's complement reading of @x, without implementation-defined casts. */
static int64_t
to_signed(uint64_t x)
{
	if (x <= (uint64_t)INT64_MAX)
		return (int64_t)x;
	return -(int64_t)~x - 1;
}

/*
 * Exactly uniform: draws below 2^64 mod n are rejected so every residue
 * has the same number of preimages (OpenBSD's arc4random_uniform).  Fewer
 * than half the draws are ever rejected, so the loop ends fast.
 */
int64_t
sluice_rng_range(struct sluice_rng *r, int64_t lo, int64_t hi)
{
	uint64_t n, threshold, x;

	if (hi <= lo)
		return lo;
	n = (uint64_t)hi - (uint64_t)lo + 1; /* modulo 2^64 */
	if (n == 0)
		return to_signed(sluice_rng_next(r)); /* the full range */
	threshold = (0 - n) % n;
	do {
		x = sluice_rng_next(r);
	} while (x < threshold);
	return to_signed((uint64_t)lo + x % n);
}

/* ---- policy -------------------------------------------------------------- */

struct sluice_backoff
sluice_backoff_default(void)
{
	struct sluice_backoff b = {
		.min_ns = 100 * SLUICE_NS_PER_MS,
		.max_ns = 60 * SLUICE_NS_PER_S,
		.factor = 2.0,
		.jitter = SLUICE_JITTER_FULL,
		.max_attempts = 5,
	};

	return b;
}

int
sluice_backoff_check(const struct sluice_backoff *b)
{
	if (!b || b->min_ns < 0 || b->max_ns < b->min_ns)
		return SLUICE_EINVAL;
	if (!(b->factor >= 1.0)) /* also NaN */
		return SLUICE_EINVAL;
	if ((unsigned)b->jitter > (unsigned)SLUICE_JITTER_DECORRELATED)
		return SLUICE_EINVAL;
	return 0;
}

/* A policy made safe to compute with; see the file comment. */
struct limits {
	int64_t lo, hi, base;
	double factor;
	enum sluice_jitter jitter;
};

static struct limits
sanitise(const struct sluice_backoff *b)
{
	struct limits l;

	l.lo = b->min_ns > 0 ? b->min_ns : 0;
	l.hi = b->max_ns > l.lo ? b->max_ns : l.lo;
	l.base = l.lo > GROWTH_FLOOR_NS ? l.lo : GROWTH_FLOOR_NS;
	l.factor = b->factor >= 1.0 ? b->factor : 1.0;
	l.jitter = (unsigned)b->jitter <= (unsigned)SLUICE_JITTER_DECORRELATED
			   ? b->jitter
			   : SLUICE_JITTER_NONE;
	return l;
}

/*
 * base * factor^exp, saturating at @cap, by square-and-multiply so huge
 * exponents take 32 steps.  Doubles overflow to +inf, which is defined and
 * compares as >= cap; every factor is >= 1, so the running product only
 * grows and can stop at the cap.  The final cast is in range because the
 * product is below cap <= INT64_MAX.
 */
static int64_t
grow(int64_t base, double factor, uint32_t exp, int64_t cap)
{
	double r = (double)base, f = factor;

	if (base >= cap)
		return cap;
	while (exp) {
		if (exp & 1U) {
			r *= f;
			if (!(r < (double)cap))
				return cap;
		}
		exp >>= 1;
		if (exp)
			f *= f;
	}
	return (int64_t)r;
}

/* Uniform in [lo, hi]; without an rng, the upper end (no jitter). */
static int64_t
draw(struct sluice_rng *rng, int64_t lo, int64_t hi)
{
	return rng ? sluice_rng_range(rng, lo, hi) : hi;
}

static int64_t
clamp(int64_t v, const struct limits *l)
{
	if (v < l->lo)
		return l->lo;
	if (v > l->hi)
		return l->hi;
	return v;
}

/*
 * DECORRELATED ignores @attempt: its state is @prev_ns.  A prev below the
 * growth base (0 on the first retry) counts as the growth base, so a policy
 * with min_ns == 0 still moves off zero.
 */
int64_t
sluice_backoff_delay_ns(const struct sluice_backoff *b, uint32_t attempt,
			int64_t prev_ns, struct sluice_rng *rng)
{
	struct limits l;
	int64_t d, h, p, up;

	if (!b)
		return 0;
	l = sanitise(b);
	if (attempt == 0)
		attempt = 1;
	d = grow(l.base, l.factor, attempt - 1, l.hi);
	switch (l.jitter) {
	case SLUICE_JITTER_FULL:
		d = draw(rng, 0, d);
		break;
	case SLUICE_JITTER_EQUAL:
		/* d - h, not h, so an odd d can still reach d itself. */
		h = d / 2;
		d = h + draw(rng, 0, d - h);
		break;
	case SLUICE_JITTER_DECORRELATED:
		p = prev_ns > l.base ? prev_ns : l.base;
		up = p > INT64_MAX / 3 ? INT64_MAX : p * 3;
		d = draw(rng, l.lo, up);
		break;
	case SLUICE_JITTER_NONE:
	default:
		break;
	}
	return clamp(d, &l);
}

bool
sluice_backoff_should_retry(const struct sluice_backoff *b,
			    enum sluice_class cls, uint32_t attempt)
{
	if (!b)
		return false;
	if (cls != SLUICE_CLASS_TIMEOUT && cls != SLUICE_CLASS_TEMPORARY)
		return false;
	return b->max_attempts == 0 || attempt < b->max_attempts;
}

/*
 * The caller does not keep the previous delay, so DECORRELATED takes the
 * un-jittered delay of the previous attempt as prev (none for attempt 1).
 * A Retry-After hint can only lengthen the wait, never past max_ns: a
 * server that asks for an hour does not override a one-minute policy.
 */
int64_t
sluice_backoff_retry_delay_ns(const struct sluice_backoff *b, uint32_t attempt,
			      const struct sluice_error *err,
			      struct sluice_rng *rng)
{
	struct limits l;
	int64_t d, prev = 0, hint;

	if (!b)
		return 0;
	l = sanitise(b);
	if (l.jitter == SLUICE_JITTER_DECORRELATED && attempt > 1)
		prev = grow(l.base, l.factor, attempt - 2, l.hi);
	d = sluice_backoff_delay_ns(b, attempt, prev, rng);
	hint = sluice_error_retry_after_ns(err);
	if (hint > d)
		d = hint < l.hi ? hint : l.hi;
	return d;
}
