/* SPDX-License-Identifier: MIT */
/*
 * deadline.c - the seed's lesson 2: every external call gets a deadline
 * (Go's context.WithDeadline), so a slow dependency costs a bounded wait.
 *
 * The "external call" is the seed's Handle(): a thread that answers on a
 * pipe after a delay.  The seed waits 3 s for an answer that takes 4 s; here
 * that is 300 ms against 400 ms, to keep the run short.
 *   1. A root context with a deadline 300 ms away; sluice_ctx_poll() waits on
 *      the pipe and the deadline at once and gives up at 300 ms, printing
 *      "ctx: deadline exceeded" like the seed.  With a 500 ms deadline the
 *      same call answers in time ("ok").
 *   2. The same call inside an engine handler with a 300 ms per-message
 *      timeout: the handler passes the engine's context to the call, the
 *      watchdog cancels it at the deadline and requeues the message as a
 *      TIMEOUT; the second delivery meets a faster answer and succeeds.
 *
 * What to look for: each wait ends at its deadline (about 300 ms), not when
 * the answer would have come (400 ms), and the engine counts one timeout,
 * one requeue and one handled message.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>

#define MS SLUICE_NS_PER_MS

/* One call in flight: the answering thread writes a byte after delay_ns. */
struct call {
	int fds[2];
	int64_t delay_ns;
	pthread_t thread;
};

static int64_t
now_ns(void)
{
	return sluice_clock_now_ns(sluice_clock_monotonic());
}

static void *
answer(void *arg)
{
	struct call *c = arg;
	struct timespec ts = { (time_t)(c->delay_ns / SLUICE_NS_PER_S),
			       (long)(c->delay_ns % SLUICE_NS_PER_S) };
	char ok = 1;

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
	if (write(c->fds[1], &ok, 1) != 1)
		return NULL; /* nobody will read it anyway */
	return NULL;
}

/* The seed's Handle(): start the external call, return what to wait on. */
static int
call_start(struct call *c, int64_t delay_ns)
{
	c->delay_ns = delay_ns;
	if (pipe(c->fds) != 0)
		return -1;
	if (pthread_create(&c->thread, NULL, answer, c) != 0) {
		close(c->fds[0]);
		close(c->fds[1]);
		return -1;
	}
	return c->fds[0];
}

/*
 * Abandon or finish the call.  A real client would close its connection;
 * here the answering thread is joined so nothing outlives the example.
 */
static void
call_finish(struct call *c)
{
	pthread_join(c->thread, NULL);
	close(c->fds[0]);
	close(c->fds[1]);
}

/* Wait for the call under @ctx; prints what happened like the seed. */
static int
wait_call(struct sluice_ctx *ctx, const char *who, int64_t delay_ns)
{
	struct call c;
	int64_t t0 = now_ns();
	int fd = call_start(&c, delay_ns), r;

	if (fd < 0)
		return SLUICE_EIO;
	r = sluice_ctx_poll(ctx, fd, POLLIN);
	if (r > 0)
		printf("%s ok after %lld ms\n", who,
		       (long long)((now_ns() - t0) / MS));
	else
		printf("%s ctx: %s after %lld ms (%s: %s)\n", who,
		       r == SLUICE_ETIMEDOUT ? "deadline exceeded" : "canceled",
		       (long long)((now_ns() - t0) / MS), sluice_err_name(r),
		       sluice_strerror(r));
	call_finish(&c);
	return r > 0 ? 0 : r;
}

/* Part 2: the same call inside a handler; the engine sets the deadline. */
static struct sluice_error *
handle(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	char who[48];
	/* The first answer is slow (400 ms), the retry meets a fast one. */
	int64_t delay = sluice_msg_attempts(m) == 1 ? 400 * MS : 100 * MS;
	int r;

	(void)ud;
	snprintf(who, sizeof(who),
		 "  handler, attempt %u:", sluice_msg_attempts(m));
	r = wait_call(ctx, who, delay);
	if (r == 0)
		return NULL;
	/* Too late to matter (the watchdog already settled the message as a
	 * timeout), but a handler reports what it saw. */
	return sluice_error_new(r == SLUICE_ETIMEDOUT ? SLUICE_CLASS_TIMEOUT
						      : SLUICE_CLASS_CANCELED,
				-r, "external call: %s", sluice_strerror(r));
}

static int
run_engine(void)
{
	struct sluice_queue_config qc;
	struct sluice_engine_config cfg;
	struct sluice_engine_stats st;
	struct sluice_engine *e;
	struct sluice_queue *q;

	sluice_queue_config_init(&qc);
	if (sluice_queue_new(&qc, &q) != 0)
		return -1;
	sluice_engine_config_init(&cfg);
	cfg.workers = 1;
	cfg.timeout_ns = 300 * MS;  /* the per-message deadline */
	cfg.retry.min_ns = 10 * MS; /* retry soon */
	cfg.retry.max_ns = 20 * MS;
	if (sluice_engine_new(&cfg, sluice_queue_source(q),
			      (struct sluice_handler){ handle, NULL },
			      (struct sluice_batch_handler){ NULL, NULL }, NULL,
			      &e) != 0) {
		sluice_queue_free(q);
		return -1;
	}
	if (sluice_engine_start(e) != 0 ||
	    sluice_queue_publish(q, NULL, "order-42", 8, SLUICE_FOREVER) != 0)
		goto fail;
	sluice_queue_close(q);
	if (sluice_engine_wait(e, SLUICE_FOREVER) != 0)
		goto fail;
	sluice_engine_stats(e, &st);
	printf("  engine: delivered %llu, timeouts %llu, requeued %llu, "
	       "handled %llu\n",
	       (unsigned long long)st.delivered,
	       (unsigned long long)st.timeouts, (unsigned long long)st.requeued,
	       (unsigned long long)st.handled);
	sluice_engine_free(e);
	sluice_queue_free(q);
	return 0;
fail:
	sluice_engine_free(e);
	sluice_queue_free(q);
	return -1;
}

int
main(void)
{
	const struct sluice_clock *clk = sluice_clock_monotonic();
	struct sluice_ctx ctx;
	int r;

	printf("lesson 2: an external call that answers after 400 ms\n");
	/* context.WithDeadline(ctx, time.Now().Add(300 ms)) */
	if (sluice_ctx_init(&ctx, clk, sluice_clock_now_ns(clk) + 300 * MS) !=
	    0)
		return 1;
	r = wait_call(&ctx, "deadline 300 ms:", 400 * MS);
	sluice_ctx_release(&ctx);
	if (r != SLUICE_ETIMEDOUT)
		return 1;

	if (sluice_ctx_init(&ctx, clk, sluice_clock_now_ns(clk) + 500 * MS) !=
	    0)
		return 1;
	r = wait_call(&ctx, "deadline 500 ms:", 400 * MS);
	sluice_ctx_release(&ctx);
	if (r != 0)
		return 1;

	printf("the same call in an engine handler, timeout_ns = 300 ms:\n");
	return run_engine() == 0 ? 0 : 1;
}
