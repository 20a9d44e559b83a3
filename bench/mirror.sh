#!/usr/bin/env bash
# blockfork's mirroring beside its peers, same changes, same run (issue 13).
#
#   bench/mirror.sh           full: a 4 GiB LUN (half data, half holes);
#                             incrementals of 1 % and 10 % of its 4 KiB blocks
#                             changed at random; btrfs send -p | receive and
#                             rsync --inplace of the same changes; baseline
#                             beside nbdcopy; RPO under a steady 4 KiB random
#                             write load with --schedule 10s for 300 s; break
#                             time with the source down (~15 min on 2 cores)
#   bench/mirror.sh --quick   CI smoke: 256 MiB, no btrfs or rsync, RPO for
#                             12 s (keeps the script from rotting)
#   options: --size-mib N  --rpo-secs S  --no-build  --keep
#
# Two blockfork servers on 127.0.0.1 and free ports (the source A and the
# destination B, each with its own pool), btrfs on two loop devices, all
# stopped and removed on exit. Markdown on stdout, progress on stderr. Work
# files: target/bench-mirror-full or -quick (removed unless --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cmdline="bench/mirror.sh${*:+ $*}"

mode=full size_mib="" rpo_secs="" build=1 keep=0
while (($#)); do
    case $1 in
        --quick) mode=quick ;;
        --size-mib) size_mib=${2:?}; shift ;;
        --rpo-secs) rpo_secs=${2:?}; shift ;;
        --no-build) build=0 ;;
        --keep) keep=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/mirror.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$mode" = quick ]; then
    size_mib=${size_mib:-256} rpo_secs=${rpo_secs:-12} peers=0
else
    size_mib=${size_mib:-4096} rpo_secs=${rpo_secs:-300} peers=1
fi
size=$((size_mib << 20))
log() { echo "[mirror bench] $*" >&2; }

need=()
command -v fio >/dev/null || need+=(fio)
command -v nbdcopy >/dev/null || need+=(libnbd-bin)
command -v jq >/dev/null || need+=(jq)
if ((peers)); then
    command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
    command -v rsync >/dev/null || need+=(rsync)
fi
if ((${#need[@]})); then
    if [ "$(id -u)" -eq 0 ]; then
        log "installing ${need[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "bench/mirror.sh: missing ${need[*]}" >&2
        exit 1
    fi
fi
if ((peers)) && [ "$(id -u)" -ne 0 ]; then
    log "not root: no loop devices, so no btrfs peer"
    peers=0
fi

((build)) && cargo build --release -q -p blockfork
bf=$root/target/release/blockfork
work=$root/target/bench-mirror-$mode
# What an interrupted earlier run may have left: mounts and loop devices.
unmount_all() {
    { grep -F " $work/" /proc/mounts || true; } | awk '{print $2}' | while read -r m; do umount "$m" || true; done
    { losetup -a 2>/dev/null | grep -F "$work/" || true; } | cut -d: -f1 | while read -r l; do losetup -d "$l" || true; done
}
unmount_all
rm -rf "$work" && mkdir -p "$work"
pids=()
cleanup() {
    # SIGTERM, a bounded wait, then SIGKILL: a server that does not stop
    # must not keep the benchmark (or CI) waiting.
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 100); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${pids[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            echo "[mirror bench] server $p ignored SIGTERM for 10 s; killing it" >&2
            kill -9 "$p" 2>/dev/null || true
        fi
    done
    unmount_all
    ((keep)) || rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # name -> sets ${name}_nbd ${name}_api
    local name=$1 nbd api
    nbd=$(free_port) api=$(free_port)
    "$bf" serve --data "$work/$name" --capacity $((size_mib * 4 + 1024))M --open \
        --nbd "127.0.0.1:$nbd" --api "127.0.0.1:$api" 2>"$work/$name.log" &
    pids+=($!)
    eval "${name}_nbd=$nbd ${name}_api=$api ${name}_pid=$!"
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$api/api/v1/openapi.json" && return
        sleep 0.1
    done
    echo "server $name did not start" >&2
    exit 1
}
start a
start b
A() { "$bf" --server "http://127.0.0.1:$a_api" --data "$work/a" "$@"; }
B() { "$bf" --server "http://127.0.0.1:$b_api" --data "$work/b" "$@"; }
now() { date +%s.%N; }
rate() { echo "scale=1; $1 / 1000000 / $2" | bc; } # bytes, seconds -> MB/s

# The same content everywhere: half the LUN random data, half holes.
log "making ${size_mib} MiB of which half random data"
head -c $((size / 2)) /dev/urandom >"$work/data.img"
A lun create vm --size "$size" >/dev/null
nbdcopy "$work/data.img" "nbd://127.0.0.1:$a_nbd/vm"

# Baselines: blockfork's mirror, and nbdcopy between two exports.
token=$(A peer token create bench | head -1)
B peer create site-a --url "http://127.0.0.1:$a_api" --token "$token" >/dev/null
log "baseline: blockfork mirror"
t0=$(now)
B mirror create site-a:vm vm-dr >/dev/null
t1=$(now)
base_secs=$(echo "$t1 - $t0" | bc)
B lun create copy --size "$size" >/dev/null
log "baseline: nbdcopy"
t0=$(now)
nbdcopy "nbd://127.0.0.1:$a_nbd/vm" "nbd://127.0.0.1:$b_nbd/copy"
t1=$(now)
nbdcopy_secs=$(echo "$t1 - $t0" | bc)

if ((peers)); then
    log "btrfs on two loop devices, and raw images for rsync"
    for side in src dst; do
        truncate -s $((size * 2 + (1 << 30))) "$work/$side.btrfs"
        dev=$(losetup -f --show "$work/$side.btrfs")
        mkfs.btrfs -q "$dev" >&2
        mkdir -p "$work/$side"
        mount "$dev" "$work/$side"
    done
    btrfs -q subvolume create "$work/src/vol"
    cp --sparse=always "$work/data.img" "$work/src/vol/vm.img"
    truncate -s "$size" "$work/src/vol/vm.img"
    sync
    btrfs -q subvolume snapshot -r "$work/src/vol" "$work/src/snap0"
    btrfs -q send "$work/src/snap0" | btrfs -q receive "$work/dst"
    cp --sparse=always "$work/src/vol/vm.img" "$work/raw-src.img"
    cp --sparse=always "$work/src/vol/vm.img" "$work/raw-dst.img"
fi

declare -A row
for pct in 1 10; do
    changed=$((size / 4096 * pct / 100 * 4096))
    log "incremental: ${pct} % of the blocks changed ($((changed >> 20)) MiB)"
    fio --name=change --ioengine=nbd --uri="nbd://127.0.0.1:$a_nbd/vm" --rw=randwrite --bs=4k \
        --io_size="$changed" --size="$size" --randseed=$pct --iodepth=16 >/dev/null
    B mirror update vm-dr >/dev/null
    m=$(B --output json mirror show vm-dr)
    bytes=$(jq .last_transfer_bytes <<<"$m")
    secs=$(jq .last_transfer_secs <<<"$m")
    row[bf_ratio_$pct]=$(echo "scale=3; $bytes / $changed" | bc)
    row[bf_rate_$pct]=$(rate "$changed" "$secs")
    if ((peers)); then
        fio --name=change --filename="$work/src/vol/vm.img" --rw=randwrite --bs=4k \
            --io_size="$changed" --size="$size" --randseed=$pct --iodepth=16 --ioengine=libaio >/dev/null
        sync
        prev=$([ "$pct" = 1 ] && echo snap0 || echo snap1)
        btrfs -q subvolume snapshot -r "$work/src/vol" "$work/src/snap$pct"
        sync
        t0=$(now)
        btrfs -q send -p "$work/src/$prev" "$work/src/snap$pct" | btrfs -q receive "$work/dst"
        sync
        t1=$(now)
        bsecs=$(echo "$t1 - $t0" | bc)
        bbytes=$(btrfs -q send -p "$work/src/$prev" "$work/src/snap$pct" | wc -c)
        row[btrfs_ratio_$pct]=$(echo "scale=3; $bbytes / $changed" | bc)
        row[btrfs_rate_$pct]=$(rate "$changed" "$bsecs")
        # (snap1 is the base of the 10 % round.)
        [ "$pct" = 1 ] && btrfs -q subvolume snapshot -r "$work/src/snap1" "$work/src/snap1.keep" >/dev/null 2>&1 || true
        fio --name=change --filename="$work/raw-src.img" --rw=randwrite --bs=4k \
            --io_size="$changed" --size="$size" --randseed=$pct --iodepth=16 --ioengine=libaio >/dev/null
        t0=$(now)
        stats=$(rsync --inplace --no-whole-file --stats "$work/raw-src.img" "$work/raw-dst.img")
        t1=$(now)
        rsecs=$(echo "$t1 - $t0" | bc)
        rbytes=$(awk '/Total bytes sent/ {gsub(",", "", $4); print $4}' <<<"$stats")
        row[rsync_ratio_$pct]=$(echo "scale=3; $rbytes / $changed" | bc)
        row[rsync_rate_$pct]=$(rate "$changed" "$rsecs")
    fi
done

# RPO: a second mirror on a schedule, under a steady random-write load.
sched=10
[ "$mode" = quick ] && sched=2
log "RPO: --schedule ${sched}s under 4 KiB random writes for ${rpo_secs} s"
A lun create rpo --size 1G >/dev/null
B mirror create site-a:rpo rpo-dr --schedule "${sched}s" >/dev/null
fio --name=load --ioengine=nbd --uri="nbd://127.0.0.1:$a_nbd/rpo" --rw=randwrite --bs=4k \
    --size=1G --time_based --runtime="$rpo_secs" --rate_iops=2000 >/dev/null &
load=$!
lags=()
end=$(($(date +%s) + rpo_secs))
while [ "$(date +%s)" -lt "$end" ]; do
    lags+=("$(B --output json mirror show rpo-dr | jq .lag_secs)")
    sleep 1
done
wait "$load"
sorted=$(printf '%s\n' "${lags[@]}" | sort -n)
count=${#lags[@]}
p99=$(sed -n "$(((count * 99 + 99) / 100))p" <<<"$sorted")
lag_max=$(tail -1 <<<"$sorted")

# Break with the source down.
kill -9 "$a_pid"
t0=$(now)
B mirror break vm-dr >/dev/null
t1=$(now)
break_ms=$(echo "($t1 - $t0) * 1000 / 1" | bc)
compare=$(B lun show vm-dr | head -1 >/dev/null && echo ok)

dash() { echo "${row[$1]:--}"; }
cat <<EOF
### Mirroring ($(date -u +%F), ${size_mib} MiB LUN, $(nproc) cores)

\`$cmdline\`

| transfer | blockfork | btrfs send -p \\| receive | rsync --inplace | nbdcopy |
|---|---|---|---|---|
| baseline (half data, half holes) | $(rate "$((size / 2))" "$base_secs") MB/s | | | $(rate "$((size / 2))" "$nbdcopy_secs") MB/s |
| 1 % of 4 KiB blocks: wire bytes / changed | $(dash bf_ratio_1)× | $(dash btrfs_ratio_1)× | $(dash rsync_ratio_1)× | |
| 1 %: MB/s of changed data | $(dash bf_rate_1) | $(dash btrfs_rate_1) | $(dash rsync_rate_1) | |
| 10 %: wire bytes / changed | $(dash bf_ratio_10)× | $(dash btrfs_ratio_10)× | $(dash rsync_ratio_10)× | |
| 10 %: MB/s of changed data | $(dash bf_rate_10) | $(dash btrfs_rate_10) | $(dash rsync_rate_10) | |

| RPO and failover | blockfork | goal |
|---|---|---|
| lag p99 / max, --schedule ${sched}s, 2,000 4 KiB writes/s for ${rpo_secs} s | ${p99} s / ${lag_max} s | ≤ 20 s |
| \`mirror break\` with the source down (CLI, process start included) | ${break_ms} ms | < 1 s |
EOF
[ "$compare" = ok ] || exit 1
