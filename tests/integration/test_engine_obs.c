/* SPDX-License-Identifier: MIT */
/*
 * test_engine_obs.c - the engine's observability, end to end over the
 * in-process queue on a virtual clock: a traced run gives every delivery
 * its async journey (begin and end) and a matched flow from fetch to
 * handler on properly nested thread tracks; the exported histograms count
 * every handler call; the in-flight table shows a message stuck in a
 * blocked handler with its stage, worker, age and deadline; the failure
 * ring keeps the last 64 failures, newest first.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include <sluice/sluice.h>
#include <sluice/trace.h>

#include "proc.h"
#include "support.h"

/* ---- a traced run ------------------------------------------------------- */

static _Atomic long calls;

/* Every tenth message fails once (TEMPORARY), so some deliveries are
 * retries with their own journeys. */
static struct sluice_error *
flaky(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	(void)ud;
	(void)ctx;
	atomic_fetch_add(&calls, 1);
	if (msg_index(m) % 10 == 0 && sluice_msg_attempts(m) == 1)
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, 75, "flaky %d",
					msg_index(m));
	return NULL;
}

static void
test_traced_run_has_every_journey(void)
{
	struct sluice_handler h = { flaky, NULL };
	struct sluice_batch_handler nob = { NULL, NULL };
	struct sluice_engine_stats st;
	struct sluice_trace_stats ts;
	char path[] = "/tmp/test_engine_obs_trace.XXXXXX", expect[512];
	struct rig r;
	int fd;

	CHECK_OK(sluice_trace_start(NULL));
	rig_init(&r, 64);
	r.cfg.workers = 3;
	r.cfg.prefetch = 4;
	rig_start(&r, h, nob, NULL);
	rig_publish(&r, 0, 300);
	rig_drive_to_end(&r);
	CHECK_OK(sluice_trace_stop());
	rig_accounting(&r, &st);
	CHECK_EQ(st.handled, 300);
	CHECK_EQ(st.temporary, 30);
	CHECK_EQ(st.delivered, 330);
	sluice_trace_stats(&ts);
	CHECK_EQ(ts.dropped, 0);
	fd = mkstemp(path);
	CHECK(fd >= 0);
	close(fd);
	CHECK_OK(sluice_trace_write_path(path, SLUICE_TRACE_JSON));
	/* Every delivery is one async "message" journey; every handler call
	 * has its hand-off flow and ends in an ack or a retry. */
	snprintf(expect, sizeof(expect),
		 "name:w=sluice-worker-0 count:b:message=%llu "
		 "count:e:message=%llu count:b:handler=%ld "
		 "count:b:ack+b:retry=%ld count:s:handoff=%ld "
		 "count:f:handoff=%ld min:C:credit=1 min:B:fetch=1",
		 (unsigned long long)st.delivered,
		 (unsigned long long)st.delivered, atomic_load(&calls),
		 atomic_load(&calls), atomic_load(&calls), atomic_load(&calls));
	CHECK_EQ(check_trace_file(path, expect, false), 0);
	CHECK_OK(unlink(path));
	rig_free(&r);
}

/* ---- histograms --------------------------------------------------------- */

/* The value of the series @name (a full series name with labels). */
static double
series(const char *text, const char *name)
{
	const char *p = text;
	size_t n = strlen(name);

	while ((p = strstr(p, name)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p += n;
	}
	CHECK_FAIL(name);
}

static void
test_histograms_count_every_call(void)
{
	struct sluice_handler h = { flaky, NULL };
	struct sluice_batch_handler nob = { NULL, NULL };
	struct sluice_engine_stats st;
	struct sluice_metrics *m;
	struct rig r;
	char *text;
	long n;

	CHECK_OK(sluice_metrics_new(&m));
	rig_init(&r, 64);
	r.cfg.workers = 2;
	CHECK_OK(sluice_queue_new(&r.qcfg, &r.q));
	CHECK_OK(sluice_engine_new(&r.cfg, sluice_queue_source(r.q), h, nob,
				   NULL, &r.e));
	CHECK_OK(sluice_engine_export_metrics(r.e, m));
	CHECK_OK(sluice_engine_start(r.e));
	rig_publish(&r, 0, 200);
	rig_drive_to_end(&r);
	rig_accounting(&r, &st);
	n = atomic_load(&calls);
	CHECK_EQ(n, 220);
	CHECK_EQ(st.handled + st.temporary, (uint64_t)n);
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK_EQ(series(text, "sluice_handler_latency_seconds_count"), n);
	CHECK_EQ(series(text,
			"sluice_handler_latency_seconds_bucket{le=\"+Inf\"}"),
		 n);
	CHECK_EQ(series(text, "sluice_queue_wait_seconds_count"), n);
	CHECK_GE(series(text, "sluice_handler_latency_seconds_sum"), 0.0);
	/* Every delivery came through some fetch. */
	CHECK_EQ(series(text, "sluice_fetch_size_messages_sum"), st.delivered);
	CHECK_GT(series(text, "sluice_fetch_size_messages_count"), 0);
	CHECK_EQ(series(text, "sluice_batch_size_messages_count"), 0);
	CHECK_EQ(series(text,
			"sluice_handler_errors_total{class=\"temporary\"}"),
		 20);
	CHECK_EQ(series(text, "sluice_handler_errors_total{class=\"timeout\"}"),
		 0);
	CHECK_EQ(series(text, "sluice_workers_busy"), 0);
	sluice_metrics_free_text(text);
	rig_free(&r);
	sluice_metrics_free(m);
}

/* ---- the in-flight table ------------------------------------------------ */

enum which { HANDLED, PERMANENT };

static int
stat_is(struct rig *r, enum which w, uint64_t n)
{
	struct sluice_engine_stats st;

	sluice_engine_stats(r->e, &st);
	return (w == HANDLED ? st.handled : st.permanent) == n;
}

static struct monitor entered;
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_open;

/* "m1" blocks until the gate opens; everything else succeeds. */
static struct sluice_error *
blocking(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	(void)ud;
	(void)ctx;
	if (msg_index(m) != 1)
		return NULL;
	monitor_post(&entered);
	pthread_mutex_lock(&gate_mu);
	while (!gate_open)
		pthread_cond_wait(&gate_cv, &gate_mu);
	pthread_mutex_unlock(&gate_mu);
	return NULL;
}

static const char inflight_py[] =
	"import json, sys\n"
	"d = json.load(open(sys.argv[1]))\n"
	"assert d['workers'] == 2, d\n"
	"rows = d['in_flight']\n"
	"assert len(rows) == 1, rows\n"
	"r = rows[0]\n"
	"assert r['id'] == 'm1' and r['stage'] == 'handler', r\n"
	"assert r['source'] == 'queue' and r['attempt'] == 1, r\n"
	"assert r['worker'] in (0, 1), r\n"
	"assert 5000 <= r['age_ms'] < 5001, r\n"
	"assert 24999 < r['deadline_left_ms'] <= 25000, r\n"
	"assert d['failures'] == [], d\n";

/* Render the flight recorder as JSON and run @script on it. */
static void
check_inflight_json(struct sluice_engine *e, const char *script)
{
	char path[] = "/tmp/test_engine_obs_inflight.XXXXXX", *text;
	size_t len;
	FILE *f;
	int fd;

	CHECK_OK(sluice_engine_inflight(e, SLUICE_INFLIGHT_JSON, &text, &len));
	CHECK_EQ(strlen(text), len);
	fd = mkstemp(path);
	CHECK(fd >= 0);
	f = fdopen(fd, "w");
	CHECK(f != NULL);
	CHECK_EQ(fwrite(text, 1, len, f), len);
	CHECK_OK(fclose(f));
	sluice_engine_free_text(text);
	CHECK_EQ(run_python(script, path, false), 0);
	CHECK_OK(unlink(path));
}

static void
test_inflight_shows_blocked_handler(void)
{
	struct sluice_handler h = { blocking, NULL };
	struct sluice_batch_handler nob = { NULL, NULL };
	struct sluice_engine_stats st;
	char *text;
	size_t len;
	struct rig r;

	monitor_init(&entered);
	rig_init(&r, 64);
	r.cfg.workers = 2;
	r.cfg.prefetch = 0; /* one message per fetch: none waits behind m1 */
	r.cfg.timeout_ns = 30 * SLUICE_NS_PER_S;
	rig_start(&r, h, nob, NULL);
	rig_publish(&r, 0, 3);
	monitor_wait(&entered, 1);
	/* The other two finish on the other worker. */
	SPIN_UNTIL(stat_is(&r, HANDLED, 2));
	CHECK_OK(sluice_clock_advance(r.clock, 5 * SLUICE_NS_PER_S));
	CHECK_OK(
		sluice_engine_inflight(r.e, SLUICE_INFLIGHT_TEXT, &text, &len));
	CHECK_EQ(strlen(text), len);
	CHECK(strstr(text, " m1\n") != NULL);
	CHECK(strstr(text, "handler") != NULL);
	CHECK(strstr(text, "1 message(s)") != NULL);
	sluice_engine_free_text(text);
	check_inflight_json(r.e, inflight_py);
	CHECK_EQ(sluice_engine_inflight(r.e, (enum sluice_inflight_format)7,
					&text, NULL),
		 SLUICE_EINVAL);
	pthread_mutex_lock(&gate_mu);
	gate_open = true;
	pthread_cond_broadcast(&gate_cv);
	pthread_mutex_unlock(&gate_mu);
	rig_drive_to_end(&r);
	rig_accounting(&r, &st);
	/* Nothing is in flight any more. */
	CHECK_OK(
		sluice_engine_inflight(r.e, SLUICE_INFLIGHT_TEXT, &text, NULL));
	CHECK(strstr(text, "0 message(s)") != NULL);
	sluice_engine_free_text(text);
	rig_free(&r);
}

/* ---- the failure ring --------------------------------------------------- */

static struct sluice_error *
poison(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	(void)ud;
	(void)ctx;
	return sluice_error_new(SLUICE_CLASS_PERMANENT, 65, "bad payload %d",
				msg_index(m));
}

static const char ring_py[] =
	"import json, sys\n"
	"f = json.load(open(sys.argv[1]))['failures']\n"
	"assert len(f) == 64, len(f)\n"
	"ids = [x['id'] for x in f]\n"
	"assert ids == ['m%d' % i for i in range(69, 5, -1)], ids\n"
	"assert all(x['class'] == 'permanent' for x in f)\n"
	"assert f[0]['error'] == 'bad payload 69', f[0]\n"
	"assert all(x['attempt'] == 1 for x in f)\n";

static void
test_failure_ring_keeps_last(void)
{
	struct sluice_handler h = { poison, NULL };
	struct sluice_batch_handler nob = { NULL, NULL };
	struct sluice_engine_stats st;
	struct rig r;
	char *text;

	rig_init(&r, 128);
	r.cfg.workers = 1; /* one settler: the ring's order is the ids' */
	r.cfg.prefetch = 0;
	rig_start(&r, h, nob, NULL);
	rig_publish(&r, 0, 70);
	SPIN_UNTIL(stat_is(&r, PERMANENT, 70) && rig_settled(&r));
	check_inflight_json(r.e, ring_py);
	CHECK_OK(
		sluice_engine_inflight(r.e, SLUICE_INFLIGHT_TEXT, &text, NULL));
	CHECK(strstr(text, "bad payload 69") != NULL);
	CHECK(strstr(text, "bad payload 5\n") == NULL);
	CHECK(strstr(text, "64 failure(s) shown, 70 in all") != NULL);
	sluice_engine_free_text(text);
	sluice_engine_stop(r.e, SLUICE_STOP_NOW);
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	rig_accounting(&r, &st);
	rig_free(&r);
}

CHECK_MAIN(test_traced_run_has_every_journey, test_histograms_count_every_call,
	   test_inflight_shows_blocked_handler, test_failure_ring_keeps_last)
