/* SPDX-License-Identifier: MIT */
/*
 * util.c - what the subcommands share: flag parsing (with SLUICE_*
 * variables as defaults), value parsers, the latency histogram, opening
 * the input and the dead-letter sink.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/dlq.h>
#include <sluice/nsq_producer.h>
#include <sluice/sluice.h>
#include <sluice/stream.h>

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

int
cli_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "sluice %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'sluice %s --help'.\n", cmd);
	return EXIT_USAGE;
}

/*
 * The flags the environment gives (SLUICE_*), then the real arguments, so a
 * flag on the command line, parsed later, wins.  NULL on ENOMEM.
 */
static char **
with_env(const struct option *longopts, int argc, char **argv, int *nargc,
	 int *nenv)
{
	const struct option *lo;
	char **v, name[64], *val;
	size_t i, k = 0, n, nlong = 0;

	for (lo = longopts; lo->name; lo++)
		nlong++;
	v = calloc((size_t)argc + 2 * nlong + 1, sizeof(*v));
	if (!v)
		return NULL;
	v[k++] = argv[0];
	*nenv = 0;
	for (lo = longopts; lo->name; lo++) {
		snprintf(name, sizeof(name), "SLUICE_");
		for (i = 0; lo->name[i] && i + 8 < sizeof(name); i++)
			name[7 + i] = lo->name[i] == '-'
					      ? '_'
					      : (char)(lo->name[i] & ~0x20);
		name[7 + i] = 0;
		val = getenv(name);
		if (!val || !*val || lo->val == 'h')
			continue;
		if (lo->has_arg == no_argument) {
			if (strcmp(val, "0") == 0 || strcmp(val, "false") == 0)
				continue;
			if (asprintf(&v[k], "--%s", lo->name) < 0)
				goto nomem;
		} else if (asprintf(&v[k], "--%s=%s", lo->name, val) < 0) {
			goto nomem;
		}
		*nenv = (int)k++;
	}
	for (n = 1; n < (size_t)argc; n++)
		v[k++] = argv[n];
	*nargc = (int)k;
	return v;
nomem:
	for (i = 1; i < k; i++)
		free(v[i]);
	free(v);
	return NULL;
}

int
cli_parse_flags(const struct cli_flags *f, void *opts, int argc, char **argv,
		struct cli_args *a, char ***files, int *nfiles)
{
	char shortopts[32];
	const char *const *u;
	int c, rc;

	a->v = NULL;
	a->nenv = 0;
	if (f->env) {
		a->v = with_env(f->longopts, argc, argv, &argc, &a->nenv);
		if (!a->v) {
			fprintf(stderr, "sluice %s: out of memory\n", f->cmd);
			return EXIT_SOFTWARE;
		}
		argv = a->v;
	}
	snprintf(shortopts, sizeof(shortopts), "+%s", f->shortopts);
	optind = 1;
	while ((c = getopt_long(argc, argv, shortopts, f->longopts, NULL)) !=
	       -1) {
		if (c == 'h') {
			for (u = f->usage; *u; u++)
				fputs(*u, stdout);
			return -1;
		}
		rc = f->apply(opts, c);
		if (rc)
			return rc;
	}
	*files = argv + optind;
	*nfiles = argc - optind;
	return 0;
}

void
cli_args_free(struct cli_args *a)
{
	int i;

	for (i = 1; a->v && i <= a->nenv; i++)
		free(a->v[i]);
	free(a->v);
	a->v = NULL;
	a->nenv = 0;
}

int64_t
cli_now_ns(void)
{
	return sluice_clock_now_ns(sluice_clock_monotonic());
}

int
cli_open_input(const char *cmd, struct sluice_stream_config *sc, char **files,
	       int nfiles, struct sluice_stream **out)
{
	char err[256] = "";
	int rc;

	sc->paths = (const char *const *)files;
	sc->npaths = (size_t)nfiles;
	rc = sluice_stream_open(sc, err, sizeof(err), out);
	if (rc == 0)
		return EXIT_OK;
	fprintf(stderr, "sluice %s: %s\n", cmd,
		*err ? err : sluice_strerror(rc));
	return rc == SLUICE_EINVAL ? EXIT_USAGE : EXIT_NOINPUT;
}

int
cli_parse_hostport(const char *s, uint16_t dflt_port, char *host,
		   size_t hostsize, uint16_t *port)
{
	const char *colon, *end;
	uint64_t v = dflt_port;
	size_t n;

	if (!s || !*s)
		return -1;
	if (*s == '[') { /* [::1]:4150 */
		end = strchr(s, ']');
		if (!end || (end[1] && end[1] != ':'))
			return -1;
		colon = end[1] ? end + 1 : NULL;
		s++;
	} else {
		colon = strrchr(s, ':');
		if (colon && strchr(s, ':') != colon)
			return -1; /* a bare IPv6 address needs brackets */
		end = colon ? colon : s + strlen(s);
	}
	n = (size_t)(end - s);
	if (n == 0 || n >= hostsize)
		return -1;
	if (colon && cli_parse_uint(colon + 1, 1, 65535, &v))
		return -1;
	memcpy(host, s, n);
	host[n] = '\0';
	*port = (uint16_t)v;
	return 0;
}

int
cli_dead_letter_open(const char *spec, const char *nsqd, struct sluice_dlq *out,
		     char *err, size_t errsize)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer *p;
	char host[256], addr[300], why[256];
	const char *topic, *slash;
	int rc;

	if (strncmp(spec, "nsq://", 6) != 0) {
		rc = sluice_dlq_file_open(spec, true, out);
		if (rc == 0)
			return 0;
		snprintf(err, errsize, "%s: %s", spec,
			 rc < 0 && rc > -4096 ? strerror(-rc)
					      : sluice_strerror(rc));
		return EXIT_CANTCREAT;
	}
	spec += 6;
	slash = strrchr(spec, '/');
	if (slash) {
		if ((size_t)(slash - spec) >= sizeof(addr))
			goto bad;
		memcpy(addr, spec, (size_t)(slash - spec));
		addr[slash - spec] = '\0';
		nsqd = addr;
		topic = slash + 1;
	} else if (nsqd) {
		topic = spec;
	} else {
		snprintf(err, errsize,
			 "--dead-letter nsq://%s needs --nsqd, or give "
			 "nsq://HOST:PORT/TOPIC",
			 spec);
		return EXIT_USAGE;
	}
	sluice_nsq_producer_config_init(&cfg);
	if (cli_parse_hostport(nsqd, 4150, host, sizeof(host), &cfg.port) ||
	    !sluice_nsq_name_is_valid(topic))
		goto bad;
	cfg.host = host;
	cfg.client_id = "sluice-dead-letter";
	cfg.retries = 2; /* a record twice beats a message requeued */
	rc = sluice_nsq_producer_new(&cfg, why, sizeof(why), &p);
	if (rc) {
		snprintf(err, errsize, "--dead-letter: %s",
			 *why ? why : sluice_strerror(rc));
		return EXIT_UNAVAILABLE;
	}
	rc = sluice_dlq_nsq_open(p, true, topic, out);
	if (rc == 0)
		return 0;
	sluice_nsq_producer_free(p);
	snprintf(err, errsize, "--dead-letter: %s", sluice_strerror(rc));
	return EXIT_SOFTWARE;
bad:
	snprintf(err, errsize,
		 "--dead-letter wants nsq://TOPIC, nsq://HOST:PORT/TOPIC "
		 "(a valid NSQ topic name) or a file, not 'nsq://%s'",
		 spec);
	return EXIT_USAGE;
}
