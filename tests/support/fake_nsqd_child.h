/* SPDX-License-Identifier: MIT */
/*
 * fake_nsqd_child.h - run tests/support/fake_nsqd as a child of a test:
 * start it (from $SLUICE_FAKE_NSQD, else beside the test binary) with its
 * stdin and stdout on pipes, read the port it listens on, send control
 * commands ("pub TOPIC BODY", ...) and wait for their "ok", stop it.
 *
 * Header-only, one server per test process (the static `srv`).  Every read
 * is bounded by FAKE_NSQD_GUARD_MS, which only turns a hang into a failure.
 */
#ifndef FAKE_NSQD_CHILD_H
#define FAKE_NSQD_CHILD_H

#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define FAKE_NSQD_GUARD_MS 60000

struct srv {
	pid_t pid;
	int ctl; /* its stdin */
	int out; /* its stdout */
	int port;
};

static struct srv srv;

static inline int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Read one line of the server's stdout (guarded). */
static inline void
srv_line(char *buf, size_t cap)
{
	size_t n = 0;
	struct pollfd p = { .fd = srv.out, .events = POLLIN };

	while (n + 1 < cap) {
		CHECK_GT(poll(&p, 1, FAKE_NSQD_GUARD_MS), 0);
		CHECK_EQ(read(srv.out, buf + n, 1), 1);
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
}

/* Start fake_nsqd with the NULL-terminated extra arguments @args. */
static inline void
srv_start(const char *const *args)
{
	const char *e = getenv("SLUICE_FAKE_NSQD");
	char path[PATH_MAX], line[128];
	const char *argv[32];
	int in[2], out[2];
	size_t i = 0;
	ssize_t n;

	if (e && *e) {
		snprintf(path, sizeof(path), "%s", e);
	} else {
		n = readlink("/proc/self/exe", path, sizeof(path) - 16);
		CHECK_GT(n, 0);
		path[n] = '\0';
		CHECK(strrchr(path, '/') != NULL);
		snprintf(strrchr(path, '/'), 16, "/fake_nsqd");
	}
	if (access(path, X_OK) != 0)
		CHECK_FAIL("set SLUICE_FAKE_NSQD to the fake_nsqd program");
	argv[i++] = path;
	argv[i++] = "0";
	while (args && *args && i < 31)
		argv[i++] = *args++;
	argv[i] = NULL;
	CHECK_OK(pipe(in));
	CHECK_OK(pipe(out));
	fflush(NULL);
	srv.pid = fork();
	CHECK_GE(srv.pid, 0);
	if (srv.pid == 0) {
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
	srv.ctl = in[1];
	srv.out = out[0];
	signal(SIGPIPE, SIG_IGN);
	srv_line(line, sizeof(line));
	CHECK(strncmp(line, "listening on ", 13) == 0);
	srv.port = (int)strtol(line + 13, NULL, 10);
	CHECK_GT(srv.port, 0);
}

static inline void
srv_stop(void)
{
	int st;

	close(srv.ctl); /* EOF ends it; SIGKILL makes sure */
	kill(srv.pid, SIGKILL);
	CHECK_EQ(waitpid(srv.pid, &st, 0), srv.pid);
	close(srv.out);
}

/* A control command; waits for its "ok". */
static inline void
srv_ctl(const char *cmd)
{
	char line[64];

	CHECK_EQ(write(srv.ctl, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
	CHECK_EQ(write(srv.ctl, "\n", 1), 1);
	srv_line(line, sizeof(line));
	CHECK_STREQ(line, "ok");
}

#endif /* FAKE_NSQD_CHILD_H */
