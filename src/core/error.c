/* SPDX-License-Identifier: MIT */
/*
 * error.c - error values, their classifiers, and the text of return codes.
 *
 * An error value is one heap block: class, code, retry hint, an owned cause
 * and a fixed 256-byte message, so building one costs a single allocation
 * and a failed allocation can be reported without another.  When that one
 * allocation fails the constructors hand out oom_error, a static TEMPORARY
 * SLUICE_ENOMEM error shared by every thread: it is never written after
 * load (set_retry_after ignores it) and never freed (free skips it wherever
 * it sits in a chain), so sharing it needs no lock.
 *
 * Invariants: cls is always TIMEOUT..CANCELED (never OK); msg is always
 * NUL-terminated valid text cut at a UTF-8 character boundary; a chain owns
 * every cause below it exactly once and has no cycle.
 *
 * Everything returned as text (strerror, err_name, class and signal names)
 * is static, so all of this is callable from any thread without locks.
 */
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <sluice/common.h>
#include <sluice/error.h>

#include "util/alloc.h"

#define MSG_SIZE 256

struct sluice_error {
	enum sluice_class cls;
	int code;
	int64_t retry_after_ns;     /* 0 = no hint */
	struct sluice_error *cause; /* owned; NULL at the end of the chain */
	char msg[MSG_SIZE];
};

/* Read-only after load; see the file comment. */
static struct sluice_error oom_error = {
	.cls = SLUICE_CLASS_TEMPORARY,
	.code = SLUICE_ENOMEM,
	.retry_after_ns = 0,
	.cause = NULL,
	.msg = "out of memory",
};

/* ---- return codes -------------------------------------------------------- */

/*
 * Text for a -errno that the map does not name.  strerror() is banned (its
 * buffer is shared) and strerror_r() may write into a caller buffer we could
 * not return, so use glibc's static description table; elsewhere fall back
 * to a fixed text rather than a racy one.
 */
#if defined(__GLIBC__) && \
	(__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
static const char *
errno_text(int err)
{
	return strerrordesc_np(err);
}

static const char *
signal_abbrev(int sig)
{
	return sigabbrev_np(sig);
}

static const char *
signal_text(int sig)
{
	return sigdescr_np(sig);
}
#else
static const char *
errno_text(int err)
{
	(void)err;
	return NULL;
}

static const char *
signal_abbrev(int sig)
{
	(void)sig;
	return NULL;
}

static const char *
signal_text(int sig)
{
	(void)sig;
	return NULL;
}
#endif

const char *
sluice_strerror(int code)
{
	const char *s;

	switch (code) {
	case SLUICE_OK:
		return "success";
#define SLUICE_ERR_TEXT(name, value, text) \
	case (value):                      \
		return text;
		SLUICE_ERR_MAP(SLUICE_ERR_TEXT)
#undef SLUICE_ERR_TEXT
	default:
		break;
	}
	/* A -errno outside the map (project codes are <= -1000). */
	if (code < 0 && code > SLUICE_ECLOSED) {
		s = errno_text(-code);
		if (s)
			return s;
	}
	return "unknown error";
}

const char *
sluice_err_name(int code)
{
	switch (code) {
	case SLUICE_OK:
		return "SLUICE_OK";
#define SLUICE_ERR_NAME(name, value, text) \
	case (value):                      \
		return "SLUICE_" #name;
		SLUICE_ERR_MAP(SLUICE_ERR_NAME)
#undef SLUICE_ERR_NAME
	default:
		return "SLUICE_E?";
	}
}

/* ---- construction -------------------------------------------------------- */

static bool
class_valid(enum sluice_class cls)
{
	return (int)cls > SLUICE_CLASS_OK && (int)cls < SLUICE_CLASS_COUNT;
}

/*
 * Cut @s (which vsnprintf truncated to MSG_SIZE - 1 bytes) back to the start
 * of a UTF-8 sequence that the cut split, so the message stays valid text
 * for logs and JSON.  Only continuation bytes and the lead byte before them
 * are dropped.
 */
static void
trim_utf8_tail(char *s, size_t len)
{
	size_t i = len, need;
	unsigned char lead;

	while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80 && len - i < 3)
		i--;
	if (i == 0)
		return;
	lead = (unsigned char)s[i - 1];
	if (lead < 0xC0)
		return; /* ASCII, or stray continuation bytes: leave as is */
	need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
	if (len - (i - 1) < need)
		s[i - 1] = '\0';
}

static struct sluice_error *build(struct sluice_error *cause,
				  enum sluice_class cls, int code,
				  const char *fmt, va_list ap)
	__attribute__((format(printf, 4, 0)));

static struct sluice_error *
build(struct sluice_error *cause, enum sluice_class cls, int code,
      const char *fmt, va_list ap)
{
	struct sluice_error *e;
	char orig[MSG_SIZE];
	int n;

	e = sl_malloc(sizeof(*e));
	if (!e) {
		/* We took @cause; nobody else will free it. */
		sluice_error_free(cause);
		return &oom_error;
	}
	e->cause = cause;
	e->retry_after_ns = 0;
	if (!fmt)
		fmt = "";
	n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	if (n < 0) {
		snprintf(e->msg, sizeof(e->msg), "(unformattable message)");
	} else if ((size_t)n >= sizeof(e->msg)) {
		trim_utf8_tail(e->msg, sizeof(e->msg) - 1);
	}
	if (class_valid(cls)) {
		e->cls = cls;
		e->code = code;
		return e;
	}
	/*
	 * A handler that "fails" with OK or a made-up class broke its
	 * contract.  Retrying cannot fix that, so it is PERMANENT, and the
	 * message keeps what was meant for diagnosis.
	 */
	memcpy(orig, e->msg, sizeof(orig));
	e->cls = SLUICE_CLASS_PERMANENT;
	e->code = SLUICE_CODE_HANDLER;
	n = snprintf(e->msg, sizeof(e->msg),
		     "invalid error class %d (code %d): %s", (int)cls, code,
		     orig);
	if (n > 0 && (size_t)n >= sizeof(e->msg))
		trim_utf8_tail(e->msg, sizeof(e->msg) - 1);
	return e;
}

struct sluice_error *
sluice_error_new(enum sluice_class cls, int code, const char *fmt, ...)
{
	struct sluice_error *e;
	va_list ap;

	va_start(ap, fmt);
	e = build(NULL, cls, code, fmt, ap);
	va_end(ap);
	return e;
}

struct sluice_error *
sluice_error_wrap(struct sluice_error *cause, enum sluice_class cls, int code,
		  const char *fmt, ...)
{
	struct sluice_error *e;
	va_list ap;

	va_start(ap, fmt);
	e = build(cause, cls, code, fmt, ap);
	va_end(ap);
	return e;
}

void
sluice_error_free(struct sluice_error *e)
{
	struct sluice_error *next;

	/* Iterative, so a long chain cannot exhaust the stack. */
	while (e) {
		next = e->cause;
		if (e != &oom_error)
			sl_free(e);
		e = next;
	}
}

/* ---- accessors ----------------------------------------------------------- */

enum sluice_class
sluice_error_class(const struct sluice_error *e)
{
	return e ? e->cls : SLUICE_CLASS_OK;
}

int
sluice_error_code(const struct sluice_error *e)
{
	return e ? e->code : 0;
}

const char *
sluice_error_msg(const struct sluice_error *e)
{
	return e ? e->msg : "";
}

const struct sluice_error *
sluice_error_cause(const struct sluice_error *e)
{
	return e ? e->cause : NULL;
}

int64_t
sluice_error_retry_after_ns(const struct sluice_error *e)
{
	return e ? e->retry_after_ns : 0;
}

void
sluice_error_set_retry_after_ns(struct sluice_error *e, int64_t delay_ns)
{
	/* The shared OOM error is read-only: many threads may hold it. */
	if (!e || e == &oom_error)
		return;
	e->retry_after_ns = delay_ns > 0 ? delay_ns : 0;
}

bool
sluice_error_is_timeout(const struct sluice_error *e)
{
	return sluice_error_class(e) == SLUICE_CLASS_TIMEOUT;
}

bool
sluice_error_is_temporary(const struct sluice_error *e)
{
	enum sluice_class cls = sluice_error_class(e);

	return cls == SLUICE_CLASS_TIMEOUT || cls == SLUICE_CLASS_TEMPORARY;
}

const char *
sluice_class_name(enum sluice_class cls)
{
	switch (cls) {
	case SLUICE_CLASS_OK:
		return "ok";
	case SLUICE_CLASS_TIMEOUT:
		return "timeout";
	case SLUICE_CLASS_TEMPORARY:
		return "temporary";
	case SLUICE_CLASS_PERMANENT:
		return "permanent";
	case SLUICE_CLASS_CANCELED:
		return "canceled";
	default:
		return "unknown";
	}
}

/* ---- formatting ---------------------------------------------------------- */

struct out {
	char *buf;
	size_t size;
	size_t len; /* needed so far; may exceed size */
};

static void
put(struct out *o, const char *s)
{
	size_t n = strlen(s);

	if (o->len < o->size) {
		size_t room = o->size - 1 - o->len;
		size_t k = n < room ? n : room;

		memcpy(o->buf + o->len, s, k);
		o->buf[o->len + k] = '\0';
	}
	o->len += n;
}

/*
 * The format is every link of the chain, outermost first, as
 * "<class>: <message>", joined by ": ".  A link with an empty message
 * contributes only its class.  For example
 *   "temporary: fetch failed: timeout: read timed out"
 * NULL (success) is "ok".  Codes are not printed; ask sluice_error_code().
 */
size_t
sluice_error_format(const struct sluice_error *e, char *buf, size_t size)
{
	struct out o;

	o.buf = buf;
	o.size = buf ? size : 0;
	o.len = 0;
	if (o.size > 0)
		o.buf[0] = '\0';
	if (!e) {
		put(&o, sluice_class_name(SLUICE_CLASS_OK));
		return o.len;
	}
	for (; e; e = e->cause) {
		if (o.len > 0)
			put(&o, ": ");
		put(&o, sluice_class_name(e->cls));
		if (e->msg[0] != '\0') {
			put(&o, ": ");
			put(&o, e->msg);
		}
	}
	return o.len;
}

/* ---- errno --------------------------------------------------------------- */

/*
 * Which errno values are worth a retry.  The rule: a failure of time, of a
 * transport, or of a resource that comes back by itself (memory, buffers,
 * descriptors, locks, disk space an operator frees) is TEMPORARY; a failure
 * of the request itself (bad argument, missing or forbidden object, too
 * large) is PERMANENT.  When in doubt the table leans to TEMPORARY, because
 * max_attempts bounds the cost of a wrong retry while a wrong PERMANENT
 * dead-letters a message that would have gone through.  So EIO and ESTALE
 * (NFS) retry; EPROTO and EBADMSG (the peer sent garbage) do not.
 *
 * A table, not a switch: EAGAIN and EWOULDBLOCK may be the same number.
 */
static const struct {
	int err;
	enum sluice_class cls;
} errno_classes[] = {
	{ ETIMEDOUT, SLUICE_CLASS_TIMEOUT },
	{ ETIME, SLUICE_CLASS_TIMEOUT },
	{ ECANCELED, SLUICE_CLASS_CANCELED },
	/* try again */
	{ EAGAIN, SLUICE_CLASS_TEMPORARY },
	{ EWOULDBLOCK, SLUICE_CLASS_TEMPORARY },
	{ EINTR, SLUICE_CLASS_TEMPORARY },
	{ EBUSY, SLUICE_CLASS_TEMPORARY },
	{ ETXTBSY, SLUICE_CLASS_TEMPORARY },
	{ EINPROGRESS, SLUICE_CLASS_TEMPORARY },
	{ EALREADY, SLUICE_CLASS_TEMPORARY },
	{ EDEADLK, SLUICE_CLASS_TEMPORARY },
	{ ENOLCK, SLUICE_CLASS_TEMPORARY },
	/* network and transport */
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
	/* resources */
	{ ENOBUFS, SLUICE_CLASS_TEMPORARY },
	{ ENOSR, SLUICE_CLASS_TEMPORARY },
	{ ENOMEM, SLUICE_CLASS_TEMPORARY },
	{ EMFILE, SLUICE_CLASS_TEMPORARY },
	{ ENFILE, SLUICE_CLASS_TEMPORARY },
	{ ENOSPC, SLUICE_CLASS_TEMPORARY },
	{ EDQUOT, SLUICE_CLASS_TEMPORARY },
	{ EIO, SLUICE_CLASS_TEMPORARY },
	{ ESTALE, SLUICE_CLASS_TEMPORARY },
};

/*
 * Project return codes, classified by their negated value like -errno:
 * a closed or disconnected source and a lost lease come back by
 * themselves (the message is redelivered); ESTATE is a caller bug.
 * The SLUICE_CODE_* values are not return codes and are not classified
 * here (they end up PERMANENT).
 */
static enum sluice_class
classify_project(int err)
{
	switch (-err) {
	case SLUICE_ECLOSED:
	case SLUICE_EDISCONNECTED:
	case SLUICE_ESTALE:
		return SLUICE_CLASS_TEMPORARY;
	default:
		return SLUICE_CLASS_PERMANENT;
	}
}

enum sluice_class
sluice_classify_errno(int err)
{
	size_t i;

	if (err == INT_MIN)
		return SLUICE_CLASS_PERMANENT;
	if (err < 0)
		err = -err;
	if (err == 0)
		return SLUICE_CLASS_OK;
	if (err >= -SLUICE_ECLOSED)
		return classify_project(err);
	for (i = 0; i < sizeof(errno_classes) / sizeof(errno_classes[0]); i++) {
		if (errno_classes[i].err == err)
			return errno_classes[i].cls;
	}
	return SLUICE_CLASS_PERMANENT;
}

/* ---- child exit status --------------------------------------------------- */

#define EXIT_TEMPFAIL 75 /* sysexits.h EX_TEMPFAIL */
#define EXIT_DATAERR  65 /* sysexits.h EX_DATAERR */

/*
 * An @other_exit outside the enum is PERMANENT.  A status that is neither
 * an exit nor a death (a stop or continue report from WUNTRACED or
 * WCONTINUED) means the caller treated a live child as finished; retrying
 * cannot fix that, so it is PERMANENT too.
 */
enum sluice_class
sluice_classify_exit(int wait_status, enum sluice_class other_exit)
{
	int st;

	if (WIFSIGNALED(wait_status))
		return SLUICE_CLASS_TEMPORARY;
	if (!WIFEXITED(wait_status))
		return SLUICE_CLASS_PERMANENT;
	st = WEXITSTATUS(wait_status);
	if (st == 0)
		return SLUICE_CLASS_OK;
	if (st == EXIT_TEMPFAIL)
		return SLUICE_CLASS_TEMPORARY;
	if (st == EXIT_DATAERR)
		return SLUICE_CLASS_PERMANENT;
	if ((int)other_exit < 0 || (int)other_exit >= SLUICE_CLASS_COUNT)
		return SLUICE_CLASS_PERMANENT;
	return other_exit;
}

/*
 * Messages: "killed by signal SIGKILL (9): Killed", with ", core dumped"
 * appended when the kernel says so; "exited with status N".  NULL whenever
 * sluice_classify_exit() says OK (which includes @other_exit == OK).
 */
struct sluice_error *
sluice_error_from_exit(int wait_status, enum sluice_class other_exit)
{
	enum sluice_class cls = sluice_classify_exit(wait_status, other_exit);
	const char *abbrev, *descr;
	int sig;

	if (cls == SLUICE_CLASS_OK)
		return NULL;
	if (WIFSIGNALED(wait_status)) {
		sig = WTERMSIG(wait_status);
		abbrev = signal_abbrev(sig);
		descr = signal_text(sig);
		return sluice_error_new(
			cls, SLUICE_CODE_CRASH,
			"killed by signal %s%s (%d): %s%s", abbrev ? "SIG" : "",
			abbrev ? abbrev : "?", sig,
			descr ? descr : "unknown signal",
			WCOREDUMP(wait_status) ? ", core dumped" : "");
	}
	if (WIFEXITED(wait_status)) {
		return sluice_error_new(cls, WEXITSTATUS(wait_status),
					"exited with status %d",
					WEXITSTATUS(wait_status));
	}
	return sluice_error_new(cls, SLUICE_CODE_HANDLER,
				"child has not terminated (wait status 0x%x)",
				(unsigned)wait_status);
}

/* ---- HTTP ---------------------------------------------------------------- */

/*
 * 408 (request timeout) and 429 (too many requests) say "not now"; every
 * 5xx is the server's fault and may pass.  Everything else, including
 * statuses outside 100..599 that no server should send, is PERMANENT.
 */
enum sluice_class
sluice_classify_http(int status)
{
	if (status >= 200 && status <= 299)
		return SLUICE_CLASS_OK;
	if (status == 408 || status == 429 || (status >= 500 && status <= 599))
		return SLUICE_CLASS_TEMPORARY;
	return SLUICE_CLASS_PERMANENT;
}

struct sluice_error *
sluice_error_from_http(int status, const char *retry_after, int64_t now_unix_s)
{
	enum sluice_class cls = sluice_classify_http(status);
	struct sluice_error *e;
	int64_t hint;

	if (cls == SLUICE_CLASS_OK)
		return NULL;
	e = sluice_error_new(cls, status, "HTTP %d", status);
	if (cls == SLUICE_CLASS_TEMPORARY && retry_after) {
		hint = sluice_parse_retry_after(retry_after, now_unix_s);
		if (hint > 0)
			sluice_error_set_retry_after_ns(e, hint);
	}
	return e;
}

/* ---- Retry-After (RFC 9110 section 10.2.3) --------------------------------
 */

/*
 * No hint longer than 2^31 - 1 seconds (68 years): the limit RFC 9111
 * section 1.2.2 sets for delta-seconds a cache cannot represent.  The
 * backoff policy caps it again at its own max_ns.
 */
#define RETRY_AFTER_MAX_S ((int64_t)INT32_MAX)

struct scan {
	const char *p;
	const char *end;
};

static bool
is_ows(char c)
{
	return c == ' ' || c == '\t';
}

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool
lit(struct scan *s, const char *text)
{
	size_t n = strlen(text);

	if ((size_t)(s->end - s->p) < n || memcmp(s->p, text, n) != 0)
		return false;
	s->p += n;
	return true;
}

/* Exactly @n digits. */
static bool
digits(struct scan *s, int n, int *out)
{
	int v = 0;

	if (s->end - s->p < n)
		return false;
	for (; n > 0; n--, s->p++) {
		if (!is_digit(*s->p))
			return false;
		v = v * 10 + (*s->p - '0');
	}
	*out = v;
	return true;
}

/* One of @names (which must not be prefixes of each other); its index. */
static bool
one_of(struct scan *s, const char *const *names, int count, int *idx)
{
	int i;

	for (i = 0; i < count; i++) {
		if (lit(s, names[i])) {
			*idx = i;
			return true;
		}
	}
	return false;
}

static const char *const day_short[] = { "Mon", "Tue", "Wed", "Thu",
					 "Fri", "Sat", "Sun" };
static const char *const day_long[] = { "Monday",   "Tuesday", "Wednesday",
					"Thursday", "Friday",  "Saturday",
					"Sunday" };
static const char *const months[] = {
	"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	"Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
};

/* "HH:MM:SS"; second 60 is a leap second (timegm() carries it). */
static bool
time_of_day(struct scan *s, struct tm *tm)
{
	return digits(s, 2, &tm->tm_hour) && lit(s, ":") &&
	       digits(s, 2, &tm->tm_min) && lit(s, ":") &&
	       digits(s, 2, &tm->tm_sec) && tm->tm_hour <= 23 &&
	       tm->tm_min <= 59 && tm->tm_sec <= 60;
}

static bool
month(struct scan *s, struct tm *tm)
{
	return one_of(s, months, 12, &tm->tm_mon);
}

/* "06 Nov 1994 08:49:37 GMT" after "Sun, " */
static bool
imf_fixdate(struct scan *s, struct tm *tm, int *year)
{
	return digits(s, 2, &tm->tm_mday) && lit(s, " ") && month(s, tm) &&
	       lit(s, " ") && digits(s, 4, year) && lit(s, " ") &&
	       time_of_day(s, tm) && lit(s, " GMT");
}

/* "06-Nov-94 08:49:37 GMT" after "Sunday, " */
static bool
rfc850_date(struct scan *s, struct tm *tm, int *yy)
{
	return digits(s, 2, &tm->tm_mday) && lit(s, "-") && month(s, tm) &&
	       lit(s, "-") && digits(s, 2, yy) && lit(s, " ") &&
	       time_of_day(s, tm) && lit(s, " GMT");
}

/* "Nov  6 08:49:37 1994" after "Sun " */
static bool
asctime_date(struct scan *s, struct tm *tm, int *year)
{
	if (!month(s, tm) || !lit(s, " "))
		return false;
	if (!lit(s, " ") || !digits(s, 1, &tm->tm_mday)) {
		if (!digits(s, 2, &tm->tm_mday))
			return false;
	}
	return lit(s, " ") && time_of_day(s, tm) && lit(s, " ") &&
	       digits(s, 4, year);
}

/*
 * RFC 9110 section 5.6.7: a two-digit year that would lie more than 50
 * years in the future is the most recent past year with those digits.  The
 * year is taken from the window (now - 50, now + 50].
 */
static bool
expand_year(int yy, int64_t now_unix_s, int *year)
{
	struct tm now_tm;
	time_t now = (time_t)now_unix_s;
	int cur, y;

	if (!gmtime_r(&now, &now_tm))
		return false;
	cur = now_tm.tm_year + 1900;
	y = cur - cur % 100 + yy;
	if (y > cur + 50) {
		y -= 100;
	} else if (y <= cur - 50) {
		y += 100;
	}
	*year = y;
	return true;
}

static bool
is_leap(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static bool
day_valid(const struct tm *tm, int year)
{
	static const int mdays[12] = { 31, 28, 31, 30, 31, 30,
				       31, 31, 30, 31, 30, 31 };
	int max = mdays[tm->tm_mon];

	if (tm->tm_mon == 1 && is_leap(year))
		max = 29;
	return tm->tm_mday >= 1 && tm->tm_mday <= max;
}

/* delta-seconds = 1*DIGIT; NULL-free [p, end) holds only digits. */
static int64_t
parse_delta(struct scan *s)
{
	int64_t v = 0;
	int d;

	for (; s->p < s->end; s->p++) {
		if (!is_digit(*s->p))
			return SLUICE_EINVAL;
		d = *s->p - '0';
		if (v > (INT64_MAX - d) / 10)
			return SLUICE_EINVAL; /* no server means that */
		v = v * 10 + d;
	}
	if (v > RETRY_AFTER_MAX_S)
		v = RETRY_AFTER_MAX_S;
	return v * SLUICE_NS_PER_S;
}

/*
 * The three HTTP-date forms every recipient must accept (RFC 9110 section
 * 5.6.7), case-sensitively as the RFC says: IMF-fixdate
 * "Sun, 06 Nov 1994 08:49:37 GMT", obsolete RFC 850
 * "Sunday, 06-Nov-94 08:49:37 GMT" and asctime "Sun Nov  6 08:49:37 1994".
 * The day name must be a real one but need not match the date (the RFC
 * leaves that to the recipient; the date is what matters).
 */
static int64_t
parse_date(struct scan *s, int64_t now_unix_s)
{
	const char *start;
	struct tm tm;
	time_t t;
	int wday, year = 0, yy;
	bool ok;

	memset(&tm, 0, sizeof(tm));
	start = s->p;
	if (one_of(s, day_long, 7, &wday) && lit(s, ", ")) {
		ok = rfc850_date(s, &tm, &yy) &&
		     expand_year(yy, now_unix_s, &year);
	} else {
		/* "Sun" is a prefix of "Sunday": start over on the short name.
		 */
		s->p = start;
		ok = one_of(s, day_short, 7, &wday);
		if (ok && lit(s, ", ")) {
			ok = imf_fixdate(s, &tm, &year);
		} else if (ok) {
			ok = lit(s, " ") && asctime_date(s, &tm, &year);
		}
	}
	if (!ok || s->p != s->end || !day_valid(&tm, year))
		return SLUICE_EINVAL;
	tm.tm_year = year - 1900;
	tm.tm_isdst = 0;
	t = timegm(&tm);
	/* A date at or before now, or unrepresentable, needs no wait. */
	if ((int64_t)t <= now_unix_s)
		return 0;
	if (now_unix_s < (int64_t)t - RETRY_AFTER_MAX_S)
		return RETRY_AFTER_MAX_S * SLUICE_NS_PER_S;
	return ((int64_t)t - now_unix_s) * SLUICE_NS_PER_S;
}

int64_t
sluice_parse_retry_after(const char *value, int64_t now_unix_s)
{
	struct scan s;

	if (!value)
		return SLUICE_EINVAL;
	s.p = value;
	s.end = value + strlen(value);
	while (s.p < s.end && is_ows(*s.p))
		s.p++;
	while (s.end > s.p && is_ows(s.end[-1]))
		s.end--;
	if (s.p == s.end)
		return SLUICE_EINVAL;
	if (is_digit(*s.p))
		return parse_delta(&s);
	return parse_date(&s, now_unix_s);
}
