/* SPDX-License-Identifier: MIT */
/*
 * consume.c - `sluice consume`: read messages from stdin or files, or
 * consume an NSQ topic (--nsqd / --lookupd), and hand each one (or each
 * batch) to a command, a file, stdout or nowhere, through the engine:
 * bounded concurrency or batches, deadlines, retries, dead-lettering and a
 * graceful drain.  Uses the public API only.
 *
 * Threads: main (setup, wait, summary), the stream's reader (or the NSQ
 * source's I/O and dialer threads), the engine's workers and watchdog, a
 * signal thread (SIGINT/SIGTERM: first drains, second stops now) and, on a
 * terminal, a progress thread.  Signals are blocked in every thread and
 * taken by sigtimedwait in the signal thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <sluice/debug_http.h>
#include <sluice/exec.h>
#include <sluice/nsq.h>
#include <sluice/sluice.h>
#include <sluice/stream.h>

#include "cli.h"

enum sink { SINK_STDOUT, SINK_OUTPUT, SINK_EXEC, SINK_DISCARD };

/* --prefetch not given: a quarter of -j for --exec, whose handlers are
 * slow and should not hold messages back from idle workers; 256 for the
 * cheap sinks, where fetching in bulk is what keeps up with the input. */
#define PREFETCH_UNSET (SLUICE_PREFETCH_AUTO - 1)
#define PREFETCH_BULK  256
#define MAX_ADDRS      64 /* --nsqd / --lookupd values */

struct opts {
	unsigned workers;
	unsigned prefetch;
	uint64_t batch, batch_bytes, count, max_body, capacity;
	int64_t batch_wait_ns, timeout_ns, drain_ns, kill_grace_ns;
	uint64_t max_attempts;
	int64_t backoff_min_ns, backoff_max_ns;
	const char *dead_letter, *output, *exec, *exit_codes, *debug_addr;
	struct cli_obs obs; /* --cpuprofile, --memprofile, --trace */
	enum sink sink;
	int nsinks;
	enum sluice_framing framing;
	bool quiet;
	/* NSQ (any --nsqd or --lookupd selects it) */
	const char *nsqd[MAX_ADDRS], *lookupd[MAX_ADDRS];
	size_t n_nsqd, n_lookupd;
	const char *topic, *channel;
	int64_t msg_timeout_ns; /* IDENTIFY msg_timeout; 0 = nsqd's */
	bool tls, tls_insecure, snappy, deflate;
	const char *tls_ca, *tls_cert, *tls_key, *auth_secret;
	uint64_t deflate_level;
};

/* State shared by handlers (workers), the signal and progress threads. */
struct run {
	struct opts o;
	struct sluice_exec_config exec;
	int out_fd; /* stdout or --output; writes under out_mu */
	pthread_mutex_t out_mu;
	struct cli_hist hist;
	struct sluice_engine *e;
	struct sluice_stream *stream; /* reading files/stdin, or */
	struct sluice_nsq *nsq;       /* consuming NSQ */
	_Atomic uint64_t taken;       /* NSQ: handler starts, for --count */
	struct sluice_dlq dlq;
	struct sluice_metrics *metrics; /* with --debug-addr */
	struct sluice_debug_http *http;
	_Atomic bool done;      /* main is finishing: helper threads exit */
	_Atomic int signals;    /* SIGINT/SIGTERM received */
	pthread_mutex_t err_mu; /* serialises stderr lines vs progress */
	int64_t t0;
};

static const char usage_text[] =
	"usage: sluice consume [flags] [FILE...]\n"
	"       sluice consume --topic T (--nsqd H:P | --lookupd URL)... [flags]\n"
	"\n"
	"Read messages from FILEs (default: stdin; '-' is stdin too), or from\n"
	"an NSQ topic, and hand each one, or each batch, to a command, a file\n"
	"or stdout, with bounded concurrency, a deadline per message, retries\n"
	"with backoff and a dead-letter file.  Nothing read is lost: on end of\n"
	"input or SIGINT/SIGTERM, sluice drains, and what it did not finish is\n"
	"dead-lettered with the reason (NSQ: given back to nsqd).  A second\n"
	"signal stops at once (still recorded).\n"
	"\n"
	"NSQ (handlers get the message bodies; attempts come from nsqd):\n"
	"  --nsqd H:P            an nsqd TCP address (repeatable); reconnected\n"
	"                        with exponential backoff when it drops\n"
	"  --lookupd URL         an nsqlookupd HTTP address (repeatable),\n"
	"                        polled every minute for the topic's nsqd\n"
	"  --topic T             the topic (required with --nsqd/--lookupd)\n"
	"  --channel C           the channel (default: sluice)\n"
	"  --msg-timeout DUR     nsqd's in-flight timeout for our messages\n"
	"                        (default: nsqd's, 60s); handlers still inside\n"
	"                        --timeout are TOUCHed before it runs out\n"
	"  --tls                 TLS to every nsqd (refused = not connected);\n"
	"                        the certificate must name the host dialled\n"
	"  --tls-ca FILE         PEM roots to verify with (default: system)\n"
	"  --tls-cert FILE, --tls-key FILE   a client certificate\n"
	"  --tls-insecure        accept any certificate (testing only)\n"
	"  --snappy | --deflate  compress the connections (when nsqd agrees)\n"
	"  --deflate-level N     1..9 (6)\n"
	"  --auth-secret S       AUTH secret, for an nsqd that requires it\n"
	"                        (better: SLUICE_AUTH_SECRET in the environment)\n"
	"  Credit (nsqd RDY, spread over the connections) is -j + --prefetch;\n"
	"  failures back consumption off (RDY 0, then a probe).\n"
	"\n";

/* Two literals: C11 promises only 4095 bytes per string literal. */
static const char usage_rest[] =
	"Sinks (one; default --stdout):\n"
	"  --exec CMD            run CMD via /bin/sh -c per message (per batch\n"
	"                        with --batch), the body on its stdin\n"
	"  --stdout              write each message to stdout, framed as input\n"
	"  --output FILE         append to FILE, fsync per batch\n"
	"  --discard             only count (benchmarks)\n"
	"Processing:\n"
	"  -j, --concurrency N   handlers running at once (default: CPUs)\n"
	"  --prefetch N          messages fetched ahead of a free handler\n"
	"                        (-j/4 with --exec, else 256)\n"
	"  --batch N             batch mode: up to N messages per handler call\n"
	"  --batch-bytes SIZE    ... or this many body bytes (e.g. 64K)\n"
	"  --batch-wait DUR      ... or this long after the first (100ms)\n"
	"  --timeout DUR         deadline per message/batch (30s; 0 = none)\n"
	"  --max-attempts N      deliveries before dead-lettering (5)\n"
	"  --backoff MIN:MAX     retry delays, exponential with jitter\n"
	"                        (100ms:60s)\n"
	"  --dead-letter FILE    JSON lines of what failed for good (default:\n"
	"                        stderr); nsq://TOPIC publishes them to the\n"
	"                        first --nsqd, nsq://H:P/TOPIC to that nsqd\n"
	"  -n, --count N         read only N messages, exit when settled\n"
	"                        (NSQ: stop after N handler starts)\n"
	"  --drain-timeout DUR   how long shutdown waits for handlers (30s)\n"
	"Input:\n"
	"  --framing F           line (default), nul, or length (4-byte\n"
	"                        big-endian length, then the body)\n"
	"  --max-body SIZE       longest message accepted (1M)\n"
	"  --capacity N          messages read ahead of processing (1024)\n"
	"Exec:\n"
	"  --exit-codes SPEC     class of exit codes, e.g. '3=permanent,4=ok'\n"
	"                        (0 ok, 75 temporary, 65 permanent, other\n"
	"                        temporary; killed by a signal = crash)\n"
	"  --kill-grace DUR      SIGTERM to SIGKILL at the deadline (2s)\n"
	"Output:\n"
	"  -q, --quiet           no progress line, no summary\n"
	"  --debug-addr H:P      serve /metrics (Prometheus), /debug/pprof/\n"
	"                        (go tool pprof) and /debug/inflight on H:P\n"
	"                        (port 0 picks one; printed on start)\n"
	"  --cpuprofile FILE     write a CPU profile of the run (pprof)\n"
	"  --memprofile FILE     write a heap profile at exit (pprof)\n"
	"  --trace FILE          write an execution trace of the run: Chrome\n"
	"                        JSON for ui.perfetto.dev (.pftrace: Perfetto)\n"
	"  -h, --help            this text\n"
	"\n"
	"Durations take ms, s, m or h (e.g. 250ms); sizes K, M or G.  Every\n"
	"flag can also come from the environment: --batch-wait as\n"
	"SLUICE_BATCH_WAIT=..., --quiet as SLUICE_QUIET=1; flags win.\n"
	"The child gets SLUICE_DEADLINE_MS, SLUICE_ATTEMPT, SLUICE_MSG_ID and,\n"
	"in batch mode, SLUICE_BATCH_SIZE in its environment.\n"
	"\n"
	"Exit status: 0 all handled, 1 some dead-lettered, 2 usage error,\n"
	"3 the input broke off (malformed or unreadable), 66 an input cannot\n"
	"be opened, 69 no nsqd could be reached, 73 an output cannot be\n"
	"created.\n"
	"\n"
	"Examples:\n"
	"  seq 100 | sluice consume -j 8 --exec 'curl -fsS -d @- $URL'\n"
	"  sluice consume --batch 500 --output all.log events.log\n"
	"  sluice consume --lookupd lookupd:4161 --topic jobs -j 16 \\\n"
	"      --exec ./job.sh --dead-letter nsq://jobs_dead\n"
	"  find . -print0 | sluice consume --framing nul --exec 'gzip -k \"$(cat)\"'\n";

enum {
	O_BATCH = 256,
	O_BATCH_BYTES,
	O_BATCH_WAIT,
	O_TIMEOUT,
	O_MAX_ATTEMPTS,
	O_BACKOFF,
	O_DEAD_LETTER,
	O_DRAIN,
	O_FRAMING,
	O_MAX_BODY,
	O_EXEC,
	O_STDOUT,
	O_OUTPUT,
	O_DISCARD,
	O_EXIT_CODES,
	O_KILL_GRACE,
	O_PREFETCH,
	O_CAPACITY,
	O_DEBUG_ADDR,
	O_CPUPROFILE,
	O_MEMPROFILE,
	O_TRACE,
	O_NSQD,
	O_LOOKUPD,
	O_TOPIC,
	O_CHANNEL,
	O_MSG_TIMEOUT,
	O_TLS,
	O_TLS_CA,
	O_TLS_CERT,
	O_TLS_KEY,
	O_TLS_INSECURE,
	O_SNAPPY,
	O_DEFLATE,
	O_DEFLATE_LEVEL,
	O_AUTH_SECRET,
};

static const struct option longopts[] = {
	{ "concurrency", required_argument, NULL, 'j' },
	{ "count", required_argument, NULL, 'n' },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ "batch", required_argument, NULL, O_BATCH },
	{ "batch-bytes", required_argument, NULL, O_BATCH_BYTES },
	{ "batch-wait", required_argument, NULL, O_BATCH_WAIT },
	{ "timeout", required_argument, NULL, O_TIMEOUT },
	{ "max-attempts", required_argument, NULL, O_MAX_ATTEMPTS },
	{ "backoff", required_argument, NULL, O_BACKOFF },
	{ "dead-letter", required_argument, NULL, O_DEAD_LETTER },
	{ "drain-timeout", required_argument, NULL, O_DRAIN },
	{ "framing", required_argument, NULL, O_FRAMING },
	{ "max-body", required_argument, NULL, O_MAX_BODY },
	{ "exec", required_argument, NULL, O_EXEC },
	{ "stdout", no_argument, NULL, O_STDOUT },
	{ "output", required_argument, NULL, O_OUTPUT },
	{ "discard", no_argument, NULL, O_DISCARD },
	{ "exit-codes", required_argument, NULL, O_EXIT_CODES },
	{ "kill-grace", required_argument, NULL, O_KILL_GRACE },
	{ "prefetch", required_argument, NULL, O_PREFETCH },
	{ "capacity", required_argument, NULL, O_CAPACITY },
	{ "debug-addr", required_argument, NULL, O_DEBUG_ADDR },
	{ "cpuprofile", required_argument, NULL, O_CPUPROFILE },
	{ "memprofile", required_argument, NULL, O_MEMPROFILE },
	{ "trace", required_argument, NULL, O_TRACE },
	{ "nsqd", required_argument, NULL, O_NSQD },
	{ "lookupd", required_argument, NULL, O_LOOKUPD },
	{ "topic", required_argument, NULL, O_TOPIC },
	{ "channel", required_argument, NULL, O_CHANNEL },
	{ "msg-timeout", required_argument, NULL, O_MSG_TIMEOUT },
	{ "tls", no_argument, NULL, O_TLS },
	{ "tls-ca", required_argument, NULL, O_TLS_CA },
	{ "tls-cert", required_argument, NULL, O_TLS_CERT },
	{ "tls-key", required_argument, NULL, O_TLS_KEY },
	{ "tls-insecure", no_argument, NULL, O_TLS_INSECURE },
	{ "snappy", no_argument, NULL, O_SNAPPY },
	{ "deflate", no_argument, NULL, O_DEFLATE },
	{ "deflate-level", required_argument, NULL, O_DEFLATE_LEVEL },
	{ "auth-secret", required_argument, NULL, O_AUTH_SECRET },
	{ NULL, 0, NULL, 0 },
};

static void
defaults(struct opts *o)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	memset(o, 0, sizeof(*o));
	o->workers = n > 0 ? (unsigned)n : 1;
	o->prefetch = PREFETCH_UNSET;
	o->batch_wait_ns = 100 * SLUICE_NS_PER_MS;
	o->timeout_ns = 30 * SLUICE_NS_PER_S;
	o->drain_ns = 30 * SLUICE_NS_PER_S;
	o->kill_grace_ns = 2 * SLUICE_NS_PER_S;
	o->max_attempts = 5;
	o->backoff_min_ns = 100 * SLUICE_NS_PER_MS;
	o->backoff_max_ns = 60 * SLUICE_NS_PER_S;
	o->max_body = 1024 * 1024;
	o->capacity = 1024;
	o->framing = SLUICE_FRAMING_LINE;
	o->channel = "sluice";
}

static int
set_sink(struct opts *o, enum sink s)
{
	if (o->nsinks && o->sink != s)
		return cli_usage_error("consume", "%s",
				       "choose one of --exec, --stdout, "
				       "--output, --discard");
	o->sink = s;
	o->nsinks = 1;
	return 0;
}

#define BAD(what) return cli_usage_error("consume", what, optarg)

/* Apply one option; returns 0 or an exit status. */
static int
apply(void *opts, int c)
{
	struct opts *o = opts;
	uint64_t v;
	char *colon;

	switch (c) {
	case 'j':
		if (cli_parse_uint(optarg, 1, 1024, &v))
			BAD("--concurrency wants 1..1024, not '%s'");
		o->workers = (unsigned)v;
		return 0;
	case 'n':
		if (cli_parse_uint(optarg, 1, UINT64_MAX, &o->count))
			BAD("--count wants a positive number, not '%s'");
		return 0;
	case 'q':
		o->quiet = true;
		return 0;
	case O_BATCH:
		if (cli_parse_uint(optarg, 1, 1000000, &o->batch))
			BAD("--batch wants 1..1000000, not '%s'");
		return 0;
	case O_BATCH_BYTES:
		if (cli_parse_size(optarg, &o->batch_bytes))
			BAD("--batch-bytes wants a size like 64K, not '%s'");
		return 0;
	case O_BATCH_WAIT:
		if (cli_parse_duration(optarg, &o->batch_wait_ns))
			BAD("--batch-wait wants a duration like 250ms, not '%s'");
		return 0;
	case O_TIMEOUT:
		if (cli_parse_duration(optarg, &o->timeout_ns))
			BAD("--timeout wants a duration like 30s, not '%s'");
		return 0;
	case O_DRAIN:
		if (cli_parse_duration(optarg, &o->drain_ns))
			BAD("--drain-timeout wants a duration like 30s, not '%s'");
		return 0;
	case O_KILL_GRACE:
		if (cli_parse_duration(optarg, &o->kill_grace_ns))
			BAD("--kill-grace wants a duration like 2s, not '%s'");
		return 0;
	case O_MAX_ATTEMPTS:
		if (cli_parse_uint(optarg, 1, 1000000, &o->max_attempts))
			BAD("--max-attempts wants 1..1000000, not '%s'");
		return 0;
	case O_BACKOFF:
		colon = strchr(optarg, ':');
		if (!colon)
			BAD("--backoff wants MIN:MAX, e.g. 100ms:60s, not '%s'");
		*colon = 0;
		if (cli_parse_duration(optarg, &o->backoff_min_ns) ||
		    cli_parse_duration(colon + 1, &o->backoff_max_ns) ||
		    o->backoff_min_ns > o->backoff_max_ns) {
			*colon = ':';
			BAD("--backoff wants MIN:MAX with MIN <= MAX, not '%s'");
		}
		*colon = ':';
		return 0;
	case O_DEAD_LETTER:
		o->dead_letter = optarg;
		return 0;
	case O_FRAMING:
		if (sluice_framing_parse(optarg, &o->framing))
			BAD("--framing wants line, nul or length, not '%s'");
		return 0;
	case O_MAX_BODY:
		if (cli_parse_size(optarg, &o->max_body) || o->max_body == 0 ||
		    o->max_body > UINT32_MAX)
			BAD("--max-body wants a size from 1 to 4G-1, not '%s'");
		return 0;
	case O_PREFETCH:
		if (cli_parse_uint(optarg, 0, 1000000, &v))
			BAD("--prefetch wants 0..1000000, not '%s'");
		o->prefetch = (unsigned)v;
		return 0;
	case O_CAPACITY:
		if (cli_parse_uint(optarg, 1, 10000000, &o->capacity))
			BAD("--capacity wants 1..10000000, not '%s'");
		return 0;
	case O_EXEC:
		o->exec = optarg;
		return set_sink(o, SINK_EXEC);
	case O_STDOUT:
		return set_sink(o, SINK_STDOUT);
	case O_OUTPUT:
		o->output = optarg;
		return set_sink(o, SINK_OUTPUT);
	case O_DISCARD:
		return set_sink(o, SINK_DISCARD);
	case O_EXIT_CODES:
		o->exit_codes = optarg;
		return 0;
	case O_DEBUG_ADDR:
		o->debug_addr = optarg;
		return 0;
	case O_CPUPROFILE:
		o->obs.cpuprofile = optarg;
		return 0;
	case O_MEMPROFILE:
		o->obs.memprofile = optarg;
		return 0;
	case O_TRACE:
		o->obs.trace = optarg;
		return 0;
	case O_NSQD:
		if (o->n_nsqd == MAX_ADDRS)
			BAD("too many --nsqd (at '%s')");
		if (!strchr(optarg, ':'))
			BAD("--nsqd wants HOST:PORT, not '%s'");
		o->nsqd[o->n_nsqd++] = optarg;
		return 0;
	case O_LOOKUPD:
		if (o->n_lookupd == MAX_ADDRS)
			BAD("too many --lookupd (at '%s')");
		o->lookupd[o->n_lookupd++] = optarg;
		return 0;
	case O_TOPIC:
		o->topic = optarg;
		return 0;
	case O_CHANNEL:
		o->channel = optarg;
		return 0;
	case O_TLS:
		o->tls = true;
		return 0;
	case O_TLS_CA:
		o->tls_ca = optarg;
		return 0;
	case O_TLS_CERT:
		o->tls_cert = optarg;
		return 0;
	case O_TLS_KEY:
		o->tls_key = optarg;
		return 0;
	case O_TLS_INSECURE:
		o->tls_insecure = true;
		return 0;
	case O_SNAPPY:
		o->snappy = true;
		return 0;
	case O_DEFLATE:
		o->deflate = true;
		return 0;
	case O_DEFLATE_LEVEL:
		if (cli_parse_uint(optarg, 1, 9, &o->deflate_level))
			BAD("--deflate-level wants 1..9, not '%s'");
		return 0;
	case O_AUTH_SECRET:
		o->auth_secret = optarg;
		return 0;
	case O_MSG_TIMEOUT:
		if (cli_parse_duration(optarg, &o->msg_timeout_ns) ||
		    (o->msg_timeout_ns && o->msg_timeout_ns < SLUICE_NS_PER_S))
			BAD("--msg-timeout wants a duration of 1s or more, not '%s'");
		return 0;
	default:
		return EXIT_USAGE; /* getopt printed the problem */
	}
}

/* ---- handlers ----------------------------------------------------------- */

/* Write @n bodies framed as input to out_fd in one writev per chunk. */
static struct sluice_error *
write_framed(struct run *r, const struct sluice_msg *const *msgs, size_t n)
{
	enum { IOV = 128 };
	struct iovec iov[IOV * 2];
	uint8_t hdr[IOV][4];
	static const uint8_t nl = '\n', nul = 0;
	size_t i = 0, k, cnt;
	ssize_t w;
	int e = 0;

	pthread_mutex_lock(&r->out_mu);
	while (i < n && !e) {
		for (cnt = 0, k = 0; i < n && k < IOV; i++, k++) {
			const struct sluice_msg *m = msgs[i];

			if (r->o.framing == SLUICE_FRAMING_LENGTH) {
				hdr[k][0] = (uint8_t)(m->body_len >> 24);
				hdr[k][1] = (uint8_t)(m->body_len >> 16);
				hdr[k][2] = (uint8_t)(m->body_len >> 8);
				hdr[k][3] = (uint8_t)m->body_len;
				iov[cnt].iov_base = hdr[k];
				iov[cnt++].iov_len = 4;
			}
			iov[cnt].iov_base = (void *)(uintptr_t)m->body;
			iov[cnt++].iov_len = m->body_len;
			if (r->o.framing != SLUICE_FRAMING_LENGTH) {
				iov[cnt].iov_base =
					(void *)(uintptr_t)(r->o.framing == SLUICE_FRAMING_NUL
								    ? &nul
								    : &nl);
				iov[cnt++].iov_len = 1;
			}
		}
		/* Loop over short writes. */
		k = 0;
		while (k < cnt) {
			w = writev(r->out_fd, iov + k, (int)(cnt - k));
			if (w < 0) {
				if (errno == EINTR)
					continue;
				e = errno;
				break;
			}
			while (k < cnt && (size_t)w >= iov[k].iov_len)
				w -= (ssize_t)iov[k++].iov_len;
			if (k < cnt) {
				iov[k].iov_base =
					(uint8_t *)iov[k].iov_base + w;
				iov[k].iov_len -= (size_t)w;
			}
		}
	}
	if (!e && r->o.sink == SINK_OUTPUT && fdatasync(r->out_fd) < 0)
		e = errno;
	pthread_mutex_unlock(&r->out_mu);
	if (e)
		return sluice_error_new(sluice_classify_errno(e), -e,
					"writing output: %s",
					sluice_strerror(-e));
	return NULL;
}

static struct sluice_error *
run_exec(struct run *r, struct sluice_ctx *ctx,
	 const struct sluice_msg *const *msgs, size_t n)
{
	char e_deadline[48], e_attempt[32], e_id[96], e_size[40];
	const char *env[5];
	struct sluice_bytes one, *in = &one;
	uint8_t *framed = NULL;
	struct sluice_error *err;
	int64_t left = sluice_ctx_remaining_ns(ctx);
	size_t idlen, i, total = 0, off = 0;
	const char *id = sluice_msg_id(msgs[0], &idlen);

	snprintf(e_deadline, sizeof(e_deadline), "SLUICE_DEADLINE_MS=%lld",
		 left == INT64_MAX ? 0LL
				   : (long long)(left / SLUICE_NS_PER_MS));
	snprintf(e_attempt, sizeof(e_attempt), "SLUICE_ATTEMPT=%u",
		 sluice_msg_attempts(msgs[0]));
	snprintf(e_id, sizeof(e_id), "SLUICE_MSG_ID=%.*s", (int)idlen, id);
	snprintf(e_size, sizeof(e_size), "SLUICE_BATCH_SIZE=%zu", n);
	env[0] = e_deadline;
	env[1] = e_attempt;
	env[2] = e_id;
	env[3] = r->o.batch ? e_size : NULL;
	env[4] = NULL;
	if (r->o.batch) {
		/* The batch goes to one child, framed as the input was. */
		for (i = 0; i < n; i++)
			total += msgs[i]->body_len + 4;
		framed = malloc(total ? total : 1);
		if (!framed)
			return sluice_error_new(SLUICE_CLASS_TEMPORARY,
						SLUICE_ENOMEM, "out of memory");
		for (i = 0; i < n; i++) {
			int64_t len = sluice_frame_encode(
				r->o.framing, msgs[i]->body, msgs[i]->body_len,
				framed + off, total - off);

			if (len < 0) {
				free(framed);
				return sluice_error_new(
					SLUICE_CLASS_PERMANENT, (int)len,
					"message cannot be framed as %s",
					sluice_framing_name(r->o.framing));
			}
			off += (size_t)len;
		}
		one.ptr = framed;
		one.len = off;
	} else {
		one.ptr = msgs[0]->body;
		one.len = msgs[0]->body_len;
	}
	err = sluice_exec_run(&r->exec, ctx, in, 1, env, NULL);
	free(framed);
	return err;
}

/* NSQ and --count: the handler start that reaches N stops consumption
 * (CLS everywhere, then a drain that gives back what was not started). */
static void
count_taken(struct run *r, size_t n)
{
	uint64_t before;

	if (!r->nsq || !r->o.count)
		return;
	before = atomic_fetch_add_explicit(&r->taken, n, memory_order_relaxed);
	if (before < r->o.count && before + n >= r->o.count) {
		sluice_nsq_stop(r->nsq);
		sluice_engine_stop(r->e, SLUICE_STOP_DRAIN);
	}
}

static struct sluice_error *
handle_batch(void *ud, struct sluice_ctx *ctx,
	     const struct sluice_msg *const *msgs, size_t n,
	     struct sluice_error **errs)
{
	struct run *r = ud;
	int64_t t0 = cli_now_ns();
	struct sluice_error *err = NULL;

	(void)errs;
	count_taken(r, n);
	switch (r->o.sink) {
	case SINK_DISCARD:
		break;
	case SINK_STDOUT:
	case SINK_OUTPUT:
		err = write_framed(r, msgs, n);
		break;
	case SINK_EXEC:
		err = run_exec(r, ctx, msgs, n);
		break;
	}
	cli_hist_add(&r->hist, cli_now_ns() - t0);
	return err;
}

static struct sluice_error *
handle_one(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct run *r = ud;
	int64_t t0;
	struct sluice_error *err;

	count_taken(r, 1);
	if (r->o.sink == SINK_DISCARD) /* no clock on the benchmark path */
		return NULL;
	t0 = cli_now_ns();
	err = r->o.sink == SINK_EXEC ? run_exec(r, ctx, &m, 1)
				     : write_framed(r, &m, 1);
	cli_hist_add(&r->hist, cli_now_ns() - t0);
	return err;
}

/* ---- dead letters ---------------------------------------------------------
 */

/* Without --dead-letter, records go to stderr as JSON lines. */
static int
stderr_write(void *self, const char *source, const struct sluice_msg *msg,
	     const struct sluice_error *why)
{
	struct run *r = self;
	char small[1024], *buf = small;
	int64_t need;
	struct timespec ts;
	ssize_t w;
	int rc = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	need = sluice_dlq_format(small, sizeof(small),
				 (int64_t)ts.tv_sec * SLUICE_NS_PER_S +
					 ts.tv_nsec,
				 source, msg, why);
	if (need < 0)
		return (int)need;
	if ((size_t)need >= sizeof(small)) {
		buf = malloc((size_t)need + 1);
		if (!buf)
			return SLUICE_ENOMEM;
		(void)sluice_dlq_format(buf, (size_t)need + 1,
					(int64_t)ts.tv_sec * SLUICE_NS_PER_S +
						ts.tv_nsec,
					source, msg, why);
	}
	pthread_mutex_lock(&r->err_mu);
	w = write(2, buf, (size_t)need);
	if (w != need)
		rc = SLUICE_EIO;
	pthread_mutex_unlock(&r->err_mu);
	if (buf != small)
		free(buf);
	return rc;
}

static const struct sluice_dlq_ops stderr_dlq_ops = { "stderr", stderr_write,
						      NULL };

/* ---- signal and progress threads ----------------------------------------- */

static void *
signal_main(void *arg)
{
	struct run *r = arg;
	struct timespec tick = { 0, 100 * 1000 * 1000 };
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1); /* from main: time to go */
	while (!atomic_load(&r->done)) {
		sig = sigtimedwait(&set, NULL, &tick);
		if (sig < 0 || sig == SIGUSR1)
			continue;
		if (atomic_fetch_add(&r->signals, 1) == 0) {
			if (!r->o.quiet) {
				pthread_mutex_lock(&r->err_mu);
				fprintf(stderr,
					"\r\033[Ksluice: %s: draining (again "
					"to stop now)\n",
					sigabbrev_np(sig));
				pthread_mutex_unlock(&r->err_mu);
			}
			if (r->nsq)
				sluice_nsq_stop(r->nsq);
			else
				sluice_stream_stop(r->stream);
			sluice_engine_stop(r->e, SLUICE_STOP_DRAIN);
		} else {
			sluice_engine_stop(r->e, SLUICE_STOP_NOW);
		}
	}
	return NULL;
}

/* Messages read so far: from the stream, or NSQ message frames. */
static uint64_t
messages_read(struct run *r)
{
	struct sluice_stream_stats ss;
	struct sluice_nsq_stats ns;

	if (r->nsq) {
		sluice_nsq_stats(r->nsq, &ns);
		return ns.messages;
	}
	sluice_stream_stats(r->stream, &ss);
	return ss.messages;
}

static void
progress_line(struct run *r, char *buf, size_t size)
{
	struct sluice_engine_stats st;
	double secs = (double)(cli_now_ns() - r->t0) / 1e9;

	sluice_engine_stats(r->e, &st);
	snprintf(buf, size,
		 "read %llu  running %llu  ok %llu  retried %llu  "
		 "dead %llu  %.0f msg/s  %.1fs",
		 (unsigned long long)messages_read(r),
		 (unsigned long long)st.running, (unsigned long long)st.handled,
		 (unsigned long long)st.requeued,
		 (unsigned long long)st.dead_lettered,
		 secs > 0 ? (double)st.handled / secs : 0.0, secs);
}

static void *
progress_main(void *arg)
{
	struct run *r = arg;
	struct timespec tick = { 0, 250 * 1000 * 1000 };
	char line[256];

	while (!atomic_load(&r->done)) {
		nanosleep(&tick, NULL); /* a display refresh, not a sync */
		progress_line(r, line, sizeof(line));
		pthread_mutex_lock(&r->err_mu);
		fprintf(stderr, "\r\033[K%s", line);
		fflush(stderr);
		pthread_mutex_unlock(&r->err_mu);
	}
	pthread_mutex_lock(&r->err_mu);
	fprintf(stderr, "\r\033[K");
	pthread_mutex_unlock(&r->err_mu);
	return NULL;
}

/* ---- the run --------------------------------------------------------------
 */

/* After the engine stopped: record what was read but not finished. */
static uint64_t
dead_letter_unfinished(struct run *r, uint64_t *failed)
{
	struct sluice_source src;
	struct sluice_msg *msgs[64];
	struct sluice_error *why;
	uint64_t n = 0;
	int got, i;

	if (!r->stream)
		return 0; /* NSQ: the drain gave them back to nsqd */
	src = sluice_stream_source(r->stream);
	why = sluice_error_new(SLUICE_CLASS_CANCELED, SLUICE_CODE_DRAIN,
			       "not finished when sluice stopped");
	while ((got = sluice_stream_take_unfinished(r->stream, msgs, 64)) > 0) {
		for (i = 0; i < got; i++) {
			if (r->dlq.ops->write(r->dlq.self, src.ops->name,
					      msgs[i], why) == 0)
				n++;
			else
				(*failed)++;
		}
		(void)src.ops->ack(src.self, msgs, (size_t)got);
		src.ops->release(src.self, msgs, (size_t)got);
	}
	sluice_error_free(why);
	return n;
}

static void
summary(struct run *r, uint64_t unfinished, const char *input_err)
{
	struct sluice_engine_stats st;
	char p50[32], p99[32];
	double secs = (double)(cli_now_ns() - r->t0) / 1e9;
	uint64_t dead, read = messages_read(r);

	sluice_engine_stats(r->e, &st);
	dead = st.dead_lettered + unfinished;
	cli_format_duration(cli_hist_quantile(&r->hist, 0.50), p50,
			    sizeof(p50));
	cli_format_duration(cli_hist_quantile(&r->hist, 0.99), p99,
			    sizeof(p99));
	fprintf(stderr,
		"sluice: %llu messages in %.2f s (%.0f msg/s): %llu ok, "
		"%llu dead-lettered%s%s\n",
		(unsigned long long)read, secs,
		secs > 0 ? (double)read / secs : 0.0,
		(unsigned long long)st.handled, (unsigned long long)dead,
		dead ? " to " : "",
		dead ? (r->o.dead_letter ? r->o.dead_letter : "stderr") : "");
	fprintf(stderr,
		"        retries %llu, timeouts %llu, unfinished %llu; "
		"handler p50 %s, p99 %s\n",
		(unsigned long long)st.requeued,
		(unsigned long long)st.timeouts, (unsigned long long)unfinished,
		r->hist.count ? p50 : "-", r->hist.count ? p99 : "-");
	if (r->nsq) {
		struct sluice_nsq_stats ns;

		sluice_nsq_stats(r->nsq, &ns);
		fprintf(stderr,
			"        nsq: FIN %llu, REQ %llu, TOUCH %llu, given "
			"back %llu, reconnects %llu, backoffs %llu\n",
			(unsigned long long)ns.fins,
			(unsigned long long)ns.reqs,
			(unsigned long long)ns.touches,
			(unsigned long long)ns.handed_back,
			(unsigned long long)ns.reconnects,
			(unsigned long long)ns.backoffs);
	}
	if (input_err)
		fprintf(stderr, "sluice: input stopped: %s\n", input_err);
}

static int
setup_sinks(struct run *r)
{
	char err[320];

	r->out_fd = 1;
	if (r->o.sink == SINK_OUTPUT) {
		r->out_fd =
			open(r->o.output,
			     O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
		if (r->out_fd < 0) {
			fprintf(stderr, "sluice consume: %s: %s\n", r->o.output,
				strerror(errno));
			return EXIT_CANTCREAT;
		}
	}
	sluice_exec_config_init(&r->exec);
	r->exec.command = r->o.exec;
	r->exec.kill_grace_ns = r->o.kill_grace_ns;
	r->exec.stdout_fd = 1; /* a command's output is the tool's output */
	if (r->o.exit_codes && sluice_exec_parse_map(&r->exec, r->o.exit_codes,
						     err, sizeof(err))) {
		fprintf(stderr, "sluice consume: --exit-codes: %s\n", err);
		return EXIT_USAGE;
	}
	if (r->o.dead_letter) {
		int rc = cli_dead_letter_open(r->o.dead_letter,
					      r->o.n_nsqd ? r->o.nsqd[0] : NULL,
					      &r->dlq, err, sizeof(err));

		if (rc) {
			fprintf(stderr, "sluice consume: %s\n", err);
			return rc;
		}
	} else {
		r->dlq.ops = &stderr_dlq_ops;
		r->dlq.self = r;
	}
	return 0;
}

static const char *const usage[] = { usage_text, usage_rest, NULL };
static const struct cli_flags flags = { "consume", "j:n:qh", longopts,
					usage,     true,     apply };

/* The argument vector parse() built; options point into it until the end. */
static struct cli_args args;

static int
parse(int argc, char **argv, struct opts *o, char ***files, int *nfiles)
{
	int rc;

	rc = cli_parse_flags(&flags, o, argc, argv, &args, files, nfiles);
	if (rc)
		return rc;
	if (o->sink == SINK_EXEC && (!o->exec || !*o->exec))
		return cli_usage_error("consume", "%s",
				       "--exec needs a command");
	if (o->exit_codes && o->sink != SINK_EXEC)
		return cli_usage_error("consume", "%s",
				       "--exit-codes only applies to --exec");
	if (o->batch_bytes && !o->batch)
		return cli_usage_error("consume", "%s",
				       "--batch-bytes needs --batch N");
	if ((o->n_nsqd || o->n_lookupd) && !o->topic)
		return cli_usage_error("consume", "%s",
				       "--nsqd/--lookupd need --topic");
	if (o->topic && !o->n_nsqd && !o->n_lookupd)
		return cli_usage_error("consume", "%s",
				       "--topic needs --nsqd or --lookupd");
	if (o->topic && *nfiles)
		return cli_usage_error("consume", "%s",
				       "NSQ input takes no FILE arguments");
	if (o->snappy && o->deflate)
		return cli_usage_error("consume", "%s",
				       "choose one of --snappy, --deflate");
	if ((o->tls_ca || o->tls_cert || o->tls_key || o->tls_insecure) &&
	    !o->tls)
		return cli_usage_error("consume", "%s",
				       "--tls-* flags need --tls");
	if (!o->tls_cert != !o->tls_key)
		return cli_usage_error("consume", "%s",
				       "--tls-cert and --tls-key go together");
	if (o->prefetch == PREFETCH_UNSET)
		o->prefetch = o->sink == SINK_EXEC ? SLUICE_PREFETCH_AUTO
						   : PREFETCH_BULK;
	return 0;
}

/* --debug-addr: the engine's metrics over HTTP. */
static int
start_debug(struct run *r)
{
	char err[256] = "";
	int rc;

	rc = sluice_metrics_new(&r->metrics);
	if (!rc)
		rc = sluice_engine_export_metrics(r->e, r->metrics);
	if (!rc && r->nsq)
		rc = sluice_nsq_export_metrics(r->nsq, r->metrics);
	if (rc) {
		fprintf(stderr, "sluice consume: metrics: %s\n",
			sluice_strerror(rc));
		return EXIT_SOFTWARE;
	}
	rc = sluice_debug_http_start(r->o.debug_addr, r->metrics, &r->http, err,
				     sizeof(err));
	if (rc) {
		fprintf(stderr, "sluice consume: --debug-addr: %s\n",
			*err ? err : sluice_strerror(rc));
		return rc == SLUICE_EINVAL ? EXIT_USAGE : EXIT_CANTCREAT;
	}
	sluice_debug_http_set_engine(r->http, r->e);
	if (!r->o.quiet)
		fprintf(stderr,
			"sluice: debug endpoint on port %u: /metrics, "
			"/debug/pprof/, /debug/inflight\n",
			(unsigned)sluice_debug_http_port(r->http));
	return 0;
}

/* The NSQ source's diagnostics (connections lost, lookupd skipped). */
static void
nsq_log(void *ud, const char *line)
{
	struct run *r = ud;

	if (r->o.quiet)
		return;
	pthread_mutex_lock(&r->err_mu);
	fprintf(stderr, "\r\033[Ksluice: %s\n", line);
	pthread_mutex_unlock(&r->err_mu);
}

static int
open_nsq(struct run *r)
{
	struct sluice_nsq_config nc;
	char err[512] = "";
	int rc;

	sluice_nsq_config_init(&nc);
	nc.nsqd = r->o.nsqd;
	nc.n_nsqd = r->o.n_nsqd;
	nc.lookupd = r->o.lookupd;
	nc.n_lookupd = r->o.n_lookupd;
	nc.topic = r->o.topic;
	nc.channel = r->o.channel;
	nc.max_body = (size_t)r->o.max_body;
	nc.msg_timeout_ms = (uint32_t)(r->o.msg_timeout_ns / SLUICE_NS_PER_MS);
	/* Handlers inside their deadline keep their lease (auto-TOUCH). */ nc
		.touch_deadline_ns = r->o.timeout_ns;
	nc.tls = r->o.tls;
	nc.tls_ca_file = r->o.tls_ca;
	nc.tls_cert_file = r->o.tls_cert;
	nc.tls_key_file = r->o.tls_key;
	nc.tls_skip_verify = r->o.tls_insecure;
	nc.snappy = r->o.snappy;
	nc.deflate = r->o.deflate;
	nc.deflate_level = (int)r->o.deflate_level;
	nc.auth_secret = r->o.auth_secret;
	nc.log = nsq_log;
	nc.log_ud = r;
	rc = sluice_nsq_open(&nc, err, sizeof(err), &r->nsq);
	if (rc) {
		fprintf(stderr, "sluice consume: %s\n",
			*err ? err : sluice_strerror(rc));
		return rc == SLUICE_EINVAL ? EXIT_USAGE : EXIT_UNAVAILABLE;
	}
	return 0;
}

static int
run_engine(struct run *r)
{
	struct sluice_engine_config cfg;
	struct sluice_handler h = { NULL, NULL };
	struct sluice_batch_handler bh = { NULL, NULL };
	int rc;

	sluice_engine_config_init(&cfg);
	cfg.workers = r->o.workers;
	cfg.prefetch = r->o.prefetch;
	cfg.timeout_ns = r->o.timeout_ns;
	cfg.drain_timeout_ns = r->o.drain_ns;
	cfg.retry.min_ns = r->o.backoff_min_ns;
	cfg.retry.max_ns = r->o.backoff_max_ns;
	cfg.retry.max_attempts = (uint32_t)r->o.max_attempts;
	if (r->o.batch) {
		cfg.mode = SLUICE_MODE_BATCH;
		cfg.batch_max = r->o.batch;
		cfg.batch_max_bytes = r->o.batch_bytes;
		cfg.batch_wait_ns = r->o.batch_wait_ns;
		bh.fn = handle_batch;
		bh.ud = r;
	} else {
		h.fn = handle_one;
		h.ud = r;
	}
	rc = sluice_engine_new(&cfg,
			       r->nsq ? sluice_nsq_source(r->nsq)
				      : sluice_stream_source(r->stream),
			       h, bh, &r->dlq, &r->e);
	if (rc) {
		fprintf(stderr, "sluice consume: bad configuration: %s\n",
			sluice_strerror(rc));
		return EXIT_USAGE;
	}
	return 0;
}

static int consume_main(int argc, char **argv);

int
cli_consume(int argc, char **argv)
{
	int rc = consume_main(argc, argv);

	cli_args_free(&args);
	return rc;
}

static int
consume_main(int argc, char **argv)
{
	static struct run r; /* large (histogram); one run per process */
	struct sluice_stream_config sc;
	pthread_t sig_t, prog_t = 0;
	bool progress;
	char **files, err[256] = "";
	int nfiles, rc, input_rc;
	uint64_t unfinished, lost = 0;
	sigset_t set;

	defaults(&r.o);
	rc = parse(argc, argv, &r.o, &files, &nfiles);
	if (rc)
		return rc < 0 ? EXIT_OK : rc;
	pthread_mutex_init(&r.out_mu, NULL);
	pthread_mutex_init(&r.err_mu, NULL);
	rc = setup_sinks(&r);
	if (rc)
		return rc;

	/* Signals go to the signal thread only: block them before any
	 * thread starts, so every thread inherits the mask. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	{
		struct sigaction sa;

		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = SIG_IGN; /* a closed stdout is an EPIPE error */
		sigaction(SIGPIPE, &sa, NULL);
	}
	(void)sluice_exec_become_subreaper();

	if (r.o.topic) {
		rc = open_nsq(&r);
		if (rc)
			return rc;
	} else {
		sluice_stream_config_init(&sc);
		sc.framing = r.o.framing;
		sc.max_body = r.o.max_body;
		sc.capacity = r.o.capacity;
		sc.limit = r.o.count;
		rc = cli_open_input("consume", &sc, files, nfiles, &r.stream);
		if (rc)
			return rc;
	}
	rc = run_engine(&r);
	if (rc)
		return rc;
	rc = cli_obs_start(&r.o.obs, "sluice consume");
	if (rc)
		return rc;
	r.t0 = cli_now_ns();
	if (sluice_engine_start(r.e) != 0) {
		fprintf(stderr, "sluice consume: cannot start workers\n");
		return EXIT_SOFTWARE;
	}
	if (r.o.debug_addr) {
		rc = start_debug(&r);
		if (rc) {
			sluice_engine_stop(r.e, SLUICE_STOP_NOW);
			(void)sluice_engine_wait(r.e, SLUICE_FOREVER);
			return rc;
		}
	}
	pthread_create(&sig_t, NULL, signal_main, &r);
	progress = !r.o.quiet && isatty(2);
	if (progress)
		pthread_create(&prog_t, NULL, progress_main, &r);

	(void)sluice_engine_wait(r.e, SLUICE_FOREVER);
	input_rc =
		r.stream ? sluice_stream_finish(r.stream, err, sizeof(err)) : 0;
	unfinished = dead_letter_unfinished(&r, &lost);
	atomic_store(&r.done, true);
	if (progress)
		pthread_join(prog_t, NULL);
	pthread_kill(sig_t, SIGUSR1);
	pthread_join(sig_t, NULL);
	if (!r.o.quiet)
		summary(&r, unfinished, input_rc ? err : NULL);
	else if (input_rc)
		fprintf(stderr, "sluice consume: %s\n", err);
	{
		struct sluice_engine_stats st;

		sluice_engine_stats(r.e, &st);
		rc = input_rc ? EXIT_INPUT
		     : (st.dead_lettered || unfinished || lost || st.dlq_failed)
			     ? EXIT_DEAD
			     : EXIT_OK;
	}
	{
		int orc = cli_obs_finish(&r.o.obs, "sluice consume");

		if (orc && rc == EXIT_OK)
			rc = orc;
	}
	/* The registry reads the engine: stop serving it first. */
	sluice_debug_http_stop(r.http);
	sluice_metrics_free(r.metrics);
	sluice_engine_free(r.e);
	sluice_stream_free(r.stream);
	sluice_nsq_free(r.nsq);
	sluice_dlq_close(&r.dlq);
	if (r.out_fd > 2)
		close(r.out_fd);
	return rc;
}
