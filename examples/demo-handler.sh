#!/bin/sh
# SPDX-License-Identifier: MIT
# demo-handler.sh - the handler `make demo` runs per message: it reads a
# number on stdin and behaves like a flaky downstream service, so retries,
# timeouts and dead-lettering show in the summary:
#   every 7th message fails temporarily (exit 75) on its first attempt,
#   every 23rd hangs past the deadline on its first attempt,
#   every 31st is rejected for good (exit 65),
#   the rest succeed after a few milliseconds of "work".
read -r n
case $((n % 31)) in 0) echo "bad record $n" >&2; exit 65 ;; esac
if [ "${SLUICE_ATTEMPT:-1}" -eq 1 ]; then
	case $((n % 7)) in 0) exit 75 ;; esac
	case $((n % 23)) in 0) sleep 5 ;; esac
fi
sleep 0.01
exit 0
