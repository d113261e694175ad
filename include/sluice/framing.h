/* SPDX-License-Identifier: MIT */
/*
 * framing.h - how messages are delimited in a byte stream (stdin, files,
 * the input of an --exec child in batch mode).  A sans-I/O codec: it finds
 * frames in a caller's buffer and returns views into it; no allocation.
 *
 *   line    each message ends with '\n' (removed; a '\r' before it is kept,
 *           bytes are passed through exactly).  At end of input a last
 *           message without '\n' still counts.
 *   nul     the same with '\0' as the terminator (find -print0 style).
 *   length  each message is a 4-byte big-endian length, then that many
 *           bytes: any byte may appear in a body, newlines and NULs
 *           included.  End of input inside a frame is an error.
 */
#ifndef SLUICE_FRAMING_H
#define SLUICE_FRAMING_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/common.h>
#include <sluice/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

enum sluice_framing {
	SLUICE_FRAMING_LINE = 0,
	SLUICE_FRAMING_NUL = 1,
	SLUICE_FRAMING_LENGTH = 2,
};

/** sluice_framing_parse() - "line", "nul" or "length" -> @out.
 * Returns: 0 or SLUICE_EINVAL. */
SLUICE_API int sluice_framing_parse(const char *name, enum sluice_framing *out);

/** sluice_framing_name() - the name parse() accepts. */
SLUICE_API const char *sluice_framing_name(enum sluice_framing f);

/**
 * sluice_frame_next() - find the first complete frame in @buf[0..@len).
 * @eof: no more bytes will come after @len (accept a final unterminated
 *       line / nul record; a partial length frame is then an error).
 * @max_body: largest body accepted.
 * @body: on success, a view into @buf.
 *
 * Returns: the bytes the frame occupies (> 0; consume them), 0 if @buf holds
 * no complete frame yet (read more) or is empty at EOF, SLUICE_EMSGSIZE if
 * the frame's body is (or, unterminated, already is) longer than @max_body,
 * or SLUICE_EPROTO for a truncated length frame at EOF.
 */
SLUICE_API int64_t sluice_frame_next(enum sluice_framing f, const uint8_t *buf,
				     size_t len, int eof, size_t max_body,
				     struct sluice_bytes *body);

/**
 * sluice_frame_encode() - write @body framed as @f into @out (@cap bytes).
 * Returns: the length the frame needs (like snprintf: nothing is written
 * when it does not fit), or SLUICE_EINVAL when @body cannot be framed (a
 * line body containing '\n', a nul body containing '\0', a length body over
 * 4 GiB - 1).
 */
SLUICE_API int64_t sluice_frame_encode(enum sluice_framing f, const void *body,
				       size_t len, uint8_t *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_FRAMING_H */
