/* SPDX-License-Identifier: MIT */
/*
 * pb.h - a growable byte buffer and a minimal protocol-buffers writer,
 * shared by the pprof profile encoder (profile.c) and the Perfetto trace
 * writer (trace.c).
 *
 * Written by hand because the two messages we emit (profile.proto and
 * Perfetto's TracePacket) need only varints, fixed64 and length-delimited
 * fields; protobuf-c would add a code generator and a runtime for that.
 *
 * Errors are sticky: after an allocation failure every call is a no-op and
 * sl_buf_failed() is true, so an encoder checks once at the end.
 * Nested messages: sl_pb_begin() reserves room for the length and returns
 * a mark; sl_pb_end() writes the length there (moving the body when the
 * varint needs more than the reserved byte).
 * Not thread-safe: one buffer, one writer.
 */
#ifndef SL_OBS_PB_H
#define SL_OBS_PB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sl_buf {
	uint8_t *data; /* sl_malloc'd; NULL until the first write */
	size_t len, cap;
	bool failed; /* an allocation failed: contents are incomplete */
};

void sl_buf_init(struct sl_buf *b);
void sl_buf_free(struct sl_buf *b);
/* Make room for @more bytes; false (and failed set) on ENOMEM. */
bool sl_buf_reserve(struct sl_buf *b, size_t more);
void sl_buf_put(struct sl_buf *b, const void *p, size_t n);
void sl_buf_puts(struct sl_buf *b, const char *s);
void sl_buf_printf(struct sl_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static inline bool
sl_buf_failed(const struct sl_buf *b)
{
	return b->failed;
}

/*
 * sl_buf_finish() - hand @b's contents to the caller as a NUL-terminated
 * string: on @rc == 0 append a NUL (not counted in *@len) and return 0,
 * the caller then owning b->data (free with sl_free); on @rc != 0 or a
 * failed buffer, free @b and return @rc or SLUICE_ENOMEM.
 */
int sl_buf_finish(struct sl_buf *b, int rc, size_t *len);

/* Wire types. */
enum { SL_PB_VARINT = 0, SL_PB_I64 = 1, SL_PB_LEN = 2, SL_PB_I32 = 5 };

void sl_pb_varint(struct sl_buf *b, uint64_t v);
void sl_pb_tag(struct sl_buf *b, uint32_t field, unsigned wire);
/* field = varint (int32/int64/uint64/bool/enum; negatives as 10 bytes) */
void sl_pb_uint(struct sl_buf *b, uint32_t field, uint64_t v);
void sl_pb_int(struct sl_buf *b, uint32_t field, int64_t v);
void sl_pb_fixed64(struct sl_buf *b, uint32_t field, uint64_t v);
void sl_pb_bytes(struct sl_buf *b, uint32_t field, const void *p, size_t n);
void sl_pb_string(struct sl_buf *b, uint32_t field, const char *s);
/* Nested message / packed repeated field. */
size_t sl_pb_begin(struct sl_buf *b, uint32_t field);
void sl_pb_end(struct sl_buf *b, size_t mark);

/* gzip (RFC 1952) @in into @out with zlib; 0 or SLUICE_ENOMEM/EIO. */
int sl_gzip(const uint8_t *in, size_t len, struct sl_buf *out);

#endif /* SL_OBS_PB_H */
