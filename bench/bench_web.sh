#!/bin/sh
# SPDX-License-Identifier: MIT
# bench_web.sh - the seed's /test web service (fan out 10 tasks, wait, answer)
# under wrk, sluice's port (examples/web_service.c) beside the Go anchor
# (bench/anchors/go-web-test, a copy of ../shared/anchors/go-web-test) in the
# same run:
#   BENCH web-test <req/s> req/s go=<req/s> ratio=<ours/go>
# Each side gets WEB_RUNS runs (default 3) of `wrk -t2 -c100 -d10s`; the best
# is printed.  Both print their "do: i" lines to /dev/null.
# usage: bench/bench_web.sh BUILD_DIR
set -eu
build=${1:-build}
runs=${WEB_RUNS:-3}
dur=${WEB_DURATION:-10s}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
pids=""
trap 'for p in $pids; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"' EXIT

command -v wrk >/dev/null || { echo "bench_web.sh: wrk not installed" >&2; exit 1; }

# rps URL: the best requests/s of $runs wrk runs.
rps() {
	best=0
	for _ in $(seq "$runs"); do
		r=$(wrk -t2 -c100 -d"$dur" "$1" | awk '/Requests\/sec/ { print $2 }')
		best=$(awk -v a="$best" -v b="$r" 'BEGIN { print (b > a) ? b : a }')
	done
	echo "$best"
}

# wait_port PORT: until something answers there (10 s bound).
wait_port() {
	for _ in $(seq 1000); do
		curl -s -o /dev/null "http://127.0.0.1:$1/hello" && return 0
		sleep 0.01
	done
	echo "bench_web.sh: nothing answers on port $1" >&2
	return 1
}

"$build/web_service" --addr 127.0.0.1:18082 --debug-addr 127.0.0.1:0 \
	>/dev/null 2>"$tmp/ws.err" &
pids="$!"
wait_port 18082
ours=$(rps http://127.0.0.1:18082/test)
kill "$pids"
wait "$pids" 2>/dev/null || true

theirs=""
if command -v go >/dev/null 2>&1; then
	cp -r "$here/anchors/go-web-test" "$tmp/src"
	if (cd "$tmp/src" && GOFLAGS=-mod=mod GOPROXY=off GOCACHE="$tmp/cache" \
		go build -o "$tmp/go-web-test" . 2>&1); then
		"$tmp/go-web-test" >/dev/null 2>&1 &
		pids="$pids $!"
		wait_port 18081
		theirs=$(rps http://127.0.0.1:18081/test)
	fi
fi
if [ -n "$theirs" ]; then
	awk -v o="$ours" -v g="$theirs" 'BEGIN {
		printf "BENCH web-test %.0f req/s go=%.0f ratio=%.2f\n", o, g, o / g }'
else
	printf 'BENCH web-test %.0f req/s\n' "$ours"
fi
