/* SPDX-License-Identifier: MIT */
/*
 * heapprof.h - the sampled heap profile and the block and mutex
 * (contention) profiles, with Go's names and sample types so that
 * `go tool pprof` reads them as it reads Go's /debug/pprof/heap, allocs,
 * block and mutex.
 *
 * Heap ("heap", "allocs"): about one allocation per
 * sluice_heap_profile_rate() bytes (512 KiB, Go's MemProfileRate) is
 * sampled with its stack, at random (Poisson: exponential gaps between
 * sampled bytes, drawn per thread).  The profile has Go's four sample
 * types alloc_objects/count, alloc_space/bytes, inuse_objects/count and
 * inuse_space/bytes, scaled up to estimates of the true totals with Go's
 * formula 1/(1-exp(-size/rate)); "heap" shows inuse_space first, "allocs"
 * alloc_space.  Two scopes:
 *   - sluice's own allocations: always, no set-up;
 *   - every malloc/free of the process: link the opt-in library
 *     libsluice_heapprof (it defines malloc, free, calloc, realloc,
 *     posix_memalign, aligned_alloc, memalign, valloc, pvalloc and
 *     reallocarray over glibc's).  Not with AddressSanitizer or
 *     ThreadSanitizer, which own malloc themselves: the library is empty
 *     in such builds.
 * At most 32768 sampled blocks are watched at once (16 GiB of live heap
 * at the default rate) and 16384 distinct stacks kept: past that, a
 * sampled block is counted allocated and freed at once, a sample with a
 * new stack is dropped; the profile's comments say how many.
 *
 * Block ("block"): time sluice's threads spend waiting in sluice's own
 * queues, as contentions/count and delay/nanoseconds, sampled like Go's
 * SetBlockProfileRate and charged to the waiter's stack.
 * Mutex ("mutex"): time spent waiting for sluice's contended locks,
 * sampled like Go's SetMutexProfileFraction, charged to the waiter (Go
 * charges the unlocker).  Both are off by default and cost one relaxed
 * load per wait while off.
 *
 * Stacks follow frame pointers: see <sluice/profile.h>.
 */
#ifndef SLUICE_HEAPPROF_H
#define SLUICE_HEAPPROF_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/common.h>
#include <sluice/profile.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Go's MemProfileRate default: one sample per 512 KiB allocated. */
#define SLUICE_HEAP_PROFILE_DEFAULT_RATE (512 * 1024)

enum sluice_profile_kind {
	SLUICE_PROFILE_HEAP = 0,   /* default sample index inuse_space */
	SLUICE_PROFILE_ALLOCS = 1, /* the same data, alloc_space first */
	SLUICE_PROFILE_BLOCK = 2,  /* contentions/count, delay/nanoseconds */
	SLUICE_PROFILE_MUTEX = 3,  /* the same types */
};

/**
 * sluice_heap_profile_set_rate() - sample about one allocation per @bytes
 * allocated (1: every allocation; 0: stop sampling; blocks sampled before
 * stay in the profile until freed).  The calling thread uses the new rate
 * from its next allocation, other threads from their next sample.
 *
 * Returns: 0; SLUICE_EINVAL for a negative @bytes.
 * Threads: any thread.
 */
SLUICE_API int sluice_heap_profile_set_rate(long bytes);
SLUICE_API long sluice_heap_profile_rate(void);

/**
 * sluice_block_profile_set_rate() - record about one blocking event per
 * @ns nanoseconds spent blocked (Go's SetBlockProfileRate): a wait of at
 * least @ns is always recorded, a shorter one with probability wait/@ns
 * and then counted as @ns/wait waits of @ns in total.  1: every wait;
 * <= 0: off.
 * Threads: any thread.
 */
SLUICE_API void sluice_block_profile_set_rate(int64_t ns);

/**
 * sluice_mutex_profile_set_fraction() - record about one contended lock
 * in @fraction (each counted @fraction times); 0 turns it off; a negative
 * @fraction only reads.  Returns the previous fraction, as Go's
 * SetMutexProfileFraction does.
 * Threads: any thread.
 */
SLUICE_API int sluice_mutex_profile_set_fraction(int fraction);

/* The profile's counters at one moment, for a delta between two. */
struct sluice_profile_snapshot;

/**
 * sluice_profile_snapshot() - copy the counters of profile @kind.
 * @out: set to the snapshot; free with sluice_profile_snapshot_free().
 *
 * Returns: 0; SLUICE_EINVAL (@out NULL or @kind unknown); SLUICE_ENOMEM.
 * Threads: any thread.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_profile_snapshot(enum sluice_profile_kind kind,
			struct sluice_profile_snapshot **out);
SLUICE_API void sluice_profile_snapshot_free(struct sluice_profile_snapshot *s);

/**
 * sluice_profile_encode() - encode a snapshot, or what changed since an
 * earlier one.
 * @s: the snapshot.
 * @base: NULL, or an earlier snapshot of the same profile: then every
 *        value is @s's minus @base's (Go's heap?seconds=N answers this
 *        "delta" profile: allocations made, and in-use change, in
 *        between).  A snapshot of "heap" and one of "allocs" count as the
 *        same profile.
 * @format: SLUICE_PROFILE_PPROF, _FOLDED, _SVG, or _TEXT (Go's debug=1:
 *          "heap profile: ..." or "--- contention: ..." with unscaled
 *          counts and named frames).
 * @sample_index: for _FOLDED and _SVG, the sample type to show
 *                ("inuse_space", "alloc_objects", "delay"...); NULL for
 *                the profile's default.  Ignored by the others.
 * @data, @len: the encoded profile, @len bytes followed by a NUL; free
 *              with sluice_profile_free().
 *
 * Returns: 0; SLUICE_EINVAL (a NULL argument, profiles that differ, an
 * unknown format or sample index); SLUICE_ENOMEM.
 * Threads: any thread.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_profile_encode(const struct sluice_profile_snapshot *s,
		      const struct sluice_profile_snapshot *base,
		      enum sluice_profile_format format,
		      const char *sample_index, char **data, size_t *len);

/**
 * sluice_profile_write_path() - snapshot profile @kind now and write it
 * as @format to a new file at @path (replaced if it exists): Go's
 * runtime/pprof.WriteHeapProfile, and `--memprofile FILE`.
 *
 * Returns: 0; SLUICE_EINVAL; SLUICE_ENOMEM; -errno from opening or
 * writing the file.
 * Threads: any thread.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_profile_write_path(enum sluice_profile_kind kind,
			  enum sluice_profile_format format, const char *path);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_HEAPPROF_H */
