/* SPDX-License-Identifier: MIT */
/*
 * test_nsq_source.c - the NSQ source against the fake_nsqd test server,
 * over real sockets, alone and under a real engine.
 *
 * Each case starts fake_nsqd (from $SLUICE_FAKE_NSQD, else beside this
 * binary) as a child with its stdin and stdout on pipes, publishes through
 * its control protocol ("pub TOPIC BODY", answered "ok") and consumes with
 * the source.  The server runs on real time, so the cases lower its
 * --min-interval and use short heartbeat / msg_timeout values.  Waits are
 * on the engine's handler events (a monitor) or on the source's counters,
 * each with a 60 s guard; the passage of real time that a server-side
 * timeout needs is measured in heartbeats received, never slept.  Absence
 * of a redelivery is proved with a barrier message published afterwards:
 * the fake delivers a channel's queue in order, so a redelivery would come
 * before the barrier.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sluice/nsq.h>

#include "support.h"

#define GUARD_MS 60000
#define TOPIC    "t"
#define CHANNEL  "c"
#include "fake_nsqd_child.h"

static void
pub(const char *body)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "pub " TOPIC " %s", body);
	srv_ctl(cmd);
}

/* The fake with short timers allowed. */
static void
srv_start_fast(void)
{
	static const char *const args[] = { "--min-interval", "100", NULL };

	srv_start(args);
}

static struct sluice_nsq *
nsq_open(uint32_t hb_ms, uint32_t msg_timeout_ms)
{
	struct sluice_nsq_config cfg;
	struct sluice_nsq *n = NULL;
	char err[256];
	int rc;

	sluice_nsq_config_init(&cfg);
	cfg.port = (uint16_t)srv.port;
	cfg.topic = TOPIC;
	cfg.channel = CHANNEL;
	cfg.client_id = "test";
	cfg.heartbeat_ms = hb_ms;
	cfg.msg_timeout_ms = msg_timeout_ms;
	cfg.reconnect_min_ns = 50 * SLUICE_NS_PER_MS;
	rc = sluice_nsq_open(&cfg, err, sizeof(err), &n);
	if (rc != 0)
		fprintf(stderr, "  open: %s (%s)\n", err, sluice_err_name(rc));
	CHECK_OK(rc);
	CHECK(n != NULL);
	return n;
}

static struct sluice_nsq_stats
stats(struct sluice_nsq *n)
{
	struct sluice_nsq_stats st;

	sluice_nsq_stats(n, &st);
	return st;
}

/* Poll the source's counters until @cond holds. */
#define WAIT_STATS(n, st, cond) \
	WAIT_UNTIL(((st) = stats(n), (cond)), "WAIT_STATS: " #cond)

static int64_t
in_ms(int64_t ms)
{
	return sluice_clock_now_ns(sluice_clock_monotonic()) +
	       ms * SLUICE_NS_PER_MS;
}

/* ---- cases ------------------------------------------------------------- */

static void
test_open_negotiates(void)
{
	static const char *const args[] = { "--max-rdy-count", "123",
					    "--min-interval", "100", NULL };
	struct sluice_nsq_config cfg;
	struct sluice_nsq_stats st;
	struct sluice_nsq *n, *bad = NULL;
	struct sluice_source src;
	char err[256];
	int port, hold;

	srv_start(args);
	n = nsq_open(5000, 2500);
	st = stats(n);
	CHECK_EQ(st.max_rdy_count, 123u);
	CHECK_EQ(st.msg_timeout_ms, 2500u);
	CHECK_EQ(st.heartbeat_ms, 5000u);
	CHECK(st.connected);
	CHECK_EQ(st.rdy, 0u);
	src = sluice_nsq_source(n);
	CHECK_STREQ(src.ops->name, "nsq");
	/* Credit above the server's limit is capped; below it mirrored. */
	src.ops->set_credit(src.self, 1000);
	CHECK_EQ(stats(n).rdy, 123u);
	src.ops->set_credit(src.self, 5);
	CHECK_EQ(stats(n).rdy, 5u);
	/* A clean close: CLOSE_WAIT seen, no error. */
	src.ops->close(src.self);
	st = stats(n);
	CHECK(!st.connected);
	CHECK_EQ(st.error, 0);
	CHECK_EQ(src.ops->fetch(src.self, NULL, 0, 0), SLUICE_ECLOSED);
	sluice_nsq_free(n);

	/* Invalid names never reach the server. */
	sluice_nsq_config_init(&cfg);
	cfg.port = (uint16_t)srv.port;
	cfg.topic = "bad topic";
	cfg.channel = CHANNEL;
	CHECK_EQ(sluice_nsq_open(&cfg, err, sizeof(err), &bad), SLUICE_EINVAL);
	CHECK(bad == NULL);
	srv_stop();
	/* Nobody listening: refused, with a reason.  The port is held by a
	 * bound socket that never listens, so no parallel test can take it
	 * (a freed ephemeral port could be reused by another server). */
	port = closed_port(&hold);
	cfg.topic = TOPIC;
	cfg.port = (uint16_t)port;
	CHECK_LT(sluice_nsq_open(&cfg, err, sizeof(err), &bad), 0);
	CHECK(bad == NULL);
	CHECK(strstr(err, "connect") != NULL);
	close(hold);
}

/* Handler state shared by the engine cases. */
#define NBODIES 200

struct seen {
	pthread_mutex_t mu;
	int count[NBODIES + 1]; /* [NBODIES] is the barrier */
	uint32_t max_attempts;
	uint32_t fail_attempts[4]; /* attempts of each "fail-once" call */
	int fails;
	int bad;
	struct monitor mon;
};

static struct seen seen;

static void
seen_init(void)
{
	memset(&seen, 0, sizeof(seen));
	pthread_mutex_init(&seen.mu, NULL);
	monitor_init(&seen.mon);
}

static struct sluice_error *
record(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	char body[64];
	struct sluice_error *err = NULL;
	size_t len =
		m->body_len < sizeof(body) - 1 ? m->body_len : sizeof(body) - 1;

	(void)ud;
	(void)ctx;
	memcpy(body, m->body, len);
	body[len] = '\0';
	pthread_mutex_lock(&seen.mu);
	if (m->attempts > seen.max_attempts)
		seen.max_attempts = m->attempts;
	if (m->id_len != 16)
		seen.bad++;
	if (strcmp(body, "barrier") == 0) {
		seen.count[NBODIES]++;
	} else if (strcmp(body, "fail-once") == 0) {
		if (seen.fails < 4)
			seen.fail_attempts[seen.fails] = m->attempts;
		seen.fails++;
		if (m->attempts == 1)
			err = sluice_error_new(SLUICE_CLASS_TEMPORARY, 0,
					       "first try fails");
	} else if (body[0] == 'm') {
		long i = strtol(body + 1, NULL, 10);

		if (i >= 0 && i < NBODIES)
			seen.count[i]++;
		else
			seen.bad++;
	} else {
		seen.bad++;
	}
	pthread_mutex_unlock(&seen.mu);
	monitor_post(&seen.mon);
	return err;
}

static struct sluice_engine *
engine_on(struct sluice_nsq *n)
{
	struct sluice_engine_config cfg;
	struct sluice_engine *e = NULL;

	sluice_engine_config_init(&cfg);
	cfg.mode = SLUICE_MODE_CONCURRENT;
	cfg.workers = 4;
	cfg.timeout_ns = 10 * SLUICE_NS_PER_S;
	cfg.retry.min_ns = SLUICE_NS_PER_MS;
	cfg.retry.max_ns = 5 * SLUICE_NS_PER_MS;
	cfg.seed = 1;
	CHECK_OK(sluice_engine_new(&cfg, sluice_nsq_source(n),
				   (struct sluice_handler){ record, NULL },
				   (struct sluice_batch_handler){ 0 }, NULL,
				   &e));
	CHECK_OK(sluice_engine_start(e));
	return e;
}

static struct sluice_engine_stats
engine_finish(struct sluice_engine *e)
{
	struct sluice_engine_stats st;

	sluice_engine_stop(e, SLUICE_STOP_DRAIN);
	CHECK_OK(sluice_engine_wait(e, in_ms(GUARD_MS)));
	sluice_engine_stats(e, &st);
	sluice_engine_free(e);
	CHECK_EQ(st.delivered, st.handled + st.requeued + st.dead_lettered);
	return st;
}

static void
test_engine_consumes_every_message_once(void)
{
	struct sluice_nsq_stats st;
	struct sluice_engine_stats es;
	struct sluice_engine *e;
	struct sluice_nsq *n;
	char body[32];
	uint64_t hb;
	int i;

	seen_init();
	srv_start_fast();
	/* msg_timeout 1 s: a lost FIN would bring a redelivery soon. */
	n = nsq_open(200, 1000);
	e = engine_on(n);
	CHECK_EQ(stats(n).rdy, 5u); /* 4 workers + prefetch 1 */
	for (i = 0; i < NBODIES; i++) {
		snprintf(body, sizeof(body), "m%d", i);
		pub(body);
	}
	monitor_wait(&seen.mon, NBODIES);
	/* Let more than msg_timeout pass (7 heartbeats of 200 ms), then a
	 * barrier: anything nsqd redelivered would come before it. */
	hb = stats(n).heartbeats;
	WAIT_STATS(n, st, st.heartbeats >= hb + 7);
	pub("barrier");
	monitor_wait(&seen.mon, NBODIES + 1);
	pthread_mutex_lock(&seen.mu);
	for (i = 0; i < NBODIES; i++)
		CHECK_EQ(seen.count[i], 1);
	CHECK_EQ(seen.count[NBODIES], 1);
	CHECK_EQ(seen.max_attempts, 1u);
	CHECK_EQ(seen.bad, 0);
	pthread_mutex_unlock(&seen.mu);
	es = engine_finish(e);
	CHECK_EQ(es.delivered, (uint64_t)NBODIES + 1);
	CHECK_EQ(es.handled, es.delivered);
	CHECK_LE(es.max_held, 5u);
	st = stats(n);
	CHECK_EQ(st.messages, (uint64_t)NBODIES + 1);
	CHECK_EQ(st.fins, (uint64_t)NBODIES + 1);
	CHECK_EQ(st.fin_failed, 0u);
	CHECK_EQ(st.refused, 0u);
	CHECK(!st.connected);  /* the engine closed it... */
	CHECK_EQ(st.error, 0); /* ...cleanly */
	sluice_nsq_free(n);
	srv_stop();
}

static void
test_temporary_failure_requeues_with_attempts_2(void)
{
	struct sluice_nsq_stats st;
	struct sluice_engine_stats es;
	struct sluice_engine *e;
	struct sluice_nsq *n;

	seen_init();
	srv_start_fast();
	n = nsq_open(1000, 5000);
	e = engine_on(n);
	pub("fail-once");
	pub("m0");
	monitor_wait(&seen.mon, 3);
	es = engine_finish(e);
	pthread_mutex_lock(&seen.mu);
	CHECK_EQ(seen.fails, 2);
	CHECK_EQ(seen.fail_attempts[0], 1u);
	CHECK_EQ(seen.fail_attempts[1], 2u); /* counted by nsqd */
	CHECK_EQ(seen.count[0], 1);
	pthread_mutex_unlock(&seen.mu);
	CHECK_EQ(es.delivered, 3u);
	CHECK_EQ(es.handled, 2u);
	CHECK_EQ(es.requeued, 1u);
	CHECK_EQ(es.temporary, 1u);
	st = stats(n);
	CHECK_EQ(st.reqs, 1u);
	CHECK_EQ(st.fins, 2u);
	CHECK_EQ(st.req_failed, 0u);
	sluice_nsq_free(n);
	srv_stop();
}

static void *
fetch_forever(void *arg)
{
	struct sluice_nsq *n = arg;
	struct sluice_source src = sluice_nsq_source(n);
	struct sluice_msg *m;

	return (void *)(intptr_t)src.ops->fetch(src.self, &m, 1,
						SLUICE_FOREVER);
}

/* One message fetched, held; then the server side acts with @ctl. */
static void
held_then(const char *ctl, int want_error)
{
	struct sluice_nsq_stats st;
	struct sluice_msg *m = NULL, *more;
	struct sluice_source src;
	struct sluice_nsq *n;
	pthread_t t;
	void *ret;

	srv_start_fast();
	n = nsq_open(1000, 5000);
	src = sluice_nsq_source(n);
	src.ops->set_credit(src.self, 1);
	pub("x");
	CHECK_EQ(src.ops->fetch(src.self, &m, 1, in_ms(GUARD_MS)), 1);
	CHECK_EQ(m->body_len, 1u);
	CHECK_MEMEQ(m->body, "x", 1);
	CHECK_EQ(m->attempts, 1u);
	CHECK_EQ(m->id_len, 16u);
	srv_ctl(ctl);
	/* Once per lost connection. */
	CHECK_EQ(src.ops->fetch(src.self, &more, 1, in_ms(GUARD_MS)),
		 SLUICE_EDISCONNECTED);
	CHECK_EQ(src.ops->fetch(src.self, &more, 1, 0), 0);
	/* A fetch blocked forever still returns on wakeup. */
	CHECK_OK(pthread_create(&t, NULL, fetch_forever, n));
	src.ops->wakeup(src.self);
	CHECK_OK(pthread_join(t, &ret));
	CHECK_EQ((intptr_t)ret, 0);
	/* The held message's lease died with the connection. */
	CHECK_EQ(src.ops->ack(src.self, &m, 1), 1);
	CHECK_EQ(src.ops->requeue(src.self, m, 0, true), SLUICE_ESTALE);
	CHECK_EQ(src.ops->touch(src.self, m), SLUICE_ESTALE);
	CHECK_MEMEQ(m->body, "x", 1); /* still readable until release */
	src.ops->release(src.self, &m, 1);
	/* The address is redialled (reconnect backoff) and serves again. */
	WAIT_STATS(n, st, st.reconnects == 1 && st.connected);
	CHECK_EQ(st.error, want_error);
	CHECK_EQ(st.disconnects, 1u);
	CHECK_EQ(st.refused, 3u);
	src.ops->set_credit(src.self, 1);
	pub("y");
	CHECK_EQ(src.ops->fetch(src.self, &m, 1, in_ms(GUARD_MS)), 1);
	CHECK_MEMEQ(m->body, "y", 1);
	CHECK_EQ(src.ops->ack(src.self, &m, 1), 0);
	src.ops->release(src.self, &m, 1);
	sluice_nsq_free(n);
	srv_stop();
}

static void
test_drop_disconnects(void)
{
	held_then("drop", SLUICE_EIO);
}

static void
test_malformed_frame_disconnects(void)
{
	held_then("malformed", SLUICE_EPROTO);
}

static void
test_oversized_frame_disconnects(void)
{
	held_then("oversized", SLUICE_EMSGSIZE);
}

static void
test_heartbeats_are_answered(void)
{
	struct sluice_nsq_stats st;
	struct sluice_msg *m = NULL;
	struct sluice_source src;
	struct sluice_nsq *n;

	srv_start_fast();
	/* nsqd drops a connection silent for 2 intervals (300 ms). */
	n = nsq_open(150, 5000);
	src = sluice_nsq_source(n);
	WAIT_STATS(n, st, st.heartbeats >= 8 || !st.connected);
	CHECK(st.connected);
	src.ops->set_credit(src.self, 1);
	pub("alive");
	CHECK_EQ(src.ops->fetch(src.self, &m, 1, in_ms(GUARD_MS)), 1);
	CHECK_EQ(m->body_len, 5u);
	CHECK_EQ(src.ops->ack(src.self, &m, 1), 0);
	src.ops->release(src.self, &m, 1);
	CHECK(stats(n).connected);
	sluice_nsq_free(n);
	srv_stop();
}

/*
 * An unanswered message times out and comes back with the same id; the
 * second FIN for that id fails with the non-fatal E_FIN_FAILED, which is
 * counted and leaves the connection up.
 */
static void
test_fin_failed_is_not_fatal(void)
{
	struct sluice_nsq_stats st;
	struct sluice_msg *m[2] = { NULL, NULL };
	struct sluice_source src;
	struct sluice_nsq *n;

	srv_start_fast();
	n = nsq_open(1000, 1000);
	src = sluice_nsq_source(n);
	src.ops->set_credit(src.self, 2);
	pub("again");
	CHECK_EQ(src.ops->fetch(src.self, m, 1, in_ms(GUARD_MS)), 1);
	CHECK_EQ(m[0]->attempts, 1u);
	/* Not answered: nsqd redelivers it after msg_timeout (1 s). */
	CHECK_EQ(src.ops->fetch(src.self, m + 1, 1, in_ms(GUARD_MS)), 1);
	CHECK_EQ(m[1]->attempts, 2u);
	CHECK_MEMEQ(m[0]->id, m[1]->id, 16);
	CHECK_EQ(src.ops->ack(src.self, m, 2), 0);
	WAIT_STATS(n, st, st.fin_failed >= 1 || !st.connected);
	CHECK_EQ(st.fin_failed, 1u);
	CHECK(st.connected);
	CHECK_EQ(st.fins, 2u);
	src.ops->release(src.self, m, 2);
	/* Still consuming. */
	pub("next");
	CHECK_EQ(src.ops->fetch(src.self, m, 1, in_ms(GUARD_MS)), 1);
	CHECK_EQ(m[0]->body_len, 4u);
	CHECK_EQ(src.ops->ack(src.self, m, 1), 0);
	src.ops->release(src.self, m, 1);
	sluice_nsq_free(n);
	srv_stop();
}

static void
test_close_hands_back_unfetched(void)
{
	struct sluice_nsq_stats st;
	struct sluice_msg *m[4];
	struct sluice_source a_src, b_src;
	struct sluice_nsq *a, *b;
	int got = 0, i, r;

	srv_start_fast();
	a = nsq_open(1000, 60000);
	a_src = sluice_nsq_source(a);
	a_src.ops->set_credit(a_src.self, 3);
	pub("h0");
	pub("h1");
	pub("h2");
	WAIT_STATS(a, st, st.messages == 3);
	a_src.ops->close(a_src.self);
	st = stats(a);
	CHECK_EQ(st.handed_back, 3u);
	CHECK(!st.connected);
	CHECK_EQ(st.error, 0);
	sluice_nsq_free(a);
	/* With a 60 s msg_timeout, only the REQs can bring them back now. */
	b = nsq_open(1000, 60000);
	b_src = sluice_nsq_source(b);
	b_src.ops->set_credit(b_src.self, 3);
	while (got < 3) {
		r = b_src.ops->fetch(b_src.self, m + got, 3 - (size_t)got,
				     in_ms(GUARD_MS));
		CHECK_GT(r, 0);
		got += r;
	}
	for (i = 0; i < 3; i++) {
		CHECK_EQ(m[i]->attempts, 2u);
		CHECK_EQ(m[i]->body[0], 'h');
	}
	CHECK_EQ(b_src.ops->ack(b_src.self, m, 3), 0);
	b_src.ops->release(b_src.self, m, 3);
	sluice_nsq_free(b);
	srv_stop();
}

CHECK_MAIN(test_open_negotiates, test_engine_consumes_every_message_once,
	   test_temporary_failure_requeues_with_attempts_2,
	   test_drop_disconnects, test_malformed_frame_disconnects,
	   test_oversized_frame_disconnects, test_heartbeats_are_answered,
	   test_fin_failed_is_not_fatal, test_close_hands_back_unfetched)
