/* SPDX-License-Identifier: MIT */
/*
 * threads.c - the registry of sluice's threads (threads.h), bounded
 * frame-pointer unwinding, and the per-thread stack capture behind the
 * goroutine profile.
 *
 * The registry is a doubly linked list of heap entries guarded by reg_mu.
 * A thread adds its own entry (sl_thread_register) and removes it
 * (sl_thread_unregister, or the pthread key destructor when the thread
 * exits without unregistering), so an entry found under reg_mu belongs to
 * a live thread and may be signalled.  The thread also keeps in
 * initial-exec TLS (no __tls_get_addr, so no malloc, from a signal
 * handler) a pointer to its entry, its stack top and its stage.  The entry
 * is freed only by its own thread, after the TLS pointer is cleared, so a
 * signal handler on that thread sees either NULL or a live entry.
 *
 * Unwinding follows the frame-pointer chain; every load is bounded by
 * [sp, stack top) of the calling thread and frame addresses must grow, so
 * a corrupt chain ends the walk instead of faulting.  Threads that are not
 * registered have no known stack top: from a signal handler they yield the
 * leaf PC only; sl_unwind_here() looks the bounds up once per thread with
 * pthread_getattr_np() (which may allocate).
 *
 * Stack capture of other threads (sl_threads_capture): under cap_mu and
 * reg_mu, each entry gets a new request number in gr_req and the thread
 * is sent SL_THREAD_CAPTURE_SIG; its handler unwinds itself into the entry
 * and publishes gr_done = request (release).  A handler that comes late
 * (after a timeout) writes only when gr_done != gr_req, so at most one
 * write per request, always before gr_done is published.
 *
 * The CPU profiler's hook runs under reg_mu, which orders timer creation
 * and deletion with registration and with profiler start/stop.
 */
#include "obs/threads.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <sluice/common.h>
#include <sluice/profile.h>

#include "util/alloc.h"

#define TLS_IE __thread __attribute__((tls_model("initial-exec")))

/* Unwinding and ASan: the frame walk reads saved rbp/return slots, never
 * redzones, but stay out of the instrumentation's way in handlers. */
#if defined(__clang__) || defined(__GNUC__)
#define NO_SANITIZE_ADDR __attribute__((no_sanitize_address))
#else
#define NO_SANITIZE_ADDR
#endif

struct ent {
	struct ent *prev, *next;       /* reg_mu */
	uint64_t serial;               /* immutable */
	int tid;                       /* immutable */
	pthread_t thr;                 /* immutable */
	char name[16];                 /* immutable */
	_Atomic(const char *) *stagep; /* the owner's TLS slot; immutable */
	int64_t created_ns;            /* immutable */
	uintptr_t create_pcs[32];      /* immutable */
	size_t create_npcs;            /* immutable */
	struct sl_thread_prof prof;    /* reg_mu */
	/* Stack capture: gr_req written by the capturer (reg_mu held),
	 * gr_pcs/gr_n by the owner's handler before its release store of
	 * gr_done. */
	atomic_uint gr_req, gr_done;
	size_t gr_n;
	uintptr_t gr_pcs[SL_THREAD_MAX_DEPTH];
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ent *reg_head;                            /* reg_mu */
static size_t reg_count;                                /* reg_mu */
static uint64_t reg_serial;                             /* reg_mu */
static void (*prof_hook)(struct sl_thread_prof *, int); /* reg_mu */

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;
static int key_err; /* written once under key_once */

static pthread_mutex_t cap_mu = PTHREAD_MUTEX_INITIALIZER; /* captures */
static unsigned cap_seq;                                   /* cap_mu */
static bool cap_installed;                                 /* cap_mu */

static TLS_IE struct ent *_Atomic tls_self;    /* owner thread only */
static TLS_IE uintptr_t tls_stack_hi;          /* owner thread only */
static TLS_IE _Atomic(const char *) tls_stage; /* owner; others via stagep */

/* ---- unwinding ---------------------------------------------------------- */

NO_SANITIZE_ADDR size_t
sl_unwind(uintptr_t pc, uintptr_t fp, uintptr_t sp, uintptr_t *pcs, size_t max)
{
	uintptr_t hi = tls_stack_hi, lo = sp;
	size_t n = 0;

	if (max == 0)
		return 0;
	pcs[n++] = pc;
	if (hi == 0 || sp >= hi)
		return n;
	while (n < max) {
		const uintptr_t *frame;
		uintptr_t next, ret;

		/* Both words of the frame record must lie inside the stack. */
		if (fp < lo || fp > hi - 2 * sizeof(uintptr_t) ||
		    (fp & (sizeof(uintptr_t) - 1)) != 0)
			break;
		frame = (const uintptr_t *)fp;
		next = frame[0];
		ret = frame[1];
		if (ret == 0)
			break;
		pcs[n++] = ret - 1;
		/* The caller's frame is above ours: anything else is a loop
		 * or garbage. */
		if (next <= fp)
			break;
		lo = fp + 2 * sizeof(uintptr_t);
		fp = next;
	}
	return n;
}

/* Set while init_stack_bounds() runs on this thread. */
static TLS_IE int tls_bounding;

/*
 * Look up the calling thread's stack top once (not signal-safe).
 * pthread_getattr_np() holds the thread's own lock while it allocates
 * (its cpuset), and an allocation may be sampled by the heap profiler,
 * whose stack walk lands here again: the nested call must not look the
 * bounds up a second time (that would wait forever on the same lock), so
 * it returns with no bounds and the walk records nothing.
 */
static void
init_stack_bounds(void)
{
	pthread_attr_t attr;
	void *addr;
	size_t size;

	if (tls_stack_hi != 0 || tls_bounding)
		return;
	tls_bounding = 1;
	if (pthread_getattr_np(pthread_self(), &attr) == 0) {
		if (pthread_attr_getstack(&attr, &addr, &size) == 0)
			tls_stack_hi = (uintptr_t)addr + size;
		pthread_attr_destroy(&attr);
	}
	tls_bounding = 0;
}

NO_SANITIZE_ADDR __attribute__((noinline)) size_t
sl_unwind_here(uintptr_t *pcs, size_t max, size_t skip)
{
	uintptr_t tmp[SL_THREAD_MAX_DEPTH + 8];
	uintptr_t fp = (uintptr_t)__builtin_frame_address(0);
	size_t n, want, i;

	init_stack_bounds();
	if (max == 0)
		return 0;
	/* tmp[0] is a dummy leaf; tmp[1] is in our caller. */
	want = max + skip + 1;
	if (want > sizeof(tmp) / sizeof(tmp[0]))
		want = sizeof(tmp) / sizeof(tmp[0]);
	n = sl_unwind(0, fp, fp, tmp, want);
	if (n <= skip + 1)
		return 0;
	n -= skip + 1;
	if (n > max)
		n = max;
	for (i = 0; i < n; i++)
		pcs[i] = tmp[i + skip + 1];
	return n;
}

size_t
sl_unwind_ucontext(const void *ucv, uintptr_t *pcs, size_t max)
{
	const ucontext_t *uc = ucv;

#if defined(__x86_64__)
	return sl_unwind((uintptr_t)uc->uc_mcontext.gregs[REG_RIP],
			 (uintptr_t)uc->uc_mcontext.gregs[REG_RBP],
			 (uintptr_t)uc->uc_mcontext.gregs[REG_RSP], pcs, max);
#elif defined(__aarch64__)
	return sl_unwind((uintptr_t)uc->uc_mcontext.pc,
			 (uintptr_t)uc->uc_mcontext.regs[29],
			 (uintptr_t)uc->uc_mcontext.sp, pcs, max);
#else
	(void)uc;
	(void)pcs;
	(void)max;
	return 0;
#endif
}

/* ---- registry ----------------------------------------------------------- */

static void
on_thread_exit(void *v)
{
	(void)v;
	sl_thread_unregister();
}

static void
make_key(void)
{
	key_err = pthread_key_create(&exit_key, on_thread_exit);
}

static int
do_register(const char *name, const uintptr_t *pcs, size_t npcs)
{
	struct ent *e;
	int rc;

	if (atomic_load_explicit(&tls_self, memory_order_relaxed))
		return 0;
	pthread_once(&key_once, make_key);
	if (key_err)
		return -key_err;
	init_stack_bounds();
	e = sl_calloc(1, sizeof(*e));
	if (!e)
		return SLUICE_ENOMEM;
	e->tid = (int)syscall(SYS_gettid);
	e->thr = pthread_self();
	if (name)
		snprintf(e->name, sizeof(e->name), "%s", name);
	e->stagep = &tls_stage;
	e->created_ns = sl_clock_ns(CLOCK_REALTIME);
	if (npcs > sizeof(e->create_pcs) / sizeof(e->create_pcs[0]))
		npcs = sizeof(e->create_pcs) / sizeof(e->create_pcs[0]);
	if (npcs)
		memcpy(e->create_pcs, pcs, npcs * sizeof(*pcs));
	e->create_npcs = npcs;
	e->prof.tid = e->tid;
	e->prof.thr = e->thr;
	rc = pthread_setspecific(exit_key, e);
	if (rc) {
		sl_free(e);
		return -rc;
	}
	pthread_mutex_lock(&reg_mu);
	e->serial = ++reg_serial;
	e->next = reg_head;
	if (reg_head)
		reg_head->prev = e;
	reg_head = e;
	reg_count++;
	atomic_store_explicit(&tls_self, e, memory_order_release);
	if (prof_hook)
		prof_hook(&e->prof, 1);
	pthread_mutex_unlock(&reg_mu);
	return 0;
}

int
sl_thread_register(const char *name)
{
	return do_register(name, NULL, 0);
}

int
sluice_thread_register(const char *name)
{
	return sl_thread_register(name);
}

void
sluice_thread_unregister(void)
{
	sl_thread_unregister();
}

void
sl_thread_unregister(void)
{
	struct ent *e = atomic_load_explicit(&tls_self, memory_order_relaxed);

	if (!e)
		return;
	pthread_mutex_lock(&reg_mu);
	if (prof_hook)
		prof_hook(&e->prof, 0);
	if (e->prev)
		e->prev->next = e->next;
	else
		reg_head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	reg_count--;
	/* From here on our own handlers ignore this thread. */
	atomic_store_explicit(&tls_self, NULL, memory_order_relaxed);
	atomic_signal_fence(memory_order_seq_cst);
	pthread_mutex_unlock(&reg_mu);
	pthread_setspecific(exit_key, NULL);
	sl_free(e);
}

uint64_t
sl_thread_self_id(char name[16])
{
	struct ent *e = atomic_load_explicit(&tls_self, memory_order_relaxed);

	if (!e)
		return 0;
	memcpy(name, e->name, sizeof(e->name));
	return e->serial;
}

void
sl_thread_set_stage(const char *stage)
{
	atomic_store_explicit(&tls_stage, stage, memory_order_relaxed);
}

const char *
sl_thread_stage(void)
{
	return atomic_load_explicit(&tls_stage, memory_order_relaxed);
}

struct start {
	void *(*fn)(void *);
	void *arg;
	const char *name;
	uintptr_t pcs[32];
	size_t npcs;
};

static void *
trampoline(void *v)
{
	struct start *s = v;
	void *(*fn)(void *) = s->fn;
	void *arg = s->arg, *ret;
	char name[16];

	if (s->name) {
		snprintf(name, sizeof(name), "%s", s->name);
		pthread_setname_np(pthread_self(), name);
	}
	/* Not being registered (ENOMEM) only hides the thread from the
	 * profiles; the work goes on. */
	(void)do_register(s->name, s->pcs, s->npcs);
	sl_free(s);
	ret = fn(arg);
	sl_thread_unregister();
	return ret;
}

int
sl_thread_create(pthread_t *thr, const char *name, void *(*fn)(void *),
		 void *arg)
{
	struct start *s = sl_calloc(1, sizeof(*s));
	int rc;

	if (!s)
		return ENOMEM;
	s->fn = fn;
	s->arg = arg;
	s->name = name;
	s->npcs = sl_unwind_here(s->pcs, sizeof(s->pcs) / sizeof(s->pcs[0]), 0);
	rc = pthread_create(thr, NULL, trampoline, s);
	if (rc)
		sl_free(s);
	return rc;
}

static void
fill_info(const struct ent *e, struct sl_thread_info *o)
{
	o->tid = e->tid;
	memcpy(o->name, e->name, sizeof(o->name));
	o->stage = atomic_load_explicit(e->stagep, memory_order_relaxed);
	o->created_ns = e->created_ns;
	memcpy(o->create_pcs, e->create_pcs, sizeof(o->create_pcs));
	o->create_npcs = e->create_npcs;
}

size_t
sl_threads_snapshot(struct sl_thread_info *out, size_t max)
{
	const struct ent *e;
	size_t n = 0, total;

	pthread_mutex_lock(&reg_mu);
	for (e = reg_head; e && n < max; e = e->next)
		fill_info(e, &out[n++]);
	total = reg_count;
	pthread_mutex_unlock(&reg_mu);
	return total;
}

void
sl_threads_set_prof_hook(void (*fn)(struct sl_thread_prof *, int))
{
	struct ent *e;

	pthread_mutex_lock(&reg_mu);
	if (prof_hook)
		for (e = reg_head; e; e = e->next)
			prof_hook(&e->prof, 0);
	prof_hook = fn;
	if (fn)
		for (e = reg_head; e; e = e->next)
			fn(&e->prof, 1);
	pthread_mutex_unlock(&reg_mu);
}

/* ---- stack capture ------------------------------------------------------ */

#if defined(__x86_64__)
/* Whether @ret follows a call instruction, reading the code with
 * process_vm_readv so a bad address fails instead of faulting. */
static bool
after_call(uintptr_t ret)
{
	uint8_t c[8];
	struct iovec local = { c, sizeof(c) };
	struct iovec remote = { (void *)(ret - sizeof(c)), sizeof(c) };

	if (ret < sizeof(c) ||
	    syscall(SYS_process_vm_readv, getpid(), &local, 1UL, &remote, 1UL,
		    0UL) != (long)sizeof(c))
		return false;
	return c[3] == 0xe8 ||                            /* call rel32 */
	       (c[2] == 0xff && c[3] == 0x15) ||          /* call *rip */
	       (c[6] == 0xff && (c[7] & 0xf8) == 0xd0) || /* call *reg */
	       (c[4] == 0x41 && c[5] == 0xff && (c[6] & 0xf8) == 0xd0);
}

/* Whether @f is a frame record on our stack above @lo whose caller's
 * record is one too. */
NO_SANITIZE_ADDR static bool
two_frames(uintptr_t f, uintptr_t lo, uintptr_t hi)
{
	uintptr_t g;

	if (f <= lo || f > hi - 16 || (f & 7) != 0)
		return false;
	g = *(const uintptr_t *)f;
	return g > f && g <= hi - 16 && (g & 7) == 0 &&
	       ((const uintptr_t *)f)[1] != 0;
}

/*
 * For a thread stopped in code without frame pointers (glibc, blocked in
 * a futex): find the nearest saved frame pointer above @sp, i.e. the frame
 * of the innermost function that has one, and the return address into
 * that function (the highest word below its frame that follows a call
 * instruction).  Appends those frames to @pcs[@n..]; signal-safe.
 */
NO_SANITIZE_ADDR static size_t
scan_unwind(uintptr_t sp, uintptr_t *pcs, size_t n, size_t max)
{
	uintptr_t hi = tls_stack_hi, p, f = 0, q;
	uintptr_t tmp[SL_THREAD_MAX_DEPTH];
	size_t limit = 4096, m, i;

	if (hi == 0 || sp >= hi || (sp & 7) != 0)
		return n;
	for (p = sp; p <= hi - 8 && limit-- > 0; p += 8)
		if (two_frames(*(const uintptr_t *)p, p, hi)) {
			f = *(const uintptr_t *)p;
			break;
		}
	if (!f)
		return n;
	/* The call into the glibc code pushed that address after p's
	 * frame: it lies in (p, f). */
	for (q = f - 8; q > p && n < max; q -= 8)
		if (after_call(*(const uintptr_t *)q)) {
			pcs[n++] = *(const uintptr_t *)q - 1;
			break;
		}
	/* The rest of the chain, as sl_unwind() walks it from f. */
	m = sl_unwind(0, f, f, tmp, sizeof(tmp) / sizeof(tmp[0]));
	for (i = 1; i < m && n < max; i++)
		pcs[n++] = tmp[i];
	return n;
}
#endif

static void
capture_handler(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	struct ent *e = atomic_load_explicit(&tls_self, memory_order_relaxed);
	unsigned r;

	(void)sig;
	(void)si;
	if (e) {
		r = atomic_load_explicit(&e->gr_req, memory_order_acquire);
		if (atomic_load_explicit(&e->gr_done, memory_order_relaxed) !=
		    r) {
			e->gr_n = sl_unwind_ucontext(uc, e->gr_pcs,
						     SL_THREAD_MAX_DEPTH);
#if defined(__x86_64__)
			if (e->gr_n == 1)
				e->gr_n = scan_unwind(
					(uintptr_t)((const ucontext_t *)uc)
						->uc_mcontext.gregs[REG_RSP],
					e->gr_pcs, 1, SL_THREAD_MAX_DEPTH);
#endif
			atomic_store_explicit(&e->gr_done, r,
					      memory_order_release);
		}
	}
	errno = saved;
}

/* Install capture_handler unless another handler owns the signal. */
static int
install_capture(void)
{
	struct sigaction sa, old;

	if (cap_installed)
		return 0;
	if (sigaction(SL_THREAD_CAPTURE_SIG, NULL, &old) != 0)
		return -errno;
	if ((old.sa_flags & SA_SIGINFO) ||
	    (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN))
		return SLUICE_EBUSY;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = capture_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigfillset(&sa.sa_mask);
	if (sigaction(SL_THREAD_CAPTURE_SIG, &sa, NULL) != 0)
		return -errno;
	cap_installed = true;
	return 0;
}

static bool
all_answered(struct ent *head, size_t max)
{
	struct ent *e;
	size_t i = 0;

	for (e = head; e && i < max; e = e->next, i++)
		if (atomic_load_explicit(&e->gr_done, memory_order_acquire) !=
		    atomic_load_explicit(&e->gr_req, memory_order_relaxed))
			return false;
	return true;
}

long
sl_threads_capture(struct sl_thread_stack *out, size_t max, int64_t timeout_ns)
{
	struct ent *self =
		atomic_load_explicit(&tls_self, memory_order_relaxed);
	struct timespec pause = { 0, 100000 };
	int64_t deadline;
	struct ent *e;
	size_t i;
	long total;
	int rc;

	pthread_mutex_lock(&cap_mu);
	rc = install_capture();
	if (rc) {
		pthread_mutex_unlock(&cap_mu);
		return rc;
	}
	cap_seq++;
	pthread_mutex_lock(&reg_mu);
	deadline = sl_clock_ns(CLOCK_MONOTONIC) + timeout_ns;
	for (e = reg_head, i = 0; e && i < max; e = e->next, i++) {
		atomic_store_explicit(&e->gr_req, cap_seq,
				      memory_order_release);
		if (e == self) {
			/* Our own stack, without a signal. */
			e->gr_n = sl_unwind_here(e->gr_pcs, SL_THREAD_MAX_DEPTH,
						 0);
			atomic_store_explicit(&e->gr_done, cap_seq,
					      memory_order_release);
		} else if (pthread_kill(e->thr, SL_THREAD_CAPTURE_SIG) != 0) {
			/* Gone already (exiting): leave it unanswered. */
			continue;
		}
	}
	while (!all_answered(reg_head, max) &&
	       sl_clock_ns(CLOCK_MONOTONIC) < deadline)
		nanosleep(&pause, NULL);
	for (e = reg_head, i = 0; e && i < max; e = e->next, i++) {
		fill_info(e, &out[i].info);
		out[i].captured =
			atomic_load_explicit(&e->gr_done,
					     memory_order_acquire) == cap_seq;
		out[i].npcs = out[i].captured ? e->gr_n : 0;
		if (out[i].npcs)
			memcpy(out[i].pcs, e->gr_pcs,
			       out[i].npcs * sizeof(uintptr_t));
	}
	total = (long)reg_count;
	pthread_mutex_unlock(&reg_mu);
	pthread_mutex_unlock(&cap_mu);
	return total;
}
