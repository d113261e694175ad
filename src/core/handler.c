/* SPDX-License-Identifier: MIT */
/*
 * handler.c - calling handlers, and the middleware that wraps them.
 *
 * Each middleware is a state block allocated on a struct sluice_stack plus a
 * static call function; the returned handler is (call function, block).  A
 * block is written only while it is being built, so after its constructor
 * returns every field is read-only and any number of workers may call the
 * handler at once without a lock.  The exceptions are named where they are
 * declared: capture's ring (its own mutex, taken only on failure) and
 * retry's call counter (a relaxed atomic, touched only on failure).
 *
 * The stack itself is not locked: build it from one thread, hand the
 * handlers to the workers, and free it after the last call has returned.
 * No middleware holds a lock while it calls the next handler or a hook.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <sluice/handler.h>

#include "util/alloc.h"

/* Bytes kept per captured failure, including the terminating NUL. */
#define CAPTURE_TEXT 256

/* The longest delay retry will sit on a worker slot for. */
#define RETRY_MAX_DELAY_NS SLUICE_NS_PER_S

/* Dedup markers: one byte each. */
static const char MARK_BUSY = 'P'; /* in progress */
static const char MARK_DONE = 'D'; /* succeeded */

/* Every state block starts with this.  Owner-only (built before use). */
struct block {
	struct block *next;              /* st->blocks */
	void (*fini)(struct block *blk); /* extra teardown, or NULL */
};

struct sluice_stack {
	struct block *blocks; /* owner-only; newest first */
};

int
sluice_stack_new(struct sluice_stack **out)
{
	struct sluice_stack *st;

	if (!out)
		return SLUICE_EINVAL;
	st = sl_calloc(1, sizeof(*st));
	if (!st)
		return SLUICE_ENOMEM;
	*out = st;
	return 0;
}

void
sluice_stack_free(struct sluice_stack *st)
{
	struct block *b, *next;

	if (!st)
		return;
	for (b = st->blocks; b; b = next) {
		next = b->next;
		if (b->fini)
			b->fini(b);
		sl_free(b);
	}
	sl_free(st);
}

/* Allocate a zeroed block of @size (which starts with a struct block). */
static void *
block_new(struct sluice_stack *st, size_t size)
{
	struct block *b = sl_calloc(1, size);

	if (!b)
		return NULL;
	b->next = st->blocks;
	st->blocks = b;
	return b;
}

struct sluice_error *
sluice_handler_call(struct sluice_handler h, struct sluice_ctx *ctx,
		    const struct sluice_msg *msg)
{
	if (!h.fn) {
		return sluice_error_new(SLUICE_CLASS_PERMANENT,
					SLUICE_CODE_HANDLER,
					"no handler function");
	}
	return h.fn(h.ud, ctx, msg);
}

static bool
args_ok(const struct sluice_stack *st, struct sluice_handler next,
	const struct sluice_handler *out)
{
	return st && next.fn && out;
}

/* now + @delta on @c, or SLUICE_FOREVER if that does not fit. */
static int64_t
after(const struct sluice_clock *c, int64_t delta_ns)
{
	int64_t now = sluice_clock_now_ns(c);

	return now > INT64_MAX - delta_ns ? SLUICE_FOREVER : now + delta_ns;
}

/* ---- timeout ------------------------------------------------------------ */

struct timeout_mw {
	struct block blk;
	struct sluice_handler next;
	int64_t timeout_ns;
};

static struct sluice_error *
late_error(int64_t timeout_ns)
{
	bool ms = timeout_ns % SLUICE_NS_PER_MS == 0;

	return sluice_error_new(
		SLUICE_CLASS_TIMEOUT, SLUICE_ETIMEDOUT,
		"handler returned after its deadline "
		"(timeout %lld %s)",
		(long long)(ms ? timeout_ns / SLUICE_NS_PER_MS : timeout_ns),
		ms ? "ms" : "ns");
}

/*
 * The child context lives on this stack frame, so a call allocates nothing
 * unless the handler asks the child for an fd.  Only a passed deadline
 * discards a result: a success that completed while a shutdown or caller
 * cancellation arrived is still a success, and the message can be acked.
 */
static struct sluice_error *
timeout_call(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *msg)
{
	const struct timeout_mw *t = ud;
	struct sluice_error *err;
	struct sluice_ctx child;
	int rc;

	rc = sluice_ctx_init_child(&child, ctx,
				   after(sluice_ctx_clock(ctx), t->timeout_ns));
	if (rc) {
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, rc,
					"timeout: cannot make a context: %s",
					sluice_strerror(rc));
	}
	err = sluice_handler_call(t->next, &child, msg);
	if (sluice_ctx_reason(&child) == SLUICE_CANCEL_DEADLINE &&
	    sluice_error_class(err) != SLUICE_CLASS_TIMEOUT) {
		sluice_error_free(err);
		err = late_error(t->timeout_ns);
	}
	sluice_ctx_release(&child);
	return err;
}

int
sluice_mw_timeout(struct sluice_stack *st, struct sluice_handler next,
		  int64_t timeout_ns, struct sluice_handler *out)
{
	struct timeout_mw *t;

	if (!args_ok(st, next, out) || timeout_ns <= 0)
		return SLUICE_EINVAL;
	t = block_new(st, sizeof(*t));
	if (!t)
		return SLUICE_ENOMEM;
	t->next = next;
	t->timeout_ns = timeout_ns;
	*out = (struct sluice_handler){ .fn = timeout_call, .ud = t };
	return 0;
}

/* ---- retry -------------------------------------------------------------- */

struct retry_mw {
	struct block blk;
	struct sluice_handler next;
	struct sluice_backoff policy;
	unsigned tries;
	uint64_t seed;
	/* Relaxed atomic: a count of calls that needed a delay, mixed into
	 * each such call's RNG seed so concurrent calls draw different
	 * jitter without sharing RNG state. */
	_Atomic uint64_t draws;
};

static bool
is_retryable(const struct sluice_error *err)
{
	enum sluice_class c = sluice_error_class(err);

	return c == SLUICE_CLASS_TEMPORARY || c == SLUICE_CLASS_TIMEOUT;
}

/*
 * Sleep @delay_ns on @ctx's clock unless @ctx is done first.  The caller
 * has checked that the delay ends before @ctx's deadline.  Returns true if
 * the full delay passed and @ctx is still live.
 */
static bool
wait_delay(struct sluice_ctx *ctx, int64_t delay_ns)
{
	struct sluice_ctx w;
	int rc;

	if (delay_ns > 0) {
		rc = sluice_ctx_init_child(
			&w, ctx, after(sluice_ctx_clock(ctx), delay_ns));
		if (rc)
			return false;
		/* ETIMEDOUT is the delay ending; ECANCELED (the parent was
		 * cancelled) or a failure to wait ends the retrying. */
		rc = sluice_ctx_poll(&w, -1, 0);
		sluice_ctx_release(&w);
		if (rc != SLUICE_ETIMEDOUT)
			return false;
	}
	return !sluice_ctx_is_done(ctx);
}

/* The policy's delay after @attempt, raised to @err's Retry-After hint but
 * never above max_ns. */
static int64_t
next_delay(const struct retry_mw *r, uint32_t attempt, int64_t prev_ns,
	   const struct sluice_error *err, struct sluice_rng *rng)
{
	int64_t d = sluice_backoff_delay_ns(&r->policy, attempt, prev_ns, rng);
	int64_t hint = sluice_error_retry_after_ns(err);

	if (hint > d)
		d = hint < r->policy.max_ns ? hint : r->policy.max_ns;
	return d;
}

static struct sluice_error *
retry_call(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *msg)
{
	struct retry_mw *r = ud;
	struct sluice_error *err;
	struct sluice_rng rng;
	int64_t delay = 0;
	uint32_t attempt;
	uint64_t n;

	err = sluice_handler_call(r->next, ctx, msg);
	if (!is_retryable(err) || r->tries <= 1)
		return err;
	/* Seeded only once a retry is needed, so success costs nothing. */
	n = atomic_fetch_add_explicit(&r->draws, 1, memory_order_relaxed);
	sluice_rng_seed(&rng, r->seed ^ (n * 0x9E3779B97F4A7C15ULL));
	for (attempt = 1; attempt < r->tries; attempt++) {
		if (sluice_ctx_is_done(ctx))
			break;
		delay = next_delay(r, attempt, delay, err, &rng);
		/* A wait that would outlast the deadline leaves no time for
		 * another try: give the error back to the engine now. */
		if (delay >= sluice_ctx_remaining_ns(ctx))
			break;
		if (!wait_delay(ctx, delay))
			break;
		sluice_error_free(err);
		err = sluice_handler_call(r->next, ctx, msg);
		if (!is_retryable(err))
			break;
	}
	return err;
}

int
sluice_mw_retry(struct sluice_stack *st, struct sluice_handler next,
		const struct sluice_backoff *policy, unsigned tries,
		uint64_t seed, struct sluice_handler *out)
{
	struct retry_mw *r;

	if (!args_ok(st, next, out) || !policy || tries == 0 ||
	    sluice_backoff_check(policy) != 0 ||
	    policy->max_ns > RETRY_MAX_DELAY_NS)
		return SLUICE_EINVAL;
	r = block_new(st, sizeof(*r));
	if (!r)
		return SLUICE_ENOMEM;
	r->next = next;
	r->policy = *policy;
	r->tries = tries;
	r->seed = seed;
	atomic_init(&r->draws, 0);
	*out = (struct sluice_handler){ .fn = retry_call, .ud = r };
	return 0;
}

/* ---- dedup -------------------------------------------------------------- */

struct dedup_mw {
	struct block blk;
	struct sluice_handler next;
	struct sluice_map *seen; /* borrowed; locks itself */
	int64_t ttl_ns;
};

/*
 * The in-progress marker lives only as long as the attempt may: the rest of
 * the context's time.  If a handler overruns, the engine requeues the
 * message at the deadline and the marker is gone by then, so the
 * redelivery is not turned away as a duplicate forever.
 */
static int64_t
busy_ttl(const struct dedup_mw *d, const struct sluice_ctx *ctx)
{
	int64_t rem = sluice_ctx_remaining_ns(ctx);

	if (rem == INT64_MAX)
		return d->ttl_ns;
	return rem > 0 ? rem : 1;
}

static void
mark_done(const struct dedup_mw *d, const char *id, size_t len)
{
	int rc;

	rc = sluice_map_cas(d->seen, id, len, &MARK_BUSY, 1, &MARK_DONE, 1,
			    d->ttl_ns);
	/* Our marker expired (or was never stored): record the success
	 * anyway, unless another attempt has claimed the id since.  Failing
	 * to record it only costs a duplicate run later. */
	if (rc == SLUICE_ENOENT) {
		rc = sluice_map_put_if_absent(d->seen, id, len, &MARK_DONE, 1,
					      d->ttl_ns);
	}
	(void)rc;
}

/*
 * Claim @id for this attempt.  Returns 0 (claimed), SLUICE_EEXIST (it
 * already succeeded), SLUICE_EBUSY (another attempt holds it) or
 * SLUICE_ENOMEM (the map is full).  For a new id, the common case, this is
 * one map operation.  A marker can vanish between our insert and our look
 * (a failed attempt deleting its own), so the claim is tried twice.
 */
static int
claim(const struct dedup_mw *d, const struct sluice_ctx *ctx, const char *id,
      size_t len)
{
	char v = 0;
	size_t n;
	int rc, i;

	for (i = 0; i < 2; i++) {
		rc = sluice_map_put_if_absent(d->seen, id, len, &MARK_BUSY, 1,
					      busy_ttl(d, ctx));
		if (rc != SLUICE_EEXIST)
			return rc;
		n = sizeof(v);
		if (sluice_map_get(d->seen, id, len, &v, &n) == 0) {
			return n == 1 && v == MARK_DONE ? SLUICE_EEXIST
							: SLUICE_EBUSY;
		}
	}
	return SLUICE_EBUSY;
}

static struct sluice_error *
dedup_call(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *msg)
{
	const struct dedup_mw *d = ud;
	struct sluice_error *err;
	const char *id;
	size_t len;
	int rc;

	id = sluice_msg_id(msg, &len);
	/* Without an id, messages cannot be told apart: run them all. */
	if (len == 0)
		return sluice_handler_call(d->next, ctx, msg);
	rc = claim(d, ctx, id, len);
	if (rc == SLUICE_EEXIST)
		return NULL;
	if (rc == SLUICE_EBUSY) {
		return sluice_error_new(SLUICE_CLASS_TEMPORARY,
					SLUICE_CODE_DUPLICATE,
					"message %.*s is being handled by "
					"another worker",
					(int)len, id);
	}
	/*
	 * rc may be SLUICE_ENOMEM (the map is full).  Run anyway: delivery
	 * is at-least-once, so handlers already tolerate the odd duplicate,
	 * while failing here would retry (and finally dead-letter) good
	 * messages for as long as the map stays full.
	 */
	err = sluice_handler_call(d->next, ctx, msg);
	if (!err) {
		mark_done(d, id, len);
	} else if (rc == 0) {
		/* Let a retry run. */
		(void)sluice_map_del(d->seen, id, len);
	}
	return err;
}

int
sluice_mw_dedup(struct sluice_stack *st, struct sluice_handler next,
		struct sluice_map *seen, int64_t ttl_ns,
		struct sluice_handler *out)
{
	struct dedup_mw *d;

	if (!args_ok(st, next, out) || !seen || ttl_ns <= 0)
		return SLUICE_EINVAL;
	d = block_new(st, sizeof(*d));
	if (!d)
		return SLUICE_ENOMEM;
	d->next = next;
	d->seen = seen;
	d->ttl_ns = ttl_ns;
	*out = (struct sluice_handler){ .fn = dedup_call, .ud = d };
	return 0;
}

/* ---- capture ------------------------------------------------------------ */

struct capture_mw {
	struct block blk;
	struct sluice_handler next;
	unsigned ring;               /* slots in texts; immutable */
	pthread_mutex_t mu;          /* guards total and texts */
	uint64_t total;              /* failures recorded so far */
	char (*texts)[CAPTURE_TEXT]; /* ring slots; guarded by mu */
};

static void
capture_fini(struct block *blk)
{
	struct capture_mw *c = (struct capture_mw *)(void *)blk;

	pthread_mutex_destroy(&c->mu);
	sl_free(c->texts);
}

/* Format outside the lock; the lock covers one copy into the ring. */
static void
capture_record(struct capture_mw *c, const struct sluice_error *err)
{
	char text[CAPTURE_TEXT];

	if (c->ring == 0)
		return;
	(void)sluice_error_format(err, text, sizeof(text));
	pthread_mutex_lock(&c->mu);
	memcpy(c->texts[c->total % c->ring], text, sizeof(text));
	c->total++;
	pthread_mutex_unlock(&c->mu);
}

/*
 * Error values from sluice_error_new() always carry a valid class, so the
 * class check below only catches a value forged or corrupted elsewhere.  A
 * success after the deadline becomes a TIMEOUT: by then the engine has
 * requeued the message, so the success cannot be acked.  A success after a
 * shutdown or caller cancellation stays a success: the work is done and the
 * message is still ours to ack.
 */
static struct sluice_error *
capture_call(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *msg)
{
	struct capture_mw *c = ud;
	struct sluice_error *err;
	int cls;

	err = sluice_handler_call(c->next, ctx, msg);
	if (!err) {
		if (sluice_ctx_reason(ctx) != SLUICE_CANCEL_DEADLINE)
			return NULL;
		err = sluice_error_new(SLUICE_CLASS_TIMEOUT, SLUICE_ETIMEDOUT,
				       "handler reported success after its "
				       "deadline");
	}
	cls = (int)sluice_error_class(err);
	if (cls <= (int)SLUICE_CLASS_OK || cls >= SLUICE_CLASS_COUNT) {
		err = sluice_error_wrap(err, SLUICE_CLASS_PERMANENT,
					SLUICE_CODE_HANDLER,
					"handler returned an error of unknown "
					"class %d",
					cls);
	}
	capture_record(c, err);
	return err;
}

int
sluice_mw_capture(struct sluice_stack *st, struct sluice_handler next,
		  unsigned ring, struct sluice_handler *out)
{
	struct capture_mw *c;
	int rc;

	if (!args_ok(st, next, out))
		return SLUICE_EINVAL;
	c = sl_calloc(1, sizeof(*c));
	if (!c)
		return SLUICE_ENOMEM;
	/* calloc checks ring * CAPTURE_TEXT for overflow. */
	c->texts = sl_calloc(ring ? ring : 1, CAPTURE_TEXT);
	if (!c->texts) {
		rc = SLUICE_ENOMEM;
		goto free_block;
	}
	rc = -pthread_mutex_init(&c->mu, NULL);
	if (rc)
		goto free_texts;
	c->blk.fini = capture_fini;
	c->blk.next = st->blocks;
	st->blocks = &c->blk;
	c->next = next;
	c->ring = ring;
	*out = (struct sluice_handler){ .fn = capture_call, .ud = c };
	return 0;

free_texts:
	sl_free(c->texts);
free_block:
	sl_free(c);
	return rc;
}

int
sluice_mw_capture_last(struct sluice_handler h, unsigned i, char *buf,
		       size_t size)
{
	struct capture_mw *c = h.ud;
	int err = 0;
	uint64_t n;

	if (h.fn != capture_call || !c || (!buf && size))
		return SLUICE_EINVAL;
	pthread_mutex_lock(&c->mu);
	n = c->total < c->ring ? c->total : c->ring;
	if (i >= n) {
		err = SLUICE_ENOENT;
	} else if (size) {
		snprintf(buf, size, "%s",
			 c->texts[(c->total - 1 - i) % c->ring]);
	}
	pthread_mutex_unlock(&c->mu);
	return err;
}

/* ---- hooks -------------------------------------------------------------- */

struct hooks_mw {
	struct block blk;
	struct sluice_handler next;
	struct sluice_hooks hooks;
};

static struct sluice_error *
hooks_call(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *msg)
{
	const struct hooks_mw *k = ud;
	const struct sluice_clock *clk = sluice_ctx_clock(ctx);
	struct sluice_error *err;
	int64_t t0 = 0;

	if (k->hooks.on_start)
		k->hooks.on_start(k->hooks.ud, msg);
	if (k->hooks.on_done)
		t0 = sluice_clock_now_ns(clk);
	err = sluice_handler_call(k->next, ctx, msg);
	if (k->hooks.on_done) {
		k->hooks.on_done(k->hooks.ud, msg, err,
				 sluice_clock_now_ns(clk) - t0);
	}
	return err;
}

int
sluice_mw_hooks(struct sluice_stack *st, struct sluice_handler next,
		const struct sluice_hooks *hooks, struct sluice_handler *out)
{
	struct hooks_mw *k;

	if (!args_ok(st, next, out) || !hooks)
		return SLUICE_EINVAL;
	k = block_new(st, sizeof(*k));
	if (!k)
		return SLUICE_ENOMEM;
	k->next = next;
	k->hooks = *hooks;
	*out = (struct sluice_handler){ .fn = hooks_call, .ud = k };
	return 0;
}
