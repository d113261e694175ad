/* SPDX-License-Identifier: MIT */
/*
 * middleware.c - the seed's lesson 7: composition over inheritance.
 *
 * Instead of a "base consumer" class that every handler extends, each
 * behaviour is a middleware that wraps a handler and returns a handler.
 * This builds the documented order, outermost first,
 *
 *     capture -> hooks -> dedup -> retry -> timeout -> handler
 *
 * by wrapping inside-out, and runs five deliveries through it on one worker:
 *   order-1  succeeds;
 *   order-1  delivered again (same id): dedup skips it, the handler never
 *            sees it;
 *   order-2  fails TEMPORARY twice: retry re-runs it in place, the third try
 *            succeeds, the engine sees one successful delivery;
 *   order-3  its first try ignores its context and takes 80 ms: timeout
 *            (50 ms per try) discards that late "success" as a TIMEOUT,
 *            retry runs it again and the second try is fast;
 *   order-4  fails PERMANENT: retry leaves it alone, capture keeps the
 *            failure, the engine dead-letters it to a small sink defined
 *            here (another composition: the sink is a struct of functions).
 * hooks count every delivery and time it.  One more layer, "spy", is
 * written here in a few lines to show that a middleware is nothing more than
 * a handler holding the next one: it sits between retry and timeout and
 * counts the TIMEOUT results the timeout layer hands back.
 *
 * What to look for: each layer's effect on its own line at the end, and the
 * handler's lines showing which tries really ran.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <sluice/sluice.h>

#define MS SLUICE_NS_PER_MS

static const char *const ids[] = { "order-1", "order-1", "order-2", "order-3",
				   "order-4" };
#define NDELIVERIES (sizeof(ids) / sizeof(ids[0]))

/* Handler runs per order number (1..4).  One worker, so no lock needed;
 * main reads them after sluice_engine_wait() joined the worker. */
static unsigned runs[5];
static atomic_uint hook_calls, hook_failed;
static atomic_llong hook_ns;
static atomic_uint spy_timeouts;

static int
order_of(const struct sluice_msg *m)
{
	size_t len;
	const char *id = sluice_msg_id(m, &len);

	return len == 7 && memcmp(id, "order-", 6) == 0 && id[6] >= '1' &&
			       id[6] <= '4'
		       ? id[6] - '0'
		       : 0;
}

static struct sluice_error *
handle(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	int o = order_of(m);
	unsigned t;
	struct sluice_error *err = NULL;

	(void)ud;
	(void)ctx;
	t = ++runs[o];
	if (o == 2 && t <= 2) {
		err = sluice_error_new(SLUICE_CLASS_TEMPORARY, 503,
				       "inventory service busy");
	} else if (o == 3 && t == 1) {
		/* A call that ignores its deadline and answers late. */
		struct timespec ts = { 0, 80 * MS };

		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
	} else if (o == 4) {
		err = sluice_error_new(SLUICE_CLASS_PERMANENT, 422,
				       "order has no items");
	}
	printf("  handler: order-%d try %u (delivery %u) -> %s\n", o, t,
	       sluice_msg_attempts(m),
	       err                ? sluice_class_name(sluice_error_class(err))
	       : o == 3 && t == 1 ? "ok, but after 80 ms"
				  : "ok");
	return err;
}

/* A home-made middleware: call the next handler, look at its result. */
static struct sluice_error *
spy(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	const struct sluice_handler *next = ud;
	struct sluice_error *err = sluice_handler_call(*next, ctx, m);

	if (sluice_error_class(err) == SLUICE_CLASS_TIMEOUT)
		atomic_fetch_add(&spy_timeouts, 1);
	return err;
}

static void
on_done(void *ud, const struct sluice_msg *m, const struct sluice_error *err,
	int64_t elapsed_ns)
{
	(void)ud;
	(void)m;
	atomic_fetch_add(&hook_calls, 1);
	if (err)
		atomic_fetch_add(&hook_failed, 1);
	atomic_fetch_add(&hook_ns, elapsed_ns);
}

/* A dead-letter sink is just a struct of functions: print the record. */
static int
print_dlq_write(void *self, const char *source, const struct sluice_msg *m,
		const struct sluice_error *why)
{
	char reason[128];
	size_t len;
	const char *id = sluice_msg_id(m, &len);

	(void)self;
	sluice_error_format(why, reason, sizeof(reason));
	printf("  dead-letter sink: %.*s from %s, attempts %u: %s\n", (int)len,
	       id, source, sluice_msg_attempts(m), why ? reason : "-");
	return 0;
}

static void
print_dlq_close(void *self)
{
	(void)self;
}

static const struct sluice_dlq_ops print_dlq_ops = {
	.name = "print",
	.write = print_dlq_write,
	.close = print_dlq_close,
};

int
main(void)
{
	struct sluice_backoff short_retry = {
		.min_ns = 5 * MS,
		.max_ns = 20 * MS,
		.factor = 2.0,
		.jitter = SLUICE_JITTER_NONE,
		.max_attempts = 0,
	};
	struct sluice_hooks hooks = { NULL, on_done, NULL };
	struct sluice_dlq dlq = { &print_dlq_ops, NULL };
	struct sluice_handler h = { handle, NULL }, capture, inner;
	struct sluice_queue_config qc;
	struct sluice_engine_config cfg;
	struct sluice_engine_stats st;
	struct sluice_engine *e = NULL;
	struct sluice_queue *q = NULL;
	struct sluice_stack *stack = NULL;
	struct sluice_map *seen = NULL;
	char text[256];
	int rc = 1;
	size_t i;

	/* Inside-out: the layer wrapped last runs first. */
	if (sluice_stack_new(&stack) != 0 ||
	    sluice_map_new(0, 10000, sluice_clock_monotonic(), &seen) != 0 ||
	    sluice_mw_timeout(stack, h, 50 * MS, &inner) != 0)
		goto out;
	h = (struct sluice_handler){ spy, &inner };
	if (sluice_mw_retry(stack, h, &short_retry, 3, 42, &h) != 0 ||
	    sluice_mw_dedup(stack, h, seen, 60 * SLUICE_NS_PER_S, &h) != 0 ||
	    sluice_mw_hooks(stack, h, &hooks, &h) != 0 ||
	    sluice_mw_capture(stack, h, 8, &capture) != 0)
		goto out;
	printf("lesson 7: capture -> hooks -> dedup -> retry(3 tries) -> "
	       "spy -> timeout(50 ms) -> handler\n");

	sluice_queue_config_init(&qc);
	if (sluice_queue_new(&qc, &q) != 0)
		goto out;
	sluice_engine_config_init(&cfg);
	cfg.workers = 1; /* one at a time, so the story reads in order */
	cfg.timeout_ns = 2 * SLUICE_NS_PER_S;
	if (sluice_engine_new(&cfg, sluice_queue_source(q), capture,
			      (struct sluice_batch_handler){ NULL, NULL }, &dlq,
			      &e) != 0)
		goto out;
	for (i = 0; i < NDELIVERIES; i++)
		if (sluice_queue_publish(q, ids[i], "{}", 2, SLUICE_FOREVER) !=
		    0)
			goto out;
	sluice_queue_close(q);
	if (sluice_engine_start(e) != 0 ||
	    sluice_engine_wait(e, SLUICE_FOREVER) != 0)
		goto out;
	sluice_engine_stats(e, &st);

	printf("what each layer did:\n");
	printf("  dedup:   order-1 delivered 2 times, handler ran %u time\n",
	       runs[1]);
	printf("  retry:   order-2 ran %u tries in one delivery; order-4 "
	       "(permanent) ran %u\n",
	       runs[2], runs[4]);
	printf("  timeout: order-3 ran %u tries; the spy saw %u TIMEOUT (the "
	       "80 ms \"ok\")\n",
	       runs[3], atomic_load(&spy_timeouts));
	printf("  hooks:   %u calls, %u failed, %lld ms in all\n",
	       atomic_load(&hook_calls), atomic_load(&hook_failed),
	       (long long)(atomic_load(&hook_ns) / MS));
	if (sluice_mw_capture_last(capture, 0, text, sizeof(text)) == 0)
		printf("  capture: newest failure \"%s\"%s\n", text,
		       sluice_mw_capture_last(capture, 1, text, sizeof(text)) ==
				       SLUICE_ENOENT
			       ? " (the only one)"
			       : "");
	printf("engine: delivered %llu = handled %llu + requeued %llu + "
	       "dead-lettered %llu\n",
	       (unsigned long long)st.delivered, (unsigned long long)st.handled,
	       (unsigned long long)st.requeued,
	       (unsigned long long)st.dead_lettered);
	rc = 0;
out:
	sluice_engine_free(e);
	sluice_queue_free(q);
	sluice_stack_free(stack);
	sluice_map_free(seen);
	return rc;
}
