/* SPDX-License-Identifier: MIT */
/*
 * common.h - export macros, return codes and shared constants of sluice.
 *
 * Every fallible action in sluice returns an int: 0 on success or a negative
 * SLUICE_E* code.  System failures are -errno; project codes are <= -1000 and
 * a number, once given, is never reused.  One X-macro list below yields the
 * enum, sluice_strerror() and sluice_err_name().
 */
#ifndef SLUICE_COMMON_H
#define SLUICE_COMMON_H

#include <errno.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(SLUICE_BUILDING) && defined(__GNUC__)
#define SLUICE_API __attribute__((visibility("default")))
#else
#define SLUICE_API
#endif

#if defined(__GNUC__)
#define SLUICE_NODISCARD __attribute__((warn_unused_result))
#else
#define SLUICE_NODISCARD
#endif

/*
 * Atomic fields in the few public structs that may be embedded.  C++ sees
 * the plain type, which has the same size and alignment for the lock-free
 * integer types used here; only sluice's C code touches these fields.
 */
#ifdef __cplusplus
#define SLUICE_ATOMIC(T) T
#else
#define SLUICE_ATOMIC(T) _Atomic T
#endif

/* Absolute monotonic deadline meaning "wait as long as it takes". */
#define SLUICE_FOREVER ((int64_t)-1)

#define SLUICE_NS_PER_MS ((int64_t)1000000)
#define SLUICE_NS_PER_S  ((int64_t)1000000000)

/* name, value, text */
#define SLUICE_ERR_MAP(X)                                                  \
	X(EINVAL, -EINVAL, "invalid argument")                             \
	X(ENOMEM, -ENOMEM, "out of memory")                                \
	X(ETIMEDOUT, -ETIMEDOUT, "deadline passed")                        \
	X(ECANCELED, -ECANCELED, "operation cancelled")                    \
	X(EAGAIN, -EAGAIN, "resource temporarily unavailable")             \
	X(EIO, -EIO, "input/output error")                                 \
	X(ENOENT, -ENOENT, "no such entry")                                \
	X(EEXIST, -EEXIST, "entry exists")                                 \
	X(EMSGSIZE, -EMSGSIZE, "message too large")                        \
	X(EBUSY, -EBUSY, "busy")                                           \
	X(ECLOSED, -1000, "source closed: no more messages")               \
	X(EDISCONNECTED, -1001, "source disconnected; leases were lost")   \
	X(ESTALE, -1002, "lease no longer valid (expired or redelivered)") \
	X(ESTATE, -1003, "operation not allowed in the current state")     \
	X(EPROTO, -1004, "malformed frame in the input")

enum sluice_errcode {
	SLUICE_OK = 0,
#define SLUICE_ERR_ENUM(name, value, text) SLUICE_##name = (value),
	SLUICE_ERR_MAP(SLUICE_ERR_ENUM)
#undef SLUICE_ERR_ENUM
};

/**
 * sluice_strerror() - a static description of a SLUICE_E* code or -errno.
 *
 * Returns: a string that lives forever; never NULL.
 * Threads: any thread.
 */
SLUICE_API const char *sluice_strerror(int code);

/**
 * sluice_err_name() - the symbolic name of a code, e.g. "SLUICE_ETIMEDOUT".
 *
 * Returns: a static string; "SLUICE_E?" for an unknown code.
 */
SLUICE_API const char *sluice_err_name(int code);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_COMMON_H */
