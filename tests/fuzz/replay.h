/* SPDX-License-Identifier: MIT */
/*
 * replay.h - what every fuzz target shares: the libFuzzer entry point's
 * prototype, die() for a broken property, and, with FUZZ_REPLAY defined, a
 * main() that replays the files named on its command line through the
 * target (the checked-in corpus runs that way as a ctest).
 *
 * The including target defines FUZZ_NAME (its name, a string literal) first.
 * Single-threaded; the replay buffer is static, so inputs are cut at 1 MiB.
 */
#ifndef SL_FUZZ_REPLAY_H
#define SL_FUZZ_REPLAY_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef FUZZ_NAME
#error "define FUZZ_NAME before including replay.h"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property failed: abort so libFuzzer (or ctest) keeps the input. */
static void
die(const char *what)
{
	fprintf(stderr, FUZZ_NAME ": %s\n", what);
	abort();
}

#ifdef FUZZ_REPLAY
int
main(int argc, char **argv)
{
	static uint8_t buf[1 << 20];
	int i;

	for (i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		size_t len;

		if (!f) {
			perror(argv[i]);
			return 1;
		}
		len = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, len);
	}
	printf(FUZZ_NAME ": %d inputs replayed\n", argc - 1);
	return 0;
}
#endif

#endif /* SL_FUZZ_REPLAY_H */
