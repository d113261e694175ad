/* SPDX-License-Identifier: MIT */
/*
 * alloc.h - the only door to the heap for sluice's own code.
 *
 * Everything allocates through sl_malloc/sl_calloc/sl_realloc/sl_free so a
 * test build can fail the Nth allocation (sl_alloc_fail_after) and prove each
 * caller handles ENOMEM.  Raw malloc and friends are banned elsewhere in src/
 * by scripts/check-banned.sh.
 */
#ifndef SL_ALLOC_H
#define SL_ALLOC_H

#include <stddef.h>

void *sl_malloc(size_t n);
void *sl_calloc(size_t nmemb, size_t size);
void *sl_realloc(void *p, size_t n);
void sl_free(void *p);
/* A copy of @s from sl_malloc; NULL on ENOMEM. */
char *sl_strdup(const char *s);

/* Allocation n (1-based) from now on fails, and every one after it while
 * @sticky; 0 disables.  For tests; not thread-aware beyond being atomic. */
void sl_alloc_fail_after(unsigned long n, int sticky);

#endif /* SL_ALLOC_H */
