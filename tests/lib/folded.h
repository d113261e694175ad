/* SPDX-License-Identifier: MIT */
/*
 * folded.h - reading back folded stacks ("root;caller;leaf VALUE\n" per
 * line, as sluice's SLUICE_PROFILE_FOLDED writes them) in tests.
 *
 * A frame matches a name when it is the name, or the name followed by a
 * compiler clone suffix (".constprop.0", ".isra.0", ".cold"): the profile
 * shows a symbol as the compiler emitted it.  Header-only; malformed
 * lines are CHECK failures.
 */
#ifndef FOLDED_H
#define FOLDED_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

enum folded_where {
	FOLDED_LEAF, /* the line's leaf frame is the name */
	FOLDED_ANY,  /* some frame of the line is the name */
};

/* Whether the frame [@f, @end) is @name (see above). */
static inline bool
folded_frame_is(const char *f, const char *end, const char *name)
{
	size_t n = strlen(name);

	return (size_t)(end - f) >= n && memcmp(f, name, n) == 0 &&
	       (f + n == end || f[n] == '.');
}

/*
 * folded_sum() - the sum of the values of @text's lines whose frames
 * match @name as @where says; *@total (when not NULL) gets the sum of
 * every line.
 */
static inline int64_t
folded_sum(const char *text, const char *name, enum folded_where where,
	   int64_t *total)
{
	const char *line, *nl, *sp, *f, *e;
	int64_t sum = 0, all = 0, v;

	for (line = text; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		CHECK(nl != NULL);
		for (sp = nl; sp > line && sp[-1] != ' '; sp--)
			;
		CHECK(sp > line);
		v = strtoll(sp, NULL, 10);
		all += v;
		/* frames: [f, e) between ';'s, the last ending at sp - 1 */
		for (e = sp - 1; e > line; e = f - 1) {
			for (f = e; f > line && f[-1] != ';'; f--)
				;
			if (folded_frame_is(f, e, name)) {
				sum += v;
				break;
			}
			if (where == FOLDED_LEAF || f == line)
				break;
		}
	}
	if (total)
		*total = all;
	return sum;
}

#endif /* FOLDED_H */
