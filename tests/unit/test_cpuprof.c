/* SPDX-License-Identifier: MIT */
/*
 * test_cpuprof.c - the CPU profiler, the goroutine and threadcreate
 * profiles, and the thread registry under them.
 *
 * Busy work is measured in the thread's own CPU time
 * (CLOCK_THREAD_CPUTIME_ID), which is what the profiler samples, so no
 * test depends on wall-clock timing or sleeps.  The burn functions are
 * noinline and keep the clock reads out of their hot loop, so that
 * samples land in them and not in the vdso.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sluice/profile.h>

#include "check.h"
#include "folded.h"
#include "obs/threads.h"
#include "proc.h"

#define MS ((int64_t)1000000)

/* Under TSan the interceptors stand between a blocked thread and its
 * caller, and their frames end the frame-pointer chain early. */
#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

/* Spin on arithmetic until this thread used @ns more CPU. */
#define BURN_BODY(ns)                                                       \
	do {                                                                \
		int64_t end_ = sl_clock_ns(CLOCK_THREAD_CPUTIME_ID) + (ns); \
		volatile uint64_t sink_ = 1;                                \
		uint64_t x_ = sink_;                                        \
		do {                                                        \
			for (int i_ = 0; i_ < 200000; i_++)                 \
				x_ = x_ * 6364136223846793005ULL + 1;       \
			sink_ = x_;                                         \
		} while (sl_clock_ns(CLOCK_THREAD_CPUTIME_ID) < end_);      \
	} while (0)

static __attribute__((noinline)) void
burn_cpu_known(int64_t ns)
{
	BURN_BODY(ns);
}

static __attribute__((noinline)) void
burn_late(int64_t ns)
{
	BURN_BODY(ns);
}

static __attribute__((noinline)) void
burn_unregistered(int64_t ns)
{
	BURN_BODY(ns);
}

/* ---- helpers ------------------------------------------------------------ */

static char *
stop_folded(size_t *len)
{
	char *data = NULL;

	CHECK_OK(sluice_cpu_profile_stop(SLUICE_PROFILE_FOLDED, &data, len));
	CHECK(data != NULL);
	CHECK_EQ(strlen(data), *len);
	return data;
}

static bool
mem_has(const unsigned char *p, size_t n, const char *s)
{
	return memmem(p, n, s, strlen(s)) != NULL;
}

struct burner {
	const char *stage;
	int64_t ns;
	void (*burn)(int64_t);
};

static void *
burner_main(void *v)
{
	struct burner *b = v;

	sl_thread_set_stage(b->stage);
	b->burn(b->ns);
	return NULL;
}

static void
run_burner(const char *name, struct burner *b)
{
	pthread_t t;

	CHECK_OK(sl_thread_create(&t, name, burner_main, b));
	CHECK_OK(pthread_join(t, NULL));
}

/* ---- tests -------------------------------------------------------------- */

/* A thread burning ~1 s of CPU in burn_cpu_known gets most samples. */
static void
test_busy_function_dominates(void)
{
	struct burner b = { "handler", 1000 * MS, burn_cpu_known };
	int64_t hits, total;
	size_t len;
	char *data;

	CHECK_OK(sluice_cpu_profile_start(0, NULL, 0));
	CHECK(sluice_cpu_profile_running());
	run_burner("burner", &b);
	data = stop_folded(&len);
	CHECK(!sluice_cpu_profile_running());
	hits = folded_sum(data, "burn_cpu_known", FOLDED_LEAF, &total);
	fprintf(stderr,
		"  burn_cpu_known: %" PRId64 " of %" PRId64 " samples\n", hits,
		total);
	/* 1 s at 100 Hz is ~100 samples; allow for tick granularity. */
	CHECK_GE(total, 50);
	CHECK_GE(hits * 2, total);
	/* The stack goes on past the leaf: the thread's entry is there. */
	CHECK_GT(folded_sum(data, "burner_main", FOLDED_ANY, NULL), 0);
	sluice_profile_free(data);
}

static void
test_second_start_is_busy(void)
{
	char err[128];
	size_t len;
	char *data;

	CHECK_OK(sluice_cpu_profile_start(100, err, sizeof(err)));
	CHECK_STREQ(err, "");
	CHECK_EQ(sluice_cpu_profile_start(100, err, sizeof(err)), SLUICE_EBUSY);
	CHECK(strstr(err, "cpu profiling already in use") != NULL);
	/* The first profile is unharmed. */
	CHECK(sluice_cpu_profile_running());
	data = stop_folded(&len);
	sluice_profile_free(data);
	/* And a new one may start after it. */
	CHECK_OK(sluice_cpu_profile_start(250, NULL, 0));
	data = stop_folded(&len);
	sluice_profile_free(data);
}

static void
test_stop_without_start(void)
{
	char *data = NULL;
	size_t len = 0;

	CHECK_EQ(sluice_cpu_profile_stop(SLUICE_PROFILE_FOLDED, &data, &len),
		 SLUICE_ESTATE);
	CHECK(data == NULL);
	CHECK_EQ(sluice_cpu_profile_start(-1, NULL, 0), SLUICE_EINVAL);
	CHECK_OK(sluice_cpu_profile_start(0, NULL, 0));
	/* A format the CPU profile has not: refused, still running. */
	CHECK_EQ(sluice_cpu_profile_stop(SLUICE_PROFILE_TEXT, &data, &len),
		 SLUICE_EINVAL);
	CHECK(sluice_cpu_profile_running());
	CHECK_OK(sluice_cpu_profile_stop(SLUICE_PROFILE_SVG, &data, &len));
	sluice_profile_free(data);
	CHECK_EQ(sluice_cpu_profile_stop(SLUICE_PROFILE_FOLDED, &data, &len),
		 SLUICE_ESTATE);
}

static void
foreign_prof(int sig)
{
	(void)sig;
}

static void
test_foreign_sigprof_handler_refused(void)
{
	struct sigaction sa;
	char err[128];
	size_t len;
	char *data;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = foreign_prof;
	CHECK_OK(sigaction(SIGPROF, &sa, NULL));
	CHECK_EQ(sluice_cpu_profile_start(0, err, sizeof(err)), SLUICE_EBUSY);
	CHECK(strstr(err, "SIGPROF") != NULL);
	CHECK(!sluice_cpu_profile_running());
	sa.sa_handler = SIG_DFL;
	CHECK_OK(sigaction(SIGPROF, &sa, NULL));
	CHECK_OK(sluice_cpu_profile_start(0, err, sizeof(err)));
	data = stop_folded(&len);
	sluice_profile_free(data);
}

/* Labels are in the pprof output: the stage and thread name strings. */
static void
test_stage_and_thread_labels(void)
{
	struct burner b = { "handler", 300 * MS, burn_cpu_known };
	unsigned char *raw;
	size_t len, rawlen;
	char *data;

	CHECK_OK(sluice_cpu_profile_start(250, NULL, 0));
	run_burner("lbl-thread", &b);
	CHECK_OK(sluice_cpu_profile_stop(SLUICE_PROFILE_PPROF, &data, &len));
	CHECK_GT(len, 2);
	CHECK_EQ((unsigned char)data[0], 0x1f);
	CHECK_EQ((unsigned char)data[1], 0x8b);
	raw = gunzip(data, len, &rawlen);
	CHECK(mem_has(raw, rawlen, "stage"));
	CHECK(mem_has(raw, rawlen, "handler"));
	CHECK(mem_has(raw, rawlen, "thread"));
	CHECK(mem_has(raw, rawlen, "lbl-thread"));
	CHECK(mem_has(raw, rawlen, "burn_cpu_known"));
	free(raw);
	sluice_profile_free(data);
}

/* A thread created after the start gets a timer and is sampled; time
 * burnt after a thread unregistered is not sampled, and unregistering
 * while its timer runs is safe. */
static void *
unregistering_main(void *v)
{
	(void)v;
	sl_thread_register("unreg");
	burn_late(100 * MS);
	sl_thread_unregister();
	burn_unregistered(300 * MS);
	/* Register again and go away without unregistering: the key
	 * destructor does it. */
	sl_thread_register("unreg2");
	burn_late(20 * MS);
	return NULL;
}

static void
test_late_threads_and_unregister(void)
{
	struct burner b = { NULL, 300 * MS, burn_late };
	struct sl_thread_info info[4];
	int64_t late, total;
	pthread_t t;
	size_t len;
	char *data;

	CHECK_OK(sluice_cpu_profile_start(250, NULL, 0));
	run_burner("late", &b);
	CHECK_OK(pthread_create(&t, NULL, unregistering_main, NULL));
	CHECK_OK(pthread_join(t, NULL));
	data = stop_folded(&len);
	late = folded_sum(data, "burn_late", FOLDED_LEAF, &total);
	fprintf(stderr, "  burn_late: %" PRId64 " of %" PRId64 " samples\n",
		late, total);
	CHECK_GE(late, 30); /* 400 ms at 250 Hz is ~100 */
	CHECK_EQ(folded_sum(data, "burn_unregistered", FOLDED_ANY, NULL), 0);
	sluice_profile_free(data);
	/* Every thread is gone from the registry. */
	CHECK_EQ(sl_threads_snapshot(info, 4), 0);
}

static void
test_go_tool_pprof_reads_it(void)
{
	struct burner b = { "handler", 500 * MS, burn_cpu_known };
	char dir[64], prof[128];
	static char text[1 << 16];

	/* CI installs golang-go (scripts/deps.sh): a missing tool fails. */
	CHECK_EQ(access("/usr/bin/go", X_OK), 0);
	tmpdir_make(dir, sizeof(dir), "test_cpuprof");
	snprintf(prof, sizeof(prof), "%s/cpu.pb.gz", dir);
	CHECK_OK(sluice_cpu_profile_start(100, NULL, 0));
	run_burner("gotool", &b);
	CHECK_OK(sluice_cpu_profile_stop_path(SLUICE_PROFILE_PPROF, prof));

	CHECK_EQ(go_pprof(dir, "-top", prof, text, sizeof(text)), 0);
	fprintf(stderr, "%s", text);
	CHECK(strstr(text, "Type: cpu") != NULL);
	CHECK(strstr(text, "burn_cpu_known") != NULL);

	CHECK_EQ(go_pprof(dir, "-tags", prof, text, sizeof(text)), 0);
	fprintf(stderr, "%s", text);
	CHECK(strstr(text, "stage:") != NULL);
	CHECK(strstr(text, "handler") != NULL);
	CHECK(strstr(text, "gotool") != NULL);

	if (getenv("KEEP_PROFILE"))
		return;
	tmpdir_remove(dir);
}

/* ---- goroutine / threadcreate ------------------------------------------- */

struct parked {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int ready, release;
};

static struct parked park = { PTHREAD_MUTEX_INITIALIZER,
			      PTHREAD_COND_INITIALIZER, 0, 0 };

static __attribute__((noinline)) void *
parked_thread_main(void *v)
{
	sl_thread_set_stage((const char *)v);
	pthread_mutex_lock(&park.mu);
	park.ready++;
	pthread_cond_broadcast(&park.cv);
	while (!park.release)
		pthread_cond_wait(&park.cv, &park.mu);
	pthread_mutex_unlock(&park.mu);
	return NULL;
}

static __attribute__((noinline)) void
start_parked(pthread_t *t, size_t n)
{
	static const char *names[] = { "gr-alpha", "gr-beta", "gr-gamma" };
	static const char *stages[] = { "fetch", "handler", "ack" };
	size_t i;

	for (i = 0; i < n; i++)
		CHECK_OK(sl_thread_create(&t[i], names[i], parked_thread_main,
					  (void *)(uintptr_t)stages[i]));
	pthread_mutex_lock(&park.mu);
	while (park.ready < (int)n)
		pthread_cond_wait(&park.cv, &park.mu);
	pthread_mutex_unlock(&park.mu);
}

static void
stop_parked(pthread_t *t, size_t n)
{
	size_t i;

	pthread_mutex_lock(&park.mu);
	park.release = 1;
	pthread_cond_broadcast(&park.cv);
	pthread_mutex_unlock(&park.mu);
	for (i = 0; i < n; i++)
		CHECK_OK(pthread_join(t[i], NULL));
}

static void
test_goroutine_profile(void)
{
	pthread_t t[3];
	size_t len;
	char *data;

	start_parked(t, 3);
	/* The calling thread is registered too. */
	CHECK_OK(sl_thread_register("gr-main"));
	sl_thread_set_stage("profiling");

	CHECK_OK(sluice_goroutine_profile(SLUICE_PROFILE_TEXT_THREADS, &data,
					  &len));
	fprintf(stderr, "%s", data);
	CHECK(strstr(data, " gr-alpha [fetch]:\n") != NULL);
	CHECK(strstr(data, " gr-beta [handler]:\n") != NULL);
	CHECK(strstr(data, " gr-gamma [ack]:\n") != NULL);
	CHECK(strstr(data, " gr-main [profiling]:\n") != NULL);
	CHECK(strstr(data, "did not answer") == NULL);
	/* The parked threads' stacks reach their start routine; ours
	 * shows this test. */
	if (!UNDER_TSAN)
		CHECK(strstr(data, "parked_thread_main()") != NULL);
	CHECK(strstr(data, "test_goroutine_profile") != NULL);
	sluice_profile_free(data);

	CHECK_OK(sluice_goroutine_profile(SLUICE_PROFILE_TEXT, &data, &len));
	CHECK(strncmp(data, "goroutine profile: total 4\n", 27) == 0);
	sluice_profile_free(data);

	CHECK_OK(sluice_goroutine_profile(SLUICE_PROFILE_FOLDED, &data, &len));
	CHECK(strstr(data, "test_goroutine_profile") != NULL);
	sluice_profile_free(data);

	CHECK_OK(sluice_goroutine_profile(SLUICE_PROFILE_PPROF, &data, &len));
	CHECK_EQ((unsigned char)data[0], 0x1f);
	sluice_profile_free(data);

	/* threadcreate: the three threads were started from here. */
	CHECK_OK(sluice_threadcreate_profile(SLUICE_PROFILE_TEXT, &data, &len));
	fprintf(stderr, "%s", data);
	CHECK(strncmp(data, "threadcreate profile: total 3\n", 30) == 0);
	CHECK(strstr(data, "3 @ ") != NULL);
	CHECK(strstr(data, "start_parked") != NULL);
	sluice_profile_free(data);
	CHECK_EQ(sluice_threadcreate_profile(SLUICE_PROFILE_TEXT_THREADS, &data,
					     &len),
		 SLUICE_EINVAL);

	sl_thread_unregister();
	stop_parked(t, 3);
}

/* ---- stress ------------------------------------------------------------- */

static atomic_bool stress_done;

static void *
stress_child(void *v)
{
	(void)v;
	sl_thread_set_stage("stress");
	burn_late(2 * MS);
	return NULL;
}

static void *
stress_spawner(void *v)
{
	pthread_t t;

	(void)v;
	while (!atomic_load(&stress_done)) {
		CHECK_OK(sl_thread_create(&t, "stress", stress_child, NULL));
		CHECK_OK(pthread_join(t, NULL));
	}
	return NULL;
}

static void
test_stress_threads_come_and_go(void)
{
	pthread_t sp[4];
	size_t i, len;
	char *data;
	int round;

	atomic_store(&stress_done, false);
	for (i = 0; i < 4; i++)
		CHECK_OK(pthread_create(&sp[i], NULL, stress_spawner, NULL));
	for (round = 0; round < 20; round++) {
		CHECK_OK(sluice_cpu_profile_start(250, NULL, 0));
		CHECK_OK(sluice_goroutine_profile(SLUICE_PROFILE_TEXT_THREADS,
						  &data, &len));
		sluice_profile_free(data);
		burn_cpu_known(5 * MS);
		data = stop_folded(&len);
		sluice_profile_free(data);
	}
	atomic_store(&stress_done, true);
	for (i = 0; i < 4; i++)
		CHECK_OK(pthread_join(sp[i], NULL));
}

CHECK_MAIN(test_busy_function_dominates, test_second_start_is_busy,
	   test_stop_without_start, test_foreign_sigprof_handler_refused,
	   test_stage_and_thread_labels, test_late_threads_and_unregister,
	   test_go_tool_pprof_reads_it, test_goroutine_profile,
	   test_stress_threads_come_and_go)
