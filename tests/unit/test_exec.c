/* SPDX-License-Identifier: MIT */
/*
 * test_exec.c - the exec runner (src/exec/exec.c) with real child processes:
 * stdin delivery, exit classification and --exit-codes maps, deadlines and
 * cancellation killing the whole process group, SIGTERM -> SIGKILL
 * escalation, reaping (no zombies, no orphans), bounded capture, the
 * environment, resource failures and concurrent runs.
 *
 * Children are /bin/sh one-liners and tests/support/exec_child (found
 * through $SLUICE_EXEC_CHILD, else next to this test binary).  Nothing
 * sleeps for synchronisation: a child that must be signalled only once it
 * is ready says so on an inherited pipe, and a watcher thread blocked on
 * that pipe then cancels the context or advances its virtual clock.  Only
 * the real-deadline case waits on real time, because there the real clock
 * is what is under test; it asserts what happened, not how fast.
 *
 * Cases that check reaping make the (forked) case process a subreaper, so
 * orphaned grandchildren become its children and waitpid(-1, WNOHANG) ==
 * ECHILD proves that none is left, running or zombie.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sluice/clock.h>
#include <sluice/ctx.h>
#include <sluice/error.h>
#include <sluice/exec.h>

#include "check.h"
#include "util/alloc.h"

#define MiB ((size_t)1024 * 1024)

static char helper_path[PATH_MAX];

static void format_to(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* snprintf that fails the case instead of truncating. */
static void
format_to(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	CHECK_GE(n, 0);
	CHECK_LT((size_t)n, size);
}

/* The exec_child program: $SLUICE_EXEC_CHILD, else beside this binary. */
static const char *
helper(void)
{
	const char *e = getenv("SLUICE_EXEC_CHILD");
	char self[PATH_MAX];
	ssize_t n;
	char *slash;

	if (e && *e) {
		format_to(helper_path, sizeof(helper_path), "%s", e);
	} else {
		n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		CHECK_GT(n, 0);
		self[n] = '\0';
		slash = strrchr(self, '/');
		CHECK(slash != NULL);
		*slash = '\0';
		format_to(helper_path, sizeof(helper_path), "%s/exec_child",
			  self);
	}
	if (access(helper_path, X_OK) != 0) {
		fprintf(stderr, "  exec_child not found at %s\n", helper_path);
		CHECK_FAIL("set SLUICE_EXEC_CHILD to the exec_child program");
	}
	return helper_path;
}

static struct sluice_exec_config
config(const char *cmd)
{
	struct sluice_exec_config c;

	sluice_exec_config_init(&c);
	c.command = cmd;
	return c;
}

/* One run with no deadline on the real clock; @in may be NULL. */
static struct sluice_error *
run_plain(const struct sluice_exec_config *cfg, const void *in, size_t n,
	  const char *const *env, struct sluice_exec_result *res)
{
	struct sluice_bytes b = { in, n };
	struct sluice_error *e;
	struct sluice_ctx ctx;

	CHECK_OK(sluice_ctx_init(&ctx, sluice_clock_monotonic(),
				 SLUICE_FOREVER));
	e = sluice_exec_run(cfg, &ctx, &b, in ? 1 : 0, env, res);
	sluice_ctx_release(&ctx);
	return e;
}

static void
check_contains(const char *hay, const char *needle)
{
	if (!strstr(hay, needle)) {
		fprintf(stderr, "  \"%s\" lacks \"%s\"\n", hay, needle);
		CHECK_FAIL("substring");
	}
}

/* No child at all, running or zombie. */
static void
check_no_children(void)
{
	pid_t w;

	errno = 0;
	w = waitpid(-1, NULL, WNOHANG);
	CHECK_EQ(w, -1);
	CHECK_EQ(errno, ECHILD);
}

/* Neither the group nor the process exists any more. */
static void
check_gone(pid_t pgid, pid_t pid)
{
	CHECK_GT(pgid, 1);
	errno = 0;
	CHECK_EQ(kill(-pgid, 0), -1);
	CHECK_EQ(errno, ESRCH);
	if (pid > 1) {
		errno = 0;
		CHECK_EQ(kill(pid, 0), -1);
		CHECK_EQ(errno, ESRCH);
	}
}

static int
count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	CHECK(d != NULL);
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/*
 * A pipe whose write end a child inherits (fd <= 9, so any sh can
 * redirect to it), and whose read end it does not.
 */
static void
ready_pipe(int p[2])
{
	int w;

	CHECK_OK(pipe2(p, O_CLOEXEC));
	w = fcntl(p[1], F_DUPFD, 3); /* without FD_CLOEXEC */
	CHECK_GE(w, 3);
	CHECK_LE(w, 9);
	close(p[1]);
	p[1] = w;
}

/* Waits for the child's "ready" line, then ends the context. */
struct watcher {
	int rfd;
	struct sluice_ctx *ctx;           /* cancel this with reason, */
	enum sluice_cancel_reason reason; /* unless vclock is set: */
	struct sluice_clock *vclock;      /* then move it past the deadline */
	char line[128];
	pthread_t thread;
};

static void *
watcher_main(void *arg)
{
	struct watcher *w = arg;
	size_t n = 0;
	ssize_t r;
	char c;

	for (;;) {
		r = read(w->rfd, &c, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0 || c == '\n' || n + 1 >= sizeof(w->line))
			break;
		w->line[n++] = c;
	}
	w->line[n] = '\0';
	if (w->vclock)
		CHECK_OK(sluice_clock_advance(w->vclock,
					      3600 * SLUICE_NS_PER_S));
	else
		sluice_ctx_cancel(w->ctx, w->reason);
	return NULL;
}

static void
watcher_start(struct watcher *w)
{
	CHECK_OK(pthread_create(&w->thread, NULL, watcher_main, w));
}

static void
watcher_join(struct watcher *w)
{
	CHECK_OK(pthread_join(w->thread, NULL));
}

/* ---- configuration and --exit-codes ------------------------------------- */

static void
test_config_defaults(void)
{
	struct sluice_exec_config c;

	memset(&c, 0xa5, sizeof(c));
	sluice_exec_config_init(&c);
	CHECK(c.command == NULL);
	CHECK_EQ(c.kill_grace_ns, 2 * SLUICE_NS_PER_S);
	CHECK_EQ(c.capture_max, 64 * 1024);
	CHECK_EQ(c.other_exit, SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(c.nmap, 0);
	CHECK_EQ(c.stdout_fd, -1);
	sluice_exec_config_init(NULL);
}

/* The class mapped for @code, or -1. */
static int
class_of(const struct sluice_exec_config *c, int code)
{
	size_t i;

	for (i = 0; i < c->nmap; i++) {
		if (c->map[i].code == code)
			return (int)c->map[i].cls;
	}
	return -1;
}

static void
test_parse_map_ok(void)
{
	struct sluice_exec_config c;
	char err[128];

	sluice_exec_config_init(&c);
	CHECK_OK(sluice_exec_parse_map(&c, "3=permanent,4=ok,10-19=temporary",
				       err, sizeof(err)));
	CHECK_STREQ(err, "");
	CHECK_EQ(c.nmap, 12);
	CHECK_EQ(class_of(&c, 3), SLUICE_CLASS_PERMANENT);
	CHECK_EQ(class_of(&c, 4), SLUICE_CLASS_OK);
	CHECK_EQ(class_of(&c, 10), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(class_of(&c, 19), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(class_of(&c, 9), -1);
	CHECK_EQ(class_of(&c, 20), -1);

	/* Appends; white space anywhere between tokens; any case; a later
	 * entry for a code replaces the earlier one in place. */
	CHECK_OK(sluice_exec_parse_map(
		&c, " 0 = Timeout ,\t255=OK , 3 - 3 = ok ", err, sizeof(err)));
	CHECK_EQ(c.nmap, 14);
	CHECK_EQ(class_of(&c, 0), SLUICE_CLASS_TIMEOUT);
	CHECK_EQ(class_of(&c, 255), SLUICE_CLASS_OK);
	CHECK_EQ(class_of(&c, 3), SLUICE_CLASS_OK);

	/* Nothing to add is not an error. */
	CHECK_OK(sluice_exec_parse_map(&c, "", NULL, 0));
	CHECK_OK(sluice_exec_parse_map(&c, "  ", err, sizeof(err)));
	CHECK_EQ(c.nmap, 14);
}

/* @spec fails with @want in the message, and leaves the map as it was. */
static void
parse_fails(const char *spec, const char *want)
{
	struct sluice_exec_config c;
	char err[160];

	sluice_exec_config_init(&c);
	CHECK_OK(sluice_exec_parse_map(&c, "7=ok", NULL, 0));
	memset(err, 'x', sizeof(err));
	CHECK_EQ(sluice_exec_parse_map(&c, spec, err, sizeof(err)),
		 SLUICE_EINVAL);
	check_contains(err, want);
	CHECK_EQ(c.nmap, 1);
	CHECK_EQ(c.map[0].code, 7);
	CHECK_EQ(c.map[0].cls, SLUICE_CLASS_OK);
	/* No buffer, or a tiny one, is fine. */
	CHECK_EQ(sluice_exec_parse_map(&c, spec, NULL, 0), SLUICE_EINVAL);
	CHECK_EQ(sluice_exec_parse_map(&c, spec, err, 1), SLUICE_EINVAL);
	CHECK_EQ(err[0], '\0');
}

static void
test_parse_map_errors(void)
{
	parse_fails("3=perm", "bad class 'perm' in '3=perm'");
	parse_fails("3=canceled", "bad class 'canceled'");
	parse_fails("3=", "bad class '' in '3='");
	parse_fails("3", "missing '=' in '3'");
	parse_fails("1=ok,3", "missing '=' in '3'");
	parse_fails("256=ok", "bad exit code '256'");
	parse_fails("-1=ok", "bad exit code");
	parse_fails("+3=ok", "bad exit code");
	parse_fails("0x3=ok", "bad exit code");
	parse_fails("=ok", "bad exit code");
	parse_fails("3 4=ok", "bad exit code");
	parse_fails("1-=ok", "bad exit code");
	parse_fails("1-2-3=ok", "bad exit code");
	parse_fails("19-10=ok", "empty range '19-10'");
	parse_fails("3=ok,,4=ok", "empty item in '3=ok,,4=ok'");
	parse_fails("3=ok,", "empty item");
	parse_fails(",3=ok", "empty item");
	parse_fails("3=ok=ok", "bad class 'ok=ok'");
	parse_fails("0-255=ok", "too many exit codes");
	CHECK_EQ(sluice_exec_parse_map(NULL, "3=ok", NULL, 0), SLUICE_EINVAL);
}

static void
test_parse_map_capacity(void)
{
	struct sluice_exec_config c;
	char err[128];

	sluice_exec_config_init(&c);
	/* 32 codes fit exactly ... */
	CHECK_OK(sluice_exec_parse_map(&c, "100-130=permanent", err,
				       sizeof(err)));
	CHECK_EQ(c.nmap, 31);
	CHECK_OK(sluice_exec_parse_map(&c, "1=ok", err, sizeof(err)));
	CHECK_EQ(c.nmap, SLUICE_EXEC_MAP_MAX);
	/* ... replacing one still works when full ... */
	CHECK_OK(sluice_exec_parse_map(&c, "1=timeout, 100-130=ok", err,
				       sizeof(err)));
	CHECK_EQ(c.nmap, SLUICE_EXEC_MAP_MAX);
	CHECK_EQ(class_of(&c, 1), SLUICE_CLASS_TIMEOUT);
	CHECK_EQ(class_of(&c, 115), SLUICE_CLASS_OK);
	/* ... but a 33rd code is refused, and nothing of its spec sticks. */
	CHECK_EQ(
		sluice_exec_parse_map(&c, "1=permanent,2=ok", err, sizeof(err)),
		SLUICE_EINVAL);
	check_contains(err, "too many exit codes at '2=ok'");
	CHECK_EQ(c.nmap, SLUICE_EXEC_MAP_MAX);
	CHECK_EQ(class_of(&c, 1), SLUICE_CLASS_TIMEOUT);
}

/* Every prefix of a valid spec, in an exact-size buffer (ASan sees any
 * read past its end): valid or EINVAL, never anything else. */
static void
test_parse_map_prefixes(void)
{
	static const char spec[] = " 3 = permanent, 4=ok ,10-19=temporary";
	struct sluice_exec_config c;
	size_t len = strlen(spec), i;
	char err[128], *buf;
	int rc;

	for (i = 0; i <= len; i++) {
		buf = malloc(i + 1);
		CHECK(buf != NULL);
		memcpy(buf, spec, i);
		buf[i] = '\0';
		sluice_exec_config_init(&c);
		rc = sluice_exec_parse_map(&c, buf, err, sizeof(err));
		CHECK(rc == 0 || rc == SLUICE_EINVAL);
		if (rc)
			CHECK_NE(err[0], '\0');
		else
			CHECK_LE(c.nmap, 12);
		free(buf);
	}
	CHECK_EQ(c.nmap, 12);
}

/* ---- exit classification ------------------------------------------------ */

static void
check_exit(const struct sluice_exec_config *cfg, enum sluice_class cls,
	   int code)
{
	struct sluice_exec_result res;
	struct sluice_error *e;

	e = run_plain(cfg, NULL, 0, NULL, &res);
	CHECK(res.exited);
	CHECK(!res.killed);
	CHECK(WIFEXITED(res.wait_status));
	if (cls == SLUICE_CLASS_OK) {
		CHECK(e == NULL);
	} else {
		CHECK(e != NULL);
		CHECK_EQ(sluice_error_class(e), cls);
		CHECK_EQ(sluice_error_code(e), code);
		CHECK_EQ(WEXITSTATUS(res.wait_status), code);
	}
	sluice_error_free(e);
	sluice_exec_result_release(&res);
}

static void
test_exit_classes(void)
{
	struct sluice_exec_config c;

	c = config("exit 0");
	check_exit(&c, SLUICE_CLASS_OK, 0);
	c = config("exit 75");
	check_exit(&c, SLUICE_CLASS_TEMPORARY, 75);
	c = config("exit 65");
	check_exit(&c, SLUICE_CLASS_PERMANENT, 65);
	c = config("exit 3");
	check_exit(&c, SLUICE_CLASS_TEMPORARY, 3);
	c.other_exit = SLUICE_CLASS_PERMANENT;
	check_exit(&c, SLUICE_CLASS_PERMANENT, 3);
	c.other_exit = SLUICE_CLASS_OK;
	check_exit(&c, SLUICE_CLASS_OK, 3);
	/* other_exit does not touch the fixed codes. */
	c = config("exit 75");
	c.other_exit = SLUICE_CLASS_PERMANENT;
	check_exit(&c, SLUICE_CLASS_TEMPORARY, 75);
	check_no_children();
}

static void
test_exit_map_overrides_defaults(void)
{
	struct sluice_exec_config c;

	c = config("");
	CHECK_OK(sluice_exec_parse_map(
		&c, "75=permanent, 3=ok, 10-12=timeout, 0=temporary", NULL, 0));
	c.command = "exit 75";
	check_exit(&c, SLUICE_CLASS_PERMANENT, 75);
	c.command = "exit 3";
	check_exit(&c, SLUICE_CLASS_OK, 3);
	c.command = "exit 11";
	check_exit(&c, SLUICE_CLASS_TIMEOUT, 11);
	c.command = "exit 13";
	check_exit(&c, SLUICE_CLASS_TEMPORARY, 13);
	c.command = "exit 65";
	check_exit(&c, SLUICE_CLASS_PERMANENT, 65);
	c.command = "exit 0";
	check_exit(&c, SLUICE_CLASS_TEMPORARY, 0);
}

static void
test_exit_message_quotes_last_stderr_line(void)
{
	struct sluice_exec_config c;
	struct sluice_error *e;

	c = config("echo first >&2; echo 'the last line' >&2; echo; exit 3");
	e = run_plain(&c, NULL, 0, NULL, NULL);
	CHECK(e != NULL);
	check_contains(sluice_error_msg(e), "exited with status 3");
	check_contains(sluice_error_msg(e), ": the last line");
	CHECK(strstr(sluice_error_msg(e), "first") == NULL);
	sluice_error_free(e);

	/* Control bytes are made printable; no newline at the end is fine. */
	c = config("printf 'x\\na\\tb\\001c' >&2; exit 4");
	e = run_plain(&c, NULL, 0, NULL, NULL);
	CHECK(e != NULL);
	check_contains(sluice_error_msg(e), "status 4: a?b?c");
	sluice_error_free(e);

	/* The last line is quoted even when capture kept none of it. */
	c = config("head -c 100000 /dev/zero | tr '\\0' x >&2; echo >&2; "
		   "echo tail-line >&2; exit 5");
	c.capture_max = 10;
	e = run_plain(&c, NULL, 0, NULL, NULL);
	CHECK(e != NULL);
	check_contains(sluice_error_msg(e), "status 5: tail-line");
	sluice_error_free(e);
}

static void
test_signal_is_crash(void)
{
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct sluice_error *e;

	c = config("ulimit -c 0; echo dying >&2; kill -SEGV $$");
	c.other_exit = SLUICE_CLASS_PERMANENT; /* not used for signals */
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(sluice_error_code(e), SLUICE_CODE_CRASH);
	check_contains(sluice_error_msg(e), "command killed by signal SIGSEGV");
	check_contains(sluice_error_msg(e), ": dying");
	CHECK(res.exited);
	CHECK(!res.killed); /* it was not us */
	CHECK(WIFSIGNALED(res.wait_status));
	CHECK_EQ(WTERMSIG(res.wait_status), SIGSEGV);
	sluice_error_free(e);
	sluice_exec_result_release(&res);
	check_no_children();
}

static void
test_missing_command(void)
{
	struct sluice_exec_config c;
	struct sluice_error *e;

	c = config("no_such_command_for_sluice_exec_test --flag");
	e = run_plain(&c, NULL, 0, NULL, NULL);
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(sluice_error_code(e), 127);
	check_contains(sluice_error_msg(e), "status 127 (command not found)");
	check_contains(sluice_error_msg(e),
		       "no_such_command_for_sluice_exec_test");
	sluice_error_free(e);

	c.other_exit = SLUICE_CLASS_PERMANENT;
	e = run_plain(&c, NULL, 0, NULL, NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_PERMANENT);
	sluice_error_free(e);
}

/* ---- stdin, stdout, stderr, environment ---------------------------------- */

static uint8_t *
pattern(size_t n, uint32_t seed)
{
	uint8_t *p = malloc(n + 1);
	size_t i;

	CHECK(p != NULL);
	for (i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
	return p;
}

static void
test_stdin_byte_exact(void)
{
	uint8_t *big = pattern(MiB, 7), *want, *got;
	struct sluice_bytes in[] = {
		{ "a\0b", 3 }, { NULL, 0 }, { "\0\0", 2 },
		{ big, MiB },  { "", 0 },   { "\n\0end", 5 },
	};
	size_t n = sizeof(in) / sizeof(in[0]), total = 0, off = 0, i;
	char path[] = "/tmp/sluice-exec-XXXXXX", envf[64];
	const char *env[] = { envf, NULL };
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct sluice_ctx ctx;
	struct sluice_error *e;
	struct stat st;
	int fd;

	for (i = 0; i < n; i++)
		total += in[i].len;
	want = malloc(total);
	CHECK(want != NULL);
	for (i = 0; i < n; i++) {
		if (in[i].len)
			memcpy(want + off, in[i].ptr, in[i].len);
		off += in[i].len;
	}
	CHECK_OK(sluice_ctx_init(&ctx, sluice_clock_monotonic(),
				 SLUICE_FOREVER));

	/* Through cat into the capture. */
	c = config("cat");
	c.capture_max = 2 * MiB;
	e = sluice_exec_run(&c, &ctx, in, n, NULL, &res);
	CHECK(e == NULL);
	CHECK_EQ(res.out_len, total);
	CHECK(!res.out_truncated);
	CHECK_MEMEQ(res.out, want, total);
	CHECK_EQ(res.out[total], '\0');
	CHECK_EQ(res.err_len, 0);
	CHECK_STREQ(res.err, "");
	sluice_exec_result_release(&res);
	CHECK(res.out == NULL);

	/* Into a file, its name from the environment. */
	fd = mkstemp(path);
	CHECK_GE(fd, 0);
	format_to(envf, sizeof(envf), "OUTFILE=%s", path);
	c = config("cat > \"$OUTFILE\"");
	e = sluice_exec_run(&c, &ctx, in, n, env, NULL);
	CHECK(e == NULL);
	CHECK_OK(fstat(fd, &st));
	CHECK_EQ(st.st_size, total);
	got = malloc(total);
	CHECK(got != NULL);
	CHECK_EQ(pread(fd, got, total, 0), total);
	CHECK_MEMEQ(got, want, total);
	close(fd);
	unlink(path);

	/* No input at all: stdin is at end-of-file at once. */
	c = config("wc -c");
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK_EQ(strtol(res.out, NULL, 10), 0);
	sluice_exec_result_release(&res);

	sluice_ctx_release(&ctx);
	free(got);
	free(want);
	free(big);
	check_no_children();
}

static atomic_int sigpipes;

static void
on_sigpipe(int sig)
{
	(void)sig;
	atomic_fetch_add(&sigpipes, 1);
}

static bool
sigpipe_pending(void)
{
	sigset_t s;

	sigemptyset(&s);
	CHECK_OK(sigpending(&s));
	return sigismember(&s, SIGPIPE) == 1;
}

static bool
sigpipe_blocked(void)
{
	sigset_t s;

	CHECK_OK(pthread_sigmask(SIG_BLOCK, NULL, &s));
	return sigismember(&s, SIGPIPE) == 1;
}

/* A child that never reads its input: not an error, and the SIGPIPE the
 * failed write raises neither reaches us nor stays pending. */
static void
test_child_ignores_stdin(void)
{
	uint8_t *big = pattern(4 * MiB, 3);
	struct sluice_exec_config c;
	struct sigaction sa;
	struct sluice_error *e;
	sigset_t ps;
	int i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigpipe;
	sigemptyset(&sa.sa_mask);
	CHECK_OK(sigaction(SIGPIPE, &sa, NULL));
	for (i = 0; i < 3; i++) {
		c = config(i == 0   ? "exit 0"
			   : i == 1 ? "head -c 10 >/dev/null"
				    : "exec 0<&-; exit 7");
		e = run_plain(&c, big, 4 * MiB, NULL, NULL);
		if (i < 2)
			CHECK(e == NULL);
		else
			CHECK_EQ(sluice_error_code(e), 7);
		sluice_error_free(e);
		CHECK(!sigpipe_pending());
		CHECK(!sigpipe_blocked());
	}
	/* The caller's own mask is kept as it was. */
	sigemptyset(&ps);
	sigaddset(&ps, SIGPIPE);
	CHECK_OK(pthread_sigmask(SIG_BLOCK, &ps, NULL));
	c = config("exit 0");
	e = run_plain(&c, big, 4 * MiB, NULL, NULL);
	CHECK(e == NULL);
	CHECK(sigpipe_blocked());
	CHECK(!sigpipe_pending());
	CHECK_OK(pthread_sigmask(SIG_UNBLOCK, &ps, NULL));
	CHECK_EQ(atomic_load(&sigpipes), 0);
	free(big);
	check_no_children();
}

static void
test_env_visible(void)
{
	const char *env[] = { "SLUICE_ATTEMPT=3", "SLUICE_MSG_ID=m-1", NULL };
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct sluice_error *e;

	/* An inherited value of the same name is replaced, not doubled. */
	CHECK_OK(setenv("SLUICE_ATTEMPT", "stale", 1));
	CHECK_OK(setenv("SLUICE_TEST_INHERITED", "kept", 1));
	c = config("printf '%s|%s|%s' \"$SLUICE_ATTEMPT\" \"$SLUICE_MSG_ID\" "
		   "\"$SLUICE_TEST_INHERITED\"");
	e = run_plain(&c, NULL, 0, env, &res);
	CHECK(e == NULL);
	CHECK_STREQ(res.out, "3|m-1|kept");
	sluice_exec_result_release(&res);

	/* What execve() handed the shell, before it tidied it up. */
	c = config(
		"tr '\\0' '\\n' </proc/$$/environ | grep -c '^SLUICE_ATTEMPT='");
	e = run_plain(&c, NULL, 0, env, &res);
	CHECK(e == NULL);
	CHECK_STREQ(res.out, "1\n");
	sluice_exec_result_release(&res);

	/* No extras: the environment as it is. */
	c = config("printf '%s' \"$SLUICE_ATTEMPT\"");
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK_STREQ(res.out, "stale");
	sluice_exec_result_release(&res);
}

static void
test_capture_bounded(void)
{
	char cmd[PATH_MAX + 64];
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct sluice_error *e;
	size_t i;

	/* 10 MiB on each stream: both are drained at once, so the child
	 * never blocks on a full pipe, and only the first bytes are kept. */
	format_to(cmd, sizeof(cmd), "exec '%s' spew %zu", helper(), 10 * MiB);
	c = config(cmd);
	c.capture_max = 4096;
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK_EQ(res.out_len, 4096);
	CHECK_EQ(res.err_len, 4096);
	CHECK(res.out_truncated);
	CHECK(res.err_truncated);
	for (i = 0; i < 4096; i++) {
		CHECK_EQ((uint8_t)res.out[i], i % 251);
		CHECK_EQ((uint8_t)res.err[i], i % 241);
	}
	CHECK_EQ(res.out[4096], '\0');
	CHECK_EQ(res.err[4096], '\0');
	sluice_exec_result_release(&res);

	/* The default bound. */
	c.capture_max = config("").capture_max;
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK_EQ(res.out_len, 64 * 1024);
	CHECK_EQ(res.err_len, 64 * 1024);
	CHECK(res.out_truncated);
	sluice_exec_result_release(&res);
	check_no_children();
}

static void
test_capture_edges(void)
{
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct sluice_error *e;

	c = config("printf abcd; printf wxyz >&2");
	c.capture_max = 4;
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK_STREQ(res.out, "abcd");
	CHECK_STREQ(res.err, "wxyz");
	CHECK(!res.out_truncated);
	CHECK(!res.err_truncated);
	sluice_exec_result_release(&res);

	c.command = "printf abcde; printf vwxyz >&2";
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK_STREQ(res.out, "abcd");
	CHECK_STREQ(res.err, "vwxy");
	CHECK(res.out_truncated);
	CHECK(res.err_truncated);
	sluice_exec_result_release(&res);

	c.capture_max = 0;
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK_STREQ(res.out, "");
	CHECK_EQ(res.out_len, 0);
	CHECK(res.out_truncated);
	sluice_exec_result_release(&res);

	c.command = "true";
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK_STREQ(res.out, "");
	CHECK(!res.out_truncated);
	CHECK(!res.err_truncated);
	sluice_exec_result_release(&res);
	sluice_exec_result_release(NULL);
}

static void
test_stdout_fd_passthrough(void)
{
	char path[] = "/tmp/sluice-exec-XXXXXX", buf[16];
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct sluice_error *e;
	int fd;

	fd = mkstemp(path);
	CHECK_GE(fd, 0);
	unlink(path);
	c = config("printf hello; printf oops >&2");
	c.stdout_fd = fd;
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK_EQ(res.out_len, 0);
	CHECK_STREQ(res.out, "");
	CHECK_STREQ(res.err, "oops");
	sluice_exec_result_release(&res);
	CHECK_EQ(pread(fd, buf, sizeof(buf), 0), 5);
	CHECK_MEMEQ(buf, "hello", 5);
	close(fd);
}

/* ---- deadlines, cancellation, process groups ----------------------------- */

static void
test_deadline_real_clock(void)
{
	const struct sluice_clock *clk = sluice_clock_monotonic();
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct sluice_ctx ctx;
	struct sluice_error *e;
	int64_t deadline = sluice_clock_now_ns(clk) + 200 * SLUICE_NS_PER_MS;

	CHECK_OK(sluice_ctx_init(&ctx, clk, deadline));
	c = config("echo started >&2; exec sleep 1000");
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, &res);
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TIMEOUT);
	CHECK_EQ(sluice_error_code(e), SLUICE_ETIMEDOUT);
	check_contains(sluice_error_msg(e), "timed out");
	CHECK(res.killed);
	CHECK(res.exited);
	CHECK(WIFSIGNALED(res.wait_status));
	CHECK_EQ(WTERMSIG(res.wait_status), SIGTERM);
	/* Not killed before its time. */
	CHECK_GE(sluice_clock_now_ns(clk), deadline);
	CHECK_GT(res.elapsed_ns, 0);
	sluice_error_free(e);
	sluice_exec_result_release(&res);
	sluice_ctx_release(&ctx);
	check_no_children();
}

/*
 * The deadline kills the whole group: the leader and a grandchild it
 * started in the background.  The deadline is on a virtual clock, moved by
 * the watcher once the child has reported both pids.
 */
static void
test_deadline_kills_group(void)
{
	struct sluice_clock *vc = NULL;
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct watcher w = { 0 };
	struct sluice_ctx ctx;
	struct sluice_error *e;
	long pgid = 0, gc = 0;
	char cmd[128];
	int p[2];

	CHECK_OK(sluice_exec_become_subreaper());
	CHECK_OK(sluice_clock_virtual_new(1000, &vc));
	CHECK_OK(sluice_ctx_init(&ctx, vc, 1000 + SLUICE_NS_PER_S));
	ready_pipe(p);
	format_to(cmd, sizeof(cmd),
		  "sleep 1000 & echo $$ $! >&%d; exec sleep 1000", p[1]);
	c = config(cmd);
	w.rfd = p[0];
	w.vclock = vc;
	watcher_start(&w);
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, &res);
	watcher_join(&w);
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TIMEOUT);
	CHECK(res.killed);
	CHECK_EQ(WTERMSIG(res.wait_status), SIGTERM);
	/* elapsed_ns is on the context's clock, which jumped an hour. */
	CHECK_GE(res.elapsed_ns, 3600 * SLUICE_NS_PER_S);
	CHECK_EQ(sscanf(w.line, "%ld %ld", &pgid, &gc), 2);
	check_gone((pid_t)pgid, (pid_t)gc);
	check_no_children();
	sluice_error_free(e);
	sluice_exec_result_release(&res);
	sluice_ctx_release(&ctx);
	sluice_clock_free(vc);
	close(p[0]);
	close(p[1]);
}

/* A child that ignores SIGTERM gets SIGKILL once the grace has passed. */
static void
test_sigkill_after_grace(void)
{
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct watcher w = { 0 };
	struct sluice_ctx ctx;
	struct sluice_error *e;
	char cmd[PATH_MAX + 64];
	int p[2];

	ready_pipe(p);
	format_to(cmd, sizeof(cmd), "exec '%s' ignore-term %d", helper(), p[1]);
	c = config(cmd);
	c.kill_grace_ns = 100 * SLUICE_NS_PER_MS;
	CHECK_OK(sluice_ctx_init(&ctx, sluice_clock_monotonic(),
				 SLUICE_FOREVER));
	w.rfd = p[0];
	w.ctx = &ctx;
	w.reason = SLUICE_CANCEL_CALLER;
	watcher_start(&w);
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, &res);
	watcher_join(&w);
	CHECK_STREQ(w.line, "r");
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_CANCELED);
	CHECK_EQ(sluice_error_code(e), SLUICE_ECANCELED);
	check_contains(sluice_error_msg(e), "SIGKILL");
	check_contains(sluice_error_msg(e), "by the caller");
	CHECK(res.killed);
	CHECK(WIFSIGNALED(res.wait_status));
	CHECK_EQ(WTERMSIG(res.wait_status), SIGKILL);
	/* The SIGKILL waited for the grace (real clock on both sides). */
	CHECK_GE(res.elapsed_ns, c.kill_grace_ns);
	sluice_error_free(e);
	sluice_exec_result_release(&res);
	sluice_ctx_release(&ctx);
	close(p[0]);
	close(p[1]);
	check_no_children();
}

/* A grace of 0 means SIGKILL at once. */
static void
test_zero_grace_kills_at_once(void)
{
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct watcher w = { 0 };
	struct sluice_ctx ctx;
	struct sluice_error *e;
	char cmd[PATH_MAX + 64];
	int p[2];

	ready_pipe(p);
	format_to(cmd, sizeof(cmd), "exec '%s' ignore-term %d", helper(), p[1]);
	c = config(cmd);
	c.kill_grace_ns = 0;
	CHECK_OK(sluice_ctx_init(&ctx, sluice_clock_monotonic(),
				 SLUICE_FOREVER));
	w.rfd = p[0];
	w.ctx = &ctx;
	w.reason = SLUICE_CANCEL_SHUTDOWN;
	watcher_start(&w);
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, &res);
	watcher_join(&w);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_CANCELED);
	CHECK_EQ(WTERMSIG(res.wait_status), SIGKILL);
	sluice_error_free(e);
	sluice_exec_result_release(&res);
	sluice_ctx_release(&ctx);
	close(p[0]);
	close(p[1]);
}

/* Cancellation from another thread, through a child context. */
static void
test_cancel_shutdown(void)
{
	struct sluice_ctx root, ctx;
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct watcher w = { 0 };
	struct sluice_error *e;
	char cmd[128];
	int p[2];

	ready_pipe(p);
	format_to(cmd, sizeof(cmd),
		  "echo bye >&2; echo r >&%d; exec sleep 1000", p[1]);
	c = config(cmd);
	CHECK_OK(sluice_ctx_init(&root, sluice_clock_monotonic(),
				 SLUICE_FOREVER));
	CHECK_OK(sluice_ctx_init_child(&ctx, &root, SLUICE_FOREVER));
	w.rfd = p[0];
	w.ctx = &root; /* the engine cancels the parent at shutdown */
	w.reason = SLUICE_CANCEL_SHUTDOWN;
	watcher_start(&w);
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, &res);
	watcher_join(&w);
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_CANCELED);
	CHECK_EQ(sluice_error_code(e), SLUICE_ECANCELED);
	check_contains(sluice_error_msg(e), "shutdown");
	check_contains(sluice_error_msg(e), "SIGTERM");
	check_contains(sluice_error_msg(e), ": bye");
	CHECK(res.killed);
	CHECK_EQ(WTERMSIG(res.wait_status), SIGTERM);
	CHECK_STREQ(res.err, "bye\n");
	sluice_error_free(e);
	sluice_exec_result_release(&res);
	sluice_ctx_release(&ctx);
	sluice_ctx_release(&root);
	close(p[0]);
	close(p[1]);
	check_no_children();
}

/* A child that finishes its work on SIGTERM and exits 0 succeeded. */
static void
test_graceful_exit_after_term_is_success(void)
{
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct watcher w = { 0 };
	struct sluice_ctx ctx;
	struct sluice_error *e;
	char cmd[PATH_MAX + 64];
	int p[2];

	ready_pipe(p);
	format_to(cmd, sizeof(cmd), "exec '%s' term-exit0 %d", helper(), p[1]);
	c = config(cmd);
	c.kill_grace_ns = 3600 * SLUICE_NS_PER_S;
	CHECK_OK(sluice_ctx_init(&ctx, sluice_clock_monotonic(),
				 SLUICE_FOREVER));
	w.rfd = p[0];
	w.ctx = &ctx;
	w.reason = SLUICE_CANCEL_SHUTDOWN;
	watcher_start(&w);
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, &res);
	watcher_join(&w);
	CHECK(e == NULL);
	CHECK(res.killed);
	CHECK(WIFEXITED(res.wait_status));
	CHECK_EQ(WEXITSTATUS(res.wait_status), 0);
	sluice_exec_result_release(&res);
	sluice_ctx_release(&ctx);
	close(p[0]);
	close(p[1]);
}

/*
 * The CLI blocks SIGINT/SIGTERM in every thread and a program may ignore
 * SIGTERM: the child must still start with an empty mask and default
 * dispositions, so SIGTERM alone ends it (the grace is an hour).
 */
static void
test_child_gets_clean_signals(void)
{
	struct sluice_clock *vc = NULL;
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct watcher w = { 0 };
	struct sigaction sa;
	struct sluice_ctx ctx;
	struct sluice_error *e;
	sigset_t block;
	char cmd[128];
	int p[2];

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	CHECK_OK(sigaction(SIGTERM, &sa, NULL));
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	CHECK_OK(pthread_sigmask(SIG_BLOCK, &block, NULL));

	ready_pipe(p);
	format_to(cmd, sizeof(cmd), "echo r >&%d; exec sleep 1000", p[1]);
	c = config(cmd);
	c.kill_grace_ns = 3600 * SLUICE_NS_PER_S;
	CHECK_OK(sluice_clock_virtual_new(0, &vc));
	CHECK_OK(sluice_ctx_init(&ctx, vc, SLUICE_NS_PER_S));
	w.rfd = p[0];
	w.vclock = vc;
	watcher_start(&w);
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, &res);
	watcher_join(&w);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TIMEOUT);
	CHECK(WIFSIGNALED(res.wait_status));
	CHECK_EQ(WTERMSIG(res.wait_status), SIGTERM);
	sluice_error_free(e);
	sluice_exec_result_release(&res);
	sluice_ctx_release(&ctx);
	sluice_clock_free(vc);
	close(p[0]);
	close(p[1]);
}

/*
 * A child that exits 0 but leaves a grandchild behind, holding the stdout
 * pipe open: the run returns without waiting for that pipe's end, and the
 * grandchild is killed and reaped.
 */
static void
test_leftover_grandchild_killed_and_reaped(void)
{
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct sluice_error *e;
	long pgid = 0, gc = 0;

	CHECK_OK(sluice_exec_become_subreaper());
	c = config("sleep 1000 & echo $$ $!");
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK(e == NULL);
	CHECK(!res.killed);
	CHECK(WIFEXITED(res.wait_status));
	CHECK_EQ(sscanf(res.out, "%ld %ld", &pgid, &gc), 2);
	CHECK_NE(pgid, gc);
	check_gone((pid_t)pgid, (pid_t)gc);
	check_no_children();
	sluice_exec_result_release(&res);

	/* The same after a timeout-free failure, with several of them. */
	c = config(
		"sleep 1000 & sleep 1000 & (sleep 1000 &) ; echo $$; exit 9");
	e = run_plain(&c, NULL, 0, NULL, &res);
	CHECK_EQ(sluice_error_code(e), 9);
	CHECK_EQ(sscanf(res.out, "%ld", &pgid), 1);
	check_gone((pid_t)pgid, 0);
	check_no_children();
	sluice_error_free(e);
	sluice_exec_result_release(&res);
}

static void
test_ctx_done_before_start(void)
{
	char path[] = "/tmp/sluice-exec-XXXXXX", cmd[128];
	struct sluice_clock *vc = NULL;
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	struct sluice_ctx ctx;
	struct sluice_error *e;
	int fd;

	fd = mkstemp(path);
	CHECK_GE(fd, 0);
	close(fd);
	unlink(path);
	format_to(cmd, sizeof(cmd), "touch '%s'", path);
	c = config(cmd);

	CHECK_OK(sluice_ctx_init(&ctx, sluice_clock_monotonic(),
				 SLUICE_FOREVER));
	sluice_ctx_cancel(&ctx, SLUICE_CANCEL_SHUTDOWN);
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, &res);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_CANCELED);
	CHECK(!res.exited);
	CHECK(!res.killed);
	CHECK_STREQ(res.out, "");
	sluice_error_free(e);
	sluice_exec_result_release(&res);
	sluice_ctx_release(&ctx);

	CHECK_OK(sluice_clock_virtual_new(5000, &vc));
	CHECK_OK(sluice_ctx_init(&ctx, vc, 5000));
	e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TIMEOUT);
	CHECK_EQ(sluice_error_code(e), SLUICE_ETIMEDOUT);
	sluice_error_free(e);
	sluice_ctx_release(&ctx);
	sluice_clock_free(vc);

	CHECK_EQ(access(path, F_OK), -1); /* it never ran */
	check_no_children();

	/* No context at all: no deadline. */
	e = sluice_exec_run(&c, NULL, NULL, 0, NULL, NULL);
	CHECK(e == NULL);
	CHECK_OK(access(path, F_OK));
	unlink(path);

	/* Nothing to run. */
	e = sluice_exec_run(NULL, NULL, NULL, 0, NULL, &res);
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_code(e), SLUICE_EINVAL);
	sluice_error_free(e);
}

/*
 * Out of descriptors at every step of the set-up (eventfd, three pipes,
 * pidfd): each run either fails as TEMPORARY -EMFILE before starting
 * anything, or runs correctly (without an eventfd or pidfd it re-checks by
 * time slices); no descriptor leaks and no child is left.
 */
static void
test_out_of_fds(void)
{
	struct sluice_exec_config c = config("printf ok");
	struct sluice_exec_result res;
	struct sluice_error *e;
	struct rlimit rl, low;
	int base, fds[64], nfd, k, i, fails = 0, oks = 0;

	CHECK_OK(getrlimit(RLIMIT_NOFILE, &rl));
	base = count_fds();
	for (k = 0; k <= 10; k++) {
		low = rl;
		low.rlim_cur = 64;
		CHECK_OK(setrlimit(RLIMIT_NOFILE, &low));
		nfd = 0;
		for (;;) {
			int fd = dup(0);

			if (fd < 0) {
				CHECK_EQ(errno, EMFILE);
				break;
			}
			CHECK_LT(nfd, 64);
			fds[nfd++] = fd;
		}
		/* Leave k descriptors free. */
		for (i = 0; i < k && nfd > 0; i++)
			close(fds[--nfd]);
		e = run_plain(&c, NULL, 0, NULL, &res);
		if (e) {
			CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TEMPORARY);
			CHECK_EQ(sluice_error_code(e), -EMFILE);
			check_contains(sluice_error_msg(e),
				       "could not be started");
			CHECK(!res.exited);
			fails++;
		} else {
			CHECK(res.exited);
			CHECK_STREQ(res.out, "ok");
			oks++;
		}
		sluice_error_free(e);
		sluice_exec_result_release(&res);
		while (nfd > 0)
			close(fds[--nfd]);
		CHECK_OK(setrlimit(RLIMIT_NOFILE, &rl));
		CHECK_EQ(count_fds(), base);
		check_no_children();
	}
	CHECK_GT(fails, 0);
	CHECK_GT(oks, 0);
}

/* The Nth allocation fails, for every N the run makes: the result is never
 * a false success, nothing leaks (LSan), nothing is left running. */
static void
test_alloc_failures(void)
{
	struct sluice_exec_config c =
		config("printf hello; echo err >&2; exit 3");
	struct sluice_exec_result res;
	struct sluice_error *e;
	int base = count_fds(), seen_ok = 0;
	unsigned long n;

	for (n = 1; n <= 16; n++) {
		sl_alloc_fail_after(n, 0);
		e = run_plain(&c, NULL, 0, NULL, &res);
		sl_alloc_fail_after(0, 0);
		CHECK(e != NULL);
		CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TEMPORARY);
		if (sluice_error_code(e) == SLUICE_ENOMEM) {
			/* Before the start, or the error value itself. */
		} else {
			CHECK_EQ(sluice_error_code(e), 3);
			CHECK(res.exited);
			/* A failed growth keeps what it had. */
			CHECK(res.out != NULL);
			CHECK(strncmp(res.out, "hello", res.out_len) == 0);
			CHECK(res.out_len == 5 || res.out_truncated);
			seen_ok += res.out_len == 5;
		}
		sluice_error_free(e);
		sluice_exec_result_release(&res);
		CHECK_EQ(count_fds(), base);
		check_no_children();
	}
	CHECK_GT(seen_ok, 0);
}

/* ---- many at once -------------------------------------------------------- */

#define NTHREADS 8
#define NRUNS    12

struct worker {
	int id;
	int timeouts, oks;
	pthread_t thread;
};

static void *
worker_main(void *arg)
{
	struct worker *wk = arg;
	const struct sluice_clock *clk = sluice_clock_monotonic();
	struct sluice_exec_config c;
	struct sluice_exec_result res;
	char envv[64], want[128];
	const char *env[] = { envv, NULL };
	struct sluice_ctx ctx;
	struct sluice_error *e;
	struct sluice_bytes in;
	uint8_t *data;
	size_t len;
	int i;

	for (i = 0; i < NRUNS; i++) {
		if (i % 4 == 3) {
			/* A deadline run beside the others: its group kill
			 * must hit only its own processes. */
			c = config("exec sleep 1000");
			CHECK_OK(
				sluice_ctx_init(&ctx, clk,
						sluice_clock_now_ns(clk) +
							50 * SLUICE_NS_PER_MS));
			e = sluice_exec_run(&c, &ctx, NULL, 0, NULL, NULL);
			CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TIMEOUT);
			sluice_error_free(e);
			sluice_ctx_release(&ctx);
			wk->timeouts++;
			continue;
		}
		len = (size_t)(wk->id * 7919 + i * 104729) % (200 * 1024);
		data = pattern(len, (uint32_t)(wk->id * 100 + i));
		format_to(envv, sizeof(envv), "SLUICE_ATTEMPT=%d.%d", wk->id,
			  i);
		format_to(want, sizeof(want), "%d.%d:", wk->id, i);
		c = config("printf '%s:' \"$SLUICE_ATTEMPT\"; cat");
		c.capture_max = 256 * 1024;
		CHECK_OK(sluice_ctx_init(&ctx, clk, SLUICE_FOREVER));
		in.ptr = data;
		in.len = len;
		e = sluice_exec_run(&c, &ctx, &in, 1, env, &res);
		CHECK(e == NULL);
		CHECK_EQ(res.out_len, strlen(want) + len);
		CHECK_MEMEQ(res.out, want, strlen(want));
		CHECK_MEMEQ(res.out + strlen(want), data, len);
		sluice_exec_result_release(&res);
		sluice_ctx_release(&ctx);
		free(data);
		wk->oks++;
	}
	return NULL;
}

static void
test_concurrent_runs(void)
{
	struct worker wk[NTHREADS];
	int i, base = count_fds();

	CHECK_OK(sluice_exec_become_subreaper());
	for (i = 0; i < NTHREADS; i++) {
		memset(&wk[i], 0, sizeof(wk[i]));
		wk[i].id = i;
		CHECK_OK(pthread_create(&wk[i].thread, NULL, worker_main,
					&wk[i]));
	}
	for (i = 0; i < NTHREADS; i++) {
		CHECK_OK(pthread_join(wk[i].thread, NULL));
		CHECK_EQ(wk[i].oks + wk[i].timeouts, NRUNS);
		CHECK_EQ(wk[i].timeouts, NRUNS / 4);
	}
	CHECK_EQ(count_fds(), base);
	check_no_children();
}

CHECK_MAIN(test_config_defaults, test_parse_map_ok, test_parse_map_errors,
	   test_parse_map_capacity, test_parse_map_prefixes, test_exit_classes,
	   test_exit_map_overrides_defaults,
	   test_exit_message_quotes_last_stderr_line, test_signal_is_crash,
	   test_missing_command, test_stdin_byte_exact,
	   test_child_ignores_stdin, test_env_visible, test_capture_bounded,
	   test_capture_edges, test_stdout_fd_passthrough,
	   test_deadline_real_clock, test_deadline_kills_group,
	   test_sigkill_after_grace, test_zero_grace_kills_at_once,
	   test_cancel_shutdown, test_graceful_exit_after_term_is_success,
	   test_child_gets_clean_signals,
	   test_leftover_grandchild_killed_and_reaped,
	   test_ctx_done_before_start, test_out_of_fds, test_alloc_failures,
	   test_concurrent_runs)
