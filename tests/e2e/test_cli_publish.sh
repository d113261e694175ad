#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_cli_publish.sh - end-to-end tests of `sluice publish` against
# fake_nsqd: the real binary publishes, a small raw NSQ consumer (python3,
# below) subscribes and writes back what nsqd delivers, byte for byte.
#
# usage: test_cli_publish.sh PATH_TO_SLUICE PATH_TO_FAKE_NSQD [CASE-SUBSTRING]
# Each case starts its own fake_nsqd on an ephemeral port.  Waiting is for
# an observable event (the port line, N messages read), each bounded by
# 30 s, which only turns a hang into a failure.  The harness (fail,
# wait_for, run_case, finish) is tests/e2e/lib.sh.
set -u
SLUICE=$(realpath "$1")
FAKE=$(realpath "$2")
FILTER=${3:-}
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_init

# A raw consumer: SUB TOPIC c, RDY, wait for SUB's OK, read COUNT messages
# (FIN each) and write them to stdout in length framing (4-byte big-endian
# size, body).  COUNT 0 only creates the channel.
cat >"$TOP/sub.py" <<'EOF'
import socket, struct, sys
port, topic, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall(b"  V2" + b"SUB " + topic.encode() + b" c\nRDY 2500\n")
buf, out, got, subbed = b"", sys.stdout.buffer, 0, False
while got < count or not subbed:
    while True:
        if len(buf) >= 4:
            size = struct.unpack(">i", buf[:4])[0]
            if len(buf) >= 4 + size:
                break
        data = s.recv(65536)
        if not data:
            sys.exit("nsqd closed the connection")
        buf += data
    ftype, data, buf = struct.unpack(">i", buf[4:8])[0], buf[8:4 + size], buf[4 + size:]
    if ftype == 1:
        sys.exit("error frame: %r" % data)
    if ftype == 0:
        if data == b"_heartbeat_":
            s.sendall(b"NOP\n")
        elif data == b"OK":
            subbed = True  # the channel exists from here on
        continue
    body = data[26:]
    s.sendall(b"FIN " + data[10:26] + b"\n")
    out.write(struct.pack(">I", len(body)) + body)
    got += 1
out.flush()
EOF

nsqd_port() {
	PORT=$(sed -n 's/^listening on //p' nsqd.out 2>/dev/null || true)
	[ -n "$PORT" ]
}

# Start fake_nsqd; sets PORT.
start_nsqd() {
	"$FAKE" 0 --no-stdin "$@" >nsqd.out 2>&1 &
	NSQD_PID=$!
	wait_for nsqd_port
}

stop_nsqd() {
	kill "$NSQD_PID" 2>/dev/null || true
	wait "$NSQD_PID" 2>/dev/null || true
}

# subscribe TOPIC COUNT > file (length framing)
subscribe() {
	timeout 30 python3 "$TOP/sub.py" "$PORT" "$1" "$2"
}

# Length framing of each line of stdin (bash cannot printf a NUL length).
to_length() {
	python3 -c '
import struct, sys
for line in sys.stdin.buffer.read().split(b"\n")[:-1]:
    sys.stdout.buffer.write(struct.pack(">I", len(line)) + line)'
}

# After each case: no fake_nsqd left behind, even when the case failed.
stop_nsqd_if_any() {
	jobs -p | xargs -r kill 2>/dev/null || true
	wait 2>/dev/null || true
}

lines_round_trip_in_batches() {
	start_nsqd
	# A linger longer than the run: only full batches and the final
	# flush send, so the batch count is exact.
	seq 10000 | "$SLUICE" publish --nsqd "127.0.0.1:$PORT" --topic t \
		--batch 1000 --linger 1h 2>err
	grep -q 'published 10000 messages (38894 bytes) to t in 10 batches' err ||
		fail "summary: $(cat err)"
	subscribe t 10000 >got
	seq 10000 | to_length | cmp - got || fail "bodies differ"
	stop_nsqd
}

binary_bodies_byte_exact() {
	start_nsqd
	length_input
	"$SLUICE" publish -q --nsqd "127.0.0.1:$PORT" --topic bin \
		--framing length input 2>err || fail "exit $?: $(cat err)"
	[ ! -s err ] || fail "-q printed: $(cat err)"
	subscribe bin 3 >got
	cmp input got || fail "bodies differ"
	# nul framing, from two files in order
	printf 'x y\nz\000second\000' >a
	printf 'third\000' >b
	"$SLUICE" publish -q --nsqd "127.0.0.1:$PORT" --topic nul \
		--framing nul a b
	subscribe nul 3 >got2
	# The first body holds a newline: compare it by length framing.
	python3 -c '
import struct, sys
want = [b"x y\nz", b"second", b"third"]
sys.stdout.buffer.write(b"".join(struct.pack(">I", len(w)) + w for w in want))' >want2
	cmp want2 got2 || fail "nul framing"
	stop_nsqd
}

defer_uses_dpub() {
	start_nsqd
	# The channel must exist for a deferred message to wait in it.
	subscribe d 0
	local t0 t1
	t0=$(date +%s%N)
	printf 'one\ntwo\n' | "$SLUICE" publish --nsqd "127.0.0.1:$PORT" \
		--topic d --defer 100ms 2>err
	grep -q 'published 2 messages (6 bytes) to d in 2 DPUBs' err ||
		fail "summary: $(cat err)"
	subscribe d 2 >got
	t1=$(date +%s%N)
	[ $((t1 - t0)) -ge 100000000 ] || fail "delivered after $((t1 - t0)) ns"
	# Equal delays promise no order (reference section 12): compare sets.
	python3 -c '
import struct, sys
b, out = open(sys.argv[1], "rb").read(), []
while b:
    n = struct.unpack(">I", b[:4])[0]
    out.append(b[4:4 + n].decode())
    b = b[4 + n:]
print(" ".join(sorted(out)))' got >bodies
	[ "$(cat bodies)" = "one two" ] || fail "bodies: $(cat bodies)"
	stop_nsqd
}

bad_flags_exit_2() {
	local out
	for args in "--topic t" "--nsqd 127.0.0.1:1" \
		"--nsqd 127.0.0.1:99999 --topic t" \
		"--nsqd 127.0.0.1:1 --topic bad*topic" \
		"--nsqd 127.0.0.1:1 --topic t --batch 0" \
		"--nsqd 127.0.0.1:1 --topic t --framing csv" \
		"--nsqd 127.0.0.1:1 --topic t --defer soon" \
		"--nsqd 127.0.0.1:1 --topic t --no-such-flag"; do
		# shellcheck disable=SC2086
		"$SLUICE" publish $args </dev/null 2>err && fail "$args: exit 0"
		[ $? -eq 2 ] || fail "$args: exit not 2"
		[ -s err ] || fail "$args: no message"
	done
	"$SLUICE" publish --nsqd 127.0.0.1:1 --topic 'bad*topic' </dev/null 2>err || true
	grep -q 'invalid topic name' err || fail "topic message: $(cat err)"
	"$SLUICE" help publish | grep -q 'usage: sluice publish' || fail "help"
	"$SLUICE" --help | grep -q 'publish' || fail "top help"
}

unreachable_nsqd_is_named() {
	# A port nothing listens on: bind one and never listen.
	local port
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	set +e
	seq 3 | "$SLUICE" publish --nsqd "127.0.0.1:$port" --topic t 2>err
	local rc=$?
	set -e
	[ $rc -eq 69 ] || fail "exit $rc"
	grep -q "cannot connect to 127.0.0.1:$port" err || fail "message: $(cat err)"
}

nsqd_refusal_exits_1() {
	start_nsqd --max-msg-size 10
	set +e
	printf 'short\nthis one is far too long\nthird\n' |
		"$SLUICE" publish --nsqd "127.0.0.1:$PORT" --topic t \
			--batch 1 2>err
	local rc=$?
	set -e
	[ $rc -eq 1 ] || fail "exit $rc: $(cat err)"
	grep -q 'E_BAD_MESSAGE' err || fail "message: $(cat err)"
	subscribe t 1 >got
	printf 'short\n' | to_length | cmp - got || fail "the good one"
	stop_nsqd
}

missing_input_file_exits_66() {
	start_nsqd
	set +e
	"$SLUICE" publish --nsqd "127.0.0.1:$PORT" --topic t nope.txt 2>err
	local rc=$?
	set -e
	[ $rc -eq 66 ] || fail "exit $rc"
	grep -q 'nope.txt' err || fail "message: $(cat err)"
	stop_nsqd
}

sigterm_publishes_what_was_read() {
	local pid rc
	start_nsqd
	mkfifo in
	"$SLUICE" publish --nsqd "127.0.0.1:$PORT" --topic t --batch 50 \
		--linger 1h <in 2>err &
	pid=$!
	exec 3>in
	# One write of 120 lines: one read.  Two full batches go out; the
	# last 20 wait for a third that the linger would hold for an hour.
	seq 120 >&3
	subscribe t 100 >got || fail "the first 100 never arrived"
	kill -TERM "$pid"
	wait "$pid" && rc=0 || rc=$?
	exec 3>&-
	[ $rc -eq 130 ] || fail "exit $rc: $(cat err)"
	grep -q 'published 120 messages' err || fail "summary: $(cat err)"
	subscribe t 20 >>got || fail "the last 20 were not published"
	seq 120 | to_length | cmp - got || fail "bodies differ"
	stop_nsqd
}

for c in lines_round_trip_in_batches binary_bodies_byte_exact \
	defer_uses_dpub bad_flags_exit_2 unreachable_nsqd_is_named \
	nsqd_refusal_exits_1 missing_input_file_exits_66 \
	sigterm_publishes_what_was_read; do
	run_case "$c"
	stop_nsqd_if_any
done
finish
