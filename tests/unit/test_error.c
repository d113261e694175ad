/* SPDX-License-Identifier: MIT */
/*
 * test_error.c - error values, classifiers, Retry-After and code texts.
 *
 * Exit statuses come from real child processes (fork, _exit, raise, abort)
 * reaped with waitpid, never from hand-made integers.  The out-of-memory
 * cases use the allocator's fault injection and, under ASan, ask LeakSanitizer
 * directly (the harness ends each case with _exit, which skips the
 * at-exit leak check).  The Retry-After parser is fed every prefix of each
 * valid date, placed so that its terminating NUL is the last byte before an
 * inaccessible page.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <sluice/common.h>
#include <sluice/error.h>

#include "check.h"
#include "util/alloc.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_LSAN 1
#endif
#endif

#ifdef HAVE_LSAN
#include <sanitizer/lsan_interface.h>
#define CHECK_NO_LEAKS() CHECK_EQ(__lsan_do_recoverable_leak_check(), 0)
#else
#define CHECK_NO_LEAKS() ((void)0)
#endif

static const enum sluice_class error_classes[] = {
	SLUICE_CLASS_TIMEOUT,
	SLUICE_CLASS_TEMPORARY,
	SLUICE_CLASS_PERMANENT,
	SLUICE_CLASS_CANCELED,
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---- construction and accessors ------------------------------------------ */

static void
test_new_each_class(void)
{
	size_t i;

	for (i = 0; i < NELEM(error_classes); i++) {
		enum sluice_class cls = error_classes[i];
		struct sluice_error *e;
		char want[64];

		e = sluice_error_new(cls, -(int)i - 1, "case %zu: %s", i,
				     "boom");
		snprintf(want, sizeof(want), "case %zu: boom", i);
		CHECK(e != NULL);
		CHECK_EQ(sluice_error_class(e), cls);
		CHECK_EQ(sluice_error_code(e), -(int)i - 1);
		CHECK_STREQ(sluice_error_msg(e), want);
		CHECK(sluice_error_cause(e) == NULL);
		CHECK_EQ(sluice_error_retry_after_ns(e), 0);
		CHECK_EQ(sluice_error_is_timeout(e),
			 cls == SLUICE_CLASS_TIMEOUT);
		CHECK_EQ(sluice_error_is_temporary(e),
			 cls == SLUICE_CLASS_TIMEOUT ||
				 cls == SLUICE_CLASS_TEMPORARY);
		sluice_error_free(e);
	}
}

static void
test_new_invalid_class(void)
{
	const int bad[] = { SLUICE_CLASS_OK, SLUICE_CLASS_COUNT, 99, -1 };
	size_t i;

	for (i = 0; i < NELEM(bad); i++) {
		struct sluice_error *e;
		char want[128];

		e = sluice_error_new((enum sluice_class)bad[i], 5, "bad %s",
				     "news");
		snprintf(want, sizeof(want),
			 "invalid error class %d (code 5): bad news", bad[i]);
		CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_PERMANENT);
		CHECK_EQ(sluice_error_code(e), SLUICE_CODE_HANDLER);
		CHECK_STREQ(sluice_error_msg(e), want);
		CHECK(!sluice_error_is_temporary(e));
		sluice_error_free(e);
	}
}

static void
test_null_is_success(void)
{
	char buf[8];

	CHECK_EQ(sluice_error_class(NULL), SLUICE_CLASS_OK);
	CHECK_EQ(sluice_error_code(NULL), 0);
	CHECK_STREQ(sluice_error_msg(NULL), "");
	CHECK(sluice_error_cause(NULL) == NULL);
	CHECK_EQ(sluice_error_retry_after_ns(NULL), 0);
	CHECK(!sluice_error_is_timeout(NULL));
	CHECK(!sluice_error_is_temporary(NULL));
	CHECK_EQ(sluice_error_format(NULL, buf, sizeof(buf)), 2);
	CHECK_STREQ(buf, "ok");
	sluice_error_set_retry_after_ns(NULL, 5);
	sluice_error_free(NULL);
}

static void
test_retry_after_hint(void)
{
	struct sluice_error *e =
		sluice_error_new(SLUICE_CLASS_TEMPORARY, 0, "x");

	CHECK_EQ(sluice_error_retry_after_ns(e), 0);
	sluice_error_set_retry_after_ns(e, 5 * SLUICE_NS_PER_S);
	CHECK_EQ(sluice_error_retry_after_ns(e), 5 * SLUICE_NS_PER_S);
	sluice_error_set_retry_after_ns(e, -3);
	CHECK_EQ(sluice_error_retry_after_ns(e), 0);
	sluice_error_set_retry_after_ns(e, INT64_MAX);
	CHECK_EQ(sluice_error_retry_after_ns(e), INT64_MAX);
	sluice_error_free(e);
}

static void
test_class_names(void)
{
	CHECK_STREQ(sluice_class_name(SLUICE_CLASS_OK), "ok");
	CHECK_STREQ(sluice_class_name(SLUICE_CLASS_TIMEOUT), "timeout");
	CHECK_STREQ(sluice_class_name(SLUICE_CLASS_TEMPORARY), "temporary");
	CHECK_STREQ(sluice_class_name(SLUICE_CLASS_PERMANENT), "permanent");
	CHECK_STREQ(sluice_class_name(SLUICE_CLASS_CANCELED), "canceled");
	CHECK_STREQ(sluice_class_name((enum sluice_class)SLUICE_CLASS_COUNT),
		    "unknown");
}

/* ---- message truncation -------------------------------------------------- */

/* An error whose message is @n copies of 'a' followed by @tail. */
static struct sluice_error *
with_as(size_t n, const char *tail)
{
	char buf[600];

	CHECK_LT(n, sizeof(buf));
	memset(buf, 'a', n);
	buf[n] = '\0';
	return sluice_error_new(SLUICE_CLASS_PERMANENT, 0, "%s%s", buf, tail);
}

static void
check_all_as(const struct sluice_error *e, size_t n)
{
	const char *m = sluice_error_msg(e);
	size_t i;

	CHECK_EQ(strlen(m), n);
	for (i = 0; i < n; i++)
		CHECK_EQ(m[i], 'a');
}

static void
test_message_truncation(void)
{
	static const char *const utf8[] = { "\xc3\xa9", "\xe2\x82\xac",
					    "\xf0\x9f\x98\x80" };
	struct sluice_error *e;
	size_t i, len;

	e = with_as(254, "");
	check_all_as(e, 254);
	sluice_error_free(e);
	e = with_as(255, "");
	check_all_as(e, 255);
	sluice_error_free(e);
	e = with_as(256, "");
	check_all_as(e, 255);
	sluice_error_free(e);
	e = with_as(500, "");
	check_all_as(e, 255);
	sluice_error_free(e);

	/*
	 * A multi-byte character that fits whole stays; one split by the
	 * 255-byte cut goes entirely, never leaving half a character.
	 */
	for (i = 0; i < NELEM(utf8); i++) {
		len = strlen(utf8[i]);
		e = with_as(255 - len, utf8[i]);
		CHECK_EQ(strlen(sluice_error_msg(e)), 255);
		CHECK_STREQ(sluice_error_msg(e) + 255 - len, utf8[i]);
		sluice_error_free(e);
		e = with_as(255 - len + 1, utf8[i]);
		check_all_as(e, 255 - len + 1);
		sluice_error_free(e);
		if (len > 2) {
			e = with_as(255 - 1, utf8[i]);
			check_all_as(e, 254);
			sluice_error_free(e);
		}
	}

	/* An invalid class with a long message still fits. */
	{
		char buf[400];

		memset(buf, 'b', sizeof(buf) - 1);
		buf[sizeof(buf) - 1] = '\0';
		e = sluice_error_new(SLUICE_CLASS_OK, 1, "%s", buf);
		CHECK_EQ(strlen(sluice_error_msg(e)), 255);
		CHECK_EQ(strncmp(sluice_error_msg(e), "invalid error class 0",
				 21),
			 0);
		sluice_error_free(e);
	}
}

/* ---- wrapping and formatting --------------------------------------------- */

static void
test_wrap_chain_and_format(void)
{
	static const char want[] = "permanent: temporary: fetch failed: "
				   "timeout: read timed out after 250 ms";
	struct sluice_error *inner, *mid, *top;
	char buf[sizeof(want) + 16];
	size_t size, n, k;

	inner = sluice_error_new(SLUICE_CLASS_TIMEOUT, SLUICE_ETIMEDOUT,
				 "read timed out after %d ms", 250);
	mid = sluice_error_wrap(inner, SLUICE_CLASS_TEMPORARY, SLUICE_EIO,
				"fetch failed");
	top = sluice_error_wrap(mid, SLUICE_CLASS_PERMANENT, 0, "%s", "");
	CHECK(sluice_error_cause(top) == mid);
	CHECK(sluice_error_cause(mid) == inner);
	CHECK(sluice_error_cause(inner) == NULL);
	CHECK_EQ(sluice_error_code(mid), SLUICE_EIO);
	CHECK_EQ(sluice_error_class(top), SLUICE_CLASS_PERMANENT);

	CHECK_EQ(sluice_error_format(top, buf, sizeof(buf)), strlen(want));
	CHECK_STREQ(buf, want);
	CHECK_EQ(sluice_error_format(inner, buf, sizeof(buf)),
		 strlen("timeout: read timed out after 250 ms"));
	CHECK_STREQ(buf, "timeout: read timed out after 250 ms");
	CHECK_EQ(sluice_error_format(top, NULL, 0), strlen(want));

	/* snprintf semantics at every size, and no write past @size. */
	for (size = 0; size <= sizeof(want) + 1; size++) {
		memset(buf, '#', sizeof(buf));
		n = sluice_error_format(top, buf, size);
		CHECK_EQ(n, strlen(want));
		if (size > 0) {
			k = size - 1 < n ? size - 1 : n;
			CHECK_EQ(buf[k], '\0');
			CHECK_MEMEQ(buf, want, k);
		}
		for (k = size; k < sizeof(buf); k++)
			CHECK_EQ(buf[k], '#');
	}
	sluice_error_free(top);

	/* Wrapping NULL is a plain error. */
	top = sluice_error_wrap(NULL, SLUICE_CLASS_CANCELED, 0, "stop");
	CHECK(sluice_error_cause(top) == NULL);
	CHECK_EQ(sluice_error_format(top, buf, sizeof(buf)),
		 strlen("canceled: stop"));
	CHECK_STREQ(buf, "canceled: stop");
	sluice_error_free(top);
	CHECK_NO_LEAKS();
}

/* ---- out of memory ------------------------------------------------------- */

static void
check_is_oom(const struct sluice_error *e)
{
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(sluice_error_code(e), SLUICE_ENOMEM);
	CHECK_STREQ(sluice_error_msg(e), "out of memory");
	CHECK(sluice_error_cause(e) == NULL);
	CHECK_EQ(sluice_error_retry_after_ns(e), 0);
}

static void
test_oom_new(void)
{
	struct sluice_error *e, *e2, *ok;

	sl_alloc_fail_after(1, 0);
	e = sluice_error_new(SLUICE_CLASS_PERMANENT, 7, "never %s", "seen");
	check_is_oom(e);
	/* It is shared and read-only: a hint must not stick to it. */
	sluice_error_set_retry_after_ns(e, 5 * SLUICE_NS_PER_S);
	CHECK_EQ(sluice_error_retry_after_ns(e), 0);
	sluice_error_free(e);
	sluice_error_free(e);
	check_is_oom(e);

	/* Non-sticky: the next allocation succeeds again. */
	ok = sluice_error_new(SLUICE_CLASS_PERMANENT, 7, "seen");
	CHECK_EQ(sluice_error_code(ok), 7);
	sluice_error_free(ok);

	sl_alloc_fail_after(1, 1);
	e = sluice_error_new(SLUICE_CLASS_TIMEOUT, 1, "a");
	e2 = sluice_error_from_http(503, "10", 0);
	check_is_oom(e);
	check_is_oom(e2);
	sl_alloc_fail_after(0, 0);
	sluice_error_free(e);
	sluice_error_free(e2);
	CHECK_NO_LEAKS();
}

static void
test_oom_wrap_frees_cause(void)
{
	struct sluice_error *inner, *mid, *top;
	char buf[128];

	/* A two-link cause, taken by a wrap that cannot allocate. */
	inner = sluice_error_new(SLUICE_CLASS_TIMEOUT, 1, "inner");
	mid = sluice_error_wrap(inner, SLUICE_CLASS_TEMPORARY, 2, "mid");
	sl_alloc_fail_after(1, 0);
	top = sluice_error_wrap(mid, SLUICE_CLASS_PERMANENT, 3, "top");
	check_is_oom(top);
	sluice_error_free(top);
	CHECK_NO_LEAKS();

	/* The OOM error can itself be a cause; freeing skips it. */
	sl_alloc_fail_after(1, 0);
	inner = sluice_error_new(SLUICE_CLASS_TIMEOUT, 1, "inner");
	check_is_oom(inner);
	top = sluice_error_wrap(inner, SLUICE_CLASS_PERMANENT, 3, "outer");
	CHECK(sluice_error_cause(top) == inner);
	sluice_error_format(top, buf, sizeof(buf));
	CHECK_STREQ(buf, "permanent: outer: temporary: out of memory");
	sluice_error_free(top);
	check_is_oom(inner);
	CHECK_NO_LEAKS();
}

/* ---- errno --------------------------------------------------------------- */

static const struct {
	int err;
	enum sluice_class cls;
} errno_table[] = {
	{ 0, SLUICE_CLASS_OK },
	{ ETIMEDOUT, SLUICE_CLASS_TIMEOUT },
	{ ETIME, SLUICE_CLASS_TIMEOUT },
	{ ECANCELED, SLUICE_CLASS_CANCELED },
	{ EAGAIN, SLUICE_CLASS_TEMPORARY },
	{ EWOULDBLOCK, SLUICE_CLASS_TEMPORARY },
	{ EINTR, SLUICE_CLASS_TEMPORARY },
	{ EBUSY, SLUICE_CLASS_TEMPORARY },
	{ ETXTBSY, SLUICE_CLASS_TEMPORARY },
	{ EINPROGRESS, SLUICE_CLASS_TEMPORARY },
	{ EALREADY, SLUICE_CLASS_TEMPORARY },
	{ EDEADLK, SLUICE_CLASS_TEMPORARY },
	{ ENOLCK, SLUICE_CLASS_TEMPORARY },
	{ ECONNREFUSED, SLUICE_CLASS_TEMPORARY },
	{ ECONNRESET, SLUICE_CLASS_TEMPORARY },
	{ ECONNABORTED, SLUICE_CLASS_TEMPORARY },
	{ EPIPE, SLUICE_CLASS_TEMPORARY },
	{ ENOTCONN, SLUICE_CLASS_TEMPORARY },
	{ ESHUTDOWN, SLUICE_CLASS_TEMPORARY },
	{ EHOSTUNREACH, SLUICE_CLASS_TEMPORARY },
	{ EHOSTDOWN, SLUICE_CLASS_TEMPORARY },
	{ ENETUNREACH, SLUICE_CLASS_TEMPORARY },
	{ ENETDOWN, SLUICE_CLASS_TEMPORARY },
	{ ENETRESET, SLUICE_CLASS_TEMPORARY },
	{ ENONET, SLUICE_CLASS_TEMPORARY },
	{ ENOLINK, SLUICE_CLASS_TEMPORARY },
	{ ECOMM, SLUICE_CLASS_TEMPORARY },
	{ EREMOTEIO, SLUICE_CLASS_TEMPORARY },
	{ EADDRINUSE, SLUICE_CLASS_TEMPORARY },
	{ EADDRNOTAVAIL, SLUICE_CLASS_TEMPORARY },
	{ ENOBUFS, SLUICE_CLASS_TEMPORARY },
	{ ENOSR, SLUICE_CLASS_TEMPORARY },
	{ ENOMEM, SLUICE_CLASS_TEMPORARY },
	{ EMFILE, SLUICE_CLASS_TEMPORARY },
	{ ENFILE, SLUICE_CLASS_TEMPORARY },
	{ ENOSPC, SLUICE_CLASS_TEMPORARY },
	{ EDQUOT, SLUICE_CLASS_TEMPORARY },
	{ EIO, SLUICE_CLASS_TEMPORARY },
	{ ESTALE, SLUICE_CLASS_TEMPORARY },
	/* the request itself is wrong */
	{ EINVAL, SLUICE_CLASS_PERMANENT },
	{ ENOENT, SLUICE_CLASS_PERMANENT },
	{ EEXIST, SLUICE_CLASS_PERMANENT },
	{ EACCES, SLUICE_CLASS_PERMANENT },
	{ EPERM, SLUICE_CLASS_PERMANENT },
	{ EMSGSIZE, SLUICE_CLASS_PERMANENT },
	{ EBADF, SLUICE_CLASS_PERMANENT },
	{ EFAULT, SLUICE_CLASS_PERMANENT },
	{ ENOTDIR, SLUICE_CLASS_PERMANENT },
	{ EISDIR, SLUICE_CLASS_PERMANENT },
	{ EROFS, SLUICE_CLASS_PERMANENT },
	{ EFBIG, SLUICE_CLASS_PERMANENT },
	{ E2BIG, SLUICE_CLASS_PERMANENT },
	{ ERANGE, SLUICE_CLASS_PERMANENT },
	{ EDOM, SLUICE_CLASS_PERMANENT },
	{ ENAMETOOLONG, SLUICE_CLASS_PERMANENT },
	{ ENOSYS, SLUICE_CLASS_PERMANENT },
	{ EOPNOTSUPP, SLUICE_CLASS_PERMANENT },
	{ EPROTO, SLUICE_CLASS_PERMANENT },
	{ EBADMSG, SLUICE_CLASS_PERMANENT },
	{ EILSEQ, SLUICE_CLASS_PERMANENT },
	{ ENOTSOCK, SLUICE_CLASS_PERMANENT },
	{ EAFNOSUPPORT, SLUICE_CLASS_PERMANENT },
	{ 999, SLUICE_CLASS_PERMANENT },
	{ INT_MAX, SLUICE_CLASS_PERMANENT },
	/* project return codes (negated like errno) */
	{ -SLUICE_ECLOSED, SLUICE_CLASS_TEMPORARY },
	{ -SLUICE_EDISCONNECTED, SLUICE_CLASS_TEMPORARY },
	{ -SLUICE_ESTALE, SLUICE_CLASS_TEMPORARY },
	{ -SLUICE_ESTATE, SLUICE_CLASS_PERMANENT },
	{ -SLUICE_CODE_HANDLER, SLUICE_CLASS_PERMANENT },
};

static void
test_classify_errno(void)
{
	size_t i;

	for (i = 0; i < NELEM(errno_table); i++) {
		int e = errno_table[i].err;

		if (sluice_classify_errno(e) != errno_table[i].cls ||
		    sluice_classify_errno(-e) != errno_table[i].cls) {
			fprintf(stderr, "  errno %d (%s)\n", e,
				sluice_err_name(-e));
		}
		CHECK_EQ(sluice_classify_errno(e), errno_table[i].cls);
		CHECK_EQ(sluice_classify_errno(-e), errno_table[i].cls);
	}
	CHECK_EQ(sluice_classify_errno(INT_MIN), SLUICE_CLASS_PERMANENT);
	CHECK_EQ(sluice_classify_errno(SLUICE_ETIMEDOUT), SLUICE_CLASS_TIMEOUT);
	CHECK_EQ(sluice_classify_errno(SLUICE_ECANCELED),
		 SLUICE_CLASS_CANCELED);
}

/* ---- child exit statuses ------------------------------------------------- */

enum { BY_SIGKILL = -1, BY_ABORT = -2, BY_SIGTERM = -3, BY_STOP = -4 };

/* The waitpid() status of a real child that ends as @how says. */
static int
child_status(int how)
{
	struct rlimit no_core = { 0, 0 };
	pid_t pid;
	int st = 0;

	fflush(NULL);
	pid = fork();
	CHECK_GE(pid, 0);
	if (pid == 0) {
		setrlimit(RLIMIT_CORE, &no_core); /* abort() leaves no core */
		switch (how) {
		case BY_SIGKILL:
			raise(SIGKILL);
			break;
		case BY_ABORT:
			abort();
		case BY_SIGTERM:
			raise(SIGTERM);
			break;
		case BY_STOP:
			raise(SIGSTOP);
			break;
		default:
			_exit(how);
		}
		_exit(100);
	}
	if (how == BY_STOP) {
		CHECK_EQ(waitpid(pid, &st, WUNTRACED), pid);
		CHECK(WIFSTOPPED(st));
		kill(pid, SIGKILL);
		{
			int reaped;

			CHECK_EQ(waitpid(pid, &reaped, 0), pid);
		}
		return st;
	}
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	return st;
}

static void
test_classify_exit(void)
{
	const enum sluice_class others[] = { SLUICE_CLASS_TIMEOUT,
					     SLUICE_CLASS_TEMPORARY,
					     SLUICE_CLASS_PERMANENT,
					     SLUICE_CLASS_CANCELED };
	int ok = child_status(0), temp = child_status(75);
	int data = child_status(65), three = child_status(3);
	int high = child_status(255), killed = child_status(BY_SIGKILL);
	int aborted = child_status(BY_ABORT), termed = child_status(BY_SIGTERM);
	int stopped = child_status(BY_STOP);
	size_t i;

	for (i = 0; i < NELEM(others); i++) {
		CHECK_EQ(sluice_classify_exit(ok, others[i]), SLUICE_CLASS_OK);
		CHECK_EQ(sluice_classify_exit(temp, others[i]),
			 SLUICE_CLASS_TEMPORARY);
		CHECK_EQ(sluice_classify_exit(data, others[i]),
			 SLUICE_CLASS_PERMANENT);
		CHECK_EQ(sluice_classify_exit(three, others[i]), others[i]);
		CHECK_EQ(sluice_classify_exit(high, others[i]), others[i]);
		CHECK_EQ(sluice_classify_exit(killed, others[i]),
			 SLUICE_CLASS_TEMPORARY);
		CHECK_EQ(sluice_classify_exit(aborted, others[i]),
			 SLUICE_CLASS_TEMPORARY);
		CHECK_EQ(sluice_classify_exit(termed, others[i]),
			 SLUICE_CLASS_TEMPORARY);
		CHECK_EQ(sluice_classify_exit(stopped, others[i]),
			 SLUICE_CLASS_PERMANENT);
	}
	/* OK passes through when the caller asks; nonsense is PERMANENT. */
	CHECK_EQ(sluice_classify_exit(three, SLUICE_CLASS_OK), SLUICE_CLASS_OK);
	CHECK_EQ(sluice_classify_exit(three,
				      (enum sluice_class)SLUICE_CLASS_COUNT),
		 SLUICE_CLASS_PERMANENT);
	CHECK_EQ(sluice_classify_exit(three, (enum sluice_class) - 1),
		 SLUICE_CLASS_PERMANENT);
}

static void
check_crash(int st, const char *abbrev, int sig)
{
	struct sluice_error *e = sluice_error_from_exit(st, SLUICE_CLASS_OK);
	char want[64];

	snprintf(want, sizeof(want), "killed by signal SIG%s (%d): ", abbrev,
		 sig);
	CHECK(e != NULL);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(sluice_error_code(e), SLUICE_CODE_CRASH);
	if (strncmp(sluice_error_msg(e), want, strlen(want)) != 0)
		fprintf(stderr, "  got \"%s\"\n", sluice_error_msg(e));
	CHECK_EQ(strncmp(sluice_error_msg(e), want, strlen(want)), 0);
	CHECK_GT(strlen(sluice_error_msg(e)), strlen(want));
	sluice_error_free(e);
}

static void
test_error_from_exit(void)
{
	struct sluice_error *e;

	CHECK(sluice_error_from_exit(child_status(0), SLUICE_CLASS_PERMANENT) ==
	      NULL);
	CHECK(sluice_error_from_exit(child_status(3), SLUICE_CLASS_OK) == NULL);

	e = sluice_error_from_exit(child_status(3), SLUICE_CLASS_PERMANENT);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_PERMANENT);
	CHECK_EQ(sluice_error_code(e), 3);
	CHECK_STREQ(sluice_error_msg(e), "exited with status 3");
	sluice_error_free(e);

	e = sluice_error_from_exit(child_status(75), SLUICE_CLASS_PERMANENT);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(sluice_error_code(e), 75);
	CHECK_STREQ(sluice_error_msg(e), "exited with status 75");
	sluice_error_free(e);

	e = sluice_error_from_exit(child_status(65), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_PERMANENT);
	CHECK_EQ(sluice_error_code(e), 65);
	CHECK_STREQ(sluice_error_msg(e), "exited with status 65");
	sluice_error_free(e);

	check_crash(child_status(BY_SIGKILL), "KILL", SIGKILL);
	check_crash(child_status(BY_ABORT), "ABRT", SIGABRT);
	check_crash(child_status(BY_SIGTERM), "TERM", SIGTERM);

	e = sluice_error_from_exit(child_status(BY_STOP), SLUICE_CLASS_OK);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_PERMANENT);
	CHECK_EQ(sluice_error_code(e), SLUICE_CODE_HANDLER);
	sluice_error_free(e);
}

/* ---- HTTP ---------------------------------------------------------------- */

static void
test_classify_http(void)
{
	static const struct {
		int status;
		enum sluice_class cls;
	} t[] = {
		{ 0, SLUICE_CLASS_PERMANENT },
		{ -200, SLUICE_CLASS_PERMANENT },
		{ 100, SLUICE_CLASS_PERMANENT },
		{ 199, SLUICE_CLASS_PERMANENT },
		{ 200, SLUICE_CLASS_OK },
		{ 204, SLUICE_CLASS_OK },
		{ 299, SLUICE_CLASS_OK },
		{ 300, SLUICE_CLASS_PERMANENT },
		{ 304, SLUICE_CLASS_PERMANENT },
		{ 399, SLUICE_CLASS_PERMANENT },
		{ 400, SLUICE_CLASS_PERMANENT },
		{ 404, SLUICE_CLASS_PERMANENT },
		{ 407, SLUICE_CLASS_PERMANENT },
		{ 408, SLUICE_CLASS_TEMPORARY },
		{ 409, SLUICE_CLASS_PERMANENT },
		{ 428, SLUICE_CLASS_PERMANENT },
		{ 429, SLUICE_CLASS_TEMPORARY },
		{ 430, SLUICE_CLASS_PERMANENT },
		{ 499, SLUICE_CLASS_PERMANENT },
		{ 500, SLUICE_CLASS_TEMPORARY },
		{ 503, SLUICE_CLASS_TEMPORARY },
		{ 599, SLUICE_CLASS_TEMPORARY },
		{ 600, SLUICE_CLASS_PERMANENT },
		{ 999, SLUICE_CLASS_PERMANENT },
		{ INT_MAX, SLUICE_CLASS_PERMANENT },
	};
	size_t i;

	for (i = 0; i < NELEM(t); i++) {
		struct sluice_error *e;
		char want[32];

		if (sluice_classify_http(t[i].status) != t[i].cls)
			fprintf(stderr, "  status %d\n", t[i].status);
		CHECK_EQ(sluice_classify_http(t[i].status), t[i].cls);
		e = sluice_error_from_http(t[i].status, NULL, 0);
		if (t[i].cls == SLUICE_CLASS_OK) {
			CHECK(e == NULL);
			continue;
		}
		snprintf(want, sizeof(want), "HTTP %d", t[i].status);
		CHECK_EQ(sluice_error_class(e), t[i].cls);
		CHECK_EQ(sluice_error_code(e), t[i].status);
		CHECK_STREQ(sluice_error_msg(e), want);
		CHECK_EQ(sluice_error_retry_after_ns(e), 0);
		sluice_error_free(e);
	}
}

static void
test_error_from_http_retry_after(void)
{
	const int64_t now = 784111777; /* Sun, 06 Nov 1994 08:49:37 GMT */
	struct sluice_error *e;

	e = sluice_error_from_http(503, "120", now);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(sluice_error_retry_after_ns(e), 120 * SLUICE_NS_PER_S);
	sluice_error_free(e);

	e = sluice_error_from_http(429, "Sun, 06 Nov 1994 08:50:37 GMT", now);
	CHECK_EQ(sluice_error_retry_after_ns(e), 60 * SLUICE_NS_PER_S);
	sluice_error_free(e);

	/* Unparsable, past, or on a permanent error: no hint. */
	e = sluice_error_from_http(503, "soon", now);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_TEMPORARY);
	CHECK_EQ(sluice_error_retry_after_ns(e), 0);
	sluice_error_free(e);
	e = sluice_error_from_http(503, "Sun, 06 Nov 1994 08:48:37 GMT", now);
	CHECK_EQ(sluice_error_retry_after_ns(e), 0);
	sluice_error_free(e);
	e = sluice_error_from_http(404, "120", now);
	CHECK_EQ(sluice_error_class(e), SLUICE_CLASS_PERMANENT);
	CHECK_EQ(sluice_error_retry_after_ns(e), 0);
	sluice_error_free(e);
	CHECK(sluice_error_from_http(200, "120", now) == NULL);
}

/* ---- Retry-After --------------------------------------------------------- */

#define MAX_HINT_NS ((int64_t)INT32_MAX * SLUICE_NS_PER_S)

static void
test_retry_after_delta(void)
{
	static const char *const bad[] = {
		"",
		" ",
		"\t \t",
		"-1",
		"+1",
		"1.5",
		"1 2",
		"12a",
		"a12",
		"0x10",
		"1e3",
		"\xef\xbc\x91",
		"9223372036854775808",
		"99999999999999999999999",
		"1\n",
		"\v1",
	};
	size_t i;

	CHECK_EQ(sluice_parse_retry_after("0", 0), 0);
	CHECK_EQ(sluice_parse_retry_after("1", 0), SLUICE_NS_PER_S);
	CHECK_EQ(sluice_parse_retry_after("120", 5), 120 * SLUICE_NS_PER_S);
	CHECK_EQ(sluice_parse_retry_after(" \t7 \t", 0), 7 * SLUICE_NS_PER_S);
	CHECK_EQ(sluice_parse_retry_after("007", 0), 7 * SLUICE_NS_PER_S);
	CHECK_EQ(sluice_parse_retry_after("2147483647", 0), MAX_HINT_NS);
	/* Representable but absurd: capped, not an error. */
	CHECK_EQ(sluice_parse_retry_after("2147483648", 0), MAX_HINT_NS);
	CHECK_EQ(sluice_parse_retry_after("9223372036854775807", 0),
		 MAX_HINT_NS);
	CHECK_EQ(sluice_parse_retry_after(NULL, 0), SLUICE_EINVAL);
	for (i = 0; i < NELEM(bad); i++) {
		if (sluice_parse_retry_after(bad[i], 0) != SLUICE_EINVAL)
			fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
		CHECK_EQ(sluice_parse_retry_after(bad[i], 0), SLUICE_EINVAL);
	}
}

static const int64_t t_1994 = 784111777; /* Sun, 06 Nov 1994 08:49:37 GMT */

static const char *const valid_dates[] = {
	"Sun, 06 Nov 1994 08:49:37 GMT",
	"Sunday, 06-Nov-94 08:49:37 GMT",
	"Sun Nov  6 08:49:37 1994",
	"Sun Nov 06 08:49:37 1994",
};

static void
test_retry_after_dates(void)
{
	static const char *const bad[] = {
		"sun, 06 Nov 1994 08:49:37 GMT",
		"Sun, 06 nov 1994 08:49:37 GMT",
		"Sun, 06 Nov 1994 08:49:37 gmt",
		"Sun, 06 Nov 1994 08:49:37 UTC",
		"Sun, 6 Nov 1994 08:49:37 GMT",
		"Sun,  6 Nov 1994 08:49:37 GMT",
		"Sun, 06 Nov 94 08:49:37 GMT",
		"Sun, 06 Nov 1994 8:49:37 GMT",
		"Sun, 06 Nov 1994 08:49:37 GMTx",
		"Sun, 06 Nov 1994 08:49:37 GMT GMT",
		"Sun 06 Nov 1994 08:49:37 GMT",
		"Sun,06 Nov 1994 08:49:37 GMT",
		"Sunday, 06 Nov 1994 08:49:37 GMT",
		"Sun, 06-Nov-94 08:49:37 GMT",
		"Sunday, 06-Nov-1994 08:49:37 GMT",
		"Sunday 06-Nov-94 08:49:37 GMT",
		"Sun Nov 6 08:49:37 1994",
		"Sun Nov  6 08:49:37 94",
		"Sun Nov  6 08:49:37 1994 GMT",
		"Sun Nov   6 08:49:37 1994",
		"Sun Nov  16 08:49:37 1994",
		"Sunday Nov  6 08:49:37 1994",
		"Fun, 06 Nov 1994 08:49:37 GMT",
		"Sun, 06 Nob 1994 08:49:37 GMT",
		"Sun, 00 Nov 1994 08:49:37 GMT",
		"Sun, 31 Nov 1994 08:49:37 GMT",
		"Wed, 29 Feb 1995 00:00:00 GMT",
		"Mon, 29 Feb 1900 00:00:00 GMT",
		"Sun, 06 Nov 1994 24:00:00 GMT",
		"Sun, 06 Nov 1994 08:60:00 GMT",
		"Sun, 06 Nov 1994 08:49:61 GMT",
		"Sun, 06 Nov 1994 08:49:3x GMT",
		"Sun, 06 Nov 1994 08-49-37 GMT",
		"Sun, 06 Nov 1994 08:49:37",
		"Sun",
		"GMT",
	};
	size_t i;

	for (i = 0; i < NELEM(valid_dates); i++) {
		const char *d = valid_dates[i];

		CHECK_EQ(sluice_parse_retry_after(d, t_1994 - 100),
			 100 * SLUICE_NS_PER_S);
		CHECK_EQ(sluice_parse_retry_after(d, t_1994 - 1),
			 SLUICE_NS_PER_S);
		/* Now and the past need no wait. */
		CHECK_EQ(sluice_parse_retry_after(d, t_1994), 0);
		CHECK_EQ(sluice_parse_retry_after(d, t_1994 + 1), 0);
		CHECK_EQ(sluice_parse_retry_after(d, t_1994 + 100000000), 0);
	}
	CHECK_EQ(sluice_parse_retry_after("  Sun, 06 Nov 1994 08:49:37 GMT\t",
					  t_1994 - 2),
		 2 * SLUICE_NS_PER_S);
	CHECK_EQ(sluice_parse_retry_after("Sun Nov 16 08:49:37 1994", t_1994),
		 INT64_C(10) * 86400 * SLUICE_NS_PER_S);
	/* Leap day and leap second (which carries into the next minute). */
	CHECK_EQ(sluice_parse_retry_after("Thu, 29 Feb 1996 00:00:00 GMT",
					  825552000 - 3),
		 3 * SLUICE_NS_PER_S);
	CHECK_EQ(sluice_parse_retry_after("Tue, 29 Feb 2000 00:00:00 GMT",
					  951782400 - 3),
		 3 * SLUICE_NS_PER_S);
	CHECK_EQ(sluice_parse_retry_after("Sun, 06 Nov 1994 08:49:60 GMT",
					  t_1994),
		 23 * SLUICE_NS_PER_S);
	/* Far future is capped; an extreme "now" cannot overflow. */
	CHECK_EQ(sluice_parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", 0),
		 MAX_HINT_NS);
	CHECK_EQ(sluice_parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT",
					  INT64_MIN),
		 MAX_HINT_NS);
	CHECK_EQ(sluice_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT",
					  INT64_MAX),
		 0);
	for (i = 0; i < NELEM(bad); i++) {
		if (sluice_parse_retry_after(bad[i], 0) != SLUICE_EINVAL)
			fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
		CHECK_EQ(sluice_parse_retry_after(bad[i], 0), SLUICE_EINVAL);
	}
}

/*
 * RFC 850's two-digit year lies in (now - 50 years, now + 50 years]: a
 * year more than 50 years ahead is the most recent past one instead.
 */
static void
test_retry_after_rfc850_years(void)
{
	const int64_t t_2094 = 3939871777; /* Sat, 06 Nov 2094 08:49:37 GMT */
	const int64_t t_2050 = 2524608000; /* Sat, 01 Jan 2050 00:00:00 GMT */
	const char *d = "Sunday, 06-Nov-94 08:49:37 GMT";

	/* In 2050, "94" is 2094 (44 years ahead), not 1994. */
	CHECK_EQ(sluice_parse_retry_after(d, t_2050),
		 (t_2094 - t_2050) * SLUICE_NS_PER_S);
	/* In 2030, 2094 would be 64 years ahead: it is 1994, the past. */
	CHECK_EQ(sluice_parse_retry_after(d, t_2050 - INT64_C(20) * 31556952),
		 0);
	/* In 1970, "70" is 1970 itself. */
	CHECK_EQ(
		sluice_parse_retry_after("Thursday, 01-Jan-70 00:00:10 GMT", 0),
		10 * SLUICE_NS_PER_S);
}

/*
 * Put @len bytes of @s and a NUL so the NUL is the last readable byte
 * before a PROT_NONE page: any read past the terminator faults.
 */
static const char *
at_guard_page(char *area, size_t page, const char *s, size_t len)
{
	char *p = area + page - len - 1;

	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

static void
test_retry_after_every_prefix(void)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE), i, len;
	char *area;

	area = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(area != MAP_FAILED);
	CHECK_OK(mprotect(area + page, page, PROT_NONE));
	for (i = 0; i < NELEM(valid_dates); i++) {
		const char *d = valid_dates[i];

		for (len = 0; len < strlen(d); len++) {
			const char *p = at_guard_page(area, page, d, len);

			if (sluice_parse_retry_after(p, t_1994 - 5) !=
			    SLUICE_EINVAL)
				fprintf(stderr, "  accepted \"%s\"\n", p);
			CHECK_EQ(sluice_parse_retry_after(p, t_1994 - 5),
				 SLUICE_EINVAL);
		}
		CHECK_EQ(sluice_parse_retry_after(
				 at_guard_page(area, page, d, strlen(d)),
				 t_1994 - 5),
			 5 * SLUICE_NS_PER_S);
	}
	/* Every prefix of a delta is itself a delta. */
	{
		const char *d = "86400";

		for (len = 1; len <= strlen(d); len++) {
			int64_t want = 0;

			for (i = 0; i < len; i++)
				want = want * 10 + (d[i] - '0');
			CHECK_EQ(sluice_parse_retry_after(
					 at_guard_page(area, page, d, len), 0),
				 want * SLUICE_NS_PER_S);
		}
	}
	CHECK_OK(munmap(area, 2 * page));
}

/* ---- code texts ---------------------------------------------------------- */

static const struct {
	const char *name;
	int value;
	const char *text;
} err_map[] = {
#define ROW(name, value, text) { "SLUICE_" #name, SLUICE_##name, text },
	SLUICE_ERR_MAP(ROW)
#undef ROW
};

static void
test_strerror_and_names(void)
{
	size_t i, j;

	for (i = 0; i < NELEM(err_map); i++) {
		CHECK_STREQ(sluice_strerror(err_map[i].value), err_map[i].text);
		CHECK_STREQ(sluice_err_name(err_map[i].value), err_map[i].name);
		for (j = 0; j < i; j++)
			CHECK_NE(err_map[i].value, err_map[j].value);
	}
	CHECK_STREQ(sluice_err_name(SLUICE_ETIMEDOUT), "SLUICE_ETIMEDOUT");
	CHECK_STREQ(sluice_strerror(SLUICE_OK), "success");
	CHECK_STREQ(sluice_err_name(SLUICE_OK), "SLUICE_OK");

	/* A -errno the map does not name gets the C library's text. */
	CHECK_STREQ(sluice_strerror(-EPIPE), strerrordesc_np(EPIPE));
	CHECK_STREQ(sluice_strerror(-ECONNREFUSED),
		    strerrordesc_np(ECONNREFUSED));
	CHECK(sluice_strerror(-EPIPE) == sluice_strerror(-EPIPE));
	CHECK_STREQ(sluice_err_name(-EPIPE), "SLUICE_E?");

	/* Unknown codes: positive, unused project numbers, nonsense. */
	CHECK_STREQ(sluice_strerror(12345), "unknown error");
	CHECK_STREQ(sluice_strerror(1), "unknown error");
	CHECK_STREQ(sluice_strerror(-999), "unknown error");
	CHECK_STREQ(sluice_strerror(-5000), "unknown error");
	CHECK_STREQ(sluice_strerror(SLUICE_CODE_CRASH), "unknown error");
	CHECK_STREQ(sluice_strerror(INT_MIN), "unknown error");
	CHECK_STREQ(sluice_strerror(INT_MAX), "unknown error");
	CHECK_STREQ(sluice_err_name(12345), "SLUICE_E?");
	CHECK_STREQ(sluice_err_name(-5000), "SLUICE_E?");
	CHECK_STREQ(sluice_err_name(INT_MIN), "SLUICE_E?");
}

CHECK_MAIN(test_new_each_class, test_new_invalid_class, test_null_is_success,
	   test_retry_after_hint, test_class_names, test_message_truncation,
	   test_wrap_chain_and_format, test_oom_new, test_oom_wrap_frees_cause,
	   test_classify_errno, test_classify_exit, test_error_from_exit,
	   test_classify_http, test_error_from_http_retry_after,
	   test_retry_after_delta, test_retry_after_dates,
	   test_retry_after_rfc850_years, test_retry_after_every_prefix,
	   test_strerror_and_names)
