/* SPDX-License-Identifier: MIT */
/*
 * pb.c - the growable buffer, the protocol-buffers field writer and gzip of
 * pb.h.  See pb.h for why this is hand-written.
 */
#include "obs/pb.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include <sluice/common.h>

#include "util/alloc.h"

void
sl_buf_init(struct sl_buf *b)
{
	memset(b, 0, sizeof(*b));
}

void
sl_buf_free(struct sl_buf *b)
{
	sl_free(b->data);
	sl_buf_init(b);
}

bool
sl_buf_reserve(struct sl_buf *b, size_t more)
{
	size_t cap;
	uint8_t *p;

	if (b->failed)
		return false;
	if (b->cap - b->len >= more)
		return true;
	if (more > SIZE_MAX / 2 - b->len) {
		b->failed = true;
		return false;
	}
	cap = b->cap ? b->cap : 256;
	while (cap - b->len < more)
		cap *= 2;
	p = sl_realloc(b->data, cap);
	if (!p) {
		b->failed = true;
		return false;
	}
	b->data = p;
	b->cap = cap;
	return true;
}

void
sl_buf_put(struct sl_buf *b, const void *p, size_t n)
{
	if (n == 0 || !sl_buf_reserve(b, n))
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void
sl_buf_puts(struct sl_buf *b, const char *s)
{
	sl_buf_put(b, s, strlen(s));
}

void
sl_buf_printf(struct sl_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!sl_buf_reserve(b, 64))
		return;
	va_start(ap, fmt);
	n = vsnprintf((char *)b->data + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->failed = true;
		return;
	}
	if ((size_t)n >= b->cap - b->len) {
		if (!sl_buf_reserve(b, (size_t)n + 1))
			return;
		va_start(ap, fmt);
		n = vsnprintf((char *)b->data + b->len, b->cap - b->len, fmt,
			      ap);
		va_end(ap);
		if (n < 0) {
			b->failed = true;
			return;
		}
	}
	b->len += (size_t)n;
}

int
sl_buf_finish(struct sl_buf *b, int rc, size_t *len)
{
	size_t n = b->len;

	if (rc == 0)
		sl_buf_put(b, "", 1);
	if (rc == 0 && sl_buf_failed(b))
		rc = SLUICE_ENOMEM;
	if (rc) {
		sl_buf_free(b);
		return rc;
	}
	*len = n;
	return 0;
}

/* @v as a varint into @tmp; returns its length (at most 10). */
static size_t
varint_enc(uint8_t tmp[10], uint64_t v)
{
	size_t n = 0;

	do {
		tmp[n] = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v)
			tmp[n] |= 0x80;
		n++;
	} while (v);
	return n;
}

void
sl_pb_varint(struct sl_buf *b, uint64_t v)
{
	uint8_t tmp[10];
	size_t n = varint_enc(tmp, v);

	sl_buf_put(b, tmp, n);
}

void
sl_pb_tag(struct sl_buf *b, uint32_t field, unsigned wire)
{
	sl_pb_varint(b, ((uint64_t)field << 3) | wire);
}

void
sl_pb_uint(struct sl_buf *b, uint32_t field, uint64_t v)
{
	sl_pb_tag(b, field, SL_PB_VARINT);
	sl_pb_varint(b, v);
}

void
sl_pb_int(struct sl_buf *b, uint32_t field, int64_t v)
{
	sl_pb_uint(b, field, (uint64_t)v);
}

void
sl_pb_fixed64(struct sl_buf *b, uint32_t field, uint64_t v)
{
	uint8_t le[8];
	int i;

	for (i = 0; i < 8; i++)
		le[i] = (uint8_t)(v >> (8 * i));
	sl_pb_tag(b, field, SL_PB_I64);
	sl_buf_put(b, le, sizeof(le));
}

void
sl_pb_bytes(struct sl_buf *b, uint32_t field, const void *p, size_t n)
{
	sl_pb_tag(b, field, SL_PB_LEN);
	sl_pb_varint(b, n);
	sl_buf_put(b, p, n);
}

void
sl_pb_string(struct sl_buf *b, uint32_t field, const char *s)
{
	sl_pb_bytes(b, field, s, strlen(s));
}

size_t
sl_pb_begin(struct sl_buf *b, uint32_t field)
{
	sl_pb_tag(b, field, SL_PB_LEN);
	/* One byte reserved: most nested messages are under 128 bytes. */
	sl_buf_put(b, "", 1);
	return b->len;
}

void
sl_pb_end(struct sl_buf *b, size_t mark)
{
	size_t body, extra, n;
	uint8_t tmp[10];

	if (b->failed)
		return;
	body = b->len - mark;
	n = varint_enc(tmp, body);
	extra = n - 1; /* one byte was reserved */
	if (extra) {
		if (!sl_buf_reserve(b, extra))
			return;
		memmove(b->data + mark + extra, b->data + mark, body);
		b->len += extra;
	}
	memcpy(b->data + mark - 1, tmp, n);
}

int
sl_gzip(const uint8_t *in, size_t len, struct sl_buf *out)
{
	z_stream z;
	int rc;

	memset(&z, 0, sizeof(z));
	/* 15 + 16: a gzip header and trailer, as pprof expects. */
	if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8,
			 Z_DEFAULT_STRATEGY) != Z_OK)
		return SLUICE_ENOMEM;
	z.next_in = (Bytef *)(uintptr_t)in;
	do {
		if (!sl_buf_reserve(out, 4096)) {
			deflateEnd(&z);
			return SLUICE_ENOMEM;
		}
		z.next_out = out->data + out->len;
		z.avail_out = (uInt)(out->cap - out->len > UINT32_MAX
					     ? UINT32_MAX
					     : out->cap - out->len);
		if (z.avail_in == 0 && len) {
			size_t chunk = len > UINT32_MAX ? UINT32_MAX : len;
			z.avail_in = (uInt)chunk;
			len -= chunk;
		}
		rc = deflate(&z, len ? Z_NO_FLUSH : Z_FINISH);
		out->len = out->cap - z.avail_out;
	} while (rc == Z_OK || rc == Z_BUF_ERROR);
	deflateEnd(&z);
	return rc == Z_STREAM_END ? 0 : SLUICE_EIO;
}
