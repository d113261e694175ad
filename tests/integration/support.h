/* SPDX-License-Identifier: MIT */
/*
 * support.h - shared helpers for the engine's integration tests.
 *
 * A "rig" is a virtual clock, an in-process queue on it and an engine over
 * the queue.  Handlers report progress through a monitor (mutex + condvar)
 * so tests wait for events, never for time; the 60 s real-time bound on
 * every wait only turns a hang into a failure.  rig_accounting() is the
 * check every test ends with: delivered = handled + requeued + dead-lettered.
 */
#ifndef SUPPORT_H
#define SUPPORT_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <sluice/sluice.h>

#include "check.h"

struct monitor {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	long events; /* guarded by mu */
};

static inline void
monitor_init(struct monitor *m)
{
	pthread_mutex_init(&m->mu, NULL);
	pthread_cond_init(&m->cv, NULL);
	m->events = 0;
}

static inline void
monitor_post(struct monitor *m)
{
	pthread_mutex_lock(&m->mu);
	m->events++;
	pthread_cond_broadcast(&m->cv);
	pthread_mutex_unlock(&m->mu);
}

/* Wait until at least @n events were posted; fails the test after 60 s. */
static inline void
monitor_wait(struct monitor *m, long n)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 60;
	pthread_mutex_lock(&m->mu);
	while (m->events < n) {
		if (pthread_cond_timedwait(&m->cv, &m->mu, &ts) != 0 &&
		    m->events < n) {
			pthread_mutex_unlock(&m->mu);
			fprintf(stderr, "  monitor_wait: %ld of %ld events\n",
				m->events, n);
			CHECK_FAIL("monitor_wait timed out");
		}
	}
	pthread_mutex_unlock(&m->mu);
}

static inline long
monitor_events(struct monitor *m)
{
	long n;

	pthread_mutex_lock(&m->mu);
	n = m->events;
	pthread_mutex_unlock(&m->mu);
	return n;
}

struct rig {
	struct sluice_clock *clock;
	struct sluice_queue *q;
	struct sluice_engine *e;
	struct sluice_engine_config cfg;
	struct sluice_queue_config qcfg;
};

/* Clock at 1000 s, queue of @capacity; cfg defaults with that clock and a
 * deterministic seed.  Tests adjust rig->cfg, then call rig_start. */
static inline void
rig_init(struct rig *r, size_t capacity)
{
	memset(r, 0, sizeof(*r));
	CHECK_OK(sluice_clock_virtual_new(1000 * SLUICE_NS_PER_S, &r->clock));
	sluice_queue_config_init(&r->qcfg);
	r->qcfg.capacity = capacity;
	r->qcfg.clock = r->clock;
	sluice_engine_config_init(&r->cfg);
	r->cfg.clock = r->clock;
	r->cfg.seed = 42;
}

static inline void
rig_make_queue(struct rig *r)
{
	CHECK_OK(sluice_queue_new(&r->qcfg, &r->q));
}

static inline void
rig_start(struct rig *r, struct sluice_handler h, struct sluice_batch_handler b,
	  const struct sluice_dlq *dlq)
{
	if (!r->q)
		rig_make_queue(r);
	CHECK_OK(sluice_engine_new(&r->cfg, sluice_queue_source(r->q), h, b,
				   dlq, &r->e));
	CHECK_OK(sluice_engine_start(r->e));
}

/* Publish @n messages with ids "m<i>" and bodies "body-<i>". */
static inline void
rig_publish(struct rig *r, int first, int n)
{
	char id[32], body[64];
	int i;

	for (i = first; i < first + n; i++) {
		snprintf(id, sizeof(id), "m%d", i);
		snprintf(body, sizeof(body), "body-%d", i);
		CHECK_OK(sluice_queue_publish(r->q, id, body, strlen(body),
					      SLUICE_FOREVER));
	}
}

/* The accounting check: every delivery was handled, requeued or
 * dead-lettered, and the engine holds nothing. */
static inline void
rig_accounting(struct rig *r, struct sluice_engine_stats *st)
{
	sluice_engine_stats(r->e, st);
	CHECK_EQ(st->delivered, st->handled + st->requeued + st->dead_lettered);
	CHECK_EQ(st->held, 0);
	CHECK_EQ(st->running, 0);
}

static inline void
rig_free(struct rig *r)
{
	sluice_engine_free(r->e);
	sluice_queue_free(r->q);
	sluice_clock_free(r->clock);
}

/*
 * Spin (yielding) until @expr holds; a 60 s real-time bound turns a hang
 * into a failure.  For conditions that have no event to wait on, such as
 * "the engine settled what it holds"; never a stand-in for an event.
 */
#define SPIN_UNTIL(expr)                                                    \
	do {                                                                \
		struct timespec spin_t0_, spin_t_;                          \
		clock_gettime(CLOCK_MONOTONIC, &spin_t0_);                  \
		while (!(expr)) {                                           \
			sched_yield();                                      \
			clock_gettime(CLOCK_MONOTONIC, &spin_t_);           \
			if (spin_t_.tv_sec - spin_t0_.tv_sec > 60)          \
				CHECK_FAIL("SPIN_UNTIL timed out: " #expr); \
		}                                                           \
	} while (0)

/* True when the engine holds no message: all settled and released. */
static inline int
rig_settled(struct rig *r)
{
	struct sluice_engine_stats st;

	sluice_engine_stats(r->e, &st);
	return st.held == 0;
}

/*
 * Close the queue and run virtual time forward 1 ms at a time until the
 * engine finished (for tests whose retries wait on delays).
 */
static inline void
rig_drive_to_end(struct rig *r)
{
	sluice_queue_close(r->q);
	while (sluice_engine_wait(r->e, sluice_clock_now_ns(r->clock)) != 0) {
		CHECK_OK(sluice_clock_advance(r->clock, SLUICE_NS_PER_MS));
		sched_yield();
	}
}

/* Parse "m<i>" into i. */
static inline int
msg_index(const struct sluice_msg *m)
{
	size_t len;
	const char *id = sluice_msg_id(m, &len);
	int v = 0;
	size_t i;

	for (i = 1; i < len; i++)
		v = v * 10 + (id[i] - '0');
	return v;
}

static inline int
body_is(const struct sluice_msg *m, const char *s)
{
	struct sluice_bytes b = sluice_msg_body(m);

	return b.len == strlen(s) && memcmp(b.ptr, s, b.len) == 0;
}

#endif /* SUPPORT_H */
