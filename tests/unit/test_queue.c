/* SPDX-License-Identifier: MIT */
/*
 * test_queue.c - the in-process queue: publish/fetch/ack/release, capacity,
 * close, requeues and leases on a virtual clock, the fault switches, and a
 * multi-threaded run checking every message is acked exactly once.
 *
 * Threads that must be blocked before the test acts are awaited through the
 * queue's waiter count (sl_queue_waiters), never by sleeping.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/clock.h>
#include <sluice/queue.h>

#include "check.h"
#include "source/queue_int.h"

struct fixture {
	struct sluice_clock *clk; /* NULL: the real clock */
	struct sluice_queue *q;
	struct sluice_source src;
};

static void
setup(struct fixture *f, size_t capacity, int64_t lease_ns, bool virt)
{
	struct sluice_queue_config cfg;

	memset(f, 0, sizeof(*f));
	if (virt)
		CHECK_OK(sluice_clock_virtual_new(0, &f->clk));
	sluice_queue_config_init(&cfg);
	cfg.capacity = capacity;
	cfg.max_body = 4096;
	cfg.lease_ns = lease_ns;
	cfg.clock = f->clk;
	CHECK_OK(sluice_queue_new(&cfg, &f->q));
	f->src = sluice_queue_source(f->q);
}

static void
teardown(struct fixture *f)
{
	sluice_queue_free(f->q);
	sluice_clock_free(f->clk);
}

static int
fetch(struct fixture *f, struct sluice_msg **out, size_t max, int64_t dl)
{
	return f->src.ops->fetch(f->src.self, out, max, dl);
}

static int
ack1(struct fixture *f, struct sluice_msg *m)
{
	return f->src.ops->ack(f->src.self, &m, 1);
}

static void
release1(struct fixture *f, struct sluice_msg *m)
{
	f->src.ops->release(f->src.self, &m, 1);
}

static int
requeue(struct fixture *f, struct sluice_msg *m, int64_t delay, bool count)
{
	return f->src.ops->requeue(f->src.self, m, delay, count);
}

static void
settle(struct fixture *f, struct sluice_msg *m)
{
	CHECK_EQ(ack1(f, m), 0);
	release1(f, m);
}

static void
publish_str(struct fixture *f, const char *s)
{
	CHECK_OK(sluice_queue_publish(f->q, NULL, s, strlen(s), 0));
}

static void
wait_blocked(struct sluice_queue *q, size_t n)
{
	while (sl_queue_waiters(q) < n)
		sched_yield();
}

static bool
same_id(const struct sluice_msg *a, const struct sluice_msg *b)
{
	return a->id_len == b->id_len && memcmp(a->id, b->id, a->id_len) == 0;
}

static void
check_body(const struct sluice_msg *m, const void *p, size_t n)
{
	CHECK_EQ(m->body_len, n);
	if (n)
		CHECK_MEMEQ(m->body, p, n);
}

/* ---- basics ------------------------------------------------------------ */

static void
test_round_trip_bytes(void)
{
	static const uint8_t nul[] = { 'a', 0, 'b', '\n', 0 };
	struct sluice_queue_stats st;
	struct sluice_msg *m[8];
	uint8_t big[200], max[4096], over[4097];
	struct fixture f;
	size_t i;

	for (i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7 + 1);
	memset(max, 0xab, sizeof(max));
	max[4095] = 0;
	setup(&f, 16, 0, false);
	CHECK_OK(sluice_queue_publish(f.q, NULL, nul, sizeof(nul), 0));
	CHECK_OK(sluice_queue_publish(f.q, NULL, big, sizeof(big), 0));
	CHECK_OK(sluice_queue_publish(f.q, NULL, max, sizeof(max), 0));
	CHECK_OK(sluice_queue_publish(f.q, NULL, "", 0, 0));
	CHECK_EQ(sluice_queue_publish(f.q, NULL, over, sizeof(over), 0),
		 SLUICE_EMSGSIZE);
	CHECK_EQ(sluice_queue_publish(f.q, NULL, NULL, 3, 0), SLUICE_EINVAL);
	CHECK_EQ(fetch(&f, m, 8, 0), 4);
	check_body(m[0], nul, sizeof(nul));
	check_body(m[1], big, sizeof(big));
	check_body(m[2], max, sizeof(max));
	check_body(m[3], "", 0);
	for (i = 0; i < 4; i++) {
		CHECK_EQ(m[i]->attempts, 1);
		CHECK_EQ(m[i]->id_len, 16);
		CHECK(i == 0 || !same_id(m[i], m[i - 1]));
	}
	CHECK_EQ(f.src.ops->ack(f.src.self, m, 4), 0);
	f.src.ops->release(f.src.self, m, 4);
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.published, 4);
	CHECK_EQ(st.delivered, 4);
	CHECK_EQ(st.acked, 4);
	CHECK_EQ(st.held, 0);
	CHECK_EQ(st.max_held, 4);
	teardown(&f);
}

static void
test_explicit_ids(void)
{
	char id64[65], id65[66];
	struct sluice_msg *m[2];
	struct fixture f;

	memset(id64, 'x', 64);
	id64[64] = 0;
	setup(&f, 4, 0, false);
	CHECK_OK(sluice_queue_publish(f.q, "order-17", "b", 1, 0));
	CHECK_OK(sluice_queue_publish(f.q, id64, "c", 1, 0));
	CHECK_EQ(sluice_queue_publish(f.q, "", "d", 1, 0), SLUICE_EINVAL);
	memset(id65, 'q', 65);
	id65[65] = 0;
	CHECK_EQ(sluice_queue_publish(f.q, id65, "e", 1, 0), SLUICE_EINVAL);
	CHECK_EQ(fetch(&f, m, 2, 0), 2);
	CHECK_EQ(m[0]->id_len, 8);
	CHECK_MEMEQ(m[0]->id, "order-17", 8);
	CHECK_EQ(m[1]->id_len, 64);
	CHECK_EQ(m[1]->id[0], 'x');
	CHECK_EQ(m[1]->id[63], 'x');
	settle(&f, m[0]);
	settle(&f, m[1]);
	teardown(&f);
}

static void
test_fifo_order(void)
{
	struct sluice_msg *m[7];
	struct fixture f;
	unsigned next = 0, i, v;
	int n;

	setup(&f, 128, 0, false);
	for (i = 0; i < 100; i++)
		CHECK_OK(sluice_queue_publish(f.q, NULL, &i, sizeof(i), 0));
	while (next < 100) {
		n = fetch(&f, m, 7, 0);
		CHECK_GT(n, 0);
		for (i = 0; i < (unsigned)n; i++) {
			memcpy(&v, m[i]->body, sizeof(v));
			CHECK_EQ(v, next);
			next++;
			settle(&f, m[i]);
		}
	}
	CHECK_EQ(fetch(&f, m, 7, 0), 0);
	teardown(&f);
}

static void
test_invalid_args(void)
{
	struct sluice_queue_config cfg;
	struct sluice_queue *q;
	struct sluice_msg fake, *m[1], *fp = &fake;
	struct fixture f;

	sluice_queue_config_init(&cfg);
	cfg.capacity = 0;
	CHECK_EQ(sluice_queue_new(&cfg, &q), SLUICE_EINVAL);
	cfg.capacity = 4;
	cfg.lease_ns = -1;
	CHECK_EQ(sluice_queue_new(&cfg, &q), SLUICE_EINVAL);
	setup(&f, 4, 0, false);
	CHECK_EQ(fetch(&f, m, 0, 0), SLUICE_EINVAL);
	memset(&fake, 0, sizeof(fake));
	fake.source_data = &fake;
	CHECK_EQ(ack1(&f, &fake), 1);
	CHECK_EQ(requeue(&f, &fake, 0, true), SLUICE_ESTALE);
	CHECK_EQ(f.src.ops->touch(f.src.self, &fake), SLUICE_ESTALE);
	f.src.ops->release(f.src.self, &fp, 1); /* ignored */
	CHECK_EQ(sluice_queue_publish_batch(f.q, NULL, 1, 0), SLUICE_EINVAL);
	CHECK_EQ(sluice_queue_publish_batch(f.q, NULL, 0, 0), 0);
	teardown(&f);
}

/* ---- capacity and blocking publishers ----------------------------------- */

static void
test_capacity_bound(void)
{
	struct sluice_queue_stats st;
	struct sluice_msg *m[1];
	struct fixture f;
	int i;

	setup(&f, 4, 0, false);
	for (i = 0; i < 4; i++)
		publish_str(&f, "x");
	CHECK_EQ(sluice_queue_publish(f.q, NULL, "y", 1, 0), SLUICE_ETIMEDOUT);
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	/* Acked but still borrowed: the slot is still held. */
	CHECK_EQ(ack1(&f, m[0]), 0);
	CHECK_EQ(sluice_queue_publish(f.q, NULL, "y", 1, 0), SLUICE_ETIMEDOUT);
	release1(&f, m[0]);
	CHECK_OK(sluice_queue_publish(f.q, NULL, "y", 1, 0));
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.held, 4);
	CHECK_EQ(st.max_held, 4);
	CHECK_EQ(st.published, 5);
	teardown(&f);
}

struct pub_arg {
	struct fixture *f;
	const struct sluice_bytes *bodies;
	size_t n;
	int64_t deadline;
	int rc;
};

static void *
pub_thread(void *p)
{
	struct pub_arg *a = p;

	if (a->n == 1)
		a->rc = sluice_queue_publish(a->f->q, NULL, a->bodies[0].ptr,
					     a->bodies[0].len, a->deadline);
	else
		a->rc = sluice_queue_publish_batch(a->f->q, a->bodies, a->n,
						   a->deadline);
	return NULL;
}

static void
test_blocked_publisher_released(void)
{
	struct sluice_bytes b = { "late", 4 };
	struct pub_arg a = { 0 };
	struct sluice_msg *m[2];
	struct fixture f;
	pthread_t t;

	setup(&f, 2, 0, false);
	publish_str(&f, "a");
	publish_str(&f, "b");
	a.f = &f;
	a.bodies = &b;
	a.n = 1;
	a.deadline = SLUICE_FOREVER;
	CHECK_OK(pthread_create(&t, NULL, pub_thread, &a));
	wait_blocked(f.q, 1);
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	settle(&f, m[0]);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, 0);
	CHECK_EQ(fetch(&f, m, 2, 0), 2);
	check_body(m[1], "late", 4);
	settle(&f, m[0]);
	settle(&f, m[1]);
	teardown(&f);
}

static void
test_blocked_publisher_closed(void)
{
	struct sluice_bytes b = { "late", 4 };
	struct pub_arg a = { 0 };
	struct sluice_msg *m[2];
	struct fixture f;
	pthread_t t;

	setup(&f, 1, 0, false);
	publish_str(&f, "a");
	a.f = &f;
	a.bodies = &b;
	a.n = 1;
	a.deadline = SLUICE_FOREVER;
	CHECK_OK(pthread_create(&t, NULL, pub_thread, &a));
	wait_blocked(f.q, 1);
	sluice_queue_close(f.q);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, SLUICE_ECLOSED);
	/* Closed refuses publishes but still delivers what is queued. */
	CHECK_EQ(sluice_queue_publish(f.q, NULL, "b", 1, 0), SLUICE_ECLOSED);
	CHECK_EQ(fetch(&f, m, 2, 0), 1);
	check_body(m[0], "a", 1);
	settle(&f, m[0]);
	CHECK_EQ(fetch(&f, m, 2, 0), SLUICE_ECLOSED);
	teardown(&f);
}

static void
test_publish_batch_partial(void)
{
	struct sluice_bytes b[8];
	struct pub_arg a = { 0 };
	struct sluice_msg *m[8];
	struct fixture f;
	unsigned vals[8], i, v, seen = 0;
	pthread_t t;
	int n;

	for (i = 0; i < 8; i++) {
		vals[i] = i;
		b[i].ptr = &vals[i];
		b[i].len = sizeof(vals[i]);
	}
	setup(&f, 5, 0, true);
	/* Deadline 0: what fits goes in, the rest is refused at once. */
	CHECK_EQ(sluice_queue_publish_batch(f.q, b, 8, 0), 5);
	CHECK_EQ(sluice_queue_publish_batch(f.q, b, 3, 0), SLUICE_ETIMEDOUT);
	/* A virtual deadline passing ends a blocked batch with a count. */
	CHECK_EQ(fetch(&f, m, 2, 0), 2);
	settle(&f, m[0]);
	settle(&f, m[1]);
	a.f = &f;
	a.bodies = b;
	a.n = 8;
	a.deadline = 1000;
	CHECK_OK(pthread_create(&t, NULL, pub_thread, &a));
	wait_blocked(f.q, 1);
	CHECK_OK(sluice_clock_advance(f.clk, 1000));
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, 2);
	/* A batch waiting forever completes as consumers make room. */
	a.deadline = SLUICE_FOREVER;
	CHECK_OK(pthread_create(&t, NULL, pub_thread, &a));
	while (seen < 5 + 8) {
		n = fetch(&f, m, 8, SLUICE_FOREVER);
		CHECK_GT(n, 0);
		for (i = 0; i < (unsigned)n; i++) {
			memcpy(&v, m[i]->body, sizeof(v));
			/* 2..4 from the first batch, 0..1, then 0..7 */
			CHECK_LT(v, 8);
			settle(&f, m[i]);
		}
		seen += (unsigned)n;
	}
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, 8);
	teardown(&f);
}

/* ---- close ------------------------------------------------------------- */

struct fetch_arg {
	struct fixture *f;
	struct sluice_msg *m[4];
	int64_t deadline;
	int rc;
};

static void *
fetch_thread(void *p)
{
	struct fetch_arg *a = p;

	a->rc = fetch(a->f, a->m, 4, a->deadline);
	return NULL;
}

static void
test_closed_only_when_settled(void)
{
	struct fetch_arg a = { 0 };
	struct sluice_msg *m[2];
	struct fixture f;
	pthread_t t;

	setup(&f, 4, 0, true);
	publish_str(&f, "a");
	CHECK_EQ(fetch(&f, m, 2, 0), 1);
	sluice_queue_close(f.q);
	/* A leased message could still come back: not closed yet. */
	CHECK_EQ(fetch(&f, m + 1, 1, 0), 0);
	CHECK_OK(requeue(&f, m[0], 100, true));
	release1(&f, m[0]);
	CHECK_EQ(fetch(&f, m, 1, 0), 0);
	CHECK_OK(sluice_clock_advance(f.clk, 100));
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_EQ(m[0]->attempts, 2);
	/* A blocked fetch learns of the end when the last lease settles. */
	a.f = &f;
	a.deadline = SLUICE_FOREVER;
	CHECK_OK(pthread_create(&t, NULL, fetch_thread, &a));
	wait_blocked(f.q, 1);
	settle(&f, m[0]);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, SLUICE_ECLOSED);
	CHECK_EQ(fetch(&f, m, 1, 0), SLUICE_ECLOSED);
	teardown(&f);
}

static void
test_source_close_op(void)
{
	struct fetch_arg a = { 0 };
	struct fixture f;
	pthread_t t;

	setup(&f, 4, 0, false);
	a.f = &f;
	a.deadline = SLUICE_FOREVER;
	CHECK_OK(pthread_create(&t, NULL, fetch_thread, &a));
	wait_blocked(f.q, 1);
	f.src.ops->close(f.src.self);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, SLUICE_ECLOSED);
	CHECK_STREQ(f.src.ops->name, "queue");
	teardown(&f);
}

/* ---- requeue and leases on a virtual clock ----------------------------- */

static void
test_requeue_delay(void)
{
	struct sluice_queue_stats st;
	struct fetch_arg a = { 0 };
	struct sluice_msg *m[2], *first;
	struct fixture f;
	pthread_t t;

	setup(&f, 4, 0, true);
	publish_str(&f, "body");
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	first = m[0];
	CHECK_OK(requeue(&f, first, 1000, true));
	CHECK_EQ(requeue(&f, first, 1000, true), SLUICE_ESTALE);
	CHECK_EQ(ack1(&f, first), 1);
	release1(&f, first);
	CHECK_EQ(fetch(&f, m, 1, 0), 0);
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.delayed, 1);
	CHECK_EQ(st.ready, 0);
	CHECK_EQ(st.requeued, 1);
	CHECK_EQ(st.ack_stale, 1);
	CHECK_OK(sluice_clock_advance(f.clk, 999));
	CHECK_EQ(fetch(&f, m, 1, 0), 0);
	CHECK_OK(sluice_clock_advance(f.clk, 1));
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_EQ(m[0]->attempts, 2);
	check_body(m[0], "body", 4);
	/* Again, with a fetch already blocked when the message comes due. */
	CHECK_OK(requeue(&f, m[0], 500, true));
	release1(&f, m[0]);
	a.f = &f;
	a.deadline = SLUICE_FOREVER;
	CHECK_OK(pthread_create(&t, NULL, fetch_thread, &a));
	wait_blocked(f.q, 1);
	CHECK_OK(sluice_clock_advance(f.clk, 500));
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, 1);
	CHECK_EQ(a.m[0]->attempts, 3);
	settle(&f, a.m[0]);
	teardown(&f);
}

static void
test_requeue_keeps_attempts(void)
{
	struct sluice_msg *m[2];
	struct fixture f;

	setup(&f, 4, 0, false);
	publish_str(&f, "x");
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_OK(requeue(&f, m[0], 0, false));
	release1(&f, m[0]);
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_EQ(m[0]->attempts, 1);
	CHECK_OK(requeue(&f, m[0], 0, true));
	release1(&f, m[0]);
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_EQ(m[0]->attempts, 2);
	settle(&f, m[0]);
	teardown(&f);
}

/*
 * A requeue while the handler still reads the message (the engine settles
 * at the deadline): the redelivery is a copy and the old memory stays
 * valid until release (ASan checks the reads).
 */
static void
test_requeue_while_borrowed(void)
{
	uint8_t big[300];
	struct sluice_msg *m[2], *old;
	struct fixture f;

	memset(big, 0x5a, sizeof(big));
	setup(&f, 4, 0, true);
	CHECK_OK(sluice_queue_publish(f.q, NULL, big, sizeof(big), 0));
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	old = m[0];
	CHECK_OK(requeue(&f, old, 10, true));
	CHECK_OK(sluice_clock_advance(f.clk, 10));
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK(m[0] != old);
	CHECK(same_id(m[0], old));
	CHECK_EQ(m[0]->attempts, 2);
	check_body(old, big, sizeof(big));
	release1(&f, old);
	check_body(m[0], big, sizeof(big));
	settle(&f, m[0]);
	CHECK_OK(sluice_queue_wait_idle(f.q, 0));
	teardown(&f);
}

static void
test_lease_expiry(void)
{
	struct sluice_queue_stats st;
	uint8_t big[100];
	struct sluice_msg *m[2], *old;
	struct fixture f;

	memset(big, 7, sizeof(big));
	setup(&f, 4, 1000, true);
	CHECK_OK(sluice_queue_publish(f.q, NULL, big, sizeof(big), 0));
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	old = m[0];
	CHECK_OK(sluice_clock_advance(f.clk, 999));
	CHECK_EQ(fetch(&f, m, 1, 0), 0);
	CHECK_OK(sluice_clock_advance(f.clk, 1));
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK(m[0] != old);
	CHECK(same_id(m[0], old));
	CHECK_EQ(m[0]->attempts, 2);
	check_body(old, big, sizeof(big)); /* still valid: not released */
	CHECK_EQ(ack1(&f, old), 1);
	CHECK_EQ(requeue(&f, old, 0, true), SLUICE_ESTALE);
	release1(&f, old);
	CHECK_EQ(ack1(&f, m[0]), 0);
	release1(&f, m[0]);
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.expired, 1);
	CHECK_EQ(st.ack_stale, 1);
	CHECK_EQ(st.acked, 1);
	CHECK_EQ(st.delivered, 2);
	CHECK_EQ(st.held, 0);
	teardown(&f);
}

static void
test_touch_extends_lease(void)
{
	struct sluice_msg *m[2];
	struct fixture f;

	setup(&f, 4, 1000, true);
	publish_str(&f, "t");
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_OK(sluice_clock_advance(f.clk, 600));
	CHECK_OK(f.src.ops->touch(f.src.self, m[0]));
	CHECK_OK(sluice_clock_advance(f.clk, 600));
	CHECK_EQ(fetch(&f, m + 1, 1, 0), 0);
	CHECK_OK(sluice_clock_advance(f.clk, 400));
	sluice_queue_expire(f.q);
	CHECK_EQ(fetch(&f, m + 1, 1, 0), 1);
	CHECK_EQ(m[1]->attempts, 2);
	CHECK_EQ(f.src.ops->touch(f.src.self, m[0]), SLUICE_ESTALE);
	release1(&f, m[0]);
	settle(&f, m[1]);
	teardown(&f);
}

/* A touched lease moves behind a later one; the later one still expires
 * on time. */
static void
test_touch_reorders_leases(void)
{
	struct sluice_msg *a[1], *b[1], *r[2];
	struct fixture f;

	setup(&f, 8, 1000, true);
	publish_str(&f, "a");
	publish_str(&f, "b");
	CHECK_EQ(fetch(&f, a, 1, 0), 1); /* lease ends at 1000 */
	CHECK_OK(sluice_clock_advance(f.clk, 100));
	CHECK_EQ(fetch(&f, b, 1, 0), 1); /* lease ends at 1100 */
	CHECK_OK(sluice_clock_advance(f.clk, 500));
	CHECK_OK(f.src.ops->touch(f.src.self, a[0])); /* now ends at 1600 */
	CHECK_OK(sluice_clock_advance(f.clk, 500));   /* 1100 */
	CHECK_EQ(fetch(&f, r, 2, 0), 1);
	CHECK(same_id(r[0], b[0]));
	CHECK_OK(sluice_clock_advance(f.clk, 500)); /* 1600 */
	CHECK_EQ(fetch(&f, r + 1, 1, 0), 1);
	CHECK(same_id(r[1], a[0]));
	release1(&f, a[0]);
	release1(&f, b[0]);
	settle(&f, r[0]);
	settle(&f, r[1]);
	teardown(&f);
}

static void
test_expire_observed_without_fetch(void)
{
	struct sluice_queue_stats st;
	struct sluice_msg *m[1];
	struct fixture f;

	setup(&f, 4, 50, true);
	publish_str(&f, "e");
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_OK(sluice_clock_advance(f.clk, 50));
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.leased, 1);
	sluice_queue_expire(f.q);
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.leased, 0);
	CHECK_EQ(st.ready, 1);
	CHECK_EQ(st.expired, 1);
	CHECK_EQ(st.held, 2);
	release1(&f, m[0]);
	teardown(&f);
}

/* ---- faults ------------------------------------------------------------ */

static void
test_fault_duplicate(void)
{
	struct sluice_queue_stats st;
	struct sluice_msg *m[10];
	struct fixture f;
	int n, i, j, twins;

	setup(&f, 16, 0, false);
	sluice_queue_fault_duplicate(f.q, 1);
	publish_str(&f, "a");
	publish_str(&f, "b");
	publish_str(&f, "c");
	n = fetch(&f, m, 10, 0);
	CHECK_EQ(n, 6);
	for (i = 0; i < n; i++) {
		twins = 0;
		for (j = 0; j < n; j++)
			if (j != i && same_id(m[i], m[j])) {
				twins++;
				CHECK(m[i] != m[j]);
				check_body(m[j], m[i]->body, m[i]->body_len);
				CHECK_EQ(m[j]->attempts, m[i]->attempts);
			}
		CHECK_EQ(twins, 1);
	}
	CHECK_EQ(f.src.ops->ack(f.src.self, m, (size_t)n), 0);
	f.src.ops->release(f.src.self, m, (size_t)n);
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.duplicated, 3);
	/* Every 2nd delivery, and off again. */
	sluice_queue_fault_duplicate(f.q, 2);
	publish_str(&f, "d");
	publish_str(&f, "e");
	CHECK_EQ(fetch(&f, m, 10, 0), 3);
	sluice_queue_fault_duplicate(f.q, 0);
	publish_str(&f, "f");
	publish_str(&f, "g");
	CHECK_EQ(fetch(&f, m + 3, 7, 0), 2);
	for (i = 0; i < 5; i++)
		settle(&f, m[i]);
	teardown(&f);
}

static void
test_fault_drop_acks(void)
{
	struct sluice_queue_stats st;
	struct sluice_msg *m[1];
	struct fixture f;

	setup(&f, 4, 1000, true);
	sluice_queue_fault_drop_acks(f.q, 1);
	publish_str(&f, "d");
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_EQ(ack1(&f, m[0]), 0); /* reported as success */
	release1(&f, m[0]);
	CHECK_EQ(fetch(&f, m, 1, 0), 0);
	CHECK_EQ(sluice_queue_wait_idle(f.q, 0), SLUICE_ETIMEDOUT);
	CHECK_OK(sluice_clock_advance(f.clk, 1000));
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_EQ(m[0]->attempts, 2);
	check_body(m[0], "d", 1);
	settle(&f, m[0]);
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.acks_dropped, 1);
	CHECK_EQ(st.acked, 1);
	CHECK_EQ(st.expired, 1);
	CHECK_OK(sluice_queue_wait_idle(f.q, 0));
	teardown(&f);
}

static void
test_disconnect(void)
{
	struct sluice_queue_stats st;
	struct sluice_msg *m[4], *got[4];
	struct fixture f;
	int i;

	setup(&f, 8, 0, false);
	publish_str(&f, "1");
	publish_str(&f, "2");
	publish_str(&f, "3");
	CHECK_EQ(fetch(&f, m, 2, 0), 2);
	sluice_queue_disconnect(f.q);
	CHECK_EQ(fetch(&f, got, 4, 0), SLUICE_EDISCONNECTED);
	CHECK_EQ(fetch(&f, got, 4, 0), 3);
	check_body(got[0], "3", 1);
	CHECK_EQ(got[0]->attempts, 1);
	CHECK(same_id(got[1], m[0]));
	CHECK(same_id(got[2], m[1]));
	CHECK_EQ(got[1]->attempts, 2);
	CHECK_EQ(got[2]->attempts, 2);
	check_body(m[0], "1", 1); /* old deliveries still readable */
	CHECK_EQ(f.src.ops->ack(f.src.self, m, 2), 2);
	f.src.ops->release(f.src.self, m, 2);
	CHECK_EQ(fetch(&f, m, 4, 0), 0); /* reported once only */
	for (i = 0; i < 3; i++)
		settle(&f, got[i]);
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.ack_stale, 2);
	CHECK_EQ(st.acked, 3);
	CHECK_EQ(st.held, 0);
	teardown(&f);
}

/*
 * With every slot borrowed there is no room for the redeliveries: they
 * wait for the next slot released, oldest first, or reuse their own slot
 * when that is released first.
 */
static void
test_disconnect_full(void)
{
	struct sluice_msg *m[3], *r[2];
	struct fixture f;

	setup(&f, 3, 0, false);
	publish_str(&f, "1");
	publish_str(&f, "2");
	publish_str(&f, "3");
	CHECK_EQ(fetch(&f, m, 3, 0), 3);
	CHECK_EQ(ack1(&f, m[2]), 0);
	sluice_queue_disconnect(f.q);
	CHECK_EQ(fetch(&f, r, 2, 0), SLUICE_EDISCONNECTED);
	CHECK_EQ(fetch(&f, r, 2, 0), 0);
	CHECK_EQ(sluice_queue_wait_idle(f.q, 0), SLUICE_ETIMEDOUT);
	release1(&f, m[2]); /* frees a slot: "1" is redelivered there */
	CHECK_EQ(fetch(&f, r, 2, 0), 1);
	CHECK(same_id(r[0], m[0]));
	CHECK_EQ(r[0]->attempts, 2);
	check_body(m[0], "1", 1);
	release1(&f, m[1]); /* "2" goes back in its own slot */
	CHECK_EQ(fetch(&f, r + 1, 1, 0), 1);
	check_body(r[1], "2", 1);
	CHECK_EQ(r[1]->attempts, 2);
	CHECK_EQ(ack1(&f, m[0]), 1);
	release1(&f, m[0]);
	settle(&f, r[0]);
	settle(&f, r[1]);
	CHECK_OK(sluice_queue_wait_idle(f.q, 0));
	teardown(&f);
}

/* ---- wakeups and timed waits ------------------------------------------- */

static void
test_wakeup_unblocks_fetch(void)
{
	struct fetch_arg a = { 0 };
	struct fixture f;
	pthread_t t;

	setup(&f, 4, 0, false);
	a.f = &f;
	a.deadline = SLUICE_FOREVER;
	a.rc = -1;
	CHECK_OK(pthread_create(&t, NULL, fetch_thread, &a));
	wait_blocked(f.q, 1);
	f.src.ops->wakeup(f.src.self);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, 0);
	teardown(&f);
}

static void
test_wakeup_unblocks_every_fetch(void)
{
	struct fetch_arg a[3];
	struct fixture f;
	pthread_t t[3];
	int i;

	setup(&f, 4, 0, false);
	for (i = 0; i < 3; i++) {
		memset(&a[i], 0, sizeof(a[i]));
		a[i].f = &f;
		a[i].deadline = SLUICE_FOREVER;
		a[i].rc = -1;
		CHECK_OK(pthread_create(&t[i], NULL, fetch_thread, &a[i]));
	}
	wait_blocked(f.q, 3);
	f.src.ops->wakeup(f.src.self);
	for (i = 0; i < 3; i++) {
		CHECK_OK(pthread_join(t[i], NULL));
		CHECK_EQ(a[i].rc, 0);
	}
	teardown(&f);
}

static void
test_fetch_virtual_deadline(void)
{
	struct fetch_arg a = { 0 };
	struct fixture f;
	pthread_t t;

	setup(&f, 4, 0, true);
	a.f = &f;
	a.deadline = 1000;
	a.rc = -1;
	CHECK_OK(pthread_create(&t, NULL, fetch_thread, &a));
	wait_blocked(f.q, 1);
	CHECK_OK(sluice_clock_advance(f.clk, 400));
	CHECK_OK(sluice_clock_advance(f.clk, 600));
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, 0);
	teardown(&f);
}

struct idle_arg {
	struct fixture *f;
	int64_t deadline;
	int rc;
};

static void *
idle_thread(void *p)
{
	struct idle_arg *a = p;

	a->rc = sluice_queue_wait_idle(a->f->q, a->deadline);
	return NULL;
}

static void
test_wait_idle(void)
{
	struct idle_arg a = { 0 };
	struct sluice_msg *m[1];
	struct fixture f;
	pthread_t t;

	setup(&f, 4, 0, true);
	CHECK_OK(sluice_queue_wait_idle(f.q, 0));
	publish_str(&f, "w");
	CHECK_EQ(sluice_queue_wait_idle(f.q, 0), SLUICE_ETIMEDOUT);
	/* A virtual deadline ends the wait. */
	a.f = &f;
	a.deadline = 100;
	CHECK_OK(pthread_create(&t, NULL, idle_thread, &a));
	wait_blocked(f.q, 1);
	CHECK_OK(sluice_clock_advance(f.clk, 100));
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, SLUICE_ETIMEDOUT);
	/* Settling the last message ends it; an unreleased ack is idle. */
	a.deadline = SLUICE_FOREVER;
	a.rc = -1;
	CHECK_OK(pthread_create(&t, NULL, idle_thread, &a));
	wait_blocked(f.q, 1);
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_EQ(ack1(&f, m[0]), 0);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, 0);
	release1(&f, m[0]);
	teardown(&f);
}

static void
test_stats_consistent(void)
{
	struct sluice_queue_stats st;
	struct sluice_msg *m[4];
	struct fixture f;
	int i;

	setup(&f, 8, 0, true);
	for (i = 0; i < 6; i++)
		publish_str(&f, "s");
	CHECK_EQ(fetch(&f, m, 4, 0), 4);
	CHECK_EQ(ack1(&f, m[0]), 0);           /* stale until released */
	CHECK_OK(requeue(&f, m[1], 50, true)); /* delayed */
	release1(&f, m[1]);
	CHECK_OK(requeue(&f, m[2], 0, false)); /* ready again (a copy) */
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.published, 6);
	CHECK_EQ(st.delivered, 4);
	CHECK_EQ(st.acked, 1);
	CHECK_EQ(st.requeued, 2);
	CHECK_EQ(st.ready, 3);
	CHECK_EQ(st.delayed, 1);
	CHECK_EQ(st.leased, 1);
	/* + m[0] acked and m[2] requeued, both still borrowed */
	CHECK_EQ(st.held, st.ready + st.delayed + st.leased + 2);
	CHECK_EQ(st.max_held, 7);
	release1(&f, m[0]);
	release1(&f, m[2]);
	settle(&f, m[3]);
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.held, st.ready + st.delayed + st.leased);
	CHECK_EQ(st.held, 4);
	teardown(&f);
}

/* ---- threads ----------------------------------------------------------- */

#define PRODUCERS 2
#define CONSUMERS 3
#define PER_PROD  20000
#define TOTAL     (PRODUCERS * PER_PROD)

struct stress {
	struct fixture f;
	_Atomic unsigned acks[TOTAL + 1]; /* by generated id */
	_Atomic unsigned long bad;
};

struct worker {
	struct stress *s;
	unsigned seed;
};

static unsigned
xorshift(unsigned *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/* Bodies repeat their first byte, so a torn or mixed body shows. */
static void *
producer(void *p)
{
	struct worker *w = p;
	uint8_t store[32][100];
	struct sluice_bytes b[32];
	unsigned done = 0, i, k;
	int n;

	while (done < PER_PROD) {
		k = PER_PROD - done < 32 ? PER_PROD - done : 32;
		for (i = 0; i < k; i++) {
			b[i].len = xorshift(&w->seed) % 7 == 0 ? 100 : 9;
			memset(store[i], (int)(xorshift(&w->seed) & 0xff),
			       b[i].len);
			b[i].ptr = store[i];
		}
		n = sluice_queue_publish_batch(w->s->f.q, b, k, SLUICE_FOREVER);
		if (n <= 0) {
			atomic_fetch_add(&w->s->bad, 1);
			break;
		}
		done += (unsigned)n;
	}
	return NULL;
}

static void *
consumer(void *p)
{
	struct worker *w = p;
	struct fixture *f = &w->s->f;
	struct sluice_msg *m[16];
	char hex[17] = { 0 };
	unsigned long id;
	size_t j;
	int n, i;

	for (;;) {
		n = fetch(f, m, 16, SLUICE_FOREVER);
		if (n == SLUICE_ECLOSED)
			break;
		if (n < 0) {
			atomic_fetch_add(&w->s->bad, 1);
			break;
		}
		for (i = 0; i < n; i++) {
			for (j = 1; j < m[i]->body_len; j++)
				if (m[i]->body[j] != m[i]->body[0])
					atomic_fetch_add(&w->s->bad, 1);
			if (m[i]->attempts < 3 && xorshift(&w->seed) % 4 == 0) {
				if (requeue(f, m[i],
					    (int64_t)(w->seed % 3) * 1000,
					    true) != 0)
					atomic_fetch_add(&w->s->bad, 1);
				continue;
			}
			if (ack1(f, m[i]) != 0) {
				atomic_fetch_add(&w->s->bad, 1);
				continue;
			}
			memcpy(hex, m[i]->id, 16);
			id = strtoul(hex, NULL, 16);
			if (id == 0 || id > TOTAL)
				atomic_fetch_add(&w->s->bad, 1);
			else
				atomic_fetch_add(&w->s->acks[id], 1);
		}
		f->src.ops->release(f->src.self, m, (size_t)n);
	}
	return NULL;
}

static void
test_threads_every_message_acked_once(void)
{
	struct worker pw[PRODUCERS], cw[CONSUMERS];
	pthread_t pt[PRODUCERS], ct[CONSUMERS];
	struct sluice_queue_stats st;
	struct stress *s;
	unsigned i;

	s = calloc(1, sizeof(*s));
	CHECK(s != NULL);
	setup(&s->f, 64, 0, false);
	for (i = 0; i < CONSUMERS; i++) {
		cw[i].s = s;
		cw[i].seed = 0x9e3779b9u * (i + 1);
		CHECK_OK(pthread_create(&ct[i], NULL, consumer, &cw[i]));
	}
	for (i = 0; i < PRODUCERS; i++) {
		pw[i].s = s;
		pw[i].seed = 0x85ebca6bu * (i + 1);
		CHECK_OK(pthread_create(&pt[i], NULL, producer, &pw[i]));
	}
	for (i = 0; i < PRODUCERS; i++)
		CHECK_OK(pthread_join(pt[i], NULL));
	sluice_queue_close(s->f.q);
	for (i = 0; i < CONSUMERS; i++)
		CHECK_OK(pthread_join(ct[i], NULL));
	CHECK_EQ(atomic_load(&s->bad), 0);
	for (i = 1; i <= TOTAL; i++)
		CHECK_EQ(atomic_load(&s->acks[i]), 1);
	sluice_queue_stats(s->f.q, &st);
	CHECK_EQ(st.published, TOTAL);
	CHECK_EQ(st.acked, TOTAL);
	CHECK_EQ(st.ack_stale, 0);
	CHECK_EQ(st.delivered, TOTAL + st.requeued);
	CHECK_GT(st.requeued, 0);
	CHECK_EQ(st.held, 0);
	CHECK_LE(st.max_held, 64);
	teardown(&s->f);
	free(s);
}

/* take_all hands over delayed messages before they are due, and ready ones. */
static void
test_take_all_includes_delayed(void)
{
	struct sluice_queue_stats st;
	struct sluice_msg *m[4];
	struct fixture f;

	setup(&f, 4, 0, true);
	publish_str(&f, "later");
	publish_str(&f, "now");
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	CHECK_OK(requeue(&f, m[0], 3600 * SLUICE_NS_PER_S, true));
	release1(&f, m[0]);
	CHECK_EQ(fetch(&f, m, 4, 0), 1); /* only "now" is ready */
	CHECK_OK(requeue(&f, m[0], 0, false));
	release1(&f, m[0]);
	CHECK_EQ(sluice_queue_take_all(f.q, m, 4), 2);
	CHECK_EQ(sluice_queue_take_all(f.q, m + 2, 2), 0);
	sluice_queue_stats(f.q, &st);
	CHECK_EQ(st.delayed, 0);
	CHECK_EQ(st.leased, 2);
	CHECK_EQ(ack1(&f, m[0]), 0);
	CHECK_EQ(ack1(&f, m[1]), 0);
	release1(&f, m[0]);
	release1(&f, m[1]);
	CHECK_EQ(sluice_queue_take_all(NULL, m, 1), SLUICE_EINVAL);
	teardown(&f);
}

/*
 * A fetch already blocked with no deadline must wake for a message that is
 * requeued with a delay after it blocked (real clock: no advance() broadcast
 * to hide a missed wake-up; the 10 ms delay is the workload).
 */
static void
test_blocked_fetch_sees_new_delayed(void)
{
	struct fetch_arg a = { 0 };
	struct sluice_msg *m[1];
	struct fixture f;
	pthread_t t;

	setup(&f, 4, 0, false);
	publish_str(&f, "retry me");
	CHECK_EQ(fetch(&f, m, 1, 0), 1);
	a.f = &f;
	a.deadline = SLUICE_FOREVER;
	CHECK_OK(pthread_create(&t, NULL, fetch_thread, &a));
	wait_blocked(f.q, 1);
	CHECK_OK(requeue(&f, m[0], 10 * SLUICE_NS_PER_MS, true));
	release1(&f, m[0]);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(a.rc, 1);
	CHECK_EQ(a.m[0]->attempts, 2);
	settle(&f, a.m[0]);
	teardown(&f);
}

CHECK_MAIN(test_round_trip_bytes, test_explicit_ids, test_fifo_order,
	   test_invalid_args, test_capacity_bound,
	   test_blocked_publisher_released, test_blocked_publisher_closed,
	   test_publish_batch_partial, test_closed_only_when_settled,
	   test_source_close_op, test_requeue_delay,
	   test_requeue_keeps_attempts, test_requeue_while_borrowed,
	   test_lease_expiry, test_touch_extends_lease,
	   test_touch_reorders_leases, test_expire_observed_without_fetch,
	   test_fault_duplicate, test_fault_drop_acks, test_disconnect,
	   test_disconnect_full, test_wakeup_unblocks_fetch,
	   test_wakeup_unblocks_every_fetch, test_fetch_virtual_deadline,
	   test_wait_idle, test_stats_consistent,
	   test_threads_every_message_acked_once,
	   test_take_all_includes_delayed, test_blocked_fetch_sees_new_delayed)
