#!/usr/bin/env bash
# What counting costs on the data path (issue 16): 4 KiB random reads and
# writes at queue depth 32 over NBD (fio's nbd engine, one connection), on
# `blockfork serve` as shipped (every request counted: ops, bytes, latency
# histogram per LUN) beside the same server with counting switched off
# (`pool set --io-metrics off`, what `serve --no-io-metrics` starts with),
# alternating round by round, scraped every second throughout.
#
#   bench/metrics.sh            10 rounds of 5 s per workload (~4 min)
#   bench/metrics.sh --quick    1 round of 2 s (CI smoke)
#   options: --rounds N  --runtime S  --size-mib N  --no-build
#
# Markdown table on stdout; progress on stderr. Work files in
# target/bench-metrics, removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="bench/metrics.sh${*:+ $*}"

rounds=10 runtime=5 size_mib=1024 build=1
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

for tool in fio curl jq python3; do
    command -v "$tool" >/dev/null || { echo "bench/metrics.sh needs $tool" >&2; exit 1; }
done
((build)) && cargo build --release -q -p blockfork
bin=$(pwd)/target/release/blockfork
work=$(pwd)/target/bench-metrics
rm -rf "$work"
mkdir -p "$work"
t_start=$SECONDS
log() { printf '[%4ds] %s\n' $((SECONDS - t_start)) "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pid="" scraper=""
cleanup() {
    [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# One server, one filled LUN (reads hit data); counting is switched on and
# off between runs with `pool set --io-metrics`, so that nothing but the
# counting differs (two servers side by side differ by several percent
# with identical settings: which pool was filled last, page cache state).
nbd_port=$(free_port) api_port=$(free_port)
"$bin" serve --data "$work/pool" --capacity $((size_mib * 2))M --open \
    --nbd "127.0.0.1:$nbd_port" --api "127.0.0.1:$api_port" --log warn 2>"$work/log" &
pid=$!
for _ in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$api_port/metrics" && break
    sleep 0.05
done
token=$(cat "$work/pool/api-token")
bf() { "$bin" --server "http://127.0.0.1:$api_port" --token "$token" "$@"; }
bf lun create b --size "${size_mib}M" >/dev/null
log "filling the LUN"
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$nbd_port/b" --rw=write --bs=1M \
    --iodepth=8 --size="${size_mib}M" >/dev/null
sync
# Scraped every second throughout (as a Prometheus would, only more
# often), counted or not.
(while sleep 1; do
    curl -s -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$api_port/metrics"
done) &
scraper=$!

declare -A wl_args=(
    [randread]="--rw=randread"
    [randwrite]="--rw=randwrite"
)
: >"$work/iops.tsv"
run_fio() { # variant workload round
    if [ "$1" = counted ]; then
        bf pool set --io-metrics on >/dev/null
    else
        bf pool set --io-metrics off >/dev/null
    fi
    local json=$work/$1-$2-$3.json
    fio --name="$2" --ioengine=nbd --uri="nbd://127.0.0.1:$nbd_port/b" --bs=4k --iodepth=32 \
        --time_based --runtime="$runtime" --size="${size_mib}M" ${wl_args[$2]} \
        --output-format=json --output="$json" >/dev/null
    jq -r --arg v "$1" --arg w "$2" --arg r "$3" \
        '.jobs[0] | "\($v)\t\($w)\t\($r)\t\(.read.iops + .write.iops)"' "$json" >>"$work/iops.tsv"
}

for round in $(seq "$rounds"); do
    # Alternate which variant goes first, so that neither always runs on
    # the warmer (or more tired) machine.
    order=(counted uncounted)
    ((round % 2 == 0)) && order=(uncounted counted)
    log "round $round/$rounds"
    for wl in randread randwrite; do
        for variant in "${order[@]}"; do
            run_fio "$variant" "$wl" "$round"
        done
    done
done
# The counting really was on: the counted runs' requests are in /metrics.
bf pool set --io-metrics on >/dev/null
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$api_port/metrics" \
    | grep -q 'blockfork_lun_io_ops_total{lun="b",op="write"}' \
    || { echo "bench/metrics.sh: no counted writes in /metrics" >&2; exit 1; }

python3 - "$work/iops.tsv" "$cmdline" "$rounds" "$runtime" <<'EOF'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cmd, rounds, runtime = sys.argv[2], sys.argv[3], sys.argv[4]
by = {}
for variant, wl, rnd, iops in rows:
    by.setdefault((variant, wl), {})[rnd] = float(iops)
print(f"4 KiB at queue depth 32 over NBD, {rounds} round(s) of {runtime} s per variant and "
      f"workload, back to back (`{cmd}`):\n")
print("| workload | counted (default) IOPS, median | `--no-io-metrics` IOPS, median | counted / uncounted, median of the rounds' ratios | ratios by round |")
print("|---|---:|---:|---:|---|")
for wl in ("randread", "randwrite"):
    cs, us = by[("counted", wl)], by[("uncounted", wl)]
    ratios = [cs[r] / us[r] for r in sorted(cs, key=int)]
    c, u = statistics.median(cs.values()), statistics.median(us.values())
    each = ", ".join(f"{x:.3f}" for x in ratios)
    print(f"| {wl} | {c:,.0f} | {u:,.0f} | {statistics.median(ratios):.3f} | {each} |")
EOF
