/* SPDX-License-Identifier: MIT */
/*
 * test_nsq_producer.c - the NSQ producer and the NSQ dead-letter sink
 * against fake_nsqd, over real sockets.
 *
 * Each case starts fake_nsqd as a child (fake_nsqd_child.h), publishes
 * with the producer and reads back what nsqd queued with a raw consumer
 * connection in the test (handshake from nsq_conn.h, SUB, RDY, FIN), so
 * bodies are compared byte for byte as nsqd delivers them.  A topic with
 * no channel keeps its messages for the first one, so most cases publish
 * first and subscribe afterwards.  Batching is made deterministic with a
 * linger far longer than any case and flush(), which seals at once.
 * Waits are on callbacks (mutex + condvar) or on the producer's counters,
 * each with a 60 s guard that only turns a hang into a failure.
 */
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sluice/dlq.h>
#include <sluice/error.h>
#include <sluice/nsq_producer.h>

#include "check.h"
#include "fake_nsqd_child.h"
#include "proto/nsq.h"
#include "source/nsq_conn.h"

#define GUARD_NS (60 * SLUICE_NS_PER_S)
#define LONG_NS  (3600 * SLUICE_NS_PER_S)

static int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * SLUICE_NS_PER_S + ts.tv_nsec;
}

/* ---- a raw consumer ------------------------------------------------------ */

static void
sub_open(struct sl_nsq_conn *c, const char *topic, uint32_t rdy)
{
	struct sl_nsq_conn_config cc = { 0 };
	uint8_t cmd[32];
	char err[256];
	ssize_t n;
	int rc;

	sl_nsq_conn_init(c, (size_t)1 << 20);
	rc = sl_nsq_conn_handshake(c, "127.0.0.1", (uint16_t)srv.port, &cc,
				   topic, "c", now_ns() + GUARD_NS, err,
				   sizeof(err));
	if (rc)
		fprintf(stderr, "  sub: %s\n", err);
	CHECK_OK(rc);
	n = sl_nsq_enc_rdy(cmd, sizeof(cmd), rdy);
	CHECK_GT(n, 0);
	CHECK_OK(sl_nsq_conn_send(c, cmd, (size_t)n, now_ns() + GUARD_NS));
}

/* The next message's body into @buf (FIN'd); returns its length. */
static size_t
sub_next(struct sl_nsq_conn *c, uint8_t *buf, size_t cap)
{
	struct sl_nsq_frame f;
	struct sl_nsq_message m;
	uint8_t fin[64];
	size_t used = 0;
	ssize_t n;

	CHECK_OK(sl_nsq_conn_frame(c, now_ns() + GUARD_NS, &f, &used));
	CHECK_EQ(f.type, SL_NSQ_FRAME_MESSAGE);
	CHECK_OK(sl_nsq_message(f.data, f.len, &m));
	CHECK_LE(m.body_len, cap);
	memcpy(buf, m.body, m.body_len);
	n = sl_nsq_enc_fin(fin, sizeof(fin), m.id, SL_NSQ_ID_LEN);
	CHECK_GT(n, 0);
	sl_nsq_buf_consume(&c->rbuf, used);
	CHECK_OK(sl_nsq_conn_send(c, fin, (size_t)n, now_ns() + GUARD_NS));
	return m.body_len;
}

/* The next message must be exactly @s. */
static void
sub_expect(struct sl_nsq_conn *c, const void *s, size_t len)
{
	uint8_t buf[4096];
	size_t n = sub_next(c, buf, sizeof(buf));

	CHECK_EQ(n, len);
	CHECK_MEMEQ(buf, s, len);
}

/* ---- the producer -------------------------------------------------------- */

static struct sluice_nsq_producer_config
pcfg(void)
{
	struct sluice_nsq_producer_config cfg;

	sluice_nsq_producer_config_init(&cfg);
	cfg.port = (uint16_t)srv.port;
	cfg.client_id = "test";
	cfg.reconnect_min_ns = 10 * SLUICE_NS_PER_MS;
	cfg.reconnect_max_ns = 100 * SLUICE_NS_PER_MS;
	return cfg;
}

static struct sluice_nsq_producer *
prod_new(const struct sluice_nsq_producer_config *cfg)
{
	struct sluice_nsq_producer *p = NULL;
	char err[256];
	int rc = sluice_nsq_producer_new(cfg, err, sizeof(err), &p);

	if (rc)
		fprintf(stderr, "  producer: %s (%s)\n", err,
			sluice_err_name(rc));
	CHECK_OK(rc);
	CHECK(p != NULL);
	return p;
}

static struct sluice_nsq_producer_stats
pstats(struct sluice_nsq_producer *p)
{
	struct sluice_nsq_producer_stats st;

	sluice_nsq_producer_stats(p, &st);
	return st;
}

/* Results of async publishes, by index. */
#define NRES 5000

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int rc[NRES];
	int calls[NRES];
	int order[NRES]; /* indices in callback order */
	int n;
} res;

static void
res_init(void)
{
	memset(&res, 0, sizeof(res));
	pthread_mutex_init(&res.mu, NULL);
	pthread_cond_init(&res.cv, NULL);
}

static void
on_result(void *arg, int rc)
{
	int i = (int)(intptr_t)arg;

	pthread_mutex_lock(&res.mu);
	res.rc[i] = rc;
	res.calls[i]++;
	res.order[res.n++] = i;
	pthread_cond_broadcast(&res.cv);
	pthread_mutex_unlock(&res.mu);
}

static void
res_wait(int n)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 60;
	pthread_mutex_lock(&res.mu);
	while (res.n < n)
		CHECK_OK(pthread_cond_timedwait(&res.cv, &res.mu, &ts));
	pthread_mutex_unlock(&res.mu);
}

static void
last_error_has(struct sluice_nsq_producer *p, const char *what)
{
	char err[256];

	sluice_nsq_producer_last_error(p, err, sizeof(err));
	if (!strstr(err, what))
		fprintf(stderr, "  last error: '%s', want '%s'\n", err, what);
	CHECK(strstr(err, what) != NULL);
}

/* ---- cases --------------------------------------------------------------- */

/* PUB, MPUB and DPUB arrive byte-exact, in order, DPUB no earlier than
 * its delay. */
static void
test_pub_mpub_dpub_round_trip(void)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer_stats st;
	struct sluice_nsq_producer *p;
	struct sl_nsq_conn c;
	uint8_t bin[256], buf[64];
	char body[32];
	int64_t t0, t1;
	size_t n;
	int i;

	srv_start(NULL);
	res_init();
	cfg = pcfg();
	cfg.linger_ns = LONG_NS; /* only flush() and sync calls seal */
	p = prod_new(&cfg);
	CHECK_OK(sluice_nsq_publish(p, "t", "hello", 5));
	for (i = 0; i < 256; i++)
		bin[i] = (uint8_t)i; /* NUL, '\n', 0xff: all bytes */
	CHECK_OK(sluice_nsq_publish(p, "t", bin, sizeof(bin)));
	for (i = 0; i < 50; i++) {
		snprintf(body, sizeof(body), "m%d", i);
		CHECK_OK(sluice_nsq_publish_async(p, "t", body, strlen(body),
						  on_result,
						  (void *)(intptr_t)i));
	}
	CHECK_EQ(pstats(p).published, 2u); /* the 50 are lingering */
	CHECK_OK(sluice_nsq_producer_flush(p, now_ns() + GUARD_NS));
	res_wait(50);
	for (i = 0; i < 50; i++) {
		CHECK_EQ(res.rc[i], 0);
		CHECK_EQ(res.calls[i], 1);
	}
	st = pstats(p);
	CHECK_EQ(st.published, 52u);
	CHECK_EQ(st.commands, 3u); /* PUB, PUB, one MPUB */
	CHECK_EQ(st.mpubs, 1u);
	CHECK_EQ(st.max_batch, 50u);
	CHECK_EQ(st.failed, 0u);
	CHECK_EQ(st.bytes, 5u + 256u + 10u * 2u + 40u * 3u);

	sub_open(&c, "t", 100);
	sub_expect(&c, "hello", 5);
	sub_expect(&c, bin, sizeof(bin));
	for (i = 0; i < 50; i++) {
		snprintf(body, sizeof(body), "m%d", i);
		sub_expect(&c, body, strlen(body));
	}
	/* The channel exists now: a deferred message waits there. */
	t0 = now_ns();
	CHECK_OK(sluice_nsq_dpublish(p, "t", 300, "later", 5));
	n = sub_next(&c, buf, sizeof(buf));
	t1 = now_ns();
	CHECK_EQ(n, 5u);
	CHECK_MEMEQ(buf, "later", 5);
	CHECK_GE(t1 - t0, 300 * SLUICE_NS_PER_MS);
	CHECK_EQ(pstats(p).dpubs, 1u);
	sluice_nsq_producer_free(p);
	sl_nsq_conn_close(&c);
	srv_stop();
}

/* Thousands of PUBs in flight at once are answered in order. */
static void
test_many_in_flight_match_in_order(void)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer_stats st;
	struct sluice_nsq_producer *p;
	struct sl_nsq_conn c;
	char body[32];
	int i, n = 3000;

	srv_start(NULL);
	res_init();
	cfg = pcfg();
	cfg.batch_max = 1; /* one PUB per publish */
	cfg.linger_ns = 0;
	p = prod_new(&cfg);
	for (i = 0; i < n; i++) {
		snprintf(body, sizeof(body), "p%d", i);
		CHECK_OK(sluice_nsq_publish_async(p, "t", body, strlen(body),
						  on_result,
						  (void *)(intptr_t)i));
	}
	CHECK_OK(sluice_nsq_producer_flush(p, now_ns() + GUARD_NS));
	res_wait(n);
	for (i = 0; i < n; i++) {
		CHECK_EQ(res.rc[i], 0);
		CHECK_EQ(res.calls[i], 1);
		CHECK_EQ(res.order[i], i); /* FIFO matching */
	}
	st = pstats(p);
	CHECK_EQ(st.commands, (uint64_t)n);
	CHECK_EQ(st.mpubs, 0u);
	CHECK_EQ(st.max_batch, 1u);
	CHECK_EQ(st.in_flight, 0u);
	sub_open(&c, "t", 2500);
	for (i = 0; i < n; i++) {
		snprintf(body, sizeof(body), "p%d", i);
		sub_expect(&c, body, strlen(body));
	}
	sluice_nsq_producer_free(p);
	sl_nsq_conn_close(&c);
	srv_stop();
}

/* N small publishes become N / batch_max MPUBs; batch_bytes also cuts. */
static void
test_batching_coalesces(void)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer_stats st;
	struct sluice_nsq_producer *p;
	struct sl_nsq_conn c;
	uint8_t body[96];
	int i;

	srv_start(NULL);
	res_init();
	cfg = pcfg();
	cfg.linger_ns = LONG_NS;
	cfg.batch_max = 100;
	p = prod_new(&cfg);
	for (i = 0; i < 1000; i++)
		CHECK_OK(sluice_nsq_publish_async(p, "t", "x", 1, on_result,
						  (void *)(intptr_t)i));
	CHECK_OK(sluice_nsq_producer_flush(p, now_ns() + GUARD_NS));
	st = pstats(p);
	CHECK_EQ(st.published, 1000u);
	CHECK_EQ(st.mpubs, 10u);
	CHECK_EQ(st.commands, 10u);
	CHECK_EQ(st.max_batch, 100u);
	sluice_nsq_producer_free(p);

	/* 100 wire bytes a message, 1000 a batch: 9 fit (4 + 900). */
	cfg.batch_max = 1000;
	cfg.batch_bytes = 1000;
	p = prod_new(&cfg);
	memset(body, 'b', sizeof(body));
	for (i = 0; i < 90; i++)
		CHECK_OK(sluice_nsq_publish_async(p, "u", body, sizeof(body),
						  NULL, NULL));
	CHECK_OK(sluice_nsq_producer_flush(p, now_ns() + GUARD_NS));
	st = pstats(p);
	CHECK_EQ(st.published, 90u);
	CHECK_EQ(st.mpubs, 10u);
	CHECK_EQ(st.max_batch, 9u);
	sluice_nsq_producer_free(p);

	/* Topics are batched apart; the default linger seals by itself. */
	res_init();
	cfg = pcfg();
	p = prod_new(&cfg);
	CHECK_OK(sluice_nsq_publish_async(p, "a", "1", 1, on_result,
					  (void *)(intptr_t)0));
	CHECK_OK(sluice_nsq_publish_async(p, "b", "2", 1, on_result,
					  (void *)(intptr_t)1));
	res_wait(2); /* no flush: the linger timer sent them */
	CHECK_EQ(res.rc[0], 0);
	CHECK_EQ(res.rc[1], 0);
	CHECK_EQ(pstats(p).commands, 2u);
	sluice_nsq_producer_free(p);
	sub_open(&c, "b", 10);
	sub_expect(&c, "2", 1);
	sl_nsq_conn_close(&c);
	srv_stop();
}

/*
 * A queue of 1000 bytes: publishers wait for room, and each full batch
 * they seal must wake the I/O thread.  A swallowed wake-up stalls for half
 * a heartbeat interval; this catches it only when the race hits (the
 * benchmark found one such bug), so it is coverage more than proof.
 */
static void
test_backpressure_keeps_flowing(void)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer_stats st;
	struct sluice_nsq_producer *p;
	char body[16];
	int i, n = 20000;

	srv_start(NULL);
	cfg = pcfg();
	cfg.queue_bytes = 1000;
	cfg.batch_max = 10;
	cfg.linger_ns = LONG_NS;
	p = prod_new(&cfg);
	for (i = 0; i < n; i++) {
		snprintf(body, sizeof(body), "%d", i);
		CHECK_OK(sluice_nsq_publish_async(p, "t", body, strlen(body),
						  NULL, NULL));
	}
	CHECK_OK(sluice_nsq_producer_flush(p, now_ns() + GUARD_NS));
	st = pstats(p);
	CHECK_EQ(st.published, (uint64_t)n);
	CHECK_EQ(st.mpubs, (uint64_t)n / 10);
	sluice_nsq_producer_free(p);
	srv_stop();
}

/* Local refusals, then nsqd's: the failing publish gets the error, those
 * behind it are resent on a new connection. */
static void
test_errors(void)
{
	static const char *const args[] = { "--max-msg-size", "100",
					    "--max-req-timeout", "1000", NULL };
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer_stats st;
	struct sluice_nsq_producer *p;
	struct sl_nsq_conn c;
	uint8_t big[200];
	char name[80];

	srv_start(args);
	res_init();
	cfg = pcfg();
	cfg.max_msg_size = 1000; /* more than the server's 100 */
	cfg.batch_max = 1;
	cfg.linger_ns = 0;
	p = prod_new(&cfg);
	memset(big, 'z', sizeof(big));
	memset(name, 'a', 65);
	name[65] = '\0';
	/* Refused before anything is sent: nsqd would close on them. */
	CHECK_EQ(sluice_nsq_publish(p, "bad*topic", "x", 1), SLUICE_EINVAL);
	CHECK_EQ(sluice_nsq_publish(p, name, "x", 1), SLUICE_EINVAL);
	CHECK_EQ(sluice_nsq_publish(p, "t", "", 0), SLUICE_EINVAL);
	CHECK_EQ(sluice_nsq_publish_async(p, "t", big, 1001, on_result, NULL),
		 SLUICE_EMSGSIZE);
	CHECK_EQ(pstats(p).queued, 0u);
	/* nsqd's own limit. */
	CHECK_EQ(sluice_nsq_publish(p, "t", big, sizeof(big)), SLUICE_EINVAL);
	last_error_has(p, "E_BAD_MESSAGE");
	/* A bad one between two good ones, pipelined. */
	CHECK_OK(sluice_nsq_publish_async(p, "t", "A", 1, on_result,
					  (void *)(intptr_t)0));
	CHECK_OK(sluice_nsq_publish_async(p, "t", big, sizeof(big), on_result,
					  (void *)(intptr_t)1));
	CHECK_OK(sluice_nsq_publish_async(p, "t", "C", 1, on_result,
					  (void *)(intptr_t)2));
	CHECK_OK(sluice_nsq_producer_flush(p, now_ns() + GUARD_NS));
	res_wait(3);
	CHECK_EQ(res.rc[0], 0);
	CHECK_EQ(res.rc[1], SLUICE_EINVAL);
	CHECK_EQ(res.rc[2], 0);
	/* DPUB beyond --max-req-timeout: E_INVALID. */
	CHECK_EQ(sluice_nsq_dpublish(p, "t", 5000, "late", 4), SLUICE_EINVAL);
	last_error_has(p, "E_INVALID");
	st = pstats(p);
	CHECK_EQ(st.errors, 3u);
	CHECK_EQ(st.failed, 3u);
	CHECK_EQ(st.published, 2u);
	CHECK_GE(st.connects, 3u); /* each fatal error costs the connection */
	sluice_nsq_producer_free(p);
	sub_open(&c, "t", 10);
	sub_expect(&c, "A", 1);
	sub_expect(&c, "C", 1);
	sl_nsq_conn_close(&c);
	srv_stop();
}

/* Poll the producer's counters until @cond holds. */
#define WAIT_PSTATS(p, st, cond) \
	WAIT_UNTIL(((st) = pstats(p), (cond)), "WAIT_PSTATS: " #cond)

/* After nsqd drops the connection, the next publish reconnects. */
static void
test_reconnect_after_drop(void)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer_stats st;
	struct sluice_nsq_producer *p;
	struct sl_nsq_conn c;

	srv_start(NULL);
	cfg = pcfg();
	p = prod_new(&cfg);
	CHECK_OK(sluice_nsq_publish(p, "t", "before", 6));
	srv_ctl("drop");
	WAIT_PSTATS(p, st, !st.connected);
	last_error_has(p, "closed");
	CHECK_OK(sluice_nsq_publish(p, "t", "after", 5));
	st = pstats(p);
	CHECK_EQ(st.connects, 2u);
	CHECK(st.connected);
	sluice_nsq_producer_free(p);
	sub_open(&c, "t", 10);
	sub_expect(&c, "before", 6);
	sub_expect(&c, "after", 5);
	sl_nsq_conn_close(&c);
	srv_stop();
}

/*
 * A drop with thousands in flight: every publish gets exactly one result,
 * and every one reported 0 was queued by nsqd (at least once).  With
 * retries, all of them succeed.
 */
static void
drop_in_flight(uint32_t retries)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer *p;
	struct sl_nsq_conn c;
	static int seen[NRES];
	uint8_t buf[64];
	char body[32];
	int i, ok = 0, n = NRES, got;

	srv_start(NULL);
	res_init();
	memset(seen, 0, sizeof(seen));
	cfg = pcfg();
	cfg.batch_max = 1;
	cfg.linger_ns = 0;
	cfg.retries = retries;
	p = prod_new(&cfg);
	for (i = 0; i < n; i++) {
		snprintf(body, sizeof(body), "%d", i);
		CHECK_OK(sluice_nsq_publish_async(p, "t", body, strlen(body),
						  on_result,
						  (void *)(intptr_t)i));
		if (i == n / 4)
			srv_ctl("drop");
	}
	CHECK_OK(sluice_nsq_producer_flush(p, now_ns() + GUARD_NS));
	for (i = 0; i < n; i++) {
		CHECK_EQ(res.calls[i], 1);
		CHECK(res.rc[i] == 0 || res.rc[i] == SLUICE_EDISCONNECTED);
		if (retries)
			CHECK_EQ(res.rc[i], 0);
		ok += res.rc[i] == 0;
	}
	CHECK_EQ(pstats(p).published, (uint64_t)ok);
	/* Everything published: nsqd holds each OK'd one (maybe twice). */
	CHECK_OK(sluice_nsq_publish(p, "t", "end", 3));
	sluice_nsq_producer_free(p);
	sub_open(&c, "t", 2500);
	for (got = 0;; got++) {
		size_t len = sub_next(&c, buf, sizeof(buf) - 1);

		buf[len] = '\0';
		if (strcmp((char *)buf, "end") == 0)
			break;
		i = (int)strtol((char *)buf, NULL, 10);
		CHECK(i >= 0 && i < n);
		seen[i]++;
	}
	for (i = 0; i < n; i++)
		if (res.rc[i] == 0)
			CHECK_GE(seen[i], 1);
	sl_nsq_conn_close(&c);
	srv_stop();
}

static void
test_drop_in_flight_without_retries(void)
{
	drop_in_flight(0);
}

static void
test_drop_in_flight_with_retries(void)
{
	drop_in_flight(3);
}

/* No server: new() fails with a reason; a server that went away fails
 * the waiting publishes with the connect error. */
static void
test_unreachable(void)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer *p = NULL;
	char err[256];
	int hold, rc;

	sluice_nsq_producer_config_init(&cfg);
	cfg.port = (uint16_t)closed_port(&hold);
	CHECK_LT(sluice_nsq_producer_new(&cfg, err, sizeof(err), &p), 0);
	CHECK(p == NULL);
	CHECK(strstr(err, "connect") != NULL);
	cfg.batch_max = 0;
	CHECK_EQ(sluice_nsq_producer_new(&cfg, err, sizeof(err), &p),
		 SLUICE_EINVAL);
	close(hold);

	srv_start(NULL);
	cfg = pcfg();
	p = prod_new(&cfg);
	srv_stop();
	rc = sluice_nsq_publish(p, "t", "x", 1);
	/* Either the write met the closed socket or the reconnect failed. */
	CHECK_LT(rc, 0);
	rc = sluice_nsq_publish(p, "t", "y", 1);
	CHECK_LT(rc, 0);
	last_error_has(p, "connect");
	CHECK_GE(pstats(p).connect_failures, 1u);
	sluice_nsq_producer_free(p);
}

/* The NSQ sink publishes the file sink's record, OK'd before it returns. */
static void
test_dlq_nsq_record(void)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer *p;
	struct sluice_dlq d;
	struct sluice_error *why;
	struct sluice_msg m = { 0 };
	struct sl_nsq_conn c;
	static const uint8_t bin[] = { 0xff, 0x00, 0x01 };
	uint8_t buf[4096];
	json_error_t je;
	json_t *o;
	size_t n;

	srv_start(NULL);
	cfg = pcfg();
	p = prod_new(&cfg);
	CHECK_EQ(sluice_dlq_nsq_open(p, true, "bad topic", &d), SLUICE_EINVAL);
	CHECK_OK(sluice_dlq_nsq_open(p, true, "dead", &d));
	CHECK_STREQ(d.ops->name, "nsq");
	why = sluice_error_new(SLUICE_CLASS_PERMANENT, 42, "boom %d", 7);
	m.body = (const uint8_t *)"payload";
	m.body_len = 7;
	m.attempts = 3;
	m.id = "id-1";
	m.id_len = 4;
	CHECK_OK(d.ops->write(d.self, "queue", &m, why));
	CHECK_EQ(pstats(p).published, 1u); /* OK'd before write returned */
	m.body = bin;
	m.body_len = sizeof(bin);
	CHECK_OK(d.ops->write(d.self, "queue", &m, NULL));
	sluice_dlq_close(&d); /* frees the producer */

	sub_open(&c, "dead", 10);
	n = sub_next(&c, buf, sizeof(buf));
	CHECK(buf[n - 1] != '\n');
	o = json_loadb((const char *)buf, n, 0, &je);
	CHECK(json_is_object(o));
	CHECK(json_is_string(json_object_get(o, "time")));
	CHECK_STREQ(json_string_value(json_object_get(o, "source")), "queue");
	CHECK_STREQ(json_string_value(json_object_get(o, "id")), "id-1");
	CHECK_EQ(json_integer_value(json_object_get(o, "attempts")), 3);
	CHECK_STREQ(json_string_value(json_object_get(o, "class")),
		    "permanent");
	CHECK_EQ(json_integer_value(json_object_get(o, "code")), 42);
	CHECK(strstr(json_string_value(json_object_get(o, "reason")),
		     "boom 7") != NULL);
	CHECK_STREQ(json_string_value(json_object_get(o, "body")), "payload");
	json_decref(o);
	n = sub_next(&c, buf, sizeof(buf));
	o = json_loadb((const char *)buf, n, 0, &je);
	CHECK(json_is_object(o));
	CHECK(json_object_get(o, "body") == NULL);
	CHECK_STREQ(json_string_value(json_object_get(o, "body_base64")),
		    "/wAB");
	CHECK(json_is_null(json_object_get(o, "class")));
	json_decref(o);
	sluice_error_free(why);
	sl_nsq_conn_close(&c);

	/* nsqd gone: the record is refused, so the engine keeps it. */
	p = prod_new(&cfg);
	CHECK_OK(sluice_dlq_nsq_open(p, true, "dead", &d));
	srv_stop();
	CHECK_LT(d.ops->write(d.self, "queue", &m, NULL), 0);
	sluice_dlq_close(&d);
}

CHECK_MAIN(test_pub_mpub_dpub_round_trip, test_many_in_flight_match_in_order,
	   test_batching_coalesces, test_backpressure_keeps_flowing,
	   test_errors, test_reconnect_after_drop,
	   test_drop_in_flight_without_retries,
	   test_drop_in_flight_with_retries, test_unreachable,
	   test_dlq_nsq_record)
