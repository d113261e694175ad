/* SPDX-License-Identifier: MIT */
/*
 * test_trace.c - the execution trace recorder and its writers.
 *
 * Producer threads hand jobs to consumer threads through a condvar queue,
 * tracing slices, instants, counters, a flow per job (out inside the
 * producer's slice, in inside the consumer's) and an async span per job
 * (begun by the producer, ended by the consumer).  The JSON is checked by
 * a Python script in a child process: valid JSON, a thread_name for every
 * tid, B/E nesting per thread, both ends of every flow, balanced async
 * spans, and the exact counts recorded.  The Perfetto output must decode
 * with `protoc --decode_raw` and name the threads.  Also: probes record
 * nothing while off, the two buffer-full behaviours, start/stop/start, and
 * the repair of slices cut in half by start and stop.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sluice/trace.h>

#include "check.h"
#include "obs/trace_int.h"
#include "proc.h"

/* ---- helpers ------------------------------------------------------------ */

/* Write the stopped trace as JSON and run the checker with @expect
 * ("key=value ..."); returns the checker's exit status.  @quiet hides the
 * checker's complaints (for runs that are meant to fail). */
static int
check_json_q(const char *expect, bool quiet)
{
	char dir[64], path[128];
	int rc;

	tmpdir_make(dir, sizeof(dir), "test_trace");
	snprintf(path, sizeof(path), "%s/trace.json", dir);
	CHECK_OK(sluice_trace_write_path(path, SLUICE_TRACE_JSON));
	rc = check_trace_file(path, expect, quiet);
	tmpdir_remove(dir);
	return rc;
}

static int
check_json(const char *expect)
{
	return check_json_q(expect, false);
}

/* ---- the producer/consumer workload ------------------------------------- */

#define QCAP 16

struct jobq {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint64_t ids[QCAP];
	size_t head, len;
	int producers_left;
};

struct worker_arg {
	struct jobq *q;
	int index;
	int jobs;
	char name[32];
};

static void
q_push(struct jobq *q, uint64_t id)
{
	pthread_mutex_lock(&q->mu);
	while (q->len == QCAP)
		pthread_cond_wait(&q->cv, &q->mu);
	q->ids[(q->head + q->len++) % QCAP] = id;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

/* 0 when every producer is done and the queue is empty. */
static uint64_t
q_pop(struct jobq *q)
{
	uint64_t id = 0;

	pthread_mutex_lock(&q->mu);
	while (q->len == 0 && q->producers_left > 0)
		pthread_cond_wait(&q->cv, &q->mu);
	if (q->len) {
		id = q->ids[q->head];
		q->head = (q->head + 1) % QCAP;
		q->len--;
		pthread_cond_broadcast(&q->cv);
	}
	pthread_mutex_unlock(&q->mu);
	return id;
}

static void *
producer_main(void *p)
{
	struct worker_arg *a = p;
	int i;

	sluice_trace_set_thread_name(a->name);
	for (i = 0; i < a->jobs; i++) {
		uint64_t id = ((uint64_t)(a->index + 1) << 32) | (uint64_t)i;

		sl_tr_begin("produce");
		sl_tr_begin_arg("prepare", "i", (uint32_t)i);
		sl_tr_end("prepare");
		sl_tr_async_begin("job", id, "attempt", 1);
		sl_tr_flow_out("handoff", id);
		sl_tr_counter("queued", i);
		q_push(a->q, id);
		sl_tr_end("produce");
	}
	pthread_mutex_lock(&a->q->mu);
	a->q->producers_left--;
	pthread_cond_broadcast(&a->q->cv);
	pthread_mutex_unlock(&a->q->mu);
	return NULL;
}

static void *
consumer_main(void *p)
{
	struct worker_arg *a = p;
	uint64_t id;

	sluice_trace_set_thread_name(a->name);
	/* One event before the first job: a consumer that gets no job (the
	 * other took them all) still has a track. */
	sl_tr_instant("ready", "i", 0);
	while ((id = q_pop(a->q)) != 0) {
		sl_tr_begin("consume");
		sl_tr_flow_in("handoff", id);
		sl_tr_instant("work", "i", (uint32_t)id);
		sl_tr_async_end("job", id);
		sl_tr_end("consume");
	}
	return NULL;
}

enum { NPROD = 2, NCONS = 2, JOBS = 300 };

static void
run_workload(void)
{
	static struct jobq q;
	struct worker_arg args[NPROD + NCONS];
	pthread_t t[NPROD + NCONS];
	int i;

	memset(&q, 0, sizeof(q));
	pthread_mutex_init(&q.mu, NULL);
	pthread_cond_init(&q.cv, NULL);
	q.producers_left = NPROD;
	for (i = 0; i < NPROD + NCONS; i++) {
		args[i].q = &q;
		args[i].index = i;
		args[i].jobs = JOBS;
		snprintf(args[i].name, sizeof(args[i].name), "%s-%d",
			 i < NPROD ? "prod" : "cons", i);
		CHECK_OK(pthread_create(
			&t[i], NULL, i < NPROD ? producer_main : consumer_main,
			&args[i]));
	}
	for (i = 0; i < NPROD + NCONS; i++)
		CHECK_OK(pthread_join(t[i], NULL));
}

/* ---- cases -------------------------------------------------------------- */

static void
test_json_from_many_threads(void)
{
	struct sluice_trace_stats st;
	char expect[256];

	CHECK_OK(sluice_trace_start(NULL));
	CHECK(sluice_trace_enabled());
	run_workload();
	CHECK_OK(sluice_trace_stop());
	CHECK(!sluice_trace_enabled());
	sluice_trace_stats(&st);
	CHECK_EQ(st.dropped, 0);
	CHECK_EQ(st.threads, NPROD + NCONS);
	/* per job: produce B/E, prepare B/E, async b, flow s, counter;
	 * consume B/E, flow f, instant, async e; per consumer: "ready". */
	CHECK_EQ(st.events, (uint64_t)NPROD * JOBS * 12 + NCONS);
	snprintf(expect, sizeof(expect),
		 "flows=%d async=%d counters=%d instants=%d threads=%d "
		 "B=%d name:prod-0=prod-0 name:cons-3=cons-3",
		 NPROD * JOBS, NPROD * JOBS, NPROD * JOBS, NPROD * JOBS + NCONS,
		 NPROD + NCONS, NPROD * JOBS * 3);
	CHECK_EQ(check_json(expect), 0);
}

static void
test_checker_rejects_bad_nesting(void)
{
	/* The checker must be able to fail: feed it a trace it must
	 * reject (wrong counts), so a passing run above means something. */
	CHECK_OK(sluice_trace_start(NULL));
	run_workload();
	CHECK_OK(sluice_trace_stop());
	CHECK_NE(check_json_q("flows=1", true), 0);
	CHECK_NE(check_json_q("name:nobody=nobody", true), 0);
}

static void
test_perfetto_decodes(void)
{
	char dir[64], path[128], cmd[512], line[512];
	bool prod = false, cons = false, flow = false;
	FILE *f;

	tmpdir_make(dir, sizeof(dir), "test_trace");
	CHECK_OK(sluice_trace_start(NULL));
	run_workload();
	CHECK_OK(sluice_trace_stop());
	snprintf(path, sizeof(path), "%s/trace.pftrace", dir);
	CHECK_OK(sluice_trace_write_path(path, SLUICE_TRACE_PERFETTO));
	snprintf(cmd, sizeof(cmd),
		 "timeout 60 protoc --decode_raw < %s > %s/decoded.txt", path,
		 dir);
	CHECK_EQ(system(cmd), 0);
	snprintf(cmd, sizeof(cmd), "%s/decoded.txt", dir);
	f = fopen(cmd, "r");
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		prod |= strstr(line, "\"prod-0\"") != NULL;
		cons |= strstr(line, "\"cons-2\"") != NULL;
		/* flow_ids (47) on a track event */
		flow |= strstr(line, "47: 0x") != NULL;
	}
	fclose(f);
	CHECK(prod);
	CHECK(cons);
	CHECK(flow);
	tmpdir_remove(dir);
}

static void
test_disabled_probes_record_nothing(void)
{
	struct sluice_trace_stats st;
	int i;

	for (i = 0; i < 100; i++)
		sl_tr_instant("before", NULL, 0);
	CHECK_OK(sluice_trace_start(NULL));
	for (i = 0; i < 10; i++)
		sl_tr_instant("during", NULL, 0);
	CHECK_OK(sluice_trace_stop());
	for (i = 0; i < 100; i++) {
		sl_tr_instant("after", NULL, 0);
		sluice_trace_begin("after");
		sluice_trace_end("after");
	}
	sluice_trace_stats(&st);
	CHECK_EQ(st.events, 10);
	CHECK_EQ(st.dropped, 0);
	CHECK_EQ(check_json("instants=10 has:during=during not:before=before "
			    "not:after=after"),
		 0);
}

enum { FILL = 5000 };

static void
fill(void)
{
	uint32_t i;

	for (i = 0; i < FILL; i++)
		sl_tr_instant("fill", "i", i);
}

static void
test_buffer_full_drops(void)
{
	struct sluice_trace_options o;
	struct sluice_trace_stats st;
	char expect[128];

	sluice_trace_options_init(&o);
	o.buffer_bytes = 16384;
	CHECK_OK(sluice_trace_start(&o));
	fill();
	CHECK_OK(sluice_trace_stop());
	sluice_trace_stats(&st);
	CHECK_EQ(st.chunks_used, st.chunks_total);
	CHECK_GT(st.dropped, 0);
	CHECK_GT(st.events, 0);
	CHECK_EQ(st.events + st.dropped, FILL);
	CHECK_LE(st.events * 40, o.buffer_bytes);
	CHECK_EQ(st.overwritten, 0);
	/* The oldest events are kept, the newest dropped. */
	snprintf(expect, sizeof(expect), "instants=%llu arg:0=0 noarg:%d=%d",
		 (unsigned long long)st.events, FILL - 1, FILL - 1);
	CHECK_EQ(check_json(expect), 0);
}

static void
test_ring_mode_keeps_newest(void)
{
	struct sluice_trace_options o;
	struct sluice_trace_stats st;
	char expect[128];

	sluice_trace_options_init(&o);
	o.buffer_bytes = 16384;
	o.ring = true;
	CHECK_OK(sluice_trace_start(&o));
	fill();
	CHECK_OK(sluice_trace_stop());
	sluice_trace_stats(&st);
	CHECK(st.ring);
	CHECK_EQ(st.dropped, 0);
	CHECK_GT(st.overwritten, 0);
	CHECK_GT(st.events, 0);
	CHECK_EQ(st.events + st.overwritten, FILL);
	snprintf(expect, sizeof(expect), "instants=%llu arg:%d=%d noarg:0=0",
		 (unsigned long long)st.events, FILL - 1, FILL - 1);
	CHECK_EQ(check_json(expect), 0);
}

static void
test_start_stop_start(void)
{
	struct sluice_trace_options o;
	struct sluice_trace_stats st;
	void *out;
	size_t len;

	CHECK_EQ(sluice_trace_stop(), SLUICE_ESTATE);
	sluice_trace_options_init(&o);
	o.buffer_bytes = 100;
	CHECK_EQ(sluice_trace_start(&o), SLUICE_EINVAL);
	CHECK_OK(sluice_trace_start(NULL));
	CHECK_EQ(sluice_trace_start(NULL), SLUICE_EBUSY);
	CHECK_EQ(sluice_trace_write(SLUICE_TRACE_JSON, &out, &len),
		 SLUICE_ESTATE);
	sluice_trace_begin("first");
	sluice_trace_end("first");
	CHECK_OK(sluice_trace_stop());
	/* A second trace starts empty, with another pool size. */
	o.buffer_bytes = 1 << 20;
	CHECK_OK(sluice_trace_start(&o));
	sluice_trace_counter("second", 7);
	CHECK_OK(sluice_trace_stop());
	sluice_trace_stats(&st);
	CHECK_EQ(st.events, 1);
	CHECK_OK(sluice_trace_write(SLUICE_TRACE_JSON, &out, &len));
	CHECK(strstr(out, "\"second\"") != NULL);
	CHECK(strstr(out, "\"first\"") == NULL);
	CHECK_EQ(strlen(out), len);
	sluice_trace_free(out);
	CHECK_EQ(sluice_trace_write((enum sluice_trace_format)9, &out, &len),
		 SLUICE_EINVAL);
	/* A dead thread's events survive until the next start. */
	run_workload();
	CHECK_OK(sluice_trace_start(NULL));
	run_workload();
	CHECK_OK(sluice_trace_stop());
	sluice_trace_stats(&st);
	CHECK_EQ(st.events, (uint64_t)NPROD * JOBS * 12 + NCONS);
	CHECK_EQ(check_json("threads=4 flows=600"), 0);
}

static void
test_writer_repairs_cut_slices(void)
{
	/* "outer" begins before the start and ends inside the trace; "open"
	 * begins inside and never ends before the stop; a flow and an async
	 * span have only one half recorded. */
	sluice_trace_begin("outer");
	CHECK_OK(sluice_trace_start(NULL));
	sluice_trace_begin("inner");
	sl_tr_flow_out("lonely", 42);
	sl_tr_async_end("job", 43);
	sluice_trace_end("inner");
	sluice_trace_end("outer");
	sluice_trace_begin("open");
	sl_tr_async_begin("job", 44, NULL, 0);
	CHECK_OK(sluice_trace_stop());
	sluice_trace_end("open");
	CHECK_EQ(check_json("B=2 flows=0 async=0 has:open=open "
			    "not:outer=outer"),
		 0);
}

/* Recording from several threads while another starts and stops: no
 * record is torn (the checker still parses) and nothing crashes. */
static atomic_bool churn_stop;

static void *
churn_main(void *p)
{
	(void)p;
	while (!atomic_load(&churn_stop)) {
		sluice_trace_begin("churn");
		sl_tr_instant("tick", NULL, 0);
		sluice_trace_end("churn");
	}
	return NULL;
}

static void
test_start_stop_while_recording(void)
{
	pthread_t t[3];
	int i, round;

	for (i = 0; i < 3; i++)
		CHECK_OK(pthread_create(&t[i], NULL, churn_main, NULL));
	for (round = 0; round < 20; round++) {
		struct sluice_trace_options o;

		sluice_trace_options_init(&o);
		o.buffer_bytes = round % 2 ? 65536 : 1 << 20;
		o.ring = round % 3 == 0;
		CHECK_OK(sluice_trace_start(&o));
		sched_yield();
		CHECK_OK(sluice_trace_stop());
		if (round % 5 == 0)
			CHECK_EQ(check_json(""), 0);
	}
	atomic_store(&churn_stop, true);
	for (i = 0; i < 3; i++)
		CHECK_OK(pthread_join(t[i], NULL));
}

static void
test_ticks_calibrated(void)
{
	uint64_t a, b;
	double npt = sl_ticks_ns_per_tick();

	CHECK(npt > 0.01 && npt < 100.0);
	a = sl_ticks();
	b = sl_ticks();
	CHECK_LE(a, b);
}

CHECK_MAIN(test_json_from_many_threads, test_checker_rejects_bad_nesting,
	   test_perfetto_decodes, test_disabled_probes_record_nothing,
	   test_buffer_full_drops, test_ring_mode_keeps_newest,
	   test_start_stop_start, test_writer_repairs_cut_slices,
	   test_start_stop_while_recording, test_ticks_calibrated)
