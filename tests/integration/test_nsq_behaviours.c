/* SPDX-License-Identifier: MIT */
/*
 * test_nsq_behaviours.c - behaviours 1-7 of the test suite's list
 * (docs/anchors.md) proved over NSQ: the real engine on the NSQ source,
 * against a fake_nsqd child, through the recording proxy of
 * tests/support/nsq_proxy.h, which logs every delivery nsqd makes and
 * every RDY / FIN / REQ / TOUCH it receives.
 *
 * Every case ends with the ledger check by message id (ledger()): in the
 * proxy's log each delivery is answered exactly once, by FIN or REQ, on
 * its own connection and inside its lease, before that id is delivered
 * again; and the totals match the engine's and the source's counters:
 * FIN = handled + dead-lettered, REQ = requeued + handed back unfetched,
 * deliveries = FIN + REQ.
 *
 * Real time is unavoidable against a child process: fake_nsqd runs with
 * --min-interval 100 and the source asks for 200 ms heartbeats and short
 * leases.  Every wait is on an event (the proxy's log, the handler's call
 * log, the engine's or the source's counters) with a 60 s guard; the only
 * sleep is the "slow" handler's work in the overload case.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>

#include "fake_nsqd_child.h"
#include "nsq_proxy.h"

#define MS      SLUICE_NS_PER_MS
#define MAXCALL 2048
#define NGATE   8

/* ---- the handler and its call log -------------------------------------- */

/*
 * Bodies choose the behaviour:
 *   ok*, m*   succeed at once
 *   slow*     take 4 ms of (simulated) work, then succeed
 *   gateN     block until gate N opens (then succeed) or the context is
 *             cancelled (then return success anyway: a late result)
 *   hang*     block until the context is cancelled; "hang1" only on its
 *             first attempt
 *   temp*, poison*  fail TEMPORARY every time
 *   t1*       fail TEMPORARY on the first attempt only
 *   perm*, dlqf*    fail PERMANENT
 */
struct call {
	char body[PX_BODY];
	uint32_t attempts;
	int64_t start_ns, end_ns;         /* end_ns 0 while running */
	enum sluice_class cls;            /* what the handler returned */
	enum sluice_cancel_reason reason; /* seen when it was woken */
	bool fd_fired;                    /* the context's fd was readable */
};

static struct {
	pthread_mutex_t mu;
	struct call c[MAXCALL];
	size_t n;
	int running, max_running;
	int bad_running, max_bad; /* hang* and poison* */
	int gate[NGATE][2];
} hl = { .mu = PTHREAD_MUTEX_INITIALIZER };

static bool
starts(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static size_t
call_begin(const char *body, uint32_t attempts)
{
	size_t i;

	pthread_mutex_lock(&hl.mu);
	if (hl.n == MAXCALL)
		CHECK_FAIL("call log full");
	i = hl.n++;
	memcpy(hl.c[i].body, body, PX_BODY);
	hl.c[i].attempts = attempts;
	hl.c[i].start_ns = px_now_ns();
	if (++hl.running > hl.max_running)
		hl.max_running = hl.running;
	if (starts(body, "hang") || starts(body, "poison"))
		if (++hl.bad_running > hl.max_bad)
			hl.max_bad = hl.bad_running;
	pthread_mutex_unlock(&hl.mu);
	return i;
}

static void
call_end(size_t i, enum sluice_class cls, enum sluice_cancel_reason reason,
	 bool fd_fired)
{
	pthread_mutex_lock(&hl.mu);
	hl.c[i].cls = cls;
	hl.c[i].reason = reason;
	hl.c[i].fd_fired = fd_fired;
	hl.c[i].end_ns = px_now_ns();
	hl.running--;
	if (starts(hl.c[i].body, "hang") || starts(hl.c[i].body, "poison"))
		hl.bad_running--;
	pthread_mutex_unlock(&hl.mu);
}

/* Copy of call @i (or of the @nth call of @body when @body is set). */
static bool
call_get(const char *body, size_t nth, struct call *out)
{
	size_t i, k = 0;
	bool found = false;

	pthread_mutex_lock(&hl.mu);
	for (i = 0; i < hl.n && !found; i++)
		if (strcmp(hl.c[i].body, body) == 0 && k++ == nth) {
			*out = hl.c[i];
			found = true;
		}
	pthread_mutex_unlock(&hl.mu);
	return found;
}

/* Calls whose body starts with @prefix (ended ones only if @ended). */
static int
calls(const char *prefix, bool ended)
{
	size_t i;
	int c = 0;

	pthread_mutex_lock(&hl.mu);
	for (i = 0; i < hl.n; i++)
		c += starts(hl.c[i].body, prefix) &&
		     (!ended || hl.c[i].end_ns != 0);
	pthread_mutex_unlock(&hl.mu);
	return c;
}

static int
hl_get(const int *field)
{
	int v;

	pthread_mutex_lock(&hl.mu);
	v = *field;
	pthread_mutex_unlock(&hl.mu);
	return v;
}

static void
gates_init(void)
{
	int i;

	for (i = 0; i < NGATE; i++)
		CHECK_OK(pipe(hl.gate[i]));
}

static void
gate_open(int i)
{
	CHECK_EQ(write(hl.gate[i][1], "x", 1), 1);
}

/* Wait for @extra_fd (or -1) or the context's cancellation, on the
 * context's fd: it fires only when the engine cancels, never by itself. */
static bool
wait_ctx(struct sluice_ctx *ctx, int extra_fd, enum sluice_cancel_reason *why,
	 bool *fired)
{
	struct pollfd p[2] = { { .fd = sluice_ctx_fd(ctx), .events = POLLIN },
			       { .fd = extra_fd, .events = POLLIN } };

	CHECK_GE(p[0].fd, 0);
	CHECK_GT(poll(p, extra_fd >= 0 ? 2 : 1, FAKE_NSQD_GUARD_MS), 0);
	*fired = (p[0].revents & POLLIN) != 0;
	*why = sluice_ctx_reason(ctx);
	return extra_fd >= 0 && (p[1].revents & POLLIN);
}

static struct sluice_error *
handle(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	enum sluice_cancel_reason why = SLUICE_CANCEL_NONE;
	enum sluice_class cls = SLUICE_CLASS_OK;
	char b[PX_BODY] = "";
	bool fired = false;
	size_t i;

	(void)ud;
	memcpy(b, m->body,
	       m->body_len < PX_BODY - 1 ? m->body_len : PX_BODY - 1);
	i = call_begin(b, m->attempts);
	if (starts(b, "slow")) {
		struct timespec ts = { 0, 4 * 1000 * 1000 };

		nanosleep(&ts, NULL); /* the work itself, not a wait */
	} else if (starts(b, "gate")) {
		(void)wait_ctx(ctx, hl.gate[(b[4] - '0') % NGATE][0], &why,
			       &fired);
	} else if (starts(b, "hang")) {
		if (!(strcmp(b, "hang1") == 0 && m->attempts > 1))
			(void)wait_ctx(ctx, -1, &why, &fired);
	} else if (starts(b, "temp") || starts(b, "poison") ||
		   (starts(b, "t1") && m->attempts == 1)) {
		cls = SLUICE_CLASS_TEMPORARY;
	} else if (starts(b, "perm") || starts(b, "dlqf")) {
		cls = SLUICE_CLASS_PERMANENT;
	}
	call_end(i, cls, why, fired);
	return cls == SLUICE_CLASS_OK ? NULL
				      : sluice_error_new(cls, 0, "%s", b);
}

/* ---- a dead-letter sink that records, and fails on request ------------- */

struct dlrec {
	char body[PX_BODY];
	uint32_t attempts;
	enum sluice_class cls;
	int code;
	char why[160];
	int64_t ns;
	int rc;
};

static struct {
	pthread_mutex_t mu;
	struct dlrec r[64];
	size_t n;
} dl = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* Fails the first write of each "dlqf*" message (SLUICE_EIO). */
static int
dl_write(void *self, const char *source, const struct sluice_msg *m,
	 const struct sluice_error *why)
{
	struct dlrec *r;
	size_t i;
	int rc = 0;

	(void)self;
	CHECK_STREQ(source, "nsq");
	pthread_mutex_lock(&dl.mu);
	CHECK_LT(dl.n, 64u);
	r = &dl.r[dl.n];
	memset(r, 0, sizeof(*r));
	memcpy(r->body, m->body,
	       m->body_len < PX_BODY - 1 ? m->body_len : PX_BODY - 1);
	r->attempts = m->attempts;
	r->cls = sluice_error_class(why);
	r->code = sluice_error_code(why);
	snprintf(r->why, sizeof(r->why), "%s", sluice_error_msg(why));
	if (starts(r->body, "dlqf")) {
		rc = SLUICE_EIO;
		for (i = 0; i < dl.n; i++)
			if (strcmp(dl.r[i].body, r->body) == 0)
				rc = 0;
	}
	r->rc = rc;
	r->ns = px_now_ns();
	dl.n++;
	pthread_mutex_unlock(&dl.mu);
	return rc;
}

static const struct sluice_dlq_ops dl_ops = { "test", dl_write, NULL };
static const struct sluice_dlq dlq = { &dl_ops, NULL };

/* The @nth record for @body. */
static bool
dl_get(const char *body, size_t nth, struct dlrec *out)
{
	size_t i, k = 0;
	bool found = false;

	pthread_mutex_lock(&dl.mu);
	for (i = 0; i < dl.n && !found; i++)
		if (strcmp(dl.r[i].body, body) == 0 && k++ == nth) {
			*out = dl.r[i];
			found = true;
		}
	pthread_mutex_unlock(&dl.mu);
	return found;
}

/* ---- the rig: one fake_nsqd behind the proxy, engine on top ------------ */

struct rig {
	struct child d;
	struct sluice_nsq_config ncfg;
	struct sluice_engine_config ecfg;
	struct sluice_nsq *n;
	struct sluice_engine *e;
	struct sluice_engine_stats es; /* after finish */
	struct sluice_nsq_stats st;    /* after finish */
	bool dlq;
	bool waited; /* sluice_engine_wait() returned already */
};

/* fake_nsqd with @args, the proxy, configs with short timers and no
 * consumer backoff (the backoff case turns it on). */
static void
rig_init(struct rig *r, const char *const *args)
{
	memset(r, 0, sizeof(*r));
	gates_init();
	nsqd_start(&r->d, 0, args);
	px_start(&r->d.port, 1);
	nsq_cfg_base(&r->ncfg);
	r->ncfg.backoff_max_ns = 0;
	sluice_engine_config_init(&r->ecfg);
	r->ecfg.retry.min_ns = 10 * MS;
	r->ecfg.retry.max_ns = 10 * MS;
	r->ecfg.retry.jitter = SLUICE_JITTER_NONE;
	r->ecfg.seed = 7;
}

/* Connect a source through the proxy (RDY stays 0 until rig_start). */
static void
rig_open(struct rig *r)
{
	r->n = open_via_proxy(&r->ncfg);
}

static void
rig_start(struct rig *r, struct sluice_batch_handler b)
{
	struct sluice_handler h = { handle, NULL };

	if (b.fn)
		h.fn = NULL;
	CHECK_OK(sluice_engine_new(&r->ecfg, sluice_nsq_source(r->n), h, b,
				   r->dlq ? &dlq : NULL, &r->e));
	CHECK_OK(sluice_engine_start(r->e));
}

static struct sluice_engine_stats
estats(struct rig *r)
{
	struct sluice_engine_stats es;

	sluice_engine_stats(r->e, &es);
	return es;
}

static bool
px_all_closed(void)
{
	bool live = false;
	int i;

	pthread_mutex_lock(&px.mu);
	for (i = 0; i < px.np; i++)
		live |= px.p[i].live;
	pthread_mutex_unlock(&px.mu);
	return !live;
}

/* Stop the engine (unless stopped already), free it and the source, wait
 * until the proxy has seen every connection close (so the log holds every
 * answer), check the engine's accounting. */
static void
rig_finish(struct rig *r)
{
	if (!r->waited) {
		sluice_engine_stop(r->e, SLUICE_STOP_DRAIN);
		CHECK_OK(sluice_engine_wait(r->e, SLUICE_FOREVER));
	}
	r->waited = false;
	sluice_engine_stats(r->e, &r->es);
	sluice_engine_free(r->e);
	r->e = NULL;
	sluice_nsq_stats(r->n, &r->st);
	sluice_nsq_free(r->n);
	r->n = NULL;
	WAIT_FOR(px_all_closed());
	CHECK_EQ(r->es.delivered,
		 r->es.handled + r->es.requeued + r->es.dead_lettered);
	CHECK_EQ(r->es.held, 0u);
	CHECK_EQ(r->es.running, 0u);
	CHECK_EQ(r->es.ack_failed, 0u);
	CHECK_EQ(r->st.fin_failed, 0u);
	CHECK_EQ(r->st.req_failed, 0u);
	CHECK_EQ(r->st.refused, 0u);
}

static void
rig_free(struct rig *r)
{
	int i;

	px_stop();
	child_stop(&r->d);
	for (i = 0; i < NGATE; i++) {
		close(hl.gate[i][0]);
		close(hl.gate[i][1]);
	}
}

/* ---- the ledger -------------------------------------------------------- */

struct ledger {
	int64_t msgs, fins, reqs;
};

/*
 * Walk the proxy's log: every delivery is answered once (FIN or REQ) on
 * its connection within @lease_ns of the delivery, before the id comes
 * again; nothing is answered that was not delivered; at the end nothing is
 * outstanding.
 */
static struct ledger
ledger(int64_t lease_ns)
{
	struct out {
		char id[PX_ID_LEN + 1];
		int pair;
		int64_t ns;
		bool open;
	} * o;
	struct ledger l = { 0, 0, 0 };
	size_t n, i, k, no = 0;
	struct px_ev *ev = px_snapshot(&n);

	o = calloc(n + 1, sizeof(*o));
	CHECK(o != NULL);
	for (i = 0; i < n; i++) {
		struct px_ev *e = &ev[i];

		if (e->kind == PX_EV_RDY)
			continue;
		for (k = 0; k < no; k++)
			if (memcmp(o[k].id, e->id, PX_ID_LEN) == 0)
				break;
		if (k == no) {
			CHECK_EQ(e->kind, PX_EV_MSG); /* answer to nothing */
			memcpy(o[no++].id, e->id, PX_ID_LEN);
		}
		switch (e->kind) {
		case PX_EV_MSG:
			if (o[k].open)
				fprintf(stderr, "  %s delivered again\n",
					e->body);
			CHECK(!o[k].open); /* lease expired, or duplicate */
			o[k].open = true;
			o[k].pair = e->pair;
			o[k].ns = e->ns;
			l.msgs++;
			break;
		case PX_EV_FIN:
		case PX_EV_REQ:
		case PX_EV_TOUCH:
			if (!o[k].open)
				fprintf(stderr, "  %s answered twice\n",
					e->body);
			CHECK(o[k].open);
			CHECK_EQ(o[k].pair, e->pair);
			if (e->kind == PX_EV_TOUCH) {
				o[k].ns = e->ns;
				break;
			}
			CHECK_LT(e->ns - o[k].ns, lease_ns);
			o[k].open = false;
			if (e->kind == PX_EV_FIN)
				l.fins++;
			else
				l.reqs++;
			break;
		case PX_EV_RDY:
			break;
		}
	}
	for (k = 0; k < no; k++)
		CHECK(!o[k].open);
	CHECK_EQ(l.msgs, l.fins + l.reqs);
	free(o);
	free(ev);
	return l;
}

/* The ledger of a case with one engine run, checked against its stats. */
static struct ledger
rig_ledger(struct rig *r)
{
	struct ledger l = ledger((int64_t)r->ncfg.msg_timeout_ms * MS);

	CHECK_EQ(l.fins, r->es.handled + r->es.dead_lettered);
	CHECK_EQ(l.reqs, r->es.requeued + r->st.handed_back);
	CHECK_EQ(l.msgs, r->es.delivered + r->st.handed_back);
	CHECK_EQ(l.fins, (int64_t)r->st.fins);
	CHECK_EQ(l.msgs, (int64_t)r->st.messages);
	return l;
}

/*
 * The story of the messages whose body is @body, as the stand-in saw it:
 * "M<attempts>" per delivery, "F" per FIN, "R<delay ms>" per REQ, blank
 * separated, into @buf.
 */
static const char *
story(const char *body, char *buf, size_t cap)
{
	size_t n, i, len = 0;
	struct px_ev *ev = px_snapshot(&n);

	buf[0] = '\0';
	for (i = 0; i < n && len + 16 < cap; i++) {
		const struct px_ev *e = &ev[i];
		int w = 0;

		if (strcmp(e->body, body) != 0)
			continue;
		if (e->kind == PX_EV_MSG)
			w = snprintf(buf + len, cap - len, "%sM%u",
				     len ? " " : "", e->arg);
		else if (e->kind == PX_EV_FIN)
			w = snprintf(buf + len, cap - len, "%sF",
				     len ? " " : "");
		else if (e->kind == PX_EV_REQ)
			w = snprintf(buf + len, cap - len, "%sR%u",
				     len ? " " : "", e->arg);
		len += (size_t)w;
	}
	free(ev);
	return buf;
}

#define CHECK_STORY(body, want)                                             \
	do {                                                                \
		char story_b_[256];                                         \
		CHECK_STREQ(story(body, story_b_, sizeof(story_b_)), want); \
	} while (0)

/* The time of the @nth event of @kind for @body (0 if none). */
static int64_t
ev_ns(const char *body, enum px_kind kind, size_t nth)
{
	size_t n, i, k = 0;
	struct px_ev *ev = px_snapshot(&n);
	int64_t t = 0;

	for (i = 0; i < n && !t; i++)
		if (ev[i].kind == kind && strcmp(ev[i].body, body) == 0 &&
		    k++ == nth)
			t = ev[i].ns;
	free(ev);
	return t;
}

/* The @nth REQ delay for @body (ms), -1 if none. */
static int64_t
req_delay(const char *body, size_t nth)
{
	size_t n, i, k = 0;
	struct px_ev *ev = px_snapshot(&n);
	int64_t d = -1;

	for (i = 0; i < n && d < 0; i++)
		if (ev[i].kind == PX_EV_REQ && strcmp(ev[i].body, body) == 0 &&
		    k++ == nth)
			d = ev[i].arg;
	free(ev);
	return d;
}

static void
pub_n(struct rig *r, const char *prefix, int first, int count)
{
	char b[PX_BODY];
	int i;

	for (i = first; i < first + count; i++) {
		snprintf(b, sizeof(b), "%s%d", prefix, i);
		pub(&r->d, b);
	}
}

/* ---- 1. no loss or double ack on SIGTERM during in-flight work -------- */

/*
 * Credit 4 (2 workers + 2 prefetch) over 6 messages that block: 2 run, 2
 * wait in the engine.  The CLI's SIGTERM path (CLS, then a drain of
 * 600 ms): the 2 unstarted go back with REQ 0 at once and never run; the
 * handler released during the drain is FINed after it returned success;
 * the one still blocked at the drain deadline is REQ'd 0 then, and only
 * then sees its context cancelled (SHUTDOWN, flag and fd); its late success
 * is not acked.  The stop completes within the drain deadline (plus
 * scheduling slack).
 */
static void
test_drain_hands_back_and_acks_once(void)
{
	const int64_t drain = 600 * MS;
	struct rig r;
	struct call c0, c1;
	int64_t t_stop, t_done;
	const char *run0 = NULL, *run1 = NULL;
	char names[6][8];
	int i, started = 0;

	rig_init(&r, NULL);
	r.ecfg.workers = 2;
	r.ecfg.prefetch = 2;
	r.ecfg.drain_timeout_ns = drain;
	rig_open(&r);
	rig_start(&r, (struct sluice_batch_handler){ 0 });
	WAIT_FOR(px_get(PX_RDY_SUM) == 4);
	pub_n(&r, "gate", 0, 6);
	/* nsqd pushed 4 (RDY 4): 2 run, 2 wait in the engine or the
	 * source's queue. */
	WAIT_FOR(hl_get(&hl.running) == 2 && px_get(PX_MSGS) == 4);
	for (i = 0; i < 6; i++) {
		struct call c;

		snprintf(names[i], sizeof(names[i]), "gate%d", i);
		if (call_get(names[i], 0, &c)) {
			started++;
			if (!run0)
				run0 = names[i];
			else
				run1 = names[i];
		}
	}
	CHECK_EQ(started, 2);
	CHECK(run0 && run1);

	t_stop = px_now_ns();
	sluice_nsq_stop(r.n);
	sluice_engine_stop(r.e, SLUICE_STOP_DRAIN);
	/* The 2 unstarted messages come back at once, with REQ 0; the
	 * running ones are not touched. */
	WAIT_FOR(px_get(PX_REQS) >= 2);
	CHECK_EQ(px_count(PX_EV_REQ, run0) + px_count(PX_EV_REQ, run1), 0);
	/* The first runner finishes inside the drain: FIN, after success. */
	gate_open(run0[4] - '0');
	WAIT_FOR(px_count(PX_EV_FIN, run0) == 1);
	CHECK(call_get(run0, 0, &c0));
	CHECK_EQ(c0.cls, SLUICE_CLASS_OK);
	CHECK_EQ(c0.reason, SLUICE_CANCEL_NONE);
	CHECK_GT(c0.end_ns, 0);
	CHECK_LE(c0.end_ns, ev_ns(run0, PX_EV_FIN, 0));
	CHECK_OK(sluice_engine_wait(r.e, SLUICE_FOREVER));
	t_done = px_now_ns();
	r.waited = true;
	/* The second was interrupted at the drain deadline, not before, and
	 * the whole stop took the drain deadline plus slack. */
	CHECK_GE(t_done - t_stop, drain);
	/* Slack for a loaded machine (sanitizers, 2 cores): "within the
	 * deadline" means not waiting for anything else, not a speed. */
	CHECK_LT(t_done - t_stop, drain + 3000 * MS);
	/* The source has queued the hand-back; the proxy sees it once the
	 * I/O thread wrote it. */
	WAIT_FOR(px_count(PX_EV_REQ, run1) == 1);
	CHECK_GE(ev_ns(run1, PX_EV_REQ, 0) - t_stop, drain);
	/* The unstarted ones went back at once: before the drain deadline
	 * handed back the one still running (an order, not a duration). */
	for (i = 0; i < 6; i++)
		if (names[i] != run0 && names[i] != run1 &&
		    px_count(PX_EV_MSG, names[i]) > 0)
			CHECK_LT(ev_ns(names[i], PX_EV_REQ, 0),
				 ev_ns(run1, PX_EV_REQ, 0));
	WAIT_FOR(calls(run1, true) == 1);
	CHECK(call_get(run1, 0, &c1));
	CHECK_EQ(c1.reason, SLUICE_CANCEL_SHUTDOWN);
	CHECK(c1.fd_fired);
	rig_finish(&r);
	/* Exactly the success was acked; everything else handed back. */
	CHECK_STORY(run0, "M1 F");
	CHECK_STORY(run1, "M1 R0");
	for (i = 0; i < 6; i++) {
		if (names[i] == run0 || names[i] == run1)
			continue;
		CHECK_EQ(calls(names[i], false), 0); /* never started */
		CHECK_EQ(px_count(PX_EV_FIN, names[i]), 0);
		CHECK_EQ(px_count(PX_EV_REQ, names[i]),
			 px_count(PX_EV_MSG, names[i]));
	}
	CHECK_GE(r.es.delivered, 2u); /* the others never left the source */
	CHECK_EQ(r.es.handled, 1u);
	CHECK_EQ(r.es.requeued, r.es.delivered - 1);
	CHECK_EQ(r.es.handed_back, r.es.delivered - 1);
	(void)rig_ledger(&r);
	rig_free(&r);
}

/* ---- 2. bounded concurrency and credit under overload ----------------- */

/*
 * 200 messages wait in nsqd before credit is given; 3 workers + 1
 * prefetch, 4 ms of work each.  At no time do more than 3 handlers run, is
 * the RDY at the stand-in above 4 (= free slots + prefetch: RDY is nsqd's
 * cap on unanswered messages), or do more than 4 messages sit unanswered
 * at the consumer; every one is delivered once (no lease expired while it
 * waited) and no E_FIN_FAILED comes back.
 */
static void
test_overload_bounded(void)
{
	struct rig r;
	uint64_t hb;

	rig_init(&r, NULL);
	r.ecfg.workers = 3;
	r.ecfg.prefetch = 1;
	rig_open(&r);
	pub_n(&r, "slow", 0, 200);
	rig_start(&r, (struct sluice_batch_handler){ 0 });
	WAIT_FOR(px_count(PX_EV_FIN, "slow") == 200);
	/* An E_FIN_FAILED would come before the next heartbeats. */
	hb = nsq_stats(r.n).heartbeats;
	WAIT_FOR(nsq_stats(r.n).heartbeats >= hb + 2);
	CHECK_EQ(nsq_stats(r.n).fin_failed, 0u);
	CHECK_EQ(hl_get(&hl.max_running), 3); /* all busy, never more */
	CHECK_LE(px_get(PX_MAX_RDY_SUM), 4);
	CHECK_EQ(px_get(PX_MAX_INFLIGHT), 4);
	CHECK_LE(estats(&r).max_held, 4u);
	CHECK_EQ(nsq_stats(r.n).max_rdy_sum, 4u);
	rig_finish(&r);
	CHECK_EQ(r.es.handled, 200u);
	CHECK_EQ(r.es.requeued, 0u);
	CHECK_EQ(px_get(PX_MSGS), 200); /* no redelivery */
	(void)rig_ledger(&r);
	rig_free(&r);
}

/* ---- 3. deadlines cancel and classify ---------------------------------- */

/*
 * Engine deadline 300 ms inside a 1 s lease.  "hang1" overruns: its
 * context is cancelled at the deadline (DEADLINE, flag and fd), the outcome
 * is TIMEOUT, the stand-in gets REQ with the retry policy's delay
 * (decorrelated jitter: within [min, 3 min] for the first retry) and the
 * handler's late success is discarded; the redelivery carries attempts 2
 * and is FINed.  No answer leaves after a lease ran out.
 */
static void
test_deadline_cancels_and_requeues(void)
{
	const int64_t min_ms = 80;
	struct rig r;
	struct call c0, c1;
	int64_t d;

	rig_init(&r, NULL);
	r.ecfg.workers = 2;
	r.ecfg.prefetch = 1;
	r.ecfg.timeout_ns = 300 * MS;
	r.ecfg.retry.min_ns = min_ms * MS;
	r.ecfg.retry.max_ns = 1000 * MS;
	r.ecfg.retry.factor = 2.0;
	r.ecfg.retry.jitter = SLUICE_JITTER_DECORRELATED;
	r.ecfg.retry.max_attempts = 5;
	rig_open(&r);
	rig_start(&r, (struct sluice_batch_handler){ 0 });
	pub(&r.d, "hang1");
	WAIT_FOR(calls("hang1", false) == 1); /* alone in its fetch */
	pub_n(&r, "ok", 0, 10);
	WAIT_FOR(px_count(PX_EV_FIN, "hang1") == 1 &&
		 px_count(PX_EV_FIN, "ok") == 10);
	CHECK(call_get("hang1", 0, &c0));
	CHECK(call_get("hang1", 1, &c1));
	CHECK_EQ(c0.attempts, 1u);
	CHECK_EQ(c0.reason, SLUICE_CANCEL_DEADLINE);
	CHECK(c0.fd_fired);
	/* Cancelled at its deadline: 300 ms after the fetch, which came
	 * after the stand-in's delivery. */
	CHECK_GE(c0.end_ns - ev_ns("hang1", PX_EV_MSG, 0), 300 * MS);
	CHECK_LT(c0.end_ns - ev_ns("hang1", PX_EV_MSG, 0), 2000 * MS);
	CHECK_EQ(c1.attempts, 2u); /* from nsqd's header */
	CHECK_EQ(c1.cls, SLUICE_CLASS_OK);
	d = req_delay("hang1", 0);
	CHECK_GE(d, min_ms);
	CHECK_LE(d, 3 * min_ms);
	/* The redelivery waited for the REQ's delay at nsqd. */
	CHECK_GE(ev_ns("hang1", PX_EV_MSG, 1) - ev_ns("hang1", PX_EV_REQ, 0),
		 (d - 5) * MS);
	rig_finish(&r);
	{
		char want[32];

		snprintf(want, sizeof(want), "M1 R%d M2 F", (int)d);
		CHECK_STORY("hang1", want);
	}
	CHECK_EQ(r.es.timeouts, 1u);
	CHECK_EQ(r.es.requeued, 1u);
	CHECK_EQ(r.es.handled, 11u);
	(void)rig_ledger(&r);
	rig_free(&r);
}

/* ---- 4. classes drive the right action --------------------------------- */

/* Equal jitter: attempt a waits within [max(min, d/2), d], d = min *
 * factor^(a-1) capped at max. */
static void
check_equal_jitter(int64_t got_ms, const struct sluice_backoff *b,
		   uint32_t attempt)
{
	double d = (double)b->min_ns;
	int64_t hi, lo;
	uint32_t i;

	for (i = 1; i < attempt; i++)
		d *= b->factor;
	hi = (int64_t)d < b->max_ns ? (int64_t)d : b->max_ns;
	lo = hi / 2 > b->min_ns ? hi / 2 : b->min_ns;
	CHECK_GE(got_ms, lo / MS);
	CHECK_LE(got_ms, hi / MS);
}

/*
 * TEMPORARY: REQ with delays inside the equal-jitter bounds, attempts
 * 1, 2, 3 from nsqd's header, then (max attempts 3) dead-lettered with the
 * reason and attempts and FINed after the write.  PERMANENT: dead-lettered
 * at once (one call, no REQ), then FINed.  A failed dead-letter write: no
 * FIN but a REQ with the longest delay; the redelivery (attempts 2) is
 * dead-lettered and FINed.
 */
static void
test_classes_drive_actions(void)
{
	struct rig r;
	struct dlrec t, p, f0, f1;
	struct call c;
	uint32_t a;

	rig_init(&r, NULL);
	r.dlq = true;
	r.ecfg.workers = 2;
	r.ecfg.prefetch = 1;
	r.ecfg.retry.min_ns = 60 * MS;
	r.ecfg.retry.max_ns = 400 * MS;
	r.ecfg.retry.factor = 4.0;
	r.ecfg.retry.jitter = SLUICE_JITTER_EQUAL;
	r.ecfg.retry.max_attempts = 3;
	rig_open(&r);
	rig_start(&r, (struct sluice_batch_handler){ 0 });
	pub(&r.d, "temp");
	pub(&r.d, "perm");
	pub(&r.d, "dlqf");
	pub(&r.d, "ok");
	WAIT_FOR(px_count(PX_EV_FIN, "") == 4);
	rig_finish(&r);

	/* TEMPORARY, three attempts, the delays inside the bounds. */
	for (a = 1; a <= 3; a++) {
		CHECK(call_get("temp", a - 1, &c));
		CHECK_EQ(c.attempts, a);
	}
	CHECK(!call_get("temp", 3, &c));
	check_equal_jitter(req_delay("temp", 0), &r.ecfg.retry, 1);
	check_equal_jitter(req_delay("temp", 1), &r.ecfg.retry, 2);
	CHECK_EQ(px_count(PX_EV_REQ, "temp"), 2);
	CHECK_EQ(px_count(PX_EV_MSG, "temp"), 3);
	CHECK(!dl_get("temp", 1, &t)); /* one record */
	CHECK(dl_get("temp", 0, &t));
	CHECK_EQ(t.rc, 0);
	CHECK_EQ(t.attempts, 3u);
	CHECK_EQ(t.cls, SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(t.code, SLUICE_CODE_EXHAUSTED);
	CHECK(strstr(t.why, "after 3 attempts") != NULL);
	CHECK_LT(t.ns, ev_ns("temp", PX_EV_FIN, 0));
	CHECK_EQ(px_count(PX_EV_FIN, "temp"), 1);

	/* PERMANENT: at once, zero retries. */
	CHECK_STORY("perm", "M1 F");
	CHECK(call_get("perm", 0, &c));
	CHECK(!call_get("perm", 1, &c));
	CHECK(dl_get("perm", 0, &p));
	CHECK_EQ(p.attempts, 1u);
	CHECK_EQ(p.cls, SLUICE_CLASS_PERMANENT);
	CHECK_LT(p.ns, ev_ns("perm", PX_EV_FIN, 0));

	/* The failed write: REQ (the longest delay), no FIN until the
	 * second write succeeded. */
	CHECK_STORY("dlqf", "M1 R400 M2 F");
	CHECK(dl_get("dlqf", 0, &f0));
	CHECK(dl_get("dlqf", 1, &f1));
	CHECK_EQ(f0.rc, SLUICE_EIO);
	CHECK_EQ(f1.rc, 0);
	CHECK_EQ(f1.attempts, 2u);
	CHECK_LT(f0.ns, ev_ns("dlqf", PX_EV_REQ, 0));
	CHECK_LT(f1.ns, ev_ns("dlqf", PX_EV_FIN, 0));

	CHECK_STORY("ok", "M1 F");
	CHECK_EQ(r.es.temporary, 3u);
	CHECK_EQ(r.es.permanent, 3u); /* perm, dlqf twice */
	CHECK_EQ(r.es.exhausted, 1u);
	CHECK_EQ(r.es.dead_lettered, 3u);
	CHECK_EQ(r.es.dlq_failed, 1u);
	CHECK_EQ(r.es.requeued, 3u);
	CHECK_EQ(r.es.handled, 1u);
	(void)rig_ledger(&r);
	rig_free(&r);
}

/* ---- 5. a poison or hanging message does not block the rest ------------ */

/*
 * 4 workers, deadline 3 s inside a 10 s lease, 2 attempts.  "hang" holds
 * one slot until its deadline, "poison" fails at once and goes back to
 * nsqd with its 50 ms delay (no worker sleeps on it); meanwhile 200 other
 * messages are all handled, while the hanging one still runs.  Each bad
 * message holds at most one slot at a time, and both end in the
 * dead-letter sink after 2 attempts.
 */
static void
test_poison_and_hang_isolated(void)
{
	struct rig r;
	struct call h0, h1, c;
	struct dlrec d;

	rig_init(&r, NULL);
	r.dlq = true;
	r.ncfg.msg_timeout_ms = 10000;
	r.ecfg.workers = 4;
	r.ecfg.prefetch = 1;
	r.ecfg.timeout_ns = 3000 * MS;
	r.ecfg.retry.min_ns = 50 * MS;
	r.ecfg.retry.max_ns = 50 * MS;
	r.ecfg.retry.max_attempts = 2;
	rig_open(&r);
	rig_start(&r, (struct sluice_batch_handler){ 0 });
	pub(&r.d, "hang");
	WAIT_FOR(calls("hang", false) == 1); /* alone in its fetch */
	pub(&r.d, "poison");
	pub_n(&r, "m", 0, 200);
	WAIT_FOR(px_count(PX_EV_FIN, "m") == 200);
	/* All 200 done while the hanging handler still held its slot. */
	CHECK_EQ(calls("hang", true), 0);
	WAIT_FOR(px_count(PX_EV_FIN, "hang") == 1 &&
		 px_count(PX_EV_FIN, "poison") == 1);
	rig_finish(&r);
	CHECK(call_get("hang", 0, &h0));
	CHECK(call_get("hang", 1, &h1));
	CHECK_EQ(h0.reason, SLUICE_CANCEL_DEADLINE);
	CHECK_EQ(h1.reason, SLUICE_CANCEL_DEADLINE);
	CHECK_EQ(h1.attempts, 2u);
	CHECK_STORY("hang", "M1 R50 M2 F");
	CHECK_STORY("poison", "M1 R50 M2 F");
	CHECK(call_get("poison", 1, &c));
	CHECK(!call_get("poison", 2, &c));
	/* The retry waited at nsqd, not in a worker. */
	CHECK_GE(ev_ns("poison", PX_EV_MSG, 1) - ev_ns("poison", PX_EV_REQ, 0),
		 45 * MS);
	CHECK(dl_get("hang", 0, &d));
	CHECK_EQ(d.attempts, 2u);
	CHECK_EQ(d.cls, SLUICE_CLASS_TIMEOUT);
	CHECK(dl_get("poison", 0, &d));
	CHECK_EQ(d.attempts, 2u);
	CHECK_LE(hl_get(&hl.max_bad), 2); /* one slot each, at most */
	CHECK_LE(hl_get(&hl.max_running), 4);
	CHECK_EQ(calls("m", true), 200);
	CHECK_EQ(r.es.timeouts, 2u);
	CHECK_EQ(r.es.exhausted, 2u);
	CHECK_EQ(r.es.handled, 200u);
	(void)rig_ledger(&r);
	rig_free(&r);
}

/* ---- 6. batch semantics ------------------------------------------------- */

#define MAXB 64
static struct {
	pthread_mutex_t mu;
	size_t size[MAXB];
	int64_t ns[MAXB];
	size_t n;
} bl = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* Records each batch's size; "bad*" fails TEMPORARY on attempt 1. */
static struct sluice_error *
handle_batch(void *ud, struct sluice_ctx *ctx,
	     const struct sluice_msg *const *msgs, size_t n,
	     struct sluice_error **errs)
{
	size_t i;

	(void)ud;
	(void)ctx;
	CHECK_GT(n, 0u); /* never empty */
	for (i = 0; i < n; i++) {
		char b[PX_BODY] = "";

		memcpy(b, msgs[i]->body,
		       msgs[i]->body_len < PX_BODY - 1 ? msgs[i]->body_len
						       : PX_BODY - 1);
		call_end(call_begin(b, msgs[i]->attempts), SLUICE_CLASS_OK,
			 SLUICE_CANCEL_NONE, false);
		if (starts(b, "bad") && msgs[i]->attempts == 1)
			errs[i] = sluice_error_new(SLUICE_CLASS_TEMPORARY, 0,
						   "bad");
	}
	pthread_mutex_lock(&bl.mu);
	CHECK_LT(bl.n, MAXB);
	bl.ns[bl.n] = px_now_ns();
	bl.size[bl.n++] = n;
	pthread_mutex_unlock(&bl.mu);
	return NULL;
}

/* The batch sizes since batch @from, as "4 4". */
static const char *
sizes(size_t from, char *buf, size_t cap)
{
	size_t i, len = 0;

	buf[0] = '\0';
	pthread_mutex_lock(&bl.mu);
	for (i = from; i < bl.n && len + 8 < cap; i++)
		len += (size_t)snprintf(buf + len, cap - len, "%s%zu",
					len ? " " : "", bl.size[i]);
	pthread_mutex_unlock(&bl.mu);
	return buf;
}

static size_t
nbatches(void)
{
	size_t n;

	pthread_mutex_lock(&bl.mu);
	n = bl.n;
	pthread_mutex_unlock(&bl.mu);
	return n;
}

/* One engine run in batch mode over a fresh connection: publish @count
 * messages "@prefix<i>" first, wait until @fins of them were FINed. */
static void
batch_run(struct rig *r, size_t max, size_t bytes, int64_t wait_ns, size_t mif,
	  const char *prefix, int count, int fins)
{
	struct sluice_batch_handler b = { handle_batch, NULL };

	r->ecfg.mode = SLUICE_MODE_BATCH;
	r->ecfg.workers = 1;
	r->ecfg.batch_max = max;
	r->ecfg.batch_max_bytes = bytes;
	r->ecfg.batch_wait_ns = wait_ns;
	r->ecfg.max_in_flight = mif;
	rig_open(r);
	pub_n(r, prefix, 0, count);
	rig_start(r, b);
	WAIT_FOR(px_count(PX_EV_FIN, prefix) == fins);
	rig_finish(r);
}

/*
 * Each flush rule alone, on its own connection: size (4 of 8 at once,
 * waiting 10 s would be the alternative), bytes (3 bodies of 4 bytes fill
 * 12), wait (a lone message after 200 ms); batch_max 8 over a credit of 5
 * flushes at 5 when starved instead of waiting 10 s (nsq_to_file's
 * deadlock); a partial failure FINs the successes once and REQs only the
 * failures.
 */
static void
test_batches_over_nsq(void)
{
	struct rig r;
	struct ledger l;
	int64_t t0;
	char s[128], want[16];
	size_t b0;
	int i;

	rig_init(&r, NULL);
	t0 = px_now_ns();
	/* size */
	b0 = nbatches();
	batch_run(&r, 4, 0, 10 * SLUICE_NS_PER_S, 0, "sz", 8, 8);
	CHECK_STREQ(sizes(b0, s, sizeof(s)), "4 4");
	CHECK_EQ(r.es.max_batch, 4u);
	/* bytes */
	b0 = nbatches();
	batch_run(&r, 100, 12, 10 * SLUICE_NS_PER_S, 6, "by0", 6, 6);
	CHECK_STREQ(sizes(b0, s, sizeof(s)), "3 3");
	/* credit below batch_max: flushed when starved */
	b0 = nbatches();
	batch_run(&r, 8, 0, 10 * SLUICE_NS_PER_S, 5, "cr", 10, 10);
	CHECK_STREQ(sizes(b0, s, sizeof(s)), "5 5");
	CHECK_LE(r.st.max_rdy_sum, 5u);
	CHECK_EQ(r.es.max_in_flight, 5u);
	/* None of those waited for batch_wait. */
	CHECK_LT(px_now_ns() - t0, 5 * SLUICE_NS_PER_S);
	/* wait */
	b0 = nbatches();
	batch_run(&r, 100, 0, 200 * MS, 0, "wt", 1, 1);
	CHECK_STREQ(sizes(b0, s, sizeof(s)), "1");
	CHECK_GE(ev_ns("wt0", PX_EV_FIN, 0) - ev_ns("wt0", PX_EV_MSG, 0),
		 200 * MS);
	/* partial failure: one batch of 6, two of them fail */
	rig_open(&r);
	pub(&r.d, "pf0");
	pub(&r.d, "bad0");
	pub(&r.d, "pf1");
	pub(&r.d, "pf2");
	pub(&r.d, "bad1");
	pub(&r.d, "pf3");
	b0 = nbatches();
	r.ecfg.batch_max = 10;
	r.ecfg.batch_wait_ns = 100 * MS;
	r.ecfg.max_in_flight = 0;
	rig_start(&r, (struct sluice_batch_handler){ handle_batch, NULL });
	WAIT_FOR(px_count(PX_EV_FIN, "bad") == 2 &&
		 px_count(PX_EV_FIN, "pf") == 4);
	rig_finish(&r);
	CHECK(strncmp(sizes(b0, s, sizeof(s)), "6 ", 2) == 0);
	for (i = 0; i < 4; i++) {
		snprintf(want, sizeof(want), "pf%d", i);
		CHECK_STORY(want, "M1 F"); /* acked once, never again */
	}
	for (i = 0; i < 2; i++) {
		snprintf(want, sizeof(want), "bad%d", i);
		CHECK_STORY(want, "M1 R10 M2 F");
	}
	CHECK_EQ(r.es.requeued, 2u);
	CHECK_EQ(r.es.handled, 6u);
	/* Over all five runs, by id. */
	l = ledger((int64_t)r.ncfg.msg_timeout_ms * MS);
	CHECK_EQ(l.msgs, 8 + 6 + 10 + 1 + 8);
	CHECK_EQ(l.fins, 8 + 6 + 10 + 1 + 6);
	CHECK_EQ(l.reqs, 2);
	rig_free(&r);
}

/* ---- 7. consumer backoff ------------------------------------------------ */

/* The RDY counts the stand-in received, in order, as "5 0 1 5". */
static const char *
rdy_seq(char *buf, size_t cap)
{
	size_t n, i, len = 0;
	struct px_ev *ev = px_snapshot(&n);

	buf[0] = '\0';
	for (i = 0; i < n && len + 12 < cap; i++)
		if (ev[i].kind == PX_EV_RDY)
			len += (size_t)snprintf(buf + len, cap - len, "%s%u",
						len ? " " : "", ev[i].arg);
	free(ev);
	return buf;
}

/* Deliveries between the @a-th and @b-th RDY commands. */
static int
msgs_between_rdy(size_t a, size_t b)
{
	size_t n, i, k = 0;
	struct px_ev *ev = px_snapshot(&n);
	int c = 0;

	for (i = 0; i < n; i++) {
		if (ev[i].kind == PX_EV_RDY)
			k++;
		else if (ev[i].kind == PX_EV_MSG && k > a && k <= b)
			c++;
	}
	free(ev);
	return c;
}

/* The time of the @k-th RDY command (0-based). */
static int64_t
rdy_ns(size_t k)
{
	size_t n, i, j = 0;
	struct px_ev *ev = px_snapshot(&n);
	int64_t t = 0;

	for (i = 0; i < n && !t; i++)
		if (ev[i].kind == PX_EV_RDY && j++ == k)
			t = ev[i].ns;
	free(ev);
	return t;
}

/*
 * Credit 5, backoff unit 400 ms.  Five PERMANENT failures: dead-lettered,
 * RDY never leaves 5, no backoff.  Then one TEMPORARY failure (go-nsq
 * counts every failure outside a backoff period): RDY 0 reaches the
 * stand-in before the REQ; 3 messages published meanwhile are withheld
 * for the 800 ms period; exactly one RDY 1 probe lets exactly one message
 * through; its success restores RDY 5, and the rest flow.
 */
static void
test_consumer_backoff(void)
{
	struct rig r;
	struct sluice_nsq_stats st;
	uint64_t hb;
	char s[128];

	rig_init(&r, NULL);
	r.dlq = true;
	r.ncfg.backoff_unit_ns = 400 * MS;
	r.ncfg.backoff_max_ns = 2 * SLUICE_NS_PER_S;
	r.ecfg.workers = 4;
	r.ecfg.prefetch = 1;
	r.ecfg.retry.max_attempts = 0;
	rig_open(&r);
	rig_start(&r, (struct sluice_batch_handler){ 0 });
	WAIT_FOR(px_get(PX_RDY_SUM) == 5);
	pub_n(&r, "perm", 0, 5);
	WAIT_FOR(px_count(PX_EV_FIN, "perm") == 5);
	st = nsq_stats(r.n);
	CHECK_EQ(st.backoffs, 0u);
	CHECK_EQ(st.backoff_level, 0u);
	CHECK(!px_get(PX_ZERO_SEEN));
	CHECK_STREQ(rdy_seq(s, sizeof(s)), "5");

	pub(&r.d, "t1");
	WAIT_FOR(px_get(PX_ZERO_SEEN));
	/* RDY 0 went out before the failure's REQ. */
	WAIT_FOR(px_count(PX_EV_REQ, "t1") == 1);
	CHECK_LT(rdy_ns(1), ev_ns("t1", PX_EV_REQ, 0));
	/* Publish only once nsqd has read the RDY 0 (the log is the
	 * proxy's, not nsqd's): nsqd reads its sockets before it sends
	 * the heartbeat of a loop turn, and of the heartbeats the client
	 * gets after the RDY 0 left, the second was sent after it. */
	hb = nsq_stats(r.n).heartbeats;
	WAIT_FOR(nsq_stats(r.n).heartbeats >= hb + 2);
	pub_n(&r, "ok", 0, 3);
	WAIT_FOR(px_count(PX_EV_FIN, "ok") == 3 &&
		 px_count(PX_EV_FIN, "t1") == 1);
	st = nsq_stats(r.n);
	CHECK_EQ(st.backoff_level, 0u);
	CHECK_EQ(st.backoffs, 1u);
	CHECK_EQ(px_get(PX_RDY_SUM), 5);
	CHECK_STREQ(rdy_seq(s, sizeof(s)), "5 0 1 5");
	CHECK_EQ(msgs_between_rdy(1, 2), 0); /* nothing while RDY 0 */
	CHECK_EQ(msgs_between_rdy(2, 3), 1); /* the one probe */
	/* The period: unit * 2^level, level 1. */
	CHECK_GE(rdy_ns(2) - rdy_ns(1), 800 * MS);
	CHECK_LE(px_get(PX_MAX_RDY_SUM), 5);
	rig_finish(&r);
	CHECK_STORY("t1", "M1 R10 M2 F");
	CHECK_EQ(r.es.dead_lettered, 5u);
	CHECK_EQ(r.es.permanent, 5u);
	CHECK_EQ(r.es.temporary, 1u);
	CHECK_EQ(r.es.handled, 4u);
	(void)rig_ledger(&r);
	rig_free(&r);
}

CHECK_MAIN(test_drain_hands_back_and_acks_once, test_overload_bounded,
	   test_deadline_cancels_and_requeues, test_classes_drive_actions,
	   test_poison_and_hang_isolated, test_batches_over_nsq,
	   test_consumer_backoff)
