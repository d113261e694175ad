/* SPDX-License-Identifier: MIT */
/*
 * test_handler.c - the middleware in src/core/handler.c, each driven by a
 * scripted inner handler that counts its calls and returns a programmed
 * sequence of results.
 *
 * Time is a virtual clock.  The inner handler advances it itself to play a
 * slow handler, so nothing sleeps.  Where retry waits, a helper sees the
 * wait begin (the waiting child context registers its eventfd with the
 * parent, which the parent's listener list shows) and then advances the
 * clock or cancels; the virtual clock never moves unless a test moves it,
 * so a wait that should not happen shows up as a hang (cut short by alarm).
 * Under ASan every case ends with a leak check (see CHECK_NO_LEAKS): that
 * is how the cases prove that discarded errors and stack state are freed.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <sluice/handler.h>

#include "check.h"
#include "util/alloc.h"

/*
 * Forked cases end with _exit(), which skips LeakSanitizer's check at exit,
 * so under ASan every case asks for a leak check itself when it is done.
 */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_NO_LEAKS() CHECK(__lsan_do_recoverable_leak_check() == 0)
#else
#define CHECK_NO_LEAKS() ((void)0)
#endif

#define MS SLUICE_NS_PER_MS

/* Cases where a wrong wait would hang cut themselves short after this. */
#define HANG_GUARD_S 30

/* ---- fixtures ----------------------------------------------------------- */

static struct sluice_clock *
vclock(int64_t start_ns)
{
	struct sluice_clock *c = NULL;

	CHECK_OK(sluice_clock_virtual_new(start_ns, &c));
	return c;
}

static struct sluice_stack *
stack_new(void)
{
	struct sluice_stack *st = NULL;

	CHECK_OK(sluice_stack_new(&st));
	return st;
}

static struct sluice_msg
mkmsg(const char *id)
{
	struct sluice_msg m;

	memset(&m, 0, sizeof(m));
	m.id_len = (uint8_t)strlen(id);
	m.id = id;
	m.attempts = 1;
	return m;
}

#define MAXSTEPS 8

struct step {
	enum sluice_class cls;  /* SLUICE_CLASS_OK = return success */
	int64_t advance_ns;     /* move the clock before returning */
	int64_t retry_after_ns; /* hint on the error */
	bool block;             /* wait for script_release() first */
	bool cancel_shutdown;   /* cancel s->parent for SHUTDOWN first */
};

/*
 * The scripted inner handler.  Call i plays steps[i] (the last step
 * repeats) and returns an error whose message is "attempt <i+1>" and whose
 * code is 100 + i, so tests can tell which call's error came out.
 */
struct script {
	struct step steps[MAXSTEPS];
	int nsteps;
	struct sluice_clock *clock;
	struct sluice_ctx *parent; /* for cancel_shutdown */
	_Atomic int calls;
	int64_t call_at[MAXSTEPS];     /* clock at each call */
	int64_t deadline_at[MAXSTEPS]; /* the ctx deadline each call saw */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int entered;  /* guarded by mu: calls that reached a block */
	bool release; /* guarded by mu */
};

static void
script_init(struct script *s, struct sluice_clock *c)
{
	memset(s, 0, sizeof(*s));
	s->clock = c;
	atomic_init(&s->calls, 0);
	CHECK_OK(pthread_mutex_init(&s->mu, NULL));
	CHECK_OK(pthread_cond_init(&s->cv, NULL));
}

static void
script_fini(struct script *s)
{
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
}

static void
script_add(struct script *s, struct step st)
{
	CHECK_LT(s->nsteps, MAXSTEPS);
	s->steps[s->nsteps++] = st;
}

static struct sluice_error *
script_fn(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *msg)
{
	struct script *s = ud;
	int i = atomic_fetch_add(&s->calls, 1);
	struct step st = s->steps[i < s->nsteps ? i : s->nsteps - 1];
	struct sluice_error *e;

	(void)msg;
	if (i < MAXSTEPS) {
		s->call_at[i] = sluice_clock_now_ns(s->clock);
		s->deadline_at[i] = sluice_ctx_deadline_ns(ctx);
	}
	if (st.block) {
		pthread_mutex_lock(&s->mu);
		s->entered++;
		pthread_cond_broadcast(&s->cv);
		while (!s->release)
			pthread_cond_wait(&s->cv, &s->mu);
		pthread_mutex_unlock(&s->mu);
	}
	if (st.advance_ns)
		CHECK_OK(sluice_clock_advance(s->clock, st.advance_ns));
	if (st.cancel_shutdown)
		sluice_ctx_cancel(s->parent, SLUICE_CANCEL_SHUTDOWN);
	if (st.cls == SLUICE_CLASS_OK)
		return NULL;
	e = sluice_error_new(st.cls, 100 + i, "attempt %d", i + 1);
	if (st.retry_after_ns)
		sluice_error_set_retry_after_ns(e, st.retry_after_ns);
	return e;
}

static struct sluice_handler
script_handler(struct script *s)
{
	return (struct sluice_handler){ .fn = script_fn, .ud = s };
}

static void
script_wait_entered(struct script *s, int n)
{
	pthread_mutex_lock(&s->mu);
	while (s->entered < n)
		pthread_cond_wait(&s->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
}

static void
script_release(struct script *s)
{
	pthread_mutex_lock(&s->mu);
	s->release = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static const struct step OK = { .cls = SLUICE_CLASS_OK };
static const struct step TEMP = { .cls = SLUICE_CLASS_TEMPORARY };

static struct step
late(enum sluice_class cls, int64_t advance_ns)
{
	return (struct step){ .cls = cls, .advance_ns = advance_ns };
}

static void
check_err(struct sluice_error *e, enum sluice_class cls, const char *msg)
{
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_class(e), cls);
	if (msg)
		CHECK_STREQ(sluice_error_msg(e), msg);
}

/*
 * Whether a child of @ctx has registered an eventfd with it: that is what
 * sluice_ctx_poll() on the child does before it waits.  ctx.h makes the
 * struct public so it can be embedded; peeking at the list here is the one
 * test-only use of its private fields.
 */
static bool
has_waiter(struct sluice_ctx *ctx)
{
	bool r;

	pthread_mutex_lock(&ctx->mu);
	r = ctx->listeners != NULL;
	pthread_mutex_unlock(&ctx->mu);
	return r;
}

/* ---- handler_call and argument checks ----------------------------------- */

static void
test_call(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_handler none = { 0 };
	struct sluice_msg m = mkmsg("x");
	struct sluice_error *e;
	struct sluice_ctx ctx;
	struct script s;

	script_init(&s, c);
	script_add(&s, OK);
	script_add(&s, TEMP);
	CHECK_OK(sluice_ctx_init(&ctx, c, SLUICE_FOREVER));
	CHECK(sluice_handler_call(script_handler(&s), &ctx, &m) == NULL);
	e = sluice_handler_call(script_handler(&s), &ctx, &m);
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 2");
	sluice_error_free(e);
	CHECK_EQ(atomic_load(&s.calls), 2);
	e = sluice_handler_call(none, &ctx, &m);
	check_err(e, SLUICE_CLASS_PERMANENT, NULL);
	CHECK_EQ(sluice_error_code(e), SLUICE_CODE_HANDLER);
	sluice_error_free(e);
	sluice_ctx_release(&ctx);
	script_fini(&s);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

static void
test_bad_args(void)
{
	struct sluice_stack *st = stack_new();
	struct sluice_handler h = { .fn = script_fn, .ud = NULL }, out;
	struct sluice_handler none = { 0 };
	struct sluice_backoff b = { .min_ns = 0, .max_ns = MS, .factor = 1 };
	struct sluice_backoff slow = b;
	struct sluice_backoff broken = b;
	struct sluice_hooks hooks = { 0 };
	struct sluice_map *m = NULL;

	CHECK_EQ(sluice_stack_new(NULL), SLUICE_EINVAL);
	CHECK_OK(sluice_map_new(1, 0, NULL, &m));
	slow.max_ns = SLUICE_NS_PER_S + 1;
	broken.min_ns = 2 * MS; /* min > max */

	CHECK_EQ(sluice_mw_timeout(st, h, 0, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_timeout(st, none, MS, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_timeout(NULL, h, MS, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_retry(st, h, &b, 0, 1, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_retry(st, h, &slow, 3, 1, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_retry(st, h, &broken, 3, 1, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_retry(st, h, NULL, 3, 1, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_dedup(st, h, NULL, MS, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_dedup(st, h, m, 0, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_capture(st, none, 4, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_hooks(st, h, NULL, &out), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_hooks(st, h, &hooks, NULL), SLUICE_EINVAL);
	/* Exactly 1 s is allowed. */
	slow.max_ns = SLUICE_NS_PER_S;
	CHECK_OK(sluice_mw_retry(st, h, &slow, 3, 1, &out));
	sluice_stack_free(st);
	sluice_stack_free(NULL);
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

/* ---- timeout ------------------------------------------------------------ */

struct tfix {
	struct sluice_clock *c;
	struct sluice_stack *st;
	struct sluice_ctx ctx;
	struct script s;
	struct sluice_handler h;
	struct sluice_msg m;
};

static void
tfix_init(struct tfix *f, int64_t parent_deadline, int64_t timeout_ns)
{
	f->c = vclock(1000);
	f->st = stack_new();
	script_init(&f->s, f->c);
	f->s.parent = &f->ctx;
	CHECK_OK(sluice_ctx_init(&f->ctx, f->c, parent_deadline));
	CHECK_OK(sluice_mw_timeout(f->st, script_handler(&f->s), timeout_ns,
				   &f->h));
	f->m = mkmsg("t");
}

static void
tfix_fini(struct tfix *f)
{
	sluice_stack_free(f->st);
	sluice_ctx_release(&f->ctx);
	script_fini(&f->s);
	sluice_clock_free(f->c);
}

static struct sluice_error *
tcall(struct tfix *f)
{
	return sluice_handler_call(f->h, &f->ctx, &f->m);
}

static void
test_timeout_late_success(void)
{
	struct tfix f;
	struct sluice_error *e;

	tfix_init(&f, SLUICE_FOREVER, 100);
	script_add(&f.s, late(SLUICE_CLASS_OK, 100)); /* exactly at it */
	e = tcall(&f);
	check_err(e, SLUICE_CLASS_TIMEOUT, NULL);
	CHECK_EQ(sluice_error_code(e), SLUICE_ETIMEDOUT);
	CHECK_EQ(f.s.deadline_at[0], 1100);
	/* The parent has no deadline of its own and is still live. */
	CHECK(!sluice_ctx_is_done(&f.ctx));
	sluice_error_free(e);
	tfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_timeout_late_error_discarded(void)
{
	struct tfix f;
	struct sluice_error *e;

	tfix_init(&f, SLUICE_FOREVER, 100);
	/* A late TEMPORARY is freed (ASan) and replaced; a late TIMEOUT
	 * already says the right thing and is kept. */
	script_add(&f.s, late(SLUICE_CLASS_TEMPORARY, 150));
	script_add(&f.s, late(SLUICE_CLASS_PERMANENT, 101));
	script_add(&f.s, late(SLUICE_CLASS_TIMEOUT, 100));
	e = tcall(&f);
	check_err(e, SLUICE_CLASS_TIMEOUT, NULL);
	CHECK_EQ(sluice_error_code(e), SLUICE_ETIMEDOUT);
	sluice_error_free(e);
	e = tcall(&f);
	check_err(e, SLUICE_CLASS_TIMEOUT, NULL);
	CHECK_EQ(sluice_error_code(e), SLUICE_ETIMEDOUT);
	sluice_error_free(e);
	e = tcall(&f);
	check_err(e, SLUICE_CLASS_TIMEOUT, "attempt 3");
	CHECK_EQ(sluice_error_code(e), 102);
	sluice_error_free(e);
	tfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_timeout_on_time(void)
{
	struct tfix f;
	struct sluice_error *e;

	tfix_init(&f, SLUICE_FOREVER, 100);
	script_add(&f.s, late(SLUICE_CLASS_OK, 99));
	script_add(&f.s, late(SLUICE_CLASS_PERMANENT, 99));
	CHECK(tcall(&f) == NULL);
	/* Each call gets its own deadline from its own start. */
	CHECK_EQ(f.s.deadline_at[0], 1100);
	e = tcall(&f);
	CHECK_EQ(f.s.deadline_at[1], 1199);
	check_err(e, SLUICE_CLASS_PERMANENT, "attempt 2");
	sluice_error_free(e);
	tfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_timeout_parent_deadline(void)
{
	struct tfix f;
	struct sluice_error *e;

	/* The parent's deadline is sooner than the timeout: it wins. */
	tfix_init(&f, 1050, 100);
	script_add(&f.s, late(SLUICE_CLASS_OK, 50));
	e = tcall(&f);
	CHECK_EQ(f.s.deadline_at[0], 1050);
	check_err(e, SLUICE_CLASS_TIMEOUT, NULL);
	sluice_error_free(e);
	tfix_fini(&f);

	tfix_init(&f, 5000, 100);
	script_add(&f.s, late(SLUICE_CLASS_OK, 50));
	CHECK(tcall(&f) == NULL);
	CHECK_EQ(f.s.deadline_at[0], 1100);
	tfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_timeout_shutdown_keeps_result(void)
{
	struct tfix f;
	struct sluice_error *e;
	struct step s1 = { .cls = SLUICE_CLASS_OK, .cancel_shutdown = true };
	struct step s2 = { .cls = SLUICE_CLASS_TEMPORARY,
			   .cancel_shutdown = true };

	tfix_init(&f, SLUICE_FOREVER, 100);
	script_add(&f.s, s1);
	script_add(&f.s, s2);
	/* Work that completed is a success even if shutdown came first. */
	CHECK(tcall(&f) == NULL);
	CHECK_EQ(sluice_ctx_reason(&f.ctx), SLUICE_CANCEL_SHUTDOWN);
	e = tcall(&f);
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 2");
	sluice_error_free(e);
	tfix_fini(&f);
	CHECK_NO_LEAKS();
}

/* ---- retry -------------------------------------------------------------- */

static struct sluice_backoff
fixed_policy(int64_t delay_ns)
{
	struct sluice_backoff b = { .min_ns = delay_ns,
				    .max_ns = delay_ns,
				    .factor = 1.0,
				    .jitter = SLUICE_JITTER_NONE };

	return b;
}

struct rfix {
	struct sluice_clock *c;
	struct sluice_stack *st;
	struct sluice_ctx ctx;
	struct script s;
	struct sluice_handler h;
	struct sluice_msg m;
};

static void
rfix_init(struct rfix *f, const struct sluice_backoff *b, unsigned tries,
	  int64_t deadline)
{
	f->c = vclock(0);
	f->st = stack_new();
	script_init(&f->s, f->c);
	CHECK_OK(sluice_ctx_init(&f->ctx, f->c, deadline));
	CHECK_OK(sluice_mw_retry(f->st, script_handler(&f->s), b, tries, 42,
				 &f->h));
	f->m = mkmsg("r");
}

static void
rfix_fini(struct rfix *f)
{
	sluice_stack_free(f->st);
	sluice_ctx_release(&f->ctx);
	script_fini(&f->s);
	sluice_clock_free(f->c);
}

static struct sluice_error *
rcall(struct rfix *f)
{
	return sluice_handler_call(f->h, &f->ctx, &f->m);
}

static void
test_retry_stops_after_tries(void)
{
	struct sluice_backoff b = fixed_policy(0);
	struct sluice_error *e;
	struct rfix f;

	rfix_init(&f, &b, 3, SLUICE_FOREVER);
	script_add(&f.s, TEMP);
	script_add(&f.s, late(SLUICE_CLASS_TIMEOUT, 0));
	script_add(&f.s, TEMP);
	script_add(&f.s, OK); /* never reached */
	e = rcall(&f);
	/* The last error comes back; the retried ones were freed (ASan). */
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 3");
	CHECK_EQ(atomic_load(&f.s.calls), 3);
	sluice_error_free(e);
	rfix_fini(&f);

	/* tries = 1 is a plain call. */
	rfix_init(&f, &b, 1, SLUICE_FOREVER);
	script_add(&f.s, TEMP);
	e = rcall(&f);
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 1");
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	sluice_error_free(e);
	rfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_retry_until_success(void)
{
	struct sluice_backoff b = fixed_policy(0);
	struct rfix f;

	rfix_init(&f, &b, 5, SLUICE_FOREVER);
	script_add(&f.s, TEMP);
	script_add(&f.s, late(SLUICE_CLASS_TIMEOUT, 0));
	script_add(&f.s, OK);
	CHECK(rcall(&f) == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 3);
	rfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_retry_not_permanent(void)
{
	struct sluice_backoff b = fixed_policy(0);
	struct sluice_error *e;
	struct rfix f;

	rfix_init(&f, &b, 5, SLUICE_FOREVER);
	script_add(&f.s, late(SLUICE_CLASS_PERMANENT, 0));
	e = rcall(&f);
	check_err(e, SLUICE_CLASS_PERMANENT, "attempt 1");
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	sluice_error_free(e);
	rfix_fini(&f);

	/* A permanent failure after a retried one ends the loop too. */
	rfix_init(&f, &b, 5, SLUICE_FOREVER);
	script_add(&f.s, TEMP);
	script_add(&f.s, late(SLUICE_CLASS_PERMANENT, 0));
	e = rcall(&f);
	check_err(e, SLUICE_CLASS_PERMANENT, "attempt 2");
	CHECK_EQ(atomic_load(&f.s.calls), 2);
	sluice_error_free(e);
	rfix_fini(&f);

	rfix_init(&f, &b, 5, SLUICE_FOREVER);
	script_add(&f.s, late(SLUICE_CLASS_CANCELED, 0));
	e = rcall(&f);
	check_err(e, SLUICE_CLASS_CANCELED, "attempt 1");
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	sluice_error_free(e);
	rfix_fini(&f);
	CHECK_NO_LEAKS();
}

struct rcall_thread {
	struct rfix *f;
	struct sluice_error *result;
	_Atomic bool done;
};

static void *
rcall_main(void *arg)
{
	struct rcall_thread *t = arg;

	t->result = rcall(t->f);
	atomic_store(&t->done, true);
	return NULL;
}

/*
 * Run the retry handler on a thread; each time it waits (a new call has
 * happened and a waiter is registered), advance the clock by the next of
 * @advances.  The wait must end at exactly that point: sooner and the next
 * call comes before the advance, later and the call never comes (alarm).
 */
static struct sluice_error *
run_advancing(struct rfix *f, const int64_t *advances, int n)
{
	struct rcall_thread t = { .f = f, .result = NULL };
	pthread_t th;
	int done = 0;

	atomic_init(&t.done, false);
	CHECK_OK(pthread_create(&th, NULL, rcall_main, &t));
	while (!atomic_load(&t.done)) {
		if (done < n && atomic_load(&f->s.calls) > done &&
		    has_waiter(&f->ctx)) {
			CHECK_OK(sluice_clock_advance(f->c, advances[done]));
			done++;
		} else {
			sched_yield();
		}
	}
	CHECK_OK(pthread_join(th, NULL));
	CHECK_EQ(done, n);
	return t.result;
}

static void
test_retry_waits_policy_delays(void)
{
	struct sluice_backoff b = { .min_ns = 10 * MS,
				    .max_ns = 40 * MS,
				    .factor = 2.0,
				    .jitter = SLUICE_JITTER_NONE };
	const int64_t delays[] = { 10 * MS, 20 * MS, 40 * MS, 40 * MS };
	struct sluice_error *e;
	struct rfix f;
	int i;

	alarm(HANG_GUARD_S);
	rfix_init(&f, &b, 5, SLUICE_FOREVER);
	script_add(&f.s, TEMP);
	e = run_advancing(&f, delays, 4);
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 5");
	CHECK_EQ(atomic_load(&f.s.calls), 5);
	for (i = 0; i < 4; i++)
		CHECK_EQ(f.s.call_at[i + 1] - f.s.call_at[i], delays[i]);
	sluice_error_free(e);
	rfix_fini(&f);
	alarm(0);
	CHECK_NO_LEAKS();
}

static void
test_retry_honours_retry_after(void)
{
	struct sluice_backoff b = fixed_policy(10 * MS);
	struct step hinted = { .cls = SLUICE_CLASS_TEMPORARY,
			       .retry_after_ns = 25 * MS };
	struct step huge = { .cls = SLUICE_CLASS_TEMPORARY,
			     .retry_after_ns = 60 * SLUICE_NS_PER_S };
	const int64_t delays[] = { 25 * MS, 10 * MS };
	const int64_t capped[] = { 30 * MS };
	struct sluice_error *e;
	struct rfix f;

	alarm(HANG_GUARD_S);
	b.max_ns = 30 * MS;
	rfix_init(&f, &b, 3, SLUICE_FOREVER);
	script_add(&f.s, hinted);
	script_add(&f.s, TEMP);
	script_add(&f.s, OK);
	e = run_advancing(&f, delays, 2);
	CHECK(e == NULL);
	CHECK_EQ(f.s.call_at[1] - f.s.call_at[0], 25 * MS);
	CHECK_EQ(f.s.call_at[2] - f.s.call_at[1], 10 * MS);
	rfix_fini(&f);

	/* A hint above max_ns is cut to max_ns. */
	rfix_init(&f, &b, 2, SLUICE_FOREVER);
	script_add(&f.s, huge);
	script_add(&f.s, OK);
	e = run_advancing(&f, capped, 1);
	CHECK(e == NULL);
	CHECK_EQ(f.s.call_at[1] - f.s.call_at[0], 30 * MS);
	rfix_fini(&f);
	alarm(0);
	CHECK_NO_LEAKS();
}

static void
test_retry_cancel_while_waiting(void)
{
	/* 500 ms on a clock nobody advances: only a cancel ends the wait. */
	struct sluice_backoff b = fixed_policy(500 * MS);
	struct rcall_thread t;
	struct rfix f;
	pthread_t th;

	alarm(HANG_GUARD_S);
	rfix_init(&f, &b, 5, SLUICE_FOREVER);
	script_add(&f.s, TEMP);
	t.f = &f;
	t.result = NULL;
	atomic_init(&t.done, false);
	CHECK_OK(pthread_create(&th, NULL, rcall_main, &t));
	while (!has_waiter(&f.ctx))
		sched_yield();
	sluice_ctx_cancel(&f.ctx, SLUICE_CANCEL_SHUTDOWN);
	CHECK_OK(pthread_join(th, NULL));
	check_err(t.result, SLUICE_CLASS_TEMPORARY, "attempt 1");
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	CHECK_EQ(sluice_clock_now_ns(f.c), 0);
	sluice_error_free(t.result);
	rfix_fini(&f);
	alarm(0);
	CHECK_NO_LEAKS();
}

static void
test_retry_no_wait_past_deadline(void)
{
	struct sluice_backoff b = fixed_policy(100 * MS);
	struct sluice_backoff zero = fixed_policy(0);
	struct sluice_error *e;
	struct rfix f;

	alarm(HANG_GUARD_S);
	/* 50 ms left, 100 ms to wait: give up at once, no waiting. */
	rfix_init(&f, &b, 5, 50 * MS);
	script_add(&f.s, TEMP);
	e = rcall(&f);
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 1");
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	sluice_error_free(e);
	rfix_fini(&f);

	/* Exactly the delay left: after the wait there would be no time. */
	rfix_init(&f, &b, 5, 100 * MS);
	script_add(&f.s, TEMP);
	e = rcall(&f);
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 1");
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	sluice_error_free(e);
	rfix_fini(&f);

	/* The context already done: no further tries. */
	rfix_init(&f, &zero, 5, SLUICE_FOREVER);
	script_add(&f.s, TEMP);
	sluice_ctx_cancel(&f.ctx, SLUICE_CANCEL_CALLER);
	e = rcall(&f);
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 1");
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	sluice_error_free(e);
	rfix_fini(&f);
	alarm(0);
	CHECK_NO_LEAKS();
}

/*
 * Several workers call one retry handler at once (TSan).  The inner handler
 * keeps its per-call state in the message, so it fails exactly twice per
 * call whatever the interleaving.
 */
#define RTHREADS 4
#define RCALLS   300

static _Atomic int conc_inner_calls;

static struct sluice_error *
twice_fn(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *msg)
{
	int *n = msg->source_data;

	(void)ud;
	(void)ctx;
	atomic_fetch_add(&conc_inner_calls, 1);
	if (++*n <= 2)
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, 0, "again");
	return NULL;
}

struct conc_arg {
	struct sluice_handler h;
	struct sluice_clock *c;
	int failures;
};

static void *
conc_retry_main(void *arg)
{
	struct conc_arg *a = arg;
	struct sluice_ctx ctx;
	int i, n;

	CHECK_OK(sluice_ctx_init(&ctx, a->c, SLUICE_FOREVER));
	for (i = 0; i < RCALLS; i++) {
		struct sluice_msg m = mkmsg("c");
		struct sluice_error *e;

		n = 0;
		m.source_data = &n;
		e = sluice_handler_call(a->h, &ctx, &m);
		if (e || n != 3)
			a->failures++;
		sluice_error_free(e);
	}
	sluice_ctx_release(&ctx);
	return NULL;
}

static void
test_retry_concurrent_callers(void)
{
	struct sluice_backoff b = { .min_ns = 0,
				    .max_ns = 0,
				    .factor = 2.0,
				    .jitter = SLUICE_JITTER_FULL };
	struct sluice_handler inner = { .fn = twice_fn }, h;
	struct sluice_clock *c = vclock(0);
	struct sluice_stack *st = stack_new();
	struct conc_arg a[RTHREADS];
	pthread_t th[RTHREADS];
	int i;

	CHECK_OK(sluice_mw_retry(st, inner, &b, 3, 7, &h));
	for (i = 0; i < RTHREADS; i++) {
		a[i] = (struct conc_arg){ .h = h, .c = c };
		CHECK_OK(pthread_create(&th[i], NULL, conc_retry_main, &a[i]));
	}
	for (i = 0; i < RTHREADS; i++) {
		CHECK_OK(pthread_join(th[i], NULL));
		CHECK_EQ(a[i].failures, 0);
	}
	CHECK_EQ(atomic_load(&conc_inner_calls), RTHREADS * RCALLS * 3);
	sluice_stack_free(st);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

/* ---- dedup -------------------------------------------------------------- */

struct dfix {
	struct sluice_clock *c;
	struct sluice_stack *st;
	struct sluice_map *seen;
	struct sluice_ctx ctx;
	struct script s;
	struct sluice_handler h;
};

static void
dfix_init(struct dfix *f, int64_t ttl_ns)
{
	f->c = vclock(0);
	f->st = stack_new();
	CHECK_OK(sluice_map_new(0, 0, f->c, &f->seen));
	script_init(&f->s, f->c);
	CHECK_OK(sluice_ctx_init(&f->ctx, f->c, SLUICE_FOREVER));
	CHECK_OK(sluice_mw_dedup(f->st, script_handler(&f->s), f->seen, ttl_ns,
				 &f->h));
}

static void
dfix_fini(struct dfix *f)
{
	sluice_stack_free(f->st);
	sluice_ctx_release(&f->ctx);
	sluice_map_free(f->seen);
	script_fini(&f->s);
	sluice_clock_free(f->c);
}

static struct sluice_error *
dcall(struct dfix *f, struct sluice_ctx *ctx, const char *id)
{
	struct sluice_msg m = mkmsg(id);

	return sluice_handler_call(f->h, ctx ? ctx : &f->ctx, &m);
}

static void
test_dedup_skips_completed(void)
{
	struct dfix f;

	dfix_init(&f, 1000);
	script_add(&f.s, OK);
	CHECK(dcall(&f, NULL, "m1") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	CHECK(dcall(&f, NULL, "m1") == NULL);
	CHECK(dcall(&f, NULL, "m1") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	CHECK(dcall(&f, NULL, "m2") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 2);
	/* Done markers live ttl_ns. */
	CHECK_OK(sluice_clock_advance(f.c, 999));
	CHECK(dcall(&f, NULL, "m1") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 2);
	CHECK_OK(sluice_clock_advance(f.c, 1));
	CHECK(dcall(&f, NULL, "m1") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 3);
	dfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_dedup_failure_runs_again(void)
{
	struct sluice_error *e;
	struct dfix f;

	dfix_init(&f, 1000);
	script_add(&f.s, TEMP);
	script_add(&f.s, late(SLUICE_CLASS_PERMANENT, 0));
	script_add(&f.s, OK);
	e = dcall(&f, NULL, "m");
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 1");
	sluice_error_free(e);
	e = dcall(&f, NULL, "m");
	check_err(e, SLUICE_CLASS_PERMANENT, "attempt 2");
	sluice_error_free(e);
	CHECK(dcall(&f, NULL, "m") == NULL);
	CHECK(dcall(&f, NULL, "m") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 3);
	/* Only the done marker is left: one byte per id. */
	CHECK_EQ(sluice_map_len(f.seen), 1);
	dfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_dedup_empty_id_not_deduplicated(void)
{
	struct dfix f;

	dfix_init(&f, 1000);
	script_add(&f.s, OK);
	CHECK(dcall(&f, NULL, "") == NULL);
	CHECK(dcall(&f, NULL, "") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 2);
	CHECK_EQ(sluice_map_len(f.seen), 0);
	dfix_fini(&f);
	CHECK_NO_LEAKS();
}

struct dcall_thread {
	struct dfix *f;
	struct sluice_ctx *ctx;
	const char *id;
	struct sluice_error *result;
};

static void *
dcall_main(void *arg)
{
	struct dcall_thread *t = arg;

	t->result = dcall(t->f, t->ctx, t->id);
	return NULL;
}

static void
test_dedup_duplicate_in_flight(void)
{
	struct step hold = { .cls = SLUICE_CLASS_OK, .block = true };
	struct dcall_thread t;
	struct sluice_error *e;
	struct dfix f;
	pthread_t th;

	dfix_init(&f, 1000);
	script_add(&f.s, hold);
	t = (struct dcall_thread){ .f = &f, .ctx = NULL, .id = "dup" };
	CHECK_OK(pthread_create(&th, NULL, dcall_main, &t));
	script_wait_entered(&f.s, 1);
	/* Same id while the first is running: refused without running. */
	e = dcall(&f, NULL, "dup");
	check_err(e, SLUICE_CLASS_TEMPORARY, NULL);
	CHECK_EQ(sluice_error_code(e), SLUICE_CODE_DUPLICATE);
	sluice_error_free(e);
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	script_release(&f.s);
	CHECK_OK(pthread_join(th, NULL));
	CHECK(t.result == NULL);
	/* Now it is done: skipped. */
	CHECK(dcall(&f, NULL, "dup") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 1);
	dfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_dedup_busy_marker_ends_with_deadline(void)
{
	struct step hold = { .cls = SLUICE_CLASS_OK, .block = true };
	struct sluice_ctx short_ctx;
	struct dcall_thread t;
	struct sluice_error *e;
	struct dfix f;
	pthread_t th;

	dfix_init(&f, 1000000);
	script_add(&f.s, hold);
	script_add(&f.s, OK);
	CHECK_OK(sluice_ctx_init(&short_ctx, f.c, 100));
	t = (struct dcall_thread){ .f = &f, .ctx = &short_ctx, .id = "m" };
	CHECK_OK(pthread_create(&th, NULL, dcall_main, &t));
	script_wait_entered(&f.s, 1);
	CHECK_OK(sluice_clock_advance(f.c, 99));
	e = dcall(&f, NULL, "m");
	CHECK_EQ(sluice_error_code(e), SLUICE_CODE_DUPLICATE);
	sluice_error_free(e);
	/* The first attempt's deadline has passed (the engine would have
	 * requeued it): its in-progress marker is gone with it. */
	CHECK_OK(sluice_clock_advance(f.c, 1));
	CHECK(dcall(&f, NULL, "m") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 2);
	script_release(&f.s);
	CHECK_OK(pthread_join(th, NULL));
	CHECK(t.result == NULL);
	CHECK(dcall(&f, NULL, "m") == NULL);
	CHECK_EQ(atomic_load(&f.s.calls), 2);
	sluice_ctx_release(&short_ctx);
	dfix_fini(&f);
	CHECK_NO_LEAKS();
}

static void
test_dedup_full_map_runs_anyway(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_stack *st = stack_new();
	struct sluice_map *seen = NULL;
	struct sluice_handler h;
	struct sluice_msg m1 = mkmsg("a"), m2 = mkmsg("b");
	struct sluice_ctx ctx;
	struct script s;

	script_init(&s, c);
	script_add(&s, OK);
	CHECK_OK(sluice_map_new(1, 1, c, &seen));
	CHECK_OK(sluice_mw_dedup(st, script_handler(&s), seen, 1000, &h));
	CHECK_OK(sluice_ctx_init(&ctx, c, SLUICE_FOREVER));
	CHECK(sluice_handler_call(h, &ctx, &m1) == NULL);
	/* The map holds "a" and is full: "b" still runs, every time. */
	CHECK(sluice_handler_call(h, &ctx, &m2) == NULL);
	CHECK(sluice_handler_call(h, &ctx, &m2) == NULL);
	CHECK(sluice_handler_call(h, &ctx, &m1) == NULL);
	CHECK_EQ(atomic_load(&s.calls), 3);
	sluice_ctx_release(&ctx);
	sluice_stack_free(st);
	sluice_map_free(seen);
	script_fini(&s);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

/* ---- capture ------------------------------------------------------------ */

static void
test_capture_ring(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_stack *st = stack_new();
	struct sluice_msg m = mkmsg("x");
	struct sluice_handler h;
	struct sluice_error *e;
	struct sluice_ctx ctx;
	struct script s;
	char buf[256];
	int i;

	script_init(&s, c);
	script_add(&s, TEMP);
	script_add(&s, OK);
	script_add(&s, late(SLUICE_CLASS_PERMANENT, 0));
	script_add(&s, TEMP);
	script_add(&s, late(SLUICE_CLASS_TIMEOUT, 0));
	script_add(&s, TEMP);
	CHECK_OK(sluice_ctx_init(&ctx, c, SLUICE_FOREVER));
	CHECK_OK(sluice_mw_capture(st, script_handler(&s), 3, &h));
	CHECK_EQ(sluice_mw_capture_last(h, 0, buf, sizeof(buf)), SLUICE_ENOENT);

	e = sluice_handler_call(h, &ctx, &m);
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 1");
	CHECK_EQ(sluice_error_code(e), 100); /* passed through as is */
	sluice_error_free(e);
	CHECK_OK(sluice_mw_capture_last(h, 0, buf, sizeof(buf)));
	CHECK_STREQ(buf, "temporary: attempt 1");
	CHECK_EQ(sluice_mw_capture_last(h, 1, buf, sizeof(buf)), SLUICE_ENOENT);

	for (i = 1; i < 6; i++)
		sluice_error_free(sluice_handler_call(h, &ctx, &m));
	/* Five failures (calls 1, 3, 4, 5, 6) through a ring of 3. */
	CHECK_OK(sluice_mw_capture_last(h, 0, buf, sizeof(buf)));
	CHECK_STREQ(buf, "temporary: attempt 6");
	CHECK_OK(sluice_mw_capture_last(h, 1, buf, sizeof(buf)));
	CHECK_STREQ(buf, "timeout: attempt 5");
	CHECK_OK(sluice_mw_capture_last(h, 2, buf, sizeof(buf)));
	CHECK_STREQ(buf, "temporary: attempt 4");
	CHECK_EQ(sluice_mw_capture_last(h, 3, buf, sizeof(buf)), SLUICE_ENOENT);
	/* A short buffer gets a terminated prefix. */
	CHECK_OK(sluice_mw_capture_last(h, 2, buf, 5));
	CHECK_STREQ(buf, "temp");

	sluice_ctx_release(&ctx);
	sluice_stack_free(st);
	script_fini(&s);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

static void
test_capture_last_errors(void)
{
	struct sluice_stack *st = stack_new();
	struct sluice_handler inner = { .fn = script_fn }, h, h0, forged;
	char buf[16];

	CHECK_OK(sluice_mw_capture(st, inner, 2, &h));
	CHECK_OK(sluice_mw_capture(st, inner, 0, &h0));
	/* Not a capture handler. */
	CHECK_EQ(sluice_mw_capture_last(inner, 0, buf, sizeof(buf)),
		 SLUICE_EINVAL);
	forged = h;
	forged.ud = NULL;
	CHECK_EQ(sluice_mw_capture_last(forged, 0, buf, sizeof(buf)),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_capture_last(h, 0, NULL, 4), SLUICE_EINVAL);
	CHECK_EQ(sluice_mw_capture_last(h0, 0, buf, sizeof(buf)),
		 SLUICE_ENOENT);
	sluice_stack_free(st);
	CHECK_NO_LEAKS();
}

static void
test_capture_success_after_deadline(void)
{
	struct sluice_clock *c = vclock(1000);
	struct sluice_stack *st = stack_new();
	struct step shut = { .cls = SLUICE_CLASS_OK, .cancel_shutdown = true };
	struct sluice_msg m = mkmsg("x");
	struct sluice_ctx ctx, ctx2;
	struct sluice_handler h;
	struct sluice_error *e;
	struct script s;
	char buf[256];

	script_init(&s, c);
	script_add(&s, late(SLUICE_CLASS_OK, 99));
	script_add(&s, late(SLUICE_CLASS_OK, 1));
	script_add(&s, shut);
	CHECK_OK(sluice_ctx_init(&ctx, c, 1100));
	CHECK_OK(sluice_ctx_init(&ctx2, c, SLUICE_FOREVER));
	s.parent = &ctx2;
	CHECK_OK(sluice_mw_capture(st, script_handler(&s), 4, &h));
	CHECK(sluice_handler_call(h, &ctx, &m) == NULL);
	e = sluice_handler_call(h, &ctx, &m);
	check_err(e, SLUICE_CLASS_TIMEOUT, NULL);
	CHECK_EQ(sluice_error_code(e), SLUICE_ETIMEDOUT);
	sluice_error_free(e);
	CHECK_OK(sluice_mw_capture_last(h, 0, buf, sizeof(buf)));
	CHECK(strncmp(buf, "timeout: ", 9) == 0);
	/* Shutdown after the work was done: still a success, not recorded. */
	CHECK(sluice_handler_call(h, &ctx2, &m) == NULL);
	CHECK_EQ(sluice_mw_capture_last(h, 1, buf, sizeof(buf)), SLUICE_ENOENT);
	sluice_ctx_release(&ctx);
	sluice_ctx_release(&ctx2);
	sluice_stack_free(st);
	script_fini(&s);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

/* ---- hooks -------------------------------------------------------------- */

struct hook_log {
	int starts, dones;
	const struct sluice_msg *start_msg, *done_msg;
	const struct sluice_error *err;
	int64_t elapsed;
	int calls_at_start; /* inner calls when on_start ran */
	struct script *s;
};

static void
on_start(void *ud, const struct sluice_msg *msg)
{
	struct hook_log *l = ud;

	l->starts++;
	l->start_msg = msg;
	l->calls_at_start = atomic_load(&l->s->calls);
}

static void
on_done(void *ud, const struct sluice_msg *msg, const struct sluice_error *err,
	int64_t elapsed_ns)
{
	struct hook_log *l = ud;

	l->dones++;
	l->done_msg = msg;
	l->err = err;
	l->elapsed = elapsed_ns;
}

static void
test_hooks(void)
{
	struct sluice_clock *c = vclock(500);
	struct sluice_stack *st = stack_new();
	struct sluice_msg m = mkmsg("x");
	struct sluice_handler h, hn;
	struct hook_log log = { 0 };
	struct sluice_hooks hooks = { .on_start = on_start,
				      .on_done = on_done,
				      .ud = &log };
	struct sluice_hooks nohooks = { 0 };
	struct sluice_error *e;
	struct sluice_ctx ctx;
	struct script s;

	script_init(&s, c);
	log.s = &s;
	script_add(&s, late(SLUICE_CLASS_TEMPORARY, 250));
	script_add(&s, late(SLUICE_CLASS_OK, 40));
	CHECK_OK(sluice_ctx_init(&ctx, c, SLUICE_FOREVER));
	CHECK_OK(sluice_mw_hooks(st, script_handler(&s), &hooks, &h));
	e = sluice_handler_call(h, &ctx, &m);
	CHECK_EQ(log.starts, 1);
	CHECK_EQ(log.dones, 1);
	CHECK_EQ(log.calls_at_start, 0); /* before the call */
	CHECK(log.start_msg == &m);
	CHECK(log.done_msg == &m);
	CHECK(log.err == e);
	CHECK_EQ(log.elapsed, 250);
	check_err(e, SLUICE_CLASS_TEMPORARY, "attempt 1");
	sluice_error_free(e);
	CHECK(sluice_handler_call(h, &ctx, &m) == NULL);
	CHECK_EQ(log.starts, 2);
	CHECK_EQ(log.dones, 2);
	CHECK(log.err == NULL);
	CHECK_EQ(log.elapsed, 40);
	/* Either hook may be NULL. */
	CHECK_OK(sluice_mw_hooks(st, script_handler(&s), &nohooks, &hn));
	CHECK(sluice_handler_call(hn, &ctx, &m) == NULL);
	CHECK_EQ(atomic_load(&s.calls), 3);
	CHECK_EQ(log.starts, 2);
	sluice_ctx_release(&ctx);
	sluice_stack_free(st);
	script_fini(&s);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

/* ---- the composed stack ------------------------------------------------- */

static void
test_stack_composed(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_stack *st = stack_new();
	struct sluice_backoff b = fixed_policy(0);
	struct sluice_map *seen = NULL;
	struct sluice_handler h, cap;
	struct hook_log log = { 0 };
	struct sluice_hooks hooks = { .on_start = on_start,
				      .on_done = on_done,
				      .ud = &log };
	struct sluice_msg ma = mkmsg("a"), mb = mkmsg("b");
	struct sluice_error *e;
	struct sluice_ctx ctx;
	struct script s;
	char buf[256];

	script_init(&s, c);
	log.s = &s;
	/* "a": a temporary failure, then success on the local retry. */
	script_add(&s, TEMP);
	script_add(&s, OK);
	/* "b": every try overruns its 100 ns timeout. */
	script_add(&s, late(SLUICE_CLASS_OK, 150));
	script_add(&s, late(SLUICE_CLASS_OK, 150));
	script_add(&s, late(SLUICE_CLASS_OK, 150));
	/* "b" again, redelivered: now it works. */
	script_add(&s, OK);
	CHECK_OK(sluice_map_new(0, 0, c, &seen));
	CHECK_OK(sluice_ctx_init(&ctx, c, SLUICE_FOREVER));

	/* Inside out: the handler wrapped last runs first. */
	CHECK_OK(sluice_mw_timeout(st, script_handler(&s), 100, &h));
	CHECK_OK(sluice_mw_retry(st, h, &b, 3, 1, &h));
	CHECK_OK(sluice_mw_dedup(st, h, seen, SLUICE_NS_PER_S, &h));
	CHECK_OK(sluice_mw_hooks(st, h, &hooks, &h));
	CHECK_OK(sluice_mw_capture(st, h, 8, &cap));

	CHECK(sluice_handler_call(cap, &ctx, &ma) == NULL);
	CHECK_EQ(atomic_load(&s.calls), 2);
	CHECK_EQ(log.starts, 1);
	CHECK(log.err == NULL);
	CHECK_EQ(sluice_mw_capture_last(cap, 0, buf, sizeof(buf)),
		 SLUICE_ENOENT);
	/* Done: dedup answers without running anything below it. */
	CHECK(sluice_handler_call(cap, &ctx, &ma) == NULL);
	CHECK_EQ(atomic_load(&s.calls), 2);
	CHECK_EQ(log.starts, 2);

	e = sluice_handler_call(cap, &ctx, &mb);
	check_err(e, SLUICE_CLASS_TIMEOUT, NULL);
	CHECK_EQ(atomic_load(&s.calls), 5);
	CHECK(log.err == e);
	CHECK_EQ(log.elapsed, 450);
	CHECK_OK(sluice_mw_capture_last(cap, 0, buf, sizeof(buf)));
	CHECK(strncmp(buf, "timeout: ", 9) == 0);
	CHECK_EQ(sluice_mw_capture_last(cap, 1, buf, sizeof(buf)),
		 SLUICE_ENOENT);
	sluice_error_free(e);
	/* The failure released its dedup claim, so a redelivery runs. */
	CHECK(sluice_handler_call(cap, &ctx, &mb) == NULL);
	CHECK_EQ(atomic_load(&s.calls), 6);
	CHECK(sluice_handler_call(cap, &ctx, &mb) == NULL);
	CHECK_EQ(atomic_load(&s.calls), 6);

	sluice_ctx_release(&ctx);
	sluice_stack_free(st); /* everything above; ASan checks */
	sluice_map_free(seen);
	script_fini(&s);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

static void
test_stack_alloc_failure(void)
{
	struct sluice_backoff b = fixed_policy(0);
	struct sluice_hooks hooks = { 0 };
	struct sluice_handler inner = { .fn = script_fn }, h;
	struct sluice_stack *st = NULL;
	struct sluice_map *seen = NULL;

	CHECK_OK(sluice_map_new(1, 0, NULL, &seen));
	sl_alloc_fail_after(1, 0);
	CHECK_EQ(sluice_stack_new(&st), SLUICE_ENOMEM);
	st = stack_new();
	/* Each constructor fails whole at each of its allocations. */
	sl_alloc_fail_after(1, 1);
	CHECK_EQ(sluice_mw_timeout(st, inner, 1, &h), SLUICE_ENOMEM);
	CHECK_EQ(sluice_mw_retry(st, inner, &b, 2, 0, &h), SLUICE_ENOMEM);
	CHECK_EQ(sluice_mw_dedup(st, inner, seen, 1, &h), SLUICE_ENOMEM);
	CHECK_EQ(sluice_mw_hooks(st, inner, &hooks, &h), SLUICE_ENOMEM);
	CHECK_EQ(sluice_mw_capture(st, inner, 4, &h), SLUICE_ENOMEM);
	sl_alloc_fail_after(2, 1);
	CHECK_EQ(sluice_mw_capture(st, inner, 4, &h), SLUICE_ENOMEM);
	sl_alloc_fail_after(0, 0);
	/* The stack is still usable and frees what it holds. */
	CHECK_OK(sluice_mw_capture(st, inner, 4, &h));
	CHECK_OK(sluice_mw_timeout(st, h, 1, &h));
	sluice_stack_free(st);
	sluice_map_free(seen);
	CHECK_NO_LEAKS();
}

CHECK_MAIN(test_call, test_bad_args, test_timeout_late_success,
	   test_timeout_late_error_discarded, test_timeout_on_time,
	   test_timeout_parent_deadline, test_timeout_shutdown_keeps_result,
	   test_retry_stops_after_tries, test_retry_until_success,
	   test_retry_not_permanent, test_retry_waits_policy_delays,
	   test_retry_honours_retry_after, test_retry_cancel_while_waiting,
	   test_retry_no_wait_past_deadline, test_retry_concurrent_callers,
	   test_dedup_skips_completed, test_dedup_failure_runs_again,
	   test_dedup_empty_id_not_deduplicated, test_dedup_duplicate_in_flight,
	   test_dedup_busy_marker_ends_with_deadline,
	   test_dedup_full_map_runs_anyway, test_capture_ring,
	   test_capture_last_errors, test_capture_success_after_deadline,
	   test_hooks, test_stack_composed, test_stack_alloc_failure)
