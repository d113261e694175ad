/* SPDX-License-Identifier: MIT */
/*
 * profile.h - internal: a profile under construction (stacks of program
 * counters with values and labels), its three encodings (pprof's
 * profile.proto gzip, Brendan Gregg's folded stacks, a self-contained SVG
 * flame graph), and the in-process symbolizer they share.
 *
 * Every profile kind (cpu, heap/allocs, block, mutex, goroutine,
 * threadcreate) collects raw stacks its own way and then builds one of
 * these in normal (not signal) context.  Identical (stack, labels) keys are
 * merged by summing values.
 *
 * Stacks are leaf first.  pcs[0] is the exact PC of the leaf; callers are
 * return addresses minus one (so they fall inside the call instruction),
 * which is what pprof expects of every location but the leaf.
 *
 * Not thread-safe: one builder, one thread.
 */
#ifndef SL_OBS_PROFILE_H
#define SL_OBS_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/profile.h>

#include "obs/pb.h"

#define SL_PROF_MAX_DEPTH  64 /* frames kept per stack */
#define SL_PROF_MAX_VALUES 4  /* sample types per profile */

struct sl_prof_type {
	const char *type; /* e.g. "cpu", "alloc_space", "contentions" */
	const char *unit; /* e.g. "nanoseconds", "bytes", "count" */
};

/* A sample label: a string value (str != NULL) or a number with a unit. */
struct sl_prof_label {
	const char *key;
	const char *str;
	int64_t num;
	const char *num_unit; /* may be NULL */
};

struct sl_prof;

/*
 * sl_prof_new() - an empty profile with @ntypes (<= SL_PROF_MAX_VALUES)
 * sample types; @default_type names the one pprof shows first (NULL: the
 * last, as pprof does); @period_type/@period as in profile.proto (e.g.
 * {"cpu","nanoseconds"}, 10000000).  Strings are copied.
 * Returns NULL on ENOMEM.
 */
struct sl_prof *sl_prof_new(const struct sl_prof_type *types, size_t ntypes,
			    const char *default_type,
			    const struct sl_prof_type *period_type,
			    int64_t period);
void sl_prof_free(struct sl_prof *p);

/* time_nanos (wall clock, ns since the epoch) and duration_nanos. */
void sl_prof_set_time(struct sl_prof *p, int64_t time_nanos,
		      int64_t duration_nanos);

/* A comment line (profile.proto field 13), e.g. "sluice 0.3.0". */
int sl_prof_add_comment(struct sl_prof *p, const char *text);

/*
 * sl_prof_add() - add @values (one per sample type) for the stack @pcs
 * (@npcs frames, leaf first, truncated to SL_PROF_MAX_DEPTH) with
 * @nlabels labels.  Merges with an identical (stack, labels) sample.
 * Returns 0 or SLUICE_ENOMEM.
 */
int sl_prof_add(struct sl_prof *p, const uintptr_t *pcs, size_t npcs,
		const int64_t *values, const struct sl_prof_label *labels,
		size_t nlabels);

/* Encodings; each appends to @out (check sl_buf_failed()).  Return 0 or a
 * SLUICE_E* code. */
/* gzip'd profile.proto with mappings (build ids), locations, functions
 * named in-process (has_functions set), labels, time and period. */
int sl_prof_write_pprof(struct sl_prof *p, struct sl_buf *out);
/* "root;caller;leaf VALUE\n" per distinct stack, for sample type @index;
 * frames without a symbol are written as "0xADDR" (or "[module]"). */
int sl_prof_write_folded(struct sl_prof *p, size_t index, struct sl_buf *out);
/* A standalone interactive SVG flame graph (root at the bottom, click to
 * zoom, hover for the name and value) for sample type @index. */
int sl_prof_write_svg(struct sl_prof *p, size_t index, const char *title,
		      struct sl_buf *out);

/*
 * sl_prof_encode() - @p as @format (PPROF, FOLDED or SVG; sample type
 * @index and, for SVG, @title) in a new NUL-terminated buffer for the
 * caller (*@len excludes the NUL; free with sl_free).  Returns 0,
 * SLUICE_EINVAL for another format, or SLUICE_ENOMEM.
 */
int sl_prof_encode(struct sl_prof *p, enum sluice_profile_format format,
		   size_t index, const char *title, char **data, size_t *len);

/* ---- in-process symbolizer (symbolize.c) --------------------------------
 * Names come from each loaded object's .symtab (falling back to .dynsym,
 * then to /usr/lib/debug/.build-id/xx/yyyy.debug), with "@@GLIBC_2.x"
 * version suffixes stripped; not dladdr, which sees exported symbols only.
 * Thread-safe (an internal lock); objects are loaded lazily and cached for
 * the life of the process.  Never call from a signal handler.
 */

/* The name of the function containing @pc into @name; 0, or SLUICE_ENOENT
 * (then @name holds "[module]" when the module is known, else "0xADDR"). */
int sl_sym_name(uintptr_t pc, char *name, size_t size);

struct sl_sym_mapping {
	uintptr_t start, limit; /* executable segment [start, limit) */
	uint64_t offset;        /* file offset of start */
	const char *path;       /* "" for the main program is resolved to
				   /proc/self/exe's target */
	const char *build_id;   /* lower-case hex, "" when none */
};
/* The mapping containing @pc; 0 or SLUICE_ENOENT.  The strings live as
 * long as the process. */
int sl_sym_mapping(uintptr_t pc, struct sl_sym_mapping *out);

/* Every executable mapping of every loaded object, the main program's
 * first (pprof shows the first mapping as "File:"), into @out (up to
 * @max); returns how many exist. */
size_t sl_sym_mappings(struct sl_sym_mapping *out, size_t max);

#endif /* SL_OBS_PROFILE_H */
