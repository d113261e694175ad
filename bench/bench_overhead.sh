#!/bin/sh
# SPDX-License-Identifier: MIT
# bench_overhead.sh - what observing costs: the in-process engine benchmark
# (2 workers, no-op handler: the worst case, where the engine is all there
# is) with the execution trace recording vs off, and with the CPU profiler
# sampling at 100 Hz vs off, best of BENCH_RUNS (3) runs each:
#   BENCH trace-overhead <percent> % ns_per_event=<ns> goal<=5%,<=20ns
#   BENCH cpuprof-overhead <percent> % goal<=2%
# usage: bench/bench_overhead.sh BUILD_DIR [messages]
set -eu
build=${1:-build}
n=${2:-5000000}
runs=${BENCH_RUNS:-3}
bin="$build/bench_engine"
[ -x "$bin" ] || { echo "bench_overhead.sh: $bin not built" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$runs"); do
	"$bin" -w 2 -n "$n" -t -P >>"$out"
done
# Best (lowest) of each figure across the runs.
awk '
/^trace off/ {
	off = $3; on = $6; ev = $10
	if (best_off == "" || off < best_off) best_off = off
	if (best_on == "" || on < best_on) best_on = on
	if (best_ev == "" || ev < best_ev) best_ev = ev
}
/^profiler off/ {
	poff = $3; pon = $8
	if (best_poff == "" || poff < best_poff) best_poff = poff
	if (best_pon == "" || pon < best_pon) best_pon = pon
}
END {
	printf "BENCH trace-overhead %.1f %% ns_per_event=%.1f goal<=5%%,<=20ns\\n",
		(best_on - best_off) / best_off * 100, best_ev
	printf "BENCH cpuprof-overhead %.1f %% goal<=2%%\\n",
		(best_pon - best_poff) / best_poff * 100
}' "$out"
