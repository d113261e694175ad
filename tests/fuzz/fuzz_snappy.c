/* SPDX-License-Identifier: MIT */
/*
 * fuzz_snappy.c - libFuzzer target for the snappy framing codec
 * (proto/nsq_snappy.h).
 *
 * Treats the input as a snappy stream received from nsqd: chunks are
 * decoded one after the other, as the transport does.  The decoder must
 * make progress or stop cleanly (need more / error with a reason), never
 * produce more than a block per chunk, give the same bytes when the input
 * is fed in two pieces, and never read past the end (the input is an
 * exact-size heap copy).  Then the input itself is encoded as data and
 * must decode back to itself.
 *
 * Built with clang -fsanitize=fuzzer (make fuzz), and with FUZZ_REPLAY as a
 * program that replays the checked-in corpus as a ctest.
 */
#include <stdlib.h>
#include <string.h>

#include "proto/nsq_snappy.h"

#define FUZZ_NAME "fuzz_snappy"
#include "replay.h"

#define OUT_MAX (1u << 20)

static uint8_t blk[SL_SNAPPY_BLOCK_MAX];

/*
 * Decode @buf[0..@size), the first @cut bytes first; the output goes to
 * @out (at most OUT_MAX).  Returns the bytes consumed; *@err the error.
 */
static size_t
walk(const uint8_t *buf, size_t size, size_t cut, uint8_t *out, size_t *out_len,
     ssize_t *err)
{
	struct sl_snappy_dec d;
	size_t off = 0, avail = cut, n;
	ssize_t r;

	sl_snappy_dec_init(&d);
	*out_len = 0;
	*err = 0;
	for (;;) {
		bool ready = sl_snappy_dec_ready(&d, buf + off, avail - off);

		r = sl_snappy_dec_chunk(&d, buf + off, avail - off, blk,
					sizeof(blk), &n);
		if (ready != (r != 0))
			die("ready disagrees with decode");
		if (r < 0) {
			if (r != SLUICE_EPROTO || !d.why)
				die("error without a reason");
			*err = r;
			return off;
		}
		if (r == 0) {
			if (avail == size)
				return off;
			avail = size;
			continue;
		}
		if ((size_t)r > avail - off)
			die("chunk longer than the input");
		if (n > SL_SNAPPY_BLOCK_MAX)
			die("block too long");
		if (*out_len + n <= OUT_MAX)
			memcpy(out + *out_len, blk, n);
		*out_len += n;
		off += (size_t)r;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t a[OUT_MAX], b[OUT_MAX];
	static uint8_t enc[2 * SL_SNAPPY_BLOCK_MAX];
	uint8_t *copy = malloc(size ? size : 1);
	size_t cut, na, nb, ca, cb, off, n;
	ssize_t ea, eb, e;

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	ca = walk(copy, size, size, a, &na, &ea);
	for (cut = 0; cut <= size; cut += size / 8 + 1) {
		cb = walk(copy, size, cut, b, &nb, &eb);
		if (ca != cb || na != nb || ea != eb ||
		    (na <= OUT_MAX && memcmp(a, b, na) != 0))
			die("a split input decodes differently");
	}
	/* The input as data: encode in blocks, decode back. */
	for (off = 0; off < size; off += n) {
		struct sl_snappy_dec d;
		size_t m;

		n = size - off < SL_SNAPPY_BLOCK_MAX ? size - off
						     : SL_SNAPPY_BLOCK_MAX;
		memcpy(enc, SL_SNAPPY_STREAM_ID, SL_SNAPPY_STREAM_ID_LEN);
		e = sl_snappy_enc_chunk(copy + off, n,
					enc + SL_SNAPPY_STREAM_ID_LEN,
					sizeof(enc) - SL_SNAPPY_STREAM_ID_LEN);
		if (e <= 0)
			die("encode failed");
		sl_snappy_dec_init(&d);
		if (sl_snappy_dec_chunk(&d, enc, sizeof(enc), blk, sizeof(blk),
					&m) != SL_SNAPPY_STREAM_ID_LEN ||
		    sl_snappy_dec_chunk(&d, enc + SL_SNAPPY_STREAM_ID_LEN,
					(size_t)e, blk, sizeof(blk), &m) != e ||
		    m != n || memcmp(blk, copy + off, n) != 0)
			die("round trip differs");
	}
	free(copy);
	return 0;
}
