/* SPDX-License-Identifier: MIT */
/*
 * consume_concurrent_batch.c - the seed's lesson 1: consume a stream with
 * bounded concurrency or in batches, never with a thread per message.
 *
 * The same 4000 messages go to a "downstream" that serves 8 calls at a time,
 * 1 ms each (think of a database with 8 connections):
 *   - the engine in concurrent mode, 8 workers: at most 8 handlers run and
 *     the engine holds at most N + prefetch messages; the producer is held
 *     back by the bounded queue instead;
 *   - the engine in batch mode, 2 workers: one downstream call per batch of
 *     up to 100 messages (a bulk write), so the per-call cost is shared;
 *   - the seed's first snippet, a thread started for every message with no
 *     bound.  It is stopped after 200 ms or 2000 threads, whichever comes
 *     first, so it cannot take the machine down.
 *
 * What to look for when you run it: "max running" never exceeds N; batch mode
 * is many times faster for the same downstream; the avalanche needs hundreds
 * or thousands of threads at once, all blocked on the same 8 downstream
 * slots, where the engine needed 8.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <sluice/sluice.h>

#define MESSAGES              4000
#define WORKERS               8
#define BATCH_WORKERS         2
#define BATCH_MAX             100
#define DOWNSTREAM_SLOTS      8
#define CALL_NS               SLUICE_NS_PER_MS
#define AVALANCHE_MAX_THREADS 2000
#define AVALANCHE_MAX_NS      (200 * SLUICE_NS_PER_MS)
#define AVALANCHE_STACK       (64 * 1024)

static sem_t downstream; /* DOWNSTREAM_SLOTS calls at a time */
static atomic_int running, max_running;
static atomic_ullong handled;

static int64_t
now_ns(void)
{
	return sluice_clock_now_ns(sluice_clock_monotonic());
}

/* One call to the downstream: wait for a free slot, then 1 ms of latency. */
static void
downstream_call(void)
{
	struct timespec ts = { 0, (long)CALL_NS };

	while (sem_wait(&downstream) != 0 && errno == EINTR)
		;
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
	sem_post(&downstream);
}

static void
enter(void)
{
	int r = atomic_fetch_add(&running, 1) + 1;
	int m = atomic_load(&max_running);

	while (r > m && !atomic_compare_exchange_weak(&max_running, &m, r))
		;
}

static void
leave(void)
{
	atomic_fetch_sub(&running, 1);
}

static struct sluice_error *
handle_one(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	(void)ud;
	(void)ctx;
	(void)m;
	enter();
	downstream_call();
	atomic_fetch_add(&handled, 1);
	leave();
	return NULL;
}

static struct sluice_error *
handle_batch(void *ud, struct sluice_ctx *ctx,
	     const struct sluice_msg *const *msgs, size_t n,
	     struct sluice_error **errs)
{
	(void)ud;
	(void)ctx;
	(void)msgs;
	(void)errs;
	enter();
	downstream_call(); /* one bulk write for the whole batch */
	atomic_fetch_add(&handled, n);
	leave();
	return NULL; /* every message of the batch succeeded */
}

static int
run_engine(enum sluice_mode mode)
{
	struct sluice_queue_config qc;
	struct sluice_engine_config cfg;
	struct sluice_handler h = { NULL, NULL };
	struct sluice_batch_handler bh = { NULL, NULL };
	struct sluice_engine_stats st;
	struct sluice_bytes bodies[250];
	char text[250][16];
	struct sluice_engine *e;
	struct sluice_queue *q;
	int64_t t0, t1;
	double secs;
	size_t i, sent;
	int r;

	atomic_store(&running, 0);
	atomic_store(&max_running, 0);
	atomic_store(&handled, 0);
	sluice_queue_config_init(&qc); /* capacity 1024: bounded */
	if (sluice_queue_new(&qc, &q) != 0)
		return -1;
	sluice_engine_config_init(&cfg);
	cfg.mode = mode;
	if (mode == SLUICE_MODE_CONCURRENT) {
		cfg.workers = WORKERS;
		h.fn = handle_one;
	} else {
		cfg.workers = BATCH_WORKERS;
		cfg.batch_max = BATCH_MAX;
		cfg.batch_wait_ns = 5 * SLUICE_NS_PER_MS;
		bh.fn = handle_batch;
	}
	if (sluice_engine_new(&cfg, sluice_queue_source(q), h, bh, NULL, &e) !=
	    0) {
		sluice_queue_free(q);
		return -1;
	}
	if (sluice_engine_start(e) != 0)
		goto fail;
	t0 = now_ns();
	/* The producer: as fast as it can; the full queue holds it back. */
	for (sent = 0; sent < MESSAGES; sent += 250) {
		for (i = 0; i < 250; i++) {
			int len = snprintf(text[i], sizeof(text[i]), "msg-%zu",
					   sent + i);

			bodies[i].ptr = text[i];
			bodies[i].len = (size_t)len;
		}
		r = sluice_queue_publish_batch(q, bodies, 250, SLUICE_FOREVER);
		if (r != 250)
			goto fail;
	}
	sluice_queue_close(q); /* the engine stops once all are settled */
	if (sluice_engine_wait(e, SLUICE_FOREVER) != 0)
		goto fail;
	t1 = now_ns();
	sluice_engine_stats(e, &st);
	secs = (double)(t1 - t0) / 1e9;
	if (mode == SLUICE_MODE_CONCURRENT)
		printf("concurrent, %u workers:  %llu msgs in %.3f s = %7.0f "
		       "msg/s; max running %d (N = %u), max held %llu of "
		       "credit %zu\n",
		       cfg.workers, (unsigned long long)atomic_load(&handled),
		       secs, (double)atomic_load(&handled) / secs,
		       atomic_load(&max_running), cfg.workers,
		       (unsigned long long)st.max_held, st.max_in_flight);
	else
		printf("batch, %u workers x %u: %llu msgs in %.3f s = %7.0f "
		       "msg/s; %llu batches (max %llu), max running %d, max "
		       "held %llu of credit %zu\n",
		       cfg.workers, (unsigned)BATCH_MAX,
		       (unsigned long long)atomic_load(&handled), secs,
		       (double)atomic_load(&handled) / secs,
		       (unsigned long long)st.batches,
		       (unsigned long long)st.max_batch,
		       atomic_load(&max_running),
		       (unsigned long long)st.max_held, st.max_in_flight);
	sluice_engine_free(e);
	sluice_queue_free(q);
	return st.handled == MESSAGES ? 0 : -1;
fail:
	sluice_engine_free(e);
	sluice_queue_free(q);
	return -1;
}

/* ---- the avalanche: the seed's `go a(ch)` for every message ------------- */

static atomic_int live;

static void *
avalanche_one(void *arg)
{
	(void)arg;
	downstream_call();
	atomic_fetch_sub(&live, 1);
	return NULL;
}

static int
run_avalanche(void)
{
	static pthread_t tids[AVALANCHE_MAX_THREADS];
	pthread_attr_t attr;
	int64_t t0, elapsed = 0;
	int peak = 0, err = 0;
	size_t n = 0, i;

	if (pthread_attr_init(&attr) != 0)
		return -1;
	/* Small stacks, so even the capped run stays cheap. */
	pthread_attr_setstacksize(&attr, AVALANCHE_STACK);
	t0 = now_ns();
	while (n < MESSAGES && n < AVALANCHE_MAX_THREADS) {
		int l;

		elapsed = now_ns() - t0;
		if (elapsed >= AVALANCHE_MAX_NS)
			break;
		l = atomic_fetch_add(&live, 1) + 1;
		if (l > peak)
			peak = l;
		err = pthread_create(&tids[n], &attr, avalanche_one, NULL);
		if (err != 0) {
			atomic_fetch_sub(&live, 1);
			break; /* the machine said no: that is the avalanche */
		}
		n++;
	}
	elapsed = now_ns() - t0;
	for (i = 0; i < n; i++)
		pthread_join(tids[i], NULL);
	pthread_attr_destroy(&attr);
	printf("avalanche (a thread per message): %d threads alive at peak "
	       "after %lld ms, for %zu messages (stopped by %s); the engine "
	       "needed %d\n",
	       peak, (long long)(elapsed / SLUICE_NS_PER_MS), n,
	       err                          ? "pthread_create failing"
	       : n == AVALANCHE_MAX_THREADS ? "the thread cap"
					    : "the time cap",
	       WORKERS);
	return 0;
}

int
main(void)
{
	if (sem_init(&downstream, 0, DOWNSTREAM_SLOTS) != 0)
		return 1;
	printf("lesson 1: %d messages; the downstream serves %d calls at a "
	       "time, 1 ms each\n",
	       MESSAGES, DOWNSTREAM_SLOTS);
	if (run_engine(SLUICE_MODE_CONCURRENT) != 0 ||
	    run_engine(SLUICE_MODE_BATCH) != 0 || run_avalanche() != 0)
		return 1;
	sem_destroy(&downstream);
	return 0;
}
