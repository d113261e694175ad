/* SPDX-License-Identifier: MIT */
/*
 * alloc.c - heap wrappers with fault injection for tests.
 *
 * The countdown is one relaxed atomic; when injection is off (the normal
 * case) the cost is a single load per allocation.
 */
#include "util/alloc.h"

#include <stdatomic.h>
#include <stdlib.h>

static _Atomic unsigned long fail_countdown; /* 0 = off */
static _Atomic int fail_sticky;

static int
should_fail(void)
{
	unsigned long c =
		atomic_load_explicit(&fail_countdown, memory_order_relaxed);

	if (c == 0)
		return 0;
	if (c == 1) {
		if (!atomic_load_explicit(&fail_sticky, memory_order_relaxed))
			atomic_store_explicit(&fail_countdown, 0,
					      memory_order_relaxed);
		return 1;
	}
	atomic_fetch_sub_explicit(&fail_countdown, 1, memory_order_relaxed);
	return 0;
}

void
sl_alloc_fail_after(unsigned long n, int sticky)
{
	atomic_store(&fail_sticky, sticky);
	atomic_store(&fail_countdown, n);
}

void *
sl_malloc(size_t n)
{
	if (should_fail())
		return NULL;
	return malloc(n ? n : 1);
}

void *
sl_calloc(size_t nmemb, size_t size)
{
	if (should_fail())
		return NULL;
	return calloc(nmemb ? nmemb : 1, size ? size : 1);
}

void *
sl_realloc(void *p, size_t n)
{
	if (should_fail())
		return NULL;
	return realloc(p, n ? n : 1);
}

void
sl_free(void *p)
{
	free(p);
}
