#!/bin/sh
# SPDX-License-Identifier: MIT
# check-banned.sh - fail if src/ calls a function the house style bans
# (docs/house-style.md): unsafe string functions, printing and exiting from
# the library, and raw heap calls outside src/util/alloc.c (and the opt-in
# whole-process interposer src/obs/malloc_interpose.c, which defines them).
set -eu
top=${1:-.}
cd "$top"
fail=0
pat='\b(sprintf|strcpy|strcat|strncpy|strtok|atoi|atol|strerror|signal|rand|printf|fprintf|exit)[[:space:]]*\('
if grep -nE "$pat" $(find src -name '*.c' -o -name '*.h') | grep -vE '^\S+:[0-9]+:\s*(\*|/\*)'; then
	echo "banned function in src/ (see docs/house-style.md)"; fail=1
fi
heap='\b(malloc|calloc|realloc|free)[[:space:]]*\('
if grep -nE "$heap" $(find src -name '*.c' -o -name '*.h' | grep -v 'src/util/alloc\.c\|src/obs/malloc_interpose\.c') |
	grep -vE '^\S+:[0-9]+:\s*(\*|/\*)'; then
	echo "raw heap call outside src/util/alloc.c: use sl_malloc and friends"; fail=1
fi
[ $fail -eq 0 ] && echo "no banned calls in src/"
exit $fail
