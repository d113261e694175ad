/* SPDX-License-Identifier: MIT */
/*
 * util.c - the command line's value parsers and latency histogram.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int
cli_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (!s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int
cli_parse_duration(const char *s, int64_t *out)
{
	static const struct {
		const char *unit;
		double ns;
	} units[] = { { "ns", 1.0 }, { "us", 1e3 }, { "ms", 1e6 },
		      { "s", 1e9 },  { "m", 60e9 }, { "h", 3600e9 } };
	double v;
	char *end;
	size_t i;

	if (!s || !(isdigit((unsigned char)*s) || *s == '.'))
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || v < 0)
		return -1;
	if (*end == 0) {
		if (v != 0.0)
			return -1; /* a unit is required, except for 0 */
		*out = 0;
		return 0;
	}
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].unit) == 0) {
			if (v * units[i].ns > 9.2e18)
				return -1;
			*out = (int64_t)(v * units[i].ns);
			return 0;
		}
	}
	return -1;
}

int
cli_parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	uint64_t mul = 1;
	char *end;

	if (!s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -1;
	switch (*end) {
	case 0:
		break;
	case 'k':
	case 'K':
		mul = 1024;
		break;
	case 'M':
		mul = 1024 * 1024;
		break;
	case 'G':
		mul = 1024ULL * 1024 * 1024;
		break;
	default:
		return -1;
	}
	if (*end && end[1] && !(end[1] == 'B' && !end[2]) &&
	    !(end[1] == 'i' && end[2] == 'B' && !end[3]))
		return -1;
	if (v > UINT64_MAX / mul)
		return -1;
	*out = v * mul;
	return 0;
}

void
cli_format_duration(int64_t ns, char *buf, size_t size)
{
	if (ns < 1000)
		snprintf(buf, size, "%lld ns", (long long)ns);
	else if (ns < 1000000)
		snprintf(buf, size, "%.1f us", (double)ns / 1e3);
	else if (ns < 1000000000)
		snprintf(buf, size, "%.1f ms", (double)ns / 1e6);
	else
		snprintf(buf, size, "%.2f s", (double)ns / 1e9);
}

/* Bucket b covers up to 1 us * 2^(b/8) * (1 + (b%8)/8), roughly. */
static int64_t
bucket_top(unsigned b)
{
	int64_t base = (int64_t)1000 << (b / 8);

	return base + base * (int64_t)(b % 8 + 1) / 8;
}

void
cli_hist_add(struct cli_hist *h, int64_t ns)
{
	unsigned lo = 0, hi = CLI_HIST_BUCKETS - 1, mid;

	/* Binary search for the first bucket whose top covers @ns. */
	while (lo < hi) {
		mid = (lo + hi) / 2;
		if (bucket_top(mid) >= ns)
			hi = mid;
		else
			lo = mid + 1;
	}
	atomic_fetch_add_explicit(&h->b[lo], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

int64_t
cli_hist_quantile(struct cli_hist *h, double q)
{
	uint64_t total = atomic_load(&h->count), seen = 0, want;
	unsigned b;

	if (total == 0)
		return 0;
	want = (uint64_t)((double)total * q);
	if (want < 1)
		want = 1;
	for (b = 0; b < CLI_HIST_BUCKETS; b++) {
		seen += atomic_load_explicit(&h->b[b], memory_order_relaxed);
		if (seen >= want)
			return bucket_top(b);
	}
	return bucket_top(CLI_HIST_BUCKETS - 1);
}
