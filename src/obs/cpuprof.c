/* SPDX-License-Identifier: MIT */
/*
 * cpuprof.c - the CPU profiler, the goroutine and threadcreate profiles
 * (include/sluice/profile.h).
 *
 * CPU: while a profile runs, every registered thread has a POSIX timer on
 * its own CPU-time clock that sends it SIGPROF (SIGEV_THREAD_ID) every
 * 1/hz s of CPU.  The timers are created and deleted by a hook the thread
 * registry calls under its lock (threads.c), so a thread registering or
 * unregistering during a profile gets or loses its timer atomically with
 * its registry entry, and start/stop cannot race with either.
 *
 * The SIGPROF handler is async-signal-safe: no lock, no allocation.  It
 * unwinds the interrupted stack into a local array, claims room in the
 * preallocated sample buffer with one atomic_fetch_add on ring_used, and
 * copies the record there: [header, thread serial, stage pointer, thread
 * name (16 bytes), pcs...].  A claim past the end is dropped and counted.
 *
 * Stop has to make sure no handler still writes the buffer before reading
 * and freeing it.  A handler increments inflight, then reads sampling;
 * stop clears sampling, deletes the timers, then waits for inflight to be
 * 0 (all seq_cst: a handler that increments after stop saw 0 reads
 * sampling after stop cleared it).  A SIGPROF still pending after
 * timer_delete() may arrive later, so the handler stays installed for the
 * life of the process and ignores ticks while no profile runs; restoring
 * SIG_DFL would let such a tick kill the process.
 *
 * Locking: prof_mu serializes start and stop and guards the fields marked
 * so; it is taken before the registry lock (via the hook), never after.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sluice/profile.h>

#include "obs/pb.h"
#include "obs/profile.h"
#include "obs/threads.h"
#include "util/alloc.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

/* Sample buffer, in words: about 25k samples of typical depth, i.e. two
 * minutes of two busy CPUs at 100 Hz. */
#define RING_WORDS ((size_t)1 << 19)
#define REC_HDR    5 /* header, serial, stage, name[16] */
#define REC_MARK   ((uintptr_t)1 << 32)

#define CAPTURE_TIMEOUT_NS SLUICE_NS_PER_S

static pthread_mutex_t prof_mu = PTHREAD_MUTEX_INITIALIZER;
static bool prof_running;       /* prof_mu */
static bool handler_installed;  /* prof_mu */
static int64_t prof_start_wall; /* prof_mu */
static int64_t prof_start_mono; /* prof_mu */
static atomic_int prof_hz;      /* written under prof_mu; relaxed */

static atomic_bool sampling;         /* seq_cst (see top) */
static atomic_int inflight;          /* seq_cst (see top) */
static uintptr_t *_Atomic ring;      /* set before sampling; relaxed */
static atomic_size_t ring_used;      /* relaxed: only claims */
static atomic_size_t ring_dropped;   /* relaxed: a counter */
static atomic_size_t timer_failures; /* relaxed: a counter */

static void
set_err(char *err, size_t errlen, const char *msg)
{
	if (err && errlen > 0)
		snprintf(err, errlen, "%s", msg);
}

/* ---- sampling (signal context) ------------------------------------------ */

static void
sigprof_handler(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	uintptr_t pcs[SL_PROF_MAX_DEPTH], *r;
	char name[16];
	uint64_t id;
	size_t n, need, off;

	(void)sig;
	(void)si;
	atomic_fetch_add(&inflight, 1);
	if (!atomic_load(&sampling))
		goto out;
	id = sl_thread_self_id(name);
	if (!id)
		goto out; /* not one of ours */
	r = atomic_load_explicit(&ring, memory_order_relaxed);
	n = sl_unwind_ucontext(uc, pcs, SL_PROF_MAX_DEPTH);
	need = REC_HDR + n;
	off = atomic_fetch_add_explicit(&ring_used, need, memory_order_relaxed);
	if (off + need > RING_WORDS || !r) {
		atomic_fetch_add_explicit(&ring_dropped, 1,
					  memory_order_relaxed);
		goto out;
	}
	r[off] = REC_MARK | n;
	r[off + 1] = (uintptr_t)id;
	r[off + 2] = (uintptr_t)sl_thread_stage();
	memcpy(&r[off + 3], name, sizeof(name));
	memcpy(&r[off + REC_HDR], pcs, n * sizeof(uintptr_t));
out:
	atomic_fetch_sub(&inflight, 1);
	errno = saved;
}

/* Registry hook (registry lock held): a CPU-time timer per thread. */
static void
timer_hook(struct sl_thread_prof *tp, int attach)
{
	struct sigevent sev;
	struct itimerspec its;
	clockid_t cid;
	long period;

	if (!attach) {
		if (tp->armed)
			timer_delete(tp->timer);
		tp->armed = 0;
		return;
	}
	if (tp->armed)
		return;
	period = 1000000000L /
		 atomic_load_explicit(&prof_hz, memory_order_relaxed);
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = SIGPROF;
	sev.sigev_notify_thread_id = tp->tid;
	if (pthread_getcpuclockid(tp->thr, &cid) != 0 ||
	    timer_create(cid, &sev, &tp->timer) != 0) {
		atomic_fetch_add_explicit(&timer_failures, 1,
					  memory_order_relaxed);
		return;
	}
	its.it_interval.tv_sec = 0;
	its.it_interval.tv_nsec = period;
	its.it_value = its.it_interval;
	if (timer_settime(tp->timer, 0, &its, NULL) != 0) {
		timer_delete(tp->timer);
		atomic_fetch_add_explicit(&timer_failures, 1,
					  memory_order_relaxed);
		return;
	}
	tp->armed = 1;
}

/* ---- start / stop ------------------------------------------------------- */

static bool
is_ours(const struct sigaction *sa)
{
	return (sa->sa_flags & SA_SIGINFO) &&
	       sa->sa_sigaction == sigprof_handler;
}

/* Install the SIGPROF handler once (prof_mu held). */
static int
install_handler(char *err, size_t errlen)
{
	struct sigaction sa, old;

	if (sigaction(SIGPROF, NULL, &old) != 0) {
		int e = errno;

		set_err(err, errlen, "sigaction(SIGPROF) failed");
		return -e;
	}
	if (is_ours(&old)) {
		handler_installed = true;
		return 0;
	}
	if ((old.sa_flags & SA_SIGINFO) ||
	    (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN)) {
		set_err(err, errlen,
			"SIGPROF is handled by someone else (another "
			"profiler?)");
		return SLUICE_EBUSY;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = sigprof_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SL_THREAD_CAPTURE_SIG);
	if (sigaction(SIGPROF, &sa, NULL) != 0) {
		int e = errno;

		set_err(err, errlen, "sigaction(SIGPROF) failed");
		return -e;
	}
	handler_installed = true;
	return 0;
}

int
sluice_cpu_profile_start(int hz, char *err, size_t errlen)
{
	uintptr_t *buf;
	int rc;

	set_err(err, errlen, "");
	if (hz < 0) {
		set_err(err, errlen, "hz must not be negative");
		return SLUICE_EINVAL;
	}
	if (hz == 0)
		hz = SLUICE_CPU_PROFILE_DEFAULT_HZ;
	if (hz > SLUICE_CPU_PROFILE_MAX_HZ)
		hz = SLUICE_CPU_PROFILE_MAX_HZ;
	pthread_mutex_lock(&prof_mu);
	if (prof_running) {
		pthread_mutex_unlock(&prof_mu);
		set_err(err, errlen, "cpu profiling already in use");
		return SLUICE_EBUSY;
	}
	rc = install_handler(err, errlen);
	if (rc) {
		pthread_mutex_unlock(&prof_mu);
		return rc;
	}
	buf = sl_calloc(RING_WORDS, sizeof(*buf));
	if (!buf) {
		pthread_mutex_unlock(&prof_mu);
		set_err(err, errlen, "out of memory");
		return SLUICE_ENOMEM;
	}
	atomic_store_explicit(&ring, buf, memory_order_relaxed);
	atomic_store_explicit(&ring_used, 0, memory_order_relaxed);
	atomic_store_explicit(&ring_dropped, 0, memory_order_relaxed);
	atomic_store_explicit(&timer_failures, 0, memory_order_relaxed);
	atomic_store_explicit(&prof_hz, hz, memory_order_relaxed);
	prof_start_wall = sl_clock_ns(CLOCK_REALTIME);
	prof_start_mono = sl_clock_ns(CLOCK_MONOTONIC);
	atomic_store(&sampling, true);
	prof_running = true;
	sl_threads_set_prof_hook(timer_hook);
	pthread_mutex_unlock(&prof_mu);
	return 0;
}

int
sluice_cpu_profile_running(void)
{
	int r;

	pthread_mutex_lock(&prof_mu);
	r = prof_running;
	pthread_mutex_unlock(&prof_mu);
	return r;
}

static const struct sl_prof_type cpu_types[] = {
	{ "samples", "count" },
	{ "cpu", "nanoseconds" },
};
static const struct sl_prof_type cpu_period = { "cpu", "nanoseconds" };

/* Turn the quiescent sample buffer into a profile (prof_mu held). */
static int
build_cpu(const uintptr_t *buf, size_t used, int64_t period,
	  struct sl_prof **out)
{
	struct sl_prof_label labels[2];
	int64_t values[2] = { 1, period };
	char name[17], comment[96];
	struct sl_prof *p;
	size_t off = 0, n, nl, dropped, tfail;
	int rc = 0;

	p = sl_prof_new(cpu_types, 2, "cpu", &cpu_period, period);
	if (!p)
		return SLUICE_ENOMEM;
	sl_prof_set_time(p, prof_start_wall,
			 sl_clock_ns(CLOCK_MONOTONIC) - prof_start_mono);
	if (used > RING_WORDS)
		used = RING_WORDS;
	while (rc == 0 && off + REC_HDR <= used && (buf[off] & REC_MARK)) {
		n = (size_t)(buf[off] & (REC_MARK - 1));
		memcpy(name, &buf[off + 3], 16);
		name[16] = '\0';
		nl = 0;
		labels[nl++] =
			(struct sl_prof_label){ .key = "thread", .str = name };
		if (buf[off + 2])
			labels[nl++] = (struct sl_prof_label){
				.key = "stage",
				.str = (const char *)buf[off + 2]
			};
		rc = sl_prof_add(p, &buf[off + REC_HDR], n, values, labels, nl);
		off += REC_HDR + n;
	}
	dropped = atomic_load_explicit(&ring_dropped, memory_order_relaxed);
	tfail = atomic_load_explicit(&timer_failures, memory_order_relaxed);
	if (rc == 0 && dropped) {
		snprintf(comment, sizeof(comment),
			 "%zu samples dropped: sample buffer full", dropped);
		rc = sl_prof_add_comment(p, comment);
	}
	if (rc == 0 && tfail) {
		snprintf(comment, sizeof(comment),
			 "%zu threads not sampled: timer_create failed", tfail);
		rc = sl_prof_add_comment(p, comment);
	}
	if (rc) {
		sl_prof_free(p);
		return rc;
	}
	*out = p;
	return 0;
}

static bool
graph_format(enum sluice_profile_format f)
{
	return f == SLUICE_PROFILE_PPROF || f == SLUICE_PROFILE_FOLDED ||
	       f == SLUICE_PROFILE_SVG;
}

int
sluice_cpu_profile_stop(enum sluice_profile_format format, char **data,
			size_t *len)
{
	struct timespec pause = { 0, 100000 };
	struct sl_prof *p = NULL;
	uintptr_t *buf;
	int64_t period;
	size_t used;
	int rc;

	if (!data || !len || !graph_format(format))
		return SLUICE_EINVAL;
	pthread_mutex_lock(&prof_mu);
	if (!prof_running) {
		pthread_mutex_unlock(&prof_mu);
		return SLUICE_ESTATE;
	}
	atomic_store(&sampling, false);
	sl_threads_set_prof_hook(NULL);
	/* Handlers that saw sampling set finish within microseconds. */
	while (atomic_load(&inflight) != 0)
		nanosleep(&pause, NULL);
	buf = atomic_load_explicit(&ring, memory_order_relaxed);
	atomic_store_explicit(&ring, NULL, memory_order_relaxed);
	used = atomic_load_explicit(&ring_used, memory_order_relaxed);
	period = SLUICE_NS_PER_S /
		 atomic_load_explicit(&prof_hz, memory_order_relaxed);
	rc = build_cpu(buf, used, period, &p);
	sl_free(buf);
	prof_running = false;
	pthread_mutex_unlock(&prof_mu);
	if (rc)
		return rc;
	rc = sl_prof_encode(p, format, 0, "CPU", data, len);
	sl_prof_free(p);
	return rc;
}

/* Write @len bytes of @data to @f; 0 or -errno. */
static int
write_all(FILE *f, const char *data, size_t len)
{
	if (len && fwrite(data, 1, len, f) != len)
		return errno ? -errno : SLUICE_EIO;
	if (fflush(f) != 0)
		return errno ? -errno : SLUICE_EIO;
	return 0;
}

int
sluice_cpu_profile_stop_file(enum sluice_profile_format format, FILE *f)
{
	char *data;
	size_t len;
	int rc;

	if (!f)
		return SLUICE_EINVAL;
	rc = sluice_cpu_profile_stop(format, &data, &len);
	if (rc)
		return rc;
	errno = 0;
	rc = write_all(f, data, len);
	sl_free(data);
	return rc;
}

int
sluice_cpu_profile_stop_path(enum sluice_profile_format format,
			     const char *path)
{
	FILE *f;
	int rc, e;

	if (!path || !graph_format(format))
		return SLUICE_EINVAL;
	/* Open first: a path that cannot be written leaves the profile
	 * running, so the caller may try another. */
	f = fopen(path, "wb");
	if (!f)
		return -errno;
	rc = sluice_cpu_profile_stop_file(format, f);
	errno = 0;
	if (fclose(f) != 0 && rc == 0) {
		e = errno;
		rc = e ? -e : SLUICE_EIO;
	}
	if (rc)
		remove(path);
	return rc;
}

void
sluice_profile_free(char *data)
{
	sl_free(data);
}

/* ---- goroutine and threadcreate ----------------------------------------- */

/* One stack of a text profile, with the thread it came from. */
struct tstack {
	const uintptr_t *pcs;
	size_t n;
	const struct sl_thread_info *info;
	int captured;
};

static int
cmp_tstack(const void *a, const void *b)
{
	const struct tstack *x = a, *y = b;
	size_t i;

	for (i = 0; i < x->n && i < y->n; i++)
		if (x->pcs[i] != y->pcs[i])
			return x->pcs[i] < y->pcs[i] ? -1 : 1;
	if (x->n != y->n)
		return x->n < y->n ? -1 : 1;
	return 0;
}

static void
put_frames(struct sl_buf *b, const uintptr_t *pcs, size_t n, bool go_style)
{
	char sym[256];
	size_t i;

	for (i = 0; i < n; i++) {
		(void)sl_sym_name(pcs[i], sym, sizeof(sym));
		if (go_style)
			sl_buf_printf(b, "#\t%#" PRIxPTR "\t%s\n", pcs[i], sym);
		else
			sl_buf_printf(b, "%s()\n\t%#" PRIxPTR "\n", sym,
				      pcs[i]);
	}
}

/* Go's debug=1: "KIND profile: total N", then per distinct stack
 * "COUNT @ pc pc...", its frames, a blank line.  Sorts @st. */
static void
text_counts(struct sl_buf *b, const char *kind, struct tstack *st, size_t n)
{
	size_t i, j, k;

	qsort(st, n, sizeof(*st), cmp_tstack);
	sl_buf_printf(b, "%s profile: total %zu\n", kind, n);
	for (i = 0; i < n; i = j) {
		for (j = i + 1; j < n && cmp_tstack(&st[i], &st[j]) == 0; j++)
			;
		sl_buf_printf(b, "%zu @", j - i);
		for (k = 0; k < st[i].n; k++)
			sl_buf_printf(b, " %#" PRIxPTR, st[i].pcs[k]);
		sl_buf_puts(b, "\n");
		put_frames(b, st[i].pcs, st[i].n, true);
		sl_buf_puts(b, "\n");
	}
}

/* Go's debug=2, one block per thread. */
static void
text_threads(struct sl_buf *b, const struct tstack *st, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		sl_buf_printf(b, "thread %d %s [%s]:\n", st[i].info->tid,
			      st[i].info->name,
			      st[i].info->stage ? st[i].info->stage : "");
		if (!st[i].captured)
			sl_buf_puts(b, "\t(no stack: the thread did not "
				       "answer in time)\n");
		put_frames(b, st[i].pcs, st[i].n, false);
		sl_buf_puts(b, "\n");
	}
}

/* A profile of one count per stack in @st (threads without a stack are
 * left out), labelled with thread and stage. */
static int
build_counts(const char *kind, const struct tstack *st, size_t n,
	     struct sl_prof **out)
{
	const struct sl_prof_type type = { kind, "count" };
	struct sl_prof_label labels[2];
	const int64_t one = 1;
	struct sl_prof *p;
	size_t i, nl;
	int rc = 0;

	p = sl_prof_new(&type, 1, NULL, &type, 1);
	if (!p)
		return SLUICE_ENOMEM;
	sl_prof_set_time(p, sl_clock_ns(CLOCK_REALTIME), 0);
	for (i = 0; i < n && rc == 0; i++) {
		if (st[i].n == 0)
			continue;
		nl = 0;
		labels[nl++] =
			(struct sl_prof_label){ .key = "thread",
						.str = st[i].info->name };
		if (st[i].info->stage)
			labels[nl++] = (struct sl_prof_label){
				.key = "stage", .str = st[i].info->stage
			};
		rc = sl_prof_add(p, st[i].pcs, st[i].n, &one, labels, nl);
	}
	if (rc) {
		sl_prof_free(p);
		return rc;
	}
	*out = p;
	return 0;
}

/* Encode the stacks @st in any format. */
static int
emit(const char *kind, struct tstack *st, size_t n,
     enum sluice_profile_format format, char **data, size_t *len)
{
	struct sl_prof *p = NULL;
	struct sl_buf b;
	int rc;

	if (graph_format(format)) {
		rc = build_counts(kind, st, n, &p);
		if (rc)
			return rc;
		rc = sl_prof_encode(p, format, 0, kind, data, len);
		sl_prof_free(p);
		return rc;
	}
	sl_buf_init(&b);
	if (format == SLUICE_PROFILE_TEXT)
		text_counts(&b, kind, st, n);
	else
		text_threads(&b, st, n);
	rc = sl_buf_finish(&b, 0, len);
	if (rc == 0)
		*data = (char *)b.data;
	return rc;
}

int
sluice_goroutine_profile(enum sluice_profile_format format, char **data,
			 size_t *len)
{
	struct sl_thread_stack *ts = NULL;
	struct tstack *st = NULL;
	size_t cap, i, n;
	long total;
	int tries, rc;

	if (!data || !len || format < SLUICE_PROFILE_PPROF ||
	    format > SLUICE_PROFILE_TEXT_THREADS)
		return SLUICE_EINVAL;
	/* Threads may register meanwhile: retry with room for them. */
	cap = sl_threads_snapshot(NULL, 0) + 8;
	for (tries = 0;; tries++) {
		sl_free(ts);
		ts = sl_calloc(cap, sizeof(*ts));
		if (!ts)
			return SLUICE_ENOMEM;
		total = sl_threads_capture(ts, cap, CAPTURE_TIMEOUT_NS);
		if (total < 0) {
			sl_free(ts);
			return (int)total;
		}
		if ((size_t)total <= cap || tries == 2)
			break;
		cap = (size_t)total + 8;
	}
	n = (size_t)total < cap ? (size_t)total : cap;
	st = sl_calloc(n ? n : 1, sizeof(*st));
	if (!st) {
		sl_free(ts);
		return SLUICE_ENOMEM;
	}
	for (i = 0; i < n; i++)
		st[i] = (struct tstack){ .pcs = ts[i].pcs,
					 .n = ts[i].npcs,
					 .info = &ts[i].info,
					 .captured = ts[i].captured };
	rc = emit("goroutine", st, n, format, data, len);
	sl_free(st);
	sl_free(ts);
	return rc;
}

int
sluice_threadcreate_profile(enum sluice_profile_format format, char **data,
			    size_t *len)
{
	struct sl_thread_info *ti = NULL;
	struct tstack *st = NULL;
	size_t cap, total, i, n;
	int rc;

	if (!data || !len || format < SLUICE_PROFILE_PPROF ||
	    format > SLUICE_PROFILE_TEXT)
		return SLUICE_EINVAL;
	cap = sl_threads_snapshot(NULL, 0) + 8;
	for (;;) {
		ti = sl_calloc(cap, sizeof(*ti));
		if (!ti)
			return SLUICE_ENOMEM;
		total = sl_threads_snapshot(ti, cap);
		if (total <= cap)
			break;
		sl_free(ti);
		cap = total + 8;
	}
	st = sl_calloc(total ? total : 1, sizeof(*st));
	if (!st) {
		sl_free(ti);
		return SLUICE_ENOMEM;
	}
	for (i = n = 0; i < total; i++)
		if (ti[i].create_npcs) {
			st[n] = (struct tstack){ .pcs = ti[i].create_pcs,
						 .n = ti[i].create_npcs,
						 .info = &ti[i],
						 .captured = 1 };
			n++;
		}
	rc = emit("threadcreate", st, n, format, data, len);
	sl_free(st);
	sl_free(ti);
	return rc;
}
