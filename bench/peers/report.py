#!/usr/bin/env python3
"""Markdown tables for bench/run.sh from OUT/fio.tsv, OUT/lat.tsv and OUT/na.tsv.

  report.py OUT mode=full|quick clones=0|1 clone_why=TEXT size_mib=N layers=N
            per_layer=N deep_layers=N deep_per_layer=N clone_levels=N cluster=BYTES

Each section is printed only if the run measured it (bench/run.sh --only).
"""
import collections
import re
import statistics
import sys

out = sys.argv[1]
arg = dict(a.split("=", 1) for a in sys.argv[2:])
mode, clone_why = arg["mode"], arg["clone_why"]
clones = arg["clones"] == "1"
size_mib, layers, per_layer, deep_layers, deep_per_layer, clone_levels, cluster = (
    int(arg[k]) for k in ("size_mib", "layers", "per_layer", "deep_layers", "deep_per_layer",
                          "clone_levels", "cluster"))
NA_CLONE = f"n/a ({clone_why})"

runs = collections.defaultdict(list)  # (sys, wl) -> [(iops, mibs, p50_us)]
spans = []  # (t0, t1, sys, wl, rep)
for line in open(f"{out}/fio.tsv"):
    s, w, rep, iops, mibs, p50, t0, t1 = line.rstrip("\n").split("\t")
    runs[(s, w)].append((float(iops), float(mibs), float(p50)))
    spans.append((float(t0), float(t1), s, w, rep))
cpu = []
try:
    cpu = [tuple(map(float, l.split())) for l in open(f"{out}/cpu.tsv") if len(l.split()) == 2]
except OSError:
    pass
lat = collections.defaultdict(list)
for line in open(f"{out}/lat.tsv"):
    op, ms = line.split("\t")
    lat[op].append(float(ms))
na = {}  # system -> why it has no numbers
for line in open(f"{out}/na.tsv"):
    s, why = line.rstrip("\n").split("\t")
    na[s] = why

WL = {
    "rr1": "4 KiB random read, QD1",
    "rr32": "4 KiB random read, QD32",
    "sr": "1 MiB sequential read, QD8",
    "rw1": "4 KiB random write, QD1",
    "rw32": "4 KiB random write, QD32",
    "mix": "4 KiB random 70/30 read/write, QD32",
    "sw": "1 MiB sequential write, QD8",
}
ORDER = ["rr1", "rr32", "sr", "mix", "rw1", "rw32", "sw"]


def seq(w):
    return w in ("sr", "sw")


def med(sys_, w, field=None):
    """Median of the repetitions: MiB/s for 1 MiB jobs, IOPS otherwise."""
    v = runs.get((sys_, w))
    if not v:
        return None
    i = field if field is not None else (1 if seq(w) else 0)
    return statistics.median(r[i] for r in v)


def fmt(x, w):
    if x is None:
        return "—"
    return f"{x:.0f} MiB/s" if seq(w) else f"{x / 1000:.1f}k IOPS"


def ratio(a, b):
    return None if a is None or not b else a / b


def fr(r):
    return "—" if r is None else f"{r:.2f}×"


def check(label, r, ok):
    if r is None:
        return None
    return (ok(r), f"{label}: {r:.2f}×")


def goal(parts):
    parts = [p for p in parts if p is not None]
    if not parts:
        return "—"
    met = all(ok for ok, _ in parts)
    return ("met" if met else "**missed**") + " (" + "; ".join(t for _, t in parts) + ")"


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


workloads = [w for w in ORDER if any(k[1] == w for k in runs if not k[0].startswith(("bf-", "chain")))]

if workloads:
    print("## Data path over NBD (fio nbd engine, one connection)")
    print()
    print("Fresh pre-filled LUN / image / file of the same size. Each system runs the workloads "
          "back to back in this order, after one untimed sequential read pass: reads and the mix on "
          "a warm page cache, then each pure write job with the system's files synced and dropped "
          "from the page cache (posix_fadvise DONTNEED); after each system, a sync and a wait "
          "for the disk to go quiet. The order of the systems rotates between repetitions and "
          "runs backwards in even ones, so no system always follows the same one. Median of the "
          "repetitions; "
          "best peer = the better of qemu-nbd + qcow2 and nbdkit file; nbdkit memory is the "
          "NBD protocol ceiling and fio on the raw file (libaio, O_DIRECT, same queue depth) "
          "the disk's limit, both for scale.")
    print()
    print("| workload | blockfork | qemu-nbd + qcow2 | nbdkit file | nbdkit memory | raw file, libaio O_DIRECT "
          "| blockfork ÷ best peer | goal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for w in workloads:
        bf, q, nf, nm, raw = (med(s, w) for s in ("bf", "qcow2", "nbdkit-file", "nbdkit-mem", "raw"))
        peers = [p for p in (q, nf) if p is not None]
        best = max(peers) if peers else None
        if w in ("rr32", "rw32"):
            g = goal([check("vs qemu-nbd ≥ 1.2", ratio(bf, q), lambda r: r >= 1.2),
                      check("vs nbdkit file ≥ 0.8", ratio(bf, nf), lambda r: r >= 0.8)])
        elif seq(w):
            g = goal([check("vs raw file ≥ 0.9", ratio(bf, raw), lambda r: r >= 0.9)])
        else:
            g = "—"
        print(f"| {WL[w]} | {fmt(bf, w)} | {fmt(q, w)} | {fmt(nf, w)} | {fmt(nm, w)} | {fmt(raw, w)} "
              f"| {fr(ratio(bf, best))} | {g} |")
    print()

    if any(k[0] in ("bf100", "bfclone", "qcow2ovl") for k in runs):
        print(f"## Data path with {layers} snapshots, and on a clone")
        print()
        print(f"\"{layers} snapshots\": the LUN after {layers} rounds of (snapshot, overwrite {per_layer} random 4 KiB "
              "blocks); each write job starts right after one more snapshot (so each first overwrite of a "
              "block is redirected), deleted after the job. Clone: a clone of a snapshot of a pre-filled "
              "LUN, all its data in the snapshot; the peer is a qcow2 overlay on a pre-filled backing "
              "file served by qemu-nbd. Write jobs get a new clone / overlay each time.")
        print()
        print(f"| workload | blockfork fresh | blockfork, {layers} snapshots | ÷ fresh | blockfork clone "
              "| qemu-nbd, qcow2 overlay | clone ÷ overlay |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for w in workloads:
            bf, b100, cl, ov = (med(s, w) for s in ("bf", "bf100", "bfclone", "qcow2ovl"))
            cl_s = fmt(cl, w) if clones else NA_CLONE
            print(f"| {WL[w]} | {fmt(bf, w)} | {fmt(b100, w)} | {fr(ratio(b100, bf))} | {cl_s} | {fmt(ov, w)} "
                  f"| {fr(ratio(cl, ov)) if clones else 'n/a'} |")
        print()

def lat_cell(op):
    v = lat.get(op)
    return (f"{pct(v, 50):.2f} / {pct(v, 99):.2f} ms", pct(v, 50)) if v else ("—", None)


def p50(s):
    return med(s, "rr1", field=2)


def us(x):
    return "—" if x is None else f"{x:.1f} µs"


if lat:
    print("## Copy management")
    print()
    print("Create latencies are wall times of one command, p50 / p99 in ms (CLI and qemu-img include "
          "their process start; REST is curl's time_total for one POST to /api/v1/snapshots or "
          "/api/v1/clones, closer to the engine). Snapshots are of a pre-filled LUN / qcow2 image "
          f"({size_mib} MiB); qemu-img snapshot -c takes an internal snapshot of an offline image."
          + (" Clone read: fio 4 KiB random read, QD1, median of the repetitions of the p50 latency "
             "(fio's total latency), from the data path runs." if mode == "full" and workloads else ""))
    print()
    print("| measure | blockfork | peer | blockfork's advantage (> 1: blockfork faster) | goal |")
    print("| --- | ---: | ---: | ---: | --- |")
    qs, q50 = lat_cell("snap-qcow2")
    for op, label in (("snap-cli", "snapshot create, CLI"), ("snap-rest", "snapshot create, REST API")):
        s, s50 = lat_cell(op)
        print(f"| {label} vs qemu-img snapshot -c | {s} | {qs} | {fr(ratio(q50, s50))} | — |")
    cs, c50 = lat_cell("clone-bf")
    qc, qc50 = lat_cell("clone-qcow2")
    print(f"| clone create, CLI vs qemu-img create -b (overlay) | {cs if clones else NA_CLONE} | {qc} "
          f"| {fr(ratio(qc50, c50)) if clones else 'n/a'} | — |")
    cr, cr50 = lat_cell("clone-rest")
    print(f"| clone create, REST API vs qemu-img create -b (overlay) | {cr if clones else NA_CLONE} | {qc} "
          f"| {fr(ratio(qc50, cr50)) if clones else 'n/a'} | — |")
    if mode == "full" and workloads:
        cl, ov = p50("bfclone"), p50("qcow2ovl")
        print(f"| read p50, clone (data in its snapshot) vs qcow2 overlay | {us(cl) if clones else NA_CLONE} "
              f"| {us(ov)} | {fr(ratio(ov, cl)) if clones else 'n/a'} | — |")
    print()


def depths(pattern):
    """The N of every measured system named like pattern (one group: N)."""
    return sorted({int(m.group(1)) for s_, _ in runs for m in [re.fullmatch(pattern, s_)] if m})


def peer_cell(sys_, cell, why=False):
    """A cell from a peer's numbers, or n/a (and why, once per row) if the run has none."""
    if sys_ not in na:
        return cell
    return f"n/a: {na[sys_]}" if why else "n/a"


def depth_goal(n, goal_n, label, r, ok):
    """Issue 7's goal at depth goal_n; at other depths only whether it would hold."""
    if r is None:
        return "—"
    if n == goal_n:
        return goal([check(label, r, ok)])
    return f"none at depth {n:,} ({label} would be {'met' if ok(r) else 'missed'}: {r:.2f}×)"


def le_110(r):
    return r <= 1.10


def ge_090(r):
    return r >= 0.90


snap_depths = depths(r"bf-d(\d+)")
s1_depths = depths(r"bf-d(\d+)-s1")
clone_depths = depths(r"bf-c(\d+)")
if snap_depths or clone_depths:
    deep = ""
    if deep_layers in snap_depths:
        deep = (f"; at depth {deep_layers:,}, {deep_per_layer} per layer ({deep_layers * deep_per_layer:,} "
                f"blocks overwritten in all, against {layers * per_layer:,} at depth {layers}: the qcow2 "
                f"peer writes each block as a whole cluster) with a qcow2 chain of its own, and its "
                f"ratios are to the same depth-1 LUN and chain")
    print("## Snapshot and clone depth")
    print()
    pinned = (" Every server and fio pinned to one CPU for this part (at QD1 a read's latency is "
              "otherwise mostly wake-ups across CPUs, which vary with whatever else runs)."
              if arg.get("pinned", "0") == "1" else "")
    print("fio 4 KiB random read at QD1, median of the repetitions of the p50 latency (fio's total "
          "latency, submission to completion; at QD32: IOPS), each system after one untimed "
          f"sequential read pass.{pinned} Snapshot depth N: "
          f"a pre-filled LUN after N rounds of (snapshot, overwrite {per_layer} random 4 KiB blocks, "
          f"the same for every system){deep}; LUN@s1 is its oldest snapshot. Clone depth N: level N "
          "of a chain in which level i is a clone of level i − 1's snapshot (level 0: a pre-filled "
          "LUN) with snapshot layer i's overwrites, then a snapshot of its own. Peer: a qcow2 "
          "backing chain over the same pre-filled base, overlay i holding layer i's overwrites "
          f"(each block written as its {cluster // 1024} KiB cluster, as copy-on-write would), "
          "qemu-nbd -r serving overlay N; the clone rows use overlays 1 and "
          f"{clone_levels} of the {layers}-layer chain, which hold exactly the clone levels' "
          f"overwrites. Issue 7's goal: depth N ÷ depth 1 ≤ 1.10 at snapshot depth {layers} and "
          f"clone depth {clone_levels}.")
    print()
    print("| measure | blockfork | peer | blockfork's advantage (> 1: blockfork faster) | goal |")
    print("| --- | ---: | ---: | ---: | --- |")

    d1, c1 = p50("bf-d1"), p50("chain1")
    for n in snap_depths:
        d, c = p50(f"bf-d{n}"), p50(f"chain{n}")
        print(f"| read p50, snapshot depth {n:,}: LUN vs qcow2 chain top | {us(d)} "
              f"| {peer_cell(f'chain{n}', us(c), why=True)} | {peer_cell(f'chain{n}', fr(ratio(c, d)))} | — |")
    for n in snap_depths[1:]:
        r = ratio(p50(f"bf-d{n}"), d1)
        print(f"| read p50, snapshot depth {n:,} ÷ depth 1 | {fr(r)} "
              f"| {peer_cell(f'chain{n}', fr(ratio(p50(f'chain{n}'), c1)))} | — "
              f"| {depth_goal(n, layers, '≤ 1.10', r, le_110)} |")
    qd32 = [n for n in snap_depths if med(f"bf-d{n}", "rr32") is not None]
    q1, k1 = med("bf-d1", "rr32"), med("chain1", "rr32")
    for n in qd32:
        q, k = med(f"bf-d{n}", "rr32"), med(f"chain{n}", "rr32")
        print(f"| random read QD32, snapshot depth {n:,}: LUN vs qcow2 chain top | {fmt(q, 'rr32')} "
              f"| {peer_cell(f'chain{n}', fmt(k, 'rr32'), why=True)} | {peer_cell(f'chain{n}', fr(ratio(q, k)))} | — |")
    for n in qd32[1:]:
        r = ratio(med(f"bf-d{n}", "rr32"), q1)
        print(f"| random read QD32 IOPS, snapshot depth {n:,} ÷ depth 1 | {fr(r)} "
              f"| {peer_cell(f'chain{n}', fr(ratio(med(f'chain{n}', 'rr32'), k1)))} | — "
              f"| {depth_goal(n, layers, '≥ 0.90', r, ge_090)} |")
    for n in s1_depths:
        print(f"| read p50, oldest snapshot (LUN@s1), depth {n:,} | {us(p50(f'bf-d{n}-s1'))} | — | — | — |")
    for n in s1_depths[1:]:
        r = ratio(p50(f"bf-d{n}-s1"), p50("bf-d1-s1"))
        print(f"| read p50, LUN@s1 depth {n:,} ÷ depth 1 | {fr(r)} | — | — "
              f"| {depth_goal(n, layers, '≤ 1.10', r, le_110)} |")
    if not clones:
        print(f"| read p50, clone depth 1 and {clone_levels} | {NA_CLONE} | — | n/a | — |")
    k1 = p50("bf-c1")
    for n in clone_depths:
        k, c = p50(f"bf-c{n}"), p50(f"chain{n}")
        print(f"| read p50, clone depth {n:,}: clone vs qcow2 chain top | {us(k)} "
              f"| {peer_cell(f'chain{n}', us(c), why=True)} | {peer_cell(f'chain{n}', fr(ratio(c, k)))} | — |")
    for n in clone_depths[1:]:
        r = ratio(p50(f"bf-c{n}"), k1)
        print(f"| read p50, clone depth {n:,} ÷ depth 1 | {fr(r)} "
              f"| {peer_cell(f'chain{n}', fr(ratio(p50(f'chain{n}'), c1)))} | — "
              f"| {depth_goal(n, clone_levels, '≤ 1.10', r, le_110)} |")
    print()

print("Notes: every NBD server but nbdkit memory serves from the page cache here (the targets fit "
      "in memory), so reads can beat the O_DIRECT raw-file figure; fio sends no FLUSH, so a "
      "server that syncs on its own pays for it."
      + (" On this machine 4 KiB buffered writes into pages "
         "that sequential reads brought into the page cache cost several times more than into "
         "evicted ones (most likely ext4's large folios: perf shows ext4_block_write_begin on top), "
         "hence the eviction before pure writes; the mix, on the warm cache, pays it for every "
         "system but nbdkit memory and the O_DIRECT raw file." if workloads else "")
      + " On a VM whose idle vCPUs halt (cpuidle "
      "haltpoll), each QD1 request also pays a vCPU wake-up of tens of µs, which compresses QD1 "
      "differences; the QD32 rows are the sharper comparison.")
print()
loads = []
for t0, t1, s_, w, rep in spans:
    xs = [c for t, c in cpu if t0 < t <= t1 + 0.5]
    if xs:
        loads.append((statistics.mean(xs), s_, w, rep))
if loads:
    busy = sorted((l for l in loads if l[0] > 0.25), reverse=True)
    mean = statistics.mean(l[0] for l in loads)
    worst = ", ".join(f"{s_} {w} #{rep} ({c:.2f})" for c, s_, w, rep in busy[:6])
    print(f"Other processes on this machine (not this benchmark) used {mean:.2f} CPU cores on average "
          f"during the fio runs; {len(busy)} of {len(loads)} runs had more than 0.25 cores of company"
          + (f" (worst: {worst})." if busy else "."))
