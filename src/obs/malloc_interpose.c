/* SPDX-License-Identifier: MIT */
/*
 * malloc_interpose.c - the heap profiler's whole-process mode: defines
 * malloc and the rest of the C allocation API over glibc's exported
 * __libc_* entry points, feeding the sampler of util/alloc.c.
 *
 * Built as its own static library (libsluice_heapprof.a); a program opts
 * in by linking it, and then every allocation of the process, glibc's own
 * included, is sampled.  sl_malloc stands down while this is linked
 * (sl_heap_set_process_scope() from the constructor), so nothing is
 * sampled twice.
 *
 * The sampled path unwinds (threads.c may call pthread_getattr_np, which
 * allocates) and takes the sampler's lock: a thread-local flag (initial-
 * exec TLS, which never allocates) sends allocations made inside it
 * straight to glibc.  The fast path is one call to glibc plus the
 * countdown; free looks at the sampler only while sampled blocks live.
 *
 * Not with AddressSanitizer or ThreadSanitizer: both replace malloc
 * themselves (blocks from their allocators must not reach glibc's free,
 * and TSan's start-up calls calloc before its runtime can run our
 * instrumented code).  The file compiles to nothing there.
 */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SL_NO_INTERPOSE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SL_NO_INTERPOSE 1
#endif
#endif

#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>

#include "obs/heapprof_int.h"

#ifndef SL_NO_INTERPOSE

void *__libc_malloc(size_t n);
void *__libc_calloc(size_t nmemb, size_t size);
void *__libc_realloc(void *p, size_t n);
void __libc_free(void *p);
void *__libc_memalign(size_t align, size_t n);
void *__libc_valloc(size_t n);
void *__libc_pvalloc(size_t n);

extern const char __start_sl_prof_skip[]
	__attribute__((weak, visibility("hidden")));
extern const char __stop_sl_prof_skip[]
	__attribute__((weak, visibility("hidden")));

static __thread int in_hook __attribute__((tls_model("initial-exec")));

/* Before any other constructor, so sl_malloc stands down at once. */
__attribute__((constructor(101))) static void
interpose_init(void)
{
	sl_heap_set_process_scope();
	/* This object's frames are skipped even when libsluice is a shared
	 * library (its own section range does not cover ours). */
	sl_prof_skip_range_add((uintptr_t)__start_sl_prof_skip,
			       (uintptr_t)__stop_sl_prof_skip);
}

SL_PROF_SKIP static void *
sampled(void *p, size_t n)
{
	if (!in_hook) {
		in_hook = 1;
		sl_heap_sample(&sl_heap_tls_proc, SL_HEAP_SCOPE_PROCESS, p, n);
		in_hook = 0;
	}
	return p;
}

SL_PROF_SKIP_INLINE static inline void *
note(void *p, size_t n)
{
	if (p && (sl_heap_tls_proc.left -= (int64_t)n) < 0)
		return sampled(p, n);
	return p;
}

SL_PROF_SKIP_INLINE static inline void
forget(void *p)
{
	if (p && atomic_load_explicit(&sl_heap_live, memory_order_relaxed))
		sl_heap_forget(SL_HEAP_SCOPE_PROCESS, p);
}

/*
 * Default visibility whatever -fvisibility the build uses: a hidden
 * malloc would only catch this executable's own calls, while libc's
 * (strdup, fopen...) and other libraries' would still reach glibc's.
 */
#pragma GCC visibility push(default)

SL_PROF_SKIP void *
malloc(size_t n)
{
	return note(__libc_malloc(n), n);
}

SL_PROF_SKIP void
free(void *p)
{
	forget(p);
	__libc_free(p);
}

SL_PROF_SKIP void *
calloc(size_t nmemb, size_t size)
{
	size_t n;

	if (__builtin_mul_overflow(nmemb, size, &n))
		return __libc_calloc(nmemb, size); /* fails with ENOMEM */
	return note(__libc_calloc(nmemb, size), n);
}

SL_PROF_SKIP void *
realloc(void *p, size_t n)
{
	struct sl_heap_taken tk;
	uintptr_t old = (uintptr_t)p;
	void *q;

	if (p && n == 0) {
		/* glibc frees here and returns NULL */
		forget(p);
		return __libc_realloc(p, 0);
	}
	if (p && atomic_load_explicit(&sl_heap_live, memory_order_relaxed) &&
	    sl_heap_take(SL_HEAP_SCOPE_PROCESS, p, &tk)) {
		q = __libc_realloc(p, n);
		sl_heap_moved(old, q, n, &tk);
		return q;
	}
	return note(__libc_realloc(p, n), n);
}

SL_PROF_SKIP void *
reallocarray(void *p, size_t nmemb, size_t size)
{
	size_t n;

	if (__builtin_mul_overflow(nmemb, size, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(p, n);
}

SL_PROF_SKIP void *
memalign(size_t align, size_t n)
{
	return note(__libc_memalign(align, n), n);
}

SL_PROF_SKIP void *
aligned_alloc(size_t align, size_t n)
{
	return note(__libc_memalign(align, n), n);
}

SL_PROF_SKIP int
posix_memalign(void **out, size_t align, size_t n)
{
	void *p;

	if (align % sizeof(void *) != 0 || (align & (align - 1)) != 0 ||
	    align == 0)
		return EINVAL;
	p = __libc_memalign(align, n);
	if (!p)
		return ENOMEM;
	*out = note(p, n);
	return 0;
}

SL_PROF_SKIP void *
valloc(size_t n)
{
	return note(__libc_valloc(n), n);
}

SL_PROF_SKIP void *
pvalloc(size_t n)
{
	return note(__libc_pvalloc(n), n);
}

#pragma GCC visibility pop

#endif /* !SL_NO_INTERPOSE */
