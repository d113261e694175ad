/* SPDX-License-Identifier: MIT */
/*
 * test_nsq_snappy.c - the snappy framing codec (proto/nsq_snappy.h):
 * CRC-32C against published vectors, the reference's [captured] nsqd bytes
 * (docs/nsq-protocol.md section 6.4) both ways, round trips fed at every
 * split point, and every way a stream can be malformed.
 */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "proto/nsq_snappy.h"

static const uint8_t ok_frame[] = { 0, 0, 0, 6, 0, 0, 0, 0, 0x4F, 0x4B };

/* What nsqd sent right after the IDENTIFY JSON when snappy was granted. */
static const uint8_t captured[] = {
	0xFF, 0x06, 0x00, 0x00, 0x73, 0x4E, 0x61, 0x50, 0x70, 0x59,
	0x01, 0x0E, 0x00, 0x00, 0x26, 0x98, 0x2B, 0xCF, 0x00, 0x00,
	0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x4F, 0x4B,
};

static uint8_t blk[SL_SNAPPY_BLOCK_MAX];

static void
test_crc32c_vectors(void)
{
	uint8_t b[32];
	size_t i;

	CHECK_EQ(sl_crc32c(0, "123456789", 9), 0xE3069283u);
	/* RFC 3720 appendix B.4 */
	memset(b, 0, sizeof(b));
	CHECK_EQ(sl_crc32c(0, b, 32), 0x8A9136AAu);
	memset(b, 0xff, sizeof(b));
	CHECK_EQ(sl_crc32c(0, b, 32), 0x62A8AB43u);
	for (i = 0; i < 32; i++)
		b[i] = (uint8_t)i;
	CHECK_EQ(sl_crc32c(0, b, 32), 0x46DD794Eu);
	/* Continuation equals one pass. */
	CHECK_EQ(sl_crc32c(sl_crc32c(0, b, 13), b + 13, 19), 0x46DD794Eu);
	CHECK_EQ(sl_crc32c(0, "", 0), 0u);
	/* The masked checksum of the captured OK chunk. */
	CHECK_EQ(sl_snappy_mask(sl_crc32c(0, ok_frame, sizeof(ok_frame))),
		 0xCF2B9826u);
}

static void
test_encode_matches_capture(void)
{
	uint8_t out[64];
	ssize_t n;

	CHECK_LE(sl_snappy_enc_bound(sizeof(ok_frame)), sizeof(out));
	n = sl_snappy_enc_chunk(ok_frame, sizeof(ok_frame), out, sizeof(out));
	CHECK_EQ(n, (ssize_t)(sizeof(captured) - SL_SNAPPY_STREAM_ID_LEN));
	CHECK_MEMEQ(out, captured + SL_SNAPPY_STREAM_ID_LEN, (size_t)n);
	CHECK_MEMEQ(SL_SNAPPY_STREAM_ID, captured, SL_SNAPPY_STREAM_ID_LEN);
	/* Refusals. */
	CHECK_EQ(sl_snappy_enc_chunk(ok_frame, 0, out, sizeof(out)),
		 SLUICE_EINVAL);
	CHECK_EQ(sl_snappy_enc_chunk(ok_frame, sizeof(ok_frame), out, 10),
		 SLUICE_EINVAL);
	CHECK_EQ(sl_snappy_enc_chunk(blk, SL_SNAPPY_BLOCK_MAX + 1, out,
				     sizeof(out)),
		 SLUICE_EINVAL);
}

/*
 * Decode @s[0..@len) fed in two pieces cut at @cut: decode what the first
 * piece allows, then append the rest.  Returns the bytes produced in @out.
 */
static size_t
decode_split(const uint8_t *s, size_t len, size_t cut, uint8_t *out, size_t cap)
{
	struct sl_snappy_dec d;
	size_t off = 0, got = 0, avail = cut, n;
	ssize_t r;

	sl_snappy_dec_init(&d);
	for (;;) {
		bool ready = sl_snappy_dec_ready(&d, s + off, avail - off);

		r = sl_snappy_dec_chunk(&d, s + off, avail - off, blk,
					sizeof(blk), &n);
		CHECK_EQ(ready, r != 0);
		CHECK_GE(r, 0);
		if (r == 0) {
			if (avail == len)
				break;
			avail = len;
			continue;
		}
		CHECK_LE(got + n, cap);
		memcpy(out + got, blk, n);
		got += n;
		off += (size_t)r;
	}
	CHECK_EQ(off, len);
	return got;
}

static void
test_decode_capture_every_split(void)
{
	uint8_t out[64];
	size_t cut;

	for (cut = 0; cut <= sizeof(captured); cut++) {
		CHECK_EQ(decode_split(captured, sizeof(captured), cut, out,
				      sizeof(out)),
			 sizeof(ok_frame));
		CHECK_MEMEQ(out, ok_frame, sizeof(ok_frame));
	}
}

/* Append a chunk of @type with @payload to @s; returns the new length. */
static size_t
raw_chunk(uint8_t *s, size_t len, uint8_t type, const void *payload,
	  size_t plen)
{
	s[len] = type;
	s[len + 1] = (uint8_t)plen;
	s[len + 2] = (uint8_t)(plen >> 8);
	s[len + 3] = (uint8_t)(plen >> 16);
	memcpy(s + len + 4, payload, plen);
	return len + 4 + plen;
}

static void
test_round_trip_every_split(void)
{
	static const char text[] =
		"SUB topic channel\nRDY 10\nFIN 0123456789abcdef\n"
		"FIN 0123456789abcdef\nFIN 0123456789abcdef\n"
		"FIN 0123456789abcdef\nFIN 0123456789abcdef\n";
	static const uint8_t noise[] = { 0x13, 0x9a, 0x71, 0x02, 0xee, 0x55 };
	uint8_t s[1024], out[1024], want[1024];
	size_t len = 0, wlen = 0, cut;
	ssize_t n;

	memcpy(s, SL_SNAPPY_STREAM_ID, SL_SNAPPY_STREAM_ID_LEN);
	len = SL_SNAPPY_STREAM_ID_LEN;
	n = sl_snappy_enc_chunk((const uint8_t *)text, sizeof(text) - 1,
				s + len, sizeof(s) - len);
	CHECK_GT(n, 0);
	CHECK_EQ(s[len], 0x00); /* repetitive: stored compressed */
	CHECK_LT((size_t)n, sizeof(text) - 1);
	len += (size_t)n;
	memcpy(want, text, sizeof(text) - 1);
	wlen = sizeof(text) - 1;
	len = raw_chunk(s, len, 0xFE, "\0\0\0", 3); /* padding */
	len = raw_chunk(s, len, 0x80, "skip", 4);   /* skippable */
	len = raw_chunk(s, len, 0xFD, "", 0);
	n = sl_snappy_enc_chunk(noise, sizeof(noise), s + len, sizeof(s) - len);
	CHECK_GT(n, 0);
	CHECK_EQ(s[len], 0x01); /* incompressible: stored as is */
	len += (size_t)n;
	memcpy(want + wlen, noise, sizeof(noise));
	wlen += sizeof(noise);
	/* A second identifier mid-stream (concatenated streams). */
	memcpy(s + len, SL_SNAPPY_STREAM_ID, SL_SNAPPY_STREAM_ID_LEN);
	len += SL_SNAPPY_STREAM_ID_LEN;
	for (cut = 0; cut <= len; cut++) {
		CHECK_EQ(decode_split(s, len, cut, out, sizeof(out)), wlen);
		CHECK_MEMEQ(out, want, wlen);
	}
}

static void
test_full_block_round_trip(void)
{
	static uint8_t in[SL_SNAPPY_BLOCK_MAX], enc[80000];
	struct sl_snappy_dec d;
	uint32_t x = 12345;
	size_t i, n;
	ssize_t e, r;
	int pass;

	for (pass = 0; pass < 2; pass++) {
		for (i = 0; i < sizeof(in); i++) {
			x = x * 1103515245u + 12345u;
			/* pass 0: noise; pass 1: 4 distinct letters */
			in[i] = pass ? (uint8_t)('a' + (x >> 16) % 4)
				     : (uint8_t)(x >> 16);
		}
		CHECK_LE(sl_snappy_enc_bound(sizeof(in)), sizeof(enc));
		e = sl_snappy_enc_chunk(in, sizeof(in), enc, sizeof(enc));
		CHECK_GT(e, 0);
		CHECK_LE((size_t)e - 4, SL_SNAPPY_PAYLOAD_MAX);
		CHECK_EQ(enc[0], pass ? 0x00 : 0x01);
		sl_snappy_dec_init(&d);
		d.started = true;
		r = sl_snappy_dec_chunk(&d, enc, (size_t)e, blk, sizeof(blk),
					&n);
		CHECK_EQ(r, e);
		CHECK_EQ(n, sizeof(in));
		CHECK_MEMEQ(blk, in, n);
	}
}

/* Decoding @s must fail with a reason containing @why. */
static void
expect_bad(const uint8_t *s, size_t len, bool started, const char *why)
{
	struct sl_snappy_dec d;
	size_t n = 99;

	sl_snappy_dec_init(&d);
	d.started = started;
	CHECK(sl_snappy_dec_ready(&d, s, len));
	CHECK_EQ(sl_snappy_dec_chunk(&d, s, len, blk, sizeof(blk), &n),
		 SLUICE_EPROTO);
	CHECK(d.why != NULL);
	CHECK(strstr(d.why, why) != NULL);
	CHECK_EQ(n, 0);
}

static void
test_malformed_streams(void)
{
	uint8_t s[128], big[4];
	ssize_t n;

	/* Data before the identifier (nsqd closes on this). */
	expect_bad(captured + SL_SNAPPY_STREAM_ID_LEN,
		   sizeof(captured) - SL_SNAPPY_STREAM_ID_LEN, false,
		   "stream identifier");
	/* A flipped data byte: checksum mismatch. */
	memcpy(s, captured, sizeof(captured));
	s[sizeof(captured) - 1] ^= 0x01;
	expect_bad(s + 10, sizeof(captured) - 10, true, "checksum");
	/* A flipped checksum byte. */
	memcpy(s, captured, sizeof(captured));
	s[14] ^= 0x80;
	expect_bad(s + 10, sizeof(captured) - 10, true, "checksum");
	/* Compressed chunk: corrupt block, then a wrong checksum. */
	n = sl_snappy_enc_chunk(
		(const uint8_t *)"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
				 "aaaaaaaaaaaaaa",
		44, s, sizeof(s));
	CHECK_GT(n, 8);
	CHECK_EQ(s[0], 0x00);
	s[8] = 0xFF; /* varint length prefix: garbage */
	s[9] = 0xFF;
	s[10] = 0xFF;
	s[11] = 0xFF;
	s[12] = 0xFF;
	expect_bad(s, (size_t)n, true, "corrupt");
	n = sl_snappy_enc_chunk(
		(const uint8_t *)"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
				 "bbbbbbbbbbbbbb",
		44, s, sizeof(s));
	s[4] ^= 0x01;
	expect_bad(s, (size_t)n, true, "checksum");
	/* A wrong identifier text, and a wrong identifier length. */
	memcpy(s, captured, 10);
	s[4] = 'S';
	expect_bad(s, 10, false, "identifier");
	expect_bad((const uint8_t *)"\xff\x05\x00\x00sNaPp", 9, false,
		   "identifier");
	/* Reserved unskippable types, refused on the header alone. */
	expect_bad((const uint8_t *)"\x02\x01\x00\x00", 4, true, "reserved");
	expect_bad((const uint8_t *)"\x7f\x00\x00\x00", 4, true, "reserved");
	/* Lengths: shorter than the checksum, longer than Go accepts. */
	expect_bad((const uint8_t *)"\x01\x03\x00\x00", 4, true, "shorter");
	big[0] = 0x00;
	big[1] = (uint8_t)(SL_SNAPPY_PAYLOAD_MAX + 1);
	big[2] = (uint8_t)((SL_SNAPPY_PAYLOAD_MAX + 1) >> 8);
	big[3] = (uint8_t)((SL_SNAPPY_PAYLOAD_MAX + 1) >> 16);
	expect_bad(big, 4, true, "too long");
	/* Uncompressed chunk over 64 KiB but under the payload cap. */
	big[0] = 0x01;
	big[1] = (uint8_t)(SL_SNAPPY_BLOCK_MAX + 5);
	big[2] = (uint8_t)((SL_SNAPPY_BLOCK_MAX + 5) >> 8);
	big[3] = (uint8_t)((SL_SNAPPY_BLOCK_MAX + 5) >> 16);
	{
		static uint8_t huge[SL_SNAPPY_BLOCK_MAX + 9];

		memcpy(huge, big, 4);
		expect_bad(huge, sizeof(huge), true, "64 KiB");
	}
}

static void
test_arguments(void)
{
	struct sl_snappy_dec d;
	uint8_t small[16];
	size_t n;

	sl_snappy_dec_init(&d);
	CHECK_EQ(sl_snappy_dec_chunk(&d, captured, sizeof(captured), small,
				     sizeof(small), &n),
		 SLUICE_EINVAL);
	CHECK_EQ(sl_snappy_dec_chunk(&d, NULL, 4, blk, sizeof(blk), &n),
		 SLUICE_EINVAL);
	CHECK_EQ(sl_snappy_dec_chunk(&d, NULL, 0, blk, sizeof(blk), &n), 0);
	CHECK(!sl_snappy_dec_ready(&d, captured, 3));
	CHECK(!sl_snappy_dec_ready(&d, captured, 9));
	CHECK(sl_snappy_dec_ready(&d, captured, 10));
}

CHECK_MAIN(test_crc32c_vectors, test_encode_matches_capture,
	   test_decode_capture_every_split, test_round_trip_every_split,
	   test_full_block_round_trip, test_malformed_streams, test_arguments)
