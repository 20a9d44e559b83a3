#!/usr/bin/env bash
# blockfork beside its peers, same workloads, same run (issue 7).
#
#   bench/run.sh --quick     CI smoke: 256 MiB, 2 s per fio job, 1 repetition,
#                            no nbdkit memory, no snapshot or clone data path,
#                            snapshot depth 1 and 100, clone depth 1 and 50,
#                            only the goal workloads (< 90 s on 2 cores)
#   bench/run.sh             full: 1 GiB, 3 s per fio job, 3 repetitions, every
#                            workload on every system, snapshot depth up to
#                            1,000 (~15 min on 2 cores); also writes its
#                            output to bench/RESULTS.md
#   --only copy|depth|data   one part, with only its setup: copy-management
#                            latencies; read latency at snapshot and clone
#                            depth (full: ~4 min); or the data path. Never
#                            writes bench/RESULTS.md.
#   --no-pin                 do not pin the depth comparison's servers and
#                            fio to one CPU (see "pin" below)
#   options: --size-mib N  --runtime S  --reps N  --no-build  --keep
#
# Systems, all on 127.0.0.1 and free ports, all stopped on exit:
#   blockfork (fresh LUN; LUNs with 1, 100 and 1,000 snapshots; clone of a
#     snapshot; a chain of 50 clones, each of a snapshot of the one before),
#   qemu-nbd + qcow2 (plain; overlay on a backing file; backing chains of 1,
#     50, 100 and 1,000 overlays; qemu-nbd 10.0.2 dies reading the last one,
#     more than 872 deep, and the report says so instead of giving numbers),
#   nbdkit file (raw file), nbdkit memory (the NBD protocol ceiling), and
#   fio on a raw file with libaio and O_DIRECT (the disk's limit).
# Every NBD system is driven by fio's nbd engine (one connection). Markdown on
# stdout, progress on stderr. Work files: target/bench-peers (removed on exit
# unless --keep; fio's JSON stays in target/bench-peers/out).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cmdline="bench/run.sh${*:+ $*}"

mode=full size_mib="" runtime="" reps="" build=1 keep=0 only="" pin_cpus=1 fio_cpus=""
while (($#)); do
    case $1 in
        --quick) mode=quick ;;
        --size-mib) size_mib=${2:?}; shift ;;
        --runtime) runtime=${2:?}; shift ;;
        --reps) reps=${2:?}; shift ;;
        --only) only=${2:?}; shift ;;
        --no-build) build=0 ;;
        --no-pin) pin_cpus=0 ;;
        --keep) keep=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/run.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case $only in
    "") parts=(copy depth data) ;;
    copy | depth | data) parts=("$only") ;;
    *) echo "bench/run.sh: --only takes copy, depth or data, not '$only'" >&2; exit 2 ;;
esac
has() { [[ " ${parts[*]} " == *" $1 "* ]]; } # part: is it measured in this run
# Snapshot depth: $layers layers of $per_layer overwritten blocks; in the full
# run also $deep_layers layers of $deep_per_layer (fewer per layer: the qcow2
# peer writes each block as a 64 KiB cluster, 16 GiB at 256 per layer; 25 keeps
# about as many blocks overwritten in all as at depth 100). Clone depth:
# $clone_levels levels, with the first $clone_levels snapshot layers' overwrites.
layers=100 per_layer=256 cluster=65536 clone_levels=50
if [[ $mode == quick ]]; then
    : "${size_mib:=256}" "${runtime:=2}" "${reps:=1}"; lat_n=20
    data_systems=(bf qcow2 nbdkit-file raw)
    data_workloads=(rr32 sr rw32 sw)
    deep_layers=0 deep_per_layer=0
    depth_systems=(bf-d1 "bf-d$layers" chain1 "chain$layers" bf-c1 "bf-c$clone_levels" "chain$clone_levels")
    depth_qd32_systems=()
else
    : "${size_mib:=1024}" "${runtime:=3}" "${reps:=3}"; lat_n=100
    data_systems=(bf bf100 bfclone qcow2 qcow2ovl nbdkit-file nbdkit-mem raw)
    data_workloads=(rr1 rr32 sr mix rw1 rw32 sw)
    deep_layers=1000 deep_per_layer=25
    depth_systems=(bf-d1 "bf-d$layers" "bf-d$deep_layers" bf-d1-s1 "bf-d$layers-s1" "bf-d$deep_layers-s1"
        chain1 "chain$layers" "chain$deep_layers" bf-c1 "bf-c$clone_levels" "chain$clone_levels")
    depth_qd32_systems=(bf-d1 "bf-d$layers" "bf-d$deep_layers" chain1 "chain$layers" "chain$deep_layers")
fi
size=$((size_mib << 20))
# the depth comparison's runs are 1 s shorter in the full run (time budget)
depth_runtime=$((runtime > 2 ? runtime - 1 : runtime))
fio_runtime=$runtime

declare -A wl_args=(
    [rr1]="--rw=randread --bs=4k --iodepth=1"
    [rr32]="--rw=randread --bs=4k --iodepth=32"
    [rw1]="--rw=randwrite --bs=4k --iodepth=1"
    [rw32]="--rw=randwrite --bs=4k --iodepth=32"
    [mix]="--rw=randrw --rwmixread=70 --bs=4k --iodepth=32"
    [sr]="--rw=read --bs=1M --iodepth=8"
    [sw]="--rw=write --bs=1M --iodepth=8"
)
is_write() { [[ $1 == rw1 || $1 == rw32 || $1 == mix || $1 == sw ]]; }

work=$root/target/bench-peers
data=$work/data out=$work/out
# One run at a time: a second one would delete this one's work dir.
mkdir -p "$root/target"
exec 9>"$root/target/bench-peers.lock"
flock -n 9 || { echo "bench/run.sh: another run holds target/bench-peers.lock" >&2; exit 1; }
rm -rf "$work"; mkdir -p "$data" "$out/fio" "$out/logs"
: >"$out/fio.tsv" # report.py reads it even if no fio job ran (--only copy)
if [[ -x /usr/bin/python3 ]]; then py=/usr/bin/python3; else py=python3; fi
layers_py=$root/bench/peers/layers.py
t_start=$SECONDS
log() { printf '[%4ds] %s\n' $((SECONDS - t_start)) "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in fio qemu-nbd qemu-img qemu-io nbdkit jq curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

# ---------------------------------------------------------------- processes
declare -A pid_of=()
stop() { # name: SIGTERM, wait up to 10 s, then SIGKILL
    local p=${pid_of[$1]:-}
    [[ -n $p ]] || return 0
    unset "pid_of[$1]"
    kill "$p" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    for name in "${!pid_of[@]}"; do stop "$name"; done
    if ((keep)); then log "kept $work"; else rm -rf "$data" "$work/bin"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port name
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "${pid_of[$2]}" 2>/dev/null || die "$2 exited at start; see $out/logs/$2.log"
        sleep 0.05
    done
    die "$2 does not listen on 127.0.0.1:$1 after 10 s"
}
start() { # name port command... (the command stays in the foreground)
    local name=$1 port=$2; shift 2
    "$@" >"$out/logs/$name.log" 2>&1 9>&- &
    pid_of[$name]=$!
    wait_port "$port" "$name"
}
declare -A port_of=()
chain_file() { printf '%s%0*d.qcow2' "$1" "${#2}" "$3"; } # prefix layers i: layers.py's names
start_qemu_nbd() { # name file [-r]
    local port; port=$(free_port); port_of[$1]=$port
    start "$1" "$port" qemu-nbd -f qcow2 -x "$1" -b 127.0.0.1 -p "$port" --persistent --shared=16 ${3:-} "$2"
}

# CPU used by other processes on this machine, to flag measurements that had company
"$py" "$root/bench/peers/cpuwatch.py" $$ "$out/cpu.tsv" 9>&- &
pid_of[cpuwatch]=$!
# Before each fio run, wait while others use > 0.3 cores (at most 10 s per
# run and $quiet_budget s in all; never in --quick).
if [[ $mode == quick ]]; then quiet_budget=0; else quiet_budget=40; fi
quiet_waited=0
quiet_wait() {
    local t0=$SECONDS
    while ((SECONDS - t0 < 10 && quiet_waited + SECONDS - t0 < quiet_budget)); do
        awk 'END { exit !($2 > 0.3) }' "$out/cpu.tsv" 2>/dev/null || break
        sleep 0.5
    done
    quiet_waited=$((quiet_waited + SECONDS - t0))
}

# ---------------------------------------------------------------- blockfork
if ((build)); then
    log "cargo build --release -p blockfork"
    cargo build --release -q -p blockfork || die "cargo build failed"
fi
build_s=$((SECONDS - t_start))
[[ -x $root/target/release/blockfork ]] || die "no target/release/blockfork"
# A private copy: the server and the CLI stay one version even if
# target/release is rebuilt while this runs.
mkdir -p "$work/bin"
cp "$root/target/release/blockfork" "$work/bin/blockfork"
bin=$work/bin/blockfork
bf_nbd=$(free_port) bf_api=$(free_port)
api=http://127.0.0.1:$bf_api
start blockfork "$bf_nbd" "$bin" serve --data "$data/bf" --capacity 20G --open \
    --nbd "127.0.0.1:$bf_nbd" --api "127.0.0.1:$bf_api" --log warn
wait_port "$bf_api" blockfork
bf_cli=("$bin" --server "$api" --data "$data/bf")
# Every CLI call has 120 s: a call that gets no answer (seen once, in a
# `lun delete` right after a QD32 write job, never reproduced) leaves the
# server's threads' stacks in out/logs/stuck-*.txt for the next step.
bf() {
    local rc=0 f
    timeout 120 "${bf_cli[@]}" "$@" || rc=$?
    if ((rc == 124)); then
        f=$out/logs/stuck-$SECONDS.txt
        { echo "no answer in 120 s: blockfork $*"; gdb -p "${pid_of[blockfork]}" -batch -ex "thread apply all bt" 2>&1; } >"$f"
        die "blockfork $* got no answer in 120 s; the server's threads are in $f"
    fi
    return $rc
}
export BLOCKFORK_TOKEN
BLOCKFORK_TOKEN=$(cat "$data/bf/api-token")
auth=(-H "authorization: Bearer $BLOCKFORK_TOKEN")
bf_uri() { echo "nbd://127.0.0.1:$bf_nbd/$1"; }
wait_jobs() { # until no background job runs (snapshot reclaim), at most 60 s
    for _ in $(seq 600); do
        [[ $(curl -sf "${auth[@]}" "$api/api/v1/jobs" | jq '[.[] | select(.state == "running")] | length') == 0 ]] && return 0
        sleep 0.1
    done
    die "blockfork background jobs still running after 60 s"
}
clones=0 clone_why="clones not built yet"
if "$bin" lun clone --help >/dev/null 2>&1; then clones=1; fi
clone_create() { bf lun clone create "$1" "$2" >/dev/null; }

# ---------------------------------------------------------------- fio
fill_nbd() { # uri: sequential 1 MiB writes over the whole target
    fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 --size="$size" \
        --output="$out/logs/fill.log" >/dev/null || die "pre-fill of $1 failed"
}
fill_file() { # path
    fio --name=fill --filename="$1" --ioengine=libaio --direct=1 --rw=write --bs=1M --iodepth=8 \
        --size="$size" --output="$out/logs/fill.log" >/dev/null || die "pre-fill of $1 failed"
}
nbd_target() { echo "--ioengine=nbd --uri=nbd://127.0.0.1:$1/$2"; }
# bf-d<N>: LUN dN (N snapshot layers); bf-d<N>-s1: its oldest snapshot;
# bf-c<N>: clone level N (LUN cN); chain<N>: qemu-nbd on a qcow2 chain's layer N.
depth_target() { # sys
    case $1 in
        bf-d*-s1) local n=${1#bf-d}; nbd_target "$bf_nbd" "d${n%-s1}@s1" ;;
        bf-d*) nbd_target "$bf_nbd" "d${1#bf-d}" ;;
        bf-c*) nbd_target "$bf_nbd" "c${1#bf-c}" ;;
        chain*) nbd_target "${port_of[$1]}" "$1" ;;
        *) die "depth_target: unknown system $1" ;;
    esac
}
# One fio job; appends "sys wl rep iops MiB/s p50_us" to fio.tsv.
run_fio() { # sys wl rep target-args...
    local sys=$1 wl=$2 rep=$3; shift 3
    local json=$out/fio/$sys.$wl.$rep.json t0 t1
    quiet_wait
    t0=$EPOCHREALTIME
    # shellcheck disable=SC2086
    fio --name="$wl" --time_based --runtime="$fio_runtime" --size="$size" "$@" ${wl_args[$wl]} \
        --lat_percentiles=1 ${fio_cpus:+--cpus_allowed=$fio_cpus} \
        --output-format=json --output="$json" >/dev/null 2>"$out/logs/fio.err" ||
        die "fio $sys $wl failed: $(head -c 400 "$out/logs/fio.err")"
    t1=$EPOCHREALTIME
    jq -r --arg s "$sys" --arg w "$wl" --arg r "$rep" --arg t0 "$t0" --arg t1 "$t1" '.jobs[0] |
        if .error != 0 or (.read.total_ios + .write.total_ios) == 0 then error("fio job error \(.error)") else . end |
        [$s, $w, $r, (.read.iops + .write.iops), ((.read.bw_bytes + .write.bw_bytes) / 1048576),
         (if .read.total_ios > 0 then .read.lat_ns.percentile["50.000000"] / 1000 else 0 end), $t0, $t1] | @tsv' \
        "$json" >>"$out/fio.tsv" || die "fio $sys $wl: bad result in $json"
}

# ---------------------------------------------------------------- setup
log "setup: $size_mib MiB per target, for: ${parts[*]}"
new_lun() { # name: a pre-filled LUN
    bf lun create "$1" --size "${size_mib}M" >/dev/null
    fill_nbd "$(bf_uri "$1")"
}
# LUN dN: N times (snapshot s<i>, then overwrite layer i: per_layer random 4 KiB blocks)
depth_lun() { # layers per_layer
    new_lun "d$1"
    "$py" "$layers_py" nbd 127.0.0.1 "$bf_nbd" "d$1" "$api" "d$1" "$size" "$1" "$2" ||
        die "writing the $1 snapshot layers of LUN d$1 failed"
}
if has data; then new_lun fresh; fi
if has depth; then depth_lun 1 "$per_layer"; fi
if has depth || has data; then depth_lun "$layers" "$per_layer"; fi
if has depth && ((deep_layers)); then
    log "setup: LUN with $deep_layers snapshots"
    depth_lun "$deep_layers" "$deep_per_layer"
fi
new_lun cbase
bf snapshot create cbase s >/dev/null

# A server that cannot serve a target is left out, and the report says why
# instead of giving a number: qemu-nbd 10.0.2 (and qemu-io) die of SIGSEGV
# on the first read that goes through more than 872 layers of a qcow2 chain
# (found by hand; the fault is at a stack guard page, most likely the 1 MiB
# coroutine stack overflowing: each layer recurses once); a later qemu may not.
: >"$out/na.tsv"
probe() { # sys: a 1 s random read; fails, with the reason in na.tsv, if the server died
    local p=${pid_of[$1]} rc=0 sig
    # shellcheck disable=SC2046
    fio --name=probe --time_based --runtime=1 --size="$size" --rw=randread --bs=4k $(depth_target "$1") \
        --output="$out/logs/probe-$1.log" >/dev/null 2>&1 && return 0
    kill -0 "$p" 2>/dev/null && die "probe read of $1 failed with its server up; see $out/logs/probe-$1.log"
    unset "pid_of[$1]"
    wait "$p" || rc=$?
    if ((rc > 128)); then sig="SIG$(kill -l $((rc - 128)))"; else sig="exit status $rc"; fi
    printf '%s\t%s\n' "$1" "qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}') died ($sig) on its first reads" >>"$out/na.tsv"
    log "$1 left out: $(tail -1 "$out/na.tsv" | cut -f2)"
    return 1
}

cd "$data"
qemu-img create -q -f qcow2 base.qcow2 "$size"
images=(base)
if has data; then
    qemu-img create -q -f qcow2 plain.qcow2 "$size"
    images+=(plain)
fi
for img in "${images[@]}"; do
    start_qemu_nbd "fill-$img" "$img.qcow2"
    fill_nbd "nbd://127.0.0.1:${port_of[fill-$img]}/fill-$img"
    stop "fill-$img"
done
if has data; then start_qemu_nbd qcow2 plain.qcow2; fi
if has depth; then
    # qcow2 chains over base.qcow2, chain001.qcow2 .. chain100.qcow2 and
    # deep0001.qcow2 .. deep1000.qcow2: layer i = the same overwrites as
    # blockfork's layer i, written offline with the backing closed;
    # bench/peers/layers.py checks the chain's headers. The clone chain's
    # peer is the first chain's layer $clone_levels.
    "$py" "$layers_py" qemu-chain chain base.qcow2 "$size" "$layers" "$per_layer" "$cluster" ||
        die "building the $layers-layer qcow2 chain failed"
    for n in 1 "$clone_levels" "$layers"; do
        start_qemu_nbd "chain$n" "$(chain_file chain "$layers" "$n")" -r
    done
    if ((deep_layers)); then
        log "setup: qcow2 chain of $deep_layers layers"
        "$py" "$layers_py" qemu-chain deep base.qcow2 "$size" "$deep_layers" "$deep_per_layer" "$cluster" ||
            die "building the $deep_layers-layer qcow2 chain failed"
        start_qemu_nbd "chain$deep_layers" "$(chain_file deep "$deep_layers" "$deep_layers")" -r
        probe "chain$deep_layers" || true
    fi
fi
if has copy; then cp base.qcow2 snaplat.qcow2; fi
if has data && [[ $mode == full ]]; then
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay-r.qcow2
    start_qemu_nbd qcow2ovl overlay-r.qcow2
fi

if has data; then
    fill_file raw-nbdkit.img
    port_of[nbdkit-file]=$(free_port)
    start nbdkit-file "${port_of[nbdkit-file]}" nbdkit --foreground --exit-with-parent \
        --ipaddr 127.0.0.1 --port "${port_of[nbdkit-file]}" file raw-nbdkit.img
    port_of[nbdkit-mem]=$(free_port)
    start nbdkit-mem "${port_of[nbdkit-mem]}" nbdkit --foreground --exit-with-parent \
        --ipaddr 127.0.0.1 --port "${port_of[nbdkit-mem]}" memory "$size"
    fill_nbd "nbd://127.0.0.1:${port_of[nbdkit-mem]}/"
    fill_file raw-direct.img
fi
cd "$root"

if ((clones)); then
    if ! err=$(clone_create cbase@s cr 2>&1); then
        clones=0 clone_why="clone create failed: ${err//|/ }"
    fi
fi
# Clone chain: level i (LUN c<i>) = a clone of level i-1's snapshot s (level 0:
# cbase@s), then snapshot layer i's overwrites, then its own snapshot s (every
# level alike), through the CLI as a user would.
if ((clones)) && has depth; then
    log "setup: clone chain of $clone_levels levels"
    "$py" "$layers_py" clone-chain 127.0.0.1 "$bf_nbd" "$size" "$clone_levels" "$per_layer" cbase@s \
        -- "${bf_cli[@]}" || die "building the clone chain failed"
fi
# Drop what this run cannot measure: clones if they failed, servers that died.
kept=()
for sys in "${depth_systems[@]}"; do
    [[ $sys == bf-c* ]] && ! ((clones)) && continue
    cut -f1 "$out/na.tsv" | grep -qx "$sys" && continue
    kept+=("$sys")
done
depth_systems=("${kept[@]}")
sync
log "setup done"

# ---------------------------------------------------------------- copy management
: >"$out/lat.tsv"
timed() { # op command...: wall time of one command (includes its process start)
    local op=$1 t0 t1; shift
    t0=${EPOCHREALTIME/./}; "$@" >/dev/null || die "$op: $* failed"; t1=${EPOCHREALTIME/./}
    printf '%s\t%s\n' "$op" "$(echo "scale=3; ($t1 - $t0) / 1000" | bc)" >>"$out/lat.tsv"
}
rest_ms() { # op path json: curl's time_total of one POST, in ms
    local t
    t=$(curl -sf "${auth[@]}" -o /dev/null -w '%{time_total}' -X POST -H 'content-type: application/json' \
        -d "$3" "$api/api/v1/$2") || die "$1: POST /api/v1/$2 $3 failed"
    printf '%s\t%s\n' "$1" "$(echo "$t * 1000" | bc)" >>"$out/lat.tsv"
}
if has copy; then
    log "snapshot and clone create latency ($lat_n each)"
    for i in $(seq "$lat_n"); do timed snap-cli bf snapshot create cbase "cli$i"; done
    for i in $(seq "$lat_n"); do rest_ms snap-rest snapshots "{\"lun\":\"cbase\",\"name\":\"rest$i\"}"; done
    for i in $(seq "$lat_n"); do timed snap-qcow2 qemu-img snapshot -c "s$i" "$data/snaplat.qcow2"; done
    if ((clones)); then
        for i in $(seq "$lat_n"); do timed clone-bf clone_create cbase@s "lat$i"; done
        for i in $(seq "$lat_n"); do rest_ms clone-rest clones "{\"source\":\"cbase@s\",\"name\":\"rlat$i\"}"; done
    fi
    (cd "$data" && for i in $(seq "$lat_n"); do
        timed clone-qcow2 qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "lat$i.qcow2"
    done)
fi

# Page-cache warm-up: one sequential read pass through the system's own path
# right before its block of jobs. Needed where proactive reclaim (DAMON) pages
# out file cache left idle for a while, which would otherwise turn some
# systems' reads into disk reads depending on when their turn came. At most
# $warm_max_s s: a deep qcow2 chain reads at a few MB/s, if it reads at all.
warm_max_s=30
warm() { # sys target-args...
    local sys=$1; shift
    [[ $sys == raw || $sys == nbdkit-mem ]] && return 0
    fio --name=warm --rw=read --bs=1M --iodepth=8 --size="$size" --runtime="$warm_max_s" "$@" \
        --output="$out/logs/warm.log" >/dev/null || die "warm-up read of $sys failed"
}
# The systems in a different order in each repetition: $1 = repetition, then the list.
# Rotating alone keeps each system behind the same neighbour in every
# repetition (in the 04:16 and 05:30 runs the fresh LUN always followed the
# raw file's O_DIRECT writes, and its QD32 reads fell from 91k to 59k IOPS):
# even repetitions also run the list backwards.
rotated() {
    local r=$1; shift
    local n=$# a=("$@") i
    for ((i = 0; i < n; i++)); do
        if ((r % 2)); then echo "${a[(i + r - 1) % n]}"; else echo "${a[(2 * n - 1 - i - (r - 1)) % n]}"; fi
    done
}
# After a system's jobs: its writes reach the disk, and the disk goes quiet
# (no sectors written for 1 s, at most 15 s), before the next system starts.
# The host may still be writing behind the VM's back; that is not visible.
disk_dev=$(df --output=source "$root/target" | tail -1)
disk_dev=${disk_dev#/dev/}
settle() {
    [[ $mode == quick ]] && return 0
    sync
    local t0=$SECONDS before after
    before=$(awk -v d="$disk_dev" '$3 == d { print $10 }' /proc/diskstats)
    while ((SECONDS - t0 < 15)); do
        sleep 1
        after=$(awk -v d="$disk_dev" '$3 == d { print $10 }' /proc/diskstats)
        [[ -z $after || $after == "$before" ]] && return 0
        before=$after
    done
}

# The depth comparison pins every server and fio to one CPU (the last): at
# QD1 a read's latency is mostly wake-ups, which cost 3-4 times more when
# client and server sleep on different CPUs than when they hand over on one,
# and which of the two happens depends on what else runs. On one CPU the
# latency is the client's and the server's work per read, which is what
# depth changes. Every system is pinned alike; --no-pin turns it off.
# Latencies are fio's total latency (submission to completion).
if has depth; then
    log "read latency at snapshot and clone depth: ${depth_systems[*]}"
    fio_runtime=$depth_runtime
    if ((pin_cpus)); then
        fio_cpus=$(($(nproc) - 1))
        for name in blockfork "${!pid_of[@]}"; do
            [[ $name == chain* || $name == blockfork ]] || continue
            taskset -a -p -c "$fio_cpus" "${pid_of[$name]}" >/dev/null || die "pinning $name failed"
        done
    fi
    for rep in $(seq "$reps"); do
        for sys in $(rotated "$rep" "${depth_systems[@]}"); do
            # shellcheck disable=SC2046
            warm "$sys" $(depth_target "$sys")
            # shellcheck disable=SC2046
            run_fio "$sys" rr1 "$rep" $(depth_target "$sys")
            if [[ " ${depth_qd32_systems[*]} " == *" $sys "* ]]; then
                # shellcheck disable=SC2046
                run_fio "$sys" rr32 "$rep" $(depth_target "$sys")
            fi
        done
    done
    if [[ -n $fio_cpus ]]; then
        taskset -a -p -c "0-$(($(nproc) - 1))" "${pid_of[blockfork]}" >/dev/null || die "unpinning blockfork failed"
        fio_cpus=""
    fi
fi

# ---------------------------------------------------------------- data path
# Write jobs on the snapshot and clone systems start from the same state each
# time: bf100 gets a fresh snapshot just before (so every first overwrite of
# a block redirects) deleted after; bfclone and qcow2ovl get a new clone /
# overlay of the pre-filled snapshot / backing file, dropped after.
hook_n=0
target_for() { # sys wl: prepares the system, prints fio's target arguments
    local sys=$1 wl=$2
    case $sys in
        bf) nbd_target "$bf_nbd" fresh ;;
        bf100)
            if is_write "$wl"; then bf snapshot create d100 "w$hook_n" >/dev/null; fi
            nbd_target "$bf_nbd" d100 ;;
        bfclone)
            if is_write "$wl"; then clone_create cbase@s cw; nbd_target "$bf_nbd" cw; else nbd_target "$bf_nbd" cr; fi ;;
        qcow2) nbd_target "${port_of[qcow2]}" qcow2 ;;
        qcow2ovl)
            if is_write "$wl"; then
                qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$data/overlay-w.qcow2"
                start_qemu_nbd qcow2ovl-w "$data/overlay-w.qcow2"
                nbd_target "${port_of[qcow2ovl-w]}" qcow2ovl-w
            else
                nbd_target "${port_of[qcow2ovl]}" qcow2ovl
            fi ;;
        nbdkit-file | nbdkit-mem) nbd_target "${port_of[$sys]}" x ;;
        raw) echo "--ioengine=libaio --direct=1 --filename=$data/raw-direct.img" ;;
    esac
}
after() { # sys wl
    is_write "$2" || return 0
    case $1 in
        bf100) bf snapshot delete d100 "w$hook_n" >/dev/null; wait_jobs ;;
        bfclone) bf lun delete cw >/dev/null; wait_jobs ;;
        qcow2ovl) stop qcow2ovl-w; rm -f "$data/overlay-w.qcow2" ;;
    esac
    hook_n=$((hook_n + 1))
    sync
}
# The files a system keeps its data in, for evict.
files_of() {
    case $1 in
        bf | bf100 | bfclone) find "$data/bf" -type f -size +64M ;;
        qcow2) echo "$data/plain.qcow2" ;;
        nbdkit-file) echo "$data/raw-nbdkit.img" ;;
    esac
}
# Pure write jobs start with the system's files synced and dropped from the
# page cache: 4 KiB buffered writes into the large folios that sequential
# reads leave behind (ext4 on recent kernels) cost several times more, which
# would measure the page cache's history rather than the server.
evict() { # sys
    local files
    files=$(files_of "$1")
    [[ -n $files ]] || return 0
    # shellcheck disable=SC2086
    "$py" -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.fdatasync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' $files ||
        die "evicting $1's files from the page cache failed"
}
# Each system runs its workloads back to back after a warm-up: reads and the
# mix on a warm cache, then the pure writes, each from an evicted cache.
if has data; then
    fio_runtime=$runtime
    for rep in $(seq "$reps"); do
        log "data path, repetition $rep of $reps: ${data_workloads[*]}"
        for sys in $(rotated "$rep" "${data_systems[@]}"); do
            [[ $sys == bfclone ]] && ! ((clones)) && continue
            # shellcheck disable=SC2046
            warm "$sys" $(target_for "$sys" rr1)
            for wl in "${data_workloads[@]}"; do
                if is_write "$wl" && [[ $wl != mix ]]; then evict "$sys"; fi
                # target_for may start a server, so not in a subshell
                target_for "$sys" "$wl" >"$out/target"
                # shellcheck disable=SC2046
                run_fio "$sys" "$wl" "$rep" $(cat "$out/target")
                after "$sys" "$wl"
            done
            settle
        done
    done
fi
log "measurements done in $((SECONDS - t_start)) s (waited $quiet_waited s for other processes to quiet down)"

# ---------------------------------------------------------------- report
report() {
    local disk
    disk=$(df -hT "$work" | awk 'NR == 2 {print $1 " (" $2 "), " $3 " total, " $5 " free"}')
    echo "# blockfork beside its peers ($mode run${only:+, $only only})"
    echo
    echo "- command: \`$cmdline\` (blockfork $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- crates 2>/dev/null || echo ', crates/ modified'))"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/^Mem:/ {print $2}') GiB memory, kernel $(uname -r), cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo unknown)"
    echo "- disk of the work dir: $disk"
    local damon=off
    grep -qx on /sys/kernel/mm/damon/admin/kdamonds/*/state 2>/dev/null && damon=on
    echo "- DAMON proactive reclaim: $damon (so each system's target is re-read once, untimed, right before its jobs)"
    echo "- tools: $(fio --version), qemu-nbd $(qemu-nbd --version | head -1 | awk '{print $2}'), nbdkit $(nbdkit --version | awk '{print $2}')"
    echo "- $size_mib MiB per target, fio runs of $runtime s (time based; $depth_runtime s for the depth comparison), median of $reps$(has copy && echo "; copy-management latencies over $lat_n operations")"
    echo
    "$py" "$root/bench/peers/report.py" "$out" mode="$mode" clones="$clones" clone_why="$clone_why" \
        size_mib="$size_mib" layers="$layers" per_layer="$per_layer" deep_layers="$deep_layers" \
        deep_per_layer="$deep_per_layer" clone_levels="$clone_levels" cluster="$cluster" pinned="$pin_cpus"
    echo
    echo "Run took $((SECONDS - t_start)) s, of which $build_s s of cargo build and $quiet_waited s of waiting for other processes to quiet down."
}
# bench/RESULTS.md holds complete full runs only.
if [[ $mode == full && -z $only ]]; then
    report | tee "$out/RESULTS.md"
    cp "$out/RESULTS.md" "$root/bench/RESULTS.md"
    log "wrote bench/RESULTS.md"
else
    report
fi
