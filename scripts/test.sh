#!/usr/bin/env bash
# Runs blockfork's whole test suite. Installs the system tools the tests
# drive (qemu-utils, libnbd-bin, fio, nbdkit, e2fsprogs, xfsprogs, python3-venv,
# prometheus for promtool, chromium, Node.js and npm) with apt-get when they
# are missing and we are root. Environment knobs:
# MODEL_SEEDS / MODEL_STEPS (engine model test), FUZZ_CASES / FUZZ_STEPS
# (engine fuzz test), CRASH_ROUNDS (kill -9 test), FUZZ_API_EXAMPLES /
# FUZZ_API_SEED (API fuzz), VOPR_SEEDS / VOPR_SEED (deterministic simulation).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v qemu-io >/dev/null 2>&1 || missing+=(qemu-utils)
command -v nbdinfo >/dev/null 2>&1 || missing+=(libnbd-bin)
command -v nbdcopy >/dev/null 2>&1 || missing+=(libnbd-bin)
command -v fio >/dev/null 2>&1 || missing+=(fio)
command -v nbdkit >/dev/null 2>&1 || missing+=(nbdkit)
command -v bc >/dev/null 2>&1 || missing+=(bc)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The host file-clone tests make ext4 and XFS file systems on attached LUNs.
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v mkfs.xfs >/dev/null 2>&1 || missing+=(xfsprogs)
# scripts/fuzz-api.sh installs schemathesis into a virtualenv under target/.
# The metrics tests check every scrape with promtool; the dashboard test
# drives Debian's Chromium (headless) with playwright-core under Node.js.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    if [ "$(id -u)" -eq 0 ]; then
        echo "== installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing tools: ${missing[*]}; install them (or run this script as root)" >&2
        exit 1
    fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo build --release (what the README's first command builds)"
# The release binaries first: the README test runs `cargo run --release --
# serve` literally, which then starts at once instead of building inside a
# test's time limit; the benchmarks below use them too.
cargo build --release

echo "== playwright-core for the dashboard test (tests/ui, from its lock file)"
if [ ! -d tests/ui/node_modules/playwright-core ]; then
    (cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "== cargo test"
# Many model-test seeds per CI run; the defaults in the test are for quick local runs.
export MODEL_SEEDS="${MODEL_SEEDS:-1000}"
export FUZZ_CASES="${FUZZ_CASES:-1000}"
# The deterministic simulation (crates/engine/tests/vopr.rs): seeds of the
# general run; each named scenario runs its own 300.
export VOPR_SEEDS="${VOPR_SEEDS:-2000}"
cargo test --workspace --all-targets

echo "== REST API fuzz (schemathesis against the OpenAPI document)"
scripts/fuzz-api.sh

echo "== benchmark harnesses, quick mode (keeps them from rotting)"
cargo run --release -q -p bench -- engine --quick --dir target/bench-ci >/dev/null
cargo run --release -q -p bench -- engine --quick --only listing --dir target/bench-ci >/dev/null
cargo run --release -q -p bench -- engine --quick --only checksum --dir target/bench-ci >/dev/null
cargo run --release -q -p bench -- engine --quick --only devices --dir target/bench-ci >/dev/null
bench/run.sh --quick >/dev/null
bench/mirror.sh --quick --no-build >/dev/null
bench/metrics.sh --quick --no-build >/dev/null
bench/poll.sh --quick --no-build >/dev/null
bench/devices-nbd.sh --quick >/dev/null
if [ "$(id -u)" -eq 0 ]; then
    bench/devices-btrfs.sh --quick >/dev/null
else
    echo "not root: bench/devices-btrfs.sh (loop devices) not run"
fi
echo "== all tests passed"
