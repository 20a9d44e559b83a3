#!/usr/bin/env bash
# What idle polling buys and costs (decision 026): fio 4 KiB random reads at
# queue depth 1 over NBD (fio's nbd engine, one connection) against
# `blockfork serve` with the default poll budget, the same server binary with
# `--nbd-poll-us 0`, and nbdkit's file plugin, in alternating rounds; then
# the server CPU each request took (utime + stime from /proc) with fio
# thinking between requests, and with fio and the servers pinned to one CPU.
#
#   bench/poll.sh            3 rounds of 4 s per cell (~3 min)
#   bench/poll.sh --quick    1 round of 2 s, 256 MiB (CI smoke)
#   options: --rounds N  --runtime S  --size-mib N  --no-build
#
# Markdown on stdout; progress on stderr. Work files in target/bench-poll,
# removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="bench/poll.sh${*:+ $*}"

rounds=3 runtime=4 size_mib=1024 build=1
while (($#)); do
    case $1 in
        --quick) rounds=1 runtime=2 size_mib=256 ;;
        --rounds) rounds=${2:?}; shift ;;
        --runtime) runtime=${2:?}; shift ;;
        --size-mib) size_mib=${2:?}; shift ;;
        --no-build) build=0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

for tool in fio jq python3 nbdkit taskset; do
    command -v "$tool" >/dev/null || { echo "bench/poll.sh needs $tool" >&2; exit 1; }
done
((build)) && cargo build --release -q -p blockfork
bin=$(pwd)/target/release/blockfork
work=$(pwd)/target/bench-poll
rm -rf "$work"
mkdir -p "$work"
t_start=$SECONDS
log() { printf '[%4ds] %s\n' $((SECONDS - t_start)) "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -A pid port
cleanup() {
    for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pid[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 200); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench/poll.sh: nothing answers on port $1" >&2
    exit 1
}

# Two blockfork servers (polling, not polling) and nbdkit file, each with a
# filled target of the same size.
start_blockfork() { # name poll-us
    local nbd api
    nbd=$(free_port) api=$(free_port)
    "$bin" serve --data "$work/$1" --capacity "$((size_mib * 2))M" --open \
        --nbd "127.0.0.1:$nbd" --api "127.0.0.1:$api" --log warn --nbd-poll-us "$2" &
    pid[$1]=$! port[$1]=$nbd
    wait_port "$api"
    BLOCKFORK_TOKEN=$(cat "$work/$1/api-token") "$bin" --server "http://127.0.0.1:$api" \
        lun create l --size "${size_mib}M" >/dev/null
}
uri() { # name
    case $1 in
        nbdkit) echo "nbd://127.0.0.1:${port[nbdkit]}/" ;;
        *) echo "nbd://127.0.0.1:${port[$1]}/l" ;;
    esac
}
log "starting blockfork (polling, not polling) and nbdkit file, ${size_mib} MiB each"
start_blockfork polling 50
start_blockfork sleeping 0
truncate -s "${size_mib}M" "$work/raw"
port[nbdkit]=$(free_port)
nbdkit -f -p "${port[nbdkit]}" -i 127.0.0.1 file "$work/raw" &
pid[nbdkit]=$!
wait_port "${port[nbdkit]}"
for sys in polling sleeping nbdkit; do
    fio --name=fill --ioengine=nbd --uri="$(uri "$sys")" --rw=write --bs=1M --iodepth=8 \
        --size="${size_mib}M" --output="$work/fill.log" >/dev/null
done

# One QD1 run: prints "iops cpu_us_per_request" (CPU of the server process).
run() { # sys think-us [cpu]
    local sys=$1 think=$2 cpu=${3:-} out=$work/fio.json t0 t1 ios iops
    local pin=()
    if [[ -n $cpu ]]; then pin=(taskset -c "$cpu"); fi
    t0=$(awk '{print $14 + $15}' "/proc/${pid[$sys]}/stat")
    "${pin[@]}" fio --name=qd1 --ioengine=nbd --uri="$(uri "$sys")" --rw=randread --bs=4k \
        --iodepth=1 --size="${size_mib}M" --time_based --runtime="$runtime" \
        --thinktime="$think" --output-format=json --output="$out" >/dev/null
    t1=$(awk '{print $14 + $15}' "/proc/${pid[$sys]}/stat")
    ios=$(jq '.jobs[0].read.total_ios' "$out")
    iops=$(jq '.jobs[0].read.iops' "$out")
    # /proc counts in clock ticks.
    python3 -c "print(f'{$iops:.0f}', f'{($t1 - $t0) / $(getconf CLK_TCK) * 1e6 / max($ios, 1):.0f}')"
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# Rounds alternate the systems; the table gives medians.
cells() { # label think cpu systems...
    local label=$1 think=$2 cpu=$3; shift 3
    local r sys
    for r in $(seq "$rounds"); do
        for sys in "$@"; do
            if [[ -n $cpu ]]; then taskset -a -p -c "$cpu" "${pid[$sys]}" >/dev/null; fi
            run "$sys" "$think" "$cpu" >>"$work/$label.$sys"
            if [[ -n $cpu ]]; then taskset -a -p -c "0-$(($(nproc) - 1))" "${pid[$sys]}" >/dev/null; fi
        done
    done
}
col() { # label sys field
    awk -v f="$3" '{print $f}' "$work/$1.$2" | median
}

log "QD1 random reads, unpinned"
cells free 0 "" polling sleeping nbdkit
for t in 20 100 1000; do
    log "QD1 random reads, fio thinking ${t} µs between requests"
    cells "think$t" "$t" "" polling sleeping
done
last_cpu=$(($(nproc) - 1))
log "QD1 random reads, fio and the server pinned to CPU $last_cpu"
cells pinned 0 "$last_cpu" polling sleeping nbdkit

ratio() { python3 -c "print(f'{$1 / $2:.2f}×')"; }
echo "### Idle polling (decision 026)"
echo
echo "\`$cmdline\`: fio 4 KiB random read, QD1, one connection, ${size_mib} MiB targets, $rounds round(s) of ${runtime} s, medians; CPU is the server's own per request."
echo
echo "| case | blockfork, polling 50 µs | blockfork, --nbd-poll-us 0 | nbdkit file | polling ÷ nbdkit |"
echo "| --- | ---: | ---: | ---: | ---: |"
for label in free pinned; do
    case $label in
        free) what="client and server on any CPU" ;;
        pinned) what="client and server pinned to one CPU" ;;
    esac
    p=$(col $label polling 1) s=$(col $label sleeping 1) k=$(col $label nbdkit 1)
    echo "| $what: IOPS | $p | $s | $k | $(ratio "$p" "$k") |"
    echo "| $what: server CPU µs per request | $(col $label polling 2) | $(col $label sleeping 2) | $(col $label nbdkit 2) | |"
done
for t in 20 100 1000; do
    echo "| fio thinks ${t} µs: IOPS / CPU µs per request | $(col "think$t" polling 1) / $(col "think$t" polling 2) | $(col "think$t" sleeping 1) / $(col "think$t" sleeping 2) | | |"
done
log "done"
