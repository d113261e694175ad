/* SPDX-License-Identifier: MIT */
/*
 * safe_map.c - the seed's lesson 6: a plain hash map is not thread-safe.
 *
 * Four threads count events per key (64 keys, 256 000 increments each) in a
 * minimal hand-written chained hash map with no lock, the kind one writes in
 * five minutes: count++ on a shared node, inserts that push onto a shared
 * bucket, and a resize that frees the old bucket array while others still
 * walk it.  Because that can crash or loop, each run happens in a forked
 * child with a 2 s alarm, and the parent reports lost updates, duplicated
 * keys, a crash or a hang.  Each of the first two cases runs up to 5 times
 * and stops at the first damage seen:
 *   1. every key already present: only the count++ races (lost updates);
 *   2. an empty map: inserts and resizes race too (corruption, crashes);
 *   3. with sluice_map, a read and a compare-and-swap in a loop
 *      (sluice_map_get + sluice_map_cas, put_if_absent for a new key): the
 *      totals are exact, and the number of CAS retries shows how often two
 *      threads really collided on one key.
 *
 * What to look for: the plain map loses updates, and with inserts it
 * duplicates keys or dies; sluice_map gives 1024000 of 1024000 with every
 * key at 16000.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sluice/sluice.h>

#define THREADS    4
#define KEYS       64
#define PER_THREAD 256000 /* 4000 rounds over the keys */
#define TOTAL      ((uint64_t)THREADS * PER_THREAD)
#define TRIALS     5

static pthread_barrier_t go;

/* ---- the plain map: no lock anywhere (deliberately wrong) --------------- */

struct node {
	struct node *next;
	char key[16];
	uint64_t count;
};

struct plain_map {
	struct node **buckets;
	size_t nbuckets; /* a power of two */
	size_t len;
};

static size_t
hash(const char *s)
{
	size_t h = 5381;

	while (*s)
		h = h * 33 + (unsigned char)*s++;
	return h;
}

static void
plain_grow(struct plain_map *m)
{
	size_t n = m->nbuckets * 2, i;
	struct node **nb = calloc(n, sizeof(*nb));

	if (!nb)
		return;
	for (i = 0; i < m->nbuckets; i++) {
		struct node *x = m->buckets[i], *next;

		for (; x; x = next) {
			size_t b = hash(x->key) & (n - 1);

			next = x->next;
			x->next = nb[b];
			nb[b] = x;
		}
	}
	free(m->buckets); /* other threads may be reading it right now */
	m->buckets = nb;
	m->nbuckets = n;
}

static void
plain_inc(struct plain_map *m, const char *key)
{
	size_t b = hash(key) & (m->nbuckets - 1);
	struct node *x;

	for (x = m->buckets[b]; x; x = x->next)
		if (strcmp(x->key, key) == 0) {
			x->count++; /* load, add, store: not atomic */
			return;
		}
	x = calloc(1, sizeof(*x));
	if (!x)
		return;
	snprintf(x->key, sizeof(x->key), "%s", key);
	x->count = 1;
	x->next = m->buckets[b];
	m->buckets[b] = x;
	if (++m->len > 2 * m->nbuckets)
		plain_grow(m);
}

static void *
plain_worker(void *arg)
{
	struct plain_map *m = arg;
	char key[16];
	int i;

	pthread_barrier_wait(&go);
	for (i = 0; i < PER_THREAD; i++) {
		snprintf(key, sizeof(key), "user-%d", i % KEYS);
		plain_inc(m, key);
	}
	return NULL;
}

struct plain_result {
	uint64_t total;
	uint64_t entries;
};

/* In the child: race, then count what is left.  Never returns. */
static void
plain_child(int out, int prefill)
{
	struct plain_map m = { calloc(4, sizeof(struct node *)), 4, 0 };
	char key[16];
	struct plain_result res = { 0, 0 };
	pthread_t t[THREADS];
	int devnull = open("/dev/null", O_WRONLY);
	size_t i;

	/* Keep a sanitizer's crash report from flooding the output. */
	if (devnull >= 0)
		dup2(devnull, 2);
	alarm(2); /* a corrupted chain may loop forever */
	if (!m.buckets)
		_exit(3);
	for (i = 0; prefill && i < KEYS; i++) {
		/* One thread inserts every key (count 1, then taken off). */
		snprintf(key, sizeof(key), "user-%zu", i);
		plain_inc(&m, key);
	}
	for (i = 0; i < THREADS; i++)
		if (pthread_create(&t[i], NULL, plain_worker, &m) != 0)
			_exit(3);
	for (i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	for (i = 0; i < m.nbuckets; i++) {
		struct node *x;

		for (x = m.buckets[i]; x; x = x->next) {
			res.total += x->count - (prefill ? 1 : 0);
			res.entries++;
		}
	}
	if (write(out, &res, sizeof(res)) != (ssize_t)sizeof(res))
		_exit(3);
	_exit(0);
}

/* One trial; returns 1 if damage was seen, 0 if not, -1 on error. */
static int
plain_trial(int trial, int prefill)
{
	struct plain_result res;
	int fds[2], st;
	ssize_t n;
	pid_t pid;

	if (pipe(fds) != 0)
		return -1;
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		close(fds[0]);
		plain_child(fds[1], prefill);
	}
	close(fds[1]);
	n = read(fds[0], &res, sizeof(res));
	close(fds[0]);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	printf("  plain map, %s, run %d: ",
	       prefill ? "keys present" : "empty at start", trial);
	if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) {
		printf("hung (a corrupted chain loops); killed after 2 s\n");
		return 1;
	}
	if (WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) != 0) ||
	    n != (ssize_t)sizeof(res)) {
		if (WIFSIGNALED(st))
			printf("crashed with signal %d (%s)\n", WTERMSIG(st),
			       strsignal(WTERMSIG(st)));
		else
			printf("crashed (exit %d: a sanitizer caught memory "
			       "corruption)\n",
			       WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		return 1;
	}
	printf("%llu of %llu updates (lost %llu), %llu entries for %d "
	       "keys\n",
	       (unsigned long long)res.total, (unsigned long long)TOTAL,
	       (unsigned long long)(TOTAL > res.total ? TOTAL - res.total : 0),
	       (unsigned long long)res.entries, KEYS);
	return res.total != TOTAL || res.entries != KEYS;
}

/* ---- sluice_map: the same counting, thread-safe ------------------------- */

static atomic_ullong cas_retries;
static atomic_int map_failed;

static int
map_inc(struct sluice_map *m, const char *key)
{
	size_t klen = strlen(key);
	uint64_t old, val;

	for (;;) {
		size_t len = sizeof(old);
		int r = sluice_map_get(m, key, klen, &old, &len);

		if (r == SLUICE_ENOENT) {
			val = 1;
			r = sluice_map_put_if_absent(m, key, klen, &val,
						     sizeof(val),
						     SLUICE_MAP_NO_TTL);
		} else if (r == 0) {
			val = old + 1;
			r = sluice_map_cas(m, key, klen, &old, sizeof(old),
					   &val, sizeof(val),
					   SLUICE_MAP_NO_TTL);
		}
		if (r == 0)
			return 0;
		if (r != SLUICE_EEXIST && r != SLUICE_EBUSY &&
		    r != SLUICE_ENOENT)
			return r;
		/* Another thread got there first: read again. */
		atomic_fetch_add(&cas_retries, 1);
	}
}

static void *
map_worker(void *arg)
{
	struct sluice_map *m = arg;
	char key[16];
	int i;

	pthread_barrier_wait(&go);
	for (i = 0; i < PER_THREAD; i++) {
		snprintf(key, sizeof(key), "user-%d", i % KEYS);
		if (map_inc(m, key) != 0) {
			atomic_store(&map_failed, 1);
			break;
		}
	}
	return NULL;
}

struct tally {
	uint64_t total, min, max;
	size_t entries;
};

static bool
visit(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct tally *t = ud;
	uint64_t v;

	(void)key;
	(void)klen;
	if (vlen != sizeof(v))
		return false;
	memcpy(&v, val, sizeof(v));
	t->total += v;
	t->min = v < t->min ? v : t->min;
	t->max = v > t->max ? v : t->max;
	t->entries++;
	return true;
}

static int
run_sluice_map(void)
{
	struct tally t = { 0, UINT64_MAX, 0, 0 };
	struct sluice_map *m;
	pthread_t th[THREADS];
	size_t i;

	if (sluice_map_new(0, 0, sluice_clock_monotonic(), &m) != 0)
		return -1;
	for (i = 0; i < THREADS; i++)
		if (pthread_create(&th[i], NULL, map_worker, m) != 0)
			return -1;
	for (i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	if (atomic_load(&map_failed) || sluice_map_foreach(m, visit, &t) != 0)
		return -1;
	printf("  sluice_map: %llu of %llu updates, %zu entries, each key "
	       "%llu%s (%s); %llu CAS retries\n",
	       (unsigned long long)t.total, (unsigned long long)TOTAL,
	       t.entries, (unsigned long long)t.min,
	       t.min == t.max ? "" : " or more",
	       t.total == TOTAL && t.entries == KEYS ? "exact" : "WRONG",
	       (unsigned long long)atomic_load(&cas_retries));
	sluice_map_free(m);
	return t.total == TOTAL ? 0 : -1;
}

int
main(void)
{
	int trial, prefill, r = 0;

	if (pthread_barrier_init(&go, NULL, THREADS) != 0)
		return 1;
	printf("lesson 6: %d threads x %d increments over %d keys\n", THREADS,
	       PER_THREAD, KEYS);
	for (prefill = 1; prefill >= 0; prefill--) {
		r = 0;
		for (trial = 1; trial <= TRIALS && r == 0; trial++)
			r = plain_trial(trial, prefill);
		if (r < 0)
			return 1;
		if (r == 0)
			printf("  (no damage seen this time; the race is "
			       "still there)\n");
	}
	r = run_sluice_map();
	pthread_barrier_destroy(&go);
	return r == 0 ? 0 : 1;
}
