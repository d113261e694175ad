/* SPDX-License-Identifier: MIT */
/*
 * test_batch.c - batch mode: batches flush on count, bytes or wait, whichever
 * comes first, never empty and never larger than the credit; a partial
 * failure acks the successes and retries only the failures; a batch that
 * overruns its deadline is requeued whole.
 */
#include <stdatomic.h>

#include <sluice/sluice.h>

#include "source/queue_int.h"
#include "support.h"

struct batch_log {
	pthread_mutex_t mu;
	size_t sizes[256]; /* guarded by mu */
	size_t bytes[256];
	int n;
	struct monitor batches;
	size_t max_bytes; /* a batch larger than this fails the test */
};

static void
log_init(struct batch_log *l)
{
	memset(l, 0, sizeof(*l));
	pthread_mutex_init(&l->mu, NULL);
	monitor_init(&l->batches);
}

static void
log_batch(struct batch_log *l, const struct sluice_msg *const *msgs, size_t n)
{
	size_t bytes = 0, i;

	CHECK_GT(n, 0); /* never an empty batch */
	for (i = 0; i < n; i++)
		bytes += sluice_msg_body(msgs[i]).len;
	if (l->max_bytes && n > 1)
		CHECK_LE(bytes, l->max_bytes);
	pthread_mutex_lock(&l->mu);
	CHECK_LT(l->n, 256);
	l->sizes[l->n] = n;
	l->bytes[l->n] = bytes;
	l->n++;
	pthread_mutex_unlock(&l->mu);
	monitor_post(&l->batches);
}

static struct sluice_error *
log_handler(void *ud, struct sluice_ctx *ctx,
	    const struct sluice_msg *const *msgs, size_t n,
	    struct sluice_error **errs)
{
	(void)ctx;
	(void)errs;
	log_batch(ud, msgs, n);
	return NULL;
}

static const struct sluice_handler no_handler = { NULL, NULL };

static void
batch_rig(struct rig *r, size_t max, int64_t wait_ns)
{
	rig_init(r, 256);
	r->cfg.mode = SLUICE_MODE_BATCH;
	r->cfg.workers = 1;
	r->cfg.batch_max = max;
	r->cfg.batch_wait_ns = wait_ns;
	rig_make_queue(r);
}

static size_t
leased(struct rig *r)
{
	struct sluice_queue_stats qs;

	sluice_queue_stats(r->q, &qs);
	return qs.leased;
}

static void
test_flush_on_count_then_wait(void)
{
	struct batch_log l;
	struct sluice_batch_handler b = { log_handler, &l };
	struct sluice_engine_stats st;
	struct rig r;

	log_init(&l);
	batch_rig(&r, 10, 50 * SLUICE_NS_PER_MS);
	rig_publish(&r, 0, 35);
	rig_start(&r, no_handler, b, NULL);
	monitor_wait(&l.batches, 3);
	/* The last 5 are fetched, and the worker waits for more, up to
	 * 50 ms from their arrival. */
	SPIN_UNTIL(leased(&r) == 5 && sl_queue_waiters(r.q) == 1);
	CHECK_EQ(monitor_events(&l.batches), 3);
	CHECK_OK(sluice_clock_advance(r.clock, 50 * SLUICE_NS_PER_MS));
	monitor_wait(&l.batches, 4);
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	CHECK_EQ(l.n, 4);
	CHECK_EQ(l.sizes[0], 10);
	CHECK_EQ(l.sizes[1], 10);
	CHECK_EQ(l.sizes[2], 10);
	CHECK_EQ(l.sizes[3], 5);
	rig_accounting(&r, &st);
	CHECK_EQ(st.handled, 35);
	CHECK_EQ(st.batches, 4);
	CHECK_EQ(st.max_batch, 10);
	rig_free(&r);
}

static void
test_flush_on_bytes(void)
{
	struct batch_log l;
	struct sluice_batch_handler b = { log_handler, &l };
	struct sluice_engine_stats st;
	static const char body[] = "0123456789012345678901234567890"; /* 31 */
	struct rig r;
	int i;

	log_init(&l);
	l.max_bytes = 100;
	batch_rig(&r, 100, 50 * SLUICE_NS_PER_MS);
	r.cfg.batch_max_bytes = 100;
	for (i = 0; i < 10; i++)
		CHECK_OK(sluice_queue_publish(r.q, NULL, body, 31, 0));
	/* One oversized message travels alone. */
	{
		static char big[300];
		memset(big, 'x', sizeof(big));
		CHECK_OK(sluice_queue_publish(r.q, NULL, big, sizeof(big), 0));
	}
	rig_start(&r, no_handler, b, NULL);
	/* 3+3+3 = 93 bytes each, then 31+300 is over: 1 alone, 300 alone. */
	monitor_wait(&l.batches, 5);
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	CHECK_EQ(l.n, 5);
	CHECK_EQ(l.sizes[0], 3);
	CHECK_EQ(l.sizes[1], 3);
	CHECK_EQ(l.sizes[2], 3);
	CHECK_EQ(l.sizes[3], 1);
	CHECK_EQ(l.sizes[4], 1);
	CHECK_EQ(l.bytes[4], 300);
	rig_accounting(&r, &st);
	CHECK_EQ(st.handled, 11);
	rig_free(&r);
}

static void
test_flush_on_wait_only(void)
{
	struct batch_log l;
	struct sluice_batch_handler b = { log_handler, &l };
	struct sluice_engine_stats st;
	struct rig r;

	log_init(&l);
	batch_rig(&r, 100, 20 * SLUICE_NS_PER_MS);
	rig_start(&r, no_handler, b, NULL);
	rig_publish(&r, 0, 3);
	SPIN_UNTIL(leased(&r) == 3 && sl_queue_waiters(r.q) == 1);
	CHECK_OK(sluice_clock_advance(r.clock, 20 * SLUICE_NS_PER_MS - 1));
	CHECK_EQ(monitor_events(&l.batches), 0);
	CHECK_OK(sluice_clock_advance(r.clock, 1));
	monitor_wait(&l.batches, 1);
	CHECK_EQ(l.sizes[0], 3);
	/* Idle time afterwards produces no empty batches. */
	CHECK_OK(sluice_clock_advance(r.clock, SLUICE_NS_PER_S));
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	CHECK_EQ(l.n, 1);
	rig_accounting(&r, &st);
	rig_free(&r);
}

static void
test_batch_never_exceeds_credit(void)
{
	struct batch_log l;
	struct sluice_batch_handler b = { log_handler, &l };
	struct sluice_engine_stats st;
	struct rig r;
	int i;

	log_init(&l);
	batch_rig(&r, 10, 3600 * SLUICE_NS_PER_S);
	r.cfg.max_in_flight = 4; /* like an NSQ max_in_flight below batch */
	rig_publish(&r, 0, 12);
	rig_start(&r, no_handler, b, NULL);
	/* Starved of credit at 4: each batch ships at once, no clock. */
	monitor_wait(&l.batches, 3);
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	for (i = 0; i < l.n; i++)
		CHECK_LE(l.sizes[i], 4);
	CHECK_EQ(l.n, 3);
	rig_accounting(&r, &st);
	CHECK_EQ(st.max_held, 4);
	CHECK_EQ(st.handled, 12);
	rig_free(&r);
}

/* Odd-numbered messages fail on their first attempt. */
static _Atomic int ok_runs[64], fail_runs[64];

static struct sluice_error *
partial_handler(void *ud, struct sluice_ctx *ctx,
		const struct sluice_msg *const *msgs, size_t n,
		struct sluice_error **errs)
{
	size_t i;

	(void)ud;
	(void)ctx;
	for (i = 0; i < n; i++) {
		int k = msg_index(msgs[i]);

		if (k % 2 && sluice_msg_attempts(msgs[i]) == 1) {
			errs[i] = sluice_error_new(SLUICE_CLASS_TEMPORARY, 0,
						   "odd");
			atomic_fetch_add(&fail_runs[k], 1);
		} else {
			atomic_fetch_add(&ok_runs[k], 1);
		}
	}
	return NULL;
}

static void
test_partial_failure_retries_only_failures(void)
{
	struct sluice_batch_handler b = { partial_handler, NULL };
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	struct rig r;
	int i;

	batch_rig(&r, 16, 10 * SLUICE_NS_PER_MS);
	r.cfg.workers = 2;
	r.cfg.retry.jitter = SLUICE_JITTER_NONE;
	r.cfg.retry.min_ns = 5 * SLUICE_NS_PER_MS;
	rig_publish(&r, 0, 64);
	rig_start(&r, no_handler, b, NULL);
	rig_drive_to_end(&r);
	for (i = 0; i < 64; i++) {
		CHECK_EQ(atomic_load(&ok_runs[i]), 1); /* never duplicated */
		CHECK_EQ(atomic_load(&fail_runs[i]), i % 2);
	}
	rig_accounting(&r, &st);
	CHECK_EQ(st.handled, 64);
	CHECK_EQ(st.requeued, 32);
	CHECK_EQ(st.delivered, 96);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.acked, 64);
	rig_free(&r);
}

/* The first batch fails as a whole; later ones succeed. */
static _Atomic int whole_calls;

static struct sluice_error *
whole_handler(void *ud, struct sluice_ctx *ctx,
	      const struct sluice_msg *const *msgs, size_t n,
	      struct sluice_error **errs)
{
	(void)ud;
	(void)ctx;
	(void)msgs;
	(void)n;
	/* Outcomes left here are ignored and freed when the batch fails. */
	errs[0] = sluice_error_new(SLUICE_CLASS_PERMANENT, 0, "ignored");
	if (atomic_fetch_add(&whole_calls, 1) == 0)
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, 503, "down");
	sluice_error_free(errs[0]);
	errs[0] = NULL;
	return NULL;
}

static void
test_batch_error_applies_to_all(void)
{
	struct sluice_batch_handler b = { whole_handler, NULL };
	struct sluice_engine_stats st;
	struct rig r;

	batch_rig(&r, 8, 10 * SLUICE_NS_PER_MS);
	r.cfg.retry.jitter = SLUICE_JITTER_NONE;
	r.cfg.retry.min_ns = SLUICE_NS_PER_MS;
	rig_publish(&r, 0, 8);
	rig_start(&r, no_handler, b, NULL);
	rig_drive_to_end(&r);
	rig_accounting(&r, &st);
	CHECK_EQ(st.temporary, 8);
	CHECK_EQ(st.requeued, 8);
	CHECK_EQ(st.handled, 8);
	CHECK_EQ(st.permanent, 0);
	rig_free(&r);
}

/* A batch that overruns its deadline is requeued whole. */
static struct monitor hang_started;

static struct sluice_error *
hang_batch(void *ud, struct sluice_ctx *ctx,
	   const struct sluice_msg *const *msgs, size_t n,
	   struct sluice_error **errs)
{
	(void)ud;
	(void)n;
	(void)errs;
	if (sluice_msg_attempts(msgs[0]) > 1)
		return NULL;
	monitor_post(&hang_started);
	while (sluice_ctx_poll(ctx, -1, 0) > 0)
		;
	CHECK_EQ(sluice_ctx_reason(ctx), SLUICE_CANCEL_DEADLINE);
	return NULL; /* late: discarded */
}

static void
test_batch_deadline_requeues_whole_batch(void)
{
	struct sluice_batch_handler b = { hang_batch, NULL };
	struct sluice_engine_stats st;
	struct rig r;

	monitor_init(&hang_started);
	batch_rig(&r, 5, 10 * SLUICE_NS_PER_MS);
	r.cfg.timeout_ns = SLUICE_NS_PER_S;
	r.cfg.retry.jitter = SLUICE_JITTER_NONE;
	r.cfg.retry.min_ns = SLUICE_NS_PER_MS;
	rig_publish(&r, 0, 5);
	rig_start(&r, no_handler, b, NULL);
	monitor_wait(&hang_started, 1);
	CHECK_OK(sluice_clock_advance(r.clock, SLUICE_NS_PER_S));
	rig_drive_to_end(&r);
	rig_accounting(&r, &st);
	CHECK_EQ(st.timeouts, 5);
	CHECK_EQ(st.requeued, 5);
	CHECK_EQ(st.handled, 5);
	rig_free(&r);
}

CHECK_MAIN(test_flush_on_count_then_wait, test_flush_on_bytes,
	   test_flush_on_wait_only, test_batch_never_exceeds_credit,
	   test_partial_failure_retries_only_failures,
	   test_batch_error_applies_to_all,
	   test_batch_deadline_requeues_whole_batch)
