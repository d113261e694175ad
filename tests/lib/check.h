/* SPDX-License-Identifier: MIT */
/*
 * check.h - the in-house test harness (header only).
 *
 * Each test case is a void function.  CHECK_MAIN(f1, f2, ...) runs every case
 * in its own forked child with a time limit (CHECK_TIMEOUT seconds, default
 * 120), so a crash or hang fails that case only; CHECK_NOFORK=1 runs them in
 * process, for gdb.  A failed CHECK_* prints both operands and ends its case.
 * The run ends with "N passed, N failed" and exits non-zero on any failure.
 * An argument runs only the cases whose names contain it.
 */
#ifndef CHECK_H
#define CHECK_H

#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static inline void check_fail_(const char *file, int line, const char *what)
	__attribute__((noreturn));

static inline void
check_fail_(const char *file, int line, const char *what)
{
	fprintf(stderr, "  %s:%d: check failed: %s\n", file, line, what);
	fflush(stderr);
	_exit(1);
}

#define CHECK(cond)                                             \
	do {                                                    \
		if (!(cond))                                    \
			check_fail_(__FILE__, __LINE__, #cond); \
	} while (0)

/* Fail the case unconditionally with @msg. */
#define CHECK_FAIL(msg) check_fail_(__FILE__, __LINE__, (msg))

#define CHECK_CMP_(a, op, b)                                                 \
	do {                                                                 \
		intmax_t check_a_ = (intmax_t)(a), check_b_ = (intmax_t)(b); \
		if (!(check_a_ op check_b_)) {                               \
			fprintf(stderr, "  %s:%d: %s %s %s: %jd vs %jd\n",   \
				__FILE__, __LINE__, #a, #op, #b, check_a_,   \
				check_b_);                                   \
			check_fail_(__FILE__, __LINE__, "comparison");       \
		}                                                            \
	} while (0)

#define CHECK_EQ(a, b) CHECK_CMP_(a, ==, b)
#define CHECK_NE(a, b) CHECK_CMP_(a, !=, b)
#define CHECK_LT(a, b) CHECK_CMP_(a, <, b)
#define CHECK_LE(a, b) CHECK_CMP_(a, <=, b)
#define CHECK_GT(a, b) CHECK_CMP_(a, >, b)
#define CHECK_GE(a, b) CHECK_CMP_(a, >=, b)
#define CHECK_OK(expr) CHECK_CMP_(expr, ==, 0)

#define CHECK_STREQ(a, b)                                                  \
	do {                                                               \
		const char *check_sa_ = (a), *check_sb_ = (b);             \
		if (!check_sa_ || !check_sb_ ||                            \
		    strcmp(check_sa_, check_sb_) != 0) {                   \
			fprintf(stderr,                                    \
				"  %s:%d: %s == %s: \"%s\" vs \"%s\"\n",   \
				__FILE__, __LINE__, #a, #b,                \
				check_sa_ ? check_sa_ : "(null)",          \
				check_sb_ ? check_sb_ : "(null)");         \
			check_fail_(__FILE__, __LINE__, "string compare"); \
		}                                                          \
	} while (0)

#define CHECK_MEMEQ(a, b, n)                                           \
	do {                                                           \
		if (memcmp((a), (b), (n)) != 0)                        \
			check_fail_(__FILE__, __LINE__,                \
				    "memcmp(" #a ", " #b ", " #n ")"); \
	} while (0)

/*
 * A forked case ends with _exit(), which skips LeakSanitizer's exit-time
 * check; run it explicitly so leaks fail the case that made them.
 */
#if defined(__SANITIZE_ADDRESS__)
#define CHECK_HAVE_LSAN_ 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CHECK_HAVE_LSAN_ 1
#endif
#endif
#ifdef CHECK_HAVE_LSAN_
int __lsan_do_recoverable_leak_check(void);
#define CHECK_LEAKS_() (__lsan_do_recoverable_leak_check() != 0)
#else
#define CHECK_LEAKS_() 0
#endif

struct check_case_ {
	const char *name;
	void (*fn)(void);
};

static inline int
check_run_one_(const struct check_case_ *c, int nofork, unsigned timeout)
{
	pid_t pid;
	int st;

	if (nofork) {
		c->fn();
		return 0;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0) {
		alarm(timeout);
		c->fn();
		fflush(NULL);
		if (CHECK_LEAKS_()) {
			fprintf(stderr, "  leaks (see LeakSanitizer above)\n");
			_exit(1);
		}
		_exit(0);
	}
	while (waitpid(pid, &st, 0) < 0)
		;
	if (WIFSIGNALED(st)) {
		fprintf(stderr, "  killed by signal %d%s\n", WTERMSIG(st),
			WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
		return 1;
	}
	return WEXITSTATUS(st) != 0;
}

static inline int
check_main_(int argc, char **argv, const struct check_case_ *cases, size_t n)
{
	const char *e = getenv("CHECK_NOFORK");
	int nofork = e && *e == '1';
	unsigned timeout = 120, passed = 0, failed = 0;
	size_t i;

	e = getenv("CHECK_TIMEOUT");
	if (e && *e)
		timeout = (unsigned)strtoul(e, NULL, 10);
	for (i = 0; i < n; i++) {
		if (argc > 1 && !strstr(cases[i].name, argv[1]))
			continue;
		if (check_run_one_(&cases[i], nofork, timeout)) {
			printf("FAIL %s\n", cases[i].name);
			failed++;
		} else {
			printf("ok   %s\n", cases[i].name);
			passed++;
		}
		fflush(stdout);
	}
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}

/* Case names come from the stringified argument list. */
#define CHECK_MAIN(...)                                                     \
	int main(int argc, char **argv)                                     \
	{                                                                   \
		void (*fns_[])(void) = { __VA_ARGS__ };                     \
		static const char names_[] = #__VA_ARGS__;                  \
		struct check_case_ cases_[sizeof(fns_) / sizeof(fns_[0])];  \
		char namebuf_[sizeof(names_)];                              \
		size_t n_ = sizeof(fns_) / sizeof(fns_[0]), i_;             \
		char *p_ = namebuf_, *save_;                                \
		memcpy(namebuf_, names_, sizeof(names_));                   \
		for (i_ = 0; i_ < n_; i_++) {                               \
			char *tok_ =                                        \
				strtok_r(i_ ? NULL : p_, ", \t\n", &save_); \
			cases_[i_].name = tok_ ? tok_ : "?";                \
			cases_[i_].fn = fns_[i_];                           \
		}                                                           \
		return check_main_(argc, argv, cases_, n_);                 \
	}

#endif /* CHECK_H */
