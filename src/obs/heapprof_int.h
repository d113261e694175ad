/* SPDX-License-Identifier: MIT */
/*
 * heapprof_int.h - internal: the sampling core shared by the heap profiler
 * (sl_malloc and the opt-in malloc interposer) and the block/mutex
 * profiles, and the stack tables they record into.
 *
 * The core lives in src/util/alloc.c so that every program linking
 * sl_malloc gets it without pulling in the encoders (heapprof.c) or the
 * unwinder (threads.c, referenced weakly: without it stacks are empty).
 *
 * Heap sampling: each scope (sluice's own allocations, the whole process)
 * keeps a per-thread byte countdown; an allocation that takes it below
 * zero is sampled and the countdown is redrawn from an exponential
 * distribution with mean sluice_heapprof_rate() bytes (Go's MemProfileRate).
 * A sampled block's pointer goes into a fixed table (SL_HEAP_MAX_LIVE
 * entries) with its size and stack bucket; free() looks there only when
 * some sampled block is live (sl_heap_live) and a counting filter says
 * the pointer may be in it, so freeing unsampled memory costs one relaxed
 * load, and one more (the filter) while sampled blocks are live.
 *
 * Locking: one mutex guards the live table and the heap's stack table;
 * it is only taken for a sampled allocation, a filter hit in free(), and
 * a snapshot.  Nothing under it allocates (the tables are mmap'd), so the
 * interposed malloc can never re-enter it.
 */
#ifndef SL_OBS_HEAPPROF_INT_H
#define SL_OBS_HEAPPROF_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SL_STK_DEPTH         32         /* frames kept per stack, as Go */
#define SL_STK_VALUES        4          /* counters per stack bucket */
#define SL_HEAP_MAX_LIVE     (1u << 15) /* sampled blocks tracked at once */
#define SL_HEAP_MAX_STACKS   (1u << 14) /* distinct allocation stacks */
#define SL_HEAP_DEFAULT_RATE (512 * 1024)

/* Functions whose frames are trimmed from the leaf end of every recorded
 * stack: the allocator wrappers, the interposer, the samplers. */
#define SL_PROF_SKIP        __attribute__((section("sl_prof_skip"), noinline))
/* The same section for small helpers that should still inline. */
#define SL_PROF_SKIP_INLINE __attribute__((section("sl_prof_skip")))

/* Fill @pcs (leaf first) with the calling stack, frames in SL_PROF_SKIP
 * functions removed; returns the depth (0 without threads.c linked). */
size_t sl_prof_stack_here(uintptr_t *pcs, size_t max);
/* Another module's SL_PROF_SKIP section (the interposer in an executable
 * using the shared library); at most a few. */
void sl_prof_skip_range_add(uintptr_t start, uintptr_t stop);

/* A thread-local xorshift generator (cheap, not for secrets). */
uint64_t sl_prof_rand(void);

/* ---- stack tables ------------------------------------------------------ */

struct sl_stk_bucket {
	uint64_t hash;
	uint32_t depth;
	uint32_t pad;
	uintptr_t pcs[SL_STK_DEPTH];
	int64_t v[SL_STK_VALUES];
};

/* A bounded table of distinct stacks, each with SL_STK_VALUES counters.
 * Not locked itself: the owner's lock guards every call but the atomic
 * count.  Storage is mmap'd on first use. */
struct sl_stktab {
	struct sl_stk_bucket *b;  /* [cap], owner's lock */
	uint32_t *index;          /* [2 * cap] open addressing, 0 = empty */
	uint32_t cap;             /* fixed at first use */
	_Atomic uint32_t n;       /* buckets used; written under the lock */
	_Atomic uint64_t dropped; /* events lost because the table was full */
};

/* The bucket for (@pcs, @n), created if needed; UINT32_MAX when full (and
 * dropped counted).  Caller holds the owner's lock. */
uint32_t sl_stktab_get(struct sl_stktab *t, uint32_t cap, const uintptr_t *pcs,
		       size_t n);
/* Copy the table into a new sl_malloc'd array (*@out, *@n buckets), taking
 * @mu only while copying (never while allocating).  0 or SLUICE_ENOMEM. */
int sl_stktab_copy(struct sl_stktab *t, pthread_mutex_t *mu,
		   struct sl_stk_bucket **out, size_t *n);

/* ---- heap sampling core ------------------------------------------------ */

/* Counters in a heap stack bucket (sampled events, not scaled). */
enum { SL_HEAP_ALLOC_N, SL_HEAP_ALLOC_B, SL_HEAP_FREE_N, SL_HEAP_FREE_B };

/* Per-thread, per-scope sampler state (initial-exec TLS in its owner). */
struct sl_heap_tls {
	int64_t left; /* bytes until the next sample; <0: slow path */
	unsigned gen; /* sl_heap_gen when the countdown was drawn */
	bool init;
};

enum sl_heap_scope { SL_HEAP_SCOPE_SLUICE, SL_HEAP_SCOPE_PROCESS };

extern _Atomic long sl_heap_live; /* sampled blocks live now */
/* The whole-process scope's countdowns, used by the interposer. */
extern __thread struct sl_heap_tls sl_heap_tls_proc
	__attribute__((tls_model("initial-exec")));

/* The countdown of @t crossed zero for @p (@size bytes): maybe record it,
 * then redraw.  Called only from the scope's allocation wrappers. */
void sl_heap_sample(struct sl_heap_tls *t, enum sl_heap_scope scope, void *p,
		    size_t size);
/* @p is being freed: drop its record if it has one.  Call only when
 * sl_heap_live is non-zero, before the memory is released. */
void sl_heap_forget(enum sl_heap_scope scope, void *p);

/* realloc support: take @p's record out before the call (false: none),
 * then sl_heap_moved() with the old address (as an integer: the block may
 * be gone) and the result (NULL: failed, the record is restored). */
struct sl_heap_taken {
	size_t size;
	uint32_t bucket;
};
bool sl_heap_take(enum sl_heap_scope scope, void *p, struct sl_heap_taken *tk);
void sl_heap_moved(uintptr_t oldp, void *newp, size_t size,
		   const struct sl_heap_taken *tk);

/* The interposer announces itself (from a constructor): from then on the
 * process scope samples everything, sl_malloc's own sampling stands down
 * so nothing is counted twice. */
void sl_heap_set_process_scope(void);
bool sl_heap_process_scope(void);

/* Rate (bytes, 0 = off) and the last non-zero one (for unsampling). */
long sl_heap_rate(void);
long sl_heap_scale_rate(void);
void sl_heap_set_rate(long rate);

/* The heap stack table and its lock, for snapshots. */
struct sl_stktab *sl_heap_stacks(pthread_mutex_t **mu);
struct sl_heap_stats_int {
	uint64_t sampled, dropped_live, dropped_stacks;
	long live;
};
void sl_heap_stats(struct sl_heap_stats_int *out);

#endif /* SL_OBS_HEAPPROF_INT_H */
