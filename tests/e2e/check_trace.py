#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# check_trace.py - structural checks of a Chrome Trace Event JSON file, the
# ones Perfetto's importer relies on: valid JSON; every thread that has
# events is named by a thread_name metadata event; complete ("X") and
# begin/end ("B"/"E") slices nest perfectly per thread; every flow id has
# its start ("s") and its end ("f"); async spans ("b"/"e") are matched.
# usage: check_trace.py FILE [--min-events N]
import json
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    min_events = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    doc = json.load(open(path))
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    errors = []
    named = set()
    used = set()
    slices = defaultdict(list)
    flows = defaultdict(set)
    asyncs = defaultdict(int)
    for ev in events:
        ph = ev.get("ph")
        key = (ev.get("pid"), ev.get("tid"))
        if ph == "M":
            if ev.get("name") == "thread_name":
                if not ev.get("args", {}).get("name"):
                    errors.append("empty thread name: %r" % ev)
                named.add(key)
            continue
        used.add(key)
        ts = float(ev["ts"])
        if ph == "X":
            slices[key].append((ts, ts + float(ev.get("dur", 0)), ev["name"]))
        elif ph in ("s", "f"):
            flows[ev["id"]].add(ph)
        elif ph == "b":
            asyncs[(ev.get("cat"), str(ev.get("id", ev.get("id2"))))] += 1
        elif ph == "e":
            asyncs[(ev.get("cat"), str(ev.get("id", ev.get("id2"))))] -= 1
    # B/E pairs become slices too, matched on a per-thread stack.
    stacks = defaultdict(list)
    for ev in events:
        key = (ev.get("pid"), ev.get("tid"))
        if ev.get("ph") == "B":
            stacks[key].append(ev)
        elif ev.get("ph") == "E":
            if not stacks[key]:
                errors.append("E without B on %r" % (key,))
                continue
            b = stacks[key].pop()
            slices[key].append((float(b["ts"]), float(ev["ts"]), b["name"]))
    for key, st in stacks.items():
        if st:
            errors.append("%d B without E on %r" % (len(st), key))
    for key in used - named:
        errors.append("thread %r has events but no thread_name" % (key,))
    for key, sl in slices.items():
        # Sorted by start, longest first; every slice must lie inside or
        # entirely after each open one.
        sl.sort(key=lambda s: (s[0], -s[1]))
        open_ends = []
        for start, end, name in sl:
            while open_ends and start >= open_ends[-1] - 1e-6:
                open_ends.pop()
            if open_ends and end > open_ends[-1] + 1e-6:
                errors.append("slice %s [%f, %f] overlaps its parent on %r"
                              % (name, start, end, key))
            open_ends.append(end)
    for fid, phases in flows.items():
        if phases != {"s", "f"}:
            errors.append("flow %r has only %r" % (fid, sorted(phases)))
    for key, n in asyncs.items():
        if n != 0:
            errors.append("async span %r unmatched (%+d)" % (key, n))
    count = sum(1 for e in events if e.get("ph") != "M")
    if count < min_events:
        errors.append("only %d events" % count)
    for e in errors[:20]:
        print("check_trace: " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
