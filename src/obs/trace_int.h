/* SPDX-License-Identifier: MIT */
/*
 * trace_int.h - internal: the execution trace's probes, and the cheap
 * stopwatch (TSC ticks) shared with the engine's latency histograms.
 *
 * A probe is one relaxed load of sl_trace_on when tracing is off.  When it
 * is on, sl_trace_rec() appends one 32-byte record to the calling thread's
 * current chunk (see trace.c for the buffer design and its quiescence
 * protocol).  Names and argument keys are static strings: a record stores
 * the pointer, never a copy.
 *
 * Slices (SL_TR_BEGIN/END) must nest per thread in code order; the writer
 * repairs what a start or stop in the middle of a slice cut off.  Flows
 * (OUT inside the producer's slice, IN inside the consumer's) and async
 * spans (ASYNC_BEGIN/END, any thread, same id) are matched by id when the
 * trace is written; unmatched halves are left out of the output.
 */
#ifndef SL_OBS_TRACE_INT_H
#define SL_OBS_TRACE_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <sluice/trace.h>

#include "obs/pb.h"

enum sl_tr_kind {
	SL_TR_BEGIN = 1,   /* thread slice begins: name, arg */
	SL_TR_END,         /* thread slice ends: name */
	SL_TR_INSTANT,     /* thread instant: name, arg */
	SL_TR_COUNTER,     /* process counter: name = value (int64 in val) */
	SL_TR_FLOW_OUT,    /* flow starts here: val = flow id */
	SL_TR_FLOW_IN,     /* flow ends here: val = flow id */
	SL_TR_ASYNC_BEGIN, /* async span begins: val = id, arg */
	SL_TR_ASYNC_END,   /* async span ends: val = id */
};

/* 1 while recording.  Relaxed in probes; trace.c orders the rest. */
extern _Atomic int sl_trace_on;

/* Out of line: the slow part of every probe.  @akey names the optional
 * argument @aux (NULL: none). */
void sl_trace_rec(unsigned kind, const char *name, uint64_t val,
		  const char *akey, uint32_t aux);

static inline bool
sl_trace_active(void)
{
	return atomic_load_explicit(&sl_trace_on, memory_order_relaxed) != 0;
}

/* A probe: record the event only while tracing. */
static inline void
sl_tr(unsigned kind, const char *name, uint64_t val, const char *akey,
      uint32_t aux)
{
	if (sl_trace_active())
		sl_trace_rec(kind, name, val, akey, aux);
}

/* The probes by kind (see enum sl_tr_kind for what each field means). */
static inline void
sl_tr_begin(const char *name)
{
	sl_tr(SL_TR_BEGIN, name, 0, NULL, 0);
}

static inline void
sl_tr_begin_arg(const char *name, const char *akey, uint32_t aux)
{
	sl_tr(SL_TR_BEGIN, name, 0, akey, aux);
}

static inline void
sl_tr_end(const char *name)
{
	sl_tr(SL_TR_END, name, 0, NULL, 0);
}

static inline void
sl_tr_instant(const char *name, const char *akey, uint32_t aux)
{
	sl_tr(SL_TR_INSTANT, name, 0, akey, aux);
}

static inline void
sl_tr_counter(const char *name, int64_t v)
{
	sl_tr(SL_TR_COUNTER, name, (uint64_t)v, NULL, 0);
}

static inline void
sl_tr_flow_out(const char *name, uint64_t id)
{
	sl_tr(SL_TR_FLOW_OUT, name, id, NULL, 0);
}

static inline void
sl_tr_flow_in(const char *name, uint64_t id)
{
	sl_tr(SL_TR_FLOW_IN, name, id, NULL, 0);
}

static inline void
sl_tr_async_begin(const char *name, uint64_t id, const char *akey, uint32_t aux)
{
	sl_tr(SL_TR_ASYNC_BEGIN, name, id, akey, aux);
}

static inline void
sl_tr_async_end(const char *name, uint64_t id)
{
	sl_tr(SL_TR_ASYNC_END, name, id, NULL, 0);
}

/* Render the stopped trace into @b; 0, SLUICE_ESTATE (recording),
 * SLUICE_ENOMEM. */
int sl_trace_write_buf(struct sl_buf *b, enum sluice_trace_format fmt);

/*
 * The stopwatch: TSC ticks where the TSC is constant and non-stop (checked
 * once in /proc/cpuinfo), else CLOCK_MONOTONIC nanoseconds.  Call
 * sl_ticks_init() (idempotent, calibrates once per process over ~2 ms)
 * before the first sl_ticks(); sl_ticks_ns_per_tick() is then fixed.
 */
extern _Atomic int sl_ticks_tsc;
void sl_ticks_init(void);
double sl_ticks_ns_per_tick(void);

static inline uint64_t
sl_ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
	if (atomic_load_explicit(&sl_ticks_tsc, memory_order_relaxed)) {
		uint32_t lo, hi;

		__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
		return ((uint64_t)hi << 32) | lo;
	}
#endif
	{
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	}
}

#endif /* SL_OBS_TRACE_INT_H */
