#!/bin/sh
# SPDX-License-Identifier: MIT
# bench_overhead.sh - what observing costs: the in-process engine benchmark
# (2 workers) with the execution trace recording vs off, and with the CPU
# profiler sampling at 100 Hz vs off, best of BENCH_RUNS (3) runs each, for
# a no-op handler (the worst case: the engine is all there is) and for a
# handler busy for 5 us per message:
#   BENCH trace-overhead-noop <percent> % ns_per_event=<ns> goal<=5%,<=20ns
#   BENCH cpuprof-overhead-noop <percent> % goal<=2%
#   BENCH trace-overhead-5us ... / cpuprof-overhead-5us ...
# usage: bench/bench_overhead.sh BUILD_DIR [messages]
set -eu
build=${1:-build}
n=${2:-5000000}
runs=${BENCH_RUNS:-3}
bin="$build/bench_engine"
[ -x "$bin" ] || { echo "bench_overhead.sh: $bin not built" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# case NAME SPIN_NS MESSAGES: best (lowest) of each figure across the runs.
case_() {
	: >"$out"
	for _ in $(seq "$runs"); do
		"$bin" -w 2 -n "$3" -s "$2" -t -P >>"$out"
	done
	awk -v name="$1" '
	/^trace off/ {
		if (off == "" || $3 < off) off = $3
		if (on == "" || $6 < on) on = $6
		if (ev == "" || $10 < ev) ev = $10
	}
	/^profiler off/ {
		if (poff == "" || $3 < poff) poff = $3
		if (pon == "" || $8 < pon) pon = $8
	}
	END {
		printf "BENCH trace-overhead-%s %.1f %% ns_per_event=%.1f goal<=5%%,<=20ns\n",
			name, (on - off) / off * 100, ev
		printf "BENCH cpuprof-overhead-%s %.1f %% goal<=2%%\n",
			name, (pon - poff) / poff * 100
	}' "$out"
}

case_ noop 0 "$n"
case_ 5us 5000 200000
