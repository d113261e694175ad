/* SPDX-License-Identifier: MIT */
/*
 * nsq_snappy.c - the snappy framing format (sans-I/O) on libsnappy's block
 * codec (snappy-c.h), and CRC-32C.
 *
 * Decisions the reference (docs/nsq-protocol.md section 6.4, which follows
 * Go's github.com/golang/snappy) leaves open:
 *  - Header checks come first and need only the 4 header bytes: a reserved
 *    unskippable type (0x02-0x7F), any chunk before the stream identifier,
 *    a data chunk longer than SL_SNAPPY_PAYLOAD_MAX or shorter than its
 *    checksum, and an identifier chunk whose length is not 6.  Padding and
 *    skippable chunks may be up to 2^24 - 1 bytes (Go allows that too); we
 *    wait for all of them, so a caller's buffer must be able to hold that
 *    much or it treats the stream as broken (the transport caps its read
 *    buffer and reports it).
 *  - A repeated stream identifier mid-stream is accepted (Go's reader does:
 *    concatenated streams).
 *  - A compressed block is checked with snappy_uncompressed_length() before
 *    anything is written; over SL_SNAPPY_BLOCK_MAX is an error, then the
 *    checksum of what it decodes to must match.
 *  - The encoder stores a block uncompressed unless compression saves at
 *    least n/8 bytes, as Go's writer does; the stored form is what nsqd
 *    itself sends for short frames (the [captured] "OK").
 *
 * CRC-32C uses a 16-entry table (4 bits per step): small, const, no
 * initialisation, fast enough for frames of a few KiB.  No shared mutable
 * state anywhere, so no locking.
 */
#include "proto/nsq_snappy.h"

#include <snappy-c.h>
#include <string.h>

#define T_COMPRESSED   0x00u
#define T_UNCOMPRESSED 0x01u
#define T_PADDING      0xfeu
#define T_STREAM_ID    0xffu
#define CRC_LEN        4u

/* Reflected polynomial 0x82F63B78, one entry per nibble. */
static const uint32_t crc_tab[16] = {
	0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3,
	0x61c69362, 0x7198540d, 0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9,
	0xc38d26c4, 0xd3d3e1ab, 0xe330a81a, 0xf36e6f75,
};

uint32_t
sl_crc32c(uint32_t crc, const void *p, size_t n)
{
	const uint8_t *b = p;

	crc = ~crc;
	while (n--) {
		crc ^= *b++;
		crc = (crc >> 4) ^ crc_tab[crc & 15u];
		crc = (crc >> 4) ^ crc_tab[crc & 15u];
	}
	return ~crc;
}

uint32_t
sl_snappy_mask(uint32_t crc)
{
	return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

static void
put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t
get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

/* ---- encoding ------------------------------------------------------------ */

size_t
sl_snappy_enc_bound(size_t n)
{
	size_t c = snappy_max_compressed_length(n);

	return SL_SNAPPY_HDR + CRC_LEN + (c > n ? c : n);
}

ssize_t
sl_snappy_enc_chunk(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	size_t clen, plen;
	uint8_t type = T_COMPRESSED;

	if (!in || !out || n == 0 || n > SL_SNAPPY_BLOCK_MAX ||
	    cap < sl_snappy_enc_bound(n))
		return SLUICE_EINVAL;
	clen = cap - SL_SNAPPY_HDR - CRC_LEN;
	if (snappy_compress((const char *)in, n,
			    (char *)(out + SL_SNAPPY_HDR + CRC_LEN),
			    &clen) != SNAPPY_OK ||
	    clen > n - n / 8) {
		type = T_UNCOMPRESSED;
		memcpy(out + SL_SNAPPY_HDR + CRC_LEN, in, n);
		clen = n;
	}
	plen = CRC_LEN + clen;
	out[0] = type;
	out[1] = (uint8_t)plen;
	out[2] = (uint8_t)(plen >> 8);
	out[3] = (uint8_t)(plen >> 16);
	put_le32(out + SL_SNAPPY_HDR, sl_snappy_mask(sl_crc32c(0, in, n)));
	return (ssize_t)(SL_SNAPPY_HDR + plen);
}

/* ---- decoding ------------------------------------------------------------ */

void
sl_snappy_dec_init(struct sl_snappy_dec *d)
{
	d->started = false;
	d->why = NULL;
}

/*
 * What the 4 header bytes alone say: NULL when they are acceptable, else
 * the error's text.  *@plen gets the payload length.
 */
static const char *
hdr_check(const struct sl_snappy_dec *d, const uint8_t *in, size_t *plen)
{
	uint8_t type = in[0];

	*plen = (size_t)in[1] | (size_t)in[2] << 8 | (size_t)in[3] << 16;
	if (type == T_STREAM_ID)
		return *plen == SL_SNAPPY_STREAM_ID_LEN - SL_SNAPPY_HDR
			       ? NULL
			       : "snappy: stream identifier of the wrong length";
	if (!d->started)
		return "snappy: stream does not start with the stream "
		       "identifier";
	if (type == T_COMPRESSED || type == T_UNCOMPRESSED) {
		if (*plen < CRC_LEN)
			return "snappy: data chunk shorter than its checksum";
		if (*plen > SL_SNAPPY_PAYLOAD_MAX)
			return "snappy: data chunk too long";
		return NULL;
	}
	if (type < 0x80u)
		return "snappy: reserved unskippable chunk type";
	return NULL; /* padding, reserved skippable */
}

bool
sl_snappy_dec_ready(const struct sl_snappy_dec *d, const uint8_t *in,
		    size_t len)
{
	size_t plen;

	if (!d || !in || len < SL_SNAPPY_HDR)
		return false;
	if (hdr_check(d, in, &plen))
		return true;
	return len - SL_SNAPPY_HDR >= plen;
}

static ssize_t
fail(struct sl_snappy_dec *d, const char *why)
{
	d->why = why;
	return SLUICE_EPROTO;
}

ssize_t
sl_snappy_dec_chunk(struct sl_snappy_dec *d, const uint8_t *in, size_t len,
		    uint8_t *out, size_t cap, size_t *out_len)
{
	const uint8_t *pl;
	const char *why;
	size_t plen, n;

	if (!d || !out_len || (!in && len) || !out || cap < SL_SNAPPY_BLOCK_MAX)
		return SLUICE_EINVAL;
	*out_len = 0;
	if (len < SL_SNAPPY_HDR)
		return 0;
	why = hdr_check(d, in, &plen);
	if (why)
		return fail(d, why);
	if (len - SL_SNAPPY_HDR < plen)
		return 0;
	pl = in + SL_SNAPPY_HDR;
	switch (in[0]) {
	case T_STREAM_ID:
		if (memcmp(pl, &SL_SNAPPY_STREAM_ID[SL_SNAPPY_HDR],
			   SL_SNAPPY_STREAM_ID_LEN - SL_SNAPPY_HDR) != 0)
			return fail(d, "snappy: bad stream identifier");
		d->started = true;
		break;
	case T_COMPRESSED:
		if (snappy_uncompressed_length((const char *)pl + CRC_LEN,
					       plen - CRC_LEN, &n) != SNAPPY_OK)
			return fail(d, "snappy: corrupt compressed block");
		if (n > SL_SNAPPY_BLOCK_MAX)
			return fail(d, "snappy: block over 64 KiB");
		if (snappy_uncompress((const char *)pl + CRC_LEN,
				      plen - CRC_LEN, (char *)out,
				      &n) != SNAPPY_OK)
			return fail(d, "snappy: corrupt compressed block");
		if (sl_snappy_mask(sl_crc32c(0, out, n)) != get_le32(pl))
			return fail(d, "snappy: checksum mismatch");
		*out_len = n;
		break;
	case T_UNCOMPRESSED:
		n = plen - CRC_LEN;
		if (n > SL_SNAPPY_BLOCK_MAX)
			return fail(d, "snappy: block over 64 KiB");
		if (sl_snappy_mask(sl_crc32c(0, pl + CRC_LEN, n)) !=
		    get_le32(pl))
			return fail(d, "snappy: checksum mismatch");
		if (n)
			memcpy(out, pl + CRC_LEN, n);
		*out_len = n;
		break;
	default: /* padding, reserved skippable */
		break;
	}
	return (ssize_t)(SL_SNAPPY_HDR + plen);
}
