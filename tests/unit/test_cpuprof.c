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
#include <zlib.h>

#include <sluice/profile.h>

#include "check.h"
#include "obs/threads.h"

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

static int64_t
thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin on arithmetic until this thread used @ns more CPU. */
#define BURN_BODY(ns)                                                 \
	do {                                                          \
		int64_t end_ = thread_cpu_ns() + (ns);                \
		volatile uint64_t sink_ = 1;                          \
		uint64_t x_ = sink_;                                  \
		do {                                                  \
			for (int i_ = 0; i_ < 200000; i_++)           \
				x_ = x_ * 6364136223846793005ULL + 1; \
			sink_ = x_;                                   \
		} while (thread_cpu_ns() < end_);                     \
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

/* Sum of the folded lines whose leaf frame starts with @fn; *total gets
 * the sum of all lines. */
static long
folded_leaf_count(const char *text, const char *fn, long *total)
{
	const char *line = text, *nl, *sp, *leaf;
	long hits = 0;

	*total = 0;
	for (; *line; line = nl + 1) {
		long v;

		nl = strchr(line, '\n');
		CHECK(nl != NULL);
		sp = nl;
		while (sp > line && sp[-1] != ' ')
			sp--;
		CHECK(sp > line);
		v = strtol(sp, NULL, 10);
		*total += v;
		leaf = sp - 1;
		while (leaf > line && leaf[-1] != ';')
			leaf--;
		if (strncmp(leaf, fn, strlen(fn)) == 0)
			hits += v;
	}
	return hits;
}

/* Count of a function anywhere in the stacks (as leaf or caller). */
static long
folded_any_count(const char *text, const char *fn)
{
	const char *line = text, *nl, *sp, *hit;
	long hits = 0;

	for (; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		CHECK(nl != NULL);
		sp = nl;
		while (sp > line && sp[-1] != ' ')
			sp--;
		hit = strstr(line, fn);
		if (hit && hit < sp)
			hits += strtol(sp, NULL, 10);
	}
	return hits;
}

static char *
stop_folded(size_t *len)
{
	char *data = NULL;

	CHECK_OK(sluice_cpu_profile_stop(SLUICE_PROFILE_FOLDED, &data, len));
	CHECK(data != NULL);
	CHECK_EQ(strlen(data), *len);
	return data;
}

/* gunzip @len bytes of @in; returns a malloc'd buffer of *@outlen. */
static unsigned char *
gunzip(const char *in, size_t len, size_t *outlen)
{
	size_t cap = 1 << 20;
	unsigned char *out = malloc(cap);
	z_stream z;
	int rc;

	CHECK(out != NULL);
	memset(&z, 0, sizeof(z));
	CHECK_EQ(inflateInit2(&z, 15 + 16), Z_OK);
	z.next_in = (unsigned char *)(uintptr_t)in;
	z.avail_in = (uInt)len;
	for (;;) {
		z.next_out = out + z.total_out;
		z.avail_out = (uInt)(cap - z.total_out);
		rc = inflate(&z, Z_NO_FLUSH);
		if (rc == Z_STREAM_END)
			break;
		CHECK_EQ(rc, Z_OK);
		if (z.avail_out == 0) {
			cap *= 2;
			out = realloc(out, cap);
			CHECK(out != NULL);
		}
	}
	*outlen = z.total_out;
	inflateEnd(&z);
	return out;
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
	long hits, total;
	size_t len;
	char *data;

	CHECK_OK(sluice_cpu_profile_start(0, NULL, 0));
	CHECK(sluice_cpu_profile_running());
	run_burner("burner", &b);
	data = stop_folded(&len);
	CHECK(!sluice_cpu_profile_running());
	hits = folded_leaf_count(data, "burn_cpu_known", &total);
	fprintf(stderr, "  burn_cpu_known: %ld of %ld samples\n", hits, total);
	/* 1 s at 100 Hz is ~100 samples; allow for tick granularity. */
	CHECK_GE(total, 50);
	CHECK_GE(hits * 2, total);
	/* The stack goes on past the leaf: the thread's entry is there. */
	CHECK_GT(folded_any_count(data, "burner_main"), 0);
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
	long late, total;
	pthread_t t;
	size_t len;
	char *data;

	CHECK_OK(sluice_cpu_profile_start(250, NULL, 0));
	run_burner("late", &b);
	CHECK_OK(pthread_create(&t, NULL, unregistering_main, NULL));
	CHECK_OK(pthread_join(t, NULL));
	data = stop_folded(&len);
	late = folded_leaf_count(data, "burn_late", &total);
	fprintf(stderr, "  burn_late: %ld of %ld samples\n", late, total);
	CHECK_GE(late, 30); /* 400 ms at 250 Hz is ~100 */
	CHECK_EQ(folded_any_count(data, "burn_unregistered"), 0);
	sluice_profile_free(data);
	/* Every thread is gone from the registry. */
	CHECK_EQ(sl_threads_snapshot(info, 4), 0);
}

/* Run go tool pprof @args... on a file; its stdout into @out. */
static int
run_pprof(const char *dir, const char *out, const char *flag, const char *file)
{
	char home[512], cache[512], flagb[32], fileb[600];
	char tmo[] = "60", go[] = "go", tool[] = "tool", pprof[] = "pprof";
	char path_env[] = "PATH=/usr/bin:/bin";
	char tc_env[] = "GOTOOLCHAIN=local", tmo_cmd[] = "timeout";
	pid_t pid;
	int st;

	snprintf(home, sizeof(home), "HOME=%s", dir);
	snprintf(cache, sizeof(cache), "GOCACHE=%s/gocache", dir);
	snprintf(flagb, sizeof(flagb), "%s", flag);
	snprintf(fileb, sizeof(fileb), "%s", file);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		char *env[] = { home, cache, path_env, tc_env, NULL };
		char *argv[] = { tmo_cmd, tmo,   go,    tool,
				 pprof,   flagb, fileb, NULL };

		if (!freopen(out, "w", stdout))
			_exit(126);
		execve("/usr/bin/timeout", argv, env);
		_exit(127);
	}
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	CHECK(f != NULL);
	CHECK_OK(fseek(f, 0, SEEK_END));
	n = ftell(f);
	CHECK_GE(n, 0);
	rewind(f);
	buf = calloc(1, (size_t)n + 1);
	CHECK(buf != NULL);
	CHECK_EQ(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	return buf;
}

static void
test_go_tool_pprof_reads_it(void)
{
	struct burner b = { "handler", 500 * MS, burn_cpu_known };
	char dir[] = "/tmp/test_cpuprof.XXXXXX";
	char prof[600], out[600], cmd[700];
	char *text;

	/* CI installs golang-go (scripts/deps.sh): a missing tool fails. */
	CHECK_EQ(access("/usr/bin/go", X_OK), 0);
	CHECK(mkdtemp(dir) != NULL);
	snprintf(prof, sizeof(prof), "%s/cpu.pb.gz", dir);
	snprintf(out, sizeof(out), "%s/out.txt", dir);
	CHECK_OK(sluice_cpu_profile_start(100, NULL, 0));
	run_burner("gotool", &b);
	CHECK_OK(sluice_cpu_profile_stop_path(SLUICE_PROFILE_PPROF, prof));

	CHECK_EQ(run_pprof(dir, out, "-top", prof), 0);
	text = slurp(out);
	fprintf(stderr, "%s", text);
	CHECK(strstr(text, "Type: cpu") != NULL);
	CHECK(strstr(text, "burn_cpu_known") != NULL);
	free(text);

	CHECK_EQ(run_pprof(dir, out, "-tags", prof), 0);
	text = slurp(out);
	fprintf(stderr, "%s", text);
	CHECK(strstr(text, "stage:") != NULL);
	CHECK(strstr(text, "handler") != NULL);
	CHECK(strstr(text, "gotool") != NULL);
	free(text);

	if (getenv("KEEP_PROFILE"))
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	CHECK_OK(system(cmd));
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
