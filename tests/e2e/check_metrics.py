#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# check_metrics.py - what promtool does not check in a Prometheus text
# exposition: each family's samples are together, right after its HELP and
# TYPE; every histogram has a le="+Inf" bucket equal to its _count, with
# cumulative (non-decreasing) buckets; counters end in _total.
# usage: check_metrics.py FILE
import re
import sys
from collections import defaultdict

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def family_of(name, types):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
            return name[:-len(suffix)]
    return name


def main():
    lines = open(sys.argv[1]).read().split("\n")
    errors = []
    if lines[-1] != "":
        errors.append("the last line does not end in a newline")
    types = {}
    seen_done = set()
    current = None
    buckets = defaultdict(list)
    counts = {}
    for line in lines:
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            if kind == "counter" and not name.endswith("_total"):
                errors.append("counter %s does not end in _total" % name)
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            errors.append("unparsable line: %r" % line)
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        fam = family_of(name, types)
        if fam != current:
            if fam in seen_done:
                errors.append("family %s is split" % fam)
            if current:
                seen_done.add(current)
            current = fam
        if types.get(fam) == "histogram":
            base = re.sub(r',?le="[^"]*"', "", labels)
            if name.endswith("_bucket"):
                le = re.search(r'le="([^"]*)"', labels).group(1)
                buckets[(fam, base)].append((le, float(value)))
            elif name.endswith("_count"):
                counts[(fam, base.replace("{}", ""))] = float(value)
    for (fam, base), bs in buckets.items():
        if not bs or bs[-1][0] != "+Inf":
            errors.append("histogram %s%s lacks a final +Inf bucket" % (fam, base))
            continue
        vals = [v for _, v in bs]
        if vals != sorted(vals):
            errors.append("histogram %s%s buckets are not cumulative" % (fam, base))
        c = counts.get((fam, base.replace("{}", "")))
        if c is not None and c != vals[-1]:
            errors.append("histogram %s%s: +Inf %g != count %g" % (fam, base, vals[-1], c))
    for e in errors[:20]:
        print("check_metrics: " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
