/* SPDX-License-Identifier: MIT */
/*
 * exec.c - run a shell command per message under a deadline (the exec
 * contract of include/sluice/exec.h).
 *
 * One run is one posix_spawn() of /bin/sh -c COMMAND as the leader of a new
 * process group, fed and drained by one poll() loop in the calling thread:
 * the child's stdin (written non-blocking from the input segments), its
 * stdout and stderr (captured up to capture_max each, the rest read and
 * dropped, so a chatty child never blocks on a full pipe), the context's
 * eventfd (cancellation) and a pidfd (exit).  The deadline is the poll
 * timeout, read from the context's clock; on a virtual clock the loop wakes
 * every VIRTUAL_SLICE_MS of real time to re-check it.  The SIGTERM ->
 * SIGKILL grace runs on the real monotonic clock: it bounds how long real
 * processes may linger, whatever clock the context reads.
 *
 * Process-group safety.  The group id is the leader's pid, so it may only
 * be signalled while that pid cannot have been reused: while the leader is
 * unreaped.  Exit is therefore detected without reaping (pidfd, or
 * waitid(WNOWAIT)); then the whole group gets SIGKILL so no descendant
 * outlives the run; then the leader is reaped, and then every process of
 * the group that is our child (orphans re-parented to us when the process
 * is a subreaper) is reaped with waitpid(-pgid), which never touches
 * another run's children; waitpid(-1) is never called.  Those members all
 * have SIGKILL pending, so they die at once; one that does not (a setuid
 * program we may not signal, a process stuck in the kernel) is waited for
 * at most REAP_MAX_NS, so a run cannot hang on it.  A descendant that left
 * the group (setsid) is out of reach: it is neither killed nor reaped here.
 * When the leader's status was lost (reaped behind our back) its id is no
 * longer pinned, so the group is not signalled at all.
 *
 * SIGPIPE.  Writing to a child that stopped reading raises SIGPIPE, which
 * by default kills the whole process.  SIGPIPE is blocked in the calling
 * thread for the run; the one a failed write raised is consumed with
 * sigtimedwait() before the old mask comes back, unless one was already
 * pending (that one is not ours to take).
 *
 * Classification (exec.h): a run we signalled because the context ended is
 * TIMEOUT (deadline) or CANCELED (shutdown, caller), unless the command
 * still exited with a status that maps to ok: then it finished its work
 * and that is the result.  Otherwise cfg->map (the last entry for a code
 * wins), then the defaults of sluice_classify_exit() with other_exit.  The
 * message quotes the last line of stderr from a small tail kept apart from
 * the capture, so it is the real last line even when capture_max cut the
 * stream short.
 *
 * Threads.  No state is shared between runs: any number may run at once
 * from any threads.  The child's environment is built from environ without
 * setenv(), so only a concurrent setenv()/putenv() elsewhere in the program
 * can race with it (as with any exec).  The process must not set SIGCHLD to
 * SIG_IGN: the kernel would then reap the child itself and its status would
 * be lost (reported as a TEMPORARY error).  Every descriptor made here is
 * close-on-exec, so a concurrent run's child never inherits another run's
 * pipe (which would keep that pipe from reporting end-of-file).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sluice/clock.h>
#include <sluice/ctx.h>
#include <sluice/error.h>
#include <sluice/exec.h>

#include "util/alloc.h"

#define DEFAULT_GRACE_NS   (2 * SLUICE_NS_PER_S)
#define DEFAULT_CAPTURE    ((size_t)64 * 1024)
#define VIRTUAL_SLICE_MS   10 /* re-check a virtual deadline this often */
#define NOPIDFD_SLICE_MS   10 /* poll for exit this often without a pidfd */
#define READ_CHUNK         16384
#define TAIL_MAX           256 /* stderr bytes kept for the error message */
#define LINE_MAX_BYTES     160 /* of which at most this much is quoted */
#define FIRST_CAPTURE_SIZE 256
#define REAP_MAX_NS        SLUICE_NS_PER_S /* wait for killed members */

/* A capture buffer: the first @max bytes of a stream, NUL-terminated. */
struct cap {
	char *buf;      /* NULL when not kept (no result wanted) */
	size_t len;     /* bytes kept */
	size_t size;    /* bytes allocated, the NUL included */
	size_t max;     /* capture_max */
	bool truncated; /* bytes were dropped */
};

/* The last TAIL_MAX bytes of stderr, whatever the capture bound. */
struct tail {
	char b[TAIL_MAX];
	size_t len;
};

/* One run's state; lives on the calling thread's stack. */
struct run {
	const struct sluice_exec_config *cfg;
	struct sluice_ctx *ctx; /* may be NULL: no deadline, no cancel */
	pid_t pid;              /* the leader, also the group id */
	int in_fd, out_fd, err_fd, ctx_fd, pid_fd;
	const struct sluice_bytes *input;
	size_t ninput, idx, off; /* next byte to write: input[idx] + off */
	bool epipe;              /* a write failed with EPIPE */
	struct cap out, err;
	struct tail etail;
	enum sluice_cancel_reason reason; /* why we signalled; NONE if not */
	bool kill_sent;
	int64_t term_at; /* real monotonic time of the SIGTERM */
	bool pid_ready;  /* the pidfd said the leader exited */
	bool exited;     /* the leader's status is in wait_status */
	int wait_status;
	int sys_err; /* -errno when the loop itself failed (poll) */
};

/* ---- configuration ------------------------------------------------------ */

void
sluice_exec_config_init(struct sluice_exec_config *cfg)
{
	if (!cfg)
		return;
	memset(cfg, 0, sizeof(*cfg));
	cfg->command = NULL;
	cfg->kill_grace_ns = DEFAULT_GRACE_NS;
	cfg->capture_max = DEFAULT_CAPTURE;
	cfg->other_exit = SLUICE_CLASS_TEMPORARY;
	cfg->nmap = 0;
	cfg->stdout_fd = -1;
}

static void set_err(char *err, size_t errsize, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
set_err(char *err, size_t errsize, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errsize)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errsize, fmt, ap);
	va_end(ap);
}

static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
	       c == '\v';
}

/* Trim [*s, *e) of white space on both ends. */
static void
trim(const char **s, const char **e)
{
	while (*s < *e && is_space(**s))
		(*s)++;
	while (*e > *s && is_space((*e)[-1]))
		(*e)--;
}

/*
 * A decimal exit code in [s, e), digits only (no sign, no hex): the whole
 * range must be digits.  Returns the code, or -1.
 */
static int
parse_code(const char *s, const char *e)
{
	int v = 0;

	if (s == e)
		return -1;
	for (; s < e; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
		if (v > 255)
			return -1;
	}
	return v;
}

static int
parse_class(const char *s, size_t n, enum sluice_class *cls)
{
	static const struct {
		const char *name;
		enum sluice_class cls;
	} names[] = {
		{ "ok", SLUICE_CLASS_OK },
		{ "temporary", SLUICE_CLASS_TEMPORARY },
		{ "permanent", SLUICE_CLASS_PERMANENT },
		{ "timeout", SLUICE_CLASS_TIMEOUT },
	};
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strlen(names[i].name) == n &&
		    strncasecmp(s, names[i].name, n) == 0) {
			*cls = names[i].cls;
			return 0;
		}
	}
	return -1;
}

/* Set @code's class in @cfg, replacing an earlier entry for it. */
static int
map_put(struct sluice_exec_config *cfg, int code, enum sluice_class cls)
{
	size_t i;

	for (i = 0; i < cfg->nmap; i++) {
		if (cfg->map[i].code == code) {
			cfg->map[i].cls = cls;
			return 0;
		}
	}
	if (cfg->nmap >= SLUICE_EXEC_MAP_MAX)
		return -1;
	cfg->map[cfg->nmap].code = code;
	cfg->map[cfg->nmap].cls = cls;
	cfg->nmap++;
	return 0;
}

/*
 * One item "CODE=CLASS" or "LO-HI=CLASS" in [s, e), already trimmed.
 * A range takes one map entry per code: the map holds single codes.
 */
static int
parse_item(struct sluice_exec_config *cfg, const char *s, const char *e,
	   char *err, size_t errsize)
{
	const char *eq, *dash, *cs, *ce, *ls, *le, *hs, *he;
	size_t n = (size_t)(e - s);
	enum sluice_class cls;
	int lo, hi, c;

	eq = memchr(s, '=', n);
	if (!eq) {
		set_err(err, errsize, "missing '=' in '%.*s'", (int)n, s);
		return -1;
	}
	cs = eq + 1;
	ce = e;
	trim(&cs, &ce);
	if (parse_class(cs, (size_t)(ce - cs), &cls) != 0) {
		set_err(err, errsize,
			"bad class '%.*s' in '%.*s' (ok, temporary, permanent, timeout)",
			(int)(ce - cs), cs, (int)n, s);
		return -1;
	}
	dash = memchr(s, '-', (size_t)(eq - s));
	ls = s;
	le = dash ? dash : eq;
	trim(&ls, &le);
	hs = dash ? dash + 1 : ls;
	he = dash ? eq : le;
	trim(&hs, &he);
	lo = parse_code(ls, le);
	hi = parse_code(hs, he);
	if (lo < 0 || hi < 0) {
		set_err(err, errsize,
			"bad exit code '%.*s' in '%.*s' (0 to 255, or LO-HI)",
			(int)(eq - s), s, (int)n, s);
		return -1;
	}
	if (lo > hi) {
		set_err(err, errsize, "empty range '%.*s' in '%.*s'",
			(int)(eq - s), s, (int)n, s);
		return -1;
	}
	for (c = lo; c <= hi; c++) {
		if (map_put(cfg, c, cls) != 0) {
			set_err(err, errsize,
				"too many exit codes at '%.*s' (at most %d)",
				(int)n, s, SLUICE_EXEC_MAP_MAX);
			return -1;
		}
	}
	return 0;
}

int
sluice_exec_parse_map(struct sluice_exec_config *cfg, const char *spec,
		      char *err, size_t errsize)
{
	struct sluice_exec_config tmp;
	const char *p, *item, *s, *e, *end;

	set_err(err, errsize, "%s", "");
	if (!cfg || !spec) {
		set_err(err, errsize, "no exit-code map");
		return SLUICE_EINVAL;
	}
	if (cfg->nmap > SLUICE_EXEC_MAP_MAX) {
		set_err(err, errsize, "corrupt exit-code map (nmap %zu)",
			cfg->nmap);
		return SLUICE_EINVAL;
	}
	end = spec + strlen(spec);
	s = spec;
	e = end;
	trim(&s, &e);
	if (s == e)
		return 0; /* nothing to add */
	/* Parse into a copy so a bad spec leaves @cfg as it was. */
	tmp = *cfg;
	item = spec;
	for (p = spec;; p++) {
		if (p < end && *p != ',')
			continue;
		s = item;
		e = p;
		trim(&s, &e);
		if (s == e) {
			set_err(err, errsize, "empty item in '%s'", spec);
			return SLUICE_EINVAL;
		}
		if (parse_item(&tmp, s, e, err, errsize) != 0)
			return SLUICE_EINVAL;
		if (p == end)
			break;
		item = p + 1;
	}
	*cfg = tmp;
	return 0;
}

/* ---- capture ------------------------------------------------------------ */

static int
cap_init(struct cap *c, size_t max, bool keep)
{
	memset(c, 0, sizeof(*c));
	c->max = max;
	if (!keep)
		return 0;
	c->buf = sl_malloc(1);
	if (!c->buf)
		return SLUICE_ENOMEM;
	c->buf[0] = '\0';
	c->size = 1;
	return 0;
}

/*
 * Keep what fits under the bound.  Growth doubles up to max + 1; when it
 * fails the bytes are dropped as if the bound were reached: the run itself
 * does not fail for want of memory for its output.
 */
static void
cap_add(struct cap *c, const char *data, size_t n)
{
	size_t take, want, nsize;
	char *nb;

	take = c->max - c->len < n ? c->max - c->len : n;
	if (take < n)
		c->truncated = true;
	if (!c->buf || !take)
		return;
	want = c->len + take + 1;
	if (want > c->size) {
		nsize = c->size < FIRST_CAPTURE_SIZE ? FIRST_CAPTURE_SIZE
						     : c->size;
		while (nsize < want)
			nsize = nsize > SIZE_MAX / 2 ? SIZE_MAX : nsize * 2;
		if (c->max < SIZE_MAX && nsize > c->max + 1)
			nsize = c->max + 1;
		nb = sl_realloc(c->buf, nsize);
		if (!nb) {
			c->truncated = true;
			return;
		}
		c->buf = nb;
		c->size = nsize;
	}
	memcpy(c->buf + c->len, data, take);
	c->len += take;
	c->buf[c->len] = '\0';
}

static void
tail_add(struct tail *t, const char *data, size_t n)
{
	size_t keep;

	if (n >= TAIL_MAX) {
		memcpy(t->b, data + n - TAIL_MAX, TAIL_MAX);
		t->len = TAIL_MAX;
		return;
	}
	keep = t->len + n > TAIL_MAX ? TAIL_MAX - n : t->len;
	memmove(t->b, t->b + t->len - keep, keep);
	memcpy(t->b + keep, data, n);
	t->len = keep + n;
}

/*
 * The last non-empty line of stderr into @line (printable: control bytes
 * become '?'), at most LINE_MAX_BYTES of it.  "" when there is none.
 */
static void
tail_line(const struct tail *t, char *line, size_t size)
{
	size_t e = t->len, s, n, i;

	while (e > 0 && (is_space(t->b[e - 1]) || t->b[e - 1] == '\0'))
		e--;
	s = e;
	while (s > 0 && t->b[s - 1] != '\n')
		s--;
	while (s < e && is_space(t->b[s]))
		s++;
	n = e - s;
	if (n > size - 1)
		n = size - 1;
	for (i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)t->b[s + i];

		line[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
	}
	line[n] = '\0';
}

/* ---- spawning ----------------------------------------------------------- */

static char *
unconst(const char *s)
{
	return (char *)(uintptr_t)s;
}

static size_t
name_len(const char *kv)
{
	const char *eq = strchr(kv, '=');

	return eq ? (size_t)(eq - kv) : strlen(kv);
}

/*
 * environ minus the names @extra sets, then @extra: a name is set once, so
 * the child sees @extra's value whichever lookup order its libc uses.  The
 * array borrows every string.
 */
static char **
build_env(const char *const *extra)
{
	size_t n = 0, m = 0, i, j, k = 0, len;
	char **envp;
	bool dup;

	while (environ && environ[n])
		n++;
	while (extra && extra[m])
		m++;
	envp = sl_calloc(n + m + 1, sizeof(*envp));
	if (!envp)
		return NULL;
	for (i = 0; i < n; i++) {
		len = name_len(environ[i]);
		dup = false;
		for (j = 0; j < m && !dup; j++) {
			dup = name_len(extra[j]) == len &&
			      memcmp(extra[j], environ[i], len) == 0;
		}
		if (!dup)
			envp[k++] = environ[i];
	}
	for (j = 0; j < m; j++)
		envp[k++] = unconst(extra[j]);
	envp[k] = NULL;
	return envp;
}

static void
close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/*
 * Move @fd above 2 so no dup2 onto 0/1/2 in the child clobbers another
 * pipe end (possible when the process runs with a standard fd closed).
 */
static int
lift(int *fd)
{
	int nfd;

	if (*fd > 2)
		return 0;
	nfd = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
	if (nfd < 0)
		return -errno;
	close(*fd);
	*fd = nfd;
	return 0;
}

static int
make_pipe(int p[2])
{
	int err;

	if (pipe2(p, O_CLOEXEC) != 0) {
		p[0] = p[1] = -1;
		return -errno;
	}
	err = lift(&p[0]);
	if (!err)
		err = lift(&p[1]);
	if (err) {
		close_fd(&p[0]);
		close_fd(&p[1]);
	}
	return err;
}

static int
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static int
open_pidfd(pid_t pid)
{
#ifdef SYS_pidfd_open
	long fd = syscall(SYS_pidfd_open, pid, 0);

	return fd < 0 ? -1 : (int)fd;
#else
	(void)pid;
	return -1;
#endif
}

/*
 * Pipes, attributes and the spawn.  On success r->pid is set and the
 * parent ends are non-blocking in r; on failure nothing is left open.
 */
static int
spawn(struct run *r, char **envp)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	int inp[2] = { -1, -1 }, outp[2] = { -1, -1 }, errp[2] = { -1, -1 };
	char sh[] = "sh", dash_c[] = "-c";
	char *argv[] = { sh, dash_c, unconst(r->cfg->command), NULL };
	sigset_t none, all;
	int err;

	err = make_pipe(inp);
	if (!err && r->cfg->stdout_fd < 0)
		err = make_pipe(outp);
	if (!err)
		err = make_pipe(errp);
	if (err)
		goto out_pipes;
	err = -posix_spawn_file_actions_init(&fa);
	if (err)
		goto out_pipes;
	err = -posix_spawnattr_init(&attr);
	if (err)
		goto out_fa;
	/* stdout first: a caller's stdout_fd may be 0 or 2, which the other
	 * two dup2s are about to replace. */
	if (r->cfg->stdout_fd >= 0)
		err = -posix_spawn_file_actions_adddup2(&fa, r->cfg->stdout_fd,
							1);
	else
		err = -posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
	if (!err)
		err = -posix_spawn_file_actions_adddup2(&fa, inp[0], 0);
	if (!err)
		err = -posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
	/* A clean start whatever the caller's thread blocks or ignores: the
	 * CLI blocks SIGINT/SIGTERM everywhere and we block SIGPIPE here. */
	sigemptyset(&none);
	sigfillset(&all);
	if (!err)
		err = -posix_spawnattr_setsigmask(&attr, &none);
	if (!err)
		err = -posix_spawnattr_setsigdefault(&attr, &all);
	if (!err)
		err = -posix_spawnattr_setpgroup(&attr, 0);
	if (!err)
		err = -posix_spawnattr_setflags(&attr,
						(short)(POSIX_SPAWN_SETPGROUP |
							POSIX_SPAWN_SETSIGMASK |
							POSIX_SPAWN_SETSIGDEF));
	if (!err)
		err = -posix_spawn(&r->pid, "/bin/sh", &fa, &attr, argv, envp);
	posix_spawnattr_destroy(&attr);
out_fa:
	posix_spawn_file_actions_destroy(&fa);
out_pipes:
	close_fd(&inp[0]);
	close_fd(&outp[1]);
	close_fd(&errp[1]);
	if (err) {
		close_fd(&inp[1]);
		close_fd(&outp[0]);
		close_fd(&errp[0]);
		return err;
	}
	r->in_fd = inp[1];
	r->out_fd = outp[0];
	r->err_fd = errp[0];
	/* Cannot fail on a fresh pipe we own; if it did, a blocking pipe
	 * would still work, only less well, so the result is not checked. */
	(void)set_nonblock(r->in_fd);
	if (r->out_fd >= 0)
		(void)set_nonblock(r->out_fd);
	(void)set_nonblock(r->err_fd);
	return 0;
}

/* ---- the loop ----------------------------------------------------------- */

static int64_t
real_now(void)
{
	return sluice_clock_now_ns(sluice_clock_monotonic());
}

static void
feed(struct run *r)
{
	const struct sluice_bytes *b;
	ssize_t n;

	while (r->in_fd >= 0) {
		while (r->idx < r->ninput && r->off >= r->input[r->idx].len) {
			r->idx++;
			r->off = 0;
		}
		if (r->idx >= r->ninput) {
			close_fd(&r->in_fd); /* EOF for the child */
			return;
		}
		b = &r->input[r->idx];
		n = write(r->in_fd, (const char *)b->ptr + r->off,
			  b->len - r->off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return;
			/* EPIPE: the child stopped reading, which is its
			 * right; anything else: give up on its stdin too. */
			if (errno == EPIPE)
				r->epipe = true;
			close_fd(&r->in_fd);
			return;
		}
		r->off += (size_t)n;
	}
}

/*
 * Read what @fd has now into @c (and the stderr tail).  At most @max_reads
 * reads (0 = until it would block).  Closes @fd at end-of-file or error.
 */
static void
drain(int *fd, struct cap *c, struct tail *t, unsigned max_reads)
{
	char buf[READ_CHUNK];
	unsigned reads = 0;
	ssize_t n;

	while (*fd >= 0 && (!max_reads || reads < max_reads)) {
		n = read(*fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				close_fd(fd);
			return;
		}
		if (n == 0) {
			close_fd(fd);
			return;
		}
		reads++;
		cap_add(c, buf, (size_t)n);
		if (t)
			tail_add(t, buf, (size_t)n);
	}
}

static void
signal_group(struct run *r, enum sluice_cancel_reason reason)
{
	r->reason = reason;
	r->term_at = real_now();
	/* Its input no longer matters; EOF may help it finish. */
	close_fd(&r->in_fd);
	if (r->cfg->kill_grace_ns <= 0) {
		kill(-r->pid, SIGKILL);
		r->kill_sent = true;
		return;
	}
	kill(-r->pid, SIGTERM);
	/* A stopped process would sit on its SIGTERM until the SIGKILL. */
	kill(-r->pid, SIGCONT);
}

/* Escalate, or notice the context ending.  Called each time round. */
static void
check_signals(struct run *r)
{
	enum sluice_cancel_reason why;

	if (r->reason != SLUICE_CANCEL_NONE) {
		if (!r->kill_sent &&
		    real_now() - r->term_at >= r->cfg->kill_grace_ns) {
			kill(-r->pid, SIGKILL);
			r->kill_sent = true;
		}
		return;
	}
	if (!r->ctx || r->kill_sent)
		return;
	why = sluice_ctx_reason(r->ctx);
	if (why != SLUICE_CANCEL_NONE)
		signal_group(r, why);
}

static int
ns_to_ms(int64_t ns)
{
	int64_t ms;

	if (ns <= 0)
		return 0;
	ms = ns / SLUICE_NS_PER_MS + (ns % SLUICE_NS_PER_MS != 0);
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

static int
min_ms(int a, int b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return a < b ? a : b;
}

/* How long poll() may sleep: until the deadline, the SIGKILL, or a slice. */
static int
poll_timeout(const struct run *r)
{
	int ms = -1;

	if (r->reason != SLUICE_CANCEL_NONE) {
		if (!r->kill_sent)
			ms = ns_to_ms(r->cfg->kill_grace_ns -
				      (real_now() - r->term_at));
	} else if (r->ctx) {
		int64_t rem = sluice_ctx_remaining_ns(r->ctx);

		if (rem != INT64_MAX)
			ms = ns_to_ms(rem);
		if (sluice_clock_is_virtual(sluice_ctx_clock(r->ctx)) ||
		    r->ctx_fd < 0)
			ms = min_ms(ms, VIRTUAL_SLICE_MS);
	}
	if (r->pid_fd < 0)
		ms = min_ms(ms, NOPIDFD_SLICE_MS);
	return ms;
}

/*
 * Has the leader exited?  Looks without reaping, so the group id stays
 * pinned.  ECHILD means someone else reaped it (SIGCHLD ignored): the run
 * is over with its status lost.
 */
static bool
leader_gone(struct run *r, bool *lost)
{
	siginfo_t si;

	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)r->pid, &si, WEXITED | WNOHANG | WNOWAIT) !=
	    0) {
		if (errno == EINTR)
			return false;
		*lost = true;
		return true;
	}
	return si.si_pid == r->pid;
}

/*
 * Feed, drain and watch until the leader has exited (unreaped).  Returns
 * false when its status was lost.  A poll() failure other than EINTR
 * (ENOMEM) kills the group at once: a run never outlives its loop.
 */
static bool
pump(struct run *r)
{
	struct pollfd p[5];
	int iin, iout, ierr, ictx, ipid, n;
	nfds_t np;
	bool lost = false;

	for (;;) {
		/* Exit first: a child that is already gone is not "killed",
		 * even if the context ended at the same moment. */
		if ((r->pid_ready || r->pid_fd < 0) && leader_gone(r, &lost))
			return !lost;
		check_signals(r);
		np = 0;
		iin = iout = ierr = ictx = ipid = -1;
		if (r->in_fd >= 0) {
			iin = (int)np;
			p[np++] = (struct pollfd){ r->in_fd, POLLOUT, 0 };
		}
		if (r->out_fd >= 0) {
			iout = (int)np;
			p[np++] = (struct pollfd){ r->out_fd, POLLIN, 0 };
		}
		if (r->err_fd >= 0) {
			ierr = (int)np;
			p[np++] = (struct pollfd){ r->err_fd, POLLIN, 0 };
		}
		if (r->ctx_fd >= 0 && r->reason == SLUICE_CANCEL_NONE) {
			ictx = (int)np;
			p[np++] = (struct pollfd){ r->ctx_fd, POLLIN, 0 };
		}
		if (r->pid_fd >= 0) {
			ipid = (int)np;
			p[np++] = (struct pollfd){ r->pid_fd, POLLIN, 0 };
		}
		n = poll(p, np, poll_timeout(r));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (!r->sys_err)
				r->sys_err = -errno;
			if (!r->kill_sent) {
				kill(-r->pid, SIGKILL);
				r->kill_sent = true;
			}
			close_fd(&r->pid_fd); /* fall back to slices */
			close_fd(&r->in_fd);
			continue;
		}
		if (iin >= 0 && p[iin].revents)
			feed(r);
		if (iout >= 0 && p[iout].revents)
			drain(&r->out_fd, &r->out, NULL, 4);
		if (ierr >= 0 && p[ierr].revents)
			drain(&r->err_fd, &r->err, &r->etail, 4);
		/* The eventfd is the context's; we may not read it.  If it is
		 * readable while the context reads live (it should not be),
		 * stop watching it and re-check by slices instead of
		 * spinning on it. */
		if (ictx >= 0 && p[ictx].revents && r->ctx &&
		    sluice_ctx_reason(r->ctx) == SLUICE_CANCEL_NONE)
			r->ctx_fd = -1;
		if (ipid >= 0 && p[ipid].revents)
			r->pid_ready = true;
	}
}

/*
 * The leader has exited and is unreaped.  Kill the rest of the group while
 * its id is still pinned, collect the leader's last output, reap it, then
 * reap the group members that are our children.
 */
/*
 * Reap what is left of the group among our children.  Normally each has
 * died of its SIGKILL or is about to; poll for the stragglers with a short,
 * growing pause, and give up after REAP_MAX_NS rather than hang the run.
 */
static void
reap_group(pid_t pgid)
{
	struct timespec pause = { 0, 50000 };
	bool waited = false;
	int64_t start = 0;
	pid_t w;
	int st;

	for (;;) {
		w = waitpid(-pgid, &st, WNOHANG);
		if (w > 0)
			continue;
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return; /* ECHILD: none of our children left in it */
		}
		if (!waited) {
			start = real_now();
			waited = true;
		} else if (real_now() - start >= REAP_MAX_NS) {
			return;
		}
		nanosleep(&pause, NULL);
		if (pause.tv_nsec < 10 * SLUICE_NS_PER_MS)
			pause.tv_nsec *= 2;
	}
}

static void
finish(struct run *r, bool have_status)
{
	int pipesz, st;
	unsigned reads;
	pid_t w;

	/* ESRCH (nobody left) and EPERM (a member changed credentials)
	 * leave nothing more to do. */
	if (have_status)
		(void)kill(-r->pid, SIGKILL);
	/* Whatever the leader wrote is in the pipe now; bound the reads by
	 * the pipe's size, in case a member that escaped the group keeps
	 * writing forever. */
	pipesz = r->out_fd >= 0 ? fcntl(r->out_fd, F_GETPIPE_SZ) : 0;
	reads = pipesz > 0 ? (unsigned)pipesz / READ_CHUNK + 2 : 64;
	drain(&r->out_fd, &r->out, NULL, reads);
	pipesz = fcntl(r->err_fd, F_GETPIPE_SZ);
	reads = pipesz > 0 ? (unsigned)pipesz / READ_CHUNK + 2 : 64;
	drain(&r->err_fd, &r->err, &r->etail, reads);
	if (have_status) {
		do {
			w = waitpid(r->pid, &st, 0);
		} while (w < 0 && errno == EINTR);
		if (w == r->pid) {
			r->wait_status = st;
			r->exited = true;
		}
	}
	if (have_status)
		reap_group(r->pid);
}

/* ---- the verdict -------------------------------------------------------- */

static enum sluice_class
map_exit(const struct sluice_exec_config *cfg, int status)
{
	size_t i, n = cfg->nmap < SLUICE_EXEC_MAP_MAX ? cfg->nmap
						      : SLUICE_EXEC_MAP_MAX;
	enum sluice_class cls;

	/* The last entry for a code wins, like a later option. */
	for (i = n; i-- > 0;) {
		if (cfg->map[i].code != WEXITSTATUS(status))
			continue;
		cls = cfg->map[i].cls;
		if ((int)cls < 0 || (int)cls >= SLUICE_CLASS_COUNT)
			return SLUICE_CLASS_PERMANENT;
		return cls;
	}
	return sluice_classify_exit(status, cfg->other_exit);
}

static const char *
exit_note(int code)
{
	if (code == 127)
		return " (command not found)";
	if (code == 126)
		return " (command not executable)";
	return "";
}

static struct sluice_error *
verdict(const struct run *r)
{
	char line[LINE_MAX_BYTES + 1];
	const char *sep, *how;
	struct sluice_error *e, *ret;
	enum sluice_class cls;
	int code;

	tail_line(&r->etail, line, sizeof(line));
	sep = line[0] ? ": " : "";
	if (!r->exited)
		return sluice_error_new(
			SLUICE_CLASS_TEMPORARY, -ECHILD,
			"command's exit status was lost (is SIGCHLD ignored?)%s%s",
			sep, line);
	if (r->sys_err)
		return sluice_error_new(
			SLUICE_CLASS_TEMPORARY, r->sys_err,
			"command killed: waiting for it failed (%s)%s%s",
			sluice_strerror(r->sys_err), sep, line);
	/* Exiting with an ok status despite the signal: it finished its
	 * work (say, a graceful SIGTERM handler), so that is what counts. */
	if (r->reason != SLUICE_CANCEL_NONE &&
	    !(WIFEXITED(r->wait_status) &&
	      map_exit(r->cfg, r->wait_status) == SLUICE_CLASS_OK)) {
		how = r->kill_sent ? "SIGKILL" : "SIGTERM";
		if (r->reason == SLUICE_CANCEL_DEADLINE)
			return sluice_error_new(
				SLUICE_CLASS_TIMEOUT, SLUICE_ETIMEDOUT,
				"command timed out: deadline passed, process group killed (%s)%s%s",
				how, sep, line);
		return sluice_error_new(
			SLUICE_CLASS_CANCELED, SLUICE_ECANCELED,
			"command cancelled (%s), process group killed (%s)%s%s",
			r->reason == SLUICE_CANCEL_SHUTDOWN ? "shutdown"
							    : "by the caller",
			how, sep, line);
	}
	if (WIFEXITED(r->wait_status)) {
		code = WEXITSTATUS(r->wait_status);
		cls = map_exit(r->cfg, r->wait_status);
		if (cls == SLUICE_CLASS_OK)
			return NULL;
		return sluice_error_new(cls, code,
					"command exited with status %d%s%s%s",
					code, exit_note(code), sep, line);
	}
	/* A signal (a crash): error.c names it. */
	e = sluice_error_from_exit(r->wait_status, r->cfg->other_exit);
	if (!e)
		return NULL;
	ret = sluice_error_new(sluice_error_class(e), sluice_error_code(e),
			       "command %s%s%s", sluice_error_msg(e), sep,
			       line);
	sluice_error_free(e);
	return ret;
}

/* ---- the run ------------------------------------------------------------ */

static void
hand_over(struct run *r, struct sluice_exec_result *res, int64_t elapsed_ns)
{
	if (!res) {
		sl_free(r->out.buf);
		sl_free(r->err.buf);
		return;
	}
	res->wait_status = r->wait_status;
	res->exited = r->exited;
	res->killed = r->reason != SLUICE_CANCEL_NONE;
	res->elapsed_ns = elapsed_ns;
	res->out = r->out.buf;
	res->out_len = r->out.len;
	res->out_truncated = r->out.truncated;
	res->err = r->err.buf;
	res->err_len = r->err.len;
	res->err_truncated = r->err.truncated;
}

/*
 * Notes beyond exec.h: @ctx may be NULL (no deadline, no cancellation).  A
 * context that is already done starts nothing (TIMEOUT or CANCELED, with
 * res->exited false).  res->out and res->err are non-NULL ("" at least)
 * unless the error is SLUICE_ENOMEM.  The error message quotes the last
 * line of stderr as the child wrote it, even past capture_max.
 */
struct sluice_error *
sluice_exec_run(const struct sluice_exec_config *cfg, struct sluice_ctx *ctx,
		const struct sluice_bytes *input, size_t ninput,
		const char *const *env, struct sluice_exec_result *res)
{
	static const struct sluice_bytes no_input = { NULL, 0 };
	const struct sluice_clock *clock;
	struct sluice_error *ret = NULL;
	sigset_t pipeset, oldmask, pending;
	bool pipe_pending, have_status;
	struct timespec zero = { 0, 0 };
	enum sluice_cancel_reason why;
	bool started = false;
	int64_t t0 = 0;
	struct run r;
	char **envp;
	int err;

	if (res)
		memset(res, 0, sizeof(*res));
	if (!cfg || !cfg->command || (ninput && !input))
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, SLUICE_EINVAL,
					"exec: no command or no input");
	memset(&r, 0, sizeof(r));
	r.cfg = cfg;
	r.ctx = ctx;
	r.in_fd = r.out_fd = r.err_fd = r.ctx_fd = r.pid_fd = -1;
	r.input = ninput ? input : &no_input;
	r.ninput = ninput;
	clock = ctx ? sluice_ctx_clock(ctx) : sluice_clock_monotonic();

	if (cap_init(&r.out, cfg->stdout_fd >= 0 ? 0 : cfg->capture_max,
		     res != NULL) ||
	    cap_init(&r.err, cfg->capture_max, res != NULL)) {
		ret = sluice_error_new(SLUICE_CLASS_TEMPORARY, SLUICE_ENOMEM,
				       "exec: out of memory");
		goto out_caps;
	}
	why = ctx ? sluice_ctx_reason(ctx) : SLUICE_CANCEL_NONE;
	if (why == SLUICE_CANCEL_DEADLINE) {
		ret = sluice_error_new(SLUICE_CLASS_TIMEOUT, SLUICE_ETIMEDOUT,
				       "command not started: deadline passed");
		goto out_result;
	}
	if (why != SLUICE_CANCEL_NONE) {
		ret = sluice_error_new(SLUICE_CLASS_CANCELED, SLUICE_ECANCELED,
				       "command not started: cancelled");
		goto out_result;
	}
	envp = build_env(env);
	if (!envp) {
		ret = sluice_error_new(SLUICE_CLASS_TEMPORARY, SLUICE_ENOMEM,
				       "exec: out of memory");
		goto out_caps;
	}
	/* Made before the spawn so a failure here cannot strand a child;
	 * without it (EMFILE...) the loop re-checks the context by slices. */
	if (ctx) {
		r.ctx_fd = sluice_ctx_fd(ctx);
		if (r.ctx_fd < 0)
			r.ctx_fd = -1;
	}

	sigemptyset(&pipeset);
	sigaddset(&pipeset, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipeset, &oldmask);
	sigemptyset(&pending);
	sigpending(&pending);
	pipe_pending = sigismember(&pending, SIGPIPE) == 1;

	t0 = sluice_clock_now_ns(clock);
	err = spawn(&r, envp);
	sl_free(envp);
	if (err) {
		ret = sluice_error_new(SLUICE_CLASS_TEMPORARY, err,
				       "command could not be started: %s",
				       sluice_strerror(err));
		goto out_mask;
	}
	started = true;
	r.pid_fd = open_pidfd(r.pid);
	feed(&r);
	have_status = pump(&r);
	close_fd(&r.in_fd);
	finish(&r, have_status);
	ret = verdict(&r);
	close_fd(&r.out_fd);
	close_fd(&r.err_fd);
	close_fd(&r.pid_fd);
out_mask:
	if (r.epipe && !pipe_pending) {
		while (sigtimedwait(&pipeset, NULL, &zero) < 0 &&
		       errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, &oldmask, NULL);
out_result:
	hand_over(&r, res, started ? sluice_clock_now_ns(clock) - t0 : 0);
	return ret;
out_caps:
	sl_free(r.out.buf);
	sl_free(r.err.buf);
	return ret;
}

void
sluice_exec_result_release(struct sluice_exec_result *res)
{
	if (!res)
		return;
	sl_free(res->out);
	sl_free(res->err);
	res->out = res->err = NULL;
	res->out_len = res->err_len = 0;
}

int
sluice_exec_become_subreaper(void)
{
	if (prctl(PR_SET_CHILD_SUBREAPER, 1UL, 0UL, 0UL, 0UL) != 0)
		return -errno;
	return 0;
}
