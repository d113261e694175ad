/* SPDX-License-Identifier: MIT */
/*
 * fuzz_nsq.c - libFuzzer target for the NSQ frame decoder.
 *
 * Treats the input as bytes read from nsqd: frames are cut one after the
 * other, as the connection will, and each is decoded as the type it claims
 * (message fields, error code, response kind).  The decoder must make
 * progress, keep every view inside the input, agree when fed in two pieces,
 * and never read past the end (the input is an exact-size heap copy).
 *
 * Built with clang -fsanitize=fuzzer (make fuzz), and with FUZZ_REPLAY as a
 * program that replays the checked-in corpus as a ctest.
 */
#include <stdlib.h>
#include <string.h>

#include "proto/nsq.h"

#define FUZZ_NAME "fuzz_nsq"
#include "replay.h"

#define MAX_SIZE 4096

static void
inside(const void *p, size_t n, const uint8_t *lo, const uint8_t *hi)
{
	if (n && ((const uint8_t *)p < lo || (const uint8_t *)p + n > hi))
		die("a view points outside its frame");
}

/* Decode every frame; returns how many, their ends in @ends. */
static size_t
walk(const uint8_t *buf, size_t size, size_t *ends, size_t max)
{
	struct sl_nsq_frame f;
	struct sl_nsq_message m;
	struct sl_nsq_error e;
	size_t off = 0, n = 0;
	ssize_t r;

	while (n < max) {
		r = sl_nsq_frame(buf + off, size - off, MAX_SIZE, &f);
		if (r <= 0)
			break;
		if ((size_t)r > size - off)
			die("frame longer than the input");
		inside(f.data, f.len, buf + off, buf + off + (size_t)r);
		if (f.type == SL_NSQ_FRAME_MESSAGE &&
		    sl_nsq_message(f.data, f.len, &m) == 0) {
			inside(m.id, SL_NSQ_ID_LEN, f.data, f.data + f.len);
			inside(m.body, m.body_len, f.data, f.data + f.len);
		} else if (f.type == SL_NSQ_FRAME_ERROR &&
			   sl_nsq_error_parse(f.data, f.len, &e) == 0) {
			inside(e.code, e.code_len, f.data, f.data + f.len);
			inside(e.desc, e.desc_len, f.data, f.data + f.len);
			(void)sl_nsq_error_is_fatal(e.code, e.code_len);
		} else if (f.type == SL_NSQ_FRAME_RESPONSE) {
			(void)sl_nsq_response_kind(f.data, f.len);
		}
		off += (size_t)r;
		ends[n++] = off;
	}
	return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static size_t a[2048], b[2048];
	uint8_t *copy = malloc(size ? size : 1);
	size_t cut, na, nb, k;
	ssize_t r;

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	na = walk(copy, size, a, 2048);
	/* Fed in two pieces: the first piece alone yields a prefix of the
	 * same frames, then the rest continues from where it stopped. */
	for (cut = 0; cut <= size; cut += size / 8 + 1) {
		nb = walk(copy, cut, b, 2048);
		for (k = 0; k < nb; k++)
			if (k >= na || b[k] != a[k])
				die("a prefix decodes differently");
		if (nb < na) {
			r = sl_nsq_frame(copy + (nb ? b[nb - 1] : 0),
					 cut - (nb ? b[nb - 1] : 0), MAX_SIZE,
					 NULL);
			if (r != 0) /* taken, or an error the whole lacked */
				die("a prefix disagrees with the whole");
		}
	}
	(void)sl_nsq_is_http(copy, size);
	(void)sl_nsq_name_is_valid((const char *)copy, size);
	free(copy);
	return 0;
}
