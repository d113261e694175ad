# SPDX-License-Identifier: MIT
# lib.sh - the shared harness of the end-to-end test scripts (sourced):
# failure reporting, bounded polling for observable events, and the case
# runner.  A script sets FILTER (a case-name substring, may be empty) and
# TOP (a scratch directory), defines its cases as functions, calls
# run_case for each, then finish.
pass=0
failed=0

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
