/* SPDX-License-Identifier: MIT */
/*
 * error.h - error values that say what the caller should do next.
 *
 * Handlers report failure with a struct sluice_error: a class (timeout,
 * temporary, permanent, canceled), a code, a message and an optional cause,
 * like a Go error that implements Timeout() and Temporary().  Success is the
 * NULL pointer, so the happy path allocates nothing.  The class drives the
 * engine: temporary and timeout requeue with backoff, permanent goes to the
 * dead-letter sink, canceled gives the message back without counting an
 * attempt.  Classifiers turn errno values, child exit statuses and HTTP
 * statuses into classes.
 *
 * If an allocation fails, the constructors return a static "out of memory"
 * TEMPORARY error instead of NULL; sluice_error_free() ignores it.  So a
 * constructor never turns a failure into a success.
 */
#ifndef SLUICE_ERROR_H
#define SLUICE_ERROR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/common.h>

#ifdef __cplusplus
extern "C" {
#endif

enum sluice_class {
	SLUICE_CLASS_OK = 0,
	SLUICE_CLASS_TIMEOUT = 1,   /* deadline passed: retry with backoff */
	SLUICE_CLASS_TEMPORARY = 2, /* may succeed later: retry with backoff */
	SLUICE_CLASS_PERMANENT = 3, /* will never succeed: dead-letter now */
	SLUICE_CLASS_CANCELED = 4,  /* shutdown interrupted it: give back,
				       no attempt counted */
};
#define SLUICE_CLASS_COUNT 5

/* Project codes carried by error values (beside -errno, exit and HTTP codes).
 */
#define SLUICE_CODE_CRASH     (-1100) /* child killed by a signal */
#define SLUICE_CODE_HANDLER   (-1101) /* handler broke its contract */
#define SLUICE_CODE_DUPLICATE (-1102) /* same message id already in flight */
#define SLUICE_CODE_EXHAUSTED (-1103) /* attempts used up */
#define SLUICE_CODE_DRAIN     (-1104) /* unfinished at shutdown */

struct sluice_error;

/**
 * sluice_error_new() - a new error value.
 * @cls: its class; SLUICE_CLASS_OK is not an error and becomes PERMANENT
 *       with code SLUICE_CODE_HANDLER.
 * @code: a number meaningful with the class (errno, exit status, HTTP
 *        status, SLUICE_CODE_*); 0 if none.
 * @fmt: printf-style message, truncated at 255 bytes.
 *
 * Returns new (free with sluice_error_free()); never NULL.
 */
SLUICE_API struct sluice_error *sluice_error_new(enum sluice_class cls,
						 int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/**
 * sluice_error_wrap() - like sluice_error_new(), with @cause attached.
 *
 * Takes @cause (may be NULL).  Returns new; never NULL.
 */
SLUICE_API struct sluice_error *
sluice_error_wrap(struct sluice_error *cause, enum sluice_class cls, int code,
		  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/** sluice_error_free() - free @e and its causes.  NULL is a no-op. */
SLUICE_API void sluice_error_free(struct sluice_error *e);

/** sluice_error_class() - the class; SLUICE_CLASS_OK for NULL. */
SLUICE_API enum sluice_class sluice_error_class(const struct sluice_error *e);

/** sluice_error_code() - the code; 0 for NULL. */
SLUICE_API int sluice_error_code(const struct sluice_error *e);

/** sluice_error_msg() - the message (borrowed, lives as long as @e); "" for
 * NULL. */
SLUICE_API const char *sluice_error_msg(const struct sluice_error *e);

/** sluice_error_cause() - the wrapped cause (borrowed) or NULL. */
SLUICE_API const struct sluice_error *
sluice_error_cause(const struct sluice_error *e);

/** sluice_error_retry_after_ns() - a server's hint for the retry delay; 0 if
 * none. */
SLUICE_API int64_t sluice_error_retry_after_ns(const struct sluice_error *e);

/** sluice_error_set_retry_after_ns() - attach a retry delay hint (>= 0). */
SLUICE_API void sluice_error_set_retry_after_ns(struct sluice_error *e,
						int64_t delay_ns);

/**
 * sluice_error_is_timeout() / sluice_error_is_temporary() - Go's net.Error
 * questions.  A timeout is also temporary (worth retrying).
 */
SLUICE_API bool sluice_error_is_timeout(const struct sluice_error *e);
SLUICE_API bool sluice_error_is_temporary(const struct sluice_error *e);

/**
 * sluice_error_format() - "class: message: cause message: ..." into @buf.
 *
 * Returns: the length the full text needs (like snprintf).
 */
SLUICE_API size_t sluice_error_format(const struct sluice_error *e, char *buf,
				      size_t size);

/** sluice_class_name() - "ok", "timeout", "temporary", "permanent", "canceled".
 */
SLUICE_API const char *sluice_class_name(enum sluice_class cls);

/**
 * sluice_classify_errno() - the class of a positive errno value: timeouts
 * (ETIMEDOUT), temporary network and resource failures (EAGAIN, EINTR,
 * ECONNREFUSED, ECONNRESET, EPIPE, EHOSTUNREACH, ENETUNREACH, ENOBUFS, ENOMEM,
 * EBUSY, ...), ECANCELED as canceled, 0 as ok, the rest (EINVAL, ENOENT,
 * EACCES, EPERM, EMSGSIZE, ...) permanent.  Negative values are negated.
 */
SLUICE_API enum sluice_class sluice_classify_errno(int err);

/**
 * sluice_classify_exit() - the class of a waitpid() status: exit 0 ok,
 * 75 (EX_TEMPFAIL) temporary, 65 (EX_DATAERR) permanent, other codes
 * @other_exit; death by a signal is TEMPORARY (a crash; it counts as an
 * attempt, so a crash loop ends in the dead-letter sink).
 */
SLUICE_API enum sluice_class sluice_classify_exit(int wait_status,
						  enum sluice_class other_exit);

/**
 * sluice_error_from_exit() - an error value for a waitpid() status, or NULL
 * when it is success.  A crash has code SLUICE_CODE_CRASH and names the
 * signal; an exit has the exit code.  Returns new.
 */
SLUICE_API struct sluice_error *
sluice_error_from_exit(int wait_status, enum sluice_class other_exit);

/**
 * sluice_classify_http() - 2xx ok; 408, 429 and 5xx temporary; 1xx, 3xx and
 * other 4xx permanent.
 */
SLUICE_API enum sluice_class sluice_classify_http(int status);

/**
 * sluice_error_from_http() - an error value for an HTTP response, or NULL for
 * 2xx.  @retry_after is the Retry-After header value or NULL; either form
 * (delta-seconds or an HTTP-date, compared with @now_unix_s) sets the retry
 * hint on temporary errors.  Returns new.
 */
SLUICE_API struct sluice_error *
sluice_error_from_http(int status, const char *retry_after, int64_t now_unix_s);

/**
 * sluice_parse_retry_after() - parse a Retry-After value.
 *
 * Returns: the delay in ns (>= 0; a date in the past is 0), or SLUICE_EINVAL.
 */
SLUICE_API int64_t sluice_parse_retry_after(const char *value,
					    int64_t now_unix_s);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_ERROR_H */
