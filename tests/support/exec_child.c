/* SPDX-License-Identifier: MIT */
/*
 * exec_child.c - a child program for test_exec: the behaviours a shell
 * one-liner cannot give reliably.
 *
 *   exec_child ignore-term FD   ignore SIGTERM, then write "r\n" to FD and
 *                               wait forever: only SIGKILL ends it
 *   exec_child term-exit0 FD    on SIGTERM exit 0 (a graceful shutdown);
 *                               "r\n" to FD once the handler is in place
 *   exec_child spew N           write N pattern bytes to stdout and N to
 *                               stderr, interleaved in small chunks, exit 0
 *
 * The readiness byte is written only after the signal disposition is set,
 * so a test that waits for it cannot signal the child too early.  The
 * pattern of byte i is (i % 251) on stdout and (i % 241) on stderr, so a
 * test can check what was kept.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t got_term;

static void
on_term(int sig)
{
	(void)sig;
	got_term = 1;
}

static int
ready(const char *fdarg)
{
	int fd = (int)strtol(fdarg, NULL, 10);
	ssize_t n;

	do {
		n = write(fd, "r\n", 2);
	} while (n < 0 && errno == EINTR);
	return n == 2 ? 0 : -1;
}

static int
write_all(int fd, const unsigned char *p, size_t n)
{
	ssize_t w;

	while (n) {
		w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int
spew(size_t total)
{
	unsigned char a[4096], b[4096];
	size_t done = 0, n, i;

	while (done < total) {
		n = total - done < sizeof(a) ? total - done : sizeof(a);
		for (i = 0; i < n; i++) {
			a[i] = (unsigned char)((done + i) % 251);
			b[i] = (unsigned char)((done + i) % 241);
		}
		if (write_all(1, a, n) || write_all(2, b, n))
			return 1;
		done += n;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct sigaction sa;

	if (argc != 3) {
		fprintf(stderr, "usage: exec_child MODE ARG\n");
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	if (strcmp(argv[1], "ignore-term") == 0) {
		sa.sa_handler = SIG_IGN;
		if (sigaction(SIGTERM, &sa, NULL) || ready(argv[2]))
			return 2;
		for (;;)
			pause();
	}
	if (strcmp(argv[1], "term-exit0") == 0) {
		sigset_t term, old;

		/* Blocked until sigsuspend so a SIGTERM cannot slip in
		 * between the check and the wait. */
		sigemptyset(&term);
		sigaddset(&term, SIGTERM);
		sigprocmask(SIG_BLOCK, &term, &old);
		sa.sa_handler = on_term;
		if (sigaction(SIGTERM, &sa, NULL) || ready(argv[2]))
			return 2;
		while (!got_term)
			sigsuspend(&old);
		return 0;
	}
	if (strcmp(argv[1], "spew") == 0)
		return spew((size_t)strtoull(argv[2], NULL, 10));
	fprintf(stderr, "exec_child: unknown mode %s\n", argv[1]);
	return 2;
}
