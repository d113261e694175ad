/* SPDX-License-Identifier: MIT */
/*
 * test_drain.c - graceful drain and fast stop: unstarted messages go back at
 * once, in-flight work finishes until the drain deadline, what remains is
 * cancelled and handed back without counting an attempt, and a second stop
 * means now.  Nothing is lost and nothing is acked twice.
 */
#include <stdatomic.h>

#include <sluice/sluice.h>

#include "support.h"

struct gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int open; /* guarded by mu */
	struct monitor started, finished;
	_Atomic int reason; /* last cancellation reason a handler saw */
	int cooperative;    /* wait on the ctx instead of the gate */
};

static void
gate_init(struct gate *g, int cooperative)
{
	memset(g, 0, sizeof(*g));
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
	monitor_init(&g->started);
	monitor_init(&g->finished);
	g->cooperative = cooperative;
}

static void
gate_open(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	g->open = 1;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

static struct sluice_error *
gated(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct gate *g = ud;

	(void)m;
	monitor_post(&g->started);
	if (g->cooperative) {
		while (sluice_ctx_poll(ctx, -1, 0) > 0)
			;
		atomic_store(&g->reason, (int)sluice_ctx_reason(ctx));
	} else {
		pthread_mutex_lock(&g->mu);
		while (!g->open)
			pthread_cond_wait(&g->cv, &g->mu);
		pthread_mutex_unlock(&g->mu);
	}
	monitor_post(&g->finished);
	return NULL;
}

/* Take everything left in the queue; every attempt must still be 1. */
static int
drain_queue_check_attempts(struct rig *r)
{
	struct sluice_source src = sluice_queue_source(r->q);
	struct sluice_msg *msgs[64];
	int n, i, total = 0;

	sluice_queue_close(r->q);
	for (;;) {
		n = src.ops->fetch(src.self, msgs, 64, 0);
		if (n <= 0)
			break;
		for (i = 0; i < n; i++)
			CHECK_EQ(sluice_msg_attempts(msgs[i]), 1);
		CHECK_EQ(src.ops->ack(src.self, msgs, (size_t)n), 0);
		src.ops->release(src.self, msgs, (size_t)n);
		total += n;
	}
	return total;
}

static void
test_drain_hands_back_unstarted_at_once(void)
{
	struct gate g;
	struct sluice_handler h = { gated, &g };
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	struct rig r;

	gate_init(&g, 0);
	rig_init(&r, 64);
	r.cfg.workers = 2;
	r.cfg.prefetch = 4; /* each worker fetches 1 + 2 */
	rig_make_queue(&r);
	rig_publish(&r, 0, 20);
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	monitor_wait(&g.started, 2);
	SPIN_UNTIL((sluice_engine_stats(r.e, &st), st.held == 6));

	sluice_engine_stop(r.e, SLUICE_STOP_DRAIN);
	/* Synchronously: the 4 fetched-but-unstarted are back already. */
	sluice_engine_stats(r.e, &st);
	CHECK_EQ(st.handed_back, 4);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.ready, 18);
	CHECK_EQ(monitor_events(&g.started), 2);

	gate_open(&g); /* in-flight work finishes inside the drain budget */
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	rig_accounting(&r, &st);
	CHECK_EQ(st.delivered, 6);
	CHECK_EQ(st.handled, 2);
	CHECK_EQ(st.requeued, 4);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.acked, 2);
	CHECK_EQ(qs.leased, 0);
	CHECK_EQ(drain_queue_check_attempts(&r), 18);
	rig_free(&r);
}

static void
test_drain_deadline_cancels_and_hands_back(void)
{
	struct gate g;
	struct sluice_handler h = { gated, &g };
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	struct rig r;

	gate_init(&g, 1);
	rig_init(&r, 16);
	r.cfg.workers = 3;
	r.cfg.prefetch = 0;   /* one message per worker: all three start */
	r.cfg.timeout_ns = 0; /* no per-message deadline: only the drain */
	r.cfg.drain_timeout_ns = 5 * SLUICE_NS_PER_S;
	rig_make_queue(&r);
	rig_publish(&r, 0, 3);
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	monitor_wait(&g.started, 3);
	sluice_engine_stop(r.e, SLUICE_STOP_DRAIN);
	CHECK_OK(sluice_clock_advance(r.clock, 5 * SLUICE_NS_PER_S - 1));
	CHECK_EQ(sluice_engine_wait(r.e, sluice_clock_now_ns(r.clock)),
		 SLUICE_ETIMEDOUT);
	CHECK_EQ(monitor_events(&g.finished), 0);
	CHECK_OK(sluice_clock_advance(r.clock, 1));
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	CHECK_EQ(atomic_load(&g.reason), SLUICE_CANCEL_SHUTDOWN);
	rig_accounting(&r, &st);
	CHECK_EQ(st.handed_back, 3);
	CHECK_EQ(st.handled, 0); /* late successes were discarded */
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.acked, 0);
	CHECK_EQ(drain_queue_check_attempts(&r), 3); /* no attempt counted */
	rig_free(&r);
}

static void
test_second_stop_means_now(void)
{
	struct gate g;
	struct sluice_handler h = { gated, &g };
	struct sluice_engine_stats st;
	struct rig r;

	gate_init(&g, 1);
	rig_init(&r, 16);
	r.cfg.workers = 2;
	r.cfg.prefetch = 0;
	r.cfg.drain_timeout_ns = 3600 * SLUICE_NS_PER_S;
	rig_make_queue(&r);
	rig_publish(&r, 0, 2);
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	monitor_wait(&g.started, 2);
	sluice_engine_stop(r.e, SLUICE_STOP_DRAIN);
	sluice_engine_stop(r.e, SLUICE_STOP_NOW); /* no clock movement */
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	rig_accounting(&r, &st);
	CHECK_EQ(st.handed_back, 2);
	CHECK_EQ(drain_queue_check_attempts(&r), 2);
	rig_free(&r);
}

static void
test_stop_when_idle(void)
{
	struct gate g;
	struct sluice_handler h = { gated, &g };
	struct sluice_engine_stats st;
	struct rig r;

	gate_init(&g, 0);
	rig_init(&r, 16);
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	sluice_engine_stop(r.e, SLUICE_STOP_DRAIN);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	rig_accounting(&r, &st);
	CHECK_EQ(st.delivered, 0);
	rig_free(&r);
}

/* Stop at many points of a real-time run: every published message is
 * either handled (acked once) or back in the queue, never both. */
#define N_RACE 400
static _Atomic int race_ok[N_RACE];
static _Atomic int race_stop_at, race_count;

/* @ud is the rig; its engine exists before the first handler runs. */
static struct sluice_error *
race_handler(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct rig *r = ud;

	(void)ctx;
	atomic_fetch_add(&race_ok[msg_index(m)], 1);
	if (atomic_fetch_add(&race_count, 1) + 1 == atomic_load(&race_stop_at))
		sluice_engine_stop(r->e, SLUICE_STOP_DRAIN);
	return NULL;
}

static void
test_no_loss_no_double_ack_when_stopped_anywhere(void)
{
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	struct sluice_source src;
	struct sluice_msg *msgs[64];
	static int back[N_RACE];
	int round, i, n;

	for (round = 1; round <= 8; round++) {
		struct rig r;

		memset(back, 0, sizeof(back));
		for (i = 0; i < N_RACE; i++)
			atomic_store(&race_ok[i], 0);
		rig_init(&r, N_RACE);
		r.cfg.clock = NULL; /* real time, real races */
		r.qcfg.clock = NULL;
		r.cfg.workers = 4;
		r.cfg.prefetch = 8;
		rig_make_queue(&r);
		rig_publish(&r, 0, N_RACE);
		atomic_store(&race_stop_at, round * 37);
		atomic_store(&race_count, 0);
		rig_start(&r, (struct sluice_handler){ race_handler, &r },
			  (struct sluice_batch_handler){ NULL, NULL }, NULL);
		CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
		rig_accounting(&r, &st);
		sluice_queue_stats(r.q, &qs);
		CHECK_EQ(qs.acked, st.handled);
		sluice_queue_close(r.q);
		src = sluice_queue_source(r.q);
		while ((n = src.ops->fetch(src.self, msgs, 64, 0)) > 0) {
			for (i = 0; i < n; i++)
				back[msg_index(msgs[i])]++;
			CHECK_EQ(src.ops->ack(src.self, msgs, (size_t)n), 0);
			src.ops->release(src.self, msgs, (size_t)n);
		}
		for (i = 0; i < N_RACE; i++)
			CHECK_EQ(atomic_load(&race_ok[i]) + back[i], 1);
		rig_free(&r);
	}
}

CHECK_MAIN(test_drain_hands_back_unstarted_at_once,
	   test_drain_deadline_cancels_and_hands_back,
	   test_second_stop_means_now, test_stop_when_idle,
	   test_no_loss_no_double_ack_when_stopped_anywhere)
