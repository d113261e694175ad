/* SPDX-License-Identifier: MIT */
/*
 * test_engine.c - the engine's behaviours in concurrent mode, end to end over
 * the in-process queue: everything handled exactly once, bounded concurrency
 * and memory under overload, deadlines that cancel and classify, error
 * classes that pick the right action, poison and hanging messages that cost
 * one slot, messages that expired while waiting, duplicates, bad config.
 */
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include <sluice/sluice.h>

#include "support.h"

/* ---- every message handled exactly once -------------------------------- */

#define N_ALL 2000
static _Atomic int seen_all[N_ALL];

static struct sluice_error *
count_handler(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	char want[32];

	(void)ud;
	(void)ctx;
	snprintf(want, sizeof(want), "body-%d", msg_index(m));
	CHECK(body_is(m, want));
	atomic_fetch_add(&seen_all[msg_index(m)], 1);
	return NULL;
}

struct producer {
	struct rig *r;
	int n;
};

static void *
producer_main(void *arg)
{
	struct producer *p = arg;

	rig_publish(p->r, 0, p->n);
	sluice_queue_close(p->r->q);
	return NULL;
}

static void
test_all_handled_once(void)
{
	struct sluice_handler h = { count_handler, NULL };
	struct sluice_batch_handler nob = { NULL, NULL };
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	struct producer p;
	struct rig r;
	pthread_t t;
	int i;

	rig_init(&r, 64); /* smaller than N: the producer must block */
	r.cfg.workers = 4;
	rig_start(&r, h, nob, NULL);
	p.r = &r;
	p.n = N_ALL;
	CHECK_OK(pthread_create(&t, NULL, producer_main, &p));
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	pthread_join(t, NULL);
	for (i = 0; i < N_ALL; i++)
		CHECK_EQ(atomic_load(&seen_all[i]), 1);
	rig_accounting(&r, &st);
	CHECK_EQ(st.delivered, N_ALL);
	CHECK_EQ(st.handled, N_ALL);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.acked, N_ALL);
	CHECK_EQ(qs.ack_stale, 0);
	CHECK_LE(qs.max_held, 64);
	CHECK_LE(st.max_held, st.max_in_flight);
	CHECK_EQ(st.max_in_flight, 4 + 1);
	rig_free(&r);
}

/* ---- bounded concurrency and memory under 10x overload ------------------ */

static _Atomic int cur_running, max_running;
static _Atomic long slow_done;

static long
rss_kib(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	CHECK(f != NULL);
	CHECK_EQ(fscanf(f, "%ld %ld", &pages, &rss), 2);
	fclose(f);
	return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static struct sluice_error *
slow_handler(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	/* Simulated I/O: 50 us of waiting per message.  The sleep is the
	 * workload, not synchronisation. */
	struct timespec ts = { 0, 50 * 1000 };
	int c = atomic_fetch_add(&cur_running, 1) + 1;
	int mx = atomic_load(&max_running);

	(void)ud;
	(void)ctx;
	(void)m;
	while (c > mx && !atomic_compare_exchange_weak(&max_running, &mx, c))
		;
	nanosleep(&ts, NULL);
	atomic_fetch_sub(&cur_running, 1);
	atomic_fetch_add(&slow_done, 1);
	return NULL;
}

static void
test_bounded_under_overload(void)
{
	struct sluice_handler h = { slow_handler, NULL };
	struct sluice_batch_handler nob = { NULL, NULL };
	enum { N = 20000, CAP = 256, CHUNK = 64 };
	static struct sluice_bytes bodies[CHUNK];
	static char text[CHUNK][16];
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	long rss_early = 0, rss_late;
	struct rig r;
	int i, sent = 0, k;

	rig_init(&r, CAP);
	/* Real time here: the handler's simulated I/O takes real time. */
	r.cfg.clock = NULL;
	r.qcfg.clock = NULL;
	r.cfg.workers = 4;
	r.cfg.prefetch = 2;
	rig_start(&r, h, nob, NULL);
	for (i = 0; i < CHUNK; i++) {
		snprintf(text[i], sizeof(text[i]), "payload-%02d", i);
		bodies[i].ptr = text[i];
		bodies[i].len = strlen(text[i]);
	}
	/* The producer offers far more than 10x what 4 workers at 50 us can
	 * take (80 k/s): publish_batch runs at millions per second and only
	 * the queue's bound holds it back. */
	while (sent < N) {
		k = sluice_queue_publish_batch(r.q, bodies, CHUNK,
					       SLUICE_FOREVER);
		CHECK_GT(k, 0);
		sent += k;
		if (!rss_early && atomic_load(&slow_done) >= 2000)
			rss_early = rss_kib();
		sluice_engine_stats(r.e, &st);
		CHECK_LE(st.held, st.max_in_flight);
	}
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	rss_late = rss_kib();
	CHECK_GT(rss_early, 0);
	/* Flat memory: 18 000 more messages cost under 1 MiB more RSS. */
	CHECK_LT(rss_late - rss_early, 1024);
	CHECK_LE(atomic_load(&max_running), 4);
	rig_accounting(&r, &st);
	CHECK_EQ(st.handled, (uint64_t)sent);
	CHECK_EQ(st.max_in_flight, 4 + 2);
	CHECK_LE(st.max_held, 4 + 2);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.max_held, CAP); /* the bound was reached: it was overload */
	rig_free(&r);
}

/* ---- deadlines cancel and classify -------------------------------------- */

struct hang_state {
	struct monitor started, ended;
	_Atomic int reason;      /* seen by the hanging handler */
	_Atomic int fd_readable; /* its ctx fd was readable at the end */
	_Atomic int calls;
};

/*
 * Attempt 1 blocks in poll(2) on its context's fd, then claims success; the
 * engine must wake it at the deadline and discard that late result.  Later
 * attempts succeed at once.
 */
static struct sluice_error *
hang_handler(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct hang_state *hs = ud;
	struct pollfd pfd;
	int rc;

	atomic_fetch_add(&hs->calls, 1);
	if (!body_is(m, "hang") || sluice_msg_attempts(m) > 1)
		return NULL;
	pfd.fd = sluice_ctx_fd(ctx);
	pfd.events = POLLIN;
	CHECK_GE(pfd.fd, 0);
	monitor_post(&hs->started);
	/* Blocking I/O that waits on the context's fd alone: the engine's
	 * watchdog must make it readable at the deadline (60 s real time is
	 * only a guard against a hang). */
	rc = poll(&pfd, 1, 60 * 1000);
	atomic_store(&hs->fd_readable, rc == 1);
	atomic_store(&hs->reason, (int)sluice_ctx_reason(ctx));
	monitor_post(&hs->ended);
	return NULL; /* too late: must be discarded */
}

static void
test_deadline_cancels_and_requeues(void)
{
	struct hang_state hs;
	struct sluice_handler h = { hang_handler, &hs };
	struct sluice_batch_handler nob = { NULL, NULL };
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	struct rig r;

	memset(&hs, 0, sizeof(hs));
	monitor_init(&hs.started);
	monitor_init(&hs.ended);
	rig_init(&r, 8);
	r.qcfg.lease_ns = 2 * SLUICE_NS_PER_S; /* deadline stays inside */
	r.cfg.workers = 1;
	r.cfg.timeout_ns = SLUICE_NS_PER_S;
	r.cfg.retry.jitter = SLUICE_JITTER_NONE;
	r.cfg.retry.min_ns = 200 * SLUICE_NS_PER_MS;
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	(void)nob;
	CHECK_OK(sluice_queue_publish(r.q, NULL, "hang", 4, SLUICE_FOREVER));
	monitor_wait(&hs.started, 1);

	CHECK_OK(sluice_clock_advance(r.clock, SLUICE_NS_PER_S - 1));
	sluice_engine_stats(r.e, &st);
	CHECK_EQ(st.timeouts, 0);
	CHECK_EQ(monitor_events(&hs.ended), 0);
	CHECK_OK(sluice_clock_advance(r.clock, 1)); /* exactly the deadline */
	monitor_wait(&hs.ended, 1);
	CHECK_EQ(atomic_load(&hs.reason), SLUICE_CANCEL_DEADLINE);
	CHECK_EQ(atomic_load(&hs.fd_readable), 1);

	/* Requeued before the handler saw the cancellation, with the
	 * policy's delay: not due 1 ns early, due on time. */
	sluice_queue_expire(r.q);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.requeued, 1);
	CHECK_EQ(qs.acked, 0);
	CHECK_OK(sluice_clock_advance(r.clock, 200 * SLUICE_NS_PER_MS - 1));
	sluice_queue_expire(r.q);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.delivered, 1);
	CHECK_OK(sluice_clock_advance(r.clock, 1));
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));

	rig_accounting(&r, &st);
	CHECK_EQ(st.delivered, 2);
	CHECK_EQ(st.timeouts, 1);
	CHECK_EQ(st.requeued, 1);
	CHECK_EQ(st.handled, 1); /* the late success was discarded */
	CHECK_EQ(atomic_load(&hs.calls), 2);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.acked, 1);
	CHECK_EQ(qs.ack_stale, 0); /* no ack after a lease ran out */
	CHECK_EQ(qs.expired, 0);
	rig_free(&r);
}

/* ---- classes drive the right action -------------------------------------- */

struct class_state {
	struct monitor calls;
	_Atomic int cancelled_once;
};

static struct sluice_error *
class_handler(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct class_state *cs = ud;
	struct sluice_error *err = NULL;

	(void)ctx;
	if (body_is(m, "perm"))
		err = sluice_error_new(SLUICE_CLASS_PERMANENT, 65, "bad data");
	else if (body_is(m, "temp-once") && sluice_msg_attempts(m) == 1)
		err = sluice_error_new(SLUICE_CLASS_TEMPORARY, 75, "busy");
	else if (body_is(m, "temp-always"))
		err = sluice_error_new(SLUICE_CLASS_TEMPORARY, 75, "down");
	else if (body_is(m, "cancel") &&
		 atomic_exchange(&cs->cancelled_once, 1) == 0)
		err = sluice_error_new(SLUICE_CLASS_CANCELED, 0, "stopping");
	monitor_post(&cs->calls);
	return err;
}

static char *
slurp(const char *path)
{
	static char buf[65536];
	FILE *f = fopen(path, "r");
	size_t n;

	CHECK(f != NULL);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = 0;
	fclose(f);
	return buf;
}

static int
count_lines(const char *s)
{
	int n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static void
test_classes_drive_actions(void)
{
	struct class_state cs;
	struct sluice_handler h = { class_handler, &cs };
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	struct sluice_dlq dlq;
	char path[] = "/tmp/sluice-dlq-XXXXXX";
	const char *text;
	struct rig r;
	int fd;

	monitor_init(&cs.calls);
	atomic_store(&cs.cancelled_once, 0);
	fd = mkstemp(path);
	CHECK_GE(fd, 0);
	close(fd);
	CHECK_OK(sluice_dlq_file_open(path, false, &dlq));
	rig_init(&r, 16);
	r.cfg.workers = 2;
	r.cfg.retry.jitter = SLUICE_JITTER_NONE;
	r.cfg.retry.min_ns = 100 * SLUICE_NS_PER_MS;
	r.cfg.retry.factor = 2.0;
	r.cfg.retry.max_attempts = 3;
	rig_make_queue(&r);
	CHECK_OK(sluice_queue_publish(r.q, "a", "ok", 2, 0));
	CHECK_OK(sluice_queue_publish(r.q, "b", "perm", 4, 0));
	CHECK_OK(sluice_queue_publish(r.q, "c", "temp-once", 9, 0));
	CHECK_OK(sluice_queue_publish(r.q, "d", "temp-always", 11, 0));
	CHECK_OK(sluice_queue_publish(r.q, "e", "cancel", 6, 0));
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, &dlq);
	monitor_wait(&cs.calls, 5);

	/* "cancel" is handed back at once, without a delay; the temporary
	 * failures wait 100 ms (attempt 1, no jitter). */
	monitor_wait(&cs.calls, 6);
	SPIN_UNTIL(rig_settled(&r));
	sluice_queue_expire(r.q);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.delayed, 2);
	CHECK_OK(sluice_clock_advance(r.clock, 100 * SLUICE_NS_PER_MS));
	monitor_wait(&cs.calls, 8);
	SPIN_UNTIL(rig_settled(&r));
	/* temp-always failed attempt 2: the delay doubles to 200 ms. */
	CHECK_OK(sluice_clock_advance(r.clock, 200 * SLUICE_NS_PER_MS - 1));
	sluice_queue_expire(r.q);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.delayed, 1);
	CHECK_OK(sluice_clock_advance(r.clock, 1));
	monitor_wait(&cs.calls, 9); /* attempt 3 of 3: dead-lettered */
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));

	rig_accounting(&r, &st);
	CHECK_EQ(st.delivered, 9);
	CHECK_EQ(st.handled, 3);       /* ok, temp-once, cancel */
	CHECK_EQ(st.dead_lettered, 2); /* perm at once, temp-always after 3 */
	CHECK_EQ(st.requeued, 4); /* temp-once 1, temp-always 2, cancel 1 */
	CHECK_EQ(st.permanent, 1);
	CHECK_EQ(st.exhausted, 1);
	CHECK_EQ(st.canceled, 1);
	CHECK_EQ(st.handed_back, 1);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.acked, 5); /* each original acked once, DLQ'd ones after
				  their write */
	sluice_dlq_close(&dlq);
	text = slurp(path);
	CHECK_EQ(count_lines(text), 2);
	CHECK(strstr(text, "\"id\":\"b\"") != NULL);
	CHECK(strstr(text, "\"class\":\"permanent\"") != NULL);
	CHECK(strstr(text, "\"id\":\"d\"") != NULL);
	CHECK(strstr(text, "\"attempts\":3") != NULL);
	CHECK(strstr(text, "gave up after 3 attempts") != NULL);
	CHECK(strstr(text, "\"body\":\"temp-always\"") != NULL);
	unlink(path);
	rig_free(&r);
}

/* Jitter bounds over many messages: attempt 1 with FULL jitter waits
 * between min (100 ms) and base*factor^0 = 100 ms..., so use attempt 2. */
static struct sluice_error *
fail_twice(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	(void)ctx;
	monitor_post(ud);
	if (sluice_msg_attempts(m) <= 2)
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, 0, "later");
	return NULL;
}

static void
test_retry_delays_within_jitter_bounds(void)
{
	struct monitor calls;
	struct sluice_handler h = { fail_twice, &calls };
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	enum { N = 64 };
	struct rig r;

	monitor_init(&calls);
	rig_init(&r, N);
	r.cfg.workers = 3;
	r.cfg.retry.jitter = SLUICE_JITTER_FULL;
	r.cfg.retry.min_ns = 100 * SLUICE_NS_PER_MS;
	r.cfg.retry.max_ns = 10 * SLUICE_NS_PER_S;
	r.cfg.retry.factor = 4.0;
	r.cfg.retry.max_attempts = 5;
	rig_make_queue(&r);
	rig_publish(&r, 0, N);
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	monitor_wait(&calls, N);
	SPIN_UNTIL(rig_settled(&r));
	/* Attempt 1: base 100 ms, full jitter raised to min: exactly 100. */
	CHECK_OK(sluice_clock_advance(r.clock, 100 * SLUICE_NS_PER_MS));
	monitor_wait(&calls, 2 * N);
	SPIN_UNTIL(rig_settled(&r));
	/* Attempt 2: uniform in [100 ms, 400 ms]. */
	CHECK_OK(sluice_clock_advance(r.clock, 100 * SLUICE_NS_PER_MS - 1));
	sluice_queue_expire(r.q);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.delayed, N);
	CHECK_OK(sluice_clock_advance(r.clock, 300 * SLUICE_NS_PER_MS + 1));
	monitor_wait(&calls, 3 * N);
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	rig_accounting(&r, &st);
	CHECK_EQ(st.handled, N);
	CHECK_EQ(st.requeued, 2 * N);
	rig_free(&r);
}

/* A sink that always fails: nothing may be acked. */
static int
broken_write(void *self, const char *source, const struct sluice_msg *msg,
	     const struct sluice_error *why)
{
	(void)self;
	(void)source;
	(void)msg;
	(void)why;
	return SLUICE_EIO;
}

static const struct sluice_dlq_ops broken_ops = { "broken", broken_write,
						  NULL };

static void
test_failed_dead_letter_write_is_not_acked(void)
{
	struct class_state cs;
	struct sluice_handler h = { class_handler, &cs };
	struct sluice_dlq dlq = { &broken_ops, NULL };
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	struct rig r;

	monitor_init(&cs.calls);
	rig_init(&r, 4);
	r.cfg.workers = 1;
	rig_make_queue(&r);
	CHECK_OK(sluice_queue_publish(r.q, "p", "perm", 4, 0));
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, &dlq);
	monitor_wait(&cs.calls, 1);
	sluice_engine_stop(r.e, SLUICE_STOP_DRAIN);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	rig_accounting(&r, &st);
	CHECK_EQ(st.dlq_failed, 1);
	CHECK_EQ(st.dead_lettered, 0);
	CHECK_EQ(st.requeued, 1);
	sluice_queue_stats(r.q, &qs);
	CHECK_EQ(qs.acked, 0);
	CHECK_EQ(qs.delayed, 1); /* kept, with the longest delay */
	rig_free(&r);
}

/* ---- a poison and a hanging message cost one slot each ------------------- */

struct poison_state {
	struct monitor ok, poison, hang_started;
	_Atomic int hang_calls;
};

static struct sluice_error *
poison_handler(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct poison_state *ps = ud;

	if (body_is(m, "poison")) {
		monitor_post(&ps->poison);
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, 0, "poison");
	}
	if (body_is(m, "hang")) {
		atomic_fetch_add(&ps->hang_calls, 1);
		if (sluice_msg_attempts(m) > 1)
			return NULL;
		monitor_post(&ps->hang_started);
		while (sluice_ctx_poll(ctx, -1, 0) > 0)
			;
		return NULL;
	}
	monitor_post(&ps->ok);
	return NULL;
}

static void
test_poison_and_hang_cost_one_slot(void)
{
	struct poison_state ps;
	struct sluice_handler h = { poison_handler, &ps };
	struct sluice_engine_stats st;
	struct sluice_dlq dlq;
	char path[] = "/tmp/sluice-dlq-XXXXXX";
	struct rig r;
	int fd;

	memset(&ps, 0, sizeof(ps));
	monitor_init(&ps.ok);
	monitor_init(&ps.poison);
	monitor_init(&ps.hang_started);
	fd = mkstemp(path);
	CHECK_GE(fd, 0);
	close(fd);
	CHECK_OK(sluice_dlq_file_open(path, false, &dlq));
	rig_init(&r, 64);
	r.cfg.workers = 4;
	r.cfg.timeout_ns = 10 * SLUICE_NS_PER_S;
	r.cfg.retry.jitter = SLUICE_JITTER_NONE;
	r.cfg.retry.min_ns = SLUICE_NS_PER_S;
	r.cfg.retry.factor = 1.0;
	r.cfg.retry.max_attempts = 3;
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, &dlq);
	CHECK_OK(sluice_queue_publish(r.q, "h", "hang", 4, SLUICE_FOREVER));
	monitor_wait(&ps.hang_started, 1);
	CHECK_OK(sluice_queue_publish(r.q, "p", "poison", 6, SLUICE_FOREVER));
	rig_publish(&r, 0, 500);
	/* All 500 go through while the hang holds its slot and the poison
	 * waits at the source: no clock movement needed, no worker sleeps. */
	monitor_wait(&ps.ok, 500);
	monitor_wait(&ps.poison, 1);
	SPIN_UNTIL(rig_settled(&r) ||
		   (sluice_engine_stats(r.e, &st), st.held == 1));
	sluice_engine_stats(r.e, &st);
	CHECK_EQ(st.running, 1); /* only the hang */
	CHECK_EQ(st.held, 1);
	CHECK_OK(sluice_clock_advance(r.clock, SLUICE_NS_PER_S));
	monitor_wait(&ps.poison, 2);
	/* Its requeue must be made before the clock moves on. */
	SPIN_UNTIL((sluice_engine_stats(r.e, &st), st.held == 1));
	CHECK_OK(sluice_clock_advance(r.clock, SLUICE_NS_PER_S));
	monitor_wait(&ps.poison, 3); /* third attempt: dead-lettered */
	CHECK_OK(sluice_clock_advance(r.clock, 8 * SLUICE_NS_PER_S));
	/* The hang hit its 10 s deadline; it comes back after 1 s. */
	SPIN_UNTIL((sluice_engine_stats(r.e, &st), st.timeouts == 1));
	rig_drive_to_end(&r);
	rig_accounting(&r, &st);
	CHECK_EQ(st.delivered, 500 + 3 + 2);
	CHECK_EQ(st.handled, 501);
	CHECK_EQ(st.dead_lettered, 1);
	CHECK_EQ(st.timeouts, 1);
	CHECK_EQ(atomic_load(&ps.hang_calls), 2);
	sluice_dlq_close(&dlq);
	unlink(path);
	rig_free(&r);
}

/* ---- not started when the deadline passed while waiting ----------------- */

struct wait_state {
	struct sluice_clock *clock;
	_Atomic int first_attempts[3];
	struct monitor calls;
};

static struct sluice_error *
slow_first(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct wait_state *ws = ud;
	int i = msg_index(m);

	(void)ctx;
	if (sluice_msg_attempts(m) == 1)
		atomic_fetch_add(&ws->first_attempts[i], 1);
	if (i == 0 && sluice_msg_attempts(m) == 1)
		CHECK_OK(sluice_clock_advance(ws->clock, 2 * SLUICE_NS_PER_S));
	monitor_post(&ws->calls);
	return NULL;
}

static void
test_expired_while_waiting_not_started(void)
{
	struct wait_state ws;
	struct sluice_handler h = { slow_first, &ws };
	struct sluice_engine_stats st;
	struct rig r;

	memset(&ws, 0, sizeof(ws));
	monitor_init(&ws.calls);
	rig_init(&r, 8);
	ws.clock = r.clock;
	r.cfg.workers = 1;
	r.cfg.prefetch = 3; /* one worker takes all three in one fetch */
	r.cfg.timeout_ns = SLUICE_NS_PER_S;
	r.cfg.retry.jitter = SLUICE_JITTER_NONE;
	r.cfg.retry.min_ns = SLUICE_NS_PER_MS;
	rig_make_queue(&r);
	rig_publish(&r, 0, 3);
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	monitor_wait(&ws.calls, 1);
	/* Message 0 overran too, so it may come back once more. */
	rig_drive_to_end(&r);
	CHECK_EQ(atomic_load(&ws.first_attempts[1]), 0);
	CHECK_EQ(atomic_load(&ws.first_attempts[2]), 0);
	rig_accounting(&r, &st);
	CHECK_EQ(st.expired_waiting, 2);
	CHECK_GE(st.handled, 3);
	rig_free(&r);
}

/* ---- a message fetched behind a hanging one is stolen ------------------- */

struct steal_state {
	struct monitor hang_started, after_done;
	_Atomic int after_attempt;
};

static struct sluice_error *
steal_handler(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct steal_state *ss = ud;

	if (body_is(m, "hang") && sluice_msg_attempts(m) == 1) {
		monitor_post(&ss->hang_started);
		while (sluice_ctx_poll(ctx, -1, 0) > 0)
			;
		return NULL;
	}
	if (body_is(m, "after")) {
		atomic_store(&ss->after_attempt, (int)sluice_msg_attempts(m));
		monitor_post(&ss->after_done);
	}
	return NULL;
}

static void
test_follower_is_stolen_from_behind_a_hang(void)
{
	struct steal_state ss;
	struct sluice_handler h = { steal_handler, &ss };
	struct sluice_engine_stats st;
	struct rig r;

	memset(&ss, 0, sizeof(ss));
	monitor_init(&ss.hang_started);
	monitor_init(&ss.after_done);
	rig_init(&r, 8);
	r.cfg.workers = 2;
	r.cfg.prefetch = 2; /* one fetch takes both messages */
	r.cfg.timeout_ns = 10 * SLUICE_NS_PER_S;
	r.cfg.retry.jitter = SLUICE_JITTER_NONE;
	r.cfg.retry.min_ns = SLUICE_NS_PER_MS;
	rig_make_queue(&r);
	CHECK_OK(sluice_queue_publish(r.q, "h", "hang", 4, 0));
	CHECK_OK(sluice_queue_publish(r.q, "a", "after", 5, 0));
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	monitor_wait(&ss.hang_started, 1);
	/* Two watchdog ticks see the same unit running with a message
	 * waiting behind it, and send the idle worker to take it. */
	CHECK_OK(sluice_clock_advance(r.clock, 10 * SLUICE_NS_PER_MS));
	CHECK_OK(sluice_clock_advance(r.clock, 10 * SLUICE_NS_PER_MS));
	monitor_wait(&ss.after_done, 1);
	CHECK_EQ(atomic_load(&ss.after_attempt),
		 1); /* not expired, not retried */
	sluice_engine_stats(r.e, &st);
	CHECK_EQ(st.timeouts, 0);
	CHECK_EQ(st.expired_waiting, 0);
	rig_drive_to_end(&r);
	rig_accounting(&r, &st);
	CHECK_EQ(st.timeouts, 1);
	CHECK_EQ(st.handled, 2);
	rig_free(&r);
}

/* ---- a burst that arrives after start puts every worker to use ---------- */

struct barrier_state {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int inside, want; /* guarded by mu */
};

/* Each handler waits until @want handlers are inside at once: it only
 * completes if the engine really runs that many concurrently. */
static struct sluice_error *
barrier_handler(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct barrier_state *b = ud;
	struct timespec ts;

	(void)ctx;
	(void)m;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 30; /* a guard against a hang, not a synchronisation */
	pthread_mutex_lock(&b->mu);
	b->inside++;
	pthread_cond_broadcast(&b->cv);
	while (b->inside < b->want) {
		if (pthread_cond_timedwait(&b->cv, &b->mu, &ts) != 0) {
			pthread_mutex_unlock(&b->mu);
			CHECK_FAIL("not every worker was put to use");
		}
	}
	pthread_mutex_unlock(&b->mu);
	return NULL;
}

static void
test_burst_after_start_uses_every_worker(void)
{
	struct barrier_state b;
	struct sluice_handler h = { barrier_handler, &b };
	struct sluice_engine_stats st;
	struct rig r;

	pthread_mutex_init(&b.mu, NULL);
	pthread_cond_init(&b.cv, NULL);
	b.inside = 0;
	b.want = 8;
	rig_init(&r, 64);
	r.cfg.workers = 8;
	r.cfg.prefetch = 0; /* one message per worker: 8 need 8 workers */
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	rig_publish(&r, 0, 8); /* all workers are idle (parked) by now */
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	rig_accounting(&r, &st);
	CHECK_EQ(st.handled, 8);
	rig_free(&r);
}

/* ---- duplicate deliveries, de-duplicated -------------------------------- */

#define N_DUP 300
static _Atomic int dup_runs[N_DUP];

static struct sluice_error *
dup_handler(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	(void)ud;
	(void)ctx;
	atomic_fetch_add(&dup_runs[msg_index(m)], 1);
	return NULL;
}

struct ticker {
	struct sluice_clock *clock;
	_Atomic int stop;
};

/* Drives virtual time forward while the engine runs (retry delays). */
static void *
ticker_main(void *arg)
{
	struct ticker *t = arg;

	while (!atomic_load(&t->stop)) {
		CHECK_OK(sluice_clock_advance(t->clock, SLUICE_NS_PER_MS));
		sched_yield();
	}
	return NULL;
}

static void
test_duplicates_run_once_with_dedup(void)
{
	struct sluice_handler inner = { dup_handler, NULL }, h;
	struct sluice_engine_stats st;
	struct sluice_queue_stats qs;
	struct sluice_stack *stack;
	struct sluice_map *seen;
	struct ticker tk;
	pthread_t t;
	struct rig r;
	int i;

	rig_init(&r, 4 * N_DUP); /* room for every copy: each is made */
	r.cfg.workers = 4;
	r.cfg.retry.jitter = SLUICE_JITTER_NONE;
	r.cfg.retry.min_ns = SLUICE_NS_PER_MS;
	r.cfg.retry.max_attempts = 0; /* a duplicate may wait many rounds */
	r.cfg.timeout_ns = 0; /* the ticker races time; no deadlines here */
	CHECK_OK(sluice_map_new(8, 0, r.clock, &seen));
	CHECK_OK(sluice_stack_new(&stack));
	CHECK_OK(sluice_mw_dedup(stack, inner, seen, 3600 * SLUICE_NS_PER_S,
				 &h));
	rig_make_queue(&r);
	sluice_queue_fault_duplicate(r.q, 1); /* every message twice */
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	tk.clock = r.clock;
	atomic_store(&tk.stop, 0);
	CHECK_OK(pthread_create(&t, NULL, ticker_main, &tk));
	rig_publish(&r, 0, N_DUP);
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	atomic_store(&tk.stop, 1);
	pthread_join(t, NULL);
	for (i = 0; i < N_DUP; i++)
		CHECK_EQ(atomic_load(&dup_runs[i]), 1);
	rig_accounting(&r, &st);
	sluice_queue_stats(r.q, &qs);
	CHECK_GE(qs.duplicated, N_DUP);
	CHECK_EQ(st.handled, qs.acked); /* every copy acked; one ran */
	CHECK_EQ(st.handled, N_DUP + qs.duplicated); /* one ack per copy */
	rig_free(&r);
	sluice_stack_free(stack);
	sluice_map_free(seen);
}

/* ---- the engine's counters, exported to a metrics registry --------------- */

static void
test_metrics_export(void)
{
	struct sluice_handler h = { count_handler, NULL };
	struct sluice_metrics *m;
	char *text;
	size_t len;
	struct rig r;

	CHECK_OK(sluice_metrics_new(&m));
	rig_init(&r, 64);
	r.cfg.workers = 2;
	rig_make_queue(&r);
	rig_publish(&r, 0, 10);
	rig_start(&r, h, (struct sluice_batch_handler){ NULL, NULL }, NULL);
	CHECK_OK(sluice_engine_export_metrics(r.e, m));
	CHECK_EQ(sluice_engine_export_metrics(r.e, m), SLUICE_EINVAL);
	sluice_queue_close(r.q);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	CHECK_OK(sluice_metrics_render(m, &text, &len));
	CHECK(strstr(text, "# TYPE sluice_messages_handled_total counter\n"
			   "sluice_messages_handled_total 10\n") != NULL);
	CHECK(strstr(text, "sluice_messages_delivered_total 10\n") != NULL);
	CHECK(strstr(text, "sluice_messages_dead_lettered_total 0\n") != NULL);
	CHECK(strstr(text, "# TYPE sluice_handlers_running gauge\n"
			   "sluice_handlers_running 0\n") != NULL);
	sluice_metrics_free_text(text);
	sluice_metrics_free(m); /* before the engine it reads */
	rig_free(&r);
}

/* ---- configuration errors ------------------------------------------------ */

static void
test_bad_config_is_rejected(void)
{
	struct sluice_handler h = { count_handler, NULL };
	struct sluice_batch_handler nob = { NULL, NULL };
	struct sluice_engine_config cfg;
	struct sluice_queue *q;
	struct sluice_queue_config qc;
	struct sluice_engine *e = NULL;

	sluice_queue_config_init(&qc);
	CHECK_OK(sluice_queue_new(&qc, &q));
	sluice_engine_config_init(&cfg);
	cfg.workers = 0;
	CHECK_EQ(sluice_engine_new(&cfg, sluice_queue_source(q), h, nob, NULL,
				   &e),
		 SLUICE_EINVAL);
	sluice_engine_config_init(&cfg);
	cfg.timeout_ns = -1;
	CHECK_EQ(sluice_engine_new(&cfg, sluice_queue_source(q), h, nob, NULL,
				   &e),
		 SLUICE_EINVAL);
	sluice_engine_config_init(&cfg);
	cfg.retry.min_ns = 10;
	cfg.retry.max_ns = 5;
	CHECK_EQ(sluice_engine_new(&cfg, sluice_queue_source(q), h, nob, NULL,
				   &e),
		 SLUICE_EINVAL);
	sluice_engine_config_init(&cfg);
	cfg.mode = SLUICE_MODE_BATCH; /* without a batch handler */
	CHECK_EQ(sluice_engine_new(&cfg, sluice_queue_source(q), h, nob, NULL,
				   &e),
		 SLUICE_EINVAL);
	CHECK(e == NULL);
	sluice_engine_config_init(&cfg);
	CHECK_OK(sluice_engine_new(&cfg, sluice_queue_source(q), h, nob, NULL,
				   &e));
	sluice_engine_free(e); /* never started: frees cleanly */
	sluice_queue_free(q);
}

CHECK_MAIN(test_all_handled_once, test_bounded_under_overload,
	   test_deadline_cancels_and_requeues, test_classes_drive_actions,
	   test_retry_delays_within_jitter_bounds,
	   test_failed_dead_letter_write_is_not_acked,
	   test_poison_and_hang_cost_one_slot,
	   test_expired_while_waiting_not_started,
	   test_follower_is_stolen_from_behind_a_hang,
	   test_burst_after_start_uses_every_worker,
	   test_duplicates_run_once_with_dedup, test_metrics_export,
	   test_bad_config_is_rejected)
