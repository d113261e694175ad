#!/bin/sh
# SPDX-License-Identifier: MIT
# run.sh - `make bench`: sluice's engine against the Go anchor, side by side.
#
# For each case it runs bench_engine and, when `go` is installed, the Go
# anchor (bench/anchors/go-channel-pool, a copy of the seed's pattern) in the
# same run, and prints
#   BENCH <case> <figure> <unit> go=<figure> ratio=<ours/theirs>
# For throughput a ratio above 1 means sluice is faster; for ns/msg the ratio
# is theirs/ours, so above 1 still means sluice is faster.
# Each side runs BENCH_RUNS times (default 3) and its best run is printed.
# Usage: bench/run.sh BUILD_DIR [messages]
set -eu
build=${1:-build}
n=${2:-10000000}
runs=${BENCH_RUNS:-3}
here=$(cd "$(dirname "$0")" && pwd)
bin="$build/bench_engine"
[ -x "$bin" ] || { echo "run.sh: $bin not built" >&2; exit 1; }

gobin=""
if command -v go >/dev/null 2>&1; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	cp -r "$here/anchors/go-channel-pool" "$tmp/src"
	if (cd "$tmp/src" && GOFLAGS=-mod=mod GOPROXY=off GOCACHE="$tmp/cache" \
		go build -o "$tmp/go-channel-pool" . 2>&1); then
		gobin="$tmp/go-channel-pool"
	else
		echo "run.sh: the Go anchor did not build; printing ours only" >&2
	fi
else
	echo "run.sh: go not installed; printing ours only (apt-get install golang-go)" >&2
fi

# field VALUE_BEFORE_UNIT LINE: the number before " ns/msg" or " Mmsg/s"
num() { printf '%s\n' "$2" | sed -n "s|.* \([0-9.][0-9.]*\) $1.*|\1|p"; }

report() { # case ours_line go_line
	ours_ns=$(num 'ns/msg' "$2"); ours_m=$(num 'Mmsg/s' "$2")
	if [ -n "$3" ]; then
		go_ns=$(num 'ns/msg' "$3"); go_m=$(num 'Mmsg/s' "$3")
		printf 'BENCH %s %s Mmsg/s go=%s ratio=%s\n' "$1" "$ours_m" "$go_m" \
			"$(echo "$ours_m $go_m" | awk '{printf "%.2f", $1/$2}')"
		printf 'BENCH %s-latency %s ns/msg go=%s ratio=%s\n' "$1" "$ours_ns" "$go_ns" \
			"$(echo "$ours_ns $go_ns" | awk '{printf "%.2f", $2/$1}')"
	else
		printf 'BENCH %s %s Mmsg/s\n' "$1" "$ours_m"
		printf 'BENCH %s-latency %s ns/msg\n' "$1" "$ours_ns"
	fi
}

# best of $runs: the fastest run is the one least disturbed by the rest of
# a shared machine; both sides get the same treatment.
best() {
	b=""
	for _ in $(seq "$runs"); do
		line=$("$@")
		if [ -z "$b" ] || awk -v x="$(num 'ns/msg' "$line")" -v y="$(num 'ns/msg' "$b")" \
			'BEGIN { exit !(x < y) }'; then
			b=$line
		fi
	done
	printf '%s\n' "$b"
}

run_case() { # name mode workers
	ours=$(best "$bin" -m "$2" -w "$3" -n "$n")
	theirs=""
	[ -n "$gobin" ] && theirs=$(best "$gobin" -mode "$2" -workers "$3" -n "$n")
	echo "# sluice: $ours"
	[ -n "$theirs" ] && echo "# go:     $theirs"
	report "$1" "$ours" "$theirs"
}

run_case engine-pool-1w pool 1
run_case engine-pool-2w pool 2
run_case engine-pool-8w pool 8
run_case engine-batch-2w batch 2

# ---- the command line tool ---------------------------------------------------
cli="$build/sluice"
if [ -x "$cli" ]; then
	work=$(mktemp -d)
	ns() { date +%s%N; }
	seq "$n" >"$work/lines"
	t0=$(ns); cat "$work/lines" | cat >/dev/null; t1=$(ns)
	cat_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) / 1e9 }')
	t0=$(ns); cat "$work/lines" | "$cli" consume -q --discard; t1=$(ns)
	our_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) / 1e9 }')
	awk -v n="$n" -v o="$our_s" -v c="$cat_s" 'BEGIN {
		printf "BENCH cli-discard %.2f Mmsg/s cat=%.2f ratio=%.2f\n",
			n / o / 1e6, n / c / 1e6, c / o }'
	seq 10000 >"$work/lines10k"
	t0=$(ns); xargs -P 8 -n 1 true <"$work/lines10k"; t1=$(ns)
	x_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) / 1e9 }')
	t0=$(ns); "$cli" consume -q -j 8 --exec true <"$work/lines10k"; t1=$(ns)
	our_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) / 1e9 }')
	awk -v o="$our_s" -v x="$x_s" 'BEGIN {
		printf "BENCH cli-exec-true-j8 %.0f msg/s xargs=%.0f ratio=%.2f\n",
			10000 / o, 10000 / x, x / o }'
	rm -rf "$work"
fi
