/* SPDX-License-Identifier: MIT */
/*
 * publish.c - `sluice publish`: read messages from stdin or files (the
 * framings of consume) and publish them to an NSQ topic on one nsqd, in
 * MPUB batches, or one DPUB each with --defer.  Uses the public API only:
 * the stream source reads and frames the input, the NSQ producer batches,
 * pipelines and matches the answers.
 *
 * Threads: main (flags, the fetch-and-publish loop, the summary), the
 * stream's reader and the producer's I/O thread, which runs the result
 * callback; the callback touches only the atomic counters and, once, the
 * first error (under err_mu).  The first failed publish stops reading:
 * what nsqd refuses once (a bad topic, a message too large) it refuses
 * again.  A signal thread takes SIGINT/SIGTERM (blocked everywhere else):
 * the first stops reading, and what was read is still published and
 * answered before the exit (status 130); a second exits at once, leaving
 * the unanswered publishes unknown.
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sluice/nsq_producer.h>
#include <sluice/sluice.h>
#include <sluice/stream.h>

#include "cli.h"

#define FETCH_MAX 256

static const char usage_text[] =
	"usage: sluice publish --nsqd HOST:PORT --topic TOPIC [flags] "
	"[FILE...]\n"
	"\n"
	"Read messages from FILEs (default: stdin; '-' is stdin too) and\n"
	"publish each one to TOPIC on nsqd, many to an MPUB.  A publish is\n"
	"done when nsqd answered OK; the first refusal stops the run.\n"
	"\n"
	"  --nsqd HOST:PORT      the nsqd TCP address (port default 4150)\n"
	"  --topic TOPIC         the topic ([.a-zA-Z0-9_-], 1..64 bytes,\n"
	"                        optionally ending in #ephemeral)\n"
	"  --framing F           line (default), nul, or length (4-byte\n"
	"                        big-endian length, then the body)\n"
	"  --max-body SIZE       longest message (1M, nsqd's --max-msg-size)\n"
	"  --defer DUR           deliver each message no earlier than DUR\n"
	"                        after it was published (DPUB, one each)\n"
	"  --batch N             messages per MPUB (1024)\n"
	"  --batch-bytes SIZE    body bytes per MPUB (1M; nsqd takes 5M)\n"
	"  --linger DUR          longest a partial batch waits (1ms)\n"
	"  -q, --quiet           no summary\n"
	"  -h, --help            this text\n"
	"\n"
	"Empty messages are skipped: nsqd refuses them.  A message whose OK\n"
	"was lost with the connection may have been published (at least\n"
	"once); such publishes are resent up to 3 times.\n"
	"\n"
	"SIGINT/SIGTERM stop reading; what was read is still published and\n"
	"answered (exit 130); a second signal quits at once.\n"
	"\n"
	"Exit status: 0 all published, 1 a publish failed, 2 usage error,\n"
	"3 the input broke off, 66 an input cannot be opened, 69 nsqd cannot\n"
	"be reached, 130 interrupted.\n"
	"\n"
	"Example:\n"
	"  seq 1000000 | sluice publish --nsqd 127.0.0.1:4150 --topic t\n";

enum {
	O_NSQD = 256,
	O_TOPIC,
	O_FRAMING,
	O_MAX_BODY,
	O_DEFER,
	O_BATCH,
	O_BATCH_BYTES,
	O_LINGER,
};

static const struct option longopts[] = {
	{ "nsqd", required_argument, NULL, O_NSQD },
	{ "topic", required_argument, NULL, O_TOPIC },
	{ "framing", required_argument, NULL, O_FRAMING },
	{ "max-body", required_argument, NULL, O_MAX_BODY },
	{ "defer", required_argument, NULL, O_DEFER },
	{ "batch", required_argument, NULL, O_BATCH },
	{ "batch-bytes", required_argument, NULL, O_BATCH_BYTES },
	{ "linger", required_argument, NULL, O_LINGER },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

struct popts {
	char host[256];
	uint16_t port;
	const char *nsqd, *topic;
	enum sluice_framing framing;
	uint64_t max_body, batch, batch_bytes;
	int64_t defer_ns, linger_ns;
	bool defer, quiet;
};

/* Results, written by the producer's I/O thread. */
struct results {
	_Atomic uint64_t ok, failed;
	pthread_mutex_t err_mu;
	int first_rc; /* err_mu */
	/* the signal thread */
	struct sluice_stream *stream; /* set before it starts */
	atomic_bool done;             /* main: time to go */
	atomic_int signals;           /* SIGINT/SIGTERM seen */
	bool quiet;
};

/* SIGINT/SIGTERM: the first stops the input, the second exits now. */
static void *
signal_main(void *arg)
{
	struct results *r = arg;
	struct timespec tick = { 0, 100 * 1000 * 1000 };
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	while (!atomic_load(&r->done)) {
		sig = sigtimedwait(&set, NULL, &tick);
		if (sig < 0)
			continue;
		if (atomic_fetch_add(&r->signals, 1) == 0) {
			if (!r->quiet)
				fprintf(stderr,
					"sluice publish: %s: publishing what "
					"was read (again to quit now)\n",
					sigabbrev_np(sig));
			sluice_stream_stop(r->stream);
		} else {
			fprintf(stderr,
				"sluice publish: %s: quitting; "
				"unanswered publishes are unknown\n",
				sigabbrev_np(sig));
			_exit(128 + sig);
		}
	}
	return NULL;
}

#define BAD(what) return cli_usage_error("publish", what, optarg)

static int
apply(void *opts, int c)
{
	struct popts *o = opts;

	switch (c) {
	case O_NSQD:
		o->nsqd = optarg;
		if (cli_parse_hostport(optarg, 4150, o->host, sizeof(o->host),
				       &o->port))
			BAD("--nsqd wants HOST:PORT, not '%s'");
		return 0;
	case O_TOPIC:
		o->topic = optarg;
		return 0;
	case O_FRAMING:
		if (sluice_framing_parse(optarg, &o->framing))
			BAD("--framing wants line, nul or length, not '%s'");
		return 0;
	case O_MAX_BODY:
		if (cli_parse_size(optarg, &o->max_body) || o->max_body == 0 ||
		    o->max_body > INT32_MAX - 64)
			BAD("--max-body wants a size from 1 to 2G, not '%s'");
		return 0;
	case O_DEFER:
		if (cli_parse_duration(optarg, &o->defer_ns) ||
		    o->defer_ns / SLUICE_NS_PER_MS > UINT32_MAX)
			BAD("--defer wants a duration like 30s, not '%s'");
		o->defer = true;
		return 0;
	case O_BATCH:
		if (cli_parse_uint(optarg, 1, 1000000, &o->batch))
			BAD("--batch wants 1..1000000, not '%s'");
		return 0;
	case O_BATCH_BYTES:
		if (cli_parse_size(optarg, &o->batch_bytes) ||
		    o->batch_bytes == 0 || o->batch_bytes > INT32_MAX - 64)
			BAD("--batch-bytes wants a size like 512K, not '%s'");
		return 0;
	case O_LINGER:
		if (cli_parse_duration(optarg, &o->linger_ns))
			BAD("--linger wants a duration like 5ms, not '%s'");
		return 0;
	case 'q':
		o->quiet = true;
		return 0;
	default:
		return EXIT_USAGE; /* getopt printed the problem */
	}
}

static const char *const usage[] = { usage_text, NULL };
static const struct cli_flags flags = { "publish", "qh",  longopts,
					usage,     false, apply };

static int
parse(int argc, char **argv, struct popts *o, char ***files, int *nfiles)
{
	struct cli_args args;
	int rc;

	/* Without the environment, the values point into argv. */
	rc = cli_parse_flags(&flags, o, argc, argv, &args, files, nfiles);
	cli_args_free(&args);
	if (rc)
		return rc;
	if (!o->nsqd)
		return cli_usage_error("publish", "%s",
				       "--nsqd HOST:PORT is required");
	if (!o->topic)
		return cli_usage_error("publish", "%s", "--topic is required");
	if (!sluice_nsq_name_is_valid(o->topic))
		return cli_usage_error(
			"publish",
			"invalid topic name '%s' (1..64 bytes of "
			"[.a-zA-Z0-9_-], optionally #ephemeral)",
			o->topic);
	return 0;
}

static void
on_result(void *arg, int rc)
{
	struct results *r = arg;

	if (rc == 0) {
		atomic_fetch_add_explicit(&r->ok, 1, memory_order_relaxed);
		return;
	}
	atomic_fetch_add_explicit(&r->failed, 1, memory_order_relaxed);
	pthread_mutex_lock(&r->err_mu);
	if (!r->first_rc)
		r->first_rc = rc;
	pthread_mutex_unlock(&r->err_mu);
}

/* Publish everything the stream yields; 0, or the failing call's code. */
static int
pump(struct sluice_stream *s, struct sluice_nsq_producer *p,
     const struct popts *o, struct results *r, uint64_t *skipped)
{
	struct sluice_source src = sluice_stream_source(s);
	struct sluice_msg *msgs[FETCH_MAX];
	uint32_t defer_ms = (uint32_t)(o->defer_ns / SLUICE_NS_PER_MS);
	int n, i, rc = 0;

	while (rc == 0 && atomic_load(&r->failed) == 0) {
		n = src.ops->fetch(src.self, msgs, FETCH_MAX, SLUICE_FOREVER);
		if (n == SLUICE_ECLOSED)
			break;
		if (n < 0)
			return n;
		for (i = 0; i < n && rc == 0; i++) {
			if (msgs[i]->body_len == 0) {
				(*skipped)++;
				continue;
			}
			rc = o->defer
				     ? sluice_nsq_dpublish_async(
					       p, o->topic, defer_ms,
					       msgs[i]->body, msgs[i]->body_len,
					       on_result, r)
				     : sluice_nsq_publish_async(
					       p, o->topic, msgs[i]->body,
					       msgs[i]->body_len, on_result, r);
		}
		/* The producer copied the bodies. */
		(void)src.ops->ack(src.self, msgs, (size_t)n);
		src.ops->release(src.self, msgs, (size_t)n);
	}
	return rc;
}

static void
summary(struct sluice_nsq_producer *p, const struct popts *o, uint64_t skipped,
	int64_t t0)
{
	struct sluice_nsq_producer_stats st;
	double secs = (double)(cli_now_ns() - t0) / 1e9;

	sluice_nsq_producer_stats(p, &st);
	fprintf(stderr,
		"sluice: published %llu messages (%llu bytes) to %s in "
		"%llu %s in %.2f s (%.0f msg/s)",
		(unsigned long long)st.published, (unsigned long long)st.bytes,
		o->topic, (unsigned long long)st.commands,
		o->defer ? "DPUBs" : "batches", secs,
		secs > 0 ? (double)st.published / secs : 0.0);
	if (skipped)
		fprintf(stderr, ", %llu empty skipped",
			(unsigned long long)skipped);
	if (st.failed)
		fprintf(stderr, ", %llu failed", (unsigned long long)st.failed);
	fprintf(stderr, "\n");
}

int
cli_publish(int argc, char **argv)
{
	static struct results r;
	struct popts o = { .max_body = 1024 * 1024, .linger_ns = -1 };
	struct sluice_stream_config sc;
	struct sluice_nsq_producer_config pc;
	struct sluice_nsq_producer *p = NULL;
	struct sluice_stream *s = NULL;
	char **files, err[256] = "";
	uint64_t skipped = 0;
	int nfiles, rc, prc, input_rc;
	int64_t t0;

	sigset_t stop_sigs;
	pthread_t sig_t;

	rc = parse(argc, argv, &o, &files, &nfiles);
	if (rc)
		return rc < 0 ? EXIT_OK : rc;
	pthread_mutex_init(&r.err_mu, NULL);
	/* Blocked before any thread starts, so only signal_main takes them. */
	sigemptyset(&stop_sigs);
	sigaddset(&stop_sigs, SIGINT);
	sigaddset(&stop_sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop_sigs, NULL);
	sluice_nsq_producer_config_init(&pc);
	pc.host = o.host;
	pc.port = o.port;
	pc.client_id = "sluice-publish";
	pc.max_msg_size = (size_t)o.max_body;
	if (o.batch)
		pc.batch_max = (size_t)o.batch;
	if (o.batch_bytes)
		pc.batch_bytes = (size_t)o.batch_bytes;
	if (o.linger_ns >= 0)
		pc.linger_ns = o.linger_ns;
	pc.retries = 3;
	rc = sluice_nsq_producer_new(&pc, err, sizeof(err), &p);
	if (rc) {
		fprintf(stderr, "sluice publish: %s\n",
			*err ? err : sluice_strerror(rc));
		return rc == SLUICE_EINVAL ? EXIT_USAGE : EXIT_UNAVAILABLE;
	}
	sluice_stream_config_init(&sc);
	sc.framing = o.framing;
	sc.max_body = (size_t)o.max_body;
	rc = cli_open_input("publish", &sc, files, nfiles, &s);
	if (rc) {
		sluice_nsq_producer_free(p);
		return rc;
	}
	r.stream = s;
	r.quiet = o.quiet;
	if (pthread_create(&sig_t, NULL, signal_main, &r) != 0) {
		sluice_stream_free(s);
		sluice_nsq_producer_free(p);
		return EXIT_SOFTWARE;
	}
	t0 = cli_now_ns();
	prc = pump(s, p, &o, &r, &skipped);
	sluice_stream_stop(s);
	(void)sluice_nsq_producer_flush(p, SLUICE_FOREVER);
	input_rc = sluice_stream_finish(s, err, sizeof(err));
	atomic_store(&r.done, true);
	pthread_join(sig_t, NULL);
	if (!o.quiet)
		summary(p, &o, skipped, t0);
	rc = EXIT_OK;
	if (atomic_load(&r.failed) || prc) {
		char why[256];

		sluice_nsq_producer_last_error(p, why, sizeof(why));
		pthread_mutex_lock(&r.err_mu);
		fprintf(stderr,
			"sluice publish: publishing to %s failed: %s%s%s\n",
			o.topic, sluice_strerror(prc ? prc : r.first_rc),
			*why ? ": " : "", why);
		pthread_mutex_unlock(&r.err_mu);
		rc = EXIT_DEAD;
	} else if (input_rc) {
		fprintf(stderr, "sluice publish: input stopped: %s\n", err);
		rc = EXIT_INPUT;
	} else if (atomic_load(&r.signals)) {
		rc = 130; /* interrupted: everything read was published */
	}
	sluice_stream_free(s);
	sluice_nsq_producer_free(p);
	return rc;
}
