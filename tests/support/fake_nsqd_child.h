/* SPDX-License-Identifier: MIT */
/*
 * fake_nsqd_child.h - run the stand-ins of tests/support (fake_nsqd,
 * fake_lookupd) as children of a test: start one (from an environment
 * variable, else beside the test binary) with its stdin and stdout on
 * pipes, read the port it listens on, send control commands ("pub TOPIC
 * BODY", ...) and wait for their "ok", stop it.
 *
 * Header-only.  struct child and child_*() handle any number of children;
 * srv and srv_*() are the one fake_nsqd most tests need.  Also what the
 * NSQ tests share around them: WAIT_UNTIL() polls a condition on the
 * clients' counters, closed_port() a port where a connect is refused.
 * Every read and wait is bounded by FAKE_NSQD_GUARD_MS, which only turns a
 * hang into a failure.
 */
#ifndef FAKE_NSQD_CHILD_H
#define FAKE_NSQD_CHILD_H

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define FAKE_NSQD_GUARD_MS 60000

struct child {
	pid_t pid;
	int ctl; /* its stdin */
	int out; /* its stdout */
	int port;
};

static struct child srv;

static inline int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Poll until @cond holds (guarded); the 2 ms pause only paces the polling
 * of counters nothing signals.  @what names the wait in the failure.
 */
#define WAIT_UNTIL(cond, what)                                   \
	do {                                                     \
		int64_t until_ = mono_ms() + FAKE_NSQD_GUARD_MS; \
		struct timespec ts_ = { 0, 2 * 1000 * 1000 };    \
		while (!(cond)) {                                \
			if (mono_ms() > until_)                  \
				CHECK_FAIL(what);                \
			nanosleep(&ts_, NULL);                   \
		}                                                \
	} while (0)

/* A loopback port nothing listens on, reserved by *@fd (bound, no listen):
 * a connect there is refused. */
static inline int
closed_port(int *fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	*fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK_GE(*fd, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK_OK(bind(*fd, (struct sockaddr *)&a, sizeof(a)));
	CHECK_OK(getsockname(*fd, (struct sockaddr *)&a, &len));
	return ntohs(a.sin_port);
}

/* Read one line of the child's stdout (guarded). */
static inline void
child_line(struct child *c, char *buf, size_t cap)
{
	struct pollfd p = { .fd = c->out, .events = POLLIN };
	size_t n = 0;

	while (n + 1 < cap) {
		CHECK_GT(poll(&p, 1, FAKE_NSQD_GUARD_MS), 0);
		CHECK_EQ(read(c->out, buf + n, 1), 1);
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
}

/* Start the program named by $@env (else @name beside this binary) with
 * the NULL-terminated arguments @args; wait for its "listening on PORT". */
static inline void
child_start(struct child *c, const char *env, const char *name,
	    const char *const *args)
{
	const char *e = getenv(env), *argv[32];
	char path[PATH_MAX], line[128];
	int in[2], out[2];
	size_t i = 0;
	ssize_t n;

	if (e && *e) {
		snprintf(path, sizeof(path), "%s", e);
	} else {
		n = readlink("/proc/self/exe", path, sizeof(path) - 32);
		CHECK_GT(n, 0);
		path[n] = '\0';
		CHECK(strrchr(path, '/') != NULL);
		snprintf(strrchr(path, '/'), 32, "/%s", name);
	}
	if (access(path, X_OK) != 0) {
		fprintf(stderr, "  set %s to the %s program\n", env, name);
		CHECK_FAIL("stand-in not found");
	}
	argv[i++] = path;
	while (args && *args && i < 31)
		argv[i++] = *args++;
	argv[i] = NULL;
	CHECK_OK(pipe(in));
	CHECK_OK(pipe(out));
	fflush(NULL);
	c->pid = fork();
	CHECK_GE(c->pid, 0);
	if (c->pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[0]);
		close(in[1]);
		close(out[0]);
		close(out[1]);
		execv(path, (char *const *)(uintptr_t)argv);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	c->ctl = in[1];
	c->out = out[0];
	signal(SIGPIPE, SIG_IGN);
	child_line(c, line, sizeof(line));
	CHECK(strncmp(line, "listening on ", 13) == 0);
	c->port = (int)strtol(line + 13, NULL, 10);
	CHECK_GT(c->port, 0);
}

static inline void
child_stop(struct child *c)
{
	int st;

	close(c->ctl); /* EOF ends it; SIGKILL makes sure */
	kill(c->pid, SIGKILL);
	CHECK_EQ(waitpid(c->pid, &st, 0), c->pid);
	close(c->out);
}

/* A control command; waits for its "ok". */
static inline void
child_ctl(struct child *c, const char *cmd)
{
	char line[64];

	CHECK_EQ(write(c->ctl, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
	CHECK_EQ(write(c->ctl, "\n", 1), 1);
	child_line(c, line, sizeof(line));
	CHECK_STREQ(line, "ok");
}

/* Start fake_nsqd (any port) with the NULL-terminated extra arguments
 * @args (may be NULL) as srv. */
static inline void
srv_start(const char *const *args)
{
	const char *argv[32] = { "0" };
	size_t i = 1;

	while (args && *args && i < 31)
		argv[i++] = *args++;
	argv[i] = NULL;
	child_start(&srv, "SLUICE_FAKE_NSQD", "fake_nsqd", argv);
}

static inline void
srv_stop(void)
{
	child_stop(&srv);
}

static inline void
srv_ctl(const char *cmd)
{
	child_ctl(&srv, cmd);
}

#endif /* FAKE_NSQD_CHILD_H */
