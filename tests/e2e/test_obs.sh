#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_obs.sh - the debug endpoints against the standard tools: go tool
# pprof reads the CPU, heap and goroutine profiles of a live process and
# names its functions; protoc decodes the protobuf outputs; python parses
# the Chrome trace and the SVG flame graph; promtool lints /metrics and a
# real Prometheus scrapes it; wrk loads the seed's ported web service.
#
# usage: test_obs.sh BUILD_DIR [CASE-SUBSTRING]
# Needs (installed by scripts/deps.sh): golang-go, protobuf-compiler,
# prometheus, wrk, python3, curl.  A missing tool fails its case.
# Waits are for observable events (a line on the child's stdout, an HTTP
# answer, a target's health), bounded only to turn a hang into a failure.
set -u
BUILD=$(realpath "$1")
FILTER=${2:-}
TOP=$(mktemp -d)
HERE=$(cd "$(dirname "$0")" && pwd)
export HOME="$TOP/home" GOCACHE="$TOP/gocache" GOFLAGS=-mod=mod GOPROXY=off
export PPROF_TMPDIR="$TOP/pprof"
mkdir -p "$HOME"
cleanup() {
	[ -n "${CHILD_IN:-}" ] && exec {CHILD_IN}>&-
	jobs -p | xargs -r kill 2>/dev/null
	wait 2>/dev/null
	rm -rf "$TOP"
}
trap cleanup EXIT
. "$HERE/lib.sh"

# ---- one obs_child for every case ------------------------------------------
# Its stdin is a fifo we hold open; closing it stops the child.
mkfifo "$TOP/child.in"
"$BUILD/obs_child" <"$TOP/child.in" >"$TOP/child.out" 2>"$TOP/child.err" &
CHILD=$!
exec {CHILD_IN}>"$TOP/child.in"
child_ready() { grep -q '^known ' "$TOP/child.out"; }
wait_for child_ready || { cat "$TOP/child.err"; exit 1; }
PORT=$(sed -n 's/^port //p' "$TOP/child.out")
BUSY=$(sed -n 's/^busy //p' "$TOP/child.out")
KNOWN=$(sed -n 's/^known //p' "$TOP/child.out")
URL="http://127.0.0.1:$PORT"

pprof() { timeout 120 go tool pprof "$@"; }
# status CODE-FILE BODY-FILE URL [curl args]: fetch, keep status and body.
fetch() {
	local code
	code=$(curl -s -o "$2" -w '%{http_code}' "${@:4}" "$3") || true
	echo "$code" >"$1"
}

# ---- cases ------------------------------------------------------------------

cpu_profile_names_the_busy_function() {
	pprof -top "$URL/debug/pprof/profile?seconds=2" >top 2>err ||
		fail "pprof: $(cat err)"
	grep -q 'busy_checksum' top || fail "busy_checksum not in: $(cat top)"
	# the worker's stage label, as pprof -tags shows Go's labels
	pprof -tags "$PPROF_TMPDIR"/pprof.*.samples.cpu.001.pb.gz >tags 2>&1 ||
		fail "pprof -tags: $(cat tags)"
	grep -q 'handler' tags || fail "no stage label: $(cat tags)"
}

cpu_profile_other_formats() {
	fetch code raw "$URL/debug/pprof/profile?seconds=1"
	[ "$(cat code)" = 200 ] || fail "status $(cat code)"
	gzip -dc raw | protoc --decode_raw >decoded || fail "protoc"
	grep -q 'busy_checksum' decoded || fail "no function name in the proto"
	fetch code folded "$URL/debug/pprof/profile?seconds=1&format=folded"
	grep -q 'busy_checksum [0-9]*$' folded || fail "folded: $(head -3 folded)"
	fetch code svg "$URL/debug/pprof/profile?seconds=1&format=svg"
	python3 -c 'import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])' svg ||
		fail "svg is not well-formed XML"
	grep -q 'busy_checksum' svg || fail "svg lacks busy_checksum"
}

second_cpu_profile_is_refused() {
	# Two 5 s profiles asked for at once overlap, so exactly one is
	# served and the other refused, whichever comes first.
	fetch code1 body1 "$URL/debug/pprof/profile?seconds=5" &
	fetch code2 body2 "$URL/debug/pprof/profile?seconds=5" &
	wait
	local codes
	codes=$(sort code1 code2 | tr '\n' ' ')
	[ "$codes" = "200 409 " ] || fail "statuses: $codes"
	cat body1 body2 | grep -aq 'cpu profiling already in use' ||
		fail "no refusal text"
}

bad_parameters_get_400() {
	local q
	for q in "profile?seconds=-1" "profile?seconds=abc" \
		"profile?seconds=99999999" "profile?seconds=" "profile?hz=0" \
		"profile?format=png" "heap?debug=7" "trace?seconds=-1" \
		"trace?format=xml" "goroutine?debug=3" "heap?sample_index=nope"; do
		fetch code body "$URL/debug/pprof/$q"
		[ "$(cat code)" = 400 ] || fail "$q: $(cat code)"
		grep -q 'bad parameter' body || fail "$q: $(cat body)"
	done
}

heap_profile_attributes_the_known_allocation() {
	pprof -top -sample_index=inuse_space -unit=B "$URL/debug/pprof/heap" \
		>top 2>err || fail "pprof: $(cat err)"
	line=$(grep 'alloc_known' top) || fail "alloc_known not in: $(cat top)"
	# "cum" is the fourth column, in bytes: within 30 % of the truth.
	cum=$(echo "$line" | awk '{print $4}' | tr -d B)
	awk -v c="$cum" -v k="$KNOWN" 'BEGIN { exit !(c > 0.7 * k && c < 1.3 * k) }' ||
		fail "alloc_known holds $cum B by the profile, $KNOWN B in truth"
	fetch code text "$URL/debug/pprof/heap?debug=1"
	grep -q '^heap profile:' text || fail "debug=1: $(head -2 text)"
}

symbol_round_trips_an_address() {
	fetch code body "$URL/debug/pprof/symbol"
	grep -q 'num_symbols: 1' body || fail "GET: $(cat body)"
	fetch code body "$URL/debug/pprof/symbol" --data-binary "$BUSY"
	grep -q "busy_checksum" body || fail "POST $BUSY: $(cat body)"
	fetch code body "$URL/debug/pprof/symbol?$BUSY+$BUSY"
	[ "$(grep -c busy_checksum body)" = 2 ] || fail "GET query: $(cat body)"
}

trace_json_is_well_formed() {
	fetch code trace.json "$URL/debug/pprof/trace?seconds=1"
	[ "$(cat code)" = 200 ] || fail "status $(cat code)"
	python3 "$HERE/../lib/check_trace.py" trace.json min:b:message=1 || fail "trace checks"
}

trace_perfetto_decodes() {
	fetch code trace.pb "$URL/debug/pprof/trace?seconds=1&format=perfetto"
	[ "$(cat code)" = 200 ] || fail "status $(cat code)"
	protoc --decode_raw <trace.pb >decoded || fail "protoc --decode_raw"
	grep -q 'worker' decoded || fail "no thread names in the trace"
}

goroutine_lists_the_threads() {
	fetch code body "$URL/debug/pprof/goroutine?debug=2"
	grep -q 'worker' body || fail "no worker: $(head body)"
	grep -q 'producer' body || fail "no producer: $(head body)"
	pprof -top "$URL/debug/pprof/goroutine" >top 2>err ||
		fail "pprof goroutine: $(cat err)"
	fetch code body "$URL/debug/pprof/threadcreate?debug=1"
	grep -q 'threadcreate profile' body || fail "threadcreate: $(head -3 body)"
}

cmdline_names_the_program() {
	fetch code body "$URL/debug/pprof/cmdline"
	tr '\0' '\n' <body | grep -q 'obs_child$' || fail "cmdline: $(cat body)"
}

inflight_table_parses() {
	fetch code body "$URL/debug/inflight?format=json"
	[ "$(cat code)" = 200 ] || fail "status $(cat code)"
	python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert isinstance(d["in_flight"], list) and isinstance(d["failures"], list) and d["workers"] == 2' body ||
		fail "inflight: $(head -c 300 body)"
	fetch code body "$URL/debug/inflight"
	[ "$(cat code)" = 200 ] || fail "text status $(cat code)"
}

metrics_pass_promtool_and_prometheus() {
	fetch code metrics "$URL/metrics"
	promtool check metrics <metrics >lint 2>&1 || fail "promtool: $(cat lint)"
	# +Inf buckets and whole families are checked here: promtool does not.
	python3 "$HERE/check_metrics.py" metrics || fail "metrics checks"
	local pport
	pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	cat >prom.yml <<EOF
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: sluice
    static_configs:
      - targets: ['127.0.0.1:$PORT']
EOF
	prometheus --config.file=prom.yml --storage.tsdb.path=data \
		--web.listen-address="127.0.0.1:$pport" >prom.log 2>&1 &
	local prom=$! up=0
	target_up() {
		curl -s "http://127.0.0.1:$pport/api/v1/targets" >targets 2>/dev/null &&
			python3 -c 'import json,sys; t=json.load(open("targets"))["data"]["activeTargets"]; sys.exit(0 if t and t[0]["health"]=="up" and t[0]["lastError"]=="" else 1)'
	}
	wait_for target_up && up=1
	curl -s "http://127.0.0.1:$pport/api/v1/query?query=sluice_messages_handled_total" >q
	kill "$prom"
	wait "$prom" 2>/dev/null
	[ "$up" = 1 ] || fail "target never up: $(cat targets) $(tail -5 prom.log)"
	grep -q '"status":"success"' q || fail "query: $(cat q)"
}

file_profiles_read_back() {
	"$BUILD/file_profile" . >out 2>err || fail "file_profile: $(cat err)"
	pprof -top "$BUILD/file_profile" cpu.pb.gz >top 2>&1 || fail "pprof: $(cat top)"
	grep -q 'crunch' top || fail "crunch not in the CPU profile: $(cat top)"
	pprof -top -sample_index=inuse_space heap.pb.gz >htop 2>&1 ||
		fail "pprof heap: $(cat htop)"
	# ASan and TSan own malloc, so the whole-process sampler is compiled
	# out of sanitizer builds: only sluice's own allocations are seen.
	if ! nm "$BUILD/file_profile" | grep -q '__[at]san_init'; then
		grep -q 'keep_buffers' htop || fail "keep_buffers not in: $(cat htop)"
	fi
	python3 "$HERE/../lib/check_trace.py" trace.json min:b:message=1 || fail "trace checks"
}

cli_writes_profile_files() {
	seq 20000 | "$BUILD/sluice" consume -q -j 2 --discard \
		--cpuprofile cpu.pb.gz --memprofile heap.pb.gz --trace t.json ||
		fail "consume exit $?"
	gzip -dc cpu.pb.gz | protoc --decode_raw >/dev/null || fail "cpu profile"
	gzip -dc heap.pb.gz | protoc --decode_raw >/dev/null || fail "heap profile"
	python3 "$HERE/../lib/check_trace.py" t.json min:b:message=1 || fail "trace"
	# The same from the environment, Perfetto by the file name.
	seq 100 | SLUICE_TRACE=t.pftrace "$BUILD/sluice" consume -q --discard ||
		fail "env: exit $?"
	protoc --decode_raw <t.pftrace >/dev/null || fail "perfetto file"
	seq 10 | "$BUILD/sluice" consume -q --discard --cpuprofile /nonexistent/x \
		2>err && fail "unwritable profile accepted"
	grep -q 'cpuprofile' err || fail "error does not name the flag: $(cat err)"
}

web_service_under_wrk() {
	"$BUILD/web_service" --addr 127.0.0.1:0 --debug-addr 127.0.0.1:0 \
		>/dev/null 2>ws.err &
	local ws=$!
	ws_ready() { grep -q 'listening' ws.err; }
	wait_for ws_ready || fail "web_service: $(cat ws.err)"
	local wport
	wport=$(sed -n 's|.*/test on http://127.0.0.1:\([0-9]*\).*|\1|p' ws.err)
	curl -s "http://127.0.0.1:$wport/test" >body
	[ "$(cat body)" = success ] || fail "/test: $(cat body)"
	wrk -t2 -c32 -d2s "http://127.0.0.1:$wport/test" >wrk.out 2>&1 ||
		fail "wrk: $(cat wrk.out)"
	grep -q 'Non-2xx' wrk.out && fail "errors: $(cat wrk.out)"
	grep -q 'Socket errors' wrk.out && fail "socket errors: $(cat wrk.out)"
	kill -TERM "$ws"
	wait "$ws" || fail "web_service exit $?: $(cat ws.err)"
	grep -q 'stopped after' ws.err || fail "no clean stop: $(cat ws.err)"
}

for c in cpu_profile_names_the_busy_function cpu_profile_other_formats \
	second_cpu_profile_is_refused bad_parameters_get_400 \
	heap_profile_attributes_the_known_allocation \
	symbol_round_trips_an_address trace_json_is_well_formed \
	trace_perfetto_decodes goroutine_lists_the_threads \
	cmdline_names_the_program inflight_table_parses \
	metrics_pass_promtool_and_prometheus file_profiles_read_back \
	cli_writes_profile_files web_service_under_wrk; do
	run_case "$c"
done

# The child stops cleanly once its stdin closes.
exec {CHILD_IN}>&-
CHILD_IN=""
wait "$CHILD" || { echo "obs_child exit $?: $(cat "$TOP/child.err")"; failed=$((failed + 1)); }
finish
