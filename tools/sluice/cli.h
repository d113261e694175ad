/* SPDX-License-Identifier: MIT */
/*
 * cli.h - shared pieces of the sluice command line tool: value parsers,
 * the latency histogram, and the subcommands' entry points.
 */
#ifndef SLUICE_CLI_H
#define SLUICE_CLI_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Exit codes (documented in README's CLI reference). */
enum {
	EXIT_OK = 0,       /* every message handled */
	EXIT_DEAD = 1,     /* some messages were dead-lettered */
	EXIT_USAGE = 2,    /* bad flags or arguments */
	EXIT_INPUT = 3,    /* the input broke off: malformed or read error */
	EXIT_NOINPUT = 66, /* an input file cannot be opened */
	EXIT_UNAVAILABLE = 69, /* nsqd cannot be reached */
	EXIT_SOFTWARE = 70,    /* internal error */
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

/*
 * "HOST:PORT", "HOST" (port @dflt_port), "[V6ADDR]:PORT" -> @host (NUL-
 * terminated, @hostsize bytes) and *@port.  Returns 0 or -1.
 */
int cli_parse_hostport(const char *s, uint16_t dflt_port, char *host,
		       size_t hostsize, uint16_t *port);

/*
 * "sluice CMD: <message>" and the --help hint on stderr, for a flag error.
 * Returns: EXIT_USAGE.
 */
int cli_usage_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * A subcommand's flags for cli_parse_flags().  Options stop at the first
 * operand.  -h/--help prints the @usage pieces (NULL-terminated) to stdout;
 * every other option goes to @apply(@opts, c), which returns 0 or an exit
 * status after a message (cli_usage_error).  With @env, every long flag
 * may also come from SLUICE_<NAME> (upper case, '-' as '_'; for a flag
 * without a value, anything but "0" and "false" sets it): those are put in
 * front of the real arguments, so a flag on the command line wins.
 */
struct option;
struct cli_flags {
	const char *cmd;       /* "consume": for messages */
	const char *shortopts; /* getopt's, after the leading '+' */
	const struct option *longopts;
	const char *const *usage;
	bool env;
	int (*apply)(void *opts, int c);
};

/* The vector cli_parse_flags() parsed; option values and operands point
 * into it (or into argv) until cli_args_free(). */
struct cli_args {
	char **v; /* NULL: argv itself was parsed */
	int nenv; /* v[1..nenv] were allocated from the environment */
};

/*
 * Parse @argc/@argv as @f says into @opts.  Returns 0 with the operands in
 * *@files / *@nfiles, -1 after --help, or an exit status after a message.
 * Call cli_args_free(@a) once done with the values, whatever it returned.
 */
int cli_parse_flags(const struct cli_flags *f, void *opts, int argc,
		    char **argv, struct cli_args *a, char ***files,
		    int *nfiles);
void cli_args_free(struct cli_args *a);

/* The monotonic clock, in ns. */
int64_t cli_now_ns(void);

struct sluice_stream;
struct sluice_stream_config;

/*
 * Open the input stream of @sc reading @files (none: stdin).  Returns 0 and
 * *@out, or an exit status (EXIT_USAGE, EXIT_NOINPUT) after a message.
 */
int cli_open_input(const char *cmd, struct sluice_stream_config *sc,
		   char **files, int nfiles, struct sluice_stream **out);

struct sluice_dlq;

/*
 * The dead-letter sink named by a --dead-letter value: "nsq://TOPIC"
 * (published through @nsqd, "HOST:PORT", the consume command's first
 * --nsqd; NULL if none), "nsq://HOST:PORT/TOPIC", or else a file path
 * (JSON lines, fsync'd per record).  Connects to nsqd before returning.
 * Returns: 0 and *@out (close with sluice_dlq_close()), or an exit status
 * (EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_CANTCREAT) with @err saying why.
 */
int cli_dead_letter_open(const char *spec, const char *nsqd,
			 struct sluice_dlq *out, char *err, size_t errsize);

/* --cpuprofile, --memprofile, --trace (obs.c). */
struct cli_obs {
	const char *cpuprofile, *memprofile, *trace; /* NULL: not asked */
};
/* Check the files can be created, then start what @o asks for; EXIT_OK,
 * or an exit code after a message. */
int cli_obs_start(const struct cli_obs *o, const char *cmd);
/* Stop and write the files; EXIT_OK or EXIT_CANTCREAT after a message. */
int cli_obs_finish(const struct cli_obs *o, const char *cmd);

int cli_consume(int argc, char **argv);
int cli_publish(int argc, char **argv);

#endif /* SLUICE_CLI_H */
