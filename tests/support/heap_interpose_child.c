/* SPDX-License-Identifier: MIT */
/*
 * heap_interpose_child.c - a program linked with the heap profiler's
 * whole-process mode (src/obs/malloc_interpose.c), for test_heapprof:
 * allocates 4000 x 16 KiB with plain malloc() (plain_alloc), as many with
 * sl_malloc() (sl_alloc_site), 100 x 64 KiB through glibc's strdup()
 * (dup_site), keeps them all, and prints its heap profile as folded
 * stacks of inuse_space on stdout.  Exits 0, or 1 with a message.
 * Under AddressSanitizer or ThreadSanitizer the interposer is compiled
 * out (they own malloc) and test_heapprof does not run this.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/heapprof.h>

#include "obs/threads.h"
#include "util/alloc.h"

#define N  4000
#define SZ 16384

static void *plain[N], *own[N];
static char *dups[100];

__attribute__((noinline)) static void
plain_alloc(void)
{
	int i;

	for (i = 0; i < N; i++) {
		plain[i] = malloc(SZ);
		if (!plain[i])
			abort();
	}
}

__attribute__((noinline)) static void
sl_alloc_site(void)
{
	int i;

	for (i = 0; i < N; i++) {
		own[i] = sl_malloc(SZ);
		if (!own[i])
			abort();
	}
}

/* Through a volatile pointer: gcc -O2 would otherwise turn strdup of a
 * known string into malloc + memcpy in this function, and the allocation
 * would no longer happen inside glibc. */
static char *(*volatile dup_fn)(const char *) = strdup;

__attribute__((noinline)) static void
dup_site(const char *s)
{
	int i;

	for (i = 0; i < 100; i++) {
		dups[i] = dup_fn(s);
		if (!dups[i])
			abort();
	}
}

static void *
nothing(void *arg)
{
	return arg;
}

/*
 * A thread started while every allocation is sampled: registering it looks
 * up its stack bounds with pthread_getattr_np(), which allocates under the
 * thread's own lock; the sample's stack walk must not look them up again
 * (that deadlocked once).  Returns only if it did not.
 */
static void
thread_under_full_sampling(void)
{
	long rate = sluice_heap_profile_rate();
	pthread_t t;

	if (sluice_heap_profile_set_rate(1) != 0 ||
	    sl_thread_create(&t, "sampled", nothing, NULL) != 0 ||
	    pthread_join(t, NULL) != 0)
		abort();
	(void)sluice_heap_profile_set_rate(rate);
}

int
main(void)
{
	static char big[65536];
	int i;

	memset(big, 'x', sizeof(big) - 1);
	plain_alloc();
	sl_alloc_site();
	dup_site(big);
	thread_under_full_sampling();
	if (sluice_profile_write_path(SLUICE_PROFILE_HEAP,
				      SLUICE_PROFILE_FOLDED,
				      "/dev/stdout") != 0) {
		fprintf(stderr, "write failed\n");
		return 1;
	}
	for (i = 0; i < N; i++) {
		free(plain[i]);
		sl_free(own[i]);
	}
	for (i = 0; i < 100; i++)
		free(dups[i]);
	return 0;
}
