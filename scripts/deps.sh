#!/bin/sh
# SPDX-License-Identifier: MIT
# deps.sh - install the Debian packages sluice builds, tests and benchmarks
# with, if any are missing.  Idempotent.  As root it runs apt-get; otherwise
# it prints the command to run and fails.
#   scripts/deps.sh          build + test dependencies
#   scripts/deps.sh --bench  also wrk (the load generator of the benchmarks)
# The tests need the standard tools the observability endpoints are proven
# against (go tool pprof from golang-go, protoc, graphviz, Prometheus and
# promtool, python3) and the NSQ transport's libraries (OpenSSL, zlib,
# snappy, libcurl for nsqlookupd).
set -eu
pkgs="build-essential cmake pkg-config clang clang-format cppcheck libclang-rt-14-dev
 libjansson-dev libmicrohttpd-dev zlib1g-dev libssl-dev libsnappy-dev
 libcurl4-openssl-dev openssl golang-go protobuf-compiler graphviz prometheus
 python3 wrk"
case "${1:-}" in
--bench) ;;
esac
missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0
cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
	echo "deps.sh: missing packages:$missing" >&2
	echo "deps.sh: run as root:  apt-get update && $cmd" >&2
	exit 1
fi
echo "deps.sh: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
