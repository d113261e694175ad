/* SPDX-License-Identifier: MIT */
/*
 * cli.h - shared pieces of the sluice command line tool: value parsers,
 * the latency histogram, and the subcommands' entry points.
 */
#ifndef SLUICE_CLI_H
#define SLUICE_CLI_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Exit codes (documented in README's CLI reference). */
enum {
	EXIT_OK = 0,         /* every message handled */
	EXIT_DEAD = 1,       /* some messages were dead-lettered */
	EXIT_USAGE = 2,      /* bad flags or arguments */
	EXIT_INPUT = 3,      /* the input broke off: malformed or read error */
	EXIT_NOINPUT = 66,   /* an input file cannot be opened */
	EXIT_SOFTWARE = 70,  /* internal error */
	EXIT_CANTCREAT = 73, /* an output or dead-letter file cannot be made */
};

/* "250ms", "2s", "1m", "1h", "500us", "0" -> ns.  Returns 0 or -1. */
int cli_parse_duration(const char *s, int64_t *out);

/* "4096", "64K", "1M", "1G" (powers of 1024) -> bytes.  0 or -1. */
int cli_parse_size(const char *s, uint64_t *out);

/* A decimal count in [min, max].  0 or -1. */
int cli_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* Format @ns as "1.2 ms", "35 us", "2.50 s" into @buf. */
void cli_format_duration(int64_t ns, char *buf, size_t size);

/*
 * Latency histogram: log-linear buckets (8 per power of two) from 1 us to
 * ~1 h, relaxed atomic counters, so any thread adds without a lock.
 */
#define CLI_HIST_BUCKETS (8 * 32)
struct cli_hist {
	_Atomic uint64_t b[CLI_HIST_BUCKETS];
	_Atomic uint64_t count;
};
void cli_hist_add(struct cli_hist *h, int64_t ns);
/* The @q quantile (0..1) in ns: the upper edge of its bucket; 0 if empty. */
int64_t cli_hist_quantile(struct cli_hist *h, double q);

int cli_consume(int argc, char **argv);

#endif /* SLUICE_CLI_H */
