#!/usr/bin/env bash
# Schema-driven fuzz of the REST API (issue 5, hostile input; the choices
# are in docs/decisions/013-api-fuzzing.md). Starts `blockfork serve` on a
# fresh pool, seeds LUNs (with data when qemu-io is there), a snapshot, a
# clone, a group snapshot, an igroup and a map, named like the examples of
# the OpenAPI document so that generated requests hit real objects, then
# runs schemathesis against the server's own OpenAPI document:
#
#   1. with the token: no 5xx, answers match their schemas, and a refused
#      (4xx) POST/PATCH/PUT/DELETE changes nothing (scripts/fuzz_hooks.py);
#   2. without the token (or with made-up ones): every operation answers 401
#      and changes nothing.
#
# Knobs: FUZZ_API_EXAMPLES (test cases per operation and phase, default 30),
# FUZZ_API_SEED (default: random; a failure prints the seed to rerun it),
# FUZZ_API_TIMEOUT_S (per schemathesis run, default 300), BLOCKFORK_BIN
# (default: build target/release/blockfork).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
examples=${FUZZ_API_EXAMPLES:-30}
timeout_s=${FUZZ_API_TIMEOUT_S:-300}
seed=${FUZZ_API_SEED:-$RANDOM$RANDOM}

# schemathesis in a virtualenv under target/, pinned, installed once.
venv=target/fuzz-venv
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION$"; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    if ! python3 -m venv --clear "$venv" >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ]; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv --clear "$venv"
        else
            echo "python3 -m venv failed; install python3-venv (or run this script as root)" >&2
            exit 1
        fi
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

bin=${BLOCKFORK_BIN:-target/release/blockfork}
if [ -z "${BLOCKFORK_BIN:-}" ]; then
    cargo build --release -q -p blockfork
fi

tmp=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

read -r nbd_port api_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
data=$tmp/data
url=http://127.0.0.1:$api_port
"$bin" --data "$data" serve --capacity 1G --open \
    --nbd "127.0.0.1:$nbd_port" --api "127.0.0.1:$api_port" >"$tmp/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    if [ -s "$data/api-token" ] &&
        curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$data/api-token")" "$url/api/v1/pool"; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/serve.log" >&2; exit 1; }
    sleep 0.1
done
token=$(cat "$data/api-token")

cli() { "$bin" --server "$url" --data "$data" "$@" >/dev/null; }
cli lun create vol0/db --size 64M
if command -v qemu-io >/dev/null 2>&1; then
    # Data makes space, exclusive bytes and the split's copying real.
    qemu-io -f raw -c "write -P 0x5a 0 1M" -c "write -P 0xa5 8M 256K" \
        "nbd://127.0.0.1:$nbd_port/vol0/db" >/dev/null
else
    echo "qemu-io not found: the LUNs stay empty" >&2
fi
cli snapshot create vol0/db nightly
cli lun clone create vol0/db@nightly vol0/test
cli lun create vol0/restore --size 64M
cli lun create start --size 1M
cli cg snapshot create weekly vol0/db vol0/restore
cli igroup create esx-cluster --address 10.0.0.0/24 --cert-cn host-a
cli lun map vol0/db esx-cluster

curl -sf -H "Authorization: Bearer $token" "$url/api/v1/openapi.json" >"$tmp/openapi.json"

export BLOCKFORK_API=$url/api/v1 BLOCKFORK_API_TOKEN=$token
export SCHEMATHESIS_HOOKS=$PWD/scripts/fuzz_hooks.py
# schemathesis keeps failures for `st replay` under .schemathesis/ in its
# working directory: target/fuzz-api, not the source tree.
work=target/fuzz-api
mkdir -p "$work"
st=$PWD/$venv/bin/st
# Every check but two: positive_data_acceptance, because many refusals of
# schema-valid requests are right (a name that does not exist, a pool
# smaller than now, overlapping ranges), and allow_header_conformance, because
# GET /splits/start deliberately shows the split of a LUN named "start"
# (see crates/api/src/clones.rs) while the document files it under
# /splits/{lun}.
checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_headers_conformance,response_schema_conformance
checks+=,negative_data_rejection,missing_required_header,unsupported_method
checks+=,use_after_free,ensure_resource_availability,ignored_auth
checks+=,refused_request_changes_nothing
# run_st EXAMPLES ARGS...
run_st() {
    local n=$1
    shift
    if ! (cd "$work" && timeout "$timeout_s" "$st" run "$tmp/openapi.json" \
        --url "$url" --workers 1 --phases examples,coverage,fuzzing \
        --max-examples "$n" --seed "$seed" --generation-database none \
        --request-timeout 30 --no-color "$@"); then
        echo "API fuzz failed (rerun with FUZZ_API_SEED=$seed); the server's log:" >&2
        tail -n 50 "$tmp/serve.log" >&2
        exit 1
    fi
}

echo "== schemathesis with the token (seed $seed, $examples examples per operation and phase)"
started=$SECONDS
FUZZ_SUMMARY_FILE=$tmp/verified run_st "$examples" -H "Authorization: Bearer $token" --checks "$checks"
echo "refused requests checked for changes on $(wc -l <"$tmp/verified") method and path pairs; $((SECONDS - started)) s"

# The token is checked before anything else runs, so fewer cases suffice.
echo "== schemathesis without the token ($((examples / 3 + 1)) examples per operation and phase)"
started=$SECONDS
FUZZ_EXPECT_401=1 run_st $((examples / 3 + 1)) --checks \
    not_a_server_error,unauthenticated_request_is_refused,refused_request_changes_nothing
echo "$((SECONDS - started)) s"

if ! kill -0 "$server_pid" 2>/dev/null || grep -q "panicked" "$tmp/serve.log"; then
    echo "the server died or panicked during the fuzz:" >&2
    cat "$tmp/serve.log" >&2
    exit 1
fi
echo "== API fuzz passed"
