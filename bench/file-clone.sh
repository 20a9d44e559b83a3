#!/usr/bin/env bash
# Host file clone (`blockfork host file-clone`) beside `cp` of the same file
# on the same mount, and beside `cp --reflink` on XFS over a plain loop
# device on a local file, all in one run. Needs root, /dev/fuse, loop
# devices, nbdfuse, mkfs.ext4, mkfs.xfs.
#   bench/file-clone.sh [SIZES_GIB...]        (default: 1 4)
# Every timed command ends durable (file-clone syncs; cp is followed by
# sync of its file) and starts with cold caches (drop_caches).
# Prints a Markdown table; `uptime` on stderr says how busy the machine was.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1 4)
max_gib=0; for s in "${sizes[@]}"; do [ "$s" -gt "$max_gib" ] && max_gib=$s; done
# The bench data lives on disk, beside the build.
work="$(pwd)/target/bench-file-clone"
cargo build --release -q -p blockfork
bin="$(pwd)/target/release/blockfork"
export BLOCKFORK_HOST_STATE="$work/state"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
server_pid=""; api=""; mounts=(); loops=()
cleanup() {
    set +e
    for m in "${mounts[@]}"; do [ -n "$m" ] && { umount "$m" 2>/dev/null || umount -l "$m"; }; done
    for d in $(bf --output json host list 2>/dev/null | jq -r '.[].device'); do
        bf host detach "$d" >/dev/null
    done
    for l in "${loops[@]}"; do losetup -d "$l"; done
    [ -n "$server_pid" ] && kill "$server_pid" && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work"; mkdir -p "$work"

lun_gib=$((max_gib * 3 + 2))
nbd_port=$(free_port); api_port=$(free_port); api="http://127.0.0.1:$api_port"
"$bin" serve --data "$work/pool" --capacity "$((lun_gib * 2 + 4))G" \
    --nbd "127.0.0.1:$nbd_port" --api "127.0.0.1:$api_port" --open --log warn 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 100); do curl -s "$api/api/v1/pool" >/dev/null 2>&1 && break; sleep 0.1; done
bf() { "$bin" --server "$api" --data "$work/pool" "$@"; }
export BLOCKFORK_NBD="127.0.0.1:$nbd_port"

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# seconds one command takes
secs() { local t0=$EPOCHREALTIME; "$@" >/dev/null; echo "$EPOCHREALTIME - $t0" | bc -l; }
# A real copy: coreutils' cp reflinks by default where it can (XFS).
cp_synced() { cp --reflink=never "$1" "$2" && sync "$2"; }
used() { bf --output json pool status | jq .used_bytes; }
# The pool's use once it holds still (freed blocks count until their
# commit is durable), at most 10 s.
settled_used() {
    local last now
    last=$(used)
    for _ in $(seq 20); do
        sleep 0.5; now=$(used)
        [ "$now" = "$last" ] && break
        last=$now
    done
    echo "$last"
}

# Incompressible data, written once per file system.
head -c 1G /dev/urandom > "$work/random-1g"
write_source() { # FILE GIB
    for _ in $(seq "$2"); do cat "$work/random-1g"; done > "$1"
    sync "$1"
}

# One ext4 file system on a blockfork LUN per mount style.
declare -A clone_s cp_s reflink_s method pool_growth
run_lun_fs() { # NAME MKFS MOUNT_OPTIONS
    local name=$1 mkfs=$2 options=$3
    bf lun create "bench/$name" --size "${lun_gib}G" >/dev/null
    local dev; dev=$(bf --output json host attach "bench/$name" | jq -r .device)
    $mkfs "$dev" >/dev/null
    local mnt="$work/mnt-$name"; mkdir -p "$mnt"
    mount ${options:+-o "$options"} "$dev" "$mnt"; mounts+=("$mnt")
    if [[ "$options" == *dioread_lock* ]]; then
        # ext4 zeroes whole extents (128 MiB) around a small write into
        # them, with the device's write-zeroes: no data sent.
        echo 131072 > "/sys/fs/ext4/$(basename "$dev")/extent_max_zeroout_kb"
    fi
    for g in "${sizes[@]}"; do
        write_source "$mnt/src-$g" "$g"
        cold
        local before; before=$(settled_used)
        local t0=$EPOCHREALTIME
        bf --output json host file-clone "$mnt/src-$g" "$mnt/clone-$g" > "$work/report.json"
        clone_s[$name,$g]=$(echo "$EPOCHREALTIME - $t0" | bc -l)
        method[$name,$g]=$(jq -r '.clones[0].created_by' "$work/report.json")
        pool_growth[$name,$g]=$(( $(settled_used) - before ))
        cold
        cp_s[$name,$g]=$(secs cp_synced "$mnt/src-$g" "$mnt/cp-$g")
        cold
        cmp "$mnt/src-$g" "$mnt/clone-$g"
        rm -f "$mnt/cp-$g" "$mnt/clone-$g" "$mnt/src-$g"
        # Free the LUN's blocks of the removed files, or the next clone's
        # destination lands on old data and the pool seems to shrink. The
        # sync first: blocks are free for fstrim once the journal says so.
        sync
        fstrim "$mnt"
    done
    umount "$mnt"; mounts=("${mounts[@]/$mnt}")
    bf host detach "$dev" >/dev/null
    bf lun delete "bench/$name" >/dev/null
}
run_lun_fs ext4-zeroout "mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0" dioread_lock
run_lun_fs ext4 "mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0" ""
# Without reflink, so that cp copies (its reflink is the peer below).
run_lun_fs xfs "mkfs.xfs -q -f -m reflink=0" ""

# The peer: XFS reflink on a loop device over a local file.
truncate -s "${lun_gib}G" "$work/xfs.img"
loop=$(losetup -f --show "$work/xfs.img"); loops+=("$loop")
mkfs.xfs -q -f -m reflink=1 "$loop"
mkdir -p "$work/mnt-reflink"; mount "$loop" "$work/mnt-reflink"; mounts+=("$work/mnt-reflink")
for g in "${sizes[@]}"; do
    write_source "$work/mnt-reflink/src-$g" "$g"
    cold
    reflink_s[$g]=$(secs cp --reflink=always "$work/mnt-reflink/src-$g" "$work/mnt-reflink/ref-$g")
    rm -f "$work/mnt-reflink/ref-$g" "$work/mnt-reflink/src-$g"
done

uptime >&2
fmt() { printf '%.2f s' "$1"; }
echo "| file | file system on the LUN | blockfork host file-clone | cp, same mount | speed-up | destination made by | pool growth | cp --reflink, XFS on a loop file |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for name in ext4-zeroout ext4 xfs; do
    case $name in
        ext4-zeroout) label="ext4, -o dioread_lock, extent_max_zeroout_kb=131072" ;;
        ext4) label="ext4, defaults" ;;
        xfs) label="XFS, reflink=0" ;;
    esac
    for g in "${sizes[@]}"; do
        printf '| %s GiB | %s | %s | %s | %.1f× | %s | %s KiB | %s |\n' "$g" "$label" \
            "$(fmt "${clone_s[$name,$g]}")" "$(fmt "${cp_s[$name,$g]}")" \
            "$(echo "${cp_s[$name,$g]} / ${clone_s[$name,$g]}" | bc -l)" \
            "${method[$name,$g]}" "$(( ${pool_growth[$name,$g]} / 1024 ))" "$(fmt "${reflink_s[$g]}")"
    done
done
