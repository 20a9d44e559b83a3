#!/usr/bin/env python3
"""CPU used by processes outside the benchmark, sampled while it runs.

  cpuwatch.py ROOT_PID OUTFILE [INTERVAL_S]

Every INTERVAL_S (0.5), appends "unix_time cores" to OUTFILE: the CPU time
that user processes other than ROOT_PID and its descendants used during the
interval, in cores (kernel threads are not counted: their work is mostly
this benchmark's I/O; processes born and gone between two samples are
missed, so this is a lower bound). Exits when ROOT_PID is gone. On a shared machine this
tells which measurements had company.
"""
import os
import sys
import time

root, outfile = int(sys.argv[1]), sys.argv[2]
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
hz = os.sysconf("SC_CLK_TCK")


def snapshot():
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        # utime and stime: fields 14 and 15 of stat, 12 and 13 after the name
        # (not cutime/cstime: a reaped child's time, already counted, lands there)
        ticks = int(fields[11]) + int(fields[12])
        procs[int(name)] = (ppid, ticks)
    return procs


def others(procs):
    kids = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    ours, stack = set(), [root]
    while stack:
        p = stack.pop()
        if p not in ours:
            ours.add(p)
            stack.extend(kids.get(p, []))
    # kernel threads: pid 2 (kthreadd) and its children
    kernel = {2, *kids.get(2, [])}
    return {pid: t for pid, (_, t) in procs.items() if pid not in ours and pid not in kernel}


prev, t_prev = others(snapshot()), time.monotonic()
with open(outfile, "a") as out:
    while os.path.exists(f"/proc/{root}"):
        time.sleep(interval)
        cur, t_cur = others(snapshot()), time.monotonic()
        span = t_cur - t_prev
        # a new process started within the interval: all its time is new
        used = sum(t - prev[pid] if pid in prev else min(t, span * hz) for pid, t in cur.items())
        cores = min(max(0, used) / hz / span, os.cpu_count() or 1)
        out.write(f"{time.time():.2f} {cores:.2f}\n")
        out.flush()
        prev, t_prev = cur, t_cur
