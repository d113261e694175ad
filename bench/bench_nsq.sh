#!/bin/sh
# SPDX-License-Identifier: MIT
# bench_nsq.sh - NSQ consumption: `sluice consume --discard` against
# fake_nsqd, with 1 and 2 connections, credit (RDY) 2500, 200-byte bodies.
#
# usage: bench/bench_nsq.sh BUILD_DIR [messages [size]]
# Prints, per connection count,
#   BENCH nsq-consume-<k>conn <msg/s> msg/s <cpu> us/msg rss=<KiB>
#         anchor=10-12us/msg (go-nsq) goal<=1us/msg
# where cpu is user + system time of the consumer process only (from
# wait4 of that child), and rss its peak resident set in KiB (VmHWM,
# polled every 5 ms: wait4's ru_maxrss would include this Python
# process, which the child shares pages with until it execs).  The messages
# are published first (MPUB batches of 1000 over one TCP connection per
# fake_nsqd, before the consumer starts), so the run measures draining a
# backlog.  fake_nsqd costs CPU too but is not counted; on a 2-core
# machine it competes with the consumer, so msg/s is a lower bound.
set -eu
build=${1:-build}
n=${2:-1000000}
size=${3:-200}
for b in sluice fake_nsqd; do
	[ -x "$build/$b" ] || { echo "bench_nsq.sh: $build/$b not built" >&2; exit 1; }
done
exec python3 - "$build" "$n" "$size" <<'EOF'
import os, socket, struct, subprocess, sys, time

build, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def start_nsqd():
    p = subprocess.Popen([os.path.join(build, "fake_nsqd"), "0", "--no-stdin"],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("listening on "), line
    return p, int(line.split()[2])

def publish(port, count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"  V2")
    body = b"x" * size
    done = 0
    while done < count:
        k = min(1000, count - done)
        payload = struct.pack(">I", k) + (struct.pack(">I", size) + body) * k
        s.sendall(b"MPUB t\n" + struct.pack(">I", len(payload)) + payload)
        # One "OK" frame (or heartbeat) per MPUB.
        hdr = b""
        while len(hdr) < 8:
            hdr += s.recv(8 - len(hdr))
        ln, typ = struct.unpack(">II", hdr)
        data = b""
        while len(data) < ln - 4:
            data += s.recv(ln - 4 - len(data))
        assert typ == 0 and data == b"OK", (typ, data)
        done += k
    s.close()

for conns in (1, 2):
    servers = [start_nsqd() for _ in range(conns)]
    per = n // conns
    # The topic keeps its backlog until the first channel (our SUB).
    for _, port in servers:
        publish(port, per)
    args = [os.path.join(build, "sluice"), "consume", "-q", "--discard",
            "-j", "2", "--prefetch", "2498", "--topic", "t", "-n",
            str(per * conns)]
    for _, port in servers:
        args += ["--nsqd", "127.0.0.1:%d" % port]
    t0 = time.monotonic()
    c = subprocess.Popen(args)
    # Peak RSS from the child's own VmHWM, polled until it exits: wait4's
    # ru_maxrss would also count this Python process, whose pages the
    # child shared between (v)fork and exec.
    hwm = 0
    while True:
        pid, status, ru = os.wait4(c.pid, os.WNOHANG)
        if pid:
            break
        try:
            with open("/proc/%d/status" % c.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.005)
    wall = time.monotonic() - t0
    c.returncode = 0
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    cpu = ru.ru_utime + ru.ru_stime
    total = per * conns
    print("BENCH nsq-consume-%dconn %.0f msg/s %.2f us/msg rss=%d "
          "anchor=10-12us/msg goal<=1us/msg"
          % (conns, total / wall, cpu / total * 1e6, hwm))
    for p, _ in servers:
        p.kill()
        p.wait()
EOF
