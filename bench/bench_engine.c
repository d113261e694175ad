/* SPDX-License-Identifier: MIT */
/*
 * bench_engine.c - engine throughput with a no-op handler over the
 * in-process queue, the C side of the seed's channel + goroutine pool.
 *
 * One producer thread publishes N 8-byte messages (a counter, like the Go
 * anchor's Message{Nums: i}) in runs of 256; the engine consumes them in
 * concurrent mode (N workers) or batch mode (batches of up to 128, as in the
 * anchor's batch pattern).  The handler adds each body to a per-thread sum,
 * and the sums are checked against n(n-1)/2 so nothing can be skipped.
 *
 *   bench_engine [-m pool|batch] [-w workers] [-n messages] [-p prefetch]
 *                [-s NS] [-t] [-P]
 *
 * Prints one line: "<mode> workers=W n=N: X ns/msg, Y Mmsg/s".  With -t
 * the run is repeated with the execution trace recording (ring mode, so the
 * buffer never fills) and it prints both, the events per message, the cost
 * per event derived from the difference, and the cost of one probe on one
 * thread, on and off.  With -P the run is repeated with the CPU profiler
 * sampling at 100 Hz, and it prints both and the overhead in percent.
 * -s NS makes the (concurrent-mode) handler busy for about NS ns, so the
 * overheads can be seen against a handler that does some work.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>
#include <sluice/trace.h>

static _Atomic uint64_t total_sum;
static int64_t spin_ns; /* -s: CPU work per message, in ns */

/* Busy work for about spin_ns: a handler that does something. */
static void
spin(void)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do
		clock_gettime(CLOCK_MONOTONIC, &t);
	while ((t.tv_sec - t0.tv_sec) * 1000000000 + (t.tv_nsec - t0.tv_nsec) <
	       spin_ns);
}
static _Thread_local uint64_t local_sum;

static struct sluice_error *
noop(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	uint64_t v;

	(void)ud;
	(void)ctx;
	memcpy(&v, m->body, sizeof(v));
	local_sum += v;
	return NULL;
}

static struct sluice_error *
noop_batch(void *ud, struct sluice_ctx *ctx,
	   const struct sluice_msg *const *msgs, size_t n,
	   struct sluice_error **errs)
{
	uint64_t v, s = 0;
	size_t i;

	(void)ud;
	(void)ctx;
	(void)errs;
	for (i = 0; i < n; i++) {
		memcpy(&v, msgs[i]->body, sizeof(v));
		s += v;
	}
	local_sum += s;
	return NULL;
}

/* Fold this thread's sum into the total; runs when the worker thread
 * exits (the sum_key destructor below). */
static void
flush_local(void)
{
	atomic_fetch_add(&total_sum, local_sum);
	local_sum = 0;
}

struct producer {
	struct sluice_queue *q;
	uint64_t n;
};

static void *
produce(void *arg)
{
	struct producer *p = arg;
	enum { RUN = 256 };
	uint64_t vals[RUN];
	struct sluice_bytes b[RUN];
	uint64_t i = 0;
	size_t k, done;
	int rc;

	for (k = 0; k < RUN; k++) {
		b[k].ptr = &vals[k];
		b[k].len = sizeof(vals[k]);
	}
	while (i < p->n) {
		size_t run = p->n - i < RUN ? (size_t)(p->n - i) : RUN;

		for (k = 0; k < run; k++)
			vals[k] = i + k;
		for (done = 0; done < run; done += (size_t)rc) {
			rc = sluice_queue_publish_batch(
				p->q, b + done, run - done, SLUICE_FOREVER);
			if (rc <= 0) {
				fprintf(stderr, "publish: %s\n",
					sluice_strerror(rc));
				exit(1);
			}
		}
		i += run;
	}
	sluice_queue_close(p->q);
	return NULL;
}

/* Each worker sets this key on its first message, so that its exit runs
 * sum_destructor(): the per-thread sums need no atomic per message. */
static pthread_key_t sum_key;

static void
sum_destructor(void *v)
{
	(void)v;
	flush_local();
}

static struct sluice_error *
noop_keyed(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	if (!local_sum)
		pthread_setspecific(sum_key, (void *)1);
	if (spin_ns)
		spin();
	return noop(ud, ctx, m);
}

static struct sluice_error *
noop_batch_keyed(void *ud, struct sluice_ctx *ctx,
		 const struct sluice_msg *const *msgs, size_t n,
		 struct sluice_error **errs)
{
	if (!local_sum)
		pthread_setspecific(sum_key, (void *)1);
	return noop_batch(ud, ctx, msgs, n, errs);
}

static double
elapsed(const struct timespec *t0, const struct timespec *t1)
{
	return (double)(t1->tv_sec - t0->tv_sec) +
	       (double)(t1->tv_nsec - t0->tv_nsec) / 1e9;
}

/* ns per call of one probe on this thread: recording, then not. */
static void
probe_cost(void)
{
	struct sluice_trace_options o;
	struct timespec t0, t1;
	const int n = 2000000;
	int i;

	sluice_trace_options_init(&o);
	o.ring = true;
	if (sluice_trace_start(&o) != 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < n; i++)
		sluice_trace_counter("bench", i);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	(void)sluice_trace_stop();
	printf("probe on: %.1f ns/event", elapsed(&t0, &t1) * 1e9 / n);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < n; i++)
		sluice_trace_counter("bench", i);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf(", off: %.2f ns/probe\n", elapsed(&t0, &t1) * 1e9 / n);
}

static int run(const char *mode, unsigned workers, unsigned prefetch,
	       uint64_t n, double *ns_per_msg);

int
main(int argc, char **argv)
{
	const char *mode = "pool";
	unsigned workers = 2, prefetch = 1024;
	uint64_t n = 10000000;
	bool trace = false, prof = false;
	double off, on;
	int opt;

	while ((opt = getopt(argc, argv, "m:w:n:p:s:tP")) != -1) {
		switch (opt) {
		case 'm':
			mode = optarg;
			break;
		case 'w':
			workers = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'n':
			n = strtoull(optarg, NULL, 10);
			break;
		case 'p':
			prefetch = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 't':
			trace = true;
			break;
		case 'P':
			prof = true;
			break;
		case 's':
			spin_ns = strtoll(optarg, NULL, 10);
			break;
		default:
			fprintf(stderr,
				"usage: %s [-m pool|batch] [-w N] "
				"[-n msgs] [-p prefetch] [-s spin_ns] [-t] "
				"[-P]\n",
				argv[0]);
			return 2;
		}
	}
	pthread_key_create(&sum_key, sum_destructor);
	if (run(mode, workers, prefetch, n, &off) != 0)
		return 1;
	if (trace) {
		struct sluice_trace_options o;
		struct sluice_trace_stats ts;
		double per_msg;

		sluice_trace_options_init(&o);
		o.buffer_bytes = 64u << 20;
		o.ring = true;
		if (sluice_trace_start(&o) != 0)
			return 1;
		atomic_store(&total_sum, 0);
		printf("trace on:  ");
		if (run(mode, workers, prefetch, n, &on) != 0)
			return 1;
		(void)sluice_trace_stop();
		sluice_trace_stats(&ts);
		per_msg = (double)(ts.events + ts.overwritten + ts.dropped) /
			  (double)n;
		printf("trace off %.1f ns/msg, on %.1f ns/msg: %.1f events/msg,"
		       " %.1f ns/event\n",
		       off, on, per_msg,
		       per_msg > 0 ? (on - off) / per_msg : 0.0);
		probe_cost();
	}
	if (prof) {
		char err[160], *data = NULL;
		size_t len = 0;

		if (sluice_cpu_profile_start(100, err, sizeof(err)) != 0) {
			fprintf(stderr, "cpu profile: %s\n", err);
			return 1;
		}
		atomic_store(&total_sum, 0);
		printf("profiler on: ");
		if (run(mode, workers, prefetch, n, &on) != 0)
			return 1;
		if (sluice_cpu_profile_stop(SLUICE_PROFILE_PPROF, &data,
					    &len) != 0)
			return 1;
		sluice_profile_free(data);
		printf("profiler off %.1f ns/msg, on (100 Hz) %.1f ns/msg: "
		       "%+.1f%%\n",
		       off, on, (on - off) / off * 100.0);
	}
	return 0;
}

static int
run(const char *mode, unsigned workers, unsigned prefetch, uint64_t n,
    double *ns_per_msg)
{
	struct sluice_engine_config cfg;
	struct sluice_queue_config qc;
	struct sluice_handler h = { noop_keyed, NULL };
	struct sluice_batch_handler bh = { noop_batch_keyed, NULL };
	struct sluice_handler noh = { NULL, NULL };
	struct sluice_batch_handler nob = { NULL, NULL };
	struct sluice_engine_stats st;
	struct sluice_engine *e;
	struct sluice_queue *q;
	struct producer p;
	struct timespec t0, t1;
	pthread_t pt;
	double secs;

	sluice_queue_config_init(&qc);
	qc.capacity = 1024 + prefetch; /* the anchor's channel holds 1024 */
	if (sluice_queue_new(&qc, &q) != 0)
		return 1;
	sluice_engine_config_init(&cfg);
	cfg.workers = workers;
	cfg.prefetch = prefetch;
	if (strcmp(mode, "batch") == 0) {
		cfg.mode = SLUICE_MODE_BATCH;
		cfg.batch_max = 128;
		cfg.batch_wait_ns = 0; /* ship what is there, like the seed */
		cfg.max_in_flight = 0;
	}
	if (sluice_engine_new(&cfg, sluice_queue_source(q),
			      cfg.mode == SLUICE_MODE_BATCH ? noh : h,
			      cfg.mode == SLUICE_MODE_BATCH ? bh : nob, NULL,
			      &e) != 0) {
		fprintf(stderr, "engine_new failed\n");
		return 1;
	}
	p.q = q;
	p.n = n;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (sluice_engine_start(e) != 0)
		return 1;
	pthread_create(&pt, NULL, produce, &p);
	if (sluice_engine_wait(e, SLUICE_FOREVER) != 0)
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	pthread_join(pt, NULL);
	sluice_engine_stats(e, &st);
	secs = elapsed(&t0, &t1);
	*ns_per_msg = secs * 1e9 / (double)n;
	printf("%s workers=%u n=%llu: %.1f ns/msg, %.2f Mmsg/s", mode, workers,
	       (unsigned long long)n, secs * 1e9 / (double)n,
	       (double)n / secs / 1e6);
	if (st.batches)
		printf(" (mean batch %.1f)",
		       (double)st.handled / (double)st.batches);
	printf("\n");
	/* Worker threads have exited: their key destructors folded sums. */
	if (st.handled != n || atomic_load(&total_sum) != n * (n - 1) / 2) {
		fprintf(stderr,
			"check failed: handled %llu of %llu, sum %llu\n",
			(unsigned long long)st.handled, (unsigned long long)n,
			(unsigned long long)atomic_load(&total_sum));
		return 1;
	}
	sluice_engine_free(e);
	sluice_queue_free(q);
	return 0;
}
