#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_cli.sh - end-to-end tests of `sluice consume`: the real binary, real
# child processes, real pipes and signals.
#
# usage: test_cli.sh PATH_TO_SLUICE [CASE-SUBSTRING]
# Waiting is always for an observable event (a file reaching a line count,
# a process exiting), polled with a 30 s bound that only turns a hang into a
# failure.
set -u
SLUICE=$(realpath "$1")
FILTER=${2:-}
. "$(dirname "$0")/lib.sh"
e2e_init

# ---- cases ------------------------------------------------------------------

bad_flags_give_usage_errors() {
	local rc
	"$SLUICE" consume --bogus </dev/null 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] || fail "--bogus: exit $rc"
	grep -q "bogus" err || fail "--bogus not named: $(cat err)"
	"$SLUICE" consume -j 0 </dev/null 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] && grep -q -- "--concurrency wants" err || fail "-j 0: $rc $(cat err)"
	"$SLUICE" consume --timeout 5 </dev/null 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] && grep -q "duration" err || fail "--timeout 5: $rc $(cat err)"
	"$SLUICE" consume --exec true --stdout </dev/null 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] && grep -q "choose one" err || fail "two sinks: $rc"
	"$SLUICE" consume --framing csv </dev/null 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] && grep -q "line, nul or length" err || fail "framing: $rc"
	SLUICE_CONCURRENCY=0 "$SLUICE" consume </dev/null 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] || fail "env SLUICE_CONCURRENCY=0: exit $rc"
	"$SLUICE" nonsense 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] || fail "unknown command: exit $rc"
	"$SLUICE" consume --help >out
	grep -q "usage: sluice consume" out || fail "--help"
}

unreadable_file_is_named() {
	local rc
	"$SLUICE" consume -q missing.txt 2>err && return 1 || rc=$?
	[ $rc -eq 66 ] || fail "exit $rc"
	grep -q "missing.txt: No such file" err || fail "$(cat err)"
}

stdout_passthrough_in_order() {
	printf 'a\nb\n\nc' | "$SLUICE" consume -q -j 1 >out
	printf 'a\nb\n\nc\n' | cmp - out || fail "output differs: $(od -c out)"
	seq 1000 | "$SLUICE" consume -q -j 4 --stdout | sort -n >out
	seq 1000 | cmp - out || fail "-j 4 lost or duplicated lines"
}

count_stops_after_n() {
	seq 100 | "$SLUICE" consume -q -j 1 -n 10 >out
	[ "$(wc -l <out)" -eq 10 ] || fail "got $(wc -l <out) lines"
}

bodies_arrive_byte_exact() {
	# Length framing: one text body, one with NUL and newlines, one of
	# 3000 random bytes (length 0x0bb8).
	length_input
	"$SLUICE" consume -q -j 3 --framing length \
		--exec 'cat > "body.$SLUICE_MSG_ID"' input
	[ "$(ls body.* | wc -l)" -eq 3 ] || fail "expected 3 bodies: $(ls)"
	printf 'hello' | cmp - body.0000000000000001 || fail "body 1"
	printf 'a\000b\nc\n\000' | cmp - body.0000000000000002 || fail "body 2"
	cmp rand body.0000000000000003 || fail "body 3 (binary)"
	# NUL framing, and --stdout writes frames back as they came.
	printf 'x y\nz\000second\000' | "$SLUICE" consume -q -j 1 --framing nul >out
	printf 'x y\nz\000second\000' | cmp - out || fail "nul framing"
}

exit_codes_map_to_classes() {
	local rc
	printf '0\n65\n75\n3\n4\n' | "$SLUICE" consume -q -j 2 \
		--max-attempts 2 --backoff 10ms:10ms --dead-letter dead.jsonl \
		--exit-codes '3=permanent,4=ok' \
		--exec 'read -r x; echo "$x $SLUICE_ATTEMPT" >> calls; exit $x' \
		&& return 1 || rc=$?
	[ $rc -eq 1 ] || fail "exit $rc, want 1 (some dead-lettered)"
	[ "$(wc -l <dead.jsonl)" -eq 3 ] || fail "dead: $(cat dead.jsonl)"
	grep -q '"body":"65".*' dead.jsonl || fail "65 not dead"
	grep '"body":"65"' dead.jsonl | grep -q '"attempts":1' || fail "65 retried"
	grep '"body":"75"' dead.jsonl | grep -q '"attempts":2' || fail "75 not retried"
	grep '"body":"3"' dead.jsonl | grep -q '"class":"permanent"' || fail "3 mapping"
	! grep -q '"body":"4"' dead.jsonl || fail "4 mapped to ok"
	[ "$(grep -c '^75 ' calls)" -eq 2 ] || fail "75 ran $(grep -c '^75 ' calls) times"
	[ "$(grep -c '^0 ' calls)" -eq 1 ] || fail "0 ran twice"
}

crash_loop_ends_in_dead_letter() {
	local rc
	echo boom | "$SLUICE" consume -q --max-attempts 3 --backoff 5ms:5ms \
		--dead-letter dead.jsonl --exec 'kill -SEGV $$' && return 1 || rc=$?
	[ $rc -eq 1 ] || fail "exit $rc"
	grep -q '"attempts":3' dead.jsonl || fail "$(cat dead.jsonl)"
	grep -q 'SIGSEGV' dead.jsonl || fail "signal not named: $(cat dead.jsonl)"
}

overrun_kills_the_process_group() {
	local rc
	# The child leaves a grandchild in its group and hangs; both must go.
	echo x | "$SLUICE" consume -q --timeout 300ms --kill-grace 100ms \
		--max-attempts 1 --dead-letter dead.jsonl \
		--exec "sleep 1$$.25 & echo \$! > gpid; echo \$\$ > cpid; exec sleep 1$$.5" \
		&& return 1 || rc=$?
	[ $rc -eq 1 ] || fail "exit $rc"
	grep -q '"class":"timeout"' dead.jsonl || fail "$(cat dead.jsonl)"
	! kill -0 "$(cat gpid)" 2>/dev/null || fail "grandchild survived"
	! kill -0 "$(cat cpid)" 2>/dev/null || fail "child survived"
	# The durations carry this script's pid, so a concurrent run of the
	# suite cannot be mistaken for a survivor.
	! pgrep -f "sleep 1$$\." >/dev/null || fail "a sleep survived"
	# And a child that ignores SIGTERM gets SIGKILL after the grace.
	echo y | "$SLUICE" consume -q --timeout 200ms --kill-grace 100ms \
		--max-attempts 1 --dead-letter dead2.jsonl \
		--exec "trap '' TERM; echo \$\$ > tpid; while :; do :; done" \
		&& return 1 || rc=$?
	[ $rc -eq 1 ] || fail "TERM-proof child: exit $rc"
	! kill -0 "$(cat tpid)" 2>/dev/null || fail "TERM-proof child survived"
}

sigterm_mid_stream_loses_nothing() {
	local pid read_n ids
	mkfifo in
	seq 300 >lines
	"$SLUICE" consume -j 4 --dead-letter dead.jsonl --drain-timeout 10s \
		--exec 'sleep 0.02; echo "$SLUICE_MSG_ID" >> done' <in 2>err &
	pid=$!
	exec 3>in
	cat lines >&3 # the pipe stays open: no end of input
	wait_for lines_at_least done 20
	kill -TERM $pid
	wait $pid || true
	exec 3>&-
	read_n=$(sed -n 's/^sluice: \([0-9]*\) messages.*/\1/p' err)
	[ -n "$read_n" ] || fail "no summary: $(cat err)"
	# Every message read was either done or dead-lettered, exactly once.
	ids=$( (cat done; sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p' dead.jsonl) | sort)
	[ "$(echo "$ids" | wc -l)" -eq "$read_n" ] || fail "accounted $(echo "$ids" | wc -l) of $read_n"
	[ -z "$(echo "$ids" | uniq -d)" ] || fail "duplicates: $(echo "$ids" | uniq -d | head -3)"
	grep -q 'not finished when sluice stopped' dead.jsonl || fail "no unfinished records"
}

batch_flushes_on_count_bytes_and_wait() {
	printf '1\n2\n3\n4\n5\n6\n7\n' | "$SLUICE" consume -q -j 1 --batch 3 \
		--batch-wait 20ms --exec 'echo "$SLUICE_BATCH_SIZE" >> sizes; cat >> got'
	[ "$(tr '\n' ' ' <sizes)" = "3 3 1 " ] || fail "count: $(tr '\n' ' ' <sizes)"
	seq 7 | cmp - got || fail "batch bodies"
	printf 'aaaa\nbbbb\ncccc\ndddd\neeee\n' | "$SLUICE" consume -q -j 1 \
		--batch 100 --batch-bytes 10 --batch-wait 20ms \
		--exec 'echo "$SLUICE_BATCH_SIZE" >> bsizes'
	[ "$(tr '\n' ' ' <bsizes)" = "2 2 1 " ] || fail "bytes: $(tr '\n' ' ' <bsizes)"
	mkfifo in
	"$SLUICE" consume -q -j 1 --batch 100 --batch-wait 50ms \
		--exec 'echo "$SLUICE_BATCH_SIZE" >> wsizes' <in &
	exec 3>in
	printf 'p\nq\n' >&3
	wait_for lines_at_least wsizes 1
	printf 'r\n' >&3
	exec 3>&-
	wait
	[ "$(tr '\n' ' ' <wsizes)" = "2 1 " ] || fail "wait: $(tr '\n' ' ' <wsizes)"
}

malformed_input_is_reported() {
	local rc
	printf '\000\000\000\010abc' | "$SLUICE" consume -q --framing length \
		--discard 2>err && return 1 || rc=$?
	[ $rc -eq 3 ] || fail "truncated frame: exit $rc"
	grep -q "cut short" err || fail "$(cat err)"
	head -c 3000 /dev/zero | tr '\0' 'x' | "$SLUICE" consume -q \
		--max-body 1K --discard 2>err && return 1 || rc=$?
	[ $rc -eq 3 ] || fail "oversized line: exit $rc"
	grep -q "longer than 1024 bytes" err || fail "$(cat err)"
}

summary_balances() {
	seq 50 | "$SLUICE" consume -j 2 --discard 2>err
	grep -q '^sluice: 50 messages .*: 50 ok, 0 dead-lettered' err || fail "$(cat err)"
	seq 5 | SLUICE_QUIET=1 "$SLUICE" consume --discard 2>err
	[ ! -s err ] || fail "SLUICE_QUIET=1 ignored: $(cat err)"
}

debug_addr_serves_metrics() {
	local pid port body
	mkfifo in
	"$SLUICE" consume -j 2 --discard --debug-addr 127.0.0.1:0 <in 2>err &
	pid=$!
	exec 3>in
	seq 5 >&3
	debug_port err
	wait_for metrics_match "sluice_messages_handled_total 5"
	printf '%s' "$body" | grep -q '^HTTP/1.[01] 200' || fail "status: $body"
	printf '%s' "$body" | grep -q 'TYPE sluice_handlers_running gauge' || fail "gauge"
	exec 3>&-
	wait $pid || fail "exit status $?"
	"$SLUICE" consume --debug-addr nohost </dev/null 2>err2 && return 1 || true
	grep -q -- '--debug-addr' err2 || fail "bad address: $(cat err2)"
}

for c in bad_flags_give_usage_errors unreadable_file_is_named \
	stdout_passthrough_in_order count_stops_after_n \
	bodies_arrive_byte_exact exit_codes_map_to_classes \
	crash_loop_ends_in_dead_letter overrun_kills_the_process_group \
	sigterm_mid_stream_loses_nothing batch_flushes_on_count_bytes_and_wait \
	malformed_input_is_reported summary_balances \
	debug_addr_serves_metrics; do
	run_case "$c"
done
finish
