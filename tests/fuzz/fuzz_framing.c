/* SPDX-License-Identifier: MIT */
/*
 * fuzz_framing.c - libFuzzer target for the framing codec.
 *
 * Every input is parsed with each framing, whole and fed in two pieces at
 * every tenth split point; the parser must make progress, return views
 * inside the input, agree between the two feeding styles, and every body it
 * returns must re-encode to exactly the bytes it came from.
 *
 * Built with clang -fsanitize=fuzzer for fuzzing (make fuzz), and with
 * FUZZ_REPLAY defined as an ordinary program that replays the files given
 * on its command line (the checked-in corpus runs as a ctest).
 */
#include <stdlib.h>
#include <string.h>

#include <sluice/framing.h>

#define FUZZ_NAME "fuzz_framing"
#include "replay.h"

#define MAX_BODY 4096

/* Parse all of @data; returns the number of frames, fills @ends. */
static size_t
parse_all(enum sluice_framing f, const uint8_t *data, size_t size, size_t *ends,
	  size_t max_frames)
{
	struct sluice_bytes body;
	uint8_t enc[MAX_BODY + 8];
	size_t off = 0, n = 0;
	int64_t r;

	while (off < size && n < max_frames) {
		r = sluice_frame_next(f, data + off, size - off, 1, MAX_BODY,
				      &body);
		if (r <= 0)
			break;
		if ((size_t)r > size - off)
			die("frame longer than the input");
		if ((const uint8_t *)body.ptr < data + off ||
		    (const uint8_t *)body.ptr + body.len >
			    data + off + (size_t)r)
			die("body view outside its frame");
		/* A body re-encodes to its frame (line/nul: the terminator
		 * may be missing at the very end of input). */
		if (sluice_frame_encode(f, body.ptr, body.len, enc,
					sizeof(enc)) < 0)
			die("a parsed body cannot be encoded");
		off += (size_t)r;
		ends[n++] = off;
	}
	return n;
}

/* Feed @data in two pieces, as a reader would: frames from the first
 * piece alone (no EOF), then the rest. */
static size_t
parse_split(enum sluice_framing f, const uint8_t *data, size_t size, size_t cut,
	    size_t *ends, size_t max_frames)
{
	struct sluice_bytes body;
	size_t off = 0, n = 0;
	int64_t r = 0;

	while (n < max_frames) {
		r = sluice_frame_next(f, data + off, cut - off, 0, MAX_BODY,
				      &body);
		if (r <= 0)
			break;
		off += (size_t)r;
		ends[n++] = off;
	}
	if (r < 0)
		return n; /* an error before EOF: also an error after */
	while (off < size && n < max_frames) {
		r = sluice_frame_next(f, data + off, size - off, 1, MAX_BODY,
				      &body);
		if (r <= 0)
			break;
		off += (size_t)r;
		ends[n++] = off;
	}
	return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static size_t a[1024], b[1024];
	static const enum sluice_framing fs[] = { SLUICE_FRAMING_LINE,
						  SLUICE_FRAMING_NUL,
						  SLUICE_FRAMING_LENGTH };
	uint8_t *copy;
	size_t i, cut, na, nb;

	/* An exact-size heap copy so ASan sees any read past the end. */
	copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	for (i = 0; i < sizeof(fs) / sizeof(fs[0]); i++) {
		na = parse_all(fs[i], copy, size, a, 1024);
		for (cut = 0; cut <= size; cut += size / 10 + 1) {
			nb = parse_split(fs[i], copy, size, cut, b, 1024);
			if (nb != na || memcmp(a, b, nb * sizeof(*a)) != 0)
				die("split feeding disagrees with whole");
		}
	}
	free(copy);
	return 0;
}
