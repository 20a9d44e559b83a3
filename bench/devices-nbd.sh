#!/usr/bin/env bash
# A mirror LUN on two device files against a LUN of a pool on one data file,
# over NBD with fio's nbd engine (one connection), same run, rounds
# alternating: what checksums and copies cost a client (issue 14's goal for
# reads: within 5 %).
#
#   bench/devices-nbd.sh [--quick]
#
# Prints a Markdown table. Uses target/release/blockfork (built if missing),
# 127.0.0.1 on free ports, files under target/bench-devices-nbd; stops every
# server it started.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = --quick ] && quick=1
size=1G runtime=4 reps=3
((quick)) && size=128M runtime=1 reps=1
bin=target/release/blockfork
[ -x "$bin" ] || cargo build --release -q -p blockfork
work=target/bench-devices-nbd
rm -rf "$work" && mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # name nbd-port api-port args...
    local name=$1 nbd=$2 api=$3; shift 3
    "$bin" serve --open --nbd "127.0.0.1:$nbd" --api "127.0.0.1:$api" --log warn "$@" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$api/api/v1/pool" && return 0
        sleep 0.1
    done
    echo "$name did not start: $(tail -3 "$work/$name.log")" >&2
    exit 1
}
truncate -s 4G "$work/d0" "$work/d1"
f_nbd=$(free_port) f_api=$(free_port) d_nbd=$(free_port) d_api=$(free_port)
start file "$f_nbd" "$f_api" --data "$work/file" --capacity 4G
start devices "$d_nbd" "$d_api" --data "$work/dev" --device "$work/d0" --device "$work/d1"
"$bin" --server "http://127.0.0.1:$f_api" --token "$(cat "$work/file/api-token")" lun create lun --size "$size" >/dev/null
"$bin" --server "http://127.0.0.1:$d_api" --token "$(cat "$work/dev/api-token")" lun create lun --size "$size" --redundancy mirror >/dev/null
for port in "$f_nbd" "$d_nbd"; do
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$port/lun" --rw=write --bs=1M \
        --iodepth=8 --size="$size" >/dev/null
done
iops() { # port rw depth
    fio --name=b --ioengine=nbd --uri="nbd://127.0.0.1:$1/lun" --rw="$2" --bs=4k --iodepth="$3" \
        --size="$size" --time_based --runtime="$runtime" --output-format=json \
        --output="$work/fio.json" >/dev/null 2>"$work/fio.err" ||
        { echo "fio failed: $(head -c 300 "$work/fio.err")" >&2; exit 1; }
    jq '.jobs[0] | (.read.iops + .write.iops)' "$work/fio.json"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| workload (fio nbd, 4 KiB, one connection) | mirror LUN on 2 devices, IOPS | one data file, IOPS | ratio | goal |"
echo "| --- | --- | --- | --- | --- |"
for wl in "randread 1" "randread 32" "randwrite 1" "randwrite 32"; do
    set -- $wl
    d=() f=()
    for _ in $(seq "$reps"); do
        f+=("$(iops "$f_nbd" "$1" "$2")")
        d+=("$(iops "$d_nbd" "$1" "$2")")
    done
    fm=$(printf '%s\n' "${f[@]}" | median)
    dm=$(printf '%s\n' "${d[@]}" | median)
    goal="(information)"
    [ "$1" = randread ] && goal="≥ 0.95×"
    printf '| %s QD%s | %.0f | %.0f | %.2f× | %s |\n' "$1" "$2" "$dm" "$fm" "$(echo "$dm / $fm" | bc -l)" "$goal"
done
