#!/usr/bin/env bash
# LUNs of each class (`none`, `mirror`, `parity:4+2`) on one pool of six
# device files, against a LUN of a pool on one data file, over NBD with
# fio's nbd engine (one connection), same run, rounds alternating: what
# checksums (none ÷ one data file; issue 14's goal for reads: within 5 %),
# copies and stripes cost a client. Then sequential 1 MiB writes to the
# parity LUN against fio writing the six device files directly at once
# (their aggregate raw bandwidth).
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
size=1G runtime=4 reps=3 raw_job=256M
((quick)) && size=128M runtime=1 reps=1 raw_job=32M
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
devs=()
for i in 0 1 2 3 4 5; do truncate -s 4G "$work/d$i"; devs+=(--device "$work/d$i"); done
f_nbd=$(free_port) f_api=$(free_port) d_nbd=$(free_port) d_api=$(free_port)
start file "$f_nbd" "$f_api" --data "$work/file" --capacity 4G
start devices "$d_nbd" "$d_api" --data "$work/dev" "${devs[@]}"
"$bin" --server "http://127.0.0.1:$f_api" --token "$(cat "$work/file/api-token")" lun create lun --size "$size" >/dev/null
for class in none mirror parity:4+2; do
    "$bin" --server "http://127.0.0.1:$d_api" --token "$(cat "$work/dev/api-token")" \
        lun create "${class%%:*}" --size "$size" --redundancy "$class" >/dev/null
done
targets=("$f_nbd/lun" "$d_nbd/none" "$d_nbd/mirror" "$d_nbd/parity")
fill() { # target
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$1" --rw=write --bs=1M \
        --iodepth=8 --size="$size" --output-format=json --output="$work/fill.json" >/dev/null
    jq '.jobs[0].write.bw_bytes / 1e6' "$work/fill.json"
}
for t in "${targets[@]}"; do fill "$t" >/dev/null; done
run() { # target rw depth: IOPS
    fio --name=b --ioengine=nbd --uri="nbd://127.0.0.1:$1" --rw="$2" --bs=4k --iodepth="$3" \
        --size="$size" --time_based --runtime="$runtime" --output-format=json \
        --output="$work/fio.json" >/dev/null 2>"$work/fio.err" ||
        { echo "fio failed: $(head -c 300 "$work/fio.err")" >&2; exit 1; }
    jq '.jobs[0] | (.read.iops + .write.iops)' "$work/fio.json"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { echo "$1 / $2" | bc -l; }
echo "| workload (fio nbd, 4 KiB, one connection) | one data file, IOPS | none on 6 devices | mirror | parity:4+2 | none ÷ one data file (goal for reads ≥ 0.95×) | mirror ÷ none | parity ÷ none |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for wl in "randread 1" "randread 32" "randwrite 1" "randwrite 32"; do
    set -- $wl
    declare -A got=()
    for t in "${targets[@]}"; do got[$t]=""; done
    for _ in $(seq "$reps"); do
        for t in "${targets[@]}"; do got[$t]+="$(run "$t" "$1" "$2") "; done
    done
    m=()
    for t in "${targets[@]}"; do m+=("$(printf '%s\n' ${got[$t]} | median)"); done
    printf '| %s QD%s | %.0f | %.0f | %.0f | %.0f | %.2f× | %.2f× | %.2f× |\n' "$1" "$2" \
        "${m[0]}" "${m[1]}" "${m[2]}" "${m[3]}" \
        "$(ratio "${m[1]}" "${m[0]}")" "$(ratio "${m[2]}" "${m[1]}")" "$(ratio "${m[3]}" "${m[1]}")"
    unset got
done
# Sequential 1 MiB writes: the parity LUN (overwrites go to fresh stripes)
# against the six device files written at once with as many raw bytes
# (1.5 × the LUN), buffered as the server's are, each run ending with a
# sync.
raw=() par=() non=()
for _ in $(seq "$reps"); do
    non+=("$(fill "$d_nbd/none")")
    # Timed from outside, the syncs included: 1.5 × the data, in six files.
    t0=$(date +%s.%N)
    dds=()
    for i in 0 1 2 3 4 5; do
        dd if=/dev/zero of="$work/raw$i" bs=1M count="${raw_job%M}" conv=fdatasync status=none &
        dds+=($!)
    done
    wait "${dds[@]}"
    t1=$(date +%s.%N)
    raw+=("$(echo "${raw_job%M} * 6 / 1.5 * 1.048576 / ($t1 - $t0)" | bc -l)")
    rm -f "$work"/raw?
    par+=("$(fill "$d_nbd/parity")")
done
rm=$(printf '%s\n' "${raw[@]}" | median)
pm=$(printf '%s\n' "${par[@]}" | median)
nm=$(printf '%s\n' "${non[@]}" | median)
echo
echo "| sequential 1 MiB writes | MB/s of data | raw bytes written per data byte |"
echo "| --- | --- | --- |"
printf '| six files written at once with 1.5 × the data (dd, fdatasync; MB/s of the data they stand for) | %.0f | 1.5 |\n' "$rm"
printf '| none LUN on the same devices over NBD (QD8) | %.0f | 1 |\n' "$nm"
printf '| parity:4+2 LUN over NBD (QD8) | %.0f (%.2f× the raw files) | 1.5 |\n' \
    "$pm" "$(ratio "$pm" "$rm")"
