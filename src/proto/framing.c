/* SPDX-License-Identifier: MIT */
/*
 * framing.c - the sans-I/O stream framing codec (line, nul, length).
 *
 * sluice_frame_next() looks at the caller's bytes and answers "a frame of
 * N bytes is here, its body is this view", "nothing complete yet" or "this
 * stream is broken".  It keeps no state, allocates nothing, and never reads
 * a byte at or past @buf + @len, so a reader may call it on whatever it has
 * accumulated, consume the returned count and call again.  There is no
 * shared state and therefore no locking.
 *
 * Decisions the header leaves open:
 *  - An empty line is a message of length 0: every '\n' ends one message,
 *    so "\n\n" is two empty messages and "a\n" is one message "a" (the
 *    terminator of the last message does not start another).  The same holds
 *    for '\0' in nul framing and for a zero length prefix.
 *  - A line / nul scan looks at most @max_body + 1 bytes: if no terminator
 *    is among them, the body is already longer than @max_body and the answer
 *    is SLUICE_EMSGSIZE at once, so a huge unterminated line is refused as
 *    soon as it is too long instead of being buffered to the end, and a
 *    reader that calls again after every read does not rescan without bound.
 *  - A length prefix over @max_body is refused as soon as the 4 header bytes
 *    are in, before its body arrives (also at EOF: EMSGSIZE wins over
 *    EPROTO, since the frame would have been refused anyway).
 *  - After SLUICE_EMSGSIZE or SLUICE_EPROTO the stream has no safe resume
 *    point; what to do (stop, skip to the next terminator) is the caller's
 *    choice.
 *  - An unknown framing, or @buf == NULL with @len > 0, is SLUICE_EINVAL;
 *    @body may be NULL when the caller only wants the frame's size.
 *  - A frame size is returned as int64_t, so bodies are capped at
 *    INT64_MAX - 4 bytes whatever @max_body says.
 */
#include <string.h>

#include <sluice/framing.h>

#define LENGTH_HDR 4u

static const char *const names[] = {
	[SLUICE_FRAMING_LINE] = "line",
	[SLUICE_FRAMING_NUL] = "nul",
	[SLUICE_FRAMING_LENGTH] = "length",
};

int
sluice_framing_parse(const char *name, enum sluice_framing *out)
{
	if (!name || !out)
		return SLUICE_EINVAL;
	if (strcmp(name, "line") == 0)
		*out = SLUICE_FRAMING_LINE;
	else if (strcmp(name, "nul") == 0)
		*out = SLUICE_FRAMING_NUL;
	else if (strcmp(name, "length") == 0)
		*out = SLUICE_FRAMING_LENGTH;
	else
		return SLUICE_EINVAL;
	return 0;
}

const char *
sluice_framing_name(enum sluice_framing f)
{
	switch (f) {
	case SLUICE_FRAMING_LINE:
	case SLUICE_FRAMING_NUL:
	case SLUICE_FRAMING_LENGTH:
		return names[f];
	}
	return "unknown";
}

static void
set_body(struct sluice_bytes *body, const uint8_t *p, size_t n)
{
	if (body) {
		body->ptr = p;
		body->len = n;
	}
}

/* One record ended by @term (line or nul framing). */
static int64_t
next_delimited(uint8_t term, const uint8_t *buf, size_t len, int eof,
	       size_t max_body, struct sluice_bytes *body)
{
	/* Look no further than one byte past the longest body allowed. */
	size_t scan = len <= max_body ? len : max_body + 1;
	const uint8_t *end = scan ? memchr(buf, term, scan) : NULL;

	if (end) {
		size_t n = (size_t)(end - buf);

		set_body(body, buf, n);
		return (int64_t)n + 1;
	}
	if (len > max_body)
		return SLUICE_EMSGSIZE;
	if (!eof || len == 0)
		return 0;
	/* The last record of the input, without its terminator. */
	set_body(body, buf, len);
	return (int64_t)len;
}

static int64_t
next_length(const uint8_t *buf, size_t len, int eof, size_t max_body,
	    struct sluice_bytes *body)
{
	uint32_t n;

	if (len < LENGTH_HDR) {
		if (!eof || len == 0)
			return 0;
		return SLUICE_EPROTO;
	}
	n = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
	    (uint32_t)buf[2] << 8 | (uint32_t)buf[3];
	if (n > max_body)
		return SLUICE_EMSGSIZE;
	if (len - LENGTH_HDR < n)
		return eof ? SLUICE_EPROTO : 0;
	set_body(body, buf + LENGTH_HDR, n);
	return (int64_t)n + LENGTH_HDR;
}

int64_t
sluice_frame_next(enum sluice_framing f, const uint8_t *buf, size_t len,
		  int eof, size_t max_body, struct sluice_bytes *body)
{
	if (!buf && len > 0)
		return SLUICE_EINVAL;
	if (max_body > (size_t)(INT64_MAX - LENGTH_HDR))
		max_body = (size_t)(INT64_MAX - LENGTH_HDR);
	switch (f) {
	case SLUICE_FRAMING_LINE:
		return next_delimited('\n', buf, len, eof, max_body, body);
	case SLUICE_FRAMING_NUL:
		return next_delimited('\0', buf, len, eof, max_body, body);
	case SLUICE_FRAMING_LENGTH:
		return next_length(buf, len, eof, max_body, body);
	}
	return SLUICE_EINVAL;
}

int64_t
sluice_frame_encode(enum sluice_framing f, const void *body, size_t len,
		    uint8_t *out, size_t cap)
{
	size_t need;

	if ((!body && len > 0) || (!out && cap > 0))
		return SLUICE_EINVAL;
	if (len > (size_t)(INT64_MAX - LENGTH_HDR))
		return SLUICE_EINVAL;
	switch (f) {
	case SLUICE_FRAMING_LINE:
	case SLUICE_FRAMING_NUL: {
		uint8_t term = f == SLUICE_FRAMING_LINE ? '\n' : '\0';

		if (len > 0 && memchr(body, term, len))
			return SLUICE_EINVAL;
		need = len + 1;
		if (need > cap)
			break;
		if (len > 0)
			memcpy(out, body, len);
		out[len] = term;
		break;
	}
	case SLUICE_FRAMING_LENGTH:
		if (len > UINT32_MAX)
			return SLUICE_EINVAL;
		need = len + LENGTH_HDR;
		if (need > cap)
			break;
		out[0] = (uint8_t)(len >> 24);
		out[1] = (uint8_t)(len >> 16);
		out[2] = (uint8_t)(len >> 8);
		out[3] = (uint8_t)len;
		if (len > 0)
			memcpy(out + LENGTH_HDR, body, len);
		break;
	default:
		return SLUICE_EINVAL;
	}
	return (int64_t)need;
}
