#!/usr/bin/env bash
# qemu-img convert throughput of a LUN to a raw file and back, for blockfork
# and for qemu-nbd serving the same data from a raw file, in the same run.
#   bench/convert.sh [SIZE_MIB]        (default 1024)
# Prints a Markdown table (MiB/s, median of 3 runs each).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
work="$(pwd)/target/bench-convert"
rm -rf "$work"; mkdir -p "$work"
cargo build --release -q -p blockfork
bin="$(pwd)/target/release/blockfork"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# Incompressible source data (no holes, so nothing is skipped).
head -c "$((size_mib << 20))" /dev/urandom > "$work/src.raw"

nbd_port=$(free_port); api_port=$(free_port)
"$bin" serve --data "$work/pool" --capacity "$((size_mib * 3))M" --nbd "127.0.0.1:$nbd_port" --api "127.0.0.1:$api_port" --log warn --open &
pids+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$api_port/api/v1/pool" >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" --server "http://127.0.0.1:$api_port" --data "$work/pool" lun create lun --size "${size_mib}M" >/dev/null

cp "$work/src.raw" "$work/qemu.raw"
q_port=$(free_port)
qemu-nbd -f raw -x lun -p "$q_port" -b 127.0.0.1 --persistent --shared=4 "$work/qemu.raw" &
pids+=($!)
sleep 1

# seconds for one command
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
rate() { echo "scale=0; $size_mib / $1" | bc -l; }

run3() {
    local a b c
    a=$(secs "$@"); b=$(secs "$@"); c=$(secs "$@")
    median3 "$a" "$b" "$c"
}
to_bf=$(run3 qemu-img convert -n -f raw -O raw "$work/src.raw" "nbd://127.0.0.1:$nbd_port/lun")
to_q=$(run3 qemu-img convert -n -f raw -O raw "$work/src.raw" "nbd://127.0.0.1:$q_port/lun")
from_bf=$(run3 qemu-img convert -f raw -O raw "nbd://127.0.0.1:$nbd_port/lun" "$work/out.raw")
from_q=$(run3 qemu-img convert -f raw -O raw "nbd://127.0.0.1:$q_port/lun" "$work/out.raw")
qemu-img compare -f raw -F raw "$work/src.raw" "nbd://127.0.0.1:$nbd_port/lun" >/dev/null

echo "| qemu-img convert, ${size_mib} MiB | blockfork | qemu-nbd on a raw file | ratio |"
echo "| --- | --- | --- | --- |"
printf '| raw file → export | %s MiB/s | %s MiB/s | %.2f× |\n' "$(rate "$to_bf")" "$(rate "$to_q")" "$(echo "$to_q / $to_bf" | bc -l)"
printf '| export → raw file | %s MiB/s | %s MiB/s | %.2f× |\n' "$(rate "$from_bf")" "$(rate "$from_q")" "$(echo "$from_q / $from_bf" | bc -l)"
