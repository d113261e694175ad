#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_cli_nsq.sh - end-to-end tests of `sluice consume` on NSQ: the real
# binary against the fake_nsqd and fake_lookupd stand-ins (children driven
# through their stdin control protocol).
#
# usage: test_cli_nsq.sh SLUICE FAKE_NSQD FAKE_LOOKUPD [CASE-SUBSTRING]
# Every wait is for an observable event (a stand-in's "ok", a file's line
# count, a process exit), polled with the 30 s bound of lib.sh.
set -u
SLUICE=$(realpath "$1")
FAKE_NSQD=$(realpath "$2")
FAKE_LOOKUPD=$(realpath "$3")
FILTER=${4:-}
. "$(dirname "$0")/lib.sh"
e2e_init

# ---- stand-ins --------------------------------------------------------------

# start_child NAME PROGRAM ARGS...: run PROGRAM with its stdin on the fifo
# NAME.ctl (held open on a descriptor saved in NAME_fd) and its stdout in
# NAME.out; sets NAME_port from its "listening on PORT" line.
start_child() {
	local name=$1 fd
	shift
	mkfifo "$name.ctl"
	"$@" <"$name.ctl" >"$name.out" &
	exec {fd}>"$name.ctl"
	eval "${name}_fd=$fd ${name}_oks=0"
	wait_for grep -q '^listening on' "$name.out"
	eval "${name}_port=$(sed -n 's/^listening on //p' "$name.out")"
}

oks_at_least() { [ "$(grep -c '^ok' "$1")" -ge "$2" ]; }

# ctl NAME LINE: send a control line and wait for its "ok".
ctl() {
	local fd oks
	eval "fd=\$${1}_fd oks=\$((${1}_oks + 1)); ${1}_oks=\$oks"
	printf '%s\n' "$2" >&"$fd"
	wait_for oks_at_least "$1.out" "$oks"
}

nsqd() { start_child "$1" "$FAKE_NSQD" 0 --min-interval 100 "${@:2}"; }

# pub_seq NAME FIRST LAST: publish bodies FIRST..LAST to topic t.
pub_seq() {
	local i
	for i in $(seq "$2" "$3"); do
		ctl "$1" "pub t $i"
	done
}

# ---- cases ------------------------------------------------------------------

nsq_flags_are_checked() {
	local rc
	"$SLUICE" consume --nsqd 127.0.0.1:1 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] && grep -q -- "--topic" err || fail "no topic: $rc $(cat err)"
	"$SLUICE" consume --topic t 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] && grep -q -- "--nsqd or --lookupd" err || fail "topic alone: $rc"
	"$SLUICE" consume --nsqd nohost --topic t 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] && grep -q "HOST:PORT" err || fail "no port: $rc $(cat err)"
	"$SLUICE" consume --nsqd 127.0.0.1:1 --topic 'bad*' 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] || fail "bad topic: exit $rc $(cat err)"
	"$SLUICE" consume --nsqd 127.0.0.1:1 --topic t x.txt 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] && grep -q "FILE" err || fail "files with NSQ: $rc"
	"$SLUICE" consume --nsqd 127.0.0.1:1 --topic t --tls-ca x 2>err && return 1 || rc=$?
	[ $rc -eq 2 ] && grep -q -- "need --tls" err || fail "--tls-ca alone: $rc"
	# Nothing listens on port 1: unavailable, not a usage error.
	"$SLUICE" consume -q --nsqd 127.0.0.1:1 --topic t 2>err && return 1 || rc=$?
	[ $rc -eq 69 ] && grep -q "cannot connect" err || fail "unreachable: $rc $(cat err)"
	"$SLUICE" consume --help | grep -q -- "--lookupd URL" || fail "--help"
}

nsq_bodies_reach_stdout() {
	nsqd d
	pub_seq d 1 50
	"$SLUICE" consume -q -j 4 --nsqd "127.0.0.1:$d_port" --topic t -n 50 \
		--stdout >out 2>err || fail "exit $?: $(cat err)"
	sort -n out | cmp - <(seq 50) || fail "bodies: $(sort -n out | tr '\n' ' ')"
}

nsq_two_nsqd_and_exec() {
	nsqd a
	nsqd b
	pub_seq a 1 20
	pub_seq b 21 40
	# One write per child: concurrent children cannot interleave lines.
	"$SLUICE" consume -q -j 3 --nsqd "127.0.0.1:$a_port" \
		--nsqd "127.0.0.1:$b_port" --topic t -n 40 \
		--exec 'echo "$(cat)"' >out 2>err || fail "exit $?: $(cat err)"
	sort -n out | cmp - <(seq 40) || fail "bodies: $(sort -n out | tr '\n' ' ')"
}

nsq_permanent_failure_is_dead_lettered() {
	local rc
	nsqd d
	ctl d "pub t good"
	ctl d "pub t bad"
	"$SLUICE" consume -q -j 1 --nsqd "127.0.0.1:$d_port" --topic t -n 2 \
		--exec 'read x; [ "$x" != bad ] || exit 65' \
		--dead-letter dl.jsonl 2>err && rc=0 || rc=$?
	[ $rc -eq 1 ] || fail "exit $rc: $(cat err)"
	[ "$(wc -l <dl.jsonl)" -eq 1 ] || fail "dead letters: $(cat dl.jsonl)"
	grep -q '"attempts":1' dl.jsonl || fail "not at once: $(cat dl.jsonl)"
}

nsq_sigterm_gives_back_the_rest() {
	local pid n
	nsqd d
	pub_seq d 1 30
	# Slow handlers; prefetch holds more than run.
	"$SLUICE" consume -j 2 --prefetch 8 --nsqd "127.0.0.1:$d_port" \
		--topic t --exec 'echo "$(cat)"; sleep 0.3' >out 2>err &
	pid=$!
	wait_for lines_at_least out 2
	kill -TERM $pid
	wait $pid || fail "exit $?: $(cat err)"
	grep -q "given back" err || fail "summary: $(cat err)"
	n=$(wc -l <out)
	[ "$n" -lt 30 ] || fail "all $n handled before the signal"
	# What was not handled went back to nsqd at once (REQ 0), not after
	# its 60 s msg_timeout: a second run gets it well within 30 s.
	"$SLUICE" consume -q -j 4 --nsqd "127.0.0.1:$d_port" --topic t \
		-n $((30 - n)) --stdout >>out 2>err2 || fail "second run: $(cat err2)"
	sort -n out | uniq | cmp - <(seq 30) || fail "lost: $(sort -n out | tr '\n' ' ')"
}

nsq_lookupd_discovers_nsqd() {
	nsqd d
	start_child l "$FAKE_LOOKUPD"
	ctl l "add 127.0.0.1 $d_port"
	pub_seq d 1 10
	"$SLUICE" consume -q -j 2 --lookupd "http://127.0.0.1:$l_port" \
		--topic t -n 10 --stdout >out 2>err || fail "exit $?: $(cat err)"
	sort -n out | cmp - <(seq 10) || fail "bodies: $(cat out)"
}

nsq_debug_addr_exports_nsq_metrics() {
	local pid port body
	nsqd d
	pub_seq d 1 5
	"$SLUICE" consume -j 2 --prefetch 1 --discard --debug-addr 127.0.0.1:0 \
		--nsqd "127.0.0.1:$d_port" --topic t 2>err &
	pid=$!
	debug_port err
	wait_for metrics_match "^sluice_nsq_fin_total 5"
	printf '%s' "$body" | grep -q '^sluice_nsq_rdy 3' || fail "rdy: $body"
	printf '%s' "$body" | grep -q '^sluice_nsq_credit 3' || fail "credit"
	printf '%s' "$body" | grep -q "sluice_nsq_conn_rdy{addr=\"127.0.0.1:$d_port\"} 3" ||
		fail "per connection: $(printf '%s' "$body" | grep conn_rdy)"
	kill -TERM $pid
	wait $pid || fail "exit status $?"
}

nsq_snappy_and_auth_from_the_environment() {
	local rc
	nsqd d --snappy --auth-secret s3cret
	pub_seq d 1 10
	SLUICE_AUTH_SECRET=s3cret "$SLUICE" consume -q --snappy \
		--nsqd "127.0.0.1:$d_port" --topic t -n 10 --stdout >out 2>err ||
		fail "exit $?: $(cat err)"
	sort -n out | cmp - <(seq 10) || fail "bodies: $(cat out)"
	"$SLUICE" consume -q --nsqd "127.0.0.1:$d_port" --topic t -n 1 \
		--auth-secret wrong 2>err && return 1 || rc=$?
	[ $rc -eq 69 ] && grep -q "E_AUTH_FAILED" err || fail "wrong secret: $rc $(cat err)"
	"$SLUICE" consume --snappy --deflate --nsqd 127.0.0.1:1 --topic t \
		2>err && return 1 || rc=$?
	[ $rc -eq 2 ] || fail "both compressions: $rc"
}

for c in nsq_flags_are_checked nsq_bodies_reach_stdout nsq_two_nsqd_and_exec \
	nsq_permanent_failure_is_dead_lettered nsq_sigterm_gives_back_the_rest \
	nsq_lookupd_discovers_nsqd nsq_debug_addr_exports_nsq_metrics \
	nsq_snappy_and_auth_from_the_environment; do
	run_case "$c"
done
finish
