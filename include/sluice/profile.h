/* SPDX-License-Identifier: MIT */
/*
 * profile.h - sluice's own profiles of its threads: a sampling CPU
 * profiler, the "goroutine" profile (every sluice thread and its current
 * stack) and the "threadcreate" profile (the stacks that started them).
 *
 * The names are Go's, so `go tool pprof` and the habits that go with it
 * work unchanged: a pprof-format CPU profile opens with
 * `go tool pprof -top FILE`, its labels with `go tool pprof -tags FILE`.
 *
 * What is sampled: the threads sluice registers (the engine's workers and
 * every thread started through sluice) and any thread that registered
 * itself.  Threads sluice does not know about, such as libmicrohttpd's
 * connection threads or the application's own, are not sampled: each
 * registered thread has a timer on its own CPU-time clock that interrupts
 * it with SIGPROF every 1/hz seconds of CPU it uses.  Every sample carries
 * the labels "thread" (the thread's name) and "stage" (what the thread was
 * doing: "fetch", "handler", "ack"...), when set.
 *
 * Stacks are found by following frame pointers: build with
 * -fno-omit-frame-pointer (and preferably clang, which keeps them in leaf
 * functions).  Time spent in code without frame pointers, such as glibc,
 * is charged to that code, but the function that called it may be lost.
 * Names are resolved in the process from the binaries' symbol tables, so
 * a profile is readable on another machine.
 *
 * The CPU profiler owns SIGPROF while it runs (and keeps a handler that
 * ignores stray ticks afterwards); it refuses to start if another SIGPROF
 * handler is installed.  The goroutine profile interrupts each registered
 * thread once with the real-time signal SIGRTMAX-6.
 */
#ifndef SLUICE_PROFILE_H
#define SLUICE_PROFILE_H

#include <stddef.h>
#include <stdio.h>

#include <sluice/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Sampling rate when sluice_cpu_profile_start() gets 0 (Go's default). */
#define SLUICE_CPU_PROFILE_DEFAULT_HZ 100
/* Highest rate: CPU-time timers are checked at the kernel's tick, so a
 * faster rate is not honoured (HZ=250 on common kernels). */
#define SLUICE_CPU_PROFILE_MAX_HZ     250

/* The HTTP Content-Type of each format. */
#define SLUICE_PROFILE_PPROF_CONTENT_TYPE "application/octet-stream"
#define SLUICE_PROFILE_TEXT_CONTENT_TYPE  "text/plain; charset=utf-8"
#define SLUICE_PROFILE_SVG_CONTENT_TYPE   "image/svg+xml"

enum sluice_profile_format {
	/* gzip'd profile.proto, for go tool pprof (Go's debug=0) */
	SLUICE_PROFILE_PPROF = 0,
	/* Brendan Gregg's folded stacks: "root;caller;leaf COUNT\n" */
	SLUICE_PROFILE_FOLDED = 1,
	/* a standalone interactive flame graph */
	SLUICE_PROFILE_SVG = 2,
	/* goroutine/threadcreate only, as Go's debug=1: a count per
	 * distinct stack, frames with names */
	SLUICE_PROFILE_TEXT = 3,
	/* goroutine only, as Go's debug=2: one block per thread,
	 * "thread TID NAME [STAGE]:" followed by its frames */
	SLUICE_PROFILE_TEXT_THREADS = 4,
};

/**
 * sluice_cpu_profile_start() - start sampling the CPU use of sluice's
 * threads.
 * @hz: samples per second of CPU per thread; 0 for
 *      SLUICE_CPU_PROFILE_DEFAULT_HZ; above SLUICE_CPU_PROFILE_MAX_HZ is
 *      lowered to it.
 * @err: if not NULL and @errlen > 0, a NUL-terminated message on failure
 *       ("" on success), cut to @errlen bytes.
 *
 * Threads registered after the start are sampled from their start; a
 * thread that ends during the profile keeps the samples it got.
 *
 * Returns: 0; SLUICE_EBUSY when a CPU profile is already running ("cpu
 * profiling already in use", the text Go's /debug/pprof/profile answers)
 * or another SIGPROF handler is installed; SLUICE_EINVAL for a negative
 * @hz; SLUICE_ENOMEM; -errno from sigaction.
 * Threads: any thread; one profile per process at a time.
 */
SLUICE_API SLUICE_NODISCARD int sluice_cpu_profile_start(int hz, char *err,
							 size_t errlen);

/**
 * sluice_cpu_profile_running() - whether a CPU profile is running.
 */
SLUICE_API int sluice_cpu_profile_running(void);

/**
 * sluice_cpu_profile_stop() - stop the CPU profile and encode it.
 * @format: SLUICE_PROFILE_PPROF, _FOLDED or _SVG.
 * @data: set to the profile, @len bytes (followed by a NUL not counted in
 *        @len, for the text formats' sake); free with
 *        sluice_profile_free().
 *
 * The samples are values [samples/count, cpu/nanoseconds] with period
 * 1e9/hz ns of CPU.  When the sample buffer fills (minutes of several busy
 * threads), later samples are dropped and a comment in the profile says
 * how many.
 *
 * Returns: 0; SLUICE_ESTATE when no profile is running; SLUICE_EINVAL
 * (@data or @len NULL, a format the CPU profile has not: the profile keeps
 * running); SLUICE_ENOMEM (the profile is stopped and lost).
 * Threads: any thread.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_cpu_profile_stop(enum sluice_profile_format format, char **data,
			size_t *len);

/**
 * sluice_cpu_profile_stop_file() - sluice_cpu_profile_stop() written to
 * @f (not closed).  Returns also -errno when writing fails.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_cpu_profile_stop_file(enum sluice_profile_format format, FILE *f);

/**
 * sluice_cpu_profile_stop_path() - sluice_cpu_profile_stop() written to a
 * new file at @path (replaced if it exists).  Returns also -errno from
 * opening or writing it.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_cpu_profile_stop_path(enum sluice_profile_format format,
			     const char *path);

/**
 * sluice_thread_register() - make the calling thread known to the
 * profilers: from now on it gets a CPU-time timer while a CPU profile
 * runs, and it is listed (with its stack) in the goroutine profile.
 * sluice registers the threads it starts itself; call this from your own
 * threads, or lazily from a callback another library runs on its threads
 * (an HTTP server's handler, say).  Idempotent.
 * @name: the thread's name in profiles; copied (first 15 bytes).
 *
 * Returns: 0; SLUICE_ENOMEM.
 * Threads: the calling thread only.
 */
SLUICE_API int sluice_thread_register(const char *name);

/**
 * sluice_thread_unregister() - undo sluice_thread_register() (a thread
 * that exits without it is unregistered by its key destructor).
 */
SLUICE_API void sluice_thread_unregister(void);

/**
 * sluice_goroutine_profile() - every registered thread and its current
 * stack (Go's "goroutine" profile: sluice's unit of concurrency is a
 * thread).
 * @format: any; pprof has one sample [goroutine/count] per thread with the
 *          labels "thread" and "stage".
 * @data, @len: as for sluice_cpu_profile_stop().
 *
 * Each thread records its own stack in a signal handler; a thread that
 * does not answer within a second (the signal blocked) is listed without
 * a stack in the text formats and left out of the others.
 *
 * Returns: 0; SLUICE_EINVAL; SLUICE_ENOMEM; SLUICE_EBUSY when another
 * handler owns SIGRTMAX-6.
 * Threads: any thread, including a registered one.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_goroutine_profile(enum sluice_profile_format format, char **data,
			 size_t *len);

/**
 * sluice_threadcreate_profile() - the stacks that started the registered
 * threads through sluice (threads that registered themselves have none),
 * one [threadcreate/count] sample each.
 * @format: any but SLUICE_PROFILE_TEXT_THREADS.
 *
 * Returns: 0; SLUICE_EINVAL; SLUICE_ENOMEM.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_threadcreate_profile(enum sluice_profile_format format, char **data,
			    size_t *len);

/**
 * sluice_profile_free() - free a profile returned by the calls above.
 * NULL is a no-op.
 */
SLUICE_API void sluice_profile_free(char *data);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_PROFILE_H */
