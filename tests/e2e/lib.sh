# SPDX-License-Identifier: MIT
# lib.sh - the shared harness of the end-to-end test scripts (sourced):
# failure reporting, bounded polling for observable events, and the case
# runner.  A script sets FILTER (a case-name substring, may be empty) and
# TOP (a scratch directory; e2e_init makes one), defines its cases as
# functions, calls run_case for each, then finish.
pass=0
failed=0

# e2e_init: make the scratch directory TOP; when the script exits, kill any
# background job left and remove TOP.
e2e_init() {
	TOP=$(mktemp -d)
	trap 'jobs -p | xargs -r kill 2>/dev/null; rm -rf "$TOP"' EXIT
}

fail() {
	echo "  FAILED: $*" >&2
	return 1
}

# wait_for COMMAND...: poll until it succeeds (30 s bound: it only turns a
# hang into a failure, it never stands in for synchronisation).
wait_for() {
	local i
	for i in $(seq 3000); do
		"$@" && return 0
		sleep 0.01
	done
	fail "timed out waiting for: $*"
}

lines_at_least() { [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ]; }

# length_input: write rand (3000 random bytes) and input, three bodies in
# length framing: a text one, one holding NUL and newlines, and rand
# (length 0x0bb8).
length_input() {
	head -c 3000 /dev/urandom >rand
	{
		printf '\000\000\000\005hello'
		printf '\000\000\000\007a\000b\nc\n\000'
		printf '\000\000\013\270'
		cat rand
	} >input
}

# debug_port FILE: wait for sluice's "debug endpoint on port N" line in
# FILE (its stderr) and set port to N.
debug_port() {
	wait_for grep -q 'debug endpoint on port' "$1" || return
	port=$(sed -n 's/.*debug endpoint on port \([0-9]*\).*/\1/p' "$1")
}

# metrics_match PATTERN: GET /metrics from 127.0.0.1:$port into body, and
# succeed if body holds a line matching PATTERN (grep); for wait_for.
metrics_match() {
	exec 4<>"/dev/tcp/127.0.0.1/$port"
	printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&4
	body=$(cat <&4)
	exec 4>&-
	printf '%s' "$body" | grep -q "$1"
}

run_case() {
	local name=$1
	[ -n "$FILTER" ] && [[ $name != *"$FILTER"* ]] && return
	D="$TOP/$name"
	mkdir -p "$D"
	# Not inside `if`: bash ignores set -e in a condition's subshell.
	(
		set -e
		cd "$D"
		"$name"
	)
	if [ $? -eq 0 ]; then
		echo "ok   $name"
		pass=$((pass + 1))
	else
		echo "FAIL $name"
		failed=$((failed + 1))
	fi
}

finish() {
	echo "$pass passed, $failed failed"
	[ "$failed" -eq 0 ]
}
