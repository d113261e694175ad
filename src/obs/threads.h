/* SPDX-License-Identifier: MIT */
/*
 * threads.h - internal: the registry of sluice's own threads, and stack
 * capture by frame-pointer walk.
 *
 * Every thread sluice starts goes through sl_thread_create(), which records
 * the creator's stack (the threadcreate profile), and registers the new
 * thread before its function runs: name, kernel tid, pthread_t, stack
 * bounds (for bounded unwinding in signal handlers), and a per-thread
 * "stage" label the worker sets as it goes ("fetch", "handler", "ack"...).
 * The CPU profiler arms a per-thread CPU-time timer for each registered
 * thread; the goroutine profile samples each one's current stack.
 * Threads sluice does not start (the caller's, libmicrohttpd's) may call
 * sl_thread_register()/sl_thread_unregister() themselves.
 *
 * sl_thread_set_stage() is one relaxed store to an initial-exec TLS slot:
 * cheap enough for the per-message path, and readable from a signal
 * handler on that thread.
 */
#ifndef SL_OBS_THREADS_H
#define SL_OBS_THREADS_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Clock @c (CLOCK_REALTIME, a thread's CPU clock...) in nanoseconds, for
 * the registry's timestamps and the profilers'.  Async-signal-safe. */
static inline int64_t
sl_clock_ns(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Start @fn(@arg) on a new thread named @name (a static string, at most 15
 * bytes are given to pthread_setname_np), registered in the registry for
 * its whole life.  Same return as pthread_create (0 or an errno value). */
int sl_thread_create(pthread_t *thr, const char *name, void *(*fn)(void *),
		     void *arg);

/* Register / unregister the calling thread (idempotent). */
int sl_thread_register(const char *name);
void sl_thread_unregister(void);

/* The calling thread's current stage: a static string, or NULL. */
void sl_thread_set_stage(const char *stage);
const char *sl_thread_stage(void);

/*
 * sl_unwind() - walk frame pointers starting at frame @fp with leaf PC
 * @pc, every load bounded by the calling thread's stack [@sp, stack top).
 * Fills @pcs (leaf first, callers as return address - 1) and returns the
 * count.  Async-signal-safe.  sl_unwind_here() does the same from its
 * caller, skipping @skip frames.
 */
size_t sl_unwind(uintptr_t pc, uintptr_t fp, uintptr_t sp, uintptr_t *pcs,
		 size_t max);
size_t sl_unwind_here(uintptr_t *pcs, size_t max, size_t skip);
/* sl_unwind() from the registers in a signal handler's ucontext_t
 * (x86-64 and aarch64; elsewhere nothing).  Async-signal-safe. */
size_t sl_unwind_ucontext(const void *uc, uintptr_t *pcs, size_t max);

/* A snapshot of one registered thread (sl_threads_snapshot). */
struct sl_thread_info {
	int tid;
	char name[16];
	const char *stage;
	int64_t created_ns;       /* CLOCK_REALTIME */
	uintptr_t create_pcs[32]; /* the creator's stack, leaf first */
	size_t create_npcs;
};
/* Copy up to @max registered threads into @out; returns how many exist. */
size_t sl_threads_snapshot(struct sl_thread_info *out, size_t max);

/* ---- for the profilers (cpuprof.c) ------------------------------------ */

#define SL_THREAD_MAX_DEPTH 64 /* frames captured per thread */

/* A registered thread and its current stack (sl_threads_capture). */
struct sl_thread_stack {
	struct sl_thread_info info;
	uintptr_t pcs[SL_THREAD_MAX_DEPTH]; /* leaf first */
	size_t npcs;
	int captured; /* 0: the thread did not answer in time */
};
/*
 * sl_threads_capture() - the current stack of up to @max registered
 * threads, each taken by the thread itself in a handler for
 * SL_THREAD_CAPTURE_SIG, waiting at most @timeout_ns for all of them.
 * Returns how many threads are registered (may exceed @max), or a
 * negative SLUICE_E* code (SLUICE_EBUSY: someone else handles the signal).
 */
#define SL_THREAD_CAPTURE_SIG (SIGRTMAX - 6)
long sl_threads_capture(struct sl_thread_stack *out, size_t max,
			int64_t timeout_ns);

/* What the CPU profiler keeps per registered thread (under the registry
 * lock). */
struct sl_thread_prof {
	int tid;
	pthread_t thr;
	timer_t timer;
	int armed; /* timer is valid */
};
/*
 * sl_threads_set_prof_hook() - install @fn (NULL removes the current one).
 * Called with the registry lock held: fn(tp, 1) for every registered
 * thread when installed and for each thread registering later;
 * old(tp, 0) for each thread unregistering and for every registered thread
 * when the hook is removed.  @fn must not call into the registry.
 */
void sl_threads_set_prof_hook(void (*fn)(struct sl_thread_prof *tp,
					 int attach));

/* The calling thread's registry serial number and name (a copy of 16
 * bytes into @name), or 0 when it is not registered.  Async-signal-safe. */
uint64_t sl_thread_self_id(char name[16]);

#endif /* SL_OBS_THREADS_H */
