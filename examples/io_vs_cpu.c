/* SPDX-License-Identifier: MIT */
/*
 * io_vs_cpu.c - the seed's lesson 5: when concurrency helps.  Waiting for
 * I/O (files, a database, redis) costs no CPU, so more workers overlap more
 * waits; CPU-bound work cannot go faster than the number of cores.
 *
 * The same 400 messages are handled by 1 and by 8 workers, twice:
 *   I/O-bound  the handler waits 2 ms for an answer: sluice_ctx_poll() on a
 *              child context with a 2 ms deadline, i.e. blocked in poll(2)
 *              using no CPU, and still cancellable by the engine;
 *   CPU-bound  the handler hashes a buffer for about 1 ms of CPU time
 *              (calibrated at start on this machine).
 * The messages are queued before the engine starts, so each run measures
 * the engine draining the same backlog.
 *
 * What to look for: the I/O case speeds up close to 8x with 8 workers
 * whatever the core count, using almost no CPU; the CPU case speeds up at
 * most by the number of cores printed on the first line (about 2x on 2
 * cores), and its CPU time stays the same: extra workers only share it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>

#define MESSAGES  400
#define IO_WAIT   (2 * SLUICE_NS_PER_MS)
#define HASH_SIZE 4096

static uint8_t hash_buf[HASH_SIZE];
static unsigned rounds_per_ms;
static volatile uint64_t sink; /* keeps the hashing from being optimised out */

static int64_t
now_ns(void)
{
	return sluice_clock_now_ns(sluice_clock_monotonic());
}

static int64_t
cpu_ns(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * SLUICE_NS_PER_S + ts.tv_nsec;
}

/* FNV-1a over the buffer, @rounds times: pure CPU, no memory traffic. */
static uint64_t
hash_rounds(unsigned rounds)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325);
	unsigned r;
	size_t i;

	for (r = 0; r < rounds; r++)
		for (i = 0; i < HASH_SIZE; i++)
			h = (h ^ hash_buf[i]) * UINT64_C(0x100000001b3);
	return h;
}

/* How many rounds make 1 ms of CPU on this machine. */
static void
calibrate(void)
{
	int64_t t0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID), spent;
	unsigned rounds = 0;

	do {
		sink = hash_rounds(16);
		rounds += 16;
		spent = cpu_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
	} while (spent < 50 * SLUICE_NS_PER_MS);
	rounds_per_ms = (unsigned)((int64_t)rounds * SLUICE_NS_PER_MS / spent);
	if (rounds_per_ms == 0)
		rounds_per_ms = 1;
}

static struct sluice_error *
handle_io(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	const struct sluice_clock *clk = sluice_ctx_clock(ctx);
	struct sluice_ctx call;
	int r;

	(void)ud;
	(void)m;
	/* The "request": done when its 2 ms answer time passes. */
	if (sluice_ctx_init_child(&call, ctx,
				  sluice_clock_now_ns(clk) + IO_WAIT) != 0)
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, 0, "ctx");
	r = sluice_ctx_poll(&call, -1, 0);
	sluice_ctx_release(&call);
	if (sluice_ctx_is_done(ctx)) /* the message's own deadline */
		return sluice_error_new(SLUICE_CLASS_TIMEOUT, -r, "too slow");
	return NULL;
}

static struct sluice_error *
handle_cpu(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	(void)ud;
	(void)ctx;
	(void)m;
	sink = hash_rounds(rounds_per_ms);
	return NULL;
}

/* Handle MESSAGES with @workers; returns the wall time, or -1. */
static int64_t
run(sluice_handler_fn *fn, unsigned workers, int64_t *cpu)
{
	struct sluice_queue_config qc;
	struct sluice_engine_config cfg;
	struct sluice_engine_stats st;
	struct sluice_engine *e;
	struct sluice_queue *q;
	int64_t t0, c0, wall = -1;
	int i;

	sluice_queue_config_init(&qc);
	qc.capacity = MESSAGES;
	if (sluice_queue_new(&qc, &q) != 0)
		return -1;
	for (i = 0; i < MESSAGES; i++)
		if (sluice_queue_publish(q, NULL, "m", 1, 0) != 0)
			goto out_queue;
	sluice_queue_close(q); /* the engine stops when the backlog is done */
	sluice_engine_config_init(&cfg);
	cfg.workers = workers;
	if (sluice_engine_new(&cfg, sluice_queue_source(q),
			      (struct sluice_handler){ fn, NULL },
			      (struct sluice_batch_handler){ NULL, NULL }, NULL,
			      &e) != 0)
		goto out_queue;
	t0 = now_ns();
	c0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
	if (sluice_engine_start(e) == 0 &&
	    sluice_engine_wait(e, SLUICE_FOREVER) == 0) {
		wall = now_ns() - t0;
		*cpu = cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - c0;
		sluice_engine_stats(e, &st);
		if (st.handled != MESSAGES)
			wall = -1;
	}
	sluice_engine_free(e);
out_queue:
	sluice_queue_free(q);
	return wall;
}

static int
compare(const char *what, sluice_handler_fn *fn)
{
	int64_t c1 = 0, c8 = 0;
	int64_t w1 = run(fn, 1, &c1), w8 = run(fn, 8, &c8);

	if (w1 <= 0 || w8 <= 0)
		return -1;
	printf("%-24s 1 worker %4lld ms (cpu %4lld ms), 8 workers %4lld ms "
	       "(cpu %4lld ms): %.1fx\n",
	       what, (long long)(w1 / SLUICE_NS_PER_MS),
	       (long long)(c1 / SLUICE_NS_PER_MS),
	       (long long)(w8 / SLUICE_NS_PER_MS),
	       (long long)(c8 / SLUICE_NS_PER_MS), (double)w1 / (double)w8);
	return 0;
}

int
main(void)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	size_t i;

	for (i = 0; i < HASH_SIZE; i++)
		hash_buf[i] = (uint8_t)(i * 131u);
	calibrate();
	printf("lesson 5: %d messages, 1 vs 8 workers, on %ld CPUs (so CPU "
	       "work can gain at most %ldx)\n",
	       MESSAGES, ncpu, ncpu < 8 ? ncpu : 8);
	if (compare("I/O-bound (2 ms wait):", handle_io) != 0 ||
	    compare("CPU-bound (1 ms of CPU):", handle_cpu) != 0)
		return 1;
	return 0;
}
