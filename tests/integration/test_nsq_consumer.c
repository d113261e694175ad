/* SPDX-License-Identifier: MIT */
/*
 * test_nsq_consumer.c - the many-connection NSQ consumer against several
 * fake_nsqd children and a fake_lookupd, under a real engine.
 *
 * Between the consumer and each fake_nsqd runs the recording proxy of
 * tests/support/nsq_proxy.h (a thread of this test), so the cases assert on
 * the RDY / TOUCH / FIN / REQ commands the stand-in actually receives; the
 * sum of RDY over live connections never counts a moved RDY twice.
 *
 * Real time is unavoidable against child processes: the fakes run with
 * --min-interval 100 and short timers; every wait is on an event (a
 * child's "ok", the engine's handler calls, the proxy's or the source's
 * counters) with a 60 s guard, never a sleep standing in for sync.
 */
#include <arpa/inet.h>
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

#include "fake_nsqd_child.h"
#include "nsq_proxy.h"
#include "support.h"
#include "tls_certs.h"

#define GUARD_MS 60000

/* Handler: bodies starting with "fail" fail TEMPORARY, others succeed;
 * every call is counted by body in `seen`. */
#define NB 512
static struct {
	pthread_mutex_t mu;
	struct monitor mon;
	int count[NB];
	int fails;
} seen = { .mu = PTHREAD_MUTEX_INITIALIZER };

static struct sluice_error *
handle(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	char b[32] = "";
	int i;

	(void)ud;
	(void)ctx;
	memcpy(b, m->body, m->body_len < 31 ? m->body_len : 31);
	pthread_mutex_lock(&seen.mu);
	if (b[0] == 'm') {
		i = atoi(b + 1);
		if (i >= 0 && i < NB)
			seen.count[i]++;
	}
	pthread_mutex_unlock(&seen.mu);
	monitor_post(&seen.mon);
	/* "fail..." fails its first two deliveries. */
	if (strncmp(b, "fail", 4) == 0 && m->attempts < 3) {
		pthread_mutex_lock(&seen.mu);
		seen.fails++;
		pthread_mutex_unlock(&seen.mu);
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, 0, "fail");
	}
	return NULL;
}

static struct sluice_engine *
engine_on(struct sluice_nsq *n, unsigned workers, unsigned prefetch)
{
	struct sluice_engine_config ec;
	struct sluice_engine *e = NULL;

	monitor_init(&seen.mon);
	sluice_engine_config_init(&ec);
	ec.workers = workers;
	ec.prefetch = prefetch;
	ec.retry.min_ns = 10 * SLUICE_NS_PER_MS;
	ec.retry.max_ns = 10 * SLUICE_NS_PER_MS;
	CHECK_OK(sluice_engine_new(&ec, sluice_nsq_source(n),
				   (struct sluice_handler){ handle, NULL },
				   (struct sluice_batch_handler){ 0 }, NULL,
				   &e));
	CHECK_OK(sluice_engine_start(e));
	return e;
}

/* Drain and free @e; its accounting must balance. */
static struct sluice_engine_stats
engine_finish(struct sluice_engine *e)
{
	struct sluice_engine_stats es;

	sluice_engine_stop(e, SLUICE_STOP_DRAIN);
	CHECK_OK(sluice_engine_wait(e, SLUICE_FOREVER));
	sluice_engine_stats(e, &es);
	sluice_engine_free(e);
	CHECK_EQ(es.delivered, es.handled + es.requeued + es.dead_lettered);
	return es;
}

static void
pub_range(struct child *c, int first, int count)
{
	char b[16];
	int i;

	for (i = first; i < first + count; i++) {
		snprintf(b, sizeof(b), "m%d", i);
		pub(c, b);
	}
}

static void
check_each_once_or_more(int count)
{
	int i;

	pthread_mutex_lock(&seen.mu);
	for (i = 0; i < count; i++)
		CHECK_GE(seen.count[i], 1);
	pthread_mutex_unlock(&seen.mu);
}

static int
seen_total(int count)
{
	int i, t = 0;

	pthread_mutex_lock(&seen.mu);
	for (i = 0; i < count; i++)
		t += seen.count[i] > 0;
	pthread_mutex_unlock(&seen.mu);
	return t;
}

/* One fake_nsqd @d behind the proxy; @cfg (from nsq_cfg_base(), adjusted by
 * the caller) gets its address; the source is opened. */
static struct sluice_nsq *
open_proxied(struct child *d, struct sluice_nsq_config *cfg)
{
	char a[32];
	const char *addrs[1];

	nsqd_start(d, 0, NULL);
	px_start(&d->port, 1);
	aim(cfg, addrs, a, px.port[0]);
	return open_nsq(cfg); /* the addresses are copied */
}

/* Fetch one message (60 s guard). */
static int
fetch_one(struct sluice_source src, struct sluice_msg **m)
{
	return src.ops->fetch(src.self, m, 1,
			      sluice_clock_now_ns(sluice_clock_monotonic()) +
				      GUARD_MS * SLUICE_NS_PER_MS);
}

/* ---- cases ------------------------------------------------------------- */

/* Two nsqd, credit 5: RDY 2 + 2, never more than 5 in sum at the
 * stand-ins; every message handled once; accounting holds. */
static void
test_rdy_spread_and_sum(void)
{
	struct child d[2];
	struct sluice_nsq_config cfg;
	struct sluice_engine_stats es;
	struct sluice_nsq_stats st;
	struct sluice_engine *e;
	struct sluice_nsq *n;
	char a0[32], a1[32];
	const char *addrs[2];
	int up[2];

	nsqd_start(&d[0], 0, NULL);
	nsqd_start(&d[1], 0, NULL);
	up[0] = d[0].port;
	up[1] = d[1].port;
	px_start(up, 2);
	nsq_cfg_base(&cfg);
	addrs[0] = addr_of(a0, sizeof(a0), px.port[0]);
	addrs[1] = addr_of(a1, sizeof(a1), px.port[1]);
	cfg.nsqd = addrs;
	cfg.n_nsqd = 2;
	n = open_nsq(&cfg);
	e = engine_on(n, 4, 1); /* credit 5 */
	WAIT_FOR(px_get(PX_RDY_SUM) == 4);
	pub_range(&d[0], 0, 100);
	pub_range(&d[1], 100, 100);
	monitor_wait(&seen.mon, 200);
	check_each_once_or_more(200);
	st = nsq_stats(n);
	CHECK_EQ(st.credit, 5u);
	CHECK_EQ(st.rdy, 4u); /* trunc(5 / 2) each */
	CHECK_EQ(st.connections, 2u);
	es = engine_finish(e);
	CHECK_EQ(es.handled, 200u);
	WAIT_FOR(px_get(PX_FINS) == 200);
	CHECK_LE(px_get(PX_MAX_RDY_SUM), 5u);
	CHECK_LE(nsq_stats(n).max_rdy_sum, 5u);
	sluice_nsq_free(n);
	px_stop();
	child_stop(&d[0]);
	child_stop(&d[1]);
}

/* Three nsqd, credit 1: RDY 1 rotates (idle timeout) so every nsqd is
 * served, and the stand-ins never see more than 1 in sum. */
static void
test_more_connections_than_credit(void)
{
	struct child d[3];
	struct sluice_nsq_config cfg;
	struct sluice_engine_stats es;
	struct sluice_engine *e;
	struct sluice_nsq *n;
	char a[3][32];
	const char *addrs[3];
	int up[3], i;

	for (i = 0; i < 3; i++) {
		nsqd_start(&d[i], 0, NULL);
		up[i] = d[i].port;
	}
	px_start(up, 3);
	nsq_cfg_base(&cfg);
	for (i = 0; i < 3; i++)
		addrs[i] = addr_of(a[i], sizeof(a[i]), px.port[i]);
	cfg.nsqd = addrs;
	cfg.n_nsqd = 3;
	n = open_nsq(&cfg);
	e = engine_on(n, 1, 0); /* credit 1 */
	for (i = 0; i < 3; i++)
		pub_range(&d[i], i * 5, 5);
	monitor_wait(&seen.mon, 15);
	check_each_once_or_more(15);
	CHECK_LE(px_get(PX_MAX_RDY_SUM), 1u);
	es = engine_finish(e);
	CHECK_EQ(es.handled, 15u);
	CHECK_LE(nsq_stats(n).max_rdy_sum, 1u);
	sluice_nsq_free(n);
	px_stop();
	for (i = 0; i < 3; i++)
		child_stop(&d[i]);
}

/* Drops, a malformed frame and a restart of one stand-in on the same port:
 * every message is handled, FIN + REQ + dead-lettered = delivered. */
static void
test_accounting_under_drops_and_restart(void)
{
	struct child d[2];
	struct sluice_nsq_config cfg;
	struct sluice_engine_stats es;
	struct sluice_nsq_stats st;
	struct sluice_engine *e;
	struct sluice_nsq *n;
	char a0[32], a1[32];
	const char *addrs[2];
	int port1;

	nsqd_start(&d[0], 0, NULL);
	nsqd_start(&d[1], 0, NULL);
	port1 = d[1].port;
	nsq_cfg_base(&cfg);
	addrs[0] = addr_of(a0, sizeof(a0), d[0].port);
	addrs[1] = addr_of(a1, sizeof(a1), d[1].port);
	cfg.nsqd = addrs;
	cfg.n_nsqd = 2;
	n = open_nsq(&cfg);
	e = engine_on(n, 4, 4);
	pub_range(&d[0], 0, 50);
	child_ctl(&d[0], "drop");
	WAIT_FOR(nsq_stats(n).reconnects == 1 && nsq_stats(n).connections == 2);
	pub_range(&d[0], 50, 50);
	child_ctl(&d[0], "malformed");
	WAIT_FOR(nsq_stats(n).reconnects == 2 && nsq_stats(n).connections == 2);
	pub_range(&d[1], 100, 50);
	WAIT_FOR(seen_total(150) == 150);
	/* Restart d[1]: kill it and start a new one on the same port. */
	child_stop(&d[1]);
	WAIT_FOR(nsq_stats(n).connections == 1);
	nsqd_start(&d[1], port1, NULL);
	WAIT_FOR(nsq_stats(n).connections == 2);
	pub_range(&d[1], 150, 50);
	WAIT_FOR(seen_total(200) == 200);
	st = nsq_stats(n);
	CHECK_GE(st.disconnects, 3u);
	CHECK_GE(st.reconnects, 3u);
	es = engine_finish(e);
	st = nsq_stats(n);
	/* An ack whose connection died meanwhile is refused (ESTALE): nsqd
	 * redelivers that message, and the engine counts it in ack_failed. */
	CHECK_EQ(st.fins, es.handled - es.ack_failed);
	CHECK_EQ(st.fins + st.reqs + st.refused, es.delivered);
	sluice_nsq_free(n);
	child_stop(&d[0]);
	child_stop(&d[1]);
}

/* Auto-TOUCH: a held message is touched before its 1 s lease runs out,
 * until its 2.5 s deadline; then touching stops and nsqd redelivers it. */
static void
test_auto_touch_until_deadline(void)
{
	struct child d;
	struct sluice_nsq_config cfg;
	struct sluice_source src;
	struct sluice_msg *m, *m2;
	struct sluice_nsq *n;
	int64_t touches, t0;

	nsq_cfg_base(&cfg);
	cfg.touch_deadline_ns = 2500 * SLUICE_NS_PER_MS;
	n = open_proxied(&d, &cfg);
	src = sluice_nsq_source(n);
	src.ops->set_credit(src.self, 1);
	pub(&d, "hold");
	CHECK_EQ(fetch_one(src, &m), 1);
	t0 = mono_ms();
	/* Redelivered only after touching stopped: 2.5 s + ~1 s lease. */
	CHECK_EQ(fetch_one(src, &m2), 1);
	CHECK_EQ(m2->attempts, 2u);
	CHECK_MEMEQ(m2->id, m->id, 16);
	CHECK_GE(mono_ms() - t0, 2500);
	touches = px_get(PX_TOUCHES);
	CHECK_GE(touches, 2u); /* at ~0.67 s and ~1.33 s (and ~2 s) */
	CHECK_LE(touches, 3u);
	/* The last touch came before the deadline. */
	CHECK_LE(px_get(PX_LAST_TOUCH) - t0, 2500);
	src.ops->release(src.self, &m, 1);
	CHECK_EQ(src.ops->ack(src.self, &m2, 1), 0);
	src.ops->release(src.self, &m2, 1);
	CHECK_EQ(nsq_stats(n).fin_failed, 0u);
	sluice_nsq_free(n);
	px_stop();
	child_stop(&d);
}

/* A handler inside its deadline but past the lease: touched, so its FIN
 * is accepted (no E_FIN_FAILED, no redelivery). */
static void
test_auto_touch_keeps_lease(void)
{
	struct child d;
	struct sluice_nsq_config cfg;
	struct sluice_source src;
	struct sluice_nsq_stats st;
	struct sluice_msg *m;
	struct sluice_nsq *n;
	uint64_t hb;

	nsq_cfg_base(&cfg);
	cfg.touch_deadline_ns = 30 * SLUICE_NS_PER_S;
	n = open_proxied(&d, &cfg);
	src = sluice_nsq_source(n);
	src.ops->set_credit(src.self, 1);
	pub(&d, "slow");
	CHECK_EQ(fetch_one(src, &m), 1);
	/* Hold it for 2 leases (10 heartbeats of 200 ms). */
	hb = nsq_stats(n).heartbeats;
	WAIT_FOR(nsq_stats(n).heartbeats >= hb + 10);
	CHECK_GE(px_get(PX_TOUCHES), 2u);
	CHECK_EQ(src.ops->ack(src.self, &m, 1), 0);
	src.ops->release(src.self, &m, 1);
	WAIT_FOR(px_get(PX_FINS) == 1);
	hb = nsq_stats(n).heartbeats;
	WAIT_FOR(nsq_stats(n).heartbeats >= hb + 2);
	st = nsq_stats(n);
	CHECK_EQ(st.fin_failed, 0u);
	CHECK_EQ(st.messages, 1u); /* never redelivered */
	sluice_nsq_free(n);
	px_stop();
	child_stop(&d);
}

/* Backoff: a TEMPORARY failure sets RDY 0, a probe RDY 1 follows the
 * period, the probe survives a reconnect, success restores full credit. */
static void
test_backoff_probe_recovery_across_reconnect(void)
{
	struct child d;
	struct sluice_nsq_config cfg;
	struct sluice_engine *e;
	struct sluice_nsq *n;

	nsq_cfg_base(&cfg);
	cfg.backoff_unit_ns = 300 * SLUICE_NS_PER_MS;
	n = open_proxied(&d, &cfg);
	e = engine_on(n, 4, 1);
	WAIT_FOR(px_get(PX_RDY_SUM) == 5);
	pub(&d, "fail-1");
	/* Failure: RDY 0 everywhere, level 1; after 300 ms the probe (RDY
	 * 1) takes the redelivery, which fails again: level 2.  (Counted,
	 * not sampled: a loaded machine may pass the 600 ms period.) */
	WAIT_FOR(nsq_stats(n).backoffs >= 2);
	WAIT_FOR(px_get(PX_ZERO_SEEN));
	/* Lose the connection while backing off: the probe must come back
	 * on the new connection (go-nsq #106/#127). */
	child_ctl(&d, "drop");
	WAIT_FOR(nsq_stats(n).reconnects >= 1);
	CHECK_GE(nsq_stats(n).backoff_level, 1u);
	/* Attempt 3 succeeds, then ok-1: each success steps down; level 0
	 * gives full credit again. */
	pub(&d, "ok-1");
	WAIT_FOR(nsq_stats(n).backoff_level == 0 && px_get(PX_RDY_SUM) == 5);
	pthread_mutex_lock(&seen.mu);
	CHECK_EQ(seen.fails, 2);
	pthread_mutex_unlock(&seen.mu);
	CHECK_LE(px_get(PX_MAX_RDY_SUM), 5u);
	CHECK_GE(nsq_stats(n).backoffs, 1u);
	(void)engine_finish(e);
	sluice_nsq_free(n);
	px_stop();
	child_stop(&d);
}

/* Permanent errors never back off (dead-letter, then FIN). */
static void
test_lookupd_adds_and_removes_producers(void)
{
	struct child d[2], l;
	struct sluice_nsq_config cfg;
	struct sluice_engine *e;
	struct sluice_nsq *n;
	char url[64], cmd[64];
	const char *urls[1];

	nsqd_start(&d[0], 0, NULL);
	nsqd_start(&d[1], 0, NULL);
	child_start(&l, "SLUICE_FAKE_LOOKUPD", "fake_lookupd", NULL);
	nsq_cfg_base(&cfg);
	snprintf(url, sizeof(url), "127.0.0.1:%d", l.port);
	urls[0] = url;
	cfg.lookupd = urls;
	cfg.n_lookupd = 1;
	cfg.lookupd_poll_ns = 100 * SLUICE_NS_PER_MS;
	n = open_nsq(&cfg); /* 404 TOPIC_NOT_FOUND: no producers yet */
	CHECK_EQ(nsq_stats(n).connections, 0u);
	CHECK_EQ(nsq_stats(n).lookupd_errors, 0u);
	e = engine_on(n, 2, 0);
	snprintf(cmd, sizeof(cmd), "add 127.0.0.1 %d", d[0].port);
	child_ctl(&l, cmd);
	WAIT_FOR(nsq_stats(n).connections == 1);
	snprintf(cmd, sizeof(cmd), "add 127.0.0.1 %d", d[1].port);
	child_ctl(&l, cmd);
	WAIT_FOR(nsq_stats(n).connections == 2);
	pub_range(&d[0], 0, 10);
	pub_range(&d[1], 10, 10);
	WAIT_FOR(seen_total(20) == 20);
	/* A failing lookupd is skipped and nothing is dropped. */
	child_ctl(&l, "fail");
	WAIT_FOR(nsq_stats(n).lookupd_errors >= 2);
	CHECK_EQ(nsq_stats(n).connections, 2u);
	child_ctl(&l, "heal");
	snprintf(cmd, sizeof(cmd), "remove 127.0.0.1 %d", d[0].port);
	child_ctl(&l, cmd);
	WAIT_FOR(nsq_stats(n).connections == 1);
	pub_range(&d[1], 20, 10);
	WAIT_FOR(seen_total(30) == 30);
	(void)engine_finish(e);
	CHECK_EQ(nsq_stats(n).disconnects, 0u); /* removed by CLS, not lost */
	sluice_nsq_free(n);
	child_stop(&l);
	child_stop(&d[0]);
	child_stop(&d[1]);
}

/* A frame over max_body: clear error, reconnect, consumption goes on. */
static void
test_oversized_frame_reconnects(void)
{
	struct child d;
	struct sluice_nsq_config cfg;
	struct sluice_engine *e;
	struct sluice_nsq *n;
	char a[32], err[256];
	const char *addrs[1];

	nsqd_start(&d, 0, NULL);
	nsq_cfg_base(&cfg);
	aim(&cfg, addrs, a, d.port);
	n = open_nsq(&cfg);
	e = engine_on(n, 2, 0);
	child_ctl(&d, "oversized");
	WAIT_FOR(nsq_stats(n).reconnects == 1 && nsq_stats(n).connections == 1);
	CHECK_EQ(nsq_stats(n).error, SLUICE_EMSGSIZE);
	sluice_nsq_last_error(n, err, sizeof(err));
	CHECK(strstr(err, "bad frame") != NULL);
	pub_range(&d, 0, 5);
	WAIT_FOR(seen_total(5) == 5);
	(void)engine_finish(e);
	sluice_nsq_free(n);
	child_stop(&d);
}

/* Graceful stop: messages nsqd pushed that no handler took go back with
 * REQ 0, everything handled is FIN'd: fins + handed back = messages. */
static void
test_graceful_stop_requeues_remaining(void)
{
	struct child d;
	struct sluice_nsq_config cfg;
	struct sluice_source src;
	struct sluice_msg *m;
	struct sluice_nsq *n;

	nsq_cfg_base(&cfg);
	n = open_proxied(&d, &cfg);
	src = sluice_nsq_source(n);
	src.ops->set_credit(src.self, 5);
	pub_range(&d, 0, 5);
	WAIT_FOR(nsq_stats(n).messages == 5);
	CHECK_EQ(src.ops->fetch(src.self, &m, 1, 0), 1);
	CHECK_EQ(src.ops->ack(src.self, &m, 1), 0);
	src.ops->release(src.self, &m, 1);
	sluice_nsq_stop(n);
	sluice_nsq_free(n); /* the engine's close() path */
	WAIT_FOR(px_get(PX_REQS) == 4 && px_get(PX_FINS) == 1);
	px_stop();
	child_stop(&d);
}

/* 20 messages through a fake_nsqd started with @args, consumed with @cfg
 * (its address filled in here); returns the source's stats. */
static struct sluice_nsq_stats
through(const char *const *args, struct sluice_nsq_config *cfg)
{
	struct sluice_nsq_stats st;
	struct sluice_engine_stats es;
	struct sluice_engine *e;
	struct sluice_nsq *n;
	struct child d;
	char a[32];
	const char *addrs[1];

	memset(&seen.count, 0, sizeof(seen.count));
	nsqd_start(&d, 0, args);
	aim(cfg, addrs, a, d.port);
	n = open_nsq(cfg);
	e = engine_on(n, 2, 1);
	pub_range(&d, 0, 20);
	WAIT_FOR(seen_total(20) == 20);
	es = engine_finish(e);
	CHECK_EQ(es.handled, 20u);
	st = nsq_stats(n);
	CHECK_EQ(st.fins, 20u);
	sluice_nsq_free(n);
	child_stop(&d);
	return st;
}

/* TLS (verified by host name against the test CA), snappy, deflate and
 * AUTH, each negotiated by the handshake and carrying the traffic; TLS
 * asked of a server without a certificate, or a wrong AUTH secret, fail
 * the open with the reason. */
static void
test_tls_compression_and_auth(void)
{
	static const char *const snappy[] = { "--snappy", NULL };
	static const char *const deflate[] = { "--deflate", NULL };
	static const char *const auth[] = { "--auth-secret", "s3cret", NULL };
	struct sluice_nsq_config cfg;
	struct sluice_nsq *n = NULL;
	struct certs ct;
	struct child d;
	char a[32], err[256];
	const char *addrs[1];

	nsq_cfg_base(&cfg);
	cfg.snappy = true;
	(void)through(snappy, &cfg);
	nsq_cfg_base(&cfg);
	cfg.deflate = true;
	cfg.deflate_level = 3;
	(void)through(deflate, &cfg);
	nsq_cfg_base(&cfg);
	cfg.auth_secret = "s3cret";
	(void)through(auth, &cfg);
	certs_make(&ct);
	{
		const char *const tls[] = { "--tls-cert", ct.srv_cert,
					    "--tls-key",  ct.srv_key,
					    "--snappy",   NULL };

		nsq_cfg_base(&cfg);
		cfg.tls = true;
		cfg.tls_ca_file = ct.ca;
		cfg.snappy = true; /* TLS, then snappy inside it */
		(void)through(tls, &cfg);
	}
	/* TLS asked of a server that has no certificate. */
	nsqd_start(&d, 0, NULL);
	nsq_cfg_base(&cfg);
	aim(&cfg, addrs, a, d.port);
	cfg.tls = true;
	cfg.tls_ca_file = ct.ca;
	CHECK_EQ(sluice_nsq_open(&cfg, err, sizeof(err), &n), SLUICE_EPROTO);
	CHECK(strstr(err, "did not grant") != NULL);
	child_stop(&d);
	/* A wrong AUTH secret. */
	nsqd_start(&d, 0, auth);
	nsq_cfg_base(&cfg);
	aim(&cfg, addrs, a, d.port);
	cfg.auth_secret = "wrong";
	CHECK_EQ(sluice_nsq_open(&cfg, err, sizeof(err), &n), SLUICE_EPROTO);
	CHECK(strstr(err, "E_AUTH_FAILED") != NULL);
	child_stop(&d);
	certs_remove(&ct);
}

CHECK_MAIN(test_rdy_spread_and_sum, test_more_connections_than_credit,
	   test_accounting_under_drops_and_restart,
	   test_auto_touch_until_deadline, test_auto_touch_keeps_lease,
	   test_backoff_probe_recovery_across_reconnect,
	   test_lookupd_adds_and_removes_producers,
	   test_oversized_frame_reconnects,
	   test_graceful_stop_requeues_remaining, test_tls_compression_and_auth)
