#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# check_trace.py - the one checker of sluice's Chrome Trace Event JSON,
# used by test_trace, test_engine_obs and the end-to-end test_obs.sh.
#
# Always checked (what Perfetto's importer relies on): every thread with
# events is named by a thread_name metadata event; timestamps never go
# back on a thread; B/E slices nest perfectly and by name, none left open;
# flow ends sit inside a slice and every flow id has both its "s" and its
# "f"; async spans (b/e, keyed by id2.local and name) balance, no "e"
# before its "b".
#
# Then each KEY=VALUE argument is an expectation:
#   flows=N async=N counters=N instants=N threads=N B=N   exact totals
#   name:X=NAME     a thread is named NAME
#   has:X=NAME      some event is named NAME      not:X=NAME  none is
#   arg:X=N         some event has args.i == N    noarg:X=N   none has
#   count:PH:NAME[+PH:NAME...]=N   events of those phases and names sum to N
#   min:PH:NAME=N   at least N events of that phase and name
# usage: check_trace.py FILE [KEY=VALUE...]
import collections
import json
import sys

d = json.load(open(sys.argv[1]))
ev = d['traceEvents']
want = [a.split('=', 1) for a in sys.argv[2:]]
names = {e['tid']: e['args']['name'] for e in ev
         if e['ph'] == 'M' and e['name'] == 'thread_name'}
tids = {e['tid'] for e in ev if e['ph'] != 'M'}
assert tids <= set(names), ('no thread_name', tids - set(names))
stacks = collections.defaultdict(list)
last = collections.defaultdict(float)
for e in ev:
    if e['ph'] == 'M':
        continue
    assert e['ts'] >= last[e['tid']], ('time went back', e)
    last[e['tid']] = e['ts']
    if e['ph'] == 'B':
        stacks[e['tid']].append(e['name'])
    elif e['ph'] == 'E':
        assert stacks[e['tid']], ('E without B', e)
        top = stacks[e['tid']].pop()
        assert top == e['name'], ('bad nesting', top, e)
    elif e['ph'] in 'sf':
        assert stacks[e['tid']], ('flow outside a slice', e)
for t, s in stacks.items():
    assert not s, ('unclosed', t, s)
flows = collections.defaultdict(set)
for e in ev:
    if e['ph'] in 'sf':
        flows[e['id']].add(e['ph'])
for i, s in flows.items():
    assert s == {'s', 'f'}, ('flow half', i, s)
asy = collections.defaultdict(list)
for e in ev:
    if e['ph'] in 'be':
        asy[(e['id2']['local'], e['name'])].append(e)
for k, l in asy.items():
    l.sort(key=lambda e: (e['ts'], e['ph'] != 'b'))
    bal = 0
    for e in l:
        bal += 1 if e['ph'] == 'b' else -1
        assert bal >= 0, ('async e before b', k)
    assert bal == 0, ('async unbalanced', k)
cnt = collections.Counter(e['ph'] for e in ev)
byname = collections.Counter((e['ph'], e['name']) for e in ev)
got = {'flows': len(flows), 'async': len(asy),
       'counters': cnt['C'], 'instants': cnt['i'],
       'threads': len(tids), 'B': cnt['B']}


def named(spec):
    ph, name = spec.split(':', 1)
    return byname[(ph, name)]


for k, v in want:
    if k.startswith('name:'):
        assert v in names.values(), ('missing thread', v, names)
    elif k.startswith('has:'):
        assert any(e['name'] == v for e in ev), ('missing', v)
    elif k.startswith('not:'):
        assert not any(e['name'] == v for e in ev), ('present', v)
    elif k.startswith('arg:'):
        assert any(e.get('args', {}).get('i') == int(v)
                   for e in ev), ('no arg', v)
    elif k.startswith('noarg:'):
        assert not any(e.get('args', {}).get('i') == int(v)
                       for e in ev), ('arg present', v)
    elif k.startswith('count:'):
        n = sum(named(s) for s in k[len('count:'):].split('+'))
        assert n == int(v), (k, n, v)
    elif k.startswith('min:'):
        n = named(k[len('min:'):])
        assert n >= int(v), (k, n, v)
    else:
        assert got[k] == int(v), (k, got[k], v)
