/* SPDX-License-Identifier: MIT */
/*
 * metrics.h - a metrics registry rendered in the Prometheus text format 0.0.4.
 *
 * Metrics are declared once, at setup, and then bumped on the hot path
 * without locks.  Three kinds: counters (uint64, only go up), gauges (int64,
 * set or add; or a callback evaluated at render time) and histograms (fixed
 * bucket upper bounds, per-bucket counts, sum and count).  A family may have
 * up to SLUICE_METRICS_MAX_LABELS label names; the caller asks once for the
 * child that belongs to one tuple of label values (sluice_counter_with()) and
 * keeps the pointer, which stays valid until the registry is freed.
 *
 * Counters and histograms are sharded: each child owns
 * SLUICE_METRICS_SHARDS cache-line-separated cells, a thread picks one on
 * first use (round robin) and bumps it with a relaxed atomic add, so worker
 * threads do not fight over one cache line.  Reads and renders sum the
 * shards.  Nothing is ever unregistered.
 *
 * Names follow the Prometheus grammar: metric names [a-zA-Z_:][a-zA-Z0-9_:]*,
 * label names [a-zA-Z_][a-zA-Z0-9_]* not starting with "__" ("le" is also
 * refused on histograms).  By convention counters end in "_total" and
 * values use base units ("_seconds", "_bytes"); promtool warns otherwise.
 */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The HTTP Content-Type of sluice_metrics_render()'s output. */
#define SLUICE_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Most label names a family may have. */
#define SLUICE_METRICS_MAX_LABELS 4

/* Ends the label values of the *_with() calls. */
#define SLUICE_LABELS_END ((const char *)0)

/* Cells per counter or histogram child (one cache line or more each). */
#define SLUICE_METRICS_SHARDS 16

/* The variadic *_with() calls end their values with a NULL. */
#if defined(__GNUC__)
#define SLUICE_METRICS_SENTINEL __attribute__((sentinel))
#else
#define SLUICE_METRICS_SENTINEL
#endif

struct sluice_metrics;
struct sluice_counter_family;
struct sluice_counter;
struct sluice_gauge_family;
struct sluice_gauge;
struct sluice_histogram_family;
struct sluice_histogram;

/**
 * sluice_metrics_new() - an empty registry.
 *
 * Returns: 0 and *@out (free with sluice_metrics_free()), or SLUICE_ENOMEM.
 */
SLUICE_API SLUICE_NODISCARD int sluice_metrics_new(struct sluice_metrics **out);

/**
 * sluice_metrics_free() - free the registry and every family and child
 * registered in it.  NULL is a no-op.
 *
 * Threads: no other call on the registry, its families or children may run
 * or follow; every pointer obtained from it dies here.
 */
SLUICE_API void sluice_metrics_free(struct sluice_metrics *m);

/**
 * sluice_metrics_render() - the whole registry in the Prometheus text
 * exposition format 0.0.4.
 * @out: set to a NUL-terminated text (free with sluice_metrics_free_text()).
 * @len: if not NULL, set to its length without the NUL.
 *
 * Families appear in registration order, each with its "# HELP" (when the
 * help text is not empty) and "# TYPE" lines and then its children in
 * creation order.  A labelled family with no child yet is left out.
 * Counter and histogram values are sums over shards read one after the
 * other, so a render concurrent with bumps sees each cell at some moment
 * of the render, not one instant for the whole registry.  A histogram's
 * "+Inf" bucket and "_count" always agree.
 *
 * Callback gauges are called first, with no sluice lock held; those
 * registered while a render runs may miss that render.
 *
 * Returns: 0, or SLUICE_ENOMEM (then *@out is NULL).
 * Ownership: returns new text.
 * Threads: any thread, concurrently with everything but
 * sluice_metrics_free(); two renders may run at once (and so call the same
 * gauge callback at once).
 */
SLUICE_API SLUICE_NODISCARD int sluice_metrics_render(struct sluice_metrics *m,
						      char **out, size_t *len);

/** sluice_metrics_free_text() - free a render's text.  NULL is a no-op. */
SLUICE_API void sluice_metrics_free_text(char *text);

/*
 * Registration (every *_register() below).
 * @name: the metric name; copied.
 * @help: the "# HELP" text, any UTF-8; NULL or "" for none; copied.
 * @label_names: @nlabels names (0..SLUICE_METRICS_MAX_LABELS), all
 *               different; copied.
 *
 * Returns: 0 and *@out, SLUICE_EINVAL (bad name, label name, label count,
 * help that is not UTF-8, bad histogram bounds), SLUICE_EEXIST (a family of
 * that name exists in @m), SLUICE_ENOMEM.
 * Ownership: *@out belongs to @m and is valid until sluice_metrics_free().
 * Threads: any thread; registration takes the registry's mutex.
 *
 * Children (every *_with() and *_with_values() below): the child of the
 * family for one tuple of label values, created on the first call for that
 * tuple and the same pointer on every later call.  Values are any UTF-8
 * (escaped at render), copied.  The variadic form takes exactly as many
 * values as the family has label names, then NULL.
 *
 * Returns: 0 and *@out, SLUICE_EINVAL (wrong number of values, a value that
 * is NULL or not UTF-8), SLUICE_ENOMEM.
 * Ownership and threads: as for registration.
 */

/**
 * sluice_counter_register() - a counter without labels.
 *
 * See "Registration" above.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_counter_register(struct sluice_metrics *m, const char *name,
			const char *help, struct sluice_counter **out);

/**
 * sluice_counter_family_register() - a counter with label names.
 *
 * See "Registration" above.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_counter_family_register(struct sluice_metrics *m, const char *name,
			       const char *help, const char *const *label_names,
			       size_t nlabels,
			       struct sluice_counter_family **out);

/**
 * sluice_counter_with() - the child for the label values that follow @out,
 * ended by SLUICE_LABELS_END (a typed null pointer: a bare NULL may be an
 * int in a variadic call): sluice_counter_with(f, &ok, "ok",
 * SLUICE_LABELS_END).
 *
 * See "Children" above.
 */
SLUICE_API SLUICE_NODISCARD SLUICE_METRICS_SENTINEL int
sluice_counter_with(struct sluice_counter_family *f,
		    struct sluice_counter **out, ...);

/**
 * sluice_counter_with_values() - the child for @nvalues label @values.
 *
 * See "Children" above.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_counter_with_values(struct sluice_counter_family *f,
			   const char *const *values, size_t nvalues,
			   struct sluice_counter **out);

/**
 * sluice_counter_add() - add @n to the counter.
 *
 * Threads: any thread, lock-free (one relaxed atomic add).  Wraps at 2^64.
 */
SLUICE_API void sluice_counter_add(struct sluice_counter *c, uint64_t n);

/** sluice_counter_inc() - add 1; as sluice_counter_add(). */
SLUICE_API void sluice_counter_inc(struct sluice_counter *c);

/**
 * sluice_counter_value() - the current total (the sum of the shards).
 *
 * Threads: any thread; concurrent adds may or may not be included.
 */
SLUICE_API uint64_t sluice_counter_value(const struct sluice_counter *c);

/**
 * sluice_gauge_register() - a gauge without labels, starting at 0.
 *
 * See "Registration" above.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_gauge_register(struct sluice_metrics *m, const char *name,
		      const char *help, struct sluice_gauge **out);

/**
 * sluice_gauge_family_register() - a gauge with label names.
 *
 * See "Registration" above.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_gauge_family_register(struct sluice_metrics *m, const char *name,
			     const char *help, const char *const *label_names,
			     size_t nlabels, struct sluice_gauge_family **out);

/**
 * sluice_gauge_with() - the child for the label values that follow @out,
 * ended by NULL.
 *
 * See "Children" above.
 */
SLUICE_API SLUICE_NODISCARD SLUICE_METRICS_SENTINEL int
sluice_gauge_with(struct sluice_gauge_family *f, struct sluice_gauge **out,
		  ...);

/**
 * sluice_gauge_with_values() - the child for @nvalues label @values.
 *
 * See "Children" above.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_gauge_with_values(struct sluice_gauge_family *f,
			 const char *const *values, size_t nvalues,
			 struct sluice_gauge **out);

/**
 * sluice_gauge_set() - set the gauge to @v.
 *
 * Threads: any thread, lock-free (relaxed atomics on one cell).
 */
SLUICE_API void sluice_gauge_set(struct sluice_gauge *g, int64_t v);

/**
 * sluice_gauge_add() - add @delta (may be negative) to the gauge.
 *
 * Threads: any thread, lock-free.  Wraps (two's complement) on overflow.
 */
SLUICE_API void sluice_gauge_add(struct sluice_gauge *g, int64_t delta);

/** sluice_gauge_value() - the current value.  Threads: any thread. */
SLUICE_API int64_t sluice_gauge_value(const struct sluice_gauge *g);

/*
 * A callback gauge's value, computed at render time (queue depth, open
 * files...).  Called with no sluice lock held, from the rendering thread,
 * possibly from two renders at once.  It must not call
 * sluice_metrics_free() on the registry; anything else is allowed.
 */
typedef double sluice_gauge_fn(void *ud);

/**
 * sluice_gauge_register_fn() - a gauge without labels whose value is
 * @fn(@ud), called on every render.
 * @fn: see sluice_gauge_fn.
 * @ud: borrowed until sluice_metrics_free().
 *
 * NaN and infinities render as "NaN", "+Inf", "-Inf".
 * See "Registration" above; there is no *@out: the gauge has no handle.
 * Returns: also SLUICE_EINVAL when @fn is NULL.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_gauge_register_fn(struct sluice_metrics *m, const char *name,
			 const char *help, sluice_gauge_fn *fn, void *ud);

/**
 * sluice_counter_register_fn() - like sluice_gauge_register_fn(), typed as a
 * counter: for totals kept elsewhere (e.g. the engine's own counters),
 * read at render time.  @fn must never go down.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_counter_register_fn(struct sluice_metrics *m, const char *name,
			   const char *help, sluice_gauge_fn *fn, void *ud);

/**
 * sluice_histogram_register() - a histogram without labels.
 * @bounds: @nbounds bucket upper bounds, finite and strictly increasing;
 *          copied.  A "+Inf" bucket is always added after them, so
 *          @nbounds may be 0.  An observation equal to a bound goes in
 *          that bound's bucket (the "le" semantics of Prometheus).
 *
 * See "Registration" above.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_histogram_register(struct sluice_metrics *m, const char *name,
			  const char *help, const double *bounds,
			  size_t nbounds, struct sluice_histogram **out);

/*
 * A callback histogram's state, computed at render time: fill @counts
 * (nbounds + 1 non-cumulative bucket counts, the last one "+Inf"; zeroed
 * before the call) and *@sum.  Called like sluice_gauge_fn.
 */
typedef void sluice_histogram_fn(void *ud, uint64_t *counts, double *sum);

/**
 * sluice_histogram_register_fn() - a histogram without labels whose
 * buckets and sum come from @fn(@ud) on every render: for observations kept
 * elsewhere (e.g. per-thread arrays a hot path bumps without atomics).
 * @bounds: as for sluice_histogram_register().
 * @fn: see sluice_histogram_fn; @ud: borrowed until sluice_metrics_free().
 *
 * See "Registration" above; there is no *@out.
 * Returns: also SLUICE_EINVAL when @fn is NULL.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_histogram_register_fn(struct sluice_metrics *m, const char *name,
			     const char *help, const double *bounds,
			     size_t nbounds, sluice_histogram_fn *fn, void *ud);

/**
 * sluice_histogram_family_register() - a histogram with label names ("le"
 * is refused: the rendering uses it); @bounds as for
 * sluice_histogram_register(), shared by every child.
 *
 * See "Registration" above.
 */
SLUICE_API SLUICE_NODISCARD int sluice_histogram_family_register(
	struct sluice_metrics *m, const char *name, const char *help,
	const double *bounds, size_t nbounds, const char *const *label_names,
	size_t nlabels, struct sluice_histogram_family **out);

/**
 * sluice_histogram_with() - the child for the label values that follow
 * @out, ended by NULL.
 *
 * See "Children" above.
 */
SLUICE_API SLUICE_NODISCARD SLUICE_METRICS_SENTINEL int
sluice_histogram_with(struct sluice_histogram_family *f,
		      struct sluice_histogram **out, ...);

/**
 * sluice_histogram_with_values() - the child for @nvalues label @values.
 *
 * See "Children" above.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_histogram_with_values(struct sluice_histogram_family *f,
			     const char *const *values, size_t nvalues,
			     struct sluice_histogram **out);

/**
 * sluice_histogram_observe() - count @v in its bucket and add it to the sum.
 *
 * A NaN lands in the "+Inf" bucket and makes the sum NaN, as in the Go
 * client.
 * Threads: any thread, lock-free (relaxed atomics on this thread's shard;
 * the sum is a compare-and-swap loop on that shard's cell).
 */
SLUICE_API void sluice_histogram_observe(struct sluice_histogram *h, double v);

/**
 * sluice_histogram_count() - observations so far (sum of all buckets).
 *
 * Threads: any thread; concurrent observations may or may not be included.
 */
SLUICE_API uint64_t sluice_histogram_count(const struct sluice_histogram *h);

/** sluice_histogram_sum() - the sum of observations so far; as count. */
SLUICE_API double sluice_histogram_sum(const struct sluice_histogram *h);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_METRICS_H */
