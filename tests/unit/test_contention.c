/* SPDX-License-Identifier: MIT */
/*
 * test_contention.c - the block and mutex profiles: a lock held by one
 * thread while another waits in sl_mutex_lock() gives a mutex sample
 * charged to the waiter's function; a fetch blocked on an empty queue
 * gives a block sample with the fetching function on its stack; with the
 * rates at 0 nothing is recorded.
 *
 * "The other thread is waiting" is established without sleeping: the
 * test polls /proc/self/task/TID/stat until the thread is asleep in the
 * kernel (state S), which it only reaches inside the lock or wait under
 * test.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sluice/heapprof.h>
#include <sluice/queue.h>

#include "check.h"
#include "folded.h"
#include "obs/contention.h"

/* Keep the sites' names whole: no inlining, and no gcc clones such as
 * "fetch_here.isra.0". */
#if defined(__GNUC__) && !defined(__clang__)
#define SITE __attribute__((noinline, noclone))
#else
#define SITE __attribute__((noinline))
#endif

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int waiter_tid;

/* Until thread @tid sleeps in the kernel. */
static void
wait_asleep(int tid)
{
	char path[64], buf[512], *p;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	for (;;) {
		f = fopen(path, "r");
		CHECK(f != NULL);
		p = fgets(buf, sizeof(buf), f);
		fclose(f);
		CHECK(p != NULL);
		p = strrchr(buf, ')');
		CHECK(p != NULL && p[1] == ' ');
		if (p[2] == 'S')
			return;
		sched_yield();
	}
}

static int
my_tid(void)
{
	return (int)syscall(SYS_gettid);
}

static char *
profile(enum sluice_profile_kind kind, const char *index)
{
	struct sluice_profile_snapshot *s;
	char *data;
	size_t len;

	CHECK_OK(sluice_profile_snapshot(kind, &s));
	CHECK_OK(sluice_profile_encode(s, NULL, SLUICE_PROFILE_FOLDED, index,
				       &data, &len));
	sluice_profile_snapshot_free(s);
	return data;
}

SITE static void
contend_here(void)
{
	CHECK_OK(sl_mutex_lock(&mu));
	pthread_mutex_unlock(&mu);
}

static void *
contender(void *arg)
{
	(void)arg;
	atomic_store(&waiter_tid, my_tid());
	contend_here();
	return NULL;
}

/* Hold mu, let another thread block on it, release. */
static void
contend_once(void)
{
	pthread_t t;

	atomic_store(&waiter_tid, 0);
	CHECK_OK(sl_mutex_lock(&mu)); /* uncontended: the trylock */
	CHECK_OK(pthread_create(&t, NULL, contender, NULL));
	while (atomic_load(&waiter_tid) == 0)
		sched_yield();
	wait_asleep(atomic_load(&waiter_tid));
	pthread_mutex_unlock(&mu);
	CHECK_OK(pthread_join(t, NULL));
}

static void
test_mutex_charged_to_waiter(void)
{
	char *t, *txt;
	struct sluice_profile_snapshot *s;
	size_t len;

	CHECK_EQ(sluice_mutex_profile_set_fraction(1), 0);
	CHECK_EQ(sluice_mutex_profile_set_fraction(-1), 1);
	contend_once();
	t = profile(SLUICE_PROFILE_MUTEX, "contentions");
	CHECK_EQ(folded_sum(t, "contend_here", FOLDED_ANY, NULL), 1);
	sluice_profile_free(t);
	t = profile(SLUICE_PROFILE_MUTEX, NULL); /* delay */
	CHECK_GT(folded_sum(t, "contend_here", FOLDED_ANY, NULL), 0);
	sluice_profile_free(t);
	/* The holder's own (uncontended) lock is not in it. */
	t = profile(SLUICE_PROFILE_MUTEX, "contentions");
	CHECK_EQ(folded_sum(t, "contend_once", FOLDED_ANY, NULL), 0);
	sluice_profile_free(t);

	CHECK_OK(sluice_profile_snapshot(SLUICE_PROFILE_MUTEX, &s));
	CHECK_OK(sluice_profile_encode(s, NULL, SLUICE_PROFILE_TEXT, NULL, &txt,
				       &len));
	CHECK(strncmp(txt, "--- mutex:\ncycles/second=1000000000\n", 36) == 0);
	CHECK(strstr(txt, "\tcontend_here\n") != NULL);
	sluice_profile_free(txt);
	sluice_profile_snapshot_free(s);
}

struct fetcher {
	struct sluice_source src;
	int rc;
};

SITE static int
fetch_here(struct sluice_source *src)
{
	struct sluice_msg *m;
	int rc = src->ops->fetch(src->self, &m, 1, SLUICE_FOREVER);

	/* not a tail call, or this frame leaves the stack */
	__asm__ volatile("" ::: "memory");
	return rc;
}

static void *
fetcher_main(void *arg)
{
	struct fetcher *f = arg;

	atomic_store(&waiter_tid, my_tid());
	f->rc = fetch_here(&f->src);
	return NULL;
}

/* A fetch blocks on an empty queue until wakeup(). */
static void
block_once(void)
{
	struct sluice_queue_config cfg;
	struct sluice_queue *q;
	struct fetcher f;
	pthread_t t;

	sluice_queue_config_init(&cfg);
	cfg.capacity = 4;
	CHECK_OK(sluice_queue_new(&cfg, &q));
	f.src = sluice_queue_source(q);
	f.rc = -1;
	atomic_store(&waiter_tid, 0);
	CHECK_OK(pthread_create(&t, NULL, fetcher_main, &f));
	while (atomic_load(&waiter_tid) == 0)
		sched_yield();
	wait_asleep(atomic_load(&waiter_tid));
	f.src.ops->wakeup(f.src.self);
	CHECK_OK(pthread_join(t, NULL));
	CHECK_EQ(f.rc, 0);
	sluice_queue_free(q);
}

static void
test_block_on_queue_fetch(void)
{
	char *t;

	sluice_block_profile_set_rate(1);
	block_once();
	t = profile(SLUICE_PROFILE_BLOCK, "contentions");
	CHECK_GE(folded_sum(t, "fetch_here", FOLDED_ANY, NULL), 1);
	sluice_profile_free(t);
	t = profile(SLUICE_PROFILE_BLOCK, "delay");
	CHECK_GT(folded_sum(t, "fetch_here", FOLDED_ANY, NULL), 0);
	sluice_profile_free(t);
}

/* A rate above every wait keeps a wait of d ns with probability d/rate
 * and counts it rate/d times: the expected total delay is the truth. */
static void
test_block_sampling_scales(void)
{
	int64_t d = 0;
	char *t;
	int i;

	sluice_block_profile_set_rate(INT64_MAX / 4);
	for (i = 0; i < 3; i++)
		block_once();
	t = profile(SLUICE_PROFILE_BLOCK, "delay");
	d = folded_sum(t, "fetch_here", FOLDED_ANY, NULL);
	/* Either nothing (likely) or whole multiples of the rate. */
	CHECK(d == 0 || d % (INT64_MAX / 4) == 0);
	sluice_profile_free(t);
}

static void
test_rates_zero_record_nothing(void)
{
	char *t;

	CHECK_EQ(sluice_mutex_profile_set_fraction(0), 0);
	sluice_block_profile_set_rate(0);
	contend_once();
	block_once();
	t = profile(SLUICE_PROFILE_MUTEX, "contentions");
	CHECK_STREQ(t, "");
	sluice_profile_free(t);
	t = profile(SLUICE_PROFILE_BLOCK, "contentions");
	CHECK_STREQ(t, "");
	sluice_profile_free(t);
	/* Off, a probe is one load and times nothing. */
	CHECK_EQ(sl_block_begin(), 0);
}

/* Many contended locks at fraction 1: every one recorded. */
static void
test_mutex_counts_add_up(void)
{
	char *t;
	int i;

	CHECK_EQ(sluice_mutex_profile_set_fraction(1), 0);
	for (i = 0; i < 5; i++)
		contend_once();
	t = profile(SLUICE_PROFILE_MUTEX, "contentions");
	CHECK_EQ(folded_sum(t, "contend_here", FOLDED_ANY, NULL), 5);
	sluice_profile_free(t);
}

CHECK_MAIN(test_mutex_charged_to_waiter, test_block_on_queue_fetch,
	   test_block_sampling_scales, test_rates_zero_record_nothing,
	   test_mutex_counts_add_up)
