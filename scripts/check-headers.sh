#!/bin/sh
# SPDX-License-Identifier: MIT
# check-headers.sh - every public header compiles alone as C11 -pedantic and
# as C++ (usage: check-headers.sh INCLUDE_DIR GENERATED_INCLUDE_DIR).
set -eu
inc=$1
gen=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
for h in "$inc"/sluice/*.h; do
	name=$(basename "$h")
	printf '#include <sluice/%s>\n' "$name" >"$tmp/t.c"
	cp "$tmp/t.c" "$tmp/t.cc"
	if ! cc -std=c11 -pedantic -Wall -Wextra -Werror -I"$inc" -I"$gen" \
		-fsyntax-only "$tmp/t.c"; then
		echo "FAIL (C11): $name"; fail=1
	fi
	if command -v c++ >/dev/null 2>&1 &&
		! c++ -std=c++11 -Wall -Werror -I"$inc" -I"$gen" -fsyntax-only \
			"$tmp/t.cc"; then
		echo "FAIL (C++): $name"; fail=1
	fi
done
[ $fail -eq 0 ] && echo "all public headers compile alone as C11 and C++"
exit $fail
