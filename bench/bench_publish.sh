#!/bin/sh
# SPDX-License-Identifier: MIT
# bench_publish.sh - MPUB throughput of the NSQ producer against fake_nsqd,
# printed beside the anchor: NSQ's own bench writer (MPUB, 200-byte bodies,
# batches of 200) measured about 380 k msg/s on this machine against nsqd.
#
# usage: bench/bench_publish.sh BUILD_DIR [messages [size [batch]]]
# Prints  BENCH nsq-pub <msg/s> msg/s anchor=380000 ratio=<ours/anchor>
# (best of BENCH_RUNS runs, default 3).  fake_nsqd does less work per
# message than nsqd (no disk queue, no channel copies while no channel
# exists), so the figure bounds the client, not a deployment.
set -eu
build=${1:-build}
n=${2:-1000000}
size=${3:-200}
batch=${4:-200}
runs=${BENCH_RUNS:-3}
anchor=380000
for b in bench_nsq_pub fake_nsqd; do
	[ -x "$build/$b" ] || { echo "bench_publish.sh: $build/$b not built" >&2; exit 1; }
done
tmp=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT

best=0
for _ in $(seq "$runs"); do
	# A fresh server per run: it keeps every message in memory.
	"$build/fake_nsqd" 0 --no-stdin >"$tmp/out" 2>&1 &
	pid=$!
	port=""
	for _ in $(seq 3000); do
		port=$(sed -n 's/^listening on //p' "$tmp/out" 2>/dev/null || true)
		[ -n "$port" ] && break
		sleep 0.01
	done
	[ -n "$port" ] || { echo "bench_publish.sh: fake_nsqd did not start" >&2; exit 1; }
	line=$("$build/bench_nsq_pub" "$port" "$n" "$size" "$batch")
	echo "$line" >&2
	rate=$(printf '%s\n' "$line" | sed -n 's/.*: \([0-9]*\) msg\/s.*/\1/p')
	[ "$rate" -gt "$best" ] && best=$rate
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	pid=""
done
printf 'BENCH nsq-pub %s msg/s anchor=%s ratio=%s\n' "$best" "$anchor" \
	"$(echo "$best $anchor" | awk '{printf "%.2f", $1/$2}')"
