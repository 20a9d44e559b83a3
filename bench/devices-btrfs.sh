#!/usr/bin/env bash
# Scrub and rebuild of a two-device mirror: blockfork (a `mirror` LUN on two
# device files) against btrfs raid1 on two loop devices over files of the
# same size, holding the same amount of data, same run (issue 14). Then the
# p99 latency of 4 KiB random reads over NBD while blockfork scrubs at its
# default rate, against idle (issue 14's goal: ≤ 1.2×).
#
#   bench/devices-btrfs.sh [--quick]
#
# Needs root (loop devices, mount), btrfs-progs, fio and jq. Prints a
# Markdown table. Files under target/bench-devices-btrfs; every server,
# mount and loop device it made is undone on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = --quick ] && quick=1
dev=16G used=4G lat_runtime=20
((quick)) && dev=1G used=256M lat_runtime=3
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/devices-btrfs.sh: needs root (loop devices, mount)" >&2
    exit 1
fi
need=()
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
command -v fio >/dev/null || need+=(fio)
command -v jq >/dev/null || need+=(jq)
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
bin=target/release/blockfork
[ -x "$bin" ] || cargo build --release -q -p blockfork
work=$PWD/target/bench-devices-btrfs
# What an interrupted earlier run may have left: mounts and loop devices.
{ grep -F " $work/" /proc/mounts || true; } | awk '{print $2}' | while read -r m; do umount "$m" || true; done
{ losetup -a 2>/dev/null | grep -F "$work/" || true; } | cut -d: -f1 | while read -r l; do losetup -d "$l" || true; done
rm -rf "$work" && mkdir -p "$work/mnt"
pids=() loops=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    mountpoint -q "$work/mnt" && umount "$work/mnt"
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
}
trap cleanup EXIT
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
secs() { python3 -c 'import time; print(time.monotonic())'; }
elapsed() { python3 -c "print(f'{$(secs) - $1:.3f}')"; }
to_mb() { numfmt --from=iec "$1" | awk '{print $1 / 1e6}'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.0f", b / s}'; }

# --- btrfs raid1 on two loop devices
truncate -s "$dev" "$work/b0" "$work/b1" "$work/b2"
l0=$(losetup -f --show "$work/b0"); loops+=("$l0")
l1=$(losetup -f --show "$work/b1"); loops+=("$l1")
mkfs.btrfs -q -f -d raid1 -m raid1 "$l0" "$l1" >/dev/null 2>&1
mount "$l0" "$work/mnt"
fio --name=fill --rw=write --bs=1M --size="$used" --filename="$work/mnt/data" \
    --refill_buffers --end_fsync=1 >/dev/null
umount "$work/mnt"
drop
mount "$l0" "$work/mnt"
t0=$(secs)
btrfs scrub start -B "$work/mnt" >/dev/null
bt_scrub=$(elapsed "$t0")
# Lose the second device; replace it with a third, degraded.
umount "$work/mnt"
losetup -d "$l1"; loops=("${loops[@]/$l1}")
l2=$(losetup -f --show "$work/b2"); loops+=("$l2")
drop
mount -o degraded "$l0" "$work/mnt"
devid=$(btrfs filesystem show "$work/mnt" | awk '/missing/ {print $2}')
t0=$(secs)
btrfs replace start -B -f "${devid:-2}" "$l2" "$work/mnt" >/dev/null
bt_replace=$(elapsed "$t0")
umount "$work/mnt"

# --- blockfork: a mirror LUN on two device files of the same size
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nbd=$(free_port) api=$(free_port)
start() {
    "$bin" serve --open --nbd "127.0.0.1:$nbd" --api "127.0.0.1:$api" --log warn "$@" \
        >>"$work/server.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$api/api/v1/pool" && return 0
        sleep 0.1
    done
    echo "blockfork did not start: $(tail -3 "$work/server.log")" >&2
    exit 1
}
stop() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }
cli() { "$bin" --server "http://127.0.0.1:$api" --token "$(cat "$work/pool/api-token")" "$@"; }
truncate -s "$dev" "$work/d0" "$work/d1" "$work/d2"
start --data "$work/pool" --device "$work/d0" --device "$work/d1" --scrub-rate 0 --rebuild-rate 0
cli lun create lun --size "$used" --redundancy mirror >/dev/null
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$nbd/lun" --rw=write --bs=1M \
    --iodepth=8 --size="$used" --refill_buffers >/dev/null
stop
drop
start --data "$work/pool" --scrub-rate 0 --rebuild-rate 0
t0=$(secs)
cli pool scrub start >/dev/null
cli pool scrub status --watch >/dev/null
bf_scrub=$(elapsed "$t0")
stop
rm "$work/d1"
drop
start --data "$work/pool" --scrub-rate 0 --rebuild-rate 0
t0=$(secs)
cli pool device replace "$work/d1" "$work/d2" --wait >/dev/null
bf_replace=$(elapsed "$t0")

# --- read p99 during a scrub at the default rate, against idle
stop
start --data "$work/pool" --rebuild-rate 0
p99() {
    fio --name=lat --ioengine=nbd --uri="nbd://127.0.0.1:$nbd/lun" --rw=randread --bs=4k \
        --iodepth=1 --size="$used" --time_based --runtime="$lat_runtime" --output-format=json \
        --output="$work/lat.json" >/dev/null
    jq '.jobs[0].read.clat_ns.percentile["99.000000"] / 1000' "$work/lat.json"
}
idle=$(p99)
cli pool scrub start >/dev/null
busy=$(p99)
scrub_state=$(cli --output json pool scrub status | jq -r .state)
cli pool scrub stop >/dev/null 2>&1 || true

mb=$(to_mb "$used")
echo "| ${used}iB of data on two ${dev}iB devices | blockfork (\`mirror\` LUN) | btrfs raid1 on loop devices | blockfork ÷ btrfs |"
echo "| --- | --- | --- | --- |"
printf '| scrub, s (MB/s of data) | %s (%s) | %s (%s) | %.2f× the speed |\n' \
    "$bf_scrub" "$(mbps "$mb" "$bf_scrub")" "$bt_scrub" "$(mbps "$mb" "$bt_scrub")" \
    "$(echo "$bt_scrub / $bf_scrub" | bc -l)"
printf '| rebuild of a lost device onto a spare, s (MB/s of data) | %s (%s) | %s (%s) | %.2f× the speed |\n' \
    "$bf_replace" "$(mbps "$mb" "$bf_replace")" "$bt_replace" "$(mbps "$mb" "$bt_replace")" \
    "$(echo "$bt_replace / $bf_replace" | bc -l)"
echo
echo "| 4 KiB random reads over NBD, QD1, p99 | idle | during a scrub at the default rate ($scrub_state at the end) | ratio | goal |"
echo "| --- | --- | --- | --- | --- |"
printf '| µs | %.0f | %.0f | %.2f× | ≤ 1.2× |\n' "$idle" "$busy" "$(echo "$busy / $idle" | bc -l)"
