/* SPDX-License-Identifier: MIT */
/*
 * map.h - a thread-safe sharded hash map with optional per-entry TTL.
 *
 * The seed's lesson 6: Go maps are not safe across goroutines.  This one is:
 * keys hash (seeded, so hostile keys cannot force collisions) to one of a
 * power-of-two number of shards, each with its own mutex, so threads touching
 * different keys rarely contend.  Keys and values are byte strings copied in
 * and copied out; no pointer into the map ever escapes a lock, so there is no
 * use-after-free when another thread deletes.  An entry with a TTL disappears
 * once the map's clock passes its expiry (checked on access, reclaimed by
 * sluice_map_sweep()).  No callback ever runs under a shard lock.
 */
#ifndef SLUICE_MAP_H
#define SLUICE_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/clock.h>
#include <sluice/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sluice_map;

/* TTL meaning "never expires". */
#define SLUICE_MAP_NO_TTL ((int64_t)0)

/**
 * sluice_map_new() - an empty map.
 * @nshards: rounded up to a power of two; 0 picks 16.
 * @max_entries: hard cap over all shards; inserts beyond it fail with
 *               SLUICE_ENOMEM unless expired entries can be reclaimed;
 *               0 = no cap.
 * @clock: borrowed; the time TTLs count on.
 *
 * Returns: 0 and *@out (free with sluice_map_free()), or SLUICE_ENOMEM /
 * SLUICE_EINVAL.
 */
SLUICE_API SLUICE_NODISCARD int sluice_map_new(unsigned nshards,
					       size_t max_entries,
					       const struct sluice_clock *clock,
					       struct sluice_map **out);

/** sluice_map_free() - free the map and all entries.  NULL is a no-op. */
SLUICE_API void sluice_map_free(struct sluice_map *m);

/**
 * sluice_map_put() - insert or replace @key with a copy of @val.
 * @ttl_ns: lifetime from now, or SLUICE_MAP_NO_TTL.
 *
 * Returns: 0, SLUICE_ENOMEM.
 */
SLUICE_API SLUICE_NODISCARD int sluice_map_put(struct sluice_map *m,
					       const void *key, size_t klen,
					       const void *val, size_t vlen,
					       int64_t ttl_ns);

/**
 * sluice_map_put_if_absent() - insert only when @key has no live entry.
 *
 * Returns: 0 if inserted, SLUICE_EEXIST if a live entry was there (left
 * unchanged), SLUICE_ENOMEM.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_map_put_if_absent(struct sluice_map *m, const void *key, size_t klen,
			 const void *val, size_t vlen, int64_t ttl_ns);

/**
 * sluice_map_get() - copy the value of @key into @buf.
 * @len: in: size of @buf; out: the value's full length.
 *
 * Copies min(value length, *@len) bytes.  @buf may be NULL with *@len 0 to
 * test presence or learn the length.
 * Returns: 0, or SLUICE_ENOENT if absent or expired.
 */
SLUICE_API int sluice_map_get(struct sluice_map *m, const void *key,
			      size_t klen, void *buf, size_t *len);

/** sluice_map_contains() - whether @key has a live entry. */
SLUICE_API bool sluice_map_contains(struct sluice_map *m, const void *key,
				    size_t klen);

/**
 * sluice_map_del() - remove @key.
 * Returns: 0, or SLUICE_ENOENT if it had no live entry.
 */
SLUICE_API int sluice_map_del(struct sluice_map *m, const void *key,
			      size_t klen);

/**
 * sluice_map_cas() - replace the value of @key with @val only if it
 * currently equals @expect (byte for byte).  @ttl_ns as for put.
 *
 * Returns: 0, SLUICE_ENOENT (absent), SLUICE_EBUSY (value differs),
 * SLUICE_ENOMEM.
 */
SLUICE_API int sluice_map_cas(struct sluice_map *m, const void *key,
			      size_t klen, const void *expect, size_t elen,
			      const void *val, size_t vlen, int64_t ttl_ns);

/** sluice_map_len() - live entries now (a snapshot across shards). */
SLUICE_API size_t sluice_map_len(struct sluice_map *m);

/**
 * sluice_map_sweep() - free every expired entry.
 * Returns: how many were freed.
 */
SLUICE_API size_t sluice_map_sweep(struct sluice_map *m);

/* Called with copies, never under a lock; return false to stop early. */
typedef bool sluice_map_visit_fn(void *ud, const void *key, size_t klen,
				 const void *val, size_t vlen);

/**
 * sluice_map_foreach() - call @fn on a snapshot of each shard's live entries,
 * one shard at a time.  Entries added or removed meanwhile may or may not be
 * seen.  Returns: 0 or SLUICE_ENOMEM (snapshot buffer).
 */
SLUICE_API int sluice_map_foreach(struct sluice_map *m, sluice_map_visit_fn *fn,
				  void *ud);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_MAP_H */
